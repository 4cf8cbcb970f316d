//! The hello-world Lambda the cold-start benchmark compares our bootstraps
//! with: lambda_runtime, tokio, serde_json — nothing else, same profile.

use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::{Value, json};

async fn handle(event: LambdaEvent<Value>) -> Result<Value, lambda_runtime::Error> {
    Ok(json!({ "hello": event.payload }))
}

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::run(service_fn(handle)).await
}
