//! Planfix: contacts and tasks through REST v2, and the conversation through
//! Planfix's chat API with crmbridge as the chat provider. Facts, with how
//! sure we are of each: `vendors/planfix/API.md`.
//!
//! - REST: `Authorization: Bearer <token>` (a robot employee's token),
//!   JSON both ways, errors `{"result":"fail","code","error"}`. Lists page
//!   with `offset`/`pageSize` (≤ 100). Planfix's help says one request a
//!   second: the connection is held to that.
//! - Contacts are found by phone, then e-mail (`POST /contact/list`, filters
//!   4003 and 4005, which match substrings: every candidate is re-checked
//!   here), so a find-or-create step never makes a second contact for a
//!   visitor.
//! - The connection check proves each scope the integration needs: read
//!   scopes by a one-row read, write scopes by a write without its required
//!   fields (a token without the scope is refused with code 5 before its
//!   body is looked at, one with it with a validation error), so nothing is
//!   written. Missing scopes are named.
//! - Chat API, provider → Planfix: form-encoded commands to the account's
//!   chat endpoint (`newMessage`, `getTask`, `messageStatus`) keyed with
//!   Planfix's chat key (`planfix_token`). Planfix → provider: its calls to
//!   the connection's webhook address (an operator's reply; the first
//!   message an operator writes from a contact's card) carry our provider
//!   key as `token`, compared in constant time; Planfix expects
//!   `{"chatId","contactId"}` back.
//!
//! Sending a step again after an attempt with an unknown outcome:
//!
//! | action | resend | why |
//! |---|---|---|
//! | `planfix.contact.create` | `Unsafe` unless the step finds first | Planfix takes no client key on creates; a find-or-create step searches again and finds what the lost attempt made |
//! | `planfix.contact.update` | `Repeatable` | sets the same fields again |
//! | `planfix.task.create`, `planfix.task.comment` | `Unsafe` | no client key: a lost answer is reviewed, not guessed |
//! | `planfix.chat.message` | `ReadBack` (`Unsafe` with files only) | `newMessage` takes no message id: after a lost answer the chat task's comments tell whether it arrived |
//! | `planfix.chat.task`, `planfix.chat.message_status` | `Repeatable` | a read, and a status set to the same value |
#![doc = include_str!("API.md")]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Timelike, Utc};
use crmbridge_mapping::{
    ActionKind, ActionSpec, EventKindSpec, FieldSpec, FieldType, LookupKey, Subject,
};
use serde_json::{Map, Value, json};

use crate::client::{Idempotency, VendorError, VendorPolicy, VendorRequest, VendorResponse, redact};
use crate::support::{
    same_bytes,
    base_url, credential, digits, field, only_known, params_of, required_text, resend_by_text, same_phone, same_text, sent_since, text,
    validate_known_settings, with_timeout,
};
use crate::{
    Account, Action, ActionError, ActionOutput, CallContext, ConnectionView, DecodeError,
    DecodedEvent, EventSource, InboundRequest, Lookup, Resend, Sent, SettingsError, Vendor,
    VendorSettings, WebhookSource,
};

const DOMAINS: &[&str] = &[".planfix.com", ".planfix.ru"];
const SETTINGS: &[&str] = &[
    "chat_endpoint",
    "provider_id",
    "default_region",
    "timeout_ms",
    "max_requests_per_second",
];
/// A list page (Planfix's most).
const PAGE: usize = 100;
/// Pages of candidates read for one contact search.
const MAX_SEARCH_PAGES: usize = 5;

/// The scopes the integration's help article lists, in its order.
pub const SCOPES: &[&str] = &[
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

/// One request a second, as Planfix's help writes it (uncertain: the
/// daily quota is the documented hard limit), unless the connection's
/// `max_requests_per_second` says otherwise (1–50); two in flight.
pub fn policy(settings: &Value) -> VendorPolicy {
    let per_second = settings["max_requests_per_second"]
        .as_u64()
        .filter(|n| (1..=50).contains(n))
        .unwrap_or(1) as usize;
    VendorPolicy::new("planfix", per_second, Duration::from_secs(1), 2)
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Planfix;

/// Planfix's refusal, read from either envelope (`fail`/`failure`,
/// `error`/`message`).
fn refusal(body: &Value) -> (Option<i64>, String) {
    let code = body["code"].as_i64();
    let message = body["error"]
        .as_str()
        .or_else(|| body["message"].as_str())
        .unwrap_or("refused")
        .to_owned();
    (code, message)
}

impl Planfix {
    /// A task's REST id from its number (filter 57), if the list has it.
    async fn task_by_number(&self, ctx: &CallContext<'_>, number: i64) -> Result<Option<String>, ActionError> {
        let body = json!({
            "offset": 0, "pageSize": 1, "fields": "id,number",
            "filters": [{"type": TASK_NUMBER_FILTER, "operator": "equal", "value": number}],
        });
        let (answer, _) = self
            .rest(ctx, reqwest::Method::POST, "task/list", Some(&body), Idempotency::Idempotent)
            .await?;
        Ok(answer["tasks"]
            .as_array()
            .and_then(|tasks| tasks.first())
            .and_then(|task| match &task["id"] {
                Value::Number(n) => Some(n.to_string()),
                Value::String(s) if !s.is_empty() => Some(s.clone()),
                _ => None,
            }))
    }

    fn base(ctx: &CallContext<'_>) -> Result<String, ActionError> {
        base_url(ctx.settings, "", DOMAINS, ctx.allow_any_base_url)
    }

    fn chat_endpoint(ctx: &CallContext<'_>) -> Result<String, ActionError> {
        let url = ctx.settings["chat_endpoint"].as_str().ok_or_else(|| {
            ActionError::Config(
                "settings.chat_endpoint is required for chat actions (Planfix: Integrations → Chats)"
                    .into(),
            )
        })?;
        crate::support::check_base_url(url, DOMAINS, ctx.allow_any_base_url)
            .map_err(|m| ActionError::Config(format!("settings.chat_endpoint: {m}")))?;
        Ok(url.to_owned())
    }

    fn provider_id(ctx: &CallContext<'_>) -> String {
        ctx.settings["provider_id"]
            .as_str()
            .unwrap_or(DEFAULT_PROVIDER_ID)
            .to_owned()
    }

    /// One REST call: the answer's JSON, or Planfix's refusal classified.
    async fn rest(
        &self,
        ctx: &CallContext<'_>,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        idempotency: Idempotency,
    ) -> Result<(Value, VendorResponse), ActionError> {
        let token = credential(ctx.credentials, "token")?;
        let url = format!("{}/{}", Self::base(ctx)?, path.trim_start_matches('/'));
        let request = match body {
            Some(body) => VendorRequest::with_body(method, url, body.to_string().into_bytes(), idempotency)
                .header("content-type", "application/json"),
            None => VendorRequest::get(url),
        }
        .header("authorization", format!("Bearer {token}"));
        let response = ctx
            .http
            .send(ctx.connection, &with_timeout(policy(ctx.settings), ctx.settings), &request, &[token])
            .await?;
        let parsed = response.json().unwrap_or(Value::Null);
        let failed = matches!(parsed["result"].as_str(), Some("fail" | "failure"));
        if response.is_success() && !failed {
            return Ok((parsed, response));
        }
        let (code, message) = refusal(&parsed);
        let message = redact(&message, &[token]);
        Err(match (response.status, code) {
            (status, _) if status >= 500 || status == 429 => VendorError::Status {
                vendor: "planfix",
                status,
                attempts: response.attempts,
                body: message,
            },
            // 1 unknown token, 2 token inactive, 16 user inactive.
            (status, Some(1 | 2 | 16)) | (status @ 401, _) => VendorError::CredentialsRefused {
                vendor: "planfix",
                status,
                message: format!("the token is not accepted: {message}"),
            },
            // The day's quota is spent: unavailable until it renews.
            (status, Some(22)) => VendorError::Status {
                vendor: "planfix",
                status: if status < 500 { 429 } else { status },
                attempts: response.attempts,
                body: message,
            },
            (status, code) => VendorError::Rejected {
                vendor: "planfix",
                status,
                message: match code {
                    Some(code) => format!("{message} (code {code})"),
                    None => message,
                },
            },
        }
        .into())
    }

    /// A chat API command, form-encoded, keyed with Planfix's chat key.
    async fn chat(
        &self,
        ctx: &CallContext<'_>,
        cmd: &str,
        params: &[(String, String)],
        idempotency: Idempotency,
    ) -> Result<(Value, VendorResponse), ActionError> {
        let key = credential(ctx.credentials, "planfix_token")?;
        let body = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("cmd", cmd);
            form.append_pair("providerId", &Self::provider_id(ctx));
            form.append_pair("planfix_token", key);
            for (name, value) in params {
                form.append_pair(name, value);
            }
            form.finish()
        };
        let request = VendorRequest::with_body(
            reqwest::Method::POST,
            Self::chat_endpoint(ctx)?,
            body.into_bytes(),
            idempotency,
        )
        .header("content-type", "application/x-www-form-urlencoded");
        let response = ctx
            .http
            .send(ctx.connection, &with_timeout(policy(ctx.settings), ctx.settings), &request, &[key])
            .await?;
        let parsed = if response.body.is_empty() {
            Value::Null
        } else {
            response.json().unwrap_or(Value::Null)
        };
        if response.is_success() {
            return Ok((parsed, response));
        }
        let message = redact(parsed["error"].as_str().unwrap_or("refused"), &[key]);
        Err(match response.status {
            status if status >= 500 || status == 429 => VendorError::Status {
                vendor: "planfix",
                status,
                attempts: response.attempts,
                body: message,
            },
            401 => VendorError::CredentialsRefused {
                vendor: "planfix",
                status: 401,
                message: format!("the chat key (planfix_token) is not accepted: {message}"),
            },
            status => VendorError::Rejected {
                vendor: "planfix",
                status,
                message: format!("chat command {cmd}: {message}"),
            },
        }
        .into())
    }

    /// Contacts whose phone or e-mail is one of `keys`, re-checked here.
    async fn find_contact(
        &self,
        ctx: &CallContext<'_>,
        keys: &[LookupKey],
    ) -> Result<Option<String>, ActionError> {
        for key in keys {
            let Some(wanted) = key.value.as_str().filter(|v| !v.trim().is_empty()) else {
                continue;
            };
            let (filter_type, needle) = match key.field.as_str() {
                // The last ten digits: how a person may have typed the
                // number is unknown, the line is the same.
                "phone" => {
                    let all = digits(wanted);
                    let tail = all[all.len().saturating_sub(10)..].to_owned();
                    if tail.is_empty() {
                        continue;
                    }
                    (4003, tail)
                }
                "email" => (4005, wanted.trim().to_lowercase()),
                other => {
                    return Err(ActionError::field(
                        format!("dedupe.by.{other}"),
                        "Planfix contacts are found by phone or email",
                    ));
                }
            };
            for page in 0..MAX_SEARCH_PAGES {
                let body = json!({
                    "offset": page * PAGE, "pageSize": PAGE,
                    "fields": "id,name,lastname,email,phones,isCompany",
                    "filters": [{"type": filter_type, "operator": "equal", "value": needle}],
                });
                let (answer, _) = self
                    .rest(ctx, reqwest::Method::POST, "contact/list", Some(&body), Idempotency::Idempotent)
                    .await?;
                let rows = answer["contacts"].as_array().cloned().unwrap_or_default();
                let found = rows.iter().find(|contact| match key.field.as_str() {
                    "phone" => contact["phones"].as_array().into_iter().flatten().any(|p| {
                        p["number"].as_str().is_some_and(|n| same_phone(n, wanted))
                            || p["maskedNumber"].as_str().is_some_and(|n| same_phone(n, wanted))
                    }),
                    _ => contact["email"]
                        .as_str()
                        .is_some_and(|e| e.trim().eq_ignore_ascii_case(wanted.trim())),
                });
                if let Some(contact) = found {
                    return Ok(Some(id_text(&contact["id"])));
                }
                if rows.len() < PAGE {
                    break;
                }
            }
        }
        Ok(None)
    }

    /// A Planfix user's id (`user:N`) by e-mail, from the live users list.
    async fn user_by_email(&self, ctx: &CallContext<'_>, email: &str) -> Result<String, ActionError> {
        for page in 0..MAX_SEARCH_PAGES {
            let body = json!({"offset": page * PAGE, "pageSize": PAGE, "onlyActive": true,
                              "fields": "id,name,lastname,email,role,status"});
            let (answer, _) = self
                .rest(ctx, reqwest::Method::POST, "user/list", Some(&body), Idempotency::Idempotent)
                .await?;
            let users = answer["users"].as_array().cloned().unwrap_or_default();
            if let Some(user) = users
                .iter()
                .find(|u| u["email"].as_str().is_some_and(|e| e.eq_ignore_ascii_case(email.trim())))
            {
                let id = id_text(&user["id"]);
                return Ok(if id.starts_with("user:") { id } else { format!("user:{id}") });
            }
            if users.len() < PAGE {
                break;
            }
        }
        Err(ActionError::field(
            "fields.assignee_email",
            format!("no active Planfix user has the e-mail {email}"),
        ))
    }
}

/// The provider id used when the connection names none.
pub const DEFAULT_PROVIDER_ID: &str = "crmbridge";

fn id_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A numeric Planfix id from a field (`12`, `"12"`, `"contact:12"`).
fn numeric_id(fields: &Map<String, Value>, name: &str) -> Result<Option<i64>, ActionError> {
    let Some(raw) = text(fields, name) else {
        return Ok(None);
    };
    let bare = raw.rsplit(':').next().unwrap_or_default().trim();
    bare.parse::<i64>()
        .map(Some)
        .map_err(|_| ActionError::field(format!("fields.{name}"), format!("not a Planfix id: {raw:?}")))
}

fn created(answer: &Value, response: &VendorResponse) -> ActionOutput {
    let id = id_text(&answer["id"]);
    ActionOutput {
        id: id.clone(),
        record: json!({"id": id}),
        response_status: response.status,
        attempts: response.attempts,
    }
}

impl VendorSettings for Planfix {
    fn required_credentials(&self) -> &'static [&'static str] {
        &["token"]
    }

    fn validate_settings(
        &self,
        settings: &Value,
        allow_any_base_url: bool,
    ) -> Result<(), Vec<SettingsError>> {
        let mut errors = validate_known_settings(settings, SETTINGS, None, DOMAINS, allow_any_base_url)
            .err()
            .unwrap_or_default();
        if let Some(url) = settings.get("chat_endpoint") {
            match url.as_str() {
                Some(url) => {
                    if let Err(message) = crate::support::check_base_url(url, DOMAINS, allow_any_base_url) {
                        errors.push(SettingsError { field: "chat_endpoint".into(), message });
                    }
                }
                None => errors.push(SettingsError {
                    field: "chat_endpoint".into(),
                    message: "must be the chat API address Planfix shows".into(),
                }),
            }
        }
        if let Some(rate) = settings.get("max_requests_per_second")
            && !rate.as_u64().is_some_and(|n| (1..=50).contains(&n))
        {
            errors.push(SettingsError {
                field: "max_requests_per_second".into(),
                message: "a whole number, 1 to 50 (Planfix's help says 1)".into(),
            });
        }
        if let Some(id) = settings.get("provider_id")
            && !id.as_str().is_some_and(|id| !id.is_empty() && !id.contains('~'))
        {
            errors.push(SettingsError {
                field: "provider_id".into(),
                message: "text without '~' (Planfix separates providers by it)".into(),
            });
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

/// An operator's message from Planfix.
pub const OPERATOR_MESSAGE: &str = "planfix.chat.operator_message";

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// The chat a Planfix notification is about: its `chatId`, or — for the
/// first message an operator writes from a contact's card, which has
/// none — one named after the contact's phone, so a resent first message
/// binds the same chat.
fn chat_of(params: &[(String, String)]) -> Result<String, DecodeError> {
    if let Some(chat) = param(params, "chatId") {
        return Ok(chat.to_owned());
    }
    let phone = param(params, "contactPhone").map(digits).unwrap_or_default();
    if phone.is_empty() {
        return Err(DecodeError::new(
            "body.chatId",
            "missing (a first message without a chat needs body.contactPhone)",
        ));
    }
    Ok(format!("phone-{phone}"))
}

/// Repeated `attachments[name]` / `attachments[url]` pairs, in order.
fn attachments(params: &[(String, String)]) -> Vec<Value> {
    let names = params.iter().filter(|(n, _)| n == "attachments[name]").map(|(_, v)| v);
    let urls = params.iter().filter(|(n, _)| n == "attachments[url]").map(|(_, v)| v);
    names.zip(urls).map(|(name, url)| json!({"name": name, "url": url})).collect()
}

impl WebhookSource for Planfix {
    /// Planfix reads `{"chatId","contactId"}` from a 200.
    fn ack_status(&self) -> u16 {
        200
    }

    fn signing_credential(&self) -> Option<&'static str> {
        Some("provider_key")
    }

    fn reply(&self, request: &InboundRequest<'_>) -> Option<Value> {
        let params = params_of(request).ok()?;
        let chat = chat_of(&params).ok()?;
        Some(json!({"chatId": chat, "contactId": chat}))
    }

    fn decode_webhook(
        &self,
        connection: ConnectionView<'_>,
        request: &InboundRequest<'_>,
    ) -> Result<Vec<DecodedEvent>, DecodeError> {
        let params = params_of(request)?;
        let Some(expected) = connection.signing_secret else {
            return Err(DecodeError::unauthenticated(
                "credentials.provider_key",
                "the connection has no provider key: set the key you gave Planfix",
            ));
        };
        let given = param(&params, "token").unwrap_or_default();
        if !same_bytes(given.as_bytes(), expected.as_bytes()) {
            return Err(DecodeError::unauthenticated("body.token", "not this connection's provider key"));
        }
        let cmd = param(&params, "cmd").ok_or_else(|| DecodeError::new("body.cmd", "missing"))?;
        if cmd != "newMessage" {
            return Err(DecodeError::new("body.cmd", format!("{cmd:?} is not a command Planfix sends a provider")));
        }
        let ours = connection.settings["provider_id"].as_str().unwrap_or(DEFAULT_PROVIDER_ID);
        if let Some(provider) = param(&params, "providerId")
            && provider != ours
        {
            return Err(DecodeError::new("body.providerId", format!("{provider:?} is not this connection's ({ours:?})")));
        }
        let missing: Vec<&str> = ["messageId", "message"]
            .into_iter()
            .filter(|name| param(&params, name).is_none())
            .collect();
        let files = attachments(&params);
        let missing: Vec<&str> = missing
            .into_iter()
            .filter(|name| *name != "message" || files.is_empty())
            .collect();
        if let Some(first) = missing.first() {
            return Err(DecodeError::new(
                format!("body.{first}"),
                format!("missing: {}", missing.join(", ")),
            ));
        }
        let chat = chat_of(&params)?;
        let message_id = param(&params, "messageId").unwrap_or_default().to_owned();
        Ok(vec![DecodedEvent {
            source_id: Some(format!("message:{message_id}")),
            kind: OPERATOR_MESSAGE.into(),
            subject: Subject { kind: "chat".into(), id: chat.clone() },
            occurred_at: None,
            observation: None,
            data: json!({
                "chat_id": chat,
                "contact_id": chat,
                "first": param(&params, "chatId").is_none(),
                "message_id": message_id,
                "message": param(&params, "message").unwrap_or_default(),
                "attachments": files,
                "user_name": param(&params, "userName"),
                "user_last_name": param(&params, "userLastName"),
                "task_email": param(&params, "taskEmail"),
                "contact_phone": param(&params, "contactPhone"),
                "channel": param(&params, "channel"),
            }),
        }])
    }
}

#[async_trait]
impl EventSource for Planfix {
    /// A chat's messages are relayed in the order they came, one at a
    /// time.
    fn sequence_key(&self, event: &crmbridge_mapping::Event) -> Option<String> {
        (event.kind == OPERATOR_MESSAGE).then(|| event.subject.id.clone())
    }

    fn event_kinds(&self) -> Vec<EventKindSpec> {
        vec![EventKindSpec::new(
            OPERATOR_MESSAGE,
            vec![
                field("chat_id", FieldType::String, "the chat (Verbox visitor id, or phone-<digits> for a chat an operator started from a contact's card)"),
                field("contact_id", FieldType::String, "the chat's contact as the provider names it"),
                field("first", FieldType::Boolean, "the operator started the chat from a contact's card"),
                field("message_id", FieldType::String, "Planfix's id for the message (for messageStatus)"),
                field("message", FieldType::String, "the text"),
                field("attachments", FieldType::Array, "files: {name, url}"),
                field("user_name", FieldType::String, "the operator's first name"),
                field("user_last_name", FieldType::String, "the operator's last name"),
                field("task_email", FieldType::String, "the chat task's e-mail address"),
                field("contact_phone", FieldType::Phone, "the contact's phone (a chat started from a card)"),
            ],
        )]
    }
}

#[async_trait]
impl Account for Planfix {
    /// Every scope the article lists, proven one by one without writing.
    async fn check(&self, ctx: &CallContext<'_>) -> Result<Value, ActionError> {
        let probes: [(&str, reqwest::Method, &str, Value); 11] = [
            ("contact_readonly", reqwest::Method::POST, "contact/list", json!({"offset": 0, "pageSize": 1, "fields": "id"})),
            ("task_readonly", reqwest::Method::POST, "task/list", json!({"offset": 0, "pageSize": 1, "fields": "id"})),
            ("user_readonly", reqwest::Method::POST, "user/list", json!({"offset": 0, "pageSize": 1, "fields": "id"})),
            ("project_readonly", reqwest::Method::POST, "project/list", json!({"offset": 0, "pageSize": 1, "fields": "id"})),
            ("process_readonly", reqwest::Method::GET, "process/task", Value::Null),
            ("contact_add", reqwest::Method::POST, "contact/", json!({})),
            ("contact_update", reqwest::Method::POST, "contact/0", json!({})),
            ("task_add", reqwest::Method::POST, "task/", json!({})),
            ("task_update", reqwest::Method::POST, "task/0", json!({})),
            ("project_add", reqwest::Method::POST, "project/", json!({})),
            ("project_update", reqwest::Method::POST, "project/0", json!({})),
        ];
        let mut missing = Vec::new();
        let mut users = Value::Null;
        for (scope, method, path, body) in probes {
            let body = (!body.is_null()).then_some(&body);
            match self.rest(ctx, method, path, body, Idempotency::Idempotent).await {
                Ok((answer, _)) => {
                    if scope == "user_readonly" {
                        users = answer["users"].clone();
                    }
                }
                Err(ActionError::Vendor(VendorError::Rejected { message, .. }))
                    if message.ends_with("(code 5)") =>
                {
                    missing.push(scope);
                }
                // A write probe without its fields is refused: the scope
                // let it that far.
                Err(ActionError::Vendor(VendorError::Rejected { .. })) if !scope.ends_with("readonly") => {}
                Err(err) => return Err(err),
            }
        }
        let mut order: Vec<&str> = SCOPES.to_vec();
        order.retain(|s| missing.contains(s));
        if !order.is_empty() {
            return Err(VendorError::CredentialsRefused {
                vendor: "planfix",
                status: 405,
                message: format!(
                    "the token lacks the scope(s) {}: give them to the token under Account management → API access → REST API",
                    order.join(", ")
                ),
            }
            .into());
        }
        Ok(json!({"scopes": SCOPES, "users_visible": users.as_array().map_or(0, Vec::len)}))
    }
}

fn contact_fields() -> Vec<FieldSpec> {
    vec![
        field("name", FieldType::String, "first name (or the company's name)"),
        field("last_name", FieldType::String, "last name"),
        field("email", FieldType::Email, "e-mail"),
        field("phone", FieldType::String, "phone, as it should be stored (see the phone_mask filter)"),
        field("is_company", FieldType::Boolean, "a company rather than a person"),
        field("description", FieldType::String, "description"),
        field("template_id", FieldType::String, "the contact template's id"),
    ]
}

const CONTACT_KNOWN: &[&str] = &["name", "last_name", "email", "phone", "is_company", "description", "template_id"];

fn contact_body(fields: &Map<String, Value>) -> Result<Value, ActionError> {
    only_known(fields, CONTACT_KNOWN)?;
    let mut body = Map::new();
    for (ours, theirs) in [("name", "name"), ("last_name", "lastname"), ("email", "email"), ("description", "description")] {
        if let Some(value) = text(fields, ours) {
            body.insert(theirs.into(), Value::String(value));
        }
    }
    if let Some(phone) = text(fields, "phone") {
        body.insert("phones".into(), json!([{"number": phone, "type": 1}]));
    }
    match fields.get("is_company") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(b)) => {
            body.insert("isCompany".into(), Value::Bool(*b));
        }
        Some(Value::String(s)) if s == "true" || s == "false" => {
            body.insert("isCompany".into(), Value::Bool(s == "true"));
        }
        Some(_) => return Err(ActionError::field("fields.is_company", "true or false")),
    }
    if let Some(template) = numeric_id(fields, "template_id")? {
        body.insert("template".into(), json!({"id": template}));
    }
    Ok(Value::Object(body))
}

/// `planfix.contact.create`.
struct CreateContact(Arc<Planfix>);

#[async_trait]
impl Action for CreateContact {
    fn spec(&self) -> ActionSpec {
        ActionSpec::new("planfix.contact.create", ActionKind::Create, contact_fields())
            .with_output(vec![field("id", FieldType::String, "the contact's id")])
    }

    fn resend(&self, _fields: &Map<String, Value>) -> Resend {
        Resend::Unsafe
    }

    async fn execute(
        &self,
        ctx: &CallContext<'_>,
        fields: &Map<String, Value>,
        _target: Option<&str>,
    ) -> Result<ActionOutput, ActionError> {
        let body = contact_body(fields)?;
        if body.get("name").is_none() {
            return Err(ActionError::field("fields.name", "is required to create a contact"));
        }
        let (answer, response) = self
            .0
            .rest(ctx, reqwest::Method::POST, "contact/", Some(&body), Idempotency::NotIdempotent)
            .await?;
        Ok(created(&answer, &response))
    }

    fn lookup(&self) -> Option<&dyn Lookup> {
        Some(self)
    }
}

#[async_trait]
impl Lookup for CreateContact {
    async fn find(
        &self,
        ctx: &CallContext<'_>,
        keys: &[LookupKey],
    ) -> Result<Option<String>, ActionError> {
        self.0.find_contact(ctx, keys).await
    }
}

/// `planfix.contact.update`.
struct UpdateContact(Arc<Planfix>);

#[async_trait]
impl Action for UpdateContact {
    fn spec(&self) -> ActionSpec {
        ActionSpec::new("planfix.contact.update", ActionKind::Update, contact_fields())
            .with_output(vec![field("id", FieldType::String, "the contact's id")])
    }

    fn resend(&self, _fields: &Map<String, Value>) -> Resend {
        Resend::Repeatable
    }

    async fn execute(
        &self,
        ctx: &CallContext<'_>,
        fields: &Map<String, Value>,
        target: Option<&str>,
    ) -> Result<ActionOutput, ActionError> {
        let id = target.ok_or_else(|| ActionError::field("target", "an update needs the contact's id"))?;
        let id: i64 = id
            .rsplit(':')
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| ActionError::field("target", format!("not a Planfix contact id: {id:?}")))?;
        let body = contact_body(fields)?;
        let (_, response) = self
            .0
            .rest(ctx, reqwest::Method::POST, &format!("contact/{id}"), Some(&body), Idempotency::Idempotent)
            .await?;
        Ok(ActionOutput {
            id: id.to_string(),
            record: json!({"id": id.to_string()}),
            response_status: response.status,
            attempts: response.attempts,
        })
    }
}

/// `planfix.task.create`.
struct CreateTask(Arc<Planfix>);

#[async_trait]
impl Action for CreateTask {
    fn spec(&self) -> ActionSpec {
        ActionSpec::new(
            "planfix.task.create",
            ActionKind::Create,
            vec![
                FieldSpec::required("name", FieldType::String).describe("the task's name"),
                field("description", FieldType::String, "description"),
                field("template_id", FieldType::String, "the task template (its process comes with it)"),
                field("project_id", FieldType::String, "the project to file it in"),
                field("contact_id", FieldType::String, "the client: the task's counterparty"),
                field("contact_ids", FieldType::Array, "further contacts taking part"),
                field("assignee_email", FieldType::Email, "the assignee, a Planfix user by e-mail (see the operator mapping)"),
            ],
        )
        .with_output(vec![field("id", FieldType::String, "the task's id")])
    }

    fn resend(&self, _fields: &Map<String, Value>) -> Resend {
        Resend::Unsafe
    }

    async fn execute(
        &self,
        ctx: &CallContext<'_>,
        fields: &Map<String, Value>,
        _target: Option<&str>,
    ) -> Result<ActionOutput, ActionError> {
        only_known(fields, &["name", "description", "template_id", "project_id", "contact_id", "contact_ids", "assignee_email"])?;
        let mut body = json!({"name": required_text(fields, "name")?});
        if let Some(description) = text(fields, "description") {
            body["description"] = Value::String(description);
        }
        if let Some(template) = numeric_id(fields, "template_id")? {
            body["template"] = json!({"id": template});
        }
        if let Some(project) = numeric_id(fields, "project_id")? {
            body["project"] = json!({"id": project});
        }
        if let Some(contact) = numeric_id(fields, "contact_id")? {
            body["counterparty"] = json!({"id": contact});
        }
        let mut participants = Vec::new();
        for (i, id) in fields
            .get("contact_ids")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let id = id_text(id);
            let bare = id.rsplit(':').next().unwrap_or_default();
            if bare.parse::<i64>().is_err() {
                return Err(ActionError::field(format!("fields.contact_ids[{i}]"), "not a Planfix contact id"));
            }
            participants.push(json!({"id": format!("contact:{bare}")}));
        }
        if !participants.is_empty() {
            body["participants"] = json!({"users": participants});
        }
        if let Some(email) = text(fields, "assignee_email") {
            let user = self.0.user_by_email(ctx, &email).await?;
            body["assignees"] = json!({"users": [{"id": user}]});
        }
        let (answer, response) = self
            .0
            .rest(ctx, reqwest::Method::POST, "task/", Some(&body), Idempotency::NotIdempotent)
            .await?;
        Ok(created(&answer, &response))
    }
}

/// `planfix.task.comment`.
struct CommentTask(Arc<Planfix>);

#[async_trait]
impl Action for CommentTask {
    fn spec(&self) -> ActionSpec {
        ActionSpec::new(
            "planfix.task.comment",
            ActionKind::Update,
            vec![FieldSpec::required("text", FieldType::String).describe("the comment")],
        )
        .with_output(vec![field("id", FieldType::String, "the comment's id")])
    }

    fn resend(&self, _fields: &Map<String, Value>) -> Resend {
        Resend::Unsafe
    }

    async fn execute(
        &self,
        ctx: &CallContext<'_>,
        fields: &Map<String, Value>,
        target: Option<&str>,
    ) -> Result<ActionOutput, ActionError> {
        only_known(fields, &["text"])?;
        let task = target.ok_or_else(|| ActionError::field("target", "a comment needs the task's id"))?;
        let task: i64 = task
            .parse()
            .map_err(|_| ActionError::field("target", format!("not a Planfix task id: {task:?}")))?;
        let body = json!({"description": required_text(fields, "text")?});
        let (answer, response) = self
            .0
            .rest(ctx, reqwest::Method::POST, &format!("task/{task}/comments/"), Some(&body), Idempotency::NotIdempotent)
            .await?;
        Ok(created(&answer, &response))
    }
}

const MESSAGE_KNOWN: &[&str] = &[
    "chat_id", "contact_id", "contact_name", "contact_last_name", "contact_email", "contact_phone",
    "contact_data", "message", "title", "attachments", "is_echo", "user_email", "data",
];

/// The task list's filter "task number".
const TASK_NUMBER_FILTER: i64 = 57;
/// Planfix makes a chat's task within seconds of its first message; none
/// this long after an attempt means that message never arrived.
const TASK_GRACE_SECS: i64 = 120;
/// How far our clock and Planfix's may disagree when comments are read back.
const CLOCK_SKEW_SECS: i64 = 10;
/// A chat read back through more comments than this is not searched further.
const MAX_COMMENT_PAGES: usize = 50;

/// A comment's text without the HTML Planfix may wrap it in (a tag counts
/// as a space: `<br>` and `<p>` separate lines).
fn plain_text(description: &str) -> String {
    let mut out = String::with_capacity(description.len());
    let mut in_tag = false;
    for c in description.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&nbsp;", " ").replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&amp;", "&").trim().to_owned()
}

/// When a comment was made: `dateTime.datetime` (`2026-11-25T12:00Z`, or
/// RFC 3339), if it reads.
fn comment_time(comment: &Value) -> Option<DateTime<Utc>> {
    let text = comment["dateTime"]["datetime"].as_str()?.trim();
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|at| at.with_timezone(&Utc))
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%MZ")
                .ok()
                .map(|at| at.and_utc())
        })
}

/// `planfix.chat.message`: a message into the chat's task (`newMessage`).
struct ChatMessage(Arc<Planfix>);

#[async_trait]
impl Action for ChatMessage {
    fn spec(&self) -> ActionSpec {
        ActionSpec::new(
            "planfix.chat.message",
            ActionKind::Other,
            vec![
                FieldSpec::required("chat_id", FieldType::String).describe("the chat (the visitor's id)"),
                FieldSpec::required("contact_id", FieldType::String).describe("the visitor, as the provider names them"),
                FieldSpec::required("contact_name", FieldType::String).describe("the visitor's name"),
                field("contact_last_name", FieldType::String, "last name"),
                field("contact_email", FieldType::Email, "e-mail"),
                field("contact_phone", FieldType::String, "phone"),
                field("contact_data", FieldType::String, "free text about the visitor"),
                field("message", FieldType::String, "the text (may be empty when files are attached)"),
                field("title", FieldType::String, "the header: Planfix names the chat's task from it"),
                field("attachments", FieldType::Array, "files: {name, url}"),
                field("is_echo", FieldType::Boolean, "an operator's message written elsewhere (shown as theirs)"),
                field("user_email", FieldType::Email, "the Planfix user an echo is shown as"),
                field("data", FieldType::Object, "task string fields by name (description, dates, browser…): sent as data_<name>"),
            ],
        )
        .with_output(vec![field("chat_id", FieldType::String, "the chat")])
    }

    fn resend(&self, fields: &Map<String, Value>) -> Resend {
        resend_by_text(fields, "message")
    }

    /// The chat's task (`getTask`, then the task list by number) and its
    /// comments: one with the same text, made since the attempt began, is
    /// the attempt. No task long after the attempt: the chat's first
    /// message never arrived.
    async fn find_sent(
        &self,
        ctx: &CallContext<'_>,
        fields: &Map<String, Value>,
        since: DateTime<Utc>,
    ) -> Result<Sent, ActionError> {
        let chat = required_text(fields, "chat_id")?;
        let wanted = text(fields, "message").unwrap_or_default();
        let number = match self
            .0
            .chat(ctx, "getTask", &[("chatId".into(), chat.clone())], Idempotency::Idempotent)
            .await
        {
            Err(ActionError::Vendor(VendorError::Rejected { message, .. })) if message.contains("not found") => {
                return Ok(if Utc::now() - since > chrono::Duration::seconds(TASK_GRACE_SECS) {
                    Sent::NotSent
                } else {
                    Sent::Unknown(format!("Planfix has no task for the chat yet ({message})"))
                });
            }
            other => other?.0["data"]["number"].as_i64(),
        };
        let Some(number) = number else {
            return Ok(Sent::Unknown("getTask answered without data.number".into()));
        };
        let Some(task) = self.0.task_by_number(ctx, number).await? else {
            return Ok(Sent::Unknown(format!("the task list has no task number {number} yet")));
        };
        // Planfix's comment times have minutes only.
        let from = since - chrono::Duration::seconds(CLOCK_SKEW_SECS);
        let from = from
            .with_second(0)
            .and_then(|at| at.with_nanosecond(0))
            .unwrap_or(from);
        // A visitor's message is the contact's comment; an echo is a user's.
        let author = if matches!(fields.get("is_echo"), Some(Value::Bool(true)))
            || text(fields, "is_echo").as_deref() == Some("true")
        {
            "user:"
        } else {
            "contact:"
        };
        let wanted = same_text(&wanted);
        let mut offset = 0;
        for _ in 0..MAX_COMMENT_PAGES {
            let body = json!({"offset": offset, "pageSize": PAGE, "fields": "id,description,dateTime,owner"});
            let (answer, _) = self
                .0
                .rest(ctx, reqwest::Method::POST, &format!("task/{task}/comments/list"), Some(&body), Idempotency::Idempotent)
                .await?;
            let Some(comments) = answer["comments"].as_array() else {
                return Ok(Sent::Unknown("the comment list has no comments array".into()));
            };
            let matching = comments.iter().filter(|c| {
                same_text(&plain_text(c["description"].as_str().unwrap_or_default())) == wanted
                    && c["owner"]["id"].as_str().is_none_or(|owner| owner.starts_with(author))
            });
            let found = matching.map(|comment| {
                let output = ActionOutput {
                    id: chat.clone(),
                    record: json!({"chat_id": chat}),
                    response_status: 200,
                    attempts: 0,
                };
                (comment_time(comment), output)
            });
            if let Some(sent) = sent_since(found, from) {
                return Ok(sent);
            }
            if comments.len() < PAGE {
                return Ok(Sent::NotSent);
            }
            offset += PAGE;
        }
        Ok(Sent::Unknown(format!(
            "the chat has more than {} comments; not searched further",
            MAX_COMMENT_PAGES * PAGE
        )))
    }

    async fn execute(
        &self,
        ctx: &CallContext<'_>,
        fields: &Map<String, Value>,
        _target: Option<&str>,
    ) -> Result<ActionOutput, ActionError> {
        only_known(fields, MESSAGE_KNOWN)?;
        let chat = required_text(fields, "chat_id")?;
        let mut params = vec![
            ("chatId".to_owned(), chat.clone()),
            ("contactId".to_owned(), required_text(fields, "contact_id")?),
            ("contactName".to_owned(), required_text(fields, "contact_name")?),
        ];
        for (ours, theirs) in [
            ("contact_last_name", "contactLastName"),
            ("contact_email", "contactEmail"),
            ("contact_phone", "contactPhone"),
            ("contact_data", "contactData"),
            ("title", "title"),
            ("user_email", "userEmail"),
        ] {
            if let Some(value) = text(fields, ours) {
                params.push((theirs.to_owned(), value));
            }
        }
        let mut files = 0;
        for (i, file) in fields
            .get("attachments")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let (Some(name), Some(url)) = (file["name"].as_str(), file["url"].as_str()) else {
                return Err(ActionError::field(format!("fields.attachments[{i}]"), "needs name and url"));
            };
            params.push(("attachments[name]".into(), name.to_owned()));
            params.push(("attachments[url]".into(), url.to_owned()));
            files += 1;
        }
        let message = text(fields, "message").unwrap_or_default();
        if message.is_empty() && files == 0 {
            return Err(ActionError::field("fields.message", "empty, and no file attached"));
        }
        params.push(("message".into(), message));
        match fields.get("is_echo") {
            Some(Value::Bool(true)) => params.push(("isEcho".into(), "true".into())),
            Some(Value::String(s)) if s == "true" => params.push(("isEcho".into(), "true".into())),
            _ => {}
        }
        for (name, value) in fields.get("data").and_then(Value::as_object).into_iter().flatten() {
            let value = id_text(value);
            if !value.is_empty() {
                params.push((format!("data_{name}"), value));
            }
        }
        let (_, response) = self.0.chat(ctx, "newMessage", &params, Idempotency::NotIdempotent).await?;
        Ok(ActionOutput {
            id: chat.clone(),
            record: json!({"chat_id": chat}),
            response_status: response.status,
            attempts: response.attempts,
        })
    }
}

/// `planfix.chat.task`: the chat's task number (`getTask`), so later steps
/// can reach the task through REST.
struct ChatTask(Arc<Planfix>);

#[async_trait]
impl Action for ChatTask {
    fn spec(&self) -> ActionSpec {
        ActionSpec::new(
            "planfix.chat.task",
            ActionKind::Other,
            vec![FieldSpec::required("chat_id", FieldType::String).describe("the chat")],
        )
        .with_output(vec![
            field("number", FieldType::Integer, "the chat task's number"),
            field("id", FieldType::String, "the task's REST id, when the task list finds it by number"),
        ])
    }

    fn resend(&self, _fields: &Map<String, Value>) -> Resend {
        Resend::Repeatable
    }

    async fn execute(
        &self,
        ctx: &CallContext<'_>,
        fields: &Map<String, Value>,
        _target: Option<&str>,
    ) -> Result<ActionOutput, ActionError> {
        only_known(fields, &["chat_id"])?;
        let chat = required_text(fields, "chat_id")?;
        let (answer, response) = match self
            .0
            .chat(ctx, "getTask", &[("chatId".into(), chat)], Idempotency::Idempotent)
            .await
        {
            // Planfix makes the chat's task after the first message, in
            // the background: not there yet is worth waiting for.
            Err(ActionError::Vendor(VendorError::Rejected { message, .. })) if message.contains("not found") => {
                return Err(ActionError::NotYet(format!("Planfix has no task for the chat yet ({message})")));
            }
            other => other?,
        };
        let number = answer["data"]["number"].as_i64().ok_or_else(|| {
            ActionError::Vendor(VendorError::Decode {
                status: response.status,
                message: "getTask answered without data.number".into(),
            })
        })?;
        Ok(ActionOutput {
            id: number.to_string(),
            record: json!({"number": number}),
            response_status: response.status,
            attempts: response.attempts,
        })
    }
}

/// `planfix.chat.message_status`: tells Planfix whether an operator's
/// message reached the visitor.
struct MessageStatus(Arc<Planfix>);

#[async_trait]
impl Action for MessageStatus {
    fn spec(&self) -> ActionSpec {
        ActionSpec::new(
            "planfix.chat.message_status",
            ActionKind::Other,
            vec![
                FieldSpec::required("message_id", FieldType::String).describe("Planfix's id for the message"),
                FieldSpec::required("status", FieldType::Enum(vec!["sent".into(), "read".into(), "error".into()])),
                field("text", FieldType::String, "why, for an error"),
            ],
        )
    }

    fn resend(&self, _fields: &Map<String, Value>) -> Resend {
        Resend::Repeatable
    }

    async fn execute(
        &self,
        ctx: &CallContext<'_>,
        fields: &Map<String, Value>,
        _target: Option<&str>,
    ) -> Result<ActionOutput, ActionError> {
        only_known(fields, &["message_id", "status", "text"])?;
        let message_id = required_text(fields, "message_id")?;
        let status = required_text(fields, "status")?;
        if !matches!(status.as_str(), "sent" | "read" | "error") {
            return Err(ActionError::field("fields.status", "sent, read or error"));
        }
        let mut params = vec![("messageId".to_owned(), message_id.clone()), ("messageStatus".to_owned(), status)];
        if let Some(text) = text(fields, "text") {
            params.push(("messageStatusText".into(), text));
        }
        let (_, response) = self.0.chat(ctx, "messageStatus", &params, Idempotency::Idempotent).await?;
        Ok(ActionOutput {
            id: message_id,
            record: json!({}),
            response_status: response.status,
            attempts: response.attempts,
        })
    }
}

/// Planfix: contacts and tasks (REST v2), and chats (the chat API, as the
/// provider).
pub fn vendor() -> Vendor {
    let planfix = Arc::new(Planfix);
    Vendor::new("planfix", planfix.clone())
        .webhooks(planfix.clone())
        .events(planfix.clone())
        .account(planfix.clone())
        .action(Arc::new(CreateContact(planfix.clone())))
        .action(Arc::new(UpdateContact(planfix.clone())))
        .action(Arc::new(CreateTask(planfix.clone())))
        .action(Arc::new(CommentTask(planfix.clone())))
        .action(Arc::new(ChatMessage(planfix.clone())))
        .action(Arc::new(ChatTask(planfix.clone())))
        .action(Arc::new(MessageStatus(planfix)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut f = form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            f.append_pair(k, v);
        }
        f.finish().into_bytes()
    }

    fn decode(body: &[u8], secret: Option<&str>) -> Result<Vec<DecodedEvent>, DecodeError> {
        let settings = json!({"provider_id": "crmbridge"});
        let request = InboundRequest {
            method: "POST",
            query: &[],
            content_type: Some("application/x-www-form-urlencoded"),
            body,
            headers: &[],
            url: None,
        };
        Planfix.decode_webhook(
            ConnectionView { id: "c1", settings: &settings, signing_secret: secret },
            &request,
        )
    }

    #[test]
    fn an_operator_reply_is_one_event_keyed_by_planfix_message_id() {
        let body = form(&[
            ("cmd", "newMessage"), ("providerId", "crmbridge"), ("chatId", "v-42"), ("token", "pk-1"),
            ("message", "Hello"), ("messageId", "9001"), ("userName", "Olga"), ("userLastName", "K"),
            ("attachments[name]", "a.pdf"), ("attachments[url]", "https://f/a.pdf"),
        ]);
        let events = decode(&body, Some("pk-1")).unwrap();
        assert_eq!(events.len(), 1);
        let event = &events[0];
        assert_eq!(event.kind, OPERATOR_MESSAGE);
        assert_eq!(event.source_id.as_deref(), Some("message:9001"));
        assert_eq!(event.subject.id, "v-42");
        assert_eq!(event.data["message"], "Hello");
        assert_eq!(event.data["first"], false);
        assert_eq!(event.data["attachments"], json!([{"name": "a.pdf", "url": "https://f/a.pdf"}]));
    }

    #[test]
    fn a_first_message_from_a_card_binds_a_chat_named_after_the_phone() {
        let body = form(&[
            ("cmd", "newMessage"), ("token", "pk-1"), ("message", "Hi"), ("messageId", "1"),
            ("contactPhone", "+7 (916) 123-45-67"),
        ]);
        let event = decode(&body, Some("pk-1")).unwrap().remove(0);
        assert_eq!(event.subject.id, "phone-79161234567");
        assert_eq!(event.data["first"], true);
        let request = InboundRequest {
            method: "POST", query: &[], content_type: Some("application/x-www-form-urlencoded"),
            body: &body, headers: &[], url: None,
        };
        assert_eq!(
            Planfix.reply(&request).unwrap(),
            json!({"chatId": "phone-79161234567", "contactId": "phone-79161234567"})
        );
    }

    #[test]
    fn wrong_keys_and_missing_parameters_are_named() {
        let good = [("cmd", "newMessage"), ("chatId", "v-1"), ("message", "x"), ("messageId", "1")];
        let mut wrong = good.to_vec();
        wrong.push(("token", "nope"));
        let err = decode(&form(&wrong), Some("pk-1")).unwrap_err();
        assert!(err.unauthenticated && err.field == "body.token", "{err:?}");
        let err = decode(&form(&good), Some("pk-1")).unwrap_err();
        assert!(err.unauthenticated, "a missing token is refused: {err:?}");
        let err = decode(&form(&[("cmd", "newMessage"), ("token", "pk-1"), ("chatId", "v")]), Some("pk-1")).unwrap_err();
        assert!(!err.unauthenticated);
        assert_eq!(err.field, "body.messageId");
        assert!(err.message.contains("messageId, message"), "{err:?}");
        let err = decode(&form(&[("cmd", "newMessage"), ("token", "pk-1"), ("message", "x"), ("messageId", "1")]), Some("pk-1")).unwrap_err();
        assert_eq!(err.field, "body.chatId");
        let err = decode(&form(&[("cmd", "getChats"), ("token", "pk-1")]), Some("pk-1")).unwrap_err();
        assert_eq!(err.field, "body.cmd");
        let err = decode(&form(&[("cmd", "newMessage"), ("token", "pk-1"), ("providerId", "other"), ("chatId", "v"), ("message", "x"), ("messageId", "1")]), Some("pk-1")).unwrap_err();
        assert_eq!(err.field, "body.providerId");
    }

    #[test]
    fn refusals_are_read_from_either_envelope() {
        assert_eq!(refusal(&json!({"result": "fail", "code": 5, "error": "Scope denied"})), (Some(5), "Scope denied".into()));
        assert_eq!(refusal(&json!({"result": "failure", "code": 1, "message": "Access denied"})), (Some(1), "Access denied".into()));
    }

    #[test]
    fn contact_bodies_take_planfix_names() {
        let fields = json!({"name": "Ivan", "last_name": "P", "phone": "+7 (916) 123-45-67", "is_company": "false", "template_id": "contact:3"});
        let body = contact_body(fields.as_object().unwrap()).unwrap();
        assert_eq!(body, json!({"name": "Ivan", "lastname": "P", "phones": [{"number": "+7 (916) 123-45-67", "type": 1}], "isCompany": false, "template": {"id": 3}}));
        let bad = json!({"nme": "x"});
        assert_eq!(contact_body(bad.as_object().unwrap()).unwrap_err().to_string(), "fields.nme: unknown field; known: name, last_name, email, phone, is_company, description, template_id");
    }
}
