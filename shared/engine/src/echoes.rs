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
//! An update whose values are known before the call (MoySklad's order PUT,
//! whose webhook can arrive before we have read the answer) is remembered
//! before it is sent and taken back if the vendor refuses it. Other writes
//! are remembered once the vendor has answered: a change event that
//! overtakes that bookkeeping (within milliseconds of the write) is
//! treated as a person's change. HubSpot delivers its change events
//! seconds after a write, in batches, so for it this is a narrow window,
//! stated rather than closed.

use std::collections::BTreeMap;

use crmbridge_connectors::{Reading, ReportedChange, Written};
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
    /// Versions of the record our writes made and not yet reported back
    /// (vendors whose answer names one), oldest first.
    #[serde(default)]
    versions: Vec<String>,
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
            remember(memory, written);
            memory.run = run.to_owned();
            true
        })
        .await?;
        Ok(())
    }

    /// A write remembered before its call (`intended`) was answered with
    /// the version it made: the version now says which report is ours, and
    /// the values are no longer needed (left, they could later mistake a
    /// person's change back to them for ours).
    pub(crate) async fn settle_write(
        &self,
        connection: &str,
        intended: &Written,
        version: String,
    ) -> EngineResult<()> {
        let key = keys::written(connection, &intended.entity, &intended.id);
        let expires = self.now().timestamp() + MEMORY_SECS;
        self.change_memory(&key, expires, |memory| {
            take_back(memory, intended);
            remember(
                memory,
                &Written {
                    version: Some(version.clone()),
                    ..Written::default()
                },
            );
            true
        })
        .await
    }

    /// Takes back a write remembered before its call when the vendor
    /// refused it: nothing changed, so nothing will be reported.
    pub(crate) async fn forget_write(
        &self,
        connection: &str,
        written: &Written,
    ) -> EngineResult<()> {
        let key = keys::written(connection, &written.entity, &written.id);
        let expires = self.now().timestamp() + MEMORY_SECS;
        self.change_memory(&key, expires, |memory| take_back(memory, written))
            .await
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

/// Adds a write to the memory: its version when the vendor named one,
/// else what it set.
fn remember(memory: &mut WrittenRecord, written: &Written) {
    if let Some(version) = &written.version {
        if !memory.versions.contains(version) {
            memory.versions.push(version.clone());
            if memory.versions.len() > PENDING_PER_PROPERTY {
                memory.versions.remove(0);
            }
        }
        return;
    }
    memory.created |= written.created;
    for (name, value) in &written.properties {
        let pending = memory.properties.entry(name.clone()).or_default();
        pending.push(digest(value));
        if pending.len() > PENDING_PER_PROPERTY {
            pending.remove(0);
        }
    }
}

/// Removes one remembered write's values (the latest of each); whether
/// anything was removed.
fn take_back(memory: &mut WrittenRecord, written: &Written) -> bool {
    let mut changed = false;
    for (name, value) in &written.properties {
        let digest = digest(value);
        if let Some(pending) = memory.properties.get_mut(name)
            && let Some(at) = pending.iter().rposition(|w| *w == digest)
        {
            pending.remove(at);
            changed = true;
            if pending.is_empty() {
                memory.properties.remove(name);
            }
        }
    }
    changed
}

/// Whether a reported change only repeats what crmbridge wrote, taking
/// what it matches out of `memory`.
fn matches_memory(memory: &mut WrittenRecord, change: &ReportedChange) -> bool {
    // A version our write made is ours, whatever the event shows; any
    // other version is matched by value below, which only finds writes
    // still on their way (sent, not yet answered).
    if let Some(version) = &change.version
        && let Some(at) = memory.versions.iter().position(|v| v == version)
    {
        memory.versions.remove(at);
        return true;
    }
    let mut ours = !change.created || memory.created;
    if change.created {
        memory.created = false;
    }
    let mut compared = 0;
    for (name, value) in &change.properties {
        let Some(pending) = memory.properties.get_mut(name) else {
            // A snapshot shows every property; those crmbridge did not
            // write say nothing about whose change it was.
            if change.reading != Reading::Snapshot {
                ours = false;
            }
            continue;
        };
        compared += 1;
        let reported = digest(value);
        match pending.iter().position(|written| *written == reported) {
            // A value reported as it was set matches one write; reports
            // may come in any order.
            Some(at) if change.reading == Reading::Values => {
                pending.remove(at);
            }
            // A value read afterwards is the latest write that reached the
            // vendor: the writes before it (a resent write of the same
            // value among them) were overtaken and will not be reported on
            // their own.
            Some(_) => {
                if let Some(last) = pending.iter().rposition(|written| *written == reported) {
                    pending.drain(..=last);
                }
            }
            None => ours = false,
        }
        if pending.is_empty() {
            memory.properties.remove(name);
        }
    }
    ours && (change.created || compared > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(written: &[(&str, &[&str])]) -> WrittenRecord {
        WrittenRecord {
            created: false,
            properties: written
                .iter()
                .map(|(name, values)| {
                    (
                        (*name).to_owned(),
                        values.iter().map(|v| digest(v)).collect(),
                    )
                })
                .collect(),
            run: "run_1".into(),
            versions: Vec::new(),
        }
    }

    fn change(reading: Reading, properties: &[(&str, &str)]) -> ReportedChange {
        ReportedChange {
            created: false,
            properties: properties
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            reading,
            version: None,
        }
    }

    #[test]
    fn values_match_one_write_each_in_any_order() {
        let mut m = memory(&[("status", &["a", "b"])]);
        assert!(matches_memory(
            &mut m,
            &change(Reading::Values, &[("status", "b")])
        ));
        assert!(matches_memory(
            &mut m,
            &change(Reading::Values, &[("status", "a")])
        ));
        // Both used up: a person setting "a" again is a person.
        assert!(!matches_memory(
            &mut m,
            &change(Reading::Values, &[("status", "a")])
        ));
        assert!(m.properties.is_empty());
    }

    #[test]
    fn a_property_never_written_is_a_persons_change_unless_a_snapshot() {
        let mut m = memory(&[("status", &["a"])]);
        let both = [("status", "a"), ("comment", "hi")];
        assert!(!matches_memory(
            &mut m.clone(),
            &change(Reading::Values, &both)
        ));
        assert!(!matches_memory(
            &mut m.clone(),
            &change(Reading::Current, &both)
        ));
        assert!(matches_memory(&mut m, &change(Reading::Snapshot, &both)));
        // Nothing left to compare: the next snapshot is a person's.
        assert!(!matches_memory(&mut m, &change(Reading::Snapshot, &both)));
    }

    #[test]
    fn a_value_read_later_uses_up_the_writes_it_overtook() {
        let mut m = memory(&[("state", &["s1", "s2"])]);
        assert!(matches_memory(
            &mut m,
            &change(Reading::Current, &[("state", "s2")])
        ));
        // s1 was overtaken: a later change to s1 is a person's.
        assert!(!matches_memory(
            &mut m,
            &change(Reading::Current, &[("state", "s1")])
        ));
    }

    #[test]
    fn a_version_our_write_made_is_ours_whatever_it_shows() {
        let mut m = memory(&[]);
        remember(
            &mut m,
            &Written {
                version: Some("v2".into()),
                ..Written::default()
            },
        );
        let at = |version: &str, state: &str| ReportedChange {
            version: Some(version.into()),
            ..change(Reading::Current, &[("state", state)])
        };
        // A person's change after ours (v3) is a person's; ours (v2) is
        // ours even when read after the person's change.
        assert!(!matches_memory(&mut m, &at("v3", "s9")));
        assert!(matches_memory(&mut m, &at("v2", "s9")));
        assert!(!matches_memory(&mut m, &at("v2", "s9")));
    }

    #[test]
    fn a_settled_write_leaves_no_value_behind() {
        let mut m = memory(&[]);
        let intended = Written {
            properties: vec![("state".into(), "s1".into())],
            ..Written::default()
        };
        remember(&mut m, &intended);
        // Before the answer: matched by value.
        assert!(matches_memory(
            &mut m.clone(),
            &change(Reading::Current, &[("state", "s1")])
        ));
        take_back(&mut m, &intended);
        assert!(m.properties.is_empty());
        // A person setting s1 later is a person.
        assert!(!matches_memory(
            &mut m,
            &change(Reading::Current, &[("state", "s1")])
        ));
    }

    #[test]
    fn a_different_value_is_a_persons_change() {
        let mut m = memory(&[("state", &["s1"])]);
        for reading in [Reading::Values, Reading::Current, Reading::Snapshot] {
            assert!(!matches_memory(
                &mut m.clone(),
                &change(reading, &[("state", "s9")])
            ));
        }
        assert!(!matches_memory(&mut m, &change(Reading::Values, &[])));
    }
}
