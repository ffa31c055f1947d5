//! Settings: every setting has a flag (`cli.rs`), an `ORDERTRACK_*` environment variable and a
//! key in the optional TOML file, in that order of precedence, then a default. This file
//! resolves them (and the development secret) into what the commands run with.

use crate::auth::{parse_algorithm, AuthSettings, JwksSettings, KeyError, DEFAULT_MIN_REFRESH};
use crate::cli::{CommonArgs, ServeArgs};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The optional TOML file: the same keys as the flags, with underscores.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub jwt_secret: Option<String>,
    pub jwt_public_key: Option<PathBuf>,
    pub jwt_algorithm: Option<String>,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub jwt_leeway: Option<u64>,
    pub jwt_secret_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    pub jwks_cacert: Option<PathBuf>,
    pub jwks_min_refresh: Option<String>,
    pub log_format: Option<String>,
    pub max_connections: Option<usize>,
    pub max_hub_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub cache_mb: Option<usize>,
    pub commit_log_mb: Option<usize>,
    pub writer_max_batch: Option<usize>,
    pub hub_keepalive_ms: Option<u64>,
    pub hub_client_timeout_ms: Option<u64>,
    pub hub_handshake_timeout_ms: Option<u64>,
    pub hub_queue_frames: Option<usize>,
    pub hub_max_subscriptions: Option<usize>,
    pub hub_max_connections_per_user: Option<usize>,
    pub hub_max_subscriptions_per_user: Option<usize>,
    pub hub_silent_timeout_ms: Option<u64>,
    pub hub_reconnect_buffer_bytes: Option<usize>,
    pub hub_reconnect_window_ms: Option<u64>,
    pub hub_long_poll_timeout_ms: Option<u64>,
    pub hub_disconnect_timeout_ms: Option<u64>,
    pub cors_origins: Option<Vec<String>>,
    pub keep_backups: Option<usize>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub retain_finished: Option<String>,
    pub idempotency_ttl: Option<String>,
    pub outbox_retention: Option<String>,
    pub sweep_interval: Option<String>,
    pub nats: Option<String>,
    pub cluster: Option<String>,
    pub cluster_advertise: Option<String>,
    pub cluster_lease_ttl: Option<String>,
    pub cluster_replicas: Option<usize>,
    pub cluster_max_lag: Option<u64>,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("bad config file {0}: {1}")]
    Parse(PathBuf, String),
    #[error("cannot read the JWT public key {0}: {1}")]
    Key(PathBuf, std::io::Error),
    #[error("data directory {0} is not usable: {1}")]
    DataDir(PathBuf, std::io::Error),
    #[error("{0}")]
    Dir(crate::store::dirsync::DirError),
    #[error("{0}")]
    Auth(#[from] KeyError),
    #[error("cannot read the JWT secret file {0}: {1}")]
    SecretFile(PathBuf, std::io::Error),
    #[error("the JWT secret file {0} is empty")]
    EmptySecretFile(PathBuf),
    #[error("cannot read --jwks-cacert {0}: {1}")]
    CaCert(PathBuf, std::io::Error),
    #[error("--{0} and --{1} cannot be combined: {2}")]
    Conflict(&'static str, &'static str, &'static str),
    #[error("--{0} needs --jwks-url")]
    NeedsJwks(&'static str),
    #[error("bad --jwks-min-refresh '{0}': use a positive number with s, m, h or d")]
    MinRefresh(String),
    #[error("log format must be 'text' or 'json', not '{0}'")]
    LogFormat(String),
    #[error("--{0} must be at least 1 (a limit of 0 would refuse everything)")]
    Zero(String),
    #[error("bad --ttl '{0}': use a number with s, m, h or d")]
    Ttl(String),
    #[error("--tls-cert and --tls-key go together: {0} is set without {1}")]
    TlsHalf(&'static str, &'static str),
    #[error(
        "bad --{0} '{1}': use a positive number with s, m, h or d (e.g. 90s, 15m, 24h, 30d){2}"
    )]
    Duration(&'static str, String, &'static str),
    #[error("--nats and --cluster go together: {0} is set without {1}")]
    ClusterHalf(&'static str, &'static str),
    #[error("{0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("bad --cluster-lease-ttl '{0}': use 500ms to 60s (e.g. 1500ms, 3s)")]
    LeaseTtl(String),
    #[error("bad --cluster-replicas {0}: JetStream allows 1 to 5")]
    Replicas(usize),
    #[error("bad --cluster-advertise '{0}': use http://host:port or https://host:port")]
    Advertise(String),
    #[error("the development secret {0} was created by another process meanwhile: start again")]
    DevSecretRace(PathBuf),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Resolved settings of `serve`.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub auth: AuthSettings,
    /// True when the secret was generated in the data directory (development mode).
    pub dev_secret: bool,
    /// True when this start generated that secret and has not written it yet: it is written by
    /// [`Settings::create_data_dir`], once the port is bound.
    pub dev_secret_unsaved: bool,
    pub log_format: LogFormat,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub cache_mb: usize,
    pub commit_log_mb: usize,
    pub writer_max_batch: usize,
    pub keep_backups: usize,
    pub retention: crate::store::Retention,
    pub sweep_interval: std::time::Duration,
    pub hub: crate::hub::HubSettings,
    /// Serve HTTPS with these files (reloaded when they change).
    pub tls: Option<crate::tls::TlsFiles>,
    /// Cluster mode (`--nats`, `--cluster`); `advertise` is empty when not set (`serve` fills
    /// it in from the bound address).
    pub cluster: Option<crate::cluster::ClusterSettings>,
}

fn load_file(path: Option<&Path>) -> Result<FileConfig, ConfigError> {
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.into(), e))?;
    toml::from_str(&text).map_err(|e| {
        // One line: where, then what (the library's own rendering spans several lines).
        let at = e
            .span()
            .and_then(|s| text.get(..s.start))
            .map(|before| format!("line {}: ", before.matches('\n').count() + 1))
            .unwrap_or_default();
        ConfigError::Parse(path.into(), format!("{at}{}", e.message().trim()))
    })
}

/// How the development secret was found, when no secret is configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DevSecret {
    /// A secret is configured, or the algorithm needs a public key instead.
    Unused,
    /// Read from the data directory.
    Read,
    /// Generated now and not written yet.
    Generated,
}

/// Resolves the token settings; reads or generates (without writing it) the development secret
/// when nothing is configured.
fn resolve_auth(
    c: &CommonArgs,
    f: &FileConfig,
    data_dir: &Path,
) -> Result<(AuthSettings, DevSecret), ConfigError> {
    let algorithm = parse_algorithm(
        c.jwt_algorithm
            .as_deref()
            .or(f.jwt_algorithm.as_deref())
            .unwrap_or("HS256"),
    )?;
    let public_key_path = c.jwt_public_key.clone().or(f.jwt_public_key.clone());
    let public_key_pem = match &public_key_path {
        Some(p) => Some(std::fs::read(p).map_err(|e| ConfigError::Key(p.clone(), e))?),
        None => None,
    };
    let secret_file = c.jwt_secret_file.clone().or(f.jwt_secret_file.clone());
    let mut secret = c
        .jwt_secret
        .clone()
        .or(f.jwt_secret.clone())
        .map(String::into_bytes);
    if let Some(path) = &secret_file {
        if secret.is_some() {
            return Err(ConfigError::Conflict(
                "jwt-secret",
                "jwt-secret-file",
                "give the secret one way",
            ));
        }
        secret = Some(read_secret_file(path)?);
    }
    let jwks = resolve_jwks(c, f)?;
    if jwks.is_some() {
        let static_keys = [
            ("jwt-secret", secret.is_some() && secret_file.is_none()),
            ("jwt-secret-file", secret_file.is_some()),
            ("jwt-public-key", public_key_path.is_some()),
            (
                "jwt-algorithm",
                c.jwt_algorithm.is_some() || f.jwt_algorithm.is_some(),
            ),
        ];
        if let Some((name, _)) = static_keys.iter().find(|(_, set)| *set) {
            return Err(ConfigError::Conflict(
                "jwks-url",
                name,
                "the key set names each key and its algorithm",
            ));
        }
    }
    let mut dev = DevSecret::Unused;
    if secret.is_none() && jwks.is_none() && algorithm == jsonwebtoken::Algorithm::HS256 {
        let (s, generated) = dev_secret(data_dir);
        secret = Some(s);
        dev = if generated {
            DevSecret::Generated
        } else {
            DevSecret::Read
        };
    }
    Ok((
        AuthSettings {
            algorithm,
            secret,
            public_key_pem,
            issuer: c.jwt_issuer.clone().or(f.jwt_issuer.clone()),
            audience: c.jwt_audience.clone().or(f.jwt_audience.clone()),
            leeway_secs: c.jwt_leeway.or(f.jwt_leeway).unwrap_or(30),
            jwks,
        },
        dev,
    ))
}

/// The HS256 secret in a file (a systemd credential, a mounted secret): its text without the
/// trailing newline(s) an editor or `echo` leaves. Its content is never logged.
fn read_secret_file(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let mut bytes = std::fs::read(path).map_err(|e| ConfigError::SecretFile(path.into(), e))?;
    while matches!(bytes.last(), Some(b'\n' | b'\r')) {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(ConfigError::EmptySecretFile(path.into()));
    }
    Ok(bytes)
}

/// The identity provider's key set settings, when `--jwks-url` is given.
fn resolve_jwks(c: &CommonArgs, f: &FileConfig) -> Result<Option<JwksSettings>, ConfigError> {
    let url = c.jwks_url.clone().or(f.jwks_url.clone());
    let cacert = c.jwks_cacert.clone().or(f.jwks_cacert.clone());
    let min_refresh = c.jwks_min_refresh.clone().or(f.jwks_min_refresh.clone());
    let Some(url) = url else {
        return match (cacert, min_refresh) {
            (Some(_), _) => Err(ConfigError::NeedsJwks("jwks-cacert")),
            (_, Some(_)) => Err(ConfigError::NeedsJwks("jwks-min-refresh")),
            _ => Ok(None),
        };
    };
    let min_refresh = match min_refresh {
        None => DEFAULT_MIN_REFRESH,
        Some(text) => match parse_ttl(&text) {
            Ok(secs) if secs > 0 => std::time::Duration::from_secs(secs as u64),
            _ => return Err(ConfigError::MinRefresh(text)),
        },
    };
    let cacert_pem = match &cacert {
        Some(p) => Some(std::fs::read(p).map_err(|e| ConfigError::CaCert(p.clone(), e))?),
        None => None,
    };
    Ok(Some(JwksSettings {
        url,
        cacert_pem,
        min_refresh,
    }))
}

/// The secret in `dev-jwt-secret` in the data directory, or a new random one (`true`: not
/// written yet, see [`save_dev_secret`]). Writes nothing.
fn dev_secret(data_dir: &Path) -> (Vec<u8>, bool) {
    use base64::Engine;
    if let Ok(s) = std::fs::read_to_string(data_dir.join("dev-jwt-secret")) {
        let s = s.trim();
        if !s.is_empty() {
            return (s.as_bytes().to_vec(), false);
        }
    }
    let mut raw = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut raw);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    (secret.into_bytes(), true)
}

/// Writes a generated development secret (0600) into the existing data directory. Another
/// process may have written one since it was generated: the same secret is fine, an empty file
/// is replaced, a different secret is an error (tokens would not verify).
fn save_dev_secret(data_dir: &Path, secret: &[u8]) -> Result<(), ConfigError> {
    let path = data_dir.join("dev-jwt-secret");
    let failed = |e| ConfigError::DataDir(data_dir.into(), e);
    match write_private(&path, secret, true) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let found = std::fs::read_to_string(&path).map_err(failed)?;
            match found.trim() {
                "" => write_private(&path, secret, false).map_err(failed),
                t if t.as_bytes() == secret => Ok(()),
                _ => Err(ConfigError::DevSecretRace(path)),
            }
        }
        other => other.map_err(failed),
    }?;
    // Tokens minted with the secret must outlive a power cut: its name must be durable too.
    crate::store::dirsync::sync_dir(data_dir).map_err(ConfigError::Dir)
}

/// Creates the data directory (and its missing ancestors) so that it survives a power cut:
/// the parent of each directory created is synced.
fn make_data_dir(data_dir: &Path) -> Result<(), ConfigError> {
    use crate::store::dirsync::{self, DirError};
    dirsync::create_dir_all(data_dir).map_err(|e| match e {
        DirError::Create(_, io) => ConfigError::DataDir(data_dir.into(), io),
        sync => ConfigError::Dir(sync),
    })
}

/// Writes `bytes` to a file only its owner can read; `new` refuses an existing file.
fn write_private(path: &Path, bytes: &[u8], new: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if new {
        opts.create_new(true);
    } else {
        opts.create(true).truncate(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn data_dir_of(c: &CommonArgs, f: &FileConfig) -> PathBuf {
    c.data_dir
        .clone()
        .or(f.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("./data"))
}

impl Settings {
    pub fn resolve(a: &ServeArgs) -> Result<Settings, ConfigError> {
        let f = load_file(a.common.config.as_deref())?;
        let data_dir = data_dir_of(&a.common, &f);
        let (auth, dev_secret) = resolve_auth(&a.common, &f, &data_dir)?;
        let log_format = match a
            .log_format
            .as_deref()
            .or(f.log_format.as_deref())
            .unwrap_or("text")
        {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(ConfigError::LogFormat(other.to_string())),
        };
        let tls = resolve_tls(a.tls_cert.clone(), a.tls_key.clone(), &f)?;
        let cluster = resolve_cluster(a, &f)?;
        let settings = Settings {
            tls,
            cluster,
            listen: a
                .listen
                .or(f.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            data_dir,
            auth,
            dev_secret: dev_secret != DevSecret::Unused,
            dev_secret_unsaved: dev_secret == DevSecret::Generated,
            log_format,
            max_connections: a.max_connections.or(f.max_connections).unwrap_or(19_000),
            max_connections_per_ip: a
                .max_connections_per_ip
                .or(f.max_connections_per_ip)
                .unwrap_or(19_000),
            cache_mb: a.cache_mb.or(f.cache_mb).unwrap_or(64),
            commit_log_mb: a.commit_log_mb.or(f.commit_log_mb).unwrap_or(64),
            writer_max_batch: a.writer_max_batch.or(f.writer_max_batch).unwrap_or(512),
            keep_backups: a.keep_backups.or(f.keep_backups).unwrap_or(3),
            retention: crate::store::Retention {
                finished: duration_setting(
                    "retain-finished",
                    a.retain_finished
                        .as_deref()
                        .or(f.retain_finished.as_deref()),
                    None,
                )?,
                idempotency: duration_setting(
                    "idempotency-ttl",
                    a.idempotency_ttl
                        .as_deref()
                        .or(f.idempotency_ttl.as_deref()),
                    Some(DAY),
                )?,
                outbox: duration_setting(
                    "outbox-retention",
                    a.outbox_retention
                        .as_deref()
                        .or(f.outbox_retention.as_deref()),
                    Some(DAY),
                )?,
            },
            sweep_interval: sweep_interval(
                a.sweep_interval.as_deref().or(f.sweep_interval.as_deref()),
            )?,
            hub: {
                let d = crate::hub::HubSettings::default();
                let ms = std::time::Duration::from_millis;
                crate::hub::HubSettings {
                    max_connections: a
                        .max_hub_connections
                        .or(f.max_hub_connections)
                        .unwrap_or(d.max_connections),
                    keep_alive: a
                        .hub_keepalive_ms
                        .or(f.hub_keepalive_ms)
                        .map(ms)
                        .unwrap_or(d.keep_alive),
                    client_timeout: a
                        .hub_client_timeout_ms
                        .or(f.hub_client_timeout_ms)
                        .map(ms)
                        .unwrap_or(d.client_timeout),
                    handshake_timeout: a
                        .hub_handshake_timeout_ms
                        .or(f.hub_handshake_timeout_ms)
                        .map(ms)
                        .unwrap_or(d.handshake_timeout),
                    queue_frames: a
                        .hub_queue_frames
                        .or(f.hub_queue_frames)
                        .unwrap_or(d.queue_frames),
                    max_subscriptions_per_connection: a
                        .hub_max_subscriptions
                        .or(f.hub_max_subscriptions)
                        .unwrap_or(d.max_subscriptions_per_connection),
                    max_connections_per_user: a
                        .hub_max_connections_per_user
                        .or(f.hub_max_connections_per_user)
                        .unwrap_or(d.max_connections_per_user),
                    max_subscriptions_per_user: a
                        .hub_max_subscriptions_per_user
                        .or(f.hub_max_subscriptions_per_user)
                        .unwrap_or(d.max_subscriptions_per_user),
                    silent_timeout: a
                        .hub_silent_timeout_ms
                        .or(f.hub_silent_timeout_ms)
                        .map(ms)
                        .unwrap_or(d.silent_timeout),
                    reconnect_buffer: a
                        .hub_reconnect_buffer_bytes
                        .or(f.hub_reconnect_buffer_bytes)
                        .unwrap_or(d.reconnect_buffer),
                    reconnect_window: a
                        .hub_reconnect_window_ms
                        .or(f.hub_reconnect_window_ms)
                        .map(ms)
                        .unwrap_or(d.reconnect_window),
                    long_poll_timeout: a
                        .hub_long_poll_timeout_ms
                        .or(f.hub_long_poll_timeout_ms)
                        .map(ms)
                        .unwrap_or(d.long_poll_timeout),
                    disconnect_timeout: a
                        .hub_disconnect_timeout_ms
                        .or(f.hub_disconnect_timeout_ms)
                        .map(ms)
                        .unwrap_or(d.disconnect_timeout),
                    cors_origins: cors_origins(a.cors_origins.clone().or(f.cors_origins.clone())),
                    ..d
                }
            },
        };
        settings.refuse_zero_limits()?;
        Ok(settings)
    }

    /// A limit of 0 would refuse every connection, write or subscription while looking like a
    /// working server: say so at start instead. (`max_hub_connections` may be 0: that turns the
    /// hubs off, and clients poll.)
    fn refuse_zero_limits(&self) -> Result<(), ConfigError> {
        let h = &self.hub;
        let limits = [
            ("max_connections", self.max_connections),
            ("max_connections_per_ip", self.max_connections_per_ip),
            ("writer_max_batch", self.writer_max_batch),
            ("hub_queue_frames", h.queue_frames),
            ("hub_max_subscriptions", h.max_subscriptions_per_connection),
            ("hub_max_connections_per_user", h.max_connections_per_user),
            (
                "hub_max_subscriptions_per_user",
                h.max_subscriptions_per_user,
            ),
            ("keep_backups", self.keep_backups),
            (
                "hub_long_poll_timeout_ms",
                h.long_poll_timeout.as_millis() as usize,
            ),
            (
                "hub_disconnect_timeout_ms",
                h.disconnect_timeout.as_millis() as usize,
            ),
        ];
        match limits.iter().find(|(_, v)| *v == 0) {
            Some((name, _)) => Err(ConfigError::Zero(name.replace('_', "-"))),
            None => Ok(()),
        }
    }

    /// Creates the data directory and writes a development secret this start generated.
    /// `serve` calls it only once the port is bound: a start that fails earlier (a taken port,
    /// a bad setting) leaves nothing behind.
    pub fn create_data_dir(&self) -> Result<(), ConfigError> {
        make_data_dir(&self.data_dir)?;
        match (&self.auth.secret, self.dev_secret_unsaved) {
            (Some(secret), true) => save_dev_secret(&self.data_dir, secret),
            _ => Ok(()),
        }
    }
}

/// The certificate and key files: both or neither (flag or environment over the file, each).
fn resolve_tls(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    f: &FileConfig,
) -> Result<Option<crate::tls::TlsFiles>, ConfigError> {
    match (cert.or(f.tls_cert.clone()), key.or(f.tls_key.clone())) {
        (Some(cert), Some(key)) => Ok(Some(crate::tls::TlsFiles { cert, key })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError::TlsHalf("--tls-cert", "--tls-key")),
        (None, Some(_)) => Err(ConfigError::TlsHalf("--tls-key", "--tls-cert")),
    }
}

/// Cluster mode: `--nats` and `--cluster` both or neither; the `--cluster-*` settings checked.
fn resolve_cluster(
    a: &ServeArgs,
    f: &FileConfig,
) -> Result<Option<crate::cluster::ClusterSettings>, ConfigError> {
    use crate::cluster::{check_name, parse_urls, ClusterSettings};
    let nats = a.nats.clone().or(f.nats.clone());
    let name = a.cluster.clone().or(f.cluster.clone());
    let (nats, name) = match (nats, name) {
        (Some(n), Some(c)) => (n, c),
        (None, None) => return Ok(None),
        (Some(_), None) => return Err(ConfigError::ClusterHalf("--nats", "--cluster")),
        (None, Some(_)) => return Err(ConfigError::ClusterHalf("--cluster", "--nats")),
    };
    check_name(&name)?;
    let urls = parse_urls(&nats)?;
    let advertise = a
        .cluster_advertise
        .clone()
        .or(f.cluster_advertise.clone())
        .map(|u| u.trim().trim_end_matches('/').to_string())
        .unwrap_or_default();
    let well_formed = |u: &str| {
        u.strip_prefix("http://")
            .or(u.strip_prefix("https://"))
            .is_some_and(|rest| !rest.is_empty())
    };
    if !advertise.is_empty() && !well_formed(&advertise) {
        return Err(ConfigError::Advertise(advertise));
    }
    let lease_ttl = match a
        .cluster_lease_ttl
        .as_deref()
        .or(f.cluster_lease_ttl.as_deref())
    {
        None => std::time::Duration::from_secs(3),
        Some(text) => lease_ttl(text).ok_or_else(|| ConfigError::LeaseTtl(text.to_string()))?,
    };
    let replicas = a.cluster_replicas.or(f.cluster_replicas).unwrap_or(3);
    if !(1..=5).contains(&replicas) {
        return Err(ConfigError::Replicas(replicas));
    }
    Ok(Some(ClusterSettings {
        urls,
        name,
        advertise,
        lease_ttl,
        replicas,
        max_lag: a.cluster_max_lag.or(f.cluster_max_lag).unwrap_or(1000),
    }))
}

/// The lease TTL: `1500ms`, `3s` or a bare number of seconds, from 500 ms to 60 s.
fn lease_ttl(text: &str) -> Option<std::time::Duration> {
    let t = text.trim();
    let d = match t.strip_suffix("ms") {
        Some(ms) => std::time::Duration::from_millis(ms.parse().ok()?),
        None => std::time::Duration::from_secs(parse_seconds(t)?.try_into().ok()?),
    };
    let range = std::time::Duration::from_millis(500)..=std::time::Duration::from_secs(60);
    range.contains(&d).then_some(d)
}

/// The allowed CORS origins: `None` (any) when unset or when the list holds `*`.
fn cors_origins(list: Option<Vec<String>>) -> Option<Vec<String>> {
    let list: Vec<String> = list?
        .into_iter()
        .map(|o| o.trim().trim_end_matches('/').to_string())
        .filter(|o| !o.is_empty())
        .collect();
    (!list.iter().any(|o| o == "*")).then_some(list)
}

/// Resolves what `token` needs: the auth settings (same sources and precedence as `serve`). A
/// development secret it generates is written at once, for the server to use later.
pub fn token_auth(c: &CommonArgs) -> Result<AuthSettings, ConfigError> {
    let f = load_file(c.config.as_deref())?;
    let data_dir = data_dir_of(c, &f);
    let (auth, dev) = resolve_auth(c, &f, &data_dir)?;
    if let (Some(secret), DevSecret::Generated) = (&auth.secret, dev) {
        make_data_dir(&data_dir)?;
        save_dev_secret(&data_dir, secret)?;
        eprintln!(
            "ordertrack: warning: no development secret was in {dir}, so a new one was generated \
             there; tokens signed with it work only on a server with the same --data-dir (or \
             give both --jwt-secret)",
            dir = data_dir.display()
        );
    }
    Ok(auth)
}

/// The data directory and the listen address this configuration names (flag or environment,
/// then file, then default), for commands that work beside a server (`db`). Creates nothing.
pub fn locate(c: &CommonArgs) -> Result<(PathBuf, SocketAddr), ConfigError> {
    let f = load_file(c.config.as_deref())?;
    let listen = std::env::var("ORDERTRACK_LISTEN")
        .ok()
        .and_then(|s| s.parse().ok())
        .or(f.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    Ok((data_dir_of(c, &f), listen))
}

/// Whether a server of this configuration speaks HTTPS (a certificate is named in the
/// environment or the file), for `db`'s default URL.
pub fn serves_tls(c: &CommonArgs) -> Result<bool, ConfigError> {
    let f = load_file(c.config.as_deref())?;
    Ok(
        std::env::var_os("ORDERTRACK_TLS_CERT").is_some_and(|v| !v.is_empty())
            || f.tls_cert.is_some(),
    )
}

const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

/// A retention setting: a positive duration, or `off` (`None`, keep forever); `default` when
/// it is not set.
fn duration_setting(
    name: &'static str,
    value: Option<&str>,
    default: Option<std::time::Duration>,
) -> Result<Option<std::time::Duration>, ConfigError> {
    match value.map(str::trim) {
        None => Ok(default),
        Some("off") => Ok(None),
        Some(v) => match parse_seconds(v) {
            Some(n) if n > 0 => Ok(Some(std::time::Duration::from_secs(n as u64))),
            _ => Err(ConfigError::Duration(name, v.to_string(), ", or off")),
        },
    }
}

/// The sweeper's period: 1 s to 1 minute (the sweeper runs at least once a minute).
fn sweep_interval(value: Option<&str>) -> Result<std::time::Duration, ConfigError> {
    let Some(v) = value.map(str::trim) else {
        return Ok(std::time::Duration::from_secs(30));
    };
    match parse_seconds(v) {
        Some(n) if (1..=60).contains(&n) => Ok(std::time::Duration::from_secs(n as u64)),
        _ => Err(ConfigError::Duration(
            "sweep-interval",
            v.to_string(),
            ", from 1s to 1m",
        )),
    }
}

/// Parses `90s`, `15m`, `1h`, `7d` or a bare number of seconds.
pub fn parse_ttl(s: &str) -> Result<i64, ConfigError> {
    parse_seconds(s).ok_or_else(|| ConfigError::Ttl(s.to_string()))
}

/// The one duration parser (token lifetimes, retention, the sweep interval): `90s`, `15m`,
/// `1h`, `7d` or a bare number of seconds, possibly negative (callers bound it).
fn parse_seconds(s: &str) -> Option<i64> {
    let s = s.trim();
    let (num, unit) = match s
        .char_indices()
        .find(|(_, c)| !c.is_ascii_digit() && *c != '-')
    {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: i64 = num.parse().ok()?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_documents_only_real_keys() {
        let text = include_str!("../config/ordertrack.example.toml");
        let f: FileConfig = toml::from_str(text).unwrap();
        assert_eq!(f.listen, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(f.hub_queue_frames, Some(256));
    }

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("90s").unwrap(), 90);
        assert_eq!(parse_ttl("15m").unwrap(), 900);
        assert_eq!(parse_ttl("1h").unwrap(), 3600);
        assert_eq!(parse_ttl("-1h").unwrap(), -3600);
        assert_eq!(parse_ttl("30").unwrap(), 30);
        assert!(parse_ttl("1y").is_err());
    }

    #[test]
    fn lease_ttls() {
        let ms = std::time::Duration::from_millis;
        assert_eq!(lease_ttl("1500ms"), Some(ms(1500)));
        assert_eq!(lease_ttl("3s"), Some(ms(3000)));
        assert_eq!(lease_ttl("2"), Some(ms(2000)));
        for bad in ["100ms", "2m", "0", "-1s", "x", ""] {
            assert_eq!(lease_ttl(bad), None, "{bad}");
        }
    }

    #[test]
    fn retention_durations() {
        let secs = |n| Some(std::time::Duration::from_secs(n));
        assert_eq!(duration_setting("x", None, secs(5)).unwrap(), secs(5));
        assert_eq!(duration_setting("x", Some("off"), secs(5)).unwrap(), None);
        assert_eq!(
            duration_setting("x", Some("2d"), None).unwrap(),
            secs(172_800)
        );
        for bad in ["0s", "-1h", "1y", "", "h", "1.5h"] {
            let e = duration_setting("retain-finished", Some(bad), None).unwrap_err();
            assert!(e.to_string().starts_with("bad --retain-finished"), "{e}");
        }
        assert_eq!(
            sweep_interval(None).unwrap(),
            std::time::Duration::from_secs(30)
        );
        assert!(sweep_interval(Some("2m")).is_err());
        assert!(sweep_interval(Some("0s")).is_err());
    }
}
