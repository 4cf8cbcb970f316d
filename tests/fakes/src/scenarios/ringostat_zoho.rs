//! The Ringostat → Zoho recipe's scenario matrix, written once and driven
//! through any deployment shape: `crmbridge serve` and the Lambda binaries
//! each implement [`Gateway`] (how an admin call and a webhook delivery
//! reach them), and the same cases, with the same assertions, run on both.
//!
//! The cases are the article's (docs/integrations/ringostat-zoho.md): a new
//! caller answered, a caller who calls three times, a known client answered
//! by someone else, missed calls from new and known callers, a call
//! answered on an unlinked SIP account, the before-call mode, and bad
//! deliveries. Every delivery is sent 1 to 4 times (Ringostat re-sends
//! failed ones), and the records in the Zoho fake are checked exactly.
// Scenario code asserts: a failed expectation is the test's failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::oauth::{FakeOAuth, OAuthConfig};
use crate::vendors::zoho::FakeZoho;

pub const ANNA: &str = "anna@corp.example";
pub const BOB: &str = "bob@corp.example";
pub const BOSS: &str = "boss@corp.example";
const CLIENT_ID: &str = "1000.ZOHOCLIENT";
const CLIENT_SECRET: &str = "zoho-client-secret-5c1";

/// One webhook delivery as Ringostat sends it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub method: &'static str,
    /// Query parameters (the moment, and everything for a GET webhook).
    pub query: Vec<(String, String)>,
    pub content_type: Option<&'static str>,
    pub body: Vec<u8>,
}

/// How a deployment is reached.
#[async_trait]
pub trait Gateway: Send + Sync {
    /// An admin API call with the owner's key: status and JSON body.
    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value);
    /// One delivery to a webhook path (`/hooks/{connection}/{token}`).
    async fn webhook(&self, path: &str, delivery: &Delivery) -> (u16, Value);
    /// Returns once `runs` runs exist and none is still running or
    /// waiting for a retry; every run, as `GET /v1/runs` lists them.
    async fn settle(&self, runs: usize) -> Vec<Value>;
    /// Every run now, whatever its state.
    async fn runs(&self) -> Vec<Value>;
}

/// A Zoho account (accounts server + API) with three users.
pub struct ZohoAccount {
    pub oauth: FakeOAuth,
    pub zoho: FakeZoho,
    pub refresh_token: String,
}

impl ZohoAccount {
    pub async fn start() -> Self {
        let oauth = FakeOAuth::start(OAuthConfig::zoho(CLIENT_ID, CLIENT_SECRET))
            .await
            .expect("oauth fake");
        let zoho = FakeZoho::start(oauth.token_checker())
            .await
            .expect("zoho fake");
        oauth.set_api_domain(&zoho.base_url());
        for (email, name) in [(ANNA, "Anna"), (BOB, "Bob"), (BOSS, "Boss")] {
            zoho.add_user(email, name, "active");
        }
        let refresh_token = oauth.issue_refresh_token();
        Self {
            oauth,
            zoho,
            refresh_token,
        }
    }

    /// The body of `POST /v1/connections` for this account (the headless
    /// path: a self client's refresh token).
    pub fn connection(&self) -> Value {
        json!({
            "app": "zoho",
            "name": "Zoho CRM",
            "settings": {"accounts_url": self.oauth.base_url(), "data_centre": "eu"},
            "credentials": {
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "refresh_token": self.refresh_token,
            },
        })
    }

    pub fn user(&self, email: &str) -> String {
        self.zoho.user_id(email).expect("a user")
    }

    /// Records of a module that satisfy `pred`.
    pub fn find(&self, module: &str, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.zoho
            .records(module)
            .into_iter()
            .filter(|r| pred(r))
            .collect()
    }
}

pub fn ringostat_connection() -> Value {
    json!({"app": "ringostat", "name": "Ringostat", "settings": {"timezone": "Europe/Kiev"}, "credentials": {}})
}

/// The recipe's parameters: Anna by e-mail, Bob by extension 102.
pub fn parameters(before_call: bool) -> Value {
    json!({
        "employees": {ANNA: ANNA, "102": BOB},
        "senior_manager": BOSS,
        "before_call": before_call,
    })
}

/// A call as Ringostat reports it, with its own parameter names.
pub fn call(
    id: &str,
    caller: &str,
    employee: Option<&str>,
    disposition: &str,
) -> BTreeMap<String, String> {
    let mut call: BTreeMap<String, String> = [
        ("uniqueid", id),
        ("calldate", "2026-04-25 16:07:14"),
        ("call_type", "in"),
        ("caller", caller),
        ("dst", "380441234567"),
        ("disposition", disposition),
        ("duration", "95"),
        (
            "billsec",
            if disposition == "ANSWERED" { "81" } else { "0" },
        ),
        ("recording", "https://records.ringostat.example/ua/1.mp3"),
        ("utm_source", "google"),
        ("utm_medium", "cpc"),
        ("utm_campaign", "brand"),
        ("utm_term", "crm"),
        ("utm_content", "ad-7"),
        ("client_id", "1234567890.1700000000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    match employee {
        Some(e) if e.contains('@') => {
            call.insert("employee_email".into(), e.into());
        }
        Some(e) if e.starts_with("sip") => {
            call.insert("sip".into(), e.into());
        }
        Some(e) => {
            call.insert("employee_number".into(), e.into());
        }
        None => {}
    }
    call
}

/// A delivery of `call` at `moment`: POST JSON, POST form or GET, as the
/// webhook was set up.
pub fn delivery(call: &BTreeMap<String, String>, moment: &str, style: usize) -> Delivery {
    let moment = vec![("moment".to_owned(), moment.to_owned())];
    match style % 3 {
        0 => Delivery {
            method: "POST",
            query: moment,
            content_type: Some("application/json"),
            body: serde_json::to_vec(call).unwrap_or_default(),
        },
        1 => Delivery {
            method: "POST",
            query: moment,
            content_type: Some("application/x-www-form-urlencoded"),
            body: form_urlencoded::Serializer::new(String::new())
                .extend_pairs(call.iter())
                .finish()
                .into_bytes(),
        },
        _ => Delivery {
            method: "GET",
            query: moment
                .into_iter()
                .chain(call.iter().map(|(k, v)| (k.clone(), v.clone())))
                .collect(),
            content_type: None,
            body: Vec::new(),
        },
    }
}

/// The two connections (the Zoho one checked); returns their ids and the
/// Ringostat webhook path.
pub async fn connect(gateway: &dyn Gateway, account: &ZohoAccount) -> Installed {
    let (status, zoho) = gateway
        .admin("POST", "/v1/connections", Some(account.connection()))
        .await;
    assert_eq!(status, 201, "{zoho}");
    let text = zoho.to_string();
    assert!(
        !text.contains(CLIENT_SECRET) && !text.contains(&account.refresh_token),
        "a secret in the answer: {text}"
    );
    let zoho_id = zoho["id"].as_str().unwrap_or_default().to_owned();
    let (status, checked) = gateway
        .admin("POST", &format!("/v1/connections/{zoho_id}/check"), None)
        .await;
    assert_eq!(status, 200, "{checked}");
    assert_eq!(checked["account"]["active_users"], 4, "{checked}");
    // The catalog lists the users to map employees to, and the six fields.
    let (status, catalog) = gateway
        .admin("GET", &format!("/v1/connections/{zoho_id}/catalog"), None)
        .await;
    assert_eq!(status, 200, "{catalog}");
    let users = catalog.to_string();
    assert!(users.contains(ANNA) && users.contains(BOSS), "{catalog:#}");
    assert!(users.contains("\"rs_utm_term\":true"), "{catalog:#}");
    let (status, ringostat) = gateway
        .admin("POST", "/v1/connections", Some(ringostat_connection()))
        .await;
    assert_eq!(status, 201, "{ringostat}");
    Installed {
        zoho: zoho_id,
        ringostat: ringostat["id"].as_str().unwrap_or_default().to_owned(),
        hook: ringostat["webhook_path"]
            .as_str()
            .expect("a webhook path")
            .to_owned(),
    }
}

/// What [`connect`] made.
pub struct Installed {
    pub zoho: String,
    pub ringostat: String,
    pub hook: String,
}

/// `POST /v1/recipes/ringostat-zoho/instantiate`: status and answer.
pub async fn instantiate(
    gateway: &dyn Gateway,
    installed: &Installed,
    before_call: bool,
) -> (u16, Value) {
    gateway
        .admin(
            "POST",
            "/v1/recipes/ringostat-zoho/instantiate",
            Some(json!({
                "connections": {"ringostat": installed.ringostat, "zoho": installed.zoho},
                "parameters": parameters(before_call),
            })),
        )
        .await
}

/// The connections and the recipe; returns the Ringostat webhook path.
pub async fn install(gateway: &dyn Gateway, account: &ZohoAccount, before_call: bool) -> String {
    let installed = connect(gateway, account).await;
    let (status, created) = instantiate(gateway, &installed, before_call).await;
    assert_eq!(status, 201, "{created}");
    installed.hook
}

/// Sends a delivery `times` times; every one is accepted.
async fn send(gateway: &dyn Gateway, hook: &str, delivery: &Delivery, times: usize) {
    for attempt in 0..times {
        let (status, body) = gateway.webhook(hook, delivery).await;
        assert!(
            status == 200 || status == 202,
            "delivery {attempt}: {status} {body}"
        );
    }
}

fn owner_of(record: &Value) -> String {
    record["Owner"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn text<'a>(record: &'a Value, field: &str) -> &'a str {
    record[field].as_str().unwrap_or_default()
}

fn statuses(runs: &[Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for run in runs {
        let key = format!(
            "{}:{}",
            run["automation"].as_str().unwrap_or("-"),
            run["status"].as_str().unwrap_or("-")
        );
        *out.entry(key).or_default() += 1;
    }
    out
}

/// The matrix without the before-call mode.
pub async fn call_matrix(gateway: &dyn Gateway, account: &ZohoAccount) {
    let hook = install(gateway, account, false).await;
    let zoho = &account.zoho;
    let (anna, bob, boss) = (account.user(ANNA), account.user(BOB), account.user(BOSS));
    // A client Bob owns already, as a contact.
    let known = zoho
        .insert_record(
            "Contacts",
            json!({"Last_Name": "Known Client", "Phone": "+380 50 777 66 55", "Owner": {"id": bob}}),
        )
        .expect("a contact");
    let mut runs = 0;
    let mut style = 0;
    let mut deliver = async |call: &BTreeMap<String, String>, moment: &str| {
        style += 1;
        send(
            gateway,
            &hook,
            &delivery(call, moment, style),
            1 + style % 4,
        )
        .await;
        runs += 1;
        gateway.settle(runs).await
    };

    // 1. A new caller, answered by Anna: the lead on pick-up, with UTM.
    let first = call("ua-1001", "380671234567", Some(ANNA), "ANSWERED");
    deliver(&first, "answered").await;
    let leads = zoho.records("Leads");
    assert_eq!(leads.len(), 1, "{leads:#?}");
    let lead = &leads[0];
    assert_eq!(owner_of(lead), anna, "{lead:#}");
    assert_eq!(text(lead, "Phone"), "+380671234567");
    for (field, value) in [
        ("rs_utm_source", "google"),
        ("rs_utm_medium", "cpc"),
        ("rs_utm_campaign", "brand"),
        ("rs_utm_term", "crm"),
        ("rs_utm_content", "ad-7"),
        ("rs_google_client_id", "1234567890.1700000000"),
    ] {
        assert_eq!(text(lead, field), value, "{field}: {lead:#}");
    }
    let lead_id = text(lead, "id").to_owned();
    // After the call: the call and a completed task on the lead, with the
    // recording, owned by Anna.
    deliver(&first, "completed").await;
    let calls = zoho.records("Calls");
    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert_eq!(owner_of(&calls[0]), anna);
    assert_eq!(calls[0]["What_Id"]["id"], lead_id, "{:#}", calls[0]);
    assert_eq!(text(&calls[0], "Call_Type"), "Inbound");
    assert!(text(&calls[0], "Description").contains("https://records.ringostat.example/ua/1.mp3"));
    let tasks = zoho.records("Tasks");
    assert_eq!(tasks.len(), 1, "{tasks:#?}");
    assert_eq!(text(&tasks[0], "Status"), "Completed");
    assert_eq!(owner_of(&tasks[0]), anna);
    assert_eq!(tasks[0]["What_Id"]["id"], lead_id);
    assert!(text(&tasks[0], "Description").contains("records.ringostat.example"));

    // 2. The same caller calls twice more (number written differently),
    // answered by Bob (extension 102): still one lead.
    for (id, number) in [
        ("ua-1002", "+380 (67) 123-45-67"),
        ("ua-1003", "0671234567"),
    ] {
        let again = call(id, number, Some("102"), "ANSWERED");
        deliver(&again, "answered").await;
        deliver(&again, "completed").await;
    }
    assert_eq!(
        zoho.records("Leads").len(),
        1,
        "{:#?}",
        zoho.records("Leads")
    );
    let calls = zoho.records("Calls");
    assert_eq!(calls.len(), 3);
    assert!(
        calls.iter().all(|c| c["What_Id"]["id"] == lead_id),
        "{calls:#?}"
    );
    // Bob answered Anna's client: an open task for Anna, due 4 hours after
    // the call (16:07 Kyiv → 20:07 Kyiv).
    let callbacks = account.find("Tasks", |t| text(t, "Subject").starts_with("Call back"));
    assert_eq!(callbacks.len(), 2, "{callbacks:#?}");
    for task in &callbacks {
        assert_eq!(owner_of(task), anna, "{task:#}");
        assert_eq!(text(task, "Status"), "Not Started");
        assert_eq!(text(task, "Due_Date"), "2026-04-25");
        assert!(
            task["Remind_At"]
                .to_string()
                .contains("2026-04-25T20:07:14+03:00"),
            "{task:#}"
        );
    }

    // 3. A known client (Bob's contact) answered by Anna: no lead; the call
    // and Anna's completed task on the contact; an open task for Bob.
    let contact_call = call("ua-2001", "380507776655", Some(ANNA), "ANSWERED");
    deliver(&contact_call, "answered").await;
    deliver(&contact_call, "completed").await;
    assert_eq!(zoho.records("Leads").len(), 1);
    let on_contact = account.find("Calls", |c| c["Who_Id"]["id"] == known);
    assert_eq!(on_contact.len(), 1, "{:#?}", zoho.records("Calls"));
    assert_eq!(owner_of(&on_contact[0]), anna);
    let for_bob = account.find("Tasks", |t| {
        t["Who_Id"]["id"] == known && text(t, "Status") == "Not Started"
    });
    assert_eq!(for_bob.len(), 1, "{:#?}", zoho.records("Tasks"));
    assert_eq!(owner_of(&for_bob[0]), bob);

    // 4. A missed call from a new caller: a lead and a task for the boss.
    let missed = call("ua-3001", "380931112233", None, "NO ANSWER");
    deliver(&missed, "completed").await;
    let missed_leads = account.find("Leads", |l| text(l, "Phone") == "+380931112233");
    assert_eq!(missed_leads.len(), 1);
    assert_eq!(owner_of(&missed_leads[0]), boss);
    let missed_tasks = account.find("Tasks", |t| {
        text(t, "Subject").starts_with("Missed call from +380931112233")
    });
    assert_eq!(missed_tasks.len(), 1);
    assert_eq!(owner_of(&missed_tasks[0]), boss);
    assert_eq!(missed_tasks[0]["What_Id"]["id"], missed_leads[0]["id"]);

    // 5. A missed call from the known client: the task goes to Bob.
    let missed_known = call("ua-3002", "+380507776655", None, "NO ANSWER");
    deliver(&missed_known, "completed").await;
    let task = account.find("Tasks", |t| text(t, "Subject").contains("(ua-3002)"));
    assert_eq!(task.len(), 1);
    assert_eq!(owner_of(&task[0]), bob);
    assert_eq!(zoho.records("Leads").len(), 2);

    // 6. Answered on a SIP account linked to nobody: the lead and the call
    // belong to the boss, plus a task for the boss naming the SIP account.
    let unlinked = call("ua-4001", "380441110000", Some("sip-987"), "ANSWERED");
    deliver(&unlinked, "answered").await;
    deliver(&unlinked, "completed").await;
    let lead = account.find("Leads", |l| text(l, "Phone") == "+380441110000");
    assert_eq!(lead.len(), 1);
    assert_eq!(owner_of(&lead[0]), boss);
    let flagged = account.find("Tasks", |t| text(t, "Subject").contains("unlinked sip-987"));
    assert_eq!(flagged.len(), 1, "{:#?}", zoho.records("Tasks"));
    assert_eq!(owner_of(&flagged[0]), boss);
    assert!(text(&flagged[0], "Description").contains("sip-987"));

    // Everything ran once and succeeded; nothing more was written.
    let all = gateway.settle(runs).await;
    assert_eq!(all.len(), runs, "{all:#?}");
    assert!(
        all.iter().all(|r| r["status"] == "succeeded"),
        "{:#?}",
        statuses(&all)
    );
    assert_eq!(zoho.records("Leads").len(), 3);
    assert_eq!(zoho.records("Contacts").len(), 1);
    // Calls: 3 for the first caller, 1 for the contact, 1 unlinked.
    assert_eq!(zoho.records("Calls").len(), 5);
    // Tasks: 3 + 1 completed (first caller, contact), 2 callbacks for Anna,
    // 1 for Bob (answered), 1 + 1 missed, 1 completed + 1 flagged (unlinked).
    assert_eq!(
        zoho.records("Tasks").len(),
        11,
        "{:#?}",
        zoho.records("Tasks")
    );
}

/// The before-call mode: the lead is made before the call for the boss, and
/// the pick-up and after-call webhooks complete that lead, not a second.
pub async fn before_call_mode(gateway: &dyn Gateway, account: &ZohoAccount) {
    let hook = install(gateway, account, true).await;
    let zoho = &account.zoho;
    let (anna, boss) = (account.user(ANNA), account.user(BOSS));
    let incoming = call("ua-5001", "380661234500", Some(ANNA), "ANSWERED");
    let mut runs = 0;
    for (n, moment) in ["before", "answered", "completed"].into_iter().enumerate() {
        send(gateway, &hook, &delivery(&incoming, moment, n), 1 + n % 4).await;
        runs += 1;
        gateway.settle(runs).await;
        if moment == "before" {
            let leads = zoho.records("Leads");
            assert_eq!(leads.len(), 1);
            assert_eq!(
                owner_of(&leads[0]),
                boss,
                "made before the call: the boss's"
            );
            assert_eq!(text(&leads[0], "rs_utm_source"), "google");
        }
    }
    let leads = zoho.records("Leads");
    assert_eq!(leads.len(), 1, "one lead, not two: {leads:#?}");
    let calls = zoho.records("Calls");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["What_Id"]["id"], leads[0]["id"]);
    assert_eq!(owner_of(&calls[0]), anna);
    let all = gateway.settle(runs).await;
    assert!(all.iter().all(|r| r["status"] == "succeeded"), "{all:#?}");
}

/// Deliveries that cannot be read: a precise 400 naming the key, no run,
/// nothing written; unknown keys are kept, not refused.
pub async fn bad_deliveries(gateway: &dyn Gateway, account: &ZohoAccount) {
    let hook = install(gateway, account, false).await;
    let mut no_caller = call("ua-6001", "380671111111", Some(ANNA), "ANSWERED");
    no_caller.remove("caller");
    let mut bad_date = call("ua-6002", "380671111112", Some(ANNA), "ANSWERED");
    bad_date.insert("calldate".into(), "25th of April, after lunch".into());
    let no_moment = Delivery {
        query: Vec::new(),
        ..delivery(
            &call("ua-6003", "380671111113", Some(ANNA), "ANSWERED"),
            "answered",
            0,
        )
    };
    for (delivery, field) in [
        (delivery(&no_caller, "answered", 0), "params.caller"),
        (delivery(&bad_date, "answered", 1), "params.calldate"),
        (no_moment, "query.moment"),
    ] {
        let (status, body) = gateway.webhook(&hook, &delivery).await;
        assert_eq!(status, 400, "{body}");
        assert!(body.to_string().contains(field), "{field}: {body}");
    }
    assert!(gateway.settle(0).await.is_empty());
    assert!(account.zoho.records("Leads").is_empty());
    // Unknown keys are kept with the event.
    let mut extra = call("ua-6004", "380671111114", Some(ANNA), "ANSWERED");
    extra.insert("my_custom_value".into(), "42".into());
    let (status, body) = gateway
        .webhook(&hook, &delivery(&extra, "answered", 2))
        .await;
    assert_eq!(status, 200, "{body}");
    gateway.settle(1).await;
    assert_eq!(account.zoho.records("Leads").len(), 1);
}

/// Preflight: an account without `rs_utm_term` is refused on save with the
/// field named; a field deleted later skips the runs that would write it
/// (nothing half-made) and marks the automation; restoring it clears the
/// mark.
pub async fn missing_fields(gateway: &dyn Gateway, account: &ZohoAccount) {
    let zoho = &account.zoho;
    let installed = connect(gateway, account).await;
    assert!(zoho.remove_field("Leads", "rs_utm_term"));
    let (status, refused) = instantiate(gateway, &installed, false).await;
    assert_eq!(status, 422, "{refused}");
    let errors = refused["error"]["errors"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!errors.is_empty(), "{refused}");
    for error in &errors {
        let field = error["field"].as_str().unwrap_or_default();
        assert!(
            field.starts_with("automations[") && field.ends_with(".fields.custom.rs_utm_term"),
            "{refused:#}"
        );
        let message = error["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("rs_utm_term") && message.contains("Setup"),
            "{message}"
        );
    }
    let (_, saved) = gateway.admin("GET", "/v1/automations", None).await;
    assert_eq!(saved["items"], json!([]), "nothing saved: {saved}");

    zoho.add_custom_field("Leads", "rs_utm_term")
        .expect("field back");
    // An employee mapped to someone who is not an active Zoho user.
    let (status, refused) = gateway
        .admin(
            "POST",
            "/v1/recipes/ringostat-zoho/instantiate",
            Some(json!({
                "connections": {"ringostat": installed.ringostat, "zoho": installed.zoho},
                "parameters": {"employees": {"103": "gone@corp.example"}, "senior_manager": BOSS},
            })),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused.to_string().contains("gone@corp.example")
            && refused.to_string().contains("fields.owner"),
        "{refused:#}"
    );
    let (status, created) = instantiate(gateway, &installed, false).await;
    assert_eq!(status, 201, "{created}");

    // Deleted later: the run is skipped with the reason, no lead is made,
    // and the automation's health names the field.
    assert!(zoho.remove_field("Leads", "rs_utm_term"));
    let first = call("ua-7001", "380679990001", Some(ANNA), "ANSWERED");
    send(
        gateway,
        &installed.hook,
        &delivery(&first, "answered", 0),
        2,
    )
    .await;
    let runs = gateway.settle(1).await;
    assert_eq!(runs[0]["status"], "skipped", "{runs:#?}");
    assert!(
        runs[0]["outcome"]
            .as_str()
            .unwrap_or_default()
            .contains("rs_utm_term"),
        "{runs:#?}"
    );
    assert!(zoho.records("Leads").is_empty(), "no half-made lead");
    let (_, automation) = gateway
        .admin(
            "GET",
            "/v1/automations/ringostat-call-answered-to-zoho",
            None,
        )
        .await;
    assert!(
        automation["health"]
            .as_str()
            .unwrap_or_default()
            .contains("rs_utm_term"),
        "{automation:#}"
    );

    // Restored: the next call (the same caller: the skipped run left no
    // claim on the number behind) runs, and the mark is gone.
    zoho.add_custom_field("Leads", "rs_utm_term")
        .expect("field back");
    let second = call("ua-7002", "380679990001", Some(ANNA), "ANSWERED");
    send(
        gateway,
        &installed.hook,
        &delivery(&second, "answered", 1),
        1,
    )
    .await;
    let runs = gateway.settle(2).await;
    assert!(runs.iter().any(|r| r["status"] == "succeeded"), "{runs:#?}");
    let leads = zoho.records("Leads");
    assert_eq!(leads.len(), 1);
    assert_eq!(text(&leads[0], "rs_utm_term"), "crm");
    let (_, automation) = gateway
        .admin(
            "GET",
            "/v1/automations/ringostat-call-answered-to-zoho",
            None,
        )
        .await;
    assert!(automation["health"].is_null(), "{automation:#}");
}

/// Access tokens expire in the middle of a busy minute: one refresh, and no
/// run fails. Then the grant is revoked: the next run fails with
/// "reauthorization needed", and so does the connection's health.
pub async fn tokens_expire_mid_burst_then_the_grant_is_revoked(
    gateway: &dyn Gateway,
    account: &ZohoAccount,
) {
    let installed = connect(gateway, account).await;
    let (status, created) = instantiate(gateway, &installed, false).await;
    assert_eq!(status, 201, "{created}");
    let oauth = &account.oauth;
    let calls: Vec<_> = (0..24)
        .map(|n| {
            call(
                &format!("ua-8{n:03}"),
                &format!("38067100{n:04}"),
                Some(ANNA),
                "ANSWERED",
            )
        })
        .collect();
    let deliveries: Vec<Delivery> = calls.iter().map(|c| delivery(c, "answered", 0)).collect();
    let (first_half, second_half) = deliveries.split_at(12);
    futures_join(gateway, &installed.hook, first_half).await;
    let refreshes_before = oauth.refresh_calls();
    oauth.expire_access_tokens();
    futures_join(gateway, &installed.hook, second_half).await;
    let runs = gateway.settle(24).await;
    assert!(
        runs.iter().all(|r| r["status"] == "succeeded"),
        "{:#?}",
        statuses(&runs)
    );
    assert_eq!(account.zoho.records("Leads").len(), 24);
    assert_eq!(
        oauth.refresh_calls(),
        refreshes_before + 1,
        "the expired token is refreshed once, however many calls saw the 401"
    );

    oauth.revoke_all();
    oauth.expire_access_tokens();
    let last = call("ua-8999", "380671009999", Some(ANNA), "ANSWERED");
    send(gateway, &installed.hook, &delivery(&last, "answered", 0), 1).await;
    let failed = wait_for(gateway, |runs| {
        runs.iter().find(|r| r["status"] == "failed").cloned()
    })
    .await;
    let outcome = failed["outcome"].as_str().unwrap_or_default();
    assert!(outcome.contains("reauthorization needed"), "{failed:#}");
    let (_, connection) = gateway
        .admin("GET", &format!("/v1/connections/{}", installed.zoho), None)
        .await;
    assert!(
        connection["health"]
            .as_str()
            .unwrap_or_default()
            .starts_with("reauthorization needed"),
        "{connection:#}"
    );
    assert_eq!(account.zoho.records("Leads").len(), 24);
}

/// Sends the deliveries all at once.
async fn futures_join(gateway: &dyn Gateway, hook: &str, deliveries: &[Delivery]) {
    let mut pending = Vec::new();
    for delivery in deliveries {
        pending.push(gateway.webhook(hook, delivery));
    }
    for (status, body) in futures_util::future::join_all(pending).await {
        assert!(status == 200 || status == 202, "{status} {body}");
    }
}

/// Polls the runs (with a deadline) until `found` picks something.
async fn wait_for<T>(gateway: &dyn Gateway, found: impl Fn(&[Value]) -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let runs = gateway.runs().await;
        if let Some(hit) = found(&runs) {
            return hit;
        }
        assert!(std::time::Instant::now() < deadline, "{runs:#?}");
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
