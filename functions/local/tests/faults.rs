//! Faults: the Calltouch → MoySklad bundle under a 30% failure rate at both
//! vendors (5xx, 429 with the vendor's retry header, and answers slower than
//! the client's timeout — after the write was committed). Every call must
//! end with exactly one deal, one counterparty per phone and one order.
//!
//! `CRMBRIDGE_FAULT_TEST_CALLS` sets the number of calls (default 1000).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{client, runs, serve_with};
use crmbridge_fakes::Fault;
use crmbridge_fakes::vendors::calltouch::FakeCalltouch;
use crmbridge_fakes::vendors::moysklad::FakeMoySklad;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_percent_vendor_failures_lose_and_double_nothing() {
    let calls: usize = std::env::var("CRMBRIDGE_FAULT_TEST_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let phones = (calls / 3).max(1);
    let calltouch = FakeCalltouch::start("ct-token-f", "999").await.unwrap();
    let moysklad = FakeMoySklad::start("ms-token-f").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = serve_with(&dir.path().join("data"), 4, &["--allow-any-vendor-url"]);
    let key = server.owner_key.clone().unwrap();
    let http = client();
    let post = |path: &str, body: Value| {
        http.post(format!("{}{path}", server.base))
            .bearer_auth(&key)
            .json(&body)
            .send()
    };
    // A short per-attempt timeout, so the fakes' slow answers are timeouts.
    let ct: Value = post(
        "/v1/connections",
        json!({"app": "calltouch", "name": "Calltouch",
               "settings": {"site_id": "999", "base_url": calltouch.base_url(), "default_region": "RU", "timeout_ms": 300},
               "credentials": {"access_token": "ct-token-f"}}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let ms: Value = post(
        "/v1/connections",
        json!({"app": "moysklad", "name": "МойСклад",
               "settings": {"base_url": moysklad.base_url(), "default_region": "RU", "timeout_ms": 300},
               "credentials": {"token": "ms-token-f"}}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let created = post(
        "/v1/recipes/calltouch-moysklad/instantiate",
        json!({"connections": {"calltouch": ct["id"], "moysklad": ms["id"]}}),
    )
    .await
    .unwrap();
    assert_eq!(created.status(), 201);
    let hook = format!("{}{}", server.base, ct["webhook_path"].as_str().unwrap());

    let kinds = vec![
        Fault::ServerError,
        Fault::TooManyRequests,
        Fault::Slow(Duration::from_millis(700)),
    ];
    calltouch.set_retry_after_secs(0);
    moysklad.set_retry_after(Duration::from_millis(50));
    calltouch.set_fault_rate(0.3, kinds.clone(), 7);
    moysklad.set_fault_rate(0.3, kinds, 11);

    let mut expected_phones = BTreeSet::new();
    for n in 0..calls {
        let phone = format!("7916{:07}", n % phones);
        expected_phones.insert(format!("+{phone}"));
        let call_id = (100_000 + n).to_string();
        let form = [
            ("callId", call_id.as_str()),
            ("callerphone", phone.as_str()),
            ("utm_source", "yandex"),
        ];
        let status = http
            .post(&hook)
            .form(&form)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(status, 202, "call {n}");
        // Every tenth call is delivered twice more, as webhooks can be.
        if n % 10 == 0 {
            for _ in 0..2 {
                assert_eq!(
                    http.post(&hook).form(&form).send().await.unwrap().status(),
                    200
                );
            }
        }
    }

    let deadline = Instant::now() + Duration::from_secs(1500);
    let all = loop {
        let all = runs(&server, &key).await;
        let succeeded = all.iter().filter(|r| r["status"] == "succeeded").count();
        if succeeded == calls {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "{succeeded} of {calls} runs succeeded; others: {:#?}",
            all.iter()
                .filter(|r| r["status"] != "succeeded")
                .take(5)
                .collect::<Vec<_>>()
        );
        // Listing a thousand runs is not free: look twice a second.
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(all.len(), calls, "one run per call");

    // Exactly one of everything.
    let deals = calltouch.deals();
    let numbers: BTreeSet<String> = deals
        .iter()
        .map(|d| d["orderNumber"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!((deals.len(), numbers.len()), (calls, calls), "deals");
    let counterparties = moysklad.counterparties();
    let by_phone: BTreeMap<String, usize> =
        counterparties.iter().fold(BTreeMap::new(), |mut m, c| {
            *m.entry(c["phone"].as_str().unwrap_or("").to_owned())
                .or_default() += 1;
            m
        });
    assert_eq!(
        counterparties.len(),
        phones,
        "one counterparty per phone: {:?}",
        by_phone.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    assert_eq!(
        by_phone.keys().cloned().collect::<BTreeSet<_>>(),
        expected_phones
    );
    let orders = moysklad.orders();
    assert_eq!(orders.len(), calls, "orders");
    let codes: BTreeSet<&str> = orders
        .iter()
        .filter_map(|o| o["externalCode"].as_str())
        .collect();
    assert_eq!(
        codes,
        numbers.iter().map(String::as_str).collect(),
        "each order belongs to its deal"
    );

    // The faults happened, and the runs show the retries.
    assert!(calltouch.fault_count() > calls / 10 && moysklad.fault_count() > calls / 10);
    let mut retried_steps = 0;
    for run in &all {
        let id = run["id"].as_str().unwrap();
        let full: Value = http
            .get(format!("{}/v1/runs/{id}", server.base))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        retried_steps += full["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["attempts"].as_u64().unwrap_or(0) > 1)
            .count();
    }
    assert!(
        retried_steps > calls / 10,
        "only {retried_steps} steps show a retry"
    );
    println!(
        "fault test: {calls} calls, {} + {} injected faults, {retried_steps} steps retried",
        calltouch.fault_count(),
        moysklad.fault_count()
    );
}
