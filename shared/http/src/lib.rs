//! The HTTP edge: one set of axum routes over the [`Engine`], so the Lambda
//! functions (through `lambda_http`) and `crmbridge serve` answer every
//! request identically.
//!
//! Every error is JSON: `{"error": {"code", "message", "field"?}}` with the
//! status the engine chose. Request bodies are read with a hard limit
//! before anything else happens, so an oversize body is a 413 that touches
//! no state.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use crmbridge_engine::admin::{ConnectionView, NewConnection, Principal};
use crmbridge_engine::ingest::WebhookRequest;
use crmbridge_engine::{Engine, EngineError};
use serde::Deserialize;
use serde_json::json;

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

struct ApiError(EngineError);

impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> Self {
        Self(err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        if status >= 500 {
            tracing::error!(error = %self.0, code = self.0.code(), "request failed");
        } else {
            tracing::info!(error = %self.0, code = self.0.code(), "request refused");
        }
        error_response(status, self.0.to_body())
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

async fn principal(state: &HttpState, headers: &HeaderMap) -> ApiResult<Principal> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    Ok(state.engine.authenticate(authorization).await?)
}

/// Parses a JSON body, naming the exact path of the first problem.
fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let field = if path == "." { "body".to_owned() } else { path };
        EngineError::bad_request(field, err.into_inner().to_string()).into()
    })
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

fn connection_json(view: &ConnectionView, base: &str) -> serde_json::Value {
    let mut value = serde_json::to_value(view).unwrap_or_default();
    value["webhook_url"] = format!("{base}{}", view.webhook_path).into();
    value["chat_url"] = format!("{base}{}", view.chat_path).into();
    value
}

async fn create_connection(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let who = principal(&state, &headers).await?;
    let body = read_body(&headers, body, 256 * 1024).await?;
    let new: NewConnection = parse_json(&body)?;
    let view = state.engine.create_connection(&who, new).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(connection_json(&view, &base_url(&state, &headers))),
    )
        .into_response())
}

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
        .iter()
        .map(|view| connection_json(view, &base))
        .collect();
    Ok(axum::Json(json!({"items": items})).into_response())
}

async fn get_connection(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let who = principal(&state, &headers).await?;
    let view = state.engine.get_connection(&who, &id).await?;
    Ok(axum::Json(connection_json(&view, &base_url(&state, &headers))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

async fn list_runs(
    State(state): State<HttpState>,
    headers: HeaderMap,
    query: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let who = principal(&state, &headers).await?;
    let Query(query) = query.map_err(|err| EngineError::bad_request("query", err.body_text()))?;
    let limit = match query.limit.as_deref() {
        None => 50,
        Some(text) => text
            .parse()
            .map_err(|_| EngineError::bad_request("limit", "must be a whole number"))?,
    };
    let listing = state.engine.list_runs(&who, limit, query.cursor).await?;
    Ok(axum::Json(listing).into_response())
}

async fn get_run(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let who = principal(&state, &headers).await?;
    Ok(axum::Json(state.engine.get_run(&who, &id).await?).into_response())
}

/// An automation from a JSON body, or YAML when the content type says so.
fn parse_automation(headers: &HeaderMap, body: &[u8]) -> ApiResult<crmbridge_engine::Automation> {
    let is_yaml = content_type(headers).is_some_and(|ct| ct.contains("yaml"));
    if is_yaml {
        let text = std::str::from_utf8(body)
            .map_err(|_| EngineError::bad_request("body", "YAML must be UTF-8"))?;
        serde_yaml::from_str(text).map_err(|err| {
            let at = err
                .location()
                .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
                .unwrap_or_default();
            EngineError::bad_request("body", format!("{err}{at}")).into()
        })
    } else {
        parse_json(body)
    }
}

async fn list_automations(
    State(state): State<HttpState>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let who = principal(&state, &headers).await?;
    Ok(axum::Json(json!({"items": state.engine.list_automations(&who).await?})).into_response())
}

async fn create_automation(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let who = principal(&state, &headers).await?;
    let body = read_body(&headers, body, 256 * 1024).await?;
    let automation = parse_automation(&headers, &body)?;
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

async fn put_automation(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let who = principal(&state, &headers).await?;
    let body = read_body(&headers, body, 256 * 1024).await?;
    let automation = parse_automation(&headers, &body)?;
    if automation.id != id {
        return Err(EngineError::bad_request(
            "id",
            format!("the body's id '{}' is not the path's '{id}'", automation.id),
        )
        .into());
    }
    Ok(axum::Json(state.engine.save_automation(&who, automation).await?).into_response())
}

async fn get_automation(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let who = principal(&state, &headers).await?;
    Ok(axum::Json(state.engine.get_automation(&who, &id).await?).into_response())
}

async fn delete_automation(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let who = principal(&state, &headers).await?;
    state.engine.delete_automation(&who, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn enable_automation(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let who = principal(&state, &headers).await?;
    Ok(axum::Json(state.engine.set_automation_enabled(&who, &id, true).await?).into_response())
}

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

async fn list_recipes(State(state): State<HttpState>, headers: HeaderMap) -> ApiResult<Response> {
    principal(&state, &headers).await?;
    let mut items = Vec::new();
    for (name, _) in crmbridge_engine::recipes::RECIPES {
        let recipe = crmbridge_engine::recipes::recipe(name)?;
        items.push(json!({
            "name": recipe.name,
            "description": recipe.description,
            "connections": recipe.connections,
            "automations": recipe.automations.iter().map(|a| json!({"id": a.id, "name": a.name})).collect::<Vec<_>>(),
        }));
    }
    Ok(axum::Json(json!({"items": items})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstantiateRecipe {
    connections: std::collections::BTreeMap<String, String>,
}

async fn instantiate_recipe(
    State(state): State<HttpState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let who = principal(&state, &headers).await?;
    let body = read_body(&headers, body, 64 * 1024).await?;
    let request: InstantiateRecipe = parse_json(&body)?;
    let saved = state
        .engine
        .instantiate_recipe(&who, &name, &request.connections)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(json!({"items": saved}))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfirmQuery {
    confirm: Option<String>,
}

async fn delete_connection(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<ConfirmQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let who = principal(&state, &headers).await?;
    let Query(query) = query.map_err(|err| EngineError::bad_request("query", err.body_text()))?;
    let confirm = match query.confirm.as_deref() {
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
    Ok(axum::Json(json!({"deleted_automations": deleted})).into_response())
}

async fn health() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
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
    router
        .route("/health", get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

fn webhook_routes() -> Router<HttpState> {
    Router::new().route("/hooks/{connection}/{token}", get(webhook).post(webhook))
}

fn chat_routes() -> Router<HttpState> {
    Router::new().route("/chat/{connection}/{token}", post(chat))
}

fn admin_routes() -> Router<HttpState> {
    Router::new()
        .route(
            "/v1/connections",
            get(list_connections).post(create_connection),
        )
        .route(
            "/v1/connections/{id}",
            get(get_connection).delete(delete_connection),
        )
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
        .route("/v1/recipes", get(list_recipes))
        .route("/v1/recipes/{name}/instantiate", post(instantiate_recipe))
        .route("/v1/runs", get(list_runs))
        .route("/v1/runs/{id}", get(get_run))
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

/// Everything in one router, for `crmbridge serve`.
pub fn local_router(state: HttpState) -> Router {
    finish(
        webhook_routes().merge(chat_routes()).merge(admin_routes()),
        state,
    )
}

/// Every route this crate serves, as `METHOD path` — for the test that
/// checks template.yaml routes each one to a function.
pub const ROUTES: &[(&str, &str, &str)] = &[
    ("webhook", "GET", "/hooks/{connection}/{token}"),
    ("webhook", "POST", "/hooks/{connection}/{token}"),
    ("chat", "POST", "/chat/{connection}/{token}"),
    ("admin", "GET", "/v1/connections"),
    ("admin", "POST", "/v1/connections"),
    ("admin", "GET", "/v1/connections/{id}"),
    ("admin", "DELETE", "/v1/connections/{id}"),
    ("admin", "GET", "/v1/automations"),
    ("admin", "POST", "/v1/automations"),
    ("admin", "GET", "/v1/automations/{id}"),
    ("admin", "PUT", "/v1/automations/{id}"),
    ("admin", "DELETE", "/v1/automations/{id}"),
    ("admin", "POST", "/v1/automations/{id}/enable"),
    ("admin", "POST", "/v1/automations/{id}/disable"),
    ("admin", "GET", "/v1/recipes"),
    ("admin", "POST", "/v1/recipes/{name}/instantiate"),
    ("admin", "DELETE", "/v1/connections/{id}"),
    ("admin", "GET", "/v1/automations"),
    ("admin", "POST", "/v1/automations"),
    ("admin", "GET", "/v1/automations/{id}"),
    ("admin", "PUT", "/v1/automations/{id}"),
    ("admin", "DELETE", "/v1/automations/{id}"),
    ("admin", "POST", "/v1/automations/{id}/enable"),
    ("admin", "POST", "/v1/automations/{id}/disable"),
    ("admin", "GET", "/v1/recipes"),
    ("admin", "POST", "/v1/recipes/{name}/instantiate"),
    ("admin", "GET", "/v1/runs"),
    ("admin", "GET", "/v1/runs/{id}"),
    ("admin", "GET", "/health"),
];
