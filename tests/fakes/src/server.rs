//! The HTTP plumbing shared by every fake: a raw hyper HTTP/1.1 server on
//! `127.0.0.1:0`, the request log, fault injection and in-flight counting.
//!
//! A vendor module implements [`Vendor`]; [`serve`] runs it. Every request is
//! read completely, recorded (credentials redacted), then checked against the
//! fault plan:
//!
//! * `ServerError`, `TooManyRequests`, `Drop` are applied **before** the vendor
//!   sees the request, so nothing changes and a retry is safe;
//! * `Slow(d)` lets the vendor handle the request (state changes happen at
//!   once), then waits `d` before writing the answer — a client that times out
//!   has therefore already had its write committed, deterministically;
//! * `DropAfterCommit` lets the vendor handle the request and then closes the
//!   connection without an answer (the write happened, the client never knew).
//!
//! Closing without a response is done by returning an error from the hyper
//! service, which makes hyper close the HTTP/1 connection without writing.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::FakeError;

/// A fault the fake injects instead of (or on top of) its normal answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// A vendor-shaped 5xx answer; nothing is changed.
    ServerError,
    /// 429 with the vendor's retry header and body; nothing is changed.
    TooManyRequests,
    /// The request is handled normally (its writes are committed at once),
    /// then the answer is held back for this long.
    Slow(Duration),
    /// The connection is closed without an answer; nothing is changed.
    Drop,
    /// The vendor's 429, but with this exact text in its retry header —
    /// `1e30`, `-5`, `soon`, an HTTP-date — as a misbehaving vendor or a
    /// proxy in between may send; nothing is changed.
    RetryAfterText(String),
    /// The request is handled (its writes are committed), then the connection
    /// is closed without an answer.
    DropAfterCommit,
    /// The request is handled normally (its writes are committed at once),
    /// then the answer is held back until the test opens the gate: a caller
    /// stopped in its vendor call for exactly as long as the test needs.
    HeldUntil(Gate),
}

/// A gate a held answer waits behind ([`Fault::HeldUntil`]); opening it
/// releases every answer held behind it, now and later.
#[derive(Debug, Clone)]
pub struct Gate(std::sync::Arc<tokio::sync::Semaphore>);

impl Gate {
    pub fn new() -> Self {
        Self(std::sync::Arc::new(tokio::sync::Semaphore::new(0)))
    }

    pub fn open(&self) {
        self.0.close();
    }

    async fn passed(&self) {
        // No permit is ever added: acquiring ends only when the gate closes
        // the semaphore, which `open` does.
        let _ = self.0.acquire().await;
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl PartialEq for Gate {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Gate {}

/// One request as the fake received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path, percent-decoding not applied (e.g. `/api/remap/1.2/entity/counterparty`).
    pub path: String,
    /// The raw query string without `?` (percent-encoded as sent); secret
    /// parameters (`apiKey`, `clientApiId`, …) have their value replaced by `***`.
    pub query: String,
    /// Header names lowercased, in arrival order; `authorization`, `x-api-key`,
    /// `access-token` values are replaced by `***`.
    pub headers: Vec<(String, String)>,
    /// The body as UTF-8 (lossy); secret form parameters redacted like the query.
    pub body: String,
    /// The fault injected into this request, if any (rate-limit answers that
    /// the vendor logic itself produced are not faults and show `None`).
    pub fault: Option<Fault>,
    /// When the fake received it: the gap between two requests shows how
    /// long a client waited before retrying.
    pub received_at: std::time::Instant,
    /// The status answered; `None` while being handled or when the
    /// connection was dropped without an answer.
    pub status: Option<u16>,
}

impl RecordedRequest {
    /// First value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The query string decoded into pairs.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.query.as_bytes())
            .into_owned()
            .collect()
    }

    /// First decoded value of a query parameter.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.body).ok()
    }

    /// The body decoded as `application/x-www-form-urlencoded` pairs.
    pub fn form_pairs(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.body.as_bytes())
            .into_owned()
            .collect()
    }
}

/// A request as handed to the vendor logic (full, unredacted).
#[derive(Debug, Clone)]
pub(crate) struct Req {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Requests being handled right now, this one included.
    pub in_flight: usize,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn query_pairs(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.query.as_bytes())
            .into_owned()
            .collect()
    }

    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    pub fn form_pairs(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(&self.body).into_owned().collect()
    }

    /// Path segments after `prefix` (which must match), without empty ones.
    pub fn segments_after(&self, prefix: &str) -> Option<Vec<String>> {
        let rest = self.path.strip_prefix(prefix)?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        Some(
            rest.split('/')
                .filter(|s| !s.is_empty())
                .map(percent_decode)
                .collect(),
        )
    }
}

/// Percent-decodes one path segment (`+` stays `+`, unlike in a query).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes.get(i), bytes.get(i + 1), bytes.get(i + 2)) {
            (Some(b'%'), Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                let v = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 3;
            }
            (Some(&b), _, _) => {
                out.push(b);
                i += 1;
            }
            (None, _, _) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An answer from the vendor logic.
#[derive(Debug, Clone)]
pub(crate) struct Resp {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn new(status: StatusCode) -> Self {
        Resp {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn json(status: StatusCode, value: &serde_json::Value) -> Self {
        let mut r = Resp::new(status);
        r.body = serde_json::to_vec(value).unwrap_or_default();
        r.with_header("content-type", "application/json;charset=utf-8")
    }

    pub fn with_header(mut self, name: &'static str, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((HeaderName::from_static(name), v));
        }
        self
    }
}

/// What a vendor module provides to the shared server.
pub(crate) trait Vendor: Send + Sync + 'static {
    /// Header names (lowercase) whose values are redacted in the log.
    fn secret_headers(&self) -> &'static [&'static str];
    /// Query / form parameter names whose values are redacted in the log.
    fn secret_params(&self) -> &'static [&'static str];
    /// The vendor's answer to an injected `ServerError` / `TooManyRequests`.
    fn fault_response(&self, fault: &Fault, req: &Req) -> Resp;
    /// The normal handling.
    fn handle(&self, req: &Req) -> Resp;
    /// The handling the server calls: by default [`Vendor::handle`]. A vendor
    /// whose answer needs outgoing I/O (Worksection's `add_webhook` probes
    /// the URL) overrides this; it must not hold a lock across an `.await`.
    fn handle_async<'a>(&'a self, req: &'a Req) -> BoxFuture<'a, Resp> {
        Box::pin(std::future::ready(self.handle(req)))
    }
}

/// A boxed, sendable future (what [`Vendor::handle_async`] returns).
pub(crate) type BoxFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

#[derive(Debug)]
struct RatePlan {
    rate: f64,
    kinds: Vec<Fault>,
    rng: StdRng,
}

#[derive(Debug)]
struct Queued {
    fault: Fault,
    method: Option<Method>,
    path_contains: Option<String>,
}

impl Queued {
    fn matches(&self, method: &Method, path: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method)
            && self
                .path_contains
                .as_deref()
                .is_none_or(|p| path.contains(p))
    }
}

#[derive(Debug, Default)]
struct FaultState {
    queue: VecDeque<Queued>,
    plan: Option<RatePlan>,
    injected: Vec<Fault>,
}

impl FaultState {
    fn next(&mut self, method: &Method, path: &str) -> Option<Fault> {
        let fault = if let Some(pos) = self.queue.iter().position(|q| q.matches(method, path)) {
            self.queue.remove(pos).map(|q| q.fault)
        } else if let Some(plan) = self.plan.as_mut() {
            let roll: f64 = plan.rng.random();
            if roll < plan.rate && !plan.kinds.is_empty() {
                let i = plan.rng.random_range(0..plan.kinds.len());
                plan.kinds.get(i).cloned()
            } else {
                None
            }
        } else {
            None
        };
        if let Some(f) = &fault {
            self.injected.push(f.clone());
        }
        fault
    }
}

/// State shared between a handle and its server task.
pub(crate) struct Shared {
    /// (arrival number, request): the number finds the entry again after
    /// `clear_requests` shifted the vector.
    log: Mutex<Vec<(u64, RecordedRequest)>>,
    seq: std::sync::atomic::AtomicU64,
    faults: Mutex<FaultState>,
    in_flight: AtomicUsize,
    in_flight_tx: watch::Sender<usize>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a fake's lock must not hide the state from the
    // test that wants to look at it: take the data anyway.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The running server: address, shared log and faults, and the task that
/// stops (with every open connection) when this is dropped.
pub(crate) struct Server {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish()
    }
}

impl Server {
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.log)
            .iter()
            .map(|(_, r)| r.clone())
            .collect()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.log).clear();
    }

    pub fn fail_next(&self, n: usize, fault: Fault) {
        self.fail_next_on(None, None, n, fault);
    }

    pub fn fail_next_on(
        &self,
        method: Option<Method>,
        path_contains: Option<&str>,
        n: usize,
        fault: Fault,
    ) {
        let mut f = lock(&self.shared.faults);
        for _ in 0..n {
            f.queue.push_back(Queued {
                fault: fault.clone(),
                method: method.clone(),
                path_contains: path_contains.map(str::to_owned),
            });
        }
    }

    pub fn set_fault_rate(&self, rate: f64, kinds: Vec<Fault>, seed: u64) {
        lock(&self.shared.faults).plan = Some(RatePlan {
            rate,
            kinds,
            rng: StdRng::seed_from_u64(seed),
        });
    }

    pub fn clear_faults(&self) {
        let mut f = lock(&self.shared.faults);
        f.queue.clear();
        f.plan = None;
    }

    pub fn injected_faults(&self) -> Vec<Fault> {
        lock(&self.shared.faults).injected.clone()
    }

    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    pub async fn wait_in_flight(&self, n: usize) {
        let mut rx = self.shared.in_flight_tx.subscribe();
        // The sender lives in `shared`, which we hold: this cannot fail.
        let _ = rx.wait_for(|v| *v >= n).await;
    }
}

/// Binds 127.0.0.1:0 and serves the vendor that `make` builds for the bound
/// address, until the returned [`Server`] drops.
pub(crate) async fn serve<V: Vendor>(
    make: impl FnOnce(SocketAddr) -> Arc<V>,
) -> Result<Server, FakeError> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(FakeError::Bind)?;
    let addr = listener.local_addr().map_err(FakeError::Bind)?;
    let vendor = make(addr);
    let (in_flight_tx, _) = watch::channel(0usize);
    let shared = Arc::new(Shared {
        log: Mutex::new(Vec::new()),
        seq: std::sync::atomic::AtomicU64::new(0),
        faults: Mutex::new(FaultState::default()),
        in_flight: AtomicUsize::new(0),
        in_flight_tx,
    });
    let task_shared = shared.clone();
    let task = tokio::spawn(async move {
        // Connections live in this set: aborting the accept task drops the
        // set, which aborts every connection with it.
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let vendor = vendor.clone();
                    let shared = task_shared.clone();
                    conns.spawn(async move {
                        let svc = service_fn(move |req| {
                            let vendor = vendor.clone();
                            let shared = shared.clone();
                            async move { handle(vendor, shared, req).await }
                        });
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    });
    Ok(Server { addr, shared, task })
}

/// Why a connection was closed without an answer.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fault injected: connection dropped")
    }
}

impl std::error::Error for Dropped {}

struct InFlight(Arc<Shared>);

impl InFlight {
    fn enter(shared: Arc<Shared>) -> (Self, usize) {
        let n = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.in_flight_tx.send_replace(n);
        (InFlight(shared), n)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let n = self.0.in_flight.fetch_sub(1, Ordering::SeqCst) - 1;
        self.0.in_flight_tx.send_replace(n);
    }
}

fn redact_pairs(raw: &str, secret: &[&str]) -> String {
    if !secret
        .iter()
        .any(|s| form_urlencoded::parse(raw.as_bytes()).any(|(k, _)| k == *s))
    {
        return raw.to_owned();
    }
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        if secret.contains(&k.as_ref()) {
            out.append_pair(&k, "***");
        } else {
            out.append_pair(&k, &v);
        }
    }
    out.finish()
}

async fn handle<V: Vendor>(
    vendor: Arc<V>,
    shared: Arc<Shared>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Dropped> {
    let (parts, body) = req.into_parts();
    let (_guard, in_flight) = InFlight::enter(shared.clone());
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(Dropped),
    };
    let req = Req {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        headers: parts.headers.clone(),
        body,
        in_flight,
    };
    // Matched against the path and the query: vendors that name the call
    // in the query (Worksection's `?action=post_task`) can be targeted too.
    let target = if req.query.is_empty() {
        req.path.clone()
    } else {
        format!("{}?{}", req.path, req.query)
    };
    let fault = lock(&shared.faults).next(&req.method, &target);

    let secret_headers = vendor.secret_headers();
    let secret_params = vendor.secret_params();
    let is_form = req
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
    let body_text = String::from_utf8_lossy(&req.body).into_owned();
    let seq = shared.seq.fetch_add(1, Ordering::SeqCst);
    {
        let mut log = lock(&shared.log);
        log.push((
            seq,
            RecordedRequest {
                received_at: std::time::Instant::now(),
                method: req.method.to_string(),
                path: req.path.clone(),
                query: redact_pairs(&req.query, secret_params),
                headers: req
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        let name = k.as_str().to_ascii_lowercase();
                        let value = if secret_headers.contains(&name.as_str()) {
                            "***".to_owned()
                        } else {
                            String::from_utf8_lossy(v.as_bytes()).into_owned()
                        };
                        (name, value)
                    })
                    .collect(),
                body: if is_form {
                    redact_pairs(&body_text, secret_params)
                } else {
                    body_text
                },
                fault: fault.clone(),
                status: None,
            },
        ));
    }

    let resp = match &fault {
        Some(Fault::Drop) => return Err(Dropped),
        Some(f @ (Fault::ServerError | Fault::TooManyRequests)) => vendor.fault_response(f, &req),
        Some(Fault::RetryAfterText(text)) => {
            let mut resp = vendor.fault_response(&Fault::TooManyRequests, &req);
            // Whichever retry header the vendor uses carries the text.
            let names: Vec<http::HeaderName> = resp
                .headers
                .iter()
                .map(|(name, _)| name.clone())
                .filter(|name| name.as_str().contains("retry-after"))
                .collect();
            resp.headers
                .retain(|(name, _)| !name.as_str().contains("retry-after"));
            let names = if names.is_empty() {
                vec![http::header::RETRY_AFTER]
            } else {
                names
            };
            for name in names {
                if let Ok(value) = http::HeaderValue::from_str(text) {
                    resp.headers.push((name, value));
                }
            }
            resp
        }
        Some(Fault::Slow(d)) => {
            let resp = vendor.handle_async(&req).await;
            tokio::time::sleep(*d).await;
            resp
        }
        Some(Fault::DropAfterCommit) => {
            let _ = vendor.handle_async(&req).await;
            return Err(Dropped);
        }
        Some(Fault::HeldUntil(gate)) => {
            let resp = vendor.handle_async(&req).await;
            gate.passed().await;
            resp
        }
        None => vendor.handle_async(&req).await,
    };
    if let Some((_, entry)) = lock(&shared.log).iter_mut().find(|(n, _)| *n == seq) {
        entry.status = Some(resp.status.as_u16());
    }
    Ok(to_hyper(resp))
}

fn to_hyper(resp: Resp) -> hyper::Response<Full<Bytes>> {
    let mut out = hyper::Response::new(Full::new(Bytes::from(resp.body)));
    *out.status_mut() = resp.status;
    for (k, v) in resp.headers {
        out.headers_mut().append(k, v);
    }
    out
}

/// The fault, request-log and concurrency methods every fake handle has;
/// they delegate to its `server` field.
macro_rules! common_methods {
    () => {
        /// Every request received so far, in arrival order (credentials redacted).
        pub fn requests(&self) -> Vec<$crate::RecordedRequest> {
            self.server.requests()
        }

        /// Forgets the request log.
        pub fn clear_requests(&self) {
            self.server.clear_requests()
        }

        /// The next `n` requests (any method and path) get `fault`.
        pub fn fail_next(&self, n: usize, fault: $crate::Fault) {
            self.server.fail_next(n, fault)
        }

        /// The next `n` requests whose method is `method` (`None` = any) and
        /// whose path (or `path?query`) contains `path_contains` get `fault`; other requests
        /// pass untouched. Queued faults are used before the random plan.
        pub fn fail_next_on(
            &self,
            method: Option<&str>,
            path_contains: &str,
            n: usize,
            fault: $crate::Fault,
        ) {
            let method = method.and_then(|m| http::Method::from_bytes(m.as_bytes()).ok());
            self.server
                .fail_next_on(method, Some(path_contains), n, fault)
        }

        /// From now on each request gets, with probability `rate`, one of
        /// `kinds` (picked uniformly), drawn from a generator seeded with
        /// `seed`: the same sequence of requests gets the same faults.
        pub fn set_fault_rate(&self, rate: f64, kinds: Vec<$crate::Fault>, seed: u64) {
            self.server.set_fault_rate(rate, kinds, seed)
        }

        /// Removes queued faults and the random plan.
        pub fn clear_faults(&self) {
            self.server.clear_faults()
        }

        /// How many faults were injected so far.
        pub fn fault_count(&self) -> usize {
            self.server.injected_faults().len()
        }

        /// The faults injected so far, in order.
        pub fn injected_faults(&self) -> Vec<$crate::Fault> {
            self.server.injected_faults()
        }

        /// Requests being handled right now (a `Slow` one counts until answered).
        pub fn in_flight(&self) -> usize {
            self.server.in_flight()
        }

        /// Resolves once at least `n` requests are being handled at the same
        /// time (use with `Fault::Slow` to line up concurrent requests).
        pub async fn wait_in_flight(&self, n: usize) {
            self.server.wait_in_flight(n).await
        }

        /// The socket address the fake listens on.
        pub fn addr(&self) -> std::net::SocketAddr {
            self.server.addr
        }
    };
}

pub(crate) use common_methods;
