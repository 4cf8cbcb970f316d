//! The fake retailCRM: auth, success/error shapes, form bodies, customer
//! search, order create, history with sinceId and pagination, statuses, faults.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crmbridge_fakes::Fault;
use crmbridge_fakes::vendors::retailcrm::FakeRetailCrm;
use serde_json::{Value, json};

const KEY: &str = "rc-key";

async fn get(rc: &FakeRetailCrm, path_and_query: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(format!("{}/api/v5{path_and_query}", rc.base_url()))
        .header("X-API-KEY", KEY)
        .send()
        .await
        .unwrap();
    let st = resp.status().as_u16();
    (st, resp.json().await.unwrap())
}

async fn post_form(rc: &FakeRetailCrm, path: &str, form: &[(&str, String)]) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v5{path}", rc.base_url()))
        .header("X-API-KEY", KEY)
        .form(form)
        .send()
        .await
        .unwrap();
    let st = resp.status().as_u16();
    (st, resp.json().await.unwrap())
}

/// Source: retailCRM "API rules" (`rules`, <https://docs.simla.com/Developers/API/APIFeatures/APIRules>): the key goes in the
/// `X-API-KEY` header or an `apiKey` parameter; official Go SDK (`go-sdk`, <https://github.com/retailcrm/api-client-go>): a wrong
/// key → 403 `Wrong "apiKey" value.`, statuses keyed by code. Fake's choice (U): 403 for a missing key; the log hides the key.
#[tokio::test]
async fn auth_header_or_query_and_error_shape() {
    let rc = FakeRetailCrm::start(KEY).await.unwrap();
    let resp = reqwest::Client::new()
        .get(format!("{}/api/v5/reference/statuses", rc.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["success"], false);
    assert_eq!(b["errorMsg"], "\"apiKey\" is missing.");

    let resp = reqwest::Client::new()
        .get(format!("{}/api/v5/reference/statuses", rc.base_url()))
        .header("X-API-KEY", "bad")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["errorMsg"], "Wrong \"apiKey\" value.");

    let resp = reqwest::Client::new()
        .get(format!(
            "{}/api/v5/reference/statuses?apiKey={KEY}",
            rc.base_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["success"], true);
    assert_eq!(b["statuses"]["new"]["code"], "new");
    assert_eq!(b["statuses"]["complete"]["group"], "complete");

    let reqs = rc.requests();
    assert_eq!(reqs[1].header("x-api-key"), Some("***"));
    assert_eq!(reqs[2].query, "apiKey=***");
}

/// Source: retailCRM "API rules" (`rules`, <https://docs.simla.com/Developers/API/APIFeatures/APIRules>): the customer is JSON in one form field;
/// Go SDK (`go-sdk`, <https://github.com/retailcrm/api-client-go>) and `maintainer` (<https://github.com/retailcrm/api-client-php/issues/157>):
/// create → 201, `filter[name]` matches name or phone, 404 `Not found`, `limit` 20/50/100. Fake's choice (U): duplicate `externalId` → 400.
#[tokio::test]
async fn customers_create_and_search() {
    let rc = FakeRetailCrm::start(KEY).await.unwrap();
    let (st, b) = post_form(
        &rc,
        "/customers/create",
        &[
            ("site", "main".into()),
            (
                "customer",
                json!({"externalId": "ct-1", "firstName": "Иван", "lastName": "Петров",
                       "email": "ivan@example.com", "phones": [{"number": "+7 (916) 123-45-67"}]})
                .to_string(),
            ),
        ],
    )
    .await;
    assert_eq!(st, 201, "{b}");
    assert_eq!(b["success"], true);
    let id = b["id"].as_i64().unwrap();

    // Missing parameter, bad JSON, duplicate externalId.
    let (st, b) = post_form(&rc, "/customers/create", &[("site", "main".into())]).await;
    assert_eq!(st, 400);
    assert_eq!(b["errorMsg"], "Parameter 'customer' is missing");
    let (st, b) = post_form(&rc, "/customers/create", &[("customer", "{nope".into())]).await;
    assert_eq!(st, 400);
    assert_eq!(b["success"], false);
    let (st, b) = post_form(
        &rc,
        "/customers/create",
        &[("customer", json!({"externalId": "ct-1"}).to_string())],
    )
    .await;
    assert_eq!(st, 400);
    assert!(b["errors"]["externalId"].is_string());

    // filter[name] matches the phone (digits) and the name.
    let (_, b) = get(&rc, "/customers?filter[name]=79161234567").await;
    assert_eq!(b["pagination"]["totalCount"], 1);
    assert_eq!(b["customers"][0]["id"], id);
    let (_, b) = get(&rc, "/customers?filter[name]=Петров").await;
    assert_eq!(b["pagination"]["totalCount"], 1);
    let (_, b) = get(&rc, "/customers?filter[name]=79990000000").await;
    assert_eq!(b["pagination"]["totalCount"], 0);
    let (_, b) = get(&rc, "/customers?filter[email]=ivan@example.com").await;
    assert_eq!(b["pagination"]["totalCount"], 1);

    let (st, b) = get(&rc, "/customers/ct-1").await;
    assert_eq!(st, 200);
    assert_eq!(b["customer"]["id"], id);
    let (st, b) = get(&rc, &format!("/customers/{id}?by=id")).await;
    assert_eq!(st, 200);
    assert_eq!(b["customer"]["externalId"], "ct-1");
    let (st, b) = get(&rc, "/customers/999?by=id").await;
    assert_eq!(st, 404);
    assert_eq!(b["errorMsg"], "Not found");

    // limit must be 20/50/100.
    let (st, b) = get(&rc, "/customers?limit=10").await;
    assert_eq!(st, 400);
    assert_eq!(b["errorMsg"], "Errors in the input parameters");
    assert!(b["errors"]["limit"].is_string());
}

/// Source: Go SDK (`go-sdk`, <https://github.com/retailcrm/api-client-go>, `types.go`), PHP SDK (`php-sdk`,
/// <https://github.com/retailcrm/api-client-php>): order create → 201 `new`; history (`created` with the full order, `source` user/api, `{code}`
/// values), `filter[sinceId]`, `pagination`. Fake's choice (U): duplicate `externalId` → 400. `apiKey.current`, `payment`: the history tests below.
#[tokio::test]
async fn orders_create_history_and_pagination() {
    let rc = FakeRetailCrm::start(KEY).await.unwrap();
    let (st, b) = post_form(
        &rc,
        "/orders/create",
        &[
            ("site", "main".into()),
            (
                "order",
                json!({"externalId": "ct-123456", "firstName": "Заказ по звонку", "phone": "79161234567",
                       "source": {"source": "yandex", "medium": "cpc"},
                       "customFields": {"utm_source": "yandex"}})
                .to_string(),
            ),
        ],
    )
    .await;
    assert_eq!(st, 201, "{b}");
    assert_eq!(b["order"]["status"], "new");
    assert_eq!(b["order"]["number"], format!("{}A", b["id"]));
    let id = b["id"].as_i64().unwrap();
    // The customer was created from the order.
    assert_eq!(rc.customers().len(), 1);
    assert_eq!(b["order"]["customer"]["id"], rc.customers()[0]["id"]);

    // Duplicate externalId and unknown status are refused.
    let (st, b) = post_form(
        &rc,
        "/orders/create",
        &[("order", json!({"externalId": "ct-123456"}).to_string())],
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(b["errorMsg"], "Errors in the entity format");
    let (st, b) = post_form(
        &rc,
        "/orders/create",
        &[("order", json!({"status": "nope"}).to_string())],
    )
    .await;
    assert_eq!(st, 400);
    assert!(b["errors"]["status"].is_string());

    // History: creation, then a user status change and an API edit.
    rc.set_order_status(id, "assembling").unwrap();
    let (st, b) = post_form(
        &rc,
        "/orders/ct-123456/edit",
        &[
            ("by", "externalId".into()),
            ("order", json!({"status": "complete"}).to_string()),
        ],
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let (st, h) = get(&rc, "/orders/history").await;
    assert_eq!(st, 200);
    let hist = h["history"].as_array().unwrap();
    assert_eq!(hist.len(), 3);
    assert_eq!(hist[0]["created"], true);
    assert_eq!(hist[0]["order"]["externalId"], "ct-123456");
    assert_eq!(hist[1]["source"], "user");
    assert_eq!(hist[1]["field"], "status");
    assert_eq!(hist[1]["newValue"]["code"], "assembling");
    assert_eq!(hist[2]["source"], "api");
    assert_eq!(hist[2]["oldValue"]["code"], "assembling");
    assert_eq!(hist[2]["newValue"]["code"], "complete");
    assert!(h["generatedAt"].is_string());

    let since = hist[1]["id"].as_i64().unwrap();
    let (_, h) = get(&rc, &format!("/orders/history?filter[sinceId]={since}")).await;
    assert_eq!(h["history"].as_array().unwrap().len(), 1);
    assert_eq!(h["history"][0]["newValue"]["code"], "complete");

    // Pagination over many records.
    for _ in 0..25 {
        rc.set_order_status(id, "new").unwrap();
        rc.set_order_status(id, "assembling").unwrap();
    }
    let (_, h) = get(&rc, "/orders/history?limit=20&page=2").await;
    assert_eq!(h["pagination"]["totalCount"], 53);
    assert_eq!(h["pagination"]["currentPage"], 2);
    assert_eq!(h["pagination"]["totalPageCount"], 3);
    assert_eq!(h["history"].as_array().unwrap().len(), 20);

    let (_, o) = get(&rc, "/orders?filter[externalIds][]=ct-123456").await;
    assert_eq!(o["pagination"]["totalCount"], 1);
    assert_eq!(o["orders"][0]["status"], "assembling");
}

/// Source: official Go SDK (`go-sdk`, <https://github.com/retailcrm/api-client-go>, `client.go`): over the rate limit the answer is 503.
/// Fake's choice, not documented (U): an injected 429 carries `Retry-After: 1` and writes nothing, a 500 is `success: false`; test
/// tooling (I): a create whose answer is dropped after commit still lands (what the `externalId` look-up covers).
#[tokio::test]
async fn faults_and_strict_rate_limit() {
    let rc = FakeRetailCrm::start(KEY).await.unwrap();
    rc.fail_next(1, Fault::TooManyRequests);
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v5/customers/create", rc.base_url()))
        .header("X-API-KEY", KEY)
        .form(&[("customer", json!({"firstName": "A"}).to_string())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["success"], false);
    assert!(rc.customers().is_empty());

    rc.fail_next(1, Fault::ServerError);
    let (st, b) = get(&rc, "/reference/statuses").await;
    assert_eq!(st, 500);
    assert_eq!(b["success"], false);

    rc.fail_next_on(Some("POST"), "/customers/create", 1, Fault::DropAfterCommit);
    let r = reqwest::Client::new()
        .post(format!("{}/api/v5/customers/create", rc.base_url()))
        .header("X-API-KEY", KEY)
        .form(&[("customer", json!({"externalId": "x"}).to_string())])
        .send()
        .await;
    assert!(r.is_err());
    assert_eq!(rc.customers().len(), 1);
    assert_eq!(rc.fault_count(), 3);

    rc.set_rate_limit(Some(2));
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(get(&rc, "/reference/statuses").await.0);
    }
    assert_eq!(statuses, vec![200, 200, 503]);
    assert_eq!(rc.rate_limited_count(), 1);
}

/// Source: retailCRM API v5 reference (`api-v5`, <https://docs.retailcrm.ru/Developers/API/APIVersions/APIv5>, `GET /orders/history`):
/// a record made through the API has `source: "api"` and, made with the very key that reads the history, `apiKey: {"current": true}`;
/// a change made by a person carries no `apiKey`; Go SDK (`go-sdk`, <https://github.com/retailcrm/api-client-go>, `types.go`: `APIKey.Current`).
#[tokio::test]
async fn history_marks_writes_made_with_the_reading_key() {
    let rc = FakeRetailCrm::start(KEY).await.unwrap();
    let (st, b) = post_form(
        &rc,
        "/orders/create",
        &[(
            "order",
            json!({"externalId": "own-1", "firstName": "Пётр", "phone": "79160000001"}).to_string(),
        )],
    )
    .await;
    assert_eq!(st, 201, "{b}");
    let id = b["id"].as_i64().unwrap();
    // An API edit with our key, then a person's status change.
    let (st, b) = post_form(
        &rc,
        "/orders/own-1/edit",
        &[("order", json!({"status": "assembling"}).to_string())],
    )
    .await;
    assert_eq!(st, 200, "{b}");
    rc.set_order_status(id, "complete").unwrap();

    let (st, h) = get(&rc, "/orders/history").await;
    assert_eq!(st, 200);
    let hist = h["history"].as_array().unwrap();
    assert_eq!(hist.len(), 3, "{h}");
    // The creation and the edit were made with the reading key.
    for rec in &hist[..2] {
        assert_eq!(rec["source"], "api", "{rec}");
        assert_eq!(rec["apiKey"], json!({"current": true}), "{rec}");
        assert!(rec.get("user").is_none(), "{rec}");
    }
    assert_eq!(hist[0]["created"], true);
    assert_eq!(hist[1]["field"], "status");
    assert_eq!(hist[1]["newValue"]["code"], "assembling");
    // The person's change: no apiKey at all, a user instead.
    let by_user = &hist[2];
    assert_eq!(by_user["source"], "user", "{by_user}");
    assert!(by_user.get("apiKey").is_none(), "{by_user}");
    assert!(by_user["user"]["id"].is_number(), "{by_user}");
    assert_eq!(by_user["newValue"]["code"], "complete");
}

/// Source: retailCRM API v5 reference (`api-v5`, <https://docs.retailcrm.ru/Developers/API/APIVersions/APIv5>, `GET /orders/history`,
/// `OrderHistory.payment`): a payment's change (`field` `payments.status`) carries the payment itself in `payment` (`id`, `type`,
/// `status`, `externalId`, `amount`) beside the partial order. Fake's choice (U): the payment type `cash`, `externalId` null, `amount` the order's total.
#[tokio::test]
async fn history_payment_change_carries_the_payment() {
    let rc = FakeRetailCrm::start(KEY).await.unwrap();
    let (st, b) = post_form(
        &rc,
        "/orders/create",
        &[(
            "order",
            json!({"externalId": "pay-1", "firstName": "Анна",
                   "items": [{"initialPrice": 1500.5, "quantity": 2}]})
            .to_string(),
        )],
    )
    .await;
    assert_eq!(st, 201, "{b}");
    let id = b["id"].as_i64().unwrap();
    let before = rc.history().len();
    rc.set_payment_status(id, 4242, "paid").unwrap();
    assert!(rc.set_payment_status(999_999, 1, "paid").is_err());

    let since = rc.history()[before - 1]["id"].as_i64().unwrap();
    let (st, h) = get(&rc, &format!("/orders/history?filter[sinceId]={since}")).await;
    assert_eq!(st, 200);
    let hist = h["history"].as_array().unwrap();
    assert_eq!(hist.len(), 1, "{h}");
    let rec = &hist[0];
    assert_eq!(rec["field"], "payments.status");
    assert_eq!(rec["newValue"]["code"], "paid");
    let p = rec["payment"].as_object().expect("a payment object");
    assert_eq!(p["id"], 4242);
    assert_eq!(p["type"], "cash");
    assert_eq!(p["status"], "paid");
    assert!(p.contains_key("externalId"), "{rec}");
    assert_eq!(p["amount"], 3001.0);
    assert_eq!(rec["order"]["id"], id);
    assert_eq!(rec["order"]["externalId"], "pay-1");
    // A person made it: no apiKey.
    assert_eq!(rec["source"], "user");
    assert!(rec.get("apiKey").is_none(), "{rec}");
}
