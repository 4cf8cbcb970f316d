//! Connectors: everything crmbridge knows about one service lives in one
//! module here, behind the [`Connector`] trait, so the engine never learns a
//! vendor's payload shape, URL or quirk.
//!
//! A connector turns an inbound webhook into normalised events
//! ([`DecodedEvent`]); the engine adds the envelope (ids, tenant, times).
//! The [`Registry`] maps an app id (`generic`, `calltouch`, …) to its
//! connector.

pub mod generic;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use crmbridge_mapping::Subject;

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

pub trait Connector: Send + Sync {
    /// The app id, e.g. `generic`; the first segment of its event kinds.
    fn app(&self) -> &'static str;

    /// Checks a connection's non-secret settings before they are saved;
    /// every problem at once.
    fn validate_settings(&self, settings: &serde_json::Value) -> Result<(), Vec<SettingsError>>;

    /// Verifies and decodes one webhook delivery.
    fn decode_webhook(
        &self,
        connection: ConnectionView<'_>,
        request: &InboundRequest<'_>,
    ) -> Result<Vec<DecodedEvent>, DecodeError>;
}

/// App id → connector.
#[derive(Clone, Default)]
pub struct Registry {
    connectors: BTreeMap<&'static str, Arc<dyn Connector>>,
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
        registry
    }

    pub fn register(&mut self, connector: Arc<dyn Connector>) {
        self.connectors.insert(connector.app(), connector);
    }

    pub fn get(&self, app: &str) -> Option<&Arc<dyn Connector>> {
        self.connectors.get(app)
    }

    pub fn apps(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.connectors.keys().copied()
    }
}
