//! Rack controllers on 3 real regions with 2 real `ingot-rack` processes each (simulated BMCs whose state
//! files live in the test directory):
//! - region failover: SIGKILL the region serving rack `ra`; the rack's session moves to another region in
//!   under 2 s (printed), and power commands issued around the kill (one the rack is running when its region
//!   dies, one issued right after the kill) complete and run exactly once;
//! - rack failover (`--rack-grace-ms=3000`): rack `ra` serves zone `za`, rack `rb` zone `zb`; machines of each
//!   zone start on their zone's rack; SIGKILL `ra` and within grace + 2 s its BMCs are `rb`'s (no live rack in
//!   `za`, so the other zone's rack takes them); a power cycle then runs once through `rb`; restarted, `ra`
//!   takes nothing back from `rb` but does get a new (free) BMC of its zone; then `rb` hangs (SIGSTOP, its
//!   connection stays open) and its BMCs move to `ra` within grace + 2 s too, and it takes none back when
//!   resumed;
//! - refusals: the cluster listener without a client certificate or with a foreign CA's, a rack certificate
//!   on the admin API or on Raft, a revoked rack's daemon and certificate, a reused or expired enrollment
//!   token, and a CSR for another name.
//!
//! The three tests take turns (a lock) so that timing figures are not skewed by each other's clusters.

use ingot_common::pki::{self, ClusterCa, Identity};
use ingot_proto::raft::v1::raft_service_client::RaftServiceClient;
use ingot_proto::raft::v1::StatusRequest;
use ingot_proto::v1::machine_service_client::MachineServiceClient;
use ingot_proto::v1::rack_service_client::RackServiceClient;
use ingot_proto::v1::{
    CreateEnrollmentTokenRequest, GetPowerCommandRequest, ListMachinesRequest, RegisterRackRequest,
    RevokeRackRequest,
};
use ingot_tests::{
    cluster_tls, log_lines, power, rack_api, rack_cert, rack_status, sim_machine, sim_op_count,
    sim_op_ids, strip_ansi, try_rack_session, wait_owners, wait_racks_connected, RackLogsOnPanic,
    TestCluster,
};
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::transport::Endpoint;
use tonic::Code;

/// One test at a time: the machine may have 2 cores, and the figures below are timings.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The rack log line every (re)connect prints.
const ESTABLISHED: &str = "session established with region";

/// Index (1-based) of the region with node id `id`.
fn index_of(tc: &TestCluster, id: u64) -> usize {
    tc.cluster
        .regions()
        .iter()
        .find(|r| r.node_id == id)
        .map(|r| r.index)
        .unwrap_or_else(|| panic!("no region has node id {id}"))
}

/// Asserts no command id appears twice among the simulated BMC's ops of `system_id`.
fn assert_no_duplicate_ops(bmc: &Path, system_id: &str) {
    let ids = sim_op_ids(bmc, system_id).unwrap();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        ids.len(),
        "{system_id}: a command ran twice: {ids:?}"
    );
}

/// Waits (at most `within`) until the rack log at `path` has a line containing both needles.
async fn wait_log(path: &Path, a: &str, b: &str, within: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if log_lines(path, a).iter().any(|l| l.contains(b)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_failover_moves_the_session_and_keeps_commands() {
    let _serial = SERIAL.lock().await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tc = TestCluster::start("racks-region-failover", 3, &[])
        .await
        .unwrap();
    let _logs = RackLogsOnPanic(&tc.cluster);
    let bmc = tc.dir.join("bmc");
    std::fs::create_dir_all(&bmc).unwrap();
    let ra = tc.cluster.add_rack("ra", "za").await.unwrap();
    tc.cluster.add_rack("rb", "zb").await.unwrap();
    let c = tc.clients();
    wait_racks_connected(&c, &["ra", "rb"], Duration::from_secs(10))
        .await
        .unwrap();

    // Two machines of zone za (so rack ra owns them): m1 answers at once, m2's BMC takes 600 ms per action
    // (the rack is in the middle of it when its region dies).
    let mk = |i, extra: &'static [(&'static str, &'static str)]| {
        let c = c.clone();
        let req = sim_machine(17, i, "za", &bmc, extra);
        async move {
            c.machines()
                .create_machine(req)
                .await
                .unwrap()
                .into_inner()
                .system_id
        }
    };
    let m1 = mk(1, &[]).await;
    let m2 = mk(2, &[("delay_ms", "600")]).await;
    wait_owners(&c, Duration::from_secs(10), |o| {
        o.get(&m1).is_some_and(|r| r == "ra") && o.get(&m2).is_some_and(|r| r == "ra")
    })
    .await
    .unwrap();

    let before = rack_status(&c, "ra").await.unwrap();
    assert!(before.connected && before.region_id != 0, "{before:?}");
    let victim_id = before.region_id;
    let victim = index_of(&tc, victim_id);
    let survivor = (1..=3).find(|i| *i != victim).unwrap();
    let sc = tc.clients_to(survivor);
    eprintln!(
        "rack ra is served by region {} (index {victim}); killing it, watching through index {survivor}",
        before.region_name
    );

    // A command the rack is running when its region dies.
    let slow = power(&sc, &m2, "off", 0).await.unwrap();
    assert_eq!(slow.state, "pending", "{slow:?}");
    let running = wait_log(
        &ra.log,
        "running command",
        &format!("id={} ", slow.id),
        Duration::from_secs(5),
    )
    .await;
    assert!(
        running,
        "the rack did not start command {} within 5 s",
        slow.id
    );

    // Recording the new session needs a leader: when the victim led, an election comes first.
    let victim_led = tc.cluster.leader().await == Some(victim);
    tc.cluster.kill(victim, libc::SIGKILL).unwrap();
    let killed = Instant::now();
    let killed_wall = std::time::SystemTime::now();

    // Right after the kill, power m1 on. Issued once with a long wait: a retried Power would be a new
    // command, so only UNAVAILABLE (nothing queued) is retried, a bounded number of times.
    let task = {
        let sc = sc.clone();
        let m1 = m1.clone();
        tokio::spawn(async move {
            for attempt in 1..=5 {
                match tokio::time::timeout(Duration::from_secs(45), power(&sc, &m1, "on", 30)).await
                {
                    Ok(Ok(cmd)) => return (cmd, attempt, killed.elapsed()),
                    Ok(Err(e)) if e.code() == Code::Unavailable && attempt < 5 => {
                        eprintln!("Power attempt {attempt}: {e}; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Ok(Err(e)) => panic!("Power on {m1} failed: {e}"),
                    Err(_) => panic!("Power on {m1} did not answer within 45 s"),
                }
            }
            unreachable!("the loop returns or panics on its last attempt")
        })
    };

    // The session on another region, as a surviving region sees it (stale reads: no leader needed).
    let mut moved = None;
    while killed.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(r)) =
            tokio::time::timeout(Duration::from_secs(1), rack_status(&sc, "ra")).await
        {
            if r.connected && r.region_id != 0 && r.region_id != victim_id {
                moved = Some((killed.elapsed(), r));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (took, after) = moved.expect("rack ra's session did not move within 10 s");
    eprintln!(
        "FIGURE region SIGKILL -> rack ra's new session recorded on region {} ({}): {} ms",
        after.region_name,
        after.region_id,
        took.as_millis()
    );
    let established = log_lines(&ra.log, ESTABLISHED);
    assert!(
        established.len() >= 2,
        "one session per connect: {established:?}"
    );
    let last = established.last().unwrap();
    eprintln!("rack log: {last}");
    // The rack's failover itself (kill -> new session established, by the rack log's own clock): the
    // contract is within a second.
    let at = log_time(last).expect("a timestamp on the rack's log line");
    let rack_took = at.duration_since(killed_wall).unwrap_or_default();
    eprintln!(
        "FIGURE region SIGKILL -> rack ra's new session established: {} ms",
        rack_took.as_millis()
    );
    assert!(
        rack_took < Duration::from_secs(1),
        "the rack took {rack_took:?} to fail over, not < 1 s: {last}"
    );
    // Recorded in the log: 2 s, plus an election's worth when the killed region was the leader.
    let recorded_limit = Duration::from_secs(if victim_led { 4 } else { 2 });
    assert!(
        took < recorded_limit,
        "session recorded on another region {took:?} after the kill, not < {recorded_limit:?} (the victim led: {victim_led})"
    );

    let (cmd, attempts, answered) = task.await.unwrap();
    eprintln!(
        "Power on after the kill: {} in {} ms ({attempts} attempt(s)): {cmd:?}",
        cmd.state,
        answered.as_millis()
    );
    assert_eq!(cmd.state, "done", "{cmd:?}");
    assert_eq!(cmd.rack, "ra", "{cmd:?}");
    assert_eq!(cmd.power_state, "on", "{cmd:?}");

    let slow = sc
        .machines()
        .get_power_command(GetPowerCommandRequest {
            id: slow.id,
            wait_seconds: 20,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        slow.state, "done",
        "the command running during the kill: {slow:?}"
    );
    assert_eq!(slow.power_state, "off", "{slow:?}");

    // Re-deliveries after the failover must not run anything again: look once more a moment later.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        sim_op_count(&bmc, &m1, cmd.id).unwrap(),
        1,
        "command {} ran once",
        cmd.id
    );
    assert_eq!(
        sim_op_count(&bmc, &m2, slow.id).unwrap(),
        1,
        "command {} ran once",
        slow.id
    );
    assert_no_duplicate_ops(&bmc, &m1);
    assert_no_duplicate_ops(&bmc, &m2);
    for l in log_lines(&ra.log, &format!("id={} ", slow.id)) {
        eprintln!("rack on the command running during the kill: {l}");
    }
    tc.cluster.wait_exit(victim).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rack_failover_moves_bmcs_within_the_grace_time() {
    const GRACE: Duration = Duration::from_millis(3000);
    let _serial = SERIAL.lock().await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tc = TestCluster::start("racks-rack-failover", 3, &["--rack-grace-ms=3000"])
        .await
        .unwrap();
    let _logs = RackLogsOnPanic(&tc.cluster);
    let bmc = tc.dir.join("bmc");
    std::fs::create_dir_all(&bmc).unwrap();
    tc.cluster.add_rack("ra", "za").await.unwrap();
    tc.cluster.add_rack("rb", "zb").await.unwrap();
    let c = tc.clients();
    wait_racks_connected(&c, &["ra", "rb"], Duration::from_secs(10))
        .await
        .unwrap();

    // Three machines in za, two in zb, created once both racks are live: each goes to its zone's rack.
    let mut za = Vec::new();
    let mut zb = Vec::new();
    for i in 0..5u32 {
        let zone = if i < 3 { "za" } else { "zb" };
        let id = c
            .machines()
            .create_machine(sim_machine(27, i, zone, &bmc, &[]))
            .await
            .unwrap()
            .into_inner()
            .system_id;
        if i < 3 { &mut za } else { &mut zb }.push(id);
    }
    let (owners, _) = wait_owners(&c, Duration::from_secs(10), |o| {
        za.iter().all(|m| o.get(m).is_some_and(|r| r == "ra"))
            && zb.iter().all(|m| o.get(m).is_some_and(|r| r == "rb"))
    })
    .await
    .unwrap();
    eprintln!("BMC owners by zone: {owners:?}");

    tc.cluster.kill_rack("ra", libc::SIGKILL).unwrap();
    let killed = Instant::now();
    wait_owners(&c, GRACE + Duration::from_secs(3), |o| {
        za.iter()
            .chain(&zb)
            .all(|m| o.get(m).is_some_and(|r| r == "rb"))
    })
    .await
    .unwrap();
    let took = killed.elapsed();
    eprintln!(
        "FIGURE rack SIGKILL -> all its BMCs owned by rb: {} ms (grace {} ms)",
        took.as_millis(),
        GRACE.as_millis()
    );
    assert!(
        took < GRACE + Duration::from_secs(2),
        "BMCs moved after {took:?}, not within grace + 2 s"
    );
    let ra = rack_status(&c, "ra").await.unwrap();
    let rb = rack_status(&c, "rb").await.unwrap();
    assert!(!ra.connected, "a killed rack shows disconnected: {ra:?}");
    assert_eq!((ra.bmc_count, rb.bmc_count), (0, 5), "{ra:?} {rb:?}");

    // A power cycle of one of ra's former machines now runs through rb, once.
    let cmd = power(&c, &za[0], "cycle", 20).await.unwrap();
    assert_eq!(cmd.state, "done", "{cmd:?}");
    assert_eq!(cmd.rack, "rb", "{cmd:?}");
    assert_eq!(cmd.power_state, "on", "{cmd:?}");
    assert_eq!(sim_op_count(&bmc, &za[0], cmd.id).unwrap(), 1);

    // ra comes back: connected, but it takes nothing away from rb (ownership never flaps back)...
    let ra_proc = tc.cluster.restart_rack("ra").await.unwrap();
    wait_racks_connected(&c, &["ra", "rb"], Duration::from_secs(10))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await; // four ticks of the leader's worker
    let (owners, _) = wait_owners(&c, Duration::from_secs(1), |_| true)
        .await
        .unwrap();
    assert!(
        za.iter()
            .chain(&zb)
            .all(|m| owners.get(m).is_some_and(|r| r == "rb")),
        "a returning rack must not take BMCs from a live one: {owners:?}"
    );
    assert!(!log_lines(&ra_proc.log, ESTABLISHED).is_empty());
    // ... and a BMC that is free (a new machine of its zone) goes to it.
    let fresh = c
        .machines()
        .create_machine(sim_machine(27, 9, "za", &bmc, &[]))
        .await
        .unwrap()
        .into_inner()
        .system_id;
    wait_owners(&c, Duration::from_secs(5), |o| {
        o.get(&fresh).is_some_and(|r| r == "ra")
    })
    .await
    .unwrap();
    // A linearizable read: the owners above came from a stale read of whichever region answered, and
    // another region's stale rack list may not have applied the move yet.
    let racks = ingot_tests::list_racks(&c, false).await.unwrap();
    let count = |n: &str| racks.iter().find(|r| r.name == n).map(|r| r.bmc_count);
    assert_eq!((count("ra"), count("rb")), (Some(1), Some(5)), "{racks:?}");
    assert_no_duplicate_ops(&bmc, &za[0]);

    // A hung rack (SIGSTOP: its connection stays open, it only stops beating) loses its BMCs within grace
    // + 2 s as well; resumed, it reconnects and takes nothing back.
    let all: Vec<String> = za.iter().chain(&zb).chain([&fresh]).cloned().collect();
    tc.cluster.kill_rack("rb", libc::SIGSTOP).unwrap();
    let stopped = Instant::now();
    let moved = wait_owners(&c, GRACE + Duration::from_secs(3), |o| {
        all.iter().all(|m| o.get(m).is_some_and(|r| r == "ra"))
    })
    .await;
    let took = stopped.elapsed();
    tc.cluster.kill_rack("rb", libc::SIGCONT).unwrap();
    moved.unwrap();
    eprintln!(
        "FIGURE rack SIGSTOP -> all its BMCs owned by ra: {} ms (grace {} ms)",
        took.as_millis(),
        GRACE.as_millis()
    );
    assert!(
        took < GRACE + Duration::from_secs(2),
        "BMCs of a hung rack moved after {took:?}, not within grace + 2 s"
    );
    let cmd = power(&c, &zb[0], "query", 20).await.unwrap();
    assert_eq!(
        (cmd.state.as_str(), cmd.rack.as_str()),
        ("done", "ra"),
        "{cmd:?}"
    );
    assert_eq!(sim_op_count(&bmc, &zb[0], cmd.id).unwrap(), 1);
    wait_racks_connected(&c, &["ra", "rb"], Duration::from_secs(10))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (owners, _) = wait_owners(&c, Duration::from_secs(1), |_| true)
        .await
        .unwrap();
    assert!(
        all.iter().all(|m| owners.get(m).is_some_and(|r| r == "ra")),
        "a resumed rack must not take BMCs back: {owners:?}"
    );
}

/// `RackService.RegisterRack` with `token` for `name` (zone za), the CSR made for `csr_cn`.
async fn register(
    api: &Endpoint,
    token: &str,
    name: &str,
    csr_cn: &str,
) -> Result<(String, String), tonic::Status> {
    let (key, csr) = pki::new_csr(csr_cn).unwrap();
    let ch = api.connect().await.unwrap();
    RackServiceClient::new(ch)
        .register_rack(RegisterRackRequest {
            token: token.into(),
            name: name.into(),
            zone: "za".into(),
            csr_pem: csr,
        })
        .await
        .map(|r| (r.into_inner().cert_pem, key))
}

async fn enrollment_token(c: &ingot_client::Clients, ttl_seconds: u64) -> String {
    rack_api(c)
        .create_enrollment_token(CreateEnrollmentTokenRequest { ttl_seconds })
        .await
        .unwrap()
        .into_inner()
        .token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racks_are_refused_what_they_may_not_do() {
    let _serial = SERIAL.lock().await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tc = TestCluster::start("racks-refusals", 3, &[]).await.unwrap();
    let _logs = RackLogsOnPanic(&tc.cluster);
    let ra = tc.cluster.add_rack("ra", "za").await.unwrap();
    let rb = tc.cluster.add_rack("rb", "za").await.unwrap();
    let c = tc.clients();
    wait_racks_connected(&c, &["ra", "rb"], Duration::from_secs(10))
        .await
        .unwrap();
    let ca = std::fs::read_to_string(tc.cluster.ca_path()).unwrap();
    let region = tc.cluster.region(1);
    let cluster_addr = region.raft_addr.clone();
    let api = Endpoint::from_shared(format!("https://{}", region.api_addr))
        .unwrap()
        .tls_config(cluster_tls(&ca, None))
        .unwrap();

    // The cluster listener without a client certificate: refused at the handshake or as UNAUTHENTICATED.
    let e = try_rack_session(&cluster_addr, cluster_tls(&ca, None))
        .await
        .unwrap_err();
    eprintln!("no client certificate: {:?} {}", e.code(), e.message());
    // A rack certificate from another CA: refused.
    let foreign = ClusterCa::generate("foreign").unwrap();
    let (fcert, fkey) = foreign.issue(&Identity::rack("x")).unwrap();
    let e = try_rack_session(&cluster_addr, cluster_tls(&ca, Some((&fcert, &fkey))))
        .await
        .unwrap_err();
    eprintln!("foreign CA: {:?} {}", e.code(), e.message());

    // Enrollment: a token enrolls one rack (the control: that rack's certificate opens a session)...
    let t1 = enrollment_token(&c, 0).await;
    let (cert, key) = register(&api, &t1, "rc", "rack-rc").await.unwrap();
    let w = try_rack_session(&cluster_addr, cluster_tls(&ca, Some((&cert, &key))))
        .await
        .unwrap();
    assert_eq!(w.region_id, region.node_id, "{w:?}");
    // ... only once,
    let e = register(&api, &t1, "rd", "rack-rd").await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    assert!(e.message().contains("already used"), "{e}");
    // ... and not after it expired,
    let t2 = enrollment_token(&c, 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let e = register(&api, &t2, "re", "rack-re").await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    assert!(e.message().contains("expired"), "{e}");
    // ... and a CSR must be for the rack's own name.
    let t3 = enrollment_token(&c, 0).await;
    let e = register(&api, &t3, "rackx", "rack-other")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("csr_pem"), "{e}");

    // A rack certificate is no admin credential: the API wants a bearer token...
    let (ra_cert, ra_key) = rack_cert(&ra).unwrap();
    let ch = api
        .clone()
        .tls_config(cluster_tls(&ca, Some((&ra_cert, &ra_key))))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let e = MachineServiceClient::new(ch)
        .list_machines(ListMachinesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    // ... and Raft is for regions only.
    let ch = Endpoint::from_shared(format!("https://{cluster_addr}"))
        .unwrap()
        .tls_config(cluster_tls(&ca, Some((&ra_cert, &ra_key))))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let e = RaftServiceClient::new(ch)
        .status(StatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");

    // Revocation: rb's session is cut and its daemon cannot come back; its certificate is refused.
    let refused = |p: &Path| {
        strip_ansi(&std::fs::read_to_string(p).unwrap_or_default())
            .lines()
            .filter(|l| {
                let l = l.to_lowercase();
                l.contains("permission denied")
                    || l.contains("permissiondenied")
                    || l.contains("refused this rack")
            })
            .count()
    };
    let refused_before = refused(&rb.log);
    let r = rack_api(&c)
        .revoke_rack(RevokeRackRequest { name: "rb".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(r.revoked && !r.connected, "{r:?}");
    let t0 = Instant::now();
    let established = log_lines(&rb.log, ESTABLISHED).len();
    while refused(&rb.log) == refused_before {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "rb's log shows no refusal 5 s after the revocation"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "rb after revocation: {}",
        log_lines(&rb.log, "refused")
            .last()
            .map_or("(no line)", |l| l.as_str())
    );
    // For 2 s (the daemon retries all regions meanwhile) rb stays disconnected and never gets a session.
    for _ in 0..10 {
        let rb_now = rack_status(&c, "rb").await.unwrap();
        assert!(rb_now.revoked && !rb_now.connected, "{rb_now:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        log_lines(&rb.log, ESTABLISHED).len(),
        established,
        "a revoked rack got a session"
    );
    let (rb_cert, rb_key) = rack_cert(&rb).unwrap();
    for r in tc.cluster.regions() {
        let e = try_rack_session(&r.raft_addr, cluster_tls(&ca, Some((&rb_cert, &rb_key))))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{}: {e}", r.name);
    }
    // The other rack is untouched.
    assert!(rack_status(&c, "ra").await.unwrap().connected);
}

/// The UTC time at the start of a tracing log line (`2026-12-03T16:54:50.652062Z  INFO ...`).
fn log_time(line: &str) -> Option<std::time::SystemTime> {
    let ts = line.split_whitespace().next()?;
    let (date, time) = ts.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, mo, da) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>());
    let (h, mi, se) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (mo + if mo > 2 { -3 } else { 9 }) + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se;
    let nanos: u32 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
    Some(std::time::UNIX_EPOCH + Duration::new(u64::try_from(secs).ok()?, nanos))
}

#[test]
fn log_time_reads_tracing_timestamps() {
    let t = log_time("2026-12-03T16:54:50.652062Z  INFO x").unwrap();
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap();
    assert_eq!(d.as_secs(), 1_796_316_890);
    assert_eq!(d.subsec_micros(), 652_062);
}
