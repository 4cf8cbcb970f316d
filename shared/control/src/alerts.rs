//! Alert destinations: where a tenant's alerts go (admin side). The
//! alerts themselves are raised and delivered by the engine
//! (`crmbridge_engine::alerts`).
//!
//! A destination is a URL and its signing secrets (`whsec_…`, Standard
//! Webhooks). A new secret is answered once, when the destination is made
//! or its secret rotated; a rotated-out secret keeps signing beside the new
//! one for a day, so the receiver can switch without refusing a message.

use crmbridge_connectors::public_address;
use crmbridge_connectors::standard_webhooks::SigningSecret;
use crmbridge_engine::alerts::secret_retirement;
use crmbridge_engine::records::{
    AlertDestinationRecord, AlertRecord, AlertSecret, AlertSendOutcome, Role,
};
use crmbridge_engine::{Engine, EngineError, EngineResult, FieldError, item, keys, random_id};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::admin::Principal;

/// Destinations one tenant may have.
pub const MAX_DESTINATIONS: usize = 10;

const MAX_DESCRIPTION_CHARS: usize = 200;

/// A destination to create.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAlertDestination {
    /// Where alert messages are POSTed: https, a public host.
    pub url: String,
    #[serde(default)]
    pub description: String,
    /// A `whsec_…` secret of your own; one is made when absent.
    #[serde(default)]
    pub secret: Option<String>,
}

/// A destination as the API shows it: never its secrets.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AlertDestinationView {
    pub id: String,
    pub url: String,
    pub description: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// While a rotated-out secret still signs: until when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_secret_until: Option<chrono::DateTime<chrono::Utc>>,
}

/// A destination with its new secret, shown this once.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CreatedAlertDestination {
    #[serde(flatten)]
    pub destination: AlertDestinationView,
    /// The signing secret (`whsec_…`): keep it; it is not shown again.
    pub secret: String,
}

/// What the admin API does here (implemented by [`Engine`]).
pub trait Alerts {
    async fn create_alert_destination(
        &self,
        who: &Principal,
        new: NewAlertDestination,
    ) -> EngineResult<CreatedAlertDestination>;

    async fn list_alert_destinations(
        &self,
        who: &Principal,
    ) -> EngineResult<Vec<AlertDestinationView>>;

    async fn delete_alert_destination(&self, who: &Principal, id: &str) -> EngineResult<()>;

    /// A new secret; the old one signs beside it for a day.
    async fn rotate_alert_secret(
        &self,
        who: &Principal,
        id: &str,
    ) -> EngineResult<CreatedAlertDestination>;

    /// Sends one signed `alert.test` message now and says what came back.
    async fn test_alert_destination(
        &self,
        who: &Principal,
        id: &str,
    ) -> EngineResult<AlertSendOutcome>;

    /// The tenant's alerts, open and resolved (the latest per cause and
    /// subject).
    async fn list_alerts(&self, who: &Principal) -> EngineResult<Vec<AlertRecord>>;
}

/// Why `url` may not receive alerts, if it may not. Outside test mode the
/// URL must be https on a public host: an alert destination must not make
/// crmbridge call into the network it runs in (a name is checked again
/// when each alert is sent, against the addresses it resolves to).
fn check_destination_url(url: &str, allow_any: bool) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|err| format!("not a URL: {err}"))?;
    public_address::check_url(&parsed, allow_any).map_err(|refused| refused.0)
}

fn view(record: &AlertDestinationRecord, secrets: &[AlertSecret]) -> AlertDestinationView {
    AlertDestinationView {
        id: record.id.clone(),
        url: record.url.clone(),
        description: record.description.clone(),
        created_at: record.created_at,
        previous_secret_until: secrets.iter().filter_map(|s| s.retires_at).max(),
    }
}

async fn own_destination(
    engine: &Engine,
    who: &Principal,
    id: &str,
) -> EngineResult<(AlertDestinationRecord, u64)> {
    engine
        .read::<AlertDestinationRecord>(&keys::alert_destination(&who.tenant, id))
        .await?
        .ok_or_else(|| EngineError::NotFound {
            what: "alert destination",
            id: id.to_owned(),
        })
}

impl Alerts for Engine {
    async fn create_alert_destination(
        &self,
        who: &Principal,
        new: NewAlertDestination,
    ) -> EngineResult<CreatedAlertDestination> {
        who.require_role(Role::Admin, "create alert destinations")?;
        let mut errors = Vec::new();
        if let Err(message) = check_destination_url(&new.url, self.config().allow_any_base_url) {
            errors.push(FieldError {
                field: "url".into(),
                message,
            });
        }
        if new.description.chars().count() > MAX_DESCRIPTION_CHARS {
            errors.push(FieldError {
                field: "description".into(),
                message: format!("at most {MAX_DESCRIPTION_CHARS} characters"),
            });
        }
        if let Some(secret) = &new.secret
            && let Err(err) = SigningSecret::parse(secret)
        {
            errors.push(FieldError {
                field: "secret".into(),
                message: err.to_string(),
            });
        }
        if !errors.is_empty() {
            return Err(EngineError::Invalid(errors));
        }
        if self.alert_destinations(&who.tenant).await?.len() >= MAX_DESTINATIONS {
            return Err(EngineError::conflict(
                "url",
                format!("a tenant has at most {MAX_DESTINATIONS} alert destinations"),
            ));
        }
        let id = random_id("ads");
        let secret = new.secret.unwrap_or_else(SigningSecret::generate);
        let secrets = vec![AlertSecret {
            secret: secret.clone(),
            retires_at: None,
        }];
        let record = AlertDestinationRecord {
            id: id.clone(),
            tenant: who.tenant.clone(),
            url: new.url,
            description: new.description,
            created_at: self.now(),
            secrets: self.seal_alert_secrets(&id, &secrets)?,
        };
        self.store()
            .put(item(keys::alert_destination(&who.tenant, &id), &record)?)
            .await?;
        tracing::info!(tenant = %who.tenant, destination = %id, "alert destination created");
        Ok(CreatedAlertDestination {
            destination: view(&record, &secrets),
            secret,
        })
    }

    async fn list_alert_destinations(
        &self,
        who: &Principal,
    ) -> EngineResult<Vec<AlertDestinationView>> {
        who.require_role(Role::Admin, "list alert destinations")?;
        self.alert_destinations(&who.tenant)
            .await?
            .iter()
            .map(|record| Ok(view(record, &self.alert_secrets(record)?)))
            .collect()
    }

    async fn delete_alert_destination(&self, who: &Principal, id: &str) -> EngineResult<()> {
        who.require_role(Role::Admin, "delete alert destinations")?;
        own_destination(self, who, id).await?;
        let key = keys::alert_destination(&who.tenant, id);
        self.store().delete(&key.pk, &key.sk).await?;
        tracing::info!(tenant = %who.tenant, destination = %id, "alert destination deleted");
        Ok(())
    }

    async fn rotate_alert_secret(
        &self,
        who: &Principal,
        id: &str,
    ) -> EngineResult<CreatedAlertDestination> {
        who.require_role(Role::Admin, "rotate alert secrets")?;
        let now = self.now();
        for _ in 0..5 {
            let (mut record, version) = own_destination(self, who, id).await?;
            let secret = SigningSecret::generate();
            let mut secrets = vec![AlertSecret {
                secret: secret.clone(),
                retires_at: None,
            }];
            secrets.extend(
                self.alert_secrets(&record)?
                    .into_iter()
                    .filter(|s| s.retires_at.is_none_or(|at| at > now))
                    .map(|s| AlertSecret {
                        retires_at: Some(s.retires_at.unwrap_or_else(|| secret_retirement(now))),
                        ..s
                    }),
            );
            record.secrets = self.seal_alert_secrets(id, &secrets)?;
            match self
                .store()
                .update_if_version(
                    item(keys::alert_destination(&who.tenant, id), &record)?,
                    version,
                )
                .await
            {
                Ok(_) => {
                    tracing::info!(tenant = %who.tenant, destination = %id, "alert secret rotated");
                    return Ok(CreatedAlertDestination {
                        destination: view(&record, &secrets),
                        secret,
                    });
                }
                Err(crmbridge_store::StoreError::Conflict { .. }) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(EngineError::InProgress(format!(
            "alert destination {id} is being changed; retry"
        )))
    }

    async fn test_alert_destination(
        &self,
        who: &Principal,
        id: &str,
    ) -> EngineResult<AlertSendOutcome> {
        who.require_role(Role::Admin, "test alert destinations")?;
        let (record, _) = own_destination(self, who, id).await?;
        let message_id = random_id("msg");
        let message = json!({
            "type": "alert.test",
            "timestamp": self.now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "data": {"tenant": who.tenant, "destination": id},
        });
        self.send_alert(&record, &message_id, &message).await
    }

    async fn list_alerts(&self, who: &Principal) -> EngineResult<Vec<AlertRecord>> {
        who.require_role(Role::Admin, "list alerts")?;
        self.alerts(&who.tenant).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_must_be_public_https_outside_test_mode() {
        for url in [
            "http://hooks.example.com/a",
            "https://user:pw@hooks.example.com/a",
            "https://localhost/a",
            "https://intranet/a",
            "https://127.0.0.1/a",
            "https://10.1.2.3/a",
            "https://169.254.169.254/latest",
            "https://100.64.0.1/a",
            "https://[::1]/a",
            "https://[fd00::1]/a",
            "https://[::ffff:10.0.0.1]/a",
            "ftp://hooks.example.com/a",
            "not a url",
        ] {
            assert!(check_destination_url(url, false).is_err(), "{url}");
        }
        for url in ["https://hooks.example.com/a", "https://8.8.8.8/x"] {
            assert!(check_destination_url(url, false).is_ok(), "{url}");
        }
        assert!(check_destination_url("http://127.0.0.1:9/a", true).is_ok());
        assert!(check_destination_url("ftp://127.0.0.1/a", true).is_err());
    }
}
