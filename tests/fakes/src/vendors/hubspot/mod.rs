//! Fake HubSpot CRM API v3 (`https://api.hubapi.com`): contacts and notes
//! under `/crm/v3/objects/…`, with the app webhooks HubSpot sends. OAuth
//! (consent, tokens) is a [`crate::oauth::FakeOAuth`] started with
//! [`crate::oauth::OAuthConfig::hubspot`]; this fake checks the access
//! tokens it issued through a [`TokenChecker`], and also accepts static
//! private-app tokens ([`FakeHubSpot::add_private_app_token`]).
//!
//! Mirrors (facts: `shared/connectors/src/vendors/hubspot/API.md`):
//! * auth `Authorization: Bearer <token>` (scheme case-insensitive): missing,
//!   another scheme, unknown or revoked → 401 `INVALID_AUTHENTICATION`
//!   (`Authentication credentials not found. …`); a token the checker finds
//!   expired → 401 `EXPIRED_AUTHENTICATION`. Error bodies are
//!   `{"status":"error","message","correlationId","category"[, "errors",
//!   "context"]}`. The request log redacts `authorization`.
//! * objects `contacts` (type id `0-1`) and `notes` (`0-46`) only; any other
//!   object type → 400 `Unable to infer object type from: …`; paths outside
//!   `/crm/v3/objects/` → 404; a method a path does not take → 405.
//! * `POST /crm/v3/objects/{type}` `{"properties","associations"}` → 201;
//!   `GET …/{id}?properties=a,b&idProperty=email&associations=contacts&archived=`;
//!   `PATCH …/{id}` `{"properties"}` (`idProperty=email` too; `""` or `null`
//!   clears a value); `DELETE …/{id}` → 204 (archives); `GET
//!   …?limit=…&after=…&properties=…&associations=…&archived=` (limit 1–100,
//!   default 10, cursor `paging.next.after` = the next id);
//!   `PUT|DELETE …/{id}/associations/{toType}/{toId}/{typeId|label}`.
//! * record shape `{"id","properties","createdAt","updatedAt","archived"}`;
//!   every property value is a string; `hs_object_id`, the created and
//!   modified dates (`createdate` / `lastmodifieddate` on contacts,
//!   `hs_createdate` / `hs_lastmodifieddate` on notes) are always returned
//!   and read-only. Reads without `properties` return the default set
//!   (contacts: `createdate, email, firstname, hs_object_id,
//!   lastmodifieddate, lastname`, missing ones as `null`); create, update and
//!   the accessors return every stored property.
//! * ids: numeric strings from [`FIRST_ID`] (above 2³², so a client that
//!   parses them as 32-bit integers fails), one sequence for both types.
//! * properties: contacts know [`CONTACT_PROPERTIES`], notes
//!   [`NOTE_PROPERTIES`], plus any added with [`FakeHubSpot::add_property`].
//!   Unknown → 400 `VALIDATION_ERROR` `PROPERTY_DOESNT_EXIST`, read-only →
//!   `READ_ONLY_VALUE`, a bad e-mail → `INVALID_EMAIL`, a `lifecyclestage`
//!   outside HubSpot's stages or a non-numeric `hubspot_owner_id` →
//!   `INVALID_OPTION`; every bad property is listed in `errors[]` with
//!   `context.propertyName: [name]`, and in `message` as HubSpot's
//!   `Property values were not valid: [...]`.
//! * contacts: e-mail unique (case-insensitive, archived contacts excluded):
//!   a create, or an update changing the e-mail to another contact's → 409
//!   `CONFLICT` `Contact already exists. Existing ID: <id>`; a create needs
//!   one of `email`, `firstname`, `lastname` (else 400).
//! * notes: `hs_timestamp` required on create (ms epoch or ISO-8601; stored
//!   as ISO-8601 UTC), `hs_note_body` ≤ [`MAX_NOTE_BODY`] characters;
//!   `associations: [{"to":{"id"},"types":[{"associationCategory":
//!   "HUBSPOT_DEFINED","associationTypeId":202}]}]` links a note to a contact
//!   (201 links a contact to a note); an unknown target → 400. Reading with
//!   `associations=contacts` adds `"associations":{"contacts":{"results":
//!   [{"id","type":"note_to_contact"}]}}`.
//! * `POST …/search`: `filterGroups` (OR of ANDs, ≤ 5 groups, ≤ 10 filters a
//!   group, ≤ 25 in all) with `EQ NEQ LT LTE GT GTE BETWEEN IN NOT_IN
//!   HAS_PROPERTY NOT_HAS_PROPERTY CONTAINS_TOKEN NOT_CONTAINS_TOKEN`, the
//!   pseudo-property `associations.contact` on notes (`associations.note` on
//!   contacts), `query`, one `sorts` entry, `properties`, `limit` (≤ 200,
//!   default 10), `after` (an offset); at most [`SEARCH_RESULT_CAP`] results
//!   can be paged through (past them → 400). → `{"total","results",
//!   "paging":{"next":{"after"}}}` (`paging` absent on the last page).
//!   [`FakeHubSpot::set_index_lag`] models the search index delay
//!   deterministically: records created or updated while it is on are left
//!   out of search until [`FakeHubSpot::reindex`].
//! * batches `…/batch/create|update|upsert|read|archive`, ≤ [`MAX_BATCH_INPUTS`]
//!   inputs (more, or none → 400): `{"status":"COMPLETE","results",
//!   "startedAt","completedAt"}`, 201 for create, 200 otherwise, 207 with
//!   `numErrors` and `errors[]` (`{"status":"error","category","message",
//!   "context"}`) when some inputs failed. Batch create is all-or-nothing —
//!   the first failure is the whole answer (409, 400) and nothing is written —
//!   unless an input carries an `objectWriteTraceId`, which turns on
//!   multi-status (each error's `context.objectWriteTraceId`). Upsert (contacts,
//!   `idProperty: "email"`) answers `"new": true|false` per result; the same
//!   id twice in an update or upsert → 400. Batch read reports unknown ids in
//!   one `OBJECT_NOT_FOUND` error with `context.ids`.
//! * rate limit: a rolling 10-second window per token
//!   ([`FakeHubSpot::set_rate_limit`], default [`DEFAULT_RATE_LIMIT`]); over
//!   it → 429 `{"status":"error","message":"You have reached your
//!   ten_secondly_rolling limit.","errorType":"RATE_LIMIT","correlationId",
//!   "policyName":"TEN_SECONDLY_ROLLING"}`. Every answer to an authenticated
//!   request carries `X-HubSpot-RateLimit-Max`, `-Remaining`,
//!   `-Interval-Milliseconds: 10000` while a limit is set. Refused requests
//!   do not count in the window.
//! * injected faults: `TooManyRequests` → that same 429 (with the headers,
//!   remaining 0), `ServerError` → 502 `{"status":"error","message":"Bad
//!   Gateway","correlationId","category":"BAD_GATEWAY"}`.
//! * webhooks: once [`FakeHubSpot::subscribe`] names the app's target URL,
//!   **every** write — through the API too, which is what a two-way sync must
//!   not echo — queues events: a contact's creation → `contact.creation`, each
//!   property that changes → one `contact.propertyChange` (`propertyName`,
//!   `propertyValue`; `""` when cleared), archiving → `contact.deletion`;
//!   notes use the generic `object.creation` / `object.propertyChange` /
//!   `object.deletion` with `objectTypeId: "0-46"`. Events carry `eventId`,
//!   `subscriptionId`, `portalId` ([`PORTAL_ID`]), `appId` ([`APP_ID`]),
//!   `occurredAt` (ms), `subscriptionType`, `attemptNumber` (from 0),
//!   `objectId` (a number), `changeSource` (`API` for API writes, `CRM_UI`
//!   for the `*_as_user` fixtures), `sourceId` (the app id / `userId:…`),
//!   and `changeFlag` (`CREATED`, `DELETED`) on creations and deletions.
//!   [`FakeHubSpot::deliver_webhooks`] makes one delivery pass: JSON arrays
//!   of up to [`WEBHOOK_BATCH`] events, `Content-Type: application/json`,
//!   `X-HubSpot-Signature-v3` = base64(HMAC-SHA256(client secret, `POST` +
//!   target URL + body + timestamp)) ([`signature_v3`]),
//!   `X-HubSpot-Request-Timestamp` (ms), and the legacy `X-HubSpot-Signature`
//!   (hex SHA-256 of secret + body) with `X-HubSpot-Signature-Version: v1`.
//!   A batch that got no 2xx is queued again with `attemptNumber + 1`
//!   (5xx, 429, other statuses, timeouts after [`WEBHOOK_TIMEOUT`],
//!   connection errors) up to [`WEBHOOK_MAX_RETRIES`] retries; 400, 401,
//!   403, 404, 405 are not retried. Knobs: duplicate sends, a wrong signing
//!   secret, stale timestamps.
//!
//! Uncertain upstream (the fake's choice in brackets):
//! * the index lag is reported as up to ~30 s; an updated record may really
//!   be served from a stale index [the fake hides it until `reindex`];
//! * whether a new contact may have none of email/firstname/lastname
//!   [refused with 400 `Error creating CONTACT. Some required properties
//!   were not set.` and `context.properties`]; the same shape for a note
//!   without `hs_timestamp`;
//! * whether e-mails are lower-cased on store [stored as sent, compared
//!   case-insensitively]; whether a cleared value reads `""` or `null`
//!   [`null`]; values sent as numbers or booleans [turned into strings;
//!   objects and arrays → 400 `INVALID_PROPERTY_VALUE`]; the error codes for
//!   a bad `hs_timestamp` [`INVALID_DATETIME`], a long body
//!   [`INVALID_STRING_LENGTH`], an unknown association target
//!   [400 `VALIDATION_ERROR`];
//! * batch multi-status beyond create [update and upsert are always
//!   partial, 207; when every input failed the answer is still 207 with no
//!   results]; the order of batch results [input order; HubSpot does not
//!   promise it — [`FakeHubSpot::set_reverse_batch_results`] reverses them];
//! * search: the page-size maximum [200]; how `EQ` treats case [insensitive;
//!   numbers and dates compare as numbers]; `NEQ` on a record without the
//!   property [matches]; `CONTAINS_TOKEN` tokenisation [the whole value, its
//!   whitespace words or its alphanumeric runs; `*` wildcards match the whole
//!   value or a word]; `query` [a case-insensitive substring of email, names,
//!   phones, company / the note body]; default order [by id];
//! * the `N` of `The OAuth token used to make this call expired N
//!   second(s) ago.` [always 1: the token checker does not say when];
//! * the search-specific per-second limit and daily limits [not modelled];
//!   the status of an injected server error [502];
//! * the API-write `sourceId` [the app id as a string] and a UI user's
//!   [`userId:45678`]; whether a creation also fires `propertyChange` for the
//!   properties it set [yes — [`FakeHubSpot::set_property_changes_on_create`]
//!   turns it off]; whether a write that changes nothing bumps
//!   `lastmodifieddate` [no, and no event]; webhook batch size [100]; which
//!   statuses HubSpot retries besides 5xx and 429 [every non-2xx except
//!   400, 401, 403, 404, 405].
//!
//! Not modelled: companies, deals and other objects, the v4 associations
//! API, merges and restores, property history, scopes (403
//! `MISSING_SCOPES`), the webhook settings API (one target URL, every
//! subscription type at once), association-change events.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use http::{Method, StatusCode};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::FakeError;
use crate::oauth::{TokenChecker, TokenState};
use crate::server::{self, Fault, Req, Resp, Server, Vendor, common_methods, lock};
use crate::util::uuid_v4;

/// The HubSpot account ("portal") id the events carry.
pub const PORTAL_ID: u64 = 62515;
/// The app id the events carry (and the `sourceId` of API writes).
pub const APP_ID: u64 = 54321;
/// The HubSpot user the `*_as_user` fixtures act as (`sourceId: userId:…`).
pub const UI_USER_ID: u64 = 45678;
/// The first record id: above 2³².
pub const FIRST_ID: u64 = 37_700_000_001;
/// Requests per token per rolling 10 seconds, by default.
pub const DEFAULT_RATE_LIMIT: usize = 100;
/// The rolling window of the rate limit.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Inputs a batch call may carry.
pub const MAX_BATCH_INPUTS: usize = 100;
/// The largest `limit` of a list call.
pub const MAX_LIST_LIMIT: usize = 100;
/// The largest `limit` of a search.
pub const MAX_SEARCH_LIMIT: usize = 200;
/// The most results a search can page through.
pub const SEARCH_RESULT_CAP: usize = 10_000;
/// The longest `hs_note_body`, in characters.
pub const MAX_NOTE_BODY: usize = 65_536;
/// Events per webhook request.
pub const WEBHOOK_BATCH: usize = 100;
/// Retries of a failed webhook batch (so at most `attemptNumber` 10).
pub const WEBHOOK_MAX_RETRIES: u64 = 10;
/// How long the webhook sender waits for the receiver.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// `associationTypeId` note → contact (HUBSPOT_DEFINED).
pub const NOTE_TO_CONTACT: u64 = 202;
/// `associationTypeId` contact → note (HUBSPOT_DEFINED).
pub const CONTACT_TO_NOTE: u64 = 201;
/// The contact properties the fake knows from the start.
pub const CONTACT_PROPERTIES: &[&str] = &[
    "email",
    "firstname",
    "lastname",
    "phone",
    "mobilephone",
    "company",
    "jobtitle",
    "lifecyclestage",
    "hubspot_owner_id",
];
/// The note properties the fake knows from the start.
pub const NOTE_PROPERTIES: &[&str] = &[
    "hs_timestamp",
    "hs_note_body",
    "hubspot_owner_id",
    "hs_attachment_ids",
];

const OBJECTS_PREFIX: &str = "/crm/v3/objects";
const LIFECYCLE_STAGES: &[&str] = &[
    "subscriber",
    "lead",
    "marketingqualifiedlead",
    "salesqualifiedlead",
    "opportunity",
    "customer",
    "evangelist",
    "other",
];
/// Receiver statuses HubSpot does not retry.
const NO_RETRY: &[u16] = &[400, 401, 403, 404, 405];
const AUTH_MESSAGE: &str = "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Contact,
    Note,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        match s.to_ascii_lowercase().as_str() {
            "contacts" | "contact" | "0-1" => Some(Kind::Contact),
            "notes" | "note" | "0-46" => Some(Kind::Note),
            _ => None,
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Kind::Contact => "contacts",
            Kind::Note => "notes",
        }
    }

    fn upper(self) -> &'static str {
        match self {
            Kind::Contact => "CONTACT",
            Kind::Note => "NOTE",
        }
    }

    fn type_id(self) -> &'static str {
        match self {
            Kind::Contact => "0-1",
            Kind::Note => "0-46",
        }
    }

    fn other(self) -> Kind {
        match self {
            Kind::Contact => Kind::Note,
            Kind::Note => Kind::Contact,
        }
    }

    fn created_prop(self) -> &'static str {
        match self {
            Kind::Contact => "createdate",
            Kind::Note => "hs_createdate",
        }
    }

    fn modified_prop(self) -> &'static str {
        match self {
            Kind::Contact => "lastmodifieddate",
            Kind::Note => "hs_lastmodifieddate",
        }
    }

    fn builtin(self) -> &'static [&'static str] {
        match self {
            Kind::Contact => CONTACT_PROPERTIES,
            Kind::Note => NOTE_PROPERTIES,
        }
    }

    /// What a read without `properties` returns.
    fn defaults(self) -> &'static [&'static str] {
        match self {
            Kind::Contact => &[
                "createdate",
                "email",
                "firstname",
                "hs_object_id",
                "lastmodifieddate",
                "lastname",
            ],
            Kind::Note => &["hs_createdate", "hs_lastmodifieddate", "hs_object_id"],
        }
    }

    fn system(self) -> [&'static str; 3] {
        ["hs_object_id", self.created_prop(), self.modified_prop()]
    }

    fn is_system(self, name: &str) -> bool {
        self.system().contains(&name)
    }

    fn is_date(self, name: &str) -> bool {
        name == self.created_prop()
            || name == self.modified_prop()
            || (self == Kind::Note && name == "hs_timestamp")
    }

    /// The search pseudo-property naming the associated objects.
    fn assoc_prop(self) -> &'static str {
        match self {
            Kind::Contact => "associations.note",
            Kind::Note => "associations.contact",
        }
    }

    /// The association label from this object to the other type.
    fn assoc_label(self) -> &'static str {
        match self {
            Kind::Contact => "contact_to_note",
            Kind::Note => "note_to_contact",
        }
    }

    fn assoc_type_id(self) -> u64 {
        match self {
            Kind::Contact => CONTACT_TO_NOTE,
            Kind::Note => NOTE_TO_CONTACT,
        }
    }

    fn text_props(self) -> &'static [&'static str] {
        match self {
            Kind::Contact => &[
                "email",
                "firstname",
                "lastname",
                "phone",
                "mobilephone",
                "company",
            ],
            Kind::Note => &["hs_note_body"],
        }
    }
}

/// Who made a write, for the events' `changeSource`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Api,
    Ui,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Api => "API",
            Source::Ui => "CRM_UI",
        }
    }

    fn id(self) -> String {
        match self {
            Source::Api => APP_ID.to_string(),
            Source::Ui => format!("userId:{UI_USER_ID}"),
        }
    }
}

#[derive(Debug, Clone)]
struct Record {
    id: u64,
    /// Values set, never empty (a cleared value is removed).
    props: BTreeMap<String, String>,
    created: DateTime<Utc>,
    updated: DateTime<Utc>,
    archived_at: Option<DateTime<Utc>>,
    /// Visible to search (see [`FakeHubSpot::set_index_lag`]).
    indexed: bool,
}

impl Record {
    fn value(&self, kind: Kind, name: &str) -> Option<String> {
        if name == "hs_object_id" {
            Some(self.id.to_string())
        } else if name == kind.created_prop() {
            Some(iso(self.created))
        } else if name == kind.modified_prop() {
            Some(iso(self.updated))
        } else {
            self.props.get(name).cloned()
        }
    }

    fn live(&self) -> bool {
        self.archived_at.is_none()
    }
}

/// What a change queues as a webhook event.
#[derive(Debug, Clone, Copy)]
enum Change<'a> {
    Creation,
    Property(&'a str, &'a str),
    Deletion,
}

#[derive(Debug)]
struct Data {
    contacts: Vec<Record>,
    notes: Vec<Record>,
    /// (note id, contact id)
    assoc: BTreeSet<(u64, u64)>,
    extra_props: Vec<(Kind, String)>,
    next_id: u64,
    last_ms: i64,
    index_lag: bool,
    reverse_batch: bool,
    private_tokens: Vec<String>,
    rate_limit: Option<usize>,
    windows: HashMap<String, VecDeque<Instant>>,
    api_calls: usize,
    rate_limited: usize,
    target: Option<String>,
    queue: VecDeque<Value>,
    dropped: Vec<Value>,
    next_event_id: u64,
    duplicates: usize,
    sign_secret: Option<String>,
    stale: bool,
    changes_on_create: bool,
}

/// The parts of [`Data`] an all-or-nothing batch restores on failure.
struct Snapshot {
    contacts: Vec<Record>,
    notes: Vec<Record>,
    assoc: BTreeSet<(u64, u64)>,
    next_id: u64,
    queue_len: usize,
    next_event_id: u64,
}

impl Data {
    fn new() -> Self {
        Data {
            contacts: Vec::new(),
            notes: Vec::new(),
            assoc: BTreeSet::new(),
            extra_props: Vec::new(),
            next_id: FIRST_ID,
            last_ms: 0,
            index_lag: false,
            reverse_batch: false,
            private_tokens: Vec::new(),
            rate_limit: Some(DEFAULT_RATE_LIMIT),
            windows: HashMap::new(),
            api_calls: 0,
            rate_limited: 0,
            target: None,
            queue: VecDeque::new(),
            dropped: Vec::new(),
            next_event_id: 1001,
            duplicates: 1,
            sign_secret: None,
            stale: false,
            changes_on_create: true,
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            contacts: self.contacts.clone(),
            notes: self.notes.clone(),
            assoc: self.assoc.clone(),
            next_id: self.next_id,
            queue_len: self.queue.len(),
            next_event_id: self.next_event_id,
        }
    }

    fn restore(&mut self, s: Snapshot) {
        self.contacts = s.contacts;
        self.notes = s.notes;
        self.assoc = s.assoc;
        self.next_id = s.next_id;
        self.queue.truncate(s.queue_len);
        self.next_event_id = s.next_event_id;
    }

    fn records(&self, kind: Kind) -> &Vec<Record> {
        match kind {
            Kind::Contact => &self.contacts,
            Kind::Note => &self.notes,
        }
    }

    fn records_mut(&mut self, kind: Kind) -> &mut Vec<Record> {
        match kind {
            Kind::Contact => &mut self.contacts,
            Kind::Note => &mut self.notes,
        }
    }

    fn position(&self, kind: Kind, id: u64) -> Option<usize> {
        self.records(kind).iter().position(|r| r.id == id)
    }

    fn live_position(&self, kind: Kind, id: u64) -> Option<usize> {
        self.records(kind)
            .iter()
            .position(|r| r.id == id && r.live())
    }

    /// A clock that never repeats a millisecond, so `updatedAt` orders writes.
    fn tick(&mut self) -> DateTime<Utc> {
        let ms = Utc::now().timestamp_millis().max(self.last_ms + 1);
        self.last_ms = ms;
        DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_else(Utc::now)
    }

    fn known(&self, kind: Kind, name: &str) -> bool {
        kind.builtin().contains(&name)
            || self
                .extra_props
                .iter()
                .any(|(k, n)| *k == kind && n == name)
    }

    fn readable(&self, kind: Kind, name: &str) -> bool {
        self.known(kind, name) || kind.is_system(name)
    }

    /// The live contact with this e-mail (case-insensitive), except `not`.
    fn contact_by_email(&self, email: &str, not: Option<u64>) -> Option<u64> {
        let email = email.trim();
        self.contacts
            .iter()
            .filter(|r| r.live() && Some(r.id) != not)
            .find(|r| {
                r.props
                    .get("email")
                    .is_some_and(|e| e.trim().eq_ignore_ascii_case(email))
            })
            .map(|r| r.id)
    }

    /// Live ids of the other type associated with a record.
    fn associated(&self, kind: Kind, id: u64) -> Vec<u64> {
        let ids: Vec<u64> = match kind {
            Kind::Note => self
                .assoc
                .iter()
                .filter(|(n, _)| *n == id)
                .map(|(_, c)| *c)
                .collect(),
            Kind::Contact => self
                .assoc
                .iter()
                .filter(|(_, c)| *c == id)
                .map(|(n, _)| *n)
                .collect(),
        };
        ids.into_iter()
            .filter(|other| self.live_position(kind.other(), *other).is_some())
            .collect()
    }

    fn link(&mut self, kind: Kind, id: u64, other: u64) {
        match kind {
            Kind::Note => self.assoc.insert((id, other)),
            Kind::Contact => self.assoc.insert((other, id)),
        };
    }

    fn unlink(&mut self, kind: Kind, id: u64, other: u64) {
        match kind {
            Kind::Note => self.assoc.remove(&(id, other)),
            Kind::Contact => self.assoc.remove(&(other, id)),
        };
    }

    /// Counts a request against its token's rolling window: the limit and
    /// what remains, `None` without a limit; `Err` is the 429.
    fn admit(&mut self, token: &str) -> Result<Option<(usize, usize)>, Resp> {
        let Some(max) = self.rate_limit else {
            return Ok(None);
        };
        let now = Instant::now();
        let window = self.windows.entry(token.to_owned()).or_default();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= RATE_WINDOW)
        {
            window.pop_front();
        }
        if window.len() >= max {
            self.rate_limited += 1;
            return Err(rate_limited(max));
        }
        window.push_back(now);
        Ok(Some((max, max - window.len())))
    }

    /// Queues one webhook event (only while a target URL is subscribed).
    fn emit(&mut self, kind: Kind, id: u64, change: Change<'_>, source: Source, at: DateTime<Utc>) {
        if self.target.is_none() {
            return;
        }
        let (sub_type, sub_id, flag) = match (kind, change) {
            (Kind::Contact, Change::Creation) => ("contact.creation", 4001, Some("CREATED")),
            (Kind::Contact, Change::Property(..)) => ("contact.propertyChange", 4002, None),
            (Kind::Contact, Change::Deletion) => ("contact.deletion", 4003, Some("DELETED")),
            (Kind::Note, Change::Creation) => ("object.creation", 4004, Some("CREATED")),
            (Kind::Note, Change::Property(..)) => ("object.propertyChange", 4005, None),
            (Kind::Note, Change::Deletion) => ("object.deletion", 4006, Some("DELETED")),
        };
        let mut ev = Map::new();
        ev.insert("eventId".into(), json!(self.next_event_id));
        self.next_event_id += 1;
        ev.insert("subscriptionId".into(), json!(sub_id));
        ev.insert("portalId".into(), json!(PORTAL_ID));
        ev.insert("appId".into(), json!(APP_ID));
        ev.insert("occurredAt".into(), json!(at.timestamp_millis()));
        ev.insert("subscriptionType".into(), json!(sub_type));
        ev.insert("attemptNumber".into(), json!(0));
        ev.insert("objectId".into(), json!(id));
        if kind == Kind::Note {
            ev.insert("objectTypeId".into(), json!(kind.type_id()));
        }
        if let Change::Property(name, value) = change {
            ev.insert("propertyName".into(), json!(name));
            ev.insert("propertyValue".into(), json!(value));
        }
        ev.insert("changeSource".into(), json!(source.name()));
        ev.insert("sourceId".into(), json!(source.id()));
        if let Some(flag) = flag {
            ev.insert("changeFlag".into(), json!(flag));
        }
        self.queue.push_back(Value::Object(ev));
    }

    // -- writes ------------------------------------------------------------

    fn create(
        &mut self,
        kind: Kind,
        props: &Map<String, Value>,
        associations: Option<&Value>,
        source: Source,
    ) -> R<u64> {
        let values: BTreeMap<String, String> = clean_properties(self, kind, props)?
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .collect();
        match kind {
            Kind::Contact => {
                if !["email", "firstname", "lastname"]
                    .iter()
                    .any(|p| values.contains_key(*p))
                {
                    return Err(required_missing(kind, &["email", "firstname", "lastname"]));
                }
                if let Some(email) = values.get("email")
                    && let Some(existing) = self.contact_by_email(email, None)
                {
                    return Err(conflict(existing));
                }
            }
            Kind::Note => {
                if !values.contains_key("hs_timestamp") {
                    return Err(required_missing(kind, &["hs_timestamp"]));
                }
            }
        }
        let targets = parse_associations(kind, associations)?;
        for t in &targets {
            if self.live_position(kind.other(), *t).is_none() {
                return Err(ApiError::validation(format!(
                    "Could not create the associations: {} {t} does not exist",
                    kind.other().upper()
                )));
            }
        }
        let now = self.tick();
        let id = self.next_id;
        self.next_id += 1;
        let indexed = !self.index_lag;
        self.records_mut(kind).push(Record {
            id,
            props: values.clone(),
            created: now,
            updated: now,
            archived_at: None,
            indexed,
        });
        for t in targets {
            self.link(kind, id, t);
        }
        self.emit(kind, id, Change::Creation, source, now);
        if self.changes_on_create {
            for (name, value) in &values {
                self.emit(kind, id, Change::Property(name, value), source, now);
            }
        }
        Ok(id)
    }

    fn update(&mut self, kind: Kind, id: u64, props: &Map<String, Value>, source: Source) -> R<()> {
        let i = self
            .live_position(kind, id)
            .ok_or_else(|| not_found(kind))?;
        let values = clean_properties(self, kind, props)?;
        if kind == Kind::Contact
            && let Some(email) = values.get("email").filter(|e| !e.is_empty())
            && let Some(existing) = self.contact_by_email(email, Some(id))
        {
            return Err(conflict(existing));
        }
        let mut changes: Vec<(String, String)> = Vec::new();
        {
            let rec = &mut self.records_mut(kind)[i];
            for (name, value) in values {
                if value.is_empty() {
                    if rec.props.remove(&name).is_some() {
                        changes.push((name, value));
                    }
                } else if rec.props.get(&name) != Some(&value) {
                    rec.props.insert(name.clone(), value.clone());
                    changes.push((name, value));
                }
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        let now = self.tick();
        let indexed = !self.index_lag;
        {
            let rec = &mut self.records_mut(kind)[i];
            rec.updated = now;
            rec.indexed = indexed;
        }
        for (name, value) in &changes {
            self.emit(kind, id, Change::Property(name, value), source, now);
        }
        Ok(())
    }

    fn archive(&mut self, kind: Kind, id: u64, source: Source) -> R<()> {
        let i = self
            .live_position(kind, id)
            .ok_or_else(|| not_found(kind))?;
        let now = self.tick();
        self.records_mut(kind)[i].archived_at = Some(now);
        self.emit(kind, id, Change::Deletion, source, now);
        Ok(())
    }

    /// Finds a record by id or by a unique property (`idProperty`).
    fn resolve(
        &self,
        kind: Kind,
        raw: &str,
        id_property: Option<&str>,
        archived: bool,
    ) -> R<Option<usize>> {
        let matches = |r: &Record| r.live() != archived;
        match id_property {
            None | Some("hs_object_id") => Ok(raw.trim().parse::<u64>().ok().and_then(|id| {
                self.records(kind)
                    .iter()
                    .position(|r| r.id == id && matches(r))
            })),
            Some("email") if kind == Kind::Contact => Ok(self.contacts.iter().position(|r| {
                matches(r)
                    && r.props
                        .get("email")
                        .is_some_and(|e| e.trim().eq_ignore_ascii_case(raw.trim()))
            })),
            Some(other) => Err(ApiError::validation(format!(
                "{other} is not a unique identifier property of {}",
                kind.plural()
            ))),
        }
    }
}

// ---------------------------------------------------------------------------
// Errors and small helpers

/// A HubSpot error, shaped as a whole answer or as one batch item.
#[derive(Debug, Clone)]
struct ApiError {
    status: StatusCode,
    category: &'static str,
    message: String,
    context: Option<Value>,
    errors: Vec<Value>,
}

type R<T> = Result<T, ApiError>;

impl ApiError {
    fn new(status: StatusCode, category: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            category,
            message: message.into(),
            context: None,
            errors: Vec::new(),
        }
    }

    fn validation(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", message)
    }

    fn with_context(mut self, context: Value) -> Self {
        self.context = Some(context);
        self
    }

    /// The error as a batch item (no correlation id); `extra` is merged into
    /// its context.
    fn item(&self, extra: Option<(&str, Value)>) -> Value {
        let mut context = match &self.context {
            Some(Value::Object(m)) => m.clone(),
            _ => Map::new(),
        };
        if let Some((k, v)) = extra {
            context.insert(k.to_owned(), v);
        }
        let mut v = json!({
            "status": "error",
            "category": self.category,
            "message": self.message,
            "context": context,
        });
        if !self.errors.is_empty() {
            v["errors"] = Value::Array(self.errors.clone());
        }
        v
    }

    fn resp(&self) -> Resp {
        let mut body = json!({
            "status": "error",
            "message": self.message,
            "correlationId": uuid_v4(),
            "category": self.category,
        });
        if let Some(context) = &self.context {
            body["context"] = context.clone();
        }
        if !self.errors.is_empty() {
            body["errors"] = Value::Array(self.errors.clone());
        }
        Resp::json(self.status, &body)
    }
}

fn conflict(existing: u64) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "CONFLICT",
        format!("Contact already exists. Existing ID: {existing}"),
    )
}

fn not_found(kind: Kind) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "OBJECT_NOT_FOUND",
        "resource not found",
    )
    .with_context(json!({"objectType": [kind.upper()]}))
}

fn path_not_found(path: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "OBJECT_NOT_FOUND",
        format!("No route for {path}"),
    )
}

fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "VALIDATION_ERROR",
        "HTTP 405 Method Not Allowed",
    )
}

fn required_missing(kind: Kind, props: &[&str]) -> ApiError {
    ApiError::validation(format!(
        "Error creating {}. Some required properties were not set.",
        kind.upper()
    ))
    .with_context(json!({"properties": props}))
}

fn rate_limited(max: usize) -> Resp {
    Resp::json(
        StatusCode::TOO_MANY_REQUESTS,
        &json!({
            "status": "error",
            "message": "You have reached your ten_secondly_rolling limit.",
            "errorType": "RATE_LIMIT",
            "correlationId": uuid_v4(),
            "policyName": "TEN_SECONDLY_ROLLING",
        }),
    )
    .with_header("x-hubspot-ratelimit-max", &max.to_string())
    .with_header("x-hubspot-ratelimit-remaining", "0")
    .with_header("x-hubspot-ratelimit-interval-milliseconds", "10000")
}

fn with_limit_headers(resp: Resp, limit: Option<(usize, usize)>) -> Resp {
    match limit {
        Some((max, remaining)) => resp
            .with_header("x-hubspot-ratelimit-max", &max.to_string())
            .with_header("x-hubspot-ratelimit-remaining", &remaining.to_string())
            .with_header("x-hubspot-ratelimit-interval-milliseconds", "10000"),
        None => resp,
    }
}

/// ISO-8601 UTC with milliseconds, as HubSpot writes dates.
fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Milliseconds since the epoch of a ms number, an RFC 3339 time or a date.
fn parse_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
}

fn valid_email(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !s.chars().any(char::is_whitespace)
}

/// A JSON scalar as HubSpot's string value; `None` for objects and arrays.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

/// Checks and normalises the `properties` of a write: name → value (`""`
/// clears). Every bad property is reported at once.
fn clean_properties(
    d: &Data,
    kind: Kind,
    props: &Map<String, Value>,
) -> R<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut bad: Vec<(String, &'static str, String)> = Vec::new();
    for (name, raw) in props {
        if kind.is_system(name) {
            bad.push((
                name.clone(),
                "READ_ONLY_VALUE",
                format!("\"{name}\" is a read only property; its value cannot be set."),
            ));
            continue;
        }
        if !d.known(kind, name) {
            bad.push((
                name.clone(),
                "PROPERTY_DOESNT_EXIST",
                format!("Property \"{name}\" does not exist"),
            ));
            continue;
        }
        let Some(value) = scalar(raw) else {
            bad.push((
                name.clone(),
                "INVALID_PROPERTY_VALUE",
                format!("{raw} is not a valid value for property \"{name}\""),
            ));
            continue;
        };
        if value.is_empty() {
            out.insert(name.clone(), value);
            continue;
        }
        let checked = match name.as_str() {
            "email" if kind == Kind::Contact => {
                if valid_email(value.trim()) {
                    Ok(value.trim().to_owned())
                } else {
                    Err(("INVALID_EMAIL", format!("Email address {value} is invalid")))
                }
            }
            "lifecyclestage" if kind == Kind::Contact => {
                let lower = value.trim().to_ascii_lowercase();
                if LIFECYCLE_STAGES.contains(&lower.as_str()) {
                    Ok(lower)
                } else {
                    Err((
                        "INVALID_OPTION",
                        format!(
                            "{value} was not one of the allowed options: [{}]",
                            LIFECYCLE_STAGES.join(", ")
                        ),
                    ))
                }
            }
            "hubspot_owner_id" => {
                if value.trim().chars().all(|c| c.is_ascii_digit()) {
                    Ok(value.trim().to_owned())
                } else {
                    Err((
                        "INVALID_OPTION",
                        format!("{value} was not one of the allowed options"),
                    ))
                }
            }
            "hs_timestamp" if kind == Kind::Note => {
                match parse_ms(&value).and_then(DateTime::<Utc>::from_timestamp_millis) {
                    Some(t) => Ok(iso(t)),
                    None => Err((
                        "INVALID_DATETIME",
                        format!("{value} is not a valid datetime (ms epoch or ISO-8601)"),
                    )),
                }
            }
            "hs_note_body" if kind == Kind::Note => {
                let n = value.chars().count();
                if n <= MAX_NOTE_BODY {
                    Ok(value)
                } else {
                    Err((
                        "INVALID_STRING_LENGTH",
                        format!(
                            "hs_note_body is {n} characters long; at most {MAX_NOTE_BODY} are allowed"
                        ),
                    ))
                }
            }
            _ => Ok(value),
        };
        match checked {
            Ok(v) => {
                out.insert(name.clone(), v);
            }
            Err((code, message)) => bad.push((name.clone(), code, message)),
        }
    }
    if bad.is_empty() {
        return Ok(out);
    }
    let legacy: Vec<Value> = bad
        .iter()
        .map(|(name, code, message)| {
            json!({"isValid": false, "message": message, "error": code, "name": name})
        })
        .collect();
    let mut err = ApiError::validation(format!(
        "Property values were not valid: {}",
        Value::Array(legacy)
    ));
    err.errors = bad
        .iter()
        .map(|(name, code, message)| {
            json!({"message": message, "code": code, "context": {"propertyName": [name]}})
        })
        .collect();
    Err(err)
}

/// The target ids of a create's `associations` (the other object type).
fn parse_associations(kind: Kind, v: Option<&Value>) -> R<Vec<u64>> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let items = v
        .as_array()
        .ok_or_else(|| ApiError::validation("associations must be an array"))?;
    let mut out = Vec::new();
    for item in items {
        let to = item
            .get("to")
            .and_then(|t| t.get("id"))
            .and_then(|id| match id {
                Value::String(s) => s.trim().parse::<u64>().ok(),
                Value::Number(n) => n.as_u64(),
                _ => None,
            })
            .ok_or_else(|| ApiError::validation("associations[].to.id must be an object id"))?;
        let types = item
            .get("types")
            .and_then(Value::as_array)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::validation("associations[].types is required"))?;
        for t in types {
            let category = t.get("associationCategory").and_then(Value::as_str);
            let type_id = t.get("associationTypeId").and_then(Value::as_u64);
            if category != Some("HUBSPOT_DEFINED") || type_id != Some(kind.assoc_type_id()) {
                return Err(ApiError::validation(format!(
                    "association type {} {} from {} is not supported (the fake models {} {} only)",
                    category.unwrap_or("?"),
                    type_id.map_or_else(|| "?".to_owned(), |i| i.to_string()),
                    kind.plural(),
                    "HUBSPOT_DEFINED",
                    kind.assoc_type_id()
                )));
            }
        }
        out.push(to);
    }
    Ok(out)
}

/// Which properties a record's JSON shows.
#[derive(Debug, Clone, Copy)]
enum Props<'a> {
    Default,
    Listed(&'a [String]),
    All,
}

fn record_json(d: &Data, kind: Kind, r: &Record, props: Props<'_>, assoc: &[Kind]) -> Value {
    let mut map = Map::new();
    let put = |map: &mut Map<String, Value>, name: &str| {
        map.insert(
            name.to_owned(),
            r.value(kind, name).map_or(Value::Null, Value::String),
        );
    };
    match props {
        Props::Default => {
            for name in kind.defaults() {
                put(&mut map, name);
            }
        }
        Props::Listed(names) => {
            for name in names {
                if d.readable(kind, name) {
                    put(&mut map, name);
                }
            }
            for name in kind.system() {
                put(&mut map, name);
            }
        }
        Props::All => {
            for (k, v) in &r.props {
                map.insert(k.clone(), Value::String(v.clone()));
            }
            for name in kind.system() {
                put(&mut map, name);
            }
        }
    }
    let mut v = json!({
        "id": r.id.to_string(),
        "properties": map,
        "createdAt": iso(r.created),
        "updatedAt": iso(r.updated),
        "archived": !r.live(),
    });
    if let Some(at) = r.archived_at {
        v["archivedAt"] = json!(iso(at));
    }
    let mut associations = Map::new();
    for target in assoc {
        if *target != kind.other() {
            continue;
        }
        let results: Vec<Value> = d
            .associated(kind, r.id)
            .into_iter()
            .map(|id| json!({"id": id.to_string(), "type": kind.assoc_label()}))
            .collect();
        if !results.is_empty() {
            associations.insert(target.plural().to_owned(), json!({"results": results}));
        }
    }
    if !associations.is_empty() {
        v["associations"] = Value::Object(associations);
    }
    v
}

/// The values of a comma-separated, possibly repeated query parameter;
/// `None` when absent.
fn list_param(q: &[(String, String)], name: &str) -> Option<Vec<String>> {
    let mut found = false;
    let mut out = Vec::new();
    for (k, v) in q {
        if k == name {
            found = true;
            out.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            );
        }
    }
    found.then_some(out)
}

fn assoc_kinds(names: Option<Vec<String>>) -> Vec<Kind> {
    names
        .unwrap_or_default()
        .iter()
        .filter_map(|n| Kind::parse(n))
        .collect()
}

fn body_object(req: &Req) -> R<Map<String, Value>> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::validation(
            "Invalid input JSON: expected an object",
        )),
        Err(e) => Err(ApiError::validation(format!(
            "Invalid input JSON on line {}, column {}: {e}",
            e.line(),
            e.column()
        ))),
    }
}

fn properties_of(body: &Map<String, Value>) -> R<Map<String, Value>> {
    match body.get("properties") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(_) => Err(ApiError::validation("properties must be an object")),
    }
}

// ---------------------------------------------------------------------------
// Search

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    Between,
    In,
    NotIn,
    Has,
    NotHas,
    Contains,
    NotContains,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "EQ" => Op::Eq,
            "NEQ" => Op::Neq,
            "LT" => Op::Lt,
            "LTE" => Op::Lte,
            "GT" => Op::Gt,
            "GTE" => Op::Gte,
            "BETWEEN" => Op::Between,
            "IN" => Op::In,
            "NOT_IN" => Op::NotIn,
            "HAS_PROPERTY" => Op::Has,
            "NOT_HAS_PROPERTY" => Op::NotHas,
            "CONTAINS_TOKEN" => Op::Contains,
            "NOT_CONTAINS_TOKEN" => Op::NotContains,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
struct Filter {
    prop: String,
    op: Op,
    value: String,
    high: String,
    values: Vec<String>,
}

fn compare(kind: Kind, prop: &str, a: &str, b: &str) -> Ordering {
    if (kind.is_date(prop) || prop == "hs_object_id")
        && let (Some(x), Some(y)) = (parse_ms(a), parse_ms(b))
    {
        return x.cmp(&y);
    }
    if let (Ok(x), Ok(y)) = (a.trim().parse::<f64>(), b.trim().parse::<f64>()) {
        return x.partial_cmp(&y).unwrap_or(Ordering::Equal);
    }
    a.trim().to_lowercase().cmp(&b.trim().to_lowercase())
}

/// `*` matches any run of characters.
fn glob(text: &str, pattern: &str) -> bool {
    let t: Vec<char> = text.chars().collect();
    let p: Vec<char> = pattern.chars().collect();
    let (mut ti, mut pi) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn contains_token(value: &str, token: &str) -> bool {
    let v = value.trim().to_lowercase();
    let t = token.trim().to_lowercase();
    if t.is_empty() {
        return false;
    }
    if t.contains('*') {
        return glob(&v, &t) || v.split_whitespace().any(|w| glob(w, &t));
    }
    v == t
        || v.split_whitespace().any(|w| w == t)
        || v.split(|c: char| !c.is_alphanumeric()).any(|w| w == t)
}

fn filter_matches(d: &Data, kind: Kind, r: &Record, f: &Filter) -> bool {
    let values: Vec<String> = if f.prop == kind.assoc_prop() {
        d.associated(kind, r.id)
            .into_iter()
            .map(|id| id.to_string())
            .collect()
    } else {
        r.value(kind, &f.prop).into_iter().collect()
    };
    let cmp = |v: &String, w: &str| compare(kind, &f.prop, v, w);
    let eq = |w: &str| values.iter().any(|v| cmp(v, w) == Ordering::Equal);
    match f.op {
        Op::Eq => eq(&f.value),
        Op::Neq => !eq(&f.value),
        Op::Lt => values.iter().any(|v| cmp(v, &f.value) == Ordering::Less),
        Op::Lte => values.iter().any(|v| cmp(v, &f.value) != Ordering::Greater),
        Op::Gt => values.iter().any(|v| cmp(v, &f.value) == Ordering::Greater),
        Op::Gte => values.iter().any(|v| cmp(v, &f.value) != Ordering::Less),
        Op::Between => values
            .iter()
            .any(|v| cmp(v, &f.value) != Ordering::Less && cmp(v, &f.high) != Ordering::Greater),
        Op::In => f.values.iter().any(|w| eq(w)),
        Op::NotIn => !f.values.iter().any(|w| eq(w)),
        Op::Has => !values.is_empty(),
        Op::NotHas => values.is_empty(),
        Op::Contains => values.iter().any(|v| contains_token(v, &f.value)),
        Op::NotContains => !values.iter().any(|v| contains_token(v, &f.value)),
    }
}

fn parse_filters(d: &Data, kind: Kind, body: &Map<String, Value>) -> R<Vec<Vec<Filter>>> {
    let groups = match body.get("filterGroups") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ApiError::validation("filterGroups must be an array")),
    };
    if groups.len() > 5 {
        return Err(ApiError::validation(
            "Too many filter groups: at most 5 are allowed",
        ));
    }
    let mut total = 0;
    let mut out = Vec::new();
    for g in groups {
        let filters = g
            .get("filters")
            .and_then(Value::as_array)
            .ok_or_else(|| ApiError::validation("filterGroups[].filters must be an array"))?;
        if filters.len() > 10 {
            return Err(ApiError::validation(
                "Too many filters in a group: at most 10 are allowed",
            ));
        }
        total += filters.len();
        let mut group = Vec::new();
        for f in filters {
            let prop = f
                .get("propertyName")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::validation("a filter needs a propertyName"))?;
            let op_name = f.get("operator").and_then(Value::as_str).unwrap_or("EQ");
            let op = Op::parse(op_name).ok_or_else(|| {
                ApiError::validation(format!("Unknown filter operator: {op_name}"))
            })?;
            if prop != kind.assoc_prop() && !d.readable(kind, prop) {
                return Err(ApiError::validation(format!(
                    "Unable to find property: {prop}"
                )));
            }
            let value = f.get("value").and_then(scalar).unwrap_or_default();
            let high = f.get("highValue").and_then(scalar).unwrap_or_default();
            let values: Vec<String> = f
                .get("values")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(scalar).collect())
                .unwrap_or_default();
            let needs_value = matches!(
                op,
                Op::Eq
                    | Op::Neq
                    | Op::Lt
                    | Op::Lte
                    | Op::Gt
                    | Op::Gte
                    | Op::Between
                    | Op::Contains
                    | Op::NotContains
            );
            if needs_value && f.get("value").is_none() {
                return Err(ApiError::validation(format!(
                    "Operator {op_name} needs a value"
                )));
            }
            if matches!(op, Op::In | Op::NotIn) && f.get("values").is_none() {
                return Err(ApiError::validation(format!(
                    "Operator {op_name} needs values"
                )));
            }
            if op == Op::Between && f.get("highValue").is_none() {
                return Err(ApiError::validation("Operator BETWEEN needs a highValue"));
            }
            group.push(Filter {
                prop: prop.to_owned(),
                op,
                value,
                high,
                values,
            });
        }
        out.push(group);
    }
    if total > 25 {
        return Err(ApiError::validation(
            "Too many filters: at most 25 are allowed in all",
        ));
    }
    Ok(out)
}

fn usize_of(v: &Value) -> Option<usize> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| usize::try_from(n).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn search(d: &Data, kind: Kind, req: &Req) -> R<Resp> {
    let body = body_object(req)?;
    let groups = parse_filters(d, kind, &body)?;
    let props: Option<Vec<String>> = body.get("properties").and_then(Value::as_array).map(|a| {
        a.iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    });
    let limit = match body.get("limit") {
        None | Some(Value::Null) => 10,
        Some(v) => usize_of(v).ok_or_else(|| ApiError::validation("limit must be a number"))?,
    };
    if limit > MAX_SEARCH_LIMIT {
        return Err(ApiError::validation(format!(
            "limit must be at most {MAX_SEARCH_LIMIT}"
        )));
    }
    let after = match body.get("after") {
        None | Some(Value::Null) => 0,
        Some(v) => usize_of(v).ok_or_else(|| ApiError::validation("after must be a number"))?,
    };
    if after >= SEARCH_RESULT_CAP {
        return Err(ApiError::validation(format!(
            "Search can page through at most {SEARCH_RESULT_CAP} results"
        )));
    }
    let sort: Option<(String, bool)> = match body.get("sorts").and_then(Value::as_array) {
        None => None,
        Some(s) if s.len() > 1 => {
            return Err(ApiError::validation("Only one sort is allowed"));
        }
        Some(s) => match s.first() {
            None => None,
            Some(Value::String(name)) => Some((name.clone(), false)),
            Some(Value::Object(o)) => {
                let name = o
                    .get("propertyName")
                    .and_then(Value::as_str)
                    .ok_or_else(|| ApiError::validation("a sort needs a propertyName"))?;
                let desc = o.get("direction").and_then(Value::as_str) == Some("DESCENDING");
                Some((name.to_owned(), desc))
            }
            Some(_) => return Err(ApiError::validation("invalid sort")),
        },
    };
    let query = body
        .get("query")
        .and_then(Value::as_str)
        .map(|q| q.trim().to_lowercase())
        .filter(|q| !q.is_empty());

    let mut rows: Vec<&Record> = d
        .records(kind)
        .iter()
        .filter(|r| r.live() && r.indexed)
        .filter(|r| {
            groups.is_empty()
                || groups
                    .iter()
                    .any(|g| g.iter().all(|f| filter_matches(d, kind, r, f)))
        })
        .filter(|r| {
            query.as_ref().is_none_or(|q| {
                kind.text_props().iter().any(|p| {
                    r.props
                        .get(*p)
                        .is_some_and(|v| v.to_lowercase().contains(q.as_str()))
                })
            })
        })
        .collect();
    rows.sort_by_key(|r| r.id);
    if let Some((prop, desc)) = &sort {
        rows.sort_by(|a, b| {
            let (x, y) = (a.value(kind, prop), b.value(kind, prop));
            let ord = match (&x, &y) {
                (Some(x), Some(y)) => {
                    let o = compare(kind, prop, x, y);
                    if *desc { o.reverse() } else { o }
                }
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            };
            ord.then(a.id.cmp(&b.id))
        });
    }
    let total = rows.len();
    let shown = match &props {
        Some(list) => Props::Listed(list),
        None => Props::Default,
    };
    let results: Vec<Value> = rows
        .iter()
        .skip(after)
        .take(limit)
        .map(|r| record_json(d, kind, r, shown, &[]))
        .collect();
    let next = after + limit;
    let mut out = json!({"total": total, "results": results});
    if limit > 0 && next < total.min(SEARCH_RESULT_CAP) {
        out["paging"] = json!({"next": {"after": next.to_string()}});
    }
    Ok(Resp::json(StatusCode::OK, &out))
}

// ---------------------------------------------------------------------------
// Webhook signatures

/// HubSpot's v3 request signature: base64(HMAC-SHA256(client secret,
/// method + uri + body + timestamp)).
pub fn signature_v3(
    client_secret: &str,
    method: &str,
    uri: &str,
    body: &[u8],
    timestamp: &str,
) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(client_secret.as_bytes()) else {
        return String::new();
    };
    mac.update(method.as_bytes());
    mac.update(uri.as_bytes());
    mac.update(body);
    mac.update(timestamp.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// HubSpot's v1 signature: hex(SHA-256(client secret + body)).
pub fn signature_v1(client_secret: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(client_secret.as_bytes());
    h.update(body);
    hex::encode(h.finalize())
}

/// One webhook request the fake sent.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookDelivery {
    /// The target URL.
    pub url: String,
    /// The raw body: a JSON array of events.
    pub body: String,
    /// The events sent (the body parsed).
    pub events: Vec<Value>,
    /// `X-HubSpot-Request-Timestamp` (ms).
    pub timestamp: String,
    /// `X-HubSpot-Signature-v3`.
    pub signature: String,
    /// The receiver's status; `None` on a transport error or timeout.
    pub status: Option<u16>,
    /// The transport error, if any.
    pub error: Option<String>,
    /// Whether these events were queued again for another attempt.
    pub requeued: bool,
}

impl WebhookDelivery {
    /// Whether the receiver answered 2xx.
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

// ---------------------------------------------------------------------------
// The handle

struct Inner {
    tokens: TokenChecker,
    client_secret: String,
    base_url: String,
    data: Mutex<Data>,
}

/// A running fake HubSpot API (`https://api.hubapi.com`) with its webhook
/// sender. Dropping it stops the server.
pub struct FakeHubSpot {
    server: Server,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FakeHubSpot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeHubSpot")
            .field("addr", &self.server.addr)
            .finish()
    }
}

fn kind_arg(object: &str) -> Result<Kind, FakeError> {
    Kind::parse(object).ok_or_else(|| {
        FakeError::Invalid(format!("unknown object type {object} (contacts or notes)"))
    })
}

fn id_arg(id: &str) -> Result<u64, FakeError> {
    id.trim()
        .parse()
        .map_err(|_| FakeError::NotFound(format!("id {id}")))
}

fn fixture_error(e: ApiError) -> FakeError {
    if e.status == StatusCode::NOT_FOUND {
        FakeError::NotFound(e.message)
    } else {
        FakeError::Invalid(format!(
            "{} {}: {}",
            e.status.as_u16(),
            e.category,
            e.message
        ))
    }
}

fn props_map(properties: &[(&str, &str)]) -> Map<String, Value> {
    properties
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
        .collect()
}

impl FakeHubSpot {
    /// Starts the API; OAuth access tokens are checked with `tokens` (from
    /// [`crate::oauth::FakeOAuth::token_checker`]); webhooks are signed with
    /// `client_secret` (the app's).
    pub async fn start(tokens: TokenChecker, client_secret: &str) -> Result<Self, FakeError> {
        let mut inner_out = None;
        let client_secret = client_secret.to_owned();
        let server = server::serve(|addr| {
            let inner = Arc::new(Inner {
                tokens,
                client_secret,
                base_url: format!("http://{addr}"),
                data: Mutex::new(Data::new()),
            });
            inner_out = Some(inner.clone());
            Arc::new(HubSpotVendor(inner))
        })
        .await?;
        let inner = inner_out.ok_or_else(|| FakeError::Invalid("server not built".into()))?;
        Ok(FakeHubSpot { server, inner })
    }

    common_methods!();

    /// `http://127.0.0.1:PORT` — stands for `https://api.hubapi.com`.
    pub fn base_url(&self) -> String {
        self.inner.base_url.clone()
    }

    /// Accepts `token` as a static private-app token from now on (it never
    /// expires).
    pub fn add_private_app_token(&self, token: &str) {
        lock(&self.inner.data).private_tokens.push(token.to_owned());
    }

    /// Adds a custom string property to `object` (`contacts` or `notes`).
    pub fn add_property(&self, object: &str, name: &str) -> Result<(), FakeError> {
        let kind = kind_arg(object)?;
        let mut d = lock(&self.inner.data);
        if d.readable(kind, name) {
            return Err(FakeError::Invalid(format!(
                "{} already has a property {name}",
                kind.plural()
            )));
        }
        d.extra_props.push((kind, name.to_owned()));
        Ok(())
    }

    /// While on, records created or updated (through the API or the
    /// fixtures) are left out of search until [`FakeHubSpot::reindex`];
    /// reads by id and lists see them at once.
    pub fn set_index_lag(&self, lag: bool) {
        lock(&self.inner.data).index_lag = lag;
    }

    /// The search index catches up: every record becomes searchable.
    pub fn reindex(&self) {
        let mut guard = lock(&self.inner.data);
        let d = &mut *guard;
        for r in d.contacts.iter_mut().chain(d.notes.iter_mut()) {
            r.indexed = true;
        }
    }

    /// Requests per token per rolling 10 seconds (`None` lifts the limit and
    /// the rate-limit headers). Default [`DEFAULT_RATE_LIMIT`].
    pub fn set_rate_limit(&self, per_ten_seconds: Option<usize>) {
        let mut d = lock(&self.inner.data);
        d.rate_limit = per_ten_seconds;
        d.windows.clear();
    }

    /// Requests refused by the rate limit (not injected faults).
    pub fn rate_limited_count(&self) -> usize {
        lock(&self.inner.data).rate_limited
    }

    /// Authenticated requests that passed the rate limit (whatever their
    /// outcome).
    pub fn api_calls(&self) -> usize {
        lock(&self.inner.data).api_calls
    }

    /// Batch answers list their results in reverse input order (HubSpot
    /// does not promise the order).
    pub fn set_reverse_batch_results(&self, reverse: bool) {
        lock(&self.inner.data).reverse_batch = reverse;
    }

    /// Registers the app's webhook target URL (every subscription type);
    /// writes from now on queue events for it.
    pub fn subscribe(&self, target_url: &str) {
        lock(&self.inner.data).target = Some(target_url.to_owned());
    }

    /// Removes the target URL and forgets the queued events.
    pub fn unsubscribe(&self) {
        let mut d = lock(&self.inner.data);
        d.target = None;
        d.queue.clear();
    }

    /// Whether a creation also queues one `propertyChange` per property it
    /// set (default true).
    pub fn set_property_changes_on_create(&self, on: bool) {
        lock(&self.inner.data).changes_on_create = on;
    }

    /// Each webhook request is sent `n` times (clamped to 1–3), each copy
    /// signed with its own timestamp.
    pub fn set_duplicate_deliveries(&self, n: usize) {
        lock(&self.inner.data).duplicates = n.clamp(1, 3);
    }

    /// Signs webhooks with `secret` instead of the client secret (a wrong
    /// signature for the receiver to refuse); the client secret again
    /// when `secret` is it.
    pub fn sign_with(&self, secret: &str) {
        lock(&self.inner.data).sign_secret = Some(secret.to_owned());
    }

    /// Webhook timestamps ten minutes in the past (correctly signed, but
    /// older than the 5-minute window receivers must enforce).
    pub fn set_stale_timestamps(&self, stale: bool) {
        lock(&self.inner.data).stale = stale;
    }

    /// Events queued and not delivered yet, in order.
    pub fn pending_webhooks(&self) -> Vec<Value> {
        lock(&self.inner.data).queue.iter().cloned().collect()
    }

    /// Events given up on (a non-retried status, or out of retries).
    pub fn dropped_webhooks(&self) -> Vec<Value> {
        lock(&self.inner.data).dropped.clone()
    }

    /// One delivery pass: POSTs the queued events to the target URL in
    /// arrays of up to [`WEBHOOK_BATCH`], signed; a batch that got no 2xx
    /// is queued again with `attemptNumber + 1` unless its status is not
    /// retried or it is out of retries. Returns every request sent. No
    /// lock is held while sending.
    pub async fn deliver_webhooks(&self) -> Vec<WebhookDelivery> {
        let (target, events, secret, copies, stale) = {
            let mut d = lock(&self.inner.data);
            let Some(target) = d.target.clone() else {
                return Vec::new();
            };
            let events: Vec<Value> = d.queue.drain(..).collect();
            let secret = d
                .sign_secret
                .clone()
                .unwrap_or_else(|| self.inner.client_secret.clone());
            (target, events, secret, d.duplicates, d.stale)
        };
        if events.is_empty() {
            return Vec::new();
        }
        let client = reqwest::Client::builder().timeout(WEBHOOK_TIMEOUT).build();
        let mut out = Vec::new();
        let mut again: Vec<Value> = Vec::new();
        let mut dropped: Vec<Value> = Vec::new();
        for chunk in events.chunks(WEBHOOK_BATCH) {
            let body = serde_json::to_string(chunk).unwrap_or_default();
            let first = out.len();
            let mut delivered = false;
            let mut retry = false;
            for _ in 0..copies {
                let mut ms = Utc::now().timestamp_millis();
                if stale {
                    ms -= 10 * 60 * 1000;
                }
                let timestamp = ms.to_string();
                let signature = signature_v3(&secret, "POST", &target, body.as_bytes(), &timestamp);
                let sent = match &client {
                    Ok(c) => c
                        .post(&target)
                        .header("content-type", "application/json")
                        .header("x-hubspot-signature-v3", &signature)
                        .header("x-hubspot-request-timestamp", &timestamp)
                        .header(
                            "x-hubspot-signature",
                            signature_v1(&secret, body.as_bytes()),
                        )
                        .header("x-hubspot-signature-version", "v1")
                        .body(body.clone())
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                let (status, error) = match sent {
                    Ok(s) => (Some(s), None),
                    Err(e) => (None, Some(e)),
                };
                match status {
                    Some(s) if (200..300).contains(&s) => delivered = true,
                    Some(s) if NO_RETRY.contains(&s) => {}
                    _ => retry = true,
                }
                out.push(WebhookDelivery {
                    url: target.clone(),
                    body: body.clone(),
                    events: chunk.to_vec(),
                    timestamp,
                    signature,
                    status,
                    error,
                    requeued: false,
                });
            }
            if delivered {
                continue;
            }
            let mut requeued = false;
            for ev in chunk {
                let attempt = ev.get("attemptNumber").and_then(Value::as_u64).unwrap_or(0);
                if retry && attempt < WEBHOOK_MAX_RETRIES {
                    let mut ev = ev.clone();
                    ev["attemptNumber"] = json!(attempt + 1);
                    again.push(ev);
                    requeued = true;
                } else {
                    dropped.push(ev.clone());
                }
            }
            for d in out.iter_mut().skip(first) {
                d.requeued = requeued;
            }
        }
        let mut d = lock(&self.inner.data);
        for ev in again.into_iter().rev() {
            d.queue.push_front(ev);
        }
        d.dropped.extend(dropped);
        out
    }

    /// Creates a record as a person in the HubSpot UI would (no rate limit;
    /// the API's checks apply; events with `changeSource: CRM_UI`). Returns
    /// the new id.
    pub fn create_as_user(
        &self,
        object: &str,
        properties: &[(&str, &str)],
    ) -> Result<String, FakeError> {
        let kind = kind_arg(object)?;
        let mut d = lock(&self.inner.data);
        d.create(kind, &props_map(properties), None, Source::Ui)
            .map(|id| id.to_string())
            .map_err(fixture_error)
    }

    /// Edits a record as a person in the HubSpot UI would (`""` clears;
    /// e-mail uniqueness applies; events with `changeSource: CRM_UI`).
    pub fn edit_as_user(
        &self,
        object: &str,
        id: &str,
        properties: &[(&str, &str)],
    ) -> Result<(), FakeError> {
        let kind = kind_arg(object)?;
        let id = id_arg(id)?;
        lock(&self.inner.data)
            .update(kind, id, &props_map(properties), Source::Ui)
            .map_err(fixture_error)
    }

    /// Deletes (archives) a record as a person in the HubSpot UI would.
    pub fn delete_as_user(&self, object: &str, id: &str) -> Result<(), FakeError> {
        let kind = kind_arg(object)?;
        let id = id_arg(id)?;
        lock(&self.inner.data)
            .archive(kind, id, Source::Ui)
            .map_err(fixture_error)
    }

    /// Associates a note with a contact, as the UI would (no event).
    pub fn associate_as_user(&self, note_id: &str, contact_id: &str) -> Result<(), FakeError> {
        let (note, contact) = (id_arg(note_id)?, id_arg(contact_id)?);
        let mut d = lock(&self.inner.data);
        if d.live_position(Kind::Note, note).is_none() {
            return Err(FakeError::NotFound(format!("note {note_id}")));
        }
        if d.live_position(Kind::Contact, contact).is_none() {
            return Err(FakeError::NotFound(format!("contact {contact_id}")));
        }
        d.link(Kind::Note, note, contact);
        Ok(())
    }

    fn all(&self, kind: Kind) -> Vec<Value> {
        let d = lock(&self.inner.data);
        d.records(kind)
            .iter()
            .map(|r| record_json(&d, kind, r, Props::All, &[kind.other()]))
            .collect()
    }

    fn one(&self, kind: Kind, id: &str) -> Option<Value> {
        let id = id.trim().parse::<u64>().ok()?;
        let d = lock(&self.inner.data);
        let i = d.position(kind, id)?;
        Some(record_json(
            &d,
            kind,
            &d.records(kind)[i],
            Props::All,
            &[kind.other()],
        ))
    }

    /// Every contact (archived ones too, `"archived": true`), in creation
    /// order, with every stored property and its note associations.
    pub fn contacts(&self) -> Vec<Value> {
        self.all(Kind::Contact)
    }

    /// Every note, like [`FakeHubSpot::contacts`].
    pub fn notes(&self) -> Vec<Value> {
        self.all(Kind::Note)
    }

    /// One contact by id (archived too).
    pub fn contact(&self, id: &str) -> Option<Value> {
        self.one(Kind::Contact, id)
    }

    /// One note by id (archived too).
    pub fn note(&self, id: &str) -> Option<Value> {
        self.one(Kind::Note, id)
    }

    /// The ids of the (live) contacts a note is associated with.
    pub fn associations_of_note(&self, id: &str) -> Vec<String> {
        let Ok(id) = id.trim().parse::<u64>() else {
            return Vec::new();
        };
        lock(&self.inner.data)
            .associated(Kind::Note, id)
            .into_iter()
            .map(|c| c.to_string())
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Request handling

struct HubSpotVendor(Arc<Inner>);

impl Inner {
    fn handle(&self, req: &Req) -> Resp {
        match self.route(req) {
            Ok(r) | Err(r) => r,
        }
    }

    fn authenticate(&self, d: &Data, req: &Req) -> R<String> {
        let invalid = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "INVALID_AUTHENTICATION",
                AUTH_MESSAGE,
            )
        };
        let header = req.header("authorization").ok_or_else(invalid)?;
        let (scheme, token) = header.trim().split_once(' ').ok_or_else(invalid)?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return Err(invalid());
        }
        if d.private_tokens.iter().any(|t| t == token) {
            return Ok(token.to_owned());
        }
        match self.tokens.check(token) {
            TokenState::Valid => Ok(token.to_owned()),
            TokenState::Expired => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "EXPIRED_AUTHENTICATION",
                "The OAuth token used to make this call expired 1 second(s) ago.",
            )),
            TokenState::Unknown => Err(invalid()),
        }
    }

    fn route(&self, req: &Req) -> Result<Resp, Resp> {
        let segs = req
            .segments_after(OBJECTS_PREFIX)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| path_not_found(&req.path).resp())?;
        let mut d = lock(&self.data);
        let token = self.authenticate(&d, req).map_err(|e| e.resp())?;
        let limit = d.admit(&token)?;
        d.api_calls += 1;
        let resp = match self.dispatch(&mut d, req, &segs) {
            Ok(r) => r,
            Err(e) => e.resp(),
        };
        Ok(with_limit_headers(resp, limit))
    }

    fn dispatch(&self, d: &mut Data, req: &Req, segs: &[String]) -> R<Resp> {
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        let Some((ty, rest)) = segs.split_first() else {
            return Err(path_not_found(&req.path));
        };
        let kind = Kind::parse(ty).ok_or_else(|| {
            ApiError::validation(format!("Unable to infer object type from: {ty}"))
        })?;
        match (&req.method, rest) {
            (&Method::GET, []) => self.list(d, kind, req),
            (&Method::POST, []) => Self::create_one(d, kind, req),
            (&Method::POST, ["search"]) => search(d, kind, req),
            (&Method::POST, ["batch", op]) => Self::batch(d, kind, op, req),
            (_, ["search"] | ["batch", _]) => Err(method_not_allowed()),
            (&Method::GET, [id]) => Self::read(d, kind, id, req),
            (&Method::PATCH, [id]) => Self::patch(d, kind, id, req),
            (&Method::DELETE, [id]) => Self::delete(d, kind, id),
            (method @ (&Method::PUT | &Method::DELETE), [id, "associations", to, to_id, label]) => {
                Self::associate(d, kind, id, to, to_id, label, *method == Method::PUT)
            }
            (_, [] | [_] | [_, "associations", _, _, _]) => Err(method_not_allowed()),
            _ => Err(path_not_found(&req.path)),
        }
    }

    fn list(&self, d: &Data, kind: Kind, req: &Req) -> R<Resp> {
        let q = req.query_pairs();
        let limit = match req.query_param("limit") {
            None => 10,
            Some(s) => s
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::validation(format!("limit must be between 1 and {MAX_LIST_LIMIT}"))
                })?,
        };
        let after = match req.query_param("after").filter(|s| !s.trim().is_empty()) {
            None => 0,
            Some(s) => s
                .trim()
                .parse::<u64>()
                .map_err(|_| ApiError::validation(format!("Invalid after cursor: {s}")))?,
        };
        let archived = req.query_param("archived").as_deref() == Some("true");
        let props = list_param(&q, "properties");
        let shown = match &props {
            Some(list) => Props::Listed(list),
            None => Props::Default,
        };
        let assoc = assoc_kinds(list_param(&q, "associations"));
        let mut rows: Vec<&Record> = d
            .records(kind)
            .iter()
            .filter(|r| r.live() != archived && r.id >= after)
            .collect();
        rows.sort_by_key(|r| r.id);
        let results: Vec<Value> = rows
            .iter()
            .take(limit)
            .map(|r| record_json(d, kind, r, shown, &assoc))
            .collect();
        let mut out = json!({"results": results});
        if let Some(next) = rows.get(limit) {
            out["paging"] = json!({"next": {
                "after": next.id.to_string(),
                "link": format!("{}{OBJECTS_PREFIX}/{}?after={}", self.base_url, kind.plural(), next.id),
            }});
        }
        Ok(Resp::json(StatusCode::OK, &out))
    }

    fn create_one(d: &mut Data, kind: Kind, req: &Req) -> R<Resp> {
        let body = body_object(req)?;
        let props = properties_of(&body)?;
        let id = d.create(kind, &props, body.get("associations"), Source::Api)?;
        let i = d.position(kind, id).ok_or_else(|| not_found(kind))?;
        let v = record_json(d, kind, &d.records(kind)[i], Props::All, &[]);
        Ok(Resp::json(StatusCode::CREATED, &v))
    }

    fn read(d: &Data, kind: Kind, id: &str, req: &Req) -> R<Resp> {
        let q = req.query_pairs();
        let archived = req.query_param("archived").as_deref() == Some("true");
        let id_property = req.query_param("idProperty");
        let i = d
            .resolve(kind, id, id_property.as_deref(), archived)?
            .ok_or_else(|| not_found(kind))?;
        let props = list_param(&q, "properties");
        let shown = match &props {
            Some(list) => Props::Listed(list),
            None => Props::Default,
        };
        let assoc = assoc_kinds(list_param(&q, "associations"));
        let v = record_json(d, kind, &d.records(kind)[i], shown, &assoc);
        Ok(Resp::json(StatusCode::OK, &v))
    }

    fn patch(d: &mut Data, kind: Kind, id: &str, req: &Req) -> R<Resp> {
        let id_property = req.query_param("idProperty");
        let i = d
            .resolve(kind, id, id_property.as_deref(), false)?
            .ok_or_else(|| not_found(kind))?;
        let record_id = d.records(kind)[i].id;
        let body = body_object(req)?;
        let props = properties_of(&body)?;
        d.update(kind, record_id, &props, Source::Api)?;
        let v = record_json(d, kind, &d.records(kind)[i], Props::All, &[]);
        Ok(Resp::json(StatusCode::OK, &v))
    }

    fn delete(d: &mut Data, kind: Kind, id: &str) -> R<Resp> {
        // HubSpot answers 204 whether or not the record existed.
        if let Ok(id) = id.trim().parse::<u64>()
            && d.live_position(kind, id).is_some()
        {
            d.archive(kind, id, Source::Api)?;
        }
        Ok(Resp::new(StatusCode::NO_CONTENT))
    }

    fn associate(
        d: &mut Data,
        kind: Kind,
        id: &str,
        to: &str,
        to_id: &str,
        label: &str,
        put: bool,
    ) -> R<Resp> {
        let to_kind = Kind::parse(to)
            .filter(|k| *k == kind.other())
            .ok_or_else(|| {
                ApiError::validation(format!(
                    "Unable to infer object type from: {to} (the fake associates notes and contacts)"
                ))
            })?;
        let label_ok =
            label == kind.assoc_label() || label.parse::<u64>().ok() == Some(kind.assoc_type_id());
        if !label_ok {
            return Err(ApiError::validation(format!(
                "{label} is not a valid association type between {} and {}",
                kind.plural(),
                to_kind.plural()
            )));
        }
        let id = id.trim().parse::<u64>().map_err(|_| not_found(kind))?;
        let i = d.live_position(kind, id).ok_or_else(|| not_found(kind))?;
        let other = to_id
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|o| d.live_position(to_kind, *o).is_some())
            .ok_or_else(|| not_found(to_kind))?;
        if put {
            d.link(kind, id, other);
            let v = record_json(d, kind, &d.records(kind)[i], Props::Default, &[to_kind]);
            Ok(Resp::json(StatusCode::OK, &v))
        } else {
            d.unlink(kind, id, other);
            Ok(Resp::new(StatusCode::NO_CONTENT))
        }
    }

    fn batch(d: &mut Data, kind: Kind, op: &str, req: &Req) -> R<Resp> {
        let body = body_object(req)?;
        let inputs = body
            .get("inputs")
            .and_then(Value::as_array)
            .ok_or_else(|| ApiError::validation("inputs is required"))?;
        if inputs.is_empty() {
            return Err(ApiError::validation("inputs must not be empty"));
        }
        if inputs.len() > MAX_BATCH_INPUTS {
            return Err(ApiError::validation(format!(
                "Batch input size must be at most {MAX_BATCH_INPUTS}, got {}",
                inputs.len()
            )));
        }
        let started = iso(Utc::now());
        let mut results: Vec<Value> = Vec::new();
        let mut errors: Vec<Value> = Vec::new();
        let mut status_ok = StatusCode::OK;
        match op {
            "create" => {
                status_ok = StatusCode::CREATED;
                let multi = inputs.iter().any(|i| i.get("objectWriteTraceId").is_some());
                let mut snapshot = (!multi).then(|| d.snapshot());
                for input in inputs {
                    let trace = input.get("objectWriteTraceId").cloned();
                    let outcome = input
                        .as_object()
                        .ok_or_else(|| ApiError::validation("each input must be an object"))
                        .and_then(properties_of)
                        .and_then(|props| {
                            d.create(kind, &props, input.get("associations"), Source::Api)
                        });
                    match outcome {
                        Ok(id) => {
                            if let Some(i) = d.position(kind, id) {
                                let mut v =
                                    record_json(d, kind, &d.records(kind)[i], Props::All, &[]);
                                if let Some(t) = &trace {
                                    v["objectWriteTraceId"] = t.clone();
                                }
                                results.push(v);
                            }
                        }
                        Err(e) if multi => errors.push(
                            e.item(trace.map(|t| ("objectWriteTraceId", Value::Array(vec![t])))),
                        ),
                        Err(e) => {
                            if let Some(s) = snapshot.take() {
                                d.restore(s);
                            }
                            return Err(e);
                        }
                    }
                }
            }
            "update" => {
                let mut seen = BTreeSet::new();
                for input in inputs {
                    let raw = input.get("id").and_then(scalar).unwrap_or_default();
                    if !seen.insert(raw.to_lowercase()) {
                        return Err(ApiError::validation(format!(
                            "Duplicate IDs found in batch input: [{raw}]"
                        )));
                    }
                }
                for input in inputs {
                    let raw = input.get("id").and_then(scalar).unwrap_or_default();
                    let id_property = input.get("idProperty").and_then(Value::as_str);
                    let outcome = d
                        .resolve(kind, &raw, id_property, false)
                        .and_then(|i| {
                            i.ok_or_else(|| missing_ids(kind, std::slice::from_ref(&raw)))
                        })
                        .and_then(|i| {
                            let id = d.records(kind)[i].id;
                            let props = input
                                .as_object()
                                .ok_or_else(|| ApiError::validation("each input must be an object"))
                                .and_then(properties_of)?;
                            d.update(kind, id, &props, Source::Api).map(|()| i)
                        });
                    match outcome {
                        Ok(i) => {
                            results.push(record_json(d, kind, &d.records(kind)[i], Props::All, &[]))
                        }
                        Err(e) => errors.push(e.item(None)),
                    }
                }
            }
            "upsert" => {
                let id_property = inputs
                    .first()
                    .and_then(|i| i.get("idProperty"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if kind != Kind::Contact || id_property != "email" {
                    return Err(ApiError::validation(format!(
                        "Upsert needs a unique idProperty; {} supports \"email\" on contacts only",
                        "the fake"
                    )));
                }
                let mut seen = BTreeSet::new();
                for input in inputs {
                    let raw = input.get("id").and_then(scalar).unwrap_or_default();
                    if input.get("idProperty").and_then(Value::as_str) != Some("email") {
                        return Err(ApiError::validation(
                            "Every upsert input needs \"idProperty\": \"email\"",
                        ));
                    }
                    if !seen.insert(raw.trim().to_lowercase()) {
                        return Err(ApiError::validation(format!(
                            "Duplicate IDs found in batch input: [{raw}]"
                        )));
                    }
                }
                for input in inputs {
                    let raw = input.get("id").and_then(scalar).unwrap_or_default();
                    let outcome = input
                        .as_object()
                        .ok_or_else(|| ApiError::validation("each input must be an object"))
                        .and_then(properties_of)
                        .and_then(|mut props| match d.contact_by_email(&raw, None) {
                            Some(id) => d
                                .update(kind, id, &props, Source::Api)
                                .map(|()| (id, false)),
                            None => {
                                props
                                    .entry("email")
                                    .or_insert_with(|| Value::String(raw.trim().to_owned()));
                                d.create(kind, &props, None, Source::Api)
                                    .map(|id| (id, true))
                            }
                        });
                    match outcome {
                        Ok((id, new)) => {
                            if let Some(i) = d.position(kind, id) {
                                let mut v =
                                    record_json(d, kind, &d.records(kind)[i], Props::All, &[]);
                                v["new"] = json!(new);
                                results.push(v);
                            }
                        }
                        Err(e) => errors.push(e.item(None)),
                    }
                }
            }
            "read" => {
                let id_property = body.get("idProperty").and_then(Value::as_str);
                let archived = body.get("archived").and_then(Value::as_bool) == Some(true);
                let props: Option<Vec<String>> =
                    body.get("properties").and_then(Value::as_array).map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    });
                let shown = match &props {
                    Some(list) => Props::Listed(list),
                    None => Props::Default,
                };
                let mut missing = Vec::new();
                for input in inputs {
                    let raw = input.get("id").and_then(scalar).unwrap_or_default();
                    match d.resolve(kind, &raw, id_property, archived)? {
                        Some(i) => {
                            results.push(record_json(d, kind, &d.records(kind)[i], shown, &[]))
                        }
                        None => missing.push(raw),
                    }
                }
                if !missing.is_empty() {
                    errors.push(missing_ids(kind, &missing).item(None));
                }
            }
            "archive" => {
                for input in inputs {
                    if let Some(id) = input
                        .get("id")
                        .and_then(scalar)
                        .and_then(|s| s.trim().parse::<u64>().ok())
                        && d.live_position(kind, id).is_some()
                    {
                        d.archive(kind, id, Source::Api)?;
                    }
                }
                return Ok(Resp::new(StatusCode::NO_CONTENT));
            }
            _ => return Err(path_not_found(&req.path)),
        }
        if d.reverse_batch {
            results.reverse();
        }
        let mut out = json!({
            "status": "COMPLETE",
            "results": results,
            "startedAt": started,
            "completedAt": iso(Utc::now()),
        });
        let status = if errors.is_empty() {
            status_ok
        } else {
            out["numErrors"] = json!(errors.len());
            out["errors"] = Value::Array(errors);
            StatusCode::MULTI_STATUS
        };
        Ok(Resp::json(status, &out))
    }
}

fn missing_ids(kind: Kind, ids: &[String]) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "OBJECT_NOT_FOUND",
        format!(
            "Could not get some {} objects, they may be deleted or not exist. Check that ids are valid.",
            kind.upper()
        ),
    )
    .with_context(json!({"ids": ids}))
}

impl Vendor for HubSpotVendor {
    fn secret_headers(&self) -> &'static [&'static str] {
        &["authorization"]
    }

    fn secret_params(&self) -> &'static [&'static str] {
        &["hapikey"]
    }

    fn fault_response(&self, fault: &Fault, _req: &Req) -> Resp {
        match fault {
            Fault::TooManyRequests => {
                let max = lock(&self.0.data).rate_limit.unwrap_or(DEFAULT_RATE_LIMIT);
                rate_limited(max)
            }
            _ => ApiError::new(StatusCode::BAD_GATEWAY, "BAD_GATEWAY", "Bad Gateway").resp(),
        }
    }

    fn handle(&self, req: &Req) -> Resp {
        self.0.handle(req)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

    use super::*;
    use crate::oauth::{FakeOAuth, OAuthConfig};

    const SECRET: &str = "hs-client-secret";
    const PAT: &str = "pat-na1-11111111-2222-3333-4444-555555555555";

    struct Api {
        oauth: FakeOAuth,
        hs: FakeHubSpot,
        token: String,
    }

    async fn setup() -> Api {
        let oauth = FakeOAuth::start(OAuthConfig::hubspot("cid", SECRET))
            .await
            .unwrap();
        let hs = FakeHubSpot::start(oauth.token_checker(), SECRET)
            .await
            .unwrap();
        hs.add_private_app_token(PAT);
        let token = oauth.issue_access_token();
        Api { oauth, hs, token }
    }

    /// (status, JSON body or Null, headers)
    async fn raw(
        base: &str,
        auth: Option<&str>,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut rb = reqwest::Client::new()
            .request(method, format!("{base}{path}"))
            .query(query);
        if let Some(auth) = auth {
            rb = rb.header("Authorization", auth);
        }
        if let Some(body) = body {
            rb = rb.json(&body);
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        (status, json, headers)
    }

    impl Api {
        async fn call(
            &self,
            method: reqwest::Method,
            path: &str,
            query: &[(&str, &str)],
            body: Option<Value>,
        ) -> (u16, Value) {
            let auth = format!("Bearer {}", self.token);
            let (s, v, _) = raw(&self.hs.base_url(), Some(&auth), method, path, query, body).await;
            (s, v)
        }

        async fn get(&self, path: &str, query: &[(&str, &str)]) -> (u16, Value) {
            self.call(reqwest::Method::GET, path, query, None).await
        }

        async fn post(&self, path: &str, body: Value) -> (u16, Value) {
            self.call(reqwest::Method::POST, path, &[], Some(body))
                .await
        }

        async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
            self.call(reqwest::Method::PATCH, path, &[], Some(body))
                .await
        }

        async fn contact(&self, props: Value) -> String {
            let (s, v) = self
                .post("/crm/v3/objects/contacts", json!({"properties": props}))
                .await;
            assert_eq!(s, 201, "{v}");
            v["id"].as_str().unwrap().to_owned()
        }

        async fn search(&self, body: Value) -> (u16, Value) {
            self.post("/crm/v3/objects/contacts/search", body).await
        }
    }

    fn ids(body: &Value) -> Vec<String> {
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// A webhook receiver on the shared server: answers `status` to the
    /// first `failures` requests, then 200.
    struct Receiver {
        failures: AtomicUsize,
        status: u16,
    }

    impl Vendor for Receiver {
        fn secret_headers(&self) -> &'static [&'static str] {
            &[]
        }

        fn secret_params(&self) -> &'static [&'static str] {
            &[]
        }

        fn fault_response(&self, _fault: &Fault, _req: &Req) -> Resp {
            Resp::new(StatusCode::INTERNAL_SERVER_ERROR)
        }

        fn handle(&self, _req: &Req) -> Resp {
            let failing = self
                .failures
                .fetch_update(AtomicOrdering::SeqCst, AtomicOrdering::SeqCst, |n| {
                    n.checked_sub(1)
                })
                .is_ok();
            let status = if failing { self.status } else { 200 };
            Resp::new(StatusCode::from_u16(status).unwrap())
        }
    }

    async fn receiver(status: u16, failures: usize) -> Server {
        server::serve(|_| {
            Arc::new(Receiver {
                failures: AtomicUsize::new(failures),
                status,
            })
        })
        .await
        .unwrap()
    }

    fn hmac_b64(secret: &str, text: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(text);
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }

    #[tokio::test]
    async fn bearer_auth_private_app_and_expired_tokens() {
        let api = setup().await;
        let base = api.hs.base_url();
        let path = "/crm/v3/objects/contacts";
        let (s, body, headers) = raw(&base, None, reqwest::Method::GET, path, &[], None).await;
        assert_eq!(s, 401);
        assert_eq!(body["status"], json!("error"));
        assert_eq!(body["category"], json!("INVALID_AUTHENTICATION"));
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .starts_with("Authentication credentials not found")
        );
        assert!(body["correlationId"].is_string());
        assert!(headers.get("x-hubspot-ratelimit-max").is_none());

        for bad in ["Bearer nope", "Basic abc", "Bearer "] {
            let (s, body, _) = raw(&base, Some(bad), reqwest::Method::GET, path, &[], None).await;
            assert_eq!(
                (s, body["category"].clone()),
                (401, json!("INVALID_AUTHENTICATION")),
                "{bad}"
            );
        }
        let (s, _, headers) = raw(
            &base,
            Some(&format!("bearer {PAT}")),
            reqwest::Method::GET,
            path,
            &[],
            None,
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(headers["x-hubspot-ratelimit-max"], "100");
        assert_eq!(
            headers["x-hubspot-ratelimit-interval-milliseconds"],
            "10000"
        );

        assert_eq!(api.get(path, &[]).await.0, 200);
        api.oauth.expire_access_tokens();
        let (s, body) = api.get(path, &[]).await;
        assert_eq!(s, 401);
        assert_eq!(body["category"], json!("EXPIRED_AUTHENTICATION"));
        // The private-app token does not expire.
        let (s, _, _) = raw(
            &base,
            Some(&format!("Bearer {PAT}")),
            reqwest::Method::GET,
            path,
            &[],
            None,
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(api.hs.api_calls(), 3);

        let log = format!("{:?}", api.hs.requests());
        assert!(!log.contains(PAT) && !log.contains(&api.token));

        // Outside the objects API, or an object type the fake lacks.
        let (s, _) = api.get("/crm/v3/owners", &[]).await;
        assert_eq!(s, 404);
    }

    #[tokio::test]
    async fn contacts_create_read_update_conflict() {
        let api = setup().await;
        let id = api
            .contact(
                json!({"email": "Ann@Example.com", "firstname": "Ann", "phone": 79161234567u64}),
            )
            .await;
        let n: u64 = id.parse().unwrap();
        assert!(n > u64::from(u32::MAX), "{id}");
        let c = api.hs.contact(&id).unwrap();
        assert_eq!(c["properties"]["phone"], json!("79161234567"));
        assert_eq!(c["properties"]["hs_object_id"], json!(id));
        assert_eq!(c["archived"], json!(false));
        assert!(
            c["properties"]["createdate"]
                .as_str()
                .unwrap()
                .ends_with('Z')
        );

        // The same e-mail in another case: 409 naming the existing id.
        let (s, body) = api
            .post(
                "/crm/v3/objects/contacts",
                json!({"properties": {"email": "ann@example.COM"}}),
            )
            .await;
        assert_eq!(s, 409);
        assert_eq!(body["category"], json!("CONFLICT"));
        assert_eq!(
            body["message"],
            json!(format!("Contact already exists. Existing ID: {id}"))
        );
        assert!(body["correlationId"].is_string());

        // A contact needs an e-mail or a name.
        let (s, body) = api
            .post(
                "/crm/v3/objects/contacts",
                json!({"properties": {"phone": "1"}}),
            )
            .await;
        assert_eq!(
            (s, body["category"].clone()),
            (400, json!("VALIDATION_ERROR"))
        );

        // Changing another contact's e-mail to Ann's.
        let bob = api.contact(json!({"email": "bob@example.com"})).await;
        let (s, body) = api
            .patch(
                &format!("/crm/v3/objects/contacts/{bob}"),
                json!({"properties": {"email": "ANN@example.com"}}),
            )
            .await;
        assert_eq!(s, 409);
        assert!(body["message"].as_str().unwrap().ends_with(&id));

        // Unknown and read-only properties, a bad e-mail: 400 listing each.
        let (s, body) = api
            .patch(
                &format!("/crm/v3/objects/contacts/{bob}"),
                json!({"properties": {"favourite_colour": "red", "hs_object_id": "1", "email": "nope"}}),
            )
            .await;
        assert_eq!(s, 400);
        assert_eq!(body["category"], json!("VALIDATION_ERROR"));
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .starts_with("Property values were not valid: ")
        );
        let mut named: Vec<(String, String)> = body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["context"]["propertyName"][0].as_str().unwrap().to_owned(),
                    e["code"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        named.sort();
        assert_eq!(
            named,
            vec![
                ("email".into(), "INVALID_EMAIL".into()),
                ("favourite_colour".into(), "PROPERTY_DOESNT_EXIST".into()),
                ("hs_object_id".into(), "READ_ONLY_VALUE".into()),
            ]
        );
        api.hs.add_property("contacts", "favourite_colour").unwrap();
        let (s, body) = api
            .patch(
                &format!("/crm/v3/objects/contacts/{bob}"),
                json!({"properties": {"favourite_colour": "red", "firstname": "Bob"}}),
            )
            .await;
        assert_eq!(s, 200);
        assert_eq!(body["properties"]["favourite_colour"], json!("red"));

        // Read by e-mail with chosen properties; "" clears.
        let (s, body) = api
            .patch(
                &format!("/crm/v3/objects/contacts/{bob}"),
                json!({"properties": {"firstname": ""}}),
            )
            .await;
        assert_eq!(s, 200);
        assert!(body["properties"].get("firstname").is_none());
        let (s, body) = api
            .get(
                "/crm/v3/objects/contacts/BOB@example.com",
                &[
                    ("idProperty", "email"),
                    ("properties", "firstname,favourite_colour"),
                ],
            )
            .await;
        assert_eq!(s, 200);
        assert_eq!(body["id"], json!(bob));
        assert_eq!(body["properties"]["firstname"], Value::Null);
        assert_eq!(body["properties"]["favourite_colour"], json!("red"));
        assert!(body["properties"]["lastmodifieddate"].is_string());
        assert!(body["properties"].get("email").is_none());

        // Default properties; unknown id → 404.
        let (_, body) = api
            .get(&format!("/crm/v3/objects/contacts/{id}"), &[])
            .await;
        let mut keys: Vec<&String> = body["properties"].as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            vec![
                "createdate",
                "email",
                "firstname",
                "hs_object_id",
                "lastmodifieddate",
                "lastname"
            ]
        );
        let (s, body) = api.get("/crm/v3/objects/contacts/1", &[]).await;
        assert_eq!(
            (s, body["category"].clone()),
            (404, json!("OBJECT_NOT_FOUND"))
        );
        let (s, _) = api.get("/crm/v3/objects/companies", &[]).await;
        assert_eq!(s, 400);

        // Delete archives; the e-mail is free again.
        let (s, _) = api
            .call(
                reqwest::Method::DELETE,
                &format!("/crm/v3/objects/contacts/{id}"),
                &[],
                None,
            )
            .await;
        assert_eq!(s, 204);
        assert_eq!(api.hs.contact(&id).unwrap()["archived"], json!(true));
        api.contact(json!({"email": "ann@example.com"})).await;
    }

    #[tokio::test]
    async fn list_pages_with_after_cursor() {
        let api = setup().await;
        let mut made = Vec::new();
        for i in 0..5 {
            made.push(api.contact(json!({"lastname": format!("L{i}")})).await);
        }
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut q = vec![("limit", "2".to_owned())];
            if let Some(a) = &after {
                q.push(("after", a.clone()));
            }
            let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (s, body) = api.get("/crm/v3/objects/contacts", &q).await;
            assert_eq!(s, 200);
            seen.extend(ids(&body));
            match body["paging"]["next"]["after"].as_str() {
                Some(a) => after = Some(a.to_owned()),
                None => break,
            }
        }
        assert_eq!(seen, made);
        let (s, _) = api
            .get("/crm/v3/objects/contacts", &[("limit", "101")])
            .await;
        assert_eq!(s, 400);
    }

    #[tokio::test]
    async fn search_filters_pages_and_lags() {
        let api = setup().await;
        let mut made = Vec::new();
        for i in 0..5 {
            made.push(
                api.contact(json!({"email": format!("p{i}@acme.io"), "lastname": format!("Person {i}"), "lifecyclestage": if i % 2 == 0 { "lead" } else { "customer" }}))
                    .await,
            );
        }
        let other = api.contact(json!({"email": "x@other.org"})).await;

        // Page through with after.
        let mut seen = Vec::new();
        let mut after = json!(null);
        loop {
            let (s, body) = api
                .search(json!({"filterGroups": [{"filters": [{"propertyName": "email", "operator": "CONTAINS_TOKEN", "value": "*@acme.io"}]}],
                               "limit": 2, "after": after}))
                .await;
            assert_eq!(s, 200, "{body}");
            assert_eq!(body["total"], json!(5));
            seen.extend(ids(&body));
            match body["paging"]["next"]["after"].as_str() {
                Some(a) => after = json!(a),
                None => break,
            }
        }
        assert_eq!(seen, made);

        // OR of groups, IN, sorts, properties.
        let (_, body) = api
            .search(json!({
                "filterGroups": [
                    {"filters": [{"propertyName": "lifecyclestage", "operator": "IN", "values": ["CUSTOMER"]}]},
                    {"filters": [{"propertyName": "email", "operator": "EQ", "value": "X@OTHER.ORG"}]}
                ],
                "sorts": [{"propertyName": "createdate", "direction": "DESCENDING"}],
                "properties": ["email"]
            }))
            .await;
        assert_eq!(
            ids(&body),
            vec![other.clone(), made[3].clone(), made[1].clone()]
        );
        assert_eq!(
            body["results"][0]["properties"]["email"],
            json!("x@other.org")
        );
        assert!(body.get("paging").is_none());
        let (_, body) = api
            .search(json!({"filterGroups": [{"filters": [
                {"propertyName": "hs_object_id", "operator": "GT", "value": made[2]},
                {"propertyName": "lastname", "operator": "HAS_PROPERTY"}]}]}))
            .await;
        assert_eq!(ids(&body), vec![made[3].clone(), made[4].clone()]);
        let (s, _) = api
            .search(json!({"filterGroups": [{"filters": [{"propertyName": "nope", "operator": "EQ", "value": "1"}]}]}))
            .await;
        assert_eq!(s, 400);
        let (s, _) = api.search(json!({"limit": 201})).await;
        assert_eq!(s, 400);

        // Index lag: new and updated records are missing until reindex.
        api.hs.set_index_lag(true);
        let late = api.contact(json!({"email": "late@acme.io"})).await;
        api.patch(
            &format!("/crm/v3/objects/contacts/{}", made[0]),
            json!({"properties": {"firstname": "Changed"}}),
        )
        .await;
        let acme = json!({"filterGroups": [{"filters": [{"propertyName": "email", "operator": "CONTAINS_TOKEN", "value": "*@acme.io"}]}], "limit": 100});
        let (_, body) = api.search(acme.clone()).await;
        assert_eq!(body["total"], json!(4));
        assert!(!ids(&body).contains(&late) && !ids(&body).contains(&made[0]));
        // Reads by id see them at once.
        assert_eq!(
            api.get(&format!("/crm/v3/objects/contacts/{late}"), &[])
                .await
                .0,
            200
        );
        api.hs.reindex();
        let (_, body) = api.search(acme).await;
        assert_eq!(body["total"], json!(6));
    }

    #[tokio::test]
    async fn batches_multi_status_upsert_and_read() {
        let api = setup().await;
        let ann = api.contact(json!({"email": "ann@example.com"})).await;

        // All or nothing without objectWriteTraceId.
        let (s, body) = api
            .post(
                "/crm/v3/objects/contacts/batch/create",
                json!({"inputs": [{"properties": {"email": "new@example.com"}}, {"properties": {"email": "ANN@example.com"}}]}),
            )
            .await;
        assert_eq!(s, 409);
        assert_eq!(
            body["message"],
            json!(format!("Contact already exists. Existing ID: {ann}"))
        );
        assert_eq!(api.hs.contacts().len(), 1);

        // Multi-status with trace ids.
        let (s, body) = api
            .post(
                "/crm/v3/objects/contacts/batch/create",
                json!({"inputs": [
                    {"properties": {"email": "new@example.com"}, "objectWriteTraceId": "t1"},
                    {"properties": {"email": "ann@example.com"}, "objectWriteTraceId": "t2"},
                    {"properties": {"foo": "x", "email": "c@example.com"}, "objectWriteTraceId": "t3"}]}),
            )
            .await;
        assert_eq!(s, 207, "{body}");
        assert_eq!(body["status"], json!("COMPLETE"));
        assert_eq!(body["numErrors"], json!(2));
        assert_eq!(body["results"].as_array().unwrap().len(), 1);
        assert_eq!(
            body["results"][0]["properties"]["email"],
            json!("new@example.com")
        );
        assert_eq!(body["errors"][0]["category"], json!("CONFLICT"));
        assert_eq!(
            body["errors"][0]["context"]["objectWriteTraceId"],
            json!(["t2"])
        );
        assert_eq!(body["errors"][1]["category"], json!("VALIDATION_ERROR"));
        assert!(body["startedAt"].is_string() && body["completedAt"].is_string());
        assert_eq!(api.hs.contacts().len(), 2);

        // Upsert by e-mail.
        let (s, body) = api
            .post(
                "/crm/v3/objects/contacts/batch/upsert",
                json!({"inputs": [
                    {"id": "ann@example.com", "idProperty": "email", "properties": {"firstname": "Ann"}},
                    {"id": "zed@example.com", "idProperty": "email", "properties": {"firstname": "Zed"}}]}),
            )
            .await;
        assert_eq!(s, 200, "{body}");
        let by_email = |email: &str| {
            body["results"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["properties"]["email"] == json!(email))
                .cloned()
                .unwrap()
        };
        assert_eq!(by_email("ann@example.com")["new"], json!(false));
        assert_eq!(by_email("ann@example.com")["id"], json!(ann));
        assert_eq!(by_email("zed@example.com")["new"], json!(true));
        assert_eq!(api.hs.contacts().len(), 3);

        // Update: one unknown id → 207.
        let (s, body) = api
            .post(
                "/crm/v3/objects/contacts/batch/update",
                json!({"inputs": [{"id": ann, "properties": {"lastname": "Lee"}}, {"id": "999", "properties": {"lastname": "X"}}]}),
            )
            .await;
        assert_eq!(s, 207);
        assert_eq!(body["errors"][0]["category"], json!("OBJECT_NOT_FOUND"));
        assert_eq!(
            api.hs.contact(&ann).unwrap()["properties"]["lastname"],
            json!("Lee")
        );

        // Read: found ones in results, missing ids in one error.
        let (s, body) = api
            .post(
                "/crm/v3/objects/contacts/batch/read",
                json!({"idProperty": "email", "properties": ["lastname"], "inputs": [{"id": "ann@example.com"}, {"id": "ghost@example.com"}]}),
            )
            .await;
        assert_eq!(s, 207);
        assert_eq!(body["results"][0]["properties"]["lastname"], json!("Lee"));
        assert_eq!(
            body["errors"][0]["context"]["ids"],
            json!(["ghost@example.com"])
        );

        // Too many inputs.
        let inputs: Vec<Value> = (0..101)
            .map(|i| json!({"properties": {"lastname": format!("n{i}")}}))
            .collect();
        let (s, _) = api
            .post(
                "/crm/v3/objects/contacts/batch/create",
                json!({"inputs": inputs}),
            )
            .await;
        assert_eq!(s, 400);
    }

    #[tokio::test]
    async fn notes_associate_with_contacts() {
        let api = setup().await;
        let ann = api.contact(json!({"email": "ann@example.com"})).await;
        let assoc = |to: &str| json!([{"to": {"id": to}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 202}]}]);
        let (s, body) = api
            .post(
                "/crm/v3/objects/notes",
                json!({"properties": {"hs_timestamp": "1714557600000", "hs_note_body": "Called, wants a demo"},
                       "associations": assoc(&ann)}),
            )
            .await;
        assert_eq!(s, 201, "{body}");
        let note = body["id"].as_str().unwrap().to_owned();
        assert_eq!(
            body["properties"]["hs_timestamp"],
            json!("2024-05-01T10:00:00.000Z")
        );
        assert!(body["properties"]["hs_createdate"].is_string());
        assert_eq!(api.hs.associations_of_note(&note), vec![ann.clone()]);

        let (s, body) = api
            .get(
                &format!("/crm/v3/objects/notes/{note}"),
                &[("associations", "contacts"), ("properties", "hs_note_body")],
            )
            .await;
        assert_eq!(s, 200);
        assert_eq!(
            body["associations"],
            json!({"contacts": {"results": [{"id": ann, "type": "note_to_contact"}]}})
        );
        assert_eq!(
            body["properties"]["hs_note_body"],
            json!("Called, wants a demo")
        );

        // Unknown contact, missing timestamp, a body too long.
        let (s, _) = api
            .post(
                "/crm/v3/objects/notes",
                json!({"properties": {"hs_timestamp": "2024-05-01T10:00:00Z"}, "associations": assoc("123")}),
            )
            .await;
        assert_eq!(s, 400);
        let (s, body) = api
            .post(
                "/crm/v3/objects/notes",
                json!({"properties": {"hs_note_body": "x"}}),
            )
            .await;
        assert_eq!(s, 400);
        assert_eq!(body["context"]["properties"], json!(["hs_timestamp"]));
        let (s, _) = api
            .post(
                "/crm/v3/objects/notes",
                json!({"properties": {"hs_timestamp": "2024-05-01T10:00:00Z", "hs_note_body": "x".repeat(MAX_NOTE_BODY + 1)}}),
            )
            .await;
        assert_eq!(s, 400);
        assert_eq!(api.hs.notes().len(), 1);

        // Notes of a contact, by search.
        let (_, body) = api
            .post(
                "/crm/v3/objects/notes/search",
                json!({"filterGroups": [{"filters": [{"propertyName": "associations.contact", "operator": "EQ", "value": ann}]}]}),
            )
            .await;
        assert_eq!(ids(&body), vec![note.clone()]);

        // Association endpoints: remove, then add back.
        let path = format!("/crm/v3/objects/notes/{note}/associations/contacts/{ann}/202");
        let (s, _) = api.call(reqwest::Method::DELETE, &path, &[], None).await;
        assert_eq!(s, 204);
        assert!(api.hs.associations_of_note(&note).is_empty());
        let (s, _) = api.call(reqwest::Method::PUT, &path, &[], None).await;
        assert_eq!(s, 200);
        assert_eq!(api.hs.associations_of_note(&note), vec![ann]);
    }

    #[tokio::test]
    async fn rate_limit_body_headers_and_faults() {
        let api = setup().await;
        api.hs.set_rate_limit(Some(3));
        let auth = format!("Bearer {}", api.token);
        let base = api.hs.base_url();
        let path = "/crm/v3/objects/contacts";
        let mut remaining = Vec::new();
        for _ in 0..3 {
            let (s, _, h) = raw(&base, Some(&auth), reqwest::Method::GET, path, &[], None).await;
            assert_eq!(s, 200);
            assert_eq!(h["x-hubspot-ratelimit-max"], "3");
            assert_eq!(h["x-hubspot-ratelimit-interval-milliseconds"], "10000");
            remaining.push(
                h["x-hubspot-ratelimit-remaining"]
                    .to_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        assert_eq!(remaining, vec!["2", "1", "0"]);
        let (s, body, h) = raw(&base, Some(&auth), reqwest::Method::GET, path, &[], None).await;
        assert_eq!(s, 429);
        assert_eq!(body["status"], json!("error"));
        assert_eq!(
            body["message"],
            json!("You have reached your ten_secondly_rolling limit.")
        );
        assert_eq!(body["errorType"], json!("RATE_LIMIT"));
        assert_eq!(body["policyName"], json!("TEN_SECONDLY_ROLLING"));
        assert!(body["correlationId"].is_string());
        assert_eq!(h["x-hubspot-ratelimit-remaining"], "0");
        assert_eq!(api.hs.rate_limited_count(), 1);
        // Per token: the private-app token has its own window.
        let (s, _, _) = raw(
            &base,
            Some(&format!("Bearer {PAT}")),
            reqwest::Method::GET,
            path,
            &[],
            None,
        )
        .await;
        assert_eq!(s, 200);

        api.hs.set_rate_limit(None);
        let (s, _, h) = raw(&base, Some(&auth), reqwest::Method::GET, path, &[], None).await;
        assert_eq!(s, 200);
        assert!(h.get("x-hubspot-ratelimit-max").is_none());

        api.hs.fail_next(1, Fault::TooManyRequests);
        let (s, body, h) = raw(&base, Some(&auth), reqwest::Method::GET, path, &[], None).await;
        assert_eq!(s, 429);
        assert_eq!(body["policyName"], json!("TEN_SECONDLY_ROLLING"));
        assert_eq!(h["x-hubspot-ratelimit-interval-milliseconds"], "10000");
        api.hs.fail_next(1, Fault::ServerError);
        let (s, body, _) = raw(&base, Some(&auth), reqwest::Method::GET, path, &[], None).await;
        assert_eq!(s, 502);
        assert_eq!(body["status"], json!("error"));
        assert!(body["correlationId"].is_string());
        assert_eq!(api.hs.fault_count(), 2);
    }

    #[tokio::test]
    async fn webhooks_echo_api_writes_signed_v3() {
        let api = setup().await;
        let rx = receiver(200, 0).await;
        let target = format!("http://{}/hooks/hubspot?portal=1", rx.addr);
        // Writes before the subscription queue nothing.
        api.contact(json!({"email": "early@example.com"})).await;
        api.hs.subscribe(&target);
        let id = api
            .contact(json!({"email": "ann@example.com", "firstname": "Ann"}))
            .await;
        api.patch(
            &format!("/crm/v3/objects/contacts/{id}"),
            json!({"properties": {"firstname": "Anna", "email": "ann@example.com"}}),
        )
        .await;
        api.hs
            .edit_as_user("contacts", &id, &[("phone", "+79161234567")])
            .unwrap();

        let sent = api.hs.deliver_webhooks().await;
        assert_eq!(sent.len(), 1);
        assert!(sent[0].ok() && !sent[0].requeued);
        let got = rx.requests();
        assert_eq!(got.len(), 1);
        let req = &got[0];
        assert_eq!(req.path, "/hooks/hubspot");
        assert_eq!(req.header("content-type"), Some("application/json"));
        let ts = req.header("x-hubspot-request-timestamp").unwrap();
        let age = Utc::now().timestamp_millis() - ts.parse::<i64>().unwrap();
        assert!((0..60_000).contains(&age), "{age}");
        let expected = hmac_b64(SECRET, format!("POST{target}{}{ts}", req.body).as_bytes());
        assert_eq!(
            req.header("x-hubspot-signature-v3"),
            Some(expected.as_str())
        );
        assert_eq!(sent[0].signature, expected);

        let events = req.json().unwrap();
        let kinds: Vec<(String, String, String)> = events
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["subscriptionType"].as_str().unwrap().to_owned(),
                    e["propertyName"].as_str().unwrap_or("").to_owned(),
                    e["changeSource"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let k = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
        assert_eq!(
            kinds,
            vec![
                k("contact.creation", "", "API"),
                k("contact.propertyChange", "email", "API"),
                k("contact.propertyChange", "firstname", "API"),
                // The PATCH: only the property that changed.
                k("contact.propertyChange", "firstname", "API"),
                k("contact.propertyChange", "phone", "CRM_UI"),
            ]
        );
        let first = &events[0];
        assert_eq!(first["objectId"], json!(id.parse::<u64>().unwrap()));
        assert_eq!(first["attemptNumber"], json!(0));
        assert_eq!(first["portalId"], json!(PORTAL_ID));
        assert_eq!(first["appId"], json!(APP_ID));
        assert_eq!(first["sourceId"], json!(APP_ID.to_string()));
        assert!(first["occurredAt"].is_i64() && first["eventId"].is_u64());
        assert_eq!(events[3]["propertyValue"], json!("Anna"));
        assert_eq!(events[4]["sourceId"], json!(format!("userId:{UI_USER_ID}")));
        assert!(api.hs.pending_webhooks().is_empty());

        // Notes use the generic format; a deletion is announced too.
        api.post(
            "/crm/v3/objects/notes",
            json!({"properties": {"hs_timestamp": "2024-05-01T10:00:00Z"}}),
        )
        .await;
        api.hs.delete_as_user("contacts", &id).unwrap();
        let pending = api.hs.pending_webhooks();
        assert_eq!(pending[0]["subscriptionType"], json!("object.creation"));
        assert_eq!(pending[0]["objectTypeId"], json!("0-46"));
        let last = pending.last().unwrap();
        assert_eq!(last["subscriptionType"], json!("contact.deletion"));
        assert_eq!(last["changeSource"], json!("CRM_UI"));
    }

    #[tokio::test]
    async fn webhooks_retry_duplicate_and_bad_signatures() {
        let api = setup().await;
        let flaky = receiver(503, 1).await;
        let target = format!("http://{}/hook", flaky.addr);
        api.hs.subscribe(&target);
        api.hs.set_property_changes_on_create(false);
        api.hs
            .create_as_user("contacts", &[("email", "ui@example.com")])
            .unwrap();

        // 503: queued again with attemptNumber 1, then delivered.
        let first = api.hs.deliver_webhooks().await;
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].status, first[0].requeued), (Some(503), true));
        let pending = api.hs.pending_webhooks();
        assert_eq!(pending[0]["attemptNumber"], json!(1));
        assert_eq!(pending[0]["changeSource"], json!("CRM_UI"));
        let second = api.hs.deliver_webhooks().await;
        assert!(second[0].ok());
        assert_eq!(second[0].events[0]["attemptNumber"], json!(1));
        assert!(api.hs.deliver_webhooks().await.is_empty());

        // Duplicates: the same events twice, each copy signed.
        api.hs.set_duplicate_deliveries(2);
        api.hs
            .create_as_user("contacts", &[("lastname", "Twice")])
            .unwrap();
        let twice = api.hs.deliver_webhooks().await;
        assert_eq!(twice.len(), 2);
        assert_eq!(twice[0].body, twice[1].body);
        api.hs.set_duplicate_deliveries(1);

        // A wrong secret and a stale timestamp are the receiver's to catch.
        api.hs.sign_with("wrong-secret");
        api.hs.set_stale_timestamps(true);
        api.hs
            .create_as_user("contacts", &[("lastname", "Stale")])
            .unwrap();
        let bad = api.hs.deliver_webhooks().await;
        let d = &bad[0];
        let good = signature_v3(SECRET, "POST", &target, d.body.as_bytes(), &d.timestamp);
        assert_ne!(d.signature, good);
        assert_eq!(
            d.signature,
            hmac_b64(
                "wrong-secret",
                format!("POST{target}{}{}", d.body, d.timestamp).as_bytes()
            )
        );
        let age = Utc::now().timestamp_millis() - d.timestamp.parse::<i64>().unwrap();
        assert!(age >= 9 * 60 * 1000, "{age}");

        // 400 is not retried; nobody listening is.
        let refusing = receiver(400, usize::MAX).await;
        api.hs.subscribe(&format!("http://{}/hook", refusing.addr));
        api.hs
            .create_as_user("contacts", &[("lastname", "Refused")])
            .unwrap();
        let refused = api.hs.deliver_webhooks().await;
        assert_eq!((refused[0].status, refused[0].requeued), (Some(400), false));
        assert!(api.hs.pending_webhooks().is_empty());
        assert_eq!(api.hs.dropped_webhooks().len(), 1);

        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        api.hs.subscribe(&format!("http://{addr}/hook"));
        api.hs
            .create_as_user("contacts", &[("lastname", "Nobody")])
            .unwrap();
        let lost = api.hs.deliver_webhooks().await;
        assert!(lost[0].status.is_none() && lost[0].error.is_some() && lost[0].requeued);
        assert_eq!(api.hs.pending_webhooks()[0]["attemptNumber"], json!(1));
    }

    #[test]
    fn tokens_globs_and_times() {
        assert!(contains_token("ann@example.com", "*@example.com"));
        assert!(contains_token("Ann Lee", "lee"));
        assert!(contains_token("ann@example.com", "example"));
        assert!(!contains_token("ann@example.com", "exam"));
        assert!(glob("abc", "a*c") && glob("abc", "*") && !glob("abc", "a*d"));
        assert_eq!(parse_ms("1714557600000"), Some(1_714_557_600_000));
        assert_eq!(parse_ms("2024-05-01T10:00:00Z"), Some(1_714_557_600_000));
        assert_eq!(parse_ms("2024-05-01"), Some(1_714_521_600_000));
        assert_eq!(parse_ms("soon"), None);
        assert!(valid_email("a@b.co") && !valid_email("a@b") && !valid_email("@b.co"));
    }
}
