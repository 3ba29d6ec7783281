//! The leader's lifecycle worker: it moves machines whose in-progress deadline passed to their failed
//! status, and completes power-only steps (releasing, leaving rescue) for machines whose power driver
//! needs no rack (`manual`, `sim`, or none yet). Every move is a replicated `Outcome` command guarded by
//! the status it saw, so a late agent report and the worker can never both win.

use super::App;
use crate::command::{op, BootTokens, Command, Internal, Op, Principal};
use ingot_common::lifecycle::Outcome;
use ingot_common::MachineStatus;
use std::time::Duration;

/// How often the worker looks.
pub const TICK: Duration = Duration::from_millis(500);
/// Most commands per tick (bounded work per round).
const PER_TICK: usize = 512;
/// The actor recorded for the worker's commands.
pub const REGION_ACTOR: &str = "region";

/// Runs until `shutdown` flips; does work only while this region is the leader.
pub async fn run(app: App, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.wait_for(|v| *v) => return,
        }
        let leader = {
            let m = app.region.raft.metrics();
            let m = m.borrow();
            m.current_leader == Some(app.region.id)
        };
        if !leader {
            continue;
        }
        // A log written by older versions switches to requiring principals at the first command of
        // an upgraded leader (apply::authz): send one at once, an empty BMC assignment, harmless to
        // every version.
        if !crate::locks::read(&app.region.state)
            .data
            .principals_required
        {
            let op = Op::AssignBmcs(op::AssignBmcs {
                moves: Vec::new(),
                lease_ms: app.rack_grace_ms,
            });
            let cmd = Command::new(REGION_ACTOR, Principal::Internal(Internal::Region), op);
            if let Err(e) = app.region.write(cmd).await {
                tracing::debug!("switching the log to principals: {e}");
            }
        }
        // Proposed together: the proposer packs them into few log entries.
        let writes = due(&app, ingot_common::now_ms()).into_iter().map(|op| {
            let cmd = Command::new(REGION_ACTOR, Principal::Internal(Internal::Region), op);
            let region = app.region.clone();
            async move {
                if let Err(e) = region.write(cmd).await {
                    tracing::debug!("lifecycle worker: {e}");
                }
            }
        });
        futures::future::join_all(writes).await;
        let moves = bmc_moves(&app, ingot_common::now_ms());
        for chunk in moves.chunks(1000) {
            let moves = chunk.to_vec();
            let op = Op::AssignBmcs(op::AssignBmcs {
                moves,
                lease_ms: app.rack_grace_ms,
            });
            let cmd = Command::new(REGION_ACTOR, Principal::Internal(Internal::Region), op);
            if let Err(e) = app.region.write(cmd).await {
                tracing::debug!("BMC assignment: {e}");
            }
        }
    }
}

/// The outcomes due at `now`: overdue deadlines, then rack-less power steps.
pub fn due(app: &App, now: u64) -> Vec<Op> {
    let st = crate::locks::read(&app.region.state);
    let mut ops = Vec::new();
    for (deadline, id) in st.by_deadline.iter().take_while(|(d, _)| *d <= now) {
        let Some(m) = st.machine(id) else { continue };
        ops.push(Op::Outcome(op::Outcome {
            system_id: id.clone(),
            status: m.status,
            boot_id: None,
            outcome: Outcome::TimedOut,
            reason: format!(
                "{} did not finish by its deadline ({} s after it started)",
                m.status.as_str(),
                st.data
                    .settings
                    .deadline_s(m.status)
                    .unwrap_or((now.saturating_sub(*deadline)) / 1000)
            ),
            next_boot: BootTokens::generate(),
        }));
        if ops.len() >= PER_TICK {
            return ops;
        }
    }
    for status in [MachineStatus::Releasing, MachineStatus::ExitingRescueMode] {
        let Some(ids) = st.by_status.get(&status) else {
            continue;
        };
        for id in ids {
            let Some(m) = st.machine(id) else { continue };
            // Rack-driven machines complete power steps through their rack's result (apply/power.rs).
            if crate::apply::queue::rack_driven(&m.power.driver) {
                continue;
            }
            ops.push(Op::Outcome(op::Outcome {
                system_id: id.clone(),
                status,
                boot_id: None,
                outcome: Outcome::Done,
                reason: format!(
                    "power step done (power driver '{}' needs no rack)",
                    if m.power.driver.is_empty() {
                        "none"
                    } else {
                        &m.power.driver
                    }
                ),
                next_boot: BootTokens::generate(),
            }));
            if ops.len() >= PER_TICK {
                return ops;
            }
        }
    }
    ops
}

/// BMC ownership to change at `now`: every machine with a power driver whose BMC has no live rack goes to
/// the live rack of its zone that owns the fewest BMCs, or, when its zone has none, to the least loaded
/// live rack anywhere. A rack that comes back takes only BMCs that are free (no live owner): ownership
/// never flaps back.
pub fn bmc_moves(app: &App, now: u64) -> Vec<(String, Option<String>)> {
    let st = crate::locks::read(&app.region.state);
    let grace = app.rack_grace_ms;
    let live: Vec<(&str, &str)> = st
        .data
        .racks
        .values()
        .filter(|r| st.rack_live(&r.name, now, grace))
        .map(|r| (r.name.as_str(), r.zone.as_str()))
        .collect();
    if live.is_empty() {
        return Vec::new();
    }
    let mut load: std::collections::HashMap<&str, usize> = live
        .iter()
        .map(|(n, _)| (*n, st.by_rack.get(*n).map(|s| s.len()).unwrap_or(0)))
        .collect();
    let mut moves = Vec::new();
    for m in st.data.machines.values() {
        if m.power.driver.is_empty() {
            continue;
        }
        if m.rack.as_deref().is_some_and(|r| load.contains_key(r)) {
            continue;
        }
        let pick = |zone_only: bool, load: &std::collections::HashMap<&str, usize>| {
            live.iter()
                .filter(|(_, z)| !zone_only || *z == m.zone)
                .min_by_key(|(n, _)| (load.get(n).copied().unwrap_or(0), *n))
                .map(|(n, _)| *n)
        };
        let Some(target) = pick(true, &load).or_else(|| pick(false, &load)) else {
            continue;
        };
        *load.entry(target).or_default() += 1;
        moves.push((m.system_id.clone(), Some(target.to_string())));
    }
    // Power commands still fenced to a rack that is no longer live while their BMC moved on: "move" the
    // BMC to its owner again, which routes them there (apply re-checks the old rack's lease).
    let mut again: std::collections::BTreeSet<&str> =
        moves.iter().map(|(id, _)| id.as_str()).collect();
    let mut more = Vec::new();
    for id in &st.pending_power_commands {
        let Some(c) = st.data.power_commands.get(id) else {
            continue;
        };
        let Some(m) = st.machine(&c.system_id) else {
            continue;
        };
        let Some(on) = c.rack.as_deref() else {
            continue;
        };
        if m.rack.as_deref() == Some(on) || load.contains_key(on) {
            continue;
        }
        if again.insert(m.system_id.as_str()) {
            more.push((m.system_id.clone(), m.rack.clone()));
        }
    }
    moves.extend(more);
    moves
}
