//! The Calltouch ↔ retailCRM recipe end to end through the real Lambda
//! binaries under the Runtime API emulator, on moto, against the fakes: what
//! `functions/local/tests/calltouch_retailcrm.rs` checks through `crmbridge
//! serve`, here as deployed. retailCRM sends no webhooks, so order changes
//! come back by the poll path: the tick Lambda (on the EventBridge schedule's
//! event) publishes one poll request per polled source, dispatch polls
//! `orders/history` and publishes what changed, and dispatch runs those.
//! EventBridge routes every event to an SQS queue with the dispatch rule's
//! pattern; the test hands each one to `dispatch` as the rule would.
//!
//! Needs `CRMBRIDGE_TEST_AWS_ENDPOINT` (moto; infra/test.sh starts it) and
//! the binaries built (`cargo build --bins`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{Stack, automation_statuses, hook_request, http, pairs};
use crmbridge_fakes::vendors::calltouch::FakeCalltouch;
use crmbridge_fakes::vendors::retailcrm::FakeRetailCrm;
use serde_json::{Value, json};

const BUNDLE_CALL: &str = "calltouch-call-to-retailcrm";
const BUNDLE_REQUEST: &str = "calltouch-request-to-retailcrm";
const BUNDLE_STATUS: &str = "retailcrm-order-to-calltouch-deal";
const BUNDLE_COMPLETE: &str = "retailcrm-order-complete-to-calltouch";

const POLL_REQUESTED: &str = "crmbridge.poll.requested";
const ORDER_CHANGED: &str = "retailcrm.order.changed";
const OWN_CHANGES: &str = "retailcrm.history.own_changes";

/// One scheduled tick at `time`: it must ask for exactly the retailCRM
/// source; the poll request it publishes is handed to dispatch, which polls
/// the history and publishes `changes` order changes, returned (routed).
async fn tick_and_poll(s: &Stack, time: &str, source: &str, changes: usize) -> Vec<Value> {
    tick_and_poll_kind(s, time, source, changes, ORDER_CHANGED).await
}

/// [`tick_and_poll`], for events of `kind`.
async fn tick_and_poll_kind(
    s: &Stack,
    time: &str,
    source: &str,
    changes: usize,
    kind: &str,
) -> Vec<Value> {
    let ticked = s.tick_at(time).await;
    assert_eq!(
        ticked,
        json!({"sources": [source], "published": 1}),
        "tick at {time}"
    );
    let request = s.routing.take_kind(1, POLL_REQUESTED).await.remove(0);
    assert_eq!(request["detail"]["subject"]["id"], source, "{request:#}");
    let reply = s.dispatch(&request).await;
    assert_eq!(
        reply,
        json!({"runs": [], "duplicate": false}),
        "a poll request starts no run itself"
    );
    s.routing.take_kind(changes, kind).await
}

/// The deal number of an order, from the comment the recipe writes on it.
fn deal_number(order: &Value) -> String {
    let comment = order["customerComment"]
        .as_str()
        .or_else(|| order["managerComment"].as_str())
        .unwrap_or_default();
    for call in ["5001", "5002"] {
        if comment.contains(call) {
            return format!("ct-call-{call}");
        }
    }
    if comment.contains("77") {
        return "ct-request-77".to_owned();
    }
    panic!("an order the test did not expect: {order:#}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_requests_become_customers_and_orders_and_polled_changes_close_the_deal() {
    let s = Stack::start().await;
    let calltouch = FakeCalltouch::start("ct-token-2", "777").await.unwrap();
    let retailcrm = FakeRetailCrm::start("rc-key-2").await.unwrap();

    let ct = s
        .admin_post(
            "/v1/connections",
            json!({
                "app": "calltouch", "name": "Calltouch",
                "settings": {"site_id": "777", "base_url": calltouch.base_url(), "default_region": "RU"},
                "credentials": {"access_token": "ct-token-2"}}),
            201,
        )
        .await;
    let rc = s
        .admin_post(
            "/v1/connections",
            json!({
                "app": "retailcrm", "name": "retailCRM",
                "settings": {"base_url": retailcrm.base_url(), "site": "main", "default_region": "RU"},
                "credentials": {"api_key": "rc-key-2"}}),
            201,
        )
        .await;
    assert!(
        !rc.to_string().contains("rc-key-2"),
        "credentials leaked: {rc}"
    );
    let created = s
        .admin_post(
            "/v1/recipes/calltouch-retailcrm/instantiate",
            json!({"connections": {"calltouch": ct["id"], "retailcrm": rc["id"]}}),
            201,
        )
        .await;
    assert_eq!(created["items"].as_array().unwrap().len(), 4, "{created}");
    let hook = ct["webhook_path"].as_str().unwrap().to_owned();
    let source = format!("{}#{ORDER_CHANGED}", rc["id"].as_str().unwrap());

    // The first scheduled tick: the first poll only records where retailCRM's
    // history is now (nothing is replayed), so the orders created below are
    // found by the next polls.
    let changes = tick_and_poll(&s, "2026-11-24T10:00:00Z", &source, 0).await;
    assert!(changes.is_empty());

    // Two calls from one phone written two ways (a form POST and a GET, as
    // Calltouch sends either), and a form request from a known email.
    let anna = retailcrm
        .insert_customer(json!({"firstName": "Анна", "email": "anna@example.com"}))
        .unwrap();
    let deliveries = [
        hook_request("POST", &hook).form(&[
            ("callId", "5001"),
            ("callerphone", "79031112233"),
            ("utm_source", "google"),
            ("callTags", "a|b"),
        ]),
        hook_request("GET", &hook).query_pairs(&[
            ("callId", "5002"),
            ("callerphone", "8 (903) 111-22-33"),
            ("utm_source", "google"),
            ("callTags", "a|b"),
        ]),
        hook_request("GET", &hook).query_pairs(&[
            ("requestId", "77"),
            ("subject", "Форма на сайте"),
            ("email", "Anna@Example.com"),
            ("fio", "Анна"),
            ("utm_source", "google"),
        ]),
    ];
    let mut expected = Vec::new();
    for (delivery, (kind, bundle)) in deliveries.into_iter().zip([
        ("calltouch.call.completed", BUNDLE_CALL),
        ("calltouch.call.completed", BUNDLE_CALL),
        ("calltouch.request.created", BUNDLE_REQUEST),
    ]) {
        let (status, accepted) = http(&s.webhook, delivery).await;
        assert_eq!(status, 202, "{accepted}");
        let routed = s.routing.take_kind(1, kind).await.remove(0);
        assert_eq!(
            routed["detail"]["id"], accepted["event_ids"][0],
            "{routed:#}"
        );
        assert_eq!(
            s.dispatch_runs(&routed).await,
            pairs(&[(bundle, "succeeded")])
        );
        expected.push((bundle, "succeeded"));
    }

    // One customer for both calls; the request's known email reused its
    // customer.
    let customers = retailcrm.customers();
    assert_eq!(customers.len(), 2, "{customers:#?}");
    let caller = customers.iter().find(|c| c["id"] != anna).unwrap();
    let orders = retailcrm.orders();
    assert_eq!(orders.len(), 3, "{orders:#?}");
    let by_deal = |number: &str| -> Value {
        orders
            .iter()
            .find(|o| deal_number(o) == number)
            .cloned()
            .unwrap_or_else(|| panic!("no order for {number}: {orders:#?}"))
    };
    for number in ["ct-call-5001", "ct-call-5002"] {
        let order = by_deal(number);
        assert_eq!(order["customer"]["id"], caller["id"], "{order:#}");
        assert_eq!(order["source"]["source"], "google", "{order:#}");
        assert_eq!(order["customFields"]["tags"], "a|b", "{order:#}");
        assert_eq!(order["status"], "new", "{order:#}");
    }
    let request_order = by_deal("ct-request-77");
    assert_eq!(request_order["customer"]["id"], anna, "{request_order:#}");
    let deals = calltouch.deals();
    assert_eq!(deals.len(), 3, "{deals:#?}");
    assert!(deals.iter().all(|d| d["status"] == "PENDING"), "{deals:#?}");

    // The next tick finds the three creations in the history. They were
    // made with crmbridge's own key (`apiKey.current`): not order changes
    // (the open-status bundle would copy our own write back to the deal),
    // but one event counting them, recorded as a run that matched no
    // automation; the cursor moves past them.
    let own = tick_and_poll_kind(&s, "2026-11-24T10:05:00Z", &source, 1, OWN_CHANGES)
        .await
        .remove(0);
    assert_eq!(own["detail"]["data"]["count"], 3, "{own:#}");
    assert_eq!(
        own["detail"]["data"]["orders"].as_array().unwrap().len(),
        3,
        "{own:#}"
    );
    assert_eq!(s.dispatch_runs(&own).await, pairs(&[("", "no_match")]));
    expected.push(("", "no_match"));
    for number in ["ct-call-5001", "ct-call-5002", "ct-request-77"] {
        assert_eq!(
            calltouch.deal(number).unwrap()["status"],
            "PENDING",
            "{number}"
        );
    }

    // The first call's order moves on in retailCRM: its status flows back.
    let order = by_deal("ct-call-5001");
    let order_id = order["id"].as_i64().unwrap();
    retailcrm.set_order_status(order_id, "assembling").unwrap();
    let change = tick_and_poll(&s, "2026-11-24T10:10:00Z", &source, 1)
        .await
        .remove(0);
    assert_eq!(
        change["detail"]["data"]["status"], "assembling",
        "{change:#}"
    );
    assert_eq!(change["detail"]["data"]["field"], "status", "{change:#}");
    assert_eq!(
        s.dispatch_runs(&change).await,
        pairs(&[(BUNDLE_STATUS, "succeeded"), (BUNDLE_COMPLETE, "filtered")])
    );
    expected.extend([(BUNDLE_STATUS, "succeeded"), (BUNDLE_COMPLETE, "filtered")]);
    assert_eq!(
        calltouch.deal("ct-call-5001").unwrap()["status"],
        "assembling"
    );

    // It completes: the completion bundle closes the deal, and the
    // open-status bundle's run for that change is recorded as filtered.
    retailcrm.set_order_status(order_id, "complete").unwrap();
    let change = tick_and_poll(&s, "2026-11-24T10:15:00Z", &source, 1)
        .await
        .remove(0);
    assert_eq!(change["detail"]["data"]["status"], "complete", "{change:#}");
    let reply = s.dispatch(&change).await;
    assert_eq!(reply["duplicate"], false, "{reply:#}");
    let runs = reply["runs"].as_array().unwrap();
    let mut statuses = automation_statuses(runs);
    statuses.sort();
    assert_eq!(
        statuses,
        pairs(&[(BUNDLE_STATUS, "filtered"), (BUNDLE_COMPLETE, "succeeded")]),
        "{reply:#}"
    );
    expected.extend([(BUNDLE_STATUS, "filtered"), (BUNDLE_COMPLETE, "succeeded")]);
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
        calltouch.deal("ct-call-5001").unwrap()["status"],
        "COMPLETED"
    );
    assert_eq!(calltouch.deal("ct-call-5002").unwrap()["status"], "PENDING");
    assert_eq!(
        calltouch.deal("ct-request-77").unwrap()["status"],
        "PENDING"
    );
    assert_eq!(calltouch.deals().len(), 3);

    // The change delivered again runs nothing twice; a later tick finds
    // nothing new.
    let again = s.dispatch(&change).await;
    assert_eq!(again["duplicate"], true, "{again:#}");
    let changes = tick_and_poll(&s, "2026-11-24T10:20:00Z", &source, 0).await;
    assert!(changes.is_empty());

    // Nothing more was created, and the run log (through admin) has every
    // run once: one completion.
    assert_eq!(retailcrm.customers().len(), 2);
    assert_eq!(retailcrm.orders().len(), 3);
    let mut listed = automation_statuses(&s.runs().await);
    listed.sort();
    assert_eq!(listed, pairs(&expected));

    s.report();
}
