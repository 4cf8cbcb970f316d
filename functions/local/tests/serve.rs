//! `crmbridge serve` as a user runs it: the real binary, over HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Server, client, pause, runs, serve};

use serde_json::{Value, json};

async fn create_connection(server: &Server, key: &str) -> String {
    let response = client()
        .post(format!("{}/v1/connections", server.base))
        .bearer_auth(key)
        .json(&json!({"app": "generic", "name": "Shop", "settings": {"event_id_pointer": "/id", "kind": "order.created"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    body["webhook_path"].as_str().unwrap().to_owned()
}

async fn post_webhooks(
    server: &Server,
    path: &str,
    ids: std::ops::Range<usize>,
) -> BTreeSet<String> {
    let mut accepted = BTreeSet::new();
    for n in ids {
        let response = client()
            .post(format!("{}{path}", server.base))
            .json(&json!({"id": format!("order-{n}"), "sum": n}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "webhook {n}");
        let body: Value = response.json().await.unwrap();
        accepted.insert(body["event_ids"][0].as_str().unwrap().to_owned());
    }
    accepted
}

fn outbox_len(data_dir: &Path) -> i64 {
    let conn = rusqlite::Connection::open(data_dir.join("crmbridge.db")).unwrap();
    conn.query_row("SELECT count(*) FROM outbox", [], |row| row.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_accepted_before_a_sigkill_are_each_dispatched_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    // 1. Dispatching normally, killed with SIGKILL right after the last 202.
    let first = serve(&data, 4);
    let key = first
        .owner_key
        .clone()
        .expect("a first start prints the owner key");
    let path = create_connection(&first, &key).await;
    let mut accepted = post_webhooks(&first, &path, 0..30).await;
    drop(first); // Child::kill is SIGKILL on Unix

    // 2. Accept-only: every event stays on disk, then SIGKILL again.
    let second = serve(&data, 0);
    assert_eq!(second.owner_key, None, "the owner key is printed once only");
    accepted.extend(post_webhooks(&second, &path, 30..60).await);
    drop(second);
    assert!(
        outbox_len(&data) >= 30,
        "the accept-only run dispatched something"
    );
    assert_eq!(accepted.len(), 60);

    // 3. A normal start drains everything.
    let third = serve(&data, 4);
    let deadline = Instant::now() + Duration::from_secs(60);
    while outbox_len(&data) > 0 {
        assert!(Instant::now() < deadline, "the outbox never drained");
        pause().await;
    }
    let runs = runs(&third, &key).await;
    let dispatched: Vec<String> = runs
        .iter()
        .map(|r| r["event_id"].as_str().unwrap().to_owned())
        .collect();
    let unique: BTreeSet<String> = dispatched.iter().cloned().collect();
    assert_eq!(dispatched.len(), 60, "runs: {}", dispatched.len());
    assert_eq!(unique, accepted, "every accepted event has exactly one run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_health_and_precise_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir.path().join("data"), 2);
    let key = server.owner_key.clone().unwrap();
    let http = client();
    let health: Value = http
        .get(format!("{}/health", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, json!({"status": "ok"}));
    let path = create_connection(&server, &key).await;

    let checks: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            http.post(format!("{}/hooks/con_nope/x", server.base))
                .body("{}"),
            404,
            "not_found",
        ),
        (
            http.post(format!("{}{}x", server.base, path)).body("{}"),
            401,
            "unauthorized",
        ),
        (
            http.post(format!("{}{path}", server.base)).body("{"),
            400,
            "bad_request",
        ),
        (
            // Its own client: the server answers 413 without reading the
            // body and closes that connection, which a pooled client would
            // otherwise try to reuse for the next check.
            client()
                .post(format!("{}{path}", server.base))
                .body(vec![b'{'; 1024 * 1024 + 1]),
            413,
            "payload_too_large",
        ),
        (
            http.get(format!("{}/v1/runs", server.base)),
            401,
            "unauthorized",
        ),
        (
            http.get(format!("{}/v1/runs", server.base))
                .bearer_auth(&key)
                .query(&[("limit", "0")]),
            400,
            "bad_request",
        ),
        (
            http.get(format!("{}/v1/runs", server.base))
                .bearer_auth(&key)
                .query(&[("colour", "red")]),
            400,
            "bad_request",
        ),
        (
            http.post(format!("{}/v1/connections", server.base))
                .bearer_auth(&key)
                .body("{\"app\": 1}"),
            400,
            "bad_request",
        ),
        (
            http.post(format!("{}/v1/connections", server.base))
                .bearer_auth(&key)
                .json(&json!({"app": "nope", "name": ""})),
            422,
            "invalid",
        ),
        (
            http.delete(format!("{}/v1/runs", server.base))
                .bearer_auth(&key),
            405,
            "method_not_allowed",
        ),
        (
            http.get(format!("{}/v2/nothing", server.base)),
            404,
            "not_found",
        ),
    ];
    for (request, status, code) in checks {
        let response = request.send().await.unwrap();
        let got = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            (got, body["error"]["code"].as_str().unwrap()),
            (status, code),
            "{body}"
        );
        assert!(body["error"]["field"].is_string(), "no field named: {body}");
    }
    // The 422 names every problem.
    let body: Value = http
        .post(format!("{}/v1/connections", server.base))
        .bearer_auth(&key)
        .json(&json!({"app": "nope", "name": ""}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fields: Vec<&str> = body["error"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["name", "app"]);

    // A real delivery: accepted, then a duplicate, then visible as a run.
    let first = http
        .post(format!("{}{path}", server.base))
        .json(&json!({"id": "A-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 202);
    let again = http
        .post(format!("{}{path}", server.base))
        .json(&json!({"id": "A-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let runs = runs(&server, &key).await;
        if let Some(run) = runs.first() {
            assert_eq!(runs.len(), 1);
            assert_eq!(run["status"], "no_match");
            let id = run["id"].as_str().unwrap();
            let full: Value = http
                .get(format!("{}/v1/runs/{id}", server.base))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(full["event"]["data"], json!({"id": "A-1"}));
            break;
        }
        assert!(Instant::now() < deadline, "the webhook never became a run");
        pause().await;
    }
}

async fn accepted_webhook(server: &Server, path: &str, id: &str) {
    let response = client()
        .post(format!("{}{path}", server.base))
        .json(&json!({"id": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "webhook {id}");
}

async fn health(server: &Server) -> (u16, Value) {
    let response = client()
        .get(format!("{}/health", server.base))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_the_same_data_directory_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = serve(&data, 1);
    let key = first.owner_key.clone().unwrap();
    let path = create_connection(&first, &key).await;

    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_crmbridge"))
        .args(["serve", "--port", "0", "--data-dir"])
        .arg(&data)
        .env("CRMBRIDGE_LOG", "warn")
        .env_remove("CRMBRIDGE_ENCRYPTION_KEYS")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!("the second serve is still running on a data directory in use");
        }
        pause().await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut second.stdout.take().unwrap(), &mut stdout).unwrap();
    assert!(!status.success(), "{status}: {stderr}");
    assert!(
        stderr.contains(&format!("pid {}", first.child.id())),
        "the error does not name the holder's pid {}: {stderr}",
        first.child.id()
    );
    assert!(
        !stdout.contains("listening"),
        "the second serve listened: {stdout}"
    );
    let lock = std::fs::read_to_string(data.join("crmbridge.lock")).unwrap();
    assert_eq!(lock.trim(), first.child.id().to_string());

    // The first keeps serving.
    assert_eq!(health(&first).await, (200, json!({"status": "ok"})));
    accepted_webhook(&first, &path, "after-the-second").await;

    // Its death (SIGKILL) releases the lock: the next start succeeds.
    drop(first);
    let third = serve(&data, 0);
    assert_eq!(health(&third).await, (200, json!({"status": "ok"})));
    let lock = std::fs::read_to_string(data.join("crmbridge.lock")).unwrap();
    assert_eq!(lock.trim(), third.child.id().to_string());
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every file in the data directory with its mode.
#[cfg(unix)]
fn modes(dir: &Path) -> std::collections::BTreeMap<String, u32> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            (
                entry.file_name().to_string_lossy().into_owned(),
                mode(&entry.path()),
            )
        })
        .collect()
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_and_its_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let expected: BTreeSet<&str> = [
        "crmbridge.db",
        "crmbridge.db-wal",
        "crmbridge.db-shm",
        "crmbridge.lock",
        "encryption.keys",
    ]
    .into();
    let server = serve(&data, 1);
    let key = server.owner_key.clone().unwrap();
    let path = create_connection(&server, &key).await;
    accepted_webhook(&server, &path, "private-1").await;
    assert_eq!(mode(&data), 0o700, "the data directory");
    let found = modes(&data);
    let names: BTreeSet<&str> = found.keys().map(String::as_str).collect();
    assert_eq!(names, expected, "{found:?}");
    for (name, mode) in &found {
        assert_eq!(*mode, 0o600, "{name} is {mode:o}");
    }

    // Loosened by hand while stopped: tightened at the next start, and said.
    drop(server);
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    for name in &expected {
        let file = data.join(name);
        if file.exists() {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let server = serve(&data, 1);
    accepted_webhook(&server, &path, "private-2").await;
    assert_eq!(mode(&data), 0o700, "the data directory");
    for (name, mode) in modes(&data) {
        assert_eq!(mode, 0o600, "{name} is {mode:o}");
    }
    let logs = server.logs.lock().unwrap().clone();
    assert!(
        logs.contains("restricted permissions"),
        "the tightening was not logged:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_writes_through_the_store_and_live_needs_no_io() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = serve(&data, 1);
    assert_eq!(health(&server).await, (200, json!({"status": "ok"})));
    let live = client()
        .get(format!("{}/live", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    assert_eq!(live.json::<Value>().await.unwrap(), json!({"status": "ok"}));
    // The probe is a real write: its item is in the store, expiring.
    let db = data.join("crmbridge.db");
    let probes: Vec<(String, Option<i64>)> = {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let mut stmt = conn
            .prepare("SELECT sk, expires_at FROM items WHERE pk = 'HEALTH'")
            .unwrap();
        stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(probes.len(), 1, "{probes:?}");
    assert!(probes[0].1.is_some(), "the probe item never expires");

    // Another writer holds SQLite's write lock: the store cannot write, so
    // health is 503 (after the probe's 5 s timeout) while live stays 200.
    let blocker = rusqlite::Connection::open(&db).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    // The last good answer is reused for a second: wait for a fresh probe.
    let deadline = Instant::now() + Duration::from_secs(30);
    let unavailable = loop {
        let (status, body) = health(&server).await;
        if status == 503 {
            break body;
        }
        assert_eq!(status, 200, "{body}");
        assert!(Instant::now() < deadline, "health never noticed the lock");
        pause().await;
    };
    assert_eq!(unavailable["status"], "unavailable", "{unavailable}");
    let error = unavailable["error"].as_str().unwrap();
    assert!(error.contains("store"), "{error}");
    assert!(
        !error.contains(&*data.to_string_lossy()),
        "the answer names the disk: {error}"
    );
    let live = client()
        .get(format!("{}/live", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);

    // The lock goes: health recovers.
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = health(&server).await;
        if status == 200 {
            assert_eq!(body, json!({"status": "ok"}));
            break;
        }
        assert!(Instant::now() < deadline, "health never recovered: {body}");
        pause().await;
    }
}

/// The value of one Prometheus sample line (`name{labels} value`), 0 when
/// the series is not there yet.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `/metrics` counts what was sent: each new event once, each repeated
/// delivery as a duplicate, each run by its status, with the tenant and
/// app as labels. Then `GET /v1/runs?format=ndjson` exports every run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_was_sent_and_the_run_log_exports_as_ndjson() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir.path().join("data"), 2);
    let key = server.owner_key.clone().unwrap();
    let path = create_connection(&server, &key).await;
    let tenant = common::get_json(&server, &key, "/v1/tenant").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    post_webhooks(&server, &path, 0..12).await;
    for n in 0..5 {
        // The same ids again: answered as duplicates.
        let response = client()
            .post(format!("{}{path}", server.base))
            .json(&json!({"id": format!("order-{n}"), "sum": n}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "duplicate {n}");
    }
    let accepted = format!(r#"crmbridge_events_accepted_total{{tenant="{tenant}",app="generic"}}"#);
    let duplicate = format!(r#"crmbridge_events_duplicate_total{{tenant="{tenant}",app="generic"}}"#);
    let no_match = format!(r#"crmbridge_runs_total{{tenant="{tenant}",automation="-",status="no_match"}}"#);
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let response = client()
            .get(format!("{}/metrics", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"),
            "{:?}",
            response.headers()
        );
        let text = response.text().await.unwrap();
        if sample(&text, &no_match) >= 12.0 {
            break text;
        }
        assert!(Instant::now() < deadline, "the runs were never counted:\n{text}");
        pause().await;
    };
    assert_eq!(sample(&text, &accepted), 12.0, "{text}");
    assert_eq!(sample(&text, &duplicate), 5.0, "{text}");
    assert_eq!(sample(&text, &no_match), 12.0, "{text}");
    let latency = format!(r#"crmbridge_dispatch_latency_ms_count{{tenant="{tenant}",automation="-"}}"#);
    assert_eq!(sample(&text, &latency), 12.0, "{text}");
    assert!(!text.contains(&key), "no secret in the metrics");

    // The run log as an export: every run once, one JSON object per line,
    // across more than one page of the store.
    post_webhooks(&server, &path, 12..205).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = client()
            .get(format!("{}/metrics", server.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if sample(&text, &no_match) >= 205.0 {
            break;
        }
        assert!(Instant::now() < deadline, "not every run was dispatched");
        pause().await;
    }
    let response = client()
        .get(format!("{}/v1/runs?format=ndjson&status=no_match", server.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let export = response.text().await.unwrap();
    let runs: Vec<Value> = export
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let events: BTreeSet<&str> = runs.iter().map(|r| r["event_id"].as_str().unwrap()).collect();
    assert_eq!((runs.len(), events.len()), (205, 205));
    assert!(runs.iter().all(|r| r["status"] == "no_match"));
    for (query, field) in [("format=ndjson&limit=5", "limit"), ("format=csv", "format")] {
        let response = client()
            .get(format!("{}/v1/runs?{query}", server.base))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["field"], field, "{body}");
    }
}
