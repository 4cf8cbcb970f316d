//! The tick Lambda: invoked by the 5-minute EventBridge schedule. It finds
//! the sources that must be polled and fans one poll request per source out
//! on the bus, then records the tick.

use std::sync::Arc;

use aws_lambda_events::eventbridge::EventBridgeEvent;
use crmbridge_engine::Engine;
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::{Value, json};

async fn handle(
    engine: &Engine,
    event: LambdaEvent<EventBridgeEvent<Value>>,
) -> Result<Value, lambda_runtime::Error> {
    if let Err(reason) =
        crmbridge_engine::tick::check_schedule(&event.payload.source, &event.payload.detail_type)
    {
        tracing::warn!(reason, "tick invoked by another event");
        return Ok(json!({ "ignored": reason }));
    }
    // The schedule's own time, so a redelivered tick is the same tick.
    let started_at = event
        .payload
        .time
        .ok_or("the scheduled event has no 'time'")?;
    let record = engine.tick(started_at).await?;
    Ok(json!({ "sources": record.sources, "published": record.published }))
}

// Lambda gives an environment one event at a time: worker threads would
// only lengthen the cold start.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    crmbridge_runtime::init_lambda_tracing();
    let (engine, _settings): (Arc<Engine>, _) = crmbridge_runtime::aws_engine().await?;
    lambda_runtime::run(service_fn(|event| {
        let engine = Arc::clone(&engine);
        async move { handle(&engine, event).await }
    }))
    .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn the_sample_schedule_event_runs_a_tick() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = Arc::new(crmbridge_store::SqliteStore::open(&path).unwrap());
        let engine = Engine::new(
            store.clone(),
            Arc::new(
                crmbridge_bus::OutboxBus::open_on(store.writer(), &path, Default::default())
                    .unwrap(),
            ),
            crmbridge_connectors::Registry::builtin(),
            crmbridge_engine::Keyring::parse(&crmbridge_engine::Keyring::generate_spec("t"))
                .unwrap(),
            Default::default(),
        );
        use crmbridge_store::Store;
        store
            .put(crmbridge_store::Item::new(
                "POLL",
                "con_1#retailcrm.order.changed",
                json!({"tenant": "ten_1", "connection": "con_1", "kind": "retailcrm.order.changed"}),
            ))
            .await
            .unwrap();
        let sample = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../events/tick.json"
        ))
        .unwrap();
        let payload: EventBridgeEvent<Value> = serde_json::from_str(&sample).unwrap();
        assert_eq!(payload.detail_type, "Scheduled Event");
        let reply = handle(&engine, LambdaEvent::new(payload, Default::default()))
            .await
            .unwrap();
        assert_eq!(
            reply,
            json!({"sources": ["con_1#retailcrm.order.changed"], "published": 1})
        );
        // Anything but the schedule is ignored: no tick, no poll request.
        let mut other: EventBridgeEvent<Value> = serde_json::from_str(&sample).unwrap();
        other.source = "crmbridge".into();
        other.detail_type = "crmbridge.poll.requested".into();
        let reply = handle(&engine, LambdaEvent::new(other, Default::default()))
            .await
            .unwrap();
        assert!(
            reply["ignored"]
                .as_str()
                .unwrap()
                .contains("not the schedule"),
            "{reply}"
        );
        use crmbridge_store::Query;
        let ticks = store
            .query(Query::prefix("TICK".to_owned(), ""))
            .await
            .unwrap();
        assert_eq!(ticks.items.len(), 1, "only the scheduled tick was recorded");
    }
}
