//! `ordertrack watch <orderId>`: a terminal client that follows one order. It subscribes through
//! the customer hub and prints each event as it arrives; when the socket is unavailable it polls
//! `GET /status` with `If-None-Match` (the user's document: every 10–15 s) and tries the socket
//! again now and then. It stops after a terminal status.

use crate::cli::{Transport, WatchArgs};
use crate::client::{ClientError, Endpoint, Http, HubMessage, HubSession};
use std::io::Write;
use std::time::Duration;
use thiserror::Error;
use uuid::Uuid;

#[derive(Debug, Error)]
pub enum WatchError {
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("order {0} was not found (or this token may not see it)")]
    NotFound(Uuid),
    #[error("the server refused the token ({0})")]
    Unauthorized(String),
    #[error("bad --poll-interval '{0}': use e.g. 12s or 1m (at least 1s)")]
    Interval(String),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// After this many polls without a socket, the socket is tried again (about a minute).
const POLLS_BEFORE_RETRY: u32 = 5;

/// What has been shown so far, so snapshots and events are never printed twice.
#[derive(Default)]
struct Shown {
    /// The highest version printed.
    version: Option<u64>,
    /// Whether that version was printed from an event (a second event of the same change,
    /// such as PaymentSucceeded then Placed, is still news).
    by_event: bool,
    terminal: bool,
}

fn is_terminal(status: &str) -> bool {
    matches!(status, "Delivered" | "Cancelled" | "Rejected")
}

impl Shown {
    fn line(&mut self, source: &str, dto: &serde_json::Value, from_event: bool) {
        let version = dto["version"].as_u64();
        let news = match (self.version, version) {
            (None, _) | (_, None) => true,
            (Some(seen), Some(v)) => v > seen || (from_event && self.by_event && v == seen),
        };
        if !news {
            return;
        }
        if let Some(v) = version {
            self.version = Some(v);
        }
        self.by_event = from_event;
        let status = dto["status"].as_str().unwrap_or("?");
        let eta = dto["estimatedDeliveryTime"].as_str().unwrap_or("-");
        let at = chrono::Local::now().format("%H:%M:%S%.3f");
        let mut out = format!(
            "{at}  {source:<30} {status:<16} v{}  eta {eta}",
            version.map(|v| v.to_string()).unwrap_or("?".into())
        );
        if let Some(d) = dto["actualDeliveryTime"].as_str() {
            out.push_str(&format!("  delivered {d}"));
        }
        say(&out);
        if is_terminal(status) {
            self.terminal = true;
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// `ordertrack watch`: returns when the order reached a terminal status.
pub fn watch(args: WatchArgs) -> Result<(), WatchError> {
    let interval = crate::config::parse_ttl(&args.poll_interval)
        .ok()
        .filter(|s| *s >= 1)
        .ok_or_else(|| WatchError::Interval(args.poll_interval.clone()))?;
    let ep = Endpoint::parse(&args.url, args.cacert.as_deref())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(WatchError::Runtime)?;
    rt.block_on(run(args, ep, Duration::from_secs(interval as u64)))
}

/// Why a live session ended without a terminal status.
enum LiveEnd {
    Unavailable(String),
}

async fn run(args: WatchArgs, ep: Endpoint, interval: Duration) -> Result<(), WatchError> {
    let mut shown = Shown::default();
    let mut poller = Poller::new(&ep, &args.token, args.order_id);
    say(&format!(
        "watching order {} on {}",
        args.order_id,
        ep.base()
    ));
    loop {
        if args.transport != Transport::Poll {
            match live(&ep, &args, &mut shown).await {
                Ok(()) => return Ok(()),
                Err(Ok(LiveEnd::Unavailable(why))) => {
                    if args.transport == Transport::Websocket {
                        return Err(WatchError::Client(ClientError::Hub(why)));
                    }
                    say(&format!(
                        "live updates unavailable ({why}); polling /status every {}s",
                        interval.as_secs()
                    ));
                }
                Err(Err(fatal)) => return Err(fatal),
            }
        }
        let mut polls = 0;
        loop {
            poller.poll(&mut shown).await?;
            if shown.terminal {
                return Ok(());
            }
            polls += 1;
            tokio::time::sleep(interval).await;
            if args.transport == Transport::Auto && polls % POLLS_BEFORE_RETRY == 0 {
                break;
            }
        }
    }
}

/// Follows the order over the hub. `Ok` once a terminal status was shown; `Err(Ok(_))` when the
/// socket is unavailable or dropped; `Err(Err(_))` for answers that polling would not change.
async fn live(
    ep: &Endpoint,
    args: &WatchArgs,
    shown: &mut Shown,
) -> Result<(), Result<LiveEnd, WatchError>> {
    let unavailable = |e: ClientError| Ok(LiveEnd::Unavailable(e.to_string()));
    let mut hub = HubSession::connect(ep, "customer-orders", &args.token)
        .await
        .map_err(|e| match e {
            ClientError::Refused { status: 401, .. } => {
                Err(WatchError::Unauthorized(e.to_string()))
            }
            e => unavailable(e),
        })?;
    let current = match hub
        .invoke("SubscribeToOrder", &args.order_id.to_string())
        .await
        .map_err(unavailable)?
    {
        Ok(dto) => dto,
        Err(e) if e.contains("not found") => return Err(Err(WatchError::NotFound(args.order_id))),
        Err(e) => return Err(unavailable(ClientError::Hub(e))),
    };
    shown.line("subscribed (current state)", &current, false);
    if shown.terminal {
        return Ok(());
    }
    loop {
        match hub.next().await.map_err(unavailable)? {
            HubMessage::Event { target, arg } => {
                if arg["orderId"].as_str() == Some(&args.order_id.to_string()) {
                    shown.line(&target, &arg, true);
                    if shown.terminal {
                        return Ok(());
                    }
                }
            }
            HubMessage::Closed {
                error,
                allow_reconnect,
            } => {
                let why = match error {
                    Some(e) => format!("the hub closed the connection: {e}"),
                    None => "the hub closed the connection".to_string(),
                };
                let why = if allow_reconnect {
                    format!("{why} (the server asked clients to reconnect)")
                } else {
                    why
                };
                return Err(Ok(LiveEnd::Unavailable(why)));
            }
        }
    }
}

/// Polls `/status` with the last ETag, so an unchanged order costs a 304 without a body.
struct Poller {
    http: Http,
    token: String,
    path: String,
    order: Uuid,
    etag: Option<String>,
}

impl Poller {
    fn new(ep: &Endpoint, token: &str, order: Uuid) -> Poller {
        Poller {
            http: Http::new(ep),
            token: token.to_string(),
            path: format!("/api/v1/orders/{order}/status"),
            order,
            etag: None,
        }
    }

    async fn poll(&mut self, shown: &mut Shown) -> Result<(), WatchError> {
        let mut headers = Vec::new();
        if let Some(e) = &self.etag {
            headers.push(("if-none-match", e.as_str()));
        }
        let r = match self.http.get(&self.path, Some(&self.token), &headers).await {
            Ok(r) => r,
            Err(e) => {
                // The server may be restarting: keep polling.
                say(&format!("poll failed: {e}"));
                return Ok(());
            }
        };
        match r.status {
            200 => {
                self.etag = r.header("etag").map(str::to_string);
                shown.line("polled /status", &r.json(), false);
            }
            304 => {}
            401 => return Err(WatchError::Unauthorized(r.describe())),
            404 => return Err(WatchError::NotFound(self.order)),
            _ => say(&format!("poll answered {}", r.describe())),
        }
        Ok(())
    }
}
