//! The JSON protocol: decoding one client record (a streaming envelope reader that skips what
//! the hub does not look at) and the low-level writers the encoders share.

use super::message::{malformed, missing, Arg, ClientMessage, DecodeError};
use super::RECORD_SEPARATOR;
use bytes::Bytes;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;

/// Decodes one JSON record (without its `0x1E`).
pub fn decode_json_record(record: &[u8]) -> Result<ClientMessage, DecodeError> {
    let env: Envelope = serde_json::from_slice(record).map_err(|e| {
        // serde's own text quotes the offending value, and clients put tokens in messages
        // (even in the wrong places): say what kind of error and where, never what was sent.
        let kind = match e.classify() {
            serde_json::error::Category::Syntax => "not JSON",
            serde_json::error::Category::Eof => "truncated JSON",
            serde_json::error::Category::Data => "a property of the wrong type or value",
            serde_json::error::Category::Io => "unreadable",
        };
        malformed(format!(
            "invalid JSON hub message: {kind} at line {}, column {}",
            e.line(),
            e.column()
        ))
    })?;
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
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Arg, E> {
                Ok(u64::try_from(v).map_or(Arg::Other, Arg::UInt))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Arg, E> {
                Ok(Arg::UInt(v))
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

// ---- writers ---------------------------------------------------------------------------------

pub(super) fn json_frame(f: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut out = Vec::with_capacity(128);
    f(&mut out);
    out.push(RECORD_SEPARATOR);
    Bytes::from(out)
}

/// A JSON string literal; control characters escaped, everything else verbatim UTF-8.
pub(super) fn json_str(out: &mut Vec<u8>, s: &str) {
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
