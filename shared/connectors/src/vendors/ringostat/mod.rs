//! Ringostat (call tracking): calls reported by its "Webhooks 2.0".
//! Facts, with how sure we are of each and the public source:
//! `vendors/ringostat/API.md`.
//!
//! - Webhooks are set up by hand in Ringostat's cabinet, one per moment of
//!   a call (before it, when it is picked up, after it). Each names its
//!   URL, method (GET or POST), format (JSON or form) and **every
//!   parameter's key**: the connection's `keys` setting says which key
//!   carries what, with Ringostat's own names as the default.
//! - The moment is a static parameter of the URL (`?moment=before`,
//!   `answered`, `completed`), which Ringostat allows in the address.
//! - Ringostat signs nothing: the secret in the webhook URL is the only
//!   authentication (checked by the engine, as for every webhook).
//! - A delivery that fails is sent up to three more times: the event id is
//!   the call id and the moment, so repeats are one event.
//! - Values arrive as text in the format the user chose: numbers and dates
//!   are read leniently (several date shapes, in the connection's time
//!   zone), and a value that cannot be read is refused with its key named.
#![doc = include_str!("API.md")]

use std::sync::Arc;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use crmbridge_mapping::template::normalize_phone;
use crmbridge_mapping::{EventKindSpec, FieldType, Subject};
use serde_json::{Map, Value, json};

use crate::support::{digits, field, lenient_datetime, number, params_of};
use crate::{
    ConnectionView, DecodeError, DecodedEvent, EventSource, InboundRequest, SettingsError, Vendor,
    VendorSettings, WebhookSource,
};

/// Our name → Ringostat's own parameter name (the default key).
const PRESET: &[(&str, &str)] = &[
    ("call_id", "uniqueid"),
    ("call_date", "calldate"),
    ("caller", "caller"),
    ("destination", "dst"),
    ("call_type", "call_type"),
    ("disposition", "disposition"),
    ("duration", "duration"),
    ("billsec", "billsec"),
    ("waittime", "waittime"),
    ("recording", "recording"),
    ("employee_email", "employee_email"),
    ("employee_number", "employee_number"),
    ("employee_name", "employee_fio"),
    ("sip", "sip"),
    ("utm_source", "utm_source"),
    ("utm_medium", "utm_medium"),
    ("utm_campaign", "utm_campaign"),
    ("utm_term", "utm_term"),
    ("utm_content", "utm_content"),
    ("google_client_id", "client_id"),
    ("pool_name", "pool_name"),
];
const SETTINGS: &[&str] = &["keys", "timezone", "default_region"];
const MOMENTS: &[&str] = &["before", "answered", "completed"];
/// Dispositions of a call someone talked on.
const ANSWERED: &[&str] = &["ANSWERED", "PROPER", "REPEATED"];

pub const BEFORE: &str = "ringostat.call.before";
pub const ANSWERED_KIND: &str = "ringostat.call.answered";
pub const COMPLETED: &str = "ringostat.call.completed";
pub const MISSED: &str = "ringostat.call.missed";

#[derive(Debug, Clone, Copy, Default)]
pub struct Ringostat;

/// The keys a connection reads each value from: its `keys` setting over
/// the preset. A setting may give one key or a list of keys to try.
fn keys_of(settings: &Value) -> Vec<(&'static str, Vec<String>)> {
    PRESET
        .iter()
        .map(|(ours, theirs)| {
            let keys = match settings["keys"].get(*ours) {
                Some(Value::String(key)) => vec![key.clone()],
                Some(Value::Array(list)) => list
                    .iter()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect(),
                _ => vec![(*theirs).to_owned()],
            };
            (*ours, keys)
        })
        .collect()
}

fn zone_of(settings: &Value) -> Result<Tz, String> {
    let name = settings["timezone"].as_str().unwrap_or("Europe/Kiev");
    name.parse::<Tz>()
        .map_err(|_| format!("'{name}' is not an IANA time zone (e.g. Europe/Kiev)"))
}

fn event_fields() -> Vec<crmbridge_mapping::FieldSpec> {
    let mut fields = vec![
        field("call_id", FieldType::String, "Ringostat's call id (uniqueid)"),
        field("moment", FieldType::Enum(MOMENTS.iter().map(|m| (*m).to_owned()).collect()), "which webhook reported it"),
        field("call_date", FieldType::DateTime, "when the call started (UTC)"),
        field("call_date_local", FieldType::DateTime, "the same, in the connection's time zone (dates of tasks)"),
        field("client_phone", FieldType::Phone, "the client's number, E.164 when it could be read (the caller of an incoming call, the callee of an outgoing one)"),
        field("caller", FieldType::Phone, "the calling number, E.164 when it could be read"),
        field("destination", FieldType::String, "the number called (the tracking number, or the client on an outgoing call)"),
        field("call_type", FieldType::String, "in or out"),
        field("disposition", FieldType::String, "ANSWERED, NO ANSWER, BUSY, FAILED, …"),
        field("answered", FieldType::Boolean, "someone talked to the caller"),
        field("duration", FieldType::Integer, "seconds, ringing included"),
        field("billsec", FieldType::Integer, "seconds of conversation"),
        field("waittime", FieldType::Integer, "seconds of waiting"),
        field("recording", FieldType::String, "link to the recording"),
        field("employee", FieldType::String, "who answered: e-mail, else extension, else SIP login, else name"),
        field("employee_email", FieldType::Email, "the answering employee's e-mail"),
        field("employee_number", FieldType::String, "the answering employee's extension"),
        field("employee_name", FieldType::String, "the answering employee's name"),
        field("sip", FieldType::String, "the SIP account that answered"),
        field("google_client_id", FieldType::String, "Google Analytics client id"),
        field("pool_name", FieldType::String, "the number pool"),
        field("params", FieldType::Object, "every parameter as sent, by its key"),
    ];
    for name in ["utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content"] {
        fields.push(field(name, FieldType::String, name));
    }
    fields
}

impl VendorSettings for Ringostat {
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
        for name in map.keys() {
            if !SETTINGS.contains(&name.as_str()) {
                errors.push(SettingsError {
                    field: name.clone(),
                    message: format!("unknown setting; known: {}", SETTINGS.join(", ")),
                });
            }
        }
        match map.get("keys") {
            None => {}
            Some(Value::Object(keys)) => {
                for (ours, key) in keys {
                    if !PRESET.iter().any(|(name, _)| name == ours) {
                        errors.push(SettingsError {
                            field: format!("keys.{ours}"),
                            message: format!(
                                "not a value crmbridge reads; known: {}",
                                PRESET.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                            ),
                        });
                    }
                    let ok = match key {
                        Value::String(k) => !k.trim().is_empty(),
                        Value::Array(list) => {
                            !list.is_empty()
                                && list.iter().all(|k| k.as_str().is_some_and(|k| !k.trim().is_empty()))
                        }
                        _ => false,
                    };
                    if !ok {
                        errors.push(SettingsError {
                            field: format!("keys.{ours}"),
                            message: "must be the parameter's key, or a list of keys".into(),
                        });
                    }
                }
            }
            Some(_) => errors.push(SettingsError {
                field: "keys".into(),
                message: "must map our names to the keys chosen in Ringostat".into(),
            }),
        }
        if map.contains_key("timezone")
            && let Err(message) = zone_of(settings)
        {
            errors.push(SettingsError {
                field: "timezone".into(),
                message,
            });
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

impl WebhookSource for Ringostat {
    /// Ringostat re-sends anything but a 2xx; 200 is what its own
    /// integrations answer.
    fn ack_status(&self) -> u16 {
        200
    }

    fn decode_webhook(
        &self,
        connection: ConnectionView<'_>,
        request: &InboundRequest<'_>,
    ) -> Result<Vec<DecodedEvent>, DecodeError> {
        let settings = connection.settings;
        let params = params_of(request)?;
        let moment = params
            .iter()
            .find(|(k, _)| k == "moment")
            .map(|(_, v)| v.trim().to_ascii_lowercase())
            .ok_or_else(|| {
                DecodeError::new(
                    "query.moment",
                    "add ?moment=before, answered or completed to this webhook's URL in Ringostat, one per webhook",
                )
            })?;
        if !MOMENTS.contains(&moment.as_str()) {
            return Err(DecodeError::new(
                "query.moment",
                format!("'{moment}' is not one of before, answered, completed"),
            ));
        }
        let keys = keys_of(settings);
        // The first non-empty value among a name's keys, with the key it
        // came under (errors name the key the user chose).
        let get = |ours: &str| -> Option<(String, String)> {
            let candidates = keys.iter().find(|(name, _)| *name == ours)?;
            candidates.1.iter().find_map(|key| {
                params
                    .iter()
                    .find(|(k, v)| k == key && !v.trim().is_empty() && v != "null")
                    .map(|(k, v)| (k.clone(), v.trim().to_owned()))
            })
        };
        let key_for = |ours: &str| -> String {
            keys.iter()
                .find(|(name, _)| *name == ours)
                .and_then(|(_, k)| k.first().cloned())
                .unwrap_or_else(|| ours.to_owned())
        };
        let (_, call_id) = get("call_id").ok_or_else(|| {
            DecodeError::new(
                format!("params.{}", key_for("call_id")),
                "the call id is missing: every webhook must send Ringostat's call id (uniqueid)",
            )
        })?;
        let region = settings["default_region"].as_str().unwrap_or("UA").to_owned();
        let call_type = get("call_type")
            .map(|(_, v)| v.to_ascii_lowercase())
            .unwrap_or_else(|| "in".into());
        let outgoing = matches!(call_type.as_str(), "out" | "outbound" | "outgoing");
        let phone_name = if outgoing { "destination" } else { "caller" };
        let (phone_key, raw_phone) = get(phone_name).ok_or_else(|| {
            DecodeError::new(
                format!("params.{}", key_for(phone_name)),
                "the client's number is missing",
            )
        })?;
        let national = digits(&raw_phone);
        if national.len() < 5 {
            return Err(DecodeError::new(
                format!("params.{phone_key}"),
                format!("'{raw_phone}' is not a phone number"),
            ));
        }
        let client_phone =
            normalize_phone(&raw_phone, Some(&region)).unwrap_or_else(|| format!("+{national}"));
        let zone = zone_of(settings).map_err(|m| DecodeError::new("settings.timezone", m))?;
        let call_date = match get("call_date") {
            None => None,
            Some((key, text)) => Some(parse_date(&text, zone).ok_or_else(|| {
                DecodeError::new(
                    format!("params.{key}"),
                    format!("'{text}' is not a date and time this connector can read (e.g. 2026-04-25 16:07:14)"),
                )
            })?),
        };
        let mut data = Map::new();
        macro_rules! put {
            ($name:expr, $value:expr $(,)?) => {
                data.insert(($name).to_owned(), $value)
            };
        }
        put!("call_id", json!(call_id));
        put!("moment", json!(moment));
        put!("call_type", json!(if outgoing { "out" } else { "in" }));
        put!("client_phone", json!(client_phone));
        if let Some(at) = call_date {
            put!("call_date", json!(at.to_rfc3339()));
            put!("call_date_local", json!(at.with_timezone(&zone).to_rfc3339()));
        }
        for name in ["caller", "destination"] {
            if let Some((_, raw)) = get(name) {
                let value = normalize_phone(&raw, Some(&region)).unwrap_or(raw);
                put!(name, json!(value));
            }
        }
        for name in ["duration", "billsec", "waittime"] {
            if let Some((key, raw)) = get(name) {
                let secs = number(&Value::String(raw.clone()))
                    .filter(|n| *n >= 0.0)
                    .ok_or_else(|| {
                        DecodeError::new(
                            format!("params.{key}"),
                            format!("'{raw}' is not a number of seconds"),
                        )
                    })?;
                put!(name, json!(secs as u64));
            }
        }
        for name in [
            "recording",
            "employee_email",
            "employee_number",
            "employee_name",
            "sip",
            "utm_source",
            "utm_medium",
            "utm_campaign",
            "utm_term",
            "utm_content",
            "google_client_id",
            "pool_name",
        ] {
            if let Some((_, value)) = get(name) {
                put!(name, json!(value));
            }
        }
        let disposition = get("disposition").map(|(_, v)| v.to_ascii_uppercase());
        let employee = ["employee_email", "employee_number", "sip", "employee_name"]
            .iter()
            .find_map(|name| get(name).map(|(_, v)| v));
        let answered = match &disposition {
            Some(d) => ANSWERED.contains(&d.as_str()),
            None => {
                moment == "answered"
                    || data.get("billsec").and_then(Value::as_u64).is_some_and(|s| s > 0)
            }
        };
        put!("answered", json!(answered));
        if let Some(d) = disposition {
            put!("disposition", json!(d));
        }
        if let Some(employee) = employee {
            put!("employee", json!(employee.to_lowercase()));
        }
        put!(
            "params",
            Value::Object(
                params
                    .iter()
                    .filter(|(k, _)| k != "moment")
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            ),
        );
        let kind = match moment.as_str() {
            "before" => BEFORE,
            "answered" => ANSWERED_KIND,
            _ if answered => COMPLETED,
            _ => MISSED,
        };
        Ok(vec![DecodedEvent {
            // Ringostat re-sends a failed delivery: one call, one moment,
            // one event.
            source_id: Some(format!("{call_id}:{moment}")),
            kind: kind.to_owned(),
            subject: Subject {
                kind: "caller".into(),
                id: national[national.len().saturating_sub(10)..].to_owned(),
            },
            occurred_at: call_date,
            observation: None,
            data: Value::Object(data),
        }])
    }
}

/// A call's date: RFC 3339 as is, anything else in the connection's zone.
fn parse_date(text: &str, zone: Tz) -> Option<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.with_timezone(&Utc));
    }
    let naive: NaiveDateTime = lenient_datetime(text)?;
    // Unix seconds are UTC already.
    if text.chars().all(|c| c.is_ascii_digit()) {
        return Some(naive.and_utc());
    }
    // A time the clocks skipped (spring forward) is read an hour later,
    // as the wall clock would have shown it.
    zone.from_local_datetime(&naive)
        .earliest()
        .or_else(|| {
            zone.from_local_datetime(&(naive + chrono::Duration::hours(1)))
                .earliest()
        })
        .map(|at| at.with_timezone(&Utc))
}

impl EventSource for Ringostat {
    fn event_kinds(&self) -> Vec<EventKindSpec> {
        [
            (BEFORE, "before the call: the client is calling, nobody has answered yet"),
            (ANSWERED_KIND, "when taking the call: an employee picked up"),
            (COMPLETED, "after the call, when it was answered"),
            (MISSED, "after the call, when nobody answered"),
        ]
        .into_iter()
        .map(|(kind, description)| {
            let mut spec = EventKindSpec::new(kind, event_fields());
            spec.description = description.to_owned();
            spec
        })
        .collect()
    }
}

/// Ringostat: calls reported by webhooks, one per moment of a call.
pub fn vendor() -> Vendor {
    let ringostat = Arc::new(Ringostat);
    Vendor::new("ringostat", ringostat.clone())
        .webhooks(ringostat.clone())
        .events(ringostat)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn decode(settings: Value, query: &[(&str, &str)], body: Value) -> Result<DecodedEvent, DecodeError> {
        let query: Vec<(String, String)> =
            query.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        let bytes = body.to_string().into_bytes();
        let request = InboundRequest {
            method: "POST",
            query: &query,
            content_type: Some("application/json"),
            body: &bytes,
            headers: &[],
            url: None,
        };
        Ringostat
            .decode_webhook(
                ConnectionView {
                    id: "c",
                    settings: &settings,
                    signing_secret: None,
                },
                &request,
            )
            .map(|mut events| events.remove(0))
    }

    fn call() -> Value {
        json!({"uniqueid": "ua-1714061234.56789", "calldate": "2026-04-25 16:07:14",
            "call_type": "in", "caller": "380671234567", "dst": "380441234567",
            "disposition": "ANSWERED", "duration": "95", "billsec": "81",
            "employee_email": "Anna@Example.com", "recording": "https://r.example/1.mp3",
            "utm_source": "google", "client_id": "123.456", "custom_thing": "x"})
    }

    #[test]
    fn an_answered_call_with_ringostats_own_keys() {
        let event = decode(json!({}), &[("moment", "completed")], call()).unwrap();
        assert_eq!(event.kind, COMPLETED);
        assert_eq!(event.source_id.as_deref(), Some("ua-1714061234.56789:completed"));
        assert_eq!(event.subject.id, "0671234567");
        let data = &event.data;
        assert_eq!(data["client_phone"], "+380671234567");
        assert_eq!(data["billsec"], 81);
        assert_eq!(data["employee"], "anna@example.com");
        assert_eq!(data["answered"], true);
        // Kyiv is UTC+3 in April.
        assert_eq!(data["call_date"], "2026-04-25T13:07:14+00:00");
        assert_eq!(data["call_date_local"], "2026-04-25T16:07:14+03:00");
        assert_eq!(data["google_client_id"], "123.456");
        assert_eq!(data["params"]["custom_thing"], "x");
    }

    #[test]
    fn missed_calls_and_user_chosen_keys() {
        let settings = json!({"keys": {"caller": ["phone", "caller_id"], "call_id": "call"}, "timezone": "UTC"});
        let event = decode(
            settings,
            &[("moment", "completed")],
            json!({"call": "c-1", "caller_id": "+380 67 123 45 67", "disposition": "NO ANSWER", "calldate": "25.04.2026 16:07"}),
        )
        .unwrap();
        assert_eq!(event.kind, MISSED);
        assert_eq!(event.data["client_phone"], "+380671234567");
        assert_eq!(event.data["call_date"], "2026-04-25T16:07:00+00:00");
    }

    #[test]
    fn a_time_the_clocks_skipped_is_read_an_hour_later() {
        let mut body = call();
        // Kyiv went from 03:00 to 04:00 on 2026-03-29.
        body["calldate"] = json!("2026-03-29 03:30:00");
        let event = decode(json!({}), &[("moment", "completed")], body).unwrap();
        assert_eq!(event.data["call_date"], "2026-03-29T01:30:00+00:00");
    }

    #[test]
    fn bad_deliveries_name_the_key() {
        let no_moment = decode(json!({}), &[], call()).unwrap_err();
        assert_eq!(no_moment.field, "query.moment");
        let mut body = call();
        body.as_object_mut().unwrap().remove("caller");
        let err = decode(json!({}), &[("moment", "answered")], body).unwrap_err();
        assert_eq!(err.field, "params.caller");
        let mut body = call();
        body["calldate"] = json!("the 5th of May");
        let err = decode(json!({}), &[("moment", "answered")], body).unwrap_err();
        assert_eq!(err.field, "params.calldate");
        let mut body = call();
        body["billsec"] = json!("lots");
        let err = decode(json!({}), &[("moment", "completed")], body).unwrap_err();
        assert_eq!(err.field, "params.billsec");
        let mut body = call();
        body.as_object_mut().unwrap().remove("uniqueid");
        assert_eq!(decode(json!({}), &[("moment", "completed")], body).unwrap_err().field, "params.uniqueid");
    }

    #[test]
    fn settings_are_checked() {
        assert!(Ringostat.validate_settings(&json!({"keys": {"caller": "phone"}}), false).is_ok());
        let errors = Ringostat
            .validate_settings(&json!({"keys": {"colour": "x", "caller": ""}, "timezone": "Mars/Base"}), false)
            .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["keys.caller", "keys.colour", "timezone"]);
    }
}
