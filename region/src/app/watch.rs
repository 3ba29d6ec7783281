//! `Watch`: machine changes streamed from a revision. Each region keeps the recent changes it applied
//! (`State::changes`); a watcher reads those after its revision whenever the state machine signals a new
//! revision, so reconnecting with the last revision seen (on any region) misses nothing. A revision older
//! than what the region retains is refused with `OutOfRange`: list again, then watch from the list's
//! revision.

use super::App;
use crate::state::MachineQuery;
use ingot_common::{DomainError, Machine};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// One item of a watch stream.
#[derive(Debug, Clone)]
pub enum WatchItem {
    /// A machine was created or changed (or left the filter: then its new state, which no longer
    /// matches). The number is the resume point (see [`resume_points`]).
    Put(u64, Arc<Machine>),
    /// A machine was deleted; its last state, with the resume point.
    Delete(u64, Arc<Machine>),
    /// Nothing new up to this revision.
    Progress(u64),
}

/// Interval of progress notifications on an idle stream.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);

impl App {
    /// Starts a watch for `actor` after `from` (0: from now). Items arrive on the returned channel; the
    /// watch stops when the receiver is dropped. Fails at once with `OutOfRange` when `from` is no longer
    /// retained. The caller's token is checked again on every batch: a revoked or expired token, or a
    /// changed role, ends the stream with the reason (the client reconnects, with what it may now see).
    pub async fn watch(
        &self,
        actor: &super::Actor,
        from: u64,
        q: MachineQuery,
    ) -> Result<mpsc::Receiver<Result<WatchItem, DomainError>>, DomainError> {
        let actor = actor.clone();
        // Make sure this region has applied everything acknowledged before the call.
        self.region.read_barrier(true).await?;
        let mut applied = self.region.applied.subscribe();
        let start = {
            let st = crate::locks::read(&self.region.state);
            if from == 0 {
                st.data.revision
            } else if from < st.changes_floor {
                return Err(out_of_range(from, st.changes_floor));
            } else {
                from
            }
        };
        let (tx, rx) = mpsc::channel(1024);
        let state = self.region.state.clone();
        tokio::spawn(async move {
            let mut last = start;
            let mut matching: HashSet<String> = HashSet::new();
            loop {
                let batch: Result<(Vec<WatchItem>, u64), DomainError> = {
                    let st = crate::locks::read(&state);
                    if let Err(e) = actor.still_holds(&st, ingot_common::now_ms()) {
                        Err(e)
                    } else if last < st.changes_floor {
                        Err(out_of_range(last, st.changes_floor))
                    } else {
                        let i = st.changes.partition_point(|c| c.revision <= last);
                        let mut items = Vec::new();
                        for c in st.changes.range(i..) {
                            let now_matches = q.matches(&c.machine);
                            let was = matching.contains(&c.machine.system_id);
                            if c.deleted {
                                if now_matches || was {
                                    items.push(WatchItem::Delete(c.revision, seen(&q, &c.machine)));
                                }
                                matching.remove(&c.machine.system_id);
                            } else if now_matches || was {
                                items.push(WatchItem::Put(c.revision, seen(&q, &c.machine)));
                                if now_matches {
                                    matching.insert(c.machine.system_id.clone());
                                } else {
                                    matching.remove(&c.machine.system_id);
                                }
                            }
                        }
                        resume_points(&mut items);
                        Ok((items, st.data.revision.max(last)))
                    }
                };
                match batch {
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    Ok((items, rev)) => {
                        for it in items {
                            if tx.send(Ok(it)).await.is_err() {
                                return;
                            }
                        }
                        last = rev;
                    }
                }
                tokio::select! {
                    r = applied.changed() => if r.is_err() { return },
                    _ = tokio::time::sleep(PROGRESS_EVERY) => {
                        if tx.send(Ok(WatchItem::Progress(last))).await.is_err() {
                            return;
                        }
                    }
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(rx)
    }
}

/// The machine as the watcher may see it: a non-admin's watch shows a machine once more as it leaves the
/// filter (someone else allocated it), without that user's name, consumer and request id, and never
/// with BMC details ([`super::views`]).
fn seen(q: &MachineQuery, m: &Arc<Machine>) -> Arc<Machine> {
    match super::views::machine_for(q.visible_to.as_deref(), m) {
        std::borrow::Cow::Borrowed(_) => m.clone(),
        std::borrow::Cow::Owned(v) => Arc::new(v),
    }
}

/// One command may change several machines under one revision (group allocation, a tag definition,
/// a zone rename). Every item but the last of such a run carries `revision - 1` as its resume point, so a
/// client resuming from the last item it received never skips the rest of that revision (it may see some
/// of them twice — the same state again).
fn resume_points(items: &mut [WatchItem]) {
    let rev = |i: &WatchItem| match i {
        WatchItem::Put(r, _) | WatchItem::Delete(r, _) | WatchItem::Progress(r) => *r,
    };
    for i in 0..items.len().saturating_sub(1) {
        let (a, b) = (rev(&items[i]), rev(&items[i + 1]));
        if a == b {
            match &mut items[i] {
                WatchItem::Put(r, _) | WatchItem::Delete(r, _) | WatchItem::Progress(r) => {
                    *r = a.saturating_sub(1)
                }
            }
        }
    }
}

fn out_of_range(from: u64, floor: u64) -> DomainError {
    DomainError::out_of_range(format!(
        "revision {from} is older than the oldest change this region retains ({floor}); list the machines again and watch from the revision the list returns"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revision_shared_by_several_changes_resumes_before_it() {
        let m = Arc::new(
            serde_json::from_value::<Machine>(serde_json::json!({
                "system_id": "a", "hostname": "a", "arch": "amd64/generic", "zone": "default",
                "status": "Ready", "macs": [], "power": {"driver": "", "params": {}},
                "description": "", "created_ms": 0, "updated_ms": 0, "revision": 1
            }))
            .expect("machine"),
        );
        let mut items = vec![
            WatchItem::Put(5, m.clone()),
            WatchItem::Put(7, m.clone()),
            WatchItem::Put(7, m.clone()),
            WatchItem::Delete(7, m.clone()),
            WatchItem::Put(8, m),
        ];
        resume_points(&mut items);
        let revs: Vec<u64> = items
            .iter()
            .map(|i| match i {
                WatchItem::Put(r, _) | WatchItem::Delete(r, _) | WatchItem::Progress(r) => *r,
            })
            .collect();
        assert_eq!(revs, vec![5, 6, 6, 7, 8]);
    }
}
