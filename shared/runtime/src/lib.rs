//! Start-up wiring shared by every binary: tracing, the one configuration
//! type ([`Settings`]), and an [`Engine`] built once from it. Lambda
//! `main`s stay glue: they call [`init_lambda_tracing`] and [`aws_engine`], then
//! hand requests to the engine.
//!
//! [`Settings`] is read by the Lambda functions from the environment and
//! by `crmbridge serve` from its flags (each flag falls back to the same
//! environment variable); where the two deployments need different
//! defaults ([`Deployment`]) the setting is optional and the deployment
//! fills it in. Lambda also needs `CRMBRIDGE_TABLE`, `CRMBRIDGE_EVENT_BUS`
//! and `CRMBRIDGE_ENCRYPTION_KEYS` (template.yaml sets them), and every
//! binary reads `CRMBRIDGE_LOG` (log levels) and the AWS SDK's own
//! variables (`AWS_ENDPOINT_URL` points it at an emulator).

pub mod lambda_sdk;
pub mod metrics;

use std::sync::Arc;

use tracing_subscriber::filter::Targets;

use crmbridge_bus::EventBridgeBus;
use crmbridge_connectors::Registry;
use crmbridge_engine::{Engine, EngineConfig, Keyring};
use crmbridge_store::DynamoStore;

/// What both deployments can be told (flags for `serve`, environment for
/// both). The doc comment of each field is its `--help` text.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Settings {
    /// Largest webhook body accepted, in bytes (413 above).
    #[arg(long, env = "CRMBRIDGE_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Base URL shown in webhook URLs and used as the OAuth redirect (e.g.
    /// the public URL of a tunnel or proxy); from the Host header when unset.
    #[arg(long, env = "CRMBRIDGE_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Let connections use any http(s) base URL, e.g. fakes on loopback. For
    /// tests only: in production a vendor's base URL must be on its domain.
    #[arg(long, env = "CRMBRIDGE_ALLOW_ANY_VENDOR_URL")]
    pub allow_any_vendor_url: bool,
    /// Most events one webhook delivery may carry (a JSON array is a batch); 413 above.
    #[arg(
        long,
        env = "CRMBRIDGE_MAX_EVENTS_PER_DELIVERY",
        default_value_t = 1000
    )]
    pub max_events_per_delivery: usize,
    /// Deliveries an event gets before it is given up and its runs fail (a
    /// delivery whose worker dies counts too). Lambda: 3 (its own 1 + 2
    /// async retries); serve: 8.
    #[arg(long = "max-attempts", env = "CRMBRIDGE_MAX_RUN_ATTEMPTS", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_run_attempts: Option<u32>,
    /// How long a dispatch worker's lease on a run lasts unrenewed, in
    /// seconds; on Lambda it must exceed the dispatch function's timeout.
    /// Lambda: 90; serve: 600 (a dead process's leases are taken over at
    /// once there).
    #[arg(long, env = "CRMBRIDGE_RUN_LEASE_SECS", value_parser = clap::value_parser!(i64).range(1..=86_400))]
    pub run_lease_secs: Option<i64>,
    /// Runs of an automation that fail for good in a row before it is halted (0 = never).
    #[arg(long, env = "CRMBRIDGE_HALT_AFTER_FAILURES", default_value_t = 5)]
    pub halt_after_failures: u32,
}

/// Where crmbridge runs, for the defaults that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deployment {
    /// The Lambda functions, on DynamoDB and EventBridge.
    Lambda,
    /// `crmbridge serve`: one process, the only worker on its data directory.
    Serve,
}

/// The environment alone, parsed as the flags would be.
#[derive(Debug, clap::Parser)]
#[command(name = "crmbridge")]
struct FromEnvironment {
    #[command(flatten)]
    settings: Settings,
}

impl Settings {
    /// The settings from the environment (the Lambda functions). A value
    /// that does not parse is an error naming its variable.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::parse_from(["crmbridge"])
    }

    /// The settings from these arguments, then the environment.
    fn parse_from(args: impl IntoIterator<Item = &'static str>) -> Result<Self, ConfigError> {
        use clap::{CommandFactory, Parser};
        FromEnvironment::try_parse_from(args)
            .map(|parsed| parsed.settings)
            .map_err(|err| {
                let command = FromEnvironment::command();
                let argument = err
                    .get(clap::error::ContextKind::InvalidArg)
                    .map(ToString::to_string)
                    .unwrap_or_default();
                let variable = command
                    .get_arguments()
                    .find(|arg| {
                        arg.get_long()
                            .is_some_and(|long| argument.starts_with(&format!("--{long}")))
                    })
                    .and_then(|arg| arg.get_env())
                    .map(|env| env.to_string_lossy().into_owned());
                let value = err
                    .get(clap::error::ContextKind::InvalidValue)
                    .map(ToString::to_string);
                match (variable, value) {
                    (Some(name), Some(value)) => ConfigError::Invalid {
                        name,
                        message: format!("'{value}' is not a valid value"),
                    },
                    // Anything else: clap's own first line says what.
                    _ => ConfigError::Invalid {
                        name: "settings".into(),
                        message: err
                            .to_string()
                            .lines()
                            .next()
                            .unwrap_or_default()
                            .trim_start_matches("error: ")
                            .to_owned(),
                    },
                }
            })
    }

    /// The engine's limits for a deployment.
    pub fn engine_config(&self, deployment: Deployment) -> EngineConfig {
        let (attempts, lease) = match deployment {
            Deployment::Lambda => (3, 90),
            Deployment::Serve => (8, 600),
        };
        EngineConfig {
            max_body_bytes: self.max_body_bytes,
            allow_any_base_url: self.allow_any_vendor_url,
            max_events_per_delivery: self.max_events_per_delivery,
            max_run_attempts: self.max_run_attempts.unwrap_or(attempts),
            run_lease_secs: self.run_lease_secs.unwrap_or(lease),
            halt_after_failures: self.halt_after_failures,
            // serve's data-directory lock makes it the only worker.
            sole_worker: deployment == Deployment::Serve,
            ..EngineConfig::default()
        }
    }

    /// How many deliveries an event gets, for the deployment.
    pub fn max_run_attempts(&self, deployment: Deployment) -> u32 {
        self.engine_config(deployment).max_run_attempts
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is required")]
    Missing(&'static str),
    #[error("environment variable {name}: {message}")]
    Invalid { name: String, message: String },
}

/// The variable holding the log filter.
pub const LOG_VARIABLE: &str = "CRMBRIDGE_LOG";

/// Readable text logs, filtered by [`LOG_VARIABLE`]: the `crmbridge`
/// command line and `serve`.
pub fn init_tracing() {
    use std::io::IsTerminal;
    // Colours only on a terminal: not in a file, a pipe or journald. (The
    // `crmbridge` crate, the one caller, turns on tracing-subscriber's `ansi`.)
    install_tracing(
        tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_ansi(std::io::stdout().is_terminal()),
    );
}

/// JSON logs, one flat object per event (CloudWatch parses them), filtered
/// by [`LOG_VARIABLE`]: the Lambda functions. Apart from [`init_tracing`]
/// so a bootstrap links only the one formatter it uses.
pub fn init_lambda_tracing() {
    install_tracing(
        tracing_subscriber::fmt::layer()
            .with_target(false)
            .json()
            .flatten_event(true)
            .without_time(),
    );
}

fn install_tracing<L>(layer: L)
where
    L: tracing_subscriber::Layer<
            tracing_subscriber::layer::Layered<Targets, tracing_subscriber::Registry>,
        > + Send
        + Sync
        + 'static,
{
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let (filter, problem) = log_filter(std::env::var(LOG_VARIABLE).ok().as_deref());
    let result = tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init();
    // A second init (tests) keeps the first subscriber.
    drop(result);
    if let Some(problem) = problem {
        tracing::warn!(variable = LOG_VARIABLE, %problem, "logging at info instead");
    }
}

/// The filter a [`LOG_VARIABLE`] value names (`info`,
/// `info,crmbridge_engine=debug`: a default level and levels per module),
/// or `info` and why the value was not used. Per-module levels, not
/// `EnvFilter`'s span and field matching: that links a regular-expression
/// compiler into every bootstrap for a filter nobody sets on a function.
fn log_filter(value: Option<&str>) -> (Targets, Option<String>) {
    let info = || Targets::new().with_default(tracing::Level::INFO);
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => (info(), None),
        Some(value) => match value.parse::<Targets>() {
            Ok(targets) => (targets, None),
            Err(err) => (info(), Some(format!("'{value}' is not a filter: {err}"))),
        },
    }
}

fn required(name: &'static str) -> Result<String, ConfigError> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .ok_or(ConfigError::Missing(name))
}

pub fn keyring_from_env() -> Result<Keyring, ConfigError> {
    Keyring::parse(&required("CRMBRIDGE_ENCRYPTION_KEYS")?).map_err(|err| ConfigError::Invalid {
        name: "CRMBRIDGE_ENCRYPTION_KEYS".into(),
        message: err.to_string(),
    })
}

/// The AWS SDK configuration of the command line (`bootstrap --aws`):
/// aws-config's providers (profiles, SSO, `AWS_ENDPOINT_URL`) and the
/// system's certificate authorities. The Lambda functions use
/// [`lambda_sdk`] instead.
pub async fn aws_sdk_config() -> Result<aws_config::SdkConfig, ConfigError> {
    let https = lambda_sdk::aws_https_client(lambda_sdk::Trust::System, None)?;
    Ok(aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(https)
        .load()
        .await)
}

/// The DynamoDB store named by `CRMBRIDGE_TABLE`.
pub fn dynamo_store(sdk: &aws_config::SdkConfig) -> Result<DynamoStore, ConfigError> {
    Ok(DynamoStore::new(
        aws_sdk_dynamodb::Client::new(sdk),
        required("CRMBRIDGE_TABLE")?,
    ))
}

/// The engine every Lambda function uses: DynamoDB + EventBridge, with
/// the [`Settings`] from the environment (returned too: the HTTP functions
/// need the public URL).
pub async fn aws_engine() -> Result<(Arc<Engine>, Settings), ConfigError> {
    let settings = Settings::from_env()?;
    let sdk = lambda_sdk::sdk_config_from_env()?;
    let store = dynamo_store(&sdk)?;
    let bus = EventBridgeBus::new(
        aws_sdk_eventbridge::Client::new(&sdk),
        required("CRMBRIDGE_EVENT_BUS")?,
    );
    let engine = Arc::new(
        Engine::new(
            Arc::new(store),
            Arc::new(bus),
            Registry::builtin(),
            keyring_from_env()?,
            settings.engine_config(Deployment::Lambda),
        )
        .with_metrics(Arc::new(metrics::EmfMetrics)),
    );
    Ok((engine, settings))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_log_filter_takes_a_default_level_and_levels_per_module() {
        use tracing::Level;
        use tracing_subscriber::filter::LevelFilter;

        let (filter, problem) = log_filter(Some(" info,crmbridge_engine=debug "));
        assert_eq!(problem, None);
        assert!(filter.would_enable("crmbridge_engine::dispatch", &Level::DEBUG));
        assert!(!filter.would_enable("crmbridge_store", &Level::DEBUG));
        assert!(filter.would_enable("crmbridge_store", &Level::INFO));

        let (filter, problem) = log_filter(None);
        assert_eq!(problem, None);
        assert_eq!(filter.default_level(), Some(LevelFilter::INFO));

        let (filter, problem) = log_filter(Some("info,crmbridge_engine=loud"));
        assert_eq!(filter.default_level(), Some(LevelFilter::INFO));
        assert!(!filter.would_enable("crmbridge_engine", &Level::DEBUG));
        let problem = problem.unwrap();
        assert!(
            problem.contains("'info,crmbridge_engine=loud'"),
            "{problem}"
        );
    }

    #[test]
    fn each_deployment_fills_in_its_own_defaults() {
        let settings = Settings::parse_from(["crmbridge"]).unwrap();
        let lambda = settings.engine_config(Deployment::Lambda);
        let serve = settings.engine_config(Deployment::Serve);
        assert_eq!((lambda.max_run_attempts, lambda.run_lease_secs), (3, 90));
        assert_eq!((serve.max_run_attempts, serve.run_lease_secs), (8, 600));
        assert!(!lambda.sole_worker && serve.sole_worker);
        assert_eq!(lambda.max_body_bytes, 1024 * 1024);
        let told = Settings::parse_from([
            "crmbridge",
            "--max-attempts",
            "5",
            "--run-lease-secs",
            "120",
            "--allow-any-vendor-url",
            "--halt-after-failures",
            "0",
        ])
        .unwrap();
        for deployment in [Deployment::Lambda, Deployment::Serve] {
            let config = told.engine_config(deployment);
            assert_eq!((config.max_run_attempts, config.run_lease_secs), (5, 120));
            assert!(config.allow_any_base_url);
            assert_eq!(config.halt_after_failures, 0);
        }
    }

    #[test]
    fn a_bad_value_is_an_error_naming_its_variable() {
        for (args, variable) in [
            (
                ["crmbridge", "--max-body-bytes", "lots"],
                "CRMBRIDGE_MAX_BODY_BYTES",
            ),
            (
                ["crmbridge", "--max-attempts", "0"],
                "CRMBRIDGE_MAX_RUN_ATTEMPTS",
            ),
            (
                ["crmbridge", "--run-lease-secs", "0"],
                "CRMBRIDGE_RUN_LEASE_SECS",
            ),
        ] {
            let err = Settings::parse_from(args).unwrap_err().to_string();
            assert!(err.contains(variable), "{args:?}: {err}");
        }
    }
}
