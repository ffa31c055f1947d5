//! The handshake: the first record a client sends (`{"protocol":…,"version":…}` + `0x1E`),
//! parsed incrementally, and the server's answer (`{}` or `{"error":…}`).

use super::json::json_str;
use super::{Protocol, MAX_HANDSHAKE_SIZE, RECORD_SEPARATOR};
use bytes::Bytes;

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
    /// What went wrong, for the log: never the client's own text (which the response quotes,
    /// as ASP.NET does, and which may be anything, a token included).
    pub fn log_label(&self) -> String {
        match self {
            HandshakeError::UnsupportedProtocol(_) => "unsupported protocol".into(),
            HandshakeError::UnsupportedVersion { version, .. } => {
                format!("unsupported version {version}")
            }
            HandshakeError::Malformed => "malformed handshake".into(),
            HandshakeError::TooLarge => "handshake too large".into(),
        }
    }

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
