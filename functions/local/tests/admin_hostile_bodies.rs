//! Hostile and wrong-shaped admin bodies through the real `crmbridge serve`:
//! 40,000-deep YAML and JSON are refused by the nesting limit before any
//! parser runs (and after the caller's role was checked), while the server
//! keeps answering health checks and webhooks; deserialisation errors name
//! the field and the expected type but never echo the value, in the answer
//! or in the log; the `Bearer` scheme is matched case-insensitively.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Server, client, pause, serve_logging, serve_with};

/// The log filter that makes the server log each admin body's parse time.
const PARSE_TIMES: &str = "warn,crmbridge_api=debug";

/// The `parse_us` of every refused body the server logged so far.
/// The server's log so far, without colour escape sequences (the text
/// logger colours field names on a terminal).
fn plain_logs(server: &Server) -> String {
    let logs = server.logs.lock().unwrap().clone();
    let mut plain = String::with_capacity(logs.len());
    let mut chars = logs.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// How many admin bodies were parsed and accepted so far.
fn bodies_parsed(server: &Server) -> usize {
    plain_logs(server)
        .lines()
        .filter(|line| line.contains("admin body parsed") && line.contains("refused=false"))
        .count()
}

fn logged_parse_times(server: &Server) -> Vec<Duration> {
    plain_logs(server)
        .lines()
        .filter(|line| line.contains("admin body parsed") && line.contains("refused=true"))
        .filter_map(|line| {
            let rest = &line[line.find("parse_us=")? + "parse_us=".len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok().map(Duration::from_micros)
        })
        .collect()
}
use reqwest::Method;
use serde_json::{Value, json};

/// Every row of the store but the health probe's (health writes one).
fn dump(db: &Path) -> Vec<(String, String, i64, String)> {
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap();
    let mut stmt = conn
        .prepare("SELECT pk, sk, version, body FROM items WHERE pk <> 'HEALTH' ORDER BY pk, sk")
        .unwrap();
    stmt.query_map([], |row| {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

async fn call(
    server: &Server,
    method: Method,
    authorization: &str,
    path: &str,
    content_type: &str,
    body: String,
) -> (u16, String) {
    call_with(
        &client(),
        server,
        method,
        authorization,
        path,
        content_type,
        body,
    )
    .await
}

/// [`call`] on a given client: a warm connection, for timing.
async fn call_with(
    http: &reqwest::Client,
    server: &Server,
    method: Method,
    authorization: &str,
    path: &str,
    content_type: &str,
    body: String,
) -> (u16, String) {
    let response = http
        .request(method, format!("{}{path}", server.base))
        .header("authorization", authorization)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

async fn new_key(server: &Server, owner: &str, role: &str) -> String {
    let (status, body) = call(
        server,
        Method::POST,
        &format!("Bearer {owner}"),
        "/v1/keys",
        "application/json",
        json!({"role": role}).to_string(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A generic connection; returns its id and webhook URL.
async fn connection(server: &Server, admin: &str) -> (String, String) {
    let (status, body) = call(
        server,
        Method::POST,
        &format!("Bearer {admin}"),
        "/v1/connections",
        "application/json",
        json!({"app": "generic", "name": "Shop", "settings": {"event_id_pointer": "/id", "kind": "order.created"}})
            .to_string(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let view: Value = serde_json::from_str(&body).unwrap();
    (
        view["id"].as_str().unwrap().to_owned(),
        view["webhook_url"].as_str().unwrap().to_owned(),
    )
}

const DEPTH: usize = 40_000;

/// 40,000-deep automations in YAML, each nesting a different way.
fn hostile_automations() -> Vec<(&'static str, String)> {
    let head = "id: deep\nname: Deep\ntrigger: {connection: con_x, event: generic.x}\n";
    vec![
        (
            "flow sequences [[[…]]]",
            format!("{head}steps: {}{}\n", "[".repeat(DEPTH), "]".repeat(DEPTH)),
        ),
        (
            "flow mappings {a: {a: …}}",
            format!(
                "{head}steps: {}1{}\n",
                "{a: ".repeat(DEPTH),
                "}".repeat(DEPTH)
            ),
        ),
        (
            "block sequences - - - …",
            format!("{head}steps:\n{}x\n", "- ".repeat(DEPTH)),
        ),
    ]
}

fn assert_refused_for_depth(status: u16, body: &str, what: &str) {
    assert_eq!(status, 400, "{what}: {body}");
    let error = &serde_json::from_str::<Value>(body).unwrap()["error"];
    assert_eq!(error["code"], "bad_request", "{what}: {body}");
    assert_eq!(error["field"], "body", "{what}: {body}");
    assert_eq!(
        error["message"], "nested deeper than 64 levels",
        "{what}: {body}"
    );
}

/// Waits (with a deadline) until the log holds `count` refused parses.
async fn wait_for_parse_times(server: &Server, count: usize) -> Vec<Duration> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let times = logged_parse_times(server);
        if times.len() >= count {
            return times;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} parse times logged",
            times.len()
        );
        pause().await;
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_bodies_are_refused_by_the_limit_while_the_server_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = serve_logging(&data, 1, &["--tick-interval", "1h"], PARSE_TIMES);
    let owner = server.owner_key.clone().unwrap();
    let admin = new_key(&server, &owner, "admin").await;
    let viewer = new_key(&server, &owner, "viewer").await;
    let (_, webhook_url) = connection(&server, &admin).await;
    let db = data.join("crmbridge.db");
    let before = dump(&db);
    let automations = hostile_automations();

    // A viewer's hostile body is refused by the depth limit (a linear scan
    // that parses nothing runs before the role check); a viewer's harmless
    // automation is refused on its role, and is never parsed.
    let (status, body) = call(
        &server,
        Method::POST,
        &format!("Bearer {viewer}"),
        "/v1/automations",
        "application/yaml",
        automations[0].1.clone(),
    )
    .await;
    assert_refused_for_depth(status, &body, "a viewer's deep automation");
    let scans = wait_for_parse_times(&server, 1).await.len();
    // The set-up's own bodies (keys, the connection) were parsed.
    let parsed_before = bodies_parsed(&server);
    assert!(parsed_before > 0, "no parse is logged: {}", plain_logs(&server));
    let (status, body) = call(
        &server,
        Method::POST,
        &format!("Bearer {viewer}"),
        "/v1/automations",
        "application/yaml",
        "id: harmless\nname: x\ntrigger: {connection: c, event: generic.x}\nsteps: []\n".to_owned(),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("\"forbidden\""), "{body}");
    assert_eq!(
        logged_parse_times(&server).len(),
        scans,
        "the viewer's body was parsed"
    );
    assert_eq!(
        bodies_parsed(&server),
        parsed_before,
        "the viewer's body was parsed"
    );

    // An admin's hostile bodies: 400 naming the limit. Two times: the
    // round trip on loopback (the whole request: read, authenticate,
    // scan, answer) and the server's own parse time from its debug log.
    let http = client();
    for (what, yaml) in &automations {
        let logged_before = logged_parse_times(&server).len();
        let mut times = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            let (status, body) = call_with(
                &http,
                &server,
                Method::POST,
                &format!("Bearer {admin}"),
                "/v1/automations",
                "application/yaml",
                yaml.clone(),
            )
            .await;
            times.push(started.elapsed());
            assert_refused_for_depth(status, &body, what);
        }
        let parse =
            wait_for_parse_times(&server, logged_before + 5).await[logged_before..].to_vec();
        println!(
            "hostile YAML body, {what}, {DEPTH} deep, {} KiB: server parse median {:?} (max {:?}); round trip median {:?} (max {:?}); 5 requests",
            yaml.len() / 1024,
            median(parse.clone()),
            parse.iter().max().unwrap(),
            median(times.clone()),
            times.iter().max().unwrap(),
        );
    }
    let deep_json = format!(
        r#"{{"app": "generic", "name": "x", "settings": {}{}}}"#,
        "[".repeat(DEPTH),
        "]".repeat(DEPTH)
    );
    let logged_before = logged_parse_times(&server).len();
    let started = Instant::now();
    let (status, body) = call_with(
        &http,
        &server,
        Method::POST,
        &format!("Bearer {admin}"),
        "/v1/connections",
        "application/json",
        deep_json,
    )
    .await;
    let round_trip = started.elapsed();
    let parse = wait_for_parse_times(&server, logged_before + 1).await[logged_before];
    println!("hostile JSON body, {DEPTH} deep: server parse {parse:?}; round trip {round_trip:?}");
    assert_refused_for_depth(status, &body, "deep JSON connection");
    assert_eq!(dump(&db), before, "a refused body changed the store");

    // Six at once; meanwhile health and a webhook are answered.
    let bad: Vec<_> = (0..6)
        .map(|n| {
            let (base, key, http) = (server.base.clone(), admin.clone(), http.clone());
            let yaml = automations[n % automations.len()].1.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let response = http
                    .post(format!("{base}/v1/automations"))
                    .bearer_auth(key)
                    .header("content-type", "application/yaml")
                    .body(yaml)
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                (status, response.text().await.unwrap(), started.elapsed())
            })
        })
        .collect();
    let health = client()
        .get(format!("{}/health", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(
        health.json::<Value>().await.unwrap(),
        json!({"status": "ok"})
    );
    let hook = client()
        .post(&webhook_url)
        .json(&json!({"id": "while-hostile-1", "sum": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(hook.status(), 202);
    let mut times = Vec::new();
    for task in bad {
        let (status, body, took) = task.await.unwrap();
        assert_refused_for_depth(status, &body, "concurrent hostile body");
        times.push(took);
    }
    println!(
        "6 concurrent hostile YAML bodies: median {:?} per request (max {:?})",
        median(times.clone()),
        times.iter().max().unwrap()
    );
    // Nothing was saved: no automation exists.
    let (status, body) = call(
        &server,
        Method::GET,
        &format!("Bearer {admin}"),
        "/v1/automations",
        "application/json",
        String::new(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["items"],
        json!([])
    );
}

/// Each case: who, method, path, content type, body, the secret inside it,
/// and the field the error must name.
struct Case {
    key: &'static str,
    method: Method,
    path: String,
    content_type: &'static str,
    body: String,
    secret: &'static str,
    field: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deserialisation_errors_never_echo_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_logging(
        &dir.path().join("data"),
        1,
        &["--tick-interval", "1h"],
        "info",
    );
    let owner = server.owner_key.clone().unwrap();
    let admin = new_key(&server, &owner, "admin").await;
    let (connection_id, _) = connection(&server, &admin).await;
    let automation = |steps: &str| {
        format!(
            "id: a1\nname: A\ntrigger: {{connection: {connection_id}, event: generic.order.created}}\nsteps:\n{steps}"
        )
    };
    let json = "application/json";
    let cases = vec![
        Case {
            key: "admin",
            method: Method::POST,
            path: "/v1/connections".into(),
            content_type: json,
            body: r#"{"app": "generic", "name": "x", "credentials": "WRONGSHAPE-SECRET-3141"}"#.into(),
            secret: "WRONGSHAPE-SECRET-3141",
            field: "credentials",
        },
        Case {
            key: "admin",
            method: Method::POST,
            path: "/v1/connections".into(),
            content_type: json,
            body: r#"{"app": "generic", "name": "x", "credentials": 27182818284}"#.into(),
            secret: "27182818284",
            field: "credentials",
        },
        Case {
            key: "admin",
            method: Method::POST,
            path: "/v1/connections".into(),
            content_type: json,
            body: r#"{"app": "generic", "name": "x", "credentials": {"token": 1.6180339887}}"#
                .into(),
            secret: "1.6180339887",
            field: "credentials.token",
        },
        Case {
            key: "admin",
            method: Method::POST,
            path: "/v1/connections".into(),
            content_type: json,
            body: r#"{"app": "generic", "name": "x", "credentials": {"token": {"nested": "NESTED-SECRET-5772"}}}"#.into(),
            secret: "NESTED-SECRET-5772",
            field: "credentials.token",
        },
        Case {
            key: "admin",
            method: Method::PATCH,
            path: format!("/v1/connections/{connection_id}"),
            content_type: json,
            body: r#"{"credentials": "PATCH-SECRET-1414"}"#.into(),
            secret: "PATCH-SECRET-1414",
            field: "credentials",
        },
        Case {
            key: "admin",
            method: Method::PATCH,
            path: format!("/v1/connections/{connection_id}"),
            content_type: json,
            body: r#"{"replace_credentials": "BOOL-SECRET-1732"}"#.into(),
            secret: "BOOL-SECRET-1732",
            field: "replace_credentials",
        },
        Case {
            key: "owner",
            method: Method::POST,
            path: "/v1/keys".into(),
            content_type: json,
            body: r#"{"role": "VARIANT-SECRET-2236"}"#.into(),
            secret: "VARIANT-SECRET-2236",
            field: "role",
        },
        Case {
            key: "admin",
            method: Method::POST,
            path: "/v1/automations".into(),
            content_type: "application/yaml",
            body: automation(
                "  - id: s1\n    action: generic.x\n    connection: c\n    dedupe: {mode: YAML-VARIANT-SECRET-2449, by: [phone]}\n",
            ),
            secret: "YAML-VARIANT-SECRET-2449",
            field: "steps[0].dedupe",
        },
        Case {
            key: "admin",
            method: Method::POST,
            path: "/v1/automations".into(),
            content_type: "application/yaml",
            body: automation("  - YAML-TYPE-SECRET-3162\n"),
            secret: "YAML-TYPE-SECRET-3162",
            field: "steps[0]",
        },
        Case {
            key: "admin",
            method: Method::POST,
            path: "/v1/automations".into(),
            content_type: "application/yaml",
            body: automation(
                "  - id: s1\n    action: generic.x\n    connection: c\n    fields: 4669201609\n",
            ),
            secret: "4669201609",
            field: "steps[0].fields",
        },
    ];
    let count = cases.len();
    let mut failures = Vec::new();
    for case in &cases {
        let key = if case.key == "owner" { &owner } else { &admin };
        let (status, body) = call(
            &server,
            case.method.clone(),
            &format!("Bearer {key}"),
            &case.path,
            case.content_type,
            case.body.clone(),
        )
        .await;
        let error = serde_json::from_str::<Value>(&body).unwrap()["error"].clone();
        let field_ok = error["field"]
            .as_str()
            .is_some_and(|field| field.starts_with(case.field));
        let message = error["message"].as_str().unwrap_or("");
        if status != 400
            || error["code"] != "bad_request"
            || !field_ok
            || !message.contains("expected")
            || body.contains(case.secret)
        {
            failures.push(format!("{} {}: {status} {body}", case.method, case.path));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The log has a line for each refusal; wait for all of them, then
    // check none carries a secret.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logs = server.logs.lock().unwrap().clone();
        if logs.matches("request refused").count() >= count {
            for case in &cases {
                assert!(
                    !logs.contains(case.secret),
                    "the log has {}:\n{logs}",
                    case.secret
                );
            }
            break;
        }
        assert!(Instant::now() < deadline, "missing log lines:\n{logs}");
        pause().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_with(&dir.path().join("data"), 0, &["--tick-interval", "1h"]);
    let owner = server.owner_key.clone().unwrap();
    for (authorization, want) in [
        (format!("Bearer {owner}"), 200),
        (format!("bearer {owner}"), 200),
        (format!("BEARER {owner}"), 200),
        (format!("bEaReR {owner}"), 200),
        (format!("Bearer{owner}"), 401),
        (format!("bearer{owner}"), 401),
        (format!("Basic {owner}"), 401),
        ("bearer ".to_owned(), 401),
        (format!("bearer {owner}x"), 401),
    ] {
        let (status, body) = call(
            &server,
            Method::GET,
            &authorization,
            "/v1/tenant",
            "application/json",
            String::new(),
        )
        .await;
        let shown = authorization.replace(&owner, "<key>");
        assert_eq!(status, want, "{shown}: {body}");
        if want == 401 {
            assert!(body.contains("\"authorization\""), "{shown}: {body}");
        }
    }
}
