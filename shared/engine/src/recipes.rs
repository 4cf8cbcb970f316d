//! Recipes: ready automations for the integrations crmbridge ships
//! (recipes/*.yaml), instantiated by naming which connection plays each
//! role. The files are compiled in, so a deployment always has the recipes
//! of its own version.

use std::collections::BTreeMap;

use crmbridge_mapping::Automation;
use serde::Deserialize;

use crate::{EngineError, EngineResult, FieldError};

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
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub name: String,
    pub description: String,
    /// Role → the app a connection in that role must be.
    pub connections: BTreeMap<String, String>,
    pub automations: Vec<Automation>,
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
    pub fn instantiate(&self, roles: &BTreeMap<String, String>) -> EngineResult<Vec<Automation>> {
        let mut errors = Vec::new();
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
        Ok(self
            .automations
            .iter()
            .cloned()
            .map(|mut automation| {
                automation.trigger.connection = resolve(&automation.trigger.connection);
                for step in &mut automation.steps {
                    step.connection = resolve(&step.connection);
                }
                automation
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_recipe_parses_and_names_its_roles() {
        for (name, _) in RECIPES {
            let recipe = recipe(name).unwrap();
            assert_eq!(recipe.name, *name);
            assert!(!recipe.automations.is_empty());
            for automation in &recipe.automations {
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
    fn instantiation_fills_every_role_and_refuses_missing_ones() {
        let recipe = recipe("calltouch-moysklad").unwrap();
        let roles = BTreeMap::from([
            ("calltouch".to_owned(), "con_ct".to_owned()),
            ("moysklad".to_owned(), "con_ms".to_owned()),
        ]);
        let automations = recipe.instantiate(&roles).unwrap();
        assert_eq!(automations.len(), 4);
        assert_eq!(automations[0].trigger.connection, "con_ct");
        assert_eq!(automations[0].steps[1].connection, "con_ms");
        let err = recipe
            .instantiate(&BTreeMap::from([("calltouch".to_owned(), "x".to_owned())]))
            .unwrap_err();
        assert_eq!(err.status(), 422);
    }
}
