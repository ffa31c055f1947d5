//! Database maintenance behind `ordertrack db …` and the server's admin endpoints: consistent
//! snapshots (one read transaction copied into a new file), integrity checks (redb's checksums
//! plus the schema's own invariants: every order indexed once with its status, counters that
//! match), compaction and statistics.
//!
//! redb locks the file for one process. While a server runs, `check` and `compact` refuse
//! (`InUse`), and snapshots and statistics are taken by the server itself through
//! `/admin/db/…`; see `crate::db`.

use super::schema::*;
use super::{decode, wal, IdempotencyRecord, Store};
use crate::domain::{Order, OrderEvent, OrderStatus};
use redb::{
    Database, DatabaseError, Durability, Key, MultimapTableHandle, ReadOnlyDatabase,
    ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    TableHandle, Value,
};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use thiserror::Error;

/// The database file inside a data directory.
pub const DB_FILE: &str = "orders.redb";

/// Rows copied per (non-durable) transaction while writing a snapshot.
const COPY_CHUNK: u64 = 20_000;
/// Problems listed by `check` before it only counts them.
const MAX_LISTED: usize = 20;

#[derive(Debug, Error)]
pub enum MaintenanceError {
    #[error("no database at {0}")]
    Missing(PathBuf),
    #[error("the database {0} is in use by a running server")]
    InUse(PathBuf),
    #[error("{0} already exists; choose a new destination")]
    Exists(PathBuf),
    #[error(
        "the database has a table this version does not know ('{0}'); refusing an incomplete copy"
    )]
    UnknownTable(String),
    #[error("storage error: {0}")]
    Storage(String),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}")]
    Dir(#[from] super::dirsync::DirError),
}

fn st<E: Into<redb::Error>>(e: E) -> MaintenanceError {
    MaintenanceError::Storage(e.into().to_string())
}

/// The server's current database handle.
pub fn handle(store: &Store) -> Result<Arc<Database>, MaintenanceError> {
    store
        .db()
        .map_err(|e| MaintenanceError::Storage(e.to_string()))
}

fn opened<T>(path: &Path, r: Result<T, DatabaseError>) -> Result<T, MaintenanceError> {
    match r {
        Ok(db) => Ok(db),
        Err(DatabaseError::DatabaseAlreadyOpen) => Err(MaintenanceError::InUse(path.into())),
        Err(e) => Err(st(e)),
    }
}

fn existing(dir: &Path) -> Result<PathBuf, MaintenanceError> {
    let path = dir.join(DB_FILE);
    if !path.is_file() {
        return Err(MaintenanceError::Missing(path));
    }
    Ok(path)
}

/// Applies the commit log a server left (killed, or stopped before its last checkpoint), so
/// the file alone is complete before it is checked, compacted or copied. Returns the open
/// database when there was a log.
fn settle_log(dir: &Path, path: &Path) -> Result<Option<Database>, MaintenanceError> {
    let log_path = dir.join(wal::LOG_FILE);
    if !log_path.is_file() {
        return Ok(None);
    }
    let db = opened(path, Database::builder().open(path))?;
    let id = wal::db_id(&db).map_err(|e| MaintenanceError::Storage(e.to_string()))?;
    let mut log =
        wal::CommitLog::open(&log_path, 0, id).map_err(|e| MaintenanceError::Io(log_path, e))?;
    wal::replay(&db, &mut log, true).map_err(|e| MaintenanceError::Storage(e.to_string()))?;
    Ok(Some(db))
}

/// Opens the database of `dir` for writing (exclusive; `InUse` while a server runs).
pub fn open_exclusive(dir: &Path) -> Result<Database, MaintenanceError> {
    let path = existing(dir)?;
    if let Some(db) = settle_log(dir, &path)? {
        return Ok(db);
    }
    opened(&path, Database::builder().open(&path))
}

/// Opens the database of `dir` read-only (`InUse` while a server runs).
pub fn open_read_only(dir: &Path) -> Result<ReadOnlyDatabase, MaintenanceError> {
    let path = existing(dir)?;
    drop(settle_log(dir, &path)?);
    opened(&path, redb::Builder::new().open_read_only(&path))
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// What a snapshot wrote.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotInfo {
    pub path: PathBuf,
    pub bytes: u64,
    pub orders: u64,
    pub rows: u64,
    pub millis: u64,
}

/// The tables a snapshot copies; a table missing here would be silently lost, so `snapshot`
/// refuses a database that has any other.
const TABLES: [&str; 11] = [
    "orders_v1",
    "by_customer_v1",
    "by_restaurant_v1",
    "customer_counts_v1",
    "outbox_v1",
    "idempotency_v1",
    "meta_v1",
    "board_v1",
    "restaurant_counts_v1",
    "finished_v1",
    "idempotency_expiry_v1",
];

/// Whether `rtx` sees the retention indexes complete (`FINISHED`, `IDEM_EXPIRY`): a file written
/// before they existed lacks them until a server opens it (`Store::open` builds them).
fn has_retention_index(rtx: &ReadTransaction) -> Result<bool, MaintenanceError> {
    Ok(rtx
        .open_table(META)
        .map_err(st)?
        .get(RETENTION_INDEX)
        .map_err(st)?
        .is_some())
}

/// Copies the state seen by one read transaction of `src` into a new database at `dest` (which
/// must not exist). The copy is written as `dest.partial`, made durable, then renamed, so `dest`
/// only ever names a complete database.
pub fn snapshot<D: ReadableDatabase>(
    src: &D,
    dest: &Path,
) -> Result<SnapshotInfo, MaintenanceError> {
    let started = Instant::now();
    if dest.exists() {
        return Err(MaintenanceError::Exists(dest.into()));
    }
    let rtx = src.begin_read().map_err(st)?;
    for t in rtx.list_tables().map_err(st)? {
        if !TABLES.contains(&t.name()) {
            return Err(MaintenanceError::UnknownTable(t.name().to_string()));
        }
    }
    if let Some(t) = rtx.list_multimap_tables().map_err(st)?.next() {
        return Err(MaintenanceError::UnknownTable(t.name().to_string()));
    }
    let partial = dest.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    let out = Database::builder().create(&partial).map_err(st)?;
    let mut copier = Copier {
        dest: &out,
        rows: 0,
        in_txn: 0,
    };
    let result = (|| {
        copier.table(&rtx, ORDERS)?;
        copier.table(&rtx, BY_CUSTOMER)?;
        copier.table(&rtx, BY_RESTAURANT)?;
        copier.table(&rtx, CUSTOMER_COUNTS)?;
        copier.table(&rtx, OUTBOX)?;
        copier.table(&rtx, IDEMPOTENCY)?;
        copier.table(&rtx, META)?;
        if rtx
            .list_tables()
            .map_err(st)?
            .any(|t| t.name() == "board_v1")
        {
            copier.table(&rtx, BOARD)?;
            copier.table(&rtx, RESTAURANT_COUNTS)?;
        }
        if has_retention_index(&rtx)? {
            copier.table(&rtx, FINISHED)?;
            copier.table(&rtx, IDEM_EXPIRY)?;
        }
        // The last commit is durable and makes every earlier one durable too. The copy gets an
        // identity of its own, so a commit log of the original is never applied to it.
        let wtx = out.begin_write().map_err(st)?;
        {
            let mut meta = wtx.open_table(META).map_err(st)?;
            meta.insert(DB_ID, rand::random::<u64>().max(1))
                .map_err(st)?;
        }
        wtx.commit().map_err(st)?;
        Ok::<_, MaintenanceError>(())
    })();
    let rows = copier.rows;
    // Chunked copying leaves free pages behind; the copy is ours alone, so compact it.
    let mut out = out;
    let result = result.and_then(|()| {
        for _ in 0..8 {
            if !out.compact().map_err(st)? {
                break;
            }
        }
        Ok(())
    });
    drop(out);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    let orders = rtx.open_table(ORDERS).map_err(st)?.len().map_err(st)?;
    drop(rtx);
    std::fs::rename(&partial, dest).map_err(|e| MaintenanceError::Io(dest.into(), e))?;
    super::dirsync::sync_parent(dest)?;
    Ok(SnapshotInfo {
        path: dest.into(),
        bytes: file_len(dest),
        orders,
        rows,
        millis: started.elapsed().as_millis() as u64,
    })
}

struct Copier<'a> {
    dest: &'a Database,
    rows: u64,
    in_txn: u64,
}

impl Copier<'_> {
    /// Copies one table in chunks of non-durable transactions.
    fn table<K: Key + 'static, V: Value + 'static>(
        &mut self,
        rtx: &ReadTransaction,
        def: TableDefinition<K, V>,
    ) -> Result<(), MaintenanceError> {
        let src = rtx.open_table(def).map_err(st)?;
        let mut iter = src.iter().map_err(st)?;
        loop {
            let mut wtx = self.dest.begin_write().map_err(st)?;
            wtx.set_durability(Durability::None).map_err(st)?;
            let mut done = true;
            {
                let mut t = wtx.open_table(def).map_err(st)?;
                for entry in iter.by_ref() {
                    let (k, v) = entry.map_err(st)?;
                    t.insert(k.value(), v.value()).map_err(st)?;
                    self.rows += 1;
                    self.in_txn += 1;
                    if self.in_txn >= COPY_CHUNK {
                        self.in_txn = 0;
                        done = false;
                        break;
                    }
                }
            }
            wtx.commit().map_err(st)?;
            if done {
                return Ok(());
            }
        }
    }
}

/// Counts and sizes, for `db stats` and `/admin/db/stats`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DbStats {
    pub file_bytes: u64,
    pub orders: u64,
    pub orders_by_status: BTreeMap<String, u64>,
    pub customers: u64,
    pub outbox_events: u64,
    pub last_event_seq: u64,
    pub idempotency_keys: u64,
    /// What the retention sweeper removed over the life of the file.
    pub swept: SweptStats,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SweptStats {
    pub orders: u64,
    pub idempotency_keys: u64,
    pub outbox_events: u64,
}

pub fn stats<D: ReadableDatabase>(db: &D, path: &Path) -> Result<DbStats, MaintenanceError> {
    let rtx = db.begin_read().map_err(st)?;
    let orders = rtx.open_table(ORDERS).map_err(st)?.len().map_err(st)?;
    let mut by_status: BTreeMap<String, u64> = OrderStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), 0))
        .collect();
    let mut customers = 0u64;
    let mut last_customer = None;
    for entry in rtx
        .open_table(CUSTOMER_COUNTS)
        .map_err(st)?
        .iter()
        .map_err(st)?
    {
        let (k, v) = entry.map_err(st)?;
        let k = k.value();
        // Keys sort by customer first: count each run of one customer's counters once.
        let customer = &k[..16];
        if last_customer
            .as_ref()
            .is_none_or(|c: &[u8; 17]| &c[..16] != customer)
        {
            customers += 1;
            last_customer = Some(*k);
        }
        if let Some(s) = OrderStatus::from_code(k[16]) {
            *by_status.entry(s.as_str().to_string()).or_default() += v.value();
        }
    }
    let outbox_events = rtx.open_table(OUTBOX).map_err(st)?.len().map_err(st)?;
    let idempotency_keys = rtx.open_table(IDEMPOTENCY).map_err(st)?.len().map_err(st)?;
    let meta = rtx.open_table(META).map_err(st)?;
    let counter = |key| -> Result<u64, MaintenanceError> {
        Ok(meta.get(key).map_err(st)?.map(|v| v.value()).unwrap_or(0))
    };
    let last_event_seq = counter(EVENT_SEQ)?;
    let swept = SweptStats {
        orders: counter(SWEPT_ORDERS)?,
        idempotency_keys: counter(SWEPT_IDEMPOTENCY)?,
        outbox_events: counter(SWEPT_EVENTS)?,
    };
    Ok(DbStats {
        file_bytes: file_len(path),
        orders,
        orders_by_status: by_status,
        customers,
        outbox_events,
        last_event_seq,
        idempotency_keys,
        swept,
    })
}

/// What `check` found.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    /// redb's page checksums were fine (false: it found damage and repaired it).
    pub checksums_ok: bool,
    pub orders: u64,
    pub events: u64,
    /// Broken invariants (the first `MAX_LISTED`).
    pub problems: Vec<String>,
    pub problem_count: u64,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.checksums_ok && self.problem_count == 0
    }

    fn problem(&mut self, p: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_LISTED {
            self.problems.push(p);
        }
    }
}

/// Verifies checksums and the schema's invariants. Needs exclusive access.
pub fn check(dir: &Path) -> Result<CheckReport, MaintenanceError> {
    let mut db = open_exclusive(dir)?;
    let checksums_ok = db.check_integrity().map_err(st)?;
    let mut report = check_invariants(&db)?;
    report.checksums_ok = checksums_ok;
    Ok(report)
}

/// The schema's own invariants, from one read transaction.
pub fn check_invariants<D: ReadableDatabase>(db: &D) -> Result<CheckReport, MaintenanceError> {
    let mut r = CheckReport {
        checksums_ok: true,
        ..Default::default()
    };
    let rtx = db.begin_read().map_err(st)?;
    let orders = rtx.open_table(ORDERS).map_err(st)?;
    let by_customer = rtx.open_table(BY_CUSTOMER).map_err(st)?;
    let by_restaurant = rtx.open_table(BY_RESTAURANT).map_err(st)?;
    let mut counts: HashMap<[u8; 17], u64> = HashMap::new();
    let mut board_counts: HashMap<[u8; 17], u64> = HashMap::new();
    let board_built = rtx
        .open_table(META)
        .map_err(st)?
        .get(BOARD_BUILT)
        .map_err(st)?
        .is_some();
    let board = if board_built {
        Some(rtx.open_table(BOARD).map_err(st)?)
    } else {
        None
    };
    let finished = match has_retention_index(&rtx)? {
        true => Some(rtx.open_table(FINISHED).map_err(st)?),
        false => None,
    };
    let mut finished_orders = 0u64;
    for entry in orders.iter().map_err(st)? {
        let (k, v) = entry.map_err(st)?;
        let key = uuid::Uuid::from_bytes(*k.value());
        let o: Order = match decode(v.value()) {
            Ok(o) => o,
            Err(e) => {
                r.problem(format!("order {key} cannot be decoded: {e}"));
                continue;
            }
        };
        r.orders += 1;
        if o.id != key {
            r.problem(format!("order stored under {key} has id {}", o.id));
        }
        for (name, table, owner) in [
            ("customer", &by_customer, o.customer_id),
            ("restaurant", &by_restaurant, o.restaurant_id),
        ] {
            let ik = index_key(owner, o.placed_at, o.id);
            match table.get(&ik).map_err(st)? {
                None => r.problem(format!("order {} is missing from the {name} index", o.id)),
                Some(s) if s.value() != o.status.code() => r.problem(format!(
                    "the {name} index has a stale status for order {}",
                    o.id
                )),
                Some(_) => {}
            }
        }
        *counts
            .entry(count_key(o.customer_id, o.status))
            .or_default() += 1;
        if let Some(board) = &board {
            let bk = board_key(o.restaurant_id, o.status, o.placed_at, o.id);
            if board.get(&bk).map_err(st)?.is_none() {
                r.problem(format!(
                    "order {} is missing from the kitchen board index",
                    o.id
                ));
            }
            *board_counts
                .entry(count_key(o.restaurant_id, o.status))
                .or_default() += 1;
        }
        if let (Some(f), true) = (&finished, o.status.is_terminal()) {
            finished_orders += 1;
            if f.get(&finished_key(o.updated_at, o.id))
                .map_err(st)?
                .is_none()
            {
                r.problem(format!(
                    "finished order {} is missing from the retention index",
                    o.id
                ));
            }
        }
    }
    if let Some(f) = &finished {
        let n = f.len().map_err(st)?;
        if n != finished_orders {
            r.problem(format!(
                "the retention index has {n} entries for {finished_orders} finished orders"
            ));
        }
    }
    if let Some(board) = &board {
        let n = board.len().map_err(st)?;
        if n != r.orders {
            r.problem(format!(
                "the kitchen board index has {n} entries for {} orders",
                r.orders
            ));
        }
        check_counters(
            &mut r,
            &rtx.open_table(RESTAURANT_COUNTS).map_err(st)?,
            board_counts,
            "restaurant",
        )?;
    }
    for (name, table) in [("customer", &by_customer), ("restaurant", &by_restaurant)] {
        let n = table.len().map_err(st)?;
        if n != r.orders {
            r.problem(format!(
                "the {name} index has {n} entries for {} orders",
                r.orders
            ));
        }
    }
    check_counters(
        &mut r,
        &rtx.open_table(CUSTOMER_COUNTS).map_err(st)?,
        counts,
        "customer",
    )?;
    let last_seq = rtx
        .open_table(META)
        .map_err(st)?
        .get(EVENT_SEQ)
        .map_err(st)?
        .map(|v| v.value())
        .unwrap_or(0);
    for entry in rtx.open_table(OUTBOX).map_err(st)?.iter().map_err(st)? {
        let (k, v) = entry.map_err(st)?;
        r.events += 1;
        if k.value() > last_seq {
            r.problem(format!(
                "event {} is newer than the event sequence",
                k.value()
            ));
        }
        if let Err(e) = decode::<OrderEvent>(v.value()) {
            r.problem(format!("event {} cannot be decoded: {e}", k.value()));
        }
    }
    let expiry = match finished {
        Some(_) => Some(rtx.open_table(IDEM_EXPIRY).map_err(st)?),
        None => None,
    };
    for entry in rtx
        .open_table(IDEMPOTENCY)
        .map_err(st)?
        .iter()
        .map_err(st)?
    {
        let (k, v) = entry.map_err(st)?;
        match decode::<IdempotencyRecord>(v.value()) {
            Err(_) => r.problem(format!(
                "idempotency record '{}' cannot be decoded",
                k.value()
            )),
            Ok(rec) => {
                let Some(expiry) = &expiry else { continue };
                let ek = idem_expiry_key(crate::domain::Timestamp(rec.created_ms), k.value());
                if expiry.get(ek.as_slice()).map_err(st)?.is_none() {
                    r.problem(format!(
                        "idempotency record '{}' is missing from the expiry index",
                        k.value()
                    ));
                }
            }
        }
    }
    if let Some(expiry) = &expiry {
        let keys = rtx.open_table(IDEMPOTENCY).map_err(st)?.len().map_err(st)?;
        let n = expiry.len().map_err(st)?;
        if n != keys {
            r.problem(format!(
                "the expiry index has {n} entries for {keys} idempotency records"
            ));
        }
    }
    Ok(r)
}

/// Compares a per-status counter table with the counts `want` found by walking the orders.
fn check_counters(
    r: &mut CheckReport,
    table: &redb::ReadOnlyTable<&'static [u8; 17], u64>,
    mut want: HashMap<[u8; 17], u64>,
    whose: &str,
) -> Result<(), MaintenanceError> {
    for entry in table.iter().map_err(st)? {
        let (k, v) = entry.map_err(st)?;
        let expected = want.remove(k.value()).unwrap_or(0);
        if v.value() != expected {
            r.problem(format!(
                "a {whose}'s counter says {} orders where {expected} are stored",
                v.value()
            ));
        }
    }
    if want.values().any(|n| *n > 0) {
        r.problem(format!(
            "{} per-status {whose} counters are missing",
            want.len()
        ));
    }
    Ok(())
}

/// Compacts the file; returns its size before and after. Needs exclusive access.
pub fn compact(dir: &Path) -> Result<(u64, u64), MaintenanceError> {
    let path = dir.join(DB_FILE);
    let before = file_len(&path);
    let mut db = open_exclusive(dir)?;
    // Each pass may free more of the file's tail; a few passes reach the fixed point.
    for _ in 0..4 {
        if !db.compact().map_err(st)? {
            break;
        }
    }
    drop(db);
    Ok((before, file_len(&path)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreSettings;

    fn sample_order(customer: uuid::Uuid) -> Order {
        let body = serde_json::json!({
            "customerId": customer, "restaurantId": uuid::Uuid::new_v4(), "restaurantName": "R",
            "currency": "USD", "paymentMethod": "CashOnDelivery",
            "items": [{"menuItemId": uuid::Uuid::new_v4(), "name": "P", "quantity": 1, "unitPrice": 1}]
        });
        let new = crate::domain::NewOrder::parse(body.to_string().as_bytes()).unwrap();
        new.into_order(
            uuid::Uuid::now_v7(),
            "ORD-2026-000001".into(),
            crate::domain::Timestamp(1_700_000_000_000),
            &mut uuid::Uuid::new_v4,
        )
    }

    /// Writes an order with its indexes and counter, as the writer does.
    fn put(db: &Database, o: &Order, index_status: u8, count: u64) {
        let w = db.begin_write().unwrap();
        {
            w.open_table(ORDERS)
                .unwrap()
                .insert(o.id.as_bytes(), crate::store::encode(o).unwrap().as_slice())
                .unwrap();
            w.open_table(BY_CUSTOMER)
                .unwrap()
                .insert(&index_key(o.customer_id, o.placed_at, o.id), index_status)
                .unwrap();
            w.open_table(BY_RESTAURANT)
                .unwrap()
                .insert(
                    &index_key(o.restaurant_id, o.placed_at, o.id),
                    o.status.code(),
                )
                .unwrap();
            w.open_table(CUSTOMER_COUNTS)
                .unwrap()
                .insert(&count_key(o.customer_id, o.status), count)
                .unwrap();
            w.open_table(BOARD)
                .unwrap()
                .insert(&board_key(o.restaurant_id, o.status, o.placed_at, o.id), ())
                .unwrap();
            w.open_table(RESTAURANT_COUNTS)
                .unwrap()
                .insert(&count_key(o.restaurant_id, o.status), 1)
                .unwrap();
        }
        w.commit().unwrap();
    }

    #[test]
    fn check_finds_broken_invariants_and_snapshot_copies_everything() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), &StoreSettings::default()).unwrap();
        let db = handle(&store).unwrap();
        let good = sample_order(uuid::Uuid::new_v4());
        put(&db, &good, good.status.code(), 1);
        assert_eq!(check_invariants(db.as_ref()).unwrap().problem_count, 0);

        let dest = tmp.path().join("copy.redb");
        let info = snapshot(db.as_ref(), &dest).unwrap();
        assert_eq!(info.orders, 1);
        assert!(snapshot(db.as_ref(), &dest).is_err(), "never overwrites");
        let copy = Database::open(&dest).unwrap();
        assert_eq!(check_invariants(&copy).unwrap().orders, 1);
        // The copy has an identity of its own: the original's commit log never applies to it.
        let (mine, theirs) = (wal::db_id(&db).unwrap(), wal::db_id(&copy).unwrap());
        assert!(
            mine != 0 && theirs != 0 && mine != theirs,
            "{mine} {theirs}"
        );

        // A stale index status and a wrong counter are both reported.
        let bad = sample_order(uuid::Uuid::new_v4());
        put(&db, &bad, OrderStatus::Delivered.code(), 3);
        let r = check_invariants(db.as_ref()).unwrap();
        assert_eq!(r.problem_count, 2, "{:?}", r.problems);
        assert!(!r.ok());

        // So are a board entry and a restaurant counter that disagree with the orders.
        let w = db.begin_write().unwrap();
        {
            let k = board_key(bad.restaurant_id, bad.status, bad.placed_at, bad.id);
            w.open_table(BOARD).unwrap().remove(&k).unwrap();
            w.open_table(RESTAURANT_COUNTS)
                .unwrap()
                .insert(&count_key(good.restaurant_id, good.status), 5)
                .unwrap();
        }
        w.commit().unwrap();
        let r = check_invariants(db.as_ref()).unwrap();
        assert_eq!(r.problem_count, 5, "{:?}", r.problems);
    }

    #[test]
    fn snapshot_refuses_unknown_tables() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), &StoreSettings::default()).unwrap();
        let db = handle(&store).unwrap();
        let w = db.begin_write().unwrap();
        {
            let def: TableDefinition<u64, u64> = TableDefinition::new("new_table_v1");
            w.open_table(def).unwrap().insert(1, 1).unwrap();
        }
        w.commit().unwrap();
        let err = snapshot(db.as_ref(), &tmp.path().join("x.redb")).unwrap_err();
        assert!(matches!(err, MaintenanceError::UnknownTable(_)), "{err}");
    }
}
