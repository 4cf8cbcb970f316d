//! Fake OAuth 2.0 authorization server plus a small protected resource, for
//! testing connectors that get, store, refresh and use OAuth tokens (Zoho
//! CRM, HubSpot and other RFC 6749 vendors).
//!
//! What it models (every path is relative to [`FakeOAuth::base_url`], which
//! is also the `api_domain` the token endpoint returns unless
//! [`FakeOAuth::set_api_domain`] names another host — Zoho answers with its
//! data centre's API host, e.g. a `FakeZoho`'s base URL):
//! * `GET /oauth/authorize` (alias `/oauth/v2/auth`, Zoho's path) with
//!   `response_type=code`, `client_id`, `redirect_uri`, `state`, `scope`,
//!   optional `code_challenge` + `code_challenge_method=S256`. The fake
//!   "user" consents at once: 302 with
//!   `Location: {redirect_uri}?code=…&state=…` (`state` echoed exactly, left
//!   out when absent; with [`ErrorStyle::Zoho`] also `location=us` and
//!   `accounts-server={base_url}`, as Zoho adds). An unknown `client_id`,
//!   a missing `redirect_uri` or one not in [`OAuthConfig::redirect_uris`]
//!   (when that list is not empty) → 400 JSON, no redirect. Once the client
//!   and redirect URI are known, errors go back by redirect (RFC 6749
//!   §4.1.2.1): `error=unsupported_response_type`, `error=invalid_request`
//!   (PKCE required but no challenge, a method other than `S256`, a challenge
//!   not 43–128 characters), `error=access_denied`
//!   ([`FakeOAuth::set_deny_consent`]). A code lives 10 minutes and is
//!   single-use: presenting it to the token endpoint consumes it whatever
//!   the outcome.
//! * `POST /oauth/token` (aliases `/oauth/v2/token` — Zoho, `/oauth/v1/token`
//!   and `/oauth/2026-03/token` — HubSpot), `application/x-www-form-urlencoded`; parameters are also
//!   read from the query string, as Zoho documents for its refresh call.
//!   Client authentication by `client_id` + `client_secret` form fields or
//!   HTTP Basic (RFC 6749 §2.3.1; the Basic user and password are accepted
//!   raw or form-urlencoded); missing or wrong → 401
//!   `{"error":"invalid_client","error_description":…}` whatever the style.
//!   `grant_type=authorization_code`: `code` known, unexpired, unused;
//!   `redirect_uri` equal to the one of the authorization request; with a
//!   challenge, `code_verifier` (43–128 characters) whose
//!   BASE64URL(SHA-256) equals it (a verifier sent for a code without
//!   challenge is ignored). `grant_type=refresh_token`: the refresh token
//!   known and not revoked; a new access token; the refresh token is reused
//!   (not rotated) unless [`FakeOAuth::set_rotate_refresh_tokens`], which
//!   returns a new one and revokes the old. Success: 200
//!   `{"access_token","refresh_token" (code grant or rotation only),
//!   "expires_in","token_type":"Bearer","api_domain","scope" (when one was
//!   asked)}` with `Cache-Control: no-store`.
//! * Grant errors by [`ErrorStyle`]:
//!   [`ErrorStyle::Rfc6749`] → 400 `{"error":"invalid_grant" |
//!   "invalid_request" | "unsupported_grant_type","error_description"}`;
//!   [`ErrorStyle::Zoho`] → **200** `{"error":"invalid_code"}` (a bad code,
//!   refresh token or verifier, or a missing one), `invalid_redirect_uri`,
//!   `unsupported_grant_type`; [`ErrorStyle::HubSpot`] → 400
//!   `{"status":"BAD_REFRESH_TOKEN" | "BAD_AUTH_CODE" | "BAD_REDIRECT_URI" |
//!   "BAD_GRANT_TYPE","message","correlationId"}` (refresh message
//!   `missing or invalid refresh token`).
//! * Protected resource: `GET /api/whoami` → `{"client_id","scope","user"}`,
//!   `GET /api/records` → `{"data":[…]}`, `POST /api/records` (JSON object)
//!   → 201 `{"id", …body}`. `Authorization: Bearer <token>` or
//!   `Zoho-oauthtoken <token>` (scheme case-insensitive); a missing, unknown,
//!   expired or revoked token → 401
//!   `{"code":"INVALID_TOKEN","details":{},"message":"invalid oauth token","status":"error"}`
//!   with `WWW-Authenticate: Bearer error="invalid_token"`.
//! * [`FakeOAuth::token_checker`] hands another fake (Zoho's API) a
//!   [`TokenChecker`] that tells whether an access token is valid, expired
//!   or unknown, so that fake can serve as the protected resource.
//! * Injected faults: `ServerError` → 500 `{"error":"server_error"}`
//!   (`{"code":"INTERNAL_ERROR"}` under `/api`), `TooManyRequests` → 429
//!   with `Retry-After: 1`.
//! * The request log redacts the `authorization` header and the parameters
//!   `refresh_token`, `client_secret`, `code`, `code_verifier`,
//!   `access_token` in the query and in form bodies (the shared server only
//!   treats a body as a form when its `Content-Type` starts with
//!   `application/x-www-form-urlencoded`, lowercase; a token request with a
//!   body of another type is refused with `invalid_request`, but it has
//!   been logged as sent).
//!
//! Uncertain upstream (the fake's choice in brackets):
//! * Zoho's error bodies: `invalid_code` is reported by integrators for a bad
//!   code and for a bad refresh token, with HTTP 200; the names for a missing
//!   parameter and a redirect mismatch are guesses [`invalid_code`,
//!   `invalid_redirect_uri`]; Zoho's answer to too many refreshes (10 access
//!   tokens per refresh token per 10 minutes) is not modelled.
//! * HubSpot legacy statuses other than `BAD_REFRESH_TOKEN` (`BAD_AUTH_CODE`,
//!   `BAD_REDIRECT_URI`, `BAD_GRANT_TYPE`) are unconfirmed names; HubSpot's
//!   newer "standardized" bodies carry both `error`/`error_description` and
//!   `status`/`message` [the fake sends the legacy pair only; use
//!   [`ErrorStyle::Rfc6749`] for the other]; HubSpot sends
//!   `"token_type":"bearer"` in lower case [always `Bearer`].
//! * Whether revoking a refresh token also kills the access tokens minted
//!   from it [yes, as RFC 7009 recommends]; whether a reused code revokes
//!   the tokens already issued for it [no]; code lifetime [10 minutes];
//!   the protected resource's 401 body is Zoho's, for every style.
//! * `token_calls` / `refresh_calls` count the token requests that reached
//!   the fake's logic: a request answered by an injected `ServerError`,
//!   `TooManyRequests`, `RetryAfterText` or `Drop` fault is in
//!   [`FakeOAuth::requests`] but not counted.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use http::{Method, StatusCode};
use rand::Rng;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::FakeError;
use crate::server::{self, BoxFuture, Fault, Req, Resp, Server, Vendor, common_methods, lock};

/// The authorization endpoint's path.
pub const AUTHORIZE_PATH: &str = "/oauth/authorize";
/// The token endpoint's path.
pub const TOKEN_PATH: &str = "/oauth/token";
/// The protected "who am I" resource.
pub const WHOAMI_PATH: &str = "/api/whoami";
/// The protected records resource (`GET` lists, `POST` creates).
pub const RECORDS_PATH: &str = "/api/records";

/// Accepted spellings of the authorization endpoint (ours, Zoho's).
const AUTHORIZE_PATHS: &[&str] = &[AUTHORIZE_PATH, "/oauth/v2/auth"];
/// Accepted spellings of the token endpoint (ours, Zoho's, HubSpot's v1
/// and its dated successor).
const TOKEN_PATHS: &[&str] = &[
    TOKEN_PATH,
    "/oauth/v2/token",
    "/oauth/v1/token",
    "/oauth/2026-03/token",
];

/// How long an authorization code stays usable.
const CODE_LIFETIME: Duration = Duration::from_secs(600);

/// The user the protected resource reports.
const USER_EMAIL: &str = "oauth-user@example.com";

/// How the token endpoint shapes a grant error (bad code, bad refresh
/// token, redirect mismatch, failed PKCE, missing parameter, unknown grant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorStyle {
    /// Zoho accounts: HTTP **200** with `{"error":"invalid_code"}` (or
    /// `invalid_redirect_uri`, `unsupported_grant_type`).
    Zoho,
    /// HubSpot legacy: HTTP 400 with
    /// `{"status":"BAD_REFRESH_TOKEN","message":"…","correlationId":"…"}`.
    HubSpot,
    /// RFC 6749 §5.2: HTTP 400 with `{"error":"invalid_grant","error_description":"…"}`.
    #[default]
    Rfc6749,
}

/// What the fake accepts and how it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthConfig {
    /// The one registered client's id.
    pub client_id: String,
    /// Its secret.
    pub client_secret: String,
    /// Lifetime of access tokens, also sent as `expires_in` (default 3600).
    pub access_token_lifetime_secs: u64,
    /// How grant errors look (default [`ErrorStyle::Rfc6749`]).
    pub error_style: ErrorStyle,
    /// Whether `authorization_code` grants require S256 PKCE (default false;
    /// a challenge sent anyway is still verified).
    pub pkce: bool,
    /// Registered redirect URIs; empty (the default) accepts any.
    pub redirect_uris: Vec<String>,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        OAuthConfig {
            client_id: "fake-client-id".to_owned(),
            client_secret: "fake-client-secret".to_owned(),
            access_token_lifetime_secs: 3600,
            error_style: ErrorStyle::Rfc6749,
            pkce: false,
            redirect_uris: Vec::new(),
        }
    }
}

impl OAuthConfig {
    /// RFC 6749 errors, 1-hour tokens, no PKCE, any redirect URI.
    pub fn new(client_id: &str, client_secret: &str) -> Self {
        OAuthConfig {
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            ..OAuthConfig::default()
        }
    }

    /// Zoho-like: 200 `{"error":"invalid_code"}` errors, 1-hour tokens.
    pub fn zoho(client_id: &str, client_secret: &str) -> Self {
        OAuthConfig::new(client_id, client_secret).with_error_style(ErrorStyle::Zoho)
    }

    /// HubSpot-like: 400 `BAD_REFRESH_TOKEN` errors, 30-minute tokens.
    pub fn hubspot(client_id: &str, client_secret: &str) -> Self {
        OAuthConfig::new(client_id, client_secret)
            .with_error_style(ErrorStyle::HubSpot)
            .with_access_token_lifetime(1800)
    }

    /// Sets [`OAuthConfig::error_style`].
    pub fn with_error_style(mut self, style: ErrorStyle) -> Self {
        self.error_style = style;
        self
    }

    /// Sets [`OAuthConfig::pkce`].
    pub fn with_pkce(mut self, required: bool) -> Self {
        self.pkce = required;
        self
    }

    /// Sets [`OAuthConfig::access_token_lifetime_secs`].
    pub fn with_access_token_lifetime(mut self, secs: u64) -> Self {
        self.access_token_lifetime_secs = secs;
        self
    }

    /// Adds a registered redirect URI (once one is registered, others are refused).
    pub fn with_redirect_uri(mut self, uri: &str) -> Self {
        self.redirect_uris.push(uri.to_owned());
        self
    }
}

/// The PKCE S256 challenge of a verifier: BASE64URL-NOPAD(SHA-256(verifier)).
pub fn s256_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

#[derive(Debug, Clone)]
struct AuthCode {
    code: String,
    redirect_uri: String,
    challenge: Option<String>,
    scope: String,
    used: bool,
    expires_at: Option<Instant>,
}

#[derive(Debug, Clone)]
struct AccessToken {
    token: String,
    /// `None`: never expires by time.
    expires_at: Option<Instant>,
    /// Made invalid by [`FakeOAuth::expire_access_tokens`].
    expired: bool,
    revoked: bool,
    /// The refresh token it was minted from / with.
    refresh: Option<String>,
    scope: String,
}

impl AccessToken {
    fn valid(&self, now: Instant) -> bool {
        self.state(now) == TokenState::Valid
    }

    fn state(&self, now: Instant) -> TokenState {
        if self.revoked {
            TokenState::Unknown
        } else if self.expired || self.expires_at.is_some_and(|e| now >= e) {
            TokenState::Expired
        } else {
            TokenState::Valid
        }
    }
}

/// What [`TokenChecker::check`] knows about an access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    /// Issued by this fake, not expired, not revoked.
    Valid,
    /// Issued by this fake, but past its lifetime or expired by
    /// [`FakeOAuth::expire_access_tokens`].
    Expired,
    /// Never issued by this fake, or **revoked** (by
    /// [`FakeOAuth::revoke_refresh_token`] or [`FakeOAuth::revoke_all`]): a
    /// revoked token is as good as one never issued, and Zoho answers
    /// `INVALID_TOKEN` for both.
    Unknown,
}

/// A cheap, cloneable handle onto a [`FakeOAuth`]'s tokens, for another fake
/// that acts as the protected resource (the Zoho CRM fake checks
/// `Authorization: Zoho-oauthtoken …` with it). It keeps the token store
/// alive, not the server: after the [`FakeOAuth`] is dropped it still
/// answers from the tokens issued until then.
#[derive(Clone)]
pub struct TokenChecker(Arc<Inner>);

impl std::fmt::Debug for TokenChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenChecker")
            .field("base_url", &self.0.base_url)
            .finish()
    }
}

impl TokenChecker {
    /// The state of `access_token` now (exact, case-sensitive match).
    pub fn check(&self, access_token: &str) -> TokenState {
        let now = Instant::now();
        lock(&self.0.data)
            .access
            .iter()
            .find(|a| a.token == access_token)
            .map_or(TokenState::Unknown, |a| a.state(now))
    }
}

#[derive(Debug, Clone)]
struct RefreshToken {
    token: String,
    revoked: bool,
    scope: String,
}

#[derive(Debug, Default)]
struct Data {
    codes: Vec<AuthCode>,
    access: Vec<AccessToken>,
    refresh: Vec<RefreshToken>,
    records: Vec<Value>,
    next_record: u64,
    token_calls: usize,
    refresh_calls: usize,
    rotate: bool,
    deny_consent: bool,
    token_delay: Duration,
    /// The `Authorization` scheme of each protected-resource request.
    schemes: Vec<String>,
    /// `api_domain` of token answers; `None` = the fake's own base URL.
    api_domain: Option<String>,
}

impl Data {
    fn mint_access(&mut self, lifetime: Duration, refresh: Option<&str>, scope: &str) -> String {
        let token = format!("fake-at-{}{}", random_hex(), random_hex());
        self.access.push(AccessToken {
            token: token.clone(),
            expires_at: Instant::now().checked_add(lifetime),
            expired: false,
            revoked: false,
            refresh: refresh.map(str::to_owned),
            scope: scope.to_owned(),
        });
        token
    }

    fn mint_refresh(&mut self, scope: &str) -> String {
        let token = format!("fake-rt-{}{}", random_hex(), random_hex());
        self.refresh.push(RefreshToken {
            token: token.clone(),
            revoked: false,
            scope: scope.to_owned(),
        });
        token
    }

    /// Revokes a refresh token and the access tokens minted from it; `false`
    /// when the fake never issued it.
    fn revoke_refresh(&mut self, token: &str) -> bool {
        let mut known = false;
        for rt in self.refresh.iter_mut().filter(|rt| rt.token == token) {
            rt.revoked = true;
            known = true;
        }
        for at in self
            .access
            .iter_mut()
            .filter(|at| at.refresh.as_deref() == Some(token))
        {
            at.revoked = true;
        }
        known
    }
}

/// 32 random hex digits.
fn random_hex() -> String {
    let b: [u8; 16] = rand::rng().random();
    hex::encode(b)
}

struct Inner {
    config: OAuthConfig,
    base_url: String,
    data: Mutex<Data>,
}

/// A running fake OAuth 2.0 authorization server with a protected resource.
/// Dropping it stops the server.
pub struct FakeOAuth {
    server: Server,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FakeOAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeOAuth")
            .field("addr", &self.server.addr)
            .field("error_style", &self.inner.config.error_style)
            .finish()
    }
}

impl FakeOAuth {
    /// Starts the fake with one registered client.
    pub async fn start(config: OAuthConfig) -> Result<Self, FakeError> {
        let mut inner_out = None;
        let server = server::serve(|addr| {
            let inner = Arc::new(Inner {
                config,
                base_url: format!("http://{addr}"),
                data: Mutex::new(Data::default()),
            });
            inner_out = Some(inner.clone());
            Arc::new(OAuthVendor(inner))
        })
        .await?;
        let inner = inner_out.ok_or_else(|| FakeError::Invalid("server not built".into()))?;
        Ok(FakeOAuth { server, inner })
    }

    common_methods!();

    /// `http://127.0.0.1:PORT` — the accounts server, and the API domain
    /// (`api_domain` in token answers) until [`FakeOAuth::set_api_domain`].
    pub fn base_url(&self) -> String {
        self.inner.base_url.clone()
    }

    /// From now on token answers carry `"api_domain": url` instead of
    /// [`FakeOAuth::base_url`] (Zoho's accounts server returns the API host
    /// of the account's data centre: point it at a `FakeZoho`).
    pub fn set_api_domain(&self, url: &str) {
        lock(&self.inner.data).api_domain = Some(url.to_owned());
    }

    /// A handle that checks access tokens against this fake's store, for a
    /// fake API that accepts them (see [`TokenChecker`]).
    pub fn token_checker(&self) -> TokenChecker {
        TokenChecker(self.inner.clone())
    }

    /// `{base_url}/oauth/token`.
    pub fn token_url(&self) -> String {
        format!("{}{TOKEN_PATH}", self.inner.base_url)
    }

    /// `{base_url}/oauth/authorize`.
    pub fn authorize_url(&self) -> String {
        format!("{}{AUTHORIZE_PATH}", self.inner.base_url)
    }

    /// The configuration the fake was started with.
    pub fn config(&self) -> &OAuthConfig {
        &self.inner.config
    }

    /// The registered client id.
    pub fn client_id(&self) -> &str {
        &self.inner.config.client_id
    }

    /// The registered client secret.
    pub fn client_secret(&self) -> &str {
        &self.inner.config.client_secret
    }

    /// Plays the user's browser: GETs `authorization_url` (the URL the
    /// connector sent the user to) without following redirects and returns
    /// the `Location` it was redirected to — the connector's callback URL
    /// with `code` and `state` (or `error` and `state`). An answer that is
    /// not a redirect (unknown client, bad redirect URI) is an error
    /// carrying its status and body.
    pub async fn approve(&self, authorization_url: &str) -> Result<String, FakeError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()?;
        let resp = client.get(authorization_url).send().await?;
        let status = resp.status();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match location {
            Some(location) if status.is_redirection() => Ok(location),
            _ => {
                let body = resp.text().await.unwrap_or_default();
                Err(FakeError::Invalid(format!(
                    "authorization answered {status} without a redirect: {body}"
                )))
            }
        }
    }

    /// From now on the "user" refuses consent: the authorization endpoint
    /// redirects with `error=access_denied` (and `state`).
    pub fn set_deny_consent(&self, deny: bool) {
        lock(&self.inner.data).deny_consent = deny;
    }

    /// `POST` requests that reached the token endpoint's logic (any grant,
    /// any outcome).
    pub fn token_calls(&self) -> usize {
        lock(&self.inner.data).token_calls
    }

    /// Token requests with `grant_type=refresh_token` (any outcome).
    pub fn refresh_calls(&self) -> usize {
        lock(&self.inner.data).refresh_calls
    }

    /// Mints a refresh token as a "self client" / headless flow would, for
    /// pasting into a connection's settings (no scope).
    pub fn issue_refresh_token(&self) -> String {
        lock(&self.inner.data).mint_refresh("")
    }

    /// Mints a valid access token directly (no refresh token behind it),
    /// for tests of the protected resource alone.
    pub fn issue_access_token(&self) -> String {
        let lifetime = self.inner.lifetime();
        lock(&self.inner.data).mint_access(lifetime, None, "")
    }

    /// Every access token issued so far becomes invalid now (→ 401
    /// `INVALID_TOKEN`); tokens issued afterwards are valid as usual.
    pub fn expire_access_tokens(&self) {
        for at in lock(&self.inner.data).access.iter_mut() {
            at.expired = true;
        }
    }

    /// Revokes a refresh token (→ grant error on its next use) and the
    /// access tokens minted from it (→ 401). `false` when the fake never
    /// issued that token.
    pub fn revoke_refresh_token(&self, token: &str) -> bool {
        lock(&self.inner.data).revoke_refresh(token)
    }

    /// Revokes every refresh and access token issued so far (the user
    /// disconnected the app) and every unused authorization code.
    pub fn revoke_all(&self) {
        let mut d = lock(&self.inner.data);
        for rt in d.refresh.iter_mut() {
            rt.revoked = true;
        }
        for at in d.access.iter_mut() {
            at.revoked = true;
        }
        for code in d.codes.iter_mut() {
            code.used = true;
        }
    }

    /// Whether a refresh grant returns a new refresh token and revokes the
    /// one presented (default false: the same refresh token stays valid).
    pub fn set_rotate_refresh_tokens(&self, rotate: bool) {
        lock(&self.inner.data).rotate = rotate;
    }

    /// Holds every token endpoint answer for `delay` after the grant is
    /// processed (tokens are minted at once), so concurrent refreshes
    /// overlap; `Duration::ZERO` turns it off.
    pub fn set_token_delay(&self, delay: Duration) {
        lock(&self.inner.data).token_delay = delay;
    }

    /// Records created through `POST /api/records`, in order, with their `id`.
    pub fn records(&self) -> Vec<Value> {
        lock(&self.inner.data).records.clone()
    }

    /// Every access token issued, in order (valid or not).
    pub fn access_tokens_issued(&self) -> Vec<String> {
        lock(&self.inner.data)
            .access
            .iter()
            .map(|a| a.token.clone())
            .collect()
    }

    /// Every refresh token issued, in order (revoked or not).
    pub fn refresh_tokens_issued(&self) -> Vec<String> {
        lock(&self.inner.data)
            .refresh
            .iter()
            .map(|r| r.token.clone())
            .collect()
    }

    /// Every authorization code issued, in order (used or not).
    pub fn codes_issued(&self) -> Vec<String> {
        lock(&self.inner.data)
            .codes
            .iter()
            .map(|c| c.code.clone())
            .collect()
    }

    /// The `Authorization` scheme (`Bearer`, `Zoho-oauthtoken`, … as sent)
    /// of each protected-resource request that had one, in order — the
    /// request log redacts the whole header.
    pub fn auth_schemes(&self) -> Vec<String> {
        lock(&self.inner.data).schemes.clone()
    }
}

struct OAuthVendor(Arc<Inner>);

type R<T> = Result<T, Resp>;

/// The kind of a grant error, before [`ErrorStyle`] shapes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GrantError {
    InvalidRequest,
    InvalidGrant,
    RedirectMismatch,
    UnsupportedGrantType,
}

/// The grant a request asked for, for the HubSpot status names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Code,
    Refresh,
    Other,
}

fn grant_error(style: ErrorStyle, kind: GrantError, grant: Grant, description: &str) -> Resp {
    let resp = match style {
        ErrorStyle::Rfc6749 => {
            let error = match kind {
                GrantError::InvalidRequest => "invalid_request",
                GrantError::InvalidGrant | GrantError::RedirectMismatch => "invalid_grant",
                GrantError::UnsupportedGrantType => "unsupported_grant_type",
            };
            Resp::json(
                StatusCode::BAD_REQUEST,
                &json!({"error": error, "error_description": description}),
            )
        }
        ErrorStyle::Zoho => {
            let error = match kind {
                GrantError::InvalidRequest | GrantError::InvalidGrant => "invalid_code",
                GrantError::RedirectMismatch => "invalid_redirect_uri",
                GrantError::UnsupportedGrantType => "unsupported_grant_type",
            };
            Resp::json(StatusCode::OK, &json!({"error": error}))
        }
        ErrorStyle::HubSpot => {
            let status = match (kind, grant) {
                (GrantError::RedirectMismatch, _) => "BAD_REDIRECT_URI",
                (GrantError::UnsupportedGrantType, _) | (_, Grant::Other) => "BAD_GRANT_TYPE",
                (_, Grant::Refresh) => "BAD_REFRESH_TOKEN",
                (_, Grant::Code) => "BAD_AUTH_CODE",
            };
            Resp::json(
                StatusCode::BAD_REQUEST,
                &json!({
                    "status": status,
                    "message": description,
                    "correlationId": crate::util::uuid_v4(),
                }),
            )
        }
    };
    resp.with_header("cache-control", "no-store")
}

fn invalid_client(description: &str) -> Resp {
    Resp::json(
        StatusCode::UNAUTHORIZED,
        &json!({"error": "invalid_client", "error_description": description}),
    )
    .with_header("www-authenticate", "Basic realm=\"fake-oauth\"")
    .with_header("cache-control", "no-store")
}

fn invalid_token() -> Resp {
    Resp::json(
        StatusCode::UNAUTHORIZED,
        &json!({
            "code": "INVALID_TOKEN",
            "details": {},
            "message": "invalid oauth token",
            "status": "error",
        }),
    )
    .with_header("www-authenticate", "Bearer error=\"invalid_token\"")
}

fn not_found() -> Resp {
    Resp::json(
        StatusCode::NOT_FOUND,
        &json!({"code": "INVALID_URL_PATTERN", "message": "Please check if the URL trying to access is a correct one", "status": "error"}),
    )
}

fn method_not_allowed(allow: &str) -> Resp {
    Resp::json(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({"error": "invalid_request", "error_description": format!("use {allow}")}),
    )
    .with_header("allow", allow)
}

/// First non-empty value of a parameter.
fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v.as_str())
}

/// Form-decodes one value (`+` → space, `%XX`).
fn form_decode(s: &str) -> String {
    let mut out = String::new();
    for (k, v) in form_urlencoded::parse(s.as_bytes()) {
        // The value has no `=`, so it all lands in the key; `&` splits it.
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(&k);
        if !v.is_empty() {
            out.push('=');
            out.push_str(&v);
        }
    }
    out
}

/// `Authorization: Basic base64(user:password)` → the raw user and password.
fn parse_basic(header: &str) -> Option<(String, String)> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// `Authorization: <scheme> <token>` → (scheme as sent, token).
fn parse_token_header(header: &str) -> Option<(String, String)> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    let token = rest.trim();
    if token.is_empty() {
        return None;
    }
    Some((scheme.to_owned(), token.to_owned()))
}

/// `redirect_uri` (fragment dropped) with `pairs` appended to its query.
fn redirect_location(redirect_uri: &str, pairs: &[(&str, &str)]) -> String {
    let base = redirect_uri
        .split_once('#')
        .map_or(redirect_uri, |(b, _)| b);
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        ser.append_pair(k, v);
    }
    let query = ser.finish();
    let sep = if !base.contains('?') {
        "?"
    } else if base.ends_with('?') || base.ends_with('&') {
        ""
    } else {
        "&"
    };
    format!("{base}{sep}{query}")
}

fn redirect(redirect_uri: &str, pairs: &[(&str, &str)]) -> Resp {
    let location = redirect_location(redirect_uri, pairs);
    Resp::new(StatusCode::FOUND)
        .with_header("location", &location)
        .with_header("cache-control", "no-store")
}

fn is_token_path(path: &str) -> bool {
    TOKEN_PATHS.contains(&path)
}

impl Inner {
    fn lifetime(&self) -> Duration {
        Duration::from_secs(self.config.access_token_lifetime_secs)
    }

    fn token_delay(&self) -> Duration {
        lock(&self.data).token_delay
    }

    /// Answers, then holds a token answer for the configured delay. No lock
    /// is held across the `.await`.
    async fn handle_async(&self, req: &Req) -> Resp {
        let resp = self.handle(req);
        if req.method == Method::POST && is_token_path(normalize(&req.path)) {
            let delay = self.token_delay();
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
        resp
    }

    fn handle(&self, req: &Req) -> Resp {
        let path = normalize(&req.path);
        if AUTHORIZE_PATHS.contains(&path) {
            return if req.method == Method::GET {
                self.authorize(req)
            } else {
                method_not_allowed("GET")
            };
        }
        if is_token_path(path) {
            return if req.method == Method::POST {
                self.token(req)
            } else {
                method_not_allowed("POST")
            };
        }
        if path == WHOAMI_PATH || path == RECORDS_PATH {
            return match self.resource(req, path) {
                Ok(r) | Err(r) => r,
            };
        }
        not_found()
    }

    fn authorize(&self, req: &Req) -> Resp {
        let q = req.query_pairs();
        if param(&q, "client_id") != Some(self.config.client_id.as_str()) {
            return Resp::json(
                StatusCode::BAD_REQUEST,
                &json!({"error": "invalid_client", "error_description": "unknown client_id"}),
            );
        }
        let Some(redirect_uri) = param(&q, "redirect_uri") else {
            return Resp::json(
                StatusCode::BAD_REQUEST,
                &json!({"error": "invalid_request", "error_description": "redirect_uri is required"}),
            );
        };
        if !self.config.redirect_uris.is_empty()
            && !self.config.redirect_uris.iter().any(|u| u == redirect_uri)
        {
            return Resp::json(
                StatusCode::BAD_REQUEST,
                &json!({"error": "invalid_request", "error_description": "redirect_uri is not registered for this client"}),
            );
        }
        // `state` is echoed exactly, even when empty.
        let state = q
            .iter()
            .find(|(k, _)| k == "state")
            .map(|(_, v)| v.as_str());
        let fail = |error: &str, description: &str| {
            let mut pairs = vec![("error", error), ("error_description", description)];
            if let Some(s) = state {
                pairs.push(("state", s));
            }
            redirect(redirect_uri, &pairs)
        };

        let mut d = lock(&self.data);
        if d.deny_consent {
            return fail("access_denied", "the user denied access");
        }
        if param(&q, "response_type") != Some("code") {
            return fail("unsupported_response_type", "response_type must be code");
        }
        let challenge = param(&q, "code_challenge");
        match challenge {
            Some(ch) => {
                if param(&q, "code_challenge_method") != Some("S256") {
                    return fail("invalid_request", "code_challenge_method must be S256");
                }
                if !(43..=128).contains(&ch.len()) {
                    return fail(
                        "invalid_request",
                        "code_challenge must be 43 to 128 characters",
                    );
                }
            }
            None if self.config.pkce => {
                return fail("invalid_request", "code_challenge is required");
            }
            None => {}
        }

        let code = format!("fake-code-{}", random_hex());
        d.codes.push(AuthCode {
            code: code.clone(),
            redirect_uri: redirect_uri.to_owned(),
            challenge: challenge.map(str::to_owned),
            scope: param(&q, "scope").unwrap_or_default().to_owned(),
            used: false,
            expires_at: Instant::now().checked_add(CODE_LIFETIME),
        });
        drop(d);

        let mut pairs: Vec<(&str, &str)> = vec![("code", code.as_str())];
        if let Some(s) = state {
            pairs.push(("state", s));
        }
        if self.config.error_style == ErrorStyle::Zoho {
            pairs.push(("location", "us"));
            pairs.push(("accounts-server", self.base_url.as_str()));
        }
        redirect(redirect_uri, &pairs)
    }

    fn token(&self, req: &Req) -> Resp {
        let style = self.config.error_style;
        let mut d = lock(&self.data);
        d.token_calls += 1;

        let mut params = req.query_pairs();
        if !req.body.is_empty() {
            let is_form = req.header("content-type").is_some_and(|c| {
                c.trim()
                    .to_ascii_lowercase()
                    .starts_with("application/x-www-form-urlencoded")
            });
            if !is_form {
                return grant_error(
                    style,
                    GrantError::InvalidRequest,
                    Grant::Other,
                    "the body must be application/x-www-form-urlencoded",
                );
            }
            // Body parameters first: `param` takes the first non-empty one.
            let mut body = req.form_pairs();
            body.extend(params);
            params = body;
        }

        let grant = match param(&params, "grant_type") {
            Some("authorization_code") => Grant::Code,
            Some("refresh_token") => Grant::Refresh,
            _ => Grant::Other,
        };
        if grant == Grant::Refresh {
            d.refresh_calls += 1;
        }
        if let Err(r) = self.client_auth(req, &params) {
            return r;
        }
        let result = match grant {
            Grant::Code => self.code_grant(&mut d, &params),
            Grant::Refresh => self.refresh_grant(&mut d, &params),
            Grant::Other => Err(match param(&params, "grant_type") {
                None => grant_error(
                    style,
                    GrantError::InvalidRequest,
                    Grant::Other,
                    "grant_type is required",
                ),
                Some(other) => grant_error(
                    style,
                    GrantError::UnsupportedGrantType,
                    Grant::Other,
                    &format!("unsupported grant_type: {other}"),
                ),
            }),
        };
        match result {
            Ok(r) | Err(r) => r,
        }
    }

    /// Client authentication: HTTP Basic, else the form's `client_id` and
    /// `client_secret`.
    fn client_auth(&self, req: &Req, params: &[(String, String)]) -> R<()> {
        let matches = |raw: &str, expected: &str| raw == expected || form_decode(raw) == expected;
        let (id, secret) = match req.header("authorization").and_then(parse_basic) {
            Some((id, secret)) => (id, secret),
            None => (
                param(params, "client_id").unwrap_or_default().to_owned(),
                param(params, "client_secret")
                    .unwrap_or_default()
                    .to_owned(),
            ),
        };
        if id.is_empty() {
            return Err(invalid_client("client authentication is required"));
        }
        if !matches(&id, &self.config.client_id) {
            return Err(invalid_client("unknown client_id"));
        }
        if secret.is_empty() || !matches(&secret, &self.config.client_secret) {
            return Err(invalid_client("client authentication failed"));
        }
        Ok(())
    }

    fn code_grant(&self, d: &mut Data, params: &[(String, String)]) -> R<Resp> {
        let style = self.config.error_style;
        let bad = |kind: GrantError, description: &str| {
            grant_error(style, kind, Grant::Code, description)
        };
        let code = param(params, "code")
            .ok_or_else(|| bad(GrantError::InvalidRequest, "code is required"))?;
        let now = Instant::now();
        let entry = d
            .codes
            .iter_mut()
            .find(|c| c.code == code)
            .ok_or_else(|| bad(GrantError::InvalidGrant, "invalid authorization code"))?;
        if entry.used {
            return Err(bad(
                GrantError::InvalidGrant,
                "authorization code was already used",
            ));
        }
        // Single-use: consumed by this attempt whatever happens next.
        entry.used = true;
        if entry.expires_at.is_some_and(|e| now >= e) {
            return Err(bad(GrantError::InvalidGrant, "authorization code expired"));
        }
        if param(params, "redirect_uri") != Some(entry.redirect_uri.as_str()) {
            return Err(bad(
                GrantError::RedirectMismatch,
                "redirect_uri does not match the authorization request",
            ));
        }
        if let Some(challenge) = entry.challenge.as_deref() {
            let verifier = param(params, "code_verifier")
                .ok_or_else(|| bad(GrantError::InvalidGrant, "code_verifier is required"))?;
            if !(43..=128).contains(&verifier.len()) || s256_challenge(verifier) != challenge {
                return Err(bad(
                    GrantError::InvalidGrant,
                    "code_verifier does not match the code_challenge",
                ));
            }
        }
        let scope = entry.scope.clone();
        let refresh = d.mint_refresh(&scope);
        let access = d.mint_access(self.lifetime(), Some(refresh.as_str()), &scope);
        Ok(self.token_response(d, &access, Some(refresh.as_str()), &scope))
    }

    fn refresh_grant(&self, d: &mut Data, params: &[(String, String)]) -> R<Resp> {
        let style = self.config.error_style;
        let bad = |kind: GrantError| {
            grant_error(
                style,
                kind,
                Grant::Refresh,
                "missing or invalid refresh token",
            )
        };
        let presented = param(params, "refresh_token")
            .ok_or_else(|| bad(GrantError::InvalidRequest))?
            .to_owned();
        let scope = d
            .refresh
            .iter()
            .find(|rt| rt.token == presented && !rt.revoked)
            .map(|rt| rt.scope.clone())
            .ok_or_else(|| bad(GrantError::InvalidGrant))?;
        if d.rotate {
            // The old refresh token dies, its access tokens stay valid until
            // they expire (they were legitimately issued).
            for rt in d.refresh.iter_mut().filter(|rt| rt.token == presented) {
                rt.revoked = true;
            }
            let next = d.mint_refresh(&scope);
            let access = d.mint_access(self.lifetime(), Some(next.as_str()), &scope);
            Ok(self.token_response(d, &access, Some(next.as_str()), &scope))
        } else {
            let access = d.mint_access(self.lifetime(), Some(presented.as_str()), &scope);
            Ok(self.token_response(d, &access, None, &scope))
        }
    }

    fn token_response(&self, d: &Data, access: &str, refresh: Option<&str>, scope: &str) -> Resp {
        let mut body = Map::new();
        body.insert("access_token".into(), Value::from(access));
        if let Some(rt) = refresh {
            body.insert("refresh_token".into(), Value::from(rt));
        }
        body.insert(
            "expires_in".into(),
            Value::from(self.config.access_token_lifetime_secs),
        );
        body.insert("token_type".into(), Value::from("Bearer"));
        let api_domain = d.api_domain.as_deref().unwrap_or(self.base_url.as_str());
        body.insert("api_domain".into(), Value::from(api_domain));
        if !scope.is_empty() {
            body.insert("scope".into(), Value::from(scope));
        }
        Resp::json(StatusCode::OK, &Value::Object(body))
            .with_header("cache-control", "no-store")
            .with_header("pragma", "no-cache")
    }

    /// The protected resource: token check, then the endpoint.
    fn resource(&self, req: &Req, path: &str) -> R<Resp> {
        let mut d = lock(&self.data);
        let parsed = req.header("authorization").and_then(parse_token_header);
        if let Some((scheme, _)) = &parsed {
            d.schemes.push(scheme.clone());
        }
        let (scheme, token) = parsed.ok_or_else(invalid_token)?;
        if !scheme.eq_ignore_ascii_case("bearer") && !scheme.eq_ignore_ascii_case("zoho-oauthtoken")
        {
            return Err(invalid_token());
        }
        let now = Instant::now();
        let scope = d
            .access
            .iter()
            .find(|a| a.token == token && a.valid(now))
            .map(|a| a.scope.clone())
            .ok_or_else(invalid_token)?;

        match (&req.method, path) {
            (&Method::GET, WHOAMI_PATH) => Ok(Resp::json(
                StatusCode::OK,
                &json!({
                    "client_id": self.config.client_id,
                    "scope": scope,
                    "user": {"id": "1000000000001", "email": USER_EMAIL},
                }),
            )),
            (&Method::GET, RECORDS_PATH) => Ok(Resp::json(
                StatusCode::OK,
                &json!({"data": d.records.clone()}),
            )),
            (&Method::POST, RECORDS_PATH) => {
                let invalid = |message: &str| {
                    Resp::json(
                        StatusCode::BAD_REQUEST,
                        &json!({"code": "INVALID_DATA", "details": {}, "message": message, "status": "error"}),
                    )
                };
                let body: Value = serde_json::from_slice(&req.body)
                    .map_err(|_| invalid("the body is not valid JSON"))?;
                let Value::Object(fields) = body else {
                    return Err(invalid("the body must be a JSON object"));
                };
                d.next_record += 1;
                let id = (4_000_000_000_000u64 + d.next_record).to_string();
                let mut record = Map::new();
                record.insert("id".into(), Value::String(id));
                for (k, v) in fields {
                    if k != "id" {
                        record.insert(k, v);
                    }
                }
                let record = Value::Object(record);
                d.records.push(record.clone());
                Ok(Resp::json(StatusCode::CREATED, &record))
            }
            (_, WHOAMI_PATH) => Err(method_not_allowed("GET")),
            _ => Err(method_not_allowed("GET, POST")),
        }
    }
}

/// The path without a trailing `/` (but `/` stays `/`).
fn normalize(path: &str) -> &str {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() { "/" } else { trimmed }
}

impl Vendor for OAuthVendor {
    fn secret_headers(&self) -> &'static [&'static str] {
        &["authorization"]
    }

    fn secret_params(&self) -> &'static [&'static str] {
        &[
            "refresh_token",
            "client_secret",
            "code",
            "code_verifier",
            "access_token",
        ]
    }

    fn fault_response(&self, fault: &Fault, req: &Req) -> Resp {
        let api = req.path.starts_with("/api/");
        match fault {
            Fault::TooManyRequests => {
                let body = if api {
                    json!({"code": "TOO_MANY_REQUESTS", "details": {}, "message": "too many requests", "status": "error"})
                } else {
                    json!({"error": "too_many_requests", "error_description": "too many requests, try again later"})
                };
                Resp::json(StatusCode::TOO_MANY_REQUESTS, &body).with_header("retry-after", "1")
            }
            _ => {
                let body = if api {
                    json!({"code": "INTERNAL_ERROR", "details": {}, "message": "internal error", "status": "error"})
                } else {
                    json!({"error": "server_error", "error_description": "internal error"})
                };
                Resp::json(StatusCode::INTERNAL_SERVER_ERROR, &body)
            }
        }
    }

    /// Not used by the server (it calls [`Vendor::handle_async`]); answers
    /// without the token delay.
    fn handle(&self, req: &Req) -> Resp {
        self.0.handle(req)
    }

    fn handle_async<'a>(&'a self, req: &'a Req) -> BoxFuture<'a, Resp> {
        Box::pin(self.0.handle_async(req))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    /// Distinctive, so finding it in the log means a leak (the name
    /// `client_secret` itself is logged).
    const SECRET: &str = "s3cr3t-Zq9-value";

    fn query_of(url: &str, name: &str) -> Option<String> {
        let (_, q) = url.split_once('?')?;
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    async fn code_flow(fake: &FakeOAuth, pkce: bool) -> Value {
        let mut url = url::Url::parse(&fake.authorize_url()).unwrap();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", "cid")
            .append_pair("redirect_uri", "http://localhost/cb?x=1")
            .append_pair("state", "s t&ate")
            .append_pair("scope", "records.read");
        if pkce {
            url.query_pairs_mut()
                .append_pair("code_challenge", &s256_challenge(VERIFIER))
                .append_pair("code_challenge_method", "S256");
        }
        let location = fake.approve(url.as_str()).await.unwrap();
        assert!(
            location.starts_with("http://localhost/cb?x=1&"),
            "{location}"
        );
        assert_eq!(query_of(&location, "state").as_deref(), Some("s t&ate"));
        let code = query_of(&location, "code").unwrap();
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", "http://localhost/cb?x=1"),
            ("client_id", "cid"),
            ("client_secret", SECRET),
        ];
        if pkce {
            form.push(("code_verifier", VERIFIER));
        }
        let resp = reqwest::Client::new()
            .post(fake.token_url())
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        resp.json().await.unwrap()
    }

    #[test]
    fn rfc7636_example_challenge() {
        assert_eq!(
            s256_challenge(VERIFIER),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[tokio::test]
    async fn code_refresh_resource_and_redaction() {
        let fake = FakeOAuth::start(OAuthConfig::new("cid", SECRET).with_pkce(true))
            .await
            .unwrap();
        let tokens = code_flow(&fake, true).await;
        let access = tokens["access_token"].as_str().unwrap().to_owned();
        let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
        assert_eq!(tokens["api_domain"], json!(fake.base_url()));
        assert_eq!(tokens["token_type"], json!("Bearer"));

        let client = reqwest::Client::new();
        let created = client
            .post(format!("{}{RECORDS_PATH}", fake.base_url()))
            .header("authorization", format!("Zoho-oauthtoken {access}"))
            .json(&json!({"name": "Acme"}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status().as_u16(), 201);
        assert_eq!(fake.records().len(), 1);

        fake.expire_access_tokens();
        let denied = client
            .get(format!("{}{WHOAMI_PATH}", fake.base_url()))
            .bearer_auth(&access)
            .send()
            .await
            .unwrap();
        assert_eq!(denied.status().as_u16(), 401);

        let refreshed: Value = client
            .post(fake.token_url())
            .basic_auth("cid", Some(SECRET))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh.as_str()),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(refreshed.get("refresh_token").is_none());
        let access2 = refreshed["access_token"].as_str().unwrap().to_owned();
        let ok = client
            .get(format!("{}{WHOAMI_PATH}", fake.base_url()))
            .bearer_auth(&access2)
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status().as_u16(), 200);
        assert_eq!(fake.token_calls(), 2);
        assert_eq!(fake.refresh_calls(), 1);
        assert_eq!(
            fake.auth_schemes(),
            vec!["Zoho-oauthtoken", "Bearer", "Bearer"]
        );

        let log = format!("{:?}", fake.requests());
        for secret in [
            access,
            access2,
            refresh,
            SECRET.to_owned(),
            VERIFIER.to_owned(),
        ] {
            assert!(!log.contains(&secret), "{secret} leaked into {log}");
        }
        for code in fake.codes_issued() {
            assert!(!log.contains(&code));
        }

        assert!(fake.revoke_refresh_token(&fake.refresh_tokens_issued()[0]));
        let revoked = client
            .post(fake.token_url())
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", fake.refresh_tokens_issued()[0].as_str()),
                ("client_id", "cid"),
                ("client_secret", SECRET),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(revoked.status().as_u16(), 400);
        let body: Value = revoked.json().await.unwrap();
        assert_eq!(body["error"], json!("invalid_grant"));
    }

    #[tokio::test]
    async fn zoho_style_errors_are_200_and_bad_secret_is_401() {
        let fake = FakeOAuth::start(OAuthConfig::zoho("cid", SECRET))
            .await
            .unwrap();
        let client = reqwest::Client::new();
        let resp = client
            .post(fake.token_url())
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", "nope"),
                ("client_id", "cid"),
                ("client_secret", SECRET),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body, json!({"error": "invalid_code"}));

        let resp = client
            .post(fake.token_url())
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", fake.issue_refresh_token().as_str()),
                ("client_id", "cid"),
                ("client_secret", "wrong"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401);
    }

    #[tokio::test]
    async fn api_domain_can_point_elsewhere() {
        let fake = FakeOAuth::start(OAuthConfig::zoho("cid", SECRET))
            .await
            .unwrap();
        let refresh = fake.issue_refresh_token();
        let grant = || async {
            reqwest::Client::new()
                .post(format!("{}/oauth/v2/token", fake.base_url()))
                .query(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh.as_str()),
                    ("client_id", "cid"),
                    ("client_secret", SECRET),
                ])
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        };
        assert_eq!(grant().await["api_domain"], json!(fake.base_url()));
        fake.set_api_domain("http://127.0.0.1:9/zoho-api");
        let body = grant().await;
        assert_eq!(body["api_domain"], json!("http://127.0.0.1:9/zoho-api"));
        assert!(body["access_token"].is_string());
    }

    #[tokio::test]
    async fn token_checker_sees_valid_expired_unknown_and_revoked() {
        let fake = FakeOAuth::start(OAuthConfig::zoho("cid", SECRET))
            .await
            .unwrap();
        let checker = fake.token_checker();
        let direct = fake.issue_access_token();
        assert_eq!(checker.check(&direct), TokenState::Valid);
        assert_eq!(checker.check("fake-at-never-issued"), TokenState::Unknown);
        assert_eq!(checker.check(""), TokenState::Unknown);

        fake.expire_access_tokens();
        assert_eq!(checker.clone().check(&direct), TokenState::Expired);

        // A token minted from a refresh token dies with it: Unknown.
        let refresh = fake.issue_refresh_token();
        let body: Value = reqwest::Client::new()
            .post(fake.token_url())
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh.as_str()),
                ("client_id", "cid"),
                ("client_secret", SECRET),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let minted = body["access_token"].as_str().unwrap().to_owned();
        assert_eq!(checker.check(&minted), TokenState::Valid);
        assert!(fake.revoke_refresh_token(&refresh));
        assert_eq!(checker.check(&minted), TokenState::Unknown);

        // Lifetime 0: expired as soon as issued.
        let short = FakeOAuth::start(OAuthConfig::new("c", "s").with_access_token_lifetime(0))
            .await
            .unwrap();
        let token = short.issue_access_token();
        assert_eq!(short.token_checker().check(&token), TokenState::Expired);
    }
}
