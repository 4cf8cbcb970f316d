//! The Ringostat → Zoho recipe end to end through `crmbridge serve`, against
//! the Zoho and Ringostat fakes: the scenario matrix of
//! `crmbridge_fakes::scenarios::ringostat_zoho`, here as one local process
//! on the embedded store (the Lambda binaries run the same cases in
//! `tests/lambda/tests/ringostat_zoho.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::{Server, client, pause, runs, serve_with};
use crmbridge_fakes::scenarios::ringostat_zoho::{
    self as scenario, Delivery, Gateway, ZohoAccount,
};
use serde_json::Value;

struct Serve {
    server: Server,
    key: String,
    _dir: tempfile::TempDir,
}

impl Serve {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = serve_with(&dir.path().join("data"), 2, &["--allow-any-vendor-url"]);
        let key = server.owner_key.clone().unwrap();
        Self {
            server,
            key,
            _dir: dir,
        }
    }
}

async fn answer(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[async_trait]
impl Gateway for Serve {
    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = client()
            .request(method, format!("{}{path}", self.server.base))
            .bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        answer(request.send().await.unwrap()).await
    }

    async fn webhook(&self, path: &str, delivery: &Delivery) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(delivery.method.as_bytes()).unwrap();
        let mut request = client()
            .request(method, format!("{}{path}", self.server.base))
            .query(&delivery.query);
        if let Some(content_type) = delivery.content_type {
            request = request
                .header("content-type", content_type)
                .body(delivery.body.clone());
        }
        answer(request.send().await.unwrap()).await
    }

    async fn settle(&self, expected: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let all = runs(&self.server, &self.key).await;
            let busy = all
                .iter()
                .any(|r| r["status"] == "running" || r["status"] == "failed");
            if all.len() >= expected && !busy {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {expected} runs settled: {all:#?}",
                all.len()
            );
            pause().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_of_the_matrix_through_serve() {
    let account = ZohoAccount::start().await;
    let gateway = Serve::start();
    scenario::call_matrix(&gateway, &account).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_before_call_mode_through_serve() {
    let account = ZohoAccount::start().await;
    let gateway = Serve::start();
    scenario::before_call_mode(&gateway, &account).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deliveries_through_serve() {
    let account = ZohoAccount::start().await;
    let gateway = Serve::start();
    scenario::bad_deliveries(&gateway, &account).await;
}
