//! The load benchmark: `crmbridge serve` (release build, production
//! durability) running the Calltouch → MoySklad recipe for many
//! connection pairs against the in-process fakes, driven at a fixed
//! concurrency for a fixed time by a loopback load generator.
//!
//! Vendor rate limits are per connection (Calltouch 5 requests/s, MoySklad
//! 45 per 3 s), so one connection pair can never complete more than ~5
//! automations a second; the benchmark spreads calls over `pairs`
//! connection pairs, as a deployment with many tenants would.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crmbridge_fakes::vendors::calltouch::FakeCalltouch;
use crmbridge_fakes::vendors::moysklad::FakeMoySklad;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub pairs: usize,
    pub concurrency: usize,
    pub duration_s: f64,
    pub accepted: u64,
    pub accepted_per_s: f64,
    pub completed: u64,
    pub completed_per_s: f64,
    pub webhook_p50_ms: f64,
    pub webhook_p99_ms: f64,
    pub end_to_end_p50_ms: f64,
    pub end_to_end_p99_ms: f64,
    pub peak_rss_kib: u64,
    pub cpu_seconds: f64,
    pub cpu_seconds_per_1000_events: f64,
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub(crate) fn proc_stat(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces).
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    (rss, ticks / 100.0)
}

pub async fn run(
    serve_binary: &Path,
    pairs: usize,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<LoadReport> {
    let calltouch = FakeCalltouch::start("ct-load", "1").await?;
    let moysklad = FakeMoySklad::start("ms-load").await?;
    // The fake must not be the limit: our own per-connection limiter is.
    moysklad.set_rate_limit(None);
    let server = crate::serve::spawn(serve_binary, 16)?;
    let (base, key, pid) = (server.base.clone(), server.key.clone(), server.pid);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency * 2)
        .build()?;

    // Connection pairs, each with bundle 1 of the recipe.
    let recipe: Value =
        serde_yaml::from_str(include_str!("../../../recipes/calltouch-moysklad.yaml"))?;
    let bundle = recipe["automations"][0].clone();
    let mut hooks = Vec::new();
    for i in 0..pairs {
        let ct: Value = http
            .post(format!("{base}/v1/connections"))
            .bearer_auth(&key)
            .json(&json!({"app": "calltouch", "name": format!("ct{i}"), "settings": {"site_id": "1", "base_url": calltouch.base_url(), "default_region": "RU"}, "credentials": {"access_token": "ct-load"}}))
            .send()
            .await?
            .json()
            .await?;
        let ms: Value = http
            .post(format!("{base}/v1/connections"))
            .bearer_auth(&key)
            .json(&json!({"app": "moysklad", "name": format!("ms{i}"), "settings": {"base_url": moysklad.base_url(), "default_region": "RU"}, "credentials": {"token": "ms-load"}}))
            .send()
            .await?
            .json()
            .await?;
        let mut automation = bundle.clone();
        automation["id"] = format!("bench-{i}").into();
        automation["trigger"]["connection"] = ct["id"].clone();
        for step in automation["steps"].as_array_mut().into_iter().flatten() {
            step["connection"] = if step["action"]
                .as_str()
                .unwrap_or("")
                .starts_with("calltouch")
            {
                ct["id"].clone()
            } else {
                ms["id"].clone()
            };
        }
        let response = http
            .post(format!("{base}/v1/automations"))
            .bearer_auth(&key)
            .json(&automation)
            .send()
            .await?;
        anyhow::ensure!(
            response.status() == 201,
            "automation {i}: {}",
            response.text().await?
        );
        hooks.push(format!(
            "{base}{}",
            ct["webhook_path"].as_str().unwrap_or_default()
        ));
    }

    let (_, cpu_before) = proc_stat(pid);
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let stop_at = started + duration;
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (http, hooks, sent, latencies, accepted, counter) = (
            http.clone(),
            hooks.clone(),
            Arc::clone(&sent),
            Arc::clone(&latencies),
            Arc::clone(&accepted),
            Arc::clone(&counter),
        );
        workers.push(tokio::spawn(async move {
            while Instant::now() < stop_at {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let hook = &hooks[(n as usize) % hooks.len()];
                let call_id = (1_000_000 + n).to_string();
                let phone = format!("7916{:07}", n % 5000);
                let t0 = Instant::now();
                let response = http
                    .post(hook)
                    .form(&[
                        ("callId", call_id.as_str()),
                        ("callerphone", phone.as_str()),
                        ("utm_source", "bench"),
                    ])
                    .send()
                    .await;
                let elapsed = t0.elapsed().as_secs_f64() * 1000.0;
                if response.is_ok_and(|r| r.status().as_u16() == 202) {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    latencies.lock().await.push(elapsed);
                    sent.lock().await.insert(format!("ct-call-{call_id}"), t0);
                }
            }
        }));
    }
    // Watch completions (an order at the fake, carrying the deal number)
    // while the load runs and until everything accepted is done.
    let mut completed_at: HashMap<String, Instant> = HashMap::new();
    let mut seen = 0usize;
    let drain_deadline = stop_at + Duration::from_secs(600);
    loop {
        let orders = moysklad.orders();
        let now = Instant::now();
        // The fake lists orders in creation order: only the new tail matters.
        for order in orders.iter().skip(seen) {
            if let Some(code) = order["externalCode"].as_str() {
                completed_at.entry(code.to_owned()).or_insert(now);
            }
        }
        seen = orders.len();
        let done = workers.iter().all(|w| w.is_finished());
        if done && completed_at.len() as u64 >= accepted.load(Ordering::SeqCst) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < drain_deadline,
            "only {} of {} automations completed",
            completed_at.len(),
            accepted.load(Ordering::SeqCst)
        );
        // Reading the fake's orders copies them all; a scan every 200 ms
        // keeps the watcher from competing with the server it measures
        // (end-to-end latencies are therefore ±200 ms).
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let finished = Instant::now();
    let (rss, cpu_after) = proc_stat(pid);
    drop(server);

    let sent = sent.lock().await;
    let mut end_to_end: Vec<f64> = completed_at
        .iter()
        .filter_map(|(code, done)| {
            sent.get(code)
                .map(|t0| done.duration_since(*t0).as_secs_f64() * 1000.0)
        })
        .collect();
    end_to_end.sort_by(|a, b| a.total_cmp(b));
    let mut webhook = latencies.lock().await.clone();
    webhook.sort_by(|a, b| a.total_cmp(b));
    let accepted = accepted.load(Ordering::SeqCst);
    let load_s = duration.as_secs_f64();
    let total_s = finished.duration_since(started).as_secs_f64();
    let cpu = cpu_after - cpu_before;
    Ok(LoadReport {
        pairs,
        concurrency,
        duration_s: load_s,
        accepted,
        accepted_per_s: accepted as f64 / load_s,
        completed: completed_at.len() as u64,
        completed_per_s: completed_at.len() as f64 / total_s,
        webhook_p50_ms: percentile(&webhook, 0.5),
        webhook_p99_ms: percentile(&webhook, 0.99),
        end_to_end_p50_ms: percentile(&end_to_end, 0.5),
        end_to_end_p99_ms: percentile(&end_to_end, 0.99),
        peak_rss_kib: rss,
        cpu_seconds: cpu,
        cpu_seconds_per_1000_events: cpu / (accepted.max(1) as f64) * 1000.0,
    })
}
