//! A connection whose credentials the vendor refused (a wrong, revoked or
//! missing API key) shows it in its health until a person acts: the mark
//! is set by the call that was refused (a run's step, a poll, a check) and
//! cleared when the credentials are changed or a check passes. Runs keep
//! failing with the vendor's own words meanwhile; the mark is what tells
//! the person who can fix it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crmbridge_state::records::AlertCause;

use crate::{Engine, EngineResult, item, keys};

/// The health mark of a connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CredentialsHealth {
    /// The vendor's refusal, as the run log shows it (no secret in it).
    refused: String,
    at: DateTime<Utc>,
}

/// The health text of a connection whose credentials were refused.
pub const CREDENTIALS_REFUSED: &str = "credentials refused";

impl Engine {
    /// Marks a connection's credentials as refused, with why.
    pub async fn mark_credentials_refused(
        &self,
        tenant: &str,
        connection: &str,
        reason: &str,
    ) -> EngineResult<()> {
        tracing::warn!(
            connection,
            reason,
            "the vendor refused the connection's credentials"
        );
        let mark = CredentialsHealth {
            refused: reason.to_owned(),
            at: self.now(),
        };
        self.store
            .put(item(keys::connection_health(connection), &mark)?)
            .await?;
        self.raise_alert(tenant, AlertCause::CredentialsRefused, connection, reason)
            .await;
        Ok(())
    }

    /// What a vendor's refusal says about the connection itself: refused
    /// credentials are marked (and alerted); a refused OAuth grant, whose
    /// health the token record already shows, is alerted.
    pub async fn note_refusal(
        &self,
        tenant: &str,
        connection: &str,
        err: &crmbridge_connectors::ActionError,
    ) -> EngineResult<()> {
        if let Some(reason) = err.credentials_refused() {
            self.mark_credentials_refused(tenant, connection, &reason)
                .await?;
        } else if let Some(reason) = err.reauthorization_needed() {
            self.raise_alert(
                tenant,
                AlertCause::ReauthorizationNeeded,
                connection,
                &reason,
            )
            .await;
        }
        Ok(())
    }

    /// Clears the mark: new credentials, or a check that passed.
    pub async fn clear_credentials_refused(
        &self,
        tenant: &str,
        connection: &str,
    ) -> EngineResult<()> {
        let key = keys::connection_health(connection);
        self.store.delete(&key.pk, &key.sk).await?;
        // New credentials (or a refresh token pasted in) and a passing
        // check answer both causes.
        for cause in [
            AlertCause::CredentialsRefused,
            AlertCause::ReauthorizationNeeded,
        ] {
            self.resolve_alert(tenant, cause, connection).await;
        }
        Ok(())
    }

    /// The health of a connection: `None` when nothing needs doing.
    pub async fn connection_health(
        &self,
        record: &crmbridge_state::records::ConnectionRecord,
    ) -> EngineResult<Option<String>> {
        if let Some(oauth) = self.oauth_health(record).await? {
            return Ok(Some(oauth));
        }
        Ok(self
            .read::<CredentialsHealth>(&keys::connection_health(&record.id))
            .await?
            .map(|(mark, _)| format!("{CREDENTIALS_REFUSED}: {}", mark.refused)))
    }
}
