//! The long-polling half-transport's poll: wait for a connection's next frames, at most the
//! poll timeout (ASP.NET's 90 s by default), and say what the HTTP answer is. The rules of
//! the transport (one poll at a time, the immediate first poll, DELETE) are in the HTTP adapter
//! and `link.rs`; this is the wait itself.

use super::link::{Pulled, Reader};
use bytes::Bytes;
use std::time::Duration;

/// What one poll answers.
pub enum PollAnswer {
    /// 200 with these frames (binary for MessagePack).
    Data(Bytes),
    /// 200 with an empty body: nothing came within the poll timeout; poll again.
    TimedOut,
    /// 204: the connection has ended.
    Closed,
}

/// Waits for the reader's next frames, at most `timeout`.
pub async fn poll(mut reader: Reader, timeout: Duration) -> PollAnswer {
    let next = std::future::poll_fn(|cx| reader.poll_pull(cx));
    match tokio::time::timeout(timeout, next).await {
        Ok(Pulled::Data(d)) => PollAnswer::Data(d),
        Ok(Pulled::End) => PollAnswer::Closed,
        Err(_) => PollAnswer::TimedOut,
    }
}
