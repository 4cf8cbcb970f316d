//! How loosely typed CRM values are compared and read: numbers that arrive
//! as strings, booleans spelt `"True"`, dates in half a dozen formats. One
//! place for these rules so that filters and template filters agree.

use std::cmp::Ordering;

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde_json::Value;

/// A finite number read from a JSON number or a numeric string
/// (`"1500"`, `" 1500.5 "`, `"1500,5"`).
pub(crate) fn as_number(value: &Value) -> Option<f64> {
    let number = match value {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => parse_number(s)?,
        _ => return None,
    };
    number.is_finite().then_some(number)
}

fn parse_number(text: &str) -> Option<f64> {
    let text = text.trim();
    let looks_numeric = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | ',' | 'e' | 'E'))
        && text.chars().any(|c| c.is_ascii_digit());
    if !looks_numeric {
        return None;
    }
    text.replace(',', ".").parse::<f64>().ok()
}

/// The date formats CRMs and trackers send, tried in order. Values without
/// an offset are read as UTC.
const NAIVE_DATETIME_FORMATS: &[&str] = &[
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%dT%H:%M",
    "%d/%m/%Y %H:%M:%S",
    "%d.%m.%Y %H:%M:%S",
    "%d-%m-%Y %H:%M:%S",
    "%d/%m/%Y %H:%M",
    "%d.%m.%Y %H:%M",
];
const NAIVE_DATE_FORMATS: &[&str] = &["%Y-%m-%d", "%d/%m/%Y", "%d.%m.%Y", "%d-%m-%Y"];

/// Reads a date or date-time without an offset (or with one, converted to
/// UTC wall-clock).
pub(crate) fn parse_naive_datetime(text: &str) -> Option<NaiveDateTime> {
    let text = text.trim();
    if let Ok(with_offset) = DateTime::parse_from_rfc3339(text) {
        return Some(with_offset.naive_utc());
    }
    NAIVE_DATETIME_FORMATS
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
        .or_else(|| {
            NAIVE_DATE_FORMATS
                .iter()
                .find_map(|format| NaiveDate::parse_from_str(text, format).ok())
                .and_then(|date| date.and_hms_opt(0, 0, 0))
        })
}

/// Reads an instant: RFC 3339 keeps its offset, other formats are read in
/// `naive_zone`.
pub(crate) fn parse_instant<Tz: TimeZone>(text: &str, naive_zone: &Tz) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(with_offset) = DateTime::parse_from_rfc3339(text) {
        return Some(with_offset.with_timezone(&Utc));
    }
    let naive = parse_naive_datetime(text)?;
    naive_zone
        .from_local_datetime(&naive)
        .earliest()
        .map(|local| local.with_timezone(&Utc))
}

/// An instant from a Unix timestamp: seconds, or milliseconds when it is
/// too large to be seconds.
pub(crate) fn instant_from_timestamp(number: f64) -> Option<DateTime<Utc>> {
    if !number.is_finite() || number.abs() > 1e16 {
        return None;
    }
    let millis = if number.abs() >= 1e11 {
        number
    } else {
        number * 1000.0
    };
    // Bounded above, so the cast cannot overflow.
    DateTime::from_timestamp_millis(millis.round() as i64)
}

fn as_instant(value: &Value) -> Option<DateTime<Utc>> {
    match value {
        Value::String(s) => parse_instant(s, &Utc),
        _ => None,
    }
}

/// Equality as a CRM means it: `200 == "200"`, `true == "True"`, and
/// otherwise exact JSON equality.
pub(crate) fn loose_eq(a: &Value, b: &Value) -> bool {
    if a == b {
        return true;
    }
    match (a, b) {
        (Value::Bool(flag), Value::String(s)) | (Value::String(s), Value::Bool(flag)) => s
            .trim()
            .eq_ignore_ascii_case(if *flag { "true" } else { "false" }),
        (Value::Number(_), Value::String(_)) | (Value::String(_), Value::Number(_)) => {
            matches!((as_number(a), as_number(b)), (Some(x), Some(y)) if x == y)
        }
        (Value::Number(_), Value::Number(_)) => {
            matches!((as_number(a), as_number(b)), (Some(x), Some(y)) if x == y)
        }
        _ => false,
    }
}

/// Orders two values as numbers, else as dates; `None` when they are
/// neither.
pub(crate) fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    if let (Some(x), Some(y)) = (as_number(a), as_number(b)) {
        return x.partial_cmp(&y);
    }
    match (as_instant(a), as_instant(b)) {
        (Some(x), Some(y)) => Some(x.cmp(&y)),
        _ => None,
    }
}

/// Whether a literal can stand on one side of gt/gte/lt/lte.
pub(crate) fn is_orderable(value: &Value) -> bool {
    as_number(value).is_some() || as_instant(value).is_some()
}

/// `haystack contains needle`: substring of a string, element of an array,
/// key of an object.
pub(crate) fn contains(haystack: &Value, needle: &Value) -> bool {
    match haystack {
        Value::String(s) => match needle {
            Value::String(n) => s.contains(n.as_str()),
            Value::Number(_) | Value::Bool(_) => s.contains(display(needle).as_str()),
            _ => false,
        },
        Value::Array(items) => items.iter().any(|item| loose_eq(item, needle)),
        Value::Object(map) => needle.as_str().is_some_and(|key| map.contains_key(key)),
        _ => false,
    }
}

/// A value as a person reads it in a reason: strings bare, the rest as JSON.
pub(crate) fn display(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Roughly how many bytes `value` takes as JSON (strings without escapes),
/// counting no further than just past `cap`: enough to tell whether it is
/// over a cap without walking a huge value to the end.
pub(crate) fn json_size_up_to(value: &Value, cap: usize) -> usize {
    fn walk(value: &Value, total: &mut usize, cap: usize) {
        if *total > cap {
            return;
        }
        match value {
            Value::Null | Value::Bool(_) | Value::Number(_) => *total += 8,
            Value::String(text) => *total += text.len() + 2,
            Value::Array(items) => {
                *total += 2;
                for item in items {
                    *total += 1;
                    walk(item, total, cap);
                    if *total > cap {
                        return;
                    }
                }
            }
            Value::Object(map) => {
                *total += 2;
                for (key, item) in map {
                    *total += key.len() + 4;
                    walk(item, total, cap);
                    if *total > cap {
                        return;
                    }
                }
            }
        }
    }
    let mut total = 0;
    walk(value, &mut total, cap);
    total
}

/// Whether a value counts as absent: missing, null or an empty string.
pub(crate) fn is_blank(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.trim().is_empty(),
        Some(_) => false,
    }
}

/// Follows a dotted path (`client.phones.0`) into a JSON value; numeric
/// segments index arrays.
pub(crate) fn get_path<'v, S: AsRef<str>>(value: &'v Value, segments: &[S]) -> Option<&'v Value> {
    segments.iter().try_fold(value, |current, segment| {
        let segment = segment.as_ref();
        match current {
            Value::Object(map) => map.get(segment),
            Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_compare_across_strings() {
        assert!(loose_eq(&json!(200), &json!("200")));
        assert!(loose_eq(&json!(1.5), &json!("1,5")));
        assert!(!loose_eq(&json!(200), &json!("abc")));
        assert!(loose_eq(&json!(true), &json!("True")));
        assert_eq!(compare(&json!("10"), &json!(9)), Some(Ordering::Greater));
    }

    #[test]
    fn nan_and_inf_are_not_numbers() {
        assert_eq!(as_number(&json!("NaN")), None);
        assert_eq!(as_number(&json!("inf")), None);
    }

    #[test]
    fn dates_in_vendor_formats_compare() {
        assert_eq!(
            compare(
                &json!("08/05/2026 15:32:47"),
                &json!("2026-05-08T15:00:00Z")
            ),
            Some(Ordering::Greater)
        );
        assert_eq!(
            compare(&json!("2026-05-08"), &json!("09.05.2026")),
            Some(Ordering::Less)
        );
        assert_eq!(compare(&json!("soon"), &json!("2026-05-08")), None);
    }

    #[test]
    fn timestamps_in_seconds_or_millis() {
        let seconds = instant_from_timestamp(1_700_000_000.0);
        let millis = instant_from_timestamp(1_700_000_000_000.0);
        assert!(seconds.is_some());
        assert_eq!(seconds, millis);
        assert_eq!(instant_from_timestamp(f64::NAN), None);
    }

    #[test]
    fn paths_index_objects_and_arrays() {
        let value = json!({"client": {"phones": ["1", "2"]}});
        assert_eq!(
            get_path(&value, &["client", "phones", "1"]),
            Some(&json!("2"))
        );
        assert_eq!(get_path(&value, &["client", "nope"]), None);
    }

    #[test]
    fn contains_strings_arrays_and_keys() {
        assert!(contains(&json!("yandex cpc"), &json!("cpc")));
        assert!(contains(&json!(["a", 2]), &json!("2")));
        assert!(contains(&json!({"k": 1}), &json!("k")));
        assert!(!contains(&json!(5), &json!("5")));
    }
}
