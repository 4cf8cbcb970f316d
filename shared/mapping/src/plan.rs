//! What the renderer hands to the engine: for each step either a reason to
//! skip it or the exact request to make, including how to dedupe and what
//! to link. These are plain data, serialisable for the run log.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::DedupeMode;

/// The outcome of an automation's filter for one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum FilterOutcome {
    Passed,
    /// Not an error: recorded as the run's outcome, e.g.
    /// `filtered: status = complete`.
    Filtered {
        reason: String,
    },
}

impl FilterOutcome {
    pub fn passed(&self) -> bool {
        matches!(self, FilterOutcome::Passed)
    }
}

impl fmt::Display for FilterOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FilterOutcome::Passed => f.write_str("passed"),
            FilterOutcome::Filtered { reason } => write!(f, "filtered: {reason}"),
        }
    }
}

/// What to do with one step for this event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "plan", rename_all = "snake_case")]
pub enum StepPlan {
    /// Do not call the action; the reason goes to the run log.
    Skip { reason: String },
    /// Call the action with this request.
    Call(RenderedRequest),
}

/// The rendered request of one step: everything the engine needs to call
/// the connector, nothing it must compute itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenderedRequest {
    pub step_id: String,
    pub action: String,
    pub connection: String,
    /// Rendered fields, sorted by name.
    pub fields: Map<String, Value>,
    pub dedupe: DedupePlan,
    /// Link name under which to record `event subject ↔ result`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// The record an update works on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<ResolvedTarget>,
}

/// The target record id of an update step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedTarget {
    pub id: String,
    /// The link it came from, if it came from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_link: Option<String>,
}

/// How the engine resolves "does this record already exist?" for a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DedupePlan {
    pub mode: DedupeMode,
    /// Search keys with their rendered values, in the order to try them;
    /// keys whose value is missing or empty are left out.
    pub lookup: Vec<LookupKey>,
    /// The record already linked to the event subject under the step's
    /// link name: known without searching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linked_id: Option<String>,
}

/// One search key: the target field and the value to look for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LookupKey {
    pub field: String,
    pub value: Value,
}

/// What to do once the search (if any) is done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum DedupeDecision {
    /// Create a new record.
    Create,
    /// Use this record as the step's result, unchanged.
    UseExisting { id: String },
    /// Update this record with the step's fields.
    Update { id: String },
    /// Do nothing more for this step (`update_only` found nothing).
    Stop { reason: String },
}

impl DedupePlan {
    /// Whether the connector must search the target: a searching mode, no
    /// linked record, and at least one key with a value.
    pub fn needs_search(&self) -> bool {
        self.mode != DedupeMode::AlwaysCreate && self.linked_id.is_none() && !self.lookup.is_empty()
    }

    /// The decision, given the id the search found (if one was made). A
    /// linked record wins over a search result.
    pub fn decide(&self, found: Option<&str>) -> DedupeDecision {
        let existing = self.linked_id.as_deref().or(found);
        match (self.mode, existing) {
            (DedupeMode::AlwaysCreate, _) => DedupeDecision::Create,
            (DedupeMode::UseExisting, Some(id)) => {
                DedupeDecision::UseExisting { id: id.to_owned() }
            }
            (DedupeMode::UpdateExisting | DedupeMode::UpdateOnly, Some(id)) => {
                DedupeDecision::Update { id: id.to_owned() }
            }
            (DedupeMode::UseExisting | DedupeMode::UpdateExisting, None) => DedupeDecision::Create,
            (DedupeMode::UpdateOnly, None) => DedupeDecision::Stop {
                reason: format!(
                    "update_only: no existing record found by {}",
                    self.describe_keys()
                ),
            },
        }
    }

    fn describe_keys(&self) -> String {
        if self.lookup.is_empty() {
            return "any key (none had a value)".to_owned();
        }
        self.lookup
            .iter()
            .map(|key| format!("{} = {}", key.field, crate::values::display(&key.value)))
            .collect::<Vec<_>>()
            .join(" or ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan(mode: DedupeMode, linked: Option<&str>) -> DedupePlan {
        DedupePlan {
            mode,
            lookup: vec![LookupKey {
                field: "phone".into(),
                value: json!("+79161234567"),
            }],
            linked_id: linked.map(str::to_owned),
        }
    }

    #[test]
    fn always_create_creates_without_searching() {
        let p = plan(DedupeMode::AlwaysCreate, None);
        assert!(!p.needs_search());
        assert_eq!(p.decide(Some("x")), DedupeDecision::Create);
    }

    #[test]
    fn use_existing_uses_found_or_creates() {
        let p = plan(DedupeMode::UseExisting, None);
        assert!(p.needs_search());
        assert_eq!(
            p.decide(Some("c1")),
            DedupeDecision::UseExisting { id: "c1".into() }
        );
        assert_eq!(p.decide(None), DedupeDecision::Create);
    }

    #[test]
    fn update_existing_updates_found_or_creates() {
        let p = plan(DedupeMode::UpdateExisting, None);
        assert_eq!(
            p.decide(Some("c1")),
            DedupeDecision::Update { id: "c1".into() }
        );
        assert_eq!(p.decide(None), DedupeDecision::Create);
    }

    #[test]
    fn update_only_stops_when_nothing_found() {
        let p = plan(DedupeMode::UpdateOnly, None);
        assert_eq!(
            p.decide(Some("c1")),
            DedupeDecision::Update { id: "c1".into() }
        );
        assert_eq!(
            p.decide(None),
            DedupeDecision::Stop {
                reason: "update_only: no existing record found by phone = +79161234567".into()
            }
        );
    }

    #[test]
    fn a_linked_record_needs_no_search_and_wins() {
        let p = plan(DedupeMode::UpdateExisting, Some("linked"));
        assert!(!p.needs_search());
        assert_eq!(
            p.decide(Some("other")),
            DedupeDecision::Update {
                id: "linked".into()
            }
        );
    }

    #[test]
    fn outcomes_display_as_recorded() {
        let outcome = FilterOutcome::Filtered {
            reason: "status = complete".into(),
        };
        assert_eq!(outcome.to_string(), "filtered: status = complete");
        assert!(FilterOutcome::Passed.passed());
    }
}
