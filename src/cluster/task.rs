//! The cluster task: connects to NATS, creates the stream and the lease bucket when missing,
//! then alternates between two phases for the life of the process:
//!
//! - **follow** (replica): an ordered consumer reads the log from the record after the
//!   database's `stream_seq`; each record goes to the writer (`WriterHandle::queue_apply`,
//!   several in flight) and a second task awaits their answers in order. Every third of the
//!   lease TTL the task learns the log's end and the primary (the lease's value); once the
//!   whole log is applied and no lease is held, it tries to create the lease. Having it, it
//!   stops consuming, checks again that the database ends where the log does, and only then
//!   becomes the primary.
//! - **lead** (primary): renews the lease every third of the TTL with an update on its own
//!   revision. A failed renewal, or the writer reporting a refused append, ends the phase at
//!   once: the node stops appending (`Cluster::demote`), gives the lease back if it still can,
//!   and follows again.

use super::{redact, Cluster};
use crate::metrics::ClusterGauges;
use crate::store::{Applied, ApplyRequest, Store, StoreError, WriterHandle};
use async_nats::jetstream::{self, consumer, kv, stream};
use futures_util::StreamExt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

/// The lease's key in the bucket.
const KEY: &str = "primary";
/// Pause before trying again after NATS failed.
const RETRY: Duration = Duration::from_millis(500);
/// Least time a replica behind the log may go without applying anything before its consumer is
/// started again.
const STALL: Duration = Duration::from_secs(2);
/// Longest wait for the log's consumer to open before trying again.
const OPEN_CONSUMER: Duration = Duration::from_secs(3);
/// Records handed to the writer and not answered yet, at most.
const IN_FLIGHT: usize = 1024;

/// One queued record: its sequence, when it was published (Unix nanoseconds), its answer.
type Pending = (u64, i128, oneshot::Receiver<Result<Applied, StoreError>>);

pub(super) async fn run(
    c: Arc<Cluster>,
    store: Store,
    writer: WriterHandle,
    shutdown: CancellationToken,
) {
    let Some((js, lease)) = connect(&c, &shutdown).await else {
        return;
    };
    *c.js.lock().unwrap_or_else(|e| e.into_inner()) = Some(js.clone());
    loop {
        let Some(revision) = follow(&c, &store, &writer, &js, &lease, &shutdown).await else {
            return;
        };
        lead(&c, &lease, revision, &shutdown).await;
        if shutdown.is_cancelled() {
            return;
        }
    }
}

/// Sleeps `d`, or returns `false` at once when shutting down.
async fn pause(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// Connects (retrying in the background until a server answers) and makes sure the stream
/// and the bucket exist.
async fn connect(
    c: &Cluster,
    shutdown: &CancellationToken,
) -> Option<(jetstream::Context, kv::Store)> {
    let s = &c.settings;
    let shown: Vec<String> = s.urls.iter().map(|u| redact(u)).collect();
    tracing::info!(nats = %shown.join(","), cluster = %s.name, advertise = %s.advertise, "cluster mode: connecting to NATS");
    let client = async_nats::ConnectOptions::new()
        .name(format!("ordertrack {}", s.advertise))
        .retry_on_initial_connect()
        .connection_timeout(s.lease_ttl.max(Duration::from_secs(1)))
        .connect(s.urls.as_slice())
        .await;
    let client = match client {
        Ok(client) => client,
        Err(e) => {
            // Only a malformed address fails here (connecting is retried): settings checked
            // the URLs at start, so this is unexpected.
            tracing::error!(error = %e, "cluster mode: cannot use the NATS addresses");
            return None;
        }
    };
    let js = jetstream::new(client.clone());
    loop {
        match tokio::time::timeout(Duration::from_secs(5), setup(&js, c)).await {
            Ok(Ok(lease)) => {
                let max = client.server_info().max_payload;
                if max > super::HEADER_ROOM {
                    c.max_record.store(max - super::HEADER_ROOM, Relaxed);
                }
                tracing::info!(stream = %s.stream(), bucket = %s.bucket(), "cluster log and lease bucket ready");
                return Some((js, lease));
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cluster log not ready yet; retrying"),
            Err(_) => tracing::warn!("NATS JetStream did not answer yet; retrying"),
        }
        if !pause(RETRY, shutdown).await {
            return None;
        }
    }
}

/// Creates the stream and the lease bucket when missing (file storage, the configured
/// replicas; the stream keeps every record).
async fn setup(js: &jetstream::Context, c: &Cluster) -> Result<kv::Store, String> {
    let s = &c.settings;
    js.get_or_create_stream(stream::Config {
        name: s.stream(),
        subjects: vec![s.subject()],
        storage: stream::StorageType::File,
        num_replicas: s.replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("stream {}: {e}", s.stream()))?;
    // The bucket's stream as async-nats would make it, created directly: its own
    // `create_key_value` first reads the account's limits, which it cannot parse from
    // nats-server 2.9 (Debian's).
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{}", s.bucket()),
        subjects: vec![format!("$KV.{}.>", s.bucket())],
        max_messages_per_subject: 1,
        max_age: s.lease_ttl,
        max_bytes: -1,
        max_message_size: -1,
        storage: stream::StorageType::File,
        num_replicas: s.replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("bucket {}: {e}", s.bucket()))?;
    js.get_key_value(s.bucket())
        .await
        .map_err(|e| format!("bucket {}: {e}", s.bucket()))
}

/// The lease's holder, if any (its advertised URL).
async fn holder(lease: &kv::Store) -> Result<Option<String>, String> {
    let entry = lease.entry(KEY).await.map_err(|e| e.to_string())?;
    Ok(entry
        .filter(|e| e.operation == kv::Operation::Put)
        .and_then(|e| serde_json::from_slice::<serde_json::Value>(&e.value).ok())
        .and_then(|v| v["node"].as_str().map(str::to_string)))
}

fn lease_value(c: &Cluster) -> bytes::Bytes {
    serde_json::json!({ "node": c.settings.advertise })
        .to_string()
        .into()
}

/// The newest sequence in the log.
async fn log_end(js: &jetstream::Context, c: &Cluster) -> Result<u64, String> {
    let stream = js
        .get_stream_no_info(c.settings.stream())
        .await
        .map_err(|e| e.to_string())?;
    let info = stream.get_info().await.map_err(|e| e.to_string())?;
    Ok(info.state.last_sequence)
}

/// Follows the log as a replica until this node takes the lease (its revision) or shuts down
/// (`None`).
async fn follow(
    c: &Arc<Cluster>,
    store: &Store,
    writer: &WriterHandle,
    js: &jetstream::Context,
    lease: &kv::Store,
    shutdown: &CancellationToken,
) -> Option<u64> {
    c.set_role(ClusterGauges::REPLICA);
    let every = (c.settings.lease_ttl / 3).max(Duration::from_millis(50));
    'restart: loop {
        let from = match store.stream_seq() {
            Ok(seq) => seq,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the database's log position; retrying");
                if !pause(RETRY, shutdown).await {
                    return None;
                }
                continue;
            }
        };
        c.advance(from, from);
        // Bounded well below the client's 10 s request timeout: while JetStream re-elects
        // after losing a server, a consumer request can go unanswered, and a node that waits
        // 10 s per attempt stays behind long after the cluster has recovered.
        let opened = tokio::time::timeout(OPEN_CONSUMER, open_consumer(js, c, from + 1)).await;
        let mut messages = match opened.unwrap_or_else(|_| Err("timed out".into())) {
            Ok(m) => m,
            Err(e) => {
                // Not following the log: not ready until it is read again.
                c.reachable.store(false, Relaxed);
                tracing::warn!(error = %e, "cannot read the cluster log; retrying");
                if !pause(RETRY, shutdown).await {
                    return None;
                }
                continue;
            }
        };
        let (pending, answers) = mpsc::channel::<Pending>(IN_FLIGHT);
        let failed = Arc::new(Notify::new());
        let acker = tokio::spawn(acknowledge(c.clone(), answers, failed.clone()));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The applied position and since when it has not moved while behind: a consumer that
        // stops delivering (it can, after its NATS server went away) is started again.
        let mut progress = (from, tokio::time::Instant::now());
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = failed.notified() => continue 'restart,
                m = messages.next() => {
                    let msg = match m {
                        Some(Ok(msg)) => msg,
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "reading the cluster log failed; resuming");
                            if !pause(RETRY, shutdown).await {
                                return None;
                            }
                            continue 'restart;
                        }
                        None => continue 'restart,
                    };
                    let Ok(info) = msg.info() else { continue };
                    let seq = info.stream_sequence;
                    let published = info.published.unix_timestamp_nanos();
                    c.advance(0, seq.saturating_add(info.pending));
                    let req = ApplyRequest { seq, redo: msg.payload.clone() };
                    let Ok(answer) = writer.queue_apply(req).await else {
                        return None; // the writer is gone: shutting down
                    };
                    if pending.send((seq, published, answer)).await.is_err() {
                        continue 'restart;
                    }
                }
                _ = tick.tick() => {
                    let looked = tokio::time::timeout(every, async {
                        Ok::<_, String>((log_end(js, c).await?, holder(lease).await?))
                    })
                    .await;
                    let (end, holder) = match looked {
                        Ok(Ok(found)) => found,
                        Ok(Err(e)) => {
                            c.reachable.store(false, Relaxed);
                            tracing::debug!(error = %e, "cannot read the log's end or the lease");
                            continue;
                        }
                        Err(_) => {
                            c.reachable.store(false, Relaxed);
                            continue;
                        }
                    };
                    let have = c.g().applied_seq.load(Relaxed);
                    if have > end {
                        // The log is shorter than this database (the stream was deleted or
                        // replaced): following it would be wrong and appending impossible.
                        if c.reachable.swap(false, Relaxed) || !c.caught_up.load(Relaxed) {
                            tracing::error!(database = have, log = end, "this database is ahead of the cluster log (was the stream deleted or replaced?): not ready, not taking the lease");
                            c.caught_up.store(true, Relaxed);
                        }
                        continue;
                    }
                    c.reachable.store(true, Relaxed);
                    c.advance(0, end);
                    if have != progress.0 || have >= c.log_end.load(Relaxed) {
                        progress = (have, tokio::time::Instant::now());
                    } else if progress.1.elapsed() >= c.settings.lease_ttl.max(STALL) {
                        tracing::warn!(applied = have, log = c.log_end.load(Relaxed), "reading the cluster log stalled; resuming");
                        continue 'restart;
                    }
                    let applied = c.g().applied_seq.load(Relaxed);
                    let caught_up = applied >= c.log_end.load(Relaxed);
                    if caught_up && !c.caught_up.swap(true, Relaxed) {
                        tracing::info!(applied, "caught up with the cluster log");
                    }
                    c.set_primary(holder.clone());
                    if !caught_up || holder.is_some() {
                        continue;
                    }
                    let Ok(revision) = lease.create(KEY, lease_value(c)).await else {
                        continue; // another node was quicker
                    };
                    // Stop reading and let every queued record commit before checking that
                    // the database ends where the log does.
                    drop(messages);
                    drop(pending);
                    let _ = acker.await;
                    let end = log_end(js, c).await;
                    let have = store.stream_seq();
                    match (end, have) {
                        (Ok(end), Ok(have)) if end == have => {
                            c.set_primary(Some(c.settings.advertise.clone()));
                            c.set_role(ClusterGauges::PRIMARY);
                            tracing::info!(log_seq = have, "took the lease: this node is the primary");
                            return Some(revision);
                        }
                        _ => {
                            give_up(lease, revision).await;
                            continue 'restart;
                        }
                    }
                }
            }
        }
    }
}

/// An ordered consumer of the log from `start` (ephemeral; it re-creates itself on gaps).
async fn open_consumer(
    js: &jetstream::Context,
    c: &Cluster,
    start: u64,
) -> Result<consumer::pull::Ordered, String> {
    let stream = js
        .get_stream_no_info(c.settings.stream())
        .await
        .map_err(|e| e.to_string())?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    consumer.messages().await.map_err(|e| e.to_string())
}

/// Awaits the writer's answers in log order and records the progress; on a failure tells the
/// follower to start over from the database's position.
async fn acknowledge(c: Arc<Cluster>, mut answers: mpsc::Receiver<Pending>, failed: Arc<Notify>) {
    while let Some((seq, published, answer)) = answers.recv().await {
        match answer.await {
            Ok(Ok(applied)) => {
                let g = c.g();
                if applied == Applied::Applied {
                    g.applied_total.fetch_add(1, Relaxed);
                }
                c.advance(seq, 0);
                let lag = if g.lag_records.load(Relaxed) > 0 {
                    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0) as i128;
                    ((now - published).max(0) / 1_000_000) as u64
                } else {
                    0
                };
                g.lag_millis.store(lag, Relaxed);
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, seq, "could not apply a record of the cluster log; resuming from the database's position");
                failed.notify_one();
                return;
            }
            Err(_) => return,
        }
    }
}

/// Holds the lease while it can be renewed and the writer appends; then stops appending and
/// gives the lease back.
async fn lead(c: &Cluster, lease: &kv::Store, mut revision: u64, shutdown: &CancellationToken) {
    let every = (c.settings.lease_ttl / 3).max(Duration::from_millis(50));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let why = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break "shutting down",
            _ = c.step_down.notified() => {
                if !c.is_primary() {
                    break "the log refused an append";
                }
            }
            _ = tick.tick() => {
                let renewed = tokio::time::timeout(every, lease.update(KEY, lease_value(c), revision)).await;
                match renewed {
                    Ok(Ok(r)) => revision = r,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "lease renewal refused");
                        break "lost the lease";
                    }
                    Err(_) => break "lease renewal timed out",
                }
            }
        }
    };
    c.demote(why);
    c.set_primary(None);
    give_up(lease, revision).await;
}

/// Deletes the lease if this node still holds `revision` of it, so another node need not wait
/// for it to expire.
async fn give_up(lease: &kv::Store, revision: u64) {
    let deleted =
        tokio::time::timeout(RETRY, lease.delete_expect_revision(KEY, Some(revision))).await;
    if !matches!(deleted, Ok(Ok(()))) {
        tracing::debug!("lease not deleted (held by another node or NATS unreachable); it expires");
    }
}
