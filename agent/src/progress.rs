//! How a job running on a blocking thread (deploy, erase, checks) talks to the flow: progress lines it
//! wants reported, and a flag the flow raises when the region says stop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One progress step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What is happening, for the console and the machine's record.
    pub message: String,
    /// 0..=100.
    pub percent: u32,
}

/// The job's side of the channel.
#[derive(Clone)]
pub struct Ctl {
    tx: tokio::sync::mpsc::UnboundedSender<Step>,
    cancel: Arc<AtomicBool>,
}

/// The flow's side.
pub struct Watch {
    /// Steps reported by the job.
    pub rx: tokio::sync::mpsc::UnboundedReceiver<Step>,
    /// Raise to stop the job.
    pub cancel: Arc<AtomicBool>,
}

/// A connected pair.
pub fn channel() -> (Ctl, Watch) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let cancel = Arc::new(AtomicBool::new(false));
    (
        Ctl {
            tx,
            cancel: cancel.clone(),
        },
        Watch { rx, cancel },
    )
}

impl Ctl {
    /// Reports a step (printed on the console by the flow, and sent to the rack).
    pub fn step(&self, message: impl Into<String>, percent: u32) {
        let _ = self.tx.send(Step {
            message: message.into(),
            percent: percent.min(100),
        });
    }

    /// Whether the flow asked the job to stop.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// How often long jobs report progress.
pub const EVERY: Duration = Duration::from_secs(5);

/// Throttles progress of a byte-counting job: [`Meter::due`] is true about every [`EVERY`].
pub struct Meter {
    started: Instant,
    last: Instant,
    /// The job's total bytes.
    pub total: u64,
}

impl Meter {
    /// A meter for `total` bytes.
    pub fn new(total: u64) -> Meter {
        let now = Instant::now();
        Meter {
            started: now,
            last: now,
            total,
        }
    }

    /// Whether a report is due (and, if so, restarts the period).
    pub fn due(&mut self) -> bool {
        if self.last.elapsed() >= EVERY {
            self.last = Instant::now();
            true
        } else {
            false
        }
    }

    /// `done` bytes as a progress line: "`what`: N MiB of M MiB (P%), R MiB/s", and the percent.
    pub fn line(&self, what: &str, done: u64) -> (String, u32) {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let pct = done
            .saturating_mul(100)
            .checked_div(self.total)
            .map_or(100, |p| p.min(100) as u32);
        (
            format!(
                "{what}: {} MiB of {} MiB ({pct}%), {:.1} MiB/s",
                done >> 20,
                self.total >> 20,
                done as f64 / 1048576.0 / secs
            ),
            pct,
        )
    }

    /// Seconds since the start.
    pub fn secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64().max(0.001)
    }
}
