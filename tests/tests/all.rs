//! Whole-stack scenarios on real `ingot-region`, `ingot-rack` and `ingot-sim` processes: one test binary
//! for the crate (each scenario file is a module), so the stack is linked once rather than once per file.
//! Run one scenario with `cargo test -p ingot-tests --test all -- t17_racks`.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion

mod t10_cluster;
mod t11_crash;
mod t12_security;
mod t13_peers;
mod t14_cli;
mod t15_lifecycle;
mod t16_allocation;
mod t17_racks;
mod t18_power;
mod t19_nemesis;
mod t20_fuzz;
mod t21_subnets;
mod t22_dhcp;
mod t23_images;
mod t24_http_boot;
mod t25_rack_cache;
mod t26_pxe_boot;
mod t27_e2e;
mod t28_image_builders;
mod t29_agent_process;
