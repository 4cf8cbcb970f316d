//! The fake Verbox (our contract, not Verbox's): `X-Token` auth,
//! `chat/message/sendToClient` and its 400 / 404 answers,
//! `chat/message/getList`, `chat/operator/getList`, the event sender with `X-Verbox-Token` and the
//! event builders, faults.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use crmbridge_fakes::Fault;
use crmbridge_fakes::vendors::verbox::FakeVerbox;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

const TOKEN: &str = "vb-rest-token";

async fn call(vb: &FakeVerbox, token: Option<&str>, method: &str, body: &Value) -> (u16, Value) {
    let mut rb = reqwest::Client::new()
        .post(format!("{}/json/v1.0/{method}", vb.base_url()))
        .json(body);
    if let Some(t) = token {
        rb = rb.header("X-Token", t);
    }
    let resp = rb.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn send(vb: &FakeVerbox, body: Value) -> (u16, Value) {
    call(vb, Some(TOKEN), "chat/message/sendToClient", &body).await
}

fn error(code: u16, descr_has: &str) -> impl Fn(&Value) {
    let descr_has = descr_has.to_owned();
    move |v: &Value| {
        assert_eq!(v["success"], false, "{v}");
        assert_eq!(v["error"]["code"], code, "{v}");
        let descr = v["error"]["descr"].as_str().unwrap();
        assert!(descr.contains(&descr_has), "{descr} lacks {descr_has}");
    }
}

/// One request a test receiver got.
#[derive(Debug, Clone)]
struct Got {
    content_type: Option<String>,
    token: Option<String>,
    body: String,
}

/// A tiny receiver answering every POST with 200 `{"ok":true}`.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Got>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receiver() -> Receiver {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let got_task = got.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let got = got_task.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let got = got.clone();
                    async move {
                        let header =
                            |n: &str| req.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
                        let content_type = header("content-type");
                        let token = header("x-verbox-token");
                        let bytes = req.into_body().collect().await?.to_bytes();
                        got.lock().unwrap().push(Got {
                            content_type,
                            token,
                            body: String::from_utf8_lossy(&bytes).into_owned(),
                        });
                        let mut resp =
                            hyper::Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")));
                        resp.headers_mut()
                            .insert("content-type", "application/json".parse().unwrap());
                        Ok::<_, hyper::Error>(resp)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Receiver {
        url: format!("http://{addr}/chat/verbox/secret"),
        got,
        task,
    }
}

/// Source: the vendor's SDKs (`bekannax/OnlineChatSdk-Swift` `ChatApi.swift`, research D.2): `POST
/// admin.verbox.ru/json/v1.0/<method>` with `X-Token`, error envelope `{"success":false,"error":{"code","descr"}}`.
/// Our contract, not Verbox's: HTTP 401 with code 401 for a missing or wrong token; nothing is sent; the log hides the token.
#[tokio::test]
async fn missing_or_wrong_token_is_401() {
    let vb = FakeVerbox::start(TOKEN).await.unwrap();
    vb.add_client("client-1");
    let body = json!({"client": {"id": "client-1"}, "message": {"text": "hi"}});
    for token in [None, Some("wrong"), Some("")] {
        let (s, v) = call(&vb, token, "chat/message/sendToClient", &body).await;
        assert_eq!(s, 401, "{token:?}");
        assert_eq!(
            v,
            json!({"success": false, "error": {"code": 401, "descr": "Invalid token"}})
        );
    }
    assert!(vb.sent_to_client("client-1").is_empty());
    let log = vb.requests();
    assert_eq!(log[1].header("x-token"), Some("***"));
    let (s, v) = call(&vb, Some(TOKEN), "chat/message/noSuchMethod", &json!({})).await;
    assert_eq!(s, 404);
    error(404, "method not found")(&v);
}

/// Source: integrators' code for the sibling Talk-Me host (research D.2, V3): `chat/message/sendToClient` with
/// `{"client":{"id"},"operator":{"login"},"message":{"text"}}` and `{"success":true,"result":…}`. Our contract, not
/// Verbox's: `result.id` a fresh message id; attachments `{name,url}` may replace the text; bodies kept as received.
#[tokio::test]
async fn send_to_client_succeeds_for_known_client() {
    let vb = FakeVerbox::start(TOKEN).await.unwrap();
    vb.add_client("client-1");
    vb.add_operator("anna");
    let first = json!({"client": {"id": "client-1"}, "operator": {"login": "anna"}, "message": {"text": "Hello from Planfix"}});
    let (s, v) = send(&vb, first.clone()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["success"], true);
    let id1 = v["result"]["id"].as_str().unwrap().to_owned();
    let second = json!({"client": {"id": "client-1"},
                        "message": {"text": "", "attachments": [{"name": "a.pdf", "url": "https://pf.example/f/1"}]}});
    let (s, v) = send(&vb, second.clone()).await;
    assert_eq!(s, 200, "{v}");
    let id2 = v["result"]["id"].as_str().unwrap().to_owned();
    assert_ne!(id1, id2);
    assert_eq!(vb.sent_to_client("client-1"), vec![first, second]);
    assert_eq!(vb.sent_message_ids("client-1"), vec![id1, id2]);
    assert!(vb.sent_to_client("client-2").is_empty());
}

/// Source: integrators' wrappers for the same REST family (research D.2, V2/V3): `chat/message/getList` with
/// `{"client":{"clientId"},"sender":"operator","dateRange":{"start","stop","isLocal"}}` → `result` a list of clients
/// each with `messages[]` (`id`, `whoSend`, `text`, `dateTimeUTC`). Our choices: only `sendToClient` messages are
/// kept; the range is inclusive, in whole UTC seconds.
#[tokio::test]
async fn message_list_reads_back_what_was_sent() {
    let vb = FakeVerbox::start(TOKEN).await.unwrap();
    vb.add_client("client-1");
    let (s, v) = send(&vb, json!({"client": {"id": "client-1"}, "message": {"text": "first"}})).await;
    assert_eq!(s, 200, "{v}");
    let id = v["result"]["id"].as_str().unwrap().to_owned();
    let now = chrono::Utc::now();
    let range = |from: chrono::DateTime<chrono::Utc>, to: chrono::DateTime<chrono::Utc>| {
        json!({"start": from.format("%Y-%m-%d %H:%M:%S").to_string(), "stop": to.format("%Y-%m-%d %H:%M:%S").to_string(), "isLocal": false})
    };
    let minute = chrono::Duration::seconds(60);
    let (s, v) = call(&vb, Some(TOKEN), "chat/message/getList",
        &json!({"client": {"clientId": "client-1"}, "sender": "operator", "dateRange": range(now - minute, now + minute)})).await;
    assert_eq!(s, 200, "{v}");
    let messages = &v["result"][0]["messages"];
    assert_eq!(v["result"][0]["clientId"], "client-1", "{v}");
    assert_eq!(messages.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(messages[0]["id"], json!(id));
    assert_eq!(messages[0]["whoSend"], "operator");
    assert_eq!(messages[0]["text"], "first");
    assert!(messages[0]["dateTimeUTC"].as_str().unwrap().len() == 19, "{v}");
    // Outside the range, another client, or the visitors' side: none.
    for body in [
        json!({"client": {"clientId": "client-1"}, "dateRange": range(now + minute, now + minute + minute)}),
        json!({"client": {"clientId": "client-2"}}),
        json!({"client": {"clientId": "client-1"}, "sender": "client"}),
    ] {
        let (s, v) = call(&vb, Some(TOKEN), "chat/message/getList", &body).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["result"][0]["messages"], json!([]), "{body}: {v}");
    }
    let (s, v) = call(&vb, Some(TOKEN), "chat/message/getList", &json!({"client": {}})).await;
    assert_eq!(s, 400);
    error(400, "client.clientId")(&v);
    let (s, v) = call(&vb, Some(TOKEN), "chat/message/getList",
        &json!({"client": {"clientId": "client-1"}, "dateRange": {"start": "yesterday"}})).await;
    assert_eq!(s, 400);
    error(400, "dateRange.start")(&v);
}

/// Our contract, not Verbox's (its server API is undocumented): 400 `{"success":false,"error":{"code":400,"descr"}}`
/// naming the field (`client.id`, `message.text`, `message.attachments`, `operator.login`), then 404 `client not found`
/// for a visitor the fake never saw; nothing is recorded.
#[tokio::test]
async fn send_to_client_400_and_404() {
    let vb = FakeVerbox::start(TOKEN).await.unwrap();
    vb.add_client("client-1");
    vb.add_operator("anna");
    for (body, field) in [
        (json!({"message": {"text": "hi"}}), "client.id"),
        (
            json!({"client": {}, "message": {"text": "hi"}}),
            "client.id",
        ),
        (
            json!({"client": {"id": "client-1"}, "message": {"text": "  "}}),
            "message.text",
        ),
        (
            json!({"client": {"id": "client-1"}, "message": {}}),
            "message.text",
        ),
        (json!({"client": {"id": "client-1"}}), "message"),
        (
            json!({"client": {"id": "client-1"}, "message": {"text": "x", "attachments": [{"name": "a"}]}}),
            "message.attachments",
        ),
        (
            json!({"client": {"id": "client-1"}, "operator": {"login": "boris"}, "message": {"text": "hi"}}),
            "operator.login",
        ),
    ] {
        let (s, v) = send(&vb, body.clone()).await;
        assert_eq!(s, 400, "{body}");
        error(400, field)(&v);
    }
    let (s, v) = send(
        &vb,
        json!({"client": {"id": "stranger"}, "message": {"text": "hi"}}),
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(
        v,
        json!({"success": false, "error": {"code": 404, "descr": "client not found"}})
    );
    assert!(vb.sent_to_client("client-1").is_empty());
    assert!(vb.sent_to_client("stranger").is_empty());
}

/// Source: integrators' code for the sibling Talk-Me host (research D.2, `chat/operator/...` methods). Our contract,
/// not Verbox's: `chat/operator/getList` → `{"success":true,"result":[{"login","name","email"}]}` for the operator mapping check.
#[tokio::test]
async fn operator_list() {
    let vb = FakeVerbox::start(TOKEN).await.unwrap();
    let (s, v) = call(&vb, Some(TOKEN), "chat/operator/getList", &json!({})).await;
    assert_eq!((s, v), (200, json!({"success": true, "result": []})));
    vb.add_operator("anna");
    vb.add_operator_with("boris", "Boris B.", "boris@shop.example");
    let (s, v) = call(&vb, Some(TOKEN), "chat/operator/getList", &json!({})).await;
    let want = json!([
        {"login": "anna", "name": "anna", "email": "anna@operators.verbox.example"},
        {"login": "boris", "name": "Boris B.", "email": "boris@shop.example"},
    ]);
    assert_eq!((s, v["result"].clone()), (200, want.clone()));
    assert_eq!(Value::Array(vb.operators()), want);
}

/// Our contract, not Verbox's (design page "Open questions": event names after the widget's JS events, research D.1):
/// JSON events POSTed with `X-Verbox-Token`; the builders' shapes; an event registers its visitor, so a reply can follow.
#[tokio::test]
async fn send_event_with_header_registers_the_client() {
    let vb = FakeVerbox::start(TOKEN).await.unwrap();
    let rx = receiver().await;
    let (s, _) = send(
        &vb,
        json!({"client": {"id": "client-9"}, "message": {"text": "early"}}),
    )
    .await;
    assert_eq!(s, 404);

    let event = FakeVerbox::client_message("client-9", "m-1", "Hello, a question");
    let (status, answer) = vb.send_event(&rx.url, event.clone()).await.unwrap();
    assert_eq!((status, answer), (200, json!({"ok": true})));
    assert!(vb.has_client("client-9"));
    let got = rx.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].content_type.as_deref(), Some("application/json"));
    assert_eq!(got[0].token.as_deref(), Some(TOKEN));
    let body: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(body, event);
    assert_eq!(body["event"], "clientSendMessage");
    assert_eq!(body["client"], json!({"clientId": "client-9"}));
    assert_eq!(
        (
            &body["message"]["id"],
            &body["message"]["text"],
            &body["message"]["attachments"]
        ),
        (&json!("m-1"), &json!("Hello, a question"), &json!([]))
    );
    let when = body["message"]["dateTimeUTC"].as_str().unwrap();
    assert!(
        chrono::NaiveDateTime::parse_from_str(when, "%Y-%m-%d %H:%M:%S").is_ok(),
        "{when}"
    );

    // Now the reply reaches the visitor.
    let (s, _) = send(
        &vb,
        json!({"client": {"id": "client-9"}, "message": {"text": "Answer"}}),
    )
    .await;
    assert_eq!(s, 200);

    // Other token, or none.
    vb.send_event_with_token(&rx.url, FakeVerbox::chat_closed("client-9", "d-1"), None)
        .await
        .unwrap();
    vb.send_event_with_token(
        &rx.url,
        FakeVerbox::chat_closed("client-9", "d-1"),
        Some("bad"),
    )
    .await
    .unwrap();
    let got = rx.got.lock().unwrap().clone();
    assert_eq!(got[1].token, None);
    assert_eq!(got[2].token.as_deref(), Some("bad"));
    assert_eq!(
        serde_json::from_str::<Value>(&got[1].body).unwrap(),
        json!({"event": "chatClosed", "client": {"clientId": "client-9"}, "dialog": {"id": "d-1"}})
    );
}

/// Our contract, not Verbox's (design page "Open questions"; widget events `contactsUpdated`, `clientMakeSubscribe`,
/// `sendRate`, `operatorSendMessage` from the vendor's SDK READMEs, research D.1): each builder carries only its fields.
#[tokio::test]
async fn event_builders_shapes() {
    assert_eq!(
        FakeVerbox::contacts_updated("c1", "Ivan", "+79051234567", "ivan@example.com"),
        json!({"event": "contactsUpdated",
               "client": {"clientId": "c1", "name": "Ivan", "phone": "+79051234567", "email": "ivan@example.com"}})
    );
    let form =
        FakeVerbox::contact_form("c1", "Ivan", "+79051234567", "ivan@example.com", "Call me");
    assert_eq!(form["event"], "clientMakeSubscribe");
    assert_eq!(form["client"]["phone"], "+79051234567");
    assert_eq!(form["message"]["text"], "Call me");
    assert!(form["message"].get("id").is_none());
    assert!(form.get("dialog").is_none());
    assert_eq!(
        FakeVerbox::rating("c1", "d-5", 5, "Great"),
        json!({"event": "sendRate", "client": {"clientId": "c1"}, "dialog": {"id": "d-5"},
               "rate": {"score": 5, "comment": "Great"}})
    );
    let op = FakeVerbox::operator_message("c1", "m-2", "On it", "anna");
    assert_eq!(op["event"], "operatorSendMessage");
    assert_eq!(op["operator"], json!({"login": "anna"}));
    assert_eq!(op["message"]["id"], "m-2");
    assert!(op.get("rate").is_none());
}

/// Test tooling (I): injected faults change nothing. Our contract, not Verbox's: 500 / 429 in the error envelope, the
/// 429 with `Retry-After: 1`.
#[tokio::test]
async fn faults() {
    let vb = FakeVerbox::start(TOKEN).await.unwrap();
    vb.add_client("client-1");
    let body = json!({"client": {"id": "client-1"}, "message": {"text": "hi"}});
    vb.fail_next(1, Fault::ServerError);
    let (s, v) = send(&vb, body.clone()).await;
    assert_eq!(s, 500);
    error(500, "")(&v);
    vb.fail_next_on(Some("POST"), "sendToClient", 1, Fault::TooManyRequests);
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/json/v1.0/chat/message/sendToClient",
            vb.base_url()
        ))
        .header("X-Token", TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    error(429, "")(&resp.json().await.unwrap());
    assert!(vb.sent_to_client("client-1").is_empty());
    let (s, _) = send(&vb, body).await;
    assert_eq!(s, 200);
    assert_eq!(vb.fault_count(), 2);
}
