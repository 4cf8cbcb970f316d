//! The Calltouch ↔ MoySklad recipe end to end through the real Lambda
//! binaries (`admin`, `webhook`, `dispatch`, `tick`) under the Runtime API
//! emulator, on DynamoDB + EventBridge + SQS in moto, against the fake vendor
//! APIs: what `functions/local/tests/calltouch_moysklad.rs` checks through
//! `crmbridge serve`, here as deployed — all four bundles of the recipe.
//! EventBridge routes the events to an SQS queue with the dispatch rule's
//! pattern; the test hands each routed event to `dispatch` as the rule would.
//!
//! Needs `CRMBRIDGE_TEST_AWS_ENDPOINT` (moto; infra/test.sh starts it) and
//! the binaries built (`cargo build --bins`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{Stack, admin_request, hook_request, http, pairs};
use crmbridge_fakes::vendors::calltouch::FakeCalltouch;
use crmbridge_fakes::vendors::moysklad::{FakeMoySklad, WEBHOOK_USER_AGENT};
use crmbridge_lambda_harness::{HttpApiRequest, uuid_v4};
use serde_json::{Value, json};

fn call(call_id: &'static str, phone: &'static str) -> [(&'static str, &'static str); 8] {
    [
        ("callId", call_id),
        ("callerphone", phone),
        ("phonenumber", "74950000000"),
        ("utm_source", "yandex"),
        ("utm_medium", "cpc"),
        ("utm_campaign", "brand"),
        ("clientId", "GA1.2.3"),
        ("callTags", "Лид|Целевой"),
    ]
}

/// The id at the end of a MoySklad `meta.href`.
fn href_id(entity: &Value) -> String {
    let href = entity["meta"]["href"].as_str().unwrap();
    href.rsplit('/').next().unwrap().to_owned()
}

const BUNDLE_CALL: &str = "calltouch-call-to-moysklad";
const BUNDLE_REQUEST: &str = "calltouch-request-to-moysklad";
const BUNDLE_STATUS: &str = "moysklad-order-to-calltouch-deal";
const BUNDLE_COMPLETE: &str = "moysklad-order-complete-to-calltouch";

/// MoySklad posts its webhook for an order (`?requestId=`, its user agent);
/// returns the routed event.
async fn moysklad_webhook(s: &Stack, moysklad: &FakeMoySklad, hook: &str, order_id: &str) -> Value {
    let payload = moysklad.webhook_payload(order_id, "UPDATE");
    let delivery = hook_request("POST", hook)
        .query("requestId", &uuid_v4())
        .header("user-agent", WEBHOOK_USER_AGENT)
        .json(&payload);
    let (status, accepted) = http(&s.webhook, delivery).await;
    assert_eq!(status, 200, "MoySklad needs 200 or 204: {accepted}");
    let routed = s
        .routing
        .take_kind(1, "moysklad.customerorder.updated")
        .await
        .remove(0);
    assert_eq!(routed["detail"]["app"], "moysklad", "{routed:#}");
    routed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_four_bundles_flow_through_the_lambda_binaries() {
    let s = Stack::start().await;
    let calltouch = FakeCalltouch::start("ct-token-1", "12345").await.unwrap();
    let moysklad = FakeMoySklad::start("ms-token-1").await.unwrap();

    // Health, then the two connections and the recipe, through admin.
    let (status, health) = http(
        &s.admin,
        HttpApiRequest::get("/health").route("GET /health", &[]),
    )
    .await;
    assert_eq!((status, health), (200, json!({"status": "ok"})));
    let ct = s
        .admin_post(
            "/v1/connections",
            json!({
                "app": "calltouch", "name": "Calltouch",
                "settings": {"site_id": "12345", "base_url": calltouch.base_url(), "default_region": "RU"},
                "credentials": {"access_token": "ct-token-1"}}),
            201,
        )
        .await;
    assert!(
        !ct.to_string().contains("ct-token-1"),
        "credentials leaked: {ct}"
    );
    let ms = s
        .admin_post(
            "/v1/connections",
            json!({
                "app": "moysklad", "name": "МойСклад",
                "settings": {"base_url": moysklad.base_url(), "default_region": "RU"},
                "credentials": {"token": "ms-token-1"}}),
            201,
        )
        .await;
    let created = s
        .admin_post(
            "/v1/recipes/calltouch-moysklad/instantiate",
            json!({"connections": {"calltouch": ct["id"], "moysklad": ms["id"]}}),
            201,
        )
        .await;
    assert_eq!(created["items"].as_array().unwrap().len(), 4, "{created}");
    let ct_hook = ct["webhook_path"].as_str().unwrap().to_owned();
    let ms_hook = ms["webhook_path"].as_str().unwrap().to_owned();

    // Bundle 1: a Calltouch call, posted as a form (base64 in the event, as
    // API Gateway sends form bodies), then delivered again.
    let first_call = || hook_request("POST", &ct_hook).form(&call("1001", "79161234567"));
    let (status, first) = http(&s.webhook, first_call()).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["status"], "accepted");
    let event_ids = first["event_ids"].clone();
    assert_eq!(event_ids.as_array().unwrap().len(), 1, "{first}");
    let (status, again) = http(&s.webhook, first_call()).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        again,
        json!({"status": "duplicate", "event_ids": event_ids})
    );

    // EventBridge routed it once; dispatch runs it, a redelivery does nothing.
    let routed = s
        .routing
        .take_kind(1, "calltouch.call.completed")
        .await
        .remove(0);
    assert_eq!(routed["detail"]["id"], event_ids[0], "{routed:#}");
    assert_eq!(
        s.dispatch_runs(&routed).await,
        pairs(&[(BUNDLE_CALL, "succeeded")])
    );
    let reply = s.dispatch(&routed).await;
    assert_eq!(reply["duplicate"], true, "{reply:#}");

    let counterparties = moysklad.counterparties();
    assert_eq!(counterparties.len(), 1, "{counterparties:#?}");
    let counterparty_id = counterparties[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        counterparties[0]["name"],
        "Заказ по звонку из Calltouch с номера +79161234567"
    );
    assert_eq!(counterparties[0]["phone"], "+79161234567");
    let orders = moysklad.orders();
    assert_eq!(orders.len(), 1, "{orders:#?}");
    let order_id = orders[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        moysklad.order_state_name(&order_id).as_deref(),
        Some("Новый")
    );
    assert_eq!(href_id(&orders[0]["agent"]), counterparty_id);
    assert_eq!(
        moysklad.order_attribute(&order_id, "utm_source"),
        Some(json!("yandex"))
    );
    assert_eq!(
        moysklad.order_attribute(&order_id, "Теги"),
        Some(json!("Лид|Целевой"))
    );
    assert_eq!(
        moysklad.order_attribute(&order_id, "Google Client ID"),
        Some(json!("GA1.2.3"))
    );
    let deals = calltouch.deals();
    assert_eq!(deals.len(), 1, "{deals:#?}");
    assert_eq!(deals[0]["orderNumber"], "ct-call-1001");
    assert_eq!(deals[0]["status"], "PENDING");

    // Bundle 1 again: a second call from the same number, written
    // differently — no second counterparty, a second order and deal.
    let (status, second) = http(
        &s.webhook,
        hook_request("POST", &ct_hook).form(&call("1002", "+7 (916) 123-45-67")),
    )
    .await;
    assert_eq!(status, 202, "{second}");
    assert_ne!(second["event_ids"], event_ids);
    let routed = s
        .routing
        .take_kind(1, "calltouch.call.completed")
        .await
        .remove(0);
    assert_eq!(
        s.dispatch_runs(&routed).await,
        pairs(&[(BUNDLE_CALL, "succeeded")])
    );
    let counterparties = moysklad.counterparties();
    assert_eq!(counterparties.len(), 1, "{counterparties:#?}");
    let orders = moysklad.orders();
    assert_eq!(orders.len(), 2, "{orders:#?}");
    let second_order = orders
        .iter()
        .find(|o| o["id"] != order_id.as_str())
        .unwrap();
    assert_eq!(href_id(&second_order["agent"]), counterparty_id);
    assert_eq!(calltouch.deals().len(), 2);
    assert_eq!(calltouch.deal("ct-call-1002").unwrap()["status"], "PENDING");

    // Bundle 2: a form request whose email (in another case) belongs to a
    // counterparty that already exists: it is reused, not duplicated.
    let anna = moysklad
        .insert_counterparty(json!({"name": "Анна", "email": "anna@example.com"}))
        .unwrap();
    let anna_id = anna["id"].as_str().unwrap().to_owned();
    let request = hook_request("GET", &ct_hook).query_pairs(&[
        ("requestId", "77"),
        ("subject", "Форма на сайте"),
        ("email", "Anna@Example.com"),
        ("fio", "Анна"),
        ("utm_source", "google"),
    ]);
    let (status, accepted) = http(&s.webhook, request).await;
    assert_eq!(status, 202, "{accepted}");
    let routed = s
        .routing
        .take_kind(1, "calltouch.request.created")
        .await
        .remove(0);
    assert_eq!(
        s.dispatch_runs(&routed).await,
        pairs(&[(BUNDLE_REQUEST, "succeeded")])
    );
    let counterparties = moysklad.counterparties();
    assert_eq!(counterparties.len(), 2, "{counterparties:#?}");
    let orders = moysklad.orders();
    assert_eq!(orders.len(), 3, "{orders:#?}");
    let request_order = orders
        .iter()
        .find(|o| href_id(&o["agent"]) == anna_id)
        .unwrap_or_else(|| panic!("no order for the existing counterparty: {orders:#?}"));
    assert_eq!(
        moysklad
            .order_state_name(request_order["id"].as_str().unwrap())
            .as_deref(),
        Some("Новый")
    );
    let deal = calltouch.deal("ct-request-77").unwrap();
    assert_eq!(deal["status"], "PENDING", "{deal:#}");
    assert_eq!(calltouch.deals().len(), 3);

    // Bundle 3: the order's status and payment change in MoySklad, MoySklad
    // posts its webhook (`?requestId=`), and the deal's status and sum
    // follow; the completion bundle records "filtered".
    moysklad.set_order_state(&order_id, "Подтвержден").unwrap();
    moysklad.set_order_paid(&order_id, 150_000.0).unwrap();
    let routed = moysklad_webhook(&s, &moysklad, &ms_hook, &order_id).await;
    assert_eq!(
        s.dispatch_runs(&routed).await,
        pairs(&[(BUNDLE_STATUS, "succeeded"), (BUNDLE_COMPLETE, "filtered")])
    );
    let deal = calltouch.deal("ct-call-1001").unwrap();
    assert_eq!(deal["status"], "Подтвержден", "{deal:#}");
    // MoySklad sums are kopecks; the deal's revenue is the order's total
    // in roubles.
    let order_sum = moysklad.order(&order_id).unwrap()["sum"].as_f64().unwrap();
    let revenue = deal["revenue"]
        .as_f64()
        .or_else(|| deal["revenue"].as_str().and_then(|r| r.parse().ok()));
    assert_eq!(revenue, Some(order_sum / 100.0), "{deal:#}");
    assert_eq!(calltouch.deals().len(), 3);

    // Bundle 4: completion closes the deal; bundle 3 records "filtered".
    moysklad.set_order_state(&order_id, "Выполнен").unwrap();
    let routed = moysklad_webhook(&s, &moysklad, &ms_hook, &order_id).await;
    let reply = s.dispatch(&routed).await;
    assert_eq!(reply["duplicate"], false, "{reply:#}");
    let runs = reply["runs"].as_array().unwrap();
    let mut statuses = common::automation_statuses(runs);
    statuses.sort();
    assert_eq!(
        statuses,
        pairs(&[(BUNDLE_STATUS, "filtered"), (BUNDLE_COMPLETE, "succeeded")]),
        "{reply:#}"
    );
    let filtered = runs
        .iter()
        .find(|r| r["automation"] == BUNDLE_STATUS)
        .unwrap();
    assert!(
        filtered["outcome"]
            .as_str()
            .unwrap()
            .starts_with("filtered:"),
        "{filtered}"
    );
    assert_eq!(
        calltouch.deal("ct-call-1001").unwrap()["status"],
        "COMPLETED"
    );
    // The other deals are untouched.
    assert_eq!(calltouch.deal("ct-call-1002").unwrap()["status"], "PENDING");
    assert_eq!(
        calltouch.deal("ct-request-77").unwrap()["status"],
        "PENDING"
    );
    assert_eq!(calltouch.deals().len(), 3);
    assert_eq!(moysklad.counterparties().len(), 2);
    assert_eq!(moysklad.orders().len(), 3);

    // The tick fans out one poll request for the MoySklad order trigger
    // (the recipe's fallback where the account has no webhooks).
    let ticked = s.tick_at("2026-11-24T10:00:00Z").await;
    assert_eq!(
        ticked,
        json!({
            "sources": [format!("{}#moysklad.customerorder.updated", ms["id"].as_str().unwrap())],
            "published": 1,
        })
    );
    s.routing.take_kind(1, "crmbridge.poll.requested").await;

    // The run log, through admin, shows every run.
    let mut listed = common::automation_statuses(&s.runs().await);
    listed.sort();
    assert_eq!(
        listed,
        pairs(&[
            (BUNDLE_CALL, "succeeded"),
            (BUNDLE_CALL, "succeeded"),
            (BUNDLE_REQUEST, "succeeded"),
            (BUNDLE_STATUS, "succeeded"),
            (BUNDLE_COMPLETE, "filtered"),
            (BUNDLE_STATUS, "filtered"),
            (BUNDLE_COMPLETE, "succeeded"),
        ])
    );
    let (status, denied) = http(&s.admin, admin_request("GET", "/v1/runs", "cbk_wrong")).await;
    assert_eq!(status, 401, "{denied}");

    s.report();
    for function in [&s.admin, &s.webhook, &s.dispatcher, &s.tick] {
        assert!(function.last_invocation_duration().is_some());
    }
}
