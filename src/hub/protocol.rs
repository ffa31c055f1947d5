//! SignalR hub protocol codecs (JSON and MessagePack): the handshake, a per-connection stream
//! decoder for what clients send, and encoders for what the server sends (pings, closes,
//! completions and server invocations carrying an `OrderStatusBroadcast`). Pure code: no I/O,
//! no async. Wire details: `shared/spec/signalr-protocol-notes.md` sections 3 to 5.

use crate::domain::event::OrderStatusBroadcast;
use crate::domain::time::Timestamp;
use bytes::Bytes;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use uuid::Uuid;

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

// ---------------------------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------------------------

/// A parsed handshake request. Versions 0, 1 and 2 are accepted, as ASP.NET Core 8+ does
/// (`version <= 2`; Python's `signalrcore` sends 0); all are served alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeRequest {
    pub protocol: Protocol,
    pub version: u32,
}

/// Why a handshake was refused. `Display` gives the text for the `{"error":...}` response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("The protocol '{0}' is not supported.")]
    UnsupportedProtocol(String),
    /// Names the protocol as the client spelled it, like ASP.NET.
    #[error("The server does not support version {version} of the '{protocol}' protocol.")]
    UnsupportedVersion { protocol: String, version: i64 },
    #[error("An unexpected error occurred during connection handshake.")]
    Malformed,
    /// More than the handshake limit arrived without a `0x1E`.
    #[error("Handshake was canceled.")]
    TooLarge,
}

impl HandshakeError {
    /// The framed error response to send before closing the connection.
    pub fn response(&self) -> Bytes {
        encode_handshake_error(&self.to_string())
    }
}

/// Progress of a [`HandshakeParser`].
#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeProgress<'a> {
    /// No `0x1E` yet: feed the next frame.
    NeedMore,
    /// The handshake is complete. `rest` holds the bytes after its `0x1E` (from the chunk just
    /// fed); they are hub messages and must be pushed into the connection's [`Decoder`].
    Done {
        request: HandshakeRequest,
        rest: &'a [u8],
    },
}

/// Incremental handshake parser: feed it every received payload (TEXT or BINARY frame) until
/// it answers [`HandshakeProgress::Done`] or an error.
#[derive(Debug)]
pub struct HandshakeParser {
    buf: Vec<u8>,
    max: usize,
}

impl Default for HandshakeParser {
    fn default() -> Self {
        HandshakeParser::new()
    }
}

impl HandshakeParser {
    pub fn new() -> Self {
        HandshakeParser::with_max_size(MAX_HANDSHAKE_SIZE)
    }

    pub fn with_max_size(max: usize) -> Self {
        HandshakeParser {
            buf: Vec::new(),
            max,
        }
    }

    /// Adds `chunk` and tries to complete the handshake. Only the handshake's own bytes are
    /// buffered; after `Done` the parser is empty again.
    pub fn feed<'a>(&mut self, chunk: &'a [u8]) -> Result<HandshakeProgress<'a>, HandshakeError> {
        match chunk.iter().position(|&b| b == RECORD_SEPARATOR) {
            Some(i) => {
                if self.buf.len() + i > self.max {
                    return Err(HandshakeError::TooLarge);
                }
                let request = if self.buf.is_empty() {
                    parse_handshake_request(&chunk[..i])
                } else {
                    self.buf.extend_from_slice(&chunk[..i]);
                    let r = parse_handshake_request(&self.buf);
                    self.buf.clear();
                    r
                }?;
                Ok(HandshakeProgress::Done {
                    request,
                    rest: &chunk[i + 1..],
                })
            }
            None => {
                if self.buf.len() + chunk.len() > self.max {
                    return Err(HandshakeError::TooLarge);
                }
                self.buf.extend_from_slice(chunk);
                Ok(HandshakeProgress::NeedMore)
            }
        }
    }
}

/// Stateless form for a caller that keeps all received bytes itself: parses the handshake
/// from the start of `received` and returns it with the bytes after its `0x1E`, or `Ok(None)`
/// if no `0x1E` arrived yet (and no more than `max` bytes did).
pub fn parse_handshake(
    received: &[u8],
    max: usize,
) -> Result<Option<(HandshakeRequest, &[u8])>, HandshakeError> {
    match HandshakeParser::with_max_size(max).feed(received)? {
        HandshakeProgress::NeedMore => Ok(None),
        HandshakeProgress::Done { request, rest } => Ok(Some((request, rest))),
    }
}

/// Parses one handshake request body (the JSON object, without its `0x1E`).
pub fn parse_handshake_request(body: &[u8]) -> Result<HandshakeRequest, HandshakeError> {
    let obj: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(|_| HandshakeError::Malformed)?;
    let name = obj
        .get("protocol")
        .and_then(|v| v.as_str())
        .ok_or(HandshakeError::Malformed)?;
    let version = obj
        .get("version")
        .and_then(|v| v.as_i64())
        .ok_or(HandshakeError::Malformed)?;
    let protocol = Protocol::from_name(name)
        .ok_or_else(|| HandshakeError::UnsupportedProtocol(name.to_owned()))?;
    match u32::try_from(version) {
        Ok(v @ 0..=2) => Ok(HandshakeRequest {
            protocol,
            version: v,
        }),
        _ => Err(HandshakeError::UnsupportedVersion {
            protocol: name.to_owned(),
            version,
        }),
    }
}

/// The success response `{}` + `0x1E`.
pub fn encode_handshake_ok() -> Bytes {
    Bytes::from_static(b"{}\x1e")
}

/// A failure response `{"error":"..."}` + `0x1E` (never with a `type` property).
pub fn encode_handshake_error(message: &str) -> Bytes {
    let mut out = Vec::with_capacity(message.len() + 16);
    out.extend_from_slice(b"{\"error\":");
    json_str(&mut out, message);
    out.extend_from_slice(b"}\x1e");
    Bytes::from(out)
}

// ---------------------------------------------------------------------------------------------
// Inbound messages
// ---------------------------------------------------------------------------------------------

/// One invocation argument, reduced to what our hub methods need: a string or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arg {
    Str(String),
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
    /// Type 8 (stateful reconnect, not implemented); ignored.
    Ack { sequence_id: u64 },
    /// Type 9 (stateful reconnect, not implemented); ignored.
    Sequence { sequence_id: u64 },
    /// Any other type; ignored for forward compatibility.
    Unknown { message_type: i64 },
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

fn malformed(what: impl Into<String>) -> DecodeError {
    DecodeError::Malformed(what.into())
}

/// Per-connection inbound stream decoder: push every WebSocket payload, then drain complete
/// messages with [`Decoder::next_message`]. A partial tail is kept across payloads. After an
/// error the decoder keeps answering that error.
#[derive(Debug)]
pub struct Decoder {
    protocol: Protocol,
    max: usize,
    buf: Vec<u8>,
    /// Start of unconsumed data in `buf`.
    pos: usize,
    /// JSON only: `buf[pos..scanned]` is known to hold no `0x1E`.
    scanned: usize,
    failed: Option<DecodeError>,
}

impl Decoder {
    pub fn new(protocol: Protocol) -> Self {
        Decoder::with_max_message_size(protocol, DEFAULT_MAX_MESSAGE_SIZE)
    }

    pub fn with_max_message_size(protocol: Protocol, max: usize) -> Self {
        Decoder {
            protocol,
            max,
            buf: Vec::new(),
            pos: 0,
            scanned: 0,
            failed: None,
        }
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Appends one received payload.
    pub fn push(&mut self, payload: &[u8]) {
        if self.failed.is_some() || payload.is_empty() {
            return;
        }
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.scanned = self.scanned.saturating_sub(self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(payload);
    }

    /// The next complete message, `Ok(None)` when more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<ClientMessage>, DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = match self.protocol {
            Protocol::Json => self.next_json(),
            Protocol::MessagePack => self.next_msgpack(),
        };
        match &r {
            Err(e) => {
                self.failed = Some(e.clone());
                self.buf = Vec::new();
                self.pos = 0;
                self.scanned = 0;
            }
            Ok(None) => self.reclaim(),
            Ok(Some(_)) => {}
        }
        r
    }

    /// Once everything is consumed, empties the buffer, and gives back the memory of an
    /// unusually large batch (an idle connection should not keep it).
    fn reclaim(&mut self) {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            self.scanned = 0;
            if self.buf.capacity() > self.max.max(RECLAIM_FLOOR) * 2 {
                self.buf = Vec::new();
            }
        }
    }

    fn next_json(&mut self) -> Result<Option<ClientMessage>, DecodeError> {
        let from = self.scanned.max(self.pos);
        match self.buf[from..].iter().position(|&b| b == RECORD_SEPARATOR) {
            Some(i) => {
                let end = from + i;
                if end - self.pos > self.max {
                    return Err(DecodeError::TooLarge { limit: self.max });
                }
                let record = &self.buf[self.pos..end];
                let msg = decode_json_record(record);
                self.pos = end + 1;
                self.scanned = self.pos;
                msg.map(Some)
            }
            None => {
                self.scanned = self.buf.len();
                if self.buf.len() - self.pos > self.max {
                    return Err(DecodeError::TooLarge { limit: self.max });
                }
                Ok(None)
            }
        }
    }

    fn next_msgpack(&mut self) -> Result<Option<ClientMessage>, DecodeError> {
        let pending = &self.buf[self.pos..];
        let Some((len, prefix)) = read_varint(pending)? else {
            return Ok(None);
        };
        if len > self.max as u64 {
            return Err(DecodeError::TooLarge { limit: self.max });
        }
        // `len <= max`, so it fits in usize.
        let len = len as usize;
        if pending.len() - prefix < len {
            return Ok(None);
        }
        let body = &pending[prefix..prefix + len];
        let msg = decode_msgpack_message(body);
        self.pos += prefix + len;
        msg.map(Some)
    }
}

/// Buffers up to twice this size (or twice the message limit) are kept for reuse.
const RECLAIM_FLOOR: usize = 4096;

/// Reads a SignalR VarInt length prefix: `Ok(None)` if incomplete, else (value, bytes used).
fn read_varint(buf: &[u8]) -> Result<Option<(u64, usize)>, DecodeError> {
    let mut value: u64 = 0;
    for i in 0..5 {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        if i == 4 && b > 0x07 {
            return Err(malformed("length prefix exceeds 2^31-1"));
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    // Unreachable: the fifth byte either ends the prefix or is rejected above.
    Err(malformed("length prefix too long"))
}

// ---- JSON inbound ----------------------------------------------------------------------------

/// Decodes one JSON record (without its `0x1E`).
pub fn decode_json_record(record: &[u8]) -> Result<ClientMessage, DecodeError> {
    let env: Envelope = serde_json::from_slice(record)
        .map_err(|e| malformed(format!("invalid JSON hub message: {e}")))?;
    env.into_message()
}

/// Every envelope property we look at; anything else is skipped.
#[derive(Default)]
struct Envelope {
    message_type: Option<i64>,
    invocation_id: Option<String>,
    target: Option<String>,
    arguments: Option<Vec<Arg>>,
    stream_ids: Option<Vec<String>>,
    has_item: bool,
    has_result: bool,
    error: Option<String>,
    allow_reconnect: Option<bool>,
    sequence_id: Option<u64>,
}

enum Field {
    Type,
    InvocationId,
    Target,
    Arguments,
    StreamIds,
    Item,
    Result,
    Error,
    AllowReconnect,
    SequenceId,
    Other,
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl Visitor<'_> for FieldVisitor {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a property name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
                Ok(match v {
                    "type" => Field::Type,
                    "invocationId" => Field::InvocationId,
                    "target" => Field::Target,
                    "arguments" => Field::Arguments,
                    "streamIds" => Field::StreamIds,
                    "item" => Field::Item,
                    "result" => Field::Result,
                    "error" => Field::Error,
                    "allowReconnect" => Field::AllowReconnect,
                    "sequenceId" => Field::SequenceId,
                    _ => Field::Other,
                })
            }
        }
        d.deserialize_identifier(FieldVisitor)
    }
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EnvelopeVisitor;
        impl<'de> Visitor<'de> for EnvelopeVisitor {
            type Value = Envelope;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a hub message object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
                let mut env = Envelope::default();
                while let Some(field) = map.next_key::<Field>()? {
                    match field {
                        Field::Type => env.message_type = Some(map.next_value()?),
                        Field::InvocationId => env.invocation_id = map.next_value()?,
                        Field::Target => env.target = map.next_value()?,
                        Field::Arguments => env.arguments = map.next_value()?,
                        Field::StreamIds => env.stream_ids = map.next_value()?,
                        Field::Item => {
                            map.next_value::<IgnoredAny>()?;
                            env.has_item = true;
                        }
                        Field::Result => {
                            map.next_value::<IgnoredAny>()?;
                            env.has_result = true;
                        }
                        Field::Error => env.error = map.next_value()?,
                        Field::AllowReconnect => env.allow_reconnect = map.next_value()?,
                        Field::SequenceId => env.sequence_id = map.next_value()?,
                        Field::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(env)
            }
        }
        d.deserialize_map(EnvelopeVisitor)
    }
}

impl<'de> Deserialize<'de> for Arg {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ArgVisitor;
        impl<'de> Visitor<'de> for ArgVisitor {
            type Value = Arg;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Arg, E> {
                Ok(Arg::Str(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Arg, E> {
                Ok(Arg::Str(v))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Arg, E> {
                Ok(Arg::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Arg, E> {
                Ok(Arg::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Arg, E> {
                Ok(Arg::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Arg, E> {
                Ok(Arg::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Arg, E> {
                Ok(Arg::Other)
            }
            fn visit_none<E: de::Error>(self) -> Result<Arg, E> {
                Ok(Arg::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Arg, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Arg::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Arg, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Arg::Other)
            }
        }
        d.deserialize_any(ArgVisitor)
    }
}

fn missing(property: &str) -> DecodeError {
    malformed(format!("Missing required property '{property}'."))
}

impl Envelope {
    fn required_id(&mut self) -> Result<String, DecodeError> {
        self.invocation_id
            .take()
            .ok_or_else(|| missing("invocationId"))
    }

    fn into_message(mut self) -> Result<ClientMessage, DecodeError> {
        let ty = self.message_type.ok_or_else(|| missing("type"))?;
        Ok(match ty {
            1 => ClientMessage::Invocation {
                invocation_id: self.invocation_id.take().filter(|id| !id.is_empty()),
                target: self.target.take().ok_or_else(|| missing("target"))?,
                arguments: self.arguments.take().ok_or_else(|| missing("arguments"))?,
                stream_ids: self.stream_ids.take().unwrap_or_default(),
            },
            4 => {
                let invocation_id = self.required_id()?;
                let target = self.target.take().ok_or_else(|| missing("target"))?;
                if self.arguments.is_none() {
                    return Err(missing("arguments"));
                }
                ClientMessage::StreamInvocation {
                    invocation_id,
                    target,
                }
            }
            2 => {
                let invocation_id = self.required_id()?;
                if !self.has_item {
                    return Err(missing("item"));
                }
                ClientMessage::StreamItem { invocation_id }
            }
            3 => {
                let invocation_id = self.required_id()?;
                if self.has_result && self.error.is_some() {
                    return Err(malformed(
                        "The 'error' and 'result' properties are mutually exclusive.",
                    ));
                }
                ClientMessage::Completion { invocation_id }
            }
            5 => ClientMessage::CancelInvocation {
                invocation_id: self.required_id()?,
            },
            6 => ClientMessage::Ping,
            7 => ClientMessage::Close {
                error: self.error.take(),
                allow_reconnect: self.allow_reconnect.unwrap_or(false),
            },
            8 => ClientMessage::Ack {
                sequence_id: self.sequence_id.ok_or_else(|| missing("sequenceId"))?,
            },
            9 => ClientMessage::Sequence {
                sequence_id: self.sequence_id.ok_or_else(|| missing("sequenceId"))?,
            },
            other => ClientMessage::Unknown {
                message_type: other,
            },
        })
    }
}

// ---- MessagePack inbound ---------------------------------------------------------------------

/// A bounds-checked MessagePack reader over one message body.
struct MpReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn truncated() -> DecodeError {
    malformed("truncated MessagePack value")
}

impl<'a> MpReader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        MpReader { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = self.peek().ok_or_else(truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], DecodeError> {
        let n = usize::try_from(n).map_err(|_| truncated())?;
        if n > self.remaining() {
            return Err(truncated());
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// An unsigned big-endian integer of `n` (1..=8) bytes.
    fn be(&mut self, n: u64) -> Result<u64, DecodeError> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    fn container_len(&mut self, n: u64) -> Result<usize, DecodeError> {
        // Every element takes at least one byte: a larger count cannot be honest.
        if n > self.remaining() as u64 {
            return Err(truncated());
        }
        Ok(n as usize)
    }

    fn array_len(&mut self) -> Result<usize, DecodeError> {
        let n = match self.byte()? {
            m @ 0x90..=0x9f => u64::from(m & 0x0f),
            0xdc => self.be(2)?,
            0xdd => self.be(4)?,
            _ => return Err(malformed("expected a MessagePack array")),
        };
        self.container_len(n)
    }

    fn map_len(&mut self) -> Result<usize, DecodeError> {
        let n = match self.byte()? {
            m @ 0x80..=0x8f => u64::from(m & 0x0f),
            0xde => self.be(2)?,
            0xdf => self.be(4)?,
            _ => return Err(malformed("expected a MessagePack map")),
        };
        self.container_len(n.saturating_mul(2)).map(|n| n / 2)
    }

    fn int(&mut self) -> Result<i64, DecodeError> {
        let m = self.byte()?;
        Ok(match m {
            0x00..=0x7f => i64::from(m),
            0xe0..=0xff => i64::from(m as i8),
            0xcc => self.be(1)? as i64,
            0xcd => self.be(2)? as i64,
            0xce => self.be(4)? as i64,
            0xcf => i64::try_from(self.be(8)?).map_err(|_| malformed("integer out of range"))?,
            0xd0 => i64::from(self.be(1)? as u8 as i8),
            0xd1 => i64::from(self.be(2)? as u16 as i16),
            0xd2 => i64::from(self.be(4)? as u32 as i32),
            0xd3 => self.be(8)? as i64,
            _ => return Err(malformed("expected a MessagePack integer")),
        })
    }

    fn uint(&mut self) -> Result<u64, DecodeError> {
        if self.peek() == Some(0xcf) {
            self.pos += 1;
            return self.be(8);
        }
        u64::try_from(self.int()?).map_err(|_| malformed("expected an unsigned integer"))
    }

    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.byte()? {
            0xc2 => Ok(false),
            0xc3 => Ok(true),
            _ => Err(malformed("expected a MessagePack boolean")),
        }
    }

    fn is_nil(&self) -> bool {
        self.peek() == Some(0xc0)
    }

    /// The raw bytes of a string if the next value is one (consumed), else `None` (untouched).
    fn try_str_bytes(&mut self) -> Result<Option<&'a [u8]>, DecodeError> {
        let len = match self.peek() {
            Some(m @ 0xa0..=0xbf) => {
                self.pos += 1;
                u64::from(m & 0x1f)
            }
            Some(0xd9) => {
                self.pos += 1;
                self.be(1)?
            }
            Some(0xda) => {
                self.pos += 1;
                self.be(2)?
            }
            Some(0xdb) => {
                self.pos += 1;
                self.be(4)?
            }
            _ => return Ok(None),
        };
        self.take(len).map(Some)
    }

    fn str(&mut self) -> Result<&'a str, DecodeError> {
        let bytes = self
            .try_str_bytes()?
            .ok_or_else(|| malformed("expected a MessagePack string"))?;
        std::str::from_utf8(bytes).map_err(|_| malformed("string is not UTF-8"))
    }

    fn str_or_nil(&mut self) -> Result<Option<&'a str>, DecodeError> {
        if self.is_nil() {
            self.pos += 1;
            return Ok(None);
        }
        self.str().map(Some)
    }

    /// Skips one value of any shape, iteratively (no recursion on nesting depth).
    fn skip(&mut self) -> Result<(), DecodeError> {
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            let m = self.byte()?;
            match m {
                0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => {}
                0x80..=0x8f => pending += 2 * u64::from(m & 0x0f),
                0x90..=0x9f => pending += u64::from(m & 0x0f),
                0xa0..=0xbf => {
                    self.take(u64::from(m & 0x1f))?;
                }
                0xc1 => return Err(malformed("invalid MessagePack marker 0xc1")),
                0xc4 | 0xd9 => {
                    let n = self.be(1)?;
                    self.take(n)?;
                }
                0xc5 | 0xda => {
                    let n = self.be(2)?;
                    self.take(n)?;
                }
                0xc6 | 0xdb => {
                    let n = self.be(4)?;
                    self.take(n)?;
                }
                0xc7 => {
                    let n = self.be(1)?;
                    self.take(n + 1)?;
                }
                0xc8 => {
                    let n = self.be(2)?;
                    self.take(n + 1)?;
                }
                0xc9 => {
                    let n = self.be(4)?;
                    self.take(n + 1)?;
                }
                0xca | 0xce | 0xd2 => {
                    self.take(4)?;
                }
                0xcb | 0xcf | 0xd3 => {
                    self.take(8)?;
                }
                0xcc | 0xd0 => {
                    self.take(1)?;
                }
                0xcd | 0xd1 => {
                    self.take(2)?;
                }
                0xd4 => {
                    self.take(2)?;
                }
                0xd5 => {
                    self.take(3)?;
                }
                0xd6 => {
                    self.take(5)?;
                }
                0xd7 => {
                    self.take(9)?;
                }
                0xd8 => {
                    self.take(17)?;
                }
                0xdc => pending += self.be(2)?,
                0xdd => pending += self.be(4)?,
                0xde => pending += 2 * self.be(2)?,
                0xdf => pending += 2 * self.be(4)?,
            }
            if pending > self.remaining() as u64 {
                return Err(truncated());
            }
        }
        Ok(())
    }

    /// The headers map: string keys and values, contents ignored.
    fn headers(&mut self) -> Result<(), DecodeError> {
        let n = self.map_len()?;
        for _ in 0..n {
            self.str()?;
            self.str()?;
        }
        Ok(())
    }

    fn owned_str(&mut self) -> Result<String, DecodeError> {
        self.str().map(str::to_owned)
    }
}

fn need_items(count: usize, min: usize) -> Result<(), DecodeError> {
    if count < min {
        Err(malformed(format!(
            "message has {count} item(s), at least {min} expected"
        )))
    } else {
        Ok(())
    }
}

/// Decodes one MessagePack message body (without its length prefix).
pub fn decode_msgpack_message(body: &[u8]) -> Result<ClientMessage, DecodeError> {
    let mut r = MpReader::new(body);
    let count = r.array_len()?;
    need_items(count, 1)?;
    let ty = r.int()?;
    Ok(match ty {
        1 | 4 => {
            need_items(count, 5)?;
            r.headers()?;
            let invocation_id = r.str_or_nil()?.filter(|s| !s.is_empty()).map(str::to_owned);
            let target = r.owned_str()?;
            let n = r.array_len()?;
            let mut arguments = Vec::with_capacity(n.min(16));
            for _ in 0..n {
                match r.try_str_bytes()? {
                    Some(bytes) => match std::str::from_utf8(bytes) {
                        Ok(s) => arguments.push(Arg::Str(s.to_owned())),
                        Err(_) => arguments.push(Arg::Other),
                    },
                    None => {
                        r.skip()?;
                        arguments.push(Arg::Other);
                    }
                }
            }
            let mut stream_ids = Vec::new();
            if count > 5 {
                let n = r.array_len()?;
                for _ in 0..n {
                    stream_ids.push(r.owned_str()?);
                }
            }
            if ty == 1 {
                ClientMessage::Invocation {
                    invocation_id,
                    target,
                    arguments,
                    stream_ids,
                }
            } else {
                ClientMessage::StreamInvocation {
                    invocation_id: invocation_id.ok_or_else(|| missing("invocationId"))?,
                    target,
                }
            }
        }
        2 => {
            need_items(count, 4)?;
            r.headers()?;
            let invocation_id = r.owned_str()?;
            r.skip()?;
            ClientMessage::StreamItem { invocation_id }
        }
        3 => {
            need_items(count, 4)?;
            r.headers()?;
            let invocation_id = r.owned_str()?;
            match r.int()? {
                1 => {
                    need_items(count, 5)?;
                    r.str()?;
                }
                2 => {}
                3 => {
                    need_items(count, 5)?;
                    r.skip()?;
                }
                _ => return Err(malformed("Invalid invocation result kind.")),
            }
            ClientMessage::Completion { invocation_id }
        }
        5 => {
            need_items(count, 3)?;
            r.headers()?;
            ClientMessage::CancelInvocation {
                invocation_id: r.owned_str()?,
            }
        }
        6 => ClientMessage::Ping,
        7 => {
            need_items(count, 2)?;
            let error = r.str_or_nil()?.map(str::to_owned);
            let allow_reconnect = if count > 2 { r.bool()? } else { false };
            ClientMessage::Close {
                error,
                allow_reconnect,
            }
        }
        8 | 9 => {
            need_items(count, 2)?;
            let sequence_id = r.uint()?;
            if ty == 8 {
                ClientMessage::Ack { sequence_id }
            } else {
                ClientMessage::Sequence { sequence_id }
            }
        }
        other => ClientMessage::Unknown {
            message_type: other,
        },
    })
}

// ---------------------------------------------------------------------------------------------
// Outbound
// ---------------------------------------------------------------------------------------------

/// A value that can travel as an argument or a result in both protocols.
pub trait HubPayload {
    fn write_json(&self, out: &mut Vec<u8>);
    fn write_msgpack(&self, out: &mut Vec<u8>);
}

impl<T: HubPayload + ?Sized> HubPayload for &T {
    fn write_json(&self, out: &mut Vec<u8>) {
        (**self).write_json(out)
    }
    fn write_msgpack(&self, out: &mut Vec<u8>) {
        (**self).write_msgpack(out)
    }
}

impl<T: HubPayload> HubPayload for Option<T> {
    fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Some(v) => v.write_json(out),
            None => out.extend_from_slice(b"null"),
        }
    }
    fn write_msgpack(&self, out: &mut Vec<u8>) {
        match self {
            Some(v) => v.write_msgpack(out),
            None => out.push(0xc0),
        }
    }
}

impl HubPayload for str {
    fn write_json(&self, out: &mut Vec<u8>) {
        json_str(out, self)
    }
    fn write_msgpack(&self, out: &mut Vec<u8>) {
        mp_str(out, self)
    }
}

impl HubPayload for String {
    fn write_json(&self, out: &mut Vec<u8>) {
        json_str(out, self)
    }
    fn write_msgpack(&self, out: &mut Vec<u8>) {
        mp_str(out, self)
    }
}

impl HubPayload for bool {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(if *self { b"true" } else { b"false" })
    }
    fn write_msgpack(&self, out: &mut Vec<u8>) {
        out.push(if *self { 0xc3 } else { 0xc2 })
    }
}

impl HubPayload for i64 {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.to_string().as_bytes())
    }
    fn write_msgpack(&self, out: &mut Vec<u8>) {
        mp_int(out, *self)
    }
}

impl HubPayload for u64 {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.to_string().as_bytes())
    }
    fn write_msgpack(&self, out: &mut Vec<u8>) {
        mp_uint(out, *self)
    }
}

impl HubPayload for Uuid {
    fn write_json(&self, out: &mut Vec<u8>) {
        let mut buf = Uuid::encode_buffer();
        json_str(out, self.hyphenated().encode_lower(&mut buf))
    }
    fn write_msgpack(&self, out: &mut Vec<u8>) {
        let mut buf = Uuid::encode_buffer();
        mp_str(out, self.hyphenated().encode_lower(&mut buf))
    }
}

/// JSON: RFC 3339 string; MessagePack: timestamp extension (type -1).
impl HubPayload for Timestamp {
    fn write_json(&self, out: &mut Vec<u8>) {
        json_str(out, &self.rfc3339())
    }
    fn write_msgpack(&self, out: &mut Vec<u8>) {
        mp_timestamp(out, *self)
    }
}

/// The `OrderStatusBroadcastDto`: camelCase keys in both protocols, status as its name.
impl HubPayload for OrderStatusBroadcast {
    fn write_json(&self, out: &mut Vec<u8>) {
        let mut first = true;
        out.push(b'{');
        self.for_each_field(&mut |key, value| {
            if !first {
                out.push(b',');
            }
            first = false;
            json_str(out, key);
            out.push(b':');
            value.write_json(out);
        });
        out.push(b'}');
    }
    fn write_msgpack(&self, out: &mut Vec<u8>) {
        mp_map_len(out, DTO_FIELDS);
        self.for_each_field(&mut |key, value| {
            mp_str(out, key);
            value.write_msgpack(out);
        });
    }
}

const DTO_FIELDS: usize = 11;

trait DtoFields {
    fn for_each_field(&self, f: &mut dyn FnMut(&str, &dyn HubPayload));
}

impl DtoFields for OrderStatusBroadcast {
    fn for_each_field(&self, f: &mut dyn FnMut(&str, &dyn HubPayload)) {
        f("orderId", &self.order_id);
        f("orderNumber", &self.order_number);
        f("status", &self.status.as_str());
        f("restaurantId", &self.restaurant_id);
        f("lastUpdateTimestamp", &self.last_update);
        f("estimatedDeliveryTime", &self.estimated_delivery);
        f("actualDeliveryTime", &self.actual_delivery);
        f("deliveredAt", &self.delivered_at);
        f("occurredOnUtc", &self.occurred_on);
        f("eventId", &self.event_id);
        f("version", &self.version);
    }
}

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

/// Encodes a message as a client would send it (for tests and test clients). `Arg::Other`
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

// ---- low-level writers -----------------------------------------------------------------------

fn json_frame(f: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut out = Vec::with_capacity(128);
    f(&mut out);
    out.push(RECORD_SEPARATOR);
    Bytes::from(out)
}

/// Writes the body after 5 reserved bytes, then puts the VarInt right before it.
fn mp_frame(f: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    const RESERVED: usize = 5;
    let mut out = vec![0u8; RESERVED];
    f(&mut out);
    let mut len = (out.len() - RESERVED) as u64;
    let mut prefix = [0u8; RESERVED];
    let mut n = 0;
    loop {
        let b = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 || n == RESERVED - 1 {
            prefix[n] = b;
            n += 1;
            break;
        }
        prefix[n] = b | 0x80;
        n += 1;
    }
    let start = RESERVED - n;
    out[start..RESERVED].copy_from_slice(&prefix[..n]);
    Bytes::from(out).slice(start..)
}

/// A JSON string literal; control characters escaped, everything else verbatim UTF-8.
fn json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 2);
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[run..i]);
        run = i + 1;
        if esc.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0x0f)]);
        } else {
            out.extend_from_slice(esc);
        }
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

fn mp_uint(out: &mut Vec<u8>, v: u64) {
    if v <= 0x7f {
        out.push(v as u8);
    } else if v <= 0xff {
        out.extend_from_slice(&[0xcc, v as u8]);
    } else if v <= 0xffff {
        out.push(0xcd);
        out.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v <= 0xffff_ffff {
        out.push(0xce);
        out.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

fn mp_int(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        mp_uint(out, v as u64);
    } else if v >= -32 {
        out.push(v as i8 as u8);
    } else if v >= i64::from(i8::MIN) {
        out.extend_from_slice(&[0xd0, v as i8 as u8]);
    } else if v >= i64::from(i16::MIN) {
        out.push(0xd1);
        out.extend_from_slice(&(v as i16).to_be_bytes());
    } else if v >= i64::from(i32::MIN) {
        out.push(0xd2);
        out.extend_from_slice(&(v as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

fn mp_len_header(out: &mut Vec<u8>, len: usize, fix: u8, fix_max: usize, m16: u8, m32: u8) {
    if len <= fix_max {
        out.push(fix | len as u8);
    } else if len <= 0xffff {
        out.push(m16);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m32);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
}

fn mp_array_len(out: &mut Vec<u8>, len: usize) {
    mp_len_header(out, len, 0x90, 15, 0xdc, 0xdd);
}

fn mp_map_len(out: &mut Vec<u8>, len: usize) {
    mp_len_header(out, len, 0x80, 15, 0xde, 0xdf);
}

fn mp_str(out: &mut Vec<u8>, s: &str) {
    let len = s.len();
    if len <= 31 {
        out.push(0xa0 | len as u8);
    } else if len <= 0xff {
        out.extend_from_slice(&[0xd9, len as u8]);
    } else if len <= 0xffff {
        out.push(0xda);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
    out.extend_from_slice(s.as_bytes());
}

/// The MessagePack timestamp extension (type -1) in its smallest exact form.
fn mp_timestamp(out: &mut Vec<u8>, t: Timestamp) {
    let (secs, nanos) = t.secs_nanos();
    if (0..1i64 << 34).contains(&secs) {
        if nanos == 0 && secs <= i64::from(u32::MAX) {
            // timestamp32: u32 seconds.
            out.extend_from_slice(&[0xd6, 0xff]);
            out.extend_from_slice(&(secs as u32).to_be_bytes());
        } else {
            // timestamp64: 30-bit nanoseconds, 34-bit seconds.
            out.extend_from_slice(&[0xd7, 0xff]);
            out.extend_from_slice(&((u64::from(nanos) << 34) | secs as u64).to_be_bytes());
        }
    } else {
        // timestamp96: u32 nanoseconds, i64 seconds (negative seconds too).
        out.extend_from_slice(&[0xc7, 0x0c, 0xff]);
        out.extend_from_slice(&nanos.to_be_bytes());
        out.extend_from_slice(&secs.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::status::OrderStatus;
    use proptest::prelude::*;

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
                invocation(Some("0"), "Send", vec![Arg::Other]),
                invocation(None, "Send", vec![Arg::Other]),
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
                        Arg::Other,
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
            invocation(Some("0"), "Send", vec![Arg::Other])
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
            decode(
                r#"{"type":1,"invocationId":"","target":"S","arguments":[],"headers":{"a":"b"}}"#
            )
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
            r#""version":3}]}"#,
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
        assert_eq!(r.map_len().unwrap(), 11);
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
}
