//! Each machine's basic view, kept encoded so lists copy bytes instead of converting and encoding every
//! machine on every call (the largest cost of listing 10,000 machines). A background task follows the
//! change log and re-encodes changed machines off the apply path, before anyone lists them.
//!
//! The cache does not know the wire format: the API layer gives it the encoder
//! ([`crate::api::machines::encode_basic`]) when the region starts.

use super::App;
use crate::state::{Change, State};
use bytes::Bytes;
use ingot_common::Machine;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Turns a machine into its encoded basic view.
pub type Encoder = fn(&Machine) -> Bytes;

/// Encoded basic views keyed by system id, each valid for one machine revision. A machine is re-encoded
/// the first time it is listed after a change, unless [`EncodedMachines::follow`] got there first.
pub struct EncodedMachines {
    encode: Encoder,
    map: RwLock<HashMap<String, (u64, Bytes)>>,
}

impl EncodedMachines {
    /// An empty cache encoding with `encode`.
    pub fn new(encode: Encoder) -> Self {
        EncodedMachines {
            encode,
            map: RwLock::new(HashMap::new()),
        }
    }

    /// The encoded basic view of `m` at its current revision.
    pub fn get(&self, m: &Machine) -> Bytes {
        if let Some((rev, b)) = crate::locks::read(&self.map).get(&m.system_id) {
            if *rev == m.revision {
                return b.clone();
            }
        }
        let b = (self.encode)(m);
        crate::locks::write(&self.map).insert(m.system_id.clone(), (m.revision, b.clone()));
        b
    }

    /// Keeps the cache warm: after every apply, encodes the machines that changed, off the apply path and
    /// before anyone lists them. Runs until the state machine goes away.
    pub async fn follow(self: Arc<Self>, app: App) {
        let mut applied = app.region.applied.subscribe();
        let mut last = 0u64;
        loop {
            let changed = {
                let st = crate::locks::read(&app.region.state);
                newest_changes(&st, &mut last)
            };
            for m in changed {
                self.get(&m);
            }
            if applied.changed().await.is_err() {
                return;
            }
        }
    }

    /// Drops entries of machines that no longer exist, once the cache holds many more entries than there
    /// are machines (so deletions cost nothing until they add up).
    pub fn prune(&self, app: &App) {
        let st = crate::locks::read(&app.region.state);
        let live = st.data.machines.len();
        let mut map = crate::locks::write(&self.map);
        if map.len() > live * 2 + 1024 {
            map.retain(|id, _| st.data.machines.contains_key(id));
        }
    }
}

/// The newest version of every machine changed after revision `*last`, which moves up to the state's
/// revision. One command can change a machine twice under one revision (a power result that confirms the
/// power state and completes the status): only the last change is the state's machine, and encoding an
/// earlier one would pin a stale view under the current revision.
fn newest_changes(st: &State, last: &mut u64) -> Vec<Arc<Machine>> {
    let i = st.changes.partition_point(|c| c.revision <= *last);
    *last = st.data.revision.max(*last);
    let mut newest: HashMap<&str, &Change> = HashMap::new();
    for c in st.changes.range(i..) {
        newest.insert(c.machine.system_id.as_str(), c);
    }
    newest
        .into_values()
        .filter(|c| !c.deleted)
        .map(|c| c.machine.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::zones::tests::machine;
    use ingot_common::MachineStatus;

    fn by_status(m: &Machine) -> Bytes {
        Bytes::from(format!("{}:{:?}", m.system_id, m.status))
    }

    #[test]
    fn a_machine_changed_twice_in_one_revision_lists_its_last_version() {
        let mut st = State::default();
        let mut m = machine("m1", "default", MachineStatus::Releasing);
        m.revision = 50_000;
        st.put_machine(m.clone());
        m.status = MachineStatus::Ready; // same command, same revision
        st.put_machine(m);
        st.data.revision = 50_000;
        let cache = EncodedMachines::new(by_status);
        let mut last = 0;
        for m in newest_changes(&st, &mut last) {
            cache.get(&m);
        }
        assert_eq!(last, 50_000);
        let listed = st.machine("m1").expect("stored");
        assert_eq!(
            cache.get(listed),
            by_status(listed),
            "a list must show the state's machine"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// After any sequence of applies, with the follower running after each one as it does in a region,
        /// every listed machine's bytes equal the encoding of the state's machine.
        #[test]
        fn listed_bytes_are_the_state_machines_encoding(
            steps in proptest::collection::vec(crate::apply::invariant_tests::step(), 1..120)
        ) {
            use crate::apply::invariant_tests::{fleet, play};
            let full = |m: &Machine| Bytes::from(serde_json::to_vec(m).expect("machine encodes"));
            let cache = EncodedMachines::new(|m| Bytes::from(serde_json::to_vec(m).expect("machine encodes")));
            let mut st = fleet(8);
            let mut last = 0;
            play(&mut st, &steps, &mut |s| {
                for m in newest_changes(s, &mut last) {
                    cache.get(&m);
                }
                for m in s.data.machines.values() {
                    proptest::prop_assert_eq!(cache.get(m), full(m), "listed {} differs from the state", m.system_id);
                }
                Ok(())
            })?;
        }
    }
}
