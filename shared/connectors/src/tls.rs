//! The cryptography behind every TLS connection a crmbridge process makes:
//! rustls with ring, to vendors (reqwest) and to AWS (the SDK's client,
//! built in crmbridge-runtime) alike.
//!
//! Why ring and not aws-lc, rustls' and the AWS SDK's default: each Lambda
//! bootstrap is zipped and loaded at every cold start, and aws-lc is about
//! 0.24 MiB of each zip more than ring. Both give TLS 1.2 and 1.3 with the
//! X25519 and P-256 key exchanges and the AES-GCM and ChaCha20 suites that
//! DynamoDB, EventBridge and the vendors' APIs negotiate. What ring lacks
//! is the post-quantum hybrid key exchange (X25519MLKEM768) and a FIPS
//! validated module: a deployment that must have either switches three
//! places together: the provider here, the SDK client's `CryptoMode` in
//! crmbridge-runtime's `lambda_sdk`, and the `rustls-ring` feature of
//! `aws-smithy-http-client` in the workspace manifest.
//!
//! reqwest is built without a provider of its own and takes the process's
//! default, so it is installed before the first client is built.

use std::sync::Once;

/// Makes ring the process's rustls provider, once. A provider installed
/// before (a test harness's) is kept: rustls allows one per process.
pub fn install_crypto_provider() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        // Err only when a provider is installed already, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::path::{Path, PathBuf};

    use rustls::crypto::CryptoProvider;

    #[test]
    fn the_installed_provider_is_ring() {
        super::install_crypto_provider();
        super::install_crypto_provider();
        let names = |provider: &CryptoProvider| {
            provider
                .kx_groups
                .iter()
                .map(|group| group.name())
                .collect::<Vec<_>>()
        };
        let installed = CryptoProvider::get_default().expect("a provider is installed");
        assert_eq!(
            names(installed),
            names(&rustls::crypto::ring::default_provider())
        );
    }

    fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, into);
            } else if path.extension().is_some_and(|e| e == "rs") {
                into.push(path);
            }
        }
    }

    /// reqwest is built without a provider of its own: a client built
    /// anywhere but `client.rs` (which installs ring first) would panic in
    /// a release build. The tests cannot see that panic (the fakes give
    /// reqwest a provider of its own), so this looks at the sources.
    #[test]
    fn only_the_vendor_client_module_builds_reqwest_clients() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut files = Vec::new();
        for group in ["shared", "functions"] {
            for krate in std::fs::read_dir(root.join(group)).unwrap() {
                let src = krate.unwrap().path().join("src");
                if src.is_dir() {
                    rust_files(&src, &mut files);
                }
            }
        }
        assert!(files.len() > 50, "found only {} files", files.len());
        let builds = ["reqwest::Client::", "ClientBuilder::new", "reqwest::get("];
        let offenders: Vec<_> = files
            .iter()
            .filter(|path| !path.ends_with("connectors/src/client.rs"))
            .filter(|path| !path.ends_with("connectors/src/tls.rs"))
            .filter(|path| {
                let text = std::fs::read_to_string(path).unwrap();
                builds.iter().any(|b| text.contains(b))
            })
            .collect();
        assert!(
            offenders.is_empty(),
            "reqwest clients built outside shared/connectors/src/client.rs: {offenders:?}"
        );
    }
}
