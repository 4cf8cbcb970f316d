//! NetHunt CRM through its "Zapier" integration API. Facts, with how sure
//! we are of each and the public source: `vendors/nethunt/API.md`.
//!
//! - One host, `https://nethunt.com/api/v1/zapier`; HTTP Basic with the
//!   account e-mail and the API key. A bad key answers the plain text
//!   "Your email address or API key does not appear to be valid" (its status
//!   is uncertain — 401 is assumed, any 401/403 is an auth failure).
//! - Fields are keyed by their display name, and the folder-field list gives
//!   names only: NetHunt cannot say which values a dropdown allows, so the
//!   account catalog suggests the values seen most often in recent records.
//! - NetHunt sends no webhooks. "A field of a record in a folder takes a
//!   value" is polled from `updated-record?fieldName=…&since=…`, which gives
//!   records in their *current* state, newest first, with no pagination and
//!   no history. Each poll asks from the cursor minus an overlap and
//!   reports every record as an [`Observation`] of the watched field: the
//!   engine turns observations into changes (the same value seen twice is
//!   one change), so overlapping windows and a record that keeps being
//!   edited do not repeat "Status became Won".
//! - Vendor times never park the cursor: a `Date` header more than a day
//!   from our clock is ignored (the watch starts at our now), and an
//!   `updatedAt` more than a day ahead is reported but does not move the
//!   cursor.
//! - Whether `updated-record` with `fieldName` leaves out records whose
//!   *other* fields changed is inferred, not documented; the observation
//!   step makes the connector correct either way.
//! - Records carry `id`, but create-record answers `recordId`: both are
//!   read.
//! - The default `limit` and the cap are undocumented (one integrator says
//!   10 000): a poll asks for [`POLL_LIMIT`] and, if the answer is full,
//!   once more for [`POLL_LIMIT_MAX`] so that no change is silently cut.
//! - Rate limits are undocumented; integrators back off on 429 and 5xx,
//!   which the HTTP stack does.
//!
//! Sending a step again after an attempt with an unknown outcome
//! ([`Connector::resend`]):
//!
//! | action                  | resend                             | why |
//! |-------------------------|------------------------------------|-----|
//! | `nethunt.record.create` | `Unsafe`                           | create-record takes no client key, and no field exists in every folder to stamp one in and search for: a repeat makes a second record |
//! | `nethunt.record.update` | `Repeatable`, `Unsafe` with `add`  | `fields` overwrite and `remove` takes a value out — the same end state however often sent; `add` appends to a multi-value field again |
#![doc = include_str!("API.md")]

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use crmbridge_mapping::{
    ActionKind, ActionSpec, Automation, Event, EventKindSpec, FieldSpec, FieldType,
    Subject,
};
use serde_json::{Map, Value, json};

use crate::client::{Idempotency, VendorError, VendorPolicy, VendorRequest};
use crate::support::{
    base_url, close_to, credential, field, not_ahead, only_known, text, url_with_query,
    validate_known_settings, with_timeout,
};
use crate::{
    Account, Action, ActionError, ActionOutput, CallContext, ConnectionView, DecodeError, DecodedEvent, EventSource, Poller, Vendor, VendorSettings, WebhookSource, LiveCatalog,
    InboundRequest, Observation, PollBatch, Resend, SettingsError,
};

const DEFAULT_BASE: &str = "https://nethunt.com/api/v1/zapier";
const DOMAINS: &[&str] = &["nethunt.com"];
const SETTINGS: &[&str] = &["time_zone"];
pub const FIELD_CHANGED: &str = "nethunt.record.field_changed";
/// How far back each poll looks before its cursor: NetHunt's clock and
/// ours differ, and a record saved while a poll runs may carry a time a
/// little before the newest one that poll saw.
const OVERLAP: chrono::Duration = chrono::Duration::minutes(2);
pub const POLL_LIMIT: usize = 500;
pub const POLL_LIMIT_MAX: usize = 10_000;
/// How many recent records the account catalog reads per folder to
/// suggest values.
const SUGGEST_SAMPLE: usize = 200;
const SUGGEST_TOP: usize = 10;

pub fn policy() -> VendorPolicy {
    // Undocumented; a few requests a second is what integrators use.
    VendorPolicy::new("nethunt", 5, Duration::from_secs(1), 2)
}

#[derive(Debug, Clone, Copy, Default)]
pub struct NetHunt;

/// A folder of the account, with its field names.
#[derive(Debug, Clone, PartialEq)]
struct Folder {
    id: String,
    name: String,
}

fn record_id(record: &Value) -> String {
    for key in ["id", "recordId"] {
        match &record[key] {
            Value::String(s) if !s.is_empty() => return s.clone(),
            Value::Number(n) => return n.to_string(),
            _ => {}
        }
    }
    String::new()
}

fn iso(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_time(value: &Value) -> Option<DateTime<Utc>> {
    value
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// A value as text for comparison: strings trimmed, numbers printed.
fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Whether a field's value is (or, for multi-value fields, contains) the
/// wanted one. Dropdown values are compared case-insensitively: users type
/// "won" for "Won".
pub fn value_matches(actual: &Value, wanted: &Value) -> bool {
    let Some(wanted) = value_text(wanted) else {
        return actual == wanted;
    };
    let same = |v: &Value| value_text(v).is_some_and(|t| t.eq_ignore_ascii_case(&wanted));
    match actual {
        Value::Array(items) => items.iter().any(same),
        other => same(other),
    }
}

fn option_text<'a>(options: &'a BTreeMap<String, Value>, name: &str) -> Option<&'a str> {
    options.get(name).and_then(Value::as_str).map(str::trim)
}

impl NetHunt {
    fn base(&self, ctx: &CallContext<'_>) -> Result<String, ActionError> {
        base_url(ctx.settings, DEFAULT_BASE, DOMAINS, ctx.allow_any_base_url)
    }

    fn url(
        &self,
        ctx: &CallContext<'_>,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<String, ActionError> {
        url_with_query(&format!("{}/{path}", self.base(ctx)?), query)
    }

    async fn call(
        &self,
        ctx: &CallContext<'_>,
        request: VendorRequest,
    ) -> Result<(Value, u16, u32), ActionError> {
        let (body, status, attempts, _) = self.call_dated(ctx, request).await?;
        Ok((body, status, attempts))
    }

    /// A call, with the time NetHunt's `Date` header gave (its own clock).
    async fn call_dated(
        &self,
        ctx: &CallContext<'_>,
        request: VendorRequest,
    ) -> Result<(Value, u16, u32, Option<DateTime<Utc>>), ActionError> {
        let email = credential(ctx.credentials, "email")?;
        let key = credential(ctx.credentials, "api_key")?;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{email}:{key}"));
        let request = request.header("authorization", format!("Basic {basic}"));
        let response = ctx
            .http
            .send(
                ctx.connection,
                &with_timeout(policy(), ctx.settings),
                &request,
                &[key, &basic],
            )
            .await?;
        if !response.is_success() {
            // NetHunt's errors are plain text, or `{"error": …}`.
            let body = response.text();
            let message = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| body.trim().chars().take(300).collect());
            let message = match response.status {
                401 | 403 => format!("the e-mail or API key is not accepted: {message}"),
                _ => message,
            };
            return Err(VendorError::Rejected {
                vendor: "nethunt",
                status: response.status,
                message,
            }
            .into());
        }
        let date = response
            .headers
            .get("date")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| DateTime::parse_from_rfc2822(v).ok())
            .map(|t| t.with_timezone(&Utc));
        Ok((response.json()?, response.status, response.attempts, date))
    }

    async fn get(
        &self,
        ctx: &CallContext<'_>,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Value, ActionError> {
        let url = self.url(ctx, path, query)?;
        Ok(self.call(ctx, VendorRequest::get(url)).await?.0)
    }

    async fn folders(&self, ctx: &CallContext<'_>) -> Result<Vec<Folder>, ActionError> {
        let body = self.get(ctx, "triggers/readable-folder", &[]).await?;
        Ok(folder_list(&body))
    }

    /// The folder named (or with the id) `wanted`; `path` names the
    /// automation field the error is about.
    async fn folder(
        &self,
        ctx: &CallContext<'_>,
        wanted: &str,
        path: &str,
    ) -> Result<Folder, ActionError> {
        let folders = self.folders(ctx).await?;
        find_folder(&folders, wanted).cloned().ok_or_else(|| {
            ActionError::field(
                path,
                format!(
                    "no folder '{wanted}' in the NetHunt account; folders: {}",
                    folders
                        .iter()
                        .map(|f| f.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
    }

    async fn field_names(
        &self,
        ctx: &CallContext<'_>,
        folder: &Folder,
    ) -> Result<Vec<String>, ActionError> {
        let body = self
            .get(ctx, &format!("triggers/folder-field/{}", folder.id), &[])
            .await?;
        Ok(body
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["name"].as_str().map(str::to_owned))
            .collect())
    }

    /// `updated-record` of a folder since a time, whole: when the answer
    /// fills the limit, asks again with the largest one.
    /// One `updated-record` answer: at most `limit` records of `folder`
    /// changed after `since` (only those whose `field_name` changed, when
    /// given), newest first.
    async fn updated_page(
        &self,
        ctx: &CallContext<'_>,
        folder: &Folder,
        field_name: Option<&str>,
        since: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Value>, ActionError> {
        let mut query = Vec::new();
        if let Some(name) = field_name {
            query.push(("fieldName", name.to_owned()));
        }
        query.push(("since", iso(since)));
        query.push(("limit", limit.to_string()));
        let body = self
            .get(
                ctx,
                &format!("triggers/updated-record/{}", folder.id),
                &query,
            )
            .await?;
        Ok(body.as_array().cloned().unwrap_or_default())
    }

    /// Every record whose `field_name` changed since a time: when the
    /// answer fills the limit, asks again with the largest one.
    async fn updated_records(
        &self,
        ctx: &CallContext<'_>,
        folder: &Folder,
        field_name: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<Value>, ActionError> {
        let records = self
            .updated_page(ctx, folder, Some(field_name), since, POLL_LIMIT)
            .await?;
        if records.len() < POLL_LIMIT {
            return Ok(records);
        }
        let records = self
            .updated_page(ctx, folder, Some(field_name), since, POLL_LIMIT_MAX)
            .await?;
        if records.len() >= POLL_LIMIT_MAX {
            tracing::warn!(
                connection = ctx.connection,
                folder = %folder.name,
                "NetHunt returned the maximum number of records; older changes in this window may be missing"
            );
        }
        Ok(records)
    }

    fn fields_object<'a>(
        fields: &'a Map<String, Value>,
        name: &str,
    ) -> Result<Option<&'a Map<String, Value>>, ActionError> {
        match fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(map)) => Ok(Some(map)),
            Some(_) => Err(ActionError::field(
                format!("fields.{name}"),
                "must be an object of NetHunt field name → value",
            )),
        }
    }
}

fn folder_list(body: &Value) -> Vec<Folder> {
    body.as_array()
        .into_iter()
        .flatten()
        .map(|f| Folder {
            id: record_id(f),
            name: f["name"].as_str().unwrap_or_default().to_owned(),
        })
        .collect()
}

fn find_folder<'a>(folders: &'a [Folder], wanted: &str) -> Option<&'a Folder> {
    folders
        .iter()
        .find(|f| f.id == wanted)
        .or_else(|| folders.iter().find(|f| f.name.eq_ignore_ascii_case(wanted)))
}

/// The values seen most often per field in `records`: NetHunt cannot list
/// a dropdown's options, so these are what the UI suggests.
pub fn suggested_values(records: &[Value], top: usize) -> BTreeMap<String, Vec<Value>> {
    let mut counts: BTreeMap<String, HashMap<String, usize>> = BTreeMap::new();
    for record in records {
        for (name, value) in record["fields"].as_object().into_iter().flatten() {
            let values: Vec<&Value> = match value {
                Value::Array(items) => items.iter().collect(),
                other => vec![other],
            };
            for value in values {
                // Long texts (notes, addresses) are not choices.
                if let Some(text) = value_text(value).filter(|t| !t.is_empty() && t.len() <= 60) {
                    *counts
                        .entry(name.clone())
                        .or_default()
                        .entry(text)
                        .or_default() += 1;
                }
            }
        }
    }
    counts
        .into_iter()
        .map(|(name, values)| {
            let mut ranked: Vec<(String, usize)> = values.into_iter().collect();
            ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let values = ranked
                .into_iter()
                .take(top)
                .map(|(value, count)| json!({"value": value, "count": count}))
                .collect();
            (name, values)
        })
        .collect()
}

/// The field-actions body of update-record: `fields` overwrite, `add`
/// appends (multi-value fields), `remove` takes a value away.
pub fn field_actions(
    overwrite: Option<&Map<String, Value>>,
    add: Option<&Map<String, Value>>,
    remove: Option<&Map<String, Value>>,
) -> Map<String, Value> {
    let mut actions = Map::new();
    for (name, value) in overwrite.into_iter().flatten() {
        actions.insert(name.clone(), json!({"overwrite": true, "add": value}));
    }
    for (name, value) in add.into_iter().flatten() {
        let entry = actions.entry(name.clone()).or_insert_with(|| json!({}));
        entry["add"] = value.clone();
        entry["overwrite"] = json!(false);
    }
    for (name, value) in remove.into_iter().flatten() {
        let entry = actions.entry(name.clone()).or_insert_with(|| json!({}));
        entry["remove"] = value.clone();
    }
    actions
}

fn event_fields() -> Vec<FieldSpec> {
    vec![
        field("id", FieldType::String, "record id"),
        field("folder", FieldType::String, "folder name"),
        field("folder_id", FieldType::String, "folder id"),
        field("field", FieldType::String, "the watched field"),
        field("value", FieldType::Any, "its value now"),
        field("name", FieldType::String, "the record's Name field"),
        field(
            "fields",
            FieldType::Object,
            "every field of the record, by display name",
        ),
        field("created_at", FieldType::DateTime, "created"),
        field("updated_at", FieldType::DateTime, "last changed"),
    ]
}

const CREATE_FIELDS: &[&str] = &["folder", "fields", "time_zone"];
const UPDATE_FIELDS: &[&str] = &["folder", "fields", "add", "remove"];

impl VendorSettings for NetHunt {
    fn required_credentials(&self) -> &'static [&'static str] {
        &["email", "api_key"]
    }

    fn validate_settings(
        &self,
        settings: &Value,
        allow_any_base_url: bool,
    ) -> Result<(), Vec<SettingsError>> {
        validate_known_settings(
            settings,
            SETTINGS,
            Some(DEFAULT_BASE),
            DOMAINS,
            allow_any_base_url,
        )?;
        if let Some(zone) = settings.get("time_zone") {
            let valid = zone
                .as_str()
                .is_some_and(|z| z.parse::<chrono_tz::Tz>().is_ok());
            if !valid {
                return Err(vec![SettingsError {
                    field: "time_zone".into(),
                    message: "must be an IANA time zone name, e.g. Europe/Kyiv".into(),
                }]);
            }
        }
        Ok(())
    }
}

impl WebhookSource for NetHunt {
    fn decode_webhook(
        &self,
        _connection: ConnectionView<'_>,
        _request: &InboundRequest<'_>,
    ) -> Result<Vec<DecodedEvent>, DecodeError> {
        Err(DecodeError::new(
            "path",
            "NetHunt sends no webhooks: its records are polled",
        ))
    }
}

#[async_trait]
impl EventSource for NetHunt {
    fn event_kinds(&self) -> Vec<EventKindSpec> {
        vec![
            EventKindSpec::new(FIELD_CHANGED, event_fields()).with_options(vec![
                FieldSpec::required("folder", FieldType::String)
                    .describe("folder name (or id), e.g. Deals"),
                FieldSpec::required("field", FieldType::String)
                    .describe("the field watched, e.g. Status"),
                field(
                    "value",
                    FieldType::Any,
                    "fire when the field takes this value (any change if absent)",
                ),
                field(
                    "poll_minutes",
                    FieldType::Integer,
                    "informational: NetHunt is polled on every tick (5 minutes)",
                ),
            ]),
        ]
    }

    fn trigger_matches(&self, options: &BTreeMap<String, Value>, event: &Event) -> bool {
        if event.kind != FIELD_CHANGED {
            return true;
        }
        let data = &event.data;
        let folder_ok = option_text(options, "folder").is_none_or(|wanted| {
            data["folder_id"].as_str() == Some(wanted)
                || data["folder"]
                    .as_str()
                    .is_some_and(|name| name.eq_ignore_ascii_case(wanted))
        });
        let field_ok = option_text(options, "field")
            .is_none_or(|wanted| data["field"].as_str() == Some(wanted));
        let value_ok = options
            .get("value")
            .is_none_or(|wanted| value_matches(&data["value"], wanted));
        folder_ok && field_ok && value_ok
    }
}

#[async_trait]
impl Poller for NetHunt {
    fn polls(&self, kind: &str) -> bool {
        kind == FIELD_CHANGED
    }

    fn poll_scope(&self, kind: &str, options: &BTreeMap<String, Value>) -> Value {
        if kind != FIELD_CHANGED {
            return Value::Null;
        }
        json!({
            "folder": option_text(options, "folder"),
            "field": option_text(options, "field"),
        })
    }

    async fn poll(
        &self,
        ctx: &CallContext<'_>,
        kind: &str,
        scope: &Value,
        cursor: Option<&Value>,
        now: DateTime<Utc>,
    ) -> Result<PollBatch, ActionError> {
        if kind != FIELD_CHANGED {
            return Err(ActionError::Config(format!("nethunt does not poll {kind}")));
        }
        let (Some(folder), Some(field_name)) = (scope["folder"].as_str(), scope["field"].as_str())
        else {
            return Err(ActionError::field(
                "trigger.options",
                "folder and field are required",
            ));
        };
        let Some(since) = cursor.and_then(|c| parse_time(&c["since"])) else {
            // First poll: start watching now — by NetHunt's clock (its
            // `Date` header), not ours, so that a skew between the two
            // neither hides a change made just after the start nor
            // replays history. The folder is resolved on the way.
            let url = self.url(ctx, "triggers/readable-folder", &[])?;
            let (body, _, _, date) = self.call_dated(ctx, VendorRequest::get(url)).await?;
            let folders = folder_list(&body);
            let found = find_folder(&folders, folder).ok_or_else(|| {
                ActionError::field(
                    "trigger.options.folder",
                    format!("no folder '{folder}' in the NetHunt account"),
                )
            })?;
            // `Date` has whole seconds: the start may be up to one second
            // earlier than NetHunt's now, never later. A `Date` days off
            // ours is garbage: starting there would replay history or
            // stall the watch.
            let start = date.filter(|d| close_to(*d, now)).unwrap_or(now);
            return Ok(PollBatch {
                events: vec![],
                cursor: json!({
                    "since": iso(start), "floor": iso(start),
                    "folder": folder, "folder_id": found.id,
                }),
            });
        };
        // The overlap never reaches back before watching began: a record
        // won a minute before the automation existed is not its business.
        let floor = cursor.and_then(|c| parse_time(&c["floor"]));
        let from = floor.map_or(since - OVERLAP, |f| (since - OVERLAP).max(f));
        // The folder's id is kept in the cursor: one call per poll, not two.
        let folder = match (
            cursor.and_then(|c| c["folder_id"].as_str()),
            cursor.and_then(|c| c["folder"].as_str()),
        ) {
            (Some(id), Some(name)) if name == folder => Folder {
                id: id.to_owned(),
                name: name.to_owned(),
            },
            _ => self.folder(ctx, folder, "trigger.options.folder").await?,
        };
        let records = self.updated_records(ctx, &folder, field_name, from).await?;
        let mut newest = since;
        let mut events = Vec::with_capacity(records.len());
        // Oldest first, so changes are accepted in the order they happened.
        for record in records.iter().rev() {
            let id = record_id(record);
            if id.is_empty() {
                continue;
            }
            let updated = parse_time(&record["updatedAt"]);
            // A garbage far-future time would park the cursor there.
            if let Some(at) = updated.filter(|at| not_ahead(*at, now)) {
                newest = newest.max(at);
            }
            let value = record["fields"][field_name].clone();
            events.push(DecodedEvent {
                // Named by the engine from the observation (record, field,
                // how many times it changed).
                source_id: None,
                kind: kind.to_owned(),
                subject: Subject {
                    kind: "record".into(),
                    id: id.clone(),
                },
                occurred_at: updated,
                data: json!({
                    "id": id,
                    "folder": folder.name,
                    "folder_id": folder.id,
                    "field": field_name,
                    "value": value,
                    "name": record["fields"]["Name"],
                    "fields": record["fields"],
                    "created_at": record["createdAt"],
                    "updated_at": record["updatedAt"],
                }),
                observation: Some(Observation {
                    key: format!("{}:{id}:{field_name}", folder.id),
                    value,
                }),
            });
        }
        let mut next =
            json!({"since": iso(newest), "folder": scope["folder"], "folder_id": folder.id});
        if let Some(floor) = floor {
            next["floor"] = Value::String(iso(floor));
        }
        Ok(PollBatch {
            events,
            cursor: next,
        })
    }
}

#[async_trait]
impl Account for NetHunt {
    async fn check(&self, ctx: &CallContext<'_>) -> Result<Value, ActionError> {
        let body = self.get(ctx, "triggers/auth-test", &[]).await?;
        let folders: Vec<Value> = body
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| json!({"id": record_id(f), "name": f["name"]}))
            .collect();
        Ok(json!({"folders": folders}))
    }

    async fn check_automation(
        &self,
        ctx: &CallContext<'_>,
        automation: &Automation,
        connection: &str,
    ) -> Result<Vec<(String, String)>, ActionError> {
        let folders = self.folders(ctx).await?;
        let mut fields_of: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut problems = Vec::new();
        let folder_names = || {
            folders
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let trigger = &automation.trigger;
        if trigger.connection == connection
            && trigger.event == FIELD_CHANGED
            && let Some(wanted) = option_text(&trigger.options, "folder")
        {
            match find_folder(&folders, wanted) {
                Some(folder) => {
                    let names = self.field_names(ctx, folder).await?;
                    if let Some(field) = option_text(&trigger.options, "field")
                        && !names.iter().any(|n| n == field)
                    {
                        problems.push((
                            "trigger.options.field".into(),
                            format!(
                                "folder {} has no field '{field}'; fields: {}",
                                folder.name,
                                names.join(", ")
                            ),
                        ));
                    }
                    fields_of.insert(folder.id.clone(), names);
                }
                None => problems.push((
                    "trigger.options.folder".into(),
                    format!(
                        "no folder '{wanted}' in the account; folders: {}",
                        folder_names()
                    ),
                )),
            }
        }
        for (index, step) in automation.steps.iter().enumerate() {
            if step.connection != connection || !step.action.starts_with("nethunt.") {
                continue;
            }
            let folder = match step.fields.get("folder").and_then(Value::as_str) {
                // A template is only known when the step runs.
                Some(wanted) if !wanted.contains("{{") => match find_folder(&folders, wanted) {
                    Some(folder) => vec![folder.clone()],
                    None => {
                        problems.push((
                            format!("steps[{index}].fields.folder"),
                            format!(
                                "no folder '{wanted}' in the account; folders: {}",
                                folder_names()
                            ),
                        ));
                        continue;
                    }
                },
                Some(_) => continue,
                // An update without a folder may touch any folder's record.
                None => folders.clone(),
            };
            let mut known: Vec<String> = Vec::new();
            for f in &folder {
                if !fields_of.contains_key(&f.id) {
                    let names = self.field_names(ctx, f).await?;
                    fields_of.insert(f.id.clone(), names);
                }
                known.extend(fields_of.get(&f.id).cloned().unwrap_or_default());
            }
            for group in ["fields", "add", "remove"] {
                for name in step
                    .fields
                    .get(group)
                    .and_then(Value::as_object)
                    .into_iter()
                    .flat_map(|m| m.keys())
                {
                    if !known.iter().any(|k| k == name) {
                        problems.push((
                            format!("steps[{index}].fields.{group}.{name}"),
                            format!(
                                "no field '{name}' in {}",
                                folder
                                    .iter()
                                    .map(|f| f.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        ));
                    }
                }
            }
        }
        Ok(problems)
    }
}

#[async_trait]
impl LiveCatalog for NetHunt {
    async fn account_catalog(&self, ctx: &CallContext<'_>) -> Result<Value, ActionError> {
        let since = Utc::now() - chrono::Duration::days(365);
        let mut out = Vec::new();
        for folder in self.folders(ctx).await? {
            let names = self.field_names(ctx, &folder).await?;
            let sample = self
                .updated_page(ctx, &folder, None, since, SUGGEST_SAMPLE)
                .await?;
            let mut suggested = suggested_values(&sample, SUGGEST_TOP);
            let fields: Vec<Value> = names
                .iter()
                .map(|name| {
                    json!({
                        "name": name,
                        "suggested_values": suggested.remove(name).unwrap_or_default(),
                    })
                })
                .collect();
            out.push(json!({"id": folder.id, "name": folder.name, "fields": fields}));
        }
        Ok(json!({"folders": out}))
    }
}

/// NetHunt CRM: records polled for field changes, created and updated.
pub fn vendor() -> Vendor {
    let nethunt = Arc::new(NetHunt);
    Vendor::new("nethunt", nethunt.clone())
        .webhooks(nethunt.clone())
        .events(nethunt.clone())
        .poller(nethunt.clone())
        .account(nethunt.clone())
        .live_catalog(nethunt.clone())
        .action(Arc::new(CreateRecord(nethunt.clone())))
        .action(Arc::new(UpdateRecord(nethunt)))
}

/// `nethunt.record.create`.
struct CreateRecord(Arc<NetHunt>);

#[async_trait]
impl Action for CreateRecord {
    fn spec(&self) -> ActionSpec {
        ActionSpec::new(
            "nethunt.record.create",
            ActionKind::Create,
            vec![
                FieldSpec::required("folder", FieldType::String)
                    .describe("folder name or id"),
                field(
                    "fields",
                    FieldType::Object,
                    "field display name → value (arrays for multi-value fields)",
                ),
                field(
                    "time_zone",
                    FieldType::String,
                    "IANA zone for dates (default: the connection's time_zone or UTC)",
                ),
            ],
        )
        .with_output(vec![field("id", FieldType::String, "record id")])
    }

    /// No client key, and no field every folder has to stamp one in.
    fn resend(&self, _fields: &Map<String, Value>) -> Resend {
        Resend::Unsafe
    }

    async fn execute(
        &self,
        ctx: &CallContext<'_>,
        fields: &Map<String, Value>,
        _target: Option<&str>,
    ) -> Result<ActionOutput, ActionError> {
        let vendor = &self.0;
        only_known(fields, CREATE_FIELDS)?;
        let wanted = text(fields, "folder")
            .ok_or_else(|| ActionError::field("fields.folder", "is required"))?;
        let folder = vendor.folder(ctx, &wanted, "fields.folder").await?;
        let values = NetHunt::fields_object(fields, "fields")?
            .cloned()
            .unwrap_or_default();
        let zone = text(fields, "time_zone")
            .or_else(|| ctx.settings["time_zone"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "UTC".into());
        let body = json!({"timeZone": zone, "fields": values});
        let request = VendorRequest::with_body(
            reqwest::Method::POST,
            vendor.url(ctx, &format!("actions/create-record/{}", folder.id), &[])?,
            body.to_string().into_bytes(),
            // NetHunt has no client-side key to de-duplicate a
            // create: only a request surely unsent is repeated.
            Idempotency::NotIdempotent,
        )
        .header("content-type", "application/json");
        let (record, status, attempts) = vendor.call(ctx, request).await?;
        let id = record_id(&record);
        if id.is_empty() {
            return Err(VendorError::Decode {
                status,
                message: "create-record answered without a recordId".into(),
            }
            .into());
        }
        Ok(ActionOutput {
            id,
            record,
            response_status: status,
            attempts,
        })
    }
}

/// `nethunt.record.update`.
struct UpdateRecord(Arc<NetHunt>);

#[async_trait]
impl Action for UpdateRecord {
    fn spec(&self) -> ActionSpec {
        ActionSpec::new(
            "nethunt.record.update",
            ActionKind::Update,
            vec![
                field(
                    "folder",
                    FieldType::String,
                    "the record's folder: field names are checked against it",
                ),
                field(
                    "fields",
                    FieldType::Object,
                    "field → value, overwriting the current value",
                ),
                field(
                    "add",
                    FieldType::Object,
                    "field → value added to a multi-value field",
                ),
                field(
                    "remove",
                    FieldType::Object,
                    "field → value removed from the field",
                ),
            ],
        )
        .with_output(vec![field("id", FieldType::String, "record id")])
    }

    /// Adding to a multi-value field adds again; overwriting and
    /// removing a value end in the same state.
    fn resend(&self, fields: &Map<String, Value>) -> Resend {
        if has_entries(fields, "add") {
            Resend::Unsafe
        } else {
            Resend::Repeatable
        }
    }

    async fn execute(
        &self,
        ctx: &CallContext<'_>,
        fields: &Map<String, Value>,
        target: Option<&str>,
    ) -> Result<ActionOutput, ActionError> {
        let vendor = &self.0;
        only_known(fields, UPDATE_FIELDS)?;
        let Some(target) = target.filter(|t| !t.is_empty()) else {
            return Err(ActionError::field(
                "target",
                "nethunt.record.update needs the record (target: link or id)",
            ));
        };
        let overwrite = NetHunt::fields_object(fields, "fields")?;
        let add = NetHunt::fields_object(fields, "add")?;
        let remove = NetHunt::fields_object(fields, "remove")?;
        let actions = field_actions(overwrite, add, remove);
        if actions.is_empty() {
            return Err(ActionError::field(
                "fields",
                "nothing to change: give fields, add or remove",
            ));
        }
        // Overwriting is repeatable; adding to a list is not.
        let idempotency = if has_entries(fields, "add") {
            Idempotency::NotIdempotent
        } else {
            Idempotency::Idempotent
        };
        let request = VendorRequest::with_body(
            reqwest::Method::POST,
            vendor.url(
                ctx,
                &format!("actions/update-record/{}", urlencode(target)),
                &[("overwrite", "false".into())],
            )?,
            json!({"fieldActions": actions}).to_string().into_bytes(),
            idempotency,
        )
        .header("content-type", "application/json");
        let (record, status, attempts) = vendor.call(ctx, request).await?;
        let id = match record_id(&record) {
            id if id.is_empty() => target.to_owned(),
            id => id,
        };
        Ok(ActionOutput {
            id,
            record,
            response_status: status,
            attempts,
        })
    }
}

/// Whether `fields.{name}` is an object with at least one entry.
fn has_entries(fields: &Map<String, Value>, name: &str) -> bool {
    fields
        .get(name)
        .and_then(Value::as_object)
        .is_some_and(|m| !m.is_empty())
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ids_come_from_id_or_record_id() {
        assert_eq!(record_id(&json!({"id": "a1"})), "a1");
        assert_eq!(record_id(&json!({"recordId": "b2"})), "b2");
        assert_eq!(record_id(&json!({"id": "", "recordId": "b2"})), "b2");
        assert_eq!(record_id(&json!({})), "");
    }

    #[test]
    fn values_match_case_insensitively_and_inside_lists() {
        assert!(value_matches(&json!("Won"), &json!("won")));
        assert!(value_matches(&json!(["Hot", "Won"]), &json!("Won")));
        assert!(value_matches(&json!(1200), &json!("1200")));
        assert!(!value_matches(&json!("Lost"), &json!("Won")));
        assert!(!value_matches(&Value::Null, &json!("Won")));
    }

    #[test]
    fn field_actions_overwrite_add_and_remove() {
        let over = json!({"Stage": "Delivered"});
        let add = json!({"Tags": "vip"});
        let remove = json!({"Tags": "new"});
        let actions = field_actions(over.as_object(), add.as_object(), remove.as_object());
        assert_eq!(
            actions["Stage"],
            json!({"overwrite": true, "add": "Delivered"})
        );
        assert_eq!(
            actions["Tags"],
            json!({"add": "vip", "overwrite": false, "remove": "new"})
        );
    }

    #[test]
    fn resend_safety_is_declared_per_action() {
        use crmbridge_mapping::Catalog as _;
        let catalog = vendor().catalog();
        let cases = [
            (
                "nethunt.record.create",
                json!({"folder": "Deals", "fields": {"Name": "A"}}),
                Resend::Unsafe,
            ),
            (
                "nethunt.record.update",
                json!({"fields": {"Status": "Won"}}),
                Resend::Repeatable,
            ),
            (
                "nethunt.record.update",
                json!({"remove": {"Tags": "new"}}),
                Resend::Repeatable,
            ),
            (
                "nethunt.record.update",
                json!({"fields": {"Status": "Won"}, "add": {}}),
                Resend::Repeatable,
            ),
            (
                "nethunt.record.update",
                json!({"fields": {"Status": "Won"}, "add": {"Tags": "vip"}}),
                Resend::Unsafe,
            ),
            (
                "nethunt.record.update",
                json!({"add": {"Tags": "vip"}, "remove": {"Tags": "new"}}),
                Resend::Unsafe,
            ),
        ];
        for (action, fields, want) in cases {
            assert!(catalog.action(action).is_some(), "{action}");
            assert_eq!(
                vendor().find_action(action).unwrap().resend(fields.as_object().unwrap()),
                want,
                "{action} {fields}"
            );
        }
        assert!(vendor().find_action("nethunt.record.delete").is_none());
    }

    #[test]
    fn suggestions_rank_the_most_frequent_values() {
        let records = vec![
            json!({"fields": {"Status": "Won", "Tags": ["a", "b"]}}),
            json!({"fields": {"Status": "Lost", "Tags": ["a"]}}),
            json!({"fields": {"Status": "Won", "Notes": "x".repeat(100)}}),
        ];
        let suggested = suggested_values(&records, 10);
        assert_eq!(suggested["Status"][0], json!({"value": "Won", "count": 2}));
        assert_eq!(suggested["Status"][1], json!({"value": "Lost", "count": 1}));
        assert_eq!(suggested["Tags"][0], json!({"value": "a", "count": 2}));
        assert!(!suggested.contains_key("Notes"));
        assert_eq!(suggested_values(&records, 1)["Status"].len(), 1);
    }

    #[test]
    fn triggers_match_folder_field_and_value() {
        let options: BTreeMap<String, Value> =
            serde_json::from_value(json!({"folder": "Deals", "field": "Status", "value": "Won"}))
                .unwrap();
        let event = |folder: &str, field: &str, value: &str| Event {
            id: crmbridge_mapping::EventId::from_source("c", "1"),
            tenant: "t".into(),
            connection: "c".into(),
            app: "nethunt".into(),
            kind: FIELD_CHANGED.into(),
            subject: Subject {
                kind: "record".into(),
                id: "r".into(),
            },
            occurred_at: Utc::now(),
            received_at: Utc::now(),
            data: json!({"folder": folder, "folder_id": "f1", "field": field, "value": value}),
        };
        assert!(NetHunt.trigger_matches(&options, &event("Deals", "Status", "Won")));
        assert!(NetHunt.trigger_matches(&options, &event("deals", "Status", "won")));
        assert!(!NetHunt.trigger_matches(&options, &event("Deals", "Status", "Lost")));
        assert!(!NetHunt.trigger_matches(&options, &event("Leads", "Status", "Won")));
        assert!(!NetHunt.trigger_matches(&options, &event("Deals", "Stage", "Won")));
        assert_eq!(
            NetHunt.poll_scope(FIELD_CHANGED, &options),
            json!({"folder": "Deals", "field": "Status"})
        );
    }

    #[test]
    fn settings_default_to_the_one_host_and_check_the_zone() {
        assert!(NetHunt.validate_settings(&json!({}), false).is_ok());
        assert!(
            NetHunt
                .validate_settings(&json!({"time_zone": "Europe/Kyiv"}), false)
                .is_ok()
        );
        let errors = NetHunt
            .validate_settings(&json!({"time_zone": "Mars/Base"}), false)
            .unwrap_err();
        assert_eq!(errors[0].field, "time_zone");
        assert!(
            NetHunt
                .validate_settings(&json!({"base_url": "https://evil.example"}), false)
                .is_err()
        );
    }
}
