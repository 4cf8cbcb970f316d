//! What connectors declare about themselves, so an automation can be checked
//! before it is saved: which event kinds exist and what data they carry,
//! which actions exist and which fields they take. The mapping crate only
//! defines the shape ([`Catalog`]); each connector provides an instance.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::values;

/// The catalog of everything automations may refer to.
pub trait Catalog {
    /// The event kind (`calltouch.call.completed`), if it exists.
    fn event_kind(&self, kind: &str) -> Option<&EventKindSpec>;
    /// The action (`moysklad.customerorder.create`), if it exists.
    fn action(&self, id: &str) -> Option<&ActionSpec>;
}

/// The type of a field, as far as validation and the editor care.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type", content = "values")]
pub enum FieldType {
    String,
    Number,
    Integer,
    Boolean,
    Date,
    DateTime,
    Phone,
    Email,
    /// A decimal amount (as a number or a decimal string).
    Money,
    /// One of the listed values.
    Enum(Vec<String>),
    Object,
    Array,
    /// Anything; not checked.
    Any,
}

impl FieldType {
    /// Checks a literal (non-template) value; `Err` says what was expected.
    pub(crate) fn check_literal(&self, value: &Value) -> Result<(), String> {
        if value.is_null() {
            return Ok(());
        }
        let ok = match self {
            FieldType::String => matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_)),
            FieldType::Number | FieldType::Money => values::as_number(value).is_some(),
            FieldType::Integer => match value {
                Value::Number(n) => n.is_i64() || n.is_u64(),
                Value::String(s) => s.trim().parse::<i64>().is_ok(),
                _ => false,
            },
            FieldType::Boolean => value.is_boolean(),
            FieldType::Date | FieldType::DateTime => value
                .as_str()
                .is_some_and(|s| values::parse_naive_datetime(s).is_some()),
            FieldType::Phone => match value {
                Value::String(s) => s.chars().filter(char::is_ascii_digit).count() >= 3,
                Value::Number(_) => true,
                _ => false,
            },
            FieldType::Email => value.as_str().is_some_and(|s| {
                let mut parts = s.split('@');
                matches!((parts.next(), parts.next(), parts.next()), (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty())
            }),
            FieldType::Enum(allowed) => {
                let text = values::display(value);
                if allowed.contains(&text) {
                    return Ok(());
                }
                return Err(format!(
                    "expected one of {}, got {}",
                    allowed.join(", "),
                    value
                ));
            }
            FieldType::Object => value.is_object(),
            FieldType::Array => value.is_array(),
            FieldType::Any => true,
        };
        if ok {
            Ok(())
        } else {
            Err(format!("expected {}, got {}", self.name(), value))
        }
    }

    /// The type's name in messages.
    pub fn name(&self) -> &'static str {
        match self {
            FieldType::String => "a string",
            FieldType::Number => "a number",
            FieldType::Integer => "an integer",
            FieldType::Boolean => "true or false",
            FieldType::Date => "a date",
            FieldType::DateTime => "a date-time",
            FieldType::Phone => "a phone number",
            FieldType::Email => "an email address",
            FieldType::Money => "an amount",
            FieldType::Enum(_) => "one of the allowed values",
            FieldType::Object => "an object",
            FieldType::Array => "a list",
            FieldType::Any => "any value",
        }
    }
}

/// One field of an event, an action or an action's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldSpec {
    pub name: String,
    #[serde(flatten)]
    pub field_type: FieldType,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub description: String,
}

impl FieldSpec {
    /// An optional field.
    pub fn new(name: impl Into<String>, field_type: FieldType) -> Self {
        Self {
            name: name.into(),
            field_type,
            required: false,
            description: String::new(),
        }
    }

    /// A required field.
    pub fn required(name: impl Into<String>, field_type: FieldType) -> Self {
        Self {
            required: true,
            ..Self::new(name, field_type)
        }
    }

    /// Adds a description (shown in editors).
    pub fn describe(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }
}

/// An event kind and the data fields its events carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventKindSpec {
    /// `app.entity.what`.
    pub kind: String,
    #[serde(default)]
    pub description: String,
    /// Top-level fields of `event.data`.
    #[serde(default)]
    pub fields: Vec<FieldSpec>,
    /// Options a trigger on this kind accepts (`trigger.options`).
    #[serde(default)]
    pub options: Vec<FieldSpec>,
}

impl EventKindSpec {
    pub fn new(kind: impl Into<String>, fields: Vec<FieldSpec>) -> Self {
        Self {
            kind: kind.into(),
            description: String::new(),
            fields,
            options: Vec::new(),
        }
    }

    /// Adds the trigger options.
    pub fn with_options(mut self, options: Vec<FieldSpec>) -> Self {
        self.options = options;
        self
    }

    pub fn field(&self, name: &str) -> Option<&FieldSpec> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// What an action does to records, which decides which of `dedupe` and
/// `target` make sense for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Creates a record: `dedupe` applies, no `target`.
    Create,
    /// Changes an existing record: needs a `target`.
    Update,
    /// Anything else (send a message, …): neither.
    Other,
}

/// An action and its fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionSpec {
    /// `app.entity.verb`.
    pub id: String,
    pub kind: ActionKind,
    #[serde(default)]
    pub description: String,
    /// Fields the step may set.
    #[serde(default)]
    pub fields: Vec<FieldSpec>,
    /// Fields of the action's output (`steps.<id>.<field>`). `id` is always
    /// available; an empty list means the output is not described.
    #[serde(default)]
    pub output: Vec<FieldSpec>,
    /// Whether the vendor can look a record up by the step's `dedupe.by`
    /// keys (find-or-create). A catalog built from connectors sets it from
    /// what each action declares; a hand-made catalog gets `true`.
    #[serde(default = "searchable_by_default")]
    pub searchable: bool,
}

fn searchable_by_default() -> bool {
    true
}

impl ActionSpec {
    pub fn new(id: impl Into<String>, kind: ActionKind, fields: Vec<FieldSpec>) -> Self {
        Self {
            id: id.into(),
            kind,
            description: String::new(),
            fields,
            output: Vec::new(),
            searchable: true,
        }
    }

    /// Adds the output fields.
    pub fn with_output(mut self, output: Vec<FieldSpec>) -> Self {
        self.output = output;
        self
    }

    pub fn field(&self, name: &str) -> Option<&FieldSpec> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// A catalog held in memory: connectors can build one, tests use it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaticCatalog {
    events: BTreeMap<String, EventKindSpec>,
    actions: BTreeMap<String, ActionSpec>,
}

impl StaticCatalog {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_event(mut self, spec: EventKindSpec) -> Self {
        self.events.insert(spec.kind.clone(), spec);
        self
    }

    pub fn with_action(mut self, spec: ActionSpec) -> Self {
        self.actions.insert(spec.id.clone(), spec);
        self
    }

    /// Adds everything of another catalog (e.g. one per connector).
    pub fn merge(mut self, other: StaticCatalog) -> Self {
        self.events.extend(other.events);
        self.actions.extend(other.actions);
        self
    }
}

impl Catalog for StaticCatalog {
    fn event_kind(&self, kind: &str) -> Option<&EventKindSpec> {
        self.events.get(kind)
    }

    fn action(&self, id: &str) -> Option<&ActionSpec> {
        self.actions.get(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn literal_checks_per_type() {
        let ok = [
            (FieldType::String, json!("x")),
            (FieldType::Number, json!("1.5")),
            (FieldType::Integer, json!(3)),
            (FieldType::Boolean, json!(false)),
            (FieldType::Date, json!("2026-05-08")),
            (FieldType::DateTime, json!("08/05/2026 15:32:47")),
            (FieldType::Phone, json!("+7 916 123-45-67")),
            (FieldType::Email, json!("a@b.ru")),
            (FieldType::Money, json!(10.5)),
            (FieldType::Enum(vec!["PENDING".into()]), json!("PENDING")),
            (FieldType::Object, json!({})),
            (FieldType::Array, json!([])),
            (FieldType::Any, json!([1])),
            (FieldType::Integer, Value::Null),
        ];
        for (ty, value) in ok {
            assert_eq!(ty.check_literal(&value), Ok(()), "{ty:?} {value}");
        }
        let bad = [
            (FieldType::String, json!({})),
            (FieldType::Number, json!("many")),
            (FieldType::Integer, json!(1.5)),
            (FieldType::Boolean, json!("yes")),
            (FieldType::Date, json!("tomorrow")),
            (FieldType::Phone, json!("n/a")),
            (FieldType::Email, json!("nobody")),
            (FieldType::Enum(vec!["A".into()]), json!("B")),
            (FieldType::Object, json!([])),
            (FieldType::Array, json!({})),
        ];
        for (ty, value) in bad {
            assert!(ty.check_literal(&value).is_err(), "{ty:?} {value}");
        }
    }

    #[test]
    fn field_spec_serde_is_flat() {
        let spec = FieldSpec::required("status", FieldType::Enum(vec!["A".into()]));
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["type"], "enum");
        assert_eq!(json["values"], json!(["A"]));
        let back: FieldSpec = serde_json::from_value(json).unwrap();
        assert_eq!(back, spec);
    }
}
