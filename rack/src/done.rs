//! The durable done-store: which power commands this rack has finished, and with what result.
//!
//! Regions deliver commands at least once (a command is re-sent after a failover until its result is in the
//! replicated log). The rack makes execution exactly-once by recording each result here — appended to
//! `DIR/done.log` as one JSON line and fsynced — *before* sending it. A command id seen again is answered
//! from this store instead of being run again, also after a restart of the rack.
//!
//! A crash between the driver acting and the append would leave the command to run again when it is
//! re-delivered. That is harmless for idempotent actions (on, off, boot-device settings, query), not for
//! cycle or soft-off ([`ingot_common::power::PowerAction::idempotent`]). So before running a
//! non-idempotent action the rack appends (and fsyncs) an intent record, a [`StartRecord`]; a re-delivered
//! id that was started but has no result is then not run again: the session reads the power state and
//! answers `interrupted`.
//!
//! The log is JSON lines of two shapes: results (`{"id":..,"success":..,...}`, the format older racks wrote,
//! which still loads) and intents (`{"id":..,"started_ms":..,"action":".."}`).

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// How many results the log keeps across restarts: enough to cover any re-delivery window by orders of
/// magnitude while keeping start-up fast (the log is compacted to this many at start).
pub const KEEP_RESULTS: usize = 100_000;

/// Why the done-store could not be opened or appended to. Without it the rack cannot promise exactly-once,
/// so these errors stop the command (it is not answered and will be re-delivered).
#[derive(Debug, thiserror::Error)]
pub enum DoneError {
    /// The log could not be opened, read, written or fsynced.
    #[error("done-store {path}: {what}: {source} (check free space and permissions of the data directory)")]
    Io {
        /// The log file.
        path: String,
        /// The step that failed.
        what: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A record could not be encoded (should not happen: records are plain data).
    #[error("done-store {path}: encoding a record: {source}")]
    Encode {
        /// The log file.
        path: String,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },
}

/// One finished power command, as stored: the fields of the `PowerCommandResult` the rack sent, plus when
/// (the session converts between the two; this module knows no wire types).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoneRecord {
    /// The command id the region assigned; the key of the store.
    pub id: u64,
    /// Whether the driver succeeded.
    pub success: bool,
    /// Error class on failure (unreachable, auth, unsupported, bmc); empty on success.
    #[serde(default)]
    pub error_kind: String,
    /// What happened, for the operator.
    #[serde(default)]
    pub message: String,
    /// on / off / unknown after the command.
    #[serde(default)]
    pub power_state: String,
    /// When the result was recorded (ms since the Unix epoch), for debugging re-deliveries.
    #[serde(default)]
    pub done_ms: u64,
}

/// An intent: the rack is about to run command `id`'s non-idempotent action. Appended and fsynced before
/// the driver is called; a later [`DoneRecord`] of the same id supersedes it. One left without a result
/// after a restart means the rack died while the action may or may not have reached the BMC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRecord {
    /// The command id.
    pub id: u64,
    /// When the rack started it (ms since the Unix epoch), for the operator's message.
    pub started_ms: u64,
    /// The action's wire spelling (`cycle`, `soft-off`), for the operator's message.
    pub action: String,
}

/// Appends `v` as one JSON line to `text` (compaction's rewrite of the log at `path`).
fn encode_line(path: &Path, text: &mut Vec<u8>, v: &impl Serialize) -> Result<(), DoneError> {
    serde_json::to_writer(&mut *text, v).map_err(|source| DoneError::Encode {
        path: path.display().to_string(),
        source,
    })?;
    text.push(b'\n');
    Ok(())
}

/// The store: an append-only JSON-lines log on disk and a map id → result in memory. Not internally
/// synchronized; the session wraps it in a mutex.
#[derive(Debug)]
pub struct DoneStore {
    /// The log file, for messages and compaction.
    path: PathBuf,
    /// Open for appending; each record is written with one `write_all` and fsynced.
    file: File,
    /// Every result in the log, by id: answers re-deliveries without touching the disk.
    map: HashMap<u64, DoneRecord>,
    /// Intents without a result yet, by id: a command started (maybe by an earlier process) and not
    /// known to have finished.
    started: HashMap<u64, StartRecord>,
}

impl DoneStore {
    /// Opens (or creates) the log at `path`, loads it, and compacts it to the last `keep` results if it
    /// holds more — or if it ends with a torn line from a crash mid-append, so new records start on a line
    /// of their own.
    pub fn open(path: &Path, keep: usize) -> Result<DoneStore, DoneError> {
        let io = |what: &'static str| {
            let path = path.display().to_string();
            move |source| DoneError::Io { path, what, source }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io("creating its directory"))?;
        }
        let mut order: Vec<DoneRecord> = Vec::new();
        let mut intents: Vec<StartRecord> = Vec::new();
        let mut damaged = 0usize;
        match File::open(path) {
            Ok(f) => {
                for line in BufReader::new(f).split(b'\n') {
                    let line = line.map_err(io("reading"))?;
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    // A result needs `success`, an intent `started_ms`: a line is never both.
                    if let Ok(r) = serde_json::from_slice::<DoneRecord>(&line) {
                        order.push(r);
                    } else if let Ok(i) = serde_json::from_slice::<StartRecord>(&line) {
                        intents.push(i);
                    } else {
                        damaged += 1;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("opening")(e)),
        }
        if damaged > 0 {
            tracing::warn!(
                path = %path.display(),
                damaged,
                "done-store had unreadable lines (a crash during an append); they are dropped"
            );
        }
        let finished: std::collections::HashSet<u64> = order.iter().map(|r| r.id).collect();
        let intent_lines = intents.len();
        let mut started: HashMap<u64, StartRecord> = HashMap::new();
        for i in intents {
            if !finished.contains(&i.id) {
                started.entry(i.id).or_insert(i);
            }
        }
        let total = order.len();
        if total > keep {
            order.drain(..total - keep);
        }
        // Finished intents are dead weight: compact when they alone exceed `keep` lines.
        if total > keep || damaged > 0 || intent_lines - started.len() > keep {
            let mut text = Vec::new();
            for r in &order {
                encode_line(path, &mut text, r)?;
            }
            // Unfinished intents are kept whatever their age: they are what stops a blind re-run.
            let mut open: Vec<&StartRecord> = started.values().collect();
            open.sort_by_key(|i| i.id);
            for i in open {
                encode_line(path, &mut text, i)?;
            }
            crate::config::write_atomic(path, &text, false).map_err(|e| DoneError::Io {
                path: path.display().to_string(),
                what: "compacting",
                source: std::io::Error::other(e.to_string()),
            })?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io("opening for append"))?;
        let map = order.into_iter().map(|r| (r.id, r)).collect();
        Ok(DoneStore {
            path: path.to_path_buf(),
            file,
            map,
            started,
        })
    }

    /// Appends one JSON line and fsyncs it.
    fn append(&mut self, v: &impl Serialize) -> Result<(), DoneError> {
        let mut line = serde_json::to_vec(v).map_err(|source| DoneError::Encode {
            path: self.path.display().to_string(),
            source,
        })?;
        line.push(b'\n');
        let io = |what: &'static str| {
            let path = self.path.display().to_string();
            move |source| DoneError::Io { path, what, source }
        };
        self.file.write_all(&line).map_err(io("appending"))?;
        self.file.sync_data().map_err(io("fsyncing"))?;
        Ok(())
    }

    /// The intent of command `id` if it was started (by this process or an earlier one) and has no
    /// result: it may or may not have acted on its BMC.
    pub fn started(&self, id: u64) -> Option<&StartRecord> {
        self.started.get(&id)
    }

    /// Appends and fsyncs the intent `rec` before its action runs; only then may the driver be called.
    /// A no-op when the id has a result or an intent already.
    pub fn start(&mut self, rec: StartRecord) -> Result<(), DoneError> {
        if self.map.contains_key(&rec.id) || self.started.contains_key(&rec.id) {
            return Ok(());
        }
        self.append(&rec)?;
        self.started.insert(rec.id, rec);
        Ok(())
    }

    /// The recorded result of command `id`, if it finished before.
    pub fn get(&self, id: u64) -> Option<&DoneRecord> {
        self.map.get(&id)
    }

    /// How many results are known.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no result is known.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Appends `rec` and fsyncs; only then is it in memory (and may the caller send it). A second record
    /// for a known id is ignored: the first result stands.
    pub fn record(&mut self, rec: DoneRecord) -> Result<(), DoneError> {
        if self.map.contains_key(&rec.id) {
            return Ok(());
        }
        self.append(&rec)?;
        self.started.remove(&rec.id);
        self.map.insert(rec.id, rec);
        Ok(())
    }

    /// Keeps `rec` in memory only: the fallback when [`DoneStore::record`] failed, so at least this process
    /// does not run the command again.
    pub fn remember(&mut self, rec: DoneRecord) {
        self.started.remove(&rec.id);
        self.map.entry(rec.id).or_insert(rec);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64) -> DoneRecord {
        DoneRecord {
            id,
            success: true,
            error_kind: String::new(),
            message: format!("done {id}"),
            power_state: "on".into(),
            done_ms: 1,
        }
    }

    #[test]
    fn survives_restart_and_compacts() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("done.log");
        {
            let mut s = DoneStore::open(&p, 10).unwrap();
            assert!(s.is_empty());
            for id in 1..=5 {
                s.record(rec(id)).unwrap();
            }
            // The first result stands.
            let mut again = rec(3);
            again.message = "other".into();
            s.record(again).unwrap();
        }
        let s = DoneStore::open(&p, 10).unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!(s.get(3).unwrap().message, "done 3");
        assert!(s.get(6).is_none());
        drop(s);

        // Keep only the last 2 results.
        let s = DoneStore::open(&p, 2).unwrap();
        assert_eq!(s.len(), 2);
        assert!(s.get(3).is_none() && s.get(4).is_some() && s.get(5).is_some());
        drop(s);
        let lines = std::fs::read_to_string(&p).unwrap();
        assert_eq!(lines.lines().count(), 2);
    }

    #[test]
    fn torn_last_line_is_dropped_and_appends_continue() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("done.log");
        {
            let mut s = DoneStore::open(&p, 10).unwrap();
            s.record(rec(1)).unwrap();
        }
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"id\":2,\"succ").unwrap();
        drop(f);
        {
            let mut s = DoneStore::open(&p, 10).unwrap();
            assert_eq!(s.len(), 1);
            s.record(rec(7)).unwrap();
        }
        let s = DoneStore::open(&p, 10).unwrap();
        assert!(s.get(1).is_some() && s.get(7).is_some() && s.get(2).is_none());
    }

    fn intent(id: u64) -> StartRecord {
        StartRecord {
            id,
            started_ms: 5,
            action: "cycle".into(),
        }
    }

    #[test]
    fn intents_survive_restart_until_a_result_supersedes_them() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("done.log");
        // A log written by an older rack (results only) loads as before.
        std::fs::write(
            &p,
            "{\"id\":1,\"success\":true,\"error_kind\":\"\",\"message\":\"m\",\"power_state\":\"on\",\"done_ms\":3}\n",
        )
        .unwrap();
        {
            let mut s = DoneStore::open(&p, 10).unwrap();
            assert_eq!(s.get(1).unwrap().message, "m");
            s.start(intent(2)).unwrap();
            s.start(intent(3)).unwrap();
            s.record(rec(3)).unwrap();
            assert!(s.started(3).is_none() && s.started(2).is_some());
        }
        // A restart (a crash after the intent of 2): 2 is started without a result, 3 is done.
        let s = DoneStore::open(&p, 10).unwrap();
        assert_eq!(s.started(2), Some(&intent(2)));
        assert!(s.get(2).is_none());
        assert!(s.started(3).is_none() && s.get(3).is_some());
        drop(s);
        // Compaction to one result keeps the unfinished intent (whatever its age) and drops the rest.
        let s = DoneStore::open(&p, 1).unwrap();
        assert!(s.started(2).is_some() && s.get(3).is_some() && s.get(1).is_none());
        drop(s);
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        let s = DoneStore::open(&p, 10).unwrap();
        assert!(s.started(2).is_some() && s.get(3).is_some());
    }
}
