//! The Store capability: everything crmbridge persists goes through the
//! [`Store`] trait, a deliberately small set of operations on one table of
//! items keyed by `(pk, sk)`.
//!
//! The operations are exactly what the single-table design of DESIGN.md
//! needs and what DynamoDB can do atomically: a conditional insert (for
//! idempotency), an optimistic update on a version (for cursors and runs), a
//! prefix query on the sort key (for indexes), and a transaction over a few
//! items. Anything richer would not survive the trip to DynamoDB, so it is
//! not offered here; domain types live one level up, in the engine's
//! repositories.
//!
//! Two implementations pass the same contract suite (`tests/contract.rs`):
//! [`DynamoStore`] for AWS and [`SqliteStore`] for `crmbridge serve`.

mod dynamo;
mod item;
mod read_cache;
mod sqlite;

pub use dynamo::{COMPRESS_ABOVE, DynamoStore, billed_bytes};
pub use item::{Item, Page, PutOutcome, Query, Write, now_epoch_seconds};
pub use sqlite::{PreparedInsert, SqliteStore, SqliteWriter, WriteTx, open_connection};

use async_trait::async_trait;

/// Why a store operation failed. `Conflict` is an expected outcome that
/// callers branch on; the others are failures that carry their origin.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("conditional write failed on {pk} / {sk}")]
    Conflict { pk: String, sk: String },
    #[error("transaction cancelled: write #{index} on {pk} / {sk} failed its condition")]
    TransactionConflict {
        index: usize,
        pk: String,
        sk: String,
    },
    #[error("invalid store request: {0}")]
    Invalid(String),
    #[error("item {pk} / {sk} is corrupt: {reason}")]
    Corrupt {
        pk: String,
        sk: String,
        reason: String,
    },
    #[error("{backend} failed during {operation}: {message}")]
    Backend {
        backend: &'static str,
        operation: &'static str,
        message: String,
    },
}

pub type StoreResult<T> = Result<T, StoreError>;

/// One table of items. Expired items (`expires_at` in the past) are absent
/// for every operation, whether or not the backend has reaped them yet:
/// DynamoDB's TTL deletes lazily, up to days late.
#[async_trait]
pub trait Store: Send + Sync {
    /// Reads one item.
    async fn get(&self, pk: &str, sk: &str) -> StoreResult<Option<Item>>;

    /// Writes an item unconditionally, replacing any earlier one.
    async fn put(&self, item: Item) -> StoreResult<()>;

    /// Writes an item only if no live item has its key; otherwise returns the
    /// item that is there, so the caller can act on its state without a
    /// second read.
    async fn put_if_absent(&self, item: Item) -> StoreResult<PutOutcome>;

    /// Writes `entry` unconditionally, then inserts `item` as
    /// [`Store::put_if_absent`] does. The entry is written whatever the
    /// insert finds, and before it: a failure leaves the entry alone (or,
    /// on SQLite, nothing), never the item without its entry (a run and
    /// its index entry).
    /// Two requests on DynamoDB (a transaction would bill both items
    /// twice); one write on SQLite, whose single writer thread is what
    /// bounds `crmbridge serve`.
    async fn put_then_insert(&self, entry: Item, item: Item) -> StoreResult<PutOutcome> {
        self.put(entry).await?;
        self.put_if_absent(item).await
    }

    /// Replaces an item only if its stored version is `expected`; the stored
    /// item gets version `expected + 1`, which is returned. A missing item or
    /// another version is [`StoreError::Conflict`].
    async fn update_if_version(&self, item: Item, expected: u64) -> StoreResult<u64>;

    /// Writes up to [`MAX_BATCH_PUTS`] items unconditionally in one request,
    /// each replacing any earlier one: not atomic (an error may leave some
    /// written), and billed per item, not twice like a transaction. For
    /// entries that may be written again whole (index entries).
    async fn put_many(&self, items: Vec<Item>) -> StoreResult<()>;

    /// Deletes an item; deleting a missing item is not an error.
    async fn delete(&self, pk: &str, sk: &str) -> StoreResult<()>;

    /// Items of one partition whose sort key starts with a prefix, in sort
    /// key order, one page at a time.
    async fn query(&self, query: Query) -> StoreResult<Page>;

    /// Applies every write or none. A failed condition is
    /// [`StoreError::TransactionConflict`] naming the write.
    async fn transact(&self, writes: Vec<Write>) -> StoreResult<()>;
}

/// The most writes one [`Store::transact`] call may carry (DynamoDB's limit).
pub const MAX_TRANSACTION_WRITES: usize = 100;

/// The most items one [`Store::put_many`] call may carry (DynamoDB's
/// `BatchWriteItem` limit).
pub const MAX_BATCH_PUTS: usize = 25;
