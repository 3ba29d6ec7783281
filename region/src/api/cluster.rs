//! `ingot.v1.ClusterService`.

use super::{actor, status};
use crate::app::cluster::RegionView;
use crate::app::App;
use ingot_proto::convert::{region_role_to_proto, settings_to_proto, timestamp};
use ingot_proto::v1::cluster_service_server::ClusterService;
use ingot_proto::v1::*;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::{Code, Request, Response, Status};

/// ClusterService over [`App`].
pub struct ClusterApi {
    /// The application.
    pub app: App,
    /// Failed `JoinRegion` attempts per peer (shared with `RegisterRack`).
    pub attempts: Arc<FailedAttempts>,
}

/// Failed attempts a peer may make in a burst at the token-authenticated calls (`JoinRegion`,
/// `RegisterRack`) before it must wait.
pub const ATTEMPT_BURST: u32 = 10;
/// How often a peer earns one more attempt back.
pub const ATTEMPT_REFILL: Duration = Duration::from_secs(2);
/// Peers remembered at once; past this the one heard from longest ago is forgotten.
pub const ATTEMPT_PEERS_MAX: usize = 4096;

/// A token bucket per peer IP address for the calls authenticated by a single-use token in the request
/// rather than a bearer token: each call takes one attempt and a successful one gives it back, so only
/// failures (a wrong or used token, bad input) use a peer's budget. Guessing a 128-bit token is hopeless
/// anyway; the limit keeps a misbehaving peer from making a region do read barriers and CSR parsing in a
/// loop. The map is bounded by [`ATTEMPT_PEERS_MAX`].
#[derive(Debug, Default)]
pub struct FailedAttempts {
    peers: Mutex<HashMap<IpAddr, Bucket>>,
}

/// One peer's budget.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Attempts left (refilled over time up to [`ATTEMPT_BURST`]).
    left: f64,
    /// When `left` was last brought up to date.
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let earned = now.duration_since(self.at).as_secs_f64() / ATTEMPT_REFILL.as_secs_f64();
        self.left = (self.left + earned).min(ATTEMPT_BURST as f64);
        self.at = now;
    }
}

/// Proof that a peer took an attempt: give it back with [`FailedAttempts::succeeded`].
#[must_use]
#[derive(Debug)]
pub struct Attempt(IpAddr);

impl FailedAttempts {
    /// Takes an attempt for `peer` at `now`, or answers `RESOURCE_EXHAUSTED` with when to retry.
    pub fn take(&self, peer: IpAddr, now: Instant) -> Result<Attempt, Status> {
        let mut peers = crate::locks::lock(&self.peers);
        if !peers.contains_key(&peer) && peers.len() >= ATTEMPT_PEERS_MAX {
            // Peers with a full budget are as good as unknown; else forget the one quiet the longest.
            peers.retain(|_, b| {
                b.refill(now);
                b.left < ATTEMPT_BURST as f64
            });
            if peers.len() >= ATTEMPT_PEERS_MAX {
                if let Some(oldest) = peers.iter().min_by_key(|(_, b)| b.at).map(|(ip, _)| *ip) {
                    peers.remove(&oldest);
                }
            }
        }
        let b = peers.entry(peer).or_insert(Bucket {
            left: ATTEMPT_BURST as f64,
            at: now,
        });
        b.refill(now);
        if b.left < 1.0 {
            let wait = ((1.0 - b.left) * ATTEMPT_REFILL.as_secs_f64())
                .ceil()
                .max(1.0);
            return Err(Status::resource_exhausted(format!(
                "too many failed attempts from {peer}; retry in {wait} s with a valid token"
            )));
        }
        b.left -= 1.0;
        Ok(Attempt(peer))
    }

    /// Gives the attempt back: the call succeeded (or failed for a reason that is not the caller's).
    pub fn succeeded(&self, a: Attempt) {
        if let Some(b) = crate::locks::lock(&self.peers).get_mut(&a.0) {
            b.left = (b.left + 1.0).min(ATTEMPT_BURST as f64);
        }
    }

    /// Runs `call` under an attempt of the peer of `req`: refused at once if the peer is out of
    /// attempts; the attempt is kept only if `call` fails for a reason that is the caller's.
    pub async fn guard<T, R>(
        &self,
        req: &Request<T>,
        call: impl std::future::Future<Output = Result<R, Status>>,
    ) -> Result<R, Status> {
        let peer = req
            .remote_addr()
            .map(|a| a.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let attempt = self.take(peer, Instant::now())?;
        let r = call.await;
        match &r {
            Err(s) if !matches!(s.code(), Code::Unavailable | Code::Internal) => {}
            _ => self.succeeded(attempt),
        }
        r
    }
}

/// A region as ListRegions shows it: membership, and the live status when it answered (the app's view;
/// it has no `ingot-common` type).
fn region_view(v: RegionView) -> Region {
    let s = v.status.clone().unwrap_or_default();
    Region {
        node_id: v.node_id,
        name: v.name,
        raft_addr: v.raft_addr,
        api_addr: v.api_addr,
        // No status: an empty role, which is UNKNOWN.
        role: region_role_to_proto(&s.role) as i32,
        voter: v.voter,
        term: s.term,
        last_applied_index: s.last_applied_index,
        last_log_index: s.last_log_index,
        healthy: v.status.is_some(),
        error: v.error,
        snapshot_index: s.snapshot_index,
        leader_id: s.leader_id,
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn list_regions(
        &self,
        req: Request<ListRegionsRequest>,
    ) -> Result<Response<ListRegionsResponse>, Status> {
        actor(&self.app, &req)?;
        let (cluster_id, leader_id, views) = self.app.list_regions().await.map_err(status)?;
        let regions = views.into_iter().map(region_view).collect();
        Ok(Response::new(ListRegionsResponse {
            cluster_id,
            leader_id,
            regions,
        }))
    }

    async fn create_join_token(
        &self,
        req: Request<CreateJoinTokenRequest>,
    ) -> Result<Response<CreateJoinTokenResponse>, Status> {
        let who = actor(&self.app, &req)?;
        let ttl = match req.into_inner().ttl_seconds {
            0 => 3600,
            n => n,
        };
        let (token, expires_ms) = self
            .app
            .create_join_token(&who, Duration::from_secs(ttl as u64))
            .await
            .map_err(status)?;
        Ok(Response::new(CreateJoinTokenResponse {
            token,
            expires_at: Some(timestamp(expires_ms)),
        }))
    }

    async fn join_region(
        &self,
        req: Request<JoinRegionRequest>,
    ) -> Result<Response<JoinRegionResponse>, Status> {
        // Authenticated by the join token in the body, not by a bearer token.
        let r = req.get_ref();
        let call = async {
            self.app
                .join_region(&r.token, &r.name, &r.csr_pem, &r.raft_addr, &r.api_addr)
                .await
                .map_err(status)
        };
        let a = self.attempts.guard(&req, call).await?;
        Ok(Response::new(JoinRegionResponse {
            node_id: a.node_id,
            cluster_id: a.cluster_id,
            cert_pem: a.cert_pem,
            ca_pem: a.ca_pem,
            raft_addrs: a.raft_addrs,
        }))
    }

    async fn remove_region(
        &self,
        req: Request<RemoveRegionRequest>,
    ) -> Result<Response<RemoveRegionResponse>, Status> {
        let who = actor(&self.app, &req)?;
        self.app
            .remove_region(&who, req.into_inner().node_id)
            .await
            .map_err(status)?;
        Ok(Response::new(RemoveRegionResponse {}))
    }

    async fn get_settings(
        &self,
        req: Request<GetSettingsRequest>,
    ) -> Result<Response<Settings>, Status> {
        let who = actor(&self.app, &req)?;
        let d = self.app.get_settings(&who).await.map_err(status)?;
        Ok(Response::new(settings_to_proto(&d)))
    }

    async fn update_settings(
        &self,
        req: Request<UpdateSettingsRequest>,
    ) -> Result<Response<Settings>, Status> {
        let who = actor(&self.app, &req)?;
        let input = req.into_inner().deadline_seconds.into_iter().collect();
        let d = self
            .app
            .update_settings(&who, input)
            .await
            .map_err(status)?;
        Ok(Response::new(settings_to_proto(&d)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_gets_a_burst_of_failures_then_waits() {
        let f = FailedAttempts::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..ATTEMPT_BURST {
            let _kept = f.take(a, t0).expect("within the burst");
        }
        let e = f.take(a, t0).unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert!(e.message().contains("retry in 2 s"), "{}", e.message());
        // Another peer is not affected; the first earns one attempt back per refill period.
        let _ = f.take(b, t0).expect("another peer");
        let _ = f.take(a, t0 + ATTEMPT_REFILL).expect("refilled");
        assert!(f.take(a, t0 + ATTEMPT_REFILL).is_err());
        // Successes give the attempt back.
        let ok = f.take(b, t0).unwrap();
        f.succeeded(ok);
        for _ in 0..ATTEMPT_BURST - 1 {
            let _kept = f.take(b, t0).expect("one was used, one given back");
        }
        assert!(f.take(b, t0).is_err());
    }

    #[test]
    fn the_peer_map_is_bounded() {
        let f = FailedAttempts::default();
        let t0 = Instant::now();
        // No time passes: nobody's budget refills, so the quietest peer is evicted for each new one.
        for i in 0..(ATTEMPT_PEERS_MAX as u32 + 100) {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            let _kept = f.take(ip, t0).unwrap();
        }
        assert_eq!(crate::locks::lock(&f.peers).len(), ATTEMPT_PEERS_MAX);
        // Once budgets have refilled, those peers are dropped rather than a peer still waiting.
        let later = t0 + ATTEMPT_REFILL * 2;
        let _kept = f.take(IpAddr::V4(Ipv4Addr::LOCALHOST), later).unwrap();
        assert_eq!(crate::locks::lock(&f.peers).len(), 1);
    }
}
