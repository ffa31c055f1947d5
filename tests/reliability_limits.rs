//! Floods and slow clients (issue 5): each connection cap (total, per client address, hub
//! connections) and the per-connection subscription cap gets one more client than it allows,
//! which must be refused clearly while the clients already in keep working; silent, slow-header
//! and slow-body clients are cut off at their deadlines without locking anyone else out.

mod common;
use common::hub::*;
use common::*;
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const CUSTOMER_HUB: &str = "customer-orders";
const RESTAURANT_HUB: &str = "restaurant-orders";

/// Connects from `source` (a loopback address) to the server.
async fn connect_from(port: u16, source: [u8; 4]) -> TcpStream {
    let s = TcpSocket::new_v4().expect("socket");
    s.bind(SocketAddr::from((source, 0))).expect("bind source");
    s.connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .expect("connect")
}

/// Sends one request on `s` and reads the answer's head and body (by Content-Length). Empty
/// when the server closed the connection without answering.
async fn exchange(s: &mut TcpStream, request: &str) -> String {
    if s.write_all(request.as_bytes()).await.is_err() {
        return String::new();
    }
    read_answer(s, Duration::from_secs(10)).await
}

async fn read_answer(s: &mut TcpStream, wait: Duration) -> String {
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return text;
            }
        }
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return text,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn healthz() -> &'static str {
    "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
}

/// A keep-alive HTTP connection that has been answered once (so the server counts it).
async fn live_http(port: u16, source: [u8; 4]) -> TcpStream {
    let mut s = connect_from(port, source).await;
    let a = exchange(&mut s, healthz()).await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a:?}");
    s
}

/// Still served on an existing keep-alive connection.
async fn still_works(s: &mut TcpStream, what: &str) {
    let a = exchange(s, healthz()).await;
    assert!(
        a.starts_with("HTTP/1.1 200"),
        "{what} stopped working: {a:?}"
    );
}

/// The answer a fresh connection from `source` gets.
async fn fresh_answer(port: u16, source: [u8; 4]) -> String {
    let mut s = connect_from(port, source).await;
    exchange(&mut s, healthz()).await
}

fn assert_refused(answer: &str, title: &str) {
    assert!(
        answer.starts_with("HTTP/1.1 503"),
        "expected a 503 refusal, got {answer:?}"
    );
    assert!(
        answer.contains("application/problem+json") && answer.contains(title),
        "the refusal must be a {title} problem: {answer:?}"
    );
}

/// Waits until a fresh connection is served again (the server saw a client leave).
async fn until_served(port: u16, source: [u8; 4]) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let a = fresh_answer(port, source).await;
        if a.starts_with("HTTP/1.1 200") || Instant::now() > deadline {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A hub connection that has shaken hands and subscribed to its restaurant.
async fn live_hub(server: &Server, cast: &Cast) -> JsonHub {
    let mut h = JsonHub::connect(server.port, RESTAURANT_HUB, &cast.staff_token).await;
    h.subscribe_restaurant(cast.restaurant).await;
    h
}

async fn hub_still_works(h: &mut JsonHub, cast: &Cast) {
    let c = h
        .invoke("SubscribeToRestaurant", json!([cast.restaurant]))
        .await;
    assert!(
        c.get("error").is_none(),
        "hub connection stopped working: {c}"
    );
}

/// Lets the server notice connections the client side just dropped (negotiate's pool).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn total_cap_refuses_one_more_connection_and_counts_websockets() {
    let server = blocking(|| Server::start_with(&["--max-connections", "6"]));
    let cast = blocking(Cast::new);
    let port = server.port;
    let mut hubs = vec![
        live_hub(&server, &cast).await,
        live_hub(&server, &cast).await,
    ];
    settle().await;
    let mut https = Vec::new();
    for _ in 0..4 {
        https.push(live_http(port, [127, 0, 0, 1]).await);
    }
    // 4 HTTP + 2 WebSockets = 6 open: the 7th is refused, whatever it is.
    assert_refused(
        &fresh_answer(port, [127, 0, 0, 1]).await,
        "Server.TooManyConnections",
    );
    let ws = ws_connect(
        port,
        &format!("/hubs/{RESTAURANT_HUB}"),
        Some(&cast.staff_token),
    )
    .await;
    assert!(ws.is_err(), "a 7th connection as a WebSocket got in");
    for (i, s) in https.iter_mut().enumerate() {
        still_works(s, &format!("HTTP connection {i}")).await;
    }
    for h in &mut hubs {
        hub_still_works(h, &cast).await;
    }
    // One leaves, one more gets in.
    drop(https.pop());
    let a = until_served(port, [127, 0, 0, 1]).await;
    assert!(a.starts_with("HTTP/1.1 200"), "after one left: {a:?}");
    drop(hubs.pop());
    settle().await;
    let a = until_served(port, [127, 0, 0, 1]).await;
    assert!(a.starts_with("HTTP/1.1 200"), "after a hub left: {a:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn per_address_cap_refuses_one_more_from_that_address_only() {
    let server = blocking(|| Server::start_with(&["--max-connections-per-ip", "3"]));
    let cast = blocking(Cast::new);
    let port = server.port;
    let mut hub = live_hub(&server, &cast).await;
    settle().await;
    let mut a = live_http(port, [127, 0, 0, 1]).await;
    let mut b = live_http(port, [127, 0, 0, 1]).await;
    assert_refused(
        &fresh_answer(port, [127, 0, 0, 1]).await,
        "Server.TooManyConnections",
    );
    // Another address is not affected.
    let mut other = live_http(port, [127, 0, 0, 2]).await;
    still_works(&mut a, "first connection").await;
    still_works(&mut b, "second connection").await;
    still_works(&mut other, "connection from another address").await;
    hub_still_works(&mut hub, &cast).await;
    drop(a);
    let answer = until_served(port, [127, 0, 0, 1]).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "after one left: {answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hub_cap_refuses_one_more_websocket_and_the_others_keep_working() {
    let server = blocking(|| Server::start_with(&["--max-hub-connections", "3"]));
    let cast = blocking(Cast::new);
    let port = server.port;
    let order = blocking(|| place(&server, &cast, "CashOnDelivery"));
    let mut hubs = Vec::new();
    for _ in 0..3 {
        hubs.push(live_hub(&server, &cast).await);
    }
    let refused = ws_connect(
        port,
        &format!("/hubs/{CUSTOMER_HUB}"),
        Some(&cast.customer_token),
    )
    .await;
    assert_eq!(refused_status(refused), 503, "the 4th WebSocket");
    // Plain HTTP is not affected, and the three get events.
    let (st, _) = blocking(|| get_json(&server, &cast.customer_token, "/api/v1/orders/my"));
    assert_eq!(st, 200);
    let (st, v) = blocking(|| act(&server, &cast.staff_token, order, "accept", Some(eta())));
    assert_eq!(st, 200, "{v}");
    for h in &mut hubs {
        let (target, dto) = h.event().await;
        assert_eq!(
            (target.as_str(), dto["status"].as_str()),
            ("ReceiveOrderStatusChanged", Some("Accepted"))
        );
    }
    // One leaves, one more gets in.
    drop(hubs.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match ws_connect(
            port,
            &format!("/hubs/{CUSTOMER_HUB}"),
            Some(&cast.customer_token),
        )
        .await
        {
            Ok(ws) => {
                JsonHub::handshake(ws).await;
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "no room after one left: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn subscription_cap_refuses_one_more_and_existing_subscriptions_keep_working() {
    let server = blocking(|| Server::start_with(&["--hub-max-subscriptions", "3"]));
    let cast = blocking(Cast::new);
    let orders: Vec<_> = blocking(|| {
        (0..4)
            .map(|_| place(&server, &cast, "CashOnDelivery"))
            .collect()
    });
    let mut hub = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    for o in &orders[..3] {
        hub.subscribe(*o).await;
    }
    let refused = hub.invoke("SubscribeToOrder", json!([orders[3]])).await;
    let text = refused["error"].as_str().unwrap_or_default();
    assert!(
        text.contains("Too many subscriptions"),
        "the 4th subscription must be refused clearly: {refused}"
    );
    // The three still deliver, on the same connection.
    for o in &orders[..3] {
        let (st, v) = blocking(|| act(&server, &cast.staff_token, *o, "accept", Some(eta())));
        assert_eq!(st, 200, "{v}");
        let (_, dto) = hub.event().await;
        assert_eq!(dto["orderId"], o.to_string());
    }
    // The restaurant hub counts the same way.
    let mut staff = JsonHub::connect(server.port, RESTAURANT_HUB, &cast.owner_token).await;
    let others: Vec<uuid::Uuid> = (0..3).map(|_| uuid::Uuid::new_v4()).collect();
    let admin = blocking(|| token(uuid::Uuid::new_v4(), &["Administrator"], &[]));
    let mut admin_hub = JsonHub::connect(server.port, RESTAURANT_HUB, &admin).await;
    admin_hub.subscribe_restaurant(cast.restaurant).await;
    for r in &others[..2] {
        admin_hub.subscribe_restaurant(*r).await;
    }
    let refused = admin_hub
        .invoke("SubscribeToRestaurant", json!([others[2]]))
        .await;
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or_default()
            .contains("Too many subscriptions"),
        "{refused}"
    );
    staff.subscribe_restaurant(cast.restaurant).await;
    let (st, _) = blocking(|| act(&server, &cast.staff_token, orders[0], "preparing", None));
    assert_eq!(st, 200);
    assert_eq!(admin_hub.event().await.1["status"], "Preparing");
    assert_eq!(staff.event().await.1["status"], "Preparing");
}

/// The three deadlines run side by side on one server (each waits 10–15 s), with a fourth
/// client that is served every 500 ms throughout.
#[tokio::test(flavor = "multi_thread")]
async fn silent_slow_header_and_slow_body_clients_are_cut_off_at_their_deadlines() {
    let server = blocking(|| Server::start_with(&["--max-connections", "6"]));
    let cast = blocking(Cast::new);
    let port = server.port;
    let started = Instant::now();

    // Three silent connections, one active, one slow with headers, one slow with its body: the
    // cap of 6 is reached and a 7th is refused.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(connect_from(port, [127, 0, 0, 1]).await);
    }
    let mut active = live_http(port, [127, 0, 0, 1]).await;
    let slow_headers = connect_from(port, [127, 0, 0, 1]).await;
    let slow_body = connect_from(port, [127, 0, 0, 2]).await;
    settle().await;
    assert_refused(
        &fresh_answer(port, [127, 0, 0, 1]).await,
        "Server.TooManyConnections",
    );

    let headers = tokio::spawn(async move {
        // One header byte every 400 ms: never complete, never silent.
        let mut s = slow_headers;
        let t0 = Instant::now();
        let line = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        for b in line.iter().cycle() {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            let mut probe = [0u8; 256];
            match tokio::time::timeout(Duration::from_millis(400), s.read(&mut probe)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => break,
                Err(_) => {}
            }
            if t0.elapsed() > Duration::from_secs(40) {
                break;
            }
        }
        t0.elapsed()
    });

    let body_token = cast.service_token.clone();
    let body = tokio::spawn(async move {
        // Headers at once, then 10 of 200 promised body bytes, then nothing.
        let mut s = slow_body;
        let t0 = Instant::now();
        let req = format!(
            "POST /api/v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {body_token}\r\n\
             Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"customer"
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let answer = read_answer(&mut s, Duration::from_secs(40)).await;
        (t0.elapsed(), answer)
    });

    // The active client is served all along.
    let mut served = 0;
    while !(headers.is_finished() && body.is_finished()) {
        still_works(&mut active, "the active client").await;
        served += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            started.elapsed() < Duration::from_secs(45),
            "deadlines never fired"
        );
    }
    let header_cut = headers.await.expect("slow headers");
    let (body_cut, body_answer) = body.await.expect("slow body");

    // Silent connections: closed by the first-byte guard.
    for s in &mut silent {
        let mut b = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(1), s.read(&mut b)).await;
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "a silent connection is still open after {:?}",
            started.elapsed()
        );
    }
    eprintln!(
        "RESULT deadlines: silent closed by {:?}, slow headers cut at {header_cut:?}, slow body \
         answered at {body_cut:?}; active client served {served} times meanwhile",
        started.elapsed()
    );
    assert!(
        header_cut >= Duration::from_secs(10) && header_cut < Duration::from_secs(25),
        "slow headers cut at {header_cut:?}"
    );
    assert!(
        body_answer.starts_with("HTTP/1.1 408") && body_answer.contains("Request.Timeout"),
        "slow body: {body_answer:?}"
    );
    assert!(
        body_cut >= Duration::from_secs(8) && body_cut < Duration::from_secs(20),
        "slow body answered at {body_cut:?}"
    );
    // Room again for new clients.
    let a = until_served(port, [127, 0, 0, 1]).await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a:?}");
}
