//! The Planfix and Verbox connectors against their fakes: the scope check,
//! finding a visitor's contact, the chat commands, a message to a visitor.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::BTreeMap;

use common::{context, vendor};
use crmbridge_connectors::{ActionError, Resend, Sent, VendorClient};
use crmbridge_fakes::Fault;
use crmbridge_fakes::vendors::planfix::FakePlanfix;
use crmbridge_fakes::vendors::verbox::FakeVerbox;
use crmbridge_mapping::LookupKey;
use serde_json::{Value, json};

fn fields(value: Value) -> serde_json::Map<String, Value> {
    value.as_object().cloned().unwrap()
}

fn settings(pf: &FakePlanfix) -> Value {
    json!({"base_url": pf.base_url(), "chat_endpoint": pf.chat_endpoint(), "max_requests_per_second": 50})
}

fn credentials(token: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("token".to_owned(), token.to_owned()),
        ("planfix_token".to_owned(), "pf-chat-key".to_owned()),
    ])
}

/// The check proves all eleven scopes of the article and names the one a
/// token lacks; nothing is created by the write probes.
#[tokio::test]
async fn the_check_names_a_missing_scope() {
    let pf = FakePlanfix::start("pf-full", "pf-chat-key").await.unwrap();
    let mut scopes: Vec<&str> = crmbridge_connectors::vendors::planfix::SCOPES.to_vec();
    scopes.retain(|s| *s != "task_add");
    pf.add_token("pf-no-task-add", &scopes);
    let http = VendorClient::new();
    let settings = settings(&pf);
    let good = credentials("pf-full");
    let account = vendor("planfix")
        .check(&context(&settings, &good, &http, "check"))
        .await
        .unwrap();
    assert_eq!(account["scopes"].as_array().unwrap().len(), 11);
    let lacking = credentials("pf-no-task-add");
    let err = vendor("planfix")
        .check(&context(&settings, &lacking, &http, "check"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("lacks the scope(s) task_add:"), "{text}");
    assert!(
        err.credentials_refused().is_some() && !err.is_transient(),
        "{err:?}"
    );
    assert!(pf.contacts().is_empty() && pf.tasks().is_empty() && pf.projects().is_empty());
    let wrong = credentials("pf-unknown");
    let err = vendor("planfix")
        .check(&context(&settings, &wrong, &http, "check"))
        .await
        .unwrap_err();
    assert!(err.credentials_refused().is_some(), "{err:?}");
    assert!(!err.to_string().contains("pf-unknown"), "{err}");
}

/// A visitor is found by the phone's last ten digits however it was
/// typed, else by e-mail; a near match (a longer number containing the
/// digits) is not taken.
#[tokio::test]
async fn a_contact_is_found_by_phone_then_email() {
    let pf = FakePlanfix::start("pf-full", "pf-chat-key").await.unwrap();
    let http = VendorClient::new();
    let settings = settings(&pf);
    let creds = credentials("pf-full");
    let ctx = context(&settings, &creds, &http, "run/1/contact");
    let planfix = vendor("planfix");
    let near = planfix
        .execute(
            &ctx,
            "planfix.contact.create",
            &fields(json!({"name": "Near", "phone": "+7 (916) 123-45-678"})),
            None,
        )
        .await
        .unwrap();
    let made = planfix
        .execute(
            &ctx,
            "planfix.contact.create",
            &fields(
                json!({"name": "Ivan", "phone": "+7 (916) 123-45-67", "email": "Ivan@Example.com"}),
            ),
            None,
        )
        .await
        .unwrap();
    let found = |field: &str, value: &str| {
        let key = LookupKey {
            field: field.into(),
            value: json!(value),
        };
        let planfix = vendor("planfix");
        let ctx = context(&settings, &creds, &http, "run/2/contact");
        async move {
            planfix
                .find(&ctx, "planfix.contact.create", &[key])
                .await
                .unwrap()
        }
    };
    assert_eq!(
        found("phone", "89161234567").await.as_deref(),
        Some(made.id.as_str())
    );
    assert_eq!(
        found("email", "ivan@example.com").await.as_deref(),
        Some(made.id.as_str())
    );
    assert_eq!(found("phone", "+7 916 000 00 00").await, None);
    assert_ne!(near.id, made.id);
    let contact = pf.contact(made.id.parse().unwrap()).unwrap();
    assert_eq!(contact["phones"][0]["number"], "+7 (916) 123-45-67");
}

/// `newMessage` carries the visitor and the message; `getTask` gives the
/// chat task's number; Planfix refuses a wrong chat key by name.
#[tokio::test]
async fn chat_messages_reach_the_chat_and_its_task_number_is_read() {
    let pf = FakePlanfix::start("pf-full", "pf-chat-key").await.unwrap();
    let http = VendorClient::new();
    let settings = settings(&pf);
    let creds = credentials("pf-full");
    let ctx = context(&settings, &creds, &http, "run/1/chat");
    let planfix = vendor("planfix");
    planfix
        .execute(&ctx, "planfix.chat.message", &fields(json!({
            "chat_id": "v-1", "contact_id": "v-1", "contact_name": "Ivan", "contact_phone": "+7 (916) 123-45-67",
            "title": "Чат с Ivan", "message": "Здравствуйте", "attachments": [{"name": "a.png", "url": "https://f.example/a.png"}],
            "data": {"browser": "Firefox"}})), None)
        .await
        .unwrap();
    let messages = pf.chat_messages("v-1");
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].text, "Здравствуйте");
    assert_eq!(
        messages[0].attachments,
        vec![("a.png".to_owned(), "https://f.example/a.png".to_owned())]
    );
    assert_eq!(
        messages[0].data.get("browser").map(String::as_str),
        Some("Firefox")
    );
    let task = planfix
        .execute(
            &ctx,
            "planfix.chat.task",
            &fields(json!({"chat_id": "v-1"})),
            None,
        )
        .await
        .unwrap();
    assert!(task.record["number"].as_i64().unwrap() >= 1001, "{task:?}");
    let unknown = planfix
        .execute(
            &ctx,
            "planfix.chat.task",
            &fields(json!({"chat_id": "nobody"})),
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(unknown, ActionError::NotYet(_)), "{unknown:?}");
    let mut wrong = creds.clone();
    wrong.insert("planfix_token".into(), "pf-wrong-chat-key".into());
    let ctx = context(&settings, &wrong, &http, "run/2/chat");
    let err = planfix
        .execute(&ctx, "planfix.chat.message", &fields(json!({"chat_id": "v-1", "contact_id": "v-1", "contact_name": "Ivan", "message": "x"})), None)
        .await
        .unwrap_err();
    assert!(err.credentials_refused().is_some(), "{err:?}");
    assert!(!err.to_string().contains("pf-wrong-chat-key"));
}

/// A chat message whose answer was lost is read back from the chat task's
/// comments; one that never arrived is not found; text sent before the
/// attempt began does not count. A chat with no task yet is "unknown"
/// until the grace period has passed.
#[tokio::test]
async fn a_lost_chat_message_is_read_back_from_the_task_comments() {
    let pf = FakePlanfix::start("pf-full", "pf-chat-key").await.unwrap();
    let http = VendorClient::new();
    let settings = settings(&pf);
    let creds = credentials("pf-full");
    let ctx = context(&settings, &creds, &http, "run/1/chat");
    let planfix = vendor("planfix");
    let message = |text: &str| fields(json!({"chat_id": "v-1", "contact_id": "v-1", "contact_name": "Ivan", "message": text}));
    assert_eq!(planfix.resend("planfix.chat.message", &message("hi")), Resend::ReadBack);
    let files_only = fields(json!({"chat_id": "v-1", "contact_id": "v-1", "contact_name": "Ivan", "message": "",
        "attachments": [{"name": "a.png", "url": "https://f.example/a.png"}]}));
    assert_eq!(planfix.resend("planfix.chat.message", &files_only), Resend::Unsafe);

    let since = chrono::Utc::now();
    let nothing = planfix.find_sent(&ctx, "planfix.chat.message", &message("first"), since).await.unwrap();
    assert!(matches!(nothing, Sent::Unknown(_)), "no task yet: {nothing:?}");
    let long_ago = since - chrono::Duration::seconds(600);
    let nothing = planfix.find_sent(&ctx, "planfix.chat.message", &message("first"), long_ago).await.unwrap();
    assert_eq!(nothing, Sent::NotSent, "no task long after the attempt");

    planfix.execute(&ctx, "planfix.chat.message", &message("first"), None).await.unwrap();
    pf.fail_next_on(Some("POST"), "/webchat/api", 1, Fault::DropAfterCommit);
    let lost = planfix.execute(&ctx, "planfix.chat.message", &message("second"), None).await;
    assert!(lost.is_err(), "{lost:?}");
    assert_eq!(pf.chat_messages("v-1").len(), 2, "the fake took it");
    let found = planfix.find_sent(&ctx, "planfix.chat.message", &message("second"), since).await.unwrap();
    assert!(matches!(found, Sent::Found(_)), "{found:?}");
    let missing = planfix.find_sent(&ctx, "planfix.chat.message", &message("third"), since).await.unwrap();
    assert_eq!(missing, Sent::NotSent);
    let later = since + chrono::Duration::seconds(300);
    let old = planfix.find_sent(&ctx, "planfix.chat.message", &message("first"), later).await.unwrap();
    assert_eq!(old, Sent::NotSent, "a comment from before the attempt is not it");
}

/// An operator's message reaches the visitor's chat; an unknown visitor
/// and a wrong token are refused, the token named and never shown.
#[tokio::test]
async fn a_message_reaches_the_visitor() {
    let vb = FakeVerbox::start("vb-token").await.unwrap();
    vb.add_client("v-1");
    vb.add_operator("olga");
    let http = VendorClient::new();
    let settings = json!({"base_url": vb.base_url()});
    let creds = BTreeMap::from([("token".to_owned(), "vb-token".to_owned())]);
    let ctx = context(&settings, &creds, &http, "run/1/send");
    let verbox = vendor("verbox");
    let out = verbox
        .execute(
            &ctx,
            "verbox.message.send",
            &fields(json!({"client_id": "v-1", "text": "Добрый день", "operator_login": "olga"})),
            None,
        )
        .await
        .unwrap();
    assert!(!out.id.is_empty());
    let sent = vb.sent_to_client("v-1");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["message"]["text"], "Добрый день");
    assert_eq!(sent[0]["operator"]["login"], "olga");
    let err = verbox
        .execute(
            &ctx,
            "verbox.message.send",
            &fields(json!({"client_id": "v-404", "text": "x"})),
            None,
        )
        .await
        .unwrap_err();
    assert!(
        !err.is_transient() && err.to_string().contains("client not found"),
        "{err}"
    );
    let bad = BTreeMap::from([("token".to_owned(), "vb-wrong-token".to_owned())]);
    let err = verbox
        .execute(
            &context(&settings, &bad, &http, "run/2/send"),
            "verbox.message.send",
            &fields(json!({"client_id": "v-1", "text": "x"})),
            None,
        )
        .await
        .unwrap_err();
    assert!(err.credentials_refused().is_some(), "{err:?}");
    assert!(!err.to_string().contains("vb-wrong-token"));
    assert_eq!(vb.sent_to_client("v-1").len(), 1);
}
