//! Recovery after a crash on a large file (issue 5), and the cost of redb's quick-repair mode
//! that decides how long that recovery takes.
//!
//! The file is filled through the server's own writer (real orders, indexes and outbox), then a
//! child process (this test binary, re-run in child mode) keeps committing until it is killed
//! with SIGKILL; the parent times the reopen, which repairs the file. Both settings of
//! quick-repair are measured, as is the cost of one commit under each.
//!
//! Short here (5,000 orders); `OT_RECOVERY_ORDERS=1000000 cargo test --release --test
//! reliability_recovery -- --nocapture` (or `scripts/reliability-long.sh`) is the long version.

use ordertrack::testing::ORDERS;
use ordertrack::testing::{spawn_writer, EventSink, PlaceRequest, WriterSettings};
use ordertrack::testing::{NewOrder, OrderEvent};
use ordertrack::testing::{Store, StoreSettings};
use redb::{Database, ReadableDatabase, ReadableTableMetadata, TableDefinition};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Where the child writes while it waits to be killed.
const PROBE: TableDefinition<u64, &[u8]> = TableDefinition::new("crash_probe");
const CHILD_DIR: &str = "OT_RECOVERY_CHILD_DIR";
const CHILD_QUICK: &str = "OT_RECOVERY_CHILD_QUICK";

struct NoSink;
impl EventSink for NoSink {
    fn publish(&self, _: Vec<Arc<OrderEvent>>) {}
}

fn order_body(customer: Uuid, restaurant: Uuid) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "customerId": customer, "restaurantId": restaurant, "restaurantName": "Luigi's",
        "currency": "USD", "paymentMethod": "CashOnDelivery",
        "items": [
            {"menuItemId": Uuid::new_v4(), "name": "Margherita Pizza", "quantity": 1, "unitPrice": 12.00},
            {"menuItemId": Uuid::new_v4(), "name": "Calzone", "quantity": 2, "unitPrice": 15.00,
             "customizations": [{"groupName": "Extras", "choiceName": "Olives", "priceAdjustment": 1.50}]}
        ],
        "deliveryFee": 2.99, "tip": 4.00, "tax": 1.10, "discount": 0,
        "note": "Ring twice", "deliveryAddress": {"street": "1 Main St", "city": "Springfield"}
    }))
    .expect("json")
}

/// Places `n` orders through the server's writer (group commit) and closes the file cleanly.
fn populate(dir: &Path, n: usize) -> Duration {
    let started = Instant::now();
    let store = Store::open(dir, &StoreSettings::default()).expect("open store");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (handle, join) =
        spawn_writer(&store, WriterSettings::default(), Arc::new(NoSink), None).expect("writer");
    let restaurants: Vec<Uuid> = (0..50).map(|_| Uuid::new_v4()).collect();
    rt.block_on(async {
        let tasks = 256;
        let mut set = tokio::task::JoinSet::new();
        for t in 0..tasks {
            let handle = handle.clone();
            let restaurants = restaurants.clone();
            set.spawn(async move {
                for i in (t..n).step_by(tasks) {
                    let body = order_body(Uuid::new_v4(), restaurants[i % restaurants.len()]);
                    let order = NewOrder::parse(&body).expect("valid order");
                    handle
                        .place(PlaceRequest {
                            order,
                            idempotency: None,
                        })
                        .await
                        .expect("placed");
                }
            });
        }
        while let Some(r) = set.join_next().await {
            r.expect("task");
        }
    });
    drop(handle);
    join.join().expect("writer thread");
    drop(store);
    started.elapsed()
}

/// Child mode: commit small transactions forever (quick-repair as told) until killed.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let quick = std::env::var(CHILD_QUICK).as_deref() == Ok("1");
    let db = Database::builder()
        .set_cache_size(64 << 20)
        .open(Path::new(&dir).join("orders.redb"))
        .expect("child opens");
    let payload = vec![7u8; 700];
    for i in 0u64.. {
        let mut txn = db.begin_write().expect("begin");
        txn.set_quick_repair(quick);
        {
            let mut t = txn.open_table(PROBE).expect("probe table");
            for k in 0..16 {
                t.insert(i * 16 + k, payload.as_slice()).expect("insert");
            }
        }
        txn.commit().expect("commit");
        if i == 20 {
            println!("READY");
        }
    }
}

/// Runs the child on `dir`, kills it with SIGKILL mid-commit, returns nothing: the file is left
/// as a crash leaves it.
fn crash(dir: &Path, quick: bool) {
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir)
        .env(CHILD_QUICK, if quick { "1" } else { "0" })
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    let ready = lines.any(|l| l.map(|l| l.contains("READY")).unwrap_or(false));
    assert!(ready, "the child never got ready");
    std::thread::sleep(Duration::from_millis(150));
    child.kill().expect("SIGKILL");
    let _ = child.wait();
}

/// Opens the crashed file; returns (time to open, whether redb repaired it).
fn reopen(dir: &Path) -> (Duration, bool) {
    let repaired = Arc::new(AtomicBool::new(false));
    let flag = repaired.clone();
    let started = Instant::now();
    let db = Database::builder()
        .set_cache_size(64 << 20)
        .set_repair_callback(move |_| flag.store(true, Ordering::SeqCst))
        .open(dir.join("orders.redb"))
        .expect("reopen after the crash");
    let took = started.elapsed();
    drop(db);
    (took, repaired.load(Ordering::SeqCst))
}

/// Mean time of `n` commits of one order-sized row each, with quick-repair on or off.
fn commit_cost(dir: &Path, quick: bool, n: u64) -> Duration {
    let db = Database::builder()
        .set_cache_size(64 << 20)
        .open(dir.join("orders.redb"))
        .expect("open");
    let payload = vec![3u8; 700];
    let base = 1u64 << 40;
    let started = Instant::now();
    for i in 0..n {
        let mut txn = db.begin_write().expect("begin");
        txn.set_quick_repair(quick);
        {
            let mut t = txn.open_table(PROBE).expect("probe");
            t.insert(base + i, payload.as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
    }
    started.elapsed() / n as u32
}

fn order_count(dir: &Path) -> u64 {
    let db = Database::builder()
        .set_cache_size(16 << 20)
        .open(dir.join("orders.redb"))
        .expect("open");
    let txn = db.begin_read().expect("read");
    let t = txn.open_table(ORDERS).expect("orders");
    t.len().expect("len")
}

#[test]
fn recovery_after_a_crash_on_a_large_file_with_and_without_quick_repair() {
    let n: usize = std::env::var("OT_RECOVERY_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let filled = populate(dir, n);
    let bytes = std::fs::metadata(dir.join("orders.redb"))
        .expect("file")
        .len();
    eprintln!(
        "{n} orders written through the writer in {filled:?} ({:.0}/s), file {:.1} MiB",
        n as f64 / filled.as_secs_f64(),
        bytes as f64 / (1 << 20) as f64
    );
    let commits = if n >= 500_000 { 200 } else { 100 };
    let cost_off = commit_cost(dir, false, commits);
    let cost_on = commit_cost(dir, true, commits);

    crash(dir, false);
    let (slow, repaired_slow) = reopen(dir);
    crash(dir, true);
    let (quick, repaired_quick) = reopen(dir);
    assert!(
        repaired_slow,
        "a SIGKILL mid-commit leaves a file that needs repair"
    );
    assert_eq!(
        order_count(dir),
        n as u64,
        "every order survives both crashes"
    );
    eprintln!(
        "RESULT recovery: {n} orders, {:.1} MiB file: reopen after SIGKILL {slow:?} without \
         quick-repair (repair ran: {repaired_slow}), {quick:?} with quick-repair (repair ran: \
         {repaired_quick}); one commit {cost_off:?} without, {cost_on:?} with",
        bytes as f64 / (1 << 20) as f64
    );
    // Generous bound for the short run on a shared machine; the long run reports the figures.
    assert!(
        slow < Duration::from_secs(30) && quick < Duration::from_secs(30),
        "recovery too slow: {slow:?} / {quick:?}"
    );
}
