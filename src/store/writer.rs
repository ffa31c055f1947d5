//! The single writer: one thread owns every write transaction. Requests arrive on a bounded
//! channel; the writer drains what is queued (up to a batch limit), applies the batch in one
//! transaction, commits once, hands the committed events to the event sink, and only then
//! answers each request. Nothing is acknowledged before its commit returned.
//!
//! In cluster mode (`--nats`) a `Replicator` stands between apply and commit: the primary's
//! writer appends each batch's redo record to the cluster's log, on condition that the log
//! ends where this database does, and commits only once the log acknowledged it; a refused
//! append aborts the batch (nobody is answered yes). Replicas apply the log's records here
//! (`WriterHandle::apply`), with the same code as commit log replay.

use super::schema::*;
use super::sweep::{SweepRequest, Swept};
use super::wal::{self, Redo, Tab};
use super::{decode, encode, IdempotencyRecord, Store, StoreError, QUICK_REPAIR};
use crate::domain::{
    may_act, ActRefusal, Action, ActionDetails, EventKind, NewOrder, Order, OrderEvent,
    OrderStatus, OrderStatusBroadcast, Principal, Step, Timestamp,
};
use redb::{Durability, ReadableTable, Table, WriteTransaction};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// Receives the events of every committed batch, in commit order.
pub trait EventSink: Send + Sync {
    fn publish(&self, events: Vec<Arc<OrderEvent>>);
}

/// The cluster's log (`src/cluster/`), seen from the writer thread.
pub trait Replicator: Send + Sync {
    /// Whether this node may write now (it is the primary). Writes reaching the writer of a
    /// node that is not are refused (`StoreError::Cluster`); sweeps are skipped.
    fn is_primary(&self) -> bool;
    /// Appends one batch's redo record, on condition that the log's newest record is
    /// `expected_last` (the newest this database includes), and waits for the log to
    /// acknowledge it; returns the record's sequence number. Called on the writer thread,
    /// before the batch commits: an error aborts the batch.
    fn append(&self, expected_last: u64, redo: &[u8]) -> Result<u64, ReplicateError>;
    /// The log acknowledged a record that this database then failed to commit: this node no
    /// longer follows the log and must catch up from it.
    fn diverged(&self);
    /// The largest record the log takes (NATS' max payload): a batch whose record would be
    /// larger is split in two and each half committed on its own.
    fn max_record(&self) -> usize;
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    #[error("this node is not the primary")]
    NotPrimary,
    #[error("fenced: another node appended to the cluster log first")]
    Fenced,
    #[error("the cluster log did not acknowledge: {0}")]
    Unavailable(String),
}

/// Observes batches (for metrics): batch size and commit duration.
pub trait BatchObserver: Send + Sync {
    fn batch_committed(&self, size: usize, commit_seconds: f64);
    /// A checkpoint (a durable redb commit, see `wal.rs`) took `seconds`.
    fn checkpointed(&self, _seconds: f64) {}
}

/// How a batch was made durable.
enum Durable {
    /// Nothing changed: no commit.
    Nothing,
    /// Through the commit log.
    Logged,
    /// By a durable redb commit, which took this many seconds.
    Checkpoint(f64),
    /// By a durable redb commit without a commit log.
    Direct,
    /// Not at all: the batch's record is too large for the cluster's log; split it.
    Split,
}

#[derive(Clone, Debug)]
pub struct WriterSettings {
    /// Queue capacity: callers wait (asynchronously) when it is full.
    pub queue: usize,
    /// Most requests applied in one transaction.
    pub max_batch: usize,
    /// How long an `Idempotency-Key` is remembered (`None`: forever). A retry after this is a
    /// new request even before the sweeper removed the record.
    pub idempotency_ttl: Option<Duration>,
}

impl Default for WriterSettings {
    fn default() -> Self {
        WriterSettings {
            queue: 4096,
            max_batch: 512,
            idempotency_ttl: None,
        }
    }
}

/// Place a priced order.
pub struct PlaceRequest {
    pub order: NewOrder,
    /// `(caller/key, sha256 of the request)` when an `Idempotency-Key` was sent.
    pub idempotency: Option<(String, [u8; 32])>,
}

#[derive(Debug)]
pub enum Placed {
    Created(Order),
    /// The same key and body were seen before: the first answer, unchanged.
    Replayed(Order),
    /// The key was used before with a different body.
    KeyReused,
}

/// Ask for a status action on an order.
pub struct ActRequest {
    pub order_id: Uuid,
    pub action: Action,
    pub principal: Principal,
    /// Versions named by `If-Match` (absent header or `*`: `None`). An empty list never matches.
    pub if_match: Option<Vec<u64>>,
    pub details: ActionDetails,
}

#[derive(Debug)]
pub enum Acted {
    Changed(Order),
    /// The order already had the action's target status.
    Unchanged(Order),
    /// Unknown id, or an order the caller may not see: answered identically.
    NotFound,
    Forbidden,
    InvalidStatus(Order),
    CustomerCannotCancel(Order),
    PreconditionFailed(Order),
}

/// Apply one record of the cluster's log (a replica).
pub struct ApplyRequest {
    /// Its sequence number in the log.
    pub seq: u64,
    /// Its redo payload, as the primary's writer built it.
    pub redo: bytes::Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Applied,
    /// The database already includes it (`seq` <= its `stream_seq`).
    Skipped,
}

/// A queued request, its reply channel, and (once applied) the answer waiting for the commit.
struct Job<Req, Res> {
    req: Req,
    reply: oneshot::Sender<Result<Res, StoreError>>,
    answer: Option<Res>,
}

impl<Req, Res> Job<Req, Res> {
    fn new(req: Req, reply: oneshot::Sender<Result<Res, StoreError>>) -> Self {
        Job {
            req,
            reply,
            answer: None,
        }
    }

    /// Sends the answer recorded before the commit.
    fn finish(self) {
        let result = self
            .answer
            .ok_or_else(|| StoreError::Unavailable("request was not applied".into()));
        let _ = self.reply.send(result);
    }

    fn fail(self, e: StoreError) {
        let _ = self.reply.send(Err(e));
    }
}

enum Command {
    Place(Box<Job<PlaceRequest, Placed>>),
    Act(Box<Job<ActRequest, Acted>>),
    /// One bounded step of the retention sweeper (`sweep.rs`).
    Sweep(Box<Job<SweepRequest, Swept>>),
    /// One record of the cluster's log (replicas).
    Apply(Box<Job<ApplyRequest, Applied>>),
}

impl Command {
    /// The order this command created or changed, once applied.
    fn changed_order(&self) -> Option<&Order> {
        match self {
            Command::Place(j) => match &j.answer {
                Some(Placed::Created(o)) => Some(o),
                _ => None,
            },
            Command::Act(j) => match &j.answer {
                Some(Acted::Changed(o)) => Some(o),
                _ => None,
            },
            Command::Sweep(_) | Command::Apply(_) => None,
        }
    }

    /// Whether the command wrote anything (else the batch may need no commit).
    fn wrote(&self) -> bool {
        match self {
            Command::Sweep(j) => j.answer.is_some_and(|s| s.removed() > 0),
            Command::Apply(j) => j.answer == Some(Applied::Applied),
            _ => self.changed_order().is_some(),
        }
    }

    fn finish(self) {
        match self {
            Command::Place(j) => j.finish(),
            Command::Act(j) => j.finish(),
            Command::Sweep(j) => j.finish(),
            Command::Apply(j) => j.finish(),
        }
    }

    fn fail(self, e: StoreError) {
        match self {
            Command::Place(j) => j.fail(e),
            Command::Act(j) => j.fail(e),
            Command::Sweep(j) => j.fail(e),
            Command::Apply(j) => j.fail(e),
        }
    }

    fn is_apply(&self) -> bool {
        matches!(self, Command::Apply(_))
    }
}

/// The async side of the writer: cheap to clone.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Command>,
}

impl WriterHandle {
    pub async fn place(&self, req: PlaceRequest) -> Result<Placed, StoreError> {
        self.call(|tx| Command::Place(Box::new(Job::new(req, tx))))
            .await
    }

    pub async fn act(&self, req: ActRequest) -> Result<Acted, StoreError> {
        self.call(|tx| Command::Act(Box::new(Job::new(req, tx))))
            .await
    }

    /// Runs one bounded sweep step (see `sweep.rs`), committed like any write.
    pub async fn sweep(&self, req: SweepRequest) -> Result<Swept, StoreError> {
        self.call(|tx| Command::Sweep(Box::new(Job::new(req, tx))))
            .await
    }

    /// Applies one record of the cluster's log (a replica), committed like any write.
    pub async fn apply(&self, req: ApplyRequest) -> Result<Applied, StoreError> {
        self.queue_apply(req)
            .await?
            .await
            .map_err(|_| StoreError::ShuttingDown)?
    }

    /// Queues one record of the cluster's log and returns the receiver of its answer without
    /// waiting for it, so a replica can keep several records in flight (they share batches).
    pub async fn queue_apply(
        &self,
        req: ApplyRequest,
    ) -> Result<oneshot::Receiver<Result<Applied, StoreError>>, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Apply(Box::new(Job::new(req, tx))))
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        Ok(rx)
    }

    /// Queues the command `make` builds around a reply channel and waits for the answer; a
    /// writer that is gone (shutdown) is `ShuttingDown`.
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        rx.await.map_err(|_| StoreError::ShuttingDown)?
    }
}

/// Starts the writer thread. It stops when every `WriterHandle` is dropped; join the returned
/// handle to know the last commit is done.
pub fn spawn(
    store: &Store,
    settings: WriterSettings,
    sink: Arc<dyn EventSink>,
    observer: Option<Arc<dyn BatchObserver>>,
) -> Result<(WriterHandle, JoinHandle<()>), StoreError> {
    spawn_replicated(store, settings, sink, observer, None)
}

/// [`spawn`], in cluster mode when `replicator` is given.
pub fn spawn_replicated(
    store: &Store,
    settings: WriterSettings,
    sink: Arc<dyn EventSink>,
    observer: Option<Arc<dyn BatchObserver>>,
    replicator: Option<Arc<dyn Replicator>>,
) -> Result<(WriterHandle, JoinHandle<()>), StoreError> {
    let (tx, rx) = mpsc::channel(settings.queue.max(1));
    let mut writer = Writer::new(store.clone(), settings.max_batch.max(1))?;
    writer.replicator = replicator;
    writer.idempotency_ttl_ms = settings
        .idempotency_ttl
        .map(|d| d.as_millis().min(i64::MAX as u128) as i64);
    let join = std::thread::Builder::new()
        .name("ordertrack-writer".into())
        .spawn(move || writer.run(rx, sink, observer))
        .map_err(StoreError::io)?;
    Ok((WriterHandle { tx }, join))
}

/// The tables of one write transaction. Only the methods below (and the sweeper's, in
/// `sweep.rs`) change a table, so that every write is also in the commit log record.
pub(super) struct Tables<'t> {
    pub(super) orders: Table<'t, &'static [u8; 16], &'static [u8]>,
    pub(super) by_customer: Table<'t, &'static [u8; 40], u8>,
    pub(super) by_restaurant: Table<'t, &'static [u8; 40], u8>,
    counts: Table<'t, &'static [u8; 17], u64>,
    pub(super) outbox: Table<'t, u64, &'static [u8]>,
    pub(super) idem: Table<'t, &'static str, &'static [u8]>,
    meta: Table<'t, &'static str, u64>,
    board: Table<'t, &'static [u8; 41], ()>,
    restaurant_counts: Table<'t, &'static [u8; 17], u64>,
    pub(super) finished: Table<'t, &'static [u8; 24], u8>,
    pub(super) idem_expiry: Table<'t, &'static [u8], u8>,
    /// Every write, for the commit log.
    pub(super) redo: &'t mut Redo,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction, redo: &'t mut Redo) -> Result<Self, StoreError> {
        Ok(Tables {
            orders: txn.open_table(ORDERS).map_err(StoreError::io)?,
            by_customer: txn.open_table(BY_CUSTOMER).map_err(StoreError::io)?,
            by_restaurant: txn.open_table(BY_RESTAURANT).map_err(StoreError::io)?,
            counts: txn.open_table(CUSTOMER_COUNTS).map_err(StoreError::io)?,
            outbox: txn.open_table(OUTBOX).map_err(StoreError::io)?,
            idem: txn.open_table(IDEMPOTENCY).map_err(StoreError::io)?,
            meta: txn.open_table(META).map_err(StoreError::io)?,
            board: txn.open_table(BOARD).map_err(StoreError::io)?,
            restaurant_counts: txn.open_table(RESTAURANT_COUNTS).map_err(StoreError::io)?,
            finished: txn.open_table(FINISHED).map_err(StoreError::io)?,
            idem_expiry: txn.open_table(IDEM_EXPIRY).map_err(StoreError::io)?,
            redo,
        })
    }

    pub(super) fn meta(&self, key: &str) -> Result<u64, StoreError> {
        Ok(self
            .meta
            .get(key)
            .map_err(StoreError::io)?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    pub(super) fn set_meta(&mut self, key: &str, v: u64) -> Result<(), StoreError> {
        self.meta.insert(key, v).map_err(StoreError::io)?;
        self.redo.put(Tab::Meta, key.as_bytes(), &v.to_le_bytes());
        Ok(())
    }

    fn put_event(&mut self, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.outbox.insert(seq, bytes).map_err(StoreError::io)?;
        self.redo.put(Tab::Outbox, &seq.to_le_bytes(), bytes);
        if seq > OUTBOX_KEEP {
            let old = seq - OUTBOX_KEEP;
            self.outbox.remove(old).map_err(StoreError::io)?;
            self.redo.delete(Tab::Outbox, &old.to_le_bytes());
        }
        Ok(())
    }

    /// Stores an idempotency record created at `created` and its sweeper index entry; `replaces`
    /// is the creation time of an expired record under the same key, whose entry goes.
    fn put_idempotency(
        &mut self,
        key: &str,
        bytes: &[u8],
        created: Timestamp,
        replaces: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        self.idem.insert(key, bytes).map_err(StoreError::io)?;
        self.redo.put(Tab::Idempotency, key.as_bytes(), bytes);
        if let Some(old) = replaces {
            let k = idem_expiry_key(old, key);
            self.idem_expiry
                .remove(k.as_slice())
                .map_err(StoreError::io)?;
            self.redo.delete(Tab::IdemExpiry, &k);
        }
        let k = idem_expiry_key(created, key);
        self.idem_expiry
            .insert(k.as_slice(), 0)
            .map_err(StoreError::io)?;
        self.redo.put(Tab::IdemExpiry, &k, &[0]);
        Ok(())
    }

    pub(super) fn bump_count(
        &mut self,
        customer: Uuid,
        status: OrderStatus,
        delta: i64,
    ) -> Result<(), StoreError> {
        let k = count_key(customer, status);
        bump(&mut self.counts, self.redo, Tab::Counts, &k, delta)
    }

    /// Moves `order` on the kitchen board from `old` (none for a new order) to its status,
    /// with the restaurant's per-status counters.
    fn move_on_board(&mut self, order: &Order, old: Option<OrderStatus>) -> Result<(), StoreError> {
        let r = order.restaurant_id;
        if let Some(old) = old {
            let k = board_key(r, old, order.placed_at, order.id);
            self.board.remove(&k).map_err(StoreError::io)?;
            self.redo.delete(Tab::Board, &k);
            let ck = count_key(r, old);
            bump(
                &mut self.restaurant_counts,
                self.redo,
                Tab::RestaurantCounts,
                &ck,
                -1,
            )?;
        }
        let k = board_key(r, order.status, order.placed_at, order.id);
        self.board.insert(&k, ()).map_err(StoreError::io)?;
        self.redo.put(Tab::Board, &k, &[]);
        let ck = count_key(r, order.status);
        bump(
            &mut self.restaurant_counts,
            self.redo,
            Tab::RestaurantCounts,
            &ck,
            1,
        )
    }

    /// Takes `order` off the kitchen board with its restaurant counter (the sweeper removing a
    /// finished order).
    pub(super) fn take_off_board(&mut self, order: &Order) -> Result<(), StoreError> {
        let k = board_key(order.restaurant_id, order.status, order.placed_at, order.id);
        self.board.remove(&k).map_err(StoreError::io)?;
        self.redo.delete(Tab::Board, &k);
        let ck = count_key(order.restaurant_id, order.status);
        bump(
            &mut self.restaurant_counts,
            self.redo,
            Tab::RestaurantCounts,
            &ck,
            -1,
        )
    }

    fn put_order(&mut self, order: &Order) -> Result<(), StoreError> {
        let bytes = encode(order)?;
        self.orders
            .insert(order.id.as_bytes(), bytes.as_slice())
            .map_err(StoreError::io)?;
        self.redo.put(Tab::Orders, order.id.as_bytes(), &bytes);
        let code = order.status.code();
        let ck = index_key(order.customer_id, order.placed_at, order.id);
        self.by_customer.insert(&ck, code).map_err(StoreError::io)?;
        self.redo.put(Tab::ByCustomer, &ck, &[code]);
        let rk = index_key(order.restaurant_id, order.placed_at, order.id);
        self.by_restaurant
            .insert(&rk, code)
            .map_err(StoreError::io)?;
        self.redo.put(Tab::ByRestaurant, &rk, &[code]);
        if order.status.is_terminal() {
            // A finished order never changes again: its entry is written once.
            let fk = finished_key(order.updated_at, order.id);
            self.finished.insert(&fk, code).map_err(StoreError::io)?;
            self.redo.put(Tab::Finished, &fk, &[code]);
        }
        Ok(())
    }
}

/// Adds `delta` to the counter at `k` (removed at zero), recording the write for the log.
/// A META counter as `txn` sees it (0 when unset).
fn meta_value(txn: &WriteTransaction, key: &str) -> Result<u64, StoreError> {
    let meta = txn.open_table(META).map_err(StoreError::io)?;
    let v = meta.get(key).map_err(StoreError::io)?.map(|v| v.value());
    Ok(v.unwrap_or(0))
}

/// Appends the batch's record to the cluster's log, on condition that the log ends where this
/// database does, and records the new end in META (in the same transaction). The record sent
/// holds the batch's writes only; the local commit log also gets the new `stream_seq`.
fn append_to_log(
    r: &dyn Replicator,
    txn: &WriteTransaction,
    redo: &mut Redo,
) -> Result<u64, StoreError> {
    let expected = meta_value(txn, STREAM_SEQ)?;
    let seq = r
        .append(expected, redo.bytes())
        .map_err(|e| StoreError::Cluster(e.to_string()))?;
    let mut meta = txn.open_table(META).map_err(StoreError::io)?;
    meta.insert(STREAM_SEQ, seq).map_err(StoreError::io)?;
    redo.put(Tab::Meta, STREAM_SEQ.as_bytes(), &seq.to_le_bytes());
    Ok(seq)
}

fn bump(
    table: &mut Table<'_, &'static [u8; 17], u64>,
    redo: &mut Redo,
    tab: Tab,
    k: &[u8; 17],
    delta: i64,
) -> Result<(), StoreError> {
    let cur = table
        .get(k)
        .map_err(StoreError::io)?
        .map(|v| v.value())
        .unwrap_or(0);
    let next = (cur as i64 + delta).max(0) as u64;
    if next == 0 {
        table.remove(k).map_err(StoreError::io)?;
        redo.delete(tab, k);
    } else {
        table.insert(k, next).map_err(StoreError::io)?;
        redo.put(tab, k, &next.to_le_bytes());
    }
    Ok(())
}

/// A version-7 event id from the writer's clock and the thread's userspace CSPRNG. `Uuid::now_v7`
/// asked the kernel for its random bits (one `getrandom` syscall per event, the most frequent
/// syscall of a commit); event ids only need to be unique (`sequence` orders events).
fn event_id(at: Timestamp) -> Uuid {
    let millis = u64::try_from(at.millis()).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(millis, &rand::random()).into_uuid()
}

struct Writer {
    store: Store,
    max_batch: usize,
    /// The writer's clock never goes backwards, even if the system clock does.
    last_now: i64,
    /// Recycled buffer of events of the current batch.
    events: Vec<Arc<OrderEvent>>,
    /// Recycled buffer of the current batch's writes (the commit log record).
    redo: Redo,
    /// `WriterSettings::idempotency_ttl` in milliseconds.
    idempotency_ttl_ms: Option<i64>,
    /// Cluster mode: the log every batch is appended to (primary) or applied from (replica).
    replicator: Option<Arc<dyn Replicator>>,
    /// Orders written by the log records of the current batch (a replica), for the heads.
    replicated: Vec<Order>,
}

impl Writer {
    fn new(store: Store, max_batch: usize) -> Result<Self, StoreError> {
        let last_now = {
            use redb::ReadableDatabase;
            let db = store.db()?;
            let txn = db.begin_read().map_err(StoreError::io)?;
            let meta = txn.open_table(META).map_err(StoreError::io)?;
            meta.get(CLOCK)
                .map_err(StoreError::io)?
                .map(|v| v.value() as i64)
                .unwrap_or(0)
        };
        Ok(Writer {
            store,
            max_batch,
            last_now,
            events: Vec::new(),
            redo: Redo::default(),
            idempotency_ttl_ms: None,
            replicator: None,
            replicated: Vec::new(),
        })
    }

    fn now(&mut self) -> Timestamp {
        let sys = chrono::Utc::now().timestamp_millis();
        self.last_now = self.last_now.max(sys);
        Timestamp(self.last_now)
    }

    fn run(
        &mut self,
        mut rx: mpsc::Receiver<Command>,
        sink: Arc<dyn EventSink>,
        observer: Option<Arc<dyn BatchObserver>>,
    ) {
        let mut batch = Vec::with_capacity(self.max_batch);
        while rx.blocking_recv_many(&mut batch, self.max_batch) > 0 {
            // Records of the cluster's log and the node's own writes never share a
            // transaction (they only meet while a node changes role).
            let mut applies: Vec<Command> = batch.extract_if(.., |c| c.is_apply()).collect();
            if !applies.is_empty() {
                self.process(&mut applies, &sink, &observer);
            }
            self.refuse_unless_primary(&mut batch);
            if !batch.is_empty() {
                self.process(&mut batch, &sink, &observer);
            }
        }
        if let Err(e) = self.store.checkpoint() {
            tracing::error!(error = %e, "final checkpoint failed; the commit log keeps the writes");
        }
        tracing::info!("writer stopped: every handle dropped");
    }

    /// In cluster mode on a node that is not the primary: refuses the batch's writes (the
    /// HTTP layer forwards writes to the primary, so only a request racing a change of role
    /// gets here) and skips its sweeps (only the primary sweeps; its removals replicate).
    fn refuse_unless_primary(&mut self, batch: &mut Vec<Command>) {
        let Some(r) = &self.replicator else { return };
        if r.is_primary() {
            return;
        }
        for cmd in batch.drain(..) {
            match cmd {
                Command::Sweep(mut j) => {
                    j.answer = Some(Swept::default());
                    j.finish();
                }
                other => other.fail(StoreError::Cluster(ReplicateError::NotPrimary.to_string())),
            }
        }
    }

    /// Applies, commits and answers one batch (all of it, or none on failure).
    fn process(
        &mut self,
        batch: &mut Vec<Command>,
        sink: &Arc<dyn EventSink>,
        observer: &Option<Arc<dyn BatchObserver>>,
    ) {
        {
            let size = batch.len();
            let started = Instant::now();
            let saved_clock = self.last_now;
            match self.apply(batch) {
                Ok(Durable::Split) => {
                    // Two smaller batches, one after the other: the same as if the requests
                    // had arrived in two groups.
                    self.events.clear();
                    self.replicated.clear();
                    let mut rest = batch.split_off(batch.len() / 2);
                    self.process(batch, sink, observer);
                    self.process(&mut rest, sink, observer);
                }
                Ok(how) => {
                    if let Some(o) = &observer {
                        o.batch_committed(size, started.elapsed().as_secs_f64());
                        if let Durable::Checkpoint(secs) = how {
                            o.checkpointed(secs);
                        }
                    }
                    for cmd in batch.iter() {
                        if let Some(order) = cmd.changed_order() {
                            self.store.committed(order);
                        }
                    }
                    for order in self.replicated.drain(..) {
                        self.store.committed(&order);
                    }
                    if !self.events.is_empty() {
                        sink.publish(std::mem::take(&mut self.events));
                    }
                    for cmd in batch.drain(..) {
                        cmd.finish();
                    }
                }
                Err(e) => {
                    self.last_now = saved_clock.max(self.last_now);
                    self.events.clear();
                    self.replicated.clear();
                    if let StoreError::Cluster(why) = &e {
                        // Refused by the cluster's log: nothing was committed, and a node that
                        // is not the primary says so (503, the client retries).
                        tracing::warn!(reason = %why, batch = size, "write batch not appended to the cluster log; answering 503");
                        for cmd in batch.drain(..) {
                            cmd.fail(StoreError::Cluster(why.clone()));
                        }
                        return;
                    }
                    tracing::error!(error = %e, batch = size, "write batch failed; answering 503");
                    for cmd in batch.drain(..) {
                        cmd.fail(StoreError::Unavailable(e.to_string()));
                    }
                    // redb refuses everything after an I/O error (disk full): reopen the file so
                    // reads go on and writes work again once the disk has room.
                    self.store.recover();
                }
            }
            batch.clear();
        }
    }

    /// Applies a batch in one transaction and commits it, recording each command's answer.
    /// Answers are only sent by the caller, after this returned `Ok` (the batch is durable).
    ///
    /// Durable means one of two things. Usually the batch's writes are appended to the commit
    /// log and synced there, then committed to redb without a sync. When the log asks for a
    /// checkpoint (1 MiB logged, half full, five seconds old, or after a failure), the batch is instead committed
    /// durably to redb itself, which also makes every earlier unsynced commit durable, and the
    /// log starts over.
    fn apply(&mut self, batch: &mut [Command]) -> Result<Durable, StoreError> {
        let db = self.store.writable_db()?;
        let mut txn = db.begin_write().map_err(StoreError::io)?;
        txn.set_quick_repair(QUICK_REPAIR);
        let mut redo = std::mem::take(&mut self.redo);
        redo.clear();
        let replicated = batch.first().is_some_and(Command::is_apply);
        let applied = if replicated {
            self.apply_records(&txn, &mut redo, batch)
        } else {
            self.apply_commands(&txn, &mut redo, batch)
        };
        let result = applied.and_then(|()| {
            if !batch.iter().any(Command::wrote) {
                // Only refusals, repeats and replays: their answers need no commit (and no
                // fsync).
                return txn
                    .abort()
                    .map(|()| Durable::Nothing)
                    .map_err(StoreError::io);
            }
            let appended = match (&self.replicator, replicated) {
                (Some(r), false) if batch.len() > 1 && redo.bytes().len() > r.max_record() => {
                    return txn.abort().map(|()| Durable::Split).map_err(StoreError::io);
                }
                (Some(r), false) => Some(append_to_log(r.as_ref(), &txn, &mut redo)?),
                _ => None,
            };
            let committed = self.commit(txn, &redo);
            if let (Err(_), Some(_), Some(r)) = (&committed, appended, &self.replicator) {
                // In the log but not in this file: the node must catch up from the log.
                r.diverged();
            }
            committed
        });
        self.redo = redo;
        result
    }

    /// Applies the batch's records of the cluster's log (a replica): each one exactly once, in
    /// log order, with the same code as commit log replay; then records the newest in META.
    /// Collects the orders and events the records wrote, for the heads and the event sink.
    fn apply_records(
        &mut self,
        txn: &WriteTransaction,
        redo: &mut Redo,
        batch: &mut [Command],
    ) -> Result<(), StoreError> {
        let mut seq = meta_value(txn, STREAM_SEQ)?;
        for cmd in batch.iter_mut() {
            let Command::Apply(job) = cmd else { continue };
            job.answer = Some(if job.req.seq <= seq {
                Applied::Skipped
            } else if job.req.seq == seq + 1 {
                seq += 1;
                Applied::Applied
            } else {
                return Err(StoreError::Cluster(format!(
                    "record {} of the cluster log follows {}, not {seq}",
                    job.req.seq,
                    job.req.seq - 1
                )));
            });
        }
        let payloads: Vec<&[u8]> = batch
            .iter()
            .filter_map(|c| match c {
                Command::Apply(j) if j.answer == Some(Applied::Applied) => Some(&j.req.redo[..]),
                _ => None,
            })
            .collect();
        if payloads.is_empty() {
            return Ok(());
        }
        wal::apply(&payloads, txn)?;
        for p in &payloads {
            redo.extend_raw(p);
            for (tab, key, value) in wal::puts(p)? {
                match tab {
                    Tab::Orders => self.replicated.push(decode(value)?),
                    Tab::Outbox => {
                        let mut e: OrderEvent = decode(value)?;
                        e.dto.sequence = Some(wal::number(key)?);
                        self.events.push(Arc::new(e));
                    }
                    _ => {}
                }
            }
        }
        let mut meta = txn.open_table(META).map_err(StoreError::io)?;
        meta.insert(STREAM_SEQ, seq).map_err(StoreError::io)?;
        redo.put(Tab::Meta, STREAM_SEQ.as_bytes(), &seq.to_le_bytes());
        // The primary's clock came with the records: this writer's never runs behind it.
        let clock = meta.get(CLOCK).map_err(StoreError::io)?.map(|v| v.value());
        self.last_now = self.last_now.max(clock.unwrap_or(0) as i64);
        Ok(())
    }

    fn apply_commands(
        &mut self,
        txn: &WriteTransaction,
        redo: &mut Redo,
        batch: &mut [Command],
    ) -> Result<(), StoreError> {
        let mut t = Tables::open(txn, redo)?;
        let mut seq = t.meta(EVENT_SEQ)?;
        for cmd in batch.iter_mut() {
            match cmd {
                Command::Place(job) => {
                    job.answer = Some(self.place(&mut t, &job.req, &mut seq)?);
                }
                Command::Act(job) => {
                    job.answer = Some(self.act(&mut t, &job.req, &mut seq)?);
                }
                Command::Sweep(job) => {
                    let now = self.now();
                    job.answer = Some(super::sweep::step(&mut t, now, &job.req)?);
                }
                // Never in the same batch (`run` separates them).
                Command::Apply(_) => {}
            }
        }
        t.set_meta(EVENT_SEQ, seq)?;
        t.set_meta(CLOCK, self.last_now.max(0) as u64)?;
        Ok(())
    }

    /// Makes the batch durable: through the commit log, or as a checkpoint.
    fn commit(&mut self, mut txn: WriteTransaction, redo: &Redo) -> Result<Durable, StoreError> {
        let mut guard = self.store.log();
        let Some(log) = guard.as_mut() else {
            return txn
                .commit()
                .map(|()| Durable::Direct)
                .map_err(StoreError::io);
        };
        let checkpoint = log.wants_checkpoint(redo.bytes().len());
        let seq = if checkpoint {
            log.last_seq()
        } else {
            log.next_seq()
        };
        {
            let mut meta = txn.open_table(META).map_err(StoreError::io)?;
            meta.insert(LOG_SEQ, seq).map_err(StoreError::io)?;
        }
        if checkpoint {
            let started = Instant::now();
            let committed = txn.commit();
            let seconds = started.elapsed().as_secs_f64();
            tracing::debug!(
                millis = seconds * 1000.0,
                "checkpoint: redb commit made durable"
            );
            if let Err(e) = committed {
                log.mark_checkpoint_due();
                return Err(StoreError::io(e));
            }
            log.checkpointed(seq);
            return Ok(Durable::Checkpoint(seconds));
        }
        // The record first: once it is synced the batch survives a crash, so redb's copy can
        // wait for the next checkpoint. A failed append drops (aborts) the transaction.
        txn.set_durability(Durability::None)
            .map_err(StoreError::io)?;
        log.append(redo.bytes()).map_err(StoreError::io)?;
        if let Err(e) = txn.commit() {
            log.revoke_last();
            return Err(StoreError::io(e));
        }
        Ok(Durable::Logged)
    }

    fn record_event(
        &mut self,
        t: &mut Tables<'_>,
        seq: &mut u64,
        kind: EventKind,
        order: &Order,
    ) -> Result<(), StoreError> {
        *seq += 1;
        let event = OrderEvent {
            seq: *seq,
            kind,
            customer_id: order.customer_id,
            dto: OrderStatusBroadcast {
                sequence: Some(*seq),
                ..OrderStatusBroadcast::of(
                    order,
                    order.updated_at,
                    Some(event_id(order.updated_at)),
                )
            },
        };
        let bytes = encode(&event)?;
        t.put_event(*seq, &bytes)?;
        self.events.push(Arc::new(event));
        Ok(())
    }

    fn place(
        &mut self,
        t: &mut Tables<'_>,
        req: &PlaceRequest,
        seq: &mut u64,
    ) -> Result<Placed, StoreError> {
        let now = self.now();
        let mut expired = None;
        if let Some((key, fp)) = &req.idempotency {
            if let Some(raw) = t.idem.get(key.as_str()).map_err(StoreError::io)? {
                let rec: IdempotencyRecord = decode(raw.value())?;
                let age = now.millis().saturating_sub(rec.created_ms);
                if self.idempotency_ttl_ms.is_some_and(|ttl| age >= ttl) {
                    // Past its time to live: a new request, even before the sweeper ran.
                    expired = Some(Timestamp(rec.created_ms));
                } else {
                    return Ok(if &rec.fingerprint == fp {
                        Placed::Replayed(rec.order)
                    } else {
                        Placed::KeyReused
                    });
                }
            }
        }
        let year_key = order_seq_key(now.year());
        let n = t.meta(&year_key)? + 1;
        t.set_meta(&year_key, n)?;
        let number = format!("ORD-{}-{:06}", now.year(), n);
        let mut ids = Uuid::new_v4;
        let order = req
            .order
            .clone()
            .into_order(Uuid::now_v7(), number, now, &mut ids);
        t.put_order(&order)?;
        t.bump_count(order.customer_id, order.status, 1)?;
        t.move_on_board(&order, None)?;
        if order.status == OrderStatus::Placed {
            self.record_event(t, seq, EventKind::OrderPlaced, &order)?;
        }
        if let Some((key, fp)) = &req.idempotency {
            let rec = IdempotencyRecord {
                fingerprint: *fp,
                order: order.clone(),
                created_ms: now.millis(),
            };
            let bytes = encode(&rec)?;
            t.put_idempotency(key, &bytes, now, expired)?;
        }
        Ok(Placed::Created(order))
    }

    fn act(
        &mut self,
        t: &mut Tables<'_>,
        req: &ActRequest,
        seq: &mut u64,
    ) -> Result<Acted, StoreError> {
        let Some(raw) = t
            .orders
            .get(req.order_id.as_bytes())
            .map_err(StoreError::io)?
        else {
            return Ok(Acted::NotFound);
        };
        let mut order: Order = decode(raw.value())?;
        drop(raw);
        let step = match may_act(&req.principal, &order, req.action, req.if_match.as_deref()) {
            Ok(step) => step,
            Err(refusal) => {
                return Ok(match refusal {
                    ActRefusal::Hidden => Acted::NotFound,
                    ActRefusal::Forbidden => Acted::Forbidden,
                    ActRefusal::PreconditionFailed => Acted::PreconditionFailed(order),
                    ActRefusal::CustomerCannotCancel => Acted::CustomerCannotCancel(order),
                    ActRefusal::InvalidStatus => Acted::InvalidStatus(order),
                })
            }
        };
        let Step::Move { to, events } = step else {
            return Ok(Acted::Unchanged(order));
        };
        let now = self.now();
        let old = order.advance(req.action, to, now, &req.details);
        t.put_order(&order)?;
        t.bump_count(order.customer_id, old, -1)?;
        t.bump_count(order.customer_id, to, 1)?;
        t.move_on_board(&order, Some(old))?;
        for kind in events {
            self.record_event(t, seq, kind, &order)?;
        }
        Ok(Acted::Changed(order))
    }
}
