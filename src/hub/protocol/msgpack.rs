//! The MessagePack protocol: decoding one client message body (a bounds-checked reader) and
//! the low-level writers the encoders share (ints, strings, lengths, the timestamp extension).

use super::message::{malformed, missing, Arg, ClientMessage, DecodeError};
use crate::domain::Timestamp;
use bytes::Bytes;

/// A bounds-checked MessagePack reader over one message body.
pub(super) struct MpReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn truncated() -> DecodeError {
    malformed("truncated MessagePack value")
}

impl<'a> MpReader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        MpReader { buf, pos: 0 }
    }

    pub(super) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(super) fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    pub(super) fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = self.peek().ok_or_else(truncated)?;
        self.pos += 1;
        Ok(b)
    }

    pub(super) fn take(&mut self, n: u64) -> Result<&'a [u8], DecodeError> {
        let n = usize::try_from(n).map_err(|_| truncated())?;
        if n > self.remaining() {
            return Err(truncated());
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// An unsigned big-endian integer of `n` (1..=8) bytes.
    pub(super) fn be(&mut self, n: u64) -> Result<u64, DecodeError> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    pub(super) fn container_len(&mut self, n: u64) -> Result<usize, DecodeError> {
        // Every element takes at least one byte: a larger count cannot be honest.
        if n > self.remaining() as u64 {
            return Err(truncated());
        }
        Ok(n as usize)
    }

    pub(super) fn array_len(&mut self) -> Result<usize, DecodeError> {
        let n = match self.byte()? {
            m @ 0x90..=0x9f => u64::from(m & 0x0f),
            0xdc => self.be(2)?,
            0xdd => self.be(4)?,
            _ => return Err(malformed("expected a MessagePack array")),
        };
        self.container_len(n)
    }

    pub(super) fn map_len(&mut self) -> Result<usize, DecodeError> {
        let n = match self.byte()? {
            m @ 0x80..=0x8f => u64::from(m & 0x0f),
            0xde => self.be(2)?,
            0xdf => self.be(4)?,
            _ => return Err(malformed("expected a MessagePack map")),
        };
        self.container_len(n.saturating_mul(2)).map(|n| n / 2)
    }

    pub(super) fn int(&mut self) -> Result<i64, DecodeError> {
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

    pub(super) fn uint(&mut self) -> Result<u64, DecodeError> {
        if self.peek() == Some(0xcf) {
            self.pos += 1;
            return self.be(8);
        }
        u64::try_from(self.int()?).map_err(|_| malformed("expected an unsigned integer"))
    }

    pub(super) fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.byte()? {
            0xc2 => Ok(false),
            0xc3 => Ok(true),
            _ => Err(malformed("expected a MessagePack boolean")),
        }
    }

    pub(super) fn is_nil(&self) -> bool {
        self.peek() == Some(0xc0)
    }

    /// The raw bytes of a string if the next value is one (consumed), else `None` (untouched).
    pub(super) fn try_str_bytes(&mut self) -> Result<Option<&'a [u8]>, DecodeError> {
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

    pub(super) fn str(&mut self) -> Result<&'a str, DecodeError> {
        let bytes = self
            .try_str_bytes()?
            .ok_or_else(|| malformed("expected a MessagePack string"))?;
        std::str::from_utf8(bytes).map_err(|_| malformed("string is not UTF-8"))
    }

    pub(super) fn str_or_nil(&mut self) -> Result<Option<&'a str>, DecodeError> {
        if self.is_nil() {
            self.pos += 1;
            return Ok(None);
        }
        self.str().map(Some)
    }

    /// Skips one value of any shape, iteratively (no recursion on nesting depth).
    pub(super) fn skip(&mut self) -> Result<(), DecodeError> {
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
    pub(super) fn headers(&mut self) -> Result<(), DecodeError> {
        let n = self.map_len()?;
        for _ in 0..n {
            self.str()?;
            self.str()?;
        }
        Ok(())
    }

    pub(super) fn owned_str(&mut self) -> Result<String, DecodeError> {
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
                    None if matches!(r.peek(), Some(0x00..=0x7f | 0xcc..=0xcf)) => {
                        arguments.push(Arg::UInt(r.uint()?));
                    }
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

// ---- writers ---------------------------------------------------------------------------------

/// Writes the body after 5 reserved bytes, then puts the VarInt right before it.
pub(super) fn mp_frame(f: impl FnOnce(&mut Vec<u8>)) -> Bytes {
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

pub(super) fn mp_uint(out: &mut Vec<u8>, v: u64) {
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

pub(super) fn mp_int(out: &mut Vec<u8>, v: i64) {
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

pub(super) fn mp_len_header(
    out: &mut Vec<u8>,
    len: usize,
    fix: u8,
    fix_max: usize,
    m16: u8,
    m32: u8,
) {
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

pub(super) fn mp_array_len(out: &mut Vec<u8>, len: usize) {
    mp_len_header(out, len, 0x90, 15, 0xdc, 0xdd);
}

pub(super) fn mp_map_len(out: &mut Vec<u8>, len: usize) {
    mp_len_header(out, len, 0x80, 15, 0xde, 0xdf);
}

pub(super) fn mp_str(out: &mut Vec<u8>, s: &str) {
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
pub(super) fn mp_timestamp(out: &mut Vec<u8>, t: Timestamp) {
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
