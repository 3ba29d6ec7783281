//! Third-party BMC implementations started on loopback for tests and benchmarks: OpenIPMI's `ipmi_sim`
//! and sushy-tools' Redfish emulator. Product code because the benchmark (`ingot-bench --power`) and the
//! whole-stack tests share it; it only ever binds 127.0.0.1 and stops exactly the processes it started.

pub mod ipmi_sim;
pub mod sushy;
