//! The item model shared by both backends.

use std::time::{SystemTime, UNIX_EPOCH};

/// One stored item. `body` is the domain record as JSON; `version` supports
/// optimistic updates; `expires_at` (epoch seconds) is the TTL.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub pk: String,
    pub sk: String,
    pub version: u64,
    pub expires_at: Option<i64>,
    pub body: serde_json::Value,
}

impl Item {
    /// A first version of an item that never expires.
    pub fn new(pk: impl Into<String>, sk: impl Into<String>, body: serde_json::Value) -> Self {
        Self {
            pk: pk.into(),
            sk: sk.into(),
            version: 1,
            expires_at: None,
            body,
        }
    }

    pub fn expiring_at(mut self, epoch_seconds: i64) -> Self {
        self.expires_at = Some(epoch_seconds);
        self
    }

    pub(crate) fn is_live(&self, now: i64) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

/// What a conditional insert found.
#[derive(Debug, Clone, PartialEq)]
pub enum PutOutcome {
    Inserted,
    /// A live item with that key was already there; it is unchanged.
    Exists(Item),
}

/// One write of a transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Put(Item),
    PutIfAbsent(Item),
    UpdateIfVersion { item: Item, expected: u64 },
    Delete { pk: String, sk: String },
}

impl Write {
    pub(crate) fn key(&self) -> (&str, &str) {
        match self {
            Write::Put(item) | Write::PutIfAbsent(item) | Write::UpdateIfVersion { item, .. } => {
                (&item.pk, &item.sk)
            }
            Write::Delete { pk, sk } => (pk, sk),
        }
    }
}

/// A prefix query on one partition.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub pk: String,
    pub sk_prefix: String,
    pub limit: usize,
    /// Continue after this sort key (the `next` of an earlier page).
    pub start_after: Option<String>,
    pub descending: bool,
}

impl Query {
    pub fn prefix(pk: impl Into<String>, sk_prefix: impl Into<String>) -> Self {
        Self {
            pk: pk.into(),
            sk_prefix: sk_prefix.into(),
            limit: 100,
            start_after: None,
            descending: false,
        }
    }

    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    pub fn after(mut self, sk: Option<String>) -> Self {
        self.start_after = sk;
        self
    }

    pub fn descending(mut self) -> Self {
        self.descending = true;
        self
    }
}

/// One page of a query. `next` is set when more items may follow; pass it
/// back as `start_after`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Page {
    pub items: Vec<Item>,
    pub next: Option<String>,
}

pub fn now_epoch_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

pub(crate) fn check_limit(query: &Query) -> Result<(), crate::StoreError> {
    if query.limit == 0 || query.limit > 1000 {
        return Err(crate::StoreError::Invalid(format!(
            "query limit must be between 1 and 1000, got {}",
            query.limit
        )));
    }
    Ok(())
}

pub(crate) fn check_transaction(writes: &[Write]) -> Result<(), crate::StoreError> {
    check_request(
        "a transaction",
        "writes",
        crate::MAX_TRANSACTION_WRITES,
        writes.iter().map(Write::key).collect(),
    )
}

pub(crate) fn check_batch(items: &[Item]) -> Result<(), crate::StoreError> {
    check_request(
        "a batch",
        "items",
        crate::MAX_BATCH_PUTS,
        items
            .iter()
            .map(|i| (i.pk.as_str(), i.sk.as_str()))
            .collect(),
    )
}

/// Refuses a multi-item request that is empty, larger than `max`, or names
/// one item twice: DynamoDB refuses those, so both stores do.
fn check_request(
    what: &str,
    unit: &str,
    max: usize,
    mut keys: Vec<(&str, &str)>,
) -> Result<(), crate::StoreError> {
    if keys.is_empty() || keys.len() > max {
        return Err(crate::StoreError::Invalid(format!(
            "{what} takes 1 to {max} {unit}, got {}",
            keys.len()
        )));
    }
    keys.sort_unstable();
    if let Some(pair) = keys.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(crate::StoreError::Invalid(format!(
            "{what} names {} / {} twice",
            pair[0].0, pair[0].1
        )));
    }
    Ok(())
}
