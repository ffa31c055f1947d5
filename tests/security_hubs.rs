//! One user cannot take the hubs from the others (issue 16): a flood of negotiates by one user
//! leaves everyone else's negotiate working; one user cannot hold every hub slot or pile up
//! subscriptions; a client that never says anything is closed; a connection token only works for
//! the user who negotiated it; CORS on the hubs can be restricted to chosen origins. Every
//! refusal is counted in `/metrics` by reason.

mod common;
use common::hub::*;
use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream as StdTcp;
use std::time::{Duration, Instant};
use uuid::Uuid;

const CUSTOMER_HUB: &str = "customer-orders";
const RESTAURANT_HUB: &str = "restaurant-orders";

fn refusals(server: &Server, reason: &str) -> f64 {
    metric(
        server,
        &format!("ordertrack_hub_refusals_total{{reason=\"{reason}\"}}"),
    )
}

/// Sends `n` negotiates over one keep-alive connection, pipelined in chunks; returns how many
/// answers carried a connection token and how many an error.
fn negotiate_burst(port: u16, token: &str, n: usize) -> (usize, usize) {
    let mut s = StdTcp::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let req = format!(
        "POST /hubs/{CUSTOMER_HUB}/negotiate?negotiateVersion=1 HTTP/1.1\r\nHost: t\r\n\
         Authorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
    );
    let (mut tokens, mut errors, mut sent) = (0, 0, 0);
    let mut buf = vec![0u8; 1 << 16];
    let mut text = String::new();
    while sent < n {
        let chunk = (n - sent).min(200);
        s.write_all(req.repeat(chunk).as_bytes()).expect("write");
        sent += chunk;
        let mut answers = 0;
        while answers < chunk {
            let got = s.read(&mut buf).expect("read");
            assert!(got > 0, "the server closed the connection mid-burst");
            text.push_str(&String::from_utf8_lossy(&buf[..got]));
            // Count complete bodies: each answer's JSON object ends with `}` followed by the
            // next status line or the end of what arrived.
            while let Some(end) = text.find("}\0").or_else(|| body_end(&text)) {
                let one: String = text.drain(..=end).collect();
                answers += 1;
                if one.contains("\"connectionToken\"") {
                    tokens += 1;
                } else if one.contains("\"error\"") {
                    errors += 1;
                }
            }
        }
    }
    (tokens, errors)
}

/// Where the first complete answer in `text` ends (its JSON body's last byte), if one has.
fn body_end(text: &str) -> Option<usize> {
    let head_end = text.find("\r\n\r\n")? + 4;
    let len: usize = text[..head_end]
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .expect("a content-length on every negotiate answer");
    (text.len() >= head_end + len).then(|| head_end + len - 1)
}

#[test]
fn one_users_negotiate_flood_does_not_crowd_out_anyone_else() {
    // More negotiates than the old shared table held (50,000) within its 15 s life.
    let n = std::env::var("OT_NEGOTIATE_FLOOD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(56_000usize);
    let server = Server::start();
    let cast = Cast::new();
    let port = server.port;
    let started = Instant::now();
    let per = n / 8;
    let results: Vec<(usize, usize)> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..8)
            .map(|_| sc.spawn(|| negotiate_burst(port, &cast.customer_token, per)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("burst"))
            .collect()
    });
    let (tokens, errors) = results.iter().fold((0, 0), |(t, e), (a, b)| (t + a, e + b));
    let took = started.elapsed();
    println!(
        "RESULT one customer sent {} negotiates in {:.1} s: {tokens} answered with a token, {errors} with an error",
        per * 8,
        took.as_secs_f64()
    );
    // Someone else negotiates right after the flood, while every token above is still alive.
    let (status, _, body) = tokio::runtime::Runtime::new()
        .expect("rt")
        .block_on(negotiate(
            port,
            CUSTOMER_HUB,
            "?negotiateVersion=1",
            Some(&cast.stranger_token),
        ));
    assert_eq!(status, 200);
    assert!(
        body["connectionToken"].is_string(),
        "another user's negotiate after the flood: {body}"
    );
    assert_eq!(errors, 0, "the flooding user's own negotiates were refused");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_user_cannot_hold_every_hub_slot() {
    // 25 slots in all; the default per-user cap is 20.
    let server = blocking(|| Server::start_with(&["--max-hub-connections", "25"]));
    let cast = blocking(Cast::new);
    let port = server.port;
    let path = format!("/hubs/{CUSTOMER_HUB}");
    let mut mine = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..25 {
        match ws_connect(port, &path, Some(&cast.customer_token)).await {
            Ok(ws) => mine.push(JsonHub::handshake(ws).await),
            Err(e) => refused.push(refused_status(Err(e))),
        }
    }
    assert_eq!(mine.len(), 20, "one user held more than its 20 connections");
    assert_eq!(refused, vec![429; 5]);
    // Everyone else still gets in, and the refusals are counted by reason.
    let other = ws_connect(port, &path, Some(&cast.stranger_token)).await;
    let mut other = JsonHub::handshake(other.expect("another user's connection")).await;
    let order = blocking(|| place(&server, &cast, "CashOnDelivery"));
    let c = other.invoke("SubscribeToOrder", json!([order])).await;
    assert!(c.get("error").is_some(), "a stranger subscribed: {c}");
    assert_eq!(
        blocking(|| refusals(&server, "user_connections")),
        5.0,
        "metric"
    );
    // The refusal is a problem that says what happened.
    let answer = raw_exchange(
        port,
        format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Authorization: Bearer {}\r\n\r\n",
            cast.customer_token
        )
        .as_bytes(),
        WAIT,
    )
    .unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("Hub.TooManyUserConnections"), "{answer}");
    // One closes; that user may open one again.
    drop(mine.pop());
    let deadline = Instant::now() + WAIT;
    loop {
        match ws_connect(port, &path, Some(&cast.customer_token)).await {
            Ok(ws) => {
                mine.push(JsonHub::handshake(ws).await);
                break;
            }
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("no slot came back after a close: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_users_subscriptions_are_capped_over_all_its_connections() {
    let server = blocking(|| Server::start_with(&["--hub-max-subscriptions-per-user", "3"]));
    let cast = blocking(Cast::new);
    let port = server.port;
    let orders: Vec<Uuid> = (0..4)
        .map(|_| blocking(|| place(&server, &cast, "CashOnDelivery")))
        .collect();
    let mut a = JsonHub::connect(port, CUSTOMER_HUB, &cast.customer_token).await;
    let mut b = JsonHub::connect(port, CUSTOMER_HUB, &cast.customer_token).await;
    a.subscribe(orders[0]).await;
    a.subscribe(orders[1]).await;
    b.subscribe(orders[2]).await;
    let c = b.invoke("SubscribeToOrder", json!([orders[3]])).await;
    assert_eq!(
        c["error"],
        "An unexpected error occurred invoking 'SubscribeToOrder' on the server. HubException: Too many subscriptions for this user.",
        "{c}"
    );
    // Unsubscribing gives the unit back.
    a.invoke("UnsubscribeFromOrder", json!([orders[0]])).await;
    b.subscribe(orders[3]).await;
    // So does an order reaching its end (its group is dropped by the server).
    let (st, _) = blocking(|| act(&server, &cast.customer_token, orders[1], "cancel", None));
    assert_eq!(st, 200);
    let (name, dto) = a.event().await;
    assert_eq!(
        (name.as_str(), dto["status"].as_str()),
        ("ReceiveOrderStatusChanged", Some("Cancelled"))
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let c = a.invoke("SubscribeToOrder", json!([orders[0]])).await;
        if c.get("error").is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dropped group's unit never came back: {c}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(blocking(|| refusals(&server, "user_subscriptions")) >= 1.0);
    // Closing a connection gives back all of its subscriptions.
    drop(b);
    let mut c2 = JsonHub::connect(port, CUSTOMER_HUB, &cast.customer_token).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let c = c2.invoke("SubscribeToOrder", json!([orders[2]])).await;
        let d = c2.invoke("SubscribeToOrder", json!([orders[3]])).await;
        if c.get("error").is_none() && d.get("error").is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a closed connection kept its units: {c} {d}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_says_anything_is_closed_one_that_pings_is_not() {
    let server = blocking(|| Server::start_with(&["--hub-silent-timeout-ms", "1500"]));
    let cast = blocking(Cast::new);
    let port = server.port;
    let mut silent = JsonHub::connect(port, CUSTOMER_HUB, &cast.customer_token).await;
    let mut pinging = JsonHub::connect(port, CUSTOMER_HUB, &cast.customer_token).await;
    let started = Instant::now();
    let mut closed_after = None;
    while started.elapsed() < Duration::from_secs(6) {
        pinging.send_text("{\"type\":6}\u{1e}").await;
        if closed_after.is_none() {
            match silent.next_msg(Duration::from_millis(500)).await {
                Got::Msg(m) if m["type"] == 7 => {
                    assert_eq!(m["allowReconnect"], true, "{m}");
                    closed_after = Some(started.elapsed());
                }
                Got::Msg(m) if m["type"] == 6 => {}
                Got::Timeout => {}
                other => panic!("silent connection: {other:?}"),
            }
        } else {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let after = closed_after.expect("the silent connection was never closed");
    assert!(
        after >= Duration::from_millis(1200),
        "closed too early: {after:?}"
    );
    // The one that pinged (as the official client does) is still served.
    let order = blocking(|| place(&server, &cast, "CashOnDelivery"));
    let dto = pinging.subscribe(order).await;
    assert_eq!(dto["status"], "Placed");
    assert!(blocking(|| refusals(&server, "silent")) >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_token_works_only_for_the_user_who_negotiated_it() {
    let (server, cast) = setup();
    let port = server.port;
    let id = negotiate_token(port, CUSTOMER_HUB, &cast.customer_token).await;
    let path = format!("/hubs/{CUSTOMER_HUB}?id={id}");
    // Someone else who saw the URL (a proxy log) is refused, as ASP.NET refuses another user.
    let theirs = ws_connect(port, &path, Some(&cast.stranger_token)).await;
    assert_eq!(refused_status(theirs), 403);
    // The user who negotiated still connects with it.
    let ws = ws_connect(port, &path, Some(&cast.customer_token))
        .await
        .expect("the negotiating user's own upgrade");
    let mut mine = JsonHub::handshake(ws).await;
    let order = blocking(|| place(&server, &cast, "CashOnDelivery"));
    assert_eq!(mine.subscribe(order).await["status"], "Placed");
    // Tokens that are not ours stay 404.
    for bad in ["nope", "AAAAAAAAAAAAAAAAAAAAAA", &id[..id.len() - 1]] {
        let r = ws_connect(
            port,
            &format!("/hubs/{CUSTOMER_HUB}?id={bad}"),
            Some(&cast.customer_token),
        )
        .await;
        assert_eq!(refused_status(r), 404, "id {bad}");
    }
    assert_eq!(
        blocking(|| refusals(&server, "other_users_connection_token")),
        1.0
    );
    assert_eq!(
        blocking(|| refusals(&server, "unknown_connection_token")),
        3.0
    );
}

fn preflight(server: &Server, origin: &str) -> Reply {
    send(
        client()
            .request(
                reqwest::Method::OPTIONS,
                server.url(&format!("/hubs/{RESTAURANT_HUB}/negotiate")),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization"),
    )
}

fn negotiate_from(server: &Server, token: &str, origin: &str) -> Reply {
    send(
        client()
            .post(server.url(&format!(
                "/hubs/{RESTAURANT_HUB}/negotiate?negotiateVersion=1"
            )))
            .bearer_auth(token)
            .header("origin", origin),
    )
}

#[test]
fn cors_allows_any_origin_by_default_and_only_the_listed_ones_when_restricted() {
    // Default: any origin, `null` included, is allowed back (bearer tokens, no cookies).
    let server = Server::start();
    let cast = Cast::new();
    for origin in ["https://shop.example", "null"] {
        let r = negotiate_from(&server, &cast.staff_token, origin);
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("access-control-allow-origin").as_deref(),
            Some(origin)
        );
        let p = preflight(&server, origin);
        assert_eq!(p.status, 204);
        assert_eq!(
            p.header("access-control-allow-origin").as_deref(),
            Some(origin)
        );
    }
    drop(server);

    let server = Server::start_with(&[
        "--cors-origins",
        "https://app.example.com,https://admin.example.com",
    ]);
    let ok = negotiate_from(&server, &cast.staff_token, "https://app.example.com");
    assert_eq!(
        ok.header("access-control-allow-origin").as_deref(),
        Some("https://app.example.com")
    );
    let p = preflight(&server, "https://admin.example.com");
    assert_eq!(
        p.header("access-control-allow-methods").as_deref(),
        Some("GET, POST, DELETE, OPTIONS")
    );
    for origin in [
        "https://evil.example",
        "null",
        "https://app.example.com.evil.example",
    ] {
        let r = negotiate_from(&server, &cast.staff_token, origin);
        assert_eq!(r.header("access-control-allow-origin"), None, "{origin}");
        let p = preflight(&server, origin);
        assert_eq!(p.status, 204);
        assert_eq!(p.header("access-control-allow-origin"), None, "{origin}");
        assert_eq!(p.header("access-control-allow-methods"), None, "{origin}");
    }
}
