//! The embedded store's cache of single-item reads.
//!
//! `crmbridge serve` reads the same few items for every event (the
//! webhook's connection, the tenant's configuration stamp), and each read
//! through SQLite after a commit reloads the pages that commit changed: a
//! profile under load showed those reloads as the largest part of the
//! store's CPU. Only this process writes the file (serve holds the data
//! directory's lock, and every write goes through the one writer thread),
//! so the writer knows every key that changes and can keep a cache exact.
//!
//! Exact means: a read never returns a value older than one a write was
//! acknowledged for before the read began, nor older than one another read
//! already returned. Three rules give that:
//!
//! - Before the writer commits a batch, it marks every key the batch wrote
//!   as *being written* and drops their entries; it unmarks them only
//!   after the commit. A marked key is read from SQLite (which shows the
//!   commit the moment it happens) and not cached.
//! - A read that misses remembers the cache's generation before it goes to
//!   SQLite. Every commit's marking bumps the generation, and the value
//!   read is cached only if the generation has not moved: a read that
//!   began before a commit may have seen the old value, so it must not
//!   store it after the commit has dropped that key.
//! - An expired item is absent on a hit exactly as on a read.
//!
//! The cache is bounded by an estimate of the memory its entries take,
//! absences included (a key that does not exist is named by whoever asks:
//! a wrong API key, a made-up webhook path); when a new entry would pass
//! the bound, it starts empty again (the hot keys come back on their next
//! read).

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use crate::Item;

/// The most memory the cache's entries may take, as [`cost`] estimates it.
const MAX_COST: usize = 8 * 1024 * 1024;
/// A larger body is never cached (a run with its steps, not configuration).
const MAX_ENTRY_BYTES: usize = 64 * 1024;
/// What an entry takes beyond its key and body: the map's slot, the
/// item's fields, allocation headers.
const ENTRY_OVERHEAD: usize = 128;

/// What a read found in the cache.
pub(crate) enum Lookup {
    /// The key's value, exact: `None` for no live item.
    Hit(Option<Item>),
    /// Not cached: read SQLite, then offer the value back with this ticket.
    Miss(ReadTicket),
    /// The key is being written: read SQLite and do not cache.
    Bypass,
}

/// The generation a missed read started at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadTicket(u64);

#[derive(Default)]
pub(crate) struct ReadCache {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    entries: HashMap<Key, Entry>,
    being_written: HashSet<Key>,
    generation: u64,
    cost: usize,
}

/// `pk`'s length, `pk`, then `sk`: one string per key, unambiguous
/// whatever characters the keys hold.
pub(crate) type Key = String;

struct Entry {
    /// `None`: no live item.
    found: Option<Item>,
    cost: usize,
}

/// An entry's memory, estimated: the key twice (the map's and the item's
/// pk and sk), and the body twice its text (a decoded JSON value takes
/// more than its text).
fn cost(key: &str, body_bytes: usize) -> usize {
    ENTRY_OVERHEAD + 2 * key.len() + 2 * body_bytes
}

pub(crate) fn key(pk: &str, sk: &str) -> Key {
    use std::fmt::Write as _;
    let mut key = String::with_capacity(pk.len() + sk.len() + 8);
    let _ = write!(key, "{}:{pk}{sk}", pk.len());
    key
}

impl ReadCache {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section below leaves the state consistent at each
        // step, so a panic elsewhere while holding it cannot tear it.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    pub(crate) fn lookup(&self, pk: &str, sk: &str, now: i64) -> Lookup {
        let key = key(pk, sk);
        let state = self.state();
        if state.being_written.contains(&key) {
            return Lookup::Bypass;
        }
        match state.entries.get(&key) {
            Some(entry) => Lookup::Hit(
                entry
                    .found
                    .as_ref()
                    .filter(|item| item.is_live(now))
                    .cloned(),
            ),
            None => Lookup::Miss(ReadTicket(state.generation)),
        }
    }

    /// Offers what a missed read found (`bytes`: its body's length).
    /// Kept only if no commit was marked since the read's ticket.
    pub(crate) fn fill(
        &self,
        ticket: ReadTicket,
        pk: &str,
        sk: &str,
        found: Option<(&Item, usize)>,
    ) {
        if found.is_some_and(|(_, bytes)| bytes > MAX_ENTRY_BYTES) {
            return;
        }
        let mut state = self.state();
        if state.generation != ticket.0 {
            return;
        }
        let key = key(pk, sk);
        if state.being_written.contains(&key) {
            return;
        }
        let entry = Entry {
            cost: cost(&key, found.map_or(0, |(_, bytes)| bytes)),
            found: found.map(|(item, _)| item.clone()),
        };
        if state.cost + entry.cost > MAX_COST {
            state.entries.clear();
            state.cost = 0;
        }
        state.cost += entry.cost;
        if let Some(replaced) = state.entries.insert(key, entry) {
            state.cost -= replaced.cost;
        }
    }

    /// Before a commit: the keys it wrote are read from SQLite until
    /// [`ReadCache::committed`], and no read begun earlier may cache.
    pub(crate) fn committing(&self, keys: &[Key]) {
        if keys.is_empty() {
            return;
        }
        let mut state = self.state();
        state.generation += 1;
        for key in keys {
            if let Some(dropped) = state.entries.remove(key) {
                state.cost -= dropped.cost;
            }
            state.being_written.insert(key.clone());
        }
    }

    /// After the commit (or its failure): the keys may be cached again.
    pub(crate) fn committed(&self, keys: &[Key]) {
        if keys.is_empty() {
            return;
        }
        let mut state = self.state();
        for key in keys {
            state.being_written.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn item(version: u64, expires_at: Option<i64>) -> Item {
        Item {
            pk: "T".into(),
            sk: "C".into(),
            version,
            expires_at,
            body: json!({"v": version}),
        }
    }

    fn hit(cache: &ReadCache) -> Option<Option<u64>> {
        match cache.lookup("T", "C", 100) {
            Lookup::Hit(found) => Some(found.map(|item| item.version)),
            _ => None,
        }
    }

    /// The ticket of a read of `T` / `sk` that missed.
    fn ticket_for(cache: &ReadCache, sk: &str) -> ReadTicket {
        match cache.lookup("T", sk, 100) {
            Lookup::Miss(ticket) => ticket,
            _ => panic!("expected a miss of {sk}"),
        }
    }

    fn ticket(cache: &ReadCache) -> ReadTicket {
        ticket_for(cache, "C")
    }

    /// Whether a read of `T` / `C` would go to SQLite and may fill.
    fn misses(cache: &ReadCache) -> bool {
        matches!(cache.lookup("T", "C", 100), Lookup::Miss(_))
    }

    /// A whole commit of `T` / `sk`, marked and unmarked.
    fn commit(cache: &ReadCache, sk: &str) {
        let keys = [key("T", sk)];
        cache.committing(&keys);
        cache.committed(&keys);
    }

    #[test]
    fn a_filled_read_is_a_hit_until_its_key_is_committed() {
        let cache = ReadCache::default();
        let read = ticket(&cache);
        cache.fill(read, "T", "C", Some((&item(1, None), 10)));
        assert_eq!(hit(&cache), Some(Some(1)));
        let keys = [key("T", "C")];
        cache.committing(&keys);
        assert!(matches!(cache.lookup("T", "C", 100), Lookup::Bypass));
        cache.committed(&keys);
        assert!(misses(&cache));
    }

    #[test]
    fn a_read_begun_before_a_commit_is_not_cached_after_it() {
        let cache = ReadCache::default();
        // The read saw version 1 in SQLite; then a commit wrote version 2.
        let read = ticket(&cache);
        commit(&cache, "C");
        cache.fill(read, "T", "C", Some((&item(1, None), 10)));
        assert!(misses(&cache), "the old value must not be cached");
        // Even a commit of another key: the read cannot know which it saw.
        let read = ticket(&cache);
        let other = [key("T", "other")];
        cache.committing(&other);
        cache.fill(read, "T", "C", Some((&item(1, None), 10)));
        cache.committed(&other);
        assert!(misses(&cache));
    }

    #[test]
    fn a_read_of_a_key_being_written_is_not_cached() {
        let cache = ReadCache::default();
        let keys = [key("T", "C")];
        cache.committing(&keys);
        // A ticket from another key, taken after the marking.
        let read = ticket_for(&cache, "other");
        cache.fill(read, "T", "C", Some((&item(1, None), 10)));
        cache.committed(&keys);
        assert!(misses(&cache));
    }

    #[test]
    fn absence_is_cached_and_expiry_is_checked_on_every_hit() {
        let cache = ReadCache::default();
        let read = ticket(&cache);
        cache.fill(read, "T", "C", None);
        assert_eq!(hit(&cache), Some(None));

        let cache = ReadCache::default();
        let read = ticket(&cache);
        cache.fill(read, "T", "C", Some((&item(1, Some(150)), 10)));
        assert_eq!(hit(&cache), Some(Some(1)), "live at 100");
        assert!(
            matches!(cache.lookup("T", "C", 150), Lookup::Hit(None)),
            "expired at 150"
        );
    }

    fn fill_absent(cache: &ReadCache, sk: &str) {
        let read = ticket_for(cache, sk);
        cache.fill(read, "T", sk, None);
    }

    #[test]
    fn the_cache_is_bounded_by_its_entries_memory_absences_included() {
        let cache = ReadCache::default();
        let read = ticket(&cache);
        cache.fill(read, "T", "C", Some((&item(1, None), MAX_ENTRY_BYTES + 1)));
        assert!(misses(&cache));

        // Keys that do not exist, as many as a caller cares to name.
        let mut named = 0;
        loop {
            fill_absent(&cache, &format!("missing-{named}"));
            named += 1;
            let state = cache.state();
            assert!(state.cost <= MAX_COST, "{} over the bound", state.cost);
            if state.entries.len() < named {
                break;
            }
        }
        let state = cache.state();
        assert_eq!(state.entries.len(), 1, "started again at the bound");
        assert_eq!(
            state.cost,
            cost(&key("T", &format!("missing-{}", named - 1)), 0)
        );
        drop(state);

        let read = ticket(&cache);
        cache.fill(read, "T", "C", Some((&item(2, None), 10)));
        commit(&cache, "C");
        let state = cache.state();
        assert_eq!(state.entries.len(), 1);
        assert_eq!(
            state.cost,
            cost(&key("T", &format!("missing-{}", named - 1)), 0)
        );
    }
}
