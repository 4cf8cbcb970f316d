//! The one envelope for everything that enters crmbridge, by webhook or by
//! poll. It is also the `detail` of every EventBridge entry, so its JSON form
//! is a public contract: fields are only ever added, never renamed.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A stable event id: the same source change always yields the same id, so a
/// webhook delivered twice (or a change seen by two overlapping polls) is the
/// same event and is accepted once.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(String);

impl EventId {
    /// Derives the id from the connection and the source's own identifier
    /// for the change. Scoping by connection keeps two tenants that receive
    /// the same vendor id apart.
    pub fn from_source(connection: &str, source_id: &str) -> Self {
        Self::digest(&[b"src", connection.as_bytes(), source_id.as_bytes()])
    }

    /// Derives the id from the raw payload when the source gives no id of its
    /// own: byte-identical redeliveries still collapse into one event.
    pub fn from_payload(connection: &str, payload: &[u8]) -> Self {
        Self::digest(&[b"body", connection.as_bytes(), payload])
    }

    /// Wraps an id that was derived earlier (read back from the bus or the
    /// store).
    pub fn from_existing(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn digest(parts: &[&[u8]]) -> Self {
        let mut hasher = Sha256::new();
        for part in parts {
            // Length-prefix every part so ("ab","c") and ("a","bc") differ.
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        let digest = hasher.finalize();
        // 128 bits are plenty against accidental collision and keep keys short.
        Self(format!("ev_{}", hex::encode(&digest[..16])))
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the event is about in the source system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
}

/// The event envelope (see DESIGN.md, "Events").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: EventId,
    pub tenant: String,
    pub connection: String,
    /// The connector that produced it, e.g. `moysklad`.
    pub app: String,
    /// `app.entity.what`, e.g. `moysklad.customerorder.updated`.
    pub kind: String,
    pub subject: Subject,
    pub occurred_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    /// Normalised fields, as the connector's catalog declares them.
    pub data: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_source_id_gives_same_event_id() {
        assert_eq!(
            EventId::from_source("c1", "call-42"),
            EventId::from_source("c1", "call-42")
        );
    }

    #[test]
    fn event_id_is_scoped_by_connection() {
        assert_ne!(
            EventId::from_source("c1", "call-42"),
            EventId::from_source("c2", "call-42")
        );
    }

    #[test]
    fn parts_are_length_prefixed() {
        assert_ne!(
            EventId::from_source("ab", "c"),
            EventId::from_source("a", "bc")
        );
    }

    #[test]
    fn payload_and_source_ids_never_collide() {
        assert_ne!(
            EventId::from_source("c1", "x"),
            EventId::from_payload("c1", b"x")
        );
    }

    #[test]
    fn envelope_json_uses_type_for_subject_kind() {
        let event = Event {
            id: EventId::from_source("c", "1"),
            tenant: "t".into(),
            connection: "c".into(),
            app: "generic".into(),
            kind: "generic.webhook.received".into(),
            subject: Subject {
                kind: "record".into(),
                id: "1".into(),
            },
            occurred_at: DateTime::from_timestamp(0, 0).unwrap_or_default(),
            received_at: DateTime::from_timestamp(0, 0).unwrap_or_default(),
            data: serde_json::json!({"a": 1}),
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["subject"]["type"], "record");
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }
}
