//! Exactly once with concurrent duplicates, through the real Lambda binaries
//! (`admin`, `webhook`, `dispatch`) under the Runtime API emulator, on
//! DynamoDB + EventBridge + SQS in moto, against the fake NetHunt.
//!
//! A `generic` source posts 60 orders; each is delivered 1–4 times *at
//! once* (vendors retry on their own clock, so copies overlap). Every copy
//! must be answered 2xx, and the bus must carry each order once. Each
//! routed event is then handed to dispatch 2–3 times at once (EventBridge
//! and Lambda's async invocation are at-least-once); a copy that finds the
//! run leased by another invocation gets the transient "another worker is
//! running it" error, and is invoked again as Lambda's async retry would,
//! once the invocations it raced have returned. The step is NetHunt
//! create-record, which has no idempotency key: only crmbridge's own
//! bookkeeping (the acceptance record, the run record and its lease) stands
//! between a duplicate delivery and a second NetHunt record.
//!
//! The emulator serialises invocations per [`FunctionProcess`] (one
//! process is one execution environment: concurrent invocations of it
//! queue), so concurrency here comes from several environments of the same
//! function, as on Lambda: the copies of one event always go to different
//! processes, all started at the same moment.
//!
//! Needs `CRMBRIDGE_TEST_AWS_ENDPOINT` (moto, through infra/moto_serial.py;
//! infra/test.sh starts it) and the binaries built (`cargo build --bins`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Stack, automation_statuses, hook_request, http, pairs};
use crmbridge_fakes::vendors::nethunt::FakeNetHunt;
use crmbridge_lambda_harness::{FunctionProcess, InvocationError};
use serde_json::{Value, json};
use tokio::task::JoinSet;

/// Distinct orders the source posts.
const EVENTS: usize = 60;
/// Execution environments per function: the most copies started at once.
const WEBHOOK_ENVIRONMENTS: usize = 6;
const DISPATCH_ENVIRONMENTS: usize = 6;
/// Rounds of Lambda-style retries one event may need before the test
/// gives up (one is enough when the racing holder finished its run).
const MAX_RETRY_ROUNDS: usize = 5;

const AUTOMATION: &str = "orders-to-nethunt";
const KIND: &str = "generic.order.created";
const BUSY: &str = "another worker is running it";

/// The source's id of order `i` (also the NetHunt record's Name).
fn order_id(i: usize) -> String {
    format!("ORD-{i:03}")
}

/// How many copies of order `i` the source delivers at once (1–4).
fn webhook_copies(i: usize) -> usize {
    i % 4 + 1
}

/// How many times EventBridge/Lambda hands order `i` to dispatch at once (2–3).
fn dispatch_copies(i: usize) -> usize {
    2 + i % 2
}

/// Consecutive events packed into waves of at most `slots` copies, so the
/// copies of one wave all go to different environments at once. Each item
/// is `(event, copy, slot)`.
fn waves(copies: impl Fn(usize) -> usize, slots: usize) -> Vec<Vec<(usize, usize, usize)>> {
    let mut out: Vec<Vec<(usize, usize, usize)>> = Vec::new();
    let mut wave = Vec::new();
    for event in 0..EVENTS {
        let n = copies(event);
        assert!(n <= slots);
        if wave.len() + n > slots {
            out.push(std::mem::take(&mut wave));
        }
        for copy in 0..n {
            let slot = wave.len();
            wave.push((event, copy, slot));
        }
    }
    if !wave.is_empty() {
        out.push(wave);
    }
    out
}

/// The stack and the extra execution environments of webhook and dispatch.
struct Environments {
    stack: Stack,
    webhooks: Vec<FunctionProcess>,
    dispatchers: Vec<FunctionProcess>,
}

impl Environments {
    fn webhook(&self, slot: usize) -> &FunctionProcess {
        match slot {
            0 => &self.stack.webhook,
            n => &self.webhooks[n - 1],
        }
    }

    fn dispatcher(&self, slot: usize) -> &FunctionProcess {
        match slot {
            0 => &self.stack.dispatcher,
            n => &self.dispatchers[n - 1],
        }
    }
}

/// One webhook copy's answer, and when (since the test began) it was sent
/// and answered.
struct Delivery {
    event: usize,
    status: u16,
    reply: Value,
    sent: Duration,
    answered: Duration,
}

/// What one dispatch invocation came back with.
enum Dispatched {
    Reply(Value),
    /// The transient "another worker is running it" error.
    Busy,
}

async fn dispatch_once(function: &FunctionProcess, routed: &Value) -> Dispatched {
    match function.invoke(routed.clone()).await {
        Ok(reply) => Dispatched::Reply(reply),
        Err(InvocationError::Function { error, .. }) if error.error_message.contains(BUSY) => {
            Dispatched::Busy
        }
        Err(err) => panic!(
            "dispatch failed other than by backing off: {err}\n--- {} log ---\n{}",
            function.name(),
            function.logs().join("\n")
        ),
    }
}

/// Counts `(name → occurrences)`.
fn tally<'a>(names: impl Iterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for name in names {
        *out.entry(name.to_owned()).or_insert(0) += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_run_each_event_exactly_once() {
    let began = Instant::now();
    let stack = Stack::start().await;
    let nethunt = FakeNetHunt::start("owner@acme.test", "nh-key-1")
        .await
        .unwrap();
    let deals = nethunt.add_folder("Deals");
    nethunt.add_field(&deals, "Name").unwrap();

    // The source, the target and the automation, through admin.
    let source = stack
        .admin_post(
            "/v1/connections",
            json!({"app": "generic", "name": "Shop",
                   "settings": {"event_id_pointer": "/id", "kind": "order.created"}}),
            201,
        )
        .await;
    let target = stack
        .admin_post(
            "/v1/connections",
            json!({"app": "nethunt", "name": "NetHunt",
                   "settings": {"base_url": nethunt.base_url()},
                   "credentials": {"email": "owner@acme.test", "api_key": "nh-key-1"}}),
            201,
        )
        .await;
    let automation = stack
        .admin_post(
            "/v1/automations",
            json!({
                "id": AUTOMATION, "name": "Orders → NetHunt",
                "trigger": {"connection": source["id"], "event": KIND},
                "steps": [{"id": "record", "action": "nethunt.record.create",
                           "connection": target["id"],
                           "fields": {"folder": "Deals", "fields": {"Name": "{{ event.id }}"}}}]
            }),
            201,
        )
        .await;
    assert_eq!(automation["automation"]["id"], AUTOMATION, "{automation:#}");
    assert_eq!(automation["automation"]["enabled"], true, "{automation:#}");
    let hook = source["webhook_path"].as_str().unwrap().to_owned();

    let webhooks = stack
        .spawn_instances("webhook", WEBHOOK_ENVIRONMENTS - 1)
        .await;
    let dispatchers = stack
        .spawn_instances("dispatch", DISPATCH_ENVIRONMENTS - 1)
        .await;
    let envs = Arc::new(Environments {
        stack,
        webhooks,
        dispatchers,
    });
    let setup = began.elapsed();

    // 1. Every order, 1–4 copies at once, each copy to its own environment.
    let started = Instant::now();
    let mut deliveries: Vec<Delivery> = Vec::new();
    for wave in waves(webhook_copies, WEBHOOK_ENVIRONMENTS) {
        let mut set = JoinSet::new();
        for (event, _copy, slot) in wave {
            let envs = Arc::clone(&envs);
            let request = hook_request("POST", &hook)
                .json(&json!({"id": order_id(event), "sum": 1000 + event}));
            set.spawn(async move {
                let sent = started.elapsed();
                let (status, reply) = http(envs.webhook(slot), request).await;
                Delivery {
                    event,
                    status,
                    reply,
                    sent,
                    answered: started.elapsed(),
                }
            });
        }
        while let Some(done) = set.join_next().await {
            deliveries.push(done.unwrap());
        }
    }
    let webhook_time = started.elapsed();
    assert_eq!(
        deliveries.len(),
        (0..EVENTS).map(webhook_copies).sum::<usize>()
    );

    // Every copy is answered 2xx: one 202 per order, the rest 200
    // duplicates naming the same event.
    let mut event_ids: BTreeMap<usize, String> = BTreeMap::new();
    let mut duplicates = 0;
    let mut overlapped_duplicates = 0;
    let mut overlapped_events = 0;
    for event in 0..EVENTS {
        let copies: Vec<&Delivery> = deliveries.iter().filter(|d| d.event == event).collect();
        assert_eq!(copies.len(), webhook_copies(event));
        for copy in &copies {
            assert!(
                copy.status == 202 || copy.status == 200,
                "order {event}: a copy was answered {}: {}",
                copy.status,
                copy.reply
            );
        }
        let accepted: Vec<&&Delivery> = copies.iter().filter(|d| d.status == 202).collect();
        assert_eq!(
            accepted.len(),
            1,
            "order {event}: exactly one copy is accepted: {:#?}",
            copies.iter().map(|d| &d.reply).collect::<Vec<_>>()
        );
        let first = accepted[0];
        assert_eq!(first.reply["status"], "accepted", "{}", first.reply);
        let ids = first.reply["event_ids"].as_array().unwrap();
        assert_eq!(ids.len(), 1, "{}", first.reply);
        let id = ids[0].as_str().unwrap().to_owned();
        for copy in copies.iter().filter(|d| d.status == 200) {
            assert_eq!(
                copy.reply,
                json!({"status": "duplicate", "event_ids": [id]}),
                "order {event}"
            );
            duplicates += 1;
            // Sent before the accepted copy was answered: the two were in
            // flight at the same time, in different environments.
            if copy.sent < first.answered {
                overlapped_duplicates += 1;
            }
        }
        let last_sent = copies.iter().map(|d| d.sent).max().unwrap();
        let first_answered = copies.iter().map(|d| d.answered).min().unwrap();
        if copies.len() > 1 && last_sent < first_answered {
            overlapped_events += 1;
        }
        assert!(
            !event_ids.values().any(|known| *known == id),
            "two orders got one event id {id}"
        );
        event_ids.insert(event, id);
    }
    assert_eq!(
        duplicates,
        (0..EVENTS).map(|i| webhook_copies(i) - 1).sum::<usize>()
    );

    // 2. The bus carried each order exactly once.
    let routed = envs.stack.routing.take_kind(EVENTS, KIND).await;
    let mut by_event: BTreeMap<usize, Value> = BTreeMap::new();
    for event in routed {
        let source_id = event["detail"]["data"]["id"].as_str().unwrap().to_owned();
        let index = (0..EVENTS)
            .find(|i| order_id(*i) == source_id)
            .unwrap_or_else(|| panic!("an event for no order: {event:#}"));
        assert_eq!(
            event["detail"]["id"],
            event_ids[&index].as_str(),
            "{event:#}"
        );
        assert!(
            by_event.insert(index, event).is_none(),
            "order {source_id} was published twice"
        );
    }
    assert_eq!(by_event.len(), EVENTS);

    // 3. Each routed event to dispatch 2–3 times at once; a copy that backs
    // off is invoked again once the invocations it raced have returned.
    let started = Instant::now();
    let by_event = Arc::new(by_event);
    let mut replies: BTreeMap<usize, Vec<Value>> = BTreeMap::new();
    let mut busy_total = 0;
    let mut busy_events = BTreeSet::new();
    let mut retry_rounds_max = 0;
    for wave in waves(dispatch_copies, DISPATCH_ENVIRONMENTS) {
        let mut pending: Vec<(usize, usize)> = wave
            .iter()
            .map(|(event, _, slot)| (*event, *slot))
            .collect();
        let mut round = 0;
        while !pending.is_empty() {
            assert!(
                round <= MAX_RETRY_ROUNDS,
                "still backing off after {MAX_RETRY_ROUNDS} retries: {pending:?}"
            );
            let mut set = JoinSet::new();
            for (event, slot) in pending.drain(..) {
                let envs = Arc::clone(&envs);
                let by_event = Arc::clone(&by_event);
                set.spawn(async move {
                    let outcome = dispatch_once(envs.dispatcher(slot), &by_event[&event]).await;
                    (event, slot, outcome)
                });
            }
            while let Some(done) = set.join_next().await {
                match done.unwrap() {
                    (event, _, Dispatched::Reply(reply)) => {
                        replies.entry(event).or_default().push(reply);
                    }
                    (event, slot, Dispatched::Busy) => {
                        busy_total += 1;
                        busy_events.insert(event);
                        pending.push((event, slot));
                    }
                }
            }
            retry_rounds_max = retry_rounds_max.max(round);
            round += 1;
        }
    }
    let dispatch_time = started.elapsed();

    // 4. NetHunt holds one record per order, made by one request each.
    let expected: BTreeMap<String, usize> = (0..EVENTS).map(|i| (order_id(i), 1)).collect();
    let records = nethunt.records(&deals);
    let names = tally(
        records
            .iter()
            .map(|r| r["fields"]["Name"].as_str().unwrap_or("<no name>")),
    );
    assert_eq!(names, expected, "NetHunt records by Name");
    let creates: Vec<Value> = nethunt
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.contains("/actions/create-record/"))
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect();
    let created = tally(
        creates
            .iter()
            .map(|b| b["fields"]["Name"].as_str().unwrap_or("<no name>")),
    );
    assert_eq!(created, expected, "create-record requests by Name");

    // 5. Per event: every copy ended in a success; exactly one of them ran
    // the automation (duplicate: false), the others found the run finished.
    let mut finished_found = 0;
    for event in 0..EVENTS {
        let got = &replies[&event];
        assert_eq!(got.len(), dispatch_copies(event), "order {event}: {got:#?}");
        let fresh = got.iter().filter(|r| r["duplicate"] == false).count();
        assert_eq!(fresh, 1, "order {event}: one copy runs it: {got:#?}");
        finished_found += got.len() - 1;
        for reply in got {
            assert_eq!(
                automation_statuses(reply["runs"].as_array().unwrap()),
                pairs(&[(AUTOMATION, "succeeded")]),
                "order {event}: {reply:#}"
            );
        }
    }

    // 6. The run log: one succeeded run per event, nothing else.
    let runs = envs.stack.runs().await;
    assert_eq!(runs.len(), EVENTS, "{runs:#?}");
    for run in &runs {
        assert_eq!(run["automation"], AUTOMATION, "{run:#}");
        assert_eq!(run["status"], "succeeded", "{run:#}");
    }
    let run_events = tally(runs.iter().map(|r| r["event_id"].as_str().unwrap()));
    let accepted_events: BTreeMap<String, usize> =
        event_ids.values().map(|id| (id.clone(), 1)).collect();
    assert_eq!(run_events, accepted_events, "runs by event");

    // Nothing was published late (a second copy publishing after the test
    // looked would show up here).
    envs.stack.routing.take(0).await;

    // The copies must really have raced, or this test proves nothing: with
    // every copy of an event started at once in its own environment, some
    // dispatch copies find the run leased (this fails if the harness ever
    // serialises them).
    assert!(
        busy_total > 0,
        "no dispatch copy ever found the run leased: the copies did not overlap"
    );
    assert!(
        overlapped_duplicates > 0,
        "no duplicate webhook copy was in flight with its accepted copy"
    );

    println!(
        "setup {setup:?}; webhook: {} deliveries of {EVENTS} orders in {webhook_time:?}, \
         {duplicates} answered duplicate ({overlapped_duplicates} of them sent before the \
         accepted copy was answered; all copies in flight together for {overlapped_events} \
         of the {} multi-copy orders)",
        deliveries.len(),
        (0..EVENTS).filter(|i| webhook_copies(*i) > 1).count()
    );
    println!(
        "dispatch: {} copies in {dispatch_time:?}; {busy_total} invocations backed off \
         (\"{BUSY}\") on {} orders, retried (at most {retry_rounds_max} retry round(s)); \
         {finished_found} copies found the run finished",
        (0..EVENTS).map(dispatch_copies).sum::<usize>(),
        busy_events.len()
    );
    println!("total {:?}", began.elapsed());
    envs.stack.report();
}
