//! KADO (KADO Networks: digital business cards, contacts and notes per
//! company and team). KADO publishes no API: this connector speaks
//! **crmbridge's own contract** for a KADO-side adapter, written down in
//! `vendors/kado/API.md` together with the KADO product facts it mirrors.
//!
//! - One connection is one KADO company (`company_id`); the `teams` setting
//!   lists the teams that take part. Events of other teams are accepted and
//!   ignored; events of another company are refused.
//! - Webhooks carry one event (or an array of them) with its own
//!   `event_id`; with a `webhook_secret`, each is signed
//!   (`X-Signature: sha256=HMAC(secret, timestamp + "." + body)`, five
//!   minutes), verified over the raw bytes before parsing.
//! - Writes made by crmbridge come back with `origin: "crmbridge"` and are
//!   dropped on arrival: the adapter's half of "no echoes".
//! - Writes into KADO are `PUT …/by-ref/hubspot/{id}`: found by the HubSpot
//!   id or made, so repeating one changes nothing (`Keyed`). Before one, a
//!   single look-up (HubSpot id, e-mail, phone) finds the contact carrying
//!   the reference (updated without touching its team or privacy) or an
//!   existing one to link; writes carry HubSpot's `updatedAt` and KADO
//!   keeps the newer.
//! - Contacts are also polled (`updated_since`), the safety net under the
//!   webhooks; a change is named by id + `updated_at`, so one seen both
//!   ways runs once.
#![doc = include_str!("API.md")]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use crmbridge_mapping::{ActionKind, ActionSpec, EventKindSpec, FieldSpec, FieldType, Subject};
use serde_json::{Map, Value, json};

use crate::client::{Idempotency, VendorError, VendorPolicy, VendorRequest, VendorResponse};
use crate::support::{
    same_bytes,check_base_url, credential, field, only_known, required_text, text, with_timeout};
use crate::{
    Account, Action, ActionError, ActionOutput, CallContext, ConnectionView, DecodeError,
    DecodedEvent, EventSource, InboundRequest, PollBatch, Poller, Resend, SettingsError, Vendor,
    VendorSettings, WebhookSource,
};

const SETTINGS: &[&str] = &["base_url", "company_id", "teams", "timeout_ms"];
const SIGNATURE_WINDOW_SECS: i64 = 300;
const CONTACT_FIELDS: &[&str] = &[
    "hubspot_id",
    "team_id",
    "first_name",
    "last_name",
    "email",
    "phone",
    "job_title",
    "organization",
    "owner_email",
    "is_private",
    "updated_at",
];
const NOTE_FIELDS: &[&str] = &[
    "hubspot_id",
    "contact_id",
    "contact_hubspot_id",
    "body",
    "author_email",
    "is_private",
];
/// Contact fields copied as they are.
const CONTACT_TEXT: &[&str] = &["team_id", "first_name", "last_name", "job_title", "organization", "owner_email"];

/// The contract asks an adapter to take 200 requests a second per company
/// (an import writes thousands of contacts); 429 with `Retry-After` above.
pub fn policy() -> VendorPolicy {
    VendorPolicy::new("kado", 200, Duration::from_secs(1), 8)
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Kado;

/// An adapter address. KADO has no domain of its own to pin it to, so
/// outside test mode none is accepted unless the deployment allows any
/// vendor address (`CRMBRIDGE_ALLOW_ANY_VENDOR_URL`): a connection must not
/// become a way to make crmbridge call an address of a tenant's choosing.
fn check_adapter_url(url: &str, allow_any: bool) -> Result<(), String> {
    if allow_any {
        return check_base_url(url, &[], true);
    }
    url::Url::parse(url).map_err(|err| format!("not a URL: {err}"))?;
    Err("KADO has no API domain of its own: the deployment must allow the adapter's address (CRMBRIDGE_ALLOW_ANY_VENDOR_URL)".into())
}

impl Kado {
    fn base(ctx: &CallContext<'_>) -> Result<String, ActionError> {
        let url = ctx.settings["base_url"]
            .as_str()
            .ok_or_else(|| ActionError::Config("settings.base_url is required".into()))?;
        check_adapter_url(url, ctx.allow_any_base_url)
            .map_err(|m| ActionError::Config(format!("settings.base_url: {m}")))?;
        Ok(url.trim_end_matches('/').to_owned())
    }

    async fn call(
        &self,
        ctx: &CallContext<'_>,
        request: VendorRequest,
    ) -> Result<VendorResponse, ActionError> {
        let token = credential(ctx.credentials, "token")?;
        let request = request.header("authorization", format!("Bearer {token}"));
        let response = ctx
            .http
            .send(ctx.connection, &with_timeout(policy(), ctx.settings), &request, &[token])
            .await?;
        if response.status >= 500 || response.status == 429 {
            return Err(VendorError::Status {
                vendor: "kado",
                status: response.status,
                attempts: response.attempts,
                body: response.text().chars().take(300).collect(),
            }
            .into());
        }
        if !response.is_success() {
            let body = response.json().unwrap_or(Value::Null);
            let error = &body["error"];
            let mut message = format!(
                "{}: {}",
                error["code"].as_str().unwrap_or("error"),
                error["message"].as_str().unwrap_or("refused")
            );
            if let Some(field) = error["field"].as_str() {
                message.push_str(&format!(" (field {field})"));
            }
            if response.status == 401 {
                message.push_str(": issue a new KADO token for the connection");
            }
            return Err(VendorError::Rejected {
                vendor: "kado",
                status: response.status,
                message: crate::client::redact(&message, &[token]),
            }
            .into());
        }
        Ok(response)
    }

    /// `PATCH {base}/contacts/{id}`: the Contact afterwards.
    async fn patch_contact(
        &self,
        ctx: &CallContext<'_>,
        id: &str,
        patch: &Value,
    ) -> Result<(Value, VendorResponse), ActionError> {
        let encoded: String = form_urlencoded::byte_serialize(id.as_bytes()).collect();
        let request = VendorRequest::with_body(
            reqwest::Method::PATCH,
            format!("{}/contacts/{encoded}", Self::base(ctx)?),
            patch.to_string().into_bytes(),
            Idempotency::Idempotent,
        )
        .header("content-type", "application/json");
        let response = self.call(ctx, request).await?;
        Ok((response.json()?, response))
    }

    /// `PUT {base}/{kind}/by-ref/hubspot/{id}`: found by the HubSpot id or
    /// made.
    async fn put_by_ref(
        &self,
        ctx: &CallContext<'_>,
        kind: &str,
        hubspot_id: &str,
        body: &Value,
    ) -> Result<ActionOutput, ActionError> {
        if hubspot_id.is_empty() || !hubspot_id.chars().all(|c| c.is_ascii_digit()) {
            return Err(ActionError::field("fields.hubspot_id", "a HubSpot id (digits)"));
        }
        let url = format!("{}/{kind}/by-ref/hubspot/{hubspot_id}", Self::base(ctx)?);
        let request = VendorRequest::with_body(
            reqwest::Method::PUT,
            url,
            body.to_string().into_bytes(),
            Idempotency::Idempotent,
        )
        .header("content-type", "application/json");
        let response = self.call(ctx, request).await?;
        let answer = response.json()?;
        let id = answer["id"].as_str().unwrap_or_default().to_owned();
        Ok(ActionOutput {
            id: id.clone(),
            record: json!({"id": id, "created": response.status == 201, "stale": answer["stale"].as_bool().unwrap_or(false)}),
            response_status: response.status,
            attempts: response.attempts,
        })
    }
}

impl VendorSettings for Kado {
    fn required_credentials(&self) -> &'static [&'static str] {
        &["token"]
    }

    fn validate_settings(
        &self,
        settings: &Value,
        allow_any_base_url: bool,
    ) -> Result<(), Vec<SettingsError>> {
        let mut errors = Vec::new();
        let Some(map) = settings.as_object() else {
            return Err(vec![SettingsError {
                field: String::new(),
                message: "settings must be a JSON object".into(),
            }]);
        };
        for name in map.keys() {
            if !SETTINGS.contains(&name.as_str()) {
                errors.push(SettingsError {
                    field: name.clone(),
                    message: format!("unknown setting; known: {}", SETTINGS.join(", ")),
                });
            }
        }
        match map.get("base_url").and_then(Value::as_str) {
            Some(url) => {
                if let Err(message) = check_adapter_url(url, allow_any_base_url) {
                    errors.push(SettingsError {
                        field: "base_url".into(),
                        message,
                    });
                }
            }
            None => errors.push(SettingsError {
                field: "base_url".into(),
                message: "required: the KADO adapter's address".into(),
            }),
        }
        if map.get("company_id").and_then(Value::as_str).is_none_or(|c| c.is_empty()) {
            errors.push(SettingsError {
                field: "company_id".into(),
                message: "required: the KADO company this connection stands for".into(),
            });
        }
        match map.get("teams") {
            None => {}
            Some(Value::Array(teams)) if teams.iter().all(|t| t.as_str().is_some_and(|t| !t.is_empty())) => {}
            Some(_) => errors.push(SettingsError {
                field: "teams".into(),
                message: "must list the team ids that take part".into(),
            }),
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

/// `X-Signature: sha256=<hex HMAC(secret, timestamp + "." + body)>`,
/// `X-Timestamp` within five minutes.
fn verify_signature(secret: &str, request: &InboundRequest<'_>, now: i64) -> Result<(), DecodeError> {
    use hmac::{Hmac, Mac};
    let timestamp = request
        .header("x-timestamp")
        .ok_or_else(|| DecodeError::unauthenticated("headers.x-timestamp", "missing"))?
        .trim();
    let at: i64 = timestamp
        .parse()
        .map_err(|_| DecodeError::unauthenticated("headers.x-timestamp", "not seconds since 1970"))?;
    if (now - at).abs() > SIGNATURE_WINDOW_SECS {
        return Err(DecodeError::unauthenticated(
            "headers.x-timestamp",
            "more than five minutes from now: a stale or replayed delivery is refused",
        ));
    }
    let given = request
        .header("x-signature")
        .and_then(|s| s.trim().strip_prefix("sha256="))
        .ok_or_else(|| DecodeError::unauthenticated("headers.x-signature", "missing (sha256=<hex>)"))?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .map_err(|_| DecodeError::unauthenticated("credentials.webhook_secret", "unusable as a key"))?;
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(request.body);
    let expected = hex::encode(mac.finalize().into_bytes());
    if same_bytes(expected.as_bytes(), given.to_ascii_lowercase().as_bytes()) {
        Ok(())
    } else {
        Err(DecodeError::unauthenticated("headers.x-signature", "does not match this connection's webhook secret"))
    }
}

/// A contact or note as events carry it, flattened for templates.
fn flatten(entity: &str, data: &Value) -> Value {
    let first = |name: &str| data[name].as_array().and_then(|a| a.first()).cloned().unwrap_or(Value::Null);
    let mut out = json!({
        "id": data["id"],
        "team_id": data["team_id"],
        // Fails closed: an item whose privacy cannot be read is private.
        "is_private": !matches!(&data["is_private"], Value::Bool(false))
            && data["is_private"].as_str() != Some("false"),
        "hubspot_id": data["external_refs"]["hubspot"],
        "deleted": data["deleted"].as_bool().unwrap_or(false),
        "updated_at": data["updated_at"],
        "created_at": data["created_at"],
    });
    let extra = if entity == "contact" {
        json!({
            "first_name": data["first_name"], "last_name": data["last_name"],
            "email": first("emails"), "emails": data["emails"],
            "phone": first("phones"), "phones": data["phones"],
            "job_title": data["job_title"], "organization": data["organization"],
            "owner_email": data["owner_email"],
        })
    } else {
        json!({
            "contact_id": data["contact_id"], "body": data["body"],
            "author_email": data["author_email"],
        })
    };
    if let (Some(out), Some(extra)) = (out.as_object_mut(), extra.as_object()) {
        out.extend(extra.clone());
    }
    out
}

impl WebhookSource for Kado {
    fn signing_credential(&self) -> Option<&'static str> {
        Some("webhook_secret")
    }

    fn decode_webhook(
        &self,
        connection: ConnectionView<'_>,
        request: &InboundRequest<'_>,
    ) -> Result<Vec<DecodedEvent>, DecodeError> {
        if let Some(secret) = connection.signing_secret {
            verify_signature(secret, request, chrono::Utc::now().timestamp())?;
        }
        let body: Value = serde_json::from_slice(request.body)
            .map_err(|err| DecodeError::new("body", format!("not valid JSON: {err}")))?;
        let events: Vec<&Value> = match &body {
            Value::Array(items) => items.iter().collect(),
            Value::Object(_) => vec![&body],
            _ => return Err(DecodeError::new("body", "expected an event or an array of events")),
        };
        let company = connection.settings["company_id"].as_str().unwrap_or_default();
        let teams: Vec<&str> = connection.settings["teams"]
            .as_array()
            .map(|t| t.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut out = Vec::new();
        let batch = body.is_array();
        for (index, event) in events.into_iter().enumerate() {
            match decode_event(index, event, company, &teams) {
                Ok(Some(decoded)) => out.push(decoded),
                Ok(None) => {}
                // A single event is refused whole; in a batch, the bad one
                // is reported and the others go on (the sender does not
                // retry a 400: a refused batch would lose them all).
                Err(err) if !batch => return Err(err),
                Err(err) => out.push(DecodedEvent {
                    source_id: None,
                    kind: "kado.event.rejected".into(),
                    subject: Subject {
                        kind: "delivery".into(),
                        id: String::new(),
                    },
                    occurred_at: None,
                    observation: None,
                    data: json!({"index": index, "reason": err.to_string(), "event": event}),
                }),
            }
        }
        Ok(out)
    }
}

/// One event of a delivery: `None` when it is ours (`origin: crmbridge`)
/// or of a team that does not take part.
fn decode_event(
    index: usize,
    event: &Value,
    company: &str,
    teams: &[&str],
) -> Result<Option<DecodedEvent>, DecodeError> {
    let at = |field: &str| format!("body[{index}].{field}");
    let event_id = event["event_id"]
        .as_str()
        .filter(|id| !id.is_empty())
        .ok_or_else(|| DecodeError::new(at("event_id"), "required"))?;
    let kind = event["kind"]
        .as_str()
        .ok_or_else(|| DecodeError::new(at("kind"), "required"))?;
    let (entity, change) = kind
        .split_once('.')
        .filter(|(e, c)| {
            matches!(*e, "contact" | "note") && matches!(*c, "created" | "updated" | "deleted")
        })
        .ok_or_else(|| {
            DecodeError::new(at("kind"), format!("'{kind}' is not a contact or note change"))
        })?;
    if event["company_id"].as_str() != Some(company) {
        return Err(DecodeError::new(
            at("company_id"),
            format!("this connection stands for company {company}"),
        ));
    }
    // Our own writes, reported back: nothing to send anywhere.
    if event["origin"].as_str() == Some("crmbridge") {
        return Ok(None);
    }
    let team = event["team_id"]
        .as_str()
        .or_else(|| event["data"]["team_id"].as_str())
        .unwrap_or_default();
    if !teams.is_empty() && !teams.contains(&team) {
        return Ok(None);
    }
    let data = &event["data"];
    let id = data["id"]
        .as_str()
        .ok_or_else(|| DecodeError::new(at("data.id"), "required"))?;
    let occurred_at = match event["occurred_at"].as_str() {
        Some(text) => Some(
            chrono::DateTime::parse_from_rfc3339(text)
                .map_err(|_| DecodeError::new(at("occurred_at"), "not RFC 3339"))?
                .with_timezone(&chrono::Utc),
        ),
        None => None,
    };
    Ok(Some(DecodedEvent {
        source_id: Some(event_id.to_owned()),
        kind: format!("kado.{entity}.{change}"),
        subject: Subject {
            kind: entity.to_owned(),
            id: id.to_owned(),
        },
        occurred_at,
        observation: None,
        data: flatten(entity, data),
    }))
}

/// Pages one poll reads at most (100 records each); the rest is read by
/// the next tick, from the saved position.
const POLL_PAGES: usize = 10;

/// The safety net under the webhooks: tick reads the contacts changed
/// since the last poll (`GET /contacts?updated_since=…`, optional in the
/// contract: 404 = not offered). Each change becomes the event its webhook
/// would have been, with the same change key (contact id + `updated_at`),
/// so a change that came both ways runs once. Changes made by crmbridge
/// (`origin: "crmbridge"`) and other teams' contacts are left out, as on
/// the webhook path. Notes are not polled: the contract's notes carry no
/// team of their own.
#[async_trait]
impl Poller for Kado {
    fn polls(&self, kind: &str) -> bool {
        matches!(kind, "kado.contact.created" | "kado.contact.updated")
    }

    async fn poll(
        &self,
        ctx: &CallContext<'_>,
        kind: &str,
        _scope: &Value,
        cursor: Option<&Value>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<PollBatch, ActionError> {
        let stamp = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        // The first poll only marks where the next one starts.
        let Some(since) = cursor.and_then(|c| c["since"].as_str()).map(str::to_owned) else {
            return Ok(PollBatch {
                events: Vec::new(),
                cursor: json!({"since": stamp(now)}),
            });
        };
        let company = ctx.settings["company_id"].as_str().unwrap_or_default();
        let teams: Vec<&str> = ctx.settings["teams"]
            .as_array()
            .map(|list| list.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let change = kind.rsplit('.').next().unwrap_or_default();
        let mut events = Vec::new();
        let mut newest = since.clone();
        let mut page: Option<String> = None;
        for _ in 0..POLL_PAGES {
            let mut query = vec![("updated_since", since.clone()), ("limit", "100".to_owned())];
            if let Some(page) = &page {
                query.push(("cursor", page.clone()));
            }
            let url = crate::support::url_with_query(&format!("{}/contacts", Self::base(ctx)?), &query)?;
            let response = match self.call(ctx, VendorRequest::get(url)).await {
                Ok(response) => response,
                // Not offered: the webhooks are all there is.
                Err(ActionError::Vendor(VendorError::Rejected { status: 404, .. })) => {
                    return Ok(PollBatch {
                        events: Vec::new(),
                        cursor: json!({"since": since}),
                    });
                }
                Err(err) => return Err(err),
            };
            let body = response.json()?;
            for record in body["data"].as_array().into_iter().flatten() {
                let updated = record["updated_at"].as_str().unwrap_or_default();
                if updated > newest.as_str() {
                    newest = updated.to_owned();
                }
                let created = record["created_at"] == record["updated_at"];
                if (change == "created") != created || record["deleted"] == true {
                    continue;
                }
                let synthetic = json!({
                    "event_id": format!("poll:{}:{updated}", record["id"].as_str().unwrap_or_default()),
                    "kind": format!("contact.{change}"),
                    "occurred_at": updated,
                    "origin": record["origin"].as_str().unwrap_or("user"),
                    "company_id": company,
                    "team_id": record["team_id"],
                    "data": record,
                });
                // A record the webhook path would refuse is skipped here.
                if let Ok(Some(event)) = decode_event(0, &synthetic, company, &teams) {
                    events.push(event);
                }
            }
            match body["next_cursor"].as_str() {
                Some(next) if !next.is_empty() => page = Some(next.to_owned()),
                _ => break,
            }
        }
        // `updated_since` is inclusive: the newest change is read again
        // next time and names the same event.
        Ok(PollBatch {
            events,
            cursor: json!({"since": newest}),
        })
    }
}

#[async_trait]
impl EventSource for Kado {
    /// A note event names its contact by KADO id: the contact is read
    /// (`event.contact`), for its e-mail and HubSpot link.
    async fn enrich(
        &self,
        ctx: &CallContext<'_>,
        event: &mut crmbridge_mapping::Event,
    ) -> Result<(), ActionError> {
        if !event.kind.starts_with("kado.note.") {
            return Ok(());
        }
        let Some(contact) = event.data["contact_id"].as_str().map(str::to_owned) else {
            return Ok(());
        };
        let encoded: String = form_urlencoded::byte_serialize(contact.as_bytes()).collect();
        let url = format!("{}/contacts/{encoded}", Self::base(ctx)?);
        match self.call(ctx, VendorRequest::get(url)).await {
            Ok(response) => {
                event.data["contact"] = flatten("contact", &response.json()?);
                Ok(())
            }
            Err(ActionError::Vendor(VendorError::Rejected { status: 404, .. })) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// A contact's change is its id and `updated_at`: the webhook and the
    /// poll that both saw it name the same change, which runs once.
    fn change_key(&self, event: &crmbridge_mapping::Event) -> Option<String> {
        if event.subject.kind != "contact" {
            return None;
        }
        let updated = event.data["updated_at"].as_str()?;
        Some(format!("kado:contact:{}:{updated}", event.subject.id))
    }

    fn event_kinds(&self) -> Vec<EventKindSpec> {
        let contact = || {
            vec![
                field("id", FieldType::String, "KADO contact id"),
                field("team_id", FieldType::String, "its team"),
                field("is_private", FieldType::Boolean, "private: never exported"),
                field("hubspot_id", FieldType::String, "the HubSpot contact it is linked to, if any"),
                field("first_name", FieldType::String, "first name"),
                field("last_name", FieldType::String, "last name"),
                field("email", FieldType::Email, "the first e-mail"),
                field("emails", FieldType::Array, "every e-mail"),
                field("phone", FieldType::Phone, "the first phone"),
                field("phones", FieldType::Array, "every phone"),
                field("job_title", FieldType::String, "job title"),
                field("organization", FieldType::String, "organization"),
                field("owner_email", FieldType::Email, "the owning KADO user"),
                field("deleted", FieldType::Boolean, "deleted"),
            ]
        };
        let note = || {
            vec![
                field("id", FieldType::String, "KADO note id"),
                field("contact_id", FieldType::String, "the KADO contact"),
                field("team_id", FieldType::String, "its team"),
                field("is_private", FieldType::Boolean, "private: never exported"),
                field("hubspot_id", FieldType::String, "the HubSpot note it is linked to, if any"),
                field("body", FieldType::String, "the text"),
                field("author_email", FieldType::Email, "who wrote it"),
                field("created_at", FieldType::DateTime, "when"),
                field("deleted", FieldType::Boolean, "deleted"),
                field("contact", FieldType::Object, "its contact (as contact events carry it), read at dispatch"),
            ]
        };
        let mut kinds = Vec::new();
        for change in ["created", "updated", "deleted"] {
            kinds.push(EventKindSpec::new(format!("kado.contact.{change}"), contact()));
            kinds.push(EventKindSpec::new(format!("kado.note.{change}"), note()));
        }
        kinds.push(EventKindSpec::new(
            "kado.event.rejected",
            vec![
                field("index", FieldType::Integer, "its place in the batch"),
                field("reason", FieldType::String, "why it could not be read"),
                field("event", FieldType::Object, "the event as sent"),
            ],
        ));
        kinds
    }
}

#[async_trait]
impl Account for Kado {
    /// `GET /company`: the token works, for which company and teams.
    async fn check(&self, ctx: &CallContext<'_>) -> Result<Value, ActionError> {
        let response = self
            .call(ctx, VendorRequest::get(format!("{}/company", Self::base(ctx)?)))
            .await?;
        let company = response.json()?;
        if let Some(expected) = ctx.settings["company_id"].as_str()
            && company["company_id"].as_str() != Some(expected)
        {
            return Err(ActionError::Config(format!(
                "the token is for company {}, the connection for {expected}",
                company["company_id"]
            )));
        }
        Ok(json!({"company": company["name"], "teams": company["teams"]}))
    }
}

fn flag(fields: &Map<String, Value>, name: &str) -> Result<bool, ActionError> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
        Some(_) => Err(ActionError::field(format!("fields.{name}"), "true or false")),
    }
}

/// `kado.contact.upsert`: a HubSpot contact written into KADO.
struct UpsertContact(Arc<Kado>);

#[async_trait]
impl Action for UpsertContact {
    fn spec(&self) -> ActionSpec {
        ActionSpec::new(
            "kado.contact.upsert",
            ActionKind::Create,
            vec![
                FieldSpec::required("hubspot_id", FieldType::String).describe("the HubSpot contact's id"),
                field("team_id", FieldType::String, "the team a new contact goes to"),
                field("first_name", FieldType::String, "first name"),
                field("last_name", FieldType::String, "last name"),
                field("email", FieldType::Email, "e-mail"),
                field("phone", FieldType::Phone, "phone"),
                field("job_title", FieldType::String, "job title"),
                field("organization", FieldType::String, "organization"),
                field("owner_email", FieldType::Email, "the owning KADO user"),
                field("is_private", FieldType::Boolean, "private (default false)"),
                field("updated_at", FieldType::String, "the source's modification time (RFC 3339 or epoch ms): a write older than the one KADO holds changes nothing"),
            ],
        )
        .with_output(vec![
            field("id", FieldType::String, "KADO contact id"),
            field("created", FieldType::Boolean, "the contact was made now"),
            field("matched_by", FieldType::String, "email or phone, when an existing KADO contact was linked"),
            field("stale", FieldType::Boolean, "KADO held a newer write: nothing changed"),
        ])
    }

    /// The PUT finds the contact by its HubSpot id or makes it.
    fn resend(&self, _fields: &Map<String, Value>) -> Resend {
        Resend::Keyed
    }

    async fn execute(
        &self,
        ctx: &CallContext<'_>,
        fields: &Map<String, Value>,
        _target: Option<&str>,
    ) -> Result<ActionOutput, ActionError> {
        only_known(fields, CONTACT_FIELDS)?;
        let hubspot_id = required_text(fields, "hubspot_id")?;
        let mut contact = contact_body(fields)?;
        contact.insert("is_private".into(), Value::Bool(flag(fields, "is_private")?));
        let explicit_privacy = fields.contains_key("is_private");
        // One look-up: the contact already carrying this HubSpot id, else
        // existing KADO contacts with the e-mail, then the phone.
        let mut query = vec![("hubspot_id", hubspot_id.clone())];
        if let Some(email) = text(fields, "email") {
            query.push(("email", email));
        }
        if let Some(phone) = text(fields, "phone") {
            query.push(("phone", phone));
        }
        let url = crate::support::url_with_query(&format!("{}/contacts", Kado::base(ctx)?), &query)?;
        let found = self.0.call(ctx, VendorRequest::get(url)).await?.json()?;
        let candidates = found["data"].as_array().cloned().unwrap_or_default();
        let reference = |c: &Value| c["external_refs"]["hubspot"].as_str().map(str::to_owned);
        let linked = candidates
            .iter()
            .any(|c| reference(c).as_deref() == Some(hubspot_id.as_str()));
        if linked {
            // Updated by reference: its team and privacy stay KADO's (a
            // person may have made it private since).
            contact.remove("team_id");
            if !explicit_privacy {
                contact.remove("is_private");
            }
            return self.0.put_by_ref(ctx, "contacts", &hubspot_id, &Value::Object(contact)).await;
        }
        if let Some(existing) = candidates.iter().find(|c| reference(c).is_none()) {
            match self.link(ctx, existing, &hubspot_id, contact.clone(), explicit_privacy).await {
                Ok(output) => return Ok(output),
                // Another run linked it to another HubSpot contact first
                // (a shared phone): this person gets a contact of their own.
                Err(ActionError::Vendor(VendorError::Rejected { status: 409, .. })) => {}
                Err(err) => return Err(err),
            }
        }
        self.0.put_by_ref(ctx, "contacts", &hubspot_id, &Value::Object(contact)).await
    }
}

impl UpsertContact {
    /// Links an existing KADO contact to the HubSpot contact: HubSpot's
    /// values and the reference written, its team and privacy kept, its
    /// other e-mails and phones kept after HubSpot's. KADO refuses (409) to
    /// move a reference another run wrote meanwhile.
    async fn link(
        &self,
        ctx: &CallContext<'_>,
        existing: &Value,
        hubspot_id: &str,
        mut contact: Map<String, Value>,
        explicit_privacy: bool,
    ) -> Result<ActionOutput, ActionError> {
        let id = existing["id"].as_str().unwrap_or_default().to_owned();
        if id.is_empty() {
            return Err(VendorError::Decode {
                status: 200,
                message: "kado: a looked-up contact has no id".into(),
            }
            .into());
        }
        contact.remove("team_id");
        if !explicit_privacy {
            contact.remove("is_private");
        }
        contact.insert("external_refs".into(), json!({"hubspot": hubspot_id}));
        let mut matched = "phone";
        for list in ["emails", "phones"] {
            let mut merged: Vec<Value> = contact
                .get(list)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if list == "emails"
                && merged.iter().any(|new| {
                    existing[list].as_array().is_some_and(|held| {
                        held.iter().any(|h| {
                            h.as_str().zip(new.as_str()).is_some_and(|(a, b)| a.eq_ignore_ascii_case(b))
                        })
                    })
                })
            {
                matched = "email";
            }
            for held in existing[list].as_array().into_iter().flatten() {
                let known = merged.iter().any(|m| {
                    m.as_str()
                        .zip(held.as_str())
                        .is_some_and(|(a, b)| a.eq_ignore_ascii_case(b))
                });
                if !known {
                    merged.push(held.clone());
                }
            }
            if !merged.is_empty() {
                contact.insert(list.into(), Value::Array(merged));
            }
        }
        let (record, response) = self.0.patch_contact(ctx, &id, &Value::Object(contact)).await?;
        Ok(ActionOutput {
            id: id.clone(),
            record: json!({"id": id, "created": false, "matched_by": matched,
                           "stale": record["stale"].as_bool().unwrap_or(false)}),
            response_status: response.status,
            attempts: response.attempts,
        })
    }
}

/// A Contact body from a step's fields (the look-up keys as lists, HubSpot's
/// modification time as `source_updated_at`).
fn contact_body(fields: &Map<String, Value>) -> Result<Map<String, Value>, ActionError> {
    let mut contact = Map::new();
    for name in CONTACT_TEXT {
        if let Some(value) = text(fields, name) {
            contact.insert((*name).into(), Value::String(value));
        }
    }
    if let Some(email) = text(fields, "email") {
        contact.insert("emails".into(), json!([email]));
    }
    if let Some(phone) = text(fields, "phone") {
        contact.insert("phones".into(), json!([phone]));
    }
    if let Some(at) = source_time(fields)? {
        contact.insert("source_updated_at".into(), Value::String(at));
    }
    Ok(contact)
}

/// `updated_at`: the source's modification time, RFC 3339 or epoch
/// milliseconds (HubSpot gives both), as RFC 3339.
fn source_time(fields: &Map<String, Value>) -> Result<Option<String>, ActionError> {
    let Some(raw) = text(fields, "updated_at") else {
        return Ok(None);
    };
    let at = match raw.parse::<i64>() {
        Ok(ms) => chrono::DateTime::from_timestamp_millis(ms),
        Err(_) => chrono::DateTime::parse_from_rfc3339(&raw)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc)),
    };
    at.map(|t| Some(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        .ok_or_else(|| ActionError::field("fields.updated_at", "an RFC 3339 time or epoch milliseconds"))
}

/// `kado.contact.update`: fields of a KADO contact (by its KADO id), and
/// the HubSpot contact it is linked to (`hubspot_id` → `external_refs`).
struct UpdateContact(Arc<Kado>);

#[async_trait]
impl Action for UpdateContact {
    fn spec(&self) -> ActionSpec {
        let mut spec = UpsertContact(self.0.clone()).spec();
        spec.id = "kado.contact.update".into();
        spec.kind = ActionKind::Update;
        for field in &mut spec.fields {
            field.required = false;
        }
        spec.output = vec![field("id", FieldType::String, "KADO contact id")];
        spec
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
        only_known(fields, CONTACT_FIELDS)?;
        let id = target
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ActionError::field("target", "the KADO contact's id"))?;
        let mut patch = contact_body(fields)?;
        if fields.contains_key("is_private") {
            patch.insert("is_private".into(), Value::Bool(flag(fields, "is_private")?));
        }
        if let Some(hubspot) = text(fields, "hubspot_id") {
            patch.insert("external_refs".into(), json!({"hubspot": hubspot}));
        }
        let (record, response) = self.0.patch_contact(ctx, id, &Value::Object(patch)).await?;
        Ok(ActionOutput {
            id: id.to_owned(),
            record: flatten("contact", &record),
            response_status: response.status,
            attempts: response.attempts,
        })
    }
}

/// `kado.note.upsert`: a HubSpot note written into KADO.
struct UpsertNote(Arc<Kado>);

#[async_trait]
impl Action for UpsertNote {
    fn spec(&self) -> ActionSpec {
        ActionSpec::new(
            "kado.note.upsert",
            ActionKind::Create,
            vec![
                FieldSpec::required("hubspot_id", FieldType::String).describe("the HubSpot note's id"),
                field("contact_id", FieldType::String, "the KADO contact (or contact_hubspot_id)"),
                field("contact_hubspot_id", FieldType::String, "the HubSpot id of the contact, when its KADO id is not known"),
                FieldSpec::required("body", FieldType::String).describe("the text"),
                field("author_email", FieldType::Email, "who wrote it"),
                field("is_private", FieldType::Boolean, "private (default false)"),
            ],
        )
        .with_output(vec![field("id", FieldType::String, "KADO note id")])
    }

    fn resend(&self, _fields: &Map<String, Value>) -> Resend {
        Resend::Keyed
    }

    async fn execute(
        &self,
        ctx: &CallContext<'_>,
        fields: &Map<String, Value>,
        _target: Option<&str>,
    ) -> Result<ActionOutput, ActionError> {
        only_known(fields, NOTE_FIELDS)?;
        let hubspot_id = required_text(fields, "hubspot_id")?;
        let mut note = json!({
            "body": required_text(fields, "body")?,
            "is_private": flag(fields, "is_private")?,
        });
        match (text(fields, "contact_id"), text(fields, "contact_hubspot_id")) {
            (Some(id), _) => note["contact_id"] = Value::String(id),
            (None, Some(hubspot)) => note["contact_ref"] = json!({"hubspot": hubspot}),
            (None, None) => {
                return Err(ActionError::field("fields.contact_id", "the KADO contact (or fields.contact_hubspot_id)"));
            }
        }
        if let Some(author) = text(fields, "author_email") {
            note["author_email"] = Value::String(author);
        }
        match self.0.put_by_ref(ctx, "notes", &hubspot_id, &note).await {
            // The contact is written by its own run, which may still be on
            // its way (an import sends contacts and notes close together).
            Err(ActionError::Vendor(VendorError::Rejected { status: 404, message, .. }))
                if message.contains("(field contact_ref)") =>
            {
                Err(ActionError::NotYet(format!(
                    "the note's contact (HubSpot {}) is not in KADO yet: {message}",
                    text(fields, "contact_hubspot_id").unwrap_or_default()
                )))
            }
            other => other,
        }
    }
}


/// `kado.note.update`: records the HubSpot note a KADO note became
/// (`hubspot_id` → `external_refs.hubspot`), so a later report of that
/// HubSpot note finds this KADO note instead of making a second.
struct UpdateNote(Arc<Kado>);

#[async_trait]
impl Action for UpdateNote {
    fn spec(&self) -> ActionSpec {
        ActionSpec::new(
            "kado.note.update",
            ActionKind::Update,
            vec![
                field("hubspot_id", FieldType::String, "the HubSpot note it became"),
                field("body", FieldType::String, "the text"),
                field("is_private", FieldType::Boolean, "private"),
            ],
        )
        .with_output(vec![field("id", FieldType::String, "KADO note id")])
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
        only_known(fields, &["hubspot_id", "body", "is_private"])?;
        let id = target
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ActionError::field("target", "the KADO note's id"))?;
        let mut patch = Map::new();
        if let Some(hubspot) = text(fields, "hubspot_id") {
            patch.insert("external_refs".into(), json!({"hubspot": hubspot}));
        }
        if let Some(body) = text(fields, "body") {
            patch.insert("body".into(), Value::String(body));
        }
        if fields.contains_key("is_private") {
            patch.insert("is_private".into(), Value::Bool(flag(fields, "is_private")?));
        }
        let encoded: String = form_urlencoded::byte_serialize(id.as_bytes()).collect();
        let request = VendorRequest::with_body(
            reqwest::Method::PATCH,
            format!("{}/notes/{encoded}", Kado::base(ctx)?),
            Value::Object(patch).to_string().into_bytes(),
            Idempotency::Idempotent,
        )
        .header("content-type", "application/json");
        let response = self.0.call(ctx, request).await?;
        let record = response.json()?;
        Ok(ActionOutput {
            id: id.to_owned(),
            record: flatten("note", &record),
            response_status: response.status,
            attempts: response.attempts,
        })
    }
}

/// KADO (our adapter contract): contacts and notes both ways.
pub fn vendor() -> Vendor {
    let kado = Arc::new(Kado);
    Vendor::new("kado", kado.clone())
        .webhooks(kado.clone())
        .events(kado.clone())
        .poller(kado.clone())
        .account(kado.clone())
        .action(Arc::new(UpsertContact(kado.clone())))
        .action(Arc::new(UpdateContact(kado.clone())))
        .action(Arc::new(UpsertNote(kado.clone())))
        .action(Arc::new(UpdateNote(kado)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hmac::{Hmac, Mac};

    fn sign(secret: &str, ts: i64, body: &str) -> Vec<(String, String)> {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{ts}.{body}").as_bytes());
        vec![
            ("x-timestamp".into(), ts.to_string()),
            ("x-signature".into(), format!("sha256={}", hex::encode(mac.finalize().into_bytes()))),
        ]
    }

    fn decode(headers: &[(String, String)], body: &str, secret: Option<&str>) -> Result<Vec<DecodedEvent>, DecodeError> {
        let settings = json!({"base_url": "https://kado.example", "company_id": "co_1", "teams": ["t_sales"]});
        Kado.decode_webhook(
            ConnectionView { id: "c", settings: &settings, signing_secret: secret },
            &InboundRequest { method: "POST", query: &[], content_type: Some("application/json"), body: body.as_bytes(), headers, url: None },
        )
    }

    #[test]
    fn events_are_verified_filtered_by_team_and_origin() {
        let body = json!([
            {"event_id": "e1", "kind": "contact.created", "occurred_at": "2026-11-25T10:00:00Z", "origin": "user",
             "company_id": "co_1", "team_id": "t_sales", "data": {"id": "c_1", "team_id": "t_sales", "emails": ["ann@example.com"], "is_private": false}},
            {"event_id": "e2", "kind": "contact.updated", "occurred_at": "2026-11-25T10:00:01Z", "origin": "crmbridge",
             "company_id": "co_1", "team_id": "t_sales", "data": {"id": "c_1"}},
            {"event_id": "e3", "kind": "contact.created", "occurred_at": "2026-11-25T10:00:02Z", "origin": "user",
             "company_id": "co_1", "team_id": "t_other", "data": {"id": "c_2"}},
        ])
        .to_string();
        let now = chrono::Utc::now().timestamp();
        let events = decode(&sign("k", now, &body), &body, Some("k")).unwrap();
        assert_eq!(events.len(), 1, "ours and the other team's are dropped");
        assert_eq!(events[0].kind, "kado.contact.created");
        assert_eq!(events[0].data["email"], "ann@example.com");
        assert_eq!(events[0].data["is_private"], false);
        // Privacy that cannot be read is private.
        for unclear in [json!("yes"), json!(null), json!(1)] {
            let data = json!({"id": "c_9", "is_private": unclear});
            assert_eq!(flatten("contact", &data)["is_private"], true, "{unclear}");
        }
        assert_eq!(flatten("contact", &json!({"id": "c_9", "is_private": "false"}))["is_private"], false);
        assert_eq!(events[0].source_id.as_deref(), Some("e1"));
        for (headers, field) in [
            (sign("other", now, &body), "headers.x-signature"),
            (sign("k", now - 400, &body), "headers.x-timestamp"),
            (Vec::new(), "headers.x-timestamp"),
        ] {
            let err = decode(&headers, &body, Some("k")).unwrap_err();
            assert!(err.unauthenticated && err.field == field, "{err}");
        }
        // Without a secret the path token alone authenticates.
        assert_eq!(decode(&[], &body, None).unwrap().len(), 1);
        // In a batch a bad event is reported, the others go on; a single
        // bad event is refused whole.
        let foreign = body.replacen("co_1", "co_9", 1);
        let events = decode(&[], &foreign, None).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, "kado.event.rejected");
        assert!(events[0].data["reason"].as_str().unwrap().contains("body[0].company_id"));
        let single = json!({"event_id": "e9", "kind": "contact.created", "company_id": "co_9", "team_id": "t_sales", "data": {"id": "c_9"}}).to_string();
        assert_eq!(decode(&[], &single, None).unwrap_err().field, "body[0].company_id");
    }

    #[test]
    fn an_adapter_address_needs_the_deployment_to_allow_it() {
        assert!(check_adapter_url("https://kado-adapter.example.com/v1", false).is_err());
        assert!(check_adapter_url("https://kado-adapter.example.com/v1", true).is_ok());
        assert!(check_adapter_url("ftp://x", true).is_err());
    }
}
