//! Stateful reconnect (ASP.NET Core 8's `withStatefulReconnect()`), the state it needs and the
//! registry through which a new WebSocket finds its connection again. Kept apart from the
//! socket loop (`connection.rs`) so the loop only asks: number this, drop what was acked, may
//! I process that, who wants this socket.
//!
//! - [`ReplayBuffer`]: what the server sent (or queued while the socket was gone), numbered from
//!   1, kept until the client acks it, bounded in bytes (ASP.NET's default is 100,000);
//! - [`InboundSequence`]: counts the client's messages, dedupes what it resends after a
//!   reconnect, and says when to send our Ack (about once a second, as ASP.NET and the JS client);
//! - [`Resumable`] and [`Handoff`]: connections that may be reattached, by connection token;
//!   the HTTP side hands a new upgrade to the waiting connection through its handoff.
//!
//! Wire rules: `shared/spec/signalr-protocol-notes.md` section 6.5.

use super::connection::Io;
use super::SlotGuard;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

/// How long after receiving a message the server acks it (ASP.NET and the JS client: 1 s).
pub(super) const ACK_DELAY: Duration = Duration::from_secs(1);

/// Sent messages the client has not acked yet, oldest first, numbered from 1.
#[derive(Default)]
pub(super) struct ReplayBuffer {
    frames: VecDeque<(u64, Bytes)>,
    bytes: usize,
    /// The id the next message gets.
    next_id: u64,
}

impl ReplayBuffer {
    pub fn new() -> Self {
        ReplayBuffer {
            frames: VecDeque::new(),
            bytes: 0,
            next_id: 1,
        }
    }

    /// Numbers and keeps one message (a frame holds exactly one).
    pub fn push(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.frames.push_back((self.next_id, frame));
        self.next_id += 1;
    }

    /// The client received everything up to `id`: forget it. Returns how many were dropped.
    pub fn ack(&mut self, id: u64) -> usize {
        let mut n = 0;
        while let Some((first, frame)) = self.frames.front() {
            if *first > id {
                break;
            }
            self.bytes -= frame.len();
            self.frames.pop_front();
            n += 1;
        }
        if self.frames.is_empty() {
            // Give a burst's memory back once it is all acked.
            self.frames = VecDeque::new();
        }
        n
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// What the `Sequence` after a reconnect announces: the oldest unacked id, or the next id
    /// when everything was acked.
    pub fn first_unacked(&self) -> u64 {
        self.frames.front().map_or(self.next_id, |(id, _)| *id)
    }

    /// The unacked messages, oldest first, for the replay.
    pub fn frames(&self) -> impl Iterator<Item = &Bytes> {
        self.frames.iter().map(|(_, f)| f)
    }
}

/// The client's side of the numbering: which of its messages were processed, and when our Ack
/// is due.
pub(super) struct InboundSequence {
    /// The id the client's next sequenced message has.
    next: u64,
    /// The highest id processed.
    latest: u64,
    /// After a reconnect everything is ignored until the client's `Sequence`.
    awaiting_sequence: bool,
    /// When to send our Ack (none: nothing new to ack).
    pub ack_due: Option<Instant>,
}

/// The client announced a sequence id beyond what it has sent: a protocol error (ASP.NET closes).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct SequenceAhead;

impl InboundSequence {
    pub fn new() -> Self {
        InboundSequence {
            next: 1,
            latest: 0,
            awaiting_sequence: false,
            ack_due: None,
        }
    }

    /// A new socket was attached: ignore the client until its `Sequence`.
    pub fn reattached(&mut self) {
        self.awaiting_sequence = true;
    }

    /// Whether to process a sequenced message (false: a duplicate, or before the `Sequence`).
    pub fn accept(&mut self) -> bool {
        if self.awaiting_sequence {
            return false;
        }
        let id = self.next;
        self.next += 1;
        if id <= self.latest {
            return false;
        }
        self.latest = id;
        self.ack_due
            .get_or_insert_with(|| Instant::now() + ACK_DELAY);
        true
    }

    /// The client's `Sequence`: its next message has `id`.
    pub fn sequence(&mut self, id: u64) -> Result<(), SequenceAhead> {
        if id > self.latest + 1 {
            return Err(SequenceAhead);
        }
        self.awaiting_sequence = false;
        self.next = id;
        Ok(())
    }

    /// The id our Ack carries, and clears the timer.
    pub fn take_ack(&mut self) -> u64 {
        self.ack_due = None;
        self.latest
    }
}

/// A stateful connection's reconnect state, held by its socket loop (boxed: most connections
/// have none).
pub(super) struct Resume {
    /// The connection token it is registered under (a secret: never logged).
    pub token: Box<str>,
    pub handoff: Arc<Handoff>,
    pub sent: ReplayBuffer,
    pub inbound: InboundSequence,
}

/// The upgrade of a reattaching socket, still to complete (`None`: it failed).
pub type Opening = Pin<Box<dyn Future<Output = Option<Box<dyn Io>>> + Send>>;

/// A new socket for a resumable connection, handed over by the HTTP side: the upgrade still
/// to complete, the token's new expiry, and the server's slot for the new TCP connection.
pub struct Reattach {
    pub opened: Opening,
    pub expires_at: i64,
    pub slot: Option<SlotGuard>,
}

/// Where a resumable connection waits for its next socket.
pub struct Handoff {
    user: Uuid,
    pending: Mutex<Option<Reattach>>,
    notify: Notify,
}

impl Handoff {
    /// Gives the connection a new socket (a newer one replaces one not yet picked up).
    pub fn deliver(&self, r: Reattach) {
        *self.pending.lock().unwrap_or_else(PoisonError::into_inner) = Some(r);
        self.notify.notify_one();
    }

    /// The socket delivered, if any.
    pub(super) fn take(&self) -> Option<Reattach> {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Resolves when a socket is (or was) delivered.
    pub(super) async fn delivered(&self) {
        self.notify.notified().await
    }
}

/// Why a reattach was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReattachRefusal {
    /// The connection belongs to another user (ASP.NET's 403).
    OtherUser,
}

/// The connections that may be reattached, keyed by their connection token (a secret: never
/// logged). One entry per live or parked stateful connection.
#[derive(Default)]
pub(super) struct Resumable {
    map: Mutex<HashMap<Box<str>, Arc<Handoff>>>,
}

impl Resumable {
    /// Registers a stateful connection of `user` under `token`.
    pub fn register(&self, token: &str, user: Uuid) -> Arc<Handoff> {
        let h = Arc::new(Handoff {
            user,
            pending: Mutex::new(None),
            notify: Notify::new(),
        });
        self.lock().insert(token.into(), h.clone());
        h
    }

    /// The connection ended: it can no longer be reattached.
    pub fn remove(&self, token: &str) {
        self.lock().remove(token);
    }

    /// The handoff of `token`'s connection when it is `user`'s; `Ok(None)` when no such
    /// connection is waiting (never was, or its window passed).
    pub fn find(&self, token: &str, user: Uuid) -> Result<Option<Arc<Handoff>>, ReattachRefusal> {
        match self.lock().get(token) {
            None => Ok(None),
            Some(h) if h.user == user => Ok(Some(h.clone())),
            Some(_) => Err(ReattachRefusal::OtherUser),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Arc<Handoff>>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_numbers_from_one_and_forgets_what_is_acked() {
        let mut b = ReplayBuffer::new();
        assert_eq!(b.first_unacked(), 1);
        for f in ["aa", "bbb", "c"] {
            b.push(Bytes::from(f));
        }
        assert_eq!((b.len(), b.bytes()), (3, 6));
        assert_eq!(b.ack(0), 0);
        assert_eq!(b.ack(2), 2);
        assert_eq!((b.len(), b.bytes(), b.first_unacked()), (1, 1, 3));
        assert_eq!(
            b.frames().cloned().collect::<Vec<_>>(),
            vec![Bytes::from("c")]
        );
        assert_eq!(b.ack(99), 1);
        assert_eq!((b.len(), b.bytes(), b.first_unacked()), (0, 0, 4));
    }

    #[test]
    fn inbound_dedupes_a_resend_and_waits_for_the_sequence() {
        let mut s = InboundSequence::new();
        assert!(s.accept() && s.accept());
        assert!(s.ack_due.is_some());
        assert_eq!(s.take_ack(), 2);
        assert!(s.ack_due.is_none());
        s.reattached();
        assert!(!s.accept(), "nothing before the client's Sequence");
        assert_eq!(s.sequence(4), Err(SequenceAhead));
        assert_eq!(s.sequence(2), Ok(()));
        assert!(!s.accept(), "message 2 again: a duplicate");
        assert!(s.accept(), "message 3 is new");
        assert_eq!(s.take_ack(), 3);
    }

    #[test]
    fn only_the_owner_finds_a_connection() {
        let r = Resumable::default();
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        r.register("tok", a);
        assert!(r.find("tok", a).unwrap().is_some());
        assert_eq!(r.find("tok", b).err(), Some(ReattachRefusal::OtherUser));
        assert!(r.find("other", a).unwrap().is_none());
        r.remove("tok");
        assert!(r.find("tok", a).unwrap().is_none());
    }
}
