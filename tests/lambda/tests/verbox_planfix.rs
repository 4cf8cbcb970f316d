//! The Verbox ↔ Planfix recipe end to end through the real Lambda binaries
//! under the Runtime API emulator, on moto, against the Verbox and Planfix
//! fakes: the fakes post to the stand-in for API Gateway
//! ([`common::api_gateway`]); events routed by the bus are handed to
//! `dispatch`, as Lambda's asynchronous invocation would.
//!
//! Needs `CRMBRIDGE_TEST_AWS_ENDPOINT` (moto; infra/test.sh starts it) and
//! the binaries built (`cargo build --bins`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::sync::Arc;

use common::{Stack, admin_request, api_gateway, http};
use crmbridge_fakes::vendors::planfix::{FakePlanfix, OperatorReply};
use crmbridge_fakes::vendors::verbox::FakeVerbox;
use serde_json::{Value, json};

const PROVIDER_KEY: &str = "pk-lambda";
/// Lambda's asynchronous invocation: the first attempt and two retries.
const ASYNC_ATTEMPTS: usize = 3;

async fn admin(stack: &Stack, path: &str, body: Value) -> Value {
    let request = admin_request("POST", path, &stack.owner_key).json(&body);
    let (status, answer) = http(&stack.admin, request).await;
    assert!((200..300).contains(&status), "{path}: {status} {answer}");
    answer
}

/// Dispatches every routed event until nothing moves (a parked message
/// woken by its predecessor is routed again); answers every run.
async fn quiet(stack: &Stack) -> Vec<Value> {
    loop {
        let routed = stack.routing.receive_now().await;
        if routed.is_empty() {
            return stack.runs().await;
        }
        for event in &routed {
            let mut errors = Vec::new();
            for _ in 0..ASYNC_ATTEMPTS {
                match stack.dispatcher.invoke(event.clone()).await {
                    Ok(_) => break,
                    Err(err) => errors.push(err.to_string()),
                }
            }
            assert!(errors.len() < ASYNC_ATTEMPTS, "{event:#}: {errors:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_through_the_lambda_binaries() {
    let stack = Arc::new(Stack::start().await);
    let base = api_gateway(Arc::clone(&stack)).await;
    let verbox = FakeVerbox::start("vb-lambda").await.unwrap();
    verbox.add_operator("olga");
    let planfix = FakePlanfix::start("pf-lambda", "pf-chat-lambda")
        .await
        .unwrap();
    let vb = admin(
        &stack,
        "/v1/connections",
        json!({"app": "verbox", "name": "Verbox",
        "settings": {"base_url": verbox.base_url()}, "credentials": {"token": "vb-lambda"}}),
    )
    .await;
    let pf = admin(&stack, "/v1/connections", json!({"app": "planfix", "name": "Planfix",
        "settings": {"base_url": planfix.base_url(), "chat_endpoint": planfix.chat_endpoint(),
                     "max_requests_per_second": 50, "default_region": "RU"},
        "credentials": {"token": "pf-lambda", "planfix_token": "pf-chat-lambda", "provider_key": PROVIDER_KEY}})).await;
    admin(
        &stack,
        "/v1/recipes/verbox-planfix/instantiate",
        json!({"connections": {"verbox": vb["id"], "planfix": pf["id"]},
        "parameters": {"reply_operator": "olga"}}),
    )
    .await;
    let verbox_hook = format!("{base}{}", vb["webhook_path"].as_str().unwrap());
    let planfix_hook = format!("{base}{}", pf["webhook_path"].as_str().unwrap());

    // Three messages of one visitor, the first with the visitor's phone.
    for (i, text) in ["Здравствуйте", "Есть вопрос", "По доставке"]
        .iter()
        .enumerate()
    {
        let mut event = FakeVerbox::client_message("v-7", &format!("m-{i}"), text);
        event["client"] = json!({"clientId": "v-7", "name": "Анна", "phone": "8 (916) 000-11-22"});
        let (status, answer) = verbox.send_event(&verbox_hook, event).await.unwrap();
        assert!((200..300).contains(&status), "{status} {answer}");
    }
    let runs = quiet(&stack).await;
    assert!(
        runs.iter()
            .all(|r| r["status"] == "succeeded" || r["status"] == "filtered"),
        "{runs:#?}"
    );
    let texts: Vec<String> = planfix
        .chat_messages("v-7")
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, ["Здравствуйте", "Есть вопрос", "По доставке"]);
    let chat_contacts: Vec<i64> = planfix
        .chats()
        .iter()
        .map(|c| c.planfix_contact_id)
        .collect();
    let ours: Vec<Value> = planfix
        .contacts()
        .into_iter()
        .filter(|c| !chat_contacts.contains(&c["id"].as_i64().unwrap()))
        .collect();
    assert_eq!(ours.len(), 1, "{ours:#?}");
    let contact = planfix.contact(ours[0]["id"].as_i64().unwrap()).unwrap();
    assert_eq!(contact["phones"][0]["number"], "+7 (916) 000-11-22");

    // The operator answers: Planfix gets the chat back from the webhook
    // function; the visitor gets the reply once; Planfix hears "sent".
    let reply = OperatorReply {
        chat_id: "v-7".into(),
        message: "Доставим завтра".into(),
        message_id: Some("pf-lambda-1".into()),
        user_name: "Olga".into(),
        ..OperatorReply::default()
    };
    for _ in 0..2 {
        let (status, answer) = planfix
            .send_operator_reply(&planfix_hook, PROVIDER_KEY, reply.clone())
            .await
            .unwrap();
        assert_eq!(
            (status, answer),
            (200, json!({"chatId": "v-7", "contactId": "v-7"}))
        );
    }
    let runs = quiet(&stack).await;
    assert!(
        runs.iter()
            .all(|r| r["status"] == "succeeded" || r["status"] == "filtered"),
        "{runs:#?}"
    );
    let sent = verbox.sent_to_client("v-7");
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert_eq!(sent[0]["message"]["text"], "Доставим завтра");
    assert!(
        planfix
            .message_statuses()
            .iter()
            .any(|m| m.message_id == "pf-lambda-1" && m.status == "sent")
    );

    // A wrong provider key is refused at the webhook function.
    let (status, _) = planfix
        .send_operator_reply(&planfix_hook, "not-the-key", reply)
        .await
        .unwrap();
    assert_eq!(status, 401);
    assert_eq!(verbox.sent_to_client("v-7").len(), 1);
}
