//! `/v1/alert-destinations` and `/v1/alerts`: where the tenant's alerts go
//! (signed per Standard Webhooks), and the alerts themselves.

use crmbridge_control::alerts::{
    AlertDestinationView, CreatedAlertDestination, NewAlertDestination,
};
use crmbridge_engine::records::{AlertRecord, AlertSendOutcome};

use super::*;

/// This resource's routes.
pub(crate) fn routes() -> Router<HttpState> {
    Router::new()
        .route(
            "/v1/alert-destinations",
            get(list_alert_destinations).post(create_alert_destination),
        )
        .route(
            "/v1/alert-destinations/{id}",
            axum::routing::delete(delete_alert_destination),
        )
        .route(
            "/v1/alert-destinations/{id}/test",
            post(test_alert_destination),
        )
        .route(
            "/v1/alert-destinations/{id}/rotate-secret",
            post(rotate_alert_secret),
        )
        .route("/v1/alerts", get(list_alerts))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AlertDestinationList {
    pub items: Vec<AlertDestinationView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AlertList {
    pub items: Vec<AlertRecord>,
}

/// Adds a URL that receives the tenant's alerts. The signing secret is in
/// this answer only.
#[utoipa::path(
    post, path = "/v1/alert-destinations", tag = "alerts", security(("api_key" = [])),
    request_body = NewAlertDestination,
    responses(
        (status = 201, body = CreatedAlertDestination),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
    )
)]
pub(crate) async fn create_alert_destination(
    State(state): State<HttpState>,
    Caller(who): Caller,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let new: NewAlertDestination = json_body(&headers, body, 8 * 1024).await?;
    let created = state.engine.create_alert_destination(&who, new).await?;
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

/// The tenant's alert destinations (never their secrets).
#[utoipa::path(
    get, path = "/v1/alert-destinations", tag = "alerts", security(("api_key" = [])),
    responses((status = 200, body = AlertDestinationList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(crate) async fn list_alert_destinations(
    State(state): State<HttpState>,
    Caller(who): Caller,
) -> ApiResult<Response> {
    let items = state.engine.list_alert_destinations(&who).await?;
    Ok(axum::Json(AlertDestinationList { items }).into_response())
}

/// Removes a destination; messages on their way to it are dropped.
#[utoipa::path(
    delete, path = "/v1/alert-destinations/{id}", tag = "alerts", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses(
        (status = 204, description = "deleted"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    )
)]
pub(crate) async fn delete_alert_destination(
    State(state): State<HttpState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    state.engine.delete_alert_destination(&who, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Sends one signed `alert.test` message now; answers what the receiver
/// did (200 whether or not it took it).
#[utoipa::path(
    post, path = "/v1/alert-destinations/{id}/test", tag = "alerts", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses(
        (status = 200, body = AlertSendOutcome),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    )
)]
pub(crate) async fn test_alert_destination(
    State(state): State<HttpState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let outcome = state.engine.test_alert_destination(&who, &id).await?;
    Ok(axum::Json(outcome).into_response())
}

/// A new signing secret (in this answer only); the previous one keeps
/// signing beside it for 24 hours.
#[utoipa::path(
    post, path = "/v1/alert-destinations/{id}/rotate-secret", tag = "alerts", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses(
        (status = 200, body = CreatedAlertDestination),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    )
)]
pub(crate) async fn rotate_alert_secret(
    State(state): State<HttpState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let rotated = state.engine.rotate_alert_secret(&who, &id).await?;
    Ok(axum::Json(rotated).into_response())
}

/// The tenant's alerts: the latest per cause and subject, open or
/// resolved.
#[utoipa::path(
    get, path = "/v1/alerts", tag = "alerts", security(("api_key" = [])),
    responses((status = 200, body = AlertList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub(crate) async fn list_alerts(
    State(state): State<HttpState>,
    Caller(who): Caller,
) -> ApiResult<Response> {
    let items = state.engine.list_alerts(&who).await?;
    Ok(axum::Json(AlertList { items }).into_response())
}
