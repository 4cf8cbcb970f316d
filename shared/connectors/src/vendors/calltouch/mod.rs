//! Calltouch: call and request webhooks in, deals (API 2.0, lead-service)
//! out. Facts, with how sure we are of each and the public source:
//! `vendors/calltouch/API.md`.
//!
//! - Calltouch signs nothing: the connection's secret token in the webhook
//!   URL is the authentication (checked by the engine).
//! - Webhooks come as GET (query) or POST (form), URL-encoded, with the
//!   parameters the user ticked. Their names are only partly documented
//!   (uncertain), so the decoder accepts the known aliases (`callerphone`,
//!   `callerNumber`, …), normalises them to snake_case fields, and keeps
//!   every parameter as sent under `params`.
//! - The UI's "test" send delivers unfilled placeholders like
//!   `{callerphone}`: answered 2xx with nothing accepted (Calltouch counts
//!   anything else as a broken webhook), and logged.
//! - A parameter Calltouch had no value for comes as a placeholder
//!   (`<не указано>`, `(not set)`, `(none)`…): it is absent, so templates
//!   and filters see no value. Repeated parameters keep every value; yes/no
//!   parameters (`unique`, `targetCall`, …) are booleans.
//! - A delivery with `requestId`, `requestNumber` or `subject` is a request
//!   (form lead); anything else is a call.
//! - Deals: `POST lead-service/v1/api/client-order/create|update` with
//!   `Access-Token` and `SiteId` headers. `orderNumber` is our key for a
//!   deal. Dates are `dd-mm-yyyy HH:MM:SS` (from integrators' code;
//!   uncertain). Money is a decimal string.
//! - Deal create sends the comment as `comment` (the deal's own, as in
//!   integrators' code); update sends `addNewComment`, which appends one
//!   each time it is sent.
//! - What create does with an existing `orderNumber` is not documented
//!   (uncertain): refused per order (HTTP 200 with an `error` — "Сделка с
//!   номером '…' уже существует" in the fake, the real wording unknown), or
//!   answered with the existing deal. A per-order refusal, whatever its
//!   wording, is checked against the deal itself: an update of that
//!   orderNumber (fields overwritten, no comment) that succeeds resolves the
//!   step to the existing deal; one that finds no deal leaves the create's
//!   refusal standing.
//! - `check` reads one record of today's calls journal,
//!   `GET calls-service/RestAPI/{site_id}/calls-diary/calls?clientApiId=…`
//!   (documented; the journal authenticates by the token in the query). That
//!   it is the same token as the deals API's `Access-Token` ("API key" of
//!   the cabinet) is what the fake and integrators assume (uncertain). A
//!   wrong token (401) or a site the token cannot see (403) is an auth
//!   failure, never transient; the token never appears in the error.
//! - 5 requests per second (stated for phone-service, applied to all).
//!
//! Sending a step again after an attempt with an unknown outcome
//! ([`Connector::resend`]):
//!
//! | action                  | resend                                  | why |
//! |-------------------------|-----------------------------------------|-----|
//! | `calltouch.deal.create` | `Keyed`                                 | `orderNumber` is the deal's key: a repeat is refused as a duplicate and resolved to the existing deal, comment not re-added |
//! | `calltouch.deal.update` | `Repeatable`, `Unsafe` with `comment`   | status, sum, names and links are overwritten; `addNewComment` appends a second comment |
#![doc = include_str!("API.md")]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use crmbridge_mapping::{
    ActionKind, ActionSpec, EventKindSpec, FieldSpec, FieldType, Subject,
};
use serde_json::{Map, Value, json};

use crate::client::{Idempotency, VendorError, VendorPolicy, VendorRequest, redact};
use crate::support::{
    base_url, credential, field, only_known, params_of, required_text, text, url_with_query,
    validate_known_settings, with_timeout,
};
use crate::{
    Account, Action, ActionError, ActionOutput, CallContext, ConnectionView, DecodeError,
    DecodedEvent, EventSource, InboundRequest, Resend, SettingsError, Vendor, VendorSettings,
    WebhookSource,
};

pub const DEFAULT_BASE_URL: &str = "https://api.calltouch.ru";
const DOMAINS: &[&str] = &["api.calltouch.ru"];
const SETTINGS: &[&str] = &["site_id", "crm_name"];

pub fn policy() -> VendorPolicy {
    VendorPolicy::new("calltouch", 5, Duration::from_secs(1), 2)
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Calltouch;

/// Known parameter spellings → our field name.
const ALIASES: &[(&str, &[&str])] = &[
    ("call_id", &["callId", "callid", "call_id"]),
    (
        "caller_phone",
        &["callerphone", "callerNumber", "caller_phone", "callerPhone"],
    ),
    (
        "phone_number",
        &["phonenumber", "phoneNumber", "phone_number"],
    ),
    ("call_time", &["calltime", "callTime", "call_time", "date"]),
    ("duration", &["duration"]),
    ("status", &["status", "successful"]),
    ("source", &["source"]),
    ("medium", &["medium"]),
    ("utm_source", &["utm_source", "utmSource"]),
    ("utm_medium", &["utm_medium", "utmMedium"]),
    ("utm_campaign", &["utm_campaign", "utmCampaign"]),
    ("utm_content", &["utm_content", "utmContent"]),
    ("utm_term", &["utm_term", "utmTerm"]),
    ("keyword", &["keyword"]),
    ("city", &["city"]),
    ("url", &["url", "callUrl", "requestUrl"]),
    (
        "ct_client_id",
        &["ctClientId", "ct_client_id", "ctCallerId"],
    ),
    (
        "ga_client_id",
        &[
            "clientId",
            "gaClientId",
            "ga_client_id",
            "google_client_id",
            "guaClientId",
        ],
    ),
    ("ya_client_id", &["yaClientId", "ya_client_id"]),
    ("session_id", &["sessionId", "session_id"]),
    ("site_id", &["siteId", "site_id"]),
    ("tags", &["tags", "callTags", "call_tags", "requestTags"]),
    ("request_id", &["requestId", "request_id"]),
    ("request_number", &["requestNumber", "request_number"]),
    ("subject", &["subject"]),
    ("phone", &["phone", "phoneNumberRequest"]),
    ("email", &["email"]),
    ("name", &["fio", "name"]),
    ("comment", &["comment"]),
];

fn common_fields() -> Vec<FieldSpec> {
    vec![
        field("source", FieldType::String, "traffic source"),
        field("medium", FieldType::String, "traffic medium"),
        field("utm_source", FieldType::String, "utm_source"),
        field("utm_medium", FieldType::String, "utm_medium"),
        field("utm_campaign", FieldType::String, "utm_campaign"),
        field("utm_content", FieldType::String, "utm_content"),
        field("utm_term", FieldType::String, "utm_term"),
        field("keyword", FieldType::String, "keyword"),
        field("city", FieldType::String, "city"),
        field("url", FieldType::String, "page"),
        field("ct_client_id", FieldType::String, "Calltouch client id"),
        field(
            "ga_client_id",
            FieldType::String,
            "Google Analytics client id",
        ),
        field(
            "ya_client_id",
            FieldType::String,
            "Yandex Metrica client id",
        ),
        field("session_id", FieldType::String, "Calltouch session"),
        field("site_id", FieldType::String, "Calltouch site id"),
        field("tags", FieldType::Array, "tags"),
        field("params", FieldType::Object, "every parameter as sent"),
    ]
}

fn call_fields() -> Vec<FieldSpec> {
    let mut fields = vec![
        FieldSpec::new("call_id", FieldType::String).describe("Calltouch call id"),
        FieldSpec::new("caller_phone", FieldType::Phone).describe("the caller's number"),
        FieldSpec::new("phone_number", FieldType::Phone).describe("the tracked number dialled"),
        FieldSpec::new("call_time", FieldType::String).describe("when the call happened, as sent"),
        FieldSpec::new("duration", FieldType::String).describe("seconds"),
        FieldSpec::new("status", FieldType::String).describe("e.g. successful"),
        FieldSpec::new("unique", FieldType::Boolean).describe("the caller's first call"),
        FieldSpec::new("unique_target", FieldType::Boolean).describe("the first call that met a goal"),
        FieldSpec::new("target_call", FieldType::Boolean).describe("the call met a goal"),
        FieldSpec::new("callback_call", FieldType::Boolean).describe("a callback ordered on the site"),
    ];
    fields.extend(common_fields());
    fields
}

fn request_fields() -> Vec<FieldSpec> {
    let mut fields = vec![
        FieldSpec::new("request_id", FieldType::String).describe("Calltouch request id"),
        FieldSpec::new("request_number", FieldType::String).describe("the site's request number"),
        FieldSpec::new("subject", FieldType::String).describe("form name"),
        FieldSpec::new("phone", FieldType::Phone).describe("phone from the form"),
        FieldSpec::new("email", FieldType::Email).describe("email from the form"),
        FieldSpec::new("name", FieldType::String).describe("name from the form"),
        FieldSpec::new("comment", FieldType::String).describe("comment from the form"),
    ];
    fields.extend(common_fields());
    fields
}

const UPDATE_FIELDS: &[&str] = &[
    "status",
    "funnel",
    "revenue",
    "order_name",
    "manager",
    "order_link",
    "status_date",
    "comment",
];
const CREATE_FIELDS: &[&str] = &[
    "order_number",
    "status",
    "funnel",
    "revenue",
    "order_name",
    "manager",
    "order_link",
    "status_date",
    "comment",
    "call_id",
    "request_id",
    "phone",
    "email",
    "fio",
    "order_date",
];

fn deal_fields(create: bool) -> Vec<FieldSpec> {
    let money = FieldSpec::new("revenue", FieldType::Money).describe("deal amount in roubles");
    let mut fields = vec![
        FieldSpec::new("status", FieldType::String)
            .describe("status name in your funnel, e.g. Новая сделка"),
        FieldSpec::new("funnel", FieldType::String).describe("funnel name"),
        money,
        FieldSpec::new("order_name", FieldType::String).describe("deal title"),
        FieldSpec::new("manager", FieldType::String).describe("responsible manager"),
        FieldSpec::new("order_link", FieldType::String).describe("link to the deal in the CRM"),
        FieldSpec::new("status_date", FieldType::DateTime)
            .describe("when the status changed (default: now)"),
        FieldSpec::new("comment", FieldType::String).describe("a comment to add"),
    ];
    if create {
        fields.insert(
            0,
            FieldSpec::required("order_number", FieldType::String).describe("our key for the deal"),
        );
        fields.extend([
            FieldSpec::new("call_id", FieldType::String).describe("match the deal to this call"),
            FieldSpec::new("request_id", FieldType::String)
                .describe("match the deal to this request"),
            FieldSpec::new("phone", FieldType::Phone)
                .describe("contact phone (also used to match)"),
            FieldSpec::new("email", FieldType::Email).describe("contact email"),
            FieldSpec::new("fio", FieldType::String).describe("contact name"),
            FieldSpec::new("order_date", FieldType::DateTime).describe("deal date (default: now)"),
        ]);
    }
    fields
}

fn looks_unfilled(value: &str) -> bool {
    let trimmed = value.trim();
    trimmed.starts_with('{') && trimmed.ends_with('}') && !trimmed.contains('"')
}

/// What Calltouch (and the analytics sources behind it) write where they
/// have no value, inside `<…>` or `(…)`, compared without case.
const NO_VALUE: &[&str] = &["не указано", "не задано", "не определено", "none", "not set", "not provided", "undefined"];

/// `<не указано>`, `(not set)` and the like: a parameter with no value.
fn is_no_value(value: &str) -> bool {
    let trimmed = value.trim();
    let inner = trimmed
        .strip_prefix('<')
        .and_then(|v| v.strip_suffix('>'))
        .or_else(|| trimmed.strip_prefix('(').and_then(|v| v.strip_suffix(')')));
    inner.is_some_and(|inner| {
        let inner = inner.trim().to_lowercase();
        NO_VALUE.iter().any(|word| *word == inner)
    })
}

/// Yes/no parameters: our field name and Calltouch's spellings.
const FLAGS: &[(&str, &[&str])] = &[
    ("unique", &["unique", "uniq"]),
    ("unique_target", &["uniqTarget", "uniqueTarget", "unique_target"]),
    ("target_call", &["targetCall", "target", "target_call"]),
    ("callback_call", &["callbackCall", "callback", "callback_call"]),
];

/// A yes/no parameter as a boolean (`true`/`false`, `1`/`0`, `yes`/`no`,
/// `да`/`нет`); anything else is kept as text.
fn flag_value(value: &str) -> Value {
    match value.trim().to_lowercase().as_str() {
        "true" | "1" | "yes" | "y" | "да" => Value::Bool(true),
        "false" | "0" | "no" | "n" | "нет" => Value::Bool(false),
        _ => Value::String(value.to_owned()),
    }
}

/// `dd-mm-yyyy HH:MM:SS`, the lead-service format (uncertain; see module docs).
fn lead_service_date(value: Option<String>, now: DateTime<Utc>) -> Result<String, ActionError> {
    let at = match value {
        None => now,
        Some(text) => DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .or_else(|_| {
                NaiveDateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S").map(|n| n.and_utc())
            })
            .or_else(|_| {
                NaiveDateTime::parse_from_str(&text, "%d-%m-%Y %H:%M:%S").map(|n| n.and_utc())
            })
            .map_err(|_| {
                ActionError::field("fields.status_date", format!("'{text}' is not a date-time"))
            })?,
    };
    // Calltouch accounts work in Moscow time.
    let msk = at + chrono::Duration::hours(3);
    Ok(msk.format("%d-%m-%Y %H:%M:%S").to_string())
}

fn money(fields: &Map<String, Value>) -> Result<Option<String>, ActionError> {
    match fields.get("revenue") {
        None | Some(Value::Null) => Ok(None),
        // `+ 0.0` turns a negative zero into "0.00", not "-0.00".
        Some(Value::Number(n)) => Ok(n.as_f64().map(|f| format!("{:.2}", f + 0.0))),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .trim()
            .replace(',', ".")
            .parse::<f64>()
            .map(|f| Some(format!("{f:.2}")))
            .map_err(|_| ActionError::field("fields.revenue", format!("'{s}' is not an amount"))),
        Some(other) => Err(ActionError::field(
            "fields.revenue",
            format!("expected an amount, got {other}"),
        )),
    }
}

fn site_id(settings: &Value) -> Result<String, ActionError> {
    settings["site_id"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| settings["site_id"].as_i64().map(|n| n.to_string()))
        .ok_or_else(|| ActionError::Config("settings.site_id is required".into()))
}

fn base(ctx: &CallContext<'_>) -> Result<String, ActionError> {
    base_url(
        ctx.settings,
        DEFAULT_BASE_URL,
        DOMAINS,
        ctx.allow_any_base_url,
    )
}

/// Whether an update's `comment` is set: it is sent as `addNewComment`,
/// which appends a comment every time it is sent.
fn adds_comment(fields: &Map<String, Value>) -> bool {
    text(fields, "comment").is_some()
}

impl Calltouch {
    async fn call(
        &self,
        ctx: &CallContext<'_>,
        path: &str,
        body: &Value,
        idempotency: Idempotency,
    ) -> Result<(Value, u16, u32), ActionError> {
        let token = credential(ctx.credentials, "access_token")?;
        let site_id = site_id(ctx.settings)?;
        let request = VendorRequest::with_body(
            reqwest::Method::POST,
            format!("{}/lead-service/v1/api/client-order/{path}", base(ctx)?),
            body.to_string().into_bytes(),
            idempotency,
        )
        .header("access-token", token)
        .header("siteid", site_id)
        .header("content-type", "application/json");
        let response = ctx
            .http
            .send(
                ctx.connection,
                &with_timeout(policy(), ctx.settings),
                &request,
                &[token],
            )
            .await?;
        let json = response.json().unwrap_or(Value::Null);
        let order_error = json["data"]["orders"][0]["error"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| {
                json["data"]["validationErrorData"]
                    .as_str()
                    .map(str::to_owned)
            })
            .or_else(|| json["error"].as_str().map(str::to_owned))
            .or_else(|| json["message"].as_str().map(str::to_owned));
        if !response.is_success()
            || (order_error.is_some() && json["data"]["orders"][0]["calltouchOrderId"].is_null())
        {
            let message = order_error.unwrap_or_else(|| truncate(&response.text()));
            return Err(VendorError::Rejected {
                vendor: "calltouch",
                status: response.status,
                message: redact(&auth_message(response.status, message), &[token]),
            }
            .into());
        }
        Ok((json, response.status, response.attempts))
    }

    /// Creates a deal; when Calltouch refuses it because a deal with that
    /// orderNumber exists (an earlier attempt of this step made it, or
    /// another step did), brings that deal up to date instead and answers
    /// with it.
    async fn create_deal(
        &self,
        ctx: &CallContext<'_>,
        crm: &str,
        fields: &Map<String, Value>,
        now: DateTime<Utc>,
    ) -> Result<ActionOutput, ActionError> {
        let order = self.order(fields, true, now)?;
        let number = order["orderNumber"].as_str().unwrap_or_default().to_owned();
        // orderNumber is the deal's key: a repeated create cannot make a
        // second deal (it is refused, and resolved below), so the HTTP
        // stack may repeat it after a timeout.
        let result = self
            .call(
                ctx,
                "create",
                &json!({"crm": crm, "orders": [order]}),
                Idempotency::Idempotent,
            )
            .await;
        let (body, status, attempts) = match result {
            // A per-order refusal (HTTP 200): its wording is not documented,
            // so any of them is checked against the deal itself.
            Err(ActionError::Vendor(VendorError::Rejected {
                status, message, ..
            })) if (200..300).contains(&status) => {
                // Overwrites only: the comment (appended by an update) is
                // left out, or a repeated create would add it again.
                let mut overwrite = fields.clone();
                overwrite.remove("comment");
                let update = self.order(&overwrite, false, now)?;
                match self
                    .call(
                        ctx,
                        "update",
                        &json!({"crm": crm, "orders": [update]}),
                        Idempotency::Idempotent,
                    )
                    .await
                {
                    Ok(answer) => answer,
                    // No such deal either: the create's refusal stands.
                    Err(ActionError::Vendor(VendorError::Rejected {
                        status: update_status,
                        ..
                    })) if (200..300).contains(&update_status) && !is_duplicate_deal(&message) => {
                        return Err(VendorError::Rejected {
                            vendor: "calltouch",
                            status,
                            message,
                        }
                        .into());
                    }
                    Err(err) => return Err(err),
                }
            }
            other => other?,
        };
        Ok(ActionOutput {
            id: number.clone(),
            record: json!({"id": number, "calltouch_order_id": body["data"]["orders"][0]["calltouchOrderId"]}),
            response_status: status,
            attempts,
        })
    }

    fn order(
        &self,
        fields: &Map<String, Value>,
        create: bool,
        now: DateTime<Utc>,
    ) -> Result<Value, ActionError> {
        let mut order = json!({"orderNumber": required_text(fields, "order_number")?});
        for (ours, theirs) in [
            ("status", "status"),
            ("funnel", "funnel"),
            ("order_name", "orderName"),
            ("manager", "manager"),
            ("order_link", "orderLink"),
        ] {
            if let Some(value) = text(fields, ours) {
                order[theirs] = Value::String(value);
            }
        }
        if let Some(revenue) = money(fields)? {
            order["revenue"] = Value::String(revenue);
            order["currency"] = "rub".into();
        }
        if order.get("status").is_some() {
            order["statusDate"] = lead_service_date(text(fields, "status_date"), now)?.into();
        }
        if create {
            order["orderDate"] = lead_service_date(text(fields, "order_date"), now)?.into();
            let matching = if let Some(call_id) = text(fields, "call_id") {
                let id = call_id
                    .parse::<i64>()
                    .map(Value::from)
                    .unwrap_or(Value::String(call_id));
                json!([{"type": "call", "callParams": {"callId": id}}])
            } else if let Some(request_id) = text(fields, "request_id") {
                let id = request_id
                    .parse::<i64>()
                    .map(Value::from)
                    .unwrap_or(Value::String(request_id));
                json!([{"type": "request", "requestParams": {"requestId": id}}])
            } else if let Some(phone) = text(fields, "phone") {
                json!([{"type": "callContact", "callContactParams": {"phones": [phone]}}])
            } else {
                json!([{"type": "withoutSource"}])
            };
            order["matching"] = matching;
            let mut contacts = Map::new();
            for (ours, theirs) in [("fio", "fio"), ("phone", "phoneNumber"), ("email", "email")] {
                if let Some(value) = text(fields, ours) {
                    contacts.insert(theirs.into(), Value::String(value));
                }
            }
            if !contacts.is_empty() {
                order["orderContacts"] = json!({"mainContacts": contacts});
            }
        }
        if let Some(comment) = text(fields, "comment") {
            // Create takes the deal's comment; update appends one.
            let key = if create { "comment" } else { "addNewComment" };
            order[key] = json!({"text": comment});
        }
        Ok(order)
    }
}

/// Calltouch's refusals of the token (401) or of the site for this token
/// (403) say so plainly: they are auth failures, not a bad request.
fn auth_message(status: u16, message: String) -> String {
    match status {
        401 => format!("the access token is not accepted: {message}"),
        403 => format!("the access token has no access to settings.site_id: {message}"),
        _ => message,
    }
}

/// Whether Calltouch refused a create because the orderNumber exists
/// ("Сделка с номером '…' уже существует"; the wording is not documented).
fn is_duplicate_deal(message: &str) -> bool {
    let lower = message.to_lowercase();
    ["exist", "duplicate", "существует", "дубл"]
        .iter()
        .any(|w| lower.contains(w))
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn truncate(text: &str) -> String {
    text.chars().take(300).collect()
}

impl VendorSettings for Calltouch {
    fn required_credentials(&self) -> &'static [&'static str] {
        &["access_token"]
    }

    fn validate_settings(
        &self,
        settings: &Value,
        allow_any_base_url: bool,
    ) -> Result<(), Vec<SettingsError>> {
        let mut errors = validate_known_settings(
            settings,
            SETTINGS,
            Some(DEFAULT_BASE_URL),
            DOMAINS,
            allow_any_base_url,
        )
        .err()
        .unwrap_or_default();
        if settings.get("site_id").is_none_or(Value::is_null) {
            errors.push(SettingsError {
                field: "site_id".into(),
                message: "required: the Calltouch site (cabinet) id".into(),
            });
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

impl WebhookSource for Calltouch {
    fn decode_webhook(
        &self,
        connection: ConnectionView<'_>,
        request: &InboundRequest<'_>,
    ) -> Result<Vec<DecodedEvent>, DecodeError> {
        let params = params_of(request)?;
        if params.is_empty() {
            return Err(DecodeError::new(
                "query",
                "a Calltouch webhook carries its fields as parameters; none were sent",
            ));
        }
        // Calltouch's "test" button sends the template with its
        // placeholders unfilled and counts anything but a 2xx as a broken
        // webhook: answered 2xx, nothing accepted.
        if let Some((name, value)) = params.iter().find(|(_, v)| looks_unfilled(v)) {
            tracing::info!(
                connection = connection.id,
                parameter = %name,
                value = %value,
                "Calltouch's test send (unfilled placeholders): answered 2xx, nothing accepted"
            );
            return Ok(Vec::new());
        }
        // A parameter Calltouch had no value for is absent, not data.
        let params: Vec<(String, String)> = params
            .into_iter()
            .filter(|(_, v)| !is_no_value(v))
            .collect();
        let get = |ours: &str| -> Option<String> {
            let aliases = ALIASES
                .iter()
                .find(|(name, _)| *name == ours)
                .map(|(_, a)| *a)
                .unwrap_or(&[]);
            aliases.iter().find_map(|alias| {
                params
                    .iter()
                    .find(|(k, v)| k == alias && !v.is_empty())
                    .map(|(_, v)| v.clone())
            })
        };
        let mut data = Map::new();
        for (ours, aliases) in ALIASES {
            if *ours == "tags" {
                // Every occurrence counts (`tags=a&tags=b,c`), each split.
                let tags: Vec<Value> = params
                    .iter()
                    .filter(|(k, _)| aliases.contains(&k.as_str()))
                    .flat_map(|(_, v)| v.split([',', '|']))
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(|t| Value::String(t.to_owned()))
                    .collect();
                if !tags.is_empty() {
                    data.insert("tags".into(), Value::Array(tags));
                }
            } else if let Some(value) = get(ours) {
                data.insert((*ours).to_owned(), Value::String(value));
            }
        }
        for (ours, aliases) in FLAGS {
            if let Some((_, value)) = params
                .iter()
                .find(|(k, v)| aliases.contains(&k.as_str()) && !v.is_empty())
            {
                data.insert((*ours).to_owned(), flag_value(value));
            }
        }
        // Every parameter as sent; a repeated one keeps all its values (a
        // list), in order.
        let mut all = Map::new();
        for (k, v) in &params {
            match all.get_mut(k) {
                None => {
                    all.insert(k.clone(), Value::String(v.clone()));
                }
                Some(Value::Array(list)) => list.push(Value::String(v.clone())),
                Some(first) => {
                    let earlier = first.take();
                    *first = Value::Array(vec![earlier, Value::String(v.clone())]);
                }
            }
        }
        data.insert("params".into(), Value::Object(all));
        let is_request = ["request_id", "request_number", "subject"]
            .iter()
            .any(|f| data.contains_key(*f));
        let (kind, subject_kind, id_field) = if is_request {
            ("calltouch.request.created", "request", "request_id")
        } else {
            ("calltouch.call.completed", "call", "call_id")
        };
        if !is_request && !data.contains_key("caller_phone") && !data.contains_key("call_id") {
            return Err(DecodeError::new(
                "params.callerphone",
                "a call webhook needs callerphone or callId",
            ));
        }
        let source_id = data
            .get(id_field)
            .or_else(|| data.get("request_number"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(vec![DecodedEvent {
            source_id: source_id.clone(),
            kind: kind.to_owned(),
            subject: Subject {
                kind: subject_kind.to_owned(),
                id: source_id.unwrap_or_default(),
            },
            occurred_at: None,
            observation: None,
            data: Value::Object(data),
        }])
    }
}

#[async_trait]
impl EventSource for Calltouch {
    fn event_kinds(&self) -> Vec<EventKindSpec> {
        vec![
            EventKindSpec::new("calltouch.call.completed", call_fields()),
            EventKindSpec::new("calltouch.request.created", request_fields()),
        ]
    }
}

#[async_trait]
impl Account for Calltouch {
    /// One page of one record of today's calls journal: the cheapest read
    /// there is, authenticated by the same token and bound to the site.
    async fn check(&self, ctx: &CallContext<'_>) -> Result<Value, ActionError> {
        let token = credential(ctx.credentials, "access_token")?;
        let site = site_id(ctx.settings)?;
        // The journal's days are Moscow days (dd/mm/yyyy).
        let today = (Utc::now() + chrono::Duration::hours(3))
            .format("%d/%m/%Y")
            .to_string();
        let url = url_with_query(
            &format!(
                "{}/calls-service/RestAPI/{}/calls-diary/calls",
                base(ctx)?,
                urlencode(&site)
            ),
            &[
                ("clientApiId", token.to_owned()),
                ("dateFrom", today.clone()),
                ("dateTo", today),
                ("page", "1".to_owned()),
                ("limit", "1".to_owned()),
            ],
        )?;
        // The token rides in the query string (the journal API's only
        // scheme): it is a secret of the call, redacted from every error.
        let response = ctx
            .http
            .send(
                ctx.connection,
                &with_timeout(policy(), ctx.settings),
                &VendorRequest::get(url),
                &[token],
            )
            .await?;
        let body = response.json().unwrap_or(Value::Null);
        if !response.is_success() {
            let message = body["error"]
                .as_str()
                .or_else(|| body["message"].as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| truncate(&response.text()));
            return Err(VendorError::Rejected {
                vendor: "calltouch",
                status: response.status,
                message: redact(&auth_message(response.status, message), &[token]),
            }
            .into());
        }
        Ok(json!({
            "site_id": site,
            "calls_today": body["recordsTotal"],
        }))
    }
}

/// Calltouch: call and request webhooks in, deals out.
pub fn vendor() -> Vendor {
    let calltouch = Arc::new(Calltouch);
    Vendor::new("calltouch", calltouch.clone())
        .webhooks(calltouch.clone())
        .events(calltouch.clone())
        .account(calltouch)
        .action(Arc::new(CreateDeal))
        .action(Arc::new(UpdateDeal))
}

fn crm_name<'a>(ctx: &CallContext<'a>) -> &'a str {
    ctx.settings["crm_name"].as_str().unwrap_or("crmbridge")
}

/// `calltouch.deal.create`.
struct CreateDeal;

#[async_trait]
impl Action for CreateDeal {
    fn spec(&self) -> ActionSpec {
        ActionSpec::new("calltouch.deal.create", ActionKind::Create, deal_fields(true)).with_output(
            vec![
                FieldSpec::new("id", FieldType::String),
                FieldSpec::new("calltouch_order_id", FieldType::String),
            ],
        )
    }

    /// orderNumber is the deal's key: a repeated create is refused and
    /// resolved to the existing deal (fields overwritten, the comment not
    /// added again).
    fn resend(&self, _fields: &Map<String, Value>) -> Resend {
        Resend::Keyed
    }

    async fn execute(
        &self,
        ctx: &CallContext<'_>,
        fields: &Map<String, Value>,
        _target: Option<&str>,
    ) -> Result<ActionOutput, ActionError> {
        only_known(fields, CREATE_FIELDS)?;
        Calltouch
            .create_deal(ctx, crm_name(ctx), fields, Utc::now())
            .await
    }
}

/// `calltouch.deal.update`.
struct UpdateDeal;

#[async_trait]
impl Action for UpdateDeal {
    fn spec(&self) -> ActionSpec {
        ActionSpec::new("calltouch.deal.update", ActionKind::Update, deal_fields(false))
            .with_output(vec![FieldSpec::new("id", FieldType::String)])
    }

    /// Overwrites status, sum, names and links — but a comment is appended
    /// on every send.
    fn resend(&self, fields: &Map<String, Value>) -> Resend {
        if adds_comment(fields) {
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
        only_known(fields, UPDATE_FIELDS)?;
        let number = target
            .ok_or_else(|| ActionError::field("target", "an update needs the deal's order number"))?;
        let mut with_number = fields.clone();
        with_number.insert("order_number".into(), Value::String(number.to_owned()));
        let order = Calltouch.order(&with_number, false, Utc::now())?;
        let idempotency = match self.resend(fields) {
            Resend::Unsafe => Idempotency::NotIdempotent,
            _ => Idempotency::Idempotent,
        };
        let (_, status, attempts) = Calltouch
            .call(
                ctx,
                "update",
                &json!({"crm": crm_name(ctx), "orders": [order]}),
                idempotency,
            )
            .await?;
        Ok(ActionOutput {
            id: number.to_owned(),
            record: json!({"id": number}),
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
    fn the_field_lists_match_the_catalog() {
        let names = |create| {
            deal_fields(create)
                .into_iter()
                .map(|f| f.name)
                .collect::<Vec<_>>()
        };
        let mut create = names(true);
        create.sort();
        let mut listed: Vec<String> = CREATE_FIELDS.iter().map(|s| (*s).to_owned()).collect();
        listed.sort();
        assert_eq!(create, listed);
        let mut update = names(false);
        update.sort();
        let mut listed: Vec<String> = UPDATE_FIELDS.iter().map(|s| (*s).to_owned()).collect();
        listed.sort();
        assert_eq!(update, listed);
    }

    #[test]
    fn resend_safety_is_declared_per_action() {
        use crmbridge_mapping::Catalog as _;
        let catalog = vendor().catalog();
        let cases = [
            (
                "calltouch.deal.create",
                json!({"order_number": "1", "status": "PENDING"}),
                Resend::Keyed,
            ),
            (
                "calltouch.deal.create",
                json!({"order_number": "1", "comment": "call 5"}),
                Resend::Keyed,
            ),
            (
                "calltouch.deal.update",
                json!({"status": "PAID", "revenue": 10}),
                Resend::Repeatable,
            ),
            (
                "calltouch.deal.update",
                json!({"status": "PAID", "comment": ""}),
                Resend::Repeatable,
            ),
            (
                "calltouch.deal.update",
                json!({"status": "PAID", "comment": "paid"}),
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
        assert!(vendor().find_action("calltouch.deal.delete").is_none());
    }

    #[tokio::test]
    async fn a_create_refused_for_a_deal_that_does_not_exist_stays_refused() {
        use axum::routing::post;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route(
                "/lead-service/v1/api/client-order/create",
                post(|| async {
                    axum::Json(json!({"data": {"orders": [
                        {"orderNumber": "C-3", "error": "Звонок 555 не найден"}]}}))
                }),
            )
            .route(
                "/lead-service/v1/api/client-order/update",
                post(|| async {
                    axum::Json(json!({"data": {"orders": [
                        {"orderNumber": "C-3", "error": "Сделка с номером 'C-3' не найдена"}]}}))
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let settings = json!({"base_url": format!("http://{addr}"), "site_id": "1"});
        let credentials = std::collections::BTreeMap::from([(
            "access_token".to_owned(),
            "ct-secret-1".to_owned(),
        )]);
        let http = crate::VendorClient::new();
        let ctx = CallContext {
            connection: "c",
            settings: &settings,
            credentials: &credentials,
            http: &http,
            idempotency_key: "run/1/deal",
            allow_any_base_url: true,
            tokens: None,
        };
        let fields = json!({"order_number": "C-3", "call_id": "555"});
        let err = CreateDeal
            .execute(&ctx, fields.as_object().unwrap(), None)
            .await
            .unwrap_err();
        match err {
            ActionError::Vendor(VendorError::Rejected {
                status, message, ..
            }) => {
                assert_eq!(status, 200);
                assert_eq!(message, "Звонок 555 не найден");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn comments_are_the_deals_own_on_create_and_appended_on_update() {
        let now = Utc::now();
        let fields = json!({"order_number": "7", "comment": "first call"});
        let fields = fields.as_object().unwrap();
        let created = Calltouch.order(fields, true, now).unwrap();
        assert_eq!(created["comment"], json!({"text": "first call"}));
        assert!(created.get("addNewComment").is_none());
        let updated = Calltouch.order(fields, false, now).unwrap();
        assert_eq!(updated["addNewComment"], json!({"text": "first call"}));
        assert!(updated.get("comment").is_none());
    }

    fn decode(query: &[(&str, &str)]) -> Result<Vec<DecodedEvent>, DecodeError> {
        let query: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Calltouch.decode_webhook(
            ConnectionView {
                id: "c",
                settings: &json!({}),
                signing_secret: None,
            },
            &InboundRequest {
                method: "GET",
                query: &query,
                content_type: None,
                body: b"",
                headers: &[],
                url: None,
            },
        )
    }

    #[test]
    fn a_call_webhook_is_normalised() {
        let events = decode(&[
            ("callerphone", "79161234567"),
            ("callId", "555"),
            ("utm_source", "yandex"),
            ("tags", "a,b"),
        ])
        .unwrap();
        let event = &events[0];
        assert_eq!(event.kind, "calltouch.call.completed");
        assert_eq!(event.source_id.as_deref(), Some("555"));
        assert_eq!(event.data["caller_phone"], "79161234567");
        assert_eq!(event.data["tags"], json!(["a", "b"]));
        assert_eq!(event.data["params"]["callId"], "555");
    }

    #[test]
    fn a_request_webhook_is_recognised() {
        let events = decode(&[
            ("requestId", "77"),
            ("phoneNumber", "+7 916 123-45-67"),
            ("email", "a@b.ru"),
            ("subject", "Форма"),
        ])
        .unwrap();
        assert_eq!(events[0].kind, "calltouch.request.created");
        assert_eq!(events[0].subject.kind, "request");
        assert_eq!(events[0].data["email"], "a@b.ru");
    }

    #[test]
    fn the_test_send_is_answered_and_accepts_nothing() {
        let events = decode(&[("callerphone", "{callerphone}"), ("callId", "{callId}")]).unwrap();
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(decode(&[]).unwrap_err().field, "query");
        assert_eq!(
            decode(&[("utm_source", "x")]).unwrap_err().field,
            "params.callerphone"
        );
    }

    #[test]
    fn placeholders_for_no_value_are_absent() {
        let events = decode(&[
            ("callerphone", "79161234567"),
            ("callId", "556"),
            ("utm_source", "<не указано>"),
            ("utm_medium", "(none)"),
            ("utm_campaign", "(Not Set)"),
            ("utm_term", "< НЕ УКАЗАНО >"),
            ("utm_content", "spring"),
            ("city", "(not provided)"),
        ])
        .unwrap();
        let data = &events[0].data;
        for absent in ["utm_source", "utm_medium", "utm_campaign", "utm_term", "city"] {
            assert!(data.get(absent).is_none(), "{absent}: {data}");
            assert!(data["params"].get(absent).is_none(), "{absent}: {data}");
        }
        assert_eq!(data["utm_content"], "spring");
        // A value that only looks like one stays.
        assert!(!is_no_value("(direct)"));
        assert!(!is_no_value("none"));
    }

    #[test]
    fn repeated_parameters_keep_every_value_and_flags_are_booleans() {
        let events = decode(&[
            ("callerphone", "79161234567"),
            ("callId", "557"),
            ("tags", "a"),
            ("tags", "b, c"),
            ("unique", "true"),
            ("targetCall", "0"),
            ("callbackCall", "да"),
        ])
        .unwrap();
        let data = &events[0].data;
        assert_eq!(data["tags"], json!(["a", "b", "c"]));
        assert_eq!(data["params"]["tags"], json!(["a", "b, c"]));
        assert_eq!(data["unique"], true);
        assert_eq!(data["target_call"], false);
        assert_eq!(data["callback_call"], true);
    }

    #[test]
    fn dates_and_money_use_lead_service_formats() {
        let now = DateTime::parse_from_rfc3339("2026-05-08T12:40:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(lead_service_date(None, now).unwrap(), "08-05-2026 15:40:00");
        let mut fields = Map::new();
        fields.insert("revenue".into(), json!(1500.5));
        assert_eq!(money(&fields).unwrap().as_deref(), Some("1500.50"));
        fields.insert("revenue".into(), json!("100,5"));
        assert_eq!(money(&fields).unwrap().as_deref(), Some("100.50"));
        fields.insert("revenue".into(), json!("lots"));
        assert!(money(&fields).is_err());
    }
}
