//! Conditions that decide whether an automation (or one step) runs for an
//! event: `status != complete`, `status in [...]`, `amount > 1000`, nested
//! `all`/`any`. This module holds the document form (serde and schema);
//! evaluation lives with the renderer, which owns the context.
//!
//! In YAML a condition is a map with `field` and exactly one operator:
//!
//! ```yaml
//! filter:
//!   all:
//!     - { field: status, ne: complete }
//!     - any:
//!         - { field: amount, gte: 1000 }
//!         - { field: tags, contains: vip }
//! ```
//!
//! `field` is a dotted path rooted at `event` (the default when the first
//! segment is not a root), `steps`, `links`, `connection` or `now`.
//! Operand strings containing `{{` are templates (`lt: "{{ now }}"`).

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::Error as _;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// A condition tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Every child holds (an empty `all` always holds).
    All(Vec<Filter>),
    /// At least one child holds.
    Any(Vec<Filter>),
    /// One comparison.
    Condition(Condition),
}

/// `field <operator> operand`.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// Dotted path of the value to test, e.g. `status`, `event.client.phone`,
    /// `steps.customer.id`.
    pub field: String,
    pub op: Operator,
}

/// The comparison of a condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Operator {
    /// Loosely equal (`200 == "200"`, `true == "True"`).
    Eq(Value),
    /// Not loosely equal; a missing field is not equal to anything.
    Ne(Value),
    /// Equal to one of the list (an array, or a template rendering one).
    In(Value),
    /// Equal to none of the list; a missing field passes.
    NotIn(Value),
    /// Substring of a string, element of an array, key of an object.
    Contains(Value),
    /// The string starts with the operand.
    StartsWith(Value),
    /// Present, not null and not an empty string.
    Exists,
    /// Absent, null or an empty string.
    Missing,
    /// Greater than (numbers, or dates in any supported format).
    Gt(Value),
    /// Greater than or equal.
    Gte(Value),
    /// Less than.
    Lt(Value),
    /// Less than or equal.
    Lte(Value),
}

/// The operator keys, as written in documents.
pub(crate) const OPERATOR_KEYS: &[&str] = &[
    "eq",
    "ne",
    "in",
    "not_in",
    "contains",
    "starts_with",
    "exists",
    "missing",
    "gt",
    "gte",
    "lt",
    "lte",
];

impl Operator {
    /// The key of the operator in documents (`not_in`, `gte`, …).
    pub fn key(&self) -> &'static str {
        match self {
            Operator::Eq(_) => "eq",
            Operator::Ne(_) => "ne",
            Operator::In(_) => "in",
            Operator::NotIn(_) => "not_in",
            Operator::Contains(_) => "contains",
            Operator::StartsWith(_) => "starts_with",
            Operator::Exists => "exists",
            Operator::Missing => "missing",
            Operator::Gt(_) => "gt",
            Operator::Gte(_) => "gte",
            Operator::Lt(_) => "lt",
            Operator::Lte(_) => "lte",
        }
    }

    /// The operand, if the operator takes one.
    pub fn operand(&self) -> Option<&Value> {
        match self {
            Operator::Eq(v)
            | Operator::Ne(v)
            | Operator::In(v)
            | Operator::NotIn(v)
            | Operator::Contains(v)
            | Operator::StartsWith(v)
            | Operator::Gt(v)
            | Operator::Gte(v)
            | Operator::Lt(v)
            | Operator::Lte(v) => Some(v),
            Operator::Exists | Operator::Missing => None,
        }
    }

    fn from_key(key: &str, operand: &Value) -> Result<Self, String> {
        let list = |operand: &Value| -> Result<Value, String> {
            match operand {
                Value::Array(_) => Ok(operand.clone()),
                Value::String(s) if is_template(s) => Ok(operand.clone()),
                _ => Err(format!(
                    "'{key}' needs a list (or a template rendering one)"
                )),
            }
        };
        let flag = |operand: &Value| -> Result<bool, String> {
            operand
                .as_bool()
                .ok_or_else(|| format!("'{key}' takes true or false"))
        };
        Ok(match key {
            "eq" => Operator::Eq(operand.clone()),
            "ne" => Operator::Ne(operand.clone()),
            "in" => Operator::In(list(operand)?),
            "not_in" => Operator::NotIn(list(operand)?),
            "contains" => Operator::Contains(operand.clone()),
            "starts_with" => match operand {
                Value::String(_) | Value::Number(_) => Operator::StartsWith(operand.clone()),
                _ => return Err("'starts_with' needs a string".to_owned()),
            },
            "exists" => {
                if flag(operand)? {
                    Operator::Exists
                } else {
                    Operator::Missing
                }
            }
            "missing" => {
                if flag(operand)? {
                    Operator::Missing
                } else {
                    Operator::Exists
                }
            }
            "gt" => Operator::Gt(operand.clone()),
            "gte" => Operator::Gte(operand.clone()),
            "lt" => Operator::Lt(operand.clone()),
            "lte" => Operator::Lte(operand.clone()),
            other => {
                return Err(format!(
                    "unknown operator '{other}' (expected one of {})",
                    OPERATOR_KEYS.join(", ")
                ));
            }
        })
    }

    /// The symbol used in reasons (`=`, `≠`, `>`, `in`, …).
    pub(crate) fn symbol(&self) -> &'static str {
        match self {
            Operator::Eq(_) => "=",
            Operator::Ne(_) => "!=",
            Operator::In(_) => "in",
            Operator::NotIn(_) => "not in",
            Operator::Contains(_) => "contains",
            Operator::StartsWith(_) => "starts with",
            Operator::Exists => "exists",
            Operator::Missing => "is missing",
            Operator::Gt(_) => ">",
            Operator::Gte(_) => ">=",
            Operator::Lt(_) => "<",
            Operator::Lte(_) => "<=",
        }
    }
}

/// Whether a string is a template rather than a literal.
pub(crate) fn is_template(text: &str) -> bool {
    text.contains("{{") || text.contains("{%") || text.contains("{#")
}

impl Filter {
    /// Reads a filter from its JSON form, with an error naming where inside
    /// the filter the problem is.
    pub fn from_json(value: &Value) -> Result<Self, String> {
        Self::parse(value, "")
    }

    fn parse(value: &Value, at: &str) -> Result<Self, String> {
        let here = |message: String| {
            if at.is_empty() {
                message
            } else {
                format!("{at}: {message}")
            }
        };
        let Value::Object(map) = value else {
            return Err(here(
                "a filter is a map: {all: [...]}, {any: [...]} or {field: ..., <operator>: ...}"
                    .to_owned(),
            ));
        };
        for group in ["all", "any"] {
            if let Some(children) = map.get(group) {
                if map.len() != 1 {
                    return Err(here(format!(
                        "'{group}' cannot be combined with other keys"
                    )));
                }
                let Value::Array(children) = children else {
                    return Err(here(format!("'{group}' needs a list of filters")));
                };
                let parsed = children
                    .iter()
                    .enumerate()
                    .map(|(i, child)| {
                        let child_at = if at.is_empty() {
                            format!("{group}[{i}]")
                        } else {
                            format!("{at}.{group}[{i}]")
                        };
                        Self::parse(child, &child_at)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                return Ok(if group == "all" {
                    Filter::All(parsed)
                } else {
                    Filter::Any(parsed)
                });
            }
        }
        let field = match map.get("field") {
            Some(Value::String(field)) => field.clone(),
            Some(_) => return Err(here("'field' must be a string path".to_owned())),
            None => {
                return Err(here(
                    "a condition needs 'field' (or use 'all' / 'any' to group filters)".to_owned(),
                ));
            }
        };
        let operators: Vec<(&String, &Value)> = map.iter().filter(|(k, _)| *k != "field").collect();
        match operators.as_slice() {
            [(key, operand)] => Operator::from_key(key, operand)
                .map(|op| Filter::Condition(Condition { field, op }))
                .map_err(here),
            [] => Err(here(format!(
                "condition on '{field}' has no operator (one of {})",
                OPERATOR_KEYS.join(", ")
            ))),
            many => Err(here(format!(
                "condition on '{field}' has several operators ({}); use 'all' to combine them",
                many.iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// The JSON form.
    pub fn to_json(&self) -> Value {
        match self {
            Filter::All(children) => {
                serde_json::json!({ "all": children.iter().map(Filter::to_json).collect::<Vec<_>>() })
            }
            Filter::Any(children) => {
                serde_json::json!({ "any": children.iter().map(Filter::to_json).collect::<Vec<_>>() })
            }
            Filter::Condition(condition) => {
                let mut map = Map::new();
                map.insert("field".to_owned(), Value::String(condition.field.clone()));
                let operand = match &condition.op {
                    Operator::Exists | Operator::Missing => Value::Bool(true),
                    other => other.operand().cloned().unwrap_or(Value::Null),
                };
                map.insert(condition.op.key().to_owned(), operand);
                Value::Object(map)
            }
        }
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_json())
    }
}

impl Serialize for Filter {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.to_json() {
            Value::Object(map) => {
                let mut out = serializer.serialize_map(Some(map.len()))?;
                for (key, value) in &map {
                    out.serialize_entry(key, value)?;
                }
                out.end()
            }
            other => other.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Filter {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Filter::from_json(&value).map_err(D::Error::custom)
    }
}

impl JsonSchema for Filter {
    fn schema_name() -> Cow<'static, str> {
        Cow::Borrowed("Filter")
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let filter = generator.subschema_for::<Filter>().to_value();
        let mut operator_props = Map::new();
        let mut condition_variants = Vec::new();
        for key in OPERATOR_KEYS {
            let schema = match *key {
                "in" | "not_in" => serde_json::json!({
                    "description": "A list, or a template rendering one.",
                    "type": ["array", "string"]
                }),
                "exists" | "missing" => serde_json::json!({ "type": "boolean" }),
                _ => {
                    serde_json::json!({ "description": "Operand; a string containing '{{' is a template." })
                }
            };
            operator_props.insert((*key).to_owned(), schema);
            condition_variants.push(serde_json::json!({ "required": ["field", key] }));
        }
        let mut condition_props = operator_props;
        condition_props.insert(
            "field".to_owned(),
            serde_json::json!({
                "description": "Dotted path: event field (default root), or rooted at event, steps, links, connection, now.",
                "type": "string"
            }),
        );
        let schema = serde_json::json!({
            "description": "A condition tree: {all: [...]}, {any: [...]} or {field: ..., <operator>: operand} with exactly one operator.",
            "oneOf": [
                {
                    "type": "object",
                    "properties": { "all": { "type": "array", "items": filter.clone() } },
                    "required": ["all"],
                    "additionalProperties": false
                },
                {
                    "type": "object",
                    "properties": { "any": { "type": "array", "items": filter } },
                    "required": ["any"],
                    "additionalProperties": false
                },
                {
                    "type": "object",
                    "properties": condition_props,
                    "minProperties": 2,
                    "maxProperties": 2,
                    "additionalProperties": false,
                    "oneOf": condition_variants
                }
            ]
        });
        match schema {
            Value::Object(map) => Schema::from(map),
            _ => Schema::default(),
        }
    }
}

/// Where a field path points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Root {
    Event,
    Steps,
    Links,
    Connection,
    Now,
}

impl Root {
    pub(crate) fn from_name(name: &str) -> Option<Root> {
        Some(match name {
            "event" => Root::Event,
            "steps" => Root::Steps,
            "links" => Root::Links,
            "connection" => Root::Connection,
            "now" => Root::Now,
            _ => return None,
        })
    }
}

/// A parsed condition field: its root and the segments under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldPath {
    pub(crate) root: Root,
    pub(crate) segments: Vec<String>,
}

impl FieldPath {
    /// `status` → event.status; `steps.customer.id` → steps / [customer, id].
    pub(crate) fn parse(text: &str) -> Result<FieldPath, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty field path".to_owned());
        }
        let parts: Vec<&str> = text.split('.').collect();
        if parts.iter().any(|part| part.is_empty()) {
            return Err(format!("'{text}' is not a dotted path"));
        }
        let (root, rest) = match Root::from_name(parts[0]) {
            Some(root) => (root, &parts[1..]),
            None => (Root::Event, &parts[..]),
        };
        Ok(FieldPath {
            root,
            segments: rest.iter().map(|s| (*s).to_owned()).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_operator_round_trips_through_json() {
        for (key, operand) in [
            ("eq", json!("a")),
            ("ne", json!("a")),
            ("in", json!(["a", "b"])),
            ("not_in", json!(["a"])),
            ("contains", json!("x")),
            ("starts_with", json!("+7")),
            ("exists", json!(true)),
            ("missing", json!(true)),
            ("gt", json!(1)),
            ("gte", json!(1)),
            ("lt", json!("2026-01-01")),
            ("lte", json!(2.5)),
        ] {
            let doc = json!({"field": "x", key: operand});
            let filter = Filter::from_json(&doc).unwrap();
            assert_eq!(filter.to_json(), doc, "{key}");
            let Filter::Condition(condition) = &filter else {
                panic!("not a condition")
            };
            assert_eq!(condition.op.key(), key);
        }
    }

    #[test]
    fn exists_false_means_missing() {
        let filter = Filter::from_json(&json!({"field": "x", "exists": false})).unwrap();
        assert_eq!(
            filter,
            Filter::Condition(Condition {
                field: "x".into(),
                op: Operator::Missing
            })
        );
    }

    #[test]
    fn nested_groups_parse_and_errors_name_where() {
        let doc = json!({"all": [{"field": "a", "eq": 1}, {"any": [{"field": "b"}]}]});
        let err = Filter::from_json(&doc).unwrap_err();
        assert!(
            err.starts_with("all[1].any[0]: condition on 'b' has no operator"),
            "{err}"
        );
        let two = Filter::from_json(&json!({"field": "a", "eq": 1, "ne": 2})).unwrap_err();
        assert!(two.contains("several operators"), "{two}");
        let unknown = Filter::from_json(&json!({"field": "a", "like": 1})).unwrap_err();
        assert!(unknown.contains("unknown operator 'like'"), "{unknown}");
        let list = Filter::from_json(&json!({"field": "a", "in": 1})).unwrap_err();
        assert!(list.contains("needs a list"), "{list}");
        assert!(Filter::from_json(&json!([1])).is_err());
        assert!(Filter::from_json(&json!({"all": [], "field": "x"})).is_err());
    }

    #[test]
    fn yaml_form_reads() {
        let filter: Filter = serde_yaml::from_str(
            "any:\n  - { field: status, ne: complete }\n  - { field: n, gt: 3 }\n",
        )
        .unwrap();
        assert!(matches!(filter, Filter::Any(ref c) if c.len() == 2));
    }

    #[test]
    fn field_paths_default_to_event() {
        let path = FieldPath::parse("status").unwrap();
        assert_eq!(path.root, Root::Event);
        assert_eq!(path.segments, vec!["status".to_owned()]);
        let path = FieldPath::parse("steps.customer.id").unwrap();
        assert_eq!(path.root, Root::Steps);
        assert!(FieldPath::parse("a..b").is_err());
        assert!(FieldPath::parse("").is_err());
    }
}
