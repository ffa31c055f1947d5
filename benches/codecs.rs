//! Hub codec benches: one `OrderStatusBroadcast` event encoded for fan-out as JSON and as
//! MessagePack through `hub::protocol::encode_event`, and one inbound payload holding 100
//! `SubscribeToOrder` invocations decoded with the per-connection `Decoder`, in both protocols.
//!
//! Same-run baselines: serde's derived encoders of the bare DTO (no invocation envelope, no
//! framing, store field names: not the wire format, only a yardstick), and decoding each
//! inbound record into a generic `serde_json::Value` instead of the typed envelope.
//!
//! Run: `cargo bench --bench codecs`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ordertrack::testing::protocol::{
    encode_client_message, encode_event, Arg, ClientMessage, Decoder, Protocol, RECORD_SEPARATOR,
};
use ordertrack::testing::{EventKind, OrderStatus, OrderStatusBroadcast, Timestamp};
use std::hint::black_box;
use uuid::Uuid;

/// Invocations per inbound payload.
const BATCH: usize = 100;

/// An `Accepted` status change with every optional time set, as the hub sends it.
fn dto() -> OrderStatusBroadcast {
    let now = Timestamp(1_767_225_600_123);
    OrderStatusBroadcast {
        order_id: Uuid::from_u128(0x0196_0d2e_6c1a_7b3c_9d4e_5f60_7182_93a4),
        order_number: "ORD-2026-004217".into(),
        status: OrderStatus::Accepted,
        restaurant_id: Uuid::from_u128(0xa1b2_c3d4_e5f6_4890_abcd_ef12_3456_7890),
        last_update: now,
        estimated_delivery: Some(now.plus_millis(30 * 60 * 1000)),
        actual_delivery: None,
        delivered_at: None,
        occurred_on: now,
        event_id: Some(Uuid::from_u128(0x0196_0d2e_6c1b_7000_8000_0000_0000_0042)),
        version: 3,
        sequence: Some(1),
    }
}

fn encode(c: &mut Criterion) {
    let dto = dto();
    let method = ordertrack::testing::client_method(EventKind::StatusChanged);
    let mut g = c.benchmark_group("encode_event");
    g.throughput(Throughput::Elements(1));
    for (name, protocol) in [
        ("json", Protocol::Json),
        ("messagepack", Protocol::MessagePack),
    ] {
        g.bench_function(BenchmarkId::new("encode_event", name), |b| {
            b.iter(|| encode_event(protocol, black_box(method), black_box(&dto)))
        });
    }
    g.bench_function(BenchmarkId::new("baseline_serde_derive", "json"), |b| {
        b.iter(|| serde_json::to_vec(black_box(&dto)).expect("json"))
    });
    g.bench_function(
        BenchmarkId::new("baseline_serde_derive", "messagepack"),
        |b| b.iter(|| rmp_serde::to_vec_named(black_box(&dto)).expect("msgpack")),
    );
    g.finish();
}

/// `BATCH` framed `SubscribeToOrder` invocations concatenated into one payload.
fn inbound_payload(protocol: Protocol) -> Vec<u8> {
    let mut payload = Vec::new();
    for i in 0..BATCH {
        let msg = ClientMessage::Invocation {
            invocation_id: Some(i.to_string()),
            target: "SubscribeToOrder".into(),
            arguments: vec![Arg::Str(Uuid::from_u128(i as u128 + 1).to_string())],
            stream_ids: Vec::new(),
        };
        payload.extend_from_slice(&encode_client_message(protocol, &msg));
    }
    payload
}

/// Pushes one payload into a connection's decoder and drains every message.
fn decode_all(decoder: &mut Decoder, payload: &[u8]) -> usize {
    decoder.push(payload);
    let mut n = 0;
    while let Some(msg) = decoder.next_message().expect("valid payload") {
        black_box(msg);
        n += 1;
    }
    n
}

/// Reads a SignalR length prefix (7 bits per byte, least significant group first).
fn varint(buf: &[u8]) -> (usize, usize) {
    let mut value = 0usize;
    for (i, &b) in buf.iter().enumerate().take(5) {
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return (value, i + 1);
        }
    }
    panic!("bad length prefix")
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_100_invocations");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, protocol) in [
        ("json", Protocol::Json),
        ("messagepack", Protocol::MessagePack),
    ] {
        let payload = inbound_payload(protocol);
        let mut decoder = Decoder::new(protocol);
        assert_eq!(decode_all(&mut decoder, &payload), BATCH);
        g.bench_function(BenchmarkId::new("decoder", name), |b| {
            b.iter(|| decode_all(&mut decoder, black_box(&payload)))
        });
    }
    let json = inbound_payload(Protocol::Json);
    g.bench_function(BenchmarkId::new("baseline_generic_value", "json"), |b| {
        b.iter(|| {
            let mut n = 0;
            for record in black_box(&json[..json.len() - 1]).split(|&b| b == RECORD_SEPARATOR) {
                let v: serde_json::Value = serde_json::from_slice(record).expect("json");
                black_box(v);
                n += 1;
            }
            n
        })
    });
    let msgpack = inbound_payload(Protocol::MessagePack);
    g.bench_function(
        BenchmarkId::new("baseline_generic_value", "messagepack"),
        |b| {
            b.iter(|| {
                let mut rest = black_box(&msgpack[..]);
                let mut n = 0;
                while !rest.is_empty() {
                    let (len, used) = varint(rest);
                    let v: serde_json::Value =
                        rmp_serde::from_slice(&rest[used..used + len]).expect("msgpack");
                    black_box(v);
                    rest = &rest[used + len..];
                    n += 1;
                }
                n
            })
        },
    );
    g.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
