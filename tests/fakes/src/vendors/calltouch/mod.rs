//! Fake Calltouch: the lead-service v1 deals API ("Deals API 2.0") and the
//! call webhook Calltouch sends to us.
//!
//! Mirrors (see `shared/connectors/src/vendors/calltouch/API.md`):
//! * `POST /lead-service/v1/api/client-order/create` and
//!   `POST /lead-service/v1/api/client-order/update` (and `…/delete`) on
//!   `https://api.calltouch.ru`; auth by the headers `Access-Token: <token>`
//!   and `SiteId: <site id>`; JSON bodies `{"crm":…, "orders":[…]}`; deals are
//!   keyed by the client's `orderNumber`; update merges `funnel`, `status`,
//!   `statusDate`, `updateDate`, `revenue`, `margin`, `manager`, `orderLink`,
//!   `orderName`, `currency`, `customFields`, `products`, `orderContacts`,
//!   `addNewComment`, `addTags`, `reMatching`.
//! * deal `status` is free text (a funnel status name); the seed article's
//!   `PENDING` / `COMPLETED` are accepted like any other text.
//! * money values are decimal strings (`"100000.50"`); numbers are accepted too.
//! * calls-service journals (read-only, seeded with [`FakeCalltouch::add_call`]
//!   / [`FakeCalltouch::add_request`]), auth by the `clientApiId` query
//!   parameter (the same token): `GET /calls-service/RestAPI/{siteId}/calls-diary/calls`
//!   with `dateFrom`/`dateTo` as `dd/mm/yyyy` — without `page` one day only
//!   and a bare JSON array, with `page` (1-based) and `limit` (≤ 1000) the
//!   object `{page,pageTotal,pageSize,recordsTotal,records}`;
//!   `GET /calls-service/RestAPI/requests` with `siteId` and `dateFrom`/`dateTo`
//!   as `mm/dd/yyyy` (sic), a bare array. Journal error bodies are unknown
//!   [`{"error": "…"}` with 400/401/403].
//! * the call webhook: [`send_call_webhook`] sends the call's parameters
//!   URL-encoded, as a GET query or a POST form (`callerphone`, `phonenumber`,
//!   `calltime`, `status`, `unique`, `source`, `medium`, `utm_*`, …), and
//!   [`unfilled_test_params`] gives the UI "test send" with `{callerphone}`
//!   placeholders.
//!
//! Uncertain (the fake's choice in brackets):
//! * the response envelope [`{"data":{"orders":[{"calltouchOrderId":N,"orderNumber":…}]}}`,
//!   a rejected order is `{"orderNumber":…,"error":"…"}` in that list; a body
//!   that fails validation → 400 `{"data":{"validationErrorData":[{"field","message"}]}}`];
//! * auth errors [missing/wrong `Access-Token` → 401, `SiteId` not this
//!   site's → 403, body `{"error":…, "message":…}`];
//! * date format of `statusDate`/`orderDate`/`updateDate`
//!   [`dd-mm-yyyy HH:MM:SS`, else a validation error — integrators' usage];
//! * create with an existing `orderNumber` [rejected per order by default,
//!   "Сделка с номером '…' уже существует" — other wording with
//!   [`FakeCalltouch::set_duplicate_error`]; [`DuplicatePolicy::ReturnExisting`]
//!   answers with the existing deal];
//! * `addTagsToLead` vs `addTagsToLeads` [both accepted, stored as given];
//! * delete body [`{"orders":[{"orderNumber":…}]}`];
//! * rate limit: 5 requests/s per IP, body unknown [injected 429 with
//!   `Retry-After` seconds and `{"error":"Too Many Requests"}`];
//! * webhook parameter names beyond `callerphone`, `phonenumber`, `calltime`,
//!   `status`, `unique`, `source`, `medium`, `utm_source` [the rest of
//!   [`sample_call_params`] is a guess — pass your own set];
//!   retries and signatures: none documented [the sender sends once].

use std::sync::{Arc, Mutex};

use chrono::NaiveDateTime;
use http::{Method, StatusCode};
use serde_json::{Map, Value, json};

use crate::FakeError;
use crate::server::{self, Fault, Req, Resp, Server, Vendor, common_methods, lock};

/// The path prefix of the lead-service API.
pub const LEAD_SERVICE_PREFIX: &str = "/lead-service/v1/api";

/// The path prefix of the older calls-service API (journals).
pub const CALLS_SERVICE_PREFIX: &str = "/calls-service/RestAPI";

/// What the fake does with a create whose `orderNumber` already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DuplicatePolicy {
    /// That order is rejected with a per-order `error` (default).
    #[default]
    Reject,
    /// The existing deal is answered, unchanged.
    ReturnExisting,
}

/// How the webhook sender delivers the parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookMethod {
    /// Parameters in the query string.
    Get,
    /// Parameters as an `application/x-www-form-urlencoded` body.
    Post,
}

#[derive(Debug, Default)]
struct Data {
    deals: Vec<Value>,
    calls: Vec<Value>,
    requests: Vec<Value>,
    next_call: i64,
    next_request: i64,
    next_id: i64,
    duplicate_policy: DuplicatePolicy,
    /// The per-order error of a refused duplicate; `{number}` is replaced.
    duplicate_error: Option<String>,
    retry_after_secs: u64,
}

struct Inner {
    token: String,
    site_id: String,
    data: Mutex<Data>,
}

/// A running fake Calltouch API. Dropping it stops the server.
pub struct FakeCalltouch {
    server: Server,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FakeCalltouch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeCalltouch")
            .field("addr", &self.server.addr)
            .finish()
    }
}

impl FakeCalltouch {
    /// Starts a fake accepting `Access-Token: <token>` with `SiteId: <site_id>`.
    pub async fn start(token: &str, site_id: &str) -> Result<Self, FakeError> {
        let mut inner_out = None;
        let server = server::serve(|_| {
            let inner = Arc::new(Inner {
                token: token.to_owned(),
                site_id: site_id.to_owned(),
                data: Mutex::new(Data {
                    next_id: 100_001,
                    next_call: 500_001,
                    next_request: 900_001,
                    retry_after_secs: 1,
                    ..Data::default()
                }),
            });
            inner_out = Some(inner.clone());
            Arc::new(CtVendor(inner))
        })
        .await?;
        let inner = inner_out.ok_or_else(|| FakeError::Invalid("server not built".into()))?;
        Ok(FakeCalltouch { server, inner })
    }

    common_methods!();

    /// `http://127.0.0.1:PORT` — the fake's stand-in for `https://api.calltouch.ru`;
    /// the deals API is under `/lead-service/v1/api/client-order/…`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// The access token accepted.
    pub fn token(&self) -> &str {
        &self.inner.token
    }

    /// The site id accepted.
    pub fn site_id(&self) -> &str {
        &self.inner.site_id
    }

    /// Snapshot of all deals in creation order. Each is the create body's order
    /// plus `calltouchOrderId`, `crm`, `tags` (strings), `comments` (texts)
    /// and `updates` (the raw update items received for it).
    pub fn deals(&self) -> Vec<Value> {
        lock(&self.inner.data).deals.clone()
    }

    /// One deal by `orderNumber`.
    pub fn deal(&self, order_number: &str) -> Option<Value> {
        lock(&self.inner.data)
            .deals
            .iter()
            .find(|d| d["orderNumber"] == order_number)
            .cloned()
    }

    /// Adds a call to the calls journal; fills `callId` (if missing) and
    /// `date` (`dd/mm/yyyy HH:MM:SS`, now, if missing). Returns the callId.
    pub fn add_call(&self, call: Value) -> i64 {
        let mut d = lock(&self.inner.data);
        let mut call = if call.is_object() { call } else { json!({}) };
        let id = call["callId"].as_i64().unwrap_or_else(|| {
            let id = d.next_call;
            d.next_call += 1;
            id
        });
        call["callId"] = json!(id);
        if call["date"].is_null() {
            call["date"] = json!(
                crate::util::now_msk(chrono::Duration::zero())
                    .format("%d/%m/%Y %H:%M:%S")
                    .to_string()
            );
        }
        d.calls.push(call);
        id
    }

    /// Adds a request (заявка) to the requests journal; fills `requestId`
    /// and `dateStr` (`dd/mm/yyyy HH:MM:SS`) and `date` (epoch ms) if missing.
    pub fn add_request(&self, request: Value) -> i64 {
        let mut d = lock(&self.inner.data);
        let mut r = if request.is_object() {
            request
        } else {
            json!({})
        };
        let id = r["requestId"].as_i64().unwrap_or_else(|| {
            let id = d.next_request;
            d.next_request += 1;
            id
        });
        r["requestId"] = json!(id);
        let now = crate::util::now_msk(chrono::Duration::zero());
        if r["dateStr"].is_null() {
            r["dateStr"] = json!(now.format("%d/%m/%Y %H:%M:%S").to_string());
        }
        if r["date"].is_null() {
            r["date"] = json!(now.timestamp_millis());
        }
        d.requests.push(r);
        id
    }

    /// What a create with an existing `orderNumber` does.
    pub fn set_duplicate_policy(&self, policy: DuplicatePolicy) {
        lock(&self.inner.data).duplicate_policy = policy;
    }

    /// The wording of the per-order error that refuses a duplicate
    /// ([`DuplicatePolicy::Reject`]); `{number}` stands for the orderNumber.
    /// The real wording is undocumented: clients must not depend on it.
    pub fn set_duplicate_error(&self, text: &str) {
        lock(&self.inner.data).duplicate_error = Some(text.to_owned());
    }

    /// The `Retry-After` (seconds) of an injected `TooManyRequests` (default 1).
    pub fn set_retry_after_secs(&self, secs: u64) {
        lock(&self.inner.data).retry_after_secs = secs;
    }
}

/// A realistic call-end parameter set (see the module docs for which names
/// are verified).
pub fn sample_call_params() -> Vec<(String, String)> {
    [
        ("callId", "123456"),
        ("callerphone", "79161234567"),
        ("phonenumber", "74950000000"),
        ("calltime", "2026-05-08 15:32:47"),
        ("duration", "65"),
        ("status", "successful"),
        ("unique", "true"),
        ("source", "yandex"),
        ("medium", "cpc"),
        ("utm_source", "yandex"),
        ("utm_medium", "cpc"),
        ("utm_campaign", "brand"),
        ("utm_content", "ad1"),
        ("utm_term", "купить"),
        ("clientId", "1234567890.1234567890"),
        ("ctCallerId", "ct-caller-1"),
        ("siteId", "12345"),
        ("callTags", "Лид|Целевой"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

/// The parameter set of a "test" send from the Calltouch UI: every value is
/// its unfilled `{name}` placeholder (receivers should skip it).
pub fn unfilled_test_params() -> Vec<(String, String)> {
    sample_call_params()
        .into_iter()
        .map(|(k, _)| {
            let v = format!("{{{k}}}");
            (k, v)
        })
        .collect()
}

/// Sends a call webhook the way Calltouch does: the parameters URL-encoded in
/// the query (GET) or as a form body (POST), appended to any query
/// `target_url` already has (e.g. our `?secret=`). Returns the status.
pub async fn send_call_webhook(
    target_url: &str,
    params: &[(&str, &str)],
    method: WebhookMethod,
) -> Result<u16, FakeError> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()?;
    let mut url = url::Url::parse(target_url)
        .map_err(|e| FakeError::Invalid(format!("{target_url}: {e}")))?;
    let resp = match method {
        WebhookMethod::Get => {
            url.query_pairs_mut().extend_pairs(params.iter().copied());
            client.get(url).send().await?
        }
        WebhookMethod::Post => {
            let body = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(params.iter().copied())
                .finish();
            client
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await?
        }
    };
    Ok(resp.status().as_u16())
}

/// [`send_call_webhook`] with owned pairs (e.g. from [`sample_call_params`]).
pub async fn send_call_webhook_owned(
    target_url: &str,
    params: &[(String, String)],
    method: WebhookMethod,
) -> Result<u16, FakeError> {
    let borrowed: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    send_call_webhook(target_url, &borrowed, method).await
}

struct CtVendor(Arc<Inner>);

fn validation(errors: Vec<(String, String)>) -> Resp {
    Resp::json(
        StatusCode::BAD_REQUEST,
        &json!({"data": {"validationErrorData": errors
            .into_iter()
            .map(|(f, m)| json!({"field": f, "message": m}))
            .collect::<Vec<_>>()}}),
    )
}

fn valid_date(s: &str) -> bool {
    NaiveDateTime::parse_from_str(s, "%d-%m-%Y %H:%M:%S").is_ok()
}

fn tags_of(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t["tag"].as_str().or(t.as_str()).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn parse_day(s: &str, fmt: &str) -> Option<chrono::NaiveDate> {
    chrono::NaiveDate::parse_from_str(s, fmt).ok()
}

fn journal_error(status: StatusCode, msg: &str) -> Resp {
    Resp::json(status, &json!({"error": msg}))
}

impl Inner {
    /// calls-service journals: calls diary and requests journal.
    fn journal(&self, req: &Req, segs: &[String]) -> Resp {
        if req.method != Method::GET {
            return journal_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        }
        if req.query_param("clientApiId").as_deref() != Some(self.token.as_str()) {
            return journal_error(
                StatusCode::UNAUTHORIZED,
                "clientApiId is missing or invalid",
            );
        }
        let s: Vec<&str> = segs.iter().map(String::as_str).collect();
        let (is_calls, site) = match s.as_slice() {
            [site, "calls-diary", "calls"] => (true, (*site).to_owned()),
            ["requests"] => (
                false,
                req.query_param("siteId")
                    .unwrap_or_else(|| self.site_id.clone()),
            ),
            _ => return journal_error(StatusCode::NOT_FOUND, "Not Found"),
        };
        if site != self.site_id {
            return journal_error(StatusCode::FORBIDDEN, "No access to this site");
        }
        // Calls: dd/mm/yyyy; requests: mm/dd/yyyy.
        let fmt = if is_calls { "%d/%m/%Y" } else { "%m/%d/%Y" };
        let from = req.query_param("dateFrom").and_then(|d| parse_day(&d, fmt));
        let to = req.query_param("dateTo").and_then(|d| parse_day(&d, fmt));
        let (Some(from), Some(to)) = (from, to) else {
            let want = if is_calls { "dd/mm/yyyy" } else { "mm/dd/yyyy" };
            return journal_error(
                StatusCode::BAD_REQUEST,
                &format!("dateFrom and dateTo are required, format {want}"),
            );
        };
        if from > to {
            return journal_error(StatusCode::BAD_REQUEST, "dateFrom must not be after dateTo");
        }
        let d = lock(&self.data);
        let rows: Vec<Value> = if is_calls { &d.calls } else { &d.requests }
            .iter()
            .filter(|r| {
                let day = if is_calls {
                    r["date"]
                        .as_str()
                        .and_then(|x| x.get(..10))
                        .and_then(|x| parse_day(x, "%d/%m/%Y"))
                } else {
                    r["dateStr"]
                        .as_str()
                        .and_then(|x| x.get(..10))
                        .and_then(|x| parse_day(x, "%d/%m/%Y"))
                };
                day.is_some_and(|day| day >= from && day <= to)
            })
            .cloned()
            .collect();
        if !is_calls {
            return Resp::json(StatusCode::OK, &Value::Array(rows));
        }
        let Some(page) = req.query_param("page") else {
            if from != to {
                return journal_error(
                    StatusCode::BAD_REQUEST,
                    "without page, dateFrom must equal dateTo (one day)",
                );
            }
            return Resp::json(StatusCode::OK, &Value::Array(rows));
        };
        let page: usize = match page.parse() {
            Ok(p) if p >= 1 => p,
            _ => return journal_error(StatusCode::BAD_REQUEST, "page must be >= 1"),
        };
        let limit: usize = match req.query_param("limit").map(|l| l.parse::<usize>()) {
            None => 1000,
            Some(Ok(l)) if (1..=1000).contains(&l) => l,
            Some(_) => return journal_error(StatusCode::BAD_REQUEST, "limit must be 1..1000"),
        };
        let total = rows.len();
        let records: Vec<Value> = rows
            .into_iter()
            .skip((page - 1) * limit)
            .take(limit)
            .collect();
        Resp::json(
            StatusCode::OK,
            &json!({"page": page, "pageTotal": total.div_ceil(limit), "pageSize": limit,
                    "recordsTotal": total, "records": records}),
        )
    }

    fn check_order(i: usize, o: &Value, require_number: bool, errs: &mut Vec<(String, String)>) {
        if !o.is_object() {
            errs.push((format!("orders[{i}]"), "must be an object".into()));
            return;
        }
        if require_number && o["orderNumber"].as_str().is_none_or(str::is_empty) {
            errs.push((
                format!("orders[{i}].orderNumber"),
                "must not be empty".into(),
            ));
        }
        for f in ["statusDate", "orderDate", "updateDate"] {
            if let Some(v) = o.get(f).filter(|v| !v.is_null())
                && !v.as_str().is_some_and(valid_date)
            {
                errs.push((
                    format!("orders[{i}].{f}"),
                    "expected format dd-mm-yyyy HH:MM:SS".into(),
                ));
            }
        }
        for f in ["revenue", "margin"] {
            if let Some(v) = o.get(f).filter(|v| !v.is_null()) {
                let ok = v.is_number() || v.as_str().is_some_and(|s| s.parse::<f64>().is_ok());
                if !ok {
                    errs.push((format!("orders[{i}].{f}"), "must be a decimal".into()));
                }
            }
        }
        if let Some(m) = o.get("matching").filter(|v| !v.is_null()) {
            let ok = m
                .as_array()
                .is_some_and(|a| a.iter().all(|x| x["type"].is_string()));
            if !ok {
                errs.push((
                    format!("orders[{i}].matching"),
                    "must be a list of objects with a type".into(),
                ));
            }
        }
    }

    fn orders_of(body: &Value) -> Result<&Vec<Value>, Resp> {
        body["orders"]
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| validation(vec![("orders".into(), "must be a non-empty list".into())]))
    }

    fn create(&self, body: &Value) -> Resp {
        let orders = match Self::orders_of(body) {
            Ok(o) => o,
            Err(r) => return r,
        };
        let mut errs = Vec::new();
        for (i, o) in orders.iter().enumerate() {
            Self::check_order(i, o, true, &mut errs);
        }
        if !errs.is_empty() {
            return validation(errs);
        }
        let mut d = lock(&self.data);
        let mut out = Vec::new();
        for o in orders {
            let number = o["orderNumber"].as_str().unwrap_or_default();
            if let Some(existing) = d.deals.iter().find(|x| x["orderNumber"] == number) {
                out.push(match d.duplicate_policy {
                    DuplicatePolicy::Reject => json!({
                        "orderNumber": number,
                        "error": match &d.duplicate_error {
                            Some(text) => text.replace("{number}", number),
                            None => format!("Сделка с номером '{number}' уже существует"),
                        },
                    }),
                    DuplicatePolicy::ReturnExisting => json!({
                        "calltouchOrderId": existing["calltouchOrderId"],
                        "orderNumber": number,
                    }),
                });
                continue;
            }
            let id = d.next_id;
            d.next_id += 1;
            let mut deal: Map<String, Value> = o.as_object().cloned().unwrap_or_default();
            let tags = tags_of(&o["addTags"]);
            deal.insert("calltouchOrderId".into(), json!(id));
            deal.insert("crm".into(), body["crm"].clone());
            deal.insert("tags".into(), json!(tags));
            let comments: Vec<Value> = o["comment"]["text"]
                .as_str()
                .map(|t| vec![json!(t)])
                .unwrap_or_default();
            deal.insert("comments".into(), json!(comments));
            deal.insert("updates".into(), json!([]));
            d.deals.push(Value::Object(deal));
            out.push(json!({"calltouchOrderId": id, "orderNumber": number}));
        }
        Resp::json(StatusCode::OK, &json!({"data": {"orders": out}}))
    }

    fn update(&self, body: &Value) -> Resp {
        let orders = match Self::orders_of(body) {
            Ok(o) => o,
            Err(r) => return r,
        };
        let mut errs = Vec::new();
        for (i, o) in orders.iter().enumerate() {
            Self::check_order(i, o, true, &mut errs);
        }
        if !errs.is_empty() {
            return validation(errs);
        }
        let mut d = lock(&self.data);
        let mut out = Vec::new();
        for o in orders {
            let number = o["orderNumber"].as_str().unwrap_or_default();
            let Some(deal) = d.deals.iter_mut().find(|x| x["orderNumber"] == number) else {
                out.push(json!({
                    "orderNumber": number,
                    "error": format!("Сделка с номером '{number}' не найдена"),
                }));
                continue;
            };
            for (k, v) in o.as_object().into_iter().flatten() {
                match k.as_str() {
                    "orderNumber" => {}
                    "addNewComment" => {
                        if let (Some(t), Some(c)) =
                            (v["text"].as_str(), deal["comments"].as_array_mut())
                        {
                            c.push(json!(t));
                        }
                    }
                    "addTags" => {
                        let new = tags_of(&v["tags"]);
                        let overwrite = v["overwrite"].as_bool().unwrap_or(false);
                        let mut tags: Vec<String> = if overwrite {
                            Vec::new()
                        } else {
                            tags_of(&deal["tags"])
                        };
                        for t in new {
                            if !tags.contains(&t) {
                                tags.push(t);
                            }
                        }
                        deal["tags"] = json!(tags);
                    }
                    "reMatching" => deal["matching"] = v.clone(),
                    _ => deal[k.as_str()] = v.clone(),
                }
            }
            if let Some(u) = deal["updates"].as_array_mut() {
                u.push(o.clone());
            }
            out.push(json!({"calltouchOrderId": deal["calltouchOrderId"], "orderNumber": number}));
        }
        Resp::json(StatusCode::OK, &json!({"data": {"orders": out}}))
    }

    fn delete(&self, body: &Value) -> Resp {
        let orders = match Self::orders_of(body) {
            Ok(o) => o,
            Err(r) => return r,
        };
        let mut d = lock(&self.data);
        let mut out = Vec::new();
        for o in orders {
            let number = o["orderNumber"].as_str().unwrap_or_default();
            let before = d.deals.len();
            d.deals.retain(|x| x["orderNumber"] != number);
            if d.deals.len() == before {
                out.push(json!({"orderNumber": number, "error": "not found"}));
            } else {
                out.push(json!({"orderNumber": number}));
            }
        }
        Resp::json(StatusCode::OK, &json!({"data": {"orders": out}}))
    }

    fn handle(&self, req: &Req) -> Resp {
        if let Some(segs) = req.segments_after(CALLS_SERVICE_PREFIX) {
            return self.journal(req, &segs);
        }
        let Some(segs) = req.segments_after(LEAD_SERVICE_PREFIX) else {
            return Resp::json(StatusCode::NOT_FOUND, &json!({"error": "Not Found"}));
        };
        let token = req.header("access-token");
        if token != Some(self.token.as_str()) || self.token.is_empty() {
            return Resp::json(
                StatusCode::UNAUTHORIZED,
                &json!({"error": "Unauthorized", "message": "Access-Token is missing or invalid"}),
            );
        }
        if req.header("siteid") != Some(self.site_id.as_str()) {
            return Resp::json(
                StatusCode::FORBIDDEN,
                &json!({"error": "Forbidden", "message": "No access to this SiteId"}),
            );
        }
        let s: Vec<&str> = segs.iter().map(String::as_str).collect();
        if !matches!(
            s.as_slice(),
            ["client-order", "create" | "update" | "delete"]
        ) {
            return Resp::json(StatusCode::NOT_FOUND, &json!({"error": "Not Found"}));
        }
        if req.method != Method::POST {
            return Resp::json(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "Method Not Allowed"}),
            );
        }
        let ct = req.header("content-type").unwrap_or_default();
        if !ct.to_ascii_lowercase().starts_with("application/json") {
            return Resp::json(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &json!({"error": "Unsupported Media Type", "message": "Content-Type must be application/json"}),
            );
        }
        let body: Value = match serde_json::from_slice(&req.body) {
            Ok(v) => v,
            Err(e) => return validation(vec![("body".into(), format!("invalid JSON: {e}"))]),
        };
        match s.get(1).copied() {
            Some("create") => self.create(&body),
            Some("update") => self.update(&body),
            _ => self.delete(&body),
        }
    }
}

impl Vendor for CtVendor {
    fn secret_headers(&self) -> &'static [&'static str] {
        &["access-token", "authorization"]
    }

    fn secret_params(&self) -> &'static [&'static str] {
        &["clientApiId", "access_token"]
    }

    fn fault_response(&self, fault: &Fault, _req: &Req) -> Resp {
        match fault {
            Fault::TooManyRequests => {
                let secs = lock(&self.0.data).retry_after_secs.to_string();
                Resp::json(
                    StatusCode::TOO_MANY_REQUESTS,
                    &json!({"error": "Too Many Requests"}),
                )
                .with_header("retry-after", &secs)
            }
            _ => Resp::json(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"error": "Internal Server Error"}),
            ),
        }
    }

    fn handle(&self, req: &Req) -> Resp {
        self.0.handle(req)
    }
}
