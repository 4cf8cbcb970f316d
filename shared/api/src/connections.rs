//! `/v1/connections`: connections, their check and live catalog, OAuth
//! consent and its callback.

use super::*;

/// This resource's routes.
pub(crate) fn routes() -> Router<HttpState> {
    Router::new()
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
pub struct DeletedConnection {
    pub deleted_automations: Vec<String>,
}

pub(crate) fn connection_json(view: ConnectionView, base: &str) -> ConnectionResponse {
    ConnectionResponse {
        webhook_url: format!("{base}{}", view.webhook_path),
        chat_url: format!("{base}{}", view.chat_path),
        connection: view,
    }
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
pub(crate) async fn create_connection(
    State(state): State<HttpState>,
    Caller(who): Caller,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    who.require_role(Role::Admin, "create connections")?;
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
pub(crate) async fn list_connections(
    State(state): State<HttpState>,
    Caller(who): Caller,
    headers: HeaderMap,
) -> ApiResult<Response> {
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
pub(crate) async fn get_connection(
    State(state): State<HttpState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
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
pub(crate) async fn update_connection(
    State(state): State<HttpState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    who.require_role(Role::Admin, "change connections")?;
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
pub(crate) async fn check_connection(
    State(state): State<HttpState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
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
pub(crate) async fn authorize_connection(
    State(state): State<HttpState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    who.require_role(Role::Admin, "authorize connections")?;
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
pub(crate) async fn oauth_callback(
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
pub(crate) async fn connection_catalog(
    State(state): State<HttpState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let catalog = state.engine.connection_catalog(&who, &id).await?;
    Ok(axum::Json(catalog).into_response())
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
pub(crate) async fn delete_connection(
    State(state): State<HttpState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    RawQuery(raw_query): RawQuery,
) -> ApiResult<Response> {
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
