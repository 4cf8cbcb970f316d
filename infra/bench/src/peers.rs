//! The peers' workload, as Node-RED and n8n are measured: webhook JSON →
//! six fields mapped → one `http.request.send` POST to a local receiver
//! that counts what arrives. Through `crmbridge serve` (release, fsync on).
//!
//! Reported: accepted/s, completed/s (counted at the receiver), the
//! webhook answer p50/p99, webhook → receiver p50/p99, CPU ms per event,
//! peak RSS, and what was lost or doubled. `--rate` paces the senders
//! (open loop) to measure the answer latency at a given arrival rate.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde::Serialize;
use serde_json::json;

use crate::load::{percentile, proc_stat};

#[derive(Debug, Clone, Serialize)]
pub struct PeersReport {
    pub workers: usize,
    pub concurrency: usize,
    pub rate_per_s: Option<f64>,
    pub duration_s: f64,
    pub accepted: u64,
    pub accepted_per_s: f64,
    pub completed: u64,
    /// Completed while the load ran and until the backlog drained.
    pub completed_per_s: f64,
    /// Completed during the load only.
    pub completed_during_load_per_s: f64,
    pub lost: u64,
    /// POSTs beyond the first for one order (resends under the same key
    /// are counted too: the receiver here does not de-duplicate).
    pub doubled: u64,
    pub webhook_p50_ms: f64,
    pub webhook_p99_ms: f64,
    pub end_to_end_p50_ms: f64,
    pub end_to_end_p99_ms: f64,
    pub peak_rss_kib: u64,
    pub cpu_ms_per_event: f64,
    /// This process's CPU per event: the senders and the receiver share
    /// the machine with serve, and what they take serve cannot use.
    pub harness_cpu_ms_per_event: f64,
}

/// What the receiver saw: order → (first arrival, POSTs).
#[derive(Default)]
struct Arrivals {
    seen: Mutex<HashMap<String, (Instant, u32)>>,
    during_load: AtomicU64,
    load_over: std::sync::atomic::AtomicBool,
}

/// The one field the receiver reads.
#[derive(serde::Deserialize)]
struct Posted<'a> {
    #[serde(borrow)]
    order: std::borrow::Cow<'a, str>,
}

async fn receive(
    State(arrivals): State<Arc<Arrivals>>,
    body: bytes::Bytes,
) -> (
    StatusCode,
    [(axum::http::HeaderName, &'static str); 1],
    String,
) {
    let order = serde_json::from_slice::<Posted<'_>>(&body)
        .map(|posted| posted.order.into_owned())
        .unwrap_or_default();
    let number = {
        let mut seen = arrivals.seen.lock().unwrap_or_else(|p| p.into_inner());
        let entry = seen.entry(order).or_insert((Instant::now(), 0));
        entry.1 += 1;
        if entry.1 == 1 && !arrivals.load_over.load(Ordering::Relaxed) {
            arrivals.during_load.fetch_add(1, Ordering::Relaxed);
        }
        seen.len()
    };
    (
        StatusCode::CREATED,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"id":"r{number}"}}"#),
    )
}

/// One sender's HTTP/1.1 connection to serve (kept alive, as wrk's are).
struct Lane {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    authority: String,
    path: String,
}

impl Lane {
    async fn connect(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow::anyhow!("not an http:// URL: {url}"))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let stream = tokio::net::TcpStream::connect(authority).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Self {
            sender,
            authority: authority.to_owned(),
            path: path.to_owned(),
        })
    }

    /// POSTs a JSON body; the answer's status once its body is read.
    async fn post(&mut self, body: String) -> anyhow::Result<u16> {
        use http_body_util::BodyExt as _;
        let request = hyper::Request::post(self.path.as_str())
            .header(hyper::header::HOST, self.authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        response.into_body().collect().await?;
        Ok(status)
    }
}

pub struct PeersArgs {
    pub workers: usize,
    pub concurrency: usize,
    pub duration: Duration,
    pub rate: Option<f64>,
}

pub async fn run(serve_binary: &Path, args: PeersArgs) -> anyhow::Result<PeersReport> {
    let arrivals = Arc::new(Arrivals::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let receiver_url = format!("http://{}", listener.local_addr()?);
    let app = axum::Router::new()
        .route("/orders", post(receive))
        .with_state(Arc::clone(&arrivals));
    let receiver = tokio::spawn(async move { axum::serve(listener, app).await });

    let server = crate::serve::spawn(serve_binary, args.workers)?;
    let (base, pid) = (server.base.clone(), server.pid);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency * 2)
        .build()?;
    let source = server
        .admin(
            &http,
            "/v1/connections",
            json!({"app": "generic", "name": "shop",
        "settings": {"event_id_pointer": "/id", "kind": "order.created"}}),
        )
        .await?;
    let out = server
        .admin(
            &http,
            "/v1/connections",
            json!({"app": "http", "name": "receiver",
        "settings": {"base_url": receiver_url, "requests_per_second": 100000, "parallel": 256}}),
        )
        .await?;
    server.admin(&http, "/v1/automations", json!({"id": "peers", "name": "webhook → POST",
        "trigger": {"connection": source["id"], "event": "generic.order.created"},
        "steps": [{"id": "post", "action": "http.request.send", "connection": out["id"],
            "fields": {"url": "/orders", "json": {
                "order": "{{ event.id }}", "name": "{{ event.customer.name }}",
                "email": "{{ event.customer.email | lower }}", "phone": "{{ event.customer.phone }}",
                "sum": "{{ event.sum }}", "currency": "{{ event.currency | default('RUB') }}"}}}]})).await?;
    let hook = format!(
        "{base}{}",
        source["webhook_path"].as_str().unwrap_or_default()
    );

    let (_, cpu_before) = proc_stat(pid);
    let (_, harness_cpu_before) = proc_stat(std::process::id());
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let answers: Arc<Mutex<Vec<f64>>> = Arc::default();
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let stop_at = started + args.duration;
    // With a rate, each sender keeps its share of a fixed schedule.
    let interval = args
        .rate
        .map(|rate| Duration::from_secs_f64(args.concurrency as f64 / rate));
    let mut senders = Vec::new();
    for lane in 0..args.concurrency {
        let (hook, sent, answers, accepted, counter) = (
            hook.clone(),
            Arc::clone(&sent),
            Arc::clone(&answers),
            Arc::clone(&accepted),
            Arc::clone(&counter),
        );
        let mut lane_connection = Lane::connect(&hook).await?;
        senders.push(tokio::spawn(async move {
            let mut next = started
                + interval.map_or(Duration::ZERO, |i| {
                    i.mul_f64(lane as f64 / args.concurrency as f64)
                });
            while Instant::now() < stop_at {
                if let Some(interval) = interval {
                    tokio::time::sleep_until(next.into()).await;
                    next += interval;
                }
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let id = format!("O-{n}");
                let body = format!(
                    r#"{{"id":"{id}","sum":{},"customer":{{"name":"Buyer {n}","email":"Buyer{n}@Example.com","phone":"+79161234567"}}}}"#,
                    100 + n % 900
                );
                let t0 = Instant::now();
                sent.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id, t0);
                let status = match lane_connection.post(body).await {
                    Ok(status) => status,
                    // A connection closed under load: a new one, as wrk does.
                    Err(_) => match Lane::connect(&hook).await {
                        Ok(fresh) => {
                            lane_connection = fresh;
                            continue;
                        }
                        Err(_) => continue,
                    },
                };
                let elapsed = t0.elapsed().as_secs_f64() * 1000.0;
                if status == 202 {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    answers
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(elapsed);
                }
            }
        }));
    }
    for sender in senders {
        sender.await?;
    }
    arrivals.load_over.store(true, Ordering::Relaxed);
    let load_s = started.elapsed().as_secs_f64();
    let accepted = accepted.load(Ordering::Relaxed);
    let drain_deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let seen = arrivals
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len() as u64;
        if seen >= accepted {
            break;
        }
        anyhow::ensure!(
            Instant::now() < drain_deadline,
            "only {seen} of {accepted} automations completed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total_s = started.elapsed().as_secs_f64();
    let (rss, cpu_after) = proc_stat(pid);
    let (_, harness_cpu_after) = proc_stat(std::process::id());
    drop(server);
    receiver.abort();

    let seen = arrivals.seen.lock().unwrap_or_else(|p| p.into_inner());
    let sent = sent.lock().unwrap_or_else(|p| p.into_inner());
    let mut end_to_end: Vec<f64> = seen
        .iter()
        .filter_map(|(order, (at, _))| {
            sent.get(order)
                .map(|t0| at.duration_since(*t0).as_secs_f64() * 1000.0)
        })
        .collect();
    end_to_end.sort_by(f64::total_cmp);
    let mut answers = answers.lock().unwrap_or_else(|p| p.into_inner()).clone();
    answers.sort_by(f64::total_cmp);
    let completed = seen.len() as u64;
    let doubled: u64 = seen
        .values()
        .map(|(_, n)| u64::from(n.saturating_sub(1)))
        .sum();
    Ok(PeersReport {
        workers: args.workers,
        concurrency: args.concurrency,
        rate_per_s: args.rate,
        duration_s: load_s,
        accepted,
        accepted_per_s: accepted as f64 / load_s,
        completed,
        completed_per_s: completed as f64 / total_s,
        completed_during_load_per_s: arrivals.during_load.load(Ordering::Relaxed) as f64 / load_s,
        lost: accepted.saturating_sub(completed),
        doubled,
        webhook_p50_ms: percentile(&answers, 0.5),
        webhook_p99_ms: percentile(&answers, 0.99),
        end_to_end_p50_ms: percentile(&end_to_end, 0.5),
        end_to_end_p99_ms: percentile(&end_to_end, 0.99),
        peak_rss_kib: rss,
        cpu_ms_per_event: (cpu_after - cpu_before) * 1000.0 / accepted.max(1) as f64,
        harness_cpu_ms_per_event: (harness_cpu_after - harness_cpu_before) * 1000.0
            / accepted.max(1) as f64,
    })
}
