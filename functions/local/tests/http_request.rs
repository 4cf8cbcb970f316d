//! The generic outbound action through `crmbridge serve`: webhook JSON →
//! six fields mapped → a signed `http.request` POST, whose answer's id
//! names the record a second step PUTs to. Each order is delivered up to
//! three times at once while the server is SIGKILLed twice; the receiver
//! (which verifies every signature and the bearer credential) must see
//! one delivery per order, and every resent POST must carry the first
//! one's idempotency key, so a receiver that honours it drops the repeat
//! (the step says `on_unknown_outcome: resend`: this receiver does).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use common::{Server, deliver, post_json, runs_with, serve_with};
use crmbridge_connectors::standard_webhooks::SigningSecret;
use crmbridge_fakes::vendors::http::FakeReceiver;
use serde_json::{Value, json};

const ORDERS: usize = 300;
const WORKERS: usize = 4;

fn start(data: &std::path::Path) -> Server {
    serve_with(data, WORKERS, &["--allow-any-vendor-url"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_order_reaches_the_receiver_once_through_duplicates_and_kills() {
    let receiver = FakeReceiver::start().await.unwrap();
    let secret = SigningSecret::generate();
    receiver.require_signature(&secret).unwrap();
    receiver.require_authorization("Bearer out-token-77");

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = start(&data);
    let key = server.owner_key.clone().unwrap();
    let b = server.base.clone();
    let source = post_json(&b, &key, "/v1/connections", json!({"app": "generic", "name": "Shop",
        "settings": {"event_id_pointer": "/id", "kind": "order.created"}})).await;
    // The credential needs a base URL to stay under.
    let refused = common::client()
        .post(format!("{b}/v1/connections"))
        .bearer_auth(&key)
        .json(&json!({"app": "http", "name": "Out", "settings": {},
            "credentials": {"authorization": "Bearer out-token-77"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["field"], "credentials.authorization", "{body}");
    assert!(!body.to_string().contains("out-token-77"), "{body}");
    let out = post_json(&b, &key, "/v1/connections", json!({"app": "http", "name": "Out",
        "settings": {"base_url": receiver.base_url(), "signature": "standard_webhooks",
                     "requests_per_second": 1000, "parallel": 16},
        "credentials": {"authorization": "Bearer out-token-77", "signing_secret": secret}})).await;
    assert!(!out.to_string().contains("out-token-77"), "{out}");
    let trigger = json!({"connection": source["id"], "event": "generic.order.created"});
    post_json(&b, &key, "/v1/automations", json!({"id": "orders-out", "name": "Orders → endpoint",
        "trigger": trigger,
        "steps": [
            {"id": "notify", "action": "http.request.send", "connection": out["id"],
             "fields": {"url": "/orders", "on_unknown_outcome": "resend", "json": {
                "order": "{{ event.id }}", "customer": "{{ event.customer.name }}",
                "phone": "{{ event.customer.phone }}", "email": "{{ event.customer.email | lower }}",
                "sum": "{{ event.sum }}", "currency": "RUB"}}},
            {"id": "confirm", "action": "http.request.send", "connection": out["id"],
             "fields": {"method": "PUT", "url": "/orders/{{ steps.notify.id }}/status",
                        "json": {"order": "{{ event.id }}", "status": "received"}}}
        ]})).await;
    let hook = source["webhook_path"].as_str().unwrap().to_owned();

    let base = Arc::new(RwLock::new(server.base.clone()));
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let sender = {
        let base = Arc::clone(&base);
        tokio::spawn(async move {
            let mut accepted = 0;
            let ids: Vec<usize> = (0..ORDERS).collect();
            for chunk in ids.chunks(10) {
                let mut copies = Vec::new();
                for &i in chunk {
                    let body = json!({"id": format!("O-{i}"), "sum": 100 + i,
                        "customer": {"name": format!("Buyer {i}"), "phone": "+79161234567",
                                     "email": format!("Buyer{i}@Example.com")}})
                    .to_string();
                    for _ in 0..(i % 3 + 1) {
                        let (base, hook, body) = (Arc::clone(&base), hook.clone(), body.clone());
                        copies.push(tokio::spawn(async move { deliver(&base, &hook, body).await }));
                    }
                }
                for copy in copies {
                    accepted += usize::from(copy.await.unwrap() == 202);
                }
                sent_tx.send(chunk[chunk.len() - 1] + 1).unwrap();
            }
            accepted
        })
    };
    let mut kills = 0;
    while let Some(sent) = sent_rx.recv().await {
        if kills < 2 && sent * 3 >= ORDERS * (kills + 1) {
            drop(server); // SIGKILL, mid-stream
            server = start(&data);
            *base.write().unwrap() = server.base.clone();
            kills += 1;
        }
    }
    let accepted = sender.await.unwrap();
    assert_eq!(kills, 2);
    assert!(accepted >= ORDERS, "every order was accepted at least once: {accepted}");

    // Wait until each order's status update arrived (or a run stopped).
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let puts = receiver
            .requests()
            .iter()
            .filter(|r| r.method == "PUT" && r.status == Some(200))
            .count();
        let running = runs_with(&server.base, &key, "running").await;
        if puts >= ORDERS && running.is_empty() {
            break;
        }
        // A run that stopped for good fails the test below, with its reason.
        if !runs_with(&server.base, &key, "failed").await.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let runs = common::runs(&server, &key).await;
            panic!(
                "not done: {puts} status updates, {} runs running, {} requests at the receiver; runs: {:#?}",
                running.len(),
                receiver.requests().len(),
                runs.iter().take(3).collect::<Vec<_>>()
            );
        }
        common::pause().await;
    }
    for status in ["failed", "needs_review"] {
        let runs = runs_with(&server.base, &key, status).await;
        assert!(runs.is_empty(), "{status}: {runs:#?}");
    }

    // One delivery per order at the receiver, each with the six fields.
    let deliveries = receiver.deliveries();
    let mut per_order = BTreeMap::<String, usize>::new();
    for delivery in &deliveries {
        *per_order.entry(delivery["order"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(per_order.len(), ORDERS, "an order was lost");
    assert!(per_order.values().all(|&n| n == 1), "an order was delivered twice");
    let sample = deliveries.iter().find(|d| d["order"] == "O-7").unwrap();
    assert_eq!(
        sample,
        &json!({"order": "O-7", "customer": "Buyer 7", "phone": "+79161234567",
                "email": "buyer7@example.com", "sum": 107, "currency": "RUB"})
    );

    // A POST sent more than once was sent again only by a run a kill
    // interrupted, and always under the first attempt's key.
    let requests = receiver.requests();
    let posts: Vec<_> = requests.iter().filter(|r| r.method == "POST").collect();
    let mut keys_per_order = BTreeMap::<String, BTreeSet<String>>::new();
    for post in &posts {
        let order = post.json().unwrap()["order"].as_str().unwrap().to_owned();
        let key = post.header("idempotency-key").unwrap().to_owned();
        assert_eq!(post.header("webhook-id"), Some(key.as_str()));
        keys_per_order.entry(order).or_default().insert(key);
    }
    assert!(
        keys_per_order.values().all(|keys| keys.len() == 1),
        "an order was sent under two keys (two runs): {:?}",
        keys_per_order.iter().filter(|(_, k)| k.len() > 1).collect::<Vec<_>>()
    );
    let resent = posts.len() - ORDERS;
    assert!(resent <= WORKERS * kills, "{resent} POSTs resent after {kills} kills");
    assert!(
        requests.iter().all(|r| r.status != Some(401)),
        "every request was signed and authorised"
    );

    // The second step used the id the receiver gave the first: each
    // order's status update went to its own record.
    let mut updated = BTreeSet::new();
    for put in requests.iter().filter(|r| r.method == "PUT") {
        let order = put.json().unwrap()["order"].as_str().unwrap().to_owned();
        let record = put.path.strip_prefix("/orders/").and_then(|p| p.strip_suffix("/status"));
        let record = record.unwrap_or_else(|| panic!("PUT to {}", put.path));
        let number: usize = record.strip_prefix("rcv_").unwrap().parse().unwrap();
        assert_eq!(deliveries[number - 1]["order"], order.as_str(), "{}", put.path);
        updated.insert(order);
    }
    assert_eq!(updated.len(), ORDERS);
    println!(
        "http.request: {ORDERS} orders, {} POSTs ({resent} resent under their key), {kills} kills",
        posts.len()
    );
}
