//! The Bus capability: how an accepted event reaches `dispatch`.
//!
//! On AWS that is EventBridge ([`EventBridgeBus`]): a rule on the bus invokes
//! the dispatch Lambda, with retries and a dead-letter queue. Locally it is a
//! durable outbox in the store's SQLite file ([`OutboxBus`]) drained by a
//! worker pool: an event is on disk before the webhook is answered, so a
//! crash between accept and dispatch loses nothing. Both deliver at least
//! once; dispatch is idempotent on the event id, which makes the whole path
//! effectively exactly once.

mod eventbridge;
mod outbox;

pub use eventbridge::{EventBridgeBus, MAX_ENTRY_BYTES, SOURCE};
pub use outbox::{EventHandler, HandlerError, OutboxBus, OutboxConfig, OutboxStats};

use async_trait::async_trait;
use crmbridge_mapping::Event;
use crmbridge_store::{Item, PutOutcome};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("event {event_id} is {bytes} bytes as a bus entry; the limit is {limit}")]
    TooLarge {
        event_id: String,
        bytes: usize,
        limit: usize,
    },
    #[error(
        "{failed} of {total} events could not be published after {attempts} attempts: {reason}"
    )]
    Undelivered {
        failed: usize,
        total: usize,
        attempts: u32,
        reason: String,
    },
    #[error("{backend} failed during {operation}: {message}")]
    Backend {
        backend: &'static str,
        operation: &'static str,
        message: String,
    },
}

/// Publishes events for dispatch. Returns only when every event is durably
/// on the bus; on error, the caller must not acknowledge the events (some may
/// have been published: dispatch tolerates the duplicate).
#[async_trait]
pub trait Bus: Send + Sync {
    async fn publish(&self, events: &[Event]) -> Result<(), BusError>;

    /// The bus's own way to record acceptances and publish in one commit,
    /// when it has one (an outbox in the store's database).
    fn atomic_acceptance(&self) -> Option<&dyn AtomicAcceptance> {
        None
    }
}

/// Acceptance and publication as one commit: an event is published only
/// if its acceptance item was inserted, in the same transaction, so no copy
/// of it is published twice and none is recorded unpublished. Only a bus
/// that lives in the store's own database can offer it.
#[async_trait]
pub trait AtomicAcceptance: Send + Sync {
    /// Per event, in order: `Inserted` (its acceptance recorded and the
    /// event published) or the acceptance found (nothing done).
    async fn publish_if_absent(
        &self,
        entries: Vec<(Event, Item)>,
    ) -> Result<Vec<PutOutcome>, BusError>;
}
