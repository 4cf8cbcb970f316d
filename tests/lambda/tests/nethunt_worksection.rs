//! The NetHunt ↔ Worksection recipe end to end through the real Lambda
//! binaries under the Runtime API emulator, on moto, against the fakes.
//! NetHunt sends no webhooks: the tick Lambda publishes one poll request per
//! polled source (the NetHunt folder/field and Worksection's task closes),
//! dispatch polls the vendor and publishes what changed, and dispatch runs
//! those. A Worksection close also comes by webhook; the same close found
//! again by polling `get_events` is handled once.
//!
//! Needs `CRMBRIDGE_TEST_AWS_ENDPOINT` (moto; infra/test.sh starts it) and
//! the binaries built (`cargo build --bins`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Stack, admin_request, emf_lines, hook_request, http, pairs, wait_for_emf};
use crmbridge_fakes::vendors::nethunt::FakeNetHunt;
use crmbridge_fakes::vendors::worksection::FakeWorksection;
use serde_json::{Value, json};

const TO_TASK: &str = "nethunt-record-to-worksection-task";
const TO_RECORD: &str = "worksection-task-closed-to-nethunt";

const POLL_REQUESTED: &str = "crmbridge.poll.requested";
const FIELD_CHANGED: &str = "nethunt.record.field_changed";
const TASK_CLOSED: &str = "worksection.task.closed";

const ASSIGNEE: &str = "dev@acme.test";

/// `YYYY-MM-DD` of today plus `days`, in UTC (no calendar crate here:
/// Howard Hinnant's `civil_from_days`).
fn utc_date_plus(days: i64) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let z = i64::try_from(secs / 86_400).unwrap() + days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The two sources of this recipe, as the tick names them.
struct Sources {
    nethunt_prefix: String,
    worksection: String,
}

impl Sources {
    fn is_nethunt(&self, name: &str) -> bool {
        name.strip_prefix(&self.nethunt_prefix)
            .is_some_and(|tag| tag.len() == 16 && tag.chars().all(|c| c.is_ascii_hexdigit()))
    }
}

/// One scheduled tick at `time`: it must ask for exactly the two sources;
/// both poll requests are handed to dispatch (NetHunt first), which starts
/// no run itself. Returns the vendor requests each poll made (NetHunt,
/// Worksection) as `METHOD path?query -> status` lines.
async fn tick_and_poll(
    s: &Stack,
    time: &str,
    sources: &Sources,
    nethunt: &FakeNetHunt,
    ws: &FakeWorksection,
) -> (Vec<String>, Vec<String>) {
    let ticked = s.tick_at(time).await;
    assert_eq!(ticked["published"], 2, "tick at {time}: {ticked:#}");
    let names: Vec<&str> = ticked["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{ticked:#}");
    assert_eq!(
        names.iter().filter(|n| sources.is_nethunt(n)).count(),
        1,
        "{ticked:#}"
    );
    assert!(names.contains(&sources.worksection.as_str()), "{ticked:#}");

    let mut requests = s.routing.take_kind(2, POLL_REQUESTED).await;
    let subject = |r: &Value| r["detail"]["subject"]["id"].as_str().unwrap().to_owned();
    let ids: BTreeSet<String> = requests.iter().map(subject).collect();
    assert_eq!(
        ids,
        names.iter().map(|n| (*n).to_owned()).collect(),
        "{requests:#?}"
    );
    requests.sort_by_key(|r| !sources.is_nethunt(&subject(r)));

    let nh_before = nethunt.requests().len();
    dispatch_poll(s, &requests[0]).await;
    let nh_made: Vec<String> = nethunt.requests()[nh_before..]
        .iter()
        .map(|r| format!("{} {}?{} -> {:?}", r.method, r.path, r.query, r.status))
        .collect();

    let ws_before = ws.requests().len();
    dispatch_poll(s, &requests[1]).await;
    let ws_made: Vec<String> = ws.requests()[ws_before..]
        .iter()
        .map(|r| format!("{} {}?{} -> {:?}", r.method, r.path, r.query, r.status))
        .collect();
    (nh_made, ws_made)
}

/// Dispatches a poll request and waits for its "polled" log line: the
/// dispatcher's output is read from its pipe, and may arrive after the
/// invocation's response.
async fn dispatch_poll(s: &Stack, request: &Value) {
    let source = request["detail"]["subject"]["id"].as_str().unwrap().to_owned();
    let position = s.dispatcher.log_position();
    let reply = s.dispatch(request).await;
    assert_eq!(
        reply,
        json!({"runs": [], "duplicate": false}),
        "a poll request starts no run itself"
    );
    let logged = s
        .dispatcher
        .wait_for_log(position, Duration::from_secs(30), |line| {
            serde_json::from_str::<Value>(line).is_ok_and(|l| {
                l["message"] == "polled" && l["source"].as_str() == Some(source.as_str())
            })
        })
        .await;
    assert!(logged.is_some(), "no \"polled\" line for {source}");
}

/// `(found, accepted)` of the latest poll of the source whose name starts
/// with `source`, from dispatch's "polled" log line.
fn last_poll(s: &Stack, source: &str) -> (u64, u64) {
    s.dispatcher
        .logs()
        .iter()
        .rev()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|l| {
            l["message"] == "polled" && l["source"].as_str().is_some_and(|n| n.starts_with(source))
        })
        .map(|l| {
            (
                l["found"].as_u64().unwrap(),
                l["accepted"].as_u64().unwrap(),
            )
        })
        .unwrap_or_else(|| panic!("no poll of {source} logged"))
}

async fn admin_get(s: &Stack, path: &str) -> Value {
    let (status, reply) = http(&s.admin, admin_request("GET", path, &s.owner_key)).await;
    assert_eq!(status, 200, "GET {path}: {reply}");
    reply
}

fn update_record_calls(nethunt: &FakeNetHunt) -> usize {
    nethunt
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.contains("/actions/update-record/"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn won_records_become_tasks_and_closed_tasks_update_the_record() {
    let s = Stack::start().await;
    let nethunt = FakeNetHunt::start("owner@acme.test", "nh-key-1")
        .await
        .unwrap();
    let ws = FakeWorksection::start("ws-admin-key-1").await.unwrap();

    let deals = nethunt.add_folder("Deals");
    for field in ["Name", "Status", "Email", "Phone", "Stage"] {
        nethunt.add_field(&deals, field).unwrap();
    }
    let project = ws.add_project("Delivery");
    ws.add_user(ASSIGNEE, "Dev Eloper");

    // The two connections, checked, and the recipe.
    let nh = s
        .admin_post(
            "/v1/connections",
            json!({
                "app": "nethunt", "name": "NetHunt",
                "settings": {"base_url": nethunt.base_url()},
                "credentials": {"email": "owner@acme.test", "api_key": "nh-key-1"}}),
            201,
        )
        .await;
    let wsc = s
        .admin_post(
            "/v1/connections",
            json!({
                "app": "worksection", "name": "WS",
                "settings": {"base_url": ws.base_url(), "auth_scheme": "header"},
                "credentials": {"admin_key": "ws-admin-key-1"}}),
            201,
        )
        .await;
    for (connection, secret) in [(&nh, "nh-key-1"), (&wsc, "ws-admin-key-1")] {
        assert!(
            !connection.to_string().contains(secret),
            "credentials leaked: {connection}"
        );
    }
    let nh_id = nh["id"].as_str().unwrap().to_owned();
    let ws_id = wsc["id"].as_str().unwrap().to_owned();
    for id in [&nh_id, &ws_id] {
        let check = s
            .admin_post(&format!("/v1/connections/{id}/check"), json!({}), 200)
            .await;
        assert_eq!(check["ok"], true, "{check:#}");
        assert_eq!(check["error"], Value::Null, "{check:#}");
        assert_eq!(check["transient"], false, "{check:#}");
        assert!(check["account"].is_object(), "{check:#}");
    }
    let catalog = admin_get(&s, &format!("/v1/connections/{nh_id}/catalog")).await;
    let folder = catalog["folders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "Deals")
        .unwrap_or_else(|| panic!("no Deals folder: {catalog:#}"));
    assert_eq!(folder["id"], deals.as_str(), "{catalog:#}");
    let field_names: BTreeSet<&str> = folder["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        field_names,
        BTreeSet::from(["Name", "Status", "Email", "Phone", "Stage"]),
        "{catalog:#}"
    );

    let created = s
        .admin_post(
            "/v1/recipes/nethunt-worksection/instantiate",
            json!({
            "connections": {"nethunt": nh_id, "worksection": ws_id},
            "parameters": {
                "project": project,
                "assignee": ASSIGNEE,
                "priority": 8,
                "duration_days": 3,
                "on_repeat": "always_create",
                "close_field": "Stage",
                "close_value": "Delivered",
            }}),
            201,
        )
        .await;
    assert_eq!(created["items"].as_array().unwrap().len(), 2, "{created}");
    let hook = wsc["webhook_path"].as_str().unwrap().to_owned();
    let sources = Sources {
        nethunt_prefix: format!("{nh_id}#{FIELD_CHANGED}#"),
        worksection: format!("{ws_id}#{TASK_CLOSED}"),
    };

    // The first tick: each first poll only records where the source is now.
    let (nh_made, ws_made) =
        tick_and_poll(&s, "2026-11-24T10:00:00Z", &sources, &nethunt, &ws).await;
    assert!(
        !nh_made
            .iter()
            .any(|r| r.contains("/triggers/updated-record/")),
        "the first NetHunt poll reads no records: {nh_made:#?}"
    );
    assert!(
        !ws_made.iter().any(|r| r.contains("get_events")),
        "the first Worksection poll reads no events: {ws_made:#?}"
    );
    s.routing.take(0).await;

    // A deal is won: one change, one task.
    let acme = nethunt
        .insert_record(
            &deals,
            json!({"Name": "ACME", "Status": "New",
                   "Email": ["a@acme.test"], "Phone": ["+380501112233"]}),
        )
        .unwrap();
    nethunt.set_field(&acme, "Status", json!("Won")).unwrap();
    let (nh_made, _) = tick_and_poll(&s, "2026-11-24T10:05:00Z", &sources, &nethunt, &ws).await;
    assert!(
        nh_made
            .iter()
            .any(|r| r.contains("/triggers/updated-record/")),
        "{nh_made:#?}"
    );
    let change = s.routing.take_kind(1, FIELD_CHANGED).await.remove(0);
    assert_eq!(change["detail"]["app"], "nethunt", "{change:#}");
    let data = &change["detail"]["data"];
    assert_eq!(data["id"], acme.as_str(), "{change:#}");
    assert_eq!(data["folder"], "Deals", "{change:#}");
    assert_eq!(data["field"], "Status", "{change:#}");
    assert_eq!(data["value"], "Won", "{change:#}");
    assert_eq!(data["name"], "ACME", "{change:#}");
    assert_eq!(
        data["fields"]["Email"],
        json!(["a@acme.test"]),
        "{change:#}"
    );
    let due_before = utc_date_plus(3);
    assert_eq!(
        s.dispatch_runs(&change).await,
        pairs(&[(TO_TASK, "succeeded")])
    );
    let due_after = utc_date_plus(3);
    // The functions measured it, as CloudWatch embedded metrics in their
    // logs: the change the poll accepted, the Worksection call, the run.
    wait_for_emf(&s.dispatcher, "crmbridge_events_accepted", |l| {
        l["app"] == "nethunt" && l["crmbridge_events_accepted"] == 1.0
    })
    .await;
    wait_for_emf(&s.dispatcher, "crmbridge_vendor_calls", |l| {
        l["vendor"] == "worksection" && l["class"] == "2xx"
    })
    .await;
    wait_for_emf(&s.dispatcher, "crmbridge_runs", |l| {
        l["automation"] == TO_TASK && l["status"] == "succeeded"
    })
    .await;
    let runs = emf_lines(&s, "crmbridge_runs");
    let succeeded: Vec<&Value> = runs
        .iter()
        .filter(|l| l["automation"] == TO_TASK && l["status"] == "succeeded")
        .collect();
    assert_eq!(succeeded.len(), 1, "{runs:#?}");
    assert_eq!(succeeded[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"], "crmbridge");
    assert_eq!(
        succeeded[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
        json!([["tenant", "automation", "status"], ["status"]])
    );
    let tasks = ws.tasks();
    assert_eq!(tasks.len(), 1, "{tasks:#?}");
    let task = &tasks[0];
    let task_id = task["id"].as_str().unwrap().to_owned();
    assert_eq!(task["name"], "ACME", "{task:#}");
    assert_eq!(task["project"]["id"], project.as_str(), "{task:#}");
    assert_eq!(task["user_to"]["email"], ASSIGNEE, "{task:#}");
    assert_eq!(task["priority"], "8", "{task:#}");
    let due = task["date_end"].as_str().unwrap();
    assert!(
        due == due_before || due == due_after,
        "deadline {due}, expected {due_before}: {task:#}"
    );
    let text = task["text"].as_str().unwrap();
    assert!(text.contains("E-mail: a@acme.test"), "{text}");
    assert!(text.contains("Phone: +380501112233"), "{text}");
    assert!(text.contains("Folder: Deals"), "{text}");
    let schemes = ws.auth_schemes();
    assert!(!schemes.is_empty());
    assert!(schemes.iter().all(|s| *s == "header"), "{schemes:?}");

    // Another field of the won record changes: the Status is still Won, so
    // the poll (which sees the record again) publishes nothing.
    nethunt
        .set_field(&acme, "Email", json!(["b@acme.test"]))
        .unwrap();
    tick_and_poll(&s, "2026-11-24T10:10:00Z", &sources, &nethunt, &ws).await;
    assert_eq!(
        last_poll(&s, &sources.nethunt_prefix),
        (1, 0),
        "the record is seen again, and is no change"
    );
    s.routing.take(0).await;
    assert_eq!(ws.tasks().len(), 1);

    // The assignee closes the task: the webhook brings the close, and the
    // record's Stage is set.
    ws.close_task_as_user(&task_id, ASSIGNEE).unwrap();
    let delivery = hook_request("POST", &hook).json(&ws.close_event_json(&task_id));
    let (status, ack) = http(&s.webhook, delivery).await;
    assert_eq!((status, &ack), (200, &json!({"status": "OK"})));
    let closed = s.routing.take_kind(1, TASK_CLOSED).await.remove(0);
    assert_eq!(closed["detail"]["app"], "worksection", "{closed:#}");
    assert_eq!(closed["detail"]["subject"]["id"], task_id.as_str());
    assert_eq!(
        s.dispatch_runs(&closed).await,
        pairs(&[(TO_RECORD, "succeeded")])
    );
    let record = nethunt.record(&acme).unwrap();
    assert_eq!(record["fields"]["Stage"], "Delivered", "{record:#}");
    assert_eq!(record["fields"]["Status"], "Won", "{record:#}");
    assert_eq!(update_record_calls(&nethunt), 1);

    // The next poll of get_events finds the same close: it is not a second
    // event, and the record is not updated again.
    let (_, ws_made) = tick_and_poll(&s, "2026-11-24T10:15:00Z", &sources, &nethunt, &ws).await;
    assert!(
        ws_made
            .iter()
            .any(|r| r.contains("action=get_events") && r.ends_with("Some(200)")),
        "{ws_made:#?}"
    );
    assert_eq!(
        last_poll(&s, &sources.worksection),
        (1, 0),
        "get_events has the close, already accepted from the webhook"
    );
    s.routing.take(0).await;
    assert_eq!(update_record_calls(&nethunt), 1);
    // A redelivery of the webhook's event is a duplicate too.
    assert_eq!(s.dispatch(&closed).await["duplicate"], true);
    assert_eq!(update_record_calls(&nethunt), 1);

    // Won → Lost → Won with always_create: a second task.
    nethunt.set_field(&acme, "Status", json!("Lost")).unwrap();
    tick_and_poll(&s, "2026-11-24T10:20:00Z", &sources, &nethunt, &ws).await;
    let lost = s.routing.take_kind(1, FIELD_CHANGED).await.remove(0);
    assert_eq!(lost["detail"]["data"]["value"], "Lost", "{lost:#}");
    assert_eq!(
        s.dispatch(&lost).await,
        json!({"runs": [], "duplicate": false}),
        "Lost is not watched"
    );
    assert_eq!(ws.tasks().len(), 1);
    nethunt.set_field(&acme, "Status", json!("Won")).unwrap();
    tick_and_poll(&s, "2026-11-24T10:25:00Z", &sources, &nethunt, &ws).await;
    let won_again = s.routing.take_kind(1, FIELD_CHANGED).await.remove(0);
    assert_eq!(won_again["detail"]["data"]["value"], "Won", "{won_again:#}");
    assert_ne!(won_again["detail"]["id"], change["detail"]["id"]);
    assert_eq!(
        s.dispatch_runs(&won_again).await,
        pairs(&[(TO_TASK, "succeeded")])
    );
    let tasks = ws.tasks();
    assert_eq!(tasks.len(), 2, "{tasks:#?}");
    assert!(tasks.iter().all(|t| t["name"] == "ACME"), "{tasks:#?}");

    // The new task is the record's linked task: closing it updates the
    // record too.
    let second = tasks.iter().find(|t| t["id"] != task_id.as_str()).unwrap();
    let second_id = second["id"].as_str().unwrap().to_owned();
    ws.close_task_as_user(&second_id, ASSIGNEE).unwrap();
    let delivery = hook_request("POST", &hook).json(&ws.close_event_json(&second_id));
    let (status, ack) = http(&s.webhook, delivery).await;
    assert_eq!((status, &ack), (200, &json!({"status": "OK"})));
    let closed = s.routing.take_kind(1, TASK_CLOSED).await.remove(0);
    assert_eq!(closed["detail"]["subject"]["id"], second_id.as_str());
    assert_eq!(
        s.dispatch_runs(&closed).await,
        pairs(&[(TO_RECORD, "succeeded")])
    );
    assert_eq!(update_record_calls(&nethunt), 2);
    let updates: Vec<String> = nethunt
        .requests()
        .iter()
        .filter(|r| r.path.contains("/actions/update-record/"))
        .map(|r| r.path.clone())
        .collect();
    assert!(
        updates.iter().all(|p| p.ends_with(&format!("/{acme}"))),
        "{updates:#?}"
    );

    // The project is archived: a newly won deal creates no task, the run
    // is skipped and the automation says why.
    ws.set_project_status(&project, "archive").unwrap();
    let globex = nethunt
        .insert_record(&deals, json!({"Name": "Globex", "Status": "New"}))
        .unwrap();
    nethunt.set_field(&globex, "Status", json!("Won")).unwrap();
    tick_and_poll(&s, "2026-11-24T10:30:00Z", &sources, &nethunt, &ws).await;
    let won = s.routing.take_kind(1, FIELD_CHANGED).await.remove(0);
    assert_eq!(won["detail"]["data"]["id"], globex.as_str(), "{won:#}");
    let reply = s.dispatch(&won).await;
    assert_eq!(reply["duplicate"], false, "{reply:#}");
    let runs = reply["runs"].as_array().unwrap();
    assert_eq!(
        common::automation_statuses(runs),
        pairs(&[(TO_TASK, "skipped")]),
        "{reply:#}"
    );
    assert_eq!(ws.tasks().len(), 2);
    let automation = admin_get(&s, &format!("/v1/automations/{TO_TASK}")).await;
    assert_eq!(
        automation["health"],
        format!("project archived ({project})"),
        "{automation:#}"
    );

    // The project is active again: the next task clears the health.
    ws.set_project_status(&project, "active").unwrap();
    let initech = nethunt
        .insert_record(&deals, json!({"Name": "Initech", "Status": "Won"}))
        .unwrap();
    tick_and_poll(&s, "2026-11-24T10:35:00Z", &sources, &nethunt, &ws).await;
    let won = s.routing.take_kind(1, FIELD_CHANGED).await.remove(0);
    assert_eq!(won["detail"]["data"]["id"], initech.as_str(), "{won:#}");
    assert_eq!(
        s.dispatch_runs(&won).await,
        pairs(&[(TO_TASK, "succeeded")])
    );
    assert_eq!(ws.tasks().len(), 3);
    let automation = admin_get(&s, &format!("/v1/automations/{TO_TASK}")).await;
    assert_eq!(automation["health"], Value::Null, "{automation:#}");

    // Every run once, in the run log.
    let mut listed = common::automation_statuses(&s.runs().await);
    listed.sort();
    assert_eq!(
        listed,
        pairs(&[
            (TO_TASK, "succeeded"),
            (TO_RECORD, "succeeded"),
            (TO_TASK, "succeeded"),
            (TO_RECORD, "succeeded"),
            (TO_TASK, "skipped"),
            (TO_TASK, "succeeded"),
        ])
    );

    s.report();
}
