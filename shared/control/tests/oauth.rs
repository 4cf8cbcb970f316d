//! OAuth 2.0 connections against a fake authorization server (tests/fakes
//! `oauth`), on both stores: consent with a `state` checked on return (a
//! wrong or replayed one saves nothing), the headless path (a pasted
//! refresh token), a refresh before expiry, a 401 answered by one refresh
//! and the same request sent once more, two workers refreshing at once
//! making one token call, and a refused refresh putting "reauthorization
//! needed" on the connection and failing runs for good without further
//! token calls. No token or client secret reaches a log line, an answer or
//! the store in plaintext.
//!
//! The vendor is `oauthdemo`, declared here with the connector kit as any
//! OAuth vendor is (Zoho and HubSpot use the same machinery).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use crmbridge_bus::{OutboxBus, OutboxConfig};
use crmbridge_connectors::client::{Idempotency, VendorPolicy, VendorRequest};
use crmbridge_connectors::oauth::{OAuthApp, OAuthEndpoints, send_authorized};
use crmbridge_connectors::{
    Account, Action, ActionError, ActionOutput, CallContext, Registry, Resend, SettingsError,
    Vendor, VendorError, VendorSettings,
};
use crmbridge_control::admin::{NewConnection, Principal};
use crmbridge_control::prelude::*;
use crmbridge_engine::records::RunStatus;
use crmbridge_engine::{Engine, EngineConfig, EngineError, Keyring};
use crmbridge_fakes::oauth::{FakeOAuth, OAuthConfig};
use crmbridge_mapping::{ActionKind, ActionSpec, Event, EventId, FieldSpec, FieldType, Subject};
use crmbridge_store::Store;
use serde_json::{Map, Value, json};

/// A vendor that signs in with OAuth 2.0: records created on the fake's
/// protected resource.
struct Demo;

fn base(settings: &Value) -> Result<String, ActionError> {
    settings["base_url"]
        .as_str()
        .map(|u| u.trim_end_matches('/').to_owned())
        .ok_or_else(|| ActionError::Config("settings.base_url is required".into()))
}

fn policy() -> VendorPolicy {
    VendorPolicy::new("oauthdemo", 100, Duration::from_secs(1), 4)
}

impl VendorSettings for Demo {
    fn required_credentials(&self) -> &'static [&'static str] {
        &["client_id", "client_secret"]
    }
    fn validate_settings(&self, settings: &Value, _any: bool) -> Result<(), Vec<SettingsError>> {
        match settings["base_url"].as_str() {
            Some(_) => Ok(()),
            None => Err(vec![SettingsError {
                field: "base_url".into(),
                message: "required".into(),
            }]),
        }
    }
}

impl OAuthApp for Demo {
    fn endpoints(&self, settings: &Value, _any: bool) -> Result<OAuthEndpoints, ActionError> {
        let base = base(settings)?;
        Ok(OAuthEndpoints {
            authorize_url: format!("{base}/oauth/authorize"),
            token_url: format!("{base}/oauth/token"),
        })
    }
    fn scopes(&self) -> Vec<String> {
        vec!["records".into()]
    }
}

#[async_trait]
impl Account for Demo {
    async fn check(&self, ctx: &CallContext<'_>) -> Result<Value, ActionError> {
        let url = format!("{}/api/whoami", base(ctx.settings)?);
        let response = send_authorized(ctx, &Demo, &policy(), |auth| {
            VendorRequest::get(url.clone()).header("authorization", auth)
        })
        .await?;
        if !response.is_success() {
            return Err(rejected(response.status));
        }
        Ok(response.json()?)
    }
}

fn rejected(status: u16) -> ActionError {
    ActionError::Vendor(VendorError::Rejected {
        vendor: "oauthdemo",
        status,
        message: format!("HTTP {status}"),
    })
}

struct CreateRecord;

#[async_trait]
impl Action for CreateRecord {
    fn spec(&self) -> ActionSpec {
        ActionSpec::new(
            "oauthdemo.record.create",
            ActionKind::Create,
            vec![FieldSpec::required("name", FieldType::String)],
        )
    }
    fn resend(&self, _fields: &Map<String, Value>) -> Resend {
        Resend::Unsafe
    }
    async fn execute(
        &self,
        ctx: &CallContext<'_>,
        fields: &Map<String, Value>,
        _target: Option<&str>,
    ) -> Result<ActionOutput, ActionError> {
        let url = format!("{}/api/records", base(ctx.settings)?);
        let body = Value::Object(fields.clone()).to_string().into_bytes();
        let response = send_authorized(ctx, &Demo, &policy(), |auth| {
            VendorRequest::with_body(
                reqwest::Method::POST,
                url.clone(),
                body.clone(),
                Idempotency::NotIdempotent,
            )
            .header("authorization", auth)
            .header("content-type", "application/json")
        })
        .await?;
        if !response.is_success() {
            return Err(rejected(response.status));
        }
        let record = response.json()?;
        Ok(ActionOutput {
            id: record["id"].as_str().unwrap_or_default().to_owned(),
            record,
            response_status: response.status,
            attempts: response.attempts,
        })
    }
}

fn registry() -> Registry {
    let demo = Arc::new(Demo);
    let mut registry = Registry::builtin();
    registry.register(
        Vendor::new("oauthdemo", demo.clone())
            .oauth(demo.clone())
            .account(demo)
            .action(Arc::new(CreateRecord)),
    );
    registry
}

struct Harness {
    engine: Arc<Engine>,
    store: Arc<dyn Store>,
    keyring: String,
    oauth: FakeOAuth,
    who: Principal,
    dynamo: bool,
    table: String,
    logs: crmbridge_fakes::logs::CapturedLogs,
    _log_guard: tracing::subscriber::DefaultGuard,
    dir: tempfile::TempDir,
}

const CLIENT_ID: &str = "crmbridge-client";
const CLIENT_SECRET: &str = "client-secret-9f27c1";

async fn harness(dynamo: bool, config: OAuthConfig) -> Harness {
    let (logs, guard) = crmbridge_fakes::logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let table = format!("oauth-{}", common::unique());
    let store = common::store(dynamo, dir.path(), &table).await;
    let keyring = Keyring::generate_spec("test");
    let engine = engine_on(Arc::clone(&store), &keyring, dir.path(), "bus.db");
    let boot = engine.bootstrap("Acme").await.unwrap().unwrap();
    let who = engine
        .authenticate(Some(&format!("Bearer {}", boot.owner_key)))
        .await
        .unwrap();
    let oauth = FakeOAuth::start(config).await.unwrap();
    Harness {
        engine,
        store,
        keyring,
        oauth,
        who,
        dynamo,
        table,
        logs,
        _log_guard: guard,
        dir,
    }
}

/// An engine (a worker process) on the given store.
fn engine_on(
    store: Arc<dyn Store>,
    keyring: &str,
    dir: &std::path::Path,
    bus: &str,
) -> Arc<Engine> {
    let bus = Arc::new(OutboxBus::open(&dir.join(bus), OutboxConfig::default()).unwrap());
    Arc::new(Engine::new(
        store,
        bus,
        registry(),
        Keyring::parse(keyring).unwrap(),
        EngineConfig {
            allow_any_base_url: true,
            ..EngineConfig::default()
        },
    ))
}

/// A generic order event, as the webhook would have made it.
fn order_event(who: &Principal, source: &str, id: &str) -> Event {
    Event {
        id: EventId::from_source(source, id),
        tenant: who.tenant.clone(),
        connection: source.into(),
        app: "generic".into(),
        kind: "generic.order.created".into(),
        subject: Subject {
            kind: "record".into(),
            id: id.into(),
        },
        occurred_at: chrono::Utc::now(),
        received_at: chrono::Utc::now(),
        data: json!({"id": id, "name": format!("order {id}")}),
    }
}

fn fake_config() -> OAuthConfig {
    OAuthConfig::new(CLIENT_ID, CLIENT_SECRET)
}

impl Harness {
    /// A connection; `refresh_token` pasted (the headless path) or not.
    async fn connect(&self, refresh_token: Option<&str>) -> String {
        let mut credentials = std::collections::BTreeMap::from([
            ("client_id".to_owned(), CLIENT_ID.to_owned()),
            ("client_secret".to_owned(), CLIENT_SECRET.to_owned()),
        ]);
        if let Some(token) = refresh_token {
            credentials.insert("refresh_token".into(), token.into());
        }
        self.engine
            .create_connection(
                &self.who,
                NewConnection {
                    app: "oauthdemo".into(),
                    name: "Demo".into(),
                    settings: json!({"base_url": self.oauth.base_url()}),
                    credentials,
                },
            )
            .await
            .unwrap()
            .id
    }

    /// An automation: every generic order becomes a demo record.
    async fn orders_to_records(&self, demo: &str) -> String {
        let source = self
            .engine
            .create_connection(
                &self.who,
                NewConnection {
                    app: "generic".into(),
                    name: "orders".into(),
                    settings: json!({"event_id_pointer": "/id", "kind": "order.created"}),
                    credentials: Default::default(),
                },
            )
            .await
            .unwrap()
            .id;
        let automation = crmbridge_engine::Automation::from_json_str(
            &json!({
                "id": "orders-to-demo", "name": "Orders → demo",
                "trigger": {"connection": source, "event": "generic.order.created"},
                "steps": [{"id": "record", "action": "oauthdemo.record.create", "connection": demo,
                           "fields": {"name": "{{ event.name }}"}}]
            })
            .to_string(),
        )
        .unwrap();
        self.engine
            .save_automation(&self.who, automation)
            .await
            .unwrap();
        source
    }

    async fn order(&self, source: &str, id: &str) -> RunStatus {
        let event = order_event(&self.who, source, id);
        let dispatched = self.engine.dispatch(event).await.unwrap();
        assert_eq!(dispatched.runs.len(), 1, "{dispatched:?}");
        dispatched.runs[0].status
    }

    async fn health(&self, connection: &str) -> Option<String> {
        self.engine
            .get_connection(&self.who, connection)
            .await
            .unwrap()
            .health
    }

    /// Nothing secret in the logs or the store, in plaintext.
    async fn assert_no_secret_leaked(&self, answers: &[String]) {
        let mut secrets = self.oauth.refresh_tokens_issued();
        secrets.extend(self.oauth.access_tokens_issued());
        secrets.extend(self.oauth.codes_issued());
        secrets.push(CLIENT_SECRET.into());
        assert!(secrets.len() >= 3, "{secrets:?}");
        let logs = self.logs.text();
        assert!(logs.contains("access token refreshed") || logs.contains("connection authorized"));
        let stored = common::everything_stored(self.dynamo, self.dir.path(), &self.table).await;
        assert!(
            stored.contains("OAUTH#"),
            "the token item was found in the store"
        );
        for secret in &secrets {
            assert!(!logs.contains(secret.as_str()), "a secret in the logs");
            assert!(
                !stored.contains(secret.as_str()),
                "a secret stored in plaintext"
            );
            for answer in answers {
                assert!(
                    !answer.contains(secret.as_str()),
                    "a secret in an answer: {answer}"
                );
            }
        }
    }
}

fn token_posts(oauth: &FakeOAuth) -> usize {
    oauth
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/token"))
        .count()
}

async fn consent_then_refresh_before_expiry(dynamo: bool) {
    // Tokens live 60 s, less than the 120 s margin: each use refreshes.
    let h = harness(dynamo, fake_config().with_access_token_lifetime(60)).await;
    let demo = h.connect(None).await;
    assert_eq!(
        h.health(&demo).await.as_deref(),
        Some("not authorized yet: start the authorization")
    );
    let start = h
        .engine
        .start_authorization(&h.who, &demo, "https://crmbridge.example/v1/oauth/callback")
        .await
        .unwrap();
    assert!(start.authorization_url.contains("code_challenge="), "PKCE");
    let back = h.oauth.approve(&start.authorization_url).await.unwrap();
    let back = url::Url::parse(&back).unwrap();
    let param = |name: &str| {
        back.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .unwrap()
    };
    let (state, code) = (param("state"), param("code"));

    // A wrong state, an empty one: 400 naming the state, nothing saved.
    for wrong in [format!("{state}x"), String::new(), "a".repeat(500)] {
        let err = h
            .engine
            .complete_authorization(&wrong, &code)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, EngineError::BadRequest { field, .. } if field == "state"),
            "{err:?}"
        );
    }
    assert_eq!(h.oauth.token_calls(), 0);
    assert!(h.health(&demo).await.is_some(), "nothing was saved");

    let done = h
        .engine
        .complete_authorization(&state, &code)
        .await
        .unwrap();
    assert_eq!(done.connection, demo);
    assert_eq!(h.oauth.token_calls(), 1);
    assert_eq!(h.health(&demo).await, None);
    // Replayed: refused, and the server is not asked again.
    let err = h
        .engine
        .complete_authorization(&state, &code)
        .await
        .unwrap_err();
    assert!(matches!(&err, EngineError::BadRequest { field, .. } if field == "state"));
    assert_eq!(h.oauth.token_calls(), 1);

    // The code's tokens expire within the margin: the first use refreshes
    // first, without waiting for a 401, and so does the second.
    let check = h.engine.check_connection(&h.who, &demo).await.unwrap();
    assert!(check.ok, "{check:?}");
    assert_eq!(h.oauth.refresh_calls(), 1);
    let check = h.engine.check_connection(&h.who, &demo).await.unwrap();
    assert!(check.ok, "{check:?}");
    assert_eq!(h.oauth.refresh_calls(), 2);
    assert!(
        h.oauth.requests().iter().all(|r| r.status != Some(401)),
        "refreshed before expiry, not after a 401"
    );
    let answers = vec![
        serde_json::to_string(&start).unwrap(),
        serde_json::to_string(&done).unwrap(),
        serde_json::to_string(&check).unwrap(),
        serde_json::to_string(&h.engine.get_connection(&h.who, &demo).await.unwrap()).unwrap(),
    ];
    h.assert_no_secret_leaked(&answers).await;
}

async fn a_401_refreshes_once_and_sends_the_same_request_again(dynamo: bool) {
    let h = harness(dynamo, fake_config()).await;
    let pasted = h.oauth.issue_refresh_token();
    let demo = h.connect(Some(&pasted)).await;
    let source = h.orders_to_records(&demo).await;
    assert_eq!(h.order(&source, "1").await, RunStatus::Succeeded);
    assert_eq!(h.oauth.refresh_calls(), 1, "the pasted token was used");
    assert_eq!(h.order(&source, "2").await, RunStatus::Succeeded);
    assert_eq!(h.oauth.refresh_calls(), 1, "a valid token is reused");

    // The vendor drops the tokens early: the next request gets a 401.
    h.oauth.expire_access_tokens();
    h.oauth.clear_requests();
    assert_eq!(h.order(&source, "3").await, RunStatus::Succeeded);
    assert_eq!(h.oauth.refresh_calls(), 2);
    let seen: Vec<(String, Option<u16>)> = h
        .oauth
        .requests()
        .iter()
        .map(|r| (format!("{} {}", r.method, r.path), r.status))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("POST /api/records".to_owned(), Some(401)),
            ("POST /oauth/token".to_owned(), Some(200)),
            ("POST /api/records".to_owned(), Some(201)),
        ]
    );
    let names: Vec<Value> = h
        .oauth
        .records()
        .iter()
        .map(|r| r["name"].clone())
        .collect();
    assert_eq!(
        names,
        vec![json!("order 1"), json!("order 2"), json!("order 3")]
    );
    h.assert_no_secret_leaked(&[]).await;
}

async fn two_workers_refreshing_at_once_make_one_token_call(dynamo: bool) {
    let h = harness(dynamo, fake_config()).await;
    let pasted = h.oauth.issue_refresh_token();
    let demo = h.connect(Some(&pasted)).await;
    let source = h.orders_to_records(&demo).await;
    // The token answer is held long enough for every caller to need it:
    // two dispatches and three checks in this process, one check in
    // another process on the same store.
    h.oauth.set_token_delay(Duration::from_millis(400));
    let other = engine_on(Arc::clone(&h.store), &h.keyring, h.dir.path(), "bus2.db");
    let mut runs = Vec::new();
    for id in ["a", "b"] {
        let (engine, event) = (h.engine.clone(), order_event(&h.who, &source, id));
        runs.push(tokio::spawn(async move { engine.dispatch(event).await }));
    }
    let mut checks = Vec::new();
    for engine in [&h.engine, &h.engine, &h.engine, &other] {
        let (engine, who, demo) = (engine.clone(), h.who.clone(), demo.clone());
        checks.push(tokio::spawn(async move {
            engine.check_connection(&who, &demo).await
        }));
    }
    for run in runs {
        let dispatched = run.await.unwrap().unwrap();
        assert_eq!(dispatched.runs[0].status, RunStatus::Succeeded);
    }
    for check in checks {
        let check = check.await.unwrap().unwrap();
        assert!(check.ok, "{check:?}");
    }
    assert_eq!(h.oauth.refresh_calls(), 1, "one refresh for six callers");
    assert_eq!(token_posts(&h.oauth), 1);
    assert_eq!(h.oauth.records().len(), 2);
}

async fn a_refused_refresh_needs_reauthorization_and_stops_token_calls(dynamo: bool) {
    let h = harness(dynamo, fake_config()).await;
    let pasted = h.oauth.issue_refresh_token();
    let demo = h.connect(Some(&pasted)).await;
    let source = h.orders_to_records(&demo).await;
    assert_eq!(h.order(&source, "1").await, RunStatus::Succeeded);
    // The user revokes crmbridge's access at the vendor.
    h.oauth.revoke_all();
    h.oauth.expire_access_tokens();
    let calls = h.oauth.token_calls();
    assert_eq!(h.order(&source, "2").await, RunStatus::Failed);
    assert_eq!(h.oauth.token_calls(), calls + 1, "one refresh was tried");
    let health = h.health(&demo).await.unwrap();
    assert!(health.starts_with("reauthorization needed"), "{health}");
    // Later runs and checks fail at once, without asking the server again.
    assert_eq!(h.order(&source, "3").await, RunStatus::Failed);
    let check = h.engine.check_connection(&h.who, &demo).await.unwrap();
    assert!(!check.ok && !check.transient, "{check:?}");
    assert!(check.error.unwrap().contains("reauthorization needed"));
    assert_eq!(h.oauth.token_calls(), calls + 1, "no retry storm");
    let failed: Vec<String> = h
        .engine
        .list_runs(&h.who, Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|r| r.status == RunStatus::Failed)
        .map(|r| r.outcome)
        .collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(
        failed.iter().all(|o| o.contains("reauthorization needed")),
        "{failed:?}"
    );
    assert_eq!(h.oauth.records().len(), 1);

    // A new refresh token pasted: working again.
    let fresh = h.oauth.issue_refresh_token();
    let patch: crmbridge_control::admin::ConnectionPatch =
        serde_json::from_value(json!({"credentials": {"refresh_token": fresh}})).unwrap();
    let view = h
        .engine
        .update_connection(&h.who, &demo, patch)
        .await
        .unwrap();
    assert_eq!(view.health, None);
    assert_eq!(h.order(&source, "4").await, RunStatus::Succeeded);
    let answers = vec![serde_json::to_string(&view).unwrap()];
    h.assert_no_secret_leaked(&answers).await;
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(false).await;
                }
            )*
        }
        mod dynamodb {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(true).await;
                }
            )*
        }
    };
}

on_both_stores!(
    consent_then_refresh_before_expiry,
    a_401_refreshes_once_and_sends_the_same_request_again,
    two_workers_refreshing_at_once_make_one_token_call,
    a_refused_refresh_needs_reauthorization_and_stops_token_calls,
);

#[test]
fn the_demo_vendor_is_not_shipped() {
    assert!(Registry::builtin().get("oauthdemo").is_none());
}
