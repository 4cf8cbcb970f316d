//! The import benchmark: `crmbridge serve` (release build, fsync on)
//! activating the KADO ↔ HubSpot recipe over a HubSpot account that already
//! holds `contacts` contacts and 30 % as many notes, a fifth of the people
//! already in KADO. Measured from the activation until every record is in
//! KADO: records per second, and the calls each side took per contact.
//!
//! HubSpot allows 100 requests per 10 s per account and crmbridge keeps
//! under it; the import reads 100 records per call, so HubSpot is not the
//! bound — the KADO writes (a look-up and a write per contact) and the
//! engine's bookkeeping per run are.

use std::path::Path;
use std::time::{Duration, Instant};

use crmbridge_fakes::oauth::{FakeOAuth, OAuthConfig};
use crmbridge_fakes::vendors::hubspot::FakeHubSpot;
use crmbridge_fakes::vendors::kado::FakeKado;
use serde::Serialize;
use serde_json::{Value, json};

const CLIENT_ID: &str = "hs-bench";
const CLIENT_SECRET: &str = "hs-bench-secret";
const KADO_TOKEN: &str = "kado-bench";

#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    pub contacts: usize,
    pub notes: usize,
    pub already_in_kado: usize,
    /// From activation until the import had read every page.
    pub pages_read_s: f64,
    /// From activation until every contact and note was in KADO.
    pub total_s: f64,
    pub contacts_per_s: f64,
    pub records_per_s: f64,
    pub hubspot_calls: usize,
    pub hubspot_calls_per_contact: f64,
    pub kado_calls: usize,
    pub kado_calls_per_record: f64,
    pub cpu_seconds_per_1000_records: f64,
}

pub async fn run(serve_binary: &Path, contacts: usize) -> anyhow::Result<ImportReport> {
    let notes = contacts * 3 / 10;
    let existing = contacts / 5;
    let accounts = FakeOAuth::start(OAuthConfig::hubspot(CLIENT_ID, CLIENT_SECRET)).await?;
    let hubspot = FakeHubSpot::start(accounts.token_checker(), CLIENT_SECRET).await?;
    let kado = FakeKado::start(KADO_TOKEN, "co_1", &[("t_sales", "Sales")]).await?;
    let mut hs_ids = Vec::with_capacity(contacts);
    for i in 0..contacts {
        let id = hubspot.create_as_user(
            "contacts",
            &[
                ("email", &format!("person{i}@bench.example")),
                ("firstname", &format!("P{i}")),
                ("phone", &format!("+1555{i:07}")),
            ],
        )?;
        hs_ids.push(id);
    }
    for n in 0..notes {
        let id = hubspot.create_as_user(
            "notes",
            &[
                ("hs_note_body", &format!("note {n}")),
                ("hs_timestamp", "2026-11-01T09:00:00Z"),
            ],
        )?;
        hubspot.associate_as_user(&id, &hs_ids[(n * 7) % contacts])?;
    }
    for i in 0..existing {
        let person = i * 5;
        kado.create_contact_as_user(
            "t_sales",
            json!({"first_name": format!("K{person}"), "emails": [format!("person{person}@bench.example")]}),
            false,
        )?;
    }

    let server = crate::serve::spawn(serve_binary, 8)?;
    let (base, key, pid) = (server.base.clone(), server.key.clone(), server.pid);
    let http = reqwest::Client::new();
    let hs = server
        .admin(
            &http,
            "/v1/connections",
            json!({"app": "hubspot", "name": "HubSpot",
               "settings": {"base_url": hubspot.base_url(), "oauth_url": accounts.base_url()},
               "credentials": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                               "refresh_token": accounts.issue_refresh_token()}}),
        )
        .await?;
    let kd = server.admin(&http,
        "/v1/connections",
        json!({"app": "kado", "name": "KADO",
               "settings": {"base_url": kado.base_url(), "company_id": "co_1", "teams": ["t_sales"]},
               "credentials": {"token": KADO_TOKEN}}),
    )
    .await?;
    let hubspot_before = hubspot.api_calls();
    let kado_before = kado.api_calls();
    let (_, cpu_before) = crate::load::proc_stat(pid);
    let started = Instant::now();
    let created = server.admin(&http,
        "/v1/recipes/kado-hubspot/instantiate",
        json!({"connections": {"kado": kd["id"], "hubspot": hs["id"]}, "parameters": {"team": "t_sales"}}),
    )
    .await?;
    let import_id = created["imports"][0]["id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("the recipe started no import: {created}"))?
        .to_owned();
    let mut pages_read_s = None;
    let deadline = started + Duration::from_secs(3600);
    loop {
        if pages_read_s.is_none() {
            let import: Value = http
                .get(format!("{base}/v1/imports/{import_id}"))
                .bearer_auth(&key)
                .send()
                .await?
                .json()
                .await?;
            anyhow::ensure!(import["status"] != "failed", "the import failed: {import}");
            if import["status"] == "finished" {
                pages_read_s = Some(started.elapsed().as_secs_f64());
            }
        }
        let linked = kado
            .contacts()
            .iter()
            .filter(|c| c["external_refs"]["hubspot"].is_string())
            .count();
        if linked >= contacts && kado.notes().len() >= notes {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the import did not complete in an hour"
        );
        // Reading the fakes copies every record: a look every 200 ms keeps
        // the watcher from competing with the server it measures (±0.2 s).
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let total_s = started.elapsed().as_secs_f64();
    let (_, cpu_after) = crate::load::proc_stat(pid);
    drop(server);
    let hubspot_calls = hubspot.api_calls() - hubspot_before;
    let kado_calls = kado.api_calls() - kado_before;
    let records = contacts + notes;
    Ok(ImportReport {
        contacts,
        notes,
        already_in_kado: existing,
        pages_read_s: pages_read_s.unwrap_or(total_s),
        total_s,
        contacts_per_s: contacts as f64 / total_s,
        records_per_s: records as f64 / total_s,
        hubspot_calls,
        hubspot_calls_per_contact: hubspot_calls as f64 / contacts as f64,
        kado_calls,
        kado_calls_per_record: kado_calls as f64 / records as f64,
        cpu_seconds_per_1000_records: (cpu_after - cpu_before) / records as f64 * 1000.0,
    })
}
