//! The order store: an embedded redb file, one writer thread with group commit
//! (`writer.rs`), and read queries that run in their own read transactions and never wait for
//! the writer.

pub(crate) mod dirsync;
pub(crate) mod heads;
pub(crate) mod maintenance;
pub(crate) mod schema;
pub(crate) mod sweep;
pub(crate) mod wal;
pub(crate) mod writer;

use crate::domain::{Order, OrderEvent, OrderStatus};
use redb::{Database, ReadableDatabase};
use schema::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};
use thiserror::Error;
use uuid::Uuid;

pub use sweep::Retention;
pub use writer::{
    ActRequest, Acted, Applied, ApplyRequest, EventSink, PlaceRequest, Placed, ReplicateError,
    Replicator, WriterHandle, WriterSettings,
};

/// Every commit records redb's allocator state ("quick repair"), so reopening after a crash
/// or a failed write needs no repair walk over the whole file. Measured by
/// `tests/reliability_recovery.rs` on a 1,000,000-order (1.2 GiB) file: reopen after SIGKILL
/// 3.8 s without, 43 ms with; one idle single-row commit 2.2 ms without, 6.7 ms with (one
/// more fsync); group-commit throughput unchanged within noise. Recovery time without it grows
/// with the file, which only grows (orders are kept), so it is on.
pub const QUICK_REPAIR: bool = true;

#[derive(Debug, Error)]
pub enum StoreError {
    /// The database could not be read or written (disk full, I/O error, corruption).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The writer is gone (the server is shutting down).
    #[error("the store is shutting down")]
    ShuttingDown,
    #[error("stored data could not be decoded: {0}")]
    Corrupt(String),
    /// The data directory could not be created, or a name in it could not be made durable.
    #[error("{0}")]
    Dir(#[from] dirsync::DirError),
    /// Cluster mode: the write was not appended to the cluster's log (this node is not the
    /// primary, was fenced, or the log did not answer). Nothing was committed.
    #[error("cluster: {0}")]
    Cluster(String),
}

impl StoreError {
    pub(crate) fn io(e: impl std::fmt::Display) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// What an `Idempotency-Key` remembers: the request's fingerprint and the order as first
/// answered, so a retry gets the identical answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub fingerprint: [u8; 32],
    pub order: Order,
    pub created_ms: i64,
}

/// One page of a customer's history.
#[derive(Debug)]
pub struct HistoryPage {
    pub orders: Vec<crate::domain::OrderSummary>,
    pub total_count: u64,
}

/// One page of a restaurant's kitchen board, and the newest event sequence the same read
/// transaction saw (the cursor a board resumes from).
#[derive(Debug)]
pub struct BoardPage {
    pub orders: Vec<crate::domain::OrderSummary>,
    pub total_count: u64,
    pub cursor: u64,
}

/// What the outbox holds of one restaurant after a cursor (`Store::restaurant_events_after`).
#[derive(Debug)]
pub enum Replay {
    /// Every held event of the restaurant with a sequence in `(after, upto]`, oldest first;
    /// `upto` is the newest sequence committed when they were read.
    Events { events: Vec<OrderEvent>, upto: u64 },
    /// The outbox no longer holds every event after the cursor (or the cursor is newer than
    /// anything committed): the client must reload.
    Expired { oldest: u64, newest: u64 },
    /// More than the scan bound lies between the cursor and the newest event: reloading the
    /// board (O(page)) is cheaper than replaying.
    TooFar { newest: u64 },
}

/// Builds `BOARD` and `RESTAURANT_COUNTS` from the stored orders when this file predates them
/// (one durable transaction, after the commit log was applied). Returns how many orders it
/// indexed, `None` when there was nothing to do.
fn ensure_board(db: &Database) -> Result<Option<u64>, StoreError> {
    use redb::ReadableTable;
    {
        let rtx = db.begin_read().map_err(StoreError::io)?;
        let meta = rtx.open_table(META).map_err(StoreError::io)?;
        if meta.get(BOARD_BUILT).map_err(StoreError::io)?.is_some() {
            return Ok(None);
        }
    }
    let mut txn = db.begin_write().map_err(StoreError::io)?;
    txn.set_quick_repair(QUICK_REPAIR);
    let mut n = 0u64;
    {
        let orders = txn.open_table(ORDERS).map_err(StoreError::io)?;
        let mut board = txn.open_table(BOARD).map_err(StoreError::io)?;
        let mut counts = txn.open_table(RESTAURANT_COUNTS).map_err(StoreError::io)?;
        let mut tally: std::collections::BTreeMap<[u8; 17], u64> = Default::default();
        for entry in orders.iter().map_err(StoreError::io)? {
            let (_, v) = entry.map_err(StoreError::io)?;
            let o: Order = decode(v.value())?;
            board
                .insert(&board_key(o.restaurant_id, o.status, o.placed_at, o.id), ())
                .map_err(StoreError::io)?;
            *tally
                .entry(count_key(o.restaurant_id, o.status))
                .or_default() += 1;
            n += 1;
        }
        for (k, c) in tally {
            counts.insert(&k, c).map_err(StoreError::io)?;
        }
        let mut meta = txn.open_table(META).map_err(StoreError::io)?;
        meta.insert(BOARD_BUILT, 1).map_err(StoreError::io)?;
    }
    txn.commit().map_err(StoreError::io)?;
    Ok(Some(n))
}

/// Size and counters of the database, for `/metrics` and `db stats`.
#[derive(Debug, Default, Clone)]
pub struct StoreStats {
    pub orders: u64,
    pub events: u64,
    pub idempotency_keys: u64,
    pub file_bytes: u64,
    /// Rows the retention sweeper removed over the life of the file.
    pub swept_orders: u64,
    pub swept_idempotency_keys: u64,
    pub swept_events: u64,
}

/// Read access to the database. Cheap to clone.
///
/// The handle can be swapped: once a write fails with an I/O error (disk full, EIO) redb
/// refuses every later operation on that handle, so the writer closes it and opens the file
/// again (`recover`), which lets reads and, once space returns, writes work without a restart.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

struct Shared {
    /// `None` between closing a failed handle and a successful reopen.
    slot: RwLock<Slot>,
    path: PathBuf,
    settings: StoreSettings,
    heads: heads::LiveHeads,
    /// The commit log (`None` when turned off); only the writer thread uses it.
    log: Mutex<Option<wal::CommitLog>>,
}

struct Slot {
    db: Option<Arc<Database>>,
    /// When a reopen was last tried, to try at most once per `REOPEN_EVERY`.
    last_attempt: Option<Instant>,
}

/// Least time between two attempts to reopen the file after a failure.
const REOPEN_EVERY: Duration = Duration::from_millis(500);
/// How long a reopen waits for in-flight reads to release the old handle.
const RELEASE_WAIT: Duration = Duration::from_secs(2);

pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    rmp_serde::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec_named(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Settings for opening the database file.
#[derive(Clone, Debug)]
pub struct StoreSettings {
    pub cache_bytes: usize,
    /// Size of the commit log file (`wal.rs`); 0 turns the log off, and every batch is then a
    /// durable redb commit.
    pub commit_log_bytes: u64,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            cache_bytes: 64 * 1024 * 1024,
            commit_log_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Opens the commit log of `dir` and applies what redb lacks, durably. With the log turned off
/// a log left from an earlier run is still applied, then removed (the caller syncs `dir`).
fn open_log(
    dir: &Path,
    db: &Database,
    settings: &StoreSettings,
    db_id: u64,
) -> Result<Option<wal::CommitLog>, StoreError> {
    let path = dir.join(wal::LOG_FILE);
    if settings.commit_log_bytes == 0 && !path.exists() {
        return Ok(None);
    }
    let mut log =
        wal::CommitLog::open(&path, settings.commit_log_bytes, db_id).map_err(StoreError::io)?;
    let applied = wal::replay(db, &mut log, true)?;
    if applied > 0 {
        tracing::info!(records = applied, "applied the commit log's writes");
    }
    if settings.commit_log_bytes == 0 {
        drop(log);
        std::fs::remove_file(&path).map_err(StoreError::io)?;
        return Ok(None);
    }
    Ok(Some(log))
}

/// The database's identity, given on first open.
fn ensure_db_id(txn: &redb::WriteTransaction) -> Result<u64, StoreError> {
    use redb::ReadableTable;
    let mut meta = txn.open_table(META).map_err(StoreError::io)?;
    if let Some(id) = meta.get(DB_ID).map_err(StoreError::io)?.map(|v| v.value()) {
        return Ok(id);
    }
    let id = rand::random::<u64>().max(1);
    meta.insert(DB_ID, id).map_err(StoreError::io)?;
    Ok(id)
}

/// Opens (or creates) the file with the configured page cache; repairs it if it was not
/// closed cleanly.
fn open_file(path: &Path, settings: &StoreSettings) -> Result<Database, StoreError> {
    Database::builder()
        .set_cache_size(settings.cache_bytes)
        .create(path)
        .map_err(StoreError::io)
}

/// Fills `FINISHED` and `IDEM_EXPIRY` from the orders and idempotency records of a file written
/// before they existed (one durable transaction, once: `RETENTION_INDEX` marks it done). A new
/// file is marked at once. O(orders) the one time it runs.
fn build_retention_index(db: &Database) -> Result<(), StoreError> {
    use redb::ReadableTable;
    {
        let rtx = db.begin_read().map_err(StoreError::io)?;
        let meta = rtx.open_table(META).map_err(StoreError::io)?;
        if meta.get(RETENTION_INDEX).map_err(StoreError::io)?.is_some() {
            return Ok(());
        }
    }
    let mut txn = db.begin_write().map_err(StoreError::io)?;
    txn.set_quick_repair(QUICK_REPAIR);
    let mut built = (0u64, 0u64);
    {
        let mut meta = txn.open_table(META).map_err(StoreError::io)?;
        let mut finished = txn.open_table(FINISHED).map_err(StoreError::io)?;
        for entry in txn
            .open_table(ORDERS)
            .map_err(StoreError::io)?
            .iter()
            .map_err(StoreError::io)?
        {
            let (_, v) = entry.map_err(StoreError::io)?;
            let o: Order = decode(v.value())?;
            if o.status.is_terminal() {
                let key = finished_key(o.updated_at, o.id);
                finished
                    .insert(&key, o.status.code())
                    .map_err(StoreError::io)?;
                built.0 += 1;
            }
        }
        let mut expiry = txn.open_table(IDEM_EXPIRY).map_err(StoreError::io)?;
        for entry in txn
            .open_table(IDEMPOTENCY)
            .map_err(StoreError::io)?
            .iter()
            .map_err(StoreError::io)?
        {
            let (k, v) = entry.map_err(StoreError::io)?;
            let rec: IdempotencyRecord = decode(v.value())?;
            let key = idem_expiry_key(crate::domain::Timestamp(rec.created_ms), k.value());
            expiry.insert(key.as_slice(), 0).map_err(StoreError::io)?;
            built.1 += 1;
        }
        meta.insert(RETENTION_INDEX, 1).map_err(StoreError::io)?;
    }
    txn.commit().map_err(StoreError::io)?;
    if built != (0, 0) {
        tracing::info!(
            finished_orders = built.0,
            idempotency_keys = built.1,
            "built the retention index of a file written before it existed"
        );
    }
    Ok(())
}

impl Store {
    /// Opens (or creates) `orders.redb` in `dir` and makes sure every table exists.
    pub fn open(dir: &Path, settings: &StoreSettings) -> Result<Store, StoreError> {
        dirsync::create_dir_all(dir)?;
        let path = dir.join("orders.redb");
        let db = open_file(&path, settings)?;
        let mut txn = db.begin_write().map_err(StoreError::io)?;
        txn.set_quick_repair(QUICK_REPAIR);
        {
            txn.open_table(ORDERS).map_err(StoreError::io)?;
            txn.open_table(BY_CUSTOMER).map_err(StoreError::io)?;
            txn.open_table(BY_RESTAURANT).map_err(StoreError::io)?;
            txn.open_table(CUSTOMER_COUNTS).map_err(StoreError::io)?;
            txn.open_table(OUTBOX).map_err(StoreError::io)?;
            txn.open_table(IDEMPOTENCY).map_err(StoreError::io)?;
            txn.open_table(BOARD).map_err(StoreError::io)?;
            txn.open_table(RESTAURANT_COUNTS).map_err(StoreError::io)?;
            txn.open_table(FINISHED).map_err(StoreError::io)?;
            txn.open_table(IDEM_EXPIRY).map_err(StoreError::io)?;
        }
        let db_id = ensure_db_id(&txn)?;
        txn.commit().map_err(StoreError::io)?;
        let (db, log) = match open_log(dir, &db, settings, db_id) {
            Ok(log) => (db, log),
            Err(StoreError::Unavailable(e)) if settings.commit_log_bytes > 0 => {
                // Most likely the disk is full: the log's writes cannot be made durable in the
                // file now. Serve them from memory (reads work) and let the writer's first
                // batch try the checkpoint; writes get 503 until it works.
                tracing::warn!(error = %e, "commit log applied in memory only; checkpoint pending");
                drop(db);
                let db = open_file(&path, settings)?;
                let log_path = dir.join(wal::LOG_FILE);
                let mut log = wal::CommitLog::open(&log_path, settings.commit_log_bytes, db_id)
                    .map_err(StoreError::io)?;
                wal::replay(&db, &mut log, false)?;
                (db, Some(log))
            }
            Err(e) => return Err(e),
        };
        // After the log: its records of an older binary carry no board writes.
        match ensure_board(&db) {
            Ok(Some(n)) => tracing::info!(orders = n, "built the kitchen board index"),
            Ok(None) => {}
            Err(e) => return Err(e),
        }
        // After the log: its records from an older version did not maintain the indexes.
        if let Err(e) = build_retention_index(&db) {
            tracing::warn!(error = %e, "retention index not built; the next start tries again");
        }
        // redb never syncs the directory: without this a power cut can take the names of a
        // new orders.redb or orders.wal (or bring back a removed log) with every write in them.
        dirsync::sync_dir(dir)?;
        // A data directory made by someone else (`mkdir`) may lack a durable name as well; its
        // parent may not be readable by this user, so that sync only warns.
        if let Err(e) = dirsync::sync_parent(dir) {
            tracing::warn!(error = %e, "the data directory's own name may not survive a power cut");
        }
        Ok(Store {
            shared: Arc::new(Shared {
                slot: RwLock::new(Slot {
                    db: Some(Arc::new(db)),
                    last_attempt: None,
                }),
                path,
                settings: settings.clone(),
                heads: heads::LiveHeads::default(),
                log: Mutex::new(log),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The current database handle; `Unavailable` while the writer is reopening the file
    /// after a failed write.
    pub(crate) fn db(&self) -> Result<Arc<Database>, StoreError> {
        let slot = self.shared.slot.read().unwrap_or_else(|e| e.into_inner());
        slot.db
            .clone()
            .ok_or_else(|| StoreError::Unavailable("the database is being reopened".into()))
    }

    /// The handle for the writer: when the file is closed after a failure, tries to open it
    /// again (at most every `REOPEN_EVERY`). Only the writer thread reopens.
    pub(crate) fn writable_db(&self) -> Result<Arc<Database>, StoreError> {
        if let Ok(db) = self.db() {
            return Ok(db);
        }
        let mut slot = self.shared.slot.write().unwrap_or_else(|e| e.into_inner());
        if slot.db.is_none()
            && slot
                .last_attempt
                .is_none_or(|t| t.elapsed() >= REOPEN_EVERY)
        {
            self.reopen(&mut slot);
        }
        slot.db
            .clone()
            .ok_or_else(|| StoreError::Unavailable("the database is being reopened".into()))
    }

    /// Called by the writer after a failed batch: when the handle refuses new write
    /// transactions (redb latches I/O errors), closes it and opens the file again. Readers wait
    /// for the swap (with quick-repair the reopen takes milliseconds, see
    /// `QUICK_REPAIR`) rather than fail.
    pub(crate) fn recover(&self) {
        let Ok(db) = self.db() else { return };
        match db.begin_write() {
            Ok(txn) => {
                // The handle still works: the failure was not an I/O error.
                let _ = txn.abort();
                return;
            }
            Err(e) => tracing::warn!(error = %e, "database handle failed; reopening the file"),
        }
        drop(db);
        let mut slot = self.shared.slot.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = slot.db.take() {
            // Readers in flight hold clones; the file can only be opened again once they let go.
            let deadline = Instant::now() + RELEASE_WAIT;
            while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(old);
        }
        self.reopen(&mut slot);
    }

    /// The commit log, for the writer thread.
    pub(crate) fn log(&self) -> MutexGuard<'_, Option<wal::CommitLog>> {
        self.shared.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes everything committed so far durable in redb itself, so the commit log is not
    /// needed to open the file (on shutdown). Takes the log lock, then the handle slot;
    /// `reopen` takes them the other way round, which is safe because both only ever run on
    /// the writer thread.
    pub(crate) fn checkpoint(&self) -> Result<(), StoreError> {
        let mut guard = self.log();
        let Some(log) = guard.as_mut() else {
            return Ok(());
        };
        let db = self.db()?;
        let mut txn = db.begin_write().map_err(StoreError::io)?;
        txn.set_quick_repair(QUICK_REPAIR);
        let last = log.last_seq();
        {
            let mut meta = txn.open_table(META).map_err(StoreError::io)?;
            meta.insert(LOG_SEQ, last).map_err(StoreError::io)?;
        }
        txn.commit().map_err(StoreError::io)?;
        log.checkpointed(last);
        Ok(())
    }

    /// Opens the file (repairing it if needed) into `slot`, and applies the commit log's
    /// records the file lacks in memory only: the disk may still be full, and the writer's
    /// next batch is a durable checkpoint anyway.
    fn reopen(&self, slot: &mut Slot) {
        slot.last_attempt = Some(Instant::now());
        let started = Instant::now();
        let opened = open_file(&self.shared.path, &self.shared.settings).and_then(|db| {
            if let Some(log) = self.log().as_mut() {
                wal::replay(&db, log, false)?;
            }
            Ok(db)
        });
        match opened {
            Ok(db) => {
                tracing::info!(
                    millis = started.elapsed().as_millis() as u64,
                    "database reopened"
                );
                slot.db = Some(Arc::new(db));
            }
            Err(e) => tracing::warn!(error = %e, "database reopen failed; will retry"),
        }
    }

    /// The live head of an order (from memory when it is live and was written since start,
    /// else from the database).
    pub fn get_head(&self, id: Uuid) -> Result<Option<Arc<heads::OrderHead>>, StoreError> {
        if let Some(h) = self.shared.heads.get(&id) {
            return Ok(Some(h));
        }
        Ok(self
            .get_order(id)?
            .map(|o| Arc::new(heads::OrderHead::of(&o))))
    }

    /// Called by the writer after a commit, before anyone is answered.
    pub(crate) fn committed(&self, order: &Order) {
        self.shared.heads.committed(order);
    }

    pub fn get_order(&self, id: Uuid) -> Result<Option<Order>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(StoreError::io)?;
        let t = txn.open_table(ORDERS).map_err(StoreError::io)?;
        match t.get(id.as_bytes()).map_err(StoreError::io)? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// Page `page` (1-based) of `customer`'s orders, newest first, optionally only those in
    /// `statuses`. Without a filter the cost is proportional to the page's position, never to
    /// the whole history; `total_count` comes from per-status counters, not a scan.
    pub fn history(
        &self,
        customer: Uuid,
        statuses: Option<&[OrderStatus]>,
        page: u32,
        size: u32,
    ) -> Result<HistoryPage, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(StoreError::io)?;
        let counts = txn.open_table(CUSTOMER_COUNTS).map_err(StoreError::io)?;
        let wanted: Vec<OrderStatus> = match statuses {
            Some(s) => s.to_vec(),
            None => OrderStatus::ALL.to_vec(),
        };
        let mut total = 0u64;
        for s in &wanted {
            if let Some(c) = counts
                .get(&count_key(customer, *s))
                .map_err(StoreError::io)?
            {
                total += c.value();
            }
        }
        let skip = (page.saturating_sub(1) as u64) * size as u64;
        let mut orders = Vec::with_capacity(size as usize);
        if skip < total {
            let index = txn.open_table(BY_CUSTOMER).map_err(StoreError::io)?;
            let table = txn.open_table(ORDERS).map_err(StoreError::io)?;
            let (lo, hi) = index_bounds(customer);
            let filter = statuses.map(|s| s.iter().map(|st| st.code()).collect::<Vec<u8>>());
            let mut skipped = 0u64;
            for entry in index
                .range::<&[u8; 40]>(&lo..=&hi)
                .map_err(StoreError::io)?
                .rev()
            {
                let (k, v) = entry.map_err(StoreError::io)?;
                if let Some(f) = &filter {
                    if !f.contains(&v.value()) {
                        continue;
                    }
                }
                if skipped < skip {
                    skipped += 1;
                    continue;
                }
                let id = order_id_of_index(k.value());
                if let Some(raw) = table.get(id.as_bytes()).map_err(StoreError::io)? {
                    orders.push(decode(raw.value())?);
                }
                if orders.len() >= size as usize {
                    break;
                }
            }
        }
        Ok(HistoryPage {
            orders,
            total_count: total,
        })
    }

    /// Page `page` (1-based) of `restaurant`'s orders in `statuses`, oldest first (placement
    /// time, then order id). Each status is one range of the board index, merged here, so the
    /// cost is proportional to the page's position, never to the restaurant's history;
    /// `total_count` comes from per-status counters and `cursor` from the same transaction.
    pub fn board(
        &self,
        restaurant: Uuid,
        statuses: &[OrderStatus],
        page: u32,
        size: u32,
    ) -> Result<BoardPage, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(StoreError::io)?;
        let cursor = newest_event_seq(&txn)?;
        let counts = txn.open_table(RESTAURANT_COUNTS).map_err(StoreError::io)?;
        let mut total = 0u64;
        for s in statuses {
            if let Some(c) = counts
                .get(&count_key(restaurant, *s))
                .map_err(StoreError::io)?
            {
                total += c.value();
            }
        }
        let skip = (page.saturating_sub(1) as u64) * size as u64;
        let mut orders = Vec::with_capacity(size.min(100) as usize);
        if skip < total {
            let index = txn.open_table(BOARD).map_err(StoreError::io)?;
            let table = txn.open_table(ORDERS).map_err(StoreError::io)?;
            let mut ranges = Vec::with_capacity(statuses.len());
            for s in statuses {
                let (lo, hi) = board_bounds(restaurant, *s);
                ranges.push(
                    index
                        .range::<&[u8; 41]>(&lo..=&hi)
                        .map_err(StoreError::io)?
                        .peekable(),
                );
            }
            let mut seen = 0u64;
            while orders.len() < size as usize {
                // The range whose next key is oldest (time ‖ id follow the status byte).
                let mut best: Option<(usize, [u8; 24])> = None;
                for (i, r) in ranges.iter_mut().enumerate() {
                    match r.peek() {
                        Some(Ok((k, _))) => {
                            let mut tail = [0u8; 24];
                            tail.copy_from_slice(&k.value()[17..]);
                            if best.is_none_or(|(_, b)| tail < b) {
                                best = Some((i, tail));
                            }
                        }
                        Some(Err(_)) => {
                            best = Some((i, [0u8; 24]));
                            break;
                        }
                        None => {}
                    }
                }
                let Some((i, _)) = best else { break };
                let Some(entry) = ranges[i].next() else { break };
                let (k, _) = entry.map_err(StoreError::io)?;
                seen += 1;
                if seen <= skip {
                    continue;
                }
                let id = order_id_of_board(k.value());
                if let Some(raw) = table.get(id.as_bytes()).map_err(StoreError::io)? {
                    orders.push(decode(raw.value())?);
                }
            }
        }
        Ok(BoardPage {
            orders,
            total_count: total,
            cursor,
        })
    }

    /// The events of `restaurant` after `after` that the outbox holds, read in one transaction
    /// up to the newest committed sequence. Scans the outbox from the cursor (no per-restaurant
    /// index): at most `max_scan` events, beyond which the answer is `TooFar`.
    pub fn restaurant_events_after(
        &self,
        restaurant: Uuid,
        after: u64,
        max_scan: u64,
    ) -> Result<Replay, StoreError> {
        use redb::ReadableTable;
        let db = self.db()?;
        let txn = db.begin_read().map_err(StoreError::io)?;
        let newest = newest_event_seq(&txn)?;
        let outbox = txn.open_table(OUTBOX).map_err(StoreError::io)?;
        let oldest = outbox
            .first()
            .map_err(StoreError::io)?
            .map(|(k, _)| k.value())
            .unwrap_or(newest.saturating_add(1));
        if after > newest || after.saturating_add(1) < oldest {
            return Ok(Replay::Expired { oldest, newest });
        }
        if newest - after > max_scan {
            return Ok(Replay::TooFar { newest });
        }
        let mut events = Vec::new();
        for entry in outbox
            .range(after.saturating_add(1)..=newest)
            .map_err(StoreError::io)?
        {
            let (k, v) = entry.map_err(StoreError::io)?;
            let mut e: OrderEvent = decode(v.value())?;
            if e.restaurant_id() == restaurant {
                e.dto.sequence = Some(k.value());
                events.push(e);
            }
        }
        Ok(Replay::Events {
            events,
            upto: newest,
        })
    }

    /// Outbox events with a sequence number greater than `after`, oldest first.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<OrderEvent>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(StoreError::io)?;
        let t = txn.open_table(OUTBOX).map_err(StoreError::io)?;
        let mut out = Vec::new();
        for entry in t.range(after.saturating_add(1)..).map_err(StoreError::io)? {
            let (_, v) = entry.map_err(StoreError::io)?;
            out.push(decode(v.value())?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Cluster mode: the newest record of the cluster's log this database includes (0: none).
    pub fn stream_seq(&self) -> Result<u64, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(StoreError::io)?;
        let meta = txn.open_table(META).map_err(StoreError::io)?;
        let v = meta.get(STREAM_SEQ).map_err(StoreError::io)?;
        Ok(v.map(|v| v.value()).unwrap_or(0))
    }

    /// The sequence number of the newest event (0 when there is none).
    pub fn last_event_seq(&self) -> Result<u64, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(StoreError::io)?;
        newest_event_seq(&txn)
    }

    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        use redb::ReadableTableMetadata;
        let db = self.db()?;
        let txn = db.begin_read().map_err(StoreError::io)?;
        let orders = txn
            .open_table(ORDERS)
            .map_err(StoreError::io)?
            .len()
            .map_err(StoreError::io)?;
        let events = txn
            .open_table(OUTBOX)
            .map_err(StoreError::io)?
            .len()
            .map_err(StoreError::io)?;
        let idempotency_keys = txn
            .open_table(IDEMPOTENCY)
            .map_err(StoreError::io)?
            .len()
            .map_err(StoreError::io)?;
        let file_bytes = std::fs::metadata(self.path()).map(|m| m.len()).unwrap_or(0);
        let meta = txn.open_table(META).map_err(StoreError::io)?;
        let swept = |key| -> Result<u64, StoreError> {
            Ok(meta
                .get(key)
                .map_err(StoreError::io)?
                .map(|v| v.value())
                .unwrap_or(0))
        };
        Ok(StoreStats {
            orders,
            events,
            idempotency_keys,
            file_bytes,
            swept_orders: swept(SWEPT_ORDERS)?,
            swept_idempotency_keys: swept(SWEPT_IDEMPOTENCY)?,
            swept_events: swept(SWEPT_EVENTS)?,
        })
    }
}

/// The sequence number of the newest committed event that `txn` sees (0 when there is none).
fn newest_event_seq(txn: &redb::ReadTransaction) -> Result<u64, StoreError> {
    Ok(txn
        .open_table(META)
        .map_err(StoreError::io)?
        .get(EVENT_SEQ)
        .map_err(StoreError::io)?
        .map(|v| v.value())
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{NewOrder, OrderSummary, Timestamp};

    fn order(restaurant: Uuid, placed: i64) -> Order {
        let body = serde_json::json!({
            "customerId": Uuid::new_v4(), "restaurantId": restaurant, "restaurantName": "R",
            "currency": "USD", "paymentMethod": "CashOnDelivery",
            "items": [{"menuItemId": Uuid::new_v4(), "name": "P", "quantity": 1, "unitPrice": 1}]
        });
        let new = NewOrder::parse(body.to_string().as_bytes()).unwrap();
        new.into_order(
            Uuid::now_v7(),
            format!("ORD-2026-{placed:06}"),
            Timestamp(1_700_000_000_000 + placed),
            &mut Uuid::new_v4,
        )
    }

    #[test]
    fn opening_a_file_without_the_board_builds_it() {
        let dir = tempfile::tempdir().unwrap();
        let settings = StoreSettings {
            commit_log_bytes: 0,
            ..Default::default()
        };
        let r = Uuid::new_v4();
        let orders: Vec<Order> = (0..3).map(|i| order(r, 3 - i)).collect();
        {
            // A file as an older binary left it: orders, no board, no flag.
            let store = Store::open(dir.path(), &settings).unwrap();
            let db = store.db().unwrap();
            let w = db.begin_write().unwrap();
            {
                let mut t = w.open_table(ORDERS).unwrap();
                for o in &orders {
                    t.insert(o.id.as_bytes(), encode(o).unwrap().as_slice())
                        .unwrap();
                }
                w.open_table(META).unwrap().remove(BOARD_BUILT).unwrap();
            }
            w.commit().unwrap();
        }
        let store = Store::open(dir.path(), &settings).unwrap();
        let page = store.board(r, &[OrderStatus::Placed], 1, 10).unwrap();
        assert_eq!(page.total_count, 3);
        let got: Vec<Uuid> = page.orders.iter().map(|o| o.id).collect();
        let want: Vec<Uuid> = orders.iter().rev().map(|o| o.id).collect();
        assert_eq!(got, want, "oldest first");
        let db = store.db().unwrap();
        // Only the board's part of the check: this file lacks the older indexes on purpose.
        let report = maintenance::check_invariants(db.as_ref()).unwrap();
        let board: Vec<&String> = report
            .problems
            .iter()
            .filter(|p| {
                p.contains("board")
                    || p.contains("restaurant's")
                    || p.contains("restaurant counters")
            })
            .collect();
        assert!(board.is_empty(), "{board:?}");
    }

    #[test]
    fn a_cursor_the_outbox_no_longer_covers_is_expired() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreSettings::default()).unwrap();
        let r = Uuid::new_v4();
        let db = store.db().unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut outbox = w.open_table(OUTBOX).unwrap();
            for seq in 5..=9u64 {
                let o = order(if seq % 2 == 0 { r } else { Uuid::new_v4() }, seq as i64);
                let e = OrderEvent {
                    seq,
                    kind: crate::domain::EventKind::OrderPlaced,
                    customer_id: o.customer_id,
                    dto: crate::domain::OrderStatusBroadcast::of(&o, o.placed_at, None),
                };
                outbox.insert(seq, encode(&e).unwrap().as_slice()).unwrap();
            }
            w.open_table(META).unwrap().insert(EVENT_SEQ, 9).unwrap();
        }
        w.commit().unwrap();
        // Events 1..=4 were removed: cursor 4 is still covered, 3 is not.
        match store.restaurant_events_after(r, 4, 100).unwrap() {
            Replay::Events { events, upto } => {
                let seqs: Vec<Option<u64>> = events.iter().map(|e| e.dto.sequence).collect();
                assert_eq!((seqs, upto), (vec![Some(6), Some(8)], 9));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            store.restaurant_events_after(r, 3, 100).unwrap(),
            Replay::Expired {
                oldest: 5,
                newest: 9
            }
        ));
        assert!(matches!(
            store.restaurant_events_after(r, 10, 100).unwrap(),
            Replay::Expired { .. }
        ));
        assert!(matches!(
            store.restaurant_events_after(r, 4, 4).unwrap(),
            Replay::TooFar { newest: 9 }
        ));
        match store.restaurant_events_after(r, 9, 100).unwrap() {
            Replay::Events { events, upto } => assert!(events.is_empty() && upto == 9),
            other => panic!("{other:?}"),
        }
    }

    /// A history summary decodes from the stored bytes of a full order and agrees with it.
    #[test]
    fn summary_decodes_from_a_stored_order() {
        let body = serde_json::json!({
            "customerId": uuid::Uuid::new_v4(), "restaurantId": uuid::Uuid::new_v4(),
            "restaurantName": "Ristorante", "currency": "JPY", "paymentMethod": "CashOnDelivery",
            "deliveryAddress": {"street": "1 Main", "city": "Town"}, "note": "ring twice",
            "items": [
                {"menuItemId": uuid::Uuid::new_v4(), "name": "P", "quantity": 2, "unitPrice": 700,
                 "customizations": [{"groupName": "Size", "choiceName": "L", "priceAdjustment": 100}]},
                {"menuItemId": uuid::Uuid::new_v4(), "name": "Q", "quantity": 3, "unitPrice": 150}
            ]
        });
        let order: Order = NewOrder::parse(body.to_string().as_bytes())
            .unwrap()
            .into_order(
                uuid::Uuid::now_v7(),
                "ORD-2026-000042".into(),
                Timestamp(1_700_000_000_000),
                &mut uuid::Uuid::new_v4,
            );
        let stored = super::encode(&order).unwrap();
        let s: OrderSummary = super::decode(&stored).unwrap();
        assert_eq!(s.id, order.id);
        assert_eq!(s.number, order.number);
        assert_eq!(s.restaurant_id, order.restaurant_id);
        assert_eq!(s.restaurant_name, order.restaurant_name);
        assert_eq!(s.status, order.status);
        assert_eq!(s.placed_at, order.placed_at);
        assert_eq!(s.currency, order.currency);
        assert_eq!(s.fmt(s.total), order.fmt(order.total));
        assert_eq!(s.item_count(), order.item_count());
        assert_eq!(s.item_count(), 5);
    }
}
