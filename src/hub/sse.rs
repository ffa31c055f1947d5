//! The Server-Sent Events half-transport's framing: each batch of outbound frames becomes one
//! unnamed event whose payload is split into `data:` lines (SSE cannot carry a line break
//! inside a field; the client joins the lines with `\n`), and [`EventStream`] turns a
//! connection's [`Reader`] into the chunks of a `text/event-stream` response body. Text only:
//! negotiate advertises SSE with the `Text` transfer format, and a MessagePack handshake on an
//! SSE connection is refused (`link.rs`).

use super::link::{Pulled, Reader};
use bytes::{BufMut, Bytes, BytesMut};
use std::task::{Context, Poll};

/// Sent first: a comment line, so the response starts (and browsers fire `open`) at once.
const PRELUDE: &[u8] = b":\r\n";

/// One SSE event carrying `payload`: a `data: ` line per line of it (`\r\n`, `\n` or `\r`
/// end a line), then the blank line that ends the event.
pub fn encode_event(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 16);
    let mut rest = payload;
    loop {
        let cut = rest.iter().position(|&b| b == b'\n' || b == b'\r');
        out.put_slice(b"data: ");
        match cut {
            None => {
                out.put_slice(rest);
                out.put_slice(b"\r\n");
                break;
            }
            Some(i) => {
                out.put_slice(&rest[..i]);
                out.put_slice(b"\r\n");
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[i + skip..];
            }
        }
    }
    out.put_slice(b"\r\n");
    out.freeze()
}

/// The body of one SSE response: the prelude, then an event per batch, until the connection
/// ends. Dropping it (the client went away) ends the connection.
pub struct EventStream {
    reader: Reader,
    started: bool,
}

impl EventStream {
    pub fn new(reader: Reader) -> Self {
        EventStream {
            reader,
            started: false,
        }
    }

    /// The next chunk of the body; `None` at its end.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if !self.started {
            self.started = true;
            return Poll::Ready(Some(Bytes::from_static(PRELUDE)));
        }
        match self.reader.poll_pull(cx) {
            Poll::Ready(Pulled::Data(d)) => Poll::Ready(Some(encode_event(&d))),
            Poll::Ready(Pulled::End) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::encode_event;

    #[test]
    fn a_payload_becomes_data_lines_and_a_blank_line() {
        assert_eq!(
            &encode_event(b"{\"type\":6}\x1e")[..],
            b"data: {\"type\":6}\x1e\r\n\r\n"
        );
        assert_eq!(
            &encode_event(b"a\nb\r\nc\rd")[..],
            b"data: a\r\ndata: b\r\ndata: c\r\ndata: d\r\n\r\n"
        );
        assert_eq!(&encode_event(b"x\n")[..], b"data: x\r\ndata: \r\n\r\n");
        assert_eq!(&encode_event(b"")[..], b"data: \r\n\r\n");
    }
}
