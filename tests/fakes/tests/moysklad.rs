//! The fake MoySklad behaves as documented: auth, gzip, counterparties,
//! orders, syncId, filters, pagination, metadata, faults, rate limits, webhooks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crmbridge_fakes::Fault;
use crmbridge_fakes::vendors::moysklad::{
    FakeMoySklad, MoySkladConfig, RateLimit, WEBHOOK_USER_AGENT, WebhookEvent,
};
use serde_json::{Value, json};

const TOKEN: &str = "token-123";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn get(ms: &FakeMoySklad, path_and_query: &str) -> (u16, Value) {
    let resp = client()
        .get(format!("{}{path_and_query}", ms.base_url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn send(ms: &FakeMoySklad, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    let resp = client()
        .request(method, format!("{}{path}", ms.base_url()))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn post(ms: &FakeMoySklad, path: &str, body: Value) -> (u16, Value) {
    send(ms, reqwest::Method::POST, path, body).await
}

async fn new_counterparty(ms: &FakeMoySklad, name: &str, phone: &str, email: &str) -> Value {
    let (st, cp) = post(
        ms,
        "/entity/counterparty",
        json!({"name": name, "phone": phone, "email": email, "companyType": "individual"}),
    )
    .await;
    assert_eq!(st, 200, "{cp}");
    cp
}

fn order_body(ms: &FakeMoySklad, agent: &Value) -> Value {
    json!({
        "organization": ms.organization_ref(),
        "agent": {"meta": agent["meta"].clone()},
    })
}

/// Source: MoySklad API 1.2 docs, <https://github.com/moysklad/api-remap-1.2-doc> (`general` = `md/_general.md`,
/// `errors` = `md/_errors.md`): base path `/api/remap/1.2`, Bearer auth, a wrong token → 401 with `errors[]` code
/// 1056 (no token → 401 too), a list's total in `meta.size`. Test tooling (I): the request log hides the token.
#[tokio::test]
async fn base_url_and_auth() {
    let ms = FakeMoySklad::start(TOKEN).await.unwrap();
    assert!(ms.base_url().starts_with("http://127.0.0.1:"));
    assert!(ms.base_url().ends_with("/api/remap/1.2"));

    // Wrong token → 401 with errors[] code 1056.
    let resp = client()
        .get(format!("{}/entity/counterparty", ms.base_url()))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], 1056);
    assert!(body["errors"][0]["error"].is_string());

    // No auth at all → 401 too.
    let resp = client()
        .get(format!("{}/entity/counterparty", ms.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // Right token → 200.
    let (st, body) = get(&ms, "/entity/organization").await;
    assert_eq!(st, 200);
    assert_eq!(body["meta"]["size"], 1);
    assert_eq!(body["rows"][0]["id"], ms.organization_id());
    assert_eq!(body["rows"][0]["meta"]["href"], ms.organization_href());

    // The log redacts the token.
    let reqs = ms.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[2].header("authorization"), Some("***"));
    assert!(reqs.iter().all(|r| !format!("{r:?}").contains(TOKEN)));
}

/// Source: MoySklad API 1.2 docs (`general`, `md/_general.md` of <https://github.com/moysklad/api-remap-1.2-doc>): Basic
/// `login:password` works too, and `POST /security/token` with Basic auth issues `{"access_token"}`; a wrong password → 401.
#[tokio::test]
async fn basic_auth_and_token_issue() {
    let ms = FakeMoySklad::start_with(MoySkladConfig::new(TOKEN).with_basic("admin@fake", "pw"))
        .await
        .unwrap();
    let resp = client()
        .post(format!("{}/security/token", ms.base_url()))
        .basic_auth("admin@fake", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["access_token"], TOKEN);
    let resp = client()
        .get(format!("{}/entity/counterparty", ms.base_url()))
        .basic_auth("admin@fake", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client()
        .get(format!("{}/entity/counterparty", ms.base_url()))
        .basic_auth("admin@fake", Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

/// Source: MoySklad API 1.2 docs (`general`, `md/_general.md` of <https://github.com/moysklad/api-remap-1.2-doc>):
/// without `Accept-Encoding: gzip` the answer is 415 with no body; with it the answer is gzip-compressed.
#[tokio::test]
async fn gzip_is_mandatory_and_used() {
    let ms = FakeMoySklad::start(TOKEN).await.unwrap();
    let plain = reqwest::Client::builder().no_gzip().build().unwrap();
    let resp = plain
        .get(format!("{}/entity/counterparty", ms.base_url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    assert!(resp.bytes().await.unwrap().is_empty());

    // With the header set by hand, the raw answer is gzip.
    let resp = plain
        .get(format!("{}/entity/counterparty", ms.base_url()))
        .bearer_auth(TOKEN)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let raw = resp.bytes().await.unwrap();
    assert_eq!(&raw[..2], &[0x1f, 0x8b]);
}

/// Source: MoySklad API 1.2 docs (`errors`, `md/_errors.md` of <https://github.com/moysklad/api-remap-1.2-doc>): a body
/// not sent as `Content-Type: application/json` is refused with error 1037 (the fake answers 415) and nothing is created.
#[tokio::test]
async fn body_must_be_json() {
    let ms = FakeMoySklad::start(TOKEN).await.unwrap();
    let resp = client()
        .post(format!("{}/entity/counterparty", ms.base_url()))
        .bearer_auth(TOKEN)
        .header("content-type", "text/plain")
        .body("{\"name\":\"x\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], 1037);
    assert!(ms.counterparties().is_empty());
}

/// Source: MoySklad API 1.2 docs, <https://github.com/moysklad/api-remap-1.2-doc> (`counterparty` = `md/dictionaries/_counterparty.md`,
/// `errors` = `md/_errors.md`, `general` = `md/_general.md`): create → 200, `name` required (412, 3000), bad email 3015, 404 is 1021,
/// `updated` with milliseconds, PUT updates, and an array create ("Массовое создание") answers an array.
#[tokio::test]
async fn counterparty_create_get_and_validation() {
    let ms = FakeMoySklad::start(TOKEN).await.unwrap();
    let cp = new_counterparty(&ms, "Иван Петров", "+79161234567", "ivan@example.com").await;
    let id = cp["id"].as_str().unwrap();
    assert_eq!(cp["meta"]["href"], ms.counterparty_href(id));
    assert_eq!(cp["meta"]["type"], "counterparty");
    let updated = cp["updated"].as_str().unwrap();
    assert_eq!(updated.len(), "2026-05-08 15:00:00.123".len(), "{updated}");

    let (st, got) = get(&ms, &format!("/entity/counterparty/{id}")).await;
    assert_eq!(st, 200);
    assert_eq!(got["phone"], "+79161234567");

    let (st, missing) = get(
        &ms,
        "/entity/counterparty/00000000-0000-0000-0000-000000000000",
    )
    .await;
    assert_eq!(st, 404);
    assert_eq!(missing["errors"][0]["code"], 1021);

    // name is required.
    let (st, e) = post(&ms, "/entity/counterparty", json!({"phone": "1"})).await;
    assert_eq!(st, 412);
    assert_eq!(e["errors"][0]["code"], 3000);
    assert_eq!(e["errors"][0]["parameter"], "name");
    // bad email.
    let (st, e) = post(
        &ms,
        "/entity/counterparty",
        json!({"name": "x", "email": "nope"}),
    )
    .await;
    assert_eq!(st, 412);
    assert_eq!(e["errors"][0]["code"], 3015);

    // Array create → array answer.
    let (st, arr) = post(
        &ms,
        "/entity/counterparty",
        json!([{"name": "A"}, {"name": "B"}]),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(arr.as_array().unwrap().len(), 2);
    assert_eq!(ms.counterparties().len(), 3);

    // PUT updates.
    let (st, upd) = send(
        &ms,
        reqwest::Method::PUT,
        &format!("/entity/counterparty/{id}"),
        json!({"email": "new@example.com"}),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(upd["email"], "new@example.com");
    assert_eq!(upd["name"], "Иван Петров");
}

/// Source: MoySklad API 1.2 docs, <https://github.com/moysklad/api-remap-1.2-doc> (`general` = `md/_general.md`, `counterparty` =
/// `md/dictionaries/_counterparty.md`, `paging` = `md/workbook/_workbook_paging.md`): `filter` operators, `search` a substring over name/phone/email, lists
/// paged by `limit`/`offset` with `meta.size`/`nextHref`, `limit` ≤ 1000. Fake's choice (U): no phone normalisation. Search and paging are not combined here.
#[tokio::test]
async fn counterparty_filter_search_and_pagination() {
    let ms = FakeMoySklad::start(TOKEN).await.unwrap();
    new_counterparty(&ms, "Иван Петров", "+7 916 123-45-67", "ivan@example.com").await;
    new_counterparty(&ms, "Пётр Иванов", "79161112233", "petr@example.com").await;
    new_counterparty(&ms, "ООО Ромашка", "+74950000000", "info@romashka.ru").await;

    // exact phone
    let (_, b) = get(&ms, "/entity/counterparty?filter=phone%3D79161112233").await;
    assert_eq!(b["meta"]["size"], 1);
    assert_eq!(b["rows"][0]["name"], "Пётр Иванов");
    // exact is exact: digits do not match a formatted phone
    let (_, b) = get(&ms, "/entity/counterparty?filter=phone%3D79161234567").await;
    assert_eq!(b["meta"]["size"], 0);
    // suffix
    let (_, b) = get(&ms, "/entity/counterparty?filter=phone%3D~0000000").await;
    assert_eq!(b["meta"]["size"], 1);
    assert_eq!(b["rows"][0]["name"], "ООО Ромашка");
    // substring
    let (_, b) = get(&ms, "/entity/counterparty?filter=phone~916").await;
    assert_eq!(b["meta"]["size"], 2);
    // email exact, ;-joined with a name condition (AND)
    let q = url_encode("email=ivan@example.com;name~иван");
    let (_, b) = get(&ms, &format!("/entity/counterparty?filter={q}")).await;
    assert_eq!(b["meta"]["size"], 1);
    // repeated = on one field is OR
    let q = url_encode("email=ivan@example.com;email=petr@example.com");
    let (_, b) = get(&ms, &format!("/entity/counterparty?filter={q}")).await;
    assert_eq!(b["meta"]["size"], 2);
    // unknown field → error
    let (st, b) = get(&ms, "/entity/counterparty?filter=nosuch%3D1").await;
    assert_eq!(st, 400);
    assert!(b["errors"][0]["error"].is_string());

    // search: substring over name / phone / email
    let (_, b) = get(&ms, "/entity/counterparty?search=romashka").await;
    assert_eq!(b["meta"]["size"], 1);
    let (_, b) = get(&ms, "/entity/counterparty?search=7916111").await;
    assert_eq!(b["meta"]["size"], 1);
    let (_, b) = get(
        &ms,
        &format!("/entity/counterparty?search={}", url_encode("иванов")),
    )
    .await;
    assert_eq!(b["meta"]["size"], 1);

    // pagination
    let (_, b) = get(&ms, "/entity/counterparty?limit=2").await;
    assert_eq!(b["meta"]["size"], 3);
    assert_eq!(b["meta"]["limit"], 2);
    assert_eq!(b["rows"].as_array().unwrap().len(), 2);
    let next = b["meta"]["nextHref"].as_str().unwrap();
    assert!(next.starts_with(&ms.base_url()), "{next}");
    let resp = client().get(next).bearer_auth(TOKEN).send().await.unwrap();
    let b2: Value = resp.json().await.unwrap();
    assert_eq!(b2["meta"]["offset"], 2);
    assert_eq!(b2["rows"].as_array().unwrap().len(), 1);
    assert!(b2["meta"].get("nextHref").is_none());
    assert!(b2["meta"]["previousHref"].is_string());
    let (st, _) = get(&ms, "/entity/counterparty?limit=1001").await;
    assert_eq!(st, 400);
}

fn url_encode(s: &str) -> String {
    form_urlencoded_encode(s)
}

fn form_urlencoded_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Source: MoySklad API 1.2 docs, <https://github.com/moysklad/api-remap-1.2-doc> (`order` = `md/documents/_customerOrder.md`,
/// `errors` = `md/_errors.md`): an order needs `organization` and `agent` (412, code 3000); an href on another server is error 1059.
#[tokio::test]
async fn order_requires_organization_and_agent() {
    let ms = FakeMoySklad::start(TOKEN).await.unwrap();
    let cp = new_counterparty(&ms, "A", "1", "a@b.ru").await;
    let (st, e) = post(
        &ms,
        "/entity/customerorder",
        json!({"agent": {"meta": cp["meta"]}}),
    )
    .await;
    assert_eq!(st, 412);
    assert_eq!(e["errors"][0]["code"], 3000);
    assert_eq!(e["errors"][0]["parameter"], "organization");
    let (st, e) = post(
        &ms,
        "/entity/customerorder",
        json!({"organization": ms.organization_ref()}),
    )
    .await;
    assert_eq!(st, 412);
    assert_eq!(e["errors"][0]["parameter"], "agent");
    // An href on another server is refused.
    let (st, e) = post(
        &ms,
        "/entity/customerorder",
        json!({"organization": ms.organization_ref(), "agent": {"meta": {
            "href": "https://api.moysklad.ru/api/remap/1.2/entity/counterparty/x", "type": "counterparty"}}}),
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(e["errors"][0]["code"], 1059);
    assert!(ms.orders().is_empty());
}

/// Source: MoySklad API 1.2 docs, <https://github.com/moysklad/api-remap-1.2-doc> (`order` = `md/documents/_customerOrder.md`, `general` =
/// `md/_general.md`, `errors` = `md/_errors.md`): `state`/`attributes` as metas, a repeated `syncId` answers the order made earlier, `expand`, PUT,
/// `syncId` immutable (1047), a wrong value type 2016. Fake's choice (U): the default state is the first one; an unknown state or attribute href is 412.
#[tokio::test]
async fn order_create_with_state_attributes_and_sync_id() {
    let ms = FakeMoySklad::start(TOKEN).await.unwrap();
    let cp = new_counterparty(&ms, "A", "79160000000", "a@b.ru").await;
    let mut body = order_body(&ms, &cp);
    body["state"] = json!({"meta": {"href": ms.state_href("Подтвержден").unwrap(), "type": "state", "mediaType": "application/json"}});
    body["attributes"] = json!([
        {"meta": {"href": ms.attribute_href("utm_source").unwrap(), "type": "attributemetadata", "mediaType": "application/json"}, "value": "yandex"},
        {"meta": {"href": ms.attribute_href("Теги").unwrap(), "type": "attributemetadata", "mediaType": "application/json"}, "value": "a|b"},
    ]);
    body["syncId"] = json!("7c9e6679-7425-40de-944b-e07fc1f90ae7");
    body["description"] = json!("Calltouch callId=123456");
    let (st, order) = post(&ms, "/entity/customerorder", body.clone()).await;
    assert_eq!(st, 200, "{order}");
    let id = order["id"].as_str().unwrap().to_owned();
    assert_eq!(order["name"], "00001");
    assert_eq!(order["meta"]["href"], ms.order_href(&id));
    assert_eq!(
        order["state"]["meta"]["href"],
        ms.state_href("Подтвержден").unwrap()
    );
    assert_eq!(ms.order_state_name(&id).unwrap(), "Подтвержден");
    assert_eq!(ms.order_attribute(&id, "utm_source").unwrap(), "yandex");
    assert_eq!(ms.order_attribute(&id, "Теги").unwrap(), "a|b");
    assert_eq!(order["sum"], 0.0);

    // Same syncId → the same order, no duplicate.
    let (st, again) = post(&ms, "/entity/customerorder", body).await;
    assert_eq!(st, 200);
    assert_eq!(again["id"], id.as_str());
    assert_eq!(ms.orders().len(), 1);

    // Default state is the first one ("Новый").
    let (_, o2) = post(&ms, "/entity/customerorder", order_body(&ms, &cp)).await;
    assert_eq!(
        ms.order_state_name(o2["id"].as_str().unwrap()).unwrap(),
        "Новый"
    );
    assert_ne!(o2["syncId"], again["syncId"]);

    // Unknown attribute / state / wrong type are refused.
    let mut bad = order_body(&ms, &cp);
    bad["attributes"] = json!([{"meta": {"href": format!("{}/entity/customerorder/metadata/attributes/nope", ms.base_url()), "type": "attributemetadata"}, "value": "x"}]);
    let (st, _) = post(&ms, "/entity/customerorder", bad).await;
    assert_eq!(st, 412);
    let mut bad = order_body(&ms, &cp);
    bad["state"] = json!({"meta": {"href": format!("{}/entity/customerorder/metadata/states/nope", ms.base_url()), "type": "state"}});
    let (st, _) = post(&ms, "/entity/customerorder", bad).await;
    assert_eq!(st, 412);
    let mut bad = order_body(&ms, &cp);
    bad["attributes"] = json!([{"meta": {"href": ms.attribute_href("utm_source").unwrap(), "type": "attributemetadata"}, "value": 5}]);
    let (st, e) = post(&ms, "/entity/customerorder", bad).await;
    assert_eq!(st, 400);
    assert_eq!(e["errors"][0]["code"], 2016);
    assert_eq!(ms.orders().len(), 2);

    // GET by id with expand.
    let (st, got) = get(
        &ms,
        &format!("/entity/customerorder/{id}?expand=state,agent"),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(got["state"]["name"], "Подтвержден");
    assert_eq!(got["agent"]["name"], "A");

    // PUT: state change, syncId immutable.
    let (st, put) = send(
        &ms,
        reqwest::Method::PUT,
        &format!("/entity/customerorder/{id}"),
        json!({"state": {"meta": {"href": ms.state_href("Выполнен").unwrap(), "type": "state"}}, "description": "done"}),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(put["description"], "done");
    assert_eq!(ms.order_state_name(&id).unwrap(), "Выполнен");
    assert_eq!(ms.order_attribute(&id, "utm_source").unwrap(), "yandex");
    let (st, e) = send(
        &ms,
        reqwest::Method::PUT,
        &format!("/entity/customerorder/{id}"),
        json!({"syncId": "00000000-0000-4000-8000-000000000000"}),
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(e["errors"][0]["code"], 1047);
}

/// Source: MoySklad API 1.2 docs, <https://github.com/moysklad/api-remap-1.2-doc> (`order` = `md/documents/_customerOrder.md`, `md/dictionaries/_states.md`):
/// `metadata` lists states (with `stateType`) and attributes, also as `metadata/attributes`. Our choice (I): the seeded names come from the seed article.
#[tokio::test]
async fn metadata_has_seed_states_and_attributes() {
    let ms = FakeMoySklad::start(TOKEN).await.unwrap();
    let (st, md) = get(&ms, "/entity/customerorder/metadata").await;
    assert_eq!(st, 200);
    let states: Vec<&str> = md["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for s in ["Новый", "Подтвержден", "Выполнен", "Доставлено"] {
        assert!(states.contains(&s), "{states:?}");
    }
    assert!(md["states"][0]["stateType"].is_string());
    let attrs: Vec<&str> = md["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for a in [
        "Источник",
        "Канал",
        "utm_source",
        "utm_medium",
        "utm_campaign",
        "utm_content",
        "utm_term",
        "Google Client ID",
        "Теги",
    ] {
        assert!(attrs.contains(&a), "{attrs:?}");
    }
    let (st, list) = get(&ms, "/entity/customerorder/metadata/attributes").await;
    assert_eq!(st, 200);
    assert_eq!(list["meta"]["size"], attrs.len());
    assert_eq!(list["rows"][0]["meta"]["type"], "attributemetadata");
    assert!(
        list["rows"][0]["meta"]["href"]
            .as_str()
            .unwrap()
            .starts_with(&ms.base_url())
    );
}

/// Source: MoySklad API 1.2 docs, <https://github.com/moysklad/api-remap-1.2-doc> (`order` = `md/documents/_customerOrder.md`, `general` = `md/_general.md`):
/// `filter=updated>=…` with `order=updated,asc`, `limit`/`offset`; date-times in Moscow time with milliseconds; `payedSum`; a `state.name` filter; a bad date → 400.
#[tokio::test]
async fn order_polling_by_updated_msk() {
    let ms = FakeMoySklad::start(TOKEN).await.unwrap();
    let cp = new_counterparty(&ms, "A", "1", "a@b.ru").await;
    let (_, o1) = post(&ms, "/entity/customerorder", order_body(&ms, &cp)).await;
    ms.advance_clock(Duration::from_secs(60));
    let cursor = ms.now(); // MSK, with millis
    ms.advance_clock(Duration::from_secs(60));
    let (_, o2) = post(&ms, "/entity/customerorder", order_body(&ms, &cp)).await;
    ms.advance_clock(Duration::from_secs(60));
    let id1 = o1["id"].as_str().unwrap();
    ms.set_order_state(id1, "Выполнен").unwrap();
    ms.set_order_paid(id1, 150_000.0).unwrap();

    // The fake's clock is Moscow time: UTC+3.
    let msk_now = chrono::Utc::now() + chrono::Duration::hours(3) + chrono::Duration::minutes(3);
    let fake_now =
        chrono::NaiveDateTime::parse_from_str(&ms.now(), "%Y-%m-%d %H:%M:%S%.3f").unwrap();
    assert!((fake_now - msk_now.naive_utc()).num_seconds().abs() < 30);

    let cursor_s = &cursor[..19];
    let q = url_encode(&format!("updated>={cursor_s}"));
    let (st, b) = get(
        &ms,
        &format!("/entity/customerorder?filter={q}&order=updated,asc&limit=100&offset=0"),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["meta"]["size"], 2);
    assert_eq!(b["rows"][0]["id"], o2["id"]);
    assert_eq!(b["rows"][1]["id"], o1["id"]);
    assert_eq!(b["rows"][1]["payedSum"], 150_000.0);

    let q = url_encode("state.name=Выполнен");
    let (_, b) = get(&ms, &format!("/entity/customerorder?filter={q}")).await;
    assert_eq!(b["meta"]["size"], 1);

    let (st, _) = get(&ms, "/entity/customerorder?filter=updated%3E%3Dyesterday").await;
    assert_eq!(st, 400);
}

/// Source: MoySklad API 1.2 docs, <https://github.com/moysklad/api-remap-1.2-doc> (`general` = `md/_general.md`, `errors` = `md/_errors.md`): 429
/// is code 1049 with `X-Lognex-Retry-After` in milliseconds. Fake's choice (U): the 5xx body (`errors[]` with a message); neither changes state.
#[tokio::test]
async fn injected_429_carries_lognex_retry_after() {
    let ms = FakeMoySklad::start(TOKEN).await.unwrap();
    ms.set_retry_after(Duration::from_millis(1500));
    ms.fail_next(1, Fault::TooManyRequests);
    let resp = client()
        .post(format!("{}/entity/counterparty", ms.base_url()))
        .bearer_auth(TOKEN)
        .json(&json!({"name": "A"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["x-lognex-retry-after"], "1500");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], 1049);
    assert!(ms.counterparties().is_empty(), "429 must not change state");
    assert_eq!(ms.fault_count(), 1);

    ms.fail_next(1, Fault::ServerError);
    let (st, b) = post(&ms, "/entity/counterparty", json!({"name": "A"})).await;
    assert_eq!(st, 500);
    assert!(b["errors"][0]["error"].is_string());
    assert!(ms.counterparties().is_empty());

    // Retry succeeds.
    let (st, _) = post(&ms, "/entity/counterparty", json!({"name": "A"})).await;
    assert_eq!(st, 200);
    assert_eq!(ms.counterparties().len(), 1);
    assert_eq!(
        ms.injected_faults(),
        vec![Fault::TooManyRequests, Fault::ServerError]
    );
    assert_eq!(ms.requests()[0].fault, Some(Fault::TooManyRequests));
}

/// Source: MoySklad API 1.2 docs (`general`, "Назначение поля syncId" in `md/_general.md` of <https://github.com/moysklad/api-remap-1.2-doc>):
/// a create repeated with the same `syncId` answers the order made earlier. Test tooling (I): the drop before / after commit.
#[tokio::test]
async fn drop_and_drop_after_commit_with_sync_id() {
    let ms = FakeMoySklad::start(TOKEN).await.unwrap();
    let cp = new_counterparty(&ms, "A", "1", "a@b.ru").await;
    let mut body = order_body(&ms, &cp);
    body["syncId"] = json!("11111111-2222-4333-8444-555555555555");

    // Drop before commit: error, nothing stored.
    ms.fail_next_on(Some("POST"), "/entity/customerorder", 1, Fault::Drop);
    let err = client()
        .post(format!("{}/entity/customerorder", ms.base_url()))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await;
    assert!(err.is_err());
    assert!(ms.orders().is_empty());

    // Drop after commit: error, but the order exists.
    ms.fail_next_on(
        Some("POST"),
        "/entity/customerorder",
        1,
        Fault::DropAfterCommit,
    );
    let err = client()
        .post(format!("{}/entity/customerorder", ms.base_url()))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await;
    assert!(err.is_err());
    assert_eq!(ms.orders().len(), 1);

    // The retry with the same syncId does not duplicate.
    let (st, o) = post(&ms, "/entity/customerorder", body).await;
    assert_eq!(st, 200);
    assert_eq!(o["id"], ms.orders()[0]["id"]);
    assert_eq!(ms.orders().len(), 1);
    assert_eq!(ms.fault_count(), 2);
}

/// Test tooling, not a vendor behaviour (I): a slow answer still commits, so a client timeout does not mean "not created".
#[tokio::test]
async fn slow_commits_then_waits() {
    let ms = FakeMoySklad::start(TOKEN).await.unwrap();
    ms.fail_next(1, Fault::Slow(Duration::from_secs(5)));
    let c = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let r = c
        .post(format!("{}/entity/counterparty", ms.base_url()))
        .bearer_auth(TOKEN)
        .json(&json!({"name": "slow"}))
        .send()
        .await;
    assert!(r.unwrap_err().is_timeout());
    assert_eq!(ms.counterparties().len(), 1);
}

/// Test tooling, not a vendor behaviour (I): random faults (500 / 429) repeat exactly for the same seed.
#[tokio::test]
async fn fault_rate_is_deterministic_per_seed() {
    async fn run(seed: u64) -> Vec<u16> {
        let ms = FakeMoySklad::start(TOKEN).await.unwrap();
        ms.set_fault_rate(0.5, vec![Fault::ServerError, Fault::TooManyRequests], seed);
        let mut out = Vec::new();
        for _ in 0..20 {
            out.push(get(&ms, "/entity/counterparty").await.0);
        }
        assert_eq!(ms.fault_count(), out.iter().filter(|s| **s != 200).count());
        out
    }
    let a = run(7).await;
    let b = run(7).await;
    assert_eq!(a, b);
    assert!(a.contains(&200));
    assert!(a.iter().any(|s| *s == 500 || *s == 429));
}

/// Source: MoySklad API 1.2 docs, <https://github.com/moysklad/api-remap-1.2-doc> (`restrictions` =
/// `md/_restrictions.md`, `general` = `md/_general.md`): over the budget 429 code 1049 with `X-Lognex-Retry-After`, more
/// than 5 in parallel 429 code 1073, `X-RateLimit-*` headers. The budget (3 requests a window here) is a test setting.
#[tokio::test]
async fn strict_rate_limit_window_and_parallel() {
    let ms = FakeMoySklad::start(TOKEN).await.unwrap();
    ms.set_rate_limit(Some(RateLimit {
        requests: 3,
        window: Duration::from_secs(60),
        max_parallel: 5,
    }));
    for _ in 0..3 {
        let resp = client()
            .get(format!("{}/entity/counterparty", ms.base_url()))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().contains_key("x-ratelimit-remaining"));
    }
    let resp = client()
        .get(format!("{}/entity/counterparty", ms.base_url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let after: u64 = resp.headers()["x-lognex-retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(after > 0 && after <= 60_000);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], 1049);

    // Parallel limit: 5 slow requests in flight, the 6th gets 1073.
    ms.set_rate_limit(Some(RateLimit {
        requests: 1000,
        window: Duration::from_secs(60),
        max_parallel: 5,
    }));
    // Long enough for the 6th request to arrive on a busy machine.
    ms.fail_next(5, Fault::Slow(Duration::from_secs(2)));
    let mut handles = Vec::new();
    for _ in 0..5 {
        let url = format!("{}/entity/counterparty", ms.base_url());
        handles.push(tokio::spawn(async move {
            client()
                .get(url)
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    ms.wait_in_flight(5).await;
    let resp = client()
        .get(format!("{}/entity/counterparty", ms.base_url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], 1073);
    for h in handles {
        assert_eq!(h.await.unwrap(), 200);
    }
    assert_eq!(ms.rate_limited_count(), 2);
}

/// Source: MoySklad API 1.2 docs (`webhook`, `md/dictionaries/_webhook.md` of
/// <https://github.com/moysklad/api-remap-1.2-doc>): POST `{auditContext, events[{meta, action}]}` to `url?requestId=…`,
/// failed deliveries retried at once with the same `requestId`. Fake's choice (U): the User-Agent string.
#[tokio::test]
async fn webhook_sender_posts_like_moysklad() {
    use std::sync::{Arc, Mutex};
    let ms = FakeMoySklad::start(TOKEN).await.unwrap();
    let cp = new_counterparty(&ms, "A", "1", "a@b.ru").await;
    let (_, o) = post(&ms, "/entity/customerorder", order_body(&ms, &cp)).await;
    let id = o["id"].as_str().unwrap();

    let payload = ms.webhook_payload(id, "UPDATE");
    assert_eq!(payload["events"][0]["meta"]["href"], ms.order_href(id));
    assert_eq!(payload["events"][0]["action"], "UPDATE");
    assert_eq!(payload["auditContext"]["meta"]["type"], "audit");

    // A receiver that fails twice, then accepts: same requestId on every attempt.
    let seen: Arc<Mutex<Vec<(String, String, Value)>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen2 = seen.clone();
    let server = tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let raw = read_http(&mut sock).await;
            let (head, body) = raw.split_once("\r\n\r\n").unwrap();
            let line = head.lines().next().unwrap().to_owned();
            let ua = head
                .lines()
                .find_map(|l| l.strip_prefix("user-agent: "))
                .unwrap_or_default()
                .to_owned();
            let n = {
                let mut s = seen2.lock().unwrap();
                s.push((line, ua, serde_json::from_str(body).unwrap()));
                s.len()
            };
            let status = if n < 3 {
                "500 Internal Server Error"
            } else {
                "204 No Content"
            };
            use tokio::io::AsyncWriteExt;
            sock.write_all(
                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        }
    });
    let delivery = ms
        .send_webhook(&format!("http://{addr}/hooks/ms?secret=s"), id, "UPDATE")
        .await
        .unwrap();
    server.abort();
    assert!(delivery.delivered());
    assert_eq!(delivery.status(), Some(204));
    assert_eq!(delivery.attempts.len(), 3);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    for (line, ua, body) in seen.iter() {
        assert!(
            line.starts_with("POST /hooks/ms?secret=s&requestId="),
            "{line}"
        );
        assert!(line.contains(&delivery.request_id));
        assert_eq!(ua, WEBHOOK_USER_AGENT);
        assert_eq!(body["events"][0]["meta"]["href"], ms.order_href(id));
    }
}

async fn read_http(sock: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
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
                return text;
            }
        }
        if n == 0 {
            return text;
        }
    }
}

/// Test tooling, not a vendor behaviour (I): dropping the fake stops its server.
#[tokio::test]
async fn server_stops_on_drop() {
    let ms = FakeMoySklad::start(TOKEN).await.unwrap();
    let url = format!("{}/entity/counterparty", ms.base_url());
    drop(ms);
    tokio::task::yield_now().await;
    let r = client().get(url).bearer_auth(TOKEN).send().await;
    assert!(r.is_err());
}

/// A receiver that answers 200 and records (request line, body).
async fn ok_receiver() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>,
    tokio::task::JoinHandle<()>,
) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>> = Default::default();
    let seen2 = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let raw = read_http(&mut sock).await;
            let (head, body) = raw.split_once("\r\n\r\n").unwrap();
            let line = head.lines().next().unwrap().to_owned();
            seen2
                .lock()
                .unwrap()
                .push((line, serde_json::from_str(body).unwrap()));
            sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
        }
    });
    (format!("http://{addr}"), seen, task)
}

/// Source: MoySklad API 1.2 docs (`webhook`, `md/dictionaries/_webhook.md` of <https://github.com/moysklad/api-remap-1.2-doc>):
/// webhook CRUD, (entityType, action, url) unique (3006), `updatedFields` with `diffType=FIELDS`,
/// `X-Lognex-WebHook-DisableByPrefix`. Fake's choice (U): one event per POST (no batches, no `PROCESSED` here).
#[tokio::test]
async fn webhook_subscriptions_and_delivery() {
    let ms = FakeMoySklad::start(TOKEN).await.unwrap();
    let (base, seen, task) = ok_receiver().await;
    let hook_url = format!("{base}/hooks/ms");
    let (st, w) = post(
        &ms,
        "/entity/webhook",
        json!({"url": hook_url, "entityType": "customerorder", "action": "UPDATE", "diffType": "FIELDS"}),
    )
    .await;
    assert_eq!(st, 200, "{w}");
    assert_eq!(w["method"], "POST");
    assert_eq!(w["enabled"], true);
    // Same (entityType, action, url) twice → 412/3006.
    let (st, e) = post(
        &ms,
        "/entity/webhook",
        json!({"url": hook_url, "entityType": "customerorder", "action": "UPDATE"}),
    )
    .await;
    assert_eq!(st, 412);
    assert_eq!(e["errors"][0]["code"], 3006);
    let (st, _) = post(
        &ms,
        "/entity/webhook",
        json!({"url": hook_url, "entityType": "customerorder", "action": "CREATE"}),
    )
    .await;
    assert_eq!(st, 200);
    let (_, list) = get(&ms, "/entity/webhook").await;
    assert_eq!(list["meta"]["size"], 2);

    let cp = new_counterparty(&ms, "A", "1", "a@b.ru").await;
    let (_, o) = post(&ms, "/entity/customerorder", order_body(&ms, &cp)).await;
    let id = o["id"].as_str().unwrap();
    ms.set_order_state(id, "Выполнен").unwrap();
    // Our own write, with the suppression header: not announced to us.
    let resp = client()
        .put(format!("{}/entity/customerorder/{id}", ms.base_url()))
        .bearer_auth(TOKEN)
        .header("X-Lognex-WebHook-DisableByPrefix", base.as_str())
        .json(&json!({"description": "ours"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let pending = ms.pending_events();
    // counterparty CREATE, order CREATE, state UPDATE, our UPDATE
    assert_eq!(pending.len(), 4);

    let deliveries = ms.deliver_webhooks().await.unwrap();
    task.abort();
    assert_eq!(deliveries.len(), 2, "{deliveries:?}");
    assert!(deliveries.iter().all(|d| d.delivered()));
    assert!(ms.pending_events().is_empty());
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].1["events"][0]["action"], "CREATE");
    assert_eq!(seen[1].1["events"][0]["action"], "UPDATE");
    assert_eq!(seen[1].1["events"][0]["updatedFields"], json!(["state"]));
    assert_eq!(seen[1].1["events"][0]["meta"]["href"], ms.order_href(id));
    assert!(seen[1].0.starts_with("POST /hooks/ms?requestId="));
}

/// Test tooling, not a vendor behaviour (I): the request log keeps each answer's status and the query parameters.
#[tokio::test]
async fn request_log_has_status() {
    let ms = FakeMoySklad::start(TOKEN).await.unwrap();
    ms.fail_next(1, Fault::TooManyRequests);
    get(&ms, "/entity/counterparty").await;
    get(&ms, "/entity/counterparty?limit=5").await;
    let log = ms.requests();
    assert_eq!(log[0].status, Some(429));
    assert_eq!(log[1].status, Some(200));
    assert_eq!(log[1].query_param("limit").as_deref(), Some("5"));
    assert_eq!(log[1].path, "/api/remap/1.2/entity/counterparty");
    ms.clear_requests();
    assert!(ms.requests().is_empty());
}

/// Source: MoySklad API 1.2 docs (`webhook`, `md/dictionaries/_webhook.md`; `async`, `md/_async.md` of
/// <https://github.com/moysklad/api-remap-1.2-doc>): one POST to `url?requestId=…` with `{auditContext: {meta, uid, moment}, events: [...]}`,
/// and `events` may hold several items; an asynchronous task's `PROCESSED` event has `meta.type` `async` and an `…/async/{id}` href;
/// `updatedFields` only on an `UPDATE`. Test tooling (I): the events of one delivery are chosen by the test.
#[tokio::test]
async fn webhook_delivery_with_several_events_and_processed() {
    let ms = FakeMoySklad::start(TOKEN).await.unwrap();
    let cp = new_counterparty(&ms, "A", "1", "a@b.ru").await;
    let (_, o) = post(&ms, "/entity/customerorder", order_body(&ms, &cp)).await;
    let id = o["id"].as_str().unwrap().to_owned();
    let cp_id = cp["id"].as_str().unwrap().to_owned();
    let task_id = "91adc76b-a71c-11eb-ac12-000e00000000";
    let (base, seen, task) = ok_receiver().await;

    let events = [
        WebhookEvent::new("customerorder", &id, "CREATE"),
        WebhookEvent::new("customerorder", &id, "UPDATE").with_fields(&["state", "description"]),
        WebhookEvent::new("async", task_id, "PROCESSED"),
        WebhookEvent::new("counterparty", &cp_id, "DELETE").with_fields(&["name"]),
    ];
    let delivery = ms
        .send_webhook_events(&format!("{base}/hooks/ms?secret=s"), &events)
        .await
        .unwrap();
    task.abort();
    assert!(delivery.delivered());
    assert_eq!(delivery.attempts.len(), 1);

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "one POST for all four events");
    let (line, body) = &seen[0];
    assert!(
        line.starts_with(&format!(
            "POST /hooks/ms?secret=s&requestId={} ",
            delivery.request_id
        )),
        "{line}"
    );
    assert_eq!(*body, delivery.payload);
    assert_eq!(body["auditContext"]["meta"]["type"], "audit");
    assert!(body["auditContext"]["uid"].is_string());
    let moment = body["auditContext"]["moment"].as_str().unwrap();
    assert!(chrono::NaiveDateTime::parse_from_str(moment, "%Y-%m-%d %H:%M:%S").is_ok());

    let ev = body["events"].as_array().unwrap();
    assert_eq!(ev.len(), 4);
    let actions: Vec<&str> = ev.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["CREATE", "UPDATE", "PROCESSED", "DELETE"]);
    for e in ev {
        assert_eq!(e["accountId"], ms.account_id());
    }
    assert_eq!(
        ev[0]["meta"],
        json!({"type": "customerorder", "href": ms.order_href(&id)})
    );
    assert!(ev[0].get("updatedFields").is_none());
    assert_eq!(ev[1]["updatedFields"], json!(["state", "description"]));
    assert_eq!(
        ev[2]["meta"],
        json!({"type": "async", "href": format!("{}/async/{task_id}", ms.base_url())})
    );
    assert_eq!(ev[3]["meta"]["href"], ms.counterparty_href(&cp_id));
    // updatedFields belong to UPDATE only.
    assert!(ev[3].get("updatedFields").is_none());
}

fn position(ms: &FakeMoySklad, n: usize, price: u64, quantity: u64) -> Value {
    json!({
        "assortment": {"meta": {
            "href": format!("{}/entity/product/00000000-0000-4000-8000-{n:012}", ms.base_url()),
            "type": "product", "mediaType": "application/json"}},
        "quantity": quantity, "price": price, "vat": 20, "discount": 0,
    })
}

/// Source: MoySklad API 1.2 docs, <https://github.com/moysklad/api-remap-1.2-doc> (`order` = `md/documents/_customerOrder.md`,
/// `restrictions` = `md/_restrictions.md`): an order's `positions` (assortment meta, `quantity`, `price` in kopecks, `vat`, `discount`)
/// are given with the create or added by `POST …/customerorder/{id}/positions`, listed by `GET …/positions` (`meta.size`); an array of
/// more than 1,000 items in one request → 413, and further lines go through the positions resource. Fake's choice (U): the error code
/// (1044) of that 413; `sum` computed from the positions.
#[tokio::test]
async fn order_positions_create_add_and_cap() {
    let ms = FakeMoySklad::start(TOKEN).await.unwrap();
    let cp = new_counterparty(&ms, "A", "1", "a@b.ru").await;

    // Create with two positions.
    let mut body = order_body(&ms, &cp);
    body["positions"] = json!([position(&ms, 1, 10_000, 2), position(&ms, 2, 5_050, 1)]);
    let (st, o) = post(&ms, "/entity/customerorder", body).await;
    assert_eq!(st, 200, "{o}");
    let id = o["id"].as_str().unwrap().to_owned();
    assert_eq!(o["positions"]["meta"]["size"], 2);
    assert_eq!(
        o["positions"]["meta"]["href"],
        format!("{}/positions", ms.order_href(&id))
    );
    assert_eq!(o["sum"], 25_050.0);
    let (st, list) = get(&ms, &format!("/entity/customerorder/{id}/positions")).await;
    assert_eq!(st, 200, "{list}");
    assert_eq!(list["meta"]["size"], 2);
    let rows = list["rows"].as_array().unwrap();
    assert!(rows.iter().all(|r| r["id"].is_string()));
    assert_eq!(rows[0]["price"], 10_000);
    assert_eq!(rows[1]["assortment"]["meta"]["type"], "product");

    // Add three more through the positions resource: answered as an array, appended in order.
    let positions_path = format!("/entity/customerorder/{id}/positions");
    let added: Vec<Value> = (3..=5).map(|n| position(&ms, n, 100, 1)).collect();
    let (st, rows) = post(&ms, &positions_path, json!(added)).await;
    assert_eq!(st, 200, "{rows}");
    assert_eq!(rows.as_array().unwrap().len(), 3);
    assert!(rows[0]["id"].is_string());
    let stored = ms.order_positions(&id);
    assert_eq!(stored.len(), 5);
    assert_eq!(stored[4]["assortment"], added[2]["assortment"]);
    let (_, got) = get(&ms, &format!("/entity/customerorder/{id}")).await;
    assert_eq!(got["positions"]["meta"]["size"], 5);
    assert_eq!(got["sum"], 25_350.0);

    // 1,001 in one request → 413 with MoySklad's error body; nothing added.
    let too_many: Vec<Value> = (0..1001).map(|n| position(&ms, n, 1, 1)).collect();
    let (st, e) = post(&ms, &positions_path, json!(too_many)).await;
    assert_eq!(st, 413, "{e}");
    assert!(e["errors"][0]["error"].is_string(), "{e}");
    assert_eq!(e["errors"][0]["code"], 1044);
    assert_eq!(e["errors"][0]["parameter"], "positions");
    assert_eq!(ms.order_positions(&id).len(), 5);
    // The same cap on create: no order is made.
    let orders_before = ms.orders().len();
    let mut body = order_body(&ms, &cp);
    body["positions"] = json!(too_many);
    let (st, e) = post(&ms, "/entity/customerorder", body).await;
    assert_eq!(st, 413, "{e}");
    assert_eq!(e["errors"][0]["code"], 1044);
    assert_eq!(ms.orders().len(), orders_before);

    // The cap is per request: exactly 1,000 more are accepted, the order then holds 1,005.
    let thousand: Vec<Value> = (0..1000).map(|n| position(&ms, n, 1, 1)).collect();
    let (st, rows) = post(&ms, &positions_path, json!(thousand)).await;
    assert_eq!(st, 200);
    assert_eq!(rows.as_array().unwrap().len(), 1000);
    let (_, list) = get(
        &ms,
        &format!("/entity/customerorder/{id}/positions?limit=10"),
    )
    .await;
    assert_eq!(list["meta"]["size"], 1005);
    assert_eq!(list["rows"].as_array().unwrap().len(), 10);

    // An unknown order → 404, code 1021.
    let (st, e) = post(
        &ms,
        "/entity/customerorder/00000000-0000-4000-8000-000000000000/positions",
        json!([position(&ms, 1, 1, 1)]),
    )
    .await;
    assert_eq!(st, 404, "{e}");
    assert_eq!(e["errors"][0]["code"], 1021);
}
