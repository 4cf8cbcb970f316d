//! Bad requests to the admin API through the real `crmbridge serve`: wrong
//! keys and roles, another tenant's ids, malformed and oversize bodies,
//! invalid automations, bad query parameters, missing confirmations and
//! replays of runs that cannot be replayed. Each gets its status and a JSON
//! error naming the field, and the store — every row of the SQLite `items`
//! table — is exactly as it was before the request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Server, client, pause, serve_with};
use reqwest::Method;
use serde_json::{Value, json};

type Row = (String, String, i64, String);

/// Every row of the store, in key order.
fn dump(db: &Path) -> Vec<Row> {
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap();
    let mut stmt = conn
        .prepare("SELECT pk, sk, version, body FROM items ORDER BY pk, sk")
        .unwrap();
    stmt.query_map([], |row| {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

enum Body {
    None,
    Json(Value),
    Raw(&'static str, String),
}

async fn send(
    server: &Server,
    method: Method,
    key: Option<&str>,
    path: &str,
    body: Body,
) -> (u16, Value) {
    let mut request = client().request(method, format!("{}{path}", server.base));
    if let Some(key) = key {
        request = if key.contains(' ') {
            request.header("authorization", key)
        } else {
            request.bearer_auth(key)
        };
    }
    request = match body {
        Body::None => request,
        Body::Json(value) => request.json(&value),
        Body::Raw(content_type, text) => request.header("content-type", content_type).body(text),
    };
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {status} {text}"));
    (status, json)
}

struct World {
    server: Server,
    db: PathBuf,
    _dir: tempfile::TempDir,
    owner: String,
    owner_key_id: String,
    admin: String,
    viewer: String,
    /// A's connections (generic, calltouch, moysklad) and a no-match run.
    a_generic: String,
    a_calltouch: String,
    a_moysklad: String,
    a_run: String,
    /// The automation document of A's recipe (for variations).
    a_doc: Value,
    /// Tenant B: its owner key, key id, connection, automation, run.
    b_owner: String,
    b_key_id: String,
    b_conn: String,
    b_auto: String,
    b_doc: Value,
    b_run: String,
}

async fn ok(
    server: &Server,
    method: Method,
    key: &str,
    path: &str,
    body: Value,
    want: u16,
) -> Value {
    let (status, value) = send(server, method.clone(), Some(key), path, Body::Json(body)).await;
    assert_eq!(status, want, "{method} {path}: {value}");
    value
}

async fn no_match_run(server: &Server, key: &str, webhook_url: &str) -> String {
    let response = client()
        .post(webhook_url)
        .json(&json!({"id": "E-1", "sum": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, page) = send(server, Method::GET, Some(key), "/v1/runs", Body::None).await;
        if let Some(run) = page["items"].as_array().unwrap().first()
            && run["status"] == "no_match"
        {
            return run["id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no run: {page}");
        pause().await;
    }
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = serve_with(
        &data,
        1,
        &["--allow-any-vendor-url", "--tick-interval", "1h"],
    );
    let owner = server.owner_key.clone().unwrap();
    let s = &server;
    let tenant = ok(s, Method::GET, &owner, "/v1/tenant", json!(null), 200).await;
    let owner_key_id = tenant["key_id"].as_str().unwrap().to_owned();
    let admin = ok(
        s,
        Method::POST,
        &owner,
        "/v1/keys",
        json!({"role": "admin"}),
        201,
    )
    .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let viewer = ok(
        s,
        Method::POST,
        &owner,
        "/v1/keys",
        json!({"role": "viewer"}),
        201,
    )
    .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let generic = ok(s, Method::POST, &admin, "/v1/connections",
        json!({"app": "generic", "name": "Shop", "settings": {"event_id_pointer": "/id", "kind": "order.created"}}), 201).await;
    let ct = ok(s, Method::POST, &admin, "/v1/connections",
        json!({"app": "calltouch", "name": "Calltouch", "settings": {"site_id": "1", "base_url": "http://127.0.0.1:9"}, "credentials": {"access_token": "t"}}), 201).await;
    let ms = ok(s, Method::POST, &admin, "/v1/connections",
        json!({"app": "moysklad", "name": "MS", "settings": {"base_url": "http://127.0.0.1:9"}, "credentials": {"token": "t"}}), 201).await;
    ok(
        s,
        Method::POST,
        &admin,
        "/v1/recipes/calltouch-moysklad/instantiate",
        json!({"connections": {"calltouch": ct["id"], "moysklad": ms["id"]}}),
        201,
    )
    .await;
    ok(
        s,
        Method::POST,
        &admin,
        "/v1/automations/calltouch-request-to-moysklad/disable",
        json!(null),
        200,
    )
    .await;
    let a_doc = ok(
        s,
        Method::GET,
        &admin,
        "/v1/automations/calltouch-call-to-moysklad",
        json!(null),
        200,
    )
    .await["automation"]
        .clone();
    let a_run = no_match_run(s, &viewer, generic["webhook_url"].as_str().unwrap()).await;

    let second = ok(
        s,
        Method::POST,
        &owner,
        "/v1/tenants",
        json!({"name": "B"}),
        201,
    )
    .await;
    let b_owner = second["owner_key"]["key"].as_str().unwrap().to_owned();
    let b_key_id = second["owner_key"]["id"].as_str().unwrap().to_owned();
    let b_generic = ok(s, Method::POST, &b_owner, "/v1/connections",
        json!({"app": "generic", "name": "B shop", "settings": {"event_id_pointer": "/id", "kind": "order.created"}}), 201).await;
    let b_ct = ok(s, Method::POST, &b_owner, "/v1/connections",
        json!({"app": "calltouch", "name": "B Calltouch", "settings": {"site_id": "2", "base_url": "http://127.0.0.1:9"}, "credentials": {"access_token": "t"}}), 201).await;
    let b_rc = ok(s, Method::POST, &b_owner, "/v1/connections",
        json!({"app": "retailcrm", "name": "B retailCRM", "settings": {"base_url": "http://127.0.0.1:9"}, "credentials": {"api_key": "k"}}), 201).await;
    ok(
        s,
        Method::POST,
        &b_owner,
        "/v1/recipes/calltouch-retailcrm/instantiate",
        json!({"connections": {"calltouch": b_ct["id"], "retailcrm": b_rc["id"]}}),
        201,
    )
    .await;
    let b_auto = "calltouch-call-to-retailcrm".to_owned();
    let b_doc = ok(
        s,
        Method::GET,
        &b_owner,
        &format!("/v1/automations/{b_auto}"),
        json!(null),
        200,
    )
    .await["automation"]
        .clone();
    let b_run = no_match_run(s, &b_owner, b_generic["webhook_url"].as_str().unwrap()).await;
    World {
        db: data.join("crmbridge.db"),
        server,
        _dir: dir,
        owner,
        owner_key_id,
        admin,
        viewer,
        a_generic: generic["id"].as_str().unwrap().to_owned(),
        a_calltouch: ct["id"].as_str().unwrap().to_owned(),
        a_moysklad: ms["id"].as_str().unwrap().to_owned(),
        a_run,
        a_doc,
        b_owner,
        b_key_id,
        b_conn: b_generic["id"].as_str().unwrap().to_owned(),
        b_auto,
        b_doc,
        b_run,
    }
}

struct Case {
    what: &'static str,
    method: Method,
    key: Option<String>,
    path: String,
    body: Body,
    status: u16,
    code: &'static str,
    /// The error's `field`; a trailing `*` matches a prefix.
    field: &'static str,
}

fn case(
    what: &'static str,
    method: Method,
    key: Option<&str>,
    path: impl Into<String>,
    body: Body,
    expect: (u16, &'static str, &'static str),
) -> Case {
    Case {
        what,
        method,
        key: key.map(str::to_owned),
        path: path.into(),
        body,
        status: expect.0,
        code: expect.1,
        field: expect.2,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_status_a_json_error_and_change_nothing() {
    let w = world().await;
    let (owner, admin, viewer, b) = (
        Some(w.owner.as_str()),
        Some(w.admin.as_str()),
        Some(w.viewer.as_str()),
        Some(w.b_owner.as_str()),
    );
    let con = |id: &str| format!("/v1/connections/{id}");
    let since = json!({"since": "2020-01-01T00:00:00Z"});
    let mut unknown_action = w.a_doc.clone();
    unknown_action["id"] = json!("new-one");
    unknown_action["steps"][0]["action"] = json!("calltouch.deal.explode");
    let mut foreign_connection = w.a_doc.clone();
    foreign_connection["id"] = json!("new-two");
    foreign_connection["trigger"]["connection"] = json!(w.b_conn);
    let mut unknown_event = w.a_doc.clone();
    unknown_event["id"] = json!("new-three");
    unknown_event["trigger"]["event"] = json!("calltouch.nothing.happened");
    let mut wrong_type = w.a_doc.clone();
    wrong_type["id"] = json!("new-four");
    wrong_type["steps"] = json!("all of them");
    let mut mismatched = w.a_doc.clone();
    mismatched["id"] = json!("other-id");
    let big = "x".repeat(300 * 1024);

    use Method as M;
    let cases = vec![
        // Who is calling.
        case(
            "no key",
            M::GET,
            None,
            "/v1/connections",
            Body::None,
            (401, "unauthorized", "authorization"),
        ),
        case(
            "unknown key",
            M::GET,
            Some("cbk_not-a-key"),
            "/v1/runs",
            Body::None,
            (401, "unauthorized", "authorization"),
        ),
        case(
            "not a bearer key",
            M::GET,
            Some("Basic dXNlcjpwYXNz"),
            "/v1/runs",
            Body::None,
            (401, "unauthorized", "authorization"),
        ),
        case(
            "no key on a write",
            M::POST,
            None,
            "/v1/keys",
            Body::Json(json!({"role": "owner"})),
            (401, "unauthorized", "authorization"),
        ),
        // What the role allows.
        case(
            "viewer creates a connection",
            M::POST,
            viewer,
            "/v1/connections",
            Body::Json(json!({"app": "generic", "name": "x"})),
            (403, "forbidden", "authorization"),
        ),
        case(
            "viewer lists connections",
            M::GET,
            viewer,
            "/v1/connections",
            Body::None,
            (403, "forbidden", "authorization"),
        ),
        case(
            "viewer updates a connection",
            M::PATCH,
            viewer,
            con(&w.a_generic),
            Body::Json(json!({"name": "y"})),
            (403, "forbidden", "authorization"),
        ),
        case(
            "viewer deletes an automation",
            M::DELETE,
            viewer,
            "/v1/automations/calltouch-call-to-moysklad",
            Body::None,
            (403, "forbidden", "authorization"),
        ),
        case(
            "viewer replays a run",
            M::POST,
            viewer,
            format!("/v1/runs/{}/replay", w.a_run),
            Body::None,
            (403, "forbidden", "authorization"),
        ),
        case(
            "admin lists keys",
            M::GET,
            admin,
            "/v1/keys",
            Body::None,
            (403, "forbidden", "authorization"),
        ),
        case(
            "admin creates a key",
            M::POST,
            admin,
            "/v1/keys",
            Body::Json(json!({"role": "owner"})),
            (403, "forbidden", "authorization"),
        ),
        case(
            "admin revokes the owner key",
            M::DELETE,
            admin,
            format!("/v1/keys/{}", w.owner_key_id),
            Body::None,
            (403, "forbidden", "authorization"),
        ),
        case(
            "admin creates a tenant",
            M::POST,
            admin,
            "/v1/tenants",
            Body::Json(json!({"name": "C"})),
            (403, "forbidden", "authorization"),
        ),
        case(
            "another tenant's owner creates a tenant",
            M::POST,
            b,
            "/v1/tenants",
            Body::Json(json!({"name": "C"})),
            (403, "forbidden", "authorization"),
        ),
        // Another tenant's objects are not found.
        case(
            "B's connection",
            M::GET,
            owner,
            con(&w.b_conn),
            Body::None,
            (404, "not_found", "connection"),
        ),
        case(
            "update B's connection",
            M::PATCH,
            admin,
            con(&w.b_conn),
            Body::Json(json!({"name": "mine"})),
            (404, "not_found", "connection"),
        ),
        case(
            "delete B's connection",
            M::DELETE,
            admin,
            format!("{}?confirm=true", con(&w.b_conn)),
            Body::None,
            (404, "not_found", "connection"),
        ),
        case(
            "B's run",
            M::GET,
            viewer,
            format!("/v1/runs/{}", w.b_run),
            Body::None,
            (404, "not_found", "run"),
        ),
        case(
            "replay B's run",
            M::POST,
            admin,
            format!("/v1/runs/{}/replay", w.b_run),
            Body::None,
            (404, "not_found", "run"),
        ),
        case(
            "B's automation",
            M::GET,
            admin,
            format!("/v1/automations/{}", w.b_auto),
            Body::None,
            (404, "not_found", "automation"),
        ),
        case(
            "enable B's automation",
            M::POST,
            admin,
            format!("/v1/automations/{}/enable", w.b_auto),
            Body::None,
            (404, "not_found", "automation"),
        ),
        case(
            "disable B's automation",
            M::POST,
            admin,
            format!("/v1/automations/{}/disable", w.b_auto),
            Body::None,
            (404, "not_found", "automation"),
        ),
        case(
            "delete B's automation",
            M::DELETE,
            admin,
            format!("/v1/automations/{}", w.b_auto),
            Body::None,
            (404, "not_found", "automation"),
        ),
        case(
            "replay B's automation",
            M::POST,
            admin,
            format!("/v1/automations/{}/replay", w.b_auto),
            Body::Json(since.clone()),
            (404, "not_found", "automation"),
        ),
        case(
            "B's automation document under A",
            M::PUT,
            admin,
            format!("/v1/automations/{}", w.b_auto),
            Body::Json(w.b_doc.clone()),
            (422, "invalid", "trigger.connection"),
        ),
        case(
            "revoke B's key",
            M::DELETE,
            owner,
            format!("/v1/keys/{}", w.b_key_id),
            Body::None,
            (404, "not_found", "key"),
        ),
        case(
            "recipe with B's connections",
            M::POST,
            admin,
            "/v1/recipes/calltouch-moysklad/instantiate",
            Body::Json(json!({"connections": {"calltouch": w.b_conn, "moysklad": w.a_moysklad}})),
            (422, "invalid", "automations[0].trigger.connection"),
        ),
        // Malformed bodies.
        case(
            "truncated JSON",
            M::POST,
            admin,
            "/v1/connections",
            Body::Raw("application/json", "{\"app\": ".into()),
            (400, "bad_request", "body"),
        ),
        case(
            "not JSON",
            M::POST,
            admin,
            "/v1/connections",
            Body::Raw("application/json", "app=generic".into()),
            (400, "bad_request", "body"),
        ),
        case(
            "unknown field",
            M::POST,
            admin,
            "/v1/connections",
            Body::Json(json!({"app": "generic", "name": "x", "colour": "red"})),
            (400, "bad_request", "colour"),
        ),
        case(
            "wrong type",
            M::POST,
            admin,
            "/v1/connections",
            Body::Json(json!({"app": 7, "name": "x"})),
            (400, "bad_request", "app"),
        ),
        case(
            "credentials of the wrong type",
            M::POST,
            admin,
            "/v1/connections",
            Body::Json(json!({"app": "generic", "name": "x", "credentials": {"k": 1}})),
            (400, "bad_request", "credentials.k"),
        ),
        case(
            "missing name",
            M::POST,
            admin,
            "/v1/connections",
            Body::Json(json!({"app": "generic"})),
            (400, "bad_request", "name"),
        ),
        case(
            "unknown app",
            M::POST,
            admin,
            "/v1/connections",
            Body::Json(json!({"app": "nocrm", "name": "x"})),
            (422, "invalid", "app"),
        ),
        case(
            "empty name",
            M::POST,
            admin,
            "/v1/connections",
            Body::Json(json!({"app": "generic", "name": " "})),
            (422, "invalid", "name"),
        ),
        case(
            "unknown setting",
            M::POST,
            admin,
            "/v1/connections",
            Body::Json(json!({"app": "generic", "name": "x", "settings": {"colour": "red"}})),
            (422, "invalid", "settings.colour"),
        ),
        case(
            "empty credential",
            M::POST,
            admin,
            "/v1/connections",
            Body::Json(json!({"app": "generic", "name": "x", "credentials": {"token": ""}})),
            (422, "invalid", "credentials.token"),
        ),
        case(
            "oversize body",
            M::POST,
            admin,
            "/v1/connections",
            Body::Raw(
                "application/json",
                format!("{{\"app\": \"generic\", \"name\": \"{big}\"}}"),
            ),
            (413, "payload_too_large", "body"),
        ),
        case(
            "oversize automation",
            M::POST,
            admin,
            "/v1/automations",
            Body::Raw("application/json", format!("{{\"id\": \"{big}\"}}")),
            (413, "payload_too_large", "body"),
        ),
        case(
            "unknown role",
            M::POST,
            owner,
            "/v1/keys",
            Body::Json(json!({"role": "god"})),
            (400, "bad_request", "role"),
        ),
        case(
            "key without a role",
            M::POST,
            owner,
            "/v1/keys",
            Body::Json(json!({})),
            (400, "bad_request", "role"),
        ),
        case(
            "key with an unknown field",
            M::POST,
            owner,
            "/v1/keys",
            Body::Json(json!({"role": "admin", "expires": "never"})),
            (400, "bad_request", "expires"),
        ),
        case(
            "tenant with an empty name",
            M::POST,
            owner,
            "/v1/tenants",
            Body::Json(json!({"name": ""})),
            (422, "invalid", "name"),
        ),
        case(
            "tenant name of the wrong type",
            M::POST,
            owner,
            "/v1/tenants",
            Body::Json(json!({"name": 5})),
            (400, "bad_request", "name"),
        ),
        // Connection updates.
        case(
            "empty update",
            M::PATCH,
            admin,
            con(&w.a_generic),
            Body::Json(json!({})),
            (400, "bad_request", "body"),
        ),
        case(
            "update of the app",
            M::PATCH,
            admin,
            con(&w.a_generic),
            Body::Json(json!({"app": "moysklad"})),
            (400, "bad_request", "app"),
        ),
        case(
            "settings not an object",
            M::PATCH,
            admin,
            con(&w.a_generic),
            Body::Json(json!({"settings": "x"})),
            (422, "invalid", "settings"),
        ),
        case(
            "invalid setting on update",
            M::PATCH,
            admin,
            con(&w.a_generic),
            Body::Json(json!({"settings": {"colour": "red"}})),
            (422, "invalid", "settings.colour"),
        ),
        case(
            "empty credential on update",
            M::PATCH,
            admin,
            con(&w.a_calltouch),
            Body::Json(json!({"credentials": {"access_token": ""}})),
            (422, "invalid", "credentials.access_token"),
        ),
        case(
            "empty name on update",
            M::PATCH,
            admin,
            con(&w.a_calltouch),
            Body::Json(json!({"name": "", "credentials": {"access_token": "new"}})),
            (422, "invalid", "name"),
        ),
        case(
            "unknown connection",
            M::PATCH,
            admin,
            con("con_nope"),
            Body::Json(json!({"name": "x"})),
            (404, "not_found", "connection"),
        ),
        // Automations.
        case(
            "automation id taken",
            M::POST,
            admin,
            "/v1/automations",
            Body::Json(w.a_doc.clone()),
            (400, "bad_request", "id"),
        ),
        case(
            "unknown action",
            M::POST,
            admin,
            "/v1/automations",
            Body::Json(unknown_action),
            (422, "invalid", "steps[0].action"),
        ),
        case(
            "another tenant's connection",
            M::POST,
            admin,
            "/v1/automations",
            Body::Json(foreign_connection),
            (422, "invalid", "trigger.connection"),
        ),
        case(
            "unknown trigger event",
            M::POST,
            admin,
            "/v1/automations",
            Body::Json(unknown_event),
            (422, "invalid", "trigger.event"),
        ),
        case(
            "steps of the wrong type",
            M::POST,
            admin,
            "/v1/automations",
            Body::Json(wrong_type),
            (400, "bad_request", "steps"),
        ),
        case(
            "id differs from the path",
            M::PUT,
            admin,
            "/v1/automations/calltouch-call-to-moysklad",
            Body::Json(mismatched),
            (400, "bad_request", "id"),
        ),
        case(
            "malformed YAML",
            M::POST,
            admin,
            "/v1/automations",
            Body::Raw("application/yaml", "id: [unclosed".into()),
            (400, "bad_request", "body"),
        ),
        case(
            "unknown recipe",
            M::POST,
            admin,
            "/v1/recipes/nope/instantiate",
            Body::Json(json!({"connections": {}})),
            (404, "not_found", "recipe"),
        ),
        case(
            "recipe role missing",
            M::POST,
            admin,
            "/v1/recipes/calltouch-moysklad/instantiate",
            Body::Json(json!({"connections": {"calltouch": w.a_calltouch}})),
            (422, "invalid", "connections.moysklad"),
        ),
        // Deleting a connection that automations use.
        case(
            "no confirmation",
            M::DELETE,
            admin,
            con(&w.a_calltouch),
            Body::None,
            (409, "confirmation_required", "confirm"),
        ),
        case(
            "confirmation not a boolean",
            M::DELETE,
            admin,
            format!("{}?confirm=yes", con(&w.a_calltouch)),
            Body::None,
            (400, "bad_request", "confirm"),
        ),
        case(
            "the last owner key",
            M::DELETE,
            owner,
            format!("/v1/keys/{}", w.owner_key_id),
            Body::None,
            (409, "conflict", "id"),
        ),
        // The run log's parameters.
        case(
            "limit zero",
            M::GET,
            viewer,
            "/v1/runs?limit=0",
            Body::None,
            (400, "bad_request", "limit"),
        ),
        case(
            "limit not a number",
            M::GET,
            viewer,
            "/v1/runs?limit=ten",
            Body::None,
            (400, "bad_request", "limit"),
        ),
        case(
            "limit twice",
            M::GET,
            viewer,
            "/v1/runs?limit=1&limit=2",
            Body::None,
            (400, "bad_request", "limit"),
        ),
        case(
            "unknown status",
            M::GET,
            viewer,
            "/v1/runs?status=broken",
            Body::None,
            (400, "bad_request", "status"),
        ),
        case(
            "since not a time",
            M::GET,
            viewer,
            "/v1/runs?since=yesterday",
            Body::None,
            (400, "bad_request", "since"),
        ),
        case(
            "until not a time",
            M::GET,
            viewer,
            "/v1/runs?until=2025-13-01T00:00:00Z",
            Body::None,
            (400, "bad_request", "until"),
        ),
        case(
            "until before since",
            M::GET,
            viewer,
            "/v1/runs?since=2025-01-02T00:00:00Z&until=2025-01-01T00:00:00Z",
            Body::None,
            (400, "bad_request", "until"),
        ),
        case(
            "automation filter with a separator",
            M::GET,
            viewer,
            "/v1/runs?automation=a%23b",
            Body::None,
            (400, "bad_request", "automation"),
        ),
        case(
            "unknown parameter",
            M::GET,
            viewer,
            "/v1/runs?colour=red",
            Body::None,
            (400, "bad_request", "colour"),
        ),
        case(
            "forged cursor",
            M::GET,
            viewer,
            "/v1/runs?cursor=zzz",
            Body::None,
            (400, "bad_request", "cursor"),
        ),
        // Replays.
        case(
            "replay of a run that matched nothing",
            M::POST,
            admin,
            format!("/v1/runs/{}/replay", w.a_run),
            Body::None,
            (409, "conflict", "run"),
        ),
        case(
            "replay of an unknown run",
            M::POST,
            admin,
            "/v1/runs/run_0000/replay",
            Body::None,
            (404, "not_found", "run"),
        ),
        case(
            "automation replay without since",
            M::POST,
            admin,
            "/v1/automations/calltouch-call-to-moysklad/replay",
            Body::Json(json!({})),
            (400, "bad_request", "since"),
        ),
        case(
            "automation replay since not a time",
            M::POST,
            admin,
            "/v1/automations/calltouch-call-to-moysklad/replay",
            Body::Json(json!({"since": "soon"})),
            (400, "bad_request", "since"),
        ),
        case(
            "automation replay with an unknown field",
            M::POST,
            admin,
            "/v1/automations/calltouch-call-to-moysklad/replay",
            Body::Json(json!({"since": "2020-01-01T00:00:00Z", "all": true})),
            (400, "bad_request", "all"),
        ),
        case(
            "replay of a disabled automation",
            M::POST,
            admin,
            "/v1/automations/calltouch-request-to-moysklad/replay",
            Body::Json(since.clone()),
            (409, "conflict", "automation"),
        ),
        case(
            "replay without a body",
            M::POST,
            admin,
            "/v1/automations/calltouch-call-to-moysklad/replay",
            Body::None,
            (400, "bad_request", "body"),
        ),
        // Routes.
        case(
            "unknown route",
            M::GET,
            admin,
            "/v1/nothing",
            Body::None,
            (404, "not_found", "path"),
        ),
        case(
            "method not allowed",
            M::PUT,
            admin,
            "/v1/runs",
            Body::None,
            (405, "method_not_allowed", "method"),
        ),
    ];
    assert!(cases.len() >= 40, "{} cases", cases.len());

    let mut failures = Vec::new();
    let count = cases.len();
    for c in cases {
        let before = dump(&w.db);
        let (status, body) = send(
            &w.server,
            c.method.clone(),
            c.key.as_deref(),
            &c.path,
            c.body,
        )
        .await;
        let after = dump(&w.db);
        let error = &body["error"];
        let field = error["field"].as_str().unwrap_or("");
        let field_ok = match c.field.strip_suffix('*') {
            Some(prefix) => field.starts_with(prefix) && !field.is_empty(),
            None => field == c.field,
        };
        if status != c.status
            || error["code"] != c.code
            || !field_ok
            || !error["message"].is_string()
        {
            failures.push(format!(
                "{} ({} {}): want {} {} {}, got {status} {body}",
                c.what, c.method, c.path, c.status, c.code, c.field
            ));
        }
        if before != after {
            failures.push(format!(
                "{} ({} {}) changed the store",
                c.what, c.method, c.path
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The suite did not just see an empty store.
    assert!(dump(&w.db).len() > 20);
    let _ = &w.a_moysklad;
    println!("bad requests: {count} cases, each refused with a JSON error and the store unchanged");
}
