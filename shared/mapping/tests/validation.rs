//! Validation against a catalog: every error kind, with its path, and all
//! errors reported at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use crmbridge_mapping::{Automation, ValidationErrorKind as Kind, validate};

fn errors(yaml: &str) -> Vec<(String, Kind, String)> {
    let automation = Automation::from_yaml_str(yaml).unwrap();
    match validate(&automation, &common::catalog()) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .iter()
            .map(|e| (e.path.clone(), e.kind, e.to_string()))
            .collect(),
    }
}

/// Asserts that exactly one error of `kind` is reported, with this text.
fn expect(yaml: &str, kind: Kind, text: &str) {
    let found = errors(yaml);
    let matching: Vec<_> = found.iter().filter(|(_, k, _)| *k == kind).collect();
    assert_eq!(matching.len(), 1, "{kind:?} in {found:#?}");
    assert_eq!(matching[0].2, text, "{found:#?}");
}

const VALID: &str = r#"
id: calltouch-call
name: Calltouch call → MoySklad
trigger: { connection: ct, event: calltouch.call.completed }
filter: { all: [ { field: successful, eq: true }, { field: duration, gte: 10 } ] }
steps:
  - id: customer
    action: moysklad.counterparty.create
    connection: ms
    fields:
      name: "Заказ по звонку из Calltouch с номера {{ event.caller_phone | phone }}"
      phone: "{{ event.caller_phone | phone }}"
    dedupe: { mode: use_existing, by: [phone] }
  - id: order
    action: moysklad.customerorder.create
    connection: ms
    fields:
      organization: "{{ connection.organization }}"
      agent: "{{ steps.customer.id }}"
      utm_source: "{{ event.utm_source | default('') }}"
    link: { name: order }
"#;

#[test]
fn the_valid_automation_validates() {
    assert_eq!(errors(VALID), Vec::new());
}

fn with(from: &str, to: &str) -> String {
    assert!(VALID.contains(from), "{from}");
    VALID.replacen(from, to, 1)
}

#[test]
fn invalid_names() {
    let found =
        errors(&with("id: calltouch-call", "id: ''").replacen("id: customer", "id: Customer-1", 1));
    assert!(
        found
            .iter()
            .any(|(p, k, _)| p == "id" && *k == Kind::InvalidName)
    );
    assert!(
        found
            .iter()
            .any(|(_, _, m)| m == "steps[0].id: step id 'Customer-1' must match [a-z_][a-z0-9_]*")
    );
    expect(
        &with("event: calltouch.call.completed", "event: calltouch"),
        Kind::InvalidName,
        "trigger.event: 'calltouch' is not an event kind of the form app.entity.what",
    );
}

#[test]
fn unknown_event_kind() {
    expect(
        &with(
            "event: calltouch.call.completed",
            "event: calltouch.call.missed",
        ),
        Kind::UnknownEventKind,
        "trigger.event: unknown event kind calltouch.call.missed",
    );
}

#[test]
fn unknown_action() {
    expect(
        &with(
            "action: moysklad.counterparty.create",
            "action: moysklad.counterparty.upsert",
        ),
        Kind::UnknownAction,
        "steps[0].action: unknown action moysklad.counterparty.upsert",
    );
}

const NETHUNT: &str = r#"
id: nh
name: Won deal → task
trigger:
  connection: nh
  event: nethunt.record.updated
  options: { folder: Deals, field: Status, value: Won }
steps:
  - id: task
    action: worksection.task.create
    connection: ws
    fields: { project: p1, title: "{{ event.name }}" }
"#;

#[test]
fn trigger_options() {
    assert_eq!(errors(NETHUNT), Vec::new());
    expect(
        &NETHUNT.replace("value: Won }", "value: Won, colour: red }"),
        Kind::UnknownOption,
        "trigger.options.colour: unknown option for nethunt.record.updated",
    );
    expect(
        &NETHUNT.replace(", value: Won", ""),
        Kind::MissingOption,
        "trigger.options: missing required option 'value' for nethunt.record.updated",
    );
    expect(
        &NETHUNT.replace("value: Won }", "value: Won, poll_minutes: often }"),
        Kind::WrongType,
        "trigger.options.poll_minutes: expected an integer, got \"often\"",
    );
}

#[test]
fn unknown_field() {
    expect(
        &with(
            "agent: \"{{ steps.customer.id }}\"",
            "agent: \"{{ steps.customer.id }}\"\n      stats: x",
        ),
        Kind::UnknownField,
        "steps[1].fields.stats: unknown field for moysklad.customerorder.create",
    );
}

#[test]
fn missing_required_field() {
    expect(
        &with("      agent: \"{{ steps.customer.id }}\"\n", ""),
        Kind::MissingField,
        "steps[1].fields: missing required field 'agent' for moysklad.customerorder.create",
    );
}

#[test]
fn wrong_literal_type() {
    expect(
        &with(
            "phone: \"{{ event.caller_phone | phone }}\"",
            "phone: \"{{ event.caller_phone | phone }}\"\n      company_type: person",
        ),
        Kind::WrongType,
        "steps[0].fields.company_type: expected one of legal, entrepreneur, individual, got \"person\"",
    );
}

#[test]
fn wrong_literal_phone() {
    expect(
        &with("phone: \"{{ event.caller_phone | phone }}\"", "phone: n/a"),
        Kind::WrongType,
        "steps[0].fields.phone: expected a phone number, got \"n/a\"",
    );
}

#[test]
fn template_syntax() {
    expect(
        &with(
            "{{ event.utm_source | default('') }}",
            "{{ event.utm_source | default('') ",
        ),
        Kind::TemplateSyntax,
        "steps[1].fields.utm_source: template error: unexpected end of input, expected end of variable block (line 1)",
    );
}

#[test]
fn unknown_variable() {
    expect(
        &with(
            "{{ event.utm_source | default('') }}",
            "{{ evnt.utm_source }}",
        ),
        Kind::UnknownVariable,
        "steps[1].fields.utm_source: references 'evnt', which is not defined (use event, steps, links, connection or now)",
    );
}

#[test]
fn unknown_event_field_in_templates_and_filters() {
    expect(
        &with("{ field: duration, gte: 10 }", "{ field: stats, gte: 10 }"),
        Kind::UnknownEventField,
        "filter.all[1].field: event calltouch.call.completed has no field 'stats'",
    );
    expect(
        &with("event.utm_source", "event.utm_sauce"),
        Kind::UnknownEventField,
        "steps[1].fields.utm_source: event calltouch.call.completed has no field 'utm_sauce'",
    );
}

#[test]
fn references_to_steps() {
    expect(
        &with("{{ steps.customer.id }}", "{{ steps.client.id }}"),
        Kind::UnknownStep,
        "steps[1].fields.agent: references steps.client, which does not exist",
    );
    expect(
        &with(
            "name: \"Заказ по звонку из Calltouch с номера {{ event.caller_phone | phone }}\"",
            "name: \"{{ steps.order.name }}\"",
        ),
        Kind::StepNotYetRun,
        "steps[0].fields.name: references steps.order, which runs later",
    );
    expect(
        &with("{{ steps.customer.id }}", "{{ steps.order.id }}"),
        Kind::StepNotYetRun,
        "steps[1].fields.agent: references steps.order, which is this step",
    );
    expect(
        &with(
            "{ field: duration, gte: 10 }",
            "{ field: steps.customer.id, exists: true }",
        ),
        Kind::StepNotYetRun,
        "filter.all[1].field: references steps.customer, but the automation filter runs before any step",
    );
    expect(
        &with("{{ steps.customer.id }}", "{{ steps.customer.inn }}"),
        Kind::UnknownOutputField,
        "steps[1].fields.agent: steps.customer (moysklad.counterparty.create) has no output field 'inn'",
    );
}

#[test]
fn invalid_filter_path() {
    expect(
        &with("{ field: duration, gte: 10 }", "{ field: 'a..b', gte: 10 }"),
        Kind::InvalidPath,
        "filter.all[1].field: 'a..b' is not a dotted path",
    );
}

#[test]
fn duplicate_step_id() {
    expect(
        &with("id: order", "id: customer"),
        Kind::DuplicateStepId,
        "steps[1].id: step id 'customer' is already used by steps[0]",
    );
}

#[test]
fn no_steps() {
    expect(
        "id: a\nname: a\ntrigger: { connection: ct, event: calltouch.call.completed }\nsteps: []\n",
        Kind::NoSteps,
        "steps: an automation needs at least one step",
    );
}

const UPDATE: &str = r#"
id: back
name: Order → deal
trigger: { connection: ms, event: moysklad.customerorder.updated }
filter: { field: state, ne: complete }
steps:
  - id: deal
    action: calltouch.deal.update
    connection: ct
    target: { link: call }
    fields: { status: "{{ event.state }}", revenue: "{{ event.sum | money('to_major') }}" }
"#;

#[test]
fn dedupe_rules() {
    assert_eq!(errors(UPDATE), Vec::new());
    expect(
        &UPDATE.replace(
            "target: { link: call }",
            "target: { link: call }\n    dedupe: { mode: use_existing, by: [status] }",
        ),
        Kind::DedupeNotSupported,
        "steps[0].dedupe: calltouch.deal.update does not create records; dedupe applies to create actions",
    );
    expect(
        &with("by: [phone]", "by: [inn]"),
        Kind::DedupeKeyNotSet,
        "steps[0].dedupe.by[0]: 'inn' is not set in fields, so there is no value to search by",
    );
    expect(
        &with("by: [phone]", "by: []"),
        Kind::DedupeWithoutKeys,
        "steps[0].dedupe.by: use_existing needs at least one key to search by, or a link",
    );
    // A linked step needs no keys: the linked record is the one reused.
    let linked = with("by: [phone]", "by: []").replace(
        "dedupe: { mode: use_existing, by: [] }",
        "dedupe: { mode: use_existing, by: [] }\n    link: { name: counterparty }",
    );
    assert!(linked.contains("link: { name: counterparty }"), "{linked}");
    assert_eq!(errors(&linked), Vec::new());
}

#[test]
fn target_rules() {
    expect(
        &UPDATE.replace("    target: { link: call }\n", ""),
        Kind::TargetRequired,
        "steps[0].target: calltouch.deal.update updates a record: set target.link or target.id",
    );
    expect(
        &with("link: { name: order }", "target: { link: order }"),
        Kind::TargetNotSupported,
        "steps[1].target: moysklad.customerorder.create does not update an existing record",
    );
    expect(
        &UPDATE.replace("target: { link: call }", "target: { link: call, id: x }"),
        Kind::TargetAmbiguous,
        "steps[0].target: set exactly one of target.link and target.id",
    );
}

#[test]
fn link_rules() {
    expect(
        &with("link: { name: order }", "link: { name: Order! }"),
        Kind::InvalidName,
        "steps[1].link.name: link name 'Order!' must match [a-z_][a-z0-9_]*",
    );
    let chat = "id: c\nname: c\ntrigger: { connection: vb, event: verbox.visitor.updated }\nsteps:\n  - id: msg\n    action: planfix.chat.send\n    connection: pf\n    fields: { message: hi }\n    link: { name: chat }\n";
    expect(
        chat,
        Kind::LinkNotSupported,
        "steps[0].link: planfix.chat.send neither creates nor updates a record to link",
    );
}

#[test]
fn filter_operands_and_groups() {
    expect(
        &with(
            "{ field: duration, gte: 10 }",
            "{ field: duration, gte: lots }",
        ),
        Kind::BadOperand,
        "filter.all[1].gte: 'gte' compares numbers or dates, and \"lots\" is neither",
    );
    expect(
        &with("{ field: duration, gte: 10 }", "{ any: [] }"),
        Kind::EmptyGroup,
        "filter.all[1].any: 'any' without alternatives can never pass",
    );
}

#[test]
fn all_errors_are_reported_at_once_in_document_order() {
    let broken = with(
        "event: calltouch.call.completed",
        "event: calltouch.call.missed",
    )
    .replacen("{{ steps.customer.id }}", "{{ steps.client.id }}", 1)
    .replacen("utm_source: ", "stats: ", 1)
    .replacen("by: [phone]", "by: [inn]", 1);
    let found: Vec<String> = errors(&broken)
        .into_iter()
        .map(|(_, _, text)| text)
        .collect();
    assert_eq!(
        found,
        vec![
            "trigger.event: unknown event kind calltouch.call.missed",
            "steps[0].dedupe.by[0]: 'inn' is not set in fields, so there is no value to search by",
            "steps[1].fields.stats: unknown field for moysklad.customerorder.create",
            "steps[1].fields.agent: references steps.client, which does not exist",
        ]
    );
    let automation = Automation::from_yaml_str(&broken).unwrap();
    let all = validate(&automation, &common::catalog()).unwrap_err();
    assert_eq!(all.len(), 4);
    assert!(all.has(Kind::UnknownStep));
    assert_eq!(all.to_string().lines().count(), 4);
}

#[test]
fn documents_with_typos_do_not_parse() {
    let err = Automation::from_yaml_str(&with("dedupe:", "dedup:")).unwrap_err();
    assert!(err.to_string().contains("unknown field `dedup`"), "{err}");
    let err = Automation::from_yaml_str(&with(
        "{ field: duration, gte: 10 }",
        "{ field: duration, gte: 10, lt: 5 }",
    ))
    .unwrap_err();
    assert!(err.to_string().contains("several operators"), "{err}");
    let err = Automation::from_yaml_str(&with("by: [phone] }", "by: [phone], keys: [email] }"))
        .unwrap_err();
    assert!(err.to_string().contains("unknown field `keys`"), "{err}");
    let err = Automation::from_yaml_str(&with("mode: use_existing", "mode: merge")).unwrap_err();
    assert!(err.to_string().contains("unknown variant `merge`"), "{err}");
    let err = Automation::from_yaml_str(&with("link: { name: order }", "link: { nam: order }"))
        .unwrap_err();
    assert!(err.to_string().contains("unknown field `nam`"), "{err}");
}

#[test]
fn dedupe_keys_need_an_action_that_can_search() {
    use crmbridge_mapping::{Catalog, StaticCatalog};
    let automation = Automation::from_yaml_str(VALID).unwrap();
    assert!(validate(&automation, &common::catalog()).is_ok());
    // The same catalog, but the counterparty create cannot search.
    let mut create = common::catalog()
        .action("moysklad.counterparty.create")
        .cloned()
        .unwrap();
    create.searchable = false;
    let catalog = common::catalog().merge(StaticCatalog::new().with_action(create));
    let errors = validate(&automation, &catalog).unwrap_err();
    let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        texts,
        vec![
            "steps[0].dedupe.by: moysklad.counterparty.create cannot search for existing records; \
             drop dedupe.by (a link still de-duplicates)"
        ],
        "{texts:#?}"
    );
    assert!(errors.has(Kind::DedupeNotSupported));
}
