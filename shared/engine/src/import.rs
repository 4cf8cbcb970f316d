//! Importing a connection's existing records: the backfill that comes
//! before live sync (KADO ↔ HubSpot: "contacts that already exist in the
//! CRM are imported"). The connector reads one page at a time; every record
//! becomes the event its creation would have been, accepted exactly as
//! webhooks are, so the same automations handle imported and live records.
//!
//! The import is a chain of page requests on the bus, one per page, each
//! with an id made of the import, its generation and the page number. A
//! page request reads its page from the saved cursor, accepts the page's
//! events, then saves the new cursor and counts with a conditional write on
//! the import record, and only then asks for the next page:
//!
//! - two deliveries of one page request at once both read the page; the
//!   events de-duplicate on their ids and one save wins, the other stops;
//! - a process killed before the save: the request is delivered again and
//!   reads the same page again (same event ids, nothing doubled);
//! - killed after the save but before the next request went out: the
//!   redelivered request sees its page already counted and asks for the
//!   next one (accepting it twice is harmless: same id);
//! - a page that cannot be read after every retry fails the import, with
//!   the reason; `resume` goes on from the saved cursor.
//!
//! Imported events' ids carry the import id: importing again later runs
//! the records again (the writes are upserts), while within one import a
//! record is one event. Live changes arriving meanwhile are ordinary
//! events: the target keeps whichever write has the newer source
//! modification time (see the KADO contract), so an imported snapshot that
//! is older than a live edit already written changes nothing.

use chrono::Utc;
use crmbridge_mapping::{Event, EventId, Subject};
use crmbridge_store::{PutOutcome, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::Instrument as _;

use crate::dispatch::Dispatched;
use crate::records::{ImportProgress, ImportRecord, ImportStatus};
use crate::{Engine, EngineError, EngineResult, item, keys, random_id};

/// The event kind of a page request.
pub const IMPORT_PAGE: &str = "crmbridge.import.page";
/// A running import that has not saved a page for this long may be
/// resumed (a page is read in seconds; retries back off for minutes).
pub const STALLED_SECS: i64 = 15 * 60;

fn status_name(status: ImportStatus) -> &'static str {
    match status {
        ImportStatus::Running => "running",
        ImportStatus::Finished => "finished",
        ImportStatus::Failed => "failed",
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PageRequest {
    import: String,
    generation: u32,
    page: u64,
}

impl Engine {
    /// Starts importing a connection's existing records. One import per
    /// connection runs at a time (409 naming the running one).
    pub async fn start_import(&self, tenant: &str, connection: &str) -> EngineResult<ImportRecord> {
        let record = match self
            .read::<crate::records::ConnectionRecord>(&keys::connection(connection))
            .await?
        {
            Some((record, _)) if record.tenant == tenant => record,
            _ => {
                return Err(EngineError::NotFound {
                    what: "connection",
                    id: connection.to_owned(),
                });
            }
        };
        let importer = self
            .connectors
            .get(&record.app)
            .and_then(|vendor| vendor.importer.clone())
            .ok_or_else(|| {
                EngineError::bad_request(
                    "connection",
                    format!(
                        "{} connections have no import of existing records",
                        record.app
                    ),
                )
            })?;
        let now = self.now();
        let job = ImportRecord {
            id: random_id("imp"),
            tenant: tenant.to_owned(),
            connection: connection.to_owned(),
            status: ImportStatus::Running,
            done: 0,
            total: None,
            kinds: importer
                .import_kinds()
                .into_iter()
                .map(|kind| ImportProgress {
                    kind: kind.to_owned(),
                    done: 0,
                    total: None,
                })
                .collect(),
            phase: 0,
            page: 0,
            cursor: None,
            generation: 0,
            error: None,
            started_at: now,
            updated_at: now,
            finished_at: None,
        };
        let marker = item(keys::running_import(connection), &json!({"import": job.id}))?;
        if let PutOutcome::Exists(existing) = self.store.put_if_absent(marker.clone()).await? {
            let held = existing.body["import"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            // A marker whose import finished, or was never written (a
            // process killed between the two writes), holds nothing.
            let holder = self.read::<ImportRecord>(&keys::import(&held)).await?;
            if let Some((running, _)) = holder.filter(|(j, _)| j.status != ImportStatus::Finished) {
                return Err(EngineError::conflict(
                    "connection",
                    format!(
                        "import {} of this connection is {}; wait for it, or resume it",
                        running.id,
                        status_name(running.status)
                    ),
                ));
            }
            match self.store.update_if_version(marker, existing.version).await {
                Ok(_) => {}
                Err(StoreError::Conflict { .. }) => {
                    return Err(EngineError::conflict(
                        "connection",
                        "another import of this connection was started at the same time",
                    ));
                }
                Err(err) => return Err(err.into()),
            }
        }
        self.store.put(item(keys::import(&job.id), &job)?).await?;
        self.store
            .put(item(
                keys::tenant_import_index(tenant, &job.id),
                &json!({"import": job.id}),
            )?)
            .await?;
        tracing::info!(tenant, connection, import = %job.id, "import started");
        self.request_page(&job).await?;
        Ok(job)
    }

    /// Goes on with a failed import from its saved cursor, or with one
    /// that has not moved for [`STALLED_SECS`] (its next page request was
    /// lost with a process killed at the wrong moment).
    pub async fn resume_import(&self, tenant: &str, id: &str) -> EngineResult<ImportRecord> {
        let (mut job, version) = self.tenant_import(tenant, id).await?;
        let stalled = job.status == ImportStatus::Running
            && (self.now() - job.updated_at).num_seconds() >= STALLED_SECS;
        if job.status != ImportStatus::Failed && !stalled {
            return Err(EngineError::conflict(
                "status",
                format!(
                    "only a failed import, or one that has not moved for {STALLED_SECS} s, can be resumed; this one is {}",
                    status_name(job.status)
                ),
            ));
        }
        job.status = ImportStatus::Running;
        job.generation += 1;
        job.error = None;
        job.updated_at = self.now();
        match self
            .store
            .update_if_version(item(keys::import(id), &job)?, version)
            .await
        {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => {
                return Err(EngineError::conflict(
                    "import",
                    "the import changed meanwhile; read it again",
                ));
            }
            Err(err) => return Err(err.into()),
        }
        self.request_page(&job).await?;
        Ok(job)
    }

    /// The import holding the connection (running, or failed and waiting
    /// to be resumed), if any.
    pub async fn connection_import(
        &self,
        tenant: &str,
        connection: &str,
    ) -> EngineResult<Option<ImportRecord>> {
        let key = keys::running_import(connection);
        let Some(marker) = self.store.get(&key.pk, &key.sk).await? else {
            return Ok(None);
        };
        let held = marker.body["import"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        Ok(self
            .read::<ImportRecord>(&keys::import(&held))
            .await?
            .map(|(job, _)| job)
            .filter(|job| job.tenant == tenant && job.status != ImportStatus::Finished))
    }

    /// One import of the tenant.
    pub async fn get_import(&self, tenant: &str, id: &str) -> EngineResult<ImportRecord> {
        Ok(self.tenant_import(tenant, id).await?.0)
    }

    /// The tenant's imports, newest first.
    pub async fn list_imports(&self, tenant: &str) -> EngineResult<Vec<ImportRecord>> {
        let (pk, prefix) = keys::tenant_imports(tenant);
        let mut imports = Vec::new();
        for entry in self.query_all(&pk, prefix).await? {
            let id = entry.body["import"].as_str().unwrap_or_default().to_owned();
            if let Some((job, _)) = self.read::<ImportRecord>(&keys::import(&id)).await? {
                imports.push(job);
            }
        }
        imports.sort_by_key(|job| std::cmp::Reverse(job.started_at));
        Ok(imports)
    }

    async fn tenant_import(&self, tenant: &str, id: &str) -> EngineResult<(ImportRecord, u64)> {
        match self.read::<ImportRecord>(&keys::import(id)).await? {
            Some((job, version)) if job.tenant == tenant => Ok((job, version)),
            _ => Err(EngineError::NotFound {
                what: "import",
                id: id.to_owned(),
            }),
        }
    }

    /// Puts the request for the import's next page on the bus.
    async fn request_page(&self, job: &ImportRecord) -> EngineResult<()> {
        let now = self.now();
        let request = PageRequest {
            import: job.id.clone(),
            generation: job.generation,
            page: job.page,
        };
        let event = Event {
            id: EventId::from_source(
                &job.connection,
                &format!("import:{}:{}:{}", job.id, job.generation, job.page),
            ),
            tenant: job.tenant.clone(),
            connection: job.connection.clone(),
            app: "crmbridge".into(),
            kind: IMPORT_PAGE.into(),
            subject: Subject {
                kind: "import".into(),
                id: job.id.clone(),
            },
            occurred_at: now,
            received_at: now,
            data: serde_json::to_value(&request).map_err(|err| EngineError::Corrupt {
                what: format!("page request of import {}", job.id),
                message: err.to_string(),
            })?,
        };
        self.accept(vec![event]).await?;
        Ok(())
    }

    /// Reads one page of an import (see the module docs).
    pub(crate) async fn import_page_requested(&self, request: &Event) -> EngineResult<Dispatched> {
        let page: PageRequest =
            serde_json::from_value(request.data.clone()).map_err(|err| EngineError::Corrupt {
                what: format!("page request {}", request.id),
                message: err.to_string(),
            })?;
        let key = keys::import(&page.import);
        let Some((job, version)) = self.read::<ImportRecord>(&key).await? else {
            return Ok(Dispatched::nothing());
        };
        let span = tracing::info_span!("import", import = %job.id, page = page.page, tenant = %job.tenant, connection = %job.connection);
        self.read_import_page(page, key, job, version)
            .instrument(span)
            .await
    }

    async fn read_import_page(
        &self,
        page: PageRequest,
        key: keys::Key,
        job: ImportRecord,
        version: u64,
    ) -> EngineResult<Dispatched> {
        if job.status == ImportStatus::Finished {
            // Saved as finished by a process that may have died before
            // letting the connection go.
            self.release_connection(&job).await?;
            return Ok(Dispatched::nothing());
        }
        if job.status != ImportStatus::Running || job.generation != page.generation {
            return Ok(Dispatched::nothing());
        }
        if job.page != page.page {
            if job.page == page.page + 1 {
                // Saved, but the process may have died before asking for
                // the next page.
                self.request_page(&job).await?;
            }
            return Ok(Dispatched::nothing());
        }
        let Some(progress) = job.kinds.get(job.phase) else {
            return Err(EngineError::Corrupt {
                what: format!("import {}", job.id),
                message: format!("phase {} of {} kinds", job.phase, job.kinds.len()),
            });
        };
        let kind = progress.kind.clone();
        let connection = self.open_connection(&job.tenant, &job.connection).await?;
        let Some(importer) = self
            .connectors
            .get(&connection.record.app)
            .and_then(|vendor| vendor.importer.clone())
        else {
            return self
                .fail_import(
                    &job,
                    version,
                    "the connection's app no longer imports records",
                )
                .await;
        };
        let call_key = format!("import/{}/{}", job.id, page.page);
        let ctx = self.call_context(&connection, &call_key);
        let read = match importer.import_page(&ctx, &kind, job.cursor.as_ref()).await {
            Ok(read) => read,
            Err(err) if err.is_transient() => {
                return Err(EngineError::Action {
                    what: format!("reading page {} of {kind} for import {}", page.page, job.id),
                    transient: true,
                    message: err.to_string(),
                });
            }
            Err(err) => {
                let reason = format!("page {} of {kind}: {err}", page.page);
                return self.fail_import(&job, version, &reason).await;
            }
        };
        let now = self.now();
        let count = read.events.len() as u64;
        let events: Vec<Event> = read
            .events
            .into_iter()
            .map(|mut decoded| {
                decoded.source_id = decoded
                    .source_id
                    .map(|source| format!("{}:{source}", job.id));
                self.envelope(&connection.record, decoded, now)
            })
            .collect();
        if !events.is_empty() {
            self.accept(events).await?;
        }
        let mut next = job.clone();
        next.page += 1;
        next.done += count;
        next.updated_at = now;
        if let Some(progress) = next.kinds.get_mut(next.phase) {
            progress.done += count;
            if read.total.is_some() {
                progress.total = read.total;
            }
            if read.next.is_none() {
                // The walk is complete: what it read is the exact count
                // (the vendor's total was taken before live changes).
                progress.total = Some(progress.done);
            }
        }
        match read.next {
            Some(cursor) => next.cursor = Some(cursor),
            None => {
                next.cursor = None;
                next.phase += 1;
                if next.phase >= next.kinds.len() {
                    next.status = ImportStatus::Finished;
                    next.finished_at = Some(now);
                }
            }
        }
        next.total = next.kinds.iter().map(|k| k.total).sum::<Option<u64>>();
        match self
            .store
            .update_if_version(item(key, &next)?, version)
            .await
        {
            Ok(_) => {}
            // Another delivery of this page saved it first.
            Err(StoreError::Conflict { .. }) => return Ok(Dispatched::nothing()),
            Err(err) => return Err(err.into()),
        }
        tracing::info!(kind, read = count, done = next.done, total = ?next.total, "import page read");
        if next.status == ImportStatus::Finished {
            self.release_connection(&next).await?;
            tracing::info!(done = next.done, "import finished");
        } else {
            self.request_page(&next).await?;
        }
        Ok(Dispatched::nothing())
    }

    /// The bus gave up on a page request: the import fails with the reason
    /// and can be resumed.
    pub(crate) async fn import_given_up(&self, request: &Event, reason: &str) -> EngineResult<()> {
        let Ok(page) = serde_json::from_value::<PageRequest>(request.data.clone()) else {
            return Ok(());
        };
        let Some((job, version)) = self
            .read::<ImportRecord>(&keys::import(&page.import))
            .await?
        else {
            return Ok(());
        };
        // `page + 1`: the page was saved, but its successor could never be
        // requested.
        if job.status == ImportStatus::Running
            && job.generation == page.generation
            && (job.page == page.page || job.page == page.page + 1)
        {
            self.fail_import(&job, version, &format!("page {}: {reason}", page.page))
                .await?;
        }
        Ok(())
    }

    async fn fail_import(
        &self,
        job: &ImportRecord,
        version: u64,
        reason: &str,
    ) -> EngineResult<Dispatched> {
        let mut failed = job.clone();
        failed.status = ImportStatus::Failed;
        failed.error = Some(reason.to_owned());
        failed.updated_at = Utc::now();
        match self
            .store
            .update_if_version(item(keys::import(&job.id), &failed)?, version)
            .await
        {
            Ok(_) => tracing::warn!(import = %job.id, reason, "import failed; it can be resumed"),
            Err(StoreError::Conflict { .. }) => {}
            Err(err) => return Err(err.into()),
        }
        Ok(Dispatched::nothing())
    }

    /// Lets the connection start another import.
    async fn release_connection(&self, job: &ImportRecord) -> EngineResult<()> {
        let key = keys::running_import(&job.connection);
        if let Some(marker) = self.store.get(&key.pk, &key.sk).await?
            && marker.body["import"].as_str() == Some(job.id.as_str())
        {
            self.store.delete(&key.pk, &key.sk).await?;
        }
        Ok(())
    }
}
