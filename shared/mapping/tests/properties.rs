//! Property tests: arbitrary events and arbitrary automation documents never
//! panic the validator or the renderer, documents survive JSON and YAML,
//! and rendering is deterministic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::BTreeMap;

use crmbridge_mapping::template::normalize_phone;
use crmbridge_mapping::{
    Automation, CompiledAutomation, Dedupe, Filter, LinkSpec, RenderContext, Step, TargetSpec,
    Trigger, validate,
};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::{Value, json};

const KEYS: &[&str] = &[
    "status",
    "state",
    "call_id",
    "caller_phone",
    "phone",
    "email",
    "tags",
    "amount",
    "sum",
    "fields",
    "Status",
    "is_private",
    "team_id",
    "name",
    "created_at",
    "x",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(KEYS).prop_map(str::to_owned),
        1 => "[a-zA-Z_ .\\[\\]-]{0,6}",
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        // Decimal amounts; serde_json's default float parsing is not exact
        // for all f64, which would only test serde_json.
        any::<i32>().prop_map(|cents| json!(f64::from(cents) / 100.0)),
        "\\PC{0,12}".prop_map(Value::from),
        "[+8 ()0-9-]{0,18}".prop_map(Value::from),
        proptest::sample::select(vec![
            "2026-05-08T12:32:47Z",
            "08/05/2026 15:32:47",
            "2026-05-08 15:40:01.512",
            "1 500,50",
            "complete",
            "{callerphone}",
            "",
        ])
        .prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(Value::Array),
            btree_map(key(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const FRAGMENTS: &[&str] = &[
    "{{ ",
    " }}",
    "{% if ",
    " %}",
    "{% endif %}",
    "{% for t in event.tags %}",
    "{% endfor %}",
    "event.",
    "event",
    "steps.a.",
    "steps.b.id",
    "links.x",
    "connection.default_region",
    "now",
    " | phone",
    " | phone('UA')",
    " | digits",
    " | date('%d.%m.%Y', 'Europe/Moscow')",
    " | date('%Q')",
    " | date",
    " | money('to_minor')",
    " | money('to_major', 3)",
    " | join('|')",
    " | default('d')",
    " | default(none)",
    " | lower",
    " | upper",
    " | trim",
    " | truncate(3, '…')",
    "status",
    "tags",
    "amount",
    "caller_phone",
    "[0]",
    " ~ ",
    " + 1",
    " == 'x'",
    " and ",
    " or not ",
    "(",
    ")",
    "[",
    "]",
    "'",
    "\"",
];

fn template() -> impl Strategy<Value = String> {
    prop_oneof![
        vec(
            prop_oneof![
                4 => proptest::sample::select(FRAGMENTS).prop_map(str::to_owned),
                1 => "[ -~а-я]{0,4}",
            ],
            0..9
        )
        .prop_map(|parts| parts.concat()),
        vec(proptest::sample::select(FRAGMENTS), 0..5)
            .prop_map(|parts| format!("{{{{ event.{} }}}}", parts.concat())),
        "\\PC{0,16}",
    ]
}

fn operand() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => scalar(),
        1 => vec(scalar(), 0..4).prop_map(Value::Array),
        1 => template().prop_map(Value::from),
    ]
}

fn field_path() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => key(),
        1 => proptest::sample::select(vec![
            "event.status", "steps.a.id", "steps.b", "steps.zzz.id", "links.x", "connection.y",
            "now", "a..b", "fields.Status", "tags.0",
        ])
        .prop_map(str::to_owned),
    ]
}

fn filter() -> impl Strategy<Value = Option<Filter>> {
    let condition = (
        field_path(),
        proptest::sample::select(vec![
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
            "like",
        ]),
        operand(),
    )
        .prop_map(|(field, op, operand)| {
            Filter::from_json(&json!({"field": field, op: operand})).ok()
        });
    condition.prop_recursive(3, 16, 4, |inner| {
        (any::<bool>(), vec(inner, 0..4)).prop_map(|(all, children)| {
            let children: Vec<Filter> = children.into_iter().flatten().collect();
            Some(if all {
                Filter::All(children)
            } else {
                Filter::Any(children)
            })
        })
    })
}

const ACTIONS: &[&str] = &[
    "moysklad.counterparty.create",
    "moysklad.customerorder.create",
    "calltouch.deal.create",
    "calltouch.deal.update",
    "planfix.chat.send",
    "nethunt.record.update",
    "x.y.z",
    "bad",
];

fn dedupe() -> impl Strategy<Value = Dedupe> {
    prop_oneof![
        Just(Dedupe::AlwaysCreate),
        vec(key(), 0..3).prop_map(|by| Dedupe::UseExisting { by }),
        vec(key(), 0..3).prop_map(|by| Dedupe::UpdateExisting { by }),
        vec(key(), 0..3).prop_map(|by| Dedupe::UpdateOnly { by }),
    ]
}

fn field_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => template().prop_map(Value::from),
        1 => json_value(),
        1 => btree_map(key(), template().prop_map(Value::from), 0..3)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        1 => vec(template().prop_map(Value::from), 0..3).prop_map(Value::Array),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (
        proptest::sample::select(vec!["a", "b", "c", "Bad-Id", ""]),
        proptest::sample::select(ACTIONS),
        proptest::sample::select(vec!["ct", "ms", ""]),
        filter(),
        btree_map(key(), field_value(), 0..6),
        dedupe(),
        proptest::option::of(proptest::sample::select(vec!["order", "x", "Bad!"])),
        proptest::option::of((
            proptest::option::of(proptest::sample::select(vec!["x", "call"])),
            proptest::option::of(template()),
        )),
    )
        .prop_map(
            |(id, action, connection, filter, fields, dedupe, link, target)| Step {
                id: id.to_owned(),
                action: action.to_owned(),
                connection: connection.to_owned(),
                filter,
                fields,
                dedupe,
                link: link.map(|name| LinkSpec {
                    name: name.to_owned(),
                }),
                target: target.map(|(link, id)| TargetSpec {
                    link: link.map(str::to_owned),
                    id,
                }),
            },
        )
}

fn automation() -> impl Strategy<Value = Automation> {
    (
        "[a-z-]{0,8}",
        any::<bool>(),
        proptest::sample::select(vec![
            "calltouch.call.completed",
            "moysklad.customerorder.updated",
            "nethunt.record.updated",
            "unknown.kind.here",
            "bad",
        ]),
        btree_map(key(), scalar(), 0..3),
        filter(),
        vec(step(), 0..4),
    )
        .prop_map(|(id, enabled, event, options, filter, steps)| Automation {
            halt_after: None,
            id: id.clone(),
            name: format!("auto {id}"),
            enabled,
            trigger: Trigger {
                connection: "ct".to_owned(),
                event: event.to_owned(),
                options,
            },
            filter,
            steps,
        })
}

/// Runs everything the engine would run; only panics matter here.
fn exercise(
    automation: &Automation,
    data: Value,
    outputs: &BTreeMap<String, Value>,
    links: &BTreeMap<String, String>,
) {
    let catalog = common::catalog();
    let _ = validate(automation, &catalog);
    let Ok(compiled) = CompiledAutomation::compile(automation) else {
        return;
    };
    let event = common::event(
        &automation.trigger.event,
        &automation.trigger.connection,
        ("thing", "1"),
        data,
    );
    let connections = BTreeMap::from([
        ("ct".to_owned(), json!({"default_region": "RU", "y": 1})),
        ("ms".to_owned(), json!({"default_region": "XX"})),
    ]);
    let ctx = RenderContext::new(&event, common::now())
        .with_steps(outputs)
        .with_links(links)
        .with_connections(&connections);
    let _ = compiled.evaluate_filter(&ctx);
    for index in 0..=automation.steps.len() {
        let first = compiled.render_step(index, &ctx);
        let second = compiled.render_step(index, &ctx);
        assert_eq!(
            serde_json::to_string(&first.map_err(|e| e.to_string())).unwrap(),
            serde_json::to_string(&second.map_err(|e| e.to_string())).unwrap(),
            "rendering is not deterministic"
        );
    }
}

fn outputs() -> impl Strategy<Value = BTreeMap<String, Value>> {
    btree_map(
        proptest::sample::select(vec!["a".to_owned(), "b".to_owned()]),
        json_value(),
        0..3,
    )
}

fn links() -> impl Strategy<Value = BTreeMap<String, String>> {
    btree_map(
        proptest::sample::select(vec!["x".to_owned(), "order".to_owned(), "call".to_owned()]),
        "[a-z0-9-]{0,6}",
        0..3,
    )
}

const SEEDS: &[&str] = &[
    include_str!("seeds/1a-nethunt-won-to-worksection.yaml"),
    include_str!("seeds/1b-worksection-closed-to-nethunt.yaml"),
    include_str!("seeds/2-ringostat-to-zoho.yaml"),
    include_str!("seeds/3a-kado-contact-to-hubspot.yaml"),
    include_str!("seeds/3b-kado-note-to-hubspot.yaml"),
    include_str!("seeds/4a-calltouch-call-to-moysklad.yaml"),
    include_str!("seeds/4b-calltouch-request-to-moysklad.yaml"),
    include_str!("seeds/4c-moysklad-order-updated-to-calltouch.yaml"),
    include_str!("seeds/4d-moysklad-order-complete-to-calltouch.yaml"),
    include_str!("seeds/5-verbox-to-planfix.yaml"),
];

proptest! {
    // 200 cases by default; PROPTEST_CASES=n runs more.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(200),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_automations_never_panic(
        automation in automation(),
        data in json_value(),
        outputs in outputs(),
        links in links(),
    ) {
        exercise(&automation, data, &outputs, &links);
    }

    #[test]
    fn arbitrary_events_never_panic_the_seed_automations(
        seed in proptest::sample::select(SEEDS),
        data in btree_map(key(), json_value(), 0..10),
        outputs in outputs(),
        links in links(),
    ) {
        let automation = Automation::from_yaml_str(seed).unwrap();
        exercise(&automation, Value::Object(data.into_iter().collect()), &outputs, &links);
    }

    #[test]
    fn arbitrary_json_events_never_panic(data in json_value()) {
        for seed in SEEDS {
            let automation = Automation::from_yaml_str(seed).unwrap();
            exercise(&automation, data.clone(), &BTreeMap::new(), &BTreeMap::new());
        }
    }

    #[test]
    fn documents_survive_json_and_yaml(automation in automation()) {
        let json = automation.to_json_string().unwrap();
        prop_assert_eq!(&Automation::from_json_str(&json).unwrap(), &automation);
        let yaml = automation.to_yaml_string().unwrap();
        prop_assert_eq!(&Automation::from_yaml_str(&yaml).unwrap(), &automation);
    }

    #[test]
    fn arbitrary_documents_never_panic_the_parser(text in "\\PC{0,200}", value in json_value()) {
        let _ = Automation::from_yaml_str(&text);
        let _ = Automation::from_json_str(&text);
        if let Ok(automation) = serde_json::from_value::<Automation>(value.clone()) {
            exercise(&automation, value, &BTreeMap::new(), &BTreeMap::new());
        }
        let _ = Filter::from_json(&json!({"field": "x", "eq": text}));
    }

    /// Plain-path templates are read without the template engine; that
    /// shortcut must agree with minijinja (the parenthesised form is not
    /// recognised as a plain path, so it always goes through minijinja).
    #[test]
    fn plain_path_shortcut_agrees_with_the_template_engine(
        root in proptest::sample::select(vec!["event", "steps", "links", "connection", "now"]),
        segments in vec(proptest::sample::select(vec!["a", "b", "status", "x", "id"]), 0..3),
        default in proptest::option::of("[a-z ]{0,4}"),
        data in btree_map(proptest::sample::select(vec!["a".to_owned(), "b".to_owned(), "status".to_owned()]), json_value(), 0..4),
        outputs in outputs(),
        links in links(),
        settings in json_value(),
    ) {
        let path = std::iter::once(root).chain(segments).collect::<Vec<_>>().join(".");
        let suffix = default.map(|d| format!(" | default('{d}')")).unwrap_or_default();
        let event = common::event("calltouch.call.completed", "ct", ("call", "1"), Value::Object(data.into_iter().collect()));
        let connections = BTreeMap::from([("ct".to_owned(), settings)]);
        let ctx = RenderContext::new(&event, common::now())
            .with_steps(&outputs)
            .with_links(&links)
            .with_connections(&connections);
        let render = |template: String| {
            let automation = Automation::from_json_str(&json!({
                "id": "p", "name": "p",
                "trigger": {"connection": "ct", "event": "calltouch.call.completed"},
                "steps": [{"id": "s", "action": "x.y.create", "connection": "ct",
                           "fields": {"value": template}}]
            }).to_string()).unwrap();
            match CompiledAutomation::compile(&automation).unwrap().render_step(0, &ctx) {
                Ok(crmbridge_mapping::StepPlan::Call(request)) => Ok(request.fields["value"].clone()),
                Ok(other) => panic!("unexpected plan {other:?}"),
                Err(err) => Err(err.message),
            }
        };
        let fast = render(format!("{{{{ {path}{suffix} }}}}"));
        let slow = render(format!("{{{{ ({path}){suffix} }}}}"));
        prop_assert_eq!(fast.is_ok(), slow.is_ok(), "fast {:?} vs slow {:?}", fast, slow);
        if let (Ok(fast), Ok(slow)) = (fast, slow) {
            prop_assert_eq!(fast, slow);
        }
    }

    #[test]
    fn phone_normalisation_never_panics(text in "\\PC{0,24}", region in "[A-Z]{0,3}") {
        if let Some(e164) = normalize_phone(&text, Some(&region)) {
            prop_assert!(e164.starts_with('+'));
            prop_assert!(e164[1..].chars().all(|c| c.is_ascii_digit()));
        }
    }
}
