//! Cluster mode end to end (issue 14): real `ordertrack` nodes with `--nats … --cluster …`
//! against a real `nats-server -js` started by the test (tests/common/nats.rs), through the
//! binary's own interfaces only: REST, `/readyz`, `/metrics` and the customer hub over a raw
//! WebSocket. Waits are polls with generous bounds, never sleeps used as assertions.
//!
//! - one primary among three nodes; a write through a replica is forwarded, acknowledged once
//!   and readable on every node; an idempotent retry through a third node replays it;
//! - a hub subscriber on a replica gets the events of writes made through the primary, each
//!   once, in order;
//! - fencing: a primary frozen (SIGSTOP) past its lease while another node takes over cannot
//!   append when it wakes: what it answers 2xx is in the log, what it refuses never appears;
//! - a replica killed and restarted resumes from its own position: nothing applied twice.

mod common;

use common::cluster::{
    applied_seq, cluster_name, converged, labelled_metric, node, role, the_primary, wait_for,
    FAILOVER_WAIT, REPLICATION_WAIT,
};
use common::hub::{blocking, JsonHub, QUIET};
use common::nats::{send_signal, NatsCluster};
use common::{act, client, eta, get_json, post_json, Cast, Server};
use serde_json::Value;
use uuid::Uuid;

/// Places one cash order through `server`; (status, body).
fn place_via(server: &Server, cast: &Cast, key: Option<&str>) -> (u16, Value) {
    place_body(server, cast, &cast.order_body("CashOnDelivery"), key)
}

/// Places `body` through `server`, with an `Idempotency-Key` when given; (status, body).
fn place_body(server: &Server, cast: &Cast, body: &Value, key: Option<&str>) -> (u16, Value) {
    let headers: Vec<(&str, &str)> = key.map(|k| ("idempotency-key", k)).into_iter().collect();
    let r = post_json(
        server,
        &cast.service_token,
        "/api/v1/orders",
        body,
        &headers,
    );
    (r.status, r.json())
}

/// The customer's `/orders/my` total on `server`.
fn history_count(server: &Server, cast: &Cast) -> Option<u64> {
    let (status, v) = get_json(
        server,
        &cast.customer_token,
        "/api/v1/orders/my?pageSize=100",
    );
    (status == 200).then(|| v["totalCount"].as_u64()).flatten()
}

/// The order's status and version on `server`, once it has it.
fn status_of(server: &Server, cast: &Cast, id: Uuid) -> Option<(String, u64)> {
    let (code, v) = get_json(
        server,
        &cast.customer_token,
        &format!("/api/v1/orders/{id}/status"),
    );
    if code != 200 {
        return None;
    }
    Some((v["status"].as_str()?.to_string(), v["version"].as_u64()?))
}

/// One NATS server, two nodes of a fresh cluster and a cast; the index of the primary.
fn primary_and_replica(test: &str) -> (NatsCluster, Vec<Server>, Cast, usize) {
    let nats = NatsCluster::single();
    let name = cluster_name(test);
    let nodes: Vec<Server> = (0..2).map(|_| node(&nats.urls(), &name, 1, &[])).collect();
    let p = the_primary(&[&nodes[0], &nodes[1]], FAILOVER_WAIT);
    (nats, nodes, Cast::new(), p)
}

#[test]
fn one_primary_and_writes_through_a_replica_reach_every_node() {
    let nats = NatsCluster::single();
    let name = cluster_name("a");
    let nodes: Vec<Server> = (0..3).map(|_| node(&nats.urls(), &name, 1, &[])).collect();
    let refs: Vec<&Server> = nodes.iter().collect();
    let p = the_primary(&refs, FAILOVER_WAIT);
    let replicas: Vec<usize> = (0..3).filter(|i| *i != p).collect();
    for &r in &replicas {
        assert_eq!(role(&nodes[r]).as_deref(), Some("replica"));
    }
    let cast = Cast::new();

    // A placement through a replica: forwarded, acknowledged once, readable everywhere.
    let order = cast.order_body("CashOnDelivery");
    let (status, body) = place_body(&nodes[replicas[0]], &cast, &order, Some("cluster-a-1"));
    assert_eq!(status, 201, "{body}");
    let id: Uuid = body["order"]["orderId"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        labelled_metric(&nodes[replicas[0]], "ordertrack_cluster_forwarded_total"),
        1.0
    );
    for n in &nodes {
        assert!(
            wait_for(REPLICATION_WAIT, || status_of(n, &cast, id)
                == Some(("Placed".into(), 1))),
            "order not readable on {} within {REPLICATION_WAIT:?}",
            n.base
        );
    }

    // Refusals come back as the primary gives them: a wrong content type, a missing token.
    let r = common::post_raw(
        &nodes[replicas[0]],
        &cast.service_token,
        "/api/v1/orders",
        Some("text/plain"),
        b"{}".to_vec(),
        &[],
    );
    assert_eq!(r.status, 415, "{r:?}");
    let r =
        common::send(client().post(nodes[replicas[1]].url(&format!("/api/v1/orders/{id}/cancel"))));
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.header("www-authenticate").is_some(), "{r:?}");

    // A restaurant action through the other replica: the new version reaches every node.
    let (code, v) = act(
        &nodes[replicas[1]],
        &cast.staff_token,
        id,
        "accept",
        Some(eta()),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["version"], 2);
    for n in &nodes {
        assert!(wait_for(REPLICATION_WAIT, || status_of(n, &cast, id)
            == Some(("Accepted".into(), 2))));
    }

    // The same Idempotency-Key through another node replays the first answer: one order.
    let (status, again) = place_body(&nodes[replicas[1]], &cast, &order, Some("cluster-a-1"));
    assert_eq!(status, 201, "{again}");
    assert_eq!(again["order"]["orderId"], body["order"]["orderId"]);
    let seq = converged(&refs, REPLICATION_WAIT);
    assert_eq!(seq, 2, "two records: the placement and the accept");
    for n in &nodes {
        assert_eq!(history_count(n, &cast), Some(1), "{}", n.base);
    }
    assert_eq!(
        labelled_metric(&nodes[p], "ordertrack_cluster_role{role=\"primary\"}"),
        1.0
    );
    assert_eq!(
        labelled_metric(&nodes[replicas[0]], "ordertrack_cluster_applied_total"),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_a_replica_gets_every_event_once_in_order() {
    let (nats, nodes, cast, p) = blocking(|| primary_and_replica("b"));
    let (primary, replica) = (&nodes[p], &nodes[1 - p]);
    let id = blocking(|| {
        let (status, body) = place_via(primary, &cast, None);
        assert_eq!(status, 201, "{body}");
        let id: Uuid = body["order"]["orderId"].as_str().unwrap().parse().unwrap();
        assert!(wait_for(REPLICATION_WAIT, || status_of(replica, &cast, id).is_some()));
        id
    });
    let mut hub = JsonHub::connect(replica.port, "customer-orders", &cast.customer_token).await;
    let current = hub.subscribe(id).await;
    assert_eq!(current["status"], "Placed");
    let steps: [(&str, Option<Value>, &str); 4] = [
        ("accept", Some(eta()), "Accepted"),
        ("preparing", None, "Preparing"),
        ("ready", None, "ReadyForDelivery"),
        ("delivered", None, "Delivered"),
    ];
    blocking(|| {
        for (action, body, _) in &steps {
            let (code, v) = act(primary, &cast.staff_token, id, action, body.clone());
            assert_eq!(code, 200, "{action}: {v}");
        }
    });
    let mut last_sequence = 0;
    for (_, _, want) in &steps {
        let (target, dto) = hub.event().await;
        assert_eq!(target, "ReceiveOrderStatusChanged");
        assert_eq!(dto["status"], *want, "{dto}");
        let seq = dto["sequence"].as_u64().expect("sequence");
        assert!(seq > last_sequence, "sequence {seq} after {last_sequence}");
        last_sequence = seq;
    }
    // Nothing twice.
    hub.quiet(QUIET).await;
    drop(nats);
}

#[test]
fn a_primary_that_lost_its_lease_cannot_append() {
    let nats = NatsCluster::single();
    let name = cluster_name("c");
    let a = node(&nats.urls(), &name, 1, &[]);
    assert!(wait_for(FAILOVER_WAIT, || role(&a).as_deref() == Some("primary")));
    let b = node(&nats.urls(), &name, 1, &[]);
    let cast = Cast::new();
    let (status, _) = place_via(&a, &cast, None);
    assert_eq!(status, 201);
    converged(&[&a, &b], REPLICATION_WAIT);

    // Freeze the primary past its lease: the other node takes over and writes.
    send_signal(a.pid(), "STOP");
    let took_over = wait_for(FAILOVER_WAIT, || role(&b).as_deref() == Some("primary"));
    if !took_over {
        send_signal(a.pid(), "CONT");
        panic!(
            "no takeover while the primary was frozen:\n{}",
            b.log_text()
        );
    }
    let (status, _) = place_via(&b, &cast, None);
    assert_eq!(status, 201);

    // Write to it while it is frozen (the requests wait in its socket), then wake it: it
    // handles them while it may still believe it leads. Every answer is either refused (503,
    // never applied anywhere) or a success that is in the log.
    let late = Cast::new();
    let answers: Vec<u16> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..4)
            .map(|_| s.spawn(|| place_via(&a, &late, None).0))
            .collect();
        // Ordering only (the requests reach the socket first), not an assertion.
        std::thread::sleep(std::time::Duration::from_millis(300));
        send_signal(a.pid(), "CONT");
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    for code in &answers {
        assert!(*code == 201 || *code == 503, "{answers:?}");
    }
    let acknowledged = answers.iter().filter(|c| **c == 201).count() as u64;
    assert!(wait_for(FAILOVER_WAIT, || role(&a).as_deref() == Some("replica")));
    assert_eq!(role(&b).as_deref(), Some("primary"));
    converged(&[&a, &b], REPLICATION_WAIT);
    for n in [&a, &b] {
        assert_eq!(history_count(n, &late), Some(acknowledged), "{}", n.base);
        assert_eq!(history_count(n, &cast), Some(2), "{}", n.base);
    }
    // If it still believed it led, its append was refused by the log (fenced), not applied.
    let fenced = labelled_metric(&a, "ordertrack_cluster_fenced_appends_total");
    eprintln!("answers after waking: {answers:?}; fenced appends: {fenced}");
    assert!(!fenced.is_nan(), "the metric is exported");
}

/// Fencing does not depend on the lease: a record appended to the log by anyone else makes
/// the primary's next append fail (expected last sequence), though it still holds the lease.
#[test]
fn an_append_by_another_writer_fences_the_primary() {
    let nats = NatsCluster::single();
    let name = cluster_name("f");
    let a = node(&nats.urls(), &name, 1, &[]);
    assert!(wait_for(FAILOVER_WAIT, || role(&a).as_deref() == Some("primary")));
    let cast = Cast::new();
    assert_eq!(place_via(&a, &cast, None).0, 201);
    assert_eq!(applied_seq(&a), Some(1));

    // Another writer appends record 2 (an empty batch) behind the primary's back.
    let ack = nats
        .request(&format!("ordertrack.{name}.log"), "")
        .expect("publish");
    assert!(ack.contains("\"seq\":2"), "{ack}");

    // The primary's next write is refused by the log: never acknowledged, never applied.
    let refused = Cast::new();
    let (status, body) = place_via(&a, &refused, None);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["title"], "Cluster.NoPrimary");
    assert_eq!(
        labelled_metric(&a, "ordertrack_cluster_fenced_appends_total"),
        1.0
    );
    // It steps down, applies the foreign record, and (alone) takes the lease again.
    assert!(wait_for(FAILOVER_WAIT, || applied_seq(&a) == Some(2)
        && role(&a).as_deref() == Some("primary")));
    assert_eq!(history_count(&a, &refused), Some(0));
    assert_eq!(place_via(&a, &cast, None).0, 201);
    assert_eq!(applied_seq(&a), Some(3));
    assert_eq!(history_count(&a, &cast), Some(2));
    assert!(labelled_metric(&a, "ordertrack_cluster_lease_changes_total") >= 2.0);
}

#[test]
fn a_restarted_replica_resumes_where_it_was() {
    let nats = NatsCluster::single();
    let name = cluster_name("d");
    let a = node(&nats.urls(), &name, 1, &[]);
    assert!(wait_for(FAILOVER_WAIT, || role(&a).as_deref() == Some("primary")));
    let mut b = node(&nats.urls(), &name, 1, &[]);
    let cast = Cast::new();
    for _ in 0..3 {
        assert_eq!(place_via(&a, &cast, None).0, 201);
    }
    converged(&[&a, &b], REPLICATION_WAIT);
    assert_eq!(history_count(&b, &cast), Some(3));

    // Killed without warning, then more writes, then back.
    b.kill9();
    for _ in 0..2 {
        assert_eq!(place_via(&a, &cast, None).0, 201);
    }
    b.restart();
    b.wait_ready();
    let seq = converged(&[&a, &b], REPLICATION_WAIT);
    assert_eq!(seq, 5);
    assert_eq!(history_count(&b, &cast), Some(5));
    assert_eq!(applied_seq(&b), Some(5));
    // Only the two records written while it was down were applied after the restart.
    assert_eq!(
        labelled_metric(&b, "ordertrack_cluster_applied_total"),
        2.0,
        "{}",
        b.log_text()
    );

    // A new, empty node catches up from the log alone.
    let c = node(&nats.urls(), &name, 1, &[]);
    assert_eq!(converged(&[&a, &c], REPLICATION_WAIT), 5);
    assert_eq!(history_count(&c, &cast), Some(5));
    assert_eq!(labelled_metric(&c, "ordertrack_cluster_applied_total"), 5.0);

    // A clean stop of the primary hands over at once (the lease is given back).
    let mut a = a;
    a.terminate();
    assert!(wait_for(FAILOVER_WAIT, || role(&b).as_deref()
        == Some("primary")
        || role(&c).as_deref() == Some("primary")));
    assert_eq!(place_via(&b, &cast, None).0, 201);
    converged(&[&b, &c], REPLICATION_WAIT);
    assert_eq!(history_count(&b, &cast), Some(6));
    assert_eq!(history_count(&c, &cast), Some(6));
}

#[test]
fn off_by_default_and_settings_checked_at_start() {
    // Without --nats: /readyz is JSON with role "single", and nothing about NATS starts.
    let single = Server::start();
    let (code, v) = common::cluster::readyz(&single).expect("readyz");
    assert_eq!(code, 200);
    assert_eq!(
        v,
        serde_json::json!({"status": "ready", "role": "single", "appliedSeq": 0,
                           "lagRecords": 0, "primary": null})
    );
    assert_eq!(
        labelled_metric(&single, "ordertrack_cluster_role{role=\"single\"}"),
        1.0
    );
    assert!(!single.log_text().contains("NATS"), "{}", single.log_text());

    // Half a cluster configuration, a bad name or URL: one line at start, no credentials.
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (
            &["--nats", "nats://127.0.0.1:4222"],
            "--nats and --cluster go together",
        ),
        (&["--cluster", "eu"], "--nats and --cluster go together"),
        (
            &["--nats", "nats://u:hunter2@h:1", "--cluster", "eu.west"],
            "bad --cluster",
        ),
        (
            &["--nats", "http://u:hunter2@h:1", "--cluster", "eu"],
            "bad --nats",
        ),
        (
            &[
                "--nats",
                "h:1",
                "--cluster",
                "eu",
                "--cluster-lease-ttl",
                "10ms",
            ],
            "bad --cluster-lease-ttl",
        ),
    ];
    for (args, want) in cases {
        let out = std::process::Command::new(common::bin())
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{}", common::free_port())])
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}

/// A `nats-server -js` whose max payload is `max_payload` bytes (a configuration file: the
/// command line has no flag for it); killed on drop.
struct SmallNats {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl SmallNats {
    fn start(max_payload: usize) -> SmallNats {
        let dir = tempfile::tempdir().unwrap();
        let port = common::free_port();
        let conf = dir.path().join("nats.conf");
        let store = dir.path().join("js");
        std::fs::write(
            &conf,
            format!(
                "listen: \"127.0.0.1:{port}\"\nmax_payload: {max_payload}\n\
                 jetstream {{ store_dir: \"{}\" }}\n",
                store.display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new(common::nats::server_bin())
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let ready = wait_for(REPLICATION_WAIT, || {
            common::nats::request(port, "$JS.API.INFO", "", std::time::Duration::from_secs(1))
                .is_ok_and(|r| !r.contains("\"error\""))
        });
        assert!(
            ready,
            "nats-server with max_payload {max_payload} did not start"
        );
        SmallNats {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for SmallNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A group commit whose record would exceed NATS' max payload is committed as smaller batches
/// (each appended on its own): every write is acknowledged and replicated.
#[test]
fn batches_larger_than_the_max_payload_are_split() {
    let nats = SmallNats::start(8 * 1024);
    let url = format!("nats://127.0.0.1:{}", nats.port);
    let name = cluster_name("s");
    let a = node(&url, &name, 1, &[]);
    assert!(wait_for(FAILOVER_WAIT, || role(&a).as_deref() == Some("primary")));
    let b = node(&url, &name, 1, &[]);
    let cast = Cast::new();
    let note = "n".repeat(400);
    let codes: Vec<u16> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..8)
            .map(|t| {
                let (a, cast, note) = (&a, &cast, &note);
                s.spawn(move || {
                    (0..6)
                        .map(|i| {
                            let mut body = cast.order_body("CashOnDelivery");
                            body["note"] = note.as_str().into();
                            place_body(a, cast, &body, Some(&format!("split-{t}-{i}"))).0
                        })
                        .collect::<Vec<u16>>()
                })
            })
            .collect();
        calls.into_iter().flat_map(|c| c.join().unwrap()).collect()
    });
    assert!(codes.iter().all(|c| *c == 201), "{codes:?}");
    converged(&[&a, &b], REPLICATION_WAIT);
    assert_eq!(history_count(&b, &cast), Some(48));
    assert_eq!(role(&a).as_deref(), Some("primary"), "never stepped down");

    // One request alone larger than NATS takes is refused; the primary stays primary.
    let mut big = cast.order_body("CashOnDelivery");
    let item = serde_json::json!({"menuItemId": Uuid::new_v4(), "name": "x".repeat(200),
                                  "quantity": 1, "unitPrice": 1});
    big["items"] = vec![item; 50].into();
    let (status, body) = place_body(&a, &cast, &big, Some("split-big"));
    assert_eq!(status, 503, "{body}");
    assert_eq!(role(&a).as_deref(), Some("primary"));
    assert_eq!(place_via(&a, &cast, None).0, 201);
    assert_eq!(history_count(&a, &cast), Some(49));
}

/// Event sequences are the region's (the outbox is replicated as it is): a kitchen board whose
/// node dies resumes on another node from the last sequence it saw, and gets what it missed
/// once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_resumes_on_another_node_from_its_last_sequence() {
    let (nats, nodes, cast, p) = blocking(|| primary_and_replica("r"));
    let (primary, mut replica) = {
        let mut nodes = nodes;
        let replica = nodes.remove(1 - p);
        (nodes.remove(0), replica)
    };
    let mut board = JsonHub::connect(replica.port, "restaurant-orders", &cast.staff_token).await;
    board.subscribe_restaurant(cast.restaurant).await;
    let placed: Vec<Value> = blocking(|| {
        (0..2)
            .map(|_| place_via(&primary, &cast, None).1["order"]["orderId"].clone())
            .collect()
    });
    let mut last = 0;
    for id in &placed {
        let (target, dto) = board.event().await;
        assert_eq!(target, "ReceiveOrderPlaced");
        assert_eq!(&dto["orderId"], id);
        last = dto["sequence"].as_u64().expect("sequence");
    }
    // The board's node dies; two more orders meanwhile.
    blocking(|| replica.kill9());
    let missed: Vec<Value> = blocking(|| {
        (0..2)
            .map(|_| place_via(&primary, &cast, None).1["order"]["orderId"].clone())
            .collect()
    });
    let mut board = JsonHub::connect(primary.port, "restaurant-orders", &cast.staff_token).await;
    let c = board
        .invoke(
            "ResumeRestaurant",
            serde_json::json!([cast.restaurant, last]),
        )
        .await;
    assert!(c.get("error").is_none(), "{c}");
    for id in &missed {
        let (_, dto) = board.event().await;
        assert_eq!(&dto["orderId"], id);
        let seq = dto["sequence"].as_u64().expect("sequence");
        assert!(seq > last, "{seq} after {last}");
        last = seq;
    }
    board.quiet(QUIET).await;
    drop(nats);
}
