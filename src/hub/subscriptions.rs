//! Who listens to what: a lock-sharded table from a key (an order id or a restaurant id) to the
//! connections subscribed to it, each with a cloneable handle to its outbound queue. Plain
//! mutexes, no async: no lock is held across an await (there are none) and at most one shard
//! lock is held at a time. With the `loom` feature the mutexes are loom's, for model checking.

#[cfg(feature = "loom")]
use loom::sync::{Mutex, MutexGuard};
#[cfg(not(feature = "loom"))]
use std::sync::{Mutex, MutexGuard};

use std::collections::HashMap;
use std::sync::PoisonError;
use uuid::Uuid;

/// Shard count of [`SubscriptionTable::default`].
pub const DEFAULT_SHARDS: usize = 64;

/// Sizes of a table, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Keys with at least one subscriber.
    pub groups: usize,
    /// (key, connection) pairs.
    pub subscriptions: usize,
}

/// The subscribers of one key: few per key in practice, so a vector beats a map.
type Group<H> = Vec<(u64, H)>;

struct Shard<H> {
    groups: HashMap<Uuid, Group<H>>,
    subscriptions: usize,
}

impl<H> Shard<H> {
    fn new() -> Self {
        Shard {
            groups: HashMap::new(),
            subscriptions: 0,
        }
    }

    /// Removes `conn` from `key`'s group (and the group when it becomes empty).
    fn remove_member(&mut self, key: &Uuid, conn: u64) -> Option<H> {
        let group = self.groups.get_mut(key)?;
        let i = group.iter().position(|(c, _)| *c == conn)?;
        let (_, handle) = group.swap_remove(i);
        self.subscriptions -= 1;
        if group.is_empty() {
            self.groups.remove(key);
            self.maybe_shrink();
        }
        Some(handle)
    }

    fn remove_group(&mut self, key: &Uuid) -> Option<Group<H>> {
        let group = self.groups.remove(key)?;
        self.subscriptions -= group.len();
        self.maybe_shrink();
        Some(group)
    }

    /// Gives memory back after a spike (a map never shrinks by itself).
    fn maybe_shrink(&mut self) {
        let len = self.groups.len();
        if self.groups.capacity() > 64 && self.groups.capacity() > len.saturating_mul(4) {
            self.groups.shrink_to(len.saturating_mul(2));
        }
    }
}

/// Key → subscribed connections, split over a power-of-two number of independently locked
/// shards. `H` is the connection's handle (e.g. an `Arc` around its bounded queue).
pub struct SubscriptionTable<H> {
    shards: Box<[Mutex<Shard<H>>]>,
    mask: usize,
}

impl<H> Default for SubscriptionTable<H> {
    /// A table with [`DEFAULT_SHARDS`] shards.
    fn default() -> Self {
        SubscriptionTable::new(DEFAULT_SHARDS)
    }
}

impl<H> SubscriptionTable<H> {
    /// A table with `shards` shards, rounded up to a power of two (at least 1).
    pub fn new(shards: usize) -> Self {
        let n = shards
            .max(1)
            .checked_next_power_of_two()
            .unwrap_or(DEFAULT_SHARDS);
        SubscriptionTable {
            shards: (0..n).map(|_| Mutex::new(Shard::new())).collect(),
            mask: n - 1,
        }
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Which shard holds `key`. Order ids may be UUIDv7 (time-ordered high bits), so both
    /// halves are mixed (asymmetrically, so equal halves do not cancel) before picking.
    pub fn shard_of(&self, key: &Uuid) -> usize {
        let v = key.as_u128();
        let mixed = ((v as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (v >> 64) as u64)
            .wrapping_mul(0xff51_afd7_ed55_8ccd);
        (mixed >> 40) as usize & self.mask
    }

    /// Locks `key`'s shard; a poisoned lock is recovered (every operation leaves the shard
    /// consistent before anything that could panic).
    fn lock(&self, key: &Uuid) -> MutexGuard<'_, Shard<H>> {
        self.shards[self.shard_of(key)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `conn` to `key`'s group. `false` (and no change) if it was already there, so a
    /// repeated subscribe never delivers twice.
    pub fn subscribe(&self, key: Uuid, conn: u64, handle: H) -> bool {
        let mut shard = self.lock(&key);
        let group = shard.groups.entry(key).or_default();
        if group.iter().any(|(c, _)| *c == conn) {
            return false;
        }
        // Most keys have one subscriber: a new group gets room for exactly one (a plain push
        // would reserve four); later pushes grow it as usual.
        if group.is_empty() {
            group.reserve_exact(1);
        }
        group.push((conn, handle));
        shard.subscriptions += 1;
        true
    }

    /// Removes `conn` from `key`'s group; `false` if it was not subscribed.
    pub fn unsubscribe(&self, key: Uuid, conn: u64) -> bool {
        let removed = self.lock(&key).remove_member(&key, conn);
        // The handle is dropped here, after the shard lock was released.
        removed.is_some()
    }

    /// Removes `conn` from every key in `keys` (the list the connection keeps of what it
    /// subscribed to), one shard lock at a time. Returns how many subscriptions were removed.
    pub fn remove_connection<'a, I>(&self, conn: u64, keys: I) -> usize
    where
        I: IntoIterator<Item = &'a Uuid>,
    {
        let mut removed = 0;
        for key in keys {
            let handle = self.lock(key).remove_member(key, conn);
            if handle.is_some() {
                removed += 1;
            }
        }
        removed
    }

    /// Drops `key`'s whole group (after a terminal status). Returns how many subscribers it had.
    pub fn drop_group(&self, key: Uuid) -> usize {
        self.drop_group_each(key, |_| {})
    }

    /// Like [`SubscriptionTable::drop_group`], and calls `each` (outside the lock) with every
    /// subscriber that was removed.
    pub fn drop_group_each(&self, key: Uuid, mut each: impl FnMut(&H)) -> usize {
        let group = self.lock(&key).remove_group(&key);
        let group = group.unwrap_or_default();
        for (_, h) in &group {
            each(h);
        }
        group.len()
    }

    /// Whether `conn` is subscribed to `key`.
    pub fn is_subscribed(&self, key: Uuid, conn: u64) -> bool {
        self.lock(&key)
            .groups
            .get(&key)
            .is_some_and(|g| g.iter().any(|(c, _)| *c == conn))
    }

    /// Number of subscribers of `key`.
    pub fn subscriber_count(&self, key: Uuid) -> usize {
        self.lock(&key).groups.get(&key).map_or(0, Vec::len)
    }

    /// Groups and subscriptions over all shards (each shard locked briefly in turn, so the
    /// total is not an atomic snapshot under concurrent changes).
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for m in self.shards.iter() {
            let shard = m.lock().unwrap_or_else(PoisonError::into_inner);
            c.groups += shard.groups.len();
            c.subscriptions += shard.subscriptions;
        }
        c
    }
}

impl<H: Clone> SubscriptionTable<H> {
    /// Appends clones of `key`'s subscriber handles to `out` and returns how many. The lock is
    /// released before this returns: send to the handles afterwards.
    pub fn snapshot(&self, key: Uuid, out: &mut Vec<H>) -> usize {
        let shard = self.lock(&key);
        match shard.groups.get(&key) {
            Some(group) => {
                out.reserve(group.len());
                out.extend(group.iter().map(|(_, h)| h.clone()));
                group.len()
            }
            None => 0,
        }
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn key(n: u8) -> Uuid {
        Uuid::from_bytes([n; 16])
    }

    fn sorted(mut v: Vec<u64>) -> Vec<u64> {
        v.sort_unstable();
        v
    }

    #[test]
    fn subscribe_snapshot_unsubscribe() {
        let t = SubscriptionTable::<u64>::new(4);
        assert!(t.subscribe(key(1), 10, 10));
        assert!(!t.subscribe(key(1), 10, 99), "duplicate subscribe");
        assert!(t.subscribe(key(1), 11, 11));
        assert!(t.subscribe(key(2), 10, 10));
        assert_eq!(
            t.counts(),
            Counts {
                groups: 2,
                subscriptions: 3
            }
        );
        let mut out = vec![7];
        assert_eq!(t.snapshot(key(1), &mut out), 2);
        assert_eq!(
            sorted(out),
            vec![7, 10, 11],
            "appends, keeps the first handle"
        );
        assert!(t.is_subscribed(key(1), 11));
        assert!(t.unsubscribe(key(1), 11));
        assert!(!t.unsubscribe(key(1), 11));
        assert!(!t.is_subscribed(key(1), 11));
        assert_eq!(t.remove_connection(10, &[key(1), key(2), key(3)]), 2);
        assert_eq!(t.counts(), Counts::default(), "empty groups are removed");
        let mut out = Vec::new();
        assert_eq!(t.snapshot(key(1), &mut out), 0);
        assert!(out.is_empty());
    }

    #[test]
    fn drop_group_removes_everyone() {
        let t = SubscriptionTable::<u64>::default();
        for c in 0..5 {
            t.subscribe(key(1), c, c);
        }
        t.subscribe(key(2), 0, 0);
        assert_eq!(t.subscriber_count(key(1)), 5);
        assert_eq!(t.drop_group(key(1)), 5);
        assert_eq!(t.drop_group(key(1)), 0);
        assert_eq!(
            t.counts(),
            Counts {
                groups: 1,
                subscriptions: 1
            }
        );
        // Re-subscribing after a drop works.
        assert!(t.subscribe(key(1), 3, 3));
    }

    #[test]
    fn shard_counts_are_powers_of_two_and_keys_spread() {
        assert_eq!(SubscriptionTable::<u8>::new(0).shard_count(), 1);
        assert_eq!(SubscriptionTable::<u8>::new(3).shard_count(), 4);
        assert_eq!(SubscriptionTable::<u8>::default().shard_count(), 64);
        // UUIDv7s minted in the same millisecond still spread over the shards.
        let t = SubscriptionTable::<u8>::default();
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, 1_758_997_543, 0);
        let used: HashSet<usize> = (0..1000).map(|_| t.shard_of(&Uuid::new_v7(ts))).collect();
        assert!(used.len() > 48, "only {} shards used", used.len());
        let used: HashSet<usize> = (0..=255u8).map(|n| t.shard_of(&key(n))).collect();
        assert!(used.len() > 48, "only {} shards used", used.len());
    }

    /// A handle whose clone panics on demand, to poison a shard lock from inside `snapshot`.
    #[derive(Debug)]
    struct Fragile(u64, Arc<AtomicBool>);
    impl Clone for Fragile {
        fn clone(&self) -> Self {
            if self.1.load(Ordering::SeqCst) {
                panic!("clone failed");
            }
            Fragile(self.0, self.1.clone())
        }
    }

    #[test]
    fn poisoned_shard_keeps_working() {
        let fail = Arc::new(AtomicBool::new(false));
        let t = Arc::new(SubscriptionTable::<Fragile>::new(1));
        t.subscribe(key(1), 1, Fragile(1, fail.clone()));
        fail.store(true, Ordering::SeqCst);
        let t2 = t.clone();
        let r = std::thread::spawn(move || {
            let mut out = Vec::new();
            t2.snapshot(key(1), &mut out);
        })
        .join();
        assert!(r.is_err(), "the clone panicked while the lock was held");
        fail.store(false, Ordering::SeqCst);
        assert!(t.subscribe(key(1), 2, Fragile(2, fail.clone())));
        let mut out = Vec::new();
        assert_eq!(t.snapshot(key(1), &mut out), 2);
        assert_eq!(t.drop_group(key(1)), 2);
        assert_eq!(t.counts(), Counts::default());
    }

    #[test]
    fn concurrent_smoke() {
        let t = Arc::new(SubscriptionTable::<u64>::new(8));
        let threads: Vec<_> = (0..4u64)
            .map(|id| {
                let t = t.clone();
                std::thread::spawn(move || {
                    let keys: Vec<Uuid> = (0..50u8).map(key).collect();
                    for k in &keys {
                        assert!(t.subscribe(*k, id, id));
                    }
                    let mut out = Vec::new();
                    for k in &keys {
                        out.clear();
                        t.snapshot(*k, &mut out);
                        assert!(out.contains(&id));
                    }
                    assert_eq!(t.remove_connection(id, &keys), 50);
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        assert_eq!(t.counts(), Counts::default());
    }

    #[derive(Clone, Debug)]
    enum Op {
        Subscribe(u8, u64),
        Unsubscribe(u8, u64),
        RemoveConnection(u64, Vec<u8>),
        DropGroup(u8),
        Snapshot(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        let k = 0u8..6;
        let c = 0u64..5;
        prop_oneof![
            3 => (k.clone(), c.clone()).prop_map(|(k, c)| Op::Subscribe(k, c)),
            2 => (k.clone(), c.clone()).prop_map(|(k, c)| Op::Unsubscribe(k, c)),
            1 => (c, proptest::collection::vec(k.clone(), 0..4))
                .prop_map(|(c, ks)| Op::RemoveConnection(c, ks)),
            1 => k.clone().prop_map(Op::DropGroup),
            2 => k.prop_map(Op::Snapshot),
        ]
    }

    proptest! {
        #[test]
        fn matches_a_simple_model(
            shards in 1usize..5,
            ops in proptest::collection::vec(op(), 0..80),
        ) {
            let t = SubscriptionTable::<u64>::new(shards);
            let mut model: HashMap<Uuid, HashSet<u64>> = HashMap::new();
            for op in ops {
                match op {
                    Op::Subscribe(k, c) => {
                        let want = model.entry(key(k)).or_default().insert(c);
                        prop_assert_eq!(t.subscribe(key(k), c, c), want);
                    }
                    Op::Unsubscribe(k, c) => {
                        let want = model.get_mut(&key(k)).is_some_and(|s| s.remove(&c));
                        prop_assert_eq!(t.unsubscribe(key(k), c), want);
                    }
                    Op::RemoveConnection(c, ks) => {
                        let keys: Vec<Uuid> = ks.into_iter().map(key).collect();
                        let mut want = 0;
                        for k in &keys {
                            if model.get_mut(k).is_some_and(|s| s.remove(&c)) {
                                want += 1;
                            }
                        }
                        prop_assert_eq!(t.remove_connection(c, &keys), want);
                    }
                    Op::DropGroup(k) => {
                        let want = model.remove(&key(k)).map_or(0, |s| s.len());
                        prop_assert_eq!(t.drop_group(key(k)), want);
                    }
                    Op::Snapshot(k) => {
                        let mut out = Vec::new();
                        t.snapshot(key(k), &mut out);
                        let mut want: Vec<u64> =
                            model.get(&key(k)).map(|s| s.iter().copied().collect()).unwrap_or_default();
                        want.sort_unstable();
                        prop_assert_eq!(sorted(out), want);
                    }
                }
                model.retain(|_, s| !s.is_empty());
                let want = Counts {
                    groups: model.len(),
                    subscriptions: model.values().map(HashSet::len).sum(),
                };
                prop_assert_eq!(t.counts(), want);
            }
        }
    }
}
