//! Testing an automation before it writes into a live CRM: the admin side
//! of the dry run (`crmbridge_engine::dry_run`). The event comes from a
//! sample (its data, or a whole webhook delivery decoded as the trigger's
//! connection decodes it) or is the last real event the automation ran
//! for; the automation is a saved one or a document not saved yet.

use std::collections::BTreeMap;

use crmbridge_engine::bookkeeping::{AutomationRecord, indexes_run_of};
use crmbridge_engine::dry_run::{DryRun, DryRunOptions, SampleDelivery};
use crmbridge_engine::records::{Role, RunRecord};
use crmbridge_engine::{Engine, EngineError, EngineResult, keys, random_id};
use crmbridge_mapping::{Automation, Event, EventId, Subject};
use crmbridge_store::{Item, Query};
use serde_json::Value;

use crate::admin::Principal;
use crate::automations::Automations as _;

/// Pages of the tenant's run index (200 entries each) a dry run searches
/// for the automation's newest real event.
const LAST_REAL_PAGES: usize = 10;

/// The event a dry run plans for.
#[derive(Debug, Clone)]
pub enum DrySample {
    /// Event data as templates see it (`event.*`), with an optional
    /// subject (`kind`, `id`) for links.
    Data {
        data: Value,
        subject: Option<Subject>,
    },
    /// A webhook delivery to the trigger's connection.
    Delivery(SampleDelivery),
    /// The event of the automation's newest run.
    LastReal,
}

pub trait DryRuns {
    /// Plans a saved automation's run.
    async fn test_automation(
        &self,
        who: &Principal,
        id: &str,
        sample: DrySample,
        options: DryRunOptions,
    ) -> EngineResult<DryRun>;

    /// Plans the run of an automation document that is not saved (it is
    /// validated as saving would).
    async fn test_automation_document(
        &self,
        who: &Principal,
        automation: Automation,
        sample: DrySample,
        options: DryRunOptions,
    ) -> EngineResult<DryRun>;
}

fn missing_trigger(connection: &str) -> EngineError {
    EngineError::bad_request(
        "trigger.connection",
        format!("connection {connection} does not exist"),
    )
}

/// The event a dry run plans for, from its sample.
async fn sample_event(
    engine: &Engine,
    who: &Principal,
    automation: &Automation,
    sample: DrySample,
) -> EngineResult<Event> {
    let trigger = &automation.trigger;
    match sample {
        DrySample::Data { data, subject } => {
            if !data.is_object() {
                return Err(EngineError::bad_request(
                    "event.data",
                    "an object: the event's fields as templates see them",
                ));
            }
            let connection = engine
                .open_connection(&who.tenant, &trigger.connection)
                .await
                .map_err(|_| missing_trigger(&trigger.connection))?;
            let now = engine.now();
            let id = EventId::from_source(&trigger.connection, &random_id("dry"));
            let subject = subject.unwrap_or_else(|| Subject {
                kind: trigger
                    .event
                    .split('.')
                    .nth(1)
                    .unwrap_or("record")
                    .to_owned(),
                id: "sample".into(),
            });
            Ok(Event {
                id,
                tenant: who.tenant.clone(),
                connection: trigger.connection.clone(),
                app: connection.record.app.clone(),
                kind: trigger.event.clone(),
                subject,
                occurred_at: now,
                received_at: now,
                data,
            })
        }
        DrySample::Delivery(delivery) => {
            engine
                .open_connection(&who.tenant, &trigger.connection)
                .await
                .map_err(|_| missing_trigger(&trigger.connection))?;
            let events = engine
                .sample_events(&who.tenant, &trigger.connection, &delivery)
                .await
                .map_err(|err| match err {
                    EngineError::BadRequest { field, message } => {
                        EngineError::bad_request(format!("delivery.{field}"), message)
                    }
                    EngineError::Unauthorized(message) => {
                        EngineError::bad_request("delivery", message)
                    }
                    other => other,
                })?;
            let kinds: Vec<String> = events.iter().map(|e| e.kind.clone()).collect();
            events
                .into_iter()
                .find(|e| e.kind == trigger.event)
                .ok_or_else(|| {
                    EngineError::bad_request(
                        "delivery",
                        format!(
                            "holds no {} event (it holds: {})",
                            trigger.event,
                            if kinds.is_empty() {
                                "none".to_owned()
                            } else {
                                kinds.join(", ")
                            }
                        ),
                    )
                })
        }
        DrySample::LastReal => {
            // The newest entry of this automation whose run exists (an
            // entry can be written just before its worker died, with no run
            // behind it), among the tenant's newest runs.
            let mut newest = None;
            let mut start = None;
            for _ in 0..LAST_REAL_PAGES {
                let page = engine
                    .store()
                    .query(
                        Query::prefix(keys::tenant_runs_pk(&who.tenant), "")
                            .limit(200)
                            .after(start)
                            .descending(),
                    )
                    .await?;
                let own: Vec<Item> = page
                    .items
                    .into_iter()
                    .filter(|entry| indexes_run_of(entry, &automation.id))
                    .take(10)
                    .collect();
                newest = engine
                    .runs_of_entries(&own)
                    .await?
                    .into_iter()
                    .flatten()
                    .next();
                if newest.is_some() {
                    break;
                }
                match page.next {
                    Some(next) => start = Some(next),
                    None => break,
                }
            }
            let Some(summary) = newest else {
                return Err(EngineError::bad_request(
                    "event",
                    format!(
                        "automation {} has no run for a real event among the tenant's newest {} runs: give a sample event or delivery",
                        automation.id,
                        LAST_REAL_PAGES * 200
                    ),
                ));
            };
            let Some((run, _)) = engine.read::<RunRecord>(&keys::run(&summary.id)).await? else {
                return Err(EngineError::bad_request(
                    "event",
                    "the newest run has expired from the log: give a sample event or delivery",
                ));
            };
            engine.stored_event(run.event).await
        }
    }
}

impl DryRuns for Engine {
    async fn test_automation(
        &self,
        who: &Principal,
        id: &str,
        sample: DrySample,
        options: DryRunOptions,
    ) -> EngineResult<DryRun> {
        who.require_role(Role::Admin, "test automations")?;
        let record = self.get_automation(who, id).await?;
        let event = sample_event(self, who, &record.automation, sample).await?;
        self.dry_run(&record, event, &options).await
    }

    async fn test_automation_document(
        &self,
        who: &Principal,
        automation: Automation,
        sample: DrySample,
        options: DryRunOptions,
    ) -> EngineResult<DryRun> {
        who.require_role(Role::Admin, "test automations")?;
        self.validate_automation(who, &automation).await?;
        let now = self.now();
        let record = AutomationRecord {
            tenant: who.tenant.clone(),
            health: None,
            failure_streak: 0,
            halted: None,
            created_at: now,
            updated_at: now,
            automation,
        };
        let event = sample_event(self, who, &record.automation, sample).await?;
        self.dry_run(&record, event, &options).await
    }
}

/// Step outputs given by the caller, checked to be objects.
pub fn given_outputs(outputs: BTreeMap<String, Value>) -> EngineResult<BTreeMap<String, Value>> {
    for (step, output) in &outputs {
        if !output.is_object() {
            return Err(EngineError::bad_request(
                format!("outputs.{step}"),
                "an object: the step's output fields",
            ));
        }
    }
    Ok(outputs)
}
