//! The Lambda functions' AWS SDK configuration, built from the variables
//! Lambda sets, and the certificate authorities it trusts.
//!
//! **Configuration.** A function reads `AWS_REGION` (or
//! `AWS_DEFAULT_REGION`), the execution role's `AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, `AWS_ENDPOINT_URL` (an
//! emulator), `AWS_USE_FIPS_ENDPOINT`, `AWS_USE_DUALSTACK_ENDPOINT`,
//! `AWS_MAX_ATTEMPTS`, `AWS_RETRY_MODE`, `AWS_SDK_UA_APP_ID` and the
//! proxy variables (`HTTPS_PROXY`, `NO_PROXY`, …), and nothing else: no
//! profile files, SSO, web identity or instance metadata. aws-config's
//! provider chains would look for each of those at every cold start (one
//! builds an STS client, which parses the endpoint partitions again) and
//! link code a function never runs. A per-service endpoint variable
//! (`AWS_ENDPOINT_URL_DYNAMODB`, …) is refused at start rather than
//! ignored. The `crmbridge` command line keeps aws-config
//! (`crate::aws_sdk_config`): it runs where profiles and SSO are how people
//! sign in.
//!
//! **Trust.** In the `aws` and `aws-us-gov` partitions every service
//! endpoint presents a certificate from Amazon Trust Services: Amazon Root
//! CA 1–4, cross-signed by Starfield Services Root G2 for older clients.
//! Those five roots are compiled in (`certs/amazon-trust-services.pem`), so
//! a cold start parses five certificates instead of reading the system's
//! whole trust store (on Debian the bundle and ~150 files beside it, on
//! Amazon Linux a bundle of the same size): that load was most of a
//! function's init time. Trusting fewer authorities for DynamoDB and
//! EventBridge is also the narrower choice. Elsewhere (China, the isolated
//! partitions), or when `SSL_CERT_FILE` / `SSL_CERT_DIR` say which store to
//! use, the system's store is loaded as before. `AWS_CA_BUNDLE` (the name
//! the AWS CLI and the other SDKs read) adds a PEM file of further roots,
//! for an HTTPS emulator or a TLS-inspecting proxy. The bundle is checked
//! here, at start-up, the way the SDK will parse it: the SDK itself panics
//! on a certificate it cannot parse.

use std::collections::BTreeMap;

use aws_config::retry::RetryConfig;
use aws_config::{AppName, BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use rustls::pki_types::{CertificateDer, pem::PemObject};

use crate::ConfigError;

/// The roots every endpoint of the `aws` and `aws-us-gov` partitions
/// chains to.
const AMAZON_TRUST_SERVICES: &[u8] = include_bytes!("../certs/amazon-trust-services.pem");

/// The variable naming a PEM file of further roots to trust.
pub const CA_BUNDLE_VARIABLE: &str = "AWS_CA_BUNDLE";

/// Which roots the AWS SDK's HTTPS client starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// The five Amazon Trust Services roots, compiled in.
    AmazonTrustServices,
    /// The system's trust store (as `SSL_CERT_FILE` / `SSL_CERT_DIR` or
    /// the distribution's defaults name it).
    System,
}

impl Trust {
    /// The roots for a region, given the variables set.
    fn for_region(region: &str, variables: &Variables) -> Self {
        // China's and the isolated partitions' endpoints are not all signed
        // by Amazon Trust Services.
        let other_partition = region.starts_with("cn-") || region.contains("-iso");
        let store_named = ["SSL_CERT_FILE", "SSL_CERT_DIR"]
            .iter()
            .any(|name| variables.get(name).is_some());
        if other_partition || store_named {
            Self::System
        } else {
            Self::AmazonTrustServices
        }
    }
}

/// An HTTPS client for the AWS SDK that trusts `trust`, and the roots in
/// `extra_pem` if given, and goes through the proxy the environment names.
/// `extra_pem` is checked first: a file with no certificate, or one that
/// does not parse, is an error naming [`CA_BUNDLE_VARIABLE`].
pub fn aws_https_client(
    trust: Trust,
    extra_pem: Option<&[u8]>,
) -> Result<SharedHttpClient, ConfigError> {
    let mut store = match trust {
        Trust::AmazonTrustServices => TrustStore::empty()
            .with_native_roots(false)
            .with_pem_certificate(AMAZON_TRUST_SERVICES),
        Trust::System => TrustStore::empty().with_native_roots(true),
    };
    if let Some(pem) = extra_pem {
        let count = check_roots(pem).map_err(|message| invalid(CA_BUNDLE_VARIABLE, message))?;
        tracing::info!(
            roots = count,
            "trusting the roots in {CA_BUNDLE_VARIABLE} too"
        );
        store = store.with_pem_certificate(pem);
    }
    let context = TlsContext::builder()
        .with_trust_store(store)
        .build()
        .map_err(|err| invalid("the AWS SDK's TLS context", err.to_string()))?;
    // As the SDK's own default client is built (settings, sleep, proxy
    // from the environment), with these roots.
    Ok(
        aws_smithy_http_client::Builder::new().build_with_connector_fn(
            move |settings, components| {
                let mut connector = aws_smithy_http_client::ConnectorBuilder::default()
                    .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
                    .tls_context(context.clone());
                connector.set_connector_settings(settings.cloned());
                if let Some(components) = components {
                    connector.set_sleep_impl(components.sleep_impl());
                }
                connector.set_proxy_config(Some(ProxyConfig::from_env()));
                connector.build()
            },
        ),
    )
}

/// Variables by name, set and not blank, trimmed.
struct Variables(BTreeMap<String, String>);

impl Variables {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn required(&self, name: &'static str) -> Result<&str, ConfigError> {
        self.get(name).ok_or(ConfigError::Missing(name))
    }

    fn flag(&self, name: &str) -> Result<Option<bool>, ConfigError> {
        self.get(name)
            .map(|value| match value.to_ascii_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(invalid(name, format!("'{value}' is not true or false"))),
            })
            .transpose()
    }
}

fn invalid(name: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name: name.into(),
        message: message.into(),
    }
}

/// The SDK configuration from the process environment.
pub fn sdk_config_from_env() -> Result<SdkConfig, ConfigError> {
    sdk_config(std::env::vars())
}

/// The SDK configuration from these variables. A required variable that
/// is unset or blank, or one that does not parse, is an error naming it.
pub fn sdk_config(
    variables: impl IntoIterator<Item = (String, String)>,
) -> Result<SdkConfig, ConfigError> {
    let vars = Variables(
        variables
            .into_iter()
            .map(|(name, value)| (name, value.trim().to_owned()))
            .filter(|(_, value)| !value.is_empty())
            .collect(),
    );
    if let Some(name) = vars
        .0
        .keys()
        .find(|name| name.starts_with("AWS_ENDPOINT_URL_"))
    {
        return Err(invalid(
            name,
            "per-service endpoints are not read by the Lambda functions: set AWS_ENDPOINT_URL",
        ));
    }
    let region = match vars.get("AWS_REGION") {
        Some(region) => region,
        None => vars
            .required("AWS_DEFAULT_REGION")
            .map_err(|_| ConfigError::Missing("AWS_REGION"))?,
    };
    let credentials = Credentials::new(
        vars.required("AWS_ACCESS_KEY_ID")?,
        vars.required("AWS_SECRET_ACCESS_KEY")?,
        vars.get("AWS_SESSION_TOKEN").map(str::to_owned),
        None,
        "lambda-environment",
    );
    let extra_roots = match vars.get(CA_BUNDLE_VARIABLE) {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|err| invalid(CA_BUNDLE_VARIABLE, format!("cannot read {path}: {err}")))?,
        ),
        None => None,
    };
    let mut retry = RetryConfig::standard();
    match vars.get("AWS_RETRY_MODE") {
        None | Some("standard") => {}
        Some("adaptive") => retry = RetryConfig::adaptive(),
        Some(other) => {
            return Err(invalid(
                "AWS_RETRY_MODE",
                format!("'{other}' is not standard or adaptive"),
            ));
        }
    }
    if let Some(value) = vars.get("AWS_MAX_ATTEMPTS") {
        let attempts = value
            .parse::<u32>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                invalid(
                    "AWS_MAX_ATTEMPTS",
                    format!("'{value}' is not a whole number of at least 1"),
                )
            })?;
        retry = retry.with_max_attempts(attempts);
    }
    let trust = Trust::for_region(region, &vars);
    let mut config = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .retry_config(retry)
        .http_client(aws_https_client(trust, extra_roots.as_deref())?);
    config.set_endpoint_url(vars.get("AWS_ENDPOINT_URL").map(str::to_owned));
    config.set_use_fips(vars.flag("AWS_USE_FIPS_ENDPOINT")?);
    config.set_use_dual_stack(vars.flag("AWS_USE_DUALSTACK_ENDPOINT")?);
    if let Some(app) = vars.get("AWS_SDK_UA_APP_ID") {
        let name = AppName::new(app.to_owned())
            .map_err(|err| invalid("AWS_SDK_UA_APP_ID", err.to_string()))?;
        config.set_app_name(Some(name));
    }
    Ok(config.build())
}

/// How many roots `pem` holds, parsed as the SDK will parse them: every
/// PEM certificate block decoded, and each one a usable trust anchor.
fn check_roots(pem: &[u8]) -> Result<usize, String> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("not a PEM certificate bundle: {err}"))?;
    if certificates.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    let mut roots = rustls::RootCertStore::empty();
    for (index, certificate) in certificates.into_iter().enumerate() {
        roots
            .add(certificate)
            .map_err(|err| format!("certificate {} cannot be a root: {err}", index + 1))?;
    }
    Ok(roots.len())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn with(extra: &[(&str, &str)]) -> Vec<(String, String)> {
        LAMBDA
            .iter()
            .chain(extra)
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const LAMBDA: &[(&str, &str)] = &[
        ("AWS_REGION", "eu-central-1"),
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI"),
        ("AWS_SESSION_TOKEN", "session"),
        ("AWS_LAMBDA_FUNCTION_NAME", "webhook"),
    ];

    #[test]
    fn the_configuration_is_what_lambda_sets() {
        let config = sdk_config(with(&[])).unwrap();
        assert_eq!(config.region().unwrap().as_ref(), "eu-central-1");
        assert_eq!(config.endpoint_url(), None);
        assert_eq!(config.use_fips(), None);
        assert!(config.credentials_provider().is_some());
        assert!(config.http_client().is_some());
        assert_eq!(config.retry_config().unwrap().max_attempts(), 3);
        let config = sdk_config(with(&[
            ("AWS_ENDPOINT_URL", " http://127.0.0.1:5555 "),
            ("AWS_USE_FIPS_ENDPOINT", "TRUE"),
            ("AWS_USE_DUALSTACK_ENDPOINT", "false"),
            ("AWS_MAX_ATTEMPTS", "5"),
            ("AWS_SDK_UA_APP_ID", "acme"),
        ]))
        .unwrap();
        assert_eq!(config.endpoint_url(), Some("http://127.0.0.1:5555"));
        assert_eq!(config.use_fips(), Some(true));
        assert_eq!(config.use_dual_stack(), Some(false));
        assert_eq!(config.retry_config().unwrap().max_attempts(), 5);
        assert_eq!(config.app_name().unwrap().as_ref(), "acme");
    }

    #[test]
    fn the_default_region_stands_in_for_the_region() {
        let vars: Vec<_> = with(&[("AWS_DEFAULT_REGION", "us-west-2")])
            .into_iter()
            .filter(|(k, _)| k != "AWS_REGION")
            .collect();
        let config = sdk_config(vars).unwrap();
        assert_eq!(config.region().unwrap().as_ref(), "us-west-2");
    }

    #[test]
    fn a_missing_or_bad_variable_is_named() {
        for missing in ["AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            let mut vars: Vec<_> = with(&[])
                .into_iter()
                .filter(|(k, _)| k != missing)
                .collect();
            let err = sdk_config(vars.clone()).unwrap_err().to_string();
            assert!(err.contains(missing), "{err}");
            vars.push((missing.to_owned(), " ".to_owned()));
            let err = sdk_config(vars).unwrap_err().to_string();
            assert!(err.contains(missing), "blank {missing}: {err}");
        }
        for (name, value) in [
            (CA_BUNDLE_VARIABLE, "/nonexistent/bundle.pem"),
            ("AWS_USE_FIPS_ENDPOINT", "yes"),
            ("AWS_USE_DUALSTACK_ENDPOINT", "1"),
            ("AWS_MAX_ATTEMPTS", "0"),
            ("AWS_RETRY_MODE", "legacy"),
            ("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:1"),
        ] {
            let err = sdk_config(with(&[(name, value)])).unwrap_err().to_string();
            assert!(err.contains(name), "{name}={value}: {err}");
        }
    }

    #[test]
    fn amazon_roots_where_every_endpoint_chains_to_them_and_the_system_store_elsewhere() {
        let vars = |set: &[(&str, &str)]| {
            Variables(
                set.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            )
        };
        for region in ["us-east-1", "eu-central-1", "us-gov-west-1"] {
            assert_eq!(
                Trust::for_region(region, &vars(&[])),
                Trust::AmazonTrustServices
            );
        }
        for region in ["cn-north-1", "us-iso-east-1", "us-isob-east-1"] {
            assert_eq!(
                Trust::for_region(region, &vars(&[])),
                Trust::System,
                "{region}"
            );
        }
        for named in ["SSL_CERT_FILE", "SSL_CERT_DIR"] {
            assert_eq!(
                Trust::for_region("us-east-1", &vars(&[(named, "/etc/ssl")])),
                Trust::System
            );
        }
    }

    #[test]
    fn secrets_stay_out_of_the_configurations_debug_text() {
        let config = sdk_config(with(&[])).unwrap();
        let text = format!("{config:?}");
        assert!(
            !text.contains("wJalrXUtnFEMI") && !text.contains("session\""),
            "{text}"
        );
    }

    #[test]
    fn the_compiled_in_roots_are_amazon_trust_services_five() {
        assert_eq!(check_roots(AMAZON_TRUST_SERVICES), Ok(5));
    }

    #[test]
    fn a_bundle_that_is_not_roots_is_refused_before_the_sdk_sees_it() {
        for (pem, says) in [
            (&b""[..], "holds no PEM certificate"),
            (b"hello", "holds no PEM certificate"),
            (
                b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
                "not a PEM certificate bundle",
            ),
            (
                b"-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
                "certificate 1 cannot be a root",
            ),
        ] {
            let err = aws_https_client(Trust::AmazonTrustServices, Some(pem))
                .unwrap_err()
                .to_string();
            assert!(err.contains(CA_BUNDLE_VARIABLE), "{err}");
            assert!(err.contains(says), "{err}");
        }
    }
}
