//! Bus tests: the embedded outbox (durability, retries, dead letters) and
//! EventBridge on moto server, where a rule routes our events to an SQS queue
//! and the test reads them back as dispatch would receive them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use crmbridge_bus::{
    Bus, EventBridgeBus, EventHandler, HandlerError, OutboxBus, OutboxConfig, SOURCE,
};
use crmbridge_mapping::{Event, EventId, Subject};
use serde_json::json;
use tokio::sync::{mpsc, watch};

fn event(n: usize) -> Event {
    Event {
        id: EventId::from_source("conn-1", &format!("call-{n}")),
        tenant: "tenant-1".into(),
        connection: "conn-1".into(),
        app: "generic".into(),
        kind: "generic.call.completed".into(),
        subject: Subject {
            kind: "call".into(),
            id: format!("call-{n}"),
        },
        occurred_at: chrono::DateTime::from_timestamp(1_700_000_000 + n as i64, 0).unwrap(),
        received_at: chrono::DateTime::from_timestamp(1_700_000_100, 0).unwrap(),
        data: json!({"n": n, "phone": "+7 (912) 345-67-89", "name": "Звонок №{n}", "tags": ["a", "b"]}),
    }
}

fn fast_config() -> OutboxConfig {
    OutboxConfig {
        workers: 3,
        max_attempts: 3,
        base_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(40),
        lease: Duration::from_secs(30),
        poll_interval: Duration::from_millis(20),
    }
}

/// Forwards every delivered event to the test; fails the first `failures`
/// deliveries of each event.
struct Recorder {
    tx: mpsc::UnboundedSender<Event>,
    failures: u32,
    attempts: Arc<AtomicU32>,
}

#[async_trait]
impl EventHandler for Recorder {
    async fn handle(&self, event: Event) -> Result<(), HandlerError> {
        let attempt = self.attempts.fetch_add(1, Ordering::SeqCst);
        if attempt < self.failures {
            return Err(HandlerError(format!("injected failure {attempt}")));
        }
        self.tx.send(event).map_err(|e| HandlerError(e.to_string()))
    }
}

async fn receive(rx: &mut mpsc::UnboundedReceiver<Event>, n: usize) -> Vec<Event> {
    let mut got = Vec::new();
    while got.len() < n {
        let event = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("events were not delivered in time")
            .expect("channel closed");
        got.push(event);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_delivers_every_event_intact_once() {
    let dir = tempfile::tempdir().unwrap();
    let bus = OutboxBus::open(&dir.path().join("s.db"), fast_config()).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop, shutdown) = watch::channel(false);
    let workers = bus.spawn_workers(
        Arc::new(Recorder {
            tx,
            failures: 0,
            attempts: Arc::default(),
        }),
        shutdown,
    );
    let sent: Vec<Event> = (0..25).map(event).collect();
    bus.publish(&sent).await.unwrap();
    let mut got = receive(&mut rx, 25).await;
    got.sort_by_key(|e| e.id.clone());
    let mut want = sent.clone();
    want.sort_by_key(|e| e.id.clone());
    assert_eq!(got, want);
    stop.send(true).unwrap();
    for worker in workers {
        worker.await.unwrap();
    }
    assert!(rx.try_recv().is_err(), "an event was delivered twice");
    assert_eq!(bus.stats().await.unwrap().pending, 0);
}

/// Holds every delivery at a gate the test opens, and says when one
/// arrives there.
struct Gated {
    entered: mpsc::UnboundedSender<()>,
    gate: Arc<tokio::sync::Semaphore>,
    tx: mpsc::UnboundedSender<Event>,
}

#[async_trait]
impl EventHandler for Gated {
    async fn handle(&self, event: Event) -> Result<(), HandlerError> {
        let _ = self.entered.send(());
        self.gate
            .acquire()
            .await
            .map_err(|e| HandlerError(e.to_string()))?
            .forget();
        self.tx.send(event).map_err(|e| HandlerError(e.to_string()))
    }
}

/// Gated workers on a bus, and the test's ends of them.
struct GatedWorkers {
    workers: Vec<tokio::task::JoinHandle<()>>,
    entered: mpsc::UnboundedReceiver<()>,
    gate: Arc<tokio::sync::Semaphore>,
    delivered: mpsc::UnboundedReceiver<Event>,
    stop: watch::Sender<bool>,
}

fn spawn_gated(bus: &OutboxBus) -> GatedWorkers {
    let (tx, delivered) = mpsc::unbounded_channel();
    let (entered_tx, entered) = mpsc::unbounded_channel();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (stop, shutdown) = watch::channel(false);
    let workers = bus.spawn_workers(
        Arc::new(Gated {
            entered: entered_tx,
            gate: Arc::clone(&gate),
            tx,
        }),
        shutdown,
    );
    GatedWorkers {
        workers,
        entered,
        gate,
        delivered,
        stop,
    }
}

/// Idle workers wake on publishes alone (the poll tick is an hour away):
/// one worker per row published. Rows published one by one at once, while
/// every worker is busy and while they are idle, are all delivered, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_published_is_picked_up_without_the_poll_tick() {
    let dir = tempfile::tempdir().unwrap();
    let bus = OutboxBus::open(
        &dir.path().join("s.db"),
        OutboxConfig {
            workers: 8,
            poll_interval: Duration::from_secs(3600),
            ..fast_config()
        },
    )
    .unwrap();
    let GatedWorkers {
        workers,
        mut entered,
        gate,
        delivered: mut rx,
        stop,
    } = spawn_gated(&bus);
    let publish_each = |events: Vec<Event>| {
        let bus = bus.clone();
        async move {
            let publishes = events.into_iter().map(|event| {
                let bus = bus.clone();
                async move { bus.publish(&[event]).await.unwrap() }
            });
            futures_util::future::join_all(publishes).await;
        }
    };
    // Every worker busy, held at the gate.
    publish_each((0..8).map(event).collect()).await;
    for _ in 0..8 {
        tokio::time::timeout(Duration::from_secs(20), entered.recv())
            .await
            .expect("a worker was not woken for its row")
            .unwrap();
    }
    // Forty more while none is idle, then every delivery let through.
    publish_each((8..48).map(event).collect()).await;
    gate.add_permits(1000);
    // And forty more while they are idle.
    publish_each((48..88).map(event).collect()).await;
    let got = receive(&mut rx, 88).await;
    let distinct: BTreeSet<_> = got.iter().map(|e| e.id.clone()).collect();
    assert_eq!(distinct.len(), 88, "an event was delivered twice");
    stop.send(true).unwrap();
    for worker in workers {
        worker.await.unwrap();
    }
    assert!(rx.try_recv().is_err(), "an event was delivered twice");
    assert_eq!(bus.stats().await.unwrap().pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_keeps_published_events_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    {
        // Published with no worker running, then the process "dies".
        let bus = OutboxBus::open(&path, fast_config()).unwrap();
        bus.publish(&[event(1), event(2)]).await.unwrap();
    }
    let bus = OutboxBus::open(&path, fast_config()).unwrap();
    assert_eq!(bus.stats().await.unwrap().pending, 2);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (_stop, shutdown) = watch::channel(false);
    bus.spawn_workers(
        Arc::new(Recorder {
            tx,
            failures: 0,
            attempts: Arc::default(),
        }),
        shutdown,
    );
    let got: BTreeSet<_> = receive(&mut rx, 2)
        .await
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(got, BTreeSet::from([event(1).id, event(2).id]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_retries_a_failed_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let bus = OutboxBus::open(&dir.path().join("s.db"), fast_config()).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let attempts = Arc::new(AtomicU32::new(0));
    let (_stop, shutdown) = watch::channel(false);
    bus.spawn_workers(
        Arc::new(Recorder {
            tx,
            failures: 2,
            attempts: Arc::clone(&attempts),
        }),
        shutdown,
    );
    bus.publish(&[event(7)]).await.unwrap();
    let got = receive(&mut rx, 1).await;
    assert_eq!(got[0].id, event(7).id);
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
}

/// A handler whose events get more deliveries than the bus's three.
struct Patient(Recorder);

#[async_trait]
impl EventHandler for Patient {
    async fn handle(&self, event: Event) -> Result<(), HandlerError> {
        self.0.handle(event).await
    }

    fn max_attempts(&self, _event: &Event) -> Option<u32> {
        Some(6)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_with_its_own_budget_outlives_the_buses_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let bus = OutboxBus::open(&dir.path().join("s.db"), fast_config()).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let attempts = Arc::new(AtomicU32::new(0));
    let (_stop, shutdown) = watch::channel(false);
    bus.spawn_workers(
        Arc::new(Patient(Recorder {
            tx,
            failures: 5,
            attempts: Arc::clone(&attempts),
        })),
        shutdown,
    );
    bus.publish(&[event(11)]).await.unwrap();
    let got = receive(&mut rx, 1).await;
    assert_eq!(got[0].id, event(11).id);
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        6,
        "five failures, then taken"
    );
    assert_eq!(bus.stats().await.unwrap().dead, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_dead_letters_after_max_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let bus = OutboxBus::open(&dir.path().join("s.db"), fast_config()).unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let attempts = Arc::new(AtomicU32::new(0));
    let (_stop, shutdown) = watch::channel(false);
    bus.spawn_workers(
        Arc::new(Recorder {
            tx,
            failures: u32::MAX,
            attempts: Arc::clone(&attempts),
        }),
        shutdown,
    );
    bus.publish(&[event(9)]).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stats = bus.stats().await.unwrap();
        if stats.dead == 1 {
            assert_eq!(stats.pending, 0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never dead-lettered: {stats:?}"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
}

async fn aws_config() -> aws_config::SdkConfig {
    let endpoint = std::env::var("CRMBRIDGE_TEST_AWS_ENDPOINT").expect(
        "CRMBRIDGE_TEST_AWS_ENDPOINT is not set: run the suite through infra/test.sh, \
         which starts the EventBridge emulator (moto server)",
    );
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region("us-east-1")
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "testing", "testing", None, None, "bus-test",
        ))
        .load()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventbridge_routes_events_to_a_rule_target_intact() {
    let config = aws_config().await;
    let eb = aws_sdk_eventbridge::Client::new(&config);
    let sqs = aws_sdk_sqs::Client::new(&config);
    let suffix = format!(
        "{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    );
    let bus_name = format!("crmbridge-test-{suffix}");
    eb.create_event_bus().name(&bus_name).send().await.unwrap();
    let queue_url = sqs
        .create_queue()
        .queue_name(format!("dispatch-{suffix}"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let queue_arn = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    // The same pattern template.yaml gives the dispatch rule.
    eb.put_rule()
        .name("to-dispatch")
        .event_bus_name(&bus_name)
        .event_pattern(json!({"source": [SOURCE]}).to_string())
        .send()
        .await
        .unwrap();
    eb.put_targets()
        .rule("to-dispatch")
        .event_bus_name(&bus_name)
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("q")
                .arn(queue_arn)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();

    let bus = EventBridgeBus::new(eb, &bus_name);
    let sent: Vec<Event> = (0..13).map(event).collect(); // two PutEvents calls
    bus.publish(&sent).await.unwrap();

    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while received.len() < sent.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} events arrived",
            received.len()
        );
        let out = sqs
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for message in out.messages() {
            let envelope: serde_json::Value =
                serde_json::from_str(message.body().unwrap()).unwrap();
            assert_eq!(envelope["source"], SOURCE);
            let detail: Event = serde_json::from_value(envelope["detail"].clone()).unwrap();
            assert_eq!(envelope["detail-type"], detail.kind.as_str());
            received.push(detail);
        }
    }
    received.sort_by_key(|e| e.id.clone());
    let mut want = sent;
    want.sort_by_key(|e| e.id.clone());
    assert_eq!(received, want);
}

/// The outbox in the store's own file records an event's acceptance and
/// publishes it in one commit: of eight copies sent at once, one inserts
/// the acceptance and publishes; the others find it and publish nothing.
/// A bus in a file of its own does not offer it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_accepted_at_once_in_the_stores_file_are_published_once() {
    use crmbridge_store::{Item, PutOutcome, SqliteStore, Store};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crmbridge.db");
    let store = SqliteStore::open(&path).unwrap();
    let config = OutboxConfig {
        workers: 0,
        ..OutboxConfig::default()
    };
    let bus = Arc::new(OutboxBus::open_on(store.writer(), &path, config.clone()).unwrap());
    let acceptance = || Item::new("EVENT#call-1", "ACCEPT", json!({"state": "published"}));
    let copies: Vec<_> = (0..8)
        .map(|_| {
            let bus = Arc::clone(&bus);
            let entry = (event(1), acceptance());
            tokio::spawn(async move {
                let atomic = bus.atomic_acceptance().expect("in the store's file");
                atomic.publish_if_absent(vec![entry]).await.unwrap()
            })
        })
        .collect();
    let mut inserted = 0;
    for copy in copies {
        let outcomes = copy.await.unwrap();
        assert_eq!(outcomes.len(), 1);
        match &outcomes[0] {
            PutOutcome::Inserted => inserted += 1,
            PutOutcome::Exists(found) => assert_eq!(found.body["state"], "published"),
        }
    }
    assert_eq!(inserted, 1);
    assert_eq!(bus.stats().await.unwrap().pending, 1, "published once");
    let stored = store.get("EVENT#call-1", "ACCEPT").await.unwrap().unwrap();
    assert_eq!(stored.body["state"], "published");

    let own = OutboxBus::open(&dir.path().join("bus.db"), config).unwrap();
    assert!(own.atomic_acceptance().is_none());
}

/// Waits until every published row is deleted (handled rows are deleted
/// with a later write, not at once).
async fn until_drained(bus: &OutboxBus) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stats = bus.stats().await.unwrap();
        if stats.pending == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "handled rows were never deleted: {stats:?}"
        );
        tokio::task::yield_now().await;
    }
}

/// Rows handed to the workers in memory are leased from their insert:
/// workers that look at the table before every row (a poll interval of
/// zero) while sixty publishes race never claim one of them too. Every
/// event is delivered once, and every row is deleted without a stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_handed_in_memory_are_never_claimed_from_the_table_too() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, mut rx, _stop) = publish_at_once(dir.path(), 6, Duration::ZERO, 60).await;
    until_drained(&bus).await;
    assert!(rx.try_recv().is_err(), "an event was delivered twice");
}

/// A bus of `workers` recording workers looking at the table once a
/// `poll_interval`, and `n` events published each on its own, all at
/// once; returns once each was delivered (once so far), with the
/// workers' stop.
async fn publish_at_once(
    dir: &std::path::Path,
    workers: usize,
    poll_interval: Duration,
    n: usize,
) -> (
    OutboxBus,
    mpsc::UnboundedReceiver<Event>,
    watch::Sender<bool>,
) {
    let bus = OutboxBus::open(
        &dir.join("s.db"),
        OutboxConfig {
            workers,
            poll_interval,
            ..fast_config()
        },
    )
    .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop, shutdown) = watch::channel(false);
    bus.spawn_workers(
        Arc::new(Recorder {
            tx,
            failures: 0,
            attempts: Arc::default(),
        }),
        shutdown,
    );
    let publishes = (0..n).map(|n| {
        let bus = bus.clone();
        tokio::spawn(async move { bus.publish(&[event(n)]).await.unwrap() })
    });
    for publish in futures_util::future::join_all(publishes).await {
        publish.unwrap();
    }
    let got = receive(&mut rx, n).await;
    let distinct: BTreeSet<_> = got.iter().map(|e| e.id.clone()).collect();
    assert_eq!(distinct.len(), n, "an event was delivered twice");
    (bus, rx, stop)
}

/// Two workers hold four rows in memory at most; rows published beyond
/// that wait in the table and are claimed from it, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_published_while_the_workers_are_full_wait_in_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let bus = OutboxBus::open(
        &dir.path().join("s.db"),
        OutboxConfig {
            workers: 2,
            poll_interval: Duration::from_secs(3600),
            ..fast_config()
        },
    )
    .unwrap();
    let GatedWorkers {
        workers,
        mut entered,
        gate,
        delivered: mut rx,
        stop,
    } = spawn_gated(&bus);
    for n in 0..20 {
        bus.publish(&[event(n)]).await.unwrap();
    }
    for _ in 0..2 {
        entered.recv().await.unwrap();
    }
    assert_eq!(bus.stats().await.unwrap().pending, 20);
    gate.add_permits(1000);
    let got = receive(&mut rx, 20).await;
    let distinct: BTreeSet<_> = got.iter().map(|e| e.id.clone()).collect();
    assert_eq!(distinct.len(), 20);
    stop.send(true).unwrap();
    for worker in workers {
        worker.await.unwrap();
    }
    assert!(rx.try_recv().is_err(), "an event was delivered twice");
    assert_eq!(bus.stats().await.unwrap().pending, 0);
}

/// A process killed while its workers hold handed rows (leased in the
/// table since their insert) loses none: the next process over the file
/// releases the leases and delivers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_handed_to_workers_that_die_are_delivered_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    {
        let bus = OutboxBus::open(&path, fast_config()).unwrap();
        let GatedWorkers {
            workers,
            mut entered,
            stop: _stop,
            ..
        } = spawn_gated(&bus);
        bus.publish(&[event(1), event(2), event(3)]).await.unwrap();
        for _ in 0..3 {
            entered.recv().await.unwrap();
        }
        // Killed in the middle of every delivery.
        for worker in workers {
            worker.abort();
            assert!(worker.await.unwrap_err().is_cancelled());
        }
    }
    let bus = OutboxBus::open(&path, fast_config()).unwrap();
    assert_eq!(bus.stats().await.unwrap().pending, 3);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (_stop, shutdown) = watch::channel(false);
    bus.spawn_workers(
        Arc::new(Recorder {
            tx,
            failures: 0,
            attempts: Arc::default(),
        }),
        shutdown,
    );
    let got: BTreeSet<_> = receive(&mut rx, 3)
        .await
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(got, BTreeSet::from([event(1).id, event(2).id, event(3).id]));
    until_drained(&bus).await;
}

/// A publish whose caller stops waiting (a webhook's client hanging up)
/// once its write is queued still hands its row: the row is delivered
/// now, not when its lease (thirty seconds here) runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_dropped_while_it_waits_still_hands_its_row() {
    let dir = tempfile::tempdir().unwrap();
    let bus = OutboxBus::open(
        &dir.path().join("s.db"),
        OutboxConfig {
            poll_interval: Duration::from_secs(3600),
            ..fast_config()
        },
    )
    .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (_stop, shutdown) = watch::channel(false);
    bus.spawn_workers(
        Arc::new(Recorder {
            tx,
            failures: 0,
            attempts: Arc::default(),
        }),
        shutdown,
    );
    let events = [event(5)];
    let mut publish = Box::pin(bus.publish(&events));
    // Polled once (its write queued), then dropped.
    let _ = std::future::poll_fn(|cx| std::task::Poll::Ready(publish.as_mut().poll(cx))).await;
    drop(publish);
    let got = receive(&mut rx, 1).await;
    assert_eq!(got[0].id, event(5).id);
}

/// Three hundred publishes at once against two workers (four places)
/// and no poll tick to rescue a row: rows left unleased in the table are
/// claimed from it, and claims that find the table empty while publishes
/// leave rows there do not make the workers stop looking. Every event is
/// delivered, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_row_left_unleased_in_the_table_is_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let (_bus, mut rx, _stop) =
        publish_at_once(dir.path(), 2, Duration::from_secs(3600), 300).await;
    assert!(rx.try_recv().is_err(), "an event was delivered twice");
}
