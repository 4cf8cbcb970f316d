//! Dispatch: what happens to an event once it is on the bus.
//!
//! Delivery is at least once (EventBridge retries, the outbox re-delivers
//! after a crash), so a run's id is derived from the event id and the run is
//! created with a conditional write: a second delivery finds the run and
//! does nothing. Until automations are stored, every event ends in one run
//! whose outcome says that no automation matched.

use crmbridge_mapping::{Event, EventId};
use crmbridge_store::{StoreError, Write};
use sha2::{Digest, Sha256};

use crate::records::{RunRecord, RunStatus, RunSummary};
use crate::{Engine, EngineError, EngineResult, item, keys};

/// The run id of an (event, automation) pair: stable across redeliveries.
pub fn run_id(event: &EventId, automation: Option<&str>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(event.as_str().as_bytes());
    hasher.update([0]);
    hasher.update(automation.unwrap_or("").as_bytes());
    format!("run_{}", hex::encode(&hasher.finalize()[..16]))
}

/// Whether a dispatch created the run or found it already there.
#[derive(Debug, Clone, PartialEq)]
pub struct Dispatched {
    pub runs: Vec<RunSummary>,
    /// True when every run already existed (a redelivery).
    pub duplicate: bool,
}

impl Engine {
    pub async fn dispatch(&self, event: Event) -> EngineResult<Dispatched> {
        let event = self.resolve_data(event).await?;
        let span = tracing::info_span!(
            "dispatch",
            tenant = %event.tenant,
            connection = %event.connection,
            event_id = %event.id,
            kind = %event.kind
        );
        let _entered = span.enter();
        let now = self.now();
        let run = RunRecord {
            id: run_id(&event.id, None),
            tenant: event.tenant.clone(),
            connection: event.connection.clone(),
            automation: None,
            event_id: event.id.to_string(),
            event_kind: event.kind.clone(),
            status: RunStatus::NoMatch,
            outcome: format!(
                "no automation matched {} on connection {}",
                event.kind, event.connection
            ),
            event,
            steps: Vec::new(),
            attempts: 1,
            created_at: now,
            updated_at: now,
        };
        let created = self.create_run(&run).await?;
        tracing::info!(run = %run.id, status = ?run.status, created, "dispatched");
        Ok(Dispatched {
            runs: vec![RunSummary::from(&run)],
            duplicate: !created,
        })
    }

    /// Writes a run and its index entry together; `false` if it existed.
    pub(crate) async fn create_run(&self, run: &RunRecord) -> EngineResult<bool> {
        let expires = run.created_at.timestamp() + self.config.run_ttl_secs;
        let created_at = run
            .created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let writes = vec![
            Write::PutIfAbsent(item(keys::run(&run.id), run)?.expiring_at(expires)),
            Write::Put(
                item(
                    keys::tenant_run_index(&run.tenant, &created_at, &run.id),
                    &RunSummary::from(run),
                )?
                .expiring_at(expires),
            ),
        ];
        match self.store.transact(writes).await {
            Ok(()) => Ok(true),
            Err(StoreError::TransactionConflict { index: 0, .. }) => Ok(false),
            Err(err) => Err(EngineError::from(err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_stable_and_distinct() {
        let event = EventId::from_source("c", "1");
        assert_eq!(run_id(&event, None), run_id(&event, None));
        assert_ne!(run_id(&event, None), run_id(&event, Some("a")));
        assert_ne!(run_id(&event, Some("a")), run_id(&event, Some("b")));
    }
}
