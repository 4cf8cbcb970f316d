//! `/v1/keys`: the tenant's API keys.

use super::*;

/// This resource's routes.
pub(crate) fn routes() -> Router<HttpState> {
    Router::new()
        .route("/v1/keys", get(list_keys).post(create_key))
        .route("/v1/keys/{id}", axum::routing::delete(delete_key))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyList {
    pub items: Vec<KeyView>,
}

/// The tenant's API keys (never their secrets). Owners only.
#[utoipa::path(
    get, path = "/v1/keys", tag = "keys", security(("api_key" = [])),
    responses((status = 200, body = KeyList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(crate) async fn list_keys(
    State(state): State<HttpState>,
    Caller(who): Caller,
) -> ApiResult<Response> {
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
pub(crate) async fn create_key(
    State(state): State<HttpState>,
    Caller(who): Caller,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    who.require_role(Role::Owner, "manage API keys")?;
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
pub(crate) async fn delete_key(
    State(state): State<HttpState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    state.engine.delete_key(&who, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
