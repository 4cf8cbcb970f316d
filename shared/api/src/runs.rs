//! `/v1/runs`: the run log and replaying a run.

use super::*;

/// This resource's routes.
pub(crate) fn routes() -> Router<HttpState> {
    Router::new()
        .route("/v1/runs", get(list_runs))
        .route("/v1/runs/{id}", get(get_run))
        .route("/v1/runs/{id}/replay", post(replay_run))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunPage {
    pub items: Vec<RunSummary>,
    /// Pass as `cursor` for the next (older) page; absent on the last.
    pub next_cursor: Option<String>,
}

pub(crate) fn time_param(name: &str, value: Option<&String>) -> ApiResult<Option<DateTime<Utc>>> {
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
pub(crate) async fn list_runs(
    State(state): State<HttpState>,
    Caller(who): Caller,
    RawQuery(raw_query): RawQuery,
) -> ApiResult<Response> {
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
pub(crate) async fn get_run(
    State(state): State<HttpState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
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
pub(crate) async fn replay_run(
    State(state): State<HttpState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(axum::Json(state.engine.replay_run(&who, &id).await?).into_response())
}
