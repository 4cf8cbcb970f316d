//! The KADO ↔ HubSpot recipe end to end through the real Lambda binaries
//! under the Runtime API emulator, on moto, against the HubSpot and KADO
//! fakes. The fakes post their webhooks over HTTP to a small stand-in for
//! API Gateway ([`common::api_gateway`]; the Host header kept: HubSpot
//! signs the URL); events
//! routed by the bus's dispatch rule are taken from its queue and handed to
//! `dispatch`, retried as Lambda's asynchronous invocation would be.
//!
//! Needs `CRMBRIDGE_TEST_AWS_ENDPOINT` (moto; infra/test.sh starts it) and
//! the binaries built (`cargo build --bins`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::sync::Arc;

use common::{Stack, admin_request, api_gateway, http};
use crmbridge_fakes::oauth::{FakeOAuth, OAuthConfig};
use crmbridge_fakes::vendors::hubspot::FakeHubSpot;
use crmbridge_fakes::vendors::kado::FakeKado;
use serde_json::{Value, json};

const CLIENT_ID: &str = "hs-client";
const CLIENT_SECRET: &str = "hs-client-secret-lambda";
const KADO_TOKEN: &str = "kado-token-lambda";
const KADO_SECRET: &str = "kado-webhook-secret-lambda";
/// Lambda's asynchronous invocation: the first attempt and two retries.
const ASYNC_ATTEMPTS: usize = 3;

struct Deployment {
    stack: Arc<Stack>,
    base: String,
    kado: FakeKado,
    hubspot: FakeHubSpot,
    accounts: FakeOAuth,
}

impl Deployment {
    async fn start() -> Self {
        let stack = Arc::new(Stack::start().await);
        let base = api_gateway(Arc::clone(&stack)).await;
        let accounts = FakeOAuth::start(OAuthConfig::hubspot(CLIENT_ID, CLIENT_SECRET))
            .await
            .unwrap();
        let hubspot = FakeHubSpot::start(accounts.token_checker(), CLIENT_SECRET)
            .await
            .unwrap();
        let kado = FakeKado::start(
            KADO_TOKEN,
            "co_1",
            &[("t_sales", "Sales"), ("t_other", "Other")],
        )
        .await
        .unwrap();
        Self {
            stack,
            base,
            kado,
            hubspot,
            accounts,
        }
    }

    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = admin_request(method, path, &self.stack.owner_key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        http(&self.stack.admin, request).await
    }

    /// Hands a routed event to dispatch until it succeeds, at most as
    /// often as Lambda would invoke it.
    async fn dispatch(&self, routed: &Value) {
        let mut errors = Vec::new();
        for _ in 0..ASYNC_ATTEMPTS {
            match self.stack.dispatcher.invoke(routed.clone()).await {
                Ok(_) => return,
                Err(err) => errors.push(err.to_string()),
            }
        }
        panic!(
            "dispatch failed {ASYNC_ATTEMPTS} times for {routed:#}: {errors:?}\n{}",
            self.stack.dispatcher.logs().join("\n")
        );
    }

    /// Delivers both fakes' webhooks and dispatches every routed event
    /// until nothing moves; answers every run.
    async fn quiet(&self) -> Vec<Value> {
        loop {
            let mut moved = 0;
            for delivery in self.kado.deliver_webhooks().await {
                assert!(delivery.ok(), "{delivery:?}");
                moved += 1;
            }
            for delivery in self.hubspot.deliver_webhooks().await {
                assert_eq!(delivery.status, Some(200), "{delivery:?}");
                moved += 1;
            }
            loop {
                let routed = self.stack.routing.receive_now().await;
                if routed.is_empty() {
                    break;
                }
                moved += routed.len();
                for event in &routed {
                    self.dispatch(event).await;
                }
            }
            if moved == 0 {
                let runs = self.stack.runs().await;
                assert!(
                    runs.iter()
                        .all(|r| r["status"] != "failed" && r["status"] != "running"),
                    "{runs:#?}"
                );
                return runs;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_and_notes_both_ways_through_the_lambda_binaries() {
    let d = Deployment::start().await;
    let (status, hs) = d
        .admin(
            "POST",
            "/v1/connections",
            Some(json!({"app": "hubspot", "name": "HubSpot",
                   "settings": {"base_url": d.hubspot.base_url(), "oauth_url": d.accounts.base_url()},
                   "credentials": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                                   "refresh_token": d.accounts.issue_refresh_token()}})),
        )
        .await;
    assert_eq!(status, 201, "{hs}");
    let (status, kd) = d
        .admin(
            "POST",
            "/v1/connections",
            Some(json!({"app": "kado", "name": "KADO (Acme)",
                   "settings": {"base_url": d.kado.base_url(), "company_id": "co_1", "teams": ["t_sales"]},
                   "credentials": {"token": KADO_TOKEN, "webhook_secret": KADO_SECRET}})),
        )
        .await;
    assert_eq!(status, 201, "{kd}");
    let (status, created) = d
        .admin(
            "POST",
            "/v1/recipes/kado-hubspot/instantiate",
            Some(
                json!({"connections": {"kado": kd["id"], "hubspot": hs["id"]},
                        "parameters": {"team": "t_sales"}}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["items"].as_array().unwrap().len(), 6);
    // Activation's import (nothing in HubSpot yet) runs through dispatch.
    d.quiet().await;
    let import_id = created["imports"][0]["id"].as_str().unwrap();
    let (_, import) = d
        .admin("GET", &format!("/v1/imports/{import_id}"), None)
        .await;
    assert_eq!(import["status"], "finished", "{import}");
    assert_eq!(
        (import["done"].clone(), import["total"].clone()),
        (json!(0), json!(0))
    );

    d.hubspot.subscribe(&format!(
        "{}{}",
        d.base,
        hs["webhook_path"].as_str().unwrap()
    ));
    d.kado.subscribe(
        &format!("{}{}", d.base, kd["webhook_path"].as_str().unwrap()),
        Some(KADO_SECRET),
    );

    // A new KADO contact → one HubSpot contact, its id recorded in KADO.
    let ann = d
        .kado
        .create_contact_as_user(
            "t_sales",
            json!({"first_name": "Ann", "last_name": "Lee", "emails": ["ann@example.com"]}),
            false,
        )
        .unwrap();
    d.quiet().await;
    let contacts = d.hubspot.contacts();
    assert_eq!(contacts.len(), 1, "{contacts:#?}");
    let ann_hs = contacts[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(contacts[0]["properties"]["email"], "ann@example.com");
    assert_eq!(
        d.kado.contact(&ann).unwrap()["external_refs"]["hubspot"],
        ann_hs
    );
    assert_eq!(d.kado.contacts().len(), 1, "no second KADO contact");

    // Private, and a team not selected: nothing leaves KADO.
    d.kado
        .create_contact_as_user(
            "t_sales",
            json!({"first_name": "Secret", "emails": ["secret@example.com"]}),
            true,
        )
        .unwrap();
    d.kado
        .create_contact_as_user(
            "t_other",
            json!({"first_name": "Other", "emails": ["other@example.com"]}),
            false,
        )
        .unwrap();
    d.quiet().await;
    assert_eq!(d.hubspot.contacts().len(), 1, "{:#?}", d.hubspot.contacts());

    // A note → a HubSpot note associated with that contact.
    d.kado
        .create_note_as_user(&ann, "Met at the expo", false)
        .unwrap();
    d.quiet().await;
    let notes = d.hubspot.notes();
    assert_eq!(notes.len(), 1, "{notes:#?}");
    assert_eq!(notes[0]["properties"]["hs_note_body"], "Met at the expo");
    assert_eq!(
        d.hubspot
            .associations_of_note(notes[0]["id"].as_str().unwrap()),
        vec![ann_hs.clone()]
    );

    // A contact created in HubSpot → one KADO contact in the chosen team.
    let bob_hs = d
        .hubspot
        .create_as_user(
            "contacts",
            &[("email", "bob@example.com"), ("firstname", "Bob")],
        )
        .unwrap();
    let runs = d.quiet().await;
    let bob: Vec<Value> = d
        .kado
        .contacts()
        .into_iter()
        .filter(|c| c["external_refs"]["hubspot"] == bob_hs)
        .collect();
    assert_eq!(bob.len(), 1, "{:#?}", d.kado.contacts());
    assert_eq!(bob[0]["team_id"], "t_sales");
    assert_eq!(
        d.hubspot.contacts().len(),
        2,
        "nothing came back as a new contact"
    );
    assert_eq!(d.hubspot.notes().len(), 1);
    let echoes = runs
        .iter()
        .filter(|r| r["outcome"].as_str().is_some_and(|o| o.contains("echo")))
        .count();
    assert!(
        echoes > 0,
        "HubSpot's reports of our writes were recognised: {runs:#?}"
    );

    // A stale signature: 401 at the gateway, nothing accepted.
    let before = d.stack.runs().await.len();
    d.hubspot.set_stale_timestamps(true);
    d.hubspot
        .edit_as_user("contacts", &bob_hs, &[("lastname", "Stone")])
        .unwrap();
    let refused = d.hubspot.deliver_webhooks().await;
    assert!(!refused.is_empty());
    assert!(refused.iter().all(|r| r.status == Some(401)), "{refused:?}");
    assert!(d.stack.routing.receive_now().await.is_empty());
    assert_eq!(d.stack.runs().await.len(), before);
}
