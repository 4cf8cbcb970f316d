//! The entry points of the fuzz targets (`shared/fuzz/`, run by `infra/fuzz.sh`)
//! and of the test that replays their corpus and crash inputs
//! (`tests/fuzz_replay.rs`): one function per target, so that an input the
//! fuzzer saved fails the normal test run the same way. Not for production
//! use; each function panics when an invariant breaks — that is how a fuzz
//! target reports a finding.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::catalog::Catalog;
use crate::error::{ValidationErrorKind, ValidationErrors};
use crate::event::{Event, EventId, Subject};
use crate::limits::{MAX_FIELD_OUTPUT_BYTES, RenderLimit};
use crate::model::Automation;
use crate::plan::StepPlan;
use crate::render::{CompiledAutomation, RenderContext};
use crate::validate::validate;

/// How far an automation document got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AutomationOutcome {
    /// It parsed as JSON or YAML.
    pub parsed: bool,
    /// [`validate()`] accepted it.
    pub valid: bool,
    /// [`CompiledAutomation::compile`] accepted it.
    pub compiled: bool,
}

/// Target `automation_parse`: the bytes as a JSON and as a YAML automation,
/// each validated against `catalog`, compiled, written back and (when it
/// compiles) run against a small event.
///
/// Invariants: nothing panics; what `validate` accepts compiles; a parsed
/// automation survives a JSON round trip.
pub fn automation_parse(data: &[u8], catalog: &dyn Catalog) -> AutomationOutcome {
    let mut outcome = AutomationOutcome::default();
    let from_yaml = std::str::from_utf8(data)
        .ok()
        .and_then(|text| Automation::from_yaml_str(text).ok());
    let from_json = serde_json::from_slice::<Automation>(data).ok();
    for automation in [from_json, from_yaml].into_iter().flatten() {
        outcome.parsed = true;
        let valid = validate(&automation, catalog).is_ok();
        let compiled = CompiledAutomation::compile(&automation);
        assert!(
            !valid || compiled.is_ok(),
            "validate() accepted an automation compile() refuses: {:?}",
            compiled.err()
        );
        outcome.valid |= valid;
        if let Ok(json) = automation.to_json_string() {
            let back = Automation::from_json_str(&json).ok();
            assert!(
                back.as_ref() == Some(&automation),
                "the automation does not survive a JSON round trip: {json}"
            );
        }
        if let Ok(compiled) = compiled {
            outcome.compiled = true;
            run(
                &compiled,
                &automation,
                json!({"id": 1, "name": "Ann", "phone": "+79161234567", "tags": ["a", "b"]}),
            );
        }
    }
    outcome
}

/// What became of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateOutcome {
    /// Compiling refused it (syntax, unknown names, unsupported tags, size).
    Refused,
    /// It rendered, within the limits.
    Rendered,
    /// Rendering failed for an ordinary reason (a missing value…).
    Failed,
    /// Rendering stopped at a bound.
    Limit(RenderLimit),
}

/// Target `template_render`: the bytes up to the first NUL are a field
/// template, the rest the event's data as JSON (a small default when it is
/// not JSON). The template is rendered through the public path (an
/// automation compiled and its step rendered), with the bounds of
/// [`crate::limits`].
///
/// Invariants: nothing panics (which includes the stack and memory: the
/// fuzzer runs with a malloc limit far below what an unbounded template
/// reaches); a rendered string stays within the field cap; rendering twice
/// gives the same result.
pub fn template_render(data: &[u8]) -> TemplateOutcome {
    let (template, event_json) = match data.iter().position(|byte| *byte == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, &[][..]),
    };
    let template = String::from_utf8_lossy(template).into_owned();
    let data = serde_json::from_slice::<Value>(event_json).unwrap_or_else(|_| {
        json!({"name": "Иван", "phone": "8 (916) 123-45-67", "sum": "1500.50",
               "tags": ["vip", "", null], "items": [{"sku": "A", "qty": 2}, {"sku": "B", "qty": 1}],
               "created": "2026-05-08T12:32:47Z"})
    });
    let document = json!({
        "id": "fuzz",
        "name": "fuzz",
        "trigger": {"connection": "source", "event": "fuzz.thing.happened"},
        "steps": [{
            "id": "render",
            "action": "fuzz.record.create",
            "connection": "target",
            "fields": {"value": template},
        }],
    });
    let Ok(automation) = serde_json::from_value::<Automation>(document) else {
        return TemplateOutcome::Refused;
    };
    let compiled = match CompiledAutomation::compile(&automation) {
        Ok(compiled) => compiled,
        Err(errors) => {
            assert_no_false_syntax_error(&template, &errors);
            return TemplateOutcome::Refused;
        }
    };
    let event = event(data);
    let outputs = BTreeMap::from([("earlier".to_owned(), event.data.clone())]);
    let links = BTreeMap::from([("order".to_owned(), "L-1".to_owned())]);
    let connections = BTreeMap::from([("target".to_owned(), json!({"default_region": "RU"}))]);
    let ctx = RenderContext::new(&event, at())
        .with_steps(&outputs)
        .with_links(&links)
        .with_connections(&connections);
    let first = compiled.render_step(0, &ctx);
    let second = compiled.render_step(0, &ctx);
    assert!(first == second, "rendering is not deterministic");
    match first {
        Ok(StepPlan::Call(request)) => {
            if let Some(Value::String(text)) = request.fields.get("value") {
                assert!(
                    text.len() <= MAX_FIELD_OUTPUT_BYTES,
                    "a field rendered {} bytes",
                    text.len()
                );
            }
            TemplateOutcome::Rendered
        }
        Ok(StepPlan::Skip { .. }) => TemplateOutcome::Rendered,
        Err(err) => match err.limit {
            Some(limit) => TemplateOutcome::Limit(limit),
            None => TemplateOutcome::Failed,
        },
    }
}

/// The rewrite of [`crate::sandbox`] must not turn a template minijinja
/// parses into a syntax error (beyond minijinja's own nesting limit, which
/// one call per operator chain can reach).
fn assert_no_false_syntax_error(template: &str, errors: &ValidationErrors) {
    let suspicious = errors.iter().any(|error| {
        error.kind == ValidationErrorKind::TemplateSyntax
            && !error.message.contains("maximum recursion limits")
    });
    if !suspicious {
        return;
    }
    // A syntax error is only reported once the source passed the size and
    // token caps, so minijinja's parser is safe to run on it here.
    let (source, _) = crate::template::source_for(template);
    let parsed = minijinja::machinery::parse(&source, "t", Default::default(), Default::default());
    assert!(
        parsed.is_err(),
        "minijinja parses {source:?}, yet compiling refused it: {errors}"
    );
}

fn at() -> DateTime<Utc> {
    DateTime::from_timestamp(1_778_243_567, 0).unwrap_or_default()
}

fn event(data: Value) -> Event {
    Event {
        id: EventId::from_source("source", "1"),
        tenant: "t1".into(),
        connection: "source".into(),
        app: "fuzz".into(),
        kind: "fuzz.thing.happened".into(),
        subject: Subject {
            kind: "thing".into(),
            id: "1".into(),
        },
        occurred_at: at(),
        received_at: at(),
        data,
    }
}

/// Runs what the engine would for one event; only panics matter.
fn run(compiled: &CompiledAutomation, automation: &Automation, data: Value) {
    let mut event = event(data);
    event.connection = automation.trigger.connection.clone();
    event.kind = automation.trigger.event.clone();
    let connections: BTreeMap<String, Value> = automation
        .steps
        .iter()
        .map(|step| (step.connection.clone(), json!({"default_region": "RU"})))
        .collect();
    let ctx = RenderContext::new(&event, at()).with_connections(&connections);
    let _ = compiled.evaluate_filter(&ctx);
    for index in 0..compiled.step_count() {
        let _ = compiled.render_step(index, &ctx);
    }
}
