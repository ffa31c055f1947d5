//! Placeholder sharded subscription table (replaced by the full version with loom tests).

use std::collections::HashMap;
use std::sync::Mutex;
use uuid::Uuid;

pub struct SubscriptionTable<H> {
    shards: Vec<Mutex<HashMap<Uuid, Vec<(u64, H)>>>>,
}

impl<H: Clone> SubscriptionTable<H> {
    pub fn new(shards: usize) -> Self {
        SubscriptionTable {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }
    fn shard(&self, key: Uuid) -> std::sync::MutexGuard<'_, HashMap<Uuid, Vec<(u64, H)>>> {
        let i = (key.as_u128() as usize) % self.shards.len();
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn subscribe(&self, key: Uuid, conn: u64, h: H) -> bool {
        let mut s = self.shard(key);
        let g = s.entry(key).or_default();
        if g.iter().any(|(c, _)| *c == conn) {
            return false;
        }
        g.push((conn, h));
        true
    }
    pub fn unsubscribe(&self, key: Uuid, conn: u64) -> bool {
        let mut s = self.shard(key);
        let Some(g) = s.get_mut(&key) else {
            return false;
        };
        let before = g.len();
        g.retain(|(c, _)| *c != conn);
        let removed = g.len() != before;
        if g.is_empty() {
            s.remove(&key);
        }
        removed
    }
    pub fn is_subscribed(&self, key: Uuid, conn: u64) -> bool {
        self.shard(key)
            .get(&key)
            .is_some_and(|g| g.iter().any(|(c, _)| *c == conn))
    }
    pub fn drop_group(&self, key: Uuid) -> usize {
        self.shard(key).remove(&key).map(|g| g.len()).unwrap_or(0)
    }
    pub fn snapshot(&self, key: Uuid, out: &mut Vec<H>) {
        if let Some(g) = self.shard(key).get(&key) {
            out.extend(g.iter().map(|(_, h)| h.clone()));
        }
    }
}
