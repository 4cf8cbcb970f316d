//! Links: which record became which. A run's event subject and every record
//! its steps create (with `link: {name}`) form one group; each member keeps
//! the ids of all the others by name. So a later event about *any* of them
//! — the MoySklad order changing, say — finds the Calltouch deal that the
//! original call created.
//!
//! A run links its records once, when it finishes (whatever the status),
//! not after each step: every member is written once, where linking step
//! by step rewrote every earlier member again for each new one. Within the
//! run, later steps see the links in memory; a run resumed after a crash
//! rebuilds them from its saved steps. Members are written before the
//! subject, so a subject that already holds the whole group proves an
//! earlier finish wrote the members too, and a repeated finish writes
//! nothing.

use std::collections::BTreeMap;

use crmbridge_store::{PutOutcome, StoreError};
use serde::{Deserialize, Serialize};

use crate::records::{RunRecord, StepStatus};
use crate::{Engine, EngineResult, decode, item, keys};

/// A record in some connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordRef {
    pub connection: String,
    pub entity: String,
    pub id: String,
}

impl RecordRef {
    /// The record an event is about.
    pub fn subject_of(event: &crmbridge_mapping::Event) -> Self {
        Self {
            connection: event.connection.clone(),
            entity: event.subject.kind.clone(),
            id: event.subject.id.clone(),
        }
    }
}

/// The links one record holds: link name → the linked record.
pub type LinkSet = BTreeMap<String, RecordRef>;

/// The entity an action works on: `calltouch.deal.create` → `deal`.
pub(crate) fn entity_of(action: &str) -> String {
    action.split('.').nth(1).unwrap_or_default().to_owned()
}

/// The records a run's succeeded steps made (or found) under a link name,
/// read from the steps as saved: the rendered request names the link and
/// the connection, the output the record's id.
pub(crate) fn linked_by(run: &RunRecord) -> LinkSet {
    run.steps
        .iter()
        .filter(|step| step.status == StepStatus::Succeeded)
        .filter_map(|step| {
            let name = step.request.get("link")?.as_str()?;
            let connection = step.request.get("connection")?.as_str()?;
            let id = step.output.get("id")?.as_str()?;
            Some((
                name.to_owned(),
                RecordRef {
                    connection: connection.to_owned(),
                    entity: entity_of(&step.action),
                    id: id.to_owned(),
                },
            ))
        })
        .collect()
}

/// What is known of a record's stored links before merging into them.
enum Known {
    /// Nothing: read it first.
    Unread,
    /// Most likely none (a record this run made): insert without reading.
    Absent,
    /// This set, at this version.
    At(LinkSet, u64),
}

/// A record's stored links as read, with the version they were read at
/// (`None`: none stored), so the run that read them at its start can merge
/// into them when it finishes without reading them again.
#[derive(Debug, Clone, Default)]
pub(crate) struct StoredLinks {
    pub(crate) set: LinkSet,
    pub(crate) version: Option<u64>,
}

impl Engine {
    pub(crate) async fn links_of(&self, record: &RecordRef) -> EngineResult<StoredLinks> {
        let key = keys::links(&record.connection, &record.entity, &record.id);
        Ok(match self.store.get(&key.pk, &key.sk).await? {
            Some(found) => StoredLinks {
                set: decode(&found)?,
                version: Some(found.version),
            },
            None => StoredLinks::default(),
        })
    }

    /// Adds `made` (link name → record) to the group of `subject` (named
    /// `subject_name` from the other side): every member learns about
    /// every other, the subject last. `read` is the subject's links as the
    /// run read them, if it did: they may have changed since, and a write
    /// that finds so reads them again (the write is conditional on the
    /// version read).
    pub(crate) async fn link_group(
        &self,
        subject: &RecordRef,
        subject_name: &str,
        made: &LinkSet,
        read: Option<StoredLinks>,
    ) -> EngineResult<()> {
        if made.is_empty() {
            return Ok(());
        }
        let StoredLinks {
            set: known,
            version,
        } = match read {
            Some(read) => read,
            None => self.links_of(subject).await?,
        };
        let mut group = known.clone();
        group.extend(made.iter().map(|(n, r)| (n.clone(), r.clone())));
        if group == known {
            return Ok(());
        }
        for (member_name, member) in &group {
            let mut theirs: LinkSet = group
                .iter()
                .filter(|(n, _)| *n != member_name)
                .map(|(n, r)| (n.clone(), r.clone()))
                .collect();
            theirs.insert(subject_name.to_owned(), subject.clone());
            let fresh = known.get(member_name) != Some(member);
            let state = if fresh { Known::Absent } else { Known::Unread };
            self.merge_links(member, &theirs, state).await?;
        }
        let state = match version {
            Some(version) => Known::At(known, version),
            None => Known::Absent,
        };
        self.merge_links(subject, &group, state).await
    }

    /// Merges `add` into a record's links. Optimistic: two runs linking
    /// the same record concurrently both land.
    async fn merge_links(
        &self,
        record: &RecordRef,
        add: &LinkSet,
        mut known: Known,
    ) -> EngineResult<()> {
        let key = keys::links(&record.connection, &record.entity, &record.id);
        for _ in 0..10 {
            if let Known::Unread = known {
                known = match self.store.get(&key.pk, &key.sk).await? {
                    None => Known::Absent,
                    Some(existing) => Known::At(decode(&existing)?, existing.version),
                };
            }
            match std::mem::replace(&mut known, Known::Unread) {
                Known::Unread => {}
                Known::Absent => match self.store.put_if_absent(item(key.clone(), add)?).await? {
                    PutOutcome::Inserted => return Ok(()),
                    PutOutcome::Exists(existing) => {
                        known = Known::At(decode(&existing)?, existing.version);
                    }
                },
                Known::At(mut set, version) => {
                    let before = set.clone();
                    set.extend(add.iter().map(|(k, v)| (k.clone(), v.clone())));
                    if set == before {
                        return Ok(());
                    }
                    match self
                        .store
                        .update_if_version(item(key.clone(), &set)?, version)
                        .await
                    {
                        Ok(_) => return Ok(()),
                        Err(StoreError::Conflict { .. }) => continue,
                        Err(err) => return Err(err.into()),
                    }
                }
            }
        }
        Err(StoreError::Conflict {
            pk: key.pk,
            sk: key.sk,
        }
        .into())
    }
}
