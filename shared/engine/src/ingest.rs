//! Ingress: a webhook is authenticated, decoded by its connector, accepted
//! (one conditional write per event) and published, and only then answered.
//!
//! On a bus of its own (EventBridge), the idempotency record is written
//! *before* publishing and marked published after: a crash or a bus
//! failure in between leaves it pending, and the sender's retry publishes
//! again (dispatch de-duplicates), so an event is never acknowledged and
//! lost, nor processed twice. On an outbox in the store's own database
//! (`serve`), the record and the outbox row are one commit instead.

use chrono::{DateTime, Utc};
use crmbridge_connectors::{ConnectionView, DecodedEvent, InboundRequest};
use crmbridge_mapping::{Event, EventId, Subject};
use crmbridge_store::{PutOutcome, StoreError};
use subtle::ConstantTimeEq;

use crate::metrics::Metric;
use crate::records::{AcceptRecord, AcceptState, ConnectionRecord, ConnectionSecrets};
use crate::{Engine, EngineError, EngineResult, decode, item, keys, sha256_hex};

/// A webhook delivery, transport-neutral.
#[derive(Debug, Clone)]
pub struct WebhookRequest<'a> {
    pub connection: &'a str,
    pub token: &'a str,
    pub method: &'a str,
    pub query: Vec<(String, String)>,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The URL as the sender addressed it, when the edge knows it.
    pub url: Option<String>,
}

/// What became of the events of one delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    /// Newly accepted (or re-published after an unfinished attempt).
    pub accepted: Vec<EventId>,
    /// Already accepted and published earlier: nothing was done.
    pub duplicates: Vec<EventId>,
    /// The status the sender expects for an accepted delivery.
    pub ack_status: u16,
    /// The exact body the sender expects, when it insists on one
    /// (Worksection: `{"status":"OK"}`); answered for duplicates too.
    pub ack_body: Option<serde_json::Value>,
}

impl Accepted {
    pub fn is_duplicate(&self) -> bool {
        self.accepted.is_empty()
    }
}

impl Engine {
    /// Looks a connection up and checks the secret token of its URL.
    pub(crate) async fn authenticate_hook(
        &self,
        connection: &str,
        token: &str,
    ) -> EngineResult<(ConnectionRecord, ConnectionSecrets)> {
        let not_found = || EngineError::NotFound {
            what: "connection",
            id: connection.to_owned(),
        };
        let (record, _) = self
            .read::<ConnectionRecord>(&keys::connection(connection))
            .await?
            .ok_or_else(not_found)?;
        let secrets = self.open_secrets(&record)?;
        // Compare digests: constant time, and the length of the real token
        // does not leak either.
        let given = sha256_hex(token);
        let expected = sha256_hex(&secrets.webhook_token);
        if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
            return Err(EngineError::Unauthorized(
                "the token in this webhook URL is not this connection's".into(),
            ));
        }
        Ok((record, secrets))
    }

    pub fn open_secrets(&self, record: &ConnectionRecord) -> EngineResult<ConnectionSecrets> {
        let plain = self
            .keyring
            .open(&record.secrets, secrets_aad(&record.id).as_bytes())
            .map_err(|source| EngineError::Sealed {
                connection: record.id.clone(),
                source,
            })?;
        serde_json::from_slice(&plain).map_err(|err| EngineError::Corrupt {
            what: format!("connection {} secrets", record.id),
            message: err.to_string(),
        })
    }

    /// Decodes a delivery into events (no state is touched).
    pub(crate) fn decode_events(
        &self,
        record: &ConnectionRecord,
        secrets: &ConnectionSecrets,
        request: &WebhookRequest<'_>,
        received_at: DateTime<Utc>,
    ) -> EngineResult<Vec<Event>> {
        if request.body.len() > self.config.max_body_bytes {
            return Err(EngineError::PayloadTooLarge {
                limit: self.config.max_body_bytes,
            });
        }
        let connector = self
            .connectors
            .get(&record.app)
            .ok_or_else(|| EngineError::Corrupt {
                what: format!("connection {}", record.id),
                message: format!("app '{}' has no connector in this build", record.app),
            })?
            .webhooks
            .as_ref()
            .ok_or_else(|| EngineError::BadRequest {
                field: "connection".into(),
                message: format!("{} connections receive no webhooks", record.app),
            })?;
        let signing_secret = connector
            .signing_credential()
            .and_then(|name| secrets.credentials.get(name))
            .map(String::as_str)
            .filter(|secret| !secret.is_empty());
        let decoded = connector
            .decode_webhook(
                ConnectionView {
                    id: &record.id,
                    settings: &record.settings,
                    signing_secret,
                },
                &InboundRequest {
                    method: request.method,
                    query: &request.query,
                    content_type: request.content_type,
                    body: request.body,
                    headers: &request.headers,
                    url: request.url.as_deref(),
                },
            )
            .map_err(|err| {
                if err.unauthenticated {
                    EngineError::Unauthorized(format!("{}: {}", err.field, err.message))
                } else {
                    EngineError::bad_request(err.field, err.message)
                }
            })?;
        if decoded.len() > self.config.max_events_per_delivery {
            return Err(EngineError::TooManyEvents {
                count: decoded.len(),
                limit: self.config.max_events_per_delivery,
            });
        }
        let single = decoded.len() == 1;
        Ok(decoded
            .into_iter()
            .enumerate()
            .map(|(index, decoded)| {
                let fallback = if single {
                    EventId::from_payload(&record.id, request.body)
                } else {
                    // A batch without ids: the element, not the whole body,
                    // identifies each event.
                    EventId::from_payload(
                        &record.id,
                        format!("{index}:{}", decoded.data).as_bytes(),
                    )
                };
                self.envelope_with(record, decoded, received_at, fallback)
            })
            .collect())
    }

    /// Wraps a decoded change in the event envelope.
    pub(crate) fn envelope(
        &self,
        record: &ConnectionRecord,
        decoded: DecodedEvent,
        received_at: DateTime<Utc>,
    ) -> Event {
        let fallback = EventId::from_payload(&record.id, decoded.data.to_string().as_bytes());
        self.envelope_with(record, decoded, received_at, fallback)
    }

    fn envelope_with(
        &self,
        record: &ConnectionRecord,
        decoded: DecodedEvent,
        received_at: DateTime<Utc>,
        fallback: EventId,
    ) -> Event {
        let id = match &decoded.source_id {
            Some(source_id) => EventId::from_source(&record.id, source_id),
            None => fallback,
        };
        let subject_id = if decoded.subject.id.is_empty() {
            id.to_string()
        } else {
            decoded.subject.id
        };
        Event {
            tenant: record.tenant.clone(),
            connection: record.id.clone(),
            app: record.app.clone(),
            kind: decoded.kind,
            subject: Subject {
                kind: decoded.subject.kind,
                id: subject_id,
            },
            occurred_at: decoded.occurred_at.unwrap_or(received_at),
            received_at,
            data: decoded.data,
            id,
        }
    }

    /// The webhook use case: authenticate, decode, accept, publish.
    pub async fn ingest_webhook(&self, request: WebhookRequest<'_>) -> EngineResult<Accepted> {
        let (record, secrets) = self
            .authenticate_hook(request.connection, request.token)
            .await?;
        let events = self.decode_events(&record, &secrets, &request, self.now())?;
        self.refuse_unbegun(&events).await?;
        let mut outcome = self.accept(events).await?;
        if let Some(connector) = self
            .connectors
            .get(&record.app)
            .and_then(|vendor| vendor.webhooks.as_ref())
        {
            outcome.ack_status = connector.ack_status();
            outcome.ack_body = connector
                .reply(&InboundRequest {
                    method: request.method,
                    query: &request.query,
                    content_type: request.content_type,
                    body: request.body,
                    headers: &request.headers,
                    url: request.url.as_deref(),
                })
                .or_else(|| connector.ack_body());
        }
        tracing::info!(
            tenant = %record.tenant,
            connection = %record.id,
            accepted = outcome.accepted.len(),
            duplicates = outcome.duplicates.len(),
            "webhook accepted"
        );
        Ok(outcome)
    }

    /// Records each event once and publishes the new ones. Shared by
    /// webhooks and pollers, so both de-duplicate the same way.
    ///
    /// A copy that arrives while an earlier copy is still being accepted
    /// (concurrent retries are common: vendors retry on their own clock)
    /// waits for that acceptance instead of publishing a second time; it
    /// takes the event over only when the first publisher is surely gone.
    /// If the wait runs out, the answer is 503 and the sender retries.
    pub async fn accept(&self, events: Vec<Event>) -> EngineResult<Accepted> {
        // One delivery comes from one connection: any event names its
        // tenant and app for the duplicate count.
        let origin = events.first().map(|e| (e.tenant.clone(), e.app.clone()));
        let (fresh, duplicates) = match self.bus.atomic_acceptance() {
            Some(atomic) => self.accept_atomically(atomic, events).await?,
            None => self.claim_and_publish(events).await?,
        };
        for event in &fresh {
            self.measure(Metric::EventsAccepted, &[&event.tenant, &event.app], 1.0);
        }
        if let Some((tenant, app)) = &origin
            && !duplicates.is_empty()
        {
            self.measure(
                Metric::EventsDuplicate,
                &[tenant, app],
                duplicates.len() as f64,
            );
        }
        Ok(Accepted {
            accepted: fresh.into_iter().map(|e| e.id).collect(),
            duplicates,
            ack_status: 202,
            ack_body: None,
        })
    }

    /// Acceptance on a bus that lives in the store's database (`serve`):
    /// each event's acceptance is inserted, and the event published, in
    /// one commit, so a copy either finds it published or publishes it;
    /// no copy waits and none is ever left pending. An acceptance left
    /// pending by the other way (a build before this one) goes that way.
    async fn accept_atomically(
        &self,
        atomic: &dyn crmbridge_bus::AtomicAcceptance,
        events: Vec<Event>,
    ) -> EngineResult<(Vec<Event>, Vec<EventId>)> {
        // A chat's messages get their places before any can be dispatched
        // (a copy's place is the one its first copy got).
        self.assign_turns(&events).await?;
        let mut entries = Vec::with_capacity(events.len());
        for event in &events {
            let acceptance = self.published_acceptance(event)?;
            entries.push((self.externalise(event).await?, acceptance));
        }
        let outcomes = atomic.publish_if_absent(entries).await?;
        let (mut fresh, mut duplicates, mut pending) = (Vec::new(), Vec::new(), Vec::new());
        for (event, outcome) in events.into_iter().zip(outcomes) {
            match outcome {
                PutOutcome::Inserted => fresh.push(event),
                PutOutcome::Exists(found)
                    if decode::<AcceptRecord>(&found)?.state == AcceptState::Published =>
                {
                    duplicates.push(event.id);
                }
                PutOutcome::Exists(_) => pending.push(event),
            }
        }
        if !pending.is_empty() {
            let (taken, seen) = self.claim_and_publish(pending).await?;
            fresh.extend(taken);
            duplicates.extend(seen);
        }
        Ok((fresh, duplicates))
    }

    /// Acceptance on a bus of its own (EventBridge): claim, publish, mark.
    async fn claim_and_publish(
        &self,
        events: Vec<Event>,
    ) -> EngineResult<(Vec<Event>, Vec<EventId>)> {
        let publisher = self.lease_owner();
        let mut fresh = Vec::new();
        let mut duplicates = Vec::new();
        let mut waiting = Vec::new();
        for event in events {
            match self.claim_acceptance(&event, &publisher).await? {
                Acceptance::Mine => fresh.push(event),
                Acceptance::Published => duplicates.push(event.id),
                Acceptance::InFlight => waiting.push(event),
            }
        }
        if !waiting.is_empty() {
            let deadline = tokio::time::Instant::now()
                + std::time::Duration::from_millis(self.config.accept_wait_ms);
            loop {
                let mut still = Vec::new();
                for event in waiting {
                    match self.claim_acceptance(&event, &publisher).await? {
                        Acceptance::Mine => fresh.push(event),
                        Acceptance::Published => duplicates.push(event.id),
                        Acceptance::InFlight => still.push(event),
                    }
                }
                waiting = still;
                if waiting.is_empty() || tokio::time::Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(ACCEPT_POLL).await;
            }
        }
        if !fresh.is_empty() {
            let published = self.publish_fresh(&fresh).await;
            if let Err(err) = published {
                // Give the acceptance back, so the sender's retry publishes
                // at once instead of waiting for it to go stale.
                for event in &fresh {
                    self.release_acceptance(event, &publisher).await;
                }
                return Err(err);
            }
        }
        if let Some(first) = waiting.first() {
            return Err(EngineError::InProgress(format!(
                "event {} is being accepted by another request; retry shortly",
                first.id
            )));
        }
        Ok((fresh, duplicates))
    }

    async fn publish_fresh(&self, fresh: &[Event]) -> EngineResult<()> {
        // A chat's messages get their places before any can be dispatched.
        self.assign_turns(fresh).await?;
        let mut travelling = Vec::with_capacity(fresh.len());
        for event in fresh {
            travelling.push(self.externalise(event).await?);
        }
        self.bus.publish(&travelling).await?;
        for event in fresh {
            let marked = self.published_acceptance(event);
            // Failing here is safe: the record stays pending, a duplicate
            // takes it over once it is stale, and dispatch runs each
            // automation once however often the event is published.
            if let Err(err) = match marked {
                Ok(i) => self.store.put(i).await.map_err(EngineError::from),
                Err(err) => Err(err),
            } {
                tracing::warn!(event_id = %event.id, error = %err, "could not mark event published");
            }
        }
        Ok(())
    }

    /// The acceptance of an event that is on the bus.
    fn published_acceptance(&self, event: &Event) -> EngineResult<crmbridge_store::Item> {
        let record = AcceptRecord {
            state: AcceptState::Published,
            connection: event.connection.clone(),
            accepted_at: event.received_at,
            publisher: None,
            publishing_since: None,
        };
        let expires = event.received_at.timestamp() + self.config.idempotency_ttl_secs;
        Ok(item(keys::event_accept(event.id.as_str()), &record)?.expiring_at(expires))
    }

    /// Makes `publisher` the one that publishes `event`, unless the event is
    /// published already or another live publisher has it.
    async fn claim_acceptance(&self, event: &Event, publisher: &str) -> EngineResult<Acceptance> {
        let key = keys::event_accept(event.id.as_str());
        let now = self.now();
        let mine = AcceptRecord {
            state: AcceptState::Pending,
            connection: event.connection.clone(),
            accepted_at: event.received_at,
            publisher: Some(publisher.to_owned()),
            publishing_since: Some(now),
        };
        let expires = event.received_at.timestamp() + self.config.idempotency_ttl_secs;
        let existing = match self
            .store
            .put_if_absent(item(key.clone(), &mine)?.expiring_at(expires))
            .await?
        {
            PutOutcome::Inserted => return Ok(Acceptance::Mine),
            PutOutcome::Exists(existing) => existing,
        };
        let found = decode::<AcceptRecord>(&existing)?;
        if found.state == AcceptState::Published {
            return Ok(Acceptance::Published);
        }
        if found.publisher.as_deref() == Some(publisher) {
            return Ok(Acceptance::Mine);
        }
        let since = found.publishing_since.unwrap_or(found.accepted_at);
        let stale = (now - since).num_seconds() >= self.config.accept_stale_secs;
        let holder_gone = found
            .publisher
            .as_deref()
            .is_none_or(|holder| !self.holder_may_live(holder));
        if !(stale || holder_gone) {
            return Ok(Acceptance::InFlight);
        }
        let takeover = AcceptRecord {
            accepted_at: found.accepted_at,
            ..mine
        };
        match self
            .store
            .update_if_version(item(key, &takeover)?.expiring_at(expires), existing.version)
            .await
        {
            Ok(_) => {
                tracing::info!(event_id = %event.id, "publishing an event whose earlier acceptance was abandoned");
                Ok(Acceptance::Mine)
            }
            // Another copy took it over first.
            Err(StoreError::Conflict { .. }) => Ok(Acceptance::InFlight),
            Err(err) => Err(err.into()),
        }
    }

    /// Deletes our pending acceptance after a failed publish (best effort:
    /// if it stays, it goes stale and is taken over).
    async fn release_acceptance(&self, event: &Event, publisher: &str) {
        let key = keys::event_accept(event.id.as_str());
        if let Ok(Some(existing)) = self.store.get(&key.pk, &key.sk).await
            && let Ok(found) = decode::<AcceptRecord>(&existing)
            && found.state == AcceptState::Pending
            && found.publisher.as_deref() == Some(publisher)
            && let Err(err) = self.store.delete(&key.pk, &key.sk).await
        {
            tracing::warn!(event_id = %event.id, error = %err, "could not release a pending acceptance");
        }
    }
}

/// How often a duplicate looks at an acceptance in flight.
const ACCEPT_POLL: std::time::Duration = std::time::Duration::from_millis(20);

enum Acceptance {
    /// This request publishes the event.
    Mine,
    /// It is on the bus already.
    Published,
    /// Another live request is publishing it.
    InFlight,
}

pub fn secrets_aad(connection: &str) -> String {
    format!("crmbridge:connection:{connection}")
}

/// What a chat delivery produced: chat relays are synchronous, so the runs
/// are done by the time the caller is answered.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatHandled {
    pub runs: Vec<crate::records::RunSummary>,
    pub duplicates: Vec<EventId>,
}

impl Engine {
    /// The chat use case: like a webhook, but dispatched inline instead of
    /// through the bus, because the chat's sender waits for the relay.
    pub async fn ingest_chat(&self, request: WebhookRequest<'_>) -> EngineResult<ChatHandled> {
        let (record, secrets) = self
            .authenticate_hook(request.connection, request.token)
            .await?;
        let events = self.decode_events(&record, &secrets, &request, self.now())?;
        let mut handled = ChatHandled {
            runs: Vec::new(),
            duplicates: Vec::new(),
        };
        for event in events {
            let key = keys::event_accept(event.id.as_str());
            let expires = event.received_at.timestamp() + self.config.idempotency_ttl_secs;
            let pending = AcceptRecord {
                state: AcceptState::Pending,
                connection: event.connection.clone(),
                accepted_at: event.received_at,
                publisher: None,
                publishing_since: None,
            };
            let outcome = self
                .store
                .put_if_absent(item(key.clone(), &pending)?.expiring_at(expires))
                .await?;
            if let PutOutcome::Exists(existing) = outcome
                && decode::<AcceptRecord>(&existing)?.state == AcceptState::Published
            {
                handled.duplicates.push(event.id);
                continue;
            }
            let dispatched = self.dispatch(event).await?;
            handled.runs.extend(dispatched.runs);
            let done = AcceptRecord {
                state: AcceptState::Published,
                ..pending
            };
            self.store
                .put(item(key, &done)?.expiring_at(expires))
                .await?;
        }
        Ok(handled)
    }
}
