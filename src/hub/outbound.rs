//! A connection's bounded outbound queue: the subscription table pushes encoded frames without
//! waiting, the connection drains them in batches. A push that finds the queue full marks the
//! connection a slow consumer (it is then closed). The frames live in a deque handed whole to
//! the connection when it drains it, so an idle connection holds no queue memory.

use super::protocol::Protocol;
use super::quota::UserUsage;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// Most queued frames merged into one WebSocket message.
pub(super) const MAX_BATCH: usize = 64;

/// A connection's bounded outbound queue, shared with the subscription table. The frames live
/// in a deque that is handed whole to the connection when it drains it, so an idle connection
/// holds no queue memory.
pub struct Outbound {
    pub id: u64,
    pub protocol: Protocol,
    queue: Mutex<Queue>,
    /// The user whose subscriptions this queue stands for (none in benches and tests).
    owner: Option<Arc<UserUsage>>,
}

struct Queue {
    frames: VecDeque<Bytes>,
    limit: usize,
    /// Set by the push that found the queue full; the connection then closes.
    slow: bool,
    /// The connection has ended: pushes are dropped.
    closed: bool,
    /// The connection task, when it waits for frames.
    waker: Option<Waker>,
}

/// What a connection finds in its queue.
pub(super) enum Queued {
    Frames(VecDeque<Bytes>),
    Slow,
}

impl Outbound {
    /// A queue for connection `id`, speaking `protocol`, holding at most `limit` frames.
    pub fn new(id: u64, protocol: Protocol, limit: usize) -> Self {
        Self::owned(id, protocol, limit, None)
    }

    /// A queue whose subscriptions count against `owner`'s per-user cap.
    pub(super) fn owned(
        id: u64,
        protocol: Protocol,
        limit: usize,
        owner: Option<Arc<UserUsage>>,
    ) -> Self {
        Outbound {
            id,
            protocol,
            owner,
            queue: Mutex::new(Queue {
                frames: VecDeque::new(),
                limit: limit.max(1),
                slow: false,
                closed: false,
                waker: None,
            }),
        }
    }

    /// Counts one more subscription against the owner's cap of `limit`; false at the cap.
    pub(super) fn take_subscription(&self, limit: usize) -> bool {
        self.owner
            .as_ref()
            .is_none_or(|o| o.try_add_subscription(limit))
    }

    /// Gives `n` subscriptions that left the table back to the owner's per-user count.
    pub(super) fn release_subscriptions(&self, n: usize) {
        if let Some(o) = &self.owner {
            o.remove_subscriptions(n);
        }
    }

    /// Every operation leaves the queue consistent before anything that could panic.
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a frame without waiting. Returns false when this push found the queue full: the
    /// connection is then closed as a slow consumer (reported once).
    pub fn push(&self, frame: Bytes) -> bool {
        let mut q = self.lock();
        if q.closed || q.slow {
            return true;
        }
        let accepted = q.frames.len() < q.limit;
        if accepted {
            q.frames.push_back(frame);
        } else {
            q.slow = true;
        }
        let waker = q.waker.take();
        drop(q);
        if let Some(w) = waker {
            w.wake();
        }
        accepted
    }

    /// Empties the queue without sending anything; returns how many frames it held. For
    /// benches and tests that stand in for the connection.
    pub fn discard_queued(&self) -> usize {
        let frames = std::mem::take(&mut self.lock().frames);
        frames.len()
    }

    /// The next batch (at most [`MAX_BATCH`] frames), or `Slow` once the queue overflowed.
    pub(super) fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Queued> {
        let mut q = self.lock();
        if q.slow {
            return Poll::Ready(Queued::Slow);
        }
        if q.frames.is_empty() {
            if !q.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                q.waker = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        let frames = if q.frames.len() <= MAX_BATCH {
            std::mem::take(&mut q.frames)
        } else {
            q.frames.drain(..MAX_BATCH).collect()
        };
        Poll::Ready(Queued::Frames(frames))
    }

    /// The connection has ended: drops what is queued and refuses (silently) what comes later.
    pub(super) fn close(&self) {
        let mut q = self.lock();
        q.closed = true;
        let frames = std::mem::take(&mut q.frames);
        let waker = q.waker.take();
        drop(q);
        drop((frames, waker));
    }
}

/// Joins a batch into one message payload (SignalR records are self-delimiting).
pub(super) fn merge(mut frames: VecDeque<Bytes>) -> Bytes {
    if frames.len() == 1 {
        return frames.pop_front().unwrap_or_default();
    }
    let mut buf = BytesMut::with_capacity(frames.iter().map(Bytes::len).sum());
    for b in &frames {
        buf.extend_from_slice(b);
    }
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll(out: &Outbound) -> Poll<Queued> {
        out.poll_next(&mut Context::from_waker(Waker::noop()))
    }

    fn frames(p: Poll<Queued>) -> Vec<Bytes> {
        match p {
            Poll::Ready(Queued::Frames(f)) => f.into(),
            Poll::Ready(Queued::Slow) => panic!("slow"),
            Poll::Pending => panic!("pending"),
        }
    }

    #[test]
    fn an_empty_queue_waits_and_a_push_hands_over_what_waits() {
        let out = Outbound::new(1, Protocol::Json, 4);
        assert!(poll(&out).is_pending());
        assert!(out.push(Bytes::from_static(b"a")));
        assert!(out.push(Bytes::from_static(b"b")));
        assert_eq!(
            frames(poll(&out)),
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]
        );
        assert!(poll(&out).is_pending());
    }

    #[test]
    fn the_push_past_the_limit_marks_a_slow_consumer_once() {
        let out = Outbound::new(1, Protocol::MessagePack, 2);
        assert!(out.push(Bytes::from_static(b"1")));
        assert!(out.push(Bytes::from_static(b"2")));
        assert!(
            !out.push(Bytes::from_static(b"3")),
            "the overflowing push reports"
        );
        assert!(
            out.push(Bytes::from_static(b"4")),
            "later pushes are dropped quietly"
        );
        assert!(matches!(poll(&out), Poll::Ready(Queued::Slow)));
    }

    #[test]
    fn a_long_queue_drains_in_batches() {
        let out = Outbound::new(1, Protocol::Json, 1000);
        for i in 0..(MAX_BATCH + 3) {
            assert!(out.push(Bytes::from(i.to_string())));
        }
        assert_eq!(frames(poll(&out)).len(), MAX_BATCH);
        let rest = frames(poll(&out));
        assert_eq!(rest.len(), 3);
        assert_eq!(rest[0], Bytes::from(MAX_BATCH.to_string()), "order is kept");
    }

    #[test]
    fn a_closed_queue_drops_what_it_held_and_what_comes_later() {
        let out = Outbound::new(1, Protocol::Json, 4);
        assert!(out.push(Bytes::from_static(b"a")));
        out.close();
        assert!(out.push(Bytes::from_static(b"b")));
        assert_eq!(out.discard_queued(), 0);
        assert!(poll(&out).is_pending());
    }

    #[test]
    fn a_zero_limit_still_holds_one_frame() {
        let out = Outbound::new(1, Protocol::Json, 0);
        assert!(out.push(Bytes::from_static(b"a")));
        assert!(!out.push(Bytes::from_static(b"b")));
    }

    #[test]
    fn a_batch_becomes_one_payload() {
        let one: VecDeque<Bytes> = [Bytes::from_static(b"x")].into();
        assert_eq!(merge(one), Bytes::from_static(b"x"));
        let many: VecDeque<Bytes> = [b"a\x1e".as_slice(), b"bc\x1e"]
            .into_iter()
            .map(Bytes::from_static)
            .collect();
        assert_eq!(merge(many), Bytes::from_static(b"a\x1ebc\x1e"));
        assert_eq!(merge(VecDeque::new()), Bytes::new());
    }
}
