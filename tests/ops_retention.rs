//! Retention end to end through the binary: finished orders older than `--retain-finished` are
//! swept (GET 404, exact history counts, `db check` clean) while unfinished and recent ones stay;
//! idempotency keys expire; outbox events older than their retention go; a sweep killed with
//! SIGKILL mid-way leaves no half-removed order; a file written before the retention index is
//! indexed on open; bad durations are one-line start errors.

mod common;
use common::*;
use std::collections::HashSet;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A labelled series from `/metrics`, e.g. `ordertrack_swept_total{kind="orders"}`.
fn series(server: &Server, name: &str) -> f64 {
    let text = client()
        .get(server.url("/metrics"))
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default();
    text.lines()
        .find_map(|l| {
            let v = l.strip_prefix(name)?.strip_prefix(' ')?;
            v.trim().parse().ok()
        })
        .unwrap_or(f64::NAN)
}

fn swept(server: &Server, kind: &str) -> f64 {
    series(
        server,
        &format!("ordertrack_swept_total{{kind=\"{kind}\"}}"),
    )
}

fn kept(server: &Server, kind: &str) -> f64 {
    series(server, &format!("ordertrack_kept_rows{{kind=\"{kind}\"}}"))
}

/// Waits until `f` holds (polling), or fails with `what`.
fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ot(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env_remove("ORDERTRACK_JWT_SECRET")
        .env_remove("ORDERTRACK_DATA_DIR")
        .output()
        .expect("run ordertrack")
}

fn db(cmd: &str, server: &Server) -> serde_json::Value {
    let dir = server.dir.to_str().expect("utf-8 dir");
    let o = ot(&["db", cmd, "--json", "--data-dir", dir]);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "db {cmd}: {text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("db {cmd}: {e}: {text}"))
}

/// Every order id of the customer's history, walking all pages; with the reported total.
fn history(server: &Server, cast: &Cast, status: &str) -> (HashSet<Uuid>, u64) {
    let mut ids = HashSet::new();
    let mut total = 0;
    for page in 1.. {
        let (code, v) = get_json(
            server,
            &cast.customer_token,
            &format!("/api/v1/orders/my?pageSize=100&pageNumber={page}{status}"),
        );
        assert_eq!(code, 200, "{v}");
        total = v["totalCount"].as_u64().expect("totalCount");
        let items = v["items"].as_array().expect("items");
        if items.is_empty() {
            break;
        }
        for it in items {
            ids.insert(it["orderId"].as_str().unwrap().parse().unwrap());
        }
    }
    (ids, total)
}

fn order_status(server: &Server, token: &str, id: Uuid) -> u16 {
    get_json(server, token, &format!("/api/v1/orders/{id}")).0
}

/// Places with an `Idempotency-Key`; the order id answered.
fn place_keyed(server: &Server, cast: &Cast, body: &[u8], key: &str) -> Uuid {
    let r = post_raw(
        server,
        &cast.service_token,
        "/api/v1/orders",
        Some("application/json"),
        body.to_vec(),
        &[("idempotency-key", key)],
    );
    assert!(r.status == 201 || r.status == 200, "{r:?}");
    r.json()["order"]["orderId"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn deliver(server: &Server, cast: &Cast) -> Uuid {
    let id = place(server, cast, "CashOnDelivery");
    for (action, body) in [
        ("accept", Some(eta())),
        ("preparing", None),
        ("ready", None),
        ("delivered", None),
    ] {
        assert_eq!(act(server, &cast.staff_token, id, action, body).0, 200);
    }
    id
}

#[test]
fn finished_orders_keys_and_events_expire_while_the_rest_stays() {
    let mut server = Server::start_with(&[
        "--retain-finished",
        "4s",
        "--idempotency-ttl",
        "4s",
        "--outbox-retention",
        "1h",
        "--sweep-interval",
        "1s",
    ]);
    let cast = Cast::new();
    let delivered = deliver(&server, &cast);
    let cancelled = place(&server, &cast, "Card");
    assert_eq!(
        act(
            &server,
            &cast.service_token,
            cancelled,
            "payment-failed",
            None
        )
        .0,
        200
    );
    let rejected = place(&server, &cast, "CashOnDelivery");
    assert_eq!(
        act(&server, &cast.staff_token, rejected, "reject", None).0,
        200
    );
    let placed = place(&server, &cast, "CashOnDelivery");
    let awaiting = place(&server, &cast, "Card");
    let body = serde_json::to_vec(&cast.order_body("CashOnDelivery")).unwrap();
    let keyed = place_keyed(&server, &cast, &body, "retention-key-1");
    assert_eq!(place_keyed(&server, &cast, &body, "retention-key-1"), keyed);
    let (_, total) = history(&server, &cast, "");
    assert_eq!(total, 6);
    assert!(kept(&server, "outbox_events") > 0.0);

    eventually(
        "three finished orders swept",
        Duration::from_secs(30),
        || swept(&server, "orders") == 3.0,
    );
    for id in [delivered, cancelled, rejected] {
        assert_eq!(order_status(&server, &cast.customer_token, id), 404);
        assert_eq!(order_status(&server, &cast.admin_token, id), 404);
        let (code, _) = get_json(
            &server,
            &cast.customer_token,
            &format!("/api/v1/orders/{id}/status"),
        );
        assert_eq!(code, 404);
    }
    for id in [placed, awaiting, keyed] {
        assert_eq!(order_status(&server, &cast.customer_token, id), 200);
    }
    let (ids, total) = history(&server, &cast, "");
    assert_eq!(ids, HashSet::from([placed, awaiting, keyed]));
    assert_eq!(total, 3);
    let (ids, total) = history(&server, &cast, "&status=Delivered,Cancelled,Rejected");
    assert!(ids.is_empty());
    assert_eq!(total, 0);

    // The outbox keeps events no longer than finished orders are kept (4 s here, though its
    // own setting says 1 h): the unfinished orders' events go, the orders stay.
    eventually("outbox swept", Duration::from_secs(30), || {
        kept(&server, "outbox_events") == 0.0
    });
    assert!(swept(&server, "outbox_events") >= 8.0);
    assert_eq!(order_status(&server, &cast.customer_token, placed), 200);

    // The key expired: the same request is a new order now (and the old record is swept).
    eventually("key swept", Duration::from_secs(30), || {
        swept(&server, "idempotency_keys") == 1.0
    });
    let again = place_keyed(&server, &cast, &body, "retention-key-1");
    assert_ne!(again, keyed);
    assert_eq!(place_keyed(&server, &cast, &body, "retention-key-1"), again);

    // A recently finished order stays until its own time comes.
    assert_eq!(
        act(&server, &cast.customer_token, placed, "cancel", None).0,
        200
    );
    let seen = swept(&server, "orders");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(order_status(&server, &cast.customer_token, placed), 200);
    eventually("recent order swept later", Duration::from_secs(30), || {
        swept(&server, "orders") == seen + 1.0
    });
    assert_eq!(order_status(&server, &cast.customer_token, placed), 404);
    let (ids, total) = history(&server, &cast, "");
    assert_eq!((ids.len() as u64, total), (3, 3));

    assert_eq!(server.terminate(), Some(0));
    let check = db("check", &server);
    assert_eq!(check["problemCount"], 0, "{check}");
    assert_eq!(check["orders"], 3, "{check}");
    let stats = db("stats", &server);
    assert_eq!(stats["swept"]["orders"], 4, "{stats}");
    // Both records of the key (the first, and the one after it expired) were stored once each.
    let keys = stats["swept"]["idempotencyKeys"].as_u64().unwrap()
        + stats["idempotencyKeys"].as_u64().unwrap();
    assert_eq!(keys, 2, "{stats}");
    assert_eq!(stats["orders"], 3, "{stats}");
}

/// An expired key is a new request even before the sweeper removed it (the sweeper runs at most
/// every minute; the writer checks the age itself).
#[test]
fn an_expired_key_is_new_before_any_sweep() {
    let server = Server::start_with(&["--idempotency-ttl", "2s", "--sweep-interval", "60s"]);
    let cast = Cast::new();
    let body = serde_json::to_vec(&cast.order_body("Card")).unwrap();
    let first = place_keyed(&server, &cast, &body, "k-ttl");
    assert_eq!(place_keyed(&server, &cast, &body, "k-ttl"), first);
    std::thread::sleep(Duration::from_millis(2500));
    let second = place_keyed(&server, &cast, &body, "k-ttl");
    assert_ne!(second, first);
    assert_eq!(place_keyed(&server, &cast, &body, "k-ttl"), second);
    assert_eq!(swept(&server, "idempotency_keys"), 0.0);
}

/// Cancels `n` orders (card, then payment failed) from several clients.
fn finish_many(server: &Server, cast: &Cast, n: usize, threads: usize) {
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for _ in (t..n).step_by(threads) {
                    let id = place(server, cast, "Card");
                    let (code, _) = act(server, &cast.service_token, id, "payment-failed", None);
                    assert_eq!(code, 200);
                }
            });
        }
    });
}

#[test]
fn a_sweep_killed_mid_way_leaves_whole_orders_only() {
    const N: usize = 2000;
    let mut server = Server::start();
    let cast = Cast::new();
    finish_many(&server, &cast, N, 8);
    let live = place(&server, &cast, "CashOnDelivery");
    assert_eq!(server.terminate(), Some(0));
    let (port, dir) = (server.port, server.dir.clone());
    let flags = ["--retain-finished", "1s", "--sweep-interval", "1s"];
    let mut placed = N as u64 + 1;
    let mut partial = 0;
    for round in 0..4u64 {
        // The first round kills the pass that starts with the server over the backlog; later
        // ones kill it while orders keep finishing and passes run every second.
        let mut s = Server::spawn_on(port, &dir, &flags);
        if round > 0 {
            finish_many(&s, &cast, 200, 4);
            placed += 200;
            std::thread::sleep(Duration::from_millis(300 * round));
        }
        let removed = swept(&s, "orders");
        s.kill9();
        let check = db("check", &s);
        assert_eq!(check["problemCount"], 0, "round {round}: {check}");
        let stats = db("stats", &s);
        let orders = stats["orders"].as_u64().unwrap();
        let gone = stats["swept"]["orders"].as_u64().unwrap();
        assert_eq!(orders + gone, placed, "round {round}: {stats}");
        if removed > 0.0 && orders > 1 {
            partial += 1;
        }
    }
    eprintln!("rounds killed with finished orders still to sweep: {partial} of 4");
    // A last start finishes the job; the history is exact.
    let s = Server::spawn_on(port, &dir, &flags);
    eventually("all swept", Duration::from_secs(60), || {
        swept(&s, "orders") == (placed - 1) as f64
    });
    let (ids, total) = history(&s, &cast, "");
    assert_eq!(ids, HashSet::from([live]));
    assert_eq!(total, 1);
}

#[test]
fn a_file_without_the_retention_index_gets_one_on_open() {
    let mut server = Server::start();
    let cast = Cast::new();
    let done = deliver(&server, &cast);
    let live = place(&server, &cast, "CashOnDelivery");
    let body = serde_json::to_vec(&cast.order_body("Card")).unwrap();
    place_keyed(&server, &cast, &body, "old-key");
    assert_eq!(server.terminate(), Some(0));
    // Make it look like a file of the version before retention.
    {
        let db = redb::Database::open(server.dir.join("orders.redb")).expect("open");
        let txn = db.begin_write().unwrap();
        let finished: redb::TableDefinition<&[u8; 24], u8> =
            redb::TableDefinition::new("finished_v1");
        assert!(txn.delete_table(finished).unwrap());
        let expiry: redb::TableDefinition<&[u8], u8> =
            redb::TableDefinition::new("idempotency_expiry_v1");
        assert!(txn.delete_table(expiry).unwrap());
        txn.open_table(ordertrack::testing::META)
            .unwrap()
            .remove("retention_index")
            .unwrap();
        txn.commit().unwrap();
    }
    let check = db("check", &server);
    assert_eq!(check["problemCount"], 0, "{check}");
    let (port, dir) = (server.port, server.dir.clone());
    let s = Server::spawn_on(
        port,
        &dir,
        &[
            "--retain-finished",
            "1s",
            "--idempotency-ttl",
            "1s",
            "--sweep-interval",
            "1s",
        ],
    );
    eventually("the old order swept", Duration::from_secs(30), || {
        swept(&s, "orders") == 1.0 && swept(&s, "idempotency_keys") == 1.0
    });
    assert_eq!(order_status(&s, &cast.customer_token, done), 404);
    assert_eq!(order_status(&s, &cast.customer_token, live), 200);
    drop(s);
    let check = db("check", &server);
    assert_eq!(check["problemCount"], 0, "{check}");
}

/// Flags, environment, and the text the one error line must hold.
type BadStart<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn bad_durations_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let toml = tmp.path().join("bad.toml");
    std::fs::write(&toml, "outbox_retention = \"1y\"\n").unwrap();
    let toml = toml.to_str().unwrap();
    let cases: [BadStart; 5] = [
        (
            &["--retain-finished", "5x"],
            &[],
            "bad --retain-finished '5x'",
        ),
        (
            &["--retain-finished", "0s"],
            &[],
            "bad --retain-finished '0s'",
        ),
        (
            &[],
            &[("ORDERTRACK_IDEMPOTENCY_TTL", "-3h")],
            "bad --idempotency-ttl '-3h'",
        ),
        (&["--config", toml], &[], "bad --outbox-retention '1y'"),
        (
            &["--sweep-interval", "5m"],
            &[],
            "bad --sweep-interval '5m'",
        ),
    ];
    for (args, env, needle) in cases {
        let data = tmp.path().join("data");
        let port = format!("127.0.0.1:{}", free_port());
        let out = Command::new(bin())
            .args(["serve", "--listen", &port, "--data-dir"])
            .arg(&data)
            .args(["--jwt-secret", SECRET])
            .args(args)
            .envs(env.iter().copied())
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        let lines: Vec<&str> = err.trim_end().lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(lines[0].contains(needle), "{args:?}: {err}");
        assert!(!data.exists(), "a failed start leaves nothing behind");
    }
}
