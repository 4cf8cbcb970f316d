//! The domain records the engine keeps, as they are stored (JSON bodies of
//! store items). Secrets never appear in these types' Debug output or in any
//! API view of them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use crmbridge_mapping::{Automation, Event};
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
    /// Which process is publishing a pending event, and since when: a
    /// duplicate that arrives meanwhile waits for it instead of publishing
    /// a second time, and takes over only when the publisher is surely
    /// gone (another instance of a sole-worker deployment, or stale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publishing_since: Option<DateTime<Utc>>,
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
    /// A step's earlier attempt may have reached the vendor (the process
    /// died, or the answer was lost) and sending it again could make a
    /// second record: a person checks the target and replays (which sends
    /// it again) or leaves it.
    NeedsReview,
}

impl RunStatus {
    /// Final runs are never run again by a redelivery.
    pub fn is_final(self) -> bool {
        !matches!(self, RunStatus::Running | RunStatus::Failed)
    }

    /// The status as the API spells it (`needs_review`).
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::NoMatch => "no_match",
            RunStatus::Filtered => "filtered",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Skipped => "skipped",
            RunStatus::NeedsReview => "needs_review",
        }
    }
}

/// Where one step of a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// The request is (or was) on its way to the vendor and no answer has
    /// been saved: written *before* the call, so a worker that dies during
    /// it leaves a trace that the next attempt resolves (see dispatch).
    Calling,
    Succeeded,
    /// The step's own filter did not pass; the run goes on.
    Skipped,
    /// A dedupe rule stopped the run here.
    Stopped,
    Failed,
    /// See [`RunStatus::NeedsReview`].
    NeedsReview,
}

impl StepStatus {
    /// The step's output is known and later steps may use it.
    pub fn is_done(self) -> bool {
        matches!(self, StepStatus::Succeeded | StepStatus::Skipped)
    }
}

/// Who runs a run now, until when. A run is executed by one worker at a
/// time; another delivery of the same event backs off while the lease is
/// live and takes over once it has lapsed (its holder died).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunLease {
    pub owner: String,
    pub until: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepRecord {
    pub id: String,
    pub action: String,
    pub status: StepStatus,
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
    /// When the attempt still on its way began (our clock): what a step
    /// whose outcome is unknown reads the vendor's history back from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
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
    /// Deliveries that took this run (counted when taken, so a worker that
    /// crashes still counts: a poison event cannot loop forever).
    pub attempts: u32,
    /// `attempts` when the run was last replayed: a replay gets a fresh
    /// budget of attempts.
    #[serde(default)]
    pub attempts_before_replay: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<RunLease>,
    /// When its event arrived (the same for every delivery of the event,
    /// so every delivery lists the run under the same time).
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AutomationRecord {
    pub tenant: String,
    /// The automation document (see recipes/ and DESIGN.md "Automations").
    #[schema(value_type = Object)]
    pub automation: Automation,
    /// Why the automation cannot run right now (a connection missing, a
    /// project archived…), or `None` when it is healthy.
    #[serde(default)]
    pub health: Option<String>,
    /// Runs that failed for good in a row (a success resets it).
    #[serde(default)]
    pub failure_streak: u32,
    /// Set when the failure streak reached the automation's threshold: its
    /// events are recorded as failed runs without being run, until it is
    /// enabled again (then they can be replayed). Says why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halted: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Where an import stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImportStatus {
    Running,
    Finished,
    /// A page could not be read after every retry; `resume` goes on from
    /// the saved cursor.
    Failed,
}

/// One kind of record an import walks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImportProgress {
    /// The event kind its records become (`hubspot.contact.created`).
    pub kind: String,
    /// Records read and handed to the automations.
    pub done: u64,
    /// How many the vendor says there are (when it says).
    pub total: Option<u64>,
}

/// An import of a connection's existing records (the backfill that comes
/// before live sync): read page by page, each page's records accepted as
/// events, the cursor saved after each page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImportRecord {
    /// `imp_…`.
    pub id: String,
    pub tenant: String,
    pub connection: String,
    pub status: ImportStatus,
    /// Records read so far, over every kind.
    pub done: u64,
    /// The sum of the kinds' totals, once every kind's total is known.
    pub total: Option<u64>,
    /// Per kind, in the order they are read.
    pub kinds: Vec<ImportProgress>,
    /// The kind being read (an index into `kinds`).
    pub phase: usize,
    /// Pages read so far; the next page request is number `page`.
    pub page: u64,
    /// Where the next page of the current kind starts (the vendor's cursor).
    #[schema(value_type = Option<Object>)]
    pub cursor: Option<serde_json::Value>,
    /// Bumped by each resume, so a resumed page gets a new request id.
    #[serde(default)]
    pub generation: u32,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// An index entry pointing at an automation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutomationRef {
    pub tenant: String,
    pub automation: String,
}

/// A source whose trigger must be polled: `{connection}#{kind}`, narrowed
/// by the connector's poll scope (NetHunt: one folder and field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PollSource {
    pub tenant: String,
    pub connection: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub scope: serde_json::Value,
}

impl PollSource {
    /// A short stable tag of the scope, for keys ("" without a scope).
    pub fn scope_tag(&self) -> String {
        scope_tag(&self.scope)
    }

    pub fn name(&self) -> String {
        crate::keys::source_name(&self.connection, &self.kind, &self.scope_tag())
    }
}

pub fn scope_tag(scope: &serde_json::Value) -> String {
    if scope.is_null() {
        String::new()
    } else {
        // serde_json maps are sorted: the text is canonical.
        crate::sha256_hex(&scope.to_string())[..16].to_owned()
    }
}

/// Where a tenant's alerts go: a URL that receives alert messages signed
/// per the Standard Webhooks specification. The signing secrets are
/// sealed (a JSON list of [`AlertSecret`]); the API shows a new secret
/// once, when it is made.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertDestinationRecord {
    /// `ads_…`
    pub id: String,
    pub tenant: String,
    pub url: String,
    #[serde(default)]
    pub description: String,
    pub created_at: DateTime<Utc>,
    /// Sealed `Vec<AlertSecret>`, newest first.
    pub secrets: String,
}

impl std::fmt::Debug for AlertDestinationRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertDestinationRecord")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// One signing secret of an alert destination (`whsec_…`). A rotated-out
/// secret keeps signing beside the new one until `retires_at`, so a
/// receiver can switch without missing a message.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertSecret {
    pub secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retires_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for AlertSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertSecret")
            .field("retires_at", &self.retires_at)
            .finish_non_exhaustive()
    }
}

/// What an alert is about. Each cause has a subject (an automation, a
/// connection, a poll source) and is raised once until it clears.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AlertCause {
    /// Runs of an automation fail for good (a vendor refusal, retries
    /// spent, a dead-lettered event); clears with its next success.
    RunsFailing,
    /// An automation was halted after failures in a row; clears when a
    /// person saves or enables it again.
    AutomationHalted,
    /// A vendor refused a connection's credentials; clears when they are
    /// replaced or a check passes.
    CredentialsRefused,
    /// An OAuth grant was refused; clears when the connection is
    /// authorized again.
    ReauthorizationNeeded,
    /// A poll source failed several ticks in a row; clears when a poll
    /// succeeds.
    PollFailing,
}

impl AlertCause {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertCause::RunsFailing => "runs_failing",
            AlertCause::AutomationHalted => "automation_halted",
            AlertCause::CredentialsRefused => "credentials_refused",
            AlertCause::ReauthorizationNeeded => "reauthorization_needed",
            AlertCause::PollFailing => "poll_failing",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    Open,
    Resolved,
}

/// The state of one cause of alerts for a tenant (versioned): open from
/// the first occurrence until it clears, announced to the destinations
/// once per status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertRecord {
    /// `alr_…`, new each time the cause opens again.
    pub id: String,
    pub tenant: String,
    pub cause: AlertCause,
    /// The automation, connection or poll source it is about.
    pub subject: String,
    pub status: AlertStatus,
    /// What happened first (no secret in it).
    pub detail: String,
    pub opened_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<DateTime<Utc>>,
    /// The message for the current status is on the bus (a process that
    /// died before putting it there leaves `false`, and the next
    /// occurrence puts it there again, under the same message id).
    #[serde(default)]
    pub announced: bool,
}

/// What one attempt to send an alert message did (the admin API's test
/// send answers it).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AlertSendOutcome {
    /// The receiver's HTTP status; absent when it did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub delivered: bool,
    /// Why it was not delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub message_id: String,
}
