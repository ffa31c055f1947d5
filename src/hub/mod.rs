//! The SignalR engine for the `customer-orders` and `restaurant-orders` hubs: the protocol
//! codecs, the subscription tables, the connections, and the fan-out of committed events to
//! subscribers. It speaks to upgraded byte streams and knows nothing of HTTP routing: the HTTP
//! adapter (`http/hubs.rs`: negotiate, upgrade, CORS, the token) admits a connection here and
//! hands it its stream.
//!
//! - `protocol/`: the JSON and MessagePack codecs, client side included;
//! - `subscriptions.rs`: the lock-sharded group table;
//! - `outbound.rs`: a connection's bounded queue; `methods.rs`: the hub methods;
//!   `connection.rs`: the socket loop; `negotiate.rs`: negotiate answers and the sealed
//!   connection tokens; `quota.rs`: the per-user caps on connections and subscriptions;
//!   `resume.rs`: stateful reconnect (replay buffer, sequence ids, the reattach registry);
//!   `catchup.rs`: `ResumeRestaurant`'s seam between the outbox replay and live events;
//! - `link.rs`: a connection over Server-Sent Events or long polling (kept between requests,
//!   run by a task of its own); `sse.rs` and `longpoll.rs`: those transports' framing and wait;
//! - this file: the shared state ([`Hubs`]), admission under the connection cap, the one door
//!   through which subscriptions change (table and gauge together), and the dispatcher.

mod catchup;
mod connection;
mod link;
mod longpoll;
mod methods;
mod negotiate;
mod outbound;
pub mod protocol;
mod quota;
mod resume;
mod sse;
mod subscriptions;

pub use connection::Io;
pub use link::{Link, LinkRefusal, Transport};
pub use longpoll::{poll, PollAnswer};
pub use negotiate::{negotiate_body, query_value, ConnectionTokens, TokenRefusal};
pub use outbound::Outbound;
pub use resume::{Handoff, Reattach, ReattachRefusal};
pub use sse::EventStream;
pub use subscriptions::{Counts, SubscriptionTable};

use crate::domain::{EventKind, OrderEvent, Principal};
use crate::metrics::{HubRefusal, Metrics};
use crate::store::{EventSink, Store};
use bytes::Bytes;
use protocol::{encode_event, Protocol};
use quota::{QuotaRefusal, UserQuotas, UserUsage};
use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// Which hub a connection belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HubKind {
    CustomerOrders,
    RestaurantOrders,
}

impl HubKind {
    /// The hub named by a URL path segment.
    pub fn from_path(s: &str) -> Option<HubKind> {
        match s {
            "customer-orders" => Some(HubKind::CustomerOrders),
            "restaurant-orders" => Some(HubKind::RestaurantOrders),
            _ => None,
        }
    }
}

/// The client-side method that carries an event (exact casing: .NET and Java handlers are
/// case-sensitive).
pub fn client_method(kind: EventKind) -> &'static str {
    match kind {
        EventKind::OrderPlaced => "ReceiveOrderPlaced",
        EventKind::PaymentSucceeded => "ReceiveOrderPaymentSucceeded",
        EventKind::PaymentFailed => "ReceiveOrderPaymentFailed",
        EventKind::StatusChanged => "ReceiveOrderStatusChanged",
    }
}

#[derive(Clone, Debug)]
pub struct HubSettings {
    pub max_connections: usize,
    pub keep_alive: Duration,
    pub client_timeout: Duration,
    pub handshake_timeout: Duration,
    pub max_message: usize,
    /// Frames queued per connection before it counts as a slow consumer and is closed.
    pub queue_frames: usize,
    pub max_subscriptions_per_connection: usize,
    /// Hub connections one user (token `sub`) may hold at once.
    pub max_connections_per_user: usize,
    /// Live subscriptions one user may hold at once, over all of its connections.
    pub max_subscriptions_per_user: usize,
    /// A connection whose client has never sent a Ping is closed after this long without
    /// receiving anything (after its first Ping, `client_timeout` applies, as in ASP.NET).
    pub silent_timeout: Duration,
    /// Origins allowed to call the hubs from a browser (CORS); `None` allows any origin.
    pub cors_origins: Option<Vec<String>>,
    /// Stateful reconnect: unacked bytes kept per connection for a replay (ASP.NET's
    /// `StatefulReconnectBufferSize`); 0 turns stateful reconnect off.
    pub reconnect_buffer: usize,
    /// Stateful reconnect: how long a connection whose socket dropped waits to be reattached
    /// (ASP.NET's `DisconnectTimeout`).
    pub reconnect_window: Duration,
    /// Longest a long poll waits for frames before it is answered empty (ASP.NET: 90 s).
    pub long_poll_timeout: Duration,
    /// An SSE or long-polling connection that nobody reads for this long is dropped (a
    /// long-polling client that stopped polling; ASP.NET's disconnect timeout: 15 s).
    pub disconnect_timeout: Duration,
}

impl Default for HubSettings {
    fn default() -> Self {
        HubSettings {
            max_connections: 18_000,
            keep_alive: Duration::from_secs(15),
            client_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(15),
            max_message: 32 * 1024,
            queue_frames: 256,
            max_subscriptions_per_connection: 100,
            max_connections_per_user: 20,
            max_subscriptions_per_user: 500,
            silent_timeout: Duration::from_secs(120),
            cors_origins: None,
            reconnect_buffer: 100_000,
            reconnect_window: Duration::from_secs(15),
            long_poll_timeout: Duration::from_secs(90),
            disconnect_timeout: Duration::from_secs(15),
        }
    }
}

/// Which kind of group a subscription is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    Order,
    Restaurant,
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

/// Whatever keeps a connection counted by the server that accepted it (its place under the
/// server's caps). The hub holds it, never looks inside, and drops it when the connection ends.
pub type SlotGuard = Box<dyn Send + Sync>;

/// A place under the hub's connection cap and under its user's. Keeps the counts and the gauge
/// right however the connection ends: all are given back on drop.
pub struct Admission {
    hubs: Arc<Hubs>,
    id: u64,
    usage: Arc<UserUsage>,
    /// The connection token, when negotiate granted stateful reconnect.
    resume_token: Option<Box<str>>,
}

impl Admission {
    /// The connection was negotiated with stateful reconnect under `token`: if its handshake
    /// asks for version 2 it can be reattached by a new WebSocket presenting that token.
    pub fn resumable(mut self, token: &str) -> Self {
        self.resume_token = Some(token.into());
        self
    }
}

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The hubs are at their connection cap, or shutting down.
    HubConnections,
    /// This user holds the most connections allowed to one user.
    UserConnections,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.hubs.users.release_connection(&self.usage);
        self.hubs.connections.fetch_sub(1, Ordering::AcqRel);
        self.hubs
            .metrics
            .hub_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// The hubs' shared state: settings, subscription tables, live connections.
pub struct Hubs {
    pub settings: HubSettings,
    metrics: Arc<Metrics>,
    orders: SubscriptionTable<Arc<Outbound>>,
    restaurants: SubscriptionTable<Arc<Outbound>>,
    tokens: ConnectionTokens,
    /// Stateful connections that a new WebSocket may reattach, by connection token.
    resumable: resume::Resumable,
    /// The SSE and long-polling connections, by connection token.
    links: link::Links,
    /// Connections and subscriptions per user.
    users: UserQuotas,
    connections: AtomicUsize,
    next_id: AtomicU64,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    dispatch: mpsc::UnboundedSender<Vec<Arc<OrderEvent>>>,
}

impl Hubs {
    /// Creates the hubs and starts the dispatcher task (needs a Tokio runtime).
    pub fn new(
        settings: HubSettings,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Arc<Hubs> {
        let (tx, rx) = mpsc::unbounded_channel();
        let hubs = Arc::new(Hubs {
            settings,
            metrics,
            orders: SubscriptionTable::new(64),
            restaurants: SubscriptionTable::new(64),
            tokens: ConnectionTokens::default(),
            resumable: resume::Resumable::default(),
            links: link::Links::default(),
            users: UserQuotas::default(),
            connections: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            shutdown,
            tracker: TaskTracker::new(),
            dispatch: tx,
        });
        tokio::spawn(dispatcher(Arc::downgrade(&hubs), rx));
        hubs
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Tells every connection to reconnect elsewhere (Close with `allowReconnect: true`) and
    /// waits, at most 5 s, for them to finish.
    pub async fn close_all(&self) {
        self.shutdown.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tracker.wait()).await;
    }

    /// The negotiate answer (JSON text) for `user`'s request with `query`: its connection
    /// token is sealed and bound to `user`. Stateful reconnect is granted when the client asks
    /// and the replay buffer is not turned off.
    pub fn negotiate(&self, query: Option<&str>, user: Uuid) -> String {
        negotiate::negotiate_body_with(
            query,
            &self.tokens,
            user,
            self.settings.reconnect_buffer > 0,
        )
    }

    /// The waiting (or still live) stateful connection that a new WebSocket presenting `token`
    /// reattaches to: `Ok(None)` when there is none (never stateful, or its window passed),
    /// refused when it is another user's (counted).
    pub fn find_resumable(
        &self,
        token: &str,
        user: Uuid,
    ) -> Result<Option<Arc<Handoff>>, ReattachRefusal> {
        self.resumable.find(token, user).inspect_err(|_| {
            self.metrics
                .hub_refused(HubRefusal::OtherUsersConnectionToken)
        })
    }

    /// Claims a negotiated connection token for `user` (unknown, expired, used or another
    /// user's: refused, and the refusal counted). `Ok(true)`: negotiate granted it stateful
    /// reconnect.
    pub fn take_negotiated(&self, token: &str, user: Uuid) -> Result<bool, TokenRefusal> {
        self.tokens.take(token, user).inspect_err(|r| {
            self.metrics.hub_refused(match r {
                TokenRefusal::Unknown => HubRefusal::UnknownConnectionToken,
                TokenRefusal::OtherUser => HubRefusal::OtherUsersConnectionToken,
            })
        })
    }

    /// Takes a place for one more connection of `user`, under the hubs' cap (refused at the cap
    /// or while shutting down) and under the per-user cap. Refusals are counted.
    pub fn admit(self: &Arc<Self>, user: Uuid) -> Result<Admission, Refused> {
        let count = self.connections.fetch_add(1, Ordering::AcqRel);
        if count >= self.settings.max_connections || self.shutdown.is_cancelled() {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            self.metrics
                .refused_connections
                .fetch_add(1, Ordering::Relaxed);
            self.metrics.hub_refused(HubRefusal::HubConnections);
            return Err(Refused::HubConnections);
        }
        let usage = match self
            .users
            .acquire_connection(user, self.settings.max_connections_per_user)
        {
            Ok(u) => u,
            Err(QuotaRefusal::Connections) => {
                self.connections.fetch_sub(1, Ordering::AcqRel);
                self.metrics.hub_refused(HubRefusal::UserConnections);
                return Err(Refused::UserConnections);
            }
        };
        self.metrics.hub_connections.fetch_add(1, Ordering::Relaxed);
        Ok(Admission {
            hubs: self.clone(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            usage,
            resume_token: None,
        })
    }

    /// Starts an admitted connection: `opened` yields the upgraded stream. Orders are read from
    /// `orders` (for `SubscribeToOrder`); `slot` is held until the connection ends.
    #[allow(clippy::too_many_arguments)]
    pub fn start<F, S, E>(
        self: &Arc<Self>,
        admission: Admission,
        opened: F,
        kind: HubKind,
        peer: SocketAddr,
        principal: Principal,
        orders: Store,
        slot: Option<SlotGuard>,
    ) where
        F: Future<Output = Result<S, E>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        E: Display + Send + 'static,
    {
        let who = Who {
            id: admission.id,
            kind,
            peer,
            user: principal.sub,
        };
        // The connection's future is spawned as it is: every byte of it is held per connection.
        self.tracker.spawn(connection::run(
            self.clone(),
            orders,
            opened,
            who,
            principal,
            admission,
            slot,
        ));
    }

    /// Delivers one committed event to every subscriber of its order and its restaurant.
    /// Each event is encoded at most once per protocol; subscribers share the bytes. The
    /// server calls it only from its dispatcher task.
    pub fn deliver(&self, event: &OrderEvent, scratch: &mut Vec<Arc<Outbound>>) {
        scratch.clear();
        self.orders.snapshot(event.order_id(), scratch);
        self.restaurants.snapshot(event.restaurant_id(), scratch);
        let method = client_method(event.kind);
        let mut json: Option<Bytes> = None;
        let mut msgpack: Option<Bytes> = None;
        let mut delivered = 0u64;
        for sub in scratch.iter() {
            let frame = match sub.protocol {
                Protocol::Json => {
                    json.get_or_insert_with(|| encode_event(Protocol::Json, method, &event.dto))
                }
                Protocol::MessagePack => msgpack
                    .get_or_insert_with(|| encode_event(Protocol::MessagePack, method, &event.dto)),
            };
            if sub.push_event(frame.clone(), event.restaurant_id(), event.seq) {
                delivered += 1;
            } else {
                self.metrics
                    .slow_consumer_closes
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        self.metrics
            .events_dispatched
            .fetch_add(1, Ordering::Relaxed);
        self.metrics
            .deliveries
            .fetch_add(delivered, Ordering::Relaxed);
    }

    // ---- the one door through which subscriptions change: the table, the gauge and the user's
    // ---- subscription count move together ----------------------------------------------------

    fn table(&self, group: Group) -> &SubscriptionTable<Arc<Outbound>> {
        match group {
            Group::Order => &self.orders,
            Group::Restaurant => &self.restaurants,
        }
    }

    /// Puts the connection whose queue is `out` in `id`'s group, within its user's
    /// subscription cap: `false` when that cap is reached (the refusal is counted).
    pub fn subscribe(&self, group: Group, id: Uuid, out: Arc<Outbound>) -> bool {
        if !out.take_subscription(self.settings.max_subscriptions_per_user) {
            self.metrics.hub_refused(HubRefusal::UserSubscriptions);
            return false;
        }
        let conn = out.id;
        if self.table(group).subscribe(id, conn, out.clone()) {
            self.metrics
                .hub_subscriptions
                .fetch_add(1, Ordering::Relaxed);
        } else {
            // Already in the table (the connection's list and the table disagree only in a
            // race with a dropped group): the unit taken above is not a new subscription.
            out.release_subscriptions(1);
        }
        true
    }

    /// Takes the connection whose queue is `out` out of `id`'s group; false if it was not in it.
    pub fn unsubscribe(&self, group: Group, id: Uuid, out: &Outbound) -> bool {
        let removed = self.table(group).unsubscribe(id, out.id);
        if removed {
            self.metrics
                .hub_subscriptions
                .fetch_sub(1, Ordering::Relaxed);
            out.release_subscriptions(1);
        }
        removed
    }

    /// Whether connection `conn` is in `id`'s group.
    pub fn is_subscribed(&self, group: Group, id: Uuid, conn: u64) -> bool {
        self.table(group).is_subscribed(id, conn)
    }

    /// Drops the group of an order that reached a terminal status. Called after the whole
    /// batch is delivered: one change can carry two events (PaymentFailed, StatusChanged).
    fn drop_order_group(&self, order: Uuid) {
        let dropped = self
            .orders
            .drop_group_each(order, |out| out.release_subscriptions(1));
        self.metrics
            .hub_subscriptions
            .fetch_sub(dropped as i64, Ordering::Relaxed);
    }
}

impl EventSink for Hubs {
    fn publish(&self, events: Vec<Arc<OrderEvent>>) {
        let _ = self.dispatch.send(events);
    }
}

/// Runs until the hubs are dropped: delivers batches in commit order.
async fn dispatcher(
    hubs: std::sync::Weak<Hubs>,
    mut rx: mpsc::UnboundedReceiver<Vec<Arc<OrderEvent>>>,
) {
    let mut scratch = Vec::new();
    while let Some(batch) = rx.recv().await {
        let Some(h) = hubs.upgrade() else { break };
        for event in &batch {
            h.deliver(event, &mut scratch);
        }
        for event in batch.iter().filter(|e| e.is_terminal()) {
            h.drop_order_group(event.order_id());
        }
        scratch.clear();
    }
}
