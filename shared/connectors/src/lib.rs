//! Connectors: everything crmbridge knows about one service lives in one
//! folder, `vendors/<vendor>/`, with the vendor's API facts beside the code
//! (`API.md`), so the engine never learns a vendor's payload shape, URL or
//! quirk.
//!
//! A vendor is a set of capabilities ([`Vendor`]): it may receive webhooks
//! ([`WebhookSource`]), describe and complete events ([`EventSource`]), be
//! polled ([`Poller`]), carry actions ([`Action`], each declared once with
//! its catalog entry, its resend safety and how it runs, optionally a
//! [`Lookup`]), be introspected ([`Account`], [`LiveCatalog`]) and sign in
//! with OAuth 2.0 ([`oauth::OAuthApp`]). What a
//! vendor does not do, it does not declare: the engine refuses an
//! automation that needs it when it is saved, not when it runs.
//!
//! The [`Registry`] maps an app id (`generic`, `calltouch`, …) to its
//! [`Vendor`]; `vendors::all()` lists them, one line each.

mod capabilities;
pub mod client;
pub mod oauth;
pub mod public_address;
pub mod standard_webhooks;
mod support;
pub mod tls;
pub mod vendors;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use crmbridge_mapping::Subject;
use serde_json::Value;

pub use capabilities::{
    Account, Action, EventSource, Importer, LiveCatalog, Lookup, Poller, Reading, Registry,
    ReportedChange, Vendor, VendorSettings, WebhookSource, Written,
};
pub use client::{VendorClient, VendorError};

/// An HTTP request as a webhook decoder sees it: transport-neutral, so the
/// same decoder serves API Gateway and the local server.
#[derive(Debug, Clone)]
pub struct InboundRequest<'a> {
    pub method: &'a str,
    /// Decoded query string pairs, in order.
    pub query: &'a [(String, String)],
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
    /// Headers, names in lower case (signatures and timestamps).
    pub headers: &'a [(String, String)],
    /// The URL as the sender addressed it (scheme, host, path, query),
    /// when known: signatures that cover the URL need it.
    pub url: Option<&'a str>,
}

impl InboundRequest<'_> {
    /// The first header of this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What a decoder may know of the connection: its id, non-secret settings
/// and, for a sender that signs its deliveries, the one credential the
/// signature is keyed with ([`WebhookSource::signing_credential`]). No
/// other credential reaches a decoder.
#[derive(Clone, Copy)]
pub struct ConnectionView<'a> {
    pub id: &'a str,
    pub settings: &'a serde_json::Value,
    pub signing_secret: Option<&'a str>,
}

impl std::fmt::Debug for ConnectionView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionView")
            .field("id", &self.id)
            .field("signing_secret", &self.signing_secret.map(|_| "***"))
            .finish_non_exhaustive()
    }
}

/// One change the webhook reported, before the engine wraps it in an
/// [`crmbridge_mapping::Event`].
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedEvent {
    /// The source's own id for this change; `None` means "derive the event
    /// id from the payload bytes".
    pub source_id: Option<String>,
    pub kind: String,
    pub subject: Subject,
    pub occurred_at: Option<DateTime<Utc>>,
    pub data: serde_json::Value,
    /// Set by pollers of sources that report a record's current state but
    /// no history (NetHunt): the engine keeps the last value observed under
    /// `key` and accepts the event only when the value changed, so a record
    /// that keeps being edited reports "Status became Won" once.
    pub observation: Option<Observation>,
}

/// A polled value of one record's field (see [`DecodedEvent::observation`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Names what is observed, e.g. `{folder}:{record}:{field}`.
    pub key: String,
    /// Its value now; compared with the last one seen.
    pub value: Value,
}

/// Why a webhook was refused. Always the sender's fault (a 4xx): the
/// `field` names the offending body path, query parameter or header.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct DecodeError {
    pub field: String,
    pub message: String,
    /// The delivery could not be shown to come from the sender (a wrong
    /// or stale signature): a 401, not a 400.
    pub unauthenticated: bool,
}

impl DecodeError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
            unauthenticated: false,
        }
    }

    /// A delivery whose signature does not hold.
    pub fn unauthenticated(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            unauthenticated: true,
            ..Self::new(field, message)
        }
    }
}

/// A problem with a connection's settings, naming the setting.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("settings.{field}: {message}")]
pub struct SettingsError {
    pub field: String,
    pub message: String,
}

/// Everything an action, a search or a poll may use: the connection's
/// settings and credentials, the shared HTTP stack, and a key that is the
/// same every time the same step is retried (vendors that de-duplicate on a
/// client key — MoySklad `syncId`, retailCRM `externalId` — get it).
pub struct CallContext<'a> {
    pub connection: &'a str,
    pub settings: &'a Value,
    pub credentials: &'a BTreeMap<String, String>,
    pub http: &'a VendorClient,
    pub idempotency_key: &'a str,
    /// Tests point connections at fakes on loopback; production refuses
    /// any base URL outside the vendor's domains.
    pub allow_any_base_url: bool,
    /// Access tokens for an OAuth 2.0 vendor's connection (refreshed by
    /// the engine); `None` for vendors with API keys.
    pub tokens: Option<&'a dyn oauth::AccessTokens>,
}

impl std::fmt::Debug for CallContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallContext")
            .field("connection", &self.connection)
            .field("credentials", &self.credentials.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// What an action produced: the record's id and the record as the vendor
/// returned it (normalised field names are the connector's catalog output).
#[derive(Debug, Clone, PartialEq)]
pub struct ActionOutput {
    pub id: String,
    pub record: Value,
    pub response_status: u16,
    pub attempts: u32,
}

/// A batch of changes found by a poll and the cursor to resume from.
#[derive(Debug, Clone, PartialEq)]
pub struct PollBatch {
    pub events: Vec<DecodedEvent>,
    pub cursor: Value,
}

/// One page of an import: its events, where the next page starts (`None`
/// on the last), and how many records the walk covers in all when the
/// vendor says (usually on the first page only).
#[derive(Debug, Clone, PartialEq)]
pub struct ImportPage {
    pub events: Vec<DecodedEvent>,
    pub next: Option<Value>,
    pub total: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ActionError {
    #[error(transparent)]
    Vendor(#[from] VendorError),
    #[error("{field}: {message}")]
    Field { field: String, message: String },
    #[error("{0}")]
    Config(String),
    /// The step cannot be done now and doing it would be wrong (a task in
    /// an archived project): it is skipped, and the automation is marked
    /// with `health` until a later run succeeds.
    #[error("skipped: {reason}")]
    Skipped { reason: String, health: String },
    /// The step needs something another run has not written yet (a note
    /// whose contact is still on its way): retried later like an
    /// unavailable vendor, and failed if it never comes.
    #[error("not yet possible: {0}")]
    NotYet(String),
}

impl ActionError {
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Field {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Why the vendor refused the connection's credentials, when it did.
    pub fn credentials_refused(&self) -> Option<String> {
        match self {
            Self::Vendor(VendorError::CredentialsRefused {
                vendor, message, ..
            }) => Some(format!("{vendor} refused the credentials: {message}")),
            _ => None,
        }
    }

    /// Why an OAuth grant must be given again, when the authorization
    /// server refused it.
    pub fn reauthorization_needed(&self) -> Option<String> {
        match self {
            Self::Config(message) if message.starts_with(oauth::REAUTHORIZATION_NEEDED) => {
                Some(message.clone())
            }
            _ => None,
        }
    }

    /// Worth retrying later (the vendor was unavailable); anything else will
    /// fail the same way again.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Vendor(err) => err.is_transient(),
            Self::NotYet(_) => true,
            _ => false,
        }
    }
}

/// What may be done with a step whose earlier attempt has an unknown
/// outcome (the process died, or the answer was lost, between sending the
/// request and saving what came back). Declared per action by its
/// connector; the engine resumes such a step only when sending it again
/// cannot make a second record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    /// Sending it again does no harm (an update that overwrites fields).
    Repeatable,
    /// The vendor de-duplicates on the step's idempotency key, or the
    /// connector looks the record up by our reference before creating
    /// (MoySklad `syncId`, retailCRM `externalId`, a reference line).
    Keyed,
    /// The vendor takes no key, but what a call made can be read back
    /// (a chat message in the chat's history): before sending again, the
    /// engine asks [`Action::find_sent`] whether the earlier attempt
    /// arrived.
    ReadBack,
    /// Neither: a second send may make a second record, so the run stops
    /// as "needs review" with the request shown.
    Unsafe,
}

/// What [`Action::find_sent`] found out about an earlier attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Sent {
    /// It arrived: this is what it made (`attempts` 0: nothing was sent now).
    Found(ActionOutput),
    /// It surely did not arrive: sending again makes no second record.
    NotSent,
    /// Cannot be told yet (the vendor is still making the record the
    /// history hangs on): ask again later, send nothing.
    Unknown(String),
}
