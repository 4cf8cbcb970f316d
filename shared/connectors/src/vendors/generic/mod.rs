//! The generic JSON connector: any service that can POST JSON (or a form, or
//! a GET with a query string) to a URL.
//!
//! Settings (all optional):
//!
//! | setting | meaning | default |
//! |---|---|---|
//! | `event_id_pointer` | JSON pointer to the source's id for the change, e.g. `/id` | none: the event id is a hash of the body |
//! | `kind` | the event kind after `generic.` | `webhook.received` |
//! | `kind_pointer` | JSON pointer to the kind (overrides `kind`) | none |
//! | `subject_type` | what the event is about | `record` |
//! | `subject_id_pointer` | JSON pointer to the subject's id | the source id, else the event hash |
//! | `occurred_at_pointer` | JSON pointer to an RFC 3339 time | none: the time it was received |
//! | `signature` | `standard_webhooks`: every delivery must carry a valid [Standard Webhooks](https://www.standardwebhooks.com) signature made with the connection's credential `signing_secret` (`whsec_…`) | none: the secret URL token alone |
//!
//! A JSON array body is a batch: one event per element. A pointer that is
//! set but finds nothing is a 400 naming the pointer, never a silent
//! fallback: a misconfigured sender should learn at once.
#![doc = include_str!("API.md")]

use chrono::{DateTime, Utc};
use crmbridge_mapping::Subject;
use serde_json::{Map, Value};

use crate::standard_webhooks::{self, SigningSecret};
use crate::{
    ConnectionView, DecodeError, DecodedEvent, InboundRequest, SettingsError, VendorSettings,
    WebhookSource,
};

#[derive(Debug, Clone, Copy, Default)]
pub struct GenericJson;

const POINTERS: [&str; 4] = [
    "event_id_pointer",
    "kind_pointer",
    "subject_id_pointer",
    "occurred_at_pointer",
];
const KNOWN: [&str; 7] = [
    "event_id_pointer",
    "kind",
    "kind_pointer",
    "subject_type",
    "subject_id_pointer",
    "occurred_at_pointer",
    "signature",
];
/// The one signature scheme a generic connection can require.
const STANDARD_WEBHOOKS: &str = "standard_webhooks";

/// Kind segments are lowercase words so they can be matched by triggers and
/// EventBridge patterns without escaping.
fn valid_kind(kind: &str) -> bool {
    !kind.is_empty()
        && kind.len() <= 100
        && kind.split('.').all(|seg| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

fn setting<'a>(settings: &'a Value, name: &str) -> Option<&'a str> {
    settings.get(name).and_then(Value::as_str)
}

/// A pointer's target as the text of an id (strings as-is, numbers printed).
fn id_at(body: &Value, pointer: &str, setting: &str) -> Result<String, DecodeError> {
    match body.pointer(pointer) {
        Some(Value::String(text)) if !text.is_empty() => Ok(text.clone()),
        Some(Value::Number(number)) => Ok(number.to_string()),
        Some(other) => Err(DecodeError::new(
            format!("body{pointer}"),
            format!("expected a non-empty string or number ({setting}), found {other}"),
        )),
        None => Err(DecodeError::new(
            format!("body{pointer}"),
            format!("missing; the connection's {setting} points here"),
        )),
    }
}

fn looks_like_json(body: &[u8]) -> bool {
    matches!(
        body.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    ) && serde_json::from_slice::<Value>(body).is_ok()
}

fn parse_body(request: &InboundRequest<'_>) -> Result<Value, DecodeError> {
    let is_form = request
        .content_type
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    if request.method.eq_ignore_ascii_case("GET")
        || (request.body.is_empty() && !request.query.is_empty())
    {
        let fields: Map<String, Value> = request
            .query
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        return Ok(Value::Object(fields));
    }
    // Senders often label JSON as a form (curl -d does); a body that parses
    // as JSON is JSON whatever its label says.
    if is_form && !looks_like_json(request.body) {
        let fields: Map<String, Value> = form_urlencoded::parse(request.body)
            .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
            .collect();
        return Ok(Value::Object(fields));
    }
    if request.body.is_empty() {
        return Err(DecodeError::new(
            "body",
            "empty; expected a JSON object or array",
        ));
    }
    serde_json::from_slice(request.body)
        .map_err(|err| DecodeError::new("body", format!("not valid JSON: {err}")))
}

impl GenericJson {
    fn decode_one(
        &self,
        settings: &Value,
        body: Value,
        at: &str,
    ) -> Result<DecodedEvent, DecodeError> {
        let with_path = |mut err: DecodeError| {
            err.field = err.field.replacen("body", &format!("body{at}"), 1);
            err
        };
        if !body.is_object() {
            return Err(DecodeError::new(
                format!("body{at}"),
                "expected a JSON object",
            ));
        }
        let source_id = setting(settings, "event_id_pointer")
            .map(|p| id_at(&body, p, "event_id_pointer"))
            .transpose()
            .map_err(with_path)?;
        let kind = match setting(settings, "kind_pointer") {
            Some(pointer) => {
                let kind = id_at(&body, pointer, "kind_pointer").map_err(with_path)?;
                if !valid_kind(&kind) {
                    return Err(DecodeError::new(
                        format!("body{at}{pointer}"),
                        "a kind is dot-separated lowercase words (a-z, 0-9, _)",
                    ));
                }
                kind
            }
            None => setting(settings, "kind")
                .unwrap_or("webhook.received")
                .to_owned(),
        };
        let subject_id = match setting(settings, "subject_id_pointer") {
            Some(pointer) => Some(id_at(&body, pointer, "subject_id_pointer").map_err(with_path)?),
            None => source_id.clone(),
        };
        let occurred_at = match setting(settings, "occurred_at_pointer") {
            Some(pointer) => {
                let text = id_at(&body, pointer, "occurred_at_pointer").map_err(with_path)?;
                Some(
                    DateTime::parse_from_rfc3339(&text)
                        .map(|t| t.with_timezone(&Utc))
                        .map_err(|err| {
                            DecodeError::new(
                                format!("body{at}{pointer}"),
                                format!("not an RFC 3339 time: {err}"),
                            )
                        })?,
                )
            }
            None => None,
        };
        Ok(DecodedEvent {
            source_id,
            kind: format!("generic.{kind}"),
            subject: Subject {
                kind: setting(settings, "subject_type")
                    .unwrap_or("record")
                    .to_owned(),
                // Empty means "the engine fills in the event id".
                id: subject_id.unwrap_or_default(),
            },
            occurred_at,
            observation: None,
            data: body,
        })
    }
}

/// Generic JSON: webhooks in, nothing out. Its kinds are whatever the
/// sender's settings say, so none are declared; any `generic.*` trigger is
/// accepted.
pub fn vendor() -> crate::Vendor {
    let generic = std::sync::Arc::new(GenericJson);
    crate::Vendor::new("generic", generic.clone()).webhooks(generic)
}

impl VendorSettings for GenericJson {
    /// A required signature needs a signing secret in the standard form.
    fn validate_credentials(
        &self,
        settings: &Value,
        credentials: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), Vec<SettingsError>> {
        if setting(settings, "signature") != Some(STANDARD_WEBHOOKS) {
            return Ok(());
        }
        let problem = match credentials.get("signing_secret") {
            None => "settings.signature requires it (whsec_ and base64, as Standard Webhooks senders give it)".to_owned(),
            Some(secret) => match SigningSecret::parse(secret) {
                Ok(_) => return Ok(()),
                Err(err) => err.message,
            },
        };
        Err(vec![SettingsError {
            field: "signing_secret".into(),
            message: problem,
        }])
    }

    fn validate_settings(
        &self,
        settings: &Value,
        _allow_any_base_url: bool,
    ) -> Result<(), Vec<SettingsError>> {
        let mut errors = Vec::new();
        let Some(map) = settings.as_object() else {
            return Err(vec![SettingsError {
                field: String::new(),
                message: "settings must be a JSON object".into(),
            }]);
        };
        for (name, value) in map {
            if name == "default_region" {
                continue;
            }
            if !KNOWN.contains(&name.as_str()) {
                errors.push(SettingsError {
                    field: name.clone(),
                    message: format!("unknown setting; known: {}", KNOWN.join(", ")),
                });
                continue;
            }
            let Some(text) = value.as_str() else {
                errors.push(SettingsError {
                    field: name.clone(),
                    message: "must be a string".into(),
                });
                continue;
            };
            if POINTERS.contains(&name.as_str()) && !text.starts_with('/') {
                errors.push(SettingsError {
                    field: name.clone(),
                    message: "a JSON pointer starts with '/', e.g. /id".into(),
                });
            }
            if name == "signature" && text != STANDARD_WEBHOOKS {
                errors.push(SettingsError {
                    field: name.clone(),
                    message: format!("the only scheme is {STANDARD_WEBHOOKS}"),
                });
            }
            if name == "kind" && !valid_kind(text) {
                errors.push(SettingsError {
                    field: name.clone(),
                    message: "a kind is dot-separated lowercase words (a-z, 0-9, _)".into(),
                });
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

}

/// With `signature: standard_webhooks`, a delivery without a valid, recent
/// signature is refused before its body is read.
fn verify_signature(
    connection: &ConnectionView<'_>,
    request: &InboundRequest<'_>,
    now: i64,
) -> Result<(), DecodeError> {
    if setting(connection.settings, "signature") != Some(STANDARD_WEBHOOKS) {
        return Ok(());
    }
    let secret = connection.signing_secret.ok_or_else(|| {
        DecodeError::unauthenticated(
            "credentials.signing_secret",
            "this connection requires Standard Webhooks signatures but has no signing_secret",
        )
    })?;
    let secret = SigningSecret::parse(secret).map_err(|err| {
        DecodeError::unauthenticated("credentials.signing_secret", err.message)
    })?;
    standard_webhooks::verify(&secret, |name| request.header(name), request.body, now)
        .map_err(|err| DecodeError::unauthenticated(err.field, err.message))
}

impl WebhookSource for GenericJson {
    fn signing_credential(&self) -> Option<&'static str> {
        Some("signing_secret")
    }

    fn decode_webhook(
        &self,
        connection: ConnectionView<'_>,
        request: &InboundRequest<'_>,
    ) -> Result<Vec<DecodedEvent>, DecodeError> {
        verify_signature(&connection, request, Utc::now().timestamp())?;
        match parse_body(request)? {
            Value::Array(items) => {
                if items.is_empty() {
                    return Err(DecodeError::new("body", "an empty batch"));
                }
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| self.decode_one(connection.settings, item, &format!("[{i}]")))
                    .collect()
            }
            body => {
                let mut event = self.decode_one(connection.settings, body, "")?;
                // A signed message names itself: two messages with the same
                // body are two events, a redelivery of one is one.
                if event.source_id.is_none()
                    && setting(connection.settings, "signature") == Some(STANDARD_WEBHOOKS)
                {
                    event.source_id = request.header("webhook-id").map(|id| id.trim().to_owned());
                }
                Ok(vec![event])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn decode(
        settings: Value,
        method: &str,
        ct: Option<&str>,
        body: &[u8],
        query: &[(String, String)],
    ) -> Result<Vec<DecodedEvent>, DecodeError> {
        GenericJson.decode_webhook(
            ConnectionView {
                id: "c1",
                settings: &settings,
                signing_secret: None,
            },
            &InboundRequest {
                method,
                query,
                content_type: ct,
                body,
                headers: &[],
                url: None,
            },
        )
    }

    #[test]
    fn json_object_with_id_pointer() {
        let events = decode(
            json!({"event_id_pointer": "/id", "kind": "order.created"}),
            "POST",
            Some("application/json"),
            br#"{"id": 42, "sum": 10}"#,
            &[],
        )
        .unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].source_id.as_deref(), Some("42"));
        assert_eq!(events[0].kind, "generic.order.created");
        assert_eq!(events[0].subject.id, "42");
        assert_eq!(events[0].data, json!({"id": 42, "sum": 10}));
    }

    #[test]
    fn without_pointer_the_id_comes_from_the_payload() {
        let events = decode(json!({}), "POST", None, br#"{"a": 1}"#, &[]).unwrap();
        assert_eq!(events[0].source_id, None);
        assert_eq!(events[0].kind, "generic.webhook.received");
    }

    #[test]
    fn missing_pointer_target_names_the_path() {
        let err = decode(
            json!({"event_id_pointer": "/id"}),
            "POST",
            None,
            br#"{"x": 1}"#,
            &[],
        )
        .unwrap_err();
        assert_eq!(err.field, "body/id");
        let err = decode(
            json!({"event_id_pointer": "/id"}),
            "POST",
            None,
            br#"[{"id": 1}, {"x": 1}]"#,
            &[],
        )
        .unwrap_err();
        assert_eq!(err.field, "body[1]/id");
    }

    #[test]
    fn invalid_json_is_named() {
        let err = decode(json!({}), "POST", None, b"{nope", &[]).unwrap_err();
        assert_eq!(err.field, "body");
        assert!(err.message.starts_with("not valid JSON"), "{}", err.message);
        assert_eq!(
            decode(json!({}), "POST", None, b"", &[]).unwrap_err().field,
            "body"
        );
        assert_eq!(
            decode(json!({}), "POST", None, b"[]", &[])
                .unwrap_err()
                .field,
            "body"
        );
        assert_eq!(
            decode(json!({}), "POST", None, b"17", &[])
                .unwrap_err()
                .field,
            "body"
        );
    }

    #[test]
    fn get_and_form_become_string_fields() {
        let query = vec![("callerphone".to_owned(), "79123456789".to_owned())];
        let events = decode(json!({}), "GET", None, b"", &query).unwrap();
        assert_eq!(events[0].data, json!({"callerphone": "79123456789"}));
        let events = decode(
            json!({}),
            "POST",
            Some("application/x-www-form-urlencoded"),
            b"a=1&b=%D0%B4",
            &[],
        )
        .unwrap();
        assert_eq!(events[0].data, json!({"a": "1", "b": "д"}));
        let events = decode(
            json!({}),
            "POST",
            Some("application/x-www-form-urlencoded"),
            br#"{"id": 1}"#,
            &[],
        )
        .unwrap();
        assert_eq!(events[0].data, json!({"id": 1}));
    }

    #[test]
    fn batch_gives_one_event_per_element() {
        let events = decode(
            json!({"event_id_pointer": "/id"}),
            "POST",
            None,
            br#"[{"id": "a"}, {"id": "b"}]"#,
            &[],
        )
        .unwrap();
        let ids: Vec<_> = events
            .iter()
            .map(|e| e.source_id.clone().unwrap())
            .collect();
        assert_eq!(ids, ["a", "b"]);
    }

    #[test]
    fn kind_pointer_and_time_pointer() {
        let settings = json!({"kind_pointer": "/type", "occurred_at_pointer": "/at"});
        let events = decode(
            settings.clone(),
            "POST",
            None,
            br#"{"type": "deal.won", "at": "2026-01-02T03:04:05+03:00"}"#,
            &[],
        )
        .unwrap();
        assert_eq!(events[0].kind, "generic.deal.won");
        assert_eq!(
            events[0].occurred_at.unwrap().to_rfc3339(),
            "2026-01-02T00:04:05+00:00"
        );
        let err = decode(
            settings.clone(),
            "POST",
            None,
            br#"{"type": "Deal Won", "at": "2026-01-02T03:04:05Z"}"#,
            &[],
        )
        .unwrap_err();
        assert_eq!(err.field, "body/type");
        let err = decode(
            settings,
            "POST",
            None,
            br#"{"type": "x", "at": "yesterday"}"#,
            &[],
        )
        .unwrap_err();
        assert_eq!(err.field, "body/at");
    }

    #[test]
    fn settings_are_validated_all_at_once() {
        let errors = GenericJson
            .validate_settings(&json!({"event_id_pointer": "id", "kind": "Bad Kind", "colour": "red", "subject_type": 3}), false)
            .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["colour", "event_id_pointer", "kind", "subject_type"]
        );
        assert!(
            GenericJson
                .validate_settings(
                    &json!({"event_id_pointer": "/id", "kind": "call.completed"}),
                    false
                )
                .is_ok()
        );
        assert!(GenericJson.validate_settings(&json!([]), false).is_err());
    }

    /// With `signature: standard_webhooks`, a delivery needs a valid,
    /// recent signature by the connection's secret; without the setting
    /// none is asked for.
    #[test]
    fn a_required_signature_is_checked_before_the_body() {
        let secret = SigningSecret::generate();
        let settings = json!({"signature": "standard_webhooks", "event_id_pointer": "/id"});
        let body = br#"{"id": 7}"#;
        let now = Utc::now().timestamp();
        let signed = |timestamp: i64, key: &str| -> Vec<(String, String)> {
            standard_webhooks::signature_headers(&[SigningSecret::parse(key).unwrap()], "msg_1", timestamp, body)
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect()
        };
        let decode_with = |settings: &Value, headers: &[(String, String)], secret: Option<&str>| {
            GenericJson.decode_webhook(
                ConnectionView { id: "c1", settings, signing_secret: secret },
                &InboundRequest {
                    method: "POST",
                    query: &[],
                    content_type: Some("application/json"),
                    body,
                    headers,
                    url: None,
                },
            )
        };
        let events = decode_with(&settings, &signed(now, &secret), Some(&secret)).unwrap();
        assert_eq!(events[0].source_id.as_deref(), Some("7"));
        let other = SigningSecret::generate();
        for (headers, key, field) in [
            (signed(now, &other), Some(secret.as_str()), "headers.webhook-signature"),
            (signed(now - 3600, &secret), Some(secret.as_str()), "headers.webhook-timestamp"),
            (Vec::new(), Some(secret.as_str()), "headers.webhook-id"),
            (signed(now, &secret), None, "credentials.signing_secret"),
        ] {
            let err = decode_with(&settings, &headers, key).unwrap_err();
            assert!(err.unauthenticated, "{err:?}");
            assert_eq!(err.field, field);
        }
        // Not required: no signature asked for.
        assert!(decode_with(&json!({}), &[], None).is_ok());
        let errors = GenericJson
            .validate_settings(&json!({"signature": "hmac"}), false)
            .unwrap_err();
        assert_eq!(errors[0].field, "signature");
    }
}
