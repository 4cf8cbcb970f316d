//! OAuth 2.0 connections: consent started from the admin API and finished
//! on the callback, a headless path (a pasted refresh token, as Zoho's
//! self-client gives), and access tokens kept fresh for the connectors.
//!
//! Tokens live in one item per connection (`OAUTH#{connection}`), sealed
//! like every credential, and change only by conditional writes: a worker
//! that needs a refresh first claims it (a short lease on the item), so two
//! workers refreshing at once make one call to the token endpoint and the
//! other re-reads the result. A refusal (revoked, invalid grant) is written
//! there too: runs then fail at once as not transient, without calling the
//! token endpoint again, and the connection shows "reauthorization needed"
//! until someone authorizes it again.
//!
//! The consent `state` is a random value bound to the tenant, the
//! connection and the PKCE verifier, stored (by its hash) for ten minutes
//! and consumed by one conditional write: a wrong, expired or replayed
//! state is refused before anything is saved.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use crmbridge_connectors::oauth::{
    self as vendor_oauth, AccessTokens, OAuthApp, OAuthClient, OAuthEndpoints,
    REAUTHORIZATION_NEEDED, TokenError, TokenGrant,
};
use crmbridge_connectors::{ActionError, VendorClient, VendorError};
use crmbridge_store::{PutOutcome, Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::records::{ConnectionRecord, ConnectionSecrets};
use crate::{Engine, EngineError, EngineResult, Keyring, decode, item, keys};

/// A token younger than this before its expiry is refreshed first.
const REFRESH_MARGIN_SECS: i64 = 120;
/// How long a claimed refresh is left to its worker before another takes
/// it over (longer than the token call's timeouts).
const REFRESH_LEASE_SECS: i64 = 60;
/// How long a worker waits for another's refresh.
const REFRESH_WAIT: Duration = Duration::from_secs(30);
const REFRESH_POLL: Duration = Duration::from_millis(50);

/// The token item of a connection.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct TokenRecord {
    /// Sealed [`TokenSecrets`].
    #[serde(default)]
    sealed: Option<String>,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
    /// Why the grant was refused, until the connection is authorized again.
    #[serde(default)]
    refused: Option<String>,
    #[serde(default)]
    refreshing: Option<RefreshLease>,
    updated_at: Option<DateTime<Utc>>,
    /// The API domain the grant named (not a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    api_domain: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RefreshLease {
    owner: String,
    until: DateTime<Utc>,
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct TokenSecrets {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
}

fn token_aad(connection: &str) -> String {
    format!("crmbridge:oauth:{connection}")
}

/// The client id and secret a connection carries.
pub fn client_of(secrets: &ConnectionSecrets) -> Result<OAuthClient<'_>, ActionError> {
    let get = |name: &str| {
        secrets
            .credentials
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ActionError::Config(format!("credentials.{name} is not set")))
    };
    Ok(OAuthClient {
        client_id: get("client_id")?,
        client_secret: get("client_secret")?,
    })
}

/// The tokens of one open connection; what connectors see as
/// [`AccessTokens`].
pub(crate) struct ConnectionTokens {
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    http: VendorClient,
    endpoints: OAuthEndpoints,
    connection: String,
    client_id: String,
    client_secret: String,
    /// A refresh token pasted as a credential (the headless path), used
    /// until consent or rotation stores one with the tokens.
    pasted_refresh_token: Option<String>,
    /// The API domain of the tokens last read or granted.
    api_domain: std::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for ConnectionTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionTokens")
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

fn store_failure(err: impl std::fmt::Display) -> ActionError {
    ActionError::Vendor(VendorError::Unreachable {
        vendor: "store",
        attempts: 1,
        message: err.to_string(),
    })
}

impl ConnectionTokens {
    fn key(&self) -> keys::Key {
        keys::oauth_tokens(&self.connection)
    }

    async fn read(&self) -> Result<Option<(TokenRecord, u64)>, ActionError> {
        let key = self.key();
        match self
            .store
            .get(&key.pk, &key.sk)
            .await
            .map_err(store_failure)?
        {
            None => Ok(None),
            Some(found) => Ok(Some((
                decode(&found).map_err(store_failure)?,
                found.version,
            ))),
        }
    }

    fn open(&self, record: &TokenRecord) -> Result<Option<TokenSecrets>, ActionError> {
        let Some(sealed) = &record.sealed else {
            return Ok(None);
        };
        let plain = self
            .keyring
            .open(sealed, token_aad(&self.connection).as_bytes())
            .map_err(|err| {
                ActionError::Config(format!("the stored tokens cannot be opened: {err}"))
            })?;
        serde_json::from_slice(&plain)
            .map(Some)
            .map_err(|err| ActionError::Config(format!("the stored tokens are corrupt: {err}")))
    }

    /// Writes `record` over `version` (or creates it): its new version, or
    /// `None` when another worker changed it first.
    async fn write(
        &self,
        record: &TokenRecord,
        version: Option<u64>,
    ) -> Result<Option<u64>, ActionError> {
        let body = item(self.key(), record).map_err(store_failure)?;
        match version {
            None => match self.store.put_if_absent(body).await {
                Ok(PutOutcome::Inserted) => Ok(Some(1)),
                Ok(PutOutcome::Exists(_)) => Ok(None),
                Err(err) => Err(store_failure(err)),
            },
            Some(expected) => match self.store.update_if_version(body, expected).await {
                Ok(version) => Ok(Some(version)),
                Err(StoreError::Conflict { .. }) => Ok(None),
                Err(err) => Err(store_failure(err)),
            },
        }
    }

    /// A token valid past the margin that is not `rejected`, refreshing
    /// (once, across workers) when there is none.
    async fn token(&self, rejected: Option<&str>) -> Result<String, ActionError> {
        // The refresh lease's owner is this call, not the connection (one
        // opened connection serves many runs at once, from the cache): two
        // calls refreshing at once, in one process or two, make one refresh.
        let owner = crate::random_id("rfr");
        let deadline = tokio::time::Instant::now() + REFRESH_WAIT;
        loop {
            let now = Utc::now();
            let found = self.read().await?;
            let (record, version) = match &found {
                Some((record, version)) => (record.clone(), Some(*version)),
                None => (TokenRecord::default(), None),
            };
            if let Some(reason) = &record.refused {
                return Err(vendor_oauth::reauthorization_needed(reason));
            }
            self.remember_domain(record.api_domain.as_deref());
            let secrets = self.open(&record)?;
            if let Some(current) = &secrets
                && Some(current.access_token.as_str()) != rejected
                && record
                    .expires_at
                    .is_some_and(|at| (at - now).num_seconds() > REFRESH_MARGIN_SECS)
            {
                return Ok(current.access_token.clone());
            }
            if let Some(lease) = &record.refreshing
                && lease.owner != owner
                && lease.until > now
            {
                // Another worker is refreshing: wait for its result.
                if tokio::time::Instant::now() >= deadline {
                    return Err(ActionError::Vendor(VendorError::Unreachable {
                        vendor: "oauth",
                        attempts: 1,
                        message: "another worker's token refresh has not finished".into(),
                    }));
                }
                tokio::time::sleep(REFRESH_POLL).await;
                continue;
            }
            let mut claimed = record.clone();
            claimed.refreshing = Some(RefreshLease {
                owner: owner.clone(),
                until: now + chrono::Duration::seconds(REFRESH_LEASE_SECS),
            });
            claimed.updated_at = Some(now);
            let Some(claimed_version) = self.write(&claimed, version).await? else {
                // Another worker changed the tokens first: look again.
                continue;
            };
            return self.refresh(claimed, claimed_version, secrets).await;
        }
    }

    /// Calls the token endpoint under a claimed lease and records the
    /// outcome.
    async fn refresh(
        &self,
        mut record: TokenRecord,
        version: u64,
        secrets: Option<TokenSecrets>,
    ) -> Result<String, ActionError> {
        let refresh_token = secrets
            .as_ref()
            .and_then(|s| s.refresh_token.clone())
            .or_else(|| self.pasted_refresh_token.clone());
        let client = OAuthClient {
            client_id: &self.client_id,
            client_secret: &self.client_secret,
        };
        let outcome = match &refresh_token {
            Some(token) => {
                vendor_oauth::refresh(
                    &self.http,
                    &self.connection,
                    &self.endpoints,
                    &client,
                    token,
                )
                .await
            }
            None => Err(TokenError::Refused(
                "the connection has no refresh token: authorize it".into(),
            )),
        };
        record.refreshing = None;
        record.updated_at = Some(Utc::now());
        match outcome {
            Ok(grant) => {
                let access = grant.access_token.clone();
                self.remember_domain(grant.api_domain.as_deref());
                self.seal_grant(&mut record, grant, refresh_token);
                // Our lease makes this write ours; a conflict means the
                // lease lapsed and another worker refreshed: use theirs.
                if self.write(&record, Some(version)).await?.is_none() {
                    tracing::warn!(connection = %self.connection, "token refresh outlived its lease; another worker's tokens are kept");
                }
                tracing::info!(connection = %self.connection, "access token refreshed");
                Ok(access)
            }
            Err(TokenError::Refused(reason)) => {
                tracing::warn!(connection = %self.connection, %reason, "the authorization server refused the refresh; the connection needs authorizing again");
                record.refused = Some(reason.clone());
                self.write(&record, Some(version)).await?;
                Err(vendor_oauth::reauthorization_needed(&reason))
            }
            Err(TokenError::Unavailable(err)) => {
                // Release the claim so the next attempt need not wait.
                self.write(&record, Some(version)).await?;
                Err(ActionError::Vendor(err))
            }
        }
    }

    fn remember_domain(&self, domain: Option<&str>) {
        if let (Some(domain), Ok(mut slot)) = (domain, self.api_domain.lock()) {
            *slot = Some(domain.to_owned());
        }
    }

    fn seal_grant(&self, record: &mut TokenRecord, grant: TokenGrant, previous: Option<String>) {
        seal_into(&self.keyring, &self.connection, record, grant, previous);
    }
}

fn seal_into(
    keyring: &Keyring,
    connection: &str,
    record: &mut TokenRecord,
    grant: TokenGrant,
    previous_refresh: Option<String>,
) {
    if grant.api_domain.is_some() {
        record.api_domain = grant.api_domain.clone();
    }
    let secrets = TokenSecrets {
        access_token: grant.access_token,
        // A server that does not rotate keeps the refresh token we had.
        refresh_token: grant.refresh_token.or(previous_refresh),
    };
    let plain = serde_json::to_vec(&secrets).unwrap_or_default();
    record.sealed = Some(keyring.seal(&plain, token_aad(connection).as_bytes()));
    record.expires_at =
        Some(Utc::now() + chrono::Duration::seconds(grant.expires_in_secs.unwrap_or(3600).max(0)));
    record.refused = None;
}

#[async_trait]
impl AccessTokens for ConnectionTokens {
    async fn access_token(&self) -> Result<String, ActionError> {
        self.token(None).await
    }

    async fn after_rejection(&self, rejected: &str) -> Result<String, ActionError> {
        self.token(Some(rejected)).await
    }

    fn api_domain(&self) -> Option<String> {
        self.api_domain.lock().ok().and_then(|slot| slot.clone())
    }
}

impl Engine {
    /// The OAuth side of a connection of an OAuth vendor, ready for calls.
    pub(crate) fn connection_tokens(
        &self,
        record: &ConnectionRecord,
        secrets: &ConnectionSecrets,
    ) -> EngineResult<Option<ConnectionTokens>> {
        let Some(app) = self.oauth_app(&record.app) else {
            return Ok(None);
        };
        let endpoints = self.oauth_endpoints(app.as_ref(), record)?;
        let client = client_of(secrets)
            .map_err(|err| EngineError::bad_request("credentials", err.to_string()))?;
        Ok(Some(ConnectionTokens {
            store: Arc::clone(&self.store),
            keyring: Arc::clone(&self.keyring),
            http: self.http.clone(),
            endpoints,
            connection: record.id.clone(),
            client_id: client.client_id.to_owned(),
            client_secret: client.client_secret.to_owned(),
            pasted_refresh_token: secrets.credentials.get("refresh_token").cloned(),
            api_domain: std::sync::Mutex::new(None),
        }))
    }

    pub fn oauth_app(&self, app: &str) -> Option<Arc<dyn OAuthApp>> {
        self.connectors.get(app).and_then(|v| v.oauth.clone())
    }

    pub fn oauth_endpoints(
        &self,
        app: &dyn OAuthApp,
        record: &ConnectionRecord,
    ) -> EngineResult<OAuthEndpoints> {
        app.endpoints(&record.settings, self.config.allow_any_base_url)
            .map_err(|err| EngineError::bad_request("settings", err.to_string()))
    }

    /// The health of an OAuth connection: `None` when it is fine (or not
    /// an OAuth connection).
    pub async fn oauth_health(&self, record: &ConnectionRecord) -> EngineResult<Option<String>> {
        if self.oauth_app(&record.app).is_none() {
            return Ok(None);
        }
        let found = self
            .read::<TokenRecord>(&keys::oauth_tokens(&record.id))
            .await?;
        Ok(match found {
            Some((token, _)) => token
                .refused
                .map(|reason| format!("{REAUTHORIZATION_NEEDED}: {reason}")),
            None if !record.credential_names.iter().any(|n| n == "refresh_token") => {
                Some("not authorized yet: start the authorization".into())
            }
            None => None,
        })
    }

    /// Stores what a consent granted, replacing any earlier tokens (and a
    /// refusal): the connection works again.
    pub async fn save_grant(&self, connection: &str, grant: TokenGrant) -> EngineResult<()> {
        let mut tokens = TokenRecord {
            updated_at: Some(self.now()),
            ..TokenRecord::default()
        };
        seal_into(&self.keyring, connection, &mut tokens, grant, None);
        self.store
            .put(item(keys::oauth_tokens(connection), &tokens)?)
            .await?;
        Ok(())
    }

    /// Forgets the tokens of a connection whose credentials changed (a new
    /// refresh token pasted, another client): the next call starts afresh.
    pub async fn forget_tokens(&self, connection: &str) -> EngineResult<()> {
        let key = keys::oauth_tokens(connection);
        self.store.delete(&key.pk, &key.sk).await?;
        Ok(())
    }
}
