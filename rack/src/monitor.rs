//! The power monitor: reads the power state of every BMC this rack owns, with bounded concurrency, and
//! reports changes to the region.
//!
//! The region sends the list of owned BMCs (`Bmcs`) after every `Welcome` and whenever it changes;
//! [`Monitor::set_targets`] replaces the list. [`Monitor::run`] sweeps: every BMC whose next read is due is
//! queried (`query` through the same [`Drivers`] commands use), at most `concurrency` at a time. What is
//! reported:
//! - a state different from the last one reported (on a new session everything is reported once: the
//!   region ignores what it already knows);
//! - an error only after `failure_threshold` consecutive failed reads of the same class, so one lost UDP
//!   packet or a BMC busy for a second never flaps a machine into an error (a failed read never touches
//!   the lifecycle status anyway);
//! - the recovery, at the first good read after a reported error.
//!
//! A BMC that fails is read less often: the interval doubles per consecutive failure up to
//! [`MAX_BACKOFF`], so a rack with 100 dead BMCs does not spend its concurrency waiting on timeouts.

use crate::drivers::{DriverError, Drivers, PowerRequest};
use futures::StreamExt;
use ingot_common::power::PowerAction;
use ingot_proto::rack::v1::{Bmc, PowerObservation};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Longest interval between reads of a failing BMC.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// How the monitor paces itself (`ingot-rack run --poll-interval-ms --poll-concurrency`).
#[derive(Debug, Clone, Copy)]
pub struct MonitorConfig {
    /// Time between two reads of a healthy BMC.
    pub interval: Duration,
    /// Most reads in flight at once.
    pub concurrency: usize,
    /// Consecutive failures of one class before an error is reported.
    pub failure_threshold: u32,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            interval: Duration::from_secs(10),
            concurrency: 64,
            failure_threshold: 3,
        }
    }
}

/// One BMC as the monitor tracks it.
#[derive(Debug, Clone)]
struct Target {
    /// Driver name and parameters, as the region sent them.
    bmc: Bmc,
    /// What was last reported for it (`Ok(state)` or `Err(class)`), `None` when nothing since the
    /// session began.
    reported: Option<Result<String, String>>,
    /// Consecutive failed reads.
    failures: u32,
    /// When the next read is due.
    due: Instant,
}

/// What one sweep did, for logs and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepStats {
    /// BMCs read.
    pub read: usize,
    /// Reads that failed.
    pub failed: usize,
    /// Observations produced (changes and errors).
    pub reported: usize,
    /// Wall time of the sweep.
    pub elapsed: Duration,
}

/// The monitor's shared state: targets and their history. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Monitor {
    /// Pacing.
    cfg: MonitorConfig,
    /// The BMCs, by machine.
    targets: Arc<Mutex<HashMap<String, Target>>>,
    /// The drivers reads go through.
    drivers: Drivers,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Monitor {
    /// A monitor with no targets yet.
    pub fn new(cfg: MonitorConfig, drivers: Drivers) -> Monitor {
        Monitor {
            cfg,
            targets: Arc::new(Mutex::new(HashMap::new())),
            drivers,
        }
    }

    /// Replaces the list of BMCs. Known BMCs whose settings did not change keep their history; new ones
    /// are read at once.
    pub fn set_targets(&self, bmcs: Vec<Bmc>) {
        let now = Instant::now();
        let mut t = lock(&self.targets);
        let mut next = HashMap::with_capacity(bmcs.len());
        for b in bmcs {
            let id = b.system_id.clone();
            let kept = t.remove(&id).filter(|old| old.bmc == b);
            next.insert(
                id,
                kept.unwrap_or(Target {
                    bmc: b,
                    reported: None,
                    failures: 0,
                    due: now,
                }),
            );
        }
        *t = next;
    }

    /// Forgets what was reported (a new session: the region gets every state once more) and makes every
    /// BMC due.
    pub fn reset_reported(&self) {
        let now = Instant::now();
        for t in lock(&self.targets).values_mut() {
            t.reported = None;
            t.due = now;
        }
    }

    /// How many BMCs are monitored.
    pub fn len(&self) -> usize {
        lock(&self.targets).len()
    }

    /// True when no BMC is monitored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads every due BMC once (all of them with `all`) and returns the observations to report.
    pub async fn sweep(&self, all: bool) -> (Vec<PowerObservation>, SweepStats) {
        let started = Instant::now();
        let due: Vec<Bmc> = {
            let t = lock(&self.targets);
            t.values()
                .filter(|t| all || t.due <= started)
                .map(|t| t.bmc.clone())
                .collect()
        };
        let reads = futures::stream::iter(due.into_iter().map(|b| {
            let drivers = self.drivers.clone();
            async move {
                let req = PowerRequest {
                    command_id: 0,
                    system_id: b.system_id.clone(),
                    action: PowerAction::Query,
                    params: b.params.clone(),
                };
                let r = drivers.run(&b.driver, &req).await;
                (b, r, ingot_common::now_ms())
            }
        }))
        .buffer_unordered(self.cfg.concurrency.max(1));
        let results: Vec<_> = reads.collect().await;
        let mut stats = SweepStats {
            read: results.len(),
            ..Default::default()
        };
        let mut out = Vec::new();
        let now = Instant::now();
        let mut t = lock(&self.targets);
        for (b, r, at_ms) in results {
            let Some(target) = t.get_mut(&b.system_id) else {
                continue; // removed meanwhile
            };
            if target.bmc != b {
                continue; // settings changed meanwhile: the new ones are read next
            }
            match r {
                Ok(o) => {
                    target.failures = 0;
                    target.due = now + self.cfg.interval;
                    let state = o.state.as_str().to_string();
                    if target.reported.as_ref() != Some(&Ok(state.clone())) {
                        target.reported = Some(Ok(state.clone()));
                        out.push(PowerObservation {
                            system_id: b.system_id,
                            power_state: state,
                            error_kind: String::new(),
                            message: String::new(),
                            observed_ms: at_ms,
                        });
                    }
                }
                Err(e) => {
                    stats.failed += 1;
                    target.failures = target.failures.saturating_add(1);
                    let backoff = self
                        .cfg
                        .interval
                        .saturating_mul(1u32 << target.failures.min(16).saturating_sub(1))
                        .min(MAX_BACKOFF);
                    target.due = now + backoff;
                    let class = e.kind().to_string();
                    if target.failures >= self.cfg.failure_threshold
                        && target.reported.as_ref() != Some(&Err(class.clone()))
                    {
                        target.reported = Some(Err(class.clone()));
                        out.push(observation_error(&b.system_id, &e, at_ms));
                    }
                }
            }
        }
        stats.reported = out.len();
        stats.elapsed = started.elapsed();
        (out, stats)
    }

    /// Sweeps until `shutdown`, sending observations (one batch per sweep, only when non-empty) to `tx`.
    pub async fn run(
        self,
        tx: mpsc::UnboundedSender<Vec<PowerObservation>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        // Sweeps start at most this often; a BMC is read when its own due time has come.
        let tick =
            (self.cfg.interval / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = shutdown.wait_for(|v| *v) => return,
            }
            let (obs, stats) = self.sweep(false).await;
            if stats.read > 0 {
                tracing::debug!(
                    read = stats.read,
                    failed = stats.failed,
                    reported = stats.reported,
                    ms = stats.elapsed.as_millis() as u64,
                    "power sweep"
                );
            }
            if !obs.is_empty() && tx.send(obs).is_err() {
                return;
            }
        }
    }
}

fn observation_error(system_id: &str, e: &DriverError, at_ms: u64) -> PowerObservation {
    PowerObservation {
        system_id: system_id.to_string(),
        power_state: String::new(),
        error_kind: e.kind().to_string(),
        message: e.to_string(),
        observed_ms: at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bmc(id: &str, dir: &std::path::Path, fail: Option<&str>) -> Bmc {
        let mut params: HashMap<String, String> =
            [("state_dir".to_string(), dir.display().to_string())].into();
        if let Some(f) = fail {
            params.insert("fail".into(), f.into());
        }
        Bmc {
            system_id: id.into(),
            driver: "file".into(),
            params,
        }
    }

    #[tokio::test]
    async fn reports_changes_once_and_errors_after_threshold() {
        let d = tempfile::tempdir().unwrap();
        let m = Monitor::new(
            MonitorConfig {
                interval: Duration::from_millis(1),
                concurrency: 4,
                failure_threshold: 3,
            },
            Drivers::default(),
        );
        m.set_targets(vec![
            bmc("a", d.path(), None),
            bmc("b", d.path(), Some("unreachable")),
        ]);
        let (obs, stats) = m.sweep(true).await;
        assert_eq!(stats.read, 2);
        assert_eq!(obs.len(), 1, "{obs:?}");
        assert_eq!(
            (obs[0].system_id.as_str(), obs[0].power_state.as_str()),
            ("a", "off")
        );
        // Same state again: nothing; b fails a second time: still nothing.
        let (obs, _) = m.sweep(true).await;
        assert!(obs.is_empty(), "{obs:?}");
        let (obs, _) = m.sweep(true).await;
        assert_eq!(obs.len(), 1);
        assert_eq!(
            (obs[0].system_id.as_str(), obs[0].error_kind.as_str()),
            ("b", "unreachable")
        );
        let (obs, _) = m.sweep(true).await;
        assert!(obs.is_empty(), "an error is reported once: {obs:?}");
        // A new session reports everything again.
        m.reset_reported();
        let (obs, _) = m.sweep(true).await;
        assert_eq!(obs.len(), 2, "{obs:?}");
        // Settings change resets history for that BMC only.
        m.set_targets(vec![bmc("a", d.path(), None), bmc("b", d.path(), None)]);
        let (obs, _) = m.sweep(true).await;
        assert_eq!(obs.len(), 1);
        assert_eq!(
            (obs[0].system_id.as_str(), obs[0].power_state.as_str()),
            ("b", "off")
        );
    }
}
