//! End-to-end smoke: the real binary serves an order through its whole life.

mod common;
use common::*;

#[test]
fn an_order_lives_its_whole_life_over_http() {
    let server = Server::start();
    let cast = Cast::new();
    let id = place(&server, &cast, "CashOnDelivery");
    assert_eq!(
        act(&server, &cast.staff_token, id, "accept", Some(eta())).0,
        200
    );
    assert_eq!(
        act(&server, &cast.staff_token, id, "preparing", None).0,
        200
    );
    assert_eq!(act(&server, &cast.staff_token, id, "ready", None).0, 200);
    let (st, v) = act(
        &server,
        &cast.staff_token,
        id,
        "delivered",
        Some(serde_json::json!({})),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["status"], "Delivered");
    assert_eq!(v["version"], 5);
    let (st, v) = get_json(
        &server,
        &cast.customer_token,
        &format!("/api/v1/orders/{id}/status"),
    );
    assert_eq!(st, 200);
    assert_eq!(v["status"], "Delivered");
}
