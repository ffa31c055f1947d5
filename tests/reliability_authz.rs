//! Object-level authorization as a property (issue 5): for random principals (any mix of
//! customer id, roles and restaurant permissions, well-formed or not) against a fixed set of
//! orders, every read, write and hub subscription is allowed exactly when contract section 2
//! and 4 say so, and refusals for a foreign order are byte-identical to those for a missing one.
//!
//! The rule is written here from the contract, independently of `src/auth/`. Writes carry an
//! `If-Match` that never matches, so a permitted write answers 412 and changes nothing.
//! `OT_AUTHZ_CASES` sets the number of random principals (short: 24).

mod common;
use common::hub::*;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};
use uuid::Uuid;

const ACTIONS: [&str; 8] = [
    "payment-succeeded",
    "payment-failed",
    "accept",
    "reject",
    "preparing",
    "ready",
    "delivered",
    "cancel",
];

/// The world the principals act on.
struct World {
    customers: [Uuid; 2],
    restaurants: [Uuid; 2],
    /// (order id, customer, restaurant).
    orders: Vec<(Uuid, Uuid, Uuid)>,
}

/// A principal as the token describes it.
#[derive(Clone, Debug)]
struct Who {
    sub: Uuid,
    roles: Vec<String>,
    permissions: Vec<String>,
}

impl Who {
    fn admin(&self) -> bool {
        self.roles.iter().any(|r| r == "Administrator")
    }
    fn service(&self) -> bool {
        self.roles.iter().any(|r| r == "OrderService")
    }
    /// Staff or owner of `restaurant` (an owner has every staff right).
    fn works_at(&self, restaurant: Uuid) -> bool {
        self.permissions.iter().any(|p| {
            p == &format!("RestaurantStaff:{restaurant}")
                || p == &format!("RestaurantOwner:{restaurant}")
        })
    }
    /// Contract section 2.
    fn sees(&self, customer: Uuid, restaurant: Uuid) -> bool {
        self.sub == customer || self.works_at(restaurant) || self.admin() || self.service()
    }
    /// Contract section 4: who may attempt each action (legality aside).
    fn may(&self, action: &str, customer: Uuid, restaurant: Uuid) -> bool {
        match action {
            "payment-succeeded" | "payment-failed" => self.service(),
            "cancel" => self.sub == customer || self.works_at(restaurant) || self.admin(),
            _ => self.works_at(restaurant),
        }
    }
    fn token(&self) -> String {
        let claims = json!({
            "sub": self.sub, "exp": chrono::Utc::now().timestamp() + 3600,
            "role": self.roles, "permission": self.permissions
        });
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("token")
    }
}

fn who(world: &World) -> impl Strategy<Value = Who> {
    let c = world.customers;
    let r = world.restaurants;
    let sub = prop_oneof![
        Just(c[0]),
        Just(c[1]),
        Just(r[0]),
        any::<u128>().prop_map(Uuid::from_u128)
    ];
    let role = prop_oneof![
        Just("Administrator".to_string()),
        Just("OrderService".to_string()),
        Just("Customer".to_string()),
        Just("administrator".to_string()),
    ];
    let permission = prop_oneof![
        Just(format!("RestaurantStaff:{}", r[0])),
        Just(format!("RestaurantOwner:{}", r[1])),
        Just(format!("RestaurantStaff:{}", r[1])),
        Just(format!("RestaurantManager:{}", r[0])),
        Just(format!("restaurantstaff:{}", r[0])),
        Just(format!("RestaurantStaff:{}", c[0])),
        Just("RestaurantStaff:*".to_string()),
        any::<u128>().prop_map(|u| format!("RestaurantOwner:{}", Uuid::from_u128(u))),
    ];
    (
        sub,
        proptest::collection::vec(role, 0..3),
        proptest::collection::vec(permission, 0..3),
    )
        .prop_map(|(sub, roles, permissions)| Who {
            sub,
            roles,
            permissions,
        })
}

fn staff_token(restaurant: Uuid) -> String {
    Who {
        sub: Uuid::new_v4(),
        roles: vec![],
        permissions: vec![format!("RestaurantStaff:{restaurant}")],
    }
    .token()
}

/// Two customers × two restaurants × three statuses (AwaitingPayment, Placed, Delivered).
fn build(server: &Server) -> World {
    let cast = Cast::new();
    let customers = [Uuid::new_v4(), Uuid::new_v4()];
    let restaurants = [Uuid::new_v4(), Uuid::new_v4()];
    let mut orders = Vec::new();
    for c in customers {
        for r in restaurants {
            for status in ["AwaitingPayment", "Placed", "Delivered"] {
                let mut body = cast.order_body(if status == "AwaitingPayment" {
                    "Card"
                } else {
                    "CashOnDelivery"
                });
                body["customerId"] = json!(c);
                body["restaurantId"] = json!(r);
                let reply = place_body(server, &cast, &body);
                assert_eq!(reply.status, 201, "{reply:?}");
                let id: Uuid = reply.json()["order"]["orderId"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                if status == "Delivered" {
                    let staff = staff_token(r);
                    for (a, b) in [
                        ("accept", Some(eta())),
                        ("preparing", None),
                        ("ready", None),
                        ("delivered", None),
                    ] {
                        assert_eq!(act(server, &staff, id, a, b).0, 200, "{a}");
                    }
                }
                orders.push((id, c, r));
            }
        }
    }
    World {
        customers,
        restaurants,
        orders,
    }
}

/// Status, content type and body without `traceId`: what a masked refusal must share.
fn masked(r: &Reply) -> (u16, Option<String>, Value) {
    let mut v = r.json();
    if let Some(o) = v.as_object_mut() {
        o.remove("traceId");
    }
    (r.status, r.header("content-type"), v)
}

fn check_http(
    http: &reqwest::blocking::Client,
    server: &Server,
    world: &World,
    p: &Who,
) -> Result<usize, TestCaseError> {
    let token = p.token();
    let get = |path: &str| send(http.get(server.url(path)).bearer_auth(&token));
    let missing = Uuid::new_v4();
    let mut checked = 0;
    // Reads.
    for (path, title) in [
        ("/status", "GetOrderStatus.NotFound"),
        ("", "GetOrderById.NotFound"),
    ] {
        let gone = get_with(
            server,
            &token,
            &format!("/api/v1/orders/{missing}{path}"),
            &[],
        );
        prop_assert_eq!(gone.status, 404);
        prop_assert_eq!(&gone.json()["title"], title);
        for (id, c, r) in &world.orders {
            let a = get(&format!("/api/v1/orders/{id}{path}"));
            if p.sees(*c, *r) {
                prop_assert_eq!(a.status, 200, "read {}{} as {:?}: {:?}", id, path, p, a);
            } else {
                prop_assert_eq!(masked(&a), masked(&gone), "read {}{} as {:?}", id, path, p);
            }
            checked += 1;
        }
    }
    // History: exactly the principal's own orders.
    let history = get("/api/v1/orders/my?pageSize=100");
    prop_assert_eq!(history.status, 200);
    let v = history.json();
    let mut listed: Vec<String> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["orderId"].as_str().unwrap().to_string())
        .collect();
    let mut own: Vec<String> = world
        .orders
        .iter()
        .filter(|(_, c, _)| *c == p.sub)
        .map(|(id, _, _)| id.to_string())
        .collect();
    listed.sort();
    own.sort();
    prop_assert_eq!(listed, own, "history of {:?}", p);
    // Writes, with an If-Match that never matches.
    for action in ACTIONS {
        let body = (action == "accept").then(eta);
        let send_act = |id: Uuid| {
            let mut req = http
                .post(server.url(&format!("/api/v1/orders/{id}/{action}")))
                .bearer_auth(&token)
                .header("if-match", format!("\"order-{id}-v999999\""));
            if let Some(b) = &body {
                req = req.json(b);
            }
            send(req)
        };
        let gone = send_act(missing);
        prop_assert_eq!(
            gone.status,
            404,
            "{} on a missing order: {:?}",
            action,
            gone
        );
        for (id, c, r) in &world.orders {
            let a = send_act(*id);
            let want = if !p.sees(*c, *r) {
                404
            } else if !p.may(action, *c, *r) {
                403
            } else {
                412
            };
            prop_assert_eq!(a.status, want, "{} on {} as {:?}: {:?}", action, id, p, a);
            if want == 404 {
                prop_assert_eq!(masked(&a), masked(&gone), "{} on {} as {:?}", action, id, p);
            }
            checked += 1;
        }
    }
    Ok(checked)
}

async fn check_hubs(port: u16, world: &World, p: &Who) -> Result<usize, String> {
    let token = p.token();
    let mut checked = 0;
    let mut hub = JsonHub::connect(port, "customer-orders", &token).await;
    let gone = hub
        .invoke("SubscribeToOrder", json!([Uuid::new_v4()]))
        .await;
    let refusal = gone["error"].clone();
    if !refusal.is_string() {
        return Err(format!("subscribing to a missing order succeeded: {gone}"));
    }
    for (id, c, r) in &world.orders {
        let a = hub.invoke("SubscribeToOrder", json!([id])).await;
        if p.sees(*c, *r) {
            if a.get("error").is_some() || a["result"]["orderId"] != id.to_string() {
                return Err(format!("SubscribeToOrder({id}) as {p:?}: {a}"));
            }
            hub.invoke("UnsubscribeFromOrder", json!([id])).await;
        } else if a["error"] != refusal || a.get("result").is_some() {
            return Err(format!(
                "SubscribeToOrder({id}) as {p:?}: {a}, the missing-order refusal is {refusal}"
            ));
        }
        checked += 1;
    }
    let mut rhub = JsonHub::connect(port, "restaurant-orders", &token).await;
    for r in world.restaurants.iter().copied().chain([Uuid::new_v4()]) {
        let a = rhub.invoke("SubscribeToRestaurant", json!([r])).await;
        let allowed = p.works_at(r) || p.admin();
        if allowed != a.get("error").is_none() {
            return Err(format!("SubscribeToRestaurant({r}) as {p:?}: {a}"));
        }
        checked += 1;
    }
    Ok(checked)
}

#[test]
fn every_access_is_allowed_exactly_when_the_visibility_rule_says_so() {
    let cases = std::env::var("OT_AUTHZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let server = Server::start();
    let world = build(&server);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let http = client();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let checked = std::sync::atomic::AtomicUsize::new(0);
    let result = runner.run(&who(&world), |p| {
        let n = check_http(&http, &server, &world, &p)?;
        let h = rt
            .block_on(check_hubs(server.port, &world, &p))
            .map_err(TestCaseError::fail)?;
        checked.fetch_add(n + h, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!(
        "RESULT authorization: {cases} random principals x {} orders: {} decisions checked",
        world.orders.len(),
        checked.into_inner()
    );
}
