//! The write budget of the hot path, counted at the store on both
//! backends: what accepting one webhook and running one one-step
//! automation (webhook → `http.request.send`) cost in store calls, in the
//! steady state (caches warm, the connection's limits not binding).
//!
//! The budget, as the README states it: accepting a webhook ≤ 2 writes;
//! a one-step run ≤ 3 writes of ≤ 4 items, none a transaction; neither
//! reads back what it just wrote; the run reads nothing but the tenant's
//! configuration stamp and the subject's links. And a poll that finds nothing new: its
//! tick writes its claim, the poll itself writes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use crmbridge_bus::{Bus, BusError};
use crmbridge_connectors::Registry;
use crmbridge_control::admin::{NewConnection, Principal};
use crmbridge_control::prelude::*;
use crmbridge_engine::ingest::WebhookRequest;
use crmbridge_engine::{Automation, Engine, EngineConfig, Keyring};
use crmbridge_fakes::vendors::http::FakeReceiver;
use crmbridge_mapping::Event;
use crmbridge_store::{Item, Page, PutOutcome, Query, Store, StoreResult, Write};
use serde_json::json;

/// One store call: what it was and on which key.
#[derive(Debug, Clone)]
struct Call {
    op: &'static str,
    key: String,
    writes: usize,
}

/// A store that logs every call before passing it on.
struct Logged {
    inner: Arc<dyn Store>,
    calls: Mutex<Vec<Call>>,
}

impl Logged {
    fn log(&self, op: &'static str, pk: &str, sk: &str, writes: usize) {
        self.calls.lock().unwrap().push(Call {
            op,
            key: format!("{pk} | {sk}"),
            writes,
        });
    }

    fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

#[async_trait]
impl Store for Logged {
    async fn get(&self, pk: &str, sk: &str) -> StoreResult<Option<Item>> {
        self.log("get", pk, sk, 0);
        self.inner.get(pk, sk).await
    }
    async fn put(&self, item: Item) -> StoreResult<()> {
        self.log("put", &item.pk, &item.sk, 1);
        self.inner.put(item).await
    }
    async fn put_many(&self, items: Vec<Item>) -> StoreResult<()> {
        let keys: Vec<String> = items.iter().map(|i| format!("{} | {}", i.pk, i.sk)).collect();
        self.log("put_many", &keys.join(" + "), "", items.len());
        self.inner.put_many(items).await
    }
    async fn put_if_absent(&self, item: Item) -> StoreResult<PutOutcome> {
        self.log("put_if_absent", &item.pk, &item.sk, 1);
        self.inner.put_if_absent(item).await
    }
    async fn update_if_version(&self, item: Item, expected: u64) -> StoreResult<u64> {
        self.log("update_if_version", &item.pk, &item.sk, 1);
        self.inner.update_if_version(item, expected).await
    }
    async fn delete(&self, pk: &str, sk: &str) -> StoreResult<()> {
        self.log("delete", pk, sk, 1);
        self.inner.delete(pk, sk).await
    }
    async fn query(&self, query: Query) -> StoreResult<Page> {
        self.log("query", &query.pk, "", 0);
        self.inner.query(query).await
    }
    async fn transact(&self, writes: Vec<Write>) -> StoreResult<()> {
        let keys: Vec<String> = writes
            .iter()
            .map(|w| match w {
                Write::Put(i) | Write::PutIfAbsent(i) | Write::UpdateIfVersion { item: i, .. } => {
                    format!("{} | {}", i.pk, i.sk)
                }
                Write::Delete { pk, sk } => format!("{pk} | {sk} (delete)"),
            })
            .collect();
        self.log("transact", &keys.join(" + "), "", writes.len());
        self.inner.transact(writes).await
    }
}

/// A bus that keeps what is published, for the test to dispatch.
#[derive(Default)]
struct Kept(Mutex<Vec<Event>>);

#[async_trait]
impl Bus for Kept {
    async fn publish(&self, events: &[Event]) -> Result<(), BusError> {
        self.0.lock().unwrap().extend_from_slice(events);
        Ok(())
    }
}

fn writes(calls: &[Call]) -> usize {
    calls.iter().map(|c| c.writes).sum()
}

fn shown(calls: &[Call]) -> String {
    calls
        .iter()
        .map(|c| format!("  {} {}", c.op, c.key))
        .collect::<Vec<_>>()
        .join("\n")
}

/// An engine on a logged store (of either backend) and a keeping bus,
/// bootstrapped, with its owner.
async fn logged_engine(
    dynamo: bool,
    dir: &tempfile::TempDir,
    name: &str,
) -> (Arc<Logged>, Arc<Kept>, Engine, Principal) {
    let inner = common::store(dynamo, dir.path(), &format!("{name}-{}", common::unique())).await;
    let store = Arc::new(Logged {
        inner,
        calls: Mutex::default(),
    });
    let bus = Arc::new(Kept::default());
    let engine = Engine::new(
        store.clone(),
        bus.clone(),
        Registry::builtin(),
        Keyring::parse(&Keyring::generate_spec("test")).unwrap(),
        EngineConfig {
            allow_any_base_url: true,
            ..EngineConfig::default()
        },
    );
    let boot = engine.bootstrap("Acme").await.unwrap().unwrap();
    let who = engine
        .authenticate(Some(&format!("Bearer {}", boot.owner_key)))
        .await
        .unwrap();
    (store, bus, engine, who)
}

async fn budget(dynamo: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (store, bus, engine, who) = logged_engine(dynamo, &dir, "budget").await;
    let receiver = FakeReceiver::start().await.unwrap();
    let connect = |app: &str, settings| NewConnection {
        app: app.into(),
        name: app.into(),
        settings,
        credentials: Default::default(),
    };
    let source = engine
        .create_connection(&who, connect("generic", json!({"event_id_pointer": "/id", "kind": "order.created"})))
        .await
        .unwrap();
    let out = engine
        .create_connection(&who, connect("http", json!({"base_url": receiver.base_url()})))
        .await
        .unwrap();
    let automation = json!({"id": "orders-out", "name": "Orders out",
        "trigger": {"connection": source.id, "event": "generic.order.created"},
        "steps": [{"id": "notify", "action": "http.request.send", "connection": out.id,
                   "fields": {"url": "/orders", "json": {"order": "{{ event.id }}", "sum": "{{ event.sum }}"}}}]});
    engine
        .save_automation(&who, Automation::from_json_str(&automation.to_string()).unwrap())
        .await
        .unwrap();
    let token = source.webhook_path.rsplit('/').next().unwrap().to_owned();
    let take_events = || std::mem::take(&mut *bus.0.lock().unwrap());

    let mut measured = Vec::new();
    // The first order warms the caches; the second and third are counted.
    for n in 0..3 {
        let body = json!({"id": format!("O-{n}"), "sum": 10 + n}).to_string();
        store.take();
        engine
            .ingest_webhook(WebhookRequest {
                connection: &source.id,
                token: &token,
                method: "POST",
                query: vec![],
                content_type: Some("application/json"),
                body: body.as_bytes(),
                headers: Vec::new(),
                url: None,
            })
            .await
            .unwrap();
        let accept = store.take();
        let events = take_events();
        assert_eq!(events.len(), 1);
        for event in events {
            engine.dispatch(event).await.unwrap();
        }
        let run = store.take();
        if n > 0 {
            measured.push((accept, run));
        }
    }
    assert_eq!(receiver.delivery_count(), 3, "each order was delivered");
    let backend = if dynamo { "DynamoDB" } else { "SQLite" };
    for (accept, run) in &measured {
        let report = format!(
            "{backend}: accept {} calls, {} writes:\n{}\n{backend}: run {} calls, {} writes:\n{}",
            accept.len(),
            writes(accept),
            shown(accept),
            run.len(),
            writes(run),
            shown(run)
        );
        println!("{report}");
        let write_calls = |calls: &[Call]| calls.iter().filter(|c| c.writes > 0).count();
        assert!(write_calls(accept) <= 2, "accepting: {report}");
        assert!(write_calls(run) <= 3, "the run: {report}");
        // Items written: the run item twice (claimed with the intent of its
        // call, then finished with the call's outcome) and its one index
        // entry, under the tenant.
        assert!(writes(run) <= 3, "the run: {report}");
        // Reads: the connection of the webhook's URL; then the tenant's
        // configuration stamp (automations and connections come from the
        // cache it validates), and nothing else: this automation uses no
        // links, so the links of the event's subject are not read.
        let reads = |calls: &[Call]| calls.iter().filter(|c| c.writes == 0).count();
        assert!(reads(accept) <= 1, "accepting: {report}");
        assert!(reads(run) <= 1, "the run: {report}");
        assert!(
            run.iter().all(|c| !c.key.starts_with("LINK#")),
            "the run reads links it does not use: {report}"
        );
        assert!(
            run.iter().any(|c| c.key.ends_with("| CONFIG")),
            "the run checks the configuration stamp: {report}"
        );
        // A transaction bills every item twice on DynamoDB: none here.
        for phase in [accept, run] {
            assert!(
                phase.iter().all(|c| c.op != "transact"),
                "a transaction on the hot path: {report}"
            );
        }
        for phase in [accept, run] {
            read_nothing_just_written(phase, &report);
        }
    }
}

/// No call reads back an item an earlier call of the same phase wrote:
/// what a worker wrote, it knows.
fn read_nothing_just_written(calls: &[Call], report: &str) {
    let mut written: Vec<&str> = Vec::new();
    for call in calls {
        if call.writes > 0 {
            written.extend(call.key.split(" + "));
        } else {
            assert!(
                !written.iter().any(|key| *key == call.key || key.starts_with(call.key.trim_end_matches(" | "))),
                "{} reads back what was just written: {report}",
                call.key
            );
        }
    }
}

/// A polled source (MoySklad orders → one POST) ticked in the steady
/// state with nothing new at the vendor.
async fn idle_poll_budget(dynamo: bool) {
    use crmbridge_fakes::vendors::moysklad::FakeMoySklad;

    let dir = tempfile::tempdir().unwrap();
    let (store, bus, engine, who) = logged_engine(dynamo, &dir, "idle").await;
    let moysklad = FakeMoySklad::start("ms").await.unwrap();
    let receiver = FakeReceiver::start().await.unwrap();
    let ms = engine
        .create_connection(&who, NewConnection {
            app: "moysklad".into(),
            name: "ms".into(),
            settings: json!({"base_url": moysklad.base_url()}),
            credentials: [("token".to_owned(), "ms".to_owned())].into(),
        })
        .await
        .unwrap();
    let out = engine
        .create_connection(&who, NewConnection {
            app: "http".into(),
            name: "out".into(),
            settings: json!({"base_url": receiver.base_url()}),
            credentials: Default::default(),
        })
        .await
        .unwrap();
    let automation = json!({"id": "orders-out", "name": "Orders out",
        "trigger": {"connection": ms.id, "event": "moysklad.customerorder.updated"},
        "steps": [{"id": "notify", "action": "http.request.send", "connection": out.id,
                   "fields": {"url": "/orders", "json": {"order": "{{ event.id }}"}}}]});
    engine
        .save_automation(&who, Automation::from_json_str(&automation.to_string()).unwrap())
        .await
        .unwrap();
    let backend = if dynamo { "DynamoDB" } else { "SQLite" };
    let t0 = chrono::Utc::now();
    // The first tick's poll sets the cursor; the next two are counted.
    for n in 0..3 {
        store.take();
        let ticked = engine.tick(t0 + chrono::Duration::minutes(5 * n)).await.unwrap();
        assert_eq!(ticked.published, 1, "{ticked:?}");
        let tick = store.take();
        let requests = std::mem::take(&mut *bus.0.lock().unwrap());
        assert_eq!(requests.len(), 1);
        for request in requests {
            engine.dispatch(request).await.unwrap();
        }
        let poll = store.take();
        if n == 0 {
            assert!(writes(&poll) > 0, "the first poll stores its cursor");
            continue;
        }
        let report = format!(
            "{backend}: tick {} writes:\n{}\n{backend}: idle poll {} writes:\n{}",
            writes(&tick),
            shown(&tick),
            writes(&poll),
            shown(&poll)
        );
        println!("{report}");
        assert!(writes(&tick) <= 1, "the tick: {report}");
        assert_eq!(writes(&poll), 0, "an idle poll: {report}");
    }
    assert!(
        moysklad.requests().iter().filter(|r| r.path.ends_with("/entity/customerorder")).count() >= 2,
        "the idle polls asked MoySklad"
    );
    assert_eq!(receiver.delivery_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_poll_writes_nothing_on_sqlite() {
    idle_poll_budget(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_poll_writes_nothing_on_dynamodb() {
    idle_poll_budget(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hot_path_keeps_its_write_budget_on_sqlite() {
    budget(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hot_path_keeps_its_write_budget_on_dynamodb() {
    budget(true).await;
}
