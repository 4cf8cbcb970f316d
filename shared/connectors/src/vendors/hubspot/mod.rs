//! HubSpot CRM (API v3): contacts and notes, signed in with OAuth 2.0.
//! Facts, with how sure we are of each and the public source:
//! `vendors/hubspot/API.md`.
//!
//! - One API host (`https://api.hubapi.com`); every call carries
//!   `Authorization: Bearer …`. Access tokens are short-lived and refreshed
//!   by the engine from `expires_in`; the token endpoint is
//!   `/oauth/2026-03/token` (the v1 one stops in February 2027).
//! - Ids are strings holding 64-bit numbers; every property value is a
//!   string, both ways.
//! - `email` is a contact's de-duplication key: a contact with an e-mail is
//!   written by **upsert on `email`** (repeating it changes nothing more),
//!   and a create that meets an existing e-mail (409 "Contact already
//!   exists. Existing ID: N") resolves to that contact, never a second one.
//! - Search lags behind writes (up to about 30 s): it is used to find a
//!   contact, never to prevent a duplicate.
//! - 100 requests per 10 seconds per installed account: the client stays
//!   under it and retries a 429 (HubSpot's body names the policy).
//!
//! Sending a step again after an attempt with an unknown outcome:
//!
//! | action                     | resend | why |
//! |----------------------------|--------|-----|
//! | `hubspot.contact.create`   | `Keyed` with an e-mail, else `Unsafe` | upsert on `email` finds what the lost attempt made |
//! | `hubspot.contact.update`   | `Repeatable` | it overwrites properties |
//! | `hubspot.note.create`      | `Unsafe` | notes have no unique property |
#![doc = include_str!("API.md")]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use crmbridge_mapping::{ActionKind, ActionSpec, FieldType, LookupKey};
use serde_json::{Map, Value, json};

use crate::client::{Idempotency, VendorError, VendorPolicy, VendorRequest, VendorResponse};
use crate::oauth::{OAuthApp, OAuthEndpoints, send_authorized};
use crate::support::{
    check_base_url, field, only_known, text, url_with_query, validate_known_settings,
    with_timeout,
};
use crate::{
    Account, Action, ActionError, ActionOutput, CallContext, ConnectionView, DecodeError,
    DecodedEvent, EventSource, ImportPage, Importer, InboundRequest, Lookup, Reading, ReportedChange, Resend, SettingsError,
    Vendor, VendorSettings, WebhookSource, Written,
};

const API: &str = "https://api.hubapi.com";
const DOMAINS: &[&str] = &[".hubapi.com"];
const OAUTH_DOMAINS: &[&str] = &[".hubapi.com", ".hubspot.com"];
const SETTINGS: &[&str] = &["oauth_url"];
/// Our contact fields → HubSpot's property names.
const CONTACT: &[(&str, &str)] = &[
    ("email", "email"),
    ("first_name", "firstname"),
    ("last_name", "lastname"),
    ("phone", "phone"),
    ("mobile", "mobilephone"),
    ("company", "company"),
    ("job_title", "jobtitle"),
    ("lifecycle_stage", "lifecyclestage"),
    ("owner_id", "hubspot_owner_id"),
];
const NOTE_FIELDS: &[&str] = &["body", "timestamp", "contact_id", "owner_id"];
/// HubSpot-defined association type: note → contact.
const NOTE_TO_CONTACT: u32 = 202;

/// 100 requests per 10 seconds per installed account (public apps): stay
/// just under, a few in parallel.
pub fn policy() -> VendorPolicy {
    VendorPolicy::new("hubspot", 90, Duration::from_secs(10), 5)
}

#[derive(Debug, Clone, Copy, Default)]
pub struct HubSpot;

impl HubSpot {
    fn base(ctx: &CallContext<'_>) -> Result<String, ActionError> {
        crate::support::base_url(ctx.settings, API, DOMAINS, ctx.allow_any_base_url)
    }

    /// One call, the token refreshed once if HubSpot refused it.
    async fn call(
        &self,
        ctx: &CallContext<'_>,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        idempotency: Idempotency,
    ) -> Result<VendorResponse, ActionError> {
        let url = url_with_query(&format!("{}{path}", Self::base(ctx)?), query)?;
        let payload = body.map(|b| b.to_string().into_bytes());
        let policy = with_timeout(policy(), ctx.settings);
        let response = send_authorized(ctx, &HubSpot, &policy, |auth| {
            let request = match &payload {
                Some(bytes) => {
                    VendorRequest::with_body(method.clone(), url.clone(), bytes.clone(), idempotency)
                        .header("content-type", "application/json")
                }
                None => VendorRequest::get(url.clone()),
            };
            request.header("authorization", auth)
        })
        .await?;
        if response.status >= 500 || response.status == 429 {
            return Err(VendorError::Status {
                vendor: "hubspot",
                status: response.status,
                attempts: response.attempts,
                body: describe(&response),
            }
            .into());
        }
        Ok(response)
    }

    /// A successful answer's JSON, or the refusal.
    fn json(response: &VendorResponse) -> Result<Value, ActionError> {
        if response.is_success() {
            return Ok(response.json()?);
        }
        Err(VendorError::Rejected {
            vendor: "hubspot",
            status: response.status,
            message: describe(response),
        }
        .into())
    }

    /// Contacts by id (`contact_data` shape), up to 100 per call with the
    /// batch read; ids HubSpot no longer has are left out.
    async fn contacts_by_id(
        &self,
        ctx: &CallContext<'_>,
        ids: &[String],
    ) -> Result<std::collections::BTreeMap<String, Value>, ActionError> {
        let mut found = std::collections::BTreeMap::new();
        let properties: Vec<&str> = CONTACT.iter().map(|(_, theirs)| *theirs).collect();
        for chunk in ids.chunks(IMPORT_PAGE) {
            let inputs: Vec<Value> = chunk.iter().map(|id| json!({"id": id})).collect();
            let response = self
                .call(
                    ctx,
                    reqwest::Method::POST,
                    "/crm/v3/objects/contacts/batch/read",
                    &[],
                    Some(&json!({"properties": properties, "inputs": inputs})),
                    Idempotency::Idempotent,
                )
                .await?;
            // 207: some ids are gone; the others are in `results`.
            if !(response.is_success() || response.status == 207) {
                Self::json(&response)?;
            }
            for record in response.json()?["results"].as_array().into_iter().flatten() {
                found.insert(id_text(&record["id"]), contact_data(record));
            }
        }
        Ok(found)
    }

    /// Contacts whose `property` equals `value` (search: it lags behind
    /// writes, so it finds, never guarantees absence).
    async fn search(
        &self,
        ctx: &CallContext<'_>,
        property: &str,
        value: &str,
    ) -> Result<Vec<Value>, ActionError> {
        let body = json!({
            "filterGroups": [{"filters": [{"propertyName": property, "operator": "EQ", "value": value}]}],
            "properties": ["email", "firstname", "lastname", "phone", "hubspot_owner_id"],
            "limit": 10,
        });
        let response = self
            .call(
                ctx,
                reqwest::Method::POST,
                "/crm/v3/objects/contacts/search",
                &[],
                Some(&body),
                Idempotency::Idempotent,
            )
            .await?;
        Ok(Self::json(&response)?["results"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

/// HubSpot's error body in one line: category, message and the properties
/// it names.
fn describe(response: &VendorResponse) -> String {
    let Ok(body) = response.json() else {
        return response.text().chars().take(300).collect();
    };
    let category = body["category"]
        .as_str()
        .or_else(|| body["errorType"].as_str())
        .unwrap_or("ERROR");
    let message = body["message"].as_str().unwrap_or_default();
    let mut text = format!("{category}: {message}");
    if let Some(policy) = body["policyName"].as_str() {
        text.push_str(&format!(" (policy {policy})"));
    }
    if let Some(missing) = body["context"]["missingScopes"].as_array() {
        let names: Vec<&str> = missing.iter().filter_map(Value::as_str).collect();
        text.push_str(&format!(
            " — missing scopes: {}; authorize the connection again",
            names.join(", ")
        ));
    }
    text.chars().take(500).collect()
}

/// The existing contact a 409 names ("… Existing ID: 37765128953").
fn existing_id(response: &VendorResponse) -> Option<String> {
    let body = response.json().ok()?;
    if let Some(vid) = body["identityProfile"]["vid"].as_i64() {
        return Some(vid.to_string());
    }
    let message = body["message"].as_str()?;
    let (_, tail) = message.rsplit_once("Existing ID:")?;
    let id: String = tail
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (!id.is_empty()).then_some(id)
}

fn id_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// HubSpot properties from a step's contact fields (every value a string).
fn contact_properties(fields: &Map<String, Value>) -> Result<Map<String, Value>, ActionError> {
    let mut known: Vec<&str> = CONTACT.iter().map(|(ours, _)| *ours).collect();
    known.push("properties");
    only_known(fields, &known)?;
    let mut properties = Map::new();
    for (ours, theirs) in CONTACT {
        if let Some(value) = text(fields, ours) {
            properties.insert((*theirs).to_owned(), Value::String(value));
        }
    }
    match fields.get("properties") {
        None | Some(Value::Null) => {}
        Some(Value::Object(extra)) => {
            for (name, value) in extra {
                let value = match value {
                    Value::Null => continue,
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                properties.insert(name.clone(), Value::String(value));
            }
        }
        Some(_) => return Err(ActionError::field("fields.properties", "must be an object")),
    }
    Ok(properties)
}

fn output(record: Value, response: &VendorResponse, existing: bool) -> ActionOutput {
    let id = id_text(&record["id"]);
    let mut out = record;
    out["existing"] = Value::Bool(existing);
    ActionOutput {
        id,
        record: out,
        response_status: response.status,
        attempts: response.attempts,
    }
}

impl VendorSettings for HubSpot {
    fn required_credentials(&self) -> &'static [&'static str] {
        &["client_id", "client_secret"]
    }

    fn validate_settings(
        &self,
        settings: &Value,
        allow_any_base_url: bool,
    ) -> Result<(), Vec<SettingsError>> {
        let mut errors = match validate_known_settings(
            settings,
            SETTINGS,
            Some(API),
            DOMAINS,
            allow_any_base_url,
        ) {
            Ok(()) => Vec::new(),
            Err(errors) => errors,
        };
        if let Some(url) = settings.get("oauth_url") {
            let problem = match url.as_str() {
                Some(url) => check_base_url(url, OAUTH_DOMAINS, allow_any_base_url).err(),
                None => Some("must be a string".into()),
            };
            if let Some(message) = problem {
                errors.push(SettingsError {
                    field: "oauth_url".into(),
                    message,
                });
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

impl OAuthApp for HubSpot {
    /// HubSpot's consent page and its current token endpoint; `oauth_url`
    /// points both elsewhere (tests).
    fn endpoints(
        &self,
        settings: &Value,
        allow_any_base_url: bool,
    ) -> Result<OAuthEndpoints, ActionError> {
        match settings["oauth_url"].as_str() {
            Some(url) => {
                check_base_url(url, OAUTH_DOMAINS, allow_any_base_url)
                    .map_err(|m| ActionError::Config(format!("settings.oauth_url: {m}")))?;
                let base = url.trim_end_matches('/');
                Ok(OAuthEndpoints {
                    authorize_url: format!("{base}/oauth/authorize"),
                    token_url: format!("{base}/oauth/2026-03/token"),
                })
            }
            None => Ok(OAuthEndpoints {
                authorize_url: "https://app.hubspot.com/oauth/authorize".into(),
                token_url: format!("{API}/oauth/2026-03/token"),
            }),
        }
    }

    fn scopes(&self) -> Vec<String> {
        ["crm.objects.contacts.read", "crm.objects.contacts.write"]
            .map(str::to_owned)
            .to_vec()
    }

    /// HubSpot documents PKCE for its newer apps only.
    fn pkce(&self) -> bool {
        false
    }

    /// Only an expired or invalid token is worth a refresh; a 401 for
    /// anything else is not.
    fn token_refused(&self, response: &VendorResponse) -> bool {
        if response.status != 401 {
            return false;
        }
        match response
            .json()
            .ok()
            .and_then(|b| b["category"].as_str().map(str::to_owned))
        {
            Some(category) => matches!(
                category.as_str(),
                "EXPIRED_AUTHENTICATION" | "INVALID_AUTHENTICATION"
            ),
            None => true,
        }
    }
}

#[async_trait]
impl Account for HubSpot {
    /// One contact read: the grant works and has the contacts scope.
    async fn check(&self, ctx: &CallContext<'_>) -> Result<Value, ActionError> {
        let response = self
            .call(
                ctx,
                reqwest::Method::GET,
                "/crm/v3/objects/contacts",
                &[("limit", "1".into())],
                None,
                Idempotency::Idempotent,
            )
            .await?;
        let body = Self::json(&response)?;
        Ok(json!({"contacts_readable": true, "sample": body["results"].as_array().map_or(0, Vec::len)}))
    }
}

/// How old (or how far ahead) a signed delivery may be: HubSpot's five
/// minutes.
const SIGNATURE_WINDOW_MS: i64 = 300_000;

/// Characters HubSpot decodes in the URL before signing it.
const URL_DECODED: &[(&str, &str)] = &[
    ("%3A", ":"),
    ("%2F", "/"),
    ("%3F", "?"),
    ("%40", "@"),
    ("%21", "!"),
    ("%24", "$"),
    ("%27", "'"),
    ("%28", "("),
    ("%29", ")"),
    ("%2A", "*"),
    ("%2C", ","),
    ("%3B", ";"),
];

fn unauthenticated(field: &str, message: impl Into<String>) -> DecodeError {
    DecodeError::unauthenticated(field, message)
}

/// Checks HubSpot's signature over the raw bytes, before anything is
/// parsed: v3 (HMAC with the client secret over method, URL, body and
/// timestamp, five minutes at most). The older v1/v2 hashes carry no
/// timestamp and are refused: a captured delivery could be replayed.
fn verify_signature(
    secret: &str,
    request: &InboundRequest<'_>,
    now_ms: i64,
) -> Result<(), DecodeError> {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    let url = || {
        request.url.map(|url| {
            URL_DECODED
                .iter()
                .fold(url.to_owned(), |url, (encoded, plain)| {
                    url.replace(encoded, plain)
                        .replace(&encoded.to_ascii_lowercase(), plain)
                })
        })
    };
    if let Some(signature) = request.header("x-hubspot-signature-v3") {
        let timestamp = request
            .header("x-hubspot-request-timestamp")
            .ok_or_else(|| unauthenticated("headers.x-hubspot-request-timestamp", "missing"))?;
        let at: i64 = timestamp.trim().parse().map_err(|_| {
            unauthenticated("headers.x-hubspot-request-timestamp", "not milliseconds since 1970")
        })?;
        if (now_ms - at).abs() > SIGNATURE_WINDOW_MS {
            return Err(unauthenticated(
                "headers.x-hubspot-request-timestamp",
                "more than five minutes from now: a stale or replayed delivery is refused",
            ));
        }
        let url = url().ok_or_else(|| {
            unauthenticated("url", "the address HubSpot called is not known: set the public URL")
        })?;
        let given = base64::engine::general_purpose::STANDARD
            .decode(signature.trim())
            .map_err(|_| unauthenticated("headers.x-hubspot-signature-v3", "not base64"))?;
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
            .map_err(|_| unauthenticated("credentials.client_secret", "unusable as a key"))?;
        mac.update(request.method.as_bytes());
        mac.update(url.as_bytes());
        mac.update(request.body);
        mac.update(timestamp.trim().as_bytes());
        return mac.verify_slice(&given).map_err(|_| {
            unauthenticated("headers.x-hubspot-signature-v3", "does not match: not signed with this app's client secret")
        });
    }
    if request.header("x-hubspot-signature").is_some() {
        // v1 and v2 carry no timestamp: a captured delivery could be
        // replayed for ever. HubSpot sends v3 with every delivery too.
        return Err(unauthenticated(
            "headers.x-hubspot-signature-v3",
            "missing: only the v3 signature (with its timestamp) is accepted; v1/v2 can be replayed",
        ));
    }
    Err(unauthenticated(
        "headers.x-hubspot-signature-v3",
        "missing: HubSpot signs every delivery",
    ))
}

/// One event of a delivery, or why it cannot be read.
fn decode_event(event: &Value) -> Result<DecodedEvent, String> {
    let object_id = match &event["objectId"] {
        Value::Number(n) => n.as_u64().map(|n| n.to_string()),
        Value::String(s) if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) => Some(s.clone()),
        _ => None,
    }
    .ok_or("objectId: missing or not a number")?;
    let subscription = event["subscriptionType"]
        .as_str()
        .or_else(|| event["eventType"].as_str())
        .ok_or("subscriptionType: missing")?;
    let note = event["objectTypeId"].as_str() == Some("0-46");
    let (entity, change) = match subscription {
        "contact.creation" => ("contact", "created"),
        "contact.propertyChange" => ("contact", "changed"),
        "contact.deletion" | "contact.privacyDeletion" => ("contact", "deleted"),
        "object.creation" if note => ("note", "created"),
        "object.propertyChange" if note => ("note", "changed"),
        "object.deletion" if note => ("note", "deleted"),
        other => return Err(format!("subscriptionType: {other} is not one crmbridge reads")),
    };
    let occurred = event["occurredAt"].as_i64().ok_or("occurredAt: missing")?;
    let event_id = match &event["eventId"] {
        Value::Null => String::new(),
        other => id_text(other),
    };
    let property = event["propertyName"].as_str().unwrap_or_default();
    Ok(DecodedEvent {
        // eventId alone is not promised unique: with the object, the time
        // and the property it names one change, whatever the attempt.
        source_id: Some(format!("{event_id}:{object_id}:{occurred}:{property}")),
        kind: format!("hubspot.{entity}.{change}"),
        subject: crmbridge_mapping::Subject {
            kind: entity.into(),
            id: object_id.clone(),
        },
        occurred_at: chrono::DateTime::from_timestamp_millis(occurred),
        observation: None,
        data: json!({
            "id": object_id,
            "property": event["propertyName"],
            "value": event["propertyValue"],
            "change_source": event["changeSource"],
            "source_id": event["sourceId"],
            "portal_id": event["portalId"],
            "attempt": event["attemptNumber"],
        }),
    })
}

impl WebhookSource for HubSpot {
    fn ack_status(&self) -> u16 {
        200
    }

    fn signing_credential(&self) -> Option<&'static str> {
        Some("client_secret")
    }

    /// A JSON array of events, signed. Each event stands alone: one that
    /// cannot be read becomes a `hubspot.event.rejected` event naming why,
    /// and the others are accepted.
    fn decode_webhook(
        &self,
        connection: ConnectionView<'_>,
        request: &InboundRequest<'_>,
    ) -> Result<Vec<DecodedEvent>, DecodeError> {
        let secret = connection.signing_secret.ok_or_else(|| {
            unauthenticated(
                "credentials.client_secret",
                "the connection has no client secret to check HubSpot's signature with",
            )
        })?;
        verify_signature(secret, request, chrono::Utc::now().timestamp_millis())?;
        let body: Value = serde_json::from_slice(request.body)
            .map_err(|err| DecodeError::new("body", format!("not valid JSON: {err}")))?;
        let events = body
            .as_array()
            .ok_or_else(|| DecodeError::new("body", "expected a JSON array of events"))?;
        Ok(events
            .iter()
            .enumerate()
            .map(|(index, event)| {
                decode_event(event).unwrap_or_else(|reason| DecodedEvent {
                    source_id: None,
                    kind: "hubspot.event.rejected".into(),
                    subject: crmbridge_mapping::Subject {
                        kind: "delivery".into(),
                        id: String::new(),
                    },
                    occurred_at: None,
                    observation: None,
                    data: json!({"index": index, "reason": format!("body[{index}].{reason}"), "event": event}),
                })
            })
            .collect())
    }
}

/// What a contact write set, as HubSpot's change events will report it.
fn contact_written(fields: &Map<String, Value>, output: &ActionOutput, created: bool) -> Option<Written> {
    let properties = contact_properties(fields).ok()?;
    Some(Written {
        entity: "contact".into(),
        id: output.id.clone(),
        created,
        properties: properties
            .into_iter()
            .map(|(name, value)| (name, value.as_str().unwrap_or_default().to_owned()))
            .collect(),
        version: None,
    })
}

/// The note properties crmbridge reads.
const NOTE_PROPERTIES: &str = "hs_note_body,hs_timestamp";
/// Records per list page (HubSpot's most).
const IMPORT_PAGE: usize = 100;

fn contact_property_list() -> String {
    CONTACT
        .iter()
        .map(|(_, theirs)| *theirs)
        .collect::<Vec<_>>()
        .join(",")
}

/// A contact record as events carry it (`event.contact`): our field names,
/// and HubSpot's own modification time (`updated_at`), by which a later
/// write wins over an earlier one.
fn contact_data(record: &Value) -> Value {
    let mut contact = Map::new();
    for (ours, theirs) in CONTACT {
        contact.insert((*ours).to_owned(), record["properties"][*theirs].clone());
    }
    let updated = match &record["updatedAt"] {
        Value::Null => record["properties"]["lastmodifieddate"].clone(),
        other => other.clone(),
    };
    contact.insert("updated_at".into(), updated);
    Value::Object(contact)
}

/// A note record as events carry it (`event.note`): its text, time and the
/// contacts it is associated with (the first is `contact_id`).
fn note_data(record: &Value) -> Value {
    let contacts: Vec<Value> = record["associations"]["contacts"]["results"]
        .as_array()
        .map(|list| list.iter().map(|c| Value::String(id_text(&c["id"]))).collect())
        .unwrap_or_default();
    json!({
        "body": record["properties"]["hs_note_body"],
        "timestamp": record["properties"]["hs_timestamp"],
        "updated_at": record["updatedAt"],
        "contact_id": contacts.first().cloned().unwrap_or(Value::Null),
        "contact_ids": contacts,
    })
}

/// An existing record read by an import, as the event its creation would
/// have been (with its properties already read).
fn imported_event(entity: &str, record: &Value) -> Option<DecodedEvent> {
    let id = id_text(&record["id"]);
    if id.is_empty() {
        return None;
    }
    let created = record["createdAt"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc));
    let mut data = json!({"id": id, "change_source": "IMPORT", "imported": true});
    data[entity] = match entity {
        "contact" => contact_data(record),
        _ => note_data(record),
    };
    Some(DecodedEvent {
        source_id: Some(format!("import:{entity}:{id}")),
        kind: format!("hubspot.{entity}.created"),
        subject: crmbridge_mapping::Subject {
            kind: entity.into(),
            id,
        },
        occurred_at: created,
        observation: None,
        data,
    })
}

/// Contacts, then notes, read with the list endpoints (`after` cursor;
/// search cannot page past 10,000 records). The total comes from one
/// search with `limit: 1` before the first page.
#[async_trait]
impl Importer for HubSpot {
    fn import_kinds(&self) -> Vec<&'static str> {
        vec!["hubspot.contact.created", "hubspot.note.created"]
    }

    async fn import_page(
        &self,
        ctx: &CallContext<'_>,
        kind: &str,
        cursor: Option<&Value>,
    ) -> Result<ImportPage, ActionError> {
        let (entity, plural, properties, associations) = match kind {
            "hubspot.contact.created" => ("contact", "contacts", contact_property_list(), None),
            "hubspot.note.created" => ("note", "notes", NOTE_PROPERTIES.to_owned(), Some("contacts")),
            other => {
                return Err(ActionError::Config(format!("{other} cannot be imported from HubSpot")));
            }
        };
        let total = match cursor {
            Some(_) => None,
            None => {
                let response = self
                    .call(
                        ctx,
                        reqwest::Method::POST,
                        &format!("/crm/v3/objects/{plural}/search"),
                        &[],
                        Some(&json!({"limit": 1, "properties": ["hs_object_id"]})),
                        Idempotency::Idempotent,
                    )
                    .await?;
                Self::json(&response)?["total"].as_u64()
            }
        };
        let mut query = vec![
            ("limit", IMPORT_PAGE.to_string()),
            ("properties", properties),
        ];
        if let Some(associations) = associations {
            query.push(("associations", associations.to_owned()));
        }
        if let Some(after) = cursor.and_then(|c| c["after"].as_str()) {
            query.push(("after", after.to_owned()));
        }
        let response = self
            .call(
                ctx,
                reqwest::Method::GET,
                &format!("/crm/v3/objects/{plural}"),
                &query,
                None,
                Idempotency::Idempotent,
            )
            .await?;
        let body = Self::json(&response)?;
        let mut events: Vec<DecodedEvent> = body["results"]
            .as_array()
            .map(|records| records.iter().filter_map(|r| imported_event(entity, r)).collect())
            .unwrap_or_default();
        if entity == "note" {
            // A note is written on its contact, which its event carries
            // (one batch read per page), so the note does not wait for
            // the contact's own run.
            let mut wanted: Vec<String> = events
                .iter()
                .filter_map(|e| e.data["note"]["contact_id"].as_str().map(str::to_owned))
                .collect();
            wanted.sort();
            wanted.dedup();
            let contacts = self.contacts_by_id(ctx, &wanted).await?;
            for event in &mut events {
                if let Some(contact) = event.data["note"]["contact_id"]
                    .as_str()
                    .and_then(|id| contacts.get(id))
                {
                    event.data["note"]["contact"] = contact.clone();
                }
            }
        }
        let next = body["paging"]["next"]["after"]
            .as_str()
            .filter(|after| !after.is_empty())
            .map(|after| json!({"after": after}));
        Ok(ImportPage {
            events,
            next,
            total,
        })
    }
}

#[async_trait]
impl EventSource for HubSpot {
    /// A contact event carries only ids: its current properties are read
    /// (`event.contact`: email, first_name, last_name, phone, job_title,
    /// company); a note's text, time and contacts likewise (`event.note`).
    async fn enrich(
        &self,
        ctx: &CallContext<'_>,
        event: &mut crmbridge_mapping::Event,
    ) -> Result<(), ActionError> {
        let id = event.subject.id.clone();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) || event.kind.ends_with(".deleted") {
            return Ok(());
        }
        if event.kind.starts_with("hubspot.contact.") {
            // An imported contact came with its properties from the list.
            if event.data["contact"].is_object() {
                return Ok(());
            }
            let response = self
                .call(
                    ctx,
                    reqwest::Method::GET,
                    &format!("/crm/v3/objects/contacts/{id}"),
                    &[("properties", contact_property_list())],
                    None,
                    Idempotency::Idempotent,
                )
                .await?;
            if response.status == 404 {
                return Ok(());
            }
            event.data["contact"] = contact_data(&Self::json(&response)?);
        } else if event.kind.starts_with("hubspot.note.") {
            if event.data["note"].is_object() {
                return Ok(());
            }
            let response = self
                .call(
                    ctx,
                    reqwest::Method::GET,
                    &format!("/crm/v3/objects/notes/{id}"),
                    &[
                        ("properties", NOTE_PROPERTIES.into()),
                        ("associations", "contacts".into()),
                    ],
                    None,
                    Idempotency::Idempotent,
                )
                .await?;
            if response.status == 404 {
                return Ok(());
            }
            let mut note = note_data(&Self::json(&response)?);
            if let Some(contact) = note["contact_id"].as_str().map(str::to_owned) {
                let read = self.contacts_by_id(ctx, std::slice::from_ref(&contact)).await?;
                if let Some(found) = read.get(&contact) {
                    note["contact"] = found.clone();
                }
            }
            event.data["note"] = note;
        }
        Ok(())
    }

    /// A creation, or one property's new value (HubSpot reports each
    /// changed property as its own event).
    fn reported_change(&self, event: &crmbridge_mapping::Event) -> Option<ReportedChange> {
        if event.kind.ends_with(".created") {
            return Some(ReportedChange {
                created: true,
                ..ReportedChange::default()
            });
        }
        if event.kind.ends_with(".changed") {
            let property = event.data["property"].as_str()?;
            let value = match &event.data["value"] {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            return Some(ReportedChange {
                created: false,
                properties: vec![(property.to_owned(), value)],
                reading: Reading::Values,
                version: None,
            });
        }
        None
    }

    fn event_kinds(&self) -> Vec<crmbridge_mapping::EventKindSpec> {
        let fields = || {
            vec![
                field("id", FieldType::String, "the record's id"),
                field("property", FieldType::String, "the property that changed (changes only)"),
                field("value", FieldType::String, "its new value (changes only)"),
                field("change_source", FieldType::String, "what made the change: API, CRM_UI, IMPORT, …"),
                field("source_id", FieldType::String, "who made it, e.g. userId:45678 or the app's id"),
                field("portal_id", FieldType::Integer, "the HubSpot account"),
                field("attempt", FieldType::Integer, "HubSpot's delivery attempt (0 = first)"),
                field("contact", FieldType::Object, "a contact's current properties (email, first_name, last_name, phone, mobile, company, job_title, lifecycle_stage, owner_id) and HubSpot's updated_at, read at dispatch (an import reads them from its page)"),
                field("note", FieldType::Object, "a note's body, timestamp, updated_at, contact_id (its first contact; contact_ids: all) and contact (that contact's properties, as `contact`), read at dispatch or by the import"),
                field("imported", FieldType::Boolean, "true when the event comes from an import of existing records"),
            ]
        };
        let mut kinds: Vec<crmbridge_mapping::EventKindSpec> = [
            "hubspot.contact.created",
            "hubspot.contact.changed",
            "hubspot.contact.deleted",
            "hubspot.note.created",
            "hubspot.note.changed",
            "hubspot.note.deleted",
        ]
        .iter()
        .map(|kind| crmbridge_mapping::EventKindSpec::new(*kind, fields()))
        .collect();
        kinds.push(crmbridge_mapping::EventKindSpec::new(
            "hubspot.event.rejected",
            vec![
                field("index", FieldType::Integer, "its place in the delivery"),
                field("reason", FieldType::String, "why it could not be read"),
                field("event", FieldType::Object, "the event as sent"),
            ],
        ));
        kinds
    }
}

/// `hubspot.contact.create`.
struct CreateContact(Arc<HubSpot>);

fn contact_fields() -> Vec<crmbridge_mapping::FieldSpec> {
    let mut fields: Vec<crmbridge_mapping::FieldSpec> = CONTACT
        .iter()
        .map(|(ours, theirs)| {
            let kind = match *ours {
                "email" => FieldType::Email,
                "phone" | "mobile" => FieldType::Phone,
                _ => FieldType::String,
            };
            field(ours, kind, &format!("HubSpot {theirs}"))
        })
        .collect();
    fields.push(field(
        "properties",
        FieldType::Object,
        "more properties by HubSpot internal name (values written as text)",
    ));
    fields
}

#[async_trait]
impl Action for CreateContact {
    fn spec(&self) -> ActionSpec {
        ActionSpec::new("hubspot.contact.create", ActionKind::Create, contact_fields()).with_output(
            vec![
                field("id", FieldType::String, "contact id"),
                field("existing", FieldType::Boolean, "the e-mail belonged to a contact already"),
            ],
        )
    }

    fn resend(&self, fields: &Map<String, Value>) -> Resend {
        if text(fields, "email").is_some() {
            Resend::Keyed
        } else {
            Resend::Unsafe
        }
    }

    async fn execute(
        &self,
        ctx: &CallContext<'_>,
        fields: &Map<String, Value>,
        _target: Option<&str>,
    ) -> Result<ActionOutput, ActionError> {
        let properties = contact_properties(fields)?;
        if !["email", "firstname", "lastname"]
            .iter()
            .any(|p| properties.contains_key(*p))
        {
            return Err(ActionError::field(
                "fields",
                "a HubSpot contact needs an email, a first_name or a last_name",
            ));
        }
        let hubspot = &self.0;
        if let Some(email) = properties.get("email").and_then(Value::as_str) {
            // Upsert on the e-mail: a repeated step (or a contact someone
            // made meanwhile) is the same contact.
            let body = json!({"inputs": [{"id": email, "idProperty": "email", "properties": properties}]});
            let response = hubspot
                .call(
                    ctx,
                    reqwest::Method::POST,
                    "/crm/v3/objects/contacts/batch/upsert",
                    &[],
                    Some(&body),
                    Idempotency::Idempotent,
                )
                .await?;
            let answer = HubSpot::json(&response)?;
            let Some(result) = answer["results"].get(0).cloned() else {
                let reason = answer["errors"][0]["message"]
                    .as_str()
                    .unwrap_or("HubSpot returned no result for the contact")
                    .to_owned();
                return Err(VendorError::Rejected {
                    vendor: "hubspot",
                    status: response.status,
                    message: reason,
                }
                .into());
            };
            let existing = result["new"] == json!(false);
            return Ok(output(result, &response, existing));
        }
        let body = json!({"properties": properties, "associations": []});
        let response = hubspot
            .call(
                ctx,
                reqwest::Method::POST,
                "/crm/v3/objects/contacts",
                &[],
                Some(&body),
                Idempotency::NotIdempotent,
            )
            .await?;
        if response.status == 409
            && let Some(id) = existing_id(&response)
        {
            return Ok(output(json!({"id": id}), &response, true));
        }
        Ok(output(HubSpot::json(&response)?, &response, false))
    }

    fn lookup(&self) -> Option<&dyn Lookup> {
        Some(self)
    }

    fn written(&self, fields: &Map<String, Value>, output: &ActionOutput) -> Option<Written> {
        let existing = output.record["existing"] == json!(true);
        contact_written(fields, output, !existing)
    }
}

#[async_trait]
impl Lookup for CreateContact {
    async fn find(
        &self,
        ctx: &CallContext<'_>,
        keys: &[LookupKey],
    ) -> Result<Option<String>, ActionError> {
        for key in keys {
            let Some(wanted) = key.value.as_str().map(str::trim).filter(|v| !v.is_empty()) else {
                continue;
            };
            let property = match key.field.as_str() {
                "email" => "email",
                "phone" => "phone",
                other => {
                    return Err(ActionError::field(
                        format!("dedupe.by.{other}"),
                        "HubSpot contacts are found by email or phone",
                    ));
                }
            };
            let found = self.0.search(ctx, property, wanted).await?;
            let hit = found.iter().find(|c| {
                let value = c["properties"][property].as_str().unwrap_or_default();
                if property == "email" {
                    value.eq_ignore_ascii_case(wanted)
                } else {
                    crate::support::same_phone(value, wanted)
                }
            });
            if let Some(contact) = hit {
                return Ok(Some(id_text(&contact["id"])));
            }
        }
        Ok(None)
    }
}

/// `hubspot.contact.update`.
struct UpdateContact(Arc<HubSpot>);

#[async_trait]
impl Action for UpdateContact {
    fn spec(&self) -> ActionSpec {
        ActionSpec::new("hubspot.contact.update", ActionKind::Update, contact_fields())
            .with_output(vec![field("id", FieldType::String, "contact id")])
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
        let id = target
            .filter(|t| !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()))
            .ok_or_else(|| ActionError::field("target", "a HubSpot contact id (digits)"))?;
        let properties = contact_properties(fields)?;
        let response = self
            .0
            .call(
                ctx,
                reqwest::Method::PATCH,
                &format!("/crm/v3/objects/contacts/{id}"),
                &[],
                Some(&json!({ "properties": properties })),
                Idempotency::Idempotent,
            )
            .await?;
        Ok(output(HubSpot::json(&response)?, &response, false))
    }

    fn written(&self, fields: &Map<String, Value>, output: &ActionOutput) -> Option<Written> {
        contact_written(fields, output, false)
    }
}

/// `hubspot.note.create`: a note, associated with a contact.
struct CreateNote(Arc<HubSpot>);

#[async_trait]
impl Action for CreateNote {
    fn spec(&self) -> ActionSpec {
        ActionSpec::new(
            "hubspot.note.create",
            ActionKind::Create,
            vec![
                field("body", FieldType::String, "the note (hs_note_body, up to 65,536 characters)"),
                field("timestamp", FieldType::DateTime, "when it happened (hs_timestamp; default now)"),
                field("contact_id", FieldType::String, "the contact it belongs to"),
                field("owner_id", FieldType::String, "hubspot_owner_id"),
            ],
        )
        .with_output(vec![field("id", FieldType::String, "note id")])
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
        only_known(fields, NOTE_FIELDS)?;
        let body = crate::support::required_text(fields, "body")?;
        if body.chars().count() > 65_536 {
            return Err(ActionError::field("fields.body", "HubSpot notes hold at most 65,536 characters"));
        }
        let timestamp = match text(fields, "timestamp") {
            Some(at) => chrono::DateTime::parse_from_rfc3339(&at)
                .map_err(|_| ActionError::field("fields.timestamp", format!("'{at}' is not an RFC 3339 date-time")))?
                .with_timezone(&chrono::Utc),
            None => chrono::Utc::now(),
        };
        let mut properties = json!({
            "hs_note_body": body,
            "hs_timestamp": timestamp.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
        if let Some(owner) = text(fields, "owner_id") {
            properties["hubspot_owner_id"] = Value::String(owner);
        }
        let associations = match text(fields, "contact_id") {
            Some(contact) => json!([{
                "to": {"id": contact},
                "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": NOTE_TO_CONTACT}],
            }]),
            None => json!([]),
        };
        let response = self
            .0
            .call(
                ctx,
                reqwest::Method::POST,
                "/crm/v3/objects/notes",
                &[],
                Some(&json!({"properties": properties, "associations": associations})),
                Idempotency::NotIdempotent,
            )
            .await?;
        Ok(output(HubSpot::json(&response)?, &response, false))
    }

    /// The note's creation, so HubSpot's report of it is known as ours.
    fn written(&self, _fields: &Map<String, Value>, output: &ActionOutput) -> Option<Written> {
        Some(Written {
            entity: "note".into(),
            id: output.id.clone(),
            created: true,
            ..Written::default()
        })
    }
}

/// HubSpot CRM: contacts (upsert on e-mail) and notes; OAuth 2.0.
pub fn vendor() -> Vendor {
    let hubspot = Arc::new(HubSpot);
    Vendor::new("hubspot", hubspot.clone())
        .webhooks(hubspot.clone())
        .events(hubspot.clone())
        .importer(hubspot.clone())
        .oauth(hubspot.clone())
        .account(hubspot.clone())
        .action(Arc::new(CreateContact(hubspot.clone())))
        .action(Arc::new(UpdateContact(hubspot.clone())))
        .action(Arc::new(CreateNote(hubspot)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn answer(status: u16, body: &str) -> VendorResponse {
        VendorResponse {
            status,
            headers: Default::default(),
            body: body.as_bytes().to_vec(),
            attempts: 1,
        }
    }

    fn signed(secret: &str, url: &str, body: &str, at_ms: i64) -> Vec<(String, String)> {
        use base64::Engine as _;
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("POST{url}{body}{at_ms}").as_bytes());
        let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        vec![
            ("x-hubspot-signature-v3".into(), signature),
            ("x-hubspot-request-timestamp".into(), at_ms.to_string()),
        ]
    }

    fn deliver(headers: &[(String, String)], url: &str, body: &str, secret: Option<&str>) -> Result<Vec<DecodedEvent>, DecodeError> {
        let settings = json!({});
        HubSpot.decode_webhook(
            ConnectionView { id: "c", settings: &settings, signing_secret: secret },
            &InboundRequest {
                method: "POST",
                query: &[],
                content_type: Some("application/json"),
                body: body.as_bytes(),
                headers,
                url: Some(url),
            },
        )
    }

    #[test]
    fn a_signature_without_a_timestamp_is_refused() {
        use sha2::Digest;
        let body = r#"[{"eventId":1,"subscriptionType":"contact.creation","objectId":1,"occurredAt":1}]"#;
        let v1 = hex::encode(sha2::Sha256::digest(format!("s3cret{body}").as_bytes()));
        let headers = vec![
            ("x-hubspot-signature".to_owned(), v1),
            ("x-hubspot-signature-version".to_owned(), "v1".to_owned()),
        ];
        let err = deliver(&headers, "https://gw.example/h", body, Some("s3cret")).unwrap_err();
        assert!(err.unauthenticated && err.field == "headers.x-hubspot-signature-v3", "{err}");
    }

    #[test]
    fn deliveries_are_verified_before_they_are_read() {
        let url = "https://gw.example/hooks/c1/tok";
        let body = r#"[{"eventId":1,"subscriptionType":"contact.creation","objectId":37700000001,"occurredAt":1714557600000,"portalId":1,"attemptNumber":0,"changeSource":"CRM_UI"},{"eventId":2,"objectId":"x"}]"#;
        let now = chrono::Utc::now().timestamp_millis();
        let events = deliver(&signed("s3cret", url, body, now), url, body, Some("s3cret")).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].kind, "hubspot.contact.created");
        assert_eq!(events[0].subject.id, "37700000001");
        // One bad event is reported, the other accepted.
        assert_eq!(events[1].kind, "hubspot.event.rejected");
        assert!(events[1].data["reason"].as_str().unwrap().starts_with("body[1].objectId"));
        for (headers, secret, field) in [
            (signed("other", url, body, now), Some("s3cret"), "headers.x-hubspot-signature-v3"),
            (signed("s3cret", url, body, now - 301_000), Some("s3cret"), "headers.x-hubspot-request-timestamp"),
            (signed("s3cret", "https://gw.example/hooks/c1/other", body, now), Some("s3cret"), "headers.x-hubspot-signature-v3"),
            (Vec::new(), Some("s3cret"), "headers.x-hubspot-signature-v3"),
            (signed("s3cret", url, body, now), None, "credentials.client_secret"),
        ] {
            let err = deliver(&headers, url, body, secret).unwrap_err();
            assert!(err.unauthenticated, "{err}");
            assert_eq!(err.field, field);
        }
        // A tampered body fails the signature before it is parsed.
        let err = deliver(&signed("s3cret", url, body, now), url, "[not json", Some("s3cret")).unwrap_err();
        assert!(err.unauthenticated);
    }

    #[test]
    fn a_conflict_names_the_existing_contact() {
        let conflict = answer(
            409,
            r#"{"status":"error","message":"Contact already exists. Existing ID: 37765128953","correlationId":"x","category":"CONFLICT"}"#,
        );
        assert_eq!(existing_id(&conflict).as_deref(), Some("37765128953"));
        assert_eq!(existing_id(&answer(409, r#"{"message":"conflict"}"#)), None);
        assert_eq!(
            existing_id(&answer(409, r#"{"identityProfile":{"vid":5},"message":"x"}"#)).as_deref(),
            Some("5")
        );
    }

    #[test]
    fn only_an_expired_or_invalid_token_is_refreshed() {
        assert!(HubSpot.token_refused(&answer(401, r#"{"category":"EXPIRED_AUTHENTICATION"}"#)));
        assert!(HubSpot.token_refused(&answer(401, r#"{"category":"INVALID_AUTHENTICATION"}"#)));
        assert!(!HubSpot.token_refused(&answer(401, r#"{"category":"MISSING_SCOPES"}"#)));
        assert!(!HubSpot.token_refused(&answer(403, r#"{"category":"MISSING_SCOPES"}"#)));
    }

    #[test]
    fn properties_are_text_and_unknown_fields_refused() {
        let fields = json!({"email": "a@b.c", "properties": {"score": 7, "vip": true}});
        let properties = contact_properties(fields.as_object().unwrap()).unwrap();
        assert_eq!(properties["score"], "7");
        assert_eq!(properties["vip"], "true");
        let bad = json!({"colour": "red"});
        assert!(contact_properties(bad.as_object().unwrap()).is_err());
        let vendor = vendor();
        let create = vendor.find_action("hubspot.contact.create").unwrap();
        assert_eq!(create.resend(json!({"email": "a@b.c"}).as_object().unwrap()), Resend::Keyed);
        assert_eq!(create.resend(json!({"first_name": "A"}).as_object().unwrap()), Resend::Unsafe);
    }
}
