//! Start-up wiring shared by every binary: tracing, and an [`Engine`] built
//! once from environment variables. Lambda `main`s stay glue: they call
//! [`init_tracing`] and [`aws_engine`], then hand requests to the engine.
//!
//! Environment (Lambda; template.yaml sets all of them):
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `CRMBRIDGE_TABLE` | the DynamoDB table | required |
//! | `CRMBRIDGE_EVENT_BUS` | the EventBridge bus | required |
//! | `CRMBRIDGE_ENCRYPTION_KEYS` | `kid:base64key[,…]`, first one seals | required |
//! | `CRMBRIDGE_MAX_BODY_BYTES` | webhook body limit | 1048576 |
//! | `CRMBRIDGE_PUBLIC_URL` | base URL shown in webhook URLs | from the Host header |
//! | `CRMBRIDGE_LOG` | tracing filter, e.g. `info,crmbridge_engine=debug` | `info` |
//! | `AWS_ENDPOINT_URL` | point the AWS SDK at an emulator (tests) | AWS |
//! | `CRMBRIDGE_ALLOW_ANY_VENDOR_URL` | `true` lets vendor base URLs leave the vendors' domains (tests with fakes only) | `false` |

use std::sync::Arc;

use crmbridge_bus::EventBridgeBus;
use crmbridge_connectors::Registry;
use crmbridge_engine::{Engine, EngineConfig, Keyring};
use crmbridge_store::DynamoStore;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is required")]
    Missing(&'static str),
    #[error("environment variable {name}: {message}")]
    Invalid { name: &'static str, message: String },
}

/// JSON logs on Lambda (CloudWatch parses them), readable text elsewhere.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CRMBRIDGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let result = if std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some() {
        builder.json().flatten_event(true).without_time().try_init()
    } else {
        builder.try_init()
    };
    // A second init (tests) keeps the first subscriber.
    drop(result);
}

fn required(name: &'static str) -> Result<String, ConfigError> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .ok_or(ConfigError::Missing(name))
}

/// The engine limits from the environment, with production defaults.
pub fn engine_config_from_env() -> Result<EngineConfig, ConfigError> {
    let mut config = EngineConfig::default();
    if let Some(bytes) = number_from_env("CRMBRIDGE_MAX_BODY_BYTES", "a number of bytes")? {
        config.max_body_bytes = bytes;
    }
    if let Some(events) =
        number_from_env("CRMBRIDGE_MAX_EVENTS_PER_DELIVERY", "a number of events")?
    {
        config.max_events_per_delivery = events;
    }
    // Lambda retries an asynchronous invocation twice: three deliveries in
    // all, the last of which gives a failing run up (see template.yaml).
    config.max_run_attempts =
        number_from_env("CRMBRIDGE_MAX_RUN_ATTEMPTS", "a number")?.map_or(3, |n: usize| n as u32);
    if let Some(secs) = number_from_env("CRMBRIDGE_RUN_LEASE_SECS", "a number of seconds")? {
        config.run_lease_secs = secs as i64;
    }
    if let Some(runs) = number_from_env("CRMBRIDGE_HALT_AFTER_FAILURES", "a number of runs")? {
        config.halt_after_failures = runs as u32;
    }
    config.allow_any_base_url =
        std::env::var("CRMBRIDGE_ALLOW_ANY_VENDOR_URL").is_ok_and(|v| v == "true" || v == "1");
    Ok(config)
}

/// A whole number from the environment, `None` when the variable is unset.
fn number_from_env(name: &'static str, what: &str) -> Result<Option<usize>, ConfigError> {
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| ConfigError::Invalid {
                name,
                message: format!("'{text}' is not {what}"),
            }),
    }
}

pub fn keyring_from_env() -> Result<Keyring, ConfigError> {
    Keyring::parse(&required("CRMBRIDGE_ENCRYPTION_KEYS")?).map_err(|err| ConfigError::Invalid {
        name: "CRMBRIDGE_ENCRYPTION_KEYS",
        message: err.to_string(),
    })
}

pub fn public_url_from_env() -> Option<String> {
    std::env::var("CRMBRIDGE_PUBLIC_URL")
        .ok()
        .filter(|v| !v.is_empty())
}

/// The AWS SDK configuration (region, credentials, `AWS_ENDPOINT_URL`).
pub async fn aws_sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await
}

/// The DynamoDB store named by `CRMBRIDGE_TABLE`.
pub fn dynamo_store(sdk: &aws_config::SdkConfig) -> Result<DynamoStore, ConfigError> {
    Ok(DynamoStore::new(
        aws_sdk_dynamodb::Client::new(sdk),
        required("CRMBRIDGE_TABLE")?,
    ))
}

/// The engine every Lambda function uses: DynamoDB + EventBridge.
pub async fn aws_engine() -> Result<Arc<Engine>, ConfigError> {
    let sdk = aws_sdk_config().await;
    let store = dynamo_store(&sdk)?;
    let bus = EventBridgeBus::new(
        aws_sdk_eventbridge::Client::new(&sdk),
        required("CRMBRIDGE_EVENT_BUS")?,
    );
    Ok(Arc::new(Engine::new(
        Arc::new(store),
        Arc::new(bus),
        Registry::builtin(),
        keyring_from_env()?,
        engine_config_from_env()?,
    )))
}
