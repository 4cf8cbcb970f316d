//! The Calltouch ↔ MoySklad recipe end to end through the real Lambda
//! binaries (`admin`, `webhook`, `dispatch`, `tick`) under the Runtime API
//! emulator, on DynamoDB + EventBridge + SQS in moto, against the fake vendor
//! APIs: what `functions/local/tests/calltouch_moysklad.rs` checks through
//! `crmbridge serve`, here as deployed. EventBridge routes the events to an
//! SQS queue with the dispatch rule's pattern; the test hands each routed
//! event to `dispatch` as the rule would.
//!
//! Needs `CRMBRIDGE_TEST_AWS_ENDPOINT` (moto; infra/test.sh starts it) and
//! the binaries built (`cargo build --bins`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use aws_sdk_eventbridge::types::Target;
use aws_sdk_sqs::config::Credentials;
use base64::Engine as _;
use crmbridge_fakes::calltouch::FakeCalltouch;
use crmbridge_fakes::moysklad::{FakeMoySklad, WEBHOOK_USER_AGENT};
use crmbridge_lambda_harness::{
    FunctionProcess, HttpApiRequest, HttpApiResponse, LambdaEmulator, uuid_v4, workspace_binary,
};
use serde_json::{Value, json};

const REGION: &str = "us-east-1";

fn aws_endpoint() -> String {
    std::env::var("CRMBRIDGE_TEST_AWS_ENDPOINT")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "CRMBRIDGE_TEST_AWS_ENDPOINT is not set: this test needs moto server \
                 (DynamoDB, EventBridge, SQS). Run `bash infra/test.sh`, or start \
                 `.tools/venv/bin/moto_server -H 127.0.0.1 -p <port>` and export \
                 CRMBRIDGE_TEST_AWS_ENDPOINT=http://127.0.0.1:<port>"
            )
        })
}

fn binary(name: &str) -> PathBuf {
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
struct Routing {
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
    async fn take(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
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
        out
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

/// Invokes an HTTP API function and decodes its v2 response.
async fn http(function: &FunctionProcess, request: HttpApiRequest) -> (u16, Value) {
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

async fn dispatch(function: &FunctionProcess, routed: &Value) -> Value {
    match function.invoke(routed.clone()).await {
        Ok(reply) => reply,
        Err(err) => panic!(
            "{err}\n--- dispatch log ---\n{}",
            function.logs().join("\n")
        ),
    }
}

fn admin_request(method: &str, path_and_query: &str, key: &str) -> HttpApiRequest {
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
fn hook_request(method: &str, webhook_path: &str) -> HttpApiRequest {
    let parts: Vec<&str> = webhook_path.trim_start_matches('/').split('/').collect();
    assert_eq!(parts.len(), 3, "{webhook_path}");
    HttpApiRequest::new(method, webhook_path).route(
        "ANY /hooks/{connection}/{token}",
        &[("connection", parts[1]), ("token", parts[2])],
    )
}

const CALL: [(&str, &str); 8] = [
    ("callId", "1001"),
    ("callerphone", "79161234567"),
    ("phonenumber", "74950000000"),
    ("utm_source", "yandex"),
    ("utm_medium", "cpc"),
    ("utm_campaign", "brand"),
    ("clientId", "GA1.2.3"),
    ("callTags", "Лид|Целевой"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_and_an_order_change_flow_through_the_lambda_binaries() {
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
    let calltouch = FakeCalltouch::start("ct-token-1", "12345").await.unwrap();
    let moysklad = FakeMoySklad::start("ms-token-1").await.unwrap();

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
    let [admin, webhook, dispatcher, tick] = <[FunctionProcess; 4]>::try_from(functions).unwrap();

    // Health, then the two connections and the recipe, through admin.
    let (status, health) = http(
        &admin,
        HttpApiRequest::get("/health").route("GET /health", &[]),
    )
    .await;
    assert_eq!((status, health), (200, json!({"status": "ok"})));
    let (status, ct) = http(
        &admin,
        admin_request("POST", "/v1/connections", &owner_key).json(&json!({
            "app": "calltouch", "name": "Calltouch",
            "settings": {"site_id": "12345", "base_url": calltouch.base_url()},
            "credentials": {"access_token": "ct-token-1"}})),
    )
    .await;
    assert_eq!(status, 201, "{ct}");
    assert!(
        !ct.to_string().contains("ct-token-1"),
        "credentials leaked: {ct}"
    );
    let (status, ms) = http(
        &admin,
        admin_request("POST", "/v1/connections", &owner_key).json(&json!({
            "app": "moysklad", "name": "МойСклад",
            "settings": {"base_url": moysklad.base_url()},
            "credentials": {"token": "ms-token-1"}})),
    )
    .await;
    assert_eq!(status, 201, "{ms}");
    let (status, created) = http(
        &admin,
        admin_request(
            "POST",
            "/v1/recipes/calltouch-moysklad/instantiate",
            &owner_key,
        )
        .json(&json!({"connections": {"calltouch": ct["id"], "moysklad": ms["id"]}})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["items"].as_array().unwrap().len(), 4, "{created}");
    let ct_hook = ct["webhook_path"].as_str().unwrap().to_owned();
    let ms_hook = ms["webhook_path"].as_str().unwrap().to_owned();

    // A Calltouch call, posted as a form (base64 in the event, as API
    // Gateway sends form bodies), then delivered again.
    let call = || hook_request("POST", &ct_hook).form(&CALL);
    let (status, first) = http(&webhook, call()).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["status"], "accepted");
    let event_ids = first["event_ids"].clone();
    assert_eq!(event_ids.as_array().unwrap().len(), 1, "{first}");
    let (status, again) = http(&webhook, call()).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        again,
        json!({"status": "duplicate", "event_ids": event_ids})
    );

    // EventBridge routed it once; dispatch runs it, a redelivery does nothing.
    let routed = routing.take(1).await.remove(0);
    assert_eq!(routed["source"], "crmbridge");
    assert_eq!(routed["detail"]["id"], event_ids[0], "{routed:#}");
    assert_eq!(routed["detail-type"], routed["detail"]["kind"]);
    let reply = dispatch(&dispatcher, &routed).await;
    assert_eq!(reply["duplicate"], false, "{reply:#}");
    let runs = reply["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{reply:#}");
    assert_eq!(runs[0]["status"], "succeeded", "{reply:#}");
    let reply = dispatch(&dispatcher, &routed).await;
    assert_eq!(reply["duplicate"], true, "{reply:#}");

    let counterparties = moysklad.counterparties();
    assert_eq!(counterparties.len(), 1, "{counterparties:#?}");
    assert_eq!(
        counterparties[0]["name"],
        "Заказ по звонку из Calltouch с номера +79161234567"
    );
    assert_eq!(counterparties[0]["phone"], "+79161234567");
    let orders = moysklad.orders();
    assert_eq!(orders.len(), 1, "{orders:#?}");
    let order_id = orders[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        moysklad.order_state_name(&order_id).as_deref(),
        Some("Новый")
    );
    assert!(
        orders[0]["agent"]["meta"]["href"]
            .as_str()
            .unwrap()
            .ends_with(counterparties[0]["id"].as_str().unwrap())
    );
    assert_eq!(
        moysklad.order_attribute(&order_id, "utm_source"),
        Some(json!("yandex"))
    );
    assert_eq!(
        moysklad.order_attribute(&order_id, "Теги"),
        Some(json!("Лид|Целевой"))
    );
    assert_eq!(
        moysklad.order_attribute(&order_id, "Google Client ID"),
        Some(json!("GA1.2.3"))
    );
    let deals = calltouch.deals();
    assert_eq!(deals.len(), 1, "{deals:#?}");
    assert_eq!(deals[0]["orderNumber"], "ct-call-1001");
    assert_eq!(deals[0]["status"], "PENDING");

    // Back-sync: the order changes in MoySklad, MoySklad posts its webhook
    // (`?requestId=`), and the deal's status follows.
    moysklad.set_order_state(&order_id, "Подтвержден").unwrap();
    moysklad.set_order_paid(&order_id, 150_000.0).unwrap();
    let payload = moysklad.webhook_payload(&order_id, "UPDATE");
    let delivery = hook_request("POST", &ms_hook)
        .query("requestId", &uuid_v4())
        .header("user-agent", WEBHOOK_USER_AGENT)
        .json(&payload);
    let (status, accepted) = http(&webhook, delivery).await;
    assert_eq!(status, 200, "MoySklad needs 200 or 204: {accepted}");
    let routed = routing.take(1).await.remove(0);
    assert_eq!(routed["detail"]["app"], "moysklad", "{routed:#}");
    let reply = dispatch(&dispatcher, &routed).await;
    let statuses: Vec<(String, String)> = reply["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["automation"].as_str().unwrap_or_default().to_owned(),
                r["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(
        statuses.contains(&(
            "moysklad-order-to-calltouch-deal".into(),
            "succeeded".into()
        )),
        "{reply:#}"
    );
    assert!(
        statuses.contains(&(
            "moysklad-order-complete-to-calltouch".into(),
            "filtered".into()
        )),
        "{reply:#}"
    );
    assert_eq!(
        calltouch.deal("ct-call-1001").unwrap()["status"],
        "Подтвержден"
    );
    assert_eq!(calltouch.deals().len(), 1);

    // The tick finds nothing to poll (MoySklad has webhooks here) and the
    // run log shows the three runs.
    let tick_event: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../events/tick.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let ticked = tick.invoke(tick_event).await.unwrap();
    assert!(
        ticked["sources"].is_array() && ticked["published"].is_u64(),
        "{ticked}"
    );
    let (status, listing) = http(
        &admin,
        admin_request("GET", "/v1/runs?limit=200", &owner_key),
    )
    .await;
    assert_eq!(status, 200, "{listing}");
    let items = listing["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{listing:#}");
    let mut listed: Vec<(String, String)> = items
        .iter()
        .map(|r| {
            (
                r["automation"].as_str().unwrap_or_default().to_owned(),
                r["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            (
                "calltouch-call-to-moysklad".to_owned(),
                "succeeded".to_owned()
            ),
            (
                "moysklad-order-complete-to-calltouch".to_owned(),
                "filtered".to_owned()
            ),
            (
                "moysklad-order-to-calltouch-deal".to_owned(),
                "succeeded".to_owned()
            ),
        ]
    );
    let (status, denied) = http(&admin, admin_request("GET", "/v1/runs", "cbk_wrong")).await;
    assert_eq!(status, 401, "{denied}");

    for function in [&admin, &webhook, &dispatcher, &tick] {
        println!(
            "{}: init {:?}, invocations {:?}",
            function.name(),
            function.init_duration().unwrap(),
            function.invocation_durations()
        );
        assert!(function.last_invocation_duration().is_some());
    }
}
