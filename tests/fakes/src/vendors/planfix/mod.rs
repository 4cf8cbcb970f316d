//! Fake Planfix: the REST API v2 (`https://{account}.planfix.com/rest/`)
//! and the chat API for third-party chats (`https://{account}.planfix.com/webchat/api`),
//! with the sender of the chat API's notifications (Planfix → provider).
//!
//! Facts from the API research, section C (Planfix help copied in
//! `electronic777/planfix-docs`: "REST API", "API для чатов", "Список команд
//! API для чатов", "Сложные фильтры контактов / задач"; the REST swagger
//! `help.planfix.com/restapidocs/swagger.json`), and the design page
//! `docs/integrations/verbox-planfix.md`. When the connector is built they
//! move to `shared/connectors/src/vendors/planfix/API.md`.
//!
//! The contract, as served ([`FakePlanfix::base_url`] is the REST base
//! `http://127.0.0.1:PORT/rest`; [`FakePlanfix::chat_endpoint`] is
//! `http://127.0.0.1:PORT/webchat/api`):
//!
//! **REST** — JSON bodies and answers.
//! * auth `Authorization: Bearer <token>` (a GET may instead pass
//!   `?access_token=`); a missing or unknown token → 401
//!   `{"result":"fail","code":1,"error":"Access denied, unknown token"}`.
//!   The start token has all of [`ALL_SCOPES`]; [`FakePlanfix::add_token`]
//!   adds one with only some. A call whose scope the token lacks → 405
//!   `{"result":"fail","code":5,"error":"Scope denied, method not allowed"}`,
//!   checked **before** the body is parsed, validated or anything looked
//!   up: an empty probe tells "scope denied" (405) from "invalid request"
//!   (400). Scopes: contact create `contact_add`, update `contact_update`,
//!   get / list `contact_readonly`; task create `task_add`, update and
//!   comment add `task_update`, get / list `task_readonly`; `POST
//!   /user/list` `user_readonly`; `GET /process/task` `process_readonly`;
//!   project list / get `project_readonly`, create `project_add`, update
//!   `project_update`; `GET /ping` none. The log redacts `authorization`,
//!   `access_token`.
//! * errors `{"result":"fail","code":N,"error":"…"}`: 400 code 30 (a body
//!   that is not a JSON object), 40 (a required parameter missing: `name`
//!   of a contact, task or project, `description` of a comment), 41 (an
//!   invalid value: a wrong type, `pageSize` outside 1..=100, a negative
//!   `offset`, a malformed or unsupported filter, a bad path id), 2004 (an
//!   e-mail without `@`); not found: 2000 `Contact not found by id N`,
//!   1000 `Task not found by id N`, 3000 `Project not found by id N`, 4000
//!   `User not found by id N` — 404 on a GET of the object, 400 when a
//!   write names it (update path, `counterparty`, people, `project`,
//!   comment on an unknown task); an unknown path → 404 code 0.
//! * `POST /contact/` (`name` required; `lastname`, `email`, `isCompany`,
//!   `phones[{number,type}]`, `description`, `customFieldData[{field{id},value}]`,
//!   `template{id}`, any other `ContactRequest` field kept as given) → 201
//!   `{"result":"success","id":N}`; ids numeric and increasing (from 101),
//!   each contact also gets a `number` (from 501). `POST /contact/{id}`
//!   (`{id}` is `12` or `contact:12`) merges the fields given (`null`
//!   removes one; `phones` replaced whole; `customFieldData` merged by
//!   field id) → 200 `{"result":"success"}`. `GET /contact/{id}?fields=…`
//!   → `{"result":"success","contact":{…}}`; phones carry `maskedNumber` =
//!   the number as given.
//! * `POST /contact/list` `{"offset","pageSize","fields","isCompany"?,"filters":[…]}`
//!   → `{"result":"success","contacts":[…]}` in id order (no total).
//!   Filters (`{type, operator: equal|notequal, value}`, AND-combined):
//!   4003 phone — the value's digits are a substring of a phone's digits;
//!   4005 e-mail, case-insensitive substring; 4026 e-mail, exact
//!   (case-insensitive); 4001 name or last name contains; 4006 is company
//!   / 4007 is person (`1`/`true`); 4231 contact number.
//! * `POST /task/` (`name` required; `description`, `template{id}`,
//!   `project{id}` (must exist), `counterparty{id}` (`5` or `contact:5`, must
//!   exist), `assignees` / `participants` / `auditors`
//!   `{users:[{id:"user:N"|"contact:N"}],groups:[{id}]}` (each must exist),
//!   `assigner{id:"user:N"}`, `customFieldData`, anything else kept) → 201
//!   `{"result":"success","id":N}` (ids from 1); each task gets a `number`
//!   from [`FIRST_TASK_NUMBER`]. `POST /task/{id}` merges like contacts →
//!   200 `{"result":"success"}`. `GET /task/{id}?fields=…` →
//!   `{"result":"success","task":{…}}`, fields `id`, `number`, `name`,
//!   `description`, `counterparty`, `assignees`, `participants`, `template`,
//!   `project`, `commentsCount`, …. `POST /task/list` with filters
//!   [`TASK_NUMBER_FILTER`] (57, "task number": an integer or an array of
//!   them) and [`TASK_COUNTERPARTY_FILTER`] (7, `5` or `contact:5`) →
//!   `{"result":"success","tasks":[…]}`. `POST /task/{id}/comments/`
//!   `{"description","owner":{"id":"user:N"|"contact:N"}?}` → 201
//!   `{"result":"success","id":N}` ([`FakePlanfix::comments`]).
//!   `POST /task/{id}/comments/list` `{"offset","pageSize","fields"?}` →
//!   `{"result":"success","comments":[{"id","description","dateTime":{"date":"DD-MM-YYYY","time":"HH:MM","datetime":"YYYY-MM-DDTHH:MMZ"},"owner":{"id"}|null}]}`,
//!   oldest first, the chat's messages among them (scope `task_readonly`).
//! * `fields` (a comma list; numbers select `customFieldData` entries by
//!   field id) chooses what a get or list answers, besides `id`, which is
//!   always there. Without it a contact or task is answered as `id` and
//!   `name` only (the research: "the default set is minimal — always send
//!   `fields`").
//! * `POST /user/list` `{"offset","pageSize","onlyActive"?}` →
//!   `{"result":"success","users":[{"id","name","lastname","email","role","status"}]}`;
//!   user 1 is the token's robot (role `Robot`); [`FakePlanfix::add_user`]
//!   adds employees (role `User`, status `Active`).
//! * `GET /process/task` → `{"result":"success","processes":[{"id":1,"name":"Default"}]}`;
//!   `POST /project/list` → `{"result":"success","projects":[…]}` (none at
//!   start); `POST /project/` (`name` required) → 201; `GET /project/{id}`;
//!   `POST /project/{id}` → 200, unknown → 400 code 3000. Projects exist
//!   for the scope probes and a task's `project`.
//!
//! **Chat API** (provider → Planfix) — `POST /webchat/api`, body
//! `application/x-www-form-urlencoded` (anything else → 400
//! `{"error":"Invalid parameters"}`), answers JSON or an empty body.
//! * every command: `cmd`, `providerId` (non-empty, no `~`), `planfix_token`
//!   (≠ the chat token → 401 `{"error":"Invalid token"}`, checked before
//!   the other parameters). A missing or bad parameter, or an unknown
//!   `cmd` → 400 `{"error":"Invalid parameters"}` — nothing more specific,
//!   as Planfix documents. The log redacts `planfix_token` and `token`.
//! * `newMessage`: `chatId`, `contactId`, `contactName` required; `message`
//!   required, empty only when attachments come; optional `title`,
//!   `contactLastName`, `contactEmail`, `contactPhone`, `contactData`,
//!   `contactIco`, `channel`, `isEcho` (`true`/`false`/`1`/`0`),
//!   `userEmail`, repeated `attachments[name]` / `attachments[url]` pairs
//!   (as many names as URLs), `data_<Field>`. The first message of a chat
//!   (`providerId` + `chatId`) makes the chat's contact — or reuses the one
//!   this `providerId` + `contactId` already has — and the chat's task
//!   (REST-visible, with a number, name = `title` or `Chat with
//!   <contactName>`, counterparty the contact); every message of the chat
//!   is appended to it ([`FakePlanfix::chat_messages`]) and added as a
//!   comment of its task. → 200, empty body.
//! * `getTask` (`chatId`) → `{"data":{"number":N}}`; unknown → 400
//!   `{"error":"task not found"}` (also for the first
//!   [`FakePlanfix::set_get_task_lag`] calls after the chat began: Planfix
//!   makes the task asynchronously). `getContact` (`contactId`) →
//!   `{"data":{"number":N}}`, unknown → 400 `{"error":"unknown contact"}`.
//!   `updateContact` (`contactId`, `contactName`, optional
//!   `contactLastName`, `contactEmail`, `contactPhone`, `contactData`) → 200
//!   empty. `messageStatus` (`messageId` — one the fake sent, known from
//!   before its POST, so a provider may report it before answering —,
//!   `messageStatus` `error`/`sent`/`read`, anything else counts as
//!   `sent`, `messageStatusText`?) → 200 empty ([`FakePlanfix::message_statuses`]).
//!
//! **Planfix → provider** (the fake as sender; form-encoded POSTs to a URL
//! the test gives, never sent on its own):
//! * [`FakePlanfix::send_operator_reply`]: `cmd=newMessage`, `providerId`
//!   ([`FakePlanfix::set_provider_id`], default [`DEFAULT_PROVIDER_ID`]),
//!   `chatId`, `contactPhone`?, `token` (the provider's key), `message`,
//!   `messageId`, `userName`, `userLastName`, `userIco` (empty), `taskEmail`
//!   (`task+<number>@`[`ACCOUNT_HOST`]), then the attachment pairs. The
//!   provider answers 200 `{"chatId","contactId"}`.
//! * [`FakePlanfix::send_first_message`]: the same without `chatId`, with
//!   `contactPhone` — an operator writing first from a contact's card. The
//!   answer's `chatId` and `contactId` (both required) bind a new chat
//!   ([`FakePlanfix::bound_chats`]); later replies use that `chatId`.
//!
//! **Faults** (`fail_next`, `set_fault_rate`, … apply to REST and chat
//! alike): `ServerError` → 500 `{"result":"fail","code":0,"error":"Internal server error"}`
//! on REST, 500 `{"error":"Internal server error"}` on the chat endpoint;
//! `TooManyRequests` → 429 `{"result":"fail","code":22,…}` / 429
//! `{"error":"Too many requests"}`, without a retry header.
//!
//! Where the research is silent (the fake's choice in brackets): the task
//! number filter [type 57, as in Planfix's "Сложные фильтры задач"; type 71
//! there means "assignee is an employee" and is refused here like any
//! filter type not listed above — 400 code 41]; filters on `/user/list`
//! [refused, code 41: the fake would otherwise answer every user];
//! not-found statuses [404 on a GET, 400 on a write]; error texts beyond
//! those quoted; the first chat message's task name [`Chat with
//! <contactName>`]; `contactData` [the contact's `description`]; the
//! contact a later message names [kept: the chat keeps its first contact;
//! `updateContact` changes it]; `updateContact` / `messageStatus` for an
//! unknown contact / message id [400 `Invalid parameters`]; an empty
//! message without attachments [400]; `taskEmail`'s host
//! [[`ACCOUNT_HOST`]]; the first message's task [made before sending, so
//! `taskEmail` can name it; it stays when the provider refuses];
//! `send_first_message`'s contact [the contact whose phone has the same
//! last ten digits, else a new one]; which user a reply's comment belongs
//! to [the user with [`OperatorReply::user_email`], else the robot]; the
//! comment scope [`task_update`, as the design page's scope list has no
//! `comment_*`]; the sender's timeout [[`SENDER_TIMEOUT`]].
//!
//! Not served: `?silent=true` (accepted, ignored), the 202 queued update,
//! daily and per-second limits, `X-RateLimit-Remaining`, `sourceId` /
//! `onlyChanged`, `/contact/import`, templates, custom-field catalogues,
//! task statuses, files, data tags.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Map, Value, json};

use crate::FakeError;
use crate::server::{self, Fault, Req, Resp, Server, Vendor, common_methods, lock};

/// The 11 scopes the design page asks for; the start token has them all.
pub const ALL_SCOPES: &[&str] = &[
    "contact_add",
    "contact_readonly",
    "contact_update",
    "process_readonly",
    "project_add",
    "project_readonly",
    "project_update",
    "task_add",
    "task_readonly",
    "task_update",
    "user_readonly",
];

/// The largest `pageSize` of a list call (also its default).
pub const MAX_PAGE_SIZE: i64 = 100;
/// `/task/list` filter type "task number" (Planfix's "Номер задачи").
pub const TASK_NUMBER_FILTER: i64 = 57;
/// `/task/list` filter type "counterparty" (Planfix's "Контрагент").
pub const TASK_COUNTERPARTY_FILTER: i64 = 7;
/// The first task number.
pub const FIRST_TASK_NUMBER: i64 = 1001;
/// The host of a task's e-mail address (`task+<number>@…`).
pub const ACCOUNT_HOST: &str = "crmbridge-test.planfix.com";
/// The `providerId` the sender uses unless [`FakePlanfix::set_provider_id`].
pub const DEFAULT_PROVIDER_ID: &str = "crmbridge";
/// The id of the robot employee that exists at start (the tokens' owner).
pub const ROBOT_ID: i64 = 1;
/// How long the sender waits for the provider.
pub const SENDER_TIMEOUT: Duration = Duration::from_secs(10);

const FIRST_CONTACT_ID: i64 = 101;
const FIRST_CONTACT_NUMBER: i64 = 501;
const FIRST_MESSAGE_ID: i64 = 4_188_001;

/// One message a provider posted with `cmd=newMessage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `providerId`.
    pub provider_id: String,
    /// `chatId`.
    pub chat_id: String,
    /// `message` (empty when only attachments came).
    pub text: String,
    /// `contactId` (the provider's id of the contact).
    pub contact_id: String,
    /// `contactName`.
    pub contact_name: String,
    /// `title`, if sent.
    pub title: Option<String>,
    /// `(attachments[name], attachments[url])` pairs, in order.
    pub attachments: Vec<(String, String)>,
    /// `isEcho`.
    pub is_echo: bool,
    /// `userEmail`, if sent.
    pub user_email: Option<String>,
    /// The `data_<Field>` parameters, by `<Field>`.
    pub data: BTreeMap<String, String>,
    /// Every parameter as received, `planfix_token` redacted.
    pub params: Vec<(String, String)>,
}

/// A chat the fake knows: begun by a provider's first `newMessage`, or
/// bound by [`FakePlanfix::send_first_message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chat {
    /// `providerId`.
    pub provider_id: String,
    /// `chatId`.
    pub chat_id: String,
    /// The provider's `contactId` of the chat's contact.
    pub contact_id: String,
    /// The REST id of the chat's contact.
    pub planfix_contact_id: i64,
    /// The REST id of the chat's task.
    pub task_id: i64,
    /// The chat's task number (what `getTask` answers).
    pub task_number: i64,
    /// Whether an operator began it from Planfix ([`FakePlanfix::send_first_message`]).
    pub started_in_planfix: bool,
    /// The provider's messages, in arrival order.
    pub messages: Vec<ChatMessage>,
}

/// One `cmd=messageStatus` received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageStatus {
    /// `messageId`.
    pub message_id: String,
    /// `error`, `read` or `sent` (any other value received counts as `sent`).
    pub status: String,
    /// `messageStatus` as received.
    pub raw_status: String,
    /// `messageStatusText`, if sent.
    pub text: Option<String>,
}

/// A comment of a task: added through REST, or made by the chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comment {
    /// The comment id.
    pub id: i64,
    /// The task's REST id.
    pub task_id: i64,
    /// The text.
    pub description: String,
    /// The author, prefixed (`user:1`, `contact:101`), if known.
    pub owner: Option<String>,
    /// Whether the chat made it (a provider's message or an operator's reply).
    pub from_chat: bool,
    /// When it was made.
    pub at: chrono::DateTime<chrono::Utc>,
}

/// An operator's reply for [`FakePlanfix::send_operator_reply`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperatorReply {
    /// `chatId`: a chat the fake knows.
    pub chat_id: String,
    /// `message`.
    pub message: String,
    /// `messageId`; `None` = a fresh unique one.
    pub message_id: Option<String>,
    /// `userName`.
    pub user_name: String,
    /// `userLastName`.
    pub user_last_name: String,
    /// Not sent (Planfix sends no e-mail); picks the employee the reply's
    /// comment belongs to.
    pub user_email: Option<String>,
    /// `(name, url)` pairs sent as `attachments[name]` / `attachments[url]`.
    pub attachments: Vec<(String, String)>,
    /// `contactPhone`, if set.
    pub contact_phone: Option<String>,
}

/// One notification the fake sent to a provider.
#[derive(Debug, Clone, PartialEq)]
pub struct SentMessage {
    /// `messageId`.
    pub message_id: String,
    /// `chatId` (`None` for a first message).
    pub chat_id: Option<String>,
    /// The form as sent (`token` included).
    pub form: Vec<(String, String)>,
    /// The provider's status.
    pub status: u16,
    /// The provider's answer (`Null` when not JSON).
    pub answer: Value,
}

#[derive(Debug, Clone)]
struct User {
    id: i64,
    name: String,
    lastname: String,
    email: String,
    role: String,
    status: String,
}

impl User {
    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "lastname": self.lastname,
            "email": self.email,
            "role": self.role,
            "status": self.status,
        })
    }
}

#[derive(Debug)]
struct Data {
    tokens: Vec<(String, Vec<String>)>,
    contacts: Vec<Map<String, Value>>,
    tasks: Vec<Map<String, Value>>,
    projects: Vec<Map<String, Value>>,
    comments: Vec<Comment>,
    users: Vec<User>,
    chats: Vec<Chat>,
    /// (providerId, contactId) → REST contact id.
    chat_contacts: Vec<(String, String, i64)>,
    /// (providerId, chatId) → `getTask` calls still to answer "not found".
    task_lag: Vec<(String, String, usize)>,
    get_task_lag: usize,
    statuses: Vec<MessageStatus>,
    sent: Vec<SentMessage>,
    /// Ids of the messages sent to the provider, kept before the POST:
    /// Planfix has made a message before it sends it, so the provider may
    /// report its status before answering (`sent` is kept after).
    made_messages: Vec<String>,
    provider_id: String,
    next_contact: i64,
    next_contact_number: i64,
    next_task: i64,
    next_task_number: i64,
    next_project: i64,
    next_comment: i64,
    next_user: i64,
    next_message: i64,
}

struct Inner {
    chat_token: String,
    data: Mutex<Data>,
}

/// A running fake Planfix account. Dropping it stops the server.
pub struct FakePlanfix {
    server: Server,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FakePlanfix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakePlanfix")
            .field("addr", &self.server.addr)
            .finish()
    }
}

// ---------------------------------------------------------------- errors

#[derive(Debug)]
struct PfErr {
    status: StatusCode,
    code: i64,
    error: String,
}

type R<T> = Result<T, PfErr>;

impl PfErr {
    fn new(status: StatusCode, code: i64, error: impl Into<String>) -> Self {
        PfErr {
            status,
            code,
            error: error.into(),
        }
    }

    fn missing(param: &str) -> Self {
        PfErr::new(
            StatusCode::BAD_REQUEST,
            40,
            format!("Missing required parameter: {param}"),
        )
    }

    fn invalid(param: &str) -> Self {
        PfErr::new(
            StatusCode::BAD_REQUEST,
            41,
            format!("Invalid parameter value: {param}"),
        )
    }

    fn resp(&self) -> Resp {
        Resp::json(
            self.status,
            &json!({"result": "fail", "code": self.code, "error": self.error}),
        )
    }
}

/// The kinds of object a "not found" names: (code, noun).
#[derive(Debug, Clone, Copy)]
enum Kind {
    Contact,
    Task,
    Project,
    User,
}

impl Kind {
    fn not_found(self, id: i64, status: StatusCode) -> PfErr {
        let (code, noun) = match self {
            Kind::Contact => (2000, "Contact"),
            Kind::Task => (1000, "Task"),
            Kind::Project => (3000, "Project"),
            Kind::User => (4000, "User"),
        };
        PfErr::new(status, code, format!("{noun} not found by id {id}"))
    }
}

fn success() -> Resp {
    Resp::json(StatusCode::OK, &json!({"result": "success"}))
}

fn created(id: i64) -> Resp {
    Resp::json(StatusCode::CREATED, &json!({"result": "success", "id": id}))
}

fn ok_with(key: &str, value: Value) -> Resp {
    let mut m = Map::new();
    m.insert("result".into(), json!("success"));
    m.insert(key.into(), value);
    Resp::json(StatusCode::OK, &Value::Object(m))
}

fn chat_error(status: StatusCode, error: &str) -> Resp {
    Resp::json(status, &json!({"error": error}))
}

fn invalid_parameters() -> Resp {
    chat_error(StatusCode::BAD_REQUEST, "Invalid parameters")
}

fn empty_ok() -> Resp {
    Resp::new(StatusCode::OK)
}

// ------------------------------------------------------------ JSON helpers

/// A string field: absent or `null` → `None`; another type → code 41.
fn opt_str<'a>(b: &'a Map<String, Value>, key: &str) -> R<Option<&'a str>> {
    match b.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(PfErr::invalid(key)),
    }
}

/// An integer, or a string of one.
fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `1` / `true` / `"1"` / `"true"` and their opposites.
fn as_flag(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_i64() {
            Some(1) => Some(true),
            Some(0) => Some(false),
            _ => None,
        },
        Value::String(s) => match s.trim() {
            "1" | "true" => Some(true),
            "0" | "false" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// The last ten digits (all of them when fewer).
fn last10(s: &str) -> String {
    let d = digits(s);
    let skip = d.len().saturating_sub(10);
    d.chars().skip(skip).collect()
}

/// `{"id": N}` (or `{"id": "<prefix>:N"}`) → N.
fn id_of(v: &Value, prefix: &str, field: &str) -> R<i64> {
    let id = v.get("id").ok_or_else(|| PfErr::invalid(field))?;
    match id {
        Value::String(s) => {
            let s = s.trim();
            let bare = s
                .strip_prefix(prefix)
                .and_then(|r| r.strip_prefix(':'))
                .unwrap_or(s);
            bare.parse().map_err(|_| PfErr::invalid(field))
        }
        other => as_i64(other).ok_or_else(|| PfErr::invalid(field)),
    }
}

/// A person reference: `"user:5"`, `"contact:5"`, `"group:3"`; a bare
/// number is a `default_kind`.
fn person(v: &Value, default_kind: &'static str, field: &str) -> R<(&'static str, i64)> {
    match v {
        Value::String(s) => {
            let (kind, n) = match s.split_once(':') {
                Some((k, n)) => (k.trim(), n.trim()),
                None => (default_kind, s.trim()),
            };
            let kind = match kind {
                "user" => "user",
                "contact" => "contact",
                "group" => "group",
                _ => return Err(PfErr::invalid(field)),
            };
            let n = n.parse().map_err(|_| PfErr::invalid(field))?;
            Ok((kind, n))
        }
        other => as_i64(other)
            .map(|n| (default_kind, n))
            .ok_or_else(|| PfErr::invalid(field)),
    }
}

fn check_custom_fields(b: &Map<String, Value>) -> R<()> {
    match b.get("customFieldData") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(items)) => {
            for item in items {
                let field = item
                    .get("field")
                    .ok_or_else(|| PfErr::invalid("customFieldData"))?;
                id_of(field, "field", "customFieldData")?;
                if item.get("value").is_none() {
                    return Err(PfErr::invalid("customFieldData"));
                }
            }
            Ok(())
        }
        Some(_) => Err(PfErr::invalid("customFieldData")),
    }
}

fn check_id_object(b: &Map<String, Value>, key: &str) -> R<Option<i64>> {
    match b.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => id_of(v, key, key).map(Some),
        Some(_) => Err(PfErr::invalid(key)),
    }
}

/// Merges `update` into `stored`: `null` removes a key, `customFieldData`
/// is merged by field id, anything else replaced.
fn merge(stored: &mut Map<String, Value>, update: &Map<String, Value>, reserved: &[&str]) {
    for (k, v) in update {
        if reserved.contains(&k.as_str()) {
            continue;
        }
        if v.is_null() {
            stored.remove(k);
            continue;
        }
        if k == "customFieldData"
            && let (Some(Value::Array(old)), Value::Array(new)) = (stored.get(k), v)
        {
            let field_id = |x: &Value| x.get("field").and_then(|f| f.get("id")).and_then(as_i64);
            let mut merged: Vec<Value> = old
                .iter()
                .filter(|o| !new.iter().any(|n| field_id(n) == field_id(o)))
                .cloned()
                .collect();
            merged.extend(new.iter().cloned());
            stored.insert(k.clone(), Value::Array(merged));
            continue;
        }
        stored.insert(k.clone(), v.clone());
    }
}

/// `phones` with `maskedNumber` added (= the number as given).
fn with_masked(phones: &Value) -> Value {
    match phones {
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|p| {
                    let mut p = p.clone();
                    if let Some(obj) = p.as_object_mut() {
                        let n = obj.get("number").cloned().unwrap_or(json!(""));
                        obj.insert("maskedNumber".into(), n);
                    }
                    p
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The `fields` selection: `id` always, then each named field present (or
/// its default), numbers selecting `customFieldData` entries.
fn select(full: &Map<String, Value>, fields: Option<&str>, defaults: &[(&str, Value)]) -> Value {
    let wanted: Vec<&str> = match fields {
        Some(f) => f
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect(),
        None => vec!["id", "name"],
    };
    let mut out = Map::new();
    out.insert("id".into(), full.get("id").cloned().unwrap_or(Value::Null));
    let mut custom_ids = Vec::new();
    for w in wanted {
        if w == "id" {
            continue;
        }
        if let Ok(n) = w.parse::<i64>() {
            custom_ids.push(n);
            continue;
        }
        if let Some(v) = full.get(w) {
            out.insert(w.to_owned(), v.clone());
        } else if let Some((_, d)) = defaults.iter().find(|(k, _)| *k == w) {
            out.insert(w.to_owned(), d.clone());
        }
    }
    if !custom_ids.is_empty() && !out.contains_key("customFieldData") {
        let items: Vec<Value> = full
            .get("customFieldData")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter(|x| {
                        x.get("field")
                            .and_then(|f| f.get("id"))
                            .and_then(as_i64)
                            .is_some_and(|id| custom_ids.contains(&id))
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        out.insert("customFieldData".into(), Value::Array(items));
    }
    Value::Object(out)
}

fn contact_defaults() -> Vec<(&'static str, Value)> {
    vec![
        ("name", json!("")),
        ("lastname", json!("")),
        ("email", json!("")),
        ("description", json!("")),
        ("phones", json!([])),
        ("isCompany", json!(false)),
        ("customFieldData", json!([])),
    ]
}

fn task_defaults() -> Vec<(&'static str, Value)> {
    vec![("description", json!("")), ("customFieldData", json!([]))]
}

/// `offset` (≥ 0, default 0) and `pageSize` (1..=100, default 100).
fn paging(b: &Map<String, Value>) -> R<(usize, usize)> {
    let offset = match b.get("offset") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_i64()
            .filter(|n| *n >= 0)
            .ok_or_else(|| PfErr::invalid("offset"))?,
    };
    let size = match b.get("pageSize") {
        None | Some(Value::Null) => MAX_PAGE_SIZE,
        Some(v) => v
            .as_i64()
            .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
            .ok_or_else(|| PfErr::invalid("pageSize"))?,
    };
    Ok((
        usize::try_from(offset).unwrap_or(usize::MAX),
        usize::try_from(size).unwrap_or(100),
    ))
}

fn fields_param(b: &Map<String, Value>) -> R<Option<&str>> {
    opt_str(b, "fields")
}

// ---------------------------------------------------------------- filters

#[derive(Debug)]
enum ContactFilter {
    Phone(String),
    Email(String),
    EmailExact(String),
    Name(String),
    IsCompany(bool),
    Number(i64),
}

#[derive(Debug)]
enum TaskFilter {
    Numbers(Vec<i64>),
    Counterparty(i64),
}

/// `(type, negate, value)` of each filter, checked for shape.
fn raw_filters(b: &Map<String, Value>) -> R<Vec<(i64, bool, Value)>> {
    let items = match b.get("filters") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(PfErr::invalid("filters")),
    };
    let mut out = Vec::new();
    for f in items {
        let ty = f
            .get("type")
            .and_then(Value::as_i64)
            .ok_or_else(|| PfErr::invalid("filters.type"))?;
        let negate = match f.get("operator").and_then(Value::as_str) {
            Some("equal") => false,
            Some("notequal") => true,
            _ => return Err(PfErr::invalid("filters.operator")),
        };
        let value = f
            .get("value")
            .cloned()
            .ok_or_else(|| PfErr::missing("filters.value"))?;
        out.push((ty, negate, value));
    }
    Ok(out)
}

fn text_value(v: &Value) -> R<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(PfErr::invalid("filters.value")),
    }
}

fn contact_filters(b: &Map<String, Value>) -> R<Vec<(ContactFilter, bool)>> {
    let mut out = Vec::new();
    for (ty, negate, v) in raw_filters(b)? {
        let bad = || PfErr::invalid("filters.value");
        let f = match ty {
            4003 => ContactFilter::Phone(digits(&text_value(&v)?)),
            4005 => ContactFilter::Email(text_value(&v)?.to_lowercase()),
            4026 => ContactFilter::EmailExact(text_value(&v)?.trim().to_lowercase()),
            4001 => ContactFilter::Name(text_value(&v)?.to_lowercase()),
            4006 => ContactFilter::IsCompany(as_flag(&v).ok_or_else(bad)?),
            4007 => ContactFilter::IsCompany(!as_flag(&v).ok_or_else(bad)?),
            4231 => ContactFilter::Number(as_i64(&v).ok_or_else(bad)?),
            _ => return Err(PfErr::invalid("filters.type")),
        };
        out.push((f, negate));
    }
    Ok(out)
}

fn contact_matches(c: &Map<String, Value>, f: &ContactFilter) -> bool {
    let s = |k: &str| {
        c.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_lowercase()
    };
    match f {
        ContactFilter::Phone(d) => {
            !d.is_empty()
                && c.get("phones").and_then(Value::as_array).is_some_and(|ps| {
                    ps.iter().any(|p| {
                        digits(p.get("number").and_then(Value::as_str).unwrap_or_default())
                            .contains(d.as_str())
                    })
                })
        }
        ContactFilter::Email(e) => !e.is_empty() && s("email").contains(e.as_str()),
        ContactFilter::EmailExact(e) => !e.is_empty() && s("email").trim() == e,
        ContactFilter::Name(n) => {
            s("name").contains(n.as_str()) || s("lastname").contains(n.as_str())
        }
        ContactFilter::IsCompany(want) => {
            c.get("isCompany").and_then(Value::as_bool).unwrap_or(false) == *want
        }
        ContactFilter::Number(n) => c.get("number").and_then(Value::as_i64) == Some(*n),
    }
}

fn task_filters(b: &Map<String, Value>) -> R<Vec<(TaskFilter, bool)>> {
    let mut out = Vec::new();
    for (ty, negate, v) in raw_filters(b)? {
        let bad = || PfErr::invalid("filters.value");
        let f = match ty {
            TASK_NUMBER_FILTER => match &v {
                Value::Array(items) => TaskFilter::Numbers(
                    items
                        .iter()
                        .map(|x| as_i64(x).ok_or_else(bad))
                        .collect::<R<Vec<i64>>>()?,
                ),
                other => TaskFilter::Numbers(vec![as_i64(other).ok_or_else(bad)?]),
            },
            TASK_COUNTERPARTY_FILTER => {
                let (kind, n) = person(&v, "contact", "filters.value")?;
                if kind != "contact" {
                    return Err(bad());
                }
                TaskFilter::Counterparty(n)
            }
            _ => return Err(PfErr::invalid("filters.type")),
        };
        out.push((f, negate));
    }
    Ok(out)
}

fn task_matches(t: &Map<String, Value>, f: &TaskFilter) -> bool {
    match f {
        TaskFilter::Numbers(ns) => t
            .get("number")
            .and_then(Value::as_i64)
            .is_some_and(|n| ns.contains(&n)),
        TaskFilter::Counterparty(id) => {
            t.get("counterparty")
                .and_then(|c| id_of(c, "contact", "counterparty").ok())
                == Some(*id)
        }
    }
}

// ------------------------------------------------------------------ routes

/// A REST call, identified from method and path only (before the body).
#[derive(Debug)]
enum Op {
    Ping,
    ContactCreate,
    ContactList,
    ContactGet(String),
    ContactUpdate(String),
    TaskCreate,
    TaskList,
    TaskGet(String),
    TaskUpdate(String),
    TaskComment(String),
    TaskCommentList(String),
    UserList,
    Processes,
    ProjectCreate,
    ProjectList,
    ProjectGet(String),
    ProjectUpdate(String),
}

impl Op {
    fn parse(method: &Method, segs: &[String]) -> Option<Op> {
        let get = *method == Method::GET;
        let post = *method == Method::POST;
        let s: Vec<&str> = segs.iter().map(String::as_str).collect();
        Some(match s.as_slice() {
            ["ping"] if get => Op::Ping,
            ["contact"] if post => Op::ContactCreate,
            ["contact", "list"] if post => Op::ContactList,
            ["contact", "list"] => return None,
            ["contact", id] if get => Op::ContactGet((*id).to_owned()),
            ["contact", id] if post => Op::ContactUpdate((*id).to_owned()),
            ["task"] if post => Op::TaskCreate,
            ["task", "list"] if post => Op::TaskList,
            ["task", "list"] => return None,
            ["task", id] if get => Op::TaskGet((*id).to_owned()),
            ["task", id] if post => Op::TaskUpdate((*id).to_owned()),
            ["task", id, "comments"] if post => Op::TaskComment((*id).to_owned()),
            ["task", id, "comments", "list"] if post => Op::TaskCommentList((*id).to_owned()),
            ["user", "list"] if post => Op::UserList,
            ["process", "task"] if get => Op::Processes,
            ["project"] if post => Op::ProjectCreate,
            ["project", "list"] if post => Op::ProjectList,
            ["project", "list"] => return None,
            ["project", id] if get => Op::ProjectGet((*id).to_owned()),
            ["project", id] if post => Op::ProjectUpdate((*id).to_owned()),
            _ => return None,
        })
    }

    fn scope(&self) -> Option<&'static str> {
        Some(match self {
            Op::Ping => return None,
            Op::ContactCreate => "contact_add",
            Op::ContactList | Op::ContactGet(_) => "contact_readonly",
            Op::ContactUpdate(_) => "contact_update",
            Op::TaskCreate => "task_add",
            Op::TaskList | Op::TaskGet(_) | Op::TaskCommentList(_) => "task_readonly",
            Op::TaskUpdate(_) | Op::TaskComment(_) => "task_update",
            Op::UserList => "user_readonly",
            Op::Processes => "process_readonly",
            Op::ProjectCreate => "project_add",
            Op::ProjectList | Op::ProjectGet(_) => "project_readonly",
            Op::ProjectUpdate(_) => "project_update",
        })
    }
}

fn path_id(raw: &str, prefix: &str) -> R<i64> {
    let bare = raw
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix(':'))
        .unwrap_or(raw);
    bare.trim().parse().map_err(|_| PfErr::invalid("id"))
}

// --------------------------------------------------------------- the handle

impl FakePlanfix {
    /// Starts a fake account: `rest_token` is a REST token with all of
    /// [`ALL_SCOPES`], owned by the robot (user [`ROBOT_ID`]);
    /// `chat_token` is Planfix's key of the chat integration (`planfix_token`).
    pub async fn start(rest_token: &str, chat_token: &str) -> Result<Self, FakeError> {
        let mut inner_out = None;
        let server = server::serve(|_| {
            let inner = Arc::new(Inner {
                chat_token: chat_token.to_owned(),
                data: Mutex::new(Data {
                    tokens: vec![(
                        rest_token.to_owned(),
                        ALL_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
                    )],
                    contacts: Vec::new(),
                    tasks: Vec::new(),
                    projects: Vec::new(),
                    comments: Vec::new(),
                    users: vec![User {
                        id: ROBOT_ID,
                        name: "crmbridge".to_owned(),
                        lastname: "Robot".to_owned(),
                        email: String::new(),
                        role: "Robot".to_owned(),
                        status: "Active".to_owned(),
                    }],
                    chats: Vec::new(),
                    chat_contacts: Vec::new(),
                    task_lag: Vec::new(),
                    get_task_lag: 0,
                    statuses: Vec::new(),
                    sent: Vec::new(),
                    made_messages: Vec::new(),
                    provider_id: DEFAULT_PROVIDER_ID.to_owned(),
                    next_contact: FIRST_CONTACT_ID,
                    next_contact_number: FIRST_CONTACT_NUMBER,
                    next_task: 1,
                    next_task_number: FIRST_TASK_NUMBER,
                    next_project: 1,
                    next_comment: 1,
                    next_user: ROBOT_ID + 1,
                    next_message: FIRST_MESSAGE_ID,
                }),
            });
            inner_out = Some(inner.clone());
            Arc::new(PfVendor(inner))
        })
        .await?;
        let inner = inner_out.ok_or_else(|| FakeError::Invalid("server not built".into()))?;
        Ok(FakePlanfix { server, inner })
    }

    common_methods!();

    /// `http://127.0.0.1:PORT/rest` — stands for `https://{account}.planfix.com/rest`;
    /// REST paths (`/contact/`, `/task/list`, …) go under it.
    pub fn base_url(&self) -> String {
        format!("http://{}/rest", self.server.addr)
    }

    /// `http://127.0.0.1:PORT/webchat/api` — the account's chat API endpoint.
    pub fn chat_endpoint(&self) -> String {
        format!("http://{}/webchat/api", self.server.addr)
    }

    /// Planfix's key of the chat integration (`planfix_token`).
    pub fn chat_token(&self) -> &str {
        &self.inner.chat_token
    }

    /// Registers a REST token with only these scopes (replacing the
    /// scopes of a token already known).
    pub fn add_token(&self, token: &str, scopes: &[&str]) {
        let mut d = lock(&self.inner.data);
        let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
        if let Some(t) = d.tokens.iter_mut().find(|(t, _)| t == token) {
            t.1 = scopes;
        } else {
            d.tokens.push((token.to_owned(), scopes));
        }
    }

    /// Adds an active employee (role `User`); returns its id.
    pub fn add_user(&self, name: &str, email: &str) -> i64 {
        let mut d = lock(&self.inner.data);
        let id = d.next_user;
        d.next_user += 1;
        d.users.push(User {
            id,
            name: name.to_owned(),
            lastname: String::new(),
            email: email.to_owned(),
            role: "User".to_owned(),
            status: "Active".to_owned(),
        });
        id
    }

    /// Adds a project; returns its id.
    pub fn add_project(&self, name: &str) -> i64 {
        let mut d = lock(&self.inner.data);
        let id = d.next_project;
        d.next_project += 1;
        let mut p = Map::new();
        p.insert("id".into(), json!(id));
        p.insert("name".into(), json!(name));
        d.projects.push(p);
        id
    }

    /// The `providerId` the sender uses from now on.
    pub fn set_provider_id(&self, provider_id: &str) {
        lock(&self.inner.data).provider_id = provider_id.to_owned();
    }

    /// The `providerId` the sender uses.
    pub fn provider_id(&self) -> String {
        lock(&self.inner.data).provider_id.clone()
    }

    /// Chats begun from now on answer `getTask` with "task not found" for
    /// their first `calls` calls (Planfix makes the task asynchronously).
    pub fn set_get_task_lag(&self, calls: usize) {
        lock(&self.inner.data).get_task_lag = calls;
    }

    /// Every contact in full (all stored fields, `number` included), in id order.
    pub fn contacts(&self) -> Vec<Value> {
        lock(&self.inner.data)
            .contacts
            .iter()
            .map(|c| Value::Object(c.clone()))
            .collect()
    }

    /// One contact in full.
    pub fn contact(&self, id: i64) -> Option<Value> {
        let d = lock(&self.inner.data);
        Inner::contact_idx(&d, id).map(|i| Value::Object(d.contacts[i].clone()))
    }

    /// Every task in full (`number` and `commentsCount` included), in id order.
    pub fn tasks(&self) -> Vec<Value> {
        let d = lock(&self.inner.data);
        d.tasks.iter().map(|t| Inner::task_full(&d, t)).collect()
    }

    /// One task in full.
    pub fn task(&self, id: i64) -> Option<Value> {
        let d = lock(&self.inner.data);
        Inner::task_idx(&d, id).map(|i| Inner::task_full(&d, &d.tasks[i]))
    }

    /// The comments of a task, in order.
    pub fn comments(&self, task_id: i64) -> Vec<Comment> {
        lock(&self.inner.data)
            .comments
            .iter()
            .filter(|c| c.task_id == task_id)
            .cloned()
            .collect()
    }

    /// Every employee as `/user/list` answers them.
    pub fn users(&self) -> Vec<Value> {
        lock(&self.inner.data)
            .users
            .iter()
            .map(User::json)
            .collect()
    }

    /// Every project.
    pub fn projects(&self) -> Vec<Value> {
        lock(&self.inner.data)
            .projects
            .iter()
            .map(|p| Value::Object(p.clone()))
            .collect()
    }

    /// Every chat, in the order they began.
    pub fn chats(&self) -> Vec<Chat> {
        lock(&self.inner.data).chats.clone()
    }

    /// The provider's messages of the chats with this `chatId` (of any
    /// `providerId`), in arrival order.
    pub fn chat_messages(&self, chat_id: &str) -> Vec<ChatMessage> {
        lock(&self.inner.data)
            .chats
            .iter()
            .filter(|c| c.chat_id == chat_id)
            .flat_map(|c| c.messages.iter().cloned())
            .collect()
    }

    /// The chats bound by [`FakePlanfix::send_first_message`].
    pub fn bound_chats(&self) -> Vec<Chat> {
        lock(&self.inner.data)
            .chats
            .iter()
            .filter(|c| c.started_in_planfix)
            .cloned()
            .collect()
    }

    /// Every `messageStatus` received, in order.
    pub fn message_statuses(&self) -> Vec<MessageStatus> {
        lock(&self.inner.data).statuses.clone()
    }

    /// Every notification sent to a provider, in order.
    pub fn sent_messages(&self) -> Vec<SentMessage> {
        lock(&self.inner.data).sent.clone()
    }

    /// Sends an operator's reply in a chat the fake knows (begun by the
    /// provider or bound by [`FakePlanfix::send_first_message`]) to `url`,
    /// as Planfix does; adds it to the chat's task as a comment first.
    /// Returns the provider's status and answer (`Null` when not JSON).
    pub async fn send_operator_reply(
        &self,
        url: &str,
        provider_token: &str,
        reply: OperatorReply,
    ) -> Result<(u16, Value), FakeError> {
        let (form, message_id) = {
            let mut d = lock(&self.inner.data);
            let provider = d.provider_id.clone();
            let chat = d
                .chats
                .iter()
                .find(|c| c.provider_id == provider && c.chat_id == reply.chat_id)
                .cloned()
                .ok_or_else(|| {
                    FakeError::NotFound(format!("chat {} of provider {provider}", reply.chat_id))
                })?;
            let message_id = match &reply.message_id {
                Some(m) => m.clone(),
                None => Inner::next_message_id(&mut d),
            };
            let owner = Inner::user_by_email(&d, reply.user_email.as_deref());
            Inner::add_comment(&mut d, chat.task_id, &reply.message, Some(owner), true);
            let mut form = vec![
                ("cmd".to_owned(), "newMessage".to_owned()),
                ("providerId".to_owned(), provider),
                ("chatId".to_owned(), reply.chat_id.clone()),
            ];
            if let Some(p) = &reply.contact_phone {
                form.push(("contactPhone".to_owned(), p.clone()));
            }
            form.extend([
                ("token".to_owned(), provider_token.to_owned()),
                ("message".to_owned(), reply.message.clone()),
                ("messageId".to_owned(), message_id.clone()),
                ("userName".to_owned(), reply.user_name.clone()),
                ("userLastName".to_owned(), reply.user_last_name.clone()),
                ("userIco".to_owned(), String::new()),
                ("taskEmail".to_owned(), task_email(chat.task_number)),
            ]);
            for (name, link) in &reply.attachments {
                form.push(("attachments[name]".to_owned(), name.clone()));
                form.push(("attachments[url]".to_owned(), link.clone()));
            }
            d.made_messages.push(message_id.clone());
            (form, message_id)
        };
        let (status, answer) = post_form(url, &form).await?;
        lock(&self.inner.data).sent.push(SentMessage {
            message_id,
            chat_id: Some(reply.chat_id),
            form,
            status,
            answer: answer.clone(),
        });
        Ok((status, answer))
    }

    /// An operator writes first from a contact's card (the "Write" button
    /// for contacts with a phone): finds the contact with that phone (last
    /// ten digits) or makes one named `contact_name`, makes the chat's task,
    /// and sends `newMessage` **without** `chatId` to `url`. When the
    /// provider answers 200 with `chatId` and `contactId`, the fake binds a
    /// new chat ([`FakePlanfix::bound_chats`]) that later replies can use.
    /// Returns the provider's status and answer (`Null` when not JSON).
    pub async fn send_first_message(
        &self,
        url: &str,
        provider_token: &str,
        contact_phone: &str,
        contact_name: &str,
        message: &str,
        user_name: &str,
    ) -> Result<(u16, Value), FakeError> {
        let (form, message_id, contact_id, task_id, task_number, provider) = {
            let mut d = lock(&self.inner.data);
            let want = last10(contact_phone);
            let found = d.contacts.iter().find(|c| {
                !want.is_empty()
                    && c.get("phones").and_then(Value::as_array).is_some_and(|ps| {
                        ps.iter().any(|p| {
                            last10(p.get("number").and_then(Value::as_str).unwrap_or_default())
                                == want
                        })
                    })
            });
            let contact_id = match found.and_then(|c| c.get("id")).and_then(Value::as_i64) {
                Some(id) => id,
                None => {
                    let mut body = Map::new();
                    body.insert("name".into(), json!(contact_name));
                    body.insert(
                        "phones".into(),
                        json!([{"number": contact_phone, "type": 1}]),
                    );
                    Inner::insert_contact(&mut d, &body)
                }
            };
            let mut body = Map::new();
            body.insert("name".into(), json!(format!("Chat with {contact_name}")));
            body.insert("counterparty".into(), json!({"id": contact_id}));
            let (task_id, task_number) = Inner::insert_task(&mut d, &body);
            let message_id = Inner::next_message_id(&mut d);
            Inner::add_comment(
                &mut d,
                task_id,
                message,
                Some(format!("user:{ROBOT_ID}")),
                true,
            );
            let provider = d.provider_id.clone();
            let form = vec![
                ("cmd".to_owned(), "newMessage".to_owned()),
                ("providerId".to_owned(), provider.clone()),
                ("contactPhone".to_owned(), contact_phone.to_owned()),
                ("token".to_owned(), provider_token.to_owned()),
                ("message".to_owned(), message.to_owned()),
                ("messageId".to_owned(), message_id.clone()),
                ("userName".to_owned(), user_name.to_owned()),
                ("userLastName".to_owned(), String::new()),
                ("userIco".to_owned(), String::new()),
                ("taskEmail".to_owned(), task_email(task_number)),
            ];
            d.made_messages.push(message_id.clone());
            (form, message_id, contact_id, task_id, task_number, provider)
        };
        let (status, answer) = post_form(url, &form).await?;
        let text = |k: &str| match answer.get(k) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let mut d = lock(&self.inner.data);
        if status == 200
            && let (Some(chat_id), Some(provider_contact)) = (text("chatId"), text("contactId"))
            && !d
                .chats
                .iter()
                .any(|c| c.provider_id == provider && c.chat_id == chat_id)
        {
            if !d
                .chat_contacts
                .iter()
                .any(|(p, c, _)| *p == provider && *c == provider_contact)
            {
                d.chat_contacts
                    .push((provider.clone(), provider_contact.clone(), contact_id));
            }
            d.chats.push(Chat {
                provider_id: provider,
                chat_id,
                contact_id: provider_contact,
                planfix_contact_id: contact_id,
                task_id,
                task_number,
                started_in_planfix: true,
                messages: Vec::new(),
            });
        }
        d.sent.push(SentMessage {
            message_id,
            chat_id: None,
            form,
            status,
            answer: answer.clone(),
        });
        Ok((status, answer))
    }
}

fn task_email(number: i64) -> String {
    format!("task+{number}@{ACCOUNT_HOST}")
}

async fn post_form(url: &str, form: &[(String, String)]) -> Result<(u16, Value), FakeError> {
    let client = reqwest::Client::builder().timeout(SENDER_TIMEOUT).build()?;
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .finish();
    let resp = client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

// ------------------------------------------------------------- the server

struct PfVendor(Arc<Inner>);

impl Inner {
    fn contact_idx(d: &Data, id: i64) -> Option<usize> {
        d.contacts
            .iter()
            .position(|c| c.get("id").and_then(Value::as_i64) == Some(id))
    }

    fn task_idx(d: &Data, id: i64) -> Option<usize> {
        d.tasks
            .iter()
            .position(|t| t.get("id").and_then(Value::as_i64) == Some(id))
    }

    fn project_idx(d: &Data, id: i64) -> Option<usize> {
        d.projects
            .iter()
            .position(|p| p.get("id").and_then(Value::as_i64) == Some(id))
    }

    fn task_full(d: &Data, t: &Map<String, Value>) -> Value {
        let mut t = t.clone();
        let id = t.get("id").and_then(Value::as_i64).unwrap_or_default();
        let count = d.comments.iter().filter(|c| c.task_id == id).count();
        t.insert("commentsCount".into(), json!(count));
        Value::Object(t)
    }

    /// `user:N` of the employee with this e-mail, else the robot.
    fn user_by_email(d: &Data, email: Option<&str>) -> String {
        let id = email
            .and_then(|e| {
                d.users
                    .iter()
                    .find(|u| !u.email.is_empty() && u.email.eq_ignore_ascii_case(e))
            })
            .map_or(ROBOT_ID, |u| u.id);
        format!("user:{id}")
    }

    fn next_message_id(d: &mut Data) -> String {
        let id = d.next_message;
        d.next_message += 1;
        id.to_string()
    }

    fn add_comment(
        d: &mut Data,
        task_id: i64,
        description: &str,
        owner: Option<String>,
        from_chat: bool,
    ) -> i64 {
        let id = d.next_comment;
        d.next_comment += 1;
        d.comments.push(Comment {
            id,
            task_id,
            description: description.to_owned(),
            owner,
            from_chat,
            at: chrono::Utc::now(),
        });
        id
    }

    /// Stores a validated contact body; returns the new id.
    fn insert_contact(d: &mut Data, body: &Map<String, Value>) -> i64 {
        let id = d.next_contact;
        d.next_contact += 1;
        let number = d.next_contact_number;
        d.next_contact_number += 1;
        let mut c = Map::new();
        c.insert("id".into(), json!(id));
        c.insert("number".into(), json!(number));
        c.insert("isCompany".into(), json!(false));
        merge(&mut c, body, &["id", "number"]);
        if let Some(p) = c.get("phones").cloned() {
            c.insert("phones".into(), with_masked(&p));
        }
        d.contacts.push(c);
        id
    }

    /// Stores a validated task body; returns (id, number).
    fn insert_task(d: &mut Data, body: &Map<String, Value>) -> (i64, i64) {
        let id = d.next_task;
        d.next_task += 1;
        let number = d.next_task_number;
        d.next_task_number += 1;
        let mut t = Map::new();
        t.insert("id".into(), json!(id));
        t.insert("number".into(), json!(number));
        merge(&mut t, body, &["id", "number", "commentsCount"]);
        d.tasks.push(t);
        (id, number)
    }

    fn token_scopes<'a>(d: &'a Data, req: &Req) -> Option<&'a [String]> {
        let bearer = req.header("authorization").and_then(|h| {
            let (scheme, rest) = h.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| rest.trim().to_owned())
        });
        let token = bearer.or_else(|| {
            (req.method == Method::GET)
                .then(|| req.query_param("access_token"))
                .flatten()
        })?;
        d.tokens
            .iter()
            .find(|(t, _)| !t.is_empty() && *t == token)
            .map(|(_, s)| s.as_slice())
    }

    fn rest(&self, req: &Req) -> Resp {
        match self.rest_inner(req) {
            Ok(r) => r,
            Err(e) => e.resp(),
        }
    }

    fn rest_inner(&self, req: &Req) -> R<Resp> {
        let mut d = lock(&self.data);
        let scopes = Self::token_scopes(&d, req)
            .ok_or_else(|| PfErr::new(StatusCode::UNAUTHORIZED, 1, "Access denied, unknown token"))?
            .to_vec();
        let segs = req.segments_after("/rest").unwrap_or_default();
        let op = Op::parse(&req.method, &segs)
            .ok_or_else(|| PfErr::new(StatusCode::NOT_FOUND, 0, "Unknown method"))?;
        if let Some(scope) = op.scope()
            && !scopes.iter().any(|s| s == scope)
        {
            return Err(PfErr::new(
                StatusCode::METHOD_NOT_ALLOWED,
                5,
                "Scope denied, method not allowed",
            ));
        }
        let body = if req.method == Method::POST {
            Self::body(req)?
        } else {
            Map::new()
        };
        let d = &mut *d;
        match op {
            Op::Ping => Ok(success()),
            Op::ContactCreate => Self::contact_create(d, &body),
            Op::ContactList => Self::contact_list(d, &body),
            Op::ContactGet(id) => {
                let id = path_id(&id, "contact")?;
                let i = Self::contact_idx(d, id)
                    .ok_or_else(|| Kind::Contact.not_found(id, StatusCode::NOT_FOUND))?;
                let fields = req.query_param("fields");
                Ok(ok_with(
                    "contact",
                    select(&d.contacts[i], fields.as_deref(), &contact_defaults()),
                ))
            }
            Op::ContactUpdate(id) => {
                let id = path_id(&id, "contact")?;
                let i = Self::contact_idx(d, id)
                    .ok_or_else(|| Kind::Contact.not_found(id, StatusCode::BAD_REQUEST))?;
                check_contact(&body)?;
                if let Some(Value::String(n)) = body.get("name")
                    && n.trim().is_empty()
                {
                    return Err(PfErr::invalid("name"));
                }
                let c = &mut d.contacts[i];
                merge(c, &body, &["id", "number"]);
                if let Some(p) = c.get("phones").cloned() {
                    c.insert("phones".into(), with_masked(&p));
                }
                Ok(success())
            }
            Op::TaskCreate => {
                if opt_str(&body, "name")?.is_none_or(|n| n.trim().is_empty()) {
                    return Err(PfErr::missing("name"));
                }
                Self::check_task(d, &body)?;
                let (id, _) = Self::insert_task(d, &body);
                Ok(created(id))
            }
            Op::TaskList => Self::task_list(d, &body),
            Op::TaskGet(id) => {
                let id = path_id(&id, "task")?;
                let i = Self::task_idx(d, id)
                    .ok_or_else(|| Kind::Task.not_found(id, StatusCode::NOT_FOUND))?;
                let full = Self::task_full(d, &d.tasks[i]);
                let fields = req.query_param("fields");
                let full = full.as_object().cloned().unwrap_or_default();
                Ok(ok_with(
                    "task",
                    select(&full, fields.as_deref(), &task_defaults()),
                ))
            }
            Op::TaskUpdate(id) => {
                let id = path_id(&id, "task")?;
                let i = Self::task_idx(d, id)
                    .ok_or_else(|| Kind::Task.not_found(id, StatusCode::BAD_REQUEST))?;
                if let Some(n) = opt_str(&body, "name")?
                    && n.trim().is_empty()
                {
                    return Err(PfErr::invalid("name"));
                }
                Self::check_task(d, &body)?;
                merge(&mut d.tasks[i], &body, &["id", "number", "commentsCount"]);
                Ok(success())
            }
            Op::TaskComment(id) => {
                let id = path_id(&id, "task")?;
                Self::task_idx(d, id)
                    .ok_or_else(|| Kind::Task.not_found(id, StatusCode::BAD_REQUEST))?;
                let text = opt_str(&body, "description")?
                    .filter(|t| !t.trim().is_empty())
                    .ok_or_else(|| PfErr::missing("description"))?
                    .to_owned();
                let owner = match body.get("owner") {
                    None | Some(Value::Null) => None,
                    Some(o) => {
                        let v = o.get("id").ok_or_else(|| PfErr::invalid("owner"))?;
                        let (kind, n) = person(v, "user", "owner")?;
                        Self::check_person(d, kind, n)?;
                        Some(format!("{kind}:{n}"))
                    }
                };
                let cid = Self::add_comment(d, id, &text, owner, false);
                Ok(created(cid))
            }
            Op::TaskCommentList(id) => {
                let id = path_id(&id, "task")?;
                Self::task_idx(d, id)
                    .ok_or_else(|| Kind::Task.not_found(id, StatusCode::BAD_REQUEST))?;
                let (offset, size) = paging(&body)?;
                fields_param(&body)?;
                let rows: Vec<Value> = d
                    .comments
                    .iter()
                    .filter(|c| c.task_id == id)
                    .skip(offset)
                    .take(size)
                    .map(|c| {
                        json!({
                            "id": c.id,
                            "description": c.description,
                            "dateTime": {
                                "date": c.at.format("%d-%m-%Y").to_string(),
                                "time": c.at.format("%H:%M").to_string(),
                                "datetime": c.at.format("%Y-%m-%dT%H:%MZ").to_string(),
                            },
                            "owner": c.owner.as_ref().map(|o| json!({"id": o})),
                        })
                    })
                    .collect();
                Ok(ok_with("comments", Value::Array(rows)))
            }
            Op::UserList => {
                let (offset, size) = paging(&body)?;
                if !raw_filters(&body)?.is_empty() {
                    return Err(PfErr::invalid("filters"));
                }
                let only_active = match body.get("onlyActive") {
                    None | Some(Value::Null) => false,
                    Some(v) => as_flag(v).ok_or_else(|| PfErr::invalid("onlyActive"))?,
                };
                fields_param(&body)?;
                let rows: Vec<Value> = d
                    .users
                    .iter()
                    .filter(|u| !only_active || u.status == "Active")
                    .skip(offset)
                    .take(size)
                    .map(User::json)
                    .collect();
                Ok(ok_with("users", Value::Array(rows)))
            }
            Op::Processes => Ok(ok_with("processes", json!([{"id": 1, "name": "Default"}]))),
            Op::ProjectCreate => {
                let name = opt_str(&body, "name")?
                    .filter(|n| !n.trim().is_empty())
                    .ok_or_else(|| PfErr::missing("name"))?
                    .to_owned();
                let id = d.next_project;
                d.next_project += 1;
                let mut p = Map::new();
                p.insert("id".into(), json!(id));
                merge(&mut p, &body, &["id"]);
                p.insert("name".into(), json!(name));
                d.projects.push(p);
                Ok(created(id))
            }
            Op::ProjectList => {
                let (offset, size) = paging(&body)?;
                let fields = fields_param(&body)?;
                let rows: Vec<Value> = d
                    .projects
                    .iter()
                    .skip(offset)
                    .take(size)
                    .map(|p| select(p, fields, &[]))
                    .collect();
                Ok(ok_with("projects", Value::Array(rows)))
            }
            Op::ProjectGet(id) => {
                let id = path_id(&id, "project")?;
                let i = Self::project_idx(d, id)
                    .ok_or_else(|| Kind::Project.not_found(id, StatusCode::NOT_FOUND))?;
                let fields = req.query_param("fields");
                Ok(ok_with(
                    "project",
                    select(&d.projects[i], fields.as_deref(), &[]),
                ))
            }
            Op::ProjectUpdate(id) => {
                let id = path_id(&id, "project")?;
                let i = Self::project_idx(d, id)
                    .ok_or_else(|| Kind::Project.not_found(id, StatusCode::BAD_REQUEST))?;
                if let Some(n) = opt_str(&body, "name")?
                    && n.trim().is_empty()
                {
                    return Err(PfErr::invalid("name"));
                }
                merge(&mut d.projects[i], &body, &["id"]);
                Ok(success())
            }
        }
    }

    /// The JSON object body of a POST; empty = `{}`; else 400 code 30.
    fn body(req: &Req) -> R<Map<String, Value>> {
        if req.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Map::new());
        }
        match serde_json::from_slice::<Value>(&req.body) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(PfErr::new(StatusCode::BAD_REQUEST, 30, "Invalid JSON")),
        }
    }

    fn contact_create(d: &mut Data, body: &Map<String, Value>) -> R<Resp> {
        if opt_str(body, "name")?.is_none_or(|n| n.trim().is_empty()) {
            return Err(PfErr::missing("name"));
        }
        check_contact(body)?;
        let id = Self::insert_contact(d, body);
        Ok(created(id))
    }

    fn contact_list(d: &Data, body: &Map<String, Value>) -> R<Resp> {
        let (offset, size) = paging(body)?;
        let fields = fields_param(body)?;
        let mut filters = contact_filters(body)?;
        match body.get("isCompany") {
            None | Some(Value::Null) => {}
            Some(Value::Bool(b)) => filters.push((ContactFilter::IsCompany(*b), false)),
            Some(_) => return Err(PfErr::invalid("isCompany")),
        }
        let defaults = contact_defaults();
        let rows: Vec<Value> = d
            .contacts
            .iter()
            .filter(|c| {
                filters
                    .iter()
                    .all(|(f, negate)| contact_matches(c, f) != *negate)
            })
            .skip(offset)
            .take(size)
            .map(|c| select(c, fields, &defaults))
            .collect();
        Ok(ok_with("contacts", Value::Array(rows)))
    }

    fn task_list(d: &Data, body: &Map<String, Value>) -> R<Resp> {
        let (offset, size) = paging(body)?;
        let fields = fields_param(body)?;
        let filters = task_filters(body)?;
        let defaults = task_defaults();
        let rows: Vec<Value> = d
            .tasks
            .iter()
            .filter(|t| {
                filters
                    .iter()
                    .all(|(f, negate)| task_matches(t, f) != *negate)
            })
            .skip(offset)
            .take(size)
            .map(|t| {
                let full = Self::task_full(d, t);
                select(full.as_object().unwrap_or(&Map::new()), fields, &defaults)
            })
            .collect();
        Ok(ok_with("tasks", Value::Array(rows)))
    }

    fn check_person(d: &Data, kind: &str, n: i64) -> R<()> {
        match kind {
            "user" if !d.users.iter().any(|u| u.id == n) => {
                Err(Kind::User.not_found(n, StatusCode::BAD_REQUEST))
            }
            "contact" if Self::contact_idx(d, n).is_none() => {
                Err(Kind::Contact.not_found(n, StatusCode::BAD_REQUEST))
            }
            _ => Ok(()),
        }
    }

    /// Types first, then the objects named must exist.
    fn check_task(d: &Data, b: &Map<String, Value>) -> R<()> {
        for k in ["name", "description"] {
            opt_str(b, k)?;
        }
        check_id_object(b, "template")?;
        check_custom_fields(b)?;
        let project = check_id_object(b, "project")?;
        let counterparty = match b.get("counterparty") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(id_of(v, "contact", "counterparty")?),
            Some(_) => return Err(PfErr::invalid("counterparty")),
        };
        let mut people = Vec::new();
        for key in ["assignees", "participants", "auditors"] {
            let Some(v) = b.get(key).filter(|v| !v.is_null()) else {
                continue;
            };
            let obj = v.as_object().ok_or_else(|| PfErr::invalid(key))?;
            match obj.get("users") {
                None | Some(Value::Null) => {}
                Some(Value::Array(users)) => {
                    for u in users {
                        let id = u.get("id").ok_or_else(|| PfErr::invalid(key))?;
                        let (kind, n) = person(id, "user", key)?;
                        if kind == "group" {
                            return Err(PfErr::invalid(key));
                        }
                        people.push((kind, n));
                    }
                }
                Some(_) => return Err(PfErr::invalid(key)),
            }
            match obj.get("groups") {
                None | Some(Value::Null) => {}
                Some(Value::Array(groups)) => {
                    for g in groups {
                        id_of(g, "group", key)?;
                    }
                }
                Some(_) => return Err(PfErr::invalid(key)),
            }
        }
        if let Some(a) = b.get("assigner").filter(|v| !v.is_null()) {
            let id = a.get("id").ok_or_else(|| PfErr::invalid("assigner"))?;
            let (kind, n) = person(id, "user", "assigner")?;
            if kind != "user" {
                return Err(PfErr::invalid("assigner"));
            }
            people.push((kind, n));
        }
        if let Some(p) = project
            && Self::project_idx(d, p).is_none()
        {
            return Err(Kind::Project.not_found(p, StatusCode::BAD_REQUEST));
        }
        if let Some(c) = counterparty
            && Self::contact_idx(d, c).is_none()
        {
            return Err(Kind::Contact.not_found(c, StatusCode::BAD_REQUEST));
        }
        for (kind, n) in people {
            Self::check_person(d, kind, n)?;
        }
        Ok(())
    }

    // --------------------------------------------------------------- chat

    fn chat(&self, req: &Req) -> Resp {
        let is_form = req
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
        if req.method != Method::POST || !is_form {
            return invalid_parameters();
        }
        let pairs = req.form_pairs();
        let first = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        if first("planfix_token") != Some(self.chat_token.as_str()) || self.chat_token.is_empty() {
            return chat_error(StatusCode::UNAUTHORIZED, "Invalid token");
        }
        let Some(provider) = first("providerId").filter(|p| !p.is_empty() && !p.contains('~'))
        else {
            return invalid_parameters();
        };
        let required = |k: &str| first(k).filter(|v| !v.trim().is_empty());
        let provider = provider.to_owned();
        let mut d = lock(&self.data);
        match first("cmd").unwrap_or_default() {
            "newMessage" => Self::new_message(&mut d, &provider, &pairs),
            "getTask" => {
                let Some(chat_id) = required("chatId") else {
                    return invalid_parameters();
                };
                let Some(chat) = d
                    .chats
                    .iter()
                    .find(|c| c.provider_id == provider && c.chat_id == chat_id)
                    .cloned()
                else {
                    return chat_error(StatusCode::BAD_REQUEST, "task not found");
                };
                if let Some(lag) = d
                    .task_lag
                    .iter_mut()
                    .find(|(p, c, n)| *p == provider && c == chat_id && *n > 0)
                {
                    lag.2 -= 1;
                    return chat_error(StatusCode::BAD_REQUEST, "task not found");
                }
                Resp::json(
                    StatusCode::OK,
                    &json!({"data": {"number": chat.task_number}}),
                )
            }
            "getContact" => {
                let Some(contact_id) = required("contactId") else {
                    return invalid_parameters();
                };
                let number = Self::chat_contact(&d, &provider, contact_id)
                    .and_then(|id| Self::contact_idx(&d, id))
                    .and_then(|i| d.contacts[i].get("number").cloned());
                match number {
                    Some(n) => Resp::json(StatusCode::OK, &json!({"data": {"number": n}})),
                    None => chat_error(StatusCode::BAD_REQUEST, "unknown contact"),
                }
            }
            "updateContact" => {
                let (Some(contact_id), Some(name)) =
                    (required("contactId"), required("contactName"))
                else {
                    return invalid_parameters();
                };
                let Some(i) = Self::chat_contact(&d, &provider, contact_id)
                    .and_then(|id| Self::contact_idx(&d, id))
                else {
                    return invalid_parameters();
                };
                let mut update = Map::new();
                update.insert("name".into(), json!(name));
                for (param, field) in [
                    ("contactLastName", "lastname"),
                    ("contactEmail", "email"),
                    ("contactData", "description"),
                ] {
                    if let Some(v) = first(param) {
                        update.insert(field.into(), json!(v));
                    }
                }
                if let Some(p) = first("contactPhone") {
                    update.insert(
                        "phones".into(),
                        with_masked(&json!([{"number": p, "type": 1}])),
                    );
                }
                merge(&mut d.contacts[i], &update, &["id", "number"]);
                empty_ok()
            }
            "messageStatus" => {
                let (Some(message_id), Some(raw)) =
                    (required("messageId"), required("messageStatus"))
                else {
                    return invalid_parameters();
                };
                if !d.made_messages.iter().any(|m| m == message_id) {
                    return invalid_parameters();
                }
                let status = match raw {
                    "error" | "read" => raw,
                    _ => "sent",
                };
                d.statuses.push(MessageStatus {
                    message_id: message_id.to_owned(),
                    status: status.to_owned(),
                    raw_status: raw.to_owned(),
                    text: first("messageStatusText").map(str::to_owned),
                });
                empty_ok()
            }
            _ => invalid_parameters(),
        }
    }

    fn chat_contact(d: &Data, provider: &str, contact_id: &str) -> Option<i64> {
        d.chat_contacts
            .iter()
            .find(|(p, c, _)| p == provider && c == contact_id)
            .map(|(_, _, id)| *id)
    }

    fn new_message(d: &mut Data, provider: &str, pairs: &[(String, String)]) -> Resp {
        let first = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let required = |k: &str| first(k).filter(|v| !v.trim().is_empty());
        let (Some(chat_id), Some(contact_id), Some(contact_name)) = (
            required("chatId"),
            required("contactId"),
            required("contactName"),
        ) else {
            return invalid_parameters();
        };
        let all = |k: &str| -> Vec<String> {
            pairs
                .iter()
                .filter(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .collect()
        };
        let names = all("attachments[name]");
        let urls = all("attachments[url]");
        if names.len() != urls.len() || urls.iter().any(String::is_empty) {
            return invalid_parameters();
        }
        let attachments: Vec<(String, String)> = names.into_iter().zip(urls).collect();
        let Some(text) = first("message") else {
            return invalid_parameters();
        };
        if text.trim().is_empty() && attachments.is_empty() {
            return invalid_parameters();
        }
        let is_echo = match first("isEcho") {
            None | Some("" | "false" | "0") => false,
            Some("true" | "1") => true,
            Some(_) => return invalid_parameters(),
        };
        let data: BTreeMap<String, String> = pairs
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("data_")
                    .filter(|f| !f.is_empty())
                    .map(|f| (f.to_owned(), v.clone()))
            })
            .collect();
        let user_email = first("userEmail").filter(|e| !e.is_empty());
        let title = first("title").filter(|t| !t.is_empty());
        let idx = match d
            .chats
            .iter()
            .position(|c| c.provider_id == provider && c.chat_id == chat_id)
        {
            Some(i) => i,
            None => {
                let contact = match Self::chat_contact(d, provider, contact_id)
                    .filter(|id| Self::contact_idx(d, *id).is_some())
                {
                    Some(id) => id,
                    None => {
                        let mut body = Map::new();
                        body.insert("name".into(), json!(contact_name));
                        for (param, field) in [
                            ("contactLastName", "lastname"),
                            ("contactEmail", "email"),
                            ("contactData", "description"),
                        ] {
                            if let Some(v) = first(param).filter(|v| !v.is_empty()) {
                                body.insert(field.into(), json!(v));
                            }
                        }
                        if let Some(p) = first("contactPhone").filter(|v| !v.is_empty()) {
                            body.insert("phones".into(), json!([{"number": p, "type": 1}]));
                        }
                        let id = Self::insert_contact(d, &body);
                        d.chat_contacts
                            .retain(|(p, c, _)| !(p == provider && c == contact_id));
                        d.chat_contacts
                            .push((provider.to_owned(), contact_id.to_owned(), id));
                        id
                    }
                };
                let mut body = Map::new();
                let name = title.map_or_else(|| format!("Chat with {contact_name}"), str::to_owned);
                body.insert("name".into(), json!(name));
                body.insert("counterparty".into(), json!({"id": contact}));
                let (task_id, task_number) = Self::insert_task(d, &body);
                if d.get_task_lag > 0 {
                    d.task_lag
                        .push((provider.to_owned(), chat_id.to_owned(), d.get_task_lag));
                }
                d.chats.push(Chat {
                    provider_id: provider.to_owned(),
                    chat_id: chat_id.to_owned(),
                    contact_id: contact_id.to_owned(),
                    planfix_contact_id: contact,
                    task_id,
                    task_number,
                    started_in_planfix: false,
                    messages: Vec::new(),
                });
                d.chats.len() - 1
            }
        };
        let owner = if is_echo {
            Self::user_by_email(d, user_email)
        } else {
            format!("contact:{}", d.chats[idx].planfix_contact_id)
        };
        let task_id = d.chats[idx].task_id;
        let comment = if text.is_empty() {
            attachments
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            text.to_owned()
        };
        Self::add_comment(d, task_id, &comment, Some(owner), true);
        let params = pairs
            .iter()
            .map(|(k, v)| {
                let v = if k == "planfix_token" {
                    "***"
                } else {
                    v.as_str()
                };
                (k.clone(), v.to_owned())
            })
            .collect();
        d.chats[idx].messages.push(ChatMessage {
            provider_id: provider.to_owned(),
            chat_id: chat_id.to_owned(),
            text: text.to_owned(),
            contact_id: contact_id.to_owned(),
            contact_name: contact_name.to_owned(),
            title: title.map(str::to_owned),
            attachments,
            is_echo,
            user_email: user_email.map(str::to_owned),
            data,
            params,
        });
        empty_ok()
    }
}

/// Types of a contact body's known fields (create and update).
fn check_contact(b: &Map<String, Value>) -> R<()> {
    for k in [
        "name",
        "midname",
        "lastname",
        "email",
        "description",
        "address",
        "site",
        "position",
        "skype",
        "telegram",
    ] {
        opt_str(b, k)?;
    }
    match b.get("isCompany") {
        None | Some(Value::Null | Value::Bool(_)) => {}
        Some(_) => return Err(PfErr::invalid("isCompany")),
    }
    match b.get("phones") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for p in items {
                let ok_number = p
                    .get("number")
                    .and_then(Value::as_str)
                    .is_some_and(|n| !n.trim().is_empty());
                let ok_type = p
                    .get("type")
                    .is_none_or(|t| t.as_i64().is_some_and(|n| (1..=4).contains(&n)));
                if !ok_number || !ok_type {
                    return Err(PfErr::invalid("phones"));
                }
            }
        }
        Some(_) => return Err(PfErr::invalid("phones")),
    }
    check_id_object(b, "template")?;
    check_custom_fields(b)?;
    if let Some(e) = opt_str(b, "email")?
        && !e.trim().is_empty()
        && !e.contains('@')
    {
        return Err(PfErr::new(StatusCode::BAD_REQUEST, 2004, "Invalid email"));
    }
    Ok(())
}

impl Vendor for PfVendor {
    fn secret_headers(&self) -> &'static [&'static str] {
        &["authorization"]
    }

    fn secret_params(&self) -> &'static [&'static str] {
        &["access_token", "planfix_token", "token"]
    }

    fn fault_response(&self, fault: &Fault, req: &Req) -> Resp {
        let chat = req.path.starts_with("/webchat");
        match (fault, chat) {
            (Fault::TooManyRequests, true) => {
                chat_error(StatusCode::TOO_MANY_REQUESTS, "Too many requests")
            }
            (Fault::TooManyRequests, false) => {
                PfErr::new(StatusCode::TOO_MANY_REQUESTS, 22, "Request limit exceeded").resp()
            }
            (_, true) => chat_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error"),
            (_, false) => PfErr::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                0,
                "Internal server error",
            )
            .resp(),
        }
    }

    fn handle(&self, req: &Req) -> Resp {
        if req.segments_after("/rest").is_some() {
            return self.0.rest(req);
        }
        if req.path == "/webchat/api" || req.path == "/webchat/api/" {
            return self.0.chat(req);
        }
        PfErr::new(StatusCode::NOT_FOUND, 0, "Unknown method").resp()
    }
}
