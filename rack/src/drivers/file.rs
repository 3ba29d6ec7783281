//! The `file` power driver: a BMC that is a JSON file, for tests and benchmarks of the command path.
//!
//! Why it exists: the region → rack → driver path (the replicated command queue, exactly-once execution
//! across reconnects and failovers) is tested and benchmarked without any network BMC; a file per machine
//! that every action appends to lets a test count how often a command really ran. Simulated machines with
//! real Redfish and IPMI BMCs are `ingot-sim`'s job (driven with the `redfish` and `ipmi` drivers); this
//! driver is not a simulator of any protocol.
//!
//! Its name used to be `sim`, a word that now means `ingot-sim` only. `sim` stays an alias so machines stored
//! with it keep working: the rack runs them with this driver ([`super::Drivers::run`]) and the region still
//! accepts the name ([`ingot_common::power::DriverParams::parse`]).
//!
//! Each machine's BMC is a JSON file, `<state_dir>/<system_id>.json`:
//! `{"power": "on"|"off", "boot": "pxe"|"disk", "ops": [{"id": <command id>, "action": "...", "ts_ms": ...}]}`.
//! Being files, one BMC can be shared by several rack processes (as real BMCs are reachable from several
//! racks); an exclusive `flock` on `<state_dir>/<system_id>.lock` serializes them, and every write is atomic
//! (temp file, fsync, rename). Every action — `query` included — appends an op carrying the command id.
//! Fields of the file this driver does not know are kept as they are.
//!
//! Parameters, read from the request's raw parameters (the region checks `state_dir` with
//! [`ingot_common::power::FileParams`] and lets the fault knobs through): `state_dir` (required), and fault
//! knobs `fail=unreachable|auth|bmc` (always fail with that class, without touching the state) and
//! `delay_ms=N` (sleep before acting).

use super::{DriverError, PowerDriver, PowerOutcome, PowerRequest, PowerState};
use ingot_common::power::PowerAction;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The `file` driver (also run for machines stored with the old name `sim`). Stateless: all state is in the
/// files.
#[derive(Debug, Default, Clone, Copy)]
pub struct FileDriver;

/// Power of a file-backed BMC's machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FileBmcPower {
    /// Powered on.
    On,
    /// Powered off (a new machine's state).
    #[default]
    Off,
}

/// Next-boot device of a file-backed BMC's machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FileBmcBoot {
    /// Network boot.
    Pxe,
    /// Local disk (a new machine's setting).
    #[default]
    Disk,
}

/// One action the file-backed BMC performed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileBmcOp {
    /// The command id that caused it: counting ops per id proves exactly-once execution.
    pub id: u64,
    /// The action's wire spelling.
    pub action: String,
    /// When it was applied (ms since the Unix epoch).
    pub ts_ms: u64,
}

/// The contents of a state file (the documented JSON shape).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FileBmcState {
    /// Current power.
    #[serde(default)]
    pub power: FileBmcPower,
    /// Next-boot device.
    #[serde(default)]
    pub boot: FileBmcBoot,
    /// Every action applied, oldest first.
    #[serde(default)]
    pub ops: Vec<FileBmcOp>,
    /// Fields this driver does not know (a test may add its own): preserved untouched.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl FileBmcState {
    /// Applies `action` and records it as done by command `id`.
    fn apply(&mut self, id: u64, action: PowerAction, ts_ms: u64) {
        match action {
            PowerAction::On | PowerAction::Cycle => self.power = FileBmcPower::On,
            PowerAction::Off | PowerAction::SoftOff => self.power = FileBmcPower::Off,
            PowerAction::Query => {}
            PowerAction::BootPxe | PowerAction::BootPxePersistent => self.boot = FileBmcBoot::Pxe,
            PowerAction::BootDisk | PowerAction::BootDiskPersistent => {
                self.boot = FileBmcBoot::Disk
            }
        }
        self.ops.push(FileBmcOp {
            id,
            action: action.as_str().to_string(),
            ts_ms,
        });
    }

    /// The power state to report.
    pub fn power_state(&self) -> PowerState {
        match self.power {
            FileBmcPower::On => PowerState::On,
            FileBmcPower::Off => PowerState::Off,
        }
    }
}

/// The state file of `system_id` under `state_dir`.
pub fn state_path(state_dir: &Path, system_id: &str) -> PathBuf {
    state_dir.join(format!("{system_id}.json"))
}

fn lock_path(state_dir: &Path, system_id: &str) -> PathBuf {
    state_dir.join(format!("{system_id}.lock"))
}

/// Reads a machine's file-backed BMC state (a missing file is a new machine: off, disk, no ops).
pub fn read_state(state_dir: &Path, system_id: &str) -> Result<FileBmcState, DriverError> {
    let p = state_path(state_dir, system_id);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            DriverError::Bmc(format!(
                "file-backed BMC state {} is not valid: {e} (fix or delete the file)",
                p.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileBmcState::default()),
        Err(e) => Err(DriverError::Bmc(format!(
            "reading file-backed BMC state {}: {e}",
            p.display()
        ))),
    }
}

/// The whole locked read-modify-write of one action (blocking: run on a blocking thread).
fn apply_locked(
    state_dir: &Path,
    system_id: &str,
    id: u64,
    action: PowerAction,
) -> Result<PowerState, DriverError> {
    let bmc = |what: &str, e: &dyn std::fmt::Display| {
        DriverError::Bmc(format!(
            "file-backed BMC of {system_id}: {what}: {e} (check {})",
            state_dir.display()
        ))
    };
    std::fs::create_dir_all(state_dir).map_err(|e| bmc("creating the state directory", &e))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path(state_dir, system_id))
        .map_err(|e| bmc("opening the lock file", &e))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| bmc("locking", &e))?;
    let mut state = read_state(state_dir, system_id)?;
    state.apply(id, action, ingot_common::now_ms());
    let mut text = serde_json::to_vec_pretty(&state).map_err(|e| bmc("encoding the state", &e))?;
    text.push(b'\n');
    crate::config::write_atomic(&state_path(state_dir, system_id), &text, false)
        .map_err(|e| bmc("saving the state", &e))?;
    // Dropping `lock` closes it, which releases the flock.
    drop(lock);
    Ok(state.power_state())
}

/// A system id is used as a file name: refuse anything that could escape `state_dir`.
fn check_system_id(system_id: &str) -> Result<(), DriverError> {
    let ok = !system_id.is_empty()
        && system_id != "."
        && system_id != ".."
        && !system_id.contains(['/', '\\', '\0']);
    if ok {
        Ok(())
    } else {
        Err(DriverError::Bmc(format!(
            "system id '{system_id}' cannot name a file-backed BMC state file"
        )))
    }
}

impl PowerDriver for FileDriver {
    async fn run(&self, req: &PowerRequest) -> Result<PowerOutcome, DriverError> {
        let state_dir = req
            .params
            .get("state_dir")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .ok_or_else(|| {
                DriverError::Bmc(
                    "the file driver needs the power parameter state_dir (the directory of the BMC state files)"
                        .to_string(),
                )
            })?;
        check_system_id(&req.system_id)?;
        if let Some(ms) = req.params.get("delay_ms") {
            let ms: u64 = ms.parse().map_err(|_| {
                DriverError::Bmc(format!(
                    "file driver parameter delay_ms='{ms}' is not a number of milliseconds"
                ))
            })?;
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if let Some(kind) = req.params.get("fail") {
            let sys = &req.system_id;
            return Err(match kind.as_str() {
                "unreachable" => DriverError::Unreachable(format!(
                    "file-backed BMC of {sys} does not answer (fail=unreachable)"
                )),
                "auth" => DriverError::Auth(format!(
                    "file-backed BMC of {sys} refused the credentials (fail=auth)"
                )),
                "bmc" => DriverError::Bmc(format!(
                    "file-backed BMC of {sys} reported an error (fail=bmc)"
                )),
                other => DriverError::Bmc(format!(
                    "file driver parameter fail='{other}' is not one of unreachable, auth, bmc"
                )),
            });
        }
        let (system_id, id, action) = (req.system_id.clone(), req.command_id, req.action);
        let dir = state_dir.clone();
        let state = tokio::task::spawn_blocking(move || apply_locked(&dir, &system_id, id, action))
            .await
            .map_err(|e| DriverError::Bmc(format!("file-backed BMC task failed: {e}")))??;
        Ok(PowerOutcome {
            state,
            message: format!(
                "file-backed BMC: {} done, power {}",
                req.action.as_str(),
                state.as_str()
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    fn req(dir: &Path, id: u64, action: PowerAction) -> PowerRequest {
        PowerRequest {
            command_id: id,
            system_id: "m1".into(),
            action,
            params: HashMap::from([("state_dir".to_string(), dir.display().to_string())]),
        }
    }

    #[tokio::test]
    async fn applies_actions_and_logs_ids() {
        let d = tempfile::tempdir().unwrap();
        let drv = FileDriver;
        let steps = [
            (PowerAction::Query, PowerState::Off),
            (PowerAction::On, PowerState::On),
            (PowerAction::SoftOff, PowerState::Off),
            (PowerAction::Cycle, PowerState::On),
            (PowerAction::BootPxe, PowerState::On),
            (PowerAction::Off, PowerState::Off),
        ];
        for (i, (action, want)) in steps.iter().enumerate() {
            let out = drv
                .run(&req(d.path(), 100 + i as u64, *action))
                .await
                .unwrap();
            assert_eq!(out.state, *want, "{action:?}");
        }
        let s = read_state(d.path(), "m1").unwrap();
        assert_eq!(s.power, FileBmcPower::Off);
        assert_eq!(s.boot, FileBmcBoot::Pxe);
        let ids: Vec<u64> = s.ops.iter().map(|o| o.id).collect();
        assert_eq!(ids, vec![100, 101, 102, 103, 104, 105]);
        assert_eq!(s.ops[2].action, "soft-off");

        // Unknown fields survive; the file is the documented shape.
        let p = state_path(d.path(), "m1");
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(v["power"], "off");
        assert_eq!(v["boot"], "pxe");
        v["cpu"] = serde_json::json!(4);
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
        drv.run(&req(d.path(), 200, PowerAction::BootDisk))
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(v["cpu"], 4);
        assert_eq!(v["boot"], "disk");
    }

    #[tokio::test]
    async fn fault_knobs() {
        let d = tempfile::tempdir().unwrap();
        for (fail, kind) in [
            ("unreachable", "unreachable"),
            ("auth", "auth"),
            ("bmc", "bmc"),
        ] {
            let mut r = req(d.path(), 1, PowerAction::On);
            r.params.insert("fail".into(), fail.into());
            assert_eq!(FileDriver.run(&r).await.unwrap_err().kind(), kind);
        }
        assert!(read_state(d.path(), "m1").unwrap().ops.is_empty());
        let mut r = req(d.path(), 2, PowerAction::On);
        r.params.insert("delay_ms".into(), "50".into());
        let t = std::time::Instant::now();
        FileDriver.run(&r).await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(50));
        let mut r = req(d.path(), 3, PowerAction::On);
        r.system_id = "../x".into();
        assert_eq!(FileDriver.run(&r).await.unwrap_err().kind(), "bmc");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_ops_do_not_lose_updates() {
        let d = Arc::new(tempfile::tempdir().unwrap());
        let mut tasks = Vec::new();
        for t in 0..2u64 {
            let d = d.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..40u64 {
                    let action = if i % 2 == 0 {
                        PowerAction::On
                    } else {
                        PowerAction::Off
                    };
                    FileDriver
                        .run(&req(d.path(), t * 1000 + i, action))
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let s = read_state(d.path(), "m1").unwrap();
        assert_eq!(s.ops.len(), 80);
        let mut ids: Vec<u64> = s.ops.iter().map(|o| o.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 80);
    }
}
