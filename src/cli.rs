//! The command line: every command, flag and help text, as clap definitions and nothing more.
//! What the flags mean once combined with the environment and the TOML file is `config.rs`;
//! what each command does is its own module (`run.rs`, `demo.rs`, `watch.rs`, `db.rs`).

use crate::auth::{parse_permission, PERMISSION_FORMS};
use clap::builder::PossibleValuesParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use uuid::Uuid;

#[derive(Parser, Debug)]
#[command(
    name = "ordertrack",
    version,
    about = "Order-tracking edge server: REST API and SignalR hubs over an embedded redb file"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the REST API and the hubs (works with no configuration at all).
    Serve(ServeArgs),
    /// Print a token signed with the configured HS256 secret (development and tests).
    Token(TokenArgs),
    /// Serve like `serve` and run a simulated world of restaurants, customers and orders; prints
    /// a customer token, an order id and the command to watch that order live.
    Demo(DemoArgs),
    /// Follow one order in the terminal: live over the customer hub, polling /status when the
    /// socket is unavailable; stops after a terminal status.
    Watch(WatchArgs),
    /// Database maintenance: check, compact, backup, stats (same --data-dir as serve).
    #[command(subcommand)]
    Db(DbCommand),
}

/// Help heading of the token settings.
const JWT: &str = "JWT";
/// Help heading of the TLS settings.
const TLS: &str = "TLS";
/// Help heading of the limits and tuning knobs of `serve`, after the everyday settings.
const TUNING: &str = "Tuning";
/// Help heading of the retention settings.
const RETENTION: &str = "Retention";
/// Help heading of the cluster settings.
const CLUSTER: &str = "Cluster";

// Help texts: the first paragraph is the `-h` line, the whole text the `--help` entry.

/// Settings shared by every command that touches the data directory or tokens.
#[derive(Args, Debug, Clone, Default)]
pub struct CommonArgs {
    /// TOML configuration file.
    ///
    /// Every key is optional and named like its flag with underscores (see
    /// config/ordertrack.example.toml); unknown keys are an error. Precedence: flag, then
    /// environment variable, then this file, then the default.
    #[arg(long, env = "ORDERTRACK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory holding orders.redb [default: ./data].
    ///
    /// Also holds the commit log (orders.wal) and, in development, the generated
    /// dev-jwt-secret. `serve` creates it on first start, once the port is bound; `token`
    /// creates it (with a warning) when it has to generate a development secret.
    #[arg(long, env = "ORDERTRACK_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HS256 shared secret.
    ///
    /// Without it (and without a public key) a development secret is generated in the data
    /// directory, with a loud warning: development only. Prefer the environment variable to the
    /// flag, which other users can see in the process list.
    #[arg(long, env = "ORDERTRACK_JWT_SECRET", hide_env_values = true, help_heading = JWT)]
    pub jwt_secret: Option<String>,
    /// File holding the HS256 secret (e.g. a systemd credential).
    ///
    /// One trailing newline is ignored; an unreadable or empty file stops the start. Not with
    /// --jwt-secret.
    #[arg(long, env = "ORDERTRACK_JWT_SECRET_FILE", help_heading = JWT)]
    pub jwt_secret_file: Option<PathBuf>,
    /// PEM file with the public key for RS256, ES256 or EdDSA.
    #[arg(long, env = "ORDERTRACK_JWT_PUBLIC_KEY", help_heading = JWT)]
    pub jwt_public_key: Option<PathBuf>,
    /// Pinned JWT algorithm: HS256, RS256, ES256 or EdDSA [default: HS256].
    ///
    /// Tokens naming another algorithm, or "none", are refused.
    #[arg(long, env = "ORDERTRACK_JWT_ALGORITHM", help_heading = JWT)]
    pub jwt_algorithm: Option<String>,
    /// Required `iss` claim, when set.
    #[arg(long, env = "ORDERTRACK_JWT_ISSUER", help_heading = JWT)]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, when set.
    #[arg(long, env = "ORDERTRACK_JWT_AUDIENCE", help_heading = JWT)]
    pub jwt_audience: Option<String>,
    /// Clock skew allowed on exp/nbf, in seconds [default: 30].
    ///
    /// A token is still accepted this long after its `exp`, and already this long before its
    /// `nbf`.
    #[arg(long, env = "ORDERTRACK_JWT_LEEWAY", help_heading = JWT)]
    pub jwt_leeway: Option<u64>,
    /// URL (http or https) of the identity provider's JWK set.
    ///
    /// Tokens are checked with the key their `kid` names, each key pinned to its own algorithm
    /// (RS256, ES256 or EdDSA). The set is refetched on its Cache-Control max-age and when a
    /// token names an unknown kid; /readyz stays 503 until a first set loads. Not with
    /// --jwt-secret, --jwt-secret-file, --jwt-public-key or --jwt-algorithm.
    #[arg(long, env = "ORDERTRACK_JWKS_URL", help_heading = JWT)]
    pub jwks_url: Option<String>,
    /// PEM file of the CA(s) to trust for an https --jwks-url [default: the system's roots].
    #[arg(long, env = "ORDERTRACK_JWKS_CACERT", help_heading = JWT)]
    pub jwks_cacert: Option<PathBuf>,
    /// Least time between two fetches of the JWK set, e.g. 30s [default: 30s].
    ///
    /// Bounds what tokens with forged kids can make us fetch.
    #[arg(long, env = "ORDERTRACK_JWKS_MIN_REFRESH", help_heading = JWT)]
    pub jwks_min_refresh: Option<String>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    ///
    /// Plain HTTP, or HTTPS (and wss:// for the hubs) with --tls-cert and --tls-key.
    #[arg(long, env = "ORDERTRACK_LISTEN", value_parser = parse_listen)]
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain to serve HTTPS with (needs --tls-key).
    ///
    /// The server's certificate first, then its intermediates (certbot's fullchain.pem). TLS 1.2
    /// and 1.3, ALPN h2 and http/1.1. The pair is reloaded on SIGHUP and when either file changes
    /// (checked every 2 s), without dropping open connections; a pair that does not load is
    /// logged and the previous one kept.
    #[arg(long, env = "ORDERTRACK_TLS_CERT", help_heading = TLS)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (PKCS#8, RSA or SEC1; certbot's privkey.pem).
    #[arg(long, env = "ORDERTRACK_TLS_KEY", help_heading = TLS)]
    pub tls_key: Option<PathBuf>,
    /// Log format: text or json [default: text].
    ///
    /// Logs go to stderr; text is coloured only when stderr is a terminal and NO_COLOR is unset.
    /// The level comes from ORDERTRACK_LOG (e.g. "info", "ordertrack=debug"); the WebSocket and
    /// HTTP/2 libraries (tungstenite, tokio_tungstenite, h2) stay at info whatever it asks, as
    /// their detailed lines repeat what clients send, tokens included.
    #[arg(long, env = "ORDERTRACK_LOG_FORMAT")]
    pub log_format: Option<String>,
    #[command(flatten)]
    pub common: CommonArgs,
    /// Most open client connections, HTTP and hub [default: 19000].
    ///
    /// Beyond it a new connection is answered with a 503 problem and closed.
    #[arg(long, env = "ORDERTRACK_MAX_CONNECTIONS", help_heading = TUNING)]
    pub max_connections: Option<usize>,
    /// Most open hub (WebSocket) connections [default: 18000].
    ///
    /// Beyond it the upgrade is answered 503.
    #[arg(long, env = "ORDERTRACK_MAX_HUB_CONNECTIONS", help_heading = TUNING)]
    pub max_hub_connections: Option<usize>,
    /// Most open connections from one client address [default: 19000].
    #[arg(long, env = "ORDERTRACK_MAX_CONNECTIONS_PER_IP", help_heading = TUNING)]
    pub max_connections_per_ip: Option<usize>,
    /// redb page cache in MiB [default: 64].
    #[arg(long, env = "ORDERTRACK_CACHE_MB", help_heading = TUNING)]
    pub cache_mb: Option<usize>,
    /// Commit log size in MiB [default: 64].
    ///
    /// Each write batch is appended and synced to the commit log (orders.wal in the data
    /// directory), and redb is made durable at checkpoints. 0 turns the log off: every write
    /// batch is then a durable redb commit (slower, no extra file).
    #[arg(long, env = "ORDERTRACK_COMMIT_LOG_MB", help_heading = TUNING)]
    pub commit_log_mb: Option<usize>,
    /// Most write requests committed together [default: 512].
    ///
    /// Group commit: requests arriving together share one durable write. 1 commits each request
    /// alone (for comparisons).
    #[arg(long, env = "ORDERTRACK_WRITER_MAX_BATCH", help_heading = TUNING)]
    pub writer_max_batch: Option<usize>,
    /// Hub keep-alive in milliseconds [default: 15000].
    ///
    /// A Ping is sent after this long without sending anything (clients time out after 30 s of
    /// silence).
    #[arg(long, env = "ORDERTRACK_HUB_KEEPALIVE_MS", help_heading = TUNING)]
    pub hub_keepalive_ms: Option<u64>,
    /// Hub client timeout in milliseconds [default: 30000].
    ///
    /// A connection is closed after this long without receiving anything.
    #[arg(long, env = "ORDERTRACK_HUB_CLIENT_TIMEOUT_MS", help_heading = TUNING)]
    pub hub_client_timeout_ms: Option<u64>,
    /// Hub handshake timeout in milliseconds [default: 15000].
    ///
    /// The SignalR handshake must complete within this time.
    #[arg(long, env = "ORDERTRACK_HUB_HANDSHAKE_TIMEOUT_MS", help_heading = TUNING)]
    pub hub_handshake_timeout_ms: Option<u64>,
    /// Frames queued per hub connection [default: 256].
    ///
    /// A connection with more frames waiting is a slow consumer and is closed.
    #[arg(long, env = "ORDERTRACK_HUB_QUEUE_FRAMES", help_heading = TUNING)]
    pub hub_queue_frames: Option<usize>,
    /// Most subscriptions one hub connection may hold [default: 100].
    #[arg(long, env = "ORDERTRACK_HUB_MAX_SUBSCRIPTIONS", help_heading = TUNING)]
    pub hub_max_subscriptions: Option<usize>,
    /// Most hub connections one user may hold at once [default: 20].
    ///
    /// Counted per token `sub` over both hubs. Beyond it the upgrade is answered 429
    /// Hub.TooManyUserConnections, so one user cannot take the slots everyone else needs.
    #[arg(long, env = "ORDERTRACK_HUB_MAX_CONNECTIONS_PER_USER", help_heading = TUNING)]
    pub hub_max_connections_per_user: Option<usize>,
    /// Most subscriptions one user may hold over all its hub connections [default: 500].
    ///
    /// Beyond it a subscribe call completes with "Too many subscriptions for this user.".
    #[arg(long, env = "ORDERTRACK_HUB_MAX_SUBSCRIPTIONS_PER_USER", help_heading = TUNING)]
    pub hub_max_subscriptions_per_user: Option<usize>,
    /// Silence allowed to a hub client that has never pinged, in milliseconds [default: 120000].
    ///
    /// Once a client has sent a Ping (the official clients do every 15 s) the client timeout
    /// applies instead, as in ASP.NET; a client that never pings is closed (with
    /// allowReconnect: true) after this long without sending anything.
    #[arg(long, env = "ORDERTRACK_HUB_SILENT_TIMEOUT_MS", help_heading = TUNING)]
    pub hub_silent_timeout_ms: Option<u64>,
    /// Stateful reconnect replay buffer per hub connection, in bytes [default: 100000].
    ///
    /// Messages sent to a client that negotiated stateful reconnect are kept until it acks
    /// them, so a client whose socket drops gets them again, in order, on its new socket
    /// (ASP.NET's StatefulReconnectBufferSize). A connection whose unacked messages exceed it
    /// is dropped and its client starts over. 0 turns stateful reconnect off.
    #[arg(long, env = "ORDERTRACK_HUB_RECONNECT_BUFFER_BYTES", help_heading = TUNING)]
    pub hub_reconnect_buffer_bytes: Option<usize>,
    /// Stateful reconnect window in milliseconds [default: 15000].
    ///
    /// How long a stateful connection whose socket dropped keeps its subscriptions and buffers
    /// events for its client to come back (ASP.NET's DisconnectTimeout). Later, the client is
    /// refused (404) and starts over with a new connection.
    #[arg(long, env = "ORDERTRACK_HUB_RECONNECT_WINDOW_MS", help_heading = TUNING)]
    pub hub_reconnect_window_ms: Option<u64>,
    /// Longest a long poll waits for events before it is answered empty, in milliseconds
    /// [default: 90000].
    ///
    /// ASP.NET's poll timeout: the client polls again at once; keep it under any proxy's
    /// idle timeout in front of the server.
    #[arg(long, env = "ORDERTRACK_HUB_LONG_POLL_TIMEOUT_MS", help_heading = TUNING)]
    pub hub_long_poll_timeout_ms: Option<u64>,
    /// A long-polling client that has not polled for this long is dropped, in milliseconds
    /// [default: 15000].
    ///
    /// ASP.NET's disconnect timeout: the connection's slot, subscriptions and queued events
    /// are freed. Also bounds how long a closed SSE or long-polling connection waits for its
    /// client to collect the final Close.
    #[arg(long, env = "ORDERTRACK_HUB_DISCONNECT_TIMEOUT_MS", help_heading = TUNING)]
    pub hub_disconnect_timeout_ms: Option<u64>,
    /// Remove finished orders this long after they finished [default: off, keep forever].
    ///
    /// Delivered, Cancelled and Rejected orders whose last change is older are removed with
    /// their index entries, counters and outbox events (a GET then answers 404, and history
    /// counts shrink with them). A number with s, m, h or d (90s, 15m, 1h, 30d), or "off".
    #[arg(long, env = "ORDERTRACK_RETAIN_FINISHED", help_heading = RETENTION)]
    pub retain_finished: Option<String>,
    /// How long an Idempotency-Key is remembered [default: 24h].
    ///
    /// A retry with the same key after this is a new request. s, m, h or d, or "off" (forever).
    #[arg(long, env = "ORDERTRACK_IDEMPOTENCY_TTL", help_heading = RETENTION)]
    pub idempotency_ttl: Option<String>,
    /// How long outbox events are kept [default: 24h].
    ///
    /// The kitchen board's resume window. Never longer than --retain-finished, and never more
    /// than the newest 1,000,000 events whatever the time. s, m, h or d, or "off" (count cap
    /// only).
    #[arg(long, env = "ORDERTRACK_OUTBOX_RETENTION", help_heading = RETENTION)]
    pub outbox_retention: Option<String>,
    /// Time between two sweeps of expired data [default: 30s].
    ///
    /// Each sweep removes what expired in small steps through the writer. At most 1 minute.
    #[arg(long, env = "ORDERTRACK_SWEEP_INTERVAL", help_heading = RETENTION)]
    pub sweep_interval: Option<String>,
    /// Backups kept in <data-dir>/backups [default: 3].
    ///
    /// After each POST /admin/db/backup the older ones are deleted (`ordertrack db backup`
    /// moves its snapshot out at once, so it is never one of them).
    #[arg(long, env = "ORDERTRACK_KEEP_BACKUPS", help_heading = TUNING)]
    pub keep_backups: Option<usize>,
    /// Browser origins allowed to call the hubs, comma-separated [default: *, any origin].
    ///
    /// CORS on the hub endpoints, e.g. https://app.example.com,https://admin.example.com. Only
    /// these origins get Access-Control-Allow-Origin back; `*` (the default) allows any origin,
    /// `null` included, which is safe with bearer tokens (no cookies are used). REST has no CORS.
    #[arg(long, env = "ORDERTRACK_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Option<Vec<String>>,
    /// NATS server URLs, comma-separated: run as a node of a cluster (needs --cluster).
    ///
    /// e.g. nats://10.0.0.1:4222,nats://10.0.0.2:4222. The nodes of a region share one JetStream
    /// stream as their log: one node is the primary (holding a lease) and appends every write;
    /// the others apply the log to their own database, serve reads and hubs, and forward writes
    /// to the primary. Without it nothing about NATS is loaded. Credentials in a URL
    /// (nats://user:pass@host) are never logged.
    #[arg(long, env = "ORDERTRACK_NATS", help_heading = CLUSTER)]
    pub nats: Option<String>,
    /// The cluster's name (letters, digits, '_' and '-'; needs --nats).
    ///
    /// Names the stream ORDERTRACK_<NAME>, its subject ordertrack.<NAME>.log and the lease
    /// bucket ordertrack_<NAME>_lease. Every node of a region runs with the same name.
    #[arg(long, env = "ORDERTRACK_CLUSTER", help_heading = CLUSTER)]
    pub cluster: Option<String>,
    /// This node's base URL as the other nodes reach it [default: http://<listen address>].
    ///
    /// Replicas forward writes there while this node is the primary. Set it when listening on
    /// 0.0.0.0 or behind NAT (e.g. http://10.0.0.1:8080).
    #[arg(long, env = "ORDERTRACK_CLUSTER_ADVERTISE", help_heading = CLUSTER)]
    pub cluster_advertise: Option<String>,
    /// The primary's lease time to live [default: 3s].
    ///
    /// The primary renews it every third of this; when it stops (crash, partition) a replica
    /// that applied the whole log takes over after at most this long. ms or s (1500ms, 3s),
    /// from 500ms to 60s.
    #[arg(long, env = "ORDERTRACK_CLUSTER_LEASE_TTL", help_heading = CLUSTER)]
    pub cluster_lease_ttl: Option<String>,
    /// JetStream replicas of the log stream and the lease bucket [default: 3].
    ///
    /// 3 in production (a region of three NATS servers survives losing one); 1 with a single
    /// NATS server (tests, development). Only used when this node creates them.
    #[arg(long, env = "ORDERTRACK_CLUSTER_REPLICAS", help_heading = CLUSTER)]
    pub cluster_replicas: Option<usize>,
    /// Records a replica may trail the log before GET /readyz says it is not ready
    /// [default: 1000].
    #[arg(long, env = "ORDERTRACK_CLUSTER_MAX_LAG", help_heading = CLUSTER)]
    pub cluster_max_lag: Option<u64>,
}

#[derive(Args, Debug, Clone)]
pub struct TokenArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The user id (`sub`), a UUID such as 9f54b1a2-0000-4000-8000-000000000001.
    #[arg(long, value_parser = parse_user_id)]
    pub sub: uuid::Uuid,
    /// A role to grant (repeatable).
    #[arg(long = "role", value_name = "ROLE", value_parser = PossibleValuesParser::new(crate::auth::ROLES))]
    pub roles: Vec<String>,
    /// A permission to grant: RestaurantStaff:<restaurantId> or RestaurantOwner:<restaurantId>
    /// (repeatable).
    #[arg(long = "permission", value_name = "PERMISSION", value_parser = permission_arg)]
    pub permissions: Vec<String>,
    /// Lifetime, e.g. 90s, 15m, 1h, 7d.
    ///
    /// A negative lifetime (e.g. -1h) mints an already expired token, for tests.
    #[arg(long, default_value = "1h", allow_hyphen_values = true)]
    pub ttl: String,
}

/// Accepts a `--permission` only in a form the server grants something for.
fn permission_arg(s: &str) -> Result<String, String> {
    match parse_permission(s) {
        Some(_) => Ok(s.to_string()),
        None => Err(format!(
            "use {PERMISSION_FORMS}, with the restaurant id a UUID"
        )),
    }
}

// ---- demo ------------------------------------------------------------------------------------

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// New simulated orders per second.
    #[arg(long, default_value_t = 0.5)]
    pub rate: f64,
    /// Restaurants in the simulated world.
    #[arg(long, default_value_t = 6)]
    pub restaurants: usize,
    /// Customers in the simulated world.
    #[arg(long, default_value_t = 40)]
    pub customers: usize,
    /// Average pause between two steps of an order's life, in milliseconds.
    #[arg(long, default_value_t = 4000)]
    pub step_ms: u64,
    /// How long a featured order waits before it starts moving (time to start `watch`), in
    /// milliseconds.
    #[arg(long, default_value_t = 20_000)]
    pub lead_ms: u64,
    /// Print every simulated change instead of a summary every 10 seconds.
    #[arg(long)]
    pub verbose: bool,
}

// ---- watch -----------------------------------------------------------------------------------

#[derive(Args, Debug, Clone)]
pub struct WatchArgs {
    /// The order to follow.
    pub order_id: Uuid,
    /// The server's base URL, http:// or https://.
    #[arg(long, env = "ORDERTRACK_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// PEM file of the certificate authorities to trust for an https:// URL [default: the
    /// system's store].
    ///
    /// For a private CA or a self-signed server certificate. Without it the system's trust store
    /// is used (SSL_CERT_FILE / SSL_CERT_DIR, else the OS bundle such as
    /// /etc/ssl/certs/ca-certificates.crt).
    #[arg(long, env = "ORDERTRACK_CACERT")]
    pub cacert: Option<PathBuf>,
    /// A bearer token of someone who may see the order (its customer, the restaurant's staff …).
    #[arg(long, env = "ORDERTRACK_TOKEN", hide_env_values = true)]
    pub token: String,
    /// How to follow: the hub with polling as fallback, only the hub, or only polling.
    #[arg(long, value_enum, default_value_t = Transport::Auto)]
    pub transport: Transport,
    /// Time between polls of /status while the socket is unavailable (e.g. 12s, 1m).
    #[arg(long, default_value = "12s")]
    pub poll_interval: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// The customer hub; polling /status while the hub is unavailable.
    Auto,
    /// Only the customer hub: fail when it is unavailable.
    Websocket,
    /// Only polling /status.
    Poll,
}

// ---- db --------------------------------------------------------------------------------------

#[derive(Subcommand, Debug, Clone)]
pub enum DbCommand {
    /// Verify page checksums and the schema's invariants (indexes, counters, events). Needs the
    /// server stopped. Exits non-zero when anything is wrong.
    Check(DbArgs),
    /// Give free pages back to the file system. Needs the server stopped.
    Compact(DbArgs),
    /// Write a consistent copy into DEST, a new directory that works as a data directory
    /// (`serve --data-dir DEST`). Works while the server runs.
    Backup(BackupArgs),
    /// Print counts and sizes. Works while the server runs.
    Stats(DbArgs),
}

#[derive(Args, Debug, Clone)]
pub struct DbArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// URL of the server holding the database, used when it runs [default: http:// (https://
    /// when a TLS certificate is configured) + the configured listen address].
    #[arg(long, env = "ORDERTRACK_URL")]
    pub url: Option<String>,
    /// PEM file of the certificate authorities to trust for an https:// URL [default: the
    /// system's store].
    #[arg(long, env = "ORDERTRACK_CACERT")]
    pub cacert: Option<PathBuf>,
    /// An Administrator token for the running server [default: one minted with the configured
    /// HS256 secret].
    #[arg(long, env = "ORDERTRACK_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct BackupArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// The new data directory to write (it must not already hold a database).
    pub dest: PathBuf,
}

/// `--sub`: a UUID in its standard hyphenated form (the only spelling the server accepts).
fn parse_user_id(s: &str) -> Result<uuid::Uuid, String> {
    crate::auth::canonical_uuid(s).ok_or_else(|| {
        "must be a UUID in its standard form, such as 9f54b1a2-0000-4000-8000-000000000001".into()
    })
}

/// `--listen`: an IP address and a port (a host name is not looked up).
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        "use IP:PORT, such as 127.0.0.1:8080, 0.0.0.0:8080 or [::]:8080 (no host names)".into()
    })
}
