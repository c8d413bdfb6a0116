//! The metadata store: one `redb` database, every mutation one write transaction.
//!
//! Tables:
//! - `snapshots`: key or name -> [`Record`] (JSON);
//! - `ids`: id -> key, so cleanup can tell owned directories from orphans;
//! - `children`: (parent, child) -> (), so "has children" is one range lookup, not a scan;
//! - `meta`: `next_id` -> the next id to allocate (ids are never reused).

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, SystemTime},
};

use redb::{Database, ReadableTable, TableDefinition};

use super::{Info, Kind, Result, SnapshotError, Usage};

const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const IDS: TableDefinition<u64, &str> = TableDefinition::new("ids");
const CHILDREN: TableDefinition<(&str, &str), ()> = TableDefinition::new("children");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_ID: &str = "next_id";

/// What the store keeps about one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Record {
    /// Names the directory `<root>/snapshots/<id>`.
    pub id: u64,
    pub kind: Kind,
    /// The parent's name; empty for none.
    pub parent: String,
    pub labels: HashMap<String, String>,
    /// Nanoseconds since the Unix epoch.
    pub created: u64,
    pub updated: u64,
    /// Measured at commit; zero for Active and View snapshots.
    pub usage: Usage,
}

impl Record {
    pub fn info(&self, name: &str) -> Info {
        Info {
            name: name.to_owned(),
            parent: self.parent.clone(),
            kind: self.kind,
            labels: self.labels.clone(),
            created_at: from_nanos(self.created),
            updated_at: from_nanos(self.updated),
        }
    }
}

/// Now, in nanoseconds since the Unix epoch.
pub(crate) fn now() -> u64 {
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
}

fn from_nanos(nanos: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos)
}

fn decode(key: &str, bytes: &[u8]) -> Result<Record> {
    serde_json::from_slice(bytes).map_err(|source| SnapshotError::Corrupt {
        key: key.to_owned(),
        source,
    })
}

fn get(table: &impl ReadableTable<&'static str, &'static [u8]>, key: &str) -> Result<Option<Record>> {
    match table.get(key)? {
        Some(bytes) => decode(key, bytes.value()).map(Some),
        None => Ok(None),
    }
}

/// The ids of `parent` and its ancestors, nearest first.
fn chain(table: &impl ReadableTable<&'static str, &'static [u8]>, parent: &str) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    let mut name = parent.to_owned();
    while !name.is_empty() {
        let record = get(table, &name)?.ok_or(SnapshotError::NotFound(name))?;
        ids.push(record.id);
        name = record.parent;
    }
    Ok(ids)
}

/// The database.
pub(crate) struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the database at `path` and its tables.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        {
            txn.open_table(SNAPSHOTS)?;
            txn.open_table(IDS)?;
            txn.open_table(CHILDREN)?;
            txn.open_table(META)?;
        }
        txn.commit()?;
        Ok(Self { db })
    }

    pub fn read(&self) -> Result<ReadTxn> {
        Ok(ReadTxn {
            txn: self.db.begin_read()?,
        })
    }

    /// Starts a write transaction; write transactions run one at a time.
    pub fn write(&self) -> Result<WriteTxn> {
        Ok(WriteTxn {
            txn: self.db.begin_write()?,
        })
    }
}

/// A consistent read-only view.
pub(crate) struct ReadTxn {
    txn: redb::ReadTransaction,
}

impl ReadTxn {
    pub fn get(&self, key: &str) -> Result<Option<Record>> {
        get(&self.txn.open_table(SNAPSHOTS)?, key)
    }

    pub fn chain(&self, parent: &str) -> Result<Vec<u64>> {
        chain(&self.txn.open_table(SNAPSHOTS)?, parent)
    }

    /// Every record, in key order.
    pub fn all(&self) -> Result<Vec<(String, Record)>> {
        let table = self.txn.open_table(SNAPSHOTS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, bytes) = entry?;
            let key = key.value().to_owned();
            let record = decode(&key, bytes.value())?;
            out.push((key, record));
        }
        Ok(out)
    }

    /// Every (parent, child) pair of the children index.
    #[cfg(test)]
    pub fn children(&self) -> Result<Vec<(String, String)>> {
        let table = self.txn.open_table(CHILDREN)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, _) = entry?;
            let (parent, child) = key.value();
            out.push((parent.to_owned(), child.to_owned()));
        }
        Ok(out)
    }
}

/// A write transaction; dropped without [`commit`](Self::commit), it changes nothing.
pub(crate) struct WriteTxn {
    txn: redb::WriteTransaction,
}

impl WriteTxn {
    pub fn get(&self, key: &str) -> Result<Option<Record>> {
        get(&self.txn.open_table(SNAPSHOTS)?, key)
    }

    pub fn chain(&self, parent: &str) -> Result<Vec<u64>> {
        chain(&self.txn.open_table(SNAPSHOTS)?, parent)
    }

    /// Allocates the next id.
    pub fn next_id(&self) -> Result<u64> {
        let mut meta = self.txn.open_table(META)?;
        let id = meta.get(NEXT_ID)?.map(|v| v.value()).unwrap_or(1);
        meta.insert(NEXT_ID, id + 1)?;
        Ok(id)
    }

    /// Whether a record owns the directory of `id`.
    pub fn owns(&self, id: u64) -> Result<bool> {
        Ok(self.txn.open_table(IDS)?.get(id)?.is_some())
    }

    pub fn has_children(&self, key: &str) -> Result<bool> {
        let table = self.txn.open_table(CHILDREN)?;
        let mut range = table.range((key, "")..)?;
        let first = match range.next() {
            Some(entry) => entry?.0.value().0 == key,
            None => false,
        };
        Ok(first)
    }

    /// Stores `record` under `key`, with its index entries.
    pub fn put(&self, key: &str, record: &Record) -> Result<()> {
        let bytes = serde_json::to_vec(record).map_err(|source| SnapshotError::Corrupt {
            key: key.to_owned(),
            source,
        })?;
        self.txn.open_table(SNAPSHOTS)?.insert(key, bytes.as_slice())?;
        self.txn.open_table(IDS)?.insert(record.id, key)?;
        if !record.parent.is_empty() {
            self.txn
                .open_table(CHILDREN)?
                .insert((record.parent.as_str(), key), ())?;
        }
        Ok(())
    }

    /// Deletes the record `key` and its index entries, returning it.
    pub fn delete(&self, key: &str) -> Result<Option<Record>> {
        let Some(record) = self.get(key)? else {
            return Ok(None);
        };
        self.txn.open_table(SNAPSHOTS)?.remove(key)?;
        self.txn.open_table(IDS)?.remove(record.id)?;
        if !record.parent.is_empty() {
            self.txn.open_table(CHILDREN)?.remove((record.parent.as_str(), key))?;
        }
        Ok(Some(record))
    }

    pub fn commit(self) -> Result<()> {
        self.txn.commit()?;
        Ok(())
    }
}
