//! The dry run of an automation: what a run would send for one event,
//! without sending it.
//!
//! The filter is evaluated and every step rendered exactly as a run
//! renders it (the same compiled automation, links and connection
//! settings), so each step's `request` is what the run would record and
//! send. Nothing is written anywhere: not to a vendor, not to the store.
//! With `reads`, the look-ups a run would make are made (find-or-create
//! searches, read-only actions such as `zoho.caller.find`, fetching what a
//! MoySklad event only points at); without, their results are unknown.
//!
//! A step's output is known only when it was read or given by the caller;
//! otherwise it is a placeholder per output field, `<steps.{step}.{field}>`
//! (booleans: absent), so later templates show where it would go.

use std::collections::BTreeMap;

use crmbridge_mapping::{
    DedupeDecision, Event, FilterOutcome, RenderContext, RenderedRequest, StepPlan,
};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::bookkeeping::AutomationRecord;
use crate::dispatch::{ClaimState, dedupe_claims};
use crate::ingest::WebhookRequest;
use crate::links::RecordRef;
use crate::{Engine, EngineError, EngineResult};

/// What the caller asks of a dry run.
#[derive(Debug, Clone, Default)]
pub struct DryRunOptions {
    /// Make the look-ups a run would make (vendor reads, never writes).
    pub reads: bool,
    /// Outputs to assume for steps, by step id (instead of placeholders).
    pub outputs: BTreeMap<String, Value>,
}

/// The plan a dry run answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DryRun {
    /// The event planned for.
    pub event: Event,
    pub filter: FilterOutcome,
    pub steps: Vec<DryStep>,
    /// Vendor reads made (only with `reads`).
    pub vendor_reads: u32,
    /// Always 0: a dry run writes nothing.
    pub vendor_writes: u32,
}

/// One step of the plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DryStep {
    pub id: String,
    pub action: String,
    #[serde(flatten)]
    pub plan: DryStepPlan,
}

/// Where a planned step's output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputSource {
    /// Not known without the call: placeholders.
    Placeholder,
    /// A read-only action performed (with `reads`).
    Read,
    /// Given by the caller.
    Given,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "plan", rename_all = "snake_case")]
pub enum DryStepPlan {
    /// The step would call its action with `request`.
    Call {
        request: Box<RenderedRequest>,
        /// What the find-or-create search decided (`None`: not searched;
        /// ask for reads).
        #[serde(skip_serializing_if = "Option::is_none")]
        decision: Option<DedupeDecision>,
        output: Value,
        output_from: OutputSource,
    },
    /// The step would be skipped.
    Skip { reason: String },
    /// The step cannot be rendered: the run would fail here.
    Error { path: String, message: String },
}

/// A webhook delivery to plan for, decoded as the trigger's connection
/// would decode it (signatures included).
#[derive(Debug, Clone, Default)]
pub struct SampleDelivery {
    pub method: String,
    pub query: Vec<(String, String)>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
    pub url: Option<String>,
}

/// The placeholder output of a step: each described output field
/// (`<steps.{step}.{field}>`; booleans absent), `id` always.
fn placeholder_output(step: &str, spec: &crmbridge_mapping::ActionSpec, id: Option<&str>) -> Value {
    let mut output = Map::new();
    for field in &spec.output {
        if field.field_type == crmbridge_mapping::FieldType::Boolean {
            continue;
        }
        output.insert(
            field.name.clone(),
            Value::String(format!("<steps.{step}.{}>", field.name)),
        );
    }
    output.insert(
        "id".into(),
        Value::String(id.map_or_else(|| format!("<steps.{step}.id>"), str::to_owned)),
    );
    Value::Object(output)
}

impl Engine {
    /// Decodes a sample delivery on `connection` into its events, as a
    /// webhook would (nothing is accepted or stored).
    pub async fn sample_events(
        &self,
        tenant: &str,
        connection: &str,
        delivery: &SampleDelivery,
    ) -> EngineResult<Vec<Event>> {
        let open = self.open_connection(tenant, connection).await?;
        let request = WebhookRequest {
            connection,
            token: "",
            method: &delivery.method,
            query: delivery.query.clone(),
            content_type: delivery.content_type.as_deref(),
            body: &delivery.body,
            headers: delivery.headers.clone(),
            url: delivery.url.clone(),
        };
        self.decode_events(&open.record, &open.secrets, &request, self.now())
    }

    /// The event data of a stored event (large events keep it apart).
    pub async fn stored_event(&self, event: Event) -> EngineResult<Event> {
        self.resolve_data(event).await
    }

    /// Plans `record`'s run for `event` (see the module docs).
    pub async fn dry_run(
        &self,
        record: &AutomationRecord,
        mut event: Event,
        options: &DryRunOptions,
    ) -> EngineResult<DryRun> {
        let compiled = self.compiled(record)?;
        let automation = &record.automation;
        let mut connections = BTreeMap::new();
        let mut settings = BTreeMap::new();
        let ids = std::iter::once((
            "trigger.connection".to_owned(),
            &automation.trigger.connection,
        ))
        .chain(
            automation
                .steps
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("steps[{i}].connection"), &s.connection)),
        );
        for (path, id) in ids {
            if connections.contains_key(id) {
                continue;
            }
            let open = self
                .open_connection(&record.tenant, id)
                .await
                .map_err(|_| {
                    EngineError::bad_request(path, format!("connection {id} does not exist"))
                })?;
            settings.insert(id.clone(), open.record.settings.clone());
            connections.insert(id.clone(), open);
        }
        for step in options.outputs.keys() {
            if !automation.steps.iter().any(|s| &s.id == step) {
                return Err(EngineError::bad_request(
                    format!("outputs.{step}"),
                    "the automation has no step with this id",
                ));
            }
        }
        let mut vendor_reads = 0;
        if options.reads
            && let Some(source) = self.event_source(&event.app)
            && let Some(open) = connections.get(&event.connection)
        {
            let key = format!("dry/{}", automation.id);
            let ctx = self.call_context(open, &key);
            source
                .enrich(&ctx, &mut event)
                .await
                .map_err(|err| EngineError::Action {
                    what: format!("reading the {} record the event points at", event.app),
                    transient: err.is_transient(),
                    message: err.to_string(),
                })?;
            vendor_reads += 1;
        }
        // The trigger's options (a NetHunt folder and value, …) choose the
        // events its runs are for, as in dispatch.
        if let Some(source) = self.event_source(&event.app)
            && !source.trigger_matches(&automation.trigger.options, &event)
        {
            return Ok(DryRun {
                event,
                filter: FilterOutcome::Filtered {
                    reason: "the trigger's options do not match this event: no run".into(),
                },
                steps: Vec::new(),
                vendor_reads,
                vendor_writes: 0,
            });
        }
        let subject = RecordRef {
            connection: event.connection.clone(),
            entity: event.subject.kind.clone(),
            id: event.subject.id.clone(),
        };
        let mut links: BTreeMap<String, String> = self
            .links_of(&subject)
            .await?
            .set
            .into_iter()
            .map(|(name, r)| (name, r.id))
            .collect();
        let now = self.now();
        let filter = {
            let ctx = RenderContext::new(&event, now)
                .with_links(&links)
                .with_connections(&settings);
            compiled.evaluate_filter(&ctx).map_err(|err| {
                EngineError::Invalid(vec![crate::FieldError {
                    field: err.path,
                    message: err.message,
                }])
            })?
        };
        let mut steps = Vec::new();
        if !filter.passed() {
            return Ok(DryRun {
                event,
                filter,
                steps,
                vendor_reads,
                vendor_writes: 0,
            });
        }
        let mut outputs: BTreeMap<String, Value> = BTreeMap::new();
        for (index, step) in automation.steps.iter().enumerate() {
            let rendered = {
                let ctx = RenderContext::new(&event, now)
                    .with_steps(&outputs)
                    .with_links(&links)
                    .with_connections(&settings);
                compiled.render_step(index, &ctx)
            };
            let request = match rendered {
                Err(err) => {
                    steps.push(DryStep {
                        id: step.id.clone(),
                        action: step.action.clone(),
                        plan: DryStepPlan::Error {
                            path: err.path,
                            message: err.message,
                        },
                    });
                    break;
                }
                Ok(StepPlan::Skip { reason }) => {
                    outputs.insert(step.id.clone(), json!({}));
                    steps.push(DryStep {
                        id: step.id.clone(),
                        action: step.action.clone(),
                        plan: DryStepPlan::Skip { reason },
                    });
                    continue;
                }
                Ok(StepPlan::Call(request)) => request,
            };
            let Some(action) = self.connectors.action(&request.action).cloned() else {
                steps.push(DryStep {
                    id: step.id.clone(),
                    action: step.action.clone(),
                    plan: DryStepPlan::Error {
                        path: format!("steps[{index}].action"),
                        message: format!("no connector has the action {}", request.action),
                    },
                });
                break;
            };
            let Some(open) = connections.get(&request.connection) else {
                return Err(EngineError::bad_request(
                    format!("steps[{index}].connection"),
                    format!("connection {} is not open", request.connection),
                ));
            };
            let key = format!("dry/{}/{}", automation.id, step.id);
            let ctx = self.call_context(open, &key);
            let decision = if let Some(target) = &request.target {
                Some(DedupeDecision::Update {
                    id: target.id.clone(),
                })
            } else if !request.dedupe.needs_search() {
                Some(request.dedupe.decide(None))
            } else if let ClaimState::Resolved(id) = self
                .read_claims(&dedupe_claims(
                    &request.connection,
                    &request.action,
                    &request.dedupe.lookup,
                ))
                .await?
            {
                // An earlier run made the record under these keys: a run
                // uses it without searching.
                Some(request.dedupe.decide(Some(&id)))
            } else if options.reads {
                let lookup = action.lookup().ok_or_else(|| {
                    EngineError::bad_request(
                        format!("steps[{index}].dedupe"),
                        format!("{} cannot search for existing records", request.action),
                    )
                })?;
                vendor_reads += 1;
                let found = lookup
                    .find(&ctx, &request.dedupe.lookup)
                    .await
                    .map_err(|err| EngineError::Action {
                        what: format!("steps[{index}]: searching {}", request.action),
                        transient: err.is_transient(),
                        message: err.to_string(),
                    })?;
                Some(request.dedupe.decide(found.as_deref()))
            } else {
                None
            };
            let (output, output_from) = if let Some(given) = options.outputs.get(&step.id) {
                (given.clone(), OutputSource::Given)
            } else if options.reads && action.reads_only() {
                vendor_reads += 1;
                let read = action
                    .execute(
                        &ctx,
                        &request.fields,
                        request.target.as_ref().map(|t| t.id.as_str()),
                    )
                    .await
                    .map_err(|err| EngineError::Action {
                        what: format!("steps[{index}]: {}", request.action),
                        transient: err.is_transient(),
                        message: err.to_string(),
                    })?;
                let mut record = read.record;
                if let Value::Object(map) = &mut record {
                    map.insert("id".into(), Value::String(read.id));
                } else {
                    record = json!({"id": read.id});
                }
                (record, OutputSource::Read)
            } else {
                match &decision {
                    // What a run puts out for a record it uses unchanged.
                    Some(DedupeDecision::UseExisting { id }) => (
                        json!({"id": id, "existing": true}),
                        OutputSource::Placeholder,
                    ),
                    Some(DedupeDecision::Update { id }) => (
                        placeholder_output(&step.id, &action.spec(), Some(id)),
                        OutputSource::Placeholder,
                    ),
                    _ => (
                        placeholder_output(&step.id, &action.spec(), None),
                        OutputSource::Placeholder,
                    ),
                }
            };
            if let Some(DedupeDecision::Stop { reason }) = &decision {
                steps.push(DryStep {
                    id: step.id.clone(),
                    action: step.action.clone(),
                    plan: DryStepPlan::Skip {
                        reason: reason.clone(),
                    },
                });
                break;
            }
            if let Some(name) = &request.link
                && let Some(id) = output.get("id").and_then(Value::as_str)
            {
                links.insert(name.clone(), id.to_owned());
            }
            outputs.insert(step.id.clone(), output.clone());
            steps.push(DryStep {
                id: step.id.clone(),
                action: step.action.clone(),
                plan: DryStepPlan::Call {
                    request: Box::new(request),
                    decision,
                    output,
                    output_from,
                },
            });
        }
        Ok(DryRun {
            event,
            filter,
            steps,
            vendor_reads,
            vendor_writes: 0,
        })
    }
}
