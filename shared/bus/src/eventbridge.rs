//! EventBridge: PutEvents in chunks of 10 (the API's limit), retrying only
//! the entries that failed, with exponential backoff and jitter.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_eventbridge::Client;
use aws_sdk_eventbridge::error::DisplayErrorContext;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use crmbridge_mapping::Event;
use rand::Rng;

use crate::{Bus, BusError};

/// The `source` of every entry crmbridge puts; the dispatch rule matches it.
pub const SOURCE: &str = "crmbridge";
/// EventBridge's limit for one entry (256 KB), counted as AWS does: source,
/// detail-type and detail bytes together.
pub const MAX_ENTRY_BYTES: usize = 256 * 1024;
const ENTRIES_PER_CALL: usize = 10;
const MAX_ATTEMPTS: u32 = 5;

#[derive(Debug, Clone)]
pub struct EventBridgeBus {
    client: Client,
    bus_name: String,
    base_backoff: Duration,
}

impl EventBridgeBus {
    pub fn new(client: Client, bus_name: impl Into<String>) -> Self {
        Self {
            client,
            bus_name: bus_name.into(),
            base_backoff: Duration::from_millis(100),
        }
    }
}

/// One entry ready to send, before it becomes an SDK type.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub event_id: String,
    pub detail_type: String,
    pub detail: String,
}

pub(crate) fn to_entry(event: &Event) -> Result<Entry, BusError> {
    let detail = serde_json::to_string(event).map_err(|err| BusError::Backend {
        backend: "eventbridge",
        operation: "serialise",
        message: err.to_string(),
    })?;
    let bytes = SOURCE.len() + event.kind.len() + detail.len();
    if bytes > MAX_ENTRY_BYTES {
        return Err(BusError::TooLarge {
            event_id: event.id.to_string(),
            bytes,
            limit: MAX_ENTRY_BYTES,
        });
    }
    Ok(Entry {
        event_id: event.id.to_string(),
        detail_type: event.kind.clone(),
        detail,
    })
}

/// What one PutEvents call said about each entry: `None` = accepted,
/// `Some(reason)` = failed and worth retrying.
pub(crate) type EntryResults = Vec<Option<String>>;

/// Sends entries in chunks, retrying only the failed ones. Generic over the
/// sender so the retry logic is tested without the network.
pub(crate) async fn send_with_retries<F, Fut>(
    entries: Vec<Entry>,
    base_backoff: Duration,
    mut send: F,
) -> Result<(), BusError>
where
    F: FnMut(Vec<Entry>) -> Fut,
    Fut: std::future::Future<Output = Result<EntryResults, String>>,
{
    let total = entries.len();
    let mut pending = entries;
    let mut last_reason = String::new();
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            let exp = base_backoff.saturating_mul(1 << (attempt - 1));
            let jitter = rand::rng().random_range(0..=exp.as_millis() as u64 / 2 + 1);
            tokio::time::sleep(exp + Duration::from_millis(jitter)).await;
        }
        let mut failed = Vec::new();
        for chunk in pending.chunks(ENTRIES_PER_CALL) {
            match send(chunk.to_vec()).await {
                Ok(results) => {
                    for (entry, result) in chunk
                        .iter()
                        .zip(results.into_iter().chain(std::iter::repeat(None)))
                    {
                        if let Some(reason) = result {
                            last_reason = reason;
                            failed.push(entry.clone());
                        }
                    }
                }
                Err(reason) => {
                    // The whole call failed (throttled, network): every entry
                    // of the chunk is retried.
                    last_reason = reason;
                    failed.extend(chunk.iter().cloned());
                }
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        tracing::warn!(
            failed = failed.len(),
            attempt = attempt + 1,
            reason = %last_reason,
            "PutEvents entries failed; retrying those"
        );
        pending = failed;
    }
    Err(BusError::Undelivered {
        failed: pending.len(),
        total,
        attempts: MAX_ATTEMPTS,
        reason: last_reason,
    })
}

#[async_trait]
impl Bus for EventBridgeBus {
    async fn publish(&self, events: &[Event]) -> Result<(), BusError> {
        let entries = events.iter().map(to_entry).collect::<Result<Vec<_>, _>>()?;
        send_with_retries(entries, self.base_backoff, |chunk| async move {
            let mut request = self.client.put_events();
            for entry in &chunk {
                request = request.entries(
                    PutEventsRequestEntry::builder()
                        .event_bus_name(&self.bus_name)
                        .source(SOURCE)
                        .detail_type(&entry.detail_type)
                        .detail(&entry.detail)
                        .build(),
                );
            }
            let out = request
                .send()
                .await
                .map_err(|err| DisplayErrorContext(&err).to_string())?;
            Ok(out
                .entries()
                .iter()
                .map(|result| {
                    result.error_code().map(|code| {
                        format!("{code}: {}", result.error_message().unwrap_or_default())
                    })
                })
                .collect())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::{Arc, Mutex};

    fn entries(n: usize) -> Vec<Entry> {
        (0..n)
            .map(|i| Entry {
                event_id: format!("e{i}"),
                detail_type: "k".into(),
                detail: "{}".into(),
            })
            .collect()
    }

    #[tokio::test]
    async fn sends_in_chunks_of_ten() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&calls);
        send_with_retries(entries(23), Duration::ZERO, move |chunk| {
            seen.lock().unwrap().push(chunk.len());
            let n = chunk.len();
            async move { Ok(vec![None; n]) }
        })
        .await
        .unwrap();
        assert_eq!(*calls.lock().unwrap(), vec![10, 10, 3]);
    }

    #[tokio::test]
    async fn retries_only_the_entries_that_failed() {
        let calls = Arc::new(Mutex::new(Vec::<Vec<String>>::new()));
        let seen = Arc::clone(&calls);
        send_with_retries(entries(4), Duration::ZERO, move |chunk| {
            let ids: Vec<String> = chunk.iter().map(|e| e.event_id.clone()).collect();
            let first_call = seen.lock().unwrap().is_empty();
            seen.lock().unwrap().push(ids.clone());
            async move {
                Ok(ids
                    .iter()
                    .map(|id| {
                        (first_call && (id == "e1" || id == "e3"))
                            .then(|| "ThrottlingException: slow down".to_owned())
                    })
                    .collect())
            }
        })
        .await
        .unwrap();
        let calls = calls.lock().unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1], vec!["e1".to_owned(), "e3".to_owned()]);
    }

    #[tokio::test]
    async fn gives_up_after_the_last_attempt_and_says_why() {
        let err = send_with_retries(entries(3), Duration::ZERO, |_chunk| async {
            Err::<EntryResults, _>("InternalFailure".to_owned())
        })
        .await
        .unwrap_err();
        match err {
            BusError::Undelivered {
                failed,
                total,
                attempts,
                reason,
            } => {
                assert_eq!((failed, total, attempts), (3, 3, MAX_ATTEMPTS));
                assert_eq!(reason, "InternalFailure");
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn an_entry_over_256_kb_is_refused_not_cut() {
        let event = crmbridge_mapping::Event {
            id: crmbridge_mapping::EventId::from_source("c", "big"),
            tenant: "t".into(),
            connection: "c".into(),
            app: "generic".into(),
            kind: "generic.webhook.received".into(),
            subject: crmbridge_mapping::Subject {
                kind: "x".into(),
                id: "1".into(),
            },
            occurred_at: Default::default(),
            received_at: Default::default(),
            data: serde_json::json!({"blob": "x".repeat(MAX_ENTRY_BYTES)}),
        };
        assert!(matches!(to_entry(&event), Err(BusError::TooLarge { .. })));
    }
}
