//! Rendering is bounded: templates that would allocate without limit,
//! loop for ever or recurse until the stack overflows stop at a named
//! limit, with the path of the field; legitimate large templates render.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::BTreeMap;

use crmbridge_mapping::limits::{
    MAX_FIELD_OUTPUT_BYTES, MAX_LIST_ITEMS, MAX_STEP_OUTPUT_BYTES, MAX_TAG_TOKENS,
    MAX_TEMPLATE_BYTES, MAX_VALUE_BYTES,
};
use crmbridge_mapping::{
    Automation, CompiledAutomation, RenderContext, RenderError, RenderLimit, StepPlan,
    ValidationErrorKind, ValidationErrors,
};
use serde_json::{Value, json};

fn automation(fields: Value) -> Automation {
    Automation::from_json_str(
        &json!({
            "id": "bounds",
            "name": "bounds",
            "trigger": {"connection": "ct", "event": "calltouch.call.completed"},
            "steps": [
                {"id": "first", "action": "x.y.create", "connection": "ms", "fields": {"name": "ok"}},
                {"id": "second", "action": "x.y.create", "connection": "ms", "fields": fields},
            ]
        })
        .to_string(),
    )
    .unwrap()
}

fn compile(template: &str) -> Result<CompiledAutomation, ValidationErrors> {
    CompiledAutomation::compile(&automation(json!({ "title": template })))
}

fn data() -> Value {
    json!({
        "name": "Анна",
        "tags": ["a", "b"],
        "items": (0..2000).map(|i| json!({"sku": format!("SKU-{i}"), "qty": i % 7})).collect::<Vec<_>>(),
    })
}

/// Renders step 1 (`steps[1]`) with `fields`; the rendered fields or the error.
fn render_fields(fields: Value) -> Result<serde_json::Map<String, Value>, RenderError> {
    let compiled = CompiledAutomation::compile(&automation(fields)).unwrap();
    let event = common::event("calltouch.call.completed", "ct", ("call", "1"), data());
    let outputs = BTreeMap::new();
    let connections = BTreeMap::from([("ms".to_owned(), json!({"default_region": "RU"}))]);
    let ctx = RenderContext::new(&event, common::now())
        .with_steps(&outputs)
        .with_connections(&connections);
    match compiled.render_step(1, &ctx)? {
        StepPlan::Call(request) => Ok(request.fields),
        other => panic!("unexpected plan {other:?}"),
    }
}

fn render(template: &str) -> Result<Value, RenderError> {
    render_fields(json!({ "title": template })).map(|mut fields| fields.remove("title").unwrap())
}

/// The template stops at `limit`, with its path and the limit named.
fn assert_limit(template: &str, limit: RenderLimit) {
    let err = render(template).unwrap_err();
    assert_eq!(err.limit, Some(limit), "{template}: {err}");
    assert_eq!(err.path, "steps[1].fields.title", "{template}");
    assert_eq!(err.message, limit.description(), "{template}");
    assert!(
        err.to_string().starts_with("steps[1].fields.title: ") && err.to_string().contains("limit"),
        "{err}"
    );
}

#[test]
fn repeated_huge_strings_stop_at_the_value_limit() {
    // The template of the incident: 20 × 100 MB, which aborted the process.
    assert_limit(
        "{% for i in range(20) %}{{ 'x' * 100000000 }}{% endfor %}",
        RenderLimit::ValueSize,
    );
    assert_limit("{{ 'x' * 10**12 }}", RenderLimit::ValueSize);
    assert_limit("{{ 10**12 * 'x' }}", RenderLimit::ValueSize);
    assert_limit(
        &format!("{{{{ 'x' * {} }}}}", MAX_VALUE_BYTES + 1),
        RenderLimit::ValueSize,
    );
    // Through a variable, so no constant can be spotted while compiling.
    assert_limit(
        "{% set n = 100000000 %}{{ event.name * n }}",
        RenderLimit::ValueSize,
    );
}

#[test]
fn compiling_does_not_evaluate_constant_expressions() {
    // minijinja folds constant operations while compiling; `'x' * 10**8`
    // would allocate 100 MB on save. Rewritten as a call, it is not folded:
    // compiling many of them is instant and cheap.
    let template = vec!["{{ 'x' * 100000000 }}"; 200].concat();
    let started = std::time::Instant::now();
    assert!(compile(&template).is_ok());
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn doubling_a_string_stops_at_the_value_limit() {
    assert_limit(
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
        RenderLimit::ValueSize,
    );
    assert_limit(
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s | length }}",
        RenderLimit::ValueSize,
    );
}

#[test]
fn huge_lists_stop_at_the_list_limit() {
    // Lazy in minijinja: walked for ever by join, `in` or length.
    assert_limit("{{ ([0] * 10**15) | join(',') }}", RenderLimit::ListLength);
    assert_limit("{{ 1 in [0] * 10**12 }}", RenderLimit::ListLength);
    assert_limit(
        "{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l | length }}",
        RenderLimit::ListLength,
    );
    assert_limit(
        &format!("{{{{ range({}) | length }}}}", MAX_LIST_ITEMS + 1),
        RenderLimit::ListLength,
    );
}

#[test]
fn huge_ranges_stop_before_looping() {
    assert_limit(
        "{% for i in range(10**9) %}{{ i }}{% endfor %}",
        RenderLimit::ListLength,
    );
    assert_limit(
        "{% for i in range(0, 10**9, 2) %}{% endfor %}",
        RenderLimit::ListLength,
    );
    // Each allowed, together more work than a field may do.
    assert_limit(
        "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
        RenderLimit::Fuel,
    );
}

#[test]
fn amplifying_filters_stop_at_the_value_limit() {
    assert_limit(
        "{{ range(10000) | join('x' * 100000) }}",
        RenderLimit::ValueSize,
    );
    assert_limit(
        "{{ ('x' * 1000) | replace('', 'y' * 1000) }}",
        RenderLimit::ValueSize,
    );
    assert_limit(
        "{{ ('x' * 200000) | replace('x', 'yy') }}",
        RenderLimit::ValueSize,
    );
}

#[test]
fn accumulating_values_stops_at_the_work_limit() {
    // Each value is small; keeping thousands of them alive is not.
    assert_limit(
        "{% set ns = namespace(l=[]) %}{% for i in range(3000) %}{% set ns.l = ns.l + [('y' * 1000) ~ i] %}{% endfor %}{{ ns.l | length }}",
        RenderLimit::Work,
    );
    // Items are shared, not copied: cheap to build, 10^8 to walk.
    assert_limit(
        "{{ ([range(10000) | list] * 10000) == [] }}",
        RenderLimit::Work,
    );
    // A list holding itself twice per level: small in memory, exponential
    // to print, compare or serialise.
    assert_limit(
        "{% set ns = namespace(l=[1]) %}{% for i in range(60) %}{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ ns.l }}",
        RenderLimit::Work,
    );
}

#[test]
fn a_namespace_cannot_hold_itself() {
    // A cycle would make printing (or comparing, or serialising) recurse
    // until the stack overflows.
    for template in [
        "{% set ns = namespace() %}{% set ns.me = ns %}{{ ns }}",
        "{% set ns = namespace() %}{% set ns.me = [1, {'x': ns}] %}{{ ns }}",
        "{% set a = namespace() %}{% set b = namespace(a=a) %}{% set a.b = b %}{{ a }}",
        "{% set ns = namespace(inner=namespace()) %}{% set ns.inner.up = ns %}{{ ns }}",
        "{% set ns = namespace() %}{% set ns.me, x = ns, 1 %}{{ ns }}",
    ] {
        assert_limit(template, RenderLimit::Nesting);
    }
    // Holding another namespace is fine.
    assert_eq!(
        render("{% set a = namespace(v=1) %}{% set b = namespace() %}{% set b.a = a %}{{ b.a.v }}")
            .unwrap(),
        json!("1")
    );
}

#[test]
fn deep_nesting_stops_at_the_nesting_limit() {
    // Printing or dropping a list nested thousands deep overflows the stack.
    assert_limit(
        "{% set ns = namespace(l=1) %}{% for i in range(5000) %}{% set ns.l = [ns.l] %}{% endfor %}{{ ns.l }}",
        RenderLimit::Nesting,
    );
}

#[test]
fn macros_and_recursion_are_refused_when_compiling() {
    // Deep recursion needs macros or recursive loops; both are refused, so
    // the engine cannot run them either.
    for template in [
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "{% for x in [[1]] recursive %}{{ loop(x) }}{% endfor %}",
        "{% macro f() %}{{ caller() }}{% endmacro %}{% call f() %}x{% endcall %}",
    ] {
        let errors = compile(template).unwrap_err();
        assert!(
            errors.has(ValidationErrorKind::UnsupportedTag),
            "{template}: {errors}"
        );
        assert!(
            errors.iter().all(|e| e.path == "steps[1].fields.title"),
            "{errors}"
        );
    }
}

#[test]
fn field_output_stops_at_the_field_limit() {
    assert_limit(
        "{% for i in range(10000) %}{{ 'x' * 100 }}{% endfor %}",
        RenderLimit::FieldOutput,
    );
    // One expression printing a list bigger than a field.
    assert_limit(
        "{{ range(10000) | list }}{{ range(10000) | list }}",
        RenderLimit::FieldOutput,
    );
    // A single-expression field keeps its type and is serialised: checked
    // before serialising.
    assert_limit("{{ ['x' * 60000, 'y' * 60000] }}", RenderLimit::FieldOutput);
}

#[test]
fn plain_paths_obey_the_field_limit() {
    // Copied from the event without the template engine, still a field.
    let fields = json!({"tags": "{{ event.tags }}"});
    let rendered = render_fields(fields).unwrap();
    assert_eq!(rendered["tags"], json!(["a", "b"]));
    let automation = automation(json!({"big": "{{ event.big }}"}));
    let compiled = CompiledAutomation::compile(&automation).unwrap();
    let event = common::event(
        "calltouch.call.completed",
        "ct",
        ("call", "1"),
        json!({"big": "z".repeat(MAX_FIELD_OUTPUT_BYTES + 1)}),
    );
    let err = compiled
        .render_step(1, &RenderContext::new(&event, common::now()))
        .unwrap_err();
    assert_eq!(err.limit, Some(RenderLimit::FieldOutput));
    assert_eq!(err.path, "steps[1].fields.big");
}

#[test]
fn step_output_stops_at_the_step_limit() {
    let per_field = 60_000;
    let count = MAX_STEP_OUTPUT_BYTES / per_field + 1;
    let fields: serde_json::Map<String, Value> = (0..count)
        .map(|i| {
            (
                format!("f{i:02}"),
                json!(format!("{{{{ 'x' * {per_field} }}}}")),
            )
        })
        .collect();
    let err = render_fields(Value::Object(fields)).unwrap_err();
    assert_eq!(err.limit, Some(RenderLimit::StepOutput), "{err}");
    // Fields render in name order; the one that crosses the cap is named.
    assert_eq!(err.path, format!("steps[1].fields.f{:02}", count - 1));
    // One field fewer fits.
    let fields: serde_json::Map<String, Value> = (0..count - 1)
        .map(|i| {
            (
                format!("f{i:02}"),
                json!(format!("{{{{ 'x' * {per_field} }}}}")),
            )
        })
        .collect();
    assert_eq!(
        render_fields(Value::Object(fields)).unwrap().len(),
        count - 1
    );
}

#[test]
fn oversized_templates_are_refused_not_crashing_the_parser() {
    // A chain of a few thousand operators overflowed the stack in
    // minijinja's parser (aborting the process) before it was counted.
    for template in [
        format!("{{{{ 1{} }}}}", "+1".repeat(8_000)),
        format!("{{{{ {}1 }}}}", "-".repeat(16_000)),
        format!("{{{{ {}1 }}}}", "not ".repeat(8_000)),
        format!("{{{{ x{} }}}}", "()".repeat(8_000)),
        format!("{{{{ x{} }}}}", "|abs".repeat(8_000)),
    ] {
        let errors = compile(&template).unwrap_err();
        assert!(
            errors.has(ValidationErrorKind::TemplateTooLarge),
            "{errors}"
        );
        assert!(
            errors.to_string().contains(&MAX_TAG_TOKENS.to_string()),
            "{errors}"
        );
    }
    let errors = compile(&"x".repeat(MAX_TEMPLATE_BYTES).replace("xx", "{{ 1 }}")).unwrap_err();
    assert!(
        errors.has(ValidationErrorKind::TemplateTooLarge),
        "{errors}"
    );
}

#[test]
fn legitimate_large_templates_render() {
    // 2000 line items, a line each: about 30 KiB, in a loop.
    let lines =
        render("{% for item in event.items %}{{ item.sku }} × {{ item.qty }}\n{% endfor %}")
            .unwrap();
    let lines = lines.as_str().unwrap();
    assert_eq!(lines.lines().count(), 2000);
    assert!(lines.starts_with("SKU-0 × 0\nSKU-1 × 1\n"));
    assert!(lines.len() > 20_000);
    // Just under the field cap, built by one repetition.
    let near_cap = MAX_FIELD_OUTPUT_BYTES - 10;
    let text = render(&format!("{{{{ 'x' * {near_cap} }}}}")).unwrap();
    assert_eq!(text.as_str().unwrap().len(), near_cap);
    // The largest range, joined.
    let joined = render(&format!("{{{{ range({MAX_LIST_ITEMS}) | join(',') }}}}")).unwrap();
    assert_eq!(joined.as_str().unwrap().split(',').count(), MAX_LIST_ITEMS);
    // A long concatenation: one call, not sixty nested ones (minijinja's
    // parser allows 150 levels).
    let parts = vec!["event.name"; 60].join(" ~ ");
    let name = render(&format!("{{{{ {parts} }}}}")).unwrap();
    assert_eq!(name.as_str().unwrap(), "Анна".repeat(60));
    // Accumulating in a namespace, as a sum would be.
    let total = render(
        "{% set ns = namespace(total=0) %}{% for item in event.items %}{% set ns.total = ns.total + item.qty %}{% endfor %}{{ ns.total }}",
    )
    .unwrap();
    let expected: i64 = (0..2000).map(|i| i % 7).sum();
    assert_eq!(total, json!(expected.to_string()));
}

#[test]
fn limits_do_not_leak_between_fields() {
    // The first field spends most of a field's work; the second starts
    // afresh (and so does the next render).
    let heavy = "{% set ns = namespace(l=[]) %}{% for i in range(200) %}{% set ns.l = ns.l + ['y' * 100] %}{% endfor %}{{ ns.l | length }}";
    let fields = json!({"a": heavy, "b": heavy, "c": heavy});
    let rendered = render_fields(fields.clone()).unwrap();
    assert_eq!(rendered["a"], json!("200"));
    assert_eq!(rendered["c"], json!("200"));
    assert_eq!(render_fields(fields).unwrap(), rendered);
}
