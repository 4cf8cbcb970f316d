//! `crmbridge serve`: the Lambda functions' work in one process.
//!
//! One process owns a data directory: it holds an exclusive lock on
//! `crmbridge.lock` there for its whole life, taken before the store and
//! the outbox are opened (the outbox releases every lease on open, which is
//! only right when no other process is dispatching from the same file).
//! The directory is private (0700) and so is every file crmbridge keeps in
//! it (0600): the database holds event payloads, i.e. personal data.

use std::io::{Read, Seek, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use crmbridge_api::{HttpState, local_router};
use crmbridge_bus::{Bus, BusError, EventHandler, HandlerError, OutboxBus, OutboxConfig};
use crmbridge_control::prelude::*;
use crmbridge_engine::{Engine, Keyring};
use crmbridge_mapping::Event;
use crmbridge_runtime::Deployment;
use crmbridge_runtime::metrics::{PROMETHEUS_CONTENT_TYPE, PrometheusMetrics};
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

    async fn give_up(&self, event: Event, reason: String) {
        let event_id = event.id.to_string();
        if let Err(err) = self.0.give_up(event, &reason).await {
            tracing::error!(event_id, error = %err, "could not record a dead-lettered event's runs");
        }
    }

    fn max_attempts(&self, event: &Event) -> Option<u32> {
        crmbridge_engine::alerts::delivery_attempts(event)
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
    let path = data_dir.join(KEYS_FILE);
    if !path.exists() {
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

/// The lock file: its lock says a process owns the directory, its content
/// which process (for the error a second one prints).
const LOCK_FILE: &str = "crmbridge.lock";
const DB_FILE: &str = "crmbridge.db";
const KEYS_FILE: &str = "encryption.keys";
/// Every file crmbridge keeps in the data directory; each is owner-only.
/// SQLite creates `-wal` and `-shm` with the mode of the database file.
const PRIVATE_FILES: [&str; 5] = [
    DB_FILE,
    "crmbridge.db-wal",
    "crmbridge.db-shm",
    KEYS_FILE,
    LOCK_FILE,
];

/// Creates the data directory owner-only, or tightens an existing one.
fn private_data_dir(dir: &Path) -> anyhow::Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    match builder.create(dir) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(err) => {
            return Err(err)
                .with_context(|| format!("creating the data directory {}", dir.display()));
        }
    }
    tighten(dir, 0o700)
}

/// Sets `mode` on a file or directory whose permissions are looser (any
/// group or other bit), and says so: the user should know their data sat
/// readable by others.
#[cfg(unix)]
fn tighten(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let found = std::fs::metadata(path)
        .with_context(|| format!("reading the permissions of {}", path.display()))?
        .permissions()
        .mode()
        & 0o777;
    if found & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("restricting the permissions of {}", path.display()))?;
        tracing::warn!(
            path = %path.display(),
            was = %format!("{found:o}"),
            now = %format!("{mode:o}"),
            "restricted permissions in the data directory (it holds personal data)"
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn tighten(_path: &Path, _mode: u32) -> anyhow::Result<()> {
    Ok(())
}

/// Opens (creating it owner-only if missing) a file without truncating it.
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Takes the data directory's lock, or says which process holds it. The
/// returned file must live as long as the process serves: dropping it
/// releases the lock (so does the process dying, even by SIGKILL).
fn lock_data_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join(LOCK_FILE);
    let mut file = open_private(&path).with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut content = String::new();
            // The holder may not have written its pid yet: say so.
            let _ = file.read_to_string(&mut content);
            let holder = content
                .trim()
                .parse::<u32>()
                .map_or_else(|_| "unknown".to_owned(), |pid| pid.to_string());
            anyhow::bail!(
                "the data directory {} is in use by another crmbridge serve (pid {holder}); \
                 one process owns a data directory: stop that one or use another --data-dir",
                dir.display()
            );
        }
        Err(std::fs::TryLockError::Error(err)) => {
            return Err(err).with_context(|| format!("locking {}", path.display()));
        }
    }
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    file.sync_all()?;
    Ok(file)
}

/// Makes every file crmbridge keeps owner-only, and creates the database
/// file owner-only before SQLite opens it (SQLite gives its `-wal` and
/// `-shm` files the database file's mode).
fn private_files(dir: &Path) -> anyhow::Result<()> {
    for name in PRIVATE_FILES {
        let path = dir.join(name);
        if path.exists() {
            tighten(&path, 0o600)?;
        }
    }
    let db = dir.join(DB_FILE);
    open_private(&db).with_context(|| format!("creating {}", db.display()))?;
    Ok(())
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
    private_data_dir(&args.data_dir)?;
    // Held until run returns; first, so nothing below touches another
    // process's files (not even their permissions).
    let _owner = lock_data_dir(&args.data_dir)?;
    private_files(&args.data_dir)?;
    let db = args.data_dir.join(DB_FILE);
    let store = SqliteStore::open(&db).with_context(|| format!("opening {}", db.display()))?;
    // The outbox shares the store's writer: writes of both share commits.
    let bus = OutboxBus::open_on(
        store.writer(),
        &db,
        OutboxConfig {
            workers: args.workers,
            max_attempts: args.settings.max_run_attempts(Deployment::Serve),
            base_backoff: args.retry_backoff,
            ..OutboxConfig::default()
        },
    )?;
    let metrics = Arc::new(PrometheusMetrics::new());
    let engine = Arc::new(
        Engine::new(
            Arc::new(store),
            Arc::new(bus.clone()),
            crmbridge_connectors::Registry::builtin(),
            local_keyring(&args.data_dir)?,
            args.settings.engine_config(Deployment::Serve),
        )
        .with_metrics(metrics.clone()),
    );

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
        .settings
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{bound}"));
    println!("crmbridge listening on http://{bound}");
    println!("  health:   {base}/health (readiness), {base}/live (liveness)");
    println!("  webhooks: {base}/hooks/{{connection}}/{{token}}");
    println!("  chat:     {base}/chat/{{connection}}/{{token}}");
    println!("  admin:    {base}/v1/connections, {base}/v1/runs");
    println!("  api docs: {base}/v1/openapi.json");
    println!("  metrics:  {base}/metrics (Prometheus)");
    println!("  data:     {}", args.data_dir.display());

    let router = local_router(HttpState {
        engine: Arc::clone(&engine),
        public_url: args.settings.public_url.clone(),
    })
    .route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = Arc::clone(&metrics);
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
                    metrics.render(),
                )
            }
        }),
    );
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
