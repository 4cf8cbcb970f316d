//! The HTTP edge: one set of axum routes over the [`Engine`], so the Lambda
//! functions (through `lambda_http`) and `crmbridge serve` answer every
//! request identically.
//!
//! Every error is JSON: `{"error": {"code", "message", "field"?}}` with the
//! status the engine chose. Request bodies are read with a hard limit
//! before anything else happens, so an oversize body is a 413 that touches
//! no state.
//!
//! Admin routes authenticate the caller and check its role for the route
//! before the body is read, and parse it (nesting limited to
//! [`MAX_BODY_DEPTH`]) on the blocking pool, so an unauthorised or hostile
//! body costs little and never stalls the workers answering webhooks.
//! Deserialisation errors name the field and the expected type, never the
//! value sent (it may be a secret).
//!
//! One file per resource, each with its own router (`hooks`, `chat`,
//! `tenants`, `keys`, `connections`, `automations`, `recipes`, `runs`,
//! `health`); this file holds what they share: the state, the caller
//! extractor (`Caller`), body reading and the error → status/JSON mapping.
//!
//! Every admin route is described by `#[utoipa::path]` on its handler; the
//! OpenAPI document ([`openapi`]) is served at `GET /v1/openapi.json` and a
//! test checks it lists every route of [`ROUTES`] and [`LOCAL_ROUTES`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use crmbridge_control::admin::{
    ConnectionCheck, ConnectionPatch, ConnectionView, NewConnection, Principal,
};
use crmbridge_control::consent::{AuthorizationStart, Authorized};
use crmbridge_control::prelude::*;
use crmbridge_control::runs::{ReplayReport, RunFilter};
use crmbridge_control::tenants::{
    CreatedKey, CreatedTenant, KeyView, NewKey, NewTenant, TenantView,
};
use crmbridge_engine::bookkeeping::AutomationRecord;
use crmbridge_engine::ingest::WebhookRequest;
use crmbridge_engine::records::{Role, RunRecord, RunStatus, RunSummary};
use crmbridge_engine::{Engine, EngineError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

mod alerts;
mod automations;
mod body;
mod chat;
mod connections;
mod dry_runs;
mod health;
mod hooks;
mod imports;
mod keys;
mod openapi;
mod recipes;
mod runs;
mod tenants;

pub use connections::OAUTH_CALLBACK;
use health::{HealthProbe, health, live};

pub use body::MAX_BODY_DEPTH;
pub use openapi::{openapi, openapi_json};

/// Shared by every route.
#[derive(Clone)]
pub struct HttpState {
    pub engine: Arc<Engine>,
    /// The externally visible base URL (for webhook URLs in responses);
    /// derived from the request's Host header when unset.
    pub public_url: Option<String>,
}

impl std::fmt::Debug for HttpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpState")
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

/// A JSON error response.
pub fn error_response(status: u16, body: serde_json::Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(body)).into_response()
}

enum ApiError {
    Engine(EngineError),
    /// A failure of this process (a parser task that panicked): a 500 whose
    /// message is fixed, since the cause is ours, not the request's.
    Internal(&'static str),
}

impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> Self {
        Self::Engine(err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let err = match self {
            Self::Engine(err) => err,
            Self::Internal(message) => {
                tracing::error!(error = message, code = "internal", "request failed");
                return error_response(
                    500,
                    json!({"error": {"code": "internal", "message": message, "field": null}}),
                );
            }
        };
        let status = err.status();
        if status >= 500 {
            tracing::error!(error = %err, code = err.code(), "request failed");
        } else {
            tracing::info!(error = %err, code = err.code(), "request refused");
        }
        error_response(status, err.to_body())
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Reads a body up to `limit` bytes; more is a 413.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> ApiResult<Bytes> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(EngineError::PayloadTooLarge { limit }.into());
    }
    axum::body::to_bytes(body, limit).await.map_err(|err| {
        // The limit's own error type, wherever it sits in the chain.
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        let mut too_large = false;
        while let Some(current) = cause {
            too_large |= current.is::<http_body_util::LengthLimitError>();
            cause = current.source();
        }
        if too_large {
            EngineError::PayloadTooLarge { limit }.into()
        } else {
            EngineError::bad_request("body", format!("could not read the body: {err}")).into()
        }
    })
}

fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// Headers as decoders read them: names in lower case, values that are
/// not text left out.
fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(name, value)| {
            value
                .to_str()
                .ok()
                .map(|v| (name.as_str().to_ascii_lowercase(), v.to_owned()))
        })
        .collect()
}

/// The URL a sender addressed: the public base and the path and query as
/// sent (signatures such as HubSpot's v3 cover it).
fn addressed_url(
    state: &HttpState,
    headers: &HeaderMap,
    path: &str,
    raw_query: Option<&str>,
) -> String {
    let mut url = format!("{}{path}", base_url(state, headers));
    if let Some(query) = raw_query.filter(|q| !q.is_empty()) {
        url.push('?');
        url.push_str(query);
    }
    url
}

fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

/// RFC 7235: the authentication scheme is case-insensitive (`bearer`,
/// `BEARER`). The engine matches `Bearer ` exactly, so the scheme is
/// spelled its way here; the credentials pass through untouched.
fn normalise_scheme(authorization: &str) -> std::borrow::Cow<'_, str> {
    match authorization.split_once(' ') {
        Some((scheme, credentials))
            if scheme != "Bearer" && scheme.eq_ignore_ascii_case("bearer") =>
        {
            std::borrow::Cow::Owned(format!("Bearer {credentials}"))
        }
        _ => std::borrow::Cow::Borrowed(authorization),
    }
}

async fn principal(state: &HttpState, headers: &HeaderMap) -> ApiResult<Principal> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(normalise_scheme);
    Ok(state.engine.authenticate(authorization.as_deref()).await?)
}

/// The authenticated caller of an admin route (its API key's tenant and
/// role). Extracted before the body: handlers check the role the route
/// needs first, so a key that may not use the route never gets its body
/// parsed. (The engine checks the role again.)
pub(crate) struct Caller(pub Principal);

impl axum::extract::FromRequestParts<HttpState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &HttpState,
    ) -> Result<Self, Self::Rejection> {
        principal(state, &parts.headers).await.map(Caller)
    }
}

/// Runs a body parser on tokio's blocking pool: parsing is CPU-bound and a
/// large body would otherwise hold an async worker that webhooks need.
/// The time it took is logged at debug level (how long hostile bodies cost
/// is worth knowing; the body itself is never logged).
async fn parse_off_thread<T, F>(bytes: usize, parse: F) -> ApiResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, EngineError> + Send + 'static,
{
    let queued = Instant::now();
    let outcome = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let parsed = parse();
        (parsed, started.duration_since(queued), started.elapsed())
    })
    .await;
    match outcome {
        Ok((parsed, waited, took)) => {
            tracing::debug!(
                bytes,
                parse_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
                wait_us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX),
                refused = parsed.is_err(),
                "admin body parsed"
            );
            Ok(parsed?)
        }
        Err(err) => {
            tracing::error!(error = %err, "a body parser task failed");
            Err(ApiError::Internal("the body could not be parsed"))
        }
    }
}

/// Reads a JSON body up to `limit` bytes and parses it off the async workers.
async fn json_body<T: DeserializeOwned + Send + 'static>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> ApiResult<T> {
    let bytes = read_body(headers, body, limit).await?;
    parse_off_thread(bytes.len(), move || body::parse_json(&bytes)).await
}

/// One query parameter, at most once.
fn single_params(
    raw: Option<&str>,
    known: &[&str],
) -> ApiResult<std::collections::BTreeMap<String, String>> {
    let mut found = std::collections::BTreeMap::new();
    for (name, value) in query_pairs(raw) {
        if !known.contains(&name.as_str()) {
            return Err(EngineError::bad_request(
                name,
                format!("unknown query parameter; known: {}", known.join(", ")),
            )
            .into());
        }
        if found.insert(name.clone(), value).is_some() {
            return Err(EngineError::bad_request(name, "given more than once").into());
        }
    }
    Ok(found)
}

fn base_url(state: &HttpState, headers: &HeaderMap) -> String {
    if let Some(url) = &state.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .unwrap_or(
            if host.starts_with("127.0.0.1") || host.starts_with("localhost") {
                "http"
            } else {
                "https"
            },
        );
    format!("{scheme}://{host}")
}

/// The error body of every failure.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable: `bad_request`, `invalid`, `not_found`, `unauthorized`,
    /// `forbidden`, `conflict`, `confirmation_required`, `payload_too_large`…
    pub code: String,
    pub message: String,
    /// What was wrong: a body path (`steps[0].fields.x`), a query parameter,
    /// `body`, `authorization`, or the kind of object not found.
    pub field: Option<String>,
    /// Every problem, for `invalid` (422).
    pub errors: Option<Vec<FieldErrorDoc>>,
    /// What a confirmation would delete, for `confirmation_required` (409).
    pub affected: Option<Vec<String>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FieldErrorDoc {
    pub field: String,
    pub message: String,
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta", responses((status = 200, description = "the OpenAPI document", body = Object)))]
async fn openapi_document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

async fn not_found(method: Method, uri: axum::http::Uri) -> Response {
    error_response(
        404,
        json!({"error": {"code": "not_found", "message": format!("no route for {method} {}", uri.path()), "field": "path"}}),
    )
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Response {
    error_response(
        405,
        json!({"error": {"code": "method_not_allowed", "message": format!("{method} is not allowed on {}", uri.path()), "field": "method"}}),
    )
}

fn finish(router: Router<HttpState>, state: HttpState) -> Router {
    let probe = Arc::new(HealthProbe::new(Arc::clone(&state.engine)));
    router
        .route("/health", get(health).with_state(probe))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

fn admin_routes() -> Router<HttpState> {
    Router::new()
        .route("/v1/openapi.json", get(openapi_document))
        .merge(tenants::routes())
        .merge(keys::routes())
        .merge(connections::routes())
        .merge(automations::routes())
        .merge(recipes::routes())
        .merge(runs::routes())
        .merge(imports::routes())
        .merge(alerts::routes())
        .merge(dry_runs::routes())
}

/// The webhook function's routes: `GET|POST /hooks/{connection}/{token}`.
pub fn webhook_router(state: HttpState) -> Router {
    finish(hooks::routes(), state)
}

/// The chat function's routes: `POST /chat/{connection}/{token}`.
pub fn chat_router(state: HttpState) -> Router {
    finish(chat::routes(), state)
}

/// The admin function's routes, under `/v1`.
pub fn admin_router(state: HttpState) -> Router {
    finish(admin_routes(), state)
}

/// Everything in one router, for `crmbridge serve`, plus [`LOCAL_ROUTES`].
pub fn local_router(state: HttpState) -> Router {
    finish(
        hooks::routes()
            .merge(chat::routes())
            .merge(admin_routes())
            .route("/live", get(live)),
        state,
    )
}

/// Every route this crate serves, as `(function, METHOD, path)` — for the
/// test that checks template.yaml routes each one to a function, and the
/// one that checks the OpenAPI document lists each one.
pub const ROUTES: &[(&str, &str, &str)] = &[
    ("webhook", "GET", "/hooks/{connection}/{token}"),
    ("webhook", "POST", "/hooks/{connection}/{token}"),
    ("chat", "POST", "/chat/{connection}/{token}"),
    ("admin", "GET", "/v1/openapi.json"),
    ("admin", "GET", "/v1/tenant"),
    ("admin", "POST", "/v1/tenants"),
    ("admin", "GET", "/v1/keys"),
    ("admin", "POST", "/v1/keys"),
    ("admin", "DELETE", "/v1/keys/{id}"),
    ("admin", "GET", "/v1/connections"),
    ("admin", "POST", "/v1/connections"),
    ("admin", "GET", "/v1/connections/{id}"),
    ("admin", "PATCH", "/v1/connections/{id}"),
    ("admin", "DELETE", "/v1/connections/{id}"),
    ("admin", "POST", "/v1/connections/{id}/check"),
    ("admin", "GET", "/v1/connections/{id}/catalog"),
    ("admin", "POST", "/v1/connections/{id}/authorize"),
    ("admin", "GET", "/v1/oauth/callback"),
    ("admin", "GET", "/v1/automations"),
    ("admin", "POST", "/v1/automations"),
    ("admin", "GET", "/v1/automations/{id}"),
    ("admin", "PUT", "/v1/automations/{id}"),
    ("admin", "DELETE", "/v1/automations/{id}"),
    ("admin", "POST", "/v1/automations/{id}/enable"),
    ("admin", "POST", "/v1/automations/{id}/disable"),
    ("admin", "POST", "/v1/automations/{id}/replay"),
    ("admin", "GET", "/v1/recipes"),
    ("admin", "POST", "/v1/recipes/{name}/instantiate"),
    ("admin", "GET", "/v1/runs"),
    ("admin", "GET", "/v1/runs/{id}"),
    ("admin", "POST", "/v1/runs/{id}/replay"),
    ("admin", "GET", "/v1/imports"),
    ("admin", "POST", "/v1/imports"),
    ("admin", "GET", "/v1/imports/{id}"),
    ("admin", "POST", "/v1/imports/{id}/resume"),
    ("admin", "GET", "/v1/alert-destinations"),
    ("admin", "POST", "/v1/alert-destinations"),
    ("admin", "DELETE", "/v1/alert-destinations/{id}"),
    ("admin", "POST", "/v1/alert-destinations/{id}/test"),
    ("admin", "POST", "/v1/alert-destinations/{id}/rotate-secret"),
    ("admin", "GET", "/v1/alerts"),
    ("admin", "POST", "/v1/automations/{id}/test"),
    ("admin", "POST", "/v1/automation-tests"),
    ("admin", "GET", "/health"),
];

/// Routes only `crmbridge serve` has, as `(METHOD, path)`: on Lambda the
/// platform owns liveness, so the gateway routes no `/live` there.
pub const LOCAL_ROUTES: &[(&str, &str)] = &[("GET", "/live")];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use axum::http::Request;
    use crmbridge_store::{Query, SqliteStore, Store};
    use tower::ServiceExt;

    struct Fixture {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        /// The store the engine was built on.
        store: Arc<dyn Store>,
        engine: Arc<Engine>,
    }

    fn engine_on(store: Arc<dyn Store>, db: &std::path::Path) -> Arc<Engine> {
        let bus = crmbridge_bus::OutboxBus::open(db, Default::default()).unwrap();
        Arc::new(Engine::new(
            store,
            Arc::new(bus),
            crmbridge_connectors::Registry::builtin(),
            crmbridge_engine::Keyring::parse(&crmbridge_engine::Keyring::generate_spec("t"))
                .unwrap(),
            Default::default(),
        ))
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
        let engine = engine_on(Arc::clone(&store), &path);
        Fixture {
            _dir: dir,
            path,
            store,
            engine,
        }
    }

    fn router(engine: &Arc<Engine>) -> Router {
        local_router(HttpState {
            engine: Arc::clone(engine),
            public_url: None,
        })
    }

    async fn send(router: &Router, request: Request<Body>) -> (StatusCode, serde_json::Value) {
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    fn get(path: &str) -> Request<Body> {
        Request::get(path).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn an_oauth_callback_with_an_unknown_state_or_a_refusal_is_a_400_naming_it() {
        let f = fixture();
        for query in [
            "state=not-a-state&code=abc",
            "code=abc",
            "state=&code=abc",
            "state=x&error=access_denied",
        ] {
            let (status, body) = send(
                &router(&f.engine),
                get(&format!("/v1/oauth/callback?{query}")),
            )
            .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
            let field = body["error"]["field"].as_str().unwrap_or_default();
            assert!(field == "state" || field == "error", "{query}: {body}");
        }
        // (What is saved, or not, is the engine's suite: tests/oauth.rs.)
        // Starting consent needs an API key and an OAuth vendor.
        let (status, _) = send(
            &router(&f.engine),
            Request::post("/v1/connections/con_x/authorize")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn health_writes_and_reads_back_a_probe_through_the_store() {
        let f = fixture();
        let (status, body) = send(&router(&f.engine), get("/health")).await;
        assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
        let probes = f
            .store
            .query(Query::prefix(health::HEALTH_PK, ""))
            .await
            .unwrap()
            .items;
        assert_eq!(probes.len(), 1);
        assert!(
            probes[0].expires_at.is_some(),
            "the probe item never expires"
        );
    }

    #[tokio::test]
    async fn health_is_503_when_the_store_cannot_write_and_live_is_still_200() {
        let f = fixture();
        // The same database opened read-only (a SQLite URI): a real store
        // that reads but refuses every write.
        let uri = format!("file:{}?mode=ro", f.path.display());
        let read_only: Arc<dyn Store> =
            Arc::new(SqliteStore::open(std::path::Path::new(&uri)).unwrap());
        assert!(read_only.get("x", "y").await.is_ok(), "it still reads");
        let engine = engine_on(read_only, &f.path);
        let router = router(&engine);
        let (status, body) = send(&router, get("/health")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["status"], "unavailable");
        let error = body["error"].as_str().unwrap();
        assert_eq!(error, "the store cannot write (sqlite put failed)");
        let (status, body) = send(&router, get("/live")).await;
        assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    }

    #[tokio::test]
    async fn live_is_served_by_serve_only() {
        let f = fixture();
        let lambda = admin_router(HttpState {
            engine: Arc::clone(&f.engine),
            public_url: None,
        });
        let (status, _) = send(&lambda, get("/live")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = send(&router(&f.engine), get("/live")).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[test]
    fn the_bearer_scheme_is_normalised_and_nothing_else() {
        assert_eq!(normalise_scheme("bearer k"), "Bearer k");
        assert_eq!(normalise_scheme("BEARER k"), "Bearer k");
        assert_eq!(normalise_scheme("Bearer k"), "Bearer k");
        assert_eq!(normalise_scheme("bearer  k"), "Bearer  k");
        assert_eq!(normalise_scheme("bearerk"), "bearerk");
        assert_eq!(normalise_scheme("Basic k"), "Basic k");
        assert_eq!(normalise_scheme("bearers k"), "bearers k");
    }

    fn with_key(
        method: &str,
        path: &str,
        key: &str,
        content_type: &str,
        body: &str,
    ) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("bearer {key}"))
            .header("content-type", content_type)
            .body(Body::from(body.to_owned()))
            .unwrap()
    }

    #[tokio::test]
    async fn the_role_is_checked_before_the_body_is_parsed() {
        let f = fixture();
        let owner = f.engine.bootstrap("t").await.unwrap().unwrap().owner_key;
        let router = router(&f.engine);
        let (status, created) = send(
            &router,
            with_key(
                "POST",
                "/v1/keys",
                &owner,
                "application/json",
                r#"{"role": "viewer"}"#,
            ),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let viewer = created["key"].as_str().unwrap();
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        for (method, path, content_type) in [
            ("POST", "/v1/connections", "application/json"),
            ("PATCH", "/v1/connections/con_x", "application/json"),
            ("POST", "/v1/automations", "application/yaml"),
            ("PUT", "/v1/automations/a", "application/json"),
            ("POST", "/v1/automations/a/replay", "application/json"),
            ("POST", "/v1/recipes/r/instantiate", "application/json"),
            ("POST", "/v1/keys", "application/json"),
            ("POST", "/v1/tenants", "application/json"),
        ] {
            // `{}` would be a 400 from the parser (required fields): the
            // 403 says the role came first.
            let (status, body) =
                send(&router, with_key(method, path, viewer, content_type, "{}")).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
            assert_eq!(body["error"]["field"], "authorization");
        }
        // An over-deep automation is refused by the nesting limit whoever
        // sends it: the linear scan runs before the role check (it parses
        // nothing), the parser after it.
        for (method, path) in [("POST", "/v1/automations"), ("PUT", "/v1/automations/a")] {
            let (status, body) = send(
                &router,
                with_key(method, path, viewer, "application/yaml", &deep),
            )
            .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {body}");
            assert_eq!(body["error"]["message"], "nested deeper than 64 levels");
        }
        // The owner passes the role check and meets the nesting limit.
        let (status, body) = send(
            &router,
            with_key("POST", "/v1/automations", &owner, "application/yaml", &deep),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(
            body["error"],
            json!({"code": "bad_request", "field": "body", "message": "nested deeper than 64 levels"})
        );
    }
}
