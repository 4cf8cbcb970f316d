//! The fake NetHunt: Basic auth and its plain-text error, folders and fields,
//! create / find, update with `fieldActions`, the updated-record,
//! new-record and record-change triggers (since, fieldName, order, limit),
//! 404s, the clock, rate limit and faults.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crmbridge_fakes::Fault;
use crmbridge_fakes::vendors::nethunt::{AUTH_ERROR, FakeNetHunt};
use serde_json::{Value, json};

const EMAIL: &str = "owner@acme.com";
const KEY: &str = "nh-key";

struct Answer {
    status: u16,
    content_type: String,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }
}

async fn send(rb: reqwest::RequestBuilder) -> Answer {
    let resp = rb.send().await.unwrap();
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    Answer {
        status,
        content_type,
        text: resp.text().await.unwrap(),
    }
}

async fn get(nh: &FakeNetHunt, path: &str) -> Answer {
    send(
        reqwest::Client::new()
            .get(format!("{}{path}", nh.base_url()))
            .basic_auth(EMAIL, Some(KEY)),
    )
    .await
}

async fn get_json(nh: &FakeNetHunt, path: &str) -> Value {
    let a = get(nh, path).await;
    assert_eq!(a.status, 200, "{path}: {}", a.text);
    a.json()
}

async fn post(nh: &FakeNetHunt, path: &str, body: Value) -> Answer {
    send(
        reqwest::Client::new()
            .post(format!("{}{path}", nh.base_url()))
            .basic_auth(EMAIL, Some(KEY))
            .json(&body),
    )
    .await
}

/// A fake with folder "Deals" (fields Name, Status, Email, Amount).
async fn deals() -> (FakeNetHunt, String) {
    let nh = FakeNetHunt::start(EMAIL, KEY).await.unwrap();
    let folder = nh.add_folder("Deals");
    for f in ["Name", "Status", "Email", "Amount"] {
        nh.add_field(&folder, f).unwrap();
    }
    (nh, folder)
}

fn ids(rows: &Value) -> Vec<String> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

fn is_iso_ms(s: &str) -> bool {
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.3fZ").is_ok()
        && s.len() == 24
        && s.ends_with('Z')
}

#[tokio::test]
async fn auth_failure_is_plain_text() {
    let nh = FakeNetHunt::start(EMAIL, KEY).await.unwrap();
    let url = format!("{}/triggers/auth-test", nh.base_url());
    assert!(nh.base_url().ends_with("/api/v1/zapier"));

    let none = send(reqwest::Client::new().get(&url)).await;
    let wrong = send(
        reqwest::Client::new()
            .get(&url)
            .basic_auth(EMAIL, Some("nope")),
    )
    .await;
    let other_user = send(
        reqwest::Client::new()
            .get(&url)
            .basic_auth("x@y.z", Some(KEY)),
    )
    .await;
    for a in [&none, &wrong, &other_user] {
        assert_eq!(a.status, 401);
        assert!(
            a.content_type.starts_with("text/plain"),
            "{}",
            a.content_type
        );
        assert_eq!(a.text, AUTH_ERROR);
    }
    assert_eq!(
        AUTH_ERROR,
        "Your email address or API key does not appear to be valid"
    );

    let ok = get(&nh, "/triggers/auth-test").await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json(), json!([]));

    // The credentials are redacted in the log.
    let log = nh.requests();
    assert_eq!(log.len(), 4);
    assert_eq!(log[1].header("authorization"), Some("***"));

    // Only the documented prefix is served.
    let a = send(
        reqwest::Client::new()
            .get(format!(
                "http://{}/api/v1/searches/find-record/x",
                nh.addr()
            ))
            .basic_auth(EMAIL, Some(KEY)),
    )
    .await;
    assert_eq!(a.status, 404);
}

#[tokio::test]
async fn folders_and_fields() {
    let (nh, deals) = deals().await;
    let people = nh.add_folder("People");
    nh.add_field(&people, "Full name").unwrap();
    assert_eq!(deals.len(), 24);
    assert!(deals.chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(deals, people);

    let expected = json!([{"id": deals, "name": "Deals"}, {"id": people, "name": "People"}]);
    for path in [
        "/triggers/auth-test",
        "/triggers/readable-folder",
        "/triggers/writable-folder",
    ] {
        assert_eq!(get_json(&nh, path).await, expected, "{path}");
    }
    assert_eq!(
        get_json(&nh, &format!("/triggers/folder-field/{deals}")).await,
        json!([{"name": "Name"}, {"name": "Status"}, {"name": "Email"}, {"name": "Amount"}])
    );
    assert_eq!(
        get_json(&nh, &format!("/triggers/folder-field/{people}")).await,
        json!([{"name": "Full name"}])
    );
    let missing = get(&nh, "/triggers/folder-field/000000000000000000000000").await;
    assert_eq!(missing.status, 404);
    assert!(missing.content_type.starts_with("text/plain"));
    assert_eq!(missing.text, "Folder not found");

    // Unknown paths and methods.
    assert_eq!(get(&nh, "/triggers/nothing").await.status, 404);
    assert_eq!(
        post(&nh, "/triggers/auth-test", json!({})).await.status,
        404
    );
}

#[tokio::test]
async fn create_then_find() {
    let (nh, folder) = deals().await;
    let created = post(
        &nh,
        &format!("/actions/create-record/{folder}"),
        json!({"timeZone": "Europe/Kiev", "fields": {"Name": "ACME deal", "Status": "New", "Email": ["Sales@ACME.com"], "Amount": 1200}}),
    )
    .await;
    assert_eq!(created.status, 200, "{}", created.text);
    let created = created.json();
    let id = created["recordId"].as_str().unwrap().to_owned();
    assert!(created.get("id").is_none());
    assert!(is_iso_ms(created["createdAt"].as_str().unwrap()));
    assert_eq!(created["fields"]["Name"], "ACME deal");

    let found = get_json(
        &nh,
        &format!("/searches/find-record/{folder}?recordId={id}"),
    )
    .await;
    assert_eq!(ids(&found), vec![id.clone()]);
    let rec = &found[0];
    assert_eq!(rec["fields"]["Email"], json!(["Sales@ACME.com"]));
    assert_eq!(rec["fields"]["Amount"], 1200);
    assert_eq!(rec["createdAt"], rec["updatedAt"]);
    assert_eq!(nh.record(&id).unwrap(), *rec);

    // query: case-insensitive substring of a string or of a string in an array.
    let other = nh
        .insert_record(&folder, json!({"Name": "Other", "Status": "New"}))
        .unwrap();
    assert_eq!(
        ids(&get_json(
            &nh,
            &format!("/searches/find-record/{folder}?query=acme%20D")
        )
        .await),
        vec![id.clone()]
    );
    assert_eq!(
        ids(&get_json(
            &nh,
            &format!("/searches/find-record/{folder}?query=sales@acme")
        )
        .await),
        vec![id.clone()]
    );
    // Newest first, limit.
    assert_eq!(
        ids(&get_json(&nh, &format!("/searches/find-record/{folder}?query=new")).await),
        vec![other.clone(), id.clone()]
    );
    assert_eq!(
        ids(&get_json(
            &nh,
            &format!("/searches/find-record/{folder}?query=new&limit=1")
        )
        .await),
        vec![other]
    );
    // No match → [].
    assert_eq!(
        get_json(&nh, &format!("/searches/find-record/{folder}?query=zzz")).await,
        json!([])
    );
    // Neither recordId nor query → 400 text.
    let a = get(&nh, &format!("/searches/find-record/{folder}?limit=1")).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.text, "Please enter either Record ID or Search Query");

    // Fields not defined in the folder.
    let bad = post(
        &nh,
        &format!("/actions/create-record/{folder}"),
        json!({"timeZone": "Europe/Kiev", "fields": {"Nope": 1}}),
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.text, "Unknown field: Nope");
    assert_eq!(nh.records(&folder).len(), 2);
}

#[tokio::test]
async fn update_with_field_actions() {
    let (nh, folder) = deals().await;
    let id = nh
        .insert_record(
            &folder,
            json!({"Name": "Deal", "Status": "New", "Email": ["a@x.com", "b@x.com"]}),
        )
        .unwrap();
    let before = nh.record(&id).unwrap();

    // overwrite + add replaces; add appends to an array; remove takes out.
    let a = post(
        &nh,
        &format!("/actions/update-record/{id}?overwrite=false"),
        json!({"fieldActions": {
            "Name": {"overwrite": true, "add": "Big deal"},
            "Email": {"add": "c@x.com", "remove": "a@x.com"},
            "Amount": {"add": 500},
        }}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let rec = a.json();
    assert_eq!(rec["id"], id);
    assert_eq!(rec["fields"]["Name"], "Big deal");
    assert_eq!(rec["fields"]["Email"], json!(["b@x.com", "c@x.com"]));
    assert_eq!(rec["fields"]["Amount"], 500);
    assert_eq!(rec["fields"]["Status"], "New");
    assert!(rec["updatedAt"].as_str().unwrap() > before["updatedAt"].as_str().unwrap());
    assert_eq!(rec["createdAt"], before["createdAt"]);

    // The query default applies to actions without `overwrite`.
    let rec = post(
        &nh,
        &format!("/actions/update-record/{id}?overwrite=true"),
        json!({"fieldActions": {"Email": {"add": "z@x.com"}}}),
    )
    .await
    .json();
    assert_eq!(rec["fields"]["Email"], json!(["z@x.com"]));

    // Remove on a scalar equal to it clears the field; not equal → no change.
    let rec = post(
        &nh,
        &format!("/actions/update-record/{id}"),
        json!({"fieldActions": {"Status": {"remove": "New"}, "Name": {"remove": "Other"}}}),
    )
    .await
    .json();
    assert!(rec["fields"].get("Status").is_none());
    assert_eq!(rec["fields"]["Name"], "Big deal");
    // remove "" + add on a scalar → the new value.
    let rec = post(
        &nh,
        &format!("/actions/update-record/{id}"),
        json!({"fieldActions": {"Status": {"remove": "", "add": "Won"}}}),
    )
    .await
    .json();
    assert_eq!(rec["fields"]["Status"], "Won");

    // Unknown record → 404 JSON; unknown field → 400.
    let a = post(
        &nh,
        "/actions/update-record/000000000000000000000000",
        json!({"fieldActions": {"Status": {"add": "Won"}}}),
    )
    .await;
    assert_eq!(a.status, 404);
    assert_eq!(a.json(), json!({"error": "Record not found"}));
    let a = post(
        &nh,
        &format!("/actions/update-record/{id}"),
        json!({"fieldActions": {"Nope": {"add": 1}}}),
    )
    .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.text, "Unknown field: Nope");

    // Every API change is logged by the account e-mail, with old and new values.
    let changes = nh.changes();
    assert_eq!(changes.len(), 5);
    assert_eq!(changes[0]["recordAction"], "CREATE");
    assert_eq!(changes[0]["user"]["email"], "manager@example.com");
    let first_update = &changes[1];
    assert_eq!(first_update["recordAction"], "UPDATE");
    assert_eq!(first_update["user"]["email"], EMAIL);
    let name = first_update["fieldActions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["field"]["name"] == "Name")
        .unwrap();
    assert_eq!(name["oldValue"], "Deal");
    assert_eq!(name["newValue"], "Big deal");
}

#[tokio::test]
async fn updated_record_filters_by_field_and_since() {
    let (nh, folder) = deals().await;
    let a = nh
        .insert_record(&folder, json!({"Name": "A", "Status": "New"}))
        .unwrap();
    let b = nh
        .insert_record(&folder, json!({"Name": "B", "Status": "New"}))
        .unwrap();
    let since = nh.record(&b).unwrap()["updatedAt"]
        .as_str()
        .unwrap()
        .to_owned();

    nh.advance_clock(Duration::from_secs(60));
    // A changes another field, B changes Status, then A's Status stays.
    nh.set_field(&a, "Name", json!("A2")).unwrap();
    nh.set_field(&b, "Status", json!("Won")).unwrap();

    let path = |q: &str| format!("/triggers/updated-record/{folder}?{q}");
    let only_status = get_json(&nh, &path(&format!("fieldName=Status&since={since}"))).await;
    assert_eq!(ids(&only_status), vec![b.clone()]);
    // Current state.
    assert_eq!(only_status[0]["fields"]["Status"], "Won");

    let both_fields = get_json(
        &nh,
        &path(&format!("fieldName=Name&fieldName=Status&since={since}")),
    )
    .await;
    assert_eq!(ids(&both_fields), vec![b.clone(), a.clone()]);

    // No fieldName: every record updated after since, newest first.
    let all = get_json(&nh, &path(&format!("since={since}"))).await;
    assert_eq!(ids(&all), vec![b.clone(), a.clone()]);
    let updated: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["updatedAt"].as_str().unwrap())
        .collect();
    assert!(updated.iter().all(|u| is_iso_ms(u)));
    assert!(updated[0] > updated[1]);

    // limit caps the count.
    assert_eq!(
        ids(&get_json(&nh, &path(&format!("since={since}&limit=1"))).await),
        vec![b.clone()]
    );
    // since is strict: the newest updatedAt yields nothing.
    assert_eq!(
        get_json(&nh, &path(&format!("since={}", updated[0]))).await,
        json!([])
    );
    // Without since: the creations count as changes of every field set.
    assert_eq!(
        ids(&get_json(&nh, &path("fieldName=Status")).await),
        vec![b.clone(), a.clone()]
    );
    // A later Status change of A shows up for the since cursor of B's change.
    let cursor = updated[0].to_owned();
    nh.set_field(&a, "Status", json!("Lost")).unwrap();
    assert_eq!(
        ids(&get_json(&nh, &path(&format!("fieldName=Status&since={cursor}"))).await),
        vec![a]
    );
    assert_eq!(get(&nh, &path("since=yesterday")).await.status, 400);
}

#[tokio::test]
async fn new_record_trigger_and_clock() {
    let (nh, folder) = deals().await;
    let first = nh.insert_record(&folder, json!({"Name": "1"})).unwrap();
    let since = nh.record(&first).unwrap()["createdAt"]
        .as_str()
        .unwrap()
        .to_owned();
    // Successive writes get strictly increasing timestamps.
    let second = nh.insert_record(&folder, json!({"Name": "2"})).unwrap();
    let third = nh.insert_record(&folder, json!({"Name": "3"})).unwrap();
    let c2 = nh.record(&second).unwrap()["createdAt"].clone();
    let c3 = nh.record(&third).unwrap()["createdAt"].clone();
    assert!(c3.as_str().unwrap() > c2.as_str().unwrap());
    assert!(c2.as_str().unwrap() > since.as_str());

    let path = format!("/triggers/new-record/{folder}?since={since}");
    assert_eq!(
        ids(&get_json(&nh, &path).await),
        vec![third.clone(), second.clone()]
    );
    assert_eq!(
        ids(&get_json(&nh, &format!("{path}&limit=1")).await),
        vec![third.clone()]
    );
    assert_eq!(
        ids(&get_json(&nh, &format!("/triggers/new-record/{folder}")).await),
        vec![third, second, first]
    );

    // The clock moves the timestamps.
    nh.advance_clock(Duration::from_secs(3600));
    let later = nh.insert_record(&folder, json!({"Name": "4"})).unwrap();
    let created = nh.record(&later).unwrap()["createdAt"]
        .as_str()
        .unwrap()
        .to_owned();
    let at = chrono::DateTime::parse_from_rfc3339(&created).unwrap();
    assert!(at > chrono::Utc::now() + chrono::Duration::minutes(59));
}

#[tokio::test]
async fn record_change_entries() {
    let (nh, folder) = deals().await;
    let id = nh
        .insert_record(&folder, json!({"Name": "Deal", "Status": "New"}))
        .unwrap();
    let other = nh
        .insert_record(&folder, json!({"Name": "Other", "Status": "New"}))
        .unwrap();
    nh.set_field(&id, "Name", json!("Deal 2")).unwrap();
    nh.set_field(&id, "Status", json!("Won")).unwrap();
    nh.set_field(&other, "Status", json!("Lost")).unwrap();

    let rows = get_json(
        &nh,
        &format!("/triggers/record-change/{folder}?recordId={id}&fieldName=Status"),
    )
    .await;
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let update = &rows[0];
    assert_eq!(update["recordId"], id);
    assert_eq!(update["recordAction"], "UPDATE");
    assert_eq!(update["user"]["email"], "manager@example.com");
    assert!(is_iso_ms(update["time"].as_str().unwrap()));
    assert_eq!(
        update["fieldActions"],
        json!([{"field": {"name": "Status"}, "oldValue": "New", "newValue": "Won"}])
    );
    assert_eq!(rows[1]["recordAction"], "CREATE");
    assert!(update["time"].as_str().unwrap() > rows[1]["time"].as_str().unwrap());

    // since + limit over the whole folder.
    let since = rows[1]["time"].as_str().unwrap().to_owned();
    let all = get_json(
        &nh,
        &format!("/triggers/record-change/{folder}?since={since}"),
    )
    .await;
    let actions: Vec<(&str, &str)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["recordId"].as_str().unwrap(),
                c["recordAction"].as_str().unwrap(),
            )
        })
        .collect();
    // `since` is the CREATE of `id`, so the CREATE of `other` (later) counts.
    assert_eq!(
        actions,
        vec![
            (other.as_str(), "UPDATE"),
            (id.as_str(), "UPDATE"),
            (id.as_str(), "UPDATE"),
            (other.as_str(), "CREATE"),
        ]
    );
    let limited = get_json(
        &nh,
        &format!("/triggers/record-change/{folder}?since={since}&limit=2"),
    )
    .await;
    assert_eq!(limited.as_array().unwrap().len(), 2);

    // Deletion: a DELETE entry, the record is gone from the triggers.
    nh.delete_record(&other).unwrap();
    assert!(nh.record(&other).is_none());
    let latest = get_json(
        &nh,
        &format!("/triggers/record-change/{folder}?recordId={other}&limit=1"),
    )
    .await;
    assert_eq!(latest[0]["recordAction"], "DELETE");
    assert_eq!(latest[0]["fieldActions"], json!([]));
    assert_eq!(
        ids(&get_json(&nh, &format!("/triggers/updated-record/{folder}")).await),
        vec![id]
    );
}

#[tokio::test]
async fn faults_and_rate_limit() {
    let (nh, folder) = deals().await;
    nh.fail_next(1, Fault::ServerError);
    let a = get(&nh, "/triggers/readable-folder").await;
    assert_eq!(a.status, 500);
    assert!(a.content_type.starts_with("text/plain"));
    assert_eq!(a.text, "Internal Server Error");
    assert_eq!(nh.fault_count(), 1);
    assert_eq!(get(&nh, "/triggers/readable-folder").await.status, 200);

    // A dropped-after-commit create is stored although the client saw no answer.
    nh.fail_next_on(
        Some("POST"),
        "/actions/create-record",
        1,
        Fault::DropAfterCommit,
    );
    let sent = reqwest::Client::new()
        .post(format!("{}/actions/create-record/{folder}", nh.base_url()))
        .basic_auth(EMAIL, Some(KEY))
        .json(&json!({"timeZone": "Europe/Kiev", "fields": {"Name": "X"}}))
        .send()
        .await;
    assert!(sent.is_err());
    assert_eq!(nh.records(&folder).len(), 1);

    nh.fail_next(1, Fault::TooManyRequests);
    let a = get(&nh, "/triggers/readable-folder").await;
    assert_eq!(a.status, 429);
    assert_eq!(a.text, "Too many requests");

    nh.set_rate_limit(Some(2));
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(get(&nh, "/triggers/readable-folder").await.status);
    }
    assert_eq!(statuses, vec![200, 200, 429]);
    assert_eq!(nh.rate_limited_count(), 1);
    nh.set_rate_limit(None);
    assert_eq!(get(&nh, "/triggers/readable-folder").await.status, 200);
}
