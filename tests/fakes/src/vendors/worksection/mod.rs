//! Fake Worksection admin API v2 (`https://{account}.worksection.com/api/admin/v2/`)
//! and the webhooks Worksection sends.
//!
//! Mirrors (see `shared/connectors/src/vendors/worksection/API.md`):
//! * one endpoint, [`ADMIN_PATH`] (with or without the trailing slash), GET
//!   or POST, the operation named by the `action` parameter;
//! * two auth schemes, both accepted on every request:
//!   1. md5: the parameters in the query string, the **last** one `hash`,
//!      valid iff `hash == hex(md5(<raw query as received minus the trailing
//!      "&hash=…"> + admin_key))` — recomputed over the raw bytes received,
//!      so order and encoding matter; a POST may add an
//!      `application/x-www-form-urlencoded` body whose parameters are merged
//!      (they are not covered by the hash);
//!   2. header (official SDK 2.1): `Authorization: Admin {unix_ts}_{hex(HMAC-SHA256(key=admin_key,
//!      msg="{action}:{unix_ts}"))}`, `action` in the query string, the other
//!      parameters in a JSON body (`application/json`) or the query;
//!
//!   A missing or invalid one → `{"status":"error","status_code":2,
//!   "message":"Action hash is missed or invalid"}`. [`FakeWorksection::auth_schemes`]
//!   lists the scheme (`"hash"` / `"header"`) of every accepted request; the
//!   request log redacts `hash`, `http_pass` and `Authorization`;
//! * every answer is HTTP 200: `{"status":"ok","data":…}` or
//!   `{"status":"error","status_code":N,"message":"…","message_details":"…"?}`
//!   (codes: 2 auth, 4 `Project is invalid`, 5 `Task is invalid`,
//!   10 `Field is required` with the field in `message_details`,
//!   11 `Invalid email`, 12 `Task is already closed` / `Task is already active`);
//!   ids are strings;
//! * actions: `get_projects` (`filter` = active|pending|archive),
//!   `get_project`, `get_users`, `post_task`, `get_task`, `get_tasks`
//!   (`id_project`, active tasks), `get_all_tasks`, `update_task`,
//!   `complete_task`, `reopen_task`, `get_events` (`period` = 1..360`m` |
//!   1..72`h` | 1..30`d`, optional `id_project`; newest first),
//!   `add_webhook` / `get_webhooks` / `delete_webhook`;
//! * `post_task` answers `data` as the task object, or, with
//!   [`FakeWorksection::post_task_data_as_list`], as a list holding it (both
//!   forms are seen from Worksection);
//! * `post_task` creates the task in an archived or pending project too, as
//!   the real API does (the integration must check the project status);
//!   input dates `DD.MM.YYYY`, output `date_start`/`date_end` `YYYY-MM-DD`,
//!   `date_added`/`date_closed` `YYYY-MM-DD HH:MM`, `priority` a string;
//!   unassigned `user_to` is `{"id":"1","email":"NOONE","name":"Executive isn't assigned"}`,
//!   `ANY` is `{"id":"2","email":"ANY","name":"Anyone"}`;
//! * `add_webhook` probes the URL like the real one: POSTs `[]`
//!   (`application/json`, Basic auth when `http_user` is given) and requires
//!   HTTP 200 with a JSON body whose `status` is `OK` (case-insensitive)
//!   within 5 s, else code 11 `Url should respond 200 HTTP_CODE and JSON {status:OK}`;
//!   answers `{"status":"ok","id":<number>}`;
//! * webhooks are not delivered automatically: a test sends one with
//!   [`FakeWorksection::send_webhook`] (a JSON array of events, the receiver
//!   contract being 200 + `{"status":"OK"}`), e.g. the payload of
//!   [`FakeWorksection::close_event_json`] in the production shape
//!   (`object.page` `/task/{id}/`, numeric ids).
//!
//! Uncertain upstream (the fake's choice in brackets):
//! * whether both auth schemes stay accepted [both are]; the header
//!   timestamp window [|ts − now| ≤ 300 s, against the real system clock,
//!   not the fake clock];
//! * an unknown or missing `action` [code 1 `Action is invalid`];
//! * invalid `priority` (not an integer 0..10), a date not in `DD.MM.YYYY`,
//!   a `filter`/`period`/`events` value outside the documented set [code 10
//!   `Field is invalid`, `message_details` = the parameter name]; default
//!   priority [`"1"`]; unknown `email_user_from` [code 11 `Invalid email`];
//!   `update_task` without any field [code 10 `At least one of fields required`];
//! * the archived project status literal [`archive`];
//! * the account time zone [UTC; the fake clock moves with
//!   [`FakeWorksection::advance_clock`]];
//! * `complete_task`'s answer [`{"status":"ok","data":<task>}`];
//!   `get_webhooks` items [`{"id":"<string>","url","events","projects","http_user"}`];
//! * the acting user of API writes [the account owner, `owner@example.com`,
//!   created at start; see [`FakeWorksection::owner_id`]];
//! * rate limit (1 request/s is folklore) [off by default; with
//!   [`FakeWorksection::set_rate_limit`] HTTP 429 `{"status":"error","message":"Too many requests"}`];
//!   injected faults: `TooManyRequests` → that 429, `ServerError` → 500
//!   `text/html` `Internal Server Error`;
//! * `tags` [stored as a list of names, answered as `tags: ["…"]` when set];
//!   `subscribe`, `mention`, `todo`, `hidden`, `max_time`, `max_money`,
//!   `id_parent` [accepted and ignored — read them from the request log].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use hmac::{Hmac, Mac};
use http::{Method, StatusCode};
use md5::{Digest, Md5};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::FakeError;
use crate::server::{self, BoxFuture, Fault, Req, Resp, Server, Vendor, common_methods, lock};
use crate::util::PerSecondLimit;

/// The admin API v2 path (also served with a trailing slash).
pub const ADMIN_PATH: &str = "/api/admin/v2";

/// The events a webhook can subscribe to.
pub const WEBHOOK_EVENTS: &[&str] = &[
    "post_task",
    "post_comment",
    "post_project",
    "update_task",
    "update_comment",
    "update_project",
    "delete_task",
    "delete_comment",
    "close_task",
];

/// The code-11 message of a failed `add_webhook` probe.
pub const PROBE_ERROR: &str = "Url should respond 200 HTTP_CODE and JSON {status:OK}";

/// How long a webhook receiver may take (the documented 5 s).
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// The header-auth timestamp window, in seconds.
pub const HEADER_AUTH_WINDOW_SECS: i64 = 300;

const OWNER_EMAIL: &str = "owner@example.com";
const OWNER_NAME: &str = "Account Owner";

/// The outcome of [`FakeWorksection::send_webhook`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDelivery {
    /// The receiver's HTTP status.
    pub status: u16,
    /// The receiver's body.
    pub body: String,
    /// Whether Worksection counts it as delivered: 200 and a JSON body whose
    /// `status` is `OK` (case-insensitive).
    pub ok: bool,
}

#[derive(Debug, Clone)]
struct User {
    id: String,
    email: String,
    name: String,
}

impl User {
    fn json(&self) -> Value {
        json!({"id": self.id, "email": self.email, "name": self.name})
    }
}

#[derive(Debug, Clone)]
struct Project {
    id: String,
    name: String,
    status: String,
    date_added: DateTime<Utc>,
}

#[derive(Debug, Clone)]
struct Task {
    id: String,
    project_id: String,
    name: String,
    done: bool,
    priority: u8,
    user_from: Value,
    user_to: Value,
    date_added: DateTime<Utc>,
    date_start: Option<NaiveDate>,
    date_end: Option<NaiveDate>,
    date_closed: Option<DateTime<Utc>>,
    text: Option<String>,
    tags: Vec<String>,
}

#[derive(Debug, Clone)]
struct Event {
    at: DateTime<Utc>,
    action: &'static str,
    task_id: String,
    project_id: String,
    user_from: Value,
    new: Option<Value>,
    old: Option<Value>,
}

#[derive(Debug, Clone)]
struct Webhook {
    id: u64,
    url: String,
    events: String,
    projects: String,
    http_user: Option<String>,
    http_pass: Option<String>,
}

#[derive(Debug)]
struct Data {
    users: Vec<User>,
    projects: Vec<Project>,
    tasks: Vec<Task>,
    events: Vec<Event>,
    webhooks: Vec<Webhook>,
    next_user: u64,
    next_project: u64,
    next_task: u64,
    next_webhook: u64,
    clock_offset: chrono::Duration,
    auth_schemes: Vec<&'static str>,
    rate_limit: PerSecondLimit,
    /// `post_task` answers `data: [<task>]` instead of `data: <task>`.
    post_task_data_as_list: bool,
}

struct Inner {
    admin_key: String,
    data: Mutex<Data>,
}

/// A running fake Worksection account. Dropping it stops the server.
pub struct FakeWorksection {
    server: Server,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FakeWorksection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeWorksection")
            .field("addr", &self.server.addr)
            .finish()
    }
}

type R<T> = Result<T, Resp>;

fn ok_data(data: Value) -> Resp {
    Resp::json(StatusCode::OK, &json!({"status": "ok", "data": data}))
}

fn ok_plain() -> Resp {
    Resp::json(StatusCode::OK, &json!({"status": "ok"}))
}

fn ws_err(code: u32, message: &str, details: Option<&str>) -> Resp {
    let mut v = json!({"status": "error", "status_code": code, "message": message});
    if let Some(d) = details {
        v["message_details"] = json!(d);
    }
    Resp::json(StatusCode::OK, &v)
}

fn required(field: &str) -> Resp {
    ws_err(10, "Field is required", Some(field))
}

fn invalid(field: &str) -> Resp {
    ws_err(10, "Field is invalid", Some(field))
}

fn fmt_minute(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M").to_string()
}

fn fmt_date(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

fn noone() -> Value {
    json!({"id": "1", "email": "NOONE", "name": "Executive isn't assigned"})
}

fn anyone() -> Value {
    json!({"id": "2", "email": "ANY", "name": "Anyone"})
}

/// `DD.MM.YYYY` only.
fn parse_ddmmyyyy(s: &str) -> Option<NaiveDate> {
    let b = s.as_bytes();
    let shape_ok = b.len() == 10
        && b.get(2) == Some(&b'.')
        && b.get(5) == Some(&b'.')
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 2 || i == 5 || c.is_ascii_digit());
    if !shape_ok {
        return None;
    }
    NaiveDate::parse_from_str(s, "%d.%m.%Y").ok()
}

/// `1m..360m`, `1h..72h`, `1d..30d`.
fn parse_period(s: &str) -> Option<chrono::Duration> {
    let s = s.trim();
    let unit = s.chars().last()?;
    let n: i64 = s.get(..s.len() - 1)?.parse().ok()?;
    match unit {
        'm' if (1..=360).contains(&n) => Some(chrono::Duration::minutes(n)),
        'h' if (1..=72).contains(&n) => Some(chrono::Duration::hours(n)),
        'd' if (1..=30).contains(&n) => Some(chrono::Duration::days(n)),
        _ => None,
    }
}

/// The request's parameters: query (without `hash`), then a form or JSON body.
#[derive(Debug, Default)]
struct Params(Vec<(String, String)>);

impl Params {
    fn from_req(req: &Req) -> Self {
        let mut pairs: Vec<(String, String)> = req
            .query_pairs()
            .into_iter()
            .filter(|(k, _)| k != "hash")
            .collect();
        let ct = req.header("content-type").unwrap_or_default();
        if ct.starts_with("application/x-www-form-urlencoded") {
            pairs.extend(req.form_pairs());
        } else if ct.starts_with("application/json")
            && let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(&req.body)
        {
            for (k, v) in m {
                let s = match v {
                    Value::Null => continue,
                    Value::String(s) => s,
                    Value::Bool(b) => if b { "1" } else { "0" }.to_owned(),
                    Value::Number(n) => n.to_string(),
                    Value::Array(a) => a
                        .iter()
                        .map(|x| match x {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .collect::<Vec<_>>()
                        .join(","),
                    other @ Value::Object(_) => other.to_string(),
                };
                pairs.push((k, s));
            }
        }
        Params(pairs)
    }

    /// The first non-empty value.
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, v)| key == k && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    fn require(&self, k: &str) -> R<&str> {
        self.get(k).ok_or_else(|| required(k))
    }
}

/// What the synchronous part of a request leads to.
enum Step {
    Done(Resp),
    /// `add_webhook` validated; the URL must be probed before it is stored.
    Probe(Webhook),
}

impl FakeWorksection {
    /// Starts a fake account with this admin API key. It has one user, the
    /// owner `owner@example.com`, and no projects.
    pub async fn start(admin_key: &str) -> Result<Self, FakeError> {
        let mut inner_out = None;
        let server = server::serve(|_| {
            let inner = Arc::new(Inner {
                admin_key: admin_key.to_owned(),
                data: Mutex::new(Data {
                    users: vec![User {
                        id: "1001".to_owned(),
                        email: OWNER_EMAIL.to_owned(),
                        name: OWNER_NAME.to_owned(),
                    }],
                    projects: Vec::new(),
                    tasks: Vec::new(),
                    events: Vec::new(),
                    webhooks: Vec::new(),
                    next_user: 1002,
                    next_project: 6601,
                    next_task: 330_001,
                    next_webhook: 130,
                    clock_offset: chrono::Duration::zero(),
                    auth_schemes: Vec::new(),
                    rate_limit: PerSecondLimit::default(),
                    post_task_data_as_list: false,
                }),
            });
            inner_out = Some(inner.clone());
            Arc::new(WsVendor(inner))
        })
        .await?;
        let inner = inner_out.ok_or_else(|| FakeError::Invalid("server not built".into()))?;
        Ok(FakeWorksection { server, inner })
    }

    common_methods!();

    /// `http://127.0.0.1:PORT` — the stand-in for `https://{account}.worksection.com`;
    /// the admin API is at [`ADMIN_PATH`].
    pub fn base_url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// `{base_url}/api/admin/v2/`.
    pub fn admin_url(&self) -> String {
        format!("http://{}{ADMIN_PATH}/", self.server.addr)
    }

    /// The admin API key accepted.
    pub fn admin_key(&self) -> &str {
        &self.inner.admin_key
    }

    /// The id of the account owner (`owner@example.com`), who acts for API writes.
    pub fn owner_id(&self) -> String {
        "1001".to_owned()
    }

    /// Adds a user; returns its id.
    pub fn add_user(&self, email: &str, name: &str) -> String {
        let mut d = lock(&self.inner.data);
        let id = d.next_user.to_string();
        d.next_user += 1;
        d.users.push(User {
            id: id.clone(),
            email: email.to_owned(),
            name: name.to_owned(),
        });
        id
    }

    /// Adds an active project; returns its id.
    pub fn add_project(&self, name: &str) -> String {
        let mut d = lock(&self.inner.data);
        let id = d.next_project.to_string();
        d.next_project += 1;
        let now = Inner::now(&d);
        d.projects.push(Project {
            id: id.clone(),
            name: name.to_owned(),
            status: "active".to_owned(),
            date_added: now,
        });
        id
    }

    /// Sets a project's status: `active`, `pending` or `archive`.
    pub fn set_project_status(&self, id: &str, status: &str) -> Result<(), FakeError> {
        if !matches!(status, "active" | "pending" | "archive") {
            return Err(FakeError::Invalid(format!("project status {status}")));
        }
        let mut d = lock(&self.inner.data);
        let p = d
            .projects
            .iter_mut()
            .find(|p| p.id == id)
            .ok_or_else(|| FakeError::NotFound(format!("project {id}")))?;
        p.status = status.to_owned();
        Ok(())
    }

    /// Deletes a project and its tasks (`get_project` then answers code 4).
    pub fn delete_project(&self, id: &str) -> Result<(), FakeError> {
        let mut d = lock(&self.inner.data);
        let before = d.projects.len();
        d.projects.retain(|p| p.id != id);
        if d.projects.len() == before {
            return Err(FakeError::NotFound(format!("project {id}")));
        }
        d.tasks.retain(|t| t.project_id != id);
        Ok(())
    }

    /// Snapshot of the projects, in the `get_project` shape.
    pub fn projects(&self) -> Vec<Value> {
        let d = lock(&self.inner.data);
        d.projects
            .iter()
            .map(|p| Inner::project_json(&d, p))
            .collect()
    }

    /// Snapshot of every task (active and done), in the `get_task` shape.
    pub fn tasks(&self) -> Vec<Value> {
        let d = lock(&self.inner.data);
        d.tasks.iter().map(|t| Inner::task_json(&d, t)).collect()
    }

    /// One task in the `get_task` shape.
    pub fn task(&self, id: &str) -> Option<Value> {
        let d = lock(&self.inner.data);
        d.tasks
            .iter()
            .find(|t| t.id == id)
            .map(|t| Inner::task_json(&d, t))
    }

    /// Snapshot of the events, oldest first, in the `get_events` shape.
    pub fn events(&self) -> Vec<Value> {
        let d = lock(&self.inner.data);
        d.events.iter().map(Inner::event_json).collect()
    }

    /// Snapshot of the webhooks, in the `get_webhooks` shape.
    pub fn webhooks(&self) -> Vec<Value> {
        lock(&self.inner.data)
            .webhooks
            .iter()
            .map(Inner::webhook_json)
            .collect()
    }

    /// The auth scheme (`"hash"` or `"header"`) of every accepted request,
    /// in arrival order.
    pub fn auth_schemes(&self) -> Vec<&'static str> {
        lock(&self.inner.data).auth_schemes.clone()
    }

    /// Closes a task as the user with this e-mail would in the UI: marks it
    /// done and appends a `close` event by that user.
    pub fn close_task_as_user(&self, task_id: &str, user_email: &str) -> Result<(), FakeError> {
        let mut d = lock(&self.inner.data);
        let user = Inner::user_by_email(&d, user_email)
            .ok_or_else(|| FakeError::Invalid(format!("unknown user {user_email}")))?
            .json();
        let idx = d
            .tasks
            .iter()
            .position(|t| t.id == task_id)
            .ok_or_else(|| FakeError::NotFound(format!("task {task_id}")))?;
        if d.tasks[idx].done {
            return Err(FakeError::Invalid(format!(
                "task {task_id} is already closed"
            )));
        }
        Inner::close(&mut d, idx, user);
        Ok(())
    }

    /// Opens a closed task again as the user with this e-mail would in the
    /// UI: appends a `reopen` event by that user (Worksection's webhooks
    /// have no reopen event; `get_events` lists it).
    pub fn reopen_task_as_user(&self, task_id: &str, user_email: &str) -> Result<(), FakeError> {
        let mut d = lock(&self.inner.data);
        let user = Inner::user_by_email(&d, user_email)
            .ok_or_else(|| FakeError::Invalid(format!("unknown user {user_email}")))?
            .json();
        let idx = d
            .tasks
            .iter()
            .position(|t| t.id == task_id)
            .ok_or_else(|| FakeError::NotFound(format!("task {task_id}")))?;
        if !d.tasks[idx].done {
            return Err(FakeError::Invalid(format!("task {task_id} is not closed")));
        }
        let t = &mut d.tasks[idx];
        t.done = false;
        t.date_closed = None;
        Inner::push_event(&mut d, "reopen", idx, user, None);
        Ok(())
    }

    /// The webhook payload (a JSON array with one event) Worksection would
    /// send for closing this task, in the production shape:
    /// `{"action":"close","object":{"type":"task","id":<number>,"page":"/task/{id}/"},
    /// "date_added":"YYYY-MM-DD HH:MM","user_from":{"id":<number>,"email","name"}}`.
    /// Uses the task's latest `close` event when there is one, else now and the owner.
    pub fn close_event_json(&self, task_id: &str) -> Value {
        let d = lock(&self.inner.data);
        let ev = d
            .events
            .iter()
            .rev()
            .find(|e| e.task_id == task_id && e.action == "close");
        let (at, user) = match ev {
            Some(e) => (e.at, e.user_from.clone()),
            None => (
                Inner::now(&d),
                d.users.first().map(User::json).unwrap_or(Value::Null),
            ),
        };
        let num = |v: &Value| -> Value {
            match v.as_str().and_then(|s| s.parse::<u64>().ok()) {
                Some(n) => json!(n),
                None => v.clone(),
            }
        };
        let mut user_from = user;
        if let Some(id) = user_from.get("id").map(num) {
            user_from["id"] = id;
        }
        json!([{
            "action": "close",
            "object": {"type": "task", "id": num(&json!(task_id)), "page": format!("/task/{task_id}/")},
            "date_added": fmt_minute(at),
            "user_from": user_from,
        }])
    }

    /// POSTs `events` (a JSON array) to a webhook receiver as Worksection
    /// does (`application/json`, optional Basic auth, 5 s timeout).
    pub async fn send_webhook(
        &self,
        url: &str,
        events: &Value,
        basic_auth: Option<(&str, &str)>,
    ) -> Result<WebhookDelivery, FakeError> {
        post_webhook(url, events, basic_auth).await
    }

    /// The fake's current time, `YYYY-MM-DD HH:MM` (UTC).
    pub fn now(&self) -> String {
        fmt_minute(Inner::now(&lock(&self.inner.data)))
    }

    /// Moves the fake's clock forward.
    pub fn advance_clock(&self, by: Duration) {
        lock(&self.inner.data).clock_offset +=
            chrono::Duration::from_std(by).unwrap_or_else(|_| chrono::Duration::zero());
    }

    /// More than `per_second` requests within a second → HTTP 429
    /// `{"status":"error","message":"Too many requests"}` (`None` turns it off).
    pub fn set_rate_limit(&self, per_second: Option<u32>) {
        lock(&self.inner.data).rate_limit.set(per_second);
    }

    /// How many requests the rate limit refused.
    pub fn rate_limited_count(&self) -> usize {
        lock(&self.inner.data).rate_limit.refused()
    }

    /// Whether `post_task` answers its task as a one-element list,
    /// `{"status":"ok","data":[<task>]}`, instead of the object
    /// `{"status":"ok","data":<task>}` (the default). Worksection has been
    /// seen answering both; a client must take either.
    pub fn post_task_data_as_list(&self, on: bool) {
        lock(&self.inner.data).post_task_data_as_list = on;
    }
}

/// POSTs a webhook body and judges the answer by Worksection's contract.
async fn post_webhook(
    url: &str,
    events: &Value,
    basic_auth: Option<(&str, &str)>,
) -> Result<WebhookDelivery, FakeError> {
    let client = reqwest::Client::builder()
        .timeout(WEBHOOK_TIMEOUT)
        .build()?;
    let mut rb = client
        .post(url)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(events).unwrap_or_default());
    if let Some((u, p)) = basic_auth {
        rb = rb.basic_auth(u, Some(p));
    }
    let resp = rb.send().await?;
    let status = resp.status().as_u16();
    let body = resp.text().await?;
    let ok = status == 200
        && serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.get("status").and_then(Value::as_str).map(str::to_owned))
            .is_some_and(|s| s.eq_ignore_ascii_case("ok"));
    Ok(WebhookDelivery { status, body, ok })
}

struct WsVendor(Arc<Inner>);

impl Inner {
    fn now(d: &Data) -> DateTime<Utc> {
        Utc::now() + d.clock_offset
    }

    fn user_by_email<'a>(d: &'a Data, email: &str) -> Option<&'a User> {
        d.users.iter().find(|u| u.email.eq_ignore_ascii_case(email))
    }

    fn owner(d: &Data) -> Value {
        d.users.first().map(User::json).unwrap_or(Value::Null)
    }

    fn project_ref(d: &Data, id: &str) -> Value {
        let name = d
            .projects
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.name.clone())
            .unwrap_or_default();
        json!({"id": id, "name": name, "page": format!("/project/{id}/")})
    }

    fn project_json(d: &Data, p: &Project) -> Value {
        json!({
            "id": p.id,
            "name": p.name,
            "page": format!("/project/{}/", p.id),
            "status": p.status,
            "company": "",
            "user_from": Self::owner(d),
            "user_to": {"id": "0", "email": "NOONE", "name": "Manager isn't assigned"},
            "date_added": fmt_minute(p.date_added),
        })
    }

    fn task_page(t: &Task) -> String {
        format!("/project/{}/{}/", t.project_id, t.id)
    }

    fn task_json(d: &Data, t: &Task) -> Value {
        let mut v = json!({
            "id": t.id,
            "name": t.name,
            "page": Self::task_page(t),
            "status": if t.done { "done" } else { "active" },
            "priority": t.priority.to_string(),
            "user_from": t.user_from,
            "user_to": t.user_to,
            "project": Self::project_ref(d, &t.project_id),
            "date_added": fmt_minute(t.date_added),
        });
        if let Some(s) = t.date_start {
            v["date_start"] = json!(fmt_date(s));
        }
        if let Some(e) = t.date_end {
            v["date_end"] = json!(fmt_date(e));
        }
        if let Some(c) = t.date_closed {
            v["date_closed"] = json!(fmt_minute(c));
        }
        if let Some(text) = &t.text {
            v["text"] = json!(text);
        }
        if !t.tags.is_empty() {
            v["tags"] = json!(t.tags);
        }
        v
    }

    fn event_json(e: &Event) -> Value {
        let mut v = json!({
            "action": e.action,
            "object": {"type": "task", "id": e.task_id, "page": format!("/project/{}/{}/", e.project_id, e.task_id)},
            "date_added": fmt_minute(e.at),
            "user_from": e.user_from,
        });
        if let Some(n) = &e.new {
            v["new"] = n.clone();
        }
        if let Some(o) = &e.old {
            v["old"] = o.clone();
        }
        v
    }

    fn webhook_json(w: &Webhook) -> Value {
        json!({
            "id": w.id.to_string(),
            "url": w.url,
            "events": w.events,
            "projects": w.projects,
            "http_user": w.http_user.clone().unwrap_or_default(),
        })
    }

    fn push_event(
        d: &mut Data,
        action: &'static str,
        idx: usize,
        user_from: Value,
        new_old: Option<(Value, Value)>,
    ) {
        let at = Self::now(d);
        let t = &d.tasks[idx];
        let (new, old) = match new_old {
            Some((n, o)) => (Some(n), Some(o)),
            None => (None, None),
        };
        let ev = Event {
            at,
            action,
            task_id: t.id.clone(),
            project_id: t.project_id.clone(),
            user_from,
            new,
            old,
        };
        d.events.push(ev);
    }

    fn close(d: &mut Data, idx: usize, user: Value) {
        let now = Self::now(d);
        let t = &mut d.tasks[idx];
        t.done = true;
        t.date_closed = Some(now);
        Self::push_event(d, "close", idx, user, None);
    }

    /// `Some(scheme)` when either scheme authenticates the request.
    fn auth(&self, req: &Req, action: &str) -> Option<&'static str> {
        if let Some(h) = req.header("authorization")
            && let Some((scheme, rest)) = h.trim().split_once(' ')
            && scheme.eq_ignore_ascii_case("admin")
            && let Some((ts, sig)) = rest.trim().split_once('_')
            && let Ok(ts_n) = ts.parse::<i64>()
            && (Utc::now().timestamp() - ts_n).abs() <= HEADER_AUTH_WINDOW_SECS
            && let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(self.admin_key.as_bytes())
        {
            mac.update(format!("{action}:{ts}").as_bytes());
            let expected = hex::encode(mac.finalize().into_bytes());
            if expected.eq_ignore_ascii_case(sig.trim()) && !self.admin_key.is_empty() {
                return Some("header");
            }
        }
        let q = req.query.as_str();
        let (signed, hash) = if let Some(h) = q.strip_prefix("hash=") {
            ("", h)
        } else {
            let pos = q.rfind("&hash=")?;
            (&q[..pos], &q[pos + "&hash=".len()..])
        };
        if hash.contains('&') || hash.is_empty() || self.admin_key.is_empty() {
            return None;
        }
        let mut md5 = Md5::new();
        md5.update(signed.as_bytes());
        md5.update(self.admin_key.as_bytes());
        let expected = hex::encode(md5.finalize());
        expected.eq_ignore_ascii_case(hash).then_some("hash")
    }

    fn rate_check(d: &mut Data) -> R<()> {
        if !d.rate_limit.admit() {
            return Err(too_many());
        }
        Ok(())
    }

    async fn handle_async(&self, req: &Req) -> Resp {
        match self.begin(req) {
            Step::Done(r) => r,
            Step::Probe(hook) => {
                let auth = hook
                    .http_user
                    .as_deref()
                    .map(|u| (u, hook.http_pass.as_deref().unwrap_or_default()));
                let probe = post_webhook(&hook.url, &json!([]), auth).await;
                if !probe.is_ok_and(|p| p.ok) {
                    return ws_err(11, PROBE_ERROR, None);
                }
                let mut d = lock(&self.data);
                let id = d.next_webhook;
                d.next_webhook += 1;
                d.webhooks.push(Webhook { id, ..hook });
                Resp::json(StatusCode::OK, &json!({"status": "ok", "id": id}))
            }
        }
    }

    fn begin(&self, req: &Req) -> Step {
        match self.route(req) {
            Ok(s) => s,
            Err(r) => Step::Done(r),
        }
    }

    fn route(&self, req: &Req) -> R<Step> {
        if req.path != ADMIN_PATH && req.path != format!("{ADMIN_PATH}/") {
            return Err(not_found());
        }
        if req.method != Method::GET && req.method != Method::POST {
            return Err(not_found());
        }
        let p = Params::from_req(req);
        let action = req
            .query_param("action")
            .or_else(|| p.get("action").map(str::to_owned))
            .unwrap_or_default();
        let scheme = self
            .auth(req, &action)
            .ok_or_else(|| ws_err(2, "Action hash is missed or invalid", None))?;
        let mut d = lock(&self.data);
        Self::rate_check(&mut d)?;
        d.auth_schemes.push(scheme);
        let resp = match action.as_str() {
            "get_projects" => {
                let filter = p.get("filter");
                if let Some(f) = filter
                    && !matches!(f, "active" | "pending" | "archive")
                {
                    return Err(invalid("filter"));
                }
                let rows: Vec<Value> = d
                    .projects
                    .iter()
                    .filter(|pr| filter.is_none_or(|f| pr.status == f))
                    .map(|pr| Self::project_json(&d, pr))
                    .collect();
                ok_data(Value::Array(rows))
            }
            "get_project" => {
                let id = p.require("id_project")?;
                let pr = Self::project(&d, id)?;
                ok_data(Self::project_json(&d, pr))
            }
            "get_users" => ok_data(Value::Array(d.users.iter().map(User::json).collect())),
            "post_task" => self.post_task(&mut d, &p)?,
            "get_task" => {
                let idx = Self::task_idx(&d, &p)?;
                ok_data(Self::task_json(&d, &d.tasks[idx]))
            }
            "get_tasks" => {
                let id = p.require("id_project")?;
                Self::project(&d, id)?;
                let rows: Vec<Value> = d
                    .tasks
                    .iter()
                    .filter(|t| t.project_id == id && !t.done)
                    .map(|t| Self::task_json(&d, t))
                    .collect();
                ok_data(Value::Array(rows))
            }
            "get_all_tasks" => {
                let rows: Vec<Value> = d
                    .tasks
                    .iter()
                    .filter(|t| !t.done)
                    .map(|t| Self::task_json(&d, t))
                    .collect();
                ok_data(Value::Array(rows))
            }
            "update_task" => self.update_task(&mut d, &p)?,
            "complete_task" => {
                let idx = Self::task_idx(&d, &p)?;
                if d.tasks[idx].done {
                    return Err(ws_err(12, "Task is already closed", None));
                }
                let owner = Self::owner(&d);
                Self::close(&mut d, idx, owner);
                ok_data(Self::task_json(&d, &d.tasks[idx]))
            }
            "reopen_task" => {
                let idx = Self::task_idx(&d, &p)?;
                if !d.tasks[idx].done {
                    return Err(ws_err(12, "Task is already active", None));
                }
                let t = &mut d.tasks[idx];
                t.done = false;
                t.date_closed = None;
                let owner = Self::owner(&d);
                Self::push_event(&mut d, "reopen", idx, owner, None);
                ok_plain()
            }
            "get_events" => {
                let period = p.require("period")?;
                let period = parse_period(period).ok_or_else(|| invalid("period"))?;
                let project = p.get("id_project");
                let from = Self::now(&d) - period;
                let rows: Vec<Value> = d
                    .events
                    .iter()
                    .rev()
                    .filter(|e| e.at >= from)
                    .filter(|e| project.is_none_or(|pr| e.project_id == pr))
                    .map(Self::event_json)
                    .collect();
                ok_data(Value::Array(rows))
            }
            "add_webhook" => {
                let url = p.require("url")?.to_owned();
                let events = p.require("events")?;
                let list: Vec<&str> = events.split(',').map(str::trim).collect();
                if list.iter().any(|e| !WEBHOOK_EVENTS.contains(e)) {
                    return Err(invalid("events"));
                }
                if url::Url::parse(&url).is_err() {
                    return Err(ws_err(11, PROBE_ERROR, None));
                }
                return Ok(Step::Probe(Webhook {
                    id: 0,
                    url,
                    events: list.join(","),
                    projects: p.get("projects").unwrap_or_default().to_owned(),
                    http_user: p.get("http_user").map(str::to_owned),
                    http_pass: p.get("http_pass").map(str::to_owned),
                }));
            }
            "get_webhooks" => ok_data(Value::Array(
                d.webhooks.iter().map(Self::webhook_json).collect(),
            )),
            "delete_webhook" => {
                let id = p.require("id")?;
                let before = d.webhooks.len();
                d.webhooks.retain(|w| w.id.to_string() != id);
                if d.webhooks.len() == before {
                    return Err(ws_err(10, "WebHook not found", None));
                }
                ok_plain()
            }
            _ => ws_err(1, "Action is invalid", None),
        };
        Ok(Step::Done(resp))
    }

    fn project<'a>(d: &'a Data, id: &str) -> R<&'a Project> {
        d.projects
            .iter()
            .find(|p| p.id == id)
            .ok_or_else(|| ws_err(4, "Project is invalid", None))
    }

    fn task_idx(d: &Data, p: &Params) -> R<usize> {
        let id = p.require("id_task")?;
        d.tasks
            .iter()
            .position(|t| t.id == id)
            .ok_or_else(|| ws_err(5, "Task is invalid", None))
    }

    fn user_to(d: &Data, email: &str, field: &str) -> R<Value> {
        match email {
            "NOONE" => Ok(noone()),
            "ANY" => Ok(anyone()),
            e => Self::user_by_email(d, e)
                .map(User::json)
                .ok_or_else(|| ws_err(11, "Invalid email", Some(field))),
        }
    }

    fn priority(p: &Params) -> R<Option<u8>> {
        match p.get("priority") {
            None => Ok(None),
            Some(s) => s
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= 10)
                .map(Some)
                .ok_or_else(|| invalid("priority")),
        }
    }

    fn date(p: &Params, field: &str) -> R<Option<NaiveDate>> {
        match p.get(field) {
            None => Ok(None),
            Some(s) => parse_ddmmyyyy(s.trim())
                .map(Some)
                .ok_or_else(|| invalid(field)),
        }
    }

    fn post_task(&self, d: &mut Data, p: &Params) -> R<Resp> {
        let project_id = p.require("id_project")?.to_owned();
        Self::project(d, &project_id)?;
        let title = p.require("title")?.to_owned();
        let user_to = match p.get("email_user_to") {
            None => noone(),
            Some(e) => Self::user_to(d, e, "email_user_to")?,
        };
        let user_from = match p.get("email_user_from") {
            None => Self::owner(d),
            Some(e) => Self::user_by_email(d, e)
                .map(User::json)
                .ok_or_else(|| ws_err(11, "Invalid email", Some("email_user_from")))?,
        };
        let priority = Self::priority(p)?.unwrap_or(1);
        let date_start = Self::date(p, "datestart")?;
        let date_end = Self::date(p, "dateend")?;
        let id = d.next_task.to_string();
        d.next_task += 1;
        let task = Task {
            id,
            project_id,
            name: title,
            done: false,
            priority,
            user_from: user_from.clone(),
            user_to,
            date_added: Self::now(d),
            date_start,
            date_end,
            date_closed: None,
            text: p.get("text").map(str::to_owned),
            tags: p
                .get("tags")
                .map(|t| {
                    t.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        };
        d.tasks.push(task);
        let idx = d.tasks.len() - 1;
        Self::push_event(d, "post", idx, user_from, None);
        let task = Self::task_json(d, &d.tasks[idx]);
        if d.post_task_data_as_list {
            return Ok(ok_data(json!([task])));
        }
        Ok(ok_data(task))
    }

    fn update_task(&self, d: &mut Data, p: &Params) -> R<Resp> {
        let idx = Self::task_idx(d, p)?;
        let mut new = serde_json::Map::new();
        let mut old = serde_json::Map::new();
        let cur = Self::task_json(d, &d.tasks[idx]);
        let mut t = d.tasks[idx].clone();
        let mut any = false;
        if let Some(title) = p.get("title") {
            any = true;
            t.name = title.to_owned();
        }
        if let Some(pr) = Self::priority(p)? {
            any = true;
            t.priority = pr;
        }
        if let Some(s) = Self::date(p, "datestart")? {
            any = true;
            t.date_start = Some(s);
        }
        if let Some(e) = Self::date(p, "dateend")? {
            any = true;
            t.date_end = Some(e);
        }
        if let Some(e) = p.get("email_user_to") {
            any = true;
            t.user_to = Self::user_to(d, e, "email_user_to")?;
        }
        if let Some(text) = p.get("text") {
            any = true;
            t.text = Some(text.to_owned());
        }
        if !any {
            return Err(ws_err(10, "At least one of fields required", None));
        }
        let after = Self::task_json(d, &t);
        for k in ["name", "priority", "date_start", "date_end", "text"] {
            if cur.get(k) != after.get(k) {
                new.insert(k.to_owned(), after.get(k).cloned().unwrap_or(json!("")));
                old.insert(k.to_owned(), cur.get(k).cloned().unwrap_or(json!("")));
            }
        }
        if cur["user_to"] != after["user_to"] {
            new.insert("user_to".into(), after["user_to"]["email"].clone());
            old.insert("user_to".into(), cur["user_to"]["email"].clone());
        }
        d.tasks[idx] = t;
        if !new.is_empty() {
            let owner = Self::owner(d);
            Self::push_event(
                d,
                "update",
                idx,
                owner,
                Some((Value::Object(new), Value::Object(old))),
            );
        }
        Ok(ok_data(Self::task_json(d, &d.tasks[idx])))
    }
}

fn not_found() -> Resp {
    let mut r = Resp::new(StatusCode::NOT_FOUND);
    r.body = b"Not Found".to_vec();
    r.with_header("content-type", "text/plain; charset=utf-8")
}

fn too_many() -> Resp {
    Resp::json(
        StatusCode::TOO_MANY_REQUESTS,
        &json!({"status": "error", "message": "Too many requests"}),
    )
}

impl Vendor for WsVendor {
    fn secret_headers(&self) -> &'static [&'static str] {
        &["authorization"]
    }

    fn secret_params(&self) -> &'static [&'static str] {
        &["hash", "http_pass"]
    }

    fn fault_response(&self, fault: &Fault, _req: &Req) -> Resp {
        match fault {
            Fault::TooManyRequests => too_many(),
            _ => {
                let mut r = Resp::new(StatusCode::INTERNAL_SERVER_ERROR);
                r.body = b"Internal Server Error".to_vec();
                r.with_header("content-type", "text/html; charset=utf-8")
            }
        }
    }

    /// Not used by the server (it calls [`Vendor::handle_async`]); here
    /// `add_webhook` cannot probe and answers the probe error.
    fn handle(&self, req: &Req) -> Resp {
        match self.0.begin(req) {
            Step::Done(r) => r,
            Step::Probe(_) => ws_err(11, PROBE_ERROR, None),
        }
    }

    fn handle_async<'a>(&'a self, req: &'a Req) -> BoxFuture<'a, Resp> {
        Box::pin(self.0.handle_async(req))
    }
}
