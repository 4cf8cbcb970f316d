//! Fake vendor APIs for crmbridge's tests: in-process HTTP servers on
//! `127.0.0.1:0` that follow each vendor's documented API closely enough for
//! our connectors and end-to-end tests to run against them.
//!
//! * [`vendors::moysklad::FakeMoySklad`] — MoySklad JSON API 1.2 (counterparties,
//!   customer orders, metadata, organization, webhook sender).
//! * [`vendors::calltouch::FakeCalltouch`] — Calltouch lead-service v1 deals 2.0
//!   (create / update), plus [`vendors::calltouch::send_call_webhook`], the call
//!   webhook Calltouch sends to us.
//! * [`vendors::retailcrm::FakeRetailCrm`] — retailCRM API v5 (customers, orders,
//!   order history, statuses).
//! * [`vendors::nethunt::FakeNetHunt`] — NetHunt CRM "Zapier" integration API
//!   (folders, fields, records, find / new / updated / record-change
//!   triggers, create and update with `fieldActions`).
//! * [`vendors::worksection::FakeWorksection`] — Worksection admin API v2 (md5-hash
//!   and `Authorization: Admin` HMAC auth, projects, tasks, events,
//!   webhooks with the URL probe), plus [`vendors::worksection::FakeWorksection::send_webhook`],
//!   the webhook Worksection sends to us.
//! * [`vendors::zoho::FakeZoho`] — Zoho CRM REST API `/crm/{v2…v8}` (org,
//!   users, field metadata, insert / upsert / update / get, search with a
//!   deterministic index lag, COQL, credit and concurrency limits); it
//!   accepts the access tokens of an [`oauth::FakeOAuth`], Zoho's accounts
//!   server.
//! * [`vendors::ringostat::FakeRingostat`] — Ringostat's call-log export
//!   (`/calls/list`), plus [`vendors::ringostat::RingostatWebhook`], the
//!   "Webhooks 2.0" call webhook Ringostat sends to us.
//! * [`vendors::hubspot::FakeHubSpot`] — HubSpot CRM v3 contacts and notes
//!   (search with index lag, batch, associations, the 409 conflict, the
//!   ten-second rate limit) and the signed webhooks it sends for every
//!   write, ours included; it accepts the tokens of an [`oauth::FakeOAuth`].
//! * [`vendors::kado::FakeKado`] — crmbridge's own KADO contract (KADO
//!   publishes no API): contacts and notes with teams and private items,
//!   and signed webhooks for every write.
//! * [`vendors::planfix::FakePlanfix`] — Planfix REST API v2 (Bearer tokens
//!   with scopes, checked before validation; contacts and their filters,
//!   tasks with numbers, comments, users, processes, projects) and the
//!   chat API for third-party chats (`/webchat/api`), plus the sender of
//!   operators' replies and first messages Planfix posts to the provider.
//! * [`vendors::verbox::FakeVerbox`] — crmbridge's own Verbox contract
//!   (Verbox's server API is only partly documented): `sendToClient`,
//!   the operator list, and the visitor events sent to us.
//!
//! Every fake keeps its records in memory, logs every request it receives
//! ([`RecordedRequest`], credentials redacted), and injects faults on demand
//! ([`Fault`]: `fail_next`, `fail_next_on`, `set_fault_rate`). The server stops
//! when its handle is dropped.
//!
//! The facts each fake follows are written down, with how sure we are of
//! each and the public source, in `shared/connectors/src/vendors/<vendor>/API.md`
//! (`calltouch`, `moysklad`, `retailcrm`, `nethunt`, `worksection`);
//! each module's docs say which of them are uncertain and what the fake does then.
//!
//! ```no_run
//! # async fn demo() -> Result<(), crmbridge_fakes::FakeError> {
//! use crmbridge_fakes::Fault;
//! use crmbridge_fakes::vendors::moysklad::FakeMoySklad;
//!
//! let ms = FakeMoySklad::start("token-123").await?;
//! // configure the connector with ms.base_url() and the token, then:
//! ms.fail_next_on(Some("POST"), "/entity/customerorder", 1, Fault::DropAfterCommit);
//! // … run the automation; the retry must reuse the syncId …
//! assert_eq!(ms.orders().len(), 1);
//! assert_eq!(ms.fault_count(), 1);
//! let order_id = ms.orders()[0]["id"].as_str().unwrap_or_default().to_owned();
//! ms.set_order_state(&order_id, "Выполнен")?;
//! let delivery = ms.send_webhook("http://127.0.0.1:8080/hooks/c1", &order_id, "UPDATE").await?;
//! assert!(delivery.delivered());
//! # Ok(()) }
//! ```

pub mod logs;
pub mod oauth;
pub mod scenarios;
mod server;
mod util;
pub mod vendors;

pub use server::{Fault, Gate, RecordedRequest};

/// Errors of the fakes' constructors and helpers.
#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    /// The listener could not be bound.
    #[error("cannot bind the fake server: {0}")]
    Bind(std::io::Error),
    /// A helper named a record the fake does not hold.
    #[error("not found: {0}")]
    NotFound(String),
    /// A helper was given an invalid argument (unknown state, bad URL, …).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// An outgoing request (webhook sender) failed.
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
}
