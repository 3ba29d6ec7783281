//! Allocation: choose Ready machines for a caller, then claim them through Raft.
//!
//! The choice runs on the serving region, from its local view of the pool (`State::ready`, ordered by
//! cost): the cheapest machines that satisfy the constraints, randomized among equals so concurrent
//! callers rarely pick the same one. The claim is the `Allocate` command, whose apply step re-checks
//! every candidate (status, owner, lock, constraints) — a compare-and-set, so two callers never get the
//! same machine. On a conflict the choice is made again from fresher state.

use super::{Actor, App};
use crate::apply::alloc::{available, replay};
use crate::command::{op, Op, Reply, CONFLICT_FIELD};
use crate::state::State;
use ingot_common::constraints::Constraints;
use ingot_common::{validate, DomainError, Machine};
use rand::seq::SliceRandom;
use rand::Rng;
use std::collections::BTreeMap;

/// How a group allocation spreads over zones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spread {
    /// Cheapest machines wherever they are.
    Any,
    /// Counts per zone differ by at most one (among zones with matching machines).
    Even,
    /// At least this many distinct zones.
    MinZones(u32),
}

/// An allocation request, validated by [`App::allocate`].
#[derive(Clone, Debug)]
pub struct AllocateRequest {
    /// Idempotency key.
    pub request_id: String,
    /// What the machines must satisfy.
    pub constraints: Constraints,
    /// Recorded on each machine (suffixed `-<i>` in groups).
    pub consumer: String,
    /// How many (all or nothing).
    pub count: u32,
    /// Zone spread for groups.
    pub spread: Spread,
    /// Choose without claiming.
    pub dry_run: bool,
}

/// Most machines in one allocation.
pub const MAX_COUNT: u32 = 1000;
/// Fallback candidates sent with a single allocation, so a collision is resolved inside the apply step.
const FALLBACKS: usize = 4;
/// Choose-and-claim rounds before giving up on conflicts.
const ATTEMPTS: usize = 10;

impl App {
    /// Allocates `req.count` machines to the caller, or returns the ones an earlier call with the same
    /// request id got (`true` in the second field).
    pub async fn allocate(
        &self,
        actor: &Actor,
        req: AllocateRequest,
    ) -> Result<(Vec<Machine>, bool), DomainError> {
        if !req.dry_run || !req.request_id.is_empty() {
            validate::request_id("request_id", &req.request_id)?;
        }
        if req.count == 0 || req.count > MAX_COUNT {
            return Err(DomainError::invalid(
                "count",
                format!("{} is out of range 1-{MAX_COUNT}", req.count),
            ));
        }
        validate::bytes("consumer", &req.consumer, validate::limits::CONSUMER)?;
        if let Spread::MinZones(k) = req.spread {
            if k == 0 || k > req.count {
                return Err(DomainError::invalid(
                    "min_zones",
                    format!("must be between 1 and count ({})", req.count),
                ));
            }
        }
        req.constraints.validate()?;
        let mut last_conflict = String::new();
        for attempt in 0..ATTEMPTS {
            // First round from local state (cheap); after a conflict, from linearizable state.
            let picked = self
                .read(actor, attempt > 0, |st| {
                    if !req.request_id.is_empty() {
                        if let Some(r) = replay(st, &actor.name, &req.request_id) {
                            return r.map(Err);
                        }
                    }
                    let ids = pick(st, &req, &mut rand::thread_rng())?;
                    Ok(Ok(ids))
                })
                .await??;
            let candidates = match picked {
                Err(replayed) => return Ok((replayed, true)),
                Ok(c) => c,
            };
            if req.dry_run {
                let n = req.count as usize;
                let ms = self
                    .read(actor, false, |st| {
                        candidates
                            .iter()
                            .take(n)
                            .filter_map(|id| st.machine(id).cloned())
                            .collect()
                    })
                    .await?;
                return Ok((ms, false));
            }
            let op = Op::Allocate(op::Allocate {
                request_id: req.request_id.clone(),
                consumer: req.consumer.clone(),
                constraints: req.constraints.clone(),
                min_zones: match req.spread {
                    Spread::MinZones(k) => k,
                    _ => 0,
                },
                candidates,
                count: req.count,
            });
            match self.region.write(self.command(actor, op)).await {
                Ok(Reply::Allocated(ms, replayed)) => return Ok((ms, replayed)),
                Ok(other) => return Err(super::unexpected(other)),
                Err(e) if e.field.as_deref() == Some(CONFLICT_FIELD) => {
                    last_conflict = e.message;
                    tracing::debug!(attempt, "allocation conflict: {last_conflict}");
                }
                Err(e) => return Err(e),
            }
        }
        Err(DomainError::unavailable(format!(
            "allocation kept colliding with concurrent allocations ({ATTEMPTS} rounds; last: {last_conflict}); retry with the same request_id"
        )))
    }
}

/// Chooses candidates for `req` from `st`. For one machine: up to [`FALLBACKS`] machines of the lowest
/// matching cost, starting at a random point among equals. For groups: exactly `count` machines laid out
/// by the spread policy.
pub fn pick(
    st: &State,
    req: &AllocateRequest,
    rng: &mut impl Rng,
) -> Result<Vec<String>, DomainError> {
    let c = &req.constraints;
    if req.count == 1 {
        let Some((c0, _)) = st
            .ready
            .iter()
            .find(|(_, id)| st.machine(id).is_some_and(|m| available(m, c)))
        else {
            return Err(nothing_fits(st, c, 1, 0));
        };
        let c0 = *c0;
        // A random start inside the cheapest group: ids are random, so a random id splits it evenly.
        let start: String = (0..6)
            .map(|_| {
                let i = rng.gen_range(0..36u8);
                (if i < 10 { b'0' + i } else { b'a' + i - 10 }) as char
            })
            .collect();
        let mut out = Vec::with_capacity(FALLBACKS);
        let upper = st
            .ready
            .range((c0, start.clone())..)
            .take_while(|(k, _)| *k == c0);
        let lower = st
            .ready
            .range((c0, String::new())..(c0, start))
            .take_while(|(k, _)| *k == c0);
        for (_, id) in upper.chain(lower) {
            if st.machine(id).is_some_and(|m| available(m, c)) {
                out.push(id.clone());
                if out.len() == FALLBACKS {
                    break;
                }
            }
        }
        return Ok(out);
    }
    // Groups: matching machines per zone, cheapest first, shuffled among equal cost.
    let n = req.count as usize;
    let mut by_zone: BTreeMap<&str, Vec<(u64, &str)>> = BTreeMap::new();
    let mut total = 0usize;
    for (k, id) in &st.ready {
        let Some(m) = st.machine(id) else { continue };
        if !available(m, c) {
            continue;
        }
        let list = by_zone.entry(m.zone.as_str()).or_default();
        if list.len() < n {
            list.push((*k, id.as_str()));
            total += 1;
        }
    }
    for list in by_zone.values_mut() {
        let mut i = 0;
        while i < list.len() {
            let j = list[i..]
                .iter()
                .take_while(|(k, _)| *k == list[i].0)
                .count();
            list[i..i + j].shuffle(rng);
            i += j;
        }
    }
    if total < n {
        return Err(nothing_fits(st, c, n, total));
    }
    // Zones in order of their cheapest machine.
    let mut zones: Vec<(&str, Vec<(u64, &str)>)> = by_zone.into_iter().collect();
    zones.sort_by_key(|(z, l)| (l.first().map(|x| x.0).unwrap_or(u64::MAX), *z));
    let mut out: Vec<String> = Vec::with_capacity(n);
    match req.spread {
        Spread::Any => {
            let mut all: Vec<(u64, &str)> = zones.iter().flat_map(|(_, l)| l.clone()).collect();
            all.sort_by_key(|x| x.0);
            out.extend(all.into_iter().take(n).map(|(_, id)| id.to_string()));
        }
        Spread::Even => {
            let mut next = vec![0usize; zones.len()];
            while out.len() < n {
                let mut progressed = false;
                for (zi, (_, list)) in zones.iter().enumerate() {
                    if out.len() == n {
                        break;
                    }
                    if let Some((_, id)) = list.get(next[zi]) {
                        out.push(id.to_string());
                        next[zi] += 1;
                        progressed = true;
                    }
                }
                if !progressed {
                    break;
                }
            }
        }
        Spread::MinZones(k) => {
            if zones.len() < k as usize {
                return Err(DomainError::exhausted(format!(
                    "only {} zone(s) have Ready machines matching the constraints; {k} were asked",
                    zones.len()
                )));
            }
            let mut rest: Vec<(u64, &str)> = Vec::new();
            for (zi, (_, list)) in zones.iter().enumerate() {
                if zi < k as usize {
                    out.push(list[0].1.to_string());
                    rest.extend(list[1..].iter().copied());
                } else {
                    rest.extend(list.iter().copied());
                }
            }
            rest.sort_by_key(|x| x.0);
            let need = n.saturating_sub(out.len());
            out.extend(rest.into_iter().take(need).map(|(_, id)| id.to_string()));
        }
    }
    if out.len() < n {
        return Err(nothing_fits(st, c, n, out.len()));
    }
    Ok(out)
}

/// The "no capacity" error, with a diagnosis: how many machines are Ready and the most common reason
/// they do not fit.
fn nothing_fits(st: &State, c: &Constraints, wanted: usize, found: usize) -> DomainError {
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for (_, id) in st.ready.iter().take(5000) {
        if let Some(why) = st.machine(id).and_then(|m| c.mismatch(m)) {
            *reasons.entry(why).or_default() += 1;
        }
    }
    let top = reasons
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(r, n)| format!("; most common miss: {r} ({n} machines)"))
        .unwrap_or_default();
    DomainError::exhausted(format!(
        "{wanted} machine(s) asked but {found} Ready machine(s) match the constraints ({} Ready in all{top})",
        st.ready.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{op, Command, Op};
    use ingot_common::model::Inventory;
    use rand::SeedableRng;

    fn cluster(zones: &[&str], per_zone: usize) -> State {
        let mut s = State::default();
        let mut n = 0u64;
        for z in zones {
            s.data.zones.insert(
                z.to_string(),
                ingot_common::Zone {
                    name: z.to_string(),
                    description: String::new(),
                    created_ms: 0,
                },
            );
            for _ in 0..per_zone {
                n += 1;
                let mut m: Machine = serde_json::from_value(serde_json::json!({
                    "system_id": format!("m{n:05}"), "hostname": format!("h{n}"), "arch": "amd64/generic",
                    "zone": z, "status": "Ready", "macs": [], "power": {"driver": "", "params": {}},
                    "description": "", "created_ms": 0, "updated_ms": 0, "revision": 1
                }))
                .expect("machine json");
                m.inventory = Some(Inventory {
                    cpu_count: 4 + (n % 3) as u32 * 4,
                    memory_mib: 16384,
                    ..Default::default()
                });
                s.put_machine(m);
            }
        }
        s
    }

    fn req(count: u32, spread: Spread) -> AllocateRequest {
        AllocateRequest {
            request_id: "r".into(),
            constraints: Constraints::default(),
            consumer: String::new(),
            count,
            spread,
            dry_run: false,
        }
    }

    #[test]
    fn single_picks_the_cheapest() {
        let s = cluster(&["a", "b"], 30);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let ids = pick(&s, &req(1, Spread::Any), &mut rng).expect("pick");
        let m = s.machine(&ids[0]).expect("m");
        assert_eq!(m.cpu_count(), 4);
        assert!(ids.len() <= FALLBACKS);
        for id in &ids {
            assert_eq!(s.machine(id).expect("m").cpu_count(), 4);
        }
    }

    #[test]
    fn even_spread_balances_zones() {
        let s = cluster(&["a", "b", "c"], 10);
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let ids = pick(&s, &req(7, Spread::Even), &mut rng).expect("pick");
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for id in &ids {
            *per.entry(s.machine(id).expect("m").zone.clone())
                .or_default() += 1;
        }
        let (mn, mx) = (per.values().min().copied(), per.values().max().copied());
        assert_eq!(per.len(), 3);
        assert!(mx.unwrap_or(0) - mn.unwrap_or(0) <= 1, "{per:?}");
    }

    #[test]
    fn min_zones_and_capacity_errors() {
        let s = cluster(&["a", "b"], 3);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        assert!(pick(&s, &req(3, Spread::MinZones(3)), &mut rng).is_err());
        let ids = pick(&s, &req(4, Spread::MinZones(2)), &mut rng).expect("pick");
        assert_eq!(ids.len(), 4);
        let e = pick(&s, &req(7, Spread::Any), &mut rng).unwrap_err();
        assert!(e.message.contains("7 machine(s) asked"), "{}", e.message);
        let mut r = req(1, Spread::Any);
        r.constraints.min_memory_mib = 1 << 20;
        let e = pick(&s, &r, &mut rng).unwrap_err();
        assert!(e.message.contains("most common miss"), "{}", e.message);
    }

    #[test]
    fn apply_claims_once_and_replays() {
        let mut s = cluster(&["a"], 5);
        s.data.users.insert(
            "alice".into(),
            ingot_common::model::User {
                name: "alice".into(),
                role: ingot_common::model::Role::User,
                created_ms: 0,
            },
        );
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let ids = pick(&s, &req(1, Spread::Any), &mut rng).expect("pick");
        let cmd = |rid: &str, cands: Vec<String>| Command {
            request_id: format!("x-{rid}"),
            principal: None,
            ts_ms: 10,
            actor: "alice".into(),
            op: Op::Allocate(op::Allocate {
                request_id: rid.into(),
                consumer: "cm-1".into(),
                constraints: Constraints::default(),
                min_zones: 0,
                candidates: cands,
                count: 1,
            }),
        };
        let first = crate::apply::apply(&mut s, &cmd("r1", ids[..1].to_vec()), 100).expect("ok");
        let Reply::Allocated(ms, false) = first else {
            panic!("{first:?}")
        };
        // Same machine, other request: conflict (marked for a retry).
        let e = crate::apply::apply(&mut s, &cmd("r2", ids[..1].to_vec()), 101).unwrap_err();
        assert!(
            e.field.as_deref() == Some(CONFLICT_FIELD) || e.field.as_deref() == Some("consumer")
        );
        // Same request id: the same machine again.
        let again = crate::apply::apply(&mut s, &cmd("r1", vec!["zzz".into()]), 102).expect("ok");
        let Reply::Allocated(ms2, true) = again else {
            panic!("{again:?}")
        };
        assert_eq!(ms[0].system_id, ms2[0].system_id);
        assert_eq!(s.by_consumer.get("cm-1"), Some(&ms[0].system_id));
    }
}
