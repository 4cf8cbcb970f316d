//! The connector contract: one suite, run by [`contract_suite!`] against
//! every vendor with its fake. What every connector must do, whatever the
//! vendor:
//!
//! - a base URL outside the vendor's domains is refused (unless test mode);
//! - a 429 is retried, after the vendor's retry header when it sends one;
//! - a 5xx is retried with backoff;
//! - a refused credential is not transient, and no credential appears in an
//!   error or a log line;
//! - a create whose answer is lost (the vendor committed, the connection
//!   dropped) and then retried by the same step makes one record, never
//!   two: either the vendor de-duplicates it (a keyed action) or the
//!   connector does not resend it by itself (an unsafe action, which the
//!   engine then holds for review);
//! - fields an action does not know are refused before any call.
//!
//! A new vendor adds a [`ContractSubject`] here and one macro line; the
//! registry test (`registry.rs`) fails until it does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use common::{context, vendor};
use crmbridge_connectors::oauth::AccessTokens;
use crmbridge_connectors::{ActionError, Resend, Sent, VendorClient};
use crmbridge_fakes::oauth::{FakeOAuth, OAuthConfig};
use crmbridge_fakes::vendors::calltouch::FakeCalltouch;
use crmbridge_fakes::vendors::http::FakeReceiver;
use crmbridge_fakes::vendors::hubspot::FakeHubSpot;
use crmbridge_fakes::vendors::kado::FakeKado;
use crmbridge_fakes::vendors::moysklad::FakeMoySklad;
use crmbridge_fakes::vendors::nethunt::FakeNetHunt;
use crmbridge_fakes::vendors::planfix::FakePlanfix;
use crmbridge_fakes::vendors::retailcrm::FakeRetailCrm;
use crmbridge_fakes::vendors::verbox::FakeVerbox;
use crmbridge_fakes::vendors::worksection::FakeWorksection;
use crmbridge_fakes::vendors::zoho::FakeZoho;
use crmbridge_fakes::{Fault, RecordedRequest};
use serde_json::{Map, Value, json};

/// One vendor and its fake, as the contract needs them.
#[async_trait]
pub trait ContractSubject: Sized + Send + Sync {
    const APP: &'static str;
    /// Starts the fake (with whatever a create needs, e.g. a folder).
    async fn start() -> Self;
    /// Settings pointing at the fake.
    fn settings(&self) -> Value;
    fn credentials(&self) -> BTreeMap<String, String>;
    /// Credentials the fake refuses.
    fn wrong_credentials(&self) -> BTreeMap<String, String>;
    /// A create action and fields that make one record.
    fn create(&self) -> (&'static str, Map<String, Value>);
    /// How many records the create makes in the fake so far.
    fn records(&self) -> usize;
    /// What the vendor's retry header asks on a 429, if it sends one.
    fn retry_after(&self) -> Option<Duration>;
    /// Part of the create request's path or query, to aim a fault at it.
    fn create_request(&self) -> &'static str;
    fn requests(&self) -> Vec<RecordedRequest>;
    fn fail_next(&self, fault: Fault);
    fn fail_create(&self, fault: Fault);
    fn clear_faults(&self);
    fn clear_requests(&self);
    /// The setting that points the connector at the vendor's API.
    const BASE_URL_SETTING: &'static str = "base_url";
    /// The user chooses the host (the generic `http` action): any public
    /// one is allowed, only non-public ones are refused.
    const ANY_PUBLIC_HOST: bool = false;
    /// Access tokens for an OAuth vendor, made from the credentials.
    fn tokens(&self, _credentials: &BTreeMap<String, String>) -> Option<Box<dyn AccessTokens>> {
        None
    }
}

fn fields(value: Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap_or_default()
}

pub fn secrets_of(credentials: &BTreeMap<String, String>) -> Vec<String> {
    credentials
        .values()
        .filter(|v| v.len() >= 6 && !v.contains('@'))
        .cloned()
        .collect()
}

pub async fn base_url_outside_the_vendor_is_refused<S: ContractSubject>() {
    let subject = S::start().await;
    let vendor = vendor(S::APP).0;
    let mut settings = subject.settings();
    vendor
        .settings
        .validate_settings(&settings, true)
        .unwrap_or_else(|e| panic!("{}: the fake's settings are refused: {e:?}", S::APP));
    let foreign = [
        "https://attacker.example/api",
        "http://169.254.169.254/latest/meta-data",
        "https://127.0.0.1:8080/",
    ];
    for hostile in foreign.into_iter().skip(usize::from(S::ANY_PUBLIC_HOST)) {
        settings[S::BASE_URL_SETTING] = json!(hostile);
        let errors = vendor
            .settings
            .validate_settings(&settings, false)
            .expect_err(hostile);
        assert!(
            errors.iter().any(|e| e.field == S::BASE_URL_SETTING),
            "{}: {hostile}: {errors:?}",
            S::APP
        );
    }
}

pub async fn a_rate_limit_is_waited_out<S: ContractSubject>() {
    let subject = S::start().await;
    let (settings, credentials) = (subject.settings(), subject.credentials());
    let http = VendorClient::new();
    let tokens = subject.tokens(&credentials);
    let mut ctx = context(&settings, &credentials, &http, "contract/429");
    ctx.tokens = tokens.as_deref();
    subject.fail_next(Fault::TooManyRequests);
    let (action, fields) = subject.create();
    vendor(S::APP)
        .execute(&ctx, action, &fields, None)
        .await
        .unwrap_or_else(|e| panic!("{}: a 429 was not retried: {e}", S::APP));
    assert_eq!(subject.records(), 1, "{}", S::APP);
    let requests = subject.requests();
    let limited = requests
        .iter()
        .position(|r| r.status == Some(429))
        .expect("the 429 answered");
    let retry = requests.get(limited + 1).expect("a retry after the 429");
    if let Some(wait) = subject.retry_after() {
        // The retry came no sooner than the vendor asked.
        let waited = retry.received_at - requests[limited].received_at;
        assert!(
            waited >= wait,
            "{}: retried after {waited:?}, the vendor asked {wait:?}",
            S::APP
        );
    }
}

pub async fn a_server_error_is_retried<S: ContractSubject>() {
    let subject = S::start().await;
    let (settings, credentials) = (subject.settings(), subject.credentials());
    let http = VendorClient::new();
    let tokens = subject.tokens(&credentials);
    let mut ctx = context(&settings, &credentials, &http, "contract/5xx");
    ctx.tokens = tokens.as_deref();
    subject.fail_next(Fault::ServerError);
    let account = vendor(S::APP)
        .check(&ctx)
        .await
        .unwrap_or_else(|e| panic!("{}: a 5xx was not retried: {e}", S::APP));
    assert!(!account.is_null(), "{}", S::APP);
    let statuses: Vec<Option<u16>> = subject.requests().iter().map(|r| r.status).collect();
    assert!(
        statuses.len() >= 2 && statuses[0].is_some_and(|s| s >= 500),
        "{}: {statuses:?}",
        S::APP
    );
}

pub async fn credentials_never_reach_errors_or_logs<S: ContractSubject>() {
    let subject = S::start().await;
    let (logs, _guard) = crmbridge_fakes::logs::capture();
    let settings = subject.settings();
    let http = VendorClient::new();
    let wrong = subject.wrong_credentials();
    let tokens = subject.tokens(&wrong);
    let mut ctx = context(&settings, &wrong, &http, "contract/auth");
    ctx.tokens = tokens.as_deref();
    let err = vendor(S::APP).check(&ctx).await.expect_err("refused");
    assert!(!err.is_transient(), "{}: {err}", S::APP);
    // Faults on the right credentials too: retries and failures get logged.
    let good = subject.credentials();
    let tokens = subject.tokens(&good);
    let mut ctx = context(&settings, &good, &http, "contract/auth-5xx");
    ctx.tokens = tokens.as_deref();
    for _ in 0..12 {
        subject.fail_next(Fault::ServerError);
    }
    let failed = vendor(S::APP)
        .check(&ctx)
        .await
        .expect_err("5xx every time");
    subject.clear_faults();
    let (action, mut fields) = subject.create();
    fields.insert("no_such_field".into(), json!(1));
    let refused = vendor(S::APP)
        .execute(&ctx, action, &fields, None)
        .await
        .expect_err("unknown field");
    let logged = logs.text();
    assert!(
        !logged.is_empty(),
        "{}: the retries and failures were logged (else this checks nothing)",
        S::APP
    );
    for secret in secrets_of(&wrong).iter().chain(secrets_of(&good).iter()) {
        for (what, text) in [
            ("error", err.to_string()),
            ("error (debug)", format!("{err:?}")),
            ("5xx error", format!("{failed} {failed:?}")),
            ("field error", format!("{refused} {refused:?}")),
            ("log", logged.clone()),
        ] {
            assert!(
                !text.contains(secret.as_str()),
                "{}: a credential in the {what}: {text}",
                S::APP
            );
        }
    }
}

pub async fn a_lost_answer_then_a_retry_makes_one_record<S: ContractSubject>() {
    let subject = S::start().await;
    let (settings, credentials) = (subject.settings(), subject.credentials());
    let http = VendorClient::new();
    let tokens = subject.tokens(&credentials);
    let mut ctx = context(&settings, &credentials, &http, "run_contract/step-1");
    ctx.tokens = tokens.as_deref();
    let (action, fields) = subject.create();
    let resend = vendor(S::APP).resend(action, &fields);
    subject.fail_create(Fault::DropAfterCommit);
    let since = chrono::Utc::now();
    let first = vendor(S::APP).execute(&ctx, action, &fields, None).await;
    match resend {
        Resend::Keyed | Resend::Repeatable => {
            // The engine sends the step again under the same key.
            let second = vendor(S::APP)
                .execute(&ctx, action, &fields, None)
                .await
                .unwrap_or_else(|e| panic!("{}: the resent create failed: {e}", S::APP));
            if let Ok(first) = first {
                assert_eq!(first.id, second.id, "{}", S::APP);
            }
        }
        Resend::ReadBack => {
            // Not sent again: the vendor's history shows it arrived.
            let err = first.expect_err("a create whose answer was lost");
            assert!(matches!(err, ActionError::Vendor(_)), "{}: {err:?}", S::APP);
            let found = vendor(S::APP)
                .find_sent(&ctx, action, &fields, since)
                .await
                .unwrap_or_else(|e| panic!("{}: reading back failed: {e}", S::APP));
            assert!(matches!(found, Sent::Found(_)), "{}: {found:?}", S::APP);
        }
        Resend::Unsafe => {
            // Nothing tells the connector whether the vendor acted: it must
            // not send again by itself (the engine holds the run for
            // review instead).
            let err = first.expect_err("an unsafe create whose answer was lost");
            assert!(matches!(err, ActionError::Vendor(_)), "{}: {err:?}", S::APP);
        }
    }
    assert_eq!(subject.records(), 1, "{}: {resend:?}", S::APP);
}

pub async fn unknown_fields_are_refused_before_any_call<S: ContractSubject>() {
    let subject = S::start().await;
    let (settings, credentials) = (subject.settings(), subject.credentials());
    let http = VendorClient::new();
    let tokens = subject.tokens(&credentials);
    let mut ctx = context(&settings, &credentials, &http, "contract/fields");
    ctx.tokens = tokens.as_deref();
    let (action, mut fields) = subject.create();
    fields.insert("no_such_field".into(), json!("x"));
    subject.clear_requests();
    let err = vendor(S::APP)
        .execute(&ctx, action, &fields, None)
        .await
        .expect_err("an unknown field");
    assert!(
        matches!(&err, ActionError::Field { field, .. } if field.contains("no_such_field")),
        "{}: {err:?}",
        S::APP
    );
    assert!(subject.requests().is_empty(), "{}", S::APP);
    assert_eq!(subject.records(), 0, "{}", S::APP);
}

/// The contract, as tests of one vendor.
macro_rules! contract_suite {
    ($module:ident, $subject:ty) => {
        mod $module {
            use super::*;

            #[tokio::test]
            async fn base_url_outside_the_vendor_is_refused() {
                super::base_url_outside_the_vendor_is_refused::<$subject>().await;
            }

            #[tokio::test]
            async fn a_rate_limit_is_waited_out() {
                super::a_rate_limit_is_waited_out::<$subject>().await;
            }

            #[tokio::test]
            async fn a_server_error_is_retried() {
                super::a_server_error_is_retried::<$subject>().await;
            }

            #[tokio::test]
            async fn credentials_never_reach_errors_or_logs() {
                super::credentials_never_reach_errors_or_logs::<$subject>().await;
            }

            #[tokio::test]
            async fn a_lost_answer_then_a_retry_makes_one_record() {
                super::a_lost_answer_then_a_retry_makes_one_record::<$subject>().await;
            }

            #[tokio::test]
            async fn unknown_fields_are_refused_before_any_call() {
                super::unknown_fields_are_refused_before_any_call::<$subject>().await;
            }
        }
    };
}

/// The fake-control methods every fake has, forwarded.
macro_rules! forward_fake {
    () => {
        fn requests(&self) -> Vec<RecordedRequest> {
            self.fake.requests()
        }
        fn fail_next(&self, fault: Fault) {
            self.fake.fail_next(1, fault);
        }
        fn fail_create(&self, fault: Fault) {
            self.fake
                .fail_next_on(Some("POST"), self.create_request(), 1, fault);
        }
        fn clear_faults(&self) {
            self.fake.clear_faults();
        }
        fn clear_requests(&self) {
            self.fake.clear_requests();
        }
    };
}

pub struct MoySkladSubject {
    fake: FakeMoySklad,
}

#[async_trait]
impl ContractSubject for MoySkladSubject {
    const APP: &'static str = "moysklad";
    fn create_request(&self) -> &'static str {
        "/entity/counterparty"
    }
    async fn start() -> Self {
        let fake = FakeMoySklad::start("ms-contract-token").await.unwrap();
        fake.set_retry_after(Duration::from_millis(300));
        Self { fake }
    }
    fn settings(&self) -> Value {
        json!({"base_url": self.fake.base_url()})
    }
    fn credentials(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("token".into(), "ms-contract-token".into())])
    }
    fn wrong_credentials(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("token".into(), "ms-wrong-token-31".into())])
    }
    fn create(&self) -> (&'static str, Map<String, Value>) {
        (
            "moysklad.counterparty.create",
            fields(json!({"name": "ACME", "phone": "+79001234567"})),
        )
    }
    fn records(&self) -> usize {
        self.fake.counterparties().len()
    }
    fn retry_after(&self) -> Option<Duration> {
        Some(Duration::from_millis(300))
    }
    forward_fake!();
}

pub struct RetailCrmSubject {
    fake: FakeRetailCrm,
}

#[async_trait]
impl ContractSubject for RetailCrmSubject {
    const APP: &'static str = "retailcrm";
    fn create_request(&self) -> &'static str {
        "/customers/create"
    }
    async fn start() -> Self {
        let fake = FakeRetailCrm::start("rc-contract-key").await.unwrap();
        fake.set_retry_after_secs(1);
        Self { fake }
    }
    fn settings(&self) -> Value {
        json!({"base_url": self.fake.base_url()})
    }
    fn credentials(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("api_key".into(), "rc-contract-key".into())])
    }
    fn wrong_credentials(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("api_key".into(), "rc-wrong-key-31".into())])
    }
    fn create(&self) -> (&'static str, Map<String, Value>) {
        (
            "retailcrm.customer.create",
            fields(json!({"first_name": "Ann", "phone": "+79001234567"})),
        )
    }
    fn records(&self) -> usize {
        self.fake.customers().len()
    }
    fn retry_after(&self) -> Option<Duration> {
        Some(Duration::from_secs(1))
    }
    forward_fake!();
}

pub struct CalltouchSubject {
    fake: FakeCalltouch,
}

#[async_trait]
impl ContractSubject for CalltouchSubject {
    const APP: &'static str = "calltouch";
    fn create_request(&self) -> &'static str {
        "client-order/create"
    }
    async fn start() -> Self {
        let fake = FakeCalltouch::start("ct-contract-token", "777")
            .await
            .unwrap();
        fake.set_retry_after_secs(1);
        Self { fake }
    }
    fn settings(&self) -> Value {
        json!({"base_url": self.fake.base_url(), "site_id": "777"})
    }
    fn credentials(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("access_token".into(), "ct-contract-token".into())])
    }
    fn wrong_credentials(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("access_token".into(), "ct-wrong-token-31".into())])
    }
    fn create(&self) -> (&'static str, Map<String, Value>) {
        (
            "calltouch.deal.create",
            fields(json!({"order_number": "ct-contract-1", "call_id": "31", "status": "PENDING"})),
        )
    }
    fn records(&self) -> usize {
        self.fake.deals().len()
    }
    fn retry_after(&self) -> Option<Duration> {
        Some(Duration::from_secs(1))
    }
    forward_fake!();
}

pub struct NetHuntSubject {
    fake: FakeNetHunt,
    folder: String,
}

#[async_trait]
impl ContractSubject for NetHuntSubject {
    const APP: &'static str = "nethunt";
    fn create_request(&self) -> &'static str {
        "create-record"
    }
    async fn start() -> Self {
        let fake = FakeNetHunt::start("me@acme.test", "nh-contract-key")
            .await
            .unwrap();
        let folder = fake.add_folder("Deals");
        fake.add_field(&folder, "Name").unwrap();
        Self { fake, folder }
    }
    fn settings(&self) -> Value {
        json!({"base_url": self.fake.base_url()})
    }
    fn credentials(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("email".into(), "me@acme.test".into()),
            ("api_key".into(), "nh-contract-key".into()),
        ])
    }
    fn wrong_credentials(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("email".into(), "me@acme.test".into()),
            ("api_key".into(), "nh-wrong-key-31".into()),
        ])
    }
    fn create(&self) -> (&'static str, Map<String, Value>) {
        (
            "nethunt.record.create",
            fields(json!({"folder": "Deals", "fields": {"Name": "ACME"}})),
        )
    }
    fn records(&self) -> usize {
        self.fake.records(&self.folder).len()
    }
    fn retry_after(&self) -> Option<Duration> {
        None
    }
    forward_fake!();
}

pub struct WorksectionSubject {
    fake: FakeWorksection,
    project: String,
}

#[async_trait]
impl ContractSubject for WorksectionSubject {
    const APP: &'static str = "worksection";
    fn create_request(&self) -> &'static str {
        "action=post_task"
    }
    async fn start() -> Self {
        let fake = FakeWorksection::start("ws-contract-key").await.unwrap();
        let project = fake.add_project("Delivery");
        Self { fake, project }
    }
    fn settings(&self) -> Value {
        json!({"base_url": self.fake.base_url(), "auth_scheme": "header"})
    }
    fn credentials(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("admin_key".into(), "ws-contract-key".into())])
    }
    fn wrong_credentials(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("admin_key".into(), "ws-wrong-key-31".into())])
    }
    fn create(&self) -> (&'static str, Map<String, Value>) {
        (
            "worksection.task.create",
            fields(json!({"project": self.project, "title": "Deal won: ACME"})),
        )
    }
    fn records(&self) -> usize {
        self.fake.tasks().len()
    }
    fn retry_after(&self) -> Option<Duration> {
        None
    }
    forward_fake!();
}

contract_suite!(calltouch, CalltouchSubject);
contract_suite!(moysklad, MoySkladSubject);
contract_suite!(nethunt, NetHuntSubject);
contract_suite!(retailcrm, RetailCrmSubject);
contract_suite!(worksection, WorksectionSubject);
contract_suite!(zoho, ZohoSubject);
contract_suite!(hubspot, HubSpotSubject);
contract_suite!(kado, KadoSubject);
contract_suite!(planfix, PlanfixSubject);
contract_suite!(verbox, VerboxSubject);
contract_suite!(http, HttpSubject);

pub struct PlanfixSubject {
    fake: FakePlanfix,
}

#[async_trait]
impl ContractSubject for PlanfixSubject {
    const APP: &'static str = "planfix";
    fn create_request(&self) -> &'static str {
        "/rest/contact/"
    }
    async fn start() -> Self {
        let fake = FakePlanfix::start("pf-contract-token", "pf-chat-key")
            .await
            .unwrap();
        Self { fake }
    }
    fn settings(&self) -> Value {
        json!({"base_url": self.fake.base_url(), "max_requests_per_second": 50})
    }
    fn credentials(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("token".into(), "pf-contract-token".into())])
    }
    fn wrong_credentials(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("token".into(), "pf-wrong-token-31".into())])
    }
    fn create(&self) -> (&'static str, Map<String, Value>) {
        (
            "planfix.contact.create",
            fields(json!({"name": "Ivan", "phone": "+7 (900) 123-45-67"})),
        )
    }
    fn records(&self) -> usize {
        self.fake.contacts().len()
    }
    fn retry_after(&self) -> Option<Duration> {
        None
    }
    forward_fake!();
}

pub struct VerboxSubject {
    fake: FakeVerbox,
}

#[async_trait]
impl ContractSubject for VerboxSubject {
    const APP: &'static str = "verbox";
    fn create_request(&self) -> &'static str {
        "sendToClient"
    }
    async fn start() -> Self {
        let fake = FakeVerbox::start("vb-contract-token").await.unwrap();
        fake.add_client("v-contract");
        Self { fake }
    }
    fn settings(&self) -> Value {
        json!({"base_url": self.fake.base_url()})
    }
    fn credentials(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("token".into(), "vb-contract-token".into())])
    }
    fn wrong_credentials(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("token".into(), "vb-wrong-token-31".into())])
    }
    fn create(&self) -> (&'static str, Map<String, Value>) {
        (
            "verbox.message.send",
            fields(json!({"client_id": "v-contract", "text": "Hello"})),
        )
    }
    fn records(&self) -> usize {
        self.fake.sent_to_client("v-contract").len()
    }
    fn retry_after(&self) -> Option<Duration> {
        Some(Duration::from_secs(1))
    }
    forward_fake!();
}

/// The generic outbound action, against a receiver that honours
/// `Idempotency-Key` and requires a bearer token.
pub struct HttpSubject {
    fake: FakeReceiver,
}

#[async_trait]
impl ContractSubject for HttpSubject {
    const APP: &'static str = "http";
    const ANY_PUBLIC_HOST: bool = true;
    fn create_request(&self) -> &'static str {
        "/orders"
    }
    async fn start() -> Self {
        let fake = FakeReceiver::start().await.unwrap();
        fake.require_authorization("Bearer http-contract-token");
        Self { fake }
    }
    fn settings(&self) -> Value {
        json!({"base_url": self.fake.base_url(), "check_path": "/health"})
    }
    fn credentials(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("authorization".into(), "Bearer http-contract-token".into())])
    }
    fn wrong_credentials(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("authorization".into(), "Bearer http-wrong-token-9".into())])
    }
    fn create(&self) -> (&'static str, Map<String, Value>) {
        (
            "http.request.send",
            fields(json!({"url": "/orders", "json": {"order": "A-1", "sum": 10}})),
        )
    }
    fn records(&self) -> usize {
        self.fake.delivery_count()
    }
    fn retry_after(&self) -> Option<Duration> {
        Some(Duration::from_secs(1))
    }
    forward_fake!();
}

/// The vendors this suite covers, for the registry test.
#[test]
fn the_suite_covers_every_vendor_that_calls_out() {
    let covered = [
        CalltouchSubject::APP,
        MoySkladSubject::APP,
        NetHuntSubject::APP,
        RetailCrmSubject::APP,
        WorksectionSubject::APP,
        ZohoSubject::APP,
        HubSpotSubject::APP,
        KadoSubject::APP,
        PlanfixSubject::APP,
        VerboxSubject::APP,
        HttpSubject::APP,
    ];
    let registry = crmbridge_connectors::Registry::builtin();
    for vendor in registry.vendors() {
        let calls_out = vendor.account.is_some()
            || vendor.poller.is_some()
            || vendor.actions().next().is_some();
        assert_eq!(
            calls_out,
            covered.contains(&vendor.app),
            "{}: a vendor that calls its API runs the contract suite (and only those)",
            vendor.app
        );
    }
}

/// Zoho signs in with OAuth: the contract's "credentials" are an access
/// token the fake accounts server issued, handed to the connector the way
/// the engine hands it tokens (refreshing is the engine's, tested in the
/// OAuth suite).
pub struct ZohoSubject {
    fake: FakeZoho,
    _accounts: FakeOAuth,
    token: String,
}

struct IssuedToken {
    token: String,
    api_domain: String,
}

#[async_trait]
impl AccessTokens for IssuedToken {
    async fn access_token(&self) -> Result<String, ActionError> {
        Ok(self.token.clone())
    }
    async fn after_rejection(&self, _rejected: &str) -> Result<String, ActionError> {
        Err(crmbridge_connectors::oauth::reauthorization_needed(
            "the token was refused",
        ))
    }
    fn api_domain(&self) -> Option<String> {
        Some(self.api_domain.clone())
    }
}

#[async_trait]
impl ContractSubject for ZohoSubject {
    const APP: &'static str = "zoho";
    const BASE_URL_SETTING: &'static str = "api_url";
    fn create_request(&self) -> &'static str {
        "/Leads"
    }
    async fn start() -> Self {
        let accounts = FakeOAuth::start(OAuthConfig::zoho("1000.CONTRACT", "contract-secret-77"))
            .await
            .unwrap();
        let fake = FakeZoho::start(accounts.token_checker()).await.unwrap();
        accounts.set_api_domain(&fake.base_url());
        let token = accounts.issue_access_token();
        Self {
            fake,
            _accounts: accounts,
            token,
        }
    }
    fn settings(&self) -> Value {
        json!({"api_url": self.fake.base_url()})
    }
    fn credentials(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("access_token".into(), self.token.clone())])
    }
    fn wrong_credentials(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("access_token".into(), "zoho-wrong-token-31".into())])
    }
    fn create(&self) -> (&'static str, Map<String, Value>) {
        (
            "zoho.lead.create",
            fields(json!({"last_name": "Ann", "phone": "+380671234567"})),
        )
    }
    fn records(&self) -> usize {
        self.fake.records("Leads").len()
    }
    fn retry_after(&self) -> Option<Duration> {
        None
    }
    fn tokens(&self, credentials: &BTreeMap<String, String>) -> Option<Box<dyn AccessTokens>> {
        Some(Box::new(IssuedToken {
            token: credentials.get("access_token").cloned().unwrap_or_default(),
            api_domain: self.fake.base_url(),
        }))
    }
    forward_fake!();
}

/// HubSpot signs in with OAuth like Zoho: the "credentials" are an access
/// token its (fake) authorization server issued.
pub struct HubSpotSubject {
    fake: FakeHubSpot,
    _accounts: FakeOAuth,
    token: String,
}

#[async_trait]
impl ContractSubject for HubSpotSubject {
    const APP: &'static str = "hubspot";
    fn create_request(&self) -> &'static str {
        "/crm/v3/objects/contacts"
    }
    async fn start() -> Self {
        let accounts = FakeOAuth::start(OAuthConfig::hubspot("hs-contract", "hs-secret-77"))
            .await
            .unwrap();
        let fake = FakeHubSpot::start(accounts.token_checker(), "hs-secret-77")
            .await
            .unwrap();
        let token = accounts.issue_access_token();
        Self {
            fake,
            _accounts: accounts,
            token,
        }
    }
    fn settings(&self) -> Value {
        json!({"base_url": self.fake.base_url()})
    }
    fn credentials(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("access_token".into(), self.token.clone())])
    }
    fn wrong_credentials(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("access_token".into(), "hs-wrong-token-31".into())])
    }
    /// Without an e-mail: the plain create (with one it is an upsert,
    /// which the contract's lost-answer case would resend).
    fn create(&self) -> (&'static str, Map<String, Value>) {
        (
            "hubspot.contact.create",
            fields(json!({"first_name": "Ann", "phone": "+380671234567"})),
        )
    }
    fn records(&self) -> usize {
        self.fake.contacts().len()
    }
    fn retry_after(&self) -> Option<Duration> {
        None
    }
    fn tokens(&self, credentials: &BTreeMap<String, String>) -> Option<Box<dyn AccessTokens>> {
        Some(Box::new(IssuedToken {
            token: credentials.get("access_token").cloned().unwrap_or_default(),
            api_domain: self.fake.base_url(),
        }))
    }
    forward_fake!();
}

/// KADO: crmbridge's own adapter contract, served by the KADO fake.
pub struct KadoSubject {
    fake: FakeKado,
}

#[async_trait]
impl ContractSubject for KadoSubject {
    const APP: &'static str = "kado";
    fn create_request(&self) -> &'static str {
        "/contacts/by-ref/hubspot/"
    }
    async fn start() -> Self {
        let fake = FakeKado::start("kado-contract-token", "co_1", &[("t_sales", "Sales")])
            .await
            .unwrap();
        Self { fake }
    }
    fn settings(&self) -> Value {
        json!({"base_url": self.fake.base_url(), "company_id": "co_1", "teams": ["t_sales"]})
    }
    fn credentials(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("token".into(), "kado-contract-token".into())])
    }
    fn wrong_credentials(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("token".into(), "kado-wrong-token-31".into())])
    }
    fn create(&self) -> (&'static str, Map<String, Value>) {
        (
            "kado.contact.upsert",
            fields(json!({"hubspot_id": "37700000001", "team_id": "t_sales", "first_name": "Ann"})),
        )
    }
    fn records(&self) -> usize {
        self.fake.contacts().len()
    }
    fn retry_after(&self) -> Option<Duration> {
        None
    }
    forward_fake!();
}
