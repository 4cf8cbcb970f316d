//! Connectors: everything crmbridge knows about one service lives in one
//! module here, behind the [`Connector`] trait, so the engine never learns a
//! vendor's payload shape, URL or quirk.
//!
//! A connector turns an inbound webhook into normalised events
//! ([`DecodedEvent`]); the engine adds the envelope (ids, tenant, times).
//! The [`Registry`] maps an app id (`generic`, `calltouch`, …) to its
//! connector.

pub mod calltouch;
pub mod generic;
pub mod http;
pub mod moysklad;
pub mod nethunt;
pub mod retailcrm;
mod support;
pub mod worksection;

use std::collections::BTreeMap;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use crmbridge_mapping::{Event, LookupKey, StaticCatalog, Subject};
use serde_json::{Map, Value};

pub use http::{VendorError, VendorHttp};

/// An HTTP request as a webhook decoder sees it: transport-neutral, so the
/// same decoder serves API Gateway and the local server.
#[derive(Debug, Clone)]
pub struct InboundRequest<'a> {
    pub method: &'a str,
    /// Decoded query string pairs, in order.
    pub query: &'a [(String, String)],
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
}

/// What a decoder may know of the connection: its id and non-secret
/// settings. Credentials never reach a decoder.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionView<'a> {
    pub id: &'a str,
    pub settings: &'a serde_json::Value,
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
}

impl DecodeError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
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
    pub http: &'a VendorHttp,
    pub idempotency_key: &'a str,
    /// Tests point connections at fakes on loopback; production refuses
    /// any base URL outside the vendor's domains.
    pub allow_any_base_url: bool,
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

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ActionError {
    #[error(transparent)]
    Vendor(#[from] VendorError),
    #[error("{field}: {message}")]
    Field { field: String, message: String },
    #[error("{0}")]
    Config(String),
    #[error("{app} does not support {what}")]
    Unsupported { app: &'static str, what: String },
    /// The step cannot be done now and doing it would be wrong (a task in
    /// an archived project): it is skipped, and the automation is marked
    /// with `health` until a later run succeeds.
    #[error("skipped: {reason}")]
    Skipped { reason: String, health: String },
}

impl ActionError {
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Field {
            field: field.into(),
            message: message.into(),
        }
    }

    /// An action id the connector does not implement.
    pub fn unsupported_action(app: &'static str, action: &str) -> Self {
        Self::Unsupported {
            app,
            what: format!("the action {action}"),
        }
    }

    /// An event kind the connector cannot poll.
    pub fn unsupported_poll(app: &'static str, kind: &str) -> Self {
        Self::Unsupported {
            app,
            what: format!("polling {kind}"),
        }
    }

    /// Worth retrying later (the vendor was unavailable); anything else will
    /// fail the same way again.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Vendor(err) if err.is_transient())
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
    /// Neither: a second send may make a second record, so the run stops
    /// as "needs review" with the request shown.
    Unsafe,
}

#[async_trait]
pub trait Connector: Send + Sync {
    /// The app id, e.g. `generic`; the first segment of its event kinds.
    fn app(&self) -> &'static str;

    /// Its event kinds and actions, for validating automations.
    fn catalog(&self) -> StaticCatalog;

    /// The status a newly accepted webhook is answered with. Most senders
    /// take any 2xx; MoySklad retries anything but 200/204.
    fn ack_status(&self) -> u16 {
        202
    }

    /// The exact body the sender requires in its acknowledgement
    /// (Worksection: `{"status":"OK"}`), replacing crmbridge's own; with it,
    /// duplicates and deliveries without events are acknowledged the same.
    fn ack_body(&self) -> Option<Value> {
        None
    }

    /// Checks that the connection's credentials work (the admin API's
    /// connection check); the answer describes the account briefly.
    async fn check(&self, _ctx: &CallContext<'_>) -> Result<Value, ActionError> {
        Err(ActionError::Unsupported {
            app: self.app(),
            what: "checking connections".into(),
        })
    }

    /// What the account holds that automations refer to by name (NetHunt
    /// folders and their fields, with suggested values), read live.
    async fn account_catalog(&self, _ctx: &CallContext<'_>) -> Result<Value, ActionError> {
        Err(ActionError::Unsupported {
            app: self.app(),
            what: "reading the account's catalog".into(),
        })
    }

    /// Checks what an automation names in this connection's account (a
    /// trigger's folder and field, an update's field names) against the
    /// live account. Problems are `(path, message)`, paths relative to the
    /// automation. Connectors with a static catalog have nothing to add.
    async fn check_automation(
        &self,
        _ctx: &CallContext<'_>,
        _automation: &crmbridge_mapping::Automation,
        _connection: &str,
    ) -> Result<Vec<(String, String)>, ActionError> {
        Ok(Vec::new())
    }

    /// Whether tick must poll this event kind (it has no webhook, or the
    /// webhook alone could lose changes).
    fn polls(&self, _kind: &str) -> bool {
        false
    }

    /// Which trigger options select what is polled: automations whose
    /// options give the same scope share one poll and one cursor (NetHunt:
    /// folder and field; the watched value is matched at dispatch).
    fn poll_scope(&self, _kind: &str, _options: &BTreeMap<String, Value>) -> Value {
        Value::Null
    }

    /// Whether an event is one a trigger with these options fires on
    /// (NetHunt: the folder, field and value it watches).
    fn trigger_matches(&self, _options: &BTreeMap<String, Value>, _event: &Event) -> bool {
        true
    }

    /// Credentials a connection must carry (names only).
    fn required_credentials(&self) -> &'static [&'static str] {
        &[]
    }

    /// Checks a connection's non-secret settings before they are saved;
    /// every problem at once.
    fn validate_settings(
        &self,
        settings: &Value,
        allow_any_base_url: bool,
    ) -> Result<(), Vec<SettingsError>>;

    /// Verifies and decodes one webhook delivery. Fast and without IO: some
    /// vendors (MoySklad: 1.5 s) give up on slow receivers.
    fn decode_webhook(
        &self,
        connection: ConnectionView<'_>,
        request: &InboundRequest<'_>,
    ) -> Result<Vec<DecodedEvent>, DecodeError>;

    /// Completes an event at dispatch time, e.g. fetches the record a
    /// webhook only pointed at.
    async fn enrich(&self, _ctx: &CallContext<'_>, _event: &mut Event) -> Result<(), ActionError> {
        Ok(())
    }

    /// A key naming the change an (enriched) event reports, when the same
    /// change can reach crmbridge by two paths (webhook and poll): the
    /// engine dispatches one change once.
    fn change_key(&self, _event: &Event) -> Option<String> {
        None
    }

    /// Finds an existing record for a create step's dedupe keys.
    async fn find(
        &self,
        _ctx: &CallContext<'_>,
        action: &str,
        _keys: &[LookupKey],
    ) -> Result<Option<String>, ActionError> {
        Err(ActionError::Unsupported {
            app: self.app(),
            what: format!("searching for {action}"),
        })
    }

    /// Whether a step of `action` may be sent again after an attempt whose
    /// outcome is unknown (see [`Resend`]). The safe default is
    /// [`Resend::Unsafe`]: a person decides.
    fn resend(&self, _action: &str, _fields: &Map<String, Value>) -> Resend {
        Resend::Unsafe
    }

    /// Performs an action; `target` is the record an update acts on.
    async fn execute(
        &self,
        _ctx: &CallContext<'_>,
        action: &str,
        _fields: &Map<String, Value>,
        _target: Option<&str>,
    ) -> Result<ActionOutput, ActionError> {
        Err(ActionError::Unsupported {
            app: self.app(),
            what: format!("the action {action}"),
        })
    }

    /// Asks the source what changed since `cursor` for a polled event kind
    /// within `scope` (see [`Connector::poll_scope`]).
    async fn poll(
        &self,
        _ctx: &CallContext<'_>,
        kind: &str,
        _scope: &Value,
        _cursor: Option<&Value>,
        _now: DateTime<Utc>,
    ) -> Result<PollBatch, ActionError> {
        Err(ActionError::Unsupported {
            app: self.app(),
            what: format!("polling {kind}"),
        })
    }
}

/// App id → connector.
#[derive(Clone, Default)]
pub struct Registry {
    connectors: BTreeMap<&'static str, Arc<dyn Connector>>,
    catalog: StaticCatalog,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.connectors.keys()).finish()
    }
}

impl Registry {
    /// Every connector crmbridge ships.
    pub fn builtin() -> Self {
        let mut registry = Self::default();
        registry.register(Arc::new(generic::GenericJson));
        registry.register(Arc::new(calltouch::Calltouch));
        registry.register(Arc::new(moysklad::MoySklad::default()));
        registry.register(Arc::new(retailcrm::RetailCrm));
        registry.register(Arc::new(nethunt::NetHunt));
        registry.register(Arc::new(worksection::Worksection));
        registry
    }

    pub fn register(&mut self, connector: Arc<dyn Connector>) {
        let catalog = connector.catalog();
        self.catalog = std::mem::take(&mut self.catalog).merge(catalog);
        self.connectors.insert(connector.app(), connector);
    }

    /// The catalog of every registered connector, for validation.
    pub fn catalog(&self) -> &StaticCatalog {
        &self.catalog
    }

    pub fn get(&self, app: &str) -> Option<&Arc<dyn Connector>> {
        self.connectors.get(app)
    }

    pub fn apps(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.connectors.keys().copied()
    }
}
