//! The network-namespace harness (namespaces, veth pairs, bridges, taps, processes inside a namespace),
//! whose one home is [`ingot_launch::netns`] (`ingot dev up --vms`, the tests and `ingot-bench` share it);
//! re-exported here so the tests keep naming it `ingot_tests::netns`.

pub use ingot_launch::netns::*;
