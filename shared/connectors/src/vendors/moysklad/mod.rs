//! MoySklad (JSON API 1.2): counterparties, customer orders, order webhooks
//! and polling. Facts, with how sure we are of each and the public source:
//! `vendors/moysklad/API.md`.
//!
//! - Auth `Authorization: Bearer <token>`; `Accept-Encoding: gzip` is
//!   mandatory (415 otherwise) — the HTTP stack always sends it.
//! - 45 requests / 3 s and 5 in parallel per user; 429 carries
//!   `X-Lognex-Retry-After` in milliseconds.
//! - Creates carry a `syncId` derived from the step's idempotency key: a
//!   retried create returns the record the first attempt made, never a
//!   second one. That makes creates safe to retry after a timeout.
//! - Phone search: `phone` is free text and `filter=phone=` is an exact
//!   string match, so `+7 (916) …` never matches `79161…`. We search by the
//!   last ten digits (`search=`, a substring search over phone among other
//!   fields) and keep only candidates whose digits really match. Whether
//!   `search` normalises punctuation is uncertain; the client-side check
//!   makes the answer right either way.
//! - Times are Moscow time (UTC+3, no DST since 2014), `YYYY-MM-DD HH:MM:SS.mmm`.
//!   An order's `updated` more than a day ahead of our clock is reported
//!   but does not move the poll cursor (it would stall the poll until then).
//! - Webhooks carry no entity: we accept them fast (MoySklad waits 1.5 s)
//!   and fetch the order at dispatch time (`enrich`). The fetched href must
//!   be under the connection's base URL (no SSRF through a forged webhook).
//! - Our own order writes are announced back by webhook and seen by the
//!   poll: each write says what it set ([`Action::written`]) and each event
//!   what it shows ([`EventSource::reported_change`]), so two-way sync does
//!   not echo.
//! - `check` reads `GET /entity/organization?limit=1`: cheap, authenticated,
//!   and every account has a legal entity. A refused token (401, code 1056)
//!   is an auth failure, never transient.
//!
//! Sending a step again after an attempt with an unknown outcome
//! ([`Connector::resend`]):
//!
//! | action                          | resend       | why |
//! |---------------------------------|--------------|-----|
//! | `moysklad.counterparty.create`  | `Keyed`      | carries `syncId` = f(step key); MoySklad returns the entity with that `syncId` instead of making another |
//! | `moysklad.customerorder.create` | `Keyed`      | the same `syncId` rule |
//! | `moysklad.customerorder.update` | `Repeatable` | `PUT` overwrites status, comment and attributes with the same values |
//!
//! That a repeated `syncId` is answered with the existing entity (rather
//! than refused) is the fake's choice and this connector's assumption; the
//! official text only says `syncId` is unique and immutable (uncertain). If
//! MoySklad refuses instead, the resent step fails with that refusal —
//! still without a second record.
#![doc = include_str!("API.md")]

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, FixedOffset, NaiveDateTime, Offset, TimeZone, Utc};
use crmbridge_mapping::{
    ActionKind, ActionSpec, Event, EventKindSpec, FieldSpec, FieldType, LookupKey,
    Subject,
};
use serde_json::{Map, Value, json};

use crate::client::{Idempotency, RetryHeader, VendorError, VendorPolicy, VendorRequest, redact};
use crate::support::{
    base_url, credential, digits, field, not_ahead, only_known, required_text, same_phone, text,
    url_with_query, validate_known_settings, with_timeout,
};
use crate::{
    Account, Action, ActionError, ActionOutput, CallContext, ConnectionView, DecodeError, DecodedEvent, EventSource, Lookup, Poller, Vendor, VendorSettings, WebhookSource,
    InboundRequest, PollBatch, Reading, ReportedChange, Resend, SettingsError, Written,
};

pub const DEFAULT_BASE_URL: &str = "https://api.moysklad.ru/api/remap/1.2";
const DOMAINS: &[&str] = &["api.moysklad.ru"];
const SETTINGS: &[&str] = &["organization"];
/// Polls re-read this much before the cursor: MoySklad's `updated` is set
/// when a transaction commits, so a change can appear slightly in the past.
const POLL_OVERLAP_SECS: i64 = 60;
/// The most order versions a cursor remembers from the overlap window.
const POLL_MAX_SEEN: usize = 500;

/// How a cursor remembers an order version it reported: 64 bits of its
/// hash (16 hex digits), so a cursor of 500 stays under 10 KB and an idle
/// one costs few write units. Two versions in one minute's window share a
/// mark with odds of about one in 10^16.
fn seen_mark(source_id: &str) -> String {
    use sha2::Digest as _;
    hex::encode(&sha2::Sha256::digest(source_id.as_bytes())[..8])
}
const POLL_PAGE: usize = 100;
const POLL_MAX_PAGES: usize = 20;
const METADATA_TTL: Duration = Duration::from_secs(300);

fn moscow() -> FixedOffset {
    // east_opt fails only beyond ±24 h.
    FixedOffset::east_opt(3 * 3600).unwrap_or(Utc.fix())
}

pub fn policy() -> VendorPolicy {
    VendorPolicy {
        retry_header: RetryHeader::LognexMillis,
        ..VendorPolicy::new("moysklad", 45, Duration::from_secs(3), 5)
    }
}

/// Order states and custom attributes, by name → href. Cached per
/// connection: every order create needs them and they rarely change.
#[derive(Debug, Clone)]
struct OrderMetadata {
    states: BTreeMap<String, String>,
    attributes: BTreeMap<String, (String, String)>,
    fetched: Instant,
}

#[derive(Debug, Default)]
pub struct MoySklad {
    metadata: Mutex<HashMap<String, OrderMetadata>>,
    organizations: Mutex<HashMap<String, Vec<(String, String)>>>,
}

fn order_fields() -> Vec<FieldSpec> {
    vec![
        field("id", FieldType::String, "order id"),
        field("name", FieldType::String, "order number, e.g. 00042"),
        field("state", FieldType::String, "status name"),
        field(
            "state_type",
            FieldType::String,
            "Regular, Successful or Unsuccessful",
        ),
        field("sum", FieldType::Money, "total in roubles"),
        field("payed_sum", FieldType::Money, "paid, in roubles"),
        field("shipped_sum", FieldType::Money, "shipped, in roubles"),
        field("description", FieldType::String, "comment"),
        field("agent_id", FieldType::String, "counterparty id"),
        field("external_code", FieldType::String, "external code"),
        field("updated", FieldType::String, "last change, Moscow time"),
        field("attributes", FieldType::Object, "custom attributes by name"),
        field("href", FieldType::String, "API address of the order"),
        field(
            "action",
            FieldType::String,
            "CREATE, UPDATE or DELETE (webhooks)",
        ),
        field(
            "updated_fields",
            FieldType::Array,
            "changed fields (webhooks with diffType FIELDS)",
        ),
    ]
}

impl MoySklad {
    fn base(&self, ctx: &CallContext<'_>) -> Result<String, ActionError> {
        base_url(
            ctx.settings,
            DEFAULT_BASE_URL,
            DOMAINS,
            ctx.allow_any_base_url,
        )
    }

    async fn call(
        &self,
        ctx: &CallContext<'_>,
        request: VendorRequest,
    ) -> Result<Value, ActionError> {
        let token = credential(ctx.credentials, "token")?;
        let request = request
            .header("authorization", format!("Bearer {token}"))
            .header("accept", "application/json;charset=utf-8")
            .header("content-type", "application/json")
            .header("accept-encoding", "gzip");
        let response = ctx
            .http
            .send(
                ctx.connection,
                &with_timeout(policy(), ctx.settings),
                &request,
                &[token],
            )
            .await?;
        if response.is_success() {
            if response.body.is_empty() {
                return Ok(Value::Null);
            }
            return Ok(response.json()?);
        }
        let body = response.json().unwrap_or(Value::Null);
        let message = body["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .map(|e| {
                        let text = e["error"].as_str().unwrap_or("error");
                        match e["code"].as_i64() {
                            Some(code) => format!("{text} (code {code})"),
                            None => text.to_owned(),
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| format!("HTTP {} without an error body", response.status));
        if response.status == 401 {
            return Err(VendorError::CredentialsRefused {
                vendor: "moysklad",
                status: 401,
                message: format!("the token is not accepted: {}", redact(&message, &[token])),
            }
            .into());
        }
        let message = match response.status {
            403 => format!("the token's user may not do this: {message}"),
            _ => message,
        };
        Err(VendorError::Rejected {
            vendor: "moysklad",
            status: response.status,
            // MoySklad does not echo the token, but an error text is shown
            // to users: make sure of it.
            message: redact(&message, &[token]),
        }
        .into())
    }

    async fn order_metadata(
        &self,
        ctx: &CallContext<'_>,
        base: &str,
    ) -> Result<OrderMetadata, ActionError> {
        let cached = self
            .metadata
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(ctx.connection)
            .cloned();
        if let Some(cached) = cached.filter(|c| c.fetched.elapsed() < METADATA_TTL) {
            return Ok(cached);
        }
        let body = self
            .call(
                ctx,
                VendorRequest::get(format!("{base}/entity/customerorder/metadata")),
            )
            .await?;
        let states = body["states"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                Some((
                    s["name"].as_str()?.to_owned(),
                    s["meta"]["href"].as_str()?.to_owned(),
                ))
            })
            .collect();
        let attributes = match body["attributes"].as_array() {
            Some(rows) => rows.clone(),
            None => {
                // Some accounts return attributes as a reference only.
                let listed = self
                    .call(
                        ctx,
                        VendorRequest::get(format!(
                            "{base}/entity/customerorder/metadata/attributes"
                        )),
                    )
                    .await?;
                listed["rows"].as_array().cloned().unwrap_or_default()
            }
        }
        .iter()
        .filter_map(|a| {
            Some((
                a["name"].as_str()?.to_owned(),
                (
                    a["meta"]["href"].as_str()?.to_owned(),
                    a["type"].as_str().unwrap_or("string").to_owned(),
                ),
            ))
        })
        .collect();
        let metadata = OrderMetadata {
            states,
            attributes,
            fetched: Instant::now(),
        };
        self.metadata
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ctx.connection.to_owned(), metadata.clone());
        Ok(metadata)
    }

    async fn organization_href(
        &self,
        ctx: &CallContext<'_>,
        base: &str,
        wanted: Option<&str>,
    ) -> Result<String, ActionError> {
        let cached = self
            .organizations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(ctx.connection)
            .cloned();
        let orgs = match cached {
            Some(orgs) => orgs,
            None => {
                let body = self
                    .call(
                        ctx,
                        VendorRequest::get(format!("{base}/entity/organization")),
                    )
                    .await?;
                let orgs: Vec<(String, String)> = body["rows"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|o| {
                        Some((
                            o["name"].as_str()?.to_owned(),
                            o["meta"]["href"].as_str()?.to_owned(),
                        ))
                    })
                    .collect();
                self.organizations
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(ctx.connection.to_owned(), orgs.clone());
                orgs
            }
        };
        let found = match wanted {
            None => orgs.first(),
            Some(name) => orgs
                .iter()
                .find(|(n, href)| n == name || href.ends_with(&format!("/{name}"))),
        };
        found.map(|(_, href)| href.clone()).ok_or_else(|| {
            ActionError::field(
                "fields.organization",
                format!(
                    "no organization {} in this account (known: {})",
                    wanted.unwrap_or("at all"),
                    orgs.iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
    }

    fn order_body(
        &self,
        fields: &Map<String, Value>,
        metadata: &OrderMetadata,
    ) -> Result<Map<String, Value>, ActionError> {
        let mut body = Map::new();
        if let Some(state) = text(fields, "state") {
            let href = metadata.states.get(&state).ok_or_else(|| {
                ActionError::field(
                    "fields.state",
                    format!(
                        "no order status '{state}' in this account (known: {})",
                        metadata
                            .states
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?;
            body.insert("state".into(), json!({"meta": meta(href, "state")}));
        }
        if let Some(description) = text(fields, "description") {
            body.insert("description".into(), Value::String(description));
        }
        if let Some(code) = text(fields, "external_code") {
            body.insert("externalCode".into(), Value::String(code));
        }
        if let Some(attributes) = fields.get("attributes").filter(|v| !v.is_null()) {
            let Some(map) = attributes.as_object() else {
                return Err(ActionError::field(
                    "fields.attributes",
                    "must be an object of attribute name → value",
                ));
            };
            let mut list = Vec::new();
            for (name, value) in map {
                let (href, kind) = metadata.attributes.get(name).ok_or_else(|| {
                    ActionError::field(
                        format!("fields.attributes.{name}"),
                        format!(
                            "no order attribute '{name}' in this account (known: {})",
                            metadata
                                .attributes
                                .keys()
                                .cloned()
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                })?;
                let value = match (kind.as_str(), value) {
                    (_, Value::Null) => Value::Null,
                    ("long", v) => v
                        .as_str()
                        .and_then(|s| s.parse::<i64>().ok())
                        .map(Value::from)
                        .unwrap_or(v.clone()),
                    ("double", v) => v
                        .as_str()
                        .and_then(|s| s.parse::<f64>().ok())
                        .map(Value::from)
                        .unwrap_or(v.clone()),
                    ("string" | "text" | "link", Value::String(s)) => Value::String(s.clone()),
                    ("string" | "text" | "link", other) => Value::String(other.to_string()),
                    (_, v) => v.clone(),
                };
                list.push(json!({"meta": meta(href, "attributemetadata"), "value": value}));
            }
            body.insert("attributes".into(), Value::Array(list));
        }
        Ok(body)
    }

    async fn fetch_order(&self, ctx: &CallContext<'_>, href: &str) -> Result<Value, ActionError> {
        let base = self.base(ctx)?;
        if !href.starts_with(&format!("{base}/entity/customerorder/")) {
            return Err(ActionError::Config(format!(
                "the webhook points at {href}, which is not an order of this connection's account"
            )));
        }
        let separator = if href.contains('?') { '&' } else { '?' };
        self.call(
            ctx,
            VendorRequest::get(format!("{href}{separator}expand=state")),
        )
        .await
    }
}

fn meta(href: &str, kind: &str) -> Value {
    json!({"href": href, "type": kind, "mediaType": "application/json"})
}

fn last_segment(href: &str) -> String {
    href.split('?')
        .next()
        .unwrap_or_default()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn kopecks_to_roubles(value: &Value) -> Value {
    value
        .as_f64()
        .map(|k| json!((k / 100.0 * 100.0).round() / 100.0))
        .unwrap_or(Value::Null)
}

/// The catalog's view of an order, from MoySklad's JSON.
fn normalise_order(order: &Value) -> Value {
    let mut attributes = Map::new();
    for attribute in order["attributes"].as_array().into_iter().flatten() {
        if let Some(name) = attribute["name"].as_str() {
            let value = match &attribute["value"] {
                Value::Object(obj) => obj
                    .get("name")
                    .cloned()
                    .unwrap_or(Value::Object(obj.clone())),
                other => other.clone(),
            };
            attributes.insert(name.to_owned(), value);
        }
    }
    let mut data = json!({
        "id": order["id"],
        "name": order["name"],
        "sum": kopecks_to_roubles(&order["sum"]),
        "payed_sum": kopecks_to_roubles(&order["payedSum"]),
        "shipped_sum": kopecks_to_roubles(&order["shippedSum"]),
        "description": order["description"],
        "agent_id": order["agent"]["meta"]["href"].as_str().map(last_segment),
        "external_code": order["externalCode"],
        "updated": order["updated"],
        "attributes": attributes,
        "href": order["meta"]["href"],
    });
    if let Some(state) = order["state"]["name"].as_str() {
        data["state"] = state.into();
        data["state_type"] = order["state"]["stateType"].clone();
    }
    data
}

/// A property's value as text, the way both our writes and MoySklad's
/// order (normalised) are compared for echoes: absent is empty.
fn property_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The properties of a normalised order that a write can set: `state`
/// (its name), `description` and `attributes.<name>`.
fn order_properties(order: &Value) -> Vec<(String, String)> {
    let mut out = vec![
        ("state".to_owned(), property_text(&order["state"])),
        ("description".to_owned(), property_text(&order["description"])),
    ];
    for (name, value) in order["attributes"].as_object().into_iter().flatten() {
        out.push((format!("attributes.{name}"), property_text(value)));
    }
    out
}

/// An order's version: its `updated`, to the millisecond.
fn version_of(order: &Value) -> Option<String> {
    order["updated"].as_str().map(str::to_owned)
}

/// What an order create set, read from the order MoySklad answered with
/// (so it is written down exactly as a later event will show it).
fn order_written(fields: &Map<String, Value>, output: &ActionOutput) -> Option<Written> {
    let named = |property: &str| match property.strip_prefix("attributes.") {
        Some(attribute) => fields
            .get("attributes")
            .and_then(Value::as_object)
            .is_some_and(|a| a.contains_key(attribute)),
        None => fields.get(property).is_some_and(|v| !v.is_null()),
    };
    Some(Written {
        entity: "customerorder".into(),
        id: output.id.clone(),
        created: true,
        properties: order_properties(&output.record)
            .into_iter()
            .filter(|(property, _)| named(property))
            .collect(),
        version: version_of(&output.record),
    })
}

fn parse_msk(text: &str) -> Option<DateTime<Utc>> {
    let trimmed = text.trim();
    [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|format| NaiveDateTime::parse_from_str(trimmed, format).ok())
    .and_then(|naive| moscow().from_local_datetime(&naive).single())
    .map(|t| t.with_timezone(&Utc))
}

fn format_msk(at: DateTime<Utc>) -> String {
    at.with_timezone(&moscow())
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// A UUID derived from the idempotency key: the same step always sends the
/// same syncId.
fn sync_id(key: &str) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("crmbridge:{key}").as_bytes(),
    )
    .to_string()
}

impl VendorSettings for MoySklad {
    fn required_credentials(&self) -> &'static [&'static str] {
        &["token"]
    }

    fn validate_settings(
        &self,
        settings: &Value,
        allow_any_base_url: bool,
    ) -> Result<(), Vec<SettingsError>> {
        validate_known_settings(
            settings,
            SETTINGS,
            Some(DEFAULT_BASE_URL),
            DOMAINS,
            allow_any_base_url,
        )
    }
}

impl WebhookSource for MoySklad {
    fn ack_status(&self) -> u16 {
        200
    }

    fn decode_webhook(
        &self,
        _connection: ConnectionView<'_>,
        request: &InboundRequest<'_>,
    ) -> Result<Vec<DecodedEvent>, DecodeError> {
        let body: Value = serde_json::from_slice(request.body)
            .map_err(|err| DecodeError::new("body", format!("not valid JSON: {err}")))?;
        let events = body["events"]
            .as_array()
            .filter(|e| !e.is_empty())
            .ok_or_else(|| {
                DecodeError::new(
                    "body.events",
                    "a MoySklad webhook carries a non-empty events list",
                )
            })?;
        // MoySklad retries a delivery with the same requestId: it is the
        // de-duplication key.
        let request_id = request
            .query
            .iter()
            .find(|(k, _)| k == "requestId")
            .map(|(_, v)| v.clone());
        let batch = events.len() > 1;
        events
            .iter()
            .enumerate()
            .map(|(i, event)| {
                let source_id = request_id.as_ref().map(|r| format!("{r}:{i}"));
                // An event crmbridge does not take (an action it does not
                // handle, such as PROCESSED for asynchronous tasks, or one
                // it cannot read within a batch) is recorded, and the
                // others go on: a refused delivery is retried three times
                // and then dropped by MoySklad, valid events included.
                let ignored = |reason: String| DecodedEvent {
                    source_id: source_id.clone(),
                    kind: IGNORED.into(),
                    subject: Subject { kind: "delivery".into(), id: String::new() },
                    occurred_at: None,
                    observation: None,
                    data: json!({"index": i, "reason": reason, "event": event}),
                };
                let (href, entity) = match (event["meta"]["href"].as_str(), event["meta"]["type"].as_str()) {
                    (Some(href), Some(entity)) => (href, entity),
                    (href, _) => {
                        let field = if href.is_none() { "meta.href" } else { "meta.type" };
                        if batch {
                            return Ok(ignored(format!("body.events[{i}].{field}: missing")));
                        }
                        return Err(DecodeError::new(format!("body.events[{i}].{field}"), "missing"));
                    }
                };
                let what = match event["action"].as_str() {
                    Some("CREATE") => "created",
                    Some("UPDATE") => "updated",
                    Some("DELETE") => "deleted",
                    other => {
                        return Ok(ignored(format!(
                            "body.events[{i}].action: {} is not one crmbridge handles (CREATE, UPDATE, DELETE)",
                            other.unwrap_or("nothing")
                        )));
                    }
                };
                let id = last_segment(href);
                Ok(DecodedEvent {
                    source_id,
                    kind: format!("moysklad.{entity}.{what}"),
                    subject: Subject { kind: entity.to_owned(), id: id.clone() },
                    occurred_at: body["auditContext"]["moment"].as_str().and_then(parse_msk),
                    observation: None,
                    data: json!({
                        "id": id,
                        "href": href,
                        "action": event["action"],
                        "updated_fields": event.get("updatedFields").cloned().unwrap_or(Value::Array(vec![])),
                    }),
                })
            })
            .collect()
    }
}

/// The kind of a webhook event crmbridge records but does not handle.
const IGNORED: &str = "moysklad.event.ignored";

#[async_trait]
impl EventSource for MoySklad {
    fn event_kinds(&self) -> Vec<EventKindSpec> {
        let mut kinds: Vec<EventKindSpec> = ["created", "updated", "deleted"]
            .into_iter()
            .map(|what| {
                EventKindSpec::new(format!("moysklad.customerorder.{what}"), order_fields())
            })
            .collect();
        kinds.push(EventKindSpec::new(
            IGNORED,
            vec![
                FieldSpec::new("index", FieldType::Integer).describe("its place in the delivery"),
                FieldSpec::new("reason", FieldType::String).describe("why it is not handled"),
                FieldSpec::new("event", FieldType::Object).describe("the event as sent"),
            ],
        ));
        kinds
    }

    async fn enrich(&self, ctx: &CallContext<'_>, event: &mut Event) -> Result<(), ActionError> {
        let is_order = event.kind == "moysklad.customerorder.created"
            || event.kind == "moysklad.customerorder.updated";
        // Polled events arrive complete; webhook events only point.
        if !is_order || event.data.get("updated").is_some_and(|u| !u.is_null()) {
            return Ok(());
        }
        let href = event.data["href"].as_str().unwrap_or_default().to_owned();
        let order = self.fetch_order(ctx, &href).await?;
        let mut data = normalise_order(&order);
        data["action"] = event.data["action"].clone();
        data["updated_fields"] = event.data["updated_fields"].clone();
        event.data = data;
        Ok(())
    }

    /// A webhook with `diffType=FIELDS` names what changed, read from the
    /// order fetched afterwards; a poll (or a webhook without the list)
    /// shows the whole order.
    fn reported_change(&self, event: &Event) -> Option<ReportedChange> {
        let version = version_of(&event.data);
        if event.kind == "moysklad.customerorder.created" {
            return Some(ReportedChange {
                created: true,
                version,
                ..ReportedChange::default()
            });
        }
        if event.kind != "moysklad.customerorder.updated" || event.data["id"].is_null() {
            return None;
        }
        let all = order_properties(&event.data);
        let Some(fields) = event.data["updated_fields"]
            .as_array()
            .filter(|f| !f.is_empty())
        else {
            return Some(ReportedChange {
                created: false,
                properties: all,
                reading: Reading::Snapshot,
                version,
            });
        };
        let mut properties = Vec::new();
        for field in fields.iter().filter_map(Value::as_str) {
            let attribute = format!("attributes.{field}");
            let matching: Vec<(String, String)> = all
                .iter()
                .filter(|(name, _)| {
                    name == field
                        || *name == attribute
                        || (field == "attributes" && name.starts_with("attributes."))
                })
                .cloned()
                .collect();
            if matching.is_empty() {
                // A field crmbridge never writes (positions, sum, …).
                properties.push((field.to_owned(), property_text(&event.data[field])));
            }
            properties.extend(matching);
        }
        Some(ReportedChange {
            created: false,
            properties,
            reading: Reading::Current,
            version,
        })
    }

    /// Webhooks (keyed by requestId) and polls (keyed by id@updated) report
    /// one order change under two ids; after enrichment both carry the
    /// order's `updated`, which names the change.
    fn change_key(&self, event: &Event) -> Option<String> {
        if !event.kind.starts_with("moysklad.customerorder.") || event.kind.ends_with(".deleted") {
            return None;
        }
        let id = event.data["id"].as_str()?;
        let updated = event.data["updated"].as_str()?;
        Some(format!("{id}@{updated}"))
    }
}

#[async_trait]
impl Poller for MoySklad {
    fn polls(&self, kind: &str) -> bool {
        // Webhooks may be lost (MoySklad gives up after 1.5 s); deletions
        // cannot be polled.
        kind.starts_with("moysklad.customerorder.") && kind != "moysklad.customerorder.deleted"
    }

    async fn poll(
        &self,
        ctx: &CallContext<'_>,
        kind: &str,
        _scope: &Value,
        cursor: Option<&Value>,
        now: DateTime<Utc>,
    ) -> Result<PollBatch, ActionError> {
        if kind != "moysklad.customerorder.updated" && kind != "moysklad.customerorder.created" {
            return Err(ActionError::Config(format!("moysklad does not poll {kind}")));
        }
        let Some(since) = cursor
            .and_then(|c| c["updated"].as_str())
            .and_then(parse_msk)
        else {
            // First poll: start from now; history is not replayed. The
            // cursor has the shape an idle poll returns, so that poll finds
            // it unchanged and writes nothing.
            return Ok(PollBatch {
                events: vec![],
                cursor: json!({"updated": format_msk(now), "seen": []}),
            });
        };
        let base = self.base(ctx)?;
        let from = format_msk(since - chrono::Duration::seconds(POLL_OVERLAP_SECS));
        // Versions the last polls already reported within the overlap: the
        // window is read again on purpose (a late commit at MoySklad), but
        // what it read before is not reported twice (it would only be
        // de-duplicated, at a write per event, on every poll).
        let seen: std::collections::HashSet<&str> = cursor
            .and_then(|c| c["seen"].as_array())
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let mut window: Vec<(DateTime<Utc>, String)> = Vec::new();
        let mut events = Vec::new();
        let mut newest = since;
        for page in 0..POLL_MAX_PAGES {
            let url = url_with_query(
                &format!("{base}/entity/customerorder"),
                &[
                    ("filter", format!("updated>={from}")),
                    ("order", "updated,asc".to_owned()),
                    ("expand", "state".to_owned()),
                    ("limit", POLL_PAGE.to_string()),
                    ("offset", (page * POLL_PAGE).to_string()),
                ],
            )?;
            let body = self.call(ctx, VendorRequest::get(url)).await?;
            let rows = body["rows"].as_array().cloned().unwrap_or_default();
            for order in &rows {
                let data = normalise_order(order);
                let updated = data["updated"].as_str().unwrap_or_default().to_owned();
                let id = data["id"].as_str().unwrap_or_default().to_owned();
                // A garbage far-future time would park the cursor there.
                if let Some(at) = parse_msk(&updated).filter(|at| not_ahead(*at, now)) {
                    newest = newest.max(at);
                }
                let created = order["created"].as_str() == Some(updated.as_str());
                let what = if created { "created" } else { "updated" };
                // A poll for `updated` reports changes, not creations (and
                // one for `created` only creations), as webhooks would.
                if format!("moysklad.customerorder.{what}") != kind {
                    continue;
                }
                // One event per (order, version): overlapping polls and
                // redeliveries collapse into it.
                let source_id = format!("{id}@{updated}");
                if let Some(at) = parse_msk(&updated) {
                    window.push((at, source_id.clone()));
                }
                if seen.contains(seen_mark(&source_id).as_str()) {
                    continue;
                }
                events.push(DecodedEvent {
                    source_id: Some(source_id),
                    kind: kind.to_owned(),
                    subject: Subject {
                        kind: "customerorder".into(),
                        id,
                    },
                    occurred_at: parse_msk(&updated),
                    data,
                    observation: None,
                });
            }
            if rows.len() < POLL_PAGE {
                break;
            }
        }
        let overlap_from = newest - chrono::Duration::seconds(POLL_OVERLAP_SECS);
        let mut seen_now: Vec<String> = window
            .into_iter()
            .filter(|(at, _)| *at >= overlap_from)
            .map(|(_, id)| seen_mark(&id))
            .collect();
        // Bounded: past the bound, the oldest are reported again and
        // de-duplicated by their ids, as before.
        let excess = seen_now.len().saturating_sub(POLL_MAX_SEEN);
        seen_now.drain(..excess);
        Ok(PollBatch {
            events,
            cursor: json!({"updated": format_msk(newest), "seen": seen_now}),
        })
    }
}

#[async_trait]
impl Account for MoySklad {
    /// One cheap authenticated read: the account's first legal entity
    /// (every account has one; an order needs it).
    async fn check(&self, ctx: &CallContext<'_>) -> Result<Value, ActionError> {
        let base = self.base(ctx)?;
        let url = url_with_query(
            &format!("{base}/entity/organization"),
            &[("limit", "1".to_owned())],
        )?;
        let body = self.call(ctx, VendorRequest::get(url)).await?;
        let first = &body["rows"][0];
        Ok(json!({
            "organizations": body["meta"]["size"],
            "organization": {"id": first["id"], "name": first["name"]},
        }))
    }
}

/// MoySklad: customer orders by webhook and poll, counterparties and orders
/// created, orders updated.
pub fn vendor() -> Vendor {
    let moysklad = Arc::new(MoySklad::default());
    Vendor::new("moysklad", moysklad.clone())
        .webhooks(moysklad.clone())
        .events(moysklad.clone())
        .poller(moysklad.clone())
        .account(moysklad.clone())
        .action(Arc::new(CreateCounterparty(moysklad.clone())))
        .action(Arc::new(CreateOrder(moysklad.clone())))
        .action(Arc::new(UpdateOrder(moysklad)))
}

impl MoySklad {
    /// Sends a request that answers with a record and shapes the output.
    /// Adds the lines past the first 1,000 to an order, 1,000 a call. An
    /// order that already has some of them (a step sent again after a lost
    /// answer) gets only the missing tail: lines are kept in order.
    async fn add_positions(
        &self,
        ctx: &CallContext<'_>,
        base: &str,
        order: &str,
        positions: &[Value],
    ) -> Result<(), ActionError> {
        let url = url_with_query(
            &format!("{base}/entity/customerorder/{order}/positions"),
            &[("limit", "1".to_owned())],
        )?;
        let held = self.call(ctx, VendorRequest::get(url)).await?["meta"]["size"]
            .as_u64()
            .unwrap_or(0) as usize;
        for chunk in positions[held.min(positions.len())..].chunks(MAX_POSITIONS) {
            let request = VendorRequest::with_body(
                reqwest::Method::POST,
                format!("{base}/entity/customerorder/{order}/positions"),
                Value::Array(chunk.to_vec()).to_string().into_bytes(),
                Idempotency::NotIdempotent,
            );
            self.call(ctx, request).await?;
        }
        Ok(())
    }

    async fn send_record(
        &self,
        ctx: &CallContext<'_>,
        request: VendorRequest,
        normalise: fn(&Value) -> Value,
    ) -> Result<ActionOutput, ActionError> {
        let record = self.call(ctx, request).await?;
        let id = record["id"]
            .as_str()
            .ok_or_else(|| VendorError::Decode {
                status: 200,
                message: "the created record has no id".into(),
            })?
            .to_owned();
        Ok(ActionOutput {
            id,
            record: normalise(&record),
            response_status: 200,
            attempts: 1,
        })
    }
}

/// Rows per search page, and the most pages one look-up reads.
const SEARCH_PAGE: usize = 100;
const SEARCH_PAGES: usize = 10;

/// Whether a searched row really matches the wanted key.
type RowCheck = Box<dyn Fn(&Value) -> bool + Send>;

impl MoySklad {
    /// Finds an existing record by a create step's dedupe keys.
    async fn find_counterparty(
        &self,
        ctx: &CallContext<'_>,
        keys: &[LookupKey],
    ) -> Result<Option<String>, ActionError> {
        let base = self.base(ctx)?;
        for key in keys {
            let wanted = match &key.value {
                Value::String(s) => s.clone(),
                Value::Null => continue,
                other => other.to_string(),
            };
            let (query, check): (Vec<(&str, String)>, RowCheck) =
                match key.field.as_str() {
                    "phone" => {
                        let d = digits(&wanted);
                        if d.len() < 5 {
                            continue;
                        }
                        let tail = d[d.len().saturating_sub(10)..].to_owned();
                        let wanted = wanted.clone();
                        (
                            vec![("search", tail)],
                            Box::new(move |row: &Value| {
                                row["phone"]
                                    .as_str()
                                    .is_some_and(|p| same_phone(p, &wanted))
                            }),
                        )
                    }
                    "email" => {
                        let lower = wanted.trim().to_lowercase();
                        (
                            // `~` is MoySklad's case-insensitive substring
                            // match: addresses differ in case in the wild.
                            vec![("filter", format!("email~{lower}"))],
                            Box::new(move |row: &Value| {
                                row["email"]
                                    .as_str()
                                    .is_some_and(|e| e.trim().to_lowercase() == lower)
                            }),
                        )
                    }
                    "name" | "external_code" | "inn" => {
                        let api_field = if key.field == "external_code" {
                            "externalCode"
                        } else {
                            key.field.as_str()
                        };
                        let field_name = api_field.to_owned();
                        let exact = wanted.clone();
                        (
                            vec![("filter", format!("{api_field}={wanted}"))],
                            Box::new(move |row: &Value| {
                                row[field_name.as_str()].as_str() == Some(exact.as_str())
                            }),
                        )
                    }
                    other => {
                        return Err(ActionError::field(
                            format!("dedupe.by.{other}"),
                            "MoySklad counterparties can be found by phone, email, name, external_code or inn",
                        ));
                    }
                };
            // Answers are paged (`meta.size`, `limit`, `offset`): a
            // substring search over a busy account can put the match past
            // the first page, so every page is read, up to a bound.
            let mut matches: Vec<Value> = Vec::new();
            for page in 0..SEARCH_PAGES {
                let mut pairs = vec![
                    ("limit", SEARCH_PAGE.to_string()),
                    ("offset", (page * SEARCH_PAGE).to_string()),
                ];
                pairs.extend(query.iter().map(|(k, v)| (*k, v.to_string())));
                let url = url_with_query(&format!("{base}/entity/counterparty"), &pairs)?;
                let body = self.call(ctx, VendorRequest::get(url)).await?;
                let rows = body["rows"].as_array().cloned().unwrap_or_default();
                let read = rows.len();
                matches.extend(rows.into_iter().filter(|row| check(row)));
                let size = body["meta"]["size"].as_u64().unwrap_or(0) as usize;
                if read < SEARCH_PAGE || (page + 1) * SEARCH_PAGE >= size {
                    break;
                }
                if page + 1 == SEARCH_PAGES {
                    tracing::warn!(
                        field = %key.field,
                        size,
                        "more counterparties match the search than crmbridge reads; the oldest match among the first ones is used"
                    );
                }
            }
            // The oldest match wins, so repeated searches agree.
            matches.sort_by(|a, b| a["created"].as_str().cmp(&b["created"].as_str()));
            if let Some(id) = matches.first().and_then(|row| row["id"].as_str()) {
                return Ok(Some(id.to_owned()));
            }
        }
        Ok(None)
    }
}

/// `moysklad.counterparty.create`.
struct CreateCounterparty(Arc<MoySklad>);

#[async_trait]
impl Action for CreateCounterparty {
    fn spec(&self) -> ActionSpec {
        ActionSpec::new(
            "moysklad.counterparty.create",
            ActionKind::Create,
            vec![
                FieldSpec::required("name", FieldType::String)
                    .describe("counterparty name"),
                field(
                    "phone",
                    FieldType::Phone,
                    "phone (free text in MoySklad; send E.164)",
                ),
                field("email", FieldType::Email, "email"),
                field(
                    "company_type",
                    FieldType::Enum(vec![
                        "legal".into(),
                        "entrepreneur".into(),
                        "individual".into(),
                    ]),
                    "legal form",
                ),
                field("description", FieldType::String, "comment"),
                field("tags", FieldType::Array, "tags"),
                field("external_code", FieldType::String, "external code"),
            ],
        )
        .with_output(vec![
            field("id", FieldType::String, "counterparty id"),
            field("name", FieldType::String, "name"),
            field("phone", FieldType::String, "phone"),
            field("email", FieldType::String, "email"),
        ])
    }

    fn written(&self, fields: &Map<String, Value>, output: &ActionOutput) -> Option<Written> {
        order_written(fields, output)
    }

    /// The syncId is derived from the step's key: MoySklad answers a
    /// repeated create with the entity the first one made.
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
        let base = vendor.base(ctx)?;
        let (request, normalise): (VendorRequest, fn(&Value) -> Value) = {
            only_known(
                fields,
                &[
                    "name",
                    "phone",
                    "email",
                    "company_type",
                    "description",
                    "tags",
                    "external_code",
                ],
            )?;
            let mut body = json!({"name": required_text(fields, "name")?, "syncId": sync_id(ctx.idempotency_key)});
            for (ours, theirs) in [
                ("phone", "phone"),
                ("email", "email"),
                ("company_type", "companyType"),
                ("description", "description"),
                ("external_code", "externalCode"),
            ] {
                if let Some(value) = text(fields, ours) {
                    body[theirs] = Value::String(value);
                }
            }
            match fields.get("tags") {
                Some(Value::Array(tags)) => body["tags"] = Value::Array(tags.clone()),
                Some(Value::String(tags)) if !tags.is_empty() => {
                    body["tags"] = tags
                        .split(['|', ','])
                        .map(|t| Value::String(t.trim().to_owned()))
                        .collect();
                }
                _ => {}
            }
            let request = VendorRequest::with_body(
                reqwest::Method::POST,
                format!("{base}/entity/counterparty"),
                body.to_string().into_bytes(),
                Idempotency::Idempotent,
            );
            (
                request,
                |v| json!({"id": v["id"], "name": v["name"], "phone": v["phone"], "email": v["email"]}),
            )
        };
        vendor.send_record(ctx, request, normalise).await
    }

    fn lookup(&self) -> Option<&dyn Lookup> {
        Some(self)
    }
}

#[async_trait]
impl Lookup for CreateCounterparty {
    async fn find(
        &self,
        ctx: &CallContext<'_>,
        keys: &[LookupKey],
    ) -> Result<Option<String>, ActionError> {
        self.0.find_counterparty(ctx, keys).await
    }
}

/// `moysklad.customerorder.create`.
struct CreateOrder(Arc<MoySklad>);

#[async_trait]
impl Action for CreateOrder {
    fn spec(&self) -> ActionSpec {
        ActionSpec::new(
            "moysklad.customerorder.create",
            ActionKind::Create,
            vec![
                FieldSpec::required("agent", FieldType::String).describe("counterparty id"),
                field(
                    "organization",
                    FieldType::String,
                    "your legal entity's name or id (default: the first)",
                ),
                field("state", FieldType::String, "status name"),
                field("description", FieldType::String, "comment"),
                field("external_code", FieldType::String, "external code"),
                field("attributes", FieldType::Object, "custom attributes by name"),
                field(
                    "positions",
                    FieldType::Array,
                    "lines: {product | service | variant: id, quantity (default 1), price (kopecks: `money('to_minor')`), vat (integer %), discount (%)}; more than 1,000 are added 1,000 at a time after the create",
                ),
            ],
        )
        .with_output(order_fields())
    }

    /// The syncId is derived from the step's key: MoySklad answers a
    /// repeated create with the entity the first one made.
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
        let base = vendor.base(ctx)?;
        let positions = order_positions(&base, fields)?;
        let (request, normalise): (VendorRequest, fn(&Value) -> Value) = {
            only_known(
                fields,
                &[
                    "agent",
                    "organization",
                    "state",
                    "description",
                    "external_code",
                    "attributes",
                    "positions",
                ],
            )?;
            let agent = required_text(fields, "agent")?;
            let metadata = vendor.order_metadata(ctx, &base).await?;
            let organization = vendor
                .organization_href(
                    ctx,
                    &base,
                    text(fields, "organization")
                        .or_else(|| ctx.settings["organization"].as_str().map(str::to_owned))
                        .as_deref(),
                )
                .await?;
            let mut body = vendor.order_body(fields, &metadata)?;
            body.insert("agent".into(), json!({"meta": meta(&format!("{base}/entity/counterparty/{agent}"), "counterparty")}));
            body.insert(
                "organization".into(),
                json!({"meta": meta(&organization, "organization")}),
            );
            body.insert("syncId".into(), Value::String(sync_id(ctx.idempotency_key)));
            if !positions.is_empty() {
                let first: Vec<Value> = positions.iter().take(MAX_POSITIONS).cloned().collect();
                body.insert("positions".into(), Value::Array(first));
            }
            let request = VendorRequest::with_body(
                reqwest::Method::POST,
                format!("{base}/entity/customerorder"),
                Value::Object(body).to_string().into_bytes(),
                Idempotency::Idempotent,
            );
            (request, normalise_order)
        };
        let mut output = vendor.send_record(ctx, request, normalise).await?;
        if positions.len() > MAX_POSITIONS {
            vendor.add_positions(ctx, &base, &output.id, &positions).await?;
            // The answer to the create knew only the first 1,000.
            let url = format!("{base}/entity/customerorder/{}", output.id);
            output.record = normalise_order(&vendor.call(ctx, VendorRequest::get(url)).await?);
        }
        Ok(output)
    }
}

/// Lines one request may carry (MoySklad refuses more).
const MAX_POSITIONS: usize = 1000;

/// Order lines from a step's `positions`: MoySklad's shape, each checked
/// (errors name `fields.positions[i].…`).
fn order_positions(base: &str, fields: &Map<String, Value>) -> Result<Vec<Value>, ActionError> {
    let list = match fields.get("positions") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(ActionError::field("fields.positions", "must be a list of lines")),
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, line) in list.iter().enumerate() {
        let at = |name: &str| format!("fields.positions[{i}].{name}");
        let Some(line) = line.as_object() else {
            return Err(ActionError::field(format!("fields.positions[{i}]"), "must be an object"));
        };
        only_known(line, &["product", "service", "variant", "quantity", "price", "vat", "discount"])
            .map_err(|err| match err {
                ActionError::Field { field, message } => ActionError::field(
                    format!("fields.positions[{i}].{}", field.trim_start_matches("fields.")),
                    message,
                ),
                other => other,
            })?;
        let referenced: Vec<(&str, String)> = ["product", "service", "variant"]
            .into_iter()
            .filter_map(|kind| text(line, kind).map(|id| (kind, id)))
            .collect();
        let [(kind, id)] = referenced.as_slice() else {
            return Err(ActionError::field(
                format!("fields.positions[{i}]"),
                "exactly one of product, service or variant (an id)",
            ));
        };
        let number = |name: &str| -> Result<Option<f64>, ActionError> {
            match line.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) => Ok(n.as_f64()),
                Some(Value::String(s)) if !s.trim().is_empty() => s
                    .trim()
                    .parse::<f64>()
                    .map(Some)
                    .map_err(|_| ActionError::field(at(name), "a number")),
                Some(_) => Err(ActionError::field(at(name), "a number")),
            }
        };
        let quantity = number("quantity")?.unwrap_or(1.0);
        if quantity <= 0.0 {
            return Err(ActionError::field(at("quantity"), "more than 0"));
        }
        let mut position = json!({
            "quantity": quantity,
            "assortment": {"meta": meta(&format!("{base}/entity/{kind}/{id}"), kind)},
        });
        if let Some(price) = number("price")? {
            if price < 0.0 || price.fract() != 0.0 {
                return Err(ActionError::field(
                    at("price"),
                    "whole kopecks (roubles × 100: use `money('to_minor')`)",
                ));
            }
            position["price"] = json!(price as u64);
        }
        if let Some(vat) = number("vat")? {
            if !(0.0..=100.0).contains(&vat) || vat.fract() != 0.0 {
                return Err(ActionError::field(at("vat"), "a whole percent, 0 to 100"));
            }
            position["vat"] = json!(vat as u64);
        }
        if let Some(discount) = number("discount")? {
            if !(0.0..=100.0).contains(&discount) {
                return Err(ActionError::field(at("discount"), "a percent, 0 to 100"));
            }
            position["discount"] = json!(discount);
        }
        out.push(position);
    }
    Ok(out)
}

/// `moysklad.customerorder.update`.
struct UpdateOrder(Arc<MoySklad>);

#[async_trait]
impl Action for UpdateOrder {
    fn spec(&self) -> ActionSpec {
        ActionSpec::new(
            "moysklad.customerorder.update",
            ActionKind::Update,
            vec![
                field("state", FieldType::String, "status name"),
                field("description", FieldType::String, "comment"),
                field("attributes", FieldType::Object, "custom attributes by name"),
            ],
        )
        .with_output(order_fields())
    }

    /// PUT sets status, comment and attributes to the given values.
    fn resend(&self, _fields: &Map<String, Value>) -> Resend {
        Resend::Repeatable
    }

    /// MoySklad may announce the change before its answer to the PUT is
    /// read: remembered from the fields, as events will show them.
    fn will_write(&self, fields: &Map<String, Value>, target: &str) -> Option<Written> {
        let mut properties = Vec::new();
        for name in ["state", "description"] {
            if let Some(value) = fields.get(name).filter(|v| !v.is_null()) {
                properties.push((name.to_owned(), property_text(value)));
            }
        }
        for (name, value) in fields
            .get("attributes")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            properties.push((format!("attributes.{name}"), property_text(value)));
        }
        Some(Written {
            entity: "customerorder".into(),
            id: target.to_owned(),
            created: false,
            properties,
            version: None,
        })
    }

    /// The version the PUT made, from MoySklad's answer.
    fn written(&self, _fields: &Map<String, Value>, output: &ActionOutput) -> Option<Written> {
        Some(Written {
            entity: "customerorder".into(),
            id: output.id.clone(),
            version: version_of(&output.record),
            ..Written::default()
        })
    }

    async fn execute(
        &self,
        ctx: &CallContext<'_>,
        fields: &Map<String, Value>,
        target: Option<&str>,
    ) -> Result<ActionOutput, ActionError> {
        let vendor = &self.0;
        let base = vendor.base(ctx)?;
        let (request, normalise): (VendorRequest, fn(&Value) -> Value) = {
            only_known(fields, &["state", "description", "attributes"])?;
            let target = target.ok_or_else(|| {
                ActionError::field("target", "an update needs the order's id")
            })?;
            let metadata = vendor.order_metadata(ctx, &base).await?;
            let body = vendor.order_body(fields, &metadata)?;
            let request = VendorRequest::with_body(
                reqwest::Method::PUT,
                format!("{base}/entity/customerorder/{target}"),
                Value::Object(body).to_string().into_bytes(),
                Idempotency::Idempotent,
            );
            (request, normalise_order)
        };
        vendor.send_record(ctx, request, normalise).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn moscow_time_round_trips() {
        let at = parse_msk("2026-05-08 15:00:00.123").unwrap();
        assert_eq!(at.to_rfc3339(), "2026-05-08T12:00:00.123+00:00");
        assert_eq!(format_msk(at), "2026-05-08 15:00:00");
        assert!(parse_msk("08.05.2026").is_none());
    }

    #[test]
    fn resend_safety_is_declared_per_action() {
        use crmbridge_mapping::Catalog as _;
        let catalog = vendor().catalog();
        let fields = json!({"name": "ACME", "state": "Новый"});
        let fields = fields.as_object().unwrap();
        for (action, want) in [
            ("moysklad.counterparty.create", Resend::Keyed),
            ("moysklad.customerorder.create", Resend::Keyed),
            ("moysklad.customerorder.update", Resend::Repeatable),
        ] {
            assert!(catalog.action(action).is_some(), "{action}");
            assert_eq!(vendor().find_action(action).unwrap().resend(fields), want, "{action}");
        }
        assert!(vendor().find_action("moysklad.customerorder.delete").is_none());
    }

    #[test]
    fn sync_ids_are_stable_uuids() {
        assert_eq!(sync_id("run_1/order"), sync_id("run_1/order"));
        assert_ne!(sync_id("run_1/order"), sync_id("run_2/order"));
        assert_eq!(sync_id("x").len(), 36);
    }

    #[test]
    fn webhooks_decode_into_pointing_events() {
        let body = br#"{"auditContext":{"moment":"2026-05-08 15:51:16"},"events":[{"meta":{"type":"customerorder","href":"https://api.moysklad.ru/api/remap/1.2/entity/customerorder/abc"},"action":"UPDATE","updatedFields":["state"]}]}"#;
        let query = vec![("requestId".to_owned(), "req-1".to_owned())];
        let events = MoySklad::default()
            .decode_webhook(
                ConnectionView {
                    id: "c",
                    settings: &json!({}),
                    signing_secret: None,
                },
                &InboundRequest {
                    method: "POST",
                    query: &query,
                    content_type: Some("application/json"),
                    body,
                    headers: &[],
                    url: None,
                },
            )
            .unwrap();
        assert_eq!(events[0].kind, "moysklad.customerorder.updated");
        assert_eq!(events[0].source_id.as_deref(), Some("req-1:0"));
        assert_eq!(events[0].subject.id, "abc");
        let bad = MoySklad::default()
            .decode_webhook(
                ConnectionView {
                    id: "c",
                    settings: &json!({}),
                    signing_secret: None,
                },
                &InboundRequest {
                    method: "POST",
                    query: &[],
                    content_type: None,
                    body: br#"{"events":[]}"#,
                    headers: &[],
                    url: None,
                },
            )
            .unwrap_err();
        assert_eq!(bad.field, "body.events");
    }

    #[test]
    fn a_batch_keeps_its_events_when_some_are_not_handled() {
        let decode = |body: &[u8]| {
            MoySklad::default().decode_webhook(
                ConnectionView {
                    id: "c",
                    settings: &json!({}),
                    signing_secret: None,
                },
                &InboundRequest {
                    method: "POST",
                    query: &[("requestId".to_owned(), "req-9".to_owned())],
                    content_type: Some("application/json"),
                    body,
                    headers: &[],
                    url: None,
                },
            )
        };
        let order = |id: &str, action: &str| {
            json!({"meta": {"type": "customerorder", "href": format!("https://api.moysklad.ru/api/remap/1.2/entity/customerorder/{id}")}, "action": action})
        };
        let body = json!({"events": [order("a", "CREATE"), order("b", "PROCESSED"), {"action": "UPDATE"}, order("c", "UPDATE")]});
        let events = decode(body.to_string().as_bytes()).unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "moysklad.customerorder.created",
                "moysklad.event.ignored",
                "moysklad.event.ignored",
                "moysklad.customerorder.updated"
            ]
        );
        assert!(events[1].data["reason"].as_str().unwrap().contains("PROCESSED"));
        assert_eq!(events[2].data["reason"], "body.events[2].meta.href: missing");
        assert_eq!(events[1].source_id.as_deref(), Some("req-9:1"));
        // An action crmbridge does not handle, alone: recorded, not refused.
        let single = decode(json!({"events": [order("d", "PROCESSED")]}).to_string().as_bytes()).unwrap();
        assert_eq!(single[0].kind, "moysklad.event.ignored");
        // A single event that cannot be read is still refused.
        let bad = decode(br#"{"events":[{"action":"UPDATE"}]}"#).unwrap_err();
        assert_eq!(bad.field, "body.events[0].meta.href");
    }

    #[test]
    fn orders_normalise_money_to_roubles() {
        let order = json!({"id": "o1", "name": "00042", "sum": 150050.0, "payedSum": 0.0, "state": {"name": "Новый", "stateType": "Regular"},
            "agent": {"meta": {"href": "https://x/entity/counterparty/cp1"}}, "attributes": [{"name": "utm_source", "value": "yandex"}]});
        let data = normalise_order(&order);
        assert_eq!(data["sum"], json!(1500.5));
        assert_eq!(data["state"], "Новый");
        assert_eq!(data["agent_id"], "cp1");
        assert_eq!(data["attributes"]["utm_source"], "yandex");
    }

    fn order_event(kind: &str, updated_fields: Value) -> Event {
        let mut data = normalise_order(&json!({"id": "o1", "updated": "2026-05-08 15:00:00.123",
            "state": {"name": "s1"}, "description": "hi", "sum": 100.0,
            "attributes": [{"name": "utm_source", "value": "yandex"}]}));
        data["updated_fields"] = updated_fields;
        Event {
            id: crmbridge_mapping::EventId::from_source("c1", "o1"),
            tenant: "t1".into(),
            connection: "c1".into(),
            app: "moysklad".into(),
            kind: kind.into(),
            subject: Subject { kind: "customerorder".into(), id: "o1".into() },
            occurred_at: Utc::now(),
            received_at: Utc::now(),
            data,
        }
    }

    #[test]
    fn reported_changes_name_the_fields_the_version_and_how_they_were_read() {
        let ms = MoySklad::default();
        let listed = ms
            .reported_change(&order_event("moysklad.customerorder.updated", json!(["state", "sum", "utm_source"])))
            .unwrap();
        assert_eq!(listed.reading, Reading::Current);
        assert_eq!(listed.version.as_deref(), Some("2026-05-08 15:00:00.123"));
        assert_eq!(
            listed.properties,
            vec![
                ("state".to_owned(), "s1".to_owned()),
                ("sum".to_owned(), "1.0".to_owned()),
                ("attributes.utm_source".to_owned(), "yandex".to_owned()),
            ]
        );
        let polled = ms
            .reported_change(&order_event("moysklad.customerorder.updated", Value::Null))
            .unwrap();
        assert_eq!(polled.reading, Reading::Snapshot);
        assert_eq!(polled.properties.len(), 3, "{polled:?}");
        let created = ms
            .reported_change(&order_event("moysklad.customerorder.created", Value::Null))
            .unwrap();
        assert!(created.created && created.version.is_some());
        assert!(ms.reported_change(&order_event("moysklad.customerorder.deleted", Value::Null)).is_none());
    }

    #[test]
    fn an_order_update_says_before_the_call_what_it_will_set() {
        let update = UpdateOrder(Arc::new(MoySklad::default()));
        let fields = json!({"state": "s2", "attributes": {"utm_source": 5}});
        let intended = update.will_write(fields.as_object().unwrap(), "o1").unwrap();
        assert_eq!(intended.entity, "customerorder");
        assert_eq!(intended.id, "o1");
        assert_eq!(
            intended.properties,
            vec![
                ("state".to_owned(), "s2".to_owned()),
                ("attributes.utm_source".to_owned(), "5".to_owned()),
            ]
        );
        let output = ActionOutput {
            id: "o1".into(),
            record: json!({"updated": "2026-05-08 15:00:01.000"}),
            response_status: 200,
            attempts: 1,
        };
        let answered = update.written(fields.as_object().unwrap(), &output).unwrap();
        assert_eq!(answered.version.as_deref(), Some("2026-05-08 15:00:01.000"));
    }
}
