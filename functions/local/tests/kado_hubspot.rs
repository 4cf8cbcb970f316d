//! The KADO ↔ HubSpot recipe through `crmbridge serve`, against the KADO
//! fake (crmbridge's own adapter contract) and the HubSpot fake. Both fakes
//! report every write, crmbridge's own included, as HubSpot and a KADO
//! adapter do: after each case both sides' webhooks are delivered until
//! nothing is left, and the records are counted exactly — an echo written
//! back would show as an extra write, a loop would never go quiet.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Server, client, pause, runs, serve_with};
use crmbridge_fakes::oauth::{FakeOAuth, OAuthConfig};
use crmbridge_fakes::vendors::hubspot::FakeHubSpot;
use crmbridge_fakes::vendors::kado::FakeKado;
use serde_json::{Value, json};

const CLIENT_ID: &str = "hs-client";
const CLIENT_SECRET: &str = "hs-client-secret-91";
const KADO_TOKEN: &str = "kado-token-7";
const KADO_SECRET: &str = "kado-webhook-secret-3";

struct World {
    server: Server,
    key: String,
    kado: FakeKado,
    hubspot: FakeHubSpot,
    _accounts: FakeOAuth,
    _dir: tempfile::TempDir,
}

impl World {
    async fn start() -> Self {
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
        let dir = tempfile::tempdir().unwrap();
        let server = serve_with(&dir.path().join("data"), 2, &["--allow-any-vendor-url"]);
        let key = server.owner_key.clone().unwrap();
        let world = Self {
            server,
            key,
            kado,
            hubspot,
            _accounts: accounts,
            _dir: dir,
        };
        let hs = world
            .post(
                "/v1/connections",
                json!({"app": "hubspot", "name": "HubSpot",
                       "settings": {"base_url": world.hubspot.base_url(), "oauth_url": world._accounts.base_url()},
                       "credentials": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                                       "refresh_token": world._accounts.issue_refresh_token()}}),
            )
            .await;
        let kd = world
            .post(
                "/v1/connections",
                json!({"app": "kado", "name": "KADO (Acme)",
                       "settings": {"base_url": world.kado.base_url(), "company_id": "co_1", "teams": ["t_sales"]},
                       "credentials": {"token": KADO_TOKEN, "webhook_secret": KADO_SECRET}}),
            )
            .await;
        let created = world
            .post(
                "/v1/recipes/kado-hubspot/instantiate",
                json!({"connections": {"kado": kd["id"], "hubspot": hs["id"]},
                       "parameters": {"team": "t_sales"}}),
            )
            .await;
        assert_eq!(created["items"].as_array().unwrap().len(), 5, "{created}");
        for connection in [&hs, &kd] {
            let text = connection.to_string();
            assert!(
                !text.contains(CLIENT_SECRET)
                    && !text.contains(KADO_TOKEN)
                    && !text.contains(KADO_SECRET)
            );
        }
        let hook = |c: &Value| {
            format!(
                "{}{}",
                world.server.base,
                c["webhook_path"].as_str().unwrap()
            )
        };
        world.hubspot.subscribe(&hook(&hs));
        world.kado.subscribe(&hook(&kd), Some(KADO_SECRET));
        world
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let response = client()
            .post(format!("{}{path}", self.server.base))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    /// Delivers both sides' webhooks, and waits for the runs they start,
    /// until neither side has anything left to send.
    async fn quiet(&self) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut sent = 0;
            for delivery in self.kado.deliver_webhooks().await {
                assert!(delivery.ok(), "{delivery:?}");
                sent += 1;
            }
            for delivery in self.hubspot.deliver_webhooks().await {
                assert_eq!(delivery.status, Some(200), "{delivery:?}");
                sent += 1;
            }
            let all = self.settled().await;
            if sent == 0
                && self.kado.pending_webhooks().is_empty()
                && self.hubspot.pending_webhooks().is_empty()
            {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "the two sides never went quiet: {all:#?}"
            );
        }
    }

    async fn settled(&self) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let all = runs(&self.server, &self.key).await;
            if all
                .iter()
                .all(|r| r["status"] != "running" && r["status"] != "failed")
            {
                return all;
            }
            assert!(Instant::now() < deadline, "{all:#?}");
            pause().await;
        }
    }
}

fn count(runs: &[Value], automation: &str, status: &str) -> usize {
    runs.iter()
        .filter(|r| r["automation"] == automation && r["status"] == status)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_and_notes_flow_both_ways_once_private_and_other_teams_stay() {
    let w = World::start().await;

    // A new KADO contact → one HubSpot contact, and the KADO contact
    // records its HubSpot id.
    let ann = w
        .kado
        .create_contact_as_user(
            "t_sales",
            json!({"first_name": "Ann", "last_name": "Lee", "emails": ["ann@example.com"], "phones": ["+380671234567"]}),
            false,
        )
        .unwrap();
    let runs = w.quiet().await;
    let contacts = w.hubspot.contacts();
    assert_eq!(contacts.len(), 1, "{contacts:#?}");
    let ann_hs = contacts[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(contacts[0]["properties"]["email"], "ann@example.com");
    assert_eq!(contacts[0]["properties"]["lastname"], "Lee");
    assert_eq!(
        w.kado.contact(&ann).unwrap()["external_refs"]["hubspot"],
        ann_hs
    );
    assert_eq!(
        count(&runs, "kado-contact-to-hubspot", "succeeded"),
        1,
        "{runs:#?}"
    );
    // HubSpot reported our contact (creation and properties): echoes only.
    assert_eq!(
        count(&runs, "hubspot-contact-to-kado", "succeeded"),
        0,
        "{runs:#?}"
    );
    assert_eq!(w.kado.contacts().len(), 1, "no second KADO contact");

    // Private, and another team's: nothing leaves KADO.
    w.kado
        .create_contact_as_user(
            "t_sales",
            json!({"first_name": "Secret", "emails": ["secret@example.com"]}),
            true,
        )
        .unwrap();
    w.kado
        .create_contact_as_user(
            "t_other",
            json!({"first_name": "Other", "emails": ["other@example.com"]}),
            false,
        )
        .unwrap();
    w.quiet().await;
    assert_eq!(w.hubspot.contacts().len(), 1, "{:#?}", w.hubspot.contacts());

    // A note on Ann → a HubSpot note associated with her contact.
    w.kado
        .create_note_as_user(&ann, "Met at the expo", false)
        .unwrap();
    w.quiet().await;
    let notes = w.hubspot.notes();
    assert_eq!(notes.len(), 1, "{notes:#?}");
    let note_hs = notes[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(notes[0]["properties"]["hs_note_body"], "Met at the expo");
    assert_eq!(
        w.hubspot.associations_of_note(&note_hs),
        vec![ann_hs.clone()]
    );

    // A contact made in HubSpot → a KADO contact in the chosen team, once.
    let bob_hs = w
        .hubspot
        .create_as_user(
            "contacts",
            &[("email", "bob@example.com"), ("firstname", "Bob")],
        )
        .unwrap();
    w.quiet().await;
    let bob: Vec<Value> = w
        .kado
        .contacts()
        .into_iter()
        .filter(|c| c["external_refs"]["hubspot"] == bob_hs)
        .collect();
    assert_eq!(bob.len(), 1, "{:#?}", w.kado.contacts());
    assert_eq!(bob[0]["team_id"], "t_sales");
    assert_eq!(bob[0]["emails"], json!(["bob@example.com"]));

    // Edits by people flow both ways, once; our writes never come back.
    w.kado
        .edit_contact_as_user(&ann, json!({"job_title": "CTO"}))
        .unwrap();
    w.quiet().await;
    assert_eq!(
        w.hubspot.contact(&ann_hs).unwrap()["properties"]["jobtitle"],
        "CTO"
    );
    w.hubspot
        .edit_as_user("contacts", &bob_hs, &[("lastname", "Stone")])
        .unwrap();
    w.quiet().await;
    assert_eq!(bob_of(&w, &bob_hs)["last_name"], "Stone");

    // Made private later: its edits stay in KADO.
    w.kado.set_private(&ann, true).unwrap();
    w.kado
        .edit_contact_as_user(&ann, json!({"job_title": "CEO"}))
        .unwrap();
    let final_runs = w.quiet().await;
    assert_eq!(
        w.hubspot.contact(&ann_hs).unwrap()["properties"]["jobtitle"],
        "CTO"
    );

    // Totals: two contacts on each side that take part, one note, and
    // every echo filtered (none written back).
    assert_eq!(w.hubspot.contacts().len(), 2);
    assert_eq!(w.hubspot.notes().len(), 1);
    assert!(
        final_runs.iter().all(|r| r["status"] != "failed"),
        "{final_runs:#?}"
    );
    let echoes = final_runs
        .iter()
        .filter(|r| r["outcome"].as_str().is_some_and(|o| o.contains("echo")))
        .count();
    assert!(
        echoes > 0,
        "HubSpot reported our writes, and they were recognised: {final_runs:#?}"
    );
    let _ = runs;
}

fn bob_of(w: &World, hubspot_id: &str) -> Value {
    w.kado
        .contacts()
        .into_iter()
        .find(|c| c["external_refs"]["hubspot"] == hubspot_id)
        .unwrap()
}
