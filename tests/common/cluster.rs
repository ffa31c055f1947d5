//! Cluster-mode nodes for the tests: real `ordertrack serve --nats … --cluster …` processes on
//! free loopback ports against the real NATS servers of `nats.rs`, and what the tests ask them
//! through the binary's own interfaces (`/readyz` role and log position, `/metrics`).

use super::{client, Server};
use serde_json::Value;
use std::time::{Duration, Instant};

/// The lease TTL the tests run with: failover within a couple of seconds.
pub const LEASE_TTL: &str = "1500ms";
/// Bound for anything that should happen within a lease TTL or two plus catch-up on a busy
/// machine (a bound, not a measurement).
pub const FAILOVER_WAIT: Duration = Duration::from_secs(20);
/// Bound for a write to be readable on every node.
pub const REPLICATION_WAIT: Duration = Duration::from_secs(10);

/// A unique cluster name per test (stream and bucket names derive from it).
pub fn cluster_name(test: &str) -> String {
    format!("{test}_{}", std::process::id())
}

/// Starts a node of cluster `name` over the NATS servers `urls` (comma separated) with stream
/// replicas `replicas`; returns once its `/readyz` says ready (caught up with the log).
pub fn node(urls: &str, name: &str, replicas: usize, extra: &[&str]) -> Server {
    let replicas = replicas.to_string();
    let mut args = vec![
        "--nats",
        urls,
        "--cluster",
        name,
        "--cluster-replicas",
        &replicas,
        "--cluster-lease-ttl",
        LEASE_TTL,
    ];
    args.extend_from_slice(extra);
    Server::start_with(&args)
}

/// `/readyz` as (status code, JSON body); `None` when the node does not answer.
pub fn readyz(server: &Server) -> Option<(u16, Value)> {
    let r = client()
        .get(server.url("/readyz"))
        .timeout(Duration::from_secs(2))
        .send()
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().ok()?))
}

/// The node's role as `/readyz` says it (`None` when it does not answer).
pub fn role(server: &Server) -> Option<String> {
    readyz(server).and_then(|(_, v)| v["role"].as_str().map(str::to_string))
}

/// The newest record of the log the node's database includes.
pub fn applied_seq(server: &Server) -> Option<u64> {
    readyz(server).and_then(|(_, v)| v["appliedSeq"].as_u64())
}

/// Polls `f` every 50 ms until it holds or `within` passes; whether it held.
pub fn wait_for(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until exactly one of `nodes` (those answering) says it is the primary and every
/// answering node names it as the primary; returns its index.
pub fn the_primary(nodes: &[&Server], within: Duration) -> usize {
    let mut found = None;
    let agreed = wait_for(within, || {
        let states: Vec<Option<(u16, Value)>> = nodes.iter().map(|n| readyz(n)).collect();
        let primaries: Vec<usize> = states
            .iter()
            .enumerate()
            .filter(|(_, s)| s.as_ref().is_some_and(|(_, v)| v["role"] == "primary"))
            .map(|(i, _)| i)
            .collect();
        let [p] = primaries[..] else { return false };
        let url = &nodes[p].base;
        let all_agree = states
            .iter()
            .flatten()
            .all(|(_, v)| v["primary"].as_str() == Some(url.as_str()));
        found = Some(p);
        all_agree
    });
    assert!(
        agreed,
        "no single primary that every node names within {within:?}: {:?}",
        nodes.iter().map(|n| readyz(n)).collect::<Vec<_>>()
    );
    found.unwrap_or(0)
}

/// Waits until every node's database includes the same newest record of the log; returns it.
pub fn converged(nodes: &[&Server], within: Duration) -> u64 {
    let mut seq = 0;
    let ok = wait_for(within, || {
        let seqs: Vec<Option<u64>> = nodes.iter().map(|n| applied_seq(n)).collect();
        seq = seqs[0].unwrap_or(0);
        seqs.iter().all(|s| *s == Some(seq))
    });
    assert!(
        ok,
        "nodes did not converge within {within:?}: {:?}",
        nodes.iter().map(|n| applied_seq(n)).collect::<Vec<_>>()
    );
    seq
}

/// A labelled series from `/metrics` (`name{labels}` exactly), NaN when absent.
pub fn labelled_metric(server: &Server, series: &str) -> f64 {
    // Label values here hold no spaces, so the series ends at the line's first space, as an
    // unlabelled one does.
    super::metric(server, series)
}
