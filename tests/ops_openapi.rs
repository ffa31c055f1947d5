//! `/openapi.json` is kept true: real answers from the running binary, for every documented
//! operation and the statuses that matter, are checked against the document served at
//! `/openapi.json` — the status must be documented for that operation, required headers present
//! and matching, the media type listed and the body valid against its JSON Schema (draft
//! 2020-12, formats checked). Every component schema must itself be a valid schema, and every
//! operation in the document must have been exercised.

mod common;
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use uuid::Uuid;

struct Api {
    doc: Value,
    covered: BTreeSet<(String, String)>,
    checked: usize,
}

impl Api {
    fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        match v["$ref"].as_str() {
            Some(r) => self
                .doc
                .pointer(r.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("dangling $ref {r}")),
            None => v,
        }
    }

    /// Validates `instance` against `schema` (a `$ref` into the document or an inline schema).
    fn validate(&self, schema: &Value, instance: &Value, what: &str) {
        let mut root = self.doc.clone();
        match schema["$ref"].as_str() {
            Some(r) => root["$ref"] = json!(r),
            None => root = schema.clone(),
        }
        let v = jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("{what}: the schema does not compile: {e}"));
        let errors: Vec<String> = v
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{what}: the answer does not match the document:\n{}\n{instance:#}",
            errors.join("\n")
        );
    }

    /// Checks one real answer against the operation `method template`.
    fn check(&mut self, method: &str, template: &str, r: &Reply) {
        let what = format!("{} {template} → {}", method.to_uppercase(), r.status);
        let op = &self.doc["paths"][template][method];
        assert!(op.is_object(), "{what}: operation not documented");
        let resp = op["responses"][r.status.to_string()].clone();
        assert!(resp.is_object(), "{what}: status not documented: {r:?}");
        let resp = self.resolve(&resp).clone();
        if let Some(headers) = resp["headers"].as_object() {
            for (name, h) in headers {
                let h = self.resolve(h).clone();
                match r.header(name) {
                    Some(value) => self.validate(
                        &h["schema"],
                        &json!(value),
                        &format!("{what} header {name}"),
                    ),
                    None => assert!(
                        h["required"] != true,
                        "{what}: required header {name} missing"
                    ),
                }
            }
        }
        match resp["content"].as_object() {
            Some(content) => {
                let ct = r.header("content-type").unwrap_or_default();
                let media = ct.split(';').next().unwrap_or("").trim().to_string();
                let Some(m) = content.get(&media) else {
                    panic!(
                        "{what}: media type '{media}' not documented ({:?})",
                        content.keys()
                    );
                };
                let instance = if media.ends_with("json") {
                    serde_json::from_str(&r.text)
                        .unwrap_or_else(|e| panic!("{what}: body is not JSON: {e}"))
                } else {
                    json!(r.text)
                };
                self.validate(&m["schema"], &instance, &what);
            }
            None => assert!(
                r.text.is_empty(),
                "{what}: documented without a body: {r:?}"
            ),
        }
        self.covered
            .insert((method.to_string(), template.to_string()));
        self.checked += 1;
    }
}

fn order_with_extras(cast: &Cast) -> Value {
    let mut b = cast.order_body("Card");
    b["note"] = json!("Ring twice");
    b["deliveryAddress"] =
        json!({"street": "1 Main St", "city": "Springfield", "zipCode": "12345"});
    b["appliedCouponId"] = json!(Uuid::new_v4());
    b
}

#[test]
fn real_answers_match_the_openapi_document() {
    let server = Server::start();
    let cast = Cast::new();
    let r = send(client().get(server.url("/openapi.json")));
    assert_eq!(r.status, 200);
    let doc: Value = serde_json::from_str(&r.text).expect("the document is JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        if let Err(e) = jsonschema::draft202012::meta::validate(schema) {
            panic!("components.schemas.{name} is not a valid JSON Schema: {e}");
        }
    }
    let mut api = Api {
        doc,
        covered: BTreeSet::new(),
        checked: 0,
    };
    api.check("get", "/openapi.json", &r);
    let s = |path: &str| server.url(path);
    let c = client();

    // Operations.
    for p in ["/healthz", "/readyz", "/metrics"] {
        api.check("get", p, &send(c.get(s(p))));
    }
    api.check("get", "/metrics", &send(c.post(s("/metrics"))));

    // Placing orders.
    const PLACE: &str = "/api/v1/orders";
    let r = place_body(&server, &cast, &order_with_extras(&cast));
    api.check("post", PLACE, &r);
    let card = r.json()["order"]["orderId"].as_str().unwrap().to_string();
    let body = cast.order_body("CashOnDelivery");
    let key = [("idempotency-key", "ops-openapi-1")];
    let r = post_json(&server, &cast.service_token, PLACE, &body, &key);
    api.check("post", PLACE, &r);
    let cash = r.json()["order"]["orderId"].as_str().unwrap().to_string();
    let r = post_json(&server, &cast.service_token, PLACE, &body, &key);
    assert_eq!(r.header("idempotent-replayed").as_deref(), Some("true"));
    api.check("post", PLACE, &r);
    let other = cast.order_body("Card");
    api.check(
        "post",
        PLACE,
        &post_json(&server, &cast.service_token, PLACE, &other, &key),
    );
    let mut bad = cast.order_body("Card");
    bad["items"][0]["quantity"] = json!(0);
    bad["currency"] = json!("usd");
    let r = place_body(&server, &cast, &bad);
    assert_eq!(r.status, 400);
    assert!(
        r.json()["errors"].as_object().is_some_and(|e| e.len() >= 2),
        "{r:?}"
    );
    api.check("post", PLACE, &r);
    // An optional UUID that is present must be one (schemathesis found "" accepted as absent).
    let mut blank = cast.order_body("Card");
    blank["sourceTeamCartId"] = json!("");
    let r = place_body(&server, &cast, &blank);
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.json()["errors"]["sourceTeamCartId"].is_array(), "{r:?}");
    api.check("post", PLACE, &r);
    api.check("post", PLACE, &send(c.post(s(PLACE)).json(&body)));
    api.check(
        "post",
        PLACE,
        &post_json(&server, &cast.customer_token, PLACE, &body, &[]),
    );
    api.check(
        "post",
        PLACE,
        &post_raw(
            &server,
            &cast.service_token,
            PLACE,
            Some("text/plain"),
            b"hi".to_vec(),
            &[],
        ),
    );
    api.check(
        "post",
        PLACE,
        &post_raw(
            &server,
            &cast.service_token,
            PLACE,
            Some("application/json"),
            vec![b' '; 70_000],
            &[],
        ),
    );
    api.check(
        "post",
        PLACE,
        &send(c.get(s(PLACE)).bearer_auth(&cast.service_token)),
    );

    // Reads.
    for (template, path) in [
        (
            "/api/v1/orders/{orderId}/status",
            format!("/api/v1/orders/{card}/status"),
        ),
        ("/api/v1/orders/{orderId}", format!("/api/v1/orders/{card}")),
    ] {
        let r = get_with(&server, &cast.customer_token, &path, &[]);
        api.check("get", template, &r);
        let tag = r.header("etag").unwrap();
        api.check(
            "get",
            template,
            &get_with(
                &server,
                &cast.customer_token,
                &path,
                &[("if-none-match", &tag)],
            ),
        );
        api.check(
            "get",
            template,
            &get_with(&server, &cast.stranger_token, &path, &[]),
        );
        api.check("get", template, &send(c.get(s(&path))));
        api.check(
            "get",
            template,
            &send(c.delete(s(&path)).bearer_auth(&cast.customer_token)),
        );
    }
    const MY: &str = "/api/v1/orders/my";
    for q in [
        "",
        "?pageNumber=1&pageSize=1",
        "?status=placed,AwaitingPayment",
        "?pageNumber=9",
    ] {
        api.check(
            "get",
            MY,
            &get_with(&server, &cast.customer_token, &format!("{MY}{q}"), &[]),
        );
    }
    api.check(
        "get",
        MY,
        &get_with(
            &server,
            &cast.customer_token,
            &format!("{MY}?pageSize=101"),
            &[],
        ),
    );
    api.check("get", MY, &send(c.get(s(MY))));

    // The kitchen board and its page.
    const BOARD: &str = "/api/v1/restaurants/{restaurantId}/orders";
    let board = format!("/api/v1/restaurants/{}/orders", cast.restaurant);
    for (token, q) in [
        (&cast.staff_token, ""),
        (
            &cast.owner_token,
            "?status=Placed&status=AwaitingPayment,Accepted&pageSize=1",
        ),
        (&cast.admin_token, "?pageNumber=9"),
        (&cast.staff_token, "?status=Cooking"),
        (&cast.stranger_token, ""),
    ] {
        api.check(
            "get",
            BOARD,
            &get_with(&server, token, &format!("{board}{q}"), &[]),
        );
    }
    api.check("get", BOARD, &send(c.get(s(&board))));
    api.check(
        "get",
        BOARD,
        &send(c.post(s(&board)).bearer_auth(&cast.staff_token)),
    );
    api.check("get", "/board", &send(c.get(s("/board"))));
    api.check("get", "/board", &send(c.delete(s("/board"))));

    // Actions, each at least once successfully.
    let act_path = |id: &str, a: &str| format!("/api/v1/orders/{id}/{a}");
    let mut run =
        |token: &str, id: &str, a: &str, body: Option<Value>, headers: &[(&str, &str)]| {
            let r = match body {
                Some(b) => post_json(&server, token, &act_path(id, a), &b, headers),
                None => post_raw(&server, token, &act_path(id, a), None, vec![], headers),
            };
            api.check("post", &format!("/api/v1/orders/{{orderId}}/{a}"), &r);
            r
        };
    let staff = cast.staff_token.clone();
    let svc = cast.service_token.clone();
    assert_eq!(run(&staff, &card, "accept", Some(eta()), &[]).status, 409);
    assert_eq!(run(&svc, &card, "payment-succeeded", None, &[]).status, 200);
    assert_eq!(
        run(&cast.customer_token, &card, "accept", Some(eta()), &[]).status,
        403
    );
    assert_eq!(
        run(&cast.stranger_token, &card, "accept", Some(eta()), &[]).status,
        404
    );
    let past = json!({"estimatedDeliveryTime": in_minutes(-5)});
    assert_eq!(run(&staff, &card, "accept", Some(past), &[]).status, 400);
    let stale = format!("\"order-{card}-v1\"");
    assert_eq!(
        run(
            &staff,
            &card,
            "accept",
            Some(eta()),
            &[("if-match", &stale)]
        )
        .status,
        412
    );
    assert_eq!(run(&staff, &card, "accept", Some(eta()), &[]).status, 200);
    assert_eq!(run(&staff, &card, "preparing", None, &[]).status, 200);
    assert_eq!(
        run(&staff, &card, "ready", Some(json!({})), &[]).status,
        200
    );
    assert_eq!(
        run(
            &staff,
            &card,
            "delivered",
            Some(json!({"deliveredAt": null})),
            &[]
        )
        .status,
        200
    );
    assert_eq!(
        run(&cast.customer_token, &card, "cancel", None, &[]).status,
        409
    );
    assert_eq!(
        run(
            &staff,
            &cash,
            "reject",
            Some(json!({"reason": "closed"})),
            &[]
        )
        .status,
        200
    );
    let failing = place(&server, &cast, "Card").to_string();
    assert_eq!(
        run(
            &svc,
            &failing,
            "payment-failed",
            Some(json!({"reason": "declined"})),
            &[]
        )
        .status,
        200
    );
    let cancelled = place(&server, &cast, "CashOnDelivery").to_string();
    assert_eq!(
        run(&cast.customer_token, &cancelled, "cancel", None, &[]).status,
        200
    );
    let big = vec![b'x'; 70_000];
    let r = post_raw(
        &server,
        &staff,
        &act_path(&cancelled, "reject"),
        Some("application/json"),
        big,
        &[],
    );
    api.check("post", "/api/v1/orders/{orderId}/reject", &r);
    let r = post_raw(
        &server,
        &staff,
        &act_path(&cancelled, "reject"),
        Some("text/xml"),
        b"<a/>".to_vec(),
        &[],
    );
    api.check("post", "/api/v1/orders/{orderId}/reject", &r);
    let r = send(c.get(s(&act_path(&cancelled, "ready"))).bearer_auth(&staff));
    api.check("post", "/api/v1/orders/{orderId}/ready", &r);
    let r = send(c.post(s(&act_path(&cancelled, "ready"))));
    api.check("post", "/api/v1/orders/{orderId}/ready", &r);

    // Hubs: negotiate, refusals, the upgrade, and the DTO a subscription completes with.
    for hub in ["customer-orders", "restaurant-orders"] {
        let neg = format!("/hubs/{hub}/negotiate");
        let t = if hub == "customer-orders" {
            &cast.customer_token
        } else {
            &staff
        };
        for q in ["?negotiateVersion=1", "", "?negotiateVersion=x"] {
            api.check(
                "post",
                &neg,
                &send(c.post(s(&format!("{neg}{q}"))).bearer_auth(t)),
            );
        }
        api.check("post", &neg, &send(c.post(s(&neg))));
        api.check("post", &neg, &send(c.get(s(&neg)).bearer_auth(t)));
        let path = format!("/hubs/{hub}");
        api.check("get", &path, &send(c.get(s(&path)).bearer_auth(t)));
        api.check("get", &path, &send(c.put(s(&path)).bearer_auth(t)));
        // SSE and long polling: send and close, without an id, a token, or a connection.
        let gone = format!("{path}?id=none");
        api.check("post", &path, &send(c.post(s(&path)).bearer_auth(t)));
        api.check("post", &path, &send(c.post(s(&gone))));
        api.check("post", &path, &send(c.post(s(&gone)).bearer_auth(t)));
        api.check("delete", &path, &send(c.delete(s(&path)).bearer_auth(t)));
        api.check("delete", &path, &send(c.delete(s(&gone)).bearer_auth(t)));
        let negotiated = send(
            c.post(s(&format!("{neg}?negotiateVersion=1")))
                .bearer_auth(t),
        );
        let negotiated: Value = serde_json::from_str(&negotiated.text).expect("negotiate");
        let id = negotiated["connectionToken"].as_str().expect("token");
        let open = format!("{path}?id={id}");
        api.check("get", &path, &send(c.get(s(&open)).bearer_auth(t)));
        api.check(
            "post",
            &path,
            &send(
                c.post(s(&open))
                    .bearer_auth(t)
                    .body(common::hub::JSON_HANDSHAKE),
            ),
        );
        api.check("delete", &path, &send(c.delete(s(&open)).bearer_auth(t)));
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dto = rt.block_on(async {
        let mut hub =
            common::hub::JsonHub::connect(server.port, "customer-orders", &cast.customer_token)
                .await;
        hub.subscribe(card.parse().unwrap()).await
    });
    let reply = Reply {
        status: 101,
        headers: Default::default(),
        text: String::new(),
    };
    api.check("get", "/hubs/customer-orders", &reply);
    let refused = rt.block_on(common::hub::ws_connect(
        server.port,
        "/hubs/restaurant-orders",
        None,
    ));
    assert_eq!(common::hub::refused_status(refused), 401);
    api.covered
        .insert(("get".into(), "/hubs/restaurant-orders".into()));
    api.validate(
        &json!({"$ref": "#/components/schemas/OrderStatusBroadcastDto"}),
        &dto,
        "SubscribeToOrder result",
    );

    // Maintenance.
    for (m, p) in [("get", "/admin/db/stats"), ("post", "/admin/db/backup")] {
        let req = |t: Option<&str>| {
            let b = if m == "get" {
                c.get(s(p))
            } else {
                c.post(s(p))
            };
            match t {
                Some(t) => b.bearer_auth(t),
                None => b,
            }
        };
        api.check(m, p, &send(req(Some(&cast.admin_token))));
        api.check(m, p, &send(req(Some(&cast.customer_token))));
        api.check(m, p, &send(req(None)));
    }

    // Every documented operation was exercised.
    let mut documented = BTreeSet::new();
    for (path, item) in api.doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.clone(), path.clone()));
        }
    }
    let missing: Vec<_> = documented.difference(&api.covered).collect();
    assert!(
        missing.is_empty(),
        "documented but never exercised: {missing:?}"
    );
    assert!(api.checked > 60, "only {} answers checked", api.checked);
}
