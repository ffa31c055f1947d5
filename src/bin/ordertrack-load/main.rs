//! `ordertrack-load`: a load generator for a running ordertrack server. Scenarios:
//! - `fanout`: opens C hub connections (each its own customer, subscribed to its own order),
//!   reports the handshake rate and the server's RSS per connection, then drives W status changes
//!   per second through the REST API and measures the delay from each change's HTTP answer to its
//!   arrival at the subscriber (p50, p99, max), lost and duplicated events.
//! - `write`: concurrent writers advancing orders; durable transitions per second and latency.
//! - `hold` (`hold.rs`): C subscribed hub connections from P client processes; RSS per connection.
//! - `fanout --transport sse|longpolling` (`halfs.rs`): the same subscribers over the hub's
//!   HTTP half-transports, with the server's CPU per delivered event.
//!
//! Every run prints a markdown table and the command line that reproduces it.

use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;
use ordertrack::testing::{parse_algorithm, AuthSettings, TokenMinter};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

mod cpu;
mod fanout;
mod halfs;
mod hold;
mod hubcpu;
mod socketio;
mod write;

use fanout::{fanout, open_subscriber, Arrival, Subscriber};

#[derive(Parser, Debug)]
#[command(
    name = "ordertrack-load",
    about = "Load scenarios against a running ordertrack server"
)]
struct Cli {
    /// Server address (host:port).
    #[arg(long, default_value = "127.0.0.1:8080", global = true)]
    addr: SocketAddr,
    /// The server's HS256 secret (to mint tokens).
    #[arg(long, env = "ORDERTRACK_JWT_SECRET", global = true, default_value = "")]
    secret: String,
    /// The server's pid, to read its RSS from /proc.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// The server under test: ordertrack's SignalR hub, or the socket.io 4.8 peer doing the
    /// same job (`scripts/peer/socketio-peer.mjs`; `fanout` only).
    #[arg(long, value_enum, default_value_t = Peer::Ordertrack, global = true)]
    peer: Peer,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Peer {
    Ordertrack,
    Socketio,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Hold C subscribed hub connections and drive status changes through REST.
    Fanout {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Status changes per second.
        #[arg(long, default_value_t = 500)]
        rate: u64,
        /// Total status changes (each order takes up to 4: accept, preparing, ready, delivered).
        #[arg(long, default_value_t = 2000)]
        changes: u64,
        /// Spread client sockets over this many 127.0.0.x source addresses.
        #[arg(long, default_value_t = 4)]
        sources: u8,
        /// Hub protocol: json or messagepack (messagepack is counted, not decoded).
        #[arg(long, default_value = "json")]
        protocol: String,
        /// Hub transport: websockets, sse (json only) or longpolling.
        #[arg(long, default_value = "websockets")]
        transport: String,
    },
    /// C keep-alive connections polling `/status` for D seconds, then the same against a bare
    /// hyper server (a child process) answering a body of the same size: the floor.
    Poll {
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// C subscribed hub connections drop at once and reconnect + resubscribe at once.
    Storm {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        #[arg(long, default_value_t = 4)]
        sources: u8,
    },
    /// Hold C subscribed hub connections opened by P client processes (RSS per connection,
    /// aggregate handshake rate); nothing is driven.
    Hold {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Client processes (this binary re-run); each holds connections / processes sockets.
        #[arg(long, default_value_t = 2)]
        processes: usize,
        #[arg(long, default_value_t = 8)]
        sources: u8,
        /// Connections being opened at once, over all processes.
        #[arg(long, default_value_t = 256)]
        in_flight: usize,
        /// Once all are subscribed, hold this many seconds and read the RSS again.
        #[arg(long, default_value_t = 0)]
        hold_secs: u64,
    },
    /// (internal) one `hold` client process: its share comes on stdin.
    #[command(hide = true)]
    HoldWorker {
        #[arg(long, default_value_t = 8)]
        sources: u8,
        #[arg(long, default_value_t = 128)]
        in_flight: usize,
    },
    /// Writes N orders straight into a data directory (the server must be stopped), for the
    /// restart scenario.
    Seed {
        #[arg(long)]
        data_dir: std::path::PathBuf,
        #[arg(long, default_value_t = 100_000)]
        orders: u64,
    },
    /// (internal) a bare hyper HTTP/1.1 server answering every request with N bytes of JSON.
    #[command(hide = true)]
    BareServer {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        body_size: usize,
        /// The status it answers (304 answers carry no body).
        #[arg(long, default_value_t = 200)]
        status: u16,
    },
    /// Server CPU per operation on each REST path, driven by wrk, against a bare hyper server
    /// in alternating rounds of the same run (needs --server-pid).
    Cpu {
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Seconds per wrk window.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Paths to measure: all, or a comma-separated list of status, status304, details,
        /// history, place.
        #[arg(long, default_value = "all")]
        only: String,
        #[arg(long, default_value = "wrk")]
        wrk: String,
        /// Connections for the durable placements.
        #[arg(long, default_value_t = 64)]
        writers: usize,
    },
    /// Server CPU per hub connect and per delivered event of a fan-out, against a bare
    /// hyper + tokio-tungstenite server in alternating rounds of the same run (needs --server-pid).
    HubCpu {
        /// Concurrent connect loops (each its own customer).
        #[arg(long, default_value_t = 16)]
        connectors: usize,
        /// Seconds per connect window.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Restaurant-hub subscribers each change fans out to.
        #[arg(long, default_value_t = 2000)]
        subscribers: usize,
        /// Status changes per fan-out round.
        #[arg(long, default_value_t = 20)]
        changes: usize,
    },
    /// (internal) a bare hyper + tokio-tungstenite server: answers POSTs with N bytes of JSON,
    /// echoes WebSocket messages, and fans `fire SIZE` out from a `/fire` socket to the others.
    #[command(hide = true)]
    BareWsServer {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        body_size: usize,
    },
    /// Concurrent writers advancing orders through their life.
    Write {
        #[arg(long, default_value_t = 64)]
        writers: usize,
        #[arg(long, default_value_t = 4000)]
        transitions: u64,
        /// A second server (e.g. started with `--writer-max-batch 1`) that gets the same
        /// workload in alternating rounds of the same run: the baseline.
        #[arg(long)]
        baseline: Option<SocketAddr>,
        /// How the baseline differs, for the table.
        #[arg(long, default_value = "one commit per request")]
        baseline_label: String,
        /// Alternating rounds (each runs transitions/rounds on every server).
        #[arg(long, default_value_t = 3)]
        rounds: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::exit(2);
        }
    };
    // Arguments with spaces are quoted, so the printed line can be pasted into a shell.
    let cmdline = std::env::args()
        .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
        .collect::<Vec<_>>()
        .join(" ");
    let result = rt.block_on(async {
        if cli.peer == Peer::Socketio && !matches!(cli.scenario, Scenario::Fanout { .. }) {
            return Err("--peer socketio: only the fanout scenario runs against the peer".into());
        }
        match &cli.scenario {
            Scenario::Fanout {
                connections,
                rate,
                changes,
                sources,
                protocol,
                transport,
            } => {
                let shape = fanout::Shape {
                    c: *connections,
                    rate: *rate,
                    changes: *changes,
                    sources: *sources,
                    protocol,
                    transport,
                };
                fanout(&cli, shape).await
            }
            Scenario::Write {
                writers,
                transitions,
                baseline,
                baseline_label,
                rounds,
            } => {
                write::run(
                    &cli,
                    write::Plan {
                        writers: *writers,
                        transitions: *transitions,
                        baseline: *baseline,
                        baseline_label: baseline_label.clone(),
                        rounds: *rounds,
                    },
                )
                .await
            }
            Scenario::Poll {
                connections,
                seconds,
            } => poll(&cli, *connections, *seconds).await,
            Scenario::Storm {
                connections,
                sources,
            } => storm(&cli, *connections, *sources).await,
            Scenario::BareServer {
                port,
                body_size,
                status,
            } => bare_server(*port, *body_size, *status).await,
            Scenario::Cpu {
                connections,
                seconds,
                rounds,
                only,
                wrk,
                writers,
            } => {
                let plan = cpu::Plan {
                    connections: *connections,
                    seconds: *seconds,
                    rounds: *rounds,
                    only: only.clone(),
                    wrk: wrk.clone(),
                    writers: *writers,
                };
                cpu::run(&cli, plan).await
            }
            Scenario::HubCpu {
                connectors,
                seconds,
                rounds,
                subscribers,
                changes,
            } => {
                let plan = hubcpu::Plan {
                    connectors: *connectors,
                    seconds: *seconds,
                    rounds: *rounds,
                    subscribers: *subscribers,
                    changes: *changes,
                };
                hubcpu::run(&cli, plan).await
            }
            Scenario::BareWsServer { port, body_size } => {
                hubcpu::bare_ws_server(*port, *body_size).await
            }
            Scenario::Seed { data_dir, orders } => seed(data_dir, *orders).await,
            Scenario::Hold {
                connections,
                processes,
                sources,
                in_flight,
                hold_secs,
            } => {
                let plan = hold::Plan {
                    connections: *connections,
                    processes: *processes,
                    sources: *sources,
                    in_flight: *in_flight,
                    hold_secs: *hold_secs,
                };
                hold::run(&cli, plan).await
            }
            Scenario::HoldWorker { sources, in_flight } => {
                hold::worker(&cli, *sources, *in_flight).await
            }
        }
    });
    match result {
        Ok(table) => {
            println!("{table}");
            println!("\nreproduce: `{cmdline}`");
        }
        Err(e) => {
            eprintln!("ordertrack-load: {e}");
            std::process::exit(1);
        }
    }
}

type R<T> = Result<T, String>;

/// The whole body of a response.
async fn body_of(resp: hyper::Response<hyper::body::Incoming>) -> R<Bytes> {
    Ok(resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes())
}

fn minter(secret: &str) -> R<TokenMinter> {
    let alg = parse_algorithm("HS256").map_err(|e| e.to_string())?;
    TokenMinter::new(&AuthSettings {
        algorithm: alg,
        secret: Some(secret.as_bytes().to_vec()),
        public_key_pem: None,
        issuer: None,
        audience: None,
        leeway_secs: 30,
        jwks: None,
    })
    .map_err(|e| e.to_string())
}

/// The principals a scenario acts as: one restaurant, its staff, the order service.
struct Cast {
    minter: TokenMinter,
    restaurant: Uuid,
    service: String,
    staff: String,
}

impl Cast {
    fn new(secret: &str) -> R<Cast> {
        let minter = minter(secret)?;
        let restaurant = Uuid::new_v4();
        let mint = |roles: &[String], perms: &[String]| {
            minter
                .mint(Uuid::new_v4(), roles, perms, 3600)
                .map_err(|e| e.to_string())
        };
        let service = mint(&["OrderService".into()], &[])?;
        let staff = mint(&[], &[format!("RestaurantStaff:{restaurant}")])?;
        Ok(Cast {
            minter,
            restaurant,
            service,
            staff,
        })
    }
}

/// The process's CPU time so far (user + system), in seconds, from /proc/PID/stat.
fn cpu_secs(pid: Option<u32>) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{}/stat", pid?)).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = text.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One keep-alive HTTP/1.1 connection.
struct Http {
    sender: http1::SendRequest<Full<Bytes>>,
}

impl Http {
    async fn connect(addr: SocketAddr) -> R<Http> {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(Http { sender })
    }

    async fn post(&mut self, path: &str, token: &str, body: String) -> R<(u16, Bytes)> {
        let req = Request::post(path)
            .header("host", "load")
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = body_of(resp).await?;
        Ok((status, body))
    }
}

fn order_body(customer: Uuid, restaurant: Uuid) -> String {
    serde_json::json!({
        "customerId": customer, "restaurantId": restaurant, "restaurantName": "Load",
        "currency": "USD",
        "items": [{"menuItemId": Uuid::new_v4(), "name": "Pizza", "quantity": 1, "unitPrice": 12.00}],
        "deliveryFee": 2.99, "tip": 1, "tax": 0, "discount": 0, "paymentMethod": "CashOnDelivery"
    })
    .to_string()
}

/// Places `n` orders (one customer each) with 32 parallel HTTP connections.
async fn place_orders(
    addr: SocketAddr,
    service: &str,
    restaurant: Uuid,
    customers: &[Uuid],
) -> R<Vec<Uuid>> {
    let ids = Arc::new(Mutex::new(vec![Uuid::nil(); customers.len()]));
    let next = Arc::new(AtomicU64::new(0));
    let customers = Arc::new(customers.to_vec());
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (ids, next, customers, service) = (
            ids.clone(),
            next.clone(),
            customers.clone(),
            service.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let mut http = Http::connect(addr).await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= customers.len() {
                    return Ok::<(), String>(());
                }
                let (st, body) = http
                    .post(
                        "/api/v1/orders",
                        &service,
                        order_body(customers[i], restaurant),
                    )
                    .await?;
                if st != 201 {
                    return Err(format!("place answered {st}"));
                }
                let v: serde_json::Value =
                    serde_json::from_slice(&body).map_err(|e| e.to_string())?;
                let id = v["order"]["orderId"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or("no orderId")?;
                ids.lock().map_err(|_| "lock")?[i] = id;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let v = ids.lock().map_err(|_| "lock")?.clone();
    Ok(v)
}

/// The `p` quantile (0 to 1) of sorted samples; NaN for none.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Serves `body_size` bytes of JSON with `status` to every request until killed; a request's
/// body is read in full first, as any real server does.
async fn bare_server(port: u16, body_size: usize, status: u16) -> R<String> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let status = hyper::StatusCode::from_u16(status).map_err(|e| e.to_string())?;
    let mut body = String::new();
    if body_size > 0 {
        body.push_str("{\"pad\":\"");
        while body.len() + 2 < body_size {
            body.push('x');
        }
        body.push_str("\"}");
    }
    let body = Bytes::from(body);
    loop {
        let (stream, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let body = body.clone();
                async move {
                    let _ = req.into_body().collect().await;
                    let mut r = hyper::Response::new(Full::new(body));
                    *r.status_mut() = status;
                    if status != hyper::StatusCode::NOT_MODIFIED {
                        r.headers_mut().insert(
                            "content-type",
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                    }
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// A loopback port free at the time of asking.
fn free_port() -> R<u16> {
    Ok(TcpSocket::new_v4()
        .and_then(|s| {
            s.bind("127.0.0.1:0".parse().map_err(std::io::Error::other)?)?;
            s.local_addr()
        })
        .map_err(|e| e.to_string())?
        .port())
}

/// Runs `connections` keep-alive GET loops on `path` for `seconds`; returns (requests, body size).
async fn hammer(
    addr: SocketAddr,
    path: String,
    token: String,
    connections: usize,
    seconds: u64,
) -> R<(u64, usize)> {
    let count = Arc::new(AtomicU64::new(0));
    let size = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (count, size, path, token) = (count.clone(), size.clone(), path.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let mut http = Http::connect(addr).await?;
            while Instant::now() < deadline {
                let req = Request::get(path.as_str())
                    .header("host", "load")
                    .header("authorization", format!("Bearer {token}"))
                    .body(Full::new(Bytes::new()))
                    .map_err(|e| e.to_string())?;
                http.sender.ready().await.map_err(|e| e.to_string())?;
                let resp = http
                    .sender
                    .send_request(req)
                    .await
                    .map_err(|e| e.to_string())?;
                if resp.status() != 200 {
                    return Err(format!("poll answered {}", resp.status()));
                }
                let b = body_of(resp).await?;
                size.store(b.len() as u64, Ordering::Relaxed);
                count.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok((
        count.load(Ordering::Relaxed),
        size.load(Ordering::Relaxed) as usize,
    ))
}

async fn poll(cli: &Cli, connections: usize, seconds: u64) -> R<String> {
    let m = minter(&cli.secret)?;
    let restaurant = Uuid::new_v4();
    let service = m
        .mint(Uuid::new_v4(), &["OrderService".into()], &[], 3600)
        .map_err(|e| e.to_string())?;
    let customer = Uuid::new_v4();
    let orders = place_orders(cli.addr, &service, restaurant, &[customer]).await?;
    let token = m
        .mint(customer, &[], &[], 3600)
        .map_err(|e| e.to_string())?;
    let path = format!("/api/v1/orders/{}/status", orders[0]);
    let (_, body) = hammer(cli.addr, path.clone(), token.clone(), connections, 1).await?;
    // The floor: a bare hyper server in its own process answering the same body size.
    let port = free_port()?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = std::process::Command::new(exe)
        .args([
            "bare-server",
            "--port",
            &port.to_string(),
            "--body-size",
            &body.to_string(),
        ])
        .spawn()
        .map_err(|e| e.to_string())?;
    let bare: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut up = false;
    for _ in 0..100 {
        if TcpStream::connect(bare).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Alternate one-second slices of each so a noisy neighbour hits both alike.
    let mut n = 0u64;
    let mut nb = 0u64;
    let mut failure = None;
    if !up {
        failure = Some("bare server did not start".to_string());
    }
    for _ in 0..seconds {
        if failure.is_some() {
            break;
        }
        match hammer(cli.addr, path.clone(), token.clone(), connections, 1).await {
            Ok((k, _)) => n += k,
            Err(e) => failure = Some(e),
        }
        match hammer(bare, "/".into(), token.clone(), connections, 1).await {
            Ok((k, _)) => nb += k,
            Err(e) => failure = Some(e),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    if let Some(e) = failure {
        return Err(e);
    }
    let rps = n as f64 / seconds as f64;
    let bare_rps = nb as f64 / seconds as f64;
    Ok(format!(
        "| metric | value |\n|---|---|\n| connections | {connections} |\n| body size | {body} B |\n| ordertrack GET /status (JWT + redb read + JSON) | {rps:.0} req/s |\n| bare hyper, same body, same run | {bare_rps:.0} req/s |\n| ratio | {:.2} × bare hyper |\n",
        rps / bare_rps.max(1.0)
    ))
}

async fn storm(cli: &Cli, c: usize, sources: u8) -> R<String> {
    let m = minter(&cli.secret)?;
    let restaurant = Uuid::new_v4();
    let service = m
        .mint(Uuid::new_v4(), &["OrderService".into()], &[], 3600)
        .map_err(|e| e.to_string())?;
    let customers: Vec<Uuid> = (0..c).map(|_| Uuid::new_v4()).collect();
    let orders = place_orders(cli.addr, &service, restaurant, &customers).await?;
    let tokens: Vec<String> = customers
        .iter()
        .map(|cu| m.mint(*cu, &[], &[], 3600).map_err(|e| e.to_string()))
        .collect::<R<_>>()?;
    let connect_all = |tokens: Vec<String>, orders: Vec<Uuid>, stop: CancellationToken| async move {
        let (atx, _arx) = mpsc::unbounded_channel::<Arrival>();
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(tokens.len());
        for (i, (t, o)) in tokens.into_iter().zip(orders).enumerate() {
            let source = IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                0,
                2 + (i % sources.max(1) as usize) as u8,
            ));
            let (addr, atx, stop) = (cli.addr, atx.clone(), stop.clone());
            // Everyone at once: no client-side throttle, retry until in (as real clients do).
            tasks.push(tokio::spawn(async move {
                for attempt in 0..20u64 {
                    let sub = Subscriber {
                        addr,
                        source,
                        token: t.clone(),
                        order: o,
                        idx: i,
                        msgpack: false,
                    };
                    if open_subscriber(sub, atx.clone(), stop.clone())
                        .await
                        .is_ok()
                    {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await;
                }
                false
            }));
        }
        let mut ok = 0usize;
        for t in tasks {
            if matches!(t.await, Ok(true)) {
                ok += 1;
            }
        }
        (ok, start.elapsed().as_secs_f64())
    };
    let first = CancellationToken::new();
    let (ok1, secs1) = connect_all(tokens.clone(), orders.clone(), first.clone()).await;
    // Every client loses its socket at the same moment, then all come back at once.
    first.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = CancellationToken::new();
    let (ok2, secs2) = connect_all(tokens, orders, second.clone()).await;
    second.cancel();
    Ok(format!(
        "| metric | value |\n|---|---|\n| connections | {c} |\n| first connect + subscribe | {ok1} in {secs1:.2} s |\n| storm: all reconnect + resubscribe at once | {ok2} of {c} in {secs2:.2} s |\n"
    ))
}

struct NoEvents;
impl ordertrack::testing::EventSink for NoEvents {
    fn publish(&self, _: Vec<Arc<ordertrack::testing::OrderEvent>>) {}
}

/// Places `n` orders through the store's own writer (large batches), 1,000 customers.
async fn seed(dir: &std::path::Path, n: u64) -> R<String> {
    use ordertrack::testing::{PlaceRequest, Store, StoreSettings, WriterSettings};
    let store = Store::open(dir, &StoreSettings::default()).map_err(|e| e.to_string())?;
    let (writer, join) = ordertrack::testing::spawn_writer(
        &store,
        WriterSettings {
            queue: 8192,
            max_batch: 2000,
            ..WriterSettings::default()
        },
        Arc::new(NoEvents),
        None,
    )
    .map_err(|e| e.to_string())?;
    let restaurant = Uuid::new_v4();
    let customers: Vec<Uuid> = (0..1000).map(|_| Uuid::new_v4()).collect();
    let start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let customers = Arc::new(customers);
    let mut tasks = Vec::new();
    for _ in 0..256 {
        let (writer, next, customers) = (writer.clone(), next.clone(), customers.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), String>(());
                }
                let body = order_body(customers[(i % 1000) as usize], restaurant);
                let order = ordertrack::testing::NewOrder::parse(body.as_bytes())
                    .map_err(|e| format!("{e:?}"))?;
                writer
                    .place(PlaceRequest {
                        order,
                        idempotency: None,
                    })
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    drop(writer);
    let _ = tokio::task::spawn_blocking(move || join.join()).await;
    let secs = start.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(store.path())
        .map(|m| m.len())
        .unwrap_or(0);
    Ok(format!(
        "| metric | value |\n|---|---|\n| orders seeded | {n} in {secs:.1} s ({:.0}/s) |\n| file size | {:.1} MiB ({:.0} B per order) |\n",
        n as f64 / secs,
        bytes as f64 / 1048576.0,
        bytes as f64 / n.max(1) as f64
    ))
}
