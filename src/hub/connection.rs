//! One hub connection's socket loop: the SignalR handshake, then a loop that reads client
//! messages, writes queued events in batches (one WebSocket message and one flush per batch),
//! pings when idle, drops silent clients, closes slow consumers, and leaves on shutdown or
//! token expiry. The queue is `outbound.rs`; what each hub method does is `methods.rs`.
//!
//! The loop is generic over the upgraded byte stream, so the hub knows nothing of the HTTP
//! server that upgraded it (`http/hubs.rs` hands it in). Thousands of these sit idle at once,
//! so the idle state is kept small: the queue holds memory only while frames wait, the rare
//! steps (handshake, inbound messages, closes) run as boxed futures so their state is not part
//! of every waiting task, one timer covers keep-alive, client timeout and token expiry, and
//! the log span is built only when a line is logged.
//!
//! With stateful reconnect (`resume.rs`) every sequenced message sent is also kept until the
//! client acks it; when the socket drops the connection parks (subscriptions and queue kept,
//! events still buffered) for the reconnect window, and a new socket handed over by the HTTP
//! side resumes it: `Sequence`, the replay, then the normal loop.

use super::methods::{stream_invocation_error, Session};
use super::outbound::{merge, Outbound, Queued, MAX_BATCH};
use super::protocol::{
    self as proto, encode_ack, encode_close, encode_completion, encode_handshake_ok, encode_ping,
    encode_sequence, ClientMessage, Decoder, HandshakeParser, HandshakeProgress, Outcome, Protocol,
};
use super::resume::{Handoff, InboundSequence, Reattach, ReplayBuffer, Resume};
use super::{Admission, Hubs, SlotGuard, Who};
use crate::domain::Principal;
use crate::metrics::HubRefusal;
use crate::store::Store;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// The upgraded byte stream a connection speaks WebSocket over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

type Ws<S> = WebSocketStream<S>;

/// Time allowed for one write to the socket before the connection is given up.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read from the socket at a time. Client messages are small (pings, subscribe calls);
/// a larger one is read in several calls. Every connection keeps a buffer this big.
const READ_BUFFER: usize = 128;

fn frame(protocol: Protocol, bytes: Bytes) -> Message {
    match protocol {
        Protocol::Json => match Utf8Bytes::try_from(bytes) {
            Ok(t) => Message::Text(t),
            Err(_) => Message::Text(Utf8Bytes::from_static("")),
        },
        Protocol::MessagePack => Message::Binary(bytes),
    }
}

/// The WebSocket settings of a hub connection: small buffers (thousands sit idle), messages
/// bounded by the hub's inbound limit.
fn ws_config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// Writes and flushes one message. Boxed: a write in progress (a timer and the message) is
/// then held only while it lasts, not reserved in every connection's task.
async fn send<S: Io>(ws: &mut Ws<S>, msg: Message) -> bool {
    matches!(
        Box::pin(tokio::time::timeout(SEND_TIMEOUT, ws.send(msg))).await,
        Ok(Ok(()))
    )
}

/// Sends a SignalR Close, then the WebSocket close (1000).
async fn close<S: Io>(
    ws: &mut Ws<S>,
    protocol: Protocol,
    error: Option<&str>,
    allow_reconnect: bool,
) {
    close_with(ws, protocol, error, allow_reconnect, CloseCode::Normal, "").await;
}

/// Sends a SignalR Close, then the WebSocket close with `code`.
async fn close_with<S: Io>(
    ws: &mut Ws<S>,
    protocol: Protocol,
    error: Option<&str>,
    allow_reconnect: bool,
    code: CloseCode,
    reason: &'static str,
) {
    let _ = send(
        ws,
        frame(protocol, encode_close(protocol, error, allow_reconnect)),
    )
    .await;
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        ws.close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })),
    )
    .await;
}

/// What the read side asks the loop to do next.
enum Next {
    Continue,
    /// The connection is over (closed by either side on purpose).
    Stop,
    /// The socket is gone without a SignalR Close: a stateful connection parks.
    Lost,
}

/// How a socket's part of a connection ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Closed,
    Lost,
}

/// A connection after its handshake. It borrows what `run` was given instead of moving it: an
/// async fn keeps its arguments' slots for its whole life, so a moved copy would be stored twice.
struct Conn<'a> {
    hubs: &'a Hubs,
    who: &'a Who,
    protocol: Protocol,
    /// The hub methods' side: the principal, the order lookup, the groups joined.
    session: Session<'a>,
    /// The start of a message that has not fully arrived (none most of the time).
    partial: Option<Box<Decoder>>,
    /// When a completion was last written (completions bypass the queue).
    last_reply: Instant,
    /// The client timeout is armed by the client's first Ping.
    client_pinged: bool,
    /// Stateful reconnect's state, when this connection has it.
    resume: Option<Box<Resume>>,
}

/// Runs a hub connection from its accepted upgrade to its end. `opened` yields the upgraded
/// stream; `admission` and `slot` are released when it ends (the spawned future is this
/// function, with nothing wrapped around it).
#[allow(clippy::too_many_arguments)]
pub(super) async fn run<F, S, E>(
    hubs: Arc<Hubs>,
    orders: Store,
    opened: F,
    who: Who,
    principal: Principal,
    admission: Admission,
    slot: Option<SlotGuard>,
) where
    F: Future<Output = Result<S, E>>,
    S: Io,
    E: Display,
{
    let owner = admission.usage.clone();
    let mut admission = admission;
    let resume_token = admission.resume_token.take();
    let mut slot = slot;
    let upgraded = match opened.await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(parent: &who.span(), error = %e, "upgrade failed");
            return;
        }
    };
    let s = &hubs.settings;
    let (handshake_timeout, max_message, queue_frames) =
        (s.handshake_timeout, s.max_message, s.queue_frames);
    // Boxed: the opening steps' state is not kept for the connection's whole life.
    let opened = Box::pin(async move {
        let cfg = ws_config(max_message);
        let mut ws = WebSocketStream::from_raw_socket(upgraded, Role::Server, Some(cfg)).await;
        let (protocol, version, rest) = handshake(&mut ws, handshake_timeout, who).await?;
        Some((ws, protocol, version, rest))
    });
    let Some((mut ws, protocol, version, rest)) = opened.await else {
        return;
    };
    // Stateful reconnect needs the negotiate grant (sealed in the token) and handshake version
    // 2; with version 1 ASP.NET silently serves the connection without it.
    let resume = resume_token
        .filter(|_| version >= 2 && s.reconnect_buffer > 0)
        .map(|token| {
            Box::new(Resume {
                handoff: hubs.resumable.register(&token, who.user),
                token,
                sent: ReplayBuffer::new(),
                inbound: InboundSequence::new(),
            })
        });
    tracing::debug!(parent: &who.span(), protocol = protocol.name(), stateful = resume.is_some(), "handshake done");
    let out = Arc::new(Outbound::owned(who.id, protocol, queue_frames, Some(owner)));
    let mut conn = Conn {
        hubs: &hubs,
        who: &who,
        protocol,
        session: Session::new(&hubs, &orders, &principal, &who, out.clone()),
        partial: None,
        last_reply: Instant::now(),
        client_pinged: false,
        resume,
    };
    let mut end = conn
        .serve(&mut ws, &rest, &out, principal.expires_at, false)
        .await;
    drop(ws);
    // A stateful connection whose socket dropped waits for its client to come back.
    while end == End::Lost {
        let Some(re) = Box::pin(conn.park(&out)).await else {
            break;
        };
        let Some(stream) = re.opened.await else {
            continue;
        };
        slot = re.slot;
        let cfg = ws_config(hubs.settings.max_message);
        let mut ws = WebSocketStream::from_raw_socket(stream, Role::Server, Some(cfg)).await;
        hubs.metrics.hub_resumes.fetch_add(1, Ordering::Relaxed);
        end = Box::pin(conn.serve(&mut ws, &[], &out, re.expires_at, true)).await;
    }
    if let Some(r) = &conn.resume {
        hubs.resumable.remove(&r.token);
    }
    out.close();
    conn.session.leave_all();
    drop((admission, slot));
    tracing::debug!(parent: &who.span(), "connection closed");
}

/// Reads the handshake (TEXT or BINARY frames), answers it, and returns the protocol, its
/// version and any bytes that followed the handshake in the same frame.
async fn handshake<S: Io>(
    ws: &mut Ws<S>,
    timeout: Duration,
    who: Who,
) -> Option<(Protocol, u32, Vec<u8>)> {
    let mut parser = HandshakeParser::new();
    let deadline = Instant::now() + timeout;
    loop {
        let msg = tokio::select! {
            _ = sleep_until(deadline) => {
                let err = proto::HandshakeError::TooLarge;
                let _ = send(ws, Message::Text(Utf8Bytes::try_from(err.response()).unwrap_or_else(|_| Utf8Bytes::from_static("")))).await;
                let _ = ws.close(None).await;
                return None;
            }
            m = ws.next() => m,
        };
        let payload: Bytes = match msg {
            Some(Ok(Message::Text(t))) => Bytes::from(t),
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Ping(_)))
            | Some(Ok(Message::Pong(_)))
            | Some(Ok(Message::Frame(_))) => continue,
            _ => return None,
        };
        match parser.feed(&payload) {
            Ok(HandshakeProgress::NeedMore) => continue,
            Ok(HandshakeProgress::Done { request, rest }) => {
                let rest = rest.to_vec();
                let ok = encode_handshake_ok();
                let m = match request.protocol {
                    Protocol::Json => frame(Protocol::Json, ok),
                    Protocol::MessagePack => Message::Binary(ok),
                };
                if !send(ws, m).await {
                    return None;
                }
                return Some((request.protocol, request.version, rest));
            }
            Err(e) => {
                tracing::debug!(parent: &who.span(), error = %e.log_label(), "handshake refused");
                let _ = send(ws, frame(Protocol::Json, e.response())).await;
                let _ = ws.close(None).await;
                return None;
            }
        }
    }
}

impl Conn<'_> {
    /// Boxed so the closing state is not part of every idle connection's task.
    async fn close<S: Io>(&self, ws: &mut Ws<S>, error: Option<&str>, allow_reconnect: bool) {
        Box::pin(close(ws, self.protocol, error, allow_reconnect)).await;
    }

    /// `rest`: what followed the handshake in its frame. `resumed`: a reattached socket, which
    /// first gets the `Sequence` and the replay.
    async fn serve<S: Io>(
        &mut self,
        ws: &mut Ws<S>,
        rest: &[u8],
        out: &Outbound,
        expires_at: i64,
        resumed: bool,
    ) -> End {
        let hubs = self.hubs;
        let expiry = token_deadline(expires_at);
        let mut last_sent = Instant::now();
        let mut last_recv = Instant::now();
        if resumed {
            if let Next::Lost = Box::pin(self.replay(ws)).await {
                return End::Lost;
            }
            last_sent = Instant::now();
        }
        if !rest.is_empty() {
            match Box::pin(self.on_payload(ws, rest)).await {
                Next::Continue => {}
                Next::Stop => return End::Closed,
                Next::Lost => return End::Lost,
            }
        }
        let handoff = self.resume.as_ref().map(|r| r.handoff.clone());
        loop {
            let s = &hubs.settings;
            // One timer: the next keep-alive ping, the client timeout (armed by the client's
            // first Ping, as ASP.NET does: older clients never ping), the silence bound for a
            // client that has not pinged yet, the token's expiry, or a due Ack.
            let mut wake_at = (last_sent + s.keep_alive).min(expiry);
            if self.client_pinged {
                wake_at = wake_at.min(last_recv + s.client_timeout);
            } else {
                wake_at = wake_at.min(last_recv + s.silent_timeout);
            }
            if let Some(due) = self.resume.as_ref().and_then(|r| r.inbound.ack_due) {
                wake_at = wake_at.min(due);
            }
            tokio::select! {
                biased;
                _ = hubs.shutdown.cancelled() => {
                    self.close(ws, None, true).await;
                    return End::Closed;
                }
                _ = delivered(handoff.as_deref()) => {
                    // The client already reconnected on a new socket: this one is stale.
                    tracing::debug!(parent: &self.who.span(), "replaced by a new socket");
                    return End::Lost;
                }
                _ = sleep_until(wake_at) => {
                    let now = Instant::now();
                    if now >= expiry {
                        tracing::info!(parent: &self.who.span(), "token expired, closing");
                        self.close(ws, Some("The access token expired. Reconnect with a new token."), true).await;
                        return End::Closed;
                    }
                    if self.client_pinged && now >= last_recv + s.client_timeout {
                        tracing::info!(parent: &self.who.span(), "client timeout: nothing received, closing");
                        self.close(ws, Some("Server timeout elapsed without receiving a message from the client."), false).await;
                        return End::Closed;
                    }
                    if !self.client_pinged && now >= last_recv + s.silent_timeout {
                        tracing::info!(parent: &self.who.span(), "silent client: nothing received and no ping, closing");
                        hubs.metrics.hub_refused(HubRefusal::Silent);
                        self.close(ws, Some("Server timeout elapsed without receiving a message from the client."), true).await;
                        return End::Closed;
                    }
                    if let Some(r) = self.resume.as_mut().filter(|r| r.inbound.ack_due.is_some_and(|d| now >= d)) {
                        let ack = encode_ack(self.protocol, r.inbound.take_ack());
                        if !send(ws, frame(self.protocol, ack)).await {
                            return End::Lost;
                        }
                        last_sent = Instant::now();
                    }
                    if now >= last_sent + s.keep_alive {
                        if !send(ws, frame(self.protocol, encode_ping(self.protocol))).await {
                            return End::Lost;
                        }
                        last_sent = Instant::now();
                    }
                }
                queued = std::future::poll_fn(|cx| out.poll_next(cx)) => match queued {
                    Queued::Slow => {
                        tracing::info!(parent: &self.who.span(), "slow consumer: outbound queue full, closing");
                        self.close(ws, Some(proto::CONNECTION_CLOSED_WITH_ERROR), true).await;
                        return End::Closed;
                    }
                    Queued::Frames(frames) => {
                        if !self.keep_for_replay(frames.iter()) {
                            tracing::info!(parent: &self.who.span(), "slow consumer: replay buffer full, closing");
                            hubs.metrics.hub_resets_overflow.fetch_add(1, Ordering::Relaxed);
                            self.close(ws, Some(proto::CONNECTION_CLOSED_WITH_ERROR), true).await;
                            return End::Closed;
                        }
                        if !send(ws, frame(self.protocol, merge(frames))).await {
                            return End::Lost;
                        }
                        last_sent = Instant::now();
                    }
                },
                incoming = ws.next() => {
                    last_recv = Instant::now();
                    match Box::pin(self.on_incoming(ws, incoming)).await {
                        Next::Continue => {}
                        Next::Stop => return End::Closed,
                        Next::Lost => return End::Lost,
                    }
                    last_sent = last_sent.max(self.last_reply);
                }
            }
        }
    }

    /// Numbers and keeps sent messages for a replay (stateful connections only); false when
    /// that overflows the replay buffer.
    fn keep_for_replay<'b>(&mut self, frames: impl Iterator<Item = &'b Bytes>) -> bool {
        let Some(r) = self.resume.as_mut() else {
            return true;
        };
        for f in frames {
            r.sent.push(f.clone());
        }
        r.sent.bytes() <= self.hubs.settings.reconnect_buffer
    }

    /// On a reattached socket: `Sequence` (the oldest unacked id), then every unacked message
    /// in order; the client's messages are ignored until its own `Sequence`.
    async fn replay<S: Io>(&mut self, ws: &mut Ws<S>) -> Next {
        let Some(r) = self.resume.as_mut() else {
            return Next::Continue;
        };
        r.inbound.reattached();
        self.client_pinged = false;
        let protocol = self.protocol;
        let mut batch = std::collections::VecDeque::with_capacity(MAX_BATCH);
        batch.push_back(encode_sequence(protocol, r.sent.first_unacked()));
        let replayed = r.sent.len();
        for f in r.sent.frames() {
            if batch.len() == MAX_BATCH
                && !send(ws, frame(protocol, merge(std::mem::take(&mut batch)))).await
            {
                return Next::Lost;
            }
            batch.push_back(f.clone());
        }
        if !send(ws, frame(protocol, merge(batch))).await {
            return Next::Lost;
        }
        self.hubs
            .metrics
            .hub_replayed
            .fetch_add(replayed as u64, Ordering::Relaxed);
        tracing::debug!(parent: &self.who.span(), replayed, "reattached");
        Next::Continue
    }

    /// A stateful connection without a socket: keeps buffering its events until a new socket
    /// is handed over, the reconnect window passes, the buffer overflows or the server stops
    /// (then `None`: the connection ends and the client must start over).
    async fn park(&mut self, out: &Outbound) -> Option<Reattach> {
        let handoff = self.resume.as_ref()?.handoff.clone();
        let hubs = self.hubs;
        let metrics = &hubs.metrics;
        metrics.hub_parked.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(parent: &self.who.span(), "socket lost, waiting for the client to reconnect");
        let deadline = Instant::now() + hubs.settings.reconnect_window;
        let got = loop {
            if let Some(re) = handoff.take() {
                break Some(re);
            }
            tokio::select! {
                biased;
                _ = hubs.shutdown.cancelled() => break None,
                _ = handoff.delivered() => {}
                _ = sleep_until(deadline) => {
                    metrics.hub_resets_window.fetch_add(1, Ordering::Relaxed);
                    break None;
                }
                queued = std::future::poll_fn(|cx| out.poll_next(cx)) => match queued {
                    Queued::Frames(frames) if self.keep_for_replay(frames.iter()) => {}
                    _ => {
                        metrics.hub_resets_overflow.fetch_add(1, Ordering::Relaxed);
                        break None;
                    }
                },
            }
        };
        metrics.hub_parked.fetch_sub(1, Ordering::Relaxed);
        if got.is_none() {
            tracing::debug!(parent: &self.who.span(), "not reconnected: connection dropped");
        }
        got
    }

    /// Handles one item from the socket: decodes and answers complete messages.
    async fn on_incoming<S: Io>(
        &mut self,
        ws: &mut Ws<S>,
        incoming: Option<Result<Message, WsError>>,
    ) -> Next {
        let payload = match incoming {
            Some(Ok(Message::Text(t))) => Bytes::from(t),
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Ping(_)))
            | Some(Ok(Message::Pong(_)))
            | Some(Ok(Message::Frame(_))) => return Next::Continue,
            Some(Ok(Message::Close(_))) | None => return Next::Lost,
            Some(Err(WsError::Capacity(_))) => {
                self.too_large(ws).await;
                return Next::Stop;
            }
            Some(Err(e)) => {
                tracing::debug!(parent: &self.who.span(), error = %e, "socket error");
                return Next::Lost;
            }
        };
        self.on_payload(ws, &payload).await
    }

    /// Decodes and answers the complete messages in `payload` (after any partial message kept
    /// from earlier payloads). The decoder is kept only while a message is incomplete.
    async fn on_payload<S: Io>(&mut self, ws: &mut Ws<S>, payload: &[u8]) -> Next {
        let mut decoder = match self.partial.take() {
            Some(d) => *d,
            None => Decoder::with_max_message_size(self.protocol, self.hubs.settings.max_message),
        };
        decoder.push(payload);
        let next = self.drain_inbound(ws, &mut decoder).await;
        if matches!(next, Next::Continue) && decoder.buffered() > 0 {
            self.partial = Some(Box::new(decoder));
        }
        next
    }

    async fn too_large<S: Io>(&self, ws: &mut Ws<S>) {
        tracing::info!(parent: &self.who.span(), "inbound message over the size limit, closing with 1009");
        Box::pin(close_with(
            ws,
            self.protocol,
            Some(proto::CONNECTION_CLOSED_WITH_ERROR),
            false,
            CloseCode::Size,
            "message too big",
        ))
        .await;
    }

    /// Handles every complete message in the decoder.
    async fn drain_inbound<S: Io>(&mut self, ws: &mut Ws<S>, decoder: &mut Decoder) -> Next {
        loop {
            match decoder.next_message() {
                Ok(None) => return Next::Continue,
                Ok(Some(msg)) => match self.on_message(ws, msg).await {
                    Next::Continue => {}
                    other => return other,
                },
                Err(e) if e.is_too_large() => {
                    self.too_large(ws).await;
                    return Next::Stop;
                }
                Err(e) => {
                    tracing::debug!(parent: &self.who.span(), error = %e, "protocol error, closing");
                    self.close(ws, Some(proto::CONNECTION_CLOSED_WITH_ERROR), false)
                        .await;
                    return Next::Stop;
                }
            }
        }
    }

    /// Writes a completion. Encoding happens before the await so no borrowed payload is held
    /// across it.
    fn completion(&self, id: &str, outcome: Outcome<'_>) -> Bytes {
        encode_completion(self.protocol, id, outcome)
    }

    async fn reply<S: Io>(&mut self, ws: &mut Ws<S>, bytes: Bytes) -> Next {
        if !self.keep_for_replay(std::iter::once(&bytes)) {
            tracing::info!(parent: &self.who.span(), "replay buffer full, closing");
            self.hubs
                .metrics
                .hub_resets_overflow
                .fetch_add(1, Ordering::Relaxed);
            self.close(ws, Some(proto::CONNECTION_CLOSED_WITH_ERROR), true)
                .await;
            return Next::Stop;
        }
        if send(ws, frame(self.protocol, bytes)).await {
            self.last_reply = Instant::now();
            Next::Continue
        } else {
            Next::Lost
        }
    }

    async fn on_message<S: Io>(&mut self, ws: &mut Ws<S>, msg: ClientMessage) -> Next {
        if let Some(r) = self.resume.as_mut() {
            // Stateful: count the client's messages; skip what it resends after a reconnect
            // and everything before its Sequence.
            if msg.is_sequenced() && !r.inbound.accept() {
                return Next::Continue;
            }
        }
        match msg {
            ClientMessage::Invocation {
                invocation_id,
                target,
                arguments,
                stream_ids,
            } => {
                let result = self
                    .session
                    .invoke_from_client(&target, &arguments, &stream_ids);
                let Some(id) = invocation_id else {
                    return Next::Continue;
                };
                let bytes = match &result {
                    Ok(Some(dto)) => self.completion(&id, Outcome::Value(dto)),
                    Ok(None) => self.completion(&id, Outcome::Void),
                    Err(text) => self.completion(&id, Outcome::Error(text)),
                };
                self.reply(ws, bytes).await
            }
            ClientMessage::StreamInvocation {
                invocation_id,
                target,
            } => {
                let text = stream_invocation_error(self.who.kind, &target);
                let bytes = self.completion(&invocation_id, Outcome::Error(&text));
                self.reply(ws, bytes).await
            }
            ClientMessage::Ping => {
                self.client_pinged = true;
                Next::Continue
            }
            ClientMessage::Close { .. } => {
                let _ = ws.close(None).await;
                Next::Stop
            }
            ClientMessage::Ack { sequence_id } => {
                if let Some(r) = self.resume.as_mut() {
                    r.sent.ack(sequence_id);
                }
                Next::Continue
            }
            ClientMessage::Sequence { sequence_id } => {
                let ahead = self
                    .resume
                    .as_mut()
                    .is_some_and(|r| r.inbound.sequence(sequence_id).is_err());
                if ahead {
                    tracing::debug!(parent: &self.who.span(), "client Sequence beyond what it sent, closing");
                    self.close(ws, Some(proto::CONNECTION_CLOSED_WITH_ERROR), false)
                        .await;
                    return Next::Stop;
                }
                Next::Continue
            }
            _ => Next::Continue,
        }
    }
}

/// Resolves when a new socket is handed to this connection (never without a handoff).
async fn delivered(handoff: Option<&Handoff>) {
    match handoff {
        Some(h) => h.delivered().await,
        None => std::future::pending().await,
    }
}

/// When the connection's token expires, as a Tokio instant (also used by `link.rs`).
pub(super) fn token_deadline(expires_at: i64) -> Instant {
    let now = chrono::Utc::now().timestamp();
    let secs = (expires_at - now).clamp(0, 365 * 86_400) as u64;
    Instant::now() + Duration::from_secs(secs)
}
