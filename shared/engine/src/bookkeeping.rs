//! What the pipeline keeps about automations and runs: the stored
//! automation and its poll source, the automations an event triggers, the
//! failure streak that halts an automation and its health, and the run
//! indexes written with every run. The admin API (the control crate) writes
//! automations; this side only reads them and records what runs did.

use chrono::{DateTime, Utc};
use crmbridge_store::{Item, StoreError, Write};

pub use crmbridge_state::records::{AutomationRecord, AutomationRef, PollSource, scope_tag};

use crate::records::{AlertCause, RunRecord, RunSummary};
use crate::{Engine, EngineError, EngineResult, decode, item, keys};

/// At most `max` characters of `text` (a reason kept in a record).
fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// The run's index entry, under its tenant. It is written once, just
/// before the run is created, and never rewritten: it holds only what does
/// not change (id, automation, event, creation time), and a listing reads
/// each run for its status. So every later save of a run is one conditional
/// write of the run item, never a transaction.
///
/// There is no second entry under the automation: a listing, replay or dry
/// run of one automation reads the tenant's entries and passes over other
/// automations' without reading their runs. A query is billed by the bytes
/// it reads, so that costs far less than a second write for every run.
pub fn index_item(run: &RunRecord, expires: i64) -> EngineResult<Item> {
    let created_at = sort_time(run.created_at);
    Ok(item(
        keys::tenant_run_index(&run.tenant, &created_at, &run.id),
        &RunSummary::from(run),
    )?
    .expiring_at(expires))
}

/// Whether a run index entry is one of `automation`'s runs. An entry that
/// does not decode belongs to no automation.
pub fn indexes_run_of(entry: &Item, automation: &str) -> bool {
    decode::<RunSummary>(entry)
        .is_ok_and(|summary| summary.automation.as_deref() == Some(automation))
}

/// The sort-key form of a time: fixed width, so it sorts as it compares.
pub fn sort_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

impl Engine {
    pub fn app_of<'a>(&self, id: &'a str) -> &'a str {
        id.split('.').next().unwrap_or_default()
    }

    /// The poll source an automation's trigger reads from.
    pub fn poll_source_of(&self, record: &AutomationRecord) -> PollSource {
        let trigger = &record.automation.trigger;
        let scope = self
            .connectors
            .get(self.app_of(&trigger.event))
            .and_then(|vendor| vendor.poller.as_ref())
            .map_or(serde_json::Value::Null, |poller| {
                poller.poll_scope(&trigger.event, &trigger.options)
            });
        PollSource {
            tenant: record.tenant.clone(),
            connection: trigger.connection.clone(),
            kind: trigger.event.clone(),
            scope,
        }
    }

    /// The enabled automations an event triggers.
    pub(crate) async fn automations_for(
        &self,
        tenant: &str,
        connection: &str,
        kind: &str,
    ) -> EngineResult<Vec<AutomationRecord>> {
        let (view, cached) = self.cached_automations(tenant, connection, kind);
        if let Some(found) = cached {
            return Ok(found);
        }
        let found = self.read_automations_for(connection, kind).await?;
        if let Some(view) = view {
            self.keep_automations(&view, connection, kind, &found);
        }
        Ok(found)
    }

    async fn read_automations_for(
        &self,
        connection: &str,
        kind: &str,
    ) -> EngineResult<Vec<AutomationRecord>> {
        let (pk, prefix) = keys::triggers(connection, kind);
        let mut found = Vec::new();
        for entry in self.query_all(&pk, prefix).await? {
            let reference: AutomationRef = decode(&entry)?;
            if let Some((record, _)) = self
                .read::<AutomationRecord>(&keys::automation(
                    &reference.tenant,
                    &reference.automation,
                ))
                .await?
                && record.automation.enabled
            {
                found.push(record);
            }
        }
        Ok(found)
    }

    /// Counts a run that failed for good; at the threshold the automation
    /// is halted, its health saying why.
    pub(crate) async fn note_failure(
        &self,
        record: &AutomationRecord,
        outcome: &str,
    ) -> EngineResult<()> {
        // Opened before the streak grows: a success that sees the streak
        // (and clears it) then finds the alert to resolve.
        self.raise_alert(
            &record.tenant,
            AlertCause::RunsFailing,
            &record.automation.id,
            outcome,
        )
        .await;
        let threshold = record
            .automation
            .halt_after
            .unwrap_or(self.config.halt_after_failures);
        let updated = self
            .update_automation(&record.tenant, &record.automation.id, |current| {
                if current.halted.is_some() {
                    return false;
                }
                current.failure_streak += 1;
                if threshold > 0 && current.failure_streak >= threshold {
                    let reason = format!(
                        "{} runs in a row failed; the last: {}",
                        current.failure_streak,
                        truncate_chars(outcome, 300)
                    );
                    current.health = Some(format!("halted: {reason}"));
                    current.halted = Some(reason);
                }
                true
            })
            .await?;
        if let Some(reason) = updated.and_then(|r| r.halted) {
            tracing::warn!(tenant = %record.tenant, automation = %record.automation.id, reason = %reason, "automation halted");
            self.raise_alert(
                &record.tenant,
                AlertCause::AutomationHalted,
                &record.automation.id,
                &reason,
            )
            .await;
        }
        Ok(())
    }

    /// A run succeeded: whatever was wrong is fixed.
    pub(crate) async fn clear_failures(&self, tenant: &str, id: &str) -> EngineResult<()> {
        let cleared = self
            .update_automation(tenant, id, |record| {
                if record.halted.is_some()
                    || (record.health.is_none() && record.failure_streak == 0)
                {
                    return false;
                }
                record.health = None;
                record.failure_streak = 0;
                true
            })
            .await?;
        if cleared.is_some() {
            self.resolve_alert(tenant, AlertCause::RunsFailing, id)
                .await;
        }
        Ok(())
    }

    /// Marks an automation's health (e.g. "project archived"); `None` = ok.
    pub(crate) async fn set_health(
        &self,
        tenant: &str,
        id: &str,
        health: Option<String>,
    ) -> EngineResult<()> {
        self.update_automation(tenant, id, |record| {
            if record.health == health {
                return false;
            }
            record.health = health.clone();
            true
        })
        .await
        .map(|_| ())
    }

    /// Read, change, conditional write, again on a conflict: the record's
    /// bookkeeping (health, failure streak) changes under concurrent runs
    /// and admin saves. `change` says whether it changed anything; the
    /// record as written is returned (`None` if nothing was written).
    pub(crate) async fn update_automation(
        &self,
        tenant: &str,
        id: &str,
        change: impl Fn(&mut AutomationRecord) -> bool,
    ) -> EngineResult<Option<AutomationRecord>> {
        let key = keys::automation(tenant, id);
        for _ in 0..10 {
            let Some((mut record, version)) = self.read::<AutomationRecord>(&key).await? else {
                return Ok(None);
            };
            if !change(&mut record) {
                return Ok(None);
            }
            // Dispatch reads the record from the configuration cache: the
            // tenant's stamp changes with it.
            let writes = vec![
                Write::UpdateIfVersion {
                    item: item(key.clone(), &record)?,
                    expected: version,
                },
                self.stamp_write(tenant)?,
            ];
            match self.store.transact(writes).await {
                Ok(()) => return Ok(Some(record)),
                Err(StoreError::TransactionConflict { index: 0, .. }) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(EngineError::InProgress(format!(
            "automation {id} kept changing while its bookkeeping was updated"
        )))
    }
}

/// Runs one listing reads at once.
const LISTING_READS_IN_FLIGHT: usize = 16;

impl Engine {
    /// The runs behind a page of run index entries, as they stand now: the
    /// entries keep only what a run was created with, so each run is read
    /// for its status. An entry is `None`, in its place, when its run is not
    /// there (expired, or its creator died between the entry and the run)
    /// or was created at another time than the entry says (an event whose
    /// acceptance was taken over and published again, with a new arrival).
    pub async fn runs_of_entries(&self, entries: &[Item]) -> EngineResult<Vec<Option<RunSummary>>> {
        // A bounded number at a time: one listing must not become hundreds
        // of reads in flight at once.
        let mut runs = Vec::with_capacity(entries.len());
        for chunk in entries.chunks(LISTING_READS_IN_FLIGHT) {
            let reads = chunk.iter().map(|entry| self.current_run(entry));
            for read in futures_util::future::join_all(reads).await {
                runs.push(read?);
            }
        }
        Ok(runs)
    }

    /// The run behind one index entry, if it is the run the entry names.
    async fn current_run(&self, entry: &Item) -> EngineResult<Option<RunSummary>> {
        let indexed: RunSummary = decode(entry)?;
        let Some((run, _)) = self.read::<RunRecord>(&keys::run(&indexed.id)).await? else {
            return Ok(None);
        };
        let created_at = sort_time(run.created_at);
        let same_run = entry
            .sk
            .strip_prefix(created_at.as_str())
            .is_some_and(|rest| rest.starts_with('#'));
        Ok(same_run.then(|| RunSummary::from(&run)))
    }
}
