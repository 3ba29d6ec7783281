//! Boot events: the steps of network boots the rack saw (a DHCP answer to a PXE client, a script served
//! with its purpose, a file download started, finished or aborted), sent to the region in batches, where
//! each becomes an event of the MAC's machine.
//!
//! [`BootEventSink::push`] never blocks and never grows without bound: events wait in a queue of at
//! most [`QUEUE_MAX`] (newer ones are dropped and counted when it is full, e.g. while no region is
//! reachable), and the sender task sends at most [`BATCH_MAX`] per `BootEvents` message about once a
//! second ([`SEND_EVERY`]) — a boot storm costs the region one log entry a second per rack, not one per
//! packet. Details are cut to [`DETAIL_MAX`] bytes. Any part of the rack may push: the DHCP service, the
//! HTTP server, and (wired later) the TFTP server's transfer callbacks.

use super::link::RegionLink;
use ingot_common::image::BootStep;
use ingot_common::Mac;
use ingot_proto::rack::v1 as proto;
use ingot_proto::rack::v1::rack_message::Msg as RackMsg;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;

/// Most events waiting to be sent: 16 a second for four minutes from a rack of 64 booting machines, a
/// few hundred KiB at most.
pub const QUEUE_MAX: usize = 4096;
/// Most events in one `BootEvents` message (the region's cap per log entry).
pub const BATCH_MAX: usize = 256;
/// Longest detail sent, in bytes (the region's cap).
pub const DETAIL_MAX: usize = 200;
/// How often queued events are sent.
pub const SEND_EVERY: Duration = Duration::from_secs(1);

/// One step of a network boot, as the rack saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEvent {
    /// The booting MAC.
    pub mac: Mac,
    /// What happened.
    pub step: BootStep,
    /// Details for the operator ("10.20.0.7 on 10.20.0.0/24", "purpose commission"), at most
    /// [`DETAIL_MAX`] bytes.
    pub detail: String,
    /// When (ms since the epoch).
    pub at_ms: u64,
}

/// Counters of the sink, monotonic since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkCounters {
    /// Events pushed and queued.
    pub queued: u64,
    /// Events dropped because the queue was full.
    pub dropped: u64,
    /// Events sent to a region.
    pub sent: u64,
    /// `BootEvents` messages sent.
    pub messages: u64,
}

/// Locks a mutex, ignoring poisoning.
fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The bounded queue of boot events and its counters (see the module docs). Cheap to share.
#[derive(Debug, Default)]
pub struct BootEventSink {
    /// Events waiting to be sent, oldest first (at most [`QUEUE_MAX`]).
    queue: Mutex<VecDeque<BootEvent>>,
    /// See [`SinkCounters::queued`].
    queued: AtomicU64,
    /// See [`SinkCounters::dropped`].
    dropped: AtomicU64,
    /// See [`SinkCounters::sent`].
    sent: AtomicU64,
    /// See [`SinkCounters::messages`].
    messages: AtomicU64,
}

impl BootEventSink {
    /// An empty sink; start its sender with [`BootEventSink::run`].
    pub fn new() -> Arc<BootEventSink> {
        Arc::new(BootEventSink::default())
    }

    /// Queues one step (detail cut to [`DETAIL_MAX`] bytes at a character boundary); dropped and
    /// counted when the queue is full.
    pub fn push(&self, mac: Mac, step: BootStep, detail: impl Into<String>) {
        let mut detail = detail.into();
        ingot_common::validate::truncate_text(&mut detail, DETAIL_MAX);
        let mut q = lock(&self.queue);
        if q.len() >= QUEUE_MAX {
            drop(q);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.push_back(BootEvent {
            mac,
            step,
            detail,
            at_ms: now_ms(),
        });
        self.queued.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters so far.
    pub fn counters(&self) -> SinkCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SinkCounters {
            queued: get(&self.queued),
            dropped: get(&self.dropped),
            sent: get(&self.sent),
            messages: get(&self.messages),
        }
    }

    /// How many events wait.
    pub fn len(&self) -> usize {
        lock(&self.queue).len()
    }

    /// Whether no event waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends one batch (at most [`BATCH_MAX`], oldest first) on `link`'s session; the events stay
    /// queued when there is no session or its queue is full. Returns how many were sent.
    pub fn flush_once(&self, link: &RegionLink) -> usize {
        let batch: Vec<BootEvent> = {
            let q = lock(&self.queue);
            q.iter().take(BATCH_MAX).cloned().collect()
        };
        if batch.is_empty() || !link.online() {
            return 0;
        }
        let n = batch.len();
        let msg = RackMsg::BootEvents(proto::BootEvents {
            events: batch
                .into_iter()
                .map(|e| proto::BootEvent {
                    mac: e.mac.to_string(),
                    step: e.step.as_str().to_string(),
                    detail: e.detail,
                    at_ms: e.at_ms,
                })
                .collect(),
        });
        if !link.try_send(msg) {
            return 0;
        }
        {
            let mut q = lock(&self.queue);
            let k = n.min(q.len());
            q.drain(..k);
        }
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
        self.messages.fetch_add(1, Ordering::Relaxed);
        n
    }

    /// Sends queued events every [`SEND_EVERY`] until `shutdown`.
    pub async fn run(self: Arc<Self>, link: Arc<RegionLink>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(SEND_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.flush_once(&link);
                }
                _ = async { shutdown.wait_for(|v| *v).await.is_ok() } => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ingot_proto::rack::v1::RackMessage;
    use tokio::sync::mpsc;

    #[test]
    fn events_are_bounded_batched_and_kept_while_offline() {
        let sink = BootEventSink::new();
        let link = RegionLink::new();
        let mac: Mac = "52:54:00:00:00:01".parse().expect("mac");
        sink.push(
            mac,
            BootStep::Script,
            format!("{}é", "d".repeat(DETAIL_MAX - 1)),
        );
        for _ in 0..QUEUE_MAX + 10 {
            sink.push(mac, BootStep::Dhcp, "x");
        }
        let c = sink.counters();
        assert_eq!((c.queued, c.dropped), (QUEUE_MAX as u64, 11));
        // No session: nothing sent, nothing lost.
        assert_eq!(sink.flush_once(&link), 0);
        assert_eq!(sink.len(), QUEUE_MAX);
        let (tx, mut rx) = mpsc::channel(64);
        link.opened(1, tx);
        assert_eq!(sink.flush_once(&link), BATCH_MAX);
        let Ok(RackMessage {
            msg: Some(RackMsg::BootEvents(b)),
        }) = rx.try_recv()
        else {
            panic!("no BootEvents sent");
        };
        assert_eq!(b.events.len(), BATCH_MAX);
        assert_eq!(b.events[0].step, "script");
        assert_eq!(
            b.events[0].detail.len(),
            DETAIL_MAX - 1,
            "cut at a boundary"
        );
        assert_eq!(b.events[1].mac, "52:54:00:00:00:01");
        assert_eq!(sink.len(), QUEUE_MAX - BATCH_MAX);
        link.closed(1);
        assert_eq!(sink.flush_once(&link), 0);
    }
}
