//! The fake Calltouch: header auth, deals create/update, validation, faults,
//! and the call webhook sender.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use crmbridge_fakes::Fault;
use crmbridge_fakes::vendors::calltouch::{
    DuplicatePolicy, FakeCalltouch, WebhookMethod, sample_call_params, send_call_webhook,
    send_call_webhook_owned, unfilled_test_params,
};
use serde_json::{Value, json};

const TOKEN: &str = "ct-token";
const SITE: &str = "12345";

async fn call(
    ct: &FakeCalltouch,
    path: &str,
    token: &str,
    site: &str,
    body: Value,
) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/lead-service/v1/api/client-order/{path}",
            ct.base_url()
        ))
        .header("Access-Token", token)
        .header("SiteId", site)
        .json(&body)
        .send()
        .await
        .unwrap();
    let st = resp.status().as_u16();
    (st, resp.json().await.unwrap_or(Value::Null))
}

fn create_body(number: &str) -> Value {
    json!({"crm": "crmbridge", "orders": [{
        "matching": [{"type": "call", "callParams": {"callId": 123456}}],
        "orderNumber": number, "status": "PENDING", "funnel": "Продажи",
        "orderDate": "08-05-2026 15:40:00", "revenue": "0",
        "addTags": [{"tag": "a"}, {"tag": "b"}],
    }]})
}

/// Source: Calltouch "API: creating deals" (`deal-create`, <https://www.calltouch.ru/support/api-metod-sozdaniya-sdelok>):
/// auth by the `Access-Token` and `SiteId` headers. Fake's choice, not documented (U): a wrong token → 401, a `SiteId` not
/// the cabinet's → 403, nothing stored; the request log hides the token.
#[tokio::test]
async fn header_auth() {
    let ct = FakeCalltouch::start(TOKEN, SITE).await.unwrap();
    let (st, _) = call(&ct, "create", "wrong", SITE, create_body("1")).await;
    assert_eq!(st, 401);
    let (st, _) = call(&ct, "create", TOKEN, "999", create_body("1")).await;
    assert_eq!(st, 403);
    assert!(ct.deals().is_empty());
    let (st, _) = call(&ct, "create", TOKEN, SITE, create_body("1")).await;
    assert_eq!(st, 200);
    let reqs = ct.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[2].header("access-token"), Some("***"));
    assert_eq!(reqs[2].header("siteid"), Some(SITE));
}

/// Source: `deal-create` (<https://www.calltouch.ru/support/api-metod-sozdaniya-sdelok>), `deal-update` (<https://www.calltouch.ru/support/api-metod-obnovleniya-sdelok>):
/// deals keyed by `orderNumber`, update overwrites `status`/`revenue`, `addNewComment` appends. The `calltouchOrderId` answer: `integrators`
/// (<https://github.com/Creepypoke/calltouch-requests-exporter>, S/U). Fake's choice (U): a duplicate `orderNumber` refused per order or answered as existing.
#[tokio::test]
async fn create_and_update_deals() {
    let ct = FakeCalltouch::start(TOKEN, SITE).await.unwrap();
    let (st, b) = call(&ct, "create", TOKEN, SITE, create_body("MS-00001")).await;
    assert_eq!(st, 200, "{b}");
    let id = b["data"]["orders"][0]["calltouchOrderId"].as_i64().unwrap();
    let deal = ct.deal("MS-00001").unwrap();
    assert_eq!(deal["calltouchOrderId"], id);
    assert_eq!(deal["status"], "PENDING");
    assert_eq!(deal["tags"], json!(["a", "b"]));
    assert_eq!(deal["matching"][0]["callParams"]["callId"], 123456);

    // Duplicate orderNumber: rejected per order by default.
    let (st, b) = call(&ct, "create", TOKEN, SITE, create_body("MS-00001")).await;
    assert_eq!(st, 200);
    assert!(b["data"]["orders"][0]["error"].is_string());
    assert_eq!(ct.deals().len(), 1);
    ct.set_duplicate_error("Order {number} is already registered");
    let (_, b) = call(&ct, "create", TOKEN, SITE, create_body("MS-00001")).await;
    assert_eq!(
        b["data"]["orders"][0]["error"],
        "Order MS-00001 is already registered"
    );
    assert_eq!(ct.deals().len(), 1);
    ct.set_duplicate_policy(DuplicatePolicy::ReturnExisting);
    let (_, b) = call(&ct, "create", TOKEN, SITE, create_body("MS-00001")).await;
    assert_eq!(b["data"]["orders"][0]["calltouchOrderId"], id);
    assert_eq!(ct.deals().len(), 1);

    // Update by orderNumber.
    let (st, b) = call(
        &ct,
        "update",
        TOKEN,
        SITE,
        json!({"orders": [{"orderNumber": "MS-00001", "status": "COMPLETED", "revenue": "1500.50",
            "statusDate": "09-05-2026 10:00:00", "addNewComment": {"text": "paid"},
            "addTags": {"overwrite": false, "tags": [{"tag": "c"}]}}]}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let deal = ct.deal("MS-00001").unwrap();
    assert_eq!(deal["status"], "COMPLETED");
    assert_eq!(deal["revenue"], "1500.50");
    assert_eq!(deal["comments"], json!(["paid"]));
    assert_eq!(deal["tags"], json!(["a", "b", "c"]));
    assert_eq!(deal["updates"].as_array().unwrap().len(), 1);

    // Unknown deal on update → per-order error.
    let (st, b) = call(
        &ct,
        "update",
        TOKEN,
        SITE,
        json!({"orders": [{"orderNumber": "nope", "status": "x"}]}),
    )
    .await;
    assert_eq!(st, 200);
    assert!(b["data"]["orders"][0]["error"].is_string());
}

/// Source: integrators' code (`integrators`, <https://github.com/Creepypoke/calltouch-requests-exporter> and
/// others): dates as `dd-mm-yyyy HH:MM:SS`. Fake's choice (U): 400 `data.validationErrorData[{field, message}]`
/// for empty `orders`, a bad `orderDate` or an empty `orderNumber`; nothing is stored.
#[tokio::test]
async fn validation_errors() {
    let ct = FakeCalltouch::start(TOKEN, SITE).await.unwrap();
    let (st, b) = call(&ct, "create", TOKEN, SITE, json!({"orders": []})).await;
    assert_eq!(st, 400);
    assert!(b["data"]["validationErrorData"].is_array());
    let mut bad = create_body("1");
    bad["orders"][0]["orderDate"] = json!("2026-05-08T15:40:00Z");
    let (st, b) = call(&ct, "create", TOKEN, SITE, bad).await;
    assert_eq!(st, 400);
    assert_eq!(
        b["data"]["validationErrorData"][0]["field"],
        "orders[0].orderDate"
    );
    let mut bad = create_body("1");
    bad["orders"][0]["orderNumber"] = json!("");
    let (st, _) = call(&ct, "create", TOKEN, SITE, bad).await;
    assert_eq!(st, 400);
    assert!(ct.deals().is_empty());
}

/// Our rule, not documented (U): Calltouch's over-limit answer is unknown; the fake's injected 429 carries `Retry-After`
/// (here 2) and creates nothing. Test tooling (I): a create whose answer is dropped after commit still makes the deal.
#[tokio::test]
async fn faults() {
    let ct = FakeCalltouch::start(TOKEN, SITE).await.unwrap();
    ct.set_retry_after_secs(2);
    ct.fail_next(1, Fault::TooManyRequests);
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/lead-service/v1/api/client-order/create",
            ct.base_url()
        ))
        .header("Access-Token", TOKEN)
        .header("SiteId", SITE)
        .json(&create_body("1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "2");
    assert!(ct.deals().is_empty());

    ct.fail_next(1, Fault::DropAfterCommit);
    let r = reqwest::Client::new()
        .post(format!(
            "{}/lead-service/v1/api/client-order/create",
            ct.base_url()
        ))
        .header("Access-Token", TOKEN)
        .header("SiteId", SITE)
        .json(&create_body("1"))
        .send()
        .await;
    assert!(r.is_err());
    assert_eq!(ct.deals().len(), 1);
    assert_eq!(ct.fault_count(), 2);
}

type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

/// A tiny receiver recording (request line, content-type, body).
async fn receiver() -> (String, Seen, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let seen2 = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let text = loop {
                let n = sock.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(str::to_owned)
                        })
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if body.len() >= len {
                        break text;
                    }
                }
                if n == 0 {
                    break text;
                }
            };
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let line = head.lines().next().unwrap().to_owned();
            let ct = head
                .lines()
                .find_map(|l| l.strip_prefix("content-type: "))
                .unwrap_or_default()
                .to_owned();
            seen2.lock().unwrap().push((line, ct, body.to_owned()));
            sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
        }
    });
    (format!("http://{addr}/hooks/ct?secret=s"), seen, task)
}

/// Source: Calltouch webhook help (`webhooks`, <https://www.calltouch.ru/support/otpravka-informatsii-o-zvonkakh-zayavkakh-chatakh-iz-calltouch-v-lyubuyu-sistemu-s-pomoshchyu-webhoo/>):
/// URL-encoded parameters as a GET query or a POST form, after our `?secret=`; production receiver (`receiver`, <https://github.com/MrLasha/calltouch-webhook>): the names
/// (`callerphone`, `phonenumber`, …) and the UI test send with unfilled `{callerphone}` placeholders.
#[tokio::test]
async fn call_webhook_get_and_post() {
    let (url, seen, task) = receiver().await;
    let st = send_call_webhook(
        &url,
        &[("callerphone", "79161234567"), ("utm_term", "купить слон")],
        WebhookMethod::Get,
    )
    .await
    .unwrap();
    assert_eq!(st, 200);
    let st = send_call_webhook_owned(&url, &sample_call_params(), WebhookMethod::Post)
        .await
        .unwrap();
    assert_eq!(st, 200);
    let st = send_call_webhook_owned(&url, &unfilled_test_params(), WebhookMethod::Post)
        .await
        .unwrap();
    assert_eq!(st, 200);
    task.abort();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);

    let (line, _, body) = &seen[0];
    assert!(
        line.starts_with("GET /hooks/ct?secret=s&callerphone=79161234567&utm_term="),
        "{line}"
    );
    assert!(body.is_empty());
    let q = line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .split_once('?')
        .unwrap()
        .1;
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(q.as_bytes())
        .into_owned()
        .collect();
    assert!(pairs.contains(&("utm_term".into(), "купить слон".into())));

    let (line, ct, body) = &seen[1];
    assert!(line.starts_with("POST /hooks/ct?secret=s "), "{line}");
    assert_eq!(ct, "application/x-www-form-urlencoded");
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    for name in [
        "callerphone",
        "phonenumber",
        "calltime",
        "status",
        "callId",
        "utm_source",
    ] {
        assert!(
            pairs.iter().any(|(k, _)| k == name),
            "{name} missing in {pairs:?}"
        );
    }
    let (_, _, body) = &seen[2];
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    assert!(pairs.contains(&("callerphone".into(), "{callerphone}".into())));
}

/// Source: `calls-journal` (<https://www.calltouch.ru/support/api-metod-vygruzki-zhurnala-zvonkov/>): `dd/mm/yyyy`, one day without `page` → bare array,
/// `page`/`limit` → `{pageTotal, recordsTotal, records}`; `requests-journal` (<https://www.calltouch.ru/support/vygruzka-zhurnala-zayavok-cherez-api>):
/// `mm/dd/yyyy`, a bare array. Fake's choice (U): 400 for several days without `page` or a bad date, 401 for a wrong `clientApiId`.
#[tokio::test]
async fn journals_with_their_date_formats() {
    let ct = FakeCalltouch::start(TOKEN, SITE).await.unwrap();
    for i in 0..3 {
        ct.add_call(
            json!({"date": format!("0{}/05/2026 15:32:47", 7 + i), "callerNumber": "79160000000",
                           "successful": true, "utmSource": "yandex"}),
        );
    }
    ct.add_request(json!({"dateStr": "08/05/2026 10:00:00", "subject": "form",
                          "client": {"phones": [{"phoneNumber": "79160000001"}]}}));
    let c = reqwest::Client::new();
    let calls = format!(
        "{}/calls-service/RestAPI/{SITE}/calls-diary/calls",
        ct.base_url()
    );

    // One day, no page → bare array.
    let r = c
        .get(&calls)
        .query(&[
            ("clientApiId", TOKEN),
            ("dateFrom", "08/05/2026"),
            ("dateTo", "08/05/2026"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b.as_array().unwrap().len(), 1);
    // Several days need page.
    let r = c
        .get(&calls)
        .query(&[
            ("clientApiId", TOKEN),
            ("dateFrom", "07/05/2026"),
            ("dateTo", "09/05/2026"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .get(&calls)
        .query(&[
            ("clientApiId", TOKEN),
            ("dateFrom", "07/05/2026"),
            ("dateTo", "09/05/2026"),
            ("page", "2"),
            ("limit", "2"),
        ])
        .send()
        .await
        .unwrap();
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["recordsTotal"], 3);
    assert_eq!(b["pageTotal"], 2);
    assert_eq!(b["records"].as_array().unwrap().len(), 1);
    // Wrong token.
    let r = c
        .get(&calls)
        .query(&[
            ("clientApiId", "nope"),
            ("dateFrom", "08/05/2026"),
            ("dateTo", "08/05/2026"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(ct.requests().iter().all(|r| !r.query.contains(TOKEN)));

    // Requests journal: mm/dd/yyyy.
    let reqs = format!("{}/calls-service/RestAPI/requests/", ct.base_url());
    let r = c
        .get(&reqs)
        .query(&[
            ("clientApiId", TOKEN),
            ("siteId", SITE),
            ("dateFrom", "05/08/2026"),
            ("dateTo", "05/08/2026"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b.as_array().unwrap().len(), 1);
    assert_eq!(b[0]["subject"], "form");
    let r = c
        .get(&reqs)
        .query(&[
            ("clientApiId", TOKEN),
            ("siteId", SITE),
            ("dateFrom", "13/05/2026"),
            ("dateTo", "13/05/2026"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

/// Source: Calltouch webhook help (`webhooks`, <https://www.calltouch.ru/support/otpravka-informatsii-o-zvonkakh-zayavkakh-chatakh-iz-calltouch-v-lyubuyu-sistemu-s-pomoshchyu-webhoo/>):
/// parameters are URL-encoded ASCII, and a parameter Calltouch has no value for is sent as the placeholder `<не указано>` (from the
/// analytics sources `(not set)` and the like), spaces as `+`. Uncertain (U): a repeated parameter (`tags=a&tags=b,c`) is sent
/// as given, in order, with the comma percent-encoded like any reserved character (the fake's choice).
#[tokio::test]
async fn call_webhook_placeholders_and_repeated_keys() {
    let (url, seen, task) = receiver().await;
    let params = [
        ("callerphone", "79161234567"),
        ("utm_term", "<не указано>"),
        ("utm_content", "(not set)"),
        ("tags", "a"),
        ("tags", "b,c"),
    ];
    // What Calltouch puts on the wire for these values, written out by hand.
    let wire = "callerphone=79161234567\
        &utm_term=%3C%D0%BD%D0%B5+%D1%83%D0%BA%D0%B0%D0%B7%D0%B0%D0%BD%D0%BE%3E\
        &utm_content=%28not+set%29\
        &tags=a&tags=b%2Cc";
    assert_eq!(
        send_call_webhook(&url, &params, WebhookMethod::Get)
            .await
            .unwrap(),
        200
    );
    assert_eq!(
        send_call_webhook(&url, &params, WebhookMethod::Post)
            .await
            .unwrap(),
        200
    );
    task.abort();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);

    // GET: the exact query, after the URL's own `secret=s`; no body.
    let (line, _, body) = &seen[0];
    assert_eq!(line, &format!("GET /hooks/ct?secret=s&{wire} HTTP/1.1"));
    assert!(body.is_empty());
    // POST: the exact form body; the query is the URL's own.
    let (line, ct, body) = &seen[1];
    assert_eq!(line, "POST /hooks/ct?secret=s HTTP/1.1");
    assert_eq!(ct, "application/x-www-form-urlencoded");
    assert_eq!(body, wire);

    // Decoded, the receiver sees every pair in order: the placeholder whole, both `tags`.
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let want: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    assert_eq!(pairs, want);
}
