//! `/v1/tenant` (the caller's) and `/v1/tenants` (new ones).

use super::*;

/// This resource's routes.
pub(crate) fn routes() -> Router<HttpState> {
    Router::new()
        .route("/v1/tenant", get(get_tenant))
        .route("/v1/tenants", post(create_tenant))
}

/// The caller's tenant and role.
#[utoipa::path(
    get, path = "/v1/tenant", tag = "tenants", security(("api_key" = [])),
    responses((status = 200, body = TenantView), (status = 401, body = ErrorBody))
)]
pub(crate) async fn get_tenant(
    State(state): State<HttpState>,
    Caller(who): Caller,
) -> ApiResult<Response> {
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
pub(crate) async fn create_tenant(
    State(state): State<HttpState>,
    Caller(who): Caller,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    // Whether this tenant is the deployment's first is checked by the engine
    // (it needs the store); the role is enough to keep other keys out.
    who.require_role(Role::Owner, "create tenants")?;
    let new: NewTenant = json_body(&headers, body, 16 * 1024).await?;
    let created = state.engine.create_tenant(&who, new).await?;
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}
