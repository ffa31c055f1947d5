//! One hub connection: the SignalR handshake, then a loop that reads client messages, writes
//! queued events in batches (one WebSocket message and one flush per batch), pings when idle,
//! drops silent clients, closes slow consumers, and leaves on shutdown or token expiry. Also the
//! connection's bounded outbound queue ([`Outbound`]).
//!
//! Thousands of these sit idle at once, so the idle state is kept small: the queue holds memory
//! only while frames wait, the rare steps (handshake, inbound messages, closes) run as boxed
//! futures so their state is not part of every waiting task, one timer covers keep-alive,
//! client timeout and token expiry, and the log span is built only when a line is logged.

use super::protocol::{
    self as proto, encode_close, encode_completion, encode_handshake_ok, encode_ping,
    ClientMessage, Decoder, HandshakeParser, HandshakeProgress, Outcome, Protocol,
};
use super::quota::UserUsage;
use super::subscriptions::SubscriptionTable;
use super::{HubKind, Hubs};
use crate::auth::Principal;
use crate::domain::{OrderStatusBroadcast, Timestamp};
use crate::http::server::ConnectionSlot;
use crate::http::App;
use crate::metrics::HubRefusal;
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use uuid::Uuid;

type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// Time allowed for one write to the socket before the connection is given up.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Most queued frames merged into one WebSocket message.
const MAX_BATCH: usize = 64;
/// Bytes read from the socket at a time. Client messages are small (pings, subscribe calls);
/// a larger one is read in several calls. Every connection keeps a buffer this big.
const READ_BUFFER: usize = 128;

/// A connection's bounded outbound queue, shared with the subscription table. The frames live
/// in a deque that is handed whole to the connection when it drains it, so an idle connection
/// holds no queue memory.
pub struct Outbound {
    pub id: u64,
    pub protocol: Protocol,
    queue: Mutex<Queue>,
    /// The user whose subscriptions this queue stands for (none in benches and tests).
    owner: Option<Arc<UserUsage>>,
}

struct Queue {
    frames: VecDeque<Bytes>,
    limit: usize,
    /// Set by the push that found the queue full; the connection then closes.
    slow: bool,
    /// The connection has ended: pushes are dropped.
    closed: bool,
    /// The connection task, when it waits for frames.
    waker: Option<Waker>,
}

/// What a connection finds in its queue.
enum Queued {
    Frames(VecDeque<Bytes>),
    Slow,
}

impl Outbound {
    /// A queue for connection `id`, speaking `protocol`, holding at most `limit` frames.
    pub fn new(id: u64, protocol: Protocol, limit: usize) -> Self {
        Self::owned(id, protocol, limit, None)
    }

    /// A queue whose subscriptions count against `owner`'s per-user cap.
    fn owned(id: u64, protocol: Protocol, limit: usize, owner: Option<Arc<UserUsage>>) -> Self {
        Outbound {
            id,
            protocol,
            owner,
            queue: Mutex::new(Queue {
                frames: VecDeque::new(),
                limit: limit.max(1),
                slow: false,
                closed: false,
                waker: None,
            }),
        }
    }

    /// Gives `n` subscriptions that left the table back to the owner's per-user count.
    pub fn release_subscriptions(&self, n: usize) {
        if let Some(o) = &self.owner {
            o.remove_subscriptions(n);
        }
    }

    /// Every operation leaves the queue consistent before anything that could panic.
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a frame without waiting. Returns false when this push found the queue full: the
    /// connection is then closed as a slow consumer (reported once).
    pub fn push(&self, frame: Bytes) -> bool {
        let mut q = self.lock();
        if q.closed || q.slow {
            return true;
        }
        let accepted = q.frames.len() < q.limit;
        if accepted {
            q.frames.push_back(frame);
        } else {
            q.slow = true;
        }
        let waker = q.waker.take();
        drop(q);
        if let Some(w) = waker {
            w.wake();
        }
        accepted
    }

    /// Empties the queue without sending anything; returns how many frames it held. For
    /// benches and tests that stand in for the connection.
    pub fn discard_queued(&self) -> usize {
        let frames = std::mem::take(&mut self.lock().frames);
        frames.len()
    }

    /// The next batch (at most [`MAX_BATCH`] frames), or `Slow` once the queue overflowed.
    fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Queued> {
        let mut q = self.lock();
        if q.slow {
            return Poll::Ready(Queued::Slow);
        }
        if q.frames.is_empty() {
            if !q.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                q.waker = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        let frames = if q.frames.len() <= MAX_BATCH {
            std::mem::take(&mut q.frames)
        } else {
            q.frames.drain(..MAX_BATCH).collect()
        };
        Poll::Ready(Queued::Frames(frames))
    }

    /// The connection has ended: drops what is queued and refuses (silently) what comes later.
    fn close(&self) {
        let mut q = self.lock();
        q.closed = true;
        let frames = std::mem::take(&mut q.frames);
        let waker = q.waker.take();
        drop(q);
        drop((frames, waker));
    }
}

/// Joins a batch into one message payload (SignalR records are self-delimiting).
fn merge(mut frames: VecDeque<Bytes>) -> Bytes {
    if frames.len() == 1 {
        return frames.pop_front().unwrap_or_default();
    }
    let mut buf = BytesMut::with_capacity(frames.iter().map(Bytes::len).sum());
    for b in &frames {
        buf.extend_from_slice(b);
    }
    buf.freeze()
}

/// Keeps the hub's connection count and gauge right however the task ends.
pub struct CountGuard(Arc<Hubs>, Arc<UserUsage>);

impl CountGuard {
    /// Holds one connection under the hubs' count and under its user's (`usage`).
    pub fn new(hubs: Arc<Hubs>, usage: Arc<UserUsage>) -> Self {
        CountGuard(hubs, usage)
    }
}

impl Drop for CountGuard {
    fn drop(&mut self) {
        self.0.users.release_connection(&self.1);
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
        self.0
            .metrics
            .hub_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Who a connection is, for its log lines. The `hub` span is built per logged line: one held
/// for the connection's whole life costs about half a KiB in the subscriber's registry.
#[derive(Clone, Copy, Debug)]
pub struct Who {
    pub id: u64,
    pub kind: HubKind,
    pub peer: SocketAddr,
    pub user: Uuid,
}

impl Who {
    pub fn span(&self) -> tracing::Span {
        tracing::info_span!("hub", conn = self.id, hub = ?self.kind, peer = %self.peer, user = %self.user)
    }
}

fn frame(protocol: Protocol, bytes: Bytes) -> Message {
    match protocol {
        Protocol::Json => match Utf8Bytes::try_from(bytes) {
            Ok(t) => Message::Text(t),
            Err(_) => Message::Text(Utf8Bytes::from_static("")),
        },
        Protocol::MessagePack => Message::Binary(bytes),
    }
}

/// Writes and flushes one message. Boxed: a write in progress (a timer and the message) is
/// then held only while it lasts, not reserved in every connection's task.
async fn send(ws: &mut Ws, msg: Message) -> bool {
    matches!(
        Box::pin(tokio::time::timeout(SEND_TIMEOUT, ws.send(msg))).await,
        Ok(Ok(()))
    )
}

/// Sends a SignalR Close, then the WebSocket close (1000).
async fn close(ws: &mut Ws, protocol: Protocol, error: Option<&str>, allow_reconnect: bool) {
    close_with(ws, protocol, error, allow_reconnect, CloseCode::Normal, "").await;
}

/// Sends a SignalR Close, then the WebSocket close with `code`.
async fn close_with(
    ws: &mut Ws,
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
    Stop,
}

/// A connection after its handshake. It borrows what `run` was given instead of moving it: an
/// async fn keeps its arguments' slots for its whole life, so a moved copy would be stored twice.
struct Conn<'a> {
    app: &'a App,
    who: &'a Who,
    principal: &'a Principal,
    protocol: Protocol,
    out: Arc<Outbound>,
    /// The start of a message that has not fully arrived (none most of the time).
    partial: Option<Box<Decoder>>,
    orders: Vec<Uuid>,
    restaurants: Vec<Uuid>,
    /// When a completion was last written (completions bypass the queue).
    last_reply: Instant,
    /// The client timeout is armed by the client's first Ping.
    client_pinged: bool,
}

/// Runs a hub connection from its accepted upgrade to its end. `guard` and `slot` are released
/// when it ends (the spawned future is this function, with nothing wrapped around it).
pub async fn run(
    app: Arc<App>,
    on_upgrade: OnUpgrade,
    who: Who,
    principal: Principal,
    guard: CountGuard,
    slot: Option<ConnectionSlot>,
) {
    let owner = guard.1.clone();
    let _held = (guard, slot);
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(parent: &who.span(), error = %e, "upgrade failed");
            return;
        }
    };
    let s = &app.hubs.settings;
    let (handshake_timeout, max_message, queue_frames) =
        (s.handshake_timeout, s.max_message, s.queue_frames);
    let cfg = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    // Boxed: the opening steps' state is not kept for the connection's whole life.
    let opened = Box::pin(async move {
        let mut ws: Ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(cfg)).await;
        let (protocol, rest) = handshake(&mut ws, handshake_timeout, who).await?;
        Some((ws, protocol, rest))
    });
    let Some((mut ws, protocol, rest)) = opened.await else {
        return;
    };
    tracing::debug!(parent: &who.span(), protocol = protocol.name(), "handshake done");
    let out = Arc::new(Outbound::owned(who.id, protocol, queue_frames, Some(owner)));
    let mut conn = Conn {
        app: &app,
        who: &who,
        principal: &principal,
        protocol,
        out,
        partial: None,
        orders: Vec::new(),
        restaurants: Vec::new(),
        last_reply: Instant::now(),
        client_pinged: false,
    };
    conn.serve(&mut ws, &rest).await;
    conn.out.close();
    conn.cleanup();
}

/// Reads the handshake (TEXT or BINARY frames), answers it, and returns the protocol and any
/// bytes that followed the handshake in the same frame.
async fn handshake(ws: &mut Ws, timeout: Duration, who: Who) -> Option<(Protocol, Vec<u8>)> {
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
                return Some((request.protocol, rest));
            }
            Err(e) => {
                tracing::debug!(parent: &who.span(), error = %e, "handshake refused");
                let _ = send(ws, frame(Protocol::Json, e.response())).await;
                let _ = ws.close(None).await;
                return None;
            }
        }
    }
}

impl Conn<'_> {
    fn hubs(&self) -> &Arc<Hubs> {
        &self.app.hubs
    }

    /// Boxed so the closing state is not part of every idle connection's task.
    async fn close(&self, ws: &mut Ws, error: Option<&str>, allow_reconnect: bool) {
        Box::pin(close(ws, self.protocol, error, allow_reconnect)).await;
    }

    /// `rest`: what followed the handshake in its frame.
    async fn serve(&mut self, ws: &mut Ws, rest: &[u8]) {
        let hubs = self.hubs().clone();
        let out = self.out.clone();
        let expiry = token_deadline(self.principal.expires_at);
        let mut last_sent = Instant::now();
        let mut last_recv = Instant::now();
        if !rest.is_empty() {
            if let Next::Stop = Box::pin(self.on_payload(ws, rest)).await {
                return;
            }
        }
        loop {
            let s = &hubs.settings;
            // One timer: the next keep-alive ping, the client timeout (armed by the client's
            // first Ping, as ASP.NET does: older clients never ping), the silence bound for a
            // client that has not pinged yet, or the token's expiry.
            let mut wake_at = (last_sent + s.keep_alive).min(expiry);
            if self.client_pinged {
                wake_at = wake_at.min(last_recv + s.client_timeout);
            } else {
                wake_at = wake_at.min(last_recv + s.silent_timeout);
            }
            tokio::select! {
                biased;
                _ = hubs.shutdown.cancelled() => {
                    self.close(ws, None, true).await;
                    return;
                }
                _ = sleep_until(wake_at) => {
                    let now = Instant::now();
                    if now >= expiry {
                        tracing::info!(parent: &self.who.span(), "token expired, closing");
                        self.close(ws, Some("The access token expired. Reconnect with a new token."), true).await;
                        return;
                    }
                    if self.client_pinged && now >= last_recv + s.client_timeout {
                        tracing::info!(parent: &self.who.span(), "client timeout: nothing received, closing");
                        self.close(ws, Some("Server timeout elapsed without receiving a message from the client."), false).await;
                        return;
                    }
                    if !self.client_pinged && now >= last_recv + s.silent_timeout {
                        tracing::info!(parent: &self.who.span(), "silent client: nothing received and no ping, closing");
                        hubs.metrics.hub_refused(HubRefusal::Silent);
                        self.close(ws, Some("Server timeout elapsed without receiving a message from the client."), true).await;
                        return;
                    }
                    if now >= last_sent + s.keep_alive {
                        if !send(ws, frame(self.protocol, encode_ping(self.protocol))).await {
                            return;
                        }
                        last_sent = Instant::now();
                    }
                }
                queued = std::future::poll_fn(|cx| out.poll_next(cx)) => match queued {
                    Queued::Slow => {
                        tracing::info!(parent: &self.who.span(), "slow consumer: outbound queue full, closing");
                        self.close(ws, Some(proto::CONNECTION_CLOSED_WITH_ERROR), true).await;
                        return;
                    }
                    Queued::Frames(frames) => {
                        if !send(ws, frame(self.protocol, merge(frames))).await {
                            return;
                        }
                        last_sent = Instant::now();
                    }
                },
                incoming = ws.next() => {
                    last_recv = Instant::now();
                    if let Next::Stop = Box::pin(self.on_incoming(ws, incoming)).await {
                        return;
                    }
                    last_sent = last_sent.max(self.last_reply);
                }
            }
        }
    }

    /// Handles one item from the socket: decodes and answers complete messages.
    async fn on_incoming(
        &mut self,
        ws: &mut Ws,
        incoming: Option<Result<Message, WsError>>,
    ) -> Next {
        let payload = match incoming {
            Some(Ok(Message::Text(t))) => Bytes::from(t),
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Ping(_)))
            | Some(Ok(Message::Pong(_)))
            | Some(Ok(Message::Frame(_))) => return Next::Continue,
            Some(Ok(Message::Close(_))) | None => return Next::Stop,
            Some(Err(WsError::Capacity(_))) => {
                self.too_large(ws).await;
                return Next::Stop;
            }
            Some(Err(e)) => {
                tracing::debug!(parent: &self.who.span(), error = %e, "socket error");
                return Next::Stop;
            }
        };
        self.on_payload(ws, &payload).await
    }

    /// Decodes and answers the complete messages in `payload` (after any partial message kept
    /// from earlier payloads). The decoder is kept only while a message is incomplete.
    async fn on_payload(&mut self, ws: &mut Ws, payload: &[u8]) -> Next {
        let mut decoder = match self.partial.take() {
            Some(d) => *d,
            None => Decoder::with_max_message_size(self.protocol, self.hubs().settings.max_message),
        };
        decoder.push(payload);
        let next = self.drain_inbound(ws, &mut decoder).await;
        if matches!(next, Next::Continue) && decoder.buffered() > 0 {
            self.partial = Some(Box::new(decoder));
        }
        next
    }

    async fn too_large(&self, ws: &mut Ws) {
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
    async fn drain_inbound(&mut self, ws: &mut Ws, decoder: &mut Decoder) -> Next {
        loop {
            match decoder.next_message() {
                Ok(None) => return Next::Continue,
                Ok(Some(msg)) => {
                    if let Next::Stop = self.on_message(ws, msg).await {
                        return Next::Stop;
                    }
                }
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

    async fn reply(&mut self, ws: &mut Ws, bytes: Bytes) -> Next {
        if send(ws, frame(self.protocol, bytes)).await {
            self.last_reply = Instant::now();
            Next::Continue
        } else {
            Next::Stop
        }
    }

    async fn on_message(&mut self, ws: &mut Ws, msg: ClientMessage) -> Next {
        match msg {
            ClientMessage::Invocation {
                invocation_id,
                target,
                arguments,
                stream_ids,
            } => {
                let result = if stream_ids.is_empty() {
                    self.invoke(&target, &arguments)
                } else {
                    Err(proto::invocation_failed_error(&target))
                };
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
                let text = if method_of(self.who.kind, &target).is_some() {
                    proto::streaming_invocation_of_plain_method_error(&target)
                } else {
                    proto::unknown_method_error(&target)
                };
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
            _ => Next::Continue,
        }
    }

    /// Runs a hub method. `Ok(Some)` completes with a value, `Ok(None)` is a void completion.
    fn invoke(
        &mut self,
        target: &str,
        args: &[proto::Arg],
    ) -> Result<Option<OrderStatusBroadcast>, String> {
        let Some(method) = method_of(self.who.kind, target) else {
            return Err(proto::unknown_method_error(target));
        };
        let Some(id) =
            proto::single_string_argument(args).and_then(|s| Uuid::parse_str(s.trim()).ok())
        else {
            return Err(proto::invocation_failed_error(target));
        };
        match method {
            Method::SubscribeToOrder => self.subscribe_order(target, id).map(Some),
            Method::UnsubscribeFromOrder => {
                self.leave(Group::Order, id);
                Ok(None)
            }
            Method::SubscribeToRestaurant => {
                if !self.principal.can_watch_restaurant(id) {
                    return Err(proto::hub_exception_error(
                        target,
                        "The restaurant was not found.",
                    ));
                }
                self.join(Group::Restaurant, target, id)?;
                Ok(None)
            }
            Method::UnsubscribeFromRestaurant => {
                self.leave(Group::Restaurant, id);
                Ok(None)
            }
        }
    }

    /// Puts this connection in `id`'s group (once), within the per-connection cap.
    fn join(&mut self, group: Group, target: &str, id: Uuid) -> Result<(), String> {
        if self.list(group).contains(&id) {
            return Ok(());
        }
        let hubs = self.hubs().clone();
        if self.subscription_count() >= hubs.settings.max_subscriptions_per_connection {
            hubs.metrics
                .hub_refused(HubRefusal::ConnectionSubscriptions);
            return Err(proto::hub_exception_error(
                target,
                "Too many subscriptions on this connection.",
            ));
        }
        if let Some(owner) = &self.out.owner {
            if !owner.try_add_subscription(hubs.settings.max_subscriptions_per_user) {
                hubs.metrics.hub_refused(HubRefusal::UserSubscriptions);
                return Err(proto::hub_exception_error(
                    target,
                    "Too many subscriptions for this user.",
                ));
            }
        }
        if hubs
            .table(group)
            .subscribe(id, self.who.id, self.out.clone())
        {
            hubs.metrics
                .hub_subscriptions
                .fetch_add(1, Ordering::Relaxed);
        } else {
            // Already in the table (the list and the table disagree only in a race with a
            // dropped group): the unit taken above is not a new subscription.
            self.out.release_subscriptions(1);
        }
        self.list_mut(group).push(id);
        Ok(())
    }

    /// Takes this connection out of `id`'s group.
    fn leave(&mut self, group: Group, id: Uuid) {
        self.list_mut(group).retain(|g| *g != id);
        let hubs = self.hubs();
        if hubs.table(group).unsubscribe(id, self.who.id) {
            hubs.metrics
                .hub_subscriptions
                .fetch_sub(1, Ordering::Relaxed);
            self.out.release_subscriptions(1);
        }
    }

    fn list(&self, group: Group) -> &Vec<Uuid> {
        match group {
            Group::Order => &self.orders,
            Group::Restaurant => &self.restaurants,
        }
    }

    fn list_mut(&mut self, group: Group) -> &mut Vec<Uuid> {
        match group {
            Group::Order => &mut self.orders,
            Group::Restaurant => &mut self.restaurants,
        }
    }

    /// Live subscriptions. Orders whose group was dropped after a terminal event no longer
    /// count (the table is the truth; the connection's list is pruned here).
    fn subscription_count(&mut self) -> usize {
        let hubs = self.hubs().clone();
        let id = self.who.id;
        self.orders.retain(|o| hubs.orders.is_subscribed(*o, id));
        self.orders.len() + self.restaurants.len()
    }

    /// Subscribes first, then reads the order: an event committed after the read is delivered,
    /// so a client that subscribes after reading the order misses nothing.
    fn subscribe_order(&mut self, target: &str, id: Uuid) -> Result<OrderStatusBroadcast, String> {
        let hidden = || proto::hub_exception_error(target, "The order was not found.");
        let order = match self.app.store.get_order(id) {
            Ok(Some(o)) if self.principal.can_see(&o) => o,
            Ok(_) => return Err(hidden()),
            Err(e) => {
                tracing::warn!(parent: &self.who.span(), error = %e, "store read failed during subscribe");
                return Err(proto::invocation_failed_error(target));
            }
        };
        let now = Timestamp::from_datetime(chrono::Utc::now());
        if order.status.is_terminal() {
            return Ok(OrderStatusBroadcast::of(&order, now, None));
        }
        self.join(Group::Order, target, id)?;
        // Re-read after subscribing so the snapshot is at least as new as anything missed.
        let order = match self.app.store.get_order(id) {
            Ok(Some(o)) => o,
            _ => order,
        };
        if order.status.is_terminal() {
            // It finished in between; its group may already have been dropped, so do not
            // leave a subscription that nothing would ever remove.
            self.orders.retain(|o| *o != id);
            if self.hubs().orders.unsubscribe(id, self.who.id) {
                self.hubs()
                    .metrics
                    .hub_subscriptions
                    .fetch_sub(1, Ordering::Relaxed);
                self.out.release_subscriptions(1);
            }
        }
        Ok(OrderStatusBroadcast::of(&order, now, None))
    }

    fn cleanup(&mut self) {
        let hubs = self.hubs().clone();
        let mut removed = 0i64;
        for id in self.orders.drain(..) {
            if hubs.orders.unsubscribe(id, self.who.id) {
                removed += 1;
            }
        }
        for id in self.restaurants.drain(..) {
            if hubs.restaurants.unsubscribe(id, self.who.id) {
                removed += 1;
            }
        }
        hubs.metrics
            .hub_subscriptions
            .fetch_sub(removed, Ordering::Relaxed);
        self.out.release_subscriptions(removed as usize);
        tracing::debug!(parent: &self.who.span(), "connection closed");
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    SubscribeToOrder,
    UnsubscribeFromOrder,
    SubscribeToRestaurant,
    UnsubscribeFromRestaurant,
}

/// Hub method lookup, case-insensitive as ASP.NET does it.
fn method_of(kind: HubKind, target: &str) -> Option<Method> {
    let t = target.to_ascii_lowercase();
    match (kind, t.as_str()) {
        (HubKind::CustomerOrders, "subscribetoorder") => Some(Method::SubscribeToOrder),
        (HubKind::CustomerOrders, "unsubscribefromorder") => Some(Method::UnsubscribeFromOrder),
        (HubKind::RestaurantOrders, "subscribetorestaurant") => Some(Method::SubscribeToRestaurant),
        (HubKind::RestaurantOrders, "unsubscribefromrestaurant") => {
            Some(Method::UnsubscribeFromRestaurant)
        }
        _ => None,
    }
}

/// Which kind of group a subscription call is about.
#[derive(Clone, Copy)]
enum Group {
    Order,
    Restaurant,
}

impl Hubs {
    fn table(&self, group: Group) -> &SubscriptionTable<Arc<Outbound>> {
        match group {
            Group::Order => &self.orders,
            Group::Restaurant => &self.restaurants,
        }
    }
}

/// When the connection's token expires, as a Tokio instant.
fn token_deadline(expires_at: i64) -> Instant {
    let now = chrono::Utc::now().timestamp();
    let secs = (expires_at - now).clamp(0, 365 * 86_400) as u64;
    Instant::now() + Duration::from_secs(secs)
}
