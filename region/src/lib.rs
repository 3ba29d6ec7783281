//! `ingot-region`: a region controller. Regions keep all of Ingot's state in a Raft-replicated store and
//! serve the whole client API; any region answers any call.
//!
//! Layout (a request flows top to bottom):
//! - [`api`]: tonic services, one per file, thin: authenticate, convert proto ↔ domain (with
//!   `ingot_proto::convert`), call [`app`]. Among them the rack controllers' sessions
//!   ([`api::rack_session`], on the same mutual-TLS listener as Raft).
//! - [`app`]: the logic of each service, free of transport types: validate, build
//!   [`command::Command`]s, read [`state`]; the state-following work beside it (the leader's worker,
//!   the encoded machine views lists reuse).
//! - [`node`]: [`node::Region`] — `write` (propose on the leader, forwarding from followers, retrying
//!   safely) and `read_barrier` (linearizable reads via read index).
//! - [`raft`]: openraft types, the sled store, the mutual-TLS network and the RaftService server.
//! - [`apply`]: the deterministic state transition, the only code that mutates [`state::State`].
//! - [`command`]: the command envelope, the one payload of every log entry.
//! - [`state`]: replicated data and its indexes.
//! - [`blobs`]: the content-addressed store of image files (`<data dir>/blobs/<sha256>`).
//! - [`datadir`]: the files of a data directory; [`server`]: the wiring function that starts it all;
//!   [`locks`]: the one way readers take a lock that a panic may have poisoned.

pub mod api;
pub mod app;
pub mod apply;
pub mod blobs;
pub mod command;
pub mod datadir;
pub mod locks;
pub mod node;
pub mod raft;
pub mod server;
pub mod state;
