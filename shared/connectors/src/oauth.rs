//! OAuth 2.0 for vendors that need it (Zoho CRM, HubSpot): what a vendor
//! declares ([`OAuthApp`]), the token endpoint calls (authorization code and
//! refresh, RFC 6749 §4.1 and §6), and how a connector sends a request with
//! an access token that may have to be refreshed ([`send_authorized`]).
//!
//! Keeping tokens fresh is the engine's job, behind [`AccessTokens`] in the
//! call context: it holds them sealed in the store and makes sure two
//! workers refreshing at once make one refresh. A connector only asks for a
//! token, and says when the vendor refused one.
//!
//! Token endpoints disagree on how they refuse: RFC 6749 says HTTP 400 with
//! `{"error": "invalid_grant"}`; Zoho answers HTTP 200 with
//! `{"error": "invalid_code"}`; HubSpot HTTP 400 with
//! `{"status": "BAD_REFRESH_TOKEN", "message": …}`. Any answer without an
//! access token whose status is not 5xx/429 is taken as a refusal, whatever
//! its shape: the grant will not start working by itself, a person must
//! authorize again.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::client::{Idempotency, VendorPolicy, VendorRequest, VendorResponse};
use crate::{ActionError, CallContext, VendorClient, VendorError};

/// Where a connection's authorization server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthEndpoints {
    /// Where the user is sent to consent.
    pub authorize_url: String,
    /// Where codes and refresh tokens are exchanged.
    pub token_url: String,
}

/// A vendor that authenticates with OAuth 2.0 (a capability).
pub trait OAuthApp: Send + Sync {
    /// The endpoints for a connection: the vendor's, or per settings (Zoho
    /// has one accounts server per data centre; tests point at a fake).
    /// Refused outside the vendor's domains unless `allow_any_base_url`.
    fn endpoints(
        &self,
        settings: &Value,
        allow_any_base_url: bool,
    ) -> Result<OAuthEndpoints, ActionError>;

    /// The scopes asked for at consent.
    fn scopes(&self) -> Vec<String>;

    /// Whether the authorization server takes PKCE (S256).
    fn pkce(&self) -> bool {
        true
    }

    /// Extra query parameters of the consent URL (Zoho:
    /// `access_type=offline` for a refresh token).
    fn authorize_params(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// The access token's header value (`Bearer …`; Zoho:
    /// `Zoho-oauthtoken …`).
    fn authorization(&self, access_token: &str) -> String {
        format!("Bearer {access_token}")
    }

    /// Whether an answer says the access token itself was refused (so a
    /// fresh one may help), as opposed to a 401 for a missing scope, which
    /// a refresh cannot cure and which would burn the refresh token's
    /// quota (Zoho: 10 access tokens per 10 minutes).
    fn token_refused(&self, response: &VendorResponse) -> bool {
        response.status == 401
    }
}

/// Access tokens of one connection, kept fresh by the engine.
#[async_trait]
pub trait AccessTokens: Send + Sync {
    /// A token valid for a while yet (refreshed first if it is about to
    /// expire).
    async fn access_token(&self) -> Result<String, ActionError>;

    /// The vendor answered 401 to `rejected`: a fresh token (refreshed
    /// once, however many requests saw the same 401).
    async fn after_rejection(&self, rejected: &str) -> Result<String, ActionError>;

    /// The API domain the last grant named (Zoho's `api_domain`), known
    /// once a token was asked for.
    fn api_domain(&self) -> Option<String> {
        None
    }
}

/// What a token endpoint granted.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenGrant {
    pub access_token: String,
    /// Sent with a code; on refresh only by servers that rotate them.
    pub refresh_token: Option<String>,
    pub expires_in_secs: Option<i64>,
    /// Where this grant's API calls go, when the server says (Zoho's
    /// `api_domain`: the data centre the account lives in).
    pub api_domain: Option<String>,
}

impl std::fmt::Debug for TokenGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenGrant")
            .field("expires_in_secs", &self.expires_in_secs)
            .finish_non_exhaustive()
    }
}

/// Why a token call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TokenError {
    /// The grant is refused for good (revoked, expired, wrong client): a
    /// person must authorize the connection again.
    #[error("the authorization server refused the grant: {0}")]
    Refused(String),
    /// The server could not be reached or failed: try again later.
    #[error(transparent)]
    Unavailable(VendorError),
}

/// The client's identity at the authorization server.
#[derive(Clone)]
pub struct OAuthClient<'a> {
    pub client_id: &'a str,
    pub client_secret: &'a str,
}

impl std::fmt::Debug for OAuthClient<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClient")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

fn token_policy() -> VendorPolicy {
    let mut policy = VendorPolicy::new("oauth", 10, Duration::from_secs(1), 2);
    policy.timeout = Duration::from_secs(15);
    policy.max_attempts = 3;
    policy
}

/// Exchanges an authorization code (with the PKCE verifier, if one was
/// sent with the consent URL).
pub async fn exchange_code(
    http: &VendorClient,
    connection: &str,
    endpoints: &OAuthEndpoints,
    client: &OAuthClient<'_>,
    code: &str,
    redirect_uri: &str,
    verifier: Option<&str>,
) -> Result<TokenGrant, TokenError> {
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri),
        ("client_id", client.client_id),
        ("client_secret", client.client_secret),
    ];
    if let Some(verifier) = verifier {
        form.push(("code_verifier", verifier));
    }
    let secrets = [code, client.client_secret, verifier.unwrap_or(code)];
    token_call(http, connection, endpoints, &form, &secrets).await
}

/// Asks for a new access token with a refresh token.
pub async fn refresh(
    http: &VendorClient,
    connection: &str,
    endpoints: &OAuthEndpoints,
    client: &OAuthClient<'_>,
    refresh_token: &str,
) -> Result<TokenGrant, TokenError> {
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("client_id", client.client_id),
        ("client_secret", client.client_secret),
    ];
    let secrets = [refresh_token, client.client_secret];
    token_call(http, connection, endpoints, &form, &secrets).await
}

async fn token_call(
    http: &VendorClient,
    connection: &str,
    endpoints: &OAuthEndpoints,
    form: &[(&str, &str)],
    secrets: &[&str],
) -> Result<TokenGrant, TokenError> {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    // A refresh the server may have acted on is not resent blindly: a
    // server that rotates refresh tokens would have revoked the one we
    // hold. The caller retries later instead.
    let request = VendorRequest::with_body(
        reqwest::Method::POST,
        endpoints.token_url.clone(),
        body.into_bytes(),
        Idempotency::NotIdempotent,
    )
    .header("content-type", "application/x-www-form-urlencoded")
    .header("accept", "application/json");
    let response = http
        .send(connection, &token_policy(), &request, secrets)
        .await
        .map_err(TokenError::Unavailable)?;
    read_grant(&response, secrets)
}

/// Reads a token endpoint's answer, whichever way it refuses.
fn read_grant(response: &VendorResponse, secrets: &[&str]) -> Result<TokenGrant, TokenError> {
    let body = response.json().unwrap_or(Value::Null);
    if response.status >= 500 || response.status == 429 {
        return Err(TokenError::Unavailable(VendorError::Status {
            vendor: "oauth",
            status: response.status,
            attempts: response.attempts,
            body: crate::client::redact(&truncated(&response.text()), secrets),
        }));
    }
    let access = body["access_token"].as_str().filter(|t| !t.is_empty());
    match access {
        Some(access) if response.is_success() && body.get("error").is_none() => Ok(TokenGrant {
            access_token: access.to_owned(),
            refresh_token: body["refresh_token"]
                .as_str()
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
            expires_in_secs: body["expires_in"]
                .as_i64()
                .or_else(|| body["expires_in"].as_str().and_then(|s| s.parse().ok())),
            api_domain: body["api_domain"]
                .as_str()
                .filter(|d| !d.is_empty())
                .map(|d| d.trim_end_matches('/').to_owned()),
        }),
        _ => {
            let reason = ["error_description", "error", "message", "status"]
                .iter()
                .find_map(|name| body[*name].as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| format!("HTTP {} without an access token", response.status));
            let reason = crate::client::redact(&truncated(&reason), secrets);
            // A server that is throttling token calls (Zoho: "Access
            // Denied … too many requests"; RFC 6749's
            // `temporarily_unavailable`) has not revoked anything.
            let throttled = [&body["error"], &body["error_description"], &body["message"]]
                .iter()
                .filter_map(|v| v.as_str())
                .any(|text| {
                    let text = text.to_ascii_lowercase();
                    text.contains("too many requests")
                        || text.contains("access denied")
                        || text == "temporarily_unavailable"
                        || text == "slow_down"
                });
            if throttled {
                return Err(TokenError::Unavailable(VendorError::Status {
                    vendor: "oauth",
                    status: 429,
                    attempts: response.attempts,
                    body: reason,
                }));
            }
            Err(TokenError::Refused(reason))
        }
    }
}

fn truncated(text: &str) -> String {
    text.chars().take(300).collect()
}

/// A PKCE pair (RFC 7636, S256): the verifier kept by us, the challenge
/// sent in the consent URL.
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Sends a request built around an access token; on a 401 the token is
/// refreshed once and the same request sent once more.
pub async fn send_authorized(
    ctx: &CallContext<'_>,
    app: &dyn OAuthApp,
    policy: &VendorPolicy,
    build: impl Fn(&str) -> VendorRequest + Send + Sync,
) -> Result<VendorResponse, ActionError> {
    let tokens = ctx.tokens.ok_or_else(|| {
        ActionError::Config("this connection has no OAuth tokens: authorize it first".into())
    })?;
    let token = tokens.access_token().await?;
    let header = app.authorization(&token);
    let request = build(&header);
    let response = ctx
        .http
        .send(ctx.connection, policy, &request, &[&token])
        .await?;
    if !app.token_refused(&response) {
        return Ok(response);
    }
    let fresh = tokens.after_rejection(&token).await?;
    let header = app.authorization(&fresh);
    Ok(ctx
        .http
        .send(ctx.connection, policy, &build(&header), &[&fresh, &token])
        .await?)
}

/// Why a run fails when its connection's grant was refused: not transient,
/// so it is not retried until someone authorizes the connection again.
pub fn reauthorization_needed(reason: &str) -> ActionError {
    ActionError::Config(format!("{REAUTHORIZATION_NEEDED}: {reason}"))
}

/// The connection health shown when the grant was refused.
pub const REAUTHORIZATION_NEEDED: &str = "reauthorization needed";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn answer(status: u16, body: &str) -> VendorResponse {
        VendorResponse {
            status,
            headers: Default::default(),
            body: body.as_bytes().to_vec(),
            attempts: 1,
        }
    }

    #[test]
    fn every_documented_refusal_shape_is_a_refusal() {
        for (status, body) in [
            (
                400,
                r#"{"error":"invalid_grant","error_description":"revoked"}"#,
            ),
            (200, r#"{"error":"invalid_code"}"#),
            (
                400,
                r#"{"status":"BAD_REFRESH_TOKEN","message":"missing or invalid refresh token"}"#,
            ),
            (401, r#"{"error":"invalid_client"}"#),
            (200, r#"{"token_type":"Bearer"}"#),
            (403, "<html>denied</html>"),
        ] {
            let err = read_grant(&answer(status, body), &[]).unwrap_err();
            assert!(
                matches!(err, TokenError::Refused(_)),
                "{status} {body}: {err:?}"
            );
        }
        for status in [500, 502, 429] {
            let err = read_grant(&answer(status, "{}"), &[]).unwrap_err();
            assert!(matches!(err, TokenError::Unavailable(_)), "{status}");
        }
        // Throttled token calls are not a revoked grant.
        for body in [
            r#"{"error":"Access Denied","error_description":"You have made too many requests continuously. Please try again after some time."}"#,
            r#"{"error":"temporarily_unavailable"}"#,
        ] {
            let err = read_grant(&answer(400, body), &[]).unwrap_err();
            assert!(matches!(err, TokenError::Unavailable(_)), "{body}: {err:?}");
        }
    }

    #[test]
    fn a_grant_is_read_and_never_printed() {
        let grant = read_grant(
            &answer(
                200,
                r#"{"access_token":"at-secret-1","refresh_token":"rt-secret-1","expires_in":"3600","token_type":"Bearer"}"#,
            ),
            &[],
        )
        .unwrap();
        assert_eq!(grant.access_token, "at-secret-1");
        assert_eq!(grant.refresh_token.as_deref(), Some("rt-secret-1"));
        assert_eq!(grant.expires_in_secs, Some(3600));
        let printed = format!("{grant:?}");
        assert!(!printed.contains("secret"), "{printed}");
    }

    #[test]
    fn a_refusal_that_echoes_the_token_is_redacted() {
        let err = read_grant(
            &answer(
                400,
                r#"{"error":"invalid_grant","error_description":"token rt-9 is revoked"}"#,
            ),
            &["rt-9"],
        )
        .unwrap_err();
        assert!(!err.to_string().contains("rt-9"), "{err}");
    }

    #[test]
    fn the_pkce_challenge_is_rfc_7636s() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
