//! retailCRM (API v5): customers, orders, and order changes polled from the
//! history. Facts, with how sure we are of each and the public source:
//! `vendors/retailcrm/API.md`.
//!
//! - The account has its own address (`https://<shop>.retailcrm.ru`, or the
//!   Simla domains): `base_url` is a required setting.
//! - Auth `X-API-KEY`; POST bodies are forms whose nested objects are JSON
//!   strings (`customer=<json>`, `order=<json>`, `site=<code>`).
//! - Errors are `{"success": false, "errorMsg", "errors"}`, sometimes with
//!   HTTP 200-range statuses; `errors` is a map or a list.
//! - 10 requests / s per key; over the limit retailCRM answers 503 (or 429)
//!   — both retried by the HTTP stack.
//! - No `filter[phone]` exists: phones are searched with `filter[name]`
//!   (which also matches phones, per a maintainer) and checked client-side;
//!   `filter[email]` may be partial (uncertain), so it is checked too.
//! - Creates carry an `externalId` derived from the step's idempotency key
//!   and look it up first (`GET …/{externalId}?by=externalId`): whether
//!   `create` refuses a duplicate externalId is not documented (uncertain).
//! - Changes: `/orders/history` with `filter[sinceId]`; the first poll
//!   starts from now, not from the account's whole history.
//! - `check` reads `GET /api/credentials` (unversioned): the key's scopes
//!   (or, in older accounts, its allowed methods) and sites. A wrong key is
//!   a 403 `Wrong "apiKey" value.`: an auth failure, never transient.
//!
//! Sending a step again after an attempt with an unknown outcome
//! ([`Connector::resend`]):
//!
//! | action                      | resend  | why |
//! |-----------------------------|---------|-----|
//! | `retailcrm.customer.create` | `Keyed` | carries an `externalId` (given, or derived from the step's key) and looks it up first; a create refused while an earlier one landed is looked up again |
//! | `retailcrm.order.create`    | `Keyed` | the same `externalId` rule |
#![doc = include_str!("API.md")]

use std::time::Duration;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, FixedOffset, Offset, Utc};
use crmbridge_mapping::{
    ActionKind, ActionSpec, EventKindSpec, FieldSpec, FieldType, LookupKey, Subject,
};
use serde_json::{Map, Value, json};

use crate::client::{Idempotency, VendorError, VendorPolicy, VendorRequest, redact};
use crate::support::{
    base_url, credential, digits, field, only_known, same_phone, text, url_with_query,
    validate_known_settings, with_timeout,
};
use crate::{
    Account, Action, ActionError, ActionOutput, CallContext, ConnectionView, DecodeError, DecodedEvent, EventSource, Lookup, Poller, Vendor, VendorSettings, WebhookSource,
    InboundRequest, PollBatch, Resend, SettingsError,
};

const DOMAINS: &[&str] = &[
    ".retailcrm.ru",
    ".retailcrm.pro",
    ".retailcrm.es",
    ".simla.com",
    ".simla.io",
];
const SETTINGS: &[&str] = &["site"];
const HISTORY_PAGE: usize = 100;
const HISTORY_MAX_PAGES: usize = 20;
const CUSTOMER_FIELDS: &[&str] = &["first_name", "last_name", "phone", "email", "external_id"];
const ORDER_FIELDS: &[&str] = &[
    "external_id",
    "customer_id",
    "first_name",
    "last_name",
    "phone",
    "email",
    "status",
    "order_method",
    "comment",
    "source",
    "custom_fields",
];

pub fn policy() -> VendorPolicy {
    VendorPolicy::new("retailcrm", 10, Duration::from_secs(1), 5)
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RetailCrm;

fn order_event_fields() -> Vec<FieldSpec> {
    vec![
        field("id", FieldType::String, "order id"),
        field("number", FieldType::String, "order number"),
        field("external_id", FieldType::String, "external id"),
        field("status", FieldType::String, "status code after the change"),
        field("field", FieldType::String, "the changed field"),
        field("old_value", FieldType::Any, "value before"),
        field("new_value", FieldType::Any, "value after"),
        field("total_sum", FieldType::Money, "order total"),
        field(
            "created",
            FieldType::Boolean,
            "the change created the order",
        ),
        field(
            "payment",
            FieldType::Object,
            "for a payment's change (field payments.*): the payment — id, type, status, externalId, amount — as the history gives it",
        ),
    ]
}

impl RetailCrm {
    async fn call(
        &self,
        ctx: &CallContext<'_>,
        request: VendorRequest,
    ) -> Result<(Value, u16, u32), ActionError> {
        let key = credential(ctx.credentials, "api_key")?;
        let request = request.header("x-api-key", key);
        let response = ctx
            .http
            .send(
                ctx.connection,
                &with_timeout(policy(), ctx.settings),
                &request,
                &[key],
            )
            .await?;
        if response.body.first() == Some(&b'<') {
            // A wrong subdomain answers HTML ("Account does not exist").
            return Err(VendorError::Rejected {
                vendor: "retailcrm",
                status: response.status,
                message: "the account address answered with HTML: check settings.base_url".into(),
            }
            .into());
        }
        let body = response.json()?;
        if body["success"] == json!(false) || !response.is_success() {
            let mut message = body["errorMsg"]
                .as_str()
                .unwrap_or("request failed")
                .to_owned();
            match &body["errors"] {
                Value::Object(map) if !map.is_empty() => {
                    let details: Vec<String> = map
                        .iter()
                        .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or_default()))
                        .collect();
                    message = format!("{message} ({})", details.join("; "));
                }
                Value::Array(list) if !list.is_empty() => {
                    let details: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
                    message = format!("{message} ({})", details.join("; "));
                }
                _ => {}
            }
            if matches!(response.status, 401 | 403) {
                // "Wrong apiKey value", "apiKey is missing", or a key
                // without access to the method: a person must act.
                return Err(VendorError::CredentialsRefused {
                    vendor: "retailcrm",
                    status: response.status,
                    message: format!("the API key is not accepted: {}", redact(&message, &[key])),
                }
                .into());
            }
            return Err(VendorError::Rejected {
                vendor: "retailcrm",
                status: response.status,
                // retailCRM does not echo the key, but an error text is
                // shown to users: make sure of it.
                message: redact(&message, &[key]),
            }
            .into());
        }
        Ok((body, response.status, response.attempts))
    }

    fn base(&self, ctx: &CallContext<'_>) -> Result<String, ActionError> {
        base_url(ctx.settings, "", DOMAINS, ctx.allow_any_base_url)
    }

    fn url(
        &self,
        ctx: &CallContext<'_>,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<String, ActionError> {
        let mut query = query.to_vec();
        if let Some(site) = ctx.settings["site"].as_str() {
            query.push(("site", site.to_owned()));
        }
        url_with_query(&format!("{}/api/v5/{path}", self.base(ctx)?), &query)
    }

    fn form(&self, ctx: &CallContext<'_>, field: &str, object: &Value) -> Vec<u8> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair(field, &object.to_string());
        if let Some(site) = ctx.settings["site"].as_str() {
            form.append_pair("site", site);
        }
        form.finish().into_bytes()
    }

    /// The record with this externalId, if an earlier attempt created it.
    async fn by_external_id(
        &self,
        ctx: &CallContext<'_>,
        entity: &str,
        external_id: &str,
    ) -> Result<Option<Value>, ActionError> {
        let url = self.url(
            ctx,
            &format!("{entity}s/{}", urlencode(external_id)),
            &[("by", "externalId".into())],
        )?;
        match self.call(ctx, VendorRequest::get(url)).await {
            Ok((body, _, _)) => Ok(Some(body[entity].clone())),
            Err(ActionError::Vendor(VendorError::Rejected { status: 404, .. })) => Ok(None),
            Err(err) => Err(err),
        }
    }

    async fn create(
        &self,
        ctx: &CallContext<'_>,
        entity: &str,
        object: Value,
        external_id: &str,
    ) -> Result<ActionOutput, ActionError> {
        if let Some(existing) = self.by_external_id(ctx, entity, external_id).await? {
            return Ok(ActionOutput {
                id: id_text(&existing["id"]),
                record: existing,
                response_status: 200,
                attempts: 1,
            });
        }
        let request = VendorRequest::with_body(
            reqwest::Method::POST,
            self.url(ctx, &format!("{entity}s/create"), &[])?,
            self.form(ctx, entity, &object),
            // Not idempotent at retailCRM; the externalId look-up above is
            // what makes a repeated step safe.
            Idempotency::NotIdempotent,
        )
        .header("content-type", "application/x-www-form-urlencoded");
        let (body, status, attempts) = match self.call(ctx, request).await {
            Ok(answer) => answer,
            // An earlier attempt still in flight at retailCRM may have made
            // the record between our look-up and this create, which is then
            // refused as a duplicate externalId: answer with that record.
            Err(err @ ActionError::Vendor(VendorError::Rejected { status: 400, .. })) => {
                return match self.by_external_id(ctx, entity, external_id).await? {
                    Some(existing) => Ok(ActionOutput {
                        id: id_text(&existing["id"]),
                        record: existing,
                        response_status: 200,
                        attempts: 1,
                    }),
                    None => Err(err),
                };
            }
            Err(err) => return Err(err),
        };
        let id = id_text(&body["id"]);
        let mut record = body.get(entity).cloned().unwrap_or_else(|| object.clone());
        record["id"] = Value::String(id.clone());
        Ok(ActionOutput {
            id,
            record,
            response_status: status,
            attempts,
        })
    }
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn id_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// retailCRM ids must be short: a hash of the idempotency key.
fn external_id(key: &str) -> String {
    format!(
        "cb-{}",
        &uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, key.as_bytes())
            .simple()
            .to_string()[..20]
    )
}

fn account_time(at: DateTime<Utc>) -> String {
    // Accounts are usually on Moscow time; a few minutes of skew only
    // costs a few already-seen history records.
    let msk = FixedOffset::east_opt(3 * 3600).unwrap_or(Utc.fix());
    at.with_timezone(&msk)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

impl VendorSettings for RetailCrm {
    fn required_credentials(&self) -> &'static [&'static str] {
        &["api_key"]
    }

    fn validate_settings(
        &self,
        settings: &Value,
        allow_any_base_url: bool,
    ) -> Result<(), Vec<SettingsError>> {
        validate_known_settings(settings, SETTINGS, None, DOMAINS, allow_any_base_url)
    }
}

impl WebhookSource for RetailCrm {
    fn decode_webhook(
        &self,
        _connection: ConnectionView<'_>,
        _request: &InboundRequest<'_>,
    ) -> Result<Vec<DecodedEvent>, DecodeError> {
        Err(DecodeError::new(
            "path",
            "retailCRM sends no webhooks to crmbridge: its order changes are polled from the history",
        ))
    }
}

#[async_trait]
impl EventSource for RetailCrm {
    fn event_kinds(&self) -> Vec<EventKindSpec> {
        vec![
            EventKindSpec::new(
                "retailcrm.order.changed",
                order_event_fields(),
            ),
            EventKindSpec::new(
                OWN_CHANGES,
                vec![
                    FieldSpec::new("count", FieldType::Integer).describe("history entries made with crmbridge's own key, skipped"),
                    FieldSpec::new("first_history_id", FieldType::Integer).describe("the first of them"),
                    FieldSpec::new("last_history_id", FieldType::Integer).describe("the last of them"),
                    FieldSpec::new("orders", FieldType::Array).describe("the orders they touched"),
                ],
            ),
        ]
    }
}

/// The event counting history entries made with crmbridge's own key.
const OWN_CHANGES: &str = "retailcrm.history.own_changes";

#[async_trait]
impl Poller for RetailCrm {
    fn polls(&self, kind: &str) -> bool {
        kind == "retailcrm.order.changed"
    }

    async fn poll(
        &self,
        ctx: &CallContext<'_>,
        kind: &str,
        _scope: &Value,
        cursor: Option<&Value>,
        now: DateTime<Utc>,
    ) -> Result<PollBatch, ActionError> {
        if kind != "retailcrm.order.changed" {
            return Err(ActionError::Config(format!("retailcrm does not poll {kind}")));
        }
        let since_id = cursor.and_then(|c| c["since_id"].as_i64());
        let start = cursor
            .and_then(|c| c["start_date"].as_str())
            .map(str::to_owned);
        let (mut filter, start_date) = match (since_id, start) {
            (Some(id), _) => (vec![("filter[sinceId]", id.to_string())], None),
            (None, Some(date)) => (vec![("filter[startDate]", date.clone())], Some(date)),
            // First poll: remember where "now" is; history is not replayed.
            (None, None) => {
                return Ok(PollBatch {
                    events: vec![],
                    cursor: json!({"start_date": account_time(now)}),
                });
            }
        };
        filter.push(("limit", HISTORY_PAGE.to_string()));
        let mut events = Vec::new();
        let mut newest = since_id;
        // Changes made with the key that reads the history are our own
        // writes: not events (a two-way automation would hear itself), but
        // counted in one event of their own, so the run log shows them.
        let mut own: Vec<(i64, String)> = Vec::new();
        for page in 1..=HISTORY_MAX_PAGES {
            let mut query = filter.clone();
            query.push(("page", page.to_string()));
            let url = self.url(ctx, "orders/history", &query)?;
            let (body, _, _) = self.call(ctx, VendorRequest::get(url)).await?;
            for record in body["history"].as_array().into_iter().flatten() {
                let Some(history_id) = record["id"].as_i64() else {
                    continue;
                };
                newest = Some(newest.map_or(history_id, |n| n.max(history_id)));
                let order = &record["order"];
                let order_id = id_text(&order["id"]);
                if record["apiKey"]["current"] == true {
                    own.push((history_id, order_id));
                    continue;
                }
                let status = if record["field"] == "status" {
                    record["newValue"]["code"].clone()
                } else {
                    order["status"].clone()
                };
                events.push(DecodedEvent {
                    source_id: Some(format!("history:{history_id}")),
                    kind: kind.to_owned(),
                    subject: Subject {
                        kind: "order".into(),
                        id: order_id.clone(),
                    },
                    occurred_at: None,
                    observation: None,
                    data: json!({
                        "id": order_id,
                        "number": order["number"],
                        "external_id": order["externalId"],
                        "status": status,
                        "field": record["field"],
                        "old_value": record["oldValue"],
                        "new_value": record["newValue"],
                        "total_sum": order["totalSumm"],
                        "created": record["created"].as_bool().unwrap_or(false),
                        // Which payment changed, so an automation can act
                        // on it rather than on the order only.
                        "payment": record["payment"],
                    }),
                });
            }
            let pages = body["pagination"]["totalPageCount"].as_u64().unwrap_or(1) as usize;
            if page >= pages {
                break;
            }
        }
        if let (Some((first, _)), Some((last, _))) = (own.first(), own.last()) {
            let mut orders: Vec<String> = own.iter().map(|(_, order)| order.clone()).collect();
            orders.sort();
            orders.dedup();
            events.push(DecodedEvent {
                // The same span of history names the same event again.
                source_id: Some(format!("own:{first}-{last}")),
                kind: OWN_CHANGES.to_owned(),
                subject: Subject {
                    kind: "history".into(),
                    id: format!("{first}-{last}"),
                },
                occurred_at: None,
                observation: None,
                data: json!({
                    "count": own.len(),
                    "first_history_id": first,
                    "last_history_id": last,
                    "orders": orders,
                }),
            });
        }
        let cursor = match (newest, start_date) {
            (Some(id), _) => json!({"since_id": id}),
            (None, Some(date)) => json!({"start_date": date}),
            (None, None) => json!({}),
        };
        Ok(PollBatch { events, cursor })
    }
}

#[async_trait]
impl Account for RetailCrm {
    /// `GET /api/credentials`: authenticated, cheap, and it says what the
    /// key may do (its scopes, or in older accounts its methods) and on
    /// which sites.
    async fn check(&self, ctx: &CallContext<'_>) -> Result<Value, ActionError> {
        let url = url_with_query(&format!("{}/api/credentials", self.base(ctx)?), &[])?;
        let (body, _, _) = self.call(ctx, VendorRequest::get(url)).await?;
        let mut account = json!({
            "site_access": body["siteAccess"],
            "sites": body["sitesAvailable"],
        });
        if let Some(scopes) = body.get("scopes") {
            account["scopes"] = scopes.clone();
        }
        if let Some(methods) = body["credentials"].as_array() {
            account["methods"] = json!(methods.len());
        }
        Ok(account)
    }
}

/// retailCRM: orders polled from the change history, customers and orders created.
pub fn vendor() -> Vendor {
    let retailcrm = Arc::new(RetailCrm);
    Vendor::new("retailcrm", retailcrm.clone())
        .webhooks(retailcrm.clone())
        .events(retailcrm.clone())
        .poller(retailcrm.clone())
        .account(retailcrm.clone())
        .action(Arc::new(CreateCustomer(retailcrm.clone())))
        .action(Arc::new(CreateOrder(retailcrm.clone())))
        .action(Arc::new(UpdateOrder(retailcrm)))
}

impl RetailCrm {
    /// Finds an existing record by a create step's dedupe keys.
    async fn find_customer(
        &self,
        ctx: &CallContext<'_>,
        keys: &[LookupKey],
    ) -> Result<Option<String>, ActionError> {
        for key in keys {
            let wanted = match &key.value {
                Value::String(s) if !s.is_empty() => s.clone(),
                _ => continue,
            };
            let (filter, value) = match key.field.as_str() {
                // The national number (last ten digits) matches however the
                // stored phone is prefixed: +7…, 8…, 7….
                "phone" => {
                    let all = digits(&wanted);
                    (
                        "filter[name]",
                        all[all.len().saturating_sub(10)..].to_owned(),
                    )
                }
                "email" => ("filter[email]", wanted.trim().to_owned()),
                other => {
                    return Err(ActionError::field(
                        format!("dedupe.by.{other}"),
                        "retailCRM customers can be found by phone or email",
                    ));
                }
            };
            let url = self.url(
                ctx,
                "customers",
                &[(filter, value), ("limit", "100".into())],
            )?;
            let (body, _, _) = self.call(ctx, VendorRequest::get(url)).await?;
            let found = body["customers"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| match key.field.as_str() {
                    "phone" => c["phones"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|p| p["number"].as_str().is_some_and(|n| same_phone(n, &wanted))),
                    _ => c["email"]
                        .as_str()
                        .is_some_and(|e| e.trim().eq_ignore_ascii_case(wanted.trim())),
                });
            if let Some(customer) = found {
                return Ok(Some(id_text(&customer["id"])));
            }
        }
        Ok(None)
    }
}

/// `retailcrm.customer.create`.
struct CreateCustomer(Arc<RetailCrm>);

#[async_trait]
impl Action for CreateCustomer {
    fn spec(&self) -> ActionSpec {
        ActionSpec::new(
            "retailcrm.customer.create",
            ActionKind::Create,
            vec![
                field("first_name", FieldType::String, "first name"),
                field("last_name", FieldType::String, "last name"),
                field("phone", FieldType::Phone, "phone"),
                field("email", FieldType::Email, "email"),
                field(
                    "external_id",
                    FieldType::String,
                    "your id (default: derived from the run)",
                ),
            ],
        )
        .with_output(vec![field("id", FieldType::String, "customer id")])
    }

    /// Both look the externalId (from the step's key, or given) up
    /// before creating, and again after a refused create.
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
        only_known(fields, CUSTOMER_FIELDS)?;
        let external =
            text(fields, "external_id").unwrap_or_else(|| external_id(ctx.idempotency_key));
        let mut customer = json!({"externalId": external});
        for (ours, theirs) in [
            ("first_name", "firstName"),
            ("last_name", "lastName"),
            ("email", "email"),
        ] {
            if let Some(value) = text(fields, ours) {
                customer[theirs] = Value::String(value);
            }
        }
        if let Some(phone) = text(fields, "phone") {
            customer["phones"] = json!([{"number": phone}]);
        }
        vendor.create(ctx, "customer", customer, &external).await
    }

    fn lookup(&self) -> Option<&dyn Lookup> {
        Some(self)
    }
}

#[async_trait]
impl Lookup for CreateCustomer {
    async fn find(
        &self,
        ctx: &CallContext<'_>,
        keys: &[LookupKey],
    ) -> Result<Option<String>, ActionError> {
        self.0.find_customer(ctx, keys).await
    }
}

/// `retailcrm.order.create`.
struct CreateOrder(Arc<RetailCrm>);

#[async_trait]
impl Action for CreateOrder {
    fn spec(&self) -> ActionSpec {
        ActionSpec::new(
            "retailcrm.order.create",
            ActionKind::Create,
            vec![
                field(
                    "external_id",
                    FieldType::String,
                    "your id (default: derived from the run)",
                ),
                field("customer_id", FieldType::String, "customer id"),
                field("first_name", FieldType::String, "first name"),
                field("last_name", FieldType::String, "last name"),
                field("phone", FieldType::Phone, "phone"),
                field("email", FieldType::Email, "email"),
                field("status", FieldType::String, "status code"),
                field(
                    "order_method",
                    FieldType::String,
                    "order method code, e.g. phone",
                ),
                field("comment", FieldType::String, "customer comment"),
                field(
                    "source",
                    FieldType::Object,
                    "source, medium, campaign, keyword, content",
                ),
                field("custom_fields", FieldType::Object, "custom fields by code"),
            ],
        )
        .with_output(vec![
            field("id", FieldType::String, "order id"),
            field("number", FieldType::String, "number"),
        ])
    }

    /// Both look the externalId (from the step's key, or given) up
    /// before creating, and again after a refused create.
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
        only_known(fields, ORDER_FIELDS)?;
        let external =
            text(fields, "external_id").unwrap_or_else(|| external_id(ctx.idempotency_key));
        let mut order = order_body(fields)?;
        order["externalId"] = Value::String(external.clone());
        vendor.create(ctx, "order", order, &external).await
    }
}

/// An order body from a step's fields (retailCRM's names).
fn order_body(fields: &Map<String, Value>) -> Result<Value, ActionError> {
        let mut order = json!({});
        for (ours, theirs) in [
            ("first_name", "firstName"),
            ("last_name", "lastName"),
            ("phone", "phone"),
            ("email", "email"),
            ("status", "status"),
            ("order_method", "orderMethod"),
            ("comment", "customerComment"),
        ] {
            if let Some(value) = text(fields, ours) {
                order[theirs] = Value::String(value);
            }
        }
        if let Some(customer) = text(fields, "customer_id") {
            order["customer"] = json!({"id": customer.parse::<i64>().map(Value::from).unwrap_or(Value::String(customer))});
        }
        for (ours, theirs) in [("source", "source"), ("custom_fields", "customFields")] {
            match fields.get(ours) {
                Some(Value::Object(map)) => order[theirs] = Value::Object(map.clone()),
                None | Some(Value::Null) => {}
                Some(_) => {
                    return Err(ActionError::field(
                        format!("fields.{ours}"),
                        "must be an object",
                    ));
                }
            }
        }
        Ok(order)
}

/// `retailcrm.order.update`: fields of an order found by its retailCRM id
/// (`POST /orders/{id}/edit?by=id`); `external_id` writes our id back, so
/// later history entries can be matched without a look-up.
struct UpdateOrder(Arc<RetailCrm>);

#[async_trait]
impl Action for UpdateOrder {
    fn spec(&self) -> ActionSpec {
        let mut spec = CreateOrder(self.0.clone()).spec();
        spec.id = "retailcrm.order.update".into();
        spec.kind = ActionKind::Update;
        if let Some(external) = spec.fields.iter_mut().find(|f| f.name == "external_id") {
            external.description = "set the order's externalId (your id for it)".into();
        }
        spec
    }

    /// It overwrites fields.
    fn resend(&self, _fields: &Map<String, Value>) -> Resend {
        Resend::Repeatable
    }

    async fn execute(
        &self,
        ctx: &CallContext<'_>,
        fields: &Map<String, Value>,
        target: Option<&str>,
    ) -> Result<ActionOutput, ActionError> {
        only_known(fields, ORDER_FIELDS)?;
        let id = target
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ActionError::field("target", "the retailCRM order's id"))?;
        let mut order = order_body(fields)?;
        if let Some(external) = text(fields, "external_id") {
            order["externalId"] = Value::String(external);
        }
        let request = VendorRequest::with_body(
            reqwest::Method::POST,
            self.0
                .url(ctx, &format!("orders/{}/edit", urlencode(id)), &[("by", "id".into())])?,
            self.0.form(ctx, "order", &order),
            Idempotency::Idempotent,
        )
        .header("content-type", "application/x-www-form-urlencoded");
        let (body, status, attempts) = self.0.call(ctx, request).await?;
        Ok(ActionOutput {
            id: id_text(&body["id"]),
            record: body["order"].clone(),
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
    fn external_ids_are_short_and_stable() {
        assert_eq!(external_id("run/1"), external_id("run/1"));
        assert_ne!(external_id("run/1"), external_id("run/2"));
        assert_eq!(external_id("x").len(), 23);
    }

    #[test]
    fn resend_safety_is_declared_per_action() {
        use crmbridge_mapping::Catalog as _;
        let catalog = vendor().catalog();
        for (action, fields) in [
            ("retailcrm.customer.create", json!({"first_name": "Ann"})),
            ("retailcrm.customer.create", json!({"external_id": "crm-7"})),
            ("retailcrm.order.create", json!({"status": "new"})),
        ] {
            assert!(catalog.action(action).is_some(), "{action}");
            assert_eq!(
                vendor().find_action(action).unwrap().resend(fields.as_object().unwrap()),
                Resend::Keyed,
                "{action}"
            );
        }
        assert!(vendor().find_action("retailcrm.order.edit").is_none());
    }

    #[test]
    fn base_url_is_required_and_on_the_vendor_domain() {
        let errors = RetailCrm.validate_settings(&json!({}), false).unwrap_err();
        assert_eq!(errors[0].field, "base_url");
        assert!(
            RetailCrm
                .validate_settings(&json!({"base_url": "https://shop.retailcrm.ru"}), false)
                .is_ok()
        );
        assert!(
            RetailCrm
                .validate_settings(&json!({"base_url": "https://attacker.example"}), false)
                .is_err()
        );
    }
}
