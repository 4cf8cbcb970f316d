//! The embedded store: the same single table in one SQLite file, for
//! `crmbridge serve`, tests and small deployments.
//!
//! WAL mode with `synchronous = FULL`: an acknowledged write survives a
//! process kill and a power cut, which is what lets the local gateway answer
//! 202 only after an event is durable.
//!
//! **Group commit.** Every write goes to one writer thread, which owns the
//! only writing connection. It takes whatever writes are waiting (up to
//! [`MAX_BATCH`]), runs them one after another inside one SQLite
//! transaction, each in its own savepoint (a write whose condition fails
//! is rolled back alone and answered with its conflict), commits once, and
//! only then answers every caller: one fsync for the whole batch, and no
//! caller hears "done" before its own write is durable. Run one by one in
//! one transaction, the writes behave exactly as if each had its own (each
//! condition sees every write before it). Under load, batches grow by
//! themselves: while one commit waits on the disk, the next batch queues.
//!
//! Reads use a few other connections, which WAL lets read while the writer
//! writes; they see only committed data. Single-item reads are cached in
//! process, kept exact by the writer (see [`crate::read_cache`]).

use std::cell::RefCell;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use crate::item::{check_batch, check_limit, check_transaction};
use crate::read_cache::{self, Key, Lookup, ReadCache};
use crate::{
    Item, Page, PutOutcome, Query, Store, StoreError, StoreResult, Write, now_epoch_seconds,
};

/// The most writes one commit carries.
pub const MAX_BATCH: usize = 256;
/// Read connections.
const READERS: usize = 4;
/// The writer connection's page cache, in KiB.
const WRITER_CACHE_KIB: i64 = 32 * 1024;

#[derive(Clone)]
pub struct SqliteStore {
    readers: Arc<Vec<Mutex<Connection>>>,
    next_reader: Arc<AtomicUsize>,
    writer: SqliteWriter,
}

/// The one writer of a SQLite file: writes queued from anywhere in the
/// process are committed in batches by its thread (see the module docs).
/// The embedded bus shares the store's, so its outbox rows ride in the
/// same commits as the store's items.
#[derive(Clone)]
pub struct SqliteWriter {
    jobs: mpsc::Sender<Box<dyn WriteJob>>,
    /// The file's read cache, which only this writer's commits change.
    cache: Arc<ReadCache>,
}

/// The writer's connection inside a batch's transaction, as a write sees
/// it. Items are written only through this module's functions
/// ([`PreparedInsert::run`] outside it), which note each key written so
/// the read cache can drop it before the commit.
pub struct WriteTx<'c> {
    conn: &'c Connection,
    written: RefCell<Vec<Key>>,
}

impl WriteTx<'_> {
    fn wrote(&self, pk: &str, sk: &str) {
        self.written.borrow_mut().push(read_cache::key(pk, sk));
    }

    /// The connection, for tables other than `items` (the embedded bus's
    /// outbox). A statement that changed `items` through it would be
    /// missed by the read cache.
    pub fn connection(&self) -> &Connection {
        self.conn
    }
}

impl std::fmt::Debug for SqliteWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteWriter").finish_non_exhaustive()
    }
}

impl SqliteWriter {
    /// Starts the writer thread on this connection (opened with
    /// [`open_connection`]); it stops when the last handle is dropped,
    /// after answering every queued write.
    pub fn start(conn: Connection) -> StoreResult<Self> {
        // Every conditional write seeks its key in the index, at a random
        // place (event and run ids are digests). With SQLite's default
        // 2 MiB page cache, the writer (the serial part of every commit)
        // re-read index pages from the OS once the file held a few hundred
        // thousand events.
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)
            .map_err(backend("open"))?;
        let (jobs, queue) = mpsc::channel();
        let cache = Arc::new(ReadCache::default());
        let writer_cache = Arc::clone(&cache);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || write_batches(conn, &writer_cache, queue))
            .map_err(|err| StoreError::Backend {
                backend: "sqlite",
                operation: "open",
                message: format!("starting the writer thread: {err}"),
            })?;
        Ok(Self { jobs, cache })
    }

    /// Queues a write for the next batch and waits until it is committed.
    /// `write` runs on the writer thread inside the batch's transaction
    /// (in its own savepoint): an `Err` undoes its changes alone.
    pub async fn write<T, F>(&self, operation: &'static str, write: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTx<'_>) -> StoreResult<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let gone = || StoreError::Backend {
            backend: "sqlite",
            operation,
            message: "the writer thread has stopped".into(),
        };
        self.jobs
            .send(Box::new(Pending {
                write: Some(write),
                result: None,
                operation,
                reply,
            }))
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

/// Items live in a rowid table, found through a unique index on their
/// key. Not `WITHOUT ROWID`: there a row is a cell of the key's b-tree, and
/// a row longer than about 1 KB (a run, an event's acceptance) spills onto
/// overflow pages, which SQLite reads in full for every comparison a seek
/// makes against that cell. Under load the writer spent more time reading
/// those pages than writing. The index's cells hold only the key, and a
/// table page keeps rows of up to 4 KB whole.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS items (
    pk TEXT NOT NULL,
    sk TEXT NOT NULL,
    version INTEGER NOT NULL,
    expires_at INTEGER,
    body TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS items_by_key ON items (pk, sk);
";

/// A file written by an earlier build has its items in a `WITHOUT ROWID`
/// table: set aside, [`SCHEMA`] created, then copied into it once, all in
/// one transaction.
const SET_WITHOUT_ROWID_ASIDE: &str = "ALTER TABLE items RENAME TO items_without_rowid;";
const COPY_FROM_WITHOUT_ROWID: &str = "
INSERT INTO items (pk, sk, version, expires_at, body)
    SELECT pk, sk, version, expires_at, body FROM items_without_rowid ORDER BY pk, sk;
DROP TABLE items_without_rowid;
";

/// Whether the file's items table is an earlier build's `WITHOUT ROWID` one.
fn items_without_rowid(conn: &Connection) -> rusqlite::Result<bool> {
    let sql: Option<String> = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'items'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    Ok(sql.is_some_and(|sql| sql.to_ascii_uppercase().contains("WITHOUT ROWID")))
}

/// Creates the schema, first moving an earlier build's items into it. A
/// file that is current is not written (a read-only file opens too).
fn create_schema(conn: &Connection) -> rusqlite::Result<()> {
    if items_without_rowid(conn)? {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        // Checked again under the write lock: another process may have
        // moved them meanwhile.
        let moved = items_without_rowid(conn)
            .and_then(|old| {
                if old {
                    conn.execute_batch(SET_WITHOUT_ROWID_ASIDE)?;
                    conn.execute_batch(SCHEMA)?;
                    conn.execute_batch(COPY_FROM_WITHOUT_ROWID)
                } else {
                    Ok(())
                }
            })
            .and_then(|()| conn.execute_batch("COMMIT"));
        if let Err(err) = moved {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(err);
        }
    }
    conn.execute_batch(SCHEMA)
}

fn backend(operation: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |err| StoreError::Backend {
        backend: "sqlite",
        operation,
        message: err.to_string(),
    }
}

/// Opens a SQLite connection with the durability settings crmbridge relies
/// on. Shared with the embedded bus, which keeps its outbox in the same file.
pub fn open_connection(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

/// One write waiting for the writer thread: run inside the batch's
/// transaction, then answered once the batch is committed (or not).
trait WriteJob: Send {
    /// Runs the write; `false` if it failed (its savepoint is rolled back).
    fn run(&mut self, tx: &WriteTx<'_>) -> bool;
    /// Answers the caller: its result if the batch committed, else why not.
    fn answer(self: Box<Self>, committed: Result<(), &str>);
}

struct Pending<T, F> {
    write: Option<F>,
    result: Option<StoreResult<T>>,
    operation: &'static str,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<T, F> WriteJob for Pending<T, F>
where
    T: Send,
    F: FnOnce(&WriteTx<'_>) -> StoreResult<T> + Send,
{
    fn run(&mut self, tx: &WriteTx<'_>) -> bool {
        let Some(write) = self.write.take() else {
            return false;
        };
        // A panic in one write must not take the writer (and every later
        // write) down with it: it fails that write alone.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| write(tx)))
            .unwrap_or_else(|_| {
                Err(StoreError::Backend {
                    backend: "sqlite",
                    operation: self.operation,
                    message: "the write panicked".into(),
                })
            });
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn answer(self: Box<Self>, committed: Result<(), &str>) {
        let outcome = match (committed, self.result) {
            (Ok(()), Some(result)) => result,
            (Err(message), _) => Err(StoreError::Backend {
                backend: "sqlite",
                operation: self.operation,
                message: message.to_owned(),
            }),
            (Ok(()), None) => Err(StoreError::Backend {
                backend: "sqlite",
                operation: self.operation,
                message: "the write was never run".into(),
            }),
        };
        // The caller may have gone away (a cancelled request): nothing to do.
        let _ = self.reply.send(outcome);
    }
}

/// The writer thread: batches, one transaction and one commit each.
fn write_batches(conn: Connection, cache: &ReadCache, jobs: mpsc::Receiver<Box<dyn WriteJob>>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        commit_batch(&conn, cache, batch);
    }
}

fn commit_batch(conn: &Connection, cache: &ReadCache, mut batch: Vec<Box<dyn WriteJob>>) {
    if !conn.is_autocommit() {
        // A rollback that failed earlier left a transaction open: end it,
        // or every later batch would fail on BEGIN.
        let _ = conn.execute_batch("ROLLBACK");
    }
    // IMMEDIATE takes the write lock up front, so the read-then-write of a
    // condition cannot race another process on the same file.
    if let Err(err) = conn.execute_batch("BEGIN IMMEDIATE") {
        let message = err.to_string();
        for job in batch {
            job.answer(Err(&message));
        }
        return;
    }
    // Prepared once: parsing these for every write showed in the profile.
    let statement = |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute([]));
    let tx = WriteTx {
        conn,
        written: RefCell::default(),
    };
    for job in &mut batch {
        let step = statement("SAVEPOINT write")
            .map(|_| job.run(&tx))
            .and_then(|ok| {
                if !ok {
                    statement("ROLLBACK TO write")?;
                }
                statement("RELEASE write")
            });
        if let Err(err) = step {
            let message = err.to_string();
            let _ = conn.execute_batch("ROLLBACK");
            for job in batch {
                job.answer(Err(&message));
            }
            return;
        }
    }
    // Keys a rolled-back write noted are dropped too: harmless.
    let written = tx.written.take();
    cache.committing(&written);
    let committed = conn.execute_batch("COMMIT").map_err(|err| {
        let _ = conn.execute_batch("ROLLBACK");
        err.to_string()
    });
    cache.committed(&written);
    for job in batch {
        job.answer(committed.as_ref().map(|_| ()).map_err(String::as_str));
    }
}

impl SqliteStore {
    /// Opens (and creates if needed) the store in a SQLite file.
    pub fn open(path: &Path) -> StoreResult<Self> {
        let conn = open_connection(path).map_err(backend("open"))?;
        create_schema(&conn).map_err(backend("create schema"))?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            readers.push(Mutex::new(open_connection(path).map_err(backend("open"))?));
        }
        Ok(Self {
            readers: Arc::new(readers),
            next_reader: Arc::default(),
            writer: SqliteWriter::start(conn)?,
        })
    }

    /// The file's writer, for the bus that keeps its outbox in the same
    /// file.
    pub fn writer(&self) -> SqliteWriter {
        self.writer.clone()
    }

    /// Runs a read on the calling thread when a read connection is free. A
    /// read of pages the OS has cached takes microseconds: less than handing
    /// it to a blocking thread and back, which a profile of `serve` under
    /// load showed as its largest cost (two context switches per read).
    /// When every connection is busy, the read waits for one on a blocking
    /// thread instead, so an async worker thread never waits on a lock.
    async fn read<T, F>(&self, operation: &'static str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        // The lowest free connection, not the next in turn: a connection's
        // first read after a commit empties its page cache, so the reads
        // between two commits reload the pages they need once through one
        // connection, and up to once per connection spread over all four.
        if let Some(free) = self
            .readers
            .iter()
            .find_map(|reader| reader.try_lock().ok())
        {
            return f(&free);
        }
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        let readers = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave SQLite itself in a
            // torn state, so a poisoned mutex is safe to keep using.
            let guard = readers[start % READERS]
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            f(&guard)
        })
        .await
        .map_err(|err| StoreError::Backend {
            backend: "sqlite",
            operation,
            message: format!("blocking task failed: {err}"),
        })?
    }

    async fn write<T, F>(&self, operation: &'static str, write: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTx<'_>) -> StoreResult<T> + Send + 'static,
    {
        self.writer.write(operation, write).await
    }
}

// Statements are prepared once per connection (prepare_cached): a profile
// of `crmbridge serve` under load showed SQL parsing as the store's largest
// CPU cost when every call re-prepared its statement.
fn read_item(conn: &Connection, pk: &str, sk: &str, now: i64) -> StoreResult<Option<Item>> {
    Ok(read_sized_item(conn, pk, sk, now)?.map(|(item, _)| item))
}

/// A live item with its stored body's length in bytes.
fn read_sized_item(
    conn: &Connection,
    pk: &str,
    sk: &str,
    now: i64,
) -> StoreResult<Option<(Item, usize)>> {
    let row = conn
        .prepare_cached("SELECT version, expires_at, body FROM items WHERE pk = ?1 AND sk = ?2")
        .map_err(backend("get"))?
        .query_row(params![pk, sk], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, Option<i64>>(1)?,
                row.get::<_, String>(2)?,
            ))
        })
        .optional()
        .map_err(backend("get"))?;
    let Some((version, expires_at, body)) = row else {
        return Ok(None);
    };
    let item = decode(pk.to_owned(), sk.to_owned(), version, expires_at, &body)?;
    Ok(item.is_live(now).then_some((item, body.len())))
}

fn decode(
    pk: String,
    sk: String,
    version: i64,
    expires_at: Option<i64>,
    body: &str,
) -> StoreResult<Item> {
    let body = serde_json::from_str(body).map_err(|err| StoreError::Corrupt {
        pk: pk.clone(),
        sk: sk.clone(),
        reason: err.to_string(),
    })?;
    Ok(Item {
        pk,
        sk,
        version: u64::try_from(version).unwrap_or_default(),
        expires_at,
        body,
    })
}

/// An item as its row: the body serialized on the caller's thread, so the
/// one writer thread (the serial part of every commit) does not.
struct Row {
    pk: String,
    sk: String,
    version: i64,
    expires_at: Option<i64>,
    body: String,
}

impl Row {
    fn of(item: Item) -> Self {
        Self {
            body: item.body.to_string(),
            version: i64::try_from(item.version).unwrap_or(i64::MAX),
            expires_at: item.expires_at,
            pk: item.pk,
            sk: item.sk,
        }
    }
}

/// One write of a transaction, in rows.
enum RowWrite {
    Put(Row),
    PutIfAbsent(Row),
    UpdateIfVersion { row: Row, expected: u64 },
    Delete { pk: String, sk: String },
}

impl From<Write> for RowWrite {
    fn from(write: Write) -> Self {
        match write {
            Write::Put(item) => Self::Put(Row::of(item)),
            Write::PutIfAbsent(item) => Self::PutIfAbsent(Row::of(item)),
            Write::UpdateIfVersion { item, expected } => Self::UpdateIfVersion {
                row: Row::of(item),
                expected,
            },
            Write::Delete { pk, sk } => Self::Delete { pk, sk },
        }
    }
}

/// A conditional insert of one item, serialized off the writer thread, to
/// run inside another write of the same file's writer (the embedded bus
/// records an event's acceptance and its outbox row in one commit).
pub struct PreparedInsert(Row);

impl PreparedInsert {
    pub fn of(item: Item) -> Self {
        Self(Row::of(item))
    }

    /// Inserts the item unless its key holds a live item (returned).
    pub fn run(&self, tx: &WriteTx<'_>) -> StoreResult<PutOutcome> {
        let row = &self.0;
        match read_item(tx.conn, &row.pk, &row.sk, now_epoch_seconds())? {
            Some(existing) => Ok(PutOutcome::Exists(existing)),
            None => write_row(tx, row, row.version).map(|()| PutOutcome::Inserted),
        }
    }
}

fn write_row(tx: &WriteTx<'_>, row: &Row, version: i64) -> StoreResult<()> {
    tx.wrote(&row.pk, &row.sk);
    tx.conn
        .prepare_cached(
            "INSERT INTO items (pk, sk, version, expires_at, body) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (pk, sk) DO UPDATE SET version = excluded.version,
             expires_at = excluded.expires_at, body = excluded.body",
        )
        .map_err(backend("put"))?
        .execute(params![row.pk, row.sk, version, row.expires_at, row.body])
        .map_err(backend("put"))?;
    Ok(())
}

/// The version of a live item, without reading (or decoding) its body.
fn live_version(conn: &Connection, pk: &str, sk: &str, now: i64) -> StoreResult<Option<i64>> {
    conn.prepare_cached(
        "SELECT version FROM items WHERE pk = ?1 AND sk = ?2
           AND (expires_at IS NULL OR expires_at > ?3)",
    )
    .map_err(backend("get"))?
    .query_row(params![pk, sk, now], |row| row.get(0))
    .optional()
    .map_err(backend("get"))
}

/// Applies one write inside an open transaction; `Err(Conflict)` when its
/// condition fails.
fn apply(tx: &WriteTx<'_>, write: &RowWrite, now: i64) -> StoreResult<()> {
    let conflict = |row: &Row| StoreError::Conflict {
        pk: row.pk.clone(),
        sk: row.sk.clone(),
    };
    match write {
        RowWrite::Put(row) => write_row(tx, row, row.version),
        RowWrite::PutIfAbsent(row) => match live_version(tx.conn, &row.pk, &row.sk, now)? {
            Some(_) => Err(conflict(row)),
            None => write_row(tx, row, row.version),
        },
        RowWrite::UpdateIfVersion { row, expected } => {
            let expected = i64::try_from(*expected).unwrap_or(i64::MAX);
            match live_version(tx.conn, &row.pk, &row.sk, now)? {
                Some(current) if current == expected => write_row(tx, row, expected + 1),
                _ => Err(conflict(row)),
            }
        }
        RowWrite::Delete { pk, sk } => {
            tx.wrote(pk, sk);
            tx.conn
                .prepare_cached("DELETE FROM items WHERE pk = ?1 AND sk = ?2")
                .map_err(backend("delete"))?
                .execute(params![pk, sk])
                .map_err(backend("delete"))?;
            Ok(())
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn get(&self, pk: &str, sk: &str) -> StoreResult<Option<Item>> {
        let ticket = match self.writer.cache.lookup(pk, sk, now_epoch_seconds()) {
            Lookup::Hit(found) => return Ok(found),
            Lookup::Miss(ticket) => Some(ticket),
            Lookup::Bypass => None,
        };
        let (pk, sk) = (pk.to_owned(), sk.to_owned());
        let cache = Arc::clone(&self.writer.cache);
        self.read("get", move |conn| {
            let found = read_sized_item(conn, &pk, &sk, now_epoch_seconds())?;
            if let Some(ticket) = ticket {
                let offered = found.as_ref().map(|(item, bytes)| (item, *bytes));
                cache.fill(ticket, &pk, &sk, offered);
            }
            Ok(found.map(|(item, _)| item))
        })
        .await
    }

    async fn put(&self, item: Item) -> StoreResult<()> {
        let row = Row::of(item);
        self.write("put", move |tx| write_row(tx, &row, row.version))
            .await
    }

    async fn put_many(&self, items: Vec<Item>) -> StoreResult<()> {
        check_batch(&items)?;
        let rows: Vec<Row> = items.into_iter().map(Row::of).collect();
        self.write("put_many", move |tx| {
            rows.iter()
                .try_for_each(|row| write_row(tx, row, row.version))
        })
        .await
    }

    async fn put_if_absent(&self, item: Item) -> StoreResult<PutOutcome> {
        let insert = PreparedInsert::of(item);
        self.write("put_if_absent", move |tx| insert.run(tx)).await
    }

    async fn put_then_insert(&self, entry: Item, item: Item) -> StoreResult<PutOutcome> {
        let entry = Row::of(entry);
        let insert = PreparedInsert::of(item);
        self.write("put_then_insert", move |tx| {
            write_row(tx, &entry, entry.version)?;
            insert.run(tx)
        })
        .await
    }

    async fn update_if_version(&self, item: Item, expected: u64) -> StoreResult<u64> {
        let write = RowWrite::UpdateIfVersion {
            row: Row::of(item),
            expected,
        };
        self.write("update_if_version", move |tx| {
            apply(tx, &write, now_epoch_seconds()).map(|()| expected + 1)
        })
        .await
    }

    async fn delete(&self, pk: &str, sk: &str) -> StoreResult<()> {
        let write = RowWrite::Delete {
            pk: pk.to_owned(),
            sk: sk.to_owned(),
        };
        self.write("delete", move |tx| apply(tx, &write, now_epoch_seconds()))
            .await
    }

    async fn query(&self, query: Query) -> StoreResult<Page> {
        check_limit(&query)?;
        self.read("query", move |conn| {
            let order = if query.descending { "DESC" } else { "ASC" };
            let cmp = if query.descending { "<" } else { ">" };
            // substr() counts characters, so pass the prefix's char count.
            let sql = format!(
                "SELECT sk, version, expires_at, body FROM items
                 WHERE pk = ?1 AND substr(sk, 1, ?2) = ?3
                   AND (?4 IS NULL OR sk {cmp} ?4)
                   AND (expires_at IS NULL OR expires_at > ?5)
                 ORDER BY sk {order} LIMIT ?6"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(backend("query"))?;
            let fetch = i64::try_from(query.limit + 1).unwrap_or(i64::MAX);
            let rows = stmt
                .query_map(
                    params![
                        query.pk,
                        query.sk_prefix.chars().count() as i64,
                        query.sk_prefix,
                        query.start_after,
                        now_epoch_seconds(),
                        fetch
                    ],
                    |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, i64>(1)?,
                            row.get::<_, Option<i64>>(2)?,
                            row.get::<_, String>(3)?,
                        ))
                    },
                )
                .map_err(backend("query"))?;
            let mut items = Vec::new();
            for row in rows {
                let (sk, version, expires_at, body) = row.map_err(backend("query"))?;
                items.push(decode(query.pk.clone(), sk, version, expires_at, &body)?);
            }
            let more = items.len() > query.limit;
            items.truncate(query.limit);
            let next = if more {
                items.last().map(|item| item.sk.clone())
            } else {
                None
            };
            Ok(Page { items, next })
        })
        .await
    }

    async fn transact(&self, writes: Vec<Write>) -> StoreResult<()> {
        check_transaction(&writes)?;
        let writes: Vec<RowWrite> = writes.into_iter().map(RowWrite::from).collect();
        self.write("transact", move |tx| {
            let now = now_epoch_seconds();
            for (index, write) in writes.iter().enumerate() {
                if let Err(err) = apply(tx, write, now) {
                    // Its savepoint is rolled back: every write of it.
                    return Err(match err {
                        StoreError::Conflict { pk, sk } => {
                            StoreError::TransactionConflict { index, pk, sk }
                        }
                        other => other,
                    });
                }
            }
            Ok(())
        })
        .await
    }
}
