//! SIGKILL during concurrent writes, repeated: every write acknowledged to a client must survive.

use ingot_tests::{all_hostnames, machine, TestCluster};
use rand::Rng;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Runs `writers` tasks creating machines through all endpoints while `kills` times a random region (or
/// the only one) is SIGKILLed and restarted; then checks that every acknowledged write is present.
async fn crash_loop(name: &str, regions: usize, kills: usize, seed: u16) {
    let tc = Arc::new(TestCluster::start(name, regions, &[]).await.unwrap());
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..8u32 {
        let (tc, acked, stop) = (tc.clone(), acked.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let c = tc.clients();
            let mut i = 0u32;
            // Bounded: at most 100k writes per task and until told to stop.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 100_000 {
                i += 1;
                let req = machine(seed, w * 1_000_000 + i);
                let host = req.hostname.clone();
                match tokio::time::timeout(
                    Duration::from_secs(10),
                    c.machines().create_machine(req),
                )
                .await
                {
                    Ok(Ok(_)) => {
                        acked.lock().unwrap().insert(host);
                    }
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    let mut rng = rand::thread_rng();
    for k in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(150..600))).await;
        let victim = if regions == 1 {
            1
        } else {
            rng.gen_range(1..=regions)
        };
        tc.cluster.kill(victim, libc::SIGKILL).unwrap();
        tc.cluster.wait_exit(victim).await.unwrap();
        tc.cluster
            .restart(victim)
            .await
            .unwrap_or_else(|e| panic!("restart {k} of region {victim}: {e:#}"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > kills * 5,
        "too few writes acknowledged to be meaningful: {}",
        acked.len()
    );
    let c = tc.clients();
    let deadline = Instant::now() + Duration::from_secs(20);
    let seen = loop {
        match all_hostnames(&c, false).await {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                eprintln!("retrying list: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("listing failed: {e}"),
        }
    };
    let lost: Vec<_> = acked.difference(&seen).take(10).collect();
    eprintln!(
        "{name}: {} acknowledged writes across {kills} SIGKILLs, {} present, lost: {}",
        acked.len(),
        seen.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged writes lost after SIGKILL: {lost:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_region_sigkill_during_writes_loses_nothing_acknowledged() {
    crash_loop("crash-1", 1, 20, 21).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_regions_sigkill_during_writes_loses_nothing_acknowledged() {
    crash_loop("crash-3", 3, 20, 22).await;
}
