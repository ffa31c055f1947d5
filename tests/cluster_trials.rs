//! The failure trials of issue 14 at a small size, through the binary's own interfaces (REST,
//! the hubs over real WebSockets, /readyz, /metrics) against real `nats-server` JetStream
//! processes (tests/common/nats.rs): kill -9 the primary under write load (0 acknowledged writes
//! lost, idempotency keys land once across the failover), partition the primary from NATS (its
//! writes are refused, never acknowledged and lost), lose one of three NATS nodes (writes go on),
//! a new empty node catches up and a replica restarted after kill -9 resumes where it was.
//! The long versions and the numbers are in scripts/cluster-long.sh; docs/cluster.md states the
//! bounds used here. Timing is never asserted beyond those generous bounds.

mod common;

use common::cluster;
use common::hub::JsonHub;
use common::nats::NatsCluster;
use common::{client, eta, Cast, Server};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Failover bound: the lease TTL, the new primary's catch-up, and slack for 2 busy cores
/// (docs/cluster.md).
const FAILOVER_BOUND: Duration = Duration::from_secs(20);
/// How long an acknowledged write may take to be readable on every node.
const CONVERGE_BOUND: Duration = Duration::from_secs(20);
/// How long a client keeps retrying one write (same Idempotency-Key) before the trial fails.
const RETRY_BOUND: Duration = Duration::from_secs(40);

/// The trials start several processes each; one at a time keeps them within their bounds on a
/// 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Nodes
// ---------------------------------------------------------------------------------------------

/// An ordertrack node of cluster `name` on the NATS servers `nats` (comma separated), with the
/// tests' short lease (`common::cluster::LEASE_TTL`).
fn node(nats: &str, name: &str, replicas: usize) -> Server {
    cluster::node(nats, name, replicas, &[])
}

/// `/readyz` as JSON (whatever its status); `Null` when the node does not answer.
fn readyz(s: &Server) -> Value {
    cluster::readyz(s).map(|(_, v)| v).unwrap_or(Value::Null)
}

fn is_ready_as(s: &Server, role: &str) -> bool {
    let r = readyz(s);
    r["role"] == role && r["status"] == "ready"
}

/// Every node's /readyz and the tail of its log, for a failing trial's message.
fn report(nodes: &[&Server]) -> String {
    nodes
        .iter()
        .map(|s| {
            let log = s.log_text();
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!(
                "---- node :{} readyz {} ----\n{}",
                s.port,
                readyz(s),
                tail.join("\n")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Polls `f` until it holds; panics with `what` and the nodes' state after `bound`. Returns how
/// long it took.
fn wait_until(
    what: &str,
    bound: Duration,
    nodes: &[&Server],
    mut f: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        if f() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < bound,
            "{what}: not within {bound:?}\n{}",
            report(nodes)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The index of the one node that is a ready primary while every other one is not primary.
fn sole_primary(nodes: &[&Server]) -> Option<usize> {
    let roles: Vec<Value> = nodes.iter().map(|s| readyz(s)).collect();
    let primaries: Vec<usize> = (0..roles.len())
        .filter(|&i| roles[i]["role"] == "primary")
        .collect();
    match primaries.as_slice() {
        [i] if roles[*i]["status"] == "ready" => Some(*i),
        _ => None,
    }
}

fn wait_primary(nodes: &[&Server], bound: Duration) -> (usize, Duration) {
    let mut found = None;
    let took = wait_until("exactly one ready primary", bound, nodes, || {
        found = sole_primary(nodes);
        found.is_some()
    });
    (found.unwrap_or(0), took)
}

/// Waits until every node is ready and has applied the same stream sequence.
fn wait_converged(nodes: &[&Server]) -> u64 {
    let mut seq = 0;
    wait_until(
        "all nodes ready at one applied sequence",
        CONVERGE_BOUND,
        nodes,
        || {
            let r: Vec<Value> = nodes.iter().map(|s| readyz(s)).collect();
            let seqs: HashSet<u64> = r.iter().filter_map(|v| v["appliedSeq"].as_u64()).collect();
            seq = seqs.iter().copied().next().unwrap_or(0);
            r.iter()
                .all(|v| v["status"] == "ready" && v["lagRecords"] == 0)
                && seqs.len() == 1
                && nodes.len() == r.iter().filter(|v| v["appliedSeq"].is_u64()).count()
        },
    );
    seq
}

fn applied_seq(s: &Server) -> u64 {
    readyz(s)["appliedSeq"].as_u64().unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Writes that clients retry with their Idempotency-Key until acknowledged
// ---------------------------------------------------------------------------------------------

/// One acknowledged order: the key and body it was placed with, and the version last acked.
#[derive(Clone, Debug)]
struct Acked {
    key: String,
    body: Value,
    order: Uuid,
    version: u64,
    /// How many attempts the writes of this order took (more than 1: retried across a fault).
    tries: u32,
}

/// Sends one write to `base` + `path`; `Ok((status, body))` for any answer, `Err` when there
/// was none (refused connection, reset, timeout).
fn send_write(
    c: &reqwest::blocking::Client,
    base: &str,
    path: &str,
    token: &str,
    key: Option<&str>,
    body: &Value,
) -> Result<(u16, Value), String> {
    let mut req = c
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .json(body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let r = req.send().map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    Ok((status, r.json().unwrap_or(Value::Null)))
}

/// Sends a write through the nodes at `bases` (round robin from `start`) until one answers 2xx;
/// 5xx and connection errors are retried, anything else fails the trial. Returns the answer
/// body and the attempts it took.
fn until_acked(
    c: &reqwest::blocking::Client,
    bases: &[String],
    start: usize,
    path: &str,
    token: &str,
    key: Option<&str>,
    body: &Value,
) -> Result<(Value, u32), String> {
    let deadline = Instant::now() + RETRY_BOUND;
    let mut tries = 0u32;
    let mut last = String::new();
    while Instant::now() < deadline {
        let base = &bases[(start + tries as usize) % bases.len()];
        tries += 1;
        match send_write(c, base, path, token, key, body) {
            Ok((s, v)) if (200..300).contains(&s) => return Ok((v, tries)),
            Ok((s, v)) if s >= 500 => last = format!("{s} {v}"),
            Ok((s, v)) => return Err(format!("{path} via {base}: {s} {v}")),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "{path}: never acknowledged in {RETRY_BOUND:?}: {last}"
    ))
}

/// Places one cash order with a fresh Idempotency-Key and, for every other one, accepts it;
/// each write retried until acknowledged.
fn place_and_maybe_accept(
    c: &reqwest::blocking::Client,
    bases: &[String],
    cast: &Cast,
    n: usize,
) -> Result<Acked, String> {
    let key = format!("trial-{}", Uuid::new_v4());
    let body = cast.order_body("CashOnDelivery");
    let (placed, mut tries) = until_acked(
        c,
        bases,
        n,
        "/api/v1/orders",
        &cast.service_token,
        Some(&key),
        &body,
    )?;
    let order: Uuid = placed["order"]["orderId"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no orderId in {placed}"))?;
    let mut version = placed["order"]["version"].as_u64().unwrap_or(0);
    if n % 2 == 1 {
        let path = format!("/api/v1/orders/{order}/accept");
        let (accepted, t) = until_acked(c, bases, n, &path, &cast.staff_token, None, &eta())?;
        version = accepted["version"].as_u64().unwrap_or(0);
        tries += t;
    }
    Ok(Acked {
        key,
        body,
        order,
        version,
        tries,
    })
}

/// Writer threads placing (and accepting) orders through `bases` until `stop`; every write is
/// retried until acknowledged. Returns every acknowledged order, and the failures (writes
/// never acknowledged within the retry bound, or answered with a client error).
fn write_load(
    bases: &[String],
    cast: &Cast,
    threads: usize,
    stop: &AtomicBool,
    acked_count: &AtomicUsize,
) -> (Vec<Acked>, Vec<String>) {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let c = client();
                    let (mut ok, mut bad) = (Vec::new(), Vec::new());
                    let mut n = t;
                    while !stop.load(Ordering::Relaxed) {
                        match place_and_maybe_accept(&c, bases, cast, n) {
                            Ok(a) => {
                                ok.push(a);
                                acked_count.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => bad.push(e),
                        }
                        n += threads;
                    }
                    (ok, bad)
                })
            })
            .collect();
        let mut all = (Vec::new(), Vec::new());
        for h in handles {
            let (ok, bad) = h.join().unwrap_or_default();
            all.0.extend(ok);
            all.1.extend(bad);
        }
        all
    })
}

/// The customer's order count as `/orders/my` on `s` reports it.
fn my_count(s: &Server, cast: &Cast) -> u64 {
    let (status, v) = common::get_json(
        s,
        &cast.customer_token,
        "/api/v1/orders/my?pageNumber=1&pageSize=1",
    );
    assert_eq!(status, 200, "{v}");
    v["totalCount"].as_u64().unwrap_or(u64::MAX)
}

/// Every acknowledged order is readable on every node with exactly its acknowledged version,
/// each key made exactly one order, and the customer has exactly those orders.
fn assert_all_acked_readable(nodes: &[&Server], cast: &Cast, acked: &[Acked]) {
    let orders: HashSet<Uuid> = acked.iter().map(|a| a.order).collect();
    assert_eq!(orders.len(), acked.len(), "two keys answered one order");
    let keys: HashSet<&str> = acked.iter().map(|a| a.key.as_str()).collect();
    assert_eq!(keys.len(), acked.len());
    for s in nodes {
        for a in acked {
            let path = format!("/api/v1/orders/{}/status", a.order);
            let (status, v) = common::get_json(s, &cast.service_token, &path);
            assert_eq!(
                (status, v["version"].as_u64()),
                (200, Some(a.version)),
                "acknowledged write lost on node :{}: {a:?} reads {v}\n{}",
                s.port,
                report(nodes)
            );
        }
        assert_eq!(
            my_count(s, cast),
            acked.len() as u64,
            "node :{} has another number of orders than were acknowledged (a duplicate or a ghost)",
            s.port
        );
    }
}

fn bases_of(nodes: &[&Server]) -> Vec<String> {
    nodes.iter().map(|s| s.base.clone()).collect()
}

// ---------------------------------------------------------------------------------------------
// The trials
// ---------------------------------------------------------------------------------------------

/// A size knob of the trials (scripts/cluster-long.sh raises them).
fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// kill -9 the primary while clients write through every node (OT_CLUSTER_CYCLES times, the
/// killed node restarted each time): a replica takes over within the bound, no acknowledged
/// write is lost, and retried writes (same Idempotency-Key) land once, also when a key
/// acknowledged before a failover is sent again after it.
#[test]
fn kill9_primary_under_write_load_loses_no_acknowledged_write() {
    let _serial = serial();
    let cycles = knob("OT_CLUSTER_CYCLES", 1);
    let per_phase = knob("OT_CLUSTER_WRITES", 15);
    let writers = knob("OT_CLUSTER_WRITERS", 3);
    let nats = NatsCluster::start(3);
    let urls = nats.urls();
    let mut nodes: Vec<Server> = (0..3).map(|_| node(&urls, "kill", 3)).collect();
    let cast = Cast::new();
    let bases = bases_of(&nodes.iter().collect::<Vec<_>>());

    let stop = AtomicBool::new(false);
    let acked_count = AtomicUsize::new(0);
    let mut failovers = Vec::new();
    let (acked, failed) = std::thread::scope(|s| {
        let load = s.spawn(|| write_load(&bases, &cast, writers, &stop, &acked_count));
        let mut target = per_phase;
        for _ in 0..cycles {
            let all: Vec<&Server> = nodes.iter().collect();
            let (primary, _) = wait_primary(&all, FAILOVER_BOUND);
            wait_until("writes before the kill", RETRY_BOUND, &all, || {
                acked_count.load(Ordering::Relaxed) >= target
            });
            let killed_at = Instant::now();
            nodes[primary].kill9();
            let survivors: Vec<&Server> = (0..nodes.len())
                .filter(|&i| i != primary)
                .map(|i| &nodes[i])
                .collect();
            wait_primary(&survivors, FAILOVER_BOUND);
            failovers.push(killed_at.elapsed());
            target = acked_count.load(Ordering::Relaxed) + per_phase;
            wait_until("writes after the failover", RETRY_BOUND, &survivors, || {
                acked_count.load(Ordering::Relaxed) >= target
            });
            // The killed node comes back with its data and rejoins as a replica.
            nodes[primary].restart();
            target = acked_count.load(Ordering::Relaxed) + per_phase;
        }
        stop.store(true, Ordering::Relaxed);
        load.join().unwrap_or_default()
    });
    assert!(failed.is_empty(), "writes failed: {failed:#?}");
    assert!(acked.len() >= 2 * per_phase, "{} acked", acked.len());
    failovers.sort();
    eprintln!(
        "RESULT cluster kill -9 of the primary: {cycles} cycles, {} orders acknowledged by {writers} writers, {} retried across a fault, failover median {:?} max {:?}, 0 acknowledged writes lost (checked below)",
        acked.len(),
        acked.iter().filter(|a| a.tries > 1).count(),
        failovers[failovers.len() / 2],
        failovers[failovers.len() - 1]
    );

    // Keys acknowledged before the failover(s), sent again to the primary: the first answer.
    let all: Vec<&Server> = nodes.iter().collect();
    let (primary, _) = wait_primary(&all, FAILOVER_BOUND);
    let c = client();
    for a in acked.iter().take(3) {
        let (status, v) = send_write(
            &c,
            &all[primary].base,
            "/api/v1/orders",
            &cast.service_token,
            Some(&a.key),
            &a.body,
        )
        .expect("replay answers");
        assert_eq!(status, 201, "{v}");
        assert_eq!(v["order"]["orderId"], json!(a.order), "{v}");
    }
    wait_converged(&all);
    assert_all_acked_readable(&all, &cast, &acked);
}

/// The primary loses its only NATS server while it keeps running: none of the writes sent to
/// it is acknowledged, none of them shows up anywhere, a replica on the rest of the NATS cluster
/// takes over, and when NATS comes back the old primary rejoins as a replica with the new
/// primary's writes.
#[test]
fn partitioned_primary_acknowledges_nothing_and_loses_nothing() {
    let _serial = serial();
    let mut nats = NatsCluster::start(3);
    // The node of NATS server i talks to server i only (the harness advertises no other).
    let a = node(&nats.url(0), "part", 3);
    wait_until("node A primary", FAILOVER_BOUND, &[&a], || {
        is_ready_as(&a, "primary")
    });
    let b = node(&nats.url(1), "part", 3);
    let c = node(&nats.url(2), "part", 3);
    let all = [&a, &b, &c];
    let cast = Cast::new();
    let http = client();
    let mut acked = Vec::new();
    for n in 0..6 {
        acked.push(
            place_and_maybe_accept(&http, std::slice::from_ref(&a.base), &cast, n)
                .expect("write via A"),
        );
    }
    wait_converged(&all);

    nats.kill9(0);
    // Writes sent to A from now on: none may be acknowledged (A cannot reach the stream).
    let refused: Vec<(String, Value, u16)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    let c = client();
                    let key = format!("partition-{}", Uuid::new_v4());
                    let body = cast.order_body("CashOnDelivery");
                    let status = send_write(
                        &c,
                        &a.base,
                        "/api/v1/orders",
                        &cast.service_token,
                        Some(&key),
                        &body,
                    )
                    .map(|(s, _)| s)
                    .unwrap_or(0);
                    (key, body, status)
                })
            })
            .collect();
        hs.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    for (key, _, status) in &refused {
        assert!(
            !(200..300).contains(status),
            "partitioned A acknowledged {key} ({status})\n{}",
            report(&all)
        );
    }
    let (p, failover) = wait_primary(&[&b, &c], FAILOVER_BOUND);
    eprintln!("partition trial: B/C took over {failover:?} after the writes to A were refused");
    let survivors = [&b, &c];
    wait_until("A no longer a ready primary", FAILOVER_BOUND, &all, || {
        !is_ready_as(&a, "primary")
    });
    // The refused keys, retried through the new primary, land exactly once.
    for (key, body, _) in &refused {
        let (v, _) = until_acked(
            &http,
            std::slice::from_ref(&survivors[p].base),
            0,
            "/api/v1/orders",
            &cast.service_token,
            Some(key),
            body,
        )
        .expect("retry through the new primary");
        acked.push(Acked {
            key: key.clone(),
            body: body.clone(),
            order: v["order"]["orderId"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("orderId"),
            version: 1,
            tries: 2,
        });
    }
    wait_converged(&survivors);
    assert_all_acked_readable(&survivors, &cast, &acked);

    // NATS server 0 back: A catches up as a replica; one primary in the region.
    nats.restart(0);
    wait_converged(&all);
    assert_eq!(sole_primary(&all).map(|i| i != 0), Some(true));
    assert_all_acked_readable(&all, &cast, &acked);
}

/// One of three NATS servers dies (the one leading the region's stream): writes through the
/// ordertrack nodes go on (the stream is R3), and every acknowledged one is readable everywhere.
#[test]
fn writes_continue_with_one_of_three_nats_servers_killed() {
    let _serial = serial();
    let mut nats = NatsCluster::start(3);
    let urls = nats.urls();
    let nodes: Vec<Server> = (0..2).map(|_| node(&urls, "natsdown", 3)).collect();
    let all: Vec<&Server> = nodes.iter().collect();
    let cast = Cast::new();
    wait_primary(&all, FAILOVER_BOUND);
    let bases = bases_of(&all);

    let stop = AtomicBool::new(false);
    let acked_count = AtomicUsize::new(0);
    let (acked, failed) = std::thread::scope(|s| {
        let load = s.spawn(|| write_load(&bases, &cast, 2, &stop, &acked_count));
        wait_until("10 writes before", RETRY_BOUND, &all, || {
            acked_count.load(Ordering::Relaxed) >= 10
        });
        let victim = nats.stream_leader("ORDERTRACK_natsdown");
        eprintln!(
            "killing NATS {}, the stream's leader",
            nats.nodes[victim].name
        );
        nats.kill9(victim);
        let before = acked_count.load(Ordering::Relaxed);
        let took = wait_until(
            "10 writes after the NATS server died",
            RETRY_BOUND,
            &all,
            || acked_count.load(Ordering::Relaxed) >= before + 10,
        );
        eprintln!("NATS-down trial: 10 more writes acknowledged {took:?} after the kill");
        stop.store(true, Ordering::Relaxed);
        load.join().unwrap_or_default()
    });
    assert!(failed.is_empty(), "writes failed: {failed:#?}");
    wait_converged(&all);
    assert_all_acked_readable(&all, &cast, &acked);
}

/// A new node with an empty data directory catches up from the stream (every order readable,
/// its hub subscribers get new events once, in order); a replica killed with -9 and restarted
/// resumes at its applied sequence (it applies only what it missed: counts and versions right).
#[test]
fn new_node_catches_up_and_restarted_replica_resumes_where_it_was() {
    let _serial = serial();
    let nats = NatsCluster::single();
    let urls = nats.urls();
    let p = node(&urls, "catchup", 1);
    wait_until("first node primary", FAILOVER_BOUND, &[&p], || {
        is_ready_as(&p, "primary")
    });
    let mut r = node(&urls, "catchup", 1);
    let cast = Cast::new();
    let http = client();
    let bases = vec![p.base.clone(), r.base.clone()];
    let mut acked: Vec<Acked> = (0..20)
        .map(|n| place_and_maybe_accept(&http, &bases, &cast, n).expect("write"))
        .collect();

    // A new, empty node.
    let fresh = node(&urls, "catchup", 1);
    wait_converged(&[&p, &r, &fresh]);
    assert_eq!(readyz(&fresh)["role"], "replica");
    assert_all_acked_readable(&[&p, &r, &fresh], &cast, &acked);

    // Its hub subscribers (and the replica's) get the next changes once, in order.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let target = acked
        .iter()
        .position(|a| a.version == 2)
        .expect("an accepted order");
    let order = acked[target].order;
    let mut subs: Vec<JsonHub> = [&fresh, &r]
        .iter()
        .map(|s| {
            rt.block_on(async {
                let mut h = JsonHub::connect(s.port, "restaurant-orders", &cast.staff_token).await;
                h.subscribe_restaurant(cast.restaurant).await;
                h
            })
        })
        .collect();
    for action in ["preparing", "ready"] {
        let path = format!("/api/v1/orders/{order}/{action}");
        until_acked(&http, &bases, 0, &path, &cast.staff_token, None, &json!({}))
            .expect("transition");
    }
    acked[target].version = 4;
    for h in &mut subs {
        rt.block_on(async {
            let mut seen = Vec::new();
            for _ in 0..2 {
                let (name, dto) = h.event().await;
                assert_eq!(name, "ReceiveOrderStatusChanged", "{dto}");
                assert_eq!(dto["orderId"], json!(order), "{dto}");
                seen.push(dto["status"].as_str().unwrap_or_default().to_string());
            }
            assert_eq!(seen, ["Preparing", "ReadyForDelivery"]);
            h.quiet(Duration::from_millis(500)).await;
        });
    }
    drop(subs);

    // kill -9 the replica, write on, restart it: it applies exactly what it missed.
    wait_converged(&[&p, &r, &fresh]);
    let seq_at_kill = applied_seq(&r);
    r.kill9();
    for n in 0..10 {
        acked.push(
            place_and_maybe_accept(&http, std::slice::from_ref(&p.base), &cast, n).expect("write"),
        );
    }
    r.restart();
    let head = wait_converged(&[&p, &r, &fresh]);
    let applied_after_restart = common::metric(&r, "ordertrack_cluster_applied_total");
    assert_eq!(
        applied_after_restart,
        (head - seq_at_kill) as f64,
        "the restarted replica applied another number of records than it missed ({seq_at_kill} -> {head})"
    );
    assert_all_acked_readable(&[&p, &r, &fresh], &cast, &acked);
}
