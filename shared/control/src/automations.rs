//! Automations as stored: validated against the connectors' catalogs before
//! they are saved, and indexed by what triggers them, so dispatch finds the
//! automations of an event with one query and tick finds what to poll.

use crmbridge_mapping::{Automation, Catalog, EventKindSpec, ValidationErrorKind};
use crmbridge_store::Write;

use crate::admin::{Admin as _, AdminInternal as _, Principal};
use crmbridge_engine::bookkeeping::{AutomationRecord, AutomationRef};
use crmbridge_engine::records::{AlertCause, ConnectionRecord, Role};
use crmbridge_engine::{Engine, EngineError, EngineResult, FieldError, decode, item, keys};

/// The connectors' catalogs, plus the open-ended `generic.*` kinds.
struct EngineCatalog<'a> {
    engine: &'a Engine,
    generic: EventKindSpec,
}

impl Catalog for EngineCatalog<'_> {
    fn event_kind(&self, kind: &str) -> Option<&EventKindSpec> {
        if kind.starts_with("generic.") {
            return Some(&self.generic);
        }
        self.engine.connectors().catalog().event_kind(kind)
    }

    fn action(&self, id: &str) -> Option<&crmbridge_mapping::ActionSpec> {
        self.engine.connectors().catalog().action(id)
    }
}

/// What the admin API does here (implemented by [`Engine`]; import
/// `crmbridge_control::prelude::*`).
pub trait Automations {
    /// Validates an automation for a tenant: the document against the
    /// catalogs, and every connection it names against the tenant's own.
    async fn validate_automation(
        &self,
        who: &Principal,
        automation: &Automation,
    ) -> EngineResult<()>;

    /// Saves (creates or replaces) an automation and its indexes.
    async fn save_automation(
        &self,
        who: &Principal,
        automation: Automation,
    ) -> EngineResult<AutomationRecord>;

    async fn get_automation(&self, who: &Principal, id: &str) -> EngineResult<AutomationRecord>;

    async fn list_automations(&self, who: &Principal) -> EngineResult<Vec<AutomationRecord>>;

    async fn set_automation_enabled(
        &self,
        who: &Principal,
        id: &str,
        enabled: bool,
    ) -> EngineResult<AutomationRecord>;

    async fn delete_automation(&self, who: &Principal, id: &str) -> EngineResult<()>;

    /// Creates the automations of a recipe, roles filled with connection
    /// ids. All are validated before any is saved: nothing half-done.
    async fn instantiate_recipe(
        &self,
        who: &Principal,
        name: &str,
        roles: &std::collections::BTreeMap<String, String>,
        parameters: &std::collections::BTreeMap<String, serde_json::Value>,
    ) -> EngineResult<Vec<AutomationRecord>>;

    /// Deletes a connection. Its automations go with it, but only when the
    /// caller confirms: otherwise 409 lists what would be deleted.
    async fn delete_connection(
        &self,
        who: &Principal,
        id: &str,
        confirm: bool,
    ) -> EngineResult<Vec<String>>;
}

impl Automations for Engine {
    async fn validate_automation(
        &self,
        who: &Principal,
        automation: &Automation,
    ) -> EngineResult<()> {
        let catalog = EngineCatalog {
            engine: self,
            generic: EventKindSpec::new(automation.trigger.event.clone(), vec![]),
        };
        let generic_trigger = automation.trigger.event.starts_with("generic.");
        let plain_id = is_plain_id(&automation.id);
        let mut errors: Vec<FieldError> = match crmbridge_mapping::validate(automation, &catalog) {
            Ok(()) => vec![],
            Err(found) => found
                .iter()
                // Generic events declare no fields: references to them are
                // checked when the event arrives.
                .filter(|e| !(generic_trigger && e.kind == ValidationErrorKind::UnknownEventField))
                .map(|e| FieldError {
                    field: e.path.clone(),
                    message: e.message.clone(),
                })
                .collect(),
        };
        if !plain_id && !errors.iter().any(|e| e.field == "id") {
            errors.push(FieldError {
                field: "id".into(),
                message: PLAIN_ID_RULE.into(),
            });
        }
        let mut check_connection =
            |path: String, id: &str, app: &str, record: Option<ConnectionRecord>| match record {
                Some(record) if record.tenant == who.tenant => {
                    if record.app != app {
                        errors.push(FieldError {
                            field: path,
                            message: format!(
                                "connection {id} is a {} connection, not {app}",
                                record.app
                            ),
                        });
                    }
                }
                _ => errors.push(FieldError {
                    field: path,
                    message: format!("no connection {id} in this tenant"),
                }),
            };
        let trigger_app = self.app_of(&automation.trigger.event).to_owned();
        let record = self
            .read::<ConnectionRecord>(&keys::connection(&automation.trigger.connection))
            .await?
            .map(|(r, _)| r);
        check_connection(
            "trigger.connection".into(),
            &automation.trigger.connection,
            &trigger_app,
            record,
        );
        for (i, step) in automation.steps.iter().enumerate() {
            let app = self.app_of(&step.action).to_owned();
            let record = self
                .read::<ConnectionRecord>(&keys::connection(&step.connection))
                .await?
                .map(|(r, _)| r);
            check_connection(
                format!("steps[{i}].connection"),
                &step.connection,
                &app,
                record,
            );
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(EngineError::Invalid(errors))
        }
    }

    async fn save_automation(
        &self,
        who: &Principal,
        automation: Automation,
    ) -> EngineResult<AutomationRecord> {
        self.save_checked(who, automation, false).await
    }

    async fn get_automation(&self, who: &Principal, id: &str) -> EngineResult<AutomationRecord> {
        match self
            .read::<AutomationRecord>(&keys::automation(&who.tenant, id))
            .await?
        {
            Some((record, _)) if record.tenant == who.tenant => Ok(record),
            _ => Err(EngineError::NotFound {
                what: "automation",
                id: id.to_owned(),
            }),
        }
    }

    async fn list_automations(&self, who: &Principal) -> EngineResult<Vec<AutomationRecord>> {
        let (pk, prefix) = keys::tenant_automations(&who.tenant);
        let mut records = Vec::new();
        for entry in self.query_all(&pk, prefix).await? {
            let reference: AutomationRef = decode(&entry)?;
            if let Ok(record) = self.get_automation(who, &reference.automation).await {
                records.push(record);
            }
        }
        Ok(records)
    }

    async fn set_automation_enabled(
        &self,
        who: &Principal,
        id: &str,
        enabled: bool,
    ) -> EngineResult<AutomationRecord> {
        let mut record = self.get_automation(who, id).await?;
        record.automation.enabled = enabled;
        self.save_automation(who, record.automation).await
    }

    async fn delete_automation(&self, who: &Principal, id: &str) -> EngineResult<()> {
        who.require_role(Role::Admin, "delete automations")?;
        let record = self.get_automation(who, id).await?;
        let mut writes = self.index_writes(&record, false)?;
        let key = keys::automation(&who.tenant, id);
        writes.push(Write::Delete {
            pk: key.pk,
            sk: key.sk,
        });
        let index = keys::tenant_automation_index(&who.tenant, id);
        writes.push(Write::Delete {
            pk: index.pk,
            sk: index.sk,
        });
        writes.push(self.stamp_write(&who.tenant)?);
        self.store().transact(writes).await?;
        // Gone: nothing is failing any more (an automation made again under
        // this id gets alerts of its own).
        for cause in [AlertCause::RunsFailing, AlertCause::AutomationHalted] {
            self.resolve_alert(&who.tenant, cause, id).await;
        }
        Ok(())
    }

    async fn instantiate_recipe(
        &self,
        who: &Principal,
        name: &str,
        roles: &std::collections::BTreeMap<String, String>,
        parameters: &std::collections::BTreeMap<String, serde_json::Value>,
    ) -> EngineResult<Vec<AutomationRecord>> {
        who.require_role(Role::Admin, "change automations")?;
        let automations = crate::recipes::recipe(name)?.instantiate(roles, parameters)?;
        let mut errors = Vec::new();
        for (i, automation) in automations.iter().enumerate() {
            let checked = match self.validate_automation(who, automation).await {
                Ok(()) if automation.enabled => self.check_against_accounts(who, automation).await,
                other => other,
            };
            match checked {
                Ok(()) => {}
                Err(EngineError::Invalid(found)) => {
                    errors.extend(found.into_iter().map(|e| FieldError {
                        field: format!("automations[{i}].{}", e.field),
                        message: e.message,
                    }));
                }
                Err(other) => return Err(other),
            }
        }
        if !errors.is_empty() {
            return Err(EngineError::Invalid(errors));
        }
        let mut saved = Vec::new();
        for automation in automations {
            saved.push(self.save_checked(who, automation, true).await?);
        }
        Ok(saved)
    }

    async fn delete_connection(
        &self,
        who: &Principal,
        id: &str,
        confirm: bool,
    ) -> EngineResult<Vec<String>> {
        who.require_role(Role::Admin, "delete connections")?;
        self.get_connection(who, id).await?;
        let affected: Vec<String> = self
            .list_automations(who)
            .await?
            .into_iter()
            .filter(|r| {
                r.automation.trigger.connection == id
                    || r.automation.steps.iter().any(|s| s.connection == id)
            })
            .map(|r| r.automation.id)
            .collect();
        if !affected.is_empty() && !confirm {
            return Err(EngineError::NeedsConfirmation {
                message: format!(
                    "deleting connection {id} also deletes {} automation(s) that use it; repeat with confirm=true",
                    affected.len()
                ),
                affected,
            });
        }
        for automation in &affected {
            self.delete_automation(who, automation).await?;
        }
        let record = keys::connection(id);
        let index = keys::tenant_connection_index(&who.tenant, id);
        self.store()
            .transact(vec![
                Write::Delete {
                    pk: record.pk,
                    sk: record.sk,
                },
                Write::Delete {
                    pk: index.pk,
                    sk: index.sk,
                },
                self.stamp_write(&who.tenant)?,
            ])
            .await?;
        for cause in [
            AlertCause::CredentialsRefused,
            AlertCause::ReauthorizationNeeded,
        ] {
            self.resolve_alert(&who.tenant, cause, id).await;
        }
        tracing::info!(tenant = %who.tenant, connection = %id, automations = affected.len(), "connection deleted");
        Ok(affected)
    }
}

/// Helpers of [`Automations`] shared inside this crate.
pub(crate) trait AutomationsInternal {
    /// `accounts_checked`: the caller already checked the automation
    /// against the live accounts.
    async fn save_checked(
        &self,
        who: &Principal,
        automation: Automation,
        accounts_checked: bool,
    ) -> EngineResult<AutomationRecord>;

    /// Trigger and poll index writes for a record (`add`) or their removal.
    fn index_writes(&self, record: &AutomationRecord, add: bool) -> EngineResult<Vec<Write>>;
}

impl AutomationsInternal for Engine {
    async fn save_checked(
        &self,
        who: &Principal,
        automation: Automation,
        accounts_checked: bool,
    ) -> EngineResult<AutomationRecord> {
        who.require_role(Role::Admin, "change automations")?;
        self.validate_automation(who, &automation).await?;
        let key = keys::automation(&who.tenant, &automation.id);
        let existing = self.read::<AutomationRecord>(&key).await?;
        // A changed or newly enabled automation is checked against the live
        // accounts; disabling one never needs the vendor.
        let changed = existing
            .as_ref()
            .is_none_or(|(old, _)| old.automation != automation);
        if automation.enabled && changed && !accounts_checked {
            self.check_against_accounts(who, &automation).await?;
        }
        let now = self.now();
        // Saving (and enabling) is how a person resumes a halted
        // automation: the streak starts again.
        let record = AutomationRecord {
            tenant: who.tenant.clone(),
            health: None,
            failure_streak: 0,
            halted: None,
            created_at: existing.as_ref().map_or(now, |(r, _)| r.created_at),
            updated_at: now,
            automation,
        };
        let mut writes = Vec::new();
        if let Some((old, _)) = &existing {
            writes.extend(self.index_writes(old, false)?);
        }
        writes.extend(self.index_writes(&record, true)?);
        writes.push(Write::Put(item(key, &record)?));
        writes.push(Write::Put(item(
            keys::tenant_automation_index(&who.tenant, &record.automation.id),
            &AutomationRef {
                tenant: who.tenant.clone(),
                automation: record.automation.id.clone(),
            },
        )?));
        writes.push(self.stamp_write(&who.tenant)?);
        dedupe_writes(&mut writes);
        self.store().transact(writes).await?;
        if let Some((old, _)) = &existing
            && (old.halted.is_some() || old.failure_streak > 0)
        {
            // A person acted on it: what the alerts said is answered.
            for cause in [AlertCause::AutomationHalted, AlertCause::RunsFailing] {
                self.resolve_alert(&who.tenant, cause, &record.automation.id)
                    .await;
            }
        }
        tracing::info!(tenant = %who.tenant, automation = %record.automation.id, "automation saved");
        Ok(record)
    }

    fn index_writes(&self, record: &AutomationRecord, add: bool) -> EngineResult<Vec<Write>> {
        let automation = &record.automation;
        let trigger = keys::trigger(
            &automation.trigger.connection,
            &automation.trigger.event,
            &automation.id,
        );
        let source = self.poll_source_of(record);
        let poll = keys::poll_source(&source.connection, &source.kind, &source.scope_tag());
        let mut writes = Vec::new();
        if add && automation.enabled {
            writes.push(Write::Put(item(
                trigger,
                &AutomationRef {
                    tenant: record.tenant.clone(),
                    automation: automation.id.clone(),
                },
            )?));
            let polled = self
                .connectors()
                .get(self.app_of(&automation.trigger.event))
                .is_some_and(|c| c.polls(&automation.trigger.event));
            if polled {
                writes.push(Write::Put(item(poll, &source)?));
            }
        } else if !add {
            writes.push(Write::Delete {
                pk: trigger.pk,
                sk: trigger.sk,
            });
            // The poll source may serve other automations too; dispatch
            // drops a poll whose kind no longer has any automation.
        }
        Ok(writes)
    }
}

/// A transaction may not touch one item twice: keep the last write.
fn dedupe_writes(writes: &mut Vec<Write>) {
    let key = |w: &Write| match w {
        Write::Put(i) | Write::PutIfAbsent(i) | Write::UpdateIfVersion { item: i, .. } => {
            (i.pk.clone(), i.sk.clone())
        }
        Write::Delete { pk, sk } => (pk.clone(), sk.clone()),
    };
    let mut seen = std::collections::HashSet::new();
    let mut kept: Vec<Write> = Vec::new();
    for write in writes.drain(..).rev() {
        if seen.insert(key(&write)) {
            kept.push(write);
        }
    }
    kept.reverse();
    *writes = kept;
}

/// What an automation id may be, everywhere (saving one, filtering runs by
/// one): ids go into store keys and URLs, so they stay plain ASCII.
pub(crate) fn is_plain_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

pub(crate) const PLAIN_ID_RULE: &str = "must be 1 to 200 letters, digits, '-', '_' or '.'";
