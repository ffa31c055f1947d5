//! `fanout`: C hub connections (each its own customer, subscribed to its own order), the
//! handshake rate and the server's RSS per connection, then W status changes per second through
//! the REST API, timed from each change's HTTP answer to its arrival at the subscriber (p50,
//! p99, max), with lost and duplicated events. Also the subscriber that `hold` reuses.

use super::*;
use ordertrack::testing::protocol::{client_invocation, encode_handshake_request, Protocol};

/// An arrival: (connection index, order version, when).
pub(super) type Arrival = (usize, u64, Instant);

/// One hub client: who it is, where it connects from, what it follows.
#[derive(Clone)]
pub(super) struct Subscriber {
    pub(super) addr: SocketAddr,
    pub(super) source: IpAddr,
    pub(super) token: String,
    pub(super) order: Uuid,
    pub(super) idx: usize,
    pub(super) msgpack: bool,
}

/// Connects, handshakes and subscribes; then a task records arrivals until `stop`.
pub(super) async fn open_subscriber(
    sub: Subscriber,
    arrivals: mpsc::UnboundedSender<Arrival>,
    stop: CancellationToken,
) -> R<()> {
    let Subscriber {
        addr,
        source,
        token,
        order,
        idx,
        msgpack,
    } = sub;
    let sock = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    sock.bind(SocketAddr::new(source, 0))
        .map_err(|e| e.to_string())?;
    let stream = sock.connect(addr).await.map_err(|e| e.to_string())?;
    let mut req = format!("ws://{addr}/hubs/customer-orders")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().map_err(|_| "header")?,
    );
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream)
        .await
        .map_err(|e| e.to_string())?;
    let protocol = if msgpack {
        Protocol::MessagePack
    } else {
        Protocol::Json
    };
    let text = |b: bytes::Bytes| Message::text(String::from_utf8_lossy(&b).into_owned());
    ws.send(text(encode_handshake_request(protocol)))
        .await
        .map_err(|e| e.to_string())?;
    let sub = client_invocation(
        protocol,
        Some("1"),
        "SubscribeToOrder",
        &[&order.to_string()],
    );
    let sub = if msgpack {
        Message::binary(sub)
    } else {
        text(sub)
    };
    ws.send(sub).await.map_err(|e| e.to_string())?;
    // Wait for the handshake answer and the completion.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = 0;
    while seen < 2 {
        let m = tokio::time::timeout_at(deadline.into(), ws.next())
            .await
            .map_err(|_| "subscribe timeout")?;
        match m {
            Some(Ok(Message::Text(t))) => seen += t.as_str().matches('\u{1e}').count(),
            Some(Ok(Message::Binary(_))) => seen += 1,
            Some(Ok(_)) => {}
            _ => return Err("closed during subscribe".into()),
        }
    }
    tokio::spawn(async move {
        let mut ping = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                // Dropping the socket without a close handshake, like a network loss.
                _ = stop.cancelled() => return,
                _ = ping.tick() => {
                    let p = if msgpack { Message::binary(vec![2u8, 0x91, 0x06]) } else { Message::text("{\"type\":6}\u{1e}") };
                    if ws.send(p).await.is_err() { return; }
                }
                m = ws.next() => match m {
                    Some(Ok(Message::Text(t))) => {
                        let now = Instant::now();
                        for rec in t.as_str().split('\u{1e}').filter(|r| r.contains("\"type\":1")) {
                            if let Ok(v) = serde_json::from_str::<serde_json::Value>(rec) {
                                if let Some(ver) = v["arguments"][0]["version"].as_u64() {
                                    let _ = arrivals.send((idx, ver, now));
                                }
                            }
                        }
                    }
                    Some(Ok(Message::Binary(b))) => {
                        let now = Instant::now();
                        if b.as_ref() != [2u8, 0x91, 0x06] {
                            let _ = arrivals.send((idx, 0, now));
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => return,
                }
            }
        }
    });
    Ok(())
}

/// What a fanout run does.
pub(super) struct Shape<'a> {
    pub(super) c: usize,
    pub(super) rate: u64,
    pub(super) changes: u64,
    pub(super) sources: u8,
    pub(super) protocol: &'a str,
    pub(super) transport: &'a str,
}

pub(super) async fn fanout(cli: &Cli, shape: Shape<'_>) -> R<String> {
    let Shape {
        c,
        rate,
        changes,
        sources,
        protocol,
        transport,
    } = shape;
    if !["websockets", "sse", "longpolling"].contains(&transport) {
        return Err(format!(
            "--transport {transport}: websockets, sse or longpolling"
        ));
    }
    let msgpack = protocol == "messagepack";
    let Cast {
        minter: m,
        restaurant,
        service,
        staff,
    } = Cast::new(&cli.secret)?;
    let customers: Vec<Uuid> = (0..c).map(|_| Uuid::new_v4()).collect();
    let t0 = Instant::now();
    let orders = place_orders(cli.addr, &service, restaurant, &customers).await?;
    let place_secs = t0.elapsed().as_secs_f64();
    let rss_before = rss_kib(cli.server_pid);
    let (atx, mut arx) = mpsc::unbounded_channel::<Arrival>();
    let sem = Arc::new(Semaphore::new(256));
    let t1 = Instant::now();
    let mut tasks = Vec::with_capacity(c);
    for (i, (cust, order)) in customers.iter().zip(&orders).enumerate() {
        let token = m.mint(*cust, &[], &[], 3600).map_err(|e| e.to_string())?;
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let source = IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            2 + (i % sources.max(1) as usize) as u8,
        ));
        let (addr, order, atx, peer) = (cli.addr, *order, atx.clone(), cli.peer);
        let transport = transport.to_string();
        tasks.push(tokio::spawn(async move {
            let sub = Subscriber {
                addr,
                source,
                token,
                order,
                idx: i,
                msgpack,
            };
            let stop = CancellationToken::new();
            let r = match peer {
                Peer::Ordertrack if transport == "sse" => halfs::open_sse(sub, atx, stop).await,
                Peer::Ordertrack if transport == "longpolling" => {
                    halfs::open_long_polling(sub, atx, stop).await
                }
                Peer::Ordertrack => open_subscriber(sub, atx, stop).await,
                Peer::Socketio => {
                    socketio::open_subscriber(sub, atx, CancellationToken::new()).await
                }
            };
            drop(permit);
            r
        }));
    }
    let mut failed = 0;
    for t in tasks {
        if !matches!(t.await, Ok(Ok(()))) {
            failed += 1;
        }
    }
    let connect_secs = t1.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss_kib(cli.server_pid);
    // Drive changes at `rate` per second over 32 HTTP connections.
    let actions = ["accept", "preparing", "ready", "delivered"];
    let changes = changes.min(c as u64 * 4);
    let acks: Arc<Mutex<HashMap<(usize, u64), Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let (jtx, jrx) = mpsc::channel::<(usize, usize)>(1024);
    let jrx = Arc::new(tokio::sync::Mutex::new(jrx));
    let errors = Arc::new(AtomicU64::new(0));
    let eta = (chrono::Utc::now() + chrono::Duration::minutes(60))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut workers = Vec::new();
    for _ in 0..32 {
        let (jrx, acks, orders, staff, errors, eta) = (
            jrx.clone(),
            acks.clone(),
            orders.clone(),
            staff.clone(),
            errors.clone(),
            eta.clone(),
        );
        let addr = cli.addr;
        workers.push(tokio::spawn(async move {
            let Ok(mut http) = Http::connect(addr).await else {
                return;
            };
            loop {
                let job = { jrx.lock().await.recv().await };
                let Some((idx, step)) = job else { return };
                let body = if step == 0 {
                    format!("{{\"estimatedDeliveryTime\":\"{eta}\"}}")
                } else {
                    "{}".into()
                };
                let path = format!("/api/v1/orders/{}/{}", orders[idx], actions[step]);
                match http.post(&path, &staff, body).await {
                    Ok((200, _)) => {
                        if let Ok(mut a) = acks.lock() {
                            a.insert((idx, step as u64 + 2), Instant::now());
                        }
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let t2 = Instant::now();
    let cpu_before = cpu_secs(cli.server_pid);
    for k in 0..changes {
        let due = t2 + Duration::from_secs_f64(k as f64 / rate.max(1) as f64);
        tokio::time::sleep_until(due.into()).await;
        let idx = (k % c as u64) as usize;
        let step = (k / c as u64) as usize;
        if jtx.send((idx, step)).await.is_err() {
            break;
        }
    }
    drop(jtx);
    for w in workers {
        let _ = w.await;
    }
    let drive_secs = t2.elapsed().as_secs_f64();
    // Collect arrivals until quiet.
    let mut arrivals: Vec<Arrival> = Vec::new();
    while let Ok(Some(a)) = tokio::time::timeout(Duration::from_secs(2), arx.recv()).await {
        arrivals.push(a);
    }
    let cpu = cpu_before.zip(cpu_secs(cli.server_pid)).map(|(b, a)| a - b);
    let acks = acks.lock().map_err(|_| "lock")?.clone();
    let mut seen: HashMap<(usize, u64), u32> = HashMap::new();
    let mut lat_ms = Vec::new();
    for (idx, ver, at) in &arrivals {
        *seen.entry((*idx, *ver)).or_default() += 1;
        if let Some(ack) = acks.get(&(*idx, *ver)) {
            let d = if at >= ack {
                at.duration_since(*ack).as_secs_f64()
            } else {
                -ack.duration_since(*at).as_secs_f64()
            };
            lat_ms.push(d * 1000.0);
        }
    }
    lat_ms.sort_by(|a, b| a.total_cmp(b));
    let (lost, dup) = if msgpack {
        let got = arrivals.len() as i64;
        (
            (acks.len() as i64 - got).max(0),
            (got - acks.len() as i64).max(0),
        )
    } else {
        let lost = acks.keys().filter(|k| !seen.contains_key(k)).count() as i64;
        let dup = seen.values().map(|n| (*n as i64) - 1).sum::<i64>();
        (lost, dup)
    };
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if c > 0 => format!("{:.1} KiB", (a as f64 - b as f64) / c as f64),
        _ => "n/a (pass --server-pid)".into(),
    };
    let mut t = String::new();
    t.push_str("| metric | value |\n|---|---|\n");
    let server = match cli.peer {
        Peer::Ordertrack => format!("ordertrack, SignalR {protocol} over {transport}"),
        Peer::Socketio => "socket.io 4.8 peer (Node), WebSocket, JSON".into(),
    };
    t.push_str(&format!("| protocol | {server} |\n"));
    t.push_str(&format!(
        "| orders placed | {c} in {place_secs:.2} s ({:.0}/s) |\n",
        c as f64 / place_secs
    ));
    t.push_str(&format!(
        "| hub connections (subscribed) | {} ok, {failed} failed |\n",
        c - failed
    ));
    t.push_str(&format!(
        "| connect+handshake+subscribe rate | {:.0}/s |\n",
        c as f64 / connect_secs
    ));
    t.push_str(&format!(
        "| server RSS before / after connections | {} / {} KiB |\n",
        rss_before.map(|v| v.to_string()).unwrap_or("n/a".into()),
        rss_after.map(|v| v.to_string()).unwrap_or("n/a".into())
    ));
    t.push_str(&format!(
        "| server RSS per subscribed connection | {per_conn} |\n"
    ));
    t.push_str(&format!("| status changes answered 2xx | {} of {changes} ({} errors) in {drive_secs:.2} s ({:.0}/s) |\n",
        acks.len(), errors.load(Ordering::Relaxed), acks.len() as f64 / drive_secs));
    t.push_str(&format!("| events received | {} |\n", arrivals.len()));
    t.push_str(&format!(
        "| latency HTTP answer → arrival p50 / p99 / max | {:.2} / {:.2} / {:.2} ms |\n",
        percentile(&lat_ms, 0.5),
        percentile(&lat_ms, 0.99),
        lat_ms.last().copied().unwrap_or(f64::NAN)
    ));
    t.push_str(&format!("| lost / duplicated | {lost} / {dup} |\n"));
    let per_event = match cpu {
        Some(secs) if !arrivals.is_empty() => format!(
            "{:.1} µs ({secs:.2} s over {} events, REST writes included)",
            secs * 1e6 / arrivals.len() as f64,
            arrivals.len()
        ),
        _ => "n/a (pass --server-pid)".into(),
    };
    t.push_str(&format!(
        "| server CPU per delivered event | {per_event} |\n"
    ));
    Ok(t)
}
