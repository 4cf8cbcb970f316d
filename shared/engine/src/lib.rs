//! The use cases of crmbridge: ingest a webhook, dispatch an event, tick the
//! pollers, administer tenants and connections.
//!
//! The engine does all of its IO through the capability traits it is given
//! ([`Store`], [`Bus`]) and the connector [`Registry`]; it knows no
//! transport and no AWS. Lambda functions and `crmbridge serve` build one
//! [`Engine`] at start-up and call it per request, which is why the same
//! behaviour holds on both.

pub mod alerts;
pub mod bookkeeping;
mod config_cache;
pub mod credentials;
pub mod dispatch;
pub mod dry_run;
mod echoes;
pub mod import;
pub mod ingest;
pub mod links;
pub mod metrics;
pub mod oauth;
mod payload;
mod poll;
mod sequence;
pub mod tick;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use crmbridge_bus::Bus;
use crmbridge_connectors::{Registry, VendorClient};
use crmbridge_mapping::CompiledAutomation;
use crmbridge_store::{Item, Store};
use serde::de::DeserializeOwned;

pub use crmbridge_mapping::Automation;
// State lives in its own crate, under the paths it always had here.
pub use crmbridge_state::{
    EngineError, EngineResult, FieldError, Keyring, decode, error, item, keys, random_id,
    random_secret, records, sealed, sha256_hex,
};

/// Limits and retention; every field has a production default.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Largest webhook body accepted (413 above it).
    pub max_body_bytes: usize,
    /// How long an accepted event id is remembered for de-duplication.
    pub idempotency_ttl_secs: i64,
    /// How long runs (and stored event data) are kept for the log and replay.
    pub run_ttl_secs: i64,
    /// How long tick records are kept.
    pub tick_ttl_secs: i64,
    /// Lets connections point at any http(s) address (tests and fakes).
    /// Off in production: vendor base URLs must be on the vendor's domain.
    pub allow_any_base_url: bool,
    /// How long a worker's lease on a run lasts without being renewed (it
    /// is renewed at every save). On Lambda it must exceed the dispatch
    /// function's timeout: no holder can outlive that.
    pub run_lease_secs: i64,
    /// True when this process is the only one working on its store
    /// (`crmbridge serve` holds a lock on its data directory): leases and
    /// pending acceptances left by an earlier process are then known dead
    /// and taken over at once, not after they lapse.
    pub sole_worker: bool,
    /// Deliveries a run may take before it is given up as failed (a
    /// poison event that crashes or times out its worker every time).
    pub max_run_attempts: u32,
    /// Runs of an automation that fail for good in a row before it is
    /// halted (unless the automation sets its own `halt_after`).
    pub halt_after_failures: u32,
    /// Most events one webhook delivery may carry (413 above).
    pub max_events_per_delivery: usize,
    /// How long a duplicate delivery waits for the first copy's acceptance
    /// to finish before answering 503 (the sender retries).
    pub accept_wait_ms: u64,
    /// After this long a pending acceptance is presumed abandoned and a
    /// duplicate delivery publishes the event itself.
    pub accept_stale_secs: i64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            idempotency_ttl_secs: 7 * 24 * 3600,
            run_ttl_secs: 30 * 24 * 3600,
            tick_ttl_secs: 7 * 24 * 3600,
            allow_any_base_url: false,
            run_lease_secs: 90,
            sole_worker: false,
            max_run_attempts: 8,
            halt_after_failures: 5,
            max_events_per_delivery: 1000,
            accept_wait_ms: 2000,
            accept_stale_secs: 30,
        }
    }
}

/// Compiled automations by (tenant, automation, last change).
type CompiledCache = HashMap<(String, String, DateTime<Utc>), Arc<CompiledAutomation>>;

pub struct Engine {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    connectors: Registry,
    keyring: Arc<Keyring>,
    config: EngineConfig,
    http: VendorClient,
    compiled: Mutex<CompiledCache>,
    config_cache: config_cache::ConfigCache,
    /// Names this process in leases (`ins_…`).
    instance: String,
    metrics: Arc<dyn metrics::Metrics>,
    /// Alert deliveries in flight in this process (see [`alerts`]).
    alert_slots: tokio::sync::Semaphore,
    /// The HTTP stack to alert destinations: no redirects followed.
    alert_http: VendorClient,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("connectors", &self.connectors)
            .field("keyring", &self.keyring)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Engine {
    pub fn new(
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        connectors: Registry,
        keyring: Keyring,
        config: EngineConfig,
    ) -> Self {
        Self {
            store,
            bus,
            connectors,
            keyring: Arc::new(keyring),
            config,
            http: VendorClient::new(),
            compiled: Mutex::new(HashMap::new()),
            config_cache: Default::default(),
            instance: random_id("ins"),
            metrics: Arc::new(metrics::Unrecorded),
            alert_slots: tokio::sync::Semaphore::new(alerts::ALERT_SLOTS),
            alert_http: VendorClient::without_redirects(),
        }
    }

    /// The same engine, measuring into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<dyn metrics::Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Records one measurement (label values in [`metrics::Metric::labels`]
    /// order).
    pub(crate) fn measure(&self, metric: metrics::Metric, labels: &[&str], value: f64) {
        self.metrics.record(metrics::Sample {
            metric,
            labels,
            value,
        });
    }

    /// A lease owner name unique to one attempt of this process.
    pub(crate) fn lease_owner(&self) -> String {
        format!("{}:{}", self.instance, random_id("att"))
    }

    /// Whether a lease (or pending acceptance) named `owner` may still have
    /// a live holder: in a sole-worker deployment one left by an earlier
    /// process has none.
    pub(crate) fn holder_may_live(&self, owner: &str) -> bool {
        !self.config.sole_worker || owner.split(':').next() == Some(self.instance.as_str())
    }

    /// The store, for the admin side (the control crate).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The registered vendors.
    pub fn connectors(&self) -> &Registry {
        &self.connectors
    }

    /// The keyring that seals credentials.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The HTTP stack to vendors.
    pub fn http(&self) -> &VendorClient {
        &self.http
    }

    /// The event side of an app: what its triggers match and how its
    /// events are completed.
    pub(crate) fn event_source(
        &self,
        app: &str,
    ) -> Option<std::sync::Arc<dyn crmbridge_connectors::EventSource>> {
        self.connectors.get(app).and_then(|v| v.events.clone())
    }

    pub fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    pub async fn read<T: DeserializeOwned>(
        &self,
        key: &keys::Key,
    ) -> EngineResult<Option<(T, u64)>> {
        match self.store.get(&key.pk, &key.sk).await? {
            None => Ok(None),
            Some(item) => Ok(Some((decode(&item)?, item.version))),
        }
    }
}

impl Engine {
    /// Every item of a partition whose sort key starts with `prefix`, all
    /// pages. For the small indexes (a tenant's keys, connections,
    /// automations; an event kind's triggers), never for runs.
    pub async fn query_all(&self, pk: &str, prefix: &str) -> EngineResult<Vec<Item>> {
        let mut items = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .query(crmbridge_store::Query::prefix(pk.to_owned(), prefix).after(after))
                .await?;
            items.extend(page.items);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(items),
            }
        }
    }
}
