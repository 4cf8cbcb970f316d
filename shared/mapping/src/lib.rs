//! The pure heart of crmbridge: automations as data, field templates,
//! filters, dedupe rules and the plan of each step.
//!
//! Everything that decides *what* happens to an event lives here, and nothing
//! here does IO: no HTTP, no AWS, no async, no clock reads hidden behind the
//! caller's back (`now` is a parameter). That keeps the rules exhaustively
//! testable and makes every decision reproducible from the recorded inputs
//! of a run: the same inputs render byte-identical requests.
//!
//! # The model
//!
//! An [`Automation`] is a document (JSON or YAML, schema in
//! `automation.schema.json`, see [`schema`]):
//!
//! * a [`Trigger`]: a connection and a namespaced event kind
//!   (`calltouch.call.completed`), plus options the connector declares;
//! * an optional [`Filter`]: conditions (`eq`, `ne`, `in`, `not_in`,
//!   `contains`, `starts_with`, `exists`, `missing`, `gt`/`gte`/`lt`/`lte` on
//!   numbers and dates) nested with `all` / `any`. A filtered-out event is an
//!   outcome with a reason (`filtered: status = complete`), not an error;
//! * [`Step`]s run in order, each an action (`moysklad.counterparty.create`)
//!   on a connection with `fields` (Jinja templates, see [`template`]), an
//!   optional step `filter`, a [`Dedupe`] rule (`always_create`,
//!   `use_existing`, `update_existing`, `update_only`, by a list of fields),
//!   a [`LinkSpec`] (remember `event subject ↔ result` under a name) and a
//!   [`TargetSpec`] (the record an update works on: from a link, or a
//!   template).
//!
//! Templates see `event` (the event's normalised `data`), `steps.<id>`
//! (outputs of earlier steps), `links.<name>` (records linked to the event's
//! subject), `connection` (the step's connection settings, non-secret;
//! `default_region` feeds the `phone` filter) and `now`. A reference to
//! something missing is an error naming the template's path, unless
//! `| default(...)` says otherwise.
//!
//! Automations are written by tenants, so templates are not trusted:
//! compiling refuses what cannot be bounded (macros, includes, unknown
//! filters…) and rendering stops at the [`limits`] (output per field and
//! per step, instructions and work per field, size of any value built) with
//! a [`RenderError`] naming the field and the [`RenderLimit`].
//!
//! # The flow
//!
//! 1. [`validate()`] checks a document against a [`Catalog`] (which connectors
//!    provide) before it is saved, returning every problem with its path.
//! 2. [`CompiledAutomation::compile`] parses all templates once; keep the
//!    result per automation version.
//! 3. Per event, [`CompiledAutomation::evaluate_filter`] says whether it runs,
//!    then [`CompiledAutomation::render_step`] gives, step by step, a
//!    [`StepPlan`]: skip (with the reason) or the [`RenderedRequest`] to
//!    make. The engine calls the connector, searches if
//!    [`DedupePlan::needs_search`], applies [`DedupePlan::decide`], records
//!    the link and adds the output to the context for the next step.
//!
//! # Example
//!
//! ```
//! use std::collections::BTreeMap;
//! use chrono::{DateTime, Utc};
//! use crmbridge_mapping::catalog::{ActionKind, ActionSpec, EventKindSpec, FieldSpec, FieldType, StaticCatalog};
//! use crmbridge_mapping::{
//!     Automation, CompiledAutomation, DedupeDecision, Event, EventId, FilterOutcome,
//!     RenderContext, StepPlan, Subject, validate,
//! };
//! use serde_json::json;
//!
//! // What the connectors declare (normally provided by crmbridge-connectors).
//! let catalog = StaticCatalog::new()
//!     .with_event(EventKindSpec::new("calltouch.call.completed", vec![
//!         FieldSpec::new("call_id", FieldType::Integer),
//!         FieldSpec::new("caller_phone", FieldType::Phone),
//!         FieldSpec::new("status", FieldType::String),
//!         FieldSpec::new("tags", FieldType::Array),
//!     ]))
//!     .with_action(ActionSpec::new("moysklad.counterparty.create", ActionKind::Create, vec![
//!         FieldSpec::required("name", FieldType::String),
//!         FieldSpec::new("phone", FieldType::Phone),
//!         FieldSpec::new("tags", FieldType::String),
//!     ]));
//!
//! // The automation, as a user or a recipe writes it.
//! let automation = Automation::from_yaml_str(r#"
//! id: calltouch-call
//! name: Calltouch call → MoySklad counterparty
//! trigger: { connection: calltouch, event: calltouch.call.completed }
//! filter: { field: status, ne: spam }
//! steps:
//!   - id: customer
//!     action: moysklad.counterparty.create
//!     connection: moysklad
//!     fields:
//!       name: "Заказ по звонку из Calltouch с номера {{ event.caller_phone | phone }}"
//!       phone: "{{ event.caller_phone | phone }}"
//!       tags: "{{ event.tags | join('|') }}"
//!     dedupe: { mode: use_existing, by: [phone] }
//!     link: { name: customer }
//! "#)?;
//! validate(&automation, &catalog)?;
//! let compiled = CompiledAutomation::compile(&automation)?;
//!
//! // One event, as a webhook decoder produced it.
//! let at: DateTime<Utc> = "2026-05-08T12:32:47Z".parse()?;
//! let event = Event {
//!     id: EventId::from_source("calltouch", "123456"),
//!     tenant: "t1".into(),
//!     connection: "calltouch".into(),
//!     app: "calltouch".into(),
//!     kind: "calltouch.call.completed".into(),
//!     subject: Subject { kind: "call".into(), id: "123456".into() },
//!     occurred_at: at,
//!     received_at: at,
//!     data: json!({"call_id": 123456, "caller_phone": "8 (916) 123-45-67",
//!                  "status": "successful", "tags": ["1", "Лид"]}),
//! };
//! let connections = BTreeMap::from([("moysklad".to_owned(), json!({"default_region": "RU"}))]);
//! let ctx = RenderContext::new(&event, at).with_connections(&connections);
//!
//! assert_eq!(compiled.evaluate_filter(&ctx)?, FilterOutcome::Passed);
//! let StepPlan::Call(request) = compiled.render_step(0, &ctx)? else { unreachable!() };
//! assert_eq!(request.fields["name"], "Заказ по звонку из Calltouch с номера +79161234567");
//! assert_eq!(request.fields["phone"], "+79161234567");
//! assert_eq!(request.fields["tags"], "1|Лид");
//! // The connector searches by phone, then the crate decides.
//! assert!(request.dedupe.needs_search());
//! assert_eq!(request.dedupe.lookup[0].value, "+79161234567");
//! assert_eq!(
//!     request.dedupe.decide(Some("cp-1")),
//!     DedupeDecision::UseExisting { id: "cp-1".into() }
//! );
//! assert_eq!(request.link.as_deref(), Some("customer"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod bounded;
pub mod catalog;
pub mod error;
pub mod event;
pub mod filter;
pub mod fuzzing;
pub mod limits;
pub mod model;
pub mod plan;
pub mod render;
mod sandbox;
pub mod schema;
pub mod template;
pub mod validate;
mod values;

pub use catalog::{
    ActionKind, ActionSpec, Catalog, EventKindSpec, FieldSpec, FieldType, StaticCatalog,
};
pub use error::{RenderError, ValidationError, ValidationErrorKind, ValidationErrors};
pub use event::{Event, EventId, Subject};
pub use filter::{Condition, Filter, Operator};
pub use limits::RenderLimit;
pub use model::{Automation, Dedupe, DedupeMode, LinkSpec, ParseError, Step, TargetSpec, Trigger};
pub use plan::{
    DedupeDecision, DedupePlan, FilterOutcome, LookupKey, RenderedRequest, ResolvedTarget, StepPlan,
};
pub use render::{CompiledAutomation, RenderContext};
pub use validate::validate;
