//! retailCRM's own echo signal end to end through `crmbridge serve`: an
//! automation that answers every order change by writing the order back
//! (a custom field naming the change) would loop forever if crmbridge
//! heard its own writes. retailCRM marks history made with the reading key
//! (`apiKey.current`); those entries are not order changes, so 100 changes
//! by people make exactly 100 writes and 100 runs, however many ticks pass.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::{Duration, Instant};

use common::{client, pause, runs, serve_with};
use crmbridge_fakes::vendors::retailcrm::FakeRetailCrm;
use serde_json::{Value, json};

const CHANGES: usize = 100;
const ORDERS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_automation_writing_back_to_its_own_trigger_hears_only_people() {
    let retailcrm = FakeRetailCrm::start("rc-key-echo").await.unwrap();
    for code in ["s0", "s1", "s2"] {
        retailcrm.add_status(code, code, "work");
    }
    let dir = tempfile::tempdir().unwrap();
    let server = serve_with(
        &dir.path().join("data"),
        2,
        &["--allow-any-vendor-url", "--tick-interval", "300ms"],
    );
    let key = server.owner_key.clone().unwrap();
    let http = client();
    let post = |path: &str, body: Value| {
        http.post(format!("{}{path}", server.base))
            .bearer_auth(&key)
            .json(&body)
            .send()
    };
    let rc: Value = post(
        "/v1/connections",
        json!({"app": "retailcrm", "name": "retailCRM", "settings": {"base_url": retailcrm.base_url(), "site": "main"},
               "credentials": {"api_key": "rc-key-echo"}}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let automation = json!({
        "id": "note-every-change",
        "name": "Every order change is written back onto the order",
        "trigger": {"connection": rc["id"], "event": "retailcrm.order.changed"},
        "steps": [{
            "id": "note",
            "action": "retailcrm.order.update",
            "connection": rc["id"],
            "target": {"id": "{{ event.id }}"},
            "fields": {"custom_fields": {"last_change": "{{ event.field }} {{ event.status }}"}}
        }]
    });
    let response = post("/v1/automations", automation).await.unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());

    // Orders made with the same key (crmbridge's, as far as retailCRM can
    // tell) once the history is being watched.
    let polls = || {
        retailcrm
            .requests()
            .iter()
            .filter(|r| r.path == "/api/v5/orders/history")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while polls() < 1 {
        assert!(Instant::now() < deadline, "retailCRM was never polled");
        pause().await;
    }
    let mut orders = Vec::new();
    for i in 0..ORDERS {
        let answer: Value = http
            .post(format!("{}/api/v5/orders/create", retailcrm.base_url()))
            .header("x-api-key", "rc-key-echo")
            .form(&[
                ("site", "main"),
                (
                    "order",
                    &json!({"externalId": format!("o-{i}"), "status": "new"}).to_string(),
                ),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        orders.push(answer["id"].as_i64().unwrap());
    }
    // People change statuses: 100 changes over 10 orders.
    for n in 0..CHANGES {
        retailcrm
            .set_order_status(orders[n % ORDERS], &format!("s{}", n % 3))
            .unwrap();
    }
    let edits = || {
        retailcrm
            .requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/edit"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let all = runs(&server, &key).await;
        let done = all
            .iter()
            .filter(|r| r["automation"] == "note-every-change" && r["status"] == "succeeded")
            .count();
        if done >= CHANGES && all.iter().all(|r| r["status"] != "running") {
            break;
        }
        assert!(Instant::now() < deadline, "{done} of {CHANGES} runs");
        pause().await;
    }
    // Several more polls read our 100 writes back: nothing runs again.
    let seen = polls();
    let deadline = Instant::now() + Duration::from_secs(60);
    while polls() < seen + 5 {
        assert!(Instant::now() < deadline, "no more polls");
        pause().await;
    }
    let all = runs(&server, &key).await;
    let of_automation: Vec<&Value> = all
        .iter()
        .filter(|r| r["automation"] == "note-every-change")
        .collect();
    assert_eq!(
        of_automation.len(),
        CHANGES,
        "one run per person's change, none for our own writes"
    );
    assert!(of_automation.iter().all(|r| r["status"] == "succeeded"));
    assert_eq!(edits(), CHANGES, "one write per person's change");
    // Our writes are in the log, counted, as runs matching no automation.
    let counted = all
        .iter()
        .filter(|r| r["status"] == "no_match" && r["event_kind"] == "retailcrm.history.own_changes")
        .count();
    assert!(counted > 0, "{all:#?}");
    // Every order carries a note of one of its changes (the runs of one
    // order may finish in any order).
    for id in &orders {
        let order = retailcrm.order(*id).unwrap();
        let note = order["customFields"]["last_change"]
            .as_str()
            .unwrap_or_default();
        assert!(note.starts_with("status s"), "{order:#}");
    }
}
