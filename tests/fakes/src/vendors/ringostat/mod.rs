//! Fake Ringostat: the call-log export of the REST API and the "Webhooks
//! 2.0" call webhooks Ringostat sends to us.
//!
//! Mirrors (facts: `shared/connectors/src/vendors/ringostat/API.md`, from
//! Ringostat's help centre and integrators' clients):
//! * `GET /calls/list` on `https://api.ringostat.net`, auth by the header
//!   `Auth-key: <key>` (missing or wrong → 401); parameters `from`, `to`
//!   (`YYYY-MM-DD HH:MM:SS`, or a bare `YYYY-MM-DD` meaning midnight, as the
//!   R client sends; default `to` = now in Kyiv time, `from` = `to` − 24 h;
//!   both inclusive; unparseable or `from` after `to` → 400), `fields` (a
//!   comma list, default [`DEFAULT_FIELDS`]), `filters` (`name=value`, exact
//!   match on Ringostat's value; repeat the parameter to require several),
//!   `order` (`calldate asc|desc`, default ascending), `export_type`
//!   (`json`, the default; `csv` → 400 "not supported by the fake"). The
//!   answer is a JSON array of objects keyed by the requested field names,
//!   at most [`MAX_CALLS_PER_REQUEST`] (6,500) — the rest is cut silently,
//!   as Ringostat documents (no pagination: split the period). Calls are
//!   seeded with [`FakeRingostat::add_call`].
//! * the webhook sender [`RingostatWebhook`], configured as in Ringostat's
//!   UI: URL (may carry static query parameters, e.g. `?moment=completed`
//!   — the event, "before call" / "after call", is not part of the call and
//!   goes in the URL), method GET (parameters always in the query) or POST
//!   with a JSON or form body, the key each Ringostat value is sent under
//!   (the user picks the names), the date format, static extra parameters.
//!   [`RingostatWebhook::deliver_with_retries`] re-sends at once on a
//!   non-2xx answer or a transport error, at most 3 more times (4
//!   deliveries), as Ringostat's "actions with errors" page says.
//!
//! Uncertain upstream (the fake's choice in brackets):
//! * Webhooks 2.0 parameter names are chosen by the user in the UI, so
//!   there is no fixed payload [Ringostat's own names from the call-log
//!   export, renamed through [`RingostatWebhook::keys`]]; the canonical
//!   list of webhook values was not retrievable;
//! * value types in webhooks [every value a string, also in JSON] and in
//!   the export [`duration`, `billsec`, `waittime` numbers, the rest
//!   strings]; the default date format [`%Y-%m-%d %H:%M:%S`];
//! * retries: two official pages disagree (3 re-sends vs. none until a
//!   200) [3 re-sends, no delay; redirects are not followed and count as
//!   failures]; the sender's timeout [10 s];
//! * the 401 body [`{"error":"Unauthorized","message":"Invalid Auth-key"}`];
//!   the `filters` syntax beyond one `name=value` [repeated parameters,
//!   AND-ed]; a requested field the call lacks [a `null` value]; the export's
//!   time zone [Kyiv time]; rate limits [none; an injected `TooManyRequests` is
//!   429 with `Retry-After: 1`].
//!
//! Not modelled: `x-project-id` / `projectId` (accepted, ignored), `merge`
//! (ignored), CSV export, callbacks, SIP status, mini-CRM sync.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{NaiveDate, NaiveDateTime};
use http::{Method, StatusCode};
use serde_json::{Map, Value, json};

use crate::FakeError;
use crate::server::{self, Fault, Req, Resp, Server, Vendor, common_methods, lock};

/// The most calls one `/calls/list` answer holds.
pub const MAX_CALLS_PER_REQUEST: usize = 6500;
/// The date format of the export and the webhooks' default.
pub const DEFAULT_DATE_FORMAT: &str = "%Y-%m-%d %H:%M:%S";
/// How many times a webhook is sent at most (the first try and 3 re-sends).
pub const MAX_DELIVERIES: usize = 4;
/// The fields `/calls/list` returns when `fields` is not given.
pub const DEFAULT_FIELDS: &[&str] = &[
    "uniqueid",
    "calldate",
    "caller",
    "dst",
    "call_type",
    "disposition",
    "duration",
    "billsec",
    "waittime",
    "employee_number",
    "employee_fio",
    "recording",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "client_id",
    "pool_name",
];

/// Export fields whose JSON values are numbers.
const NUMERIC_FIELDS: &[&str] = &["duration", "billsec", "waittime"];

/// One call as Ringostat knows it. Build with [`RingostatCall::new`] and
/// the `with_*` methods, or with struct update syntax over `Default`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingostatCall {
    /// The call's id, e.g. `ua-1714061234.56789`.
    pub uniqueid: String,
    /// When the call started, in the project's time (Kyiv).
    pub calldate: NaiveDateTime,
    /// The client's number (incoming) or the employee's (outgoing).
    pub caller: String,
    /// The number called.
    pub dst: String,
    /// `in` or `out`.
    pub call_type: String,
    /// `ANSWERED`, `NO ANSWER`, `BUSY`, `FAILED`.
    pub disposition: String,
    /// Seconds from the start to the end of the call.
    pub duration: u32,
    /// Seconds of conversation.
    pub billsec: u32,
    /// Seconds the client waited.
    pub waittime: u32,
    /// The answering employee's e-mail (maps to a CRM user).
    pub employee_email: String,
    /// The employee's internal number.
    pub employee_number: String,
    /// The employee's full name.
    pub employee_fio: String,
    /// The SIP account that took the call.
    pub sip: Option<String>,
    /// Link to the recording.
    pub recording: Option<String>,
    /// UTM tags of the visit behind the call.
    pub utm_source: String,
    /// UTM medium.
    pub utm_medium: String,
    /// UTM campaign.
    pub utm_campaign: String,
    /// UTM term.
    pub utm_term: String,
    /// UTM content.
    pub utm_content: String,
    /// The Google Analytics client id.
    pub client_id: String,
    /// The number pool (dynamic substitution).
    pub pool_name: Option<String>,
}

impl Default for RingostatCall {
    /// An answered incoming call on 2026-01-01 00:00:00 with empty ids.
    fn default() -> Self {
        RingostatCall {
            uniqueid: String::new(),
            calldate: NaiveDate::from_ymd_opt(2026, 1, 1)
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .unwrap_or_default(),
            caller: String::new(),
            dst: String::new(),
            call_type: "in".to_owned(),
            disposition: "ANSWERED".to_owned(),
            duration: 0,
            billsec: 0,
            waittime: 0,
            employee_email: String::new(),
            employee_number: String::new(),
            employee_fio: String::new(),
            sip: None,
            recording: None,
            utm_source: String::new(),
            utm_medium: String::new(),
            utm_campaign: String::new(),
            utm_term: String::new(),
            utm_content: String::new(),
            client_id: String::new(),
            pool_name: None,
        }
    }
}

impl RingostatCall {
    /// An answered incoming call.
    pub fn new(uniqueid: &str, calldate: NaiveDateTime, caller: &str, dst: &str) -> Self {
        RingostatCall {
            uniqueid: uniqueid.to_owned(),
            calldate,
            caller: caller.to_owned(),
            dst: dst.to_owned(),
            ..RingostatCall::default()
        }
    }

    /// Sets `call_type` (`in`, `out`).
    pub fn with_call_type(mut self, call_type: &str) -> Self {
        self.call_type = call_type.to_owned();
        self
    }

    /// Sets `disposition` (`ANSWERED`, `NO ANSWER`, `BUSY`, `FAILED`).
    pub fn with_disposition(mut self, disposition: &str) -> Self {
        self.disposition = disposition.to_owned();
        self
    }

    /// A missed call: `NO ANSWER`, no conversation, the whole call waited.
    pub fn missed(mut self) -> Self {
        self.disposition = "NO ANSWER".to_owned();
        self.billsec = 0;
        self.waittime = self.duration;
        self
    }

    /// Sets `duration`, `billsec`, `waittime` (seconds).
    pub fn with_durations(mut self, duration: u32, billsec: u32, waittime: u32) -> Self {
        self.duration = duration;
        self.billsec = billsec;
        self.waittime = waittime;
        self
    }

    /// Sets the employee who took the call.
    pub fn with_employee(mut self, email: &str, number: &str, fio: &str) -> Self {
        self.employee_email = email.to_owned();
        self.employee_number = number.to_owned();
        self.employee_fio = fio.to_owned();
        self
    }

    /// Sets the SIP account.
    pub fn with_sip(mut self, sip: &str) -> Self {
        self.sip = Some(sip.to_owned());
        self
    }

    /// Sets the recording link.
    pub fn with_recording(mut self, url: &str) -> Self {
        self.recording = Some(url.to_owned());
        self
    }

    /// Sets the five UTM tags.
    pub fn with_utm(
        mut self,
        source: &str,
        medium: &str,
        campaign: &str,
        term: &str,
        content: &str,
    ) -> Self {
        self.utm_source = source.to_owned();
        self.utm_medium = medium.to_owned();
        self.utm_campaign = campaign.to_owned();
        self.utm_term = term.to_owned();
        self.utm_content = content.to_owned();
        self
    }

    /// Sets the Google client id.
    pub fn with_client_id(mut self, client_id: &str) -> Self {
        self.client_id = client_id.to_owned();
        self
    }

    /// Sets the number pool.
    pub fn with_pool(mut self, pool_name: &str) -> Self {
        self.pool_name = Some(pool_name.to_owned());
        self
    }

    /// The call's values under Ringostat's own parameter names, in a fixed
    /// order; `None` values are left out; `calldate` as
    /// [`DEFAULT_DATE_FORMAT`].
    pub fn values(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            ("uniqueid", self.uniqueid.clone()),
            (
                "calldate",
                self.calldate.format(DEFAULT_DATE_FORMAT).to_string(),
            ),
            ("caller", self.caller.clone()),
            ("dst", self.dst.clone()),
            ("call_type", self.call_type.clone()),
            ("disposition", self.disposition.clone()),
            ("duration", self.duration.to_string()),
            ("billsec", self.billsec.to_string()),
            ("waittime", self.waittime.to_string()),
            ("employee_email", self.employee_email.clone()),
            ("employee_number", self.employee_number.clone()),
            ("employee_fio", self.employee_fio.clone()),
        ];
        if let Some(sip) = &self.sip {
            out.push(("sip", sip.clone()));
        }
        if let Some(recording) = &self.recording {
            out.push(("recording", recording.clone()));
        }
        out.extend([
            ("utm_source", self.utm_source.clone()),
            ("utm_medium", self.utm_medium.clone()),
            ("utm_campaign", self.utm_campaign.clone()),
            ("utm_term", self.utm_term.clone()),
            ("utm_content", self.utm_content.clone()),
            ("client_id", self.client_id.clone()),
        ]);
        if let Some(pool) = &self.pool_name {
            out.push(("pool_name", pool.clone()));
        }
        out
    }

    /// One value by Ringostat's name.
    fn value(&self, name: &str) -> Option<String> {
        self.values()
            .into_iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

// ---------------------------------------------------------------------------
// The webhook sender

/// How a webhook is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WebhookMethod {
    /// Parameters in the query string (the body format is ignored).
    Get,
    /// Parameters in the body, as [`WebhookFormat`] says.
    #[default]
    Post,
}

/// The body of a POST webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WebhookFormat {
    /// A flat JSON object, every value a string.
    #[default]
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
}

/// One attempt to deliver a webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The receiver's HTTP status; `None` when no answer came (connection
    /// refused, timeout, a URL that does not parse).
    pub status: Option<u16>,
    /// The receiver's body, or the transport error.
    pub body: String,
}

impl Delivery {
    /// Whether Ringostat counts it as delivered (a 2xx answer).
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// A "Webhooks 2.0" webhook as configured in Ringostat's UI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingostatWebhook {
    /// The receiver; may already carry a query string (static parameters,
    /// e.g. `?moment=completed&token=…`).
    pub url: String,
    /// GET or POST (default POST).
    pub method: WebhookMethod,
    /// The POST body format (default JSON).
    pub format: WebhookFormat,
    /// Ringostat's name → the key the user chose. Names not in the map are
    /// sent under Ringostat's own name; a name mapped to `""` is not sent.
    pub keys: BTreeMap<String, String>,
    /// chrono format of `calldate` (default [`DEFAULT_DATE_FORMAT`]; an
    /// invalid format falls back to it).
    pub date_format: String,
    /// Static parameters sent after the call's values (custom values).
    pub extra: Vec<(String, String)>,
}

impl Default for RingostatWebhook {
    fn default() -> Self {
        RingostatWebhook {
            url: String::new(),
            method: WebhookMethod::Post,
            format: WebhookFormat::Json,
            keys: BTreeMap::new(),
            date_format: DEFAULT_DATE_FORMAT.to_owned(),
            extra: Vec::new(),
        }
    }
}

impl RingostatWebhook {
    /// A POST / JSON webhook to `url` with Ringostat's own names.
    pub fn new(url: &str) -> Self {
        RingostatWebhook {
            url: url.to_owned(),
            ..RingostatWebhook::default()
        }
    }

    /// Sends with GET (parameters in the query).
    pub fn get(mut self) -> Self {
        self.method = WebhookMethod::Get;
        self
    }

    /// Sends with POST in `format`.
    pub fn post(mut self, format: WebhookFormat) -> Self {
        self.method = WebhookMethod::Post;
        self.format = format;
        self
    }

    /// Sends Ringostat's value `name` under `key` (`""` leaves it out).
    pub fn rename(mut self, name: &str, key: &str) -> Self {
        self.keys.insert(name.to_owned(), key.to_owned());
        self
    }

    /// Leaves Ringostat's value `name` out.
    pub fn omit(self, name: &str) -> Self {
        self.rename(name, "")
    }

    /// Sets the `calldate` format (chrono syntax).
    pub fn with_date_format(mut self, format: &str) -> Self {
        self.date_format = format.to_owned();
        self
    }

    /// Adds a static parameter.
    pub fn with_extra(mut self, key: &str, value: &str) -> Self {
        self.extra.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The parameters this webhook sends for `call`, in order: the call's
    /// values under the chosen keys, then [`RingostatWebhook::extra`].
    pub fn params(&self, call: &RingostatCall) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (name, value) in call.values() {
            let key = self.keys.get(name).map_or(name, String::as_str);
            if key.is_empty() {
                continue;
            }
            let value = if name == "calldate" {
                self.format_date(call.calldate).unwrap_or(value)
            } else {
                value
            };
            out.push((key.to_owned(), value));
        }
        out.extend(self.extra.iter().cloned());
        out
    }

    /// `calldate` in [`RingostatWebhook::date_format`]; `None` when that
    /// format is invalid (chrono would panic on `to_string`).
    fn format_date(&self, at: NaiveDateTime) -> Option<String> {
        let mut text = String::new();
        write!(text, "{}", at.format(&self.date_format)).ok()?;
        Some(text)
    }

    /// Sends the webhook for `call` once.
    pub async fn deliver(&self, call: &RingostatCall) -> Delivery {
        match self.send(call).await {
            Ok(d) => d,
            Err(e) => Delivery {
                status: None,
                body: e.to_string(),
            },
        }
    }

    /// Sends, and re-sends at once after a non-2xx answer or a transport
    /// error, up to [`MAX_DELIVERIES`] attempts in all; every attempt, in order.
    pub async fn deliver_with_retries(&self, call: &RingostatCall) -> Vec<Delivery> {
        let mut out = Vec::new();
        for _ in 0..MAX_DELIVERIES {
            let d = self.deliver(call).await;
            let ok = d.ok();
            out.push(d);
            if ok {
                break;
            }
        }
        out
    }

    async fn send(&self, call: &RingostatCall) -> Result<Delivery, FakeError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let mut url = url::Url::parse(&self.url)
            .map_err(|e| FakeError::Invalid(format!("{}: {e}", self.url)))?;
        let params = self.params(call);
        let request = match (self.method, self.format) {
            (WebhookMethod::Get, _) => {
                // Appends after the URL's own static parameters with `&`.
                url.query_pairs_mut().extend_pairs(params.iter());
                client.get(url)
            }
            (WebhookMethod::Post, WebhookFormat::Json) => {
                let body: Map<String, Value> = params
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect();
                client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(Value::Object(body).to_string())
            }
            (WebhookMethod::Post, WebhookFormat::Form) => {
                let body = form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(params.iter())
                    .finish();
                client
                    .post(url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body)
            }
        };
        let resp = request.send().await?;
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        Ok(Delivery {
            status: Some(status),
            body,
        })
    }
}

// ---------------------------------------------------------------------------
// The API

#[derive(Debug, Default)]
struct Data {
    calls: Vec<RingostatCall>,
}

struct Inner {
    auth_key: String,
    data: Mutex<Data>,
}

/// A running fake Ringostat API. Dropping it stops the server.
pub struct FakeRingostat {
    server: Server,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FakeRingostat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeRingostat")
            .field("addr", &self.server.addr)
            .finish()
    }
}

type R<T> = Result<T, Resp>;

fn error(status: StatusCode, error: &str, message: &str) -> Resp {
    Resp::json(status, &json!({"error": error, "message": message}))
}

fn bad_request(message: &str) -> Resp {
    error(StatusCode::BAD_REQUEST, "Bad Request", message)
}

/// `YYYY-MM-DD HH:MM:SS` or `YYYY-MM-DD` (midnight).
fn parse_moment(s: &str) -> Option<NaiveDateTime> {
    let s = s.trim();
    NaiveDateTime::parse_from_str(s, DEFAULT_DATE_FORMAT)
        .ok()
        .or_else(|| {
            NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })
}

impl FakeRingostat {
    /// Starts a fake accepting `Auth-key: <auth_key>`.
    pub async fn start(auth_key: &str) -> Result<Self, FakeError> {
        let mut inner_out = None;
        let server = server::serve(|_| {
            let inner = Arc::new(Inner {
                auth_key: auth_key.to_owned(),
                data: Mutex::new(Data::default()),
            });
            inner_out = Some(inner.clone());
            Arc::new(RsVendor(inner))
        })
        .await?;
        let inner = inner_out.ok_or_else(|| FakeError::Invalid("server not built".into()))?;
        Ok(FakeRingostat { server, inner })
    }

    common_methods!();

    /// `http://127.0.0.1:PORT` — the stand-in for `https://api.ringostat.net`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// Adds a call to the log.
    pub fn add_call(&self, call: RingostatCall) {
        lock(&self.inner.data).calls.push(call);
    }

    /// The calls seeded so far, in order.
    pub fn calls(&self) -> Vec<RingostatCall> {
        lock(&self.inner.data).calls.clone()
    }
}

struct RsVendor(Arc<Inner>);

impl Inner {
    fn handle(&self, req: &Req) -> Resp {
        match self.route(req) {
            Ok(r) | Err(r) => r,
        }
    }

    fn route(&self, req: &Req) -> R<Resp> {
        let path = req.path.trim_end_matches('/');
        if path != "/calls/list" {
            return Err(error(StatusCode::NOT_FOUND, "Not Found", "unknown method"));
        }
        let key = req.header("auth-key").unwrap_or_default();
        if key.is_empty() || key != self.auth_key {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "Invalid Auth-key",
            ));
        }
        if req.method != Method::GET {
            return Err(error(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method Not Allowed",
                "use GET",
            )
            .with_header("allow", "GET"));
        }
        self.calls_list(req)
    }

    fn calls_list(&self, req: &Req) -> R<Resp> {
        let q = req.query_pairs();
        let get = |k: &str| {
            q.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        match get("export_type").as_deref() {
            None | Some("json") => {}
            Some("csv") => {
                return Err(bad_request(
                    "export_type=csv is not supported by the fake; use json",
                ));
            }
            Some(other) => return Err(bad_request(&format!("unknown export_type {other}"))),
        }
        let to = match get("to") {
            None => crate::vendors::zoho::kyiv_now().naive_local(),
            Some(s) => {
                parse_moment(&s).ok_or_else(|| bad_request("to must be YYYY-MM-DD HH:MM:SS"))?
            }
        };
        let from = match get("from") {
            None => to - chrono::Duration::hours(24),
            Some(s) => {
                parse_moment(&s).ok_or_else(|| bad_request("from must be YYYY-MM-DD HH:MM:SS"))?
            }
        };
        if from > to {
            return Err(bad_request("from must not be after to"));
        }
        let fields: Vec<String> = match get("fields") {
            None => DEFAULT_FIELDS.iter().map(|f| (*f).to_owned()).collect(),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|f| !f.is_empty())
                .map(str::to_owned)
                .collect(),
        };
        let mut filters = Vec::new();
        for (_, raw) in q.iter().filter(|(k, _)| k == "filters") {
            if raw.trim().is_empty() {
                continue;
            }
            let (name, value) = raw
                .split_once('=')
                .ok_or_else(|| bad_request("filters must be name=value"))?;
            filters.push((name.trim().to_owned(), value.to_owned()));
        }
        let desc = match get("order").map(|o| o.to_ascii_lowercase()) {
            None => false,
            Some(o) => match o.split_whitespace().collect::<Vec<_>>().as_slice() {
                ["calldate"] | ["calldate", "asc"] => false,
                ["calldate", "desc"] => true,
                _ => return Err(bad_request("order must be calldate asc or calldate desc")),
            },
        };

        let d = lock(&self.data);
        let mut calls: Vec<&RingostatCall> = d
            .calls
            .iter()
            .filter(|c| c.calldate >= from && c.calldate <= to)
            .filter(|c| {
                filters
                    .iter()
                    .all(|(name, value)| c.value(name).unwrap_or_default() == *value)
            })
            .collect();
        calls.sort_by_key(|c| c.calldate);
        if desc {
            calls.reverse();
        }
        let rows: Vec<Value> = calls
            .into_iter()
            .take(MAX_CALLS_PER_REQUEST)
            .map(|c| {
                let mut row = Map::new();
                for f in &fields {
                    let value = match c.value(f) {
                        Some(v) if NUMERIC_FIELDS.contains(&f.as_str()) => {
                            v.parse::<u64>().map_or(Value::String(v), Value::from)
                        }
                        Some(v) => Value::String(v),
                        None => Value::Null,
                    };
                    row.insert(f.clone(), value);
                }
                Value::Object(row)
            })
            .collect();
        Ok(Resp::json(StatusCode::OK, &Value::Array(rows)))
    }
}

impl Vendor for RsVendor {
    fn secret_headers(&self) -> &'static [&'static str] {
        &["auth-key", "authorization"]
    }

    fn secret_params(&self) -> &'static [&'static str] {
        &[]
    }

    fn fault_response(&self, fault: &Fault, _req: &Req) -> Resp {
        match fault {
            Fault::TooManyRequests => error(
                StatusCode::TOO_MANY_REQUESTS,
                "Too Many Requests",
                "rate limit exceeded",
            )
            .with_header("retry-after", "1"),
            _ => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error",
                "internal error",
            ),
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

    const KEY: &str = "rs-auth-key-Zq9";

    /// A webhook receiver on the shared server: answers `status` to the
    /// first `failures` requests, then 200; its log is what Ringostat sent.
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
            let status = if failing {
                StatusCode::from_u16(self.status).unwrap()
            } else {
                StatusCode::OK
            };
            Resp::json(status, &json!({"received": status.is_success()}))
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

    fn at(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, DEFAULT_DATE_FORMAT).unwrap()
    }

    fn sample_call() -> RingostatCall {
        RingostatCall::new(
            "ua-1714061234.56789",
            at("2026-04-25 16:07:14"),
            "380671234567",
            "380441234567",
        )
        .with_durations(95, 81, 14)
        .with_employee("anna@example.com", "102", "Anna Koval")
        .with_recording("https://rec.example/r1.mp3")
        .with_utm("google", "cpc", "brand", "", "")
        .with_client_id("1234567890.1700000000")
    }

    #[test]
    fn values_use_ringostat_names_and_skip_none() {
        let call = sample_call();
        let values = call.values();
        let names: Vec<&str> = values.iter().map(|(k, _)| *k).collect();
        assert_eq!(names.first(), Some(&"uniqueid"));
        assert!(names.contains(&"recording"));
        assert!(!names.contains(&"sip"));
        assert!(!names.contains(&"pool_name"));
        assert_eq!(
            call.value("calldate").as_deref(),
            Some("2026-04-25 16:07:14")
        );
        assert_eq!(call.value("billsec").as_deref(), Some("81"));
        let full = call.clone().with_sip("sip-102").with_pool("Google Ads");
        assert_eq!(full.values().len(), values.len() + 2);
        let missed = RingostatCall::default().with_durations(30, 30, 0).missed();
        assert_eq!(
            (missed.disposition.as_str(), missed.billsec, missed.waittime),
            ("NO ANSWER", 0, 30)
        );
    }

    #[tokio::test]
    async fn webhook_renames_keys_and_posts_json() {
        let rx = receiver(200, 0).await;
        let hook = RingostatWebhook::new(&format!(
            "http://{}/hooks/ringostat?moment=completed&token=t1",
            rx.addr
        ))
        .rename("caller", "phone")
        .rename("calldate", "call_date")
        .omit("employee_email")
        .with_date_format("%d.%m.%Y %H:%M")
        .with_extra("project_id", "42");
        let deliveries = hook.deliver_with_retries(&sample_call()).await;
        assert_eq!(deliveries.len(), 1);
        assert!(deliveries[0].ok());
        assert_eq!(deliveries[0].body, r#"{"received":true}"#);

        let seen = rx.requests();
        assert_eq!(seen.len(), 1);
        let req = &seen[0];
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/hooks/ringostat");
        assert_eq!(req.query, "moment=completed&token=t1");
        assert_eq!(req.header("content-type"), Some("application/json"));
        let body = req.json().unwrap();
        assert_eq!(body["phone"], json!("380671234567"));
        assert!(body.get("caller").is_none());
        assert!(body.get("employee_email").is_none());
        assert!(body.get("sip").is_none());
        assert_eq!(body["call_date"], json!("25.04.2026 16:07"));
        // Every value is a string, numbers too.
        assert_eq!(body["duration"], json!("95"));
        assert_eq!(body["utm_term"], json!(""));
        assert_eq!(body["project_id"], json!("42"));
        assert_eq!(body["employee_number"], json!("102"));
    }

    #[tokio::test]
    async fn webhook_get_sends_query_and_post_form_sends_body() {
        let rx = receiver(200, 0).await;
        let url = format!("http://{}/hook?moment=answered", rx.addr);
        let call = sample_call();

        let get = RingostatWebhook::new(&url)
            .get()
            .rename("uniqueid", "call_id");
        assert!(get.deliver(&call).await.ok());
        let form = RingostatWebhook::new(&url).post(WebhookFormat::Form);
        assert!(form.deliver(&call).await.ok());

        let seen = rx.requests();
        assert_eq!(seen[0].method, "GET");
        assert!(seen[0].body.is_empty());
        assert!(
            seen[0]
                .query
                .starts_with("moment=answered&call_id=ua-1714061234.56789&")
        );
        assert_eq!(
            seen[0].query_param("calldate").as_deref(),
            Some("2026-04-25 16:07:14")
        );
        assert_eq!(seen[0].query_param("uniqueid"), None);

        assert_eq!(seen[1].method, "POST");
        assert_eq!(seen[1].query, "moment=answered");
        assert_eq!(
            seen[1].header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        let pairs = seen[1].form_pairs();
        let names: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        let expected: Vec<&str> = call.values().iter().map(|(k, _)| *k).collect();
        assert_eq!(names, expected);
    }

    #[tokio::test]
    async fn webhook_resends_up_to_three_times() {
        let failing = receiver(500, usize::MAX).await;
        let hook = RingostatWebhook::new(&format!("http://{}/hook", failing.addr));
        let deliveries = hook.deliver_with_retries(&sample_call()).await;
        assert_eq!(deliveries.len(), MAX_DELIVERIES);
        assert!(deliveries.iter().all(|d| d.status == Some(500)));
        assert_eq!(failing.requests().len(), 4);
        // The same payload every time.
        let bodies: Vec<String> = failing.requests().into_iter().map(|r| r.body).collect();
        assert!(bodies.windows(2).all(|w| w[0] == w[1]));

        let flaky = receiver(404, 2).await;
        let hook = RingostatWebhook::new(&format!("http://{}/hook", flaky.addr));
        let statuses: Vec<Option<u16>> = hook
            .deliver_with_retries(&sample_call())
            .await
            .into_iter()
            .map(|d| d.status)
            .collect();
        assert_eq!(statuses, vec![Some(404), Some(404), Some(200)]);

        // Nobody listening: four transport errors.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let hook = RingostatWebhook::new(&format!("http://{addr}/hook"));
        let deliveries = hook.deliver_with_retries(&sample_call()).await;
        assert_eq!(deliveries.len(), 4);
        assert!(
            deliveries
                .iter()
                .all(|d| d.status.is_none() && !d.body.is_empty())
        );

        let bad = RingostatWebhook::new("not a url")
            .deliver(&sample_call())
            .await;
        assert_eq!(bad.status, None);
    }

    #[test]
    fn invalid_date_format_falls_back() {
        let hook = RingostatWebhook::new("http://127.0.0.1:1/").with_date_format("%Q %");
        let params = hook.params(&sample_call());
        let date = params.iter().find(|(k, _)| k == "calldate").unwrap();
        assert_eq!(date.1, "2026-04-25 16:07:14");
    }

    async fn list(rs: &FakeRingostat, key: Option<&str>, query: &[(&str, &str)]) -> (u16, Value) {
        let mut rb = reqwest::Client::new()
            .get(format!("{}/calls/list", rs.base_url()))
            .query(query);
        if let Some(key) = key {
            rb = rb.header("Auth-key", key);
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn calls_list_auth_fields_filters_and_range() {
        let rs = FakeRingostat::start(KEY).await.unwrap();
        rs.add_call(sample_call());
        rs.add_call(
            RingostatCall::new(
                "ua-2",
                at("2026-04-25 18:00:00"),
                "380501112233",
                "380441234567",
            )
            .with_utm("facebook", "social", "spring", "", "")
            .missed(),
        );
        rs.add_call(RingostatCall::new(
            "ua-3",
            at("2026-04-27 09:00:00"),
            "1",
            "2",
        ));

        let range = [
            ("from", "2026-04-25 00:00:00"),
            ("to", "2026-04-25 23:59:59"),
        ];
        assert_eq!(list(&rs, None, &range).await.0, 401);
        let (status, body) = list(&rs, Some("wrong"), &range).await;
        assert_eq!(status, 401);
        assert_eq!(body["message"], json!("Invalid Auth-key"));
        assert_eq!(rs.requests()[1].header("auth-key"), Some("***"));

        let (status, body) = list(&rs, Some(KEY), &range).await;
        assert_eq!(status, 200);
        let rows = body.as_array().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["uniqueid"], json!("ua-1714061234.56789"));
        assert_eq!(rows[0]["duration"], json!(95));
        assert_eq!(rows[0]["calldate"], json!("2026-04-25 16:07:14"));
        assert_eq!(rows[1]["pool_name"], Value::Null);
        assert_eq!(rows[0].as_object().unwrap().len(), DEFAULT_FIELDS.len());

        let mut q = range.to_vec();
        q.push(("fields", "uniqueid, caller,disposition,connected_with"));
        q.push(("filters", "utm_source=facebook"));
        let (_, body) = list(&rs, Some(KEY), &q).await;
        assert_eq!(
            body,
            json!([{"uniqueid": "ua-2", "caller": "380501112233", "disposition": "NO ANSWER", "connected_with": null}])
        );

        // A bare date means midnight; order desc.
        let (_, body) = list(
            &rs,
            Some(KEY),
            &[
                ("from", "2026-04-25"),
                ("to", "2026-04-28"),
                ("fields", "uniqueid"),
                ("order", "calldate desc"),
            ],
        )
        .await;
        assert_eq!(
            body,
            json!([{"uniqueid": "ua-3"}, {"uniqueid": "ua-2"}, {"uniqueid": "ua-1714061234.56789"}])
        );

        // Default period: the last 24 hours (Kyiv time).
        let (_, body) = list(&rs, Some(KEY), &[]).await;
        assert_eq!(body, json!([]));
        let recent = crate::vendors::zoho::kyiv_now().naive_local() - chrono::Duration::hours(1);
        rs.add_call(RingostatCall::new("ua-now", recent, "3", "4"));
        let (_, body) = list(&rs, Some(KEY), &[("fields", "uniqueid")]).await;
        assert_eq!(body, json!([{"uniqueid": "ua-now"}]));

        for bad in [
            vec![("from", "25.04.2026")],
            vec![("to", "yesterday")],
            vec![
                ("from", "2026-04-26 00:00:00"),
                ("to", "2026-04-25 00:00:00"),
            ],
            vec![("export_type", "csv")],
            vec![("filters", "no-equals-sign")],
        ] {
            let (status, body) = list(&rs, Some(KEY), &bad).await;
            assert_eq!(status, 400, "{bad:?}");
            assert!(body["message"].is_string());
        }
        let (_, body) = list(&rs, Some(KEY), &[("export_type", "csv")]).await;
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("not supported by the fake")
        );
    }

    #[tokio::test]
    async fn calls_list_caps_at_6500_and_faults() {
        let rs = FakeRingostat::start(KEY).await.unwrap();
        let start = at("2026-03-01 00:00:00");
        for i in 0..(MAX_CALLS_PER_REQUEST + 100) {
            let when = start + chrono::Duration::seconds(i64::try_from(i).unwrap());
            rs.add_call(RingostatCall::new(&format!("ua-{i}"), when, "1", "2"));
        }
        let q = [
            ("from", "2026-03-01 00:00:00"),
            ("to", "2026-03-02 00:00:00"),
            ("fields", "uniqueid"),
        ];
        let (status, body) = list(&rs, Some(KEY), &q).await;
        assert_eq!(status, 200);
        let rows = body.as_array().unwrap();
        assert_eq!(rows.len(), MAX_CALLS_PER_REQUEST);
        assert_eq!(rows[0]["uniqueid"], json!("ua-0"));

        rs.fail_next(1, Fault::TooManyRequests);
        assert_eq!(list(&rs, Some(KEY), &q).await.0, 429);
        rs.fail_next(1, Fault::ServerError);
        assert_eq!(list(&rs, Some(KEY), &q).await.0, 500);
        assert_eq!(rs.fault_count(), 2);
    }
}
