//! A generic connection that requires Standard Webhooks signatures, fed by
//! an independent implementation: the `standardwebhooks` package from
//! PyPI (installed into .tools/venv by infra/test.sh) signs, `serve`
//! verifies. A missing, wrong or stale signature is 401 naming the header,
//! and nothing is accepted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::process::Command;

use common::{client, serve};
use serde_json::{Value, json};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The headers the reference Python library makes for `body`, signed
/// `seconds_ago` seconds ago with `secret`.
fn signed_by_python(secret: &str, body: &str, seconds_ago: i64) -> Vec<(String, String)> {
    let script = r#"
import sys, json
from datetime import datetime, timezone, timedelta
from standardwebhooks.webhooks import Webhook
secret, msg_id, body, ago = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
at = datetime.now(tz=timezone.utc) - timedelta(seconds=ago)
signature = Webhook(secret).sign(msg_id, at, body)
print(json.dumps({"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())), "webhook-signature": signature}))
"#;
    let out = Command::new(common::python())
        .args(["-c", script, secret, "msg_2Lh9KRb0pzN4LePd3XiA", body])
        .arg(seconds_ago.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let headers: Value = serde_json::from_slice(&out.stdout).unwrap();
    headers
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_deliveries_are_taken_and_unsigned_wrong_or_stale_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), 2);
    let key = server.owner_key.clone().unwrap();
    // A required signature needs a secret in the standard form.
    for credentials in [json!({}), json!({"signing_secret": "hunter2-not-a-secret"})] {
        let response = client()
            .post(format!("{}/v1/connections", server.base))
            .bearer_auth(&key)
            .json(&json!({"app": "generic", "name": "Signed shop",
                "settings": {"signature": "standard_webhooks"}, "credentials": credentials}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["field"], "credentials.signing_secret", "{body}");
        assert!(!body.to_string().contains("hunter2"), "{body}");
    }
    let response = client()
        .post(format!("{}/v1/connections", server.base))
        .bearer_auth(&key)
        .json(&json!({"app": "generic", "name": "Signed shop",
            "settings": {"event_id_pointer": "/id", "kind": "order.created", "signature": "standard_webhooks"},
            "credentials": {"signing_secret": SECRET}}))
        .send()
        .await
        .unwrap();
    let created: Value = response.json().await.unwrap();
    assert!(created["id"].is_string(), "{created}");
    assert!(!created.to_string().contains("MfKQ9r8"), "the secret is never shown: {created}");
    let url = format!("{}{}", server.base, created["webhook_path"].as_str().unwrap());
    let post = |body: &str, headers: Vec<(String, String)>| {
        let mut request = client()
            .post(&url)
            .header("content-type", "application/json")
            .body(body.to_owned());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    let body = r#"{"id": "order-1", "sum": 10}"#;
    let other = "whsec_dGhpcyBpcyBub3QgdGhlIHJpZ2h0IGtleSE=";
    for (headers, field) in [
        (Vec::new(), "headers.webhook-id"),
        (signed_by_python(other, body, 0), "headers.webhook-signature"),
        (signed_by_python(SECRET, body, 600), "headers.webhook-timestamp"),
        (signed_by_python(SECRET, r#"{"id": "order-1", "sum": 99}"#, 0), "headers.webhook-signature"),
    ] {
        let (status, answer) = post(body, headers).await;
        assert_eq!(status, 401, "{answer}");
        assert_eq!(answer["error"]["code"], "unauthorized", "{answer}");
        assert!(answer.to_string().contains(field), "{field}: {answer}");
        assert!(!answer.to_string().contains("MfKQ9r8"), "{answer}");
    }
    let (status, answer) = post(body, signed_by_python(SECRET, body, 0)).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["event_ids"].as_array().unwrap().len(), 1, "{answer}");

    // Only the signed delivery was taken: one event, one run (no
    // automation matches it).
    let taken = answer["event_ids"][0].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let runs = loop {
        let runs = common::runs(&server, &key).await;
        if !runs.is_empty() {
            break runs;
        }
        assert!(std::time::Instant::now() < deadline, "the event was never dispatched");
        common::pause().await;
    };
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0]["event_id"], taken.as_str(), "{runs:#?}");
}
