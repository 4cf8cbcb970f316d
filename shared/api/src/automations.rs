//! `/v1/automations`: automations, enabling, disabling and replaying them.

use super::*;

/// This resource's routes.
pub(crate) fn routes() -> Router<HttpState> {
    Router::new()
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
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AutomationList {
    pub items: Vec<AutomationRecord>,
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
pub(crate) async fn replay_automation(
    State(state): State<HttpState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    who.require_role(Role::Admin, "replay runs")?;
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
pub(crate) async fn automation_body(
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
pub(crate) async fn list_automations(
    State(state): State<HttpState>,
    Caller(who): Caller,
) -> ApiResult<Response> {
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
pub(crate) async fn create_automation(
    State(state): State<HttpState>,
    Caller(who): Caller,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
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
pub(crate) async fn put_automation(
    State(state): State<HttpState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
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
pub(crate) async fn get_automation(
    State(state): State<HttpState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
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
pub(crate) async fn delete_automation(
    State(state): State<HttpState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
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
pub(crate) async fn enable_automation(
    State(state): State<HttpState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
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
pub(crate) async fn disable_automation(
    State(state): State<HttpState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(axum::Json(
        state
            .engine
            .set_automation_enabled(&who, &id, false)
            .await?,
    )
    .into_response())
}
