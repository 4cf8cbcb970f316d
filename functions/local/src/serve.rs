//! `crmbridge serve`: the Lambda functions' work in one process.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use crmbridge_bus::{Bus, BusError, EventHandler, HandlerError, OutboxBus, OutboxConfig};
use crmbridge_engine::{Engine, EngineConfig, Keyring};
use crmbridge_http::{HttpState, local_router};
use crmbridge_mapping::Event;
use crmbridge_store::SqliteStore;
use tokio::sync::watch;

use crate::ServeArgs;

/// The outbox worker's handler: dispatch through the engine.
struct Dispatcher(Arc<Engine>);

#[async_trait]
impl EventHandler for Dispatcher {
    async fn handle(&self, event: Event) -> Result<(), HandlerError> {
        self.0
            .dispatch(event)
            .await
            .map(|_| ())
            .map_err(|err| HandlerError(err.to_string()))
    }
}

/// For commands that never publish (bootstrap): refuses, loudly.
pub struct NoBus;

#[async_trait]
impl Bus for NoBus {
    async fn publish(&self, _events: &[Event]) -> Result<(), BusError> {
        Err(BusError::Backend {
            backend: "none",
            operation: "publish",
            message: "this command has no bus".into(),
        })
    }
}

/// The keyring: from CRMBRIDGE_ENCRYPTION_KEYS, else a key generated on the
/// first start and kept (owner-only) in the data directory.
fn local_keyring(data_dir: &Path) -> anyhow::Result<Keyring> {
    if std::env::var_os("CRMBRIDGE_ENCRYPTION_KEYS").is_some() {
        return Ok(crmbridge_runtime::keyring_from_env()?);
    }
    let path = data_dir.join("encryption.keys");
    if !path.exists() {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        file.write_all(Keyring::generate_spec("local1").as_bytes())?;
        file.sync_all()?;
    }
    let spec =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Keyring::parse(spec.trim()).with_context(|| format!("the keyring in {}", path.display()))
}

async fn shutdown_signal(stop: watch::Sender<bool>) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("stopping: finishing requests and the events in hand");
    let _ = stop.send(true);
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating the data directory {}", args.data_dir.display()))?;
    let db = args.data_dir.join("crmbridge.db");
    let store = SqliteStore::open(&db).with_context(|| format!("opening {}", db.display()))?;
    let bus = OutboxBus::open(
        &db,
        OutboxConfig {
            workers: args.workers,
            ..OutboxConfig::default()
        },
    )?;
    let engine = Arc::new(Engine::new(
        Arc::new(store),
        Arc::new(bus.clone()),
        crmbridge_connectors::Registry::builtin(),
        local_keyring(&args.data_dir)?,
        EngineConfig {
            max_body_bytes: args.max_body_bytes,
            allow_any_base_url: args.allow_any_vendor_url,
            ..EngineConfig::default()
        },
    ));

    if let Some(done) = engine.bootstrap(&args.tenant_name).await? {
        println!(
            "first start: created tenant {} ({})",
            done.tenant.name, done.tenant.id
        );
        println!(
            "owner API key (shown once, store it now): {}",
            done.owner_key
        );
    }

    let (stop, shutdown) = watch::channel(false);
    let workers = bus.spawn_workers(Arc::new(Dispatcher(Arc::clone(&engine))), shutdown.clone());

    let ticker = {
        let engine = Arc::clone(&engine);
        let mut shutdown = shutdown.clone();
        let period = args.tick_interval;
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = interval.tick() => {
                        if let Err(err) = engine.tick(chrono::Utc::now()).await {
                            tracing::error!(error = %err, "tick failed");
                        }
                    }
                    _ = shutdown.changed() => break,
                }
            }
        })
    };

    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| {
            format!(
                "'{}:{}' is not an address to listen on",
                args.host, args.port
            )
        })?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let bound = listener.local_addr()?;
    let base = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{bound}"));
    println!("crmbridge listening on http://{bound}");
    println!("  health:   {base}/health");
    println!("  webhooks: {base}/hooks/{{connection}}/{{token}}");
    println!("  chat:     {base}/chat/{{connection}}/{{token}}");
    println!("  admin:    {base}/v1/connections, {base}/v1/runs");
    println!("  api docs: {base}/v1/openapi.json");
    println!("  data:     {}", args.data_dir.display());

    let router = local_router(HttpState {
        engine: Arc::clone(&engine),
        public_url: args.public_url.clone(),
    });
    let mut http_shutdown = shutdown.clone();
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        let _ = http_shutdown.changed().await;
    });
    let signal = tokio::spawn(shutdown_signal(stop));
    server.await.context("the HTTP server failed")?;
    signal.abort();
    for worker in workers {
        let _ = worker.await;
    }
    let _ = ticker.await;
    println!("crmbridge stopped");
    Ok(())
}
