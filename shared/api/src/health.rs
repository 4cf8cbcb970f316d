//! `/health` (a write and read back through the store) and `/live`.

use super::*;

/// The partition of the readiness probe's items: one item per router (sort
/// key: the probe's id), each expiring on its own.
pub(crate) const HEALTH_PK: &str = "HEALTH";
/// How long a probe's answer is reused: `/health` is polled, and each probe
/// is a durable write, so a burst of polls costs one write a second.
pub(crate) const HEALTH_REUSE: Duration = Duration::from_secs(1);
/// A store that has not answered the probe within this is unavailable.
pub(crate) const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a probe item lives (the store reaps it, or hides it once expired).
pub(crate) const HEALTH_ITEM_TTL_SECS: i64 = 300;

/// The readiness probe: writes an item and reads it back through the
/// engine's store. One probe at a time; its answer is reused briefly.
pub(crate) struct HealthProbe {
    engine: Arc<Engine>,
    /// Unique to this router in this process, so probes of other processes
    /// (Lambda instances share one table) never overwrite this one's item.
    id: String,
    sequence: AtomicU64,
    last: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

impl HealthProbe {
    pub(crate) fn new(engine: Arc<Engine>) -> Self {
        use std::hash::{BuildHasher, Hasher};
        // RandomState is seeded randomly per process and per instance: a
        // unique id without a dependency on a random number generator.
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Self {
            engine,
            id: format!("{}-{random:016x}", std::process::id()),
            sequence: AtomicU64::new(0),
            last: tokio::sync::Mutex::new(None),
        }
    }

    async fn check(&self) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if let Some((at, result)) = last.as_ref()
            && at.elapsed() < HEALTH_REUSE
        {
            return result.clone();
        }
        let result = match tokio::time::timeout(HEALTH_TIMEOUT, self.probe()).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(
                    timeout_secs = HEALTH_TIMEOUT.as_secs(),
                    "health: the store did not answer the probe"
                );
                Err(format!(
                    "the store did not answer within {} seconds",
                    HEALTH_TIMEOUT.as_secs()
                ))
            }
        };
        *last = Some((Instant::now(), result.clone()));
        result
    }

    async fn probe(&self) -> Result<(), String> {
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        let store = self.engine.store();
        let item = crmbridge_store::Item::new(HEALTH_PK, self.id.clone(), json!({ "probe": n }))
            .expiring_at(crmbridge_store::now_epoch_seconds() + HEALTH_ITEM_TTL_SECS);
        store
            .put(item)
            .await
            .map_err(|err| store_failure("write", &err))?;
        match store.get(HEALTH_PK, &self.id).await {
            Ok(Some(item)) if item.body["probe"] == n => Ok(()),
            Ok(_) => {
                tracing::warn!(probe = %self.id, "health: the store lost the probe just written");
                Err("the store did not return what was just written".to_owned())
            }
            Err(err) => Err(store_failure("read", &err)),
        }
    }
}

/// What `/health` says about a store failure: the backend and operation,
/// not the backend's message (it may name the host's files or tables).
pub(crate) fn store_failure(doing: &str, err: &crmbridge_store::StoreError) -> String {
    tracing::warn!(error = %err, doing, "health: the store failed the probe");
    match err {
        crmbridge_store::StoreError::Backend {
            backend, operation, ..
        } => format!("the store cannot {doing} ({backend} {operation} failed)"),
        _ => format!("the store cannot {doing}"),
    }
}

/// Readiness: the store takes a write and returns it (a small item that
/// expires by itself). 503 when it cannot; load balancers and supervisors
/// should poll this. The answer is reused for a second.
#[utoipa::path(
    get, path = "/health", tag = "meta",
    responses(
        (status = 200, description = "ready: `{\"status\": \"ok\"}`", body = Object),
        (status = 503, description = "the store cannot write or read: `{\"status\": \"unavailable\", \"error\": …}`", body = Object),
    )
)]
pub(crate) async fn health(State(probe): State<Arc<HealthProbe>>) -> Response {
    match probe.check().await {
        Ok(()) => axum::Json(json!({"status": "ok"})).into_response(),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "unavailable", "error": error})),
        )
            .into_response(),
    }
}

/// Liveness (`crmbridge serve` only): the process answers. No IO, so a slow
/// or broken store never gets a live process restarted; use `/health` for
/// readiness.
#[utoipa::path(get, path = "/live", tag = "meta", responses((status = 200, description = "`{\"status\": \"ok\"}`", body = Object)))]
pub(crate) async fn live() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}
