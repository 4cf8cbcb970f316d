//! The Calltouch ↔ MoySklad recipe end to end through `crmbridge serve`,
//! against the fake vendor APIs: the four bundles of the seed article.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::{Duration, Instant};

use common::{Server, client, pause, runs, serve_with};
use crmbridge_fakes::vendors::calltouch::{FakeCalltouch, WebhookMethod, send_call_webhook};
use crmbridge_fakes::vendors::moysklad::FakeMoySklad;
use serde_json::{Value, json};

struct Setup {
    server: Server,
    key: String,
    calltouch: FakeCalltouch,
    moysklad: FakeMoySklad,
    calltouch_hook: String,
    moysklad_hook: String,
    _dir: tempfile::TempDir,
}

async fn post(server: &Server, key: &str, path: &str, body: Value) -> (u16, Value) {
    let response = client()
        .post(format!("{}{path}", server.base))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

async fn setup() -> Setup {
    let calltouch = FakeCalltouch::start("ct-token-1", "12345").await.unwrap();
    let moysklad = FakeMoySklad::start("ms-token-1").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = serve_with(&dir.path().join("data"), 2, &["--allow-any-vendor-url"]);
    let key = server.owner_key.clone().unwrap();
    let (status, ct) = post(
        &server,
        &key,
        "/v1/connections",
        json!({"app": "calltouch", "name": "Calltouch", "settings": {"site_id": "12345", "base_url": calltouch.base_url(), "default_region": "RU"},
               "credentials": {"access_token": "ct-token-1"}}),
    )
    .await;
    assert_eq!(status, 201, "{ct}");
    let (status, ms) = post(
        &server,
        &key,
        "/v1/connections",
        json!({"app": "moysklad", "name": "МойСклад", "settings": {"base_url": moysklad.base_url(), "default_region": "RU"},
               "credentials": {"token": "ms-token-1"}}),
    )
    .await;
    assert_eq!(status, 201, "{ms}");
    let (status, created) = post(
        &server,
        &key,
        "/v1/recipes/calltouch-moysklad/instantiate",
        json!({"connections": {"calltouch": ct["id"], "moysklad": ms["id"]}}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["items"].as_array().unwrap().len(), 4);
    Setup {
        calltouch_hook: format!("{}{}", server.base, ct["webhook_path"].as_str().unwrap()),
        moysklad_hook: format!("{}{}", server.base, ms["webhook_path"].as_str().unwrap()),
        server,
        key,
        calltouch,
        moysklad,
        _dir: dir,
    }
}

impl Setup {
    /// Waits until `n` runs are final, returns all runs.
    async fn settled_runs(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let all = runs(&self.server, &self.key).await;
            let done: Vec<Value> = all
                .iter()
                .filter(|r| r["status"] != "running")
                .cloned()
                .collect();
            if done.len() >= n && done.len() == all.len() {
                return all;
            }
            assert!(Instant::now() < deadline, "runs did not settle: {all:#?}");
            pause().await;
        }
    }

    async fn call(&self, call_id: &str, phone: &str) -> u16 {
        let params = [
            ("callId", call_id),
            ("callerphone", phone),
            ("phonenumber", "74950000000"),
            ("utm_source", "yandex"),
            ("utm_medium", "cpc"),
            ("utm_campaign", "brand"),
            ("clientId", "GA1.2.3"),
            ("callTags", "Лид|Целевой"),
        ];
        send_call_webhook(&self.calltouch_hook, &params, WebhookMethod::Post)
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_becomes_a_deal_a_counterparty_and_an_order_once() {
    let s = setup().await;
    assert_eq!(s.call("1001", "79161234567").await, 202);
    // The same call delivered twice more: nothing more is created.
    assert_eq!(s.call("1001", "79161234567").await, 200);
    assert_eq!(s.call("1001", "79161234567").await, 200);
    let runs = s.settled_runs(1).await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0]["status"], "succeeded", "{runs:#?}");

    let counterparties = s.moysklad.counterparties();
    assert_eq!(counterparties.len(), 1);
    assert_eq!(
        counterparties[0]["name"],
        "Заказ по звонку из Calltouch с номера +79161234567"
    );
    assert_eq!(counterparties[0]["phone"], "+79161234567");
    let orders = s.moysklad.orders();
    assert_eq!(orders.len(), 1);
    let order_id = orders[0]["id"].as_str().unwrap();
    assert_eq!(
        s.moysklad.order_state_name(order_id).as_deref(),
        Some("Новый")
    );
    assert!(
        orders[0]["agent"]["meta"]["href"]
            .as_str()
            .unwrap()
            .ends_with(counterparties[0]["id"].as_str().unwrap())
    );
    assert_eq!(
        s.moysklad.order_attribute(order_id, "utm_source"),
        Some(json!("yandex"))
    );
    assert_eq!(
        s.moysklad.order_attribute(order_id, "Теги"),
        Some(json!("Лид|Целевой"))
    );
    assert_eq!(
        s.moysklad.order_attribute(order_id, "Google Client ID"),
        Some(json!("GA1.2.3"))
    );
    let deals = s.calltouch.deals();
    assert_eq!(deals.len(), 1);
    assert_eq!(deals[0]["orderNumber"], "ct-call-1001");
    assert_eq!(deals[0]["status"], "PENDING");

    // A second call from the same number (written differently): no second
    // counterparty, a second order and deal.
    assert_eq!(s.call("1002", "+7 (916) 123-45-67").await, 202);
    let runs = s.settled_runs(2).await;
    assert!(runs.iter().all(|r| r["status"] == "succeeded"), "{runs:#?}");
    assert_eq!(s.moysklad.counterparties().len(), 1);
    assert_eq!(s.moysklad.orders().len(), 2);
    assert_eq!(s.calltouch.deals().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_status_and_sum_flow_back_and_completion_closes_the_deal() {
    let s = setup().await;
    assert_eq!(s.call("2001", "79990001122").await, 202);
    s.settled_runs(1).await;
    let order_id = s.moysklad.orders()[0]["id"].as_str().unwrap().to_owned();

    // Bundle 3: a status change (not complete) updates the deal.
    s.moysklad
        .set_order_state(&order_id, "Подтвержден")
        .unwrap();
    s.moysklad.set_order_paid(&order_id, 150_000.0).unwrap();
    let delivery = s
        .moysklad
        .send_webhook(&s.moysklad_hook, &order_id, "UPDATE")
        .await
        .unwrap();
    assert_eq!(
        delivery.status(),
        Some(200),
        "MoySklad needs 200 or 204: {delivery:?}"
    );
    assert!(delivery.delivered());
    let runs = s.settled_runs(3).await;
    let statuses: Vec<(String, String)> = runs
        .iter()
        .map(|r| {
            (
                r["automation"].as_str().unwrap_or("").to_owned(),
                r["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        statuses.contains(&(
            "moysklad-order-to-calltouch-deal".into(),
            "succeeded".into()
        )),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&(
            "moysklad-order-complete-to-calltouch".into(),
            "filtered".into()
        )),
        "{statuses:?}"
    );
    let deal = s.calltouch.deal("ct-call-2001").unwrap();
    assert_eq!(deal["status"], "Подтвержден");

    // Bundle 4: completion closes the deal; bundle 3 records "filtered".
    s.moysklad.set_order_state(&order_id, "Выполнен").unwrap();
    s.moysklad
        .send_webhook(&s.moysklad_hook, &order_id, "UPDATE")
        .await
        .unwrap();
    let runs = s.settled_runs(5).await;
    let deal = s.calltouch.deal("ct-call-2001").unwrap();
    assert_eq!(deal["status"], "COMPLETED");
    let filtered = runs
        .iter()
        .find(|r| {
            r["automation"] == "moysklad-order-to-calltouch-deal" && r["status"] == "filtered"
        })
        .expect("the complete order is filtered out of bundle 3");
    assert!(
        filtered["outcome"]
            .as_str()
            .unwrap()
            .starts_with("filtered:"),
        "{filtered}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_a_known_email_reuses_its_counterparty() {
    let s = setup().await;
    let existing = s
        .moysklad
        .insert_counterparty(json!({"name": "Анна", "email": "anna@example.com"}))
        .unwrap();
    let params = [
        ("requestId", "77"),
        ("subject", "Форма на сайте"),
        ("email", "Anna@Example.com"),
        ("fio", "Анна"),
        ("utm_source", "google"),
    ];
    assert_eq!(
        send_call_webhook(&s.calltouch_hook, &params, WebhookMethod::Get)
            .await
            .unwrap(),
        202
    );
    let runs = s.settled_runs(1).await;
    assert_eq!(runs[0]["status"], "succeeded", "{runs:#?}");
    assert_eq!(s.moysklad.counterparties().len(), 1);
    let order = &s.moysklad.orders()[0];
    assert!(
        order["agent"]["meta"]["href"]
            .as_str()
            .unwrap()
            .ends_with(existing["id"].as_str().unwrap())
    );
    assert_eq!(s.calltouch.deals()[0]["orderNumber"], "ct-request-77");
}

/// Calltouch's "test" button sends the template with its placeholders
/// unfilled and counts anything but a 2xx as a broken webhook: it is
/// answered 200 "ignored", and nothing is accepted or run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calltouch_test_sends_are_answered_and_accept_nothing() {
    let s = setup().await;
    let params = crmbridge_fakes::vendors::calltouch::unfilled_test_params();
    let borrowed: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let response = client()
        .get(&s.calltouch_hook)
        .query(&borrowed)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"status": "ignored", "event_ids": []}));
    // A real call afterwards is the first run.
    assert_eq!(s.call("1200", "79161234500").await, 202);
    let all = s.settled_runs(1).await;
    assert_eq!(all.len(), 1, "{all:#?}");
}

/// A parameter Calltouch had no value for arrives as a placeholder
/// (`<не указано>`, `(none)`, `(not set)`, form-encoded with `+`): the
/// order in MoySklad gets no value there, never the placeholder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholder_utm_values_reach_moysklad_as_no_value() {
    let s = setup().await;
    let params = [
        ("callId", "1300"),
        ("callerphone", "79161230000"),
        ("phonenumber", "74950000000"),
        ("utm_source", "<не указано>"),
        ("utm_medium", "(none)"),
        ("utm_campaign", "(not set)"),
        ("utm_content", "banner 2"),
    ];
    assert_eq!(
        send_call_webhook(&s.calltouch_hook, &params, WebhookMethod::Post)
            .await
            .unwrap(),
        202
    );
    let all = s.settled_runs(1).await;
    assert!(all.iter().all(|r| r["status"] == "succeeded"), "{all:#?}");
    let orders = s.moysklad.orders();
    assert_eq!(orders.len(), 1);
    let order_id = orders[0]["id"].as_str().unwrap();
    for name in ["utm_source", "utm_medium", "utm_campaign"] {
        let value = s.moysklad.order_attribute(order_id, name);
        assert!(
            value.is_none() || value == Some(json!("")),
            "{name} = {value:?}"
        );
    }
    assert_eq!(
        s.moysklad.order_attribute(order_id, "utm_content"),
        Some(json!("banner 2"))
    );
    let text = serde_json::to_string(&orders).unwrap();
    assert!(
        !text.contains("указано") && !text.contains("not set") && !text.contains("(none)"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reported_by_webhook_and_by_poll_runs_once() {
    let calltouch = FakeCalltouch::start("ct-token-1", "12345").await.unwrap();
    let moysklad = FakeMoySklad::start("ms-token-1").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = serve_with(
        &dir.path().join("data"),
        2,
        &["--allow-any-vendor-url", "--tick-interval", "200ms"],
    );
    let key = server.owner_key.clone().unwrap();
    let (_, ct) = post(&server, &key, "/v1/connections", json!({"app": "calltouch", "name": "Calltouch",
        "settings": {"site_id": "12345", "base_url": calltouch.base_url(), "default_region": "RU"}, "credentials": {"access_token": "ct-token-1"}})).await;
    let (_, ms) = post(&server, &key, "/v1/connections", json!({"app": "moysklad", "name": "МойСклад",
        "settings": {"base_url": moysklad.base_url(), "default_region": "RU"}, "credentials": {"token": "ms-token-1"}})).await;
    let (status, _) = post(
        &server,
        &key,
        "/v1/recipes/calltouch-moysklad/instantiate",
        json!({"connections": {"calltouch": ct["id"], "moysklad": ms["id"]}}),
    )
    .await;
    assert_eq!(status, 201);
    let s = Setup {
        calltouch_hook: format!("{}{}", server.base, ct["webhook_path"].as_str().unwrap()),
        moysklad_hook: format!("{}{}", server.base, ms["webhook_path"].as_str().unwrap()),
        server,
        key,
        calltouch,
        moysklad,
        _dir: dir,
    };
    assert_eq!(s.call("3001", "79990003344").await, 202);
    s.settled_runs(1).await;
    let order_id = s.moysklad.orders()[0]["id"].as_str().unwrap().to_owned();
    s.moysklad.set_order_state(&order_id, "Выполнен").unwrap();
    s.moysklad
        .send_webhook(&s.moysklad_hook, &order_id, "UPDATE")
        .await
        .unwrap();
    // Wait until the poller has asked MoySklad for changes twice after the
    // change, so the poll path has certainly seen it too.
    let polls_before = s
        .moysklad
        .requests()
        .iter()
        .filter(|r| r.query.contains("updated"))
        .count();
    let deadline = Instant::now() + Duration::from_secs(60);
    while s
        .moysklad
        .requests()
        .iter()
        .filter(|r| r.query.contains("updated"))
        .count()
        < polls_before + 2
    {
        assert!(Instant::now() < deadline, "the poller never ran");
        pause().await;
    }
    let runs = s.settled_runs(3).await;
    let completions: Vec<&Value> = runs
        .iter()
        .filter(|r| r["automation"] == "moysklad-order-complete-to-calltouch")
        .collect();
    assert_eq!(completions.len(), 1, "{runs:#?}");
    assert_eq!(completions[0]["status"], "succeeded");
    let deal_updates = s
        .calltouch
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/client-order/update"))
        .count();
    assert_eq!(deal_updates, 1, "the deal was updated twice for one change");
}

/// The dry run of the call automation on the webhook Calltouch is about to
/// send plans exactly what the run then sends (the counterparty, the order
/// with its UTM attributes, the Calltouch deal), and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dry_run_of_a_call_plans_what_the_run_then_sends() {
    let s = setup().await;
    let writes = || {
        s.moysklad
            .requests()
            .iter()
            .chain(s.calltouch.requests().iter())
            .filter(|r| r.method != "GET")
            .count()
    };
    let delivery = common::Delivery::form(&[
        ("callId", "3001"),
        ("callerphone", "79167654321"),
        ("phonenumber", "74950000000"),
        ("utm_source", "google"),
        ("utm_medium", "cpc"),
        ("clientId", "GA1.9.9"),
        ("callTags", "Лид"),
    ]);
    let plan = common::dry_run(
        &s.server,
        &s.key,
        "calltouch-call-to-moysklad",
        json!({"delivery": delivery.sample(), "reads": true}),
        writes,
    )
    .await;
    assert_eq!(plan["filter"]["outcome"], "passed", "{plan:#}");
    assert!(s.moysklad.counterparties().is_empty() && s.moysklad.orders().is_empty());
    assert_eq!(delivery.send(&s.calltouch_hook).await.status(), 202);
    let runs = s.settled_runs(1).await;
    let run = common::get_json(&s.server, &s.key, &format!("/v1/runs/{}", runs[0]["id"].as_str().unwrap())).await;
    assert!(common::assert_plan_matches(&plan, &run) >= 2, "{plan:#}");
}
