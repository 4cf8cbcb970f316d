//! Field templates: the sandboxed Jinja environment (minijinja) and the
//! filters a CRM mapping needs.
//!
//! The environment has no loader (no includes, no file access), no auto
//! escaping, and *semi-strict* undefined handling: printing, iterating or
//! reading an attribute of something missing is an error, while
//! `{% if event.x %}` and `event.x | default("…")` are the explicit ways to
//! allow it.
//!
//! | filter | what it does |
//! |---|---|
//! | `phone` / `phone("UA")` | E.164 (`+79161234567`) using the connection's `default_region` (or the argument) |
//! | `phone_mask(mask)` / `phone_mask(mask, "UA")` | a phone written as a CRM shows it: E.164 first (as `phone`), then its last digits fill the mask's `#` left to right (`+7 (###) ###-##-##` → `+7 (916) 123-45-67`); a number with fewer digits than `#` cannot be read |
//! | `digits` | keeps only the digits |
//! | `date(format, tz, from_tz)` | reads a date (RFC 3339, `YYYY-MM-DD HH:MM:SS`, `dd/mm/yyyy HH:MM:SS`, `dd.mm.yyyy`, Unix seconds or ms) and writes it with a strftime `format` in time zone `tz` (default UTC); values without an offset are read in `from_tz` (default: `tz`) |
//! | `money("to_minor", scale)` / `money("to_major", scale)` | roubles → kopecks (integer) / kopecks → roubles (decimal string), `scale` decimals (default 2) |
//! | `join(sep)` | joins a list, skipping missing, null and empty items |
//! | `truncate(n, end)` | at most `n` characters including `end` (default `""`) |
//! | `default`, `lower`, `upper`, `trim` | as in Jinja |
//!
//! minijinja's other built-in filters ([`BUILTIN_FILTERS`]), tests
//! ([`TESTS`]) and the functions `range`, `dict` and `namespace` work as
//! documented by minijinja, except that `batch`, `slice`, `chain`,
//! `indent`, `format` and `pprint` are removed (each can build a value far
//! larger than its input from one small argument), and so is `debug()`
//! (it prints the whole context).
//!
//! A conversion filter (`phone`, `date`, `money`) that cannot read its input
//! yields an undefined value: an error when printed, unless `| default(...)`
//! follows. The error then says what could not be read.
//!
//! # Bounds
//!
//! A template is compiled by [`crate::sandbox`], which refuses what cannot
//! be bounded (macros, set and filter blocks, recursive loops, include and
//! friends, unknown filters, tests and functions) and turns the operators
//! `~`, `+`, `*` into calls of bounded functions; it renders with the
//! limits of [`crate::limits`], enforced by [`crate::bounded`].

use std::cell::RefCell;
use std::fmt::Write as _;

use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use minijinja::filters;
use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State, UndefinedBehavior};

use crate::bounded::{self, ADD_FN, CONCAT_FN, MUL_FN, STORE_FN, STORE_INTO_FN};
use crate::limits::{FUEL_PER_FIELD, RECURSION_LIMIT};
use crate::values;

/// The filter that turns a single-expression template's value into JSON, so
/// that `{{ event.duration }}` stays a number.
pub(crate) const NATIVE_FILTER: &str = "__crmbridge_native";

thread_local! {
    /// Why conversion filters produced undefined values during the current
    /// render; read only to explain an undefined-value error.
    static CONVERSION_NOTES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

pub(crate) fn clear_conversion_notes() {
    CONVERSION_NOTES.with(|notes| notes.borrow_mut().clear());
}

pub(crate) fn take_conversion_notes() -> Vec<String> {
    CONVERSION_NOTES.with(|notes| std::mem::take(&mut *notes.borrow_mut()))
}

fn note_conversion_failure(note: String) -> Value {
    CONVERSION_NOTES.with(|notes| {
        let mut notes = notes.borrow_mut();
        if notes.len() < 8 {
            notes.push(note);
        }
    });
    Value::UNDEFINED
}

/// crmbridge's own filters (besides the internal [`NATIVE_FILTER`]).
pub const CRMBRIDGE_FILTERS: &[&str] = &[
    "phone",
    "phone_mask",
    "digits",
    "date",
    "money",
    "join",
    "truncate",
];

/// minijinja's built-in filters templates may use (each bounded by its
/// input; see [`crate::bounded::charged_filter`]).
pub const BUILTIN_FILTERS: &[&str] = &[
    "abs",
    "attr",
    "bool",
    "capitalize",
    "count",
    "d",
    "default",
    "dictsort",
    "e",
    "escape",
    "first",
    "float",
    "groupby",
    "int",
    "items",
    "last",
    "length",
    "lines",
    "list",
    "lower",
    "map",
    "max",
    "min",
    "reject",
    "rejectattr",
    "replace",
    "reverse",
    "round",
    "safe",
    "select",
    "selectattr",
    "sort",
    "split",
    "string",
    "sum",
    "title",
    "trim",
    "unique",
    "upper",
    "zip",
];

/// minijinja's built-in filters that are removed: each builds a value
/// whose size comes from an argument rather than the input (`batch` and
/// `slice` pad to a count, `indent` and `format` to a width, `chain`
/// concatenates lazily so a loop doubles it), or dumps everything (`pprint`).
const REMOVED_FILTERS: &[&str] = &["batch", "slice", "chain", "indent", "format", "pprint"];

/// The tests (`x is name`) templates may use: minijinja's built-ins, all
/// cheap.
pub const TESTS: &[&str] = &[
    "!=",
    "<",
    "<=",
    "==",
    ">",
    ">=",
    "boolean",
    "defined",
    "divisibleby",
    "endingwith",
    "eq",
    "equalto",
    "escaped",
    "even",
    "false",
    "filter",
    "float",
    "ge",
    "greaterthan",
    "gt",
    "in",
    "int",
    "integer",
    "iterable",
    "le",
    "lessthan",
    "lower",
    "lt",
    "mapping",
    "ne",
    "none",
    "number",
    "odd",
    "safe",
    "sameas",
    "sequence",
    "startingwith",
    "string",
    "test",
    "true",
    "undefined",
    "upper",
];

/// The functions templates may call (`range` is ours, capped).
pub const FUNCTIONS: &[&str] = &["range", "dict", "namespace"];

/// Functions the compiled templates call in place of operators; a template
/// may name them too, they are as bounded as the operators.
pub(crate) const INTERNAL_FUNCTIONS: &[&str] =
    &[CONCAT_FN, ADD_FN, MUL_FN, STORE_FN, STORE_INTO_FN];

/// Whether `name` is a filter of the environment.
pub(crate) fn is_filter(name: &str) -> bool {
    name == NATIVE_FILTER || CRMBRIDGE_FILTERS.contains(&name) || BUILTIN_FILTERS.contains(&name)
}

/// Whether `name` is a test of the environment.
pub(crate) fn is_test(name: &str) -> bool {
    TESTS.contains(&name)
}

/// Whether `name` is a function of the environment.
pub(crate) fn is_function(name: &str) -> bool {
    FUNCTIONS.contains(&name) || INTERNAL_FUNCTIONS.contains(&name)
}

/// The built-in filter `name` (one of [`BUILTIN_FILTERS`]) as a callable.
fn builtin_filter(name: &str) -> Option<Value> {
    Some(match name {
        "abs" => Value::from_function(filters::abs),
        "attr" => Value::from_function(filters::attr),
        "bool" => Value::from_function(filters::bool),
        "capitalize" => Value::from_function(filters::capitalize),
        "count" | "length" => Value::from_function(filters::length),
        "d" | "default" => Value::from_function(filters::default),
        "dictsort" => Value::from_function(filters::dictsort),
        "e" | "escape" => Value::from_function(filters::escape),
        "first" => Value::from_function(filters::first),
        "float" => Value::from_function(filters::float),
        "groupby" => Value::from_function(filters::groupby),
        "int" => Value::from_function(filters::int),
        "items" => Value::from_function(filters::items),
        "last" => Value::from_function(filters::last),
        "lines" => Value::from_function(filters::lines),
        "list" => Value::from_function(filters::list),
        "lower" => Value::from_function(filters::lower),
        "map" => Value::from_function(filters::map),
        "max" => Value::from_function(filters::max),
        "min" => Value::from_function(filters::min),
        "reject" => Value::from_function(filters::reject),
        "rejectattr" => Value::from_function(filters::rejectattr),
        "replace" => Value::from_function(filters::replace),
        "reverse" => Value::from_function(filters::reverse),
        "round" => Value::from_function(filters::round),
        "safe" => Value::from_function(filters::safe),
        "select" => Value::from_function(filters::select),
        "selectattr" => Value::from_function(filters::selectattr),
        "sort" => Value::from_function(filters::sort),
        "split" => Value::from_function(filters::split),
        "string" => Value::from_function(filters::string),
        "sum" => Value::from_function(filters::sum),
        "title" => Value::from_function(filters::title),
        "trim" => Value::from_function(filters::trim),
        "unique" => Value::from_function(filters::unique),
        "upper" => Value::from_function(filters::upper),
        "zip" => Value::from_function(filters::zip),
        _ => return None,
    })
}

/// The sandboxed environment with crmbridge's filters and bounds.
pub(crate) fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_fuel(Some(FUEL_PER_FIELD));
    env.set_recursion_limit(RECURSION_LIMIT);
    for name in REMOVED_FILTERS {
        env.remove_filter(name);
    }
    env.remove_global("debug");
    for name in BUILTIN_FILTERS {
        let Some(filter) = builtin_filter(name) else {
            continue;
        };
        if matches!(*name, "default" | "d") {
            // Hands back its input or its argument: nothing to charge, and
            // it is in almost every template; the built-in stays.
            continue;
        }
        let pre_check = (*name == "replace").then_some(bounded::replace_size as bounded::PreCheck);
        env.add_filter(*name, bounded::charged_filter(filter, pre_check));
    }
    env.add_filter(
        "phone",
        bounded::charged_filter(Value::from_function(phone), None),
    );
    env.add_filter(
        "phone_mask",
        bounded::charged_filter(Value::from_function(phone_mask), None),
    );
    env.add_filter(
        "digits",
        bounded::charged_filter(Value::from_function(digits), None),
    );
    env.add_filter(
        "date",
        bounded::charged_filter(Value::from_function(date), None),
    );
    env.add_filter(
        "money",
        bounded::charged_filter(Value::from_function(money), None),
    );
    env.add_filter(
        "join",
        bounded::charged_filter(Value::from_function(join), None),
    );
    env.add_filter(
        "truncate",
        bounded::charged_filter(Value::from_function(truncate), None),
    );
    env.add_filter(NATIVE_FILTER, native);
    env.add_function("range", bounded::range);
    env.add_function(CONCAT_FN, bounded::concat);
    env.add_function(ADD_FN, bounded::add);
    env.add_function(MUL_FN, bounded::mul);
    env.add_function(STORE_FN, bounded::store);
    env.add_function(STORE_INTO_FN, bounded::store_into);
    env
}

/// The template source to compile for a field value: a string that is one
/// `{{ expression }}` is wrapped so it renders its value as JSON.
pub(crate) fn source_for(text: &str) -> (String, bool) {
    match single_expression(text) {
        Some(expr) => (format!("{{{{ ({expr}) | {NATIVE_FILTER} }}}}"), true),
        None => (text.to_owned(), false),
    }
}

pub(crate) fn single_expression(text: &str) -> Option<&str> {
    let inner = text.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    if inner.contains("{{") || inner.contains("}}") || inner.contains("{%") || inner.contains("{#")
    {
        return None;
    }
    let inner = inner.strip_prefix(['-', '+']).unwrap_or(inner);
    let inner = inner.strip_suffix(['-', '+']).unwrap_or(inner);
    (!inner.trim().is_empty()).then_some(inner)
}

/// Encodes a single expression's value: `s` + a string as is, or `j` +
/// JSON for anything else (strings skip a JSON round trip).
fn native(value: Value) -> Result<String, Error> {
    if value.is_undefined() {
        return Err(Error::new(ErrorKind::UndefinedError, "undefined value"));
    }
    // Serialising walks the whole value before the output cap sees a byte.
    bounded::check_field_size(&value)?;
    if let Some(text) = value.as_str() {
        return Ok(format!("s{text}"));
    }
    serde_json::to_string(&value)
        .map(|json| format!("j{json}"))
        .map_err(|err| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("value cannot be represented as JSON: {err}"),
            )
        })
}

/// Decodes what [`native`] wrote.
pub(crate) fn decode_native(mut text: String) -> Result<serde_json::Value, serde_json::Error> {
    if text.starts_with('s') {
        text.remove(0);
        return Ok(serde_json::Value::String(text));
    }
    serde_json::from_str(text.strip_prefix('j').unwrap_or(&text))
}

/// The text of a scalar input, or `None` for missing/null.
fn input_text(value: &Value) -> Option<String> {
    if value.is_undefined() || value.is_none() {
        return None;
    }
    Some(match value.as_str() {
        Some(s) => s.to_owned(),
        None => value.to_string(),
    })
}

/// Phone numbers normalised during the current render, so one number
/// used in several fields is parsed once. Cleared by [`begin_render`].
type PhoneMemo = Vec<(Option<String>, String, Option<String>)>;

thread_local! {
    static PHONE_MEMO: RefCell<PhoneMemo> = const { RefCell::new(Vec::new()) };
}

/// Marks the start of one filter evaluation or step rendering.
pub(crate) fn begin_render() {
    PHONE_MEMO.with(|memo| memo.borrow_mut().clear());
    clear_conversion_notes();
}

fn normalize_phone_memoized(raw: &str, region: Option<&str>) -> Option<String> {
    let known = PHONE_MEMO.with(|memo| {
        memo.borrow()
            .iter()
            .find(|(r, input, _)| r.as_deref() == region && input == raw)
            .map(|(_, _, result)| result.clone())
    });
    if let Some(result) = known {
        return result;
    }
    let result = normalize_phone(raw, region);
    PHONE_MEMO.with(|memo| {
        let mut memo = memo.borrow_mut();
        if memo.len() < 16 {
            memo.push((region.map(str::to_owned), raw.to_owned(), result.clone()));
        }
    });
    result
}

fn phone(state: &State, value: Value, region: Option<String>) -> Value {
    let Some(raw) = input_text(&value) else {
        return Value::UNDEFINED;
    };
    let region = region.or_else(|| {
        state
            .lookup("connection")
            .and_then(|connection| connection.get_attr("default_region").ok())
            .and_then(|region| region.as_str().map(str::to_owned))
    });
    match normalize_phone_memoized(&raw, region.as_deref()) {
        Some(e164) => Value::from(e164),
        None => note_conversion_failure(format!(
            "phone: cannot read {raw:?} as a phone number (default region {})",
            region.as_deref().unwrap_or("none")
        )),
    }
}

/// Longest mask `phone_mask` takes (masks are a phone number's length).
const MAX_MASK_CHARS: usize = 64;

/// A phone number in a CRM's own spelling: normalised as [`phone`] does,
/// then its last digits poured into the mask's `#` (CRMs that store phones
/// as free text match and show them the way a person typed the first one).
fn phone_mask(state: &State, value: Value, mask: String, region: Option<String>) -> Value {
    let normalised = phone(state, value, region);
    let Some(e164) = normalised.as_str() else {
        return normalised;
    };
    if mask.chars().count() > MAX_MASK_CHARS {
        return note_conversion_failure(format!(
            "phone_mask: the mask is longer than {MAX_MASK_CHARS} characters"
        ));
    }
    let digits: Vec<char> = e164.chars().filter(char::is_ascii_digit).collect();
    let slots = mask.chars().filter(|c| *c == '#').count();
    if slots == 0 || digits.len() < slots {
        return note_conversion_failure(format!(
            "phone_mask: {e164} does not fill the {slots} digit(s) of {mask:?}"
        ));
    }
    let mut fill = digits[digits.len() - slots..].iter();
    Value::from(
        mask.chars()
            .map(|c| {
                if c == '#' {
                    fill.next().copied().unwrap_or(c)
                } else {
                    c
                }
            })
            .collect::<String>(),
    )
}

/// Longer input is not read as a phone number.
const MAX_PHONE_INPUT_BYTES: usize = 128;

/// Longest strftime format the `date` filter takes (formats are a few
/// characters; each item can print a few dozen).
const MAX_DATE_FORMAT_CHARS: usize = 256;

/// E.164 form of a phone number written any way a CRM or tracker writes
/// it (`8 (916) 123-45-67`, `79161234567`, `+7 916 123 45 67`).
pub fn normalize_phone(raw: &str, default_region: Option<&str>) -> Option<String> {
    let text = raw.trim();
    // No way of writing a phone number takes this long, and the parser is
    // regex-based: not worth feeding it a page of text.
    if text.len() > MAX_PHONE_INPUT_BYTES {
        return None;
    }
    let digit_count = text.chars().filter(char::is_ascii_digit).count();
    if !(4..=17).contains(&digit_count) || text.contains('{') {
        return None;
    }
    let region = default_region.and_then(|r| {
        r.trim()
            .to_ascii_uppercase()
            .parse::<phonenumber::country::Id>()
            .ok()
    });
    // E.164 is "+", the country code and the national significant number
    // (with its leading zeros, which NationalNumber's Display keeps);
    // formatting it directly is several times faster than the formatter.
    let valid_e164 = |number: phonenumber::PhoneNumber| {
        phonenumber::is_valid(&number)
            .then(|| format!("+{}{}", number.code().value(), number.national()))
    };
    if let Some(e164) = phonenumber::parse(region, text).ok().and_then(valid_e164) {
        return Some(e164);
    }
    if !text.starts_with('+') {
        let digits: String = text.chars().filter(char::is_ascii_digit).collect();
        let digits = digits.strip_prefix("00").unwrap_or(&digits);
        return phonenumber::parse(None, format!("+{digits}"))
            .ok()
            .and_then(valid_e164);
    }
    None
}

fn digits(value: Value) -> Value {
    match input_text(&value) {
        Some(text) => Value::from(
            text.chars()
                .filter(char::is_ascii_digit)
                .collect::<String>(),
        ),
        None => Value::UNDEFINED,
    }
}

fn date(
    value: Value,
    format: Option<String>,
    tz: Option<String>,
    from_tz: Option<String>,
) -> Result<Value, Error> {
    let zone = parse_zone(tz.as_deref().unwrap_or("UTC"))?;
    let naive_zone = match from_tz.as_deref() {
        Some(name) => parse_zone(name)?,
        None => zone,
    };
    let format = format.unwrap_or_else(|| "%Y-%m-%dT%H:%M:%S%:z".to_owned());
    if format.chars().count() > MAX_DATE_FORMAT_CHARS {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("date: the format may have at most {MAX_DATE_FORMAT_CHARS} characters"),
        ));
    }
    let items: Vec<Item<'_>> = StrftimeItems::new(&format).collect();
    if items.iter().any(|item| matches!(item, Item::Error)) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("date: invalid format {format:?}"),
        ));
    }
    if value.is_undefined() || value.is_none() {
        return Ok(Value::UNDEFINED);
    }
    let instant: Option<DateTime<Utc>> = match value.as_str() {
        Some(text) => values::parse_instant(text, &naive_zone),
        None => serde_json::to_value(&value)
            .ok()
            .and_then(|v| v.as_f64())
            .and_then(values::instant_from_timestamp),
    };
    let Some(instant) = instant else {
        return Ok(note_conversion_failure(format!(
            "date: cannot read {:?} as a date",
            value.to_string()
        )));
    };
    let mut out = String::new();
    write!(
        out,
        "{}",
        instant.with_timezone(&zone).format_with_items(items.iter())
    )
    .map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("date: format {format:?} does not apply to this date"),
        )
    })?;
    Ok(Value::from(out))
}

fn parse_zone(name: &str) -> Result<Tz, Error> {
    name.parse::<Tz>().map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("date: unknown time zone {name:?}"),
        )
    })
}

fn money(value: Value, direction: String, scale: Option<u32>) -> Result<Value, Error> {
    let scale = scale.unwrap_or(2);
    if scale > 6 {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "money: scale must be between 0 and 6",
        ));
    }
    let Some(text) = input_text(&value) else {
        return Ok(Value::UNDEFINED);
    };
    let Some(amount) = Decimal::parse(&text) else {
        return Ok(note_conversion_failure(format!(
            "money: cannot read {text:?} as an amount"
        )));
    };
    match direction.as_str() {
        "to_minor" => match amount
            .rescale(scale)
            .and_then(|minor| i64::try_from(minor).ok())
        {
            Some(minor) => Ok(Value::from(minor)),
            None => Ok(note_conversion_failure(format!(
                "money: {text:?} is out of range"
            ))),
        },
        "to_major" => match amount.rescale(0) {
            Some(minor) => Ok(Value::from(format_major(minor, scale))),
            None => Ok(note_conversion_failure(format!(
                "money: {text:?} is out of range"
            ))),
        },
        other => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("money: direction must be \"to_minor\" or \"to_major\", not {other:?}"),
        )),
    }
}

/// A decimal read exactly from text: `mantissa / 10^scale`.
struct Decimal {
    mantissa: i128,
    scale: u32,
}

impl Decimal {
    fn parse(text: &str) -> Option<Decimal> {
        let cleaned: String = text
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '\u{a0}' && *c != '_')
            .map(|c| if c == ',' { '.' } else { c })
            .collect();
        let (negative, unsigned) = match cleaned.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, cleaned.strip_prefix('+').unwrap_or(&cleaned)),
        };
        let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
        if whole.is_empty() && fraction.is_empty()
            || !whole
                .chars()
                .chain(fraction.chars())
                .all(|c| c.is_ascii_digit())
            || whole.len() + fraction.len() > 30
        {
            return None;
        }
        let mantissa: i128 = format!("{whole}{fraction}").parse().ok()?;
        Some(Decimal {
            mantissa: if negative { -mantissa } else { mantissa },
            scale: u32::try_from(fraction.len()).ok()?,
        })
    }

    /// `value * 10^scale`, rounded half away from zero.
    fn rescale(&self, scale: u32) -> Option<i128> {
        if scale >= self.scale {
            self.mantissa
                .checked_mul(10i128.checked_pow(scale - self.scale)?)
        } else {
            let divisor = 10i128.checked_pow(self.scale - scale)?;
            let quotient = self.mantissa / divisor;
            let remainder = self.mantissa % divisor;
            let round_away = remainder.abs() * 2 >= divisor;
            Some(match (round_away, self.mantissa < 0) {
                (true, true) => quotient - 1,
                (true, false) => quotient + 1,
                (false, _) => quotient,
            })
        }
    }
}

fn format_major(minor: i128, scale: u32) -> String {
    if scale == 0 {
        return minor.to_string();
    }
    let divisor = 10i128.pow(scale);
    let sign = if minor < 0 { "-" } else { "" };
    let whole = minor.abs() / divisor;
    let fraction = minor.abs() % divisor;
    format!("{sign}{whole}.{fraction:0width$}", width = scale as usize)
}

fn join(value: Value, separator: Option<String>) -> Result<Value, Error> {
    if value.is_undefined() || value.is_none() {
        return Ok(Value::UNDEFINED);
    }
    if let Some(text) = value.as_str() {
        return Ok(Value::from(text));
    }
    let separator = separator.unwrap_or_default();
    let mut out = String::new();
    for item in value.try_iter()? {
        let Some(text) = input_text(&item) else {
            continue;
        };
        if text.is_empty() {
            continue;
        }
        // A long separator between many items multiplies: capped per piece.
        if !out.is_empty() {
            bounded::push_capped(&mut out, &separator)?;
        }
        bounded::push_capped(&mut out, &text)?;
    }
    Ok(Value::from(out))
}

fn truncate(value: Value, length: usize, end: Option<String>) -> Value {
    let Some(text) = input_text(&value) else {
        return Value::UNDEFINED;
    };
    if text.chars().count() <= length {
        return Value::from(text);
    }
    let end = end.unwrap_or_default();
    let keep = length.saturating_sub(end.chars().count());
    let mut out: String = text.chars().take(keep).collect();
    out.push_str(&end);
    Value::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::context;

    /// Renders as production does: checked and rewritten, then bounded.
    fn render(template: &str, ctx: Value) -> Result<String, Error> {
        let source = crate::sandbox::prepare(template)
            .map_err(|problems| Error::new(ErrorKind::SyntaxError, format!("{problems:?}")))?;
        let mut env = environment();
        env.add_template_owned("t", source)?;
        let template = env.get_template("t")?;
        bounded::render_field(&template, &ctx)
    }

    fn ru() -> Value {
        context! { connection => context! { default_region => "RU" } }
    }

    #[test]
    fn phone_normalises_russian_formats() {
        for raw in [
            "79161234567",
            "8 (916) 123-45-67",
            "+7 916 123 45 67",
            "9161234567",
        ] {
            assert_eq!(
                render("{{ p | phone }}", context! { p => raw, ..ru() }).unwrap(),
                "+79161234567",
                "{raw}"
            );
        }
        assert_eq!(
            render("{{ p | phone }}", context! { p => 79161234567i64, ..ru() }).unwrap(),
            "+79161234567"
        );
    }

    #[test]
    fn direct_e164_matches_the_library_formatter() {
        for (raw, region) in [
            ("+39 06 6982 1234", None),
            ("0669821234", Some("IT")),
            ("+44 20 7946 0958", None),
            ("8 (916) 123-45-67", Some("RU")),
            ("050 123 4567", Some("UA")),
            ("+1 212 555 0123", None),
        ] {
            let ours = normalize_phone(raw, region).unwrap();
            let id = region.and_then(|r| r.parse().ok());
            let theirs = phonenumber::parse(id, raw).unwrap();
            assert_eq!(
                ours,
                theirs.format().mode(phonenumber::Mode::E164).to_string(),
                "{raw}"
            );
        }
    }

    #[test]
    fn phone_mask_writes_a_number_the_way_the_crm_shows_it() {
        let mask = "+7 (###) ###-##-##";
        for raw in ["79161234567", "8 (916) 123-45-67", "+7 916 123 45 67"] {
            assert_eq!(
                render(
                    "{{ p | phone_mask(m) }}",
                    context! { p => raw, m => mask, ..ru() }
                )
                .unwrap(),
                "+7 (916) 123-45-67",
                "{raw}"
            );
        }
        assert_eq!(
            render(
                "{{ p | phone_mask('+380 ## ### ## ##', 'UA') }}",
                context! { p => "050 123 4567" }
            )
            .unwrap(),
            "+380 50 123 45 67"
        );
        // Unreadable, too short for the mask, or a mask without slots: an
        // error naming the filter, unless defaulted.
        for (p, m) in [("{phone}", mask), ("+7 916", mask), ("79161234567", "none")] {
            take_conversion_notes();
            let err = render(
                "{{ p | phone_mask(m) }}",
                context! { p => p, m => m, ..ru() },
            )
            .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::UndefinedError, "{p} {m}");
            let notes = take_conversion_notes();
            assert!(notes.iter().any(|n| n.starts_with("phone")), "{notes:?}");
        }
        assert_eq!(
            render(
                "{{ p | phone_mask(m) | default('') }}",
                context! { p => "+7 916", m => mask, ..ru() }
            )
            .unwrap(),
            ""
        );
    }

    #[test]
    fn phone_region_argument_and_international_fallback() {
        assert_eq!(
            render("{{ p | phone('UA') }}", context! { p => "050 123 4567" }).unwrap(),
            "+380501234567"
        );
        assert_eq!(
            render("{{ p | phone }}", context! { p => "380501234567", ..ru() }).unwrap(),
            "+380501234567"
        );
    }

    #[test]
    fn unparseable_phone_is_an_error_unless_defaulted() {
        let err = render("{{ p | phone }}", context! { p => "{callerphone}", ..ru() }).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UndefinedError);
        let notes = take_conversion_notes();
        assert!(notes[0].contains("cannot read"), "{notes:?}");
        assert_eq!(
            render(
                "{{ p | phone | default('none') }}",
                context! { p => "abc", ..ru() }
            )
            .unwrap(),
            "none"
        );
    }

    #[test]
    fn digits_keeps_digits() {
        assert_eq!(
            render("{{ p | digits }}", context! { p => "+7 (916) 123-45-67" }).unwrap(),
            "79161234567"
        );
    }

    #[test]
    fn date_formats_and_converts_zones() {
        let ctx = context! { d => "2026-05-08T12:32:47Z", ct => "08/05/2026 15:32:47", ts => 1_778_243_567 };
        assert_eq!(
            render(
                "{{ d | date('%d-%m-%Y %H:%M:%S', 'Europe/Moscow') }}",
                ctx.clone()
            )
            .unwrap(),
            "08-05-2026 15:32:47"
        );
        // Naive input is read in the output zone unless from_tz says otherwise.
        assert_eq!(
            render(
                "{{ ct | date('%Y-%m-%d %H:%M', 'Europe/Moscow') }}",
                ctx.clone()
            )
            .unwrap(),
            "2026-05-08 15:32"
        );
        assert_eq!(
            render(
                "{{ ct | date('%H:%M', 'UTC', 'Europe/Moscow') }}",
                ctx.clone()
            )
            .unwrap(),
            "12:32"
        );
        assert_eq!(
            render("{{ ts | date('%Y') }}", ctx.clone()).unwrap(),
            "2026"
        );
        assert_eq!(
            render("{{ d | date }}", ctx.clone()).unwrap(),
            "2026-05-08T12:32:47+00:00"
        );
        assert!(render("{{ d | date('%Q') }}", ctx.clone()).is_err());
        assert!(render("{{ d | date('%Y', 'Mars/Olympus') }}", ctx.clone()).is_err());
        assert!(render("{{ 'soon' | date('%Y') }}", ctx.clone()).is_err());
        assert_eq!(
            render("{{ 'soon' | date('%Y') | default('-') }}", ctx).unwrap(),
            "-"
        );
    }

    #[test]
    fn money_converts_both_ways() {
        let ctx = context! { rub => "1 500,50", kop => 150050, f => 10000.0, neg => "-0.005" };
        assert_eq!(
            render("{{ rub | money('to_minor') }}", ctx.clone()).unwrap(),
            "150050"
        );
        assert_eq!(
            render("{{ kop | money('to_major') }}", ctx.clone()).unwrap(),
            "1500.50"
        );
        assert_eq!(
            render("{{ f | money('to_major') }}", ctx.clone()).unwrap(),
            "100.00"
        );
        assert_eq!(
            render("{{ neg | money('to_minor') }}", ctx.clone()).unwrap(),
            "-1"
        );
        assert_eq!(
            render("{{ kop | money('to_major', 0) }}", ctx.clone()).unwrap(),
            "150050"
        );
        assert!(render("{{ rub | money('sideways') }}", ctx.clone()).is_err());
        assert!(render("{{ 'lots' | money('to_minor') }}", ctx.clone()).is_err());
        assert!(render("{{ kop | money('to_minor', 9) }}", ctx).is_err());
    }

    #[test]
    fn join_skips_missing_items() {
        let ctx = context! { a => "x", b => "", tags => vec!["a", "b"] };
        assert_eq!(
            render("{{ [a, b, none] | join('|') }}", ctx.clone()).unwrap(),
            "x"
        );
        assert_eq!(
            render("{{ tags | join('|') }}", ctx.clone()).unwrap(),
            "a|b"
        );
        assert_eq!(render("{{ a | join('|') }}", ctx.clone()).unwrap(), "x");
        // A missing item is skipped, like an empty one.
        assert_eq!(render("{{ [a, nope] | join('|') }}", ctx).unwrap(), "x");
    }

    #[test]
    fn builtin_text_filters() {
        let ctx = context! { s => "  Hello  " };
        assert_eq!(
            render("{{ s | trim | lower }}", ctx.clone()).unwrap(),
            "hello"
        );
        assert_eq!(
            render("{{ s | trim | upper }}", ctx.clone()).unwrap(),
            "HELLO"
        );
        assert_eq!(render("{{ missing | default('d') }}", ctx).unwrap(), "d");
    }

    #[test]
    fn truncate_counts_characters() {
        let ctx = context! { s => "Привет, мир" };
        assert_eq!(
            render("{{ s | truncate(6) }}", ctx.clone()).unwrap(),
            "Привет"
        );
        assert_eq!(
            render("{{ s | truncate(7, '…') }}", ctx.clone()).unwrap(),
            "Привет…"
        );
        assert_eq!(
            render("{{ s | truncate(50) }}", ctx).unwrap(),
            "Привет, мир"
        );
    }

    #[test]
    fn missing_values_are_errors() {
        let err = render(
            "{{ event.nope }}",
            context! { event => context! { a => 1 } },
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UndefinedError);
        assert!(render("{{ nope.deeper }}", context! {}).is_err());
        assert_eq!(
            render("{% if nope %}x{% endif %}", context! {}).unwrap(),
            ""
        );
    }

    #[test]
    fn single_expressions_are_detected() {
        assert!(source_for("{{ event.x }}").1);
        assert!(source_for(" {{- event.x -}} ").1);
        assert!(!source_for("a {{ x }}").1);
        assert!(!source_for("{{ a }}{{ b }}").1);
        assert!(!source_for("{{ }}").1);
    }

    #[test]
    fn sandbox_stops_runaway_loops() {
        let err = render(
            "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
            context! {},
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::OutOfFuel);
    }
}
