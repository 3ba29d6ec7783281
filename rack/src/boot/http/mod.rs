//! HTTP boot (issue 12): per-machine iPXE scripts rendered from the region's boot intents, and the
//! kernels, initrds and images they name, streamed from the rack's image cache.
//!
//! - [`script`] — pure: a [`ingot_common::image::BootIntent`] (plus the rack's URL, the cluster CA
//!   fingerprint and the MAC) in, the iPXE script out; hostile text can never leave its line.
//! - [`server`] — hyper on a bound listener per boot interface: routes, Range requests, keep-alive,
//!   bounded connections and request heads, streamed bodies, counters, boot events.

pub mod script;
pub mod server;
