//! Fake KADO (KADO Networks: digital business cards, contacts and notes per
//! company and team). KADO publishes **no** API: this fake implements
//! crmbridge's own contract for a KADO-side adapter, exactly as written in
//! `shared/connectors/src/vendors/kado/API.md` ("The contract") — a test
//! that passes here passes against that contract, not against a real KADO.
//!
//! The contract, as served (paths are relative to [`FakeKado::base_url`],
//! which stands for the adapter's `base_url` with any prefix, so they are
//! served at the root):
//! * auth `Authorization: Bearer <token>` on every call (one token per
//!   company, scheme case-insensitive); missing or wrong → 401
//!   `{"error":{"code":"unauthorized","message"}}`. The request log redacts
//!   `authorization`.
//! * `GET /company` → `{"company_id","name","teams":[{"id","name"}]}`: the
//!   token's company ([`FakeKado::company_id`]) and all its teams, as given
//!   to [`FakeKado::start`].
//! * `GET /contacts?hubspot_id=<id>&email=<e-mail>&phone=<E.164>` (any of
//!   the three) → `{"data":[Contact]}` (empty when none): the contact
//!   carrying that HubSpot reference first, then the e-mail matches, then
//!   the phone matches, each contact once, in creation order: the e-mail compared
//!   case-insensitively with each of a contact's `emails`, the phone by
//!   digits (equal when the last 10 digits are equal, or all of them when
//!   either side has fewer than 10) with each of its `phones`; deleted
//!   contacts excluded, private ones included.
//! * `GET /contacts?updated_since=<RFC 3339>&cursor=<opaque>&limit=<1–100>`
//!   and `GET /notes?…` → `{"data":[…],"next_cursor":"…"|null}`, records of
//!   every team ordered by `updated_at`, then id, private and deleted ones
//!   included (flagged by `is_private` / `deleted`; a contact also says who
//!   made its last change, `origin`: `user` or `crmbridge`). `updated_since` is
//!   inclusive; the cursor is a keyset position (the last row's
//!   `updated_at` and id), so a record changed while a client pages moves to
//!   the end and is seen again, never skipped. `limit` defaults to
//!   [`DEFAULT_LIMIT`]. Both are optional in the contract:
//!   [`FakeKado::set_list_endpoints`]`(false)` makes them answer 404
//!   `not_found` ("not offered"); the e-mail / phone look-up stays.
//! * `GET /contacts/{id}` → the Contact (404 `not_found`); `PATCH
//!   /contacts/{id}` with some writable fields (left out: kept; `null`:
//!   cleared; `external_refs` merged key by key) → 200 the Contact; a
//!   crmbridge write, so its event carries `origin: "crmbridge"`. A PATCH
//!   never moves a HubSpot reference: setting `external_refs.hubspot` on a
//!   contact that carries another → 409 `conflict`. `PATCH /notes/{id}`
//!   likewise (`body`, `is_private`, `external_refs`). A person's change
//!   (`edit_contact_as_user`) stamps the contact's `source_updated_at` with
//!   its time.
//! * `PUT /contacts/by-ref/hubspot/{hubspot_contact_id}` with a Contact
//!   (writable fields `team_id`, `first_name`, `last_name`, `job_title`,
//!   `organization`, `emails`, `phones`, `owner_email`, `is_private`,
//!   `external_refs`): the contact whose `external_refs.hubspot` is that id
//!   — of any team, a deleted one included (it is restored) — is updated in
//!   place → 200 `{"id"}`; else one is created carrying that id → 201
//!   `{"id"}` (`team_id` and `is_private` required then). A field left out
//!   is kept, `null` (or `""`) clears it, arrays are replaced whole,
//!   `external_refs` is merged key by key (`null` removes a key; `hubspot`
//!   always equals the path's id). A PUT that changes no value writes
//!   nothing: no `updated_at` bump, no event. With `If-Match: *` a PUT only
//!   updates: no contact with that reference → 404 `not_found`. A write
//!   (PUT or PATCH) may carry `source_updated_at` (RFC 3339): when the
//!   contact holds a newer one, it changes nothing → 200 with `"stale":
//!   true` (the PATCH answers the Contact with it).
//! * `PUT /notes/by-ref/hubspot/{hubspot_note_id}` with a Note (`contact_id`
//!   — a **KADO** contact id, required on every PUT —, `author_email`,
//!   `body`, `is_private`, `external_refs`), the same way: 201 / 200
//!   `{"id"}`; `body` and `is_private` required when creating; an unknown or
//!   deleted `contact_id` → 404 `not_found`. Instead of `contact_id` a note
//!   may name `contact_ref: {"hubspot": "<contact id>"}`: no contact with
//!   that reference → 404 `not_found` with `field: "contact_ref"`. A note belongs to its contact's
//!   team.
//! * records: Contact `{"id":"c_1","team_id","first_name","last_name",
//!   "job_title","organization","emails":[…],"phones":[…],"owner_email",
//!   "is_private","external_refs":{"hubspot":"512"},"created_at",
//!   "updated_at"[,"deleted"]}`; Note `{"id":"n_1","contact_id",
//!   "author_email","body","is_private","external_refs","created_at",
//!   "updated_at"[,"deleted"]}`. `deleted` appears in list answers and
//!   `*.deleted` events only. Times are RFC 3339 UTC with milliseconds;
//!   every change gets a fresh `updated_at` (never equal to another's).
//! * `external_refs.hubspot` is unique per company and object type: the
//!   fixtures refuse to give a second record the same HubSpot id.
//! * errors `{"error":{"code","message"[,"field"]}}`: 400 `validation` with
//!   `field` (an unknown field, one KADO sets — `id`, `created_at`,
//!   `updated_at`, `deleted` —, a wrong type, a missing required field, an
//!   e-mail without `@`, a body longer than [`MAX_NOTE_BODY`] characters,
//!   an `external_refs.hubspot` other than the path's, a bad `limit`,
//!   `updated_since`, `cursor`, `email` or `phone`; a body that is not a
//!   JSON object has no `field`); 403 `forbidden` (a `team_id` that is not
//!   one of the company's teams); 404 `not_found` (an unknown `contact_id`,
//!   a list endpoint switched off, any call not in the contract); 409
//!   `conflict` (only with [`FakeKado::set_refuse_duplicate_emails`]: an
//!   e-mail another live contact has; the message names both ids); 429
//!   `rate_limited` with `Retry-After: 1` once [`FakeKado::set_rate_limit`]
//!   requests a second are exceeded.
//! * webhooks (KADO → crmbridge): after [`FakeKado::subscribe`], **every**
//!   change — a user's (`*_as_user` fixtures, `"origin":"user"`) and a
//!   write through the PUT calls (`"origin":"crmbridge"`) — queues one event
//!   `{"event_id","kind","occurred_at","origin","company_id","team_id",
//!   "data"}`, `kind` one of `contact.created|updated|deleted`,
//!   `note.created|updated|deleted`, `data` the Contact or Note,
//!   `event_id` a fresh UUID. [`FakeKado::deliver_webhooks`] makes one
//!   pass: one POST per event whose body is the event object
//!   ([`FakeKado::set_batch`]: JSON arrays of up to [`WEBHOOK_BATCH`]
//!   events instead), `Content-Type: application/json`; with a secret,
//!   `X-Timestamp: <unix seconds>` and `X-Signature: sha256=<lower-case hex
//!   HMAC-SHA256(secret, timestamp + "." + body)>` ([`signature`]). A
//!   request answered 5xx or 429, or not answered within
//!   [`WEBHOOK_TIMEOUT`], is sent again on the next pass with the same
//!   `event_id`s and the same body bytes (a fresh timestamp and
//!   signature); one answered anything else (400, 401, …) is dropped
//!   ([`FakeKado::dropped_webhooks`]). Knobs: duplicate sends, a wrong
//!   signing secret, stale timestamps (receivers must refuse ones more than
//!   300 seconds off).
//! * injected faults: `ServerError` → 500 `{"error":{"code":"internal",…}}`,
//!   `TooManyRequests` → the 429 above with `Retry-After: 1`.
//!
//! Choices the contract leaves open (the fake's choice in brackets): the
//! company's `name` [`Company <company_id>`, see
//! [`FakeKado::set_company_name`]]; a PUT's `team_id` on an existing record
//! [checked, but the record stays in its team: "updated in place"]; a
//! note PUT naming another contact [the note moves to it]; whether a
//! duplicate e-mail is refused [no, unless switched on: the connector must
//! match by e-mail, then phone, before creating]; whether `updated_since`
//! is inclusive [yes]; a restored record's event [`*.updated`]; the answer
//! statuses besides 2xx that are retried [only 5xx and 429]; an event's
//! retries [unbounded, one per pass]; a contact with no name, e-mail or
//! phone [allowed]; phones [any text, "as typed"]; an empty note body
//! [allowed through the API, refused by the fixtures].
//!
//! Not in the contract, so not served: reading one record by id, deleting
//! through the API, subscribing through the API, the earlier draft's
//! `POST /contacts`, `PATCH /contacts/{id}` and `POST /notes`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use http::{Method, StatusCode};
use serde_json::{Map, Value, json};
use sha2::Sha256;

use crate::FakeError;
use crate::server::{self, Fault, Req, Resp, Server, Vendor, common_methods, lock};
use crate::util::{PerSecondLimit, uuid_v4};

/// The largest `limit` of a list call.
pub const MAX_LIMIT: usize = 100;
/// `limit` when none is given.
pub const DEFAULT_LIMIT: usize = 50;
/// The longest note body, in characters.
pub const MAX_NOTE_BODY: usize = 65_536;
/// The most events in one webhook request (with [`FakeKado::set_batch`]).
pub const WEBHOOK_BATCH: usize = 100;
/// The KADO user the `*_as_user` fixtures act as (`owner_email`,
/// `author_email`).
pub const USER_EMAIL: &str = "anna@kado.example";
/// How long the webhook sender waits for the receiver.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// How far in the past [`FakeKado::set_stale_timestamps`] puts
/// `X-Timestamp`, in seconds.
pub const STALE_BY_SECS: i64 = 600;

const CONTACT_FIELDS: &[&str] = &[
    "team_id",
    "first_name",
    "last_name",
    "job_title",
    "organization",
    "emails",
    "phones",
    "owner_email",
    "is_private",
    "external_refs",
    "source_updated_at",
];
const NOTE_FIELDS: &[&str] = &[
    "contact_id",
    "contact_ref",
    "author_email",
    "body",
    "is_private",
    "external_refs",
];
const READ_ONLY: &[&str] = &["id", "created_at", "updated_at", "deleted"];

/// An error of the contract: `{"error":{"code","message"[,"field"]}}`.
#[derive(Debug, Clone)]
struct KErr {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
}

type R<T> = Result<T, KErr>;

impl KErr {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        KErr {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    fn validation(field: &str, message: impl Into<String>) -> Self {
        KErr {
            field: Some(field.to_owned()),
            ..KErr::new(StatusCode::BAD_REQUEST, "validation", message)
        }
    }

    fn not_found(message: impl Into<String>) -> Self {
        KErr::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    fn on_field(mut self, field: &str) -> Self {
        self.field = Some(field.to_owned());
        self
    }

    fn forbidden(team: &str) -> Self {
        KErr::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("team {team} is not a team of this company"),
        )
    }

    fn conflict(message: impl Into<String>) -> Self {
        KErr::new(StatusCode::CONFLICT, "conflict", message)
    }

    fn resp(&self) -> Resp {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(field) = &self.field {
            error["field"] = json!(field);
        }
        Resp::json(self.status, &json!({"error": error}))
    }
}

fn fixture_error(e: KErr) -> FakeError {
    if e.status == StatusCode::NOT_FOUND {
        FakeError::NotFound(e.message)
    } else {
        let field = e.field.map(|f| format!(" ({f})")).unwrap_or_default();
        FakeError::Invalid(format!("{}: {}{field}", e.code, e.message))
    }
}

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn refs_json(refs: &BTreeMap<String, String>) -> Value {
    Value::Object(
        refs.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

fn opt_json(v: &Option<String>) -> Value {
    v.clone().map_or(Value::Null, Value::String)
}

/// Who made a change: the `origin` of its event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// A KADO user (the fixtures).
    User,
    /// crmbridge, through the PUT calls.
    Crmbridge,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::User => "user",
            Origin::Crmbridge => "crmbridge",
        }
    }
}

/// A contact's values (what "changed" compares).
#[derive(Debug, Clone, PartialEq)]
struct ContactData {
    team_id: String,
    first_name: Option<String>,
    last_name: Option<String>,
    job_title: Option<String>,
    organization: Option<String>,
    emails: Vec<String>,
    phones: Vec<String>,
    owner_email: Option<String>,
    is_private: bool,
    external_refs: BTreeMap<String, String>,
    /// The newest source modification time written (`source_updated_at`):
    /// a write carrying an older one changes nothing.
    source_updated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
struct Contact {
    seq: u64,
    data: ContactData,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted: bool,
    /// Who made the last change (list answers say it as `origin`).
    last_origin: Origin,
}

impl Contact {
    fn id(&self) -> String {
        format!("c_{}", self.seq)
    }

    /// The Contact shape; `with_deleted` for list answers and
    /// `contact.deleted` events.
    fn json(&self, with_deleted: bool) -> Value {
        let c = &self.data;
        let mut v = json!({
            "id": self.id(),
            "team_id": c.team_id,
            "first_name": opt_json(&c.first_name),
            "last_name": opt_json(&c.last_name),
            "job_title": opt_json(&c.job_title),
            "organization": opt_json(&c.organization),
            "emails": c.emails,
            "phones": c.phones,
            "owner_email": opt_json(&c.owner_email),
            "is_private": c.is_private,
            "external_refs": refs_json(&c.external_refs),
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        });
        if let Some(at) = c.source_updated_at {
            v["source_updated_at"] = json!(iso(at));
        }
        if with_deleted {
            v["deleted"] = json!(self.deleted);
        }
        v
    }
}

/// A note's values.
#[derive(Debug, Clone, PartialEq)]
struct NoteData {
    contact_seq: u64,
    author_email: Option<String>,
    body: String,
    is_private: bool,
    external_refs: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
struct Note {
    seq: u64,
    data: NoteData,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted: bool,
}

impl Note {
    fn id(&self) -> String {
        format!("n_{}", self.seq)
    }

    /// The Note shape; `with_deleted` as for contacts.
    fn json(&self, with_deleted: bool) -> Value {
        let n = &self.data;
        let mut v = json!({
            "id": self.id(),
            "contact_id": format!("c_{}", n.contact_seq),
            "author_email": opt_json(&n.author_email),
            "body": n.body,
            "is_private": n.is_private,
            "external_refs": refs_json(&n.external_refs),
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        });
        if with_deleted {
            v["deleted"] = json!(self.deleted);
        }
        v
    }
}

/// What a list needs of a record.
trait Item {
    fn key(&self) -> (i64, u64);
    fn list_json(&self) -> Value;
}

impl Item for Contact {
    fn key(&self) -> (i64, u64) {
        (self.updated_at.timestamp_millis(), self.seq)
    }

    fn list_json(&self) -> Value {
        let mut v = self.json(true);
        v["origin"] = json!(self.last_origin.as_str());
        v
    }
}

impl Item for Note {
    fn key(&self) -> (i64, u64) {
        (self.updated_at.timestamp_millis(), self.seq)
    }

    fn list_json(&self) -> Value {
        self.json(true)
    }
}

/// The contact fields of a write (outer `None`: not sent).
#[derive(Debug, Default)]
struct ContactFields {
    team_id: Option<String>,
    first_name: Option<Option<String>>,
    last_name: Option<Option<String>>,
    job_title: Option<Option<String>>,
    organization: Option<Option<String>>,
    emails: Option<Vec<String>>,
    phones: Option<Vec<String>>,
    owner_email: Option<Option<String>>,
    is_private: Option<bool>,
    external_refs: Option<BTreeMap<String, Option<String>>>,
    source_updated_at: Option<DateTime<Utc>>,
}

impl ContactFields {
    /// Whether this write is older than what the contact already holds
    /// (by the source's own modification time): it then changes nothing.
    fn is_stale(&self, data: &ContactData) -> bool {
        matches!((self.source_updated_at, data.source_updated_at), (Some(mine), Some(held)) if mine < held)
    }

    /// `data` with these fields applied (`team_id` only when `move_team`).
    fn apply(self, data: &ContactData, move_team: bool) -> ContactData {
        let mut c = data.clone();
        if let Some(v) = self.team_id
            && move_team
        {
            c.team_id = v;
        }
        if let Some(v) = self.first_name {
            c.first_name = v;
        }
        if let Some(v) = self.last_name {
            c.last_name = v;
        }
        if let Some(v) = self.job_title {
            c.job_title = v;
        }
        if let Some(v) = self.organization {
            c.organization = v;
        }
        if let Some(v) = self.emails {
            c.emails = v;
        }
        if let Some(v) = self.phones {
            c.phones = v;
        }
        if let Some(v) = self.owner_email {
            c.owner_email = v;
        }
        if let Some(v) = self.is_private {
            c.is_private = v;
        }
        if let Some(r) = self.external_refs {
            merge_refs(&mut c.external_refs, r);
        }
        if self.source_updated_at.is_some() {
            c.source_updated_at = self.source_updated_at;
        }
        c
    }
}

/// The note fields of a write.
#[derive(Debug, Default)]
struct NoteFields {
    contact_id: Option<String>,
    /// `{"hubspot": id}`: the contact found by its HubSpot id instead.
    contact_ref: Option<String>,
    author_email: Option<Option<String>>,
    body: Option<String>,
    is_private: Option<bool>,
    external_refs: Option<BTreeMap<String, Option<String>>>,
}

fn check_fields(body: &Map<String, Value>, allowed: &[&str]) -> R<()> {
    for key in body.keys() {
        if READ_ONLY.contains(&key.as_str()) {
            return Err(KErr::validation(
                key,
                format!("{key} is set by KADO and must be absent on writes"),
            ));
        }
        if !allowed.contains(&key.as_str()) {
            return Err(KErr::validation(key, format!("unknown field {key}")));
        }
    }
    Ok(())
}

/// A nullable string: `null` or `""` → `None`.
fn opt_string(field: &str, v: &Value) -> R<Option<String>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s) => Ok(Some(s.trim().to_owned())),
        _ => Err(KErr::validation(
            field,
            format!("{field} must be a string or null"),
        )),
    }
}

/// A required, non-empty string.
fn id_string(field: &str, v: &Value) -> R<String> {
    opt_string(field, v)?.ok_or_else(|| KErr::validation(field, format!("{field} is required")))
}

fn string_list(field: &str, v: &Value) -> R<Vec<String>> {
    let bad = || KErr::validation(field, format!("{field} must be an array of strings"));
    let Value::Array(items) = v else {
        return Err(bad());
    };
    let mut out = Vec::new();
    for item in items {
        let s = item.as_str().ok_or_else(bad)?.trim();
        if !s.is_empty() {
            out.push(s.to_owned());
        }
    }
    Ok(out)
}

fn boolean(field: &str, v: &Value) -> R<bool> {
    v.as_bool()
        .ok_or_else(|| KErr::validation(field, format!("{field} must be true or false")))
}

fn refs(v: &Value) -> R<BTreeMap<String, Option<String>>> {
    let bad = || {
        KErr::validation(
            "external_refs",
            "external_refs must be an object of strings (null removes a key)",
        )
    };
    let Value::Object(map) = v else {
        return Err(bad());
    };
    map.iter()
        .map(|(k, v)| match v {
            Value::Null => Ok((k.clone(), None)),
            Value::String(s) if !s.trim().is_empty() => Ok((k.clone(), Some(s.trim().to_owned()))),
            Value::String(_) => Ok((k.clone(), None)),
            _ => Err(bad()),
        })
        .collect()
}

fn valid_email(s: &str) -> bool {
    s.split_once('@')
        .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !s.contains(char::is_whitespace))
}

fn parse_contact(body: &Map<String, Value>) -> R<ContactFields> {
    check_fields(body, CONTACT_FIELDS)?;
    let mut f = ContactFields::default();
    for (key, v) in body {
        match key.as_str() {
            "team_id" => f.team_id = Some(id_string(key, v)?),
            "first_name" => f.first_name = Some(opt_string(key, v)?),
            "last_name" => f.last_name = Some(opt_string(key, v)?),
            "job_title" => f.job_title = Some(opt_string(key, v)?),
            "organization" => f.organization = Some(opt_string(key, v)?),
            "owner_email" => f.owner_email = Some(opt_string(key, v)?),
            "emails" => {
                let emails = string_list(key, v)?;
                if let Some(bad) = emails.iter().find(|e| !valid_email(e)) {
                    return Err(KErr::validation(
                        key,
                        format!("{bad} is not an e-mail address"),
                    ));
                }
                f.emails = Some(emails);
            }
            "phones" => f.phones = Some(string_list(key, v)?),
            "is_private" => f.is_private = Some(boolean(key, v)?),
            "external_refs" => f.external_refs = Some(refs(v)?),
            "source_updated_at" => {
                let text = v.as_str().ok_or_else(|| {
                    KErr::validation(key, "source_updated_at must be an RFC 3339 time")
                })?;
                let at = DateTime::parse_from_rfc3339(text).map_err(|_| {
                    KErr::validation(key, format!("{text} is not an RFC 3339 time"))
                })?;
                f.source_updated_at = Some(at.with_timezone(&Utc));
            }
            _ => {}
        }
    }
    Ok(f)
}

fn check_body_length(body: &str) -> R<()> {
    let n = body.chars().count();
    if n > MAX_NOTE_BODY {
        return Err(KErr::validation(
            "body",
            format!("body is {n} characters long; at most {MAX_NOTE_BODY} are allowed"),
        ));
    }
    Ok(())
}

fn parse_note(body: &Map<String, Value>) -> R<NoteFields> {
    check_fields(body, NOTE_FIELDS)?;
    let mut f = NoteFields::default();
    for (key, v) in body {
        match key.as_str() {
            "contact_id" => f.contact_id = Some(id_string(key, v)?),
            "contact_ref" => {
                let hubspot = v["hubspot"]
                    .as_str()
                    .filter(|h| !h.is_empty())
                    .ok_or_else(|| {
                        KErr::validation(key, "contact_ref must be {\"hubspot\": \"<contact id>\"}")
                    })?;
                f.contact_ref = Some(hubspot.to_owned());
            }
            "author_email" => f.author_email = Some(opt_string(key, v)?),
            "body" => {
                let text = v
                    .as_str()
                    .ok_or_else(|| KErr::validation(key, "body must be a string"))?;
                check_body_length(text)?;
                f.body = Some(text.to_owned());
            }
            "is_private" => f.is_private = Some(boolean(key, v)?),
            "external_refs" => f.external_refs = Some(refs(v)?),
            _ => {}
        }
    }
    Ok(f)
}

fn body_object(req: &Req) -> R<Map<String, Value>> {
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(KErr::new(
            StatusCode::BAD_REQUEST,
            "validation",
            "the body must be a JSON object",
        )),
    }
}

fn merge_refs(target: &mut BTreeMap<String, String>, patch: BTreeMap<String, Option<String>>) {
    for (k, v) in patch {
        match v {
            Some(v) => {
                target.insert(k, v);
            }
            None => {
                target.remove(&k);
            }
        }
    }
}

/// A PUT's `external_refs` may repeat the path's HubSpot id, not change or
/// remove it.
fn check_hubspot_ref(refs: Option<&BTreeMap<String, Option<String>>>, hubspot: &str) -> R<()> {
    match refs.and_then(|r| r.get("hubspot")) {
        Some(Some(v)) if v == hubspot => Ok(()),
        Some(_) => Err(KErr::validation(
            "external_refs",
            format!("external_refs.hubspot must be the id in the path ({hubspot})"),
        )),
        None => Ok(()),
    }
}

fn seq_of(id: &str, prefix: &str) -> Option<u64> {
    id.strip_prefix(prefix)?.parse().ok()
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// Phones compared by digits: the last 10 when both have that many, else
/// all of them.
fn same_phone(a: &str, b: &str) -> bool {
    if a.is_empty() || b.is_empty() {
        return false;
    }
    if a.len() >= 10 && b.len() >= 10 {
        return a.get(a.len() - 10..) == b.get(b.len() - 10..);
    }
    a == b
}

/// The cursor of a keyset position: base64url("ms:seq").
fn encode_cursor(key: (i64, u64)) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}:{}", key.0, key.1))
}

fn decode_cursor(s: &str) -> Option<(i64, u64)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (ms, seq) = text.split_once(':')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// `X-Signature` of a webhook: `sha256=` + lower-case hex(HMAC-SHA256(secret,
/// timestamp + "." + body)).
pub fn signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// One webhook request the fake sent.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookDelivery {
    /// The subscriber URL.
    pub url: String,
    /// The `event_id`s it carried, in order (one unless batched).
    pub event_ids: Vec<String>,
    /// Their `kind`s (`contact.created`, …), in the same order.
    pub kinds: Vec<String>,
    /// The raw body: one event object, or an array with
    /// [`FakeKado::set_batch`].
    pub body: String,
    /// `X-Timestamp` (unix seconds); `None` when unsigned.
    pub timestamp: Option<String>,
    /// `X-Signature` (`sha256=…`); `None` when unsigned.
    pub signature: Option<String>,
    /// How many earlier passes failed to deliver this body (0 first time).
    pub attempt: u32,
    /// The receiver's status; `None` on a transport error or timeout.
    pub status: Option<u16>,
    /// The transport error, if any.
    pub error: Option<String>,
    /// Whether the request was queued again for the next pass.
    pub requeued: bool,
}

impl WebhookDelivery {
    /// Whether the receiver answered 2xx.
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// One webhook request: its body is fixed when first sent, so that a
/// retry carries the same bytes.
#[derive(Debug, Clone)]
struct Outgoing {
    events: Vec<Value>,
    body: String,
    attempt: u32,
}

impl Outgoing {
    fn new(events: Vec<Value>, batch: bool) -> Self {
        let body = match events.as_slice() {
            [one] if !batch => serde_json::to_string(one),
            _ => serde_json::to_string(&events),
        }
        .unwrap_or_default();
        Outgoing {
            events,
            body,
            attempt: 0,
        }
    }

    fn field(&self, name: &str) -> Vec<String> {
        self.events
            .iter()
            .map(|e| e[name].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

/// Whether a webhook answer is retried: 5xx, 429, or none at all.
fn retried(status: Option<u16>) -> bool {
    status.is_none_or(|s| s == 429 || (500..600).contains(&s))
}

#[derive(Debug, Clone)]
struct Subscription {
    url: String,
    secret: Option<String>,
}

#[derive(Debug)]
struct Data {
    company_name: String,
    /// (id, name), as given to `start`.
    teams: Vec<(String, String)>,
    contacts: Vec<Contact>,
    notes: Vec<Note>,
    next_contact: u64,
    next_note: u64,
    last_ms: i64,
    limit: PerSecondLimit,
    api_calls: usize,
    lists_offered: bool,
    refuse_duplicate_emails: bool,
    subscription: Option<Subscription>,
    /// Events not sent yet.
    queue: VecDeque<Value>,
    /// Requests that failed and are sent again, body unchanged.
    retry: VecDeque<Outgoing>,
    /// Events whose request got an answer that is not retried.
    dropped: Vec<Value>,
    batch: bool,
    duplicates: usize,
    sign_secret: Option<String>,
    stale: bool,
}

impl Data {
    /// A clock that never repeats a millisecond.
    fn tick(&mut self) -> DateTime<Utc> {
        let ms = Utc::now().timestamp_millis().max(self.last_ms + 1);
        self.last_ms = ms;
        DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_else(Utc::now)
    }

    fn check_team(&self, team: &str) -> R<()> {
        if self.teams.iter().any(|(id, _)| id == team) {
            Ok(())
        } else {
            Err(KErr::forbidden(team))
        }
    }

    fn contact_pos(&self, id: &str) -> Option<usize> {
        let seq = seq_of(id, "c_")?;
        self.contacts.iter().position(|c| c.seq == seq)
    }

    fn note_pos(&self, id: &str) -> Option<usize> {
        let seq = seq_of(id, "n_")?;
        self.notes.iter().position(|n| n.seq == seq)
    }

    /// A contact that is not deleted, or 404.
    fn live_contact(&self, id: &str) -> R<usize> {
        self.contact_pos(id)
            .filter(|i| !self.contacts[*i].deleted)
            .ok_or_else(|| KErr::not_found(format!("contact {id} not found")))
    }

    fn live_note(&self, id: &str) -> R<usize> {
        self.note_pos(id)
            .filter(|i| !self.notes[*i].deleted)
            .ok_or_else(|| KErr::not_found(format!("note {id} not found")))
    }

    fn team_of(&self, contact_seq: u64) -> String {
        self.contacts
            .iter()
            .find(|c| c.seq == contact_seq)
            .map(|c| c.data.team_id.clone())
            .unwrap_or_default()
    }

    /// The record (deleted ones included) other than `except` that carries
    /// this HubSpot id.
    fn contact_by_hubspot(&self, hubspot: &str, except: Option<usize>) -> Option<usize> {
        self.contacts.iter().enumerate().position(|(i, c)| {
            Some(i) != except
                && c.data.external_refs.get("hubspot").map(String::as_str) == Some(hubspot)
        })
    }

    fn note_by_hubspot(&self, hubspot: &str) -> Option<usize> {
        self.notes
            .iter()
            .position(|n| n.data.external_refs.get("hubspot").map(String::as_str) == Some(hubspot))
    }

    /// Keeps a contact's `external_refs.hubspot` unique (the fixtures; a
    /// PUT finds the holder instead; the fixtures set no note refs).
    fn check_unique_contact_ref(&self, data: &ContactData, except: Option<usize>) -> R<()> {
        match data.external_refs.get("hubspot") {
            Some(hs) => match self.contact_by_hubspot(hs, except) {
                Some(j) => Err(KErr::conflict(format!(
                    "external_refs.hubspot {hs} already belongs to {}",
                    self.contacts[j].id()
                ))),
                None => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// With [`FakeKado::set_refuse_duplicate_emails`]: 409 when another
    /// live contact has one of `data`'s e-mails.
    fn check_duplicate_emails(&self, data: &ContactData, me: Option<usize>) -> R<()> {
        if !self.refuse_duplicate_emails {
            return Ok(());
        }
        for email in &data.emails {
            let holder = self.contacts.iter().enumerate().find(|(i, c)| {
                Some(*i) != me
                    && !c.deleted
                    && c.data
                        .emails
                        .iter()
                        .any(|e| e.to_lowercase() == email.to_lowercase())
            });
            if let Some((_, other)) = holder {
                let me = me.map_or_else(|| "the new contact".to_owned(), |i| self.contacts[i].id());
                return Err(KErr::conflict(format!(
                    "{email} belongs to contact {}; {me} was not merged into it",
                    other.id()
                )));
            }
        }
        Ok(())
    }

    fn emit(
        &mut self,
        company: &str,
        kind: &str,
        origin: Origin,
        team: &str,
        data: Value,
        at: DateTime<Utc>,
    ) {
        if self.subscription.is_none() {
            return;
        }
        self.queue.push_back(json!({
            "event_id": uuid_v4(),
            "kind": kind,
            "occurred_at": iso(at),
            "origin": origin.as_str(),
            "company_id": company,
            "team_id": team,
            "data": data,
        }));
    }

    fn insert_contact(&mut self, company: &str, data: ContactData, origin: Origin) -> String {
        let now = self.tick();
        self.next_contact += 1;
        let contact = Contact {
            seq: self.next_contact,
            data,
            created_at: now,
            updated_at: now,
            deleted: false,
            last_origin: origin,
        };
        let (id, team, json) = (
            contact.id(),
            contact.data.team_id.clone(),
            contact.json(false),
        );
        self.contacts.push(contact);
        self.emit(company, "contact.created", origin, &team, json, now);
        id
    }

    /// Stores `data` (restoring a deleted contact); nothing when no value
    /// changed. Whether it wrote.
    fn commit_contact(
        &mut self,
        company: &str,
        i: usize,
        data: ContactData,
        origin: Origin,
    ) -> bool {
        if self.contacts[i].data == data && !self.contacts[i].deleted {
            return false;
        }
        let now = self.tick();
        let c = &mut self.contacts[i];
        c.data = data;
        c.deleted = false;
        c.updated_at = now;
        c.last_origin = origin;
        let (team, json) = (c.data.team_id.clone(), c.json(false));
        self.emit(company, "contact.updated", origin, &team, json, now);
        true
    }

    fn insert_note(&mut self, company: &str, data: NoteData, origin: Origin) -> String {
        let now = self.tick();
        self.next_note += 1;
        let note = Note {
            seq: self.next_note,
            data,
            created_at: now,
            updated_at: now,
            deleted: false,
        };
        let (id, json) = (note.id(), note.json(false));
        let team = self.team_of(note.data.contact_seq);
        self.notes.push(note);
        self.emit(company, "note.created", origin, &team, json, now);
        id
    }

    fn commit_note(&mut self, company: &str, i: usize, data: NoteData, origin: Origin) -> bool {
        if self.notes[i].data == data && !self.notes[i].deleted {
            return false;
        }
        let now = self.tick();
        let n = &mut self.notes[i];
        n.data = data;
        n.deleted = false;
        n.updated_at = now;
        let (seq, json) = (n.data.contact_seq, n.json(false));
        let team = self.team_of(seq);
        self.emit(company, "note.updated", origin, &team, json, now);
        true
    }

    /// `PUT /contacts/by-ref/hubspot/{hubspot}`: the id and whether it was
    /// created.
    /// With `only_existing` (`If-Match: *`) a missing contact is 404, not
    /// made. A write older than the contact's `source_updated_at` changes
    /// nothing (`stale`).
    fn put_contact(
        &mut self,
        company: &str,
        hubspot: &str,
        f: ContactFields,
        only_existing: bool,
    ) -> R<(String, bool, bool)> {
        check_hubspot_ref(f.external_refs.as_ref(), hubspot)?;
        if let Some(team) = &f.team_id {
            self.check_team(team)?;
        }
        if let Some(i) = self.contact_by_hubspot(hubspot, None) {
            if f.is_stale(&self.contacts[i].data) {
                return Ok((self.contacts[i].id(), false, true));
            }
            let data = f.apply(&self.contacts[i].data, false);
            self.check_duplicate_emails(&data, Some(i))?;
            self.commit_contact(company, i, data, Origin::Crmbridge);
            return Ok((self.contacts[i].id(), false, false));
        }
        if only_existing {
            return Err(KErr::not_found(format!(
                "no contact carries the HubSpot reference {hubspot}"
            )));
        }
        let team_id = f.team_id.clone().ok_or_else(|| {
            KErr::validation("team_id", "team_id is required to create a contact")
        })?;
        let is_private = f.is_private.ok_or_else(|| {
            KErr::validation("is_private", "is_private is required to create a contact")
        })?;
        let blank = ContactData {
            team_id,
            first_name: None,
            last_name: None,
            job_title: None,
            organization: None,
            emails: Vec::new(),
            phones: Vec::new(),
            owner_email: None,
            is_private,
            external_refs: BTreeMap::new(),
            source_updated_at: None,
        };
        let mut data = f.apply(&blank, true);
        data.external_refs
            .insert("hubspot".to_owned(), hubspot.to_owned());
        self.check_duplicate_emails(&data, None)?;
        Ok((
            self.insert_contact(company, data, Origin::Crmbridge),
            true,
            false,
        ))
    }

    /// `PUT /notes/by-ref/hubspot/{hubspot}`.
    fn put_note(&mut self, company: &str, hubspot: &str, f: NoteFields) -> R<(String, bool)> {
        check_hubspot_ref(f.external_refs.as_ref(), hubspot)?;
        let contact_id = match (&f.contact_id, &f.contact_ref) {
            (Some(id), _) => id.clone(),
            (None, Some(hubspot)) => {
                let i = self.contact_by_hubspot(hubspot, None).ok_or_else(|| {
                    KErr::not_found(format!(
                        "no contact carries the HubSpot reference {hubspot}"
                    ))
                    .on_field("contact_ref")
                })?;
                self.contacts[i].id()
            }
            (None, None) => {
                return Err(KErr::validation(
                    "contact_id",
                    "contact_id (or contact_ref) is required",
                ));
            }
        };
        let existing = self.note_by_hubspot(hubspot);
        if existing.is_none() {
            if f.body.is_none() {
                return Err(KErr::validation(
                    "body",
                    "body is required to create a note",
                ));
            }
            if f.is_private.is_none() {
                return Err(KErr::validation(
                    "is_private",
                    "is_private is required to create a note",
                ));
            }
        }
        let contact_seq = self.contacts[self.live_contact(&contact_id)?].seq;
        let apply = |mut n: NoteData| {
            n.contact_seq = contact_seq;
            if let Some(v) = f.author_email {
                n.author_email = v;
            }
            if let Some(v) = f.body {
                n.body = v;
            }
            if let Some(v) = f.is_private {
                n.is_private = v;
            }
            if let Some(r) = f.external_refs {
                merge_refs(&mut n.external_refs, r);
            }
            n.external_refs
                .insert("hubspot".to_owned(), hubspot.to_owned());
            n
        };
        match existing {
            Some(i) => {
                let data = apply(self.notes[i].data.clone());
                self.commit_note(company, i, data, Origin::Crmbridge);
                Ok((self.notes[i].id(), false))
            }
            None => {
                let data = apply(NoteData {
                    contact_seq,
                    author_email: None,
                    body: String::new(),
                    is_private: false,
                    external_refs: BTreeMap::new(),
                });
                Ok((self.insert_note(company, data, Origin::Crmbridge), true))
            }
        }
    }

    fn delete_contact(&mut self, company: &str, id: &str) -> R<()> {
        let i = self.live_contact(id)?;
        let now = self.tick();
        let c = &mut self.contacts[i];
        c.deleted = true;
        c.last_origin = Origin::User;
        c.updated_at = now;
        let (team, json) = (c.data.team_id.clone(), c.json(true));
        self.emit(company, "contact.deleted", Origin::User, &team, json, now);
        Ok(())
    }

    fn delete_note(&mut self, company: &str, id: &str) -> R<()> {
        let i = self.live_note(id)?;
        let now = self.tick();
        let n = &mut self.notes[i];
        n.deleted = true;
        n.updated_at = now;
        let (seq, json) = (n.data.contact_seq, n.json(true));
        let team = self.team_of(seq);
        self.emit(company, "note.deleted", Origin::User, &team, json, now);
        Ok(())
    }

    /// `create_contact_as_user` (`f` carries the team and privacy).
    fn user_create_contact(&mut self, company: &str, team: &str, f: ContactFields) -> R<String> {
        self.check_team(team)?;
        let blank = ContactData {
            team_id: team.to_owned(),
            first_name: None,
            last_name: None,
            job_title: None,
            organization: None,
            emails: Vec::new(),
            phones: Vec::new(),
            owner_email: None,
            is_private: false,
            external_refs: BTreeMap::new(),
            source_updated_at: None,
        };
        let data = f.apply(&blank, true);
        self.check_unique_contact_ref(&data, None)?;
        Ok(self.insert_contact(company, data, Origin::User))
    }

    /// `edit_contact_as_user`.
    fn user_edit_contact(&mut self, company: &str, id: &str, f: ContactFields) -> R<()> {
        let i = self.live_contact(id)?;
        if let Some(team) = &f.team_id {
            self.check_team(team)?;
        }
        let mut data = f.apply(&self.contacts[i].data, true);
        // A person's change is the newest write: a HubSpot value read
        // before it (an imported snapshot) must not overwrite it. An edit
        // that changes nothing stays a no-op.
        if data != self.contacts[i].data {
            data.source_updated_at = Some(Utc::now());
        }
        self.check_unique_contact_ref(&data, Some(i))?;
        self.commit_contact(company, i, data, Origin::User);
        Ok(())
    }

    /// `PATCH /contacts/{id}` (crmbridge's write: `origin: "crmbridge"`).
    fn patch_contact(&mut self, company: &str, id: &str, f: ContactFields) -> R<Value> {
        let i = self.live_contact(id)?;
        if let Some(team) = &f.team_id {
            self.check_team(team)?;
        }
        if f.is_stale(&self.contacts[i].data) {
            let mut record = self.contacts[i].json(false);
            record["stale"] = json!(true);
            return Ok(record);
        }
        if let (Some(held), Some(Some(wanted))) = (
            self.contacts[i].data.external_refs.get("hubspot"),
            f.external_refs.as_ref().and_then(|r| r.get("hubspot")),
        ) && held != wanted
        {
            return Err(KErr::conflict(format!(
                "{id} already carries the HubSpot reference {held}; a reference is not moved"
            ))
            .on_field("external_refs.hubspot"));
        }
        let data = f.apply(&self.contacts[i].data, false);
        self.check_unique_contact_ref(&data, Some(i))?;
        self.check_duplicate_emails(&data, Some(i))?;
        self.commit_contact(company, i, data, Origin::Crmbridge);
        Ok(self.contacts[i].json(false))
    }

    /// `PATCH /notes/{id}`: `body`, `is_private`, `external_refs` (merged
    /// key by key; a HubSpot reference is never moved to another).
    fn patch_note(&mut self, company: &str, id: &str, f: NoteFields) -> R<Value> {
        let i = self.live_note(id)?;
        if f.contact_id.is_some() || f.contact_ref.is_some() {
            return Err(KErr::validation(
                "contact_id",
                "a note does not move to another contact",
            ));
        }
        let mut data = self.notes[i].data.clone();
        if let Some(refs) = f.external_refs {
            if let (Some(held), Some(Some(wanted))) =
                (data.external_refs.get("hubspot"), refs.get("hubspot"))
                && held != wanted
            {
                return Err(KErr::conflict(format!(
                    "{id} already carries the HubSpot reference {held}; a reference is not moved"
                ))
                .on_field("external_refs.hubspot"));
            }
            if let Some(Some(wanted)) = refs.get("hubspot")
                && let Some(j) = self.note_by_hubspot(wanted)
                && j != i
            {
                return Err(KErr::conflict(format!(
                    "external_refs.hubspot {wanted} already belongs to {}",
                    self.notes[j].id()
                )));
            }
            merge_refs(&mut data.external_refs, refs);
        }
        if let Some(v) = f.body {
            data.body = v;
        }
        if let Some(v) = f.is_private {
            data.is_private = v;
        }
        if let Some(v) = f.author_email {
            data.author_email = v;
        }
        self.commit_note(company, i, data, Origin::Crmbridge);
        Ok(self.notes[i].json(false))
    }

    /// `create_note_as_user`.
    fn user_create_note(
        &mut self,
        company: &str,
        contact_id: &str,
        body: &str,
        private: bool,
    ) -> R<String> {
        let i = self.live_contact(contact_id)?;
        let data = NoteData {
            contact_seq: self.contacts[i].seq,
            author_email: Some(USER_EMAIL.to_owned()),
            body: fixture_body(body)?,
            is_private: private,
            external_refs: BTreeMap::new(),
        };
        Ok(self.insert_note(company, data, Origin::User))
    }

    /// A user's change to a live note (`edit_note_as_user`, `set_private`).
    fn user_edit_note(
        &mut self,
        company: &str,
        id: &str,
        change: impl FnOnce(&mut NoteData),
    ) -> R<()> {
        let i = self.live_note(id)?;
        let mut data = self.notes[i].data.clone();
        change(&mut data);
        self.commit_note(company, i, data, Origin::User);
        Ok(())
    }

    /// `GET /contacts?hubspot_id=…&email=…&phone=…` (any of them): the
    /// contact carrying that HubSpot reference (deleted ones too: a PUT by
    /// reference restores them), then live contacts with that e-mail
    /// (case-insensitive), then those with that phone (by digits), each
    /// once.
    fn lookup(
        &self,
        hubspot: Option<String>,
        email: Option<String>,
        phone: Option<String>,
    ) -> R<Value> {
        let email = match email {
            Some(email) => {
                let email = email.trim().to_lowercase();
                if !valid_email(&email) {
                    return Err(KErr::validation("email", "email must be an e-mail address"));
                }
                Some(email)
            }
            None => None,
        };
        let phone = match phone {
            Some(phone) => {
                let wanted = digits(&phone);
                if wanted.is_empty() {
                    return Err(KErr::validation("phone", "phone must contain digits"));
                }
                Some(wanted)
            }
            None => None,
        };
        let live = || self.contacts.iter().filter(|c| !c.deleted);
        let mut found: Vec<&Contact> = Vec::new();
        if let Some(i) = hubspot
            .as_deref()
            .and_then(|h| self.contact_by_hubspot(h, None))
        {
            found.push(&self.contacts[i]);
        }
        if let Some(email) = &email {
            for c in live().filter(|c| c.data.emails.iter().any(|e| e.to_lowercase() == *email)) {
                if !found.iter().any(|f| f.seq == c.seq) {
                    found.push(c);
                }
            }
        }
        if let Some(wanted) = &phone {
            for c in live().filter(|c| c.data.phones.iter().any(|p| same_phone(&digits(p), wanted)))
            {
                if !found.iter().any(|f| f.seq == c.seq) {
                    found.push(c);
                }
            }
        }
        let found: Vec<Value> = found.iter().map(|c| c.json(false)).collect();
        Ok(json!({"data": found}))
    }
}

/// One page of a list: every record, ordered by (`updated_at`, id), from
/// `updated_since` (inclusive) and after `cursor`.
fn page<T: Item>(items: &[T], req: &Req) -> R<Value> {
    let limit = match req.query_param("limit").filter(|s| !s.trim().is_empty()) {
        None => DEFAULT_LIMIT,
        Some(s) => s
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                KErr::validation("limit", format!("limit must be between 1 and {MAX_LIMIT}"))
            })?,
    };
    let since = match req
        .query_param("updated_since")
        .filter(|s| !s.trim().is_empty())
    {
        None => None,
        Some(s) => Some(
            DateTime::parse_from_rfc3339(s.trim())
                .map_err(|_| {
                    KErr::validation("updated_since", "updated_since must be an RFC 3339 time")
                })?
                .timestamp_millis(),
        ),
    };
    let after = match req.query_param("cursor").filter(|s| !s.trim().is_empty()) {
        None => None,
        Some(s) => {
            Some(decode_cursor(&s).ok_or_else(|| KErr::validation("cursor", "invalid cursor"))?)
        }
    };
    let mut rows: Vec<&T> = items
        .iter()
        .filter(|r| since.is_none_or(|s| r.key().0 >= s))
        .filter(|r| after.is_none_or(|a| r.key() > a))
        .collect();
    rows.sort_by_key(|r| r.key());
    let next_cursor = if rows.len() > limit {
        rows.get(limit - 1)
            .map_or(Value::Null, |r| Value::String(encode_cursor(r.key())))
    } else {
        Value::Null
    };
    let data: Vec<Value> = rows.iter().take(limit).map(|r| r.list_json()).collect();
    Ok(json!({"data": data, "next_cursor": next_cursor}))
}

struct Inner {
    token: String,
    company_id: String,
    base_url: String,
    data: Mutex<Data>,
}

/// A running fake KADO adapter (crmbridge's contract). Dropping it stops
/// the server.
pub struct FakeKado {
    server: Server,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FakeKado {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeKado")
            .field("addr", &self.server.addr)
            .field("company_id", &self.inner.company_id)
            .finish()
    }
}

fn fields_object(fields: Value) -> Result<Map<String, Value>, FakeError> {
    match fields {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(Map::new()),
        _ => Err(FakeError::Invalid("fields must be a JSON object".into())),
    }
}

/// A fixture's note body: not blank, not too long.
fn fixture_body(body: &str) -> R<String> {
    let body = body.trim();
    if body.is_empty() {
        return Err(KErr::validation("body", "a note needs a body"));
    }
    check_body_length(body)?;
    Ok(body.to_owned())
}

impl FakeKado {
    /// Starts the adapter for one company: `token` is its token, `teams`
    /// all its teams as (id, name) pairs.
    pub async fn start(
        token: &str,
        company_id: &str,
        teams: &[(&str, &str)],
    ) -> Result<Self, FakeError> {
        let mut inner_out = None;
        let server = server::serve(|addr| {
            let inner = Arc::new(Inner {
                token: token.to_owned(),
                company_id: company_id.to_owned(),
                base_url: format!("http://{addr}"),
                data: Mutex::new(Data {
                    company_name: format!("Company {company_id}"),
                    teams: teams
                        .iter()
                        .map(|(id, name)| ((*id).to_owned(), (*name).to_owned()))
                        .collect(),
                    contacts: Vec::new(),
                    notes: Vec::new(),
                    next_contact: 0,
                    next_note: 0,
                    last_ms: 0,
                    limit: PerSecondLimit::default(),
                    api_calls: 0,
                    lists_offered: true,
                    refuse_duplicate_emails: false,
                    subscription: None,
                    queue: VecDeque::new(),
                    retry: VecDeque::new(),
                    dropped: Vec::new(),
                    batch: false,
                    duplicates: 1,
                    sign_secret: None,
                    stale: false,
                }),
            });
            inner_out = Some(inner.clone());
            Arc::new(KadoVendor(inner))
        })
        .await?;
        let inner = inner_out.ok_or_else(|| FakeError::Invalid("server not built".into()))?;
        Ok(FakeKado { server, inner })
    }

    common_methods!();

    /// `http://127.0.0.1:PORT`: the adapter's `base_url` (no prefix; the
    /// calls are served at the root, e.g. `GET /company`).
    pub fn base_url(&self) -> String {
        self.inner.base_url.clone()
    }

    /// The company the token belongs to.
    pub fn company_id(&self) -> String {
        self.inner.company_id.clone()
    }

    /// The company's teams, (id, name), as `GET /company` lists them.
    pub fn teams(&self) -> Vec<(String, String)> {
        lock(&self.inner.data).teams.clone()
    }

    /// The company's `name` in `GET /company` (default `Company <id>`).
    pub fn set_company_name(&self, name: &str) {
        lock(&self.inner.data).company_name = name.to_owned();
    }

    /// More than `per_second` requests within a second → 429 `rate_limited`
    /// with `Retry-After: 1` (`None`, the default, lifts it).
    pub fn set_rate_limit(&self, per_second: Option<u32>) {
        lock(&self.inner.data).limit.set(per_second);
    }

    /// Requests refused by the rate limit (not injected faults).
    pub fn rate_limited_count(&self) -> usize {
        lock(&self.inner.data).limit.refused()
    }

    /// Authenticated requests that passed the rate limit.
    pub fn api_calls(&self) -> usize {
        lock(&self.inner.data).api_calls
    }

    /// Whether the optional list endpoints (`GET /contacts?updated_since=…`,
    /// `GET /notes`) are offered (default true); off, they answer 404
    /// `not_found`. The e-mail / phone look-up is always served.
    pub fn set_list_endpoints(&self, offered: bool) {
        lock(&self.inner.data).lists_offered = offered;
    }

    /// Whether a PUT giving a contact an e-mail that another live contact
    /// has is refused with 409 `conflict` (default false: accepted).
    pub fn set_refuse_duplicate_emails(&self, refuse: bool) {
        lock(&self.inner.data).refuse_duplicate_emails = refuse;
    }

    /// Subscribes `url` to every event (replaces an earlier subscription);
    /// with a `secret` the requests are signed. Changes from now on queue
    /// events.
    pub fn subscribe(&self, url: &str, secret: Option<&str>) {
        lock(&self.inner.data).subscription = Some(Subscription {
            url: url.to_owned(),
            secret: secret.map(str::to_owned),
        });
    }

    /// Drops the subscription and every queued event and retry.
    pub fn unsubscribe(&self) {
        let mut d = lock(&self.inner.data);
        d.subscription = None;
        d.queue.clear();
        d.retry.clear();
    }

    /// Sends events in JSON arrays of up to [`WEBHOOK_BATCH`] (default
    /// false: one event object per request).
    pub fn set_batch(&self, batch: bool) {
        lock(&self.inner.data).batch = batch;
    }

    /// Each webhook request is sent `n` times (clamped to 1–3), the same
    /// body, each copy with its own timestamp and signature.
    pub fn set_duplicate_deliveries(&self, n: usize) {
        lock(&self.inner.data).duplicates = n.clamp(1, 3);
    }

    /// Signs webhooks with `secret` instead of the subscription's (a wrong
    /// signature for the receiver to refuse), even when the subscription
    /// has none.
    pub fn sign_with(&self, secret: &str) {
        lock(&self.inner.data).sign_secret = Some(secret.to_owned());
    }

    /// Webhook timestamps [`STALE_BY_SECS`] in the past (correctly signed,
    /// but outside the 300-second window).
    pub fn set_stale_timestamps(&self, stale: bool) {
        lock(&self.inner.data).stale = stale;
    }

    /// Events not delivered yet (waiting retries first, then new ones), in
    /// the order they will be sent.
    pub fn pending_webhooks(&self) -> Vec<Value> {
        let d = lock(&self.inner.data);
        d.retry
            .iter()
            .flat_map(|o| o.events.iter().cloned())
            .chain(d.queue.iter().cloned())
            .collect()
    }

    /// Events given up on: their request got an answer that is not retried
    /// (400, 401, …).
    pub fn dropped_webhooks(&self) -> Vec<Value> {
        lock(&self.inner.data).dropped.clone()
    }

    /// One delivery pass: first the requests that failed before (same
    /// body), then the new events, one per request (or in arrays with
    /// [`FakeKado::set_batch`]), signed when there is a secret. A request
    /// answered 5xx or 429, or not answered, is queued again; any other
    /// answer ends it. Returns every request sent. No lock is held while
    /// sending.
    pub async fn deliver_webhooks(&self) -> Vec<WebhookDelivery> {
        let (url, secret, requests, copies, stale) = {
            let mut d = lock(&self.inner.data);
            let Some(sub) = d.subscription.clone() else {
                return Vec::new();
            };
            let mut requests: Vec<Outgoing> = d.retry.drain(..).collect();
            let fresh: Vec<Value> = d.queue.drain(..).collect();
            if d.batch {
                requests.extend(
                    fresh
                        .chunks(WEBHOOK_BATCH)
                        .map(|c| Outgoing::new(c.to_vec(), true)),
                );
            } else {
                requests.extend(fresh.into_iter().map(|e| Outgoing::new(vec![e], false)));
            }
            let secret = d.sign_secret.clone().or(sub.secret);
            (sub.url, secret, requests, d.duplicates, d.stale)
        };
        if requests.is_empty() {
            return Vec::new();
        }
        let client = reqwest::Client::builder().timeout(WEBHOOK_TIMEOUT).build();
        let mut out = Vec::new();
        let mut again = Vec::new();
        let mut dropped = Vec::new();
        for o in requests {
            let first = out.len();
            let (mut delivered, mut retry) = (false, false);
            for _ in 0..copies {
                let signed = secret.as_ref().map(|s| {
                    let mut secs = Utc::now().timestamp();
                    if stale {
                        secs -= STALE_BY_SECS;
                    }
                    let timestamp = secs.to_string();
                    let sig = signature(s, &timestamp, o.body.as_bytes());
                    (timestamp, sig)
                });
                let sent = match &client {
                    Ok(c) => {
                        let mut rb = c
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(o.body.clone());
                        if let Some((timestamp, sig)) = &signed {
                            rb = rb
                                .header("x-timestamp", timestamp)
                                .header("x-signature", sig);
                        }
                        rb.send()
                            .await
                            .map(|r| r.status().as_u16())
                            .map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e.to_string()),
                };
                let (status, error) = match sent {
                    Ok(s) => (Some(s), None),
                    Err(e) => (None, Some(e)),
                };
                delivered |= status.is_some_and(|s| (200..300).contains(&s));
                retry |= retried(status);
                let (timestamp, signature) = signed.unzip();
                out.push(WebhookDelivery {
                    url: url.clone(),
                    event_ids: o.field("event_id"),
                    kinds: o.field("kind"),
                    body: o.body.clone(),
                    timestamp,
                    signature,
                    attempt: o.attempt,
                    status,
                    error,
                    requeued: false,
                });
            }
            if delivered {
                continue;
            }
            if retry {
                for d in out.iter_mut().skip(first) {
                    d.requeued = true;
                }
                again.push(Outgoing {
                    attempt: o.attempt + 1,
                    ..o
                });
            } else {
                dropped.extend(o.events);
            }
        }
        let mut d = lock(&self.inner.data);
        if d.subscription.is_some() {
            d.retry.extend(again);
            d.dropped.extend(dropped);
        }
        out
    }

    /// A KADO user adds a contact to `team` (one of the company's).
    /// `fields` are the writable contact fields (`first_name`, `emails`,
    /// …, `external_refs` too); `team_id` and `is_private` come from the
    /// arguments, `owner_email` defaults to [`USER_EMAIL`]. Queues a
    /// `contact.created` with `origin: "user"`. Returns the new id.
    pub fn create_contact_as_user(
        &self,
        team: &str,
        fields: Value,
        private: bool,
    ) -> Result<String, FakeError> {
        let mut f = parse_contact(&fields_object(fields)?).map_err(fixture_error)?;
        f.team_id = Some(team.to_owned());
        f.is_private = Some(private);
        if f.owner_email.is_none() {
            f.owner_email = Some(Some(USER_EMAIL.to_owned()));
        }
        let company = self.inner.company_id.clone();
        lock(&self.inner.data)
            .user_create_contact(&company, team, f)
            .map_err(fixture_error)
    }

    /// A KADO user edits a live contact: the fields given are set (`null`
    /// clears, `team_id` moves it to another of the company's teams).
    /// Queues a `contact.updated` (`origin: "user"`) unless no value
    /// changed.
    pub fn edit_contact_as_user(&self, id: &str, fields: Value) -> Result<(), FakeError> {
        let f = parse_contact(&fields_object(fields)?).map_err(fixture_error)?;
        let company = self.inner.company_id.clone();
        lock(&self.inner.data)
            .user_edit_contact(&company, id, f)
            .map_err(fixture_error)
    }

    /// A KADO user marks a contact (`c_…`) or a note (`n_…`) private or
    /// not (a `*.updated` event when it changes).
    pub fn set_private(&self, id: &str, private: bool) -> Result<(), FakeError> {
        if id.starts_with("n_") {
            let company = self.inner.company_id.clone();
            lock(&self.inner.data)
                .user_edit_note(&company, id, |n| n.is_private = private)
                .map_err(fixture_error)
        } else {
            self.edit_contact_as_user(id, json!({ "is_private": private }))
        }
    }

    /// A KADO user writes a note on a live contact (author [`USER_EMAIL`]);
    /// queues a `note.created` (`origin: "user"`). Returns the new id.
    pub fn create_note_as_user(
        &self,
        contact_id: &str,
        body: &str,
        private: bool,
    ) -> Result<String, FakeError> {
        let company = self.inner.company_id.clone();
        lock(&self.inner.data)
            .user_create_note(&company, contact_id, body, private)
            .map_err(fixture_error)
    }

    /// A KADO user rewrites a live note's body (a `note.updated` when it
    /// changes).
    pub fn edit_note_as_user(&self, id: &str, body: &str) -> Result<(), FakeError> {
        let body = fixture_body(body).map_err(fixture_error)?;
        let company = self.inner.company_id.clone();
        lock(&self.inner.data)
            .user_edit_note(&company, id, |n| n.body = body)
            .map_err(fixture_error)
    }

    /// A KADO user deletes a live contact (`deleted: true`; a
    /// `contact.deleted` whose `data` carries `deleted`). Its notes stay.
    pub fn delete_contact_as_user(&self, id: &str) -> Result<(), FakeError> {
        let company = self.inner.company_id.clone();
        lock(&self.inner.data)
            .delete_contact(&company, id)
            .map_err(fixture_error)
    }

    /// A KADO user deletes a live note (`deleted: true`; a `note.deleted`).
    pub fn delete_note_as_user(&self, id: &str) -> Result<(), FakeError> {
        let company = self.inner.company_id.clone();
        lock(&self.inner.data)
            .delete_note(&company, id)
            .map_err(fixture_error)
    }

    /// Every contact of every team, in creation order, as a list answer
    /// shows it (with `deleted`).
    pub fn contacts(&self) -> Vec<Value> {
        let d = lock(&self.inner.data);
        d.contacts.iter().map(|c| c.json(true)).collect()
    }

    /// Every note, in creation order, as a list answer shows it.
    pub fn notes(&self) -> Vec<Value> {
        let d = lock(&self.inner.data);
        d.notes.iter().map(|n| n.json(true)).collect()
    }

    /// One contact by id (any team, deleted too), as a list shows it.
    pub fn contact(&self, id: &str) -> Option<Value> {
        let d = lock(&self.inner.data);
        d.contact_pos(id).map(|i| d.contacts[i].json(true))
    }

    /// One note by id (deleted too), as a list shows it.
    pub fn note(&self, id: &str) -> Option<Value> {
        let d = lock(&self.inner.data);
        d.note_pos(id).map(|i| d.notes[i].json(true))
    }
}

struct KadoVendor(Arc<Inner>);

fn rate_limited() -> Resp {
    KErr::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many requests, retry later",
    )
    .resp()
    .with_header("retry-after", "1")
}

fn written(id: String, created: bool) -> Resp {
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Resp::json(status, &json!({ "id": id }))
}

impl Inner {
    fn handle(&self, req: &Req) -> Resp {
        match self.route(req) {
            Ok(r) => r,
            Err(e) => e.resp(),
        }
    }

    fn route(&self, req: &Req) -> R<Resp> {
        let unauthorized = || {
            KErr::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid KADO token is required",
            )
        };
        let header = req.header("authorization").ok_or_else(unauthorized)?;
        let (scheme, token) = header.trim().split_once(' ').ok_or_else(unauthorized)?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim() != self.token {
            return Err(unauthorized());
        }
        let mut d = lock(&self.data);
        if !d.limit.admit() {
            return Ok(rate_limited());
        }
        d.api_calls += 1;
        let company = self.company_id.as_str();
        let segs = req.segments_after("").unwrap_or_default();
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        let not_offered = || KErr::not_found(format!("{} {} is not offered", req.method, req.path));
        match (&req.method, segs.as_slice()) {
            (&Method::GET, ["company"]) => {
                let teams: Vec<Value> = d
                    .teams
                    .iter()
                    .map(|(id, name)| json!({"id": id, "name": name}))
                    .collect();
                Ok(Resp::json(
                    StatusCode::OK,
                    &json!({"company_id": company, "name": d.company_name, "teams": teams}),
                ))
            }
            (&Method::GET, ["contacts"]) => {
                let email = req.query_param("email");
                let phone = req.query_param("phone");
                let hubspot = req.query_param("hubspot_id");
                let v = if email.is_some() || phone.is_some() || hubspot.is_some() {
                    d.lookup(hubspot, email, phone)?
                } else if d.lists_offered {
                    page(&d.contacts, req)?
                } else {
                    return Err(not_offered());
                };
                Ok(Resp::json(StatusCode::OK, &v))
            }
            (&Method::GET, ["notes"]) => {
                if !d.lists_offered {
                    return Err(not_offered());
                }
                Ok(Resp::json(StatusCode::OK, &page(&d.notes, req)?))
            }
            (&Method::GET, ["contacts", id]) => {
                let i = d.live_contact(id)?;
                Ok(Resp::json(StatusCode::OK, &d.contacts[i].json(false)))
            }
            (&Method::PATCH, ["contacts", id]) => {
                let f = parse_contact(&body_object(req)?)?;
                let record = d.patch_contact(company, id, f)?;
                Ok(Resp::json(StatusCode::OK, &record))
            }
            (&Method::PUT, ["contacts", "by-ref", "hubspot", hubspot]) => {
                let f = parse_contact(&body_object(req)?)?;
                let only_existing = req.header("if-match").is_some_and(|v| v.trim() == "*");
                let (id, created, stale) = d.put_contact(company, hubspot, f, only_existing)?;
                let mut resp = written(id.clone(), created);
                if stale {
                    resp = Resp::json(StatusCode::OK, &json!({"id": id, "stale": true}));
                }
                Ok(resp)
            }
            (&Method::PATCH, ["notes", id]) => {
                let f = parse_note(&body_object(req)?)?;
                let record = d.patch_note(company, id, f)?;
                Ok(Resp::json(StatusCode::OK, &record))
            }
            (&Method::PUT, ["notes", "by-ref", "hubspot", hubspot]) => {
                let f = parse_note(&body_object(req)?)?;
                let (id, created) = d.put_note(company, hubspot, f)?;
                Ok(written(id, created))
            }
            _ => Err(KErr::not_found(format!(
                "{} {} is not part of the contract",
                req.method, req.path
            ))),
        }
    }
}

impl Vendor for KadoVendor {
    fn secret_headers(&self) -> &'static [&'static str] {
        &["authorization"]
    }

    fn secret_params(&self) -> &'static [&'static str] {
        &[]
    }

    fn fault_response(&self, fault: &Fault, _req: &Req) -> Resp {
        match fault {
            Fault::TooManyRequests => rate_limited(),
            _ => KErr::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
            .resp(),
        }
    }

    fn handle(&self, req: &Req) -> Resp {
        self.0.handle(req)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const TOKEN: &str = "kado-token-7f3a";
    const HOOK_SECRET: &str = "kado-hook-secret";

    async fn setup() -> FakeKado {
        FakeKado::start(
            TOKEN,
            "co_1",
            &[
                ("t_sales", "Sales"),
                ("t_support", "Support"),
                ("t_hr", "HR"),
            ],
        )
        .await
        .unwrap()
    }

    async fn call(
        k: &FakeKado,
        auth: Option<&str>,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut rb = reqwest::Client::new().request(method, format!("{}{path}", k.base_url()));
        if !query.is_empty() {
            rb = rb.query(query);
        }
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

    async fn get(k: &FakeKado, path: &str, query: &[(&str, &str)]) -> (u16, Value) {
        let auth = format!("Bearer {TOKEN}");
        let (s, v, _) = call(k, Some(&auth), reqwest::Method::GET, path, query, None).await;
        (s, v)
    }

    async fn send(k: &FakeKado, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let auth = format!("Bearer {TOKEN}");
        let (s, v, _) = call(k, Some(&auth), method, path, &[], Some(body)).await;
        (s, v)
    }

    async fn put(k: &FakeKado, path: &str, body: Value) -> (u16, Value) {
        send(k, reqwest::Method::PUT, path, body).await
    }

    fn ids(body: &Value) -> Vec<String> {
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    }

    fn kinds_origins(events: &[Value]) -> Vec<(String, String)> {
        events
            .iter()
            .map(|e| {
                (
                    e["kind"].as_str().unwrap().to_owned(),
                    e["origin"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// A record as a list shows it, without `deleted` (as a look-up answer
    /// or a non-delete event shows it).
    fn without_deleted(mut v: Value) -> Value {
        v.as_object_mut().unwrap().remove("deleted");
        v
    }

    /// A closed local port: connecting to it fails at once.
    fn dead_url() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        format!("http://{addr}/hooks/kado")
    }

    /// Answers the given statuses in turn, then 202.
    struct Receiver {
        statuses: Mutex<VecDeque<u16>>,
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
            let status = lock(&self.statuses).pop_front().unwrap_or(202);
            Resp::new(StatusCode::from_u16(status).unwrap())
        }
    }

    async fn receiver(statuses: &[u16]) -> (Server, String) {
        let rx = server::serve(|_| {
            Arc::new(Receiver {
                statuses: Mutex::new(statuses.iter().copied().collect()),
            })
        })
        .await
        .unwrap();
        let url = format!("http://{}/hooks/kado", rx.addr);
        (rx, url)
    }

    #[tokio::test]
    async fn auth_company_and_calls_outside_the_contract() {
        let k = setup().await;
        for auth in [None, Some("Bearer wrong"), Some("Basic a2Fkbw==")] {
            let (s, body, _) = call(&k, auth, reqwest::Method::GET, "/company", &[], None).await;
            assert_eq!(s, 401, "{auth:?}");
            assert_eq!(body["error"]["code"], json!("unauthorized"));
            assert!(body["error"]["message"].is_string());
            assert!(body["error"].get("field").is_none());
        }
        assert_eq!(k.api_calls(), 0);
        let (s, v, h) = call(
            &k,
            Some(&format!("bearer {TOKEN}")),
            reqwest::Method::GET,
            "/company",
            &[],
            None,
        )
        .await;
        assert_eq!(s, 200);
        assert!(
            h["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        assert_eq!(
            v,
            json!({"company_id": "co_1", "name": "Company co_1", "teams": [
                {"id": "t_sales", "name": "Sales"},
                {"id": "t_support", "name": "Support"},
                {"id": "t_hr", "name": "HR"},
            ]})
        );
        k.set_company_name("Acme Sales");
        assert_eq!(
            get(&k, "/company", &[]).await.1["name"],
            json!("Acme Sales")
        );
        assert_eq!(k.company_id(), "co_1");
        assert_eq!(k.teams().len(), 3);
        assert!(!format!("{:?}", k.requests()).contains(TOKEN));

        // The earlier draft's calls and anything else: 404.
        let body = json!({"team_id": "t_sales", "first_name": "Ann", "is_private": false});
        for (method, path) in [
            (reqwest::Method::POST, "/contacts"),
            (reqwest::Method::PATCH, "/contacts/c_1"),
            (reqwest::Method::POST, "/notes"),
            (reqwest::Method::GET, "/contacts/c_1"),
            (reqwest::Method::GET, "/v1/contacts"),
            (reqwest::Method::PUT, "/contacts/by-ref/planfix/1"),
            (reqwest::Method::PUT, "/contacts/by-ref/hubspot"),
            (reqwest::Method::DELETE, "/contacts/by-ref/hubspot/1"),
        ] {
            let (s, v) = send(&k, method.clone(), path, body.clone()).await;
            assert_eq!(
                (s, v["error"]["code"].clone()),
                (404, json!("not_found")),
                "{method} {path}"
            );
        }
        assert!(k.contacts().is_empty());
    }

    #[tokio::test]
    async fn put_contact_creates_then_updates_in_place() {
        let k = setup().await;
        k.subscribe(&dead_url(), None);
        let path = "/contacts/by-ref/hubspot/37700000001";
        let body = json!({"team_id": "t_sales", "first_name": "Ann", "last_name": "Lee",
                          "job_title": "CTO", "organization": "Acme",
                          "emails": ["ann@example.com"], "phones": ["+79161234567"],
                          "owner_email": "rep@acme.example", "is_private": false,
                          "external_refs": {"hubspot": "37700000001"}});
        let (s, v) = put(&k, path, body.clone()).await;
        assert_eq!(s, 201, "{v}");
        let id = v["id"].as_str().unwrap().to_owned();
        assert_eq!(v, json!({"id": id}));
        let c = k.contact(&id).unwrap();
        let created_at = c["created_at"].as_str().unwrap().to_owned();
        assert!(created_at.ends_with('Z'));
        assert_eq!(
            c,
            json!({"id": id, "team_id": "t_sales", "first_name": "Ann", "last_name": "Lee",
                   "job_title": "CTO", "organization": "Acme", "emails": ["ann@example.com"],
                   "phones": ["+79161234567"], "owner_email": "rep@acme.example",
                   "is_private": false, "external_refs": {"hubspot": "37700000001"},
                   "created_at": created_at, "updated_at": created_at, "deleted": false})
        );

        // The same PUT again: 200, nothing written, no event.
        let (s, v) = put(&k, path, body).await;
        assert_eq!((s, v), (200, json!({"id": id})));
        assert_eq!(k.contact(&id).unwrap(), c);
        let events = k.pending_webhooks();
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(
            e.as_object().unwrap().keys().collect::<Vec<_>>(),
            vec![
                "company_id",
                "data",
                "event_id",
                "kind",
                "occurred_at",
                "origin",
                "team_id"
            ]
        );
        assert_eq!(
            (&e["kind"], &e["origin"], &e["company_id"], &e["team_id"]),
            (
                &json!("contact.created"),
                &json!("crmbridge"),
                &json!("co_1"),
                &json!("t_sales")
            )
        );
        assert_eq!(e["occurred_at"], json!(created_at));
        assert_eq!(e["data"], without_deleted(c.clone()));
        assert!(!e["event_id"].as_str().unwrap().is_empty());

        // Without refs in the body the path's id is set anyway.
        let (s, v) = put(
            &k,
            "/contacts/by-ref/hubspot/42",
            json!({"team_id": "t_support", "first_name": "Bob", "is_private": true}),
        )
        .await;
        assert_eq!(s, 201);
        let bob = k.contact(v["id"].as_str().unwrap()).unwrap();
        assert_eq!(bob["external_refs"], json!({"hubspot": "42"}));
        assert_eq!(
            (&bob["is_private"], &bob["emails"], &bob["owner_email"]),
            (&json!(true), &json!([]), &Value::Null)
        );

        // An update: left out kept, null clears, arrays replaced, refs
        // merged, the team stays.
        let (s, v) = put(
            &k,
            path,
            json!({"team_id": "t_support", "job_title": null, "phones": [],
                   "external_refs": {"planfix": "9"}}),
        )
        .await;
        assert_eq!((s, v), (200, json!({"id": id})));
        let c2 = k.contact(&id).unwrap();
        assert_eq!(
            (
                &c2["first_name"],
                &c2["job_title"],
                &c2["phones"],
                &c2["team_id"]
            ),
            (&json!("Ann"), &Value::Null, &json!([]), &json!("t_sales"))
        );
        assert_eq!(
            c2["external_refs"],
            json!({"hubspot": "37700000001", "planfix": "9"})
        );
        assert_eq!(c2["created_at"], json!(created_at));
        assert!(c2["updated_at"].as_str().unwrap() > created_at.as_str());
        let events = k.pending_webhooks();
        assert_eq!(
            kinds_origins(&events),
            vec![
                ("contact.created".into(), "crmbridge".into()),
                ("contact.created".into(), "crmbridge".into()),
                ("contact.updated".into(), "crmbridge".into()),
            ]
        );
        assert_eq!(events[2]["data"], without_deleted(c2));

        // The ref on a user's contact of another team, deleted since: that
        // contact is restored and updated in place.
        let hr = k
            .create_contact_as_user(
                "t_hr",
                json!({"first_name": "Cy", "external_refs": {"hubspot": "555"}}),
                false,
            )
            .unwrap();
        k.delete_contact_as_user(&hr).unwrap();
        let (s, v) = put(
            &k,
            "/contacts/by-ref/hubspot/555",
            json!({"team_id": "t_sales", "last_name": "Dee", "is_private": false}),
        )
        .await;
        assert_eq!((s, v), (200, json!({"id": hr})));
        let cy = k.contact(&hr).unwrap();
        assert_eq!(
            (
                &cy["team_id"],
                &cy["deleted"],
                &cy["first_name"],
                &cy["last_name"]
            ),
            (&json!("t_hr"), &json!(false), &json!("Cy"), &json!("Dee"))
        );
        assert_eq!(k.contacts().len(), 3);
        let last = k.pending_webhooks().pop().unwrap();
        assert_eq!(
            (&last["kind"], &last["origin"], &last["team_id"]),
            (
                &json!("contact.updated"),
                &json!("crmbridge"),
                &json!("t_hr")
            )
        );
    }

    #[tokio::test]
    async fn put_contact_validation_forbidden_and_conflict() {
        let k = setup().await;
        let path = "/contacts/by-ref/hubspot/1";
        for (body, field) in [
            (json!({"first_name": "Ann", "is_private": false}), "team_id"),
            (
                json!({"team_id": "t_sales", "first_name": "Ann"}),
                "is_private",
            ),
            (
                json!({"team_id": "t_sales", "is_private": false, "id": "c_9"}),
                "id",
            ),
            (
                json!({"team_id": "t_sales", "is_private": false, "updated_at": "2024-05-01T10:00:00Z"}),
                "updated_at",
            ),
            (
                json!({"team_id": "t_sales", "is_private": false, "deleted": false}),
                "deleted",
            ),
            (
                json!({"team_id": "t_sales", "is_private": false, "nickname": "A"}),
                "nickname",
            ),
            (
                json!({"team_id": "t_sales", "is_private": false, "first_name": 7}),
                "first_name",
            ),
            (
                json!({"team_id": "t_sales", "is_private": false, "emails": ["nope"]}),
                "emails",
            ),
            (
                json!({"team_id": "t_sales", "is_private": false, "phones": "123"}),
                "phones",
            ),
            (
                json!({"team_id": "t_sales", "is_private": "no"}),
                "is_private",
            ),
            (json!({"team_id": "", "is_private": false}), "team_id"),
            (
                json!({"team_id": "t_sales", "is_private": false, "external_refs": {"hubspot": "2"}}),
                "external_refs",
            ),
            (
                json!({"team_id": "t_sales", "is_private": false, "external_refs": {"hubspot": null}}),
                "external_refs",
            ),
            (
                json!({"team_id": "t_sales", "is_private": false, "external_refs": [1]}),
                "external_refs",
            ),
        ] {
            let (s, v) = put(&k, path, body.clone()).await;
            assert_eq!(s, 400, "{body}");
            assert_eq!(v["error"]["code"], json!("validation"), "{body}");
            assert_eq!(v["error"]["field"], json!(field), "{body}");
            assert!(v["error"]["message"].is_string());
        }
        let (s, v) = put(&k, path, json!(["not", "an", "object"])).await;
        assert_eq!((s, v["error"]["code"].clone()), (400, json!("validation")));
        assert!(v["error"].get("field").is_none());

        // A team of no concern to this company.
        let (s, v) = put(
            &k,
            path,
            json!({"team_id": "t_elsewhere", "is_private": false}),
        )
        .await;
        assert_eq!((s, v["error"]["code"].clone()), (403, json!("forbidden")));
        assert!(k.contacts().is_empty());

        // Duplicate e-mails: accepted by default, 409 when switched on.
        let ann = k
            .create_contact_as_user("t_sales", json!({"emails": ["ann@example.com"]}), false)
            .unwrap();
        k.set_refuse_duplicate_emails(true);
        let (s, v) = put(
            &k,
            path,
            json!({"team_id": "t_sales", "is_private": false, "emails": ["ANN@example.com"]}),
        )
        .await;
        assert_eq!((s, v["error"]["code"].clone()), (409, json!("conflict")));
        assert!(v["error"]["message"].as_str().unwrap().contains(&ann));
        k.set_refuse_duplicate_emails(false);
        let (s, _) = put(
            &k,
            path,
            json!({"team_id": "t_sales", "is_private": false, "emails": ["ANN@example.com"]}),
        )
        .await;
        assert_eq!(s, 201);
        assert_eq!(k.contacts().len(), 2);
    }

    #[tokio::test]
    async fn put_note_by_ref() {
        let k = setup().await;
        k.subscribe(&dead_url(), None);
        let c = k
            .create_contact_as_user("t_support", json!({"first_name": "Ann"}), false)
            .unwrap();
        let path = "/notes/by-ref/hubspot/98765";

        let (s, v) = put(
            &k,
            path,
            json!({"contact_id": "c_404", "body": "x", "is_private": false}),
        )
        .await;
        assert_eq!((s, v["error"]["code"].clone()), (404, json!("not_found")));
        let long = "é".repeat(MAX_NOTE_BODY + 1);
        for (body, field) in [
            (json!({"body": "x", "is_private": false}), "contact_id"),
            (json!({"contact_id": c, "is_private": false}), "body"),
            (json!({"contact_id": c, "body": "x"}), "is_private"),
            (
                json!({"contact_id": c, "body": long, "is_private": false}),
                "body",
            ),
            (
                json!({"contact_id": c, "body": 7, "is_private": false}),
                "body",
            ),
            (
                json!({"contact_id": c, "body": "x", "is_private": false, "created_at": "2024-05-01T10:00:00Z"}),
                "created_at",
            ),
            (
                json!({"contact_id": c, "body": "x", "is_private": false, "external_refs": {"hubspot": "1"}}),
                "external_refs",
            ),
        ] {
            let (s, v) = put(&k, path, body).await;
            assert_eq!(
                (s, v["error"]["code"].clone(), v["error"]["field"].clone()),
                (400, json!("validation"), json!(field))
            );
        }
        assert!(k.notes().is_empty());

        let body = json!({"contact_id": c, "author_email": "rep@acme.example",
                          "body": "Met at expo", "is_private": false});
        let (s, v) = put(&k, path, body.clone()).await;
        assert_eq!(s, 201, "{v}");
        let n = v["id"].as_str().unwrap().to_owned();
        assert_eq!(v, json!({"id": n}));
        let note = k.note(&n).unwrap();
        let at = note["created_at"].as_str().unwrap().to_owned();
        assert_eq!(
            note,
            json!({"id": n, "contact_id": c, "author_email": "rep@acme.example",
                   "body": "Met at expo", "is_private": false,
                   "external_refs": {"hubspot": "98765"}, "created_at": at,
                   "updated_at": at, "deleted": false})
        );
        let (s, v) = put(&k, path, body).await;
        assert_eq!((s, v), (200, json!({"id": n})));
        assert_eq!(k.note(&n).unwrap(), note);

        // The longest body is fine; an update bumps updated_at.
        let max = "é".repeat(MAX_NOTE_BODY);
        let (s, _) = put(
            &k,
            path,
            json!({"contact_id": c, "body": max, "is_private": true}),
        )
        .await;
        assert_eq!(s, 200);
        let note2 = k.note(&n).unwrap();
        assert_eq!(note2["is_private"], json!(true));
        assert_eq!(note2["author_email"], json!("rep@acme.example"));
        assert!(note2["updated_at"].as_str().unwrap() > at.as_str());

        let events = k.pending_webhooks();
        assert_eq!(
            kinds_origins(&events),
            vec![
                ("contact.created".into(), "user".into()),
                ("note.created".into(), "crmbridge".into()),
                ("note.updated".into(), "crmbridge".into()),
            ]
        );
        assert_eq!(events[1]["team_id"], json!("t_support"));
        assert_eq!(events[1]["data"], without_deleted(note));

        // A deleted contact is unknown.
        k.delete_contact_as_user(&c).unwrap();
        let (s, v) = put(
            &k,
            "/notes/by-ref/hubspot/1",
            json!({"contact_id": c, "body": "x", "is_private": false}),
        )
        .await;
        assert_eq!((s, v["error"]["code"].clone()), (404, json!("not_found")));
        assert_eq!(k.notes().len(), 1);
    }

    #[tokio::test]
    async fn lookup_by_email_and_phone() {
        let k = setup().await;
        let a = k
            .create_contact_as_user(
                "t_sales",
                json!({"first_name": "Ann", "emails": ["ann@work.example", "Ann.Lee@Example.com"],
                       "phones": ["+7 (916) 123-45-67"]}),
                false,
            )
            .unwrap();
        let b = k
            .create_contact_as_user(
                "t_hr",
                json!({"emails": ["bob@example.com"], "phones": ["89161234567"]}),
                true,
            )
            .unwrap();
        let gone = k
            .create_contact_as_user("t_sales", json!({"emails": ["gone@example.com"]}), false)
            .unwrap();
        k.delete_contact_as_user(&gone).unwrap();

        let (s, v) = get(&k, "/contacts", &[("email", "ann.lee@example.COM")]).await;
        assert_eq!(s, 200);
        assert_eq!(
            v,
            json!({"data": [without_deleted(k.contact(&a).unwrap())]})
        );
        for phone in ["+79161234567", "9161234567", "8 916 123 45 67"] {
            let (s, v) = get(&k, "/contacts", &[("phone", phone)]).await;
            assert_eq!((s, ids(&v)), (200, vec![a.clone(), b.clone()]), "{phone}");
        }
        for (q, v) in [
            ("phone", "1234567"),
            ("email", "gone@example.com"),
            ("email", "nobody@example.com"),
        ] {
            let (s, body) = get(&k, "/contacts", &[(q, v)]).await;
            assert_eq!((s, body), (200, json!({"data": []})), "{q}={v}");
        }
        for (q, field) in [
            (vec![("email", "not-an-email")], "email"),
            (vec![("email", "")], "email"),
            (vec![("phone", "call me")], "phone"),
        ] {
            let (s, v) = get(&k, "/contacts", &q).await;
            assert_eq!(
                (s, v["error"]["field"].clone()),
                (400, json!(field)),
                "{q:?}"
            );
        }
        // Both: e-mail matches first, then phone matches, each once.
        let (s, v) = get(
            &k,
            "/contacts",
            &[("email", "bob@example.com"), ("phone", "+79161234567")],
        )
        .await;
        assert_eq!((s, ids(&v)), (200, vec![b.clone(), a.clone()]));
        // The look-up is not one of the optional endpoints.
        k.set_list_endpoints(false);
        let (s, v) = get(&k, "/contacts", &[("email", "bob@example.com")]).await;
        assert_eq!((s, ids(&v)), (200, vec![b]));
    }

    #[tokio::test]
    async fn lists_page_by_cursor_with_private_and_deleted() {
        let k = setup().await;
        let teams = ["t_sales", "t_support", "t_hr"];
        let mut made = Vec::new();
        for i in 0..5 {
            made.push(
                k.create_contact_as_user(
                    teams[i % 3],
                    json!({"first_name": format!("P{i}")}),
                    i == 4,
                )
                .unwrap(),
            );
        }
        k.delete_contact_as_user(&made[1]).unwrap();
        let expected = vec![
            made[0].clone(),
            made[2].clone(),
            made[3].clone(),
            made[4].clone(),
            made[1].clone(),
        ];

        let mut seen = Vec::new();
        let mut rows = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut q = vec![("limit", "2".to_owned())];
            if let Some(c) = &cursor {
                q.push(("cursor", c.clone()));
            }
            let q: Vec<(&str, &str)> = q.iter().map(|(a, b)| (*a, b.as_str())).collect();
            let (s, body) = get(&k, "/contacts", &q).await;
            assert_eq!(s, 200, "{body}");
            seen.extend(ids(&body));
            rows.extend(body["data"].as_array().unwrap().clone());
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        assert_eq!(seen, expected);
        let flags: Vec<(bool, bool)> = rows
            .iter()
            .map(|r| {
                (
                    r["is_private"].as_bool().unwrap(),
                    r["deleted"].as_bool().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            flags,
            vec![
                (false, false),
                (false, false),
                (false, false),
                (true, false),
                (false, true)
            ]
        );

        let (_, notes) = get(&k, "/notes", &[]).await;
        assert_eq!(notes, json!({"data": [], "next_cursor": null}));
        let n = k
            .create_note_as_user(&made[4], "private chat", true)
            .unwrap();
        let (_, notes) = get(&k, "/notes", &[]).await;
        assert_eq!(notes["data"], json!([k.note(&n).unwrap()]));
        assert_eq!(notes["data"][0]["deleted"], json!(false));

        // An edit moves a contact to the end; updated_since is inclusive.
        k.edit_contact_as_user(&made[0], json!({"last_name": "Edited"}))
            .unwrap();
        let since = k.contact(&made[0]).unwrap()["updated_at"]
            .as_str()
            .unwrap()
            .to_owned();
        let (_, body) = get(&k, "/contacts", &[("updated_since", &since)]).await;
        assert_eq!(ids(&body), vec![made[0].clone()]);
        let (_, body) = get(&k, "/contacts", &[]).await;
        assert_eq!(ids(&body).last(), Some(&made[0]));
        assert_eq!(body["next_cursor"], Value::Null);

        for (q, field) in [
            (("limit", "101"), "limit"),
            (("limit", "0"), "limit"),
            (("cursor", "%%%"), "cursor"),
            (("updated_since", "2024-13-01"), "updated_since"),
        ] {
            let (s, v) = get(&k, "/contacts", &[q]).await;
            assert_eq!(
                (s, v["error"]["field"].clone()),
                (400, json!(field)),
                "{q:?}"
            );
        }
        let (s, body) = get(&k, "/notes", &[("limit", "100")]).await;
        assert_eq!((s, ids(&body)), (200, vec![n]));

        // Switched off: "not offered".
        k.set_list_endpoints(false);
        for path in ["/contacts", "/notes"] {
            let (s, v) = get(&k, path, &[("updated_since", &since)]).await;
            assert_eq!((s, v["error"]["code"].clone()), (404, json!("not_found")));
        }
    }

    #[tokio::test]
    async fn webhooks_one_event_per_request_signed_and_retried() {
        let k = setup().await;
        let (rx, url) = receiver(&[500]).await;
        k.subscribe(&url, Some(HOOK_SECRET));
        let c = k
            .create_contact_as_user("t_support", json!({"first_name": "Ann"}), false)
            .unwrap();
        let (_, v) = put(
            &k,
            "/notes/by-ref/hubspot/777",
            json!({"contact_id": c, "body": "hi", "is_private": true}),
        )
        .await;
        let nid = v["id"].as_str().unwrap().to_owned();
        let pending = k.pending_webhooks();
        assert_eq!(
            kinds_origins(&pending),
            vec![
                ("contact.created".into(), "user".into()),
                ("note.created".into(), "crmbridge".into()),
            ]
        );
        assert_ne!(pending[0]["event_id"], pending[1]["event_id"]);

        // First pass: the receiver fails the first request; it waits.
        let first = k.deliver_webhooks().await;
        assert_eq!(first.len(), 2);
        assert_eq!((first[0].status, first[0].requeued), (Some(500), true));
        assert_eq!(first[0].kinds, vec!["contact.created".to_owned()]);
        assert_eq!(
            first[0].event_ids,
            vec![pending[0]["event_id"].as_str().unwrap().to_owned()]
        );
        assert!(first[1].ok() && !first[1].requeued);
        assert_eq!(k.pending_webhooks(), vec![pending[0].clone()]);
        let second = k.deliver_webhooks().await;
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].attempt, 1);
        assert_eq!(second[0].event_ids, first[0].event_ids);
        assert_eq!(second[0].body, first[0].body);
        assert!(second[0].ok());
        assert!(k.deliver_webhooks().await.is_empty());
        assert!(k.dropped_webhooks().is_empty());

        let got = rx.requests();
        assert_eq!(got.len(), 3);
        for req in &got {
            assert_eq!(req.method, "POST");
            assert_eq!(req.path, "/hooks/kado");
            assert_eq!(req.header("content-type"), Some("application/json"));
            let ts = req.header("x-timestamp").unwrap();
            let age = Utc::now().timestamp() - ts.parse::<i64>().unwrap();
            assert!((0..60).contains(&age), "{age}");
            let mut mac = Hmac::<Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
            mac.update(format!("{ts}.{}", req.body).as_bytes());
            let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
            assert_eq!(req.header("x-signature"), Some(expected.as_str()));
            assert!(req.json().unwrap().is_object());
        }
        assert_eq!(got[0].body, got[2].body);
        let note_event = got[1].json().unwrap();
        assert_eq!(note_event, pending[1]);
        assert_eq!(
            (
                &note_event["kind"],
                &note_event["origin"],
                &note_event["company_id"],
                &note_event["team_id"]
            ),
            (
                &json!("note.created"),
                &json!("crmbridge"),
                &json!("co_1"),
                &json!("t_support")
            )
        );
        assert_eq!(note_event["data"], without_deleted(k.note(&nid).unwrap()));
        assert_eq!(got[2].json().unwrap(), pending[0]);
    }

    #[tokio::test]
    async fn webhooks_stop_on_400_and_401_and_are_unsigned_without_secret() {
        let k = setup().await;
        let (rx, url) = receiver(&[400, 401, 429, 503]).await;
        k.subscribe(&url, None);
        for i in 0..4 {
            k.create_contact_as_user("t_sales", json!({"first_name": format!("P{i}")}), false)
                .unwrap();
        }
        let events = k.pending_webhooks();
        let pass = k.deliver_webhooks().await;
        let outcome: Vec<(Option<u16>, bool)> =
            pass.iter().map(|d| (d.status, d.requeued)).collect();
        assert_eq!(
            outcome,
            vec![
                (Some(400), false),
                (Some(401), false),
                (Some(429), true),
                (Some(503), true)
            ]
        );
        assert!(
            pass.iter()
                .all(|d| d.timestamp.is_none() && d.signature.is_none())
        );
        assert_eq!(k.dropped_webhooks(), events[..2].to_vec());
        assert_eq!(k.pending_webhooks(), events[2..].to_vec());
        for req in rx.requests() {
            assert!(req.header("x-signature").is_none());
            assert!(req.header("x-timestamp").is_none());
        }
        let pass = k.deliver_webhooks().await;
        assert_eq!(pass.len(), 2);
        assert!(pass.iter().all(|d| d.ok() && d.attempt == 1));

        // No answer at all: queued again.
        k.subscribe(&dead_url(), None);
        k.create_contact_as_user("t_sales", json!({"first_name": "Zed"}), false)
            .unwrap();
        let pass = k.deliver_webhooks().await;
        assert_eq!(pass.len(), 1);
        assert!(pass[0].status.is_none() && pass[0].error.is_some() && pass[0].requeued);
        assert_eq!(k.pending_webhooks().len(), 1);
        k.unsubscribe();
        assert!(k.pending_webhooks().is_empty());
        assert!(k.deliver_webhooks().await.is_empty());
    }

    #[tokio::test]
    async fn webhooks_batches_duplicates_bad_signatures_stale_timestamps() {
        let k = setup().await;
        let (rx, url) = receiver(&[]).await;
        k.subscribe(&url, Some(HOOK_SECRET));
        k.set_batch(true);
        let mut made = Vec::new();
        for i in 0..(WEBHOOK_BATCH + 1) {
            made.push(
                k.create_contact_as_user("t_sales", json!({"first_name": format!("P{i}")}), false)
                    .unwrap(),
            );
        }
        let events = k.pending_webhooks();
        let pass = k.deliver_webhooks().await;
        assert_eq!(pass.len(), 2);
        assert_eq!(pass[0].event_ids.len(), WEBHOOK_BATCH);
        assert_eq!(pass[1].event_ids.len(), 1);
        let got = rx.requests();
        assert_eq!(
            got[0].json().unwrap(),
            Value::Array(events[..WEBHOOK_BATCH].to_vec())
        );
        assert_eq!(
            got[1].json().unwrap(),
            Value::Array(events[WEBHOOK_BATCH..].to_vec())
        );

        k.set_batch(false);
        k.set_duplicate_deliveries(2);
        k.sign_with("wrong");
        k.set_stale_timestamps(true);
        k.edit_contact_as_user(&made[0], json!({"last_name": "Lee"}))
            .unwrap();
        let dup = k.deliver_webhooks().await;
        assert_eq!(dup.len(), 2);
        assert_eq!(dup[0].body, dup[1].body);
        assert_eq!(dup[0].event_ids, dup[1].event_ids);
        let ts = dup[0].timestamp.clone().unwrap();
        let sig = dup[0].signature.clone().unwrap();
        assert_ne!(sig, signature(HOOK_SECRET, &ts, dup[0].body.as_bytes()));
        assert_eq!(sig, signature("wrong", &ts, dup[0].body.as_bytes()));
        assert!(Utc::now().timestamp() - ts.parse::<i64>().unwrap() >= STALE_BY_SECS - 1);
        let event: Value = serde_json::from_str(&dup[0].body).unwrap();
        assert_eq!(
            (
                &event["kind"],
                &event["origin"],
                &event["data"]["last_name"]
            ),
            (&json!("contact.updated"), &json!("user"), &json!("Lee"))
        );
    }

    #[tokio::test]
    async fn fixtures_private_deleted_and_no_op_edits() {
        let k = setup().await;
        k.subscribe(&dead_url(), None);
        let c = k
            .create_contact_as_user("t_support", json!({"emails": ["x@example.com"]}), false)
            .unwrap();
        assert_eq!(k.contact(&c).unwrap()["owner_email"], json!(USER_EMAIL));
        let n = k.create_note_as_user(&c, "hello", false).unwrap();
        assert_eq!(k.note(&n).unwrap()["author_email"], json!(USER_EMAIL));
        k.edit_contact_as_user(&c, json!({"emails": ["x@example.com"]}))
            .unwrap();
        k.set_private(&c, true).unwrap();
        k.set_private(&n, true).unwrap();
        k.set_private(&n, true).unwrap();
        k.edit_note_as_user(&n, "hello again").unwrap();
        let note = k.note(&n).unwrap();
        assert_eq!(
            (note["is_private"].clone(), note["body"].clone()),
            (json!(true), json!("hello again"))
        );
        k.delete_note_as_user(&n).unwrap();
        k.delete_contact_as_user(&c).unwrap();
        let events = k.pending_webhooks();
        let user = |kind: &str| (kind.to_owned(), "user".to_owned());
        assert_eq!(
            kinds_origins(&events),
            vec![
                user("contact.created"),
                user("note.created"),
                user("contact.updated"),
                user("note.updated"),
                user("note.updated"),
                user("note.deleted"),
                user("contact.deleted"),
            ]
        );
        assert_eq!(events[2]["data"]["is_private"], json!(true));
        assert!(events[2]["data"].get("deleted").is_none());
        assert_eq!(events[5]["data"]["deleted"], json!(true));
        assert_eq!(events[6]["data"], k.contact(&c).unwrap());
        assert_eq!(events[6]["team_id"], json!("t_support"));
        let (_, body) = get(&k, "/contacts", &[]).await;
        assert_eq!(body["data"][0]["deleted"], json!(true));

        // Moving a contact to another team.
        let d = k
            .create_contact_as_user(
                "t_sales",
                json!({"first_name": "Dee", "external_refs": {"hubspot": "9"}}),
                false,
            )
            .unwrap();
        k.edit_contact_as_user(&d, json!({"team_id": "t_hr"}))
            .unwrap();
        assert_eq!(k.contact(&d).unwrap()["team_id"], json!("t_hr"));

        assert!(matches!(
            k.set_private("c_999", true),
            Err(FakeError::NotFound(_))
        ));
        assert!(matches!(
            k.delete_contact_as_user(&c),
            Err(FakeError::NotFound(_))
        ));
        assert!(k.create_note_as_user(&c, "late", false).is_err());
        assert!(k.create_note_as_user(&d, " ", false).is_err());
        assert!(
            k.edit_contact_as_user(&d, json!({"team_id": "t_x"}))
                .is_err()
        );
        assert!(
            k.create_contact_as_user("t_x", json!({"first_name": "X"}), false)
                .is_err()
        );
        assert!(
            k.create_contact_as_user("t_sales", json!({"bogus": 1}), false)
                .is_err()
        );
        assert!(
            k.create_contact_as_user("t_sales", json!({"external_refs": {"hubspot": "9"}}), false)
                .is_err()
        );
    }

    #[tokio::test]
    async fn rate_limit_and_faults() {
        let k = setup().await;
        k.set_rate_limit(Some(2));
        let mut statuses = Vec::new();
        let mut last = (Value::Null, None);
        for _ in 0..3 {
            let (s, v, h) = call(
                &k,
                Some(&format!("Bearer {TOKEN}")),
                reqwest::Method::GET,
                "/company",
                &[],
                None,
            )
            .await;
            statuses.push(s);
            last = (
                v,
                h.get("retry-after").map(|v| v.to_str().unwrap().to_owned()),
            );
        }
        assert_eq!(statuses, vec![200, 200, 429]);
        assert_eq!(last.0["error"]["code"], json!("rate_limited"));
        assert_eq!(last.1.as_deref(), Some("1"));
        assert_eq!(k.rate_limited_count(), 1);
        assert_eq!(k.api_calls(), 2);
        k.set_rate_limit(None);

        k.fail_next(1, Fault::ServerError);
        let (s, v) = get(&k, "/contacts", &[]).await;
        assert_eq!((s, v["error"]["code"].clone()), (500, json!("internal")));
        k.fail_next(1, Fault::TooManyRequests);
        let (s, v) = get(&k, "/contacts", &[]).await;
        assert_eq!(
            (s, v["error"]["code"].clone()),
            (429, json!("rate_limited"))
        );
        assert_eq!(k.fault_count(), 2);
    }
}
