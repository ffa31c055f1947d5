//! Read endpoints over HTTP (contract sections 2, 3 and 6): status, details, history; the masked
//! 404; entity tags and conditional reads; paging, filtering and ordering of the history.

mod common;
use common::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use uuid::Uuid;

fn status_path(id: impl std::fmt::Display) -> String {
    format!("/api/v1/orders/{id}/status")
}

fn details_path(id: impl std::fmt::Display) -> String {
    format!("/api/v1/orders/{id}")
}

fn history(server: &Server, token: &str, query: &str) -> Reply {
    get_with(server, token, &format!("/api/v1/orders/my{query}"), &[])
}

#[test]
fn status_happy_path_has_the_documented_fields_etag_and_no_cache() {
    let server = Server::start();
    let cast = Cast::new();
    let id = place(&server, &cast, "CashOnDelivery");
    let r = get_with(&server, &cast.customer_token, &status_path(id), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let v = r.json();
    assert_eq!(v["orderId"], id.to_string());
    assert_eq!(v["status"], "Placed");
    assert_eq!(v["version"], 1);
    assert!(v["estimatedDeliveryTime"].is_null(), "{v}");
    let updated = utc(&v["lastUpdateTimestamp"]);
    assert!((chrono::Utc::now() - updated).num_seconds().abs() < 60);
    assert_eq!(
        r.header("etag").as_deref(),
        Some(format!("\"order-{id}-v1\"").as_str())
    );
    assert_eq!(
        r.header("cache-control").as_deref(),
        Some("private, no-cache")
    );

    // After accept the status carries the ETA and the next version.
    let when = in_minutes(45);
    let (st, _) = act(
        &server,
        &cast.staff_token,
        id,
        "accept",
        Some(json!({"estimatedDeliveryTime": when})),
    );
    assert_eq!(st, 200);
    let r = get_with(&server, &cast.customer_token, &status_path(id), &[]);
    let v = r.json();
    assert_eq!(v["status"], "Accepted");
    assert_eq!(v["version"], 2);
    assert_eq!(utc(&v["estimatedDeliveryTime"]), utc(&json!(when)));
    assert!(utc(&v["lastUpdateTimestamp"]) >= updated);
    assert_eq!(
        r.header("etag").as_deref(),
        Some(format!("\"order-{id}-v2\"").as_str())
    );
}

#[test]
fn details_happy_path_has_every_field_of_the_document() {
    let server = Server::start();
    let cast = Cast::new();
    let coupon = Uuid::new_v4();
    let cart = Uuid::new_v4();
    let mut body = cast.order_body("CashOnDelivery");
    body["note"] = json!("Ring twice");
    body["deliveryAddress"] = json!({"street": "1 Main St", "city": "Springfield", "state": "IL", "zipCode": "62701", "country": "US"});
    body["appliedCouponId"] = json!(coupon);
    body["sourceTeamCartId"] = json!(cart);
    let placed = place_body(&server, &cast, &body);
    assert_eq!(placed.status, 201, "{placed:?}");
    let id = placed.json()["order"]["orderId"]
        .as_str()
        .unwrap()
        .to_string();

    let r = get_with(&server, &cast.customer_token, &details_path(&id), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("etag").as_deref(),
        Some(format!("\"order-{id}-v1\"").as_str())
    );
    assert_eq!(
        r.header("cache-control").as_deref(),
        Some("private, no-cache")
    );
    let v = r.json();
    let o = &v["order"];
    assert_eq!(o["orderId"], id);
    let number = o["orderNumber"].as_str().unwrap();
    let year = chrono::Utc::now().format("%Y").to_string();
    assert!(
        number.starts_with(&format!("ORD-{year}-")) && number.len() == 15,
        "{number}"
    );
    assert!(number[9..].bytes().all(|b| b.is_ascii_digit()), "{number}");
    assert_eq!(o["customerId"], cast.customer.to_string());
    assert_eq!(o["restaurantId"], cast.restaurant.to_string());
    assert_eq!(o["restaurantName"], "Luigi's");
    assert_eq!(o["status"], "Placed");
    assert_eq!(o["version"], 1);
    assert_eq!(
        utc(&o["placementTimestamp"]),
        utc(&o["lastUpdateTimestamp"])
    );
    assert!(o["estimatedDeliveryTime"].is_null());
    assert!(o["actualDeliveryTime"].is_null());
    for (field, amount) in [
        ("subtotal", 28.5),
        ("discount", 0.0),
        ("deliveryFee", 2.99),
        ("tip", 4.0),
        ("tax", 0.0),
        ("total", 35.49),
    ] {
        assert_eq!(
            o[format!("{field}Amount")].as_f64(),
            Some(amount),
            "{field}: {o}"
        );
        assert_eq!(o[format!("{field}Currency")], "USD", "{field}");
    }
    assert_eq!(o["appliedCouponId"], coupon.to_string());
    assert_eq!(o["sourceTeamCartId"], cart.to_string());
    assert_eq!(o["paymentMethod"], "CashOnDelivery");
    assert_eq!(o["note"], "Ring twice");
    assert_eq!(o["deliveryAddress"]["street"], "1 Main St");
    assert_eq!(o["deliveryAddress"]["city"], "Springfield");
    assert_eq!(o["deliveryAddress"]["zipCode"], "62701");
    assert_eq!(o["cancellable"], true);
    let items = o["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["name"], "Margherita Pizza");
    assert_eq!(items[0]["quantity"], 1);
    assert!(items[0]["orderItemId"]
        .as_str()
        .unwrap()
        .parse::<Uuid>()
        .is_ok());
    assert!(items[0]["menuItemId"]
        .as_str()
        .unwrap()
        .parse::<Uuid>()
        .is_ok());
    assert_eq!(items[0]["unitPriceAmount"].as_f64(), Some(12.0));
    assert_eq!(items[0]["unitPriceCurrency"], "USD");
    assert_eq!(items[0]["lineItemTotalAmount"].as_f64(), Some(12.0));
    assert_eq!(items[0]["lineItemTotalCurrency"], "USD");
    assert_eq!(items[0]["customizations"], json!([]));
    assert_eq!(items[1]["lineItemTotalAmount"].as_f64(), Some(16.5));
    let c = &items[1]["customizations"][0];
    assert_eq!(c["groupName"], "Extras");
    assert_eq!(c["choiceName"], "Olives");
    assert_eq!(c["priceAdjustmentAmount"].as_f64(), Some(1.5));
    // Amounts are JSON numbers with the currency's two digits, in the raw text too.
    for frag in [
        "\"subtotalAmount\":28.50",
        "\"totalAmount\":35.49",
        "\"tipAmount\":4.00",
        "\"taxAmount\":0.00",
        "\"discountAmount\":0.00",
        "\"unitPriceAmount\":12.00",
        "\"lineItemTotalAmount\":16.50",
        "\"priceAdjustmentAmount\":1.50",
    ] {
        assert!(r.text.contains(frag), "missing {frag} in {}", r.text);
    }
}

#[test]
fn every_party_of_the_order_can_read_it_and_cancellable_depends_on_the_caller() {
    let server = Server::start();
    let cast = Cast::new();
    let id = order_in(&server, &cast, "Preparing");
    for (who, token, cancellable) in [
        ("customer", &cast.customer_token, false),
        ("staff", &cast.staff_token, true),
        ("owner", &cast.owner_token, true),
        ("admin", &cast.admin_token, true),
        ("service", &cast.service_token, false),
    ] {
        let (st, v) = get_json(&server, token, &status_path(id));
        assert_eq!(st, 200, "{who} status: {v}");
        assert_eq!(v["status"], "Preparing", "{who}");
        let (st, v) = get_json(&server, token, &details_path(id));
        assert_eq!(st, 200, "{who} details: {v}");
        assert_eq!(v["order"]["cancellable"], cancellable, "{who} cancellable");
    }
}

/// The 404 for a foreign order, an unknown id and a non-UUID id is the same problem.
fn assert_masked(server: &Server, cast: &Cast, own: Uuid, path: fn(&str) -> String, title: &str) {
    let other_staff = token(
        Uuid::new_v4(),
        &[],
        &[&format!("RestaurantStaff:{}", Uuid::new_v4())],
    );
    let other_owner = token(
        Uuid::new_v4(),
        &[],
        &[&format!("RestaurantOwner:{}", Uuid::new_v4())],
    );
    let foreign = get_with(server, &cast.stranger_token, &path(&own.to_string()), &[]);
    let baseline = problem_sans_trace(&foreign);
    assert_eq!(
        problem(&foreign),
        (
            404,
            title.to_string(),
            foreign.json()["detail"].as_str().unwrap().to_string()
        )
    );
    let cases = [
        ("foreign staff", other_staff.as_str(), own.to_string()),
        ("foreign owner", other_owner.as_str(), own.to_string()),
        (
            "unknown id",
            cast.customer_token.as_str(),
            Uuid::new_v4().to_string(),
        ),
        (
            "unknown id, stranger",
            cast.stranger_token.as_str(),
            Uuid::new_v4().to_string(),
        ),
        (
            "not a uuid",
            cast.customer_token.as_str(),
            "not-a-uuid".to_string(),
        ),
        ("number", cast.customer_token.as_str(), "12345".to_string()),
        (
            "uuid with junk",
            cast.customer_token.as_str(),
            format!("{own}x"),
        ),
    ];
    for (what, tok, seg) in cases {
        let r = get_with(server, tok, &path(&seg), &[]);
        assert_eq!(r.status, 404, "{what}: {r:?}");
        assert_eq!(
            problem_sans_trace(&r),
            baseline,
            "{what} must look exactly like a foreign order"
        );
        assert_eq!(r.header("etag"), None, "{what}: no etag on a 404");
    }
    // The real owner sees it, so the 404 above was the mask, not a missing order.
    assert_eq!(
        get_with(server, &cast.customer_token, &path(&own.to_string()), &[]).status,
        200
    );
}

#[test]
fn status_masks_foreign_unknown_and_malformed_ids_identically() {
    let server = Server::start();
    let cast = Cast::new();
    let id = place(&server, &cast, "CashOnDelivery");
    assert_masked(
        &server,
        &cast,
        id,
        |s| status_path(s),
        "GetOrderStatus.NotFound",
    );
}

#[test]
fn details_masks_foreign_unknown_and_malformed_ids_identically() {
    let server = Server::start();
    let cast = Cast::new();
    let id = place(&server, &cast, "Card");
    assert_masked(
        &server,
        &cast,
        id,
        |s| details_path(s),
        "GetOrderById.NotFound",
    );
}

#[test]
fn visibility_is_decided_from_the_stored_order_not_the_token_history() {
    // A customer token minted before the order existed still sees it; a token of another
    // customer minted afterwards does not.
    let server = Server::start();
    let cast = Cast::new();
    let early = token(cast.customer, &[], &[]);
    let id = place(&server, &cast, "CashOnDelivery");
    assert_eq!(get_json(&server, &early, &status_path(id)).0, 200);
    let late_other = token(Uuid::new_v4(), &[], &[]);
    assert_eq!(get_json(&server, &late_other, &status_path(id)).0, 404);
}

#[test]
fn if_none_match_gives_304_without_body_for_tag_list_star_and_weak_forms() {
    let server = Server::start();
    let cast = Cast::new();
    let id = place(&server, &cast, "CashOnDelivery");
    let tag = format!("\"order-{id}-v1\"");
    let list = format!("\"order-{id}-v0\", {tag}, \"something-else\"");
    let weak = format!("W/{tag}");
    for path in [status_path(id), details_path(id)] {
        for (what, inm) in [
            ("exact", tag.as_str()),
            ("list", list.as_str()),
            ("star", "*"),
            ("weak", weak.as_str()),
        ] {
            let r = get_with(
                &server,
                &cast.customer_token,
                &path,
                &[("if-none-match", inm)],
            );
            assert_eq!(r.status, 304, "{path} {what}: {r:?}");
            assert!(r.text.is_empty(), "304 has no body: {r:?}");
            assert_eq!(r.header("etag").as_deref(), Some(tag.as_str()), "{what}");
        }
        // Tags that do not match: a full answer.
        for inm in [
            format!("\"order-{id}-v2\""),
            format!("\"order-{}-v1\"", Uuid::new_v4()),
            "\"x\"".into(),
        ] {
            let r = get_with(
                &server,
                &cast.customer_token,
                &path,
                &[("if-none-match", &inm)],
            );
            assert_eq!(r.status, 200, "{path} {inm}: {r:?}");
            assert!(!r.text.is_empty());
        }
    }
    // After a change the old tag no longer matches and the new one does.
    assert_eq!(
        act(&server, &cast.staff_token, id, "accept", Some(eta())).0,
        200
    );
    let r = get_with(
        &server,
        &cast.customer_token,
        &status_path(id),
        &[("if-none-match", &tag)],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let new_tag = format!("\"order-{id}-v2\"");
    assert_eq!(r.header("etag").as_deref(), Some(new_tag.as_str()));
    assert_eq!(
        r.header("cache-control").as_deref(),
        Some("private, no-cache")
    );
    let r = get_with(
        &server,
        &cast.customer_token,
        &details_path(id),
        &[("if-none-match", &new_tag)],
    );
    assert_eq!(r.status, 304, "{r:?}");
    // A conditional read never reveals a foreign order.
    let r = get_with(
        &server,
        &cast.stranger_token,
        &status_path(id),
        &[("if-none-match", "*")],
    );
    assert_eq!(r.status, 404, "{r:?}");
}

/// The status answer is rendered once per version and shared by later polls (issue 15): every
/// poll between changes must still name the latest version, through the whole life of the order
/// and past its end (a finished order is read from the database again).
#[test]
fn repeated_polls_follow_every_change_to_the_end() {
    let server = Server::start();
    let cast = Cast::new();
    let id = place(&server, &cast, "CashOnDelivery");
    let steps = [
        ("accept", Some(eta()), "Accepted"),
        ("preparing", None, "Preparing"),
        ("ready", None, "ReadyForDelivery"),
        ("delivered", None, "Delivered"),
    ];
    let mut old_tag: Option<String> = None;
    for (version, (action, body, status)) in (2..).zip(steps) {
        for _ in 0..3 {
            let r = get_with(&server, &cast.customer_token, &status_path(id), &[]);
            assert_eq!(r.status, 200, "{r:?}");
        }
        assert_eq!(act(&server, &cast.staff_token, id, action, body).0, 200);
        let tag = format!("\"order-{id}-v{version}\"");
        for _ in 0..3 {
            let r = get_with(&server, &cast.customer_token, &status_path(id), &[]);
            let v = r.json();
            assert_eq!(v["status"], status, "{v}");
            assert_eq!(v["version"], version, "{v}");
            assert_eq!(r.header("etag").as_deref(), Some(tag.as_str()));
            let r = get_with(
                &server,
                &cast.customer_token,
                &status_path(id),
                &[("if-none-match", &tag)],
            );
            assert_eq!(r.status, 304, "{r:?}");
        }
        if let Some(old) = &old_tag {
            let r = get_with(
                &server,
                &cast.customer_token,
                &status_path(id),
                &[("if-none-match", old.as_str())],
            );
            assert_eq!(r.status, 200, "an old tag must not match: {r:?}");
        }
        old_tag = Some(tag);
    }
}

// ---------------------------------------------------------------------------------------------
// History
// ---------------------------------------------------------------------------------------------

#[test]
fn history_of_a_customer_without_orders_is_empty_with_zero_pages() {
    let server = Server::start();
    let cast = Cast::new();
    let r = history(&server, &cast.customer_token, "");
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["items"], json!([]));
    assert_eq!(v["pageNumber"], 1);
    assert_eq!(v["totalPages"], 0);
    assert_eq!(v["totalCount"], 0);
    assert_eq!(v["hasPreviousPage"], false);
    assert_eq!(v["hasNextPage"], false);
    // Orders of other customers are not anybody else's history.
    place(&server, &cast, "CashOnDelivery");
    let v = history(&server, &cast.stranger_token, "?pageNumber=1&pageSize=10").json();
    assert_eq!(v["totalCount"], 0, "{v}");
    assert_eq!(v["items"], json!([]));
}

#[test]
fn history_is_newest_first_with_summary_fields() {
    let server = Server::start();
    let cast = Cast::new();
    let ids: Vec<Uuid> = (0..3)
        .map(|_| place(&server, &cast, "CashOnDelivery"))
        .collect();
    let r = history(&server, &cast.customer_token, "");
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    let got: Vec<String> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["orderId"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = ids.iter().rev().map(|i| i.to_string()).collect();
    assert_eq!(got, want, "newest first");
    let item = &v["items"][0];
    assert!(item["orderNumber"].as_str().unwrap().starts_with("ORD-"));
    assert_eq!(item["status"], "Placed");
    utc(&item["placementTimestamp"]);
    assert_eq!(item["restaurantId"], cast.restaurant.to_string());
    assert_eq!(item["restaurantName"], "Luigi's");
    assert_eq!(item["totalAmount"].as_f64(), Some(35.49));
    assert_eq!(item["totalCurrency"], "USD");
    assert_eq!(item["itemCount"], 2);
    assert!(r.text.contains("\"totalAmount\":35.49"), "{}", r.text);
    assert_eq!(v["totalCount"], 3);
    assert_eq!(v["totalPages"], 1);
}

#[test]
fn history_rejects_out_of_range_and_non_numeric_paging() {
    let server = Server::start();
    let cast = Cast::new();
    for (query, field) in [
        ("?pageNumber=0", "pageNumber"),
        ("?pageNumber=-1", "pageNumber"),
        ("?pageNumber=abc", "pageNumber"),
        ("?pageNumber=1.5", "pageNumber"),
        ("?pageNumber=", "pageNumber"),
        ("?pageSize=0", "pageSize"),
        ("?pageSize=-1", "pageSize"),
        ("?pageSize=abc", "pageSize"),
        ("?pageSize=101", "pageSize"),
        ("?pageNumber=1&pageSize=99999999999999999999", "pageSize"),
    ] {
        let r = history(&server, &cast.customer_token, query);
        assert_eq!(r.status, 400, "{query}: {r:?}");
        problem(&r);
        let errors = &r.json()["errors"];
        assert!(
            errors[field].is_array(),
            "{query}: errors must be keyed {field}: {r:?}"
        );
    }
    // Both bad at once: both reported.
    let r = history(&server, &cast.customer_token, "?pageNumber=0&pageSize=101");
    assert_eq!(r.status, 400);
    let e = &r.json()["errors"];
    assert!(
        e["pageNumber"].is_array() && e["pageSize"].is_array(),
        "{r:?}"
    );
    // The bounds themselves are fine.
    for q in ["?pageSize=1", "?pageSize=100", "?pageNumber=1&pageSize=100"] {
        assert_eq!(history(&server, &cast.customer_token, q).status, 200, "{q}");
    }
    // An unknown status name in the filter.
    let r = history(&server, &cast.customer_token, "?status=Placed,Teleported");
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.json()["errors"]["status"].is_array(), "{r:?}");
}

fn page_ids(v: &Value) -> Vec<String> {
    v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["orderId"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn history_pages_through_a_few_hundred_orders_and_filters_by_status() {
    const TOTAL: usize = 250;
    const ACCEPTED: usize = 20;
    const CANCELLED: usize = 10;
    const AWAITING: usize = 15;
    let server = Server::start();
    let cast = Cast::new();
    // Place concurrently (the writer batches), a few of them awaiting payment.
    let ids: Vec<Uuid> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|t| {
                let server = &server;
                let cast = &cast;
                s.spawn(move || {
                    (0..TOTAL / 10)
                        .map(|i| {
                            let n = t * (TOTAL / 10) + i;
                            place(
                                server,
                                cast,
                                if n < AWAITING {
                                    "Card"
                                } else {
                                    "CashOnDelivery"
                                },
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(ids.len(), TOTAL);
    let cash = &ids[AWAITING..];
    for id in &cash[..ACCEPTED] {
        assert_eq!(
            act(&server, &cast.staff_token, *id, "accept", Some(eta())).0,
            200
        );
    }
    for id in &cash[ACCEPTED..ACCEPTED + CANCELLED] {
        assert_eq!(
            act(&server, &cast.customer_token, *id, "cancel", None).0,
            200
        );
    }
    let placed = TOTAL - AWAITING - ACCEPTED - CANCELLED;

    // First page.
    let v = history(&server, &cast.customer_token, "?pageNumber=1&pageSize=10").json();
    assert_eq!(v["totalCount"], TOTAL);
    assert_eq!(v["totalPages"], 25);
    assert_eq!(v["pageNumber"], 1);
    assert_eq!(v["hasPreviousPage"], false);
    assert_eq!(v["hasNextPage"], true);
    assert_eq!(page_ids(&v).len(), 10);
    // Default paging is pageNumber 1, pageSize 10.
    let d = history(&server, &cast.customer_token, "").json();
    assert_eq!(page_ids(&d), page_ids(&v));
    assert_eq!(d["totalPages"], 25);

    // Middle page and last (partial) page with pageSize 30: 9 pages, the last one holds 10.
    let mid = history(&server, &cast.customer_token, "?pageNumber=5&pageSize=30").json();
    assert_eq!(page_ids(&mid).len(), 30);
    assert_eq!(mid["totalPages"], 9);
    assert_eq!(mid["hasPreviousPage"], true);
    assert_eq!(mid["hasNextPage"], true);
    let last = history(&server, &cast.customer_token, "?pageNumber=9&pageSize=30").json();
    assert_eq!(page_ids(&last).len(), 10);
    assert_eq!(last["hasNextPage"], false);
    assert_eq!(last["hasPreviousPage"], true);
    // Past the end: empty, with the right counts.
    let past = history(&server, &cast.customer_token, "?pageNumber=10&pageSize=30").json();
    assert_eq!(past["items"], json!([]));
    assert_eq!(past["totalCount"], TOTAL);
    assert_eq!(past["totalPages"], 9);
    assert_eq!(past["pageNumber"], 10);
    assert_eq!(past["hasNextPage"], false);

    // All pages together: every order exactly once, newest first (placement time, then id).
    let mut all: Vec<(chrono::DateTime<chrono::Utc>, String)> = Vec::new();
    for n in 1..=3 {
        let v = history(
            &server,
            &cast.customer_token,
            &format!("?pageNumber={n}&pageSize=100"),
        )
        .json();
        for i in v["items"].as_array().unwrap() {
            all.push((
                utc(&i["placementTimestamp"]),
                i["orderId"].as_str().unwrap().to_string(),
            ));
        }
    }
    assert_eq!(all.len(), TOTAL);
    let seen: HashSet<&String> = all.iter().map(|(_, id)| id).collect();
    let want: HashSet<String> = ids.iter().map(|i| i.to_string()).collect();
    assert_eq!(seen.len(), TOTAL, "no duplicates across pages");
    assert!(want.iter().all(|w| seen.contains(w)), "every order appears");
    let mut sorted = all.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(
        all, sorted,
        "newest first by placement time, then order id, descending"
    );
    // The middle page is the right slice of the whole.
    let flat: Vec<String> = all.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(page_ids(&mid), flat[120..150].to_vec());
    assert_eq!(page_ids(&last), flat[240..250].to_vec());

    // Status filter.
    let v = history(
        &server,
        &cast.customer_token,
        "?status=Placed,Accepted&pageSize=100",
    )
    .json();
    assert_eq!(v["totalCount"], placed + ACCEPTED, "{}", v["totalCount"]);
    assert_eq!(v["totalPages"], (placed + ACCEPTED).div_ceil(100));
    assert!(v["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["status"] == "Placed" || i["status"] == "Accepted"));
    let mut filtered = Vec::new();
    for n in 1..=3 {
        let v = history(
            &server,
            &cast.customer_token,
            &format!("?status=Placed,Accepted&pageNumber={n}&pageSize=100"),
        )
        .json();
        filtered.extend(page_ids(&v));
    }
    let want_filtered: Vec<String> = flat
        .iter()
        .filter(|id| {
            let id: Uuid = id.parse().unwrap();
            cash[..ACCEPTED].contains(&id) || cash[ACCEPTED + CANCELLED..].contains(&id)
        })
        .cloned()
        .collect();
    assert_eq!(
        filtered, want_filtered,
        "filtered pages keep the order and hold exactly the matches"
    );
    for (q, n) in [
        ("?status=Accepted", ACCEPTED),
        ("?status=Cancelled", CANCELLED),
        ("?status=AwaitingPayment", AWAITING),
        ("?status=Delivered", 0),
        ("?status=Cancelled,AwaitingPayment", CANCELLED + AWAITING),
    ] {
        let v = history(&server, &cast.customer_token, q).json();
        assert_eq!(v["totalCount"], n, "{q}: {v}");
        assert_eq!(v["totalPages"], n.div_ceil(10), "{q}");
        assert_eq!(page_ids(&v).len(), n.min(10), "{q}");
    }
    let v = history(
        &server,
        &cast.customer_token,
        "?status=Accepted&pageSize=5&pageNumber=4",
    )
    .json();
    assert_eq!(page_ids(&v).len(), 5);
    assert_eq!(v["hasNextPage"], false);
    assert!(v["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["status"] == "Accepted"));
}
