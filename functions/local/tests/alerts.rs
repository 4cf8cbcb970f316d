//! Alerts end to end through `crmbridge serve`: a receiver that verifies
//! every message with the reference Standard Webhooks implementation
//! (`alert_receiver.py`, PyPI `standardwebhooks`) gets one `alert.opened`
//! for an automation whose target answers 400 however many runs fail, and
//! one `alert.resolved` after its next success; while the receiver hangs,
//! runs keep being dispatched.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{client, pause, runs, serve_with};
use crmbridge_fakes::vendors::retailcrm::FakeRetailCrm;
use serde_json::{Value, json};

/// The Python receiver, killed when dropped.
struct Receiver {
    child: Child,
    url: String,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    fn start(secrets: &[&str]) -> Self {
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/alert_receiver.py");
        let mut child = Command::new(common::python())
            .arg(script)
            .args(secrets)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut port = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut port)
            .unwrap();
        let url = format!("http://127.0.0.1:{}", port.trim());
        Self { child, url }
    }

    async fn state(&self) -> Value {
        client()
            .get(format!("{}/received", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn hang(&self, hang: bool) {
        let response = client()
            .post(format!("{}/control", self.url))
            .json(&json!({"hang": hang}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }

    async fn set_secrets(&self, secrets: &[&str]) {
        let response = client()
            .post(format!("{}/control", self.url))
            .json(&json!({"secrets": secrets}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }

    /// The verified messages of `kind`.
    async fn received(&self, kind: &str) -> Vec<Value> {
        self.state().await["received"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["payload"]["type"] == kind)
            .cloned()
            .collect()
    }
}

async fn until<F, Fut>(what: &str, secs: u64, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        pause().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_alert_per_cause_then_one_resolved_and_a_hung_receiver_holds_up_nothing() {
    let retailcrm = FakeRetailCrm::start("rc-key-alerts").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = serve_with(
        &dir.path().join("data"),
        4,
        &["--allow-any-vendor-url", "--retry-backoff", "200ms"],
    );
    let key = server.owner_key.clone().unwrap();
    let http = client();
    let post = |path: &str, body: Value| {
        http.post(format!("{}{path}", server.base))
            .bearer_auth(&key)
            .json(&body)
            .send()
    };
    // `POST …/test`: what the receiver did with one signed test message.
    let test_send = |destination: &str| {
        let request = post(&format!("/v1/alert-destinations/{destination}/test"), json!({}));
        async move { request.await.unwrap().json::<Value>().await.unwrap() }
    };

    // A destination: a bad URL or secret is refused naming the field, and
    // nothing is made.
    for (body, field) in [
        (json!({"url": "ftp://example.com/x"}), "url"),
        (json!({"url": "http://127.0.0.1:9/x", "secret": "hunter2"}), "secret"),
        (json!({"url": "http://127.0.0.1:9/x", "colour": "red"}), "colour"),
    ] {
        let response = post("/v1/alert-destinations", body).await.unwrap();
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap();
        assert!(status == 422 || status == 400, "{status} {answer}");
        assert!(
            answer["error"].to_string().contains(field),
            "{field}: {answer}"
        );
        assert!(!answer.to_string().contains("hunter2"), "{answer}");
    }
    // The receiver knows the secret we choose here; a second destination
    // gets one made by crmbridge and shown once.
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let receiver = Receiver::start(&[secret]);
    let response = post(
        "/v1/alert-destinations",
        json!({"url": format!("{}/alerts", receiver.url), "description": "on-call", "secret": secret}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 201);
    let destination: Value = response.json().await.unwrap();
    let destination_id = destination["id"].as_str().unwrap().to_owned();
    assert!(destination_id.starts_with("ads_"), "{destination}");
    // Three more destinations on the same receiver: four messages per
    // alert, all of them held while it hangs.
    for n in 0..3 {
        let response = post(
            "/v1/alert-destinations",
            json!({"url": format!("{}/alerts/{n}", receiver.url), "secret": secret}),
        )
        .await
        .unwrap();
        assert_eq!(response.status(), 201);
    }
    let listed = common::get_json(&server, &key, "/v1/alert-destinations").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 4, "{listed}");
    assert!(!listed.to_string().contains("whsec_"), "{listed}");

    // The test send reaches the receiver, verified.
    let tested = test_send(&destination_id).await;
    assert_eq!(tested["delivered"], true, "{tested}");
    assert_eq!(receiver.received("alert.test").await.len(), 1);

    // A generic shop's orders go to retailCRM; an unknown status is
    // refused there with 400.
    let shop: Value = post(
        "/v1/connections",
        json!({"app": "generic", "name": "Shop",
               "settings": {"event_id_pointer": "/id", "kind_pointer": "/kind"}}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let rc: Value = post(
        "/v1/connections",
        json!({"app": "retailcrm", "name": "retailCRM",
               "settings": {"base_url": retailcrm.base_url(), "site": "main"},
               "credentials": {"api_key": "rc-key-alerts"}}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    for (id, kind) in [("orders", "generic.order.created"), ("paid", "generic.order.paid")] {
        let response = post(
            "/v1/automations",
            json!({
                "id": id,
                "name": format!("{kind} → retailCRM order"),
                "trigger": {"connection": shop["id"], "event": kind},
                "steps": [{
                    "id": "order",
                    "action": "retailcrm.order.create",
                    "connection": rc["id"],
                    "fields": {"external_id": "{{ event.id }}", "status": "{{ event.status }}",
                               "first_name": "{{ event.name }}"}
                }]
            }),
        )
        .await
        .unwrap();
        assert_eq!(
            response.status(),
            201,
            "{}",
            response.text().await.unwrap()
        );
    }
    let hook = format!("{}{}", server.base, shop["webhook_path"].as_str().unwrap());
    let send = |id: String, kind: &str, status: &str| {
        let body = json!({"id": id, "kind": kind, "status": status, "name": "Ann"});
        let request = http.post(&hook).json(&body).send();
        async move {
            let status = request.await.unwrap().status().as_u16();
            assert_eq!(status, 202);
        }
    };
    let count = |all: &[Value], automation: &str, status: &str| {
        all.iter()
            .filter(|r| r["automation"] == automation && r["status"] == status)
            .count()
    };

    // The receiver goes down (hangs), then three runs fail for good.
    receiver.hang(true).await;
    for n in 0..3 {
        send(format!("bad-{n}"), "order.created", "no-such-status").await;
    }
    until("three failed runs", 60, || async {
        count(&runs(&server, &key).await, "orders", "failed") == 3
    })
    .await;
    until("the alert to reach the hung receiver", 60, || async {
        receiver.state().await["hung"].as_u64().unwrap() >= 1
    })
    .await;
    // While it hangs, another automation's runs are dispatched.
    for n in 0..20 {
        send(format!("paid-{n}"), "order.paid", "new").await;
    }
    until("20 runs while the receiver hangs", 60, || async {
        count(&runs(&server, &key).await, "paid", "succeeded") == 20
    })
    .await;
    let state = receiver.state().await;
    assert!(
        state["hung"].as_u64().unwrap() >= 1
            && state["received"].as_array().unwrap().len() == 1,
        "dispatch finished while the alert was still held by the receiver: {state}"
    );
    assert_eq!(
        state["hanging_max"], 1,
        "four messages, one held at a time: the other workers stayed with the runs: {state}"
    );

    // Back up: exactly one alert for the three failures arrives.
    receiver.hang(false).await;
    until("the opened alert at every destination", 120, || async {
        receiver.received("alert.opened").await.len() == 4
    })
    .await;
    // A fourth failure opens nothing new.
    send("bad-3".into(), "order.created", "no-such-status").await;
    until("the fourth failed run", 60, || async {
        count(&runs(&server, &key).await, "orders", "failed") == 4
    })
    .await;
    // Then a success resolves it.
    send("good-1".into(), "order.created", "new").await;
    until("the resolved alert", 120, || async {
        !receiver.received("alert.resolved").await.is_empty()
    })
    .await;
    until("the resolved alert at every destination", 120, || async {
        receiver.received("alert.resolved").await.len() == 4
    })
    .await;
    let opened = receiver.received("alert.opened").await;
    let resolved = receiver.received("alert.resolved").await;
    assert_eq!(opened.len(), 4, "one per destination: {opened:#?}");
    assert_eq!(resolved.len(), 4, "{resolved:#?}");
    // The first destination, as a person reading it sees it: exactly one
    // alert for the four failures, then exactly one resolution.
    let at_first = |messages: &[Value]| {
        messages
            .iter()
            .filter(|m| m["path"] == "/alerts")
            .cloned()
            .collect::<Vec<Value>>()
    };
    assert_eq!(at_first(&opened).len(), 1, "{opened:#?}");
    assert_eq!(at_first(&resolved).len(), 1, "{resolved:#?}");
    let ids: std::collections::BTreeSet<&str> = opened
        .iter()
        .map(|m| m["payload"]["data"]["alert_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "one alert: {opened:#?}");
    let data = &opened[0]["payload"]["data"];
    assert_eq!(data["cause"], "runs_failing", "{data}");
    assert_eq!(data["subject"], "orders", "{data}");
    assert!(
        data["detail"].as_str().unwrap().contains("no-such-status"),
        "the vendor's words: {data}"
    );
    assert_eq!(
        resolved[0]["payload"]["data"]["alert_id"], data["alert_id"],
        "{resolved:#?}"
    );
    assert_eq!(opened[0]["id"], data["alert_id"], "webhook-id is the alert id");
    let state = receiver.state().await;
    assert!(
        state["rejected"].as_array().unwrap().is_empty(),
        "every message verified: {state}"
    );
    let alerts = common::get_json(&server, &key, "/v1/alerts").await;
    let items = alerts["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{alerts}");
    assert_eq!(items[0]["status"], "resolved", "{alerts}");

    // A rotated secret: while the old one retires, each message carries
    // both signatures, so a receiver knowing either verifies it.
    let rotated: Value = post(
        &format!("/v1/alert-destinations/{destination_id}/rotate-secret"),
        json!({}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let fresh = rotated["secret"].as_str().unwrap().to_owned();
    assert!(fresh.starts_with("whsec_") && fresh != secret, "{rotated}");
    assert!(rotated["previous_secret_until"].is_string(), "{rotated}");
    for secrets in [vec![fresh.as_str()], vec![secret]] {
        receiver.set_secrets(&secrets).await;
        let tested = test_send(&destination_id).await;
        assert_eq!(tested["delivered"], true, "{secrets:?}: {tested}");
    }
    receiver.set_secrets(&["whsec_dGhpcyBpcyBub3QgdGhlIHJpZ2h0IGtleSE="]).await;
    let tested = test_send(&destination_id).await;
    assert_eq!(tested["delivered"], false, "{tested}");
    assert_eq!(tested["status"], 400, "{tested}");
    let response = client()
        .delete(format!(
            "{}/v1/alert-destinations/{destination_id}",
            server.base
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let listed = common::get_json(&server, &key, "/v1/alert-destinations").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 3, "{listed}");
}
