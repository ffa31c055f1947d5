//! Loom model checks of `hub::subscriptions`: every interleaving of concurrent subscribe,
//! unsubscribe, remove-connection, drop-group and snapshot, checking that no subscription is
//! lost and that nobody is seen by a snapshot taken after their removal completed.
//!
//! The `loom` feature swaps loom's mutexes into the table (only this crate changes, so the
//! dependencies stay shared with the normal build). Run from the repository root:
//!
//! cargo test --features loom --test loom_subscriptions

#![cfg(feature = "loom")]

use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::Arc;
use loom::thread;
use ordertrack::testing::{Counts, SubscriptionTable};
use uuid::Uuid;

fn key(n: u8) -> Uuid {
    Uuid::from_bytes([n; 16])
}

/// Two keys that live in different shards of `t` (so cross-shard paths are exercised).
fn keys_in_two_shards(t: &SubscriptionTable<u64>) -> (Uuid, Uuid) {
    let a = key(1);
    let b = (2..=255u8)
        .map(key)
        .find(|k| t.shard_of(k) != t.shard_of(&a))
        .expect("two shards");
    (a, b)
}

fn snapshot(t: &SubscriptionTable<u64>, k: Uuid) -> Vec<u64> {
    let mut out = Vec::new();
    t.snapshot(k, &mut out);
    out.sort_unstable();
    out
}

/// Two connections subscribe to the same key while a third thread takes snapshots: once a
/// subscribe is known to have completed, every later snapshot sees it; nothing is lost.
#[test]
fn subscribe_races_snapshot() {
    loom::model(|| {
        let t = Arc::new(SubscriptionTable::<u64>::new(2));
        let k = key(1);
        assert!(t.subscribe(k, 1, 1));
        let done2 = Arc::new(AtomicBool::new(false));

        let th2 = {
            let (t, done2) = (t.clone(), done2.clone());
            thread::spawn(move || {
                assert!(t.subscribe(k, 2, 2));
                done2.store(true, Ordering::Release);
            })
        };
        let th3 = {
            let t = t.clone();
            thread::spawn(move || assert!(t.subscribe(k, 3, 3)))
        };

        let saw_done = done2.load(Ordering::Acquire);
        let seen = snapshot(&t, k);
        assert!(seen.contains(&1));
        if saw_done {
            assert!(
                seen.contains(&2),
                "completed subscribe not visible: {seen:?}"
            );
        }

        th2.join().unwrap();
        th3.join().unwrap();
        assert_eq!(snapshot(&t, k), vec![1, 2, 3]);
        assert_eq!(
            t.counts(),
            Counts {
                groups: 1,
                subscriptions: 3
            }
        );
    });
}

/// A connection leaves (remove_connection over keys in two shards) while another unsubscribes
/// and a snapshot is taken: after a removal completed, no snapshot sees the removed connection.
#[test]
fn removal_races_snapshot() {
    loom::model(|| {
        let t = Arc::new(SubscriptionTable::<u64>::new(2));
        let (k1, k2) = keys_in_two_shards(&t);
        assert!(t.subscribe(k1, 1, 1));
        assert!(t.subscribe(k2, 1, 1));
        assert!(t.subscribe(k1, 2, 2));
        let gone1 = Arc::new(AtomicBool::new(false));
        let gone2 = Arc::new(AtomicBool::new(false));

        let th1 = {
            let (t, gone1) = (t.clone(), gone1.clone());
            thread::spawn(move || {
                assert_eq!(t.remove_connection(1, &[k1, k2]), 2);
                gone1.store(true, Ordering::Release);
            })
        };
        let th2 = {
            let (t, gone2) = (t.clone(), gone2.clone());
            thread::spawn(move || {
                assert!(t.unsubscribe(k1, 2));
                gone2.store(true, Ordering::Release);
            })
        };

        let g1 = gone1.load(Ordering::Acquire);
        let g2 = gone2.load(Ordering::Acquire);
        let seen = snapshot(&t, k1);
        if g1 {
            assert!(
                !seen.contains(&1),
                "removed connection still seen: {seen:?}"
            );
            assert!(!t.is_subscribed(k2, 1));
        }
        if g2 {
            assert!(
                !seen.contains(&2),
                "unsubscribed connection still seen: {seen:?}"
            );
        }

        th1.join().unwrap();
        th2.join().unwrap();
        assert!(snapshot(&t, k1).is_empty());
        assert!(snapshot(&t, k2).is_empty());
        assert_eq!(t.counts(), Counts::default());
    });
}

/// A group is dropped (terminal status) while a new connection subscribes to it: the subscribe
/// is either dropped with the group or survives it, never half of each; a snapshot taken after
/// the drop completed never sees the old subscriber.
#[test]
fn drop_group_races_subscribe() {
    loom::model(|| {
        let t = Arc::new(SubscriptionTable::<u64>::new(2));
        let k = key(1);
        assert!(t.subscribe(k, 1, 1));
        let dropped = Arc::new(AtomicBool::new(false));

        let dropper = {
            let (t, dropped) = (t.clone(), dropped.clone());
            thread::spawn(move || {
                let n = t.drop_group(k);
                dropped.store(true, Ordering::Release);
                n
            })
        };
        let subscriber = {
            let t = t.clone();
            thread::spawn(move || assert!(t.subscribe(k, 2, 2)))
        };

        let was_dropped = dropped.load(Ordering::Acquire);
        let seen = snapshot(&t, k);
        if was_dropped {
            assert!(
                !seen.contains(&1),
                "dropped subscriber still seen: {seen:?}"
            );
        }

        let n = dropper.join().unwrap();
        subscriber.join().unwrap();
        let left = snapshot(&t, k);
        match n {
            // The drop came first: the new subscription survives.
            1 => assert_eq!(left, vec![2]),
            // The subscribe came first: both were dropped.
            2 => assert!(left.is_empty()),
            other => panic!("drop_group removed {other}"),
        }
        assert_eq!(t.counts().subscriptions, left.len());
        assert_eq!(t.counts().groups, usize::from(!left.is_empty()));
    });
}

/// The same connection subscribes twice at once: exactly one subscribe wins (check and insert
/// are one critical section), so an event is never delivered twice.
#[test]
fn duplicate_subscribe_races() {
    loom::model(|| {
        let t = Arc::new(SubscriptionTable::<u64>::new(1));
        let k = key(1);
        let other = {
            let t = t.clone();
            thread::spawn(move || t.subscribe(k, 7, 7))
        };
        let mine = t.subscribe(k, 7, 7);
        let theirs = other.join().unwrap();
        assert!(mine ^ theirs, "exactly one subscribe must succeed");
        assert_eq!(snapshot(&t, k), vec![7]);
        assert_eq!(
            t.counts(),
            Counts {
                groups: 1,
                subscriptions: 1
            }
        );
    });
}
