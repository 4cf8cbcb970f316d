//! The engine's use cases, run on both stores (SQLite and DynamoDB on moto)
//! with the real durable outbox as the bus.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use crmbridge_bus::{Bus, BusError, EventHandler, HandlerError, OutboxBus, OutboxConfig};
use crmbridge_connectors::Registry;
use crmbridge_control::admin::{NewConnection, Principal};
use crmbridge_control::prelude::*;
use crmbridge_engine::ingest::WebhookRequest;
use crmbridge_engine::records::{Role, RunStatus};
use crmbridge_engine::{Engine, EngineConfig, EngineError, Keyring};
use crmbridge_mapping::Event;
use crmbridge_store::{DynamoStore, Query, SqliteStore, Store};
use serde_json::json;
use tokio::sync::{mpsc, watch};

/// A bus that fails its first `failures` publishes, then delegates to the
/// real outbox: the failure of a real bus without a network fault.
struct FlakyBus {
    inner: OutboxBus,
    failures: AtomicU32,
}

#[async_trait]
impl Bus for FlakyBus {
    async fn publish(&self, events: &[Event]) -> Result<(), BusError> {
        if self.failures.load(Ordering::SeqCst) > 0 {
            self.failures.fetch_sub(1, Ordering::SeqCst);
            return Err(BusError::Backend {
                backend: "test",
                operation: "publish",
                message: "injected outage".into(),
            });
        }
        self.inner.publish(events).await
    }
}

struct Collect(mpsc::UnboundedSender<Event>);

#[async_trait]
impl EventHandler for Collect {
    async fn handle(&self, event: Event) -> Result<(), HandlerError> {
        self.0.send(event).map_err(|e| HandlerError(e.to_string()))
    }
}

struct Harness {
    engine: Engine,
    store: Arc<dyn Store>,
    bus: Arc<FlakyBus>,
    raw: Raw,
    _dir: tempfile::TempDir,
}

/// How to read every stored byte of a backend, for the plaintext check.
enum Raw {
    Sqlite(std::path::PathBuf),
    Dynamo(aws_sdk_dynamodb::Client, String),
}

impl Raw {
    async fn dump(&self) -> String {
        match self {
            Raw::Sqlite(dir) => {
                let mut all = Vec::new();
                for entry in std::fs::read_dir(dir).unwrap() {
                    all.extend(std::fs::read(entry.unwrap().path()).unwrap());
                }
                String::from_utf8_lossy(&all).into_owned()
            }
            Raw::Dynamo(client, table) => {
                let out = client.scan().table_name(table).send().await.unwrap();
                format!("{:?}", out.items())
            }
        }
    }
}

async fn harness(dynamo: bool) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crmbridge.db");
    let (store, raw): (Arc<dyn Store>, Raw) = if dynamo {
        let client = common::dynamo_client().await;
        let table = format!("engine-{}", common::unique());
        let store = DynamoStore::new(client.clone(), table.clone());
        store.create_table().await.unwrap();
        (Arc::new(store), Raw::Dynamo(client, table))
    } else {
        (
            Arc::new(SqliteStore::open(&db).unwrap()),
            Raw::Sqlite(dir.path().to_owned()),
        )
    };
    let outbox = OutboxBus::open(&dir.path().join("bus.db"), OutboxConfig::default()).unwrap();
    let bus = Arc::new(FlakyBus {
        inner: outbox,
        failures: AtomicU32::new(0),
    });
    let config = EngineConfig {
        max_body_bytes: 400 * 1024,
        // The NetHunt and Worksection fakes listen on loopback.
        allow_any_base_url: true,
        ..EngineConfig::default()
    };
    let engine = Engine::new(
        Arc::clone(&store),
        bus.clone(),
        Registry::builtin(),
        Keyring::parse(&Keyring::generate_spec("test")).unwrap(),
        config,
    );
    Harness {
        engine,
        store,
        bus,
        raw,
        _dir: dir,
    }
}

impl Harness {
    async fn owner(&self) -> Principal {
        let boot = self.engine.bootstrap("Acme").await.unwrap().unwrap();
        self.engine
            .authenticate(Some(&format!("Bearer {}", boot.owner_key)))
            .await
            .unwrap()
    }

    async fn connection(&self, who: &Principal) -> (String, String) {
        let view = self
            .engine
            .create_connection(
                who,
                NewConnection {
                    app: "generic".into(),
                    name: "Orders".into(),
                    settings: json!({"event_id_pointer": "/id", "kind": "order.created"}),
                    credentials: [("api_key".to_owned(), "sk-live-PLAINTEXT-0001".to_owned())]
                        .into(),
                },
            )
            .await
            .unwrap();
        let token = view.webhook_path.rsplit('/').next().unwrap().to_owned();
        (view.id, token)
    }

    /// Whether an event id was ever accepted (its idempotency record).
    async fn was_accepted(&self, id: &crmbridge_mapping::EventId) -> bool {
        let key = crmbridge_engine::keys::event_accept(id.as_str());
        self.store.get(&key.pk, &key.sk).await.unwrap().is_some()
    }

    async fn drain(&self, n: usize) -> Vec<Event> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (_stop, shutdown) = watch::channel(false);
        self.bus
            .inner
            .spawn_workers(Arc::new(Collect(tx)), shutdown);
        let mut got = Vec::new();
        while got.len() < n {
            got.push(
                tokio::time::timeout(Duration::from_secs(20), rx.recv())
                    .await
                    .expect("events not delivered")
                    .unwrap(),
            );
        }
        got
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

macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod sqlite { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::cases::$case(super::harness(false).await).await }
        )* }
        mod dynamodb { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::cases::$case(super::harness(true).await).await }
        )* }
    };
}

on_both_stores!(
    a_webhook_is_accepted_once_and_a_redelivery_does_nothing,
    bad_webhooks_get_precise_errors_and_change_nothing,
    a_bus_outage_is_a_503_and_the_retry_publishes,
    dispatch_records_one_run_however_often_it_is_delivered,
    an_event_too_large_for_the_bus_travels_by_reference,
    credentials_never_reach_the_store_in_plaintext,
    tenants_cannot_see_each_other,
    bootstrap_happens_once,
    tick_fans_out_one_poll_request_per_source,
    chat_is_dispatched_inline_once,
    keys_tenants_and_connection_updates,
    runs_are_filtered_by_status_and_time,
    concurrent_polls_find_a_change_once_and_a_dead_poll_resumes,
    an_import_reads_each_page_once_however_its_requests_are_delivered,
    refused_credentials_mark_the_connection_until_they_change,
    a_chats_messages_are_relayed_in_order_whatever_order_they_are_dispatched_in,
);

mod cases {
    use super::*;

    /// Three messages of one Verbox chat, relayed to Planfix: the first
    /// fails for now (Planfix answers 429 throughout), so the second and
    /// third, dispatched meanwhile, wait (parked, no run, nothing sent);
    /// once the first goes through it sends the second on, which sends the
    /// third: Planfix gets them once each, in order. Another chat is not
    /// held up by it.
    pub async fn a_chats_messages_are_relayed_in_order_whatever_order_they_are_dispatched_in(
        h: Harness,
    ) {
        use crmbridge_fakes::Fault;
        use crmbridge_fakes::vendors::planfix::FakePlanfix;
        use crmbridge_fakes::vendors::verbox::FakeVerbox;

        let planfix = FakePlanfix::start("pf-token", "pf-chat-key").await.unwrap();
        let owner = h.owner().await;
        let verbox = h
            .engine
            .create_connection(
                &owner,
                NewConnection {
                    app: "verbox".into(),
                    name: "Verbox".into(),
                    settings: json!({"base_url": "https://admin.verbox.ru"}),
                    credentials: [("token".to_owned(), "vb-token-1".to_owned())].into(),
                },
            )
            .await
            .unwrap();
        let pf = h
            .engine
            .create_connection(
                &owner,
                NewConnection {
                    app: "planfix".into(),
                    name: "Planfix".into(),
                    settings: json!({"base_url": planfix.base_url(), "chat_endpoint": planfix.chat_endpoint(),
                                     "max_requests_per_second": 50}),
                    credentials: [
                        ("token".to_owned(), "pf-token".to_owned()),
                        ("planfix_token".to_owned(), "pf-chat-key".to_owned()),
                    ]
                    .into(),
                },
            )
            .await
            .unwrap();
        let automation = json!({
            "id": "relay", "name": "Visitor → Planfix chat",
            "trigger": {"connection": verbox.id, "event": "verbox.message.received"},
            "steps": [{"id": "chat", "action": "planfix.chat.message", "connection": pf.id,
                       "fields": {"chat_id": "{{ event.client_id }}", "contact_id": "{{ event.client_id }}",
                                  "contact_name": "Visitor", "message": "{{ event.text }}"}}]
        });
        h.engine
            .save_automation(
                &owner,
                crmbridge_mapping::Automation::from_json_str(&automation.to_string()).unwrap(),
            )
            .await
            .unwrap();
        let token = verbox.webhook_path.rsplit('/').next().unwrap().to_owned();
        let send = |body: serde_json::Value| {
            let body = body.to_string();
            let engine = &h.engine;
            let conn = verbox.id.clone();
            let token = token.clone();
            async move {
                engine
                    .ingest_webhook(WebhookRequest {
                        headers: vec![("x-verbox-token".into(), "vb-token-1".into())],
                        ..hook(&conn, &token, body.as_bytes())
                    })
                    .await
                    .unwrap();
            }
        };
        // One set of bus workers for the whole case: events (the woken
        // ones too) arrive on `bus`.
        let (tx, mut bus) = mpsc::unbounded_channel();
        let (_stop, shutdown) = watch::channel(false);
        h.bus.inner.spawn_workers(Arc::new(Collect(tx)), shutdown);
        let mut next = async || {
            tokio::time::timeout(Duration::from_secs(20), bus.recv())
                .await
                .expect("an event on the bus")
                .unwrap()
        };
        for (n, text) in ["one", "two", "three"].iter().enumerate() {
            send(FakeVerbox::client_message("v-1", &format!("m-{n}"), text)).await;
        }
        send(FakeVerbox::client_message("v-2", "m-x", "elsewhere")).await;
        let mut events = Vec::new();
        for _ in 0..4 {
            events.push(next().await);
        }
        let by_text = |text: &str| {
            events
                .iter()
                .find(|e| e.data["text"] == text)
                .cloned()
                .unwrap()
        };

        planfix.fail_next(1000, Fault::TooManyRequests);
        let first = h.engine.dispatch(by_text("one")).await;
        assert!(first.is_err(), "the first fails for now: {first:?}");
        planfix.clear_faults();
        // Dispatched out of order, the third and the second wait.
        for text in ["three", "two"] {
            let parked = h.engine.dispatch(by_text(text)).await.unwrap();
            assert!(parked.runs.is_empty(), "{text}: {parked:?}");
        }
        assert!(planfix.chat_messages("v-1").is_empty());
        // Another chat goes on.
        let other = h.engine.dispatch(by_text("elsewhere")).await.unwrap();
        assert_eq!(other.runs[0].status, RunStatus::Succeeded);
        // The first goes through, then each wakes the next.
        let first = h.engine.dispatch(by_text("one")).await.unwrap();
        assert_eq!(first.runs[0].status, RunStatus::Succeeded);
        for expected in ["two", "three"] {
            let woken = next().await;
            assert_eq!(woken.data["text"], expected);
            let done = h.engine.dispatch(woken.clone()).await.unwrap();
            assert_eq!(done.runs[0].status, RunStatus::Succeeded, "{expected}");
            // Delivered again: nothing more.
            let again = h.engine.dispatch(woken).await.unwrap();
            assert!(again.duplicate || again.runs.is_empty(), "{again:?}");
        }
        let texts: Vec<String> = planfix
            .chat_messages("v-1")
            .into_iter()
            .map(|m| m.text)
            .collect();
        assert_eq!(texts, ["one", "two", "three"]);
        // A redelivered first message does not disturb the finished chat.
        let again = h.engine.dispatch(by_text("one")).await.unwrap();
        assert!(again.duplicate, "{again:?}");
        assert_eq!(planfix.chat_messages("v-1").len(), 3);
    }

    /// retailCRM refuses a wrong API key with 403 "Wrong apiKey value": the
    /// run fails with those words and the connection's health says the
    /// credentials were refused (without the key) until new credentials
    /// are saved; a check with a refused key marks it again, one that
    /// passes clears it.
    pub async fn refused_credentials_mark_the_connection_until_they_change(h: Harness) {
        use crmbridge_control::admin::ConnectionPatch;
        use crmbridge_fakes::vendors::retailcrm::FakeRetailCrm;

        let retailcrm = FakeRetailCrm::start("rc-good-key-1").await.unwrap();
        let owner = h.owner().await;
        let (source, token) = h.connection(&owner).await;
        let rc = h
            .engine
            .create_connection(
                &owner,
                NewConnection {
                    app: "retailcrm".into(),
                    name: "retailCRM".into(),
                    settings: json!({"base_url": retailcrm.base_url()}),
                    credentials: [("api_key".to_owned(), "rc-WRONG-key-42".to_owned())].into(),
                },
            )
            .await
            .unwrap();
        assert_eq!(rc.health, None);
        let automation = json!({
            "id": "order-to-retailcrm",
            "name": "Order status to retailCRM",
            "trigger": {"connection": source, "event": "generic.order.created"},
            "steps": [{"id": "order", "action": "retailcrm.order.update", "connection": rc.id,
                       "target": {"id": "{{ event.id }}"}, "fields": {"status": "new"}}]
        });
        h.engine
            .save_automation(
                &owner,
                crmbridge_mapping::Automation::from_json_str(&automation.to_string()).unwrap(),
            )
            .await
            .unwrap();
        h.engine
            .ingest_webhook(hook(&source, &token, br#"{"id": "17"}"#))
            .await
            .unwrap();
        let event = h.drain(1).await.remove(0);
        let dispatched = h.engine.dispatch(event).await.unwrap();
        let run = h
            .engine
            .get_run(&owner, &dispatched.runs[0].id)
            .await
            .unwrap();
        assert_eq!(run.status, RunStatus::Failed, "{run:?}");
        assert!(
            run.outcome.contains("refused the credentials"),
            "{}",
            run.outcome
        );
        let health = h
            .engine
            .get_connection(&owner, &rc.id)
            .await
            .unwrap()
            .health
            .expect("the connection shows the refusal");
        assert!(
            health.starts_with("credentials refused: retailcrm"),
            "{health}"
        );
        assert!(health.contains("Wrong"), "{health}");
        assert!(!health.contains("rc-WRONG-key-42"), "{health}");
        let listed = h.engine.list_connections(&owner).await.unwrap();
        assert!(listed.iter().any(|c| c.id == rc.id && c.health.is_some()));

        // New credentials: the mark goes; the check passes.
        let fixed = ConnectionPatch {
            credentials: Some([("api_key".to_owned(), Some("rc-good-key-1".to_owned()))].into()),
            ..Default::default()
        };
        let view = h
            .engine
            .update_connection(&owner, &rc.id, fixed)
            .await
            .unwrap();
        assert_eq!(view.health, None);
        assert!(h.engine.check_connection(&owner, &rc.id).await.unwrap().ok);

        // A key revoked later is found by a check, and cleared by the next
        // check that passes.
        retailcrm.set_api_key("rc-rotated-key-2");
        let check = h.engine.check_connection(&owner, &rc.id).await.unwrap();
        assert!(!check.ok && !check.transient, "{check:?}");
        let health = h
            .engine
            .get_connection(&owner, &rc.id)
            .await
            .unwrap()
            .health;
        assert!(health.unwrap().starts_with("credentials refused"));
        retailcrm.set_api_key("rc-good-key-1");
        assert!(h.engine.check_connection(&owner, &rc.id).await.unwrap().ok);
        assert_eq!(
            h.engine
                .get_connection(&owner, &rc.id)
                .await
                .unwrap()
                .health,
            None
        );
    }

    /// An import through the engine and the outbox, against the HubSpot
    /// fake: a page request delivered twice at once reads its page and
    /// counts it once and asks for one next page; redelivered after its
    /// save, it asks for the next page again (the same request, so nothing
    /// doubles); the connection takes one import at a time, and again
    /// once it finished.
    pub async fn an_import_reads_each_page_once_however_its_requests_are_delivered(h: Harness) {
        use crmbridge_engine::import::IMPORT_PAGE;
        use crmbridge_engine::records::ImportStatus;
        use crmbridge_fakes::oauth::{FakeOAuth, OAuthConfig};
        use crmbridge_fakes::vendors::hubspot::FakeHubSpot;

        let accounts = FakeOAuth::start(OAuthConfig::hubspot("hs-id", "hs-secret"))
            .await
            .unwrap();
        let hubspot = FakeHubSpot::start(accounts.token_checker(), "hs-secret")
            .await
            .unwrap();
        for i in 0..250 {
            hubspot
                .create_as_user("contacts", &[("email", &format!("p{i}@import.example"))])
                .unwrap();
        }
        let who = h.owner().await;
        let hs = h
            .engine
            .create_connection(
                &who,
                NewConnection {
                    app: "hubspot".into(),
                    name: "HubSpot".into(),
                    settings: json!({"base_url": hubspot.base_url(), "oauth_url": accounts.base_url()}),
                    credentials: [
                        ("client_id".to_owned(), "hs-id".to_owned()),
                        ("client_secret".to_owned(), "hs-secret".to_owned()),
                        ("refresh_token".to_owned(), accounts.issue_refresh_token()),
                    ]
                    .into(),
                },
            )
            .await
            .unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (_stop, shutdown) = watch::channel(false);
        h.bus.inner.spawn_workers(Arc::new(Collect(tx)), shutdown);
        let mut next = async || {
            tokio::time::timeout(Duration::from_secs(20), rx.recv())
                .await
                .expect("event not delivered")
                .unwrap()
        };

        let job = h.engine.start_import(&who.tenant, &hs.id).await.unwrap();
        assert_eq!(job.status, ImportStatus::Running);
        let kinds: Vec<&str> = job.kinds.iter().map(|k| k.kind.as_str()).collect();
        assert_eq!(kinds, ["hubspot.contact.created", "hubspot.note.created"]);
        let again = h
            .engine
            .start_import(&who.tenant, &hs.id)
            .await
            .unwrap_err();
        assert_eq!(again.status(), 409, "{again}");
        assert!(again.to_string().contains(&job.id), "{again}");

        // Page 0, delivered twice at once.
        let first = next().await;
        assert_eq!(first.kind, IMPORT_PAGE);
        let (a, b) = tokio::join!(
            h.engine.dispatch(first.clone()),
            h.engine.dispatch(first.clone())
        );
        // A copy may find some of the page's events still being accepted
        // by the other (both may, each waiting on the other's): it is told
        // to retry (503), as the bus then does.
        let accepted = a.is_ok() || b.is_ok();
        for outcome in [a, b] {
            if let Err(err) = outcome {
                assert_eq!(err.status(), 503, "{err}");
            }
        }
        if !accepted {
            h.engine.dispatch(first.clone()).await.unwrap();
        }
        let read = h.engine.get_import(&who.tenant, &job.id).await.unwrap();
        assert_eq!((read.page, read.done), (1, 100), "{read:?}");
        assert_eq!(read.kinds[0].total, Some(250));
        let mut contacts = std::collections::BTreeSet::new();
        let mut requests = Vec::new();
        while contacts.len() < 100 || requests.is_empty() {
            let event = next().await;
            if event.kind == IMPORT_PAGE {
                requests.push(event);
            } else {
                assert_eq!(event.kind, "hubspot.contact.created");
                assert_eq!(event.data["imported"], true);
                assert!(
                    contacts.insert(event.subject.id.clone()),
                    "twice: {event:?}"
                );
            }
        }
        // Page 0 again, after its save: it is counted once, and the next
        // page request it makes again is the same request (no new event).
        h.engine.dispatch(first.clone()).await.unwrap();
        let read = h.engine.get_import(&who.tenant, &job.id).await.unwrap();
        assert_eq!((read.page, read.done), (1, 100), "{read:?}");

        // The rest, one request at a time, until none is asked for.
        while let Some(request) = requests.pop() {
            h.engine.dispatch(request).await.unwrap();
            let read = h.engine.get_import(&who.tenant, &job.id).await.unwrap();
            if read.status == ImportStatus::Finished {
                break;
            }
            loop {
                let event = next().await;
                if event.kind == IMPORT_PAGE {
                    requests.push(event);
                    break;
                }
                assert!(
                    contacts.insert(event.subject.id.clone()),
                    "twice: {event:?}"
                );
            }
        }
        let done = h.engine.get_import(&who.tenant, &job.id).await.unwrap();
        assert_eq!(done.status, ImportStatus::Finished, "{done:?}");
        assert_eq!((done.done, done.total), (250, Some(250)), "{done:?}");
        assert!(done.finished_at.is_some());
        while contacts.len() < 250 {
            let event = next().await;
            assert!(
                contacts.insert(event.subject.id.clone()),
                "twice: {event:?}"
            );
        }
        // Finished: the connection takes another import.
        let second = h.engine.start_import(&who.tenant, &hs.id).await.unwrap();
        assert_ne!(second.id, job.id);
        let listed = h.engine.list_imports(&who.tenant).await.unwrap();
        assert_eq!(listed.len(), 2);
    }

    pub async fn keys_tenants_and_connection_updates(h: Harness) {
        use crmbridge_control::admin::ConnectionPatch;
        use crmbridge_control::tenants::{NewKey, NewTenant};
        let owner = h.owner().await;
        let admin_key = h
            .engine
            .create_key(&owner, NewKey { role: Role::Admin })
            .await
            .unwrap();
        let admin = h
            .engine
            .authenticate(Some(&format!("Bearer {}", admin_key.key)))
            .await
            .unwrap();
        assert_eq!(
            (admin.role, admin.tenant.as_str()),
            (Role::Admin, owner.tenant.as_str())
        );
        assert_eq!(h.engine.list_keys(&admin).await.unwrap_err().status(), 403);
        let keys = h.engine.list_keys(&owner).await.unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.iter().any(|k| k.current && k.role == Role::Owner));
        assert!(!h.raw.dump().await.contains(&admin_key.key));
        // The last owner key stays; an admin key goes, at once.
        let own = keys.iter().find(|k| k.current).unwrap().id.clone();
        assert_eq!(
            h.engine
                .delete_key(&owner, &own)
                .await
                .unwrap_err()
                .status(),
            409
        );
        h.engine.delete_key(&owner, &admin_key.id).await.unwrap();
        let gone = h
            .engine
            .authenticate(Some(&format!("Bearer {}", admin_key.key)))
            .await;
        assert_eq!(gone.unwrap_err().status(), 401);

        // A new tenant: only the first tenant's owners may; it starts empty.
        let created = h
            .engine
            .create_tenant(
                &owner,
                NewTenant {
                    name: "Beta".into(),
                },
            )
            .await
            .unwrap();
        let beta = h
            .engine
            .authenticate(Some(&format!("Bearer {}", created.owner_key.key)))
            .await
            .unwrap();
        assert_eq!(beta.tenant, created.tenant.id);
        assert_eq!(h.engine.current_tenant(&beta).await.unwrap().name, "Beta");
        assert!(h.engine.list_connections(&beta).await.unwrap().is_empty());
        let refused = h
            .engine
            .create_tenant(
                &beta,
                NewTenant {
                    name: "Gamma".into(),
                },
            )
            .await;
        assert_eq!(refused.unwrap_err().status(), 403);

        // Connection updates: settings merge-patched, credentials merged,
        // the webhook token kept; another tenant's id is not found.
        let (conn, token) = h.connection(&owner).await;
        let patch = ConnectionPatch {
            name: Some("Orders 2".into()),
            settings: Some(json!({"kind": "order.paid"})),
            credentials: Some([("extra".to_owned(), Some("sk-EXTRA-0002".to_owned()))].into()),
            replace_credentials: false,
        };
        let view = h
            .engine
            .update_connection(&owner, &conn, patch.clone())
            .await
            .unwrap();
        assert_eq!(view.name, "Orders 2");
        assert_eq!(
            view.settings,
            json!({"event_id_pointer": "/id", "kind": "order.paid"})
        );
        assert_eq!(view.credentials_set, vec!["api_key", "extra"]);
        assert!(view.webhook_path.ends_with(&token));
        assert!(!h.raw.dump().await.contains("sk-EXTRA-0002"));
        let removed = ConnectionPatch {
            credentials: Some([("api_key".to_owned(), None)].into()),
            ..Default::default()
        };
        let view = h
            .engine
            .update_connection(&owner, &conn, removed)
            .await
            .unwrap();
        assert_eq!(view.credentials_set, vec!["extra"]);
        assert_eq!(
            h.engine
                .update_connection(&beta, &conn, patch)
                .await
                .unwrap_err()
                .status(),
            404
        );
        let invalid = ConnectionPatch {
            settings: Some(json!({"colour": "red"})),
            ..Default::default()
        };
        let err = h
            .engine
            .update_connection(&owner, &conn, invalid)
            .await
            .unwrap_err();
        assert_eq!(err.status(), 422);
        let unchanged = h.engine.get_connection(&owner, &conn).await.unwrap();
        assert_eq!(unchanged.settings["kind"], "order.paid");
        assert_eq!(unchanged.credentials_set, vec!["extra"]);
    }

    pub async fn runs_are_filtered_by_status_and_time(h: Harness) {
        use crmbridge_control::runs::RunFilter;
        let owner = h.owner().await;
        let (conn, token) = h.connection(&owner).await;
        let start = chrono::Utc::now();
        for n in 0..3 {
            let body = serde_json::to_vec(&json!({"id": format!("F-{n}")})).unwrap();
            h.engine
                .ingest_webhook(hook(&conn, &token, &body))
                .await
                .unwrap();
        }
        for event in h.drain(3).await {
            h.engine.dispatch(event).await.unwrap();
        }
        let list = |filter: RunFilter| {
            let engine = &h.engine;
            let owner = owner.clone();
            async move { engine.list_runs(&owner, filter).await }
        };
        let all = list(RunFilter::default()).await.unwrap();
        assert_eq!(all.items.len(), 3);
        assert!(
            all.items
                .windows(2)
                .all(|w| w[0].created_at >= w[1].created_at)
        );
        let page = list(RunFilter {
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(page.items.len(), 2);
        let rest = list(RunFilter {
            limit: 2,
            cursor: page.next_cursor,
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(rest.items.len(), 1);
        assert_eq!(rest.next_cursor, None);
        let no_match = list(RunFilter {
            status: Some(RunStatus::NoMatch),
            since: Some(start),
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(no_match.items.len(), 3);
        let failed = list(RunFilter {
            status: Some(RunStatus::Failed),
            ..Default::default()
        })
        .await
        .unwrap();
        assert!(failed.items.is_empty());
        let before = list(RunFilter {
            until: Some(start),
            ..Default::default()
        })
        .await
        .unwrap();
        assert!(before.items.is_empty());
        let bad = list(RunFilter {
            since: Some(start),
            until: Some(start),
            ..Default::default()
        })
        .await;
        assert_eq!(bad.unwrap_err().status(), 400);
        // A run that matched nothing is not replayed.
        let err = h
            .engine
            .replay_run(&owner, &all.items[0].id)
            .await
            .unwrap_err();
        assert_eq!((err.status(), err.code()), (409, "conflict"));
    }

    pub async fn a_webhook_is_accepted_once_and_a_redelivery_does_nothing(h: Harness) {
        let owner = h.owner().await;
        let (conn, token) = h.connection(&owner).await;
        let body = br#"{"id": "order-1", "sum": 1500}"#;
        let first = h
            .engine
            .ingest_webhook(hook(&conn, &token, body))
            .await
            .unwrap();
        assert_eq!(first.accepted.len(), 1);
        assert!(first.duplicates.is_empty());
        let second = h
            .engine
            .ingest_webhook(hook(&conn, &token, body))
            .await
            .unwrap();
        assert!(second.is_duplicate());
        assert_eq!(second.duplicates, first.accepted);
        assert_eq!(
            h.bus.inner.stats().await.unwrap().pending,
            1,
            "the redelivery published again"
        );
        let events = h.drain(1).await;
        assert_eq!(events[0].id, first.accepted[0]);
        assert_eq!(events[0].kind, "generic.order.created");
        assert_eq!(events[0].tenant, owner.tenant);
        assert_eq!(events[0].data["sum"], 1500);
    }

    pub async fn bad_webhooks_get_precise_errors_and_change_nothing(h: Harness) {
        let owner = h.owner().await;
        let (conn, token) = h.connection(&owner).await;
        let before = h.raw.dump().await.len();
        let cases: Vec<(WebhookRequest<'_>, u16, &str)> = vec![
            (hook("con_missing", &token, b"{}"), 404, ""),
            (
                hook(&conn, "wrong-token", b"{\"id\": 1}"),
                401,
                "authorization",
            ),
            (hook(&conn, "", b"{\"id\": 1}"), 401, "authorization"),
            (hook(&conn, &token, b"{\"id\": "), 400, "body"),
            (hook(&conn, &token, b"{\"no_id\": 1}"), 400, "body/id"),
        ];
        for (request, status, field) in cases {
            let err = h.engine.ingest_webhook(request).await.unwrap_err();
            assert_eq!(err.status(), status, "{err}");
            if !field.is_empty() {
                assert_eq!(err.to_body()["error"]["field"], field, "{err}");
            }
        }
        let big = vec![b' '; 400 * 1024 + 1];
        let err = h
            .engine
            .ingest_webhook(hook(&conn, &token, &big))
            .await
            .unwrap_err();
        assert_eq!((err.status(), err.code()), (413, "payload_too_large"));
        assert_eq!(h.bus.inner.stats().await.unwrap().pending, 0);
        if let Raw::Dynamo(..) = h.raw {
            assert_eq!(
                h.raw.dump().await.len(),
                before,
                "a refused webhook wrote to the store"
            );
        }
        use crmbridge_mapping::EventId;
        for id in [
            EventId::from_source(&conn, "1"),
            EventId::from_source("con_missing", "1"),
            EventId::from_payload(&conn, b"{\"id\": "),
            EventId::from_payload(&conn, b"{\"no_id\": 1}"),
        ] {
            assert!(!h.was_accepted(&id).await, "a refused webhook was accepted");
        }
        let ok = h
            .engine
            .ingest_webhook(hook(&conn, &token, b"{\"id\": 1}"))
            .await
            .unwrap();
        assert!(
            h.was_accepted(&ok.accepted[0]).await,
            "the check above cannot fail"
        );
    }

    pub async fn a_bus_outage_is_a_503_and_the_retry_publishes(h: Harness) {
        let owner = h.owner().await;
        let (conn, token) = h.connection(&owner).await;
        h.bus.failures.store(1, Ordering::SeqCst);
        let body = br#"{"id": "order-2"}"#;
        let err = h
            .engine
            .ingest_webhook(hook(&conn, &token, body))
            .await
            .unwrap_err();
        assert_eq!((err.status(), err.code()), (503, "bus_unavailable"));
        assert!(matches!(err, EngineError::Bus(_)));
        // The sender retries: the pending event is published now...
        let retry = h
            .engine
            .ingest_webhook(hook(&conn, &token, body))
            .await
            .unwrap();
        assert_eq!(retry.accepted.len(), 1);
        // ...and only once.
        let third = h
            .engine
            .ingest_webhook(hook(&conn, &token, body))
            .await
            .unwrap();
        assert!(third.is_duplicate());
        assert_eq!(h.bus.inner.stats().await.unwrap().pending, 1);
    }

    pub async fn dispatch_records_one_run_however_often_it_is_delivered(h: Harness) {
        let owner = h.owner().await;
        let (conn, token) = h.connection(&owner).await;
        h.engine
            .ingest_webhook(hook(&conn, &token, br#"{"id": "o-3"}"#))
            .await
            .unwrap();
        let event = h.drain(1).await.remove(0);
        let first = h.engine.dispatch(event.clone()).await.unwrap();
        assert!(!first.duplicate);
        assert_eq!(first.runs[0].status, RunStatus::NoMatch);
        assert!(
            first.runs[0]
                .outcome
                .contains("no automation matched generic.order.created")
        );
        let again = h.engine.dispatch(event.clone()).await.unwrap();
        assert!(again.duplicate);
        let runs = h
            .engine
            .list_runs(
                &owner,
                crmbridge_control::runs::RunFilter {
                    limit: 50,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(runs.items.len(), 1);
        let run = h.engine.get_run(&owner, &runs.items[0].id).await.unwrap();
        assert_eq!(run.event, event);
    }

    pub async fn an_event_too_large_for_the_bus_travels_by_reference(h: Harness) {
        let owner = h.owner().await;
        let (conn, token) = h.connection(&owner).await;
        let blob = "Заказ ".repeat(30_000); // ~330 KB of two-byte characters
        let body = serde_json::to_vec(&json!({"id": "big-1", "comment": blob})).unwrap();
        h.engine
            .ingest_webhook(hook(&conn, &token, &body))
            .await
            .unwrap();
        let travelling = h.drain(1).await.remove(0);
        assert!(serde_json::to_string(&travelling).unwrap().len() < crmbridge_bus::MAX_ENTRY_BYTES);
        let dispatched = h.engine.dispatch(travelling).await.unwrap();
        let run = h
            .engine
            .get_run(&owner, &dispatched.runs[0].id)
            .await
            .unwrap();
        assert_eq!(run.event.data["comment"].as_str().unwrap(), blob);
    }

    pub async fn credentials_never_reach_the_store_in_plaintext(h: Harness) {
        let owner = h.owner().await;
        let (conn, token) = h.connection(&owner).await;
        let dump = h.raw.dump().await;
        assert!(
            dump.contains(&conn),
            "the dump does not show the store's contents"
        );
        assert!(
            !dump.contains("sk-live-PLAINTEXT-0001"),
            "a credential is stored in plaintext"
        );
        assert!(
            !dump.contains(&token),
            "the webhook token is stored in plaintext"
        );
        let view = h.engine.get_connection(&owner, &conn).await.unwrap();
        assert_eq!(view.credentials_set, ["api_key"]);
        let shown = serde_json::to_string(&view).unwrap();
        assert!(!shown.contains("sk-live-PLAINTEXT-0001"));
    }

    pub async fn tenants_cannot_see_each_other(h: Harness) {
        let owner = h.owner().await;
        let (conn, token) = h.connection(&owner).await;
        h.engine
            .ingest_webhook(hook(&conn, &token, br#"{"id": "o-9"}"#))
            .await
            .unwrap();
        let event = h.drain(1).await.remove(0);
        let run = h.engine.dispatch(event).await.unwrap().runs.remove(0);
        let stranger = Principal {
            tenant: "ten_other".into(),
            role: Role::Owner,
            key_id: "key_x".into(),
        };
        assert_eq!(
            h.engine
                .get_connection(&stranger, &conn)
                .await
                .unwrap_err()
                .status(),
            404
        );
        assert_eq!(
            h.engine
                .get_run(&stranger, &run.id)
                .await
                .unwrap_err()
                .status(),
            404
        );
        assert!(
            h.engine
                .list_runs(
                    &stranger,
                    crmbridge_control::runs::RunFilter {
                        limit: 50,
                        ..Default::default()
                    }
                )
                .await
                .unwrap()
                .items
                .is_empty()
        );
        assert!(
            h.engine
                .list_connections(&stranger)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(h.engine.list_connections(&owner).await.unwrap().len(), 1);
        let viewer = Principal {
            role: Role::Viewer,
            ..owner.clone()
        };
        assert_eq!(
            h.engine
                .get_connection(&viewer, &conn)
                .await
                .unwrap_err()
                .status(),
            403
        );
        assert_eq!(
            h.engine
                .list_runs(
                    &viewer,
                    crmbridge_control::runs::RunFilter {
                        limit: 50,
                        ..Default::default()
                    }
                )
                .await
                .unwrap()
                .items
                .len(),
            1
        );
    }

    pub async fn bootstrap_happens_once(h: Harness) {
        let first = h.engine.bootstrap("Acme").await.unwrap().unwrap();
        assert!(first.owner_key.starts_with("cbk_"));
        assert!(h.engine.bootstrap("Acme").await.unwrap().is_none());
        let who = h
            .engine
            .authenticate(Some(&format!("Bearer {}", first.owner_key)))
            .await
            .unwrap();
        assert_eq!(
            (who.tenant.as_str(), who.role),
            (first.tenant.id.as_str(), Role::Owner)
        );
        for bad in [
            None,
            Some("Bearer "),
            Some("Basic abc"),
            Some("Bearer cbk_nope"),
        ] {
            assert_eq!(h.engine.authenticate(bad).await.unwrap_err().status(), 401);
        }
        assert!(
            !h.raw.dump().await.contains(&first.owner_key),
            "an API key is stored in plaintext"
        );
    }

    pub async fn tick_fans_out_one_poll_request_per_source(h: Harness) {
        let now = chrono::Utc::now();
        let empty = h.engine.tick(now).await.unwrap();
        assert_eq!((empty.sources.len(), empty.published), (0, 0));
        for connection in ["con_a", "con_b"] {
            let kind = "moysklad.customerorder.updated";
            h.store
                .put(crmbridge_store::Item::new(
                    "POLL",
                    format!("{connection}#{kind}"),
                    json!({"tenant": "ten_1", "connection": connection, "kind": kind}),
                ))
                .await
                .unwrap();
        }
        let later = now + chrono::Duration::minutes(5);
        let record = h.engine.tick(later).await.unwrap();
        assert_eq!(
            record.sources,
            [
                "con_a#moysklad.customerorder.updated",
                "con_b#moysklad.customerorder.updated"
            ]
        );
        assert_eq!(record.published, 2);
        // The same tick delivered twice asks for nothing more.
        assert_eq!(h.engine.tick(later).await.unwrap().published, 0);
        let requests = h.drain(2).await;
        assert!(
            requests
                .iter()
                .all(|e| e.kind == "crmbridge.poll.requested" && e.tenant == "ten_1")
        );
        let ticks = h.store.query(Query::prefix("TICK", "")).await.unwrap();
        assert_eq!(ticks.items.len(), 2);
    }

    pub async fn chat_is_dispatched_inline_once(h: Harness) {
        let owner = h.owner().await;
        let (conn, token) = h.connection(&owner).await;
        let body = r#"{"id": "msg-1", "text": "Здравствуйте"}"#.as_bytes();
        let handled = h
            .engine
            .ingest_chat(hook(&conn, &token, body))
            .await
            .unwrap();
        assert_eq!(handled.runs.len(), 1);
        assert_eq!(handled.runs[0].status, RunStatus::NoMatch);
        let again = h
            .engine
            .ingest_chat(hook(&conn, &token, body))
            .await
            .unwrap();
        assert!(again.runs.is_empty());
        assert_eq!(again.duplicates.len(), 1);
        assert_eq!(
            h.engine
                .list_runs(
                    &owner,
                    crmbridge_control::runs::RunFilter {
                        limit: 10,
                        ..Default::default()
                    }
                )
                .await
                .unwrap()
                .items
                .len(),
            1
        );
        assert_eq!(
            h.bus.inner.stats().await.unwrap().pending,
            0,
            "chat went through the bus"
        );
    }

    /// Two ticks poll one NetHunt source at once: both ask NetHunt, and
    /// the one that finishes publishes the change and moves the cursor.
    /// The other dies halfway (its task is dropped mid-call); its
    /// redelivery asks again and finds nothing new. The record that became
    /// Won gives exactly one event, one run and one task.
    pub async fn concurrent_polls_find_a_change_once_and_a_dead_poll_resumes(h: Harness) {
        use crmbridge_fakes::Fault;
        use crmbridge_fakes::vendors::nethunt::FakeNetHunt;
        use crmbridge_fakes::vendors::worksection::FakeWorksection;

        let nethunt = FakeNetHunt::start("owner@acme.test", "nh-key")
            .await
            .unwrap();
        let deals = nethunt.add_folder("Deals");
        for field in ["Name", "Status", "Email"] {
            nethunt.add_field(&deals, field).unwrap();
        }
        let worksection = FakeWorksection::start("ws-admin-key").await.unwrap();
        let project = worksection.add_project("Delivery");
        let who = h.owner().await;
        let nh = h
            .engine
            .create_connection(
                &who,
                NewConnection {
                    app: "nethunt".into(),
                    name: "NetHunt".into(),
                    settings: json!({"base_url": nethunt.base_url()}),
                    credentials: [
                        ("email".to_owned(), "owner@acme.test".to_owned()),
                        ("api_key".to_owned(), "nh-key".to_owned()),
                    ]
                    .into(),
                },
            )
            .await
            .unwrap();
        let ws = h
            .engine
            .create_connection(
                &who,
                NewConnection {
                    app: "worksection".into(),
                    name: "Worksection".into(),
                    settings: json!({"base_url": worksection.base_url(), "auth_scheme": "header"}),
                    credentials: [("admin_key".to_owned(), "ws-admin-key".to_owned())].into(),
                },
            )
            .await
            .unwrap();
        h.engine
            .instantiate_recipe(
                &who,
                "nethunt-worksection",
                &[
                    ("nethunt".to_owned(), nh.id.clone()),
                    ("worksection".to_owned(), ws.id.clone()),
                ]
                .into(),
                &[("project".to_owned(), json!(project))].into(),
            )
            .await
            .unwrap();
        let polls_of = |n: &FakeNetHunt| {
            n.requests()
                .iter()
                .filter(|r| r.path.contains("/triggers/updated-record/"))
                .count()
        };
        // Ticks fan out one poll request per source: NetHunt's folder and
        // Worksection's task closes.
        // One set of outbox workers for the whole case (a second set would
        // not see deliveries the first one already failed to hand over).
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (_stop, shutdown) = watch::channel(false);
        h.bus.inner.spawn_workers(Arc::new(Collect(tx)), shutdown);
        let mut next = async || {
            tokio::time::timeout(Duration::from_secs(20), rx.recv())
                .await
                .expect("event not delivered")
                .unwrap()
        };
        let t0 = chrono::Utc::now();
        let ticked = h.engine.tick(t0).await.unwrap();
        assert_eq!(
            (ticked.sources.len(), ticked.published),
            (2, 2),
            "{ticked:?}"
        );
        for _ in 0..2 {
            h.engine.dispatch(next().await).await.unwrap();
        }
        assert_eq!(polls_of(&nethunt), 0, "the first poll only sets the cursor");

        let record = nethunt
            .insert_record(&deals, json!({"Name": "ACME", "Status": "New"}))
            .unwrap();
        nethunt.set_field(&record, "Status", json!("Won")).unwrap();
        h.engine
            .tick(t0 + chrono::Duration::seconds(300))
            .await
            .unwrap();
        h.engine
            .tick(t0 + chrono::Duration::seconds(600))
            .await
            .unwrap();
        let mut requests = Vec::new();
        for _ in 0..4 {
            requests.push(next().await);
        }
        let nethunt_polls: Vec<Event> = requests
            .into_iter()
            .filter(|r| r.subject.id.starts_with(&format!("{}#nethunt", nh.id)))
            .collect();
        assert_eq!(nethunt_polls.len(), 2);
        let (first, second) = (nethunt_polls[0].clone(), nethunt_polls[1].clone());

        nethunt.fail_next_on(
            Some("GET"),
            "/triggers/updated-record/",
            1,
            Fault::Slow(Duration::from_secs(30)),
        );
        let engine = Arc::new(h.engine);
        let dying = tokio::spawn({
            let engine = Arc::clone(&engine);
            let first = first.clone();
            async move { engine.dispatch(first).await }
        });
        // Wait until the first poll is inside its (slow) NetHunt call.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while polls_of(&nethunt) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the poll never called NetHunt"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        nethunt.wait_in_flight(1).await;
        // The second tick's poll runs alongside: it asks NetHunt too, finds
        // the change, publishes it and moves the cursor.
        let outcome = engine.dispatch(second.clone()).await.unwrap();
        assert!(outcome.runs.is_empty());
        assert_eq!(polls_of(&nethunt), 2);
        let change = next().await;
        assert_eq!(change.kind, "nethunt.record.field_changed");
        assert_eq!(change.subject.id, record);
        assert_eq!(change.data["value"], "Won");
        // The first poll dies halfway.
        dying.abort();
        assert!(dying.await.unwrap_err().is_cancelled());
        assert!(worksection.tasks().is_empty());

        // The dead poll is redelivered (same request): it asks again, and
        // the change it finds is the one already published.
        engine.dispatch(first).await.unwrap();
        assert_eq!(polls_of(&nethunt), 3);
        let dispatched = engine.dispatch(change.clone()).await.unwrap();
        assert_eq!(dispatched.runs.len(), 1);
        assert_eq!(dispatched.runs[0].status, RunStatus::Succeeded);
        assert_eq!(worksection.tasks().len(), 1);

        // The second tick's poll, redelivered: the record is seen again
        // (overlap) but has not changed: no new event.
        engine.dispatch(second).await.unwrap();
        assert_eq!(polls_of(&nethunt), 4);
        // A third poll after the record changed again (another field) is
        // still the same Won: nothing new either.
        nethunt
            .set_field(&record, "Email", json!(["a@acme.test"]))
            .unwrap();
        engine
            .tick(t0 + chrono::Duration::seconds(900))
            .await
            .unwrap();
        let mut polled = 0;
        while polled < 2 {
            let request = next().await;
            assert_eq!(request.kind, "crmbridge.poll.requested", "{request:?}");
            engine.dispatch(request).await.unwrap();
            polled += 1;
        }
        assert_eq!(polls_of(&nethunt), 5);
        // Anything published since would be a second change.
        engine.dispatch(change).await.unwrap();
        assert!(rx.try_recv().is_err(), "no second change was published");
        assert_eq!(worksection.tasks().len(), 1);
    }
}
