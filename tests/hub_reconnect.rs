//! Stateful reconnect (ASP.NET Core 8's `withStatefulReconnect`), end to end through the binary
//! with raw WebSocket clients: negotiate's grant, handshake version 2, Ack and Sequence in JSON
//! and MessagePack, the replay after a dropped socket, the client's resend deduped, the window
//! and the buffer bound (the client must start over: 404), another user refused, and a parked
//! connection counted once under the per-user cap. The official client's side (Node and
//! Chromium through a proxy that cuts the socket) is `scripts/interop/run.mjs`, scenarios r*.

mod common;
use common::hub::*;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const HUB: &str = "restaurant-orders";
const STATEFUL: &str = "?negotiateVersion=1&useStatefulReconnect=true";
const JSON_V2: &str = "{\"protocol\":\"json\",\"version\":2}\u{1e}";
const MSGPACK_V2: &str = "{\"protocol\":\"messagepack\",\"version\":2}\u{1e}";

/// Negotiates stateful reconnect and returns the connection token.
async fn negotiate_stateful(port: u16, token: &str) -> String {
    let (status, _, body) = negotiate(port, HUB, STATEFUL, Some(token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["useStatefulReconnect"], true, "not granted: {body}");
    body["connectionToken"].as_str().expect("token").to_string()
}

fn path(id: &str) -> String {
    format!("/hubs/{HUB}?id={id}")
}

/// A stateful JSON connection (handshake `version`) subscribed to the cast's restaurant; its
/// `SubscribeToRestaurant` is the client's message 1 and the server's message 1.
async fn connect_json(server: &Server, cast: &Cast, handshake: &str) -> (JsonHub, String) {
    let id = negotiate_stateful(server.port, &cast.staff_token).await;
    let mut hub = open(server.port, &id, &cast.staff_token, handshake).await;
    hub.subscribe_restaurant(cast.restaurant).await;
    (hub, id)
}

/// Upgrades with the connection token `id` and shakes hands with `handshake`.
async fn open(port: u16, id: &str, token: &str, handshake: &str) -> JsonHub {
    let mut ws = ws_connect(port, &path(id), Some(token))
        .await
        .expect("upgrade");
    send_text(&mut ws, handshake).await;
    JsonHub::expect_handshake_ok(ws).await
}

/// Waits until the server has parked `n` connections (the socket drop was noticed).
async fn wait_parked(server: &Server, n: f64) {
    for _ in 0..200 {
        if blocking(|| metric(server, "ordertrack_hub_parked_connections")) == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the server did not park {n} connection(s)");
}

/// The next non-ping JSON message, which must be an event; returns its order id.
async fn event_order(hub: &mut JsonHub) -> String {
    let (target, dto) = hub.event().await;
    assert_eq!(target, "ReceiveOrderPlaced");
    dto["orderId"].as_str().expect("orderId").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn negotiate_grants_stateful_reconnect_only_when_asked_and_enabled() {
    let (server, cast) = setup();
    let (_, _, plain) = negotiate(
        server.port,
        HUB,
        "?negotiateVersion=1",
        Some(&cast.staff_token),
    )
    .await;
    assert!(plain.get("useStatefulReconnect").is_none(), "{plain}");
    negotiate_stateful(server.port, &cast.staff_token).await;
    let off = blocking(|| Server::start_with(&["--hub-reconnect-buffer-bytes", "0"]));
    let (_, _, body) = negotiate(off.port, HUB, STATEFUL, Some(&cast.staff_token)).await;
    assert!(
        body.get("useStatefulReconnect").is_none(),
        "granted with the buffer off: {body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_socket_resumes_with_sequence_replay_and_dedupe() {
    let (server, cast) = setup();
    let (mut hub, id) = connect_json(&server, &cast, JSON_V2).await;
    let a = blocking(|| place(&server, &cast, "CashOnDelivery"));
    // The event, and about a second after our invocation the server's Ack of it (our message
    // 1), in whichever order a busy machine makes them.
    let (first, second) = (hub.msg().await, hub.msg().await);
    let (ack, event) = if first["type"] == 8 {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(ack, json!({"type": 8, "sequenceId": 1}));
    assert_eq!(as_event(&event).1["orderId"], a.to_string());
    // We ack the completion (server message 1) but not the event (2).
    hub.send(&json!({"type": 8, "sequenceId": 1})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(hub);
    wait_parked(&server, 1.0).await;
    let b = blocking(|| place(&server, &cast, "CashOnDelivery"));
    let c = blocking(|| place(&server, &cast, "CashOnDelivery"));

    let ws = ws_connect(server.port, &path(&id), Some(&cast.staff_token))
        .await
        .expect("reattach");
    // No handshake: the first message is the Sequence, then every unacked message in order.
    let mut hub = JsonHub::raw(ws);
    assert_eq!(hub.msg().await, json!({"type": 9, "sequenceId": 2}));
    for order in [a, b, c] {
        assert_eq!(event_order(&mut hub).await, order.to_string());
    }
    // The client resends its message 1 (already processed: skipped), then a new message 2.
    hub.send(&json!({"type": 9, "sequenceId": 1})).await;
    hub.send(&json!({"type": 1, "invocationId": "1", "target": "SubscribeToRestaurant", "arguments": [cast.restaurant]}))
        .await;
    hub.send(&json!({"type": 1, "invocationId": "2", "target": "UnsubscribeFromRestaurant", "arguments": [cast.restaurant]}))
        .await;
    let done = hub.msg().await;
    assert_eq!(
        done["invocationId"], "2",
        "the resent message 1 was processed again: {done}"
    );
    match hub.next_msg(Duration::from_secs(3)).await {
        Got::Msg(v) => assert_eq!(v, json!({"type": 8, "sequenceId": 2})),
        other => panic!("expected the server's Ack of message 2, got {other:?}"),
    }
    // Still the same connection: unsubscribed now, so a new order sends nothing.
    blocking(|| place(&server, &cast, "CashOnDelivery"));
    hub.quiet(QUIET).await;
    assert_eq!(
        blocking(|| metric(&server, "ordertrack_hub_resumes_total")),
        1.0
    );
    assert_eq!(
        blocking(|| metric(&server, "ordertrack_hub_replayed_messages_total")),
        3.0
    );
    assert_eq!(
        blocking(|| metric(&server, "ordertrack_hub_parked_connections")),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn messagepack_acks_and_sequences_are_arrays() {
    let (server, cast) = setup();
    let id = negotiate_stateful(server.port, &cast.staff_token).await;
    let mut ws = ws_connect(server.port, &path(&id), Some(&cast.staff_token))
        .await
        .expect("upgrade");
    send_binary(&mut ws, MSGPACK_V2.as_bytes()).await;
    match next_frame(&mut ws, WAIT).await {
        Some(Frame::Binary(b)) => assert_eq!(b, b"{}\x1e"),
        other => panic!("no handshake answer: {other:?}"),
    }
    let restaurant = cast.restaurant.to_string();
    send_binary(
        &mut ws,
        &mp_invocation(Some("1"), "SubscribeToRestaurant", &[&restaurant]),
    )
    .await;
    let mut frames = Vec::new();
    while frames.len() < 2 {
        match next_frame(&mut ws, WAIT).await {
            Some(Frame::Binary(b)) => frames.extend(
                mp_messages(&b)
                    .into_iter()
                    .filter(|m| m.arr()[0] != Mp::Int(6)),
            ),
            other => panic!("expected MessagePack frames, got {other:?}"),
        }
    }
    assert_eq!(frames[0].arr()[0], Mp::Int(3), "the completion first");
    // The server's Ack of our message 1: [8, 1], exactly ASP.NET's bytes.
    assert_eq!(frames[1], Mp::Arr(vec![Mp::Int(8), Mp::Int(1)]));
    drop(ws);
    wait_parked(&server, 1.0).await;
    let a = blocking(|| place(&server, &cast, "CashOnDelivery"));
    let mut ws = ws_connect(server.port, &path(&id), Some(&cast.staff_token))
        .await
        .expect("reattach");
    let mut got = Vec::new();
    while got.len() < 3 {
        match next_frame(&mut ws, WAIT).await {
            Some(Frame::Binary(b)) => got.extend(mp_messages(&b)),
            other => panic!("expected MessagePack frames, got {other:?}"),
        }
    }
    assert_eq!(
        got[0],
        Mp::Arr(vec![Mp::Int(9), Mp::Int(1)]),
        "Sequence first"
    );
    assert_eq!(got[1].arr()[0], Mp::Int(3), "then the unacked completion");
    assert_eq!(got[2].arr()[3].str(), "ReceiveOrderPlaced");
    assert_eq!(got[2].arr()[4].arr()[0].get("orderId").str(), a.to_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn after_the_window_the_client_must_start_over() {
    let server = blocking(|| Server::start_with(&["--hub-reconnect-window-ms", "300"]));
    let cast = blocking(Cast::new);
    let (hub, id) = connect_json(&server, &cast, JSON_V2).await;
    drop(hub);
    wait_parked(&server, 1.0).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let r = ws_connect(server.port, &path(&id), Some(&cast.staff_token)).await;
    assert_eq!(refused_status(r), 404);
    assert_eq!(
        blocking(|| metric(&server, "ordertrack_hub_resets_total{reason=\"window\"}")),
        1.0
    );
    assert_eq!(
        blocking(|| metric(&server, "ordertrack_hub_connections")),
        0.0
    );
    assert_eq!(
        blocking(|| metric(&server, "ordertrack_hub_subscriptions")),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_overflowing_replay_buffer_drops_the_connection() {
    let server = blocking(|| Server::start_with(&["--hub-reconnect-buffer-bytes", "1500"]));
    let cast = blocking(Cast::new);
    let (hub, id) = connect_json(&server, &cast, JSON_V2).await;
    drop(hub);
    wait_parked(&server, 1.0).await;
    for _ in 0..5 {
        blocking(|| place(&server, &cast, "CashOnDelivery"));
    }
    wait_parked(&server, 0.0).await;
    let r = ws_connect(server.port, &path(&id), Some(&cast.staff_token)).await;
    assert_eq!(refused_status(r), 404);
    assert_eq!(
        blocking(|| metric(&server, "ordertrack_hub_resets_total{reason=\"overflow\"}")),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connected_client_that_never_acks_is_closed_when_its_buffer_fills() {
    let server = blocking(|| Server::start_with(&["--hub-reconnect-buffer-bytes", "1500"]));
    let cast = blocking(Cast::new);
    let (mut hub, id) = connect_json(&server, &cast, JSON_V2).await;
    for _ in 0..5 {
        blocking(|| place(&server, &cast, "CashOnDelivery"));
    }
    let (msgs, end) = hub.until_end(WAIT).await;
    let close = msgs.last().expect("a Close");
    assert_eq!(
        *close,
        json!({"type": 7, "error": "Connection closed with an error.", "allowReconnect": true})
    );
    assert!(!matches!(end, Got::Timeout), "the socket stayed open");
    let r = ws_connect(server.port, &path(&id), Some(&cast.staff_token)).await;
    assert_eq!(refused_status(r), 404, "the client must start over");
}

#[tokio::test(flavor = "multi_thread")]
async fn another_user_cannot_take_a_parked_connection() {
    let (server, cast) = setup();
    let (hub, id) = connect_json(&server, &cast, JSON_V2).await;
    drop(hub);
    wait_parked(&server, 1.0).await;
    let r = ws_connect(server.port, &path(&id), Some(&cast.owner_token)).await;
    assert_eq!(refused_status(r), 403);
    // The owner still can.
    let ws = ws_connect(server.port, &path(&id), Some(&cast.staff_token))
        .await
        .expect("the owner reattaches");
    let mut hub = JsonHub::raw(ws);
    assert_eq!(hub.msg().await["type"], 9);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_version_1_handshake_gets_no_stateful_reconnect() {
    let (server, cast) = setup();
    let (mut hub, id) = connect_json(&server, &cast, JSON_HANDSHAKE).await;
    // No Ack ever comes, and a dropped socket ends the connection.
    hub.quiet(Duration::from_millis(1500)).await;
    drop(hub);
    for _ in 0..200 {
        if blocking(|| metric(&server, "ordertrack_hub_connections")) == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let r = ws_connect(server.port, &path(&id), Some(&cast.staff_token)).await;
    assert_eq!(refused_status(r), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parked_connection_counts_once_under_the_user_cap() {
    let server = blocking(|| Server::start_with(&["--hub-max-connections-per-user", "1"]));
    let cast = blocking(Cast::new);
    let (hub, id) = connect_json(&server, &cast, JSON_V2).await;
    drop(hub);
    wait_parked(&server, 1.0).await;
    let fresh = negotiate_token(server.port, HUB, &cast.staff_token).await;
    let r = ws_connect(server.port, &path(&fresh), Some(&cast.staff_token)).await;
    assert_eq!(refused_status(r), 429, "a parked connection still counts");
    let ws = ws_connect(server.port, &path(&id), Some(&cast.staff_token))
        .await
        .expect("reattach within the cap");
    let mut hub = JsonHub::raw(ws);
    assert_eq!(hub.msg().await, json!({"type": 9, "sequenceId": 1}));
    assert_eq!(
        blocking(|| metric(&server, "ordertrack_hub_connections")),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_socket_replaces_one_the_server_still_thinks_alive() {
    let (server, cast) = setup();
    let (mut old, id) = connect_json(&server, &cast, JSON_V2).await;
    // The client gave up on `old` before the server noticed anything.
    let ws = ws_connect(server.port, &path(&id), Some(&cast.staff_token))
        .await
        .expect("reattach");
    let mut hub = JsonHub::raw(ws);
    assert_eq!(hub.msg().await, json!({"type": 9, "sequenceId": 1}));
    let completion: Value = hub.msg().await;
    assert_eq!(completion["type"], 3, "the unacked completion is replayed");
    hub.send(&json!({"type": 9, "sequenceId": 2})).await;
    let a = blocking(|| place(&server, &cast, "CashOnDelivery"));
    assert_eq!(event_order(&mut hub).await, a.to_string());
    // The old socket gets nothing more and is let go.
    let (msgs, _) = old.until_end(Duration::from_secs(2)).await;
    assert!(
        msgs.iter().all(|m| m["type"] != 1),
        "the replaced socket still got events: {msgs:?}"
    );
    assert_eq!(
        blocking(|| metric(&server, "ordertrack_hub_connections")),
        1.0
    );
}

// ---- measurements (ignored; run by hand, numbers in docs/performance.md) ---------------------
//
//   cargo build --release --bin ordertrack
//   OT_SERVER_BIN=target/release/ordertrack cargo test --test hub_reconnect -- --ignored --nocapture --test-threads 1

/// The server's CPU time so far (utime + stime), in clock ticks (100 per second here).
fn cpu_ticks(server: &Server) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.pid())).expect("stat");
    let after_name = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of the line; `after_name` starts at field 3.
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

fn rss_kib(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Reattaches to `id` and reads `records` JSON records (the Sequence and the replay).
async fn reattach_and_read(port: u16, id: &str, token: &str, records: usize) {
    let mut ws = ws_connect(port, &path(id), Some(token))
        .await
        .expect("reattach");
    let mut seen = 0;
    while seen < records {
        match next_frame(&mut ws, WAIT).await {
            Some(Frame::Text(t)) => seen += t.matches(RS).count(),
            other => panic!("replay stopped after {seen} of {records} records: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn measure_replay_cost() {
    let n: usize = std::env::var("OT_REPLAY_N").map_or(5000, |v| v.parse().expect("N"));
    let cycles = 40;
    let server = blocking(|| {
        Server::start_with(&[
            "--hub-reconnect-buffer-bytes",
            "100000000",
            "--hub-reconnect-window-ms",
            "600000",
        ])
    });
    let cast = blocking(Cast::new);
    // `full` keeps everything unacked (its completion and N events); `empty` never had a message.
    let (full, full_id) = connect_json(&server, &cast, JSON_V2).await;
    let empty_id = negotiate_stateful(server.port, &cast.staff_token).await;
    let empty = open(server.port, &empty_id, &cast.staff_token, JSON_V2).await;
    drop((full, empty));
    wait_parked(&server, 2.0).await;
    blocking(|| place_many(&server, &cast, n, 4));
    for _ in 0..400 {
        if blocking(|| metric(&server, "ordertrack_events_dispatched_total")) >= n as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut with_n, mut with_0) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        for (id, records, sink) in [(&full_id, n + 2, &mut with_n), (&empty_id, 1, &mut with_0)] {
            let before = cpu_ticks(&server);
            for _ in 0..cycles {
                reattach_and_read(server.port, id, &cast.staff_token, records).await;
            }
            let ms = (cpu_ticks(&server) - before) as f64 * 10.0 / cycles as f64;
            sink.push(ms);
        }
    }
    let (a, b) = (median(with_n.clone()), median(with_0.clone()));
    println!(
        "replay: {n} buffered messages, {cycles} reconnects per round, 3 alternating rounds\n\
         server CPU per reconnect: {a:.2} ms with {n} replayed ({with_n:?}), {b:.2} ms with none ({with_0:?})\n\
         replay cost: {:.2} ms per reconnect, {:.2} µs per replayed message",
        a - b,
        (a - b) * 1000.0 / n as f64
    );
}

/// Opens `count` subscribed connections, stateful (negotiated, handshake v2, completion acked)
/// or not, and returns them (held open by the caller).
async fn open_idle(server: &Server, cast: &Cast, count: usize, stateful: bool) -> Vec<JsonHub> {
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        let (id, handshake) = if stateful {
            (
                negotiate_stateful(server.port, &cast.staff_token).await,
                JSON_V2,
            )
        } else {
            (
                negotiate_token(server.port, HUB, &cast.staff_token).await,
                JSON_HANDSHAKE,
            )
        };
        let mut hub = open(server.port, &id, &cast.staff_token, handshake).await;
        hub.subscribe_restaurant(cast.restaurant).await;
        if stateful {
            hub.send(&json!({"type": 8, "sequenceId": 1})).await;
        }
        held.push(hub);
    }
    held
}

#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn measure_idle_memory_with_and_without_the_buffer() {
    let count: usize = std::env::var("OT_IDLE_C").map_or(2000, |v| v.parse().expect("C"));
    let caps = [
        "--hub-max-connections-per-user",
        "1000000",
        "--hub-max-subscriptions-per-user",
        "1000000",
    ];
    let cast = blocking(Cast::new);
    let (mut plain, mut stateful) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        for (is_stateful, sink) in [(false, &mut plain), (true, &mut stateful)] {
            let server = blocking(|| Server::start_with(&caps));
            let before = rss_kib(&server);
            let held = open_idle(&server, &cast, count, is_stateful).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let after = rss_kib(&server);
            sink.push((after - before) as f64 * 1024.0 / count as f64);
            drop(held);
        }
    }
    println!(
        "idle subscribed connections: {count} per server, 3 alternating rounds\n\
         server RSS per connection: {:.0} B without stateful reconnect ({plain:?}), {:.0} B with it ({stateful:?})",
        median(plain.clone()),
        median(stateful.clone())
    );
}
