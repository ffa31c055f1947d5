//! Hub event delivery, end to end: REST writes on the real binary, events read from raw
//! WebSocket hub connections (JSON and MessagePack). Contract sections 4 and 5; protocol notes
//! sections 4, 5 and 6.

mod common;
use common::hub::*;
use common::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

const CUSTOMER_HUB: &str = "customer-orders";
const RESTAURANT_HUB: &str = "restaurant-orders";

/// A REST action that must succeed (200).
fn ok(server: &Server, token: &str, id: Uuid, action: &str, body: Option<Value>) -> Value {
    let (st, v) = blocking(|| act(server, token, id, action, body));
    assert_eq!(st, 200, "{action} on {id}: {v}");
    v
}

/// Reads `n` events, returning (target, dto) pairs.
async fn events(hub: &mut JsonHub, n: usize) -> Vec<(String, Value)> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(hub.event().await);
    }
    out
}

fn event_ids(evs: &[(String, Value)]) -> Vec<String> {
    evs.iter()
        .map(|(t, d)| {
            d["eventId"]
                .as_str()
                .unwrap_or_else(|| panic!("{t} without an eventId: {d}"))
                .to_string()
        })
        .collect()
}

fn assert_unique(ids: &[String]) {
    let set: HashSet<&String> = ids.iter().collect();
    assert_eq!(set.len(), ids.len(), "eventIds are not unique: {ids:?}");
    for id in ids {
        assert!(Uuid::parse_str(id).is_ok(), "eventId {id:?} is not a UUID");
    }
}

// ---- JSON event delivery --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn status_changes_arrive_in_commit_order_exactly_once() {
    let (server, cast) = setup();
    let order = blocking(|| place(&server, &cast, "CashOnDelivery"));
    let mut hub = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    let dto = hub.subscribe(order).await;
    check_dto(&dto, order, cast.restaurant, "Placed");

    ok(&server, &cast.staff_token, order, "accept", Some(eta()));
    ok(&server, &cast.staff_token, order, "preparing", None);
    ok(&server, &cast.staff_token, order, "ready", None);
    ok(
        &server,
        &cast.staff_token,
        order,
        "delivered",
        Some(json!({})),
    );
    // Repeating an action whose target status the order has: no event.
    ok(
        &server,
        &cast.staff_token,
        order,
        "delivered",
        Some(json!({})),
    );

    let evs = events(&mut hub, 4).await;
    let statuses: Vec<&str> = evs
        .iter()
        .map(|(_, d)| d["status"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        statuses,
        ["Accepted", "Preparing", "ReadyForDelivery", "Delivered"]
    );
    for (i, (target, dto)) in evs.iter().enumerate() {
        assert_eq!(target, "ReceiveOrderStatusChanged", "event {i}: {dto}");
        check_dto(dto, order, cast.restaurant, statuses[i]);
        if let Some(v) = dto.get("version") {
            assert_eq!(v, &json!(i + 2), "version of event {i}: {dto}");
        }
        assert!(
            dto["estimatedDeliveryTime"].is_string(),
            "ETA set since accept: {dto}"
        );
    }
    assert!(
        evs[3].1["actualDeliveryTime"].is_string(),
        "delivered sets actualDeliveryTime: {}",
        evs[3].1
    );
    assert_unique(&event_ids(&evs));
    hub.quiet(QUIET).await;

    // Subscribing to a finished order still answers its final state.
    let dto = hub.subscribe(order).await;
    check_dto(&dto, order, cast.restaurant, "Delivered");
}

#[tokio::test(flavor = "multi_thread")]
async fn payment_success_sends_payment_succeeded_then_placed() {
    let (server, cast) = setup();
    let order = blocking(|| place(&server, &cast, "Card"));
    let mut hub = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    let dto = hub.subscribe(order).await;
    check_dto(&dto, order, cast.restaurant, "AwaitingPayment");
    ok(
        &server,
        &cast.service_token,
        order,
        "payment-succeeded",
        None,
    );
    let evs = events(&mut hub, 2).await;
    assert_eq!(evs[0].0, "ReceiveOrderPaymentSucceeded", "{evs:?}");
    assert_eq!(evs[1].0, "ReceiveOrderPlaced", "{evs:?}");
    check_dto(&evs[1].1, order, cast.restaurant, "Placed");
    assert_eq!(evs[0].1["orderId"], order.to_string());
    assert_unique(&event_ids(&evs));
    hub.quiet(QUIET).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn payment_failure_sends_payment_failed_then_cancelled() {
    let (server, cast) = setup();
    let order = blocking(|| place(&server, &cast, "Card"));
    let mut hub = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    hub.subscribe(order).await;
    ok(&server, &cast.service_token, order, "payment-failed", None);
    let evs = events(&mut hub, 2).await;
    assert_eq!(evs[0].0, "ReceiveOrderPaymentFailed", "{evs:?}");
    assert_eq!(evs[1].0, "ReceiveOrderStatusChanged", "{evs:?}");
    check_dto(&evs[1].1, order, cast.restaurant, "Cancelled");
    assert_unique(&event_ids(&evs));
    hub.quiet(QUIET).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reject_and_customer_cancel_are_status_changes() {
    let (server, cast) = setup();
    let a = blocking(|| place(&server, &cast, "CashOnDelivery"));
    let b = blocking(|| place(&server, &cast, "CashOnDelivery"));
    let mut hub = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    hub.subscribe(a).await;
    hub.subscribe(b).await;
    ok(
        &server,
        &cast.staff_token,
        a,
        "reject",
        Some(json!({"reason": "closed"})),
    );
    ok(&server, &cast.customer_token, b, "cancel", Some(json!({})));
    let evs = events(&mut hub, 2).await;
    assert_eq!(evs[0].0, "ReceiveOrderStatusChanged");
    check_dto(&evs[0].1, a, cast.restaurant, "Rejected");
    assert_eq!(evs[1].0, "ReceiveOrderStatusChanged");
    check_dto(&evs[1].1, b, cast.restaurant, "Cancelled");
    hub.quiet(QUIET).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unsubscribe_stops_further_events() {
    let (server, cast) = setup();
    let order = blocking(|| place(&server, &cast, "CashOnDelivery"));
    let mut leaver = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    let mut witness = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    leaver.subscribe(order).await;
    witness.subscribe(order).await;

    ok(&server, &cast.staff_token, order, "accept", Some(eta()));
    assert_eq!(leaver.event().await.1["status"], "Accepted");
    assert_eq!(witness.event().await.1["status"], "Accepted");

    let c = leaver.invoke("UnsubscribeFromOrder", json!([order])).await;
    assert!(c.get("error").is_none(), "{c}");
    ok(&server, &cast.staff_token, order, "preparing", None);
    // The witness proves the event went out; the leaver must not get it.
    assert_eq!(witness.event().await.1["status"], "Preparing");
    leaver.quiet(QUIET).await;

    // Unsubscribing twice, or from an order never subscribed, is harmless.
    let c = leaver.invoke("UnsubscribeFromOrder", json!([order])).await;
    assert!(c.get("error").is_none(), "{c}");
    let c = leaver
        .invoke("UnsubscribeFromOrder", json!([Uuid::new_v4()]))
        .await;
    assert!(c.get("error").is_none(), "{c}");

    // Subscribing again resumes delivery.
    leaver.subscribe(order).await;
    ok(&server, &cast.staff_token, order, "ready", None);
    assert_eq!(leaver.event().await.1["status"], "ReadyForDelivery");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_subscribers_each_receive_every_event_once() {
    let (server, cast) = setup();
    let order = blocking(|| place(&server, &cast, "CashOnDelivery"));
    let mut customer = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    let mut staff = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.staff_token).await;
    customer.subscribe(order).await;
    staff.subscribe(order).await;

    ok(&server, &cast.staff_token, order, "accept", Some(eta()));
    ok(&server, &cast.staff_token, order, "preparing", None);
    ok(&server, &cast.staff_token, order, "ready", None);
    ok(
        &server,
        &cast.staff_token,
        order,
        "delivered",
        Some(json!({})),
    );

    let a = events(&mut customer, 4).await;
    let b = events(&mut staff, 4).await;
    customer.quiet(QUIET).await;
    staff.quiet(Duration::from_millis(50)).await;
    let (ia, ib) = (event_ids(&a), event_ids(&b));
    assert_unique(&ia);
    assert_eq!(
        ia, ib,
        "both subscribers see the same events in the same order"
    );
    for ((ta, da), (tb, db)) in a.iter().zip(&b) {
        assert_eq!(ta, tb);
        assert_eq!(da, db, "same event, same payload");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribing_twice_on_one_connection_delivers_once() {
    let (server, cast) = setup();
    let order = blocking(|| place(&server, &cast, "CashOnDelivery"));
    let mut hub = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    hub.subscribe(order).await;
    hub.subscribe(order).await;
    ok(&server, &cast.staff_token, order, "accept", Some(eta()));
    assert_eq!(hub.event().await.1["status"], "Accepted");
    hub.quiet(QUIET).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn finished_or_unsubscribed_orders_free_their_subscription_slot() {
    // The per-connection subscription limit must count live subscriptions only: contract 5,
    // "after a terminal status event the order's group is dropped". A customer who keeps one
    // connection open while ordering again and again must not be refused.
    let (server, cast) = blocking(|| {
        (
            Server::start_with(&["--hub-max-subscriptions", "2"]),
            Cast::new(),
        )
    });
    let [a, b, c, d] = blocking(|| [(); 4].map(|_| place(&server, &cast, "CashOnDelivery")));
    let mut hub = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    hub.subscribe(a).await;
    hub.subscribe(b).await;
    let refused = hub.invoke("SubscribeToOrder", json!([c])).await;
    assert!(
        refused["error"].is_string(),
        "the limit of 2 is in force: {refused}"
    );

    // An explicit unsubscribe frees a slot.
    let u = hub.invoke("UnsubscribeFromOrder", json!([b])).await;
    assert!(u.get("error").is_none(), "{u}");
    hub.subscribe(c).await;

    // A finished order frees its slot: its group is gone.
    ok(&server, &cast.customer_token, a, "cancel", Some(json!({})));
    let (_, dto) = hub.event().await;
    assert_eq!(dto["status"], "Cancelled");
    let r = hub.invoke("SubscribeToOrder", json!([d])).await;
    let after_terminal = r.get("error").cloned();
    // ... and unsubscribing from it certainly does.
    let u = hub.invoke("UnsubscribeFromOrder", json!([a])).await;
    assert!(u.get("error").is_none(), "{u}");
    let r2 = hub.invoke("SubscribeToOrder", json!([d])).await;
    assert!(
        after_terminal.is_none() && r2.get("error").is_none(),
        "subscription slots leak: with live subscriptions {{c}} only, SubscribeToOrder(d) answered \
         {after_terminal:?} after order a finished, and {r2} after UnsubscribeFromOrder(a)"
    );
}

/// Drives `order` from Placed to Delivered over REST on a plain thread (no harness `Server`
/// needed, so it can run beside async code).
fn drive_to_delivered(base: String, staff: String, order: Uuid) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let c = client();
        for (action, body) in [
            ("accept", eta()),
            ("preparing", json!({})),
            ("ready", json!({})),
            ("delivered", json!({})),
        ] {
            let r = c
                .post(format!("{base}/api/v1/orders/{order}/{action}"))
                .bearer_auth(&staff)
                .json(&body)
                .send()
                .expect("action");
            assert_eq!(r.status(), 200, "{action} on {order}");
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writes_keep_every_order_in_commit_order() {
    let (server, cast) = setup();
    let orders: Vec<Uuid> = blocking(|| {
        (0..8)
            .map(|_| place(&server, &cast, "CashOnDelivery"))
            .collect()
    });
    let mut customer = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    for o in &orders {
        customer.subscribe(*o).await;
    }
    let mut restaurant = JsonHub::connect(server.port, RESTAURANT_HUB, &cast.staff_token).await;
    restaurant.subscribe_restaurant(cast.restaurant).await;
    let drivers: Vec<_> = orders
        .iter()
        .map(|o| drive_to_delivered(server.base.clone(), cast.staff_token.clone(), *o))
        .collect();
    let mut all_ids = Vec::new();
    for hub in [&mut customer, &mut restaurant] {
        let evs = events(hub, orders.len() * 4).await;
        for o in &orders {
            let statuses: Vec<&str> = evs
                .iter()
                .filter(|(_, d)| d["orderId"] == o.to_string())
                .map(|(_, d)| d["status"].as_str().unwrap_or("?"))
                .collect();
            assert_eq!(
                statuses,
                ["Accepted", "Preparing", "ReadyForDelivery", "Delivered"],
                "events of {o} out of order or missing"
            );
        }
        let ids = event_ids(&evs);
        assert_unique(&ids);
        all_ids.push(ids);
        hub.quiet(Duration::from_millis(200)).await;
    }
    // Both hubs saw the same events in the same (commit) order.
    assert_eq!(all_ids[0], all_ids[1]);
    for d in drivers {
        d.join().expect("driver");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribing_while_the_order_changes_misses_nothing() {
    // Contract 5: the subscribe result is the current DTO "so a client that subscribes after
    // reading the order misses nothing": every version after the returned one arrives.
    let (server, cast) = setup();
    for round in 0..6 {
        let order = blocking(|| place(&server, &cast, "CashOnDelivery"));
        let mut hub = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
        let driver = drive_to_delivered(server.base.clone(), cast.staff_token.clone(), order);
        if round % 2 == 1 {
            tokio::time::sleep(Duration::from_millis(3 * round as u64)).await;
        }
        let dto = hub.subscribe(order).await;
        let v0 = dto["version"].as_u64().expect("version in the DTO");
        blocking(|| driver.join().expect("driver"));
        let mut versions = Vec::new();
        while versions.last() != Some(&5) && v0 < 5 {
            let (_, d) = hub.event().await;
            versions.push(d["version"].as_u64().expect("version"));
        }
        let after: Vec<u64> = versions.iter().copied().filter(|v| *v > v0).collect();
        assert_eq!(
            after,
            ((v0 + 1)..=5).collect::<Vec<_>>(),
            "round {round}: subscribed at version {v0}, then got {versions:?}"
        );
        hub.quiet(Duration::from_millis(100)).await;
    }
}

// ---- restaurant hub -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn restaurant_hub_receives_every_order_of_its_restaurant() {
    let (server, cast) = setup();
    let other = blocking(Cast::new);
    let mut watchers = Vec::new();
    for token in [&cast.staff_token, &cast.owner_token, &cast.admin_token] {
        let mut hub = JsonHub::connect(server.port, RESTAURANT_HUB, token).await;
        hub.subscribe_restaurant(cast.restaurant).await;
        watchers.push(hub);
    }
    // Method names match case-insensitively here too.
    let mut lower = JsonHub::connect(server.port, RESTAURANT_HUB, &cast.staff_token).await;
    let c = lower
        .invoke("subscribetorestaurant", json!([cast.restaurant]))
        .await;
    assert!(c.get("error").is_none(), "{c}");
    watchers.push(lower);

    let a = blocking(|| place(&server, &cast, "CashOnDelivery"));
    let b = blocking(|| place(&server, &cast, "Card"));
    blocking(|| place(&server, &other, "CashOnDelivery"));
    ok(&server, &cast.service_token, b, "payment-succeeded", None);
    ok(&server, &cast.staff_token, a, "accept", Some(eta()));

    let mut first_ids: Option<Vec<String>> = None;
    for hub in &mut watchers {
        let evs = events(hub, 4).await;
        let got: Vec<(String, String, String)> = evs
            .iter()
            .map(|(t, d)| {
                (
                    t.clone(),
                    d["orderId"].as_str().unwrap_or("").to_string(),
                    d["status"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let want = [
            ("ReceiveOrderPlaced", a, "Placed"),
            ("ReceiveOrderPaymentSucceeded", b, "Placed"),
            ("ReceiveOrderPlaced", b, "Placed"),
            ("ReceiveOrderStatusChanged", a, "Accepted"),
        ]
        .map(|(t, o, s)| (t.to_string(), o.to_string(), s.to_string()));
        assert_eq!(got[0], want[0]);
        assert_eq!((&got[1].0, &got[1].1), (&want[1].0, &want[1].1));
        assert_eq!(got[2..], want[2..]);
        for (_, d) in &evs {
            assert_eq!(d["restaurantId"], cast.restaurant.to_string(), "{d}");
        }
        let ids = event_ids(&evs);
        assert_unique(&ids);
        match &first_ids {
            None => first_ids = Some(ids),
            Some(f) => assert_eq!(f, &ids, "every watcher sees the same events"),
        }
        hub.quiet(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn restaurant_subscription_is_refused_to_everyone_else() {
    let (server, cast) = setup();
    let other_staff = blocking(|| {
        token(
            Uuid::new_v4(),
            &[],
            &[&format!("RestaurantStaff:{}", Uuid::new_v4())],
        )
    });
    let mut refused = Vec::new();
    for (who, token) in [
        ("customer", &cast.customer_token),
        ("stranger", &cast.stranger_token),
        ("staff of another restaurant", &other_staff),
        ("order service", &cast.service_token),
    ] {
        let mut hub = JsonHub::connect(server.port, RESTAURANT_HUB, token).await;
        let c = hub
            .invoke("SubscribeToRestaurant", json!([cast.restaurant]))
            .await;
        assert!(
            c["error"].is_string(),
            "{who} may not watch the restaurant: {c}"
        );
        assert!(c.get("result").is_none(), "{who}: {c}");
        refused.push((who, hub));
    }
    // Binding errors as on the customer hub.
    let mut staff = JsonHub::connect(server.port, RESTAURANT_HUB, &cast.staff_token).await;
    let c = staff.invoke("SubscribeToRestaurant", json!(["nope"])).await;
    assert_eq!(
        c["error"], "Failed to invoke 'SubscribeToRestaurant' due to an error on the server.",
        "{c}"
    );
    // SubscribeToOrder belongs to the customer hub.
    let c = staff
        .invoke("SubscribeToOrder", json!([Uuid::new_v4()]))
        .await;
    assert_eq!(c["error"], "Unknown hub method 'SubscribeToOrder'", "{c}");

    staff.subscribe_restaurant(cast.restaurant).await;
    blocking(|| place(&server, &cast, "CashOnDelivery"));
    assert_eq!(staff.event().await.0, "ReceiveOrderPlaced");
    for (who, hub) in &mut refused {
        match hub.next_msg(Duration::from_millis(100)).await {
            Got::Timeout => {}
            other => panic!("{who} was refused but got {other:?}"),
        }
    }
}

// ---- MessagePack --------------------------------------------------------------------------

fn unix(ts: &str) -> (i64, u32) {
    let t = chrono::DateTime::parse_from_rfc3339(ts).expect("rfc3339");
    (t.timestamp(), t.timestamp_subsec_nanos())
}

/// Checks a MessagePack DTO: a map with exactly the camelCase keys, strings, ext -1 timestamps.
fn check_mp_dto(dto: &Mp, order: Uuid, restaurant: Uuid, status: &str) {
    let keys: Vec<&str> = dto.map().iter().map(|(k, _)| k.str()).collect();
    for k in DTO_KEYS {
        assert!(keys.contains(&k), "MessagePack DTO lacks {k}: {keys:?}");
    }
    for k in &keys {
        assert!(
            k.chars().next().is_some_and(|c| c.is_ascii_lowercase()) && !k.contains('_'),
            "key {k:?} is not camelCase"
        );
    }
    assert_eq!(dto.get("orderId").str(), order.to_string());
    assert_eq!(dto.get("restaurantId").str(), restaurant.to_string());
    assert_eq!(
        dto.get("status").str(),
        status,
        "status travels as its name"
    );
    assert!(dto.get("orderNumber").str().starts_with("ORD-"));
    let (secs, _) = dto.get("lastUpdateTimestamp").timestamp();
    let now = chrono::Utc::now().timestamp();
    assert!(
        (now - 300..=now + 5).contains(&secs),
        "lastUpdateTimestamp {secs} vs now {now}"
    );
    for k in [
        "estimatedDeliveryTime",
        "actualDeliveryTime",
        "deliveredAt",
        "occurredOnUtc",
    ] {
        let v = dto.get(k);
        if *v != Mp::Nil {
            v.timestamp();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn messagepack_subscribe_and_event_round_trip() {
    let (server, cast) = setup();
    let order = blocking(|| place(&server, &cast, "CashOnDelivery"));
    let mut hub = MpHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;

    hub.send(&mp_invocation(
        Some("1"),
        "SubscribeToOrder",
        &[&order.to_string()],
    ))
    .await;
    let c = hub.msg().await;
    let c = c.arr();
    assert_eq!(c.len(), 5, "Completion with a value has 5 items: {c:?}");
    assert_eq!(c[0], Mp::Int(3));
    assert_eq!(c[1], Mp::Map(vec![]), "headers map");
    assert_eq!(c[2], Mp::Str("1".into()));
    assert_eq!(c[3], Mp::Int(3), "ResultKind value: {c:?}");
    check_mp_dto(&c[4], order, cast.restaurant, "Placed");

    let (_, status) = blocking(|| {
        get_json(
            &server,
            &cast.customer_token,
            &format!("/api/v1/orders/{order}/status"),
        )
    });
    assert_eq!(
        c[4].get("lastUpdateTimestamp").timestamp(),
        unix(
            status["lastUpdateTimestamp"]
                .as_str()
                .expect("lastUpdateTimestamp")
        ),
        "the ext -1 timestamp is the stored one"
    );

    let eta_body = eta();
    ok(
        &server,
        &cast.staff_token,
        order,
        "accept",
        Some(eta_body.clone()),
    );
    let ev = hub.msg().await;
    let ev = ev.arr();
    assert!(ev.len() == 5 || ev.len() == 6, "Invocation layout: {ev:?}");
    assert_eq!(ev[0], Mp::Int(1));
    assert_eq!(ev[1], Mp::Map(vec![]), "headers map");
    assert_eq!(ev[2], Mp::Nil, "events carry no invocation id");
    assert_eq!(ev[3], Mp::Str("ReceiveOrderStatusChanged".into()));
    let args = ev[4].arr();
    assert_eq!(args.len(), 1);
    let dto = &args[0];
    check_mp_dto(dto, order, cast.restaurant, "Accepted");
    assert_eq!(
        dto.get("estimatedDeliveryTime").timestamp(),
        unix(eta_body["estimatedDeliveryTime"].as_str().expect("eta")),
        "estimatedDeliveryTime round trip"
    );
    assert!(
        Uuid::parse_str(dto.get("eventId").str()).is_ok(),
        "eventId {dto:?}"
    );
    dto.get("occurredOnUtc").timestamp();
    assert_eq!(*dto.get("actualDeliveryTime"), Mp::Nil);

    // Errors travel as ResultKind 1; a fire-and-forget (nil id) is not answered.
    hub.send(&mp_invocation(None, "Nope", &[])).await;
    hub.send(&mp_invocation(Some("2"), "SubscribeToOrder", &["x"]))
        .await;
    let c = hub.msg().await;
    let c = c.arr();
    assert_eq!(c[2], Mp::Str("2".into()), "first answer is for id 2: {c:?}");
    assert_eq!(c[3], Mp::Int(1));
    assert_eq!(
        c[4],
        Mp::Str("Failed to invoke 'SubscribeToOrder' due to an error on the server.".into())
    );
}

// ---- slow consumer ------------------------------------------------------------------------

fn metric(server: &Server, name: &str) -> f64 {
    let text = blocking(|| {
        client()
            .get(server.url("/metrics"))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default()
    });
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_consumer_is_closed_while_a_reading_subscriber_gets_everything() {
    let (server, cast) = setup();
    let port = server.port;
    // The slow one: small receive window, subscribes, then never reads.
    let id = negotiate_token(port, RESTAURANT_HUB, &cast.staff_token).await;
    let ws = ws_connect_with(
        port,
        &format!("/hubs/{RESTAURANT_HUB}?id={id}"),
        Some(&cast.staff_token),
        true,
    )
    .await
    .expect("upgrade");
    let mut slow = JsonHub::handshake(ws).await;
    slow.subscribe_restaurant(cast.restaurant).await;

    let mut fast = JsonHub::connect(port, RESTAURANT_HUB, &cast.owner_token).await;
    fast.subscribe_restaurant(cast.restaurant).await;
    // Reads until it has `target` events (unknown while the flood runs) or 10 s pass idle.
    let target = Arc::new(AtomicUsize::new(usize::MAX));
    let want = target.clone();
    let reader = tokio::spawn(async move {
        let mut ids = Vec::new();
        let mut idle = Instant::now();
        while ids.len() < want.load(Ordering::Acquire) && idle.elapsed() < Duration::from_secs(10) {
            match fast.next_msg(Duration::from_millis(200)).await {
                Got::Msg(v) => {
                    let (target, dto) = as_event(&v);
                    assert_eq!(target, "ReceiveOrderPlaced");
                    ids.push(dto["eventId"].as_str().unwrap_or("").to_string());
                    idle = Instant::now();
                }
                Got::Timeout => {}
                other => panic!("the reading subscriber lost its connection: {other:?}"),
            }
        }
        (fast, ids)
    });

    // Flood in rounds until the server reports a slow-consumer close (kernel socket buffers
    // absorb a few thousand events first), at most 12,000 events.
    let started = Instant::now();
    let mut placed = 0usize;
    while placed < 12_000 {
        blocking(|| place_many(&server, &cast, 100, 4));
        placed += 100;
        if metric(&server, "ordertrack_slow_consumer_closes_total") >= 1.0 {
            break;
        }
    }
    eprintln!("placed {placed} orders in {:?}", started.elapsed());

    // The reader gets every event.
    target.store(placed, Ordering::Release);
    let (_fast, ids) = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("reader did not finish")
        .expect("reader panicked");
    assert_eq!(
        ids.len(),
        placed,
        "the reading subscriber must get every event"
    );
    assert_unique(&ids);

    // The slow one was closed: it holds what was buffered, then the connection ends.
    let (msgs, end) = slow.until_end(Duration::from_secs(20)).await;
    let got = msgs.iter().filter(|m| m["type"] == 1).count();
    eprintln!("slow consumer: {got} of {placed} events, then {end:?}");
    assert!(
        matches!(end, Got::Closed(_) | Got::Ended(_)),
        "slow consumer still connected after {placed} events ({got} delivered): {end:?}"
    );
    assert!(
        got < placed,
        "slow consumer got all {placed} events, it was never slow"
    );
    if let Some(close) = msgs.iter().find(|m| m["type"] == 7) {
        assert_eq!(
            close["allowReconnect"], true,
            "a slow consumer may reconnect: {close}"
        );
    }
    // What it did get is a prefix, in order, without duplicates.
    let slow_ids: Vec<String> = msgs
        .iter()
        .filter(|m| m["type"] == 1)
        .map(|m| as_event(m).1["eventId"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        slow_ids[..],
        ids[..slow_ids.len()],
        "slow consumer's events are a prefix"
    );
}

// ---- shutdown -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_tells_clients_to_reconnect() {
    let (mut server, cast) = setup();
    let order = blocking(|| place(&server, &cast, "CashOnDelivery"));
    let mut json_hub = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    json_hub.subscribe(order).await;
    let mut mp_hub = MpHub::connect(server.port, RESTAURANT_HUB, &cast.staff_token).await;

    let stopper = tokio::task::spawn_blocking(move || {
        let code = server.terminate();
        (code, server.log_text())
    });

    let (msgs, end) = json_hub.until_end(Duration::from_secs(15)).await;
    assert_eq!(
        msgs,
        vec![json!({"type": 7, "allowReconnect": true})],
        "JSON client: exactly one Close with allowReconnect, got {msgs:?} then {end:?}"
    );
    match end {
        Got::Closed(c) => assert_eq!(close_code(&c).unwrap_or(1000), 1000, "{c:?}"),
        Got::Ended(_) => {}
        Got::Timeout | Got::Msg(_) => panic!("JSON client not closed on SIGTERM: {end:?}"),
    }

    let close = mp_hub.msg().await;
    let close = close.arr();
    assert_eq!(close[0], Mp::Int(7), "{close:?}");
    assert_eq!(
        close.get(1),
        Some(&Mp::Nil),
        "no error on a graceful shutdown: {close:?}"
    );
    assert_eq!(
        close.get(2),
        Some(&Mp::Bool(true)),
        "allowReconnect: {close:?}"
    );

    let (code, log) = tokio::time::timeout(Duration::from_secs(20), stopper)
        .await
        .expect("server did not stop")
        .expect("stopper");
    assert_eq!(code, Some(0), "exit code after SIGTERM; log:\n{log}");
}
