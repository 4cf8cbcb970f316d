//! Running the real `crmbridge serve` binary from tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

pub struct Server {
    pub child: Child,
    pub base: String,
    pub owner_key: Option<String>,
    /// Everything the server printed after its banner (its log lines).
    pub logs: Arc<Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
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
