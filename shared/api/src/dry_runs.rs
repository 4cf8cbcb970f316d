//! `POST /v1/automations/{id}/test` and `POST /v1/automation-tests`: the
//! dry run of a saved automation, or of a document not saved yet, on a
//! sample event, a sample webhook delivery or the last real event.

use std::collections::BTreeMap;

use crmbridge_control::dry_runs::{DryRuns as _, DrySample, given_outputs};
use crmbridge_engine::dry_run::{DryRunOptions, SampleDelivery};
use crmbridge_mapping::Subject;
use serde_json::Value;

use super::*;

/// This resource's routes.
pub(crate) fn routes() -> Router<HttpState> {
    Router::new()
        .route("/v1/automations/{id}/test", post(test_automation))
        .route("/v1/automation-tests", post(test_automation_document))
}

/// What to plan for. At most one of `event` and `delivery`; with neither,
/// the event of the automation's newest run.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AutomationTest {
    /// The automation document (`/v1/automation-tests` only).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub automation: Option<Value>,
    #[serde(default)]
    pub event: Option<SampleEvent>,
    #[serde(default)]
    pub delivery: Option<SampleWebhook>,
    /// Make the look-ups a run would make (vendor reads, never writes).
    #[serde(default)]
    pub reads: bool,
    /// Outputs to assume for steps, by step id.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub outputs: BTreeMap<String, Value>,
}

/// A sample event: its data as templates see it (`event.*`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SampleEvent {
    #[schema(value_type = Object)]
    pub data: Value,
    /// What it is about (`kind`, `id`), for the links of that record.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub subject: Option<Subject>,
}

/// A sample webhook delivery, decoded as the trigger's connection decodes
/// one (signatures are checked; nothing is accepted).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SampleWebhook {
    #[serde(default = "post_method")]
    pub method: String,
    /// The raw body, as text.
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub content_type: Option<String>,
    /// The raw query string, without `?`.
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The URL as the sender addressed it (for vendors that sign it).
    #[serde(default)]
    pub url: Option<String>,
}

fn post_method() -> String {
    "POST".into()
}

fn sample_of(test: &mut AutomationTest) -> ApiResult<DrySample> {
    match (test.event.take(), test.delivery.take()) {
        (Some(_), Some(_)) => Err(EngineError::bad_request(
            "delivery",
            "give either a sample event or a delivery, not both",
        )
        .into()),
        (Some(event), None) => Ok(DrySample::Data {
            data: event.data,
            subject: event.subject,
        }),
        (None, Some(webhook)) => Ok(DrySample::Delivery(SampleDelivery {
            method: webhook.method.to_ascii_uppercase(),
            query: query_pairs(webhook.query.as_deref()),
            content_type: webhook.content_type,
            body: webhook.body.into_bytes(),
            headers: webhook
                .headers
                .into_iter()
                .map(|(name, value)| (name.to_ascii_lowercase(), value))
                .collect(),
            url: webhook.url,
        })),
        (None, None) => Ok(DrySample::LastReal),
    }
}

fn options_of(test: &mut AutomationTest) -> ApiResult<DryRunOptions> {
    Ok(DryRunOptions {
        reads: test.reads,
        outputs: given_outputs(std::mem::take(&mut test.outputs))?,
    })
}

/// The dry run of a saved automation: its filter evaluated and every
/// step's request rendered as a run would send it, with no vendor write.
/// Errors name the template path.
#[utoipa::path(
    post, path = "/v1/automations/{id}/test", tag = "automations", security(("api_key" = [])),
    params(("id" = String, Path)),
    request_body = AutomationTest,
    responses(
        (status = 200, description = "the plan", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
    )
)]
pub(crate) async fn test_automation(
    State(state): State<HttpState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let mut test: AutomationTest = json_body(&headers, body, 256 * 1024).await?;
    if test.automation.is_some() {
        return Err(EngineError::bad_request(
            "automation",
            "this automation is saved: test a document with POST /v1/automation-tests",
        )
        .into());
    }
    let sample = sample_of(&mut test)?;
    let options = options_of(&mut test)?;
    let plan = state
        .engine
        .test_automation(&who, &id, sample, options)
        .await?;
    Ok(axum::Json(plan).into_response())
}

/// The dry run of an automation document that is not saved: validated as
/// saving would, then planned like a saved one.
#[utoipa::path(
    post, path = "/v1/automation-tests", tag = "automations", security(("api_key" = [])),
    request_body = AutomationTest,
    responses(
        (status = 200, description = "the plan", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
pub(crate) async fn test_automation_document(
    State(state): State<HttpState>,
    Caller(who): Caller,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let mut test: AutomationTest = json_body(&headers, body, 256 * 1024).await?;
    let Some(document) = test.automation.take() else {
        return Err(
            EngineError::bad_request("automation", "the automation document is required").into(),
        );
    };
    let automation: crmbridge_engine::Automation = serde_json::from_value(document)
        .map_err(|err| EngineError::bad_request("automation", err.to_string()))?;
    let sample = sample_of(&mut test)?;
    let options = options_of(&mut test)?;
    let plan = state
        .engine
        .test_automation_document(&who, automation, sample, options)
        .await?;
    Ok(axum::Json(plan).into_response())
}
