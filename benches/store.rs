//! Store benches, redb (the real store and its single writer) side by side with SQLite doing
//! the same workload, in the same run, on the same disk:
//!
//! - `durable_place_order`: place one order, fsynced before the answer; one commit per request
//!   (writer batch limit 1) against group commit (batch limit 512), 256 concurrent callers.
//! - `durable_transition`: one status change (Accept) with the writer's batch limit at 1, 10
//!   and 100, 256 concurrent callers. The orders are placed beforehand, outside the timing.
//! - `status_read`: one whole order by id (read transaction + decode) on both engines, and the
//!   in-memory live head that `GET /status` uses (redb store only).
//! - `history_page1`: page 1 (10 orders, newest first, with the total count) of customers with
//!   10, 10,000 and 100,000 orders, all in one database.
//!
//! Criterion's "time" is per request (one iteration = one request), so every ratio is a ratio
//! of per-request times. The SQLite side is a bench-local copy of the writer's design: one
//! thread owns a connection in WAL mode with `synchronous=FULL`, drains up to the batch limit
//! from a queue, applies the batch in one `BEGIN IMMEDIATE` transaction with prepared (cached)
//! statements, commits, then answers. Schema: orders by id (rowid table, unique index on the
//! id), an index on (customer, placed_at, id), one on (restaurant, placed_at, id), per-customer
//! per-status counts, the outbox and the counters, with the same MessagePack bodies as redb.
//!
//! In criterion's test mode (`cargo test --all-targets`, or `-- --test`) every benchmark runs
//! once and the history customers shrink to 10, 100 and 1,000 orders (the benchmark names keep
//! the nominal sizes). Databases are built on first use, so a filtered run builds only what it
//! measures.
//!
//! Run: `cargo bench --bench store` (add `-- --quick` for a short run).

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use ordertrack::testing::{
    may_act, Action, ActionDetails, EventKind, NewOrder, Order, OrderEvent, OrderStatus,
    OrderStatusBroadcast, Principal, Step, Timestamp,
};
use ordertrack::testing::{spawn_writer, EventSink};
use ordertrack::testing::{
    ActRequest, Acted, PlaceRequest, Placed, Store, StoreSettings, WriterHandle, WriterSettings,
};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::cell::OnceCell;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// Requests in flight during the durable benches.
const CONCURRENCY: usize = 256;
/// Batch limit of the writers that load data outside the timing.
const LOAD_BATCH: usize = 2048;
/// Outbox entries kept (as `store::schema::OUTBOX_KEEP`).
const OUTBOX_KEEP: i64 = 200_000;
const RESTAURANT: Uuid = Uuid::from_u128(0xa1b2_c3d4_e5f6_4890_abcd_ef12_3456_7890);

/// Whether this is a measuring run (`cargo bench`), as opposed to criterion's test mode
/// (`cargo test` runs the bench binary without `--bench`; `-- --test` forces it) or `--list`.
fn measuring() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    has("--bench") && !has("--test") && !has("--list")
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

struct NoSink;
impl EventSink for NoSink {
    fn publish(&self, _: Vec<Arc<OrderEvent>>) {}
}

/// A cash order like the README's walk-through: two items, a customization, an address.
fn new_order(customer: Uuid) -> NewOrder {
    let body = serde_json::json!({
        "customerId": customer, "restaurantId": RESTAURANT, "restaurantName": "Luigi's",
        "currency": "USD", "paymentMethod": "CashOnDelivery",
        "items": [
            {"menuItemId": Uuid::from_u128(2), "name": "Margherita Pizza", "quantity": 1,
             "unitPrice": 12.00},
            {"menuItemId": Uuid::from_u128(3), "name": "Calzone", "quantity": 1, "unitPrice": 15.00,
             "customizations": [{"groupName": "Extras", "choiceName": "Olives",
                                 "priceAdjustment": 1.50}]}],
        "deliveryAddress": {"street": "1 Main St", "city": "Springfield", "zipCode": "12345"},
        "deliveryFee": 2.99, "tip": 4.00, "tax": 0, "discount": 0
    });
    match NewOrder::parse(body.to_string().as_bytes()) {
        Ok(o) => o,
        Err(e) => panic!("bench order invalid: {e:?}"),
    }
}

fn staff() -> Principal {
    Principal {
        sub: Uuid::from_u128(0x2222),
        administrator: false,
        order_service: false,
        staff_of: vec![RESTAURANT],
        owner_of: Vec::new(),
        expires_at: i64::MAX,
    }
}

fn accept(order_id: Uuid) -> ActRequest {
    ActRequest {
        order_id,
        action: Action::Accept,
        principal: staff(),
        if_match: None,
        details: ActionDetails {
            estimated_delivery: Some(Timestamp(chrono::Utc::now().timestamp_millis() + 1_800_000)),
            ..ActionDetails::default()
        },
    }
}

// ---- SQLite: the same writer design, bench-local -----------------------------------------

const SQLITE_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS orders (
        rid INTEGER PRIMARY KEY,
        id BLOB NOT NULL UNIQUE,
        customer BLOB NOT NULL,
        restaurant BLOB NOT NULL,
        placed_at INTEGER NOT NULL,
        status INTEGER NOT NULL,
        body BLOB NOT NULL);
    CREATE INDEX IF NOT EXISTS orders_by_customer ON orders (customer, placed_at, id);
    CREATE INDEX IF NOT EXISTS orders_by_restaurant ON orders (restaurant, placed_at, id);
    CREATE TABLE IF NOT EXISTS customer_counts (
        customer BLOB NOT NULL,
        status INTEGER NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (customer, status)) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY, body BLOB NOT NULL);
    CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL) WITHOUT ROWID;
";

/// Opens `orders.sqlite` in `dir`: WAL, `synchronous=FULL` (every commit is fsynced), a 64 MiB
/// page cache like the redb store's default.
fn sqlite_open(dir: &Path) -> Connection {
    let conn = Connection::open(dir.join("orders.sqlite")).expect("sqlite open");
    conn.busy_timeout(Duration::from_secs(30)).expect("busy");
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .expect("wal");
    assert_eq!(mode, "wal");
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA cache_size=-65536;")
        .expect("pragmas");
    conn.execute_batch(SQLITE_SCHEMA).expect("schema");
    conn
}

enum SqlJob {
    Place(Box<NewOrder>, oneshot::Sender<Order>),
    Act(Box<ActRequest>, oneshot::Sender<bool>),
}

enum SqlAnswer {
    Placed(oneshot::Sender<Order>, Box<Order>),
    Acted(oneshot::Sender<bool>, bool),
}

#[derive(Clone)]
struct SqliteWriter {
    tx: mpsc::Sender<SqlJob>,
}

fn sqlite_spawn(dir: &Path, max_batch: usize) -> (SqliteWriter, JoinHandle<()>) {
    let conn = sqlite_open(dir);
    let (tx, rx) = mpsc::channel(8192);
    let join = std::thread::spawn(move || sqlite_run(conn, rx, max_batch.max(1)));
    (SqliteWriter { tx }, join)
}

struct SqlState {
    last_now: i64,
    seq: i64,
    events: Vec<Arc<OrderEvent>>,
}

impl SqlState {
    fn now(&mut self) -> Timestamp {
        self.last_now = self.last_now.max(chrono::Utc::now().timestamp_millis());
        Timestamp(self.last_now)
    }
}

fn meta_get(txn: &rusqlite::Transaction<'_>, key: &str) -> i64 {
    txn.prepare_cached("SELECT v FROM meta WHERE k = ?1")
        .expect("prepare")
        .query_row([key], |r| r.get(0))
        .optional()
        .expect("meta")
        .unwrap_or(0)
}

fn meta_set(txn: &rusqlite::Transaction<'_>, key: &str, v: i64) {
    txn.prepare_cached(
        "INSERT INTO meta (k, v) VALUES (?1, ?2) ON CONFLICT (k) DO UPDATE SET v = ?2",
    )
    .expect("prepare")
    .execute(params![key, v])
    .expect("meta set");
}

fn bump_count(txn: &rusqlite::Transaction<'_>, customer: Uuid, status: OrderStatus, delta: i64) {
    let c = customer.as_bytes().as_slice();
    txn.prepare_cached(
        "INSERT INTO customer_counts (customer, status, n) VALUES (?1, ?2, ?3)
         ON CONFLICT (customer, status) DO UPDATE SET n = n + ?3",
    )
    .expect("prepare")
    .execute(params![c, status.code(), delta])
    .expect("count");
    if delta < 0 {
        txn.prepare_cached(
            "DELETE FROM customer_counts WHERE customer = ?1 AND status = ?2 AND n <= 0",
        )
        .expect("prepare")
        .execute(params![c, status.code()])
        .expect("count cleanup");
    }
}

fn record_event(
    txn: &rusqlite::Transaction<'_>,
    st: &mut SqlState,
    kind: EventKind,
    order: &Order,
) {
    st.seq += 1;
    let event = OrderEvent {
        seq: st.seq as u64,
        kind,
        customer_id: order.customer_id,
        dto: OrderStatusBroadcast::of(order, order.updated_at, Some(Uuid::now_v7())),
    };
    let bytes = rmp_serde::to_vec_named(&event).expect("encode event");
    txn.prepare_cached("INSERT INTO outbox (seq, body) VALUES (?1, ?2)")
        .expect("prepare")
        .execute(params![st.seq, bytes])
        .expect("outbox");
    if st.seq > OUTBOX_KEEP {
        txn.prepare_cached("DELETE FROM outbox WHERE seq = ?1")
            .expect("prepare")
            .execute([st.seq - OUTBOX_KEEP])
            .expect("outbox trim");
    }
    st.events.push(Arc::new(event));
}

fn sqlite_place(txn: &rusqlite::Transaction<'_>, st: &mut SqlState, new: NewOrder) -> Order {
    let now = st.now();
    let year_key = format!("order_seq/{}", now.year());
    let n = meta_get(txn, &year_key) + 1;
    meta_set(txn, &year_key, n);
    let number = format!("ORD-{}-{:06}", now.year(), n);
    let order = new.into_order(Uuid::now_v7(), number, now, &mut Uuid::new_v4);
    let body = rmp_serde::to_vec_named(&order).expect("encode order");
    txn.prepare_cached(
        "INSERT INTO orders (id, customer, restaurant, placed_at, status, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .expect("prepare")
    .execute(params![
        order.id.as_bytes().as_slice(),
        order.customer_id.as_bytes().as_slice(),
        order.restaurant_id.as_bytes().as_slice(),
        order.placed_at.millis(),
        order.status.code(),
        body
    ])
    .expect("insert order");
    bump_count(txn, order.customer_id, order.status, 1);
    if order.status == OrderStatus::Placed {
        record_event(txn, st, EventKind::OrderPlaced, &order);
    }
    order
}

/// Applies a status action; `true` when the order changed. Refusals only happen on misuse of
/// the bench, so they are reported as `false` without the writer's detailed answers.
fn sqlite_act(txn: &rusqlite::Transaction<'_>, st: &mut SqlState, req: &ActRequest) -> bool {
    let id = req.order_id.as_bytes().as_slice();
    let Some(raw): Option<Vec<u8>> = txn
        .prepare_cached("SELECT body FROM orders WHERE id = ?1")
        .expect("prepare")
        .query_row([id], |r| r.get(0))
        .optional()
        .expect("select order")
    else {
        return false;
    };
    let mut order: Order = rmp_serde::from_slice(&raw).expect("decode order");
    // The writer's own decision (capacities, status machine, If-Match), shared, not copied.
    let Ok(Step::Move { to, events }) =
        may_act(&req.principal, &order, req.action, req.if_match.as_deref())
    else {
        return false;
    };
    let now = st.now();
    let old = order.advance(req.action, to, now, &req.details);
    let body = rmp_serde::to_vec_named(&order).expect("encode order");
    txn.prepare_cached("UPDATE orders SET status = ?2, body = ?3 WHERE id = ?1")
        .expect("prepare")
        .execute(params![id, order.status.code(), body])
        .expect("update order");
    bump_count(txn, order.customer_id, old, -1);
    bump_count(txn, order.customer_id, to, 1);
    for kind in events {
        record_event(txn, st, kind, &order);
    }
    true
}

fn sqlite_run(mut conn: Connection, mut rx: mpsc::Receiver<SqlJob>, max_batch: usize) {
    let mut st = SqlState {
        last_now: 0,
        seq: 0,
        events: Vec::new(),
    };
    let mut batch = Vec::with_capacity(max_batch);
    let mut answers = Vec::with_capacity(max_batch);
    while rx.blocking_recv_many(&mut batch, max_batch) > 0 {
        let txn = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .expect("begin");
        st.seq = meta_get(&txn, "event_seq");
        st.last_now = st.last_now.max(meta_get(&txn, "clock"));
        for job in batch.drain(..) {
            answers.push(match job {
                SqlJob::Place(new, reply) => {
                    SqlAnswer::Placed(reply, Box::new(sqlite_place(&txn, &mut st, *new)))
                }
                SqlJob::Act(req, reply) => SqlAnswer::Acted(reply, sqlite_act(&txn, &mut st, &req)),
            });
        }
        meta_set(&txn, "event_seq", st.seq);
        meta_set(&txn, "clock", st.last_now);
        txn.commit().expect("commit");
        // Committed: the events would go to the hubs now.
        st.events.clear();
        for a in answers.drain(..) {
            match a {
                SqlAnswer::Placed(reply, order) => {
                    let _ = reply.send(*order);
                }
                SqlAnswer::Acted(reply, changed) => {
                    let _ = reply.send(changed);
                }
            }
        }
    }
}

/// SQLite reads on their own connection (WAL readers never wait for the writer).
struct SqliteReader {
    conn: Connection,
}

impl SqliteReader {
    fn get_order(&self, id: Uuid) -> Option<Order> {
        self.conn
            .prepare_cached("SELECT body FROM orders WHERE id = ?1")
            .expect("prepare")
            .query_row([id.as_bytes().as_slice()], |r| r.get::<_, Vec<u8>>(0))
            .optional()
            .expect("select")
            .map(|raw| rmp_serde::from_slice(&raw).expect("decode"))
    }

    /// Page `page` of a customer's orders, newest first, with the total from the counts.
    fn history(&self, customer: Uuid, page: u32, size: u32) -> (Vec<Order>, u64) {
        let c = customer.as_bytes().as_slice();
        let total: i64 = self
            .conn
            .prepare_cached("SELECT COALESCE(SUM(n), 0) FROM customer_counts WHERE customer = ?1")
            .expect("prepare")
            .query_row([c], |r| r.get(0))
            .expect("count");
        let skip = i64::from(page.saturating_sub(1)) * i64::from(size);
        let mut orders = Vec::with_capacity(size as usize);
        if skip < total {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT body FROM orders WHERE customer = ?1
                     ORDER BY placed_at DESC, id DESC LIMIT ?2 OFFSET ?3",
                )
                .expect("prepare");
            let mut rows = stmt.query(params![c, size, skip]).expect("query");
            while let Some(row) = rows.next().expect("row") {
                let raw = row.get_ref(0).expect("body").as_blob().expect("blob");
                orders.push(rmp_serde::from_slice(raw).expect("decode"));
            }
        }
        (orders, total as u64)
    }
}

// ---- Both engines behind one driver ---------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Engine {
    Redb,
    Sqlite,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Redb => "redb",
            Engine::Sqlite => "sqlite",
        }
    }
}

#[derive(Clone)]
enum Writer {
    Redb(WriterHandle),
    Sqlite(SqliteWriter),
}

impl Writer {
    async fn place(&self, order: NewOrder) -> Uuid {
        match self {
            Writer::Redb(h) => match h
                .place(PlaceRequest {
                    order,
                    idempotency: None,
                })
                .await
            {
                Ok(Placed::Created(o)) => o.id,
                other => panic!("place failed: {other:?}"),
            },
            Writer::Sqlite(h) => {
                let (tx, rx) = oneshot::channel();
                h.tx.send(SqlJob::Place(Box::new(order), tx))
                    .await
                    .expect("queue");
                rx.await.expect("answer").id
            }
        }
    }

    async fn accept(&self, order: Uuid) {
        match self {
            Writer::Redb(h) => match h.act(accept(order)).await {
                Ok(Acted::Changed(_)) => {}
                other => panic!("accept failed: {other:?}"),
            },
            Writer::Sqlite(h) => {
                let (tx, rx) = oneshot::channel();
                h.tx.send(SqlJob::Act(Box::new(accept(order)), tx))
                    .await
                    .expect("queue");
                assert!(rx.await.expect("answer"), "accept failed");
            }
        }
    }
}

/// A database of one engine with two writers on it: `timed` with the batch limit under test
/// and `loader` with a large one, to prepare data outside the timing. (Both engines serialize
/// write transactions, and the loader is idle while `timed` is measured.)
struct Db {
    _dir: tempfile::TempDir,
    redb: Option<Store>,
    sqlite: Option<SqliteReader>,
    timed: Writer,
    loader: Writer,
    joins: Vec<JoinHandle<()>>,
}

impl Db {
    fn open(engine: Engine, max_batch: usize) -> Db {
        let dir = tempfile::tempdir().expect("tempdir");
        match engine {
            Engine::Redb => {
                let store = Store::open(dir.path(), &StoreSettings::default()).expect("open");
                let spawn = |max_batch| {
                    let settings = WriterSettings {
                        queue: 8192,
                        max_batch,
                        ..WriterSettings::default()
                    };
                    spawn_writer(&store, settings, Arc::new(NoSink), None).expect("writer")
                };
                let (timed, j1) = spawn(max_batch);
                let (loader, j2) = spawn(LOAD_BATCH);
                Db {
                    _dir: dir,
                    redb: Some(store),
                    sqlite: None,
                    timed: Writer::Redb(timed),
                    loader: Writer::Redb(loader),
                    joins: vec![j1, j2],
                }
            }
            Engine::Sqlite => {
                let (timed, j1) = sqlite_spawn(dir.path(), max_batch);
                let (loader, j2) = sqlite_spawn(dir.path(), LOAD_BATCH);
                let conn = sqlite_open(dir.path());
                Db {
                    _dir: dir,
                    redb: None,
                    sqlite: Some(SqliteReader { conn }),
                    timed: Writer::Sqlite(timed),
                    loader: Writer::Sqlite(loader),
                    joins: vec![j1, j2],
                }
            }
        }
    }

    /// Drops the writers' handles and waits for their threads (the last commit is done).
    fn close(self) {
        let Db {
            _dir,
            redb,
            sqlite,
            timed,
            loader,
            joins,
        } = self;
        drop((timed, loader, redb, sqlite));
        for j in joins {
            j.join().expect("writer thread");
        }
    }
}

/// Runs `f(0..n)` from `CONCURRENCY` tasks (task t takes t, t + CONCURRENCY, …, in turn) and
/// returns the wall time until every call answered.
fn drive<F, Fut>(rt: &Runtime, n: usize, f: F) -> Duration
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    rt.block_on(async move {
        let start = Instant::now();
        let tasks: Vec<_> = (0..CONCURRENCY.min(n))
            .map(|t| {
                let f = f.clone();
                tokio::spawn(async move {
                    for i in (t..n).step_by(CONCURRENCY) {
                        f(i).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        start.elapsed()
    })
}

/// Places `n` orders of `customer` through `w`; returns their ids in placement order.
fn place_n(rt: &Runtime, w: &Writer, customer: Uuid, n: usize) -> Vec<Uuid> {
    let template = new_order(customer);
    let ids = Arc::new(std::sync::Mutex::new(vec![Uuid::nil(); n]));
    let (w, ids2) = (w.clone(), ids.clone());
    drive(rt, n, move |i| {
        let (w, o, ids) = (w.clone(), template.clone(), ids2.clone());
        async move {
            let id = w.place(o).await;
            ids.lock().expect("ids")[i] = id;
        }
    });
    let ids = std::mem::take(&mut *ids.lock().expect("ids"));
    ids
}

/// Places `n` orders through the writer under test; the wall time of the whole run.
fn time_places(rt: &Runtime, db: &Db, template: &NewOrder, n: usize) -> Duration {
    let (w, o) = (db.timed.clone(), template.clone());
    drive(rt, n, move |_| {
        let (w, o) = (w.clone(), o.clone());
        async move {
            w.place(o).await;
        }
    })
}

/// Places `n` orders with the loader (not timed), then accepts each through the writer under
/// test; the wall time of the accepts.
fn time_accepts(rt: &Runtime, db: &Db, customer: Uuid, n: usize) -> Duration {
    let ids = Arc::new(place_n(rt, &db.loader, customer, n));
    let w = db.timed.clone();
    drive(rt, n, move |i| {
        let (w, id) = (w.clone(), ids[i]);
        async move { w.accept(id).await }
    })
}

// ---- Benches --------------------------------------------------------------------------------

fn durable_group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);
    g.warm_up_time(Duration::from_secs(2));
    g.measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements(1));
    g
}

fn durable_place_order(c: &mut Criterion) {
    let rt = runtime();
    let mut g = durable_group(c, "durable_place_order");
    for engine in [Engine::Redb, Engine::Sqlite] {
        for (label, batch) in [
            ("one_commit_per_request", 1usize),
            ("group_commit_512", 512),
        ] {
            let mut db = None;
            let template = new_order(Uuid::new_v4());
            let id = BenchmarkId::new(engine.name(), label);
            g.bench_function(id, |b| {
                let db = db.get_or_insert_with(|| Db::open(engine, batch));
                b.iter_custom(|iters| time_places(&rt, db, &template, iters as usize))
            });
            if let Some(db) = db {
                db.close();
            }
        }
    }
    g.finish();
}

fn durable_transition(c: &mut Criterion) {
    let rt = runtime();
    let mut g = durable_group(c, "durable_transition");
    for engine in [Engine::Redb, Engine::Sqlite] {
        for batch in [1usize, 10, 100] {
            let mut db = None;
            let customer = Uuid::new_v4();
            let id = BenchmarkId::new(engine.name(), format!("batch_{batch}"));
            g.bench_function(id, |b| {
                let db = db.get_or_insert_with(|| Db::open(engine, batch));
                b.iter_custom(|iters| time_accepts(&rt, db, customer, iters as usize))
            });
            if let Some(db) = db {
                db.close();
            }
        }
    }
    g.finish();
}

/// One engine's read database: customers with 10, 10,000 and 100,000 orders (shrunk in test
/// mode), as (order count, customer, one of its order ids), smallest first.
struct ReadDb {
    db: Db,
    customers: Vec<(usize, Uuid, Uuid)>,
}

impl ReadDb {
    fn build(rt: &Runtime, engine: Engine) -> ReadDb {
        let sizes: [usize; 3] = if measuring() {
            [10, 10_000, 100_000]
        } else {
            [10, 100, 1_000]
        };
        let started = Instant::now();
        let db = Db::open(engine, 1);
        // Largest history first, so the small customer's orders are the newest in the file.
        let mut customers = Vec::new();
        for &n in sizes.iter().rev() {
            let customer = Uuid::new_v4();
            let ids = place_n(rt, &db.loader, customer, n);
            customers.push((n, customer, ids[0]));
        }
        customers.reverse();
        eprintln!(
            "{}: placed {} orders in {:.1} s",
            engine.name(),
            sizes.iter().sum::<usize>(),
            started.elapsed().as_secs_f64()
        );
        ReadDb { db, customers }
    }
}

fn reads(c: &mut Criterion) {
    let rt = runtime();
    let engines = [Engine::Redb, Engine::Sqlite];
    // Built on first use, so a filtered run skips what it does not measure.
    let dbs: [OnceCell<ReadDb>; 2] = [OnceCell::new(), OnceCell::new()];
    let read_db = |i: usize| dbs[i].get_or_init(|| ReadDb::build(&rt, engines[i]));

    let mut g = c.benchmark_group("status_read");
    for (i, engine) in engines.iter().enumerate() {
        g.bench_function(engine.name(), |b| {
            let rd = read_db(i);
            let id = rd.customers[0].2;
            match engine {
                Engine::Redb => {
                    let store = rd.db.redb.as_ref().expect("redb");
                    b.iter(|| store.get_order(id).expect("read").expect("found"))
                }
                Engine::Sqlite => {
                    let r = rd.db.sqlite.as_ref().expect("sqlite");
                    b.iter(|| r.get_order(id).expect("found"))
                }
            }
        });
    }
    // What `GET /status` reads for a live order: the in-memory head the writer keeps (no
    // read transaction, no decode). Not an engine comparison; shown for scale.
    g.bench_function("redb_live_head", |b| {
        let rd = read_db(0);
        let store = rd.db.redb.as_ref().expect("redb");
        let id = rd.customers[0].2;
        b.iter(|| store.get_head(id).expect("read").expect("found"))
    });
    g.finish();

    let mut g = c.benchmark_group("history_page1");
    for (i, engine) in engines.iter().enumerate() {
        for k in 0..3 {
            // The label is the nominal size; test mode uses the shrunk sizes under it.
            let label = [10, 10_000, 100_000][k];
            g.bench_function(BenchmarkId::new(engine.name(), label), |b| {
                let rd = read_db(i);
                let (n, customer, _) = rd.customers[k];
                let check = |orders: usize, total: u64| {
                    assert_eq!((orders, total), (10, n as u64), "page 1 of {n}");
                };
                match engine {
                    Engine::Redb => {
                        let store = rd.db.redb.as_ref().expect("redb");
                        let p = store.history(customer, None, 1, 10).expect("history");
                        check(p.orders.len(), p.total_count);
                        b.iter(|| store.history(customer, None, 1, 10).expect("history"))
                    }
                    Engine::Sqlite => {
                        let r = rd.db.sqlite.as_ref().expect("sqlite");
                        let (orders, total) = r.history(customer, 1, 10);
                        check(orders.len(), total);
                        b.iter(|| r.history(customer, 1, 10))
                    }
                }
            });
        }
    }
    g.finish();
    if paired_wanted("reads") {
        paired_reads(&read_db);
    }
    for cell in dbs {
        if let Some(rd) = cell.into_inner() {
            rd.db.close();
        }
    }
}

// ---- Interleaved ratios ---------------------------------------------------------------------
//
// On a shared, noisy machine two criterion benchmarks run minutes apart can see different
// loads. For the ratios the targets are about, this phase measures both sides alternately
// (A B, then B A, …) in short chunks and reports the median of the per-round ratios with its
// interquartile range. It runs in measuring mode when no filter is given, or with the filter
// `paired` (both parts), `paired_durable` or `paired_reads` alone.

/// Whether the interleaved phase `part` ("durable" or "reads") runs: see above; the filter
/// `paired_durable` or `paired_reads` runs one part alone.
fn paired_wanted(part: &str) -> bool {
    if !measuring() {
        return false;
    }
    const WITH_VALUE: [&str; 19] = [
        "--save-baseline",
        "-s",
        "--baseline",
        "-b",
        "--baseline-lenient",
        "--load-baseline",
        "--profile-time",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--color",
        "-c",
        "--output-format",
        "--plotting-backend",
        "--format",
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut filters = Vec::new();
    let mut i = 0;
    while i < args.len() {
        if WITH_VALUE.contains(&args[i].as_str()) {
            i += 2;
            continue;
        }
        if !args[i].starts_with('-') {
            filters.push(args[i].as_str());
        }
        i += 1;
    }
    let alone = format!("paired_{part}");
    filters.is_empty() || filters == ["paired"] || filters == [alone.as_str()]
}

fn fmt_secs(s: f64) -> String {
    if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else if s >= 1e-6 {
        format!("{:.1} µs", s * 1e6)
    } else {
        format!("{:.0} ns", s * 1e9)
    }
}

/// The value at quantile `q` of sorted `v` (nearest rank).
fn quantile(v: &[f64], q: f64) -> f64 {
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Runs `a` and `b` (each returns seconds per operation for one chunk) alternately for
/// `rounds` rounds after one untimed chunk each, and prints the median ratio a/b.
fn interleave(name: &str, rounds: usize, a: &mut dyn FnMut() -> f64, b: &mut dyn FnMut() -> f64) {
    a();
    b();
    let (mut ta, mut tb, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        let (x, y) = if r % 2 == 0 {
            let x = a();
            (x, b())
        } else {
            let y = b();
            (a(), y)
        };
        ta.push(x);
        tb.push(y);
        ratio.push(x / y);
    }
    for v in [&mut ta, &mut tb, &mut ratio] {
        v.sort_by(f64::total_cmp);
    }
    println!(
        "paired: {name}: A/B = {:.3} (IQR {:.3} to {:.3}; {rounds} rounds), A {} B {} per op",
        quantile(&ratio, 0.5),
        quantile(&ratio, 0.25),
        quantile(&ratio, 0.75),
        fmt_secs(quantile(&ta, 0.5)),
        fmt_secs(quantile(&tb, 0.5)),
    );
}

fn paired_durable(_: &mut Criterion) {
    if !paired_wanted("durable") {
        return;
    }
    let rt = runtime();
    let template = new_order(Uuid::new_v4());
    /// (engine, batch limit, requests per chunk)
    type Side = (Engine, usize, usize);
    let place_pairs: [(&str, Side, Side); 4] = [
        (
            "place, redb: group commit 512 (A) vs one commit per request (B)",
            (Engine::Redb, 512, 4000),
            (Engine::Redb, 1, 100),
        ),
        (
            "place, sqlite: group commit 512 (A) vs one commit per request (B)",
            (Engine::Sqlite, 512, 4000),
            (Engine::Sqlite, 1, 100),
        ),
        (
            "place, one commit per request: redb (A) vs sqlite (B)",
            (Engine::Redb, 1, 100),
            (Engine::Sqlite, 1, 100),
        ),
        (
            "place, group commit 512: redb (A) vs sqlite (B)",
            (Engine::Redb, 512, 4000),
            (Engine::Sqlite, 512, 4000),
        ),
    ];
    for (name, (ea, ba, na), (eb, bb, nb)) in place_pairs {
        let (da, db) = (Db::open(ea, ba), Db::open(eb, bb));
        interleave(
            name,
            15,
            &mut || time_places(&rt, &da, &template, na).as_secs_f64() / na as f64,
            &mut || time_places(&rt, &db, &template, nb).as_secs_f64() / nb as f64,
        );
        da.close();
        db.close();
    }
    let transition_pairs: [(&str, Side, Side); 4] = [
        (
            "transition, redb: batch 100 (A) vs batch 1 (B)",
            (Engine::Redb, 100, 4000),
            (Engine::Redb, 1, 100),
        ),
        (
            "transition, batch 1: redb (A) vs sqlite (B)",
            (Engine::Redb, 1, 100),
            (Engine::Sqlite, 1, 100),
        ),
        (
            "transition, batch 10: redb (A) vs sqlite (B)",
            (Engine::Redb, 10, 1000),
            (Engine::Sqlite, 10, 1000),
        ),
        (
            "transition, batch 100: redb (A) vs sqlite (B)",
            (Engine::Redb, 100, 4000),
            (Engine::Sqlite, 100, 4000),
        ),
    ];
    for (name, (ea, ba, na), (eb, bb, nb)) in transition_pairs {
        let (da, db) = (Db::open(ea, ba), Db::open(eb, bb));
        let customer = Uuid::new_v4();
        interleave(
            name,
            15,
            &mut || time_accepts(&rt, &da, customer, na).as_secs_f64() / na as f64,
            &mut || time_accepts(&rt, &db, customer, nb).as_secs_f64() / nb as f64,
        );
        da.close();
        db.close();
    }
}

/// Seconds per call of `op` over `n` calls.
fn per_call(n: usize, op: &dyn Fn()) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        op();
    }
    start.elapsed().as_secs_f64() / n as f64
}

/// One read call, boxed so different reads can be paired.
type ReadOp<'a> = Box<dyn Fn() + 'a>;

/// The interleaved read comparisons, on the read databases of `reads`.
fn paired_reads<'a>(read_db: &dyn Fn(usize) -> &'a ReadDb) {
    let history = |engine: usize, k: usize| -> ReadOp<'a> {
        let rd = read_db(engine);
        let customer = rd.customers[k].1;
        match (&rd.db.redb, &rd.db.sqlite) {
            (Some(store), _) => Box::new(move || {
                std::hint::black_box(store.history(customer, None, 1, 10).expect("history"));
            }),
            (None, Some(r)) => Box::new(move || {
                std::hint::black_box(r.history(customer, 1, 10));
            }),
            _ => unreachable!("one engine per database"),
        }
    };
    let status = |engine: usize| -> ReadOp<'a> {
        let rd = read_db(engine);
        let id = rd.customers[0].2;
        match (&rd.db.redb, &rd.db.sqlite) {
            (Some(store), _) => Box::new(move || {
                std::hint::black_box(store.get_order(id).expect("read"));
            }),
            (None, Some(r)) => Box::new(move || {
                std::hint::black_box(r.get_order(id));
            }),
            _ => unreachable!("one engine per database"),
        }
    };
    let (redb, sqlite) = (0, 1);
    let pairs: [(&str, ReadOp<'a>, ReadOp<'a>); 8] = [
        (
            "history page 1, redb: 100,000 orders (A) vs 10 orders (B)",
            history(redb, 2),
            history(redb, 0),
        ),
        (
            "history page 1, redb: 10,000 orders (A) vs 10 orders (B)",
            history(redb, 1),
            history(redb, 0),
        ),
        (
            "history page 1, sqlite: 100,000 orders (A) vs 10 orders (B)",
            history(sqlite, 2),
            history(sqlite, 0),
        ),
        (
            "history page 1, 10 orders: redb (A) vs sqlite (B)",
            history(redb, 0),
            history(sqlite, 0),
        ),
        (
            "history page 1, 10,000 orders: redb (A) vs sqlite (B)",
            history(redb, 1),
            history(sqlite, 1),
        ),
        (
            "history page 1, 100,000 orders: redb (A) vs sqlite (B)",
            history(redb, 2),
            history(sqlite, 2),
        ),
        (
            "whole order by id: redb (A) vs sqlite (B)",
            status(redb),
            status(sqlite),
        ),
        (
            "history page 1 (A) vs whole order by id (B), redb, 10 orders",
            history(redb, 0),
            status(redb),
        ),
    ];
    for (name, a, b) in pairs {
        interleave(name, 31, &mut || per_call(2000, &*a), &mut || {
            per_call(2000, &*b)
        });
    }
}

criterion_group!(
    benches,
    durable_place_order,
    durable_transition,
    paired_durable,
    reads
);
criterion_main!(benches);
