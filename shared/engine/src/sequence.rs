//! A chat's messages, one after another. Events a connector puts in a
//! sequence ([`EventSource::sequence_key`]: the chat) get a number when
//! they are accepted, in the order they came, and are dispatched in that
//! order: a message whose predecessor has not finished is *parked* (kept
//! with the chat's order, not retried against the bus's backoff), and the
//! predecessor, once finished — succeeded, failed for good or
//! dead-lettered — publishes it again. A failed delivery therefore shows
//! on its run and lets the chat go on; it never holds it forever, and a
//! message never overtakes one before it.
//!
//! Both sides meet on one versioned item per chat (`done`, `parked`), so a
//! message parking as its predecessor finishes cannot be missed: one of
//! the two writes loses the version race and looks again. The
//! predecessor publishes the parked message *before* it records itself
//! done: a crash between the two repeats the publish (dispatch is
//! idempotent), never loses it.
//!
//! [`EventSource::sequence_key`]: crmbridge_connectors::EventSource::sequence_key

use std::collections::BTreeMap;

use crmbridge_mapping::Event;
use crmbridge_store::{StoreError, Write};
use serde::{Deserialize, Serialize};

use crate::{Engine, EngineError, EngineResult, FieldError, decode, item, keys};

/// Attempts at a versioned write before giving up for now (the bus tries
/// the event again).
const RACES: usize = 20;

/// One chat's order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ChatOrder {
    /// The last number given out.
    assigned: u64,
    /// Every message up to this one has finished.
    done: u64,
    /// Messages waiting for their turn: number → event id.
    #[serde(default)]
    parked: BTreeMap<u64, String>,
}

/// An event's place in its chat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Turn {
    chat: String,
    n: u64,
}

/// Whether an event may be dispatched now.
pub(crate) enum Gate {
    /// Not in a sequence (or accepted before sequences existed).
    Free,
    /// Its turn: dispatch, then [`Engine::finish_turn`].
    Go(Turn),
    /// Parked behind an earlier message of its chat.
    Parked,
}

impl Engine {
    fn sequence_of(&self, event: &Event) -> Option<String> {
        self.event_source(&event.app)
            .and_then(|source| source.sequence_key(event))
    }

    /// Refuses a delivery with an event that continues a chat no message
    /// of which was ever accepted (a rating of a chat that never began):
    /// 422 naming the field, and nothing of the delivery is accepted. A
    /// chat's first message earlier in the same delivery counts.
    pub(crate) async fn refuse_unbegun(&self, events: &[Event]) -> EngineResult<()> {
        let mut problems = Vec::new();
        for (index, event) in events.iter().enumerate() {
            let Some((chat, field)) = self
                .event_source(&event.app)
                .and_then(|source| source.continues_sequence(event))
            else {
                continue;
            };
            if events[..index]
                .iter()
                .any(|earlier| self.sequence_of(earlier).as_deref() == Some(chat.as_str()))
            {
                continue;
            }
            let key = keys::sequence(&event.connection, &chat);
            if self.store.get(&key.pk, &key.sk).await?.is_none() {
                let at = if events.len() > 1 {
                    format!("body[{index}].{field}")
                } else {
                    format!("body.{field}")
                };
                problems.push(FieldError {
                    field: at,
                    message: format!(
                        "no chat {chat:?} has begun on this connection: its first message was never received"
                    ),
                });
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(EngineError::Invalid(problems))
        }
    }

    /// Numbers the events of a delivery that belong to a chat, in order.
    /// A redelivered event keeps its number.
    pub(crate) async fn assign_turns(&self, events: &[Event]) -> EngineResult<()> {
        for event in events {
            let Some(chat) = self.sequence_of(event) else {
                continue;
            };
            let turn_key = keys::event_turn(event.id.as_str());
            if self.store.get(&turn_key.pk, &turn_key.sk).await?.is_some() {
                continue;
            }
            let order_key = keys::sequence(&event.connection, &chat);
            let expires = event.received_at.timestamp() + self.config.idempotency_ttl_secs;
            let mut assigned = false;
            for _ in 0..RACES {
                let found = self.store.get(&order_key.pk, &order_key.sk).await?;
                let (mut order, version) = match &found {
                    Some(existing) => (decode::<ChatOrder>(existing)?, Some(existing.version)),
                    None => (ChatOrder::default(), None),
                };
                order.assigned += 1;
                let turn = Turn {
                    chat: chat.clone(),
                    n: order.assigned,
                };
                let order_write = match version {
                    Some(expected) => Write::UpdateIfVersion {
                        item: item(order_key.clone(), &order)?,
                        expected,
                    },
                    None => Write::PutIfAbsent(item(order_key.clone(), &order)?),
                };
                let turn_write =
                    Write::PutIfAbsent(item(turn_key.clone(), &turn)?.expiring_at(expires));
                match self.store.transact(vec![order_write, turn_write]).await {
                    Ok(()) => {
                        assigned = true;
                        break;
                    }
                    // The same event numbered by a concurrent delivery.
                    Err(StoreError::TransactionConflict { index: 1, .. }) => {
                        assigned = true;
                        break;
                    }
                    Err(StoreError::TransactionConflict { .. }) => continue,
                    Err(err) => return Err(err.into()),
                }
            }
            if !assigned {
                return Err(EngineError::InProgress(format!(
                    "the order of chat {chat} kept changing; retry shortly"
                )));
            }
        }
        Ok(())
    }

    /// Whether `event` may run now; parks it behind its predecessor if not.
    pub(crate) async fn take_turn(&self, event: &Event) -> EngineResult<Gate> {
        if self.sequence_of(event).is_none() {
            return Ok(Gate::Free);
        }
        let Some((turn, _)) = self
            .read::<Turn>(&keys::event_turn(event.id.as_str()))
            .await?
        else {
            return Ok(Gate::Free);
        };
        let order_key = keys::sequence(&event.connection, &turn.chat);
        let expires = event.received_at.timestamp() + self.config.idempotency_ttl_secs;
        for _ in 0..RACES {
            let Some(found) = self.store.get(&order_key.pk, &order_key.sk).await? else {
                return Ok(Gate::Go(turn));
            };
            let mut order: ChatOrder = decode(&found)?;
            if order.done + 1 >= turn.n {
                return Ok(Gate::Go(turn));
            }
            // Kept first, so whoever wakes it finds it.
            self.store
                .put(item(keys::parked_event(event.id.as_str()), event)?.expiring_at(expires))
                .await?;
            order.parked.insert(turn.n, event.id.as_str().to_owned());
            match self
                .store
                .update_if_version(item(order_key.clone(), &order)?, found.version)
                .await
            {
                Ok(_) => {
                    tracing::info!(chat = %turn.chat, n = turn.n, done = order.done, "waiting for the chat's earlier message");
                    return Ok(Gate::Parked);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(EngineError::InProgress(format!(
            "the order of chat {} kept changing; retry shortly",
            turn.chat
        )))
    }

    /// Records a message as finished and sends on the one waiting after it.
    pub(crate) async fn finish_turn(&self, connection: &str, turn: &Turn) -> EngineResult<()> {
        let order_key = keys::sequence(connection, &turn.chat);
        for _ in 0..RACES {
            let Some(found) = self.store.get(&order_key.pk, &order_key.sk).await? else {
                return Ok(());
            };
            let mut order: ChatOrder = decode(&found)?;
            if order.done >= turn.n && !order.parked.contains_key(&(turn.n + 1)) {
                return Ok(());
            }
            order.done = order.done.max(turn.n);
            if let Some(next) = order.parked.remove(&(turn.n + 1)) {
                self.wake(&next).await?;
            }
            match self
                .store
                .update_if_version(item(order_key.clone(), &order)?, found.version)
                .await
            {
                Ok(_) => return Ok(()),
                Err(StoreError::Conflict { .. }) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(EngineError::InProgress(format!(
            "the order of chat {} kept changing; retry shortly",
            turn.chat
        )))
    }

    /// Publishes a parked event again.
    async fn wake(&self, event_id: &str) -> EngineResult<()> {
        let Some((event, _)) = self.read::<Event>(&keys::parked_event(event_id)).await? else {
            tracing::warn!(
                event_id,
                "a parked message is gone (expired); the chat goes on without it"
            );
            return Ok(());
        };
        self.bus.publish(std::slice::from_ref(&event)).await?;
        Ok(())
    }

    /// The event's turn, if it has one (for a dead letter).
    pub(crate) async fn turn_of(&self, event: &Event) -> EngineResult<Option<Turn>> {
        if self.sequence_of(event).is_none() {
            return Ok(None);
        }
        Ok(self
            .read::<Turn>(&keys::event_turn(event.id.as_str()))
            .await?
            .map(|(turn, _)| turn))
    }
}
