//! The scheduled tick: finds every source whose trigger must be polled and
//! fans the work out on the bus (one poll request per source), so a single
//! invocation stays short however many tenants there are. Each tick is
//! recorded with what it asked to poll.

use chrono::{DateTime, Utc};
use crmbridge_mapping::{Event, EventId, Subject};
use crmbridge_store::Query;

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
        let stamp = started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
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
        let published = if requests.is_empty() {
            0
        } else {
            self.accept(requests).await?.accepted.len()
        };
        let record = TickRecord {
            started_at,
            sources: sources.iter().map(PollSource::name).collect(),
            published,
        };
        let expires = started_at.timestamp() + self.config.tick_ttl_secs;
        self.store
            .put(item(keys::tick(&stamp), &record)?.expiring_at(expires))
            .await?;
        tracing::info!(sources = record.sources.len(), published, "tick recorded");
        Ok(record)
    }
}
