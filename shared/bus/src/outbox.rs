//! The embedded, durable bus: an outbox table in the store's SQLite file and
//! a pool of workers that drain it.
//!
//! `publish` returns once the rows are committed (WAL, synchronous = FULL),
//! so an event the webhook has acknowledged survives `kill -9`. A worker
//! claims a row with a lease, runs the handler, and deletes the row on
//! success; a failure is retried with exponential backoff, and after
//! `max_attempts` the row is kept as dead (the local twin of the dispatch
//! dead-letter queue). On open, leases left by a crashed process are
//! released: one process owns a data directory.
//!
//! **Handed rows.** Claiming is a write of its own: one more trip through
//! the file's writer thread per event, which every write waits for. So
//! while its workers keep up, a publish inserts its rows already leased
//! (to this process, the file's only user) and hands them to the workers
//! in memory ([`Handoff`]): no claim. The table still has them, for a
//! restart (which releases their leases) and for a failed delivery (which
//! goes back to the table with its backoff, like any other). Handled rows
//! are deleted with the next write that goes by (a publish or a claim),
//! not with a write of their own: a row handled but not yet deleted when
//! the process dies is delivered again, which the bus allows (at least
//! once; dispatch makes it exactly once).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use crmbridge_mapping::Event;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crmbridge_store::{Item, PreparedInsert, PutOutcome, SqliteWriter, StoreError, WriteTx};

use crate::{AtomicAcceptance, Bus, BusError};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    body TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    available_at INTEGER NOT NULL,
    leased_until INTEGER NOT NULL DEFAULT 0,
    dead INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
DROP INDEX IF EXISTS outbox_ready;
CREATE INDEX IF NOT EXISTS outbox_claim ON outbox (dead, seq);
";

/// Handles one event taken off the bus (the engine's dispatch).
#[async_trait]
pub trait EventHandler: Send + Sync {
    async fn handle(&self, event: Event) -> Result<(), HandlerError>;

    /// The event is dead-lettered: it failed, or its worker died, on every
    /// allowed delivery. The handler records that (the engine fails the
    /// event's runs with `reason`); it is called once per dead letter.
    async fn give_up(&self, _event: Event, _reason: String) {}

    /// Deliveries this event may take, when it needs another budget than
    /// the bus's (`None`: [`OutboxConfig::max_attempts`]).
    fn max_attempts(&self, _event: &Event) -> Option<u32> {
        None
    }
}

/// A failed delivery; the event will be retried.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HandlerError(pub String);

#[derive(Debug, Clone)]
pub struct OutboxConfig {
    pub workers: usize,
    pub max_attempts: u32,
    pub base_backoff: Duration,
    /// The longest wait between two deliveries of one row.
    pub max_backoff: Duration,
    /// How long a claimed row stays invisible to other workers.
    pub lease: Duration,
    /// How often idle workers look for rows whose backoff has passed.
    pub poll_interval: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            workers: 4,
            max_attempts: 8,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(300),
            lease: Duration::from_secs(300),
            poll_interval: Duration::from_millis(500),
        }
    }
}

/// Counts for health checks and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxStats {
    pub pending: u64,
    pub dead: u64,
}

#[derive(Clone)]
pub struct OutboxBus {
    /// For reads (the stats).
    conn: Arc<Mutex<Connection>>,
    /// Every write (publish, claim, completion) goes through the file's
    /// writer, in its batched commits.
    writer: SqliteWriter,
    wake: Arc<Notify>,
    config: OutboxConfig,
    /// The outbox shares the store's file and writer (`open_on`): it can
    /// record an acceptance and publish in one commit.
    in_store: bool,
    handoff: Arc<Handoff>,
}

/// Rows published by this process and handed to its workers in memory,
/// leased since their insert (see the module docs).
#[derive(Default)]
struct Handoff {
    queue: Mutex<VecDeque<Handed>>,
    /// Places left in the queue. A publish reserves places before its
    /// insert, so a row inserted leased always has one. None until
    /// workers start: rows published before wait in the table, unleased.
    free: AtomicUsize,
    /// Whether the table may hold rows ready for a claim (bit 0), and how
    /// many times that was last said (the other bits). Set by a publish
    /// that left rows unleased (no place for them), by a claim that found
    /// a row, and at open (a previous process's rows); cleared by a claim
    /// that found none, unless it was set again meanwhile. While it is set,
    /// publishes hand nothing, and workers claim from the table in order
    /// once the handed rows are taken, so no row waits long behind newer
    /// ones.
    table_rows: AtomicU64,
    /// When a worker last claimed from the table (ms since the epoch):
    /// rows whose backoff has passed wait there, so busy workers still
    /// look once a poll interval.
    table_looked_at: AtomicI64,
    /// Rows handled, deleted with the next publish or claim.
    done: Mutex<Vec<i64>>,
}

struct Handed {
    seq: i64,
    event: Event,
}

impl Handoff {
    /// Reserves up to `wanted` places for a publish.
    fn reserve(&self, wanted: usize) -> usize {
        if wanted == 0 || self.table_may_have_rows() {
            return 0;
        }
        let free = self
            .free
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| {
                Some(free - free.min(wanted))
            })
            .unwrap_or_default();
        free.min(wanted)
    }

    fn table_may_have_rows(&self) -> bool {
        self.table_rows.load(Ordering::Acquire) & 1 == 1
    }

    fn mark_table_rows(&self) {
        let _ = self
            .table_rows
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |said| {
                Some((((said >> 1) + 1) << 1) | 1)
            });
    }

    /// A claim that began when the mark was `seen` found the table empty.
    fn table_found_empty(&self, seen: u64) {
        let _ =
            self.table_rows
                .compare_exchange(seen, seen & !1, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Queues the rows a publish committed leased; returns its unused places.
    fn hand(&self, reserved: usize, handed: Vec<Handed>) {
        let unused = reserved.saturating_sub(handed.len());
        lock(&self.queue).extend(handed);
        self.free.fetch_add(unused, Ordering::AcqRel);
    }

    fn table_look_due(&self, poll_interval: Duration) -> bool {
        let looked_at = self.table_looked_at.load(Ordering::Acquire);
        now_ms().saturating_sub(looked_at) >= poll_interval.as_millis() as i64
    }

    fn take(&self) -> Option<Claimed> {
        let Handed { seq, event } = lock(&self.queue).pop_front()?;
        self.free.fetch_add(1, Ordering::AcqRel);
        Some(Claimed {
            seq,
            body: ClaimedBody::Handed(event),
            attempts: 1,
        })
    }

    fn take_done(&self) -> Vec<i64> {
        std::mem::take(&mut *lock(&self.done))
    }

    /// Rows whose delete was not committed: deleted with a later write.
    fn put_back_done(&self, seqs: Vec<i64>) {
        lock(&self.done).extend(seqs);
    }
}

impl std::fmt::Debug for OutboxBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxBus")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

fn delete_rows(conn: &Connection, seqs: &[i64]) -> Result<(), rusqlite::Error> {
    let mut delete = conn.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?;
    for seq in seqs {
        delete.execute(params![seq])?;
    }
    Ok(())
}

fn backend(operation: &'static str) -> impl Fn(rusqlite::Error) -> BusError {
    move |err| BusError::Backend {
        backend: "sqlite outbox",
        operation,
        message: err.to_string(),
    }
}

fn store_backend(operation: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |err| StoreError::Backend {
        backend: "sqlite outbox",
        operation,
        message: err.to_string(),
    }
}

fn from_store(err: StoreError) -> BusError {
    match err {
        StoreError::Backend {
            operation, message, ..
        } => BusError::Backend {
            backend: "sqlite outbox",
            operation,
            message,
        },
        other => BusError::Backend {
            backend: "sqlite outbox",
            operation: "write",
            message: other.to_string(),
        },
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Inserts one published row: leased and handed while `handed` has
/// fewer rows than the publish `reserved` places, else unleased for a
/// worker to claim.
fn insert_row(
    conn: &Connection,
    row: NewRow,
    reserved: usize,
    lease_ms: i64,
    handed: &mut Vec<Handed>,
) -> Result<(), rusqlite::Error> {
    let now = now_ms();
    let event_id = row.event.id.to_string();
    if handed.len() < reserved {
        conn.prepare_cached(
            "INSERT INTO outbox (event_id, body, available_at, attempts, leased_until)
             VALUES (?1, ?2, ?3, 1, ?4)",
        )?
        .execute(params![event_id, row.body, now, now + lease_ms])?;
        handed.push(Handed {
            seq: conn.last_insert_rowid(),
            event: row.event,
        });
    } else {
        conn.prepare_cached(
            "INSERT INTO outbox (event_id, body, available_at) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![event_id, row.body, now])?;
    }
    Ok(())
}

struct Claimed {
    seq: i64,
    body: ClaimedBody,
    attempts: u32,
}

/// A claimed row's event: as the table stores it, or as it was handed.
enum ClaimedBody {
    Stored(String),
    Handed(Event),
}

impl Claimed {
    fn event(&self) -> Result<Event, serde_json::Error> {
        match &self.body {
            ClaimedBody::Stored(json) => serde_json::from_str(json),
            ClaimedBody::Handed(event) => Ok(event.clone()),
        }
    }
}

impl OutboxBus {
    /// Opens the outbox in `path` with a writer of its own, and releases
    /// the leases of a previous process.
    pub fn open(path: &Path, config: OutboxConfig) -> Result<Self, BusError> {
        let conn = crmbridge_store::open_connection(path).map_err(backend("open"))?;
        let writer = SqliteWriter::start(conn).map_err(from_store)?;
        Ok(Self {
            in_store: false,
            ..Self::open_on(writer, path, config)?
        })
    }

    /// Opens the outbox in the store's file, sharing the store's writer
    /// (`writer` must be the writer of the file at `path`): outbox writes
    /// and store writes waiting at the same moment share one commit and
    /// one fsync. An event's acceptance and its outbox row are one write
    /// ([`AtomicAcceptance`]); nothing else relies on two writes being
    /// committed together.
    pub fn open_on(
        writer: SqliteWriter,
        path: &Path,
        config: OutboxConfig,
    ) -> Result<Self, BusError> {
        let conn = crmbridge_store::open_connection(path).map_err(backend("open"))?;
        // Once, before any worker starts: on this connection, waiting for
        // the writer's lock like any other writer of the file.
        conn.execute_batch(SCHEMA)
            .map_err(backend("create schema"))?;
        conn.execute("UPDATE outbox SET leased_until = 0 WHERE dead = 0", [])
            .map_err(backend("release leases"))?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            writer,
            wake: Arc::new(Notify::new()),
            config,
            in_store: true,
            // The previous process's rows wait in the table.
            handoff: Arc::new(Handoff {
                table_rows: AtomicU64::new(1),
                ..Handoff::default()
            }),
        })
    }

    /// One write, committed in the writer's next batch.
    async fn write<T, F>(&self, operation: &'static str, f: F) -> Result<T, BusError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    {
        self.writer
            .write(operation, move |tx| {
                f(tx.connection()).map_err(store_backend(operation))
            })
            .await
            .map_err(from_store)
    }

    /// One write that first deletes the rows handled since the last such
    /// write, then runs `f`; the rows go back to be deleted later if the
    /// write is not committed.
    async fn write_deleting_done<T, F>(&self, operation: &'static str, f: F) -> Result<T, BusError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTx<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let done = self.handoff.take_done();
        let deleting = done.clone();
        let written = self
            .writer
            .write(operation, move |tx| {
                delete_rows(tx.connection(), &deleting).map_err(store_backend(operation))?;
                f(tx)
            })
            .await;
        if written.is_err() {
            self.handoff.put_back_done(done);
        }
        written.map_err(from_store)
    }

    async fn with_conn<T, F>(&self, operation: &'static str, f: F) -> Result<T, BusError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|poison| poison.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|err| BusError::Backend {
            backend: "sqlite outbox",
            operation,
            message: format!("blocking task failed: {err}"),
        })?
        .map_err(backend(operation))
    }

    pub async fn stats(&self) -> Result<OutboxStats, BusError> {
        self.with_conn("stats", |conn| {
            conn.query_row(
                "SELECT COALESCE(SUM(dead = 0), 0), COALESCE(SUM(dead = 1), 0) FROM outbox",
                [],
                |row| {
                    Ok(OutboxStats {
                        pending: row.get::<_, i64>(0)? as u64,
                        dead: row.get::<_, i64>(1)? as u64,
                    })
                },
            )
        })
        .await
    }

    /// Claims the next ready row from the table, first deleting the rows
    /// handled since the last write that deleted them, in the same write.
    async fn claim(&self) -> Result<Option<Claimed>, BusError> {
        let lease_ms = self.config.lease.as_millis() as i64;
        self.handoff
            .table_looked_at
            .store(now_ms(), Ordering::Release);
        let seen = self.handoff.table_rows.load(Ordering::Acquire);
        let claimed = self
            .write_deleting_done("claim", move |tx| {
                Self::claim_row(tx.connection(), lease_ms).map_err(store_backend("claim"))
            })
            .await;
        match &claimed {
            Ok(None) => self.handoff.table_found_empty(seen),
            Ok(Some(_)) => self.handoff.mark_table_rows(),
            Err(_) => {}
        }
        claimed
    }

    fn claim_row(conn: &Connection, lease_ms: i64) -> Result<Option<Claimed>, rusqlite::Error> {
        let now = now_ms();
        // Prepared once per connection: this runs for every event.
        conn.prepare_cached(
            "UPDATE outbox SET leased_until = ?1, attempts = attempts + 1
                 WHERE seq = (SELECT seq FROM outbox
                              WHERE dead = 0 AND available_at <= ?2 AND leased_until <= ?2
                              ORDER BY seq LIMIT 1)
                 RETURNING seq, body, attempts",
        )?
        .query_row(params![now + lease_ms, now], |row| {
            Ok(Claimed {
                seq: row.get(0)?,
                body: ClaimedBody::Stored(row.get(1)?),
                attempts: row.get::<_, i64>(2)? as u32,
            })
        })
        .optional()
    }

    /// The next row for a worker, oldest first: a ready row in the table
    /// once a poll interval (a retry whose backoff has passed), else a
    /// handed one, else one claimed from the table while it may hold ready
    /// rows. Handed rows come before the table's: a table that never
    /// empties under steady load (rows published while the queue was full,
    /// or while the table was marked) would otherwise hold them back
    /// without end, and they are never more than two per worker, all older
    /// than any row the table got after it was marked (none is handed
    /// while it is). A worker that finds nothing claims nothing: a claim is
    /// a write, and most would find nothing.
    async fn next_row(&self) -> Result<Option<Claimed>, BusError> {
        if self.handoff.table_look_due(self.config.poll_interval)
            && let Some(claimed) = self.claim().await?
        {
            return Ok(Some(claimed));
        }
        if let Some(handed) = self.handoff.take() {
            return Ok(Some(handed));
        }
        if !self.handoff.table_may_have_rows() {
            return Ok(None);
        }
        match self.claim().await? {
            Some(claimed) => Ok(Some(claimed)),
            // The claim may have cleared the mark, and a publish handed since.
            None => Ok(self.handoff.take()),
        }
    }

    /// Wakes one idle worker per row just published. Waking every idle
    /// worker for each row made each of them claim, and all but one claim
    /// found nothing: a writer job each, on the one writer thread every
    /// write waits for. A worker that is busy claims again as soon as it is
    /// done, so a row published while none is idle waits for no one.
    fn wake_workers(&self, rows: usize) {
        for _ in 0..rows {
            self.wake.notify_one();
        }
    }

    /// Deletes the rows handled and not yet deleted (a worker stopping).
    async fn complete_done(&self) -> Result<(), BusError> {
        if lock(&self.handoff.done).is_empty() {
            return Ok(());
        }
        self.write_deleting_done("complete", |_| Ok(())).await
    }

    async fn fail(&self, claimed: &Claimed, error: String, allowed: u32) -> Result<(), BusError> {
        let dead = claimed.attempts >= allowed;
        let backoff = self
            .config
            .base_backoff
            .saturating_mul(1 << claimed.attempts.saturating_sub(1).min(16))
            .min(self.config.max_backoff);
        let seq = claimed.seq;
        self.write("fail", move |conn| {
            conn.prepare_cached(
                "UPDATE outbox SET leased_until = 0, available_at = ?2, dead = ?3, last_error = ?4
                 WHERE seq = ?1",
            )?
            .execute(params![
                seq,
                now_ms() + backoff.as_millis() as i64,
                dead,
                error
            ])
            .map(|_| ())
        })
        .await
    }

    /// Starts the worker pool (`workers = 0` starts none: the process only
    /// accepts, and events wait durably for a process that dispatches).
    /// Workers stop when `shutdown` becomes true, after the event in hand.
    pub fn spawn_workers(
        &self,
        handler: Arc<dyn EventHandler>,
        shutdown: watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        // Two places per worker: one in hand, one ready.
        self.handoff
            .free
            .fetch_add(self.config.workers * 2, Ordering::AcqRel);
        (0..self.config.workers)
            .map(|worker| {
                let bus = self.clone();
                let handler = Arc::clone(&handler);
                let shutdown = shutdown.clone();
                tokio::spawn(async move { bus.work(worker, handler, shutdown).await })
            })
            .collect()
    }

    async fn work(
        &self,
        worker: usize,
        handler: Arc<dyn EventHandler>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        while !*shutdown.borrow() {
            // Register for a wake-up *before* looking, so a publish that lands
            // between an empty claim and the wait is not missed.
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.next_row().await {
                // Attempts are counted when a row is claimed, so a row whose
                // handling kills the process (and never reaches `fail`)
                // still runs out of attempts instead of crash-looping.
                Ok(Some(claimed))
                    if claimed.attempts > self.allowed(handler.as_ref(), &claimed) =>
                {
                    self.bury(worker, handler.as_ref(), claimed).await;
                }
                Ok(Some(claimed)) => {
                    if let Some(seq) = self.deliver(worker, handler.as_ref(), claimed).await {
                        lock(&self.handoff.done).push(seq);
                    }
                }
                Ok(None) => {
                    // Idle: wake on a publish, a shutdown, or the poll tick
                    // (for rows whose backoff has just passed).
                    tokio::select! {
                        _ = notified => {}
                        _ = shutdown.changed() => {}
                        _ = tokio::time::sleep(self.config.poll_interval) => {}
                    }
                }
                Err(err) => {
                    tracing::error!(worker, error = %err, "outbox claim failed");
                    tokio::select! {
                        _ = shutdown.changed() => {}
                        _ = tokio::time::sleep(self.config.poll_interval) => {}
                    }
                }
            }
        }
        if let Err(err) = self.complete_done().await {
            // Delivered again after a restart: at least once.
            tracing::error!(worker, error = %err, "outbox bookkeeping failed");
        }
    }

    /// Deliveries a claimed row may take: the bus's, or its event's own
    /// (read only once the bus's are spent).
    fn allowed(&self, handler: &dyn EventHandler, claimed: &Claimed) -> u32 {
        if claimed.attempts <= self.config.max_attempts {
            return self.config.max_attempts;
        }
        claimed
            .event()
            .ok()
            .and_then(|event| handler.max_attempts(&event))
            .unwrap_or(self.config.max_attempts)
    }

    /// Dead-letters a row whose every delivery ended with its worker gone.
    async fn bury(&self, worker: usize, handler: &dyn EventHandler, claimed: Claimed) {
        let reason = format!(
            "the worker stopped during each of {} deliveries",
            claimed.attempts - 1
        );
        tracing::error!(
            worker,
            attempts = claimed.attempts - 1,
            "dead-lettering an event whose deliveries never finished"
        );
        let seq = claimed.seq;
        let error = reason.clone();
        let marked = self
            .write("bury", move |conn| {
                conn.prepare_cached(
                    "UPDATE outbox SET leased_until = 0, dead = 1, last_error = ?2 WHERE seq = ?1",
                )?
                .execute(params![seq, error])
                .map(|_| ())
            })
            .await;
        if let Err(err) = marked {
            tracing::error!(worker, error = %err, "outbox bookkeeping failed");
            return;
        }
        if let Ok(event) = claimed.event() {
            handler.give_up(event, reason).await;
        }
    }

    /// Hands a claimed row to the handler. Returns the row when it was
    /// handled, for the worker to delete with its next claim.
    async fn deliver(
        &self,
        worker: usize,
        handler: &dyn EventHandler,
        mut claimed: Claimed,
    ) -> Option<i64> {
        let event = match std::mem::replace(&mut claimed.body, ClaimedBody::Stored(String::new())) {
            ClaimedBody::Stored(json) => serde_json::from_str::<Event>(&json),
            ClaimedBody::Handed(event) => Ok(event),
        };
        let outcome = match &event {
            Ok(event) => {
                let event_id = event.id.to_string();
                handler
                    .handle(event.clone())
                    .await
                    .map_err(|err| (event_id, err.to_string()))
            }
            // A row that is not an event can never succeed: dead at once.
            Err(err) => Err((String::new(), format!("undecodable outbox row: {err}"))),
        };
        let result = match outcome {
            Ok(()) => return Some(claimed.seq),
            Err((event_id, error)) => {
                let allowed = event
                    .as_ref()
                    .ok()
                    .and_then(|event| handler.max_attempts(event))
                    .unwrap_or(self.config.max_attempts);
                let last = claimed.attempts >= allowed;
                tracing::warn!(worker, event_id, attempt = claimed.attempts, last, error = %error, "dispatch failed");
                let failed = self.fail(&claimed, error.clone(), allowed).await;
                if last
                    && failed.is_ok()
                    && let Ok(event) = event
                {
                    handler.give_up(event, error).await;
                }
                failed
            }
        };
        if let Err(err) = result {
            // The lease expires and the row is delivered again: at least once.
            tracing::error!(worker, error = %err, "outbox bookkeeping failed");
        }
        None
    }
}

/// A row to publish; with an acceptance, only if that inserts.
struct NewRow {
    event: Event,
    body: String,
    acceptance: Option<PreparedInsert>,
}

impl NewRow {
    fn of(event: Event, acceptance: Option<PreparedInsert>) -> Result<Self, BusError> {
        let body = serde_json::to_string(&event).map_err(|err| BusError::Backend {
            backend: "sqlite outbox",
            operation: "serialise",
            message: err.to_string(),
        })?;
        Ok(Self {
            event,
            body,
            acceptance,
        })
    }
}

impl OutboxBus {
    /// Publishes `rows` in one write (committed together or not at all),
    /// deleting the rows handled since the last such write in the same
    /// one, and hands the workers what has a place.
    ///
    /// On a task of its own: a caller dropped while it waits (a webhook's
    /// client hanging up) must not leave rows committed leased and never
    /// handed, which would wait out their lease.
    async fn insert_rows(
        &self,
        operation: &'static str,
        rows: Vec<NewRow>,
    ) -> Result<Vec<PutOutcome>, BusError> {
        let bus = self.clone();
        tokio::spawn(async move { bus.insert_and_hand(operation, rows).await })
            .await
            .map_err(|err| BusError::Backend {
                backend: "sqlite outbox",
                operation,
                message: format!("publishing task failed: {err}"),
            })?
    }

    async fn insert_and_hand(
        &self,
        operation: &'static str,
        rows: Vec<NewRow>,
    ) -> Result<Vec<PutOutcome>, BusError> {
        let reserved = self.handoff.reserve(rows.len());
        let lease_ms = self.config.lease.as_millis() as i64;
        let written = self
            .write_deleting_done(operation, move |tx| {
                let conn = tx.connection();
                let mut outcomes = Vec::with_capacity(rows.len());
                let mut handed = Vec::with_capacity(reserved);
                for row in rows {
                    let outcome = match &row.acceptance {
                        Some(acceptance) => acceptance.run(tx)?,
                        None => PutOutcome::Inserted,
                    };
                    if let PutOutcome::Inserted = outcome {
                        insert_row(conn, row, reserved, lease_ms, &mut handed)
                            .map_err(store_backend(operation))?;
                    }
                    outcomes.push(outcome);
                }
                Ok((outcomes, handed))
            })
            .await;
        match written {
            Ok((outcomes, handed)) => {
                let inserted = outcomes
                    .iter()
                    .filter(|o| matches!(o, PutOutcome::Inserted))
                    .count();
                if inserted > handed.len() {
                    self.handoff.mark_table_rows();
                }
                self.handoff.hand(reserved, handed);
                self.wake_workers(inserted);
                Ok(outcomes)
            }
            Err(err) => {
                self.handoff.free.fetch_add(reserved, Ordering::AcqRel);
                Err(err)
            }
        }
    }
}

#[async_trait]
impl Bus for OutboxBus {
    async fn publish(&self, events: &[Event]) -> Result<(), BusError> {
        let rows = events
            .iter()
            .map(|event| NewRow::of(event.clone(), None))
            .collect::<Result<Vec<_>, _>>()?;
        self.insert_rows("publish", rows).await.map(|_| ())
    }

    fn atomic_acceptance(&self) -> Option<&dyn AtomicAcceptance> {
        self.in_store.then_some(self as &dyn AtomicAcceptance)
    }
}

#[async_trait]
impl AtomicAcceptance for OutboxBus {
    async fn publish_if_absent(
        &self,
        entries: Vec<(Event, Item)>,
    ) -> Result<Vec<PutOutcome>, BusError> {
        let rows = entries
            .into_iter()
            .map(|(event, acceptance)| NewRow::of(event, Some(PreparedInsert::of(acceptance))))
            .collect::<Result<Vec<_>, _>>()?;
        self.insert_rows("publish if absent", rows).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use crmbridge_mapping::{EventId, Subject};

    use super::*;

    fn event(n: usize) -> Event {
        Event {
            id: EventId::from_source("conn-1", &format!("call-{n}")),
            tenant: "tenant-1".into(),
            connection: "conn-1".into(),
            app: "generic".into(),
            kind: "generic.call.completed".into(),
            subject: Subject {
                kind: "call".into(),
                id: format!("call-{n}"),
            },
            occurred_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            received_at: chrono::DateTime::from_timestamp(1_700_000_100, 0).unwrap(),
            data: serde_json::json!({"n": n}),
        }
    }

    async fn next_n(bus: &OutboxBus) -> serde_json::Value {
        let row = bus.next_row().await.unwrap().expect("a row is ready");
        row.event().unwrap().data["n"].clone()
    }

    /// Rows handed to the workers are not held back by the table: under
    /// steady load the table gets a new row before each one claimed from
    /// it, so it never empties, and handed rows that waited for an empty
    /// table were not delivered (a closed task's event in the serve test
    /// of NetHunt and Worksection waited a minute behind poll requests).
    /// One worker's view, so the order is the order of delivery.
    #[tokio::test]
    async fn handed_rows_are_not_held_back_by_a_table_that_never_empties() {
        let dir = tempfile::tempdir().unwrap();
        let bus = OutboxBus::open(
            &dir.path().join("s.db"),
            OutboxConfig {
                workers: 1,
                poll_interval: Duration::from_secs(3600),
                ..OutboxConfig::default()
            },
        )
        .unwrap();
        // One worker's two places, as `spawn_workers` gives them; its first
        // look finds the table (marked at open) empty.
        bus.handoff.free.store(2, Ordering::Release);
        assert!(bus.next_row().await.unwrap().is_none());
        // 0 and 1 are handed; 2 waits in the table, which is now marked.
        for n in 0..3 {
            bus.publish(&[event(n)]).await.unwrap();
        }
        assert_eq!(lock(&bus.handoff.queue).len(), 2);
        assert!(bus.handoff.table_may_have_rows());
        // Each row taken, one more arrives in the table.
        let mut order = Vec::new();
        for n in 3..9 {
            order.push(next_n(&bus).await);
            bus.publish(&[event(n)]).await.unwrap();
        }
        assert_eq!(
            order,
            (0..6).map(|n| serde_json::json!(n)).collect::<Vec<_>>()
        );
    }

    /// A retry whose backoff has passed waits in the table, which nothing
    /// marks: once a poll interval it comes before the rows handed, so a
    /// queue that steady load keeps full never holds it back.
    #[tokio::test]
    async fn a_ready_retry_comes_before_handed_rows_once_a_poll_interval() {
        let dir = tempfile::tempdir().unwrap();
        let bus = OutboxBus::open(
            &dir.path().join("s.db"),
            OutboxConfig {
                workers: 1,
                base_backoff: Duration::ZERO,
                poll_interval: Duration::from_secs(3600),
                ..OutboxConfig::default()
            },
        )
        .unwrap();
        bus.handoff.free.store(2, Ordering::Release);
        assert!(bus.next_row().await.unwrap().is_none());
        bus.publish(&[event(0)]).await.unwrap();
        let first = bus.next_row().await.unwrap().expect("0 was handed");
        bus.fail(&first, "the vendor answered 503".into(), 8)
            .await
            .unwrap();
        assert!(!bus.handoff.table_may_have_rows());
        for n in 1..3 {
            bus.publish(&[event(n)]).await.unwrap();
        }
        // Within the poll interval, the handed rows go first.
        assert_eq!(next_n(&bus).await, serde_json::json!(1));
        bus.publish(&[event(3)]).await.unwrap();
        // The interval has passed: the retry, then the handed rows.
        bus.handoff.table_looked_at.store(0, Ordering::Release);
        let retried = bus.next_row().await.unwrap().expect("the retry is ready");
        assert_eq!(retried.event().unwrap().data["n"], serde_json::json!(0));
        assert_eq!(retried.attempts, 2);
        assert_eq!(next_n(&bus).await, serde_json::json!(2));
        assert_eq!(next_n(&bus).await, serde_json::json!(3));
    }
}
