//! The DynamoDB store.
//!
//! Item layout: `pk` (S), `sk` (S), `version` (N), `expires_at` (N, the
//! table's TTL attribute, absent when the item never expires) and `body` (S,
//! the record as JSON). Keeping the record as one JSON string rather than
//! native attributes keeps both backends alike and lets the domain types
//! evolve without a migration; nothing queries inside a body.
//!
//! A body longer than [`COMPRESS_ABOVE`] bytes is stored deflated instead,
//! as `bodyz` (B): DynamoDB bills writes per started KB of the item, and a
//! run (its event, each step's request and answer) deflates to less than
//! half, so most runs are written for one unit instead of two to four.
//! Both forms are read; [`billed_bytes`] is the size DynamoDB bills.
//!
//! Expired-but-not-yet-reaped items are treated as absent: every condition
//! says "absent OR expired", and reads filter on `expires_at`.

use std::collections::HashMap;
use std::io::{Read, Write as _};

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, Delete, KeySchemaElement, KeyType, Put,
    PutRequest, ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TimeToLiveSpecification,
    TransactWriteItem, WriteRequest,
};
use flate2::Compression;
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;

use crate::item::{check_batch, check_limit, check_transaction};
use crate::{
    Item, Page, PutOutcome, Query, Store, StoreError, StoreResult, Write, now_epoch_seconds,
};

/// Bodies longer than this (bytes of JSON) are stored deflated.
pub const COMPRESS_ABOVE: usize = 400;

/// The name of the TTL attribute; template.yaml declares the same.
pub const TTL_ATTRIBUTE: &str = "expires_at";

/// How often one `put_many` sends what DynamoDB left unprocessed.
const BATCH_ATTEMPTS: u32 = 5;

const ABSENT_OR_EXPIRED: &str = "attribute_not_exists(pk) OR expires_at <= :now";
const LIVE_AT_VERSION: &str = "attribute_exists(pk) AND version = :expected AND (attribute_not_exists(expires_at) OR expires_at > :now)";

#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

type AttributeMap = HashMap<String, AttributeValue>;

fn backend<E: std::error::Error>(operation: &'static str) -> impl Fn(E) -> StoreError {
    move |err| StoreError::Backend {
        backend: "dynamodb",
        operation,
        // The SDK's plain Display is terse ("service error"); the context
        // form names the exception and its message. Neither contains
        // credentials: requests are signed, not echoed.
        message: DisplayErrorContext(&err).to_string(),
    }
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table as template.yaml defines it (pk/sk strings, on
    /// demand, TTL on `expires_at`). For tests, `crmbridge admin bootstrap`
    /// against an emulator, and nothing on AWS, where SAM owns the table.
    pub async fn create_table(&self) -> StoreResult<()> {
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(backend("create_table"))
        };
        let attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(backend("create_table"))
        };
        self.client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(key("pk", KeyType::Hash)?)
            .key_schema(key("sk", KeyType::Range)?)
            .attribute_definitions(attr("pk")?)
            .attribute_definitions(attr("sk")?)
            .send()
            .await
            .map_err(backend("create_table"))?;
        self.client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name(TTL_ATTRIBUTE)
                    .enabled(true)
                    .build()
                    .map_err(backend("update_time_to_live"))?,
            )
            .send()
            .await
            .map_err(backend("update_time_to_live"))?;
        Ok(())
    }
}

fn to_attributes(item: &Item) -> AttributeMap {
    let mut map = AttributeMap::new();
    map.insert("pk".into(), AttributeValue::S(item.pk.clone()));
    map.insert("sk".into(), AttributeValue::S(item.sk.clone()));
    map.insert(
        "version".into(),
        AttributeValue::N(item.version.to_string()),
    );
    if let Some(at) = item.expires_at {
        map.insert(TTL_ATTRIBUTE.into(), AttributeValue::N(at.to_string()));
    }
    match stored_body(item) {
        StoredBody::Plain(json) => map.insert("body".into(), AttributeValue::S(json)),
        StoredBody::Deflated(bytes) => {
            map.insert("bodyz".into(), AttributeValue::B(Blob::new(bytes)))
        }
    };
    map
}

/// How an item's body is stored.
enum StoredBody {
    Plain(String),
    Deflated(Vec<u8>),
}

fn stored_body(item: &Item) -> StoredBody {
    let json = item.body.to_string();
    if json.len() <= COMPRESS_ABOVE {
        return StoredBody::Plain(json);
    }
    let mut encoder = DeflateEncoder::new(Vec::new(), Compression::fast());
    // Writing into a Vec cannot fail; if it somehow did, store it plain.
    match encoder
        .write_all(json.as_bytes())
        .and_then(|()| encoder.finish())
    {
        Ok(bytes) if bytes.len() < json.len() => StoredBody::Deflated(bytes),
        _ => StoredBody::Plain(json),
    }
}

/// The bytes DynamoDB bills for `item` as this store writes it: attribute
/// names plus values (numbers counted as their digits, a close upper bound).
pub fn billed_bytes(item: &Item) -> u64 {
    let digits = |n: u64| n.to_string().len() as u64;
    let mut size = 2 + item.pk.len() as u64 + 2 + item.sk.len() as u64 + 7 + digits(item.version);
    if let Some(at) = item.expires_at {
        size += TTL_ATTRIBUTE.len() as u64 + digits(at.unsigned_abs());
    }
    size + match stored_body(item) {
        StoredBody::Plain(json) => 4 + json.len() as u64,
        StoredBody::Deflated(bytes) => 5 + bytes.len() as u64,
    }
}

fn from_attributes(map: &AttributeMap) -> StoreResult<Item> {
    let text = |name: &str| match map.get(name) {
        Some(AttributeValue::S(value)) => Some(value.clone()),
        _ => None,
    };
    let number = |name: &str| match map.get(name) {
        Some(AttributeValue::N(value)) => value.parse::<i64>().ok(),
        _ => None,
    };
    let pk = text("pk").unwrap_or_default();
    let sk = text("sk").unwrap_or_default();
    let corrupt = |reason: String| StoreError::Corrupt {
        pk: pk.clone(),
        sk: sk.clone(),
        reason,
    };
    let body = match (map.get("body"), map.get("bodyz")) {
        (Some(AttributeValue::S(json)), _) => {
            serde_json::from_str(json).map_err(|err| corrupt(err.to_string()))?
        }
        (_, Some(AttributeValue::B(deflated))) => {
            let mut json = Vec::new();
            DeflateDecoder::new(deflated.as_ref())
                .read_to_end(&mut json)
                .map_err(|err| corrupt(format!("bodyz does not inflate: {err}")))?;
            serde_json::from_slice(&json).map_err(|err| corrupt(err.to_string()))?
        }
        _ => return Err(corrupt("no body attribute".into())),
    };
    let version = number("version").ok_or_else(|| corrupt("no version attribute".into()))?;
    Ok(Item {
        pk: pk.clone(),
        sk: sk.clone(),
        version: u64::try_from(version).unwrap_or_default(),
        expires_at: number(TTL_ATTRIBUTE),
        body,
    })
}

fn key_of(pk: &str, sk: &str) -> AttributeMap {
    HashMap::from([
        ("pk".to_owned(), AttributeValue::S(pk.to_owned())),
        ("sk".to_owned(), AttributeValue::S(sk.to_owned())),
    ])
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

impl DynamoStore {
    fn transact_item(&self, write: &Write, now: i64) -> StoreResult<TransactWriteItem> {
        let built = match write {
            Write::Put(item) => TransactWriteItem::builder().put(
                Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(to_attributes(item)))
                    .build()
                    .map_err(backend("transact"))?,
            ),
            Write::PutIfAbsent(item) => TransactWriteItem::builder().put(
                Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(to_attributes(item)))
                    .condition_expression(ABSENT_OR_EXPIRED)
                    .expression_attribute_values(":now", n(now))
                    .build()
                    .map_err(backend("transact"))?,
            ),
            Write::UpdateIfVersion { item, expected } => {
                let mut next = item.clone();
                next.version = expected + 1;
                TransactWriteItem::builder().put(
                    Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(to_attributes(&next)))
                        .condition_expression(LIVE_AT_VERSION)
                        .expression_attribute_values(":expected", n(expected))
                        .expression_attribute_values(":now", n(now))
                        .build()
                        .map_err(backend("transact"))?,
                )
            }
            Write::Delete { pk, sk } => TransactWriteItem::builder().delete(
                Delete::builder()
                    .table_name(&self.table)
                    .set_key(Some(key_of(pk, sk)))
                    .build()
                    .map_err(backend("transact"))?,
            ),
        };
        Ok(built.build())
    }
}

#[async_trait]
impl Store for DynamoStore {
    async fn get(&self, pk: &str, sk: &str) -> StoreResult<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_of(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(backend("get"))?;
        match out.item() {
            None => Ok(None),
            Some(map) => {
                let item = from_attributes(map)?;
                Ok(item.is_live(now_epoch_seconds()).then_some(item))
            }
        }
    }

    async fn put(&self, item: Item) -> StoreResult<()> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(to_attributes(&item)))
            .send()
            .await
            .map_err(backend("put"))?;
        Ok(())
    }

    async fn put_many(&self, items: Vec<Item>) -> StoreResult<()> {
        check_batch(&items)?;
        let mut pending: Vec<WriteRequest> = items
            .iter()
            .map(|item| {
                PutRequest::builder()
                    .set_item(Some(to_attributes(item)))
                    .build()
                    .map(|put| WriteRequest::builder().put_request(put).build())
                    .map_err(backend("put_many"))
            })
            .collect::<StoreResult<_>>()?;
        // DynamoDB may leave some of a batch unprocessed when a partition is
        // busy: send those again, backing off, before calling it a failure.
        for attempt in 0..BATCH_ATTEMPTS {
            let answer = self
                .client
                .batch_write_item()
                .request_items(self.table.clone(), pending)
                .send()
                .await
                .map_err(backend("put_many"))?;
            pending = answer
                .unprocessed_items
                .and_then(|mut left| left.remove(&self.table))
                .unwrap_or_default();
            if pending.is_empty() {
                return Ok(());
            }
            if attempt + 1 < BATCH_ATTEMPTS {
                tokio::time::sleep(std::time::Duration::from_millis(25 << attempt)).await;
            }
        }
        Err(StoreError::Backend {
            backend: "dynamodb",
            operation: "put_many",
            message: format!(
                "{} of {} items still unprocessed after {BATCH_ATTEMPTS} attempts",
                pending.len(),
                items.len()
            ),
        })
    }

    async fn put_if_absent(&self, item: Item) -> StoreResult<PutOutcome> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(to_attributes(&item)))
            .condition_expression(ABSENT_OR_EXPIRED)
            .expression_attribute_values(":now", n(now_epoch_seconds()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(PutOutcome::Inserted),
            Err(SdkError::ServiceError(service)) => match service.err() {
                PutItemError::ConditionalCheckFailedException(failed) => match failed.item() {
                    Some(old) => Ok(PutOutcome::Exists(from_attributes(old)?)),
                    // Older emulators omit ALL_OLD; one read recovers it.
                    None => match self.get(&item.pk, &item.sk).await? {
                        Some(existing) => Ok(PutOutcome::Exists(existing)),
                        None => Err(StoreError::Conflict {
                            pk: item.pk,
                            sk: item.sk,
                        }),
                    },
                },
                other => Err(backend("put_if_absent")(other)),
            },
            Err(other) => Err(backend("put_if_absent")(other)),
        }
    }

    async fn update_if_version(&self, item: Item, expected: u64) -> StoreResult<u64> {
        let mut next = item;
        next.version = expected + 1;
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(to_attributes(&next)))
            .condition_expression(LIVE_AT_VERSION)
            .expression_attribute_values(":expected", n(expected))
            .expression_attribute_values(":now", n(now_epoch_seconds()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(expected + 1),
            Err(SdkError::ServiceError(service))
                if matches!(
                    service.err(),
                    PutItemError::ConditionalCheckFailedException(_)
                ) =>
            {
                Err(StoreError::Conflict {
                    pk: next.pk,
                    sk: next.sk,
                })
            }
            Err(other) => Err(backend("update_if_version")(other)),
        }
    }

    async fn delete(&self, pk: &str, sk: &str) -> StoreResult<()> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key_of(pk, sk)))
            .send()
            .await
            .map_err(backend("delete"))?;
        Ok(())
    }

    async fn query(&self, query: Query) -> StoreResult<Page> {
        check_limit(&query)?;
        let mut items = Vec::new();
        let mut start = query.start_after.as_deref().map(|sk| key_of(&query.pk, sk));
        // DynamoDB applies Limit before the expiry filter, so a page may come
        // back short with more behind it: keep reading until the page is full
        // or the partition is exhausted.
        loop {
            let want = query.limit - items.len();
            let mut request = self
                .client
                .query()
                .table_name(&self.table)
                .filter_expression("attribute_not_exists(expires_at) OR expires_at > :now")
                .expression_attribute_values(":pk", AttributeValue::S(query.pk.clone()))
                .expression_attribute_values(":now", n(now_epoch_seconds()));
            // DynamoDB rejects an empty string in a key condition, so an
            // empty prefix means "the whole partition".
            request = if query.sk_prefix.is_empty() {
                request.key_condition_expression("pk = :pk")
            } else {
                request
                    .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                    .expression_attribute_values(
                        ":prefix",
                        AttributeValue::S(query.sk_prefix.clone()),
                    )
            };
            let out = request
                .scan_index_forward(!query.descending)
                .consistent_read(true)
                .limit(i32::try_from(want + 1).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(backend("query"))?;
            for map in out.items() {
                items.push(from_attributes(map)?);
            }
            let exhausted = out.last_evaluated_key().is_none();
            if items.len() > query.limit {
                items.truncate(query.limit);
                let next = items.last().map(|item| item.sk.clone());
                return Ok(Page { items, next });
            }
            if exhausted {
                return Ok(Page { items, next: None });
            }
            start = out.last_evaluated_key().cloned();
        }
    }

    async fn transact(&self, writes: Vec<Write>) -> StoreResult<()> {
        check_transaction(&writes)?;
        let now = now_epoch_seconds();
        let mut request = self.client.transact_write_items();
        for write in &writes {
            request = request.transact_items(self.transact_item(write, now)?);
        }
        match request.send().await {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(service)) => match service.err() {
                TransactWriteItemsError::TransactionCanceledException(cancelled) => {
                    // A write racing ours on the same item cancels the
                    // transaction too (`TransactionConflict`): to a caller
                    // doing optimistic concurrency that is the same as a
                    // failed condition — read again and decide again.
                    let index = cancelled.cancellation_reasons().iter().position(|reason| {
                        matches!(
                            reason.code(),
                            Some("ConditionalCheckFailed" | "TransactionConflict")
                        )
                    });
                    match index {
                        Some(index) => {
                            let (pk, sk) = writes[index].key();
                            Err(StoreError::TransactionConflict {
                                index,
                                pk: pk.to_owned(),
                                sk: sk.to_owned(),
                            })
                        }
                        None => Err(backend("transact")(cancelled)),
                    }
                }
                other => Err(backend("transact")(other)),
            },
            Err(other) => Err(backend("transact")(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn run_like(steps: usize) -> Item {
        let step = serde_json::json!({"action": "http.request.send", "attempts": 1, "id": "post",
            "request": {"connection": "con_932715fe593befcf5e25c53d", "fields": {"json": {"email": "buyer1@example.com", "order": "O-1"}, "url": "/orders"}},
            "output": {"status": 201, "headers": {"content-type": "application/json"}}, "status": "succeeded"});
        Item::new(
            "RUN#run_fa703a6f8af820d4260b815dd068f8f0",
            "RUN",
            serde_json::json!({"tenant": "ten_6d85ede475fd6fb60c08ebed", "steps": vec![step; steps]}),
        )
        .expiring_at(1_800_000_000)
    }

    #[test]
    fn small_bodies_stay_plain_and_large_ones_are_billed_deflated() {
        let small = Item::new("P", "S", serde_json::json!({"a": 1}));
        assert!(matches!(stored_body(&small), StoredBody::Plain(_)));
        assert_eq!(
            billed_bytes(&small),
            2 + 1 + 2 + 1 + 7 + 1 + 4 + small.body.to_string().len() as u64
        );
        let large = run_like(6);
        let plain = large.body.to_string().len() as u64;
        assert!(matches!(stored_body(&large), StoredBody::Deflated(_)));
        assert!(
            billed_bytes(&large) < plain / 2,
            "{} of {plain}",
            billed_bytes(&large)
        );
    }

    #[test]
    fn a_deflated_body_reads_back_as_written() {
        let large = run_like(3);
        let read = from_attributes(&to_attributes(&large)).unwrap();
        assert_eq!(read, large);
        assert!(to_attributes(&large).contains_key("bodyz"));
        assert!(!to_attributes(&large).contains_key("body"));
    }

    #[test]
    fn an_item_without_a_readable_body_is_corrupt() {
        let mut map = to_attributes(&run_like(3));
        map.insert("bodyz".into(), AttributeValue::B(Blob::new(vec![1, 2, 3])));
        assert!(matches!(
            from_attributes(&map),
            Err(StoreError::Corrupt { .. })
        ));
        map.remove("bodyz");
        assert!(matches!(
            from_attributes(&map),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
