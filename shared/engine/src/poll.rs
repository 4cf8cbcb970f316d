//! Polling one source (a connection, an event kind, a scope) when tick
//! asks: read the source's cursor, ask the connector what changed since
//! it, turn observations into changes, accept the changes exactly as
//! webhooks are accepted (same ids, same de-duplication), then move the
//! cursor with a write conditional on the version read.
//!
//! No lease: a poll that finds nothing new and leaves the cursor where it
//! was writes nothing at all, which is what most polls do. Two polls of
//! one source at once (overlapping ticks, a redelivery) both ask the
//! vendor; every change they both find has the same event id, so it is
//! accepted once, and only the first cursor write lands (the other's
//! condition fails and it is dropped). A poll that dies halfway leaves the
//! cursor where it was: the next one asks again and finds the same
//! changes under the same ids, so nothing is skipped and nothing doubled.
//!
//! Observations: a source that only reports records' current state
//! (NetHunt) has the engine remember the last value seen per record and
//! field. Only a different value is a change; its event id counts the
//! changes (`…#3`), so seeing the same change again — an overlapping
//! window, a retry after a crash between accepting and remembering —
//! names the same event.

use chrono::{DateTime, Utc};
use crmbridge_connectors::DecodedEvent;
use crmbridge_store::{PutOutcome, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bookkeeping::PollSource;
use crate::dispatch::Dispatched;
use crate::metrics::Metric;
use crate::records::AlertCause;
use crate::{Engine, EngineError, EngineResult, item, keys};

/// A source's position. Cursors written by builds that leased them carry a
/// `lease` field too; it is ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Cursor {
    value: Value,
    /// When the cursor last moved (an idle poll does not write it).
    polled_at: DateTime<Utc>,
    /// Polls in a row that failed (an alert at [`POLL_FAILURES_ALERT`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    failures: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Failed polls in a row that raise a `poll_failing` alert: one failure is
/// an outage the next tick usually outlives.
pub const POLL_FAILURES_ALERT: u32 = 3;

/// The last value seen of an observed field and how many changes it had.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ObservedValue {
    value: Value,
    changes: u64,
}

impl Engine {
    pub(crate) async fn poll_requested(
        &self,
        request: &crmbridge_mapping::Event,
    ) -> EngineResult<Dispatched> {
        let source: PollSource =
            serde_json::from_value(request.data.clone()).map_err(|err| EngineError::Corrupt {
                what: format!("poll request {}", request.id),
                message: err.to_string(),
            })?;
        let tag = source.scope_tag();
        let serving = self
            .automations_for(&source.tenant, &source.connection, &source.kind)
            .await?
            .iter()
            .any(|record| self.poll_source_of(record).scope_tag() == tag);
        if !serving {
            // The last automation on this trigger (and scope) was removed.
            let key = keys::poll_source(&source.connection, &source.kind, &tag);
            self.store.delete(&key.pk, &key.sk).await?;
            return Ok(Dispatched::nothing());
        }
        let connection = self
            .open_connection(&source.tenant, &source.connection)
            .await?;
        let Some(connector) = self
            .connectors
            .get(&connection.record.app)
            .and_then(|vendor| vendor.poller.clone())
        else {
            return Ok(Dispatched::nothing());
        };
        let now = self.now();
        let cursor_key = keys::cursor(&source.connection, &source.kind, &tag);
        let (cursor, version) = match self.read::<Cursor>(&cursor_key).await? {
            Some((cursor, version)) => (cursor, Some(version)),
            None => (
                Cursor {
                    value: Value::Null,
                    polled_at: now,
                    failures: 0,
                },
                None,
            ),
        };
        let key = format!("poll/{}", request.id);
        let ctx = self.call_context(&connection, &key);
        let polled = connector
            .poll(
                &ctx,
                &source.kind,
                &source.scope,
                (!cursor.value.is_null()).then_some(&cursor.value),
                now,
            )
            .await;
        let batch = match polled {
            Ok(batch) => batch,
            Err(err) => {
                let failed = Cursor {
                    failures: cursor.failures.saturating_add(1),
                    ..cursor
                };
                let failures = failed.failures;
                if let Err(counted) = self.save_cursor(&cursor_key, &failed, version).await {
                    tracing::warn!(error = %counted, "could not count the failed poll");
                }
                self.note_refusal(&source.tenant, &source.connection, &err)
                    .await?;
                if failures >= POLL_FAILURES_ALERT {
                    let detail = format!("{failures} polls in a row failed; the last: {err}");
                    self.raise_alert(
                        &source.tenant,
                        AlertCause::PollFailing,
                        &source.name(),
                        &detail,
                    )
                    .await;
                }
                return Err(EngineError::Action {
                    what: format!("polling {} on {}", source.kind, source.connection),
                    transient: err.is_transient(),
                    message: err.to_string(),
                });
            }
        };
        let found = batch.events.len();
        let record = connection.record.clone();
        let mut events = Vec::with_capacity(found);
        let mut remember = Vec::new();
        for decoded in batch.events {
            match self.observe(&source.connection, decoded).await? {
                Some((decoded, observed)) => {
                    events.push(self.envelope(&record, decoded, now));
                    remember.extend(observed);
                }
                None => continue,
            }
        }
        if let Some(newest) = events.iter().map(|e| e.occurred_at).max() {
            let lag = (now - newest).num_milliseconds().max(0) as f64 / 1000.0;
            self.measure(Metric::PollLag, &[&record.tenant, &record.app], lag);
        }
        let accepted = if events.is_empty() {
            0
        } else {
            self.accept(events).await?.accepted.len()
        };
        // Remembered only once the changes are accepted: a crash before
        // this line makes the next poll name the same changes again.
        for (key, observed) in remember {
            self.store.put(item(key, &observed)?).await?;
        }
        // Idle: nothing to write (the same position, no failures to forget).
        let unchanged = version.is_some() && batch.cursor == cursor.value && cursor.failures == 0;
        let moved = !unchanged
            && self
                .save_cursor(
                    &cursor_key,
                    &Cursor {
                        value: batch.cursor,
                        polled_at: now,
                        failures: 0,
                    },
                    version,
                )
                .await?;
        tracing::info!(source = %source.name(), found, accepted, moved, "polled");
        if moved && cursor.failures > 0 {
            self.resolve_alert(&source.tenant, AlertCause::PollFailing, &source.name())
                .await;
        }
        Ok(Dispatched::nothing())
    }

    /// Writes the cursor over the version read (`None`: there was none).
    /// `false` when another poll moved it first: its position stands.
    async fn save_cursor(
        &self,
        key: &keys::Key,
        cursor: &Cursor,
        version: Option<u64>,
    ) -> EngineResult<bool> {
        let written = item(key.clone(), cursor)?;
        match version {
            None => Ok(matches!(
                self.store.put_if_absent(written).await?,
                PutOutcome::Inserted
            )),
            Some(version) => match self.store.update_if_version(written, version).await {
                Ok(_) => Ok(true),
                Err(StoreError::Conflict { .. }) => Ok(false),
                Err(err) => Err(err.into()),
            },
        }
    }

    /// An observed event becomes a change when its value differs from the
    /// last one seen (its id counts the changes); the same value again is
    /// no change (`None`). Events without an observation pass unchanged.
    async fn observe(
        &self,
        connection: &str,
        mut decoded: DecodedEvent,
    ) -> EngineResult<Option<(DecodedEvent, Option<(keys::Key, ObservedValue)>)>> {
        let Some(observation) = decoded.observation.take() else {
            return Ok(Some((decoded, None)));
        };
        let key = keys::observation(connection, &observation.key);
        let last = self.read::<ObservedValue>(&key).await?.map(|(v, _)| v);
        if last.as_ref().is_some_and(|l| l.value == observation.value) {
            return Ok(None);
        }
        let changes = last.map_or(0, |l| l.changes) + 1;
        decoded.source_id = Some(format!("{}#{changes}", observation.key));
        Ok(Some((
            decoded,
            Some((
                key,
                ObservedValue {
                    value: observation.value,
                    changes,
                },
            )),
        )))
    }
}
