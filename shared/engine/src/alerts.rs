//! Alerts: telling a tenant's people that something needs them, without
//! ever holding up the pipeline.
//!
//! A *cause* (runs of an automation failing, an automation halted, a
//! connection's credentials refused or its grant needing reauthorization,
//! a poll source failing) has one versioned item per subject. The first
//! occurrence opens it and announces `alert.opened`; later occurrences
//! change nothing until it clears, which announces `alert.resolved`. Two
//! workers raising the same cause race on a conditional write: one opens
//! it, the other sees it open.
//!
//! Announcing puts one delivery per destination on the bus under an id
//! derived from the message, so announcing twice (a process that died
//! before marking the alert announced) publishes once. Each delivery is
//! signed per the Standard Webhooks specification with every live secret
//! of its destination and retried by the bus with backoff; a destination
//! that fails or hangs costs its own delivery's attempts, never a run's.
//! Raising and resolving are called where a run or poll already ended and
//! their failures are logged, not returned: an alert can be lost to a store
//! outage, a run never fails because of one.

use std::time::Duration;

use chrono::{DateTime, Utc};
use crmbridge_connectors::client::{Idempotency, RetryHeader, VendorPolicy, VendorRequest};
use crmbridge_connectors::standard_webhooks::{SigningSecret, signature_headers};
use crmbridge_mapping::{Event, EventId, Subject};
use crmbridge_state::records::{
    AlertCause, AlertDestinationRecord, AlertRecord, AlertSecret, AlertSendOutcome, AlertStatus,
};
use crmbridge_store::{PutOutcome, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::dispatch::Dispatched;
use crate::{Engine, EngineError, EngineResult, decode, item, keys, random_id};

/// The bus event that carries one alert message to one destination.
pub const ALERT_DELIVERY: &str = "crmbridge.alert.delivery";

/// How long one delivery attempt may take before the bus retries it later.
pub const ALERT_TIMEOUT: Duration = Duration::from_secs(10);

/// Alert deliveries one process makes at once: a hung receiver holds one
/// worker at most, the others stay with the runs.
pub const ALERT_SLOTS: usize = 1;

/// Deliveries an alert message may take on a bus whose own budget is
/// shorter (the local outbox: 8, about a minute): with backoff capped at
/// five minutes, about two hours of a receiver being down.
pub const ALERT_DELIVERY_ATTEMPTS: u32 = 30;

/// The delivery budget of a bus event, when it is an alert message.
pub fn delivery_attempts(event: &Event) -> Option<u32> {
    (event.kind == ALERT_DELIVERY).then_some(ALERT_DELIVERY_ATTEMPTS)
}

/// Detail kept from the occurrence that opened an alert.
const MAX_DETAIL_CHARS: usize = 500;

/// What the bus carries for one delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeliveryRequest {
    destination: String,
    /// The Standard Webhooks message id (`webhook-id`): the same on every
    /// attempt, so a receiver can drop a repeat.
    message_id: String,
    message: Value,
}

/// The additional data bound into a destination's sealed secrets.
pub fn alert_secrets_aad(destination: &str) -> String {
    format!("alert-destination:{destination}")
}

/// The message announcing an alert's current status: its id and body.
/// Ids and timestamps are those of the status change, so every attempt of
/// one announcement carries the same body.
pub fn alert_message(alert: &AlertRecord) -> (String, Value) {
    let (kind, id, at) = match alert.status {
        AlertStatus::Open => ("alert.opened", alert.id.clone(), alert.opened_at),
        AlertStatus::Resolved => (
            "alert.resolved",
            format!("{}_resolved", alert.id),
            alert.resolved_at.unwrap_or(alert.opened_at),
        ),
    };
    let message = json!({
        "type": kind,
        "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": {
            "alert_id": alert.id,
            "tenant": alert.tenant,
            "cause": alert.cause,
            "subject": alert.subject,
            "status": alert.status,
            "detail": alert.detail,
            "opened_at": alert.opened_at,
            "resolved_at": alert.resolved_at,
        },
    });
    (id, message)
}

fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

impl Engine {
    /// Opens the alert for `cause` on `subject` unless it is open already.
    /// Never fails: an error is logged (see the module docs).
    pub async fn raise_alert(&self, tenant: &str, cause: AlertCause, subject: &str, detail: &str) {
        if let Err(err) = self.try_raise_alert(tenant, cause, subject, detail).await {
            tracing::warn!(tenant, cause = cause.as_str(), subject, error = %err, "could not raise an alert");
        }
    }

    /// Resolves the alert for `cause` on `subject` if one is open. Never
    /// fails: an error is logged.
    pub async fn resolve_alert(&self, tenant: &str, cause: AlertCause, subject: &str) {
        if let Err(err) = self.try_resolve_alert(tenant, cause, subject).await {
            tracing::warn!(tenant, cause = cause.as_str(), subject, error = %err, "could not resolve an alert");
        }
    }

    async fn try_raise_alert(
        &self,
        tenant: &str,
        cause: AlertCause,
        subject: &str,
        detail: &str,
    ) -> EngineResult<()> {
        let key = keys::alert(tenant, cause.as_str(), subject);
        for _ in 0..5 {
            let found = self.read::<AlertRecord>(&key).await?;
            if let Some((alert, version)) = &found
                && alert.status == AlertStatus::Open
            {
                if self.abandoned(alert) {
                    self.announce(alert, *version).await?;
                }
                return Ok(());
            }
            if let Some((previous, version)) = &found
                && self.abandoned(previous)
            {
                // Its resolution was never announced: announce it first.
                self.announce(previous, *version).await?;
                continue;
            }
            let alert = AlertRecord {
                id: random_id("alr"),
                tenant: tenant.to_owned(),
                cause,
                subject: subject.to_owned(),
                status: AlertStatus::Open,
                detail: truncate_chars(detail, MAX_DETAIL_CHARS),
                opened_at: self.now(),
                resolved_at: None,
                announced: false,
            };
            let written = match found {
                None => match self.store.put_if_absent(item(key.clone(), &alert)?).await? {
                    PutOutcome::Inserted => Some(1),
                    PutOutcome::Exists(_) => None,
                },
                Some((_, version)) => self.write_alert(&key, &alert, version).await?,
            };
            if let Some(version) = written {
                tracing::warn!(tenant, cause = cause.as_str(), subject, alert = %alert.id, detail, "alert opened");
                return self.announce(&alert, version).await;
            }
        }
        Ok(())
    }

    async fn try_resolve_alert(
        &self,
        tenant: &str,
        cause: AlertCause,
        subject: &str,
    ) -> EngineResult<()> {
        let key = keys::alert(tenant, cause.as_str(), subject);
        for _ in 0..5 {
            let Some((mut alert, version)) = self.read::<AlertRecord>(&key).await? else {
                return Ok(());
            };
            if alert.status != AlertStatus::Open {
                if self.abandoned(&alert) {
                    self.announce(&alert, version).await?;
                }
                return Ok(());
            }
            alert.status = AlertStatus::Resolved;
            alert.resolved_at = Some(self.now());
            alert.announced = false;
            if let Some(version) = self.write_alert(&key, &alert, version).await? {
                tracing::info!(tenant, cause = cause.as_str(), subject, alert = %alert.id, "alert resolved");
                return self.announce(&alert, version).await;
            }
        }
        Ok(())
    }

    /// Whether an alert's current status went unannounced for longer than
    /// an announcement takes: the process that changed it died first.
    /// Announcing it again publishes under the same ids; a younger one is
    /// left to the process announcing it now.
    fn abandoned(&self, alert: &AlertRecord) -> bool {
        let changed = alert.resolved_at.unwrap_or(alert.opened_at);
        !alert.announced
            && self.now() - changed > chrono::Duration::seconds(self.config.accept_stale_secs)
    }

    /// A conditional write of an alert: `None` when another worker changed
    /// it first.
    async fn write_alert(
        &self,
        key: &keys::Key,
        alert: &AlertRecord,
        version: u64,
    ) -> EngineResult<Option<u64>> {
        match self
            .store
            .update_if_version(item(key.clone(), alert)?, version)
            .await
        {
            Ok(version) => Ok(Some(version)),
            Err(StoreError::Conflict { .. }) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// Puts the alert's current message on the bus for every destination
    /// of its tenant, then marks it announced.
    async fn announce(&self, alert: &AlertRecord, version: u64) -> EngineResult<()> {
        let (message_id, message) = alert_message(alert);
        let now = self.now();
        let mut deliveries = Vec::new();
        for destination in self.alert_destinations(&alert.tenant).await? {
            let request = DeliveryRequest {
                destination: destination.id.clone(),
                message_id: message_id.clone(),
                message: message.clone(),
            };
            deliveries.push(Event {
                id: EventId::from_source(&destination.id, &format!("alert:{message_id}")),
                tenant: alert.tenant.clone(),
                connection: destination.id.clone(),
                app: "crmbridge".into(),
                kind: ALERT_DELIVERY.into(),
                subject: Subject {
                    kind: "alert".into(),
                    id: alert.id.clone(),
                },
                occurred_at: now,
                received_at: now,
                data: serde_json::to_value(&request).map_err(|err| EngineError::Corrupt {
                    what: format!("delivery of alert {}", alert.id),
                    message: err.to_string(),
                })?,
            });
        }
        if !deliveries.is_empty() {
            self.accept(deliveries).await?;
        }
        let announced = AlertRecord {
            announced: true,
            ..alert.clone()
        };
        let key = keys::alert(&alert.tenant, alert.cause.as_str(), &alert.subject);
        // A conflict means the alert moved on (resolved, or opened anew):
        // whoever moved it announces that.
        self.write_alert(&key, &announced, version).await?;
        Ok(())
    }

    /// The tenant's alert destinations.
    pub async fn alert_destinations(
        &self,
        tenant: &str,
    ) -> EngineResult<Vec<AlertDestinationRecord>> {
        let (pk, prefix) = keys::tenant_alert_destinations(tenant);
        self.query_all(&pk, prefix)
            .await?
            .iter()
            .map(decode)
            .collect()
    }

    /// The tenant's alerts, open and resolved, by cause and subject.
    pub async fn alerts(&self, tenant: &str) -> EngineResult<Vec<AlertRecord>> {
        let (pk, prefix) = keys::tenant_alerts(tenant);
        self.query_all(&pk, prefix)
            .await?
            .iter()
            .map(decode)
            .collect()
    }

    /// The signing secrets of a destination still in use at `now`, newest
    /// first.
    pub fn alert_secrets(
        &self,
        destination: &AlertDestinationRecord,
    ) -> EngineResult<Vec<AlertSecret>> {
        let plain = self
            .keyring
            .open(
                &destination.secrets,
                alert_secrets_aad(&destination.id).as_bytes(),
            )
            .map_err(|source| EngineError::Sealed {
                connection: destination.id.clone(),
                source,
            })?;
        serde_json::from_slice(&plain).map_err(|err| EngineError::Corrupt {
            what: format!("alert destination {} secrets", destination.id),
            message: err.to_string(),
        })
    }

    /// Seals a destination's secrets.
    pub fn seal_alert_secrets(
        &self,
        destination: &str,
        secrets: &[AlertSecret],
    ) -> EngineResult<String> {
        let plain = serde_json::to_vec(secrets).map_err(|err| EngineError::Corrupt {
            what: format!("alert destination {destination} secrets"),
            message: err.to_string(),
        })?;
        Ok(self
            .keyring
            .seal(&plain, alert_secrets_aad(destination).as_bytes()))
    }

    /// Sends one message to one destination, signed with each of its live
    /// secrets; one attempt, bounded by [`ALERT_TIMEOUT`].
    pub async fn send_alert(
        &self,
        destination: &AlertDestinationRecord,
        message_id: &str,
        message: &Value,
    ) -> EngineResult<AlertSendOutcome> {
        let now = self.now();
        let secrets = self
            .alert_secrets(destination)?
            .into_iter()
            .filter(|s| s.retires_at.is_none_or(|at| at > now))
            .map(|s| SigningSecret::parse(&s.secret))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| EngineError::Corrupt {
                what: format!("alert destination {} secrets", destination.id),
                message: err.to_string(),
            })?;
        let body = serde_json::to_vec(message).map_err(|err| EngineError::Corrupt {
            what: format!("alert message {message_id}"),
            message: err.to_string(),
        })?;
        let mut request = VendorRequest::with_body(
            reqwest::Method::POST,
            destination.url.clone(),
            body.clone(),
            Idempotency::Idempotent,
        )
        .header("content-type", "application/json")
        .header("user-agent", "crmbridge-alerts")
        // The URL was checked when it was saved; the address its name
        // resolves to now is checked as the alert is sent.
        .public_only(!self.config.allow_any_base_url);
        for (name, value) in signature_headers(&secrets, message_id, now.timestamp(), &body) {
            request = request.header(name, value);
        }
        let policy = VendorPolicy {
            timeout: ALERT_TIMEOUT,
            max_attempts: 1,
            retry_header: RetryHeader::RetryAfterSeconds,
            ..VendorPolicy::new("alerts", 10, Duration::from_secs(1), 1)
        };
        // A destination URL may carry a token (in its path or query): the
        // transport's errors name the URL, so it is taken out of them.
        let shown_url = url::Url::parse(&destination.url)
            .map(|u| u.to_string())
            .unwrap_or_default();
        let hidden = [destination.url.as_str(), shown_url.as_str()];
        let outcome = match self
            .alert_http
            .send(&destination.id, &policy, &request, &hidden)
            .await
        {
            Ok(response) if response.is_success() => AlertSendOutcome {
                status: Some(response.status),
                delivered: true,
                error: None,
                message_id: message_id.to_owned(),
            },
            // A redirect is not followed (it could lead inward), and the
            // body of a refusal is not repeated: the status says enough.
            Ok(response) => AlertSendOutcome {
                status: Some(response.status),
                delivered: false,
                error: Some(format!(
                    "the receiver answered {} (2xx expected; redirects are not followed)",
                    response.status
                )),
                message_id: message_id.to_owned(),
            },
            Err(err) => AlertSendOutcome {
                status: None,
                delivered: false,
                error: Some(err.to_string()),
                message_id: message_id.to_owned(),
            },
        };
        Ok(outcome)
    }

    /// Delivers one alert message taken off the bus; an error has the bus
    /// try again later.
    pub(crate) async fn deliver_alert(&self, event: &Event) -> EngineResult<Dispatched> {
        let request: DeliveryRequest =
            serde_json::from_value(event.data.clone()).map_err(|err| EngineError::Corrupt {
                what: format!("alert delivery {}", event.id),
                message: err.to_string(),
            })?;
        let key = keys::alert_destination(&event.tenant, &request.destination);
        let Some((destination, _)) = self.read::<AlertDestinationRecord>(&key).await? else {
            tracing::info!(destination = %request.destination, message = %request.message_id, "the alert destination was deleted; not delivered");
            return Ok(Dispatched::nothing());
        };
        // A hung receiver holds the slot, one worker at most: a delivery
        // that finds it taken comes back later (a retry of the bus).
        let Ok(_slot) = self.alert_slots.try_acquire() else {
            return Err(EngineError::Action {
                what: format!("alert {} to {}", request.message_id, destination.id),
                transient: true,
                message: "another alert delivery is in flight; retrying later".into(),
            });
        };
        let outcome = self
            .send_alert(&destination, &request.message_id, &request.message)
            .await?;
        if outcome.delivered {
            tracing::info!(destination = %destination.id, message = %request.message_id, "alert delivered");
            return Ok(Dispatched::nothing());
        }
        Err(EngineError::Action {
            what: format!("alert {} to {}", request.message_id, destination.id),
            transient: true,
            message: outcome.error.unwrap_or_default(),
        })
    }
}

/// When a destination's replaced secret stops signing.
pub fn secret_retirement(now: DateTime<Utc>) -> DateTime<Utc> {
    now + chrono::Duration::hours(24)
}
