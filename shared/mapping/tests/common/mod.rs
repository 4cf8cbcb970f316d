//! A small catalog covering the five seed integrations, and helpers to
//! build events and contexts.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Utc};
use crmbridge_mapping::catalog::{
    ActionKind, ActionSpec, EventKindSpec, FieldSpec, FieldType, StaticCatalog,
};
use crmbridge_mapping::{Event, EventId, Subject};
use serde_json::Value;

fn s(name: &str) -> FieldSpec {
    FieldSpec::new(name, FieldType::String)
}

fn t(name: &str, ty: FieldType) -> FieldSpec {
    FieldSpec::new(name, ty)
}

fn req(name: &str, ty: FieldType) -> FieldSpec {
    FieldSpec::required(name, ty)
}

fn utm(prefix: &str) -> Vec<FieldSpec> {
    [
        "utm_source",
        "utm_medium",
        "utm_campaign",
        "utm_content",
        "utm_term",
    ]
    .iter()
    .map(|n| s(&format!("{prefix}{n}")))
    .collect()
}

fn id_output() -> Vec<FieldSpec> {
    vec![s("id"), s("name"), s("url")]
}

pub fn catalog() -> StaticCatalog {
    let mut call_fields = vec![
        t("call_id", FieldType::Integer),
        t("caller_phone", FieldType::Phone),
        t("call_time", FieldType::DateTime),
        s("source"),
        s("medium"),
        s("gclid"),
        s("tags_dtmf"),
        s("tags_phone"),
        t("tags", FieldType::Array),
        t("duration", FieldType::Integer),
        t("successful", FieldType::Boolean),
        s("status"),
    ];
    call_fields.extend(utm(""));
    let mut request_fields = vec![
        t("request_id", FieldType::Integer),
        t("phone", FieldType::Phone),
        t("email", FieldType::Email),
        t("request_time", FieldType::DateTime),
        s("subject"),
        s("source"),
        s("medium"),
        s("gclid"),
    ];
    request_fields.extend(utm(""));
    let mut order_fields = vec![
        req("organization", FieldType::String),
        req("agent", FieldType::String),
        s("name"),
        s("description"),
        s("state"),
        s("source"),
        s("medium"),
        s("gclid"),
        s("tags"),
        s("external_code"),
    ];
    order_fields.extend(utm(""));
    let mut zoho_lead_fields = vec![
        req("Last_Name", FieldType::String),
        t("Phone", FieldType::Phone),
        t("Email", FieldType::Email),
        s("Lead_Source"),
        s("Owner"),
        s("Description"),
        s("rs_google_client_id"),
    ];
    zoho_lead_fields.extend(utm("rs_"));
    let mut ringostat_fields = vec![
        s("call_id"),
        t("caller", FieldType::Phone),
        t(
            "disposition",
            FieldType::Enum(vec![
                "ANSWERED".into(),
                "NO ANSWER".into(),
                "BUSY".into(),
                "FAILED".into(),
            ]),
        ),
        s("employee_id"),
        t("call_date", FieldType::DateTime),
        t("duration", FieldType::Integer),
        t("is_new_contact", FieldType::Boolean),
        s("google_client_id"),
    ];
    ringostat_fields.extend(utm(""));

    StaticCatalog::new()
        // Calltouch
        .with_event(EventKindSpec::new("calltouch.call.completed", call_fields))
        .with_event(EventKindSpec::new(
            "calltouch.request.created",
            request_fields,
        ))
        .with_action(
            ActionSpec::new(
                "calltouch.deal.create",
                ActionKind::Create,
                vec![
                    t("call_id", FieldType::Integer),
                    t("request_id", FieldType::Integer),
                    req("order_number", FieldType::String),
                    t("revenue", FieldType::Money),
                    req("status", FieldType::String),
                    t("order_date", FieldType::String),
                ],
            )
            .with_output(vec![s("id"), s("order_number")]),
        )
        .with_action(ActionSpec::new(
            "calltouch.deal.update",
            ActionKind::Update,
            vec![
                t("revenue", FieldType::Money),
                s("status"),
                s("status_date"),
            ],
        ))
        // MoySklad
        .with_event(EventKindSpec::new(
            "moysklad.customerorder.updated",
            vec![
                s("id"),
                s("name"),
                s("state"),
                t("sum", FieldType::Money),
                t("payed_sum", FieldType::Money),
                t("updated", FieldType::DateTime),
                s("external_code"),
            ],
        ))
        .with_action(
            ActionSpec::new(
                "moysklad.counterparty.create",
                ActionKind::Create,
                vec![
                    req("name", FieldType::String),
                    t("phone", FieldType::Phone),
                    t("email", FieldType::Email),
                    s("tags"),
                    s("description"),
                    s("external_code"),
                    t(
                        "company_type",
                        FieldType::Enum(vec![
                            "legal".into(),
                            "entrepreneur".into(),
                            "individual".into(),
                        ]),
                    ),
                ],
            )
            .with_output(vec![s("id"), s("name"), t("phone", FieldType::Phone)]),
        )
        .with_action(
            ActionSpec::new(
                "moysklad.customerorder.create",
                ActionKind::Create,
                order_fields,
            )
            .with_output(vec![s("id"), s("name")]),
        )
        // NetHunt ↔ Worksection
        .with_event(
            EventKindSpec::new(
                "nethunt.record.updated",
                vec![
                    s("record_id"),
                    s("folder"),
                    s("name"),
                    t("fields", FieldType::Object),
                    t("owner_email", FieldType::Email),
                    t("updated_at", FieldType::DateTime),
                ],
            )
            .with_options(vec![
                req("folder", FieldType::String),
                req("field", FieldType::String),
                req("value", FieldType::String),
                t("poll_minutes", FieldType::Integer),
            ]),
        )
        .with_action(ActionSpec::new(
            "nethunt.record.update",
            ActionKind::Update,
            vec![req("fields", FieldType::Object)],
        ))
        .with_event(EventKindSpec::new(
            "worksection.task.closed",
            vec![
                s("task_id"),
                s("project_id"),
                s("name"),
                t("closed_at", FieldType::DateTime),
            ],
        ))
        .with_action(
            ActionSpec::new(
                "worksection.task.create",
                ActionKind::Create,
                vec![
                    req("project", FieldType::String),
                    req("title", FieldType::String),
                    s("text"),
                    t("responsible", FieldType::Email),
                    t("priority", FieldType::Integer),
                    t("dateend", FieldType::String),
                ],
            )
            .with_output(id_output()),
        )
        // Ringostat → Zoho
        .with_event(EventKindSpec::new(
            "ringostat.call.completed",
            ringostat_fields,
        ))
        .with_action(
            ActionSpec::new("zoho.leads.create", ActionKind::Create, zoho_lead_fields)
                .with_output(vec![s("id")]),
        )
        .with_action(
            ActionSpec::new(
                "zoho.tasks.create",
                ActionKind::Create,
                vec![
                    req("Subject", FieldType::String),
                    s("Owner"),
                    s("What_Id"),
                    t("Due_Date", FieldType::Date),
                    t(
                        "Priority",
                        FieldType::Enum(vec!["High".into(), "Normal".into(), "Low".into()]),
                    ),
                ],
            )
            .with_output(vec![s("id")]),
        )
        // KADO → HubSpot
        .with_event(EventKindSpec::new(
            "kado.contact.created",
            vec![
                s("contact_id"),
                s("first_name"),
                s("last_name"),
                t("email", FieldType::Email),
                t("phone", FieldType::Phone),
                t("is_private", FieldType::Boolean),
                s("team_id"),
                s("company_id"),
            ],
        ))
        .with_event(EventKindSpec::new(
            "kado.note.created",
            vec![
                s("note_id"),
                s("body"),
                t("is_private", FieldType::Boolean),
                t("created_at", FieldType::DateTime),
                t("contact", FieldType::Object),
                s("team_id"),
            ],
        ))
        .with_action(
            ActionSpec::new(
                "hubspot.contact.create",
                ActionKind::Create,
                vec![
                    t("email", FieldType::Email),
                    s("firstname"),
                    s("lastname"),
                    t("phone", FieldType::Phone),
                    s("kado_contact_id"),
                ],
            )
            .with_output(vec![s("id")]),
        )
        .with_action(
            ActionSpec::new(
                "hubspot.note.create",
                ActionKind::Create,
                vec![
                    req("hs_note_body", FieldType::String),
                    req("hs_timestamp", FieldType::DateTime),
                    s("contact_id"),
                ],
            )
            .with_output(vec![s("id")]),
        )
        // Verbox → Planfix
        .with_event(EventKindSpec::new(
            "verbox.visitor.updated",
            vec![
                s("visitor_id"),
                s("name"),
                t("phone", FieldType::Phone),
                t("email", FieldType::Email),
                s("company"),
                s("page_url"),
            ],
        ))
        .with_action(
            ActionSpec::new(
                "planfix.contact.create",
                ActionKind::Create,
                vec![
                    req("name", FieldType::String),
                    t("phone", FieldType::Phone),
                    t("email", FieldType::Email),
                    t("is_company", FieldType::Boolean),
                ],
            )
            .with_output(vec![s("id")]),
        )
        .with_action(
            ActionSpec::new(
                "planfix.task.create",
                ActionKind::Create,
                vec![
                    req("name", FieldType::String),
                    s("description"),
                    s("counterparty"),
                ],
            )
            .with_output(vec![s("id")]),
        )
        .with_action(ActionSpec::new(
            "planfix.chat.send",
            ActionKind::Other,
            vec![req("message", FieldType::String)],
        ))
}

pub fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-05-08T12:40:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

pub fn event(kind: &str, connection: &str, subject: (&str, &str), data: Value) -> Event {
    let app = kind.split('.').next().unwrap_or_default().to_owned();
    Event {
        id: EventId::from_source(connection, subject.1),
        tenant: "t1".into(),
        connection: connection.into(),
        app,
        kind: kind.into(),
        subject: Subject {
            kind: subject.0.into(),
            id: subject.1.into(),
        },
        occurred_at: now(),
        received_at: now(),
        data,
    }
}
