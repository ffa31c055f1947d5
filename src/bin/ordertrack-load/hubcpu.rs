//! The `hubcpu` scenario: server CPU per hub operation, measured as `cpu` measures the REST
//! paths (utime+stime from `/proc/PID/stat` over each window ÷ operations, alternating rounds
//! against a baseline in the same run, medians), with this process as the client and its own CPU
//! share reported. Two rows:
//! - connect: negotiate + WebSocket + handshake + subscribe + close, per connect. Baseline: a
//!   bare hyper + tokio-tungstenite server (`bare-ws-server`, a child process) answering the
//!   negotiate POST with a same-size body and echoing each WebSocket message: the same round
//!   trips with nothing decided.
//! - fan-out: one status change (a REST write) delivered to N restaurant-hub subscribers; CPU
//!   per delivered event. Baseline: the bare server sending a frame of the same size to N
//!   sockets, once per change.

use super::cpu::{cpu_cells, cpu_seconds, median, Bare, Window};
use super::*;
use hyper::body::Incoming;
use ordertrack::testing::protocol::{client_invocation, encode_handshake_request, Protocol};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

pub struct Plan {
    /// Concurrent connect loops.
    pub connectors: usize,
    pub seconds: u64,
    pub rounds: usize,
    /// Subscribers one change fans out to.
    pub subscribers: usize,
    /// Changes per fan-out round.
    pub changes: usize,
}

type Ws = WebSocketStream<TcpStream>;

/// Opens a WebSocket on `path` with a bearer token.
async fn ws_open(addr: SocketAddr, path: &str, token: &str) -> R<Ws> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let mut req = format!("ws://{addr}{path}")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().map_err(|_| "header")?,
    );
    let (ws, _) = tokio_tungstenite::client_async(req, stream)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

/// Sends the handshake and one subscription; waits for the handshake answer and the
/// completion (two records; the bare server echoes two messages).
async fn handshake_and_subscribe(ws: &mut Ws, method: &str, arg: &str) -> R<()> {
    let text = |b: Bytes| Message::text(String::from_utf8_lossy(&b).into_owned());
    ws.send(text(encode_handshake_request(Protocol::Json)))
        .await
        .map_err(|e| e.to_string())?;
    ws.send(text(client_invocation(
        Protocol::Json,
        Some("1"),
        method,
        &[arg],
    )))
    .await
    .map_err(|e| e.to_string())?;
    let mut seen = 0;
    while seen < 2 {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let t = t.as_str();
                if t.contains("\"error\"") {
                    return Err(format!("hub answered {t}"));
                }
                seen += t.matches('\u{1e}').count();
            }
            Ok(Some(Ok(_))) => {}
            _ => return Err("closed or silent during subscribe".into()),
        }
    }
    Ok(())
}

/// One whole connect: negotiate on its own HTTP connection, the WebSocket with the token it
/// gave, handshake, subscribe, close (waiting for the server's close).
async fn connect_once(addr: SocketAddr, token: &str, order: Uuid) -> R<()> {
    let body = negotiate(addr, token).await?;
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    let id = v["connectionToken"].as_str().ok_or("no connectionToken")?;
    let mut ws = ws_open(addr, &format!("/hubs/customer-orders?id={id}"), token).await?;
    handshake_and_subscribe(&mut ws, "SubscribeToOrder", &order.to_string()).await?;
    ws.close(None).await.map_err(|e| e.to_string())?;
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await {}
    Ok(())
}

/// Server and client CPU around `work`, which returns the operations it completed.
async fn measured<F: std::future::Future<Output = R<u64>>>(pid: &str, work: F) -> R<Window> {
    let s0 = cpu_seconds(pid, false)?;
    let c0 = cpu_seconds("self", false)?;
    let t0 = Instant::now();
    let ops = work.await?;
    Ok(Window {
        ops,
        secs: t0.elapsed().as_secs_f64(),
        server_cpu: cpu_seconds(pid, false)? - s0,
        client_cpu: cpu_seconds("self", false)? - c0,
        p99_ms: f64::NAN,
    })
}

/// `loops` concurrent connect loops for `seconds`, each as its own customer.
async fn connect_window(addr: SocketAddr, who: &[(String, Uuid)], seconds: u64) -> R<u64> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (token, order) in who.iter().cloned() {
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                connect_once(addr, &token, order).await?;
                n += 1;
            }
            Ok::<u64, String>(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.map_err(|e| e.to_string())??;
    }
    Ok(total)
}

/// N open sockets counting the text frames (and their bytes) each receives.
struct Listeners {
    frames: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Drop for Listeners {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Listeners {
    fn new() -> Listeners {
        Listeners {
            frames: Arc::new(AtomicU64::new(0)),
            bytes: Arc::new(AtomicU64::new(0)),
            stop: CancellationToken::new(),
        }
    }

    fn listen(&self, mut ws: Ws) {
        let (frames, bytes, stop) = (self.frames.clone(), self.bytes.clone(), self.stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    m = ws.next() => match m {
                        Some(Ok(Message::Text(t))) => {
                            // SignalR records (events only, not pings) or the bare server's frames.
                            let t = t.as_str();
                            let n = if t.contains('\u{1e}') {
                                t.matches("\"type\":1").count() as u64
                            } else {
                                1
                            };
                            frames.fetch_add(n, Ordering::Relaxed);
                            bytes.fetch_add(t.len() as u64, Ordering::Relaxed);
                        }
                        Some(Ok(_)) => {}
                        _ => return,
                    }
                }
            }
        });
    }

    /// Waits until `expected` frames arrived (or none came for 2 s); returns the count.
    async fn settle(&self, expected: u64) -> u64 {
        let mut last = (self.frames.load(Ordering::Relaxed), Instant::now());
        loop {
            let n = self.frames.load(Ordering::Relaxed);
            if n >= expected || last.1.elapsed() > Duration::from_secs(2) {
                return n;
            }
            if n != last.0 {
                last = (n, Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Opens `n` sockets in parallel (256 at a time) with `open`.
async fn open_many<F, Fut>(n: usize, open: F) -> R<Vec<Ws>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = R<Ws>> + Send + 'static,
{
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    while start < n {
        let end = (start + 256).min(n);
        let batch: Vec<_> = (start..end).map(|i| tokio::spawn(open(i))).collect();
        for t in batch {
            out.push(t.await.map_err(|e| e.to_string())??);
        }
        start = end;
    }
    Ok(out)
}

/// Formats one table row from the rounds of both sides.
fn row(label: &str, ot: &[Window], base: &[Window]) -> String {
    let med = |v: &[Window], f: fn(&Window) -> f64| median(v.iter().map(f).collect());
    format!(
        "| {label} | {} | {:.0} | {:.0} | {:.0} % / {:.0} % |\n",
        cpu_cells(ot, base),
        med(ot, Window::rate),
        med(base, Window::rate),
        med(ot, Window::client_share) * 100.0,
        med(base, Window::client_share) * 100.0,
    )
}

pub async fn run(cli: &Cli, plan: Plan) -> R<String> {
    let pid = cli
        .server_pid
        .ok_or("hubcpu needs --server-pid (the server's CPU time is the measure)")?
        .to_string();
    let rounds = plan.rounds.max(1);
    let cast = Cast::new(&cli.secret)?;
    let mut out = format!(
        "Server CPU per hub operation (utime+stime from /proc/PID/stat ÷ operations), {rounds} \
         alternating rounds (ordertrack, then the bare hyper + tokio-tungstenite baseline doing the \
         same round trips / sending the same frames); medians of the rounds. `client CPU` is this \
         load process's share of one core.\n\n\
         | operation | ordertrack µs/op | bare µs/op | CPU ratio | ordertrack ops/s | bare ops/s | client CPU (ot / bare) |\n\
         |---|---|---|---|---|---|---|\n"
    );

    // Connect: one customer (with one order) per loop, so no per-user cap is in the way.
    let loops = plan.connectors.max(1);
    let customers: Vec<Uuid> = (0..loops).map(|_| Uuid::new_v4()).collect();
    let orders = place_orders(cli.addr, &cast.service, cast.restaurant, &customers).await?;
    let who: Vec<(String, Uuid)> = customers
        .iter()
        .zip(&orders)
        .map(|(c, o)| {
            Ok((
                cast.minter
                    .mint(*c, &[], &[], 3600)
                    .map_err(|e| e.to_string())?,
                *o,
            ))
        })
        .collect::<R<_>>()?;
    let negotiate_size = negotiate(cli.addr, &who[0].0).await?.len();
    let bare = Bare::start(
        "bare-ws-server",
        &["--body-size".into(), negotiate_size.to_string()],
    )
    .await?;
    let (mut ot, mut base) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        ot.push(measured(&pid, connect_window(cli.addr, &who, plan.seconds)).await?);
        base.push(measured(&bare.pid(), connect_window(bare.addr, &who, plan.seconds)).await?);
    }
    out.push_str(&row(
        &format!("hub connect (negotiate + WebSocket + handshake + subscribe + close), {loops} at a time"),
        &ot,
        &base,
    ));

    // Fan-out: N staff sockets on the restaurant hub; each change is one accept of an order
    // placed beforehand.
    let n = plan.subscribers.max(1);
    let k = plan.changes.max(1);
    let placed = place_orders(
        cli.addr,
        &cast.service,
        cast.restaurant,
        &vec![Uuid::new_v4(); k * rounds + 1],
    )
    .await?;
    let listeners = Listeners::new();
    let restaurant = cast.restaurant.to_string();
    // Each subscriber is its own staff member, so no per-user hub cap is in the way.
    let permission = [format!("RestaurantStaff:{restaurant}")];
    let tokens: Vec<String> = (0..n)
        .map(|_| {
            cast.minter
                .mint(Uuid::new_v4(), &[], &permission, 3600)
                .map_err(|e| e.to_string())
        })
        .collect::<R<_>>()?;
    let socks = open_many(n, |i| {
        let (addr, token, r) = (cli.addr, tokens[i].clone(), restaurant.clone());
        async move {
            let mut ws = ws_open(addr, "/hubs/restaurant-orders", &token).await?;
            handshake_and_subscribe(&mut ws, "SubscribeToRestaurant", &r).await?;
            Ok(ws)
        }
    })
    .await?;
    for ws in socks {
        listeners.listen(ws);
    }
    let mut http = Http::connect(cli.addr).await?;
    let eta = (chrono::Utc::now() + chrono::Duration::minutes(60))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let accept_body = format!("{{\"estimatedDeliveryTime\":\"{eta}\"}}");
    let mut next = placed.iter();
    let staff = cast.staff.as_str();
    // One change first: the frame size the bare server sends, and the events per change.
    accept(&mut http, staff, next.next(), &accept_body).await?;
    let first = listeners.settle(n as u64).await;
    let frame = (listeners.bytes.load(Ordering::Relaxed) / first.max(1)) as usize;
    let per_change = first / n as u64;
    if per_change == 0 {
        return Err(format!("{first} events for one change to {n} subscribers"));
    }
    let bare_socks = Listeners::new();
    let bare_listen = open_many(n, |_| {
        let addr = bare.addr;
        async move { ws_open(addr, "/", "x").await }
    })
    .await?;
    for ws in bare_listen {
        bare_socks.listen(ws);
    }
    let mut fire = ws_open(bare.addr, "/fire", "x").await?;
    let (mut ot, mut base) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let start = listeners.frames.load(Ordering::Relaxed);
        let expected = start + (k as u64) * per_change * n as u64;
        let w = measured(&pid, async {
            for _ in 0..k {
                accept(&mut http, staff, next.next(), &accept_body).await?;
            }
            Ok(listeners.settle(expected).await - start)
        })
        .await?;
        ot.push(w);
        let start = bare_socks.frames.load(Ordering::Relaxed);
        let expected = start + (k as u64) * per_change * n as u64;
        let w = measured(&bare.pid(), async {
            for _ in 0..k as u64 * per_change {
                fire.send(Message::text(format!("fire {frame}")))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(bare_socks.settle(expected).await - start)
        })
        .await?;
        base.push(w);
    }
    drop(listeners);
    bare_socks.stop.cancel();
    out.push_str(&row(
        &format!(
            "delivered event, 1 change → {n} subscribers ({k} changes/round, {frame} B frames), per event"
        ),
        &ot,
        &base,
    ));
    Ok(out)
}

/// Accepts one order placed beforehand: one status change.
async fn accept(http: &mut Http, staff: &str, order: Option<&Uuid>, body: &str) -> R<()> {
    let order = order.ok_or("out of orders")?;
    let path = format!("/api/v1/orders/{order}/accept");
    let (st, _) = http.post(&path, staff, body.to_string()).await?;
    if st != 200 {
        return Err(format!("accept answered {st}"));
    }
    Ok(())
}

/// Negotiates on a new HTTP connection; the answer's body.
async fn negotiate(addr: SocketAddr, token: &str) -> R<Bytes> {
    let mut http = Http::connect(addr).await?;
    let path = "/hubs/customer-orders/negotiate?negotiateVersion=1";
    let (st, body) = http.post(path, token, String::new()).await?;
    if st != 200 {
        return Err(format!("negotiate answered {st}"));
    }
    Ok(body)
}

/// The bare baseline: hyper answering any POST with `body_size` bytes of JSON and upgrading
/// any WebSocket request with tokio-tungstenite. A socket echoes what it receives; a socket on
/// `/fire` instead turns each `fire SIZE` message into one SIZE-byte frame sent to every other
/// socket.
pub async fn bare_ws_server(port: u16, body_size: usize) -> R<String> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    // A connection token as long as ordertrack's whole answer, so the connect loop reads it.
    let body = Bytes::from(format!(
        "{{\"connectionToken\":\"{}\"}}",
        "x".repeat(body_size.saturating_sub(22))
    ));
    let (fan, _) = tokio::sync::broadcast::channel::<Message>(4096);
    loop {
        let (stream, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let (body, fan) = (body.clone(), fan.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let (body, fan) = (body.clone(), fan.clone());
                async move {
                    let key = req.headers().get("sec-websocket-key").cloned();
                    let Some(key) = key else {
                        let _ = req.into_body().collect().await;
                        return Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            body,
                        )));
                    };
                    let fire = req.uri().path() == "/fire";
                    let on = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        if let Ok(up) = on.await {
                            let ws = WebSocketStream::from_raw_socket(
                                TokioIo::new(up),
                                Role::Server,
                                None,
                            )
                            .await;
                            bare_socket(ws, fan, fire).await;
                        }
                    });
                    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(
                        key.as_bytes(),
                    );
                    let mut r = hyper::Response::new(Full::new(Bytes::new()));
                    *r.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
                    let h = r.headers_mut();
                    h.insert(
                        "upgrade",
                        hyper::header::HeaderValue::from_static("websocket"),
                    );
                    h.insert(
                        "connection",
                        hyper::header::HeaderValue::from_static("Upgrade"),
                    );
                    if let Ok(v) = hyper::header::HeaderValue::from_str(&accept) {
                        h.insert("sec-websocket-accept", v);
                    }
                    Ok(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

async fn bare_socket<S>(
    mut ws: WebSocketStream<S>,
    fan: tokio::sync::broadcast::Sender<Message>,
    fire: bool,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut rx = fan.subscribe();
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) if fire => {
                    let size = t.as_str().strip_prefix("fire ").and_then(|s| s.parse().ok()).unwrap_or(0usize);
                    let _ = fan.send(Message::text("x".repeat(size)));
                }
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    if ws.send(m).await.is_err() { return; }
                }
                Some(Ok(_)) => {}
                _ => return,
            },
            m = rx.recv(), if !fire => match m {
                Ok(m) => if ws.send(m).await.is_err() { return; },
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            },
        }
    }
}
