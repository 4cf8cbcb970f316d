//! What the end-to-end tests through the real Lambda binaries share: the
//! moto-backed AWS side (table, bus, a queue standing in for the dispatch
//! rule's target), the four function processes under the Runtime API
//! emulator, and helpers to talk to them the way API Gateway and
//! EventBridge do.
//!
//! Needs `CRMBRIDGE_TEST_AWS_ENDPOINT` (moto; infra/test.sh starts it) and
//! the binaries built (`cargo build --bins`).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use aws_sdk_eventbridge::types::Target;
use aws_sdk_sqs::config::Credentials;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use base64::Engine as _;
use crmbridge_lambda_harness::{
    FunctionProcess, HttpApiRequest, HttpApiResponse, LambdaEmulator, uuid_v4, workspace_binary,
};
use serde_json::{Value, json};

pub const REGION: &str = "us-east-1";

/// How long a routed event may take to show up in the queue.
const ROUTING_DEADLINE: Duration = Duration::from_secs(30);

pub fn aws_endpoint() -> String {
    std::env::var("CRMBRIDGE_TEST_AWS_ENDPOINT")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "CRMBRIDGE_TEST_AWS_ENDPOINT is not set: this test needs moto server \
                 (DynamoDB, EventBridge, SQS). Run `bash infra/test.sh`, or start \
                 `.tools/venv/bin/python infra/moto_serial.py -H 127.0.0.1 -p <port>` and export \
                 CRMBRIDGE_TEST_AWS_ENDPOINT=http://127.0.0.1:<port>"
            )
        })
}

pub fn binary(name: &str) -> PathBuf {
    workspace_binary(name).unwrap_or_else(|err| panic!("{err}"))
}

async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new(REGION))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .load()
        .await
}

/// An EventBridge bus whose rule has the dispatch rule's pattern and sends
/// to an SQS queue, so the test sees exactly what dispatch would receive.
pub struct Routing {
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
}

impl Routing {
    async fn create(sdk: &aws_config::SdkConfig, bus: &str, suffix: &str) -> Self {
        let events = aws_sdk_eventbridge::Client::new(sdk);
        let sqs = aws_sdk_sqs::Client::new(sdk);
        events.create_event_bus().name(bus).send().await.unwrap();
        let queue_url = sqs
            .create_queue()
            .queue_name(format!("dispatch-{suffix}"))
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        let attributes = sqs
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap();
        let queue_arn = attributes
            .attributes
            .unwrap()
            .get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .cloned()
            .unwrap();
        events
            .put_rule()
            .name("dispatch")
            .event_bus_name(bus)
            .event_pattern(json!({"source": ["crmbridge"]}).to_string())
            .send()
            .await
            .unwrap();
        events
            .put_targets()
            .rule("dispatch")
            .event_bus_name(bus)
            .targets(
                Target::builder()
                    .id("queue")
                    .arn(queue_arn)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
        Self { sqs, queue_url }
    }

    /// Waits (with a deadline) for `n` routed events, deletes them, and
    /// checks that no further one follows.
    pub async fn take(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + ROUTING_DEADLINE;
        let mut out = Vec::new();
        while out.len() < n {
            assert!(
                Instant::now() < deadline,
                "expected {n} routed events, got {}: {out:#?}",
                out.len()
            );
            out.extend(self.receive(1).await);
        }
        let extra = self.receive(1).await;
        assert!(extra.is_empty(), "more events than expected: {extra:#?}");
        assert_eq!(out.len(), n, "more events than expected: {out:#?}");
        out
    }

    /// [`Self::take`], checking that every event is of `kind`.
    pub async fn take_kind(&self, n: usize, kind: &str) -> Vec<Value> {
        let events = self.take(n).await;
        for event in &events {
            assert_eq!(event["source"], "crmbridge", "{event:#}");
            assert_eq!(event["detail"]["kind"], kind, "{event:#}");
            assert_eq!(event["detail-type"], kind, "{event:#}");
        }
        events
    }

    /// Whatever is routed now (waiting up to a second for the first),
    /// deleted from the queue: for tests that pump events as they come.
    pub async fn receive_now(&self) -> Vec<Value> {
        self.receive(1).await
    }

    async fn receive(&self, wait_seconds: i32) -> Vec<Value> {
        let received = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(wait_seconds)
            .send()
            .await
            .unwrap();
        let mut out = Vec::new();
        for message in received.messages.unwrap_or_default() {
            out.push(serde_json::from_str(message.body().unwrap()).unwrap());
            self.sqs
                .delete_message()
                .queue_url(&self.queue_url)
                .receipt_handle(message.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
        out
    }
}

/// Creates the table and the first tenant with the real CLI; returns the owner key.
async fn bootstrap(env: &[(String, String)]) -> String {
    let output = tokio::process::Command::new(binary("crmbridge"))
        .args(["admin", "bootstrap", "--create-table"])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("AWS_REGION", REGION)
        .env("CRMBRIDGE_LOG", "warn")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bootstrap failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("owner API key (shown once, store it now): "))
        .unwrap_or_else(|| panic!("no owner key in: {stdout}"))
        .trim()
        .to_owned()
}

/// A fresh table, bus and queue in moto, a bootstrapped tenant, and the
/// four functions running (each started cold, one at a time).
pub struct Stack {
    pub owner_key: String,
    pub routing: Routing,
    pub admin: FunctionProcess,
    pub webhook: FunctionProcess,
    pub dispatcher: FunctionProcess,
    pub tick: FunctionProcess,
    /// The functions' environment, for [`Self::spawn_instances`].
    env: Vec<(String, String)>,
    _emulator: LambdaEmulator,
}

impl Stack {
    pub async fn start() -> Self {
        let endpoint = aws_endpoint();
        for name in ["admin", "webhook", "dispatch", "tick", "crmbridge"] {
            binary(name);
        }
        let suffix = uuid_v4()[..8].to_owned();
        let table = format!("crmbridge-lambda-{suffix}");
        let bus = format!("crmbridge-lambda-{suffix}");
        let key_bytes: [u8; 32] = rand::random();
        let keys = format!(
            "t1:{}",
            base64::engine::general_purpose::STANDARD.encode(key_bytes)
        );
        let env: Vec<(String, String)> = [
            ("CRMBRIDGE_TABLE", table.as_str()),
            ("CRMBRIDGE_EVENT_BUS", bus.as_str()),
            ("CRMBRIDGE_ENCRYPTION_KEYS", keys.as_str()),
            ("CRMBRIDGE_ALLOW_ANY_VENDOR_URL", "true"),
            ("CRMBRIDGE_LOG", "info"),
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", REGION),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();

        let sdk = sdk_config(&endpoint).await;
        let owner_key = bootstrap(&env).await;
        let routing = Routing::create(&sdk, &bus, &suffix).await;

        // One at a time, so each init duration is a cold start on a quiet machine.
        let emulator = LambdaEmulator::new();
        let mut functions = Vec::new();
        for name in ["admin", "webhook", "dispatch", "tick"] {
            let function = emulator
                .spawn_function(binary(name), env.clone())
                .await
                .unwrap();
            let init = function.wait_ready(Duration::from_secs(60)).await.unwrap();
            println!("init duration {name}: {init:?}");
            functions.push(function);
        }
        let [admin, webhook, dispatcher, tick] =
            <[FunctionProcess; 4]>::try_from(functions).unwrap();
        Self {
            owner_key,
            routing,
            admin,
            webhook,
            dispatcher,
            tick,
            env,
            _emulator: emulator,
        }
    }

    /// `n` more execution environments of the function `name` (same
    /// configuration), started together and ready. Lambda runs concurrent
    /// invocations of one function in separate environments, and a
    /// [`FunctionProcess`] handles one event at a time, like one
    /// environment: concurrency needs several.
    pub async fn spawn_instances(&self, name: &str, n: usize) -> Vec<FunctionProcess> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let function = self
                ._emulator
                .spawn_function(binary(name), self.env.clone())
                .await
                .unwrap();
            out.push(function);
        }
        for function in &out {
            function.wait_ready(Duration::from_secs(60)).await.unwrap();
        }
        out
    }

    /// `POST /v1/…` through admin with the owner key; asserts `expect`.
    pub async fn admin_post(&self, path: &str, body: Value, expect: u16) -> Value {
        let (status, reply) = http(
            &self.admin,
            admin_request("POST", path, &self.owner_key).json(&body),
        )
        .await;
        assert_eq!(status, expect, "POST {path}: {reply}");
        reply
    }

    /// Every run, through `GET /v1/runs` (all pages).
    pub async fn runs(&self) -> Vec<Value> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = "/v1/runs?limit=200".to_owned();
            if let Some(cursor) = &cursor {
                path.push_str("&cursor=");
                path.push_str(cursor);
            }
            let (status, page) =
                http(&self.admin, admin_request("GET", &path, &self.owner_key)).await;
            assert_eq!(status, 200, "{page}");
            all.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return all,
            }
        }
    }

    /// Hands a routed event to dispatch, as the EventBridge rule would.
    pub async fn dispatch(&self, routed: &Value) -> Value {
        dispatch(&self.dispatcher, routed).await
    }

    /// Dispatches one event that must start automations (not a duplicate);
    /// returns its runs as `(automation, status)` pairs, sorted.
    pub async fn dispatch_runs(&self, routed: &Value) -> Vec<(String, String)> {
        let reply = self.dispatch(routed).await;
        assert_eq!(reply["duplicate"], false, "{reply:#}");
        let mut runs = automation_statuses(reply["runs"].as_array().unwrap());
        runs.sort();
        runs
    }

    /// Invokes tick with the scheduled event of `events/tick.json` at
    /// `time` (each tick needs its own: the poll requests' ids include it).
    pub async fn tick_at(&self, time: &str) -> Value {
        let mut event = tick_event();
        event["time"] = json!(time);
        event["id"] = json!(uuid_v4());
        match self.tick.invoke(event).await {
            Ok(reply) => reply,
            Err(err) => panic!("{err}\n--- tick log ---\n{}", self.tick.logs().join("\n")),
        }
    }

    /// Prints each function's init and invocation durations.
    pub fn report(&self) {
        for function in [&self.admin, &self.webhook, &self.dispatcher, &self.tick] {
            println!(
                "{}: init {:?}, invocations {:?}",
                function.name(),
                function.init_duration().unwrap(),
                function.invocation_durations()
            );
        }
    }
}

/// The CloudWatch embedded-metric lines for `metric` the stack's
/// functions wrote to their logs, parsed.
pub fn emf_lines(stack: &Stack, metric: &str) -> Vec<Value> {
    [&stack.admin, &stack.webhook, &stack.dispatcher, &stack.tick]
        .iter()
        .flat_map(|process| emf_of(process, metric))
        .collect()
}

/// Waits (bounded) for an embedded-metric line for `metric` that
/// `matches` in `function`'s logs: they are read from its pipe, and may
/// arrive after the invocation's response.
pub async fn wait_for_emf(
    function: &FunctionProcess,
    metric: &str,
    matches: impl Fn(&Value) -> bool,
) -> Value {
    let line = function
        .wait_for_log(0, std::time::Duration::from_secs(30), |line| {
            serde_json::from_str::<Value>(line).is_ok_and(|line| {
                line["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"] == metric
                    && matches(&line)
            })
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "no {metric} line from {}:\n{:#?}",
                function.name(),
                emf_of(function, metric)
            )
        });
    serde_json::from_str(&line).unwrap()
}

fn emf_of(function: &FunctionProcess, metric: &str) -> Vec<Value> {
    function
        .logs()
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"] == metric)
        .collect()
}

/// `events/tick.json`, the EventBridge schedule's event.
pub fn tick_event() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../events/tick.json"
        ))
        .unwrap(),
    )
    .unwrap()
}

/// `(automation, status)` of each run.
pub fn automation_statuses(runs: &[Value]) -> Vec<(String, String)> {
    runs.iter()
        .map(|r| {
            (
                r["automation"].as_str().unwrap_or_default().to_owned(),
                r["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// `(automation, status)` pairs from string literals, sorted.
pub fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = expected
        .iter()
        .map(|(a, s)| ((*a).to_owned(), (*s).to_owned()))
        .collect();
    out.sort();
    out
}

/// Invokes an HTTP API function and decodes its v2 response.
pub async fn http(function: &FunctionProcess, request: HttpApiRequest) -> (u16, Value) {
    let reply = match function.invoke(request.to_event()).await {
        Ok(reply) => reply,
        Err(err) => panic!(
            "{err}\n--- {} log ---\n{}",
            function.name(),
            function.logs().join("\n")
        ),
    };
    let response = HttpApiResponse::from_value(&reply).unwrap();
    (response.status, response.json().unwrap())
}

pub async fn dispatch(function: &FunctionProcess, routed: &Value) -> Value {
    match function.invoke(routed.clone()).await {
        Ok(reply) => reply,
        Err(err) => panic!(
            "{err}\n--- dispatch log ---\n{}",
            function.logs().join("\n")
        ),
    }
}

pub fn admin_request(method: &str, path_and_query: &str, key: &str) -> HttpApiRequest {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let proxy = path.trim_start_matches("/v1/");
    let mut request = HttpApiRequest::new(method, path)
        .route("ANY /v1/{proxy+}", &[("proxy", proxy)])
        .bearer(key);
    for (name, value) in form_urlencoded_pairs(query) {
        request = request.query(&name, &value);
    }
    request
}

fn form_urlencoded_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// `/hooks/{connection}/{token}` as API Gateway routes it.
pub fn hook_request(method: &str, webhook_path: &str) -> HttpApiRequest {
    let parts: Vec<&str> = webhook_path.trim_start_matches('/').split('/').collect();
    assert_eq!(parts.len(), 3, "{webhook_path}");
    HttpApiRequest::new(method, webhook_path).route(
        "ANY /hooks/{connection}/{token}",
        &[("connection", parts[1]), ("token", parts[2])],
    )
}

/// API Gateway in front of the webhook function.
async fn front(
    State(stack): State<std::sync::Arc<Stack>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let mut request = hook_request(method.as_str(), uri.path());
    for (name, value) in &headers {
        if let Ok(value) = value.to_str() {
            request = request.header(name.as_str(), value);
        }
    }
    for pair in uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        request = request.query(name, value);
    }
    if !body.is_empty() {
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        request = request.body(&content_type, body.to_vec());
    }
    let (status, reply) = http(&stack.webhook, request).await;
    (StatusCode::from_u16(status).unwrap(), axum::Json(reply))
}

/// Starts the stand-in for API Gateway in front of `stack`'s webhook
/// function: each HTTP request a fake sends is invoked as an HTTP API
/// event. Answers its base URL.
pub async fn api_gateway(stack: std::sync::Arc<Stack>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(front).with_state(stack);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}
