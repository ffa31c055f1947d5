//! SignalR wire protocol of the hubs, exercised with a raw WebSocket client: negotiate, the
//! upgrade rules, the handshake, JSON framing and invocation handling, size limits,
//! keep-alive and client timeout. (Contract section 5; protocol notes sections 1, 3, 4, 6, 9.)

mod common;
use common::hub::*;
use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use uuid::Uuid;

const CUSTOMER_HUB: &str = "customer-orders";

/// A connection id (22 characters) or token (the server's sealed tokens are longer): URL-safe.
fn is_url_safe_token(s: &str) -> bool {
    (22..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn check_transports(body: &Value) {
    let transports = body["availableTransports"]
        .as_array()
        .unwrap_or_else(|| panic!("availableTransports missing: {body}"));
    let ws = transports
        .iter()
        .find(|t| t["transport"] == "WebSockets")
        .unwrap_or_else(|| panic!("WebSockets not offered: {body}"));
    assert_eq!(ws["transferFormats"], json!(["Text", "Binary"]), "{body}");
    for t in transports {
        assert!(
            ["WebSockets", "ServerSentEvents", "LongPolling"]
                .contains(&t["transport"].as_str().unwrap_or("")),
            "unknown transport name spelling: {body}"
        );
    }
    assert!(body.get("ProtocolVersion").is_none(), "{body}");
    assert!(
        body.get("useStatefulReconnect").is_none(),
        "useStatefulReconnect must only be echoed when asked for: {body}"
    );
}

// ---- negotiate -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn negotiate_v1_has_id_token_and_websockets() {
    let (server, cast) = setup();
    let (status, ctype, body) = negotiate(
        server.port,
        CUSTOMER_HUB,
        "?negotiateVersion=1",
        Some(&cast.customer_token),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        ctype.starts_with("application/json"),
        "content-type {ctype}"
    );
    assert_eq!(body["negotiateVersion"], 1, "{body}");
    let id = body["connectionId"].as_str().expect("connectionId");
    let token = body["connectionToken"].as_str().expect("connectionToken");
    assert!(is_url_safe_token(id), "connectionId {id:?}");
    assert!(is_url_safe_token(token), "connectionToken {token:?}");
    assert_ne!(id, token, "v1 token must differ from the public id");
    check_transports(&body);

    // The token (not the id) opens the WebSocket.
    let ws = ws_connect(
        server.port,
        &format!("/hubs/{CUSTOMER_HUB}?id={token}"),
        Some(&cast.customer_token),
    )
    .await
    .expect("upgrade with the connection token");
    JsonHub::handshake(ws).await;

    // Server maximum is 1: a higher request is answered with 1.
    let (_, _, body) = negotiate(
        server.port,
        CUSTOMER_HUB,
        "?negotiateVersion=7",
        Some(&cast.customer_token),
    )
    .await;
    assert_eq!(body["negotiateVersion"], 1, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn negotiate_v0_has_no_connection_token_and_the_id_connects() {
    let (server, cast) = setup();
    let (status, _, body) =
        negotiate(server.port, CUSTOMER_HUB, "", Some(&cast.customer_token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["negotiateVersion"], 0, "{body}");
    assert!(
        body.get("connectionToken").is_none(),
        "v0 has no connectionToken: {body}"
    );
    let id = body["connectionId"].as_str().expect("connectionId");
    assert!(is_url_safe_token(id), "connectionId {id:?}");
    check_transports(&body);
    let ws = ws_connect(
        server.port,
        &format!("/hubs/{CUSTOMER_HUB}?id={id}"),
        Some(&cast.customer_token),
    )
    .await
    .expect("v0 clients connect with the connectionId");
    JsonHub::handshake(ws).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn negotiate_without_or_with_a_bad_token_is_401() {
    let (server, _cast) = setup();
    for token in [None, Some("not-a-jwt")] {
        for hub in [CUSTOMER_HUB, "restaurant-orders"] {
            let (status, _, body) = negotiate(server.port, hub, "?negotiateVersion=1", token).await;
            assert_eq!(
                status, 401,
                "negotiate on {hub} with token {token:?}: {body}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn negotiate_query_handling_and_errors() {
    let (server, cast) = setup();
    let t = Some(cast.customer_token.as_str());
    // Keys are case-insensitive; the user's own parameters are kept by clients and ignored.
    let (st, _, body) =
        negotiate(server.port, CUSTOMER_HUB, "?tenant=x&NegotiateVersion=1", t).await;
    assert_eq!(st, 200);
    assert_eq!(body["negotiateVersion"], 1, "{body}");
    assert!(body["connectionToken"].is_string(), "{body}");
    // Stateful reconnect is not offered, so it is never echoed even when asked for.
    let (_, _, body) = negotiate(
        server.port,
        CUSTOMER_HUB,
        "?negotiateVersion=1&useStatefulReconnect=true",
        t,
    )
    .await;
    assert!(body["connectionToken"].is_string(), "{body}");
    assert!(
        body.get("useStatefulReconnect").is_none() || body["useStatefulReconnect"] == true,
        "{body}"
    );
    // A bad version is an error payload (HTTP 200 with only `error`).
    for q in ["?negotiateVersion=abc", "?negotiateVersion=-1"] {
        let (st, _, body) = negotiate(server.port, CUSTOMER_HUB, q, t).await;
        assert_eq!(st, 200, "{q}: {body}");
        let obj = body
            .as_object()
            .unwrap_or_else(|| panic!("{q}: not an object: {body}"));
        assert!(obj["error"].is_string() && obj.len() == 1, "{q}: {body}");
    }
    // Only POST.
    let r = reqwest::Client::new()
        .get(format!(
            "http://127.0.0.1:{}/hubs/{CUSTOMER_HUB}/negotiate",
            server.port
        ))
        .bearer_auth(&cast.customer_token)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 405);
    // An unknown hub is not found.
    let (st, _, _) = negotiate(server.port, "nope", "?negotiateVersion=1", t).await;
    assert_eq!(st, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn negotiate_answers_cors_for_browser_clients() {
    let (server, cast) = setup();
    let client = reqwest::Client::new();
    let url = format!(
        "http://127.0.0.1:{}/hubs/{CUSTOMER_HUB}/negotiate?negotiateVersion=1",
        server.port
    );
    let r = client
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "http://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,x-requested-with,x-signalr-user-agent",
        )
        .send()
        .await
        .expect("preflight");
    assert!(r.status().is_success(), "preflight status {}", r.status());
    let h = r.headers();
    assert_eq!(
        h["access-control-allow-origin"], "http://app.example",
        "no wildcard with credentials"
    );
    assert_eq!(h["access-control-allow-credentials"], "true");
    let allowed = h["access-control-allow-headers"]
        .to_str()
        .unwrap_or("")
        .to_ascii_lowercase();
    for name in ["authorization", "x-requested-with", "x-signalr-user-agent"] {
        assert!(allowed.contains(name), "{name} not allowed: {allowed}");
    }
    let r = client
        .post(&url)
        .header("origin", "http://app.example")
        .bearer_auth(&cast.customer_token)
        .send()
        .await
        .expect("negotiate");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://app.example"
    );
    assert_eq!(r.headers()["access-control-allow-credentials"], "true");
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_to_an_unknown_hub_is_404() {
    let (server, cast) = setup();
    let r = ws_connect(server.port, "/hubs/nope", Some(&cast.customer_token)).await;
    assert_eq!(refused_status(r), 404);
}

// ---- upgrade -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_with_an_unknown_id_is_404() {
    let (server, cast) = setup();
    let r = ws_connect(
        server.port,
        &format!("/hubs/{CUSTOMER_HUB}?id=AAAAAAAAAAAAAAAAAAAAAA"),
        Some(&cast.customer_token),
    )
    .await;
    assert_eq!(refused_status(r), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_reusing_a_consumed_id_is_404() {
    let (server, cast) = setup();
    let token = negotiate_token(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    let path = format!("/hubs/{CUSTOMER_HUB}?id={token}");
    let first = ws_connect(server.port, &path, Some(&cast.customer_token))
        .await
        .expect("first use of the id");
    let _hub = JsonHub::handshake(first).await;
    let again = ws_connect(server.port, &path, Some(&cast.customer_token)).await;
    assert_eq!(
        refused_status(again),
        404,
        "a consumed connection id must not be reusable"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_without_or_with_a_bad_token_is_401() {
    let (server, cast) = setup();
    let r = ws_connect(server.port, &format!("/hubs/{CUSTOMER_HUB}"), None).await;
    assert_eq!(refused_status(r), 401, "no token");
    let r = ws_connect(
        server.port,
        &format!("/hubs/{CUSTOMER_HUB}"),
        Some("garbage"),
    )
    .await;
    assert_eq!(refused_status(r), 401, "bad header token");
    let r = ws_connect(
        server.port,
        &format!("/hubs/{CUSTOMER_HUB}?access_token=garbage"),
        None,
    )
    .await;
    assert_eq!(refused_status(r), 401, "bad query token");
    // A negotiated id does not replace the token.
    let token = negotiate_token(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    let r = ws_connect(
        server.port,
        &format!("/hubs/{CUSTOMER_HUB}?id={token}"),
        None,
    )
    .await;
    assert_eq!(refused_status(r), 401, "negotiated id without a token");
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_with_access_token_query_parameter_works() {
    let (server, cast) = setup();
    let order = blocking(|| place(&server, &cast, "CashOnDelivery"));
    let id = negotiate_token(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    let ws = ws_connect(
        server.port,
        &format!(
            "/hubs/{CUSTOMER_HUB}?id={id}&access_token={}",
            cast.customer_token
        ),
        None,
    )
    .await
    .expect("upgrade with access_token in the query");
    let mut hub = JsonHub::handshake(ws).await;
    // The query token identifies the customer: their own order is visible.
    let dto = hub.subscribe(order).await;
    check_dto(&dto, order, cast.restaurant, "Placed");
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_without_id_skip_negotiation_works() {
    let (server, cast) = setup();
    let ws = ws_connect(
        server.port,
        &format!("/hubs/{CUSTOMER_HUB}"),
        Some(&cast.customer_token),
    )
    .await
    .expect("upgrade without id");
    JsonHub::handshake(ws).await;
}

// ---- handshake -----------------------------------------------------------------------------

async fn bare(server: &Server, token: &str) -> Ws {
    ws_connect(server.port, &format!("/hubs/{CUSTOMER_HUB}"), Some(token))
        .await
        .expect("upgrade")
}

#[tokio::test(flavor = "multi_thread")]
async fn handshake_json_in_a_text_frame_is_answered_in_a_text_frame() {
    let (server, cast) = setup();
    let mut ws = bare(&server, &cast.customer_token).await;
    send_text(&mut ws, JSON_HANDSHAKE).await;
    match next_frame(&mut ws, WAIT).await {
        Some(Frame::Text(t)) => assert_eq!(t, "{}\u{1e}"),
        other => panic!("expected {{}}+0x1E in a TEXT frame, got {other:?}"),
    }
    // Version 2 (stateful reconnect clients) is accepted too.
    let mut ws = bare(&server, &cast.customer_token).await;
    send_text(&mut ws, "{\"protocol\":\"json\",\"version\":2}\u{1e}").await;
    match next_frame(&mut ws, WAIT).await {
        Some(Frame::Text(t)) => assert_eq!(t, "{}\u{1e}", "version 2"),
        other => panic!("version 2 handshake: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn handshake_messagepack_in_binary_or_text_frame_is_answered() {
    let (server, cast) = setup();
    // .NET style: BINARY frame.
    let mut ws = bare(&server, &cast.customer_token).await;
    send_binary(&mut ws, MSGPACK_HANDSHAKE.as_bytes()).await;
    match next_frame(&mut ws, WAIT).await {
        Some(Frame::Binary(b)) => assert_eq!(b, b"{}\x1e"),
        Some(Frame::Text(t)) => assert_eq!(t, "{}\u{1e}"),
        other => panic!("no answer to a binary MessagePack handshake: {other:?}"),
    }
    // JS style: TEXT frame.
    let mut ws = bare(&server, &cast.customer_token).await;
    send_text(&mut ws, MSGPACK_HANDSHAKE).await;
    match next_frame(&mut ws, WAIT).await {
        Some(Frame::Binary(b)) => assert_eq!(b, b"{}\x1e"),
        Some(Frame::Text(t)) => assert_eq!(t, "{}\u{1e}"),
        other => panic!("no answer to a text MessagePack handshake: {other:?}"),
    }
    // .NET style again, with an Invocation in the same BINARY frame as the handshake.
    let mut ws = bare(&server, &cast.customer_token).await;
    let mut frame = MSGPACK_HANDSHAKE.as_bytes().to_vec();
    frame.extend(mp_invocation(Some("h"), "Nope", &[]));
    send_binary(&mut ws, &frame).await;
    let mut got = Vec::new();
    while got.len() < 5 {
        match next_frame(&mut ws, WAIT).await {
            Some(Frame::Binary(b)) => got.extend(b),
            Some(Frame::Text(t)) => got.extend(t.into_bytes()),
            other => panic!("handshake + invocation in one frame: {other:?}"),
        }
    }
    assert!(got.starts_with(b"{}\x1e"), "{got:?}");
    let msgs = mp_messages(&got[3..]);
    assert_eq!(msgs[0].arr()[2], Mp::Str("h".into()), "{msgs:?}");
    // After it the connection speaks MessagePack: an unknown method gets a binary completion.
    send_binary(&mut ws, &mp_invocation(Some("1"), "Nope", &[])).await;
    match next_frame(&mut ws, WAIT).await {
        Some(Frame::Binary(b)) => {
            let msgs = mp_messages(&b);
            let c = msgs[0].arr();
            assert_eq!(c[0], Mp::Int(3), "{msgs:?}");
            assert_eq!(c[2], Mp::Str("1".into()), "{msgs:?}");
            assert_eq!(c[3], Mp::Int(1), "ResultKind error: {msgs:?}");
            assert_eq!(c[4], Mp::Str("Unknown hub method 'Nope'".into()));
        }
        other => panic!("expected a BINARY completion, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn handshake_split_across_two_frames() {
    let (server, cast) = setup();
    let mut ws = bare(&server, &cast.customer_token).await;
    send_text(&mut ws, "{\"protocol\":\"js").await;
    // Nothing may be answered before the 0x1E.
    assert!(
        next_frame(&mut ws, Duration::from_millis(200))
            .await
            .is_none(),
        "answered a partial handshake"
    );
    send_text(&mut ws, "on\",\"version\":1}\u{1e}").await;
    let mut hub = JsonHub::expect_handshake_ok(ws).await;
    let c = hub.invoke("Nope", json!([])).await;
    assert_eq!(c["error"], "Unknown hub method 'Nope'");
}

#[tokio::test(flavor = "multi_thread")]
async fn handshake_and_invocation_in_the_same_frame_are_both_processed() {
    let (server, cast) = setup();
    let order = blocking(|| place(&server, &cast, "CashOnDelivery"));
    let mut ws = bare(&server, &cast.customer_token).await;
    let frame = format!(
        "{JSON_HANDSHAKE}{}{RS}",
        json!({"type":1,"invocationId":"7","target":"SubscribeToOrder","arguments":[order]})
    );
    send_text(&mut ws, &frame).await;
    let mut hub = JsonHub::expect_handshake_ok(ws).await;
    let c = hub.completion("7").await;
    assert!(c.get("error").is_none(), "{c}");
    check_dto(&c["result"], order, cast.restaurant, "Placed");
}

async fn handshake_refused(server: &Server, token: &str, request: &str, expected: &str) {
    let mut ws = bare(server, token).await;
    send_text(&mut ws, request).await;
    match next_frame(&mut ws, WAIT).await {
        Some(Frame::Text(t)) => {
            assert_eq!(
                t,
                format!("{}{RS}", json!({ "error": expected })),
                "for {request:?}"
            );
            let v: Value = serde_json::from_str(t.trim_end_matches(RS)).expect("json");
            assert!(
                v.get("type").is_none(),
                "a handshake answer must not have `type`"
            );
        }
        other => panic!("expected a handshake error for {request:?}, got {other:?}"),
    }
    match next_frame(&mut ws, WAIT).await {
        Some(Frame::Close(_)) | Some(Frame::End(_)) => {}
        other => panic!("the connection must end after a refused handshake, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn handshake_unknown_protocol_is_refused_then_closed() {
    let (server, cast) = setup();
    handshake_refused(
        &server,
        &cast.customer_token,
        "{\"protocol\":\"foo\",\"version\":1}\u{1e}",
        "The protocol 'foo' is not supported.",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn handshake_unsupported_version_is_refused_then_closed() {
    let (server, cast) = setup();
    handshake_refused(
        &server,
        &cast.customer_token,
        "{\"protocol\":\"json\",\"version\":99}\u{1e}",
        "The server does not support version 99 of the 'json' protocol.",
    )
    .await;
}

/// Issue 10 (4.1): ASP.NET Core 8+ accepts every handshake version up to 2 for both protocols,
/// and Python's `signalrcore` sends version 0. Each accepted connection must then work.
#[tokio::test(flavor = "multi_thread")]
async fn handshake_versions_0_1_and_2_are_accepted_for_json_and_messagepack() {
    let (server, cast) = setup();
    let t = &cast.customer_token;
    for version in 0..=2 {
        let mut ws = bare(&server, t).await;
        send_text(
            &mut ws,
            &format!("{{\"protocol\":\"json\",\"version\":{version}}}{RS}"),
        )
        .await;
        let mut hub = JsonHub::expect_handshake_ok(ws).await;
        let c = hub.invoke("Nope", json!([])).await;
        assert_eq!(c["error"], "Unknown hub method 'Nope'", "json v{version}");

        let mut ws = bare(&server, t).await;
        let handshake = format!("{{\"protocol\":\"messagepack\",\"version\":{version}}}{RS}");
        send_binary(&mut ws, handshake.as_bytes()).await;
        match next_frame(&mut ws, WAIT).await {
            Some(Frame::Binary(b)) => assert_eq!(b, b"{}\x1e", "messagepack v{version}"),
            Some(Frame::Text(t)) => assert_eq!(t, "{}\u{1e}", "messagepack v{version}"),
            other => panic!("messagepack v{version}: no handshake answer: {other:?}"),
        }
        send_binary(&mut ws, &mp_invocation(Some("1"), "Nope", &[])).await;
        match next_frame(&mut ws, WAIT).await {
            Some(Frame::Binary(b)) => {
                let msgs = mp_messages(&b);
                let c = msgs[0].arr();
                assert_eq!(c[0], Mp::Int(3), "messagepack v{version}: {msgs:?}");
                assert_eq!(c[4], Mp::Str("Unknown hub method 'Nope'".into()));
            }
            other => panic!("messagepack v{version}: expected a completion, got {other:?}"),
        }
    }
}

/// Version 3 and above are refused with ASP.NET's text, which names the protocol as the client
/// spelled it.
#[tokio::test(flavor = "multi_thread")]
async fn handshake_version_3_is_refused_for_json_and_messagepack() {
    let (server, cast) = setup();
    let t = &cast.customer_token;
    for (protocol, version) in [
        ("json", 3),
        ("messagepack", 3),
        ("MessagePack", 3),
        ("json", 4),
    ] {
        handshake_refused(
            &server,
            t,
            &format!("{{\"protocol\":\"{protocol}\",\"version\":{version}}}{RS}"),
            &format!("The server does not support version {version} of the '{protocol}' protocol."),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn handshake_malformed_or_oversized_is_refused_then_closed() {
    let (server, cast) = setup();
    let t = &cast.customer_token;
    let unexpected = "An unexpected error occurred during connection handshake.";
    handshake_refused(&server, t, "{\"protocol\":\"json\"}\u{1e}", unexpected).await;
    handshake_refused(&server, t, "{\"version\":1}\u{1e}", unexpected).await;
    handshake_refused(&server, t, "not json\u{1e}", unexpected).await;
    let huge = format!(
        "{{\"protocol\":\"json\",\"pad\":\"{}\"",
        "p".repeat(8 * 1024)
    );
    handshake_refused(&server, t, &huge, "Handshake was canceled.").await;
    // Unknown properties are skipped.
    let mut ws = bare(&server, t).await;
    send_text(
        &mut ws,
        "{\"protocol\":\"json\",\"version\":1,\"x\":[1]}\u{1e}",
    )
    .await;
    JsonHub::expect_handshake_ok(ws).await;
    // A JSON handshake in a BINARY frame is accepted; replies are TEXT frames.
    let mut ws = bare(&server, t).await;
    send_binary(&mut ws, JSON_HANDSHAKE.as_bytes()).await;
    let mut hub = JsonHub::expect_handshake_ok(ws).await;
    let c = hub.invoke("Nope", json!([])).await;
    assert_eq!(c["error"], "Unknown hub method 'Nope'");
}

// ---- JSON hub protocol ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn json_batched_invocations_in_one_frame_are_all_answered() {
    let (server, cast) = setup();
    let a = blocking(|| place(&server, &cast, "CashOnDelivery"));
    let b = blocking(|| place(&server, &cast, "CashOnDelivery"));
    let mut hub = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    let frame = [
        json!({"type":1,"invocationId":"1","target":"SubscribeToOrder","arguments":[a]}),
        json!({"type":1,"invocationId":"2","target":"Nope","arguments":[]}),
        json!({"type":1,"invocationId":"3","target":"SubscribeToOrder","arguments":[b]}),
        json!({"type":6}),
        json!({"type":1,"invocationId":"4","target":"UnsubscribeFromOrder","arguments":[b]}),
    ]
    .iter()
    .map(|v| format!("{v}{RS}"))
    .collect::<String>();
    hub.send_text(&frame).await;
    let c1 = hub.completion("1").await;
    let c2 = hub.completion("2").await;
    let c3 = hub.completion("3").await;
    let c4 = hub.completion("4").await;
    check_dto(&c1["result"], a, cast.restaurant, "Placed");
    assert_eq!(c2["error"], "Unknown hub method 'Nope'");
    check_dto(&c3["result"], b, cast.restaurant, "Placed");
    assert!(c4.get("error").is_none(), "{c4}");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_invocation_split_across_three_frames_is_answered() {
    let (server, cast) = setup();
    let order = blocking(|| place(&server, &cast, "CashOnDelivery"));
    let mut hub = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    let text = format!(
        "{}{RS}",
        json!({"type":1,"invocationId":"9","target":"SubscribeToOrder","arguments":[order]})
    );
    let (p1, rest) = text.split_at(10);
    let (p2, p3) = rest.split_at(30);
    hub.send_text(p1).await;
    hub.send_text(p2).await;
    hub.send_text(p3).await;
    let c = hub.completion("9").await;
    check_dto(&c["result"], order, cast.restaurant, "Placed");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_type_property_last_works() {
    let (server, cast) = setup();
    let order = blocking(|| place(&server, &cast, "CashOnDelivery"));
    let mut hub = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    // Exactly what the JS client writes, plus unknown properties and headers to skip.
    hub.send_text(&format!(
        "{{\"target\":\"SubscribeToOrder\",\"arguments\":[\"{order}\"],\"headers\":{{\"x\":\"y\"}},\"extra\":{{\"a\":[1,2]}},\"invocationId\":\"0\",\"type\":1}}{RS}"
    ))
    .await;
    let c = hub.completion("0").await;
    check_dto(&c["result"], order, cast.restaurant, "Placed");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_unknown_method_completes_with_an_error() {
    let (server, cast) = setup();
    let mut hub = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    let c = hub.invoke("Nope", json!(["x"])).await;
    assert_eq!(c["type"], 3, "{c}");
    assert_eq!(c["error"], "Unknown hub method 'Nope'", "{c}");
    assert!(
        c.get("result").is_none(),
        "never both result and error: {c}"
    );
    // The connection stays usable.
    let c = hub.invoke("Nope", json!([])).await;
    assert_eq!(c["error"], "Unknown hub method 'Nope'", "{c}");
    // A restaurant-hub method is unknown on the customer hub.
    let c = hub
        .invoke("SubscribeToRestaurant", json!([cast.restaurant]))
        .await;
    assert_eq!(
        c["error"], "Unknown hub method 'SubscribeToRestaurant'",
        "{c}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_wrong_arguments_complete_with_a_binding_error() {
    let (server, cast) = setup();
    let order = blocking(|| place(&server, &cast, "CashOnDelivery"));
    let mut hub = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    let expected = "Failed to invoke 'SubscribeToOrder' due to an error on the server.";
    for args in [
        json!([42]),
        json!(["not-a-uuid"]),
        json!([]),
        json!([null]),
        json!([{"orderId": order}]),
        json!([order, order]),
    ] {
        let c = hub.invoke("SubscribeToOrder", args.clone()).await;
        assert_eq!(c["error"], expected, "arguments {args}: {c}");
        assert!(c.get("result").is_none(), "{c}");
    }
    // Still usable afterwards.
    let dto = hub.subscribe(order).await;
    check_dto(&dto, order, cast.restaurant, "Placed");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_fire_and_forget_gets_no_completion_but_takes_effect() {
    let (server, cast) = setup();
    let order = blocking(|| place(&server, &cast, "CashOnDelivery"));
    let mut hub = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    hub.send(&json!({"type":1,"target":"SubscribeToOrder","arguments":[order]}))
        .await;
    hub.send(&json!({"type":1,"target":"Nope","arguments":[]}))
        .await;
    // Invocations are handled in order: the first message back must be the answer to this one.
    hub.send(&json!({"type":1,"invocationId":"after","target":"Nope","arguments":[]}))
        .await;
    let first = hub.msg().await;
    assert_eq!(
        first["invocationId"], "after",
        "a fire-and-forget invocation must not be answered: {first}"
    );
    // The subscription took effect.
    let (st, body) = blocking(|| act(&server, &cast.staff_token, order, "accept", Some(eta())));
    assert_eq!(st, 200, "{body}");
    let (target, dto) = hub.event().await;
    assert_eq!(target, "ReceiveOrderStatusChanged");
    check_dto(&dto, order, cast.restaurant, "Accepted");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_method_names_are_case_insensitive() {
    let (server, cast) = setup();
    let order = blocking(|| place(&server, &cast, "CashOnDelivery"));
    let mut hub = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    for name in ["subscribetoorder", "SUBSCRIBETOORDER", "subscribeToOrder"] {
        let c = hub.invoke(name, json!([order])).await;
        assert!(c.get("error").is_none(), "{name}: {c}");
        check_dto(&c["result"], order, cast.restaurant, "Placed");
    }
    let c = hub.invoke("unsubscribefromorder", json!([order])).await;
    assert!(c.get("error").is_none(), "{c}");
    assert_eq!(
        c.get("result"),
        Some(&Value::Null),
        "void method completes with result null: {c}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribe_to_own_order_returns_its_current_dto() {
    let (server, cast) = setup();
    let order = blocking(|| place(&server, &cast, "CashOnDelivery"));
    let (st, body) = blocking(|| act(&server, &cast.staff_token, order, "accept", Some(eta())));
    assert_eq!(st, 200, "{body}");
    let (_, status) = blocking(|| {
        get_json(
            &server,
            &cast.customer_token,
            &format!("/api/v1/orders/{order}/status"),
        )
    });
    let mut hub = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    let c = hub.invoke("SubscribeToOrder", json!([order])).await;
    assert_eq!(c["type"], 3, "{c}");
    assert!(c.get("error").is_none(), "{c}");
    let dto = &c["result"];
    check_dto(dto, order, cast.restaurant, "Accepted");
    assert_eq!(dto["orderNumber"], body["orderNumber"], "{dto}");
    assert_eq!(
        dto["estimatedDeliveryTime"], status["estimatedDeliveryTime"],
        "{dto}"
    );
    assert_eq!(
        dto["lastUpdateTimestamp"], status["lastUpdateTimestamp"],
        "{dto}"
    );
    // Staff, owner and administrator may subscribe too (contract section 2).
    for token in [&cast.staff_token, &cast.owner_token, &cast.admin_token] {
        let mut other = JsonHub::connect(server.port, CUSTOMER_HUB, token).await;
        let dto = other.subscribe(order).await;
        check_dto(&dto, order, cast.restaurant, "Accepted");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_subscriptions_are_indistinguishable() {
    let (server, cast) = setup();
    let order = blocking(|| place(&server, &cast, "CashOnDelivery"));
    let other_staff = blocking(|| {
        token(
            Uuid::new_v4(),
            &[],
            &[&format!("RestaurantStaff:{}", Uuid::new_v4())],
        )
    });
    let mut answers = Vec::new();
    for (who, token, id) in [
        ("stranger, foreign order", &cast.stranger_token, order),
        (
            "stranger, unknown order",
            &cast.stranger_token,
            Uuid::new_v4(),
        ),
        (
            "customer, unknown order",
            &cast.customer_token,
            Uuid::new_v4(),
        ),
        ("other restaurant's staff", &other_staff, order),
    ] {
        let mut hub = JsonHub::connect(server.port, CUSTOMER_HUB, token).await;
        hub.send_text(&format!(
            "{{\"type\":1,\"invocationId\":\"1\",\"target\":\"SubscribeToOrder\",\"arguments\":[\"{id}\"]}}{RS}"
        ))
        .await;
        // Read the raw frame so the comparison is byte for byte.
        let raw = match next_frame(&mut hub.ws, WAIT).await {
            Some(Frame::Text(t)) => t,
            other => panic!("{who}: {other:?}"),
        };
        let v: Value = serde_json::from_str(raw.trim_end_matches(RS)).expect("json");
        assert!(
            v["error"].is_string(),
            "{who}: refusal must be a Completion error: {raw}"
        );
        assert!(v.get("result").is_none(), "{who}: {raw}");
        answers.push((who, raw));
    }
    for (who, raw) in &answers[1..] {
        assert_eq!(
            raw, &answers[0].1,
            "'{who}' must be answered byte-identically to '{}'",
            answers[0].0
        );
    }
    // The refused stranger gets no events.
    let mut hub = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.stranger_token).await;
    let c = hub.invoke("SubscribeToOrder", json!([order])).await;
    assert!(c["error"].is_string(), "{c}");
    let (st, _) = blocking(|| act(&server, &cast.staff_token, order, "accept", Some(eta())));
    assert_eq!(st, 200);
    hub.quiet(QUIET).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn json_unknown_message_types_and_properties_are_ignored() {
    let (server, cast) = setup();
    let mut hub = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    let frame = [
        json!({"type": 99, "whatever": true}),
        json!({"type": 5, "invocationId": "no-such-invocation"}),
        json!({"type": 8, "sequenceId": 1}),
        json!({"type": 3, "invocationId": "s1", "result": 1}),
        json!({"type": 6}),
        json!({"type": 1, "invocationId": "ok", "target": "Nope", "arguments": [], "headers": {"a": "b"}}),
    ]
    .iter()
    .map(|v| format!("{v}{RS}"))
    .collect::<String>();
    hub.send_text(&frame).await;
    let c = hub.msg().await;
    assert_eq!(
        c["invocationId"], "ok",
        "first answer must be for 'ok': {c}"
    );
    assert_eq!(c["error"], "Unknown hub method 'Nope'");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_stream_invocation_of_a_plain_method_is_an_error() {
    let (server, cast) = setup();
    let order = blocking(|| place(&server, &cast, "CashOnDelivery"));
    let mut hub = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    hub.send(&json!({"type":4,"invocationId":"s","target":"SubscribeToOrder","arguments":[order]}))
        .await;
    let c = hub.completion("s").await;
    assert_eq!(
        c["error"],
        "The client attempted to invoke the non-streaming 'SubscribeToOrder' method with a streaming invocation.",
        "{c}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_malformed_record_closes_the_connection_with_an_error() {
    let (server, cast) = setup();
    for bad in [
        "{\"target\":\"Nope\",\"arguments\":[]}",
        "{not json",
        "[1,2]",
    ] {
        let mut hub = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
        hub.send_text(&format!("{bad}{RS}")).await;
        let (msgs, end) = hub.until_end(WAIT).await;
        assert!(
            matches!(end, Got::Closed(_) | Got::Ended(_)),
            "{bad:?}: connection kept open: {end:?}"
        );
        let close = msgs
            .iter()
            .find(|m| m["type"] == 7)
            .unwrap_or_else(|| panic!("{bad:?}: no Close message before closing: {msgs:?}"));
        assert!(close["error"].is_string(), "{bad:?}: {close}");
        assert!(close.get("allowReconnect").is_none(), "{bad:?}: {close}");
    }
    // The server survives.
    let mut hub = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    let c = hub.invoke("Nope", json!([])).await;
    assert!(c["error"].is_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn json_client_close_ends_the_connection() {
    let (server, cast) = setup();
    let mut hub = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    hub.send(&json!({"type": 7})).await;
    let (msgs, end) = hub.until_end(WAIT).await;
    assert!(matches!(end, Got::Closed(_) | Got::Ended(_)), "{end:?}");
    assert!(
        msgs.is_empty(),
        "nothing is sent after a client Close: {msgs:?}"
    );
}

// ---- MessagePack framing ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn messagepack_framing_and_message_layouts() {
    let (server, cast) = setup();
    let order = blocking(|| place(&server, &cast, "CashOnDelivery"));
    let mut hub = MpHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    // One frame: a Ping, a .NET-style 6-item Invocation, a JS-style 5-item one.
    let mut six = Vec::new();
    rmp::encode::write_array_len(&mut six, 6).expect("w");
    rmp::encode::write_uint(&mut six, 1).expect("w");
    rmp::encode::write_map_len(&mut six, 0).expect("w");
    rmp::encode::write_str(&mut six, "a").expect("w");
    rmp::encode::write_str(&mut six, "SubscribeToOrder").expect("w");
    rmp::encode::write_array_len(&mut six, 1).expect("w");
    rmp::encode::write_str(&mut six, &order.to_string()).expect("w");
    rmp::encode::write_array_len(&mut six, 0).expect("w");
    let mut frame = vec![0x02, 0x91, 0x06];
    frame.extend(mp_frame(&six));
    frame.extend(mp_invocation(
        Some("b"),
        "UnsubscribeFromOrder",
        &[&order.to_string()],
    ));
    hub.send(&frame).await;
    let a = hub.msg().await;
    let a = a.arr();
    assert_eq!(
        (&a[0], &a[2], &a[3]),
        (&Mp::Int(3), &Mp::Str("a".into()), &Mp::Int(3)),
        "{a:?}"
    );
    assert_eq!(a[4].get("orderId").str(), order.to_string());
    let b = hub.msg().await;
    let b = b.arr();
    assert_eq!((&b[0], &b[2]), (&Mp::Int(3), &Mp::Str("b".into())), "{b:?}");
    assert!(
        b[3] == Mp::Int(2) || (b[3] == Mp::Int(3) && b.get(4) == Some(&Mp::Nil)),
        "void completion: {b:?}"
    );
    // One message split across two frames (inside the length prefix's body).
    let msg = mp_invocation(Some("c"), "Nope", &[]);
    hub.send(&msg[..4]).await;
    hub.send(&msg[4..]).await;
    let c = hub.msg().await;
    assert_eq!(c.arr()[2], Mp::Str("c".into()));
    assert_eq!(c.arr()[4], Mp::Str("Unknown hub method 'Nope'".into()));
    // The JS client's 2-item Close ends the connection.
    hub.send(&[0x03, 0x92, 0x07, 0xc0]).await;
    match next_frame(&mut hub.ws, WAIT).await {
        Some(Frame::Close(_)) | Some(Frame::End(_)) => {}
        other => panic!("connection not ended after a client Close: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn messagepack_oversized_message_closes_with_1009() {
    let (server, cast) = setup();
    let mut hub = MpHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    let arg = "q".repeat(40 * 1024);
    let msg = mp_invocation(Some("1"), "SubscribeToOrder", &[&arg]);
    // Sent in 10 KiB frames, so only the message (not a frame) is over the limit.
    for chunk in msg.chunks(10 * 1024) {
        if hub
            .ws
            .send(tokio_tungstenite::tungstenite::Message::binary(
                chunk.to_vec(),
            ))
            .await
            .is_err()
        {
            break;
        }
    }
    loop {
        match next_frame(&mut hub.ws, WAIT).await {
            Some(Frame::Binary(b)) => {
                let msgs = mp_messages(&b);
                assert!(
                    msgs.iter().all(|m| m.arr()[0] == Mp::Int(7)),
                    "only a Close may come: {msgs:?}"
                );
            }
            Some(Frame::Close(c)) => {
                assert_eq!(close_code(&c), Some(1009), "{c:?}");
                break;
            }
            other => panic!("expected a close with 1009, got {other:?}"),
        }
    }
}

// ---- size limit ----------------------------------------------------------------------------

async fn expect_close_1009(hub: &mut JsonHub, what: &str) {
    let (msgs, end) = hub.until_end(WAIT).await;
    for m in &msgs {
        assert_eq!(
            m["type"], 7,
            "{what}: only a Close message may precede the close: {m}"
        );
    }
    match end {
        Got::Closed(c) => assert_eq!(close_code(&c), Some(1009), "{what}: close frame {c:?}"),
        other => panic!(
            "{what}: expected a WebSocket close with code 1009, got {other:?} after {msgs:?}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_message_in_one_frame_closes_with_1009() {
    let (server, cast) = setup();
    let mut hub = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    let pad = "x".repeat(40 * 1024);
    hub.send_text(&format!(
        "{{\"type\":1,\"invocationId\":\"1\",\"target\":\"SubscribeToOrder\",\"arguments\":[\"{pad}\"]}}{RS}"
    ))
    .await;
    expect_close_1009(&mut hub, "40 KiB frame").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_record_across_small_frames_closes_with_1009() {
    let (server, cast) = setup();
    let mut hub = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    hub.send_text(
        "{\"type\":1,\"invocationId\":\"1\",\"target\":\"SubscribeToOrder\",\"arguments\":[\"",
    )
    .await;
    let chunk = "y".repeat(12 * 1024);
    for _ in 0..3 {
        hub.send_text(&chunk).await;
    }
    hub.send_text(&format!("\"]}}{RS}")).await;
    expect_close_1009(&mut hub, "36 KiB record in 12 KiB frames").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn message_just_under_the_limit_is_processed() {
    let (server, cast) = setup();
    let mut hub = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    let pad = "z".repeat(30 * 1024);
    let c = hub.invoke("SubscribeToOrder", json!([pad])).await;
    assert_eq!(
        c["error"], "Failed to invoke 'SubscribeToOrder' due to an error on the server.",
        "{c}"
    );
}

// ---- keep-alive, client timeout, handshake timeout ----------------------------------------
// The production values (15 s, 30 s, 15 s) are shortened with the `serve` timing flags.

fn timed_server(flag: &str, ms: u64) -> (Server, Cast) {
    blocking(|| (Server::start_with(&[flag, &ms.to_string()]), Cast::new()))
}

#[tokio::test(flavor = "multi_thread")]
async fn server_pings_after_keepalive_interval_of_silence() {
    let keepalive = Duration::from_millis(600);
    let (server, cast) = timed_server("--hub-keepalive-ms", 600);
    let mut hub = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    let start = Instant::now();
    for n in 0..2 {
        match hub.next_raw(keepalive + Duration::from_secs(2)).await {
            Got::Msg(v) => assert_eq!(v, json!({"type": 6}), "message {n} after silence"),
            other => panic!(
                "no Ping within {:?} of silence: {other:?}",
                keepalive + Duration::from_secs(2)
            ),
        }
    }
    let waited = start.elapsed();
    assert!(
        waited + Duration::from_millis(300) >= keepalive * 2,
        "two Pings after {waited:?}, faster than the keep-alive interval {keepalive:?}"
    );
    // Anything sent resets the interval: a completion, then the next Ping a full interval later.
    let c = hub.invoke("Nope", json!([])).await;
    assert!(c["error"].is_string());
    let sent = Instant::now();
    match hub.next_raw(keepalive + Duration::from_secs(2)).await {
        Got::Msg(v) => assert_eq!(v, json!({"type": 6})),
        other => panic!("no Ping after the completion: {other:?}"),
    }
    assert!(
        sent.elapsed() + Duration::from_millis(300) >= keepalive,
        "Ping {:?} after a completion, before the keep-alive interval",
        sent.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_client_is_dropped_after_the_client_timeout() {
    let limit = Duration::from_millis(1500);
    let (server, cast) = timed_server("--hub-client-timeout-ms", 1500);
    let mut hub = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    // Like the JS and .NET clients: one Ping right after the handshake, then silence.
    hub.send(&json!({"type": 6})).await;
    let start = Instant::now();
    let (msgs, end) = hub.until_end(limit + Duration::from_secs(5)).await;
    let waited = start.elapsed();
    assert!(
        matches!(end, Got::Closed(_) | Got::Ended(_)),
        "silent client still connected after {waited:?}: {end:?}"
    );
    assert!(
        waited + Duration::from_millis(300) >= limit,
        "dropped after {waited:?}, before the client timeout {limit:?}"
    );
    if let Some(close) = msgs.iter().find(|m| m["type"] == 7) {
        assert!(
            close.get("allowReconnect").is_none() || close["allowReconnect"] == false,
            "{close}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn client_pinging_regularly_is_kept() {
    let (server, cast) = timed_server("--hub-client-timeout-ms", 1500);
    let mut hub = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    for _ in 0..8 {
        hub.send(&json!({"type": 6})).await;
        match hub.next_msg(Duration::from_millis(300)).await {
            Got::Timeout => {}
            other => panic!("a pinging client was disturbed: {other:?}"),
        }
    }
    let c = hub.invoke("Nope", json!([])).await;
    assert!(c["error"].is_string(), "{c}");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_that_never_pings_is_not_timed_out() {
    // Protocol notes 6.1, 6.2 and 9.6: the client timeout is armed only after the first client
    // Ping (old clients never ping; philippseith/signalr#253 shows the pitfall).
    let limit = Duration::from_millis(1000);
    let (server, cast) = timed_server("--hub-client-timeout-ms", 1000);
    let mut hub = JsonHub::connect(server.port, CUSTOMER_HUB, &cast.customer_token).await;
    let (msgs, end) = hub.until_end(limit * 3).await;
    assert!(
        matches!(end, Got::Timeout),
        "a client that never pinged was dropped by the client timeout: {end:?} after {msgs:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_handshake_times_out_with_handshake_was_canceled() {
    let (server, cast) = timed_server("--hub-handshake-timeout-ms", 700);
    // Nothing at all, and a handshake without its 0x1E (aspnet/SignalR#2331).
    for first in [None, Some("{\"protocol\":\"json\",\"version\":1}")] {
        let mut ws = bare(&server, &cast.customer_token).await;
        if let Some(t) = first {
            send_text(&mut ws, t).await;
        }
        let start = Instant::now();
        match next_frame(&mut ws, WAIT).await {
            Some(Frame::Text(t)) => {
                assert_eq!(
                    t,
                    format!("{{\"error\":\"Handshake was canceled.\"}}{RS}"),
                    "{first:?}"
                )
            }
            other => panic!("expected the handshake timeout error ({first:?}), got {other:?}"),
        }
        assert!(
            start.elapsed() >= Duration::from_millis(500),
            "{first:?}: too early"
        );
        match next_frame(&mut ws, WAIT).await {
            Some(Frame::Close(_)) | Some(Frame::End(_)) => {}
            other => panic!("the connection must end after the handshake timeout, got {other:?}"),
        }
    }
}
