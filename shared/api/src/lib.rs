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
use crmbridge_engine::admin::{
    ConnectionCheck, ConnectionPatch, ConnectionView, NewConnection, Principal,
};
use crmbridge_engine::automations::AutomationRecord;
use crmbridge_engine::ingest::WebhookRequest;
use crmbridge_engine::oauth::{AuthorizationStart, Authorized};
use crmbridge_engine::records::{Role, RunRecord, RunStatus, RunSummary};
use crmbridge_engine::runs::{ReplayReport, RunFilter};
use crmbridge_engine::tenants::{
    CreatedKey, CreatedTenant, KeyView, NewKey, NewTenant, TenantView,
};
use crmbridge_engine::{Engine, EngineError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

mod body;
mod openapi;

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
        let too_large = std::error::Error::source(&err)
            .is_some_and(|source| source.is::<http_body_util::LengthLimitError>())
            || err.to_string().contains("length limit");
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

fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

/// A webhook from a CRM or tracker; the token is the connection's secret.
#[utoipa::path(
    post, path = "/hooks/{connection}/{token}", tag = "webhooks",
    params(("connection" = String, Path), ("token" = String, Path, description = "the connection's secret token")),
    request_body(content = Object, description = "whatever the service sends (JSON, form or query)"),
    responses(
        (status = 202, description = "accepted", body = Object),
        (status = 200, description = "a duplicate delivery, or the vendor's expected answer", body = Object),
        (status = "4XX", description = "refused; nothing stored", body = ErrorBody),
        (status = "5XX", description = "not accepted: retry", body = ErrorBody),
    )
)]
async fn webhook(
    State(state): State<HttpState>,
    Path((connection, token)): Path<(String, String)>,
    method: Method,
    RawQuery(raw_query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let body = read_body(&headers, body, state.engine.config().max_body_bytes).await?;
    let outcome = state
        .engine
        .ingest_webhook(WebhookRequest {
            connection: &connection,
            token: &token,
            method: method.as_str(),
            query: query_pairs(raw_query.as_deref()),
            content_type: content_type(&headers),
            body: &body,
        })
        .await?;
    let ids: Vec<String> = outcome
        .accepted
        .iter()
        .chain(&outcome.duplicates)
        .map(ToString::to_string)
        .collect();
    if let Some(body) = outcome.ack_body {
        let status = StatusCode::from_u16(outcome.ack_status).unwrap_or(StatusCode::OK);
        return Ok((status, axum::Json(body)).into_response());
    }
    Ok(if outcome.is_duplicate() {
        (
            StatusCode::OK,
            axum::Json(json!({"status": "duplicate", "event_ids": ids})),
        )
            .into_response()
    } else {
        let status = StatusCode::from_u16(outcome.ack_status).unwrap_or(StatusCode::ACCEPTED);
        (
            status,
            axum::Json(json!({"status": "accepted", "event_ids": ids})),
        )
            .into_response()
    })
}

/// A webhook sent as GET (Calltouch and others put the data in the query).
#[utoipa::path(
    get, path = "/hooks/{connection}/{token}", tag = "webhooks",
    params(("connection" = String, Path), ("token" = String, Path, description = "the connection's secret token")),
    responses(
        (status = 202, description = "accepted", body = Object),
        (status = 200, description = "a duplicate delivery, or the vendor's expected answer", body = Object),
        (status = "4XX", description = "refused; nothing stored", body = ErrorBody),
        (status = "5XX", description = "not accepted: retry", body = ErrorBody),
    )
)]
async fn webhook_get(
    state: State<HttpState>,
    path: Path<(String, String)>,
    method: Method,
    query: RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    webhook(state, path, method, query, headers, body).await
}

/// A chat notification (Planfix, Verbox), relayed synchronously.
#[utoipa::path(
    post, path = "/chat/{connection}/{token}", tag = "webhooks",
    params(("connection" = String, Path), ("token" = String, Path)),
    request_body(content = Object),
    responses(
        (status = 200, description = "relayed", body = Object),
        (status = "4XX", body = ErrorBody),
        (status = "5XX", body = ErrorBody),
    )
)]
async fn chat(
    State(state): State<HttpState>,
    Path((connection, token)): Path<(String, String)>,
    RawQuery(raw_query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let body = read_body(&headers, body, state.engine.config().max_body_bytes).await?;
    let handled = state
        .engine
        .ingest_chat(WebhookRequest {
            connection: &connection,
            token: &token,
            method: "POST",
            query: query_pairs(raw_query.as_deref()),
            content_type: content_type(&headers),
            body: &body,
        })
        .await?;
    Ok(axum::Json(json!({
        "runs": handled.runs,
        "duplicates": handled.duplicates,
    }))
    .into_response())
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

/// The caller, authenticated and allowed `role` on this route. Handlers
/// with a body call this before reading it: a key that may not use the
/// route never gets its body parsed. (The engine checks the role again.)
async fn authorised(
    state: &HttpState,
    headers: &HeaderMap,
    role: Role,
    doing: &str,
) -> ApiResult<Principal> {
    let who = principal(state, headers).await?;
    who.require_role(role, doing)?;
    Ok(who)
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

/// A connection with its full webhook and chat URLs (secret token
/// included: give the webhook URL to the sending service).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConnectionResponse {
    #[serde(flatten)]
    pub connection: ConnectionView,
    pub webhook_url: String,
    pub chat_url: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConnectionList {
    pub items: Vec<ConnectionResponse>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AutomationList {
    pub items: Vec<AutomationRecord>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyList {
    pub items: Vec<KeyView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunPage {
    pub items: Vec<RunSummary>,
    /// Pass as `cursor` for the next (older) page; absent on the last.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecipeView {
    pub name: String,
    pub description: String,
    /// Role → the app a connection in that role must be.
    pub connections: std::collections::BTreeMap<String, String>,
    /// What the user chooses when instantiating, by name.
    pub parameters: std::collections::BTreeMap<String, crmbridge_engine::recipes::RecipeParameter>,
    #[schema(value_type = Vec<Object>)]
    pub automations: Vec<serde_json::Value>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecipeList {
    pub items: Vec<RecipeView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeletedConnection {
    pub deleted_automations: Vec<String>,
}

fn connection_json(view: ConnectionView, base: &str) -> ConnectionResponse {
    ConnectionResponse {
        webhook_url: format!("{base}{}", view.webhook_path),
        chat_url: format!("{base}{}", view.chat_path),
        connection: view,
    }
}

/// The caller's tenant and role.
#[utoipa::path(
    get, path = "/v1/tenant", tag = "tenants", security(("api_key" = [])),
    responses((status = 200, body = TenantView), (status = 401, body = ErrorBody))
)]
async fn get_tenant(State(state): State<HttpState>, headers: HeaderMap) -> ApiResult<Response> {
    let who = principal(&state, &headers).await?;
    Ok(axum::Json(state.engine.current_tenant(&who).await?).into_response())
}

/// Creates a tenant and its first owner key, shown once. Only owners of
/// the deployment's first tenant may.
#[utoipa::path(
    post, path = "/v1/tenants", tag = "tenants", security(("api_key" = [])),
    request_body = NewTenant,
    responses(
        (status = 201, body = CreatedTenant),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
async fn create_tenant(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    // Whether this tenant is the deployment's first is checked by the engine
    // (it needs the store); the role is enough to keep other keys out.
    let who = authorised(&state, &headers, Role::Owner, "create tenants").await?;
    let new: NewTenant = json_body(&headers, body, 16 * 1024).await?;
    let created = state.engine.create_tenant(&who, new).await?;
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

/// The tenant's API keys (never their secrets). Owners only.
#[utoipa::path(
    get, path = "/v1/keys", tag = "keys", security(("api_key" = [])),
    responses((status = 200, body = KeyList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
async fn list_keys(State(state): State<HttpState>, headers: HeaderMap) -> ApiResult<Response> {
    let who = principal(&state, &headers).await?;
    let items = state.engine.list_keys(&who).await?;
    Ok(axum::Json(KeyList { items }).into_response())
}

/// Creates an API key with a role; the key is in this answer only. Owners only.
#[utoipa::path(
    post, path = "/v1/keys", tag = "keys", security(("api_key" = [])),
    request_body = NewKey,
    responses(
        (status = 201, body = CreatedKey),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 413, body = ErrorBody),
    )
)]
async fn create_key(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let who = authorised(&state, &headers, Role::Owner, "manage API keys").await?;
    let new: NewKey = json_body(&headers, body, 16 * 1024).await?;
    let created = state.engine.create_key(&who, new).await?;
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

/// Revokes a key at once. The tenant's last owner key cannot be revoked (409).
#[utoipa::path(
    delete, path = "/v1/keys/{id}", tag = "keys", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses(
        (status = 204, description = "revoked"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
    )
)]
async fn delete_key(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let who = principal(&state, &headers).await?;
    state.engine.delete_key(&who, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Creates a connection; credentials are write-only.
#[utoipa::path(
    post, path = "/v1/connections", tag = "connections", security(("api_key" = [])),
    request_body = NewConnection,
    responses(
        (status = 201, body = ConnectionResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
async fn create_connection(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let who = authorised(&state, &headers, Role::Admin, "create connections").await?;
    let new: NewConnection = json_body(&headers, body, 256 * 1024).await?;
    let view = state.engine.create_connection(&who, new).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(connection_json(view, &base_url(&state, &headers))),
    )
        .into_response())
}

#[utoipa::path(
    get, path = "/v1/connections", tag = "connections", security(("api_key" = [])),
    responses((status = 200, body = ConnectionList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
async fn list_connections(
    State(state): State<HttpState>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let who = principal(&state, &headers).await?;
    let base = base_url(&state, &headers);
    let items: Vec<_> = state
        .engine
        .list_connections(&who)
        .await?
        .into_iter()
        .map(|view| connection_json(view, &base))
        .collect();
    Ok(axum::Json(ConnectionList { items }).into_response())
}

#[utoipa::path(
    get, path = "/v1/connections/{id}", tag = "connections", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses(
        (status = 200, body = ConnectionResponse), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    )
)]
async fn get_connection(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let who = principal(&state, &headers).await?;
    let view = state.engine.get_connection(&who, &id).await?;
    Ok(axum::Json(connection_json(view, &base_url(&state, &headers))).into_response())
}

/// Changes a connection's name, settings (JSON merge patch) or credentials
/// (merged by name; `null` removes one; `replace_credentials: true`
/// replaces the set). Re-validated and re-sealed; the webhook URL stays.
#[utoipa::path(
    patch, path = "/v1/connections/{id}", tag = "connections", security(("api_key" = [])),
    params(("id" = String, Path)),
    request_body = ConnectionPatch,
    responses(
        (status = 200, body = ConnectionResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
async fn update_connection(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let who = authorised(&state, &headers, Role::Admin, "change connections").await?;
    let patch: ConnectionPatch = json_body(&headers, body, 256 * 1024).await?;
    let view = state.engine.update_connection(&who, &id, patch).await?;
    Ok(axum::Json(connection_json(view, &base_url(&state, &headers))).into_response())
}

/// Tries the connection's credentials against the vendor. `ok: false`
/// (with the vendor's reason) when they are refused or the vendor is down.
#[utoipa::path(
    post, path = "/v1/connections/{id}/check", tag = "connections", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses(
        (status = 200, body = ConnectionCheck), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
async fn check_connection(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let who = principal(&state, &headers).await?;
    let check = state.engine.check_connection(&who, &id).await?;
    Ok(axum::Json(check).into_response())
}

/// Starts OAuth 2.0 consent for a connection of a vendor that signs in
/// with OAuth: send the user to `authorization_url` (valid ten minutes);
/// the vendor returns them to `GET /v1/oauth/callback`.
#[utoipa::path(
    post, path = "/v1/connections/{id}/authorize", tag = "connections", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses(
        (status = 200, body = AuthorizationStart), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
async fn authorize_connection(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let who = authorised(&state, &headers, Role::Admin, "authorize connections").await?;
    let redirect_uri = format!("{}{OAUTH_CALLBACK}", base_url(&state, &headers));
    let start = state
        .engine
        .start_authorization(&who, &id, &redirect_uri)
        .await?;
    Ok(axum::Json(start).into_response())
}

/// Where the vendor returns the user after consent. No API key: the
/// `state` (single use, ten minutes, bound to the tenant and connection)
/// is the authentication. A wrong or replayed state is a 400 and saves
/// nothing.
#[utoipa::path(
    get, path = "/v1/oauth/callback", tag = "connections",
    params(
        ("state" = String, Query), ("code" = Option<String>, Query),
        ("error" = Option<String>, Query),
    ),
    responses(
        (status = 200, body = Authorized), (status = 400, body = ErrorBody),
        (status = 502, body = ErrorBody), (status = 503, body = ErrorBody),
    )
)]
async fn oauth_callback(
    State(state): State<HttpState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> ApiResult<Response> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    let param = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    };
    if !param("error").is_empty() {
        let reason: String = param("error").chars().take(100).collect();
        return Err(EngineError::bad_request(
            "error",
            format!("consent was not given ({reason}); start the authorization again"),
        )
        .into());
    }
    let done = state
        .engine
        .complete_authorization(param("state"), param("code"))
        .await?;
    Ok(axum::Json(done).into_response())
}

/// The OAuth 2.0 redirect URI, under the admin API's prefix.
pub const OAUTH_CALLBACK: &str = "/v1/oauth/callback";

/// What the connection's account holds that automations name, read live:
/// NetHunt folders with their fields and the values seen most often
/// (NetHunt cannot list a dropdown's options), Worksection projects.
#[utoipa::path(
    get, path = "/v1/connections/{id}/catalog", tag = "connections", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses(
        (status = 200, body = Object), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 502, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
async fn connection_catalog(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let who = principal(&state, &headers).await?;
    let catalog = state.engine.connection_catalog(&who, &id).await?;
    Ok(axum::Json(catalog).into_response())
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

fn time_param(name: &str, value: Option<&String>) -> ApiResult<Option<DateTime<Utc>>> {
    value
        .map(|text| {
            DateTime::parse_from_rfc3339(text)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|err| {
                    EngineError::bad_request(
                        name,
                        format!("'{text}' is not an RFC 3339 time ({err})"),
                    )
                    .into()
                })
        })
        .transpose()
}

/// The run log, newest first, filtered by automation, status and creation
/// time (`since` inclusive, `until` exclusive).
#[utoipa::path(
    get, path = "/v1/runs", tag = "runs", security(("api_key" = [])),
    params(
        ("limit" = Option<u32>, Query, description = "1 to 200, default 50"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
        ("automation" = Option<String>, Query, description = "only runs of this automation"),
        ("status" = Option<RunStatus>, Query, description = "only runs with this status"),
        ("since" = Option<String>, Query, description = "RFC 3339; runs created at or after"),
        ("until" = Option<String>, Query, description = "RFC 3339; runs created before"),
    ),
    responses((status = 200, body = RunPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody))
)]
async fn list_runs(
    State(state): State<HttpState>,
    headers: HeaderMap,
    RawQuery(raw_query): RawQuery,
) -> ApiResult<Response> {
    let who = principal(&state, &headers).await?;
    let params = single_params(
        raw_query.as_deref(),
        &["limit", "cursor", "automation", "status", "since", "until"],
    )?;
    let limit = match params.get("limit") {
        None => 50,
        Some(text) => text
            .parse()
            .map_err(|_| EngineError::bad_request("limit", "must be a whole number"))?,
    };
    let status = params
        .get("status")
        .map(|text| {
            serde_json::from_value::<RunStatus>(serde_json::Value::String(text.clone())).map_err(
                |_| {
                    EngineError::bad_request(
                        "status",
                        format!(
                            "'{text}' is not a run status: no_match, filtered, running, succeeded, failed or skipped"
                        ),
                    )
                },
            )
        })
        .transpose()?;
    let filter = RunFilter {
        automation: params.get("automation").cloned(),
        status,
        since: time_param("since", params.get("since"))?,
        until: time_param("until", params.get("until"))?,
        limit,
        cursor: params.get("cursor").cloned(),
    };
    let listing = state.engine.list_runs(&who, filter).await?;
    Ok(axum::Json(RunPage {
        items: listing.items,
        next_cursor: listing.next_cursor,
    })
    .into_response())
}

/// One run: its event, each step's rendered request, response status and error.
#[utoipa::path(
    get, path = "/v1/runs/{id}", tag = "runs", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = RunRecord), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody))
)]
async fn get_run(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let who = principal(&state, &headers).await?;
    Ok(axum::Json(state.engine.get_run(&who, &id).await?).into_response())
}

/// Replays a failed run: steps that succeeded are skipped, the rest run
/// again. Any other status is 409. Answers with the run afterwards.
#[utoipa::path(
    post, path = "/v1/runs/{id}/replay", tag = "runs", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses(
        (status = 200, body = RunRecord), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
    )
)]
async fn replay_run(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let who = principal(&state, &headers).await?;
    Ok(axum::Json(state.engine.replay_run(&who, &id).await?).into_response())
}

/// `POST /v1/automations/{id}/replay`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplaySince {
    /// RFC 3339: failed runs created at or after this time are replayed.
    pub since: DateTime<Utc>,
}

/// Replays every failed run of an automation since a time (at most 100 a
/// call; `more` says to call again).
#[utoipa::path(
    post, path = "/v1/automations/{id}/replay", tag = "automations", security(("api_key" = [])),
    params(("id" = String, Path)),
    request_body = ReplaySince,
    responses(
        (status = 200, body = ReplayReport),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
    )
)]
async fn replay_automation(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let who = authorised(&state, &headers, Role::Admin, "replay runs").await?;
    let request: ReplaySince = json_body(&headers, body, 16 * 1024).await?;
    Ok(axum::Json(
        state
            .engine
            .replay_automation(&who, &id, request.since)
            .await?,
    )
    .into_response())
}

/// An automation from a JSON body, or YAML when the content type says so,
/// for a caller allowed to change automations.
///
/// The order is deliberate: the key is known, the (size-capped) body is
/// read, its nesting depth is checked by a linear scan that parses nothing
/// — so an over-deep body is a 400 naming the limit whoever sends it —,
/// then the role is checked, and only then is the body parsed, off the
/// async workers.
async fn automation_body(
    who: &Principal,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<crmbridge_engine::Automation> {
    let is_yaml = content_type(headers).is_some_and(|ct| ct.contains("yaml"));
    let bytes = read_body(headers, body, 256 * 1024).await?;
    let started = Instant::now();
    if let Err(err) = body::check_depth(&bytes, is_yaml) {
        tracing::debug!(
            bytes = bytes.len(),
            parse_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            wait_us = 0u64,
            refused = true,
            "admin body parsed"
        );
        return Err(err.into());
    }
    who.require_role(Role::Admin, "change automations")?;
    parse_off_thread(bytes.len(), move || {
        if is_yaml {
            body::parse_yaml(&bytes)
        } else {
            body::parse_json(&bytes)
        }
    })
    .await
}

/// The tenant's automations, each with its health.
#[utoipa::path(
    get, path = "/v1/automations", tag = "automations", security(("api_key" = [])),
    responses((status = 200, body = AutomationList), (status = 401, body = ErrorBody))
)]
async fn list_automations(
    State(state): State<HttpState>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let who = principal(&state, &headers).await?;
    let items = state.engine.list_automations(&who).await?;
    Ok(axum::Json(AutomationList { items }).into_response())
}

/// Creates an automation (JSON, or YAML with a yaml content type), validated
/// against the connectors' catalogs: 422 lists every error with its path.
#[utoipa::path(
    post, path = "/v1/automations", tag = "automations", security(("api_key" = [])),
    request_body(content = Object, description = "an automation document (JSON or YAML)"),
    responses(
        (status = 201, body = AutomationRecord),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
async fn create_automation(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let who = principal(&state, &headers).await?;
    let automation = automation_body(&who, &headers, body).await?;
    if state
        .engine
        .get_automation(&who, &automation.id)
        .await
        .is_ok()
    {
        return Err(EngineError::bad_request(
            "id",
            format!(
                "automation {} exists; PUT /v1/automations/{} replaces it",
                automation.id, automation.id
            ),
        )
        .into());
    }
    let saved = state.engine.save_automation(&who, automation).await?;
    Ok((StatusCode::CREATED, axum::Json(saved)).into_response())
}

/// Replaces an automation (validated like a new one).
#[utoipa::path(
    put, path = "/v1/automations/{id}", tag = "automations", security(("api_key" = [])),
    params(("id" = String, Path)),
    request_body(content = Object, description = "an automation document (JSON or YAML)"),
    responses(
        (status = 200, body = AutomationRecord),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
async fn put_automation(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let who = principal(&state, &headers).await?;
    let automation = automation_body(&who, &headers, body).await?;
    if automation.id != id {
        return Err(EngineError::bad_request(
            "id",
            format!("the body's id '{}' is not the path's '{id}'", automation.id),
        )
        .into());
    }
    Ok(axum::Json(state.engine.save_automation(&who, automation).await?).into_response())
}

#[utoipa::path(
    get, path = "/v1/automations/{id}", tag = "automations", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = AutomationRecord), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody))
)]
async fn get_automation(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let who = principal(&state, &headers).await?;
    Ok(axum::Json(state.engine.get_automation(&who, &id).await?).into_response())
}

#[utoipa::path(
    delete, path = "/v1/automations/{id}", tag = "automations", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses(
        (status = 204, description = "deleted"), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    )
)]
async fn delete_automation(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let who = principal(&state, &headers).await?;
    state.engine.delete_automation(&who, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(
    post, path = "/v1/automations/{id}/enable", tag = "automations", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses(
        (status = 200, body = AutomationRecord), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
async fn enable_automation(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let who = principal(&state, &headers).await?;
    Ok(axum::Json(state.engine.set_automation_enabled(&who, &id, true).await?).into_response())
}

#[utoipa::path(
    post, path = "/v1/automations/{id}/disable", tag = "automations", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses(
        (status = 200, body = AutomationRecord), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
async fn disable_automation(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let who = principal(&state, &headers).await?;
    Ok(axum::Json(
        state
            .engine
            .set_automation_enabled(&who, &id, false)
            .await?,
    )
    .into_response())
}

/// The recipes this version ships (recipes/*.yaml).
#[utoipa::path(
    get, path = "/v1/recipes", tag = "recipes", security(("api_key" = [])),
    responses((status = 200, body = RecipeList), (status = 401, body = ErrorBody))
)]
async fn list_recipes(State(state): State<HttpState>, headers: HeaderMap) -> ApiResult<Response> {
    principal(&state, &headers).await?;
    let mut items = Vec::new();
    for (name, _) in crmbridge_engine::recipes::RECIPES {
        let recipe = crmbridge_engine::recipes::recipe(name)?;
        items.push(RecipeView {
            name: recipe.name,
            description: recipe.description,
            connections: recipe.connections,
            parameters: recipe.parameters,
            automations: recipe
                .automations
                .iter()
                .map(|a| json!({"id": a["id"], "name": a["name"]}))
                .collect(),
        });
    }
    Ok(axum::Json(RecipeList { items }).into_response())
}

/// `POST /v1/recipes/{name}/instantiate`: which connection plays each role.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstantiateRecipe {
    pub connections: std::collections::BTreeMap<String, String>,
    /// The recipe's parameters (see `parameters` in the recipe list).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: std::collections::BTreeMap<String, serde_json::Value>,
}

/// Creates a recipe's automations with the given connections (all
/// validated before any is saved).
#[utoipa::path(
    post, path = "/v1/recipes/{name}/instantiate", tag = "recipes", security(("api_key" = [])),
    params(("name" = String, Path)),
    request_body = InstantiateRecipe,
    responses(
        (status = 201, body = AutomationList),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
    )
)]
async fn instantiate_recipe(
    State(state): State<HttpState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let who = authorised(&state, &headers, Role::Admin, "change automations").await?;
    let request: InstantiateRecipe = json_body(&headers, body, 64 * 1024).await?;
    let items = state
        .engine
        .instantiate_recipe(&who, &name, &request.connections, &request.parameters)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(AutomationList { items })).into_response())
}

/// Deletes a connection. When automations use it, `confirm=true` is needed
/// (they are deleted with it); without it the answer is 409 listing them.
#[utoipa::path(
    delete, path = "/v1/connections/{id}", tag = "connections", security(("api_key" = [])),
    params(("id" = String, Path), ("confirm" = Option<bool>, Query, description = "delete the automations that use it too")),
    responses(
        (status = 200, body = DeletedConnection), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
    )
)]
async fn delete_connection(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(raw_query): RawQuery,
) -> ApiResult<Response> {
    let who = principal(&state, &headers).await?;
    let params = single_params(raw_query.as_deref(), &["confirm"])?;
    let confirm = match params.get("confirm").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(EngineError::bad_request(
                "confirm",
                format!("expected true or false, got '{other}'"),
            )
            .into());
        }
    };
    let deleted = state.engine.delete_connection(&who, &id, confirm).await?;
    Ok(axum::Json(DeletedConnection {
        deleted_automations: deleted,
    })
    .into_response())
}

/// The partition of the readiness probe's items: one item per router (sort
/// key: the probe's id), each expiring on its own.
const HEALTH_PK: &str = "HEALTH";
/// How long a probe's answer is reused: `/health` is polled, and each probe
/// is a durable write, so a burst of polls costs one write a second.
const HEALTH_REUSE: Duration = Duration::from_secs(1);
/// A store that has not answered the probe within this is unavailable.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a probe item lives (the store reaps it, or hides it once expired).
const HEALTH_ITEM_TTL_SECS: i64 = 300;

/// The readiness probe: writes an item and reads it back through the
/// engine's store. One probe at a time; its answer is reused briefly.
struct HealthProbe {
    engine: Arc<Engine>,
    /// Unique to this router in this process, so probes of other processes
    /// (Lambda instances share one table) never overwrite this one's item.
    id: String,
    sequence: AtomicU64,
    last: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

impl HealthProbe {
    fn new(engine: Arc<Engine>) -> Self {
        use std::hash::{BuildHasher, Hasher};
        // RandomState is seeded randomly per process and per instance: a
        // unique id without a dependency on a random number generator.
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Self {
            engine,
            id: format!("{}-{random:016x}", std::process::id()),
            sequence: AtomicU64::new(0),
            last: tokio::sync::Mutex::new(None),
        }
    }

    async fn check(&self) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if let Some((at, result)) = last.as_ref()
            && at.elapsed() < HEALTH_REUSE
        {
            return result.clone();
        }
        let result = match tokio::time::timeout(HEALTH_TIMEOUT, self.probe()).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(
                    timeout_secs = HEALTH_TIMEOUT.as_secs(),
                    "health: the store did not answer the probe"
                );
                Err(format!(
                    "the store did not answer within {} seconds",
                    HEALTH_TIMEOUT.as_secs()
                ))
            }
        };
        *last = Some((Instant::now(), result.clone()));
        result
    }

    async fn probe(&self) -> Result<(), String> {
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        let store = self.engine.store();
        let item = crmbridge_store::Item::new(HEALTH_PK, self.id.clone(), json!({ "probe": n }))
            .expiring_at(crmbridge_store::now_epoch_seconds() + HEALTH_ITEM_TTL_SECS);
        store
            .put(item)
            .await
            .map_err(|err| store_failure("write", &err))?;
        match store.get(HEALTH_PK, &self.id).await {
            Ok(Some(item)) if item.body["probe"] == n => Ok(()),
            Ok(_) => {
                tracing::warn!(probe = %self.id, "health: the store lost the probe just written");
                Err("the store did not return what was just written".to_owned())
            }
            Err(err) => Err(store_failure("read", &err)),
        }
    }
}

/// What `/health` says about a store failure: the backend and operation,
/// not the backend's message (it may name the host's files or tables).
fn store_failure(doing: &str, err: &crmbridge_store::StoreError) -> String {
    tracing::warn!(error = %err, doing, "health: the store failed the probe");
    match err {
        crmbridge_store::StoreError::Backend {
            backend, operation, ..
        } => format!("the store cannot {doing} ({backend} {operation} failed)"),
        _ => format!("the store cannot {doing}"),
    }
}

/// Readiness: the store takes a write and returns it (a small item that
/// expires by itself). 503 when it cannot; load balancers and supervisors
/// should poll this. The answer is reused for a second.
#[utoipa::path(
    get, path = "/health", tag = "meta",
    responses(
        (status = 200, description = "ready: `{\"status\": \"ok\"}`", body = Object),
        (status = 503, description = "the store cannot write or read: `{\"status\": \"unavailable\", \"error\": …}`", body = Object),
    )
)]
async fn health(State(probe): State<Arc<HealthProbe>>) -> Response {
    match probe.check().await {
        Ok(()) => axum::Json(json!({"status": "ok"})).into_response(),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "unavailable", "error": error})),
        )
            .into_response(),
    }
}

/// Liveness (`crmbridge serve` only): the process answers. No IO, so a slow
/// or broken store never gets a live process restarted; use `/health` for
/// readiness.
#[utoipa::path(get, path = "/live", tag = "meta", responses((status = 200, description = "`{\"status\": \"ok\"}`", body = Object)))]
async fn live() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
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

fn webhook_routes() -> Router<HttpState> {
    Router::new().route(
        "/hooks/{connection}/{token}",
        get(webhook_get).post(webhook),
    )
}

fn chat_routes() -> Router<HttpState> {
    Router::new().route("/chat/{connection}/{token}", post(chat))
}

fn admin_routes() -> Router<HttpState> {
    Router::new()
        .route("/v1/openapi.json", get(openapi_document))
        .route("/v1/tenant", get(get_tenant))
        .route("/v1/tenants", post(create_tenant))
        .route("/v1/keys", get(list_keys).post(create_key))
        .route("/v1/keys/{id}", axum::routing::delete(delete_key))
        .route(
            "/v1/connections",
            get(list_connections).post(create_connection),
        )
        .route(
            "/v1/connections/{id}",
            get(get_connection)
                .patch(update_connection)
                .delete(delete_connection),
        )
        .route("/v1/connections/{id}/check", post(check_connection))
        .route("/v1/connections/{id}/catalog", get(connection_catalog))
        .route("/v1/connections/{id}/authorize", post(authorize_connection))
        .route(OAUTH_CALLBACK, get(oauth_callback))
        .route(
            "/v1/automations",
            get(list_automations).post(create_automation),
        )
        .route(
            "/v1/automations/{id}",
            get(get_automation)
                .put(put_automation)
                .delete(delete_automation),
        )
        .route("/v1/automations/{id}/enable", post(enable_automation))
        .route("/v1/automations/{id}/disable", post(disable_automation))
        .route("/v1/automations/{id}/replay", post(replay_automation))
        .route("/v1/recipes", get(list_recipes))
        .route("/v1/recipes/{name}/instantiate", post(instantiate_recipe))
        .route("/v1/runs", get(list_runs))
        .route("/v1/runs/{id}", get(get_run))
        .route("/v1/runs/{id}/replay", post(replay_run))
}

/// The webhook function's routes: `GET|POST /hooks/{connection}/{token}`.
pub fn webhook_router(state: HttpState) -> Router {
    finish(webhook_routes(), state)
}

/// The chat function's routes: `POST /chat/{connection}/{token}`.
pub fn chat_router(state: HttpState) -> Router {
    finish(chat_routes(), state)
}

/// The admin function's routes, under `/v1`.
pub fn admin_router(state: HttpState) -> Router {
    finish(admin_routes(), state)
}

/// Everything in one router, for `crmbridge serve`, plus [`LOCAL_ROUTES`].
pub fn local_router(state: HttpState) -> Router {
    finish(
        webhook_routes()
            .merge(chat_routes())
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
            .query(Query::prefix(HEALTH_PK, ""))
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
