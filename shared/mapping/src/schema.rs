//! The JSON Schema of the automation format, generated from the model so it
//! cannot drift. A copy is checked in as `automation.schema.json` for
//! editors (YAML language servers validate against it); a test fails when
//! the copy is stale.

use crate::model::Automation;

/// The JSON Schema (draft 2020-12) of an automation document, as pretty
/// JSON with a trailing newline — exactly the checked-in file's content.
pub fn automation_schema_json() -> String {
    let schema = schemars::schema_for!(Automation);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}
