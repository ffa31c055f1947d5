//! Bearer tokens over HTTP (contract section 1): every way a token can be wrong is a 401 problem
//! with `WWW-Authenticate: Bearer error="invalid_token"`; claims in their documented shapes work.

mod common;
use base64::Engine;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use uuid::Uuid;

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Signs `claims` with `alg` and `secret`.
fn jwt(alg: Algorithm, secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode")
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A token with an arbitrary header, signed (or not) by hand.
fn unsigned(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        signature
    )
}

/// A token printed by the binary's `token` command.
fn minted(args: &[&str]) -> String {
    let out = token_command(args);
    assert!(
        out.status.success(),
        "token {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn valid_claims(sub: &str) -> Value {
    json!({"sub": sub, "iat": now(), "nbf": now(), "exp": now() + 3600})
}

fn assert_401(r: &Reply, what: &str) {
    assert_eq!(r.status, 401, "{what}: {r:?}");
    let www = r
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("{what}: no WWW-Authenticate: {r:?}"));
    assert!(www.starts_with("Bearer"), "{what}: {www}");
    assert!(www.contains("error=\"invalid_token\""), "{what}: {www}");
    problem(r);
    assert!(
        !r.text.contains("eyJ"),
        "{what}: the answer must not echo the token: {r:?}"
    );
}

/// Sends the `Authorization` value (or none) to each protected endpoint.
fn each_endpoint(
    server: &Server,
    cast: &Cast,
    id: Uuid,
    authorization: Option<&str>,
) -> Vec<(String, Reply)> {
    let c = client();
    let body = serde_json::to_vec(&cast.order_body("CashOnDelivery")).unwrap();
    let reqs = vec![
        (
            "status",
            c.get(server.url(&format!("/api/v1/orders/{id}/status"))),
        ),
        (
            "details",
            c.get(server.url(&format!("/api/v1/orders/{id}"))),
        ),
        ("history", c.get(server.url("/api/v1/orders/my"))),
        (
            "place",
            c.post(server.url("/api/v1/orders"))
                .header("content-type", "application/json")
                .body(body),
        ),
        (
            "accept",
            c.post(server.url(&format!("/api/v1/orders/{id}/accept")))
                .json(&eta()),
        ),
        (
            "cancel",
            c.post(server.url(&format!("/api/v1/orders/{id}/cancel"))),
        ),
        (
            "payment",
            c.post(server.url(&format!("/api/v1/orders/{id}/payment-succeeded"))),
        ),
    ];
    reqs.into_iter()
        .map(|(name, mut rb)| {
            if let Some(a) = authorization {
                rb = rb.header("authorization", a);
            }
            (name.to_string(), send(rb))
        })
        .collect()
}

#[test]
fn bad_tokens_are_401_with_invalid_token_on_every_endpoint() {
    let server = Server::start();
    let cast = Cast::new();
    let id = place(&server, &cast, "Card");
    let sub = cast.customer.to_string();
    let mut cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("empty bearer", Some("Bearer ".into())),
        ("bearer only", Some("Bearer".into())),
        ("basic scheme", Some("Basic dXNlcjpwYXNz".into())),
        ("not a jwt", Some("Bearer not-a-token".into())),
        ("three junk parts", Some("Bearer abc.def.ghi".into())),
        ("token without scheme", Some(cast.customer_token.clone())),
    ];
    let service_claims = {
        let mut c = valid_claims(&Uuid::new_v4().to_string());
        c["role"] = json!("OrderService");
        c
    };
    let extra: Vec<(&str, String)> = vec![
        ("expired (ttl -1h)", minted(&["--sub", &sub, "--ttl=-1h"])),
        (
            "expired service (ttl -1h)",
            minted(&[
                "--sub",
                &Uuid::new_v4().to_string(),
                "--role",
                "OrderService",
                "--ttl=-1h",
            ]),
        ),
        ("expired 40 s ago", minted(&["--sub", &sub, "--ttl=-40s"])),
        (
            "not yet valid",
            jwt(
                Algorithm::HS256,
                SECRET,
                &json!({"sub": sub, "nbf": now() + 3600, "exp": now() + 7200}),
            ),
        ),
        (
            "wrong secret",
            jwt(
                Algorithm::HS256,
                "another-secret-0123456789abcdef0123",
                &service_claims,
            ),
        ),
        (
            "HS384 with the right secret",
            jwt(Algorithm::HS384, SECRET, &service_claims),
        ),
        (
            "HS512 with the right secret",
            jwt(Algorithm::HS512, SECRET, &service_claims),
        ),
        (
            "alg none",
            unsigned(&json!({"alg": "none", "typ": "JWT"}), &service_claims, ""),
        ),
        (
            "alg None",
            unsigned(&json!({"alg": "None", "typ": "JWT"}), &service_claims, ""),
        ),
        (
            "missing sub",
            jwt(
                Algorithm::HS256,
                SECRET,
                &json!({"exp": now() + 3600, "role": "OrderService"}),
            ),
        ),
        (
            "non-uuid sub",
            jwt(
                Algorithm::HS256,
                SECRET,
                &json!({"sub": "alice", "exp": now() + 3600, "role": "OrderService"}),
            ),
        ),
        (
            "numeric sub",
            jwt(
                Algorithm::HS256,
                SECRET,
                &json!({"sub": 12, "exp": now() + 3600, "role": "OrderService"}),
            ),
        ),
        (
            "missing exp",
            jwt(
                Algorithm::HS256,
                SECRET,
                &json!({"sub": sub, "role": "OrderService"}),
            ),
        ),
        (
            "string exp",
            jwt(
                Algorithm::HS256,
                SECRET,
                &json!({"sub": sub, "exp": "tomorrow"}),
            ),
        ),
    ];
    // A valid signature over other claims: the payload of one token with the signature of another.
    let real = token(Uuid::new_v4(), &[], &[]);
    let parts: Vec<&str> = real.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(service_claims.to_string().as_bytes()),
        parts[2]
    );
    // alg none header over a real token's payload and signature.
    let none_real = format!(
        "{}.{}.{}",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        parts[1],
        parts[2]
    );
    let mut extra = extra;
    extra.push(("tampered payload", tampered));
    extra.push(("alg none with a real signature", none_real));
    extra.push(("truncated signature", real[..real.len() - 4].to_string()));
    for (what, t) in &extra {
        cases.push((what, Some(format!("Bearer {t}"))));
    }
    for (what, auth) in &cases {
        for (endpoint, r) in each_endpoint(&server, &cast, id, auth.as_deref()) {
            assert_401(&r, &format!("{what} on {endpoint}"));
        }
    }
    // None of that changed or created anything.
    let (st, v) = get_json(
        &server,
        &cast.customer_token,
        &format!("/api/v1/orders/{id}/status"),
    );
    assert_eq!(
        (st, v["status"].as_str(), v["version"].as_u64()),
        (200, Some("AwaitingPayment"), Some(1))
    );
    let (_, v) = get_json(&server, &cast.customer_token, "/api/v1/orders/my");
    assert_eq!(v["totalCount"], 1);
}

#[test]
fn valid_tokens_in_every_documented_shape_are_accepted() {
    let server = Server::start();
    let cast = Cast::new();
    let id = place(&server, &cast, "Card");
    let path = format!("/api/v1/orders/{id}/status");
    let sub = cast.customer.to_string();
    let ok: Vec<(&str, String)> = vec![
        (
            "hand-made HS256",
            jwt(Algorithm::HS256, SECRET, &valid_claims(&sub)),
        ),
        ("lower-case scheme", String::new()),
        (
            "expired within the 30 s leeway",
            jwt(
                Algorithm::HS256,
                SECRET,
                &json!({"sub": sub, "exp": now() - 10}),
            ),
        ),
        (
            "nbf within the leeway",
            jwt(
                Algorithm::HS256,
                SECRET,
                &json!({"sub": sub, "nbf": now() + 10, "exp": now() + 3600}),
            ),
        ),
        (
            "only sub and exp",
            jwt(
                Algorithm::HS256,
                SECRET,
                &json!({"sub": sub, "exp": now() + 60}),
            ),
        ),
        (
            "upper-case uuid sub",
            jwt(
                Algorithm::HS256,
                SECRET,
                &json!({"sub": sub.to_uppercase(), "exp": now() + 60}),
            ),
        ),
        (
            "role array for a stranger",
            jwt(
                Algorithm::HS256,
                SECRET,
                &json!({"sub": Uuid::new_v4(), "exp": now() + 60, "role": ["Somebody", "Administrator"]}),
            ),
        ),
        (
            "permission string",
            jwt(
                Algorithm::HS256,
                SECRET,
                &json!({"sub": Uuid::new_v4(), "exp": now() + 60, "permission": format!("RestaurantStaff:{}", cast.restaurant)}),
            ),
        ),
        (
            "permission array",
            jwt(
                Algorithm::HS256,
                SECRET,
                &json!({"sub": Uuid::new_v4(), "exp": now() + 60, "permission": ["Junk", format!("RestaurantOwner:{}", cast.restaurant)]}),
            ),
        ),
    ];
    for (what, t) in &ok {
        let auth = if t.is_empty() {
            format!("bearer {}", cast.customer_token)
        } else {
            format!("Bearer {t}")
        };
        let r = send(
            client()
                .get(server.url(&path))
                .header("authorization", auth),
        );
        assert_eq!(r.status, 200, "{what}: {r:?}");
    }
    // The role claim as an array grants the order service its rights.
    let svc = jwt(
        Algorithm::HS256,
        SECRET,
        &json!({"sub": Uuid::new_v4(), "exp": now() + 60, "role": ["OrderService"]}),
    );
    let (st, v) = act(&server, &svc, id, "payment-succeeded", None);
    assert_eq!(st, 200, "{v}");
    // Unknown permissions and roles grant nothing.
    let junk = jwt(
        Algorithm::HS256,
        SECRET,
        &json!({"sub": Uuid::new_v4(), "exp": now() + 60,
        "role": ["Customer", "administrator"], "permission": [format!("RestaurantCook:{}", cast.restaurant), format!("RestaurantStaff:{}", Uuid::new_v4())]}),
    );
    assert_eq!(get_json(&server, &junk, &path).0, 404);
    assert_eq!(act(&server, &junk, id, "accept", Some(eta())).0, 404);
}

#[test]
fn issuer_and_audience_are_checked_when_configured() {
    let server = Server::start_with(&[
        "--jwt-issuer",
        "https://issuer.test",
        "--jwt-audience",
        "ordertrack",
    ]);
    let cast = Cast::new();
    let id = place_with_token(&server, &cast);
    let path = format!("/api/v1/orders/{id}/status");
    let base = |iss: Option<&str>, aud: Option<&str>| {
        let mut c = valid_claims(&cast.customer.to_string());
        if let Some(i) = iss {
            c["iss"] = json!(i);
        }
        if let Some(a) = aud {
            c["aud"] = json!(a);
        }
        jwt(Algorithm::HS256, SECRET, &c)
    };
    let good = base(Some("https://issuer.test"), Some("ordertrack"));
    assert_eq!(get_json(&server, &good, &path).0, 200);
    let mut accepted = Vec::new();
    for (what, t) in [
        ("no iss", base(None, Some("ordertrack"))),
        (
            "wrong iss",
            base(Some("https://evil.test"), Some("ordertrack")),
        ),
        ("no aud", base(Some("https://issuer.test"), None)),
        (
            "wrong aud",
            base(Some("https://issuer.test"), Some("someone-else")),
        ),
        ("neither", base(None, None)),
    ] {
        let r = get_with(&server, &t, &path, &[]);
        if r.status == 401 {
            assert_401(&r, what);
        } else {
            accepted.push(format!("{what}: {}", r.status));
        }
    }
    // SERVER BUG (src/auth/mod.rs, Authenticator::new): contract section 1 says `iss` and `aud` are
    // checked when configured, but only the `exp` and `sub` claims are required, so a token that
    // simply leaves `iss` (or `aud`) out is accepted.
    assert!(
        accepted.is_empty(),
        "tokens accepted despite the configured iss/aud: {accepted:?}"
    );
}

/// Places an order with a hand-made service token carrying the configured iss and aud.
fn place_with_token(server: &Server, cast: &Cast) -> Uuid {
    let svc = jwt(
        Algorithm::HS256,
        SECRET,
        &json!({"sub": Uuid::new_v4(), "exp": now() + 600, "role": "OrderService", "iss": "https://issuer.test", "aud": "ordertrack"}),
    );
    let r = post_json(
        server,
        &svc,
        "/api/v1/orders",
        &cast.order_body("CashOnDelivery"),
        &[],
    );
    assert_eq!(r.status, 201, "{r:?}");
    r.json()["order"]["orderId"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// SERVER BUG (src/config.rs, `TokenArgs::ttl`): `ordertrack token --ttl -1h` is refused by the
/// argument parser ("unexpected argument '-1' found") although `parse_ttl` accepts negative
/// durations; only `--ttl=-1h` works. The brief and the contract's `--ttl 1h` form expect the
/// space-separated form to mint an expired token.
#[test]
fn token_command_mints_an_expired_token_with_a_space_separated_negative_ttl() {
    let server = Server::start();
    let sub = Uuid::new_v4().to_string();
    let out = token_command(&["--sub", &sub, "--ttl", "-1h"]);
    assert!(
        out.status.success(),
        "`token --ttl -1h` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_401(&get_with(&server, &t, "/api/v1/orders/my", &[]), "ttl -1h");
}

#[test]
fn token_command_mints_tokens_the_server_accepts() {
    let server = Server::start();
    let cast = Cast::new();
    let id = place(&server, &cast, "CashOnDelivery");
    let t = minted(&["--sub", &cast.customer.to_string(), "--ttl", "90s"]);
    assert_eq!(
        get_json(&server, &t, &format!("/api/v1/orders/{id}")).0,
        200
    );
    let staff = minted(&[
        "--sub",
        &Uuid::new_v4().to_string(),
        "--permission",
        &format!("RestaurantStaff:{}", cast.restaurant),
    ]);
    assert_eq!(act(&server, &staff, id, "accept", Some(eta())).0, 200);
    // A bad --ttl or --sub is refused by the command itself.
    assert!(
        !token_command(&["--sub", &cast.customer.to_string(), "--ttl", "1y"])
            .status
            .success()
    );
    assert!(!token_command(&["--sub", "alice"]).status.success());
}

#[test]
fn health_and_metrics_need_no_token() {
    let server = Server::start();
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = send(client().get(server.url(path)));
        assert_eq!(r.status, 200, "{path}: {r:?}");
        // A broken token does not matter there either.
        let r = send(
            client()
                .get(server.url(path))
                .header("authorization", "Bearer junk"),
        );
        assert_eq!(r.status, 200, "{path} with junk token: {r:?}");
    }
}

#[test]
fn tokens_never_appear_in_the_log() {
    let mut server = Server::start();
    let cast = Cast::new();
    let id = place(&server, &cast, "CashOnDelivery");
    let bad = jwt(
        Algorithm::HS384,
        SECRET,
        &valid_claims(&cast.customer.to_string()),
    );
    let expired = minted(&["--sub", &cast.customer.to_string(), "--ttl=-2h"]);
    for t in [&cast.customer_token, &cast.staff_token, &bad, &expired] {
        get_with(&server, t, &format!("/api/v1/orders/{id}/status"), &[]);
        get_with(
            &server,
            t,
            &format!("/api/v1/orders/{id}?access_token={t}"),
            &[],
        );
        post_json(
            &server,
            t,
            &format!("/api/v1/orders/{id}/accept"),
            &eta(),
            &[],
        );
    }
    assert_eq!(server.terminate(), Some(0));
    let log = server.log_text();
    assert!(!log.is_empty(), "the server logs something");
    for t in [
        &cast.customer_token,
        &cast.staff_token,
        &cast.service_token,
        &bad,
        &expired,
    ] {
        let signature = t.rsplit('.').next().unwrap();
        assert!(
            !log.contains(signature),
            "a token signature appears in the log:\n{log}"
        );
        let payload = t.split('.').nth(1).unwrap();
        assert!(
            !log.contains(payload),
            "a token payload appears in the log:\n{log}"
        );
    }
}
