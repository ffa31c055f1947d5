//! The commit log in front of redb. A durable redb commit rewrites every page a batch touched
//! (scattered over the file) and syncs twice; appending the batch's writes to one preallocated
//! file and syncing that once costs a fraction of it. So the writer appends each batch here,
//! syncs, commits it to redb without syncing (`Durability::None`), and answers. Every so often
//! (1 MiB logged or the log half full, or five seconds since the last one) a batch is committed durably instead: a
//! checkpoint, after which the log starts again at offset 0. Opening the store applies the
//! records redb had not made durable (`replay`).
//!
//! A record is `magic u32 ‖ db id u64 ‖ salt u32 ‖ seq u64 ‖ len u32 ‖ crc32 u32 ‖ payload`,
//! little endian, the CRC covering everything but the magic. The db id ties the log to one
//! database file; the salt changes with every pass over the file. Sequence numbers grow by one per record for the life of the
//! database and redb stores the last one it includes (`META["log_seq"]`), so replay reads the
//! chain of valid records from offset 0 and applies those redb does not have; older records
//! left behind by an earlier pass over the file break the chain and are never read as new.
//!
//! The payload is the batch's writes, table by table (`Redo`): replay repeats them exactly,
//! without deciding anything again.

use super::schema::*;
use super::StoreError;
use redb::{Database, Durability, ReadableDatabase, WriteTransaction};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The log's file name inside the data directory.
pub const LOG_FILE: &str = "orders.wal";
const MAGIC: u32 = 0x4F54_4C31;
const HEADER: usize = 32;
/// Longest time between two checkpoints while writes come in.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);
/// Most log bytes between two checkpoints. A checkpoint writes out every redb page the
/// commits since the last one dirtied and syncs them while the writer waits, so its stall grows
/// with what the pass logged: at 5 s of full-speed placements it held the writer 100–250 ms
/// (the placements' p99). Capping the pass at 1 MiB of records (about 500 placements) keeps
/// each checkpoint to a few milliseconds for a few more syncs per second.
pub const CHECKPOINT_BYTES: u64 = 1 << 20;

/// The tables a redo operation can touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Tab {
    Orders = 1,
    ByCustomer = 2,
    ByRestaurant = 3,
    Counts = 4,
    Outbox = 5,
    Idempotency = 6,
    Meta = 7,
    Board = 8,
    RestaurantCounts = 9,
    Finished = 10,
    IdemExpiry = 11,
}

impl Tab {
    fn of(code: u8) -> Option<Tab> {
        Some(match code {
            1 => Tab::Orders,
            2 => Tab::ByCustomer,
            3 => Tab::ByRestaurant,
            4 => Tab::Counts,
            5 => Tab::Outbox,
            6 => Tab::Idempotency,
            7 => Tab::Meta,
            8 => Tab::Board,
            9 => Tab::RestaurantCounts,
            10 => Tab::Finished,
            11 => Tab::IdemExpiry,
            _ => return None,
        })
    }
}

const DELETE: u8 = 0x80;

/// The writes of one batch in the order they were made: the payload of one log record.
/// Each operation is `tag u8 ‖ key len u32 ‖ key ‖ [value len u32 ‖ value]`; the tag is the
/// table's code, with the high bit set for a removal (which has no value).
#[derive(Default, Debug)]
pub struct Redo {
    buf: Vec<u8>,
}

impl Redo {
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn put(&mut self, tab: Tab, key: &[u8], value: &[u8]) {
        self.buf.push(tab as u8);
        self.buf
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(key);
        self.buf
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(value);
    }

    /// Appends the operations of another record as they are (a replica applying a record of the
    /// cluster's log writes the same operations to its own commit log).
    pub fn extend_raw(&mut self, payload: &[u8]) {
        self.buf.extend_from_slice(payload);
    }

    pub fn delete(&mut self, tab: Tab, key: &[u8]) {
        self.buf.push(tab as u8 | DELETE);
        self.buf
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(key);
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("commit log record: {what}"))
}

/// Reads `n` bytes at `*at`, advancing it.
fn take<'a>(p: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], StoreError> {
    let end = at.checked_add(n).filter(|e| *e <= p.len());
    let end = end.ok_or_else(|| corrupt("truncated operation"))?;
    let s = &p[*at..end];
    *at = end;
    Ok(s)
}

fn fixed<const N: usize>(b: &[u8]) -> Result<&[u8; N], StoreError> {
    b.try_into().map_err(|_| corrupt("key of the wrong size"))
}

pub(super) fn number(b: &[u8]) -> Result<u64, StoreError> {
    Ok(u64::from_le_bytes(*fixed::<8>(b)?))
}

fn text(b: &[u8]) -> Result<&str, StoreError> {
    std::str::from_utf8(b).map_err(|_| corrupt("key is not UTF-8"))
}

/// One put of a redo payload: table, key, value.
pub type Put<'a> = (Tab, &'a [u8], &'a [u8]);

/// One operation of a redo payload: table, key, and the value of a put (`None`: a removal).
type Op<'a> = (Tab, &'a [u8], Option<&'a [u8]>);

/// The operations of a payload, in order: `(table, key, Some(value))` for a put,
/// `(table, key, None)` for a removal. The one decoder of the format `Redo` writes.
fn ops(payload: &[u8]) -> impl Iterator<Item = Result<Op<'_>, StoreError>> {
    let mut at = 0;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || at >= payload.len() {
            return None;
        }
        let mut next = || {
            let tag = take(payload, &mut at, 1)?[0];
            let tab = Tab::of(tag & !DELETE).ok_or_else(|| corrupt("unknown table"))?;
            let klen = u32::from_le_bytes(*fixed::<4>(take(payload, &mut at, 4)?)?) as usize;
            let key = take(payload, &mut at, klen)?;
            if tag & DELETE != 0 {
                return Ok((tab, key, None));
            }
            let vlen = u32::from_le_bytes(*fixed::<4>(take(payload, &mut at, 4)?)?) as usize;
            Ok((tab, key, Some(take(payload, &mut at, vlen)?)))
        };
        let op = next();
        failed = op.is_err();
        Some(op)
    })
}

/// The puts of a payload, in order: `(table, key, value)` (removals are skipped). A replica
/// reads the orders and events a record of the cluster's log wrote from them.
pub fn puts(payload: &[u8]) -> Result<Vec<Put<'_>>, StoreError> {
    ops(payload)
        .filter_map(|op| match op {
            Ok((tab, key, Some(value))) => Some(Ok((tab, key, value))),
            Ok((_, _, None)) => None,
            Err(e) => Some(Err(e)),
        })
        .collect()
}

/// Repeats the writes of each payload, in order, in `txn`.
pub fn apply(payloads: &[&[u8]], txn: &WriteTransaction) -> Result<(), StoreError> {
    let io = StoreError::io;
    let mut orders = txn.open_table(ORDERS).map_err(io)?;
    let mut by_customer = txn.open_table(BY_CUSTOMER).map_err(io)?;
    let mut by_restaurant = txn.open_table(BY_RESTAURANT).map_err(io)?;
    let mut counts = txn.open_table(CUSTOMER_COUNTS).map_err(io)?;
    let mut outbox = txn.open_table(OUTBOX).map_err(io)?;
    let mut idem = txn.open_table(IDEMPOTENCY).map_err(io)?;
    let mut meta = txn.open_table(META).map_err(io)?;
    let mut board = txn.open_table(BOARD).map_err(io)?;
    let mut restaurant_counts = txn.open_table(RESTAURANT_COUNTS).map_err(io)?;
    let mut finished = txn.open_table(FINISHED).map_err(io)?;
    let mut idem_expiry = txn.open_table(IDEM_EXPIRY).map_err(io)?;
    for payload in payloads {
        for op in ops(payload) {
            let (tab, key, value) = op?;
            let Some(value) = value else {
                match tab {
                    Tab::Orders => orders.remove(fixed::<16>(key)?).map(|_| ()),
                    Tab::ByCustomer => by_customer.remove(fixed::<40>(key)?).map(|_| ()),
                    Tab::ByRestaurant => by_restaurant.remove(fixed::<40>(key)?).map(|_| ()),
                    Tab::Counts => counts.remove(fixed::<17>(key)?).map(|_| ()),
                    Tab::Outbox => outbox.remove(number(key)?).map(|_| ()),
                    Tab::Idempotency => idem.remove(text(key)?).map(|_| ()),
                    Tab::Meta => meta.remove(text(key)?).map(|_| ()),
                    Tab::Board => board.remove(fixed::<41>(key)?).map(|_| ()),
                    Tab::RestaurantCounts => {
                        restaurant_counts.remove(fixed::<17>(key)?).map(|_| ())
                    }
                    Tab::Finished => finished.remove(fixed::<24>(key)?).map(|_| ()),
                    Tab::IdemExpiry => idem_expiry.remove(key).map(|_| ()),
                }
                .map_err(StoreError::io)?;
                continue;
            };
            match tab {
                Tab::Orders => orders.insert(fixed::<16>(key)?, value).map(|_| ()),
                Tab::ByCustomer => by_customer
                    .insert(fixed::<40>(key)?, fixed::<1>(value)?[0])
                    .map(|_| ()),
                Tab::ByRestaurant => by_restaurant
                    .insert(fixed::<40>(key)?, fixed::<1>(value)?[0])
                    .map(|_| ()),
                Tab::Counts => counts.insert(fixed::<17>(key)?, number(value)?).map(|_| ()),
                Tab::Outbox => outbox.insert(number(key)?, value).map(|_| ()),
                Tab::Idempotency => idem.insert(text(key)?, value).map(|_| ()),
                Tab::Meta => meta.insert(text(key)?, number(value)?).map(|_| ()),
                Tab::Board => board.insert(fixed::<41>(key)?, ()).map(|_| ()),
                Tab::RestaurantCounts => restaurant_counts
                    .insert(fixed::<17>(key)?, number(value)?)
                    .map(|_| ()),
                Tab::Finished => finished
                    .insert(fixed::<24>(key)?, fixed::<1>(value)?[0])
                    .map(|_| ()),
                Tab::IdemExpiry => idem_expiry.insert(key, fixed::<1>(value)?[0]).map(|_| ()),
            }
            .map_err(StoreError::io)?;
        }
    }
    Ok(())
}

/// The preallocated log file and where the next record goes.
pub struct CommitLog {
    file: File,
    path: PathBuf,
    capacity: u64,
    /// The database this log belongs to (`META["db_id"]`): records of another are not read.
    db_id: u64,
    /// Random per pass over the file (a new one after every checkpoint): a record only joins
    /// the chain with the salt of the pass's first record, so bytes left in the file by an
    /// earlier pass (which can hold user text) are never read as a record of this one.
    salt: u32,
    /// Where the next record starts.
    offset: u64,
    /// The sequence number of the newest record written, or of the checkpoint when none was
    /// written since.
    last_seq: u64,
    /// Offset and sequence number before the last append, to take it back.
    before_last: (u64, u64),
    /// When the first record after the last checkpoint was written.
    pass_started: Option<Instant>,
    /// Set when redb holds commits that only the log makes durable and a checkpoint failed or
    /// could not be tried (after a reopen): the next batch must be committed durably.
    checkpoint_due: bool,
    /// A record that could not be erased after its batch failed: reading stops there, so a
    /// reopen in this process does not apply it.
    cut: Option<u64>,
    scratch: Vec<u8>,
}

/// Gives the file `len` bytes of blocks (not a sparse tail) without writing them, so appends
/// within it do not fail for want of space on ext4, xfs or tmpfs (copy-on-write file systems
/// such as btrfs may still refuse a later overwrite; such a write fails cleanly with a 503).
fn reserve(file: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "commit log too large"))?;
    // SAFETY: `fallocate` only reads its integer arguments; the descriptor is open for writing
    // for the duration of the call.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A record header as read from the file.
struct Header {
    magic: u32,
    db_id: u64,
    salt: u32,
    seq: u64,
    len: u64,
    crc: u32,
}

impl Header {
    fn parse(b: &[u8; HEADER]) -> Header {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(x)
        };
        Header {
            magic: u32_at(0),
            db_id: u64_at(4),
            salt: u32_at(12),
            seq: u64_at(16),
            len: u32_at(24) as u64,
            crc: u32_at(28),
        }
    }
}

/// CRC-32 of the header fields after the magic, then the payload.
fn checksum(head: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&head[4..28]);
    h.update(payload);
    h.finalize()
}

impl CommitLog {
    /// Opens the log at `path` for the database `db_id`, creating it, and reserves at least
    /// `capacity` bytes for it.
    pub fn open(path: &Path, capacity: u64, db_id: u64) -> io::Result<CommitLog> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let len = file.metadata()?.len();
        if len < capacity {
            reserve(&file, capacity)?;
            file.sync_all()?;
            // A new log's name must be durable before a record in it is acknowledged.
            super::dirsync::sync_parent(path).map_err(io::Error::other)?;
        }
        Ok(CommitLog {
            file,
            path: path.to_path_buf(),
            capacity: capacity.max(len),
            db_id,
            salt: rand::random(),
            offset: 0,
            last_seq: 0,
            before_last: (0, 0),
            pass_started: None,
            checkpoint_due: false,
            cut: None,
            scratch: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The chain of valid records from offset 0: `(seq, payload)` in order, each of this
    /// database, with the salt of the first and a seq one more than the previous. Leaves
    /// `offset` just past the chain (so appends continue the pass).
    pub fn records(&mut self) -> io::Result<Vec<(u64, Vec<u8>)>> {
        let len = self.file.metadata()?.len();
        let end = self.cut.map_or(len, |c| c.min(len));
        let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut chain_salt = None;
        let mut at = 0u64;
        let mut raw = [0u8; HEADER];
        while at + HEADER as u64 <= end {
            self.file.read_exact_at(&mut raw, at)?;
            let h = Header::parse(&raw);
            let follows = match out.last() {
                None => true,
                Some((prev, _)) => prev.checked_add(1) == Some(h.seq),
            };
            let fits = at + HEADER as u64 + h.len <= end;
            if h.magic != MAGIC || !follows || !fits || chain_salt.is_some_and(|s| s != h.salt) {
                break;
            }
            let mut payload = vec![0u8; h.len as usize];
            self.file.read_exact_at(&mut payload, at + HEADER as u64)?;
            if checksum(&raw, &payload) != h.crc {
                break;
            }
            if h.db_id != self.db_id {
                if at == 0 {
                    tracing::warn!(
                        log = %self.path.display(),
                        "the commit log was written for another database (a restored or \
                         replaced orders.redb?); its records are ignored and overwritten"
                    );
                }
                break;
            }
            chain_salt = Some(h.salt);
            out.push((h.seq, payload));
            at += HEADER as u64 + h.len;
        }
        self.offset = at;
        if let Some(s) = chain_salt {
            self.salt = s;
        }
        Ok(out)
    }

    /// Whether the next batch (of `payload` bytes) should be committed durably to redb instead
    /// of being appended here.
    pub fn wants_checkpoint(&self, payload: usize) -> bool {
        self.checkpoint_due
            || self.offset + (HEADER + payload) as u64 > (self.capacity / 2).min(CHECKPOINT_BYTES)
            || self
                .pass_started
                .is_some_and(|t| t.elapsed() >= CHECKPOINT_EVERY)
    }

    /// The sequence number the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.last_seq + 1
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Appends one record with the next sequence number and syncs it. On failure nothing is
    /// counted as written (a partly written record fails its CRC; a whole one is erased).
    pub fn append(&mut self, payload: &[u8]) -> io::Result<u64> {
        let seq = self.next_seq();
        let len = u32::try_from(payload.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "record too large"))?;
        if self.offset + (HEADER + payload.len()) as u64 > self.capacity {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "commit log full",
            ));
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(&MAGIC.to_le_bytes());
        self.scratch.extend_from_slice(&self.db_id.to_le_bytes());
        self.scratch.extend_from_slice(&self.salt.to_le_bytes());
        self.scratch.extend_from_slice(&seq.to_le_bytes());
        self.scratch.extend_from_slice(&len.to_le_bytes());
        let crc = checksum(&self.scratch, payload);
        self.scratch.extend_from_slice(&crc.to_le_bytes());
        self.scratch.extend_from_slice(payload);
        let written = self
            .file
            .write_all_at(&self.scratch, self.offset)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            self.erase(self.offset);
            // Until a checkpoint works, batches go to redb durably and not through this file.
            self.checkpoint_due = true;
            return Err(e);
        }
        self.before_last = (self.offset, self.last_seq);
        self.offset += self.scratch.len() as u64;
        self.last_seq = seq;
        self.pass_started.get_or_insert_with(Instant::now);
        Ok(seq)
    }

    /// Takes back the record just appended (its batch did not reach redb): its header is
    /// zeroed so replay stops before it.
    pub fn revoke_last(&mut self) {
        let (offset, seq) = self.before_last;
        self.erase(offset);
        self.offset = offset;
        self.last_seq = seq;
        self.checkpoint_due = true;
    }

    /// Zeroes the magic of the record at `offset`. If even that fails, reading stops there in
    /// this process (after a restart the record may still be applied: its batch was answered
    /// with an error although it is on disk; that double failure is logged).
    fn erase(&mut self, offset: u64) {
        let done = self
            .file
            .write_all_at(&[0u8; 4], offset)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = done {
            tracing::error!(error = %e, "could not take back a commit log record");
            self.cut = Some(offset);
        }
    }

    /// redb now holds everything up to `last_seq` durably: the next record starts the file
    /// again, with a new salt.
    pub fn checkpointed(&mut self, last_seq: u64) {
        self.offset = 0;
        self.last_seq = last_seq;
        self.before_last = (0, last_seq);
        self.pass_started = None;
        self.checkpoint_due = false;
        self.cut = None;
        self.salt = rand::random();
    }

    pub fn mark_checkpoint_due(&mut self) {
        self.checkpoint_due = true;
    }
}

/// A META counter (0 when absent).
fn meta_value(db: &Database, key: &str) -> Result<u64, StoreError> {
    let txn = db.begin_read().map_err(StoreError::io)?;
    let meta = txn.open_table(META).map_err(StoreError::io)?;
    Ok(meta
        .get(key)
        .map_err(StoreError::io)?
        .map(|v| v.value())
        .unwrap_or(0))
}

/// The last log sequence number redb includes.
pub fn db_log_seq(db: &Database) -> Result<u64, StoreError> {
    meta_value(db, LOG_SEQ)
}

/// The database's random identity (0 for a file that never had one).
pub fn db_id(db: &Database) -> Result<u64, StoreError> {
    meta_value(db, DB_ID)
}

/// Applies the log's records that redb does not include, in one transaction. `durable`: the
/// commit is synced and the log starts over; otherwise (the disk may be full) the records are
/// only committed in memory and the next batch must checkpoint. Returns how many were applied.
pub fn replay(db: &Database, log: &mut CommitLog, durable: bool) -> Result<usize, StoreError> {
    let have = db_log_seq(db)?;
    let chain = log.records().map_err(StoreError::io)?;
    let newest = chain.last().map_or(have, |(s, _)| (*s).max(have));
    let missing: Vec<&(u64, Vec<u8>)> = chain.iter().filter(|(s, _)| *s > have).collect();
    if let Some((first, _)) = missing.first() {
        if *first != have + 1 {
            return Err(StoreError::Corrupt(format!(
                "{} holds writes from #{first} but the database stops at #{have}: the log \
                 belongs to another copy of the database; move it away to open this one",
                log.path().display()
            )));
        }
    }
    if !missing.is_empty() {
        let mut txn = db.begin_write().map_err(StoreError::io)?;
        txn.set_quick_repair(super::QUICK_REPAIR);
        if !durable {
            txn.set_durability(Durability::None)
                .map_err(StoreError::io)?;
        }
        let payloads: Vec<&[u8]> = missing.iter().map(|(_, p)| p.as_slice()).collect();
        apply(&payloads, &txn)?;
        {
            let mut meta = txn.open_table(META).map_err(StoreError::io)?;
            meta.insert(LOG_SEQ, newest).map_err(StoreError::io)?;
        }
        txn.commit().map_err(StoreError::io)?;
    }
    if durable || missing.is_empty() {
        // Either the file now holds everything, or it held it already: start a new pass.
        log.checkpointed(newest);
    } else {
        // Appends continue this pass after the chain; the next batch checkpoints.
        log.last_seq = newest;
        log.before_last = (log.offset, newest);
        log.checkpoint_due = true;
    }
    Ok(missing.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: u64 = 42;

    fn tmp_log(cap: u64) -> (tempfile::TempDir, CommitLog) {
        let dir = tempfile::tempdir().unwrap();
        let log = CommitLog::open(&dir.path().join(LOG_FILE), cap, ID).unwrap();
        (dir, log)
    }

    #[test]
    fn records_come_back_in_order_and_a_checkpoint_starts_over() {
        let (_d, mut log) = tmp_log(1 << 16);
        assert!(log.records().unwrap().is_empty());
        assert_eq!(log.append(b"one").unwrap(), 1);
        assert_eq!(log.append(b"two").unwrap(), 2);
        let got = log.records().unwrap();
        assert_eq!(got, vec![(1, b"one".to_vec()), (2, b"two".to_vec())]);
        log.checkpointed(2);
        // Same length as the old first record: the old second one follows it exactly where
        // the next header is read, and must not join the chain.
        assert_eq!(log.append(b"uno").unwrap(), 3);
        assert_eq!(log.records().unwrap(), vec![(3, b"uno".to_vec())]);
    }

    #[test]
    fn a_record_planted_in_an_old_payload_is_not_read() {
        // A record of a previous pass whose payload (user text, say) holds the exact bytes of
        // a valid record with the next sequence number: the salt keeps it out.
        let (_d, mut log) = tmp_log(1 << 16);
        log.append(b"aaaa").unwrap(); // seq 1: offsets 0..36
        let mut planted = Vec::new();
        planted.extend_from_slice(&MAGIC.to_le_bytes());
        planted.extend_from_slice(&ID.to_le_bytes());
        planted.extend_from_slice(&0u32.to_le_bytes()); // a salt guessed or seen before
        planted.extend_from_slice(&4u64.to_le_bytes()); // the next sequence number, guessed
        planted.extend_from_slice(&1u32.to_le_bytes());
        let crc = checksum(&planted, b"!");
        planted.extend_from_slice(&crc.to_le_bytes());
        planted.push(b'!');
        let mut long = vec![b'x'; 4];
        long.extend_from_slice(&planted);
        log.append(&long).unwrap(); // seq 2 at 36; the planted bytes start at 36 + 32 + 4 = 72
        log.checkpointed(2);
        // The new pass's first record ends exactly at 72, where the next header is read.
        log.append(&[b'y'; 40]).unwrap(); // seq 3
        let mut again = CommitLog::open(&log.path, 0, ID).unwrap();
        assert_eq!(again.records().unwrap(), vec![(3, vec![b'y'; 40])]);
    }

    #[test]
    fn a_revoked_or_damaged_record_ends_the_chain() {
        let (_d, mut log) = tmp_log(1 << 16);
        log.append(b"kept").unwrap();
        log.append(b"taken back").unwrap();
        log.revoke_last();
        assert_eq!(log.records().unwrap(), vec![(1, b"kept".to_vec())]);
        log.append(b"again").unwrap();
        let end = log.offset;
        // Flip one payload byte of the last record: its CRC fails.
        log.file.write_all_at(b"X", end - 1).unwrap();
        assert_eq!(log.records().unwrap(), vec![(1, b"kept".to_vec())]);
    }

    #[test]
    fn a_full_log_refuses_instead_of_wrapping() {
        let (_d, mut log) = tmp_log(96);
        assert!(log.append(&[7u8; 30]).is_ok());
        assert!(log.append(&[7u8; 30]).is_err());
        assert_eq!(log.records().unwrap().len(), 1);
        assert!(log.wants_checkpoint(0));
    }

    #[test]
    fn a_pass_ends_after_checkpoint_bytes_even_in_a_large_log() {
        let (_d, mut log) = tmp_log(64 << 20);
        let chunk = vec![1u8; 64 << 10];
        let mut appended = 0;
        while !log.wants_checkpoint(chunk.len()) {
            log.append(&chunk).unwrap();
            appended += 1;
        }
        // Far under half of the 64 MiB: the byte cap asked for the checkpoint.
        assert!(log.offset <= CHECKPOINT_BYTES, "{appended} records");
        assert!(log.offset + (HEADER + chunk.len()) as u64 > CHECKPOINT_BYTES);
        log.checkpointed(log.last_seq());
        assert!(!log.wants_checkpoint(chunk.len()));
    }

    #[test]
    fn records_of_another_database_are_ignored() {
        let (_d, mut log) = tmp_log(1 << 16);
        log.append(b"mine").unwrap();
        let mut other = CommitLog::open(&log.path, 0, ID + 1).unwrap();
        assert!(other.records().unwrap().is_empty());
    }

    fn db_with_tables(dir: &Path) -> Database {
        let db = Database::create(dir.join("t.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap();
        txn.commit().unwrap();
        db
    }

    fn counter(db: &Database, key: &str) -> u64 {
        meta_value(db, key).unwrap()
    }

    fn bump(value: u64) -> Vec<u8> {
        let mut r = Redo::default();
        r.put(Tab::Meta, EVENT_SEQ.as_bytes(), &value.to_le_bytes());
        r.bytes().to_vec()
    }

    #[test]
    fn replay_applies_only_what_the_database_lacks_then_starts_a_new_pass() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with_tables(dir.path());
        let (_d, mut log) = tmp_log(1 << 16);
        for v in 1..=3 {
            log.append(&bump(v)).unwrap();
        }
        // The database already holds record 1.
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert(LOG_SEQ, 1).unwrap();
        txn.commit().unwrap();
        assert_eq!(replay(&db, &mut log, true).unwrap(), 2);
        assert_eq!(counter(&db, EVENT_SEQ), 3);
        assert_eq!(counter(&db, LOG_SEQ), 3);
        assert_eq!(
            (log.offset, log.last_seq, log.checkpoint_due),
            (0, 3, false)
        );
        // Nothing new: nothing applied, no commit needed.
        assert_eq!(replay(&db, &mut log, true).unwrap(), 0);
    }

    #[test]
    fn replay_in_memory_continues_the_pass_and_asks_for_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with_tables(dir.path());
        let (_d, mut log) = tmp_log(1 << 16);
        log.append(&bump(1)).unwrap();
        let end = log.offset;
        assert_eq!(replay(&db, &mut log, false).unwrap(), 1);
        assert_eq!(counter(&db, EVENT_SEQ), 1);
        assert_eq!(
            (log.offset, log.last_seq, log.checkpoint_due),
            (end, 1, true)
        );
        assert_eq!(log.append(&bump(2)).unwrap(), 2);
        assert_eq!(log.records().unwrap().len(), 2);
    }

    #[test]
    fn replay_refuses_a_log_that_does_not_follow_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with_tables(dir.path());
        let (_d, mut log) = tmp_log(1 << 16);
        log.checkpointed(10);
        log.append(&bump(1)).unwrap(); // record 11; the database stops at 0
        assert!(matches!(
            replay(&db, &mut log, true),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn redo_replays_puts_and_deletes_into_every_table() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("t.redb")).unwrap();
        let mut r = Redo::default();
        r.put(Tab::Orders, &[1u8; 16], b"order");
        r.put(Tab::ByCustomer, &[2u8; 40], &[3]);
        r.put(Tab::ByRestaurant, &[4u8; 40], &[5]);
        r.put(Tab::Counts, &[6u8; 17], &9u64.to_le_bytes());
        r.put(Tab::Outbox, &7u64.to_le_bytes(), b"event");
        r.put(Tab::Idempotency, b"svc/key", b"rec");
        r.put(Tab::Meta, b"event_seq", &7u64.to_le_bytes());
        r.put(Tab::Counts, &[8u8; 17], &1u64.to_le_bytes());
        r.delete(Tab::Counts, &[8u8; 17]);
        r.put(Tab::Board, &[9u8; 41], &[]);
        r.put(Tab::RestaurantCounts, &[10u8; 17], &4u64.to_le_bytes());
        r.put(Tab::Finished, &[9u8; 24], &[6]);
        r.put(
            Tab::IdemExpiry,
            b"\x01\x02\x03\x04\x05\x06\x07\x08svc/key",
            &[0],
        );
        r.put(Tab::IdemExpiry, b"gone", &[0]);
        r.delete(Tab::IdemExpiry, b"gone");
        let txn = db.begin_write().unwrap();
        apply(&[r.bytes()], &txn).unwrap();
        txn.commit().unwrap();
        let read = db.begin_read().unwrap();
        let orders = read.open_table(ORDERS).unwrap();
        assert_eq!(orders.get(&[1u8; 16]).unwrap().unwrap().value(), b"order");
        let bc = read.open_table(BY_CUSTOMER).unwrap();
        assert_eq!(bc.get(&[2u8; 40]).unwrap().unwrap().value(), 3);
        let br = read.open_table(BY_RESTAURANT).unwrap();
        assert_eq!(br.get(&[4u8; 40]).unwrap().unwrap().value(), 5);
        let counts = read.open_table(CUSTOMER_COUNTS).unwrap();
        assert_eq!(counts.get(&[6u8; 17]).unwrap().unwrap().value(), 9);
        assert!(counts.get(&[8u8; 17]).unwrap().is_none());
        let ob = read.open_table(OUTBOX).unwrap();
        assert_eq!(ob.get(7).unwrap().unwrap().value(), b"event");
        let idem = read.open_table(IDEMPOTENCY).unwrap();
        assert_eq!(idem.get("svc/key").unwrap().unwrap().value(), b"rec");
        let meta = read.open_table(META).unwrap();
        assert_eq!(meta.get(EVENT_SEQ).unwrap().unwrap().value(), 7);
        let board = read.open_table(BOARD).unwrap();
        assert!(board.get(&[9u8; 41]).unwrap().is_some());
        let rc = read.open_table(RESTAURANT_COUNTS).unwrap();
        assert_eq!(rc.get(&[10u8; 17]).unwrap().unwrap().value(), 4);
        let fin = read.open_table(FINISHED).unwrap();
        assert_eq!(fin.get(&[9u8; 24]).unwrap().unwrap().value(), 6);
        let exp = read.open_table(IDEM_EXPIRY).unwrap();
        assert_eq!(redb::ReadableTableMetadata::len(&exp).unwrap(), 1);
        assert!(exp.get(b"gone".as_slice()).unwrap().is_none());
    }

    #[test]
    fn damaged_payloads_are_refused_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("t.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        for bad in [
            &[9u8, 1, 0, 0][..],                // unknown table
            &[1u8, 16, 0, 1, 2][..],            // key cut short
            &[1u8, 2, 0, 1, 2, 0, 0, 0, 0][..], // orders key of the wrong size
        ] {
            assert!(matches!(apply(&[bad], &txn), Err(StoreError::Corrupt(_))));
        }
    }
}
