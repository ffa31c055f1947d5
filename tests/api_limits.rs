//! Protocol edges (contract sections 6 and 7): body size and media type, malformed input,
//! unknown routes and methods, health and metrics, and raw-socket misbehaviour that must never
//! take the process down.

mod common;
use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use uuid::Uuid;

fn assert_alive(server: &mut Server) {
    let child = server.child.as_mut().expect("child");
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the server process died; log:\n{}",
        server.log_text()
    );
    let r = send(client().get(server.url("/healthz")));
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn oversized_bodies_are_413() {
    let mut server = Server::start();
    let cast = Cast::new();
    let id = place(&server, &cast, "CashOnDelivery");
    // A syntactically valid order padded past 64 KiB with a long note.
    let mut big = cast.order_body("CashOnDelivery");
    big["note"] = json!("n".repeat(70 * 1024));
    let r = post_json(&server, &cast.service_token, "/api/v1/orders", &big, &[]);
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(problem(&r).1, "Request.TooLarge");
    // The same without a Content-Length (chunked).
    let bytes = serde_json::to_vec(&big).unwrap();
    let r = send(
        client()
            .post(server.url("/api/v1/orders"))
            .bearer_auth(&cast.service_token)
            .header("content-type", "application/json")
            .body(reqwest::blocking::Body::new(std::io::Cursor::new(bytes))),
    );
    assert_eq!(r.status, 413, "chunked: {r:?}");
    problem(&r);
    // On an action too.
    let r = post_json(
        &server,
        &cast.staff_token,
        &format!("/api/v1/orders/{id}/reject"),
        &json!({"reason": "r".repeat(100_000)}),
        &[],
    );
    assert_eq!(r.status, 413, "{r:?}");
    // Nothing was stored, nothing changed, the server lives.
    let (_, v) = get_json(&server, &cast.customer_token, "/api/v1/orders/my");
    assert_eq!(v["totalCount"], 1);
    let (_, v) = get_json(
        &server,
        &cast.customer_token,
        &format!("/api/v1/orders/{id}/status"),
    );
    assert_eq!(v["status"], "Placed");
    // Just under the limit is fine (and the note's own length limit answers 400, not 413).
    let mut under = cast.order_body("CashOnDelivery");
    under["note"] = json!("n".repeat(60 * 1024));
    let r = post_json(&server, &cast.service_token, "/api/v1/orders", &under, &[]);
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.json()["errors"]["note"].is_array(), "{r:?}");
    assert_alive(&mut server);
}

#[test]
fn malformed_json_is_400_and_never_crashes() {
    let mut server = Server::start();
    let cast = Cast::new();
    let id = place(&server, &cast, "CashOnDelivery");
    let deep = "[".repeat(20_000);
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", br#"{"customerId": "#.to_vec()),
        ("not json", b"hello".to_vec()),
        ("array", b"[1,2,3]".to_vec()),
        ("string", br#""order""#.to_vec()),
        ("null", b"null".to_vec()),
        ("trailing garbage", br#"{"a":1} x"#.to_vec()),
        (
            "invalid utf-8",
            vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'],
        ),
        ("deep nesting", deep.clone().into_bytes()),
        ("huge number", br#"{"deliveryFee": 1e400}"#.to_vec()),
    ];
    for (what, body) in &bodies {
        let r = post_raw(
            &server,
            &cast.service_token,
            "/api/v1/orders",
            Some("application/json"),
            body.clone(),
            &[],
        );
        assert_eq!(r.status, 400, "place {what}: {r:?}");
        problem(&r);
        for action in ["accept", "cancel", "delivered"] {
            let tok = if action == "cancel" {
                &cast.customer_token
            } else {
                &cast.staff_token
            };
            let r = post_raw(
                &server,
                tok,
                &format!("/api/v1/orders/{id}/{action}"),
                Some("application/json"),
                body.clone(),
                &[],
            );
            assert_eq!(r.status, 400, "{action} {what}: {r:?}");
            problem(&r);
        }
    }
    // An empty body where one is required.
    let r = post_raw(
        &server,
        &cast.service_token,
        "/api/v1/orders",
        Some("application/json"),
        Vec::new(),
        &[],
    );
    assert_eq!(r.status, 400, "{r:?}");
    let (_, v) = get_json(
        &server,
        &cast.customer_token,
        &format!("/api/v1/orders/{id}/status"),
    );
    assert_eq!(
        (v["status"].as_str(), v["version"].as_u64()),
        (Some("Placed"), Some(1))
    );
    assert_alive(&mut server);
}

#[test]
fn wrong_content_type_is_415() {
    let server = Server::start();
    let cast = Cast::new();
    let id = place(&server, &cast, "CashOnDelivery");
    let body = serde_json::to_vec(&cast.order_body("CashOnDelivery")).unwrap();
    for ct in [
        Some("text/plain"),
        Some("application/xml"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let r = post_raw(
            &server,
            &cast.service_token,
            "/api/v1/orders",
            ct,
            body.clone(),
            &[],
        );
        assert_eq!(r.status, 415, "{ct:?}: {r:?}");
        assert_eq!(problem(&r).1, "Request.UnsupportedMediaType");
    }
    let r = post_raw(
        &server,
        &cast.staff_token,
        &format!("/api/v1/orders/{id}/accept"),
        Some("text/plain"),
        serde_json::to_vec(&eta()).unwrap(),
        &[],
    );
    assert_eq!(r.status, 415, "{r:?}");
    problem(&r);
    // JSON with a charset parameter, or upper case, is JSON.
    let r = post_raw(
        &server,
        &cast.staff_token,
        &format!("/api/v1/orders/{id}/accept"),
        Some("Application/JSON; charset=utf-8"),
        serde_json::to_vec(&eta()).unwrap(),
        &[],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let (_, v) = get_json(&server, &cast.customer_token, "/api/v1/orders/my");
    assert_eq!(v["totalCount"], 1, "the refused bodies stored nothing");
}

#[test]
fn unknown_routes_are_404_problems() {
    let server = Server::start();
    let cast = Cast::new();
    let id = place(&server, &cast, "CashOnDelivery");
    for (method, path) in [
        ("GET", "/".to_string()),
        ("GET", "/api".to_string()),
        ("GET", "/api/v1/nothing".to_string()),
        ("GET", "/api/v2/orders/my".to_string()),
        ("GET", format!("/api/v1/orders/{id}/status/extra")),
        ("POST", format!("/api/v1/orders/{id}/teleport")),
        ("GET", format!("/api/v1/orders/{id}/items")),
        ("GET", "/healthz/deep".to_string()),
    ] {
        let rb = client()
            .request(method.parse().unwrap(), server.url(&path))
            .bearer_auth(&cast.customer_token);
        let r = send(rb);
        assert_eq!(r.status, 404, "{method} {path}: {r:?}");
        problem(&r);
    }
}

#[test]
fn wrong_methods_are_405_with_allow() {
    let server = Server::start();
    let cast = Cast::new();
    let id = place(&server, &cast, "CashOnDelivery");
    for (method, path, allow) in [
        ("DELETE", format!("/api/v1/orders/{id}"), "GET"),
        ("PUT", format!("/api/v1/orders/{id}"), "GET"),
        ("POST", format!("/api/v1/orders/{id}/status"), "GET"),
        ("GET", "/api/v1/orders".to_string(), "POST"),
        ("POST", "/api/v1/orders/my".to_string(), "GET"),
        ("GET", format!("/api/v1/orders/{id}/accept"), "POST"),
        ("PATCH", format!("/api/v1/orders/{id}/cancel"), "POST"),
        ("POST", "/healthz".to_string(), "GET"),
        ("DELETE", "/metrics".to_string(), "GET"),
    ] {
        let rb = client()
            .request(method.parse().unwrap(), server.url(&path))
            .bearer_auth(&cast.staff_token);
        let r = send(rb);
        assert_eq!(r.status, 405, "{method} {path}: {r:?}");
        problem(&r);
        let allowed = r
            .header("allow")
            .unwrap_or_else(|| panic!("{method} {path}: no Allow header: {r:?}"));
        assert!(
            allowed.split(',').any(|m| m.trim() == allow),
            "{method} {path}: Allow: {allowed}"
        );
        assert!(
            !allowed.split(',').any(|m| m.trim() == method),
            "{method} {path}: Allow: {allowed}"
        );
    }
    // A 405 on an action changed nothing.
    let (_, v) = get_json(
        &server,
        &cast.customer_token,
        &format!("/api/v1/orders/{id}/status"),
    );
    assert_eq!(v["version"], 1);
}

#[test]
fn health_readiness_and_metrics() {
    let server = Server::start();
    let cast = Cast::new();
    for path in ["/healthz", "/readyz"] {
        let r = send(client().get(server.url(path)));
        assert_eq!(r.status, 200, "{path}: {r:?}");
        let r = send(client().head(server.url(path)));
        assert_eq!(r.status, 200, "HEAD {path}: {r:?}");
    }
    let id = place(&server, &cast, "CashOnDelivery");
    let status_count = |text: &str| -> u64 {
        text.lines()
            .find(|l| {
                l.starts_with("ordertrack_http_requests_total{")
                    && l.contains("route=\"order_status\"")
                    && l.contains("status=\"200\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    let before = send(client().get(server.url("/metrics")));
    assert_eq!(before.status, 200);
    let ct = before.header("content-type").unwrap();
    assert!(ct.starts_with("text/plain"), "{ct}");
    for _ in 0..3 {
        assert_eq!(
            get_json(
                &server,
                &cast.customer_token,
                &format!("/api/v1/orders/{id}/status")
            )
            .0,
            200
        );
    }
    let after = send(client().get(server.url("/metrics")));
    let text = &after.text;
    assert!(
        text.contains("# TYPE ordertrack_http_requests_total counter"),
        "{text}"
    );
    assert!(text.contains("ordertrack_http_requests_total{"), "{text}");
    assert_eq!(status_count(text), status_count(&before.text) + 3, "{text}");
    // Every sample line is `name{labels} value` with a numeric value.
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line: {line}"));
        assert!(
            name.starts_with("ordertrack_") || name.starts_with("process_"),
            "{line}"
        );
        let v = value.trim();
        assert!(
            v.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&v),
            "{line}"
        );
        if let Some(open) = name.find('{') {
            assert!(name.ends_with('}') && open > 0, "{line}");
        }
    }
    // Tokens never appear in metrics.
    assert!(!text.contains(&cast.customer_token[..20]));
}

#[test]
fn raw_socket_misbehaviour_is_answered_or_closed_and_the_server_lives() {
    let mut server = Server::start();
    let cast = Cast::new();
    let id = place(&server, &cast, "CashOnDelivery");
    let t = Duration::from_secs(5);
    // Malformed request lines: a 4xx or a closed connection, never a crash.
    for req in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /api/v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nBad Header Without Colon\r\n\r\n",
    ] {
        if let Some(answer) = raw_exchange(server.port, req, t) {
            let code: u16 = answer.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
            assert!((400..500).contains(&code), "{:?} answered {answer}", String::from_utf8_lossy(req));
        }
    }
    // Too many or too large headers.
    let mut many = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for i in 0..200 {
        many.push_str(&format!("X-H{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    for req in [many, huge] {
        if let Some(answer) = raw_exchange(server.port, req.as_bytes(), t) {
            let code: u16 = answer
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            assert!((400..500).contains(&code), "answered {answer}");
        }
    }
    // A request trickled in byte by byte (slow, but within the header timeout) is served.
    let req = format!("GET /api/v1/orders/{id}/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n", cast.customer_token);
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.set_read_timeout(Some(t)).unwrap();
    for chunk in req.as_bytes().chunks(16) {
        s.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(3));
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"status\":\"Placed\""), "{answer}");
    // A connection dropped in the middle of a body.
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let head = format!("POST /api/v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{{\"customerId\"", cast.service_token);
    s.write_all(head.as_bytes()).unwrap();
    drop(s);
    // Percent-encoded junk in the id is the masked 404.
    let r = get_with(
        &server,
        &cast.customer_token,
        "/api/v1/orders/%ZZ%00/status",
        &[],
    );
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(problem(&r).1, "GetOrderStatus.NotFound");
    assert_alive(&mut server);
    let (_, v) = get_json(&server, &cast.customer_token, "/api/v1/orders/my");
    assert_eq!(v["totalCount"], 1, "no half-received order was stored");
}

#[test]
fn a_connection_that_never_sends_a_byte_is_closed_within_15_seconds() {
    let mut server = Server::start();
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // Meanwhile the server keeps serving others.
    assert_eq!(send(client().get(server.url("/healthz"))).status, 200);
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf);
    let waited = started.elapsed();
    assert!(
        matches!(n, Ok(0)) || n.is_err(),
        "expected the server to close the idle connection, got {n:?}"
    );
    assert!(
        waited < Duration::from_secs(15),
        "closed only after {waited:?}"
    );
    assert!(
        waited >= Duration::from_secs(1),
        "closed suspiciously early ({waited:?})"
    );
    assert_alive(&mut server);
}

#[test]
fn unknown_ids_in_every_shape_never_reach_the_store_as_garbage() {
    // Ids that are not UUIDs are the masked 404 on reads and writes alike, with any token.
    let server = Server::start();
    let cast = Cast::new();
    for seg in [
        "x",
        "00000000-0000-0000-0000-00000000000g",
        "{00000000-0000-0000-0000-000000000000}",
        &"9".repeat(500),
    ] {
        let r = get_with(
            &server,
            &cast.admin_token,
            &format!("/api/v1/orders/{seg}"),
            &[],
        );
        assert_eq!(r.status, 404, "{seg}: {r:?}");
        assert_eq!(problem(&r).1, "GetOrderById.NotFound");
        let r = post_json(
            &server,
            &cast.admin_token,
            &format!("/api/v1/orders/{seg}/cancel"),
            &json!({}),
            &[],
        );
        assert_eq!(r.status, 404, "{seg}: {r:?}");
    }
    // The nil UUID is a well-formed id that names nothing.
    let nil = Uuid::nil();
    assert_eq!(
        get_json(
            &server,
            &cast.admin_token,
            &format!("/api/v1/orders/{nil}/status")
        )
        .0,
        404
    );
}
