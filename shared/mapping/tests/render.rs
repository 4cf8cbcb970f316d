//! The renderer: every operator, groups and reasons, field templates,
//! errors that name their path, targets, links and dedupe plans.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::BTreeMap;

use crmbridge_mapping::{
    Automation, CompiledAutomation, DedupeMode, Event, FilterOutcome, RenderContext, StepPlan,
};
use serde_json::{Value, json};

fn automation(yaml: &str) -> CompiledAutomation {
    CompiledAutomation::compile(&Automation::from_yaml_str(yaml).unwrap()).unwrap()
}

fn call(data: Value) -> Event {
    common::event("calltouch.call.completed", "ct", ("call", "42"), data)
}

fn sample_data() -> Value {
    json!({
        "status": "complete",
        "amount": "1500",
        "count": 3,
        "when": "08/05/2026 15:32:47",
        "tags": ["vip", "new"],
        "phone": "+79161234567",
        "empty": "",
        "nothing": null,
        "nested": {"a": {"b": 1}},
        "flag": true
    })
}

/// Evaluates a one-condition filter on the sample event.
fn outcome(condition: &str) -> FilterOutcome {
    let compiled = automation(&format!(
        "id: a\nname: a\ntrigger: {{ connection: ct, event: calltouch.call.completed }}\nfilter: {condition}\nsteps: []\n"
    ));
    let event = call(sample_data());
    compiled
        .evaluate_filter(&RenderContext::new(&event, common::now()))
        .unwrap()
}

fn passes(condition: &str) -> bool {
    outcome(condition).passed()
}

fn reason(condition: &str) -> String {
    match outcome(condition) {
        FilterOutcome::Filtered { reason } => reason,
        FilterOutcome::Passed => panic!("{condition} passed"),
    }
}

#[test]
fn eq_and_ne() {
    assert!(passes("{ field: status, eq: complete }"));
    assert!(passes("{ field: amount, eq: 1500 }"));
    assert!(passes("{ field: flag, eq: 'True' }"));
    assert_eq!(
        reason("{ field: status, eq: new }"),
        "status = complete, not new"
    );
    assert_eq!(reason("{ field: absent, eq: x }"), "absent is missing");
    assert!(passes("{ field: status, ne: new }"));
    assert!(passes("{ field: absent, ne: new }"));
    assert_eq!(
        reason("{ field: status, ne: complete }"),
        "status = complete"
    );
}

#[test]
fn in_and_not_in() {
    assert!(passes("{ field: status, in: [new, complete] }"));
    assert_eq!(
        reason("{ field: status, in: [new, paid] }"),
        "status = complete, not one of [new, paid]"
    );
    assert!(passes("{ field: status, not_in: [new, paid] }"));
    assert!(passes("{ field: absent, not_in: [new] }"));
    assert_eq!(
        reason("{ field: status, not_in: [complete] }"),
        "status = complete, one of [complete]"
    );
}

#[test]
fn contains_and_starts_with() {
    assert!(passes("{ field: tags, contains: vip }"));
    assert!(passes("{ field: status, contains: plet }"));
    assert_eq!(
        reason("{ field: tags, contains: old }"),
        "tags = [\"vip\",\"new\"], does not contain old"
    );
    assert!(passes("{ field: phone, starts_with: '+7' }"));
    assert_eq!(
        reason("{ field: phone, starts_with: '+380' }"),
        "phone = +79161234567, does not start with +380"
    );
    assert_eq!(
        reason("{ field: absent, starts_with: x }"),
        "absent is missing"
    );
}

#[test]
fn exists_and_missing() {
    assert!(passes("{ field: status, exists: true }"));
    assert!(passes("{ field: nested.a.b, exists: true }"));
    assert_eq!(reason("{ field: empty, exists: true }"), "empty is missing");
    assert_eq!(
        reason("{ field: nothing, exists: true }"),
        "nothing is missing"
    );
    assert!(passes("{ field: absent, missing: true }"));
    assert!(passes("{ field: empty, missing: true }"));
    assert!(!passes("{ field: status, exists: false }"));
    assert_eq!(
        reason("{ field: status, missing: true }"),
        "status = complete, expected it to be missing"
    );
}

#[test]
fn numeric_comparisons() {
    assert!(passes("{ field: amount, gt: 1000 }"));
    assert!(passes("{ field: amount, gte: 1500 }"));
    assert!(passes("{ field: count, lt: 4 }"));
    assert!(passes("{ field: count, lte: 3 }"));
    assert_eq!(reason("{ field: count, gt: 3 }"), "count = 3, not > 3");
    assert_eq!(reason("{ field: count, gte: 4 }"), "count = 3, not >= 4");
    assert_eq!(
        reason("{ field: amount, lt: 10 }"),
        "amount = 1500, not < 10"
    );
    assert_eq!(
        reason("{ field: amount, lte: 10 }"),
        "amount = 1500, not <= 10"
    );
    assert_eq!(reason("{ field: absent, gt: 1 }"), "absent is missing");
    assert_eq!(
        reason("{ field: status, gt: 1 }"),
        "status = complete, which cannot be compared with 1"
    );
}

#[test]
fn date_comparisons_and_template_operands() {
    assert!(passes("{ field: when, gt: '2026-05-08T12:00:00Z' }"));
    assert!(passes("{ field: when, lt: '2026-05-09' }"));
    // now is 2026-05-08T12:40:00Z; the call (read as UTC) was at 15:32.
    assert!(passes("{ field: when, gte: '{{ now }}' }"));
    assert!(!passes("{ field: when, lte: '{{ now }}' }"));
}

#[test]
fn all_and_any_nest() {
    assert!(passes(
        "{ all: [ { field: status, eq: complete }, { any: [ { field: count, gt: 10 }, { field: tags, contains: vip } ] } ] }"
    ));
    assert_eq!(
        reason("{ all: [ { field: status, eq: complete }, { field: count, gt: 10 } ] }"),
        "count = 3, not > 10"
    );
    assert_eq!(
        reason("{ any: [ { field: count, gt: 10 }, { field: status, eq: new } ] }"),
        "none of: count = 3, not > 10; status = complete, not new"
    );
    assert!(passes("{ all: [] }"));
}

#[test]
fn filter_reads_connection_steps_and_links_roots() {
    let compiled = automation(
        r#"
id: a
name: a
trigger: { connection: ct, event: calltouch.call.completed }
filter: { all: [ { field: connection.mode, eq: live }, { field: event.status, eq: complete } ] }
steps:
  - id: first
    action: x.y.create
    connection: ct
  - id: second
    action: x.y.create
    connection: ct
    filter: { all: [ { field: steps.first.id, exists: true }, { field: links.order, eq: o-1 } ] }
"#,
    );
    let event = call(sample_data());
    let connections = BTreeMap::from([("ct".to_owned(), json!({"mode": "live"}))]);
    let outputs = BTreeMap::from([("first".to_owned(), json!({"id": "f-1"}))]);
    let links = BTreeMap::from([("order".to_owned(), "o-1".to_owned())]);
    let ctx = RenderContext::new(&event, common::now()).with_connections(&connections);
    assert_eq!(
        compiled.evaluate_filter(&ctx).unwrap(),
        FilterOutcome::Passed
    );
    let skipped = compiled.render_step(1, &ctx).unwrap();
    assert_eq!(
        skipped,
        StepPlan::Skip {
            reason: "filtered: steps.first.id is missing".into()
        }
    );
    let ctx = ctx.with_steps(&outputs).with_links(&links);
    assert!(matches!(
        compiled.render_step(1, &ctx).unwrap(),
        StepPlan::Call(_)
    ));
}

/// A run reads the subject's links only for an automation that uses them:
/// in a template, a filter, a target or a step's `link`.
#[test]
fn an_automation_says_whether_it_reads_links() {
    let with_step = |step: &str| {
        automation(&format!(
            "id: a\nname: a\ntrigger: {{ connection: ct, event: calltouch.call.completed }}\nsteps:\n  - id: s\n    action: x.y.create\n    connection: ct\n{step}"
        ))
    };
    for (step, reads) in [
        ("    fields: { id: \"{{ event.call_id }}\", n: 1 }\n", false),
        // A field of the event named `links` is not the links.
        ("    fields: { l: \"{{ event.links.order }}\" }\n", false),
        ("    fields: { s: \"{{ steps.first.id | default('') }}\" }\n", false),
        ("    fields: { o: \"{{ links.order }}\" }\n", true),
        ("    fields: { o: { deep: [\"{{ links['order'] | default('') }}\"] } }\n", true),
        ("    fields: { o: \"{% if links %}x{% endif %}\" }\n", true),
        ("    filter: { field: links.order, exists: true }\n", true),
        ("    filter: { field: status, eq: \"{{ links.order }}\" }\n", true),
        ("    filter: { any: [ { field: status, eq: a }, { field: links.deal, missing: true } ] }\n", true),
        ("    target: { link: order }\n", true),
        ("    link: { name: order }\n", true),
    ] {
        assert_eq!(with_step(step).reads_links(), reads, "{step}");
    }
    let filtered = automation(
        "id: a\nname: a\ntrigger: { connection: ct, event: calltouch.call.completed }\nfilter: { field: links.order, missing: true }\nsteps: []\n",
    );
    assert!(filtered.reads_links());
}

#[test]
fn disabled_and_foreign_events_are_filtered() {
    let yaml = "id: a\nname: a\nenabled: false\ntrigger: { connection: ct, event: calltouch.call.completed }\nsteps: []\n";
    let event = call(json!({}));
    let ctx = RenderContext::new(&event, common::now());
    assert_eq!(
        automation(yaml).evaluate_filter(&ctx).unwrap().to_string(),
        "filtered: automation is disabled"
    );
    let other = automation(
        "id: a\nname: a\ntrigger: { connection: ct, event: calltouch.request.created }\nsteps: []\n",
    );
    assert!(
        other
            .evaluate_filter(&ctx)
            .unwrap()
            .to_string()
            .contains("does not trigger this automation")
    );
    let elsewhere = automation(
        "id: a\nname: a\ntrigger: { connection: ct2, event: calltouch.call.completed }\nsteps: []\n",
    );
    assert!(
        elsewhere
            .evaluate_filter(&ctx)
            .unwrap()
            .to_string()
            .contains("connection ct")
    );
}

fn one_step(fields: &str) -> CompiledAutomation {
    automation(&format!(
        "id: a\nname: a\ntrigger: {{ connection: ct, event: calltouch.call.completed }}\nsteps:\n  - id: s\n    action: x.y.create\n    connection: ct\n    fields: {fields}\n"
    ))
}

fn render_fields(fields: &str, data: Value) -> Result<serde_json::Map<String, Value>, String> {
    let compiled = one_step(fields);
    let event = call(data);
    let connections = BTreeMap::from([("ct".to_owned(), json!({"default_region": "RU"}))]);
    let ctx = RenderContext::new(&event, common::now()).with_connections(&connections);
    match compiled.render_step(0, &ctx) {
        Ok(StepPlan::Call(request)) => Ok(request.fields),
        Ok(StepPlan::Skip { reason }) => Err(format!("skipped: {reason}")),
        Err(err) => Err(err.to_string()),
    }
}

#[test]
fn fields_render_templates_literals_and_native_values() {
    let fields = render_fields(
        r#"{ text: "Call {{ event.call_id }}", id: "{{ event.call_id }}", tags: "{{ event.tags }}", fixed: 0, plain: PENDING, flag: true, nested: { a: "{{ event.call_id + 1 }}", list: ["{{ event.tags | join('|') }}", 2] }, now: "{{ now }}" }"#,
        json!({"call_id": 42, "tags": ["a", "b"]}),
    )
    .unwrap();
    assert_eq!(
        Value::Object(fields),
        json!({
            "text": "Call 42",
            "id": 42,
            "tags": ["a", "b"],
            "fixed": 0,
            "plain": "PENDING",
            "flag": true,
            "nested": {"a": 43, "list": ["a|b", 2]},
            "now": "2026-05-08T12:40:00Z"
        })
    );
}

#[test]
fn missing_references_are_errors_naming_the_path() {
    let err =
        render_fields(r#"{ name: "Order {{ event.caller_phone }}" }"#, json!({})).unwrap_err();
    assert_eq!(
        err,
        "steps[0].fields.name: references event.caller_phone, which is missing (add `| default(...)` to allow that)"
    );
    let err = render_fields(r#"{ name: "{{ steps.customer.id }}" }"#, json!({})).unwrap_err();
    assert!(
        err.starts_with("steps[0].fields.name: references steps.customer"),
        "{err}"
    );
    let err = render_fields(r#"{ deep: { x: "{{ event.a }}" } }"#, json!({})).unwrap_err();
    assert!(
        err.starts_with("steps[0].fields.deep.x: references event.a"),
        "{err}"
    );
    let ok = render_fields(
        r#"{ name: "{{ event.caller_phone | default('none') }}" }"#,
        json!({}),
    )
    .unwrap();
    assert_eq!(ok["name"], "none");
}

#[test]
fn unreadable_phone_is_an_error_with_the_reason() {
    let err = render_fields(
        r#"{ phone: "{{ event.p | phone }}" }"#,
        json!({"p": "{callerphone}"}),
    )
    .unwrap_err();
    assert!(
        err.starts_with("steps[0].fields.phone: phone: cannot read \"{callerphone}\" as a phone number (default region RU)"),
        "{err}"
    );
    let ok = render_fields(
        r#"{ phone: "{{ event.p | phone | default('') }}" }"#,
        json!({"p": "x"}),
    )
    .unwrap();
    assert_eq!(ok["phone"], "");
    let ok = render_fields(
        r#"{ phone: "{{ event.p | phone }}" }"#,
        json!({"p": "8 916 123-45-67"}),
    )
    .unwrap();
    assert_eq!(ok["phone"], "+79161234567");
}

#[test]
fn other_template_failures_name_the_path() {
    let err = render_fields(
        r#"{ d: "{{ event.d | date('%Y', 'Nowhere/City') }}" }"#,
        json!({"d": "2026-01-01"}),
    )
    .unwrap_err();
    assert!(
        err.starts_with("steps[0].fields.d: invalid operation: date: unknown time zone"),
        "{err}"
    );
}

#[test]
fn rendering_is_deterministic() {
    let compiled =
        one_step(r#"{ z: "{{ event.z }}", a: "{{ event.a }}", m: { y: "{{ event.a }}", b: 1 } }"#);
    let event = call(json!({"a": "x", "z": {"k2": 1, "k1": 2}}));
    let ctx = RenderContext::new(&event, common::now());
    let first = serde_json::to_string(&compiled.render_step(0, &ctx).unwrap()).unwrap();
    let again = serde_json::to_string(&compiled.render_step(0, &ctx).unwrap()).unwrap();
    let recompiled =
        one_step(r#"{ m: { b: 1, y: "{{ event.a }}" }, a: "{{ event.a }}", z: "{{ event.z }}" }"#);
    let other = serde_json::to_string(&recompiled.render_step(0, &ctx).unwrap()).unwrap();
    assert_eq!(first, again);
    assert_eq!(first, other);
    assert!(first.find("\"a\"").unwrap() < first.find("\"z\"").unwrap());
}

#[test]
fn no_such_step_is_an_error() {
    let event = call(json!({}));
    let err = one_step("{}")
        .render_step(5, &RenderContext::new(&event, common::now()))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "steps[5]: no such step (the automation has 1)"
    );
}

fn target_automation(target: &str) -> CompiledAutomation {
    automation(&format!(
        "id: a\nname: a\ntrigger: {{ connection: ms, event: moysklad.customerorder.updated }}\nsteps:\n  - id: deal\n    action: calltouch.deal.update\n    connection: ct\n    target: {target}\n    fields: {{ status: \"{{{{ event.state }}}}\" }}\n"
    ))
}

#[test]
fn target_from_link_or_template() {
    let event = common::event(
        "moysklad.customerorder.updated",
        "ms",
        ("customerorder", "o-1"),
        json!({"state": "paid", "ext": "D-7"}),
    );
    let links = BTreeMap::from([("call".to_owned(), "ct-42".to_owned())]);
    let ctx = RenderContext::new(&event, common::now());
    let by_link = target_automation("{ link: call }");
    assert_eq!(
        by_link.render_step(0, &ctx).unwrap(),
        StepPlan::Skip {
            reason: "no linked record 'call' for customerorder o-1".into()
        }
    );
    let StepPlan::Call(request) = by_link.render_step(0, &ctx.with_links(&links)).unwrap() else {
        panic!("skipped")
    };
    let target = request.target.unwrap();
    assert_eq!(
        (target.id.as_str(), target.from_link.as_deref()),
        ("ct-42", Some("call"))
    );

    let by_id = target_automation("{ id: \"{{ event.ext }}\" }");
    let StepPlan::Call(request) = by_id.render_step(0, &ctx).unwrap() else {
        panic!("skipped")
    };
    assert_eq!(request.target.unwrap().id, "D-7");
    let empty = target_automation("{ id: \"{{ event.nothing | default('') }}\" }");
    let err = empty.render_step(0, &ctx).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("steps[0].target.id: rendered \"\""),
        "{err}"
    );
}

fn dedupe_automation(dedupe: &str) -> CompiledAutomation {
    automation(&format!(
        r#"
id: a
name: a
trigger: {{ connection: ct, event: calltouch.request.created }}
steps:
  - id: customer
    action: moysklad.counterparty.create
    connection: ms
    fields:
      name: "{{{{ event.name }}}}"
      phone: "{{{{ event.phone | phone | default('') }}}}"
      email: "{{{{ event.email | default('') }}}}"
    dedupe: {dedupe}
    link: {{ name: customer }}
"#
    ))
}

fn request_event(phone: &str, email: &str) -> Event {
    common::event(
        "calltouch.request.created",
        "ct",
        ("request", "r-1"),
        json!({"name": "Иван", "phone": phone, "email": email}),
    )
}

#[test]
fn dedupe_plans_for_every_mode() {
    let event = request_event("89161234567", "ivan@example.com");
    let connections = BTreeMap::from([("ms".to_owned(), json!({"default_region": "RU"}))]);
    let ctx = RenderContext::new(&event, common::now()).with_connections(&connections);
    for (yaml, mode) in [
        ("{ mode: always_create }", DedupeMode::AlwaysCreate),
        (
            "{ mode: use_existing, by: [phone, email] }",
            DedupeMode::UseExisting,
        ),
        (
            "{ mode: update_existing, by: [phone, email] }",
            DedupeMode::UpdateExisting,
        ),
        (
            "{ mode: update_only, by: [phone, email] }",
            DedupeMode::UpdateOnly,
        ),
    ] {
        let StepPlan::Call(request) = dedupe_automation(yaml).render_step(0, &ctx).unwrap() else {
            panic!("skipped")
        };
        assert_eq!(request.dedupe.mode, mode);
        assert_eq!(request.link.as_deref(), Some("customer"));
        if mode == DedupeMode::AlwaysCreate {
            assert!(request.dedupe.lookup.is_empty());
            assert!(!request.dedupe.needs_search());
        } else {
            let keys: Vec<(&str, &Value)> = request
                .dedupe
                .lookup
                .iter()
                .map(|k| (k.field.as_str(), &k.value))
                .collect();
            assert_eq!(
                keys,
                vec![
                    ("phone", &json!("+79161234567")),
                    ("email", &json!("ivan@example.com"))
                ]
            );
            assert!(request.dedupe.needs_search());
        }
    }
}

#[test]
fn dedupe_drops_blank_keys_and_uses_links() {
    let event = request_event("", "ivan@example.com");
    let ctx = RenderContext::new(&event, common::now());
    let StepPlan::Call(request) = dedupe_automation("{ mode: use_existing, by: [phone, email] }")
        .render_step(0, &ctx)
        .unwrap()
    else {
        panic!("skipped")
    };
    assert_eq!(request.dedupe.lookup.len(), 1);
    assert_eq!(request.dedupe.lookup[0].field, "email");

    let links = BTreeMap::from([("customer".to_owned(), "cp-9".to_owned())]);
    let StepPlan::Call(request) = dedupe_automation("{ mode: update_existing, by: [email] }")
        .render_step(0, &ctx.with_links(&links))
        .unwrap()
    else {
        panic!("skipped")
    };
    assert_eq!(request.dedupe.linked_id.as_deref(), Some("cp-9"));
    assert!(!request.dedupe.needs_search());
}

#[test]
fn update_only_without_any_key_value_is_skipped() {
    let event = request_event("", "");
    let ctx = RenderContext::new(&event, common::now());
    assert_eq!(
        dedupe_automation("{ mode: update_only, by: [phone, email] }")
            .render_step(0, &ctx)
            .unwrap(),
        StepPlan::Skip {
            reason: "update_only: none of the dedupe keys (phone, email) has a value".into()
        }
    );
}

#[test]
fn compile_reports_every_syntax_error() {
    let automation = Automation::from_yaml_str(
        r#"
id: a
name: a
trigger: { connection: ct, event: calltouch.call.completed }
filter: { field: "a..b", eq: "{{ oops" }
steps:
  - id: s
    action: x.y.create
    connection: ct
    fields: { a: "{{ event.x", b: "{% if %}" }
"#,
    )
    .unwrap();
    let errors = CompiledAutomation::compile(&automation).unwrap_err();
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "filter.field",
            "filter.eq",
            "steps[0].fields.a",
            "steps[0].fields.b"
        ]
    );
}

#[test]
fn compiled_automations_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CompiledAutomation>();
}

#[test]
fn operand_templates_report_their_path() {
    let compiled = automation(
        "id: a\nname: a\ntrigger: { connection: ct, event: calltouch.call.completed }\nfilter: { all: [ { field: count, lt: \"{{ connection.limit }}\" } ] }\nsteps: []\n",
    );
    let event = call(sample_data());
    let err = compiled
        .evaluate_filter(&RenderContext::new(&event, common::now()))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "filter.all[0].lt: references connection.limit, which is missing (add `| default(...)` to allow that)"
    );
}
