//! Fake KADO (KADO Networks: digital business cards, contacts and notes per
//! company and team). KADO publishes **no** API: this fake implements our
//! own minimal contract (`shared/connectors/src/vendors/kado/API.md`),
//! which is the contract of crmbridge's `kado` connector — a test that
//! passes here passes against that contract, not against a real KADO.
//!
//! The contract, as served:
//! * auth `Authorization: Bearer <integration token>` (one token per KADO
//!   company, scheme case-insensitive); missing or wrong → 401
//!   `{"error":{"code":"unauthorized","message"}}`. The token's company is
//!   [`FakeKado::company_id`]; the teams enabled for the integration are the
//!   `allowed_teams` given to [`FakeKado::start`]
//!   ([`FakeKado::set_allowed_teams`] changes them). The request log
//!   redacts `authorization`.
//! * `GET /v1/contacts?updated_since=<RFC3339>&cursor=<opaque>&limit=<1–100>`
//!   and `GET /v1/notes?…` → `{"data":[…],"next_cursor":"…"|null}`, ordered by
//!   `updated_at` then id, only records of the allowed teams (deleted and
//!   private ones included, with `deleted` / `is_private` set: the connector
//!   must skip private items itself). `updated_since` is inclusive; the
//!   cursor is a keyset position (the last row's `updated_at` and id), so a
//!   record updated while a client pages moves to the end and is seen again,
//!   never skipped. `limit` defaults to [`DEFAULT_LIMIT`].
//! * `POST /v1/contacts`, `PATCH /v1/contacts/{id}`, `POST /v1/notes`,
//!   `PATCH /v1/notes/{id}`: JSON objects of the writable fields (contacts:
//!   `team_id`, `owner_user_id`, `first_name`, `last_name`, `emails`,
//!   `phones`, `job_title`, `organization`, `is_private`, `external_refs`;
//!   notes: `contact_id` (POST only), `author_user_id`, `body`,
//!   `occurred_at`, `is_private`, `external_refs`). POST → 201 with the
//!   record; **idempotent on `external_refs.hubspot`**: a POST whose ref is
//!   already on a record of the same kind returns that record unchanged with
//!   200 (no write, no event). PATCH → 200 with the record; a field left out
//!   is kept, `null` clears it, `external_refs` is merged key by key (`null`
//!   removes a key), arrays are replaced whole.
//! * errors `{"error":{"code","message"}}`: 422 `validation` (with `field`:
//!   an unknown or read-only field — `id`, `company_id`, `created_at`,
//!   `updated_at`, `deleted`, a note's `contact_id` on PATCH —, a wrong type,
//!   an e-mail without `@`, a phone without digits, a contact with neither a
//!   name nor an e-mail nor a phone, a team not enabled, a note without
//!   `body` or longer than [`MAX_NOTE_BODY`], an `occurred_at` that is not
//!   RFC 3339, a note's unknown contact, a bad `limit`, `updated_since` or
//!   `cursor`); 404 `not_found` (an unknown id, a record of a team not
//!   enabled, a deleted record, an unknown path); 405 `method_not_allowed`;
//!   409 `conflict` (a PATCH giving a record an `external_refs.hubspot` that
//!   another record of its kind has); 429 `rate_limited` with `Retry-After`
//!   once [`FakeKado::set_rate_limit`] requests a second are exceeded.
//! * records: Contact `{"id":"c_1","company_id","team_id","owner_user_id",
//!   "first_name","last_name","emails":[…],"phones":[…],"job_title",
//!   "organization","is_private","external_refs":{"hubspot":"512"},
//!   "created_at","updated_at","deleted"}`; Note `{"id":"n_1","contact_id",
//!   "company_id","team_id","author_user_id","body","occurred_at",
//!   "is_private","external_refs","updated_at","deleted"}` (a note belongs to
//!   its contact's team). Times are RFC 3339 UTC with milliseconds; every
//!   write gets a fresh `updated_at` (never equal to another's), and every
//!   successful PATCH counts as a write, even one that changes nothing.
//! * webhooks: after [`FakeKado::subscribe`], **every** write to a record of
//!   an allowed team — through the API too, so a two-way sync must not echo
//!   its own writes — queues one event `{"event":"contact.created" |
//!   "contact.updated" | "note.created" | "note.updated","company_id",
//!   "data":{…the full record…},"occurred_at"}`. [`FakeKado::deliver_webhooks`]
//!   makes one pass: one POST per event, `Content-Type: application/json`,
//!   `X-Timestamp` (epoch seconds), `X-Signature: sha256=<hex
//!   HMAC-SHA256(secret, timestamp + "." + body)>` ([`signature`]); an event
//!   that got no 2xx (or a transport error, timeout after
//!   [`WEBHOOK_TIMEOUT`]) is queued again for the next pass. Knobs:
//!   duplicate sends, a wrong signing secret, stale timestamps (receivers
//!   must refuse ones older than 5 minutes).
//! * injected faults: `ServerError` → 500 `{"error":{"code":"internal",…}}`,
//!   `TooManyRequests` → the 429 above with `Retry-After: 1`.
//!
//! Choices the contract leaves open (the fake's choice in brackets):
//! * a contact POSTed without `team_id` [the first allowed team]; whether
//!   the API refuses a duplicate e-mail [no: the connector must match by
//!   e-mail, then phone, before importing]; whether private items are
//!   listed [yes, flagged]; whether `updated_since` is inclusive [yes]; a
//!   deletion's event [`contact.updated` / `note.updated` with `deleted:
//!   true`]; an event's retries [unbounded, one per pass]; a 409 body [no
//!   `field`].
//!
//! Not in the contract, so not served: reading one record by id, searching
//! by e-mail or phone, deleting through the API, subscribing through the
//! API, pagination by page number.

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
use crate::util::PerSecondLimit;

/// The largest `limit` of a list call.
pub const MAX_LIMIT: usize = 100;
/// `limit` when none is given.
pub const DEFAULT_LIMIT: usize = 50;
/// The longest note body, in characters.
pub const MAX_NOTE_BODY: usize = 65_536;
/// The KADO user the `*_as_user` fixtures act as (owner / author).
pub const USER_ID: &str = "u_7";
/// How long the webhook sender waits for the receiver.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

const CONTACT_FIELDS: &[&str] = &[
    "team_id",
    "owner_user_id",
    "first_name",
    "last_name",
    "emails",
    "phones",
    "job_title",
    "organization",
    "is_private",
    "external_refs",
];
const NOTE_FIELDS: &[&str] = &[
    "contact_id",
    "author_user_id",
    "body",
    "occurred_at",
    "is_private",
    "external_refs",
];
const READ_ONLY: &[&str] = &["id", "company_id", "created_at", "updated_at", "deleted"];

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
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "validation",
            message: message.into(),
            field: Some(field.to_owned()),
        }
    }

    fn not_found(what: &str) -> Self {
        KErr::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    fn resp(&self) -> Resp {
        let mut error = json!({"code": self.code, "message": self.message});
        if self.code == "validation" {
            error["field"] = self.field.clone().map_or(Value::Null, Value::String);
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

#[derive(Debug, Clone)]
struct Contact {
    seq: u64,
    team_id: String,
    owner_user_id: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    emails: Vec<String>,
    phones: Vec<String>,
    job_title: Option<String>,
    organization: Option<String>,
    is_private: bool,
    external_refs: BTreeMap<String, String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted: bool,
}

impl Contact {
    fn id(&self) -> String {
        format!("c_{}", self.seq)
    }

    fn json(&self, company: &str) -> Value {
        json!({
            "id": self.id(),
            "company_id": company,
            "team_id": self.team_id,
            "owner_user_id": opt_json(&self.owner_user_id),
            "first_name": opt_json(&self.first_name),
            "last_name": opt_json(&self.last_name),
            "emails": self.emails,
            "phones": self.phones,
            "job_title": opt_json(&self.job_title),
            "organization": opt_json(&self.organization),
            "is_private": self.is_private,
            "external_refs": refs_json(&self.external_refs),
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "deleted": self.deleted,
        })
    }
}

#[derive(Debug, Clone)]
struct Note {
    seq: u64,
    contact_seq: u64,
    team_id: String,
    author_user_id: Option<String>,
    body: String,
    occurred_at: DateTime<Utc>,
    is_private: bool,
    external_refs: BTreeMap<String, String>,
    updated_at: DateTime<Utc>,
    deleted: bool,
}

impl Note {
    fn id(&self) -> String {
        format!("n_{}", self.seq)
    }

    fn json(&self, company: &str) -> Value {
        json!({
            "id": self.id(),
            "contact_id": format!("c_{}", self.contact_seq),
            "company_id": company,
            "team_id": self.team_id,
            "author_user_id": opt_json(&self.author_user_id),
            "body": self.body,
            "occurred_at": iso(self.occurred_at),
            "is_private": self.is_private,
            "external_refs": refs_json(&self.external_refs),
            "updated_at": iso(self.updated_at),
            "deleted": self.deleted,
        })
    }
}

/// What lists and webhooks need of a record.
trait Item {
    fn key(&self) -> (i64, u64);
    fn team(&self) -> &str;
    fn to_json(&self, company: &str) -> Value;
}

impl Item for Contact {
    fn key(&self) -> (i64, u64) {
        (self.updated_at.timestamp_millis(), self.seq)
    }

    fn team(&self) -> &str {
        &self.team_id
    }

    fn to_json(&self, company: &str) -> Value {
        self.json(company)
    }
}

impl Item for Note {
    fn key(&self) -> (i64, u64) {
        (self.updated_at.timestamp_millis(), self.seq)
    }

    fn team(&self) -> &str {
        &self.team_id
    }

    fn to_json(&self, company: &str) -> Value {
        self.json(company)
    }
}

/// The writable contact fields of a request (outer `None`: not sent).
#[derive(Debug, Default)]
struct ContactFields {
    team_id: Option<String>,
    owner_user_id: Option<Option<String>>,
    first_name: Option<Option<String>>,
    last_name: Option<Option<String>>,
    emails: Option<Vec<String>>,
    phones: Option<Vec<String>>,
    job_title: Option<Option<String>>,
    organization: Option<Option<String>>,
    is_private: Option<bool>,
    external_refs: Option<BTreeMap<String, Option<String>>>,
}

/// The writable note fields of a request.
#[derive(Debug, Default)]
struct NoteFields {
    contact_id: Option<String>,
    author_user_id: Option<Option<String>>,
    body: Option<Option<String>>,
    occurred_at: Option<DateTime<Utc>>,
    is_private: Option<bool>,
    external_refs: Option<BTreeMap<String, Option<String>>>,
}

fn check_fields(body: &Map<String, Value>, allowed: &[&str]) -> R<()> {
    for key in body.keys() {
        if READ_ONLY.contains(&key.as_str()) {
            return Err(KErr::validation(key, format!("{key} is read-only")));
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

fn string_list(field: &str, v: &Value) -> R<Vec<String>> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.trim().to_owned()),
                _ => Err(KErr::validation(
                    field,
                    format!("{field} must be an array of strings"),
                )),
            })
            .filter(|s| !matches!(s, Ok(s) if s.is_empty()))
            .collect(),
        _ => Err(KErr::validation(
            field,
            format!("{field} must be an array of strings"),
        )),
    }
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
            "team_id" => {
                f.team_id = Some(
                    opt_string(key, v)?
                        .ok_or_else(|| KErr::validation(key, "team_id must not be empty"))?,
                );
            }
            "owner_user_id" => f.owner_user_id = Some(opt_string(key, v)?),
            "first_name" => f.first_name = Some(opt_string(key, v)?),
            "last_name" => f.last_name = Some(opt_string(key, v)?),
            "job_title" => f.job_title = Some(opt_string(key, v)?),
            "organization" => f.organization = Some(opt_string(key, v)?),
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
            "phones" => {
                let phones = string_list(key, v)?;
                if let Some(bad) = phones
                    .iter()
                    .find(|p| !p.chars().any(|c| c.is_ascii_digit()))
                {
                    return Err(KErr::validation(
                        key,
                        format!("{bad} is not a phone number"),
                    ));
                }
                f.phones = Some(phones);
            }
            "is_private" => f.is_private = Some(boolean(key, v)?),
            "external_refs" => f.external_refs = Some(refs(v)?),
            _ => {}
        }
    }
    Ok(f)
}

fn parse_note(body: &Map<String, Value>) -> R<NoteFields> {
    check_fields(body, NOTE_FIELDS)?;
    let mut f = NoteFields::default();
    for (key, v) in body {
        match key.as_str() {
            "contact_id" => {
                f.contact_id = Some(
                    opt_string(key, v)?
                        .ok_or_else(|| KErr::validation(key, "contact_id is required"))?,
                );
            }
            "author_user_id" => f.author_user_id = Some(opt_string(key, v)?),
            "body" => {
                let body = opt_string(key, v)?;
                if let Some(b) = &body {
                    let n = b.chars().count();
                    if n > MAX_NOTE_BODY {
                        return Err(KErr::validation(
                            key,
                            format!(
                                "body is {n} characters long; at most {MAX_NOTE_BODY} are allowed"
                            ),
                        ));
                    }
                }
                f.body = Some(body);
            }
            "occurred_at" => {
                let text = v
                    .as_str()
                    .ok_or_else(|| KErr::validation(key, "occurred_at must be an RFC 3339 time"))?;
                let t = DateTime::parse_from_rfc3339(text.trim())
                    .map_err(|_| KErr::validation(key, "occurred_at must be an RFC 3339 time"))?;
                f.occurred_at = Some(t.with_timezone(&Utc));
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
        _ => Err(KErr {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "validation",
            message: "the body must be a JSON object".into(),
            field: None,
        }),
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

fn seq_of(id: &str, prefix: &str) -> Option<u64> {
    id.strip_prefix(prefix)?.parse().ok()
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

/// `X-Signature` of a webhook: `sha256=` + hex(HMAC-SHA256(secret,
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
    /// The event name (`contact.created`, …).
    pub event: String,
    /// The raw body.
    pub body: String,
    /// `X-Timestamp` (epoch seconds).
    pub timestamp: String,
    /// `X-Signature` (`sha256=…`).
    pub signature: String,
    /// How many earlier passes failed to deliver this event (0 first time).
    pub attempt: u32,
    /// The receiver's status; `None` on a transport error or timeout.
    pub status: Option<u16>,
    /// The transport error, if any.
    pub error: Option<String>,
    /// Whether the event was queued again for the next pass.
    pub requeued: bool,
}

impl WebhookDelivery {
    /// Whether the receiver answered 2xx.
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

#[derive(Debug, Clone)]
struct Pending {
    event: String,
    payload: Value,
    attempt: u32,
}

#[derive(Debug)]
struct Data {
    allowed: Vec<String>,
    contacts: Vec<Contact>,
    notes: Vec<Note>,
    next_contact: u64,
    next_note: u64,
    last_ms: i64,
    limit: PerSecondLimit,
    api_calls: usize,
    subscription: Option<(String, String)>,
    queue: VecDeque<Pending>,
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

    fn allowed(&self, team: &str) -> bool {
        self.allowed.iter().any(|t| t == team)
    }

    fn contact_pos(&self, id: &str) -> Option<usize> {
        let seq = seq_of(id, "c_")?;
        self.contacts.iter().position(|c| c.seq == seq)
    }

    fn note_pos(&self, id: &str) -> Option<usize> {
        let seq = seq_of(id, "n_")?;
        self.notes.iter().position(|n| n.seq == seq)
    }

    fn emit(&mut self, company: &str, event: &str, team: &str, data: Value, at: DateTime<Utc>) {
        if self.subscription.is_none() || !self.allowed(team) {
            return;
        }
        self.queue.push_back(Pending {
            event: event.to_owned(),
            payload: json!({
                "event": event,
                "company_id": company,
                "data": data,
                "occurred_at": iso(at),
            }),
            attempt: 0,
        });
    }

    /// A POST (`api`) or a fixture: the id and whether it was created.
    fn create_contact(&mut self, company: &str, f: ContactFields, api: bool) -> R<(String, bool)> {
        let hubspot = f
            .external_refs
            .as_ref()
            .and_then(|r| r.get("hubspot").cloned().flatten());
        if let Some(hs) = &hubspot
            && let Some(existing) = self
                .contacts
                .iter()
                .find(|c| c.external_refs.get("hubspot") == Some(hs))
        {
            if self.allowed(&existing.team_id) {
                return Ok((existing.id(), false));
            }
            return Err(KErr::new(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                    "external_refs.hubspot {hs} belongs to a contact outside the enabled teams"
                ),
            ));
        }
        let team = match f.team_id {
            Some(t) => t,
            None => self.allowed.first().cloned().ok_or_else(|| {
                KErr::validation("team_id", "no team is enabled for the integration")
            })?,
        };
        if api && !self.allowed(&team) {
            return Err(KErr::validation(
                "team_id",
                format!("team {team} is not enabled for the integration"),
            ));
        }
        let first_name = f.first_name.flatten();
        let last_name = f.last_name.flatten();
        let emails = f.emails.unwrap_or_default();
        let phones = f.phones.unwrap_or_default();
        if first_name.is_none() && last_name.is_none() && emails.is_empty() && phones.is_empty() {
            return Err(KErr::validation(
                "first_name",
                "a contact needs a name, an e-mail or a phone",
            ));
        }
        let mut external_refs = BTreeMap::new();
        merge_refs(&mut external_refs, f.external_refs.unwrap_or_default());
        let now = self.tick();
        self.next_contact += 1;
        let contact = Contact {
            seq: self.next_contact,
            team_id: team,
            owner_user_id: f.owner_user_id.flatten(),
            first_name,
            last_name,
            emails,
            phones,
            job_title: f.job_title.flatten(),
            organization: f.organization.flatten(),
            is_private: f.is_private.unwrap_or(false),
            external_refs,
            created_at: now,
            updated_at: now,
            deleted: false,
        };
        let (id, team, data) = (contact.id(), contact.team_id.clone(), contact.json(company));
        self.contacts.push(contact);
        self.emit(company, "contact.created", &team, data, now);
        Ok((id, true))
    }

    fn update_contact(&mut self, company: &str, id: &str, f: ContactFields, api: bool) -> R<usize> {
        let i = self
            .contact_pos(id)
            .filter(|i| {
                let c = &self.contacts[*i];
                !api || (self.allowed(&c.team_id) && !c.deleted)
            })
            .ok_or_else(|| KErr::not_found(&format!("contact {id}")))?;
        if let Some(team) = &f.team_id
            && api
            && !self.allowed(team)
        {
            return Err(KErr::validation(
                "team_id",
                format!("team {team} is not enabled for the integration"),
            ));
        }
        if let Some(Some(hs)) = f.external_refs.as_ref().and_then(|r| r.get("hubspot"))
            && let Some(other) = self
                .contacts
                .iter()
                .enumerate()
                .find(|(j, c)| *j != i && c.external_refs.get("hubspot") == Some(hs))
                .map(|(_, c)| c.id())
        {
            return Err(KErr::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("external_refs.hubspot {hs} already belongs to {other}"),
            ));
        }
        let now = self.tick();
        let c = &mut self.contacts[i];
        if let Some(v) = f.team_id {
            c.team_id = v;
        }
        if let Some(v) = f.owner_user_id {
            c.owner_user_id = v;
        }
        if let Some(v) = f.first_name {
            c.first_name = v;
        }
        if let Some(v) = f.last_name {
            c.last_name = v;
        }
        if let Some(v) = f.emails {
            c.emails = v;
        }
        if let Some(v) = f.phones {
            c.phones = v;
        }
        if let Some(v) = f.job_title {
            c.job_title = v;
        }
        if let Some(v) = f.organization {
            c.organization = v;
        }
        if let Some(v) = f.is_private {
            c.is_private = v;
        }
        if let Some(r) = f.external_refs {
            merge_refs(&mut c.external_refs, r);
        }
        c.updated_at = now;
        let (team, data) = (c.team_id.clone(), c.json(company));
        self.emit(company, "contact.updated", &team, data, now);
        Ok(i)
    }

    fn create_note(&mut self, company: &str, f: NoteFields, api: bool) -> R<(String, bool)> {
        let hubspot = f
            .external_refs
            .as_ref()
            .and_then(|r| r.get("hubspot").cloned().flatten());
        if let Some(hs) = &hubspot
            && let Some(existing) = self
                .notes
                .iter()
                .find(|n| n.external_refs.get("hubspot") == Some(hs))
        {
            if self.allowed(&existing.team_id) {
                return Ok((existing.id(), false));
            }
            return Err(KErr::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("external_refs.hubspot {hs} belongs to a note outside the enabled teams"),
            ));
        }
        let contact_id = f
            .contact_id
            .ok_or_else(|| KErr::validation("contact_id", "contact_id is required"))?;
        let contact = self
            .contact_pos(&contact_id)
            .map(|i| &self.contacts[i])
            .filter(|c| !api || (self.allowed(&c.team_id) && !c.deleted))
            .ok_or_else(|| {
                KErr::validation("contact_id", format!("contact {contact_id} does not exist"))
            })?;
        let (contact_seq, team) = (contact.seq, contact.team_id.clone());
        let body = f
            .body
            .flatten()
            .ok_or_else(|| KErr::validation("body", "body is required"))?;
        let mut external_refs = BTreeMap::new();
        merge_refs(&mut external_refs, f.external_refs.unwrap_or_default());
        let now = self.tick();
        self.next_note += 1;
        let note = Note {
            seq: self.next_note,
            contact_seq,
            team_id: team.clone(),
            author_user_id: f.author_user_id.flatten(),
            body,
            occurred_at: f.occurred_at.unwrap_or(now),
            is_private: f.is_private.unwrap_or(false),
            external_refs,
            updated_at: now,
            deleted: false,
        };
        let (id, data) = (note.id(), note.json(company));
        self.notes.push(note);
        self.emit(company, "note.created", &team, data, now);
        Ok((id, true))
    }

    fn update_note(&mut self, company: &str, id: &str, f: NoteFields, api: bool) -> R<usize> {
        let i = self
            .note_pos(id)
            .filter(|i| {
                let n = &self.notes[*i];
                !api || (self.allowed(&n.team_id) && !n.deleted)
            })
            .ok_or_else(|| KErr::not_found(&format!("note {id}")))?;
        if f.contact_id.is_some() {
            return Err(KErr::validation(
                "contact_id",
                "a note cannot move to another contact",
            ));
        }
        if matches!(f.body, Some(None)) {
            return Err(KErr::validation("body", "body must not be empty"));
        }
        if let Some(Some(hs)) = f.external_refs.as_ref().and_then(|r| r.get("hubspot"))
            && let Some(other) = self
                .notes
                .iter()
                .enumerate()
                .find(|(j, n)| *j != i && n.external_refs.get("hubspot") == Some(hs))
                .map(|(_, n)| n.id())
        {
            return Err(KErr::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("external_refs.hubspot {hs} already belongs to {other}"),
            ));
        }
        let now = self.tick();
        let n = &mut self.notes[i];
        if let Some(v) = f.author_user_id {
            n.author_user_id = v;
        }
        if let Some(Some(v)) = f.body {
            n.body = v;
        }
        if let Some(v) = f.occurred_at {
            n.occurred_at = v;
        }
        if let Some(v) = f.is_private {
            n.is_private = v;
        }
        if let Some(r) = f.external_refs {
            merge_refs(&mut n.external_refs, r);
        }
        n.updated_at = now;
        let (team, data) = (n.team_id.clone(), n.json(company));
        self.emit(company, "note.updated", &team, data, now);
        Ok(i)
    }

    fn delete_contact(&mut self, company: &str, id: &str) -> R<()> {
        let i = self
            .contact_pos(id)
            .ok_or_else(|| KErr::not_found(&format!("contact {id}")))?;
        let now = self.tick();
        let c = &mut self.contacts[i];
        c.deleted = true;
        c.updated_at = now;
        let (team, data) = (c.team_id.clone(), c.json(company));
        self.emit(company, "contact.updated", &team, data, now);
        Ok(())
    }

    fn delete_note(&mut self, company: &str, id: &str) -> R<()> {
        let i = self
            .note_pos(id)
            .ok_or_else(|| KErr::not_found(&format!("note {id}")))?;
        let now = self.tick();
        let n = &mut self.notes[i];
        n.deleted = true;
        n.updated_at = now;
        let (team, data) = (n.team_id.clone(), n.json(company));
        self.emit(company, "note.updated", &team, data, now);
        Ok(())
    }
}

/// One page of a list: records of the allowed teams, ordered by
/// (`updated_at`, id), from `updated_since` (inclusive) and after `cursor`.
fn page<T: Item>(items: &[T], d: &Data, company: &str, req: &Req) -> R<Value> {
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
        .filter(|r| d.allowed(r.team()))
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
    let data: Vec<Value> = rows
        .iter()
        .take(limit)
        .map(|r| r.to_json(company))
        .collect();
    Ok(json!({"data": data, "next_cursor": next_cursor}))
}

struct Inner {
    token: String,
    company_id: String,
    base_url: String,
    data: Mutex<Data>,
}

/// A running fake KADO API (our contract). Dropping it stops the server.
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

impl FakeKado {
    /// Starts the API for one company: `token` is its integration token,
    /// `allowed_teams` the teams enabled for the integration.
    pub async fn start(
        token: &str,
        company_id: &str,
        allowed_teams: &[&str],
    ) -> Result<Self, FakeError> {
        let mut inner_out = None;
        let server = server::serve(|addr| {
            let inner = Arc::new(Inner {
                token: token.to_owned(),
                company_id: company_id.to_owned(),
                base_url: format!("http://{addr}"),
                data: Mutex::new(Data {
                    allowed: allowed_teams.iter().map(|t| (*t).to_owned()).collect(),
                    contacts: Vec::new(),
                    notes: Vec::new(),
                    next_contact: 0,
                    next_note: 0,
                    last_ms: 0,
                    limit: PerSecondLimit::default(),
                    api_calls: 0,
                    subscription: None,
                    queue: VecDeque::new(),
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

    /// `http://127.0.0.1:PORT`; the API is under `/v1`.
    pub fn base_url(&self) -> String {
        self.inner.base_url.clone()
    }

    /// The company the token belongs to.
    pub fn company_id(&self) -> String {
        self.inner.company_id.clone()
    }

    /// The teams enabled for the integration.
    pub fn allowed_teams(&self) -> Vec<String> {
        lock(&self.inner.data).allowed.clone()
    }

    /// The admin changes which teams take part.
    pub fn set_allowed_teams(&self, teams: &[&str]) {
        lock(&self.inner.data).allowed = teams.iter().map(|t| (*t).to_owned()).collect();
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

    /// Subscribes `url` to every event, signed with `secret` (replaces an
    /// earlier subscription); writes from now on queue events.
    pub fn subscribe(&self, url: &str, secret: &str) {
        lock(&self.inner.data).subscription = Some((url.to_owned(), secret.to_owned()));
    }

    /// Drops the subscription and the queued events.
    pub fn unsubscribe(&self) {
        let mut d = lock(&self.inner.data);
        d.subscription = None;
        d.queue.clear();
    }

    /// Each event is POSTed `n` times (clamped to 1–3), each copy signed
    /// with its own timestamp.
    pub fn set_duplicate_deliveries(&self, n: usize) {
        lock(&self.inner.data).duplicates = n.clamp(1, 3);
    }

    /// Signs webhooks with `secret` instead of the subscription's.
    pub fn sign_with(&self, secret: &str) {
        lock(&self.inner.data).sign_secret = Some(secret.to_owned());
    }

    /// Webhook timestamps ten minutes old (correctly signed, but outside
    /// the 5-minute window).
    pub fn set_stale_timestamps(&self, stale: bool) {
        lock(&self.inner.data).stale = stale;
    }

    /// Events queued and not delivered yet (the bodies), in order.
    pub fn pending_webhooks(&self) -> Vec<Value> {
        lock(&self.inner.data)
            .queue
            .iter()
            .map(|p| p.payload.clone())
            .collect()
    }

    /// One delivery pass: POSTs each queued event, signed; an event that
    /// got no 2xx is queued again. Returns every request sent. No lock is
    /// held while sending.
    pub async fn deliver_webhooks(&self) -> Vec<WebhookDelivery> {
        let (url, secret, pending, copies, stale) = {
            let mut d = lock(&self.inner.data);
            let Some((url, secret)) = d.subscription.clone() else {
                return Vec::new();
            };
            let secret = d.sign_secret.clone().unwrap_or(secret);
            let pending: Vec<Pending> = d.queue.drain(..).collect();
            (url, secret, pending, d.duplicates, d.stale)
        };
        if pending.is_empty() {
            return Vec::new();
        }
        let client = reqwest::Client::builder().timeout(WEBHOOK_TIMEOUT).build();
        let mut out = Vec::new();
        let mut again = Vec::new();
        for p in pending {
            let body = serde_json::to_string(&p.payload).unwrap_or_default();
            let first = out.len();
            let mut delivered = false;
            for _ in 0..copies {
                let mut secs = Utc::now().timestamp();
                if stale {
                    secs -= 600;
                }
                let timestamp = secs.to_string();
                let sig = signature(&secret, &timestamp, body.as_bytes());
                let sent = match &client {
                    Ok(c) => c
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("x-timestamp", &timestamp)
                        .header("x-signature", &sig)
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
                delivered |= status.is_some_and(|s| (200..300).contains(&s));
                out.push(WebhookDelivery {
                    url: url.clone(),
                    event: p.event.clone(),
                    body: body.clone(),
                    timestamp,
                    signature: sig,
                    attempt: p.attempt,
                    status,
                    error,
                    requeued: false,
                });
            }
            if !delivered {
                for d in out.iter_mut().skip(first) {
                    d.requeued = true;
                }
                again.push(Pending {
                    attempt: p.attempt + 1,
                    ..p
                });
            }
        }
        let mut d = lock(&self.inner.data);
        for p in again.into_iter().rev() {
            d.queue.push_front(p);
        }
        out
    }

    /// A KADO user adds a contact to `team` (any team; one not enabled
    /// stays invisible to the API and sends no event). `fields` are the
    /// writable contact fields (`first_name`, `emails`, …); `team_id` and
    /// `is_private` come from the arguments, `owner_user_id` defaults to
    /// [`USER_ID`]. Returns the new id.
    pub fn create_contact_as_user(
        &self,
        team: &str,
        fields: Value,
        private: bool,
    ) -> Result<String, FakeError> {
        let mut f = parse_contact(&fields_object(fields)?).map_err(fixture_error)?;
        f.team_id = Some(team.to_owned());
        f.is_private = Some(private);
        if f.owner_user_id.is_none() {
            f.owner_user_id = Some(Some(USER_ID.to_owned()));
        }
        let company = self.inner.company_id.clone();
        lock(&self.inner.data)
            .create_contact(&company, f, false)
            .map(|(id, _)| id)
            .map_err(fixture_error)
    }

    /// A KADO user edits a contact (fields as in a PATCH).
    pub fn edit_contact_as_user(&self, id: &str, fields: Value) -> Result<(), FakeError> {
        let f = parse_contact(&fields_object(fields)?).map_err(fixture_error)?;
        let company = self.inner.company_id.clone();
        lock(&self.inner.data)
            .update_contact(&company, id, f, false)
            .map(|_| ())
            .map_err(fixture_error)
    }

    /// A KADO user marks a contact (`c_…`) or a note (`n_…`) private or not.
    pub fn set_private(&self, id: &str, private: bool) -> Result<(), FakeError> {
        let company = self.inner.company_id.clone();
        let mut d = lock(&self.inner.data);
        let result = if id.starts_with("n_") {
            let f = NoteFields {
                is_private: Some(private),
                ..NoteFields::default()
            };
            d.update_note(&company, id, f, false).map(|_| ())
        } else {
            let f = ContactFields {
                is_private: Some(private),
                ..ContactFields::default()
            };
            d.update_contact(&company, id, f, false).map(|_| ())
        };
        result.map_err(fixture_error)
    }

    /// A KADO user writes a note on a contact (author [`USER_ID`], occurred
    /// now). Returns the new id.
    pub fn create_note_as_user(
        &self,
        contact_id: &str,
        body: &str,
        private: bool,
    ) -> Result<String, FakeError> {
        let f = NoteFields {
            contact_id: Some(contact_id.to_owned()),
            author_user_id: Some(Some(USER_ID.to_owned())),
            body: Some(Some(body.trim().to_owned()).filter(|b| !b.is_empty())),
            is_private: Some(private),
            ..NoteFields::default()
        };
        let company = self.inner.company_id.clone();
        lock(&self.inner.data)
            .create_note(&company, f, false)
            .map(|(id, _)| id)
            .map_err(fixture_error)
    }

    /// A KADO user rewrites a note's body.
    pub fn edit_note_as_user(&self, id: &str, body: &str) -> Result<(), FakeError> {
        let f = NoteFields {
            body: Some(Some(body.to_owned()).filter(|b| !b.trim().is_empty())),
            ..NoteFields::default()
        };
        let company = self.inner.company_id.clone();
        lock(&self.inner.data)
            .update_note(&company, id, f, false)
            .map(|_| ())
            .map_err(fixture_error)
    }

    /// A KADO user deletes a contact (`deleted: true`, a `contact.updated`).
    pub fn delete_contact_as_user(&self, id: &str) -> Result<(), FakeError> {
        let company = self.inner.company_id.clone();
        lock(&self.inner.data)
            .delete_contact(&company, id)
            .map_err(fixture_error)
    }

    /// A KADO user deletes a note (`deleted: true`, a `note.updated`).
    pub fn delete_note_as_user(&self, id: &str) -> Result<(), FakeError> {
        let company = self.inner.company_id.clone();
        lock(&self.inner.data)
            .delete_note(&company, id)
            .map_err(fixture_error)
    }

    /// Every contact of every team, in creation order, as the API shows it.
    pub fn contacts(&self) -> Vec<Value> {
        let d = lock(&self.inner.data);
        d.contacts
            .iter()
            .map(|c| c.json(&self.inner.company_id))
            .collect()
    }

    /// Every note of every team, in creation order.
    pub fn notes(&self) -> Vec<Value> {
        let d = lock(&self.inner.data);
        d.notes
            .iter()
            .map(|n| n.json(&self.inner.company_id))
            .collect()
    }

    /// One contact by id (any team).
    pub fn contact(&self, id: &str) -> Option<Value> {
        let d = lock(&self.inner.data);
        d.contact_pos(id)
            .map(|i| d.contacts[i].json(&self.inner.company_id))
    }

    /// One note by id (any team).
    pub fn note(&self, id: &str) -> Option<Value> {
        let d = lock(&self.inner.data);
        d.note_pos(id)
            .map(|i| d.notes[i].json(&self.inner.company_id))
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

impl Inner {
    fn handle(&self, req: &Req) -> Resp {
        match self.route(req) {
            Ok(r) => r,
            Err(e) => e.resp(),
        }
    }

    fn route(&self, req: &Req) -> R<Resp> {
        let segs = req
            .segments_after("/v1")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| KErr::not_found(&format!("path {}", req.path)))?;
        let unauthorized = || {
            KErr::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid integration token is required",
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
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        match (&req.method, segs.as_slice()) {
            (&Method::GET, ["contacts"]) => {
                let v = page(&d.contacts, &d, company, req)?;
                Ok(Resp::json(StatusCode::OK, &v))
            }
            (&Method::GET, ["notes"]) => {
                let v = page(&d.notes, &d, company, req)?;
                Ok(Resp::json(StatusCode::OK, &v))
            }
            (&Method::POST, ["contacts"]) => {
                let f = parse_contact(&body_object(req)?)?;
                let (id, created) = d.create_contact(company, f, true)?;
                let i = d
                    .contact_pos(&id)
                    .ok_or_else(|| KErr::not_found(&format!("contact {id}")))?;
                let status = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                Ok(Resp::json(status, &d.contacts[i].json(company)))
            }
            (&Method::PATCH, ["contacts", id]) => {
                let f = parse_contact(&body_object(req)?)?;
                let i = d.update_contact(company, id, f, true)?;
                Ok(Resp::json(StatusCode::OK, &d.contacts[i].json(company)))
            }
            (&Method::POST, ["notes"]) => {
                let f = parse_note(&body_object(req)?)?;
                let (id, created) = d.create_note(company, f, true)?;
                let i = d
                    .note_pos(&id)
                    .ok_or_else(|| KErr::not_found(&format!("note {id}")))?;
                let status = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                Ok(Resp::json(status, &d.notes[i].json(company)))
            }
            (&Method::PATCH, ["notes", id]) => {
                let f = parse_note(&body_object(req)?)?;
                let i = d.update_note(company, id, f, true)?;
                Ok(Resp::json(StatusCode::OK, &d.notes[i].json(company)))
            }
            (_, ["contacts" | "notes"] | ["contacts" | "notes", _]) => Err(KErr::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{} is not allowed on {}", req.method, req.path),
            )),
            _ => Err(KErr::not_found(&format!("path {}", req.path))),
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const TOKEN: &str = "kado-int-token-7f3a";
    const HOOK_SECRET: &str = "kado-hook-secret";

    async fn setup() -> FakeKado {
        FakeKado::start(TOKEN, "co_1", &["t_sales", "t_support"])
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
        let mut rb = reqwest::Client::new()
            .request(method, format!("{}{path}", k.base_url()))
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

    async fn post(k: &FakeKado, path: &str, body: Value) -> (u16, Value) {
        send(k, reqwest::Method::POST, path, body).await
    }

    async fn patch(k: &FakeKado, path: &str, body: Value) -> (u16, Value) {
        send(k, reqwest::Method::PATCH, path, body).await
    }

    fn ids(body: &Value) -> Vec<String> {
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    }

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
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            let status = if failing { self.status } else { 204 };
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

    #[tokio::test]
    async fn auth_validation_and_not_found() {
        let k = setup().await;
        for auth in [None, Some("Bearer wrong"), Some("Basic a2Fkbw==")] {
            let (s, body, _) =
                call(&k, auth, reqwest::Method::GET, "/v1/contacts", &[], None).await;
            assert_eq!(s, 401, "{auth:?}");
            assert_eq!(body["error"]["code"], json!("unauthorized"));
            assert!(body["error"]["message"].is_string());
        }
        assert_eq!(k.api_calls(), 0);
        let (s, _, _) = call(
            &k,
            Some(&format!("bearer {TOKEN}")),
            reqwest::Method::GET,
            "/v1/contacts",
            &[],
            None,
        )
        .await;
        assert_eq!(s, 200);
        assert!(!format!("{:?}", k.requests()).contains(TOKEN));

        for (body, field) in [
            (json!({"first_name": "Ann", "nickname": "A"}), "nickname"),
            (json!({"first_name": "Ann", "id": "c_9"}), "id"),
            (json!({"emails": ["not-an-email"]}), "emails"),
            (json!({"phones": ["call me"]}), "phones"),
            (json!({"first_name": 7}), "first_name"),
            (json!({"job_title": "CTO"}), "first_name"),
            (json!({"first_name": "Ann", "team_id": "t_hr"}), "team_id"),
        ] {
            let (s, v) = post(&k, "/v1/contacts", body.clone()).await;
            assert_eq!(s, 422, "{body}");
            assert_eq!(v["error"]["code"], json!("validation"));
            assert_eq!(v["error"]["field"], json!(field), "{body}");
        }
        let (s, v) = patch(&k, "/v1/contacts/c_404", json!({"first_name": "X"})).await;
        assert_eq!((s, v["error"]["code"].clone()), (404, json!("not_found")));
        let (s, _) = get(&k, "/v1/deals", &[]).await;
        assert_eq!(s, 404);
        let (s, v) = send(&k, reqwest::Method::DELETE, "/v1/contacts/c_1", json!({})).await;
        assert_eq!(
            (s, v["error"]["code"].clone()),
            (405, json!("method_not_allowed"))
        );
        assert!(k.contacts().is_empty());

        // Notes: a contact is required, and a body.
        let (s, v) = post(&k, "/v1/notes", json!({"contact_id": "c_1", "body": "x"})).await;
        assert_eq!((s, v["error"]["field"].clone()), (422, json!("contact_id")));
        let (_, c) = post(&k, "/v1/contacts", json!({"first_name": "Ann"})).await;
        let cid = c["id"].as_str().unwrap();
        let (s, v) = post(&k, "/v1/notes", json!({"contact_id": cid})).await;
        assert_eq!((s, v["error"]["field"].clone()), (422, json!("body")));
        let (s, v) = post(
            &k,
            "/v1/notes",
            json!({"contact_id": cid, "body": "x", "occurred_at": "yesterday"}),
        )
        .await;
        assert_eq!(
            (s, v["error"]["field"].clone()),
            (422, json!("occurred_at"))
        );
    }

    #[tokio::test]
    async fn post_is_idempotent_on_the_hubspot_ref() {
        let k = setup().await;
        let body = json!({"first_name": "Ann", "last_name": "Lee", "emails": ["ann@example.com"],
                          "phones": ["+79161234567"], "job_title": "CTO", "organization": "Acme",
                          "external_refs": {"hubspot": "37700000001"}});
        let (s, first) = post(&k, "/v1/contacts", body.clone()).await;
        assert_eq!(s, 201, "{first}");
        let id = first["id"].as_str().unwrap().to_owned();
        assert!(id.starts_with("c_"));
        assert_eq!(first["company_id"], json!("co_1"));
        assert_eq!(first["team_id"], json!("t_sales"));
        assert_eq!(first["owner_user_id"], Value::Null);
        assert_eq!(first["is_private"], json!(false));
        assert_eq!(first["deleted"], json!(false));
        assert_eq!(first["external_refs"], json!({"hubspot": "37700000001"}));
        assert!(first["created_at"].as_str().unwrap().ends_with('Z'));

        // The same ref again (other fields differ): the record as it was, 200.
        let mut again = body.clone();
        again["first_name"] = json!("Changed");
        let (s, second) = post(&k, "/v1/contacts", again).await;
        assert_eq!(s, 200);
        assert_eq!(second, first);
        assert_eq!(k.contacts().len(), 1);

        // Giving another contact that ref is a conflict.
        let (_, bob) = post(&k, "/v1/contacts", json!({"first_name": "Bob"})).await;
        let bob_id = bob["id"].as_str().unwrap();
        let (s, v) = patch(
            &k,
            &format!("/v1/contacts/{bob_id}"),
            json!({"external_refs": {"hubspot": "37700000001"}}),
        )
        .await;
        assert_eq!((s, v["error"]["code"].clone()), (409, json!("conflict")));

        // PATCH merges refs, null clears, arrays are replaced.
        let (s, v) = patch(
            &k,
            &format!("/v1/contacts/{id}"),
            json!({"job_title": null, "phones": [], "external_refs": {"planfix": "9"}}),
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(v["job_title"], Value::Null);
        assert_eq!(v["phones"], json!([]));
        assert_eq!(
            v["external_refs"],
            json!({"hubspot": "37700000001", "planfix": "9"})
        );
        assert!(v["updated_at"].as_str().unwrap() > first["updated_at"].as_str().unwrap());

        // Notes: the same rule.
        let note = json!({"contact_id": id, "body": "Met at expo", "occurred_at": "2024-05-01T10:00:00Z",
                          "external_refs": {"hubspot": "98765"}});
        let (s, n1) = post(&k, "/v1/notes", note.clone()).await;
        assert_eq!(s, 201, "{n1}");
        assert_eq!(n1["occurred_at"], json!("2024-05-01T10:00:00.000Z"));
        assert_eq!(n1["team_id"], json!("t_sales"));
        let (s, n2) = post(&k, "/v1/notes", note).await;
        assert_eq!((s, n2["id"].clone()), (200, n1["id"].clone()));
        assert_eq!(k.notes().len(), 1);
    }

    #[tokio::test]
    async fn lists_page_by_cursor_and_filter_teams() {
        let k = setup().await;
        let hidden = k
            .create_contact_as_user("t_hr", json!({"first_name": "Hidden"}), false)
            .unwrap();
        let mut made = Vec::new();
        for i in 0..5 {
            let team = if i % 2 == 0 { "t_sales" } else { "t_support" };
            made.push(
                k.create_contact_as_user(team, json!({"first_name": format!("P{i}")}), i == 4)
                    .unwrap(),
            );
        }
        k.create_note_as_user(&hidden, "not for the CRM", false)
            .unwrap();

        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut q = vec![("limit", "2".to_owned())];
            if let Some(c) = &cursor {
                q.push(("cursor", c.clone()));
            }
            let q: Vec<(&str, &str)> = q.iter().map(|(a, b)| (*a, b.as_str())).collect();
            let (s, body) = get(&k, "/v1/contacts", &q).await;
            assert_eq!(s, 200, "{body}");
            seen.extend(ids(&body));
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        assert_eq!(seen, made);
        // Private contacts are listed, flagged.
        assert_eq!(k.contact(&made[4]).unwrap()["is_private"], json!(true));
        let (_, notes) = get(&k, "/v1/notes", &[]).await;
        assert_eq!(notes, json!({"data": [], "next_cursor": null}));

        // An edit moves a contact to the end; updated_since is inclusive.
        k.edit_contact_as_user(&made[0], json!({"last_name": "Edited"}))
            .unwrap();
        let edited = k.contact(&made[0]).unwrap();
        let since = edited["updated_at"].as_str().unwrap();
        let (_, body) = get(&k, "/v1/contacts", &[("updated_since", since)]).await;
        assert_eq!(ids(&body), vec![made[0].clone()]);
        let (_, body) = get(&k, "/v1/contacts", &[]).await;
        assert_eq!(ids(&body).last(), Some(&made[0]));

        // Other teams: invisible, not writable, not a target.
        let (s, _) = patch(
            &k,
            &format!("/v1/contacts/{hidden}"),
            json!({"first_name": "X"}),
        )
        .await;
        assert_eq!(s, 404);
        let (s, v) = post(&k, "/v1/notes", json!({"contact_id": hidden, "body": "x"})).await;
        assert_eq!((s, v["error"]["field"].clone()), (422, json!("contact_id")));
        k.set_allowed_teams(&["t_hr"]);
        let (_, body) = get(&k, "/v1/contacts", &[]).await;
        assert_eq!(ids(&body), vec![hidden.clone()]);

        for (q, field) in [
            (("limit", "101"), "limit"),
            (("limit", "0"), "limit"),
            (("cursor", "%%%"), "cursor"),
            (("updated_since", "2024-13-01"), "updated_since"),
        ] {
            let (s, v) = get(&k, "/v1/contacts", &[q]).await;
            assert_eq!(
                (s, v["error"]["field"].clone()),
                (422, json!(field)),
                "{q:?}"
            );
        }
    }

    #[tokio::test]
    async fn webhooks_echo_api_writes_and_are_signed() {
        let k = setup().await;
        let rx = receiver(500, 1).await;
        let url = format!("http://{}/hooks/kado", rx.addr);
        k.subscribe(&url, HOOK_SECRET);

        let (_, c) = post(
            &k,
            "/v1/contacts",
            json!({"first_name": "Ann", "external_refs": {"hubspot": "1"}}),
        )
        .await;
        let cid = c["id"].as_str().unwrap().to_owned();
        // The idempotent repeat writes nothing and announces nothing.
        post(
            &k,
            "/v1/contacts",
            json!({"first_name": "Ann", "external_refs": {"hubspot": "1"}}),
        )
        .await;
        let nid = k.create_note_as_user(&cid, "Met at expo", true).unwrap();
        k.create_contact_as_user("t_hr", json!({"first_name": "Other team"}), false)
            .unwrap();
        let pending = k.pending_webhooks();
        let names: Vec<&str> = pending
            .iter()
            .map(|p| p["event"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["contact.created", "note.created"]);

        // First pass: the receiver fails the first request; that event waits.
        let first = k.deliver_webhooks().await;
        assert_eq!(first.len(), 2);
        assert_eq!((first[0].status, first[0].requeued), (Some(500), true));
        assert!(first[1].ok() && !first[1].requeued);
        let second = k.deliver_webhooks().await;
        assert_eq!(second.len(), 1);
        assert_eq!(
            (second[0].event.as_str(), second[0].attempt),
            ("contact.created", 1)
        );
        assert!(second[0].ok());
        assert!(k.deliver_webhooks().await.is_empty());

        let got = rx.requests();
        assert_eq!(got.len(), 3);
        for req in &got {
            assert_eq!(req.path, "/hooks/kado");
            assert_eq!(req.header("content-type"), Some("application/json"));
            let ts = req.header("x-timestamp").unwrap();
            let age = Utc::now().timestamp() - ts.parse::<i64>().unwrap();
            assert!((0..60).contains(&age), "{age}");
            let mut mac = Hmac::<Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
            mac.update(format!("{ts}.{}", req.body).as_bytes());
            let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
            assert_eq!(req.header("x-signature"), Some(expected.as_str()));
        }
        let note_event = got[1].json().unwrap();
        assert_eq!(note_event["event"], json!("note.created"));
        assert_eq!(note_event["company_id"], json!("co_1"));
        assert_eq!(note_event["data"]["id"], json!(nid));
        assert_eq!(note_event["data"]["is_private"], json!(true));
        assert_eq!(note_event["data"]["author_user_id"], json!(USER_ID));
        assert!(note_event["occurred_at"].is_string());
        let contact_event = got[2].json().unwrap();
        assert_eq!(
            contact_event["data"]["external_refs"],
            json!({"hubspot": "1"})
        );

        // API PATCHes echo too; duplicates and bad signatures on demand.
        k.set_duplicate_deliveries(2);
        k.sign_with("wrong");
        k.set_stale_timestamps(true);
        patch(
            &k,
            &format!("/v1/contacts/{cid}"),
            json!({"last_name": "Lee"}),
        )
        .await;
        let dup = k.deliver_webhooks().await;
        assert_eq!(dup.len(), 2);
        assert_eq!(dup[0].event, "contact.updated");
        assert_eq!(dup[0].body, dup[1].body);
        assert_ne!(
            dup[0].signature,
            signature(HOOK_SECRET, &dup[0].timestamp, dup[0].body.as_bytes())
        );
        assert_eq!(
            dup[0].signature,
            signature("wrong", &dup[0].timestamp, dup[0].body.as_bytes())
        );
        assert!(Utc::now().timestamp() - dup[0].timestamp.parse::<i64>().unwrap() >= 540);
        let event: Value = serde_json::from_str(&dup[0].body).unwrap();
        assert_eq!(event["data"]["last_name"], json!("Lee"));
    }

    #[tokio::test]
    async fn fixtures_private_and_deleted() {
        let k = setup().await;
        let c = k
            .create_contact_as_user("t_support", json!({"emails": ["x@example.com"]}), false)
            .unwrap();
        let n = k.create_note_as_user(&c, "hello", false).unwrap();
        k.set_private(&c, true).unwrap();
        k.set_private(&n, true).unwrap();
        k.edit_note_as_user(&n, "hello again").unwrap();
        assert_eq!(k.contact(&c).unwrap()["is_private"], json!(true));
        let note = k.note(&n).unwrap();
        assert_eq!(
            (note["is_private"].clone(), note["body"].clone()),
            (json!(true), json!("hello again"))
        );
        k.delete_note_as_user(&n).unwrap();
        k.delete_contact_as_user(&c).unwrap();
        let (_, body) = get(&k, "/v1/contacts", &[]).await;
        assert_eq!(body["data"][0]["deleted"], json!(true));
        let (s, _) = patch(&k, &format!("/v1/contacts/{c}"), json!({"first_name": "X"})).await;
        assert_eq!(s, 404);
        assert!(k.set_private("c_999", true).is_err());
        assert!(k.create_note_as_user(&c, " ", false).is_err());
        assert!(
            k.create_contact_as_user("t_sales", json!({"bogus": 1}), false)
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
                "/v1/contacts",
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
        k.set_rate_limit(None);

        k.fail_next(1, Fault::ServerError);
        let (s, v) = get(&k, "/v1/contacts", &[]).await;
        assert_eq!((s, v["error"]["code"].clone()), (500, json!("internal")));
        k.fail_next(1, Fault::TooManyRequests);
        let (s, v) = get(&k, "/v1/contacts", &[]).await;
        assert_eq!(
            (s, v["error"]["code"].clone()),
            (429, json!("rate_limited"))
        );
        assert_eq!(k.fault_count(), 2);
    }
}
