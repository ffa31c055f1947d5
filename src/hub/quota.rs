//! Per-user limits on the hubs: how many hub connections and live subscriptions one principal
//! (one token `sub`) may hold at once. The global caps protect the box; these keep one signed-in
//! user from taking every slot, so others still get live updates.
//!
//! A user's [`UserUsage`] exists while the user has a connection open; the shard map holds it
//! only for counting connections, and each connection (and its outbound queue, which the
//! subscription table holds) keeps an `Arc` to it for its subscriptions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use uuid::Uuid;

const SHARDS: usize = 16;

/// What one user holds on the hubs right now.
#[derive(Debug)]
pub struct UserUsage {
    sub: Uuid,
    /// Changed only under the user's shard lock (so the entry is removed exactly at zero).
    connections: AtomicUsize,
    subscriptions: AtomicUsize,
}

impl UserUsage {
    /// Takes one subscription unit unless the user already holds `limit`.
    pub fn try_add_subscription(&self, limit: usize) -> bool {
        self.subscriptions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back `n` subscription units (subscriptions that really left the table).
    pub fn remove_subscriptions(&self, n: usize) {
        if n > 0 {
            let _ = self
                .subscriptions
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                    Some(c.saturating_sub(n))
                });
        }
    }

    #[cfg(test)]
    pub fn subscriptions(&self) -> usize {
        self.subscriptions.load(Ordering::Acquire)
    }
}

/// Why a user's request for a hub resource was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaRefusal {
    Connections,
}

/// Every connected user's usage, sharded by user id.
pub struct UserQuotas {
    shards: Vec<Mutex<HashMap<Uuid, Arc<UserUsage>>>>,
}

impl Default for UserQuotas {
    fn default() -> Self {
        UserQuotas {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl UserQuotas {
    fn shard(&self, sub: &Uuid) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<UserUsage>>> {
        let i = (sub.as_u128() as usize) % SHARDS;
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one more connection for `sub` unless it already holds `limit`. The returned
    /// usage must be handed back with [`UserQuotas::release_connection`] when it closes.
    pub fn acquire_connection(
        &self,
        sub: Uuid,
        limit: usize,
    ) -> Result<Arc<UserUsage>, QuotaRefusal> {
        let mut m = self.shard(&sub);
        let usage = m.entry(sub).or_insert_with(|| {
            Arc::new(UserUsage {
                sub,
                connections: AtomicUsize::new(0),
                subscriptions: AtomicUsize::new(0),
            })
        });
        let held = usage.connections.load(Ordering::Acquire);
        if held >= limit {
            let empty = held == 0;
            if empty {
                m.remove(&sub);
            }
            return Err(QuotaRefusal::Connections);
        }
        usage.connections.store(held + 1, Ordering::Release);
        Ok(usage.clone())
    }

    /// One of the user's connections closed.
    pub fn release_connection(&self, usage: &UserUsage) {
        let mut m = self.shard(&usage.sub);
        let left = usage.connections.load(Ordering::Acquire).saturating_sub(1);
        usage.connections.store(left, Ordering::Release);
        if left == 0 {
            m.remove(&usage.sub);
        }
    }

    /// Connections `sub` holds now.
    #[cfg(test)]
    pub fn connections_of(&self, sub: Uuid) -> usize {
        self.shard(&sub)
            .get(&sub)
            .map_or(0, |u| u.connections.load(Ordering::Acquire))
    }

    /// Users with at least one connection.
    #[cfg(test)]
    pub fn users(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_is_capped_and_others_are_not() {
        let q = UserQuotas::default();
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        let a1 = q.acquire_connection(a, 2).unwrap();
        let a2 = q.acquire_connection(a, 2).unwrap();
        assert_eq!(
            q.acquire_connection(a, 2).unwrap_err(),
            QuotaRefusal::Connections
        );
        assert!(q.acquire_connection(b, 2).is_ok());
        assert_eq!(q.connections_of(a), 2);
        q.release_connection(&a1);
        assert!(q.acquire_connection(a, 2).is_ok());
        q.release_connection(&a2);
        assert_eq!(q.users(), 2);
    }

    #[test]
    fn the_entry_goes_when_the_last_connection_closes() {
        let q = UserQuotas::default();
        let a = Uuid::from_u128(7);
        let u = q.acquire_connection(a, 1).unwrap();
        q.release_connection(&u);
        assert_eq!(q.users(), 0);
        assert!(q.acquire_connection(a, 0).is_err());
        assert_eq!(q.users(), 0, "a refused first connection leaves no entry");
    }

    #[test]
    fn subscriptions_are_counted_per_user() {
        let q = UserQuotas::default();
        let u = q.acquire_connection(Uuid::from_u128(3), 5).unwrap();
        assert!(u.try_add_subscription(2));
        assert!(u.try_add_subscription(2));
        assert!(!u.try_add_subscription(2));
        u.remove_subscriptions(1);
        assert!(u.try_add_subscription(2));
        u.remove_subscriptions(10);
        assert_eq!(u.subscriptions(), 0);
    }
}
