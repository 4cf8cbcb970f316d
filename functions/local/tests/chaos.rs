//! Chaos through `crmbridge serve`: what vendors and operators really do to a
//! gateway, with 0 lost and 0 doubled checked at the fake vendors.
//!
//! - 2,000 orders, each delivered 1–4 times *at once* (vendors retry on
//!   their own clock), while the server is SIGKILLed three times and
//!   restarted on the same data directory; deliveries that die with it are
//!   retried by the sender, as a vendor would.
//! - A vendor that answers 429 with `Retry-After: 1e30`, and a poison
//!   template (`'x' * 100000000` in a loop): the server stays up, the runs
//!   fail with their reason, the poisoned automation is halted, the other
//!   automations keep working.
//!
//! The targets: Calltouch deals (keyed by orderNumber: a step sent again
//! after a kill is absorbed) and NetHunt records (no key: a step caught by
//! a kill mid-call stops as `needs_review` rather than being sent twice).
//!
//! `CRMBRIDGE_CHAOS_EVENTS` sets the number of orders (default 2000).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use common::{Server, client, deliver, post_json, runs_with, serve_with};
use crmbridge_fakes::vendors::calltouch::FakeCalltouch;
use crmbridge_fakes::vendors::nethunt::FakeNetHunt;
use serde_json::{Value, json};

const SHOPS: usize = 16;

fn start(data: &Path) -> Server {
    serve_with(data, 4, &["--allow-any-vendor-url"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_sigkills_lose_and_double_nothing() {
    let events: usize = std::env::var("CRMBRIDGE_CHAOS_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let calltouch = FakeCalltouch::start("ct-chaos", "777").await.unwrap();
    let nethunt = FakeNetHunt::start("owner@acme.test", "nh-chaos")
        .await
        .unwrap();
    nethunt.set_rate_limit(None);
    let deals_folder = nethunt.add_folder("Deals");
    nethunt.add_field(&deals_folder, "Name").unwrap();

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = start(&data);
    let key = server.owner_key.clone().unwrap();
    let b = server.base.clone();
    // The vendors' documented rate limits (5 requests/s per connection at
    // both) are honoured per connection: spread the orders over several
    // shops, each with its own pair of target connections.
    let mut hooks = Vec::new();
    for shop in 0..SHOPS {
        let source = post_json(
            &b,
            &key,
            "/v1/connections",
            json!({"app": "generic", "name": format!("Shop {shop}"),
            "settings": {"event_id_pointer": "/id", "kind": "order.created"}}),
        )
        .await;
        let ct = post_json(
            &b,
            &key,
            "/v1/connections",
            json!({"app": "calltouch", "name": format!("Calltouch {shop}"),
            "settings": {"site_id": "777", "base_url": calltouch.base_url()},
            "credentials": {"access_token": "ct-chaos"}}),
        )
        .await;
        let nh = post_json(
            &b,
            &key,
            "/v1/connections",
            json!({"app": "nethunt", "name": format!("NetHunt {shop}"),
            "settings": {"base_url": nethunt.base_url()},
            "credentials": {"email": "owner@acme.test", "api_key": "nh-chaos"}}),
        )
        .await;
        let trigger = json!({"connection": source["id"], "event": "generic.order.created"});
        post_json(&b, &key, "/v1/automations", json!({"id": format!("orders-to-calltouch-{shop}"), "name": "Orders → Calltouch",
            "trigger": trigger,
            "steps": [{"id": "deal", "action": "calltouch.deal.create", "connection": ct["id"],
                       "fields": {"order_number": "{{ event.id }}", "phone": "+79161234567", "status": "PENDING", "revenue": "{{ event.sum }}"}}]})).await;
        post_json(
            &b,
            &key,
            "/v1/automations",
            json!({"id": format!("orders-to-nethunt-{shop}"), "name": "Orders → NetHunt",
            "trigger": trigger,
            "steps": [{"id": "record", "action": "nethunt.record.create", "connection": nh["id"],
                       "fields": {"folder": "Deals", "fields": {"Name": "{{ event.id }}"}}}]}),
        )
        .await;
        hooks.push(source["webhook_path"].as_str().unwrap().to_owned());
    }
    let hooks = Arc::new(hooks);

    let started = Instant::now();
    let base = Arc::new(RwLock::new(server.base.clone()));
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let sender = {
        let base = Arc::clone(&base);
        let hooks = Arc::clone(&hooks);
        tokio::spawn(async move {
            let mut answers = BTreeMap::<u16, usize>::new();
            let ids: Vec<usize> = (0..events).collect();
            // 16 orders at a time, each with its 1–4 copies at once.
            for chunk in ids.chunks(16) {
                let mut copies = Vec::new();
                for &i in chunk {
                    let body = json!({"id": format!("O-{i}"), "sum": 100 + i}).to_string();
                    for _ in 0..(i * 7 % 4 + 1) {
                        let base = Arc::clone(&base);
                        let (hook_path, body) = (hooks[i % SHOPS].clone(), body.clone());
                        copies.push(tokio::spawn(async move {
                            deliver(&base, &hook_path, body).await
                        }));
                    }
                }
                for copy in copies {
                    *answers.entry(copy.await.unwrap()).or_default() += 1;
                }
                sent_tx.send(chunk[chunk.len() - 1] + 1).unwrap();
            }
            answers
        })
    };
    // Three SIGKILLs while orders arrive and runs are in their vendor calls.
    let mut kills = 0;
    let mut sent = 0;
    while let Some(count) = sent_rx.recv().await {
        sent = count;
        if kills < 3 && sent * 4 >= events * (kills + 1) {
            drop(server); // SIGKILL
            server = start(&data);
            *base.write().unwrap() = server.base.clone();
            kills += 1;
        }
    }
    let answers = sender.await.unwrap();
    let sending = started.elapsed();
    assert_eq!((sent, kills), (events, 3));
    assert_eq!(
        answers.get(&202).copied(),
        Some(events),
        "one accepted copy per order: {answers:?}"
    );

    // Every order ends as one deal and, at NetHunt, one record or a run
    // that needs review (a kill caught it mid-call).
    let deadline = Instant::now() + Duration::from_secs(300);
    let (deals, records, review) = loop {
        let deals = calltouch.deals();
        let records = nethunt.records(&deals_folder);
        let review = runs_with(&server.base, &key, "needs_review").await;
        let running = runs_with(&server.base, &key, "running").await;
        if deals.len() >= events && records.len() + review.len() >= events && running.is_empty() {
            break (deals, records, review);
        }
        assert!(
            Instant::now() < deadline,
            "not done: {} deals, {} records, {} needs review, {} running",
            deals.len(),
            records.len(),
            review.len(),
            running.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut per_order = BTreeMap::<String, usize>::new();
    for deal in &deals {
        *per_order
            .entry(deal["orderNumber"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_order.len(), events, "a deal for every order");
    assert!(
        per_order.values().all(|&n| n == 1),
        "a doubled deal: {:?}",
        per_order
            .iter()
            .filter(|(_, n)| **n > 1)
            .collect::<Vec<_>>()
    );
    let mut per_record = BTreeMap::<String, usize>::new();
    for record in &records {
        let name = record["fields"]["Name"]
            .as_str()
            .or_else(|| record["Name"].as_str())
            .unwrap()
            .to_owned();
        *per_record.entry(name).or_default() += 1;
    }
    assert!(
        per_record.values().all(|&n| n == 1),
        "a doubled NetHunt record"
    );
    for run in &review {
        assert!(
            run["automation"]
                .as_str()
                .unwrap()
                .starts_with("orders-to-nethunt-"),
            "{run}"
        );
    }
    // A run that needs review may or may not have its record (the kill came
    // after or before NetHunt committed): every order has one or the other.
    let mut covered: std::collections::BTreeSet<String> = per_record.keys().cloned().collect();
    for run in &review {
        let id = run["id"].as_str().unwrap();
        let detail: Value = client()
            .get(format!("{}/v1/runs/{id}", server.base))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        covered.insert(detail["event"]["data"]["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        covered.len(),
        events,
        "every order has a record or a run to review"
    );
    // A kill catches at most one step per dispatch worker (4) mid-call.
    assert!(
        review.len() <= 4 * kills,
        "{} runs need review after {kills} kills",
        review.len()
    );
    assert!(runs_with(&server.base, &key, "failed").await.is_empty());
    let health = client()
        .get(format!("{}/health", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    println!(
        "chaos: sending took {sending:?}, all done after {:?}",
        started.elapsed()
    );
    println!(
        "chaos: {events} orders, {} deliveries ({answers:?}), {kills} SIGKILLs, {} deals, {} NetHunt records, {} needs review",
        answers.values().sum::<usize>(),
        deals.len(),
        records.len(),
        review.len()
    );
}

/// Waits (with a deadline) until an automation is halted; returns it.
async fn halted(base: &str, key: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let record: Value = client()
            .get(format!("{base}/v1/automations/{id}"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if record["halted"].is_string() {
            return record;
        }
        assert!(Instant::now() < deadline, "{id} was never halted: {record}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A template that would allocate gigabytes, and a vendor that asks to be
/// left alone for 1e30 seconds: the process lives, each run fails with its
/// reason, both automations are halted after 3 failures, and a healthy
/// automation on the same events does all its work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_template_and_an_endless_retry_after_halt_their_automations_only() {
    let healthy_ct = FakeCalltouch::start("ct-ok", "777").await.unwrap();
    let stubborn_ct = FakeCalltouch::start("ct-wait", "778").await.unwrap();
    stubborn_ct.set_fault_rate(
        1.0,
        vec![crmbridge_fakes::Fault::RetryAfterText("1e30".into())],
        5,
    );
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve_with(
        &dir.path().join("data"),
        4,
        &[
            "--allow-any-vendor-url",
            "--retry-backoff",
            "10ms",
            "--max-attempts",
            "3",
            "--halt-after-failures",
            "3",
        ],
    );
    let key = server.owner_key.clone().unwrap();
    let b = server.base.clone();
    let source = post_json(
        &b,
        &key,
        "/v1/connections",
        json!({"app": "generic", "name": "Shop",
        "settings": {"event_id_pointer": "/id", "kind": "order.created"}}),
    )
    .await;
    let ok = post_json(
        &b,
        &key,
        "/v1/connections",
        json!({"app": "calltouch", "name": "Calltouch",
        "settings": {"site_id": "777", "base_url": healthy_ct.base_url()},
        "credentials": {"access_token": "ct-ok"}}),
    )
    .await;
    let stubborn = post_json(
        &b,
        &key,
        "/v1/connections",
        json!({"app": "calltouch", "name": "Calltouch (stubborn)",
        "settings": {"site_id": "778", "base_url": stubborn_ct.base_url()},
        "credentials": {"access_token": "ct-wait"}}),
    )
    .await;
    let trigger = json!({"connection": source["id"], "event": "generic.order.created"});
    let deal = |id: &str, connection: &Value, order_number: &str| {
        json!({"id": id, "name": id, "trigger": trigger,
               "steps": [{"id": "deal", "action": "calltouch.deal.create", "connection": connection["id"],
                          "fields": {"order_number": order_number, "phone": "+79161234567", "status": "PENDING", "revenue": 0}}]})
    };
    post_json(
        &b,
        &key,
        "/v1/automations",
        deal("healthy", &ok, "ok-{{ event.id }}"),
    )
    .await;
    post_json(
        &b,
        &key,
        "/v1/automations",
        deal(
            "poisoned",
            &ok,
            "{% for i in range(20) %}{{ 'x' * 100000000 }}{% endfor %}",
        ),
    )
    .await;
    post_json(
        &b,
        &key,
        "/v1/automations",
        deal("stubborn", &stubborn, "st-{{ event.id }}"),
    )
    .await;
    let hook = format!("{b}{}", source["webhook_path"].as_str().unwrap());
    for i in 0..5 {
        let status = client()
            .post(&hook)
            .json(&json!({"id": format!("P-{i}")}))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 202);
    }
    let poisoned = halted(&b, &key, "poisoned").await;
    let stubborn_record = halted(&b, &key, "stubborn").await;
    assert!(
        poisoned["health"]
            .as_str()
            .unwrap()
            .starts_with("halted: 3 runs in a row failed"),
        "{poisoned}"
    );
    assert!(
        stubborn_record["health"]
            .as_str()
            .unwrap()
            .starts_with("halted: 3 runs in a row failed"),
        "{stubborn_record}"
    );
    // Every event reaches a final state in all three automations.
    let deadline = Instant::now() + Duration::from_secs(120);
    let runs = loop {
        let all = common::runs(&server, &key).await;
        let settled = all.iter().filter(|r| r["status"] != "running").count();
        let failed_stubborn = all
            .iter()
            .filter(|r| r["automation"] == "stubborn" && r["status"] == "failed")
            .count();
        if all.len() == 15 && settled == 15 && failed_stubborn == 5 && healthy_ct.deals().len() == 5
        {
            break all;
        }
        assert!(Instant::now() < deadline, "runs never settled: {all:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let of = |id: &str| -> Vec<&Value> { runs.iter().filter(|r| r["automation"] == id).collect() };
    assert!(of("healthy").iter().all(|r| r["status"] == "succeeded"));
    for run in of("poisoned") {
        assert_eq!(run["status"], "failed", "{run}");
        let outcome = run["outcome"].as_str().unwrap();
        assert!(
            outcome.contains("limit") || outcome.contains("halted"),
            "{outcome}"
        );
    }
    for run in of("stubborn") {
        let outcome = run["outcome"].as_str().unwrap();
        assert!(
            outcome.contains("wait") || outcome.contains("halted"),
            "{outcome}"
        );
    }
    assert!(stubborn_ct.deals().is_empty());
    assert_eq!(
        healthy_ct.deals().len(),
        5,
        "only the healthy automation's deals"
    );
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server is alive"
    );
    let health = client().get(format!("{b}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    server.child.kill().unwrap();
}
