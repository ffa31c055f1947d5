//! Prometheus metrics, hand-rolled with atomics: request counts by route and status, request
//! latency histograms, hub connections and subscriptions, events dispatched, slow-consumer
//! closes, writer batch sizes and commit latency, database size.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Routes as labels (a fixed set, so counters are plain arrays).
pub const ROUTES: &[&str] = &[
    "health",
    "metrics",
    "place_order",
    "order_status",
    "order_details",
    "order_history",
    "restaurant_orders",
    "board_page",
    "order_action",
    "hub_negotiate",
    "hub_connect",
    "hub_preflight",
    "admin",
    "not_found",
    "openapi",
];

const STATUSES: &[u16] = &[
    101, 200, 201, 202, 204, 304, 400, 401, 403, 404, 405, 408, 409, 412, 413, 415, 429, 431, 500,
    503,
];

/// What happened on the TLS side, as labels of `ordertrack_tls_events_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsEvent {
    /// A new certificate was loaded and is served to new connections.
    Reload,
    /// A changed certificate or key did not load; the previous one is still served.
    ReloadFailure,
    /// A handshake failed or timed out.
    HandshakeFailure,
    /// A plain-HTTP request on the TLS port (answered 400 and closed).
    PlainHttp,
}

impl TlsEvent {
    pub const ALL: [TlsEvent; 4] = [
        TlsEvent::Reload,
        TlsEvent::ReloadFailure,
        TlsEvent::HandshakeFailure,
        TlsEvent::PlainHttp,
    ];

    fn label(self) -> &'static str {
        match self {
            TlsEvent::Reload => "reload",
            TlsEvent::ReloadFailure => "reload_failure",
            TlsEvent::HandshakeFailure => "handshake_failure",
            TlsEvent::PlainHttp => "plain_http",
        }
    }
}

/// Why the hubs refused a connection, a subscription or a connection token, as labels of
/// `ordertrack_hub_refusals_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HubRefusal {
    /// The hubs' global connection cap.
    HubConnections,
    /// The per-user connection cap.
    UserConnections,
    /// The per-connection subscription cap.
    ConnectionSubscriptions,
    /// The per-user subscription cap.
    UserSubscriptions,
    /// A connection token that is not ours, damaged or expired.
    UnknownConnectionToken,
    /// A connection token negotiated by another user.
    OtherUsersConnectionToken,
    /// A connection closed because it sent nothing (not even a ping) for too long.
    Silent,
}

impl HubRefusal {
    pub const ALL: [HubRefusal; 7] = [
        HubRefusal::HubConnections,
        HubRefusal::UserConnections,
        HubRefusal::ConnectionSubscriptions,
        HubRefusal::UserSubscriptions,
        HubRefusal::UnknownConnectionToken,
        HubRefusal::OtherUsersConnectionToken,
        HubRefusal::Silent,
    ];

    pub fn label(self) -> &'static str {
        match self {
            HubRefusal::HubConnections => "hub_connections",
            HubRefusal::UserConnections => "user_connections",
            HubRefusal::ConnectionSubscriptions => "connection_subscriptions",
            HubRefusal::UserSubscriptions => "user_subscriptions",
            HubRefusal::UnknownConnectionToken => "unknown_connection_token",
            HubRefusal::OtherUsersConnectionToken => "other_users_connection_token",
            HubRefusal::Silent => "silent",
        }
    }
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0];

/// A fixed-bucket histogram.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micro: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micro: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.sum_micro.fetch_add((v * 1e6) as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// Adds this histogram's counts into `into` (a scrape sums the stripes).
    fn add_into(&self, into: &Histogram) {
        for (c, t) in self.counts.iter().zip(&into.counts) {
            t.fetch_add(c.load(Relaxed), Relaxed);
        }
        into.sum_micro
            .fetch_add(self.sum_micro.load(Relaxed), Relaxed);
        into.count.fetch_add(self.count.load(Relaxed), Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let total = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
        let sum = self.sum_micro.load(Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {total}");
    }
}

/// How many copies of the per-request counters exist. Every request bumps a count and a
/// latency histogram; with one shared copy, two workers answering the same route pass those
/// cache lines back and forth on every request. Each thread bumps its own stripe instead, and
/// a scrape sums them.
const STRIPES: usize = 4;

/// This thread's stripe, handed out round-robin on first use.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Relaxed) % STRIPES;
    }
    MINE.with(|s| *s)
}

/// One stripe of the request counters: counts by route and status, latency by route.
struct RequestStripe {
    counts: Vec<AtomicU64>,
    latency: Vec<Histogram>,
}

impl RequestStripe {
    fn new() -> Self {
        RequestStripe {
            counts: (0..ROUTES.len() * (STATUSES.len() + 1))
                .map(|_| AtomicU64::new(0))
                .collect(),
            latency: ROUTES
                .iter()
                .map(|_| Histogram::new(LATENCY_BUCKETS))
                .collect(),
        }
    }
}

pub struct Metrics {
    requests: Vec<RequestStripe>,
    pub hub_connections: AtomicI64,
    pub hub_subscriptions: AtomicI64,
    pub events_dispatched: AtomicU64,
    pub deliveries: AtomicU64,
    pub slow_consumer_closes: AtomicU64,
    pub refused_connections: AtomicU64,
    /// Stateful hub connections waiting for their client to reconnect.
    pub hub_parked: AtomicI64,
    /// Stateful reconnects: a new socket reattached to its connection.
    pub hub_resumes: AtomicU64,
    /// Messages replayed on those reconnects.
    pub hub_replayed: AtomicU64,
    /// Parked connections dropped because the reconnect window passed.
    pub hub_resets_window: AtomicU64,
    /// Stateful connections dropped because their replay buffer overflowed.
    pub hub_resets_overflow: AtomicU64,
    hub_refusals: [AtomicU64; HubRefusal::ALL.len()],
    tls_events: [AtomicU64; TlsEvent::ALL.len()],
    batch_sizes: Histogram,
    commit_seconds: Histogram,
    checkpoint_seconds: Histogram,
    /// Cluster mode (`--nats`): role, log position and lag; all zero on a single box.
    pub cluster: ClusterGauges,
}

/// The cluster's numbers (`src/cluster/` sets them; `/metrics` and `/readyz` read them).
#[derive(Default)]
pub struct ClusterGauges {
    /// 0: single box, 1: primary, 2: replica.
    pub role: std::sync::atomic::AtomicU8,
    /// The newest record of the log this database includes.
    pub applied_seq: AtomicU64,
    /// Records of the log not applied yet.
    pub lag_records: AtomicU64,
    /// How old the newest applied record was when applied while behind, in milliseconds.
    pub lag_millis: AtomicU64,
    /// Records applied from the log (replica).
    pub applied_total: AtomicU64,
    /// Times this node took or gave up the lease.
    pub lease_changes_total: AtomicU64,
    /// Appends the log refused because another node appended first.
    pub fenced_appends_total: AtomicU64,
    /// Writes forwarded to the primary.
    pub forwarded_total: AtomicU64,
}

impl ClusterGauges {
    pub const SINGLE: u8 = 0;
    pub const PRIMARY: u8 = 1;
    pub const REPLICA: u8 = 2;

    pub fn role_name(&self) -> &'static str {
        match self.role.load(Relaxed) {
            Self::PRIMARY => "primary",
            Self::REPLICA => "replica",
            _ => "single",
        }
    }

    /// Appends the `ordertrack_cluster_*` lines.
    pub fn render(&self, out: &mut String) {
        out.push_str("# HELP ordertrack_cluster_role This node's role (1 for the current one).\n");
        out.push_str("# TYPE ordertrack_cluster_role gauge\n");
        let current = self.role_name();
        for role in ["single", "primary", "replica"] {
            let v = u8::from(role == current);
            let _ = writeln!(out, "ordertrack_cluster_role{{role=\"{role}\"}} {v}");
        }
        let lag_seconds = self.lag_millis.load(Relaxed) as f64 / 1000.0;
        let lines: [(&str, &str, &str, String); 7] = [
            ("applied_seq", "gauge", "The newest record of the cluster log this node's database includes.", self.applied_seq.load(Relaxed).to_string()),
            ("lag_records", "gauge", "Records of the cluster log this node has not applied yet.", self.lag_records.load(Relaxed).to_string()),
            ("lag_seconds", "gauge", "Age of the newest applied record when it was applied, while behind (0 when caught up).", lag_seconds.to_string()),
            ("applied_total", "counter", "Records of the cluster log applied by this node as a replica.", self.applied_total.load(Relaxed).to_string()),
            ("lease_changes_total", "counter", "Times this node took or gave up the primary lease.", self.lease_changes_total.load(Relaxed).to_string()),
            ("fenced_appends_total", "counter", "Appends the cluster log refused because another node appended first.", self.fenced_appends_total.load(Relaxed).to_string()),
            ("forwarded_total", "counter", "Writes this node forwarded to the primary.", self.forwarded_total.load(Relaxed).to_string()),
        ];
        for (name, kind, help, value) in lines {
            let _ = writeln!(out, "# HELP ordertrack_cluster_{name} {help}");
            let _ = writeln!(out, "# TYPE ordertrack_cluster_{name} {kind}");
            let _ = writeln!(out, "ordertrack_cluster_{name} {value}");
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            requests: (0..STRIPES).map(|_| RequestStripe::new()).collect(),
            hub_connections: AtomicI64::new(0),
            hub_subscriptions: AtomicI64::new(0),
            events_dispatched: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            slow_consumer_closes: AtomicU64::new(0),
            refused_connections: AtomicU64::new(0),
            hub_parked: AtomicI64::new(0),
            hub_resumes: AtomicU64::new(0),
            hub_replayed: AtomicU64::new(0),
            hub_resets_window: AtomicU64::new(0),
            hub_resets_overflow: AtomicU64::new(0),
            hub_refusals: std::array::from_fn(|_| AtomicU64::new(0)),
            tls_events: std::array::from_fn(|_| AtomicU64::new(0)),
            batch_sizes: Histogram::new(BATCH_BUCKETS),
            commit_seconds: Histogram::new(LATENCY_BUCKETS),
            checkpoint_seconds: Histogram::new(LATENCY_BUCKETS),
            cluster: ClusterGauges::default(),
        }
    }

    pub fn route_index(route: &str) -> usize {
        ROUTES
            .iter()
            .position(|r| *r == route)
            .unwrap_or(ROUTES.len() - 2)
    }

    pub fn observe_request(&self, route: &str, status: u16, seconds: f64) {
        let r = Self::route_index(route);
        let s = STATUSES
            .iter()
            .position(|x| *x == status)
            .unwrap_or(STATUSES.len());
        if let Some(mine) = self.requests.get(stripe()) {
            mine.counts[r * (STATUSES.len() + 1) + s].fetch_add(1, Relaxed);
            mine.latency[r].observe(seconds);
        }
    }

    /// Counts one hub refusal.
    pub fn hub_refused(&self, why: HubRefusal) {
        self.hub_refusals[why as usize].fetch_add(1, Relaxed);
    }

    /// Counts one TLS event.
    pub fn tls_event(&self, what: TlsEvent) {
        self.tls_events[what as usize].fetch_add(1, Relaxed);
    }

    pub fn observe_batch(&self, size: usize, commit_seconds: f64) {
        self.batch_sizes.observe(size as f64);
        self.commit_seconds.observe(commit_seconds);
    }

    /// The Prometheus text exposition. `db_bytes` and `orders` are read at scrape time.
    pub fn render(&self, db_bytes: u64, orders: u64) -> String {
        let mut out = String::with_capacity(8192);
        out.push_str("# HELP ordertrack_http_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE ordertrack_http_requests_total counter\n");
        for (ri, route) in ROUTES.iter().enumerate() {
            for si in 0..=STATUSES.len() {
                let i = ri * (STATUSES.len() + 1) + si;
                let n: u64 = self
                    .requests
                    .iter()
                    .map(|m| m.counts[i].load(Relaxed))
                    .sum();
                if n > 0 {
                    let status = STATUSES
                        .get(si)
                        .map(|s| s.to_string())
                        .unwrap_or("other".into());
                    let _ = writeln!(
                        out,
                        "ordertrack_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                    );
                }
            }
        }
        out.push_str("# HELP ordertrack_http_request_duration_seconds Request latency by route.\n");
        out.push_str("# TYPE ordertrack_http_request_duration_seconds histogram\n");
        for (ri, route) in ROUTES.iter().enumerate() {
            let merged = Histogram::new(LATENCY_BUCKETS);
            for m in &self.requests {
                m.latency[ri].add_into(&merged);
            }
            if merged.count.load(Relaxed) > 0 {
                merged.render(
                    &mut out,
                    "ordertrack_http_request_duration_seconds",
                    &format!("route=\"{route}\""),
                );
            }
        }
        let gauges: [(&str, &str, &str, i64); 11] = [
            (
                "ordertrack_hub_connections",
                "gauge",
                "Open hub connections.",
                self.hub_connections.load(Relaxed),
            ),
            (
                "ordertrack_hub_subscriptions",
                "gauge",
                "Active hub subscriptions (orders and restaurants).",
                self.hub_subscriptions.load(Relaxed),
            ),
            (
                "ordertrack_events_dispatched_total",
                "counter",
                "Committed events handed to the hubs.",
                self.events_dispatched.load(Relaxed) as i64,
            ),
            (
                "ordertrack_event_deliveries_total",
                "counter",
                "Event frames queued to subscribers.",
                self.deliveries.load(Relaxed) as i64,
            ),
            (
                "ordertrack_slow_consumer_closes_total",
                "counter",
                "Hub connections closed because their queue was full.",
                self.slow_consumer_closes.load(Relaxed) as i64,
            ),
            (
                "ordertrack_refused_connections_total",
                "counter",
                "Connections refused by a limit.",
                self.refused_connections.load(Relaxed) as i64,
            ),
            (
                "ordertrack_hub_parked_connections",
                "gauge",
                "Stateful hub connections whose socket dropped, waiting to be reattached.",
                self.hub_parked.load(Relaxed),
            ),
            (
                "ordertrack_hub_resumes_total",
                "counter",
                "Stateful reconnects: a new socket reattached to its connection.",
                self.hub_resumes.load(Relaxed) as i64,
            ),
            (
                "ordertrack_hub_replayed_messages_total",
                "counter",
                "Messages replayed to clients on stateful reconnects.",
                self.hub_replayed.load(Relaxed) as i64,
            ),
            (
                "ordertrack_db_size_bytes",
                "gauge",
                "Size of the redb file.",
                db_bytes as i64,
            ),
            (
                "ordertrack_orders",
                "gauge",
                "Orders stored.",
                orders as i64,
            ),
        ];
        for (name, kind, help, v) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        out.push_str("# HELP ordertrack_hub_resets_total Stateful hub connections dropped (the client starts over), by reason.\n");
        out.push_str("# TYPE ordertrack_hub_resets_total counter\n");
        for (reason, n) in [
            ("window", &self.hub_resets_window),
            ("overflow", &self.hub_resets_overflow),
        ] {
            let _ = writeln!(
                out,
                "ordertrack_hub_resets_total{{reason=\"{reason}\"}} {}",
                n.load(Relaxed)
            );
        }
        out.push_str("# HELP ordertrack_hub_refusals_total Hub connections, subscriptions and connection tokens refused, by reason.\n");
        out.push_str("# TYPE ordertrack_hub_refusals_total counter\n");
        for why in HubRefusal::ALL {
            let n = self.hub_refusals[why as usize].load(Relaxed);
            let _ = writeln!(
                out,
                "ordertrack_hub_refusals_total{{reason=\"{}\"}} {n}",
                why.label()
            );
        }
        out.push_str("# HELP ordertrack_tls_events_total Certificate reloads and their failures, failed TLS handshakes, plain HTTP on the TLS port.\n");
        out.push_str("# TYPE ordertrack_tls_events_total counter\n");
        for what in TlsEvent::ALL {
            let n = self.tls_events[what as usize].load(Relaxed);
            let _ = writeln!(
                out,
                "ordertrack_tls_events_total{{event=\"{}\"}} {n}",
                what.label()
            );
        }
        out.push_str(
            "# HELP ordertrack_writer_batch_size Requests committed per write transaction.\n",
        );
        out.push_str("# TYPE ordertrack_writer_batch_size histogram\n");
        self.batch_sizes
            .render(&mut out, "ordertrack_writer_batch_size", "");
        out.push_str(
            "# HELP ordertrack_writer_commit_seconds Time to apply and commit one batch.\n",
        );
        out.push_str("# TYPE ordertrack_writer_commit_seconds histogram\n");
        self.commit_seconds
            .render(&mut out, "ordertrack_writer_commit_seconds", "");
        out.push_str(
            "# HELP ordertrack_writer_checkpoint_seconds Durable redb commits that let the commit log start over (the batch's own commit included).\n",
        );
        out.push_str("# TYPE ordertrack_writer_checkpoint_seconds histogram\n");
        self.checkpoint_seconds
            .render(&mut out, "ordertrack_writer_checkpoint_seconds", "");
        out
    }
}

/// What the store keeps and what the retention sweeper removed (over the life of the file), read
/// at scrape time: appended to [`Metrics::render`]'s text.
pub fn render_retention(s: &crate::store::StoreStats) -> String {
    let mut out = String::with_capacity(1024);
    out.push_str("# HELP ordertrack_kept_rows Rows the database keeps, by kind.\n");
    out.push_str("# TYPE ordertrack_kept_rows gauge\n");
    out.push_str("# HELP ordertrack_swept_total Rows the retention sweeper removed, by kind (over the life of the file).\n");
    out.push_str("# TYPE ordertrack_swept_total counter\n");
    for (kind, kept, swept) in [
        ("orders", s.orders, s.swept_orders),
        (
            "idempotency_keys",
            s.idempotency_keys,
            s.swept_idempotency_keys,
        ),
        ("outbox_events", s.events, s.swept_events),
    ] {
        let _ = writeln!(out, "ordertrack_kept_rows{{kind=\"{kind}\"}} {kept}");
        let _ = writeln!(out, "ordertrack_swept_total{{kind=\"{kind}\"}} {swept}");
    }
    out
}

impl crate::store::writer::BatchObserver for Metrics {
    fn batch_committed(&self, size: usize, commit_seconds: f64) {
        self.observe_batch(size, commit_seconds);
    }

    fn checkpointed(&self, seconds: f64) {
        self.checkpoint_seconds.observe(seconds);
    }
}

/// The identity provider's key set (`--jwks-url`): fetches by result, keys loaded, the age of
/// the last good fetch and tokens refused because their `kid` is in no loaded set.
pub fn render_jwks(out: &mut String, s: &crate::auth::JwksSnapshot) {
    out.push_str("# HELP ordertrack_jwks_fetches_total Fetches of the JWK set, by result.\n");
    out.push_str("# TYPE ordertrack_jwks_fetches_total counter\n");
    let _ = writeln!(
        out,
        "ordertrack_jwks_fetches_total{{result=\"ok\"}} {}\nordertrack_jwks_fetches_total{{result=\"failed\"}} {}",
        s.fetches_ok, s.fetches_failed
    );
    let _ = writeln!(
        out,
        "# HELP ordertrack_jwks_keys Usable keys in the loaded JWK set.\n# TYPE ordertrack_jwks_keys gauge\nordertrack_jwks_keys {}",
        s.keys
    );
    // NaN before the first success: "never" is not a small age.
    let age = s.last_success_age_secs.unwrap_or(f64::NAN);
    let _ = writeln!(
        out,
        "# HELP ordertrack_jwks_last_success_age_seconds Seconds since the JWK set was last fetched successfully.\n# TYPE ordertrack_jwks_last_success_age_seconds gauge\nordertrack_jwks_last_success_age_seconds {age}"
    );
    let _ = writeln!(
        out,
        "# HELP ordertrack_jwks_unknown_kid_refusals_total Tokens refused because no loaded key has their kid.\n# TYPE ordertrack_jwks_unknown_kid_refusals_total counter\nordertrack_jwks_unknown_kid_refusals_total {}",
        s.unknown_kid_refusals
    );
}
