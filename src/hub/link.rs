//! A hub connection over the HTTP half-transports (Server-Sent Events and long polling, each
//! paired with POST for what the client sends). Unlike a WebSocket, such a connection outlives
//! every single request: it is kept here, found by its negotiated connection token, and run by
//! one task of its own that does what `connection.rs` does for a socket (handshake, hub
//! methods, keep-alive pings, client and token timeouts, shutdown) while the HTTP adapter hands
//! it POST bodies and takes its outbound frames.
//!
//! The outbound side is the same bounded [`Outbound`] queue a WebSocket connection has: events,
//! completions, pings and the final Close all go through it, so a client that stops reading
//! never makes the server buffer more than `queue_frames` frames; a long-polling client that
//! stops polling is dropped after the disconnect timeout. Transport framing (SSE `data:` lines,
//! poll answers) lives in `sse.rs` and `longpoll.rs`; this file knows neither.

use super::methods::{stream_invocation_error, Session};
use super::outbound::{merge, Outbound, Queued};
use super::protocol::{
    self as proto, encode_close, encode_completion, encode_handshake_ok, encode_ping,
    ClientMessage, Decoder, HandshakeParser, HandshakeProgress, Outcome, Protocol,
};
use super::{Admission, HubKind, Hubs, Who};
use crate::domain::Principal;
use crate::metrics::HubRefusal;
use crate::store::Store;
use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::{sleep_until, Instant};
use uuid::Uuid;

/// The half-transport that carries a connection's outbound frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    ServerSentEvents,
    LongPolling,
}

/// What a reader takes from a connection.
pub enum Pulled {
    /// Frames (merged into one payload), in the connection's protocol.
    Data(Bytes),
    /// The connection has ended and everything it queued has been taken.
    End,
}

/// Why a request on a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkRefusal {
    /// Another poll, event stream or send of this connection is in progress (409).
    Busy,
    /// The connection has ended (404).
    Gone,
}

/// The live HTTP-transport connections, by connection token.
#[derive(Default)]
pub(super) struct Links(Mutex<HashMap<String, Arc<Link>>>);

impl Links {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Link>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One HTTP-transport connection, shared by its task and the requests that serve it.
pub struct Link {
    pub transport: Transport,
    /// The user the connection was negotiated for; every request must carry this user's token.
    pub user: Uuid,
    key: String,
    state: Mutex<LinkState>,
    /// POST bodies for the connection's task, one at a time.
    inbox: mpsc::Sender<Inbound>,
    /// Wakes the task when a reader comes or goes, or the connection is deleted.
    wake_task: Notify,
}

struct Inbound {
    body: Bytes,
    done: oneshot::Sender<()>,
}

struct LinkState {
    /// The outbound queue, made when the handshake names the protocol.
    out: Option<Arc<Outbound>>,
    /// The connection has ended: readers get what is left, then [`Pulled::End`].
    closed: bool,
    /// The client deleted the connection (long polling) or its event stream ended (SSE).
    released: bool,
    /// A reader found the queue overflowed (slow consumer) and was handed the Close.
    slow: bool,
    /// A reader has been told [`Pulled::End`].
    ended: bool,
    /// A poll or event stream is being served.
    reading: bool,
    /// A POST is being processed.
    posting: bool,
    /// When the last reader went away (long polling's disconnect timeout counts from here).
    idle_since: Instant,
    /// The reader waiting for frames or the end.
    reader: Option<Waker>,
}

impl Link {
    fn lock(&self) -> MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake_reader(&self) {
        let waker = self.lock().reader.take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The protocol the handshake chose (none before it).
    pub fn protocol(&self) -> Option<Protocol> {
        self.lock().out.as_ref().map(|o| o.protocol)
    }

    /// Starts serving a poll or an event stream: one at a time per connection.
    pub fn begin_read(self: &Arc<Self>) -> Result<Reader, LinkRefusal> {
        let mut st = self.lock();
        if st.reading {
            return Err(LinkRefusal::Busy);
        }
        if st.ended || (st.closed && st.out.is_none()) {
            return Err(LinkRefusal::Gone);
        }
        st.reading = true;
        drop(st);
        self.wake_task.notify_one();
        Ok(Reader { link: self.clone() })
    }

    /// Hands a POST body to the connection's task and waits until it has been handled.
    pub async fn send(&self, body: Bytes) -> Result<(), LinkRefusal> {
        {
            let mut st = self.lock();
            if st.closed {
                return Err(LinkRefusal::Gone);
            }
            if st.posting {
                return Err(LinkRefusal::Busy);
            }
            st.posting = true;
        }
        let _posting = Posting(self);
        let (done, handled) = oneshot::channel();
        self.inbox
            .send(Inbound { body, done })
            .await
            .map_err(|_| LinkRefusal::Gone)?;
        handled.await.map_err(|_| LinkRefusal::Gone)
    }

    /// The client ends the connection (long polling's DELETE): what is queued is dropped and
    /// the waiting poll, if any, is answered as closed.
    pub fn delete(&self) {
        let out = {
            let mut st = self.lock();
            st.closed = true;
            st.released = true;
            st.out.clone()
        };
        if let Some(out) = out {
            out.close();
        }
        self.wake_reader();
        self.wake_task.notify_one();
    }

    /// Marks the connection ended (by its task) and wakes the reader to collect the rest.
    fn close(&self) {
        self.lock().closed = true;
        self.wake_reader();
    }

    fn set_out(&self, out: Arc<Outbound>) {
        self.lock().out = Some(out);
        self.wake_reader();
    }

    /// Whether the client has let go: deleted, stream ended, or a slow consumer closed.
    fn let_go(&self) -> bool {
        let st = self.lock();
        st.released || st.slow
    }

    /// For long polling: since when no poll has been waiting (none while one is).
    fn idle_since(&self) -> Option<Instant> {
        let st = self.lock();
        (!st.reading).then_some(st.idle_since)
    }

    /// Whether a reader has taken everything, the end included (or the client let go).
    fn drained(&self) -> bool {
        let st = self.lock();
        st.ended || st.released
    }
}

/// Clears the "a POST is in progress" mark however the send ends.
struct Posting<'a>(&'a Link);

impl Drop for Posting<'_> {
    fn drop(&mut self) {
        self.0.lock().posting = false;
    }
}

/// The one poll or event stream a connection is serving. Dropping it (the poll answered, the
/// client gone) frees the place; for SSE it ends the connection, as in ASP.NET.
pub struct Reader {
    link: Arc<Link>,
}

impl Reader {
    pub fn link(&self) -> &Arc<Link> {
        &self.link
    }

    /// The next frames, the end, or pending (the waker is kept until something comes).
    pub fn poll_pull(&mut self, cx: &mut Context<'_>) -> Poll<Pulled> {
        let mut st = self.link.lock();
        if let Some(out) = st.out.clone() {
            match out.poll_next(cx) {
                Poll::Ready(Queued::Frames(f)) => return Poll::Ready(Pulled::Data(merge(f))),
                Poll::Ready(Queued::Slow) => {
                    if !st.slow {
                        st.slow = true;
                        st.closed = true;
                        drop(st);
                        self.link.wake_task.notify_one();
                        let close = encode_close(
                            out.protocol,
                            Some(proto::CONNECTION_CLOSED_WITH_ERROR),
                            true,
                        );
                        return Poll::Ready(Pulled::Data(close));
                    }
                    st.ended = true;
                    return Poll::Ready(Pulled::End);
                }
                Poll::Pending => {}
            }
        }
        if st.closed {
            st.ended = true;
            drop(st);
            self.link.wake_task.notify_one();
            return Poll::Ready(Pulled::End);
        }
        if !st.reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            st.reader = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut st = self.link.lock();
        st.reading = false;
        st.reader = None;
        st.idle_since = Instant::now();
        if self.link.transport == Transport::ServerSentEvents {
            st.released = true;
        }
        drop(st);
        self.link.wake_task.notify_one();
    }
}

impl Hubs {
    /// The live HTTP-transport connection with this connection token.
    pub fn link(&self, key: &str) -> Option<Arc<Link>> {
        self.links.lock().get(key).cloned()
    }

    /// Opens an admitted HTTP-transport connection under the connection token `key` (already
    /// taken with [`Hubs::take_negotiated`]) and starts its task.
    #[allow(clippy::too_many_arguments)]
    pub fn open_link(
        self: &Arc<Self>,
        key: String,
        transport: Transport,
        admission: Admission,
        kind: HubKind,
        peer: SocketAddr,
        principal: Principal,
        orders: Store,
    ) -> Arc<Link> {
        let (tx, rx) = mpsc::channel(1);
        let link = Arc::new(Link {
            transport,
            user: principal.sub,
            key: key.clone(),
            state: Mutex::new(LinkState {
                out: None,
                closed: false,
                released: false,
                slow: false,
                ended: false,
                reading: false,
                posting: false,
                idle_since: Instant::now(),
                reader: None,
            }),
            inbox: tx,
            wake_task: Notify::new(),
        });
        self.links.lock().insert(key, link.clone());
        let who = Who {
            id: admission.id,
            kind,
            peer,
            user: principal.sub,
        };
        self.tracker.spawn(run(
            self.clone(),
            orders,
            link.clone(),
            who,
            principal,
            admission,
            rx,
        ));
        link
    }
}

/// Why a connection's task stops.
enum Stop {
    /// Say goodbye with this Close (error text, allowReconnect) if anyone still reads.
    Close(Option<&'static str>, bool),
    /// Nobody reads any more (deleted, stream gone, stopped polling, slow consumer handled).
    Quiet,
}

/// Runs one HTTP-transport connection until it ends, then lets a reader collect its last
/// frames (bounded by the disconnect timeout) and forgets it.
async fn run(
    hubs: Arc<Hubs>,
    orders: Store,
    link: Arc<Link>,
    who: Who,
    principal: Principal,
    admission: Admission,
    mut inbox: mpsc::Receiver<Inbound>,
) {
    let owner = admission.usage.clone();
    let _held = admission;
    tracing::debug!(parent: &who.span(), transport = ?link.transport, "http transport connection opened");
    let opened = Box::pin(handshake(&hubs, &link, &who, &owner, &mut inbox)).await;
    if let Some((out, rest, ack)) = opened {
        let mut conn = Conn {
            hubs: &hubs,
            link: &link,
            who: &who,
            out: &out,
            session: Session::new(&hubs, &orders, &principal, &who, out.clone()),
            partial: None,
            last_recv: Instant::now(),
            client_pinged: false,
        };
        let first = conn.on_payload(&rest);
        let _ = ack.send(());
        let stop = match first {
            Some(stop) => stop,
            None => Box::pin(conn.serve(&mut inbox, principal.expires_at)).await,
        };
        if let Stop::Close(error, allow_reconnect) = stop {
            out.push(encode_close(out.protocol, error, allow_reconnect));
        }
        conn.session.leave_all();
    }
    link.close();
    // Let the reader collect the Close (a poll, or the event stream's last event).
    let grace = if hubs.shutdown.is_cancelled() {
        Duration::from_secs(1)
    } else {
        hubs.settings.disconnect_timeout
    };
    let until = Instant::now() + grace;
    while !link.drained() {
        tokio::select! {
            _ = sleep_until(until) => break,
            _ = link.wake_task.notified() => {}
        }
    }
    hubs.links.lock().remove(&link.key);
    if let Some(out) = link.lock().out.take() {
        out.close();
    }
    drop(inbox);
    tracing::debug!(parent: &who.span(), "http transport connection closed");
}

/// Waits for the handshake (in POST bodies), answers it through a new outbound queue and
/// returns the queue, what followed the handshake, and the POST still to be acknowledged.
async fn handshake(
    hubs: &Hubs,
    link: &Link,
    who: &Who,
    owner: &Arc<super::quota::UserUsage>,
    inbox: &mut mpsc::Receiver<Inbound>,
) -> Option<(Arc<Outbound>, Vec<u8>, oneshot::Sender<()>)> {
    let s = &hubs.settings;
    let deadline = Instant::now() + s.handshake_timeout;
    let mut parser = HandshakeParser::new();
    loop {
        let idle = match (link.transport, link.idle_since()) {
            (Transport::LongPolling, Some(t)) => t + s.disconnect_timeout,
            _ => deadline,
        };
        let m = tokio::select! {
            biased;
            _ = hubs.shutdown.cancelled() => return None,
            _ = sleep_until(deadline.min(idle)) => {
                tracing::debug!(parent: &who.span(), "no handshake in time, closing");
                return None;
            }
            _ = link.wake_task.notified() => {
                if link.let_go() {
                    return None;
                }
                if link.transport == Transport::LongPolling && link.idle_since().is_some_and(|t| Instant::now() >= t + s.disconnect_timeout) {
                    return None;
                }
                continue;
            }
            m = inbox.recv() => m?,
        };
        let refusal = match parser.feed(&m.body) {
            Ok(HandshakeProgress::NeedMore) => {
                let _ = m.done.send(());
                continue;
            }
            Ok(HandshakeProgress::Done { request, rest }) => {
                if link.transport == Transport::ServerSentEvents && request.protocol.is_binary() {
                    let text = format!(
                        "Cannot use the '{}' protocol on the current transport. The transport does not support 'Binary' transfer format.",
                        request.protocol.name()
                    );
                    let mut body = serde_json::json!({ "error": text })
                        .to_string()
                        .into_bytes();
                    body.push(proto::RECORD_SEPARATOR);
                    Bytes::from(body)
                } else {
                    let out = Arc::new(Outbound::owned(
                        who.id,
                        request.protocol,
                        s.queue_frames,
                        Some(owner.clone()),
                    ));
                    out.push(encode_handshake_ok());
                    link.set_out(out.clone());
                    tracing::debug!(parent: &who.span(), protocol = request.protocol.name(), "handshake done");
                    return Some((out, rest.to_vec(), m.done));
                }
            }
            Err(e) => {
                tracing::debug!(parent: &who.span(), error = %e.log_label(), "handshake refused");
                e.response()
            }
        };
        // The refusal travels like any frame: a text queue holding just it, then the end.
        let out = Arc::new(Outbound::new(who.id, Protocol::Json, 1));
        out.push(refusal);
        link.set_out(out);
        let _ = m.done.send(());
        return None;
    }
}

/// A connection after its handshake.
struct Conn<'a> {
    hubs: &'a Hubs,
    link: &'a Link,
    who: &'a Who,
    out: &'a Arc<Outbound>,
    session: Session<'a>,
    /// The start of a message that has not fully arrived (none most of the time).
    partial: Option<Box<Decoder>>,
    last_recv: Instant,
    /// The client timeout is armed by the client's first Ping, as on the WebSocket path.
    client_pinged: bool,
}

impl Conn<'_> {
    async fn serve(&mut self, inbox: &mut mpsc::Receiver<Inbound>, expires_at: i64) -> Stop {
        let hubs = self.hubs;
        let s = &hubs.settings;
        let expiry = super::connection::token_deadline(expires_at);
        let mut last_ping = Instant::now();
        loop {
            let mut wake_at = (last_ping + s.keep_alive).min(expiry);
            wake_at = wake_at.min(if self.client_pinged {
                self.last_recv + s.client_timeout
            } else {
                self.last_recv + s.silent_timeout
            });
            let idle = match self.link.transport {
                Transport::LongPolling => self.link.idle_since().map(|t| t + s.disconnect_timeout),
                Transport::ServerSentEvents => None,
            };
            if let Some(idle) = idle {
                wake_at = wake_at.min(idle);
            }
            tokio::select! {
                biased;
                _ = hubs.shutdown.cancelled() => return Stop::Close(None, true),
                _ = self.link.wake_task.notified() => {
                    if self.link.let_go() {
                        return Stop::Quiet;
                    }
                }
                _ = sleep_until(wake_at) => {
                    let now = Instant::now();
                    if now >= expiry {
                        tracing::info!(parent: &self.who.span(), "token expired, closing");
                        return Stop::Close(Some("The access token expired. Reconnect with a new token."), true);
                    }
                    if self.client_pinged && now >= self.last_recv + s.client_timeout {
                        tracing::info!(parent: &self.who.span(), "client timeout: nothing received, closing");
                        return Stop::Close(Some("Server timeout elapsed without receiving a message from the client."), false);
                    }
                    if !self.client_pinged && now >= self.last_recv + s.silent_timeout {
                        tracing::info!(parent: &self.who.span(), "silent client: nothing received and no ping, closing");
                        hubs.metrics.hub_refused(HubRefusal::Silent);
                        return Stop::Close(Some("Server timeout elapsed without receiving a message from the client."), true);
                    }
                    if idle.is_some_and(|t| now >= t) {
                        tracing::info!(parent: &self.who.span(), "long-polling client stopped polling, dropping the connection");
                        hubs.metrics.hub_refused(HubRefusal::Silent);
                        return Stop::Quiet;
                    }
                    if now >= last_ping + s.keep_alive {
                        self.out.push(encode_ping(self.out.protocol));
                        last_ping = now;
                    }
                }
                m = inbox.recv() => {
                    let Some(m) = m else { return Stop::Quiet };
                    self.last_recv = Instant::now();
                    let stop = self.on_payload(&m.body);
                    let _ = m.done.send(());
                    if let Some(stop) = stop {
                        return stop;
                    }
                }
            }
        }
    }

    /// Decodes and answers the complete messages in `payload` (after any partial message kept
    /// from earlier POSTs). `Some` when the connection ends.
    fn on_payload(&mut self, payload: &[u8]) -> Option<Stop> {
        if payload.is_empty() {
            return None;
        }
        let protocol = self.out.protocol;
        let mut decoder = match self.partial.take() {
            Some(d) => *d,
            None => Decoder::with_max_message_size(protocol, self.hubs.settings.max_message),
        };
        decoder.push(payload);
        loop {
            match decoder.next_message() {
                Ok(None) => break,
                Ok(Some(msg)) => {
                    if let Some(stop) = self.on_message(msg) {
                        return Some(stop);
                    }
                }
                Err(e) => {
                    tracing::debug!(parent: &self.who.span(), error = %e, "protocol error, closing");
                    return Some(Stop::Close(
                        Some(proto::CONNECTION_CLOSED_WITH_ERROR),
                        false,
                    ));
                }
            }
        }
        if decoder.buffered() > 0 {
            self.partial = Some(Box::new(decoder));
        }
        None
    }

    fn on_message(&mut self, msg: ClientMessage) -> Option<Stop> {
        let protocol = self.out.protocol;
        let reply = match msg {
            ClientMessage::Invocation {
                invocation_id,
                target,
                arguments,
                stream_ids,
            } => {
                let result = self
                    .session
                    .invoke_from_client(&target, &arguments, &stream_ids);
                let id = invocation_id?;
                match &result {
                    Ok(Some(dto)) => encode_completion(protocol, &id, Outcome::Value(dto)),
                    Ok(None) => encode_completion(protocol, &id, Outcome::Void),
                    Err(text) => encode_completion(protocol, &id, Outcome::Error(text)),
                }
            }
            ClientMessage::StreamInvocation {
                invocation_id,
                target,
            } => {
                let text = stream_invocation_error(self.who.kind, &target);
                encode_completion(protocol, &invocation_id, Outcome::Error(&text))
            }
            ClientMessage::Ping => {
                self.client_pinged = true;
                return None;
            }
            ClientMessage::Close { .. } => return Some(Stop::Quiet),
            _ => return None,
        };
        if !self.out.push(reply) {
            self.hubs
                .metrics
                .slow_consumer_closes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        None
    }
}
