//! The simulated in-band agent: a machine powered on into a network boot reports like a real agent, through
//! a scripted fake region.

use crate::common::*;
use ingot_common::model::Inventory;
use ingot_sim::agent::RegionFuture;
use ingot_sim::{
    AgentConfig, BootCredentials, Fleet, FleetConfig, ProgressStep, RegionApi, SimMachineInfo,
};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::Status;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Creds(String),
    Inventory(String, u32),
    Progress(String, String, u32),
    Result(String, bool),
}

/// A region that knows boot sessions by hostname and records every agent call.
#[derive(Default)]
struct FakeRegion {
    sessions: Mutex<HashMap<String, BootCredentials>>,
    calls: Mutex<Vec<Call>>,
    /// Calls answered UNAVAILABLE before the region "recovers".
    unavailable: AtomicU32,
    /// Reports answered UNAUTHENTICATED (the boot was superseded).
    refuse_reports: Mutex<bool>,
}

impl FakeRegion {
    fn boot(&self, hostname: &str, purpose: &str) {
        self.sessions.lock().unwrap().insert(
            hostname.to_string(),
            BootCredentials {
                system_id: format!("id-{hostname}"),
                boot_id: "b1".into(),
                token: "tok".into(),
                purpose: purpose.into(),
            },
        );
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn has_result(&self) -> bool {
        self.calls().iter().any(|c| matches!(c, Call::Result(..)))
    }

    fn outage(&self) -> Result<(), Status> {
        let left = self.unavailable.load(Ordering::SeqCst);
        if left > 0 {
            self.unavailable.store(left - 1, Ordering::SeqCst);
            return Err(Status::unavailable("no leader"));
        }
        Ok(())
    }

    fn check(&self, token: &str) -> Result<(), Status> {
        self.outage()?;
        if *self.refuse_reports.lock().unwrap() || token != "tok" {
            return Err(Status::unauthenticated("superseded"));
        }
        Ok(())
    }

    fn record(&self, c: Call) {
        self.calls.lock().unwrap().push(c);
    }
}

impl RegionApi for FakeRegion {
    fn boot_credentials<'a>(&'a self, hostname: &'a str) -> RegionFuture<'a, BootCredentials> {
        Box::pin(async move {
            self.outage()?;
            self.record(Call::Creds(hostname.to_string()));
            self.sessions
                .lock()
                .unwrap()
                .get(hostname)
                .cloned()
                .ok_or_else(|| Status::failed_precondition("not booting for Ingot"))
        })
    }

    fn report_inventory<'a>(
        &'a self,
        system_id: &'a str,
        token: &'a str,
        inventory: &'a Inventory,
    ) -> RegionFuture<'a, ()> {
        Box::pin(async move {
            self.check(token)?;
            self.record(Call::Inventory(system_id.into(), inventory.cpu_count));
            Ok(())
        })
    }

    fn report_progress<'a>(
        &'a self,
        system_id: &'a str,
        token: &'a str,
        message: &'a str,
        percent: u32,
    ) -> RegionFuture<'a, ()> {
        Box::pin(async move {
            self.check(token)?;
            self.record(Call::Progress(system_id.into(), message.into(), percent));
            Ok(())
        })
    }

    fn report_result<'a>(
        &'a self,
        system_id: &'a str,
        token: &'a str,
        success: bool,
        _reason: &'a str,
    ) -> RegionFuture<'a, ()> {
        Box::pin(async move {
            self.check(token)?;
            self.record(Call::Result(system_id.into(), success));
            Ok(())
        })
    }
}

async fn fleet_with(region: &Arc<FakeRegion>, step_delay_ms: u64) -> Fleet {
    let agent = AgentConfig {
        boot_delay_ms: 50,
        step_delay_ms,
        retry_ms: 5_000,
        deploy_steps: vec![
            ProgressStep::new("curtin: partitioning", 20),
            ProgressStep::new("curtin: installing", 60),
            ProgressStep::new("curtin: configuring", 90),
        ],
        ..AgentConfig::default()
    };
    Fleet::start_with_region(
        FleetConfig {
            count: 2,
            password: Some(PASSWORD.into()),
            agent: Some(agent),
            seed: 9,
            ..FleetConfig::default()
        },
        Some(Arc::clone(region) as Arc<dyn RegionApi>),
    )
    .await
    .unwrap()
}

/// Sets a `Once` PXE override and powers the machine on, through Redfish.
async fn pxe_boot(m: &SimMachineInfo, reset: &str) {
    let c = http();
    let body =
        json!({"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}});
    assert_eq!(patch(&c, m, &system_url(m), body).await.0, 204);
    assert_eq!(
        post(&c, m, &reset_url(m), json!({"ResetType": reset}))
            .await
            .0,
        204
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commissioning_boot_reports_inventory_then_success() {
    let region = Arc::new(FakeRegion::default());
    let f = fleet_with(&region, 10).await;
    let m = &f.machines()[0];
    region.boot(&m.hostname, "commissioning");
    pxe_boot(m, "On").await;
    assert!(eventually(Duration::from_secs(5), || region.has_result()).await);
    let id = format!("id-{}", m.hostname);
    assert_eq!(
        region.calls(),
        [
            Call::Creds(m.hostname.clone()),
            Call::Inventory(id.clone(), m.inventory.cpu_count),
            Call::Result(id, true)
        ]
    );
    let v = f.machine(&m.hostname).unwrap().view();
    assert_eq!(v.counters.agent.runs.get("commissioning"), Some(&1));
    assert_eq!(v.counters.agent.completed, 1);

    // The Once override was consumed: the next boot is from disk and reports nothing.
    let c = http();
    post(&c, m, &reset_url(m), json!({"ResetType": "ForceRestart"})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(region.calls().len(), 3);
    let v = f.machine(&m.hostname).unwrap().view();
    assert_eq!(v.boot.last_boot_device, Some(ingot_sim::BootTarget::Hdd));
    // The other machine never booted.
    assert_eq!(
        f.machine(&f.machines()[1].hostname)
            .unwrap()
            .view()
            .counters
            .boots,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploying_boot_reports_progress_then_success() {
    let region = Arc::new(FakeRegion::default());
    let f = fleet_with(&region, 50).await;
    let m = &f.machines()[1];
    region.boot(&m.hostname, "deploying");
    let start = std::time::Instant::now();
    pxe_boot(m, "On").await;
    assert!(eventually(Duration::from_secs(5), || region.has_result()).await);
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "steps are spaced"
    );
    let id = format!("id-{}", m.hostname);
    assert_eq!(
        region.calls()[1..],
        [
            Call::Progress(id.clone(), "curtin: partitioning".into(), 20),
            Call::Progress(id.clone(), "curtin: installing".into(), 60),
            Call::Progress(id.clone(), "curtin: configuring".into(), 90),
            Call::Result(id, true),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_purposes_report_and_succeed() {
    for (purpose, progress) in [("testing", 1), ("erasing", 1), ("rescue", 0)] {
        let region = Arc::new(FakeRegion::default());
        let f = fleet_with(&region, 10).await;
        let m = &f.machines()[0];
        region.boot(&m.hostname, purpose);
        pxe_boot(m, "PowerCycle").await;
        assert!(
            eventually(Duration::from_secs(5), || region.has_result()).await,
            "{purpose}"
        );
        let calls = region.calls();
        let n = calls
            .iter()
            .filter(|c| matches!(c, Call::Progress(..)))
            .count();
        assert_eq!(n, progress, "{purpose}: {calls:?}");
        assert_eq!(
            calls.last(),
            Some(&Call::Result(format!("id-{}", m.hostname), true))
        );
        let v = f.machine(&m.hostname).unwrap().view();
        assert_eq!(v.counters.agent.runs.get(purpose), Some(&1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_off_cancels_the_work() {
    let region = Arc::new(FakeRegion::default());
    let f = fleet_with(&region, 1000).await;
    let m = &f.machines()[0];
    region.boot(&m.hostname, "deploying");
    pxe_boot(m, "On").await;
    assert!(
        eventually(Duration::from_secs(5), || {
            region
                .calls()
                .iter()
                .any(|c| matches!(c, Call::Progress(..)))
        })
        .await
    );
    let c = http();
    post(&c, m, &reset_url(m), json!({"ResetType": "ForceOff"})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let calls = region.calls();
    assert!(!region.has_result(), "{calls:?}");
    assert_eq!(
        calls.len(),
        2,
        "credentials and one progress step: {calls:?}"
    );
    let v = f.machine(&m.hostname).unwrap().view();
    assert_eq!(v.counters.agent.cancelled, 1);
    assert_eq!(v.counters.agent.completed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_boot_without_a_session_reports_nothing() {
    let region = Arc::new(FakeRegion::default());
    let f = fleet_with(&region, 10).await;
    let m = &f.machines()[0];
    pxe_boot(m, "On").await;
    let sim = f.machine(&m.hostname).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || sim
            .view()
            .counters
            .agent
            .no_session
            == 1)
        .await
    );
    assert_eq!(region.calls(), [Call::Creds(m.hostname.clone())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_retried_while_the_region_is_unavailable() {
    let region = Arc::new(FakeRegion::default());
    region.unavailable.store(4, Ordering::SeqCst);
    let f = fleet_with(&region, 10).await;
    let m = &f.machines()[0];
    region.boot(&m.hostname, "commissioning");
    pxe_boot(m, "On").await;
    assert!(eventually(Duration::from_secs(8), || region.has_result()).await);
    assert_eq!(region.calls().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_boot_stops_quietly() {
    let region = Arc::new(FakeRegion::default());
    *region.refuse_reports.lock().unwrap() = true;
    let f = fleet_with(&region, 10).await;
    let m = &f.machines()[0];
    region.boot(&m.hostname, "commissioning");
    pxe_boot(m, "On").await;
    let sim = f.machine(&m.hostname).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || sim
            .view()
            .counters
            .agent
            .superseded
            == 1)
        .await
    );
    assert_eq!(region.calls(), [Call::Creds(m.hostname.clone())]);
    assert_eq!(sim.view().counters.agent.failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_pxe_runs_the_agent_at_every_boot() {
    let region = Arc::new(FakeRegion::default());
    let f = fleet_with(&region, 10).await;
    let m = &f.machines()[0];
    region.boot(&m.hostname, "rescue");
    let c = http();
    let body = json!({"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Continuous"}});
    assert_eq!(patch(&c, m, &system_url(m), body).await.0, 204);
    let sim = f.machine(&m.hostname).unwrap().clone();
    for n in 1..=2u64 {
        post(&c, m, &reset_url(m), json!({"ResetType": "ForceRestart"})).await;
        assert!(
            eventually(Duration::from_secs(5), || sim
                .view()
                .counters
                .agent
                .completed
                == n)
            .await
        );
    }
    assert_eq!(sim.view().counters.pxe_boots, 2);
}
