//! The Ringostat → Zoho recipe end to end through `crmbridge serve`, against
//! the Zoho and Ringostat fakes: the scenario matrix of
//! `crmbridge_fakes::scenarios::ringostat_zoho`, here as one local process
//! on the embedded store (the Lambda binaries run the same cases in
//! `tests/lambda/tests/ringostat_zoho.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

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
        Self::start_with(2, &[])
    }

    fn start_with(workers: usize, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["--allow-any-vendor-url"];
        args.extend_from_slice(extra);
        let server = serve_with(&dir.path().join("data"), workers, &args);
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
        let deadline = Instant::now() + Duration::from_secs(600);
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
    async fn runs(&self) -> Vec<Value> {
        runs(&self.server, &self.key).await
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_field_is_refused_on_save_and_skips_runs_later_through_serve() {
    let account = ZohoAccount::start().await;
    let gateway = Serve::start();
    scenario::missing_fields(&gateway, &account).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_mid_burst_then_the_grant_is_revoked_through_serve() {
    let account = ZohoAccount::start().await;
    let gateway = Serve::start_with(4, &[]);
    scenario::tokens_expire_mid_burst_then_the_grant_is_revoked(&gateway, &account).await;
    let logs = gateway.server.logs.lock().unwrap().clone();
    for secret in [account.refresh_token.as_str(), "zoho-client-secret-5c1"] {
        assert!(!logs.contains(secret), "a secret in the logs");
    }
    for token in account.oauth.access_tokens_issued() {
        assert!(!logs.contains(&token), "an access token in the logs");
    }
}

/// 30 % of Zoho's answers are faults — 5xx, 429 (and Zoho's concurrency
/// limit of 5), a connection dropped before or after Zoho acted — over
/// 1,000 calls from 700 callers, each delivered once or twice: every call
/// ends in a run that succeeded, and every caller has exactly one lead.
/// `CRMBRIDGE_ZOHO_FAULT_CALLS` sets the number of calls (default 1000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_percent_zoho_faults_lose_nothing_and_double_no_lead() {
    use crmbridge_fakes::Fault;
    let calls: usize = std::env::var("CRMBRIDGE_ZOHO_FAULT_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let callers = calls * 7 / 10;
    let account = ZohoAccount::start().await;
    let gateway = Serve::start_with(8, &["--retry-backoff", "50ms"]);
    let hook = scenario::install(&gateway, &account, false).await;
    let zoho = &account.zoho;
    zoho.set_concurrency_limit(Some(5));
    zoho.set_fault_rate(
        0.3,
        vec![
            Fault::ServerError,
            Fault::TooManyRequests,
            Fault::Drop,
            Fault::DropAfterCommit,
        ],
        20261125,
    );
    let phone = |caller: usize| format!("38063{caller:07}");
    let deliveries: Vec<(scenario::Delivery, usize)> = (0..calls)
        .map(|n| {
            let call = scenario::call(
                &format!("ua-9{n:05}"),
                &phone(n % callers),
                Some(scenario::ANNA),
                "ANSWERED",
            );
            (scenario::delivery(&call, "answered", n), 1 + n % 2)
        })
        .collect();
    // Copies of one delivery arrive at once; a copy answered "in progress"
    // (503, while its twin is being accepted) is sent again, as Ringostat
    // re-sends anything but a 2xx (its retry spacing is not modelled: the
    // copy is re-sent until it is answered).
    let ringostat_sends = |delivery: &scenario::Delivery| {
        let gateway = &gateway;
        let hook = &hook;
        let delivery = delivery.clone();
        async move {
            let mut answers = Vec::new();
            for _ in 0..50 {
                let (status, body) = gateway.webhook(hook, &delivery).await;
                answers.push((status, body));
                if status == 200 {
                    break;
                }
                tokio::task::yield_now().await;
            }
            answers
        }
    };
    let mut in_progress = 0;
    for batch in deliveries.chunks(25) {
        let sends = batch
            .iter()
            .flat_map(|(delivery, times)| (0..*times).map(|_| ringostat_sends(delivery)));
        for answers in futures_util::future::join_all(sends).await {
            let (status, _) = answers.last().unwrap();
            assert_eq!(*status, 200, "{answers:?}");
            for (status, body) in &answers[..answers.len() - 1] {
                assert_eq!(*status, 503, "{body}");
                assert_eq!(body["error"]["code"], "in_progress", "{body}");
                in_progress += 1;
            }
        }
    }
    let runs = gateway.settle(calls).await;
    zoho.clear_faults();
    assert_eq!(runs.len(), calls, "one run per call");
    let not_ok: Vec<&Value> = runs.iter().filter(|r| r["status"] != "succeeded").collect();
    assert!(not_ok.is_empty(), "{not_ok:#?}");
    let leads = zoho.records("Leads");
    let mut phones: Vec<String> = leads
        .iter()
        .map(|l| l["Phone"].as_str().unwrap_or_default().to_owned())
        .collect();
    phones.sort();
    phones.dedup();
    assert_eq!(phones.len(), leads.len(), "a doubled lead");
    assert_eq!(leads.len(), callers, "a lost lead");
    assert!(
        zoho.fault_count() > calls,
        "faults were injected: {}",
        zoho.fault_count()
    );
    println!(
        "{calls} calls, {callers} callers: {} faults injected, {} Zoho credits used, {in_progress} copies answered 503 in progress and re-sent",
        zoho.fault_count(),
        zoho.credits_used()
    );
}

/// The dry run of the completed-call automation on the delivery Ringostat
/// is about to send (reads on: the caller is looked up in Zoho) plans
/// exactly what the run then sends — the lead and the call — and writes
/// nothing to Zoho.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dry_run_of_a_completed_call_plans_what_the_run_then_sends() {
    let account = ZohoAccount::start().await;
    let gateway = Serve::start();
    let hook = scenario::install(&gateway, &account, false).await;
    let call = scenario::call("dry-1", "380671112233", Some(scenario::ANNA), "ANSWERED");
    let delivery = scenario::delivery(&call, "completed", 0);
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(delivery.query.iter())
        .finish();
    let sample = serde_json::json!({
        "method": delivery.method,
        "query": query,
        "content_type": delivery.content_type,
        "body": String::from_utf8(delivery.body.clone()).unwrap(),
    });
    let writes = || {
        account
            .zoho
            .requests()
            .iter()
            // COQL queries are POSTs that read.
            .filter(|r| r.method != "GET" && !r.path.ends_with("/coql"))
            .count()
    };
    let plan = common::dry_run(
        &gateway.server,
        &gateway.key,
        "ringostat-call-completed-to-zoho",
        serde_json::json!({"delivery": sample, "reads": true}),
        writes,
    )
    .await;
    assert_eq!(plan["steps"][0]["output_from"], "read", "{plan:#}");
    assert_eq!(plan["steps"][0]["output"]["found"], false, "{plan:#}");
    let (status, answer) = gateway.webhook(&hook, &delivery).await;
    assert!(status == 200 || status == 202, "{status} {answer}");
    let runs = gateway.settle(1).await;
    let run = common::get_json(
        &gateway.server,
        &gateway.key,
        &format!("/v1/runs/{}", runs[0]["id"].as_str().unwrap()),
    )
    .await;
    assert!(common::assert_plan_matches(&plan, &run) >= 3, "{plan:#}\n{run:#}");
}
