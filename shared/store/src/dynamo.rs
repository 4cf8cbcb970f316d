//! The DynamoDB store.
//!
//! Item layout: `pk` (S), `sk` (S), `version` (N), `expires_at` (N, the
//! table's TTL attribute, absent when the item never expires) and `body` (S,
//! the record as JSON). Keeping the record as one JSON string rather than
//! native attributes keeps both backends byte-for-byte alike and lets the
//! domain types evolve without a migration; nothing queries inside a body.
//!
//! Expired-but-not-yet-reaped items are treated as absent: every condition
//! says "absent OR expired", and reads filter on `expires_at`.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, Delete, KeySchemaElement, KeyType, Put,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TimeToLiveSpecification,
    TransactWriteItem,
};

use crate::item::{check_limit, check_transaction};
use crate::{
    Item, Page, PutOutcome, Query, Store, StoreError, StoreResult, Write, now_epoch_seconds,
};

/// The name of the TTL attribute; template.yaml declares the same.
pub const TTL_ATTRIBUTE: &str = "expires_at";

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
    map.insert("body".into(), AttributeValue::S(item.body.to_string()));
    map
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
    let body = text("body").ok_or_else(|| corrupt("no body attribute".into()))?;
    let body = serde_json::from_str(&body).map_err(|err| corrupt(err.to_string()))?;
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
