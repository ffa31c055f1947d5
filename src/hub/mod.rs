//! SignalR hubs over raw WebSockets: `customer-orders` and `restaurant-orders`.
//! `negotiate.rs` answers negotiate, `protocol.rs` holds the JSON and MessagePack codecs,
//! `connection.rs` runs one connection, `subscriptions.rs` is the lock-sharded table, and this
//! file routes hub requests, upgrades them, and fans committed events out to subscribers.

pub mod connection;
pub mod negotiate;
pub mod protocol;
pub mod quota;
pub mod subscriptions;

use crate::auth::Principal;
use crate::domain::OrderEvent;
use crate::http::problem::Problem;
use crate::http::{App, Resp};
use crate::metrics::{HubRefusal, Metrics};
use crate::store::EventSink;
use bytes::Bytes;
use connection::Outbound;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use protocol::{encode_event, Protocol};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use subscriptions::SubscriptionTable;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Which hub a connection belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HubKind {
    CustomerOrders,
    RestaurantOrders,
}

impl HubKind {
    fn from_path(s: &str) -> Option<HubKind> {
        match s {
            "customer-orders" => Some(HubKind::CustomerOrders),
            "restaurant-orders" => Some(HubKind::RestaurantOrders),
            _ => None,
        }
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
        }
    }
}

/// The hubs' shared state: settings, subscription tables, live connections.
pub struct Hubs {
    pub settings: HubSettings,
    pub metrics: Arc<Metrics>,
    pub orders: SubscriptionTable<Arc<Outbound>>,
    pub restaurants: SubscriptionTable<Arc<Outbound>>,
    tokens: negotiate::ConnectionTokens,
    /// Connections and subscriptions per user.
    pub users: quota::UserQuotas,
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
            tokens: negotiate::ConnectionTokens::default(),
            users: quota::UserQuotas::default(),
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

    /// Delivers one committed event to every subscriber of its order and its restaurant.
    /// Each event is encoded at most once per protocol; subscribers share the bytes.
    /// Public for `benches/fanout.rs`; the server calls it only from its dispatcher task.
    pub fn deliver(&self, event: &OrderEvent, scratch: &mut Vec<Arc<Outbound>>) {
        scratch.clear();
        self.orders.snapshot(event.order_id(), scratch);
        self.restaurants.snapshot(event.restaurant_id(), scratch);
        let method = event.kind.hub_method();
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
            if sub.push(frame.clone()) {
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

    /// Drops the group of an order that reached a terminal status. Called after the whole
    /// batch is delivered: one change can carry two events (PaymentFailed, StatusChanged).
    fn drop_order_group(&self, order: uuid::Uuid) {
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

/// CORS for the hub endpoints: the request's `Origin` is allowed back, with credentials, when
/// it is in `allowed` (or `allowed` is `None`: any origin, `null` included). The hubs take
/// bearer tokens, never cookies, so credentials carry nothing ambient.
fn cors(allowed: Option<&[String]>, req_headers: &hyper::HeaderMap, resp: &mut Resp) -> bool {
    let Some(origin) = req_headers.get(hyper::header::ORIGIN) else {
        return false;
    };
    let permitted = allowed.is_none_or(|list| {
        origin
            .to_str()
            .is_ok_and(|o| list.iter().any(|a| a.eq_ignore_ascii_case(o)))
    });
    resp.headers_mut()
        .insert("vary", HeaderValue::from_static("Origin"));
    if permitted {
        let h = resp.headers_mut();
        h.insert("access-control-allow-origin", origin.clone());
        h.insert(
            "access-control-allow-credentials",
            HeaderValue::from_static("true"),
        );
    }
    permitted
}

fn plain(status: StatusCode, text: &'static str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The token of a hub request: `Authorization: Bearer` or, on the WebSocket upgrade only,
/// the `access_token` query parameter (browsers cannot set headers there).
fn hub_principal(
    app: &App,
    req: &Request<Incoming>,
    allow_query: bool,
) -> Result<Principal, Problem> {
    if let Some(h) = req.headers().get(hyper::header::AUTHORIZATION) {
        return app
            .auth
            .verify_header(Some(h.as_bytes()))
            .map_err(|_| Problem::unauthorized());
    }
    if allow_query {
        if let Some(t) = negotiate::query_value(req.uri().query(), "access_token") {
            return app.auth.verify(&t).map_err(|_| Problem::unauthorized());
        }
    }
    Err(Problem::unauthorized())
}

/// Routes `/hubs/{hub}[/negotiate]`.
pub async fn route(
    app: &Arc<App>,
    req: Request<Incoming>,
    hub: &str,
    rest: &[&str],
    peer: SocketAddr,
) -> (&'static str, Result<Resp, Problem>) {
    let Some(kind) = HubKind::from_path(hub) else {
        return ("not_found", Err(crate::http::not_found()));
    };
    let negotiate = match rest {
        [] => false,
        ["negotiate"] => true,
        _ => return ("not_found", Err(crate::http::not_found())),
    };
    if req.method() == Method::OPTIONS {
        let mut resp = plain(StatusCode::NO_CONTENT, "");
        if !cors(
            app.hubs.settings.cors_origins.as_deref(),
            req.headers(),
            &mut resp,
        ) {
            // Not an allowed origin: no CORS headers, so the browser refuses the call.
            return ("hub_preflight", Ok(resp));
        }
        let h = resp.headers_mut();
        h.insert(
            "access-control-allow-methods",
            HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
        );
        let asked = req
            .headers()
            .get("access-control-request-headers")
            .cloned()
            .unwrap_or(HeaderValue::from_static(
                "authorization, content-type, x-requested-with, x-signalr-user-agent",
            ));
        h.insert("access-control-allow-headers", asked);
        h.insert("access-control-max-age", HeaderValue::from_static("600"));
        return ("hub_preflight", Ok(resp));
    }
    if negotiate {
        if req.method() != Method::POST {
            let mut resp = plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "POST requests are required.\n",
            );
            resp.headers_mut()
                .insert("allow", HeaderValue::from_static("POST, OPTIONS"));
            return ("hub_negotiate", Ok(resp));
        }
        let mut resp = match hub_principal(app, &req, false) {
            Err(p) => p.into_response(&crate::http::new_trace_id()),
            Ok(p) => {
                let body = negotiate::negotiate_body(req.uri().query(), &app.hubs.tokens, p.sub);
                crate::http::json_response(StatusCode::OK, Bytes::from(body))
            }
        };
        cors(
            app.hubs.settings.cors_origins.as_deref(),
            req.headers(),
            &mut resp,
        );
        return ("hub_negotiate", Ok(resp));
    }
    ("hub_connect", upgrade(app, req, kind, peer))
}

fn upgrade(
    app: &Arc<App>,
    mut req: Request<Incoming>,
    kind: HubKind,
    peer: SocketAddr,
) -> Result<Resp, Problem> {
    if req.method() != Method::GET {
        return Err(Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "Hub.MethodNotAllowed",
            "Only WebSockets are supported on this hub.",
        )
        .with_header("allow", "GET, OPTIONS"));
    }
    let headers = req.headers();
    let is_ws = headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && headers
            .get(CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            });
    let key = headers.get("sec-websocket-key").cloned();
    let version_ok = headers
        .get("sec-websocket-version")
        .is_some_and(|v| v.as_bytes() == b"13");
    let (true, Some(key), true) = (is_ws, key, version_ok) else {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "Hub.WebSocketRequired",
            "This hub only supports the WebSockets transport (RFC 6455, version 13).",
        ));
    };
    let principal = hub_principal(app, &req, true)?;
    if let Some(id) = negotiate::query_value(req.uri().query(), "id") {
        match app.hubs.tokens.take(&id, principal.sub) {
            Ok(()) => {}
            Err(negotiate::TokenRefusal::Unknown) => {
                app.metrics.hub_refused(HubRefusal::UnknownConnectionToken);
                return Ok(plain(StatusCode::NOT_FOUND, "No Connection with that ID\n"));
            }
            Err(negotiate::TokenRefusal::OtherUser) => {
                app.metrics
                    .hub_refused(HubRefusal::OtherUsersConnectionToken);
                return Ok(plain(
                    StatusCode::FORBIDDEN,
                    "The connection was negotiated by another user.\n",
                ));
            }
        }
    }
    let hubs = app.hubs.clone();
    let count = hubs.connections.fetch_add(1, Ordering::AcqRel);
    if count >= hubs.settings.max_connections || hubs.shutdown.is_cancelled() {
        hubs.connections.fetch_sub(1, Ordering::AcqRel);
        app.metrics
            .refused_connections
            .fetch_add(1, Ordering::Relaxed);
        app.metrics.hub_refused(HubRefusal::HubConnections);
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Hub.TooManyConnections",
            "The hub is at its connection limit; retry later.",
        )
        .with_header("retry-after", "5"));
    }
    let usage = match hubs
        .users
        .acquire_connection(principal.sub, hubs.settings.max_connections_per_user)
    {
        Ok(u) => u,
        Err(quota::QuotaRefusal::Connections) => {
            hubs.connections.fetch_sub(1, Ordering::AcqRel);
            app.metrics.hub_refused(HubRefusal::UserConnections);
            return Err(Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "Hub.TooManyUserConnections",
                "This user already holds the most hub connections allowed at once; close one and retry.",
            ));
        }
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    // Keeps the connection counted under the total and per-address caps while it is open.
    let held = req
        .extensions_mut()
        .remove::<crate::http::server::ConnectionSlot>();
    let conn_id = hubs.next_id.fetch_add(1, Ordering::Relaxed);
    hubs.metrics.hub_connections.fetch_add(1, Ordering::Relaxed);
    let guard = connection::CountGuard::new(hubs.clone(), usage);
    let who = connection::Who {
        id: conn_id,
        kind,
        peer,
        user: principal.sub,
    };
    // The connection's future is spawned as it is: every byte of it is held per connection.
    hubs.tracker.spawn(connection::run(
        app.clone(),
        on_upgrade,
        who,
        principal,
        guard,
        held,
    ));
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    Ok(resp)
}
