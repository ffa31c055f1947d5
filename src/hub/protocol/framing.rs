//! Inbound framing: the per-connection stream decoder that cuts client messages out of
//! WebSocket payloads (JSON records end with `0x1E`; MessagePack messages carry a VarInt length
//! prefix) and hands each to its protocol's decoder.

use super::json::decode_json_record;
use super::message::{malformed, ClientMessage, DecodeError};
use super::msgpack::decode_msgpack_message;
use super::{Protocol, DEFAULT_MAX_MESSAGE_SIZE, RECORD_SEPARATOR};

/// Per-connection inbound stream decoder: push every WebSocket payload, then drain complete
/// messages with [`Decoder::next_message`]. A partial tail is kept across payloads. After an
/// error the decoder keeps answering that error.
#[derive(Debug)]
pub struct Decoder {
    protocol: Protocol,
    max: usize,
    pub(super) buf: Vec<u8>,
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
pub(super) const RECLAIM_FLOOR: usize = 4096;

/// Reads a SignalR VarInt length prefix: `Ok(None)` if incomplete, else (value, bytes used).
pub(super) fn read_varint(buf: &[u8]) -> Result<Option<(u64, usize)>, DecodeError> {
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
