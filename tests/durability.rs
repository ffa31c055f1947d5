//! Durability and lifecycle (contract sections 4 and 7): every acknowledged write survives a clean
//! stop and a SIGKILL; SIGTERM exits 0; idempotency keys and order numbers survive restarts.

mod common;
use common::*;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use uuid::Uuid;

fn status(server: &Server, cast: &Cast, id: Uuid) -> Value {
    let (st, v) = get_json(
        server,
        &cast.admin_token,
        &format!("/api/v1/orders/{id}/status"),
    );
    assert_eq!(st, 200, "order {id} is gone: {v}");
    v
}

/// Places orders and moves them to a spread of statuses; returns id → (status, version).
fn populate(server: &Server, cast: &Cast) -> HashMap<Uuid, (String, u64)> {
    let mut acked = HashMap::new();
    let statuses = [
        "AwaitingPayment",
        "Placed",
        "Accepted",
        "Preparing",
        "ReadyForDelivery",
        "Delivered",
        "Cancelled",
        "Rejected",
    ];
    for (i, st) in statuses.iter().cycle().take(24).enumerate() {
        let id = order_in(server, cast, st);
        let v = status(server, cast, id);
        acked.insert(id, (st.to_string(), v["version"].as_u64().unwrap()));
        if i % 5 == 0 && *st == "AwaitingPayment" {
            let (code, v) = act(server, &cast.service_token, id, "payment-succeeded", None);
            assert_eq!(code, 200);
            acked.insert(id, ("Placed".into(), v["version"].as_u64().unwrap()));
        }
    }
    acked
}

fn check_all(server: &Server, cast: &Cast, acked: &HashMap<Uuid, (String, u64)>) {
    for (id, (st, version)) in acked {
        let v = status(server, cast, *id);
        assert_eq!(v["status"], st.as_str(), "{id}");
        assert_eq!(v["version"].as_u64(), Some(*version), "{id}");
    }
    let (_, v) = get_json(
        server,
        &cast.customer_token,
        "/api/v1/orders/my?pageSize=100",
    );
    assert_eq!(v["totalCount"].as_u64(), Some(acked.len() as u64));
}

#[test]
fn sigterm_exits_zero_and_a_restart_keeps_every_order() {
    let mut server = Server::start();
    let cast = Cast::new();
    let acked = populate(&server, &cast);
    let numbers: HashSet<String> = acked
        .keys()
        .map(|id| {
            get_json(&server, &cast.admin_token, &format!("/api/v1/orders/{id}")).1["order"]
                ["orderNumber"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let details_before: HashMap<Uuid, Value> = acked
        .keys()
        .map(|id| {
            (
                *id,
                get_json(&server, &cast.admin_token, &format!("/api/v1/orders/{id}")).1,
            )
        })
        .collect();
    assert_eq!(
        server.terminate(),
        Some(0),
        "SIGTERM must exit 0; log:\n{}",
        server.log_text()
    );
    server.restart();
    check_all(&server, &cast, &acked);
    // The full details are byte-for-byte what they were.
    for (id, before) in &details_before {
        assert_eq!(
            &get_json(&server, &cast.admin_token, &format!("/api/v1/orders/{id}")).1,
            before,
            "{id}"
        );
    }
    // Work continues: versions go on from where they were, order numbers stay unique.
    let (id, (_, version)) = acked
        .iter()
        .find(|(_, (st, _))| st == "Placed")
        .expect("a placed order");
    let (st, v) = act(&server, &cast.staff_token, *id, "accept", Some(eta()));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["version"].as_u64(), Some(version + 1));
    let r = place_body(&server, &cast, &cast.order_body("CashOnDelivery"));
    let number = r.json()["order"]["orderNumber"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !numbers.contains(&number),
        "order number {number} reused after restart"
    );
    assert_eq!(server.terminate(), Some(0));
}

#[test]
fn sigkill_under_concurrent_writes_loses_no_acknowledged_write() {
    let mut server = Server::start();
    let cast = Cast::new();
    // id → highest acknowledged version (and its status).
    let acked: Mutex<HashMap<Uuid, (u64, String)>> = Mutex::new(HashMap::new());
    let stop = AtomicBool::new(false);
    let plan = ["accept", "preparing", "ready", "delivered"];
    let base = server.base.clone();
    let url = |path: &str| format!("{base}{path}");
    let pid = server.pid();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let c = client();
                while !stop.load(Ordering::Relaxed) {
                    let r = c
                        .post(url("/api/v1/orders"))
                        .bearer_auth(&cast.service_token)
                        .json(&cast.order_body("CashOnDelivery"))
                        .send();
                    let Ok(r) = r else { return };
                    if r.status() != 201 {
                        return;
                    }
                    let Ok(v) = r.json::<Value>() else { return };
                    let id: Uuid = v["order"]["orderId"].as_str().unwrap().parse().unwrap();
                    acked.lock().unwrap().insert(id, (1, "Placed".into()));
                    for action in plan {
                        let mut req = c
                            .post(url(&format!("/api/v1/orders/{id}/{action}")))
                            .bearer_auth(&cast.staff_token);
                        if action == "accept" {
                            req = req.json(&eta());
                        }
                        let Ok(r) = req.send() else { return };
                        if r.status() != 200 {
                            return;
                        }
                        let Ok(v) = r.json::<Value>() else { return };
                        let version = v["version"].as_u64().unwrap();
                        acked
                            .lock()
                            .unwrap()
                            .insert(id, (version, v["status"].as_str().unwrap().to_string()));
                    }
                }
            });
        }
        // Let the writers run, then pull the plug while they are mid-flight.
        let deadline = Instant::now() + Duration::from_secs(10);
        while acked.lock().unwrap().len() < 40 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        stop.store(true, Ordering::Relaxed);
    });
    server.kill9(); // reaps the killed process
    let acked = acked.into_inner().unwrap();
    let writes: u64 = acked.values().map(|(v, _)| *v).sum();
    eprintln!(
        "{} orders, {writes} acknowledged writes before SIGKILL",
        acked.len()
    );
    assert!(
        acked.len() >= 20,
        "too few writes acknowledged before the kill: {}",
        acked.len()
    );
    server.restart();
    let mut lost = Vec::new();
    for (id, (version, st)) in &acked {
        let (code, v) = get_json(
            &server,
            &cast.admin_token,
            &format!("/api/v1/orders/{id}/status"),
        );
        let got = v["version"].as_u64().unwrap_or(0);
        if code != 200 || got < *version {
            lost.push(format!(
                "{id}: acknowledged v{version} {st}, after restart {code} {v}"
            ));
        } else if got == *version && v["status"] != st.as_str() {
            lost.push(format!("{id}: v{version} was {st}, now {}", v["status"]));
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost:\n{}",
        lost.len(),
        lost.join("\n")
    );
    // The history agrees with the orders (counters were committed with them).
    let (_, v) = get_json(
        &server,
        &cast.customer_token,
        "/api/v1/orders/my?pageSize=1",
    );
    let total = v["totalCount"].as_u64().unwrap();
    assert!(
        total >= acked.len() as u64,
        "history counts {total} < {} acknowledged",
        acked.len()
    );
    let mut listed = 0;
    for page in 1..=total.div_ceil(100) {
        let (_, v) = get_json(
            &server,
            &cast.customer_token,
            &format!("/api/v1/orders/my?pageSize=100&pageNumber={page}"),
        );
        listed += v["items"].as_array().unwrap().len() as u64;
    }
    assert_eq!(
        listed, total,
        "history pages hold exactly totalCount orders"
    );
    // And the restarted server takes writes.
    let id = place(&server, &cast, "CashOnDelivery");
    assert_eq!(
        act(&server, &cast.customer_token, id, "cancel", None).0,
        200
    );
    assert_eq!(server.terminate(), Some(0));
}

#[test]
fn idempotency_keys_survive_a_restart_and_a_kill() {
    let mut server = Server::start();
    let cast = Cast::new();
    let body = serde_json::to_vec(&cast.order_body("Card")).unwrap();
    let key = [("idempotency-key", "durable-key-1")];
    let first = post_raw(
        &server,
        &cast.service_token,
        "/api/v1/orders",
        Some("application/json"),
        body.clone(),
        &key,
    );
    assert_eq!(first.status, 201, "{first:?}");
    for stop in ["terminate", "kill9"] {
        if stop == "terminate" {
            assert_eq!(server.terminate(), Some(0));
        } else {
            server.kill9();
        }
        server.restart();
        let again = post_raw(
            &server,
            &cast.service_token,
            "/api/v1/orders",
            Some("application/json"),
            body.clone(),
            &key,
        );
        assert_eq!(again.status, 201, "after {stop}: {again:?}");
        assert_eq!(
            again.text, first.text,
            "after {stop}: the first answer, replayed"
        );
        assert_eq!(
            again.header("idempotent-replayed").as_deref(),
            Some("true"),
            "after {stop}"
        );
        let mut other = cast.order_body("Card");
        other["tip"] = json!(9.99);
        let r = post_json(&server, &cast.service_token, "/api/v1/orders", &other, &key);
        assert_eq!(r.status, 409, "after {stop}: {r:?}");
        assert_eq!(problem(&r).1, "Idempotency.KeyReused");
        let (_, v) = get_json(&server, &cast.customer_token, "/api/v1/orders/my");
        assert_eq!(v["totalCount"], 1, "after {stop}");
    }
}

#[test]
fn sigterm_with_an_idle_keepalive_connection_exits_zero_promptly() {
    let mut server = Server::start();
    let cast = Cast::new();
    let id = place(&server, &cast, "CashOnDelivery");
    // An idle keep-alive connection that already had its answer.
    let mut idle = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    idle.write_all(format!("GET /api/v1/orders/{id}/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n", cast.customer_token).as_bytes()).unwrap();
    let mut buf = [0u8; 4096];
    let n = idle.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    assert_eq!(server.terminate(), Some(0), "log:\n{}", server.log_text());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
    // The idle connection was closed, and the data is intact.
    assert!(matches!(idle.read(&mut buf), Ok(0) | Err(_)));
    server.restart();
    let v = status(&server, &cast, id);
    assert_eq!(
        (v["status"].as_str(), v["version"].as_u64()),
        (Some("Placed"), Some(1))
    );
}

/// SERVER BUG (src/http/server.rs `serve_one` + src/run.rs shutdown): a connection that has not
/// sent its first byte keeps its `Arc<App>` (and with it a `WriterHandle`) alive inside the
/// 10 s first-byte wait, which shutdown neither cancels nor drains; `serve_async` then blocks
/// joining the writer thread until that wait expires. One silent client delays every SIGTERM by
/// ~10 s although nothing is in flight (contract section 7: stop accepting, finish in-flight
/// requests, exit).
#[test]
fn sigterm_is_not_delayed_by_a_connection_that_never_sent_a_byte() {
    let mut server = Server::start();
    let cast = Cast::new();
    let id = place(&server, &cast, "CashOnDelivery");
    let _silent = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    assert_eq!(server.terminate(), Some(0), "log:\n{}", server.log_text());
    let took = started.elapsed();
    server.restart();
    assert_eq!(status(&server, &cast, id)["version"], 1);
    assert!(
        took < Duration::from_secs(5),
        "shutdown waited {took:?} for a silent connection"
    );
}
