//! One contract suite, run against every Store implementation: the embedded
//! SQLite store and DynamoDB (a real emulator, moto server, whose endpoint
//! `infra/test.sh` exports as CRMBRIDGE_TEST_AWS_ENDPOINT).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use crmbridge_store::{
    DynamoStore, Item, PutOutcome, Query, SqliteStore, Store, StoreError, Write, now_epoch_seconds,
};
use serde_json::json;

async fn dynamo_store() -> DynamoStore {
    let endpoint = std::env::var("CRMBRIDGE_TEST_AWS_ENDPOINT").expect(
        "CRMBRIDGE_TEST_AWS_ENDPOINT is not set: run the suite through infra/test.sh, \
         which starts the DynamoDB emulator (moto server)",
    );
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region("us-east-1")
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "contract-test",
        ))
        .load()
        .await;
    let table = format!("contract-{}", unique());
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&config), table);
    store.create_table().await.unwrap();
    store
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        now_epoch_seconds(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn sqlite_store() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("store.db")).unwrap();
    (store, dir)
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (store, _dir) = super::sqlite_store();
                    super::cases::$case(std::sync::Arc::new(store)).await;
                }
            )*
        }
        mod dynamodb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let store = super::dynamo_store().await;
                    super::cases::$case(std::sync::Arc::new(store)).await;
                }
            )*
        }
    };
}

contract!(
    get_of_a_missing_item_is_none,
    put_then_get_round_trips_every_field,
    put_replaces_an_item,
    put_if_absent_inserts_once_and_returns_the_existing_item,
    put_if_absent_replaces_an_expired_item,
    put_then_insert_writes_the_entry_whatever_the_insert_finds,
    racing_put_then_inserts_have_one_winner_and_every_entry,
    expired_items_are_invisible,
    update_if_version_bumps_the_version,
    update_if_version_rejects_a_stale_or_missing_item,
    delete_removes_and_tolerates_missing,
    query_matches_the_prefix_in_order,
    query_paginates_both_directions,
    query_rejects_a_bad_limit,
    transact_applies_every_write,
    transact_applies_nothing_when_one_condition_fails,
    transact_rejects_duplicate_keys_and_empty_batches,
    put_many_writes_every_item_replacing_earlier_ones,
    large_bodies_round_trip_through_every_write,
    put_many_rejects_an_empty_oversized_or_repeating_batch,
    racing_inserts_have_exactly_one_winner,
    racing_updates_have_exactly_one_winner,
    concurrent_writes_each_get_their_own_answer,
    every_kind_of_write_is_seen_by_the_next_read,
    reads_racing_writes_never_go_back,
);

/// SQLite commits writes in batches (one transaction, one fsync): every
/// write acknowledged is in the file, for a process that opens it next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_writes_acknowledged_in_batches_are_all_in_the_file() {
    let (store, dir) = sqlite_store();
    let store = Arc::new(store);
    cases::concurrent_writes_each_get_their_own_answer(Arc::clone(&store)).await;
    drop(store);
    let reopened = SqliteStore::open(&dir.path().join("store.db")).unwrap();
    cases::check_concurrent_writes(&reopened).await;
}

/// The embedded bus inserts acceptance items through the store's writer
/// (`PreparedInsert`, in its own write): a read that cached the key's
/// absence just before sees the item once that write is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_items_inserted_by_another_writer_job_are_seen_by_the_next_read() {
    let (store, _dir) = sqlite_store();
    assert_eq!(store.get("ACCEPT", "E1").await.unwrap(), None);
    let insert = crmbridge_store::PreparedInsert::of(Item::new("ACCEPT", "E1", json!(1)));
    let outcome = store
        .writer()
        .write("accept", move |tx| insert.run(tx))
        .await
        .unwrap();
    assert_eq!(outcome, PutOutcome::Inserted);
    assert_eq!(
        store
            .get("ACCEPT", "E1")
            .await
            .unwrap()
            .map(|item| item.body),
        Some(json!(1))
    );
}

/// A file from a build that kept items in a `WITHOUT ROWID` table opens
/// with every item, moved once into the current schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_file_from_an_earlier_build_keeps_its_items() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let long = "x".repeat(5000);
    {
        let conn = crmbridge_store::open_connection(&path).unwrap();
        conn.execute_batch(&format!(
            "CREATE TABLE items (
                pk TEXT NOT NULL, sk TEXT NOT NULL, version INTEGER NOT NULL,
                expires_at INTEGER, body TEXT NOT NULL, PRIMARY KEY (pk, sk)
            ) WITHOUT ROWID;
            INSERT INTO items VALUES ('T', 'B', 1, 4102444800, '\"{long}\"');
            INSERT INTO items VALUES ('T', 'A', 3, NULL, '{{\"a\": 1}}');
            INSERT INTO items VALUES ('U', 'A', 1, NULL, '2');"
        ))
        .unwrap();
    }
    let schema = |path: &std::path::Path| -> (String, i64) {
        let conn = crmbridge_store::open_connection(path).unwrap();
        let table = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'items'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        let indexes = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'items_by_key'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        (table, indexes)
    };
    for opening in 0..2 {
        let store = SqliteStore::open(&path).unwrap();
        let a = store.get("T", "A").await.unwrap().unwrap();
        assert_eq!(
            (a.version, a.expires_at, a.body),
            (3, None, json!({"a": 1}))
        );
        let page = store.query(Query::prefix("T", "")).await.unwrap();
        let listed: Vec<_> = page
            .items
            .iter()
            .map(|item| (item.sk.as_str(), item.version, item.expires_at))
            .collect();
        assert_eq!(listed, [("A", 3, None), ("B", 1, Some(4_102_444_800))]);
        assert_eq!(page.items[1].body, json!(long));
        // The key is still unique, and a conditional write still sees it.
        assert!(matches!(
            store
                .put_if_absent(Item::new("U", "A", json!(9)))
                .await
                .unwrap(),
            PutOutcome::Exists(_)
        ));
        drop(store);
        let (table, indexes) = schema(&path);
        assert!(
            !table.to_uppercase().contains("WITHOUT ROWID"),
            "{opening}: {table}"
        );
        assert_eq!(indexes, 1, "{opening}");
    }
}

mod cases {
    use super::*;

    const KEYS: usize = 40;

    /// Many writes of every kind at once, as a loaded server makes them:
    /// two inserts race per key, and transactions whose condition fails
    /// sit among ones whose condition holds. Each gets its own answer.
    pub async fn concurrent_writes_each_get_their_own_answer(store: Arc<impl Store + 'static>) {
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..KEYS * 2 {
            let store = Arc::clone(&store);
            tasks.spawn(async move {
                let key = format!("K{}", n % KEYS);
                let outcome = store
                    .put_if_absent(Item::new("RACE", key, json!({"by": n})))
                    .await
                    .unwrap();
                ("insert", matches!(outcome, PutOutcome::Inserted))
            });
        }
        for n in 0..KEYS {
            let store = Arc::clone(&store);
            tasks.spawn(async move {
                // Odd ones expect a version the item never has: the whole
                // transaction, its first write included, must not happen.
                let mut writes = vec![Write::Put(Item::new(
                    "TX",
                    format!("A{n}"),
                    json!({"n": n}),
                ))];
                if n % 2 == 1 {
                    writes.push(Write::UpdateIfVersion {
                        item: Item::new("TX", "never", json!({})),
                        expected: 99,
                    });
                }
                let result = store.transact(writes).await;
                match (n % 2, result) {
                    (0, Ok(())) => ("transact", true),
                    (1, Err(StoreError::TransactionConflict { index: 1, .. })) => {
                        ("transact", false)
                    }
                    (_, other) => panic!("transaction {n}: {other:?}"),
                }
            });
        }
        let (mut inserted, mut applied) = (0, 0);
        while let Some(done) = tasks.join_next().await {
            match done.unwrap() {
                ("insert", true) => inserted += 1,
                ("transact", true) => applied += 1,
                _ => {}
            }
        }
        assert_eq!(inserted, KEYS, "one winner per key");
        assert_eq!(applied, KEYS / 2);
        check_concurrent_writes(store.as_ref()).await;
    }

    pub async fn check_concurrent_writes(store: &impl Store) {
        let raced = store
            .query(Query::prefix("RACE", "K").limit(100))
            .await
            .unwrap();
        assert_eq!(raced.items.len(), KEYS);
        let applied = store
            .query(Query::prefix("TX", "A").limit(100))
            .await
            .unwrap();
        let mut numbers: Vec<u64> = applied
            .items
            .iter()
            .map(|i| i.body["n"].as_u64().unwrap())
            .collect();
        numbers.sort_unstable();
        assert_eq!(numbers, (0..KEYS as u64).step_by(2).collect::<Vec<_>>());
        assert_eq!(store.get("TX", "never").await.unwrap(), None);
    }

    /// Each write is read right after it is acknowledged, the key having
    /// been read (and so possibly cached) just before: a read must never
    /// answer from what it saw before the write.
    pub async fn every_kind_of_write_is_seen_by_the_next_read(store: Arc<impl Store>) {
        let read = |sk: &'static str| {
            let store = Arc::clone(&store);
            async move {
                store
                    .get("SEEN", sk)
                    .await
                    .unwrap()
                    .map(|item| (item.version, item.body))
            }
        };
        assert_eq!(read("A").await, None);
        assert_eq!(
            store
                .put_if_absent(Item::new("SEEN", "A", json!(1)))
                .await
                .unwrap(),
            PutOutcome::Inserted
        );
        assert_eq!(read("A").await, Some((1, json!(1))), "after an insert");
        store.put(Item::new("SEEN", "A", json!(2))).await.unwrap();
        assert_eq!(read("A").await, Some((1, json!(2))), "after a put");
        store
            .update_if_version(Item::new("SEEN", "A", json!(3)), 1)
            .await
            .unwrap();
        assert_eq!(read("A").await, Some((2, json!(3))), "after an update");
        store.delete("SEEN", "A").await.unwrap();
        assert_eq!(read("A").await, None, "after a delete");

        assert_eq!(read("B").await, None);
        store
            .transact(vec![
                Write::Put(Item::new("SEEN", "B", json!(4))),
                Write::Put(Item::new("SEEN", "C", json!(4))),
            ])
            .await
            .unwrap();
        assert_eq!(read("B").await, Some((1, json!(4))), "after a transaction");
        store
            .transact(vec![Write::Delete {
                pk: "SEEN".into(),
                sk: "B".into(),
            }])
            .await
            .unwrap();
        assert_eq!(read("B").await, None, "after a transaction's delete");

        assert_eq!(read("C").await, Some((1, json!(4))));
        store
            .put_many(vec![Item::new("SEEN", "C", json!(5))])
            .await
            .unwrap();
        assert_eq!(read("C").await, Some((1, json!(5))), "after a batch");

        assert_eq!(read("D").await, None);
        assert_eq!(read("E").await, None);
        store
            .put_then_insert(
                Item::new("SEEN", "D", json!(6)),
                Item::new("SEEN", "E", json!(6)),
            )
            .await
            .unwrap();
        assert_eq!(read("D").await, Some((1, json!(6))), "the entry");
        assert_eq!(read("E").await, Some((1, json!(6))), "the insert");

        // Read while live, then rewritten as already expired: absent.
        store
            .put(Item::new("SEEN", "F", json!(7)).expiring_at(now_epoch_seconds() + 3600))
            .await
            .unwrap();
        assert_eq!(read("F").await, Some((1, json!(7))));
        store
            .put(Item::new("SEEN", "F", json!(8)).expiring_at(now_epoch_seconds() - 1))
            .await
            .unwrap();
        assert_eq!(read("F").await, None, "after it was written expired");
    }

    /// Reads racing a stream of updates never see a version older than
    /// one already acknowledged when the read began, or than one any
    /// read already returned (what a read cache that kept a value read
    /// before a commit would answer).
    pub async fn reads_racing_writes_never_go_back(store: Arc<impl Store + 'static>) {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

        const UPDATES: u64 = 150;
        store
            .put(Item::new("RACE", "READ", json!(1)))
            .await
            .unwrap();
        let acknowledged = Arc::new(AtomicU64::new(1));
        let returned = Arc::new(AtomicU64::new(1));
        let done = Arc::new(AtomicBool::new(false));
        let mut readers = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let (store, acknowledged, returned, done) = (
                Arc::clone(&store),
                Arc::clone(&acknowledged),
                Arc::clone(&returned),
                Arc::clone(&done),
            );
            readers.spawn(async move {
                let mut reads = 0u64;
                while !done.load(Ordering::SeqCst) {
                    let floor = acknowledged
                        .load(Ordering::SeqCst)
                        .max(returned.load(Ordering::SeqCst));
                    let read = store.get("RACE", "READ").await.unwrap().unwrap();
                    assert!(
                        read.version >= floor,
                        "read version {} after version {floor} was acknowledged or returned",
                        read.version
                    );
                    assert_eq!(read.body, json!(read.version), "a torn item");
                    returned.fetch_max(read.version, Ordering::SeqCst);
                    reads += 1;
                }
                reads
            });
        }
        for version in 1..UPDATES {
            // Commits of other keys in between move the cache's
            // generation without touching this one.
            store
                .put(Item::new("RACE", format!("OTHER{version}"), json!(version)))
                .await
                .unwrap();
            let next = store
                .update_if_version(Item::new("RACE", "READ", json!(version + 1)), version)
                .await
                .unwrap();
            acknowledged.store(next, Ordering::SeqCst);
        }
        done.store(true, Ordering::SeqCst);
        let mut reads = 0;
        while let Some(count) = readers.join_next().await {
            reads += count.unwrap();
        }
        assert!(reads >= 4, "every reader read");
        let last = store.get("RACE", "READ").await.unwrap().unwrap();
        assert_eq!(last.version, UPDATES);
    }

    pub async fn get_of_a_missing_item_is_none(store: Arc<impl Store>) {
        assert_eq!(store.get("nope", "nope").await.unwrap(), None);
    }

    pub async fn put_then_get_round_trips_every_field(store: Arc<impl Store>) {
        let body =
            json!({"name": "Заказ по звонку", "n": 1.5, "nested": {"list": [1, "два", null]}});
        let item = Item::new("P#1", "S#1", body.clone()).expiring_at(now_epoch_seconds() + 3600);
        store.put(item.clone()).await.unwrap();
        let read = store.get("P#1", "S#1").await.unwrap().unwrap();
        assert_eq!(read, item);
        assert_eq!(read.body, body);
    }

    pub async fn put_replaces_an_item(store: Arc<impl Store>) {
        store
            .put(Item::new("P", "S", json!({"a": 1})))
            .await
            .unwrap();
        let mut second = Item::new("P", "S", json!({"b": 2}));
        second.version = 7;
        store.put(second.clone()).await.unwrap();
        assert_eq!(store.get("P", "S").await.unwrap(), Some(second));
    }

    pub async fn put_if_absent_inserts_once_and_returns_the_existing_item(store: Arc<impl Store>) {
        let first = Item::new("IDEM#1", "IDEM", json!({"state": "first"}));
        assert_eq!(
            store.put_if_absent(first.clone()).await.unwrap(),
            PutOutcome::Inserted
        );
        let second = Item::new("IDEM#1", "IDEM", json!({"state": "second"}));
        assert_eq!(
            store.put_if_absent(second).await.unwrap(),
            PutOutcome::Exists(first.clone())
        );
        assert_eq!(store.get("IDEM#1", "IDEM").await.unwrap(), Some(first));
    }

    pub async fn put_if_absent_replaces_an_expired_item(store: Arc<impl Store>) {
        let old =
            Item::new("IDEM#2", "IDEM", json!({"old": true})).expiring_at(now_epoch_seconds() - 10);
        store.put(old).await.unwrap();
        let fresh = Item::new("IDEM#2", "IDEM", json!({"old": false}));
        assert_eq!(
            store.put_if_absent(fresh.clone()).await.unwrap(),
            PutOutcome::Inserted
        );
        assert_eq!(store.get("IDEM#2", "IDEM").await.unwrap(), Some(fresh));
    }

    pub async fn put_then_insert_writes_the_entry_whatever_the_insert_finds(
        store: Arc<impl Store>,
    ) {
        let run = Item::new("RUN#1", "RUN", json!({"state": "first"}));
        assert_eq!(
            store
                .put_then_insert(Item::new("T#RUNS", "e1", json!({"n": 1})), run.clone())
                .await
                .unwrap(),
            PutOutcome::Inserted
        );
        // The insert finds the run: the entry is written (replaced) all the same.
        let again = Item::new("RUN#1", "RUN", json!({"state": "second"}));
        assert_eq!(
            store
                .put_then_insert(Item::new("T#RUNS", "e1", json!({"n": 2})), again)
                .await
                .unwrap(),
            PutOutcome::Exists(run.clone())
        );
        assert_eq!(store.get("RUN#1", "RUN").await.unwrap(), Some(run));
        let entry = store.get("T#RUNS", "e1").await.unwrap().unwrap();
        assert_eq!(entry.body, json!({"n": 2}));
    }

    /// The same run created by several workers at once, each with its own
    /// entry: one insert wins, and no entry is lost.
    pub async fn racing_put_then_inserts_have_one_winner_and_every_entry(
        store: Arc<impl Store + 'static>,
    ) {
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..8 {
            let store = Arc::clone(&store);
            tasks.spawn(async move {
                store
                    .put_then_insert(
                        Item::new("T#RUNS", format!("e{n}"), json!({"n": n})),
                        Item::new("RUN#R", "RUN", json!({"by": n})),
                    )
                    .await
                    .unwrap()
            });
        }
        let mut inserted = 0;
        while let Some(outcome) = tasks.join_next().await {
            inserted += usize::from(matches!(outcome.unwrap(), PutOutcome::Inserted));
        }
        assert_eq!(inserted, 1);
        let page = store
            .query(Query::prefix("T#RUNS", "e").limit(20))
            .await
            .unwrap();
        assert_eq!(page.items.len(), 8);
    }

    pub async fn expired_items_are_invisible(store: Arc<impl Store>) {
        let now = now_epoch_seconds();
        store
            .put(Item::new("P", "A", json!(1)).expiring_at(now - 1))
            .await
            .unwrap();
        store
            .put(Item::new("P", "B", json!(2)).expiring_at(now + 3600))
            .await
            .unwrap();
        store.put(Item::new("P", "C", json!(3))).await.unwrap();
        assert_eq!(store.get("P", "A").await.unwrap(), None);
        let page = store.query(Query::prefix("P", "")).await.unwrap();
        let sks: Vec<_> = page.items.iter().map(|i| i.sk.as_str()).collect();
        assert_eq!(sks, ["B", "C"]);
        let err = store
            .update_if_version(Item::new("P", "A", json!(9)), 1)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    }

    pub async fn update_if_version_bumps_the_version(store: Arc<impl Store>) {
        store
            .put(Item::new("CUR", "C", json!({"at": 1})))
            .await
            .unwrap();
        let v2 = store
            .update_if_version(Item::new("CUR", "C", json!({"at": 2})), 1)
            .await
            .unwrap();
        assert_eq!(v2, 2);
        let v3 = store
            .update_if_version(Item::new("CUR", "C", json!({"at": 3})), 2)
            .await
            .unwrap();
        assert_eq!(v3, 3);
        let read = store.get("CUR", "C").await.unwrap().unwrap();
        assert_eq!((read.version, read.body), (3, json!({"at": 3})));
    }

    pub async fn update_if_version_rejects_a_stale_or_missing_item(store: Arc<impl Store>) {
        store
            .put(Item::new("CUR", "C", json!({"at": 1})))
            .await
            .unwrap();
        store
            .update_if_version(Item::new("CUR", "C", json!({"at": 2})), 1)
            .await
            .unwrap();
        let stale = store
            .update_if_version(Item::new("CUR", "C", json!({"at": "stale"})), 1)
            .await
            .unwrap_err();
        assert!(
            matches!(stale, StoreError::Conflict { ref pk, .. } if pk == "CUR"),
            "{stale}"
        );
        let missing = store
            .update_if_version(Item::new("CUR", "missing", json!({})), 1)
            .await
            .unwrap_err();
        assert!(matches!(missing, StoreError::Conflict { .. }), "{missing}");
        assert_eq!(
            store.get("CUR", "C").await.unwrap().unwrap().body,
            json!({"at": 2})
        );
        assert_eq!(store.get("CUR", "missing").await.unwrap(), None);
    }

    pub async fn delete_removes_and_tolerates_missing(store: Arc<impl Store>) {
        store.put(Item::new("D", "1", json!({}))).await.unwrap();
        store.delete("D", "1").await.unwrap();
        assert_eq!(store.get("D", "1").await.unwrap(), None);
        store.delete("D", "1").await.unwrap();
    }

    pub async fn query_matches_the_prefix_in_order(store: Arc<impl Store>) {
        for sk in ["RUN#b", "RUN#a", "RUN#c", "RUNX", "CONN#a", "RU"] {
            store.put(Item::new("T#1", sk, json!(sk))).await.unwrap();
        }
        store
            .put(Item::new("T#2", "RUN#z", json!("other")))
            .await
            .unwrap();
        let asc = store.query(Query::prefix("T#1", "RUN#")).await.unwrap();
        let sks: Vec<_> = asc.items.iter().map(|i| i.sk.as_str()).collect();
        assert_eq!(sks, ["RUN#a", "RUN#b", "RUN#c"]);
        assert_eq!(asc.next, None);
        let desc = store
            .query(Query::prefix("T#1", "RUN#").descending())
            .await
            .unwrap();
        let sks: Vec<_> = desc.items.iter().map(|i| i.sk.as_str()).collect();
        assert_eq!(sks, ["RUN#c", "RUN#b", "RUN#a"]);
        let unicode = store.query(Query::prefix("T#1", "CONN#")).await.unwrap();
        assert_eq!(unicode.items.len(), 1);
    }

    pub async fn query_paginates_both_directions(store: Arc<impl Store>) {
        for i in 0..25 {
            store
                .put(Item::new("PAGE", format!("K#{i:03}"), json!(i)))
                .await
                .unwrap();
        }
        for descending in [false, true] {
            let mut seen = Vec::new();
            let mut after = None;
            let mut pages = 0;
            loop {
                let mut query = Query::prefix("PAGE", "K#").limit(10).after(after.clone());
                if descending {
                    query = query.descending();
                }
                let page = store.query(query).await.unwrap();
                pages += 1;
                assert!(page.items.len() <= 10);
                seen.extend(page.items.iter().map(|i| i.body.as_i64().unwrap()));
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
                assert!(pages < 10, "pagination does not end");
            }
            let mut expected: Vec<i64> = (0..25).collect();
            if descending {
                expected.reverse();
            }
            assert_eq!(seen, expected, "descending = {descending}");
            assert_eq!(pages, 3);
        }
    }

    pub async fn query_rejects_a_bad_limit(store: Arc<impl Store>) {
        let err = store
            .query(Query::prefix("P", "").limit(0))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    }

    pub async fn put_many_writes_every_item_replacing_earlier_ones(store: Arc<impl Store>) {
        store
            .put(Item::new("B", "old", json!("before")).expiring_at(now_epoch_seconds() + 60))
            .await
            .unwrap();
        let mut items: Vec<Item> = (0..24)
            .map(|i| Item::new("B", format!("n{i:02}"), json!({"i": i})))
            .collect();
        items.push(Item::new("B", "old", json!("after")));
        store.put_many(items).await.unwrap();
        let page = store
            .query(Query::prefix("B", "n").limit(100))
            .await
            .unwrap();
        assert_eq!(page.items.len(), 24);
        assert_eq!(page.items[7].body, json!({"i": 7}));
        let replaced = store.get("B", "old").await.unwrap().unwrap();
        assert_eq!(replaced.body, json!("after"));
        assert_eq!(replaced.expires_at, None, "replaced whole, TTL included");
    }

    pub async fn large_bodies_round_trip_through_every_write(store: Arc<impl Store>) {
        // Past the size DynamoDB stores deflated, with text that does not
        // compress away (ids) and text that does (repeats), unicode included.
        let large = |n: u64| {
            json!({
                "n": n,
                "ids": (0..120).map(|i| format!("id_{:016x}", i * 7919 + n)).collect::<Vec<_>>(),
                "note": "Заказ №42 — ".repeat(80),
            })
        };
        assert!(large(0).to_string().len() > 4 * crmbridge_store::COMPRESS_ABOVE);
        store.put(Item::new("L", "put", large(1))).await.unwrap();
        store
            .put_if_absent(Item::new("L", "absent", large(2)))
            .await
            .unwrap();
        let PutOutcome::Exists(existing) = store
            .put_if_absent(Item::new("L", "absent", large(3)))
            .await
            .unwrap()
        else {
            panic!("inserted twice");
        };
        assert_eq!(
            existing.body,
            large(2),
            "the existing item comes back whole"
        );
        store
            .update_if_version(Item::new("L", "absent", large(4)), 1)
            .await
            .unwrap();
        store
            .transact(vec![Write::PutIfAbsent(Item::new("L", "tx", large(5)))])
            .await
            .unwrap();
        store
            .put_many(vec![Item::new("L", "many", large(6))])
            .await
            .unwrap();
        assert_eq!(store.get("L", "put").await.unwrap().unwrap().body, large(1));
        assert_eq!(
            store.get("L", "absent").await.unwrap().unwrap().body,
            large(4)
        );
        let page = store.query(Query::prefix("L", "").limit(10)).await.unwrap();
        let bodies: Vec<_> = page.items.into_iter().map(|i| (i.sk, i.body)).collect();
        assert_eq!(
            bodies,
            vec![
                ("absent".to_owned(), large(4)),
                ("many".to_owned(), large(6)),
                ("put".to_owned(), large(1)),
                ("tx".to_owned(), large(5)),
            ]
        );
    }

    pub async fn put_many_rejects_an_empty_oversized_or_repeating_batch(store: Arc<impl Store>) {
        let many: Vec<Item> = (0..=crmbridge_store::MAX_BATCH_PUTS)
            .map(|i| Item::new("C", format!("{i}"), json!(i)))
            .collect();
        for batch in [
            Vec::new(),
            many,
            vec![Item::new("C", "a", json!(1)), Item::new("C", "a", json!(2))],
        ] {
            let err = store.put_many(batch).await.unwrap_err();
            assert!(matches!(err, StoreError::Invalid(_)), "{err}");
        }
        let page = store
            .query(Query::prefix("C", "").limit(100))
            .await
            .unwrap();
        assert!(page.items.is_empty(), "a refused batch writes nothing");
    }

    pub async fn transact_applies_every_write(store: Arc<impl Store>) {
        store
            .put(Item::new("X", "versioned", json!(1)))
            .await
            .unwrap();
        store.put(Item::new("X", "doomed", json!(1))).await.unwrap();
        store
            .transact(vec![
                Write::PutIfAbsent(Item::new("X", "new", json!("n"))),
                Write::Put(Item::new("Y", "plain", json!("p"))),
                Write::UpdateIfVersion {
                    item: Item::new("X", "versioned", json!(2)),
                    expected: 1,
                },
                Write::Delete {
                    pk: "X".into(),
                    sk: "doomed".into(),
                },
            ])
            .await
            .unwrap();
        assert_eq!(
            store.get("X", "new").await.unwrap().unwrap().body,
            json!("n")
        );
        assert_eq!(
            store.get("Y", "plain").await.unwrap().unwrap().body,
            json!("p")
        );
        let versioned = store.get("X", "versioned").await.unwrap().unwrap();
        assert_eq!((versioned.version, versioned.body), (2, json!(2)));
        assert_eq!(store.get("X", "doomed").await.unwrap(), None);
    }

    pub async fn transact_applies_nothing_when_one_condition_fails(store: Arc<impl Store>) {
        store
            .put(Item::new("X", "taken", json!("original")))
            .await
            .unwrap();
        let err = store
            .transact(vec![
                Write::Put(Item::new("X", "a", json!("a"))),
                Write::PutIfAbsent(Item::new("X", "taken", json!("overwritten"))),
                Write::Delete {
                    pk: "X".into(),
                    sk: "other".into(),
                },
            ])
            .await
            .unwrap_err();
        match err {
            StoreError::TransactionConflict { index, pk, sk } => {
                assert_eq!((index, pk.as_str(), sk.as_str()), (1, "X", "taken"));
            }
            other => panic!("expected a transaction conflict, got {other}"),
        }
        assert_eq!(store.get("X", "a").await.unwrap(), None);
        assert_eq!(
            store.get("X", "taken").await.unwrap().unwrap().body,
            json!("original")
        );
    }

    pub async fn transact_rejects_duplicate_keys_and_empty_batches(store: Arc<impl Store>) {
        let dup = store
            .transact(vec![
                Write::Put(Item::new("X", "same", json!(1))),
                Write::Put(Item::new("X", "same", json!(2))),
            ])
            .await
            .unwrap_err();
        assert!(
            matches!(dup, StoreError::Invalid(ref m) if m.contains("twice")),
            "{dup}"
        );
        assert!(matches!(
            store.transact(vec![]).await.unwrap_err(),
            StoreError::Invalid(_)
        ));
        assert_eq!(store.get("X", "same").await.unwrap(), None);
    }

    pub async fn racing_inserts_have_exactly_one_winner(store: Arc<impl Store + 'static>) {
        let mut tasks = Vec::new();
        for i in 0..8 {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                store
                    .put_if_absent(Item::new("RACE", "IDEM", json!(i)))
                    .await
                    .unwrap()
            }));
        }
        let mut winners = 0;
        for task in tasks {
            if task.await.unwrap() == PutOutcome::Inserted {
                winners += 1;
            }
        }
        assert_eq!(winners, 1);
    }

    pub async fn racing_updates_have_exactly_one_winner(store: Arc<impl Store + 'static>) {
        store
            .put(Item::new("RACE", "CURSOR", json!(0)))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..6 {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                store
                    .update_if_version(Item::new("RACE", "CURSOR", json!(i)), 1)
                    .await
                    .is_ok()
            }));
        }
        let mut winners = 0;
        for task in tasks {
            if task.await.unwrap() {
                winners += 1;
            }
        }
        assert_eq!(winners, 1);
        assert_eq!(
            store.get("RACE", "CURSOR").await.unwrap().unwrap().version,
            2
        );
    }
}
