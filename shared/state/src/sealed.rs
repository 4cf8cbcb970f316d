//! Credentials at rest: AES-256-GCM under a key the deployment provides.
//!
//! The keyring is configured as `kid:base64key[,kid:base64key…]`; the first
//! key seals, every key opens, so keys rotate by prepending a new one and
//! re-saving connections before the old one is dropped. A sealed value is
//! `v1.<kid>.<nonce>.<ciphertext>` (base64url), bound to its record by
//! associated data so a ciphertext copied onto another connection does not
//! open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::RngCore;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum KeyringError {
    #[error("the encryption keyring is empty; expected kid:base64key[,kid:base64key…]")]
    Empty,
    #[error("encryption key #{index}: {reason}")]
    BadKey { index: usize, reason: String },
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SealError {
    #[error("sealed value is malformed")]
    Malformed,
    #[error("sealed with key '{0}', which is not in the keyring")]
    UnknownKey(String),
    #[error("sealed value does not open with its key (tampered, or sealed for another record)")]
    Unauthentic,
}

pub struct Keyring {
    keys: Vec<(String, Aes256Gcm)>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key ids only: the key bytes never reach a log.
        f.debug_struct("Keyring")
            .field(
                "kids",
                &self.keys.iter().map(|(kid, _)| kid).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Keyring {
    pub fn parse(spec: &str) -> Result<Self, KeyringError> {
        let mut keys = Vec::new();
        for (index, part) in spec
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .enumerate()
        {
            let bad = |reason: &str| KeyringError::BadKey {
                index,
                reason: reason.to_owned(),
            };
            let (kid, encoded) = part
                .split_once(':')
                .ok_or_else(|| bad("expected kid:base64key"))?;
            if kid.is_empty()
                || !kid
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(bad("the key id must be letters, digits, '-' or '_'"));
            }
            let bytes = STANDARD
                .decode(encoded)
                .or_else(|_| URL_SAFE_NO_PAD.decode(encoded))
                .map_err(|_| bad("the key is not base64"))?;
            let cipher =
                Aes256Gcm::new_from_slice(&bytes).map_err(|_| bad("the key must be 32 bytes"))?;
            if keys.iter().any(|(existing, _)| existing == kid) {
                return Err(bad("duplicate key id"));
            }
            keys.push((kid.to_owned(), cipher));
        }
        if keys.is_empty() {
            return Err(KeyringError::Empty);
        }
        Ok(Self { keys })
    }

    /// A fresh keyring spec with one random key, for a first local start.
    pub fn generate_spec(kid: &str) -> String {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        format!("{kid}:{}", STANDARD.encode(key))
    }

    pub fn active_kid(&self) -> &str {
        self.keys
            .first()
            .map(|(kid, _)| kid.as_str())
            .unwrap_or_default()
    }

    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> String {
        let Some((kid, cipher)) = self.keys.first() else {
            return String::new();
        };
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        // Encryption with a valid key and a 12-byte nonce cannot fail for
        // inputs under 64 GiB; an empty string would fail to open loudly.
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .unwrap_or_default();
        format!(
            "v1.{kid}.{}.{}",
            URL_SAFE_NO_PAD.encode(nonce),
            URL_SAFE_NO_PAD.encode(ciphertext)
        )
    }

    pub fn open(&self, sealed: &str, aad: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut parts = sealed.split('.');
        let (Some("v1"), Some(kid), Some(nonce), Some(ciphertext), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(SealError::Malformed);
        };
        let cipher = self
            .keys
            .iter()
            .find(|(k, _)| k == kid)
            .map(|(_, c)| c)
            .ok_or_else(|| SealError::UnknownKey(kid.to_owned()))?;
        let nonce = URL_SAFE_NO_PAD
            .decode(nonce)
            .map_err(|_| SealError::Malformed)?;
        let ciphertext = URL_SAFE_NO_PAD
            .decode(ciphertext)
            .map_err(|_| SealError::Malformed)?;
        if nonce.len() != 12 {
            return Err(SealError::Malformed);
        }
        cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad,
                },
            )
            .map_err(|_| SealError::Unauthentic)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn seal_then_open_round_trips() {
        let ring = Keyring::parse(&Keyring::generate_spec("k1")).unwrap();
        let sealed = ring.seal(b"api-key-123", b"connection:a");
        assert!(!sealed.contains("api-key-123"));
        assert_eq!(ring.open(&sealed, b"connection:a").unwrap(), b"api-key-123");
    }

    #[test]
    fn another_record_cannot_open_it() {
        let ring = Keyring::parse(&Keyring::generate_spec("k1")).unwrap();
        let sealed = ring.seal(b"secret", b"connection:a");
        assert_eq!(
            ring.open(&sealed, b"connection:b"),
            Err(SealError::Unauthentic)
        );
    }

    #[test]
    fn rotation_keeps_old_values_readable() {
        let old = Keyring::generate_spec("old");
        let sealed = Keyring::parse(&old).unwrap().seal(b"secret", b"x");
        let rotated = Keyring::parse(&format!("{},{old}", Keyring::generate_spec("new"))).unwrap();
        assert_eq!(rotated.active_kid(), "new");
        assert_eq!(rotated.open(&sealed, b"x").unwrap(), b"secret");
        assert!(rotated.seal(b"s", b"x").starts_with("v1.new."));
        let without_old = Keyring::parse(&Keyring::generate_spec("new")).unwrap();
        assert_eq!(
            without_old.open(&sealed, b"x"),
            Err(SealError::UnknownKey("old".into()))
        );
    }

    #[test]
    fn bad_specs_are_named() {
        assert_eq!(Keyring::parse("").unwrap_err(), KeyringError::Empty);
        assert!(matches!(
            Keyring::parse("nokid").unwrap_err(),
            KeyringError::BadKey { index: 0, .. }
        ));
        assert!(matches!(
            Keyring::parse("k:AAAA").unwrap_err(),
            KeyringError::BadKey { index: 0, .. }
        ));
        let good = Keyring::generate_spec("a");
        assert!(matches!(
            Keyring::parse(&format!("{good},{good}")).unwrap_err(),
            KeyringError::BadKey { index: 1, .. }
        ));
    }

    #[test]
    fn debug_shows_no_key_material() {
        let spec = Keyring::generate_spec("k1");
        let ring = Keyring::parse(&spec).unwrap();
        let shown = format!("{ring:?}");
        assert!(shown.contains("k1"));
        assert!(!shown.contains(spec.split_once(':').unwrap().1));
    }

    #[test]
    fn tampering_is_detected() {
        let ring = Keyring::parse(&Keyring::generate_spec("k1")).unwrap();
        let sealed = ring.seal(b"secret", b"x");
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(
            ring.open(std::str::from_utf8(&tampered).unwrap(), b"x")
                .is_err()
        );
        assert_eq!(ring.open("v2.k1.a.b", b"x"), Err(SealError::Malformed));
    }
}
