//! The MoySklad, retailCRM and Calltouch connectors against their fakes:
//! the connection check (an account description, a refused credential that
//! never shows up in the error, an unavailable vendor as transient), and
//! keyed creates sent twice by the same step making one record.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use crate::common;

use common::{context, vendor};
use crmbridge_connectors::{ActionError, Resend, VendorClient, VendorError};
use crmbridge_fakes::Fault;
use crmbridge_fakes::vendors::calltouch::{DuplicatePolicy, FakeCalltouch};
use crmbridge_fakes::vendors::moysklad::FakeMoySklad;
use crmbridge_fakes::vendors::retailcrm::FakeRetailCrm;
use serde_json::{Map, Value, json};

fn fields(value: Value) -> Map<String, Value> {
    value.as_object().unwrap().clone()
}

fn credential(name: &str, value: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(name.to_owned(), value.to_owned())])
}

/// A refused credential: an auth failure (401/403), not worth retrying, and
/// the secret nowhere in what the user sees.
fn assert_auth_failure(err: &ActionError, secret: &str) {
    let text = err.to_string();
    assert!(!err.is_transient(), "{text}");
    assert!(
        matches!(
            err,
            ActionError::Vendor(
                VendorError::Rejected {
                    status: 401 | 403,
                    ..
                } | VendorError::CredentialsRefused { .. }
            )
        ),
        "{err:?}"
    );
    assert!(
        text.contains("not accepted") || text.contains("no access"),
        "{text}"
    );
    assert!(!text.contains(secret), "{text}");
    assert!(!format!("{err:?}").contains(secret), "{err:?}");
}

#[tokio::test]
async fn moysklad_check_describes_the_account_and_refuses_a_wrong_token() {
    let ms = FakeMoySklad::start("ms-token-1").await.unwrap();
    let http = VendorClient::new();
    let settings = json!({"base_url": ms.base_url()});
    let good = credential("token", "ms-token-1");
    let account = vendor("moysklad")
        .check(&context(&settings, &good, &http, "check"))
        .await
        .unwrap();
    assert_eq!(account["organizations"], 1);
    assert_eq!(account["organization"]["id"], ms.organization_id());
    let asked = ms.requests().pop().unwrap();
    assert_eq!(asked.path, "/api/remap/1.2/entity/organization");
    assert_eq!(asked.query_param("limit").as_deref(), Some("1"));

    let wrong = credential("token", "ms-wrong-token-77");
    let err = vendor("moysklad")
        .check(&context(&settings, &wrong, &http, "check"))
        .await
        .unwrap_err();
    assert_auth_failure(&err, "ms-wrong-token-77");
    assert!(err.credentials_refused().is_some(), "{err:?}");

    // Unavailable through every attempt: transient, so "try again later".
    ms.fail_next(10, Fault::ServerError);
    let err = vendor("moysklad")
        .check(&context(&settings, &good, &http, "check"))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("HTTP 500"), "{err}");
}

#[tokio::test]
async fn moysklad_creates_sent_twice_by_one_step_make_one_record() {
    let ms = FakeMoySklad::start("ms-token-2").await.unwrap();
    let http = VendorClient::new();
    let settings = json!({"base_url": ms.base_url()});
    let token = credential("token", "ms-token-2");
    let connector = vendor("moysklad");
    let step = context(&settings, &token, &http, "run/1/counterparty");
    let request = fields(json!({"name": "ACME", "phone": "+79161234567"}));
    assert_eq!(
        connector.resend("moysklad.counterparty.create", &request),
        Resend::Keyed
    );
    let first = connector
        .execute(&step, "moysklad.counterparty.create", &request, None)
        .await
        .unwrap();
    let second = connector
        .execute(&step, "moysklad.counterparty.create", &request, None)
        .await
        .unwrap();
    assert_eq!(second.id, first.id);
    assert_eq!(ms.counterparties().len(), 1);

    let step = context(&settings, &token, &http, "run/1/order");
    let order = fields(json!({"agent": first.id, "state": "Новый", "description": "call 5"}));
    assert_eq!(
        connector.resend("moysklad.customerorder.create", &order),
        Resend::Keyed
    );
    let first_order = connector
        .execute(&step, "moysklad.customerorder.create", &order, None)
        .await
        .unwrap();
    let second_order = connector
        .execute(&step, "moysklad.customerorder.create", &order, None)
        .await
        .unwrap();
    assert_eq!(second_order.id, first_order.id);
    assert_eq!(ms.orders().len(), 1);

    // Another step is another record.
    let other = context(&settings, &token, &http, "run/2/counterparty");
    let third = connector
        .execute(&other, "moysklad.counterparty.create", &request, None)
        .await
        .unwrap();
    assert_ne!(third.id, first.id);
    assert_eq!(ms.counterparties().len(), 2);
}

#[tokio::test]
async fn retailcrm_check_lists_the_keys_rights_and_refuses_a_wrong_key() {
    let rc = FakeRetailCrm::start("rc-key-1").await.unwrap();
    let http = VendorClient::new();
    let settings = json!({"base_url": rc.base_url()});
    let good = credential("api_key", "rc-key-1");
    let account = vendor("retailcrm")
        .check(&context(&settings, &good, &http, "check"))
        .await
        .unwrap();
    assert_eq!(account["sites"], json!(["main"]));
    assert_eq!(account["site_access"], "access_full");
    assert!(
        account["scopes"]
            .as_array()
            .unwrap()
            .contains(&json!("order_write")),
        "{account}"
    );
    assert_eq!(rc.requests().pop().unwrap().path, "/api/credentials");

    let wrong = credential("api_key", "rc-wrong-key-77");
    let err = vendor("retailcrm")
        .check(&context(&settings, &wrong, &http, "check"))
        .await
        .unwrap_err();
    assert_auth_failure(&err, "rc-wrong-key-77");
    assert!(err.to_string().contains("Wrong \"apiKey\" value"), "{err}");
    // Classified as refused credentials (the connection's health says so),
    // not as a refused request.
    assert!(err.credentials_refused().is_some(), "{err:?}");

    rc.fail_next(10, Fault::ServerError);
    let err = vendor("retailcrm")
        .check(&context(&settings, &good, &http, "check"))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
}

#[tokio::test]
async fn retailcrm_creates_sent_twice_by_one_step_make_one_record() {
    let rc = FakeRetailCrm::start("rc-key-2").await.unwrap();
    let http = VendorClient::new();
    let settings = json!({"base_url": rc.base_url()});
    let key = credential("api_key", "rc-key-2");
    let step = context(&settings, &key, &http, "run/1/customer");
    let customer = fields(json!({"first_name": "Ann", "phone": "+79161234567"}));
    let first = vendor("retailcrm")
        .execute(&step, "retailcrm.customer.create", &customer, None)
        .await
        .unwrap();
    let second = vendor("retailcrm")
        .execute(&step, "retailcrm.customer.create", &customer, None)
        .await
        .unwrap();
    assert_eq!(second.id, first.id);
    assert_eq!(rc.customers().len(), 1);

    let step = context(&settings, &key, &http, "run/1/order");
    let order = fields(json!({"customer_id": first.id, "status": "new", "comment": "call 5"}));
    let first_order = vendor("retailcrm")
        .execute(&step, "retailcrm.order.create", &order, None)
        .await
        .unwrap();
    let second_order = vendor("retailcrm")
        .execute(&step, "retailcrm.order.create", &order, None)
        .await
        .unwrap();
    assert_eq!(second_order.id, first_order.id);
    assert_eq!(rc.orders().len(), 1);
    // The second send only looked the order up.
    let creates = rc
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/api/v5/orders/create")
        .count();
    assert_eq!(creates, 1);
}

#[tokio::test]
async fn retailcrm_a_create_refused_because_an_earlier_one_landed_answers_with_that_record() {
    let rc = FakeRetailCrm::start("rc-key-3").await.unwrap();
    let http = VendorClient::new();
    let settings = json!({"base_url": rc.base_url()});
    let key = credential("api_key", "rc-key-3");
    let step = context(&settings, &key, &http, "run/7/customer");
    let customer = fields(json!({"first_name": "Bob"}));
    // Both sends look the externalId up before either creates (the fake
    // reads its state at once and holds the answers back), so both create:
    // retailCRM refuses the second as a duplicate externalId.
    rc.fail_next_on(
        Some("GET"),
        "/api/v5/customers/",
        2,
        Fault::Slow(std::time::Duration::from_millis(1500)),
    );
    let retailcrm = vendor("retailcrm");
    let (a, b) = tokio::join!(
        retailcrm.execute(&step, "retailcrm.customer.create", &customer, None),
        retailcrm.execute(&step, "retailcrm.customer.create", &customer, None),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.id, b.id);
    assert_eq!(rc.customers().len(), 1);
    let statuses: Vec<Option<u16>> = rc
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    assert!(
        statuses.contains(&Some(201)) && statuses.contains(&Some(400)),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn calltouch_check_reads_the_journal_and_refuses_a_wrong_token_or_site() {
    let ct = FakeCalltouch::start("ct-token-1", "12345").await.unwrap();
    ct.add_call(json!({"callerphone": "79161234567"}));
    let http = VendorClient::new();
    let settings = json!({"base_url": ct.base_url(), "site_id": "12345"});
    let good = credential("access_token", "ct-token-1");
    let account = vendor("calltouch")
        .check(&context(&settings, &good, &http, "check"))
        .await
        .unwrap();
    assert_eq!(account, json!({"site_id": "12345", "calls_today": 1}));
    let asked = ct.requests().pop().unwrap();
    assert_eq!(asked.path, "/calls-service/RestAPI/12345/calls-diary/calls");
    assert_eq!(asked.query_param("limit").as_deref(), Some("1"));
    // The fake's log redacts the token it received.
    assert_eq!(asked.query_param("clientApiId").as_deref(), Some("***"));

    let wrong = credential("access_token", "ct-wrong-token-77");
    let err = vendor("calltouch")
        .check(&context(&settings, &wrong, &http, "check"))
        .await
        .unwrap_err();
    assert_auth_failure(&err, "ct-wrong-token-77");

    let other_site = json!({"base_url": ct.base_url(), "site_id": 999});
    let err = vendor("calltouch")
        .check(&context(&other_site, &good, &http, "check"))
        .await
        .unwrap_err();
    assert_auth_failure(&err, "ct-token-1");

    ct.fail_next(10, Fault::ServerError);
    let err = vendor("calltouch")
        .check(&context(&settings, &good, &http, "check"))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(!err.to_string().contains("ct-token-1"), "{err}");
}

#[tokio::test]
async fn calltouch_a_deal_created_twice_by_one_step_is_one_deal() {
    for policy in [DuplicatePolicy::Reject, DuplicatePolicy::ReturnExisting] {
        let ct = FakeCalltouch::start("ct-token-2", "777").await.unwrap();
        ct.set_duplicate_policy(policy);
        let http = VendorClient::new();
        let settings = json!({"base_url": ct.base_url(), "site_id": "777"});
        let token = credential("access_token", "ct-token-2");
        let step = context(&settings, &token, &http, "run/1/deal");
        let deal = fields(json!({
            "order_number": "ct-call-555", "call_id": "555", "status": "PENDING",
            "revenue": 0, "comment": "call 555"}));
        let first = vendor("calltouch")
            .execute(&step, "calltouch.deal.create", &deal, None)
            .await
            .unwrap();
        let second = vendor("calltouch")
            .execute(&step, "calltouch.deal.create", &deal, None)
            .await
            .unwrap();
        assert_eq!(second.id, first.id, "{policy:?}");
        assert_eq!(second.id, "ct-call-555");
        assert_eq!(
            second.record["calltouch_order_id"], first.record["calltouch_order_id"],
            "{policy:?}"
        );
        assert!(first.record["calltouch_order_id"].is_i64());
        let deals = ct.deals();
        assert_eq!(deals.len(), 1, "{policy:?}");
        // The comment is the deal's own, once: the resolving update
        // overwrites fields without appending it again.
        assert_eq!(deals[0]["comments"], json!(["call 555"]), "{policy:?}");
    }
}

#[tokio::test]
async fn calltouch_a_duplicate_refused_in_unknown_words_still_resolves_to_the_deal() {
    let ct = FakeCalltouch::start("ct-token-4", "777").await.unwrap();
    // The real wording is undocumented: none of the words we know.
    ct.set_duplicate_error("Order {number} is already registered");
    let http = VendorClient::new();
    let settings = json!({"base_url": ct.base_url(), "site_id": "777"});
    let token = credential("access_token", "ct-token-4");
    let step = context(&settings, &token, &http, "run/1/deal");
    let deal = fields(json!({"order_number": "B-2", "status": "PENDING"}));
    let first = vendor("calltouch")
        .execute(&step, "calltouch.deal.create", &deal, None)
        .await
        .unwrap();
    let second = vendor("calltouch")
        .execute(&step, "calltouch.deal.create", &deal, None)
        .await
        .unwrap();
    assert_eq!(second.id, first.id);
    assert_eq!(
        second.record["calltouch_order_id"],
        first.record["calltouch_order_id"]
    );
    assert_eq!(ct.deals().len(), 1);
    // Resolved by an update of that deal.
    assert_eq!(
        ct.deal("B-2").unwrap()["updates"].as_array().unwrap().len(),
        1
    );
}

#[tokio::test]
async fn calltouch_an_update_that_adds_a_comment_is_never_repeated_by_the_http_stack() {
    let ct = FakeCalltouch::start("ct-token-3", "777").await.unwrap();
    let http = VendorClient::new();
    let settings = json!({"base_url": ct.base_url(), "site_id": "777"});
    let token = credential("access_token", "ct-token-3");
    let step = context(&settings, &token, &http, "run/1/deal");
    vendor("calltouch")
        .execute(
            &step,
            "calltouch.deal.create",
            &fields(json!({"order_number": "A-1"})),
            None,
        )
        .await
        .unwrap();
    let update = context(&settings, &token, &http, "run/2/deal");
    // Overwrites only: a 5xx is retried within the call.
    ct.fail_next_on(Some("POST"), "/client-order/update", 1, Fault::ServerError);
    let out = vendor("calltouch")
        .execute(
            &update,
            "calltouch.deal.update",
            &fields(json!({"status": "PAID"})),
            Some("A-1"),
        )
        .await
        .unwrap();
    assert_eq!(out.attempts, 2);
    // With a comment: one attempt, the failure handed back as transient.
    ct.fail_next_on(Some("POST"), "/client-order/update", 1, Fault::ServerError);
    let err = vendor("calltouch")
        .execute(
            &update,
            "calltouch.deal.update",
            &fields(json!({"status": "PAID", "comment": "paid in full"})),
            Some("A-1"),
        )
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    let updates = ct
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/client-order/update"))
        .count();
    assert_eq!(updates, 3);
    assert_eq!(ct.deal("A-1").unwrap()["comments"], json!([]));
}

/// The order history: changes made with the very key that reads it are
/// crmbridge's own writes — not order changes, but one counted event, the
/// cursor past them; a user's change is an event; a payment's change keeps
/// the payment.
#[tokio::test]
async fn retailcrm_history_skips_our_own_changes_counted_and_keeps_payments() {
    let rc = FakeRetailCrm::start("rc-key-3").await.unwrap();
    let http = VendorClient::new();
    let settings = json!({"base_url": rc.base_url()});
    let key = credential("api_key", "rc-key-3");
    let ctx = context(&settings, &key, &http, "poll/1");
    let kind = "retailcrm.order.changed";
    let first = vendor("retailcrm")
        .poll(&ctx, kind, &Value::Null, None, chrono::Utc::now())
        .await
        .unwrap();
    assert!(
        first.events.is_empty(),
        "the first poll only places the cursor"
    );
    let step = context(&settings, &key, &http, "run/1/order");
    let order = vendor("retailcrm")
        .execute(
            &step,
            "retailcrm.order.create",
            &fields(json!({"status": "new", "comment": "call 6"})),
            None,
        )
        .await
        .unwrap();
    let order_id: i64 = order.id.parse().unwrap();
    // Our id written back onto the order (an update with our key).
    let step = context(&settings, &key, &http, "run/2/order");
    let updated = vendor("retailcrm")
        .execute(
            &step,
            "retailcrm.order.update",
            &fields(json!({"external_id": "deal-9"})),
            Some(&order.id),
        )
        .await
        .unwrap();
    assert_eq!(updated.id, order.id);
    assert_eq!(rc.order(order_id).unwrap()["externalId"], "deal-9");
    rc.set_order_status(order_id, "complete").unwrap();
    rc.set_payment_status(order_id, 501, "paid").unwrap();
    let second = vendor("retailcrm")
        .poll(
            &ctx,
            kind,
            &Value::Null,
            Some(&first.cursor),
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    let kinds: Vec<&str> = second.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [kind, kind, "retailcrm.history.own_changes"],
        "{:#?}",
        second.events
    );
    assert_eq!(second.events[0].data["status"], "complete");
    assert_eq!(second.events[1].data["field"], "payments.status");
    assert_eq!(second.events[1].data["payment"]["id"], 501);
    assert_eq!(second.events[1].data["payment"]["status"], "paid");
    let own = &second.events[2];
    assert_eq!(own.data["count"], 2, "the create and the update: {own:?}");
    assert_eq!(own.data["orders"], json!([order.id]));
    // The cursor is past all three: nothing again.
    let third = vendor("retailcrm")
        .poll(
            &ctx,
            kind,
            &Value::Null,
            Some(&second.cursor),
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    assert!(third.events.is_empty(), "{:#?}", third.events);
}

/// MoySklad's search answers are paged: with 250 near-matches (counterparties
/// whose text contains the number but whose phone is another) ahead of the
/// real one, the look-up still finds it — reading past the first page —
/// instead of letting a second counterparty be created.
#[tokio::test]
async fn moysklad_finds_a_counterparty_behind_250_near_matches() {
    let ms = FakeMoySklad::start("ms-token-9").await.unwrap();
    let http = VendorClient::new();
    let settings = json!({"base_url": ms.base_url(), "default_region": "RU"});
    let token = credential("token", "ms-token-9");
    let ctx = context(&settings, &token, &http, "run/1/counterparty");
    for i in 0..250 {
        ms.insert_counterparty(json!({"name": format!("Звонок с 9161234567, заявка {i}"), "phone": format!("+7999000{i:04}")}))
            .unwrap();
    }
    let real = ms
        .insert_counterparty(json!({"name": "Анна", "phone": "+79161234567"}))
        .unwrap();
    let keys = [crmbridge_mapping::LookupKey {
        field: "phone".into(),
        value: json!("+79161234567"),
    }];
    let found = vendor("moysklad")
        .find(&ctx, "moysklad.counterparty.create", &keys)
        .await
        .unwrap();
    assert_eq!(found.as_deref(), real["id"].as_str());
    let pages = ms
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/entity/counterparty"))
        .count();
    assert_eq!(pages, 3, "100 + 100 + 51 rows");
}

/// An order with 2,500 lines: the first 1,000 go with the create, the rest
/// 1,000 a call; sent again by the same step (a lost answer), the order is
/// found by its syncId and no line is added twice. Prices are kopecks (the
/// `money('to_minor')` filter turns roubles into them); a bad line is
/// refused before any call, its path named.
#[tokio::test]
async fn moysklad_orders_carry_positions_past_the_1000_cap() {
    let ms = FakeMoySklad::start("ms-token-7").await.unwrap();
    let http = VendorClient::new();
    let settings = json!({"base_url": ms.base_url()});
    let token = credential("token", "ms-token-7");
    let connector = vendor("moysklad");
    let agent = ms
        .insert_counterparty(json!({"name": "ACME", "phone": "+79160000000"}))
        .unwrap();
    let lines: Vec<Value> = (0..2500)
        .map(|i| json!({"product": format!("p-{i}"), "quantity": 2, "price": 15050, "vat": 20}))
        .collect();
    let order = fields(json!({"agent": agent["id"], "positions": lines}));
    let step = context(&settings, &token, &http, "run/1/order");
    let first = connector
        .execute(&step, "moysklad.customerorder.create", &order, None)
        .await
        .unwrap();
    let stored = ms.order_positions(&first.id);
    assert_eq!(stored.len(), 2500);
    assert_eq!(stored[0]["price"], 15050);
    assert_eq!(
        stored[2499]["assortment"]["meta"]["href"].as_str().unwrap(),
        format!("{}/entity/product/p-2499", ms.base_url())
    );
    assert_eq!(stored[7]["vat"], 20);
    // 2,500 × 2 × 150.50 roubles, read back in roubles.
    assert_eq!(first.record["sum"], json!(752500.0));
    let again = connector
        .execute(&step, "moysklad.customerorder.create", &order, None)
        .await
        .unwrap();
    assert_eq!(again.id, first.id);
    assert_eq!(ms.order_positions(&first.id).len(), 2500, "no line twice");
    assert_eq!(ms.orders().len(), 1);

    let bad = fields(json!({"agent": agent["id"], "positions": [
        {"product": "p-1", "price": 100}, {"product": "p-2", "price": 150.5}]}));
    let err = connector
        .execute(
            &context(&settings, &token, &http, "run/2/order"),
            "moysklad.customerorder.create",
            &bad,
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ActionError::Field { field, .. } if field == "fields.positions[1].price"),
        "{err:?}"
    );
    let both =
        fields(json!({"agent": agent["id"], "positions": [{"product": "p-1", "service": "s-1"}]}));
    let err = connector
        .execute(
            &context(&settings, &token, &http, "run/3/order"),
            "moysklad.customerorder.create",
            &both,
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ActionError::Field { field, .. } if field == "fields.positions[0]"),
        "{err:?}"
    );
    assert_eq!(ms.orders().len(), 1);
}

/// MoySklad's poll reads the last 60 s again (a change commits with an
/// `updated` that may be older than one already read), but what it already
/// reported from that window it does not report again: an idle poll finds
/// nothing, and a newer version of the same order is still a change.
#[tokio::test]
async fn moysklad_polls_report_each_order_version_once_across_the_overlap() {
    let ms = FakeMoySklad::start("ms-token-poll").await.unwrap();
    let http = VendorClient::new();
    let settings = json!({"base_url": ms.base_url()});
    let token = credential("token", "ms-token-poll");
    let ctx = context(&settings, &token, &http, "poll/1");
    let connector = vendor("moysklad");
    let kind = "moysklad.customerorder.updated";
    let poll = |cursor: Option<Value>| {
        let ctx = &ctx;
        let connector = &connector;
        async move {
            connector
                .poll(ctx, kind, &Value::Null, cursor.as_ref(), chrono::Utc::now())
                .await
                .unwrap()
        }
    };
    let first = poll(None).await;
    assert!(first.events.is_empty());
    let agent = ms
        .insert_counterparty(json!({"name": "ACME", "phone": "+79160000000"}))
        .unwrap();
    let step = context(&settings, &token, &http, "run/1/order");
    let order = connector
        .execute(
            &step,
            "moysklad.customerorder.create",
            &fields(json!({"agent": agent["id"], "state": "Новый"})),
            None,
        )
        .await
        .unwrap();
    ms.advance_clock(std::time::Duration::from_secs(2));
    ms.set_order_state(&order.id, "Подтвержден").unwrap();
    let second = poll(Some(first.cursor)).await;
    assert_eq!(second.events.len(), 1, "{:#?}", second.events);
    let version = second.events[0].source_id.clone().unwrap();
    assert_eq!(second.cursor["seen"].as_array().unwrap().len(), 1, "{}", second.cursor);
    // Polled again within the minute: the window is read, nothing reported.
    let third = poll(Some(second.cursor.clone())).await;
    assert!(third.events.is_empty(), "{:#?}", third.events);
    assert_eq!(third.cursor, second.cursor);
    let requests = ms.requests();
    assert!(
        requests
            .last()
            .unwrap()
            .query_param("filter")
            .is_some_and(|f| f.starts_with("updated>=")),
        "the overlap was read again"
    );
    // A newer version of the order is a change again.
    ms.advance_clock(std::time::Duration::from_secs(2));
    ms.set_order_state(&order.id, "Новый").unwrap();
    let fourth = poll(Some(third.cursor)).await;
    assert_eq!(fourth.events.len(), 1, "{:#?}", fourth.events);
    assert_ne!(fourth.events[0].source_id.as_ref(), Some(&version));
}
