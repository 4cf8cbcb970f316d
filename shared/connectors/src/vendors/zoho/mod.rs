//! Zoho CRM (REST API v7): leads, contacts, deals, tasks and calls, signed
//! in with OAuth 2.0. Facts, with how sure we are of each and the public
//! source: `vendors/zoho/API.md`.
//!
//! - One account lives in one data centre: its accounts server (consent and
//!   tokens) and its API domain differ per centre (`data_centre` setting);
//!   the token answer's `api_domain` wins when it names a Zoho API host.
//! - Calls carry `Authorization: Zoho-oauthtoken …`; tokens live an hour
//!   and are refreshed by the engine, once across workers (the refresh
//!   token may mint only a few access tokens per ten minutes).
//! - A write sends `{"data": [record]}` and answers per record in
//!   `data[i]`, whatever the HTTP status (a batch can partly succeed): each
//!   answer is read by itself.
//! - Search (`/search?phone=`) matches loosely and lags behind writes: hits
//!   are re-checked on our side, and a miss is asked again by COQL, which
//!   reads what was just written. "Nothing found" is an empty 204.
//! - Owners are given as a user's e-mail (or id) and resolved against the
//!   active users; custom fields are checked against the module's field
//!   list before writing, and a missing one skips the run with the field
//!   named (and marks the automation) instead of failing each run.
//!
//! Sending a step again after an attempt with an unknown outcome:
//!
//! | action                          | resend | why |
//! |---------------------------------|--------|-----|
//! | `zoho.lead.create`, `zoho.contact.create`, `zoho.deal.create` | `Keyed` with `upsert_on`, else `Unsafe` | upsert on a unique field finds the record the lost attempt made; without it only a find-or-create step (dedupe by phone/e-mail, which searches by COQL too) may be resent |
//! | `zoho.task.create`, `zoho.call.create` | `Keyed` with `unique_subject`, else `Unsafe` | a unique subject is looked up (COQL) before creating |
//! | `zoho.lead.update`              | `Repeatable` | it overwrites fields |
//! | `zoho.caller.find`              | `Repeatable` | it only reads |
#![doc = include_str!("API.md")]

mod actions;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use crmbridge_mapping::Automation;
use serde_json::{Value, json};

use crate::client::{Idempotency, VendorError, VendorPolicy, VendorRequest, VendorResponse};
use crate::oauth::{OAuthApp, OAuthEndpoints, send_authorized};
use crate::support::{check_base_url, digits, same_phone, url_with_query, with_timeout};
use crate::{Account, ActionError, CallContext, LiveCatalog, SettingsError, Vendor, VendorSettings};

/// Data centre → (accounts server, API domain).
const DATA_CENTRES: &[(&str, &str, &str)] = &[
    ("com", "https://accounts.zoho.com", "https://www.zohoapis.com"),
    ("eu", "https://accounts.zoho.eu", "https://www.zohoapis.eu"),
    ("in", "https://accounts.zoho.in", "https://www.zohoapis.in"),
    ("com.au", "https://accounts.zoho.com.au", "https://www.zohoapis.com.au"),
    ("jp", "https://accounts.zoho.jp", "https://www.zohoapis.jp"),
    ("com.cn", "https://accounts.zoho.com.cn", "https://www.zohoapis.com.cn"),
    ("ca", "https://accounts.zohocloud.ca", "https://www.zohoapis.ca"),
    ("sa", "https://accounts.zoho.sa", "https://www.zohoapis.sa"),
];
const ACCOUNTS_DOMAINS: &[&str] = &[
    ".zoho.com",
    ".zoho.eu",
    ".zoho.in",
    ".zoho.com.au",
    ".zoho.jp",
    ".zoho.com.cn",
    ".zohocloud.ca",
    ".zoho.sa",
];
const API_DOMAINS: &[&str] = &[
    ".zohoapis.com",
    ".zohoapis.eu",
    ".zohoapis.in",
    ".zohoapis.com.au",
    ".zohoapis.jp",
    ".zohoapis.com.cn",
    ".zohoapis.ca",
    ".zohoapis.sa",
];
const SETTINGS: &[&str] = &["data_centre", "accounts_url", "api_url", "api_version"];
const VERSION: &str = "v7";

/// The six fields Ringostat's integration fills in Leads, which Zoho users
/// create by hand.
pub const RINGOSTAT_LEAD_FIELDS: &[&str] = &[
    "rs_utm_source",
    "rs_utm_medium",
    "rs_utm_campaign",
    "rs_utm_term",
    "rs_utm_content",
    "rs_google_client_id",
];

/// Zoho counts credits per day and caps concurrent calls per organisation
/// (5 on the free edition): stay at the lowest cap. It documents no
/// per-second rate; the window only keeps a runaway loop in check.
pub fn policy() -> VendorPolicy {
    VendorPolicy::new("zoho", 100, Duration::from_secs(1), 5)
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Zoho;

fn data_centre(settings: &Value) -> Result<(&'static str, &'static str), String> {
    let wanted = settings["data_centre"].as_str().unwrap_or("com");
    DATA_CENTRES
        .iter()
        .find(|(dc, _, _)| *dc == wanted)
        .map(|(_, accounts, api)| (*accounts, *api))
        .ok_or_else(|| {
            format!(
                "unknown data centre '{wanted}'; one of: {}",
                DATA_CENTRES
                    .iter()
                    .map(|(dc, _, _)| *dc)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// An address a setting overrides, checked against Zoho's domains.
fn overridden(
    settings: &Value,
    name: &str,
    domains: &[&str],
    allow_any: bool,
) -> Result<Option<String>, String> {
    match settings.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(url)) => check_base_url(url, domains, allow_any)
            .map(|()| Some(url.trim_end_matches('/').to_owned())),
        Some(_) => Err("must be a string".into()),
    }
}

impl Zoho {
    /// Where API calls go: the `api_url` setting when set (a sandbox or
    /// developer host), else the grant's `api_domain` when it is a Zoho API
    /// host (or anything, in test mode), else the data centre's.
    fn api_base(ctx: &CallContext<'_>) -> Result<String, ActionError> {
        if let Some(url) = overridden(ctx.settings, "api_url", API_DOMAINS, ctx.allow_any_base_url)
            .map_err(|m| ActionError::Config(format!("settings.api_url: {m}")))?
        {
            return Ok(url);
        }
        if let Some(domain) = ctx.tokens.and_then(|t| t.api_domain())
            && check_base_url(&domain, API_DOMAINS, ctx.allow_any_base_url).is_ok()
        {
            return Ok(domain.trim_end_matches('/').to_owned());
        }
        data_centre(ctx.settings)
            .map(|(_, api)| api.to_owned())
            .map_err(|m| ActionError::Config(format!("settings.data_centre: {m}")))
    }

    fn version(ctx: &CallContext<'_>) -> String {
        ctx.settings["api_version"]
            .as_str()
            .unwrap_or(VERSION)
            .to_owned()
    }

    /// One API call, with the token refreshed once on a 401. `Ok(None)` is
    /// Zoho's empty 204 ("nothing found").
    async fn call(
        &self,
        ctx: &CallContext<'_>,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        idempotency: Idempotency,
    ) -> Result<Option<(Value, VendorResponse)>, ActionError> {
        let policy = with_timeout(policy(), ctx.settings);
        let version = Self::version(ctx);
        let payload = body.map(|b| b.to_string().into_bytes());
        // The first token read names the API domain: ask for the token
        // before building the URL.
        if let Some(tokens) = ctx.tokens {
            tokens.access_token().await?;
        }
        let url = url_with_query(
            &format!("{}/crm/{version}/{path}", Self::api_base(ctx)?),
            query,
        )?;
        let response = send_authorized(ctx, &Zoho, &policy, |auth| {
            let request = match &payload {
                Some(bytes) => {
                    VendorRequest::with_body(method.clone(), url.clone(), bytes.clone(), idempotency)
                        .header("content-type", "application/json")
                }
                None => VendorRequest::get(url.clone()),
            };
            request.header("authorization", auth)
        })
        .await?;
        if response.status == 204 || (response.is_success() && response.body.is_empty()) {
            return Ok(None);
        }
        let json = response.json().unwrap_or(Value::Null);
        if response.status >= 500 || response.status == 429 {
            return Err(VendorError::Status {
                vendor: "zoho",
                status: response.status,
                attempts: response.attempts,
                body: describe(&json, &response),
            }
            .into());
        }
        // Writes answer per record even on a 400; the caller reads them.
        let per_record = json["data"].is_array() && json["data"][0]["code"].is_string();
        if !response.is_success() && !per_record {
            return Err(refusal(&json, &response));
        }
        Ok(Some((json, response)))
    }

    pub(crate) async fn get(
        &self,
        ctx: &CallContext<'_>,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Option<Value>, ActionError> {
        Ok(self
            .call(ctx, reqwest::Method::GET, path, query, None, Idempotency::Idempotent)
            .await?
            .map(|(json, _)| json))
    }

    /// Active users (every page).
    pub(crate) async fn users(&self, ctx: &CallContext<'_>) -> Result<Vec<ZohoUser>, ActionError> {
        let mut users = Vec::new();
        for page in 1..=50 {
            let Some(body) = self
                .get(
                    ctx,
                    "users",
                    &[
                        ("type", "ActiveUsers".into()),
                        ("page", page.to_string()),
                        ("per_page", "200".into()),
                    ],
                )
                .await?
            else {
                break;
            };
            users.extend(
                body["users"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|u| u["status"].as_str().is_none_or(|s| s == "active"))
                    .map(ZohoUser::from_json),
            );
            if body["info"]["more_records"] != json!(true) {
                break;
            }
        }
        Ok(users)
    }

    /// The fields of a module (`api_name`, `field_label`, `data_type`).
    pub(crate) async fn fields(
        &self,
        ctx: &CallContext<'_>,
        module: &str,
    ) -> Result<Vec<Value>, ActionError> {
        Ok(self
            .get(ctx, "settings/fields", &[("module", module.into())])
            .await?
            .and_then(|body| body["fields"].as_array().cloned())
            .unwrap_or_default())
    }

    /// Records of `module` whose phone fields hold this number: the search
    /// first (loose, so re-checked), then COQL (which sees records the
    /// search index has not caught up with).
    pub(crate) async fn find_by_phone(
        &self,
        ctx: &CallContext<'_>,
        module: &str,
        phone: &str,
    ) -> Result<Vec<Value>, ActionError> {
        let all = digits(phone);
        if all.len() < 5 {
            return Ok(Vec::new());
        }
        let national = all[all.len().saturating_sub(10)..].to_owned();
        let matches = |record: &Value| {
            ["Phone", "Mobile", "Other_Phone", "Home_Phone"]
                .iter()
                .any(|f| record[*f].as_str().is_some_and(|p| same_phone(p, phone)))
        };
        let searched = self
            .get(
                ctx,
                &format!("{module}/search"),
                &[("phone", national.clone()), ("per_page", "200".into())],
            )
            .await?;
        let found: Vec<Value> = records_of(searched).into_iter().filter(matches).collect();
        if !found.is_empty() {
            return Ok(found);
        }
        let phone_fields: &[&str] = if module == "Leads" || module == "Contacts" {
            &["Phone", "Mobile"]
        } else {
            &["Phone"]
        };
        let select = format!("select id, Owner, {} from {module}", phone_fields.join(", "));
        // Exactly as crmbridge writes numbers (E.164) and as digits: COQL
        // surely filters phone fields by equality; `like` may be refused.
        let mut exact = vec![format!("+{all}"), all.clone()];
        exact.dedup();
        let equal = phone_fields
            .iter()
            .flat_map(|f| exact.iter().map(move |v| format!("{f} = '{v}'")))
            .collect::<Vec<_>>()
            .join(" or ");
        let found: Vec<Value> = self
            .coql(ctx, &format!("{select} where {equal} limit 50"))
            .await?
            .into_iter()
            .filter(matches)
            .collect();
        if !found.is_empty() {
            return Ok(found);
        }
        let tail = &national[national.len().saturating_sub(9)..];
        let like = phone_fields
            .iter()
            .map(|f| format!("{f} like '%{tail}'"))
            .collect::<Vec<_>>()
            .join(" or ");
        Ok(self
            .coql(ctx, &format!("{select} where {like} limit 50"))
            .await?
            .into_iter()
            .filter(matches)
            .collect())
    }

    /// Records of `module` with this e-mail (search, then COQL).
    pub(crate) async fn find_by_email(
        &self,
        ctx: &CallContext<'_>,
        module: &str,
        email: &str,
    ) -> Result<Vec<Value>, ActionError> {
        let email = email.trim();
        if !email.contains('@') || email.contains('\'') {
            return Ok(Vec::new());
        }
        let same = |record: &Value| {
            record["Email"]
                .as_str()
                .is_some_and(|e| e.trim().eq_ignore_ascii_case(email))
        };
        let searched = self
            .get(ctx, &format!("{module}/search"), &[("email", email.into())])
            .await?;
        let found: Vec<Value> = records_of(searched).into_iter().filter(same).collect();
        if !found.is_empty() {
            return Ok(found);
        }
        let query = format!("select id, Owner, Email from {module} where Email = '{email}' limit 50");
        Ok(self.coql(ctx, &query).await?.into_iter().filter(same).collect())
    }

    /// A COQL query's rows. A refusal (COQL off in the edition, a field it
    /// cannot filter on) reads as no rows: COQL is our second look, not
    /// the only one.
    pub(crate) async fn coql(
        &self,
        ctx: &CallContext<'_>,
        query: &str,
    ) -> Result<Vec<Value>, ActionError> {
        match self.coql_checked(ctx, query).await? {
            Some(rows) => Ok(rows),
            None => Ok(Vec::new()),
        }
    }

    /// A COQL query's rows, `None` when Zoho refused the query itself.
    pub(crate) async fn coql_checked(
        &self,
        ctx: &CallContext<'_>,
        query: &str,
    ) -> Result<Option<Vec<Value>>, ActionError> {
        let body = json!({ "select_query": query });
        match self
            .call(
                ctx,
                reqwest::Method::POST,
                "coql",
                &[],
                Some(&body),
                // A read, whatever the method.
                Idempotency::Idempotent,
            )
            .await
        {
            Ok(answer) => Ok(Some(records_of(answer.map(|(json, _)| json)))),
            Err(ActionError::Vendor(VendorError::Rejected { status: 400, message, .. })) => {
                tracing::warn!(%message, "zoho: COQL refused the query");
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    /// One record by id, `None` when Zoho has none.
    pub(crate) async fn record(
        &self,
        ctx: &CallContext<'_>,
        module: &str,
        id: &str,
    ) -> Result<Option<Value>, ActionError> {
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
            return Ok(None);
        }
        match self.get(ctx, &format!("{module}/{id}"), &[]).await {
            Ok(body) => Ok(records_of(body).into_iter().next()),
            // Zoho answers an unknown id with INVALID_DATA or 404.
            Err(ActionError::Vendor(VendorError::Rejected { status: 400 | 404, .. })) => Ok(None),
            Err(err) => Err(err),
        }
    }
}

pub(crate) fn records_of(body: Option<Value>) -> Vec<Value> {
    body.and_then(|b| b["data"].as_array().cloned())
        .unwrap_or_default()
}

/// Zoho's error body in one line: code, message and the field it names.
fn describe(json: &Value, response: &VendorResponse) -> String {
    let code = json["code"].as_str().unwrap_or_default();
    let message = json["message"].as_str().unwrap_or_default();
    if code.is_empty() && message.is_empty() {
        return response.text().chars().take(300).collect();
    }
    let mut text = format!("{code}: {message}");
    if let Some(field) = json["details"]["api_name"].as_str() {
        text.push_str(&format!(" (field {field})"));
    }
    text
}

fn refusal(json: &Value, response: &VendorResponse) -> ActionError {
    let mut message = describe(json, response);
    match json["code"].as_str() {
        Some("OAUTH_SCOPE_MISMATCH") => {
            message = format!("{message}: the grant lacks a scope this call needs; authorize the connection again")
        }
        Some("INVALID_TOKEN" | "AUTHENTICATION_FAILURE") => {
            message = format!("{message}: the access token was refused after a refresh")
        }
        _ => {}
    }
    VendorError::Rejected {
        vendor: "zoho",
        status: response.status,
        message,
    }
    .into()
}

/// An active Zoho user.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ZohoUser {
    pub id: String,
    pub email: String,
    pub name: String,
}

impl ZohoUser {
    fn from_json(user: &Value) -> Self {
        Self {
            id: id_text(&user["id"]),
            email: user["email"].as_str().unwrap_or_default().to_owned(),
            name: user["full_name"].as_str().unwrap_or_default().to_owned(),
        }
    }
}

pub(crate) fn id_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Every e-mail address written literally in a template (the owners a
/// recipe names, in a map of employees or as a default).
pub(crate) fn emails_in(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || "@._+-".contains(c)))
        .filter(|word| {
            let mut parts = word.split('@');
            matches!((parts.next(), parts.next(), parts.next()),
                (Some(local), Some(domain), None)
                    if !local.is_empty() && domain.contains('.') && !domain.ends_with('.'))
        })
        .map(|word| word.trim_matches('.').to_lowercase())
        .collect()
}

impl VendorSettings for Zoho {
    fn required_credentials(&self) -> &'static [&'static str] {
        &["client_id", "client_secret"]
    }

    fn validate_settings(
        &self,
        settings: &Value,
        allow_any_base_url: bool,
    ) -> Result<(), Vec<SettingsError>> {
        let mut errors = Vec::new();
        let Some(map) = settings.as_object() else {
            return Err(vec![SettingsError {
                field: String::new(),
                message: "settings must be a JSON object".into(),
            }]);
        };
        for name in map.keys() {
            if !SETTINGS.contains(&name.as_str()) && name != "timeout_ms" {
                errors.push(SettingsError {
                    field: name.clone(),
                    message: format!("unknown setting; known: {}, timeout_ms", SETTINGS.join(", ")),
                });
            }
        }
        if let Err(message) = data_centre(settings) {
            errors.push(SettingsError {
                field: "data_centre".into(),
                message,
            });
        }
        for (name, domains) in [("accounts_url", ACCOUNTS_DOMAINS), ("api_url", API_DOMAINS)] {
            if let Err(message) = overridden(settings, name, domains, allow_any_base_url) {
                errors.push(SettingsError {
                    field: name.into(),
                    message,
                });
            }
        }
        if let Some(version) = map.get("api_version") {
            let ok = version.as_str().is_some_and(|v| {
                v.strip_prefix('v').is_some_and(|n| {
                    !n.is_empty() && n.chars().all(|c| c.is_ascii_digit() || c == '.')
                })
            });
            if !ok {
                errors.push(SettingsError {
                    field: "api_version".into(),
                    message: "must look like v7 or v2.1".into(),
                });
            }
        }
        if let Some(ms) = map.get("timeout_ms")
            && !ms.as_u64().is_some_and(|ms| (100..=60_000).contains(&ms))
        {
            errors.push(SettingsError {
                field: "timeout_ms".into(),
                message: "must be a whole number of milliseconds from 100 to 60000".into(),
            });
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

impl OAuthApp for Zoho {
    fn endpoints(
        &self,
        settings: &Value,
        allow_any_base_url: bool,
    ) -> Result<OAuthEndpoints, ActionError> {
        let accounts = match overridden(settings, "accounts_url", ACCOUNTS_DOMAINS, allow_any_base_url)
            .map_err(|m| ActionError::Config(format!("settings.accounts_url: {m}")))?
        {
            Some(url) => url,
            None => data_centre(settings)
                .map_err(|m| ActionError::Config(format!("settings.data_centre: {m}")))?
                .0
                .to_owned(),
        };
        Ok(OAuthEndpoints {
            authorize_url: format!("{accounts}/oauth/v2/auth"),
            token_url: format!("{accounts}/oauth/v2/token"),
        })
    }

    fn scopes(&self) -> Vec<String> {
        [
            "ZohoCRM.modules.ALL",
            "ZohoCRM.users.READ",
            "ZohoCRM.org.READ",
            "ZohoCRM.settings.fields.READ",
            "ZohoCRM.coql.READ",
            "ZohoSearch.securesearch.READ",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// Zoho's PKCE support is not documented for server-based clients.
    fn pkce(&self) -> bool {
        false
    }

    /// `access_type=offline` is what makes Zoho return a refresh token;
    /// `prompt=consent` makes it return one on a second consent too.
    fn authorize_params(&self) -> Vec<(String, String)> {
        vec![
            ("access_type".into(), "offline".into()),
            ("prompt".into(), "consent".into()),
        ]
    }

    fn authorization(&self, access_token: &str) -> String {
        format!("Zoho-oauthtoken {access_token}")
    }

    /// Only an invalid or expired token is cured by a refresh; a 401
    /// `OAUTH_SCOPE_MISMATCH` is not (it needs a new consent).
    fn token_refused(&self, response: &VendorResponse) -> bool {
        if response.status != 401 {
            return false;
        }
        match response.json().ok().and_then(|b| b["code"].as_str().map(str::to_owned)) {
            Some(code) => matches!(
                code.as_str(),
                "INVALID_TOKEN" | "AUTHENTICATION_FAILURE" | "INVALID_OAUTHTOKEN"
            ),
            None => true,
        }
    }
}

#[async_trait]
impl Account for Zoho {
    /// `GET /org` and the active users: the grant works, and for which
    /// organisation.
    async fn check(&self, ctx: &CallContext<'_>) -> Result<Value, ActionError> {
        let org = self.get(ctx, "org", &[]).await?.unwrap_or(Value::Null);
        let org = &org["org"][0];
        let users = self.users(ctx).await?;
        Ok(json!({
            "organization": org["company_name"],
            "organization_id": org["id"],
            "active_users": users.len(),
        }))
    }

    /// Every owner e-mail a step names must be an active user, and every
    /// custom field it writes must exist in its module.
    async fn check_automation(
        &self,
        ctx: &CallContext<'_>,
        automation: &Automation,
        connection: &str,
    ) -> Result<Vec<(String, String)>, ActionError> {
        let mut problems = Vec::new();
        let mut users: Option<Vec<ZohoUser>> = None;
        let mut fields_of: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for (index, step) in automation.steps.iter().enumerate() {
            if step.connection != connection || !step.action.starts_with("zoho.") {
                continue;
            }
            for name in ["owner"] {
                let Some(owner) = step.fields.get(name) else {
                    continue;
                };
                let named = emails_in(&owner.to_string());
                if named.is_empty() {
                    continue;
                }
                if users.is_none() {
                    users = Some(self.users(ctx).await?);
                }
                let active = users.as_deref().unwrap_or_default();
                for email in named {
                    if !active.iter().any(|u| u.email.eq_ignore_ascii_case(&email)) {
                        problems.push((
                            format!("steps[{index}].fields.{name}"),
                            format!(
                                "no active Zoho user has the e-mail {email}; active users: {}",
                                active
                                    .iter()
                                    .map(|u| u.email.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        ));
                    }
                }
            }
            let Some(module) = actions::module_of(&step.action) else {
                continue;
            };
            let Some(Value::Object(custom)) = step.fields.get("custom") else {
                continue;
            };
            if !fields_of.contains_key(module) {
                fields_of.insert(module.to_owned(), self.fields(ctx, module).await?);
            }
            let known = fields_of.get(module).map(Vec::as_slice).unwrap_or_default();
            for name in custom.keys() {
                if actions::resolve_field(known, name).is_none() {
                    problems.push((
                        format!("steps[{index}].fields.custom.{name}"),
                        actions::missing_field_message(module, name),
                    ));
                }
            }
        }
        Ok(problems)
    }
}

#[async_trait]
impl LiveCatalog for Zoho {
    /// Active users (for the employee map and the senior manager) and the
    /// Leads fields, with the six Ringostat fields marked present or not.
    async fn account_catalog(&self, ctx: &CallContext<'_>) -> Result<Value, ActionError> {
        let users = self.users(ctx).await?;
        let fields = self.fields(ctx, "Leads").await?;
        let ringostat: serde_json::Map<String, Value> = RINGOSTAT_LEAD_FIELDS
            .iter()
            .map(|name| {
                (
                    (*name).to_owned(),
                    Value::Bool(actions::resolve_field(&fields, name).is_some()),
                )
            })
            .collect();
        Ok(json!({
            "users": users
                .iter()
                .map(|u| json!({"id": u.id, "name": u.name, "email": u.email}))
                .collect::<Vec<_>>(),
            "lead_fields": fields
                .iter()
                .map(|f| json!({
                    "api_name": f["api_name"],
                    "label": f["field_label"],
                    "type": f["data_type"],
                    "custom": f["custom_field"],
                }))
                .collect::<Vec<_>>(),
            "ringostat_fields": ringostat,
        }))
    }
}

/// Zoho CRM: leads, contacts, deals, tasks and calls; OAuth 2.0.
pub fn vendor() -> Vendor {
    let zoho = Arc::new(Zoho);
    actions::register(
        Vendor::new("zoho", zoho.clone())
            .oauth(zoho.clone())
            .account(zoho.clone())
            .live_catalog(zoho.clone()),
        zoho,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn data_centres_pick_both_hosts_and_overrides_stay_on_zoho() {
        let endpoints = Zoho.endpoints(&json!({"data_centre": "eu"}), false).unwrap();
        assert_eq!(endpoints.token_url, "https://accounts.zoho.eu/oauth/v2/token");
        assert_eq!(endpoints.authorize_url, "https://accounts.zoho.eu/oauth/v2/auth");
        let ca = Zoho.endpoints(&json!({"data_centre": "ca"}), false).unwrap();
        assert_eq!(ca.token_url, "https://accounts.zohocloud.ca/oauth/v2/token");
        assert!(Zoho.endpoints(&json!({"data_centre": "mars"}), false).is_err());
        assert!(
            Zoho.endpoints(&json!({"accounts_url": "https://evil.example"}), false)
                .is_err()
        );
        assert!(
            Zoho.endpoints(&json!({"accounts_url": "http://127.0.0.1:9"}), true)
                .is_ok()
        );
        let errors = Zoho
            .validate_settings(
                &json!({"data_centre": "xx", "api_url": "https://evil.example", "colour": 1}),
                false,
            )
            .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"data_centre"), "{errors:?}");
        assert!(fields.contains(&"api_url"), "{errors:?}");
        assert!(fields.contains(&"colour"), "{errors:?}");
        assert!(Zoho.validate_settings(&json!({"data_centre": "in"}), false).is_ok());
    }

    #[test]
    fn only_a_refused_token_is_worth_a_refresh() {
        let answer = |status: u16, body: &str| VendorResponse {
            status,
            headers: Default::default(),
            body: body.as_bytes().to_vec(),
            attempts: 1,
        };
        for body in [
            r#"{"code":"INVALID_TOKEN","details":{},"message":"invalid oauth token","status":"error"}"#,
            r#"{"code":"AUTHENTICATION_FAILURE","details":{},"message":"Authentication failed","status":"error"}"#,
            "not json",
        ] {
            assert!(Zoho.token_refused(&answer(401, body)), "{body}");
        }
        // A missing scope is not cured by a new token: refreshing for it
        // would only spend the refresh token's ten-per-ten-minutes quota.
        let scope = r#"{"code":"OAUTH_SCOPE_MISMATCH","details":{},"message":"invalid oauth scope to access this URL","status":"error"}"#;
        assert!(!Zoho.token_refused(&answer(401, scope)));
        assert!(!Zoho.token_refused(&answer(400, r#"{"code":"INVALID_TOKEN"}"#)));
    }

    #[test]
    fn emails_are_found_in_templates() {
        let template = r#"{{ {"102": "Anna@Example.com", "103": "bob@x.org"}[event.employee] | default('top@corp.example') }}"#;
        assert_eq!(
            emails_in(template),
            vec!["anna@example.com", "bob@x.org", "top@corp.example"]
        );
        assert!(emails_in("{{ event.employee_email }}").is_empty());
        assert!(emails_in("a@b").is_empty());
    }

    #[test]
    fn the_header_and_consent_parameters_are_zohos() {
        assert_eq!(Zoho.authorization("t"), "Zoho-oauthtoken t");
        assert!(
            Zoho.authorize_params()
                .contains(&("access_type".into(), "offline".into()))
        );
        assert!(!Zoho.pkce());
    }
}
