//! Fake NetHunt CRM "Zapier" integration API (`https://nethunt.com/api/v1/zapier`).
//!
//! Mirrors (see `shared/connectors/src/vendors/nethunt/API.md`):
//! * only the documented prefix [`API_PREFIX`] is served; every path is
//!   relative to [`FakeNetHunt::base_url`]; GET and POST only, JSON bodies;
//! * auth: HTTP Basic `base64(email:apikey)` on every request; a missing or
//!   wrong one is answered with the plain text
//!   `Your email address or API key does not appear to be valid`;
//! * `GET /triggers/auth-test`, `/triggers/readable-folder`,
//!   `/triggers/writable-folder` → `[{"id","name"}]` of folders (every folder
//!   is readable and writable); `GET /triggers/folder-field/{folderId}` →
//!   `[{"name"}]`, names only;
//! * records `{"id","createdAt","updatedAt","fields":{…}}`, `fields` keyed by
//!   the field's display name, multi-value fields as arrays; timestamps
//!   ISO-8601 UTC with milliseconds (`2024-01-15T10:30:00.000Z`) from the
//!   fake clock ([`FakeNetHunt::advance_clock`]); successive writes get
//!   strictly increasing timestamps (+1 ms when the clock has not moved);
//! * `GET /searches/find-record/{folderId}?recordId=&query=&limit=`: one of
//!   `recordId` / `query` is required (else 400
//!   `Please enter either Record ID or Search Query`); `query` matches
//!   case-insensitively as a substring of any string field value (or string
//!   inside an array value); no match → `[]`;
//! * `GET /triggers/new-record/{folderId}?since=&limit=` (createdAt > since),
//!   `GET /triggers/updated-record/{folderId}?fieldName=…&fieldName=…&since=&limit=`
//!   (updatedAt > since; with `fieldName`s only records whose named fields
//!   changed after `since`, from the change log; records in their current
//!   state), `GET /triggers/record-change/{folderId}?recordId=&fieldName=&since=&limit=`;
//!   all newest first, `since` strictly greater, no pagination;
//! * `POST /actions/create-record/{folderId}` `{"timeZone","fields"}` → 200
//!   `{"recordId","createdAt","fields"}` (`recordId`, not `id`);
//! * `POST /actions/update-record/{recordId}?overwrite=true|false`
//!   `{"fieldActions":{"<Field>":{"add","remove","overwrite"}}}` → the record;
//!   `overwrite` per field, else the query default, else false; `remove` is
//!   applied before `add`; overwrite + add replaces the value; add alone
//!   appends to an array value (values already present are not repeated),
//!   replaces a scalar, sets an empty field; remove takes the value(s) out of
//!   an array and clears a scalar equal to it (the field disappears from
//!   `fields`). An update that changes nothing writes no change entry and
//!   leaves `updatedAt` alone.
//!
//! Uncertain upstream (the fake's choice in brackets):
//! * the status code of an auth failure [401, `text/plain`];
//! * an unknown folder [404 `text/plain` `Folder not found`];
//! * an unknown record on update [404 `{"error":"Record not found"}`, as a
//!   stand-in server models it — INFERRED];
//! * field names not defined in the folder on create/update [400 `text/plain`
//!   `Unknown field: <name>`];
//! * default `limit` [10 for find-record, 100 for the triggers]; a `limit` or
//!   `since` that does not parse [400 `text/plain` `Invalid limit` /
//!   `Invalid since`]; `since` accepts RFC 3339 or a zone-less
//!   `YYYY-MM-DDTHH:MM:SS[.fff]` read as UTC;
//! * find-record with no match [`[]`, not 404];
//! * the record-change entry shape — a hypothesis from recollection:
//!   `{"id","recordId","time","user":{"email"},"recordAction":"CREATE|UPDATE|DELETE",
//!   "fieldActions":[{"field":{"name"},"oldValue","newValue"}]}`; with
//!   `fieldName` the entries touching one of the named fields are returned
//!   whole (all their field actions); a CREATE lists every field it set
//!   (old value `null`), a DELETE has no field actions;
//! * rate limits are undocumented [off by default; with
//!   [`FakeNetHunt::set_rate_limit`] more than N requests in a second get 429
//!   `text/plain` `Too many requests`, no `Retry-After`]; injected faults:
//!   `ServerError` → 500 `text/plain` `Internal Server Error`,
//!   `TooManyRequests` → the same 429;
//! * who made a change: API writes are by the account e-mail, the helpers
//!   ([`FakeNetHunt::insert_record`], [`FakeNetHunt::set_field`],
//!   [`FakeNetHunt::delete_record`]) act as a UI user
//!   (`manager@example.com` unless [`FakeNetHunt::set_ui_user`]);
//! * `timeZone` on create is accepted and ignored; other endpoints
//!   (comments, call logs, delete-record action) are not served → 404.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, NaiveDateTime, Utc};
use http::{Method, StatusCode};
use serde_json::{Map, Value, json};

use crate::FakeError;
use crate::server::{self, Fault, Req, Resp, Server, Vendor, common_methods, lock};
use crate::util::PerSecondLimit;

/// The documented path prefix of the integration API.
pub const API_PREFIX: &str = "/api/v1/zapier";

/// The plain-text body of an authentication failure.
pub const AUTH_ERROR: &str = "Your email address or API key does not appear to be valid";

const FIND_DEFAULT_LIMIT: usize = 10;
const TRIGGER_DEFAULT_LIMIT: usize = 100;

#[derive(Debug, Clone)]
struct Folder {
    id: String,
    name: String,
    fields: Vec<String>,
}

#[derive(Debug, Clone)]
struct Record {
    id: String,
    folder_id: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    fields: Map<String, Value>,
}

#[derive(Debug, Clone)]
struct Change {
    id: String,
    record_id: String,
    folder_id: String,
    time: DateTime<Utc>,
    user: String,
    action: &'static str,
    /// (field, old, new)
    field_actions: Vec<(String, Value, Value)>,
}

#[derive(Debug)]
struct Data {
    folders: Vec<Folder>,
    records: Vec<Record>,
    changes: Vec<Change>,
    next_id: u64,
    clock_offset: chrono::Duration,
    last_ts: Option<DateTime<Utc>>,
    ui_user: String,
    rate_limit: PerSecondLimit,
}

struct Inner {
    email: String,
    api_key: String,
    data: Mutex<Data>,
}

/// A running fake NetHunt CRM. Dropping it stops the server.
pub struct FakeNetHunt {
    server: Server,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FakeNetHunt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeNetHunt")
            .field("addr", &self.server.addr)
            .finish()
    }
}

type R<T> = Result<T, Resp>;

fn text(status: StatusCode, body: &str) -> Resp {
    let mut r = Resp::new(status);
    r.body = body.as_bytes().to_vec();
    r.with_header("content-type", "text/plain; charset=utf-8")
}

/// `2024-01-15T10:30:00.000Z`.
fn iso(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn parse_since(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|n| n.and_utc())
        })
}

fn record_json(r: &Record) -> Value {
    json!({
        "id": r.id,
        "createdAt": iso(r.created_at),
        "updatedAt": iso(r.updated_at),
        "fields": r.fields,
    })
}

fn change_json(c: &Change) -> Value {
    json!({
        "id": c.id,
        "recordId": c.record_id,
        "time": iso(c.time),
        "user": {"email": c.user},
        "recordAction": c.action,
        "fieldActions": c.field_actions.iter().map(|(f, o, n)| json!({
            "field": {"name": f},
            "oldValue": o,
            "newValue": n,
        })).collect::<Vec<_>>(),
    })
}

fn value_matches(v: &Value, needle: &str) -> bool {
    match v {
        Value::String(s) => s.to_lowercase().contains(needle),
        Value::Array(a) => a.iter().any(|x| value_matches(x, needle)),
        _ => false,
    }
}

fn is_empty_value(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

impl FakeNetHunt {
    /// Starts a fake accepting Basic auth `email:api_key`, with no folders.
    pub async fn start(email: &str, api_key: &str) -> Result<Self, FakeError> {
        let mut inner_out = None;
        let server = server::serve(|_| {
            let inner = Arc::new(Inner {
                email: email.to_owned(),
                api_key: api_key.to_owned(),
                data: Mutex::new(Data {
                    folders: Vec::new(),
                    records: Vec::new(),
                    changes: Vec::new(),
                    next_id: 1,
                    clock_offset: chrono::Duration::zero(),
                    last_ts: None,
                    ui_user: "manager@example.com".to_owned(),
                    rate_limit: PerSecondLimit::default(),
                }),
            });
            inner_out = Some(inner.clone());
            Arc::new(NhVendor(inner))
        })
        .await?;
        let inner = inner_out.ok_or_else(|| FakeError::Invalid("server not built".into()))?;
        Ok(FakeNetHunt { server, inner })
    }

    common_methods!();

    /// `http://127.0.0.1:PORT/api/v1/zapier` — the stand-in for
    /// `https://nethunt.com/api/v1/zapier`.
    pub fn base_url(&self) -> String {
        format!("http://{}{API_PREFIX}", self.server.addr)
    }

    /// The account e-mail accepted (the Basic-auth user).
    pub fn email(&self) -> &str {
        &self.inner.email
    }

    /// The API key accepted (the Basic-auth password).
    pub fn api_key(&self) -> &str {
        &self.inner.api_key
    }

    /// Adds a folder; returns its id (24 hex digits, like a Mongo id).
    pub fn add_folder(&self, name: &str) -> String {
        let mut d = lock(&self.inner.data);
        let id = Inner::new_id(&mut d);
        d.folders.push(Folder {
            id: id.clone(),
            name: name.to_owned(),
            fields: Vec::new(),
        });
        id
    }

    /// Adds a field (by display name) to a folder.
    pub fn add_field(&self, folder_id: &str, name: &str) -> Result<(), FakeError> {
        let mut d = lock(&self.inner.data);
        let f = d
            .folders
            .iter_mut()
            .find(|f| f.id == folder_id)
            .ok_or_else(|| FakeError::NotFound(format!("folder {folder_id}")))?;
        if !f.fields.iter().any(|x| x == name) {
            f.fields.push(name.to_owned());
        }
        Ok(())
    }

    /// The e-mail the helpers' changes are attributed to in the change log
    /// (default `manager@example.com`).
    pub fn set_ui_user(&self, email: &str) {
        lock(&self.inner.data).ui_user = email.to_owned();
    }

    /// Creates a record as a user would in the UI (a CREATE change entry
    /// listing every field set); returns its id. Fields must exist in the folder.
    pub fn insert_record(&self, folder_id: &str, fields: Value) -> Result<String, FakeError> {
        let mut d = lock(&self.inner.data);
        let user = d.ui_user.clone();
        let Value::Object(fields) = fields else {
            return Err(FakeError::Invalid("fields must be a JSON object".into()));
        };
        Inner::create(&mut d, folder_id, fields, &user)
            .map(|r| r.id)
            .map_err(|r| FakeError::Invalid(String::from_utf8_lossy(&r.body).into_owned()))
    }

    /// Sets one field as a user editing in the UI would (`Value::Null`
    /// clears it): bumps `updatedAt` and writes an UPDATE change entry with
    /// the old and new value. Setting the current value changes nothing.
    pub fn set_field(&self, record_id: &str, field: &str, value: Value) -> Result<(), FakeError> {
        let mut d = lock(&self.inner.data);
        let user = d.ui_user.clone();
        let idx = d
            .records
            .iter()
            .position(|r| r.id == record_id)
            .ok_or_else(|| FakeError::NotFound(format!("record {record_id}")))?;
        let folder_id = d.records[idx].folder_id.clone();
        if !Inner::folder_has_field(&d, &folder_id, field) {
            return Err(FakeError::Invalid(format!("Unknown field: {field}")));
        }
        let old = d.records[idx]
            .fields
            .get(field)
            .cloned()
            .unwrap_or(Value::Null);
        let new = if is_empty_value(&value) {
            Value::Null
        } else {
            value
        };
        if old == new {
            return Ok(());
        }
        Inner::commit_update(&mut d, idx, vec![(field.to_owned(), old, new)], &user);
        Ok(())
    }

    /// Deletes a record as a user would (a DELETE change entry).
    pub fn delete_record(&self, record_id: &str) -> Result<(), FakeError> {
        let mut d = lock(&self.inner.data);
        let user = d.ui_user.clone();
        let idx = d
            .records
            .iter()
            .position(|r| r.id == record_id)
            .ok_or_else(|| FakeError::NotFound(format!("record {record_id}")))?;
        let rec = d.records.remove(idx);
        let time = Inner::tick(&mut d);
        let id = Inner::new_id(&mut d);
        d.changes.push(Change {
            id,
            record_id: rec.id,
            folder_id: rec.folder_id,
            time,
            user,
            action: "DELETE",
            field_actions: Vec::new(),
        });
        Ok(())
    }

    /// One record (`{"id","createdAt","updatedAt","fields"}`), if it exists.
    pub fn record(&self, id: &str) -> Option<Value> {
        lock(&self.inner.data)
            .records
            .iter()
            .find(|r| r.id == id)
            .map(record_json)
    }

    /// The records of a folder, in creation order.
    pub fn records(&self, folder_id: &str) -> Vec<Value> {
        lock(&self.inner.data)
            .records
            .iter()
            .filter(|r| r.folder_id == folder_id)
            .map(record_json)
            .collect()
    }

    /// The whole change log, oldest first, in the record-change shape.
    pub fn changes(&self) -> Vec<Value> {
        lock(&self.inner.data)
            .changes
            .iter()
            .map(change_json)
            .collect()
    }

    /// The fake's current time, formatted like its timestamps.
    pub fn now(&self) -> String {
        iso(Utc::now() + lock(&self.inner.data).clock_offset)
    }

    /// Moves the fake's clock forward.
    pub fn advance_clock(&self, by: Duration) {
        lock(&self.inner.data).clock_offset +=
            chrono::Duration::from_std(by).unwrap_or_else(|_| chrono::Duration::zero());
    }

    /// More than `per_second` requests within a second → 429 `Too many
    /// requests` (`None` turns it off).
    pub fn set_rate_limit(&self, per_second: Option<u32>) {
        lock(&self.inner.data).rate_limit.set(per_second);
    }

    /// How many requests the rate limit refused.
    pub fn rate_limited_count(&self) -> usize {
        lock(&self.inner.data).rate_limit.refused()
    }
}

struct NhVendor(Arc<Inner>);

impl Inner {
    fn new_id(d: &mut Data) -> String {
        let n = d.next_id;
        d.next_id += 1;
        // 4-byte timestamp + 8-byte counter, like a Mongo ObjectId.
        let secs = u32::try_from((Utc::now() + d.clock_offset).timestamp().max(0)).unwrap_or(0);
        format!("{secs:08x}{n:016x}")
    }

    /// The next write timestamp: now (fake clock, ms precision), strictly
    /// after the previous one.
    fn tick(d: &mut Data) -> DateTime<Utc> {
        let now = Utc::now() + d.clock_offset;
        let now = DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now);
        let t = match d.last_ts {
            Some(last) if now <= last => last + chrono::Duration::milliseconds(1),
            _ => now,
        };
        d.last_ts = Some(t);
        t
    }

    fn folder_has_field(d: &Data, folder_id: &str, field: &str) -> bool {
        d.folders
            .iter()
            .any(|f| f.id == folder_id && f.fields.iter().any(|x| x == field))
    }

    fn folder<'a>(d: &'a Data, folder_id: &str) -> R<&'a Folder> {
        d.folders
            .iter()
            .find(|f| f.id == folder_id)
            .ok_or_else(|| text(StatusCode::NOT_FOUND, "Folder not found"))
    }

    fn create(d: &mut Data, folder_id: &str, fields: Map<String, Value>, user: &str) -> R<Record> {
        let folder = Self::folder(d, folder_id)?;
        if let Some(bad) = fields.keys().find(|k| !folder.fields.contains(k)) {
            return Err(text(
                StatusCode::BAD_REQUEST,
                &format!("Unknown field: {bad}"),
            ));
        }
        let fields: Map<String, Value> = fields
            .into_iter()
            .filter(|(_, v)| !is_empty_value(v))
            .collect();
        let time = Self::tick(d);
        let id = Self::new_id(d);
        let rec = Record {
            id: id.clone(),
            folder_id: folder_id.to_owned(),
            created_at: time,
            updated_at: time,
            fields: fields.clone(),
        };
        d.records.push(rec.clone());
        let change_id = Self::new_id(d);
        d.changes.push(Change {
            id: change_id,
            record_id: id,
            folder_id: folder_id.to_owned(),
            time,
            user: user.to_owned(),
            action: "CREATE",
            field_actions: fields
                .into_iter()
                .map(|(k, v)| (k, Value::Null, v))
                .collect(),
        });
        Ok(rec)
    }

    /// Applies `(field, old, new)` changes to record `idx` (new `null` clears
    /// the field), bumps `updatedAt` and logs an UPDATE entry.
    fn commit_update(d: &mut Data, idx: usize, changes: Vec<(String, Value, Value)>, user: &str) {
        if changes.is_empty() {
            return;
        }
        let time = Self::tick(d);
        let change_id = Self::new_id(d);
        let rec = &mut d.records[idx];
        for (f, _, new) in &changes {
            if new.is_null() {
                rec.fields.remove(f);
            } else {
                rec.fields.insert(f.clone(), new.clone());
            }
        }
        rec.updated_at = time;
        let (record_id, folder_id) = (rec.id.clone(), rec.folder_id.clone());
        d.changes.push(Change {
            id: change_id,
            record_id,
            folder_id,
            time,
            user: user.to_owned(),
            action: "UPDATE",
            field_actions: changes,
        });
    }

    /// The value after one field action.
    fn apply_action(cur: &Value, action: &Map<String, Value>, overwrite: bool) -> Value {
        let mut v = cur.clone();
        if let Some(rm) = action.get("remove") {
            let to_remove: Vec<&Value> = match rm {
                Value::Array(a) => a.iter().collect(),
                other => vec![other],
            };
            match &mut v {
                Value::Array(arr) => arr.retain(|x| !to_remove.contains(&x)),
                Value::Null => {}
                scalar => {
                    if to_remove.contains(&&*scalar) {
                        v = Value::Null;
                    }
                }
            }
        }
        if let Some(add) = action.get("add") {
            v = match (&v, add) {
                (Value::Array(_), a) if overwrite => match a {
                    Value::Array(_) => a.clone(),
                    x => Value::Array(vec![x.clone()]),
                },
                (Value::Array(arr), a) => {
                    let mut arr = arr.clone();
                    let items: Vec<Value> = match a {
                        Value::Array(x) => x.clone(),
                        x => vec![x.clone()],
                    };
                    for it in items {
                        if !arr.contains(&it) {
                            arr.push(it);
                        }
                    }
                    Value::Array(arr)
                }
                (_, a) => a.clone(),
            };
        }
        if is_empty_value(&v) { Value::Null } else { v }
    }

    fn auth(&self, req: &Req) -> R<()> {
        let ok = req
            .header("authorization")
            .and_then(|h| {
                let (scheme, rest) = h.trim().split_once(' ')?;
                if !scheme.eq_ignore_ascii_case("basic") {
                    return None;
                }
                base64::engine::general_purpose::STANDARD
                    .decode(rest.trim())
                    .ok()
            })
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())))
            .is_some_and(|(u, p)| {
                u.eq_ignore_ascii_case(&self.email) && p == self.api_key && !p.is_empty()
            });
        if ok {
            Ok(())
        } else {
            Err(text(StatusCode::UNAUTHORIZED, AUTH_ERROR))
        }
    }

    fn rate_check(&self) -> R<()> {
        let mut d = lock(&self.data);
        if !d.rate_limit.admit() {
            return Err(text(StatusCode::TOO_MANY_REQUESTS, "Too many requests"));
        }
        Ok(())
    }

    fn handle(&self, req: &Req) -> Resp {
        match self.route(req) {
            Ok(r) | Err(r) => r,
        }
    }

    fn route(&self, req: &Req) -> R<Resp> {
        let segs = req
            .segments_after(API_PREFIX)
            .ok_or_else(|| text(StatusCode::NOT_FOUND, "Not Found"))?;
        self.auth(req)?;
        self.rate_check()?;
        let q = req.query_pairs();
        let param = |k: &str| {
            q.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
                .filter(|v| !v.is_empty())
        };
        let all = |k: &str| -> Vec<String> {
            q.iter()
                .filter(|(key, _)| key == k || key == &format!("{k}[]"))
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty())
                .collect()
        };
        let limit = |default: usize| -> R<usize> {
            match param("limit") {
                None => Ok(default),
                Some(s) => s
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| text(StatusCode::BAD_REQUEST, "Invalid limit")),
            }
        };
        let since = || -> R<Option<DateTime<Utc>>> {
            match param("since") {
                None => Ok(None),
                Some(s) => parse_since(s)
                    .map(Some)
                    .ok_or_else(|| text(StatusCode::BAD_REQUEST, "Invalid since")),
            }
        };
        let s: Vec<&str> = segs.iter().map(String::as_str).collect();
        let mut d = lock(&self.data);
        match (&req.method, s.as_slice()) {
            (
                &Method::GET,
                [
                    "triggers",
                    "auth-test" | "readable-folder" | "writable-folder",
                ],
            ) => {
                let rows: Vec<Value> = d
                    .folders
                    .iter()
                    .map(|f| json!({"id": f.id, "name": f.name}))
                    .collect();
                Ok(Resp::json(StatusCode::OK, &Value::Array(rows)))
            }
            (&Method::GET, ["triggers", "folder-field", folder_id]) => {
                let f = Self::folder(&d, folder_id)?;
                let rows: Vec<Value> = f.fields.iter().map(|n| json!({"name": n})).collect();
                Ok(Resp::json(StatusCode::OK, &Value::Array(rows)))
            }
            (&Method::GET, ["searches", "find-record", folder_id]) => {
                Self::folder(&d, folder_id)?;
                let record_id = param("recordId");
                let query = param("query").map(str::to_lowercase);
                if record_id.is_none() && query.is_none() {
                    return Err(text(
                        StatusCode::BAD_REQUEST,
                        "Please enter either Record ID or Search Query",
                    ));
                }
                let limit = limit(FIND_DEFAULT_LIMIT)?;
                let mut rows: Vec<&Record> = d
                    .records
                    .iter()
                    .filter(|r| r.folder_id == *folder_id)
                    .filter(|r| record_id.is_none_or(|id| r.id == id))
                    .filter(|r| {
                        query
                            .as_deref()
                            .is_none_or(|q| r.fields.values().any(|v| value_matches(v, q)))
                    })
                    .collect();
                rows.sort_by_key(|r| std::cmp::Reverse(r.created_at));
                let rows: Vec<Value> = rows.into_iter().take(limit).map(record_json).collect();
                Ok(Resp::json(StatusCode::OK, &Value::Array(rows)))
            }
            (&Method::GET, ["triggers", "new-record", folder_id]) => {
                Self::folder(&d, folder_id)?;
                let since = since()?;
                let limit = limit(TRIGGER_DEFAULT_LIMIT)?;
                let mut rows: Vec<&Record> = d
                    .records
                    .iter()
                    .filter(|r| r.folder_id == *folder_id)
                    .filter(|r| since.is_none_or(|s| r.created_at > s))
                    .collect();
                rows.sort_by_key(|r| std::cmp::Reverse(r.created_at));
                let rows: Vec<Value> = rows.into_iter().take(limit).map(record_json).collect();
                Ok(Resp::json(StatusCode::OK, &Value::Array(rows)))
            }
            (&Method::GET, ["triggers", "updated-record", folder_id]) => {
                Self::folder(&d, folder_id)?;
                let since = since()?;
                let limit = limit(TRIGGER_DEFAULT_LIMIT)?;
                let names = all("fieldName");
                let mut rows: Vec<&Record> = d
                    .records
                    .iter()
                    .filter(|r| r.folder_id == *folder_id)
                    .filter(|r| since.is_none_or(|s| r.updated_at > s))
                    .filter(|r| {
                        names.is_empty()
                            || d.changes.iter().any(|c| {
                                c.record_id == r.id
                                    && since.is_none_or(|s| c.time > s)
                                    && c.field_actions.iter().any(|(f, _, _)| names.contains(f))
                            })
                    })
                    .collect();
                rows.sort_by_key(|r| std::cmp::Reverse(r.updated_at));
                let rows: Vec<Value> = rows.into_iter().take(limit).map(record_json).collect();
                Ok(Resp::json(StatusCode::OK, &Value::Array(rows)))
            }
            (&Method::GET, ["triggers", "record-change", folder_id]) => {
                Self::folder(&d, folder_id)?;
                let since = since()?;
                let limit = limit(TRIGGER_DEFAULT_LIMIT)?;
                let names = all("fieldName");
                let record_id = param("recordId");
                let mut rows: Vec<&Change> = d
                    .changes
                    .iter()
                    .filter(|c| c.folder_id == *folder_id)
                    .filter(|c| record_id.is_none_or(|id| c.record_id == id))
                    .filter(|c| since.is_none_or(|s| c.time > s))
                    .filter(|c| {
                        names.is_empty()
                            || c.field_actions.iter().any(|(f, _, _)| names.contains(f))
                    })
                    .collect();
                rows.sort_by_key(|r| std::cmp::Reverse(r.time));
                let rows: Vec<Value> = rows.into_iter().take(limit).map(change_json).collect();
                Ok(Resp::json(StatusCode::OK, &Value::Array(rows)))
            }
            (&Method::POST, ["actions", "create-record", folder_id]) => {
                Self::folder(&d, folder_id)?;
                let body: Value = serde_json::from_slice(&req.body)
                    .map_err(|_| text(StatusCode::BAD_REQUEST, "Invalid JSON"))?;
                let fields = match body.get("fields") {
                    None | Some(Value::Null) => Map::new(),
                    Some(Value::Object(m)) => m.clone(),
                    Some(_) => {
                        return Err(text(StatusCode::BAD_REQUEST, "Invalid fields"));
                    }
                };
                let rec = Self::create(&mut d, folder_id, fields, &self.email)?;
                Ok(Resp::json(
                    StatusCode::OK,
                    &json!({"recordId": rec.id, "createdAt": iso(rec.created_at), "fields": rec.fields}),
                ))
            }
            (&Method::POST, ["actions", "update-record", record_id]) => {
                let body: Value = serde_json::from_slice(&req.body)
                    .map_err(|_| text(StatusCode::BAD_REQUEST, "Invalid JSON"))?;
                let idx = d
                    .records
                    .iter()
                    .position(|r| r.id == *record_id)
                    .ok_or_else(|| {
                        Resp::json(StatusCode::NOT_FOUND, &json!({"error": "Record not found"}))
                    })?;
                let default_overwrite = param("overwrite").is_some_and(|v| v == "true");
                let actions = match body.get("fieldActions") {
                    None | Some(Value::Null) => Map::new(),
                    Some(Value::Object(m)) => m.clone(),
                    Some(_) => {
                        return Err(text(StatusCode::BAD_REQUEST, "Invalid fieldActions"));
                    }
                };
                let folder_id = d.records[idx].folder_id.clone();
                let mut changes = Vec::new();
                for (field, action) in &actions {
                    if !Self::folder_has_field(&d, &folder_id, field) {
                        return Err(text(
                            StatusCode::BAD_REQUEST,
                            &format!("Unknown field: {field}"),
                        ));
                    }
                    let Value::Object(action) = action else {
                        return Err(text(
                            StatusCode::BAD_REQUEST,
                            &format!("Invalid field action for {field}"),
                        ));
                    };
                    let overwrite = action
                        .get("overwrite")
                        .and_then(Value::as_bool)
                        .unwrap_or(default_overwrite);
                    let old = d.records[idx]
                        .fields
                        .get(field)
                        .cloned()
                        .unwrap_or(Value::Null);
                    let new = Self::apply_action(&old, action, overwrite);
                    if new != old {
                        changes.push((field.clone(), old, new));
                    }
                }
                Self::commit_update(&mut d, idx, changes, &self.email);
                Ok(Resp::json(StatusCode::OK, &record_json(&d.records[idx])))
            }
            _ => Err(text(StatusCode::NOT_FOUND, "Not Found")),
        }
    }
}

impl Vendor for NhVendor {
    fn secret_headers(&self) -> &'static [&'static str] {
        &["authorization"]
    }

    fn secret_params(&self) -> &'static [&'static str] {
        &[]
    }

    fn fault_response(&self, fault: &Fault, _req: &Req) -> Resp {
        match fault {
            Fault::TooManyRequests => text(StatusCode::TOO_MANY_REQUESTS, "Too many requests"),
            _ => text(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
        }
    }

    fn handle(&self, req: &Req) -> Resp {
        self.0.handle(req)
    }
}
