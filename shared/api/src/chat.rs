//! The chat relay: `POST /chat/{connection}/{token}`, answered when the runs
//! are done.

use super::*;

/// This resource's routes.
pub(crate) fn routes() -> Router<HttpState> {
    Router::new().route("/chat/{connection}/{token}", post(chat))
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
pub(crate) async fn chat(
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
            headers: header_pairs(&headers),
            url: Some(addressed_url(
                &state,
                &headers,
                &format!("/chat/{connection}/{token}"),
                raw_query.as_deref(),
            )),
        })
        .await?;
    Ok(axum::Json(json!({
        "runs": handled.runs,
        "duplicates": handled.duplicates,
    }))
    .into_response())
}
