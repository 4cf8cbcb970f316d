//! What a vendor can do, one trait per capability, and the [`Registry`] of
//! vendors. A vendor declares only what it does: a vendor without a poller
//! has no `poller`, so the engine refuses a polled trigger on it when the
//! automation is saved instead of failing at 3 a.m. with "unsupported".

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use crmbridge_mapping::{Automation, Event, EventKindSpec, LookupKey, StaticCatalog};
use serde_json::{Map, Value};

use crate::{
    ActionError, ActionOutput, CallContext, ConnectionView, DecodeError, DecodedEvent, ImportPage,
    InboundRequest, PollBatch, Resend, Sent, SettingsError,
};

/// What every vendor has: the credentials a connection needs and the check
/// of its non-secret settings.
pub trait VendorSettings: Send + Sync {
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

    /// Checks the credentials the settings call for (a signing secret a
    /// setting requires), naming each problem by credential; the values
    /// never appear in the messages.
    fn validate_credentials(
        &self,
        _settings: &Value,
        _credentials: &BTreeMap<String, String>,
    ) -> Result<(), Vec<SettingsError>> {
        Ok(())
    }
}

/// A vendor that posts webhooks to crmbridge.
pub trait WebhookSource: Send + Sync {
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

    /// A body the sender reads from the acknowledgement of this very
    /// request (Planfix's `{"chatId","contactId"}`), replacing crmbridge's
    /// own; worked out from the request alone, so a redelivery gets the
    /// same answer.
    fn reply(&self, _request: &crate::InboundRequest<'_>) -> Option<Value> {
        None
    }

    /// The credential a sender keys its signatures with (HubSpot: the
    /// app's `client_secret`); the decoder receives it as
    /// [`ConnectionView::signing_secret`].
    fn signing_credential(&self) -> Option<&'static str> {
        None
    }

    /// Verifies and decodes one webhook delivery. Fast and without IO: some
    /// vendors (MoySklad: 1.5 s) give up on slow receivers.
    fn decode_webhook(
        &self,
        connection: ConnectionView<'_>,
        request: &InboundRequest<'_>,
    ) -> Result<Vec<DecodedEvent>, DecodeError>;
}

/// What a write set on one record, so that the change the vendor reports
/// back for it is known as crmbridge's own and not sent back (two-way sync
/// without echoes).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Written {
    /// The record type, as the vendor's events name their subject
    /// (`contact`).
    pub entity: String,
    pub id: String,
    /// The write made the record.
    pub created: bool,
    /// Property → value, as text, as the vendor's events report them.
    pub properties: Vec<(String, String)>,
    /// The record's version after the write, when the vendor's answer
    /// names one (MoySklad's `updated`): a report of that version is ours
    /// whatever it shows, and a report of another version is not.
    pub version: Option<String>,
}

/// The change an event reports, to compare with what crmbridge wrote.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReportedChange {
    /// The event reports the record's creation.
    pub created: bool,
    /// Property → value, as text.
    pub properties: Vec<(String, String)>,
    /// What the values are.
    pub reading: Reading,
    /// The record's version the event shows, when the vendor has one (see
    /// [`Written::version`]).
    pub version: Option<String>,
}

/// How a change's values were read, which decides how they are compared
/// with what crmbridge wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reading {
    /// Each value is what the change set, and every listed property
    /// changed (HubSpot reports each property change with its value).
    /// Reports may come in any order.
    #[default]
    Values,
    /// The listed properties changed; the values were read after the
    /// change (MoySklad's webhook names the fields and the record is
    /// fetched at dispatch), so a later write may have overtaken an
    /// earlier one, which is then never reported on its own.
    Current,
    /// The record as read now, without knowing which properties changed (a
    /// poll): only the properties crmbridge wrote and has not seen back
    /// are compared. A person's edit of another property at the same
    /// moment cannot be told apart from it.
    Snapshot,
}

/// A vendor whose events (by webhook or by poll) trigger automations.
#[async_trait]
pub trait EventSource: Send + Sync {
    /// The event kinds it reports, for validating automations. Empty for
    /// sources whose kinds are the user's (generic JSON).
    fn event_kinds(&self) -> Vec<EventKindSpec>;

    /// Whether an event is one a trigger with these options fires on
    /// (NetHunt: the folder, field and value it watches).
    fn trigger_matches(&self, _options: &BTreeMap<String, Value>, _event: &Event) -> bool {
        true
    }

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

    /// The conversation an event belongs to, when its events must be
    /// handled one after another in the order they were accepted (a
    /// chat's messages): events with the same key on one connection wait
    /// for each other, other events do not.
    fn sequence_key(&self, _event: &Event) -> Option<String> {
        None
    }

    /// For an event that only makes sense in a conversation that already
    /// began (a rating, a chat closed): that conversation's
    /// [`EventSource::sequence_key`], and the body field that names it.
    /// Ingest refuses such an event (422, naming the field) when no event
    /// of the conversation was ever accepted.
    fn continues_sequence(&self, _event: &Event) -> Option<(String, &'static str)> {
        None
    }

    /// What the event says changed on its subject, for vendors whose
    /// records crmbridge also writes: a change that only repeats what
    /// crmbridge wrote is its own echo.
    fn reported_change(&self, _event: &Event) -> Option<ReportedChange> {
        None
    }
}

/// A vendor that tick asks what changed.
#[async_trait]
pub trait Poller: Send + Sync {
    /// Whether tick must poll this event kind (it has no webhook, or the
    /// webhook alone could lose changes).
    fn polls(&self, kind: &str) -> bool;

    /// Which trigger options select what is polled: automations whose
    /// options give the same scope share one poll and one cursor (NetHunt:
    /// folder and field; the watched value is matched at dispatch).
    fn poll_scope(&self, _kind: &str, _options: &BTreeMap<String, Value>) -> Value {
        Value::Null
    }

    /// What changed since `cursor` for a polled event kind within `scope`.
    async fn poll(
        &self,
        ctx: &CallContext<'_>,
        kind: &str,
        scope: &Value,
        cursor: Option<&Value>,
        now: DateTime<Utc>,
    ) -> Result<PollBatch, ActionError>;
}

/// A vendor whose existing records can be walked once, page by page, when
/// an integration is activated (the import that comes before live sync).
#[async_trait]
pub trait Importer: Send + Sync {
    /// The event kinds an import walks, in the order it walks them
    /// (contacts before the notes that hang on them).
    fn import_kinds(&self) -> Vec<&'static str>;

    /// One page of existing records of `kind` as events, from `cursor`
    /// (`None`: the first page). The events' `source_id`s are stable for a
    /// record, so a page read twice (a crash before its cursor was saved)
    /// names the same events.
    async fn import_page(
        &self,
        ctx: &CallContext<'_>,
        kind: &str,
        cursor: Option<&Value>,
    ) -> Result<ImportPage, ActionError>;
}

/// One action, declared once: its catalog entry, whether an attempt with an
/// unknown outcome may be sent again, and how it runs.
#[async_trait]
pub trait Action: Send + Sync {
    /// Its id, kind, fields and output (`searchable` is set by the
    /// registry from [`Action::lookup`]).
    fn spec(&self) -> crmbridge_mapping::ActionSpec;

    /// Whether a step may be sent again after an attempt whose outcome is
    /// unknown (see [`Resend`]).
    fn resend(&self, fields: &Map<String, Value>) -> Resend;

    /// Performs the action; `target` is the record an update acts on.
    async fn execute(
        &self,
        ctx: &CallContext<'_>,
        fields: &Map<String, Value>,
        target: Option<&str>,
    ) -> Result<ActionOutput, ActionError>;

    /// True for an action that only reads (a look-up such as
    /// `zoho.caller.find`): a dry run may perform it when asked for reads.
    fn reads_only(&self) -> bool {
        false
    }

    /// How a find-or-create step finds an existing record, if the vendor
    /// can search for this action's records.
    fn lookup(&self) -> Option<&dyn Lookup> {
        None
    }

    /// For a [`Resend::ReadBack`] action: whether an attempt with these
    /// fields, begun at `since` (by our clock), reached the vendor. Asked
    /// only after an attempt whose outcome is unknown.
    async fn find_sent(
        &self,
        _ctx: &CallContext<'_>,
        _fields: &Map<String, Value>,
        _since: DateTime<Utc>,
    ) -> Result<Sent, ActionError> {
        Ok(Sent::Unknown(
            "this action cannot read back what it sent".into(),
        ))
    }

    /// What a successful call set on the record, in the terms of the
    /// vendor's own change events (see [`Written`]).
    fn written(&self, _fields: &Map<String, Value>, _output: &ActionOutput) -> Option<Written> {
        None
    }

    /// What an update of `target` will set, known before the call. The
    /// engine remembers it before sending (and forgets it if the vendor
    /// refuses), so a change event that arrives before the vendor's answer
    /// is processed is still known as crmbridge's own. An action that
    /// answers this is not asked [`Action::written`].
    fn will_write(&self, _fields: &Map<String, Value>, _target: &str) -> Option<Written> {
        None
    }
}

/// Finds an existing record by a create step's dedupe keys.
#[async_trait]
pub trait Lookup: Send + Sync {
    async fn find(
        &self,
        ctx: &CallContext<'_>,
        keys: &[LookupKey],
    ) -> Result<Option<String>, ActionError>;
}

/// A vendor whose credentials can be checked and whose account can be asked
/// about what an automation names.
#[async_trait]
pub trait Account: Send + Sync {
    /// Checks that the connection's credentials work (the admin API's
    /// connection check); the answer describes the account briefly.
    async fn check(&self, ctx: &CallContext<'_>) -> Result<Value, ActionError>;

    /// Checks what an automation names in this connection's account (a
    /// trigger's folder and field, an update's field names) against the
    /// live account. Problems are `(path, message)`, paths relative to the
    /// automation. Vendors with a static catalog have nothing to add.
    async fn check_automation(
        &self,
        _ctx: &CallContext<'_>,
        _automation: &Automation,
        _connection: &str,
    ) -> Result<Vec<(String, String)>, ActionError> {
        Ok(Vec::new())
    }
}

/// A vendor whose account holds what automations refer to by name (NetHunt
/// folders and their fields, Worksection projects), read live.
#[async_trait]
pub trait LiveCatalog: Send + Sync {
    async fn account_catalog(&self, ctx: &CallContext<'_>) -> Result<Value, ActionError>;
}

/// One vendor: its app id and the capabilities it has.
#[derive(Clone)]
pub struct Vendor {
    pub app: &'static str,
    pub settings: Arc<dyn VendorSettings>,
    pub webhooks: Option<Arc<dyn WebhookSource>>,
    pub events: Option<Arc<dyn EventSource>>,
    pub poller: Option<Arc<dyn Poller>>,
    pub importer: Option<Arc<dyn Importer>>,
    pub account: Option<Arc<dyn Account>>,
    pub live_catalog: Option<Arc<dyn LiveCatalog>>,
    /// OAuth 2.0 sign-in; `None` for vendors with API keys.
    pub oauth: Option<Arc<dyn crate::oauth::OAuthApp>>,
    actions: BTreeMap<String, Arc<dyn Action>>,
}

impl std::fmt::Debug for Vendor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vendor")
            .field("app", &self.app)
            .field("webhooks", &self.webhooks.is_some())
            .field("events", &self.events.is_some())
            .field("poller", &self.poller.is_some())
            .field("importer", &self.importer.is_some())
            .field("account", &self.account.is_some())
            .field("live_catalog", &self.live_catalog.is_some())
            .field("oauth", &self.oauth.is_some())
            .field("actions", &self.actions.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Vendor {
    pub fn new(app: &'static str, settings: Arc<dyn VendorSettings>) -> Self {
        Self {
            app,
            settings,
            webhooks: None,
            events: None,
            poller: None,
            importer: None,
            account: None,
            live_catalog: None,
            oauth: None,
            actions: BTreeMap::new(),
        }
    }

    pub fn webhooks(mut self, source: Arc<dyn WebhookSource>) -> Self {
        self.webhooks = Some(source);
        self
    }

    pub fn events(mut self, source: Arc<dyn EventSource>) -> Self {
        self.events = Some(source);
        self
    }

    pub fn poller(mut self, poller: Arc<dyn Poller>) -> Self {
        self.poller = Some(poller);
        self
    }

    pub fn importer(mut self, importer: Arc<dyn Importer>) -> Self {
        self.importer = Some(importer);
        self
    }

    pub fn account(mut self, account: Arc<dyn Account>) -> Self {
        self.account = Some(account);
        self
    }

    pub fn live_catalog(mut self, catalog: Arc<dyn LiveCatalog>) -> Self {
        self.live_catalog = Some(catalog);
        self
    }

    pub fn oauth(mut self, app: Arc<dyn crate::oauth::OAuthApp>) -> Self {
        self.oauth = Some(app);
        self
    }

    pub fn action(mut self, action: Arc<dyn Action>) -> Self {
        self.actions.insert(action.spec().id, action);
        self
    }

    /// The action with this id, if the vendor declares it.
    pub fn find_action(&self, id: &str) -> Option<&Arc<dyn Action>> {
        self.actions.get(id)
    }

    pub fn actions(&self) -> impl Iterator<Item = &Arc<dyn Action>> {
        self.actions.values()
    }

    /// Whether tick polls this event kind.
    pub fn polls(&self, kind: &str) -> bool {
        self.poller.as_ref().is_some_and(|p| p.polls(kind))
    }

    /// Its event kinds and actions, derived from the declarations.
    pub fn catalog(&self) -> StaticCatalog {
        let mut catalog = StaticCatalog::new();
        for spec in self.events.iter().flat_map(|e| e.event_kinds()) {
            catalog = catalog.with_event(spec);
        }
        for action in self.actions.values() {
            let mut spec = action.spec();
            spec.searchable = action.lookup().is_some();
            catalog = catalog.with_action(spec);
        }
        catalog
    }
}

/// App id → vendor.
#[derive(Clone, Default)]
pub struct Registry {
    vendors: BTreeMap<&'static str, Vendor>,
    /// Derived on first use: every action's spec is built for it, which a
    /// function's cold start should not pay when its requests never ask.
    catalog: OnceLock<StaticCatalog>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.vendors.keys()).finish()
    }
}

impl Registry {
    /// Every vendor crmbridge ships.
    pub fn builtin() -> Self {
        let mut registry = Self::default();
        for vendor in crate::vendors::all() {
            registry.register(vendor);
        }
        registry
    }

    pub fn register(&mut self, vendor: Vendor) {
        self.vendors.insert(vendor.app, vendor);
        self.catalog = OnceLock::new();
    }

    /// The catalog of every registered vendor, for validation.
    pub fn catalog(&self) -> &StaticCatalog {
        self.catalog.get_or_init(|| {
            self.vendors
                .values()
                .fold(StaticCatalog::new(), |catalog, vendor| {
                    catalog.merge(vendor.catalog())
                })
        })
    }

    pub fn get(&self, app: &str) -> Option<&Vendor> {
        self.vendors.get(app)
    }

    /// An action by its full id (`app.entity.verb`).
    pub fn action(&self, id: &str) -> Option<&Arc<dyn Action>> {
        let app = id.split('.').next()?;
        self.get(app)?.find_action(id)
    }

    pub fn apps(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.vendors.keys().copied()
    }

    pub fn vendors(&self) -> impl Iterator<Item = &Vendor> + '_ {
        self.vendors.values()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use crmbridge_mapping::Catalog as _;

    use super::*;

    #[test]
    fn the_catalog_is_derived_from_what_each_action_declares() {
        let registry = Registry::builtin();
        let catalog = registry.catalog();
        for vendor in registry.vendors() {
            for action in vendor.actions() {
                let spec = catalog.action(&action.spec().id).unwrap();
                assert_eq!(spec.searchable, action.lookup().is_some(), "{}", spec.id);
                assert!(
                    spec.id.starts_with(&format!("{}.", vendor.app)),
                    "{}",
                    spec.id
                );
            }
        }
        // Only what can search is searchable.
        assert!(
            catalog
                .action("moysklad.counterparty.create")
                .unwrap()
                .searchable
        );
        assert!(
            catalog
                .action("retailcrm.customer.create")
                .unwrap()
                .searchable
        );
        assert!(!catalog.action("nethunt.record.create").unwrap().searchable);
        assert!(!catalog.action("calltouch.deal.create").unwrap().searchable);
        // A vendor declares only what it does.
        let generic = registry.get("generic").unwrap();
        assert!(generic.webhooks.is_some() && generic.poller.is_none());
        assert!(generic.account.is_none() && generic.actions().next().is_none());
        assert!(
            !registry
                .get("calltouch")
                .unwrap()
                .polls("calltouch.call.completed")
        );
        assert!(
            registry
                .get("nethunt")
                .unwrap()
                .polls("nethunt.record.field_changed")
        );
    }
}
