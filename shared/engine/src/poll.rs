//! Polling one source (a connection and an event kind) when tick asks: read
//! the cursor, ask the connector what changed since, accept the changes
//! exactly as webhooks are accepted (same ids, same de-duplication), then
//! move the cursor with a conditional update. A poll that loses the race
//! for the cursor changes nothing: its events were de-duplicated anyway.

use crmbridge_store::{PutOutcome, StoreError};
use serde::{Deserialize, Serialize};

use crate::automations::PollSource;
use crate::dispatch::Dispatched;
use crate::{Engine, EngineError, EngineResult, item, keys};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Cursor {
    value: serde_json::Value,
    polled_at: chrono::DateTime<chrono::Utc>,
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
        if self
            .automations_for(&source.connection, &source.kind)
            .await?
            .is_empty()
        {
            // The last automation on this trigger was removed.
            let key = keys::poll_source(&source.connection, &source.kind);
            self.store.delete(&key.pk, &key.sk).await?;
            return Ok(Dispatched {
                runs: vec![],
                duplicate: false,
            });
        }
        let connection = self
            .open_connection(&source.tenant, &source.connection)
            .await?;
        let Some(connector) = self.connectors.get(&connection.record.app).cloned() else {
            return Ok(Dispatched {
                runs: vec![],
                duplicate: false,
            });
        };
        let cursor_key = keys::cursor(&source.connection, &source.kind);
        let stored = self.read::<Cursor>(&cursor_key).await?;
        let key = format!("poll/{}", request.id);
        let ctx = self.call_context(&connection, &key);
        let now = self.now();
        let batch = connector
            .poll(
                &ctx,
                &source.kind,
                stored.as_ref().map(|(c, _)| &c.value),
                now,
            )
            .await
            .map_err(|err| EngineError::Action {
                what: format!("polling {} on {}", source.kind, source.connection),
                transient: err.is_transient(),
                message: err.to_string(),
            })?;
        let record = connection.record.clone();
        let events: Vec<_> = batch
            .events
            .into_iter()
            .map(|decoded| self.envelope(&record, decoded, now))
            .collect();
        let found = events.len();
        let accepted = if events.is_empty() {
            0
        } else {
            self.accept(events).await?.accepted.len()
        };
        let next = Cursor {
            value: batch.cursor,
            polled_at: now,
        };
        let moved = match stored {
            Some((_, version)) => match self
                .store
                .update_if_version(item(cursor_key, &next)?, version)
                .await
            {
                Ok(_) => true,
                Err(StoreError::Conflict { .. }) => false,
                Err(err) => return Err(err.into()),
            },
            None => matches!(
                self.store.put_if_absent(item(cursor_key, &next)?).await?,
                PutOutcome::Inserted
            ),
        };
        tracing::info!(connection = %source.connection, kind = %source.kind, found, accepted, moved, "polled");
        Ok(Dispatched {
            runs: vec![],
            duplicate: false,
        })
    }
}
