//! `ingot-launch`: a local Ingot cluster of real processes on loopback ports — what `ingot dev up`
//! starts, what the integration tests crash and restart, and what the benchmark measures. Nothing is
//! simulated in the cluster itself: each region and each rack controller is a child process with its own
//! data directory, log file and ports. Programs that only talk to a cluster need `ingot-client`, not
//! this crate.
//!
//! Modules (all of them extend the one [`LocalCluster`] type):
//! - `cluster`: [`LocalCluster`] and its `ingot-region` processes — start (`init` region-1, `join` the
//!   others), reattach ([`LocalCluster::load`]), kill, restart, stop, find the leader.
//! - `rack`: rack controllers ([`LocalRack`]), real `ingot-rack` processes enrolled the way an operator
//!   enrolls one (enrollment token, `ingot-rack register`, `ingot-rack run`).
//! - `simulator`: one `ingot-sim` process ([`LocalSimulator`]) serving simulated machines with their own
//!   BMCs, and their enlistment ([`LocalCluster::enlist_sims`]).
//! - `proxy`: [`LinkProxy`], a cuttable TCP link in front of a region listener
//!   ([`LocalClusterOptions::proxied`]).
//! - [`nemesis`]: the nemesis run — clients, faults (SIGKILL, SIGSTOP, cut links) and the checks of its
//!   record — shared by the whole-stack test `t19_nemesis` and `ingot-bench --nemesis`.
//! - [`netns`]: network namespaces, veth pairs, bridges, taps and processes inside a namespace (the one
//!   home of this harness: the tests re-export it as `ingot_tests::netns`, the benchmark uses it).
//! - [`vmlab`]: real machines on a laptop — QEMU VMs behind `ipmi_sim` BMCs on a bridge in a namespace
//!   ([`vmlab::VmLab`]), for `ingot dev up --vms`, the end-to-end test and `ingot-bench --e2e`.
//! - `process`: the plumbing they share — signalling a pid only after checking `/proc/PID/cmdline`, log
//!   tails, atomic file writes.
//!
//! Directory layout (`DIR` = [`LocalClusterOptions::dir`]):
//! - `DIR/region-N/` (mode 0700, like `DIR/rack-NAME/` and `DIR/sim/`): the data directory of region N (`run.json`, `admin.token`, `tls/`, ...), plus
//!   `region.log`, its stdout and stderr (appended across restarts).
//! - `DIR/env`: shell-sourceable `INGOT_ENDPOINTS`, `INGOT_CA`, `INGOT_TOKEN` (mode 0600).
//! - `DIR/rack-NAME/`: the data directory of rack controller NAME (`rack.json`, `tls/`, ...), plus
//!   `rack.log`, the stdout and stderr of its `ingot-rack register` and `ingot-rack run` processes.
//! - `DIR/sim/`: the simulator's directory (`machines.json`, `control.url`, `sim.log`, `process.json`,
//!   `token`).
//! - `DIR/vmlab/` (`ingot dev up --vms`): a [`vmlab::VmLab`]'s record (`vmlab.json`) and its VMs' files.
//! - `DIR/cluster.json`: names, pids, addresses and data directories of regions and racks, so
//!   [`LocalCluster::load`] can reattach later (`ingot dev down`, `ingot dev up` on an existing directory).
//!
//! Regions are numbered from 1, like their names: index `i` is `region-i`. Racks are named by the caller
//! ([`LocalCluster::add_rack`]).
//!
//! Errors are [`anyhow::Error`]s: a launcher's failures are reports for a human (with the tail of the
//! failing process's log), not cases for a caller to match on. A [`LocalCluster`] must be created inside
//! a Tokio runtime, as its [`ingot_client::Clients`] are.

mod cluster;
pub mod nemesis;
pub mod netns;
mod process;
mod proxy;
mod rack;
mod simulator;
pub mod vmlab;

pub use cluster::{
    is_region_process, resolve_bin_dir, LocalCluster, LocalClusterOptions, LocalRegion, Progress,
    RegionLinks, StopOutcome, StopReport, StoppedRegion, CLUSTER_FILE, ENV_FILE, READY_TIMEOUT,
    REGION_BIN, STOP_GRACE,
};
pub use process::log_tail;
pub use proxy::{LinkProxy, LinkState, LinkStats};
pub use rack::{is_rack_process, LocalRack, RackBoot, StoppedRack, RACK_BIN, RACK_READY_TIMEOUT};
pub use simulator::{is_simulator_process, LocalSimulator, SimulatedMachine, SIMULATOR_BIN};
