//! What a client sends, reduced to what the hub acts on: [`ClientMessage`] and its arguments,
//! and why a message cannot be decoded. Shared by the framing and both protocol decoders.

/// One invocation argument, reduced to what our hub methods need: a string, a non-negative
/// integer, or something else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arg {
    Str(String),
    /// A non-negative integer (`ResumeRestaurant`'s cursor).
    UInt(u64),
    /// Any other value (number, null, bool, array, map, binary, extension).
    Other,
}

/// The string argument when `args` is exactly one string.
pub fn single_string_argument(args: &[Arg]) -> Option<&str> {
    match args {
        [Arg::Str(s)] => Some(s),
        _ => None,
    }
}

/// A message a client sent, reduced to what the hub server acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMessage {
    /// Type 1. `invocation_id: None` (absent, null or empty) means fire-and-forget: never answer.
    Invocation {
        invocation_id: Option<String>,
        target: String,
        arguments: Vec<Arg>,
        /// Upload stream ids; our methods take none, so non-empty means a binding error.
        stream_ids: Vec<String>,
    },
    /// Type 4: answered with an error, none of our methods stream.
    StreamInvocation {
        invocation_id: String,
        target: String,
    },
    /// Type 2 (upload stream item); ignored.
    StreamItem { invocation_id: String },
    /// Type 3 (client result or upload stream end); ignored.
    Completion { invocation_id: String },
    /// Type 5; ignored.
    CancelInvocation { invocation_id: String },
    /// Type 6.
    Ping,
    /// Type 7: the client is going away.
    Close {
        error: Option<String>,
        allow_reconnect: bool,
    },
    /// Type 8 (stateful reconnect): the peer received every message up to `sequence_id`.
    Ack { sequence_id: u64 },
    /// Type 9 (stateful reconnect): the id of the next message the peer sends after a reconnect.
    Sequence { sequence_id: u64 },
    /// Any other type; ignored for forward compatibility.
    Unknown { message_type: i64 },
}

impl ClientMessage {
    /// Whether stateful reconnect numbers this message (invocations, stream items, completions,
    /// stream invocations, cancels); pings, closes, acks and sequences are not counted.
    pub fn is_sequenced(&self) -> bool {
        matches!(
            self,
            ClientMessage::Invocation { .. }
                | ClientMessage::StreamItem { .. }
                | ClientMessage::Completion { .. }
                | ClientMessage::StreamInvocation { .. }
                | ClientMessage::CancelInvocation { .. }
        )
    }
}

/// Why the inbound stream cannot be decoded. Either error ends the connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A message (or an unterminated tail, or a length prefix) exceeds the limit: close with
    /// WebSocket code 1009.
    #[error("The maximum message size of {limit}B was exceeded.")]
    TooLarge { limit: usize },
    /// Not a valid hub message.
    #[error("invalid hub message: {0}")]
    Malformed(String),
}

impl DecodeError {
    pub fn is_too_large(&self) -> bool {
        matches!(self, DecodeError::TooLarge { .. })
    }
}

pub(super) fn malformed(what: impl Into<String>) -> DecodeError {
    DecodeError::Malformed(what.into())
}

/// A required property of the message is absent.
pub(super) fn missing(property: &str) -> DecodeError {
    malformed(format!("Missing required property '{property}'."))
}
