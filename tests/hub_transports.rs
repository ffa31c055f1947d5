//! The hub's Server-Sent Events and long-polling transports (issue 12 §1) at the raw protocol
//! edges, through the real binary: the immediate first poll, poll/send/DELETE, 409 for a second
//! poll while one waits, 204 once the connection is closed, a client that stops polling expires
//! and frees its slot and subscriptions, a connection ends when its token expires, another
//! user's token is refused on someone else's connection, the per-connection queue stays
//! bounded, MessagePack travels binary over long polling (and is refused on SSE), SSE frames
//! events as `data:` lines, and no token reaches the log. The official client over both transports is in `scripts/interop/run.mjs` (`t…`).

mod common;
use common::hub::{mp_invocation, mp_messages, JSON_HANDSHAKE, MSGPACK_HANDSHAKE, RS};
use common::*;
use serde_json::{json, Value};
use std::io::Read;
use std::thread;
use std::time::{Duration, Instant};
use uuid::Uuid;

const HUB: &str = "customer-orders";

/// Negotiates (version 1) on `hub` and returns the connection token.
fn negotiate(server: &Server, hub: &str, token: &str) -> String {
    let r = client()
        .post(server.url(&format!("/hubs/{hub}/negotiate?negotiateVersion=1")))
        .bearer_auth(token)
        .send()
        .expect("negotiate");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().expect("json");
    let names: Vec<&str> = v["availableTransports"]
        .as_array()
        .expect("transports")
        .iter()
        .filter_map(|t| t["transport"].as_str())
        .collect();
    assert_eq!(names, ["WebSockets", "ServerSentEvents", "LongPolling"]);
    v["connectionToken"].as_str().expect("token").to_string()
}

/// One request on the connection `id`: (status, content-type, body).
fn call(
    server: &Server,
    method: &str,
    id: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let url = server.url(&format!("/hubs/{HUB}?id={id}"));
    let c = client();
    let mut req = match method {
        "GET" => c.get(url),
        "POST" => c.post(url).body(body.to_vec()),
        "DELETE" => c.delete(url),
        _ => panic!("method"),
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().expect("request");
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, ctype, r.bytes().expect("body").to_vec())
}

/// A long-polling connection of one user.
struct Lp<'a> {
    server: &'a Server,
    id: String,
    token: String,
}

impl<'a> Lp<'a> {
    /// Negotiates and opens (the first poll answers 200 at once, empty).
    fn open(server: &'a Server, token: &str) -> Lp<'a> {
        let id = negotiate(server, HUB, token);
        let started = Instant::now();
        let (status, _, body) = call(server, "GET", &id, Some(token), b"");
        assert_eq!(status, 200);
        assert!(body.is_empty());
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the first poll waits"
        );
        Lp {
            server,
            id,
            token: token.to_string(),
        }
    }

    fn poll(&self) -> (u16, String, Vec<u8>) {
        call(self.server, "GET", &self.id, Some(&self.token), b"")
    }

    fn send(&self, body: &[u8]) -> u16 {
        call(self.server, "POST", &self.id, Some(&self.token), body).0
    }

    /// Polls until the JSON records gathered satisfy `done` (pings skipped); returns them.
    fn records_until(&self, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = Vec::new();
        while Instant::now() < deadline {
            let (status, _, body) = self.poll();
            assert_eq!(status, 200, "poll: {}", String::from_utf8_lossy(&body));
            for rec in String::from_utf8_lossy(&body).split(RS) {
                if rec.is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_str(rec).expect("record");
                if v["type"] != 6 {
                    got.push(v);
                }
            }
            if done(&got) {
                return got;
            }
        }
        panic!("not all records arrived: {got:?}");
    }

    /// The handshake in a POST and its `{}` answer in a poll.
    fn handshake(&self) {
        assert_eq!(self.send(JSON_HANDSHAKE.as_bytes()), 200);
        let (status, ctype, body) = self.poll();
        assert_eq!(status, 200);
        assert!(ctype.starts_with("text/plain"), "{ctype}");
        assert_eq!(body, b"{}\x1e");
    }

    fn invoke(&self, id: &str, target: &str, arg: &str) -> Value {
        let msg = json!({"type": 1, "invocationId": id, "target": target, "arguments": [arg]});
        assert_eq!(self.send(format!("{msg}{RS}").as_bytes()), 200);
        let recs = self.records_until(|r| r.iter().any(|v| v["invocationId"] == id));
        recs.into_iter()
            .find(|v| v["invocationId"] == id)
            .expect("completion")
    }
}

fn hub_gauge(server: &Server, name: &str) -> f64 {
    metric(server, &format!("ordertrack_hub_{name}"))
}

#[test]
fn long_polling_carries_the_whole_lifecycle_and_delete_ends_it() {
    let server = Server::start_with(&["--hub-long-poll-timeout-ms", "1500"]);
    let cast = Cast::new();
    let order = place(&server, &cast, "CashOnDelivery");
    let lp = Lp::open(&server, &cast.customer_token);
    lp.handshake();
    let done = lp.invoke("1", "SubscribeToOrder", &order.to_string());
    assert_eq!(done["result"]["status"], "Placed", "{done}");
    let refused = lp.invoke("2", "SubscribeToOrder", &Uuid::new_v4().to_string());
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or("")
            .contains("not found"),
        "{refused}"
    );
    // Nothing to say: the poll waits for the poll timeout, then answers 200 empty.
    let started = Instant::now();
    let (status, _, body) = lp.poll();
    assert_eq!((status, body.len()), (200, 0));
    assert!(started.elapsed() >= Duration::from_millis(1000));
    // An event committed while no poll waits is kept for the next one.
    let (s, _) = act(&server, &cast.staff_token, order, "accept", Some(eta()));
    assert_eq!(s, 200);
    let events = lp.records_until(|r| !r.is_empty());
    assert_eq!(events[0]["type"], 1);
    assert_eq!(events[0]["target"], "ReceiveOrderStatusChanged");
    assert_eq!(events[0]["arguments"][0]["status"], "Accepted");
    assert_eq!(hub_gauge(&server, "connections"), 1.0);
    // DELETE ends it: 202, then the connection is gone and its slot given back.
    let (status, _, _) = call(&server, "DELETE", &lp.id, Some(&lp.token), b"");
    assert_eq!(status, 202);
    let deadline = Instant::now() + Duration::from_secs(5);
    while hub_gauge(&server, "connections") != 0.0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(hub_gauge(&server, "connections"), 0.0);
    assert_eq!(hub_gauge(&server, "subscriptions"), 0.0);
    let (status, _, _) = lp.poll();
    assert!(status == 204 || status == 404, "{status}");
    assert_eq!(lp.send(b"{\"type\":6}\x1e"), 404);
}

#[test]
fn a_second_poll_gets_409_and_the_waiting_one_is_answered_204_at_close() {
    let server = Server::start_with(&["--hub-long-poll-timeout-ms", "20000"]);
    let cast = Cast::new();
    let lp = Lp::open(&server, &cast.customer_token);
    lp.handshake();
    thread::scope(|s| {
        let first = s.spawn(|| lp.poll());
        thread::sleep(Duration::from_millis(500));
        let (status, _, _) = lp.poll();
        assert_eq!(status, 409, "one outstanding poll per connection");
        // The first poll is still the connection's: DELETE answers it 204.
        let started = Instant::now();
        let (status, _, _) = call(&server, "DELETE", &lp.id, Some(&lp.token), b"");
        assert_eq!(status, 202);
        let (status, _, body) = first.join().expect("first poll");
        assert_eq!((status, body.len()), (204, 0));
        assert!(started.elapsed() < Duration::from_secs(5));
    });
}

#[test]
fn a_client_that_stops_polling_expires_and_frees_its_slot_and_subscriptions() {
    let server = Server::start_with(&[
        "--hub-max-connections-per-user",
        "1",
        "--hub-disconnect-timeout-ms",
        "1000",
        "--hub-long-poll-timeout-ms",
        "300",
    ]);
    let cast = Cast::new();
    let order = place(&server, &cast, "CashOnDelivery");
    let lp = Lp::open(&server, &cast.customer_token);
    lp.handshake();
    lp.invoke("1", "SubscribeToOrder", &order.to_string());
    assert_eq!(hub_gauge(&server, "subscriptions"), 1.0);
    // The user's one slot is taken: a second connection is refused.
    let other = negotiate(&server, HUB, &cast.customer_token);
    let (status, _, _) = call(&server, "GET", &other, Some(&cast.customer_token), b"");
    assert_eq!(status, 429);
    let silent_before = metric(&server, "ordertrack_hub_refusals_total{reason=\"silent\"}");
    // Stop polling: after the disconnect timeout it is gone, slot and subscription too.
    let deadline = Instant::now() + Duration::from_secs(10);
    while hub_gauge(&server, "connections") != 0.0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(hub_gauge(&server, "connections"), 0.0);
    assert_eq!(hub_gauge(&server, "subscriptions"), 0.0);
    assert_eq!(
        metric(&server, "ordertrack_hub_refusals_total{reason=\"silent\"}"),
        silent_before + 1.0
    );
    let (status, _, _) = lp.poll();
    assert_eq!(status, 404, "an expired connection is forgotten");
    Lp::open(&server, &cast.customer_token).handshake();
}

#[test]
fn only_the_negotiating_user_may_use_a_connection() {
    let server = Server::start();
    let cast = Cast::new();
    let lp = Lp::open(&server, &cast.customer_token);
    lp.handshake();
    let before = metric(
        &server,
        "ordertrack_hub_refusals_total{reason=\"other_users_connection_token\"}",
    );
    for method in ["GET", "POST", "DELETE"] {
        let (status, _, _) = call(
            &server,
            method,
            &lp.id,
            Some(&cast.stranger_token),
            b"{\"type\":6}\x1e",
        );
        assert_eq!(status, 403, "{method} with another user's token");
        let (status, _, _) = call(&server, method, &lp.id, None, b"");
        assert_eq!(status, 401, "{method} without a token");
        let (status, _, _) = call(&server, method, "nope", Some(&lp.token), b"");
        assert_eq!(status, 404, "{method} on an unknown connection");
    }
    assert_eq!(
        metric(
            &server,
            "ordertrack_hub_refusals_total{reason=\"other_users_connection_token\"}"
        ),
        before + 3.0
    );
    // A stranger cannot open someone else's negotiated connection either.
    let fresh = negotiate(&server, HUB, &cast.customer_token);
    let (status, _, _) = call(&server, "GET", &fresh, Some(&cast.stranger_token), b"");
    assert_eq!(status, 403);
    // The owner's connection still works after all that.
    let r = client()
        .get(server.url(&format!("/hubs/{HUB}")))
        .bearer_auth(&cast.customer_token)
        .send()
        .expect("no id");
    assert_eq!(r.status(), 400, "an id is required");
    assert_eq!(lp.send(b"{\"type\":6}\x1e"), 200);
}

#[test]
fn a_long_polling_client_that_stops_reading_is_dropped_not_buffered() {
    let server = Server::start_with(&["--hub-queue-frames", "4"]);
    let cast = Cast::new();
    // The restaurant hub, as kitchen staff.
    let id = negotiate(&server, "restaurant-orders", &cast.staff_token);
    let url = |q: &str| server.url(&format!("/hubs/restaurant-orders?id={id}{q}"));
    let c = client();
    let get = || {
        let r = c
            .get(url(""))
            .bearer_auth(&cast.staff_token)
            .send()
            .expect("poll");
        (r.status().as_u16(), r.bytes().expect("body").to_vec())
    };
    assert_eq!(get().0, 200);
    let post = |b: &[u8]| {
        c.post(url(""))
            .bearer_auth(&cast.staff_token)
            .body(b.to_vec())
            .send()
            .expect("send")
            .status()
            .as_u16()
    };
    assert_eq!(post(JSON_HANDSHAKE.as_bytes()), 200);
    let sub = json!({"type": 1, "invocationId": "1", "target": "SubscribeToRestaurant", "arguments": [cast.restaurant.to_string()]});
    assert_eq!(post(format!("{sub}{RS}").as_bytes()), 200);
    let slow_before = metric(&server, "ordertrack_slow_consumer_closes_total");
    place_many(&server, &cast, 12, 1);
    assert!(metric(&server, "ordertrack_slow_consumer_closes_total") > slow_before);
    // The next poll gets the Close (with an error, reconnect allowed), then the end.
    let (status, body) = get();
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body).to_string();
    let close: Value = serde_json::from_str(text.trim_end_matches(RS)).expect("one record");
    assert_eq!(close["type"], 7, "{text}");
    assert_eq!(close["allowReconnect"], true);
    let (status, _) = get();
    assert!(status == 204 || status == 404, "{status}");
}

#[test]
fn messagepack_travels_binary_over_long_polling_and_is_refused_on_sse() {
    let server = Server::start();
    let cast = Cast::new();
    let order = place(&server, &cast, "CashOnDelivery");
    let lp = Lp::open(&server, &cast.customer_token);
    assert_eq!(lp.send(MSGPACK_HANDSHAKE.as_bytes()), 200);
    let (status, _, body) = lp.poll();
    assert_eq!((status, body.as_slice()), (200, b"{}\x1e".as_slice()));
    let framed = mp_invocation(Some("1"), "SubscribeToOrder", &[&order.to_string()]);
    assert_eq!(lp.send(&framed), 200);
    let (status, ctype, body) = lp.poll();
    assert_eq!(status, 200);
    assert_eq!(ctype, "application/octet-stream");
    let msgs = mp_messages(&body);
    let completion = msgs
        .iter()
        .find(|m| m.arr()[0].int() == 3)
        .expect("completion");
    assert_eq!(completion.arr()[2].str(), "1");
    assert_eq!(completion.arr()[4].get("status").str(), "Placed");
    // SSE carries text only.
    let id = negotiate(&server, HUB, &cast.customer_token);
    let mut sse = client()
        .get(server.url(&format!("/hubs/{HUB}?id={id}")))
        .bearer_auth(&cast.customer_token)
        .header("accept", "text/event-stream")
        .send()
        .expect("sse");
    assert_eq!(sse.status(), 200);
    let r = client()
        .post(server.url(&format!("/hubs/{HUB}?id={id}")))
        .bearer_auth(&cast.customer_token)
        .body(MSGPACK_HANDSHAKE)
        .send()
        .expect("send");
    assert_eq!(r.status(), 200);
    let mut text = String::new();
    sse.read_to_string(&mut text).expect("stream ends");
    assert!(
        text.contains("data: {\"error\":\"Cannot use the 'messagepack' protocol"),
        "{text}"
    );
}

#[test]
fn sse_streams_data_lines_with_a_query_token_that_never_reaches_the_log() {
    let server = Server::start_with(&["--hub-keepalive-ms", "500"]);
    let cast = Cast::new();
    let order = place(&server, &cast, "CashOnDelivery");
    let id = negotiate(&server, HUB, &cast.customer_token);
    // As a browser's EventSource: the token in the query, an Origin to answer with CORS.
    let mut sse = client()
        .get(server.url(&format!(
            "/hubs/{HUB}?id={id}&access_token={}",
            cast.customer_token
        )))
        .header("accept", "text/event-stream")
        .header("origin", "http://shop.test")
        .send()
        .expect("sse");
    assert_eq!(sse.status(), 200);
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    assert_eq!(
        sse.headers()["access-control-allow-origin"],
        "http://shop.test"
    );
    // A second stream for the same connection is refused.
    let second = client()
        .get(server.url(&format!("/hubs/{HUB}?id={id}")))
        .bearer_auth(&cast.customer_token)
        .header("accept", "text/event-stream")
        .send()
        .expect("second");
    assert_eq!(second.status(), 409);
    let post = |b: String| {
        client()
            .post(server.url(&format!("/hubs/{HUB}?id={id}")))
            .bearer_auth(&cast.customer_token)
            .body(b)
            .send()
            .expect("send")
            .status()
    };
    let sub = json!({"type": 1, "invocationId": "1", "target": "SubscribeToOrder", "arguments": [order.to_string()]});
    assert_eq!(post(format!("{JSON_HANDSHAKE}{sub}{RS}")), 200);
    let (s, _) = act(&server, &cast.customer_token, order, "cancel", None);
    assert_eq!(s, 200);
    // Read events until the cancellation arrives: every event is `data:` lines + a blank line.
    let mut stream = String::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(20);
    while !stream.contains("\"status\":\"Cancelled\"") && Instant::now() < deadline {
        let n = sse.read(&mut buf).expect("read");
        assert!(n > 0, "stream ended early: {stream}");
        stream.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(stream.starts_with(":\r\n"), "{stream}");
    let events: Vec<&str> = stream[3..]
        .split("\r\n\r\n")
        .filter(|e| !e.is_empty())
        .collect();
    let payloads: Vec<String> = events
        .iter()
        .map(|e| {
            e.split("\r\n")
                .map(|l| l.strip_prefix("data: ").expect("a data line"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    let all = payloads.concat();
    assert!(all.starts_with("{}\u{1e}"), "handshake first: {all}");
    assert!(all.contains("\"invocationId\":\"1\""), "{all}");
    assert!(all.contains("ReceiveOrderStatusChanged"), "{all}");
    drop(sse);
    // The stream ending ends the connection.
    let deadline = Instant::now() + Duration::from_secs(5);
    while hub_gauge(&server, "connections") != 0.0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(hub_gauge(&server, "connections"), 0.0);
    assert!(!server.log_text().contains(&cast.customer_token));
}

#[test]
fn a_long_polling_connection_ends_when_its_token_expires() {
    let server = Server::start_with(&["--hub-long-poll-timeout-ms", "20000"]);
    let short = token_ttl(Uuid::new_v4(), &[], &[], "3s");
    let lp = Lp::open(&server, &short);
    lp.handshake();
    // The waiting poll is answered with a Close that says why and allows a reconnect (with a
    // new token), then the connection is over.
    let started = Instant::now();
    let (status, _, body) = lp.poll();
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_secs(10));
    let text = String::from_utf8_lossy(&body).to_string();
    let close = text
        .split(RS)
        .filter(|r| !r.is_empty())
        .map(|r| serde_json::from_str::<Value>(r).expect("record"))
        .find(|v| v["type"] == 7)
        .unwrap_or_else(|| panic!("no Close: {text}"));
    assert!(
        close["error"].as_str().unwrap_or("").contains("expired"),
        "{close}"
    );
    assert_eq!(close["allowReconnect"], true);
    let (status, _, _) = lp.poll();
    assert!(status == 204 || status == 404, "{status}");
}
