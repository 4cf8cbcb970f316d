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
//! validated module: a deployment that must have either can switch the
//! provider here and the `rustls-ring` feature of `aws-smithy-http-client`
//! in the workspace manifest.
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
