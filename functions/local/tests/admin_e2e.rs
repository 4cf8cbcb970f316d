//! The admin API as a new user meets it, through the real `crmbridge serve`
//! binary and the fake vendor APIs: the first start's owner key, a tenant
//! key per role, connections, an automation from a recipe, a webhook, the
//! run log, a failed run fixed by updating a connection and replayed
//! (steps that had succeeded are not repeated), a replay of every failed
//! run of an automation, and a second tenant that sees nothing of the first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::{Duration, Instant};

use common::{Server, client, pause, serve_with};
use crmbridge_fakes::vendors::calltouch::{FakeCalltouch, WebhookMethod, send_call_webhook};
use crmbridge_fakes::vendors::moysklad::FakeMoySklad;
use reqwest::Method;
use serde_json::{Value, json};

async fn api(
    server: &Server,
    method: Method,
    key: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client()
        .request(method, format!("{}{path}", server.base))
        .bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn call(hook: &str, call_id: &str, phone: &str) -> u16 {
    let params = [
        ("callId", call_id),
        ("callerphone", phone),
        ("phonenumber", "74950000000"),
        ("utm_source", "yandex"),
    ];
    send_call_webhook(hook, &params, WebhookMethod::Post)
        .await
        .unwrap()
}

/// Waits for the runs of an automation to settle (none running) and to be
/// at least `n`; returns them, newest first.
async fn settled(server: &Server, key: &str, automation: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, page) = api(
            server,
            Method::GET,
            key,
            &format!("/v1/runs?automation={automation}&limit=200"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().unwrap().clone();
        if items.len() >= n && items.iter().all(|r| r["status"] != "running") {
            return items;
        }
        assert!(Instant::now() < deadline, "runs did not settle: {items:#?}");
        pause().await;
    }
}

fn deal_posts(calltouch: &FakeCalltouch) -> usize {
    calltouch
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count()
}

const AUTOMATION: &str = "calltouch-call-to-moysklad";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_user_sets_up_an_integration_and_replays_a_failed_run() {
    let calltouch = FakeCalltouch::start("ct-token-1", "12345").await.unwrap();
    let moysklad = FakeMoySklad::start("ms-token-1").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = serve_with(&dir.path().join("data"), 2, &["--allow-any-vendor-url"]);
    let started = chrono::Utc::now();

    // 1. Bootstrap: the first start printed an owner key.
    let owner = server
        .owner_key
        .clone()
        .expect("first start prints the owner key");
    let (status, tenant) = api(&server, Method::GET, &owner, "/v1/tenant", None).await;
    assert_eq!(status, 200, "{tenant}");
    assert_eq!(tenant["role"], "owner");
    let tenant_id = tenant["id"].as_str().unwrap().to_owned();

    // 2. Keys: an admin key for the setup, a viewer key for the run log.
    let (status, admin) = api(
        &server,
        Method::POST,
        &owner,
        "/v1/keys",
        Some(json!({"role": "admin"})),
    )
    .await;
    assert_eq!(status, 201, "{admin}");
    assert_eq!(admin["tenant"], tenant_id.as_str());
    let admin_key = admin["key"].as_str().unwrap().to_owned();
    let (status, viewer) = api(
        &server,
        Method::POST,
        &owner,
        "/v1/keys",
        Some(json!({"role": "viewer"})),
    )
    .await;
    assert_eq!(status, 201, "{viewer}");
    let viewer_key = viewer["key"].as_str().unwrap().to_owned();
    let (status, keys) = api(&server, Method::GET, &owner, "/v1/keys", None).await;
    assert_eq!(status, 200);
    assert_eq!(keys["items"].as_array().unwrap().len(), 3, "{keys}");
    let listed = keys.to_string();
    assert!(
        !listed.contains(&admin_key) && !listed.contains(&viewer_key),
        "keys are shown once"
    );
    // Admins do not manage keys.
    let (status, body) = api(&server, Method::GET, &admin_key, "/v1/keys", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );

    // 3. Connections; MoySklad's token is mistyped.
    let (status, ct) = api(
        &server,
        Method::POST,
        &admin_key,
        "/v1/connections",
        Some(json!({"app": "calltouch", "name": "Calltouch", "settings": {"site_id": "12345", "base_url": calltouch.base_url(), "default_region": "RU"},
                    "credentials": {"access_token": "ct-token-1"}})),
    )
    .await;
    assert_eq!(status, 201, "{ct}");
    let (status, ms) = api(
        &server,
        Method::POST,
        &admin_key,
        "/v1/connections",
        Some(json!({"app": "moysklad", "name": "МойСклад", "settings": {"base_url": moysklad.base_url(), "default_region": "RU"},
                    "credentials": {"token": "ms-token-typo"}})),
    )
    .await;
    assert_eq!(status, 201, "{ms}");
    assert_eq!(ms["credentials_set"], json!(["token"]));
    assert!(
        !ms.to_string().contains("ms-token-typo"),
        "credentials are write-only"
    );
    let ms_id = ms["id"].as_str().unwrap().to_owned();
    let hook = ct["webhook_url"].as_str().unwrap().to_owned();
    assert!(hook.starts_with(&server.base) && hook.contains(ct["id"].as_str().unwrap()));

    // 4. The automations of a recipe, with the connections filled in.
    let (status, created) = api(
        &server,
        Method::POST,
        &admin_key,
        "/v1/recipes/calltouch-moysklad/instantiate",
        Some(json!({"connections": {"calltouch": ct["id"], "moysklad": ms_id}})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let (status, automation) = api(
        &server,
        Method::GET,
        &viewer_key,
        &format!("/v1/automations/{AUTOMATION}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{automation}");
    assert_eq!(automation["health"], Value::Null);

    // 5. A call: the deal is created in Calltouch, then MoySklad refuses the token.
    assert_eq!(call(&hook, "5001", "79161234567").await, 202);
    let runs = settled(&server, &viewer_key, AUTOMATION, 1).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["status"], "failed", "{runs:#?}");
    let run_id = runs[0]["id"].as_str().unwrap().to_owned();

    // 6. The run log: filters, and the run with each step.
    let (status, failed) = api(
        &server,
        Method::GET,
        &viewer_key,
        &format!(
            "/v1/runs?automation={AUTOMATION}&status=failed&since={}",
            started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        None,
    )
    .await;
    assert_eq!(status, 200, "{failed}");
    assert_eq!(failed["items"].as_array().unwrap().len(), 1);
    let (_, none) = api(
        &server,
        Method::GET,
        &viewer_key,
        "/v1/runs?status=succeeded",
        None,
    )
    .await;
    assert!(none["items"].as_array().unwrap().is_empty(), "{none}");
    let (_, later) = api(
        &server,
        Method::GET,
        &viewer_key,
        "/v1/runs?until=2000-01-01T00:00:00Z",
        None,
    )
    .await;
    assert!(later["items"].as_array().unwrap().is_empty(), "{later}");
    let (status, run) = api(
        &server,
        Method::GET,
        &viewer_key,
        &format!("/v1/runs/{run_id}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["event"]["data"]["call_id"], "5001", "{run}");
    let steps = run["steps"].as_array().unwrap();
    assert_eq!(steps[0]["id"], "deal");
    assert_eq!(steps[0]["status"], "succeeded");
    assert!(steps[0]["request"].is_object());
    assert!(steps[0]["response_status"].is_u64());
    let failed_step = steps
        .iter()
        .find(|s| s["status"] == "failed")
        .expect("a failed step");
    assert_eq!(failed_step["response_status"], 401, "{failed_step}");
    assert!(failed_step["error"].is_string());
    assert_eq!(calltouch.deals().len(), 1);
    assert!(moysklad.orders().is_empty());
    let deal_posts_before = deal_posts(&calltouch);

    // A viewer may read but not replay.
    let (status, body) = api(
        &server,
        Method::POST,
        &viewer_key,
        &format!("/v1/runs/{run_id}/replay"),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );

    // 7. Fix the token (the webhook URL does not change), then replay.
    let (status, patched) = api(
        &server,
        Method::PATCH,
        &admin_key,
        &format!("/v1/connections/{ms_id}"),
        Some(json!({"credentials": {"token": "ms-token-1"}, "name": "МойСклад (main)"})),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["name"], "МойСклад (main)");
    assert_eq!(patched["credentials_set"], json!(["token"]));
    assert_eq!(patched["webhook_url"], ms["webhook_url"]);
    assert!(!patched.to_string().contains("ms-token-1"));

    let (status, replayed) = api(
        &server,
        Method::POST,
        &admin_key,
        &format!("/v1/runs/{run_id}/replay"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(replayed["status"], "succeeded", "{replayed:#?}");
    assert_eq!(replayed["attempts"], 2);
    let steps = replayed["steps"].as_array().unwrap();
    assert!(
        steps.iter().all(|s| s["status"] == "succeeded"),
        "{steps:#?}"
    );
    // The deal step was not repeated: no new POST to Calltouch, one deal.
    assert_eq!(deal_posts(&calltouch), deal_posts_before);
    assert_eq!(calltouch.deals().len(), 1);
    assert_eq!(moysklad.counterparties().len(), 1);
    assert_eq!(moysklad.orders().len(), 1);
    // A succeeded run is not replayed again.
    let (status, body) = api(
        &server,
        Method::POST,
        &admin_key,
        &format!("/v1/runs/{run_id}/replay"),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    assert_eq!(moysklad.orders().len(), 1);

    // 8. Two more calls fail (token broken again); fix it and replay every
    //    failed run of the automation since the start.
    let (status, _) = api(
        &server,
        Method::PATCH,
        &admin_key,
        &format!("/v1/connections/{ms_id}"),
        Some(json!({"credentials": {"token": "expired"}})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(call(&hook, "5002", "79160000002").await, 202);
    assert_eq!(call(&hook, "5003", "79160000003").await, 202);
    let runs = settled(&server, &viewer_key, AUTOMATION, 3).await;
    assert_eq!(
        runs.iter().filter(|r| r["status"] == "failed").count(),
        2,
        "{runs:#?}"
    );
    assert_eq!(calltouch.deals().len(), 3);
    let (status, _) = api(
        &server,
        Method::PATCH,
        &admin_key,
        &format!("/v1/connections/{ms_id}"),
        Some(json!({"credentials": {"token": "ms-token-1"}})),
    )
    .await;
    assert_eq!(status, 200);
    let posts_before = deal_posts(&calltouch);
    let (status, report) = api(
        &server,
        Method::POST,
        &admin_key,
        &format!("/v1/automations/{AUTOMATION}/replay"),
        Some(json!({"since": started.to_rfc3339()})),
    )
    .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["more"], false);
    let replayed = report["replayed"].as_array().unwrap();
    assert_eq!(replayed.len(), 2, "{report}");
    assert!(
        replayed.iter().all(|r| r["status"] == "succeeded"),
        "{report}"
    );
    assert_eq!(deal_posts(&calltouch), posts_before);
    assert_eq!(calltouch.deals().len(), 3);
    assert_eq!(moysklad.orders().len(), 3);
    let (_, all) = api(
        &server,
        Method::GET,
        &viewer_key,
        &format!("/v1/runs?automation={AUTOMATION}&status=succeeded"),
        None,
    )
    .await;
    assert_eq!(all["items"].as_array().unwrap().len(), 3, "{all}");

    // 9. A second tenant, created by the operator's owner key, sees nothing
    //    of the first, and the first's owner key gets nothing of it.
    let (status, second) = api(
        &server,
        Method::POST,
        &owner,
        "/v1/tenants",
        Some(json!({"name": "Second company"})),
    )
    .await;
    assert_eq!(status, 201, "{second}");
    let other = second["owner_key"]["key"].as_str().unwrap().to_owned();
    assert_ne!(second["tenant"]["id"], tenant_id.as_str());
    let (_, mine) = api(&server, Method::GET, &other, "/v1/tenant", None).await;
    assert_eq!(mine["name"], "Second company");
    let (_, conns) = api(&server, Method::GET, &other, "/v1/connections", None).await;
    assert!(conns["items"].as_array().unwrap().is_empty());
    let (_, their_runs) = api(&server, Method::GET, &other, "/v1/runs", None).await;
    assert!(their_runs["items"].as_array().unwrap().is_empty());
    for (method, path) in [
        (Method::GET, format!("/v1/runs/{run_id}")),
        (Method::POST, format!("/v1/runs/{run_id}/replay")),
        (Method::GET, format!("/v1/connections/{ms_id}")),
        (Method::GET, format!("/v1/automations/{AUTOMATION}")),
    ] {
        let (status, body) = api(&server, method.clone(), &other, &path, None).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
    }
    // A tenant other than the operator's cannot create tenants.
    let (status, _) = api(
        &server,
        Method::POST,
        &other,
        "/v1/tenants",
        Some(json!({"name": "Third"})),
    )
    .await;
    assert_eq!(status, 403);

    // 10. Revoking a key takes effect at once.
    let (status, _) = api(
        &server,
        Method::DELETE,
        &owner,
        &format!("/v1/keys/{}", viewer["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, body) = api(&server, Method::GET, &viewer_key, "/v1/runs", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );

    // 11. The OpenAPI document is served.
    let doc: Value = client()
        .get(format!("{}/v1/openapi.json", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"]["/v1/runs/{id}/replay"]["post"].is_object());
}
