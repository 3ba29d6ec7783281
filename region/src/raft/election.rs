//! Elections on the region's own clock, with fresh randomness for every campaign.
//!
//! openraft 0.9 draws a node's election timeout once, when the process starts. Two followers that drew
//! timeouts a few milliseconds apart campaign together after every loss of the leader, split the vote, and
//! — their timeouts being fixed — campaign together again on the next round too, until scheduling noise
//! separates them: the failover tail the bench saw (most kills ~1 s, some 1.9 s and 2.7 s, one and two extra
//! rounds). So openraft's own election timer is switched off and this module decides when to campaign:
//!
//! - a follower campaigns when it has not heard from a leader for the leader lease (openraft's
//!   `election_timeout_max`: voters refuse votes within it) plus one heartbeat plus a random delay drawn
//!   anew for every campaign, so a tie never repeats;
//! - a follower whose log is behind what the leader last told it was committed never campaigns: it cannot
//!   win (a majority holds a longer log), and its higher term would only make the up-to-date candidate lose
//!   a round — this is the pre-vote of the Raft thesis, decided locally from the last AppendEntries;
//! - a region that (re)starts into a multi-region cluster waits three campaign delays for a leader before
//!   its first campaign, so a restarted, lagging region does not disturb a healthy cluster;
//! - granting a vote counts as hearing from a leader-to-be (Raft's rule), so voters do not campaign
//!   against the candidate they just voted for.
//!
//! The decision is a pure function ([`decide`]) of what the region knows, tested below; [`run`] feeds it.

use super::Raft;
use openraft::ServerState;
use rand::Rng;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the Raft service learned from the leader, for [`run`]: when it last heard from one and what it
/// said was committed. Shared between the RaftService handlers (writers) and the election task (reader).
pub struct LeaderContact {
    /// The last contact and the leader's commit index; a mutex because the two change together.
    inner: Mutex<Contact>,
}

/// One snapshot of [`LeaderContact`].
#[derive(Clone, Copy, Debug)]
struct Contact {
    /// When an AppendEntries from a leader was accepted or a vote was granted; `None` until the first.
    heard: Option<Instant>,
    /// The leader's commit index in the last accepted AppendEntries (0 before any).
    leader_commit: u64,
}

impl Default for LeaderContact {
    fn default() -> Self {
        Self::new()
    }
}

impl LeaderContact {
    /// Nothing heard yet.
    pub fn new() -> Self {
        LeaderContact {
            inner: Mutex::new(Contact {
                heard: None,
                leader_commit: 0,
            }),
        }
    }

    /// An AppendEntries from the current leader was accepted (`leader_commit` is its commit index).
    pub fn heard_leader(&self, leader_commit: u64) {
        let mut c = crate::locks::lock(&self.inner);
        c.heard = Some(Instant::now());
        c.leader_commit = c.leader_commit.max(leader_commit);
    }

    /// This region granted its vote to a candidate: give it time to win before campaigning.
    pub fn granted_vote(&self) {
        crate::locks::lock(&self.inner).heard = Some(Instant::now());
    }

    fn get(&self) -> Contact {
        *crate::locks::lock(&self.inner)
    }
}

/// What [`decide`] needs to know, all local.
#[derive(Clone, Copy, Debug)]
pub struct Situation {
    /// This region is the leader.
    pub leader: bool,
    /// This region is a voter (learners never campaign).
    pub voter: bool,
    /// Voters in the membership (one: campaign at once).
    pub voters: usize,
    /// Time since the last contact with a leader, or since start when there was none.
    pub quiet: Duration,
    /// Whether any leader was heard since this process started.
    pub heard_any: bool,
    /// Time since this region's own last campaign, if any.
    pub since_campaign: Option<Duration>,
    /// This region's last log index.
    pub last_log: u64,
    /// The leader's commit index as last heard.
    pub leader_commit: u64,
}

/// The delays that drive [`decide`], from the Raft tuning.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Voters refuse votes this long after hearing from a leader (openraft's `election_timeout_max`).
    pub lease: Duration,
    /// The leader's heartbeat period: a margin for when the other voters last heard from it.
    pub heartbeat: Duration,
    /// Campaign delays are drawn from `[0, spread)` on top of lease + heartbeat.
    pub spread: Duration,
}

impl Timing {
    /// The timing for these knobs; `election_timeout_ms` is openraft's minimum, the lease its maximum.
    pub fn new(heartbeat_ms: u64, election_timeout_ms: u64) -> Self {
        Timing {
            lease: Duration::from_millis(election_timeout_ms * 3 / 2),
            heartbeat: Duration::from_millis(heartbeat_ms),
            spread: Duration::from_millis((election_timeout_ms / 2).max(20)),
        }
    }

    /// A campaign delay with a fresh random part.
    pub fn draw(&self, rng: &mut impl Rng) -> Duration {
        let spread = u64::try_from(self.spread.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.lease + self.heartbeat + Duration::from_micros(rng.gen_range(0..spread))
    }
}

/// What the election task does now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing: a leader is here or the delay has not passed.
    Wait,
    /// Start a campaign.
    Campaign,
    /// The delay passed but this region's log is behind the leader's commit: it cannot win.
    Behind,
}

/// Whether to campaign, given the situation and this round's drawn `delay` (see [`Timing::draw`]).
pub fn decide(s: &Situation, delay: Duration) -> Decision {
    if s.leader || !s.voter {
        return Decision::Wait;
    }
    if s.since_campaign.is_some_and(|c| c < delay) {
        return Decision::Wait;
    }
    if s.voters <= 1 {
        return Decision::Campaign;
    }
    // A (re)started region gives an existing leader three delays to reach it first.
    let needed = if s.heard_any { delay } else { delay * 3 };
    if s.quiet < needed {
        return Decision::Wait;
    }
    if s.last_log < s.leader_commit {
        return Decision::Behind;
    }
    Decision::Campaign
}

/// Runs elections for `raft` until it shuts down: switches openraft's own timer off and campaigns when
/// [`decide`] says so, checking every few milliseconds.
pub async fn run(raft: Raft, contact: std::sync::Arc<LeaderContact>, timing: Timing) {
    raft.runtime_config().elect(false);
    let started = Instant::now();
    let mut campaigned: Option<Instant> = None;
    let mut delay = timing.draw(&mut rand::thread_rng());
    let tick = (timing.heartbeat / 4).clamp(Duration::from_millis(5), Duration::from_millis(25));
    let mut metrics = raft.metrics();
    loop {
        tokio::time::sleep(tick).await;
        let m = metrics.borrow_and_update().clone();
        if m.running_state.is_err() {
            return;
        }
        let c = contact.get();
        let now = Instant::now();
        let membership = m.membership_config.membership();
        let s = Situation {
            leader: m.state == ServerState::Leader,
            voter: membership.voter_ids().any(|v| v == m.id),
            voters: membership.voter_ids().count(),
            quiet: now - c.heard.unwrap_or(started),
            heard_any: c.heard.is_some(),
            since_campaign: campaigned.map(|t| now - t),
            last_log: m.last_log_index.unwrap_or(0),
            leader_commit: c.leader_commit,
        };
        match decide(&s, delay) {
            Decision::Wait => {}
            Decision::Behind => {
                tracing::debug!(
                    last_log = s.last_log,
                    leader_commit = s.leader_commit,
                    "no leader heard, but this region's log is behind the last commit: not campaigning"
                );
                // Look again after another delay.
                campaigned = Some(now);
                delay = timing.draw(&mut rand::thread_rng());
            }
            Decision::Campaign => {
                tracing::info!(
                    quiet_ms = s.quiet.as_millis() as u64,
                    "no leader heard: campaigning"
                );
                if raft.trigger().elect().await.is_err() {
                    return;
                }
                campaigned = Some(now);
                delay = timing.draw(&mut rand::thread_rng());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follower(quiet_ms: u64) -> Situation {
        Situation {
            leader: false,
            voter: true,
            voters: 3,
            quiet: Duration::from_millis(quiet_ms),
            heard_any: true,
            since_campaign: None,
            last_log: 100,
            leader_commit: 100,
        }
    }

    const T: Timing = Timing {
        lease: Duration::from_millis(450),
        heartbeat: Duration::from_millis(50),
        spread: Duration::from_millis(150),
    };

    #[test]
    fn a_follower_campaigns_only_after_the_lease_and_a_heartbeat() {
        let d = Duration::from_millis(560);
        assert_eq!(decide(&follower(559), d), Decision::Wait);
        assert_eq!(decide(&follower(560), d), Decision::Campaign);
        let mut s = follower(2000);
        s.leader = true;
        assert_eq!(decide(&s, d), Decision::Wait, "a leader never campaigns");
        s.leader = false;
        s.voter = false;
        assert_eq!(decide(&s, d), Decision::Wait, "a learner never campaigns");
    }

    #[test]
    fn a_lagging_follower_does_not_campaign() {
        let mut s = follower(5000);
        s.last_log = 99;
        assert_eq!(decide(&s, Duration::from_millis(560)), Decision::Behind);
    }

    #[test]
    fn a_restarted_region_waits_three_delays_for_a_leader() {
        let mut s = follower(1500);
        s.heard_any = false;
        let d = Duration::from_millis(560);
        assert_eq!(decide(&s, d), Decision::Wait);
        s.quiet = Duration::from_millis(1680);
        assert_eq!(decide(&s, d), Decision::Campaign);
    }

    #[test]
    fn a_lone_voter_campaigns_at_once() {
        let mut s = follower(0);
        s.voters = 1;
        assert_eq!(decide(&s, Duration::from_millis(560)), Decision::Campaign);
        s.since_campaign = Some(Duration::from_millis(10));
        assert_eq!(
            decide(&s, Duration::from_millis(560)),
            Decision::Wait,
            "not on every tick"
        );
    }

    #[test]
    fn after_a_campaign_the_next_waits_a_fresh_delay() {
        let mut s = follower(5000);
        s.since_campaign = Some(Duration::from_millis(100));
        assert_eq!(decide(&s, Duration::from_millis(560)), Decision::Wait);
    }

    /// The cause of the failover tail: two followers whose delays were drawn once collide on every round.
    /// With a delay drawn per campaign, two followers tie (within 5 ms, about one vote round trip on
    /// loopback) on two rounds running in at most a few hundred of 10,000 tries.
    #[test]
    fn delays_are_drawn_anew_so_ties_do_not_repeat() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let tie = |a: Duration, b: Duration| a.abs_diff(b) < Duration::from_millis(5);
        let mut repeated = 0;
        for _ in 0..10_000 {
            let (a1, b1) = (T.draw(&mut rng), T.draw(&mut rng));
            let (a2, b2) = (T.draw(&mut rng), T.draw(&mut rng));
            assert!(a1 >= T.lease + T.heartbeat && a1 < T.lease + T.heartbeat + T.spread);
            if tie(a1, b1) && tie(a2, b2) {
                repeated += 1;
            }
        }
        assert!(repeated < 100, "{repeated} repeated ties in 10,000");
    }
}
