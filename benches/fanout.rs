//! Fan-out bench: one committed event dispatched in-process to 1, 100 and 10,000 subscribers of
//! its order, through the server's own `Hubs::deliver` (snapshot the group from the sharded
//! `SubscriptionTable`, encode once per protocol, push the shared `Bytes` into each
//! subscriber's bounded queue). Subscribers alternate JSON and MessagePack, so both encodings
//! are paid once each. Queues are drained after every dispatch, outside the timed region; the
//! timed region is `deliver` plus clearing the snapshot, as the dispatcher task does.
//!
//! The same-run baseline is the 1-subscriber case: compare time per subscriber (criterion's
//! element throughput) at 100 and 10,000.
//!
//! Run: `cargo bench --bench fanout`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ordertrack::testing::protocol::Protocol;
use ordertrack::testing::Metrics;
use ordertrack::testing::{EventKind, OrderEvent, OrderStatus, OrderStatusBroadcast, Timestamp};
use ordertrack::testing::{Group, HubSettings, Hubs, Outbound};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn event(order: Uuid) -> OrderEvent {
    let now = Timestamp(1_767_225_600_123);
    OrderEvent {
        seq: 42,
        kind: EventKind::StatusChanged,
        customer_id: Uuid::new_v4(),
        dto: OrderStatusBroadcast {
            order_id: order,
            order_number: "ORD-2026-004217".into(),
            status: OrderStatus::Accepted,
            restaurant_id: Uuid::new_v4(),
            last_update: now,
            estimated_delivery: Some(now.plus_millis(30 * 60 * 1000)),
            actual_delivery: None,
            delivered_at: None,
            occurred_on: now,
            event_id: Some(Uuid::now_v7()),
            version: 3,
            sequence: Some(1),
        },
    }
}

fn fanout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("fanout_one_event");
    for n in [1usize, 100, 10_000] {
        // `Hubs::new` starts its dispatcher task, so it needs the runtime; the bench calls
        // `deliver` directly and the dispatcher stays idle.
        let hubs = rt.block_on(async {
            Hubs::new(
                HubSettings::default(),
                Arc::new(Metrics::new()),
                CancellationToken::new(),
            )
        });
        let queue = hubs.settings.queue_frames;
        let order = Uuid::now_v7();
        let mut queues = Vec::with_capacity(n);
        for i in 0..n {
            let protocol = if i % 2 == 0 {
                Protocol::Json
            } else {
                Protocol::MessagePack
            };
            let id = i as u64 + 1;
            let out = Arc::new(Outbound::new(id, protocol, queue));
            assert!(hubs.subscribe(Group::Order, order, out.clone()));
            queues.push(out);
        }
        let ev = event(order);
        let mut scratch = Vec::new();
        hubs.deliver(&ev, &mut scratch);
        scratch.clear();
        for out in &queues {
            assert_eq!(out.discard_queued(), 1, "every subscriber got the event");
        }
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("subscribers", n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    hubs.deliver(&ev, &mut scratch);
                    scratch.clear();
                    total += start.elapsed();
                    for out in &queues {
                        out.discard_queued();
                    }
                }
                total
            })
        });
        drop(queues);
    }
    g.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
