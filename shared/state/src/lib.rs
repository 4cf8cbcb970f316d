//! What crmbridge keeps, and nothing that does anything with it: the table
//! keys (one layout, in `keys`), the stored records, sealed credentials
//! (`sealed`), the error type, and the helpers that turn records into store
//! items and back. The pipeline (`crmbridge-engine`) and the admin side
//! (`crmbridge-control`) build on it; it depends on neither, which the
//! compiler enforces.

pub mod error;
pub mod keys;
pub mod records;
pub mod sealed;

use crmbridge_store::Item;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use error::{EngineError, EngineResult, FieldError};
pub use sealed::Keyring;

pub fn decode<T: DeserializeOwned>(item: &Item) -> EngineResult<T> {
    serde_json::from_value(item.body.clone()).map_err(|err| EngineError::Corrupt {
        what: format!("{} / {}", item.pk, item.sk),
        message: err.to_string(),
    })
}

pub fn item<T: Serialize>(key: keys::Key, body: &T) -> EngineResult<Item> {
    let body = serde_json::to_value(body).map_err(|err| EngineError::Corrupt {
        what: format!("{} / {}", key.pk, key.sk),
        message: err.to_string(),
    })?;
    Ok(Item::new(key.pk, key.sk, body))
}

/// A random identifier with a readable prefix (`con_…`, `key_…`).
pub fn random_id(prefix: &str) -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 12];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}_{}", hex::encode(bytes))
}

/// A random secret, URL-safe, 256 bits.
pub fn random_secret() -> String {
    use base64::Engine as _;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(text.as_bytes()))
}
