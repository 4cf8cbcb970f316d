//! Tenants and API keys.
//!
//! A key is random (256 bits), shown once when it is created and stored only
//! as its SHA-256 hash; it belongs to one tenant and has one role: `owner`
//! (everything, including keys and tenants), `admin` (connections and
//! automations, replays) or `viewer` (reads runs). Only owners manage keys,
//! and a tenant always keeps at least one owner key.
//!
//! **Tenant creation** is an operator's act: only an owner key of the
//! deployment's first tenant (the one `crmbridge serve` or `crmbridge admin
//! bootstrap` created) may create tenants. The new tenant starts empty and
//! the answer carries its first owner key, once; the creator's own key
//! gains no access to it. Owners of other tenants get 403, so a customer's
//! key cannot multiply tenants.

use chrono::{DateTime, Utc};
use crmbridge_store::{StoreError, Write};
use serde::{Deserialize, Serialize};

use crate::admin::{Principal, new_api_key};
use crmbridge_engine::records::{KeyIndexEntry, Role, TenantRecord};
use crmbridge_engine::{
    Engine, EngineError, EngineResult, FieldError, decode, item, keys, random_id, sha256_hex,
};

/// `POST /v1/keys`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub role: Role,
}

/// A key as it is created: the only time `key` is ever shown.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    pub id: String,
    pub tenant: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    /// The secret to send as `Authorization: Bearer <key>`; not retrievable later.
    pub key: String,
}

/// A key as listings show it: never the secret.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    pub id: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    /// True for the key this request was made with.
    pub current: bool,
}

/// `POST /v1/tenants`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    pub name: String,
}

/// A new tenant and its first owner key (shown once).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CreatedTenant {
    pub tenant: TenantRecord,
    pub owner_key: CreatedKey,
}

/// `GET /v1/tenant`: the caller's tenant and how the caller is known.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TenantView {
    pub id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub role: Role,
    pub key_id: String,
}

/// What the admin API does here (implemented by [`Engine`]; import
/// `crmbridge_control::prelude::*`).
pub trait Tenants {
    async fn create_key(&self, who: &Principal, new: NewKey) -> EngineResult<CreatedKey>;

    async fn list_keys(&self, who: &Principal) -> EngineResult<Vec<KeyView>>;

    /// Revokes a key at once. The last owner key of a tenant cannot go.
    ///
    /// "Another owner key remains" is part of the same transaction as the
    /// deletion: it rewrites one other owner key's index entry on its
    /// version (a condition that fails if that key is revoked meanwhile).
    /// Two owners revoking each other at once: one transaction commits, the
    /// other's condition fails, and it is answered 409 after a fresh look.
    async fn delete_key(&self, who: &Principal, id: &str) -> EngineResult<()>;

    async fn current_tenant(&self, who: &Principal) -> EngineResult<TenantView>;

    /// Creates a tenant and its first owner key (see the module docs for
    /// who may).
    async fn create_tenant(&self, who: &Principal, new: NewTenant) -> EngineResult<CreatedTenant>;
}

impl Tenants for Engine {
    async fn create_key(&self, who: &Principal, new: NewKey) -> EngineResult<CreatedKey> {
        who.require_role(Role::Owner, "manage API keys")?;
        let (created, writes) = self.key_writes(&who.tenant, new.role)?;
        self.store().transact(writes).await?;
        tracing::info!(tenant = %who.tenant, key_id = %created.id, role = ?created.role, "API key created");
        Ok(created)
    }

    async fn list_keys(&self, who: &Principal) -> EngineResult<Vec<KeyView>> {
        who.require_role(Role::Owner, "manage API keys")?;
        Ok(self
            .key_entries(&who.tenant)
            .await?
            .into_iter()
            .map(|entry| KeyView {
                current: entry.key.id == who.key_id,
                id: entry.key.id,
                role: entry.key.role,
                created_at: entry.key.created_at,
            })
            .collect())
    }

    async fn delete_key(&self, who: &Principal, id: &str) -> EngineResult<()> {
        who.require_role(Role::Owner, "manage API keys")?;
        for _ in 0..5 {
            let entries = self.key_items(&who.tenant).await?;
            let not_found = || EngineError::NotFound {
                what: "key",
                id: id.to_owned(),
            };
            let (entry, _) = entries
                .iter()
                .find(|(e, _)| e.key.id == id && e.key.tenant == who.tenant)
                .ok_or_else(not_found)?;
            let witness = entries
                .iter()
                .find(|(e, _)| e.key.role == Role::Owner && e.key.id != id);
            if entry.key.role == Role::Owner && witness.is_none() {
                return Err(last_owner());
            }
            let Some(hash) = &entry.secret_hash else {
                return Err(EngineError::conflict(
                    "id",
                    "this key was created before keys could be revoked",
                ));
            };
            let record = keys::api_key(hash);
            let index = keys::tenant_key_index(&who.tenant, id);
            let mut writes = vec![
                Write::Delete {
                    pk: record.pk,
                    sk: record.sk,
                },
                Write::Delete {
                    pk: index.pk,
                    sk: index.sk,
                },
            ];
            if entry.key.role == Role::Owner
                && let Some((other, version)) = witness
            {
                writes.push(Write::UpdateIfVersion {
                    item: item(keys::tenant_key_index(&who.tenant, &other.key.id), other)?,
                    expected: *version,
                });
            }
            match self.store().transact(writes).await {
                Ok(()) => {
                    tracing::info!(tenant = %who.tenant, key_id = %id, "API key revoked");
                    return Ok(());
                }
                // The witness changed (revoked, or another revocation
                // used it): look again.
                Err(StoreError::TransactionConflict { .. }) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(EngineError::InProgress(
            "the tenant's keys are changing concurrently; try again".into(),
        ))
    }

    async fn current_tenant(&self, who: &Principal) -> EngineResult<TenantView> {
        let (tenant, _) = self
            .read::<TenantRecord>(&keys::tenant(&who.tenant))
            .await?
            .ok_or_else(|| EngineError::NotFound {
                what: "tenant",
                id: who.tenant.clone(),
            })?;
        Ok(TenantView {
            id: tenant.id,
            name: tenant.name,
            created_at: tenant.created_at,
            role: who.role,
            key_id: who.key_id.clone(),
        })
    }

    async fn create_tenant(&self, who: &Principal, new: NewTenant) -> EngineResult<CreatedTenant> {
        who.require_role(Role::Owner, "create tenants")?;
        let operator = self
            .store()
            .get(&keys::bootstrap().pk, &keys::bootstrap().sk)
            .await?
            .and_then(|item| item.body["tenant"].as_str().map(str::to_owned));
        if operator.as_deref() != Some(who.tenant.as_str()) {
            return Err(EngineError::Forbidden(
                "create tenants (only owners of the deployment's first tenant may)".into(),
            ));
        }
        let name = new.name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(EngineError::Invalid(vec![FieldError {
                field: "name".into(),
                message: "must be 1 to 200 characters".into(),
            }]));
        }
        let tenant = TenantRecord {
            id: random_id("ten"),
            name: name.to_owned(),
            created_at: self.now(),
        };
        let (owner_key, key_writes) = self.key_writes(&tenant.id, Role::Owner)?;
        let mut writes = vec![Write::PutIfAbsent(item(keys::tenant(&tenant.id), &tenant)?)];
        writes.extend(key_writes);
        self.store().transact(writes).await?;
        tracing::info!(by = %who.tenant, tenant = %tenant.id, "tenant created");
        Ok(CreatedTenant { tenant, owner_key })
    }
}

/// Helpers of [`Tenants`] shared inside this crate.
pub(crate) trait TenantsInternal {
    /// Writes a new key for a tenant: the record by hash, the index by id.
    fn key_writes(&self, tenant: &str, role: Role) -> EngineResult<(CreatedKey, Vec<Write>)>;

    async fn key_entries(&self, tenant: &str) -> EngineResult<Vec<KeyIndexEntry>>;

    /// The tenant's key index entries with their versions.
    async fn key_items(&self, tenant: &str) -> EngineResult<Vec<(KeyIndexEntry, u64)>>;
}

impl TenantsInternal for Engine {
    fn key_writes(&self, tenant: &str, role: Role) -> EngineResult<(CreatedKey, Vec<Write>)> {
        let (secret, record) = new_api_key(tenant, role, self.now());
        let hash = sha256_hex(&secret);
        let writes = vec![
            Write::PutIfAbsent(item(keys::api_key(&hash), &record)?),
            Write::PutIfAbsent(item(
                keys::tenant_key_index(tenant, &record.id),
                &KeyIndexEntry {
                    key: record.clone(),
                    secret_hash: Some(hash),
                },
            )?),
        ];
        Ok((
            CreatedKey {
                id: record.id,
                tenant: record.tenant,
                role: record.role,
                created_at: record.created_at,
                key: secret,
            },
            writes,
        ))
    }

    async fn key_entries(&self, tenant: &str) -> EngineResult<Vec<KeyIndexEntry>> {
        Ok(self
            .key_items(tenant)
            .await?
            .into_iter()
            .map(|(entry, _)| entry)
            .collect())
    }

    async fn key_items(&self, tenant: &str) -> EngineResult<Vec<(KeyIndexEntry, u64)>> {
        let (pk, prefix) = keys::tenant_keys(tenant);
        self.query_all(&pk, prefix)
            .await?
            .iter()
            .map(|item| Ok((decode::<KeyIndexEntry>(item)?, item.version)))
            .collect()
    }
}

fn last_owner() -> EngineError {
    EngineError::conflict(
        "id",
        "this is the tenant's last owner key; create another owner key first",
    )
}
