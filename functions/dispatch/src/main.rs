//! The dispatch Lambda: invoked by the EventBridge rule for every event on
//! the bus (`source = crmbridge`); the entry's detail is our event envelope.
//!
//! An error is returned (not swallowed) when dispatch fails, so Lambda's
//! asynchronous retries and then the dead-letter queue take over; dispatch
//! is idempotent, so a retry never doubles a run.

use std::sync::Arc;

use aws_lambda_events::eventbridge::EventBridgeEvent;
use crmbridge_engine::Engine;
use crmbridge_mapping::Event;
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::{Value, json};

async fn handle(
    engine: &Engine,
    event: LambdaEvent<EventBridgeEvent<Event>>,
) -> Result<Value, lambda_runtime::Error> {
    let dispatched = engine.dispatch(event.payload.detail).await?;
    Ok(json!({ "runs": dispatched.runs, "duplicate": dispatched.duplicate }))
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
    async fn the_sample_event_is_dispatched_into_one_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = crmbridge_store::SqliteStore::open(&path).unwrap();
        let engine = Engine::new(
            Arc::new(store.clone()),
            Arc::new(
                crmbridge_bus::OutboxBus::open_on(store.writer(), &path, Default::default())
                    .unwrap(),
            ),
            crmbridge_connectors::Registry::builtin(),
            crmbridge_engine::Keyring::parse(&crmbridge_engine::Keyring::generate_spec("t"))
                .unwrap(),
            Default::default(),
        );
        let sample = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../events/dispatch.json"
        ))
        .unwrap();
        let payload: EventBridgeEvent<Event> = serde_json::from_str(&sample).unwrap();
        assert_eq!(payload.source, "crmbridge");
        let event = LambdaEvent::new(payload, Default::default());
        let reply = handle(&engine, event.clone()).await.unwrap();
        assert_eq!(reply["duplicate"], false);
        assert_eq!(reply["runs"][0]["status"], "no_match");
        let again = handle(&engine, event).await.unwrap();
        assert_eq!(again["duplicate"], true);
    }
}
