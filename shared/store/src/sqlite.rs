//! The embedded store: the same single table in one SQLite file, for
//! `crmbridge serve`, tests and small deployments.
//!
//! WAL mode with `synchronous = FULL`: an acknowledged write survives a
//! process kill and a power cut, which is what lets the local gateway answer
//! 202 only after an event is durable. rusqlite is blocking, so every call
//! runs on tokio's blocking pool behind one connection mutex; SQLite
//! serialises writers anyway.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::item::{check_limit, check_transaction};
use crate::{
    Item, Page, PutOutcome, Query, Store, StoreError, StoreResult, Write, now_epoch_seconds,
};

#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS items (
    pk TEXT NOT NULL,
    sk TEXT NOT NULL,
    version INTEGER NOT NULL,
    expires_at INTEGER,
    body TEXT NOT NULL,
    PRIMARY KEY (pk, sk)
) WITHOUT ROWID;
";

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

impl SqliteStore {
    /// Opens (and creates if needed) the store in a SQLite file.
    pub fn open(path: &Path) -> StoreResult<Self> {
        let conn = open_connection(path).map_err(backend("open"))?;
        conn.execute_batch(SCHEMA)
            .map_err(backend("create schema"))?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with_conn<T, F>(&self, operation: &'static str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave SQLite itself in a
            // torn state (transactions roll back), so a poisoned mutex is safe
            // to keep using.
            let mut guard = conn.lock().unwrap_or_else(|poison| poison.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|err| StoreError::Backend {
            backend: "sqlite",
            operation,
            message: format!("blocking task failed: {err}"),
        })?
    }
}

// Statements are prepared once per connection (prepare_cached): a profile
// of `crmbridge serve` under load showed SQL parsing as the store's largest
// CPU cost when every call re-prepared its statement.
fn read_item(conn: &Connection, pk: &str, sk: &str, now: i64) -> StoreResult<Option<Item>> {
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
    Ok(item.is_live(now).then_some(item))
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

fn write_item(conn: &Connection, item: &Item) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO items (pk, sk, version, expires_at, body) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (pk, sk) DO UPDATE SET version = excluded.version,
             expires_at = excluded.expires_at, body = excluded.body",
    )
    .map_err(backend("put"))?
    .execute(params![
        item.pk,
        item.sk,
        i64::try_from(item.version).unwrap_or(i64::MAX),
        item.expires_at,
        item.body.to_string()
    ])
    .map_err(backend("put"))?;
    Ok(())
}

/// Applies one write inside an open transaction; `Err(Conflict)` when its
/// condition fails.
fn apply(conn: &Connection, write: &Write, now: i64) -> StoreResult<()> {
    match write {
        Write::Put(item) => write_item(conn, item),
        Write::PutIfAbsent(item) => match read_item(conn, &item.pk, &item.sk, now)? {
            Some(_) => Err(StoreError::Conflict {
                pk: item.pk.clone(),
                sk: item.sk.clone(),
            }),
            None => write_item(conn, item),
        },
        Write::UpdateIfVersion { item, expected } => {
            match read_item(conn, &item.pk, &item.sk, now)? {
                Some(current) if current.version == *expected => {
                    let mut next = item.clone();
                    next.version = expected + 1;
                    write_item(conn, &next)
                }
                _ => Err(StoreError::Conflict {
                    pk: item.pk.clone(),
                    sk: item.sk.clone(),
                }),
            }
        }
        Write::Delete { pk, sk } => {
            conn.prepare_cached("DELETE FROM items WHERE pk = ?1 AND sk = ?2")
                .map_err(backend("delete"))?
                .execute(params![pk, sk])
                .map_err(backend("delete"))?;
            Ok(())
        }
    }
}

fn in_transaction<T>(
    conn: &mut Connection,
    operation: &'static str,
    f: impl FnOnce(&Connection) -> StoreResult<T>,
) -> StoreResult<T> {
    // IMMEDIATE takes the write lock up front, so the read-then-write of a
    // condition cannot race another process on the same file.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend(operation))?;
    let value = f(&tx)?;
    tx.commit().map_err(backend(operation))?;
    Ok(value)
}

#[async_trait]
impl Store for SqliteStore {
    async fn get(&self, pk: &str, sk: &str) -> StoreResult<Option<Item>> {
        let (pk, sk) = (pk.to_owned(), sk.to_owned());
        self.with_conn("get", move |conn| {
            read_item(conn, &pk, &sk, now_epoch_seconds())
        })
        .await
    }

    async fn put(&self, item: Item) -> StoreResult<()> {
        self.with_conn("put", move |conn| write_item(conn, &item))
            .await
    }

    async fn put_if_absent(&self, item: Item) -> StoreResult<PutOutcome> {
        self.with_conn("put_if_absent", move |conn| {
            in_transaction(conn, "put_if_absent", |tx| {
                match read_item(tx, &item.pk, &item.sk, now_epoch_seconds())? {
                    Some(existing) => Ok(PutOutcome::Exists(existing)),
                    None => write_item(tx, &item).map(|()| PutOutcome::Inserted),
                }
            })
        })
        .await
    }

    async fn update_if_version(&self, item: Item, expected: u64) -> StoreResult<u64> {
        self.with_conn("update_if_version", move |conn| {
            in_transaction(conn, "update_if_version", |tx| {
                apply(
                    tx,
                    &Write::UpdateIfVersion { item, expected },
                    now_epoch_seconds(),
                )
                .map(|()| expected + 1)
            })
        })
        .await
    }

    async fn delete(&self, pk: &str, sk: &str) -> StoreResult<()> {
        let write = Write::Delete {
            pk: pk.to_owned(),
            sk: sk.to_owned(),
        };
        self.with_conn("delete", move |conn| {
            apply(conn, &write, now_epoch_seconds())
        })
        .await
    }

    async fn query(&self, query: Query) -> StoreResult<Page> {
        check_limit(&query)?;
        self.with_conn("query", move |conn| {
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
        self.with_conn("transact", move |conn| {
            in_transaction(conn, "transact", |tx| {
                let now = now_epoch_seconds();
                for (index, write) in writes.iter().enumerate() {
                    if let Err(err) = apply(tx, write, now) {
                        // Dropping the transaction rolls every write back.
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
        })
        .await
    }
}
