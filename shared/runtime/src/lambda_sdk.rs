//! The Lambda functions' AWS SDK configuration, built from the variables
//! Lambda sets, and the certificate authorities it trusts.
//!
//! **Configuration.** A function reads `AWS_REGION`, the execution role's
//! `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`,
//! and `AWS_ENDPOINT_URL` (an emulator), and nothing else: no profile
//! files, no SSO, no web identity, no instance metadata. aws-config's
//! provider chains would look for each of those at every cold start (one
//! builds an STS client, which parses the endpoint partitions again) and
//! link code a function never runs. The `crmbridge` command line keeps
//! aws-config (`crate::aws_sdk_config`): it runs where profiles and SSO
//! are how people sign in.
//!
//! **Trust.** Every AWS service endpoint presents a certificate from
//! Amazon Trust Services: Amazon Root CA 1–4, cross-signed by Starfield
//! Services Root G2 for older clients. Those five roots are compiled in
//! (`certs/amazon-trust-services.pem`), so a cold start parses five
//! certificates instead of reading the system's whole trust store (on
//! Debian the bundle and ~150 files beside it, on Amazon Linux a bundle of
//! the same size): that load was most of a function's init time. Trusting
//! fewer authorities for DynamoDB and EventBridge is also the narrower
//! choice. `AWS_CA_BUNDLE` (the name the AWS CLI and the other SDKs read)
//! adds a PEM file of further roots, for an HTTPS emulator or a
//! TLS-inspecting proxy. The bundle is checked here, at start-up, the way
//! the SDK will parse it: the SDK itself panics on a certificate it cannot
//! parse.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use rustls::pki_types::{CertificateDer, pem::PemObject};

use crate::ConfigError;

/// The roots every AWS endpoint chains to.
const AMAZON_TRUST_SERVICES: &[u8] = include_bytes!("../certs/amazon-trust-services.pem");

/// The variable naming a PEM file of further roots to trust.
pub const CA_BUNDLE_VARIABLE: &str = "AWS_CA_BUNDLE";

/// An HTTPS client for the AWS SDK that trusts Amazon Trust Services, and
/// the roots in `extra_pem` if given. `extra_pem` is checked first: a file
/// with no certificate, or one that does not parse, is an error naming
/// [`CA_BUNDLE_VARIABLE`].
pub fn aws_https_client(extra_pem: Option<&[u8]>) -> Result<SharedHttpClient, ConfigError> {
    let mut store = TrustStore::empty()
        .with_native_roots(false)
        .with_pem_certificate(AMAZON_TRUST_SERVICES);
    if let Some(pem) = extra_pem {
        let count = check_roots(pem).map_err(|message| ConfigError::Invalid {
            name: CA_BUNDLE_VARIABLE.into(),
            message,
        })?;
        tracing::info!(
            roots = count,
            "trusting the roots in {CA_BUNDLE_VARIABLE} too"
        );
        store = store.with_pem_certificate(pem);
    }
    let context = TlsContext::builder()
        .with_trust_store(store)
        .build()
        .map_err(|err| ConfigError::Invalid {
            name: CA_BUNDLE_VARIABLE.into(),
            message: err.to_string(),
        })?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(context)
        .build_https())
}

/// The SDK configuration from the process environment.
pub fn sdk_config_from_env() -> Result<SdkConfig, ConfigError> {
    sdk_config(|name| std::env::var(name).ok())
}

/// The SDK configuration from these variables (`variable` looks one up).
/// A required variable that is unset or empty is an error naming it.
pub fn sdk_config(variable: impl Fn(&str) -> Option<String>) -> Result<SdkConfig, ConfigError> {
    let set = |name: &str| variable(name).filter(|value| !value.trim().is_empty());
    let required = |name: &'static str| set(name).ok_or(ConfigError::Missing(name));
    let credentials = Credentials::new(
        required("AWS_ACCESS_KEY_ID")?,
        required("AWS_SECRET_ACCESS_KEY")?,
        set("AWS_SESSION_TOKEN"),
        None,
        "lambda-environment",
    );
    let extra_roots = match set(CA_BUNDLE_VARIABLE) {
        Some(path) => Some(std::fs::read(&path).map_err(|err| ConfigError::Invalid {
            name: CA_BUNDLE_VARIABLE.into(),
            message: format!("cannot read {path}: {err}"),
        })?),
        None => None,
    };
    let mut config = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(required("AWS_REGION")?))
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .http_client(aws_https_client(extra_roots.as_deref())?);
    config.set_endpoint_url(set("AWS_ENDPOINT_URL"));
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

    fn variables(set: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let set: Vec<(String, String)> = set
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| set.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    const LAMBDA: &[(&str, &str)] = &[
        ("AWS_REGION", "eu-central-1"),
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI"),
        ("AWS_SESSION_TOKEN", "session"),
    ];

    #[test]
    fn the_configuration_is_what_lambda_sets() {
        let config = sdk_config(variables(LAMBDA)).unwrap();
        assert_eq!(config.region().unwrap().as_ref(), "eu-central-1");
        assert_eq!(config.endpoint_url(), None);
        assert!(config.credentials_provider().is_some());
        assert!(config.http_client().is_some());
        let mut emulated = LAMBDA.to_vec();
        emulated.push(("AWS_ENDPOINT_URL", "http://127.0.0.1:5555"));
        let config = sdk_config(variables(&emulated)).unwrap();
        assert_eq!(config.endpoint_url(), Some("http://127.0.0.1:5555"));
    }

    #[test]
    fn a_missing_variable_is_named() {
        for missing in ["AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            let mut set: Vec<_> = LAMBDA
                .iter()
                .filter(|(k, _)| *k != missing)
                .copied()
                .collect();
            let err = sdk_config(variables(&set)).unwrap_err().to_string();
            assert!(err.contains(missing), "{err}");
            set.push((missing, " "));
            let err = sdk_config(variables(&set)).unwrap_err().to_string();
            assert!(err.contains(missing), "blank {missing}: {err}");
        }
        let mut unreadable = LAMBDA.to_vec();
        unreadable.push((CA_BUNDLE_VARIABLE, "/nonexistent/bundle.pem"));
        let err = sdk_config(variables(&unreadable)).unwrap_err().to_string();
        assert!(
            err.contains(CA_BUNDLE_VARIABLE) && err.contains("/nonexistent/bundle.pem"),
            "{err}"
        );
    }

    #[test]
    fn secrets_stay_out_of_the_configurations_debug_text() {
        let config = sdk_config(variables(LAMBDA)).unwrap();
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
            let err = aws_https_client(Some(pem)).unwrap_err().to_string();
            assert!(err.contains(CA_BUNDLE_VARIABLE), "{err}");
            assert!(err.contains(says), "{err}");
        }
    }
}
