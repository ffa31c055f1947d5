//! Retention: the sweeper that keeps the file from growing forever. Finished orders (Delivered,
//! Cancelled, Rejected) older than `--retain-finished`, idempotency records older than
//! `--idempotency-ttl` and outbox events older than `--outbox-retention` are removed in small
//! steps, each one a request to the writer like any other write: it shares a batch, a commit
//! and a commit log record with the orders being placed at the same moment, so a removal is
//! durable and atomic (an order goes with its index entries and counter in one transaction, or
//! not at all, whatever kills the process). Between steps the sweeper pauses, so the writer is
//! never held for more than one bounded step.
//!
//! Each kind has an index in time order (`FINISHED`, `IDEM_EXPIRY`; the outbox is in time order
//! by itself), so a step costs O(rows removed), never a scan of what is kept.

use super::schema::*;
use super::wal::Tab;
use super::writer::{Tables, WriterHandle};
use super::{decode, StoreError};
use crate::domain::{Order, OrderEvent, Timestamp};
use redb::ReadableTable;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long each kind of data is kept; `None` keeps it forever.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    pub finished: Option<Duration>,
    pub idempotency: Option<Duration>,
    pub outbox: Option<Duration>,
}

impl Retention {
    fn is_off(&self) -> bool {
        self.finished.is_none() && self.idempotency.is_none() && self.outbox.is_none()
    }

    /// The outbox's effective retention: never longer than finished orders are kept, so a
    /// removed order leaves no event behind (a board resuming would otherwise replay events of
    /// an order that no longer exists).
    fn outbox_window(&self) -> Option<Duration> {
        match (self.outbox, self.finished) {
            (Some(o), Some(f)) => Some(o.min(f)),
            (o, f) => o.or(f),
        }
    }
}

/// One sweep step: remove at most `limit` rows of each kind.
#[derive(Clone, Copy, Debug)]
pub struct SweepRequest {
    pub retention: Retention,
    pub limit: usize,
}

/// What one step removed; `more` when a kind hit the limit (another step follows at once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub orders: u64,
    pub idempotency: u64,
    pub events: u64,
    pub more: bool,
}

impl Swept {
    pub fn removed(&self) -> u64 {
        self.orders + self.idempotency + self.events
    }
}

/// Rows of each kind one step removes at most. A step of 256 finished orders is ~1,500 row
/// removals: a few milliseconds of the writer's time (see docs/performance.md).
pub const STEP_LIMIT: usize = 256;
/// Pause between two steps of one pass, so queued writes get the writer in between.
const STEP_PAUSE: Duration = Duration::from_millis(5);

fn cutoff(now: Timestamp, keep: Option<Duration>) -> Option<Timestamp> {
    keep.map(|d| Timestamp(now.millis().saturating_sub(d.as_millis() as i64)))
}

/// Applies one step inside the writer's transaction.
pub(super) fn step(
    t: &mut Tables<'_>,
    now: Timestamp,
    req: &SweepRequest,
) -> Result<Swept, StoreError> {
    let limit = req.limit.max(1);
    let r = &req.retention;
    let mut out = Swept::default();
    if let Some(before) = cutoff(now, r.outbox_window()) {
        out.events = sweep_events(t, before, limit)?;
        out.more |= out.events as usize >= limit;
    }
    // Orders only once their events are gone (the outbox's window is never longer), so no
    // event outlives its order.
    if let (Some(before), false) = (cutoff(now, r.finished), out.more) {
        out.orders = sweep_orders(t, before, limit)?;
        out.more |= out.orders as usize >= limit;
    }
    if let Some(before) = cutoff(now, r.idempotency) {
        out.idempotency = sweep_idempotency(t, before, limit)?;
        out.more |= out.idempotency as usize >= limit;
    }
    for (key, n) in [
        (SWEPT_EVENTS, out.events),
        (SWEPT_ORDERS, out.orders),
        (SWEPT_IDEMPOTENCY, out.idempotency),
    ] {
        if n > 0 {
            let total = t.meta(key)? + n;
            t.set_meta(key, total)?;
        }
    }
    Ok(out)
}

/// Removes the oldest outbox events that occurred before `before`.
fn sweep_events(t: &mut Tables<'_>, before: Timestamp, limit: usize) -> Result<u64, StoreError> {
    let mut expired = Vec::new();
    for entry in t.outbox.iter().map_err(StoreError::io)? {
        let (k, v) = entry.map_err(StoreError::io)?;
        let event: OrderEvent = decode(v.value())?;
        if event.dto.occurred_on >= before || expired.len() >= limit {
            break;
        }
        expired.push(k.value());
    }
    for seq in &expired {
        t.outbox.remove(*seq).map_err(StoreError::io)?;
        t.redo.delete(Tab::Outbox, &seq.to_le_bytes());
    }
    Ok(expired.len() as u64)
}

/// Removes finished orders whose finishing time is before `before`, with both index entries,
/// their counter, their kitchen board entry and its counter, and their `FINISHED` entry.
fn sweep_orders(t: &mut Tables<'_>, before: Timestamp, limit: usize) -> Result<u64, StoreError> {
    let mut expired = Vec::new();
    for entry in t.finished.iter().map_err(StoreError::io)? {
        let (k, _) = entry.map_err(StoreError::io)?;
        let key = *k.value();
        if parse_finished_key(&key).0 >= before || expired.len() >= limit {
            break;
        }
        expired.push(key);
    }
    let mut removed = 0;
    for fk in &expired {
        let (_, id) = parse_finished_key(fk);
        let order: Option<Order> = match t.orders.get(id.as_bytes()).map_err(StoreError::io)? {
            Some(raw) => Some(decode(raw.value())?),
            None => None,
        };
        if let Some(o) = order {
            t.orders.remove(id.as_bytes()).map_err(StoreError::io)?;
            t.redo.delete(Tab::Orders, id.as_bytes());
            let ck = index_key(o.customer_id, o.placed_at, o.id);
            t.by_customer.remove(&ck).map_err(StoreError::io)?;
            t.redo.delete(Tab::ByCustomer, &ck);
            let rk = index_key(o.restaurant_id, o.placed_at, o.id);
            t.by_restaurant.remove(&rk).map_err(StoreError::io)?;
            t.redo.delete(Tab::ByRestaurant, &rk);
            t.bump_count(o.customer_id, o.status, -1)?;
            t.take_off_board(&o)?;
            removed += 1;
        }
        t.finished.remove(fk).map_err(StoreError::io)?;
        t.redo.delete(Tab::Finished, fk);
    }
    Ok(removed)
}

/// Removes idempotency records created before `before`.
fn sweep_idempotency(
    t: &mut Tables<'_>,
    before: Timestamp,
    limit: usize,
) -> Result<u64, StoreError> {
    let mut expired: Vec<Vec<u8>> = Vec::new();
    for entry in t.idem_expiry.iter().map_err(StoreError::io)? {
        let (k, _) = entry.map_err(StoreError::io)?;
        let key = k.value();
        let old = parse_idem_expiry_key(key).is_none_or(|(at, _)| at < before);
        if !old || expired.len() >= limit {
            break;
        }
        expired.push(key.to_vec());
    }
    for ek in &expired {
        if let Some((_, key)) = parse_idem_expiry_key(ek) {
            t.idem.remove(key).map_err(StoreError::io)?;
            t.redo.delete(Tab::Idempotency, key.as_bytes());
        }
        t.idem_expiry
            .remove(ek.as_slice())
            .map_err(StoreError::io)?;
        t.redo.delete(Tab::IdemExpiry, ek);
    }
    Ok(expired.len() as u64)
}

/// Runs a sweep pass now and then every `every` until `stop` is cancelled. A pass sends steps
/// until one removes less than its limit of every kind. Does nothing when nothing expires.
pub async fn run(
    writer: WriterHandle,
    retention: Retention,
    every: Duration,
    stop: CancellationToken,
) {
    if retention.is_off() {
        return;
    }
    let req = SweepRequest {
        retention,
        limit: STEP_LIMIT,
    };
    loop {
        let span = tracing::info_span!("sweep");
        let _ = tracing::Instrument::instrument(pass(&writer, req, &stop), span).await;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

async fn pass(writer: &WriterHandle, req: SweepRequest, stop: &CancellationToken) {
    let started = std::time::Instant::now();
    let mut total = Swept::default();
    loop {
        match writer.sweep(req).await {
            Ok(s) => {
                total.orders += s.orders;
                total.idempotency += s.idempotency;
                total.events += s.events;
                if !s.more {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "sweep step failed; the next pass tries again");
                break;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(STEP_PAUSE) => {}
        }
    }
    if total.removed() > 0 {
        tracing::info!(
            orders = total.orders,
            idempotency_keys = total.idempotency,
            events = total.events,
            millis = started.elapsed().as_millis() as u64,
            "swept expired data"
        );
    }
}
