//! `http.request` against the fake receiver: what reaches the receiver
//! (method, body, key, signature, credential), what later steps get back,
//! and the public-address guard refusing before anything is sent.

use std::collections::BTreeMap;

use crate::common::{context, vendor};
use crmbridge_connectors::client::{Idempotency, VendorPolicy, VendorRequest};
use crmbridge_connectors::standard_webhooks::SigningSecret;
use crmbridge_connectors::{ActionError, VendorClient, VendorError};
use crmbridge_fakes::Fault;
use crmbridge_fakes::vendors::http::FakeReceiver;
use serde_json::{Map, Value, json};

fn fields(value: Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap()
}

#[tokio::test]
async fn a_signed_post_reaches_the_receiver_once_under_its_key_and_its_answer_is_the_output() {
    let receiver = FakeReceiver::start().await.unwrap();
    let secret = SigningSecret::generate();
    receiver.require_signature(&secret).unwrap();
    receiver.require_authorization("Bearer rcv-token-1");
    let settings = json!({"base_url": receiver.base_url(), "signature": "standard_webhooks"});
    let credentials = BTreeMap::from([
        ("authorization".to_owned(), "Bearer rcv-token-1".to_owned()),
        ("signing_secret".to_owned(), secret.clone()),
    ]);
    let http = VendorClient::new();
    let ctx = context(&settings, &credentials, &http, "run_1/notify");
    let step = fields(json!({
        "url": "/orders",
        "query": {"source": "crm"},
        "headers": {"X-Tenant": "acme"},
        "json": {"order": "A-1", "sum": 10.5},
        "on_unknown_outcome": "resend",
    }));
    let first = vendor("http")
        .execute(&ctx, "http.request.send", &step, None)
        .await
        .unwrap();
    assert_eq!(first.id, "rcv_1");
    assert_eq!(first.record["status"], 201);
    assert_eq!(first.record["body"]["received"], 1);
    assert_eq!(first.record["headers"]["content-type"], "application/json;charset=utf-8");
    // The same step again (a redelivery after a lost answer): the receiver
    // drops the repeat by its key and answers as the first time.
    let again = vendor("http")
        .execute(&ctx, "http.request.send", &step, None)
        .await
        .unwrap();
    assert_eq!(again.id, "rcv_1");
    assert_eq!(receiver.deliveries(), vec![json!({"order": "A-1", "sum": 10.5})]);
    let requests = receiver.requests();
    let sent = &requests[0];
    assert_eq!(sent.method, "POST");
    assert_eq!(sent.path, "/orders");
    assert_eq!(sent.query_param("source").as_deref(), Some("crm"));
    assert_eq!(sent.header("x-tenant"), Some("acme"));
    assert_eq!(sent.header("idempotency-key"), Some("run_1/notify"));
    assert_eq!(sent.header("webhook-id"), Some("run_1/notify"));
    assert_eq!(sent.header("content-type"), Some("application/json"));
    // The log of the fake redacts the credential; the signature held, or
    // the receiver would have answered 401.
    assert_ne!(sent.header("authorization"), Some("Bearer rcv-token-1"));
    assert_eq!(sent.status, Some(201));
}

#[tokio::test]
async fn a_wrong_signature_or_credential_is_refused_and_not_transient() {
    let receiver = FakeReceiver::start().await.unwrap();
    receiver.require_signature(&SigningSecret::generate()).unwrap();
    let settings = json!({"base_url": receiver.base_url(), "signature": "standard_webhooks"});
    let credentials =
        BTreeMap::from([("signing_secret".to_owned(), SigningSecret::generate())]);
    let http = VendorClient::new();
    let ctx = context(&settings, &credentials, &http, "run_2/notify");
    let err = vendor("http")
        .execute(&ctx, "http.request.send", &fields(json!({"url": "/x", "json": {}})), None)
        .await
        .unwrap_err();
    assert!(err.credentials_refused().is_some(), "{err:?}");
    assert!(!err.is_transient());
    assert_eq!(receiver.delivery_count(), 0);
}

#[tokio::test]
async fn statuses_become_errors_the_engine_can_act_on() {
    let receiver = FakeReceiver::start().await.unwrap();
    let settings = json!({"base_url": receiver.base_url(), "timeout_ms": 2000});
    let credentials = BTreeMap::new();
    let http = VendorClient::new();
    let ctx = context(&settings, &credentials, &http, "run_3/notify");
    let call = |url: &str| {
        let step = fields(json!({"url": url, "form": {"a": "b"}, "on_unknown_outcome": "resend"}));
        let ctx = &ctx;
        async move { vendor("http").execute(ctx, "http.request.send", &step, None).await }
    };
    let refused = call("/status/422").await.unwrap_err();
    assert!(!refused.is_transient(), "{refused:?}");
    assert!(refused.to_string().contains("422"), "{refused}");
    // A 5xx on a keyed POST is retried in the call, then transient.
    receiver.fail_next(8, Fault::ServerError);
    let unavailable = call("/orders").await.unwrap_err();
    assert!(unavailable.is_transient(), "{unavailable:?}");
    receiver.clear_faults();
    // A redirect is followed in test mode only to where it leads: here,
    // back to the receiver.
    let to = format!("{}/orders", receiver.base_url());
    let followed = call(&format!("/redirect?to={to}")).await.unwrap();
    assert_eq!(followed.record["status"], 201);
    // A form body arrives as a form.
    let form = receiver.requests().into_iter().rfind(|r| r.path == "/orders").unwrap();
    assert_eq!(form.header("content-type"), Some("application/x-www-form-urlencoded"));
    assert_eq!(form.form_pairs(), vec![("a".to_owned(), "b".to_owned())]);
}

#[tokio::test]
async fn a_post_is_not_resent_inside_the_call_after_a_lost_answer() {
    let receiver = FakeReceiver::start().await.unwrap();
    let settings = json!({"base_url": receiver.base_url()});
    let credentials = BTreeMap::new();
    let http = VendorClient::new();
    let ctx = context(&settings, &credentials, &http, "run_4/notify");
    receiver.fail_next(1, Fault::DropAfterCommit);
    // The default: a POST is not sent again when its outcome is unknown.
    let step = fields(json!({"url": "/orders", "json": {"n": 1}}));
    let err = vendor("http")
        .execute(&ctx, "http.request.send", &step, None)
        .await
        .unwrap_err();
    assert!(matches!(err, ActionError::Vendor(VendorError::Unreachable { .. })), "{err:?}");
    assert_eq!(receiver.delivery_count(), 1);
    assert_eq!(receiver.requests().len(), 1, "sent once, never again by itself");
}

#[tokio::test]
async fn outside_test_mode_a_non_public_address_is_refused_before_anything_is_sent() {
    let receiver = FakeReceiver::start().await.unwrap();
    let port = receiver.addr().port();
    let http = VendorClient::new();
    let policy = VendorPolicy::new("http", 10, std::time::Duration::from_secs(1), 1);
    for url in [
        format!("https://127.0.0.1:{port}/orders"),
        format!("https://localhost:{port}/orders"),
        format!("https://[::1]:{port}/orders"),
        format!("http://127.0.0.1:{port}/orders"),
    ] {
        let request = VendorRequest::with_body(
            reqwest::Method::POST,
            url.clone(),
            b"{}".to_vec(),
            Idempotency::Idempotent,
        )
        .public_only(true);
        let err = http.send("con_guard", &policy, &request, &[]).await.unwrap_err();
        assert!(matches!(err, VendorError::Invalid(_)), "{url}: {err:?}");
        assert!(!err.is_transient(), "{url}");
    }
    // The same request through the step: a field error naming the URL.
    let settings = json!({});
    let credentials = BTreeMap::new();
    let mut ctx = context(&settings, &credentials, &http, "run_5/notify");
    ctx.allow_any_base_url = false;
    let step = fields(json!({"url": format!("https://127.0.0.1:{port}/orders"), "json": {}}));
    let err = vendor("http")
        .execute(&ctx, "http.request.send", &step, None)
        .await
        .unwrap_err();
    assert!(matches!(&err, ActionError::Field { field, .. } if field == "fields.url"), "{err:?}");
    assert!(receiver.requests().is_empty());
}
