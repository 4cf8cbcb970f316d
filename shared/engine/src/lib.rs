//! The use cases of crmbridge: ingest a webhook, dispatch an event, tick the
//! pollers, administer tenants and connections.
//!
//! The engine does all of its IO through the capability traits it is given
//! ([`Store`], [`Bus`]) and the connector [`Registry`]; it knows no
//! transport and no AWS. Lambda functions and `crmbridge serve` build one
//! [`Engine`] at start-up and call it per request, which is why the same
//! behaviour holds on both.

pub mod admin;
pub mod automations;
pub mod dispatch;
pub mod error;
pub mod ingest;
pub mod keys;
pub mod links;
mod payload;
mod poll;
pub mod recipes;
pub mod records;
pub mod runs;
pub mod sealed;
pub mod tenants;
pub mod tick;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use crmbridge_bus::Bus;
use crmbridge_connectors::{Registry, VendorHttp};
use crmbridge_mapping::CompiledAutomation;
use crmbridge_store::{Item, Store};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crmbridge_mapping::Automation;
pub use error::{EngineError, EngineResult, FieldError};
pub use sealed::Keyring;

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
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            idempotency_ttl_secs: 7 * 24 * 3600,
            run_ttl_secs: 30 * 24 * 3600,
            tick_ttl_secs: 7 * 24 * 3600,
            allow_any_base_url: false,
        }
    }
}

/// Compiled automations by (tenant, automation, last change).
type CompiledCache = HashMap<(String, String, DateTime<Utc>), Arc<CompiledAutomation>>;

pub struct Engine {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    connectors: Registry,
    keyring: Keyring,
    config: EngineConfig,
    http: VendorHttp,
    compiled: Mutex<CompiledCache>,
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
            keyring,
            config,
            http: VendorHttp::new(),
            compiled: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub(crate) fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    pub(crate) async fn read<T: DeserializeOwned>(
        &self,
        key: &keys::Key,
    ) -> EngineResult<Option<(T, u64)>> {
        match self.store.get(&key.pk, &key.sk).await? {
            None => Ok(None),
            Some(item) => Ok(Some((decode(&item)?, item.version))),
        }
    }
}

pub(crate) fn decode<T: DeserializeOwned>(item: &Item) -> EngineResult<T> {
    serde_json::from_value(item.body.clone()).map_err(|err| EngineError::Corrupt {
        what: format!("{} / {}", item.pk, item.sk),
        message: err.to_string(),
    })
}

pub(crate) fn item<T: Serialize>(key: keys::Key, body: &T) -> EngineResult<Item> {
    let body = serde_json::to_value(body).map_err(|err| EngineError::Corrupt {
        what: format!("{} / {}", key.pk, key.sk),
        message: err.to_string(),
    })?;
    Ok(Item::new(key.pk, key.sk, body))
}

/// A random identifier with a readable prefix (`con_…`, `key_…`).
pub(crate) fn random_id(prefix: &str) -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 12];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}_{}", hex::encode(bytes))
}

/// A random secret, URL-safe, 256 bits.
pub(crate) fn random_secret() -> String {
    use base64::Engine as _;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(text.as_bytes()))
}
