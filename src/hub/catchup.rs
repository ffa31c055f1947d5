//! `ResumeRestaurant(restaurantId, afterSequence)`: the seam between the outbox replay and the
//! live events, kept here so the hub method and its model test run the same steps.
//!
//! The steps, on the connection's own queue:
//! 1. [`begin`]: live frames are held back from now on;
//! 2. the caller subscribes the connection to the restaurant (every event published from now
//!    on reaches the held queue);
//! 3. the caller reads, in one read transaction, the restaurant's events after the cursor up
//!    to the newest committed sequence `upto`;
//! 4. [`finish`]: queues the replay, then the held live frames except the restaurant's events
//!    with a sequence ≤ `upto` (the replay has them), sets the connection's floor for the
//!    restaurant to `upto`, and lets live frames flow again.
//!
//! Why no event is lost or doubled: the writer publishes an event only after its commit, and
//! in commit order. An event committed before step 3's read is in the replay (its sequence is
//! ≤ `upto`); if it is also published live after step 2 it is dropped, from the held frames
//! when it comes before step 4, by the floor when it comes after (the dispatcher can lag the
//! commit: the model test below found exactly that case). An event committed after the read
//! has a sequence > `upto` and is published after its commit, so after step 2: it arrives
//! live, behind the replay.

use super::outbound::Outbound;
use super::protocol::{encode_event, Protocol};
use crate::domain::OrderEvent;
use crate::store::Replay;
use bytes::Bytes;
use uuid::Uuid;

/// Most outbox events one resume reads. A cursor further behind the newest event gets
/// `CursorExpired` like an expired one: reloading the board costs O(page), replaying more
/// would cost a scan of the outbox and that many frames in the connection's queue.
pub(super) const MAX_RESUME_SCAN: u64 = 20_000;

/// Step 1: hold live frames back.
pub(super) fn begin(out: &Outbound) {
    out.hold();
}

/// Step 4: queues the replay read in step 3 (or gives up: the error text of the completion)
/// and releases the held frames. Returns how many events were replayed.
pub(super) fn finish(
    out: &Outbound,
    restaurant: Uuid,
    after: u64,
    read: Result<Replay, String>,
    method: impl Fn(&OrderEvent) -> &'static str,
) -> Result<usize, String> {
    let refuse = |text: String| {
        // Nothing of this restaurant that was held goes out: the client reloads.
        out.release(Vec::new(), restaurant, u64::MAX, false);
        Err(text)
    };
    match read {
        Err(text) => refuse(text),
        Ok(Replay::Expired { oldest, newest }) => refuse(format!(
            "CursorExpired: sequence {after} is no longer covered (the outbox holds {oldest}..={newest}); reload the board."
        )),
        Ok(Replay::TooFar { newest }) => refuse(format!(
            "CursorExpired: more than {MAX_RESUME_SCAN} events lie between sequence {after} and {newest}; reload the board."
        )),
        Ok(Replay::Events { events, upto }) => {
            let frames: Vec<Bytes> = events
                .iter()
                .map(|e| encode(out.protocol, method(e), e))
                .collect();
            let n = frames.len();
            out.release(frames, restaurant, upto, true);
            Ok(n)
        }
    }
}

fn encode(protocol: Protocol, method: &str, e: &OrderEvent) -> Bytes {
    encode_event(protocol, method, &e.dto)
}

#[cfg(test)]
mod tests {
    //! A model of the real pieces around the seam: a writer thread that commits events to an
    //! outbox and then hands them, in commit order, to a dispatcher thread that pushes them to
    //! the subscribed queues (as `Hubs::deliver` does), racing a resume on another thread.
    use super::*;
    use crate::domain::{EventKind, OrderStatus, OrderStatusBroadcast, Timestamp};
    use proptest::prelude::*;
    use std::sync::{mpsc, Arc, Mutex};
    use std::task::{Context, Poll, Waker};

    fn event(seq: u64, restaurant: Uuid) -> OrderEvent {
        OrderEvent {
            seq,
            kind: EventKind::StatusChanged,
            customer_id: Uuid::nil(),
            dto: OrderStatusBroadcast {
                order_id: Uuid::from_u128(seq as u128),
                order_number: format!("ORD-2026-{seq:06}"),
                status: OrderStatus::Preparing,
                restaurant_id: restaurant,
                last_update: Timestamp(0),
                estimated_delivery: None,
                actual_delivery: None,
                delivered_at: None,
                occurred_on: Timestamp(0),
                event_id: None,
                version: 1,
                sequence: Some(seq),
            },
        }
    }

    /// The sequences of `restaurant`'s events in what the queue holds, in order.
    fn received(out: &Outbound, restaurant: Uuid) -> Vec<u64> {
        let mut got = Vec::new();
        let mut cx = Context::from_waker(Waker::noop());
        while let Poll::Ready(super::super::outbound::Queued::Frames(frames)) =
            out.poll_next(&mut cx)
        {
            for f in frames {
                let v: serde_json::Value = serde_json::from_slice(&f[..f.len() - 1]).unwrap();
                let dto = &v["arguments"][0];
                if dto["restaurantId"] == restaurant.to_string() {
                    got.push(dto["sequence"].as_u64().unwrap());
                }
            }
        }
        got
    }

    struct Outbox {
        events: Vec<OrderEvent>,
    }

    /// Runs `total` commits (events of `a` where `mine[i]`, else of another restaurant) while a
    /// resume from `after` starts once `start_at` events are committed.
    fn run(
        total: u64,
        mine: &[bool],
        start_at: u64,
        after: u64,
        yields: u32,
    ) -> (Vec<u64>, Vec<u64>) {
        let (a, b) = (Uuid::from_u128(0xA), Uuid::from_u128(0xB));
        let outbox = Arc::new(Mutex::new(Outbox { events: Vec::new() }));
        let table: Arc<Mutex<Vec<Arc<Outbound>>>> = Arc::default();
        let (tx, rx) = mpsc::channel::<Arc<OrderEvent>>();
        let dispatcher = {
            let table = table.clone();
            std::thread::spawn(move || {
                for e in rx {
                    let frame = encode(Protocol::Json, "ReceiveOrderStatusChanged", &e);
                    // Every event reaches the queue, as on a connection that also follows
                    // restaurant `b`: only `a`'s are filtered by the resume.
                    for sub in table.lock().unwrap().iter() {
                        sub.push_event(frame.clone(), e.restaurant_id(), e.seq);
                    }
                }
            })
        };
        let writer = {
            let outbox = outbox.clone();
            let mine = mine.to_vec();
            std::thread::spawn(move || {
                for seq in 1..=total {
                    let r = if mine[(seq as usize - 1) % mine.len()] {
                        a
                    } else {
                        b
                    };
                    let e = Arc::new(event(seq, r));
                    outbox.lock().unwrap().events.push((*e).clone());
                    for _ in 0..yields {
                        std::thread::yield_now();
                    }
                    tx.send(e).unwrap();
                }
            })
        };
        while (outbox.lock().unwrap().events.len() as u64) < start_at {
            std::thread::yield_now();
        }
        let out = Arc::new(Outbound::new(1, Protocol::Json, 1 << 20));
        begin(&out);
        table.lock().unwrap().push(out.clone());
        let read = {
            let o = outbox.lock().unwrap();
            let upto = o.events.last().map_or(0, |e| e.seq);
            let events = o
                .events
                .iter()
                .filter(|e| e.seq > after && e.restaurant_id() == a)
                .cloned()
                .collect();
            Ok(Replay::Events { events, upto })
        };
        finish(&out, a, after, read, |_| "ReceiveOrderStatusChanged").unwrap();
        writer.join().unwrap();
        dispatcher.join().unwrap();
        let want = outbox
            .lock()
            .unwrap()
            .events
            .iter()
            .filter(|e| e.seq > after && e.restaurant_id() == a)
            .map(|e| e.seq)
            .collect();
        (received(&out, a), want)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        #[test]
        fn a_resume_racing_the_writer_gets_every_later_event_once_in_order(
            total in 1u64..400,
            mine in proptest::collection::vec(any::<bool>(), 1..7),
            start in 0u64..400,
            back in 0u64..400,
            yields in 0u32..4,
        ) {
            let start_at = start % (total + 1);
            let after = start_at.saturating_sub(back);
            let (got, want) = run(total, &mine, start_at, after, yields);
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn an_expired_cursor_completes_with_cursor_expired_and_releases_nothing_of_it() {
        let r = Uuid::from_u128(1);
        let out = Outbound::new(1, Protocol::Json, 16);
        begin(&out);
        let frame = encode(Protocol::Json, "X", &event(9, r));
        out.push_event(frame, r, 9);
        let e = finish(
            &out,
            r,
            3,
            Ok(Replay::Expired {
                oldest: 7,
                newest: 9,
            }),
            |_| "X",
        )
        .unwrap_err();
        assert!(e.starts_with("CursorExpired:"), "{e}");
        assert!(received(&out, r).is_empty());
        let e = finish(&out, r, 3, Ok(Replay::TooFar { newest: 99_999 }), |_| "X").unwrap_err();
        assert!(e.starts_with("CursorExpired:"), "{e}");
    }
}
