//! The chat relay benchmark: `crmbridge serve` (release build, fsync on)
//! with the Verbox ↔ Planfix recipe, `chats` conversations at once, each
//! `messages` visitor messages and as many operator replies, one after
//! another within a chat (a person types, then the other answers). Latency
//! is from the moment a message is sent to crmbridge's webhook (its
//! acceptance included) to the moment the other vendor's fake received it:
//! a visitor's message
//! at Planfix's chat endpoint, an operator's reply at Verbox's
//! `sendToClient`. A chat's first message also makes the contact and the
//! task, so it is reported apart.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crmbridge_fakes::vendors::planfix::{FakePlanfix, OperatorReply};
use crmbridge_fakes::vendors::verbox::FakeVerbox;
use serde::Serialize;
use serde_json::{Value, json};

const PROVIDER_KEY: &str = "pk-bench";

#[derive(Debug, Clone, Serialize)]
pub struct RelayReport {
    pub chats: usize,
    pub messages_per_chat_each_way: usize,
    pub first_message_p50_ms: f64,
    pub first_message_p99_ms: f64,
    pub to_planfix_p50_ms: f64,
    pub to_planfix_p99_ms: f64,
    pub to_verbox_p50_ms: f64,
    pub to_verbox_p99_ms: f64,
    pub total_s: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

fn summary(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    (percentile(&values, 0.5), percentile(&values, 0.99))
}

/// When each text reached a fake, from its request log.
fn arrivals(
    requests: &[crmbridge_fakes::RecordedRequest],
    text_of: impl Fn(&str) -> Option<String>,
) -> HashMap<String, Instant> {
    let mut at = HashMap::new();
    for request in requests
        .iter()
        .filter(|r| r.status.is_some_and(|s| (200..300).contains(&s)))
    {
        if let Some(text) = text_of(&request.body) {
            at.entry(text).or_insert(request.received_at);
        }
    }
    at
}

pub async fn run(
    serve_binary: &Path,
    chats: usize,
    messages: usize,
) -> anyhow::Result<RelayReport> {
    let verbox = Arc::new(FakeVerbox::start("vb-bench").await?);
    verbox.add_operator("olga");
    let planfix = Arc::new(FakePlanfix::start("pf-bench", "pf-chat-bench").await?);
    let server = crate::serve::spawn(serve_binary, 8)?;
    let http = reqwest::Client::new();
    let vb = server
        .admin(
            &http,
            "/v1/connections",
            json!({"app": "verbox", "name": "Verbox",
        "settings": {"base_url": verbox.base_url()}, "credentials": {"token": "vb-bench"}}),
        )
        .await?;
    let pf = server.admin(&http, "/v1/connections", json!({"app": "planfix", "name": "Planfix",
        "settings": {"base_url": planfix.base_url(), "chat_endpoint": planfix.chat_endpoint(), "max_requests_per_second": 50},
        "credentials": {"token": "pf-bench", "planfix_token": "pf-chat-bench", "provider_key": PROVIDER_KEY}})).await?;
    server
        .admin(
            &http,
            "/v1/recipes/verbox-planfix/instantiate",
            json!({"connections": {"verbox": vb["id"], "planfix": pf["id"]},
        "parameters": {"reply_operator": "olga"}}),
        )
        .await?;
    let verbox_hook = format!(
        "{}{}",
        server.base,
        vb["webhook_path"].as_str().unwrap_or_default()
    );
    let planfix_hook = format!(
        "{}{}",
        server.base,
        pf["webhook_path"].as_str().unwrap_or_default()
    );

    let started = Instant::now();
    let mut tasks = Vec::new();
    for chat in 0..chats {
        let (verbox, planfix) = (Arc::clone(&verbox), Arc::clone(&planfix));
        let (verbox_hook, planfix_hook) = (verbox_hook.clone(), planfix_hook.clone());
        tasks.push(tokio::spawn(async move {
            let client = format!("v-{chat}");
            let mut accepted: Vec<(String, Instant, bool)> = Vec::new();
            for i in 0..messages {
                let text = format!("visitor {chat}/{i}");
                let event = FakeVerbox::client_message(&client, &format!("m-{chat}-{i}"), &text);
                let sent_at = Instant::now();
                let (status, _) = verbox.send_event(&verbox_hook, event).await?;
                anyhow::ensure!(
                    (200..300).contains(&status),
                    "visitor message refused: {status}"
                );
                accepted.push((text.clone(), sent_at, i == 0));
                // The operator reads it before answering.
                let deadline = Instant::now() + Duration::from_secs(120);
                while !planfix
                    .chat_messages(&client)
                    .iter()
                    .any(|m| m.text == text)
                {
                    anyhow::ensure!(Instant::now() < deadline, "{text} never reached Planfix");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                let reply = format!("operator {chat}/{i}");
                let sent_at = Instant::now();
                let (status, _) = planfix
                    .send_operator_reply(
                        &planfix_hook,
                        PROVIDER_KEY,
                        OperatorReply {
                            chat_id: client.clone(),
                            message: reply.clone(),
                            user_name: "Olga".into(),
                            ..OperatorReply::default()
                        },
                    )
                    .await?;
                anyhow::ensure!(status == 200, "operator reply refused: {status}");
                accepted.push((reply.clone(), sent_at, false));
                let deadline = Instant::now() + Duration::from_secs(120);
                while !verbox
                    .sent_to_client(&client)
                    .iter()
                    .any(|m| m["message"]["text"] == reply.as_str())
                {
                    anyhow::ensure!(Instant::now() < deadline, "{reply} never reached Verbox");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            Ok::<_, anyhow::Error>(accepted)
        }));
    }
    let mut accepted = Vec::new();
    for task in tasks {
        accepted.extend(task.await??);
    }
    let total_s = started.elapsed().as_secs_f64();
    let at_planfix = arrivals(&planfix.requests(), |body| {
        let pairs: HashMap<String, String> = form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        (pairs.get("cmd").map(String::as_str) == Some("newMessage"))
            .then(|| pairs.get("message").cloned())
            .flatten()
    });
    let at_verbox = arrivals(&verbox.requests(), |body| {
        serde_json::from_str::<Value>(body).ok()?["message"]["text"]
            .as_str()
            .map(str::to_owned)
    });
    let (mut first, mut to_planfix, mut to_verbox) = (Vec::new(), Vec::new(), Vec::new());
    for (text, at, is_first) in accepted {
        let (arrived, bucket) = if text.starts_with("visitor") {
            (
                at_planfix.get(&text),
                if is_first {
                    &mut first
                } else {
                    &mut to_planfix
                },
            )
        } else {
            (at_verbox.get(&text), &mut to_verbox)
        };
        let arrived = arrived.ok_or_else(|| anyhow::anyhow!("{text}: no arrival recorded"))?;
        bucket.push(arrived.saturating_duration_since(at).as_secs_f64() * 1000.0);
    }
    let (first_message_p50_ms, first_message_p99_ms) = summary(first);
    let (to_planfix_p50_ms, to_planfix_p99_ms) = summary(to_planfix);
    let (to_verbox_p50_ms, to_verbox_p99_ms) = summary(to_verbox);
    drop(server);
    Ok(RelayReport {
        chats,
        messages_per_chat_each_way: messages,
        first_message_p50_ms,
        first_message_p99_ms,
        to_planfix_p50_ms,
        to_planfix_p99_ms,
        to_verbox_p50_ms,
        to_verbox_p99_ms,
        total_s,
    })
}
