//! `/v1/imports`: importing a connection's existing records before live
//! sync, and watching its progress.

use crmbridge_engine::records::ImportRecord;

use super::*;

/// This resource's routes.
pub(crate) fn routes() -> Router<HttpState> {
    Router::new()
        .route("/v1/imports", get(list_imports).post(start_import))
        .route("/v1/imports/{id}", get(get_import))
        .route("/v1/imports/{id}/resume", post(resume_import))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewImport {
    /// The connection whose existing records are read (`con_…`).
    pub connection: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ImportList {
    pub items: Vec<ImportRecord>,
}

/// Starts importing a connection's existing records: each becomes the
/// event its creation would have been, for the connection's automations.
/// One import per connection at a time (409 while one runs or waits to be
/// resumed).
#[utoipa::path(
    post, path = "/v1/imports", tag = "imports", security(("api_key" = [])),
    request_body = NewImport,
    responses(
        (status = 202, body = ImportRecord),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
pub(crate) async fn start_import(
    State(state): State<HttpState>,
    Caller(who): Caller,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    who.require_role(Role::Admin, "start imports")?;
    let new: NewImport = json_body(&headers, body, 4 * 1024).await?;
    let job = state
        .engine
        .start_import(&who.tenant, &new.connection)
        .await?;
    Ok((StatusCode::ACCEPTED, axum::Json(job)).into_response())
}

/// The tenant's imports, newest first.
#[utoipa::path(
    get, path = "/v1/imports", tag = "imports", security(("api_key" = [])),
    responses((status = 200, body = ImportList), (status = 401, body = ErrorBody))
)]
pub(crate) async fn list_imports(
    State(state): State<HttpState>,
    Caller(who): Caller,
) -> ApiResult<Response> {
    let items = state.engine.list_imports(&who.tenant).await?;
    Ok(axum::Json(ImportList { items }).into_response())
}

/// One import: `status`, `done`, `total` (when the vendor gives it),
/// per-kind progress, `started_at`, `finished_at`, and why it failed.
#[utoipa::path(
    get, path = "/v1/imports/{id}", tag = "imports", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = ImportRecord), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub(crate) async fn get_import(
    State(state): State<HttpState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(axum::Json(state.engine.get_import(&who.tenant, &id).await?).into_response())
}

/// Goes on with a failed import from the page where it stopped (409 for
/// one that is running or finished).
#[utoipa::path(
    post, path = "/v1/imports/{id}/resume", tag = "imports", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses(
        (status = 202, body = ImportRecord), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
    )
)]
pub(crate) async fn resume_import(
    State(state): State<HttpState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    who.require_role(Role::Admin, "resume imports")?;
    let job = state.engine.resume_import(&who.tenant, &id).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(job)).into_response())
}
