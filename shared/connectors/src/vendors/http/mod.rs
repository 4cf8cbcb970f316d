//! `http`: a request to any HTTP endpoint (n8n's HTTP Request node,
//! Zapier's "Webhooks by Zapier" action), for the services crmbridge has
//! no connector for. One action, `http.request.send`.
//!
//! Connection settings (all optional):
//!
//! | setting | meaning | default |
//! |---|---|---|
//! | `base_url` | where this connection's requests may go: a step's `url` is a path under it, or an absolute URL that starts with it. Required when the connection carries an `authorization` credential, so an automation cannot send that credential elsewhere | none: any public URL |
//! | `requests_per_second` | rate limit per connection (1–100000) | 20 |
//! | `parallel` | requests in flight per connection (1–1024) | 8 |
//! | `timeout_ms` | per attempt (100–60000) | 20000 |
//! | `idempotency_header` | the header that carries the step's idempotency key | `Idempotency-Key` |
//! | `signature` | `standard_webhooks`: every request is signed ([Standard Webhooks](https://www.standardwebhooks.com)) with the credential `signing_secret`; `webhook-id` is the idempotency key | none |
//! | `check_path` | what the connection check GETs, under `base_url` | `base_url` itself |
//!
//! Credentials (optional): `authorization`, sent as the `Authorization`
//! header (`Bearer …`, `Basic …`), and `signing_secret` (`whsec_…`).
//!
//! Outside test mode a request goes only to a public address over https:
//! the name is resolved and every non-public address dropped, and each
//! redirect target is checked the same way (see
//! [`crate::public_address`]).
#![doc = include_str!("API.md")]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use crmbridge_mapping::{ActionKind, ActionSpec, FieldType};
use reqwest::Method;
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{Map, Value, json};

use crate::client::{Idempotency, VendorPolicy, VendorRequest, VendorResponse, redact, truncate};
use crate::public_address;
use crate::standard_webhooks::{SigningSecret, signature_headers};
use crate::support::{field, only_known, with_timeout};
use crate::{
    Account, Action, ActionError, ActionOutput, CallContext, Resend, SettingsError, Vendor,
    VendorError, VendorSettings,
};

const APP: &str = "http";
const SETTINGS: &[&str] = &[
    "base_url",
    "requests_per_second",
    "parallel",
    "timeout_ms",
    "idempotency_header",
    "signature",
    "check_path",
];
const FIELDS: &[&str] = &[
    "method",
    "url",
    "query",
    "headers",
    "json",
    "form",
    "id_pointer",
    "on_unknown_outcome",
];
const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];
const STANDARD_WEBHOOKS: &str = "standard_webhooks";
/// Headers a step may not set: the transport's own, and the ones this
/// connector sets from the connection (so a credential never sits in an
/// automation, where runs would record it).
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "authorization",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];
/// The largest response body kept as the step's output (runs store it).
const MAX_KEPT_BODY: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, Default)]
pub struct HttpRequest;

pub fn vendor() -> Vendor {
    let http = Arc::new(HttpRequest);
    Vendor::new(APP, http.clone())
        .account(http.clone())
        .action(http)
}

fn setting<'a>(settings: &'a Value, name: &str) -> Option<&'a str> {
    settings.get(name).and_then(Value::as_str)
}

/// The receiver is the user's own: it may take far more than a SaaS API.
const RATE_RANGE: std::ops::RangeInclusive<u64> = 1..=100_000;
const PARALLEL_RANGE: std::ops::RangeInclusive<u64> = 1..=1024;

fn whole_in(settings: &Value, name: &str, range: std::ops::RangeInclusive<u64>) -> Option<u64> {
    settings
        .get(name)
        .and_then(Value::as_u64)
        .filter(|n| range.contains(n))
}

fn policy(settings: &Value) -> VendorPolicy {
    let rate = whole_in(settings, "requests_per_second", RATE_RANGE).unwrap_or(20);
    let parallel = whole_in(settings, "parallel", PARALLEL_RANGE).unwrap_or(8);
    with_timeout(
        VendorPolicy::new(
            APP,
            rate as usize,
            Duration::from_secs(1),
            parallel as usize,
        ),
        settings,
    )
}

fn idempotency_header(settings: &Value) -> &str {
    setting(settings, "idempotency_header").unwrap_or("Idempotency-Key")
}

fn method_of(fields: &Map<String, Value>) -> Result<Method, ActionError> {
    match fields.get("method") {
        None | Some(Value::Null) => Ok(Method::POST),
        Some(Value::String(text)) if METHODS.contains(&text.to_ascii_uppercase().as_str()) => {
            Method::from_bytes(text.to_ascii_uppercase().as_bytes())
                .map_err(|_| ActionError::field("fields.method", "not an HTTP method"))
        }
        Some(other) => Err(ActionError::field("fields.method",
            format!("{other} is not one of {}", METHODS.join(", ")),
        )),
    }
}

/// The address a step's `url` names, under the connection's `base_url`
/// when it has one.
fn address(ctx: &CallContext<'_>, fields: &Map<String, Value>) -> Result<url::Url, ActionError> {
    let text = match fields.get("url") {
        Some(Value::String(text)) if !text.trim().is_empty() => text.trim(),
        Some(other) if !other.is_null() => {
            return Err(ActionError::field("fields.url", format!("{other} is not a URL")));
        }
        _ => return Err(ActionError::field("fields.url", "required")),
    };
    // Parsed, so that `https://API.example.com:443/v1` and a step's
    // `https://api.example.com/v1/x` compare as the same place.
    let base = match setting(ctx.settings, "base_url") {
        Some(text) => Some(
            url::Url::parse(text)
                .map_err(|err| ActionError::Config(format!("settings.base_url: {err}")))?
                .to_string(),
        ),
        None => None,
    };
    let base = base.as_deref();
    let url = match (base, text.starts_with('/')) {
        (Some(base), true) => format!("{}{text}", base.trim_end_matches('/')),
        (None, true) => {
            return Err(ActionError::field("fields.url",
                "a path needs the connection's base_url; give an absolute URL",
            ));
        }
        (_, false) => text.to_owned(),
    };
    let parsed =
        url::Url::parse(&url).map_err(|err| ActionError::field("fields.url", format!("not a URL: {err}")))?;
    if let Some(base) = base {
        let base = base.trim_end_matches('/');
        let under = parsed.as_str().strip_prefix(base).is_some_and(|rest| {
            rest.is_empty() || rest.starts_with(['/', '?', '#'])
        });
        if !under {
            return Err(ActionError::field("fields.url",
                format!("must be under the connection's base_url ({base})"),
            ));
        }
    }
    public_address::check_url(&parsed, ctx.allow_any_base_url)
        .map_err(|refused| ActionError::field("fields.url", refused.0))?;
    Ok(parsed)
}

/// A scalar field value as header or query text.
fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn object_of<'a>(
    fields: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a Map<String, Value>>, ActionError> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(other) => Err(ActionError::field(
            format!("fields.{name}"),
            format!("must be an object of names and values, found {other}"),
        )),
    }
}

/// The request a step describes, without what the connection adds.
struct Described {
    method: Method,
    url: url::Url,
    headers: Vec<(String, String)>,
    body: Option<(Vec<u8>, &'static str)>,
}

fn describe(ctx: &CallContext<'_>, fields: &Map<String, Value>) -> Result<Described, ActionError> {
    only_known(fields, FIELDS)?;
    let method = method_of(fields)?;
    let mut url = address(ctx, fields)?;
    if let Some(query) = object_of(fields, "query")? {
        let mut pairs = url.query_pairs_mut();
        for (name, value) in query {
            if value.is_null() {
                continue;
            }
            let text = as_text(value).ok_or_else(|| {
                ActionError::field(format!("fields.query.{name}"), "must be text, a number or true/false")
            })?;
            pairs.append_pair(name, &text);
        }
    }
    let idempotency = idempotency_header(ctx.settings).to_ascii_lowercase();
    let mut headers = Vec::new();
    for (name, value) in object_of(fields, "headers")?.into_iter().flatten() {
        let path = format!("fields.headers.{name}");
        let lower = name.to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&lower.as_str()) || lower == idempotency {
            return Err(ActionError::field(
                path,
                "set by crmbridge (credentials, signatures and keys come from the connection)",
            ));
        }
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(ActionError::field(path, "not a valid header name"));
        }
        if value.is_null() {
            continue;
        }
        let text = as_text(value)
            .filter(|text| HeaderValue::from_str(text).is_ok())
            .ok_or_else(|| ActionError::field(&path, "must be one line of visible text"))?;
        headers.push((name.clone(), text));
    }
    let json_body = fields.get("json").filter(|v| !v.is_null());
    let form_body = object_of(fields, "form")?;
    let body = match (json_body, form_body) {
        (Some(_), Some(_)) => {
            return Err(ActionError::field("fields.form", "give json or form, not both"));
        }
        (Some(json), None) => Some((json.to_string().into_bytes(), "application/json")),
        (None, Some(form)) => {
            let mut encoded = form_urlencoded::Serializer::new(String::new());
            for (name, value) in form {
                if value.is_null() {
                    continue;
                }
                let text = as_text(value).ok_or_else(|| {
                    ActionError::field(format!("fields.form.{name}"), "must be text, a number or true/false")
                })?;
                encoded.append_pair(name, &text);
            }
            Some((
                encoded.finish().into_bytes(),
                "application/x-www-form-urlencoded",
            ))
        }
        (None, None) => None,
    };
    if body.is_some() && method == Method::GET {
        return Err(ActionError::field("fields.method", "a GET request has no body"));
    }
    Ok(Described {
        method,
        url,
        headers,
        body,
    })
}

/// The connection's secrets, for redaction.
fn secrets<'a>(ctx: &'a CallContext<'_>) -> Vec<&'a str> {
    ["authorization", "signing_secret"]
        .iter()
        .filter_map(|name| ctx.credentials.get(*name).map(String::as_str))
        .collect()
}

/// A refusal the vendor made, as an error: the credentials (401, 403), the
/// endpoint being unavailable (429, 5xx: transient), or the request.
fn refusal(response: &VendorResponse, secrets: &[&str]) -> VendorError {
    let body = truncate(redact(&response.text(), secrets), 500);
    match response.status {
        401 | 403 => VendorError::CredentialsRefused {
            vendor: APP,
            status: response.status,
            message: body,
        },
        status if status == 429 || status >= 500 => VendorError::Status {
            vendor: APP,
            status,
            attempts: response.attempts,
            body,
        },
        status => VendorError::Rejected {
            vendor: APP,
            status,
            message: if (300..400).contains(&status) {
                format!("HTTP {status}: a redirect that was not followed")
            } else {
                format!("HTTP {status}: {body}")
            },
        },
    }
}

/// What the step's later steps can read: the status, the body (JSON when
/// it is JSON, else text), the headers, and an id. Runs keep it, so the
/// connection's secrets are taken out (an endpoint may echo the request).
fn output(response: &VendorResponse, id_pointer: &str, secrets: &[&str]) -> ActionOutput {
    let body = if response.body.len() > MAX_KEPT_BODY {
        Value::Null
    } else {
        let text = redact(&response.text(), secrets);
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    let id = match body.pointer(id_pointer) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    let headers: Map<String, Value> = response
        .headers
        .iter()
        .filter(|(name, _)| *name != reqwest::header::SET_COOKIE)
        .filter_map(|(name, value)| {
            Some((
                name.as_str().to_owned(),
                Value::String(redact(value.to_str().ok()?, secrets)),
            ))
        })
        .collect();
    let mut record = json!({
        "status": response.status,
        "body": body,
        "headers": headers,
    });
    if response.body.len() > MAX_KEPT_BODY {
        record["body_bytes"] = json!(response.body.len());
    }
    ActionOutput {
        id,
        record,
        response_status: response.status,
        attempts: response.attempts,
    }
}

impl HttpRequest {
    async fn send(
        &self,
        ctx: &CallContext<'_>,
        described: Described,
        idempotency: Idempotency,
    ) -> Result<VendorResponse, ActionError> {
        let Described {
            method,
            url,
            headers,
            body,
        } = described;
        let signs = setting(ctx.settings, "signature") == Some(STANDARD_WEBHOOKS);
        let keyed = method != Method::GET;
        let (bytes, content_type) = match body {
            Some((bytes, content_type)) => (Some(bytes), Some(content_type)),
            None => (None, None),
        };
        let mut request = VendorRequest {
            method,
            url: url.to_string(),
            headers,
            body: bytes,
            idempotency,
            public_only: !ctx.allow_any_base_url,
        };
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        if keyed {
            request = request.header(idempotency_header(ctx.settings), ctx.idempotency_key);
        }
        if let Some(authorization) = ctx.credentials.get("authorization") {
            // Saving refuses this too; a connection stored before that rule
            // must not send its credential anywhere a step names.
            if setting(ctx.settings, "base_url").is_none() {
                return Err(ActionError::Config(
                    "the credential authorization needs settings.base_url".into(),
                ));
            }
            request = request.header("authorization", authorization.clone());
        }
        if signs {
            let secret = ctx
                .credentials
                .get("signing_secret")
                .ok_or_else(|| {
                    ActionError::Config("settings.signature needs the credential signing_secret".into())
                })
                .and_then(|text| {
                    SigningSecret::parse(text)
                        .map_err(|err| ActionError::Config(format!("signing_secret: {}", err.message)))
                })?;
            let body = request.body.clone().unwrap_or_default();
            for (name, value) in
                signature_headers(&[secret], ctx.idempotency_key, Utc::now().timestamp(), &body)
            {
                request = request.header(name, value);
            }
        }
        let secrets = secrets(ctx);
        // The limiter is per connection and parallelism: a changed
        // `parallel` setting takes effect at once.
        let policy = policy(ctx.settings);
        let limiter_key = format!("{}#{}", ctx.connection, policy.parallel);
        Ok(ctx
            .http
            .send(&limiter_key, &policy, &request, &secrets)
            .await?)
    }
}

#[async_trait]
impl Action for HttpRequest {
    fn spec(&self) -> ActionSpec {
        ActionSpec::new(
            "http.request.send",
            ActionKind::Other,
            vec![
                field("method", FieldType::Enum(METHODS.iter().map(|m| (*m).to_owned()).collect()), "the HTTP method (POST when not given)"),
                crmbridge_mapping::FieldSpec::required("url", FieldType::String).describe("an absolute https URL, or a path under the connection's base_url"),
                field("query", FieldType::Object, "query parameters, name → value"),
                field("headers", FieldType::Object, "request headers, name → value (Authorization and signatures come from the connection)"),
                field("json", FieldType::Any, "a JSON body"),
                field("form", FieldType::Object, "a form body (application/x-www-form-urlencoded), name → value"),
                field("id_pointer", FieldType::String, "JSON pointer into the response body to the id later steps see as steps.<id>.id (default /id)"),
                field("on_unknown_outcome", FieldType::Enum(vec!["resend".into(), "review".into()]), "when a POST or PATCH may or may not have arrived: stop the run for review (the default), or resend it under the same idempotency key, for a receiver that drops repeats"),
            ],
        )
        .with_output(vec![
            field("status", FieldType::Integer, "the HTTP status"),
            field("body", FieldType::Any, "the response body: JSON when it is JSON, else text (null above 64 KiB)"),
            field("headers", FieldType::Object, "the response headers, lowercase name → value"),
        ])
    }

    /// GET, PUT and DELETE may be sent again. A POST or PATCH whose
    /// outcome is unknown is held for review, since most receivers ignore
    /// an idempotency key; a step whose receiver honours it (or drops
    /// repeated Standard Webhooks ids, as the specification asks) says
    /// `on_unknown_outcome: resend`, and is then sent again under the same
    /// key.
    fn resend(&self, fields: &Map<String, Value>) -> Resend {
        let method = method_of(fields).unwrap_or(Method::POST);
        if method == Method::GET || method == Method::PUT || method == Method::DELETE {
            Resend::Repeatable
        } else if fields.get("on_unknown_outcome").and_then(Value::as_str) == Some("resend") {
            Resend::Keyed
        } else {
            Resend::Unsafe
        }
    }

    async fn execute(
        &self,
        ctx: &CallContext<'_>,
        fields: &Map<String, Value>,
        _target: Option<&str>,
    ) -> Result<ActionOutput, ActionError> {
        let described = describe(ctx, fields)?;
        let id_pointer = match fields.get("id_pointer") {
            None | Some(Value::Null) => "/id".to_owned(),
            Some(Value::String(p)) if p.starts_with('/') => p.clone(),
            Some(_) => {
                return Err(ActionError::field("fields.id_pointer",
                    "a JSON pointer starts with '/', e.g. /data/id",
                ));
            }
        };
        let idempotency = match self.resend(fields) {
            Resend::Unsafe => Idempotency::NotIdempotent,
            _ => Idempotency::Idempotent,
        };
        let response = self.send(ctx, described, idempotency).await?;
        if !response.is_success() {
            return Err(refusal(&response, &secrets(ctx)).into());
        }
        Ok(output(&response, &id_pointer, &secrets(ctx)))
    }
}

#[async_trait]
impl Account for HttpRequest {
    /// GETs the connection's `check_path` (or its `base_url`): the check
    /// passes on a 2xx and says which status came back.
    async fn check(&self, ctx: &CallContext<'_>) -> Result<Value, ActionError> {
        if setting(ctx.settings, "base_url").is_none() {
            return Err(ActionError::Config(
                "settings.base_url is needed to check a connection (there is nothing else to ask)"
                    .into(),
            ));
        }
        let path = setting(ctx.settings, "check_path").unwrap_or("/");
        let fields: Map<String, Value> =
            [("method".to_owned(), json!("GET")), ("url".to_owned(), json!(path))]
                .into_iter()
                .collect();
        let described = describe(ctx, &fields)?;
        let url = described.url.to_string();
        let response = self.send(ctx, described, Idempotency::Idempotent).await?;
        if !response.is_success() {
            return Err(refusal(&response, &secrets(ctx)).into());
        }
        Ok(json!({"url": url, "status": response.status}))
    }
}

impl VendorSettings for HttpRequest {
    fn validate_settings(
        &self,
        settings: &Value,
        allow_any_base_url: bool,
    ) -> Result<(), Vec<SettingsError>> {
        let Some(map) = settings.as_object() else {
            return Err(vec![SettingsError {
                field: String::new(),
                message: "settings must be a JSON object".into(),
            }]);
        };
        let mut errors = Vec::new();
        let mut problem = |field: &str, message: String| {
            errors.push(SettingsError {
                field: field.to_owned(),
                message,
            })
        };
        for (name, value) in map {
            match name.as_str() {
                "base_url" => match value.as_str().map(url::Url::parse) {
                    Some(Ok(url)) => {
                        if let Err(refused) = public_address::check_url(&url, allow_any_base_url) {
                            problem(name, refused.0);
                        } else if url.query().is_some() || url.fragment().is_some() {
                            problem(name, "must not carry a query or fragment".into());
                        }
                    }
                    Some(Err(err)) => problem(name, format!("not a URL: {err}")),
                    None => problem(name, "must be a string".into()),
                },
                "requests_per_second" if whole_in(settings, name, RATE_RANGE).is_none() => {
                    problem(name, "must be a whole number from 1 to 100000".into())
                }
                "parallel" if whole_in(settings, name, PARALLEL_RANGE).is_none() => {
                    problem(name, "must be a whole number from 1 to 1024".into())
                }
                "timeout_ms" if whole_in(settings, name, 100..=60_000).is_none() => problem(
                    name,
                    "must be a whole number of milliseconds from 100 to 60000".into(),
                ),
                "idempotency_header" => {
                    let valid = value.as_str().is_some_and(|text| {
                        HeaderName::from_bytes(text.as_bytes()).is_ok()
                            && !RESERVED_HEADERS.contains(&text.to_ascii_lowercase().as_str())
                    });
                    if !valid {
                        problem(name, "must be a header name crmbridge does not set otherwise".into());
                    }
                }
                "signature" if value.as_str() != Some(STANDARD_WEBHOOKS) => {
                    problem(name, format!("the only scheme is {STANDARD_WEBHOOKS}"))
                }
                "check_path" if !value.as_str().is_some_and(|p| p.starts_with('/')) => {
                    problem(name, "a path under base_url, starting with '/'".into())
                }
                known if SETTINGS.contains(&known) || known == "default_region" => {}
                _ => problem(
                    name,
                    format!("unknown setting; known: {}", SETTINGS.join(", ")),
                ),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// An `authorization` credential needs a `base_url` to stay within; a
    /// signature needs a signing secret in the standard form.
    fn validate_credentials(
        &self,
        settings: &Value,
        credentials: &BTreeMap<String, String>,
    ) -> Result<(), Vec<SettingsError>> {
        let mut errors = Vec::new();
        for name in credentials.keys() {
            if name != "authorization" && name != "signing_secret" {
                errors.push(SettingsError {
                    field: name.clone(),
                    message: "unknown credential; known: authorization, signing_secret".into(),
                });
            }
        }
        if let Some(authorization) = credentials.get("authorization") {
            if setting(settings, "base_url").is_none() {
                errors.push(SettingsError {
                    field: "authorization".into(),
                    message: "needs settings.base_url, so that automations send it only there"
                        .into(),
                });
            }
            if HeaderValue::from_str(authorization).is_err() {
                errors.push(SettingsError {
                    field: "authorization".into(),
                    message: "must be one line of visible text".into(),
                });
            }
        }
        if setting(settings, "signature") == Some(STANDARD_WEBHOOKS) {
            let problem = match credentials.get("signing_secret") {
                None => Some("settings.signature requires it (whsec_ and base64)".to_owned()),
                Some(secret) => SigningSecret::parse(secret).err().map(|err| err.message),
            };
            if let Some(message) = problem {
                errors.push(SettingsError {
                    field: "signing_secret".into(),
                    message,
                });
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::VendorClient;

    fn fields(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    fn with_ctx<T>(
        settings: Value,
        allow_any: bool,
        f: impl FnOnce(&CallContext<'_>) -> T,
    ) -> T {
        let credentials = BTreeMap::from([("authorization".to_owned(), "Bearer s3cret-token".to_owned())]);
        let http = VendorClient::new();
        let ctx = CallContext {
            connection: "con_http",
            settings: &settings,
            credentials: &credentials,
            http: &http,
            idempotency_key: "run_1/send",
            allow_any_base_url: allow_any,
            tokens: None,
        };
        f(&ctx)
    }

    #[test]
    fn a_step_is_described_with_query_headers_and_one_body() {
        let described = with_ctx(json!({"base_url": "https://api.example.com/v1"}), false, |ctx| {
            describe(
                ctx,
                &fields(json!({
                    "url": "/orders",
                    "query": {"page": 2, "skip": null},
                    "headers": {"X-Source": "crmbridge"},
                    "json": {"a": 1}
                })),
            )
        })
        .unwrap();
        assert_eq!(described.method, Method::POST);
        assert_eq!(described.url.as_str(), "https://api.example.com/v1/orders?page=2");
        assert_eq!(described.headers, vec![("X-Source".to_owned(), "crmbridge".to_owned())]);
        let (body, content_type) = described.body.unwrap();
        assert_eq!((body.as_slice(), content_type), (&b"{\"a\":1}"[..], "application/json"));
    }

    #[test]
    fn what_a_step_may_not_say_is_refused_naming_the_field() {
        let base = json!({"base_url": "https://api.example.com/v1"});
        for (step, field_name) in [
            (json!({"url": "https://elsewhere.example.com/x"}), "url"),
            (json!({"url": "https://api.example.com/v10"}), "url"),
            (json!({"url": "/x", "headers": {"Authorization": "Bearer x"}}), "headers.Authorization"),
            (json!({"url": "/x", "headers": {"Idempotency-Key": "k"}}), "headers.Idempotency-Key"),
            (json!({"url": "/x", "headers": {"bad name": "v"}}), "headers.bad name"),
            (json!({"url": "/x", "headers": {"X-A": "two\nlines"}}), "headers.X-A"),
            (json!({"url": "/x", "json": {}, "form": {"a": "b"}}), "form"),
            (json!({"url": "/x", "method": "GET", "json": {"a": 1}}), "method"),
            (json!({"url": "/x", "method": "TRACE"}), "method"),
            (json!({"url": "/x", "query": {"a": {"b": 1}}}), "query.a"),
            (json!({"url": "/x", "nope": 1}), "nope"),
            (json!({}), "url"),
        ] {
            let err = with_ctx(base.clone(), false, |ctx| describe(ctx, &fields(step.clone())))
                .err()
                .unwrap_or_else(|| panic!("{step} passed"));
            assert!(
                matches!(&err, ActionError::Field { field, .. } if *field == format!("fields.{field_name}")),
                "{step}: {err:?}"
            );
        }
        // Without a base URL, the address must be public and https.
        for url in ["http://hooks.example.com/x", "https://10.0.0.8/x", "https://localhost/x", "/x"] {
            let err = with_ctx(json!({}), false, |ctx| describe(ctx, &fields(json!({"url": url}))))
                .err()
                .unwrap_or_else(|| panic!("{url} passed"));
            assert!(matches!(&err, ActionError::Field { field, .. } if field == "fields.url"), "{url}: {err:?}");
        }
    }

    #[test]
    fn a_post_is_reviewed_unless_the_step_says_its_receiver_drops_repeats() {
        let action = HttpRequest;
        assert_eq!(action.resend(&fields(json!({"url": "x"}))), Resend::Unsafe);
        assert_eq!(
            action.resend(&fields(json!({"url": "x", "on_unknown_outcome": "resend"}))),
            Resend::Keyed
        );
        for method in ["GET", "PUT", "DELETE", "put"] {
            assert_eq!(
                action.resend(&fields(json!({"url": "x", "method": method}))),
                Resend::Repeatable,
                "{method}"
            );
        }
    }

    #[test]
    fn settings_and_credentials_are_checked() {
        let http = HttpRequest;
        assert!(http.validate_settings(&json!({}), false).is_ok());
        let errors = http
            .validate_settings(
                &json!({
                    "base_url": "https://169.254.169.254/",
                    "parallel": 0,
                    "requests_per_second": 200000,
                    "idempotency_header": "Authorization",
                    "signature": "hmac",
                    "check_path": "health",
                    "other": 1
                }),
                false,
            )
            .unwrap_err();
        let named: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        for name in [
            "base_url",
            "parallel",
            "requests_per_second",
            "idempotency_header",
            "signature",
            "check_path",
            "other",
        ] {
            assert!(named.contains(&name), "{name}: {named:?}");
        }
        let credentials = BTreeMap::from([("authorization".to_owned(), "Bearer x".to_owned())]);
        let errors = http.validate_credentials(&json!({}), &credentials).unwrap_err();
        assert_eq!(errors[0].field, "authorization");
        assert!(
            http.validate_credentials(&json!({"base_url": "https://api.example.com"}), &credentials)
                .is_ok()
        );
        let errors = http
            .validate_credentials(&json!({"signature": "standard_webhooks"}), &BTreeMap::new())
            .unwrap_err();
        assert_eq!(errors[0].field, "signing_secret");
    }

    #[test]
    fn the_output_holds_status_body_headers_and_the_id_the_pointer_names() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("x-request-id", HeaderValue::from_static("r-1"));
        headers.insert("set-cookie", HeaderValue::from_static("session=secret"));
        let response = VendorResponse {
            status: 201,
            headers,
            body: br#"{"data":{"id":42},"id":"top"}"#.to_vec(),
            attempts: 1,
        };
        let out = output(&response, "/data/id", &[]);
        assert_eq!(out.id, "42");
        assert_eq!(out.record["status"], 201);
        assert_eq!(out.record["body"]["id"], "top");
        assert_eq!(out.record["headers"], json!({"x-request-id": "r-1"}));
        let text = VendorResponse {
            body: b"accepted".to_vec(),
            ..response.clone()
        };
        assert_eq!(output(&text, "/id", &[]).record["body"], "accepted");
        assert_eq!(output(&text, "/id", &[]).id, "");
        let big = VendorResponse {
            body: vec![b'a'; MAX_KEPT_BODY + 1],
            ..response
        };
        let out = output(&big, "/id", &[]);
        assert!(out.record["body"].is_null());
        assert_eq!(out.record["body_bytes"], MAX_KEPT_BODY + 1);
        // An endpoint that echoes the request does not put the credential
        // into the run.
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("x-echo", HeaderValue::from_static("Bearer s3cret-token"));
        let echo = VendorResponse {
            status: 200,
            headers,
            body: br#"{"headers":{"Authorization":"Bearer s3cret-token"}}"#.to_vec(),
            attempts: 1,
        };
        let out = output(&echo, "/id", &["Bearer s3cret-token"]);
        assert!(!out.record.to_string().contains("s3cret"), "{}", out.record);
        assert_eq!(out.record["body"]["headers"]["Authorization"], "***");
    }

    #[test]
    fn the_base_url_is_compared_as_an_address_not_as_text() {
        let settings = json!({"base_url": "https://API.example.com:443/v1"});
        for url in ["/orders", "https://api.example.com/v1/orders"] {
            let described = with_ctx(settings.clone(), false, |ctx| {
                describe(ctx, &fields(json!({"url": url})))
            })
            .unwrap_or_else(|err| panic!("{url}: {err:?}"));
            assert_eq!(described.url.as_str(), "https://api.example.com/v1/orders");
        }
    }
}
