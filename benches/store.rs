//! Store benches: durable writes through the single writer with group commit against one
//! commit per request (the same writer with a batch limit of 1), in the same run, on the same
//! disk; plus a status read and a history page.
//!
//! Run: `cargo bench --bench store` (add `-- --quick` for a short run).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ordertrack::domain::{NewOrder, OrderEvent};
use ordertrack::store::writer::{self, EventSink};
use ordertrack::store::{PlaceRequest, Store, StoreSettings, WriterSettings};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

struct NoSink;
impl EventSink for NoSink {
    fn publish(&self, _: Vec<Arc<OrderEvent>>) {}
}

fn order(customer: Uuid) -> NewOrder {
    let body = serde_json::json!({
        "customerId": customer, "restaurantId": Uuid::new_v4(), "restaurantName": "Bench",
        "currency": "USD",
        "items": [{"menuItemId": Uuid::new_v4(), "name": "Pizza", "quantity": 1, "unitPrice": 12.00}],
        "deliveryFee": 2.99, "tip": 1, "tax": 0, "discount": 0, "paymentMethod": "CashOnDelivery"
    });
    match NewOrder::parse(body.to_string().as_bytes()) {
        Ok(o) => o,
        Err(e) => panic!("bench order invalid: {e:?}"),
    }
}

/// Places `n` orders from `concurrency` tasks; returns the elapsed time.
fn place_many(
    rt: &tokio::runtime::Runtime,
    max_batch: usize,
    n: u64,
    concurrency: u64,
) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), &StoreSettings::default()).expect("open");
    let (handle, join) = writer::spawn(
        &store,
        WriterSettings {
            queue: 4096,
            max_batch,
        },
        Arc::new(NoSink),
        None,
    )
    .expect("writer");
    let template = order(Uuid::new_v4());
    let elapsed = rt.block_on(async move {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..concurrency {
            let h = handle.clone();
            let o = template.clone();
            let count = n / concurrency + u64::from(t < n % concurrency);
            tasks.push(tokio::spawn(async move {
                for _ in 0..count {
                    h.place(PlaceRequest {
                        order: o.clone(),
                        idempotency: None,
                    })
                    .await
                    .expect("place");
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        start.elapsed()
    });
    let _ = join.join();
    elapsed
}

fn writes(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("durable_place_order");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    let per_iter = 2_000u64;
    g.throughput(Throughput::Elements(per_iter));
    for (name, batch) in [("one_commit_per_request", 1usize), ("group_commit", 512)] {
        g.bench_with_input(BenchmarkId::new(name, 64), &batch, |b, &batch| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += place_many(&rt, batch, per_iter, 64);
                }
                total
            })
        });
    }
    g.finish();
}

fn reads(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), &StoreSettings::default()).expect("open");
    let (handle, join) =
        writer::spawn(&store, WriterSettings::default(), Arc::new(NoSink), None).expect("writer");
    let small = Uuid::new_v4();
    let big = Uuid::new_v4();
    let (small_id, _) = rt.block_on(async {
        let mut first = None;
        for (customer, n) in [(small, 10u32), (big, 10_000)] {
            let mut futs = Vec::new();
            for _ in 0..n {
                let h = handle.clone();
                let o = order(customer);
                futs.push(tokio::spawn(async move {
                    h.place(PlaceRequest {
                        order: o,
                        idempotency: None,
                    })
                    .await
                }));
            }
            for f in futs {
                if let Ok(Ok(ordertrack::store::Placed::Created(o))) = f.await {
                    first.get_or_insert(o.id);
                }
            }
        }
        (first.expect("an order"), ())
    });
    drop(handle);
    let _ = join.join();
    let mut g = c.benchmark_group("reads");
    g.bench_function("status_read", |b| {
        b.iter(|| store.get_order(small_id).expect("read"))
    });
    for (name, customer) in [
        ("history_page1_10_orders", small),
        ("history_page1_10000_orders", big),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| store.history(customer, None, 1, 10).expect("history"))
        });
    }
    g.finish();
}

criterion_group!(benches, writes, reads);
criterion_main!(benches);
