//! Two-way order status sync between retailCRM and MoySklad end to end
//! through `crmbridge serve`: a retailCRM order's status change updates
//! its MoySklad order (the deal), and a MoySklad order's state change
//! updates the retailCRM order. Both sides report crmbridge's own writes
//! back — retailCRM in its history (marked with our key), MoySklad by
//! webhook and by poll — and none of them may start a run that writes
//! again. 100 changes by people, alternating sides, make exactly 100 runs
//! and 100 writes; our writes reported back are recorded as echoes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Server, client, pause, runs, serve_with};
use crmbridge_fakes::vendors::moysklad::FakeMoySklad;
use crmbridge_fakes::vendors::retailcrm::FakeRetailCrm;
use serde_json::{Value, json};

const ORDERS: usize = 10;
const ROUNDS: usize = 10;
const STATUSES: [&str; 3] = ["s0", "s1", "s2"];
const RC_KEY: &str = "rc-key-two-way";
const MS_TOKEN: &str = "ms-token-two-way";

async fn post(server: &Server, key: &str, path: &str, body: Value) -> Value {
    let response = client()
        .post(format!("{}{path}", server.base))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{path}: {status} {body}");
    body
}

/// A call to a fake's API as a person's own tool would make it.
async fn vendor_call(request: reqwest::RequestBuilder) -> Value {
    let response = request.send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{status} {body}");
    body
}

fn of(all: &[Value], automation: &str, status: &str) -> usize {
    all.iter()
        .filter(|r| r["automation"] == automation && r["status"] == status)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_changes_flow_both_ways_and_no_write_comes_back() {
    let retailcrm = FakeRetailCrm::start(RC_KEY).await.unwrap();
    let moysklad = Arc::new(FakeMoySklad::start(MS_TOKEN).await.unwrap());
    for status in STATUSES {
        retailcrm.add_status(status, status, "work");
        moysklad.add_state(status, "Regular");
    }
    let dir = tempfile::tempdir().unwrap();
    let server = serve_with(
        &dir.path().join("data"),
        2,
        &["--allow-any-vendor-url", "--tick-interval", "300ms"],
    );
    let key = server.owner_key.clone().unwrap();
    let rc = post(
        &server,
        &key,
        "/v1/connections",
        json!({"app": "retailcrm", "name": "retailCRM", "settings": {"base_url": retailcrm.base_url(), "site": "main"},
               "credentials": {"api_key": RC_KEY}}),
    )
    .await;
    let ms = post(
        &server,
        &key,
        "/v1/connections",
        json!({"app": "moysklad", "name": "МойСклад", "settings": {"base_url": moysklad.base_url()},
               "credentials": {"token": MS_TOKEN}}),
    )
    .await;

    // The pairs, made before any automation watches: retailCRM orders
    // first, then MoySklad orders naming them (externalCode), then each
    // retailCRM order told its MoySklad order (externalId), with
    // crmbridge's key.
    let http = client();
    let mut rc_orders = Vec::new();
    for i in 0..ORDERS {
        let made = vendor_call(
            http.post(format!("{}/api/v5/orders/create", retailcrm.base_url()))
                .header("x-api-key", RC_KEY)
                .form(&[
                    ("site", "main"),
                    (
                        "order",
                        &json!({"number": format!("R-{i}"), "status": "s0"}).to_string(),
                    ),
                ]),
        )
        .await;
        rc_orders.push(made["id"].as_i64().unwrap());
    }
    let agent = moysklad
        .insert_counterparty(json!({"name": "ООО Ромашка"}))
        .unwrap();
    let agent_href = moysklad.counterparty_href(agent["id"].as_str().unwrap());
    let mut ms_orders = Vec::new();
    for rc_id in &rc_orders {
        let made = vendor_call(
            http.post(format!("{}/entity/customerorder", moysklad.base_url()))
                .bearer_auth(MS_TOKEN)
                .json(&json!({
                    "organization": moysklad.organization_ref(),
                    "agent": {"meta": {"href": agent_href, "type": "counterparty", "mediaType": "application/json"}},
                    "state": {"meta": {"href": moysklad.state_href("s0").unwrap(), "type": "state", "mediaType": "application/json"}},
                    "externalCode": rc_id.to_string(),
                })),
        )
        .await;
        ms_orders.push(made["id"].as_str().unwrap().to_owned());
    }
    for (rc_id, ms_id) in rc_orders.iter().zip(&ms_orders) {
        vendor_call(
            http.post(format!(
                "{}/api/v5/orders/{rc_id}/edit",
                retailcrm.base_url()
            ))
            .header("x-api-key", RC_KEY)
            .query(&[("by", "id")])
            .form(&[
                ("site", "main"),
                ("order", &json!({"externalId": ms_id}).to_string()),
            ]),
        )
        .await;
    }

    // The user's MoySklad webhook (with the changed fields), and
    // MoySklad's sender: it announces every change, ours included.
    vendor_call(
        http.post(format!("{}/entity/webhook", moysklad.base_url()))
            .bearer_auth(MS_TOKEN)
            .json(&json!({
                "url": format!("{}{}", server.base, ms["webhook_path"].as_str().unwrap()),
                "action": "UPDATE", "entityType": "customerorder", "diffType": "FIELDS",
            })),
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (moysklad, stop) = (moysklad.clone(), stop.clone());
        tokio::spawn(async move {
            let mut sent = 0;
            while !stop.load(Ordering::SeqCst) {
                sent += moysklad.deliver_webhooks().await.unwrap().len();
                pause().await;
            }
            sent
        })
    };

    for automation in [
        json!({
            "id": "order-status-to-moysklad",
            "name": "retailCRM order status → MoySklad order state",
            "trigger": {"connection": rc["id"], "event": "retailcrm.order.changed"},
            "filter": {"all": [{"field": "field", "eq": "status"}]},
            "steps": [{"id": "deal", "action": "moysklad.customerorder.update", "connection": ms["id"],
                       "target": {"id": "{{ event.external_id }}"}, "fields": {"state": "{{ event.status }}"}}]
        }),
        json!({
            "id": "deal-state-to-retailcrm",
            "name": "MoySklad order state → retailCRM order status",
            "trigger": {"connection": ms["id"], "event": "moysklad.customerorder.updated"},
            "steps": [{"id": "order", "action": "retailcrm.order.update", "connection": rc["id"],
                       "target": {"id": "{{ event.external_code }}"}, "fields": {"status": "{{ event.state }}"}}]
        }),
    ] {
        post(&server, &key, "/v1/automations", automation).await;
    }
    let history_polls = || {
        retailcrm
            .requests()
            .iter()
            .filter(|r| r.path == "/api/v5/orders/history")
            .count()
    };
    let order_polls = || {
        moysklad
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with("/entity/customerorder"))
            .count()
    };
    // Both sides are watched before people start.
    let deadline = Instant::now() + Duration::from_secs(60);
    while history_polls() < 2 || order_polls() < 1 {
        assert!(Instant::now() < deadline, "the sources were never polled");
        pause().await;
    }
    let rc_edits_before = retailcrm
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/edit"))
        .count();

    // People: each round changes every order on one side, alternating;
    // the next round starts once the other side shows the change.
    for round in 0..ROUNDS {
        let status = STATUSES[(round + 1) % STATUSES.len()];
        let in_retailcrm = round % 2 == 0;
        for i in 0..ORDERS {
            if in_retailcrm {
                retailcrm.set_order_status(rc_orders[i], status).unwrap();
            } else {
                moysklad.set_order_state(&ms_orders[i], status).unwrap();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let synced = (0..ORDERS).all(|i| {
                retailcrm.order(rc_orders[i]).unwrap()["status"] == status
                    && moysklad.order_state_name(&ms_orders[i]).as_deref() == Some(status)
            });
            if synced {
                let all = runs(&server, &key).await;
                let done = of(&all, "order-status-to-moysklad", "succeeded")
                    + of(&all, "deal-state-to-retailcrm", "succeeded");
                if done >= (round + 1) * ORDERS && all.iter().all(|r| r["status"] != "running") {
                    break;
                }
            }
            if Instant::now() >= deadline {
                let all = runs(&server, &key).await;
                let state: Vec<(Value, Option<String>)> = (0..ORDERS)
                    .map(|i| {
                        (
                            retailcrm.order(rc_orders[i]).unwrap()["status"].clone(),
                            moysklad.order_state_name(&ms_orders[i]),
                        )
                    })
                    .collect();
                let recent: Vec<(&Value, &Value, &Value)> = all
                    .iter()
                    .filter(|r| r["status"] != "succeeded")
                    .map(|r| (&r["automation"], &r["status"], &r["outcome"]))
                    .collect();
                panic!("round {round} did not sync to {status}: {state:?}\n{recent:#?}");
            }
            pause().await;
        }
    }

    // Every write has had time to come back by both paths: several more
    // polls of each side, and MoySklad's sender has nothing left.
    let (history_seen, orders_seen) = (history_polls(), order_polls());
    let deadline = Instant::now() + Duration::from_secs(60);
    while history_polls() < history_seen + 4
        || order_polls() < orders_seen + 4
        || !moysklad.pending_events().is_empty()
    {
        assert!(Instant::now() < deadline, "no more polls");
        pause().await;
    }
    stop.store(true, Ordering::SeqCst);
    let announced = sender.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let all = loop {
        let all = runs(&server, &key).await;
        if all.iter().all(|r| r["status"] != "running") {
            break all;
        }
        assert!(Instant::now() < deadline, "runs did not settle");
        pause().await;
    };

    let half = ROUNDS / 2 * ORDERS;
    assert_eq!(
        of(&all, "order-status-to-moysklad", "succeeded"),
        half,
        "one MoySklad write per person's retailCRM change"
    );
    assert_eq!(
        of(&all, "deal-state-to-retailcrm", "succeeded"),
        half,
        "one retailCRM write per person's MoySklad change, none for our own"
    );
    assert!(
        all.iter()
            .filter(|r| r["automation"].is_string())
            .all(|r| r["status"] == "succeeded" || r["status"] == "filtered"),
        "{all:#?}"
    );
    // Our MoySklad writes came back (by webhook or poll, whichever came
    // first) and were recorded as echoes, unless a person's next change
    // overtook them: a webhook is read at dispatch, so it then shows the
    // person's version, which runs once.
    let echoes: Vec<&Value> = all
        .iter()
        .filter(|r| r["automation"] == "deal-state-to-retailcrm" && r["status"] == "filtered")
        .collect();
    assert!(!echoes.is_empty() && echoes.len() <= half, "{echoes:#?}");
    assert!(
        echoes.iter().all(|r| r["outcome"]
            .as_str()
            .unwrap()
            .contains("echo of crmbridge's own write")),
        "{echoes:#?}"
    );
    assert!(
        announced >= 2 * half,
        "MoySklad announced {announced} changes"
    );
    // Our retailCRM writes are counted, not events.
    assert!(
        all.iter()
            .any(|r| r["event_kind"] == "retailcrm.history.own_changes"),
        "{all:#?}"
    );
    let rc_edits = retailcrm
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/edit"))
        .count()
        - rc_edits_before;
    let ms_puts = moysklad
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/entity/customerorder/"))
        .count();
    assert_eq!(rc_edits, half, "retailCRM writes");
    assert_eq!(ms_puts, half, "MoySklad writes");
    // Both sides end where the last person left them.
    let last = STATUSES[ROUNDS % STATUSES.len()];
    for i in 0..ORDERS {
        assert_eq!(retailcrm.order(rc_orders[i]).unwrap()["status"], last);
        assert_eq!(
            moysklad.order_state_name(&ms_orders[i]).as_deref(),
            Some(last)
        );
    }
}
