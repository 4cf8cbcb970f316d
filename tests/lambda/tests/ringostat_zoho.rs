//! The Ringostat → Zoho recipe end to end through the real Lambda binaries
//! under the Runtime API emulator, on moto, against the Zoho and Ringostat
//! fakes: the same scenario matrix as `functions/local/tests/ringostat_zoho.rs`
//! (`crmbridge_fakes::scenarios::ringostat_zoho`), here as deployed. Each
//! accepted delivery's event is taken from the queue the dispatch rule
//! routes to and handed to `dispatch`, as EventBridge would.
//!
//! Needs `CRMBRIDGE_TEST_AWS_ENDPOINT` (moto; infra/test.sh starts it) and
//! the binaries built (`cargo build --bins`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use async_trait::async_trait;
use common::{Stack, admin_request, hook_request, http};
use crmbridge_fakes::scenarios::ringostat_zoho::{
    self as scenario, Delivery, Gateway, ZohoAccount,
};
use serde_json::Value;

struct Deployed(Stack);

#[async_trait]
impl Gateway for Deployed {
    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = admin_request(method, path, &self.0.owner_key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        http(&self.0.admin, request).await
    }

    async fn webhook(&self, path: &str, delivery: &Delivery) -> (u16, Value) {
        let mut request = hook_request(delivery.method, path).query_pairs(&delivery.query);
        if let Some(content_type) = delivery.content_type {
            request = request.body(content_type, delivery.body.clone());
        }
        let (status, reply) = http(&self.0.webhook, request).await;
        if reply["status"] == "accepted" {
            // EventBridge routes the event to dispatch.
            let routed = self.0.routing.take(1).await.remove(0);
            assert_eq!(routed["detail"]["id"], reply["event_ids"][0], "{routed:#}");
            let outcome = self.0.dispatch(&routed).await;
            assert_eq!(outcome["duplicate"], false, "{outcome:#}");
        }
        (status, reply)
    }

    async fn settle(&self, expected: usize) -> Vec<Value> {
        // Dispatch ran each event to its end before `webhook` returned.
        let runs = self.0.runs().await;
        assert_eq!(runs.len(), expected, "{runs:#?}");
        runs
    }
    async fn runs(&self) -> Vec<Value> {
        self.0.runs().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_of_the_matrix_through_the_lambda_binaries() {
    let account = ZohoAccount::start().await;
    let gateway = Deployed(Stack::start().await);
    scenario::call_matrix(&gateway, &account).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_before_call_mode_and_bad_deliveries_through_the_lambda_binaries() {
    let account = ZohoAccount::start().await;
    let gateway = Deployed(Stack::start().await);
    scenario::before_call_mode(&gateway, &account).await;
    let account = ZohoAccount::start().await;
    let gateway = Deployed(Stack::start().await);
    scenario::bad_deliveries(&gateway, &account).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_field_is_refused_on_save_and_skips_runs_later_through_the_lambda_binaries() {
    let account = ZohoAccount::start().await;
    let gateway = Deployed(Stack::start().await);
    scenario::missing_fields(&gateway, &account).await;
}
