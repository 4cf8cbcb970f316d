//! Administration: the first tenant and its owner key, API-key
//! authentication, connections (credentials write-only) and the run log.
//!
//! Every read is scoped to the caller's tenant, and an object of another
//! tenant is reported as not found (404), never as forbidden: ids of other
//! tenants must not be discoverable.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use crmbridge_store::{StoreError, Write};
use serde::{Deserialize, Serialize};

use crmbridge_engine::ingest::secrets_aad;
use crmbridge_engine::records::{
    ApiKeyRecord, ConnectionRecord, ConnectionSecrets, KeyIndexEntry, Role, TenantRecord,
};
use crmbridge_engine::{
    Engine, EngineError, EngineResult, FieldError, item, keys, random_id, random_secret, sha256_hex,
};

/// Who is calling: resolved from an API key.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub tenant: String,
    pub role: Role,
    pub key_id: String,
}

impl Principal {
    pub fn require_role(&self, needed: Role, doing: &str) -> EngineResult<()> {
        let allowed = match needed {
            Role::Owner => self.role == Role::Owner,
            Role::Admin => matches!(self.role, Role::Owner | Role::Admin),
            Role::Viewer => true,
        };
        if allowed {
            Ok(())
        } else {
            Err(EngineError::Forbidden(doing.to_owned()))
        }
    }
}

/// The result of a first start: shown once, never stored in the clear.
#[derive(Debug, Clone)]
pub struct Bootstrapped {
    pub tenant: TenantRecord,
    pub owner_key: String,
}

/// A request to create a connection. Unknown fields are refused so a typo
/// never silently drops a setting.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewConnection {
    pub app: String,
    pub name: String,
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub settings: serde_json::Value,
    #[serde(default)]
    pub credentials: BTreeMap<String, String>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// A change to a connection (`PATCH /v1/connections/{id}`); what is absent
/// stays as it is.
///
/// - `name` replaces the name.
/// - `settings` is a JSON merge patch (RFC 7396) of the settings: a key
///   with a value sets it, a key with `null` removes it, absent keys stay.
///   The result is validated by the connector as a whole.
/// - `credentials` are merged by name: a string sets (or replaces) that
///   credential, `null` removes it, names not given stay set. With
///   `replace_credentials: true` the given set replaces all of them.
///
/// The secrets are sealed again (a fresh nonce); the webhook token is kept,
/// so the webhook URL does not change.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionPatch {
    pub name: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub settings: Option<serde_json::Value>,
    #[schema(value_type = Option<BTreeMap<String, Option<String>>>)]
    pub credentials: Option<BTreeMap<String, Option<String>>>,
    #[serde(default)]
    pub replace_credentials: bool,
}

/// A connection as the API shows it: settings, which credentials are set,
/// and the webhook path (with its secret token) — never credential values.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ConnectionView {
    pub id: String,
    pub app: String,
    pub name: String,
    #[schema(value_type = Object)]
    pub settings: serde_json::Value,
    pub credentials_set: Vec<String>,
    pub webhook_path: String,
    pub chat_path: String,
    pub created_at: DateTime<Utc>,
    /// What needs doing before the connection works (an OAuth connection
    /// not authorized yet, or whose grant was refused: "reauthorization
    /// needed"; an API key the vendor refused: "credentials refused");
    /// absent when it is fine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listing<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// What the admin API does here (implemented by [`Engine`]; import
/// `crmbridge_control::prelude::*`).
pub trait Admin {
    /// Creates the first tenant and its owner key, once per deployment.
    /// Returns `None` when the deployment was bootstrapped before.
    async fn bootstrap(&self, tenant_name: &str) -> EngineResult<Option<Bootstrapped>>;

    /// Resolves `Authorization: Bearer <key>`.
    async fn authenticate(&self, authorization: Option<&str>) -> EngineResult<Principal>;

    async fn create_connection(
        &self,
        who: &Principal,
        new: NewConnection,
    ) -> EngineResult<ConnectionView>;

    /// Changes a connection (see [`ConnectionPatch`]); nothing is written
    /// unless every part of the change is valid.
    async fn update_connection(
        &self,
        who: &Principal,
        id: &str,
        patch: ConnectionPatch,
    ) -> EngineResult<ConnectionView>;

    async fn get_connection(&self, who: &Principal, id: &str) -> EngineResult<ConnectionView>;

    async fn list_connections(&self, who: &Principal) -> EngineResult<Vec<ConnectionView>>;

    /// Tries the connection's credentials against the vendor (NetHunt's
    /// auth-test, Worksection's project list).
    async fn check_connection(&self, who: &Principal, id: &str) -> EngineResult<ConnectionCheck>;

    /// What the connection's account holds that automations name (NetHunt
    /// folders, fields and suggested values; Worksection projects), live.
    async fn connection_catalog(
        &self,
        who: &Principal,
        id: &str,
    ) -> EngineResult<serde_json::Value>;
}

impl Admin for Engine {
    async fn bootstrap(&self, tenant_name: &str) -> EngineResult<Option<Bootstrapped>> {
        let now = self.now();
        let tenant = TenantRecord {
            id: random_id("ten"),
            name: tenant_name.to_owned(),
            created_at: now,
        };
        let (owner_key, key_record) = new_api_key(&tenant.id, Role::Owner, now);
        let writes = vec![
            Write::PutIfAbsent(item(
                keys::bootstrap(),
                &serde_json::json!({"tenant": tenant.id, "at": now}),
            )?),
            Write::PutIfAbsent(item(keys::tenant(&tenant.id), &tenant)?),
            Write::PutIfAbsent(item(keys::api_key(&sha256_hex(&owner_key)), &key_record)?),
            Write::Put(item(
                keys::tenant_key_index(&tenant.id, &key_record.id),
                &KeyIndexEntry {
                    key: key_record.clone(),
                    secret_hash: Some(sha256_hex(&owner_key)),
                },
            )?),
        ];
        match self.store().transact(writes).await {
            Ok(()) => {
                tracing::info!(tenant = %tenant.id, key_id = %key_record.id, "bootstrapped the first tenant");
                Ok(Some(Bootstrapped { tenant, owner_key }))
            }
            Err(crmbridge_store::StoreError::TransactionConflict { index: 0, .. }) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    async fn authenticate(&self, authorization: Option<&str>) -> EngineResult<Principal> {
        let key = authorization
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|key| !key.is_empty())
            .ok_or_else(|| {
                EngineError::Unauthorized("send an API key as 'Authorization: Bearer <key>'".into())
            })?;
        // Keys are looked up by their hash: the store never holds a usable
        // key, and the lookup itself reveals nothing about near misses.
        let (record, _) = self
            .read::<ApiKeyRecord>(&keys::api_key(&sha256_hex(key)))
            .await?
            .ok_or_else(|| EngineError::Unauthorized("unknown API key".into()))?;
        Ok(Principal {
            tenant: record.tenant,
            role: record.role,
            key_id: record.id,
        })
    }

    async fn create_connection(
        &self,
        who: &Principal,
        new: NewConnection,
    ) -> EngineResult<ConnectionView> {
        who.require_role(Role::Admin, "create connections")?;
        let mut errors = Vec::new();
        let name = new.name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            errors.push(FieldError {
                field: "name".into(),
                message: "must be 1 to 200 characters".into(),
            });
        }
        match self.connectors().get(&new.app) {
            None => errors.push(FieldError {
                field: "app".into(),
                message: format!(
                    "unknown app '{}'; known: {}",
                    new.app,
                    self.connectors().apps().collect::<Vec<_>>().join(", ")
                ),
            }),
            Some(connector) => {
                if let Err(problems) = connector
                    .settings
                    .validate_settings(&new.settings, self.config().allow_any_base_url)
                {
                    errors.extend(problems.into_iter().map(|p| FieldError {
                        field: if p.field.is_empty() {
                            "settings".into()
                        } else {
                            format!("settings.{}", p.field)
                        },
                        message: p.message,
                    }));
                }
            }
        }
        for (name, value) in &new.credentials {
            if value.is_empty() {
                errors.push(FieldError {
                    field: format!("credentials.{name}"),
                    message: "must not be empty".into(),
                });
            }
        }
        if errors.is_empty() {
            errors.extend(credential_problems(
                self.connectors(),
                &new.app,
                &new.settings,
                &new.credentials,
            ));
        }
        if !errors.is_empty() {
            return Err(EngineError::Invalid(errors));
        }
        let id = random_id("con");
        let secrets = ConnectionSecrets {
            webhook_token: random_secret(),
            credentials: new.credentials,
        };
        let plain = serde_json::to_vec(&secrets).map_err(|err| EngineError::Corrupt {
            what: "new connection secrets".into(),
            message: err.to_string(),
        })?;
        let record = ConnectionRecord {
            id: id.clone(),
            tenant: who.tenant.clone(),
            app: new.app,
            name: name.to_owned(),
            settings: new.settings,
            credential_names: secrets.credentials.keys().cloned().collect(),
            secrets: self.keyring().seal(&plain, secrets_aad(&id).as_bytes()),
            created_at: self.now(),
        };
        let index = serde_json::json!({"id": id, "app": record.app, "name": record.name});
        self.store()
            .transact(vec![
                Write::PutIfAbsent(item(keys::connection(&id), &record)?),
                Write::Put(item(
                    keys::tenant_connection_index(&who.tenant, &id),
                    &index,
                )?),
                self.stamp_write(&who.tenant)?,
            ])
            .await?;
        tracing::info!(tenant = %who.tenant, connection = %id, app = %record.app, "connection created");
        Ok(view(&record, &secrets))
    }

    async fn update_connection(
        &self,
        who: &Principal,
        id: &str,
        patch: ConnectionPatch,
    ) -> EngineResult<ConnectionView> {
        who.require_role(Role::Admin, "change connections")?;
        let key = keys::connection(id);
        let (mut record, version) = match self.read::<ConnectionRecord>(&key).await? {
            Some((record, version)) if record.tenant == who.tenant => (record, version),
            _ => {
                return Err(EngineError::NotFound {
                    what: "connection",
                    id: id.to_owned(),
                });
            }
        };
        if patch.name.is_none()
            && patch.settings.is_none()
            && patch.credentials.is_none()
            && !patch.replace_credentials
        {
            return Err(EngineError::bad_request(
                "body",
                "nothing to change: give name, settings or credentials",
            ));
        }
        let mut secrets = self.open_secrets(&record)?;
        let mut errors = Vec::new();
        if let Some(name) = &patch.name {
            let name = name.trim();
            if name.is_empty() || name.chars().count() > 200 {
                errors.push(FieldError {
                    field: "name".into(),
                    message: "must be 1 to 200 characters".into(),
                });
            } else {
                record.name = name.to_owned();
            }
        }
        if let Some(settings) = &patch.settings {
            if settings.is_object() {
                merge_patch(&mut record.settings, settings);
                if let Some(connector) = self.connectors().get(&record.app)
                    && let Err(problems) = connector
                        .settings
                        .validate_settings(&record.settings, self.config().allow_any_base_url)
                {
                    errors.extend(problems.into_iter().map(|p| FieldError {
                        field: if p.field.is_empty() {
                            "settings".into()
                        } else {
                            format!("settings.{}", p.field)
                        },
                        message: p.message,
                    }));
                }
            } else {
                errors.push(FieldError {
                    field: "settings".into(),
                    message: "must be an object (a JSON merge patch of the settings)".into(),
                });
            }
        }
        let credentials_changed = patch.replace_credentials || patch.credentials.is_some();
        if patch.replace_credentials {
            secrets.credentials.clear();
        }
        for (name, value) in patch.credentials.unwrap_or_default() {
            match value {
                None => {
                    secrets.credentials.remove(&name);
                }
                Some(value) if value.is_empty() => errors.push(FieldError {
                    field: format!("credentials.{name}"),
                    message: "must not be empty (null removes a credential)".into(),
                }),
                Some(value) => {
                    secrets.credentials.insert(name, value);
                }
            }
        }
        if errors.is_empty() {
            errors.extend(credential_problems(
                self.connectors(),
                &record.app,
                &record.settings,
                &secrets.credentials,
            ));
        }
        if !errors.is_empty() {
            return Err(EngineError::Invalid(errors));
        }
        let plain = serde_json::to_vec(&secrets).map_err(|err| EngineError::Corrupt {
            what: "connection secrets".into(),
            message: err.to_string(),
        })?;
        record.credential_names = secrets.credentials.keys().cloned().collect();
        record.secrets = self.keyring().seal(&plain, secrets_aad(id).as_bytes());
        let index = serde_json::json!({"id": id, "app": record.app, "name": record.name});
        let result = self
            .store()
            .transact(vec![
                Write::UpdateIfVersion {
                    item: item(key, &record)?,
                    expected: version,
                },
                Write::Put(item(
                    keys::tenant_connection_index(&who.tenant, id),
                    &index,
                )?),
                self.stamp_write(&who.tenant)?,
            ])
            .await;
        match result {
            Ok(()) => {}
            Err(StoreError::TransactionConflict { index: 0, .. }) => {
                return Err(EngineError::conflict(
                    "connection",
                    "the connection was changed or deleted at the same time; read it and retry",
                ));
            }
            Err(err) => return Err(err.into()),
        }
        if credentials_changed {
            // Tokens granted to the old credentials (or refused) no longer
            // apply: a pasted refresh token starts afresh.
            self.forget_tokens(id).await?;
            self.clear_credentials_refused(&who.tenant, id).await?;
        }
        tracing::info!(tenant = %who.tenant, connection = %id, "connection updated");
        let mut view = view(&record, &secrets);
        view.health = self.connection_health(&record).await?;
        Ok(view)
    }

    async fn get_connection(&self, who: &Principal, id: &str) -> EngineResult<ConnectionView> {
        who.require_role(Role::Admin, "read connections")?;
        let record = self.own_connection(who, id).await?;
        let secrets = self.open_secrets(&record)?;
        let mut view = view(&record, &secrets);
        view.health = self.connection_health(&record).await?;
        Ok(view)
    }

    async fn list_connections(&self, who: &Principal) -> EngineResult<Vec<ConnectionView>> {
        who.require_role(Role::Admin, "list connections")?;
        let (pk, prefix) = keys::tenant_connections(&who.tenant);
        let mut views = Vec::new();
        for entry in self.query_all(&pk, prefix).await? {
            let id = entry.sk.trim_start_matches(prefix);
            views.push(self.get_connection(who, id).await?);
        }
        Ok(views)
    }

    async fn check_connection(&self, who: &Principal, id: &str) -> EngineResult<ConnectionCheck> {
        who.require_role(Role::Admin, "check connections")?;
        self.own_connection(who, id).await?;
        let (open, vendor) = self.open_with_vendor(&who.tenant, id).await?;
        let Some(account) = &vendor.account else {
            return Err(EngineError::bad_request(
                "id",
                format!("{} connections cannot be checked", vendor.app),
            ));
        };
        let key = format!("check/{id}");
        let ctx = self.call_context(&open, &key);
        Ok(match account.check(&ctx).await {
            Ok(account) => {
                self.clear_credentials_refused(&who.tenant, id).await?;
                ConnectionCheck {
                    ok: true,
                    account: Some(account),
                    error: None,
                    transient: false,
                }
            }
            Err(err) => {
                self.note_refusal(&who.tenant, id, &err).await?;
                ConnectionCheck {
                    ok: false,
                    account: None,
                    transient: err.is_transient(),
                    error: Some(err.to_string()),
                }
            }
        })
    }

    async fn connection_catalog(
        &self,
        who: &Principal,
        id: &str,
    ) -> EngineResult<serde_json::Value> {
        who.require_role(Role::Admin, "read connections")?;
        self.own_connection(who, id).await?;
        let (open, vendor) = self.open_with_vendor(&who.tenant, id).await?;
        let Some(catalog) = &vendor.live_catalog else {
            return Err(EngineError::bad_request(
                "id",
                format!(
                    "{} has no account catalog: its catalog is static",
                    vendor.app
                ),
            ));
        };
        let key = format!("catalog/{id}");
        let ctx = self.call_context(&open, &key);
        catalog
            .account_catalog(&ctx)
            .await
            .map_err(|err| EngineError::Action {
                what: format!("reading the account of connection {id}"),
                transient: err.is_transient(),
                message: err.to_string(),
            })
    }
}

/// What an app's connector says about the credentials its settings call
/// for (a signing secret a setting requires), as `credentials.<name>` errors.
fn credential_problems(
    connectors: &crmbridge_connectors::Registry,
    app: &str,
    settings: &serde_json::Value,
    credentials: &std::collections::BTreeMap<String, String>,
) -> Vec<FieldError> {
    let Some(connector) = connectors.get(app) else {
        return Vec::new();
    };
    match connector
        .settings
        .validate_credentials(settings, credentials)
    {
        Ok(()) => Vec::new(),
        Err(problems) => problems
            .into_iter()
            .map(|p| FieldError {
                field: format!("credentials.{}", p.field),
                message: p.message,
            })
            .collect(),
    }
}

/// Helpers of [`Admin`] shared inside this crate.
pub(crate) trait AdminInternal {
    async fn own_connection(&self, who: &Principal, id: &str) -> EngineResult<ConnectionRecord>;

    /// A connection opened for a vendor call, with its vendor.
    async fn open_with_vendor(
        &self,
        tenant: &str,
        id: &str,
    ) -> EngineResult<(
        std::sync::Arc<crmbridge_engine::dispatch::OpenConnection>,
        crmbridge_connectors::Vendor,
    )>;

    /// Checks what an automation names in its connections' accounts (a
    /// NetHunt folder and field, a Worksection project) against the live
    /// accounts. A vendor that cannot be asked is an error too: saving an
    /// automation that may be wrong would only fail later, at 3 a.m.
    async fn check_against_accounts(
        &self,
        who: &Principal,
        automation: &crmbridge_engine::Automation,
    ) -> EngineResult<()>;
}

impl AdminInternal for Engine {
    async fn own_connection(&self, who: &Principal, id: &str) -> EngineResult<ConnectionRecord> {
        match self.read::<ConnectionRecord>(&keys::connection(id)).await? {
            Some((record, _)) if record.tenant == who.tenant => Ok(record),
            _ => Err(EngineError::NotFound {
                what: "connection",
                id: id.to_owned(),
            }),
        }
    }

    async fn open_with_vendor(
        &self,
        tenant: &str,
        id: &str,
    ) -> EngineResult<(
        std::sync::Arc<crmbridge_engine::dispatch::OpenConnection>,
        crmbridge_connectors::Vendor,
    )> {
        let open = self.open_connection(tenant, id).await?;
        let vendor = self
            .connectors()
            .get(&open.record.app)
            .cloned()
            .ok_or_else(|| EngineError::Corrupt {
                what: format!("connection {id}"),
                message: format!("no connector for app {}", open.record.app),
            })?;
        Ok((open, vendor))
    }

    async fn check_against_accounts(
        &self,
        who: &Principal,
        automation: &crmbridge_engine::Automation,
    ) -> EngineResult<()> {
        let mut ids: Vec<&str> = vec![automation.trigger.connection.as_str()];
        ids.extend(automation.steps.iter().map(|s| s.connection.as_str()));
        ids.sort_unstable();
        ids.dedup();
        let mut errors = Vec::new();
        for id in ids {
            let (open, vendor) = self.open_with_vendor(&who.tenant, id).await?;
            // A vendor without an account to ask has a static catalog,
            // already checked.
            let Some(account) = &vendor.account else {
                continue;
            };
            let key = format!("validate/{id}");
            let ctx = self.call_context(&open, &key);
            match account.check_automation(&ctx, automation, id).await {
                Ok(problems) => errors.extend(
                    problems
                        .into_iter()
                        .map(|(field, message)| FieldError { field, message }),
                ),
                Err(err) => {
                    return Err(EngineError::Action {
                        what: format!("checking the automation against connection {id}'s account"),
                        transient: err.is_transient(),
                        message: err.to_string(),
                    });
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(EngineError::Invalid(errors))
        }
    }
}

pub(crate) fn new_api_key(tenant: &str, role: Role, now: DateTime<Utc>) -> (String, ApiKeyRecord) {
    let record = ApiKeyRecord {
        id: random_id("key"),
        tenant: tenant.to_owned(),
        role,
        created_at: now,
    };
    (format!("cbk_{}", random_secret()), record)
}

fn view(record: &ConnectionRecord, secrets: &ConnectionSecrets) -> ConnectionView {
    ConnectionView {
        id: record.id.clone(),
        app: record.app.clone(),
        name: record.name.clone(),
        settings: record.settings.clone(),
        credentials_set: record.credential_names.clone(),
        webhook_path: format!("/hooks/{}/{}", record.id, secrets.webhook_token),
        chat_path: format!("/chat/{}/{}", record.id, secrets.webhook_token),
        created_at: record.created_at,
        health: None,
    }
}

/// RFC 7396 JSON merge patch: objects merge key by key, `null` removes a
/// key, anything else replaces.
fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    let serde_json::Value::Object(changes) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = serde_json::Value::Object(Default::default());
    }
    if let serde_json::Value::Object(map) = target {
        for (key, value) in changes {
            if value.is_null() {
                map.remove(key);
            } else {
                merge_patch(
                    map.entry(key.clone()).or_insert(serde_json::Value::Null),
                    value,
                );
            }
        }
    }
}

/// The answer of a connection check: whether the vendor accepted the
/// credentials, and what it said about the account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConnectionCheck {
    pub ok: bool,
    /// The vendor's description of the account (folders, projects…).
    #[schema(value_type = Object)]
    pub account: Option<serde_json::Value>,
    /// Why the check failed (never contains the credentials).
    pub error: Option<String>,
    /// The vendor was unreachable rather than refusing: try again later.
    pub transient: bool,
}
