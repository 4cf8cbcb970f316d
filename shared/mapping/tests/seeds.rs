//! The five seed integrations (the vendors' help articles; the three that
//! ship as recipes are paraphrased in `docs/integrations/`) expressed as automations
//! (tests/seeds/*.yaml): each validates against the test catalog and renders
//! the expected requests for a sample event.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::BTreeMap;

use crmbridge_mapping::{
    Automation, CompiledAutomation, Event, FilterOutcome, RenderContext, StepPlan, validate,
};
use serde_json::{Value, json};

struct Run {
    outcome: FilterOutcome,
    plans: Vec<Value>,
}

/// Validates, compiles and runs an automation for one event, feeding each
/// called step the given output (as the engine would after the call).
fn run(
    yaml: &str,
    event: &Event,
    connections: Value,
    links: &[(&str, &str)],
    outputs: Value,
) -> Run {
    let automation = Automation::from_yaml_str(yaml).unwrap();
    if let Err(errors) = validate(&automation, &common::catalog()) {
        panic!("{} does not validate:\n{errors}", automation.id);
    }
    // The document survives both formats unchanged.
    assert_eq!(
        Automation::from_yaml_str(&automation.to_yaml_string().unwrap()).unwrap(),
        automation
    );
    assert_eq!(
        Automation::from_json_str(&automation.to_json_string().unwrap()).unwrap(),
        automation
    );

    let compiled = CompiledAutomation::compile(&automation).unwrap();
    let connections: BTreeMap<String, Value> = serde_json::from_value(connections).unwrap();
    let links: BTreeMap<String, String> = links
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let mut done: BTreeMap<String, Value> = BTreeMap::new();
    let base = RenderContext::new(event, common::now())
        .with_connections(&connections)
        .with_links(&links);
    let outcome = compiled.evaluate_filter(&base).unwrap();
    let mut plans = Vec::new();
    if outcome.passed() {
        for index in 0..compiled.step_count() {
            let plan = compiled
                .render_step(index, &base.with_steps(&done))
                .unwrap();
            // Same inputs, byte-identical output.
            let again = compiled
                .render_step(index, &base.with_steps(&done))
                .unwrap();
            assert_eq!(
                serde_json::to_string(&plan).unwrap(),
                serde_json::to_string(&again).unwrap()
            );
            if let StepPlan::Call(request) = &plan {
                done.insert(request.step_id.clone(), outputs[&request.step_id].clone());
            }
            plans.push(serde_json::to_value(&plan).unwrap());
        }
    }
    Run { outcome, plans }
}

#[test]
fn seed_1_nethunt_won_deal_becomes_a_worksection_task() {
    let yaml = include_str!("seeds/1a-nethunt-won-to-worksection.yaml");
    let record = |status: &str| {
        common::event(
            "nethunt.record.updated",
            "nethunt",
            ("record", "rec-7"),
            json!({
                "record_id": "rec-7",
                "folder": "Deals",
                "name": "Acme — 20 chairs",
                "owner_email": "olena@example.com",
                "fields": {"Status": status, "Amount": 12000, "Email": "buyer@acme.test",
                           "Phone": "050 123 4567", "Deadline": "2026-05-15"}
            }),
        )
    };
    let connections = json!({"worksection": {"project_id": "p-42", "default_region": "UA"}});
    let run_won = run(
        yaml,
        &record("Won"),
        connections.clone(),
        &[],
        json!({"task": {"id": "t-1"}}),
    );
    assert_eq!(run_won.outcome, FilterOutcome::Passed);
    assert_eq!(
        run_won.plans,
        vec![json!({
            "plan": "call",
            "step_id": "task",
            "action": "worksection.task.create",
            "connection": "worksection",
            "fields": {
                "dateend": "15.05.2026",
                "priority": 8,
                "project": "p-42",
                "responsible": "olena@example.com",
                "text": "Amount: 12000; contact: buyer@acme.test, +380501234567",
                "title": "Deal won: Acme — 20 chairs"
            },
            "dedupe": {"mode": "always_create", "lookup": []},
            "link": "task"
        })]
    );
    let lost = run(yaml, &record("Lost"), connections, &[], json!({}));
    assert_eq!(
        lost.outcome.to_string(),
        "filtered: fields.Status = Lost, not Won"
    );
}

#[test]
fn seed_1_back_closed_task_sets_the_crm_field() {
    let yaml = include_str!("seeds/1b-worksection-closed-to-nethunt.yaml");
    let closed = common::event(
        "worksection.task.closed",
        "worksection",
        ("task", "t-1"),
        json!({"task_id": "t-1", "project_id": "p-42", "name": "Deal won", "closed_at": "2026-05-20T09:00:00Z"}),
    );
    let linked = run(
        yaml,
        &closed,
        json!({}),
        &[("record", "rec-7")],
        json!({"record": {"id": "rec-7"}}),
    );
    assert_eq!(
        linked.plans,
        vec![json!({
            "plan": "call",
            "step_id": "record",
            "action": "nethunt.record.update",
            "connection": "nethunt",
            "fields": {"fields": {"Closed on": "2026-05-20", "Stage": "Delivered"}},
            "dedupe": {"mode": "always_create", "lookup": []},
            "target": {"id": "rec-7", "from_link": "record"}
        })]
    );
    let unlinked = run(yaml, &closed, json!({}), &[], json!({}));
    assert_eq!(
        unlinked.plans,
        vec![json!({"plan": "skip", "reason": "no linked record 'record' for task t-1"})]
    );
}

fn ringostat_call(disposition: &str, employee: &str, new_contact: bool) -> Event {
    common::event(
        "ringostat.call.completed",
        "ringostat",
        ("call", "rs-1"),
        json!({
            "call_id": "rs-1", "caller": "380671234567", "disposition": disposition,
            "employee_id": employee, "is_new_contact": new_contact,
            "call_date": "2026-05-08 09:15:00", "utm_source": "google", "utm_medium": "cpc",
            "utm_campaign": "spring", "google_client_id": "GA1.2.3"
        }),
    )
}

#[test]
fn seed_2_ringostat_call_becomes_a_zoho_lead_owned_by_the_right_manager() {
    let yaml = include_str!("seeds/2-ringostat-to-zoho.yaml");
    let connections = json!({"zoho": {
        "default_region": "UA", "senior_manager": "u-senior",
        "employees": {"e-1": "u-olena", "e-2": "u-taras"}
    }});
    let outputs = json!({"lead": {"id": "L-1"}, "callback": {"id": "T-1"}});
    let answered = run(
        yaml,
        &ringostat_call("ANSWERED", "e-1", false),
        connections.clone(),
        &[],
        outputs.clone(),
    );
    assert_eq!(
        answered.plans[0],
        json!({
            "plan": "call",
            "step_id": "lead",
            "action": "zoho.leads.create",
            "connection": "zoho",
            "fields": {
                "Last_Name": "Ringostat +380671234567",
                "Lead_Source": "Ringostat",
                "Owner": "u-olena",
                "Phone": "+380671234567",
                "rs_google_client_id": "GA1.2.3",
                "rs_utm_campaign": "spring",
                "rs_utm_content": "",
                "rs_utm_medium": "cpc",
                "rs_utm_source": "google",
                "rs_utm_term": ""
            },
            "dedupe": {"mode": "use_existing", "lookup": [{"field": "Phone", "value": "+380671234567"}]},
            "link": "lead"
        })
    );
    assert_eq!(
        answered.plans[1],
        json!({"plan": "skip", "reason": "filtered: disposition = ANSWERED"})
    );

    // Missed call: the senior manager owns the lead and gets a call-back task.
    let missed = run(
        yaml,
        &ringostat_call("NO ANSWER", "e-1", false),
        connections.clone(),
        &[],
        outputs.clone(),
    );
    assert_eq!(missed.plans[0]["fields"]["Owner"], "u-senior");
    assert_eq!(
        missed.plans[1],
        json!({
            "plan": "call",
            "step_id": "callback",
            "action": "zoho.tasks.create",
            "connection": "zoho",
            "fields": {
                "Due_Date": "2026-05-08",
                "Owner": "u-senior",
                "Priority": "High",
                "Subject": "Call back +380671234567",
                "What_Id": "L-1"
            },
            "dedupe": {"mode": "always_create", "lookup": []}
        })
    );
    // New contact, or a number owned by nobody: the senior manager too.
    let new_contact = run(
        yaml,
        &ringostat_call("ANSWERED", "e-1", true),
        connections.clone(),
        &[],
        outputs.clone(),
    );
    assert_eq!(new_contact.plans[0]["fields"]["Owner"], "u-senior");
    let nobody = run(
        yaml,
        &ringostat_call("ANSWERED", "e-9", false),
        connections,
        &[],
        outputs,
    );
    assert_eq!(nobody.plans[0]["fields"]["Owner"], "u-senior");
}

#[test]
fn seed_3_kado_contacts_sync_unless_private() {
    let yaml = include_str!("seeds/3a-kado-contact-to-hubspot.yaml");
    let contact = |private: bool, team: &str| {
        common::event(
            "kado.contact.created",
            "kado",
            ("contact", "k-1"),
            json!({"contact_id": "k-1", "first_name": "Anna", "last_name": "Nowak",
                   "email": " Anna.Nowak@Example.com ", "phone": "600 700 800",
                   "is_private": private, "team_id": team, "company_id": "c-1"}),
        )
    };
    let connections =
        json!({"kado": {"teams": ["sales", "marketing"]}, "hubspot": {"default_region": "PL"}});
    let shared = run(
        yaml,
        &contact(false, "sales"),
        connections.clone(),
        &[],
        json!({"contact": {"id": "h-1"}}),
    );
    assert_eq!(
        shared.plans,
        vec![json!({
            "plan": "call",
            "step_id": "contact",
            "action": "hubspot.contact.create",
            "connection": "hubspot",
            "fields": {
                "email": "anna.nowak@example.com",
                "firstname": "Anna",
                "kado_contact_id": "k-1",
                "lastname": "Nowak",
                "phone": "+48600700800"
            },
            "dedupe": {"mode": "update_existing", "lookup": [
                {"field": "email", "value": "anna.nowak@example.com"},
                {"field": "phone", "value": "+48600700800"}
            ]},
            "link": "contact"
        })]
    );
    let private = run(
        yaml,
        &contact(true, "sales"),
        connections.clone(),
        &[],
        json!({}),
    );
    assert_eq!(private.outcome.to_string(), "filtered: is_private = true");
    let other_team = run(
        yaml,
        &contact(false, "support"),
        connections,
        &[],
        json!({}),
    );
    assert_eq!(
        other_team.outcome.to_string(),
        "filtered: team_id = support, not one of [sales, marketing]"
    );
}

#[test]
fn seed_3_kado_notes_attach_to_the_contact() {
    let yaml = include_str!("seeds/3b-kado-note-to-hubspot.yaml");
    let note = |private: bool| {
        common::event(
            "kado.note.created",
            "kado",
            ("note", "n-1"),
            json!({"note_id": "n-1", "body": "Called, wants a demo", "is_private": private,
                   "created_at": "2026-05-08T10:00:00+02:00",
                   "contact": {"id": "k-1", "email": "anna@example.com", "name": "Anna"}}),
        )
    };
    let outputs = json!({"contact": {"id": "h-1"}, "note": {"id": "hn-1"}});
    let shared = run(yaml, &note(false), json!({}), &[], outputs.clone());
    assert_eq!(shared.plans[0]["dedupe"]["mode"], "use_existing");
    assert_eq!(
        shared.plans[1],
        json!({
            "plan": "call",
            "step_id": "note",
            "action": "hubspot.note.create",
            "connection": "hubspot",
            "fields": {
                "contact_id": "h-1",
                "hs_note_body": "Called, wants a demo",
                "hs_timestamp": "2026-05-08T08:00:00.000Z"
            },
            "dedupe": {"mode": "always_create", "lookup": []},
            "link": "note"
        })
    );
    let private = run(yaml, &note(true), json!({}), &[], outputs);
    assert_eq!(private.outcome.to_string(), "filtered: is_private = true");
    assert!(private.plans.is_empty());
}

fn moysklad_connections() -> Value {
    json!({
        "calltouch": {"default_region": "RU"},
        "moysklad": {"default_region": "RU", "organization": "org-1"}
    })
}

#[test]
fn seed_4_calltouch_call_becomes_deal_counterparty_and_order() {
    let yaml = include_str!("seeds/4a-calltouch-call-to-moysklad.yaml");
    let call = common::event(
        "calltouch.call.completed",
        "calltouch",
        ("call", "123456"),
        json!({
            "call_id": 123456, "caller_phone": "79161234567", "call_time": "08/05/2026 15:32:47",
            "source": "yandex", "medium": "cpc", "utm_source": "yandex", "utm_medium": "cpc",
            "utm_campaign": "brand", "utm_content": "", "utm_term": "стулья",
            "gclid": "GA1.1.1", "tags_dtmf": "1", "tags_phone": "Лид", "duration": 65,
            "successful": true
        }),
    );
    let outputs = json!({
        "deal": {"id": "ctd-1", "order_number": "ct-123456"},
        "customer": {"id": "cp-1"},
        "order": {"id": "ord-1"}
    });
    let result = run(yaml, &call, moysklad_connections(), &[], outputs);
    assert_eq!(result.outcome, FilterOutcome::Passed);
    assert_eq!(
        result.plans,
        vec![
            json!({
                "plan": "call",
                "step_id": "deal",
                "action": "calltouch.deal.create",
                "connection": "calltouch",
                "fields": {
                    "call_id": 123456,
                    "order_date": "08-05-2026 15:32:47",
                    "order_number": "ct-123456",
                    "revenue": 0,
                    "status": "PENDING"
                },
                "dedupe": {"mode": "always_create", "lookup": []}
            }),
            json!({
                "plan": "call",
                "step_id": "customer",
                "action": "moysklad.counterparty.create",
                "connection": "moysklad",
                "fields": {
                    "company_type": "individual",
                    "name": "Заказ по звонку из Calltouch с номера +79161234567",
                    "phone": "+79161234567",
                    "tags": "1|Лид"
                },
                "dedupe": {"mode": "use_existing", "lookup": [{"field": "phone", "value": "+79161234567"}]}
            }),
            json!({
                "plan": "call",
                "step_id": "order",
                "action": "moysklad.customerorder.create",
                "connection": "moysklad",
                "fields": {
                    "agent": "cp-1",
                    "description": "Calltouch callId=123456",
                    "external_code": "ct-123456",
                    "gclid": "GA1.1.1",
                    "medium": "cpc",
                    "organization": "org-1",
                    "source": "yandex",
                    "tags": "1|Лид",
                    "utm_campaign": "brand",
                    "utm_content": "",
                    "utm_medium": "cpc",
                    "utm_source": "yandex",
                    "utm_term": "стулья"
                },
                "dedupe": {"mode": "always_create", "lookup": []},
                "link": "order"
            }),
        ]
    );
}

#[test]
fn seed_4_calltouch_request_dedupes_by_phone_or_email() {
    let yaml = include_str!("seeds/4b-calltouch-request-to-moysklad.yaml");
    let request = common::event(
        "calltouch.request.created",
        "calltouch",
        ("request", "777"),
        json!({"request_id": 777, "phone": "8 (916) 123-45-67", "email": "ivan@example.com",
               "request_time": "2026-05-08 15:00:00", "subject": "Обратный звонок", "source": "google"}),
    );
    let outputs = json!({"deal": {"id": "d", "order_number": "ct-r777"}, "customer": {"id": "cp-2"}, "order": {"id": "o"}});
    let result = run(yaml, &request, moysklad_connections(), &[], outputs);
    assert_eq!(
        result.plans[1]["fields"]["name"],
        "Заказ по заявке из Calltouch: +79161234567, ivan@example.com"
    );
    assert_eq!(
        result.plans[1]["dedupe"],
        json!({"mode": "use_existing", "lookup": [
            {"field": "phone", "value": "+79161234567"},
            {"field": "email", "value": "ivan@example.com"}
        ]})
    );
    assert_eq!(result.plans[2]["fields"]["agent"], "cp-2");
    assert_eq!(result.plans[2]["fields"]["external_code"], "ct-r777");
}

fn order_event(state: &str) -> Event {
    common::event(
        "moysklad.customerorder.updated",
        "moysklad",
        ("customerorder", "ord-1"),
        json!({"id": "ord-1", "name": "00042", "state": state, "sum": 150050.0,
               "updated": "2026-05-08 15:40:01.512", "external_code": "ct-123456"}),
    )
}

#[test]
fn seed_4_order_changes_update_the_calltouch_deal_unless_complete() {
    let yaml = include_str!("seeds/4c-moysklad-order-updated-to-calltouch.yaml");
    let paid = run(
        yaml,
        &order_event("paid"),
        moysklad_connections(),
        &[],
        json!({"deal": {}}),
    );
    assert_eq!(
        paid.plans,
        vec![json!({
            "plan": "call",
            "step_id": "deal",
            "action": "calltouch.deal.update",
            "connection": "calltouch",
            "fields": {"revenue": "1500.50", "status": "paid", "status_date": "08-05-2026 15:40:01"},
            "dedupe": {"mode": "always_create", "lookup": []},
            "target": {"id": "ct-123456"}
        })]
    );
    let complete = run(
        yaml,
        &order_event("complete"),
        moysklad_connections(),
        &[],
        json!({}),
    );
    assert_eq!(complete.outcome.to_string(), "filtered: state = complete");
}

#[test]
fn seed_4_completed_order_completes_the_deal() {
    let yaml = include_str!("seeds/4d-moysklad-order-complete-to-calltouch.yaml");
    let complete = run(
        yaml,
        &order_event("complete"),
        moysklad_connections(),
        &[],
        json!({"deal": {}}),
    );
    assert_eq!(complete.plans[0]["fields"]["status"], "COMPLETED");
    assert_eq!(complete.plans[0]["fields"]["revenue"], "1500.50");
    let paid = run(
        yaml,
        &order_event("paid"),
        moysklad_connections(),
        &[],
        json!({}),
    );
    assert_eq!(
        paid.outcome.to_string(),
        "filtered: state = paid, not complete"
    );
}

#[test]
fn seed_5_verbox_visitor_becomes_a_linked_planfix_contact_and_task() {
    let yaml = include_str!("seeds/5-verbox-to-planfix.yaml");
    let visitor = |phone: Value| {
        common::event(
            "verbox.visitor.updated",
            "verbox",
            ("visitor", "v-9"),
            json!({"visitor_id": "v-9", "phone": phone, "page_url": "https://shop.test/sofas"}),
        )
    };
    let connections = json!({"planfix": {"default_region": "RU", "site": "shop.test"}});
    let outputs = json!({"contact": {"id": "pf-c1"}, "task": {"id": "pf-t1"}});
    let result = run(
        yaml,
        &visitor(json!("8 (916) 123-45-67")),
        connections.clone(),
        &[],
        outputs.clone(),
    );
    assert_eq!(
        result.plans,
        vec![
            json!({
                "plan": "call",
                "step_id": "contact",
                "action": "planfix.contact.create",
                "connection": "planfix",
                "fields": {"email": "", "is_company": false, "name": "Посетитель v-9", "phone": "+79161234567"},
                "dedupe": {"mode": "update_existing", "lookup": [{"field": "phone", "value": "+79161234567"}]},
                "link": "contact"
            }),
            json!({
                "plan": "call",
                "step_id": "task",
                "action": "planfix.task.create",
                "connection": "planfix",
                "fields": {
                    "counterparty": "pf-c1",
                    "description": "Страница: https://shop.test/sofas",
                    "name": "Чат с сайта shop.test: v-9"
                },
                "dedupe": {"mode": "always_create", "lookup": []},
                "link": "task"
            }),
        ]
    );
    // A visitor already linked to a contact updates it without a search.
    let linked = run(
        yaml,
        &visitor(json!("+79161234567")),
        connections.clone(),
        &[("contact", "pf-c1")],
        outputs.clone(),
    );
    assert_eq!(linked.plans[0]["dedupe"]["linked_id"], "pf-c1");
    // Anonymous visitors are not sent.
    let anonymous = run(yaml, &visitor(Value::Null), connections, &[], outputs);
    assert_eq!(
        anonymous.outcome.to_string(),
        "filtered: none of: phone is missing; email is missing"
    );
}
