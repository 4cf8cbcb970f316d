//! The Lambda functions' AWS HTTPS client trusts Amazon Trust Services and
//! `AWS_CA_BUNDLE`, nothing else: checked against a real TLS endpoint on
//! loopback whose certificate comes from a test authority (`tests/tls/`,
//! valid until 2126).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TEST_AUTHORITY: &[u8] = include_bytes!("tls/ca.pem");

/// A DynamoDB look-alike over TLS: answers every request with an empty
/// `ListTables` reply and counts the requests that got through a handshake.
struct TlsEndpoint {
    port: u16,
    requests: Arc<AtomicUsize>,
}

async fn tls_endpoint() -> TlsEndpoint {
    let chain = CertificateDer::pem_slice_iter(include_bytes!("tls/localhost.pem"))
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(include_bytes!("tls/localhost.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let counted = counted.clone();
            tokio::spawn(async move {
                // A client that does not trust us ends the handshake here.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let body = br#"{"TableNames":[]}"#;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tls.write_all(head.as_bytes()).await;
                let _ = tls.write_all(body).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    TlsEndpoint { port, requests }
}

fn dynamodb(endpoint: &TlsEndpoint, extra: Option<&[u8]>) -> aws_sdk_dynamodb::Client {
    let https = crmbridge_runtime::lambda_sdk::aws_https_client(
        crmbridge_runtime::lambda_sdk::Trust::AmazonTrustServices,
        extra,
    )
    .unwrap();
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::for_tests())
        .endpoint_url(format!("https://localhost:{}", endpoint.port))
        .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled())
        .http_client(https)
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

#[tokio::test]
async fn an_endpoint_outside_amazon_trust_services_is_refused() {
    let endpoint = tls_endpoint().await;
    let err = dynamodb(&endpoint, None)
        .list_tables()
        .send()
        .await
        .expect_err("a certificate from another authority must not be trusted");
    let chain = format!("{:?}", error_chain(&err));
    assert!(chain.contains("UnknownIssuer"), "{chain}");
    assert_eq!(endpoint.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_root_from_aws_ca_bundle_is_trusted_as_well() {
    let endpoint = tls_endpoint().await;
    let tables = dynamodb(&endpoint, Some(TEST_AUTHORITY))
        .list_tables()
        .send()
        .await
        .unwrap();
    assert!(tables.table_names().is_empty());
    assert_eq!(endpoint.requests.load(Ordering::SeqCst), 1);
}

/// The error and every source under it, as text.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut chain = vec![format!("{err:?}")];
    let mut source = err.source();
    while let Some(next) = source {
        chain.push(format!("{next:?}"));
        source = next.source();
    }
    chain
}
