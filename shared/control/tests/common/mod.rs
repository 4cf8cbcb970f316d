//! What the engine suites share: a store of either kind (SQLite in a
//! temporary directory, or a fresh DynamoDB table on the emulator), and a
//! way to read back every byte it holds.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crmbridge_store::{DynamoStore, SqliteStore, Store};

pub fn unique() -> u128 {
    static N: AtomicU64 = AtomicU64::new(0);
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros()
        * 1000
        + u128::from(N.fetch_add(1, Ordering::SeqCst))
}

pub async fn dynamo_client() -> aws_sdk_dynamodb::Client {
    let endpoint = std::env::var("CRMBRIDGE_TEST_AWS_ENDPOINT")
        .expect("CRMBRIDGE_TEST_AWS_ENDPOINT is not set: run the suite through infra/test.sh");
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region("us-east-1")
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "testing", "testing", None, None, "t",
        ))
        .load()
        .await;
    aws_sdk_dynamodb::Client::new(&config)
}

/// A store of the kind asked for; `table` names the DynamoDB table.
pub async fn store(dynamo: bool, dir: &Path, table: &str) -> Arc<dyn Store> {
    if dynamo {
        let store = DynamoStore::new(dynamo_client().await, table);
        store.create_table().await.unwrap();
        Arc::new(store)
    } else {
        Arc::new(SqliteStore::open(&dir.join("crmbridge.db")).unwrap())
    }
}

/// Everything the store holds, as text: the DynamoDB table's items, or
/// the SQLite files' bytes (including its write-ahead log).
pub async fn everything_stored(dynamo: bool, dir: &Path, table: &str) -> String {
    if dynamo {
        let items = dynamo_client()
            .await
            .scan()
            .table_name(table)
            .send()
            .await
            .unwrap();
        format!("{:?}", items.items())
    } else {
        let mut text = String::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("crmbridge.db"))
            {
                text.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap()));
            }
        }
        assert!(!text.is_empty(), "the SQLite files were found");
        text
    }
}
