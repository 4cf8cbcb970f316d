//! Event data too large for one bus entry (EventBridge: 256 KB) is stored in
//! parts and replaced by a reference, never cut; dispatch puts it back.
//! Parts are kept below DynamoDB's 400 KB item limit.

use crmbridge_bus::MAX_ENTRY_BYTES;
use crmbridge_mapping::Event;
use crmbridge_store::{Item, Write};
use serde_json::{Value, json};

use crate::{Engine, EngineError, EngineResult, keys};

const REF_KEY: &str = "$crmbridge_stored_data";
/// Data above this many bytes is stored: leaves room for the envelope.
const INLINE_LIMIT: usize = MAX_ENTRY_BYTES - 16 * 1024;
const PART_BYTES: usize = 300 * 1024;

/// Splits text into parts of at most `max` bytes, on character boundaries.
fn split_utf8(text: &str, max: usize) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = rest.len().min(max);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (part, tail) = rest.split_at(end);
        parts.push(part);
        rest = tail;
    }
    parts
}

impl Engine {
    /// Returns the event as it should travel on the bus.
    pub(crate) async fn externalise(&self, event: &Event) -> EngineResult<Event> {
        let text = event.data.to_string();
        if text.len() <= INLINE_LIMIT {
            return Ok(event.clone());
        }
        let expires = event.received_at.timestamp() + self.config.run_ttl_secs;
        let parts = split_utf8(&text, PART_BYTES);
        let id = event.id.as_str();
        let writes = parts
            .iter()
            .enumerate()
            .map(|(n, part)| {
                let key = keys::event_data_part(id, n);
                Write::Put(
                    Item::new(key.pk, key.sk, Value::String((*part).to_owned()))
                        .expiring_at(expires),
                )
            })
            .collect::<Vec<_>>();
        // Parts are written one by one: a transaction would cap the total at
        // 4 MB, and a half-written set is harmless (it is overwritten on the
        // retry, and unreferenced until the event is published).
        for write in writes {
            if let Write::Put(item) = write {
                self.store.put(item).await?;
            }
        }
        let mut travelling = event.clone();
        travelling.data = json!({ REF_KEY: { "parts": parts.len(), "bytes": text.len() } });
        Ok(travelling)
    }

    /// Puts stored data back into an event taken off the bus.
    pub(crate) async fn resolve_data(&self, mut event: Event) -> EngineResult<Event> {
        let Some(parts) = event
            .data
            .get(REF_KEY)
            .and_then(|r| r.get("parts"))
            .and_then(Value::as_u64)
        else {
            return Ok(event);
        };
        let id = event.id.to_string();
        let mut text = String::new();
        for n in 0..parts as usize {
            let key = keys::event_data_part(&id, n);
            let item =
                self.store
                    .get(&key.pk, &key.sk)
                    .await?
                    .ok_or_else(|| EngineError::Corrupt {
                        what: format!("{} / {}", key.pk, key.sk),
                        message: "stored event data is missing (expired?)".into(),
                    })?;
            text.push_str(item.body.as_str().unwrap_or_default());
        }
        event.data = serde_json::from_str(&text).map_err(|err| EngineError::Corrupt {
            what: format!("EVENT#{id} data"),
            message: err.to_string(),
        })?;
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::split_utf8;

    #[test]
    fn splits_on_char_boundaries() {
        let text = "жжжж"; // 2 bytes each
        let parts = split_utf8(text, 3);
        assert_eq!(parts, ["ж", "ж", "ж", "ж"]);
        assert_eq!(parts.concat(), text);
        assert_eq!(split_utf8("abcdef", 4), ["abcd", "ef"]);
        assert!(split_utf8("", 4).is_empty());
    }
}
