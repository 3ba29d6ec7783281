//! Log and state machine storage on sled.
//!
//! One `sled::Db` per region holds three trees:
//! - `log`: entry index (big-endian u64) → serde-JSON `Entry`. [`LogStore::append`] writes the batch and
//!   waits for `flush_async` (fsync) before telling openraft the entries are durable, so a write is
//!   acknowledged to a client only once a majority has it on disk.
//! - `meta`: vote (flushed before returning), committed log id, last purged log id, cluster id.
//! - `snapshot`: the current snapshot (meta + data), flushed when built or installed.
//!
//! The state machine itself lives in memory ([`crate::state::State`], shared with API readers). On start it
//! is loaded from the last snapshot and openraft re-applies the committed log after it (we persist the
//! committed log id for that), so nothing acknowledged is lost and no second copy of the state is kept.

use super::TypeConfig;
use crate::apply::apply_once;
use crate::command::{revision, Responses};
use crate::state::{Data, State};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, RwLock};

type NodeId = u64;
type Node = openraft::BasicNode;
type SErr = StorageError<NodeId>;

/// The in-memory state shared between the state machine (writer) and the API (readers).
pub type SharedState = Arc<RwLock<State>>;

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// sled refused the directory (corrupt, locked by another process, unreadable).
    #[error("cannot open the region database in {path}: {source}. If another ingot-region uses this data directory, stop it; if the directory is corrupt, restore it from a backup or remove this region (`ingot cluster remove`) and join it again with an empty directory")]
    Sled {
        /// The database path.
        path: String,
        /// sled's error.
        #[source]
        source: sled::Error,
    },
    /// A stored record does not decode.
    #[error("the region database in {path} is corrupt ({what}): restore it from a backup or remove this region and join it again with an empty directory")]
    Corrupt {
        /// The database path.
        path: String,
        /// What failed to decode.
        what: String,
    },
    /// The database belongs to another cluster.
    #[error("the data directory belongs to cluster {found}, not {expected}: refusing to start. Use the right --data-dir, or an empty one to join this cluster")]
    ForeignCluster {
        /// Cluster id in the database.
        found: String,
        /// Cluster id in the identity file.
        expected: String,
    },
}

/// Opens the region database at `path`, checking that it belongs to `cluster_id` (recording it if new).
pub fn open_db(path: &std::path::Path, cluster_id: &str) -> Result<sled::Db, OpenError> {
    let p = path.display().to_string();
    let db = sled::Config::new()
        .path(path)
        .flush_every_ms(None) // we flush explicitly where durability matters
        .open()
        .map_err(|source| OpenError::Sled {
            path: p.clone(),
            source,
        })?;
    let meta = db.open_tree("meta").map_err(|source| OpenError::Sled {
        path: p.clone(),
        source,
    })?;
    match meta.get("cluster_id").map_err(|source| OpenError::Sled {
        path: p.clone(),
        source,
    })? {
        Some(v) => {
            let found = String::from_utf8_lossy(&v).to_string();
            if found != cluster_id {
                return Err(OpenError::ForeignCluster {
                    found,
                    expected: cluster_id.to_string(),
                });
            }
        }
        None => {
            meta.insert("cluster_id", cluster_id.as_bytes())
                .map_err(|source| OpenError::Sled {
                    path: p.clone(),
                    source,
                })?;
            db.flush().map_err(|source| OpenError::Sled {
                path: p.clone(),
                source,
            })?;
        }
    }
    Ok(db)
}

fn io_read<E: std::error::Error + 'static>(e: E) -> SErr {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}
fn io_write<E: std::error::Error + 'static>(e: E) -> SErr {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

fn bound(b: Bound<&u64>) -> Bound<[u8; 8]> {
    match b {
        Bound::Included(i) => Bound::Included(i.to_be_bytes()),
        Bound::Excluded(i) => Bound::Excluded(i.to_be_bytes()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The Raft log on sled.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
}

impl LogStore {
    /// The log store inside `db`.
    pub fn new(db: &sled::Db) -> Result<LogStore, sled::Error> {
        Ok(LogStore {
            db: db.clone(),
            log: db.open_tree("log")?,
            meta: db.open_tree("meta")?,
        })
    }

    fn get_meta<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Result<Option<T>, SErr> {
        match self.meta.get(key).map_err(io_read)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(io_read),
        }
    }

    fn put_meta<T: Serialize>(&self, key: &str, v: &T) -> Result<(), SErr> {
        let bytes = serde_json::to_vec(v).map_err(io_write)?;
        self.meta.insert(key, bytes).map_err(io_write)?;
        Ok(())
    }

    /// Deletes the log entries whose keys fall in `range`, in one batch (not flushed).
    fn remove_entries(&self, range: impl RangeBounds<[u8; 8]>) -> Result<(), SErr> {
        let mut batch = sled::Batch::default();
        for k in self.log.range(range).keys() {
            batch.remove(k.map_err(io_read)?);
        }
        self.log.apply_batch(batch).map_err(io_write)
    }

    async fn flush(&self) -> Result<(), SErr> {
        self.db.flush_async().await.map_err(io_write)?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        let r = (bound(range.start_bound()), bound(range.end_bound()));
        let mut out = Vec::new();
        for kv in self.log.range(r) {
            let (_, v) = kv.map_err(io_read)?;
            out.push(serde_json::from_slice(&v).map_err(io_read)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let last_purged: Option<LogId<NodeId>> = self.get_meta("last_purged")?;
        let last = match self.log.last().map_err(io_read)? {
            Some((_, v)) => Some(
                serde_json::from_slice::<Entry<TypeConfig>>(&v)
                    .map_err(io_read)?
                    .log_id,
            ),
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SErr> {
        self.put_meta("vote", vote)
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)))?;
        self.flush().await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SErr> {
        self.get_meta("vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SErr> {
        // Not flushed on its own: it is a hint for replay on restart, and any later flush carries it.
        self.put_meta("committed", &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SErr> {
        Ok(self
            .get_meta::<Option<LogId<NodeId>>>("committed")?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let t0 = std::time::Instant::now();
        let mut batch = sled::Batch::default();
        let mut n = 0usize;
        for e in entries {
            let v = serde_json::to_vec(&e).map_err(io_write)?;
            batch.insert(&e.log_id.index.to_be_bytes(), v);
            n += 1;
        }
        self.log.apply_batch(batch).map_err(io_write)?;
        let t1 = std::time::Instant::now();
        let res = self
            .db
            .flush_async()
            .await
            .map(|_| ())
            .map_err(|e| std::io::Error::other(e.to_string()));
        tracing::debug!(
            entries = n,
            insert_us = (t1 - t0).as_micros() as u64,
            flush_us = t1.elapsed().as_micros() as u64,
            "log append"
        );
        let failed = res.as_ref().err().map(|e| e.to_string());
        callback.log_io_completed(res);
        match failed {
            Some(e) => Err(io_write(std::io::Error::other(e))),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        self.remove_entries(log_id.index.to_be_bytes()..)?;
        self.flush().await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        self.put_meta("last_purged", &log_id)?;
        // Persist the purge point before deleting, so a crash in between never loses track of the log start.
        self.flush().await?;
        self.remove_entries(..=log_id.index.to_be_bytes())?;
        self.flush().await
    }
}

/// A snapshot as stored in sled and shipped to followers.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Node>,
    data: Vec<u8>,
}

/// What a snapshot's data holds: the replicated data plus the applied position and membership.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Node>,
    data: Data,
}

/// The state machine: the in-memory [`State`] plus where it stands in the log.
#[derive(Clone)]
pub struct StateMachineStore {
    /// Shared with the API for reads.
    pub state: SharedState,
    /// Carries the revision of the last applied command; `Watch` streams wake on it.
    pub applied: Arc<tokio::sync::watch::Sender<u64>>,
    inner: Arc<RwLock<SmInner>>,
    snap_tree: sled::Tree,
    db: sled::Db,
}

#[derive(Default)]
struct SmInner {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Node>,
    snapshot_seq: u64,
}

fn poisoned() -> SErr {
    StorageIOError::read_state_machine(AnyError::error("state lock poisoned by a panic")).into()
}

impl StateMachineStore {
    /// Opens the state machine in `db`, loading the last snapshot if there is one.
    pub fn open(db: &sled::Db) -> Result<StateMachineStore, OpenError> {
        let path = "region database".to_string();
        let snap_tree = db.open_tree("snapshot").map_err(|source| OpenError::Sled {
            path: path.clone(),
            source,
        })?;
        let sm = StateMachineStore {
            state: Arc::new(RwLock::new(State::default())),
            applied: Arc::new(tokio::sync::watch::channel(0).0),
            inner: Arc::new(RwLock::new(SmInner::default())),
            snap_tree,
            db: db.clone(),
        };
        if let Some(v) = sm
            .snap_tree
            .get("current")
            .map_err(|source| OpenError::Sled {
                path: path.clone(),
                source,
            })?
        {
            let stored: StoredSnapshot =
                serde_json::from_slice(&v).map_err(|e| OpenError::Corrupt {
                    path: path.clone(),
                    what: format!("snapshot: {e}"),
                })?;
            let body: SnapshotBody =
                serde_json::from_slice(&stored.data).map_err(|e| OpenError::Corrupt {
                    path: path.clone(),
                    what: format!("snapshot body: {e}"),
                })?;
            sm.load(body).map_err(|_| OpenError::Corrupt {
                path,
                what: "state lock".into(),
            })?;
        }
        Ok(sm)
    }

    fn load(&self, body: SnapshotBody) -> Result<(), SErr> {
        let mut st = self.state.write().map_err(|_| poisoned())?;
        *st = State::from_data(body.data);
        let mut inner = self.inner.write().map_err(|_| poisoned())?;
        inner.last_applied = body.last_applied;
        inner.membership = body.membership;
        Ok(())
    }

    /// Index of the last applied entry (0 before any).
    pub fn applied_index(&self) -> u64 {
        self.inner
            .read()
            .ok()
            .and_then(|i| i.last_applied.map(|l| l.index))
            .unwrap_or(0)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let (body, seq) = {
            // Both locks, so the data and its position are consistent.
            let st = self.state.read().map_err(|_| poisoned())?;
            let mut inner = self.inner.write().map_err(|_| poisoned())?;
            inner.snapshot_seq += 1;
            let body = SnapshotBody {
                last_applied: inner.last_applied,
                membership: inner.membership.clone(),
                data: st.data.clone(),
            };
            (body, inner.snapshot_seq)
        };
        let data = serde_json::to_vec(&body)
            .map_err(|e| StorageIOError::write_snapshot(None, AnyError::new(&e)))?;
        let snapshot_id = match body.last_applied {
            Some(l) => format!("{}-{}-{seq}", l.leader_id.term, l.index),
            None => format!("0-0-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: body.last_applied,
            last_membership: body.membership,
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let bytes = serde_json::to_vec(&stored)
            .map_err(|e| StorageIOError::write_snapshot(None, AnyError::new(&e)))?;
        self.snap_tree
            .insert("current", bytes)
            .map_err(|e| StorageIOError::write_snapshot(None, AnyError::new(&e)))?;
        self.db
            .flush_async()
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, AnyError::new(&e)))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Node>), SErr> {
        let inner = self.inner.read().map_err(|_| poisoned())?;
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Responses>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut st = self.state.write().map_err(|_| poisoned())?;
        let mut inner = self.inner.write().map_err(|_| poisoned())?;
        let mut out = Vec::new();
        for e in entries {
            inner.last_applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => out.push(Vec::new()),
                EntryPayload::Normal(batch) => out.push(
                    batch
                        .0
                        .iter()
                        .enumerate()
                        .map(|(pos, cmd)| apply_once(&mut st, cmd, revision(e.log_id.index, pos)))
                        .collect(),
                ),
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembership::new(Some(e.log_id), m);
                    out.push(Vec::new());
                }
            }
        }
        self.applied.send_replace(st.data.revision);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let data = snapshot.into_inner();
        let body: SnapshotBody = serde_json::from_slice(&data).map_err(|e| {
            StorageIOError::read_snapshot(Some(meta.signature()), AnyError::new(&e))
        })?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let bytes = serde_json::to_vec(&stored).map_err(|e| {
            StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e))
        })?;
        self.snap_tree.insert("current", bytes).map_err(|e| {
            StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e))
        })?;
        self.db.flush_async().await.map_err(|e| {
            StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e))
        })?;
        let mut body = body;
        body.last_applied = meta.last_log_id;
        body.membership = meta.last_membership.clone();
        let rev = body.data.revision;
        self.load(body)?;
        self.applied.send_replace(rev);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        match self
            .snap_tree
            .get("current")
            .map_err(|e| StorageIOError::read_snapshot(None, AnyError::new(&e)))?
        {
            None => Ok(None),
            Some(v) => {
                let s: StoredSnapshot = serde_json::from_slice(&v)
                    .map_err(|e| StorageIOError::read_snapshot(None, AnyError::new(&e)))?;
                Ok(Some(Snapshot {
                    meta: s.meta,
                    snapshot: Box::new(Cursor::new(s.data)),
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::{StoreBuilder, Suite};

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), SErr> {
            let dir = tempfile::tempdir().map_err(io_write)?;
            let db = open_db(&dir.path().join("db"), "suite")
                .map_err(|e| io_write(std::io::Error::other(e.to_string())))?;
            let log = LogStore::new(&db).map_err(io_write)?;
            let sm = StateMachineStore::open(&db)
                .map_err(|e| io_write(std::io::Error::other(e.to_string())))?;
            Ok((dir, log, sm))
        }
    }

    /// openraft's own storage conformance suite, run against the sled store.
    #[test]
    fn openraft_storage_suite() -> Result<(), SErr> {
        Suite::test_all(Builder)
    }

    #[test]
    fn foreign_cluster_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(open_db(&dir.path().join("db"), "a").unwrap());
        let e = open_db(&dir.path().join("db"), "b").unwrap_err();
        assert!(e.to_string().contains("belongs to cluster a"), "{e}");
    }
}
