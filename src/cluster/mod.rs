//! Cluster mode (`--nats URL… --cluster NAME`): a region as one primary and replicas over NATS
//! JetStream. This module owns everything about NATS (the only one that uses `async-nats`);
//! without `--nats` none of it is started.
//!
//! The stream `ORDERTRACK_<NAME>` is the region's log and each node's redb file a materialized
//! view of it. The primary's writer appends each batch's redo record to the stream, on
//! condition that the stream ends where its database does (`Nats-Expected-Last-Sequence`), and
//! commits and answers only after JetStream acknowledged it: a node that lost the lease (or
//! never had it) cannot append, whatever it believes (fencing). Replicas apply the stream in
//! order, each record exactly once (`META["stream_seq"]`). The lease, key `primary` in the
//! key-value bucket `ordertrack_<NAME>_lease` (max age = the lease TTL), says who should be
//! primary; only a node that applied the whole stream takes it. `docs/cluster.md` has the
//! design and its bounds.
//!
//! `mod.rs` holds the settings, the node's shared state and the writer's `Replicator`;
//! `task.rs` the async side (connection, stream and bucket, catch-up, lease).

mod task;

use crate::metrics::{ClusterGauges, Metrics};
use crate::store::{ReplicateError, Replicator, Store, WriterHandle};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What `--nats`, `--cluster` and the `--cluster-*` settings resolve to.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// NATS server URLs (may carry credentials: never logged as given, see [`redact`]).
    pub urls: Vec<String>,
    /// The cluster's name: [A-Za-z0-9_-]+.
    pub name: String,
    /// This node's base URL, to which other nodes forward writes while it is the primary.
    pub advertise: String,
    pub lease_ttl: Duration,
    /// JetStream replicas of the stream and the bucket.
    pub replicas: usize,
    /// Records a replica may trail the log before `/readyz` says it is not ready.
    pub max_lag: u64,
}

#[derive(Debug, Error)]
pub enum ClusterError {
    #[error("bad --cluster '{0}': use letters, digits, '_' and '-' only")]
    Name(String),
    #[error("bad --nats '{0}': {1}")]
    Url(String, &'static str),
}

impl ClusterSettings {
    /// The stream holding the log.
    pub fn stream(&self) -> String {
        format!("ORDERTRACK_{}", self.name)
    }

    /// The subject records are published on.
    pub fn subject(&self) -> String {
        format!("ordertrack.{}.log", self.name)
    }

    /// The key-value bucket holding the lease.
    pub fn bucket(&self) -> String {
        format!("ordertrack_{}_lease", self.name)
    }
}

/// Checks a cluster name: the stream, subject and bucket names are made from it.
pub fn check_name(name: &str) -> Result<(), ClusterError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ClusterError::Name(name.to_string()))
    }
}

/// Splits `--nats` into URLs and checks each names a host (`nats://`, `tls://` or none).
pub fn parse_urls(list: &str) -> Result<Vec<String>, ClusterError> {
    let urls: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        return Err(ClusterError::Url(String::new(), "no URL given"));
    }
    for u in &urls {
        let rest = match u.split_once("://") {
            Some(("nats" | "tls", rest)) => rest,
            Some(_) => return Err(ClusterError::Url(redact(u), "use nats:// or tls://")),
            None => u.as_str(),
        };
        let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        if host.is_empty() || host.starts_with(':') {
            return Err(ClusterError::Url(redact(u), "no host"));
        }
    }
    Ok(urls)
}

/// A NATS URL without its credentials (`nats://user:pass@host` → `nats://***@host`), for logs
/// and errors.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (format!("{s}://"), r),
        None => (String::new(), url),
    };
    match rest.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}***@{host}"),
        None => url.to_string(),
    }
}

/// This node's cluster state, shared by the writer (through [`Replicator`]), the HTTP layer
/// (forwarding, `/readyz`) and the cluster task.
pub struct Cluster {
    settings: ClusterSettings,
    gauges: Arc<Metrics>,
    /// The advertised URL of the primary, as last read from the lease (or this node's own).
    primary: Mutex<Option<String>>,
    /// Set once this node has applied the whole log since it started (or was the primary).
    caught_up: AtomicBool,
    /// The newest stream sequence this node knows of.
    log_end: AtomicU64,
    /// The writer asks the task to step down (a refused append, a record in the log that the
    /// database failed to commit).
    step_down: Notify,
    /// The JetStream context, once connected (the writer appends through it).
    js: Mutex<Option<async_nats::jetstream::Context>>,
    /// The runtime the writer thread blocks on for an append.
    rt: tokio::runtime::Handle,
    /// The largest record NATS takes (its max payload less room for headers).
    max_record: AtomicUsize,
    /// Whether the last look at the log and the lease (every third of the TTL) worked and the
    /// log is at least as long as this database: a replica that cannot reach NATS cannot know
    /// how far behind it is, and one ahead of the log (the stream was replaced) follows
    /// nothing; neither is ready.
    reachable: AtomicBool,
}

/// NATS' default max payload (1 MiB) less room for the headers of a publish.
const DEFAULT_MAX_RECORD: usize = 1024 * 1024 - HEADER_ROOM;
/// Bytes of a publish besides the record: subject, reply inbox, the expected-last-sequence
/// header.
const HEADER_ROOM: usize = 512;

/// What `/readyz` says in cluster mode.
#[derive(Debug, Clone)]
pub struct Readiness {
    pub ready: bool,
    pub role: &'static str,
    pub applied_seq: u64,
    pub lag_records: u64,
    pub primary: Option<String>,
}

impl Cluster {
    fn g(&self) -> &ClusterGauges {
        &self.gauges.cluster
    }

    pub fn is_primary(&self) -> bool {
        self.g().role.load(Relaxed) == ClusterGauges::PRIMARY
    }

    /// Where writes go now: the primary's advertised URL, unless it is this node's own.
    pub fn forward_target(&self) -> Option<String> {
        let p = self
            .primary
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        p.filter(|p| *p != self.settings.advertise)
    }

    /// A write was forwarded to the primary.
    pub fn forwarded(&self) {
        self.g().forwarded_total.fetch_add(1, Relaxed);
    }

    pub fn readiness(&self) -> Readiness {
        let g = self.g();
        let primary = self.is_primary();
        let lag = g.lag_records.load(Relaxed);
        Readiness {
            ready: primary
                || (self.caught_up.load(Relaxed)
                    && self.reachable.load(Relaxed)
                    && lag <= self.settings.max_lag),
            role: if primary { "primary" } else { "replica" },
            applied_seq: g.applied_seq.load(Relaxed),
            lag_records: if primary { 0 } else { lag },
            primary: self
                .primary
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    fn set_primary(&self, url: Option<String>) {
        *self.primary.lock().unwrap_or_else(|e| e.into_inner()) = url;
    }

    /// Records that the log is applied up to `seq` and ends at least at `end`.
    fn advance(&self, seq: u64, end: u64) {
        let g = self.g();
        g.applied_seq.fetch_max(seq, Relaxed);
        let end = self.log_end.fetch_max(end, Relaxed).max(end);
        let applied = g.applied_seq.load(Relaxed);
        g.lag_records.store(end.saturating_sub(applied), Relaxed);
    }

    fn set_role(&self, role: u8) {
        let before = self.g().role.swap(role, Relaxed);
        if before != role && before != ClusterGauges::SINGLE {
            self.g().lease_changes_total.fetch_add(1, Relaxed);
        }
    }

    /// Stops appending at once; the task gives up the lease and catches up.
    fn demote(&self, why: &str) {
        if self.is_primary() {
            tracing::warn!(reason = why, "stepping down to replica");
        }
        self.set_role(ClusterGauges::REPLICA);
        self.step_down.notify_one();
    }
}

impl Replicator for Cluster {
    fn is_primary(&self) -> bool {
        Cluster::is_primary(self)
    }

    fn append(&self, expected_last: u64, redo: &[u8]) -> Result<u64, ReplicateError> {
        use async_nats::jetstream::context::PublishErrorKind;
        if !self.is_primary() {
            return Err(ReplicateError::NotPrimary);
        }
        let js = self.js.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(js) = js else {
            return Err(ReplicateError::NotPrimary);
        };
        if redo.len() > self.max_record.load(Relaxed) {
            // One request alone larger than NATS takes: refuse it, but this is no reason to
            // step down.
            return Err(ReplicateError::Unavailable(format!(
                "a record of {} bytes exceeds the log's max payload",
                redo.len()
            )));
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SEQUENCE,
            expected_last.to_string().as_str(),
        );
        let subject = self.settings.subject();
        let payload = bytes::Bytes::copy_from_slice(redo);
        let wait = self.settings.lease_ttl;
        let acked = self.rt.block_on(async move {
            let sent = async {
                let ack = js.publish_with_headers(subject, headers, payload).await?;
                ack.await
            };
            tokio::time::timeout(wait, sent).await
        });
        match acked {
            Ok(Ok(ack)) => {
                self.advance(ack.sequence, ack.sequence);
                Ok(ack.sequence)
            }
            Ok(Err(e)) if e.kind() == PublishErrorKind::WrongLastSequence => {
                self.g().fenced_appends_total.fetch_add(1, Relaxed);
                self.demote("fenced: another node appended to the log");
                Err(ReplicateError::Fenced)
            }
            Ok(Err(e)) => {
                self.demote("the log refused an append");
                Err(ReplicateError::Unavailable(e.to_string()))
            }
            Err(_) => {
                self.demote("the log did not acknowledge in time");
                Err(ReplicateError::Unavailable(format!(
                    "no acknowledgement within {wait:?}"
                )))
            }
        }
    }

    fn diverged(&self) {
        self.demote("a record in the log failed to commit here");
    }

    fn max_record(&self) -> usize {
        self.max_record.load(Relaxed)
    }
}

/// Starts cluster mode: the node begins as a replica (not ready) and the task connects,
/// creates the stream and bucket when missing, catches up and competes for the lease. Returns
/// the shared state (for the writer and the HTTP layer); [`start`] runs the task.
pub fn new(settings: ClusterSettings, metrics: Arc<Metrics>) -> Arc<Cluster> {
    metrics.cluster.role.store(ClusterGauges::REPLICA, Relaxed);
    Arc::new(Cluster {
        settings,
        gauges: metrics,
        primary: Mutex::new(None),
        caught_up: AtomicBool::new(false),
        log_end: AtomicU64::new(0),
        step_down: Notify::new(),
        js: Mutex::new(None),
        rt: tokio::runtime::Handle::current(),
        max_record: AtomicUsize::new(DEFAULT_MAX_RECORD),
        reachable: AtomicBool::new(false),
    })
}

/// Runs the cluster task until `shutdown` (then a primary gives up its lease at once, so a
/// replica takes over without waiting for the TTL).
pub fn start(
    cluster: Arc<Cluster>,
    store: Store,
    writer: WriterHandle,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(task::run(cluster, store, writer, shutdown))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_urls() {
        assert!(check_name("eu-west_1").is_ok());
        for bad in ["", "a.b", "a b", "a*", "a>"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_urls("nats://a:4222, b:4223").unwrap(),
            vec!["nats://a:4222".to_string(), "b:4223".to_string()]
        );
        assert!(parse_urls("http://a").is_err());
        assert!(parse_urls(" , ").is_err());
        assert_eq!(redact("nats://u:secret@h:1"), "nats://***@h:1");
        assert_eq!(redact("h:1"), "h:1");
        let e = parse_urls("ws://u:secret@h").unwrap_err().to_string();
        assert!(!e.contains("secret"), "{e}");
    }
}
