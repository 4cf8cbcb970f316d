//! The chat relay under faults and a kill: 20 chats at once, each with 10
//! visitor messages to Planfix and 10 operator replies to Verbox (200 each
//! way), both vendors failing 30 % of calls — a rate-limit answer, a 5xx,
//! a dropped connection (the call did nothing), or a dropped connection
//! *after* the message was taken — and `serve` killed with SIGKILL midway
//! and started again on its data. Every message arrives exactly once and
//! in its chat's order, and no run is left for review: neither vendor
//! takes a message key, so after a call whose outcome is unknown the
//! relay reads the chat's history back (Planfix: the chat task's
//! comments; Verbox: `chat/message/getList`) and sends only what is not
//! there. Each chat is opened (its contact and task made) before the
//! faults begin: creating those takes no key either and is reviewed, not
//! guessed, after an unknown outcome (the engine's exactly-once suite
//! covers that).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use common::{Server, pause, post_json, runs_with, serve_with};
use crmbridge_fakes::Fault;
use crmbridge_fakes::vendors::planfix::{FakePlanfix, OperatorReply};
use crmbridge_fakes::vendors::verbox::FakeVerbox;
use serde_json::json;

const CHATS: usize = 20;
const PER_CHAT: usize = 10;
const WORKERS: usize = 4;
const PROVIDER_KEY: &str = "pk-chaos";

fn start(data: &std::path::Path) -> Server {
    serve_with(data, WORKERS, &["--allow-any-vendor-url"])
}

fn visitor_text(chat: usize, i: usize) -> String {
    format!("visitor {chat}/{i}")
}

fn open_text(chat: usize) -> String {
    format!("visitor {chat} opens the chat")
}

fn reply_text(chat: usize, i: usize) -> String {
    format!("operator {chat}/{i}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_messages_each_way_arrive_once_and_in_order() {
    let verbox = Arc::new(FakeVerbox::start("vb-chaos").await.unwrap());
    verbox.add_operator("olga");
    let planfix = Arc::new(
        FakePlanfix::start("pf-chaos", "pf-chat-chaos")
            .await
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = start(&data);
    let key = server.owner_key.clone().unwrap();
    let b = server.base.clone();
    let vb = post_json(
        &b,
        &key,
        "/v1/connections",
        json!({"app": "verbox", "name": "Verbox",
        "settings": {"base_url": verbox.base_url()}, "credentials": {"token": "vb-chaos"}}),
    )
    .await;
    let pf = post_json(&b, &key, "/v1/connections", json!({"app": "planfix", "name": "Planfix",
        "settings": {"base_url": planfix.base_url(), "chat_endpoint": planfix.chat_endpoint(), "max_requests_per_second": 50},
        "credentials": {"token": "pf-chaos", "planfix_token": "pf-chat-chaos", "provider_key": PROVIDER_KEY}})).await;
    post_json(
        &b,
        &key,
        "/v1/recipes/verbox-planfix/instantiate",
        json!({"connections": {"verbox": vb["id"], "planfix": pf["id"]},
        "parameters": {"reply_operator": "olga"}}),
    )
    .await;
    let verbox_hook = vb["webhook_path"].as_str().unwrap().to_owned();
    let planfix_hook = pf["webhook_path"].as_str().unwrap().to_owned();
    let rate: f64 = std::env::var("CRMBRIDGE_RELAY_FAULTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.3);
    // Each chat opens (contact, task, the chat in Planfix) before the faults.
    for chat in 0..CHATS {
        let event = FakeVerbox::client_message(&format!("v-{chat}"), &format!("m-{chat}-open"), &open_text(chat));
        let (status, body) = verbox
            .send_event(&format!("{}{verbox_hook}", server.base), event)
            .await
            .unwrap();
        assert_eq!(status, 202, "{body}");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while (0..CHATS).any(|c| planfix.chat_messages(&format!("v-{c}")).is_empty()) {
        assert!(Instant::now() < deadline, "the chats did not open");
        pause().await;
    }
    let faults = || vec![Fault::TooManyRequests, Fault::ServerError, Fault::Drop, Fault::DropAfterCommit];
    verbox.set_fault_rate(rate, faults(), 17);
    planfix.set_fault_rate(rate, faults(), 23);

    let base = Arc::new(RwLock::new(server.base.clone()));
    let (progress_tx, mut progress) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut chats = Vec::new();
    for chat in 0..CHATS {
        let (base, verbox, planfix) =
            (Arc::clone(&base), Arc::clone(&verbox), Arc::clone(&planfix));
        let (verbox_hook, planfix_hook, progress_tx) = (
            verbox_hook.clone(),
            planfix_hook.clone(),
            progress_tx.clone(),
        );
        chats.push(tokio::spawn(async move {
            let client_id = format!("v-{chat}");
            let mut replied = Vec::new();
            for i in 0..PER_CHAT {
                // The visitor writes; Verbox resends until it is taken.
                let event = FakeVerbox::client_message(
                    &client_id,
                    &format!("m-{chat}-{i}"),
                    &visitor_text(chat, i),
                );
                let deadline = Instant::now() + Duration::from_secs(180);
                loop {
                    let url = format!("{}{verbox_hook}", base.read().unwrap());
                    if let Ok((status, _)) = verbox.send_event(&url, event.clone()).await
                        && (200..300).contains(&status)
                    {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "a visitor message was never taken"
                    );
                    pause().await;
                }
                let reply = OperatorReply {
                    chat_id: client_id.clone(),
                    message: reply_text(chat, i),
                    message_id: Some(format!("pf-{chat}-{i}")),
                    user_name: "Olga".into(),
                    ..OperatorReply::default()
                };
                let deadline = Instant::now() + Duration::from_secs(180);
                loop {
                    let url = format!("{}{planfix_hook}", base.read().unwrap());
                    if let Ok((200, _)) = planfix
                        .send_operator_reply(&url, PROVIDER_KEY, reply.clone())
                        .await
                    {
                        break;
                    }
                    assert!(Instant::now() < deadline, "a reply was never taken");
                    pause().await;
                }
                replied.push(i);
                progress_tx.send(()).unwrap();
            }
            replied
        }));
    }
    drop(progress_tx);
    // One SIGKILL when half the conversation has been exchanged.
    let mut exchanged = 0;
    let mut killed = false;
    while progress.recv().await.is_some() {
        exchanged += 1;
        if !killed && exchanged * 2 >= CHATS * PER_CHAT {
            drop(server); // SIGKILL
            server = start(&data);
            *base.write().unwrap() = server.base.clone();
            killed = true;
        }
    }
    let mut replied = Vec::new();
    for chat in chats {
        replied.push(chat.await.unwrap());
    }
    let replies: usize = replied.iter().map(Vec::len).sum();
    assert!(killed);

    // Every message ends delivered; no run waits, none is held.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let running = runs_with(&server.base, &key, "running").await;
        let failed = runs_with(&server.base, &key, "failed").await;
        let delivered: usize = (0..CHATS)
            .map(|c| {
                let id = format!("v-{c}");
                planfix.chat_messages(&id).len() + verbox.sent_to_client(&id).len()
            })
            .sum();
        if running.is_empty() && failed.is_empty() && delivered >= CHATS * (PER_CHAT + 1) + replies {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not done: {delivered} delivered, {} running, {} failed (waiting for a read-back or for good): {:#?}",
            running.len(),
            failed.len(),
            failed.iter().take(3).collect::<Vec<_>>()
        );
        pause().await;
    }
    let review = runs_with(&server.base, &key, "needs_review").await;
    assert!(review.is_empty(), "no message is left for review: {review:#?}");
    // A retry can still be on its way when the last message is seen (a
    // read-back waiting on the bus shows as failed until it runs): wait
    // until every run has settled. A run that failed for good stays failed,
    // and the deadline fails the test.
    let settle = Instant::now() + Duration::from_secs(180);
    let per_status = loop {
        let mut per_status = BTreeMap::<String, usize>::new();
        for status in ["succeeded", "failed", "filtered", "skipped", "running"] {
            per_status.insert(
                status.into(),
                runs_with(&server.base, &key, status).await.len(),
            );
        }
        if per_status["failed"] == 0 && per_status["running"] == 0 {
            break per_status;
        }
        assert!(Instant::now() < settle, "runs never settled: {per_status:?}");
        pause().await;
    };
    assert_eq!(per_status["failed"], 0, "{per_status:?}");
    // In each chat: every message once, in order.
    for (chat, replied) in replied.iter().enumerate() {
        let id = format!("v-{chat}");
        let to_planfix: Vec<String> = planfix
            .chat_messages(&id)
            .into_iter()
            .map(|m| m.text)
            .collect();
        let to_verbox: Vec<String> = verbox
            .sent_to_client(&id)
            .into_iter()
            .map(|m| m["message"]["text"].as_str().unwrap().to_owned())
            .collect();
        let mut expected_planfix = vec![open_text(chat)];
        expected_planfix.extend((0..PER_CHAT).map(|i| visitor_text(chat, i)));
        assert_eq!(to_planfix, expected_planfix, "chat {id}: visitor messages in Planfix");
        let expected_verbox: Vec<String> = replied.iter().map(|i| reply_text(chat, *i)).collect();
        assert_eq!(replied.len(), PER_CHAT, "chat {id}: every reply was taken");
        assert_eq!(to_verbox, expected_verbox, "chat {id}: operator replies in Verbox");
    }
    assert!(
        verbox.fault_count() > 0 && planfix.fault_count() > 0,
        "the faults were injected"
    );
    // The histories were read back (a lost answer is never just resent).
    assert!(planfix.requests().iter().any(|r| r.path.ends_with("/comments/list")));
    assert!(verbox.requests().iter().any(|r| r.path.ends_with("chat/message/getList")));
}
