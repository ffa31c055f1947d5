//! One hub connection: the SignalR handshake, then a loop that reads client messages, writes
//! queued events in batches (one WebSocket message and one flush per batch), pings when idle,
//! drops silent clients, closes slow consumers, and leaves on shutdown or token expiry.

use super::protocol::{
    self as proto, encode_close, encode_completion, encode_handshake_ok, encode_ping,
    ClientMessage, Decoder, HandshakeParser, HandshakeProgress, Outcome, Protocol,
};
use super::{HubKind, Hubs};
use crate::auth::Principal;
use crate::domain::{OrderStatusBroadcast, Timestamp};
use crate::http::App;
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// Time allowed for one write to the socket before the connection is given up.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Most queued frames merged into one WebSocket message.
const MAX_BATCH: usize = 64;

/// A connection's outbound queue, shared with the subscription table.
pub struct Outbound {
    pub id: u64,
    pub protocol: Protocol,
    tx: mpsc::Sender<Bytes>,
    slow: CancellationToken,
}

impl Outbound {
    /// A handle on a connection's bounded outbound queue (`tx`), speaking `protocol`.
    pub fn new(id: u64, protocol: Protocol, tx: mpsc::Sender<Bytes>) -> Self {
        Outbound {
            id,
            protocol,
            tx,
            slow: CancellationToken::new(),
        }
    }

    /// Queues a frame without waiting. Returns false when this push found the queue full: the
    /// connection is then closed as a slow consumer (reported once).
    pub fn push(&self, frame: Bytes) -> bool {
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.slow.is_cancelled() {
                    true
                } else {
                    self.slow.cancel();
                    false
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => true,
        }
    }
}

/// Keeps the hub's connection count and gauge right however the task ends.
pub struct CountGuard(Arc<Hubs>);

impl CountGuard {
    pub fn new(hubs: Arc<Hubs>) -> Self {
        CountGuard(hubs)
    }
}

impl Drop for CountGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
        self.0
            .metrics
            .hub_connections
            .fetch_sub(1, Ordering::Relaxed);
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

async fn send(ws: &mut Ws, msg: Message) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, ws.send(msg)).await,
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

struct Conn {
    app: Arc<App>,
    kind: HubKind,
    principal: Principal,
    id: u64,
    protocol: Protocol,
    out: Arc<Outbound>,
    orders: Vec<Uuid>,
    restaurants: Vec<Uuid>,
    /// When a completion was last written (completions bypass the queue).
    last_reply: Instant,
    /// The client timeout is armed by the client's first Ping.
    client_pinged: bool,
}

pub async fn run(app: Arc<App>, upgraded: Upgraded, kind: HubKind, principal: Principal, id: u64) {
    let s = &app.hubs.settings;
    let cfg = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(Some(s.max_message))
        .max_frame_size(Some(s.max_message));
    let mut ws: Ws =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(cfg)).await;
    let Some((protocol, rest)) = handshake(&mut ws, s.handshake_timeout).await else {
        return;
    };
    tracing::debug!(protocol = protocol.name(), "handshake done");
    let (tx, rx) = mpsc::channel(s.queue_frames.max(1));
    let out = Arc::new(Outbound::new(id, protocol, tx));
    let mut conn = Conn {
        app: app.clone(),
        kind,
        principal,
        id,
        protocol,
        out,
        orders: Vec::new(),
        restaurants: Vec::new(),
        last_reply: Instant::now(),
        client_pinged: false,
    };
    let mut decoder = Decoder::with_max_message_size(protocol, s.max_message);
    decoder.push(&rest);
    conn.serve(&mut ws, decoder, rx).await;
    conn.cleanup();
}

/// Reads the handshake (TEXT or BINARY frames), answers it, and returns the protocol and any
/// bytes that followed the handshake in the same frame.
async fn handshake(ws: &mut Ws, timeout: Duration) -> Option<(Protocol, Vec<u8>)> {
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
                tracing::debug!(error = %e, "handshake refused");
                let _ = send(ws, frame(Protocol::Json, e.response())).await;
                let _ = ws.close(None).await;
                return None;
            }
        }
    }
}

impl Conn {
    fn hubs(&self) -> &Arc<Hubs> {
        &self.app.hubs
    }

    async fn serve(&mut self, ws: &mut Ws, mut decoder: Decoder, mut rx: mpsc::Receiver<Bytes>) {
        let s = self.hubs().settings.clone();
        let shutdown = self.hubs().shutdown.clone();
        let slow = self.out.slow.clone();
        let expiry = token_deadline(self.principal.expires_at);
        let mut last_sent = Instant::now();
        let mut last_recv = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if let Next::Stop = self.drain_inbound(ws, &mut decoder).await {
            return;
        }
        let mut batch: Vec<Bytes> = Vec::new();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    close(ws, self.protocol, None, true).await;
                    return;
                }
                _ = slow.cancelled() => {
                    tracing::info!("slow consumer: outbound queue full, closing");
                    close(ws, self.protocol, Some(proto::CONNECTION_CLOSED_WITH_ERROR), true).await;
                    return;
                }
                _ = sleep_until(expiry) => {
                    tracing::info!("token expired, closing");
                    close(ws, self.protocol, Some("The access token expired. Reconnect with a new token."), true).await;
                    return;
                }
                n = rx.recv_many(&mut batch, MAX_BATCH) => {
                    if n == 0 {
                        return;
                    }
                    let msg = if batch.len() == 1 {
                        batch.pop().unwrap_or_default()
                    } else {
                        let mut buf = BytesMut::with_capacity(batch.iter().map(Bytes::len).sum());
                        for b in batch.drain(..) {
                            buf.extend_from_slice(&b);
                        }
                        buf.freeze()
                    };
                    batch.clear();
                    if !send(ws, frame(self.protocol, msg)).await {
                        return;
                    }
                    last_sent = Instant::now();
                }
                incoming = ws.next() => {
                    last_recv = Instant::now();
                    let payload = match incoming {
                        Some(Ok(Message::Text(t))) => Bytes::from(t),
                        Some(Ok(Message::Binary(b))) => b,
                        Some(Ok(Message::Ping(_))) | Some(Ok(Message::Pong(_))) | Some(Ok(Message::Frame(_))) => continue,
                        Some(Ok(Message::Close(_))) | None => return,
                        Some(Err(WsError::Capacity(_))) => {
                            self.too_large(ws).await;
                            return;
                        }
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "socket error");
                            return;
                        }
                    };
                    decoder.push(&payload);
                    if let Next::Stop = self.drain_inbound(ws, &mut decoder).await {
                        return;
                    }
                    last_sent = last_sent.max(self.last_reply);
                }
                _ = tick.tick() => {
                    // Armed only once the client has pinged: older clients never ping.
                    if self.client_pinged && last_recv.elapsed() >= s.client_timeout {
                        tracing::info!("client timeout: nothing received, closing");
                        close(ws, self.protocol, Some("Server timeout elapsed without receiving a message from the client."), false).await;
                        return;
                    }
                    if last_sent.elapsed() >= s.keep_alive {
                        if !send(ws, frame(self.protocol, encode_ping(self.protocol))).await {
                            return;
                        }
                        last_sent = Instant::now();
                    }
                }
            }
        }
    }

    async fn too_large(&self, ws: &mut Ws) {
        tracing::info!("inbound message over the size limit, closing with 1009");
        close_with(
            ws,
            self.protocol,
            Some(proto::CONNECTION_CLOSED_WITH_ERROR),
            false,
            CloseCode::Size,
            "message too big",
        )
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
                    tracing::debug!(error = %e, "protocol error, closing");
                    close(
                        ws,
                        self.protocol,
                        Some(proto::CONNECTION_CLOSED_WITH_ERROR),
                        false,
                    )
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
                let text = if method_of(self.kind, &target).is_some() {
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
        let Some(method) = method_of(self.kind, target) else {
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
                self.orders.retain(|o| *o != id);
                if self.hubs().orders.unsubscribe(id, self.id) {
                    self.hubs()
                        .metrics
                        .hub_subscriptions
                        .fetch_sub(1, Ordering::Relaxed);
                }
                Ok(None)
            }
            Method::SubscribeToRestaurant => {
                if !self.principal.can_watch_restaurant(id) {
                    return Err(proto::hub_exception_error(
                        target,
                        "The restaurant was not found.",
                    ));
                }
                if !self.restaurants.contains(&id) {
                    if self.subscription_count()
                        >= self.hubs().settings.max_subscriptions_per_connection
                    {
                        return Err(proto::hub_exception_error(
                            target,
                            "Too many subscriptions on this connection.",
                        ));
                    }
                    if self
                        .hubs()
                        .restaurants
                        .subscribe(id, self.id, self.out.clone())
                    {
                        self.hubs()
                            .metrics
                            .hub_subscriptions
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    self.restaurants.push(id);
                }
                Ok(None)
            }
            Method::UnsubscribeFromRestaurant => {
                self.restaurants.retain(|r| *r != id);
                if self.hubs().restaurants.unsubscribe(id, self.id) {
                    self.hubs()
                        .metrics
                        .hub_subscriptions
                        .fetch_sub(1, Ordering::Relaxed);
                }
                Ok(None)
            }
        }
    }

    /// Live subscriptions. Orders whose group was dropped after a terminal event no longer
    /// count (the table is the truth; the connection's list is pruned here).
    fn subscription_count(&mut self) -> usize {
        let hubs = self.app.hubs.clone();
        let id = self.id;
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
                tracing::warn!(error = %e, "store read failed during subscribe");
                return Err(proto::invocation_failed_error(target));
            }
        };
        let now = Timestamp::from_datetime(chrono::Utc::now());
        if order.status.is_terminal() {
            return Ok(OrderStatusBroadcast::of(&order, now, None));
        }
        if !self.orders.contains(&id) {
            if self.subscription_count() >= self.hubs().settings.max_subscriptions_per_connection {
                return Err(proto::hub_exception_error(
                    target,
                    "Too many subscriptions on this connection.",
                ));
            }
            if self.hubs().orders.subscribe(id, self.id, self.out.clone()) {
                self.hubs()
                    .metrics
                    .hub_subscriptions
                    .fetch_add(1, Ordering::Relaxed);
            }
            self.orders.push(id);
        }
        // Re-read after subscribing so the snapshot is at least as new as anything missed.
        let order = match self.app.store.get_order(id) {
            Ok(Some(o)) => o,
            _ => order,
        };
        if order.status.is_terminal() {
            // It finished in between; its group may already have been dropped, so do not
            // leave a subscription that nothing would ever remove.
            self.orders.retain(|o| *o != id);
            if self.hubs().orders.unsubscribe(id, self.id) {
                self.hubs()
                    .metrics
                    .hub_subscriptions
                    .fetch_sub(1, Ordering::Relaxed);
            }
        }
        Ok(OrderStatusBroadcast::of(&order, now, None))
    }

    fn cleanup(&mut self) {
        let hubs = self.app.hubs.clone();
        let mut removed = 0i64;
        for id in self.orders.drain(..) {
            if hubs.orders.unsubscribe(id, self.id) {
                removed += 1;
            }
        }
        for id in self.restaurants.drain(..) {
            if hubs.restaurants.unsubscribe(id, self.id) {
                removed += 1;
            }
        }
        hubs.metrics
            .hub_subscriptions
            .fetch_sub(removed, Ordering::Relaxed);
        tracing::debug!("connection closed");
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

/// When the connection's token expires, as a Tokio instant.
fn token_deadline(expires_at: i64) -> Instant {
    let now = chrono::Utc::now().timestamp();
    let secs = (expires_at - now).clamp(0, 365 * 86_400) as u64;
    Instant::now() + Duration::from_secs(secs)
}
