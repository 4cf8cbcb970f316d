//! Connections and automations cached in process, valid while their
//! tenant's configuration stamp is unchanged.
//!
//! Every write of a connection, an automation or its trigger entry also
//! rewrites the tenant's stamp, in the same transaction ([`Engine::stamp_write`]).
//! A dispatch reads the stamp once — one small read instead of the trigger
//! index, each automation and each connection — and, for its duration,
//! uses what the cache holds under that stamp; whatever is missing it reads
//! from the store and keeps under the same stamp. An entry kept under a
//! stamp was read after that stamp was, so a dispatch sees configuration
//! at least as new as the moment it looked: a change is in effect for
//! every dispatch that starts after its transaction.
//!
//! The dispatch's view travels as a task-local, so the store-reading
//! functions (`automations_for`, `open_connection`) serve from the cache
//! only inside a dispatch and read the store everywhere else (admin,
//! dry runs, imports), unchanged. Opened connections hold decrypted
//! secrets: they stay in this process's memory, as they do during a run.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use crmbridge_store::Write;

use crate::bookkeeping::AutomationRecord;
use crate::dispatch::OpenConnection;
use crate::{Engine, EngineResult, item, keys, random_id};

/// Past this many tenants the cache starts again empty (bounded memory).
const MAX_TENANTS: usize = 10_000;

tokio::task_local! {
    static VIEW: ConfigView;
}

/// The stamp one dispatch saw for its tenant.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ConfigView {
    tenant: String,
    /// `None`: the tenant's configuration was never written with a stamp.
    stamp: Option<String>,
}

#[derive(Default)]
struct TenantConfig {
    stamp: Option<String>,
    /// (trigger connection, event kind) → the enabled automations.
    automations: HashMap<(String, String), Vec<AutomationRecord>>,
    connections: HashMap<String, Arc<OpenConnection>>,
}

#[derive(Default)]
pub(crate) struct ConfigCache {
    tenants: Mutex<HashMap<String, TenantConfig>>,
}

impl ConfigCache {
    /// The tenant's entries if they were kept under `view`'s stamp.
    fn with<T>(&self, view: &ConfigView, f: impl FnOnce(&TenantConfig) -> Option<T>) -> Option<T> {
        let tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        tenants
            .get(&view.tenant)
            .filter(|config| config.stamp == view.stamp)
            .and_then(f)
    }

    /// Keeps something read under `view`'s stamp; entries of another stamp
    /// are dropped first.
    fn keep(&self, view: &ConfigView, f: impl FnOnce(&mut TenantConfig)) {
        let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        if !tenants.contains_key(&view.tenant) && tenants.len() >= MAX_TENANTS {
            tenants.clear();
        }
        let config = tenants.entry(view.tenant.clone()).or_default();
        if config.stamp != view.stamp {
            *config = TenantConfig {
                stamp: view.stamp.clone(),
                ..TenantConfig::default()
            };
        }
        f(config);
    }
}

/// The view of the dispatch running on this task, if it is for `tenant`.
fn current_view(tenant: &str) -> Option<ConfigView> {
    VIEW.try_with(|view| view.clone())
        .ok()
        .filter(|view| view.tenant == tenant)
}

impl Engine {
    /// The write that marks `tenant`'s configuration changed: part of every
    /// transaction that writes a connection, an automation or a trigger.
    pub fn stamp_write(&self, tenant: &str) -> EngineResult<Write> {
        let stamp = serde_json::json!({"stamp": random_id("cfg")});
        Ok(Write::Put(item(keys::config_stamp(tenant), &stamp)?))
    }

    /// Runs `work` with `tenant`'s configuration served from the cache,
    /// as of the stamp read now.
    pub(crate) async fn with_config<F: Future>(
        &self,
        tenant: &str,
        work: F,
    ) -> EngineResult<F::Output> {
        let key = keys::config_stamp(tenant);
        let stamp = self
            .store
            .get(&key.pk, &key.sk)
            .await?
            .and_then(|found| found.body["stamp"].as_str().map(str::to_owned));
        let view = ConfigView {
            tenant: tenant.to_owned(),
            stamp,
        };
        Ok(VIEW.scope(view, work).await)
    }

    pub(crate) fn cached_automations(
        &self,
        tenant: &str,
        connection: &str,
        kind: &str,
    ) -> (Option<ConfigView>, Option<Vec<AutomationRecord>>) {
        let Some(view) = current_view(tenant) else {
            return (None, None);
        };
        let key = (connection.to_owned(), kind.to_owned());
        let found = self
            .config_cache
            .with(&view, |config| config.automations.get(&key).cloned());
        (Some(view), found)
    }

    pub(crate) fn keep_automations(
        &self,
        view: &ConfigView,
        connection: &str,
        kind: &str,
        records: &[AutomationRecord],
    ) {
        self.config_cache.keep(view, |config| {
            config
                .automations
                .insert((connection.to_owned(), kind.to_owned()), records.to_vec());
        });
    }

    pub(crate) fn cached_connection(
        &self,
        tenant: &str,
        id: &str,
    ) -> (Option<ConfigView>, Option<Arc<OpenConnection>>) {
        let Some(view) = current_view(tenant) else {
            return (None, None);
        };
        let found = self
            .config_cache
            .with(&view, |config| config.connections.get(id).cloned());
        (Some(view), found)
    }

    pub(crate) fn keep_connection(&self, view: &ConfigView, id: &str, open: &Arc<OpenConnection>) {
        self.config_cache.keep(view, |config| {
            config.connections.insert(id.to_owned(), Arc::clone(open));
        });
    }
}
