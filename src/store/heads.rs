//! Live order heads: the few fields a status poll needs, kept in memory for orders that are
//! not finished yet. Only the writer fills it, after each commit and in commit order, so an
//! entry is never older than what the writer last answered; finished orders leave it, and it
//! never grows past `MAX_HEADS` (misses read the database). Polls of live orders then skip the
//! read transaction and the full decode. Each head also keeps the status answer rendered for
//! it (body and ETag), built by the first poll that reads it: a head is replaced, never
//! changed, on every commit, so a rendered answer is exactly as fresh as the head it hangs on.

use crate::domain::{Order, OrderStatus, Timestamp};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use uuid::Uuid;

/// Most heads kept (about 100 bytes each).
pub const MAX_HEADS: usize = 1_000_000;
const SHARDS: usize = 32;

/// What `GET /status` and its visibility check need.
#[derive(Debug)]
pub struct OrderHead {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub restaurant_id: Uuid,
    pub status: OrderStatus,
    pub version: u64,
    pub updated_at: Timestamp,
    pub estimated_delivery: Option<Timestamp>,
    /// The status answer of this very head, rendered once by the reader that first needs it.
    pub rendered: OnceLock<Rendered>,
}

/// A rendered status answer: the JSON body and the ETag header's bytes.
#[derive(Debug)]
pub struct Rendered {
    pub body: Bytes,
    pub etag: Bytes,
}

impl OrderHead {
    pub fn of(o: &Order) -> Self {
        OrderHead {
            id: o.id,
            customer_id: o.customer_id,
            restaurant_id: o.restaurant_id,
            status: o.status,
            version: o.version,
            updated_at: o.updated_at,
            estimated_delivery: o.estimated_delivery,
            rendered: OnceLock::new(),
        }
    }

    pub fn etag(&self) -> String {
        format!("\"order-{}-v{}\"", self.id, self.version)
    }
}

/// Heads by order id, hashed with foldhash: every status poll looks one up, and the ids are
/// the server's own (UUIDv7), never chosen by a client, so SipHash's flood resistance buys
/// nothing here.
type HeadMap = HashMap<Uuid, Arc<OrderHead>, foldhash::fast::RandomState>;

pub struct LiveHeads {
    shards: Vec<Mutex<HeadMap>>,
}

impl Default for LiveHeads {
    fn default() -> Self {
        LiveHeads {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HeadMap::default()))
                .collect(),
        }
    }
}

impl LiveHeads {
    fn shard(&self, id: &Uuid) -> std::sync::MutexGuard<'_, HeadMap> {
        let b = id.as_bytes();
        let i = (b[15] as usize ^ b[7] as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, id: &Uuid) -> Option<Arc<OrderHead>> {
        self.shard(id).get(id).cloned()
    }

    /// Records a committed order: kept while live, dropped once finished. Existing entries are
    /// always updated; new ones are only added below the size bound.
    pub fn committed(&self, o: &Order) {
        let mut m = self.shard(&o.id);
        if o.status.is_terminal() {
            m.remove(&o.id);
        } else if m.len() < MAX_HEADS / SHARDS || m.contains_key(&o.id) {
            m.insert(o.id, Arc::new(OrderHead::of(o)));
        }
    }
}
