//! What every operation's handler knows besides its operation: who asked, when, and the change's
//! revision, taken from the [`Command`] envelope once so handlers never see the envelope.

use crate::command::Command;

/// The context of one applied command.
#[derive(Clone, Copy, Debug)]
pub(super) struct ApplyCtx<'a> {
    /// Who asked (token name or region identity): owner checks and events.
    pub actor: &'a str,
    /// The proposer's wall-clock time (ms since epoch): the apply step's only notion of "now".
    pub ts_ms: u64,
    /// This change's revision (see [`crate::command::revision`]).
    pub rev: u64,
}

impl<'a> ApplyCtx<'a> {
    /// The context of `cmd` applied at revision `rev`.
    pub fn new(cmd: &'a Command, rev: u64) -> ApplyCtx<'a> {
        ApplyCtx {
            actor: &cmd.actor,
            ts_ms: cmd.ts_ms,
            rev,
        }
    }
}
