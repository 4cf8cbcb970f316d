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
        self.add(read_units(found.as_ref().map_or(0, item_bytes)), 0);
        Ok(found)
    }

    async fn put(&self, item: Item) -> StoreResult<()> {
        self.add(0, write_units(item_bytes(&item)));
        self.inner.put(item).await
    }

    async fn put_many(&self, items: Vec<Item>) -> StoreResult<()> {
        // BatchWriteItem bills each item as a plain put.
        self.add(0, items.iter().map(|i| write_units(item_bytes(i))).sum());
        self.inner.put_many(items).await
    }

    async fn put_if_absent(&self, item: Item) -> StoreResult<PutOutcome> {
        // A failed condition still consumes the write.
        self.add(0, write_units(item_bytes(&item)));
        self.inner.put_if_absent(item).await
    }

    async fn update_if_version(&self, item: Item, expected: u64) -> StoreResult<u64> {
        self.add(0, write_units(item_bytes(&item)));
        self.inner.update_if_version(item, expected).await
    }

    async fn delete(&self, pk: &str, sk: &str) -> StoreResult<()> {
        self.add(0, 1);
        self.inner.delete(pk, sk).await
    }

    async fn query(&self, query: Query) -> StoreResult<Page> {
        let page = self.inner.query(query).await?;
        self.add(read_units(page.items.iter().map(item_bytes).sum()), 0);
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
