//! Events written by the apply step: built field by field with [`EventBuilder`] and appended by
//! [`EventBuilder::record`], the one place the event log grows.

use super::ctx::ApplyCtx;
use crate::state::{State, EVENTS_MAX};
use ingot_common::model::{Event, EventLevel};
use ingot_common::{Machine, MachineStatus};

/// An event about to be recorded: its kind plus what the change is about (a machine, a status move, a
/// message); level Info unless set.
#[must_use = "an event is written only by record()"]
pub(super) struct EventBuilder<'a> {
    kind: String,
    level: EventLevel,
    machine: Option<&'a Machine>,
    from: Option<MachineStatus>,
    to: Option<MachineStatus>,
    message: String,
}

impl<'a> EventBuilder<'a> {
    /// An Info event of `kind` (e.g. `zone.create`, `deploy`, `power.plan`).
    pub fn new(kind: impl Into<String>) -> EventBuilder<'a> {
        EventBuilder {
            kind: kind.into(),
            level: EventLevel::Info,
            machine: None,
            from: None,
            to: None,
            message: String::new(),
        }
    }

    /// Sets the level.
    pub fn level(mut self, level: EventLevel) -> Self {
        self.level = level;
        self
    }

    /// The machine the event is about (its id, hostname, zone and owner are recorded).
    pub fn machine(mut self, m: impl Into<Option<&'a Machine>>) -> Self {
        self.machine = m.into();
        self
    }

    /// The status move the event records.
    pub fn moved(mut self, from: MachineStatus, to: MachineStatus) -> Self {
        self.from = Some(from);
        self.to = Some(to);
        self
    }

    /// The status a new machine starts in (no `from`).
    pub fn entered(mut self, to: MachineStatus) -> Self {
        self.to = Some(to);
        self
    }

    /// Free text.
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    /// Appends the event for the command of `ctx` (events of one command get consecutive `seq`s),
    /// dropping the oldest beyond [`EVENTS_MAX`].
    pub fn record(self, ctx: &ApplyCtx, state: &mut State) {
        let events = &mut state.data.events;
        let seq = match events.back() {
            Some(e) if e.revision == ctx.rev => e.seq + 1,
            _ => 0,
        };
        let m = self.machine;
        events.push_back(Event {
            revision: ctx.rev,
            seq,
            ts_ms: ctx.ts_ms,
            actor: ctx.actor.to_string(),
            kind: self.kind,
            level: self.level,
            system_id: m.map(|m| m.system_id.clone()).unwrap_or_default(),
            hostname: m.map(|m| m.hostname.clone()).unwrap_or_default(),
            zone: m.map(|m| m.zone.clone()).unwrap_or_default(),
            owner: m.and_then(|m| m.owner.clone()).unwrap_or_default(),
            from: self.from,
            to: self.to,
            message: self.message,
        });
        while events.len() > EVENTS_MAX {
            events.pop_front();
        }
    }
}
