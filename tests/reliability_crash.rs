//! Reliability under crashes and restarts (issue 5): repeated SIGKILL under write load with an
//! exact check of the outbox, SIGTERM finishing in-flight work inside 10 s, a clean close that
//! needs no repair, and `lastUpdateTimestamp` never going backwards when the clock does.
//!
//! The kill cycles are short here; `OT_KILL_CYCLES=20 cargo test --release --test
//! reliability_crash` (or `scripts/reliability-long.sh`) runs the long version.

mod common;
use common::*;
use ordertrack::testing::{wal, Store, StoreSettings};
use ordertrack::testing::{EventKind, Order, OrderEvent};
use ordertrack::testing::{CLOCK, META, ORDERS};
use rand::Rng;
use redb::{ReadableDatabase, ReadableTable};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The actions a writer takes after placing, in order.
const PLAN: [&str; 4] = ["accept", "preparing", "ready", "delivered"];

/// What a writer was told: order id → (payment method, highest acknowledged version).
type Acked = Mutex<HashMap<Uuid, (&'static str, u64)>>;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One writer: places orders (cash, or card then paid) and drives each to Delivered, recording
/// every 2xx answer. Any failed exchange abandons the order (its fate is unknown to the writer)
/// and starts a new one once the server answers again.
fn writer_loop(base: &str, cast: &Cast, acked: &Acked, writes: &AtomicU64, stop: &AtomicBool) {
    let c = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let payment: &'static str = if n.is_multiple_of(4) {
            "Card"
        } else {
            "CashOnDelivery"
        };
        let r = c
            .post(format!("{base}/api/v1/orders"))
            .bearer_auth(&cast.service_token)
            .json(&cast.order_body(payment))
            .send();
        let Some(v) = ok_json(r, 201) else {
            std::thread::sleep(Duration::from_millis(30));
            continue;
        };
        let Some(id) = v["order"]["orderId"].as_str().and_then(|s| s.parse().ok()) else {
            panic!("201 without an order id: {v}");
        };
        let mut version = v["order"]["version"].as_u64().unwrap_or(0);
        assert_eq!(version, 1, "a new order starts at version 1: {v}");
        acked.lock().unwrap().insert(id, (payment, version));
        writes.fetch_add(1, Ordering::Relaxed);
        let mut steps: Vec<(&str, &str)> = Vec::new();
        if payment == "Card" {
            steps.push(("payment-succeeded", cast.service_token.as_str()));
        }
        steps.extend(PLAN.iter().map(|a| (*a, cast.staff_token.as_str())));
        for (action, token) in steps {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let mut req = c
                .post(format!("{base}/api/v1/orders/{id}/{action}"))
                .bearer_auth(token);
            if action == "accept" {
                req = req.json(&eta());
            }
            let Some(v) = ok_json(req.send(), 200) else {
                break;
            };
            let got = v["version"].as_u64().unwrap_or(0);
            assert_eq!(got, version + 1, "{action} moves the version by one: {v}");
            version = got;
            acked.lock().unwrap().insert(id, (payment, version));
            writes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The JSON of a complete answer with the wanted status, `None` for anything else (connection
/// refused or reset by the kill, 503 while the store closes).
fn ok_json(r: reqwest::Result<reqwest::blocking::Response>, want: u16) -> Option<Value> {
    let r = r.ok()?;
    if r.status().as_u16() != want {
        assert!(
            r.status().is_server_error(),
            "unexpected refusal {}: {:?}",
            r.status(),
            r.text()
        );
        return None;
    }
    r.json().ok()
}

/// The (version, kind) sequence the outbox must hold for an order at `version`.
fn expected_events(payment: &str, version: u64) -> Vec<(u64, EventKind)> {
    let mut out = Vec::new();
    for v in 1..=version {
        match (payment, v) {
            ("Card", 1) => {}
            ("Card", 2) => {
                out.push((2, EventKind::PaymentSucceeded));
                out.push((2, EventKind::OrderPlaced));
            }
            (_, 1) => out.push((1, EventKind::OrderPlaced)),
            _ => out.push((v, EventKind::StatusChanged)),
        }
    }
    out
}

fn open_raw(path: &Path) -> redb::Database {
    redb::Database::builder()
        .set_cache_size(16 << 20)
        .open(path)
        .expect("open database")
}

/// Checks the file after the last kill: every acknowledged write is there with at least its
/// acknowledged version; the outbox is gap-free and holds, for every order, exactly the events
/// of the changes that committed (none lost, none duplicated, none for uncommitted changes).
fn check_file(dir: &Path, acked: &HashMap<Uuid, (&'static str, u64)>) -> (usize, usize) {
    // Opening the store applies the commit log's writes that the file itself lacks (the last
    // checkpoint may be seconds old); then the file alone must hold everything.
    drop(Store::open(dir, &StoreSettings::default()).expect("store opens"));
    let path = dir.join("orders.redb");
    let orders: HashMap<Uuid, Order> = {
        let db = open_raw(&path);
        let txn = db.begin_read().expect("read txn");
        let t = txn.open_table(ORDERS).expect("orders table");
        let mut m = HashMap::new();
        for entry in t.iter().expect("iter") {
            let (_, v) = entry.expect("entry");
            let o: Order = rmp_serde::from_slice(v.value()).expect("order decodes");
            m.insert(o.id, o);
        }
        m
    };
    let mut lost = Vec::new();
    for (id, (payment, version)) in acked {
        match orders.get(id) {
            None => lost.push(format!("{id} ({payment}) acknowledged v{version}, missing")),
            Some(o) if o.version < *version => lost.push(format!(
                "{id} ({payment}) acknowledged v{version}, file has v{}",
                o.version
            )),
            Some(_) => {}
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost:\n{}",
        lost.len(),
        lost.join("\n")
    );

    let store = Store::open(dir, &StoreSettings::default()).expect("store opens");
    let last = store.last_event_seq().expect("last seq");
    let events: Vec<OrderEvent> = store.events_after(0, usize::MAX).expect("outbox");
    assert_eq!(events.len() as u64, last, "outbox length = last sequence");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "outbox sequence has a gap or repeat");
    }
    let mut ids = HashSet::new();
    let mut per_order: HashMap<Uuid, Vec<(u64, EventKind)>> = HashMap::new();
    for e in &events {
        let eid = e.dto.event_id.expect("an outbox event has an eventId");
        assert!(ids.insert(eid), "eventId {eid} repeated");
        per_order
            .entry(e.order_id())
            .or_default()
            .push((e.dto.version, e.kind));
    }
    let mut bad = Vec::new();
    for o in orders.values() {
        let payment = if o.payment_method == "Card" {
            "Card"
        } else {
            "CashOnDelivery"
        };
        let want = expected_events(payment, o.version);
        let got = per_order.remove(&o.id).unwrap_or_default();
        if got != want {
            bad.push(format!(
                "{} at v{} ({:?}): events {got:?}, expected {want:?}",
                o.id, o.version, o.status
            ));
        }
    }
    assert!(
        per_order.is_empty(),
        "events for orders that do not exist: {per_order:?}"
    );
    assert!(
        bad.is_empty(),
        "{} orders with a wrong outbox:\n{}",
        bad.len(),
        bad.join("\n")
    );
    (orders.len(), events.len())
}

#[test]
fn kill9_cycles_lose_no_acknowledged_write_and_keep_the_outbox_exact() {
    let cycles = env_usize("OT_KILL_CYCLES", 5);
    let writers = env_usize("OT_KILL_WRITERS", 4);
    // A 1 MiB commit log checkpoints every few hundred writes, so kills also land right
    // before, during and after checkpoints and passes that start the file over.
    let mut server = Server::start_with(&["--commit-log-mb", "1"]);
    let cast = Cast::new();
    let acked: Acked = Mutex::new(HashMap::new());
    let writes = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let base = server.base.clone();
    let mut rng = rand::rng();
    let started = Instant::now();
    let mut verified: HashMap<Uuid, u64> = HashMap::new();
    let (mut in_log, mut cycles_with_log, mut checkpoints) = (0usize, 0usize, 0u64);
    std::thread::scope(|s| {
        for _ in 0..writers {
            s.spawn(|| writer_loop(&base, &cast, &acked, &writes, &stop));
        }
        for cycle in 0..cycles {
            // Let the writers run for a random while, then pull the plug mid-flight.
            let before = writes.load(Ordering::Relaxed);
            let run = Duration::from_millis(rng.random_range(300..1500));
            let deadline = Instant::now() + run;
            while Instant::now() < deadline || writes.load(Ordering::Relaxed) < before + 10 {
                std::thread::sleep(Duration::from_millis(5));
                assert!(
                    Instant::now() < deadline + Duration::from_secs(20),
                    "no progress in cycle {cycle}; log:\n{}",
                    server.log_text()
                );
            }
            // If no kill has followed a checkpoint yet, the last cycle runs until one happens
            // (5 s after a pass's first record at the latest), so a slow, busy machine still
            // puts a checkpoint between the kills.
            if cycle + 1 == cycles && checkpoints == 0 {
                let until = Instant::now() + Duration::from_secs(30);
                loop {
                    let made = metric(&server, "ordertrack_writer_checkpoint_seconds_count");
                    if made >= 1.0 {
                        break;
                    }
                    assert!(
                        Instant::now() < until,
                        "no checkpoint within 30 s of writes"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            let made = metric(&server, "ordertrack_writer_checkpoint_seconds_count");
            checkpoints += if made.is_nan() { 0 } else { made as u64 };
            let pid = server.pid();
            let killed = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .expect("kill");
            assert!(killed.success());
            server.kill9(); // reaps it
            let pending = writes_only_in_the_log(&server.dir);
            in_log += pending;
            cycles_with_log += usize::from(pending > 0);
            std::thread::sleep(Duration::from_millis(rng.random_range(0..200)));
            server.restart();
            // What was acknowledged since the last check is readable right after the restart.
            let fresh: Vec<(Uuid, u64)> = acked
                .lock()
                .unwrap()
                .iter()
                .filter(|(id, (_, v))| verified.get(*id) != Some(v))
                .map(|(id, (_, v))| (*id, *v))
                .collect();
            let c = client();
            for (id, version) in fresh {
                let r = c
                    .get(server.url(&format!("/api/v1/orders/{id}/status")))
                    .bearer_auth(&cast.admin_token)
                    .send()
                    .expect("status after restart");
                assert_eq!(r.status(), 200, "{id} missing after restart {cycle}");
                let v: Value = r.json().expect("json");
                assert!(
                    v["version"].as_u64().unwrap_or(0) >= version,
                    "{id}: acknowledged v{version}, after restart {v}"
                );
                verified.insert(id, version);
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    server.kill9();
    let acked = acked.into_inner().unwrap();
    let (orders, events) = check_file(&server.dir, &acked);
    let total = writes.load(Ordering::Relaxed);
    eprintln!(
        "RESULT kill -9: {cycles} cycles, {total} acknowledged writes on {} orders, 0 lost; \
         {orders} orders and {events} outbox events checked exactly, in {:?}; \
         {cycles_with_log} kills left {in_log} batches only in the commit log; \
         {checkpoints} checkpoints before the kills",
        acked.len(),
        started.elapsed()
    );
    assert!(checkpoints > 0, "no checkpoint happened between the kills");
    // The kills must have exercised the log's replay, not only redb's own durable commits.
    assert!(cycles_with_log > 0, "no kill left writes in the commit log");
    assert!(total >= (cycles * 10) as u64, "too few writes: {total}");
    // The server still works on the same file.
    server.restart();
    place(&server, &cast, "CashOnDelivery");
    assert_eq!(server.terminate(), Some(0));
}

/// How many committed batches the killed server left only in the commit log (records newer
/// than the last checkpoint redb holds), before anything reopens the directory.
fn writes_only_in_the_log(dir: &Path) -> usize {
    let db = open_raw(&dir.join("orders.redb"));
    let have = wal::db_log_seq(&db).expect("log_seq");
    let id = wal::db_id(&db).expect("db_id");
    drop(db);
    let mut log = wal::CommitLog::open(&dir.join(wal::LOG_FILE), 0, id).expect("open log");
    let records = log.records().expect("read log");
    records.iter().filter(|(seq, _)| *seq > have).count()
}

/// Opens the file with a repair callback; true when redb had to repair it (unclean close).
fn needed_repair(dir: &Path) -> bool {
    let repaired = Arc::new(AtomicBool::new(false));
    let flag = repaired.clone();
    let db = redb::Database::builder()
        .set_repair_callback(move |_| flag.store(true, Ordering::SeqCst))
        .open(dir.join("orders.redb"))
        .expect("open database");
    drop(db);
    repaired.load(Ordering::SeqCst)
}

#[test]
fn sigterm_finishes_in_flight_work_closes_the_file_cleanly_and_exits_within_10s() {
    let mut server = Server::start();
    let cast = Cast::new();
    let body = serde_json::to_vec(&cast.order_body("CashOnDelivery")).unwrap();
    // An in-flight request: headers and half of the body sent before the signal.
    let mut slow = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let head = format!(
        "POST /api/v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        cast.service_token,
        body.len()
    );
    slow.write_all(head.as_bytes()).unwrap();
    slow.write_all(&body[..body.len() / 2]).unwrap();
    // Writers keep the store busy while the signal arrives.
    let acked: Acked = Mutex::new(HashMap::new());
    let writes = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let base = server.base.clone();
    let pid = server.pid();
    let mut took = Duration::ZERO;
    let mut code = None;
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| writer_loop(&base, &cast, &acked, &writes, &stop));
        }
        while writes.load(Ordering::Relaxed) < 20 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let t0 = Instant::now();
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill");
        // New connections are refused soon after the signal.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let refused = TcpStream::connect(("127.0.0.1", server.port)).is_err();
            if refused {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "still accepting connections 3 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // The in-flight request completes and is answered.
        std::thread::sleep(Duration::from_millis(200));
        slow.write_all(&body[body.len() / 2..]).unwrap();
        let mut answer = Vec::new();
        let _ = slow.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer).to_string();
        assert!(
            answer.starts_with("HTTP/1.1 201"),
            "the in-flight request was not finished: {answer:?}"
        );
        stop.store(true, Ordering::Relaxed);
        let child = server.child.as_mut().expect("child");
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                code = st.code();
                took = t0.elapsed();
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "still running 10 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    server.child = None;
    assert_eq!(code, Some(0), "exit code; log:\n{}", server.log_text());
    eprintln!("RESULT SIGTERM under load: exit 0 after {took:?}");
    assert!(
        !needed_repair(&server.dir),
        "the database was not closed cleanly"
    );
    let acked = acked.into_inner().unwrap();
    let (orders, _) = check_file(&server.dir, &acked);
    // The slow order is there too (the writers' orders plus one).
    assert!(
        orders > acked.len(),
        "{orders} orders, {} acked",
        acked.len()
    );
}

#[test]
fn after_sigkill_the_file_opens_without_a_repair_walk_and_keeps_every_write() {
    let mut server = Server::start();
    let cast = Cast::new();
    let id = order_in(&server, &cast, "Preparing");
    server.kill9();
    // The writer commits with quick-repair (see `store::QUICK_REPAIR`): the allocator
    // state is in the file, so reopening after a crash does not walk the whole file.
    assert_eq!(
        needed_repair(&server.dir),
        !ordertrack::testing::QUICK_REPAIR,
        "repair after SIGKILL"
    );
    server.restart();
    let (st, v) = get_json(
        &server,
        &cast.admin_token,
        &format!("/api/v1/orders/{id}/status"),
    );
    assert_eq!((st, v["status"].as_str()), (200, Some("Preparing")), "{v}");
}

/// Moves the persisted writer clock (and optionally one order's `updated_at`) `ahead` ms into
/// the future, as if the system clock had since gone back by that much.
fn push_clock_ahead(dir: &Path, order: Option<Uuid>, ahead: i64) -> i64 {
    let db = open_raw(&dir.join("orders.redb"));
    let future = chrono::Utc::now().timestamp_millis() + ahead;
    let txn = db.begin_write().expect("write txn");
    {
        let mut meta = txn.open_table(META).expect("meta");
        meta.insert(CLOCK, future as u64).expect("clock");
        if let Some(id) = order {
            let mut t = txn.open_table(ORDERS).expect("orders");
            let raw = t
                .get(id.as_bytes())
                .expect("get")
                .expect("order exists")
                .value()
                .to_vec();
            let mut o: Order = rmp_serde::from_slice(&raw).expect("decode");
            o.updated_at = ordertrack::testing::Timestamp(future + 1000);
            let bytes = rmp_serde::to_vec_named(&o).expect("encode");
            t.insert(id.as_bytes(), bytes.as_slice()).expect("put");
        }
    }
    txn.commit().expect("commit");
    future
}

fn last_update(server: &Server, cast: &Cast, id: Uuid) -> chrono::DateTime<chrono::Utc> {
    let (st, v) = get_json(
        server,
        &cast.admin_token,
        &format!("/api/v1/orders/{id}/status"),
    );
    assert_eq!(st, 200, "{v}");
    utc(&v["lastUpdateTimestamp"])
}

#[test]
fn last_update_timestamp_never_moves_backwards_when_the_clock_does() {
    let mut server = Server::start();
    let cast = Cast::new();
    let a = place(&server, &cast, "CashOnDelivery");
    let b = place(&server, &cast, "CashOnDelivery");
    assert_eq!(server.terminate(), Some(0));
    // The writer last issued a time one hour ahead of today's clock, and order `b` was last
    // updated even later: to the server the system clock has gone back by an hour.
    let future = push_clock_ahead(&server.dir, Some(b), 3_600_000);
    server.restart();
    let mut prev_a = last_update(&server, &cast, a);
    let prev_b = last_update(&server, &cast, b);
    assert_eq!(prev_b.timestamp_millis(), future + 1000);
    for action in ["accept", "preparing", "ready"] {
        let body = (action == "accept").then(eta);
        let (st, v) = act(&server, &cast.staff_token, a, action, body);
        assert_eq!(st, 200, "{v}");
        let t = utc(&v["lastUpdateTimestamp"]);
        assert!(t >= prev_a, "{action}: {t} is before {prev_a}");
        assert!(
            t.timestamp_millis() >= future,
            "{action}: {t} is before the last issued time"
        );
        prev_a = t;
    }
    let (st, v) = act(&server, &cast.staff_token, b, "reject", None);
    assert_eq!(st, 200, "{v}");
    let t = utc(&v["lastUpdateTimestamp"]);
    assert!(
        t >= prev_b,
        "b moved back from its own last update {prev_b} to {t}"
    );
    // A new order placed now is not stamped before what was already issued either.
    let c = place(&server, &cast, "CashOnDelivery");
    assert!(last_update(&server, &cast, c).timestamp_millis() >= future);
    // And after another restart, the persisted clock still holds.
    assert_eq!(server.terminate(), Some(0));
    server.restart();
    let (st, v) = act(&server, &cast.staff_token, c, "accept", Some(eta()));
    assert_eq!(st, 200, "{v}");
    assert!(utc(&v["lastUpdateTimestamp"]).timestamp_millis() >= future);
}
