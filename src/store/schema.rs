//! The redb schema: table definitions and the byte layout of composite keys.
//!
//! Composite keys are fixed-size byte arrays compared bytewise, so a range scan over a prefix
//! walks one customer's (or restaurant's) orders in placement order; `.rev()` gives newest first.

use crate::domain::{OrderStatus, Timestamp};
use redb::TableDefinition;
use uuid::Uuid;

/// order id → MessagePack `Order`.
pub const ORDERS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("orders_v1");
/// customer ‖ placed-at ‖ order id → status code. The value lets status filters skip the order.
pub const BY_CUSTOMER: TableDefinition<&[u8; 40], u8> = TableDefinition::new("by_customer_v1");
/// restaurant ‖ placed-at ‖ order id → status code.
pub const BY_RESTAURANT: TableDefinition<&[u8; 40], u8> = TableDefinition::new("by_restaurant_v1");
/// customer ‖ status code → number of that customer's orders in that status.
pub const CUSTOMER_COUNTS: TableDefinition<&[u8; 17], u64> =
    TableDefinition::new("customer_counts_v1");
/// The kitchen board's index: restaurant ‖ status code ‖ placed-at ‖ order id → (). One
/// restaurant's orders in one status, oldest first, are one contiguous range, so a board page
/// costs O(page) however many orders the restaurant has. Built at open when missing.
pub const BOARD: TableDefinition<&[u8; 41], ()> = TableDefinition::new("board_v1");
/// restaurant ‖ status code → number of that restaurant's orders in that status (the board's
/// `totalCount`). Built with `BOARD`.
pub const RESTAURANT_COUNTS: TableDefinition<&[u8; 17], u64> =
    TableDefinition::new("restaurant_counts_v1");
/// event sequence number → MessagePack `OrderEvent` (the outbox: kept for `--outbox-retention`,
/// and never more than the newest `OUTBOX_KEEP`).
pub const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox_v1");
/// "{caller}/{key}" → MessagePack `IdempotencyRecord`.
pub const IDEMPOTENCY: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency_v1");
/// Counters: `event_seq`, `order_seq/{year}`, `clock`, `log_seq`, `db_id`, `swept/…`,
/// `retention_index`.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta_v1");
/// finished-at ‖ order id → status code: every order in a terminal status, oldest first, so the
/// sweeper finds the expired ones in O(expired). Added with retention; `Store::open` builds it
/// for a file that lacks it (`RETENTION_INDEX`).
pub const FINISHED: TableDefinition<&[u8; 24], u8> = TableDefinition::new("finished_v1");
/// created-at ‖ "{caller}/{key}" → 0: every idempotency record, oldest first (the sweeper's
/// index, like `FINISHED`).
pub const IDEM_EXPIRY: TableDefinition<&[u8], u8> = TableDefinition::new("idempotency_expiry_v1");

/// The hard cap on the outbox, whatever its time retention: a burst can never make it hold more
/// than this many events (each insert beyond it removes the oldest).
pub const OUTBOX_KEEP: u64 = 1_000_000;

/// Set to 1 once `FINISHED` and `IDEM_EXPIRY` cover every order and key in the file.
pub const RETENTION_INDEX: &str = "retention_index";
/// Rows the sweeper removed over the life of the file, per kind.
pub const SWEPT_ORDERS: &str = "swept/orders";
pub const SWEPT_IDEMPOTENCY: &str = "swept/idempotency";
pub const SWEPT_EVENTS: &str = "swept/events";

/// Placement time as bytes that sort like the signed number.
fn time_bytes(t: Timestamp) -> [u8; 8] {
    ((t.millis() as u64) ^ (1u64 << 63)).to_be_bytes()
}

pub fn finished_key(at: Timestamp, order: Uuid) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&time_bytes(at));
    k[8..].copy_from_slice(order.as_bytes());
    k
}

/// The order id and finish time of a `FINISHED` key.
pub fn parse_finished_key(k: &[u8; 24]) -> (Timestamp, Uuid) {
    let mut id = [0u8; 16];
    id.copy_from_slice(&k[8..]);
    (time_of(&k[..8]), Uuid::from_bytes(id))
}

pub fn idem_expiry_key(created: Timestamp, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&time_bytes(created));
    k.extend_from_slice(key.as_bytes());
    k
}

/// The creation time and idempotency key of an `IDEM_EXPIRY` key (`None` if it is malformed).
pub fn parse_idem_expiry_key(k: &[u8]) -> Option<(Timestamp, &str)> {
    let time = k.get(..8)?;
    let key = std::str::from_utf8(k.get(8..)?).ok()?;
    Some((time_of(time), key))
}

/// The inverse of `time_bytes` (8 bytes).
fn time_of(b: &[u8]) -> Timestamp {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    Timestamp((u64::from_be_bytes(a) ^ (1u64 << 63)) as i64)
}

pub fn index_key(owner: Uuid, placed: Timestamp, order: Uuid) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..16].copy_from_slice(owner.as_bytes());
    k[16..24].copy_from_slice(&time_bytes(placed));
    k[24..].copy_from_slice(order.as_bytes());
    k
}

/// The first and last possible index keys of one owner.
pub fn index_bounds(owner: Uuid) -> ([u8; 40], [u8; 40]) {
    let mut lo = [0u8; 40];
    lo[..16].copy_from_slice(owner.as_bytes());
    let mut hi = [0xffu8; 40];
    hi[..16].copy_from_slice(owner.as_bytes());
    (lo, hi)
}

pub fn order_id_of_index(key: &[u8; 40]) -> Uuid {
    let mut id = [0u8; 16];
    id.copy_from_slice(&key[24..]);
    Uuid::from_bytes(id)
}

pub fn board_key(
    restaurant: Uuid,
    status: OrderStatus,
    placed: Timestamp,
    order: Uuid,
) -> [u8; 41] {
    let mut k = [0u8; 41];
    k[..16].copy_from_slice(restaurant.as_bytes());
    k[16] = status.code();
    k[17..25].copy_from_slice(&time_bytes(placed));
    k[25..].copy_from_slice(order.as_bytes());
    k
}

/// The first and last possible board keys of one restaurant in one status.
pub fn board_bounds(restaurant: Uuid, status: OrderStatus) -> ([u8; 41], [u8; 41]) {
    let mut lo = [0u8; 41];
    lo[..16].copy_from_slice(restaurant.as_bytes());
    lo[16] = status.code();
    let mut hi = [0xffu8; 41];
    hi[..17].copy_from_slice(&lo[..17]);
    (lo, hi)
}

pub fn order_id_of_board(key: &[u8; 41]) -> Uuid {
    let mut id = [0u8; 16];
    id.copy_from_slice(&key[25..]);
    Uuid::from_bytes(id)
}

pub fn count_key(customer: Uuid, status: OrderStatus) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..16].copy_from_slice(customer.as_bytes());
    k[16] = status.code();
    k
}

pub fn order_seq_key(year: i32) -> String {
    format!("order_seq/{year}")
}

pub const EVENT_SEQ: &str = "event_seq";
/// Set once `BOARD` and `RESTAURANT_COUNTS` were built for every stored order (files made by
/// an older binary get them at their first open).
pub const BOARD_BUILT: &str = "board_built";
pub const CLOCK: &str = "clock";
/// The newest commit log record this database includes (see `wal.rs`).
pub const LOG_SEQ: &str = "log_seq";
/// A random identity given to the database when it is created (and to every backup copy), which
/// its commit log records carry.
pub const DB_ID: &str = "db_id";
/// Cluster mode: the sequence number of the newest record of the cluster's log (the JetStream
/// stream) this database includes, applied or appended (see `writer.rs`, `Replicator`).
pub const STREAM_SEQ: &str = "stream_seq";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keys_sort_by_owner_then_time() {
        let a = Uuid::from_u128(1);
        let o = Uuid::from_u128(7);
        let early = index_key(a, Timestamp(-5), o);
        let late = index_key(a, Timestamp(10), o);
        assert!(early < late);
        let (lo, hi) = index_bounds(a);
        assert!(lo <= early && late <= hi);
        assert!(index_key(Uuid::from_u128(2), Timestamp(-100), o) > hi);
        assert_eq!(order_id_of_index(&late), o);
    }

    #[test]
    fn board_keys_sort_by_restaurant_status_then_time() {
        let r = Uuid::from_u128(3);
        let o = Uuid::from_u128(9);
        let early = board_key(r, OrderStatus::Placed, Timestamp(-5), o);
        let late = board_key(r, OrderStatus::Placed, Timestamp(10), o);
        assert!(early < late);
        let (lo, hi) = board_bounds(r, OrderStatus::Placed);
        assert!(lo <= early && late <= hi);
        let other = board_key(r, OrderStatus::Accepted, Timestamp(-100), o);
        assert!(other < lo || other > hi);
        assert_eq!(order_id_of_board(&late), o);
    }

    #[test]
    fn retention_keys_sort_by_time_and_round_trip() {
        let o = Uuid::from_u128(9);
        let early = finished_key(Timestamp(-3), Uuid::from_u128(u128::MAX));
        let late = finished_key(Timestamp(1_700_000_000_000), o);
        assert!(early < late);
        assert_eq!(parse_finished_key(&late), (Timestamp(1_700_000_000_000), o));
        let a = idem_expiry_key(Timestamp(5), "svc/zzz");
        let b = idem_expiry_key(Timestamp(6), "svc/aaa");
        assert!(a < b);
        assert_eq!(parse_idem_expiry_key(&b), Some((Timestamp(6), "svc/aaa")));
        assert_eq!(parse_idem_expiry_key(b"short"), None);
    }
}
