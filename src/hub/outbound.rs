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
use uuid::Uuid;

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
    /// While a `ResumeRestaurant` replays (`hold` … `release`): live frames wait here, each
    /// with the restaurant and sequence of its event when it is one.
    held: Option<VecDeque<(Bytes, EventTag)>>,
    /// Per resumed restaurant, the newest sequence a replay carried: a live event of that
    /// restaurant at or below it (committed before the replay's read, published after it) is
    /// a duplicate and dropped. One entry per resumed restaurant, so at most the
    /// subscription cap.
    floors: Vec<(Uuid, u64)>,
}

/// The restaurant and sequence of the event a frame carries (`None`: not an event).
type EventTag = Option<(Uuid, u64)>;

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
                held: None,
                floors: Vec::new(),
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
        self.push_tagged(frame, None)
    }

    /// Queues the frame of the event `seq` of `restaurant` (see [`Outbound::push`]).
    pub fn push_event(&self, frame: Bytes, restaurant: Uuid, seq: u64) -> bool {
        self.push_tagged(frame, Some((restaurant, seq)))
    }

    fn push_tagged(&self, frame: Bytes, event: EventTag) -> bool {
        let mut q = self.lock();
        if q.closed || q.slow {
            return true;
        }
        if let Some((r, seq)) = event {
            if q.floors.iter().any(|(f, upto)| *f == r && seq <= *upto) {
                return true;
            }
        }
        let held = q.held.as_ref().map_or(0, VecDeque::len);
        let accepted = q.frames.len() + held < q.limit;
        if !accepted {
            q.slow = true;
        } else if let Some(h) = q.held.as_mut() {
            h.push_back((frame, event));
            return true;
        } else {
            q.frames.push_back(frame);
        }
        let waker = q.waker.take();
        drop(q);
        if let Some(w) = waker {
            w.wake();
        }
        accepted
    }

    /// Starts holding live frames back (a resume is about to subscribe and read the outbox).
    pub(super) fn hold(&self) {
        self.lock().held.get_or_insert_with(VecDeque::new);
    }

    /// Ends a hold: queues `replay` (outside the frame limit: the resume bounds it), then the
    /// held live frames except those of `restaurant`'s events up to `upto`, which the replay
    /// already carries (or which precede the cursor). With `floor`, later live events of
    /// `restaurant` up to `upto` are dropped too.
    pub(super) fn release(&self, replay: Vec<Bytes>, restaurant: Uuid, upto: u64, floor: bool) {
        let mut q = self.lock();
        let held = q.held.take().unwrap_or_default();
        if q.closed || q.slow {
            return;
        }
        if floor {
            match q.floors.iter_mut().find(|(r, _)| *r == restaurant) {
                Some((_, f)) => *f = (*f).max(upto),
                None => q.floors.push((restaurant, upto)),
            }
        }
        q.frames.extend(replay);
        for (frame, event) in held {
            match event {
                Some((r, seq)) if r == restaurant && seq <= upto => {}
                _ => q.frames.push_back(frame),
            }
        }
        let waker = q.waker.take();
        drop(q);
        if let Some(w) = waker {
            w.wake();
        }
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
    fn a_release_queues_the_replay_then_the_held_frames_it_does_not_carry() {
        let (r, other) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let out = Outbound::new(1, Protocol::Json, 8);
        assert!(out.push(Bytes::from_static(b"before")));
        out.hold();
        assert!(out.push_event(Bytes::from_static(b"r5"), r, 5));
        assert!(out.push_event(Bytes::from_static(b"o6"), other, 6));
        assert!(out.push_event(Bytes::from_static(b"r7"), r, 7));
        assert!(
            poll(&out).is_ready(),
            "what came before the hold still flows"
        );
        assert!(poll(&out).is_pending(), "held frames wait");
        out.release(
            vec![Bytes::from_static(b"r4"), Bytes::from_static(b"r5")],
            r,
            6,
            true,
        );
        // Published late (committed before the replay's read): a duplicate, dropped.
        assert!(out.push_event(Bytes::from_static(b"r6"), r, 6));
        assert!(out.push_event(Bytes::from_static(b"r8"), r, 8));
        let got: Vec<Bytes> = frames(poll(&out));
        let want: Vec<&[u8]> = vec![b"r4", b"r5", b"o6", b"r7", b"r8"];
        assert_eq!(got.iter().map(|b| &b[..]).collect::<Vec<_>>(), want);
    }

    #[test]
    fn held_frames_count_against_the_limit() {
        let out = Outbound::new(1, Protocol::Json, 2);
        out.hold();
        assert!(out.push(Bytes::from_static(b"a")));
        assert!(out.push(Bytes::from_static(b"b")));
        assert!(!out.push(Bytes::from_static(b"c")));
        out.release(Vec::new(), Uuid::nil(), 0, false);
        assert!(matches!(poll(&out), Poll::Ready(Queued::Slow)));
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
