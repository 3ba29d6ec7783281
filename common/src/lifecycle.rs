//! The machine lifecycle: the one transition table, the only source of truth for which action is legal
//! in which status and where it leads. The region's apply step consults it for every change, the API
//! quotes it in `FailedPrecondition` errors, and the CLI prints it (`ingot machines actions`).
//!
//! Two kinds of input move a machine:
//! - [`Action`]s, asked for by people and programs (commission, allocate, deploy, release, ...);
//! - [`Outcome`]s, reported by the machine's current boot (the in-band agent), the power path, or the
//!   region's deadline sweeper (done, failed, timed out).

use crate::MachineStatus::{self, *};
use serde::{Deserialize, Serialize};

/// What an operator or program asks a machine to do.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)] // each variant is the action of the same name, documented in `as_str` order
pub enum Action {
    Commission,
    Test,
    Abort,
    Allocate,
    Deploy,
    Release,
    MarkBroken,
    MarkFixed,
    Lock,
    Unlock,
    EnterRescue,
    ExitRescue,
    Retire,
    SetZone,
    SetPool,
    Tag,
    Untag,
    Update,
    Delete,
}

impl Action {
    /// Every action, in the order the CLI lists them.
    pub const ALL: [Action; 19] = [
        Action::Commission,
        Action::Test,
        Action::Abort,
        Action::Allocate,
        Action::Deploy,
        Action::Release,
        Action::MarkBroken,
        Action::MarkFixed,
        Action::Lock,
        Action::Unlock,
        Action::EnterRescue,
        Action::ExitRescue,
        Action::Retire,
        Action::SetZone,
        Action::SetPool,
        Action::Tag,
        Action::Untag,
        Action::Update,
        Action::Delete,
    ];

    /// Kebab-case name, as the CLI spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Commission => "commission",
            Action::Test => "test",
            Action::Abort => "abort",
            Action::Allocate => "allocate",
            Action::Deploy => "deploy",
            Action::Release => "release",
            Action::MarkBroken => "mark-broken",
            Action::MarkFixed => "mark-fixed",
            Action::Lock => "lock",
            Action::Unlock => "unlock",
            Action::EnterRescue => "enter-rescue",
            Action::ExitRescue => "exit-rescue",
            Action::Retire => "retire",
            Action::SetZone => "set-zone",
            Action::SetPool => "set-pool",
            Action::Tag => "tag",
            Action::Untag => "untag",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }

    /// Parses [`Action::as_str`] names (`_` accepted for `-`).
    pub fn parse(s: &str) -> Option<Action> {
        let n = s.trim().to_ascii_lowercase().replace('_', "-");
        Action::ALL.into_iter().find(|a| a.as_str() == n)
    }

    /// Actions that only an admin may take. The rest are open to the machine's owner (and admins);
    /// `Allocate` is open to every user.
    pub fn admin_only(self) -> bool {
        !matches!(
            self,
            Action::Allocate
                | Action::Deploy
                | Action::Release
                | Action::Abort
                | Action::MarkBroken
                | Action::Lock
                | Action::Unlock
                | Action::EnterRescue
                | Action::ExitRescue
        )
    }
}

/// Where a transition leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// To this status.
    To(MachineStatus),
    /// Back to the status the machine had before its current in-progress one.
    Previous,
    /// The status does not change (edits, tags, locks).
    Stay,
}

/// The transition table: (from, action, next). A pair that is not listed is illegal. Actions that edit
/// without changing the status (set-zone, set-pool, tag, untag, update) are legal in every status and
/// are not listed; a lock refuses them all (see [`check_action`]).
pub const TABLE: &[(MachineStatus, Action, Next)] = &[
    (New, Action::Commission, Next::To(Commissioning)),
    (New, Action::MarkBroken, Next::To(Broken)),
    (New, Action::Retire, Next::To(Retired)),
    (New, Action::Delete, Next::Stay),
    (Commissioning, Action::Abort, Next::Previous),
    (
        FailedCommissioning,
        Action::Commission,
        Next::To(Commissioning),
    ),
    (FailedCommissioning, Action::MarkBroken, Next::To(Broken)),
    (FailedCommissioning, Action::Retire, Next::To(Retired)),
    (FailedCommissioning, Action::Delete, Next::Stay),
    (Testing, Action::Abort, Next::Previous),
    (FailedTesting, Action::Commission, Next::To(Commissioning)),
    (FailedTesting, Action::Test, Next::To(Testing)),
    (FailedTesting, Action::MarkFixed, Next::To(Ready)),
    (FailedTesting, Action::MarkBroken, Next::To(Broken)),
    (FailedTesting, Action::Retire, Next::To(Retired)),
    (FailedTesting, Action::Delete, Next::Stay),
    (Ready, Action::Commission, Next::To(Commissioning)),
    (Ready, Action::Test, Next::To(Testing)),
    (Ready, Action::Allocate, Next::To(Allocated)),
    (Ready, Action::MarkBroken, Next::To(Broken)),
    (Ready, Action::Retire, Next::To(Retired)),
    (Ready, Action::Delete, Next::Stay),
    (Allocated, Action::Deploy, Next::To(Deploying)),
    (Allocated, Action::Release, Next::To(Releasing)),
    (Allocated, Action::MarkBroken, Next::To(Broken)),
    (Deploying, Action::Abort, Next::To(Allocated)),
    (Deployed, Action::Release, Next::To(Releasing)),
    (Deployed, Action::EnterRescue, Next::To(EnteringRescueMode)),
    (Deployed, Action::Test, Next::To(Testing)),
    (Deployed, Action::MarkBroken, Next::To(Broken)),
    (Deployed, Action::Lock, Next::Stay),
    (Deployed, Action::Unlock, Next::Stay),
    (FailedDeployment, Action::Deploy, Next::To(Deploying)),
    (FailedDeployment, Action::Release, Next::To(Releasing)),
    (
        FailedDeployment,
        Action::EnterRescue,
        Next::To(EnteringRescueMode),
    ),
    (FailedDeployment, Action::MarkBroken, Next::To(Broken)),
    (FailedReleasing, Action::Release, Next::To(Releasing)),
    (FailedReleasing, Action::MarkBroken, Next::To(Broken)),
    (DiskErasing, Action::Abort, Next::To(FailedDiskErasing)),
    (FailedDiskErasing, Action::Release, Next::To(Releasing)),
    (FailedDiskErasing, Action::MarkBroken, Next::To(Broken)),
    (EnteringRescueMode, Action::Abort, Next::Previous),
    (
        FailedEnteringRescueMode,
        Action::EnterRescue,
        Next::To(EnteringRescueMode),
    ),
    (
        FailedEnteringRescueMode,
        Action::ExitRescue,
        Next::To(ExitingRescueMode),
    ),
    (
        FailedEnteringRescueMode,
        Action::MarkBroken,
        Next::To(Broken),
    ),
    (RescueMode, Action::ExitRescue, Next::To(ExitingRescueMode)),
    (
        FailedExitingRescueMode,
        Action::ExitRescue,
        Next::To(ExitingRescueMode),
    ),
    (
        FailedExitingRescueMode,
        Action::MarkBroken,
        Next::To(Broken),
    ),
    (Broken, Action::MarkFixed, Next::Previous),
    (Broken, Action::Commission, Next::To(Commissioning)),
    (Broken, Action::Release, Next::To(Releasing)),
    (Broken, Action::Retire, Next::To(Retired)),
    (Broken, Action::Delete, Next::Stay),
    (Missing, Action::Commission, Next::To(Commissioning)),
    (Missing, Action::MarkBroken, Next::To(Broken)),
    (Missing, Action::Delete, Next::Stay),
    (Retired, Action::Commission, Next::To(Commissioning)),
    (Retired, Action::Delete, Next::Stay),
];

/// Actions legal in every status (when not locked): they edit the machine without moving it.
pub const EDITS: [Action; 5] = [
    Action::SetZone,
    Action::SetPool,
    Action::Tag,
    Action::Untag,
    Action::Update,
];

/// The result reported for an in-progress status.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The work finished (agent reported success, or the power step completed).
    Done,
    /// The work failed; the reason travels with it.
    Failed,
    /// The status' deadline passed.
    TimedOut,
}

/// The in-progress statuses: work is running, it has a deadline, and an [`Outcome`] ends it.
pub fn in_progress(s: MachineStatus) -> bool {
    matches!(
        s,
        Commissioning
            | Testing
            | Deploying
            | Releasing
            | DiskErasing
            | EnteringRescueMode
            | ExitingRescueMode
    )
}

/// Statuses in which the machine belongs to its owner: it cannot be deleted or re-allocated until it
/// is released.
pub fn owned(s: MachineStatus) -> bool {
    matches!(
        s,
        Allocated
            | Deploying
            | Deployed
            | FailedDeployment
            | EnteringRescueMode
            | FailedEnteringRescueMode
            | RescueMode
            | ExitingRescueMode
            | FailedExitingRescueMode
            | Releasing
            | FailedReleasing
            | DiskErasing
            | FailedDiskErasing
    )
}

/// Where a failed or timed-out in-progress status goes.
pub fn failed_status(s: MachineStatus) -> Option<MachineStatus> {
    Some(match s {
        Commissioning => FailedCommissioning,
        Testing => FailedTesting,
        Deploying => FailedDeployment,
        Releasing => FailedReleasing,
        DiskErasing => FailedDiskErasing,
        EnteringRescueMode => FailedEnteringRescueMode,
        ExitingRescueMode => FailedExitingRescueMode,
        _ => return None,
    })
}

/// Where a successful in-progress status goes. `Releasing` leads to `DiskErasing` when an erase was
/// asked for (decided by the caller); `Testing` and `ExitingRescueMode` return to the previous status.
pub fn done_status(s: MachineStatus) -> Option<Next> {
    Some(match s {
        Commissioning => Next::To(Ready),
        Testing => Next::Previous,
        Deploying => Next::To(Deployed),
        Releasing => Next::To(Ready),
        DiskErasing => Next::To(Ready),
        EnteringRescueMode => Next::To(RescueMode),
        ExitingRescueMode => Next::Previous,
        _ => return None,
    })
}

/// What an in-progress status boots the machine for (the purpose of its per-boot token), or `None` when
/// the status needs only the power path (releasing, leaving rescue).
pub fn boot_purpose(s: MachineStatus) -> Option<&'static str> {
    Some(match s {
        Commissioning => "commissioning",
        Testing => "testing",
        Deploying => "deploying",
        DiskErasing => "erasing",
        EnteringRescueMode => "rescue",
        _ => return None,
    })
}

/// Default deadline of each in-progress status, in seconds (MAAS's defaults where it has them).
pub fn default_deadline_s(s: MachineStatus) -> Option<u64> {
    Some(match s {
        Commissioning => 30 * 60,
        Testing => 60 * 60,
        Deploying => 30 * 60,
        Releasing => 10 * 60,
        DiskErasing => 6 * 60 * 60,
        EnteringRescueMode | ExitingRescueMode => 15 * 60,
        _ => return None,
    })
}

/// The actions legal from `s` (ignoring roles and locks), in [`Action::ALL`] order.
pub fn allowed(s: MachineStatus) -> Vec<Action> {
    Action::ALL
        .into_iter()
        .filter(|a| EDITS.contains(a) || TABLE.iter().any(|(f, x, _)| *f == s && x == a))
        .collect()
}

/// Looks up `action` from `from`, honouring the lock. The error is what the API returns as
/// `FailedPrecondition`: the current status and the actions allowed from it.
pub fn check_action(from: MachineStatus, locked: bool, action: Action) -> Result<Next, String> {
    if locked && action != Action::Unlock {
        return Err(format!(
            "the machine is locked ({} and locked): only unlock is allowed; run `ingot machines unlock` first",
            from.as_str()
        ));
    }
    if EDITS.contains(&action) {
        return Ok(Next::Stay);
    }
    if action == Action::Lock && locked {
        return Err("the machine is already locked".into());
    }
    if action == Action::Unlock && !locked {
        return Err("the machine is not locked".into());
    }
    match TABLE.iter().find(|(f, a, _)| *f == from && *a == action) {
        Some((_, _, n)) => Ok(*n),
        None => {
            let ok: Vec<&str> = allowed(from).into_iter().map(|a| a.as_str()).collect();
            Err(format!(
                "cannot {} a machine in status {}; allowed from {}: {}",
                action.as_str(),
                from.as_str(),
                from.as_str(),
                ok.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table_has_no_duplicate_rows() {
        for (i, (f, a, _)) in TABLE.iter().enumerate() {
            assert!(
                !TABLE[i + 1..].iter().any(|(g, b, _)| g == f && b == a),
                "duplicate row {f:?} {a:?}"
            );
        }
    }

    #[test]
    fn every_status_is_reachable_from_new_and_every_failure_is_recoverable() {
        // Reachability over actions and outcomes.
        let mut seen = vec![New];
        let mut frontier = vec![New];
        while let Some(s) = frontier.pop() {
            let mut next: Vec<MachineStatus> = TABLE
                .iter()
                .filter(|(f, _, _)| *f == s)
                .filter_map(|(_, _, n)| match n {
                    Next::To(t) => Some(*t),
                    _ => None,
                })
                .collect();
            if let Some(f) = failed_status(s) {
                next.push(f);
            }
            if let Some(Next::To(t)) = done_status(s) {
                next.push(t);
            }
            if s == Releasing {
                next.push(DiskErasing);
            }
            for t in next {
                if !seen.contains(&t) {
                    seen.push(t);
                    frontier.push(t);
                }
            }
        }
        for s in MachineStatus::ALL {
            if s != Missing {
                assert!(seen.contains(&s), "{s:?} unreachable");
            }
            // No dead end: every status has a way out (an action, or an outcome).
            assert!(
                TABLE.iter().any(|(f, _, _)| *f == s) || in_progress(s),
                "{s:?} is a dead end"
            );
        }
    }

    #[test]
    fn in_progress_statuses_have_failures_and_deadlines() {
        for s in MachineStatus::ALL {
            assert_eq!(in_progress(s), failed_status(s).is_some(), "{s:?}");
            assert_eq!(in_progress(s), done_status(s).is_some(), "{s:?}");
            assert_eq!(in_progress(s), default_deadline_s(s).is_some(), "{s:?}");
        }
    }

    #[test]
    fn illegal_actions_name_status_and_alternatives() {
        let e = check_action(New, false, Action::Deploy).unwrap_err();
        assert!(e.contains("status new"), "{e}");
        assert!(e.contains("commission"), "{e}");
        let e = check_action(Deployed, true, Action::Release).unwrap_err();
        assert!(e.contains("locked"), "{e}");
        assert_eq!(check_action(Deployed, true, Action::Unlock), Ok(Next::Stay));
        assert!(check_action(Deployed, false, Action::Unlock).is_err());
    }

    #[test]
    fn names_roundtrip() {
        for a in Action::ALL {
            assert_eq!(Action::parse(a.as_str()), Some(a));
        }
        assert_eq!(Action::parse("mark_broken"), Some(Action::MarkBroken));
    }

    fn status() -> impl Strategy<Value = MachineStatus> {
        (0..MachineStatus::ALL.len()).prop_map(|i| MachineStatus::ALL[i])
    }
    fn action() -> impl Strategy<Value = Action> {
        (0..Action::ALL.len()).prop_map(|i| Action::ALL[i])
    }

    proptest! {
        // A random walk through the table never lands outside it, never allocates an owned machine,
        // and a lock holds until unlocked.
        #[test]
        fn random_walks_respect_the_table(start in status(), steps in prop::collection::vec(action(), 1..60)) {
            let mut s = start;
            let mut prev: Option<MachineStatus> = None;
            let mut locked = false;
            for a in steps {
                match check_action(s, locked, a) {
                    Ok(n) => {
                        prop_assert!(!locked || a == Action::Unlock);
                        if a == Action::Allocate { prop_assert_eq!(s, Ready); }
                        match a { Action::Lock => locked = true, Action::Unlock => locked = false, _ => {} }
                        let to = match n {
                            Next::To(t) => t,
                            Next::Previous => prev.unwrap_or(Ready),
                            Next::Stay => s,
                        };
                        if in_progress(to) && !in_progress(s) { prev = Some(s); }
                        s = to;
                    }
                    Err(e) => prop_assert!(!e.is_empty()),
                }
            }
        }

        #[test]
        fn allowed_agrees_with_check(s in status(), a in action()) {
            prop_assert_eq!(allowed(s).contains(&a), check_action(s, false, a).is_ok() || a == Action::Unlock && s == Deployed);
        }
    }
}
