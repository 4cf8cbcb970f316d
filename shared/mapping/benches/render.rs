//! Renders one 16-field step with a 3-condition filter for one event, as
//! dispatch does per automation: evaluate the filter, render the step.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::hint::black_box;

use chrono::{DateTime, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use crmbridge_mapping::{Automation, CompiledAutomation, Event, EventId, RenderContext, Subject};
use serde_json::{Value, json};

const AUTOMATION: &str = r#"
id: bench
name: Calltouch call → MoySklad order
trigger: { connection: calltouch, event: calltouch.call.completed }
filter:
  all:
    - { field: successful, eq: true }
    - { field: duration, gte: 10 }
    - { field: status, not_in: [spam, test] }
steps:
  - id: customer
    action: moysklad.counterparty.create
    connection: moysklad
  - id: order
    action: moysklad.customerorder.create
    connection: moysklad
    fields:
      organization: "{{ connection.organization }}"
      agent: "{{ steps.customer.id }}"
      name: "Заказ по звонку из Calltouch с номера {{ event.caller_phone | phone }}"
      phone: "{{ event.caller_phone | phone }}"
      description: "Calltouch callId={{ event.call_id }}, {{ event.duration }} s"
      external_code: "ct-{{ event.call_id }}"
      moment: "{{ event.call_time | date('%Y-%m-%d %H:%M:%S', 'Europe/Moscow') }}"
      source: "{{ event.source | default('') }}"
      medium: "{{ event.medium | default('') }}"
      utm_source: "{{ event.utm_source | default('') }}"
      utm_medium: "{{ event.utm_medium | default('') }}"
      utm_campaign: "{{ event.utm_campaign | default('') }}"
      utm_content: "{{ event.utm_content | default('') }}"
      utm_term: "{{ event.utm_term | default('') }}"
      tags: "{{ [event.tags_dtmf, event.tags_phone] | join('|') }}"
      state: Новый
"#;

fn event() -> Event {
    let at: DateTime<Utc> = DateTime::from_timestamp(1_778_243_567, 0).unwrap();
    Event {
        id: EventId::from_source("calltouch", "123456"),
        tenant: "t1".into(),
        connection: "calltouch".into(),
        app: "calltouch".into(),
        kind: "calltouch.call.completed".into(),
        subject: Subject {
            kind: "call".into(),
            id: "123456".into(),
        },
        occurred_at: at,
        received_at: at,
        data: json!({
            "call_id": 123456, "caller_phone": "79161234567", "call_time": "08/05/2026 15:32:47",
            "source": "yandex", "medium": "cpc", "utm_source": "yandex", "utm_medium": "cpc",
            "utm_campaign": "brand", "utm_content": "", "utm_term": "стулья", "gclid": "GA1.1.1",
            "tags_dtmf": "1", "tags_phone": "Лид", "duration": 65, "successful": true,
            "status": "successful"
        }),
    }
}

fn bench(c: &mut Criterion) {
    let automation = Automation::from_yaml_str(AUTOMATION).unwrap();
    let compiled = CompiledAutomation::compile(&automation).unwrap();
    let event = event();
    let connections: BTreeMap<String, Value> = BTreeMap::from([(
        "moysklad".to_owned(),
        json!({"default_region": "RU", "organization": "org-1"}),
    )]);
    let outputs = BTreeMap::from([("customer".to_owned(), json!({"id": "cp-1"}))]);
    let now = event.received_at;
    c.bench_function("filter (3 conditions) + render step (16 fields)", |b| {
        b.iter(|| {
            let ctx = RenderContext::new(black_box(&event), now)
                .with_connections(&connections)
                .with_steps(&outputs);
            let outcome = compiled.evaluate_filter(&ctx).unwrap();
            assert!(outcome.passed());
            black_box(compiled.render_step(1, &ctx).unwrap())
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
