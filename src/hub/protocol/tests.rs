//! Unit tests of the codecs: handshake, framing, both decoders, encoders and the client side.

use super::framing::read_varint;
use super::json::json_str;
use super::msgpack::{mp_timestamp, MpReader};
use super::*;
use crate::domain::{OrderStatus, OrderStatusBroadcast, Timestamp};
use proptest::prelude::*;
use uuid::Uuid;

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect()
}

fn drain(d: &mut Decoder) -> Vec<ClientMessage> {
    let mut out = Vec::new();
    while let Some(m) = d.next_message().unwrap() {
        out.push(m);
    }
    out
}

fn invocation(id: Option<&str>, target: &str, args: Vec<Arg>) -> ClientMessage {
    ClientMessage::Invocation {
        invocation_id: id.map(str::to_owned),
        target: target.to_owned(),
        arguments: args,
        stream_ids: vec![],
    }
}

fn sample_dto() -> OrderStatusBroadcast {
    OrderStatusBroadcast {
        order_id: Uuid::parse_str("0192f5a0-1111-7abc-8def-0123456789ab").unwrap(),
        order_number: "ORD-2025-000042".to_owned(),
        status: OrderStatus::Preparing,
        restaurant_id: Uuid::parse_str("6f9619ff-8b86-d011-b42d-00c04fc964ff").unwrap(),
        last_update: Timestamp(1_758_997_543_120),
        estimated_delivery: Some(Timestamp(1_759_000_000_000)),
        actual_delivery: None,
        delivered_at: None,
        occurred_on: Timestamp(1_758_997_543_120),
        event_id: Some(Uuid::parse_str("00000000-0000-4000-8000-000000000001").unwrap()),
        version: 3,
        sequence: Some(17),
    }
}

// ---- handshake ----

#[test]
fn handshake_then_message_in_one_frame() {
    let frame = b"{\"protocol\":\"json\",\"version\":1}\x1e{\"type\":6}\x1e";
    let mut hs = HandshakeParser::new();
    let HandshakeProgress::Done { request, rest } = hs.feed(frame).unwrap() else {
        panic!("handshake not complete");
    };
    assert_eq!(request.protocol, Protocol::Json);
    assert_eq!(request.version, 1);
    let mut d = Decoder::new(request.protocol);
    d.push(rest);
    assert_eq!(drain(&mut d), vec![ClientMessage::Ping]);
}

#[test]
fn handshake_in_binary_frame_with_msgpack_message_and_split() {
    // .NET sends the handshake in a BINARY frame; the bytes are the same, and a frame may
    // carry the first message too. Here the handshake is also split across two frames.
    let mut frame2 = b"ack\",\"version\":2,\"extra\":[1,{}]}\x1e".to_vec();
    frame2.extend(hex("02 91 06 03 92 07"));
    let mut hs = HandshakeParser::new();
    assert_eq!(
        hs.feed(b"{\"protocol\":\"messagep").unwrap(),
        HandshakeProgress::NeedMore
    );
    let HandshakeProgress::Done { request, rest } = hs.feed(&frame2).unwrap() else {
        panic!("handshake not complete");
    };
    assert_eq!(
        request,
        HandshakeRequest {
            protocol: Protocol::MessagePack,
            version: 2
        }
    );
    let mut d = Decoder::new(request.protocol);
    d.push(rest);
    assert_eq!(drain(&mut d), vec![ClientMessage::Ping]);
    d.push(&[0xc0]);
    assert_eq!(
        drain(&mut d),
        vec![ClientMessage::Close {
            error: None,
            allow_reconnect: false
        }]
    );
}

#[test]
fn stateless_handshake_parse() {
    assert_eq!(parse_handshake(b"{\"protocol\":", 100), Ok(None));
    let (req, rest) = parse_handshake(b"{\"protocol\":\"json\",\"version\":1}\x1e{", 100)
        .unwrap()
        .unwrap();
    assert_eq!(req.protocol, Protocol::Json);
    assert_eq!(rest, b"{");
    assert_eq!(
        parse_handshake(&[b' '; 101], 100),
        Err(HandshakeError::TooLarge)
    );
}

#[test]
fn decoder_gives_back_memory_of_a_large_batch() {
    let mut d = Decoder::new(Protocol::MessagePack);
    let ping = encode_client_message(Protocol::MessagePack, &ClientMessage::Ping);
    let batch: Vec<u8> = ping.iter().copied().cycle().take(3 * 100_000).collect();
    d.push(&batch);
    assert_eq!(drain(&mut d).len(), 100_000);
    assert_eq!(d.buffered(), 0);
    assert_eq!(d.buf.capacity(), 0);
    // A small tail is kept as it is.
    d.push(&ping[..2]);
    assert_eq!(d.next_message(), Ok(None));
    assert_eq!(d.buffered(), 2);
    d.push(&ping[2..]);
    assert_eq!(drain(&mut d), vec![ClientMessage::Ping]);
}

#[test]
fn bad_handshakes() {
    let parse = |s: &str| parse_handshake_request(s.as_bytes());
    assert_eq!(
        parse(r#"{"protocol":"xml","version":1}"#)
            .unwrap_err()
            .to_string(),
        "The protocol 'xml' is not supported."
    );
    assert_eq!(
        parse(r#"{"protocol":"json","version":3}"#)
            .unwrap_err()
            .to_string(),
        "The server does not support version 3 of the 'json' protocol."
    );
    assert_eq!(
        parse(r#"{"version":7,"protocol":"MessagePack"}"#)
            .unwrap_err()
            .to_string(),
        "The server does not support version 7 of the 'MessagePack' protocol."
    );
    for bad in [
        r#"{"protocol":"json"}"#,
        r#"{"version":1}"#,
        r#"{"protocol":1,"version":1}"#,
        r#"{"protocol":"json","version":"1"}"#,
        r#"{"protocol":"json","version":1.5}"#,
        r#"["json",1]"#,
        r#"{"protocol":"json","version":1"#,
        "",
        "\u{ff}",
    ] {
        assert_eq!(
            parse(bad).unwrap_err().to_string(),
            "An unexpected error occurred during connection handshake.",
            "{bad}"
        );
    }
    for v in 0..=2 {
        for p in ["json", "messagepack"] {
            let r = parse(&format!(r#"{{"protocol":"{p}","version":{v}}}"#)).unwrap();
            assert_eq!(r.version, v, "{p} v{v}");
        }
    }
    assert_eq!(
        parse(r#"{"protocol":"json","version":-1}"#)
            .unwrap_err()
            .to_string(),
        "The server does not support version -1 of the 'json' protocol."
    );
    assert!(parse(r#" {"version":1, "protocol":"json", "x":null} "#).is_ok());
}

#[test]
fn handshake_size_limit() {
    let mut hs = HandshakeParser::with_max_size(64);
    assert_eq!(hs.feed(&[b' '; 40]).unwrap(), HandshakeProgress::NeedMore);
    assert_eq!(hs.feed(&[b' '; 40]), Err(HandshakeError::TooLarge));
    // The limit is on the handshake itself, not on what follows it in the frame.
    let mut frame = b"{\"protocol\":\"json\",\"version\":1}\x1e".to_vec();
    frame.extend(std::iter::repeat_n(b'x', 1000));
    let mut hs = HandshakeParser::with_max_size(64);
    assert!(matches!(
        hs.feed(&frame),
        Ok(HandshakeProgress::Done { rest, .. }) if rest.len() == 1000
    ));
}

#[test]
fn handshake_responses() {
    assert_eq!(&encode_handshake_ok()[..], b"{}\x1e");
    let e = HandshakeError::UnsupportedProtocol("a\"b".to_owned());
    assert_eq!(
        &e.response()[..],
        b"{\"error\":\"The protocol 'a\\\"b' is not supported.\"}\x1e"
    );
}

// ---- MessagePack inbound ----

#[test]
fn msgpack_js_encodings() {
    let mut d = Decoder::new(Protocol::MessagePack);
    d.push(&hex("0c 95 01 80 a1 30 a4 53 65 6e 64 91 2a"));
    d.push(&hex("0b 95 01 80 c0 a4 53 65 6e 64 91 2a"));
    d.push(&hex("06 94 03 80 a1 31 02 07 95 03 80 a1 31 03 c0"));
    d.push(&hex("03 92 07 c0 02 91 06 03 92 08 24"));
    assert_eq!(
        drain(&mut d),
        vec![
            invocation(Some("0"), "Send", vec![Arg::UInt(42)]),
            invocation(None, "Send", vec![Arg::UInt(42)]),
            ClientMessage::Completion {
                invocation_id: "1".into()
            },
            ClientMessage::Completion {
                invocation_id: "1".into()
            },
            ClientMessage::Close {
                error: None,
                allow_reconnect: false
            },
            ClientMessage::Ping,
            ClientMessage::Ack { sequence_id: 36 },
        ]
    );
    assert_eq!(d.buffered(), 0);
}

#[test]
fn msgpack_byte_by_byte_and_string_argument() {
    // invoke("SubscribeToOrder", "abc") as the JS client writes it, plus ASP.NET's 6-item
    // form with an empty id (= none) and stream ids.
    let one = encode_client_message(
        Protocol::MessagePack,
        &invocation(Some("7"), "SubscribeToOrder", vec![Arg::Str("abc".into())]),
    );
    assert_eq!(one[1], 0x95);
    let mut six = hex("96 01 81 a1 6b a1 76 a0 a1 54 92 a1 78 81 01 02 91 a1 31");
    six.insert(0, six.len() as u8);
    let mut d = Decoder::new(Protocol::MessagePack);
    for b in one.iter().chain(six.iter()) {
        d.push(&[*b]);
    }
    let msgs = drain(&mut d);
    assert_eq!(
        msgs,
        vec![
            invocation(Some("7"), "SubscribeToOrder", vec![Arg::Str("abc".into())]),
            ClientMessage::Invocation {
                invocation_id: None,
                target: "T".into(),
                arguments: vec![Arg::Str("x".into()), Arg::Other],
                stream_ids: vec!["1".into()],
            },
        ]
    );
    let ClientMessage::Invocation { arguments, .. } = &msgs[0] else {
        unreachable!()
    };
    assert_eq!(single_string_argument(arguments), Some("abc"));
}

#[test]
fn msgpack_malformed_and_ignored() {
    let decode = |h: &str| decode_msgpack_message(&hex(h));
    // Unknown type: ignored, not an error.
    assert_eq!(
        decode("93 63 80 c0").unwrap(),
        ClientMessage::Unknown { message_type: 99 }
    );
    assert_eq!(
        decode("93 07 a1 65 c3").unwrap(),
        ClientMessage::Close {
            error: Some("e".into()),
            allow_reconnect: true
        }
    );
    for bad in [
        "",
        "90",
        "c0",
        "91 a1 31",
        "94 01 80 c0 a1 54",                // Invocation with 4 items
        "95 01 c0 c0 a1 54 90",             // headers not a map
        "95 01 80 c0 01 90",                // target not a string
        "95 04 80 c0 a1 54 90",             // StreamInvocation without id
        "95 03 80 a1 31 04 c0",             // bad result kind
        "94 03 80 a1 31 01",                // error kind without the error
        "95 01 80 c0 a1 54 dd ff ff ff ff", // absurd argument count
        "95 01 80 c0 a2 ff fe 90",          // target not UTF-8
        "92 08 ff",                         // negative sequence id
    ] {
        assert!(decode(bad).is_err(), "{bad}");
    }
    // A non-UTF-8 string argument is just "not a string".
    assert_eq!(
        decode("95 01 80 c0 a1 54 91 a1 ff").unwrap(),
        invocation(None, "T", vec![Arg::Other])
    );
}

#[test]
fn msgpack_deep_nesting_does_not_overflow() {
    let mut body = hex("95 01 80 c0 a1 54 91");
    body.extend(std::iter::repeat_n(0x91, 30_000));
    body.push(0xc0);
    assert_eq!(
        decode_msgpack_message(&body).unwrap(),
        invocation(None, "T", vec![Arg::Other])
    );
    body.pop();
    assert!(decode_msgpack_message(&body).is_err());
}

#[test]
fn msgpack_size_limits() {
    // Exactly at the limit: fine.
    let mut d = Decoder::with_max_message_size(Protocol::MessagePack, 130);
    let mut msg = vec![0x82, 0x01]; // varint 130
    msg.extend(hex("95 01 80 c0 a1 54 91 d9 79"));
    msg.extend(std::iter::repeat_n(b'a', 121));
    assert_eq!(msg.len(), 132);
    d.push(&msg);
    assert!(matches!(d.next_message(), Ok(Some(_))));
    // A prefix announcing more than the limit fails before the body arrives.
    d.push(&[0x83, 0x01]);
    let e = d.next_message().unwrap_err();
    assert!(e.is_too_large());
    assert_eq!(e, DecodeError::TooLarge { limit: 130 });
    // Sticky.
    d.push(&hex("02 91 06"));
    assert!(d.next_message().unwrap_err().is_too_large());
    // A 5-byte prefix above 2^31-1, and a zero-length message, are malformed.
    let mut d = Decoder::new(Protocol::MessagePack);
    d.push(&hex("ff ff ff ff 08"));
    assert!(matches!(d.next_message(), Err(DecodeError::Malformed(_))));
    let mut d = Decoder::new(Protocol::MessagePack);
    d.push(&[0x00]);
    assert!(matches!(d.next_message(), Err(DecodeError::Malformed(_))));
    // The largest legal prefix is too large, not malformed.
    let mut d = Decoder::new(Protocol::MessagePack);
    d.push(&hex("ff ff ff ff 07"));
    assert!(d.next_message().unwrap_err().is_too_large());
}

// ---- JSON inbound ----

#[test]
fn json_batched_records_in_one_frame() {
    let frame = concat!(
        r#"{"type":1,"invocationId":"0","target":"SubscribeToOrder","arguments":["a"]}"#,
        "\x1e",
        r#"{"type":6}"#,
        "\x1e",
        r#"{"type":1,"target":"Send","arguments":[1,null,{"a":[]},true,"x"]}"#,
        "\x1e",
        r#"{"type":7,"error":"bye","allowReconnect":true}"#,
        "\x1e",
    );
    let mut d = Decoder::new(Protocol::Json);
    d.push(frame.as_bytes());
    assert_eq!(
        drain(&mut d),
        vec![
            invocation(Some("0"), "SubscribeToOrder", vec![Arg::Str("a".into())]),
            ClientMessage::Ping,
            invocation(
                None,
                "Send",
                vec![
                    Arg::UInt(1),
                    Arg::Other,
                    Arg::Other,
                    Arg::Other,
                    Arg::Str("x".into())
                ]
            ),
            ClientMessage::Close {
                error: Some("bye".into()),
                allow_reconnect: true
            },
        ]
    );
}

#[test]
fn json_record_split_across_three_frames() {
    let mut d = Decoder::new(Protocol::Json);
    d.push(br#"{"target":"Subscr"#);
    assert_eq!(d.next_message(), Ok(None));
    d.push(br#"ibeToOrder","arguments":["\u00e9\u001e"],"#);
    assert_eq!(d.next_message(), Ok(None));
    d.push(b"\"invocationId\":\"12\",\"type\":1}\x1e{\"ty");
    assert_eq!(
        drain(&mut d),
        vec![invocation(
            Some("12"),
            "SubscribeToOrder",
            vec![Arg::Str("\u{e9}\u{1e}".into())]
        )]
    );
    d.push(b"pe\":6}\x1e");
    assert_eq!(drain(&mut d), vec![ClientMessage::Ping]);
}

#[test]
fn json_type_last_and_client_shapes() {
    let decode = |s: &str| decode_json_record(s.as_bytes());
    assert_eq!(
        decode(r#"{"target":"Send","arguments":[1],"invocationId":"0","type":1}"#).unwrap(),
        invocation(Some("0"), "Send", vec![Arg::UInt(1)])
    );
    assert_eq!(
        decode(r#"{"invocationId":"3","type":5}"#).unwrap(),
        ClientMessage::CancelInvocation {
            invocation_id: "3".into()
        }
    );
    assert_eq!(
        decode(r#"{"invocationId":"s1","result":{"x":1},"type":3}"#).unwrap(),
        ClientMessage::Completion {
            invocation_id: "s1".into()
        }
    );
    assert_eq!(
        decode(r#"{"invocationId":"1","item":null,"type":2}"#).unwrap(),
        ClientMessage::StreamItem {
            invocation_id: "1".into()
        }
    );
    assert_eq!(
        decode(r#"{"type":4,"invocationId":"2","target":"S","arguments":[]}"#).unwrap(),
        ClientMessage::StreamInvocation {
            invocation_id: "2".into(),
            target: "S".into()
        }
    );
    assert_eq!(
        decode(r#"{"type":1,"invocationId":"","target":"S","arguments":[],"headers":{"a":"b"}}"#)
            .unwrap(),
        invocation(None, "S", vec![])
    );
    assert_eq!(
        decode(r#"{"type":42,"whatever":[1,2]}"#).unwrap(),
        ClientMessage::Unknown { message_type: 42 }
    );
    assert_eq!(
        decode(r#"{"type":9,"sequenceId":5}"#).unwrap(),
        ClientMessage::Sequence { sequence_id: 5 }
    );
    for bad in [
        r#"{"target":"Send","arguments":[]}"#, // no type
        r#"{"type":"1","target":"Send","arguments":[]}"#,
        r#"{"type":1,"arguments":[]}"#,
        r#"{"type":1,"target":"Send"}"#,
        r#"{"type":1,"invocationId":0,"target":"Send","arguments":[]}"#,
        r#"{"type":3,"invocationId":"1","result":1,"error":"e"}"#,
        r#"{"type":2,"invocationId":"1"}"#,
        r#"{"type":5}"#,
        r#"{"type":8}"#,
        r#"[1,2]"#,
        r#""#,
        r#"{"type":6} x"#,
    ] {
        assert!(decode(bad).is_err(), "{bad}");
    }
}

#[test]
fn json_deep_nesting_is_an_error_not_a_crash() {
    let mut s = String::from(r#"{"type":1,"target":"T","arguments":["#);
    s.push_str(&"[".repeat(100_000));
    let mut d = Decoder::with_max_message_size(Protocol::Json, 1 << 20);
    d.push(s.as_bytes());
    d.push(b"\x1e");
    assert!(matches!(d.next_message(), Err(DecodeError::Malformed(_))));
}

#[test]
fn json_size_limits() {
    let mut d = Decoder::with_max_message_size(Protocol::Json, 20);
    d.push(b"{\"type\":6,\"x\":\"12\"}\x1e"); // 19 bytes: fine
    assert_eq!(d.next_message(), Ok(Some(ClientMessage::Ping)));
    d.push(b"{\"type\":6,");
    assert_eq!(d.next_message(), Ok(None));
    d.push(b"\"xx\":\"1234\"}"); // unterminated tail of 22 bytes
    assert_eq!(d.next_message(), Err(DecodeError::TooLarge { limit: 20 }));

    let mut d = Decoder::with_max_message_size(Protocol::Json, 20);
    d.push(b"{\"type\":6,\"x\":\"1234567\"}\x1e{\"type\":6}\x1e");
    assert!(d.next_message().unwrap_err().is_too_large());
    assert!(d.next_message().unwrap_err().is_too_large());
}

// ---- outbound ----

#[test]
fn outbound_goldens_json() {
    let j = Protocol::Json;
    assert_eq!(&encode_ping(j)[..], b"{\"type\":6}\x1e");
    assert_eq!(&encode_close(j, None, false)[..], b"{\"type\":7}\x1e");
    assert_eq!(
        &encode_close(j, Some(CONNECTION_CLOSED_WITH_ERROR), true)[..],
        b"{\"type\":7,\"error\":\"Connection closed with an error.\",\"allowReconnect\":true}\x1e"
    );
    assert_eq!(
        &encode_completion(j, "0", Outcome::Void)[..],
        b"{\"type\":3,\"invocationId\":\"0\",\"result\":null}\x1e"
    );
    assert_eq!(
        &encode_completion(j, "0", Outcome::NoResult)[..],
        b"{\"type\":3,\"invocationId\":\"0\"}\x1e"
    );
    assert_eq!(
        &encode_completion(j, "0", Outcome::Value(&42i64))[..],
        b"{\"type\":3,\"invocationId\":\"0\",\"result\":42}\x1e"
    );
    assert_eq!(
        &encode_completion(j, "1", Outcome::Error("Unknown hub method 'x\ny'"))[..],
        b"{\"type\":3,\"invocationId\":\"1\",\"error\":\"Unknown hub method 'x\\ny'\"}\x1e"
    );
}

#[test]
fn outbound_goldens_msgpack() {
    let m = Protocol::MessagePack;
    assert_eq!(&encode_ping(m)[..], hex("02 91 06"));
    assert_eq!(&encode_close(m, None, false)[..], hex("04 93 07 c0 c2"));
    assert_eq!(
        &encode_close(m, Some("e"), true)[..],
        hex("05 93 07 a1 65 c3")
    );
    assert_eq!(
        &encode_completion(m, "1", Outcome::NoResult)[..],
        hex("06 94 03 80 a1 31 02")
    );
    assert_eq!(
        &encode_completion(m, "1", Outcome::Void)[..],
        hex("07 95 03 80 a1 31 03 c0")
    );
    assert_eq!(
        &encode_completion(m, "1", Outcome::Value(&true))[..],
        hex("07 95 03 80 a1 31 03 c3")
    );
    assert_eq!(
        &encode_completion(m, "1", Outcome::Error("e"))[..],
        hex("08 95 03 80 a1 31 01 a1 65")
    );
    assert_eq!(
        &encode_invocation(m, "T", &[&"a"])[..],
        hex("0a 96 01 80 c0 a1 54 91 a1 61 90")
    );
}

#[test]
fn dto_golden_json() {
    let bytes = encode_event(Protocol::Json, "ReceiveOrderStatusChanged", &sample_dto());
    let expected = concat!(
        r#"{"type":1,"target":"ReceiveOrderStatusChanged","arguments":[{"#,
        r#""orderId":"0192f5a0-1111-7abc-8def-0123456789ab","#,
        r#""orderNumber":"ORD-2025-000042","#,
        r#""status":"Preparing","#,
        r#""restaurantId":"6f9619ff-8b86-d011-b42d-00c04fc964ff","#,
        r#""lastUpdateTimestamp":"2025-09-27T18:25:43.120Z","#,
        r#""estimatedDeliveryTime":"2025-09-27T19:06:40.000Z","#,
        r#""actualDeliveryTime":null,"#,
        r#""deliveredAt":null,"#,
        r#""occurredOnUtc":"2025-09-27T18:25:43.120Z","#,
        r#""eventId":"00000000-0000-4000-8000-000000000001","#,
        r#""version":3,"#,
        r#""sequence":17}]}"#,
        "\x1e"
    );
    assert_eq!(std::str::from_utf8(&bytes).unwrap(), expected);
    // And it is valid JSON a client can parse.
    let v: serde_json::Value = serde_json::from_slice(&bytes[..bytes.len() - 1]).unwrap();
    assert_eq!(v["arguments"][0]["version"], 3);
    // A snapshot (no event id) as a completion result.
    let mut dto = sample_dto();
    dto.event_id = None;
    let c = encode_completion(Protocol::Json, "0", Outcome::Value(&dto));
    let v: serde_json::Value = serde_json::from_slice(&c[..c.len() - 1]).unwrap();
    assert_eq!(v["result"]["eventId"], serde_json::Value::Null);
    assert_eq!(v["result"]["status"], "Preparing");
}

#[test]
fn dto_msgpack_layout() {
    let dto = sample_dto();
    let bytes = encode_event(Protocol::MessagePack, "ReceiveOrderPlaced", &dto);
    let (len, used) = read_varint(&bytes).unwrap().unwrap();
    assert_eq!(used, 2, "body is longer than 127 bytes");
    assert_eq!(len as usize, bytes.len() - used);
    let mut r = MpReader::new(&bytes[used..]);
    assert_eq!(r.array_len().unwrap(), 6);
    assert_eq!(r.int().unwrap(), 1);
    assert_eq!(r.map_len().unwrap(), 0);
    assert_eq!(r.str_or_nil().unwrap(), None);
    assert_eq!(r.str().unwrap(), "ReceiveOrderPlaced");
    assert_eq!(r.array_len().unwrap(), 1);
    assert_eq!(r.map_len().unwrap(), 12);
    let mut keys = Vec::new();
    let mut expect_str = |r: &mut MpReader, k: &str, v: &str| {
        assert_eq!(r.str().unwrap(), k);
        assert_eq!(r.str().unwrap(), v);
        keys.push(k.to_owned());
    };
    expect_str(&mut r, "orderId", "0192f5a0-1111-7abc-8def-0123456789ab");
    expect_str(&mut r, "orderNumber", "ORD-2025-000042");
    expect_str(&mut r, "status", "Preparing");
    expect_str(
        &mut r,
        "restaurantId",
        "6f9619ff-8b86-d011-b42d-00c04fc964ff",
    );
    assert_eq!(r.str().unwrap(), "lastUpdateTimestamp");
    assert_eq!(r.take(10).unwrap(), ts_bytes(dto.last_update).as_slice());
    assert_eq!(r.str().unwrap(), "estimatedDeliveryTime");
    assert_eq!(r.take(6).unwrap(), hex("d6 ff 68 d8 35 c0").as_slice());
    assert_eq!(r.str().unwrap(), "actualDeliveryTime");
    assert_eq!(r.byte().unwrap(), 0xc0);
    assert_eq!(r.str().unwrap(), "deliveredAt");
    assert_eq!(r.byte().unwrap(), 0xc0);
    assert_eq!(r.str().unwrap(), "occurredOnUtc");
    r.skip().unwrap();
    expect_str(&mut r, "eventId", "00000000-0000-4000-8000-000000000001");
    assert_eq!(r.str().unwrap(), "version");
    assert_eq!(r.int().unwrap(), 3);
    assert_eq!(r.str().unwrap(), "sequence");
    assert_eq!(r.int().unwrap(), 17);
    assert_eq!(r.array_len().unwrap(), 0);
    assert_eq!(r.remaining(), 0);
}

fn ts_bytes(t: Timestamp) -> Vec<u8> {
    let mut out = Vec::new();
    mp_timestamp(&mut out, t);
    out
}

/// Independent reference decoder for the timestamp extension.
fn decode_ts(b: &[u8]) -> (i64, u32) {
    match b {
        [0xd6, 0xff, rest @ ..] => (i64::from(u32::from_be_bytes(rest.try_into().unwrap())), 0),
        [0xd7, 0xff, rest @ ..] => {
            let v = u64::from_be_bytes(rest.try_into().unwrap());
            ((v & ((1 << 34) - 1)) as i64, (v >> 34) as u32)
        }
        [0xc7, 0x0c, 0xff, rest @ ..] => (
            i64::from_be_bytes(rest[4..].try_into().unwrap()),
            u32::from_be_bytes(rest[..4].try_into().unwrap()),
        ),
        _ => panic!("not a timestamp: {b:02x?}"),
    }
}

#[test]
fn msgpack_timestamps() {
    assert_eq!(ts_bytes(Timestamp(0)), hex("d6 ff 00 00 00 00"));
    assert_eq!(ts_bytes(Timestamp(1_000)), hex("d6 ff 00 00 00 01"));
    // 4294967295 s: still timestamp32.
    assert_eq!(
        ts_bytes(Timestamp(4_294_967_295_000)),
        hex("d6 ff ff ff ff ff")
    );
    // 1.5 s: timestamp64 with nanos 500_000_000 << 34 | 1.
    assert_eq!(
        ts_bytes(Timestamp(1_500)),
        hex("d7 ff 77 35 94 00 00 00 00 01")
    );
    // 2^32 s: needs timestamp64 even without nanos.
    assert_eq!(
        ts_bytes(Timestamp(4_294_967_296_000)),
        hex("d7 ff 00 00 00 01 00 00 00 00")
    );
    // 2^34 s: beyond timestamp64.
    assert_eq!(
        ts_bytes(Timestamp(17_179_869_184_000)),
        hex("c7 0c ff 00 00 00 00 00 00 00 04 00 00 00 00")
    );
    // -1 ms = -1 s + 999 ms: timestamp96 with negative seconds.
    assert_eq!(
        ts_bytes(Timestamp(-1)),
        hex("c7 0c ff 3b 8b 87 c0 ff ff ff ff ff ff ff ff")
    );
    for ms in [
        0,
        1,
        999,
        1_758_997_543_120,
        -1,
        -1_000,
        -86_400_000_123,
        i64::MIN / 2,
        (1 << 34) * 1000 - 1,
    ] {
        let t = Timestamp(ms);
        assert_eq!(decode_ts(&ts_bytes(t)), t.secs_nanos(), "{ms}");
    }
}

#[test]
fn error_texts() {
    assert_eq!(unknown_method_error("Foo"), "Unknown hub method 'Foo'");
    assert_eq!(
        invocation_failed_error("Foo"),
        "Failed to invoke 'Foo' due to an error on the server."
    );
    assert_eq!(
        hub_exception_error("Foo", "nope"),
        "An unexpected error occurred invoking 'Foo' on the server. HubException: nope"
    );
    assert_eq!(
        unauthorized_error("Foo"),
        "Failed to invoke 'Foo' because user is unauthorized"
    );
    assert_eq!(
        streaming_invocation_of_plain_method_error("Foo"),
        "The client attempted to invoke the non-streaming 'Foo' method with a streaming invocation."
    );
}

#[test]
fn json_string_escaping() {
    let mut out = Vec::new();
    json_str(&mut out, "a\"b\\c\u{1}\u{1e}\u{7f}é\u{2028}");
    let s = std::str::from_utf8(&out).unwrap();
    assert_eq!(s, "\"a\\\"b\\\\c\\u0001\\u001e\u{7f}é\u{2028}\"");
    let back: String = serde_json::from_str(s).unwrap();
    assert_eq!(back, "a\"b\\c\u{1}\u{1e}\u{7f}é\u{2028}");
}

// ---- properties ----

fn id() -> impl Strategy<Value = String> {
    "[0-9a-z]{1,6}"
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,40}", "\\PC{0,300}"]
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    let arg = prop_oneof![text().prop_map(Arg::Str), Just(Arg::Other)];
    prop_oneof![
        (
            proptest::option::of(id()),
            text(),
            proptest::collection::vec(arg, 0..4),
            proptest::collection::vec(id(), 0..3)
        )
            .prop_map(|(invocation_id, target, arguments, stream_ids)| {
                ClientMessage::Invocation {
                    invocation_id,
                    target,
                    arguments,
                    stream_ids,
                }
            }),
        (id(), text()).prop_map(|(invocation_id, target)| ClientMessage::StreamInvocation {
            invocation_id,
            target
        }),
        text().prop_map(|invocation_id| ClientMessage::StreamItem { invocation_id }),
        text().prop_map(|invocation_id| ClientMessage::Completion { invocation_id }),
        text().prop_map(|invocation_id| ClientMessage::CancelInvocation { invocation_id }),
        Just(ClientMessage::Ping),
        (proptest::option::of(text()), any::<bool>()).prop_map(|(error, allow_reconnect)| {
            ClientMessage::Close {
                error,
                allow_reconnect,
            }
        }),
        any::<u64>().prop_map(|sequence_id| ClientMessage::Ack { sequence_id }),
        any::<u64>().prop_map(|sequence_id| ClientMessage::Sequence { sequence_id }),
        prop_oneof![10i64..100_000, i64::MIN..1]
            .prop_map(|message_type| ClientMessage::Unknown { message_type }),
    ]
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![Just(Protocol::Json), Just(Protocol::MessagePack)]
}

/// Feeds `bytes` in chunks cut at `cuts` and collects everything (errors included).
fn feed_chunked(
    d: &mut Decoder,
    bytes: &[u8],
    cuts: &[usize],
) -> Vec<Result<ClientMessage, DecodeError>> {
    let mut out = Vec::new();
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.push(bytes.len());
    let mut start = 0;
    for c in cuts {
        d.push(&bytes[start..c]);
        start = c;
        loop {
            match d.next_message() {
                Ok(Some(m)) => out.push(Ok(m)),
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(e));
                    return out;
                }
            }
        }
    }
    out
}

proptest! {
    #[test]
    fn round_trip_any_chunking(
        p in protocol(),
        msgs in proptest::collection::vec(client_message(), 1..6),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut bytes = Vec::new();
        for m in &msgs {
            bytes.extend_from_slice(&encode_client_message(p, m));
        }
        let mut d = Decoder::with_max_message_size(p, 1 << 20);
        let got = feed_chunked(&mut d, &bytes, &cuts);
        let want: Vec<_> = msgs.into_iter().map(Ok).collect();
        prop_assert_eq!(got, want);
        prop_assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn garbage_never_panics(
        p in protocol(),
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8),
    ) {
        let mut d = Decoder::with_max_message_size(p, 100);
        let mut hs = HandshakeParser::with_max_size(100);
        for c in &chunks {
            d.push(c);
            while let Ok(Some(_)) = d.next_message() {}
            let _ = hs.feed(c);
        }
        let _ = parse_handshake_request(&chunks.concat());
    }

    #[test]
    fn mutated_messages_never_panic(
        p in protocol(),
        m in client_message(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = encode_client_message(p, &m).to_vec();
        for (at, b) in flips {
            let i = at % bytes.len();
            bytes[i] = b;
        }
        let mut d = Decoder::new(p);
        d.push(&bytes);
        while let Ok(Some(_)) = d.next_message() {}
    }

    #[test]
    fn msgpack_timestamps_round_trip(ms in any::<i64>()) {
        let t = Timestamp(ms);
        prop_assert_eq!(decode_ts(&ts_bytes(t)), t.secs_nanos());
    }

    #[test]
    fn event_json_parses_back(
        number in "\\PC{0,40}",
        ms in -10_000_000_000_000i64..10_000_000_000_000,
        version in any::<u64>(),
    ) {
        let mut dto = sample_dto();
        dto.order_number = number.clone();
        dto.last_update = Timestamp(ms);
        dto.version = version;
        let b = encode_event(Protocol::Json, "M", &dto);
        prop_assert_eq!(b.last(), Some(&RECORD_SEPARATOR));
        let v: serde_json::Value = serde_json::from_slice(&b[..b.len() - 1]).unwrap();
        prop_assert_eq!(v["arguments"][0]["orderNumber"].as_str(), Some(number.as_str()));
        prop_assert_eq!(v["arguments"][0]["version"].as_u64(), Some(version));
        let rendered = Timestamp(ms).rfc3339();
        prop_assert_eq!(
            v["arguments"][0]["lastUpdateTimestamp"].as_str(),
            Some(rendered.as_str())
        );
    }
}

#[test]
fn the_client_side_writes_what_the_server_side_reads() {
    assert_eq!(
        &encode_handshake_request(Protocol::Json)[..],
        b"{\"protocol\":\"json\",\"version\":1}\x1e"
    );
    assert_eq!(
        &encode_handshake_request(Protocol::MessagePack)[..],
        b"{\"protocol\":\"messagepack\",\"version\":1}\x1e"
    );
    for protocol in [Protocol::Json, Protocol::MessagePack] {
        let hello = encode_handshake_request(protocol);
        let (request, rest) = parse_handshake(&hello, 1024).unwrap().unwrap();
        assert_eq!(
            (request.protocol, request.version, rest),
            (protocol, 1, &[][..])
        );
        let mut d = Decoder::new(protocol);
        d.push(&client_invocation(
            protocol,
            Some("7"),
            "SubscribeToOrder",
            &["abc"],
        ));
        d.push(&client_invocation(protocol, None, "Nope", &[]));
        assert_eq!(
            d.next_message().unwrap(),
            Some(ClientMessage::Invocation {
                invocation_id: Some("7".into()),
                target: "SubscribeToOrder".into(),
                arguments: vec![Arg::Str("abc".into())],
                stream_ids: vec![],
            })
        );
        assert_eq!(
            d.next_message().unwrap(),
            Some(ClientMessage::Invocation {
                invocation_id: None,
                target: "Nope".into(),
                arguments: vec![],
                stream_ids: vec![],
            })
        );
        assert_eq!(d.next_message().unwrap(), None);
    }
    let frame = format!(
        "{}{}",
        json_record("{\"type\":6}"),
        json_record("{\"type\":7}")
    );
    assert_eq!(
        split_json_records(&frame).collect::<Vec<_>>(),
        vec!["{\"type\":6}", "{\"type\":7}"]
    );
}
