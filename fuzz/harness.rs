//! The bodies of the fuzz targets, shared by `fuzz_targets/*.rs` (libFuzzer through cargo-fuzz)
//! and `tests/reliability_fuzz.rs` (replays the committed corpora and crash inputs, and runs
//! random inputs on stable without libFuzzer). Each function panics only on a real defect:
//! a parser that panics, or an invariant that the server relies on that does not hold.

#![allow(dead_code)]

use base64::Engine;
use ordertrack::testing::protocol::{
    encode_client_message, parse_handshake_request, ClientMessage, Decoder, HandshakeParser,
    HandshakeProgress, Protocol,
};
use ordertrack::testing::{negotiate_body, query_value, ConnectionTokens};
use ordertrack::testing::{AuthSettings, Authenticator};
use ordertrack::testing::{NewOrder, Order, Principal, Timestamp};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The secret the JWT target verifies with (and forges valid signatures with).
pub const SECRET: &[u8] = b"fuzzing-secret-0123456789abcdef0123";

/// Largest hub message the decoders accept here (small, so the limit paths are reached).
const MAX_MESSAGE: usize = 4096;

/// Splits off the first byte as a chunk size (0 = everything at once).
fn chunking(data: &[u8]) -> (usize, &[u8]) {
    match data.split_first() {
        Some((&n, rest)) if n > 0 => ((n as usize % 64) + 1, rest),
        Some((_, rest)) => (usize::MAX, rest),
        None => (usize::MAX, data),
    }
}

/// JSON hub protocol: the inbound stream decoder over any bytes in any chunking.
pub fn hub_json(data: &[u8]) {
    hub_stream(Protocol::Json, data)
}

/// MessagePack hub protocol: the inbound stream decoder over any bytes in any chunking.
pub fn hub_msgpack(data: &[u8]) {
    hub_stream(Protocol::MessagePack, data)
}

fn hub_stream(protocol: Protocol, data: &[u8]) {
    let (size, rest) = chunking(data);
    let mut d = Decoder::with_max_message_size(protocol, MAX_MESSAGE);
    for chunk in rest.chunks(size.min(rest.len().max(1))) {
        d.push(chunk);
        loop {
            match d.next_message() {
                Ok(Some(m)) => round_trip(protocol, &m),
                Ok(None) => break,
                Err(e) => {
                    // A failed stream stays failed with the same error.
                    d.push(b"more");
                    assert_eq!(d.next_message(), Err(e));
                    return;
                }
            }
        }
        assert!(
            d.buffered() <= MAX_MESSAGE + 16 + chunk.len(),
            "the decoder holds {} bytes with a {MAX_MESSAGE}-byte limit",
            d.buffered()
        );
    }
}

/// A decoded message, encoded the way a client would send it, decodes to itself.
fn round_trip(protocol: Protocol, m: &ClientMessage) {
    let bytes = encode_client_message(protocol, m);
    let mut d = Decoder::with_max_message_size(protocol, usize::MAX / 2);
    d.push(&bytes);
    match d.next_message() {
        Ok(Some(again)) => assert_eq!(&again, m, "round trip through {bytes:?}"),
        other => panic!("{m:?} encoded as {bytes:?} decodes to {other:?}"),
    }
}

/// The handshake request, fed in chunks, and parsed whole.
pub fn handshake(data: &[u8]) {
    let (size, rest) = chunking(data);
    let mut p = HandshakeParser::with_max_size(1024);
    for chunk in rest.chunks(size.min(rest.len().max(1))) {
        match p.feed(chunk) {
            Ok(HandshakeProgress::NeedMore) => {}
            Ok(HandshakeProgress::Done { request, rest }) => {
                assert!(rest.len() <= chunk.len());
                let name = request.protocol.name();
                assert!(name == "json" || name == "messagepack");
                break;
            }
            Err(e) => {
                let _ = e.response();
                break;
            }
        }
    }
    let _ = parse_handshake_request(rest);
}

/// Negotiate's query handling: any query string gives a JSON answer.
pub fn negotiate(data: &[u8]) {
    let q = String::from_utf8_lossy(data);
    let tokens = ConnectionTokens::default();
    let user = uuid::Uuid::from_u128(7);
    let body = negotiate_body(Some(&q), &tokens, user);
    let v: serde_json::Value = serde_json::from_str(&body).expect("negotiate answers JSON");
    assert!(
        v.get("error").is_some() || v["availableTransports"].is_array(),
        "{body}"
    );
    for key in ["id", "access_token", "negotiateVersion", ""] {
        let _ = query_value(Some(&q), key);
    }
    // Whatever the query, a token the server never minted is refused, never accepted.
    assert!(
        tokens.take(&q, user).is_err(),
        "a query was taken as a token"
    );
}

/// The order body: parse; a valid order computes its totals exactly and survives the store's
/// MessagePack encoding unchanged.
pub fn order_body(data: &[u8]) {
    let Ok(new) = NewOrder::parse(data) else {
        return;
    };
    let mut n = 0u128;
    let mut ids = || {
        n += 1;
        Uuid::from_u128(n)
    };
    let order = new.into_order(
        Uuid::from_u128(u128::MAX),
        "ORD-2026-000001".into(),
        Timestamp(1_790_000_000_000),
        &mut ids,
    );
    assert_eq!(
        order.total,
        order.subtotal - order.discount + order.delivery_fee + order.tip + order.tax,
        "total of {order:?}"
    );
    assert!(order.total >= rust_decimal::Decimal::ZERO, "negative total");
    let bytes = rmp_serde::to_vec_named(&order).expect("encode");
    let back: Order = rmp_serde::from_slice(&bytes).expect("decode");
    assert_eq!(back, order);
    let viewer = Principal {
        sub: order.customer_id,
        administrator: false,
        order_service: false,
        staff_of: vec![],
        owner_of: vec![],
        expires_at: i64::MAX,
    };
    serde_json::to_vec(&ordertrack::testing::details(&order, &viewer)).expect("details JSON");
}

fn authenticator() -> Authenticator {
    Authenticator::new(&AuthSettings {
        algorithm: jsonwebtoken::Algorithm::HS256,
        secret: Some(SECRET.to_vec()),
        public_key_pem: None,
        issuer: None,
        audience: None,
        leeway_secs: 30,
        jwks: None,
    })
    .expect("authenticator")
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    k[..key.len().min(64)].copy_from_slice(&key[..key.len().min(64)]);
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The JWT path: first byte even → the rest is the raw `Authorization` value; odd → the rest is
/// `header-json 0x00 claims-json` and is signed with the right secret, so claim handling is
/// reached. A token is accepted only if its header names HS256 and its claims hold a UUID `sub`
/// and an `exp`.
pub fn jwt(data: &[u8]) {
    let auth = authenticator();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let _ = auth.verify_header(Some(rest));
        let _ = auth.verify(&String::from_utf8_lossy(rest));
        return;
    }
    let mut parts = rest.splitn(2, |b| *b == 0);
    let header = parts.next().unwrap_or_default();
    let claims = parts.next().unwrap_or_default();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let signing_input = format!("{}.{}", b64(header), b64(claims));
    let token = format!(
        "{signing_input}.{}",
        b64(&hmac_sha256(SECRET, signing_input.as_bytes()))
    );
    if let Ok(p) = auth.verify(&token) {
        // serde skips unknown claims without checking their UTF-8 (a signed token with junk
        // in an ignored claim is accepted, fuzz/regressions/jwt/invalid-utf8-in-an-ignored-claim),
        // so read both parts leniently here.
        let lenient = |b: &[u8]| -> serde_json::Value {
            serde_json::from_str(&String::from_utf8_lossy(b)).expect("accepted part is JSON")
        };
        let h = lenient(header);
        assert_eq!(h["alg"], "HS256", "accepted a token whose header is {h}");
        let c = lenient(claims);
        let sub = c["sub"].as_str().and_then(|s| Uuid::parse_str(s).ok());
        assert_eq!(sub, Some(p.sub), "accepted sub {:?} from {c}", p.sub);
        assert!(c["exp"].is_number(), "accepted without a numeric exp: {c}");
        let _ = auth.verify_header(Some(format!("Bearer {token}").as_bytes()));
    }
}
