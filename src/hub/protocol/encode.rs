//! What the server sends: framed pings, closes, completions and server-to-client invocations
//! (an event is encoded once per protocol and shared by every subscriber), and the error texts
//! of failed invocations.

use super::json::{json_frame, json_str};
use super::msgpack::{mp_array_len, mp_frame, mp_map_len, mp_str, mp_uint};
use super::payload::HubPayload;
use super::Protocol;
use crate::domain::OrderStatusBroadcast;
use bytes::Bytes;
use std::fmt;

/// How an invocation ended, for [`encode_completion`].
#[derive(Clone, Copy)]
pub enum Outcome<'a> {
    /// A void hub method finished: JSON `"result":null`, MessagePack ResultKind 3 with nil
    /// (what ASP.NET sends for void methods).
    Void,
    /// No result at all: JSON without `result`, MessagePack ResultKind 2 (a stream's end).
    NoResult,
    /// A value: JSON `result`, MessagePack ResultKind 3.
    Value(&'a dyn HubPayload),
    /// An error text: JSON `error`, MessagePack ResultKind 1.
    Error(&'a str),
}

impl fmt::Debug for Outcome<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Void => f.write_str("Void"),
            Outcome::NoResult => f.write_str("NoResult"),
            Outcome::Value(_) => f.write_str("Value(..)"),
            Outcome::Error(e) => f.debug_tuple("Error").field(e).finish(),
        }
    }
}

/// A framed Ping.
pub fn encode_ping(protocol: Protocol) -> Bytes {
    match protocol {
        Protocol::Json => Bytes::from_static(b"{\"type\":6}\x1e"),
        Protocol::MessagePack => Bytes::from_static(&[0x02, 0x91, 0x06]),
    }
}

/// A framed Close. `allowReconnect` is only written (JSON) when true.
pub fn encode_close(protocol: Protocol, error: Option<&str>, allow_reconnect: bool) -> Bytes {
    match protocol {
        Protocol::Json => json_frame(|out| {
            out.extend_from_slice(b"{\"type\":7");
            if let Some(e) = error {
                out.extend_from_slice(b",\"error\":");
                json_str(out, e);
            }
            if allow_reconnect {
                out.extend_from_slice(b",\"allowReconnect\":true");
            }
            out.push(b'}');
        }),
        Protocol::MessagePack => mp_frame(|out| {
            mp_array_len(out, 3);
            mp_uint(out, 7);
            error.write_msgpack(out);
            allow_reconnect.write_msgpack(out);
        }),
    }
}

/// A framed Ack (type 8, stateful reconnect): every message up to `sequence_id` arrived. The
/// shape is the same in both directions, so the client-side writer serves.
pub fn encode_ack(protocol: Protocol, sequence_id: u64) -> Bytes {
    super::encode_client_message(protocol, &super::ClientMessage::Ack { sequence_id })
}

/// A framed Sequence (type 9, stateful reconnect): the id of the next message that follows.
pub fn encode_sequence(protocol: Protocol, sequence_id: u64) -> Bytes {
    super::encode_client_message(protocol, &super::ClientMessage::Sequence { sequence_id })
}

/// A framed Completion for `invocation_id`.
pub fn encode_completion(protocol: Protocol, invocation_id: &str, outcome: Outcome<'_>) -> Bytes {
    match protocol {
        Protocol::Json => json_frame(|out| {
            out.extend_from_slice(b"{\"type\":3,\"invocationId\":");
            json_str(out, invocation_id);
            match outcome {
                Outcome::Void => out.extend_from_slice(b",\"result\":null"),
                Outcome::NoResult => {}
                Outcome::Value(v) => {
                    out.extend_from_slice(b",\"result\":");
                    v.write_json(out);
                }
                Outcome::Error(e) => {
                    out.extend_from_slice(b",\"error\":");
                    json_str(out, e);
                }
            }
            out.push(b'}');
        }),
        Protocol::MessagePack => mp_frame(|out| {
            let items = if matches!(outcome, Outcome::NoResult) {
                4
            } else {
                5
            };
            mp_array_len(out, items);
            mp_uint(out, 3);
            mp_map_len(out, 0);
            mp_str(out, invocation_id);
            match outcome {
                Outcome::Void => {
                    mp_uint(out, 3);
                    out.push(0xc0);
                }
                Outcome::NoResult => mp_uint(out, 2),
                Outcome::Value(v) => {
                    mp_uint(out, 3);
                    v.write_msgpack(out);
                }
                Outcome::Error(e) => {
                    mp_uint(out, 1);
                    mp_str(out, e);
                }
            }
        }),
    }
}

/// A framed server-to-client Invocation without invocation id (no result expected).
pub fn encode_invocation(protocol: Protocol, target: &str, arguments: &[&dyn HubPayload]) -> Bytes {
    match protocol {
        Protocol::Json => json_frame(|out| {
            out.extend_from_slice(b"{\"type\":1,\"target\":");
            json_str(out, target);
            out.extend_from_slice(b",\"arguments\":[");
            for (i, a) in arguments.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                a.write_json(out);
            }
            out.extend_from_slice(b"]}");
        }),
        Protocol::MessagePack => mp_frame(|out| {
            // ASP.NET's layout: [1, headers, nil, target, [args], [streamIds]].
            mp_array_len(out, 6);
            mp_uint(out, 1);
            mp_map_len(out, 0);
            out.push(0xc0);
            mp_str(out, target);
            mp_array_len(out, arguments.len());
            for a in arguments {
                a.write_msgpack(out);
            }
            mp_array_len(out, 0);
        }),
    }
}

/// An event for fan-out: encode once per protocol, then clone the `Bytes` (cheap, shared) for
/// every subscriber.
pub fn encode_event(protocol: Protocol, method: &str, dto: &OrderStatusBroadcast) -> Bytes {
    encode_invocation(protocol, method, &[dto])
}

// ---- error texts (ASP.NET's wording, so client apps that match on them keep working) ------

/// Invocation of a method the hub does not have.
pub fn unknown_method_error(target: &str) -> String {
    format!("Unknown hub method '{target}'")
}

/// Argument binding failed (wrong count or type of arguments).
pub fn invocation_failed_error(target: &str) -> String {
    format!("Failed to invoke '{target}' due to an error on the server.")
}

/// The method refused with a message meant for the client (ASP.NET's `HubException`).
pub fn hub_exception_error(target: &str, message: &str) -> String {
    format!(
        "An unexpected error occurred invoking '{target}' on the server. HubException: {message}"
    )
}

/// The caller may not invoke this method at all.
pub fn unauthorized_error(target: &str) -> String {
    format!("Failed to invoke '{target}' because user is unauthorized")
}

/// A StreamInvocation (type 4) of one of our plain methods.
pub fn streaming_invocation_of_plain_method_error(target: &str) -> String {
    format!(
        "The client attempted to invoke the non-streaming '{target}' method with a streaming invocation."
    )
}
