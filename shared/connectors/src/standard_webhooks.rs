//! Standard Webhooks signatures (https://www.standardwebhooks.com): how a
//! sender proves a delivery is its own and recent. The same signer serves
//! inbound verification (a `generic` connection that requires signatures)
//! and what crmbridge itself sends.
//!
//! - Headers: `webhook-id` (the message id), `webhook-timestamp` (Unix
//!   seconds), `webhook-signature` (space-separated `v1,<base64>` entries;
//!   several during a secret rotation).
//! - Signed content: `{id}.{timestamp}.{body}`, HMAC-SHA256, base64.
//! - Secrets: `whsec_` + base64 of the key bytes (24 to 64 bytes).
//! - A timestamp more than five minutes from now either way is refused: a
//!   captured delivery cannot be replayed later.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// How far a delivery's timestamp may be from now, either way.
pub const TOLERANCE_SECS: i64 = 5 * 60;
const PREFIX: &str = "whsec_";
const MIN_KEY: usize = 24;
const MAX_KEY: usize = 64;

/// A signing key.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(Vec<u8>);

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(***)")
    }
}

/// Why a secret or a delivery was refused: the part at fault (a header, or
/// the secret) and what was wrong, never the secret or a signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SignatureError {
    pub field: &'static str,
    pub message: String,
}

fn refused(field: &'static str, message: impl Into<String>) -> SignatureError {
    SignatureError {
        field,
        message: message.into(),
    }
}

impl SigningSecret {
    /// Reads `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Self, SignatureError> {
        let encoded = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or_else(|| refused("secret", format!("a signing secret starts with {PREFIX}")))?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| refused("secret", format!("after {PREFIX} comes base64")))?;
        if !(MIN_KEY..=MAX_KEY).contains(&key.len()) {
            return Err(refused(
                "secret",
                format!(
                    "the key is {} bytes; {MIN_KEY} to {MAX_KEY} are allowed",
                    key.len()
                ),
            ));
        }
        Ok(Self(key))
    }

    /// A new random 32-byte secret, as `whsec_<base64>`.
    pub fn generate() -> String {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        format!("{PREFIX}{}", STANDARD.encode(key))
    }

    /// The `v1,<base64>` signature of one delivery.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let digest = self
            .mac(id, &timestamp.to_string(), body)
            .map(|mac| mac.finalize().into_bytes());
        format!(
            "v1,{}",
            digest.map(|d| STANDARD.encode(d)).unwrap_or_default()
        )
    }

    /// The MAC over `{id}.{timestamp}.{body}`, the timestamp as its header
    /// spells it. `None` only if HMAC refused the key, which it never does
    /// (any length is a key).
    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> Option<Hmac<Sha256>> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).ok()?;
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        Some(mac)
    }
}

/// The three headers of a signed delivery, for the secrets given (one
/// signature each: several while a secret is being rotated).
pub fn signature_headers(
    secrets: &[SigningSecret],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    let signatures: Vec<String> = secrets
        .iter()
        .map(|secret| secret.sign(id, timestamp, body))
        .collect();
    vec![
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signatures.join(" ")),
    ]
}

/// Checks a delivery: the headers are there, the timestamp is within
/// [`TOLERANCE_SECS`] of `now`, and one `v1` signature is right (compared
/// in constant time). `header` looks a header up by lowercase name.
pub fn verify<'a>(
    secret: &SigningSecret,
    header: impl Fn(&str) -> Option<&'a str>,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let id = header("webhook-id")
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| refused("headers.webhook-id", "missing"))?;
    let stamp = header("webhook-timestamp")
        .ok_or_else(|| refused("headers.webhook-timestamp", "missing"))?
        .trim();
    let timestamp: i64 = stamp
        .parse()
        .map_err(|_| refused("headers.webhook-timestamp", "not whole seconds since 1970"))?;
    if now.abs_diff(timestamp) > TOLERANCE_SECS.unsigned_abs() {
        return Err(refused(
            "headers.webhook-timestamp",
            "more than five minutes from now: a stale or replayed delivery is refused",
        ));
    }
    let given = header("webhook-signature")
        .ok_or_else(|| refused("headers.webhook-signature", "missing"))?;
    let expected = secret.mac(id, stamp, body);
    // `verify_slice` compares in constant time.
    let matches = given
        .split_whitespace()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|encoded| STANDARD.decode(encoded).ok())
        .any(|signature| {
            expected
                .clone()
                .is_some_and(|mac| mac.verify_slice(&signature).is_ok())
        });
    if matches {
        Ok(())
    } else {
        Err(refused(
            "headers.webhook-signature",
            "no v1 signature matches this connection's signing secret",
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The example of the specification's reference libraries: secret,
    /// message id, timestamp and payload, and the signature they give.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn headers(signature: &str, timestamp: i64) -> Vec<(String, String)> {
        vec![
            ("webhook-id".into(), ID.into()),
            ("webhook-timestamp".into(), timestamp.to_string()),
            ("webhook-signature".into(), signature.into()),
        ]
    }

    fn check(headers: &[(String, String)], now: i64) -> Result<(), SignatureError> {
        let secret = SigningSecret::parse(SECRET).unwrap();
        verify(
            &secret,
            |name| {
                headers
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str())
            },
            BODY,
            now,
        )
    }

    #[test]
    fn the_reference_example_signs_and_verifies() {
        let secret = SigningSecret::parse(SECRET).unwrap();
        assert_eq!(secret.sign(ID, TIMESTAMP, BODY), SIGNATURE);
        assert_eq!(
            check(&headers(SIGNATURE, TIMESTAMP), TIMESTAMP + 10),
            Ok(())
        );
        // Rotation: any one of several signatures may match.
        let both = format!("v1,AAAA {SIGNATURE}");
        assert_eq!(check(&headers(&both, TIMESTAMP), TIMESTAMP), Ok(()));
    }

    #[test]
    fn wrong_missing_or_stale_deliveries_name_the_header() {
        let cases = [
            (
                headers("v1,Zm9v", TIMESTAMP),
                TIMESTAMP,
                "headers.webhook-signature",
            ),
            (
                headers("v2,whatever", TIMESTAMP),
                TIMESTAMP,
                "headers.webhook-signature",
            ),
            (
                headers(SIGNATURE, TIMESTAMP),
                TIMESTAMP + TOLERANCE_SECS + 1,
                "headers.webhook-timestamp",
            ),
            (
                headers(SIGNATURE, TIMESTAMP),
                TIMESTAMP - TOLERANCE_SECS - 1,
                "headers.webhook-timestamp",
            ),
            (
                headers(SIGNATURE, TIMESTAMP)[1..].to_vec(),
                TIMESTAMP,
                "headers.webhook-id",
            ),
            (
                headers(SIGNATURE, TIMESTAMP)[..2].to_vec(),
                TIMESTAMP,
                "headers.webhook-signature",
            ),
        ];
        for (headers, now, field) in cases {
            let err = check(&headers, now).unwrap_err();
            assert_eq!(err.field, field, "{headers:?}: {err}");
            assert!(!err.to_string().contains("MfKQ9r8"), "{err}");
        }
    }

    #[test]
    fn secrets_are_checked_and_generated_in_the_standard_form() {
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_!!!",
            "whsec_AAAA",
        ] {
            assert_eq!(
                SigningSecret::parse(bad).unwrap_err().field,
                "secret",
                "{bad}"
            );
        }
        let fresh = SigningSecret::generate();
        assert!(fresh.starts_with("whsec_"));
        assert!(SigningSecret::parse(&fresh).is_ok());
        assert_ne!(fresh, SigningSecret::generate());
        assert_eq!(
            format!("{:?}", SigningSecret::parse(&fresh).unwrap()),
            "SigningSecret(***)"
        );
    }
}
