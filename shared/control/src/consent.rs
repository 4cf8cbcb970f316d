//! OAuth 2.0 consent: the authorization URL (with a `state` bound to the
//! tenant and connection, and PKCE where the vendor takes it) and the
//! callback that checks and consumes the state, exchanges the code and
//! stores the tokens. A wrong, expired or replayed state is refused before
//! anything is saved. Keeping tokens fresh is the pipeline's side
//! (`crmbridge_engine::oauth`).

use chrono::{DateTime, Utc};
use crmbridge_connectors::oauth::{self as vendor_oauth, TokenError};
use crmbridge_engine::oauth::client_of;
use crmbridge_engine::records::{AlertCause, ConnectionRecord, Role};
use crmbridge_engine::{Engine, EngineError, EngineResult, item, keys, random_secret};
use crmbridge_store::StoreError;
use serde::{Deserialize, Serialize};

use crate::admin::{AdminInternal as _, Principal};

/// How long a consent link stays usable.
const STATE_TTL_SECS: i64 = 600;

/// A pending consent (`OAUTHSTATE#{sha256(state)}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ConsentRecord {
    tenant: String,
    connection: String,
    redirect_uri: String,
    /// Sealed PKCE verifier (empty when the vendor takes no PKCE).
    verifier: String,
    expires_at: DateTime<Utc>,
    #[serde(default)]
    used: bool,
}

/// Where to send the user to consent.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuthorizationStart {
    pub authorization_url: String,
    pub expires_at: DateTime<Utc>,
}

/// A connection whose consent was completed.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Authorized {
    pub connection: String,
    pub tenant: String,
}

fn state_aad(state_hash: &str) -> String {
    format!("crmbridge:oauth-state:{state_hash}")
}

/// What the admin API does here (implemented by [`Engine`]; import
/// `crmbridge_control::prelude::*`).
pub trait Consent {
    /// Starts consent for an OAuth connection: the URL to send the user
    /// to, with a `state` bound to this tenant and connection.
    async fn start_authorization(
        &self,
        who: &Principal,
        id: &str,
        redirect_uri: &str,
    ) -> EngineResult<AuthorizationStart>;

    /// Finishes consent: checks and consumes the `state`, exchanges the
    /// code and stores the tokens. A wrong, expired or replayed state, or
    /// a code the server refuses, changes nothing.
    async fn complete_authorization(&self, state: &str, code: &str) -> EngineResult<Authorized>;
}

impl Consent for Engine {
    async fn start_authorization(
        &self,
        who: &Principal,
        id: &str,
        redirect_uri: &str,
    ) -> EngineResult<AuthorizationStart> {
        who.require_role(Role::Admin, "authorize connections")?;
        let record = self.own_connection(who, id).await?;
        let Some(app) = self.oauth_app(&record.app) else {
            return Err(EngineError::bad_request(
                "id",
                format!("{} connections do not sign in with OAuth", record.app),
            ));
        };
        let secrets = self.open_secrets(&record)?;
        let client = client_of(&secrets)
            .map_err(|err| EngineError::bad_request("credentials", err.to_string()))?;
        let endpoints = self.oauth_endpoints(app.as_ref(), &record)?;
        let state = random_secret();
        let state_hash = crmbridge_engine::sha256_hex(&state);
        let verifier = if app.pkce() {
            random_secret() + &random_secret()
        } else {
            String::new()
        };
        let expires_at = self.now() + chrono::Duration::seconds(STATE_TTL_SECS);
        let consent = ConsentRecord {
            tenant: who.tenant.clone(),
            connection: record.id.clone(),
            redirect_uri: redirect_uri.to_owned(),
            verifier: self
                .keyring()
                .seal(verifier.as_bytes(), state_aad(&state_hash).as_bytes()),
            expires_at,
            used: false,
        };
        self.store()
            .put(
                item(keys::oauth_state(&state_hash), &consent)?.expiring_at(expires_at.timestamp()),
            )
            .await?;
        let mut url = url::Url::parse(&endpoints.authorize_url).map_err(|err| {
            EngineError::bad_request("settings", format!("authorization URL: {err}"))
        })?;
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("response_type", "code")
                .append_pair("client_id", client.client_id)
                .append_pair("redirect_uri", redirect_uri)
                .append_pair("scope", &app.scopes().join(" "))
                .append_pair("state", &state);
            if app.pkce() {
                query
                    .append_pair("code_challenge", &vendor_oauth::pkce_challenge(&verifier))
                    .append_pair("code_challenge_method", "S256");
            }
            for (name, value) in app.authorize_params() {
                query.append_pair(&name, &value);
            }
        }
        tracing::info!(tenant = %who.tenant, connection = %id, "authorization started");
        Ok(AuthorizationStart {
            authorization_url: url.to_string(),
            expires_at,
        })
    }

    async fn complete_authorization(&self, state: &str, code: &str) -> EngineResult<Authorized> {
        let unknown = || {
            EngineError::bad_request(
                "state",
                "unknown, expired or already used: start the authorization again",
            )
        };
        if state.is_empty() || state.len() > 200 {
            return Err(unknown());
        }
        if code.is_empty() || code.len() > 4096 {
            return Err(EngineError::bad_request("code", "missing or too long"));
        }
        let state_hash = crmbridge_engine::sha256_hex(state);
        let key = keys::oauth_state(&state_hash);
        let Some((mut consent, version)) = self.read::<ConsentRecord>(&key).await? else {
            return Err(unknown());
        };
        if consent.used || consent.expires_at <= self.now() {
            return Err(unknown());
        }
        // Consumed before the exchange: of two callbacks with the same
        // state, one goes on.
        consent.used = true;
        match self
            .store()
            .update_if_version(
                item(key.clone(), &consent)?.expiring_at(consent.expires_at.timestamp()),
                version,
            )
            .await
        {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => return Err(unknown()),
            Err(err) => return Err(err.into()),
        }
        let record = match self
            .read::<ConnectionRecord>(&keys::connection(&consent.connection))
            .await?
        {
            Some((record, _)) if record.tenant == consent.tenant => record,
            _ => return Err(unknown()),
        };
        let app = self.oauth_app(&record.app).ok_or_else(unknown)?;
        let secrets = self.open_secrets(&record)?;
        let client = client_of(&secrets)
            .map_err(|err| EngineError::bad_request("credentials", err.to_string()))?;
        let endpoints = self.oauth_endpoints(app.as_ref(), &record)?;
        let verifier = self
            .keyring()
            .open(&consent.verifier, state_aad(&state_hash).as_bytes())
            .map_err(|source| EngineError::Sealed {
                connection: record.id.clone(),
                source,
            })?;
        let verifier = String::from_utf8_lossy(&verifier).into_owned();
        let grant = vendor_oauth::exchange_code(
            self.http(),
            &record.id,
            &endpoints,
            &client,
            code,
            &consent.redirect_uri,
            (!verifier.is_empty()).then_some(verifier.as_str()),
        )
        .await
        .map_err(|err| match err {
            TokenError::Refused(reason) => EngineError::bad_request(
                "code",
                format!("the authorization server refused the code: {reason}"),
            ),
            TokenError::Unavailable(err) => EngineError::Action {
                what: "exchanging the authorization code".into(),
                transient: true,
                message: err.to_string(),
            },
        })?;
        if grant.refresh_token.is_none() {
            tracing::warn!(connection = %record.id, "the authorization server sent no refresh token; the connection will need authorizing again when the access token expires");
        }
        self.save_grant(&record.id, grant).await?;
        self.resolve_alert(
            &record.tenant,
            AlertCause::ReauthorizationNeeded,
            &record.id,
        )
        .await;
        tracing::info!(tenant = %record.tenant, connection = %record.id, "connection authorized");
        Ok(Authorized {
            connection: record.id,
            tenant: record.tenant,
        })
    }
}
