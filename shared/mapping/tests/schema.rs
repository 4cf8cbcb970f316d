//! The checked-in JSON Schema matches the model, and the seed automations
//! are instances of it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use crmbridge_mapping::schema::automation_schema_json;

fn schema_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("automation.schema.json")
}

#[test]
fn checked_in_schema_is_up_to_date() {
    let generated = automation_schema_json();
    let path = schema_path();
    if std::env::var_os("UPDATE_AUTOMATION_SCHEMA").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    // Compared as JSON values, so a workspace build that turns on
    // serde_json's preserve_order (key order) does not make it stale.
    let parse = |text: &str| serde_json::from_str::<serde_json::Value>(text).ok();
    assert!(
        parse(&checked_in).is_some() && parse(&checked_in) == parse(&generated),
        "shared/mapping/automation.schema.json is stale; regenerate it with\n\
         UPDATE_AUTOMATION_SCHEMA=1 cargo test -p crmbridge-mapping --test suite schema\n\
         and commit the result"
    );
}

#[test]
fn schema_describes_the_document() {
    let schema: serde_json::Value = serde_json::from_str(&automation_schema_json()).unwrap();
    assert_eq!(schema["title"], "Automation");
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, vec!["id", "name", "trigger", "steps"]);
    assert_eq!(schema["additionalProperties"], false);
    let defs = schema["$defs"].as_object().unwrap();
    for name in [
        "Trigger",
        "Step",
        "Dedupe",
        "LinkSpec",
        "TargetSpec",
        "Filter",
    ] {
        assert!(
            defs.contains_key(name),
            "{name} missing from {:?}",
            defs.keys()
        );
    }
}
