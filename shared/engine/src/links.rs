//! Links: which record became which. A run's event subject and every record
//! its steps create (with `link: {name}`) form one group; each member keeps
//! the ids of all the others by name. So a later event about *any* of them
//! — the MoySklad order changing, say — finds the Calltouch deal that the
//! original call created.

use std::collections::BTreeMap;

use crmbridge_store::{PutOutcome, StoreError};
use serde::{Deserialize, Serialize};

use crate::{Engine, EngineResult, decode, item, keys};

/// A record in some connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordRef {
    pub connection: String,
    pub entity: String,
    pub id: String,
}

/// The links one record holds: link name → the linked record.
pub type LinkSet = BTreeMap<String, RecordRef>;

impl Engine {
    pub(crate) async fn links_of(&self, record: &RecordRef) -> EngineResult<LinkSet> {
        let key = keys::links(&record.connection, &record.entity, &record.id);
        Ok(self
            .read::<LinkSet>(&key)
            .await?
            .map(|(set, _)| set)
            .unwrap_or_default())
    }

    /// Records `name → target` in the group of `subject` (named
    /// `subject_name` from the other side).
    pub(crate) async fn link(
        &self,
        subject: &RecordRef,
        subject_name: &str,
        name: &str,
        target: &RecordRef,
    ) -> EngineResult<()> {
        let mut group = self.links_of(subject).await?;
        group.insert(name.to_owned(), target.clone());
        self.merge_links(subject, &group).await?;
        // Every member learns about every other (and about the subject).
        for (member_name, member) in &group {
            let mut theirs: LinkSet = group
                .iter()
                .filter(|(n, _)| *n != member_name)
                .map(|(n, r)| (n.clone(), r.clone()))
                .collect();
            theirs.insert(subject_name.to_owned(), subject.clone());
            self.merge_links(member, &theirs).await?;
        }
        Ok(())
    }

    async fn merge_links(&self, record: &RecordRef, add: &LinkSet) -> EngineResult<()> {
        let key = keys::links(&record.connection, &record.entity, &record.id);
        // Optimistic merge: two runs linking the same record concurrently
        // both land.
        for _ in 0..10 {
            match self.store.get(&key.pk, &key.sk).await? {
                None => {
                    if let PutOutcome::Inserted =
                        self.store.put_if_absent(item(key.clone(), add)?).await?
                    {
                        return Ok(());
                    }
                }
                Some(existing) => {
                    let mut set: LinkSet = decode(&existing)?;
                    let before = set.clone();
                    set.extend(add.iter().map(|(k, v)| (k.clone(), v.clone())));
                    if set == before {
                        return Ok(());
                    }
                    match self
                        .store
                        .update_if_version(item(key.clone(), &set)?, existing.version)
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
