//! Encode → decode round trips the server relies on (issue 5), as property tests: the store's
//! MessagePack records of orders and outbox events, RFC 3339 timestamps, order bodies through
//! parse → order → details JSON, and hub events as the JSON and MessagePack protocols put them
//! on the wire (read back with the tests' own independent decoders).

mod common;
use common::hub::{mp_messages, Mp};
use ordertrack::testing::protocol::{encode_event, Protocol};
use ordertrack::testing::{
    EventKind, NewOrder, Order, OrderEvent, OrderStatus, OrderStatusBroadcast, Timestamp,
};
use proptest::prelude::*;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use uuid::Uuid;

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

/// Milliseconds from 1970 to 2200.
fn millis() -> impl Strategy<Value = i64> {
    0i64..7_258_118_400_000
}

fn status() -> impl Strategy<Value = OrderStatus> {
    proptest::sample::select(OrderStatus::ALL.to_vec())
}

fn dto() -> impl Strategy<Value = OrderStatusBroadcast> {
    (
        (uuid(), 1u32..999_999, status(), uuid()),
        (
            millis(),
            proptest::option::of(millis()),
            proptest::option::of(millis()),
        ),
        (millis(), proptest::option::of(uuid()), any::<u64>()),
    )
        .prop_map(
            |((id, n, status, r), (last, eta, actual), (occurred, event, version))| {
                OrderStatusBroadcast {
                    order_id: id,
                    order_number: format!("ORD-2026-{n:06}"),
                    status,
                    restaurant_id: r,
                    last_update: Timestamp(last),
                    estimated_delivery: eta.map(Timestamp),
                    actual_delivery: actual.map(Timestamp),
                    delivered_at: (status == OrderStatus::Delivered)
                        .then(|| actual.map(Timestamp))
                        .flatten(),
                    occurred_on: Timestamp(occurred),
                    event_id: event,
                    version,
                    sequence: Some(version),
                }
            },
        )
}

fn kind() -> impl Strategy<Value = EventKind> {
    proptest::sample::select(vec![
        EventKind::OrderPlaced,
        EventKind::PaymentSucceeded,
        EventKind::PaymentFailed,
        EventKind::StatusChanged,
    ])
}

/// An amount with exactly `digits` fraction digits, as JSON text (number or string).
fn amount(digits: u32, max_units: i64) -> impl Strategy<Value = (Decimal, bool)> {
    (0i64..max_units * 10i64.pow(digits), any::<bool>())
        .prop_map(move |(minor, as_string)| (Decimal::new(minor, digits), as_string))
}

fn amount_json((d, as_string): &(Decimal, bool)) -> Value {
    if *as_string {
        json!(d.to_string())
    } else {
        serde_json::from_str(&d.to_string()).expect("decimal as a JSON number")
    }
}

/// A valid order body in one of a few currencies, its amounts as numbers or strings.
fn order_body() -> impl Strategy<Value = Value> {
    proptest::sample::select(vec![("USD", 2u32), ("JPY", 0), ("KWD", 3), ("EUR", 2)]).prop_flat_map(
        |(currency, digits)| {
            let item = (
                "[A-Za-z][A-Za-z ]{0,20}",
                1u32..=99,
                amount(digits, 500),
                proptest::collection::vec(amount(digits, 5), 0..3),
            );
            (
                proptest::collection::vec(item, 1..6),
                amount(digits, 20),
                amount(digits, 20),
                amount(digits, 20),
                uuid(),
                uuid(),
            )
                .prop_map(move |(items, fee, tip, tax, customer, restaurant)| {
                    let items: Vec<Value> = items
                        .iter()
                        .map(|(name, quantity, price, adjustments)| {
                            json!({
                                "menuItemId": Uuid::from_u128(7), "name": name,
                                "quantity": quantity, "unitPrice": amount_json(price),
                                "customizations": adjustments.iter().map(|a| json!({
                                    "groupName": "Extras", "choiceName": "Olives",
                                    "priceAdjustment": amount_json(a)
                                })).collect::<Vec<_>>()
                            })
                        })
                        .collect();
                    json!({
                        "customerId": customer, "restaurantId": restaurant,
                        "restaurantName": "Luigi's", "currency": currency,
                        "paymentMethod": "CashOnDelivery", "items": items,
                        "deliveryFee": amount_json(&fee), "tip": amount_json(&tip),
                        "tax": amount_json(&tax), "discount": 0
                    })
                })
        },
    )
}

fn rfc3339(t: Option<Timestamp>) -> Value {
    t.map(|t| json!(t.rfc3339())).unwrap_or(Value::Null)
}

/// Milliseconds of a MessagePack timestamp extension.
fn mp_millis(v: &Mp) -> Option<i64> {
    match v {
        Mp::Nil => None,
        other => {
            let (s, n) = other.timestamp();
            Some(s * 1000 + i64::from(n / 1_000_000))
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn timestamps_round_trip_through_rfc3339(ms in millis()) {
        let t = Timestamp(ms);
        let text = t.rfc3339();
        prop_assert!(text.ends_with('Z') && text.len() == "2026-01-01T00:00:00.000Z".len(), "{}", text);
        prop_assert_eq!(Timestamp::parse_rfc3339(&text), Some(t));
    }

    #[test]
    fn outbox_events_round_trip_through_the_store_encoding(d in dto(), k in kind(), seq in any::<u64>(), c in uuid()) {
        let e = OrderEvent { seq, kind: k, customer_id: c, dto: d };
        let bytes = rmp_serde::to_vec_named(&e).expect("encode");
        let back: OrderEvent = rmp_serde::from_slice(&bytes).expect("decode");
        prop_assert_eq!(back, e);
    }

    #[test]
    fn order_bodies_round_trip_through_parse_store_and_details(body in order_body()) {
        let bytes = serde_json::to_vec(&body).expect("json");
        let new = NewOrder::parse(&bytes).map_err(|e| TestCaseError::fail(format!("{e:?} for {body}")))?;
        let mut n = 0u128;
        let order = new.into_order(Uuid::from_u128(1), "ORD-2026-000001".into(), Timestamp(1_790_000_000_000), &mut || { n += 1; Uuid::from_u128(n) });
        let stored = rmp_serde::to_vec_named(&order).expect("encode");
        let back: Order = rmp_serde::from_slice(&stored).expect("decode");
        prop_assert_eq!(&back, &order);
        // The details JSON carries every amount exactly, with the currency's digits.
        let viewer = ordertrack::testing::Principal {
            sub: order.customer_id, administrator: false, order_service: false,
            staff_of: vec![], owner_of: vec![], expires_at: i64::MAX,
        };
        let text = serde_json::to_string(&ordertrack::testing::details(&order, &viewer)).expect("details");
        let v: Value = serde_json::from_str(&text).expect("details JSON");
        prop_assert_eq!(v["order"]["items"].as_array().map(Vec::len), Some(order.items.len()));
        let total = order.fmt(order.total);
        prop_assert!(text.contains(&format!(":{total}")), "total {} missing from {}", total, text);
        let sum: Decimal = order.items.iter().map(|i| i.line_total).sum();
        prop_assert_eq!(sum, order.subtotal);
    }

    #[test]
    fn hub_events_on_the_wire_carry_the_dto_exactly(d in dto(), k in kind()) {
        let method = ordertrack::testing::client_method(k);
        let json_frame = encode_event(Protocol::Json, method, &d);
        let text = std::str::from_utf8(&json_frame).expect("utf-8");
        prop_assert!(text.ends_with('\u{1e}'), "a JSON record ends with 0x1E");
        let v: Value = serde_json::from_str(text.trim_end_matches('\u{1e}')).expect("JSON record");
        prop_assert_eq!(&v["type"], 1);
        prop_assert_eq!(&v["target"], method);
        let a = &v["arguments"][0];
        prop_assert_eq!(&a["orderId"], &json!(d.order_id));
        prop_assert_eq!(&a["orderNumber"], &json!(d.order_number));
        prop_assert_eq!(&a["status"], d.status.as_str());
        prop_assert_eq!(&a["restaurantId"], &json!(d.restaurant_id));
        prop_assert_eq!(&a["lastUpdateTimestamp"], &rfc3339(Some(d.last_update)));
        prop_assert_eq!(&a["estimatedDeliveryTime"], &rfc3339(d.estimated_delivery));
        prop_assert_eq!(&a["actualDeliveryTime"], &rfc3339(d.actual_delivery));
        prop_assert_eq!(&a["deliveredAt"], &rfc3339(d.delivered_at));
        prop_assert_eq!(&a["occurredOnUtc"], &rfc3339(Some(d.occurred_on)));
        prop_assert_eq!(&a["eventId"], &d.event_id.map(|e| json!(e)).unwrap_or(Value::Null));
        prop_assert_eq!(&a["version"], &json!(d.version));
        prop_assert_eq!(&a["sequence"], &json!(d.sequence));

        let mp_frame = encode_event(Protocol::MessagePack, method, &d);
        let msgs = mp_messages(&mp_frame);
        prop_assert_eq!(msgs.len(), 1);
        let m = msgs[0].arr();
        prop_assert_eq!(&m[0], &Mp::Int(1));
        prop_assert_eq!(m[3].str(), method);
        let a = &m[4].arr()[0];
        prop_assert_eq!(a.get("orderId").str(), d.order_id.to_string());
        prop_assert_eq!(a.get("status").str(), d.status.as_str());
        prop_assert_eq!(mp_millis(a.get("lastUpdateTimestamp")), Some(d.last_update.millis()));
        prop_assert_eq!(mp_millis(a.get("estimatedDeliveryTime")), d.estimated_delivery.map(Timestamp::millis));
        prop_assert_eq!(mp_millis(a.get("actualDeliveryTime")), d.actual_delivery.map(Timestamp::millis));
        prop_assert_eq!(mp_millis(a.get("occurredOnUtc")), Some(d.occurred_on.millis()));
        prop_assert_eq!(a.get("version").int(), i128::from(d.version));
    }
}
