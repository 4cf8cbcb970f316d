//! `/v1/runs`: the run log and replaying a run.

use futures_util::StreamExt;

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
        ("format" = Option<String>, Query, description = "`ndjson`: every matching run, newest first, one JSON object per line, streamed (`application/x-ndjson`); `limit` and `cursor` do not apply"),
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
        &[
            "limit",
            "cursor",
            "automation",
            "status",
            "since",
            "until",
            "format",
        ],
    )?;
    let export = match params.get("format").map(String::as_str) {
        None | Some("json") => false,
        Some("ndjson") => true,
        Some(other) => {
            return Err(EngineError::bad_request(
                "format",
                format!("'{other}' is not a format: json (pages) or ndjson (every run, streamed)"),
            )
            .into());
        }
    };
    if export {
        for name in ["limit", "cursor"] {
            if params.contains_key(name) {
                return Err(EngineError::bad_request(
                    name,
                    "not used with format=ndjson: the export has every matching run",
                )
                .into());
            }
        }
    }
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
    if export {
        return export_runs(
            state,
            who,
            RunFilter {
                limit: 200,
                ..filter
            },
        )
        .await;
    }
    let listing = state.engine.list_runs(&who, filter).await?;
    Ok(axum::Json(RunPage {
        items: listing.items,
        next_cursor: listing.next_cursor,
    })
    .into_response())
}

/// Every run `filter` matches as NDJSON, a page at a time. The first page
/// is read before the answer starts, so a bad filter or key is still an
/// HTTP error; a store failure later cuts the stream short (the client
/// sees a truncated body, never a wrong one).
async fn export_runs(state: HttpState, who: Principal, filter: RunFilter) -> ApiResult<Response> {
    fn lines(items: &[RunSummary]) -> Bytes {
        let mut out = Vec::new();
        for item in items {
            if serde_json::to_writer(&mut out, item).is_ok() {
                out.push(b'\n');
            }
        }
        Bytes::from(out)
    }
    let first = state.engine.list_runs(&who, filter.clone()).await?;
    let head = lines(&first.items);
    let rest = futures_util::stream::try_unfold(
        first.next_cursor.map(|cursor| RunFilter {
            cursor: Some(cursor),
            ..filter
        }),
        move |next| {
            let (engine, who) = (Arc::clone(&state.engine), who.clone());
            async move {
                let Some(filter) = next else {
                    return Ok(None);
                };
                let page = engine.list_runs(&who, filter.clone()).await?;
                let next = page.next_cursor.map(|cursor| RunFilter {
                    cursor: Some(cursor),
                    ..filter
                });
                Ok::<_, EngineError>(Some((lines(&page.items), next)))
            }
        },
    );
    let body = futures_util::stream::once(async move { Ok::<_, EngineError>(head) }).chain(rest);
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
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
