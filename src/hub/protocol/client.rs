//! The client side of the codec, written once: the handshake request, invocations and other
//! client messages in both protocols, and the split of a JSON frame into records. Used by the
//! `watch` command's hub session, the load tool and the tests.

use super::json::{json_frame, json_str};
use super::message::{Arg, ClientMessage};
use super::msgpack::{mp_array_len, mp_frame, mp_int, mp_map_len, mp_str, mp_uint};
use super::payload::HubPayload;
use super::{Protocol, RECORD_SEPARATOR};
use bytes::Bytes;

/// The handshake request for `protocol` (version 1), `0x1E` included. Sent in a TEXT frame.
pub fn encode_handshake_request(protocol: Protocol) -> Bytes {
    json_frame(|out| {
        out.extend_from_slice(b"{\"protocol\":");
        json_str(out, protocol.name());
        out.extend_from_slice(b",\"version\":1}");
    })
}

/// A framed Invocation of `target` with string arguments, as the JavaScript client writes it
/// (`invocation_id: None` asks for no completion).
pub fn client_invocation(
    protocol: Protocol,
    invocation_id: Option<&str>,
    target: &str,
    string_args: &[&str],
) -> Bytes {
    encode_client_message(
        protocol,
        &ClientMessage::Invocation {
            invocation_id: invocation_id.map(str::to_owned),
            target: target.to_owned(),
            arguments: string_args
                .iter()
                .map(|a| Arg::Str((*a).to_owned()))
                .collect(),
            stream_ids: Vec::new(),
        },
    )
}

/// One JSON record: `text` (a JSON document) with its `0x1E` appended.
pub fn json_record(text: &str) -> String {
    let mut s = String::with_capacity(text.len() + 1);
    s.push_str(text);
    s.push(char::from(RECORD_SEPARATOR));
    s
}

/// The records of a JSON-protocol TEXT frame, without their `0x1E` (blank pieces skipped).
pub fn split_json_records(text: &str) -> impl Iterator<Item = &str> {
    text.split(char::from(RECORD_SEPARATOR))
        .filter(|r| !r.trim().is_empty())
}

/// Encodes any client message (clients, and tests that send odd but well-framed ones). `Arg::Other`
/// goes out as null; ignored payloads (stream items, completion results) are left out or null.
pub fn encode_client_message(protocol: Protocol, msg: &ClientMessage) -> Bytes {
    match protocol {
        Protocol::Json => json_frame(|out| write_client_json(out, msg)),
        Protocol::MessagePack => mp_frame(|out| write_client_msgpack(out, msg)),
    }
}

fn json_args(out: &mut Vec<u8>, args: &[Arg]) {
    out.push(b'[');
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match a {
            Arg::Str(s) => json_str(out, s),
            Arg::UInt(n) => out.extend_from_slice(n.to_string().as_bytes()),
            Arg::Other => out.extend_from_slice(b"null"),
        }
    }
    out.push(b']');
}

fn json_key_str(out: &mut Vec<u8>, key: &str, value: &str) {
    out.push(b',');
    json_str(out, key);
    out.push(b':');
    json_str(out, value);
}

fn write_client_json(out: &mut Vec<u8>, msg: &ClientMessage) {
    let ty: i64 = match msg {
        ClientMessage::Invocation { .. } => 1,
        ClientMessage::StreamItem { .. } => 2,
        ClientMessage::Completion { .. } => 3,
        ClientMessage::StreamInvocation { .. } => 4,
        ClientMessage::CancelInvocation { .. } => 5,
        ClientMessage::Ping => 6,
        ClientMessage::Close { .. } => 7,
        ClientMessage::Ack { .. } => 8,
        ClientMessage::Sequence { .. } => 9,
        ClientMessage::Unknown { message_type } => *message_type,
    };
    out.extend_from_slice(b"{\"type\":");
    ty.write_json(out);
    match msg {
        ClientMessage::Invocation {
            invocation_id,
            target,
            arguments,
            stream_ids,
        } => {
            if let Some(id) = invocation_id {
                json_key_str(out, "invocationId", id);
            }
            json_key_str(out, "target", target);
            out.extend_from_slice(b",\"arguments\":");
            json_args(out, arguments);
            if !stream_ids.is_empty() {
                out.extend_from_slice(b",\"streamIds\":[");
                for (i, s) in stream_ids.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    json_str(out, s);
                }
                out.push(b']');
            }
        }
        ClientMessage::StreamInvocation {
            invocation_id,
            target,
        } => {
            json_key_str(out, "invocationId", invocation_id);
            json_key_str(out, "target", target);
            out.extend_from_slice(b",\"arguments\":[]");
        }
        ClientMessage::StreamItem { invocation_id } => {
            json_key_str(out, "invocationId", invocation_id);
            out.extend_from_slice(b",\"item\":null");
        }
        ClientMessage::Completion { invocation_id }
        | ClientMessage::CancelInvocation { invocation_id } => {
            json_key_str(out, "invocationId", invocation_id);
        }
        ClientMessage::Close {
            error,
            allow_reconnect,
        } => {
            if let Some(e) = error {
                json_key_str(out, "error", e);
            }
            if *allow_reconnect {
                out.extend_from_slice(b",\"allowReconnect\":true");
            }
        }
        ClientMessage::Ack { sequence_id } | ClientMessage::Sequence { sequence_id } => {
            out.extend_from_slice(b",\"sequenceId\":");
            sequence_id.write_json(out);
        }
        ClientMessage::Ping | ClientMessage::Unknown { .. } => {}
    }
    out.push(b'}');
}

fn write_client_msgpack(out: &mut Vec<u8>, msg: &ClientMessage) {
    let args = |out: &mut Vec<u8>, arguments: &[Arg]| {
        mp_array_len(out, arguments.len());
        for a in arguments {
            match a {
                Arg::Str(s) => mp_str(out, s),
                Arg::UInt(n) => mp_uint(out, *n),
                Arg::Other => out.push(0xc0),
            }
        }
    };
    match msg {
        ClientMessage::Invocation {
            invocation_id,
            target,
            arguments,
            stream_ids,
        } => {
            // Like the JS client: 5 items unless there are stream ids.
            mp_array_len(out, if stream_ids.is_empty() { 5 } else { 6 });
            mp_uint(out, 1);
            mp_map_len(out, 0);
            invocation_id.as_deref().write_msgpack(out);
            mp_str(out, target);
            args(out, arguments);
            if !stream_ids.is_empty() {
                mp_array_len(out, stream_ids.len());
                for s in stream_ids {
                    mp_str(out, s);
                }
            }
        }
        ClientMessage::StreamInvocation {
            invocation_id,
            target,
        } => {
            mp_array_len(out, 5);
            mp_uint(out, 4);
            mp_map_len(out, 0);
            mp_str(out, invocation_id);
            mp_str(out, target);
            mp_array_len(out, 0);
        }
        ClientMessage::StreamItem { invocation_id } => {
            mp_array_len(out, 4);
            mp_uint(out, 2);
            mp_map_len(out, 0);
            mp_str(out, invocation_id);
            out.push(0xc0);
        }
        ClientMessage::Completion { invocation_id } => {
            mp_array_len(out, 4);
            mp_uint(out, 3);
            mp_map_len(out, 0);
            mp_str(out, invocation_id);
            mp_uint(out, 2);
        }
        ClientMessage::CancelInvocation { invocation_id } => {
            mp_array_len(out, 3);
            mp_uint(out, 5);
            mp_map_len(out, 0);
            mp_str(out, invocation_id);
        }
        ClientMessage::Ping => {
            mp_array_len(out, 1);
            mp_uint(out, 6);
        }
        ClientMessage::Close {
            error,
            allow_reconnect,
        } => {
            // Like the JS client: 2 items unless reconnecting is allowed.
            mp_array_len(out, if *allow_reconnect { 3 } else { 2 });
            mp_uint(out, 7);
            error.as_deref().write_msgpack(out);
            if *allow_reconnect {
                out.push(0xc3);
            }
        }
        ClientMessage::Ack { sequence_id } | ClientMessage::Sequence { sequence_id } => {
            mp_array_len(out, 2);
            mp_uint(
                out,
                if matches!(msg, ClientMessage::Ack { .. }) {
                    8
                } else {
                    9
                },
            );
            mp_uint(out, *sequence_id);
        }
        ClientMessage::Unknown { message_type } => {
            mp_array_len(out, 1);
            mp_int(out, *message_type);
        }
    }
}
