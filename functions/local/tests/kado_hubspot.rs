//! The KADO ↔ HubSpot recipe through `crmbridge serve`, against the KADO
//! fake (crmbridge's own adapter contract) and the HubSpot fake. Both fakes
//! report every write, crmbridge's own included, as HubSpot and a KADO
//! adapter do: after each case both sides' webhooks are delivered until
//! nothing is left, and the records are counted exactly — an echo written
//! back would show as an extra write, a loop would never go quiet.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

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
    /// Every distinct event crmbridge accepted so far: each starts exactly
    /// one run (this recipe has one automation per event kind; a kind
    /// without one is recorded as "no match").
    accepted: std::sync::Mutex<std::collections::BTreeSet<String>>,
    kado: FakeKado,
    hubspot: FakeHubSpot,
    /// The webhook paths of the HubSpot and KADO connections.
    hooks: (String, String),
    /// The import activation started.
    import: String,
    workers: usize,
    _accounts: FakeOAuth,
    _dir: tempfile::TempDir,
}

impl World {
    async fn start() -> Self {
        Self::start_seeded(|_, _| {}).await
    }

    /// Like [`World::start`], with records put into both fakes (by their
    /// users, before anyone listens) ahead of the recipe's activation; the
    /// activation's import is then left running.
    async fn start_seeded(seed: impl FnOnce(&FakeHubSpot, &FakeKado)) -> Self {
        Self::start_with(seed, &[]).await
    }

    /// [`World::start_seeded`], with more flags for `serve`.
    async fn start_with(seed: impl FnOnce(&FakeHubSpot, &FakeKado), flags: &[&str]) -> Self {
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
        seed(&hubspot, &kado);
        let seeded = !hubspot.contacts().is_empty();
        let dir = tempfile::tempdir().unwrap();
        // The import writes thousands of records: more workers then.
        let workers = if seeded { 4 } else { 2 };
        let mut args = vec!["--allow-any-vendor-url"];
        args.extend_from_slice(flags);
        let server = serve_with(&dir.path().join("data"), workers, &args);
        let key = server.owner_key.clone().unwrap();
        let world = Self {
            server,
            key,
            accepted: Default::default(),
            kado,
            hubspot,
            hooks: (String::new(), String::new()),
            workers,
            import: String::new(),
            _accounts: accounts,
            _dir: dir,
        };
        let mut world = world;
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
        assert_eq!(created["items"].as_array().unwrap().len(), 6, "{created}");
        // Activation imports HubSpot's existing records; the cases begin
        // once it has finished (both fakes start empty).
        let imports = created["imports"].as_array().unwrap();
        assert_eq!(imports.len(), 1, "{created}");
        assert_eq!(imports[0]["connection"], hs["id"]);
        world.import = imports[0]["id"].as_str().unwrap().to_owned();
        if !seeded {
            world.import_finished().await;
        }
        for connection in [&hs, &kd] {
            let text = connection.to_string();
            assert!(
                !text.contains(CLIENT_SECRET)
                    && !text.contains(KADO_TOKEN)
                    && !text.contains(KADO_SECRET)
            );
        }
        world.hooks = (
            hs["webhook_path"].as_str().unwrap().to_owned(),
            kd["webhook_path"].as_str().unwrap().to_owned(),
        );
        world.listen();
        world
    }

    /// Points both fakes' webhooks at the running server.
    fn listen(&self) {
        self.hubspot
            .subscribe(&format!("{}{}", self.server.base, self.hooks.0));
        self.kado.subscribe(
            &format!("{}{}", self.server.base, self.hooks.1),
            Some(KADO_SECRET),
        );
    }

    /// Kills `serve` with SIGKILL (no chance to finish anything) and starts
    /// it again on the same data directory.
    fn kill_and_restart(&mut self) {
        self.server.child.kill().unwrap();
        self.server.child.wait().unwrap();
        let data = self._dir.path().join("data");
        self.server = serve_with(&data, self.workers, &["--allow-any-vendor-url"]);
        self.listen();
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        common::post_json(&self.server.base, &self.key, path, body).await
    }

    async fn get(&self, path: &str) -> Value {
        let response = client()
            .get(format!("{}{path}", self.server.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    /// The activation's import as the admin API shows it.
    async fn import(&self) -> Value {
        self.get(&format!("/v1/imports/{}", self.import)).await
    }

    /// Waits until the import has finished, and answers it.
    async fn import_finished(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let import = self.import().await;
            if import["status"] == "finished" {
                assert_eq!(import["done"], import["total"], "{import}");
                assert!(import["finished_at"].is_string(), "{import}");
                return import;
            }
            assert_ne!(import["status"], "failed", "{import}");
            assert!(
                Instant::now() < deadline,
                "the import never finished: {import}"
            );
            pause().await;
        }
    }

    /// One round of both sides' webhooks: every event sent is noted as
    /// one that starts one run once accepted (a delivery that failed is
    /// sent again by the fake later). Answers the deliveries made and
    /// whether each was answered 2xx.
    async fn deliver(&self) -> Vec<bool> {
        let mut answered = Vec::new();
        for delivery in self.kado.deliver_webhooks().await {
            answered.push(delivery.ok());
            let body: Value = serde_json::from_str(&delivery.body).unwrap();
            let events = match body {
                Value::Array(events) => events,
                event => vec![event],
            };
            for event in events {
                // Ours come back and are dropped; other teams' ignored.
                if event["origin"] == "user" && event["team_id"] == "t_sales" {
                    self.accepted
                        .lock()
                        .unwrap()
                        .insert(format!("kado:{}", event["event_id"]));
                }
            }
        }
        for delivery in self.hubspot.deliver_webhooks().await {
            answered.push(delivery.status == Some(200));
            for event in &delivery.events {
                self.accepted.lock().unwrap().insert(format!(
                    "hubspot:{}:{}:{}:{}",
                    event["eventId"], event["objectId"], event["occurredAt"], event["propertyName"]
                ));
            }
        }
        answered
    }

    /// Delivers both sides' webhooks, and waits for the runs they start,
    /// until neither side has anything left to send.
    async fn quiet(&self) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let answered = self.deliver().await;
            assert!(
                answered.iter().all(|ok| *ok),
                "a webhook delivery was refused"
            );
            let expected = self.accepted.lock().unwrap().len();
            let all = self.settled(expected).await;
            if answered.is_empty()
                && self.kado.pending_webhooks().is_empty()
                && self.hubspot.pending_webhooks().is_empty()
            {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "the two sides never went quiet: {} runs",
                all.len()
            );
        }
    }

    /// Waits until `expected` runs exist (every accepted event has run)
    /// and none is running or waiting for a retry.
    async fn settled(&self, expected: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let all = runs(&self.server, &self.key).await;
            let unfinished: Vec<&Value> = all
                .iter()
                .filter(|r| r["status"] == "running" || r["status"] == "failed")
                .collect();
            if all.len() >= expected && unfinished.is_empty() {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {expected} runs, {} unfinished: {:#?}",
                all.len(),
                unfinished.len(),
                &unfinished[..unfinished.len().min(20)]
            );
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

    // A contact and its note made seconds apart (both reach crmbridge
    // before the contact's HubSpot id is recorded): one HubSpot contact,
    // the note on it.
    let cy = w
        .kado
        .create_contact_as_user(
            "t_sales",
            json!({"first_name": "Cy", "emails": ["cy@example.com"]}),
            false,
        )
        .unwrap();
    w.kado
        .create_note_as_user(&cy, "Call back Monday", false)
        .unwrap();
    w.quiet().await;
    let cys: Vec<Value> = w
        .hubspot
        .contacts()
        .into_iter()
        .filter(|c| c["properties"]["email"] == "cy@example.com")
        .collect();
    assert_eq!(cys.len(), 1, "{:#?}", w.hubspot.contacts());
    let cy_hs = cys[0]["id"].as_str().unwrap().to_owned();
    let cy_note = w
        .hubspot
        .notes()
        .into_iter()
        .find(|n| n["properties"]["hs_note_body"] == "Call back Monday")
        .expect("the note reached HubSpot");
    assert_eq!(
        w.hubspot
            .associations_of_note(cy_note["id"].as_str().unwrap()),
        vec![cy_hs.clone()]
    );
    assert_eq!(
        w.kado.contact(&cy).unwrap()["external_refs"]["hubspot"],
        cy_hs
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

    // A note made in HubSpot on Bob → a KADO note on his KADO contact, once
    // (and it does not come back to HubSpot).
    let bob_note = w
        .hubspot
        .create_as_user(
            "notes",
            &[
                ("hs_note_body", "Sent the quote"),
                ("hs_timestamp", "2026-11-26T10:00:00Z"),
            ],
        )
        .unwrap();
    w.hubspot.associate_as_user(&bob_note, &bob_hs).unwrap();
    w.quiet().await;
    let bob_notes: Vec<Value> = w
        .kado
        .notes()
        .into_iter()
        .filter(|n| n["external_refs"]["hubspot"] == bob_note)
        .collect();
    assert_eq!(bob_notes.len(), 1, "{:#?}", w.kado.notes());
    assert_eq!(bob_notes[0]["contact_id"], bob[0]["id"]);
    assert_eq!(bob_notes[0]["body"], "Sent the quote");
    assert_eq!(w.hubspot.notes().len(), 3, "{:#?}", w.hubspot.notes());

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

    // Totals: three contacts on each side that take part, three notes, and
    // every echo filtered (none written back).
    assert_eq!(w.hubspot.contacts().len(), 3);
    assert_eq!(w.hubspot.notes().len(), 3);
    assert_eq!(w.kado.notes().len(), 3, "{:#?}", w.kado.notes());
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

/// Ping-pong: people create and edit contacts on both sides, every webhook
/// is delivered two or three times, and both fakes report crmbridge's own
/// writes too. Afterwards: no contact twice on either side, every person's
/// last edit arrived on the other side, and crmbridge wrote exactly once
/// per person's change — an echo written back would be an extra write.
/// `CRMBRIDGE_PINGPONG_OPS` sets the number of changes (default 1000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_pong_writes_each_change_once_and_echoes_nothing() {
    use std::collections::BTreeMap;

    let ops: usize = std::env::var("CRMBRIDGE_PINGPONG_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let w = World::start().await;
    w.kado.set_duplicate_deliveries(2);
    w.hubspot.set_duplicate_deliveries(3);
    // A person's HubSpot contact arrives as one creation event (HubSpot
    // may add an event per property; the count below assumes one).
    w.hubspot.set_property_changes_on_create(false);

    // Contact → (KADO id, HubSpot id), filled in once both sides have it.
    struct Pair {
        kado: Option<String>,
        hubspot: Option<String>,
        email: String,
        title: Option<String>,
    }
    let mut pairs: Vec<Pair> = Vec::new();
    let (mut kado_creates, mut kado_edits, mut hubspot_creates, mut hubspot_edits) = (0, 0, 0, 0);
    // A small deterministic generator: the run is the same every time.
    let mut seed: u64 = 20_261_125;
    let mut next = |n: usize| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        ((seed >> 33) as usize) % n.max(1)
    };
    let batch = 25;
    let mut done = 0;
    while done < ops {
        // Within one batch a contact is edited on one side only: which of
        // two simultaneous edits wins is the vendors' clock, not ours.
        let mut touched: BTreeMap<usize, bool> = BTreeMap::new();
        for _ in 0..batch.min(ops - done) {
            done += 1;
            let synced: Vec<usize> = (0..pairs.len())
                .filter(|i| pairs[*i].kado.is_some() && pairs[*i].hubspot.is_some())
                .collect();
            let mut op = next(4);
            let (mut i, mut in_kado) = (0, false);
            if op < 2 && !synced.is_empty() {
                i = synced[next(synced.len())];
                in_kado = next(2) == 0;
                // Edited on the other side in this batch already: edit it
                // there again instead.
                if let Some(side) = touched.get(&i) {
                    in_kado = *side;
                }
            } else if op < 2 {
                op = 2;
            }
            match op {
                0 | 1 => {
                    touched.insert(i, in_kado);
                    let title = format!("title-{done}");
                    if in_kado {
                        w.kado
                            .edit_contact_as_user(
                                pairs[i].kado.as_ref().unwrap(),
                                json!({"job_title": title}),
                            )
                            .unwrap();
                        kado_edits += 1;
                    } else {
                        w.hubspot
                            .edit_as_user(
                                "contacts",
                                pairs[i].hubspot.as_ref().unwrap(),
                                &[("jobtitle", &title)],
                            )
                            .unwrap();
                        hubspot_edits += 1;
                    }
                    pairs[i].title = Some(title);
                }
                2 => {
                    let email = format!("k{done}@example.com");
                    let id = w
                        .kado
                        .create_contact_as_user(
                            "t_sales",
                            json!({"first_name": "K", "emails": [email]}),
                            false,
                        )
                        .unwrap();
                    kado_creates += 1;
                    pairs.push(Pair {
                        kado: Some(id),
                        hubspot: None,
                        email,
                        title: None,
                    });
                }
                _ => {
                    let email = format!("h{done}@example.com");
                    let id = w
                        .hubspot
                        .create_as_user("contacts", &[("email", &email), ("firstname", "H")])
                        .unwrap();
                    hubspot_creates += 1;
                    pairs.push(Pair {
                        kado: None,
                        hubspot: Some(id),
                        email,
                        title: None,
                    });
                }
            }
        }
        w.quiet().await;
        // Learn the other side's ids of the new contacts.
        let kado_by_email: BTreeMap<String, Value> = w
            .kado
            .contacts()
            .into_iter()
            .filter_map(|c| c["emails"][0].as_str().map(|e| (e.to_owned(), c.clone())))
            .collect();
        let hubspot_by_email: BTreeMap<String, Value> = w
            .hubspot
            .contacts()
            .into_iter()
            .filter_map(|c| {
                c["properties"]["email"]
                    .as_str()
                    .map(|e| (e.to_owned(), c.clone()))
            })
            .collect();
        for pair in &mut pairs {
            if pair.kado.is_none() {
                let Some(found) = kado_by_email.get(&pair.email) else {
                    let all = runs(&w.server, &w.key).await;
                    panic!("{} never reached KADO: {all:#?}", pair.email);
                };
                pair.kado = found["id"].as_str().map(str::to_owned);
            }
            if pair.hubspot.is_none() {
                pair.hubspot = hubspot_by_email[&pair.email]["id"]
                    .as_str()
                    .map(str::to_owned);
            }
        }
    }
    let runs = w.quiet().await;
    assert!(runs.iter().all(|r| r["status"] != "failed"), "a run failed");

    // No contact twice, on either side.
    let kado_emails: Vec<String> = w
        .kado
        .contacts()
        .iter()
        .filter_map(|c| c["emails"][0].as_str().map(str::to_owned))
        .collect();
    let hubspot_emails: Vec<String> = w
        .hubspot
        .contacts()
        .iter()
        .filter_map(|c| c["properties"]["email"].as_str().map(str::to_owned))
        .collect();
    for emails in [&kado_emails, &hubspot_emails] {
        let mut unique = emails.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), emails.len(), "a contact twice");
        assert_eq!(emails.len(), pairs.len());
    }
    // Every person's last edit arrived on both sides.
    for pair in &pairs {
        if let Some(title) = &pair.title {
            let kado = w.kado.contact(pair.kado.as_ref().unwrap()).unwrap();
            let hubspot = w.hubspot.contact(pair.hubspot.as_ref().unwrap()).unwrap();
            assert_eq!(kado["job_title"].as_str(), Some(title.as_str()), "{kado:#}");
            assert_eq!(
                hubspot["properties"]["jobtitle"].as_str(),
                Some(title.as_str()),
                "{hubspot:#}"
            );
        }
    }
    // crmbridge wrote once per person's change, never an echo back.
    let hubspot_writes = w
        .hubspot
        .requests()
        .iter()
        .filter(|r| {
            (r.method == "POST" && r.path.ends_with("/batch/upsert")) || r.method == "PATCH"
        })
        .count();
    let kado_writes = w
        .kado
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" || r.method == "PATCH")
        .count();
    assert_eq!(hubspot_writes, kado_creates + kado_edits, "HubSpot writes");
    // A KADO contact made by a person gets its HubSpot id recorded (one
    // PATCH); a HubSpot contact is made in KADO, and a HubSpot edit
    // written to it, by one PUT by reference each.
    let puts = w
        .kado
        .requests()
        .iter()
        .filter(|r| r.method == "PUT")
        .count();
    let patches: Vec<String> = w
        .kado
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| format!("{} {}", r.path, r.body))
        .collect();
    let mut per_automation = std::collections::BTreeMap::<String, usize>::new();
    for run in &runs {
        *per_automation
            .entry(format!("{}:{}", run["automation"], run["status"]))
            .or_default() += 1;
    }
    assert_eq!(
        kado_writes,
        kado_creates + hubspot_creates + hubspot_edits,
        "KADO writes: {puts} PUTs for {hubspot_creates} HubSpot creates + {hubspot_edits} HubSpot edits; {} PATCHes for {kado_creates} KADO creates; runs {per_automation:#?}; patches {patches:#?}",
        patches.len()
    );
    let echoes = runs
        .iter()
        .filter(|r| r["outcome"].as_str().is_some_and(|o| o.contains("echo")))
        .count();
    println!(
        "{ops} changes ({kado_creates} KADO creates, {kado_edits} KADO edits, {hubspot_creates} HubSpot creates, {hubspot_edits} HubSpot edits): {} runs, {echoes} echoes recognised, {hubspot_writes} HubSpot writes, {kado_writes} KADO writes",
        runs.len()
    );
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Import first: HubSpot holds 10,000 contacts (`CRMBRIDGE_IMPORT_CONTACTS`)
/// and 3,000 notes; KADO already has 2,000 of those people (1,500 with the
/// same e-mail, 500 with only the same phone). Activation imports them
/// while people keep working on both sides, and `serve` is killed with
/// SIGKILL twice while the import runs. Afterwards every person exists
/// once on each side, every note once on its contact, progress reached
/// done = total, and every live edit made during the import arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_survives_two_kills_links_existing_contacts_and_keeps_live_edits() {
    let contacts = env_count("CRMBRIDGE_IMPORT_CONTACTS", 10_000);
    let notes = contacts * 3 / 10;
    let existing = contacts / 5;
    let by_phone = existing / 4;
    let email = |i: usize| format!("person{i}@import.example");
    let mut hs_ids: Vec<String> = Vec::with_capacity(contacts);
    let mut note_ids: Vec<(String, usize)> = Vec::with_capacity(notes);
    let mut kado_existing: Vec<(String, usize)> = Vec::with_capacity(existing);
    let mut w = World::start_seeded(|hubspot, kado| {
        for i in 0..contacts {
            let id = hubspot
                .create_as_user(
                    "contacts",
                    &[
                        ("email", &email(i)),
                        ("firstname", &format!("P{i}")),
                        ("lastname", "Imported"),
                        ("phone", &format!("+1555{i:07}")),
                    ],
                )
                .unwrap();
            hs_ids.push(id);
        }
        for n in 0..notes {
            let on = (n * 7) % contacts;
            let id = hubspot
                .create_as_user(
                    "notes",
                    &[
                        ("hs_note_body", &format!("note {n} on person {on}")),
                        ("hs_timestamp", "2026-11-01T09:00:00Z"),
                    ],
                )
                .unwrap();
            hubspot.associate_as_user(&id, &hs_ids[on]).unwrap();
            note_ids.push((id, on));
        }
        for i in 0..existing {
            // Spread over the list, so matches happen throughout the import.
            let person = i * 5;
            let card = if i < existing - by_phone {
                json!({"first_name": format!("K{person}"), "emails": [email(person)]})
            } else {
                json!({"first_name": format!("K{person}"), "phones": [format!("555-{person:07}")]})
            };
            let id = kado.create_contact_as_user("t_sales", card, false).unwrap();
            kado_existing.push((id, person));
        }
    })
    .await;

    // While the import runs: people edit HubSpot contacts (some twice) and
    // make KADO contacts; serve is killed twice.
    let mut kills_at: Vec<u64> = Vec::new();
    let mut edits: std::collections::BTreeMap<usize, String> = Default::default();
    let mut kado_made: Vec<String> = Vec::new();
    let mut round = 0usize;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let import = w.import().await;
        let done = import["done"].as_u64().unwrap();
        let running = import["status"] == "running";
        let kill_points = [contacts as u64 / 5, contacts as u64 * 3 / 5];
        if running && kills_at.len() < 2 && done >= kill_points[kills_at.len()] {
            kills_at.push(done);
            w.kill_and_restart();
            continue;
        }
        if edits.len() < 100 || round < 150 {
            let person = (round * 97) % contacts;
            let title = format!("Title {round}");
            w.hubspot
                .edit_as_user("contacts", &hs_ids[person], &[("jobtitle", &title)])
                .unwrap();
            edits.insert(person, title);
            if round.is_multiple_of(5) {
                let id = w
                    .kado
                    .create_contact_as_user(
                        "t_sales",
                        json!({"first_name": "Live", "emails": [format!("live{round}@kado.example")]}),
                        false,
                    )
                    .unwrap();
                kado_made.push(id);
            }
        }
        round += 1;
        w.deliver().await;
        if !running && kills_at.len() == 2 && round >= 150 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the import never finished: {import}"
        );
        pause().await;
    }
    assert_eq!(
        kills_at.len(),
        2,
        "serve was killed twice during the import"
    );

    // Every imported record is one event with one run; then both sides go
    // quiet.
    let import = w.import_finished().await;
    for n in 0..import["done"].as_u64().unwrap() {
        w.accepted.lock().unwrap().insert(format!("import:{n}"));
    }
    let runs = w.quiet().await;
    assert!(runs.iter().all(|r| r["status"] != "failed"));
    let kinds = import["kinds"].as_array().unwrap();
    assert_eq!(kinds[0]["kind"], "hubspot.contact.created");
    assert!(
        kinds[0]["done"].as_u64().unwrap() >= contacts as u64,
        "{import}"
    );
    assert_eq!(kinds[1]["done"], json!(notes), "{import}");
    assert_eq!(import["done"], import["total"], "{import}");
    let started = import["started_at"].as_str().unwrap();
    assert!(
        import["finished_at"].as_str().unwrap() > started,
        "{import}"
    );

    // HubSpot: the seeded people plus the KADO-made ones, each once; no
    // note came back.
    let hubspot_contacts = w.hubspot.contacts();
    assert_eq!(hubspot_contacts.len(), contacts + kado_made.len());
    let mut emails = std::collections::BTreeSet::new();
    for c in &hubspot_contacts {
        assert!(
            emails.insert(c["properties"]["email"].to_string()),
            "twice: {c}"
        );
    }
    assert_eq!(w.hubspot.notes().len(), notes);

    // KADO: one contact per HubSpot contact, the existing ones linked (not
    // doubled), by e-mail and by phone.
    let kado_contacts = w.kado.contacts();
    assert_eq!(
        kado_contacts.len(),
        contacts + kado_made.len(),
        "{} KADO contacts",
        kado_contacts.len()
    );
    let mut by_ref: std::collections::BTreeMap<String, Value> = Default::default();
    for c in &kado_contacts {
        let reference = c["external_refs"]["hubspot"]
            .as_str()
            .expect("linked")
            .to_owned();
        assert!(
            by_ref.insert(reference, c.clone()).is_none(),
            "two KADO contacts for one HubSpot contact: {c}"
        );
    }
    for (i, id) in hs_ids.iter().enumerate() {
        let kado = &by_ref[id];
        assert!(
            kado["emails"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| *e == email(i)),
            "{kado}"
        );
    }
    for (kado_id, person) in &kado_existing {
        let kado = w.kado.contact(kado_id).unwrap();
        assert_eq!(
            kado["external_refs"]["hubspot"],
            json!(hs_ids[*person]),
            "{kado}"
        );
    }

    // Notes: each once, on its contact's KADO contact.
    let kado_notes = w.kado.notes();
    assert_eq!(kado_notes.len(), notes);
    let mut seen = std::collections::BTreeSet::new();
    for note in &kado_notes {
        assert!(seen.insert(note["external_refs"]["hubspot"].to_string()));
    }
    let note_by_ref: std::collections::BTreeMap<String, &Value> = kado_notes
        .iter()
        .map(|n| {
            (
                n["external_refs"]["hubspot"].as_str().unwrap().to_owned(),
                n,
            )
        })
        .collect();
    for (id, on) in &note_ids {
        assert_eq!(note_by_ref[id]["contact_id"], by_ref[&hs_ids[*on]]["id"]);
    }

    // Every live edit arrived, the last one of each person.
    for (person, title) in &edits {
        assert_eq!(
            by_ref[&hs_ids[*person]]["job_title"],
            json!(title),
            "person {person}"
        );
    }
    let pages = w
        .hubspot
        .requests()
        .iter()
        .filter(|r| {
            r.method == "GET"
                && (r.path == "/crm/v3/objects/contacts" || r.path == "/crm/v3/objects/notes")
        })
        .count();
    println!(
        "imported {} records in {} pages with 2 kills at done = {kills_at:?}; {} live edits, {} KADO-made contacts; {} runs",
        import["done"],
        pages,
        edits.len(),
        kado_made.len(),
        runs.len()
    );
}

/// Polling is the safety net under KADO's webhooks: a contact whose webhook
/// never came (the adapter's subscription was down) still reaches HubSpot
/// at the next tick; a change that arrives both by webhook and by poll runs
/// once; crmbridge's own writes into KADO, seen by the poll, are not sent
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_kado_webhook_is_caught_by_the_poll_and_a_change_seen_twice_runs_once() {
    let w = World::start_with(|_, _| {}, &["--tick-interval", "1s"]).await;
    let polls = || {
        w.kado
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.query.contains("updated_since"))
            .count()
    };
    // Waits for `done`, delivering webhooks meanwhile, or holding them.
    let wait_for = async |what: &str, deliver: bool, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !done() {
            if deliver {
                w.deliver().await;
            }
            assert!(Instant::now() < deadline, "never: {what}");
            pause().await;
        }
    };
    // The first poll of each source only marks where the next starts.
    wait_for("KADO polled", true, &|| polls() >= 2).await;

    w.kado.unsubscribe();
    let lost = w
        .kado
        .create_contact_as_user(
            "t_sales",
            json!({"first_name": "Lost", "emails": ["lost@example.com"]}),
            false,
        )
        .unwrap();
    w.listen();
    let in_hubspot = |email: &str| {
        w.hubspot
            .contacts()
            .iter()
            .filter(|c| c["properties"]["email"] == email)
            .count()
    };
    wait_for("the lost contact in HubSpot", true, &|| {
        in_hubspot("lost@example.com") == 1
    })
    .await;
    wait_for("its HubSpot id recorded", true, &|| {
        w.kado.contact(&lost).unwrap()["external_refs"]["hubspot"].is_string()
    })
    .await;

    // Seen both ways: the webhook is held until the poll has carried the
    // contact to HubSpot, then delivered: the same change, not run again.
    w.kado
        .create_contact_as_user(
            "t_sales",
            json!({"first_name": "Both", "emails": ["both@example.com"]}),
            false,
        )
        .unwrap();
    wait_for("the polled contact in HubSpot", false, &|| {
        in_hubspot("both@example.com") == 1
    })
    .await;
    assert!(
        !w.kado.pending_webhooks().is_empty(),
        "the webhook is still held"
    );
    let after = polls();
    wait_for("three more polls", true, &|| polls() >= after + 6).await;
    assert_eq!(in_hubspot("both@example.com"), 1);
    assert_eq!(in_hubspot("lost@example.com"), 1);
    let all = runs(&w.server, &w.key).await;
    assert_eq!(
        count(&all, "kado-contact-to-hubspot", "succeeded"),
        2,
        "{all:#?}"
    );
    // Our own writes (the HubSpot ids recorded in KADO) were polled too,
    // and sent nowhere.
    assert_eq!(
        count(&all, "kado-contact-changed-to-hubspot", "succeeded"),
        0,
        "{all:#?}"
    );
    assert_eq!(w.hubspot.contacts().len(), 2);
    assert_eq!(w.kado.contacts().len(), 2);
}

/// The dry run of the KADO-contact automation on the webhook KADO is about
/// to send (reads on: HubSpot is searched by e-mail) plans exactly what
/// the run then sends, and writes nothing to HubSpot or KADO.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dry_run_of_a_new_kado_contact_plans_what_the_run_then_sends() {
    let w = World::start().await;
    w.quiet().await;
    w.kado
        .create_contact_as_user(
            "t_sales",
            json!({"first_name": "Dry", "last_name": "Run", "emails": ["dry@example.com"], "phones": ["+380501112233"]}),
            false,
        )
        .unwrap();
    let event = w
        .kado
        .pending_webhooks()
        .into_iter()
        .find(|e| e["kind"] == "contact.created")
        .unwrap();
    let body = event.to_string();
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let delivery = common::Delivery::json(&event)
        .header("x-timestamp", &timestamp)
        .header(
            "x-signature",
            &crmbridge_fakes::vendors::kado::signature(KADO_SECRET, &timestamp, body.as_bytes()),
        );
    let writes = || {
        let hubspot = w
            .hubspot
            .requests()
            .iter()
            .filter(|r| {
                r.method != "GET" && !r.path.ends_with("/search") && !r.path.ends_with("/batch/read")
            })
            .count();
        let kado = w.kado.requests().iter().filter(|r| r.method != "GET").count();
        hubspot + kado
    };
    let plan = common::dry_run(
        &w.server,
        &w.key,
        "kado-contact-to-hubspot",
        json!({"delivery": delivery.sample(), "reads": true}),
        writes,
    )
    .await;
    assert!(w.hubspot.contacts().is_empty(), "{plan:#}");
    let runs = w.quiet().await;
    let id = runs
        .iter()
        .find(|r| r["automation"] == "kado-contact-to-hubspot")
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .unwrap();
    let run = common::get_json(&w.server, &w.key, &format!("/v1/runs/{id}")).await;
    assert!(common::assert_plan_matches(&plan, &run) >= 1, "{plan:#}\n{run:#}");
}
