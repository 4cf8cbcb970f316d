//! The one HTTP stack every connector uses to call a vendor.
//!
//! What it guarantees, so connectors do not each reinvent it:
//! - a timeout on every attempt;
//! - retries with exponential backoff and full jitter on timeouts, transport
//!   errors, 5xx and 429 — honouring the vendor's retry header (MoySklad's
//!   `X-Lognex-Retry-After` in milliseconds, `Retry-After` in seconds
//!   elsewhere). A request that is not idempotent is retried only when the
//!   vendor cannot have acted on it (429, or a connection that never
//!   opened); a create made idempotent by the vendor (MoySklad `syncId`,
//!   retailCRM `externalId`) is marked idempotent by its connector;
//! - a vendor's retry header never panics and never stalls a call: it is
//!   parsed tolerantly (garbage, negative and NaN values are ignored, an
//!   HTTP-date counts from now) and capped at [`MAX_VENDOR_WAIT`]; a vendor
//!   that asks for more than the policy's longest wait (`max_backoff`) gets
//!   no retry inside the call — the call fails at once as transient ("asked
//!   to wait N s"), and the step is retried later instead of a worker
//!   sleeping for hours;
//! - a rate limit (requests per window) and a parallel-request limit per
//!   connection, so one busy tenant cannot get another's account banned;
//! - credentials redacted from every error and log line;
//! - gzip (MoySklad refuses requests without `Accept-Encoding: gzip`).
//!
//! The limits are per process: on Lambda each container keeps its own, so
//! the effective limit is per container; the retry-on-429 path absorbs the
//! difference.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use reqwest::header::HeaderMap;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::public_address;

/// Which header a vendor uses to say how long to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryHeader {
    /// `Retry-After: <seconds>`.
    RetryAfterSeconds,
    /// MoySklad: `X-Lognex-Retry-After: <milliseconds>`.
    LognexMillis,
}

/// The longest wait any vendor answer can make crmbridge sleep before one
/// retry, whatever its retry header says (and whatever a policy's
/// `max_backoff`). Longer asks are not slept on: see [`VendorClient::send`].
pub const MAX_VENDOR_WAIT: Duration = Duration::from_secs(60);

/// What a retry header asked for, once read.
#[derive(Debug, Clone, Copy, PartialEq)]
enum RetryHint {
    /// Retry after this long (at most [`MAX_VENDOR_WAIT`]).
    Wait(Duration),
    /// More than [`MAX_VENDOR_WAIT`]: `secs` is what was asked (possibly
    /// infinite), kept only to say so in the error.
    TooLong { secs: f64 },
}

/// A vendor's limits and our retry policy towards it.
#[derive(Debug, Clone)]
pub struct VendorPolicy {
    pub vendor: &'static str,
    pub requests_per_window: usize,
    pub window: Duration,
    pub parallel: usize,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    pub retry_header: RetryHeader,
}

impl VendorPolicy {
    /// Defaults for a vendor with the given rate limit.
    pub fn new(
        vendor: &'static str,
        requests_per_window: usize,
        window: Duration,
        parallel: usize,
    ) -> Self {
        Self {
            vendor,
            requests_per_window,
            window,
            parallel,
            timeout: Duration::from_secs(20),
            max_attempts: 6,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(20),
            retry_header: RetryHeader::RetryAfterSeconds,
        }
    }
}

/// Whether repeating a request can have an effect twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// Reads, and writes the vendor de-duplicates (syncId, externalId, PUT).
    Idempotent,
    /// Creates without a vendor-side key: retried only when surely unseen.
    NotIdempotent,
}

/// A vendor's answer, whatever its status: connectors interpret 4xx bodies
/// (each vendor shapes errors differently).
#[derive(Debug, Clone)]
pub struct VendorResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// How many attempts it took (1 = first try).
    pub attempts: u32,
}

impl VendorResponse {
    pub fn json(&self) -> Result<serde_json::Value, VendorError> {
        serde_json::from_slice(&self.body).map_err(|err| VendorError::Decode {
            status: self.status,
            message: format!("the response is not JSON: {err}"),
        })
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VendorError {
    #[error("{vendor}: no answer after {attempts} attempt(s): {message}")]
    Unreachable {
        vendor: &'static str,
        attempts: u32,
        message: String,
    },
    #[error("{vendor}: HTTP {status} after {attempts} attempt(s): {body}")]
    Status {
        vendor: &'static str,
        status: u16,
        attempts: u32,
        body: String,
    },
    #[error("unexpected response (HTTP {status}): {message}")]
    Decode { status: u16, message: String },
    #[error("{vendor} rejected the request: {message}")]
    Rejected {
        vendor: &'static str,
        status: u16,
        message: String,
    },
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The vendor refused the connection's credentials (a wrong, revoked
    /// or missing API key): no retry helps until a person changes them, so
    /// the connection's health says so.
    #[error("{vendor} refused the credentials (HTTP {status}): {message}")]
    CredentialsRefused {
        vendor: &'static str,
        status: u16,
        message: String,
    },
}

impl VendorError {
    /// Worth retrying the whole step later (the vendor was unavailable),
    /// as opposed to a request the vendor will always refuse.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            // A refusal with a 5xx or 429 status (retailCRM's rate limit is a
            // 503 with `success:false`) is the vendor being unavailable, not
            // the request being wrong.
            Self::Status { status, .. } | Self::Rejected { status, .. } => {
                *status == 429 || *status >= 500
            }
            _ => false,
        }
    }
}

/// Sliding-window rate limiter plus a parallelism cap.
#[derive(Debug)]
struct Limiter {
    sent: Mutex<VecDeque<Instant>>,
    permits: Semaphore,
}

impl Limiter {
    fn new(parallel: usize) -> Self {
        Self {
            sent: Mutex::new(VecDeque::new()),
            permits: Semaphore::new(parallel.max(1)),
        }
    }

    /// Waits until one more request fits in the window, and records it.
    async fn admit(&self, limit: usize, window: Duration) {
        loop {
            let wait = {
                let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                while sent
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= window)
                {
                    sent.pop_front();
                }
                if sent.len() < limit.max(1) {
                    sent.push_back(now);
                    return;
                }
                sent.front()
                    .map(|oldest| window.saturating_sub(now.duration_since(*oldest)))
            };
            tokio::time::sleep(wait.unwrap_or(window)).await;
        }
    }
}

/// The shared client: one connection pool, one limiter per connection.
#[derive(Clone)]
pub struct VendorClient {
    /// Built on first use: building one loads and parses the system's
    /// certificate store, most of a Lambda function's start-up, and a
    /// function that calls no vendor (webhook, tick) never needs it.
    client: Arc<OnceLock<reqwest::Client>>,
    /// The stack for [`VendorRequest::public_only`] requests, whose URL a
    /// user chose: it connects only to public addresses and checks every
    /// redirect target. Built on first use, so a process that never makes
    /// such a request never pays for a second TLS setup.
    public: Arc<OnceLock<reqwest::Client>>,
    follow_redirects: bool,
    limiters: Arc<Mutex<HashMap<String, Arc<Limiter>>>>,
}

impl Default for VendorClient {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for VendorClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VendorClient").finish_non_exhaustive()
    }
}

/// One request to send: built fresh for every attempt.
#[derive(Debug, Clone)]
pub struct VendorRequest {
    pub method: reqwest::Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub idempotency: Idempotency,
    /// The URL is the user's choice, not a vendor's: connect only to public
    /// addresses (see [`crate::public_address`]).
    pub public_only: bool,
}

impl VendorRequest {
    pub fn get(url: impl Into<String>) -> Self {
        Self {
            method: reqwest::Method::GET,
            url: url.into(),
            headers: Vec::new(),
            body: None,
            idempotency: Idempotency::Idempotent,
            public_only: false,
        }
    }

    pub fn with_body(
        method: reqwest::Method,
        url: impl Into<String>,
        body: Vec<u8>,
        idempotency: Idempotency,
    ) -> Self {
        Self {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: Some(body),
            idempotency,
            public_only: false,
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// Sent only to a public address (outside test mode).
    pub fn public_only(mut self, public_only: bool) -> Self {
        self.public_only = public_only;
        self
    }
}

/// How many redirects a request to a user's URL follows.
const MAX_REDIRECTS: usize = 5;
/// The most of an answer read from a URL a user chose (the rest is cut).
pub const MAX_PUBLIC_BODY: usize = 1024 * 1024;

fn builder() -> reqwest::ClientBuilder {
    crate::tls::install_crypto_provider();
    reqwest::Client::builder()
        .gzip(true)
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("crmbridge/", env!("CARGO_PKG_VERSION")))
}

/// Removes every secret from a text before it reaches a log or an error.
pub fn redact(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(secret, "***");
    }
    out
}

pub(crate) fn truncate(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

impl VendorClient {
    /// Built once at start-up.
    pub fn new() -> Self {
        Self::with_redirects(true)
    }

    /// A client that never follows a redirect: for URLs a user gives
    /// (alert destinations), where the receiver's answer is all we want.
    pub fn without_redirects() -> Self {
        Self::with_redirects(false)
    }

    fn with_redirects(follow: bool) -> Self {
        Self {
            client: Arc::default(),
            public: Arc::default(),
            follow_redirects: follow,
            limiters: Arc::default(),
        }
    }

    /// The stack for requests to vendors' own APIs.
    fn vendor_client(&self) -> &reqwest::Client {
        self.client.get_or_init(|| {
            let policy = if self.follow_redirects {
                reqwest::redirect::Policy::default()
            } else {
                reqwest::redirect::Policy::none()
            };
            builder()
                .redirect(policy)
                .build()
                // Only a broken TLS backend fails here; the plain client
                // then fails the same way, loudly, on its first request.
                .unwrap_or_else(|_| reqwest::Client::new())
        })
    }

    /// The stack for requests whose URL a user chose.
    fn public_client(&self) -> &reqwest::Client {
        self.public.get_or_init(|| {
            let follow = self.follow_redirects;
            let redirects = reqwest::redirect::Policy::custom(move |attempt| {
                if !follow {
                    return attempt.stop();
                }
                if attempt.previous().len() >= MAX_REDIRECTS {
                    return attempt.error(public_address::NonPublicAddress(format!(
                        "more than {MAX_REDIRECTS} redirects"
                    )));
                }
                // Only within the same origin: the step's own headers, its
                // key and its signature must not reach another host.
                let same_origin = attempt
                    .previous()
                    .first()
                    .is_some_and(|first| first.origin() == attempt.url().origin());
                if !same_origin {
                    return attempt.stop();
                }
                match public_address::check_url(attempt.url(), false) {
                    Ok(()) => attempt.follow(),
                    Err(refused) => {
                        let host = attempt.url().host_str().unwrap_or("").to_owned();
                        attempt.error(public_address::NonPublicAddress(format!(
                            "redirected to {host}: {refused}"
                        )))
                    }
                }
            });
            builder()
                .redirect(redirects)
                // A proxy would resolve the name itself, past the guard.
                .no_proxy()
                .dns_resolver(Arc::new(public_address::PublicOnlyResolver))
                .build()
                .unwrap_or_else(|_| reqwest::Client::new())
        })
    }

    fn limiter(&self, connection: &str, policy: &VendorPolicy) -> Arc<Limiter> {
        let mut limiters = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(
            limiters
                .entry(connection.to_owned())
                .or_insert_with(|| Arc::new(Limiter::new(policy.parallel))),
        )
    }

    /// Sends a request with the policy's limits and retries. Returns the
    /// final response, success or not; `Err` only when no usable answer
    /// came (or a retryable status persisted past the last attempt).
    pub async fn send(
        &self,
        connection: &str,
        policy: &VendorPolicy,
        request: &VendorRequest,
        secrets: &[&str],
    ) -> Result<VendorResponse, VendorError> {
        if request.public_only {
            // IP literals never reach the resolver: check them here.
            let url = url::Url::parse(&request.url)
                .map_err(|err| VendorError::Invalid(format!("not a URL: {err}")))?;
            public_address::check_url(&url, false)
                .map_err(|refused| VendorError::Invalid(redact(&refused.0, secrets)))?;
        }
        let limiter = self.limiter(connection, policy);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = {
                let _permit = limiter
                    .permits
                    .acquire()
                    .await
                    .map_err(|_| VendorError::Invalid("limiter closed".into()))?;
                limiter
                    .admit(policy.requests_per_window, policy.window)
                    .await;
                self.attempt(policy, request).await
            };
            let (retry, wait_hint, failure) = match outcome {
                Ok(response) => {
                    let retryable = response.status == 429
                        || (response.status >= 500
                            && request.idempotency == Idempotency::Idempotent);
                    if !retryable {
                        return Ok(VendorResponse {
                            attempts: attempt,
                            ..response
                        });
                    }
                    let body = truncate(redact(&response.text(), secrets), 500);
                    let hint = retry_hint(&response.headers, policy.retry_header, Utc::now());
                    let longest = policy.max_backoff.min(MAX_VENDOR_WAIT);
                    let too_long = match hint {
                        Some(RetryHint::Wait(wait)) if wait > longest => Some(wait.as_secs_f64()),
                        Some(RetryHint::TooLong { secs }) => Some(secs),
                        _ => None,
                    };
                    if let Some(secs) = too_long {
                        // Sleeping that long would hold a worker (or a
                        // Lambda) for nothing, and retrying sooner only
                        // earns another refusal: fail now as transient so
                        // the step is retried later.
                        return Err(VendorError::Status {
                            vendor: policy.vendor,
                            status: response.status,
                            attempts: attempt,
                            body: format!(
                                "vendor asked to wait {} before retrying, longer than one call waits ({} s); retry later. {body}",
                                describe_wait(secs),
                                longest.as_secs()
                            ),
                        });
                    }
                    let hint = match hint {
                        Some(RetryHint::Wait(wait)) => Some(wait),
                        _ => None,
                    };
                    let failure = VendorError::Status {
                        vendor: policy.vendor,
                        status: response.status,
                        attempts: attempt,
                        body,
                    };
                    (true, hint, failure)
                }
                Err(err) => {
                    if let Some(refused) = public_address::refused_by_guard(&err) {
                        return Err(VendorError::Invalid(redact(&refused.0, secrets)));
                    }
                    // A request that never connected cannot have been seen.
                    let unseen = err.is_connect();
                    let retry = unseen || request.idempotency == Idempotency::Idempotent;
                    let message = redact(&error_chain(&err), secrets);
                    let failure = VendorError::Unreachable {
                        vendor: policy.vendor,
                        attempts: attempt,
                        message,
                    };
                    (retry, None, failure)
                }
            };
            if !retry || attempt >= policy.max_attempts {
                return Err(failure);
            }
            let backoff = policy
                .base_backoff
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(policy.max_backoff);
            // Full jitter, but never sooner than the vendor asked.
            let jittered =
                Duration::from_millis(rand::rng().random_range(0..=backoff.as_millis() as u64));
            let wait = wait_hint
                .map_or(jittered, |hint| hint.max(jittered))
                .min(policy.max_backoff);
            tracing::warn!(
                vendor = policy.vendor,
                connection,
                attempt,
                wait_ms = wait.as_millis() as u64,
                error = %failure,
                "vendor call failed; retrying"
            );
            tokio::time::sleep(wait).await;
        }
    }

    async fn attempt(
        &self,
        policy: &VendorPolicy,
        request: &VendorRequest,
    ) -> Result<VendorResponse, reqwest::Error> {
        let client = if request.public_only {
            self.public_client()
        } else {
            self.vendor_client()
        };
        let mut builder = client
            .request(request.method.clone(), &request.url)
            .timeout(policy.timeout);
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        if let Some(body) = &request.body {
            builder = builder.body(body.clone());
        }
        let mut response = builder.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = if request.public_only {
            // A URL a user chose may answer with anything, a decompression
            // bomb included: read at most MAX_PUBLIC_BODY, then stop.
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                if body.len() + chunk.len() > MAX_PUBLIC_BODY {
                    body.extend_from_slice(&chunk[..MAX_PUBLIC_BODY - body.len()]);
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            body
        } else {
            response.bytes().await?.to_vec()
        };
        Ok(VendorResponse {
            status,
            headers,
            body,
            attempts: 0,
        })
    }
}

fn error_chain(err: &reqwest::Error) -> String {
    let mut text = if err.is_timeout() {
        "timed out".to_owned()
    } else {
        err.to_string()
    };
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// Reads the policy's retry header. `None` when there is none or it says
/// nothing usable (`soon`, a negative number, NaN): the backoff applies.
/// `Retry-After` is seconds (decimals tolerated) or an HTTP-date, counted
/// from `now` (a date in the past means "now"); MoySklad's header is
/// milliseconds.
fn retry_hint(headers: &HeaderMap, kind: RetryHeader, now: DateTime<Utc>) -> Option<RetryHint> {
    let (name, millis) = match kind {
        RetryHeader::RetryAfterSeconds => ("retry-after", false),
        RetryHeader::LognexMillis => ("x-lognex-retry-after", true),
    };
    let text = headers.get(name)?.to_str().ok()?.trim();
    let secs = match text.parse::<f64>() {
        Ok(value) if millis => value / 1000.0,
        Ok(value) => value,
        Err(_) if !millis => {
            // An HTTP-date (IMF-fixdate is RFC 2822 with "GMT").
            let at = DateTime::parse_from_rfc2822(text).ok()?.with_timezone(&Utc);
            // Whole milliseconds: a date has no finer precision anyway. A
            // date already past means "retry now".
            ((at - now).num_milliseconds() as f64 / 1000.0).max(0.0)
        }
        Err(_) => return None,
    };
    hint_from_secs(secs)
}

/// A wait in seconds as a hint: `NaN` and negative numbers (other than a
/// date already past) say nothing; anything above [`MAX_VENDOR_WAIT`] —
/// `inf` and `1e30` included — is too long, never converted (that is
/// where `Duration::from_secs_f64` would panic).
fn hint_from_secs(secs: f64) -> Option<RetryHint> {
    if secs.is_nan() {
        return None;
    }
    if secs > MAX_VENDOR_WAIT.as_secs_f64() {
        return Some(RetryHint::TooLong { secs });
    }
    if secs < 0.0 {
        return None;
    }
    // In range 0..=60 and finite: the conversion cannot fail.
    Some(RetryHint::Wait(
        Duration::try_from_secs_f64(secs).unwrap_or(MAX_VENDOR_WAIT),
    ))
}

/// A requested wait for an error message, without absurd numbers.
fn describe_wait(secs: f64) -> String {
    const YEAR: f64 = 365.0 * 24.0 * 3600.0;
    if secs.is_finite() && secs < 100.0 * YEAR {
        format!("{} s", secs.ceil() as u64)
    } else {
        "an unbounded time".to_owned()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::Router;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::{get, post};
    use std::sync::atomic::{AtomicU32, Ordering};

    async fn server(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        format!("http://{addr}")
    }

    fn fast(vendor: &'static str) -> VendorPolicy {
        VendorPolicy {
            base_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(50),
            timeout: Duration::from_millis(300),
            ..VendorPolicy::new(vendor, 1000, Duration::from_secs(1), 5)
        }
    }

    #[tokio::test]
    async fn retries_5xx_and_429_then_succeeds_honouring_the_header() {
        let hits = Arc::new(AtomicU32::new(0));
        let seen = Arc::clone(&hits);
        let base = server(Router::new().route(
            "/x",
            get(move || {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                async move {
                    match n {
                        0 => (StatusCode::SERVICE_UNAVAILABLE, "down").into_response(),
                        1 => (
                            StatusCode::TOO_MANY_REQUESTS,
                            [("x-lognex-retry-after", "20")],
                            "slow",
                        )
                            .into_response(),
                        _ => (StatusCode::OK, "{\"ok\":true}").into_response(),
                    }
                }
            }),
        ))
        .await;
        let policy = VendorPolicy {
            retry_header: RetryHeader::LognexMillis,
            ..fast("moysklad")
        };
        let started = Instant::now();
        let response = VendorClient::new()
            .send("c1", &policy, &VendorRequest::get(format!("{base}/x")), &[])
            .await
            .unwrap();
        assert_eq!((response.status, response.attempts), (200, 3));
        assert!(
            started.elapsed() >= Duration::from_millis(20),
            "the 20 ms retry header was not honoured"
        );
        assert_eq!(hits.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_non_idempotent_create_is_not_retried_after_a_5xx() {
        let hits = Arc::new(AtomicU32::new(0));
        let seen = Arc::clone(&hits);
        let base = server(Router::new().route(
            "/create",
            post(move || {
                seen.fetch_add(1, Ordering::SeqCst);
                async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }
            }),
        ))
        .await;
        let request = VendorRequest::with_body(
            reqwest::Method::POST,
            format!("{base}/create"),
            b"{}".to_vec(),
            Idempotency::NotIdempotent,
        );
        let response = VendorClient::new()
            .send("c1", &fast("x"), &request, &[])
            .await
            .unwrap();
        assert_eq!((response.status, response.attempts), (500, 1));
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts_with_the_secret_redacted() {
        let base = server(Router::new().route(
            "/x",
            get(|| async { (StatusCode::BAD_GATEWAY, "token tok-SECRET-42 is fine") }),
        ))
        .await;
        let policy = VendorPolicy {
            max_attempts: 3,
            ..fast("calltouch")
        };
        let err = VendorClient::new()
            .send(
                "c1",
                &policy,
                &VendorRequest::get(format!("{base}/x?key=tok-SECRET-42")),
                &["tok-SECRET-42"],
            )
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("HTTP 502 after 3 attempt(s)"), "{text}");
        assert!(!text.contains("tok-SECRET-42"), "{text}");
        assert!(err.is_transient());
    }

    #[tokio::test]
    async fn timeouts_are_retried_for_idempotent_requests() {
        let hits = Arc::new(AtomicU32::new(0));
        let seen = Arc::clone(&hits);
        let base = server(Router::new().route(
            "/slow",
            get(move || {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    "ok"
                }
            }),
        ))
        .await;
        let response = VendorClient::new()
            .send(
                "c1",
                &fast("x"),
                &VendorRequest::get(format!("{base}/slow")),
                &[],
            )
            .await
            .unwrap();
        assert_eq!((response.status, response.attempts), (200, 2));
    }

    #[tokio::test]
    async fn the_rate_limit_spaces_requests_per_connection() {
        let base = server(Router::new().route("/x", get(|| async { "ok" }))).await;
        let policy = VendorPolicy::new("retailcrm", 3, Duration::from_millis(200), 5);
        let http = VendorClient::new();
        let started = Instant::now();
        for _ in 0..7 {
            http.send("c1", &policy, &VendorRequest::get(format!("{base}/x")), &[])
                .await
                .unwrap();
        }
        // 7 requests at 3 per 200 ms need at least two full windows.
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
        // Another connection has its own budget.
        let other = Instant::now();
        for _ in 0..3 {
            http.send("c2", &policy, &VendorRequest::get(format!("{base}/x")), &[])
                .await
                .unwrap();
        }
        assert!(other.elapsed() < Duration::from_millis(200));
    }

    #[test]
    fn refusals_with_unavailable_statuses_are_transient() {
        let refused = |status| VendorError::Rejected {
            vendor: "retailcrm",
            status,
            message: "Rate limit exceeded".into(),
        };
        assert!(refused(503).is_transient());
        assert!(refused(429).is_transient());
        assert!(!refused(400).is_transient());
        assert!(
            !VendorError::Decode {
                status: 200,
                message: "x".into()
            }
            .is_transient()
        );
    }

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, value.parse().unwrap());
        headers
    }

    fn seconds(value: &str) -> Option<RetryHint> {
        retry_hint(
            &headers("retry-after", value),
            RetryHeader::RetryAfterSeconds,
            Utc::now(),
        )
    }

    fn millis(value: &str) -> Option<RetryHint> {
        retry_hint(
            &headers("x-lognex-retry-after", value),
            RetryHeader::LognexMillis,
            Utc::now(),
        )
    }

    #[test]
    fn retry_headers_parse() {
        assert_eq!(seconds("2"), Some(RetryHint::Wait(Duration::from_secs(2))));
        assert_eq!(
            seconds(" 0.5 "),
            Some(RetryHint::Wait(Duration::from_millis(500)))
        );
        assert_eq!(
            millis("1500"),
            Some(RetryHint::Wait(Duration::from_millis(1500)))
        );
        // The other vendor's header is not read.
        assert_eq!(
            retry_hint(
                &headers("retry-after", "2"),
                RetryHeader::LognexMillis,
                Utc::now()
            ),
            None
        );
        assert_eq!(
            retry_hint(
                &HeaderMap::new(),
                RetryHeader::RetryAfterSeconds,
                Utc::now()
            ),
            None
        );
    }

    #[test]
    fn garbage_retry_headers_say_nothing() {
        for value in ["soon", "-5", "NaN", "nan", "-inf", "", "1s", "0x10"] {
            assert_eq!(seconds(value), None, "Retry-After: {value}");
        }
        for value in ["soon", "-5", "NaN", "Wed, 21 Oct 2015 07:28:00 GMT"] {
            assert_eq!(millis(value), None, "X-Lognex-Retry-After: {value}");
        }
    }

    #[test]
    fn huge_and_infinite_retry_headers_are_too_long_not_a_panic() {
        for value in [
            "1e30",
            "inf",
            "infinity",
            "+Infinity",
            "61",
            "3600",
            "1e308",
        ] {
            assert!(
                matches!(seconds(value), Some(RetryHint::TooLong { .. })),
                "Retry-After: {value} → {:?}",
                seconds(value)
            );
        }
        assert!(matches!(millis("1e30"), Some(RetryHint::TooLong { .. })));
        assert!(matches!(millis("inf"), Some(RetryHint::TooLong { .. })));
        // Exactly the ceiling is still a wait.
        assert_eq!(seconds("60"), Some(RetryHint::Wait(MAX_VENDOR_WAIT)));
        assert_eq!(millis("60000"), Some(RetryHint::Wait(MAX_VENDOR_WAIT)));
        assert_eq!(describe_wait(f64::INFINITY), "an unbounded time");
        assert_eq!(describe_wait(1e30), "an unbounded time");
        assert_eq!(describe_wait(3600.2), "3601 s");
    }

    #[test]
    fn http_dates_count_from_now() {
        let now = DateTime::parse_from_rfc3339("2026-05-08T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let at = |value: &str| {
            retry_hint(
                &headers("retry-after", value),
                RetryHeader::RetryAfterSeconds,
                now,
            )
        };
        assert_eq!(
            at("Fri, 08 May 2026 12:00:30 GMT"),
            Some(RetryHint::Wait(Duration::from_secs(30)))
        );
        // In the past: retry now.
        assert_eq!(
            at("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(RetryHint::Wait(Duration::ZERO))
        );
        // Far in the future: too long, not an overflow.
        assert!(matches!(
            at("Fri, 31 Dec 9999 23:59:59 GMT"),
            Some(RetryHint::TooLong { .. })
        ));
        assert!(matches!(
            at("Sat, 09 May 2026 12:00:00 GMT"),
            Some(RetryHint::TooLong { secs }) if secs == 86_400.0
        ));
        assert_eq!(at("Someday, 99 Foo 2026 25:00:00 GMT"), None);
    }

    #[tokio::test]
    async fn a_vendor_asking_to_wait_forever_fails_the_call_at_once_as_transient() {
        let hits = Arc::new(AtomicU32::new(0));
        let seen = Arc::clone(&hits);
        let base = server(Router::new().route(
            "/x",
            get(move || {
                seen.fetch_add(1, Ordering::SeqCst);
                async {
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "1e30")],
                        "slow down",
                    )
                }
            }),
        ))
        .await;
        // The default policy: 20 s backoff ceiling, 6 attempts.
        let policy = VendorPolicy::new("calltouch", 100, Duration::from_secs(1), 2);
        let started = Instant::now();
        let err = VendorClient::new()
            .send("c1", &policy, &VendorRequest::get(format!("{base}/x")), &[])
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(err.is_transient(), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("HTTP 429 after 1 attempt(s)")
                && text.contains("asked to wait an unbounded time"),
            "{text}"
        );
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_wait_longer_than_the_policy_allows_is_not_slept_on() {
        let base = server(Router::new().route(
            "/x",
            get(|| async {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [("retry-after", "30")],
                    "maintenance",
                )
            }),
        ))
        .await;
        let started = Instant::now();
        let err = VendorClient::new()
            .send(
                "c1",
                &fast("retailcrm"),
                &VendorRequest::get(format!("{base}/x")),
                &[],
            )
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(err.is_transient());
        let text = err.to_string();
        assert!(text.contains("asked to wait 30 s"), "{text}");
        assert!(text.contains("maintenance"), "{text}");
    }
}
