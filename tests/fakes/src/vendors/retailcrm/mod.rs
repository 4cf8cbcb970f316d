//! Fake retailCRM (Simla) API v5 (`https://{account}.retailcrm.ru/api/v5`).
//!
//! Mirrors (see `shared/connectors/src/vendors/retailcrm/API.md`, from the
//! official Go and PHP SDKs):
//! * auth: `X-API-KEY: <key>` header, or `apiKey` query / form parameter;
//!   missing → 403 `"apiKey" is missing.`, wrong → 403 `Wrong "apiKey" value.`.
//! * answers `{"success": true, …}`; errors
//!   `{"success": false, "errorMsg": "…", "errors": {field: msg}}` (400
//!   validation, 403 auth, 404 not found).
//! * GET parameters in bracket syntax (`filter[name]=…`, `filter[ids][]=1`);
//!   POST bodies `application/x-www-form-urlencoded` with JSON inside a field
//!   (`customer=<json>`, `order=<json>`, `site=<code>`, `by=`).
//! * `GET /customers` (`filter[name]` matches the full name **or** the phone,
//!   as retailCRM's maintainer says; `filter[email]`, `filter[ids][]`,
//!   `filter[externalIds][]`), `POST /customers/create` (201 `{success,id}`),
//!   `GET /customers/{id}`, `POST /customers/{id}/edit`.
//! * `GET /orders` (`filter[ids][]`, `filter[externalIds][]`,
//!   `filter[numbers][]`, `filter[customerId]`, `filter[email]`,
//!   `filter[extendedStatus][]`, `filter[sites][]`), `POST /orders/create`
//!   (201 `{success,id,order}`; a missing customer is created from the
//!   order's name/phone/email), `GET /orders/{id}`, `POST /orders/{id}/edit`.
//!   For `GET/edit …/{id}` the `by` parameter defaults to `externalId`, as in
//!   the real API; pass `by=id` for internal ids.
//! * `GET /orders/history` with `filter[sinceId]`, `filter[orderId]`,
//!   `filter[orderExternalId]`, `filter[startDate]`, `filter[endDate]`;
//!   monotonic history ids; the creation record carries the full order,
//!   change records a partial one.
//! * `GET /reference/statuses` (map keyed by code), `/reference/status-groups`,
//!   `/reference/sites`; `GET /api/credentials`, `GET /api/api-versions`.
//! * pagination: `limit` ∈ {20, 50, 100} (default 20), `page` ≥ 1, answer
//!   `pagination{limit,totalCount,currentPage,totalPageCount}`.
//! * dates `Y-m-d H:i:s` (the fake uses Moscow time).
//!
//! Uncertain (the fake's choice in brackets):
//! * `filter[email]` exactness [case-insensitive substring];
//! * phone matching by `filter[name]` [digits of the query are a substring of
//!   a phone's digits, when the query is a phone-like string of ≥ 5 digits];
//! * create with a duplicate `externalId` [400 `Errors in the entity format`,
//!   `errors.externalId`];
//! * limit 250 [rejected like any other value];
//! * rate-limit answer [strict mode: 503 `Rate limit exceeded` like the SDK
//!   mocks; an injected `TooManyRequests` is 429 with `Retry-After` seconds];
//! * the status code of a missing `apiKey` [403];
//! * an unknown `site` [400 `Errors in the input parameters`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Map, Value, json};

use crate::FakeError;
use crate::server::{self, Fault, Req, Resp, Server, Vendor, common_methods, lock};
use crate::util::{PerSecondLimit, now_msk, parse_naive};

/// The path prefix of API v5.
pub const API_PREFIX: &str = "/api/v5";

const DEFAULT_STATUSES: &[(&str, &str, &str)] = &[
    ("new", "Новый", "new"),
    ("client-confirmed", "Согласовано с клиентом", "approval"),
    ("assembling", "Комплектуется", "assembling"),
    ("send-to-delivery", "Передан в доставку", "delivery"),
    ("delivering", "Доставляется", "delivery"),
    ("complete", "Выполнен", "complete"),
    ("cancel-other", "Отменен", "cancel"),
];

const STATUS_GROUPS: &[(&str, &str)] = &[
    ("new", "Новый"),
    ("approval", "Согласование"),
    ("assembling", "Комплектация"),
    ("delivery", "Доставка"),
    ("complete", "Выполнен"),
    ("cancel", "Отменен"),
];

#[derive(Debug, Clone)]
struct Status {
    code: String,
    name: String,
    group: String,
}

#[derive(Debug)]
struct Data {
    customers: Vec<Value>,
    orders: Vec<Value>,
    history: Vec<Value>,
    next_customer: i64,
    next_order: i64,
    next_history: i64,
    statuses: Vec<Status>,
    sites: Vec<String>,
    clock_offset: chrono::Duration,
    retry_after_secs: u64,
    rate_limit: PerSecondLimit,
}

struct Inner {
    /// The key accepted; a test may revoke it (`set_api_key`).
    api_key: Mutex<String>,
    data: Mutex<Data>,
}

/// A running fake retailCRM. Dropping it stops the server.
pub struct FakeRetailCrm {
    server: Server,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FakeRetailCrm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeRetailCrm")
            .field("addr", &self.server.addr)
            .finish()
    }
}

type R<T> = Result<T, Resp>;

fn ok(status: StatusCode, mut v: Value) -> Resp {
    v["success"] = json!(true);
    Resp::json(status, &v)
}

fn err(status: StatusCode, msg: &str, errors: Option<Value>) -> Resp {
    let mut v = json!({"success": false, "errorMsg": msg});
    if let Some(e) = errors {
        v["errors"] = e;
    }
    Resp::json(status, &v)
}

fn input_error(field: &str, msg: &str) -> Resp {
    err(
        StatusCode::BAD_REQUEST,
        "Errors in the input parameters",
        Some(json!({ field: msg })),
    )
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

impl FakeRetailCrm {
    /// Starts a fake accepting the API key `api_key`, with one site `main`.
    pub async fn start(api_key: &str) -> Result<Self, FakeError> {
        let mut inner_out = None;
        let server = server::serve(|_| {
            let inner = Arc::new(Inner {
                api_key: Mutex::new(api_key.to_owned()),
                data: Mutex::new(Data {
                    customers: Vec::new(),
                    orders: Vec::new(),
                    history: Vec::new(),
                    next_customer: 1,
                    next_order: 1,
                    next_history: 1,
                    statuses: DEFAULT_STATUSES
                        .iter()
                        .map(|(c, n, g)| Status {
                            code: (*c).to_owned(),
                            name: (*n).to_owned(),
                            group: (*g).to_owned(),
                        })
                        .collect(),
                    sites: vec!["main".to_owned()],
                    clock_offset: chrono::Duration::zero(),
                    retry_after_secs: 1,
                    rate_limit: PerSecondLimit::default(),
                }),
            });
            inner_out = Some(inner.clone());
            Arc::new(RcVendor(inner))
        })
        .await?;
        let inner = inner_out.ok_or_else(|| FakeError::Invalid("server not built".into()))?;
        Ok(FakeRetailCrm { server, inner })
    }

    common_methods!();

    /// `http://127.0.0.1:PORT` — the stand-in for `https://{account}.retailcrm.ru`;
    /// the API is under `/api/v5`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// The API key accepted.
    pub fn api_key(&self) -> String {
        lock(&self.inner.api_key).clone()
    }

    /// Accepts `key` from now on and refuses any other, as retailCRM does
    /// once an administrator replaces or deletes a key.
    pub fn set_api_key(&self, key: &str) {
        *lock(&self.inner.api_key) = key.to_owned();
    }

    /// Replaces the site codes the key can access (default `["main"]`). With
    /// more than one, creates must name `site`.
    pub fn set_sites(&self, sites: &[&str]) {
        lock(&self.inner.data).sites = sites.iter().map(|s| (*s).to_owned()).collect();
    }

    /// Adds an order status.
    pub fn add_status(&self, code: &str, name: &str, group: &str) {
        lock(&self.inner.data).statuses.push(Status {
            code: code.to_owned(),
            name: name.to_owned(),
            group: group.to_owned(),
        });
    }

    /// Snapshot of all customers.
    pub fn customers(&self) -> Vec<Value> {
        lock(&self.inner.data).customers.clone()
    }

    /// Snapshot of all orders.
    pub fn orders(&self) -> Vec<Value> {
        lock(&self.inner.data).orders.clone()
    }

    /// One order by internal id.
    pub fn order(&self, id: i64) -> Option<Value> {
        lock(&self.inner.data)
            .orders
            .iter()
            .find(|o| o["id"] == id)
            .cloned()
    }

    /// Snapshot of the order history records.
    pub fn history(&self) -> Vec<Value> {
        lock(&self.inner.data).history.clone()
    }

    /// Puts a customer in directly (as if created in the UI); returns its id.
    pub fn insert_customer(&self, customer: Value) -> Result<i64, FakeError> {
        let mut d = lock(&self.inner.data);
        self.inner
            .create_customer(&mut d, customer, None)
            .map_err(|r| FakeError::Invalid(String::from_utf8_lossy(&r.body).into_owned()))
    }

    /// Changes an order's status as a user would (history `source: "user"`).
    pub fn set_order_status(&self, id: i64, code: &str) -> Result<(), FakeError> {
        let mut d = lock(&self.inner.data);
        if !d.statuses.iter().any(|s| s.code == code) {
            return Err(FakeError::Invalid(format!("unknown status {code}")));
        }
        let idx = d
            .orders
            .iter()
            .position(|o| o["id"] == id)
            .ok_or_else(|| FakeError::NotFound(format!("order {id}")))?;
        let patch = json!({"status": code});
        self.inner.apply_edit(&mut d, idx, &patch, "user");
        Ok(())
    }

    /// A user changes the status of one of an order's payments: one history
    /// record, `field: "payments.status"`, carrying the payment (`id`,
    /// `type`, `status`, `externalId`, `amount`), as retailCRM's history
    /// reports payment changes.
    pub fn set_payment_status(
        &self,
        order_id: i64,
        payment_id: i64,
        status: &str,
    ) -> Result<(), FakeError> {
        let mut d = lock(&self.inner.data);
        let order = d
            .orders
            .iter()
            .find(|o| o["id"] == order_id)
            .cloned()
            .ok_or_else(|| FakeError::NotFound(format!("order {order_id}")))?;
        let now = self.inner.now(&d);
        let hid = d.next_history;
        d.next_history += 1;
        d.history.push(json!({
            "id": hid,
            "createdAt": now,
            "created": false,
            "deleted": false,
            "source": "user",
            "user": {"id": 1},
            "field": "payments.status",
            "oldValue": {"code": "not-paid"},
            "newValue": {"code": status},
            "payment": {"id": payment_id, "type": "cash", "status": status, "externalId": null,
                        "amount": order["totalSumm"].clone()},
            "order": {"id": order["id"], "externalId": order["externalId"], "number": order["number"],
                      "site": order["site"], "status": order["status"]},
        }));
        Ok(())
    }

    /// Edits an order as a user would (history `source: "user"` per changed field).
    pub fn edit_order_as_user(&self, id: i64, patch: Value) -> Result<(), FakeError> {
        let mut d = lock(&self.inner.data);
        let idx = d
            .orders
            .iter()
            .position(|o| o["id"] == id)
            .ok_or_else(|| FakeError::NotFound(format!("order {id}")))?;
        self.inner.apply_edit(&mut d, idx, &patch, "user");
        Ok(())
    }

    /// Moves the fake's clock forward.
    pub fn advance_clock(&self, by: Duration) {
        lock(&self.inner.data).clock_offset +=
            chrono::Duration::from_std(by).unwrap_or_else(|_| chrono::Duration::zero());
    }

    /// `Retry-After` seconds of an injected `TooManyRequests` (default 1).
    pub fn set_retry_after_secs(&self, secs: u64) {
        lock(&self.inner.data).retry_after_secs = secs;
    }

    /// Strict mode: more than `per_second` requests in a second → 503
    /// `Rate limit exceeded` (`None` turns it off).
    pub fn set_rate_limit(&self, per_second: Option<u32>) {
        lock(&self.inner.data).rate_limit.set(per_second);
    }

    /// How many requests strict mode refused.
    pub fn rate_limited_count(&self) -> usize {
        lock(&self.inner.data).rate_limit.refused()
    }
}

struct RcVendor(Arc<Inner>);

/// GET query or POST form parameters, bracket keys kept verbatim.
struct Params(Vec<(String, String)>);

impl Params {
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, k: &str) -> Vec<String> {
        let with_brackets = format!("{k}[]");
        self.0
            .iter()
            .filter(|(key, _)| {
                *key == with_brackets || key.starts_with(&format!("{k}[")) && key.ends_with(']')
            })
            .map(|(_, v)| v.clone())
            .collect()
    }
}

impl Inner {
    fn now(&self, d: &Data) -> String {
        now_msk(d.clock_offset)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string()
    }

    fn check_site(&self, d: &Data, site: Option<&str>, required: bool) -> R<String> {
        match site {
            Some(s) if d.sites.iter().any(|x| x == s) => Ok(s.to_owned()),
            Some(s) => Err(input_error(
                "site",
                &format!("Site with code \"{s}\" not found"),
            )),
            None if required && d.sites.len() > 1 => Err(err(
                StatusCode::BAD_REQUEST,
                "Parameter 'site' is missing",
                None,
            )),
            None => Ok(d.sites.first().cloned().unwrap_or_default()),
        }
    }

    fn parse_entity(p: &Params, name: &str) -> R<Map<String, Value>> {
        let raw = p.get(name).ok_or_else(|| {
            err(
                StatusCode::BAD_REQUEST,
                &format!("Parameter '{name}' is missing"),
                None,
            )
        })?;
        match serde_json::from_str::<Value>(raw) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(err(
                StatusCode::BAD_REQUEST,
                "Errors in the entity format",
                Some(json!({ name: "Invalid JSON" })),
            )),
        }
    }

    fn validate_email(v: &Map<String, Value>) -> R<()> {
        if let Some(e) = v.get("email").and_then(Value::as_str)
            && !e.is_empty()
            && !e.contains('@')
        {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "Errors in the entity format",
                Some(json!({"email": "This value is not a valid email address."})),
            ));
        }
        Ok(())
    }

    fn create_customer(&self, d: &mut Data, customer: Value, site: Option<&str>) -> R<i64> {
        let Value::Object(mut m) = customer else {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "Errors in the entity format",
                None,
            ));
        };
        Self::validate_email(&m)?;
        if let Some(ext) = m.get("externalId").and_then(Value::as_str)
            && d.customers.iter().any(|c| c["externalId"] == ext)
        {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "Errors in the entity format",
                Some(json!({"externalId": "Customer with this externalId already exists."})),
            ));
        }
        let site = self.check_site(d, site.or(m.get("site").and_then(Value::as_str)), false)?;
        let id = d.next_customer;
        d.next_customer += 1;
        m.insert("id".into(), json!(id));
        m.insert("site".into(), json!(site));
        m.insert("createdAt".into(), json!(self.now(d)));
        m.entry("contragent")
            .or_insert(json!({"contragentType": "individual"}));
        m.entry("customFields").or_insert(json!({}));
        m.entry("tags").or_insert(json!([]));
        m.entry("phones").or_insert(json!([]));
        m.entry("vip").or_insert(json!(false));
        m.entry("bad").or_insert(json!(false));
        m.entry("type").or_insert(json!("customer"));
        d.customers.push(Value::Object(m));
        Ok(id)
    }

    fn customer_matches(c: &Value, p: &Params) -> bool {
        if let Some(name) = p.get("filter[name]").filter(|s| !s.is_empty()) {
            let full = ["lastName", "firstName", "patronymic"]
                .iter()
                .filter_map(|f| c[*f].as_str())
                .collect::<Vec<_>>()
                .join(" ")
                .to_lowercase();
            let by_name = full.contains(&name.to_lowercase());
            let q = digits(name);
            let phone_like = q.len() >= 5
                && name
                    .chars()
                    .all(|ch| ch.is_ascii_digit() || "+()- ".contains(ch));
            let by_phone = phone_like
                && c["phones"].as_array().is_some_and(|ps| {
                    ps.iter().any(|ph| {
                        ph["number"]
                            .as_str()
                            .is_some_and(|n| digits(n).contains(&q))
                    })
                });
            if !(by_name || by_phone) {
                return false;
            }
        }
        if let Some(email) = p.get("filter[email]").filter(|s| !s.is_empty())
            && !c["email"]
                .as_str()
                .is_some_and(|e| e.to_lowercase().contains(&email.to_lowercase()))
        {
            return false;
        }
        let ids = p.all("filter[ids]");
        if !ids.is_empty()
            && !ids
                .iter()
                .any(|i| scalar(&c["id"]).as_deref() == Some(i.as_str()))
        {
            return false;
        }
        let ext = p.all("filter[externalIds]");
        if !ext.is_empty() && !ext.iter().any(|i| c["externalId"] == i.as_str()) {
            return false;
        }
        true
    }

    fn order_matches(o: &Value, p: &Params) -> bool {
        let checks: [(&str, &str); 4] = [
            ("filter[ids]", "id"),
            ("filter[externalIds]", "externalId"),
            ("filter[numbers]", "number"),
            ("filter[extendedStatus]", "status"),
        ];
        for (param, field) in checks {
            let want = p.all(param);
            if !want.is_empty() && !want.iter().any(|w| scalar(&o[field]).as_deref() == Some(w)) {
                return false;
            }
        }
        let sites = p.all("filter[sites]");
        if !sites.is_empty() && !sites.iter().any(|s| o["site"] == s.as_str()) {
            return false;
        }
        if let Some(cid) = p.get("filter[customerId]")
            && scalar(&o["customer"]["id"]).as_deref() != Some(cid)
        {
            return false;
        }
        if let Some(email) = p.get("filter[email]").filter(|s| !s.is_empty())
            && !o["email"]
                .as_str()
                .is_some_and(|e| e.to_lowercase().contains(&email.to_lowercase()))
        {
            return false;
        }
        true
    }

    fn paginate(p: &Params, rows: Vec<Value>) -> R<(Vec<Value>, Value)> {
        let limit = match p.get("limit") {
            None => 20,
            Some(l) => match l.parse::<usize>() {
                Ok(n @ (20 | 50 | 100)) => n,
                _ => {
                    return Err(input_error(
                        "limit",
                        "The value you selected is not a valid choice.",
                    ));
                }
            },
        };
        let page = match p.get("page") {
            None => 1,
            Some(s) => match s.parse::<usize>() {
                Ok(n) if n >= 1 => n,
                _ => {
                    return Err(input_error(
                        "page",
                        "This value should be greater than or equal to 1.",
                    ));
                }
            },
        };
        let total = rows.len();
        let pages = total.div_ceil(limit);
        let out = rows
            .into_iter()
            .skip((page - 1) * limit)
            .take(limit)
            .collect();
        Ok((
            out,
            json!({"limit": limit, "totalCount": total, "currentPage": page, "totalPageCount": pages}),
        ))
    }

    fn find_customer_ref(d: &Data, v: &Value) -> Option<usize> {
        if let Some(id) = v["id"].as_i64() {
            return d.customers.iter().position(|c| c["id"] == id);
        }
        if let Some(ext) = v["externalId"].as_str() {
            return d.customers.iter().position(|c| c["externalId"] == ext);
        }
        None
    }

    fn customer_snapshot(c: &Value) -> Value {
        let mut s = json!({"type": "customer", "id": c["id"]});
        for f in [
            "externalId",
            "firstName",
            "lastName",
            "patronymic",
            "email",
            "phones",
            "site",
        ] {
            if !c[f].is_null() {
                s[f] = c[f].clone();
            }
        }
        s
    }

    fn create_order(&self, d: &mut Data, p: &Params) -> R<Value> {
        let mut m = Self::parse_entity(p, "order")?;
        Self::validate_email(&m)?;
        let site = self.check_site(
            d,
            p.get("site").or(m.get("site").and_then(Value::as_str)),
            true,
        )?;
        if let Some(ext) = m.get("externalId").and_then(Value::as_str)
            && d.orders.iter().any(|o| o["externalId"] == ext)
        {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "Errors in the entity format",
                Some(json!({"externalId": "Order with this externalId already exists."})),
            ));
        }
        let status = m
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("new")
            .to_owned();
        if !d.statuses.iter().any(|s| s.code == status) {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "Errors in the entity format",
                Some(json!({"status": format!("Status \"{status}\" does not exist.")})),
            ));
        }
        let customer_idx = match m.get("customer") {
            Some(c) if !c.is_null() => match Self::find_customer_ref(d, c) {
                Some(i) => i,
                None => {
                    return Err(err(
                        StatusCode::BAD_REQUEST,
                        "Errors in the entity format",
                        Some(json!({"customer": "Customer not found."})),
                    ));
                }
            },
            _ => {
                let mut c = json!({});
                for f in ["firstName", "lastName", "patronymic", "email"] {
                    if let Some(v) = m.get(f) {
                        c[f] = v.clone();
                    }
                }
                if let Some(ph) = m.get("phone").and_then(Value::as_str) {
                    c["phones"] = json!([{"number": ph}]);
                }
                self.create_customer(d, c, Some(&site))?;
                d.customers.len().saturating_sub(1)
            }
        };
        let customer = Self::customer_snapshot(&d.customers[customer_idx]);
        let id = d.next_order;
        d.next_order += 1;
        let now = self.now(d);
        let items = m
            .get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let summ: f64 = items
            .iter()
            .map(|i| {
                i["initialPrice"].as_f64().unwrap_or(0.0) * i["quantity"].as_f64().unwrap_or(1.0)
                    - i["discountManualAmount"].as_f64().unwrap_or(0.0)
            })
            .sum();
        m.insert("id".into(), json!(id));
        m.entry("number").or_insert(json!(format!("{id}A")));
        m.insert("status".into(), json!(status));
        m.insert("site".into(), json!(site));
        m.insert("customer".into(), customer.clone());
        m.insert("contact".into(), customer);
        m.insert("createdAt".into(), json!(now));
        m.insert("statusUpdatedAt".into(), json!(now));
        m.insert("summ".into(), json!(summ));
        m.insert("totalSumm".into(), json!(summ));
        m.entry("prepaySum").or_insert(json!(0.0));
        m.entry("purchaseSumm").or_insert(json!(0.0));
        m.entry("customFields").or_insert(json!({}));
        m.entry("orderMethod").or_insert(json!("phone"));
        m.entry("orderType").or_insert(json!("eshop-individual"));
        m.insert("items".into(), json!(items));
        m.insert("payments".into(), json!({}));
        m.insert("fromApi".into(), json!(true));
        m.entry("contragent")
            .or_insert(json!({"contragentType": "individual"}));
        let order = Value::Object(m);
        d.orders.push(order.clone());
        let hid = d.next_history;
        d.next_history += 1;
        d.history.push(json!({
            "id": hid,
            "createdAt": now,
            "created": true,
            "source": "api",
            "field": "status",
            "oldValue": null,
            "newValue": {"code": status},
            "apiKey": {"current": true},
            "order": order,
        }));
        Ok(order)
    }

    /// Applies `patch` to order `idx`, writing one history record per changed field.
    fn apply_edit(&self, d: &mut Data, idx: usize, patch: &Value, source: &str) {
        let now = self.now(d);
        let mut records = Vec::new();
        let mut order = d.orders[idx].clone();
        for (k, v) in patch.as_object().into_iter().flatten() {
            if matches!(k.as_str(), "id" | "number" | "createdAt" | "site") {
                continue;
            }
            if k == "customFields" {
                for (ck, cv) in v.as_object().into_iter().flatten() {
                    let old = order["customFields"][ck].clone();
                    if old != *cv {
                        records.push((format!("custom_{ck}"), old, cv.clone()));
                        order["customFields"][ck] = cv.clone();
                    }
                }
                continue;
            }
            let old = order[k.as_str()].clone();
            if old == *v {
                continue;
            }
            if k == "status" {
                records.push(("status".into(), json!({"code": old}), json!({"code": v})));
                order["statusUpdatedAt"] = json!(now);
            } else {
                records.push((k.clone(), old, v.clone()));
            }
            order[k.as_str()] = v.clone();
        }
        if patch.get("items").is_some() {
            let summ: f64 = order["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| {
                    i["initialPrice"].as_f64().unwrap_or(0.0)
                        * i["quantity"].as_f64().unwrap_or(1.0)
                })
                .sum();
            order["summ"] = json!(summ);
            order["totalSumm"] = json!(summ);
        }
        let partial = json!({
            "id": order["id"], "externalId": order["externalId"], "number": order["number"],
            "site": order["site"], "status": order["status"],
        });
        for (field, old, new) in records {
            let hid = d.next_history;
            d.next_history += 1;
            let mut rec = json!({
                "id": hid,
                "createdAt": now,
                "created": false,
                "deleted": false,
                "source": source,
                "field": field,
                "oldValue": old,
                "newValue": new,
                "order": partial,
            });
            if source == "api" {
                rec["apiKey"] = json!({"current": true});
            } else {
                rec["user"] = json!({"id": 1});
            }
            d.history.push(rec);
        }
        d.orders[idx] = order;
    }

    fn find_by(rows: &[Value], key: &str, by: &str) -> Option<usize> {
        rows.iter().position(|r| match by {
            "id" => scalar(&r["id"]).as_deref() == Some(key),
            _ => r["externalId"] == key,
        })
    }

    fn by_param(p: &Params) -> R<String> {
        match p.get("by") {
            None => Ok("externalId".into()),
            Some(b @ ("id" | "externalId")) => Ok(b.to_owned()),
            Some(_) => Err(input_error("by", "Value must be \"id\" or \"externalId\".")),
        }
    }

    fn auth(&self, req: &Req, p: &Params) -> R<()> {
        let key = req
            .header("x-api-key")
            .map(str::to_owned)
            .or_else(|| p.get("apiKey").map(str::to_owned));
        match key {
            None => Err(err(StatusCode::FORBIDDEN, "\"apiKey\" is missing.", None)),
            Some(k) if k == *lock(&self.api_key) && !k.is_empty() => Ok(()),
            Some(_) => Err(err(StatusCode::FORBIDDEN, "Wrong \"apiKey\" value.", None)),
        }
    }

    fn rate_check(&self) -> R<()> {
        let mut d = lock(&self.data);
        if !d.rate_limit.admit() {
            return Err(
                err(StatusCode::SERVICE_UNAVAILABLE, "Rate limit exceeded", None)
                    .with_header("retry-after", "1"),
            );
        }
        Ok(())
    }

    fn handle(&self, req: &Req) -> Resp {
        let mut pairs = req.query_pairs();
        if req.method == Method::POST {
            pairs.extend(req.form_pairs());
        }
        let p = Params(pairs);
        match self.route(req, &p) {
            Ok(r) | Err(r) => r,
        }
    }

    fn route(&self, req: &Req, p: &Params) -> R<Resp> {
        // Unversioned helpers.
        if req.path == "/api/api-versions" {
            return Ok(ok(
                StatusCode::OK,
                json!({"versions": ["3.0", "4.0", "5.0"]}),
            ));
        }
        let is_credentials = req.path == "/api/credentials";
        let segs = if is_credentials {
            Vec::new()
        } else {
            req.segments_after(API_PREFIX)
                .ok_or_else(|| err(StatusCode::NOT_FOUND, "API method not found", None))?
        };
        self.auth(req, p)?;
        self.rate_check()?;
        let mut d = lock(&self.data);
        if is_credentials {
            return Ok(ok(
                StatusCode::OK,
                json!({"scopes": ["customer_read", "customer_write", "order_read", "order_write", "reference_read"],
                       "siteAccess": "access_full", "sitesAvailable": d.sites}),
            ));
        }
        let s: Vec<&str> = segs.iter().map(String::as_str).collect();
        let m = &req.method;
        match (m, s.as_slice()) {
            (&Method::GET, ["customers"]) => {
                let rows: Vec<Value> = d
                    .customers
                    .iter()
                    .filter(|c| Self::customer_matches(c, p))
                    .cloned()
                    .collect();
                let (rows, pagination) = Self::paginate(p, rows)?;
                Ok(ok(
                    StatusCode::OK,
                    json!({"pagination": pagination, "customers": rows}),
                ))
            }
            (&Method::POST, ["customers", "create"]) => {
                let c = Self::parse_entity(p, "customer")?;
                let id = self.create_customer(&mut d, Value::Object(c), p.get("site"))?;
                Ok(ok(StatusCode::CREATED, json!({"id": id})))
            }
            (&Method::POST, ["customers", key, "edit"]) => {
                let by = Self::by_param(p)?;
                let patch = Self::parse_entity(p, "customer")?;
                Self::validate_email(&patch)?;
                let idx = Self::find_by(&d.customers, key, &by)
                    .ok_or_else(|| err(StatusCode::NOT_FOUND, "Not found", None))?;
                let c = &mut d.customers[idx];
                for (k, v) in patch {
                    if !matches!(k.as_str(), "id" | "createdAt") {
                        c[k] = v;
                    }
                }
                Ok(ok(
                    StatusCode::OK,
                    json!({"id": c["id"], "state": "updated"}),
                ))
            }
            (&Method::GET, ["customers", key]) => {
                let by = Self::by_param(p)?;
                let idx = Self::find_by(&d.customers, key, &by)
                    .ok_or_else(|| err(StatusCode::NOT_FOUND, "Not found", None))?;
                Ok(ok(StatusCode::OK, json!({"customer": d.customers[idx]})))
            }
            (&Method::GET, ["orders"]) => {
                let rows: Vec<Value> = d
                    .orders
                    .iter()
                    .filter(|o| Self::order_matches(o, p))
                    .cloned()
                    .collect();
                let (rows, pagination) = Self::paginate(p, rows)?;
                Ok(ok(
                    StatusCode::OK,
                    json!({"pagination": pagination, "orders": rows}),
                ))
            }
            (&Method::POST, ["orders", "create"]) => {
                let order = self.create_order(&mut d, p)?;
                Ok(ok(
                    StatusCode::CREATED,
                    json!({"id": order["id"], "order": order}),
                ))
            }
            (&Method::GET, ["orders", "history"]) => self.history(&d, p),
            (&Method::POST, ["orders", key, "edit"]) => {
                let by = Self::by_param(p)?;
                let patch = Self::parse_entity(p, "order")?;
                Self::validate_email(&patch)?;
                if let Some(code) = patch.get("status").and_then(Value::as_str)
                    && !d.statuses.iter().any(|s| s.code == code)
                {
                    return Err(err(
                        StatusCode::BAD_REQUEST,
                        "Errors in the entity format",
                        Some(json!({"status": format!("Status \"{code}\" does not exist.")})),
                    ));
                }
                let idx = Self::find_by(&d.orders, key, &by)
                    .ok_or_else(|| err(StatusCode::NOT_FOUND, "Not found", None))?;
                self.apply_edit(&mut d, idx, &Value::Object(patch), "api");
                let order = d.orders[idx].clone();
                Ok(ok(
                    StatusCode::OK,
                    json!({"id": order["id"], "order": order}),
                ))
            }
            (&Method::GET, ["orders", key]) => {
                let by = Self::by_param(p)?;
                let idx = Self::find_by(&d.orders, key, &by)
                    .ok_or_else(|| err(StatusCode::NOT_FOUND, "Not found", None))?;
                Ok(ok(StatusCode::OK, json!({"order": d.orders[idx]})))
            }
            (&Method::GET, ["reference", "statuses"]) => {
                let mut map = Map::new();
                for (i, s) in d.statuses.iter().enumerate() {
                    map.insert(
                        s.code.clone(),
                        json!({"name": s.name, "code": s.code, "active": true, "ordering": (i + 1) * 10, "group": s.group}),
                    );
                }
                Ok(ok(StatusCode::OK, json!({"statuses": map})))
            }
            (&Method::GET, ["reference", "status-groups"]) => {
                let mut map = Map::new();
                for (i, (code, name)) in STATUS_GROUPS.iter().enumerate() {
                    let statuses: Vec<&str> = d
                        .statuses
                        .iter()
                        .filter(|s| s.group == *code)
                        .map(|s| s.code.as_str())
                        .collect();
                    map.insert(
                        (*code).to_owned(),
                        json!({"name": name, "code": code, "active": true, "ordering": (i + 1) * 10,
                               "process": true, "statuses": statuses}),
                    );
                }
                Ok(ok(StatusCode::OK, json!({"statusGroups": map})))
            }
            (&Method::GET, ["reference", "sites"]) => {
                let mut map = Map::new();
                for s in &d.sites {
                    map.insert(
                        s.clone(),
                        json!({"code": s, "name": s, "url": format!("https://{s}.example")}),
                    );
                }
                Ok(ok(StatusCode::OK, json!({"sites": map})))
            }
            _ => Err(err(StatusCode::NOT_FOUND, "API method not found", None)),
        }
    }

    fn history(&self, d: &Data, p: &Params) -> R<Resp> {
        let since = match p.get("filter[sinceId]") {
            None => None,
            Some(s) => Some(
                s.parse::<i64>()
                    .map_err(|_| input_error("children[sinceId]", "This value is not valid."))?,
            ),
        };
        let date = |k: &str| -> R<Option<chrono::NaiveDateTime>> {
            match p.get(k) {
                None => Ok(None),
                Some(s) => parse_naive(s)
                    .or_else(|| {
                        chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                            .ok()
                            .and_then(|dt| dt.and_hms_opt(0, 0, 0))
                    })
                    .map(Some)
                    .ok_or_else(|| {
                        input_error(
                            &format!("children[{}]", &k[7..k.len() - 1]),
                            "This value is not valid.",
                        )
                    }),
            }
        };
        let start = date("filter[startDate]")?;
        let end = date("filter[endDate]")?;
        let order_id = p.get("filter[orderId]");
        let order_ext = p.get("filter[orderExternalId]");
        let rows: Vec<Value> = d
            .history
            .iter()
            .filter(|h| since.is_none_or(|s| h["id"].as_i64().is_some_and(|i| i > s)))
            .filter(|h| {
                let at = h["createdAt"].as_str().and_then(parse_naive);
                start.is_none_or(|s| at.is_some_and(|a| a >= s))
                    && end.is_none_or(|e| at.is_some_and(|a| a <= e))
            })
            .filter(|h| order_id.is_none_or(|o| scalar(&h["order"]["id"]).as_deref() == Some(o)))
            .filter(|h| order_ext.is_none_or(|o| h["order"]["externalId"] == o))
            .cloned()
            .collect();
        let (rows, pagination) = Self::paginate(p, rows)?;
        Ok(ok(
            StatusCode::OK,
            json!({"generatedAt": self.now(d), "history": rows, "pagination": pagination}),
        ))
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Vendor for RcVendor {
    fn secret_headers(&self) -> &'static [&'static str] {
        &["x-api-key", "authorization"]
    }

    fn secret_params(&self) -> &'static [&'static str] {
        &["apiKey"]
    }

    fn fault_response(&self, fault: &Fault, _req: &Req) -> Resp {
        match fault {
            Fault::TooManyRequests => {
                let secs = lock(&self.0.data).retry_after_secs.to_string();
                err(StatusCode::TOO_MANY_REQUESTS, "Rate limit exceeded", None)
                    .with_header("retry-after", &secs)
            }
            _ => err(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error",
                None,
            ),
        }
    }

    fn handle(&self, req: &Req) -> Resp {
        self.0.handle(req)
    }
}
