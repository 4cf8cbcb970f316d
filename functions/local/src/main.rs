//! `crmbridge`: the whole gateway as one local process, and the tools to set
//! up a deployment.
//!
//! `crmbridge serve` runs what the Lambda functions run, on one HTTP server
//! bound to loopback, with the SQLite store and the durable outbox bus in a
//! data directory and the tick on a timer. `crmbridge admin bootstrap`
//! creates the first tenant and owner key in a DynamoDB table; `crmbridge
//! openapi` prints the admin API's OpenAPI document.

mod serve;

// A profile of `serve` under load spent a fifth of its time in glibc's
// malloc and free; mimalloc keeps per-thread free lists.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use crmbridge_control::prelude::*;

#[derive(Debug, Parser)]
#[command(
    name = "crmbridge",
    version,
    about = "Keeps CRMs, call trackers and work tools in sync"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway locally: webhooks, chat, admin API, dispatch and tick in one process.
    Serve(ServeArgs),
    /// Set up a deployment on AWS.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Print the admin API's OpenAPI document (the one served at /v1/openapi.json).
    Openapi,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on. Keep it on loopback unless a reverse proxy with TLS is in front.
    #[arg(long, env = "CRMBRIDGE_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one; the chosen URL is printed).
    #[arg(long, env = "CRMBRIDGE_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Where the SQLite store, the outbox and the generated encryption key live.
    #[arg(long, env = "CRMBRIDGE_DATA_DIR", default_value = ".crmbridge")]
    pub data_dir: PathBuf,
    /// How often polled sources are ticked, e.g. 300s, 5m.
    #[arg(long, env = "CRMBRIDGE_TICK_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub tick_interval: Duration,
    /// Runs in flight at once, one task each (a run waiting on a vendor
    /// holds one of them, not a thread); 0 only accepts (events wait on
    /// disk for a later start).
    #[arg(long, env = "CRMBRIDGE_WORKERS", default_value_t = 64)]
    pub workers: usize,
    /// First wait before a failed delivery is retried; it doubles each time.
    #[arg(long, env = "CRMBRIDGE_RETRY_BACKOFF", default_value = "500ms", value_parser = parse_duration)]
    pub retry_backoff: Duration,
    /// What the Lambda functions are told by their environment, the same here.
    #[command(flatten)]
    pub settings: crmbridge_runtime::Settings,
    /// Name of the first tenant, created on the first start.
    #[arg(long, default_value = "default")]
    pub tenant_name: String,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Create the first tenant and its owner key in CRMBRIDGE_TABLE (once; prints the key).
    Bootstrap {
        #[arg(long, default_value = "default")]
        tenant_name: String,
        /// Create the table first (for an emulator; on AWS, SAM owns the table).
        #[arg(long)]
        create_table: bool,
    },
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |at| text.split_at(at));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration like 30s, 5m or 1h"))?;
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("'{text}': use ms, s, m or h")),
    };
    if seconds == 0 {
        return Err("the interval must be positive".into());
    }
    Ok(Duration::from_secs(seconds))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(args) => {
            crmbridge_runtime::init_tracing();
            serve::run(args).await
        }
        Command::Admin(AdminCommand::Bootstrap {
            tenant_name,
            create_table,
        }) => {
            crmbridge_runtime::init_tracing();
            bootstrap_aws(&tenant_name, create_table).await
        }
        // The document alone on stdout (it is redirected to a file): no
        // logging, whose lines would go there too.
        Command::Openapi => {
            print!("{}", crmbridge_api::openapi_json());
            Ok(())
        }
    }
}

async fn bootstrap_aws(tenant_name: &str, create_table: bool) -> anyhow::Result<()> {
    let sdk = crmbridge_runtime::aws_sdk_config().await?;
    let store = crmbridge_runtime::dynamo_store(&sdk)?;
    if create_table {
        store.create_table().await?;
    }
    // Bootstrapping writes no credentials, but the engine needs a keyring:
    // use the deployment's when set so the same command works everywhere.
    let keyring = crmbridge_runtime::keyring_from_env().or_else(|_| {
        crmbridge_engine::Keyring::parse(&crmbridge_engine::Keyring::generate_spec("bootstrap"))
    })?;
    let engine = crmbridge_engine::Engine::new(
        std::sync::Arc::new(store),
        std::sync::Arc::new(serve::NoBus),
        crmbridge_connectors::Registry::builtin(),
        keyring,
        Default::default(),
    );
    match engine.bootstrap(tenant_name).await? {
        Some(done) => {
            println!("tenant: {}", done.tenant.id);
            println!(
                "owner API key (shown once, store it now): {}",
                done.owner_key
            );
        }
        None => println!("already bootstrapped: the owner key was shown when it was created"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
