//! Polling one source (a connection, an event kind, a scope) when tick
//! asks: take the source's lease, ask the connector what changed since the
//! cursor, turn observations into changes, accept the changes exactly as
//! webhooks are accepted (same ids, same de-duplication), then move the
//! cursor and give the lease back — all with conditional writes.
//!
//! Two polls of one source at once (two ticks, a redelivery): the cursor's
//! conditional update gives the lease to one; the other backs off without
//! calling the vendor. A poll that dies halfway leaves the cursor where it
//! was: its redelivery (same request id, so the lease is still its own)
//! or, once the lease ran out, the next tick asks again, and every change
//! it finds again has the same event id, so nothing is skipped and
//! nothing doubled.
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

/// How long a poll may hold its source before another may take it over.
const POLL_LEASE_SECS: i64 = 240;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Cursor {
    value: Value,
    polled_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lease: Option<Lease>,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Lease {
    /// The poll request holding it.
    holder: String,
    until: DateTime<Utc>,
}

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
            .automations_for(&source.connection, &source.kind)
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
        let holder = request.id.to_string();
        let Some((cursor, version)) = self.take_lease(&cursor_key, &holder, now).await? else {
            tracing::info!(source = %source.name(), "another poll of this source is running; backing off");
            return Ok(Dispatched::nothing());
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
                // Give the source back so the next tick can try at once.
                let released = Cursor {
                    lease: None,
                    failures: cursor.failures.saturating_add(1),
                    ..cursor
                };
                let failures = released.failures;
                if let Err(release) = self
                    .store
                    .update_if_version(item(cursor_key, &released)?, version)
                    .await
                {
                    tracing::warn!(error = %release, "could not release the poll lease");
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
        let next = Cursor {
            value: batch.cursor,
            polled_at: now,
            lease: None,
            failures: 0,
        };
        let moved = match self
            .store
            .update_if_version(item(cursor_key, &next)?, version)
            .await
        {
            Ok(_) => true,
            Err(StoreError::Conflict { .. }) => false,
            Err(err) => return Err(err.into()),
        };
        tracing::info!(source = %source.name(), found, accepted, moved, "polled");
        if moved && cursor.failures > 0 {
            self.resolve_alert(&source.tenant, AlertCause::PollFailing, &source.name())
                .await;
        }
        Ok(Dispatched::nothing())
    }

    /// Takes the source's lease for `holder`: the cursor as it was and the
    /// version now held, or `None` when another poll holds it.
    async fn take_lease(
        &self,
        key: &keys::Key,
        holder: &str,
        now: DateTime<Utc>,
    ) -> EngineResult<Option<(Cursor, u64)>> {
        let lease = Lease {
            holder: holder.to_owned(),
            until: now + chrono::Duration::seconds(POLL_LEASE_SECS),
        };
        match self.read::<Cursor>(key).await? {
            Some((cursor, version)) => {
                if let Some(held) = &cursor.lease
                    && held.holder != holder
                    && held.until > now
                {
                    return Ok(None);
                }
                let leased = Cursor {
                    lease: Some(lease),
                    ..cursor.clone()
                };
                match self
                    .store
                    .update_if_version(item(key.clone(), &leased)?, version)
                    .await
                {
                    Ok(version) => Ok(Some((cursor, version))),
                    Err(StoreError::Conflict { .. }) => Ok(None),
                    Err(err) => Err(err.into()),
                }
            }
            None => {
                let fresh = Cursor {
                    value: Value::Null,
                    polled_at: now,
                    lease: Some(lease),
                    failures: 0,
                };
                match self.store.put_if_absent(item(key.clone(), &fresh)?).await? {
                    PutOutcome::Inserted => Ok(Some((fresh, 1))),
                    PutOutcome::Exists(_) => Ok(None),
                }
            }
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
