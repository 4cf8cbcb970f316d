//! The NetHunt and Worksection connectors against their fakes: auth
//! schemes, error envelopes, the archived/deleted project skip, a create
//! whose answer was lost, and polling.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use chrono::Utc;
use crate::common;

use common::{context, vendor};
use crmbridge_connectors::{ActionError, Resend, VendorClient, VendorError};
use crmbridge_fakes::Fault;
use crmbridge_fakes::vendors::nethunt::FakeNetHunt;
use crmbridge_fakes::vendors::worksection::FakeWorksection;
use serde_json::{Map, Value, json};

fn fields(value: Value) -> Map<String, Value> {
    value.as_object().unwrap().clone()
}

#[tokio::test]
async fn worksection_tasks_under_both_signing_schemes_and_its_error_envelope() {
    let ws = FakeWorksection::start("admin-key-7").await.unwrap();
    let project = ws.add_project("Delivery");
    ws.add_user("frank@acme.test", "Frank");
    let http = VendorClient::new();
    let credentials = BTreeMap::from([("admin_key".to_owned(), "admin-key-7".to_owned())]);
    for (scheme, key) in [("hash", "run/1/task"), ("header", "run/2/task")] {
        let settings =
            json!({"base_url": ws.base_url(), "auth_scheme": scheme, "timeout_ms": 2000});
        let ctx = context(&settings, &credentials, &http, key);
        let out = vendor("worksection")
            .execute(
                &ctx,
                "worksection.task.create",
                &fields(json!({
                    "project": project, "title": "Deal won: ACME", "assignee": "frank@acme.test",
                    "priority": 7, "start": "2026-12-01", "end": "05.12.2026",
                    "import": {"E-mail": ["a@acme.test"], "Amount": 1200, "Empty": ""}})),
                None,
            )
            .await
            .unwrap();
        let task = ws.task(&out.id).unwrap();
        assert_eq!(task["name"], "Deal won: ACME");
        assert_eq!(task["date_start"], "2026-12-01");
        assert_eq!(task["date_end"], "2026-12-05");
        assert_eq!(task["priority"], "7");
        let text = task["text"].as_str().unwrap();
        // One line per imported label (labels in alphabetical order).
        assert!(
            text.starts_with("Amount: 1200\nE-mail: a@acme.test"),
            "{text}"
        );
        assert!(!text.contains("Empty"), "{text}");
    }
    // get_project, get_tasks (the reference check), post_task: each signed.
    assert_eq!(
        ws.auth_schemes(),
        ["hash", "hash", "hash", "header", "header", "header"]
    );
    assert_eq!(ws.tasks().len(), 2);

    // post_task answering its task as a one-element list (as Worksection's
    // official SDK expects it may): the same task id comes out.
    ws.post_task_data_as_list(true);
    let settings = json!({"base_url": ws.base_url()});
    let ctx = context(&settings, &credentials, &http, "run/list/task");
    let out = vendor("worksection")
        .execute(
            &ctx,
            "worksection.task.create",
            &fields(json!({"project": project, "title": "Listed", "assignee": "frank@acme.test"})),
            None,
        )
        .await
        .unwrap();
    assert_eq!(ws.task(&out.id).unwrap()["name"], "Listed");
    ws.post_task_data_as_list(false);
    assert_eq!(ws.tasks().len(), 3);

    // An error comes as HTTP 200 with status "error": still an error, and
    // not one worth retrying.
    let settings = json!({"base_url": ws.base_url()});
    let ctx = context(&settings, &credentials, &http, "run/3/task");
    let err = vendor("worksection")
        .execute(
            &ctx,
            "worksection.task.create",
            &fields(json!({"project": project, "title": "x", "assignee": "nobody@acme.test"})),
            None,
        )
        .await
        .unwrap_err();
    assert!(!err.is_transient());
    assert!(err.to_string().contains("Invalid email"), "{err}");
    // Bad fields are refused before any call, naming the field.
    let before = ws.requests().len();
    for (bad, field) in [
        (
            json!({"project": project, "title": "x", "priority": 11}),
            "fields.priority",
        ),
        (
            json!({"project": project, "title": "x", "end": "someday"}),
            "fields.end",
        ),
        (json!({"project": project}), "fields.title"),
        (
            json!({"project": project, "title": "x", "owner": "me"}),
            "fields.owner",
        ),
    ] {
        match vendor("worksection")
            .execute(&ctx, "worksection.task.create", &fields(bad), None)
            .await
        {
            Err(ActionError::Field { field: got, .. }) => assert_eq!(got, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    assert_eq!(ws.requests().len(), before);

    // A wrong key: refused, and the key appears nowhere in the error.
    let wrong = BTreeMap::from([("admin_key".to_owned(), "not-the-key-123".to_owned())]);
    let ctx = context(&settings, &wrong, &http, "run/4/task");
    let err = vendor("worksection").check(&ctx).await.unwrap_err();
    assert!(err.to_string().contains("not accepted"), "{err}");
    assert!(!err.to_string().contains("not-the-key-123"));
}

#[tokio::test]
async fn archived_and_deleted_projects_skip_the_step_with_a_health_mark() {
    let ws = FakeWorksection::start("k").await.unwrap();
    let archived = ws.add_project("Old");
    ws.set_project_status(&archived, "archive").unwrap();
    let deleted = ws.add_project("Gone");
    ws.delete_project(&deleted).unwrap();
    let http = VendorClient::new();
    let credentials = BTreeMap::from([("admin_key".to_owned(), "k".to_owned())]);
    let settings = json!({"base_url": ws.base_url()});
    let ctx = context(&settings, &credentials, &http, "run/1/task");
    for (project, health) in [
        (&archived, "project archived"),
        (&deleted, "project deleted"),
    ] {
        match vendor("worksection")
            .execute(
                &ctx,
                "worksection.task.create",
                &fields(json!({"project": project, "title": "t"})),
                None,
            )
            .await
        {
            Err(ActionError::Skipped { health: got, .. }) => {
                assert_eq!(got, format!("{health} ({project})"));
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(
        ws.tasks().is_empty(),
        "the real API would have accepted them"
    );
}

#[tokio::test]
async fn a_task_whose_answer_was_lost_is_found_not_created_twice() {
    let ws = FakeWorksection::start("k").await.unwrap();
    let project = ws.add_project("Delivery");
    let http = VendorClient::new();
    let credentials = BTreeMap::from([("admin_key".to_owned(), "k".to_owned())]);
    let settings = json!({"base_url": ws.base_url(), "timeout_ms": 1000});
    let ctx = context(&settings, &credentials, &http, "run/9/task");
    let request = fields(json!({"project": project, "title": "Deal won"}));
    ws.fail_next_on(Some("POST"), "/api/admin/v2", 1, Fault::DropAfterCommit);
    let first = vendor("worksection")
        .execute(&ctx, "worksection.task.create", &request, None)
        .await
        .unwrap_err();
    assert!(first.is_transient(), "{first}");
    assert_eq!(ws.tasks().len(), 1, "the task was created, its answer lost");
    // The step is retried (same run, same step): the task is found by its
    // reference instead of being created again.
    let second = vendor("worksection")
        .execute(&ctx, "worksection.task.create", &request, None)
        .await
        .unwrap();
    assert_eq!(ws.tasks().len(), 1);
    assert_eq!(second.id, ws.tasks()[0]["id"].as_str().unwrap());
    // Another step (another key) is another task.
    let other = context(&settings, &credentials, &http, "run/10/task");
    vendor("worksection")
        .execute(&other, "worksection.task.create", &request, None)
        .await
        .unwrap();
    assert_eq!(ws.tasks().len(), 2);
}

#[tokio::test]
async fn a_task_sent_twice_by_one_step_is_one_task() {
    let ws = FakeWorksection::start("k").await.unwrap();
    let project = ws.add_project("Delivery");
    let http = VendorClient::new();
    let credentials = BTreeMap::from([("admin_key".to_owned(), "k".to_owned())]);
    let settings = json!({"base_url": ws.base_url()});
    let ctx = context(&settings, &credentials, &http, "run/11/task");
    let request = fields(json!({"project": project, "title": "Deal won", "text": "ACME"}));
    assert_eq!(
        vendor("worksection").resend("worksection.task.create", &request),
        Resend::Keyed
    );
    let first = vendor("worksection")
        .execute(&ctx, "worksection.task.create", &request, None)
        .await
        .unwrap();
    let second = vendor("worksection")
        .execute(&ctx, "worksection.task.create", &request, None)
        .await
        .unwrap();
    assert_eq!(second.id, first.id);
    assert_eq!(ws.tasks().len(), 1);
    let posts = ws
        .requests()
        .into_iter()
        .filter(|r| r.query_param("action").as_deref() == Some("post_task"))
        .count();
    assert_eq!(posts, 1, "the second send found the task by its reference");
}

#[tokio::test]
async fn nethunt_records_fields_and_polls() {
    let nh = FakeNetHunt::start("me@acme.test", "nh-secret-9")
        .await
        .unwrap();
    let deals = nh.add_folder("Deals");
    for field in ["Name", "Status", "Tags"] {
        nh.add_field(&deals, field).unwrap();
    }
    let http = VendorClient::new();
    let credentials = BTreeMap::from([
        ("email".to_owned(), "me@acme.test".to_owned()),
        ("api_key".to_owned(), "nh-secret-9".to_owned()),
    ]);
    let settings = json!({"base_url": nh.base_url()});
    let ctx = context(&settings, &credentials, &http, "run/1/record");
    // The watch starts (by NetHunt's clock: its Date header) before any
    // record changes: the first poll only places the cursor.
    let scope = json!({"folder": "Deals", "field": "Status"});
    let kind = "nethunt.record.field_changed";
    let first = vendor("nethunt")
        .poll(&ctx, kind, &scope, None, Utc::now())
        .await
        .unwrap();
    assert!(first.events.is_empty());
    assert_eq!(first.cursor["folder_id"], json!(deals));
    assert_eq!(first.cursor["since"], first.cursor["floor"]);
    // Date headers have whole seconds: later writes are a second later.
    nh.advance_clock(std::time::Duration::from_secs(1));

    // create-record answers `recordId`; the connector reads it.
    let created = vendor("nethunt")
        .execute(
            &ctx,
            "nethunt.record.create",
            &fields(json!({"folder": "deals", "fields": {"Name": "ACME", "Status": "New", "Tags": ["a"]}})),
            None,
        )
        .await
        .unwrap();
    assert!(nh.record(&created.id).is_some());
    vendor("nethunt")
        .execute(
            &ctx,
            "nethunt.record.update",
            &fields(json!({"fields": {"Status": "Won"}, "add": {"Tags": "vip"}, "remove": {"Tags": "a"}})),
            Some(&created.id),
        )
        .await
        .unwrap();
    let record = nh.record(&created.id).unwrap();
    assert_eq!(record["fields"]["Status"], "Won");
    assert_eq!(record["fields"]["Tags"], json!(["vip"]));
    let missing = vendor("nethunt")
        .execute(
            &ctx,
            "nethunt.record.update",
            &fields(json!({"fields": {"Status": "Won"}})),
            Some("000000000000000000000000"),
        )
        .await
        .unwrap_err();
    assert!(matches!(
        missing,
        ActionError::Vendor(VendorError::Rejected { status: 404, .. })
    ));

    // The next poll reports each record whose watched field changed as an
    // observation of its current value, oldest first.
    let other = nh
        .insert_record(&deals, json!({"Name": "Globex", "Status": "Lost"}))
        .unwrap();
    nh.set_field(&other, "Name", json!("Globex Corp")).unwrap();
    let second = vendor("nethunt")
        .poll(&ctx, kind, &scope, Some(&first.cursor), Utc::now())
        .await
        .unwrap();
    assert_eq!(second.events.len(), 2, "{:?}", second.events);
    assert_eq!(second.events[0].subject.id, created.id);
    assert_eq!(second.events[0].data["value"], "Won");
    let event = &second.events[1];
    assert_eq!(event.subject.id, other);
    assert_eq!(event.data["value"], "Lost");
    assert_eq!(event.data["folder"], "Deals");
    assert_eq!(event.data["name"], "Globex Corp");
    let observation = event.observation.as_ref().unwrap();
    assert_eq!(observation.key, format!("{deals}:{other}:Status"));
    assert_eq!(observation.value, json!("Lost"));
    let poll = nh
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.path.contains("updated-record"))
        .unwrap();
    assert_eq!(poll.query_param("fieldName").as_deref(), Some("Status"));

    // Bad credentials: NetHunt's plain-text answer, never the key.
    let wrong = BTreeMap::from([
        ("email".to_owned(), "me@acme.test".to_owned()),
        ("api_key".to_owned(), "nh-wrong-0".to_owned()),
    ]);
    let bad = context(&settings, &wrong, &http, "check");
    let err = vendor("nethunt").check(&bad).await.unwrap_err().to_string();
    assert!(err.contains("does not appear to be valid"), "{err}");
    assert!(!err.contains("nh-wrong-0"));
}

/// Closing and reopening, polled from `get_events`: each kind's poll reports
/// its own events only, with who did it.
#[tokio::test]
async fn worksection_polls_closes_and_reopens_as_their_own_events() {
    let ws = FakeWorksection::start("k").await.unwrap();
    let project = ws.add_project("Delivery");
    ws.add_user("olga@ws.example", "Olga");
    let http = VendorClient::new();
    let credentials = BTreeMap::from([("admin_key".to_owned(), "k".to_owned())]);
    let settings = json!({"base_url": ws.base_url()});
    let ctx = context(&settings, &credentials, &http, "poll/1");
    let start = Utc::now() - chrono::Duration::minutes(1);
    let (closed, reopened) = ("worksection.task.closed", "worksection.task.reopened");
    let mut cursors = Vec::new();
    for kind in [closed, reopened] {
        let first = vendor("worksection")
            .poll(&ctx, kind, &Value::Null, None, start)
            .await
            .unwrap();
        assert!(first.events.is_empty());
        cursors.push(first.cursor);
    }
    let step = context(&settings, &credentials, &http, "run/1/task");
    let task = vendor("worksection")
        .execute(
            &step,
            "worksection.task.create",
            &fields(json!({"project": project, "title": "Deal won"})),
            None,
        )
        .await
        .unwrap();
    ws.close_task_as_user(&task.id, "olga@ws.example").unwrap();
    ws.reopen_task_as_user(&task.id, "olga@ws.example").unwrap();
    let polled_closed = vendor("worksection")
        .poll(&ctx, closed, &Value::Null, Some(&cursors[0]), Utc::now())
        .await
        .unwrap();
    let polled_reopened = vendor("worksection")
        .poll(&ctx, reopened, &Value::Null, Some(&cursors[1]), Utc::now())
        .await
        .unwrap();
    assert_eq!(polled_closed.events.len(), 1, "{:#?}", polled_closed.events);
    assert_eq!(polled_closed.events[0].kind, closed);
    assert_eq!(
        polled_reopened.events.len(),
        1,
        "{:#?}",
        polled_reopened.events
    );
    let event = &polled_reopened.events[0];
    assert_eq!(event.kind, reopened);
    assert_eq!(event.subject.id, task.id);
    assert_eq!(event.data["reopened_by"], "olga@ws.example");
}
