//! The NetHunt ↔ Worksection recipe end to end through `crmbridge serve`,
//! against the fakes. NetHunt sends no webhooks: its records are polled on
//! every tick (300 ms here). Task closes come by Worksection webhook and by
//! polling `get_events`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::{Duration, Instant};

use common::{Server, client, get_json, pause, runs, serve_with};
use crmbridge_fakes::Fault;
use crmbridge_fakes::vendors::nethunt::FakeNetHunt;
use crmbridge_fakes::vendors::worksection::FakeWorksection;
use serde_json::{Value, json};

const TO_TASK: &str = "nethunt-record-to-worksection-task";
const TO_RECORD: &str = "worksection-task-closed-to-nethunt";

struct World {
    nethunt: FakeNetHunt,
    worksection: FakeWorksection,
    deals: String,
    project: String,
    assignee: String,
}

async fn world() -> World {
    let nethunt = FakeNetHunt::start("owner@acme.test", "nh-key-1")
        .await
        .unwrap();
    let deals = nethunt.add_folder("Deals");
    for field in ["Name", "Status", "Email", "Phone", "Stage"] {
        nethunt.add_field(&deals, field).unwrap();
    }
    let worksection = FakeWorksection::start("ws-admin-key-1").await.unwrap();
    let project = worksection.add_project("Delivery");
    let assignee = "frank@acme.test".to_owned();
    worksection.add_user(&assignee, "Frank");
    World {
        nethunt,
        worksection,
        deals,
        project,
        assignee,
    }
}

async fn post(server: &Server, key: &str, path: &str, body: Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", server.base))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}


/// Creates both connections; returns (nethunt, worksection).
async fn connections(server: &Server, key: &str, w: &World, scheme: &str) -> (Value, Value) {
    let nh: Value = post(
        server,
        key,
        "/v1/connections",
        json!({"app": "nethunt", "name": "NetHunt", "settings": {"base_url": w.nethunt.base_url(), "time_zone": "Europe/Kyiv"},
               "credentials": {"email": "owner@acme.test", "api_key": "nh-key-1"}}),
    )
    .await
    .json()
    .await
    .unwrap();
    let ws: Value = post(
        server,
        key,
        "/v1/connections",
        json!({"app": "worksection", "name": "Worksection", "settings": {"base_url": w.worksection.base_url(), "auth_scheme": scheme},
               "credentials": {"admin_key": "ws-admin-key-1"}}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert!(nh["id"].is_string(), "{nh}");
    assert!(ws["id"].is_string(), "{ws}");
    (nh, ws)
}

/// Waits (bounded) until `done` holds.
async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        pause().await;
    }
}

fn polls(nethunt: &FakeNetHunt) -> usize {
    nethunt
        .requests()
        .iter()
        .filter(|r| r.path.contains("/triggers/updated-record/") && r.status == Some(200))
        .count()
}

/// Waits for `n` more completed NetHunt polls: every change made before
/// has then been seen by at least one whole poll.
async fn more_polls(nethunt: &FakeNetHunt, n: usize) {
    let start = polls(nethunt);
    until("more NetHunt polls", async || polls(nethunt) >= start + n).await;
}

fn updates(nethunt: &FakeNetHunt) -> usize {
    nethunt
        .requests()
        .iter()
        .filter(|r| r.path.contains("/actions/update-record/"))
        .count()
}

async fn automation_runs(server: &Server, key: &str, automation: &str) -> Vec<Value> {
    runs(server, key)
        .await
        .into_iter()
        .filter(|r| r["automation"] == automation)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_won_deal_becomes_one_task_and_closing_it_updates_the_deal() {
    let w = world().await;
    // Older deals: the catalog suggests Status values from them. (None is
    // Won: one changed in the second the watch starts may count as a change.)
    for status in ["Lost", "Qualified", "Lost"] {
        w.nethunt
            .insert_record(&w.deals, json!({"Name": "Old", "Status": status}))
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let server = serve_with(
        &dir.path().join("data"),
        2,
        &["--allow-any-vendor-url", "--tick-interval", "300ms"],
    );
    let key = server.owner_key.clone().unwrap();
    let (nh, ws) = connections(&server, &key, &w, "hash").await;
    let nh_id = nh["id"].as_str().unwrap().to_owned();

    // The connection check and the live catalog.
    let check: Value = post(
        &server,
        &key,
        &format!("/v1/connections/{nh_id}/check"),
        json!({}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(check["ok"], true, "{check}");
    assert_eq!(check["account"]["folders"][0]["name"], "Deals");
    let catalog = get_json(&server, &key, &format!("/v1/connections/{nh_id}/catalog")).await;
    let fields = catalog["folders"][0]["fields"].as_array().unwrap();
    let status = fields.iter().find(|f| f["name"] == "Status").unwrap();
    assert_eq!(
        status["suggested_values"][0],
        json!({"value": "Lost", "count": 2}),
        "{catalog:#}"
    );
    let ws_catalog = get_json(
        &server,
        &key,
        &format!("/v1/connections/{}/catalog", ws["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(ws_catalog["projects"][0]["id"], json!(w.project));

    // Automations are checked against the live account: a folder or field
    // that does not exist is refused with its path, and nothing is saved.
    let roles = json!({"nethunt": nh["id"], "worksection": ws["id"]});
    let refused = post(
        &server,
        &key,
        "/v1/recipes/nethunt-worksection/instantiate",
        json!({"connections": roles, "parameters": {"project": w.project, "folder": "Dealz", "close_field": "Stagee"}}),
    )
    .await;
    assert_eq!(refused.status(), 422);
    let body: Value = refused.json().await.unwrap();
    let paths: Vec<&str> = body["error"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"automations[0].trigger.options.folder"),
        "{body:#}"
    );
    assert!(
        paths.contains(&"automations[1].steps[0].fields.folder"),
        "{body:#}"
    );
    let listed = get_json(&server, &key, "/v1/automations").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 0);

    let created = post(
        &server,
        &key,
        "/v1/recipes/nethunt-worksection/instantiate",
        json!({"connections": roles, "parameters": {
            "project": w.project, "assignee": w.assignee, "priority": 8, "duration_days": 3,
            "close_field": "Stage", "close_value": "Delivered"}}),
    )
    .await;
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());

    // Once NetHunt has been polled with a cursor, a deal is won.
    more_polls(&w.nethunt, 1).await;
    let deal = w
        .nethunt
        .insert_record(
            &w.deals,
            json!({"Name": "ACME", "Status": "New", "Email": ["buyer@acme.test"], "Phone": ["+380501112233"]}),
        )
        .unwrap();
    w.nethunt.set_field(&deal, "Status", json!("Won")).unwrap();
    until("the task", async || !w.worksection.tasks().is_empty()).await;
    // The deal keeps changing and every poll window overlaps the last:
    // still one task.
    w.nethunt
        .set_field(&deal, "Email", json!(["buyer@acme.test", "boss@acme.test"]))
        .unwrap();
    more_polls(&w.nethunt, 3).await;
    let tasks = w.worksection.tasks();
    assert_eq!(tasks.len(), 1, "{tasks:#?}");
    let task = &tasks[0];
    assert_eq!(task["name"], "ACME");
    assert_eq!(task["user_to"]["email"], w.assignee.as_str());
    assert_eq!(task["priority"], "8");
    let due = (chrono::Utc::now()
        .with_timezone(&chrono_tz::Europe::Kyiv)
        .date_naive()
        + chrono::Duration::days(3))
    .format("%Y-%m-%d")
    .to_string();
    let utc_due = (chrono::Utc::now().date_naive() + chrono::Duration::days(3))
        .format("%Y-%m-%d")
        .to_string();
    assert!(
        task["date_end"] == due.as_str() || task["date_end"] == utc_due.as_str(),
        "{task:#}"
    );
    let text = task["text"].as_str().unwrap();
    assert!(text.contains("E-mail: buyer@acme.test"), "{text}");
    assert!(text.contains("Phone: +380501112233"), "{text}");
    assert!(text.contains("Folder: Deals"), "{text}");
    assert_eq!(w.worksection.auth_schemes().first(), Some(&"hash"));
    assert_eq!(automation_runs(&server, &key, TO_TASK).await.len(), 1);
    // NetHunt is polled, so its events are planned on the last real one:
    // the dry run of that event plans exactly what its run sent, and
    // writes nothing to Worksection.
    let ws_writes = || {
        w.worksection
            .requests()
            .iter()
            .filter(|r| {
                r.query_pairs().iter().any(|(k, v)| {
                    k == "action"
                        && ["post_", "update_", "complete_", "reopen_", "add_"]
                            .iter()
                            .any(|p| v.starts_with(p))
                })
            })
            .count()
    };
    let plan = common::dry_run(&server, &key, TO_TASK, json!({}), ws_writes).await;
    assert_eq!(plan["vendor_reads"], 0, "{plan:#}");
    let ran = automation_runs(&server, &key, TO_TASK).await;
    let run = get_json(
        &server,
        &key,
        &format!("/v1/runs/{}", ran[0]["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(plan["event"]["id"], run["event"]["id"], "{plan:#}");
    assert_eq!(common::assert_plan_matches(&plan, &run), 1, "{plan:#}\n{run:#}");

    // The task is closed in Worksection: its webhook is answered as
    // Worksection requires, and the deal's Stage is set through the link.
    let task_id = task["id"].as_str().unwrap().to_owned();
    w.worksection
        .close_task_as_user(&task_id, &w.assignee)
        .unwrap();
    let hook = format!("{}{}", server.base, ws["webhook_path"].as_str().unwrap());
    // Worksection probes a webhook URL with an empty batch when it is
    // registered: answered as it requires, and nothing is stored.
    let probe = client()
        .post(&hook)
        .header("content-type", "application/json")
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), 200);
    assert_eq!(
        probe.json::<Value>().await.unwrap(),
        json!({"status": "OK"})
    );
    // A body that is not Worksection's is refused, naming the path.
    let refused = client()
        .post(&hook)
        .header("content-type", "application/json")
        .body(r#"[{"object": {"type": "task", "id": 1}}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["field"], "body[0].action", "{body}");
    let delivery = w
        .worksection
        .send_webhook(&hook, &w.worksection.close_event_json(&task_id), None)
        .await
        .unwrap();
    assert_eq!(delivery.status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&delivery.body).unwrap(),
        json!({"status": "OK"})
    );
    assert!(delivery.ok);
    until("the deal's stage", async || {
        w.nethunt.record(&deal).unwrap()["fields"]["Stage"] == "Delivered"
    })
    .await;
    // The same close is found again by the get_events poll and delivered
    // again by webhook: the deal is updated once.
    let events_polls = |ws: &FakeWorksection| {
        ws.requests()
            .iter()
            .filter(|r| r.query_param("action").as_deref() == Some("get_events"))
            .count()
    };
    let seen = events_polls(&w.worksection);
    until("two more get_events polls", async || {
        events_polls(&w.worksection) >= seen + 2
    })
    .await;
    let again = w
        .worksection
        .send_webhook(&hook, &w.worksection.close_event_json(&task_id), None)
        .await
        .unwrap();
    assert!(again.ok, "{again:?}");
    until("the close runs to finish", async || {
        let runs = automation_runs(&server, &key, TO_RECORD).await;
        !runs.is_empty() && runs.iter().all(|r| r["status"] != "running")
    })
    .await;
    assert_eq!(updates(&w.nethunt), 1);
    assert_eq!(automation_runs(&server, &key, TO_RECORD).await.len(), 1);

    // Won → Lost → Won: the recipe's default dedupe (use_existing) keeps
    // one task per deal; the second Won is a run that reuses the link.
    w.nethunt.set_field(&deal, "Status", json!("Lost")).unwrap();
    more_polls(&w.nethunt, 2).await;
    w.nethunt.set_field(&deal, "Status", json!("Won")).unwrap();
    until("the second Won's run", async || {
        let runs = automation_runs(&server, &key, TO_TASK).await;
        runs.len() == 2 && runs.iter().all(|r| r["status"] == "succeeded")
    })
    .await;
    assert_eq!(w.worksection.tasks().len(), 1);

    // The project is archived: nothing is created, the run is skipped
    // with the reason and the automation carries the mark.
    w.worksection
        .set_project_status(&w.project, "archive")
        .unwrap();
    let second = w
        .nethunt
        .insert_record(&w.deals, json!({"Name": "Globex", "Status": "Won"}))
        .unwrap();
    until("the skipped run", async || {
        automation_runs(&server, &key, TO_TASK)
            .await
            .iter()
            .any(|r| r["status"] == "skipped")
    })
    .await;
    let automation = get_json(&server, &key, &format!("/v1/automations/{TO_TASK}")).await;
    assert_eq!(
        automation["health"],
        json!(format!("project archived ({})", w.project)),
        "{automation:#}"
    );
    assert_eq!(w.worksection.tasks().len(), 1);
    let skipped = automation_runs(&server, &key, TO_TASK)
        .await
        .into_iter()
        .find(|r| r["status"] == "skipped")
        .unwrap();
    let run = get_json(
        &server,
        &key,
        &format!("/v1/runs/{}", skipped["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(run["event"]["subject"]["id"], json!(second), "{run:#}");
    assert!(
        run["steps"][0]["error"]
            .as_str()
            .unwrap()
            .contains("is archived"),
        "{run:#}"
    );

    // Fixed: the next won deal gets its task and the mark goes away.
    w.worksection
        .set_project_status(&w.project, "active")
        .unwrap();
    w.nethunt
        .insert_record(&w.deals, json!({"Name": "Initech", "Status": "Won"}))
        .unwrap();
    until("the third task", async || w.worksection.tasks().len() == 2).await;
    until("the mark to clear", async || {
        get_json(&server, &key, &format!("/v1/automations/{TO_TASK}")).await["health"].is_null()
    })
    .await;

    // Turning the NetHunt integration off deletes its automations, after
    // the warning.
    let url = format!("{}/v1/connections/{nh_id}", server.base);
    let warned = client()
        .delete(&url)
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(warned.status(), 409);
    let body: Value = warned.json().await.unwrap();
    assert_eq!(body["error"]["affected"].as_array().unwrap().len(), 2);
    let deleted = client()
        .delete(format!("{url}?confirm=true"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let listed = get_json(&server, &key, "/v1/automations").await;
    assert!(listed["items"].as_array().unwrap().is_empty(), "{listed:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_killed_halfway_resumes_after_a_restart_without_loss_or_double() {
    let w = world().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["--allow-any-vendor-url", "--tick-interval", "300ms"];
    let server = serve_with(&data, 1, &args);
    let key = server.owner_key.clone().unwrap();
    let (nh, ws) = connections(&server, &key, &w, "header").await;
    let created = post(
        &server,
        &key,
        "/v1/recipes/nethunt-worksection/instantiate",
        json!({"connections": {"nethunt": nh["id"], "worksection": ws["id"]},
               "parameters": {"project": w.project}}),
    )
    .await;
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    more_polls(&w.nethunt, 1).await;

    // The next poll hangs inside NetHunt's answer…
    w.nethunt.fail_next_on(
        Some("GET"),
        "/triggers/updated-record/",
        1,
        Fault::Slow(Duration::from_secs(120)),
    );
    let deal = w
        .nethunt
        .insert_record(&w.deals, json!({"Name": "ACME", "Status": "Won"}))
        .unwrap();
    until("the poll to hang", async || {
        w.nethunt
            .requests()
            .iter()
            .any(|r| r.fault.is_some() && r.status.is_none())
    })
    .await;
    // …and the process dies with it.
    drop(server);

    let server = serve_with(&data, 1, &args);
    until("the task", async || !w.worksection.tasks().is_empty()).await;
    more_polls(&w.nethunt, 3).await;
    assert_eq!(w.worksection.tasks().len(), 1);
    let runs = automation_runs(&server, &key, TO_TASK).await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0]["status"], "succeeded");
    assert_eq!(w.nethunt.record(&deal).unwrap()["fields"]["Status"], "Won");
    assert_eq!(w.worksection.auth_schemes().first(), Some(&"header"));
}
