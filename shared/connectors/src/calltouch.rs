//! Calltouch: call and request webhooks in, deals (API 2.0, lead-service)
//! out. Facts: ../shared/apis/calltouch-moysklad-retailcrm.md, § A.
//!
//! - Calltouch signs nothing: the connection's secret token in the webhook
//!   URL is the authentication (checked by the engine).
//! - Webhooks come as GET (query) or POST (form), URL-encoded, with the
//!   parameters the user ticked. Their names are only partly documented
//!   (uncertain), so the decoder accepts the known aliases (`callerphone`,
//!   `callerNumber`, …), normalises them to snake_case fields, and keeps
//!   every parameter as sent under `params`.
//! - The UI's "test" send delivers unfilled placeholders like
//!   `{callerphone}`: refused with a 400 that says so.
//! - A delivery with `requestId`, `requestNumber` or `subject` is a request
//!   (form lead); anything else is a call.
//! - Deals: `POST lead-service/v1/api/client-order/create|update` with
//!   `Access-Token` and `SiteId` headers. `orderNumber` is our key for a
//!   deal; whether create with an existing `orderNumber` duplicates is not
//!   documented (uncertain), so a create that is refused as a duplicate is
//!   turned into an update of that deal. Dates are `dd-mm-yyyy HH:MM:SS`
//!   (from integrators' code; uncertain). Money is a decimal string.
//! - 5 requests per second (stated for phone-service, applied to all).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use crmbridge_mapping::{
    ActionKind, ActionSpec, EventKindSpec, FieldSpec, FieldType, StaticCatalog, Subject,
};
use serde_json::{Map, Value, json};

use crate::http::{Idempotency, VendorError, VendorPolicy, VendorRequest};
use crate::support::{
    base_url, credential, field, only_known, required_text, text, validate_known_settings,
    with_timeout,
};
use crate::{
    ActionError, ActionOutput, CallContext, ConnectionView, Connector, DecodeError, DecodedEvent,
    InboundRequest, SettingsError,
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

fn params_of(request: &InboundRequest<'_>) -> Result<Vec<(String, String)>, DecodeError> {
    let mut params: Vec<(String, String)> = request.query.to_vec();
    if !request.body.is_empty() {
        let is_json = request.content_type.is_some_and(|ct| ct.contains("json"));
        if is_json {
            let body: Value = serde_json::from_slice(request.body)
                .map_err(|err| DecodeError::new("body", format!("not valid JSON: {err}")))?;
            let object = body
                .as_object()
                .ok_or_else(|| DecodeError::new("body", "expected a JSON object"))?;
            params.extend(object.iter().map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string()),
                )
            }));
        } else {
            params.extend(form_urlencoded::parse(request.body).into_owned());
        }
    }
    Ok(params)
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

impl Calltouch {
    async fn call(
        &self,
        ctx: &CallContext<'_>,
        path: &str,
        body: &Value,
    ) -> Result<(Value, u16, u32), ActionError> {
        let token = credential(ctx.credentials, "access_token")?;
        let site_id = ctx.settings["site_id"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| ctx.settings["site_id"].as_i64().map(|n| n.to_string()))
            .ok_or_else(|| ActionError::Config("settings.site_id is required".into()))?;
        let base = base_url(
            ctx.settings,
            DEFAULT_BASE_URL,
            DOMAINS,
            ctx.allow_any_base_url,
        )?;
        let request = VendorRequest::with_body(
            reqwest::Method::POST,
            format!("{base}/lead-service/v1/api/client-order/{path}"),
            body.to_string().into_bytes(),
            // orderNumber is the deal's key: repeating a create or an update
            // of the same deal does not make a second one (see module docs).
            Idempotency::Idempotent,
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
            return Err(VendorError::Rejected {
                vendor: "calltouch",
                status: response.status,
                message: order_error.unwrap_or_else(|| truncate(&response.text())),
            }
            .into());
        }
        Ok((json, response.status, response.attempts))
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
            order["addNewComment"] = json!({"text": comment});
        }
        Ok(order)
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

fn truncate(text: &str) -> String {
    text.chars().take(300).collect()
}

#[async_trait]
impl Connector for Calltouch {
    fn app(&self) -> &'static str {
        "calltouch"
    }

    fn catalog(&self) -> StaticCatalog {
        StaticCatalog::new()
            .with_event(EventKindSpec::new(
                "calltouch.call.completed",
                call_fields(),
            ))
            .with_event(EventKindSpec::new(
                "calltouch.request.created",
                request_fields(),
            ))
            .with_action(
                ActionSpec::new(
                    "calltouch.deal.create",
                    ActionKind::Create,
                    deal_fields(true),
                )
                .with_output(vec![
                    FieldSpec::new("id", FieldType::String),
                    FieldSpec::new("calltouch_order_id", FieldType::String),
                ]),
            )
            .with_action(
                ActionSpec::new(
                    "calltouch.deal.update",
                    ActionKind::Update,
                    deal_fields(false),
                )
                .with_output(vec![FieldSpec::new("id", FieldType::String)]),
            )
    }

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

    fn decode_webhook(
        &self,
        _connection: ConnectionView<'_>,
        request: &InboundRequest<'_>,
    ) -> Result<Vec<DecodedEvent>, DecodeError> {
        let params = params_of(request)?;
        if params.is_empty() {
            return Err(DecodeError::new(
                "query",
                "a Calltouch webhook carries its fields as parameters; none were sent",
            ));
        }
        if let Some((name, value)) = params.iter().find(|(_, v)| looks_unfilled(v)) {
            return Err(DecodeError::new(
                format!("params.{name}"),
                format!(
                    "'{value}' is an unfilled placeholder: this is Calltouch's test send, not a real call"
                ),
            ));
        }
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
        for (ours, _) in ALIASES {
            if let Some(value) = get(ours) {
                let value = if *ours == "tags" {
                    Value::Array(
                        value
                            .split([',', '|'])
                            .map(str::trim)
                            .filter(|t| !t.is_empty())
                            .map(|t| Value::String(t.to_owned()))
                            .collect(),
                    )
                } else {
                    Value::String(value)
                };
                data.insert((*ours).to_owned(), value);
            }
        }
        data.insert(
            "params".into(),
            Value::Object(
                params
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            ),
        );
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

    async fn execute(
        &self,
        ctx: &CallContext<'_>,
        action: &str,
        fields: &Map<String, Value>,
        target: Option<&str>,
    ) -> Result<ActionOutput, ActionError> {
        let now = Utc::now();
        let crm = ctx.settings["crm_name"].as_str().unwrap_or("crmbridge");
        match action {
            "calltouch.deal.create" => {
                only_known(fields, CREATE_FIELDS)?;
                let order = self.order(fields, true, now)?;
                let number = order["orderNumber"].as_str().unwrap_or_default().to_owned();
                let result = self
                    .call(ctx, "create", &json!({"crm": crm, "orders": [order]}))
                    .await;
                let (body, status, attempts) = match result {
                    Err(ActionError::Vendor(VendorError::Rejected { message, .. }))
                        if is_duplicate_deal(&message) =>
                    {
                        // The deal is there already (an earlier attempt made
                        // it): bring it up to date instead.
                        let update = self.order(fields, false, now)?;
                        self.call(ctx, "update", &json!({"crm": crm, "orders": [update]}))
                            .await?
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
            "calltouch.deal.update" => {
                only_known(fields, UPDATE_FIELDS)?;
                let number = target.ok_or_else(|| {
                    ActionError::field("target", "an update needs the deal's order number")
                })?;
                let mut with_number = fields.clone();
                with_number.insert("order_number".into(), Value::String(number.to_owned()));
                let order = self.order(&with_number, false, now)?;
                let (_, status, attempts) = self
                    .call(ctx, "update", &json!({"crm": crm, "orders": [order]}))
                    .await?;
                Ok(ActionOutput {
                    id: number.to_owned(),
                    record: json!({"id": number}),
                    response_status: status,
                    attempts,
                })
            }
            other => Err(ActionError::unsupported_action("calltouch", other)),
        }
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

    fn decode(query: &[(&str, &str)]) -> Result<Vec<DecodedEvent>, DecodeError> {
        let query: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Calltouch.decode_webhook(
            ConnectionView {
                id: "c",
                settings: &json!({}),
            },
            &InboundRequest {
                method: "GET",
                query: &query,
                content_type: None,
                body: b"",
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
    fn the_test_send_is_refused_clearly() {
        let err = decode(&[("callerphone", "{callerphone}"), ("callId", "{callId}")]).unwrap_err();
        assert_eq!(err.field, "params.callerphone");
        assert!(err.message.contains("test send"));
        assert_eq!(decode(&[]).unwrap_err().field, "query");
        assert_eq!(
            decode(&[("utm_source", "x")]).unwrap_err().field,
            "params.callerphone"
        );
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
