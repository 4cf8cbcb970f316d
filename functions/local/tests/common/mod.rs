//! Running the real `crmbridge serve` binary from tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Server {
    pub child: Child,
    pub base: String,
    pub owner_key: Option<String>,
    /// Everything the server printed after its banner (its log lines).
    pub logs: Arc<Mutex<String>>,
}

/// Server log lines quoted when a test fails.
const LOG_LINES_QUOTED: usize = 300;

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failed test shows what the server logged before it.
            let logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
            let lines: Vec<&str> = logs.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_LINES_QUOTED)..];
            eprintln!("--- the server's last log lines ---\n{}", tail.join("\n"));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary and reads its banner for the URL (and, on a first
/// start, the owner key).
pub fn serve(data_dir: &Path, workers: usize) -> Server {
    serve_with(data_dir, workers, &[])
}

pub fn serve_with(data_dir: &Path, workers: usize, extra: &[&str]) -> Server {
    serve_logging(data_dir, workers, extra, "warn")
}

/// Like [`serve_with`], with `CRMBRIDGE_LOG` set to `log`.
#[allow(clippy::zombie_processes)] // Server's Drop kills and waits
pub fn serve_logging(data_dir: &Path, workers: usize, extra: &[&str], log: &str) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crmbridge"))
        .args([
            "serve",
            "--port",
            "0",
            "--workers",
            &workers.to_string(),
            "--data-dir",
        ])
        .arg(data_dir)
        .args(extra)
        .env("CRMBRIDGE_LOG", log)
        .env_remove("CRMBRIDGE_ENCRYPTION_KEYS")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut owner_key = None;
    let mut before_banner = String::new();
    loop {
        let line = lines
            .next()
            .expect("serve exited before listening")
            .unwrap();
        before_banner.push_str(&line);
        before_banner.push('\n');
        if let Some(key) = line.strip_prefix("owner API key (shown once, store it now): ") {
            owner_key = Some(key.to_owned());
        }
        if let Some(url) = line.strip_prefix("crmbridge listening on ") {
            // Keep draining stdout so the child never blocks on a full pipe;
            // the logs are kept for tests that check what was logged.
            let logs = Arc::new(Mutex::new(before_banner));
            let sink = Arc::clone(&logs);
            std::thread::spawn(move || {
                for line in lines.by_ref().map_while(Result::ok) {
                    let mut logs = sink.lock().unwrap();
                    logs.push_str(&line);
                    logs.push('\n');
                }
            });
            return Server {
                child,
                base: url.to_owned(),
                owner_key,
                logs,
            };
        }
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub async fn runs(server: &Server, key: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut request = client()
            .get(format!("{}/v1/runs", server.base))
            .bearer_auth(key)
            .query(&[("limit", "200")]);
        if let Some(cursor) = &cursor {
            request = request.query(&[("cursor", cursor)]);
        }
        let page: Value = request.send().await.unwrap().json().await.unwrap();
        all.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return all,
        }
    }
}

/// The interval of a poll-with-deadline loop (the condition is what the
/// test waits on; this only keeps the loop from spinning a core).
/// `GET {base}{path}` with the key, as JSON.
pub async fn get_json(server: &Server, key: &str, path: &str) -> Value {
    client()
        .get(format!("{}{path}", server.base))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub async fn pause() {
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// The Python of the test tools (infra/test.sh installs them into
/// .tools/venv, the `standardwebhooks` reference implementation among them).
pub fn python() -> std::path::PathBuf {
    let venv =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run `bash infra/test.sh` once (it installs the test tools, standardwebhooks among them)",
        venv.display()
    );
    venv
}

/// A webhook delivery as a test sends it, and as a dry run takes it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub content_type: String,
    pub body: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
}

impl Delivery {
    pub fn form(pairs: &[(&str, &str)]) -> Self {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        Self {
            content_type: "application/x-www-form-urlencoded".into(),
            body,
            query: String::new(),
            headers: Vec::new(),
        }
    }

    pub fn json(value: &Value) -> Self {
        Self {
            content_type: "application/json".into(),
            body: value.to_string(),
            query: String::new(),
            headers: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The `delivery` of a dry run.
    pub fn sample(&self) -> Value {
        let headers: serde_json::Map<String, Value> = self
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        serde_json::json!({"body": self.body, "content_type": self.content_type,
                           "query": self.query, "headers": headers})
    }

    /// Sends it to `url` (a webhook path's full URL).
    pub async fn send(&self, url: &str) -> reqwest::Response {
        let url = if self.query.is_empty() {
            url.to_owned()
        } else {
            format!("{url}?{}", self.query)
        };
        let mut request = client()
            .post(url)
            .header("content-type", &self.content_type)
            .body(self.body.clone());
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        request.send().await.unwrap()
    }
}

/// The dry run of `automation` (`body`: the sample and options); checks it
/// answered 200 and wrote nothing: `writes()` (the vendors' count of write
/// requests) is the same after it.
pub async fn dry_run(
    server: &Server,
    key: &str,
    automation: &str,
    body: Value,
    writes: impl Fn() -> usize,
) -> Value {
    let before = writes();
    let response = client()
        .post(format!("{}/v1/automations/{automation}/test", server.base))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let plan: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{plan:#}");
    assert_eq!(writes(), before, "the dry run wrote to a vendor: {plan:#}");
    assert_eq!(plan["vendor_writes"], 0, "{plan:#}");
    plan
}

/// Replaces each `<steps.{step}.{field}>` placeholder of a plan with what
/// the run's step put out.
fn fill_placeholders(value: &Value, outputs: &std::collections::BTreeMap<String, Value>) -> Value {
    match value {
        Value::String(text) if text.contains("<steps.") => {
            let mut out = String::new();
            let mut rest = text.as_str();
            while let Some(start) = rest.find("<steps.") {
                out.push_str(&rest[..start]);
                let end = start + rest[start..].find('>').unwrap();
                let path = &rest[start + "<steps.".len()..end];
                let (step, field) = path.split_once('.').unwrap();
                let found = &outputs[step][field];
                match found {
                    Value::String(s) => out.push_str(s),
                    other => out.push_str(&other.to_string()),
                }
                rest = &rest[end + 1..];
            }
            out.push_str(rest);
            Value::String(out)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| fill_placeholders(v, outputs))
                .collect(),
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), fill_placeholders(v, outputs)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Checks that `run` (from `GET /v1/runs/{id}`) sent what `plan` said:
/// the same steps called, each with the same action, connection, target
/// and fields (placeholders standing for the run's own outputs), and the
/// same steps skipped. Returns how many calls were compared.
pub fn assert_plan_matches(plan: &Value, run: &Value) -> usize {
    let steps = run["steps"].as_array().unwrap();
    let outputs: std::collections::BTreeMap<String, Value> = steps
        .iter()
        .map(|s| (s["id"].as_str().unwrap().to_owned(), s["output"].clone()))
        .collect();
    let mut compared = 0;
    for planned in plan["steps"].as_array().unwrap() {
        let id = planned["id"].as_str().unwrap();
        let real = steps.iter().find(|s| s["id"] == id);
        match planned["plan"].as_str().unwrap() {
            "call" => {
                let real = real.unwrap_or_else(|| panic!("step {id} planned, not run: {run:#}"));
                assert_eq!(real["status"], "succeeded", "{real:#}");
                let want = fill_placeholders(&planned["request"], &outputs);
                for part in ["action", "connection", "target", "fields", "link"] {
                    assert_eq!(
                        want[part], real["request"][part],
                        "step {id}: the {part} planned and sent differ\nplan: {planned:#}\nrun: {real:#}"
                    );
                }
                assert_eq!(
                    want["dedupe"]["lookup"], real["request"]["dedupe"]["lookup"],
                    "step {id}: the look-up keys planned and used differ"
                );
                compared += 1;
            }
            "skip" => {
                if let Some(real) = real {
                    assert_eq!(real["status"], "skipped", "step {id}: {real:#}");
                }
            }
            other => panic!("step {id} planned as {other}: {planned:#}"),
        }
    }
    let called = steps.iter().filter(|s| s["status"] == "succeeded").count();
    assert_eq!(
        compared, called,
        "the run called steps the plan did not: {run:#}\nplan: {plan:#}"
    );
    compared
}

/// POSTs an admin request; asserts a 2xx and returns the body.
pub async fn post_json(base: &str, key: &str, path: &str, body: Value) -> Value {
    let response = client()
        .post(format!("{base}{path}"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {body}");
    body
}

/// Every run with this status (all pages).
pub async fn runs_with(base: &str, key: &str, status: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut request = client()
            .get(format!("{base}/v1/runs"))
            .bearer_auth(key)
            .query(&[("limit", "200"), ("status", status)]);
        if let Some(cursor) = &cursor {
            request = request.query(&[("cursor", cursor)]);
        }
        let page: Value = request.send().await.unwrap().json().await.unwrap();
        let Some(items) = page["items"].as_array() else {
            panic!("listing {status} runs: {page}");
        };
        all.extend(items.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return all,
        }
    }
}

/// Posts one delivery until the server takes it (2xx), through restarts:
/// what a vendor's retry does. `base` follows the current server.
pub async fn deliver(base: &RwLock<String>, hook_path: &str, body: String) -> u16 {
    let http = client();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let url = format!("{}{hook_path}", base.read().unwrap());
        if let Ok(response) = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .timeout(Duration::from_secs(10))
            .send()
            .await
        {
            let status = response.status().as_u16();
            if (200..300).contains(&status) {
                return status;
            }
            // 503 = the copy before us is still being accepted: retry.
            assert!(status >= 500, "delivery refused with {status}");
        }
        assert!(Instant::now() < deadline, "a delivery was never accepted");
        pause().await;
    }
}
