//! Exactly once under races, on both stores (SQLite, and DynamoDB on moto):
//! the same event dispatched by several workers at once, a worker killed
//! between its vendor call and saving the answer, copies of one webhook
//! accepted at once, a run that keeps failing, and two owners revoking
//! each other's keys at the same moment.
//!
//! The vendors are the fakes in tests/fakes: what they record is what a
//! real account would hold.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use crmbridge_bus::{EventHandler, HandlerError, OutboxBus, OutboxConfig};
use crmbridge_connectors::Registry;
use crmbridge_control::admin::{NewConnection, Principal};
use crmbridge_control::prelude::*;
use crmbridge_control::runs::RunFilter;
use crmbridge_control::tenants::{NewKey, NewTenant};
use crmbridge_engine::ingest::WebhookRequest;
use crmbridge_engine::records::{Role, RunStatus, StepStatus};
use crmbridge_engine::{Automation, Engine, EngineConfig, EngineError, Keyring, keys};
use crmbridge_fakes::Fault;
use crmbridge_fakes::vendors::calltouch::FakeCalltouch;
use crmbridge_fakes::vendors::nethunt::FakeNetHunt;
use crmbridge_fakes::vendors::verbox::FakeVerbox;
use crmbridge_mapping::Event;
use crmbridge_store::{Item, Page, PutOutcome, Query, Store, StoreError, StoreResult, Write};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

struct Harness {
    engine: Arc<Engine>,
    store: Arc<dyn Store>,
    bus: Arc<OutboxBus>,
    keyring: String,
    config: EngineConfig,
    _dir: tempfile::TempDir,
}

async fn harness(dynamo: bool) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = if dynamo {
        common::store(true, dir.path(), &format!("once-{}", common::unique())).await
    } else {
        common::store(false, dir.path(), "").await
    };
    let bus =
        Arc::new(OutboxBus::open(&dir.path().join("bus.db"), OutboxConfig::default()).unwrap());
    let keyring = Keyring::generate_spec("test");
    let config = EngineConfig {
        allow_any_base_url: true,
        halt_after_failures: 3,
        max_run_attempts: 3,
        ..EngineConfig::default()
    };
    let engine = Arc::new(Engine::new(
        Arc::clone(&store),
        bus.clone(),
        Registry::builtin(),
        Keyring::parse(&keyring).unwrap(),
        config.clone(),
    ));
    Harness {
        engine,
        store,
        bus,
        keyring,
        config,
        _dir: dir,
    }
}

impl Harness {
    /// Another process on the same store and bus. `sole_worker`: it knows
    /// (as `crmbridge serve` does from its directory lock) that the earlier
    /// process is gone.
    fn another_process(&self, sole_worker: bool) -> Arc<Engine> {
        Arc::new(Engine::new(
            Arc::clone(&self.store),
            self.bus.clone(),
            Registry::builtin(),
            Keyring::parse(&self.keyring).unwrap(),
            EngineConfig {
                sole_worker,
                ..self.config.clone()
            },
        ))
    }

    async fn owner(&self) -> Principal {
        let boot = self.engine.bootstrap("Acme").await.unwrap().unwrap();
        self.engine
            .authenticate(Some(&format!("Bearer {}", boot.owner_key)))
            .await
            .unwrap()
    }

    async fn connect(
        &self,
        who: &Principal,
        app: &str,
        settings: Value,
        credentials: &[(&str, &str)],
    ) -> (String, String) {
        let view = self
            .engine
            .create_connection(
                who,
                NewConnection {
                    app: app.into(),
                    name: app.into(),
                    settings,
                    credentials: credentials
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                },
            )
            .await
            .unwrap();
        let token = view.webhook_path.rsplit('/').next().unwrap().to_owned();
        (view.id, token)
    }

    /// A Calltouch connection to the fake (site 999), with a timeout long
    /// enough for a held-back answer.
    async fn calltouch(&self, who: &Principal, calltouch: &FakeCalltouch) -> String {
        let settings =
            json!({"site_id": "999", "base_url": calltouch.base_url(), "timeout_ms": 60000});
        self.connect(who, "calltouch", settings, &[("access_token", "ct-token")])
            .await
            .0
    }

    async fn automation(&self, who: &Principal, doc: Value) {
        let automation = Automation::from_json_str(&doc.to_string()).unwrap();
        self.engine.save_automation(who, automation).await.unwrap();
    }

    /// Accepts one webhook and takes its event off the bus.
    async fn event(&self, connection: &str, token: &str, body: Value) -> Event {
        let body = body.to_string();
        let accepted = self
            .engine
            .ingest_webhook(hook(connection, token, body.as_bytes()))
            .await
            .unwrap();
        assert_eq!(accepted.accepted.len(), 1);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (stop, shutdown) = watch::channel(false);
        let workers = self.bus.spawn_workers(Arc::new(Collect(tx)), shutdown);
        let event = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("event not delivered")
            .unwrap();
        stop.send(true).unwrap();
        for worker in workers {
            worker.await.unwrap();
        }
        event
    }
}

struct Collect(mpsc::UnboundedSender<Event>);

#[async_trait]
impl EventHandler for Collect {
    async fn handle(&self, event: Event) -> Result<(), HandlerError> {
        self.0.send(event).map_err(|e| HandlerError(e.to_string()))
    }
}

fn hook<'a>(connection: &'a str, token: &'a str, body: &'a [u8]) -> WebhookRequest<'a> {
    WebhookRequest {
        connection,
        token,
        method: "POST",
        query: vec![],
        content_type: Some("application/json"),
        body,
        headers: Vec::new(),
        url: None,
    }
}

const GENERIC: fn() -> Value = || json!({"event_id_pointer": "/id", "kind": "order.created"});

/// A NetHunt fake with a Deals folder, and a generic source whose orders
/// become NetHunt records (create-record has no client key: the case
/// where only the run's own bookkeeping can prevent a second record).
async fn orders_to_nethunt(
    h: &Harness,
    who: &Principal,
) -> (FakeNetHunt, String, (String, String)) {
    let nethunt = FakeNetHunt::start("owner@acme.test", "nh-key")
        .await
        .unwrap();
    let deals = nethunt.add_folder("Deals");
    nethunt.add_field(&deals, "Name").unwrap();
    let source = h.connect(who, "generic", GENERIC(), &[]).await;
    let (nh, _) = h
        .connect(
            who,
            "nethunt",
            json!({"base_url": nethunt.base_url(), "timeout_ms": 60000}),
            &[("email", "owner@acme.test"), ("api_key", "nh-key")],
        )
        .await;
    h.automation(
        who,
        json!({
            "id": "orders-to-nethunt", "name": "Orders → NetHunt",
            "trigger": {"connection": source.0, "event": "generic.order.created"},
            "steps": [{"id": "record", "action": "nethunt.record.create", "connection": nh,
                       "fields": {"folder": "Deals", "fields": {"Name": "{{ event.name }}"}}}]
        }),
    )
    .await;
    (nethunt, deals, source)
}

/// Dispatches `event` with Calltouch holding back its answer to the deal
/// create, and kills the dispatch once Calltouch has committed `order`.
async fn killed_while_calltouch_creates(h: &Harness, calltouch: &FakeCalltouch, event: &Event, order: &str) {
    calltouch.fail_next_on(
        Some("POST"),
        "/client-order/create",
        1,
        Fault::Slow(Duration::from_secs(60)),
    );
    let dying = tokio::spawn({
        let engine = Arc::clone(&h.engine);
        let event = event.clone();
        async move { engine.dispatch(event).await }
    });
    eventually("Calltouch commits the deal", || calltouch.deal(order).is_some()).await;
    dying.abort();
    assert!(dying.await.unwrap_err().is_cancelled());
}

/// The entries of the tenant's run index, as stored.
async fn run_index_entries(h: &Harness, who: &Principal) -> Vec<Item> {
    h.store
        .query(Query::prefix(keys::tenant_runs_pk(&who.tenant), ""))
        .await
        .unwrap()
        .items
}

/// Waits (with a deadline) until `condition` holds.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits (with a deadline) until Calltouch has received `n` deal creates.
async fn wait_for_creates(calltouch: &FakeCalltouch, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let seen = calltouch
            .requests()
            .iter()
            .filter(|r| r.path.contains("/client-order/create"))
            .count();
        if seen >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {seen} of {n} creates arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn creates(nethunt: &FakeNetHunt) -> usize {
    nethunt
        .requests()
        .iter()
        .filter(|r| r.path.contains("/actions/create-record/"))
        .count()
}

macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod sqlite { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case(super::harness(false).await).await }
        )* }
        mod dynamodb { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case(super::harness(true).await).await }
        )* }
    };
}

on_both_stores!(
    one_event_dispatched_by_four_workers_at_once_calls_the_vendor_once,
    a_worker_killed_mid_call_leaves_a_run_that_needs_review_not_a_second_record,
    a_keyed_step_killed_mid_call_is_sent_again_and_the_vendor_keeps_one_record,
    a_read_back_step_whose_outcome_is_unknown_is_found_or_sent_once,
    concurrent_copies_of_a_webhook_are_published_once,
    a_delivery_with_too_many_events_is_refused_whole,
    runs_that_keep_failing_halt_their_automation_and_replay_after_enabling,
    a_run_whose_worker_dies_every_time_is_given_up,
    two_owners_revoking_each_other_keep_one_owner_key,
    automation_ids_are_plain_everywhere,
    an_alert_raised_by_two_processes_at_once_is_announced_once,
    a_worker_dying_between_a_runs_index_entry_and_the_run_leaves_nothing_half_done,
    a_run_killed_between_two_linked_steps_links_both_records_when_it_finishes,
    a_configuration_change_made_in_one_process_applies_to_the_next_dispatch_in_another,
    two_runs_linking_one_subject_at_once_both_land,
);

/// Four deliveries of one event at once (EventBridge and the outbox both
/// deliver at least once): one worker takes the run's lease and calls
/// NetHunt; the others back off with a transient error, and their
/// redelivery finds the run finished.
async fn one_event_dispatched_by_four_workers_at_once_calls_the_vendor_once(h: Harness) {
    let who = h.owner().await;
    let (nethunt, deals, (source, token)) = orders_to_nethunt(&h, &who).await;
    let event = h
        .event(&source, &token, json!({"id": "D-1", "name": "ACME"}))
        .await;
    // Hold NetHunt's answer so the four deliveries overlap its call.
    nethunt.fail_next_on(
        Some("POST"),
        "/actions/create-record/",
        1,
        Fault::Slow(Duration::from_millis(800)),
    );
    let mut deliveries = Vec::new();
    for _ in 0..4 {
        let engine = Arc::clone(&h.engine);
        let event = event.clone();
        deliveries.push(tokio::spawn(async move { engine.dispatch(event).await }));
    }
    let mut backed_off = 0;
    let mut finished = 0;
    for delivery in deliveries {
        match delivery.await.unwrap() {
            Ok(done) => {
                assert_eq!(done.runs[0].status, RunStatus::Succeeded, "{done:?}");
                finished += 1;
            }
            Err(EngineError::Action {
                transient: true,
                message,
                ..
            }) => {
                assert!(message.contains("another worker"), "{message}");
                backed_off += 1;
            }
            Err(other) => panic!("unexpected: {other}"),
        }
    }
    assert_eq!((finished, backed_off), (1, 3));
    // The bus delivers the three again: the run is finished.
    for _ in 0..3 {
        let again = h.engine.dispatch(event.clone()).await.unwrap();
        assert!(again.duplicate);
    }
    assert_eq!(creates(&nethunt), 1);
    assert_eq!(nethunt.records(&deals).len(), 1);
    // Each delivery wrote the run's index entry before losing its
    // creation: the same entry (the run is listed under its event's
    // arrival), so the log holds one entry and lists the one run.
    let listed = h.engine.list_runs(&who, RunFilter::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1, "{:?}", listed.items);
    assert_eq!(listed.items[0].status, RunStatus::Succeeded);
    let entries = run_index_entries(&h, &who).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
}

/// A store whose next write of a run index entry fails after it landed,
/// the way a worker that dies right after writing it leaves things (the
/// entry is written, nothing after it).
struct DiesAfterIndexEntry {
    inner: Arc<dyn Store>,
    armed: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl Store for DiesAfterIndexEntry {
    async fn get(&self, pk: &str, sk: &str) -> StoreResult<Option<Item>> {
        self.inner.get(pk, sk).await
    }
    async fn put(&self, item: Item) -> StoreResult<()> {
        let index_entry = item.pk.ends_with("#RUNS");
        self.inner.put(item).await?;
        if index_entry && self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Backend {
                backend: "test",
                operation: "put",
                message: "the worker died here".into(),
            });
        }
        Ok(())
    }
    async fn put_many(&self, items: Vec<Item>) -> StoreResult<()> {
        self.inner.put_many(items).await
    }
    async fn put_if_absent(&self, item: Item) -> StoreResult<PutOutcome> {
        self.inner.put_if_absent(item).await
    }
    async fn update_if_version(&self, item: Item, expected: u64) -> StoreResult<u64> {
        self.inner.update_if_version(item, expected).await
    }
    async fn delete(&self, pk: &str, sk: &str) -> StoreResult<()> {
        self.inner.delete(pk, sk).await
    }
    async fn query(&self, query: Query) -> StoreResult<Page> {
        self.inner.query(query).await
    }
    async fn transact(&self, writes: Vec<Write>) -> StoreResult<()> {
        self.inner.transact(writes).await
    }
}

/// A run's index entry is written before the run: a worker that dies
/// between the two has called no vendor and stored no run, so the next
/// delivery runs it once, with no review (no intent was left behind), and
/// the log lists it once.
async fn a_worker_dying_between_a_runs_index_entry_and_the_run_leaves_nothing_half_done(
    h: Harness,
) {
    let who = h.owner().await;
    let (nethunt, deals, (source, token)) = orders_to_nethunt(&h, &who).await;
    let event = h
        .event(&source, &token, json!({"id": "I-1", "name": "ACME"}))
        .await;
    let dying = Engine::new(
        Arc::new(DiesAfterIndexEntry {
            inner: Arc::clone(&h.store),
            armed: true.into(),
        }),
        h.bus.clone(),
        Registry::builtin(),
        Keyring::parse(&h.keyring).unwrap(),
        h.config.clone(),
    );
    let err = dying.dispatch(event.clone()).await.unwrap_err();
    assert!(err.to_string().contains("the worker died here"), "{err}");
    assert_eq!(creates(&nethunt), 0, "no call before the run is stored");
    let listed = h.engine.list_runs(&who, RunFilter::default()).await.unwrap();
    assert!(listed.items.is_empty(), "an entry without its run is not listed: {listed:?}");

    let done = h.engine.dispatch(event.clone()).await.unwrap();
    assert_eq!(done.runs[0].status, RunStatus::Succeeded, "{done:?}");
    assert!(!done.duplicate);
    assert_eq!(creates(&nethunt), 1);
    assert_eq!(nethunt.records(&deals).len(), 1);
    let listed = h.engine.list_runs(&who, RunFilter::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1, "{:?}", listed.items);
    assert_eq!(listed.items[0].status, RunStatus::Succeeded);
    assert!(h.engine.dispatch(event).await.unwrap().duplicate);
    assert_eq!(creates(&nethunt), 1);
}

/// The worker dies while NetHunt has committed the record but not yet
/// answered. The next delivery (a restarted process) finds the step in
/// flight; create-record has no key to ask NetHunt by, so the run stops as
/// needs_review instead of creating a second record. A person's replay is
/// the decision to send it again.
async fn a_worker_killed_mid_call_leaves_a_run_that_needs_review_not_a_second_record(h: Harness) {
    let who = h.owner().await;
    let (nethunt, deals, (source, token)) = orders_to_nethunt(&h, &who).await;
    let event = h
        .event(&source, &token, json!({"id": "K-1", "name": "ACME"}))
        .await;
    nethunt.fail_next_on(
        Some("POST"),
        "/actions/create-record/",
        1,
        Fault::Slow(Duration::from_secs(60)),
    );
    let dying = tokio::spawn({
        let engine = Arc::clone(&h.engine);
        let event = event.clone();
        async move { engine.dispatch(event).await }
    });
    // Killed once NetHunt has committed the record, before it answers.
    eventually("NetHunt commits the record", || {
        nethunt.records(&deals).len() == 1
    })
    .await;
    dying.abort();
    assert!(dying.await.unwrap_err().is_cancelled());

    // Still the first process, its lease live: a redelivery backs off.
    let busy = h.engine.dispatch(event.clone()).await.unwrap_err();
    assert!(
        matches!(
            busy,
            EngineError::Action {
                transient: true,
                ..
            }
        ),
        "{busy}"
    );

    let restarted = h.another_process(true);
    let resumed = restarted.dispatch(event.clone()).await.unwrap();
    assert_eq!(
        resumed.runs[0].status,
        RunStatus::NeedsReview,
        "{resumed:?}"
    );
    assert_eq!(creates(&nethunt), 1, "not sent a second time");
    let run = restarted.get_run(&who, &resumed.runs[0].id).await.unwrap();
    assert_eq!(run.steps[0].status, StepStatus::NeedsReview);
    assert!(
        run.steps[0].error.as_deref().unwrap().contains("replay"),
        "{:?}",
        run.steps[0]
    );
    assert_eq!(
        run.steps[0].request["fields"]["fields"]["Name"], "ACME",
        "the request is shown"
    );
    // Final: more deliveries change nothing.
    assert!(restarted.dispatch(event.clone()).await.unwrap().duplicate);
    assert_eq!(creates(&nethunt), 1);

    // The person looked, and decides it must be sent again.
    let replayed = restarted.replay_run(&who, &run.id).await.unwrap();
    assert_eq!(replayed.status, RunStatus::Succeeded, "{replayed:?}");
    assert_eq!(creates(&nethunt), 2);
    assert_eq!(nethunt.records(&deals).len(), 2);
    // Redeliveries and the replay named the run's own index entry again.
    let entries = run_index_entries(&h, &who).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
}

/// The same kill on a keyed action (Calltouch deals are keyed by their
/// orderNumber): the restarted process sends it again and Calltouch keeps
/// one deal.
async fn a_keyed_step_killed_mid_call_is_sent_again_and_the_vendor_keeps_one_record(h: Harness) {
    let who = h.owner().await;
    let calltouch = FakeCalltouch::start("ct-token", "999").await.unwrap();
    let (source, token) = h.connect(&who, "generic", GENERIC(), &[]).await;
    let ct = h.calltouch(&who, &calltouch).await;
    h.automation(
        &who,
        json!({
            "id": "orders-to-calltouch", "name": "Orders → Calltouch deals",
            "trigger": {"connection": source, "event": "generic.order.created"},
            "steps": [{"id": "deal", "action": "calltouch.deal.create", "connection": ct,
                       "fields": {"order_number": "order-{{ event.id }}", "phone": "+79161234567", "status": "PENDING", "revenue": 0}}]
        }),
    )
    .await;
    let event = h.event(&source, &token, json!({"id": "K-2"})).await;
    killed_while_calltouch_creates(&h, &calltouch, &event, "order-K-2").await;

    let restarted = h.another_process(true);
    let resumed = restarted.dispatch(event).await.unwrap();
    assert_eq!(resumed.runs[0].status, RunStatus::Succeeded, "{resumed:?}");
    let deals: Vec<_> = calltouch
        .deals()
        .into_iter()
        .filter(|d| d["orderNumber"] == "order-K-2")
        .collect();
    assert_eq!(deals.len(), 1);
}

/// A Verbox message takes no key, but the chat's history can be read
/// back. Three ways a call can end without an answer — the worker killed
/// after Verbox took it, the connection dropped before Verbox took it,
/// and dropped after — each end with the message in the chat exactly once
/// and the run succeeded, with no one asked to review.
async fn a_read_back_step_whose_outcome_is_unknown_is_found_or_sent_once(h: Harness) {
    let who = h.owner().await;
    let verbox = FakeVerbox::start("vb-token").await.unwrap();
    let (source, token) = h.connect(&who, "generic", GENERIC(), &[]).await;
    let (vb, _) = h
        .connect(
            &who,
            "verbox",
            json!({"base_url": verbox.base_url(), "timeout_ms": 60000}),
            &[("token", "vb-token")],
        )
        .await;
    h.automation(
        &who,
        json!({
            "id": "orders-to-verbox", "name": "Orders → a Verbox chat",
            "trigger": {"connection": source, "event": "generic.order.created"},
            "steps": [{"id": "send", "action": "verbox.message.send", "connection": vb,
                       "fields": {"client_id": "{{ event.chat }}", "text": "Заказ {{ event.id }} принят"}}]
        }),
    )
    .await;
    let texts = |chat: &str| -> Vec<String> {
        verbox
            .sent_to_client(chat)
            .iter()
            .map(|m| m["message"]["text"].as_str().unwrap().to_owned())
            .collect()
    };

    // Killed once Verbox has the message, before it answers: the restarted
    // process finds it in the chat and does not send it again.
    verbox.add_client("c-1");
    let event = h
        .event(&source, &token, json!({"id": "K-3", "chat": "c-1"}))
        .await;
    verbox.fail_next_on(
        Some("POST"),
        "chat/message/sendToClient",
        1,
        Fault::Slow(Duration::from_secs(60)),
    );
    let dying = tokio::spawn({
        let engine = Arc::clone(&h.engine);
        let event = event.clone();
        async move { engine.dispatch(event).await }
    });
    eventually("Verbox takes the message", || texts("c-1").len() == 1).await;
    dying.abort();
    assert!(dying.await.unwrap_err().is_cancelled());
    let restarted = h.another_process(true);
    let resumed = restarted.dispatch(event.clone()).await.unwrap();
    assert_eq!(resumed.runs[0].status, RunStatus::Succeeded, "{resumed:?}");
    assert_eq!(texts("c-1"), ["Заказ K-3 принят"], "not sent a second time");
    let run = restarted.get_run(&who, &resumed.runs[0].id).await.unwrap();
    assert_eq!(
        run.steps[0].output["id"],
        json!(verbox.sent_message_ids("c-1")[0]),
        "the output is the message read back: {:?}",
        run.steps[0]
    );

    // The connection drops before (then after) Verbox takes it: the run
    // fails for now, and its retry reads the chat before it sends.
    for (chat, id, fault, sends) in [
        ("c-2", "K-4", Fault::Drop, 2),
        ("c-3", "K-5", Fault::DropAfterCommit, 1),
    ] {
        verbox.add_client(chat);
        let event = h.event(&source, &token, json!({"id": id, "chat": chat})).await;
        verbox.fail_next_on(Some("POST"), "chat/message/sendToClient", 1, fault);
        let first = restarted.dispatch(event.clone()).await.unwrap_err();
        assert!(matches!(first, EngineError::Action { transient: true, .. }), "{first}");
        // The retry delivered three times at once, to two processes: one
        // reads back (and sends at most once), the others back off or find
        // the run finished.
        let workers = [h.another_process(false), h.another_process(false), Arc::clone(&restarted)];
        let attempts = workers.iter().map(|engine| {
            let (engine, event) = (Arc::clone(engine), event.clone());
            tokio::spawn(async move { engine.dispatch(event).await })
        });
        let mut succeeded = 0;
        for attempt in attempts.collect::<Vec<_>>() {
            match attempt.await.unwrap() {
                Ok(done) if done.runs[0].status == RunStatus::Succeeded => succeeded += 1,
                Ok(other) => panic!("{other:?}"),
                Err(err) => assert!(matches!(err, EngineError::Action { transient: true, .. }), "{err}"),
            }
        }
        assert!(succeeded >= 1, "{chat}: one of the retries finished the run");
        let retried = restarted.dispatch(event.clone()).await.unwrap();
        assert_eq!(retried.runs[0].status, RunStatus::Succeeded, "{retried:?}");
        assert_eq!(texts(chat), [format!("Заказ {id} принят")], "{chat}");
        let calls = verbox
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("chat/message/sendToClient") && r.body.contains(chat))
            .count();
        assert_eq!(calls, sends, "{chat}: sent again only when it had not arrived");
    }

    // Reading back keeps failing: on the last delivery the run stops for
    // review (the message may have arrived), not as a plain failure, and
    // nothing is sent blind.
    verbox.add_client("c-4");
    let event = h.event(&source, &token, json!({"id": "K-6", "chat": "c-4"})).await;
    verbox.fail_next_on(Some("POST"), "chat/message/sendToClient", 1, Fault::Drop);
    verbox.fail_next_on(Some("POST"), "chat/message/getList", 1000, Fault::ServerError);
    for _ in 1..h.config.max_run_attempts {
        let err = restarted.dispatch(event.clone()).await.unwrap_err();
        assert!(matches!(err, EngineError::Action { transient: true, .. }), "{err}");
    }
    let last = restarted.dispatch(event.clone()).await.unwrap();
    assert_eq!(last.runs[0].status, RunStatus::NeedsReview, "{last:?}");
    let run = restarted.get_run(&who, &last.runs[0].id).await.unwrap();
    assert_eq!(run.steps[0].status, StepStatus::NeedsReview, "{:?}", run.steps[0]);
    assert!(texts("c-4").is_empty());
    let sends = verbox
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("chat/message/sendToClient") && r.body.contains("c-4"))
        .count();
    assert_eq!(sends, 1, "never sent blind");
}

/// Four copies of one delivery at once: one publishes, the others wait for
/// it and are answered as duplicates; the bus carries the event once.
async fn concurrent_copies_of_a_webhook_are_published_once(h: Harness) {
    let who = h.owner().await;
    let (source, token) = h.connect(&who, "generic", GENERIC(), &[]).await;
    let mut copies = Vec::new();
    for _ in 0..4 {
        let engine = Arc::clone(&h.engine);
        let (source, token) = (source.clone(), token.clone());
        copies.push(tokio::spawn(async move {
            let body = br#"{"id":"C-1","sum":1500}"#;
            engine.ingest_webhook(hook(&source, &token, body)).await
        }));
    }
    let mut accepted = 0;
    let mut duplicates = 0;
    for copy in copies {
        let outcome = copy.await.unwrap().unwrap();
        accepted += outcome.accepted.len();
        duplicates += outcome.duplicates.len();
    }
    assert_eq!((accepted, duplicates), (1, 3));
    assert_eq!(h.bus.stats().await.unwrap().pending, 1, "published once");
}

async fn a_delivery_with_too_many_events_is_refused_whole(h: Harness) {
    let who = h.owner().await;
    let (source, token) = h.connect(&who, "generic", GENERIC(), &[]).await;
    let limit = h.engine.config().max_events_per_delivery;
    let batch: Vec<Value> = (0..=limit)
        .map(|i| json!({"id": format!("B-{i}")}))
        .collect();
    let body = serde_json::to_vec(&batch).unwrap();
    let err = h
        .engine
        .ingest_webhook(hook(&source, &token, &body))
        .await
        .unwrap_err();
    assert_eq!(err.status(), 413);
    assert_eq!(err.to_body()["error"]["field"], "body");
    assert!(err.to_string().contains(&limit.to_string()), "{err}");
    assert_eq!(h.bus.stats().await.unwrap().pending, 0, "nothing accepted");
}

/// An automation whose step fails for good on every event (a template
/// that cannot render) is halted after its threshold; its later events are
/// recorded as failed runs without running, another automation on the same
/// trigger is unaffected, and after enabling it again the halted runs are
/// replayed.
async fn runs_that_keep_failing_halt_their_automation_and_replay_after_enabling(h: Harness) {
    let who = h.owner().await;
    let calltouch = FakeCalltouch::start("ct-token", "999").await.unwrap();
    let (source, token) = h.connect(&who, "generic", GENERIC(), &[]).await;
    let (ct, _) = h
        .connect(
            &who,
            "calltouch",
            json!({"site_id": "999", "base_url": calltouch.base_url()}),
            &[("access_token", "ct-token")],
        )
        .await;
    let deal = |id: &str, order: &str| {
        json!({
            "id": id, "name": id,
            "trigger": {"connection": source, "event": "generic.order.created"},
            "steps": [{"id": "deal", "action": "calltouch.deal.create", "connection": ct,
                       "fields": {"order_number": order, "phone": "+79161234567", "status": "PENDING", "revenue": 0}}]
        })
    };
    // `sum` is a number: `sum.missing.deeper` cannot render.
    h.automation(&who, deal("poisoned", "p-{{ event.sum.missing.deeper }}"))
        .await;
    h.automation(&who, deal("healthy", "h-{{ event.id }}"))
        .await;
    let mut events = Vec::new();
    for i in 0..5 {
        events.push(
            h.event(&source, &token, json!({"id": format!("P-{i}"), "sum": 1}))
                .await,
        );
    }
    for event in &events {
        h.engine.dispatch(event.clone()).await.unwrap();
    }
    let poisoned = h.engine.get_automation(&who, "poisoned").await.unwrap();
    assert!(poisoned.halted.is_some(), "{poisoned:?}");
    assert!(
        poisoned
            .health
            .as_deref()
            .unwrap()
            .starts_with("halted: 3 runs in a row failed"),
        "{:?}",
        poisoned.health
    );
    let healthy = h.engine.get_automation(&who, "healthy").await.unwrap();
    assert!(healthy.halted.is_none() && healthy.health.is_none());
    assert_eq!(
        calltouch.deals().len(),
        5,
        "the healthy automation ran every event"
    );
    let runs = h
        .engine
        .list_runs(
            &who,
            crmbridge_control::runs::RunFilter {
                automation: Some("poisoned".into()),
                limit: 50,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .items;
    assert_eq!(runs.len(), 5);
    assert!(runs.iter().all(|r| r.status == RunStatus::Failed));
    let halted_runs = runs
        .iter()
        .filter(|r| r.outcome.starts_with("not run: the automation is halted"))
        .count();
    assert_eq!(halted_runs, 2, "{runs:?}");
    // The other automation's runs, two a page: the listing passes over the
    // poisoned ones between them and its cursor resumes after the last.
    let mut healthy_runs = Vec::new();
    let mut cursor = None;
    loop {
        let page = h
            .engine
            .list_runs(
                &who,
                crmbridge_control::runs::RunFilter {
                    automation: Some("healthy".into()),
                    limit: 2,
                    cursor,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(page.items.len() <= 2, "{page:?}");
        healthy_runs.extend(page.items);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(healthy_runs.len(), 5, "{healthy_runs:?}");
    assert!(
        healthy_runs
            .iter()
            .all(|r| r.automation.as_deref() == Some("healthy") && r.status == RunStatus::Succeeded),
        "{healthy_runs:?}"
    );
    let distinct: std::collections::BTreeSet<_> = healthy_runs.iter().map(|r| &r.id).collect();
    assert_eq!(distinct.len(), 5, "a page repeated a run: {healthy_runs:?}");
    // Replaying while halted is refused.
    let refused = h
        .engine
        .replay_automation(
            &who,
            "poisoned",
            chrono::Utc::now() - chrono::Duration::hours(1),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.status(), 409);

    // The person fixes the template (saving resumes it) and replays.
    h.automation(&who, deal("poisoned", "p-{{ event.id }}"))
        .await;
    let fixed = h.engine.get_automation(&who, "poisoned").await.unwrap();
    assert!(fixed.halted.is_none() && fixed.health.is_none());
    let report = h
        .engine
        .replay_automation(
            &who,
            "poisoned",
            chrono::Utc::now() - chrono::Duration::hours(1),
        )
        .await
        .unwrap();
    assert_eq!(report.replayed.len(), 5);
    assert!(
        report
            .replayed
            .iter()
            .all(|r| r.status == RunStatus::Succeeded),
        "{report:?}"
    );
    assert_eq!(calltouch.deals().len(), 10);
}

/// A run whose worker never comes back (killed in the vendor call every
/// time) is given up after its attempts, as a failed run with the reason,
/// and counts towards halting; it does not loop forever.
async fn a_run_whose_worker_dies_every_time_is_given_up(h: Harness) {
    let who = h.owner().await;
    let calltouch = FakeCalltouch::start("ct-token", "999").await.unwrap();
    let (source, token) = h.connect(&who, "generic", GENERIC(), &[]).await;
    let ct = h.calltouch(&who, &calltouch).await;
    h.automation(
        &who,
        json!({
            "id": "doomed", "name": "doomed",
            "trigger": {"connection": source, "event": "generic.order.created"},
            "steps": [{"id": "deal", "action": "calltouch.deal.create", "connection": ct,
                       "fields": {"order_number": "d-{{ event.id }}", "phone": "+79161234567", "status": "PENDING", "revenue": 0}}]
        }),
    )
    .await;
    let event = h.event(&source, &token, json!({"id": "X-1"})).await;
    let attempts = h.config.max_run_attempts as usize;
    calltouch.fail_next_on(
        Some("POST"),
        "/client-order/create",
        attempts,
        Fault::Slow(Duration::from_secs(60)),
    );
    for n in 1..=attempts {
        // Each delivery is a new process that dies inside the call.
        let engine = h.another_process(true);
        let dying = tokio::spawn({
            let event = event.clone();
            async move { engine.dispatch(event).await }
        });
        wait_for_creates(&calltouch, n).await;
        eventually("Calltouch commits the deal", || {
            calltouch.deal("d-X-1").is_some()
        })
        .await;
        dying.abort();
        assert!(dying.await.unwrap_err().is_cancelled());
    }
    let last = h
        .another_process(true)
        .dispatch(event.clone())
        .await
        .unwrap();
    assert_eq!(last.runs[0].status, RunStatus::Failed, "{last:?}");
    assert!(
        last.runs[0]
            .outcome
            .starts_with(&format!("given up after {attempts} deliveries")),
        "{}",
        last.runs[0].outcome
    );
    let record = h.engine.get_automation(&who, "doomed").await.unwrap();
    assert_eq!(record.failure_streak, 1);
    // Given up is final for deliveries: nothing more is sent.
    let calls = calltouch.requests().len();
    h.another_process(true).dispatch(event).await.unwrap();
    assert_eq!(calltouch.requests().len(), calls);
}

/// The last-owner rule holds when two owners revoke each other's keys at
/// the same moment: one succeeds, the other is 409, every time.
async fn two_owners_revoking_each_other_keep_one_owner_key(h: Harness) {
    let operator = h.owner().await;
    for trial in 0..100 {
        let tenant = h
            .engine
            .create_tenant(
                &operator,
                NewTenant {
                    name: format!("T{trial}"),
                },
            )
            .await
            .unwrap();
        let first = h
            .engine
            .authenticate(Some(&format!("Bearer {}", tenant.owner_key.key)))
            .await
            .unwrap();
        let second_key = h
            .engine
            .create_key(&first, NewKey { role: Role::Owner })
            .await
            .unwrap();
        let second = h
            .engine
            .authenticate(Some(&format!("Bearer {}", second_key.key)))
            .await
            .unwrap();
        let (a, b) = tokio::join!(
            h.engine.delete_key(&first, &second.key_id),
            h.engine.delete_key(&second, &first.key_id),
        );
        let outcomes = [&a, &b];
        let ok = outcomes.iter().filter(|r| r.is_ok()).count();
        let conflicts = outcomes
            .iter()
            .filter(|r| matches!(r, Err(e) if e.status() == 409))
            .count();
        assert_eq!((ok, conflicts), (1, 1), "trial {trial}: {a:?} {b:?}");
        let survivor = if a.is_ok() { &first } else { &second };
        let keys = h.engine.list_keys(survivor).await.unwrap();
        assert_eq!(keys.iter().filter(|k| k.role == Role::Owner).count(), 1);
    }
}

/// An id that the run filter would refuse is refused when the automation is
/// saved, with the same rule.
async fn automation_ids_are_plain_everywhere(h: Harness) {
    let who = h.owner().await;
    let (source, _) = h.connect(&who, "generic", GENERIC(), &[]).await;
    for id in ["заказ-1", "a/b", "a#b", ""] {
        let automation = Automation::from_json_str(
            &json!({"id": id, "name": "x",
                    "trigger": {"connection": source, "event": "generic.order.created"},
                    "steps": []})
            .to_string(),
        )
        .unwrap();
        let err = h
            .engine
            .save_automation(&who, automation)
            .await
            .unwrap_err();
        assert_eq!(err.status(), 422, "{id}: {err}");
        let body = err.to_body();
        let fields: Vec<&str> = body["error"]["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert!(fields.contains(&"id"), "{id}: {body}");
        let filter = h
            .engine
            .list_runs(
                &who,
                crmbridge_control::runs::RunFilter {
                    automation: Some(id.to_owned()),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(filter.status(), 400, "{id}");
    }
    assert!(h.engine.list_automations(&who).await.unwrap().is_empty());
}

/// Eight runs failing at once on two processes raise one cause: one
/// alert opens and one message per destination goes on the bus; eight
/// successes at once resolve it once. A process that died between opening
/// an alert and announcing it leaves it unannounced: the first occurrence
/// once it is stale announces it (under the same alert id), and later ones
/// add nothing.
async fn an_alert_raised_by_two_processes_at_once_is_announced_once(h: Harness) {
    use crmbridge_control::alerts::NewAlertDestination;
    use crmbridge_engine::records::{AlertCause, AlertRecord, AlertStatus};

    let who = h.owner().await;
    for url in ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"] {
        h.engine
            .create_alert_destination(
                &who,
                NewAlertDestination {
                    url: url.into(),
                    description: String::new(),
                    secret: None,
                },
            )
            .await
            .unwrap();
    }
    let other = h.another_process(false);
    let pending = || async { h.bus.stats().await.unwrap().pending };
    let tenant = who.tenant.clone();
    let at_once = |resolve: bool| {
        let mut tasks = Vec::new();
        for n in 0..8 {
            let engine = if n % 2 == 0 {
                Arc::clone(&h.engine)
            } else {
                Arc::clone(&other)
            };
            let tenant = tenant.clone();
            tasks.push(tokio::spawn(async move {
                if resolve {
                    engine
                        .resolve_alert(&tenant, AlertCause::RunsFailing, "orders")
                        .await;
                } else {
                    engine
                        .raise_alert(&tenant, AlertCause::RunsFailing, "orders", &format!("failure {n}"))
                        .await;
                }
            }));
        }
        tasks
    };
    for task in at_once(false) {
        task.await.unwrap();
    }
    let alerts = h.engine.alerts(&tenant).await.unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].status, AlertStatus::Open);
    assert!(alerts[0].announced, "{alerts:?}");
    assert_eq!(pending().await, 2, "one message per destination");
    let opened = alerts[0].id.clone();

    for task in at_once(true) {
        task.await.unwrap();
    }
    let alerts = h.engine.alerts(&tenant).await.unwrap();
    assert_eq!(alerts[0].status, AlertStatus::Resolved, "{alerts:?}");
    assert_eq!(alerts[0].id, opened, "the same alert, resolved");
    assert_eq!(pending().await, 4, "one resolved message per destination");

    // Opened by a process that died before announcing it.
    let key = crmbridge_engine::keys::alert(&tenant, AlertCause::CredentialsRefused.as_str(), "con_x");
    let orphan = AlertRecord {
        id: "alr_orphan".into(),
        tenant: tenant.clone(),
        cause: AlertCause::CredentialsRefused,
        subject: "con_x".into(),
        status: AlertStatus::Open,
        detail: "refused".into(),
        opened_at: chrono::Utc::now() - chrono::Duration::minutes(5),
        resolved_at: None,
        announced: false,
    };
    h.store
        .put(crmbridge_engine::item(key, &orphan).unwrap())
        .await
        .unwrap();
    for _ in 0..3 {
        other
            .raise_alert(&tenant, AlertCause::CredentialsRefused, "con_x", "refused again")
            .await;
    }
    let alerts = h.engine.alerts(&tenant).await.unwrap();
    let found = alerts
        .iter()
        .find(|a| a.cause == AlertCause::CredentialsRefused)
        .unwrap();
    assert_eq!(found.id, "alr_orphan", "{alerts:?}");
    assert!(found.announced);
    assert_eq!(pending().await, 6, "announced once, for both destinations");
}

/// A run of two linked steps (a NetHunt record, then a Calltouch deal)
/// whose worker is killed in the second call. Links are written when a run
/// finishes, so nothing is linked yet; the process that resumes it sends
/// neither record twice and links both: the event's subject and each
/// record know the others. A redelivery afterwards writes no link again.
async fn a_run_killed_between_two_linked_steps_links_both_records_when_it_finishes(h: Harness) {
    let who = h.owner().await;
    let nethunt = FakeNetHunt::start("owner@acme.test", "nh-key")
        .await
        .unwrap();
    let folder = nethunt.add_folder("Deals");
    nethunt.add_field(&folder, "Name").unwrap();
    let calltouch = FakeCalltouch::start("ct-token", "999").await.unwrap();
    let (source, token) = h.connect(&who, "generic", GENERIC(), &[]).await;
    let (nh, _) = h
        .connect(
            &who,
            "nethunt",
            json!({"base_url": nethunt.base_url()}),
            &[("email", "owner@acme.test"), ("api_key", "nh-key")],
        )
        .await;
    let ct = h.calltouch(&who, &calltouch).await;
    h.automation(
        &who,
        json!({
            "id": "orders-linked", "name": "Orders → NetHunt and Calltouch",
            "trigger": {"connection": source, "event": "generic.order.created"},
            "steps": [
                {"id": "record", "action": "nethunt.record.create", "connection": nh,
                 "link": {"name": "record"},
                 "fields": {"folder": "Deals", "fields": {"Name": "{{ event.name }}"}}},
                {"id": "deal", "action": "calltouch.deal.create", "connection": ct,
                 "link": {"name": "deal"},
                 "fields": {"order_number": "order-{{ event.id }}", "phone": "+79161234567", "status": "PENDING", "revenue": 0}}
            ]
        }),
    )
    .await;
    let event = h.event(&source, &token, json!({"id": "L-1", "name": "ACME"})).await;
    let links_of = |connection: &str, entity: &str, id: &str| {
        let key = crmbridge_engine::keys::links(connection, entity, id);
        let store = Arc::clone(&h.store);
        async move { store.get(&key.pk, &key.sk).await.unwrap() }
    };
    killed_while_calltouch_creates(&h, &calltouch, &event, "order-L-1").await;
    let subject = (event.connection.clone(), event.subject.kind.clone(), event.subject.id.clone());
    assert!(
        links_of(&subject.0, &subject.1, &subject.2).await.is_none(),
        "nothing is linked before the run finishes"
    );

    let restarted = h.another_process(true);
    let resumed = restarted.dispatch(event.clone()).await.unwrap();
    assert_eq!(resumed.runs[0].status, RunStatus::Succeeded, "{resumed:?}");
    assert_eq!(creates(&nethunt), 1, "the record is not made twice");
    let deals = calltouch
        .deals()
        .into_iter()
        .filter(|d| d["orderNumber"] == "order-L-1")
        .count();
    assert_eq!(deals, 1);
    let run = restarted.get_run(&who, &resumed.runs[0].id).await.unwrap();
    let record_id = run.steps[0].output["id"].as_str().unwrap().to_owned();
    let deal_id = run.steps[1].output["id"].as_str().unwrap().to_owned();
    let record = json!({"connection": nh, "entity": "record", "id": record_id});
    let deal = json!({"connection": ct, "entity": "deal", "id": deal_id});
    let origin = json!({"connection": subject.0, "entity": subject.1, "id": subject.2});

    let at_subject = links_of(&subject.0, &subject.1, &subject.2).await.unwrap();
    assert_eq!(at_subject.body, json!({"record": record, "deal": deal}));
    let at_record = links_of(&nh, "record", &record_id).await.unwrap();
    assert_eq!(at_record.body, json!({"deal": deal, subject.1.clone(): origin}));
    let at_deal = links_of(&ct, "deal", &deal_id).await.unwrap();
    assert_eq!(at_deal.body, json!({"record": record, subject.1.clone(): origin}));

    // Delivered again: the run is done, and no link is written again.
    let again = restarted.dispatch(event).await.unwrap();
    assert!(again.runs.is_empty() || again.runs[0].status == RunStatus::Succeeded, "{again:?}");
    for (connection, entity, id, before) in [
        (subject.0.as_str(), subject.1.as_str(), subject.2.as_str(), &at_subject),
        (nh.as_str(), "record", record_id.as_str(), &at_record),
        (ct.as_str(), "deal", deal_id.as_str(), &at_deal),
    ] {
        let now = links_of(connection, entity, id).await.unwrap();
        assert_eq!(now.version, before.version, "{entity} {id} rewritten");
    }
}

/// Two runs on one subject (two events about order O-1, each triggering its
/// own automation) link what they make at once. The first reads the
/// subject's links at its start (none yet) and is held in its Calltouch
/// call; the second, in another process, runs whole and links its deal.
/// The first then finishes with what it read at its start, out of date:
/// its write is conditional on that, so it reads again and both links land.
async fn two_runs_linking_one_subject_at_once_both_land(h: Harness) {
    use crmbridge_fakes::Gate;

    let who = h.owner().await;
    let calltouch = FakeCalltouch::start("ct-token", "999").await.unwrap();
    let (source, token) = h
        .connect(
            &who,
            "generic",
            json!({"event_id_pointer": "/id", "subject_id_pointer": "/order", "kind": "order.created"}),
            &[],
        )
        .await;
    let ct = h.calltouch(&who, &calltouch).await;
    for side in ["a", "b"] {
        h.automation(
            &who,
            json!({
                "id": format!("deal-{side}"), "name": format!("deal {side}"),
                "trigger": {"connection": source, "event": "generic.order.created"},
                "filter": {"field": "side", "eq": side},
                "steps": [{"id": "deal", "action": "calltouch.deal.create", "connection": ct,
                           "link": {"name": format!("deal_{side}")},
                           "fields": {"order_number": "{{ event.id }}", "phone": "+79161234567", "status": "PENDING", "revenue": 0}}]
            }),
        )
        .await;
    }
    let first = h
        .event(&source, &token, json!({"id": "E-a", "order": "O-1", "side": "a"}))
        .await;
    let second = h
        .event(&source, &token, json!({"id": "E-b", "order": "O-1", "side": "b"}))
        .await;
    assert_eq!(first.subject, second.subject);

    let gate = Gate::new();
    calltouch.fail_next_on(
        Some("POST"),
        "/client-order/create",
        1,
        Fault::HeldUntil(gate.clone()),
    );
    let held = tokio::spawn({
        let engine = Arc::clone(&h.engine);
        async move { engine.dispatch(first).await }
    });
    eventually("Calltouch commits the first deal", || calltouch.deal("E-a").is_some()).await;
    let other = h.another_process(false);
    let made = |done: crmbridge_engine::dispatch::Dispatched| {
        let ran: Vec<_> = done.runs.iter().filter(|r| r.status == RunStatus::Succeeded).collect();
        assert_eq!(ran.len(), 1, "{done:?}");
        let (h, who, id) = (&h, &who, ran[0].id.clone());
        async move {
            let run = h.engine.get_run(who, &id).await.unwrap();
            run.steps[0].output["id"].as_str().unwrap().to_owned()
        }
    };
    let deal_b = made(other.dispatch(second.clone()).await.unwrap()).await;
    gate.open();
    let deal_a = made(held.await.unwrap().unwrap()).await;
    assert_eq!(calltouch.deals().len(), 2);
    let key = crmbridge_engine::keys::links(&second.connection, &second.subject.kind, &second.subject.id);
    let at_subject = h.store.get(&key.pk, &key.sk).await.unwrap().unwrap();
    assert_eq!(
        at_subject.body,
        json!({
            "deal_a": {"connection": ct, "entity": "deal", "id": deal_a},
            "deal_b": {"connection": ct, "entity": "deal", "id": deal_b},
        }),
        "one run's link was lost"
    );
}

/// Dispatch serves connections and automations from a per-process cache
/// checked against the tenant's stamp. Changes made through another
/// process — the automation's template, the connection's address, the
/// automation disabled — apply from the very next dispatch here.
async fn a_configuration_change_made_in_one_process_applies_to_the_next_dispatch_in_another(
    h: Harness,
) {
    use crmbridge_control::admin::ConnectionPatch;
    use crmbridge_fakes::vendors::http::FakeReceiver;

    let who = h.owner().await;
    let first = FakeReceiver::start().await.unwrap();
    let second = FakeReceiver::start().await.unwrap();
    let (source, token) = h.connect(&who, "generic", GENERIC(), &[]).await;
    let (out, _) = h
        .connect(&who, "http", json!({"base_url": first.base_url()}), &[])
        .await;
    let automation = |version: u32| {
        json!({"id": "orders-out", "name": "Orders out",
            "trigger": {"connection": source, "event": "generic.order.created"},
            "steps": [{"id": "post", "action": "http.request.send", "connection": out,
                       "fields": {"url": "/orders", "json": {"order": "{{ event.id }}", "version": version}}}]})
    };
    h.automation(&who, automation(1)).await;
    let admin = h.another_process(false);
    let dispatched = |id: &'static str| {
        let (h, source, token) = (&h, source.clone(), token.clone());
        async move {
            let event = h.event(&source, &token, json!({"id": id})).await;
            h.engine.dispatch(event).await.unwrap()
        }
    };

    let runs = dispatched("C-1").await.runs;
    assert_eq!(runs[0].status, RunStatus::Succeeded, "{runs:?}");
    assert_eq!(first.deliveries(), [json!({"order": "C-1", "version": 1})]);

    // The template changes elsewhere.
    admin
        .save_automation(&who, Automation::from_json_str(&automation(2).to_string()).unwrap())
        .await
        .unwrap();
    dispatched("C-2").await;
    assert_eq!(first.deliveries()[1], json!({"order": "C-2", "version": 2}));

    // The connection's address changes elsewhere.
    admin
        .update_connection(
            &who,
            &out,
            ConnectionPatch {
                settings: Some(json!({"base_url": second.base_url()})),
                ..ConnectionPatch::default()
            },
        )
        .await
        .unwrap();
    dispatched("C-3").await;
    assert_eq!(first.delivery_count(), 2);
    assert_eq!(second.deliveries(), [json!({"order": "C-3", "version": 2})]);

    // Disabled elsewhere: the next event runs nothing.
    admin
        .set_automation_enabled(&who, "orders-out", false)
        .await
        .unwrap();
    let runs = dispatched("C-4").await.runs;
    assert!(
        runs.iter().all(|r| r.status == RunStatus::NoMatch && r.automation.is_none()),
        "{runs:?}"
    );
    assert_eq!((first.delivery_count(), second.delivery_count()), (2, 1));
}
