//! AWS cost per event: runs the engine in-process on counting wrappers of
//! the real store and bus, against the vendor fakes, and turns the counted
//! request units, bus entries and Lambda invocations into dollars.

use std::collections::BTreeMap;
use std::sync::Arc;

use crmbridge_bus::{OutboxBus, OutboxConfig};
use crmbridge_connectors::Registry;
use crmbridge_control::admin::NewConnection;
use crmbridge_control::prelude::*;
use crmbridge_engine::ingest::WebhookRequest;
use crmbridge_engine::{Automation, Engine, EngineConfig, Keyring};
use crmbridge_fakes::vendors::calltouch::FakeCalltouch;
use crmbridge_fakes::vendors::http::FakeReceiver;
use crmbridge_fakes::vendors::moysklad::FakeMoySklad;
use crmbridge_fakes::vendors::nethunt::FakeNetHunt;
use crmbridge_fakes::vendors::worksection::FakeWorksection;
use crmbridge_store::SqliteStore;
use serde::Serialize;
use serde_json::json;

use crate::counting::{Counters, CountingBus, CountingStore, Snapshot};

/// us-east-1 list prices (USD), as published on the AWS pricing pages; the
/// DynamoDB on-demand prices are those in force since 2024-11-01. Checked
/// against our notes on 2026-11-24, not fetched live (no network here).
pub const PRICE_DATE: &str = "2026-11-24 (DynamoDB on-demand prices of 2024-11-01)";
pub const WRITE_UNIT_PER_MILLION: f64 = 0.625;
pub const READ_UNIT_PER_MILLION: f64 = 0.125;
pub const EVENTBRIDGE_PER_MILLION: f64 = 1.00;
pub const LAMBDA_REQUEST_PER_MILLION: f64 = 0.20;
pub const LAMBDA_GB_SECOND: f64 = 0.000_016_666_7;
pub const HTTP_API_PER_MILLION: f64 = 1.00;

#[derive(Debug, Clone, Serialize)]
pub struct PathCost {
    pub path: String,
    pub events: u64,
    pub read_units_per_event: f64,
    pub write_units_per_event: f64,
    pub store_requests_per_event: f64,
    pub bus_entries_per_event: f64,
    pub lambda_invocations_per_event: f64,
    pub http_requests_per_event: f64,
    /// Assumed billed duration per event (ms) and memory (MB) of each invocation.
    pub lambda_gb_seconds_per_event: f64,
    pub usd_per_million_events: f64,
}

fn path_cost(
    path: &str,
    events: u64,
    used: Snapshot,
    invocations: f64,
    http: f64,
    gb_seconds: f64,
) -> PathCost {
    let n = events as f64;
    let reads = used.read_units as f64 / n;
    let writes = used.write_units as f64 / n;
    let bus = used.bus_entries as f64 / n;
    let usd = reads * READ_UNIT_PER_MILLION
        + writes * WRITE_UNIT_PER_MILLION
        + bus * EVENTBRIDGE_PER_MILLION
        + invocations * LAMBDA_REQUEST_PER_MILLION
        + http * HTTP_API_PER_MILLION
        + gb_seconds * LAMBDA_GB_SECOND * 1_000_000.0;
    PathCost {
        path: path.to_owned(),
        events,
        read_units_per_event: reads,
        write_units_per_event: writes,
        store_requests_per_event: used.requests as f64 / n,
        bus_entries_per_event: bus,
        lambda_invocations_per_event: invocations,
        http_requests_per_event: http,
        lambda_gb_seconds_per_event: gb_seconds,
        usd_per_million_events: usd,
    }
}

/// Billed GB-seconds for invocations of `ms` at `mb` (1 ms granularity).
fn gb_seconds(invocations: &[(f64, f64)]) -> f64 {
    invocations
        .iter()
        .map(|(ms, mb)| ms.ceil() / 1000.0 * mb / 1024.0)
        .sum()
}

/// Warm durations (ms) per function, measured by the cold-start run or
/// defaulted; used only for the duration share of the cost.
#[derive(Debug, Clone, Copy)]
pub struct Durations {
    pub webhook_ms: f64,
    pub dispatch_ms: f64,
    pub tick_ms: f64,
}

/// An engine on the counting store and bus, bootstrapped, with its owner.
struct Rig {
    engine: Engine,
    counters: Arc<Counters>,
    bus: Arc<CountingBus>,
    who: crmbridge_control::admin::Principal,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let db = dir.path().join("cost.db");
        let counters = Arc::new(Counters::default());
        let sqlite = SqliteStore::open(&db)?;
        let writer = sqlite.writer();
        let store = Arc::new(CountingStore {
            inner: Arc::new(sqlite),
            counters: Arc::clone(&counters),
        });
        let bus = Arc::new(CountingBus {
            inner: Arc::new(OutboxBus::open_on(
                writer,
                &db,
                OutboxConfig {
                    workers: 0,
                    ..OutboxConfig::default()
                },
            )?),
            counters: Arc::clone(&counters),
            published: Default::default(),
        });
        let engine = Engine::new(
            store,
            bus.clone(),
            Registry::builtin(),
            Keyring::parse(&Keyring::generate_spec("bench"))?,
            EngineConfig {
                allow_any_base_url: true,
                ..EngineConfig::default()
            },
        );
        let boot = engine
            .bootstrap("bench")
            .await?
            .ok_or_else(|| anyhow::anyhow!("already bootstrapped"))?;
        let who = engine
            .authenticate(Some(&format!("Bearer {}", boot.owner_key)))
            .await?;
        Ok(Self {
            engine,
            counters,
            bus,
            who,
            _dir: dir,
        })
    }

    /// Dispatches everything published so far, as the bus would.
    async fn dispatch_published(&self) -> anyhow::Result<()> {
        let published =
            std::mem::take(&mut *self.bus.published.lock().unwrap_or_else(|p| p.into_inner()));
        for event in published {
            self.engine.dispatch(event).await?;
        }
        Ok(())
    }

    /// What `ticks` ticks five minutes apart cost, after three that let the
    /// sources settle (first cursors, changes made before).
    async fn idle_ticks(&self, ticks: u64) -> anyhow::Result<Snapshot> {
        let start = chrono::Utc::now();
        for n in 0..3 {
            self.engine
                .tick(start + chrono::Duration::minutes(5 * n))
                .await?;
            self.dispatch_published().await?;
        }
        let before = self.counters.snapshot();
        let start = start + chrono::Duration::minutes(15);
        for n in 0..ticks as i64 {
            self.engine
                .tick(start + chrono::Duration::minutes(5 * n))
                .await?;
            self.dispatch_published().await?;
        }
        Ok(self.counters.snapshot() - before)
    }
}

/// A NetHunt folder polled for Status = Won (→ a Worksection task), ticked
/// with nothing changing at NetHunt.
async fn nethunt_idle_ticks(ticks: u64) -> anyhow::Result<Snapshot> {
    let rig = Rig::start().await?;
    let nethunt = FakeNetHunt::start("owner@acme.test", "nh-key").await?;
    let deals = nethunt.add_folder("Deals");
    for field in ["Name", "Status"] {
        nethunt.add_field(&deals, field)?;
    }
    let record = nethunt.insert_record(&deals, json!({"Name": "ACME", "Status": "New"}))?;
    let worksection = FakeWorksection::start("ws-key").await?;
    let project = worksection.add_project("Delivery");
    let nh = rig
        .engine
        .create_connection(
            &rig.who,
            NewConnection {
                app: "nethunt".into(),
                name: "nh".into(),
                settings: json!({"base_url": nethunt.base_url()}),
                credentials: [
                    ("email".to_owned(), "owner@acme.test".to_owned()),
                    ("api_key".to_owned(), "nh-key".to_owned()),
                ]
                .into(),
            },
        )
        .await?;
    let ws = rig
        .engine
        .create_connection(
            &rig.who,
            NewConnection {
                app: "worksection".into(),
                name: "ws".into(),
                settings: json!({"base_url": worksection.base_url(), "auth_scheme": "header"}),
                credentials: [("admin_key".to_owned(), "ws-key".to_owned())].into(),
            },
        )
        .await?;
    let won = json!({"id": "won-to-task", "name": "Won → task",
        "trigger": {"connection": nh.id, "event": "nethunt.record.field_changed",
                    "options": {"folder": "Deals", "field": "Status", "value": "Won"}},
        "steps": [{"id": "task", "action": "worksection.task.create", "connection": ws.id,
                   "fields": {"project": project, "title": "{{ event.name }}"}}]});
    rig.engine
        .save_automation(&rig.who, Automation::from_json_str(&won.to_string())?)
        .await?;
    // The record was edited before: the polls see it in their window.
    nethunt.set_field(&record, "Name", json!("ACME Ltd"))?;
    let used = rig.idle_ticks(ticks).await?;
    anyhow::ensure!(worksection.tasks().is_empty(), "nothing was won");
    Ok(used)
}

pub async fn run(events: u64, durations: Durations) -> anyhow::Result<Vec<PathCost>> {
    let calltouch = FakeCalltouch::start("ct", "1").await?;
    let moysklad = FakeMoySklad::start("ms").await?;
    let rig = Rig::start().await?;
    let (engine, counters, who) = (&rig.engine, &rig.counters, &rig.who);
    let ct = engine
        .create_connection(who, NewConnection {
            app: "calltouch".into(),
            name: "ct".into(),
            settings: json!({"site_id": "1", "base_url": calltouch.base_url(), "default_region": "RU"}),
            credentials: [("access_token".to_owned(), "ct".to_owned())].into(),
        })
        .await?;
    let ms = engine
        .create_connection(
            who,
            NewConnection {
                app: "moysklad".into(),
                name: "ms".into(),
                settings: json!({"base_url": moysklad.base_url(), "default_region": "RU"}),
                credentials: [("token".to_owned(), "ms".to_owned())].into(),
            },
        )
        .await?;
    let roles = BTreeMap::from([
        ("calltouch".to_owned(), ct.id.clone()),
        ("moysklad".to_owned(), ms.id.clone()),
    ]);
    engine
        .instantiate_recipe(who, "calltouch-moysklad", &roles, &Default::default())
        .await?;
    let token = ct
        .webhook_path
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let ms_token = ms
        .webhook_path
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();

    // 0. The peers' workload: webhook JSON → six fields → one POST.
    let receiver = FakeReceiver::start().await?;
    let shop = engine
        .create_connection(
            who,
            NewConnection {
                app: "generic".into(),
                name: "shop".into(),
                settings: json!({"event_id_pointer": "/id", "kind": "order.created"}),
                credentials: Default::default(),
            },
        )
        .await?;
    let out = engine
        .create_connection(
            who,
            NewConnection {
                app: "http".into(),
                name: "receiver".into(),
                settings: json!({"base_url": receiver.base_url(), "requests_per_second": 1000}),
                credentials: Default::default(),
            },
        )
        .await?;
    let peers = json!({"id": "peers", "name": "webhook → POST",
        "trigger": {"connection": shop.id, "event": "generic.order.created"},
        "steps": [{"id": "post", "action": "http.request.send", "connection": out.id,
            "fields": {"url": "/orders", "json": {
                "order": "{{ event.id }}", "name": "{{ event.customer.name }}",
                "email": "{{ event.customer.email | lower }}", "phone": "{{ event.customer.phone }}",
                "sum": "{{ event.sum }}", "currency": "RUB"}}}]});
    engine
        .save_automation(who, Automation::from_json_str(&peers.to_string())?)
        .await?;
    let shop_token = shop
        .webhook_path
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let order = |n: u64| {
        json!({"id": format!("O-{n}"), "sum": 100 + n, "customer": {
            "name": format!("Buyer {n}"), "email": format!("Buyer{n}@Example.com"), "phone": "+79161234567"}})
        .to_string()
        .into_bytes()
    };
    let mut peers_path = Snapshot::default();
    for n in 0..=events {
        let body = order(n);
        let before = counters.snapshot();
        engine
            .ingest_webhook(WebhookRequest {
                content_type: Some("application/json"),
                ..hook(&shop.id, &shop_token, &body)
            })
            .await?;
        rig.dispatch_published().await?;
        // The first order warms the caches.
        if n > 0 {
            peers_path = peers_path + (counters.snapshot() - before);
        }
    }

    // Warm-up: the first call of a connection reads vendor metadata.
    let call = |n: u64| {
        form(&[
            ("callId", &(900_000 + n).to_string()),
            (
                "callerphone",
                &format!("7916{:07}", n % (events / 2).max(1)),
            ),
            ("utm_source", "yandex"),
        ])
    };
    let warm = call(events + 1);
    engine.ingest_webhook(hook(&ct.id, &token, &warm)).await?;
    rig.dispatch_published().await?;

    // 1. webhook → dispatch → Calltouch deal, MoySklad counterparty, order.
    let before = counters.snapshot();
    for n in 0..events {
        let body = call(n);
        engine.ingest_webhook(hook(&ct.id, &token, &body)).await?;
        rig.dispatch_published().await?;
    }
    let call_path = counters.snapshot() - before;

    // 2. back-sync: a MoySklad order webhook → dispatch → deal update.
    let orders: Vec<String> = moysklad
        .orders()
        .iter()
        .filter_map(|o| o["id"].as_str().map(str::to_owned))
        .collect();
    let before = counters.snapshot();
    for (i, order) in orders.iter().take(events as usize).enumerate() {
        moysklad.set_order_state(order, "Подтвержден")?;
        let payload = serde_json::to_vec(&moysklad.webhook_payload(order, "UPDATE"))?;
        let query = vec![("requestId".to_owned(), format!("bench-{i}"))];
        engine
            .ingest_webhook(WebhookRequest {
                connection: &ms.id,
                token: &ms_token,
                method: "POST",
                query,
                content_type: Some("application/json"),
                body: &payload,
                headers: Vec::new(),
                url: None,
            })
            .await?;
        rig.dispatch_published().await?;
    }
    let sync_events = orders.len().min(events as usize) as u64;
    let sync_path = counters.snapshot() - before;

    // 3. tick → poll request → poll (MoySklad order polling, nothing new):
    // the first ticks absorb the changes made above (webhook-delivered,
    // so the poll's copies are skipped), then steady-state ticks count.
    let ticks = 20u64;
    let tick_path = rig.idle_ticks(ticks).await?;
    // 4. The same for a NetHunt folder (observed records), on its own.
    let nethunt_path = nethunt_idle_ticks(ticks).await?;

    Ok(vec![
        path_cost(
            "webhook → six fields → one http.request.send",
            events,
            peers_path,
            2.0,
            1.0,
            gb_seconds(&[
                (durations.webhook_ms, 128.0),
                (durations.dispatch_ms, 256.0),
            ]),
        ),
        path_cost(
            "call webhook → deal + counterparty + order",
            events,
            call_path,
            2.0,
            1.0,
            gb_seconds(&[
                (durations.webhook_ms, 128.0),
                (durations.dispatch_ms, 256.0),
            ]),
        ),
        path_cost(
            "MoySklad order webhook → deal updated",
            sync_events.max(1),
            sync_path,
            2.0,
            1.0,
            gb_seconds(&[
                (durations.webhook_ms, 128.0),
                (durations.dispatch_ms, 256.0),
            ]),
        ),
        path_cost(
            "tick → poll one MoySklad source (no changes)",
            ticks,
            tick_path,
            2.0,
            0.0,
            gb_seconds(&[(durations.tick_ms, 128.0), (durations.dispatch_ms, 256.0)]),
        ),
        path_cost(
            "tick → poll one NetHunt folder (no changes)",
            ticks,
            nethunt_path,
            2.0,
            0.0,
            gb_seconds(&[(durations.tick_ms, 128.0), (durations.dispatch_ms, 256.0)]),
        ),
    ])
}

fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
        .into_bytes()
}

fn hook<'a>(connection: &'a str, token: &'a str, body: &'a [u8]) -> WebhookRequest<'a> {
    WebhookRequest {
        connection,
        token,
        method: "POST",
        query: vec![],
        content_type: Some("application/x-www-form-urlencoded"),
        body,
        headers: Vec::new(),
        url: None,
    }
}
