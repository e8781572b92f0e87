//! An in-memory copy of the committed table, serving reads in microseconds without a statement.
//! Only a store that is provably its database's only writer may keep one (SQLite, whose file
//! the process holds locked): the mirror never sees changes made behind its back. Its writer
//! applies each commit before anyone is told of it, so a read sees exactly the committed state.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::{ListedKey, Listing, Value, prefix_end};

/// Bookkeeping bytes counted per mirrored row on top of its key, the key's rendering and its value.
pub(crate) const ROW_OVERHEAD: usize = 96;

/// Every committed row, by plugin then key (`str` orders bytewise, as SQLite's BINARY does).
/// Expired rows may linger until the next purge; readers skip them. Each key is kept with its
/// rendering for listings, made once when the key first arrives.
#[derive(Debug, Default)]
pub(crate) struct Mirror {
    plugins: BTreeMap<String, BTreeMap<Slot, Entry>>,
    bytes: usize,
    pub(crate) budget: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) value: Value,
    pub(crate) expires_at: Option<i64>,
}

/// A key of the mirror, ordered and looked up as its text.
#[derive(Debug)]
struct Slot {
    key: Box<str>,
    listed: ListedKey,
}

impl Slot {
    /// Bytes held, as the budget counts them.
    fn len(&self) -> usize {
        self.key.len() + self.listed.len()
    }
}

impl Borrow<str> for Slot {
    fn borrow(&self) -> &str {
        &self.key
    }
}

impl PartialEq for Slot {
    fn eq(&self, other: &Slot) -> bool {
        self.key == other.key
    }
}

impl Eq for Slot {}

impl PartialOrd for Slot {
    fn partial_cmp(&self, other: &Slot) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Slot {
    fn cmp(&self, other: &Slot) -> Ordering {
        self.key.cmp(&other.key)
    }
}

impl Entry {
    fn live(&self, now: i64) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

impl Mirror {
    pub(crate) fn new(budget: usize) -> Mirror {
        Mirror {
            budget,
            ..Mirror::default()
        }
    }

    /// `(rows, bytes)` held, expired rows not yet purged included; bytes as the budget counts.
    pub(crate) fn usage(&self) -> (usize, usize) {
        (self.plugins.values().map(BTreeMap::len).sum(), self.bytes)
    }

    pub(crate) fn get(&self, plugin: &str, key: &str, now: i64) -> Option<&Entry> {
        self.plugins
            .get(plugin)?
            .get(key)
            .filter(|entry| entry.live(now))
    }

    pub(crate) fn list(&self, plugin: &str, prefix: &str, limit: usize, now: i64) -> Listing {
        let Some(keys) = self.plugins.get(plugin) else {
            return Listing {
                keys: Vec::new(),
                truncated: false,
            };
        };
        let end = prefix_end(prefix);
        let upper = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let mut live = keys
            .range::<str, _>((Bound::Included(prefix), upper))
            .filter(|(_, entry)| entry.live(now))
            .map(|(slot, _)| &slot.listed);
        // Sized up front: collected from a filter, the vector would grow by doubling.
        let mut found = Vec::with_capacity(limit.min(keys.len()));
        found.extend(live.by_ref().take(limit).cloned());
        Listing {
            truncated: live.next().is_some(),
            keys: found,
        }
    }

    /// Returns false once over budget: the caller then drops the mirror.
    pub(crate) fn set(&mut self, plugin: &str, key: &str, entry: Entry) -> bool {
        let keys = match self.plugins.get_mut(plugin) {
            Some(keys) => keys,
            None => self.plugins.entry(plugin.to_owned()).or_default(),
        };
        match keys.get_mut(key) {
            Some(old) => {
                self.bytes -= old.value.get().len();
                self.bytes += entry.value.get().len();
                *old = entry;
            }
            None => {
                let slot = Slot {
                    key: key.into(),
                    listed: ListedKey::rendered(key),
                };
                self.bytes += slot.len() + entry.value.get().len() + ROW_OVERHEAD;
                keys.insert(slot, entry);
            }
        }
        self.bytes <= self.budget
    }

    pub(crate) fn remove(&mut self, plugin: &str, key: &str) {
        if let Some(keys) = self.plugins.get_mut(plugin)
            && let Some((slot, old)) = keys.remove_entry(key)
        {
            self.bytes -= slot.len() + old.value.get().len() + ROW_OVERHEAD;
            if keys.is_empty() {
                self.plugins.remove(plugin);
            }
        }
    }

    pub(crate) fn purge(&mut self, now: i64) {
        let mut freed = 0;
        self.plugins.retain(|_, keys| {
            keys.retain(|slot, entry| {
                let keep = entry.live(now);
                if !keep {
                    freed += slot.len() + entry.value.get().len() + ROW_OVERHEAD;
                }
                keep
            });
            !keys.is_empty()
        });
        self.bytes -= freed;
    }
}

/// A poisoned lock only means a reader panicked mid-read; the mirror itself is intact.
pub(crate) fn read(mirror: &RwLock<Option<Mirror>>) -> RwLockReadGuard<'_, Option<Mirror>> {
    mirror
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn write_lock(mirror: &RwLock<Option<Mirror>>) -> RwLockWriteGuard<'_, Option<Mirror>> {
    mirror
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
