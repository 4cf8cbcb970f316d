//! Recipes: ready automations for the integrations crmbridge ships
//! (recipes/*.yaml), instantiated by naming which connection plays each
//! role. The files are compiled in, so a deployment always has the recipes
//! of its own version.

use std::collections::BTreeMap;

use crmbridge_mapping::Automation;
use serde::Deserialize;
use serde_json::Value;

use crmbridge_engine::{EngineError, EngineResult, FieldError};

/// Every recipe file, by name.
pub const RECIPES: &[(&str, &str)] = &[
    (
        "calltouch-moysklad",
        include_str!("../../../recipes/calltouch-moysklad.yaml"),
    ),
    (
        "calltouch-retailcrm",
        include_str!("../../../recipes/calltouch-retailcrm.yaml"),
    ),
    (
        "kado-hubspot",
        include_str!("../../../recipes/kado-hubspot.yaml"),
    ),
    (
        "nethunt-worksection",
        include_str!("../../../recipes/nethunt-worksection.yaml"),
    ),
    (
        "ringostat-zoho",
        include_str!("../../../recipes/ringostat-zoho.yaml"),
    ),
    (
        "verbox-planfix",
        include_str!("../../../recipes/verbox-planfix.yaml"),
    ),
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub name: String,
    pub description: String,
    /// Role → the app a connection in that role must be.
    pub connections: BTreeMap<String, String>,
    /// What the user chooses when instantiating (a project, a field, a
    /// value): written `${name}` anywhere in the automations, keys too.
    #[serde(default)]
    pub parameters: BTreeMap<String, RecipeParameter>,
    /// Automation documents, parsed once their parameters are filled in
    /// (a placeholder may stand where only an enum value is valid).
    pub automations: Vec<Value>,
    /// Roles whose existing records are imported when the recipe is
    /// instantiated (the backfill before live sync), in this order.
    #[serde(default)]
    pub import: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecipeParameter {
    pub description: String,
    /// Used when the instantiation gives none; without one the parameter
    /// is required.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub default: Option<Value>,
    /// What a value must be; without one, anything (a template, a value).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<ParameterKind>,
    /// A valid value, shown in the docs and used by the recipe checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub example: Option<Value>,
}

/// The type of a recipe parameter. Values of these types are written into
/// templates, so they may not carry template syntax or quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ParameterKind {
    Boolean,
    Number,
    /// An e-mail address.
    Email,
    /// An object whose values are e-mail addresses (keys: any plain text).
    EmailMap,
}

/// Text that can sit inside a template and inside its string literals.
fn plain_text(text: &str) -> bool {
    !["{{", "}}", "{%", "%}", "{#", "#}", "'", "\\"]
        .iter()
        .any(|bad| text.contains(bad))
}

fn is_email(text: &str) -> bool {
    let mut parts = text.split('@');
    matches!((parts.next(), parts.next(), parts.next()),
        (Some(local), Some(domain), None)
            if !local.is_empty() && domain.contains('.') && !text.contains(char::is_whitespace))
        && plain_text(text)
}

impl ParameterKind {
    /// The value as templates compare it: e-mail maps' keys and values in
    /// lower case (the events they are looked up with are).
    fn normalized(self, value: &Value) -> Value {
        match (self, value) {
            (ParameterKind::EmailMap, Value::Object(map)) => Value::Object(
                map.iter()
                    .map(|(k, v)| {
                        let v = v
                            .as_str()
                            .map_or_else(|| v.clone(), |s| Value::String(s.to_lowercase()));
                        (k.trim().to_lowercase(), v)
                    })
                    .collect(),
            ),
            (ParameterKind::Email, Value::String(s)) => Value::String(s.trim().to_lowercase()),
            _ => value.clone(),
        }
    }

    /// Why `value` is not of this kind, if it is not.
    fn check(self, value: &Value) -> Option<String> {
        match self {
            ParameterKind::Boolean if !value.is_boolean() => Some("must be true or false".into()),
            ParameterKind::Number if !value.is_number() => Some("must be a number".into()),
            ParameterKind::Email => match value.as_str() {
                Some(text) if is_email(text) => None,
                _ => Some(format!("must be an e-mail address, not {value}")),
            },
            ParameterKind::EmailMap => {
                let Some(map) = value.as_object() else {
                    return Some("must be an object: key → e-mail".into());
                };
                map.iter().find_map(|(key, email)| {
                    if !plain_text(key) || key.contains('"') {
                        return Some(format!(
                            "the key {key:?} may not contain quotes or template syntax"
                        ));
                    }
                    match email.as_str() {
                        Some(text) if is_email(text) => None,
                        _ => Some(format!("{key}: must be an e-mail address, not {email}")),
                    }
                })
            }
            _ => None,
        }
    }
}

/// Replaces `${name}` in every string and key. A string that is exactly
/// one placeholder takes the parameter's value with its type (a number
/// stays a number).
fn substitute(value: &mut Value, params: &BTreeMap<String, Value>) {
    fn text(value: &Value) -> String {
        match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
    fn replace_all(s: &str, params: &BTreeMap<String, Value>) -> String {
        let mut out = s.to_owned();
        for (name, value) in params {
            out = out.replace(&format!("${{{name}}}"), &text(value));
        }
        out
    }
    match value {
        Value::String(s) => {
            let whole = s
                .strip_prefix("${")
                .and_then(|rest| rest.strip_suffix('}'))
                .and_then(|name| params.get(name));
            *value = match whole {
                Some(found) => found.clone(),
                None => Value::String(replace_all(s, params)),
            };
        }
        Value::Array(items) => items.iter_mut().for_each(|v| substitute(v, params)),
        Value::Object(map) => {
            let entries: Vec<(String, Value)> = std::mem::take(map).into_iter().collect();
            for (key, mut inner) in entries {
                substitute(&mut inner, params);
                map.insert(replace_all(&key, params), inner);
            }
        }
        _ => {}
    }
}

pub fn recipe(name: &str) -> EngineResult<Recipe> {
    let (_, text) =
        RECIPES
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| EngineError::NotFound {
                what: "recipe",
                id: name.to_owned(),
            })?;
    serde_yaml::from_str(text).map_err(|err| EngineError::Corrupt {
        what: format!("recipe {name}"),
        message: err.to_string(),
    })
}

impl Recipe {
    /// The recipe's automations with each role replaced by a connection id.
    pub fn instantiate(
        &self,
        roles: &BTreeMap<String, String>,
        parameters: &BTreeMap<String, Value>,
    ) -> EngineResult<Vec<Automation>> {
        let mut errors = Vec::new();
        let mut values = BTreeMap::new();
        for (name, spec) in &self.parameters {
            match parameters.get(name).or(spec.default.as_ref()) {
                Some(value) => {
                    if let Some(problem) = spec.kind.and_then(|kind| kind.check(value)) {
                        errors.push(FieldError {
                            field: format!("parameters.{name}"),
                            message: problem,
                        });
                    }
                    values.insert(
                        name.clone(),
                        spec.kind
                            .map_or_else(|| value.clone(), |k| k.normalized(value)),
                    );
                }
                None => errors.push(FieldError {
                    field: format!("parameters.{name}"),
                    message: format!("required: {}", spec.description),
                }),
            }
        }
        for name in parameters
            .keys()
            .filter(|n| !self.parameters.contains_key(*n))
        {
            errors.push(FieldError {
                field: format!("parameters.{name}"),
                message: format!(
                    "the recipe has no parameter '{name}'; parameters: {}",
                    self.parameters
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        for role in self.connections.keys() {
            if !roles.contains_key(role) {
                errors.push(FieldError {
                    field: format!("connections.{role}"),
                    message: format!(
                        "the recipe needs a {} connection here",
                        self.connections[role]
                    ),
                });
            }
        }
        for role in roles.keys().filter(|r| !self.connections.contains_key(*r)) {
            errors.push(FieldError {
                field: format!("connections.{role}"),
                message: format!(
                    "the recipe has no role '{role}'; roles: {}",
                    self.connections
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        if !errors.is_empty() {
            return Err(EngineError::Invalid(errors));
        }
        let resolve = |role: &str| roles.get(role).cloned().unwrap_or_else(|| role.to_owned());
        let mut out = Vec::with_capacity(self.automations.len());
        for (index, document) in self.automations.iter().enumerate() {
            let mut document = document.clone();
            substitute(&mut document, &values);
            let mut automation: Automation = serde_json::from_value(document).map_err(|err| {
                EngineError::Invalid(vec![FieldError {
                    field: format!("automations[{index}]"),
                    message: format!("with these parameters the automation is invalid: {err}"),
                }])
            })?;
            automation.trigger.connection = resolve(&automation.trigger.connection);
            for step in &mut automation.steps {
                step.connection = resolve(&step.connection);
            }
            out.push(automation);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    /// Every parameter without a default, filled with a sample.
    fn samples(recipe: &Recipe) -> BTreeMap<String, Value> {
        recipe
            .parameters
            .iter()
            .filter(|(_, spec)| spec.default.is_none())
            .map(|(name, spec)| {
                let sample = spec
                    .example
                    .clone()
                    .unwrap_or_else(|| Value::String(format!("sample-{name}")));
                (name.clone(), sample)
            })
            .collect()
    }

    #[test]
    fn every_recipe_parses_and_names_its_roles() {
        for (name, _) in RECIPES {
            let recipe = recipe(name).unwrap();
            assert_eq!(recipe.name, *name);
            assert!(!recipe.automations.is_empty());
            let roles: BTreeMap<String, String> = recipe
                .connections
                .keys()
                .map(|role| (role.clone(), role.clone()))
                .collect();
            let automations = recipe.instantiate(&roles, &samples(&recipe)).unwrap();
            let registry = crmbridge_connectors::Registry::builtin();
            for automation in &automations {
                if let Err(errors) = crmbridge_mapping::validate(automation, registry.catalog()) {
                    panic!("{name}/{}: {errors}", automation.id);
                }
            }
            let text = serde_json::to_string(&automations).unwrap();
            assert!(
                !text.contains("${"),
                "{name}: a placeholder is left: {text}"
            );
            for automation in &automations {
                assert!(
                    recipe
                        .connections
                        .contains_key(&automation.trigger.connection),
                    "{name}/{}",
                    automation.id
                );
                for step in &automation.steps {
                    assert!(
                        recipe.connections.contains_key(&step.connection),
                        "{name}/{}/{}",
                        automation.id,
                        step.id
                    );
                }
            }
        }
    }

    #[test]
    fn parameters_fill_values_and_keys_with_their_types() {
        let recipe = recipe("nethunt-worksection").unwrap();
        let roles = BTreeMap::from([
            ("nethunt".to_owned(), "con_nh".to_owned()),
            ("worksection".to_owned(), "con_ws".to_owned()),
        ]);
        let missing = recipe.instantiate(&roles, &BTreeMap::new()).unwrap_err();
        let EngineError::Invalid(errors) = missing else {
            panic!("expected 422");
        };
        assert_eq!(errors[0].field, "parameters.project");
        let params = BTreeMap::from([
            ("project".to_owned(), json!("6622")),
            ("close_field".to_owned(), json!("Stage")),
            ("priority".to_owned(), json!(8)),
            ("on_repeat".to_owned(), json!("always_create")),
        ]);
        let automations = recipe.instantiate(&roles, &params).unwrap();
        let task = &automations[0].steps[0];
        assert_eq!(task.fields["project"], json!("6622"));
        assert_eq!(task.fields["priority"], json!(8));
        assert_eq!(task.connection, "con_ws");
        assert_eq!(task.dedupe, crmbridge_mapping::Dedupe::AlwaysCreate);
        assert_eq!(automations[0].trigger.options["value"], json!("Won"));
        let update = &automations[1].steps[0];
        assert_eq!(update.fields["fields"], json!({"Stage": "Completed"}));
        let unknown = recipe
            .instantiate(
                &roles,
                &BTreeMap::from([
                    ("project".to_owned(), json!("1")),
                    ("colour".to_owned(), json!("red")),
                ]),
            )
            .unwrap_err();
        assert_eq!(unknown.status(), 422);
        let bad_mode = recipe
            .instantiate(
                &roles,
                &BTreeMap::from([
                    ("project".to_owned(), json!("1")),
                    ("on_repeat".to_owned(), json!("sometimes")),
                ]),
            )
            .unwrap_err();
        assert_eq!(bad_mode.status(), 422);
    }

    #[test]
    fn instantiation_fills_every_role_and_refuses_missing_ones() {
        let recipe = recipe("calltouch-moysklad").unwrap();
        let roles = BTreeMap::from([
            ("calltouch".to_owned(), "con_ct".to_owned()),
            ("moysklad".to_owned(), "con_ms".to_owned()),
        ]);
        let automations = recipe.instantiate(&roles, &BTreeMap::new()).unwrap();
        assert_eq!(automations.len(), 4);
        assert_eq!(automations[0].trigger.connection, "con_ct");
        assert_eq!(automations[0].steps[1].connection, "con_ms");
        let err = recipe
            .instantiate(
                &BTreeMap::from([("calltouch".to_owned(), "x".to_owned())]),
                &BTreeMap::new(),
            )
            .unwrap_err();
        assert_eq!(err.status(), 422);
    }

    #[test]
    fn typed_parameters_refuse_values_that_would_break_a_template() {
        let recipe = recipe("ringostat-zoho").unwrap();
        let roles = BTreeMap::from([
            ("ringostat".to_owned(), "c1".to_owned()),
            ("zoho".to_owned(), "c2".to_owned()),
        ]);
        let with = |employees: Value, senior: Value, before: Value| {
            let params = BTreeMap::from([
                ("employees".to_owned(), employees),
                ("senior_manager".to_owned(), senior),
                ("before_call".to_owned(), before),
            ]);
            match recipe.instantiate(&roles, &params) {
                Ok(_) => Vec::new(),
                Err(EngineError::Invalid(errors)) => errors,
                Err(other) => panic!("{other}"),
            }
        };
        assert!(
            with(
                json!({"102": "a@corp.example"}),
                json!("b@corp.example"),
                json!(true)
            )
            .is_empty()
        );
        let errors = with(
            json!({"102": "not-an-email", "x\"y": "a@corp.example"}),
            json!("b@corp.example' }}{{ 1"),
            json!("yes"),
        );
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "parameters.before_call",
                "parameters.employees",
                "parameters.senior_manager"
            ],
            "{errors:?}"
        );
    }
}
