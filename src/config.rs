//! Command line and configuration: every setting has a flag, an `ORDERTRACK_*` environment
//! variable and a key in the optional TOML file, in that order of precedence, then a default.

use crate::auth::{parse_algorithm, AuthSettings, KeyError};
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use thiserror::Error;

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
    Demo(crate::demo::DemoArgs),
    /// Follow one order in the terminal: live over the customer hub, polling /status when the
    /// socket is unavailable; stops after a terminal status.
    Watch(crate::watch::WatchArgs),
    /// Database maintenance: check, compact, backup, stats (same --data-dir as serve).
    #[command(subcommand)]
    Db(crate::db::DbCommand),
}

/// Settings shared by every command that touches the data directory or tokens.
#[derive(Args, Debug, Clone, Default)]
pub struct CommonArgs {
    /// TOML configuration file (see config/ordertrack.example.toml).
    #[arg(long, env = "ORDERTRACK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory holding orders.redb and the development secret [default: ./data].
    #[arg(long, env = "ORDERTRACK_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HS256 shared secret. Without it (and without a public key) a development secret is
    /// created in the data directory.
    #[arg(long, env = "ORDERTRACK_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM file with the public key for RS256, ES256 or EdDSA.
    #[arg(long, env = "ORDERTRACK_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// Pinned JWT algorithm: HS256, RS256, ES256 or EdDSA [default: HS256].
    #[arg(long, env = "ORDERTRACK_JWT_ALGORITHM")]
    pub jwt_algorithm: Option<String>,
    /// Required `iss` claim, when set.
    #[arg(long, env = "ORDERTRACK_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, when set.
    #[arg(long, env = "ORDERTRACK_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Clock skew allowed on exp/nbf, in seconds [default: 30].
    #[arg(long, env = "ORDERTRACK_JWT_LEEWAY")]
    pub jwt_leeway: Option<u64>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "ORDERTRACK_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "ORDERTRACK_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Most open client connections (HTTP and hub) [default: 19000].
    #[arg(long, env = "ORDERTRACK_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most open hub (WebSocket) connections [default: 18000].
    #[arg(long, env = "ORDERTRACK_MAX_HUB_CONNECTIONS")]
    pub max_hub_connections: Option<usize>,
    /// Most open connections from one client address [default: 19000].
    #[arg(long, env = "ORDERTRACK_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// redb page cache in MiB [default: 64].
    #[arg(long, env = "ORDERTRACK_CACHE_MB")]
    pub cache_mb: Option<usize>,
    /// Commit log size in MiB; 0 turns the log off (every write batch is then a durable redb
    /// commit) [default: 64].
    #[arg(long, env = "ORDERTRACK_COMMIT_LOG_MB")]
    pub commit_log_mb: Option<usize>,
    /// Most write requests committed together (group commit); 1 commits each request alone
    /// [default: 512].
    #[arg(long, env = "ORDERTRACK_WRITER_MAX_BATCH")]
    pub writer_max_batch: Option<usize>,
    /// Hub keep-alive: send a Ping after this many milliseconds without sending [default: 15000].
    #[arg(long, env = "ORDERTRACK_HUB_KEEPALIVE_MS")]
    pub hub_keepalive_ms: Option<u64>,
    /// Hub client timeout: close after this many milliseconds without receiving [default: 30000].
    #[arg(long, env = "ORDERTRACK_HUB_CLIENT_TIMEOUT_MS")]
    pub hub_client_timeout_ms: Option<u64>,
    /// Hub handshake timeout in milliseconds [default: 15000].
    #[arg(long, env = "ORDERTRACK_HUB_HANDSHAKE_TIMEOUT_MS")]
    pub hub_handshake_timeout_ms: Option<u64>,
    /// Frames queued per hub connection before it is closed as a slow consumer [default: 256].
    #[arg(long, env = "ORDERTRACK_HUB_QUEUE_FRAMES")]
    pub hub_queue_frames: Option<usize>,
    /// Most subscriptions one hub connection may hold [default: 100].
    #[arg(long, env = "ORDERTRACK_HUB_MAX_SUBSCRIPTIONS")]
    pub hub_max_subscriptions: Option<usize>,
}

#[derive(Args, Debug, Clone)]
pub struct TokenArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The user id (`sub`), a UUID.
    #[arg(long)]
    pub sub: uuid::Uuid,
    /// A role: Administrator or OrderService (repeatable).
    #[arg(long = "role")]
    pub roles: Vec<String>,
    /// A permission such as RestaurantStaff:<restaurantId> (repeatable).
    #[arg(long = "permission")]
    pub permissions: Vec<String>,
    /// Lifetime, e.g. 90s, 15m, 1h, 7d [default: 1h].
    #[arg(long, default_value = "1h", allow_hyphen_values = true)]
    pub ttl: String,
}

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
    #[error("log format must be 'text' or 'json', not '{0}'")]
    LogFormat(String),
    #[error("bad --ttl '{0}': use a number with s, m, h or d")]
    Ttl(String),
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
    pub log_format: LogFormat,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub cache_mb: usize,
    pub commit_log_mb: usize,
    pub writer_max_batch: usize,
    pub hub: crate::hub::HubSettings,
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

/// Resolves the token settings; creates the development secret when nothing is configured.
fn resolve_auth(
    c: &CommonArgs,
    f: &FileConfig,
    data_dir: &Path,
) -> Result<(AuthSettings, bool), ConfigError> {
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
    let mut secret = c
        .jwt_secret
        .clone()
        .or(f.jwt_secret.clone())
        .map(String::into_bytes);
    let mut dev = false;
    if secret.is_none() && algorithm == jsonwebtoken::Algorithm::HS256 {
        secret = Some(dev_secret(data_dir)?);
        dev = true;
    }
    Ok((
        AuthSettings {
            algorithm,
            secret,
            public_key_pem,
            issuer: c.jwt_issuer.clone().or(f.jwt_issuer.clone()),
            audience: c.jwt_audience.clone().or(f.jwt_audience.clone()),
            leeway_secs: c.jwt_leeway.or(f.jwt_leeway).unwrap_or(30),
        },
        dev,
    ))
}

/// Reads `dev-jwt-secret` from the data directory, creating it (random, 0600) on first use.
fn dev_secret(data_dir: &Path) -> Result<Vec<u8>, ConfigError> {
    use base64::Engine;
    let path = data_dir.join("dev-jwt-secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim();
        if !s.is_empty() {
            return Ok(s.as_bytes().to_vec());
        }
    }
    create_data_dir(data_dir)?;
    let mut raw = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut raw);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    write_private(&path, secret.as_bytes())
        .map_err(|e| ConfigError::DataDir(data_dir.into(), e))?;
    // Tokens minted with the secret must outlive a power cut: its name must be durable too.
    crate::store::dirsync::sync_dir(data_dir).map_err(ConfigError::Dir)?;
    Ok(secret.into_bytes())
}

/// Creates the data directory (and its missing ancestors) so that it survives a power cut.
fn create_data_dir(data_dir: &Path) -> Result<(), ConfigError> {
    use crate::store::dirsync::{self, DirError};
    dirsync::create_dir_all(data_dir).map_err(|e| match e {
        DirError::Create(_, io) => ConfigError::DataDir(data_dir.into(), io),
        sync => ConfigError::Dir(sync),
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
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
        create_data_dir(&data_dir)?;
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
        Ok(Settings {
            listen: a
                .listen
                .or(f.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            data_dir,
            auth,
            dev_secret,
            log_format,
            max_connections: a.max_connections.or(f.max_connections).unwrap_or(19_000),
            max_connections_per_ip: a
                .max_connections_per_ip
                .or(f.max_connections_per_ip)
                .unwrap_or(19_000),
            cache_mb: a.cache_mb.or(f.cache_mb).unwrap_or(64),
            commit_log_mb: a.commit_log_mb.or(f.commit_log_mb).unwrap_or(64),
            writer_max_batch: a
                .writer_max_batch
                .or(f.writer_max_batch)
                .unwrap_or(512)
                .max(1),
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
                    ..d
                }
            },
        })
    }
}

/// Resolves what `token` needs: the auth settings (same sources and precedence as `serve`).
pub fn token_auth(c: &CommonArgs) -> Result<AuthSettings, ConfigError> {
    let f = load_file(c.config.as_deref())?;
    let data_dir = data_dir_of(c, &f);
    Ok(resolve_auth(c, &f, &data_dir)?.0)
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

/// Parses `90s`, `15m`, `1h`, `7d` or a bare number of seconds.
pub fn parse_ttl(s: &str) -> Result<i64, ConfigError> {
    let err = || ConfigError::Ttl(s.to_string());
    let s = s.trim();
    let (num, unit) = match s
        .char_indices()
        .find(|(_, c)| !c.is_ascii_digit() && *c != '-')
    {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: i64 = num.parse().map_err(|_| err())?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(err()),
    };
    n.checked_mul(mult).ok_or_else(err)
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
}
