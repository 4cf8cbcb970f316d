//! The admin Lambda: API Gateway → `/v1/…` and `GET /health`. API-key authenticated administration of connections and the run log.
//!
//! Glue only: the engine is built once per container, and every request goes
//! through the same axum routes `crmbridge serve` uses (crmbridge-api).

use crmbridge_api::{HttpState, admin_router};

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
    lambda_http::run(admin_router(state)).await
}
