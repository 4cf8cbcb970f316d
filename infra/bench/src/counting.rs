//! A Store and a Bus that count what one event costs: DynamoDB request
//! units (by the item sizes DynamoDB bills) and EventBridge entries. They
//! wrap the real implementations, so the engine runs unchanged.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use crmbridge_bus::{Bus, BusError};
use crmbridge_mapping::Event;
use crmbridge_store::{Item, Page, PutOutcome, Query, Store, StoreResult, Write};
use serde::Serialize;

#[derive(Debug, Default)]
pub struct Counters {
    pub read_units: AtomicU64,
    pub write_units: AtomicU64,
    pub requests: AtomicU64,
    pub bus_entries: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Snapshot {
    pub read_units: u64,
    pub write_units: u64,
    pub requests: u64,
    pub bus_entries: u64,
}

impl Counters {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            read_units: self.read_units.load(Ordering::SeqCst),
            write_units: self.write_units.load(Ordering::SeqCst),
            requests: self.requests.load(Ordering::SeqCst),
            bus_entries: self.bus_entries.load(Ordering::SeqCst),
        }
    }
}

impl std::ops::Add for Snapshot {
    type Output = Snapshot;
    fn add(self, rhs: Snapshot) -> Snapshot {
        Snapshot {
            read_units: self.read_units + rhs.read_units,
            write_units: self.write_units + rhs.write_units,
            requests: self.requests + rhs.requests,
            bus_entries: self.bus_entries + rhs.bus_entries,
        }
    }
}

impl std::ops::Sub for Snapshot {
    type Output = Snapshot;
    fn sub(self, rhs: Snapshot) -> Snapshot {
        Snapshot {
            read_units: self.read_units - rhs.read_units,
            write_units: self.write_units - rhs.write_units,
            requests: self.requests - rhs.requests,
            bus_entries: self.bus_entries - rhs.bus_entries,
        }
    }
}

/// The size DynamoDB bills for an item as the DynamoDB store writes it
/// (large bodies deflated).
pub fn item_bytes(item: &Item) -> u64 {
    crmbridge_store::billed_bytes(item)
}

fn write_units(bytes: u64) -> u64 {
    bytes.div_ceil(1024).max(1)
}

fn read_units(bytes: u64) -> u64 {
    bytes.div_ceil(4096).max(1)
}

pub struct CountingStore {
    pub inner: Arc<dyn Store>,
    pub counters: Arc<Counters>,
}

impl CountingStore {
    /// `CRMBRIDGE_BENCH_TRACE=1` prints every counted call (op, key, units)
    /// to stderr: where a path's units go, one line each.
    fn trace(&self, op: &str, key: &str, units: u64) {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if *ON.get_or_init(|| std::env::var_os("CRMBRIDGE_BENCH_TRACE").is_some()) {
            eprintln!("store {op:<18} {units:>2}u  {key}");
        }
    }

    fn add(&self, reads: u64, writes: u64) {
        self.counters.read_units.fetch_add(reads, Ordering::SeqCst);
        self.counters
            .write_units
            .fetch_add(writes, Ordering::SeqCst);
        self.counters.requests.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Store for CountingStore {
    async fn get(&self, pk: &str, sk: &str) -> StoreResult<Option<Item>> {
        let found = self.inner.get(pk, sk).await?;
        // Strongly consistent: 1 unit per 4 KB, at least 1 even when absent.
        let units = read_units(found.as_ref().map_or(0, item_bytes));
        self.trace("get", &format!("{pk} {sk}"), units);
        self.add(units, 0);
        Ok(found)
    }

    async fn put(&self, item: Item) -> StoreResult<()> {
        let units = write_units(item_bytes(&item));
        self.trace("put", &format!("{} {}", item.pk, item.sk), units);
        self.add(0, units);
        self.inner.put(item).await
    }

    async fn put_many(&self, items: Vec<Item>) -> StoreResult<()> {
        // BatchWriteItem bills each item as a plain put.
        let units = items.iter().map(|i| write_units(item_bytes(i))).sum();
        let keys: Vec<String> = items.iter().map(|i| format!("{} {}", i.pk, i.sk)).collect();
        self.trace("put_many", &keys.join(" | "), units);
        self.add(0, units);
        self.inner.put_many(items).await
    }

    async fn put_if_absent(&self, item: Item) -> StoreResult<PutOutcome> {
        // A failed condition still consumes the write.
        let units = write_units(item_bytes(&item));
        self.trace("put_if_absent", &format!("{} {}", item.pk, item.sk), units);
        self.add(0, units);
        self.inner.put_if_absent(item).await
    }

    async fn update_if_version(&self, item: Item, expected: u64) -> StoreResult<u64> {
        let units = write_units(item_bytes(&item));
        self.trace(
            "update_if_version",
            &format!("{} {}", item.pk, item.sk),
            units,
        );
        self.add(0, units);
        self.inner.update_if_version(item, expected).await
    }

    async fn delete(&self, pk: &str, sk: &str) -> StoreResult<()> {
        self.trace("delete", &format!("{pk} {sk}"), 1);
        self.add(0, 1);
        self.inner.delete(pk, sk).await
    }

    async fn query(&self, query: Query) -> StoreResult<Page> {
        let described = format!("{query:?}");
        let page = self.inner.query(query).await?;
        let units = read_units(page.items.iter().map(item_bytes).sum());
        self.trace("query", &described, units);
        self.add(units, 0);
        Ok(page)
    }

    async fn transact(&self, writes: Vec<Write>) -> StoreResult<()> {
        // Transactional writes cost twice the standard units.
        let units: u64 = writes
            .iter()
            .map(|w| match w {
                Write::Put(i) | Write::PutIfAbsent(i) | Write::UpdateIfVersion { item: i, .. } => {
                    2 * write_units(item_bytes(i))
                }
                Write::Delete { .. } => 2,
            })
            .sum();
        self.trace("transact", &format!("{} writes", writes.len()), units);
        self.add(0, units);
        self.inner.transact(writes).await
    }
}

pub struct CountingBus {
    pub inner: Arc<dyn Bus>,
    pub counters: Arc<Counters>,
    pub published: std::sync::Mutex<Vec<Event>>,
}

#[async_trait]
impl Bus for CountingBus {
    async fn publish(&self, events: &[Event]) -> Result<(), BusError> {
        // EventBridge bills per 64 KB chunk of each entry.
        let chunks: u64 = events
            .iter()
            .map(|e| {
                (serde_json::to_vec(e).map_or(1, |v| v.len() as u64))
                    .div_ceil(64 * 1024)
                    .max(1)
            })
            .sum();
        self.counters
            .bus_entries
            .fetch_add(chunks, Ordering::SeqCst);
        self.published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(events);
        self.inner.publish(events).await
    }
}
