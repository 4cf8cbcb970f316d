//! Webhook endpoints: `GET|POST /hooks/{connection}/{token}`, answered as the
//! sender requires.

use super::*;

/// This resource's routes.
pub(crate) fn routes() -> Router<HttpState> {
    Router::new().route(
        "/hooks/{connection}/{token}",
        get(webhook_get).post(webhook),
    )
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
pub(crate) async fn webhook(
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
            headers: header_pairs(&headers),
            url: Some(addressed_url(
                &state,
                &headers,
                &format!("/hooks/{connection}/{token}"),
                raw_query.as_deref(),
            )),
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
    Ok(if ids.is_empty() {
        // Nothing in the delivery is an event crmbridge takes (a vendor's
        // test send, our own write reported back, another team's change).
        (
            StatusCode::OK,
            axum::Json(json!({"status": "ignored", "event_ids": ids})),
        )
            .into_response()
    } else if outcome.is_duplicate() {
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
pub(crate) async fn webhook_get(
    state: State<HttpState>,
    path: Path<(String, String)>,
    method: Method,
    query: RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    webhook(state, path, method, query, headers, body).await
}
