//! HubSpot webhooks through `crmbridge serve`, from the HubSpot fake: every
//! write in HubSpot comes as a signed JSON array; a wrong or stale signature
//! is a 401 and nothing is accepted; a delivery with one event that cannot
//! be read accepts the others and reports the bad one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{client, serve_with};
use crmbridge_fakes::oauth::{FakeOAuth, OAuthConfig};
use crmbridge_fakes::vendors::hubspot::{FakeHubSpot, signature_v3};
use serde_json::{Value, json};

const CLIENT_ID: &str = "hs-client";
const CLIENT_SECRET: &str = "hs-client-secret-91";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_deliveries_are_accepted_and_forged_or_stale_ones_refused() {
    let accounts = FakeOAuth::start(OAuthConfig::hubspot(CLIENT_ID, CLIENT_SECRET))
        .await
        .unwrap();
    let hubspot = FakeHubSpot::start(accounts.token_checker(), CLIENT_SECRET)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = serve_with(&dir.path().join("data"), 2, &["--allow-any-vendor-url"]);
    let key = server.owner_key.clone().unwrap();
    let connection: Value = client()
        .post(format!("{}/v1/connections", server.base))
        .bearer_auth(&key)
        .json(&json!({
            "app": "hubspot", "name": "HubSpot",
            "settings": {"base_url": hubspot.base_url(), "oauth_url": accounts.base_url()},
            "credentials": {
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "refresh_token": accounts.issue_refresh_token(),
            },
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        !connection.to_string().contains(CLIENT_SECRET),
        "{connection}"
    );
    let hook = format!(
        "{}{}",
        server.base,
        connection["webhook_path"].as_str().unwrap()
    );
    hubspot.subscribe(&hook);

    // A person creates a contact and edits it in HubSpot: one signed
    // delivery, every event accepted.
    let id = hubspot
        .create_as_user(
            "contacts",
            &[("email", "ann@example.com"), ("firstname", "Ann")],
        )
        .unwrap();
    hubspot
        .edit_as_user("contacts", &id, &[("phone", "+380671234567")])
        .unwrap();
    let deliveries = hubspot.deliver_webhooks().await;
    assert!(!deliveries.is_empty());
    for delivery in &deliveries {
        assert_eq!(delivery.status, Some(200), "{delivery:?}");
    }

    // Signed with another secret, or ten minutes old: 401, nothing taken.
    hubspot
        .edit_as_user("contacts", &id, &[("firstname", "Anna")])
        .unwrap();
    hubspot.sign_with("not-the-client-secret");
    for delivery in hubspot.deliver_webhooks().await {
        assert_eq!(delivery.status, Some(401), "{delivery:?}");
    }
    hubspot.sign_with(CLIENT_SECRET);
    hubspot.set_stale_timestamps(true);
    hubspot
        .edit_as_user("contacts", &id, &[("lastname", "Lee")])
        .unwrap();
    let stale = hubspot.deliver_webhooks().await;
    assert!(!stale.is_empty());
    for delivery in &stale {
        assert_eq!(delivery.status, Some(401), "{delivery:?}");
    }
    hubspot.set_stale_timestamps(false);

    // One event of three cannot be read: the two others are accepted, the
    // bad one is reported as such.
    let body = json!([
        {"eventId": 91, "subscriptionType": "contact.propertyChange", "objectId": id.parse::<u64>().unwrap(),
         "occurredAt": 1_764_000_000_000_i64, "propertyName": "phone", "propertyValue": "+380671234568",
         "changeSource": "CRM_UI", "portalId": 1, "attemptNumber": 0},
        {"eventId": 92, "subscriptionType": "contact.propertyChange", "objectId": "not-a-number",
         "occurredAt": 1_764_000_000_000_i64},
        {"eventId": 93, "subscriptionType": "contact.deletion", "objectId": id.parse::<u64>().unwrap(),
         "occurredAt": 1_764_000_000_001_i64, "portalId": 1, "attemptNumber": 0},
    ])
    .to_string();
    let now = chrono::Utc::now().timestamp_millis().to_string();
    let send = |signature: String, timestamp: String, body: String| {
        client()
            .post(&hook)
            .header("content-type", "application/json")
            .header("x-hubspot-signature-v3", signature)
            .header("x-hubspot-request-timestamp", timestamp)
            .body(body)
            .send()
    };
    let answer = send(
        signature_v3(CLIENT_SECRET, "POST", &hook, body.as_bytes(), &now),
        now.clone(),
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(answer.status(), 200);
    let accepted: Value = answer.json().await.unwrap();
    assert_eq!(
        accepted["event_ids"].as_array().unwrap().len(),
        3,
        "{accepted}"
    );
    // The same delivery with its body changed after signing: refused.
    let tampered = body.replace("+380671234568", "+380671234569");
    let answer = send(
        signature_v3(CLIENT_SECRET, "POST", &hook, body.as_bytes(), &now),
        now,
        tampered,
    )
    .await
    .unwrap();
    assert_eq!(answer.status(), 401);
    let refused: Value = answer.json().await.unwrap();
    assert!(
        refused.to_string().contains("x-hubspot-signature-v3"),
        "{refused}"
    );
    assert!(!refused.to_string().contains(CLIENT_SECRET));

    // A refused delivery accepted nothing: the same events, then sent
    // with the right signature, are new, not duplicates.
    let fresh = json!([{"eventId": 94, "subscriptionType": "contact.propertyChange",
        "objectId": id.parse::<u64>().unwrap(), "occurredAt": 1_764_000_000_002_i64,
        "propertyName": "jobtitle", "propertyValue": "CTO", "changeSource": "CRM_UI",
        "portalId": 1, "attemptNumber": 0}])
    .to_string();
    let now = chrono::Utc::now().timestamp_millis().to_string();
    let forged = send(
        signature_v3(
            "not-the-client-secret",
            "POST",
            &hook,
            fresh.as_bytes(),
            &now,
        ),
        now.clone(),
        fresh.clone(),
    )
    .await
    .unwrap();
    assert_eq!(forged.status(), 401);
    let genuine = send(
        signature_v3(CLIENT_SECRET, "POST", &hook, fresh.as_bytes(), &now),
        now,
        fresh,
    )
    .await
    .unwrap();
    assert_eq!(genuine.status(), 200);
    let genuine: Value = genuine.json().await.unwrap();
    assert_eq!(genuine["status"], "accepted", "{genuine}");
}

/// Waits (with a deadline) until `n` runs exist and none is running.
async fn settled(server: &common::Server, key: &str, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let all = common::runs(server, key).await;
        if all.len() >= n
            && all
                .iter()
                .all(|r| r["status"] != "running" && r["status"] != "failed")
        {
            return all;
        }
        assert!(std::time::Instant::now() < deadline, "{all:#?}");
        common::pause().await;
    }
}

fn count(runs: &[Value], status: &str) -> usize {
    runs.iter().filter(|r| r["status"] == status).count()
}

/// An automation that writes back to the record whose change triggered it
/// would loop forever if its own write came back as a change: HubSpot
/// reports every write, ours included. The echo is recognised and starts
/// no run, while a person's edit right after still flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_own_writes_do_not_come_back_and_a_persons_edit_does() {
    let accounts = FakeOAuth::start(OAuthConfig::hubspot(CLIENT_ID, CLIENT_SECRET))
        .await
        .unwrap();
    let hubspot = FakeHubSpot::start(accounts.token_checker(), CLIENT_SECRET)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = serve_with(&dir.path().join("data"), 2, &["--allow-any-vendor-url"]);
    let key = server.owner_key.clone().unwrap();
    let post = |path: &str, body: Value| {
        client()
            .post(format!("{}{path}", server.base))
            .bearer_auth(&key)
            .json(&body)
            .send()
    };
    let connection: Value = post(
        "/v1/connections",
        json!({
            "app": "hubspot", "name": "HubSpot",
            "settings": {"base_url": hubspot.base_url(), "oauth_url": accounts.base_url()},
            "credentials": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                            "refresh_token": accounts.issue_refresh_token()},
        }),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let cid = connection["id"].as_str().unwrap();
    let saved = post(
        "/v1/automations",
        json!({
            "id": "mark-changes", "name": "mark every change on the contact",
            "trigger": {"connection": cid, "event": "hubspot.contact.changed"},
            "steps": [{"id": "mark", "action": "hubspot.contact.update", "connection": cid,
                       "target": {"id": "{{ event.id }}"},
                       "fields": {"job_title": "seen {{ event.property }}={{ event.value }}"}}],
        }),
    )
    .await
    .unwrap();
    assert_eq!(saved.status(), 201, "{}", saved.text().await.unwrap());
    hubspot.subscribe(&format!(
        "{}{}",
        server.base,
        connection["webhook_path"].as_str().unwrap()
    ));

    // A person makes a contact: its creation (no automation) and its
    // e-mail (one run, which writes the job title).
    let id = hubspot
        .create_as_user("contacts", &[("email", "ann@example.com")])
        .unwrap();
    for delivery in hubspot.deliver_webhooks().await {
        assert_eq!(delivery.status, Some(200), "{delivery:?}");
    }
    let runs = settled(&server, &key, 2).await;
    assert_eq!(count(&runs, "succeeded"), 1, "{runs:#?}");
    // HubSpot reports our job title write: an echo, not a run.
    let echoes = hubspot.deliver_webhooks().await;
    assert_eq!(echoes.len(), 1, "our write was reported: {echoes:?}");
    let runs = settled(&server, &key, 3).await;
    let filtered: Vec<&Value> = runs.iter().filter(|r| r["status"] == "filtered").collect();
    assert_eq!(filtered.len(), 1, "{runs:#?}");
    assert!(
        filtered[0]["outcome"].as_str().unwrap().contains("echo"),
        "{filtered:#?}"
    );
    assert!(
        hubspot.pending_webhooks().is_empty(),
        "nothing more to send"
    );

    // A person sets the job title right after: it flows (one more run),
    // and that run's own write is again an echo.
    hubspot
        .edit_as_user("contacts", &id, &[("jobtitle", "manual")])
        .unwrap();
    hubspot.deliver_webhooks().await;
    let runs = settled(&server, &key, 4).await;
    assert_eq!(count(&runs, "succeeded"), 2, "{runs:#?}");
    hubspot.deliver_webhooks().await;
    let runs = settled(&server, &key, 5).await;
    assert_eq!(count(&runs, "filtered"), 2, "{runs:#?}");
    assert!(hubspot.pending_webhooks().is_empty());
    assert_eq!(
        hubspot.contact(&id).unwrap()["properties"]["jobtitle"],
        "seen jobtitle=manual"
    );
}
