//! The commands behind the CLI: `serve` wires store, writer, hubs and HTTP together and handles
//! signals; `token` mints a development token.

use crate::auth::{Authenticator, TokenMinter};
use crate::cli::{ServeArgs, TokenArgs};
use crate::config::{parse_ttl, token_auth, ConfigError, LogFormat, Settings};
use crate::http::server::{self, Limits};
use crate::http::App;
use crate::hub::Hubs;
use crate::metrics::Metrics;
use crate::store::{self, Store, StoreSettings, WriterSettings};
use crate::tls::CurrentCert;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::filter::{LevelFilter, Targets};

#[derive(Debug, Error)]
pub enum RunError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("cannot open the database: {0}")]
    Store(#[from] store::StoreError),
    #[error("cannot listen on {0}: {1}")]
    Listen(std::net::SocketAddr, std::io::Error),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot mint a token: {0}")]
    Mint(String),
    #[error("cannot serve TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// Dependencies whose detailed levels repeat what a client sent, capped whatever `ORDERTRACK_LOG`
/// asks for, so no token reaches the log through them (clients copy `Authorization: Bearer <JWT>`
/// into every hub invocation's `headers`):
/// - `tungstenite`, `tokio_tungstenite` (through `log`): at trace every WebSocket frame (as hex)
///   and every text message verbatim; at debug close frames with the peer's reason text.
/// - `h2`: at trace some header values and HPACK details; at debug the peer's GOAWAY data.
/// - `async_nats` (cluster mode): at debug the server addresses with their credentials; at
///   trace every protocol operation, the log's records (orders, notes, addresses) included.
///
/// Nothing else in the binary logs payloads: hyper's own logging is compiled out (its `tracing`
/// feature is off) and redb, tokio and mio log nothing a client sent.
const DEPENDENCY_CAPS: [(&str, LevelFilter); 4] = [
    ("async_nats", LevelFilter::INFO),
    ("tungstenite", LevelFilter::INFO),
    ("tokio_tungstenite", LevelFilter::INFO),
    ("h2", LevelFilter::INFO),
];

/// Logs to stderr, filtered by `ORDERTRACK_LOG` (default `info`) and by [`DEPENDENCY_CAPS`];
/// text logs are coloured only when stderr is a terminal and `NO_COLOR` is unset or empty.
pub(crate) fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("ORDERTRACK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second filter that every event must also pass: a user's more specific directive
    // (`tungstenite::protocol=trace`) cannot lift the caps.
    let caps = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(DEPENDENCY_CAPS);
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    let _ = match format {
        LogFormat::Json => builder.json().finish().with(caps).try_init(),
        LogFormat::Text => builder.finish().with(caps).try_init(),
    };
}

/// `ordertrack serve`: runs until SIGTERM or Ctrl-C, then shuts down cleanly.
pub fn serve(args: ServeArgs) -> Result<(), RunError> {
    let settings = Settings::resolve(&args)?;
    init_logging(settings.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    rt.block_on(serve_async(settings))
}

async fn serve_async(settings: Settings) -> Result<(), RunError> {
    serve_with(settings, |_, _| {}).await
}

/// Serves until SIGTERM or Ctrl-C. `on_started` runs once connections are accepted, with the bound
/// address and a token that is cancelled when shutdown begins (the demo's simulator uses both).
pub(crate) async fn serve_with(
    settings: Settings,
    on_started: impl FnOnce(std::net::SocketAddr, CancellationToken),
) -> Result<(), RunError> {
    let auth = Authenticator::new(&settings.auth).map_err(ConfigError::from)?;
    // A certificate that does not load is one line at start, before anything is bound or made.
    let tls = match &settings.tls {
        Some(files) => {
            let current = CurrentCert::new(files.load()?);
            let config = crate::tls::server_config(current.clone())?;
            Some((
                files.clone(),
                current,
                tokio_rustls::TlsAcceptor::from(config),
            ))
        }
        None => None,
    };
    // Bind before anything is logged or created, so a taken port is one clear line of error
    // and leaves no data directory or development secret behind.
    let listener = bind(settings.listen).map_err(|e| RunError::Listen(settings.listen, e))?;
    settings.create_data_dir()?;
    if settings.dev_secret {
        tracing::warn!(
            path = %settings.data_dir.join("dev-jwt-secret").display(),
            "NO JWT SECRET CONFIGURED: using a generated development secret. Set --jwt-secret or ORDERTRACK_JWT_SECRET in production."
        );
    } else if let Some(secret) = settings.auth.secret.as_ref().filter(|s| s.len() < 32) {
        // RFC 7518 3.2: an HS256 key must be at least as long as the hash (256 bits).
        tracing::warn!(
            bytes = secret.len(),
            "the HS256 secret is shorter than 32 bytes: tokens signed with it can be guessed offline; use a long random secret"
        );
    }
    let started = std::time::Instant::now();
    let store = Store::open(
        &settings.data_dir,
        &StoreSettings {
            cache_bytes: settings.cache_mb.max(1) * 1024 * 1024,
            commit_log_bytes: (settings.commit_log_mb as u64).saturating_mul(1024 * 1024),
        },
    )?;
    let metrics = Arc::new(Metrics::new());
    let bound = listener.local_addr().unwrap_or(settings.listen);
    let cluster = settings.cluster.clone().map(|mut c| {
        if c.advertise.is_empty() {
            let scheme = if tls.is_some() { "https" } else { "http" };
            c.advertise = format!("{scheme}://{bound}");
            if bound.ip().is_unspecified() {
                tracing::warn!(advertise = %c.advertise, "listening on a wildcard address: set --cluster-advertise to the address the other nodes reach this one at");
            }
        }
        crate::cluster::new(c, metrics.clone())
    });
    let shutdown = CancellationToken::new();
    auth.start_refresh(shutdown.child_token());
    let hubs = Hubs::new(
        settings.hub.clone(),
        metrics.clone(),
        shutdown.child_token(),
    );
    let (writer, writer_thread) = store::writer::spawn_replicated(
        &store,
        WriterSettings {
            max_batch: settings.writer_max_batch,
            idempotency_ttl: settings.retention.idempotency,
            ..WriterSettings::default()
        },
        hubs.clone(),
        Some(metrics.clone()),
        cluster
            .clone()
            .map(|c| c as Arc<dyn crate::store::Replicator>),
    )?;
    // Stopped after the HTTP server (in-flight writes still reach the log), before the writer.
    let cluster_stop = CancellationToken::new();
    let cluster_task = cluster
        .clone()
        .map(|c| crate::cluster::start(c, store.clone(), writer.clone(), cluster_stop.clone()));
    let sweeper = tokio::spawn(store::sweep::run(
        writer.clone(),
        settings.retention,
        settings.sweep_interval,
        shutdown.child_token(),
    ));
    let app = Arc::new(App {
        store: store.clone(),
        writer,
        auth,
        metrics,
        hubs: hubs.clone(),
        ready: true.into(),
        keep_backups: settings.keep_backups,
        cluster,
        forwarder: Default::default(),
    });
    let addr = listener.local_addr().unwrap_or(settings.listen);
    tracing::info!(
        listen = %addr,
        scheme = if tls.is_some() { "https" } else { "http" },
        data_dir = %settings.data_dir.display(),
        startup_ms = started.elapsed().as_millis() as u64,
        "ordertrack serving"
    );
    let limits = Limits {
        max_connections: settings.max_connections,
        max_per_ip: settings.max_connections_per_ip,
        ..Limits::default()
    };
    let http_shutdown = shutdown.clone();
    let acceptor = match tls {
        Some((files, current, acceptor)) => {
            tracing::info!(sha256 = %crate::tls::fingerprint(&current.get()), "TLS certificate loaded");
            tokio::spawn(crate::http::tls::reload_loop(
                files,
                current,
                app.metrics.clone(),
                shutdown.child_token(),
            ));
            Some(acceptor)
        }
        None => None,
    };
    let server = tokio::spawn(server::run(
        listener,
        app.clone(),
        limits,
        acceptor,
        http_shutdown,
    ));
    on_started(addr, shutdown.child_token());
    wait_for_signal().await;
    tracing::info!("shutting down");
    app.ready.store(false, Ordering::Relaxed);
    shutdown.cancel();
    hubs.close_all().await;
    let _ = server.await;
    cluster_stop.cancel();
    if let Some(task) = cluster_task {
        let _ = task.await;
    }
    // The sweeper holds a writer handle: it must let go before the writer can stop.
    let _ = sweeper.await;
    // Dropping the last writer handle stops the writer after its final commit.
    drop(app);
    let joined = tokio::task::spawn_blocking(move || writer_thread.join()).await;
    if !matches!(joined, Ok(Ok(()))) {
        tracing::error!("writer thread ended abnormally");
    }
    drop(store);
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Binds with a deep accept queue: a reconnect storm sends thousands of SYNs at once, and the
/// default queue of 128 makes the overflow wait a full second for the SYN retransmit.
fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// `ordertrack token`: prints a signed token on stdout.
pub fn token(args: TokenArgs) -> Result<(), RunError> {
    let auth = token_auth(&args.common)?;
    let minter = TokenMinter::new(&auth).map_err(ConfigError::from)?;
    let ttl = parse_ttl(&args.ttl)?;
    let token = minter
        .mint(args.sub, &args.roles, &args.permissions, ttl)
        .map_err(|e| RunError::Mint(e.to_string()))?;
    println!("{token}");
    Ok(())
}
