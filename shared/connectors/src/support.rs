//! Small pieces every vendor connector needs: base-URL policy (no SSRF),
//! reading settings and credentials, phone digits, field access.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crmbridge_mapping::{FieldSpec, FieldType};

use crate::client::VendorPolicy;
use crate::{ActionError, ActionOutput, Resend, Sent, SettingsError};

/// Checks a base URL a user configured. Outside test mode it must be HTTPS
/// on one of the vendor's domains, so a connection can never be used to
/// make crmbridge call an address of the user's choosing.
pub(crate) fn check_base_url(
    url: &str,
    allowed_suffixes: &[&str],
    allow_any: bool,
) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|err| format!("not a URL: {err}"))?;
    if allow_any {
        return match parsed.scheme() {
            "http" | "https" => Ok(()),
            other => Err(format!("scheme {other} is not HTTP")),
        };
    }
    if parsed.scheme() != "https" {
        return Err("must be an https:// URL".into());
    }
    if parsed.username() != "" || parsed.password().is_some() || parsed.port().is_some() {
        return Err("must not carry credentials or a port".into());
    }
    let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
    let allowed = allowed_suffixes.iter().any(|suffix| {
        host == suffix.trim_start_matches('.')
            || (suffix.starts_with('.') && host.ends_with(suffix))
    });
    if allowed {
        Ok(())
    } else {
        Err(format!(
            "host {host} is not one of the vendor's ({})",
            allowed_suffixes.join(", ")
        ))
    }
}

/// The base URL of a connection: its `base_url` setting (checked) or the
/// vendor default.
pub(crate) fn base_url(
    settings: &Value,
    default: &str,
    allowed_suffixes: &[&str],
    allow_any: bool,
) -> Result<String, ActionError> {
    let url = settings
        .get("base_url")
        .and_then(Value::as_str)
        .unwrap_or(default);
    if url.is_empty() {
        return Err(ActionError::Config(
            "settings.base_url is required for this connection".into(),
        ));
    }
    check_base_url(url, allowed_suffixes, allow_any)
        .map_err(|message| ActionError::Config(format!("settings.base_url: {message}")))?;
    Ok(url.trim_end_matches('/').to_owned())
}

/// `address` with `query` appended (form-encoded, in order); no `?` when
/// there is nothing to append.
pub(crate) fn url_with_query(
    address: &str,
    query: &[(&str, String)],
) -> Result<String, ActionError> {
    let mut url =
        url::Url::parse(address).map_err(|err| ActionError::Config(format!("base URL: {err}")))?;
    if !query.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for (name, value) in query {
            pairs.append_pair(name, value);
        }
    }
    Ok(url.to_string())
}

/// Validates the settings every vendor connector shares, plus its own.
pub(crate) fn validate_known_settings(
    settings: &Value,
    known: &[&str],
    base_default: Option<&str>,
    allowed_suffixes: &[&str],
    allow_any: bool,
) -> Result<(), Vec<SettingsError>> {
    let mut errors = Vec::new();
    let Some(map) = settings.as_object() else {
        return Err(vec![SettingsError {
            field: String::new(),
            message: "settings must be a JSON object".into(),
        }]);
    };
    for (name, value) in map {
        if name == "base_url" {
            match value.as_str() {
                Some(url) => {
                    if let Err(message) = check_base_url(url, allowed_suffixes, allow_any) {
                        errors.push(SettingsError {
                            field: name.clone(),
                            message,
                        });
                    }
                }
                None => errors.push(SettingsError {
                    field: name.clone(),
                    message: "must be a string".into(),
                }),
            }
        } else if name == "timeout_ms" {
            if !value
                .as_u64()
                .is_some_and(|ms| (100..=60_000).contains(&ms))
            {
                errors.push(SettingsError {
                    field: name.clone(),
                    message: "must be a whole number of milliseconds from 100 to 60000".into(),
                });
            }
        } else if name != "default_region" && !known.contains(&name.as_str()) {
            errors.push(SettingsError {
                field: name.clone(),
                message: format!(
                    "unknown setting; known: base_url, default_region, {}",
                    known.join(", ")
                ),
            });
        }
    }
    if base_default.is_none() && !map.contains_key("base_url") {
        errors.push(SettingsError {
            field: "base_url".into(),
            message: "required: the account's API address".into(),
        });
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// A catalog field with its description: every connector's catalog is
/// written with this.
pub(crate) fn field(name: &str, field_type: FieldType, description: &str) -> FieldSpec {
    FieldSpec::new(name, field_type).describe(description)
}

/// A connection may shorten or lengthen the per-attempt timeout
/// (`timeout_ms`, 100 to 60000): some accounts answer slowly, and tests use
/// short timeouts against deliberately slow fakes.
pub(crate) fn with_timeout(mut policy: VendorPolicy, settings: &Value) -> VendorPolicy {
    if let Some(ms) = settings
        .get("timeout_ms")
        .and_then(Value::as_u64)
        .filter(|ms| (100..=60_000).contains(ms))
    {
        policy.timeout = std::time::Duration::from_millis(ms);
    }
    policy
}

/// How far a vendor's clock may be from ours and its times still move a
/// poll cursor. Real clocks differ by seconds or minutes; a time a day off
/// is garbage, and a cursor moved to a far-future time would stall the poll
/// until that day (one moved far back would replay history).
pub(crate) const MAX_VENDOR_CLOCK_SKEW: chrono::Duration = chrono::Duration::hours(24);

/// Whether a time a vendor reported is plausible as "about now or
/// earlier", to advance a cursor with.
pub(crate) fn not_ahead(at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    at.signed_duration_since(now) <= MAX_VENDOR_CLOCK_SKEW
}

/// Whether a vendor's idea of "now" (its `Date` header) is close enough to
/// ours to start a watch from.
pub(crate) fn close_to(at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    at.signed_duration_since(now).abs() <= MAX_VENDOR_CLOCK_SKEW
}

pub(crate) fn credential<'a>(
    credentials: &'a BTreeMap<String, String>,
    name: &str,
) -> Result<&'a str, ActionError> {
    credentials
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ActionError::Config(format!("the connection has no credential '{name}'")))
}

/// Digits of a phone number: the one form every vendor's free-text phone
/// field can be compared in.
pub(crate) fn digits(text: &str) -> String {
    text.chars().filter(char::is_ascii_digit).collect()
}

/// Whether two phone numbers are the same line: equal digits, or equal
/// national significant numbers (last 10 digits) — "+7 916…" and "8 916…"
/// are one Russian number.
pub(crate) fn same_phone(a: &str, b: &str) -> bool {
    let (a, b) = (digits(a), digits(b));
    if a.is_empty() || b.is_empty() {
        return false;
    }
    if a == b {
        return true;
    }
    a.len() >= 10 && b.len() >= 10 && a[a.len() - 10..] == b[b.len() - 10..]
}

/// A field's text (strings as-is, numbers printed), or `None` when unset.
pub(crate) fn text(fields: &Map<String, Value>, name: &str) -> Option<String> {
    match fields.get(name)? {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

pub(crate) fn required_text(
    fields: &Map<String, Value>,
    name: &str,
) -> Result<String, ActionError> {
    text(fields, name).ok_or_else(|| ActionError::field(format!("fields.{name}"), "is required"))
}

/// Rejects fields the action does not know, so a typo is an error, not a
/// silently dropped value.
pub(crate) fn only_known(fields: &Map<String, Value>, known: &[&str]) -> Result<(), ActionError> {
    match fields.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(ActionError::field(
            format!("fields.{unknown}"),
            format!("unknown field; known: {}", known.join(", ")),
        )),
        None => Ok(()),
    }
}

/// A number given as a JSON number or as text (`"81"`, `" 3.5 "`).
pub(crate) fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().replace(',', ".").parse().ok(),
        _ => None,
    }
    .filter(|n: &f64| n.is_finite())
}

/// A date-time without zone in the shapes senders use (ISO with `T` or a
/// space, day-first with dots or dashes, slashes, without seconds), or
/// Unix seconds: vendors whose date format is the user's choice.
pub(crate) fn lenient_datetime(text: &str) -> Option<chrono::NaiveDateTime> {
    const FORMATS: &[&str] = &[
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%d.%m.%Y %H:%M:%S",
        "%d.%m.%Y %H:%M",
        "%d-%m-%Y %H:%M:%S",
        "%d/%m/%Y %H:%M:%S",
        "%Y/%m/%d %H:%M:%S",
    ];
    let text = text.trim();
    if text.len() >= 9 && text.len() <= 10 && text.chars().all(|c| c.is_ascii_digit()) {
        return text
            .parse::<i64>()
            .ok()
            .and_then(|secs| DateTime::from_timestamp(secs, 0))
            .map(|at| at.naive_utc());
    }
    FORMATS
        .iter()
        .find_map(|format| chrono::NaiveDateTime::parse_from_str(text, format).ok())
}

/// A webhook's parameters: the query string, then a JSON object body or
/// a form body (every value as text).
pub(crate) fn params_of(
    request: &crate::InboundRequest<'_>,
) -> Result<Vec<(String, String)>, crate::DecodeError> {
    let mut params: Vec<(String, String)> = request.query.to_vec();
    if !request.body.is_empty() {
        let is_json = request.content_type.is_some_and(|ct| ct.contains("json"));
        if is_json {
            let body: Value = serde_json::from_slice(request.body)
                .map_err(|err| crate::DecodeError::new("body", format!("not valid JSON: {err}")))?;
            let object = body
                .as_object()
                .ok_or_else(|| crate::DecodeError::new("body", "expected a JSON object"))?;
            params.extend(object.iter().map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string()),
                )
            }));
        } else {
            params.extend(form_urlencoded::parse(request.body).into_owned());
        }
    }
    Ok(params)
}

/// A message's text as compared when it is read back: whitespace runs (line
/// breaks included) are one space, the ends trimmed.
pub(crate) fn same_text(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// How a message relay may be resent after an unknown outcome: one with
/// text is found again in the chat's history ([`Resend::ReadBack`]); one
/// with files only cannot be told apart there.
pub(crate) fn resend_by_text(fields: &Map<String, Value>, name: &str) -> Resend {
    if text(fields, name).is_some_and(|t| !t.trim().is_empty()) {
        Resend::ReadBack
    } else {
        Resend::Unsafe
    }
}

/// Among history entries with the wanted text (each with its time, if it
/// reads, and what finding it would output), the attempt begun at `from`:
/// the first at or after it. An entry with an unreadable time may be an
/// older message or this one, so it makes the answer unknown. `None`:
/// none of these is it.
pub(crate) fn sent_since(
    entries: impl IntoIterator<Item = (Option<DateTime<Utc>>, ActionOutput)>,
    from: DateTime<Utc>,
) -> Option<Sent> {
    for (at, output) in entries {
        match at {
            Some(at) if at < from => {}
            Some(_) => return Some(Sent::Found(output)),
            None => {
                return Some(Sent::Unknown(
                    "an entry with this text has no readable time".into(),
                ));
            }
        }
    }
    None
}

/// Compares a secret a sender presented with ours in constant time (no
/// early exit that would tell how much of a guess was right).
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn lenient_dates_and_numbers() {
        let at = lenient_datetime("2026-04-25 16:07:14").unwrap();
        assert_eq!(lenient_datetime("25.04.2026 16:07:14"), Some(at));
        assert_eq!(lenient_datetime("2026-04-25T16:07:14"), Some(at));
        assert_eq!(
            lenient_datetime("1777133234")
                .unwrap()
                .and_utc()
                .timestamp(),
            1777133234
        );
        assert_eq!(lenient_datetime("yesterday"), None);
        assert_eq!(lenient_datetime("2026-13-45 10:00:00"), None);
        assert_eq!(number(&Value::from("81")), Some(81.0));
        assert_eq!(number(&Value::from(" 3,5 ")), Some(3.5));
        assert_eq!(number(&Value::from("NaN")), None);
        assert_eq!(number(&Value::Bool(true)), None);
    }

    #[test]
    fn base_urls_must_be_on_the_vendor_domain() {
        let ms = ["api.moysklad.ru"];
        assert!(check_base_url("https://api.moysklad.ru/api/remap/1.2", &ms, false).is_ok());
        assert!(check_base_url("http://api.moysklad.ru/api/remap/1.2", &ms, false).is_err());
        assert!(check_base_url("https://evil.example/api", &ms, false).is_err());
        assert!(check_base_url("https://api.moysklad.ru.evil.example/", &ms, false).is_err());
        assert!(check_base_url("https://127.0.0.1/", &ms, false).is_err());
        assert!(check_base_url("https://user:pw@api.moysklad.ru/", &ms, false).is_err());
        assert!(check_base_url("https://api.moysklad.ru:8443/", &ms, false).is_err());
        let rc = [".retailcrm.ru", ".simla.com"];
        assert!(check_base_url("https://shop.retailcrm.ru", &rc, false).is_ok());
        assert!(check_base_url("https://retailcrm.ru.evil.com", &rc, false).is_err());
        assert!(check_base_url("http://127.0.0.1:9999/api", &ms, true).is_ok());
        assert!(check_base_url("file:///etc/passwd", &ms, true).is_err());
    }

    #[test]
    fn vendor_times_far_from_now_do_not_move_cursors() {
        let now = Utc::now();
        let hour = chrono::Duration::hours(1);
        assert!(not_ahead(now, now));
        assert!(not_ahead(now + hour, now));
        assert!(not_ahead(now - chrono::Duration::days(400), now));
        assert!(!not_ahead(now + chrono::Duration::days(2), now));
        let far = DateTime::parse_from_rfc3339("9999-12-31T23:59:59Z")
            .unwrap()
            .with_timezone(&Utc);
        assert!(!not_ahead(far, now));
        assert!(close_to(now - hour, now));
        assert!(!close_to(now - chrono::Duration::days(2), now));
        assert!(!close_to(far, now));
    }

    #[test]
    fn phones_compare_by_national_number() {
        assert!(same_phone("+7 (916) 123-45-67", "89161234567"));
        assert!(same_phone("79161234567", "+79161234567"));
        assert!(!same_phone("79161234567", "79161234568"));
        assert!(!same_phone("", ""));
        assert!(same_phone("123", "1-2-3"));
    }
}
