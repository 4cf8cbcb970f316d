//! Verbox (an online chat widget): the widget's events in, the operator's
//! messages out. Verbox documents its server API only in part: the event
//! delivery below is **our contract** (named after the widget's own JS
//! events), the outgoing call is the REST method integrators use. Facts and
//! how sure we are of each: `vendors/verbox/API.md`.
//!
//! - Events: `POST` JSON to the connection's webhook address with the
//!   account's REST token in `X-Verbox-Token` (compared in constant time),
//!   `{"event", "client": {"clientId", "name", "phone", "email"},
//!   "message": {"id", "text", "dateTimeUTC", "attachments"}, "dialog":
//!   {"id"}, "rate": {"score", "comment"}, "operator": {"login"}}`. The event
//!   names may also come in the widget's spelling variants (`client_send_message`,
//!   `ClientSendMessage`); the body may be one event or a list.
//! - Out: `POST {base}/json/v1.0/chat/message/sendToClient` with `X-Token`;
//!   answers `{"success": true, "result"}` or `{"success": false, "error":
//!   {"code", "descr"}}`.
//!
//! | action | resend | why |
//! |---|---|---|
//! | `verbox.message.send` | `ReadBack` (`Unsafe` with files only) | Verbox takes no client key for a message: after a lost answer the chat's history (`chat/message/getList`) tells whether it arrived |
#![doc = include_str!("API.md")]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use crmbridge_mapping::{ActionKind, ActionSpec, EventKindSpec, FieldSpec, FieldType, Subject};
use serde_json::{Map, Value, json};

use crate::client::{Idempotency, VendorError, VendorPolicy, VendorRequest, VendorResponse, redact};
use crate::support::{
    resend_by_text, same_bytes, same_text, sent_since,
    base_url, credential, field, only_known, required_text, text, validate_known_settings,
    with_timeout,
};
use crate::{
    Account, Action, ActionError, ActionOutput, CallContext, ConnectionView, DecodeError,
    DecodedEvent, EventSource, InboundRequest, Resend, Sent, SettingsError, Vendor, VendorSettings,
    WebhookSource,
};

pub const DEFAULT_BASE_URL: &str = "https://admin.verbox.ru";
const DOMAINS: &[&str] = &["admin.verbox.ru"];
const SETTINGS: &[&str] = &["default_region", "timeout_ms"];

/// Verbox publishes no limit; a chat's pace is a person's.
pub fn policy() -> VendorPolicy {
    VendorPolicy::new("verbox", 10, Duration::from_secs(1), 4)
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Verbox;

/// Each widget event, the kind it becomes, and what it needs.
const EVENTS: &[(&str, &str)] = &[
    ("clientsendmessage", "verbox.message.received"),
    ("operatorsendmessage", "verbox.message.sent_by_operator"),
    ("contactsupdated", "verbox.contact.updated"),
    ("clientmakesubscribe", "verbox.contact_form.submitted"),
    ("sendrate", "verbox.rating.left"),
    ("chatclosed", "verbox.chat.closed"),
];

fn kind_of(event: &str) -> Option<&'static str> {
    let folded: String = event
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect();
    EVENTS.iter().find(|(name, _)| *name == folded).map(|(_, kind)| *kind)
}

fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A text field that may be absent, null or a string; anything else is
/// the sender's mistake, named.
fn optional_text(value: &Value, path: &str) -> Result<Value, DecodeError> {
    match value {
        Value::Null => Ok(Value::Null),
        Value::String(s) if s.trim().is_empty() => Ok(Value::Null),
        Value::String(s) => Ok(Value::String(s.trim().to_owned())),
        Value::Number(n) => Ok(Value::String(n.to_string())),
        _ => Err(DecodeError::new(path, "must be text")),
    }
}

/// One event of a delivery; `at` is its path in the body.
fn decode_one(event: &Value, at: &str) -> Result<DecodedEvent, DecodeError> {
    let name = event["event"]
        .as_str()
        .ok_or_else(|| DecodeError::new(format!("{at}.event"), "missing"))?;
    let kind = kind_of(name).ok_or_else(|| {
        DecodeError::new(
            format!("{at}.event"),
            format!("{name:?} is not a widget event crmbridge takes (clientSendMessage, operatorSendMessage, contactsUpdated, clientMakeSubscribe, sendRate, chatClosed)"),
        )
    })?;
    let client = &event["client"];
    let client_id = id_text(&client["clientId"])
        .or_else(|| id_text(&client["id"]))
        .ok_or_else(|| DecodeError::new(format!("{at}.client.clientId"), "missing"))?;
    let mut data = json!({
        "client_id": client_id,
        "name": optional_text(&client["name"], &format!("{at}.client.name"))?,
        "phone": optional_text(&client["phone"], &format!("{at}.client.phone"))?,
        "email": optional_text(&client["email"], &format!("{at}.client.email"))?,
        "dialog_id": id_text(&event["dialog"]["id"]),
        "operator_login": optional_text(&event["operator"]["login"], &format!("{at}.operator.login"))?,
    });
    let mut source_id = None;
    if kind.starts_with("verbox.message.") || kind == "verbox.contact_form.submitted" {
        let message = &event["message"];
        let text = optional_text(&message["text"], &format!("{at}.message.text"))?;
        let files = match &message["attachments"] {
            Value::Null => Vec::new(),
            Value::Array(files) => files.clone(),
            _ => return Err(DecodeError::new(format!("{at}.message.attachments"), "must be a list of {name, url}")),
        };
        for (i, file) in files.iter().enumerate() {
            if file["url"].as_str().is_none() {
                return Err(DecodeError::new(format!("{at}.message.attachments[{i}].url"), "missing"));
            }
        }
        if kind.starts_with("verbox.message.") {
            let id = id_text(&message["id"])
                .ok_or_else(|| DecodeError::new(format!("{at}.message.id"), "missing: a message is known by its id"))?;
            if text.is_null() && files.is_empty() {
                return Err(DecodeError::new(format!("{at}.message.text"), "empty, and no file attached"));
            }
            source_id = Some(format!("message:{id}"));
            data["message_id"] = Value::String(id);
        }
        data["text"] = text;
        data["attachments"] = Value::Array(files);
        data["sent_at"] = optional_text(&message["dateTimeUTC"], &format!("{at}.message.dateTimeUTC"))?;
    }
    if kind == "verbox.rating.left" {
        let score = &event["rate"]["score"];
        if !(score.is_number() || score.as_str().is_some_and(|s| s.trim().parse::<f64>().is_ok())) {
            return Err(DecodeError::new(format!("{at}.rate.score"), "missing or not a number"));
        }
        data["score"] = score.clone();
        data["comment"] = optional_text(&event["rate"]["comment"], &format!("{at}.rate.comment"))?;
    }
    Ok(DecodedEvent {
        source_id,
        kind: kind.into(),
        subject: Subject { kind: "chat".into(), id: client_id },
        occurred_at: None,
        observation: None,
        data,
    })
}

impl WebhookSource for Verbox {
    fn signing_credential(&self) -> Option<&'static str> {
        Some("token")
    }

    fn decode_webhook(
        &self,
        connection: ConnectionView<'_>,
        request: &InboundRequest<'_>,
    ) -> Result<Vec<DecodedEvent>, DecodeError> {
        let expected = connection.signing_secret.unwrap_or_default();
        let given = request.header("x-verbox-token").unwrap_or_default().trim();
        if expected.is_empty() || !same_bytes(given.as_bytes(), expected.as_bytes()) {
            return Err(DecodeError::unauthenticated(
                "headers.x-verbox-token",
                "missing or not this connection's Verbox token",
            ));
        }
        let body: Value = serde_json::from_slice(request.body)
            .map_err(|err| DecodeError::new("body", format!("not valid JSON: {err}")))?;
        match &body {
            Value::Array(events) => events
                .iter()
                .enumerate()
                .map(|(i, event)| decode_one(event, &format!("body[{i}]")))
                .collect(),
            Value::Object(_) => Ok(vec![decode_one(&body, "body")?]),
            _ => Err(DecodeError::new("body", "must be an event object or a list of them")),
        }
    }
}

#[async_trait]
impl EventSource for Verbox {
    /// A chat's messages are relayed in the order they came, one at a
    /// time.
    fn sequence_key(&self, event: &crmbridge_mapping::Event) -> Option<String> {
        (event.kind.starts_with("verbox.message.")).then(|| event.subject.id.clone())
    }

    /// A rating or a closing refers to a chat; a contact form or contact
    /// data may come from a visitor who never wrote.
    fn continues_sequence(&self, event: &crmbridge_mapping::Event) -> Option<(String, &'static str)> {
        matches!(event.kind.as_str(), "verbox.rating.left" | "verbox.chat.closed")
            .then(|| (event.subject.id.clone(), "client.clientId"))
    }

    fn event_kinds(&self) -> Vec<EventKindSpec> {
        let visitor = || {
            vec![
                field("client_id", FieldType::String, "the visitor (the chat)"),
                field("name", FieldType::String, "the visitor's name"),
                field("phone", FieldType::String, "phone, as the visitor typed it"),
                field("email", FieldType::Email, "e-mail"),
                field("dialog_id", FieldType::String, "the conversation"),
                field("operator_login", FieldType::String, "the operator, when one is named"),
            ]
        };
        let message = || {
            let mut fields = visitor();
            fields.extend([
                field("message_id", FieldType::String, "Verbox's id for the message"),
                field("text", FieldType::String, "the text"),
                field("attachments", FieldType::Array, "files: {name, url}"),
                field("sent_at", FieldType::String, "when, UTC"),
            ]);
            fields
        };
        let mut kinds = vec![
            EventKindSpec::new("verbox.message.received", message()),
            EventKindSpec::new("verbox.message.sent_by_operator", message()),
            EventKindSpec::new("verbox.contact.updated", visitor()),
            EventKindSpec::new("verbox.chat.closed", visitor()),
        ];
        let mut form = visitor();
        form.extend([
            field("text", FieldType::String, "what the visitor wrote in the form"),
            field("attachments", FieldType::Array, "files"),
            field("sent_at", FieldType::String, "when, UTC"),
        ]);
        kinds.push(EventKindSpec::new("verbox.contact_form.submitted", form));
        let mut rating = visitor();
        rating.extend([
            field("score", FieldType::Number, "the rating"),
            field("comment", FieldType::String, "the visitor's comment"),
        ]);
        kinds.push(EventKindSpec::new("verbox.rating.left", rating));
        kinds
    }
}

impl VendorSettings for Verbox {
    fn required_credentials(&self) -> &'static [&'static str] {
        &["token"]
    }

    fn validate_settings(
        &self,
        settings: &Value,
        allow_any_base_url: bool,
    ) -> Result<(), Vec<SettingsError>> {
        validate_known_settings(settings, SETTINGS, Some(DEFAULT_BASE_URL), DOMAINS, allow_any_base_url)
    }
}

impl Verbox {
    async fn call(
        &self,
        ctx: &CallContext<'_>,
        method: &str,
        body: &Value,
        idempotency: Idempotency,
    ) -> Result<(Value, VendorResponse), ActionError> {
        let token = credential(ctx.credentials, "token")?;
        let base = base_url(ctx.settings, DEFAULT_BASE_URL, DOMAINS, ctx.allow_any_base_url)?;
        let request = VendorRequest::with_body(
            reqwest::Method::POST,
            format!("{base}/json/v1.0/{method}"),
            body.to_string().into_bytes(),
            idempotency,
        )
        .header("content-type", "application/json")
        .header("x-token", token);
        let response = ctx
            .http
            .send(ctx.connection, &with_timeout(policy(), ctx.settings), &request, &[token])
            .await?;
        let parsed = response.json().unwrap_or(Value::Null);
        if response.is_success() && parsed["success"] != json!(false) {
            return Ok((parsed, response));
        }
        let message = redact(
            parsed["error"]["descr"].as_str().unwrap_or("refused"),
            &[token],
        );
        Err(match response.status {
            status if status >= 500 || status == 429 => VendorError::Status {
                vendor: "verbox",
                status,
                attempts: response.attempts,
                body: message,
            },
            status @ (401 | 403) => VendorError::CredentialsRefused {
                vendor: "verbox",
                status,
                message: format!("the REST token is not accepted: {message}"),
            },
            status => VendorError::Rejected { vendor: "verbox", status, message },
        }
        .into())
    }
}

#[async_trait]
impl Account for Verbox {
    async fn check(&self, ctx: &CallContext<'_>) -> Result<Value, ActionError> {
        let (answer, _) = self
            .call(ctx, "chat/operator/getList", &json!({}), Idempotency::Idempotent)
            .await?;
        let operators: Vec<Value> = answer["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["login"].as_str().map(|l| Value::String(l.to_owned())))
            .collect();
        Ok(json!({"operators": operators}))
    }
}

/// `verbox.message.send`: an operator's message into a visitor's chat.
struct SendMessage(Arc<Verbox>);

#[async_trait]
impl Action for SendMessage {
    fn spec(&self) -> ActionSpec {
        ActionSpec::new(
            "verbox.message.send",
            ActionKind::Other,
            vec![
                FieldSpec::required("client_id", FieldType::String).describe("the visitor (the chat)"),
                field("text", FieldType::String, "the text (may be empty when files are attached)"),
                field("operator_login", FieldType::String, "the Verbox operator it is sent as (see the operator mapping)"),
                field("attachments", FieldType::Array, "files: {name, url}"),
            ],
        )
        .with_output(vec![field("id", FieldType::String, "Verbox's id for the message")])
    }

    fn resend(&self, fields: &Map<String, Value>) -> Resend {
        resend_by_text(fields, "text")
    }

    /// The chat's operator messages since the attempt began
    /// (`chat/message/getList`): one with the same text is the attempt.
    async fn find_sent(
        &self,
        ctx: &CallContext<'_>,
        fields: &Map<String, Value>,
        since: DateTime<Utc>,
    ) -> Result<Sent, ActionError> {
        let client = required_text(fields, "client_id")?;
        let wanted = text(fields, "text").unwrap_or_default();
        let from = since - chrono::Duration::seconds(CLOCK_SKEW_SECS);
        let until = Utc::now() + chrono::Duration::seconds(CLOCK_SKEW_SECS);
        let body = json!({
            "client": {"clientId": client},
            "sender": "operator",
            "dateRange": {"start": from.format(VERBOX_TIME).to_string(), "stop": until.format(VERBOX_TIME).to_string(), "isLocal": false},
        });
        let (answer, _) = self
            .0
            .call(ctx, "chat/message/getList", &body, Idempotency::Idempotent)
            .await?;
        // `[{clientId, messages}]`, or `{count, limit, items}` in another
        // version; anything else cannot say the message is not there.
        let clients = match &answer["result"] {
            Value::Array(items) => items.clone(),
            Value::Object(page) => match page.get("items").and_then(Value::as_array) {
                Some(items) => {
                    let total = page.get("count").and_then(Value::as_u64);
                    if total.is_some_and(|n| n > items.len() as u64) {
                        return Ok(Sent::Unknown("the message list came in pages".into()));
                    }
                    items.clone()
                }
                None => return Ok(Sent::Unknown("the message list has no items".into())),
            },
            _ => return Ok(Sent::Unknown("the message list has no result".into())),
        };
        let wanted = same_text(&wanted);
        let candidates = clients
            .iter()
            .filter(|c| id_text(&c["clientId"]).is_none_or(|id| id == client))
            .flat_map(|c| c["messages"].as_array().cloned().unwrap_or_default())
            .filter(|m| {
                m["whoSend"].as_str().is_none_or(|who| who == "operator")
                    && m["text"].as_str().map(same_text).as_deref() == Some(wanted.as_str())
            });
        let found = candidates.map(|message| {
            let id = id_text(&message["id"]).unwrap_or_default();
            let output = ActionOutput {
                id: id.clone(),
                record: json!({"id": id}),
                response_status: 200,
                attempts: 0,
            };
            (sent_at(&message), output)
        });
        if let Some(sent) = sent_since(found, from) {
            return Ok(sent);
        }
        Ok(Sent::NotSent)
    }

    async fn execute(
        &self,
        ctx: &CallContext<'_>,
        fields: &Map<String, Value>,
        _target: Option<&str>,
    ) -> Result<ActionOutput, ActionError> {
        only_known(fields, &["client_id", "text", "operator_login", "attachments"])?;
        let client = required_text(fields, "client_id")?;
        let text_value = text(fields, "text").unwrap_or_default();
        let mut files = Vec::new();
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
            files.push(json!({"name": name, "url": url}));
        }
        if text_value.is_empty() && files.is_empty() {
            return Err(ActionError::field("fields.text", "empty, and no file attached"));
        }
        let mut message = json!({"text": text_value});
        if !files.is_empty() {
            message["attachments"] = Value::Array(files);
        }
        let mut body = json!({"client": {"id": client}, "message": message});
        if let Some(login) = text(fields, "operator_login") {
            body["operator"] = json!({"login": login});
        }
        let (answer, response) = self
            .0
            .call(ctx, "chat/message/sendToClient", &body, Idempotency::NotIdempotent)
            .await?;
        let id = id_text(&answer["result"]["id"]).unwrap_or_default();
        Ok(ActionOutput {
            id: id.clone(),
            record: json!({"id": id}),
            response_status: response.status,
            attempts: response.attempts,
        })
    }
}

/// How far our clock and Verbox's may disagree when the chat's history is
/// read back.
const CLOCK_SKEW_SECS: i64 = 10;
/// `dateRange` and `dateTimeUTC`: `YYYY-MM-DD HH:MM:SS`, UTC.
const VERBOX_TIME: &str = "%Y-%m-%d %H:%M:%S";

/// When a listed message was sent, if its `dateTimeUTC` reads.
fn sent_at(message: &Value) -> Option<DateTime<Utc>> {
    let text = message["dateTimeUTC"].as_str()?;
    chrono::NaiveDateTime::parse_from_str(text.trim(), VERBOX_TIME)
        .ok()
        .map(|at| at.and_utc())
        .or_else(|| DateTime::parse_from_rfc3339(text.trim()).ok().map(|at| at.with_timezone(&Utc)))
}

/// Verbox: the widget's events in, operator messages out.
pub fn vendor() -> Vendor {
    let verbox = Arc::new(Verbox);
    Vendor::new("verbox", verbox.clone())
        .webhooks(verbox.clone())
        .events(verbox.clone())
        .account(verbox.clone())
        .action(Arc::new(SendMessage(verbox)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn decode(body: &Value, token: Option<&str>) -> Result<Vec<DecodedEvent>, DecodeError> {
        let bytes = body.to_string().into_bytes();
        let headers: Vec<(String, String)> = token
            .map(|t| vec![("x-verbox-token".to_owned(), t.to_owned())])
            .unwrap_or_default();
        let settings = json!({});
        Verbox.decode_webhook(
            ConnectionView { id: "c1", settings: &settings, signing_secret: Some("vb-1") },
            &InboundRequest {
                method: "POST",
                query: &[],
                content_type: Some("application/json"),
                body: &bytes,
                headers: &headers,
                url: None,
            },
        )
    }

    #[test]
    fn a_visitor_message_is_keyed_by_its_id_and_names_its_chat() {
        let body = json!({"event": "clientSendMessage", "client": {"clientId": "v-1", "name": "Ivan", "phone": "8 916 123 45 67"},
                          "message": {"id": 77, "text": "Hello", "dateTimeUTC": "2026-11-26 10:00:00"}});
        let event = decode(&body, Some("vb-1")).unwrap().remove(0);
        assert_eq!(event.kind, "verbox.message.received");
        assert_eq!(event.source_id.as_deref(), Some("message:77"));
        assert_eq!(event.subject.id, "v-1");
        assert_eq!(event.data["text"], "Hello");
        assert_eq!(event.data["phone"], "8 916 123 45 67");
        // Spelling variants of the event name and a list of events.
        let list = json!([{"event": "contacts_updated", "client": {"clientId": "v-1", "email": "a@b.c"}},
                          {"event": "SendRate", "client": {"id": "v-1"}, "rate": {"score": "5"}}]);
        let kinds: Vec<String> = decode(&list, Some("vb-1")).unwrap().into_iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["verbox.contact.updated", "verbox.rating.left"]);
    }

    #[test]
    fn bad_events_are_refused_naming_the_path() {
        let cases = [
            (json!({"client": {"clientId": "v"}}), "body.event"),
            (json!({"event": "typing", "client": {"clientId": "v"}}), "body.event"),
            (json!({"event": "clientSendMessage", "client": {}}), "body.client.clientId"),
            (json!({"event": "clientSendMessage", "client": {"clientId": "v"}, "message": {"text": "x"}}), "body.message.id"),
            (json!({"event": "clientSendMessage", "client": {"clientId": "v"}, "message": {"id": 1}}), "body.message.text"),
            (json!({"event": "clientSendMessage", "client": {"clientId": "v", "name": {"x": 1}}, "message": {"id": 1, "text": "x"}}), "body.client.name"),
            (json!({"event": "sendRate", "client": {"clientId": "v"}, "rate": {"score": "great"}}), "body.rate.score"),
            (json!([{"event": "chatClosed", "client": {"clientId": "v"}}, {"event": "chatClosed"}]), "body[1].client.clientId"),
        ];
        for (body, path) in cases {
            let err = decode(&body, Some("vb-1")).unwrap_err();
            assert_eq!(err.field, path, "{body}: {err:?}");
            assert!(!err.unauthenticated);
        }
        let ok = json!({"event": "chatClosed", "client": {"clientId": "v"}});
        for token in [None, Some("vb-2")] {
            let err = decode(&ok, token).unwrap_err();
            assert!(err.unauthenticated, "{err:?}");
        }
    }
}
