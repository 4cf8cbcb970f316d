//! The domain records the engine keeps, as they are stored (JSON bodies of
//! store items). Secrets never appear in these types' Debug output or in any
//! API view of them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use crmbridge_mapping::Event;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    Viewer,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantRecord {
    pub id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub id: String,
    pub tenant: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

/// The tenant's index entry of one API key: the key record plus the hash
/// that addresses it, so the key can be revoked by id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyIndexEntry {
    #[serde(flatten)]
    pub key: ApiKeyRecord,
    /// Absent on entries written before keys could be revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_hash: Option<String>,
}

/// A connection as stored: `secrets` is sealed (see [`crate::sealed`]).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionRecord {
    pub id: String,
    pub tenant: String,
    pub app: String,
    pub name: String,
    pub settings: serde_json::Value,
    /// Names of the credentials that are set; their values are sealed.
    pub credential_names: Vec<String>,
    pub secrets: String,
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for ConnectionRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionRecord")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("app", &self.app)
            .field("name", &self.name)
            .field("credential_names", &self.credential_names)
            .finish_non_exhaustive()
    }
}

/// What is sealed inside a connection.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionSecrets {
    pub webhook_token: String,
    #[serde(default)]
    pub credentials: BTreeMap<String, String>,
}

impl std::fmt::Debug for ConnectionSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectionSecrets(redacted)")
    }
}

/// Where an accepted event stands; the idempotency record's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AcceptState {
    /// Recorded, not yet confirmed on the bus: a redelivery publishes again.
    Pending,
    /// On the bus: a redelivery does nothing.
    Published,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AcceptRecord {
    pub state: AcceptState,
    pub connection: String,
    pub accepted_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// No enabled automation is triggered by this event.
    NoMatch,
    /// An automation's filter let the event pass by.
    Filtered,
    Running,
    Succeeded,
    Failed,
    /// A step could not be done for a reason a person must fix (the
    /// Worksection project is archived); the automation's health says why.
    Skipped,
}

impl RunStatus {
    pub fn is_final(self) -> bool {
        !matches!(self, RunStatus::Running | RunStatus::Failed)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepRecord {
    pub id: String,
    pub action: String,
    pub status: String,
    #[serde(default)]
    pub request: serde_json::Value,
    #[serde(default)]
    pub response_status: Option<u16>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub output: serde_json::Value,
    #[serde(default)]
    pub attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunRecord {
    pub id: String,
    pub tenant: String,
    pub connection: String,
    pub automation: Option<String>,
    pub event_id: String,
    pub event_kind: String,
    pub status: RunStatus,
    /// One line a person can read: "no automation matched …",
    /// "filtered: status = complete", the error of the failed step.
    pub outcome: String,
    /// The event as it was dispatched (the envelope of DESIGN.md "Events").
    #[schema(value_type = Object)]
    pub event: Event,
    #[serde(default)]
    pub steps: Vec<StepRecord>,
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The run index entry: enough to list runs without reading each one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunSummary {
    pub id: String,
    pub automation: Option<String>,
    pub connection: String,
    pub event_id: String,
    pub event_kind: String,
    pub status: RunStatus,
    pub outcome: String,
    pub created_at: DateTime<Utc>,
}

impl From<&RunRecord> for RunSummary {
    fn from(run: &RunRecord) -> Self {
        Self {
            id: run.id.clone(),
            automation: run.automation.clone(),
            connection: run.connection.clone(),
            event_id: run.event_id.clone(),
            event_kind: run.event_kind.clone(),
            status: run.status,
            outcome: run.outcome.clone(),
            created_at: run.created_at,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TickRecord {
    pub started_at: DateTime<Utc>,
    /// `connection#automation` of every source a poll was requested for.
    pub sources: Vec<String>,
    pub published: usize,
}
