//! The automation document: what a user (or a recipe) writes, stored as JSON
//! or YAML. These types are plain data with serde and a JSON Schema; they do
//! nothing by themselves. [`crate::validate()`] checks them against a catalog,
//! [`crate::CompiledAutomation`] turns them into rendered requests.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::filter::Filter;

/// One automation ("bundle" in Albato, "zap" in Zapier): a trigger, an
/// optional filter on the event, and the steps to run in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Automation {
    /// Stable identifier, unique within the tenant.
    pub id: String,
    /// Human-readable name shown in the run log.
    pub name: String,
    /// A disabled automation is never run (its filter reports why).
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Which events start this automation.
    pub trigger: Trigger,
    /// Conditions on the event; a filtered-out event is a recorded outcome,
    /// not an error. Cannot reference step outputs (no step has run yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
    /// The steps, run in order; later steps may use earlier steps' outputs.
    pub steps: Vec<Step>,
    /// Halt the automation after this many runs in a row fail for good
    /// (0 = never); the deployment's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halt_after: Option<u32>,
}

fn enabled_by_default() -> bool {
    true
}

/// Errors reading an automation document.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("invalid automation JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid automation YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

impl Automation {
    /// Reads an automation from YAML (the format recipes and users write).
    pub fn from_yaml_str(text: &str) -> Result<Self, ParseError> {
        Ok(serde_yaml::from_str(text)?)
    }

    /// Reads an automation from JSON (the format the admin API stores).
    pub fn from_json_str(text: &str) -> Result<Self, ParseError> {
        Ok(serde_json::from_str(text)?)
    }

    /// Writes the automation as YAML.
    pub fn to_yaml_string(&self) -> Result<String, ParseError> {
        Ok(serde_yaml::to_string(self)?)
    }

    /// Writes the automation as pretty JSON.
    pub fn to_json_string(&self) -> Result<String, ParseError> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// The index of the step with this id.
    pub fn step_index(&self, id: &str) -> Option<usize> {
        self.steps.iter().position(|step| step.id == id)
    }
}

/// What starts an automation: events of one kind from one connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    /// The connection the event comes from.
    pub connection: String,
    /// Namespaced event kind, `app.entity.what`, e.g. `calltouch.call.completed`.
    pub event: String,
    /// Trigger options the connector's catalog declares (e.g. which folder
    /// and field a polled NetHunt trigger watches).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, Value>,
}

/// One action of an automation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Identifier, `[a-z_][a-z0-9_]*`; later templates read this step's
    /// output as `steps.<id>`.
    pub id: String,
    /// Namespaced action id, `app.entity.verb`, e.g. `moysklad.counterparty.create`.
    pub action: String,
    /// The connection the action runs against.
    pub connection: String,
    /// Conditions for this step alone (may reference earlier steps); when
    /// they fail the step is skipped, the automation goes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
    /// Action field → value. Strings are templates (Jinja syntax); numbers,
    /// booleans and null are literals; objects and arrays are rendered
    /// element by element. A string that is exactly one `{{ expression }}`
    /// keeps the expression's type (number, list, object…).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, Value>,
    /// What to do when the record may already exist (create actions only).
    #[serde(default, skip_serializing_if = "Dedupe::is_always_create")]
    pub dedupe: Dedupe,
    /// Record the result as linked to the event's subject, so that later
    /// events on either side find the other record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkSpec>,
    /// The record an update action works on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetSpec>,
}

/// Dedupe rule of a create step. The crate decides; connectors perform the
/// search (see [`crate::DedupePlan`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum Dedupe {
    /// Never search; always create a new record.
    #[default]
    AlwaysCreate,
    /// Search by the keys in order; if a record is found use it unchanged,
    /// else create one.
    UseExisting {
        /// Step field names whose rendered values are the search keys
        /// (e.g. `phone`, `email`, `externalCode`).
        by: Vec<String>,
    },
    /// Search by the keys; update the found record, else create one.
    UpdateExisting {
        /// Step field names whose rendered values are the search keys.
        by: Vec<String>,
    },
    /// Search by the keys; update the found record, else stop the step.
    UpdateOnly {
        /// Step field names whose rendered values are the search keys.
        by: Vec<String>,
    },
}

impl Dedupe {
    /// The mode, without its keys.
    pub fn mode(&self) -> DedupeMode {
        match self {
            Dedupe::AlwaysCreate => DedupeMode::AlwaysCreate,
            Dedupe::UseExisting { .. } => DedupeMode::UseExisting,
            Dedupe::UpdateExisting { .. } => DedupeMode::UpdateExisting,
            Dedupe::UpdateOnly { .. } => DedupeMode::UpdateOnly,
        }
    }

    /// The search keys (empty for `always_create`).
    pub fn keys(&self) -> &[String] {
        match self {
            Dedupe::AlwaysCreate => &[],
            Dedupe::UseExisting { by }
            | Dedupe::UpdateExisting { by }
            | Dedupe::UpdateOnly { by } => by,
        }
    }

    fn is_always_create(&self) -> bool {
        matches!(self, Dedupe::AlwaysCreate)
    }
}

/// The dedupe mode of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DedupeMode {
    AlwaysCreate,
    UseExisting,
    UpdateExisting,
    UpdateOnly,
}

impl std::fmt::Display for DedupeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DedupeMode::AlwaysCreate => "always_create",
            DedupeMode::UseExisting => "use_existing",
            DedupeMode::UpdateExisting => "update_existing",
            DedupeMode::UpdateOnly => "update_only",
        })
    }
}

/// Declares that the step's result is linked to the event's subject.
///
/// The engine records `(event connection, subject type, subject id) ↔
/// (step connection, name, result id)`. A later event on the same subject
/// sees the record as `links.<name>`; an event on the linked record (the
/// other direction) sees the subject under its type, e.g. `links.record`
/// for a NetHunt record linked to a Worksection task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// The link's name; a later event on this subject sees the linked
    /// record's id as `links.<name>`.
    pub name: String,
}

/// Where an update step takes its target record id from: exactly one of
/// `link` or `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// Take the id from the link of this name (`links.<name>`); when the
    /// subject has no such link the step is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// A template rendering the id (e.g. `{{ event.external_id }}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}
