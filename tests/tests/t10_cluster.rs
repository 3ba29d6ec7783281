//! Replication, failover, catch-up by snapshot, and whole-cluster restarts, on real processes.

use ingot_client::retry_unavailable;
use ingot_proto::v1::{get_machine_request::Key, GetMachineRequest, ListRegionsRequest};
use ingot_tests::{all_hostnames, machine, TestCluster};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_a_follower_survive_leader_kill_and_restart() {
    let tc = TestCluster::start("leader-kill", 3, &[]).await.unwrap();
    let leader = tc.leader().await;
    let follower = (1..=3).find(|i| *i != leader).unwrap();

    // A write sent to a follower is forwarded to the leader and acknowledged.
    let via_follower = tc.clients_to(follower);
    let m = via_follower
        .machines()
        .create_machine(machine(10, 0))
        .await
        .unwrap()
        .into_inner();
    // Linearizable read on another follower sees it at once.
    let other = (1..=3).find(|i| *i != leader && *i != follower).unwrap();
    let got = tc
        .clients_to(other)
        .machines()
        .get_machine(GetMachineRequest {
            key: Some(Key::SystemId(m.system_id.clone())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.hostname, m.hostname);

    // SIGKILL the leader: writes through the survivors resume.
    tc.cluster.kill(leader, libc::SIGKILL).unwrap();
    tc.cluster.wait_exit(leader).await.unwrap();
    let t0 = Instant::now();
    let c = tc.clients_to(follower);
    let mut i = 1;
    retry_unavailable(
        || {
            i += 1;
            let mut c = c.machines();
            let req = machine(10, i);
            async move { c.create_machine(req).await }
        },
        Duration::from_secs(15),
    )
    .await
    .expect("writes resume after the leader is killed");
    eprintln!("first write after leader SIGKILL: {:?}", t0.elapsed());
    for j in 100..120 {
        c.machines().create_machine(machine(10, j)).await.unwrap();
    }

    // The killed region restarts and catches up.
    tc.cluster.restart(leader).await.unwrap();
    let expected = all_hostnames(&tc.clients_to(follower), false)
        .await
        .unwrap();
    let back = tc.clients_to(leader);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = all_hostnames(&back, true).await.unwrap_or_default();
        if seen == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted region has {} of {} machines",
            seen.len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_down_past_several_snapshots_catches_up_by_snapshot() {
    // Snapshot every 20 entries, keep only 5 behind: a region that misses 300 entries cannot be served from
    // the log and must receive a snapshot.
    let tc = TestCluster::start(
        "snapshot-catchup",
        3,
        &["--snapshot-logs=20", "--keep-logs=5"],
    )
    .await
    .unwrap();
    let leader = tc.leader().await;
    let down = (1..=3).find(|i| *i != leader).unwrap();
    tc.cluster.kill(down, libc::SIGKILL).unwrap();
    tc.cluster.wait_exit(down).await.unwrap();
    let before = region_status(&tc, leader, down).await;

    let c = tc.clients_to(leader);
    for i in 0..300 {
        c.machines().create_machine(machine(11, i)).await.unwrap();
    }
    let leader_status = region_status(&tc, leader, leader).await;
    assert!(
        leader_status.snapshot_index > before.last_applied_index + 5,
        "the leader has snapshotted past what the down region had ({} vs {})",
        leader_status.snapshot_index,
        before.last_applied_index
    );

    tc.cluster.restart(down).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = region_status(&tc, leader, down).await;
        if s.healthy && s.last_applied_index >= leader_status.last_applied_index {
            // The entries it missed were purged on the leader (kept: 5 behind its snapshot), so it can only
            // have caught up through an installed snapshot, which it now holds.
            assert!(
                s.snapshot_index > before.last_applied_index,
                "no snapshot installed: {s:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted region stuck at {} < {}",
            s.last_applied_index,
            leader_status.last_applied_index
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = all_hostnames(&tc.clients_to(down), true).await.unwrap();
    assert_eq!(seen.len(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_and_restarting_all_regions_keeps_every_acknowledged_write() {
    let tc = TestCluster::start("full-restart", 3, &[]).await.unwrap();
    let c = tc.clients();
    let mut acked = std::collections::BTreeSet::new();
    for i in 0..60 {
        let m = c
            .machines()
            .create_machine(machine(12, i))
            .await
            .unwrap()
            .into_inner();
        acked.insert(m.hostname);
    }
    // Crash every region at once (SIGKILL: no clean shutdown, no final flush).
    for i in 1..=3 {
        tc.cluster.kill(i, libc::SIGKILL).unwrap();
    }
    for i in 1..=3 {
        tc.cluster.wait_exit(i).await.unwrap();
    }
    tc.cluster.restart_stopped().await.unwrap();
    let c = tc.clients();
    let seen = retry_unavailable(
        || {
            let c = c.clone();
            async move {
                all_hostnames(&c, false)
                    .await
                    .map_err(|e| tonic::Status::unavailable(e.to_string()))
            }
        },
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    let missing: Vec<_> = acked.difference(&seen).collect();
    assert!(missing.is_empty(), "acknowledged writes lost: {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_and_listing_regions() {
    let tc = TestCluster::start("membership", 3, &[]).await.unwrap();
    let c = tc.clients();
    let regions = c
        .cluster()
        .list_regions(ListRegionsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(regions.regions.len(), 3);
    assert!(
        regions.regions.iter().all(|r| r.healthy && r.voter),
        "{regions:?}"
    );
    assert_eq!(
        regions
            .regions
            .iter()
            .filter(|r| r.role == ingot_proto::v1::RegionRole::Leader as i32)
            .count(),
        1
    );

    let leader = tc.leader().await;
    let victim = (1..=3).find(|i| *i != leader).unwrap();
    let victim_id = tc.cluster.region(victim).node_id;
    c.cluster()
        .remove_region(ingot_proto::v1::RemoveRegionRequest { node_id: victim_id })
        .await
        .unwrap();
    let regions = tc
        .clients_to(leader)
        .cluster()
        .list_regions(ListRegionsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(regions.regions.len(), 2, "{regions:?}");
    // The removed region was told, stopped, and refuses to come back with its stale state.
    tc.cluster.wait_exit(victim).await.unwrap();
    let bin = ingot_launch::resolve_bin_dir(None)
        .unwrap()
        .join("ingot-region");
    let out = std::process::Command::new(bin)
        .args(["run", "--data-dir"])
        .arg(&tc.cluster.region(victim).data_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("removed from the cluster"),
        "{err}"
    );
    // Its certificate (CA-signed, valid for years) no longer admits it to any RaftService RPC.
    refused_on_every_raft_rpc(&tc, leader, victim, victim_id).await;
    // The two remaining regions still form a working cluster.
    tc.clients_to(leader)
        .machines()
        .create_machine(machine(13, 1))
        .await
        .unwrap();
    // Removing an unknown region is NotFound (asked of a live region: `c` may still pick the removed one).
    let e = tc
        .clients_to(leader)
        .cluster()
        .remove_region(ingot_proto::v1::RemoveRegionRequest { node_id: 99 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
}

/// Calls every RaftService RPC on region `at` with the certificate of the removed region `removed` (node
/// `removed_id`): each must be refused for who the caller is, before its payload is even looked at.
async fn refused_on_every_raft_rpc(tc: &TestCluster, at: usize, removed: usize, removed_id: u64) {
    use ingot_proto::raft::v1::raft_service_client::RaftServiceClient;
    use ingot_proto::raft::v1::*;
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap();
    let dd = &tc.cluster.region(removed).data_dir;
    let tls = ingot_tests::cluster_tls(
        &read(dd.join("tls/ca.crt")),
        Some((
            &read(dd.join("tls/region.crt")),
            &read(dd.join("tls/region.key")),
        )),
    );
    let ch = tonic::transport::Endpoint::from_shared(format!(
        "https://{}",
        tc.cluster.region(at).raft_addr
    ))
    .unwrap()
    .tls_config(tls)
    .unwrap()
    .connect()
    .await
    .unwrap();
    let mut c = RaftServiceClient::new(ch);
    let payload = || RaftPayload {
        json: b"{}".to_vec(),
    };
    let answers: Vec<(&str, Result<(), tonic::Status>)> = vec![
        ("Status", c.status(StatusRequest {}).await.map(|_| ())),
        (
            "ReadIndex",
            c.read_index(ReadIndexRequest {}).await.map(|_| ()),
        ),
        ("Forward", c.forward(payload()).await.map(|_| ())),
        (
            "AppendEntries",
            c.append_entries(payload()).await.map(|_| ()),
        ),
        ("Vote", c.vote(payload()).await.map(|_| ())),
        (
            "InstallSnapshot",
            c.install_snapshot(SnapshotChunk::default())
                .await
                .map(|_| ()),
        ),
        (
            "Join",
            c.join(JoinRequest {
                node_id: removed_id,
            })
            .await
            .map(|_| ()),
        ),
        (
            "Leave",
            c.leave(LeaveRequest {
                node_id: removed_id,
                reason: String::new(),
            })
            .await
            .map(|_| ()),
        ),
    ];
    for (rpc, r) in answers {
        let e = r.expect_err(rpc);
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{rpc}: {e}");
        eprintln!("{rpc} with a removed region's certificate: {}", e.message());
    }
}

async fn region_status(tc: &TestCluster, via: usize, of: usize) -> ingot_proto::v1::Region {
    let id = tc.cluster.region(of).node_id;
    let r = tc
        .clients_to(via)
        .cluster()
        .list_regions(ListRegionsRequest {})
        .await
        .unwrap()
        .into_inner();
    r.regions
        .into_iter()
        .find(|r| r.node_id == id)
        .expect("region listed")
}
