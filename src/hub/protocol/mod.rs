//! The SignalR hub protocols (JSON and MessagePack), pure code: no I/O, no async. One file per
//! concern, so a MessagePack fix and a handshake fix land in different rooms:
//! - `handshake.rs`: the handshake request parser and its answers;
//! - `message.rs`: what clients send ([`ClientMessage`]) and decoding errors;
//! - `framing.rs`: the per-connection stream [`Decoder`] that cuts records (JSON, `0x1E`) and
//!   length-prefixed messages (MessagePack) out of payloads;
//! - `json.rs` and `msgpack.rs`: each protocol's message decoder and low-level writers;
//! - `payload.rs`: [`HubPayload`], the values that travel as arguments and results;
//! - `encode.rs`: what the server sends (pings, closes, completions, invocations, error texts);
//! - `client.rs`: the client side of the codec (handshake request, invocations, record
//!   splitting), written once for `watch`, the load tool and the tests.
//!
//! Wire details: `shared/spec/signalr-protocol-notes.md` sections 3 to 5.

mod client;
mod encode;
mod framing;
mod handshake;
mod json;
mod message;
mod msgpack;
mod payload;

pub use client::{
    client_invocation, encode_client_message, encode_handshake_request, json_record,
    split_json_records,
};
pub use encode::{
    encode_ack, encode_close, encode_completion, encode_event, encode_invocation, encode_ping,
    encode_sequence, hub_exception_error, invocation_failed_error,
    streaming_invocation_of_plain_method_error, unauthorized_error, unknown_method_error, Outcome,
};
pub use framing::Decoder;
pub use handshake::{
    encode_handshake_error, encode_handshake_ok, parse_handshake, parse_handshake_request,
    HandshakeError, HandshakeParser, HandshakeProgress, HandshakeRequest,
};
pub use json::decode_json_record;
pub use message::{single_string_argument, Arg, ClientMessage, DecodeError};
pub use msgpack::decode_msgpack_message;
pub use payload::HubPayload;

/// Terminates every JSON record and the handshake in both directions.
pub const RECORD_SEPARATOR: u8 = 0x1e;
/// Largest inbound message body accepted by default (ASP.NET's `MaximumReceiveMessageSize`).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 32 * 1024;
/// Largest handshake request accepted (bytes before its `0x1E`).
pub const MAX_HANDSHAKE_SIZE: usize = 4 * 1024;
/// Error text of a Close sent because something went wrong (ASP.NET's wording).
pub const CONNECTION_CLOSED_WITH_ERROR: &str = "Connection closed with an error.";

/// A hub protocol a client can pick in its handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `json`: UTF-8 text records ended by `0x1E`, sent in TEXT frames.
    Json,
    /// `messagepack`: VarInt length prefix plus a MessagePack array, sent in BINARY frames.
    MessagePack,
}

impl Protocol {
    /// The name used in the handshake.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Json => "json",
            Protocol::MessagePack => "messagepack",
        }
    }

    /// Looks a handshake protocol name up; case-insensitive like ASP.NET's resolver.
    pub fn from_name(name: &str) -> Option<Protocol> {
        [Protocol::Json, Protocol::MessagePack]
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name))
    }

    /// Whether frames of this protocol must go out as BINARY WebSocket frames.
    pub fn is_binary(self) -> bool {
        self == Protocol::MessagePack
    }
}

#[cfg(test)]
mod tests;
