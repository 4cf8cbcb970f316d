//! The Verbox ↔ Planfix recipe end to end through `crmbridge serve`, against
//! the fake Verbox and Planfix: a visitor's first message makes one contact
//! (phone written with the mask) and one linked task and lands in the
//! Planfix chat; later messages join the chat; an operator's reply reaches
//! the visitor once and Planfix hears it was sent; an operator starting a
//! chat from a contact's card binds a chat; bad notifications relay nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::{Duration, Instant};

use common::{Server, client, pause, runs, serve_with};
use crmbridge_fakes::vendors::planfix::{FakePlanfix, OperatorReply};
use crmbridge_fakes::vendors::verbox::FakeVerbox;
use serde_json::{Value, json};

const PROVIDER_KEY: &str = "pk-provider-key-1";

struct Setup {
    server: Server,
    key: String,
    verbox: FakeVerbox,
    planfix: FakePlanfix,
    verbox_hook: String,
    planfix_hook: String,
    _dir: tempfile::TempDir,
}

async fn post(server: &Server, key: &str, path: &str, body: Value) -> Value {
    let response = client()
        .post(format!("{}{path}", server.base))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{path}: {status} {body}");
    body
}

async fn setup() -> Setup {
    let verbox = FakeVerbox::start("vb-token-1").await.unwrap();
    verbox.add_operator("olga");
    let planfix = FakePlanfix::start("pf-token-1", "pf-chat-key-1")
        .await
        .unwrap();
    planfix.add_user("Olga", "olga@acme.test");
    let dir = tempfile::tempdir().unwrap();
    let server = serve_with(&dir.path().join("data"), 2, &["--allow-any-vendor-url"]);
    let key = server.owner_key.clone().unwrap();
    let vb = post(
        &server,
        &key,
        "/v1/connections",
        json!({"app": "verbox", "name": "Verbox", "settings": {"base_url": verbox.base_url()},
               "credentials": {"token": "vb-token-1"}}),
    )
    .await;
    let pf = post(
        &server,
        &key,
        "/v1/connections",
        json!({"app": "planfix", "name": "Planfix",
               "settings": {"base_url": planfix.base_url(), "chat_endpoint": planfix.chat_endpoint(), "max_requests_per_second": 50, "default_region": "RU"},
               "credentials": {"token": "pf-token-1", "planfix_token": "pf-chat-key-1", "provider_key": PROVIDER_KEY}}),
    )
    .await;
    let check = post(
        &server,
        &key,
        &format!("/v1/connections/{}/check", pf["id"].as_str().unwrap()),
        json!({}),
    )
    .await;
    assert_eq!(check["ok"], true, "{check}");
    let made = post(
        &server,
        &key,
        "/v1/recipes/verbox-planfix/instantiate",
        json!({"connections": {"verbox": vb["id"], "planfix": pf["id"]},
               "parameters": {"operators": {"olga": "olga@acme.test"}, "reply_operator": "olga"}}),
    )
    .await;
    assert_eq!(made["items"].as_array().unwrap().len(), 5, "{made}");
    Setup {
        verbox_hook: format!("{}{}", server.base, vb["webhook_path"].as_str().unwrap()),
        planfix_hook: format!("{}{}", server.base, pf["webhook_path"].as_str().unwrap()),
        server,
        key,
        verbox,
        planfix,
        _dir: dir,
    }
}

impl Setup {
    /// Waits until `n` runs of `automation` are final; all runs.
    async fn settled(&self, automation: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let all = runs(&self.server, &self.key).await;
            let done = all
                .iter()
                .filter(|r| r["automation"] == automation && r["status"] != "running")
                .count();
            if done >= n && all.iter().all(|r| r["status"] != "running") {
                return all;
            }
            assert!(Instant::now() < deadline, "{automation}: {all:#?}");
            pause().await;
        }
    }

    /// Contacts crmbridge made through REST (Planfix's chat integration
    /// keeps a contact of its own for each chat).
    fn rest_contacts(&self) -> Vec<Value> {
        let chat_contacts: Vec<i64> = self
            .planfix
            .chats()
            .iter()
            .map(|c| c.planfix_contact_id)
            .collect();
        self.planfix
            .contacts()
            .into_iter()
            .filter(|c| !chat_contacts.contains(&c["id"].as_i64().unwrap()))
            .collect()
    }

    fn rest_tasks(&self) -> Vec<Value> {
        let chat_tasks: Vec<i64> = self.planfix.chats().iter().map(|c| c.task_id).collect();
        self.planfix
            .tasks()
            .into_iter()
            .filter(|t| !chat_tasks.contains(&t["id"].as_i64().unwrap()))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_and_an_operator_talk_through_planfix() {
    let s = setup().await;

    // The first message: one contact (phone masked), one linked task
    // assigned through the operator mapping, the message in the chat.
    let mut first = FakeVerbox::client_message("v-1", "m-1", "Здравствуйте, есть вопрос");
    first["client"] = json!({"clientId": "v-1", "name": "Иван", "phone": "89161234567", "email": "ivan@example.com"});
    first["operator"] = json!({"login": "olga"});
    let (status, _) = s
        .verbox
        .send_event(&s.verbox_hook, first.clone())
        .await
        .unwrap();
    assert!((200..300).contains(&status), "{status}");
    s.settled("verbox-message-to-planfix", 1).await;
    let contacts = s.rest_contacts();
    assert_eq!(contacts.len(), 1, "{contacts:#?}");
    let contact_id = contacts[0]["id"].as_i64().unwrap();
    let contact = s.planfix.contact(contact_id).unwrap();
    assert_eq!(
        contact["phones"][0]["number"], "+7 (916) 123-45-67",
        "{contact:#}"
    );
    let tasks = s.rest_tasks();
    assert_eq!(tasks.len(), 1, "{tasks:#?}");
    let task = s.planfix.task(tasks[0]["id"].as_i64().unwrap()).unwrap();
    assert_eq!(
        task["counterparty"]["id"].as_i64(),
        Some(contact_id),
        "{task:#}"
    );
    let olga = s
        .planfix
        .users()
        .into_iter()
        .find(|u| u["email"] == "olga@acme.test")
        .unwrap();
    assert_eq!(
        task["assignees"]["users"][0]["id"],
        json!(format!("user:{}", olga["id"])),
        "{task:#}"
    );
    let messages = s.planfix.chat_messages("v-1");
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].text, "Здравствуйте, есть вопрос");

    // The same delivery again, and a second message: still one contact and
    // one task; the chat has both messages, in order.
    s.verbox.send_event(&s.verbox_hook, first).await.unwrap();
    let mut second = FakeVerbox::client_message("v-1", "m-2", "Когда доставка?");
    second["client"] = json!({"clientId": "v-1", "name": "Иван", "phone": "89161234567"});
    s.verbox.send_event(&s.verbox_hook, second).await.unwrap();
    s.settled("verbox-message-to-planfix", 2).await;
    assert_eq!(s.rest_contacts().len(), 1);
    assert_eq!(s.rest_tasks().len(), 1);
    let texts: Vec<String> = s
        .planfix
        .chat_messages("v-1")
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, ["Здравствуйте, есть вопрос", "Когда доставка?"]);

    // Another visitor writing with the same phone, typed another way,
    // finds the same contact.
    let mut other = FakeVerbox::client_message("v-2", "m-3", "Это снова я");
    other["client"] = json!({"clientId": "v-2", "name": "Иван", "phone": "+7 916 123-45-67"});
    s.verbox.send_event(&s.verbox_hook, other).await.unwrap();
    s.settled("verbox-message-to-planfix", 3).await;
    assert_eq!(s.rest_contacts().len(), 1, "{:#?}", s.rest_contacts());

    // The operator answers in Planfix: Planfix is answered with the chat
    // and its contact, the visitor gets the reply once (a resent
    // notification changes nothing), and Planfix hears it was sent.
    let reply = OperatorReply {
        chat_id: "v-1".into(),
        message: "Завтра до 18:00".into(),
        message_id: Some("pf-msg-1".into()),
        user_name: "Olga".into(),
        user_last_name: "K".into(),
        ..OperatorReply::default()
    };
    for _ in 0..2 {
        let (status, answer) = s
            .planfix
            .send_operator_reply(&s.planfix_hook, PROVIDER_KEY, reply.clone())
            .await
            .unwrap();
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer, json!({"chatId": "v-1", "contactId": "v-1"}));
    }
    s.settled("planfix-reply-to-verbox", 1).await;
    let sent = s.verbox.sent_to_client("v-1");
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert_eq!(sent[0]["message"]["text"], "Завтра до 18:00");
    assert_eq!(sent[0]["operator"]["login"], "olga");
    let statuses = s.planfix.message_statuses();
    assert!(
        statuses
            .iter()
            .any(|m| m.message_id == "pf-msg-1" && m.status == "sent"),
        "{statuses:?}"
    );

    // The visitor rates the chat: a comment on the chat's linked task.
    let (status, body) = s
        .verbox
        .send_event(&s.verbox_hook, FakeVerbox::rating("v-1", "d-1", 5, "спасибо"))
        .await
        .unwrap();
    assert!((200..300).contains(&status), "{status} {body}");
    s.settled("verbox-rating-to-planfix", 1).await;
    let task_id = s.rest_tasks()[0]["id"].as_i64().unwrap();
    let comments = s.planfix.comments(task_id);
    assert!(
        comments
            .iter()
            .any(|c| c.description == "Оценка посетителя: 5 — спасибо"),
        "{comments:#?}"
    );

    // An operator starts a chat from a contact's card: the chat is bound
    // (Planfix gets its chatId and contactId); Verbox cannot reach a phone,
    // so Planfix is told the message was not delivered.
    let (status, answer) = s
        .planfix
        .send_first_message(
            &s.planfix_hook,
            PROVIDER_KEY,
            "+7 903 555-44-33",
            "Пётр",
            "Добрый день!",
            "Olga",
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["chatId"], "phone-79035554433");
    assert!(
        s.planfix
            .bound_chats()
            .iter()
            .any(|c| c.chat_id == "phone-79035554433")
    );
    s.settled("planfix-card-chat-to-verbox", 1).await;
    assert!(
        s.planfix
            .message_statuses()
            .iter()
            .any(|m| m.status == "error"),
        "{:?}",
        s.planfix.message_statuses()
    );
    assert!(s.verbox.sent_to_client("phone-79035554433").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_notifications_and_events_are_refused_and_relay_nothing() {
    let s = setup().await;
    let http = client();
    let notify = |pairs: &[(&str, &str)]| http.post(&s.planfix_hook).form(pairs).send();
    // A wrong provider key: 401, naming the key's field, never echoing it.
    let response = notify(&[
        ("cmd", "newMessage"),
        ("chatId", "v-1"),
        ("token", "guess"),
        ("message", "hi"),
        ("messageId", "1"),
    ])
    .await
    .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert!(body.to_string().contains("body.token"), "{body}");
    // Missing parameters: 400 naming them.
    let response = notify(&[
        ("cmd", "newMessage"),
        ("chatId", "v-1"),
        ("token", PROVIDER_KEY),
    ])
    .await
    .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body.to_string().contains("messageId, message"), "{body}");
    // A Verbox event without its chat, or with a malformed field: 400
    // naming the path; a wrong token: 401.
    for (event, path) in [
        (
            json!({"event": "clientSendMessage", "client": {}, "message": {"id": "1", "text": "x"}}),
            "body.client.clientId",
        ),
        (
            json!({"event": "sendRate", "client": {"clientId": "v-9"}, "rate": {"score": "great"}}),
            "body.rate.score",
        ),
        (
            json!({"event": "typing", "client": {"clientId": "v-9"}}),
            "body.event",
        ),
    ] {
        let (status, body) = s.verbox.send_event(&s.verbox_hook, event).await.unwrap();
        assert_eq!(status, 400, "{body}");
        assert!(body.to_string().contains(path), "{path}: {body}");
    }
    // A rating or a closing of a chat that never began: 422 naming the
    // chat's field, and nothing of the delivery is taken.
    for event in [
        FakeVerbox::rating("v-never", "d-1", 5, "thanks"),
        FakeVerbox::chat_closed("v-never", "d-1"),
    ] {
        let (status, body) = s.verbox.send_event(&s.verbox_hook, event).await.unwrap();
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["error"]["field"], "body.client.clientId", "{body}");
        assert!(body.to_string().contains("v-never"), "{body}");
    }
    let (status, body) = s
        .verbox
        .send_event(
            &s.verbox_hook,
            json!([FakeVerbox::chat_closed("v-never", "d-1"), FakeVerbox::client_message("v-never", "m-1", "hi")]),
        )
        .await
        .unwrap();
    assert_eq!(status, 422, "the closing comes before the first message: {body}");
    assert_eq!(body["error"]["field"], "body[0].client.clientId", "{body}");
    let (status, _) = s
        .verbox
        .send_event_with_token(
            &s.verbox_hook,
            FakeVerbox::client_message("v-9", "m-9", "x"),
            Some("wrong"),
        )
        .await
        .unwrap();
    assert_eq!(status, 401);
    // Nothing ran, nothing reached either vendor.
    let all = runs(&s.server, &s.key).await;
    assert!(all.is_empty(), "{all:#?}");
    assert!(s.planfix.chats().is_empty() && s.planfix.contacts().is_empty());
    assert!(s.verbox.sent_to_client("v-1").is_empty());
}

/// Whether a request the Planfix fake received changed anything: REST
/// writes are POSTs other than the `…/list` reads; chat commands other
/// than `getTask` and `getChatMessages`-style reads write.
fn planfix_write(r: &crmbridge_fakes::RecordedRequest) -> bool {
    if r.method != "POST" {
        return false;
    }
    if r.path.ends_with("/list") {
        return false;
    }
    !r.body.contains("cmd=getTask")
}

/// The dry run of the visitor-message automation on the event Verbox is
/// about to send (reads on: the contact is looked up in Planfix) plans
/// exactly what the run then sends, and writes nothing to Planfix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dry_run_of_a_first_message_plans_what_the_run_then_sends() {
    let s = setup().await;
    let mut first = FakeVerbox::client_message("v-dry", "m-dry", "Добрый день");
    first["client"] = json!({"clientId": "v-dry", "name": "Мария", "phone": "89160001122", "email": "maria@example.com"});
    first["operator"] = json!({"login": "olga"});
    let delivery = common::Delivery::json(&first).header("x-verbox-token", s.verbox.token());
    let writes = || s.planfix.requests().iter().filter(|r| planfix_write(r)).count();
    let plan = common::dry_run(
        &s.server,
        &s.key,
        "verbox-message-to-planfix",
        json!({"delivery": delivery.sample(), "reads": true}),
        writes,
    )
    .await;
    assert!(s.planfix.chats().is_empty(), "{plan:#}");
    let (status, _) = s.verbox.send_event(&s.verbox_hook, first).await.unwrap();
    assert!((200..300).contains(&status), "{status}");
    let all = s.settled("verbox-message-to-planfix", 1).await;
    let id = all
        .iter()
        .find(|r| r["automation"] == "verbox-message-to-planfix")
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .unwrap();
    let run = common::get_json(&s.server, &s.key, &format!("/v1/runs/{id}")).await;
    assert!(common::assert_plan_matches(&plan, &run) >= 2, "{plan:#}\n{run:#}");
}
