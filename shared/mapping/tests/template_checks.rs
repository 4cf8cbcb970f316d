//! Saving refuses broken templates: syntax errors, unknown filters, tests
//! and functions, and the constructs field templates do not support, each
//! as a validation error naming the template's path. Valid templates using
//! every registered filter pass and render.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::BTreeMap;

use crmbridge_mapping::template::{BUILTIN_FILTERS, CRMBRIDGE_FILTERS, TESTS};
use crmbridge_mapping::{
    Automation, CompiledAutomation, RenderContext, StepPlan, ValidationErrorKind as Kind, validate,
};
use serde_json::{Value, json};

/// An automation whose step 0 sets `description` to `template` (and step 1,
/// an update, targets `target`), with `filter` as the automation filter.
fn automation(template: &str, target: &str, filter: Value) -> Automation {
    Automation::from_json_str(
        &json!({
            "id": "checks",
            "name": "checks",
            "trigger": {"connection": "ct", "event": "calltouch.call.completed"},
            "filter": filter,
            "steps": [
                {
                    "id": "customer",
                    "action": "moysklad.counterparty.create",
                    "connection": "ms",
                    "fields": {"name": "Client", "description": template, "tags": ["x", template]},
                },
                {
                    "id": "deal",
                    "action": "calltouch.deal.update",
                    "connection": "ct",
                    "fields": {"status": "done"},
                    "target": {"id": target},
                },
            ],
        })
        .to_string(),
    )
    .unwrap()
}

fn problems(template: &str) -> Vec<(String, Kind, String)> {
    let automation = automation(
        template,
        "{{ event.call_id }}",
        json!({"field": "status", "ne": "spam"}),
    );
    let from_validate: Vec<_> = match validate(&automation, &common::catalog()) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .iter()
            .map(|e| (e.path.clone(), e.kind, e.message.clone()))
            .collect(),
    };
    // The engine compiles without validating: it refuses the same.
    let from_compile: Vec<_> = match CompiledAutomation::compile(&automation) {
        Ok(_) => Vec::new(),
        Err(errors) => errors
            .iter()
            .map(|e| (e.path.clone(), e.kind, e.message.clone()))
            .collect(),
    };
    assert_eq!(from_validate, from_compile, "{template}");
    from_validate
}

/// The template is refused with `kind` and a message containing `text`, at
/// the field's path and at the array item's.
fn refused(template: &str, kind: Kind, text: &str) {
    let found = problems(template);
    for path in ["steps[0].fields.description", "steps[0].fields.tags[1]"] {
        assert!(
            found
                .iter()
                .any(|(p, k, m)| p == path && *k == kind && m.contains(text)),
            "{template}: expected {kind:?} '{text}' at {path} in {found:#?}"
        );
    }
}

#[test]
fn syntax_errors_are_refused() {
    refused(
        "{{ event.caller_phone | }}",
        Kind::TemplateSyntax,
        "template error: ",
    );
    refused(
        "{% if event.status %}open",
        Kind::TemplateSyntax,
        "(line 1)",
    );
    refused("a\n{{ event.status ~ }}", Kind::TemplateSyntax, "(line 2)");
}

#[test]
fn unknown_filters_are_refused() {
    refused(
        "{{ event.caller_phone | phonee }}",
        Kind::UnknownFilter,
        "unknown filter 'phonee' (line 1)",
    );
    refused(
        "x\n{{ event.tags | map('uper') | join }}",
        Kind::UnknownFilter,
        "unknown filter 'uper' (line 2)",
    );
    // Removed built-ins are unknown too.
    for removed in [
        "batch(2)",
        "slice(2)",
        "chain([1])",
        "indent(2)",
        "format(1)",
        "pprint",
    ] {
        refused(
            &format!("{{{{ event.tags | {removed} }}}}"),
            Kind::UnknownFilter,
            "unknown filter",
        );
    }
}

#[test]
fn unknown_tests_are_refused() {
    refused(
        "{% if event.status is finished %}x{% endif %}",
        Kind::UnknownTest,
        "unknown test 'finished' (line 1)",
    );
    refused(
        "{{ event.tags | select('short') | join }}",
        Kind::UnknownTest,
        "unknown test 'short'",
    );
}

#[test]
fn unknown_functions_and_methods_are_refused() {
    refused(
        "{{ lookup(event.status) }}",
        Kind::UnknownFunction,
        "unknown function 'lookup' (line 1); the functions are range, dict, namespace",
    );
    refused(
        "{{ debug() }}",
        Kind::UnknownFunction,
        "unknown function 'debug'",
    );
    refused(
        "{{ event.status.upper() }}",
        Kind::UnknownFunction,
        "'.upper()' calls a method",
    );
    refused(
        "{% for x in [1] %}{{ loop(x) }}{% endfor %}",
        Kind::UnknownFunction,
        "loop() only works in recursive loops",
    );
}

#[test]
fn includes_imports_and_inheritance_are_refused() {
    for (template, tag) in [
        ("{% include 'other' %}", "{% include %}"),
        ("{% import 'macros' as m %}", "{% import %}"),
        ("{% from 'macros' import f %}", "{% from %}"),
        ("{% extends 'base' %}", "{% extends %}"),
    ] {
        refused(template, Kind::UnsupportedTag, tag);
        refused(
            template,
            Kind::UnsupportedTag,
            "there is no template loader",
        );
    }
    refused(
        "{% block body %}x{% endblock %}",
        Kind::UnsupportedTag,
        "there is no template inheritance",
    );
}

#[test]
fn constructs_that_buffer_output_are_refused() {
    for (template, tag) in [
        ("{% macro f() %}x{% endmacro %}{{ f() }}", "{% macro %}"),
        (
            "{% macro f() %}{{ caller() }}{% endmacro %}{% call f() %}x{% endcall %}",
            "{% call %}",
        ),
        (
            "{% set x %}body{% endset %}{{ x }}",
            "{% set %}…{% endset %}",
        ),
        ("{% filter upper %}body{% endfilter %}", "{% filter %}"),
        (
            "{% for x in [1] recursive %}{{ x }}{% endfor %}",
            "a recursive loop",
        ),
    ] {
        refused(template, Kind::UnsupportedTag, tag);
        refused(
            template,
            Kind::UnsupportedTag,
            "is not supported in field templates (line 1)",
        );
    }
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let found = problems("{{ event.status | nope }}{{ event.status is nope2 }}{{ nope3() }}");
    let at_description: Vec<Kind> = found
        .iter()
        .filter(|(path, _, _)| path == "steps[0].fields.description")
        .map(|(_, kind, _)| *kind)
        .collect();
    assert_eq!(
        at_description,
        vec![
            Kind::UnknownFilter,
            Kind::UnknownTest,
            Kind::UnknownFunction
        ]
    );
    // Operands and targets are templates too.
    let automation = automation(
        "ok {{ event.status }}",
        "{{ event.call_id | nope }}",
        json!({"field": "status", "eq": "{% include 'x' %}"}),
    );
    let errors = validate(&automation, &common::catalog()).unwrap_err();
    let paths: Vec<(&str, Kind)> = errors.iter().map(|e| (e.path.as_str(), e.kind)).collect();
    assert_eq!(
        paths,
        vec![
            ("filter.eq", Kind::UnsupportedTag),
            ("steps[1].target.id", Kind::UnknownFilter)
        ]
    );
}

#[test]
fn names_inside_strings_comments_and_raw_blocks_are_not_checked() {
    for template in [
        "{{ 'a | nosuch' ~ \"is nosuch\" ~ event.status }}",
        "{# {{ event.status | nosuch }} #}{{ event.status }}",
        "{% raw %}{{ x | nosuch }}{% include 'y' %}{% endraw %}",
        "plain | nosuch text {{ event.status }} is nosuch()",
    ] {
        assert_eq!(problems(template), Vec::new(), "{template}");
    }
}

/// One use of every filter the environment registers, with what it gives.
const EVERY_FILTER: &[(&str, &str, &str)] = &[
    (
        "phone",
        "{{ event.caller_phone | phone }}",
        r#""+79161234567""#,
    ),
    (
        "phone_mask",
        "{{ event.caller_phone | phone_mask('+7 (###) ###-##-##') }}",
        r#""+7 (916) 123-45-67""#,
    ),
    (
        "digits",
        "{{ event.caller_phone | digits }}",
        r#""89161234567""#,
    ),
    (
        "date",
        "{{ event.call_time | date('%d.%m.%Y %H:%M', 'Europe/Moscow') }}",
        r#""08.05.2026 15:32""#,
    ),
    ("money", "{{ '1 500,50' | money('to_minor') }}", "150050"),
    ("join", "{{ event.tags | join('|') }}", r#""a|b""#),
    ("truncate", "{{ event.source | truncate(3) }}", r#""goo""#),
    ("abs", "{{ (event.duration - 100) | abs }}", "58"),
    ("attr", "{{ event | attr('status') }}", r#""successful""#),
    ("bool", "{{ event.successful | bool }}", "true"),
    (
        "capitalize",
        "{{ event.status | capitalize }}",
        r#""Successful""#,
    ),
    ("count", "{{ event.tags | count }}", "2"),
    ("d", "{{ event.gclid | d('-') }}", r#""-""#),
    ("default", "{{ event.gclid | default('-') }}", r#""-""#),
    (
        "dictsort",
        "{{ {'b': 1, 'a': 2} | dictsort | first | first }}",
        r#""a""#,
    ),
    ("e", "{{ '<b>' | e }}", r#""&lt;b&gt;""#),
    ("escape", "{{ '<b>' | escape }}", r#""&lt;b&gt;""#),
    ("first", "{{ event.tags | first }}", r#""a""#),
    ("float", "{{ '1.5' | float }}", "1.5"),
    (
        "groupby",
        "{{ [{'k': 1}, {'k': 1}] | groupby('k') | length }}",
        "1",
    ),
    ("int", "{{ '42' | int }}", "42"),
    ("items", "{{ {'a': 1} | items | list }}", r#"[["a",1]]"#),
    ("last", "{{ event.tags | last }}", r#""b""#),
    ("length", "{{ event.tags | length }}", "2"),
    ("lines", "{{ 'a\\nb' | lines | length }}", "2"),
    ("list", "{{ 'ab' | list }}", r#"["a","b"]"#),
    ("lower", "{{ 'AB' | lower }}", r#""ab""#),
    (
        "map",
        "{{ event.tags | map('upper') | join(',') }}",
        r#""A,B""#,
    ),
    ("max", "{{ [1, 3, 2] | max }}", "3"),
    ("min", "{{ [1, 3, 2] | min }}", "1"),
    ("reject", "{{ [1, 2, 3] | reject('odd') | list }}", "[2]"),
    (
        "rejectattr",
        "{{ [{'a': 1}, {'a': 2}] | rejectattr('a', 'odd') | map(attribute='a') | list }}",
        "[2]",
    ),
    (
        "replace",
        "{{ event.status | replace('success', 'fear') }}",
        r#""fearful""#,
    ),
    ("reverse", "{{ event.tags | reverse | join }}", r#""ba""#),
    ("round", "{{ 2.567 | round(1) }}", "2.6"),
    ("safe", "{{ '<b>' | safe }}", r#""<b>""#),
    ("select", "{{ [1, 2, 3] | select('odd') | list }}", "[1,3]"),
    (
        "selectattr",
        "{{ [{'a': 1}, {'a': 2}] | selectattr('a', 'even') | map(attribute='a') | list }}",
        "[2]",
    ),
    ("sort", "{{ [3, 1, 2] | sort }}", "[1,2,3]"),
    ("split", "{{ 'a b' | split | length }}", "2"),
    ("string", "{{ 42 | string }}", r#""42""#),
    ("sum", "{{ [1, 2, 3] | sum }}", "6"),
    ("title", "{{ 'anna maria' | title }}", r#""Anna Maria""#),
    ("trim", "{{ '  x ' | trim }}", r#""x""#),
    ("unique", "{{ [1, 1, 2] | unique | list }}", "[1,2]"),
    ("upper", "{{ 'ab' | upper }}", r#""AB""#),
    (
        "zip",
        "{{ [1, 2] | zip(['a', 'b']) | list }}",
        r#"[[1,"a"],[2,"b"]]"#,
    ),
];

#[test]
fn every_registered_filter_validates_and_renders() {
    let covered: Vec<&str> = EVERY_FILTER.iter().map(|(name, _, _)| *name).collect();
    for name in CRMBRIDGE_FILTERS.iter().chain(BUILTIN_FILTERS) {
        assert!(covered.contains(name), "no example for filter {name}");
    }
    let event = common::event(
        "calltouch.call.completed",
        "ct",
        ("call", "1"),
        json!({"call_id": 7, "caller_phone": "8 (916) 123-45-67", "call_time": "2026-05-08T12:32:47Z",
               "source": "google", "tags": ["a", "b"], "duration": 42, "successful": true,
               "status": "successful"}),
    );
    let connections = BTreeMap::from([("ms".to_owned(), json!({"default_region": "RU"}))]);
    let ctx = RenderContext::new(&event, common::now()).with_connections(&connections);
    for (name, template, expected) in EVERY_FILTER {
        assert_eq!(problems(template), Vec::new(), "{name}: {template}");
        let compiled =
            CompiledAutomation::compile(&automation(template, "1", Value::Null)).unwrap();
        let Ok(StepPlan::Call(request)) = compiled.render_step(0, &ctx) else {
            panic!(
                "{name}: {template} did not render: {:?}",
                compiled.render_step(0, &ctx)
            );
        };
        assert_eq!(
            request.fields["description"],
            serde_json::from_str::<Value>(expected).unwrap(),
            "{name}: {template}"
        );
    }
}

#[test]
fn every_test_validates() {
    for name in TESTS {
        if !name.chars().all(|c| c.is_ascii_alphabetic()) {
            // `is ==(x)` is not how minijinja's parser takes a test name;
            // the operator aliases serve `select('==', x)`.
            assert_eq!(
                problems(&format!(
                    "{{{{ event.tags | select('{name}', 'a') | list }}}}"
                )),
                Vec::new(),
                "{name}"
            );
            continue;
        }
        assert_eq!(
            problems(&format!("{{% if event.status is {name} %}}x{{% endif %}}")),
            Vec::new(),
            "{name}"
        );
    }
    // A few, evaluated.
    let compiled = CompiledAutomation::compile(&automation(
        "{{ event.status is defined }}|{{ event.gclid is undefined }}|{{ event.duration is odd }}|{{ event.status is startingwith('succ') }}|{{ 'a' is in(event.tags) }}",
        "1",
        Value::Null,
    ))
    .unwrap();
    let event = common::event(
        "calltouch.call.completed",
        "ct",
        ("call", "1"),
        json!({"status": "successful", "duration": 41, "tags": ["a"]}),
    );
    let Ok(StepPlan::Call(request)) =
        compiled.render_step(0, &RenderContext::new(&event, common::now()))
    else {
        panic!("did not render");
    };
    assert_eq!(
        request.fields["description"],
        json!("True|True|True|True|True")
    );
}
