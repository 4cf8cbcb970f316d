//! The webhook Lambda: API Gateway (HTTP API, payload v2) → `GET|POST /hooks/{connection}/{token}`. Verifies and accepts a delivery, publishes its events on EventBridge, answers 202 (200 for a redelivery).
//!
//! Glue only: the engine is built once per container, and every request goes
//! through the same axum routes `crmbridge serve` uses (crmbridge-api).

use crmbridge_api::{HttpState, webhook_router};

// Lambda gives an environment one event at a time: worker threads would
// only lengthen the cold start.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    crmbridge_runtime::init_lambda_tracing();
    let (engine, settings) = crmbridge_runtime::aws_engine().await?;
    let state = HttpState {
        engine,
        public_url: settings.public_url,
    };
    lambda_http::run(webhook_router(state)).await
}
