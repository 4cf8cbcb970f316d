//! The emulator's own contract, with the real `dispatch` and `admin`
//! binaries and no AWS emulator: handler errors come back as
//! `InvocationError::Function` and leave the process serving, a process that
//! cannot start is reported at once (not after a timeout), and dropping a
//! `FunctionProcess` kills its process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use crmbridge_lambda_harness::{FunctionSpec, InvocationError, LambdaEmulator, workspace_binary};
use serde_json::json;

fn binary(name: &str) -> std::path::PathBuf {
    workspace_binary(name).unwrap_or_else(|err| panic!("{err}"))
}

/// Configuration that lets a function start; nothing listens at the AWS
/// endpoint, and these tests never get as far as calling it.
fn offline_env() -> Vec<(&'static str, String)> {
    let key: [u8; 32] = rand::random();
    vec![
        ("CRMBRIDGE_TABLE", "unused".to_owned()),
        ("CRMBRIDGE_EVENT_BUS", "unused".to_owned()),
        (
            "CRMBRIDGE_ENCRYPTION_KEYS",
            format!(
                "e1:{}",
                base64::engine::general_purpose::STANDARD.encode(key)
            ),
        ),
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9".to_owned()),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
    ]
}

#[tokio::test]
async fn a_handler_error_is_reported_and_the_process_keeps_serving() {
    let dispatch = LambdaEmulator::new()
        .spawn_function(binary("dispatch"), offline_env())
        .await
        .unwrap();
    for attempt in 0..2 {
        let err = dispatch
            .invoke(json!({"not": "an EventBridge event"}))
            .await
            .expect_err("a malformed event must fail");
        match err {
            InvocationError::Function { function, error } => {
                assert_eq!(function, "dispatch");
                assert!(!error.error_type.is_empty(), "{error:?}");
                assert!(!error.error_message.is_empty(), "{error:?}");
            }
            other => panic!("attempt {attempt}: {other}"),
        }
    }
    assert!(dispatch.init_duration().is_some());
    assert_eq!(dispatch.invocation_durations().len(), 2);
    assert!(dispatch.exit_status().is_none(), "still running");
}

#[tokio::test]
async fn a_function_that_cannot_start_is_reported_at_once() {
    let env: Vec<_> = offline_env()
        .into_iter()
        .filter(|(k, _)| *k != "CRMBRIDGE_TABLE")
        .collect();
    let admin = LambdaEmulator::new()
        .spawn(
            FunctionSpec::new(binary("admin"))
                .envs(env)
                .timeout(Duration::from_secs(120)),
        )
        .await
        .unwrap();
    let started = Instant::now();
    let err = admin
        .invoke(json!({}))
        .await
        .expect_err("admin cannot start");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "waited for the timeout"
    );
    match err {
        InvocationError::ProcessExited { log_tail, .. } => {
            assert!(log_tail.contains("CRMBRIDGE_TABLE"), "{log_tail}");
        }
        other => panic!("{other}"),
    }
    assert!(admin.init_duration().is_none());
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn dropping_the_handle_kills_the_process() {
    let tick = LambdaEmulator::new()
        .spawn_function(binary("tick"), offline_env())
        .await
        .unwrap();
    tick.wait_ready(Duration::from_secs(60)).await.unwrap();
    let proc_dir = format!("/proc/{}", tick.pid().unwrap());
    assert!(std::path::Path::new(&proc_dir).exists());
    drop(tick);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&proc_dir).exists() {
        assert!(Instant::now() < deadline, "{proc_dir} still exists");
        // The interval of a poll with a deadline (the kill is asynchronous).
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
