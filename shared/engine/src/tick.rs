//! The scheduled tick: finds every source whose trigger must be polled and
//! fans the work out on the bus (one poll request per source), so a single
//! invocation stays short however many tenants there are. Each tick is
//! recorded with what it asked to poll.
//!
//! A tick claims its record (one conditional write per tick, whatever the
//! number of sources) before it publishes: a tick delivered again, or two
//! ticks in the same second, find the claim and ask for nothing more. A
//! tick whose publish fails gives its claim back for its retry; one that
//! dies between its claim and its publish is skipped: the next
//! tick polls the same sources from the same cursors, so nothing is lost,
//! only later. (An acceptance record per poll request cost two writes per
//! source on every tick.)

use chrono::{DateTime, Utc};
use crmbridge_mapping::{Event, EventId, Subject};
use crmbridge_store::{PutOutcome, Query};

use crate::bookkeeping::PollSource;
use crate::records::TickRecord;
use crate::{Engine, EngineResult, decode, item, keys};

/// The event kind of a poll request.
pub const POLL_REQUESTED: &str = "crmbridge.poll.requested";

/// Whether an EventBridge event is the schedule's tick (`source`
/// `aws.events`, `detail-type` `Scheduled Event`); anything else routed to
/// the tick function by mistake is refused with the reason, and ignored.
pub fn check_schedule(source: &str, detail_type: &str) -> Result<(), String> {
    if source == "aws.events" && detail_type == "Scheduled Event" {
        Ok(())
    } else {
        Err(format!(
            "not the schedule's tick (source '{source}', detail-type '{detail_type}'): ignored"
        ))
    }
}

impl Engine {
    pub async fn tick(&self, started_at: DateTime<Utc>) -> EngineResult<TickRecord> {
        let stamp = started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut sources: Vec<PollSource> = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .query(
                    Query::prefix(keys::poll_sources_pk(), "")
                        .limit(500)
                        .after(after),
                )
                .await?;
            for source in &page.items {
                sources.push(decode(source)?);
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let requests: Vec<Event> = sources
            .iter()
            .map(|source| {
                let name = source.name();
                Event {
                    // One poll request per source per tick, even if the tick
                    // itself is delivered twice.
                    id: EventId::from_source(&source.connection, &format!("poll:{name}:{stamp}")),
                    tenant: source.tenant.clone(),
                    connection: source.connection.clone(),
                    app: "crmbridge".into(),
                    kind: POLL_REQUESTED.into(),
                    subject: Subject {
                        kind: "poll_source".into(),
                        id: name,
                    },
                    occurred_at: started_at,
                    received_at: started_at,
                    data: serde_json::to_value(source).unwrap_or_default(),
                }
            })
            .collect();
        let record = TickRecord {
            started_at,
            sources: sources.iter().map(PollSource::name).collect(),
            published: requests.len(),
        };
        let expires = started_at.timestamp() + self.config.tick_ttl_secs;
        let claim = item(keys::tick(&stamp), &record)?.expiring_at(expires);
        if let PutOutcome::Exists(_) = self.store.put_if_absent(claim).await? {
            tracing::info!(tick = %stamp, "tick already handled");
            return Ok(TickRecord {
                published: 0,
                ..record
            });
        }
        if !requests.is_empty()
            && let Err(err) = self.bus.publish(&requests).await
        {
            // Give the claim back, so the tick's retry publishes.
            let key = keys::tick(&stamp);
            if let Err(release) = self.store.delete(&key.pk, &key.sk).await {
                tracing::warn!(tick = %stamp, error = %release, "could not release the tick's claim");
            }
            return Err(err.into());
        }
        let published = record.published;
        tracing::info!(sources = record.sources.len(), published, "tick recorded");
        Ok(record)
    }
}
