//! Two-way sync without echoes. Every record a step writes is remembered
//! with what the write set on it (a digest of each property's value, and
//! whether the write made the record). When the vendor then reports a
//! change of that record, each reported property is compared with the
//! memory and taken out of it: a change that only repeats what crmbridge
//! wrote is its own echo and starts no run; a change to another value —
//! a person editing right after us — flows as usual.
//!
//! Each write of a property is remembered until its report comes back, so
//! two quick writes (two edits of one contact a second apart) are two
//! echoes, whichever order the vendor reports them in. A report is matched
//! with one remembered write and that write forgotten, which keeps a
//! later, genuine edit back to a value we wrote from being mistaken for an
//! echo. The memory lives a day: vendors report changes within seconds.
//!
//! The memory is written once the vendor has answered: a change event that
//! overtakes our own bookkeeping (delivered within milliseconds of the
//! write) is treated as a person's change. Vendors deliver change events
//! seconds after a write (HubSpot batches them), so this is a narrow
//! window, stated rather than closed.

use std::collections::BTreeMap;

use crmbridge_connectors::{ReportedChange, Written};
use crmbridge_mapping::Event;
use crmbridge_store::{PutOutcome, StoreError};
use serde::{Deserialize, Serialize};

use crate::{Engine, EngineResult, decode, item, keys, sha256_hex};

/// How long a write is remembered.
const MEMORY_SECS: i64 = 24 * 3600;
/// Writes of one property remembered at once; older ones are dropped.
const PENDING_PER_PROPERTY: usize = 16;

/// What crmbridge wrote on one record and not yet seen come back.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct WrittenRecord {
    /// The write made the record, and its creation was not reported yet.
    #[serde(default)]
    created: bool,
    /// Property → digests of the values written and not yet reported
    /// back, oldest first (at most [`PENDING_PER_PROPERTY`]).
    #[serde(default)]
    properties: BTreeMap<String, Vec<String>>,
    /// The run that wrote last, for the outcome of a dropped echo.
    #[serde(default)]
    run: String,
}

fn digest(value: &str) -> String {
    sha256_hex(value.trim())
}

impl Engine {
    /// Remembers what a step wrote on a record.
    pub(crate) async fn remember_write(
        &self,
        connection: &str,
        written: &Written,
        run: &str,
    ) -> EngineResult<()> {
        let key = keys::written(connection, &written.entity, &written.id);
        let expires = self.now().timestamp() + MEMORY_SECS;
        self.change_memory(&key, expires, |memory| {
            memory.created |= written.created;
            for (name, value) in &written.properties {
                let pending = memory.properties.entry(name.clone()).or_default();
                pending.push(digest(value));
                if pending.len() > PENDING_PER_PROPERTY {
                    pending.remove(0);
                }
            }
            memory.run = run.to_owned();
            true
        })
        .await?;
        Ok(())
    }

    /// Whether the event only reports back what crmbridge wrote; the run
    /// that wrote it, if so. What the event reports is taken out of the
    /// memory either way.
    pub(crate) async fn echo_of(
        &self,
        event: &Event,
        change: &ReportedChange,
    ) -> EngineResult<Option<String>> {
        let key = keys::written(&event.connection, &event.subject.kind, &event.subject.id);
        let expires = self.now().timestamp() + MEMORY_SECS;
        // An import reads the record as it is: it is not one of the
        // vendor's reports, so it matches the memory without using it up
        // (the live report that follows is an echo too).
        let consume = event.data["imported"] != serde_json::Value::Bool(true);
        let mut echo = None;
        self.change_memory(&key, expires, |memory| {
            // Decided afresh on every attempt of the versioned write: a
            // decision from an attempt that lost the race does not count.
            let ours = if consume {
                matches_memory(memory, change)
            } else {
                matches_memory(&mut memory.clone(), change)
            };
            echo = ours.then(|| memory.run.clone());
            consume
        })
        .await?;
        Ok(echo)
    }

    /// Reads, changes and writes back a record's memory with a version
    /// check (two runs about one record may race); nothing is created for
    /// a record crmbridge never wrote.
    async fn change_memory(
        &self,
        key: &keys::Key,
        expires: i64,
        mut change: impl FnMut(&mut WrittenRecord) -> bool,
    ) -> EngineResult<()> {
        for _ in 0..10 {
            let found = self.store.get(&key.pk, &key.sk).await?;
            let (mut memory, version) = match &found {
                Some(existing) => (decode::<WrittenRecord>(existing)?, Some(existing.version)),
                None => (WrittenRecord::default(), None),
            };
            let before_empty = found.is_none();
            if !change(&mut memory) {
                return Ok(());
            }
            let fresh = item(key.clone(), &memory)?.expiring_at(expires);
            match version {
                None => {
                    // Nothing remembered and nothing to remember: done.
                    if before_empty && !memory.created && memory.properties.is_empty() {
                        return Ok(());
                    }
                    if let PutOutcome::Inserted = self.store.put_if_absent(fresh).await? {
                        return Ok(());
                    }
                }
                Some(version) => match self.store.update_if_version(fresh, version).await {
                    Ok(_) => return Ok(()),
                    Err(StoreError::Conflict { .. }) => {}
                    Err(err) => return Err(err.into()),
                },
            }
        }
        tracing::warn!(pk = %key.pk, "the write memory kept changing under us; left as it was");
        Ok(())
    }
}

/// Whether a reported change only repeats what crmbridge wrote, taking
/// what it matches out of `memory`.
fn matches_memory(memory: &mut WrittenRecord, change: &ReportedChange) -> bool {
    let mut ours = !change.created || memory.created;
    if change.created {
        memory.created = false;
    }
    for (name, value) in &change.properties {
        let reported = digest(value);
        let pending = memory.properties.entry(name.clone()).or_default();
        match pending.iter().position(|written| *written == reported) {
            Some(at) => {
                pending.remove(at);
            }
            None => ours = false,
        }
        if pending.is_empty() {
            memory.properties.remove(name);
        }
    }
    ours && (change.created || !change.properties.is_empty())
}
