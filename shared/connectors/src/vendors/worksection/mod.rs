//! Worksection through its admin API. Facts, with how sure we are of each
//! and the public source: `vendors/worksection/API.md`.
//!
//! - Each account has its own origin, `https://<account>.worksection.com`
//!   (`base_url`, required); the admin API lives at `/api/admin/v2/`.
//! - Two ways to sign, chosen per connection (`auth_scheme`):
//!   `hash` (documented): every parameter in the query string and
//!   `hash = md5(query + admin key)` appended last; `header` (SDK 2.1,
//!   2026): `Authorization: Admin {ts}_{HMAC-SHA256(key, "{action}:{ts}")}`
//!   with the parameters as JSON. Whether every account accepts the newer
//!   scheme is uncertain, so `hash` is the default.
//! - Errors come back as HTTP 200 with `{"status":"error","status_code"}`:
//!   the envelope is checked, never the HTTP status alone.
//! - `post_task` creates tasks even in archived projects, so a create
//!   first reads the project: archived or deleted projects skip the step
//!   and mark the automation (the seed's "mark with an explanation").
//! - `post_task` has no client key. Each task's text ends with a short
//!   reference derived from the step; a repeated step finds the task by it
//!   among the project's tasks instead of creating a second one.
//! - "Task closed" arrives by webhook (a JSON array of events; the
//!   receiver must answer `{"status":"OK"}` within 5 s or the webhook is
//!   disabled after 10 errors) and is also polled from `get_events`, so a
//!   disabled webhook loses nothing. Both paths name an event
//!   `close:{task}:{date_added}`: the same close is accepted once.
//! - `date_added` has minute precision and no zone (the account's zone,
//!   uncertain): `time_zone` setting, default UTC.
//! - Rate limit: 1 request/s per third-party clients (not in official
//!   text); 429 and "too many requests" answers are retried.
//!
//! Sending a step again after an attempt with an unknown outcome
//! ([`Connector::resend`]):
//!
//! | action                    | resend       | why |
//! |---------------------------|--------------|-----|
//! | `worksection.task.create` | `Keyed`      | the text ends with `crmbridge ref: cb-…` (from the step's key); a repeat finds that task in `get_tasks` and answers with it instead of posting another |
//! | `worksection.project.get` | `Repeatable` | a read |
//!
//! Whether `get_tasks` lists closed tasks is uncertain (the fake lists open
//! ones only): a task closed or deleted by a person between the lost answer
//! and the resend may not be found, and a second one would be made. That
//! window is the time until the engine resumes the step.
#![doc = include_str!("API.md")]

use std::collections::BTreeMap;
use std::time::Duration;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use crmbridge_mapping::{
    ActionKind, ActionSpec, Automation, Event, EventKindSpec, FieldSpec, FieldType,
    Subject,
};
use hmac::{Hmac, Mac};
use md5::{Digest as _, Md5};
use serde_json::{Map, Value, json};
use sha2::Sha256;

use crate::client::{Idempotency, VendorError, VendorPolicy, VendorRequest};
use crate::support::{
    base_url, credential, field, only_known, required_text, text, validate_known_settings,
    with_timeout,
};
use crate::{
    Account, Action, ActionError, ActionOutput, CallContext, ConnectionView, DecodeError, DecodedEvent, EventSource, Poller, Vendor, VendorSettings, WebhookSource, LiveCatalog,
    InboundRequest, PollBatch, Resend, SettingsError,
};

const DOMAINS: &[&str] = &[".worksection.com"];
const SETTINGS: &[&str] = &["auth_scheme", "time_zone"];
pub const TASK_CLOSED: &str = "worksection.task.closed";
/// A closed task opened again (polled: Worksection's webhooks have no
/// reopen event), so an automation can undo what the close did.
pub const TASK_REOPENED: &str = "worksection.task.reopened";
/// Extra minutes each `get_events` poll looks back: events have minute
/// precision and the previous poll may have run late.
const OVERLAP_MINUTES: i64 = 2;
/// The query string carries the text in the hash scheme; URLs that long
/// are refused by some proxies.
const MAX_QUERY_TEXT: usize = 4000;
const TASK_FIELDS: &[&str] = &[
    "project",
    "title",
    "text",
    "assignee",
    "author",
    "priority",
    "start",
    "end",
    "duration_days",
    "tags",
    "import",
];

pub fn policy() -> VendorPolicy {
    let mut policy = VendorPolicy::new("worksection", 1, Duration::from_secs(1), 1);
    policy.timeout = Duration::from_secs(15);
    policy
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Worksection;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthScheme {
    Hash,
    Header,
}

fn scheme(settings: &Value) -> AuthScheme {
    match settings["auth_scheme"].as_str() {
        Some("header") => AuthScheme::Header,
        _ => AuthScheme::Hash,
    }
}

/// An error envelope (`status: error`).
#[derive(Debug, Clone, PartialEq)]
struct ApiError {
    code: i64,
    message: String,
}

impl ApiError {
    fn into_action(self, http_status: u16) -> ActionError {
        if self.code == 2 {
            return VendorError::Rejected {
                vendor: "worksection",
                status: 401,
                message: format!("the admin API key is not accepted ({})", self.message),
            }
            .into();
        }
        let lowered = self.message.to_lowercase();
        let status = if lowered.contains("too many") || lowered.contains("rate") {
            429
        } else {
            http_status
        };
        VendorError::Rejected {
            vendor: "worksection",
            status,
            message: format!("{} (code {})", self.message, self.code),
        }
        .into()
    }
}

/// Percent-encodes like the integrators (`%20`, not `+`): the md5 covers
/// the exact query string, so one encoding must be used throughout.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The md5-signed query string of the `hash` scheme.
pub fn signed_query(action: &str, params: &[(&str, String)], key: &str) -> String {
    let mut query = format!("action={}", encode(action));
    for (name, value) in params {
        query.push('&');
        query.push_str(&encode(name));
        query.push('=');
        query.push_str(&encode(value));
    }
    let mut md5 = Md5::new();
    md5.update(query.as_bytes());
    md5.update(key.as_bytes());
    let hash = hex::encode(md5.finalize());
    format!("{query}&hash={hash}")
}

/// The `Authorization` value of the `header` scheme.
pub fn admin_token(action: &str, key: &str, at: DateTime<Utc>) -> String {
    let ts = at.timestamp();
    let tag = match Hmac::<Sha256>::new_from_slice(key.as_bytes()) {
        Ok(mut mac) => {
            mac.update(format!("{action}:{ts}").as_bytes());
            hex::encode(mac.finalize().into_bytes())
        }
        // HMAC takes keys of any length; kept for the type's sake.
        Err(_) => String::new(),
    };
    format!("Admin {ts}_{tag}")
}

fn id_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

/// A date a template produced, as Worksection wants it (`DD.MM.YYYY`).
/// Accepts `DD.MM.YYYY`, `YYYY-MM-DD` and RFC 3339 (its own date).
pub fn ws_date(input: &str) -> Option<NaiveDate> {
    let input = input.trim();
    NaiveDate::parse_from_str(input, "%d.%m.%Y")
        .or_else(|_| NaiveDate::parse_from_str(input, "%Y-%m-%d"))
        .ok()
        .or_else(|| {
            DateTime::parse_from_rfc3339(input)
                .ok()
                .map(|t| t.date_naive())
        })
}

/// `get_events`' `period`: minutes up to 360, then hours up to 72, then
/// days (at most 30, the API's limit).
pub fn period(since: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let minutes = ((now - since).num_seconds().max(0) + 59) / 60 + OVERLAP_MINUTES;
    if minutes <= 360 {
        format!("{}m", minutes.max(1))
    } else if minutes <= 72 * 60 {
        format!("{}h", (minutes + 59) / 60)
    } else {
        format!("{}d", ((minutes + 1439) / 1440).min(30))
    }
}

fn zone(settings: &Value) -> chrono_tz::Tz {
    settings["time_zone"]
        .as_str()
        .and_then(|z| z.parse().ok())
        .unwrap_or(chrono_tz::UTC)
}

/// `date_added` ("YYYY-MM-DD HH:MM", account time) as UTC.
fn parse_added(text: &str, tz: chrono_tz::Tz) -> Option<DateTime<Utc>> {
    let naive = NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%d %H:%M")
        .or_else(|_| NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%d %H:%M:%S"))
        .ok()?;
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
}

/// `data` as one record: Worksection answers `post_task` with an object
/// or with a list holding one.
fn one_record(data: &Value) -> Value {
    match data {
        Value::Array(list) if list.len() == 1 => list[0].clone(),
        other => other.clone(),
    }
}

/// The project id in a page path: `/project/{p}/…`.
fn project_of(page: &str) -> Option<String> {
    let mut parts = page.trim_matches('/').split('/');
    (parts.next() == Some("project"))
        .then(|| parts.next().map(str::to_owned))
        .flatten()
}

/// A close or reopen event (webhook item or `get_events` item) as a
/// decoded event.
fn close_event(item: &Value, tz: chrono_tz::Tz) -> Option<DecodedEvent> {
    if item["object"]["type"].as_str() != Some("task") {
        return None;
    }
    let (kind, verb) = match item["action"].as_str() {
        Some("close") => (TASK_CLOSED, "close"),
        Some("reopen") => (TASK_REOPENED, "reopen"),
        _ => return None,
    };
    let task = id_text(&item["object"]["id"]);
    if task.is_empty() {
        return None;
    }
    let added = item["date_added"].as_str().unwrap_or_default().to_owned();
    let closed_at = parse_added(&added, tz);
    let page = item["object"]["page"].as_str().unwrap_or_default();
    let (at, by, by_name) = if verb == "close" {
        ("closed_at", "closed_by", "closed_by_name")
    } else {
        ("reopened_at", "reopened_by", "reopened_by_name")
    };
    let mut data = json!({
        "id": task,
        "page": page,
        "project_id": project_of(page),
    });
    data[at] = json!(closed_at.map(|t| t.to_rfc3339()));
    data[by] = item["user_from"]["email"].clone();
    data[by_name] = item["user_from"]["name"].clone();
    Some(DecodedEvent {
        source_id: Some(format!("{verb}:{task}:{added}")),
        kind: kind.into(),
        subject: Subject {
            kind: "task".into(),
            id: task.clone(),
        },
        occurred_at: closed_at,
        data,
        observation: None,
    })
}

impl Worksection {
    fn base(&self, ctx: &CallContext<'_>) -> Result<String, ActionError> {
        base_url(ctx.settings, "", DOMAINS, ctx.allow_any_base_url)
    }

    /// One admin API call; the envelope's error is returned as such so
    /// callers can tell "project is invalid" from a failure.
    async fn call_raw(
        &self,
        ctx: &CallContext<'_>,
        action: &str,
        params: &[(&str, String)],
        idempotency: Idempotency,
    ) -> Result<(Result<Value, ApiError>, u16, u32), ActionError> {
        let key = credential(ctx.credentials, "admin_key")?;
        let endpoint = format!("{}/api/admin/v2/", self.base(ctx)?);
        let (request, token) = match scheme(ctx.settings) {
            AuthScheme::Hash => {
                let query = signed_query(action, params, key);
                let url = format!("{endpoint}?{query}");
                let request = if idempotency == Idempotency::Idempotent {
                    VendorRequest::get(url)
                } else {
                    VendorRequest::with_body(reqwest::Method::POST, url, Vec::new(), idempotency)
                };
                let hash = query.rsplit("hash=").next().unwrap_or_default().to_owned();
                (request, hash)
            }
            AuthScheme::Header => {
                let token = admin_token(action, key, Utc::now());
                let body: Map<String, Value> = params
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), Value::String(v.clone())))
                    .collect();
                let request = VendorRequest::with_body(
                    reqwest::Method::POST,
                    format!("{endpoint}?action={}", encode(action)),
                    Value::Object(body).to_string().into_bytes(),
                    idempotency,
                )
                .header("content-type", "application/json; charset=utf-8")
                .header("authorization", token.clone());
                (request, token)
            }
        };
        let response = ctx
            .http
            .send(
                ctx.connection,
                &with_timeout(policy(), ctx.settings),
                &request,
                &[key, &token],
            )
            .await?;
        let body = match response.json() {
            Ok(body) => body,
            Err(_) if !response.is_success() => {
                return Err(VendorError::Rejected {
                    vendor: "worksection",
                    status: response.status,
                    message: response.text().chars().take(300).collect(),
                }
                .into());
            }
            Err(err) => return Err(err.into()),
        };
        let envelope = if body["status"].as_str() == Some("ok") && response.is_success() {
            Ok(body)
        } else {
            let code = body["status_code"].as_i64().unwrap_or_default();
            let mut message = body["message"]
                .as_str()
                .unwrap_or("request failed")
                .to_owned();
            if let Some(details) = body["message_details"].as_str().filter(|d| !d.is_empty()) {
                message = format!("{message}: {details}");
            }
            if !response.is_success() {
                return Err(VendorError::Rejected {
                    vendor: "worksection",
                    status: response.status,
                    message,
                }
                .into());
            }
            Err(ApiError { code, message })
        };
        Ok((envelope, response.status, response.attempts))
    }

    async fn call(
        &self,
        ctx: &CallContext<'_>,
        action: &str,
        params: &[(&str, String)],
        idempotency: Idempotency,
    ) -> Result<(Value, u16, u32), ActionError> {
        let (envelope, status, attempts) = self.call_raw(ctx, action, params, idempotency).await?;
        match envelope {
            Ok(body) => Ok((body, status, attempts)),
            Err(err) => Err(err.into_action(status)),
        }
    }

    /// The project, or why a task must not be created in it.
    async fn usable_project(
        &self,
        ctx: &CallContext<'_>,
        project: &str,
    ) -> Result<Value, ActionError> {
        let (envelope, status, _) = self
            .call_raw(
                ctx,
                "get_project",
                &[("id_project", project.to_owned())],
                Idempotency::Idempotent,
            )
            .await?;
        match envelope {
            Ok(body) => {
                let data = body["data"].clone();
                match data["status"].as_str() {
                    Some("archive" | "archived") => Err(ActionError::Skipped {
                        reason: format!(
                            "Worksection project {} ({project}) is archived: no task is created in it",
                            data["name"].as_str().unwrap_or_default()
                        ),
                        health: format!("project archived ({project})"),
                    }),
                    _ => Ok(data),
                }
            }
            Err(ApiError { code: 4, .. }) => Err(ActionError::Skipped {
                reason: format!(
                    "Worksection project {project} does not exist (deleted?): no task is created"
                ),
                health: format!("project deleted ({project})"),
            }),
            Err(err) => Err(err.into_action(status)),
        }
    }

    async fn create_task(
        &self,
        ctx: &CallContext<'_>,
        fields: &Map<String, Value>,
    ) -> Result<ActionOutput, ActionError> {
        only_known(fields, TASK_FIELDS)?;
        let project = required_text(fields, "project")?;
        let title = required_text(fields, "title")?;
        let mut params: Vec<(&str, String)> =
            vec![("id_project", project.clone()), ("title", title)];
        if let Some(assignee) = text(fields, "assignee") {
            params.push(("email_user_to", assignee.trim().to_owned()));
        }
        if let Some(author) = text(fields, "author") {
            params.push(("email_user_from", author.trim().to_owned()));
        }
        if let Some(priority) = text(fields, "priority") {
            match priority.trim().parse::<u8>() {
                Ok(p) if p <= 10 => params.push(("priority", p.to_string())),
                _ => {
                    return Err(ActionError::field(
                        "fields.priority",
                        format!("must be a whole number from 0 to 10, got '{priority}'"),
                    ));
                }
            }
        }
        let date = |name: &str| -> Result<Option<NaiveDate>, ActionError> {
            match text(fields, name) {
                None => Ok(None),
                Some(raw) => ws_date(&raw).map(Some).ok_or_else(|| {
                    ActionError::field(
                        format!("fields.{name}"),
                        format!("'{raw}' is not a date (DD.MM.YYYY, YYYY-MM-DD or RFC 3339)"),
                    )
                }),
            }
        };
        let start = date("start")?;
        let mut end = date("end")?;
        if let Some(days) = text(fields, "duration_days") {
            let days: i64 = days
                .trim()
                .parse()
                .ok()
                .filter(|d| (0..=3650).contains(d))
                .ok_or_else(|| {
                    ActionError::field(
                        "fields.duration_days",
                        "must be a whole number of days from 0 to 3650",
                    )
                })?;
            if end.is_none() {
                let from = start
                    .unwrap_or_else(|| Utc::now().with_timezone(&zone(ctx.settings)).date_naive());
                end = from.checked_add_signed(chrono::Duration::days(days));
            }
        }
        if let (Some(s), Some(e)) = (start, end)
            && e < s
        {
            return Err(ActionError::field(
                "fields.end",
                "the deadline is before the start date",
            ));
        }
        if let Some(s) = start {
            params.push(("datestart", s.format("%d.%m.%Y").to_string()));
        }
        if let Some(e) = end {
            params.push(("dateend", e.format("%d.%m.%Y").to_string()));
        }
        if let Some(tags) = text(fields, "tags") {
            params.push(("tags", tags));
        }
        // The imported CRM fields go into the text, one "Label: value"
        // line each (labels in alphabetical order: JSON objects keep no
        // order here), after the text the automation wrote.
        let mut body = text(fields, "text").unwrap_or_default();
        match fields.get("import") {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                let lines: Vec<String> = map
                    .iter()
                    .filter_map(|(label, value)| {
                        let shown = match value {
                            Value::Null => return None,
                            Value::String(s) if s.is_empty() => return None,
                            Value::String(s) => s.clone(),
                            Value::Array(items) => items
                                .iter()
                                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                                .collect::<Vec<_>>()
                                .join(", "),
                            other => other.to_string(),
                        };
                        Some(format!("{label}: {shown}"))
                    })
                    .collect();
                if !lines.is_empty() {
                    if !body.is_empty() {
                        body.push_str("\n\n");
                    }
                    body.push_str(&lines.join("\n"));
                }
            }
            Some(_) => {
                return Err(ActionError::field(
                    "fields.import",
                    "must be an object of label → value",
                ));
            }
        }
        if scheme(ctx.settings) == AuthScheme::Hash && body.len() > MAX_QUERY_TEXT {
            let cut = (0..=MAX_QUERY_TEXT)
                .rev()
                .find(|i| body.is_char_boundary(*i))
                .unwrap_or(0);
            body.truncate(cut);
            body.push('…');
        }
        let reference = task_reference(ctx.idempotency_key);
        if !body.is_empty() {
            body.push_str("\n\n");
        }
        body.push_str(&format!("crmbridge ref: {reference}"));
        params.push(("text", body));

        self.usable_project(ctx, &project).await?;
        if let Some(existing) = self.task_with_reference(ctx, &project, &reference).await? {
            return Ok(ActionOutput {
                id: id_text(&existing["id"]),
                record: existing,
                response_status: 200,
                attempts: 1,
            });
        }
        let (body, status, attempts) = self
            .call(ctx, "post_task", &params, Idempotency::NotIdempotent)
            .await?;
        let task = one_record(&body["data"]);
        let id = id_text(&task["id"]);
        if id.is_empty() {
            return Err(VendorError::Decode {
                status,
                message: "post_task answered without a task id".into(),
            }
            .into());
        }
        Ok(ActionOutput {
            id,
            record: task,
            response_status: status,
            attempts,
        })
    }

    /// A task an earlier attempt of the same step created (its text ends
    /// with the step's reference).
    async fn task_with_reference(
        &self,
        ctx: &CallContext<'_>,
        project: &str,
        reference: &str,
    ) -> Result<Option<Value>, ActionError> {
        let (body, _, _) = self
            .call(
                ctx,
                "get_tasks",
                &[
                    ("id_project", project.to_owned()),
                    ("extra", "text".to_owned()),
                ],
                Idempotency::Idempotent,
            )
            .await?;
        let marker = format!("crmbridge ref: {reference}");
        Ok(body["data"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|task| task["text"].as_str().is_some_and(|t| t.contains(&marker)))
            .cloned())
    }
}

/// A short reference naming one step of one run.
fn task_reference(idempotency_key: &str) -> String {
    let mut hasher = Sha256::new();
    sha2::Digest::update(&mut hasher, idempotency_key.as_bytes());
    format!("cb-{}", &hex::encode(sha2::Digest::finalize(hasher))[..12])
}

impl VendorSettings for Worksection {
    fn required_credentials(&self) -> &'static [&'static str] {
        &["admin_key"]
    }

    fn validate_settings(
        &self,
        settings: &Value,
        allow_any_base_url: bool,
    ) -> Result<(), Vec<SettingsError>> {
        let mut errors =
            validate_known_settings(settings, SETTINGS, None, DOMAINS, allow_any_base_url)
                .err()
                .unwrap_or_default();
        if let Some(value) = settings.get("auth_scheme")
            && !matches!(value.as_str(), Some("hash" | "header"))
        {
            errors.push(SettingsError {
                field: "auth_scheme".into(),
                message:
                    "must be \"hash\" (md5, the documented scheme) or \"header\" (HMAC, SDK 2.1)"
                        .into(),
            });
        }
        if let Some(value) = settings.get("time_zone")
            && value
                .as_str()
                .and_then(|z| z.parse::<chrono_tz::Tz>().ok())
                .is_none()
        {
            errors.push(SettingsError {
                field: "time_zone".into(),
                message: "must be an IANA time zone name, e.g. Europe/Kyiv".into(),
            });
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

impl WebhookSource for Worksection {
    fn ack_status(&self) -> u16 {
        200
    }

    fn ack_body(&self) -> Option<Value> {
        Some(json!({"status": "OK"}))
    }

    fn decode_webhook(
        &self,
        connection: ConnectionView<'_>,
        request: &InboundRequest<'_>,
    ) -> Result<Vec<DecodedEvent>, DecodeError> {
        if request.method != "POST" {
            return Err(DecodeError::new(
                "method",
                "Worksection webhooks are POSTed JSON",
            ));
        }
        let body: Value = serde_json::from_slice(request.body)
            .map_err(|err| DecodeError::new("body", format!("not JSON: {err}")))?;
        let items = match body {
            Value::Array(items) => items,
            object @ Value::Object(_) => vec![object],
            _ => {
                return Err(DecodeError::new("body", "expected a JSON array of events"));
            }
        };
        let tz = zone(connection.settings);
        let mut events = Vec::new();
        for (index, item) in items.iter().enumerate() {
            if !item.is_object() || item["action"].as_str().is_none() {
                return Err(DecodeError::new(
                    format!("body[{index}].action"),
                    "each event needs an action",
                ));
            }
            // Other events (posts, updates, comments) are not triggers.
            events.extend(close_event(item, tz));
        }
        Ok(events)
    }
}

#[async_trait]
impl EventSource for Worksection {
    fn event_kinds(&self) -> Vec<EventKindSpec> {
        vec![
            EventKindSpec::new(
                TASK_CLOSED,
                vec![
                    field("id", FieldType::String, "task id"),
                    field("name", FieldType::String, "task title"),
                    field("project_id", FieldType::String, "project id"),
                    field("page", FieldType::String, "task page path"),
                    field("closed_at", FieldType::DateTime, "when it was closed"),
                    field("closed_by", FieldType::Email, "who closed it"),
                    field("closed_by_name", FieldType::String, "their name"),
                    field("task", FieldType::Object, "the task as get_task returns it"),
                ],
            )
            .with_options(vec![field(
                "project",
                FieldType::String,
                "only tasks of this project id",
            )]),
            EventKindSpec::new(
                TASK_REOPENED,
                vec![
                    field("id", FieldType::String, "task id"),
                    field("name", FieldType::String, "task title"),
                    field("project_id", FieldType::String, "project id"),
                    field("page", FieldType::String, "task page path"),
                    field("reopened_at", FieldType::DateTime, "when it was opened again"),
                    field("reopened_by", FieldType::Email, "who opened it"),
                    field("reopened_by_name", FieldType::String, "their name"),
                    field("task", FieldType::Object, "the task as get_task returns it"),
                ],
            )
            .with_options(vec![field(
                "project",
                FieldType::String,
                "only tasks of this project id",
            )]),
        ]
    }

    fn trigger_matches(&self, options: &BTreeMap<String, Value>, event: &Event) -> bool {
        match options.get("project").map(id_text) {
            Some(project) if !project.is_empty() => id_text(&event.data["project_id"]) == project,
            _ => true,
        }
    }

    async fn enrich(&self, ctx: &CallContext<'_>, event: &mut Event) -> Result<(), ActionError> {
        if event.kind != TASK_CLOSED && event.kind != TASK_REOPENED {
            return Ok(());
        }
        let (envelope, status, _) = self
            .call_raw(
                ctx,
                "get_task",
                &[("id_task", event.subject.id.clone())],
                Idempotency::Idempotent,
            )
            .await?;
        match envelope {
            Ok(body) => {
                let task = body["data"].clone();
                if event.data["project_id"].is_null() {
                    event.data["project_id"] = task["project"]["id"].clone();
                }
                event.data["name"] = task["name"].clone();
                event.data["task"] = task;
                Ok(())
            }
            // Deleted since: the close still happened.
            Err(ApiError { code: 5, .. }) => Ok(()),
            Err(err) => Err(err.into_action(status)),
        }
    }
}

#[async_trait]
impl Poller for Worksection {
    fn polls(&self, kind: &str) -> bool {
        // The backstop of accounts without a webhook, or whose webhook
        // Worksection disabled after 10 errors.
        kind == TASK_CLOSED || kind == TASK_REOPENED
    }

    async fn poll(
        &self,
        ctx: &CallContext<'_>,
        kind: &str,
        _scope: &Value,
        cursor: Option<&Value>,
        now: DateTime<Utc>,
    ) -> Result<PollBatch, ActionError> {
        if kind != TASK_CLOSED && kind != TASK_REOPENED {
            return Err(ActionError::Config(format!("worksection does not poll {kind}")));
        }
        let next = json!({"polled_at": now.to_rfc3339()});
        let Some(since) = cursor
            .and_then(|c| c["polled_at"].as_str())
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
        else {
            return Ok(PollBatch {
                events: vec![],
                cursor: next,
            });
        };
        let (body, _, _) = self
            .call(
                ctx,
                "get_events",
                &[("period", period(since, now))],
                Idempotency::Idempotent,
            )
            .await?;
        let tz = zone(ctx.settings);
        let mut events: Vec<DecodedEvent> = body["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| close_event(item, tz))
            .filter(|event| event.kind == kind)
            .collect();
        // Newest first from the API; accepted in the order they happened.
        events.reverse();
        Ok(PollBatch {
            events,
            cursor: next,
        })
    }
}

#[async_trait]
impl Account for Worksection {
    async fn check(&self, ctx: &CallContext<'_>) -> Result<Value, ActionError> {
        let (body, _, _) = self
            .call(ctx, "get_projects", &[], Idempotency::Idempotent)
            .await?;
        let count = body["data"].as_array().map_or(0, Vec::len);
        Ok(json!({"projects": count}))
    }

    async fn check_automation(
        &self,
        ctx: &CallContext<'_>,
        automation: &Automation,
        connection: &str,
    ) -> Result<Vec<(String, String)>, ActionError> {
        let mut problems = Vec::new();
        for (index, step) in automation.steps.iter().enumerate() {
            if step.connection != connection || step.action != "worksection.task.create" {
                continue;
            }
            let Some(project) = step.fields.get("project").map(id_text) else {
                continue;
            };
            if project.is_empty() || project.contains("{{") {
                continue;
            }
            match self.usable_project(ctx, &project).await {
                Ok(_) => {}
                Err(ActionError::Skipped { reason, .. }) => {
                    problems.push((format!("steps[{index}].fields.project"), reason));
                }
                Err(err) => return Err(err),
            }
        }
        Ok(problems)
    }
}

#[async_trait]
impl LiveCatalog for Worksection {
    async fn account_catalog(&self, ctx: &CallContext<'_>) -> Result<Value, ActionError> {
        let mut projects = Vec::new();
        for filter in ["active", "pending", "archive"] {
            let (body, _, _) = self
                .call(
                    ctx,
                    "get_projects",
                    &[("filter", filter.to_owned())],
                    Idempotency::Idempotent,
                )
                .await?;
            for project in body["data"].as_array().into_iter().flatten() {
                projects.push(json!({
                    "id": id_text(&project["id"]),
                    "name": project["name"],
                    "status": project["status"],
                }));
            }
        }
        Ok(json!({"projects": projects}))
    }
}

/// Worksection: closed tasks by webhook and poll, tasks created.
pub fn vendor() -> Vendor {
    let worksection = Arc::new(Worksection);
    Vendor::new("worksection", worksection.clone())
        .webhooks(worksection.clone())
        .events(worksection.clone())
        .poller(worksection.clone())
        .account(worksection.clone())
        .live_catalog(worksection.clone())
        .action(Arc::new(CreateTask(worksection.clone())))
        .action(Arc::new(GetProject(worksection)))
}

/// `worksection.task.create`.
struct CreateTask(Arc<Worksection>);

#[async_trait]
impl Action for CreateTask {
    fn spec(&self) -> ActionSpec {
        ActionSpec::new(
            "worksection.task.create",
            ActionKind::Create,
            vec![
                FieldSpec::required("project", FieldType::String).describe("project id"),
                FieldSpec::required("title", FieldType::String).describe("task title"),
                field("text", FieldType::String, "description"),
                field(
                    "assignee",
                    FieldType::String,
                    "assignee e-mail (ANY = anyone, NOONE = unassigned)",
                ),
                field("author", FieldType::Email, "author e-mail"),
                field("priority", FieldType::Integer, "0 to 10"),
                field("start", FieldType::Date, "start date"),
                field("end", FieldType::Date, "deadline"),
                field(
                    "duration_days",
                    FieldType::Integer,
                    "deadline as days after the start (or today) when end is not given",
                ),
                field("tags", FieldType::String, "comma-separated tags"),
                field(
                    "import",
                    FieldType::Object,
                    "CRM data imported into the task: label → value",
                ),
            ],
        )
        .with_output(vec![
            field("id", FieldType::String, "task id"),
            field("page", FieldType::String, "task page path"),
        ])
    }

    /// Found by its reference line before a second post_task.
    fn resend(&self, _fields: &Map<String, Value>) -> Resend {
        Resend::Keyed
    }

    async fn execute(
        &self,
        ctx: &CallContext<'_>,
        fields: &Map<String, Value>,
        _target: Option<&str>,
    ) -> Result<ActionOutput, ActionError> {
        let vendor = &self.0;
        vendor.create_task(ctx, fields).await
    }
}

/// `worksection.project.get`.
struct GetProject(Arc<Worksection>);

#[async_trait]
impl Action for GetProject {
    fn spec(&self) -> ActionSpec {
        ActionSpec::new(
            "worksection.project.get",
            ActionKind::Other,
            vec![FieldSpec::required("project", FieldType::String).describe("project id")],
        )
        .with_output(vec![
            field("id", FieldType::String, "project id"),
            field("status", FieldType::String, "active, pending or archive"),
        ])
    }

    /// A read.
    fn resend(&self, _fields: &Map<String, Value>) -> Resend {
        Resend::Repeatable
    }

    fn reads_only(&self) -> bool {
        true
    }

    async fn execute(
        &self,
        ctx: &CallContext<'_>,
        fields: &Map<String, Value>,
        _target: Option<&str>,
    ) -> Result<ActionOutput, ActionError> {
        let vendor = &self.0;
        let project = required_text(fields, "project")?;
        let (body, status, attempts) = vendor
            .call(
                ctx,
                "get_project",
                &[("id_project", project.clone())],
                Idempotency::Idempotent,
            )
            .await?;
        Ok(ActionOutput {
            id: project,
            record: body["data"].clone(),
            response_status: status,
            attempts,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_md5_scheme_signs_the_exact_query() {
        let query = signed_query("post_task", &[("title", "Deal won: ACME".into())], "k");
        let (unsigned, hash) = query.rsplit_once("&hash=").unwrap();
        assert_eq!(unsigned, "action=post_task&title=Deal%20won%3A%20ACME");
        let mut md5 = Md5::new();
        md5.update(format!("{unsigned}k").as_bytes());
        assert_eq!(hash, hex::encode(md5.finalize()));
    }

    #[test]
    fn the_header_scheme_is_an_hmac_of_action_and_time() {
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let token = admin_token("get_projects", "secret", at);
        let (ts, tag) = token.trim_start_matches("Admin ").split_once('_').unwrap();
        assert_eq!(ts, "1700000000");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"secret").unwrap();
        mac.update(b"get_projects:1700000000");
        assert_eq!(tag, hex::encode(mac.finalize().into_bytes()));
    }

    #[test]
    fn dates_become_day_month_year() {
        let d = |s: &str| ws_date(s).map(|d| d.format("%d.%m.%Y").to_string());
        assert_eq!(d("2026-12-01").as_deref(), Some("01.12.2026"));
        assert_eq!(d("01.12.2026").as_deref(), Some("01.12.2026"));
        assert_eq!(
            d("2026-12-01T23:30:00+02:00").as_deref(),
            Some("01.12.2026")
        );
        assert_eq!(d("tomorrow"), None);
    }

    #[test]
    fn periods_cover_the_time_since_the_last_poll() {
        let now = Utc::now();
        assert_eq!(period(now - chrono::Duration::minutes(5), now), "7m");
        assert_eq!(period(now, now), "2m");
        assert_eq!(period(now - chrono::Duration::hours(10), now), "11h");
        assert_eq!(period(now - chrono::Duration::days(90), now), "30d");
    }

    #[test]
    fn a_reopen_is_an_event_and_post_task_answers_either_shape() {
        let item = json!({"action": "reopen", "object": {"type": "task", "id": 331430, "page": "/project/9/331430/"},
                          "date_added": "2026-03-02 09:00", "user_from": {"id": 1, "email": "o@ws.com", "name": "Olga"}});
        let event = close_event(&item, chrono_tz::UTC).unwrap();
        assert_eq!(event.kind, TASK_REOPENED);
        assert_eq!(event.source_id.as_deref(), Some("reopen:331430:2026-03-02 09:00"));
        assert_eq!(event.data["reopened_by"], "o@ws.com");
        assert_eq!(event.data["project_id"], "9");
        assert!(event.data.get("closed_by").is_none());
        let task = json!({"id": "77", "name": "Deal won"});
        assert_eq!(one_record(&task), task);
        assert_eq!(one_record(&json!([task.clone()])), task);
    }

    #[test]
    fn webhooks_report_closed_tasks_only() {
        let body = json!([
            {"action": "close", "object": {"type": "task", "id": 331430, "page": "/task/331430/"},
             "date_added": "2026-03-01 10:15", "user_from": {"id": 3993, "email": "h@ws.com", "name": "Henry"}},
            {"action": "post", "object": {"type": "task", "id": "5", "page": "/project/1/5/"},
             "date_added": "2026-03-01 10:16"},
            {"action": "close", "object": {"type": "comment", "id": "7"}, "date_added": "2026-03-01 10:17"}
        ]);
        let bytes = body.to_string().into_bytes();
        let settings = json!({"time_zone": "Europe/Kyiv"});
        let events = Worksection
            .decode_webhook(
                ConnectionView {
                    id: "c",
                    settings: &settings,
                    signing_secret: None,
                },
                &InboundRequest {
                    method: "POST",
                    query: &[],
                    content_type: Some("application/json"),
                    body: &bytes,
                    headers: &[],
                    url: None,
                },
            )
            .unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].subject.id, "331430");
        assert_eq!(
            events[0].source_id.as_deref(),
            Some("close:331430:2026-03-01 10:15")
        );
        assert_eq!(events[0].data["closed_by"], "h@ws.com");
        assert_eq!(events[0].data["closed_at"], "2026-03-01T08:15:00+00:00");
        let empty = Worksection
            .decode_webhook(
                ConnectionView {
                    id: "c",
                    settings: &settings,
                    signing_secret: None,
                },
                &InboundRequest {
                    method: "POST",
                    query: &[],
                    content_type: Some("application/json"),
                    body: b"[]",
                    headers: &[],
                    url: None,
                },
            )
            .unwrap();
        assert!(empty.is_empty());
        let bad = Worksection
            .decode_webhook(
                ConnectionView {
                    id: "c",
                    settings: &settings,
                    signing_secret: None,
                },
                &InboundRequest {
                    method: "POST",
                    query: &[],
                    content_type: Some("application/json"),
                    body: b"[{\"object\": {}}]",
                    headers: &[],
                    url: None,
                },
            )
            .unwrap_err();
        assert_eq!(bad.field, "body[0].action");
    }

    #[test]
    fn resend_safety_is_declared_per_action() {
        use crmbridge_mapping::Catalog as _;
        let catalog = vendor().catalog();
        let fields = json!({"project": "1", "title": "t"});
        let fields = fields.as_object().unwrap();
        for (action, want) in [
            ("worksection.task.create", Resend::Keyed),
            ("worksection.project.get", Resend::Repeatable),
        ] {
            assert!(catalog.action(action).is_some(), "{action}");
            assert_eq!(vendor().find_action(action).unwrap().resend(fields), want, "{action}");
        }
        assert!(vendor().find_action("worksection.task.delete").is_none());
    }

    #[test]
    fn project_ids_come_from_pages() {
        assert_eq!(project_of("/project/6622/331786/").as_deref(), Some("6622"));
        assert_eq!(project_of("/task/331430/"), None);
    }

    #[test]
    fn settings_name_the_scheme_and_zone() {
        let ok = json!({"base_url": "https://acme.worksection.com", "auth_scheme": "header"});
        assert!(Worksection.validate_settings(&ok, false).is_ok());
        let bad =
            json!({"base_url": "https://acme.example", "auth_scheme": "sha1", "time_zone": "x"});
        let errors = Worksection.validate_settings(&bad, false).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["base_url", "auth_scheme", "time_zone"]);
        let missing = Worksection
            .validate_settings(&json!({}), false)
            .unwrap_err();
        assert_eq!(missing[0].field, "base_url");
    }
}
