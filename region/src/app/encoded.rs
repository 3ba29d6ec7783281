//! Each machine's basic view, kept encoded so lists copy bytes instead of converting and encoding every
//! machine on every call (the largest cost of listing 10,000 machines). A background task follows the
//! change log and re-encodes changed machines off the apply path, before anyone lists them.
//!
//! The cache does not know the wire format: the API layer gives it the encoder
//! ([`crate::api::machines::encode_basic`]) when the region starts.

use super::App;
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
            let changed: Vec<Arc<Machine>> = {
                let st = crate::locks::read(&app.region.state);
                let i = st.changes.partition_point(|c| c.revision <= last);
                last = st.data.revision.max(last);
                st.changes
                    .range(i..)
                    .filter(|c| !c.deleted)
                    .map(|c| c.machine.clone())
                    .collect()
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
