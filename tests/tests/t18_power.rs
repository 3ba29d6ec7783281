//! Power through the whole stack: API → region (Raft) → rack session → driver → BMC → state in the API.
//!
//! - `simulated_machines_run_the_whole_lifecycle`: 1 region, 1 rack polling every 200 ms, an `ingot-sim`
//!   process with 3 machines (Redfish BMCs on loopback, an agent that reports when booted from the
//!   network), enlisted with the real `redfish` driver the way `ingot dev up` does. Commissioning powers the
//!   machine on through the rack (boot-pxe, cycle), the simulated agent reports inventory, the machine
//!   becomes Ready and is powered off; deploy and release run the same way. A BMC that starts refusing the
//!   password shows as a power error in the API after the monitor's repeated failures, without touching
//!   the status; clearing the fault clears the error. A third machine is then switched to the `ipmi` driver
//!   and commissioned through its simulated IPMI (RMCP+) BMC.
//! - `ipmi_sim_through_the_whole_stack`: the same path to OpenIPMI's `ipmi_sim` (a third-party BMC):
//!   power on/off/query from the API, the state visible on the machine, a wrong password as an `auth`
//!   failure in the command and its event, and commissioning's boot-pxe + cycle reaching the BMC.

use ingot_proto::v1::{
    AllocateRequest, Constraints, DeployRequest, MachineStatus, ReleaseRequest,
    UpdateMachineRequest,
};
use ingot_tests::{by_id, get, power, wait_racks_connected, RackLogsOnPanic, TestCluster};
use std::time::{Duration, Instant};

/// Polls `system_id` every 100 ms (at most `within`) until `pred` holds; returns the machine.
async fn wait_machine(
    c: &ingot_client::Clients,
    system_id: &str,
    within: Duration,
    what: &str,
    pred: impl Fn(&ingot_proto::v1::Machine) -> bool,
) -> ingot_proto::v1::Machine {
    let t0 = Instant::now();
    let mut last = None;
    while t0.elapsed() < within {
        if let Ok(m) = get(c, system_id).await {
            if pred(&m) {
                return m;
            }
            last = Some(m);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = last.map(|m| {
        format!(
            "status={:?} message={:?} power={:?} power_error={:?}",
            m.status(),
            m.status_message,
            m.power_state,
            m.power_error
        )
    });
    panic!("{system_id}: {what} not reached within {within:?}; last: {last:?}");
}

/// The machine with host name `host` (FULL view).
async fn by_hostname(c: &ingot_client::Clients, host: &str) -> ingot_proto::v1::Machine {
    c.machines()
        .get_machine(ingot_proto::v1::GetMachineRequest {
            key: Some(ingot_proto::v1::get_machine_request::Key::Hostname(
                host.to_string(),
            )),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("machine {host}: {e}"))
        .into_inner()
}

/// Sets fault knobs of simulated machine `host` through the simulator's control API.
async fn sim_faults(control: &str, host: &str, faults: serde_json::Value) {
    let r = reqwest::Client::new()
        .put(format!("{control}/machines/{host}/faults"))
        .json(&faults)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "setting faults: {}", r.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_machines_run_the_whole_lifecycle() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tc = TestCluster::start_with(
        "power-sim",
        1,
        &[],
        &["--poll-interval-ms=200", "--poll-failures=3"],
    )
    .await
    .unwrap();
    let _logs = RackLogsOnPanic(&tc.cluster);
    tc.cluster.add_rack("ra", "za").await.unwrap();
    let c = tc.clients();
    wait_racks_connected(&c, &["ra"], Duration::from_secs(10))
        .await
        .unwrap();
    let sim = tc
        .cluster
        .start_sims(3, &["za".to_string()], &["--boot-delay-ms=200".to_string()])
        .await
        .unwrap();
    assert_eq!(sim.machines.len(), 3);
    assert_eq!(tc.cluster.enlist_sims(&c, &sim).await.unwrap(), 3);
    // Enlisting again changes nothing (idempotent, as `ingot dev up` after a restart).
    assert_eq!(tc.cluster.enlist_sims(&c, &sim).await.unwrap(), 0);
    let host = sim.machines[0].hostname.clone();
    let m = by_hostname(&c, &host).await;
    let id = m.system_id.clone();
    // The rack owns the BMC and its monitor reads it: off.
    let m = wait_machine(
        &c,
        &id,
        Duration::from_secs(10),
        "first power reading",
        |m| m.rack == "ra" && m.power_state == "off",
    )
    .await;
    assert!(m.power_checked_at.is_some());

    // Commission: the region queues boot-pxe + cycle, the rack's redfish driver powers the simulated
    // machine on, its agent reports inventory and success, and the machine is powered off again.
    let t0 = Instant::now();
    c.machines()
        .commission(ingot_proto::v1::CommissionRequest {
            machine: Some(by_id(&id)),
            ..Default::default()
        })
        .await
        .unwrap();
    let m = wait_machine(
        &c,
        &id,
        Duration::from_secs(30),
        "Ready after commissioning",
        |m| m.status == MachineStatus::Ready as i32,
    )
    .await;
    eprintln!(
        "FIGURE commission -> Ready through rack + simulated BMC + agent: {} ms",
        t0.elapsed().as_millis()
    );
    let inv = m
        .inventory
        .as_deref()
        .expect("inventory reported by the agent");
    assert!(inv.cpu_count > 0 && inv.memory_mib > 0, "{inv:?}");
    wait_machine(
        &c,
        &id,
        Duration::from_secs(15),
        "powered off after commissioning",
        |m| m.power_state == "off",
    )
    .await;

    // Allocate + deploy: Deployed, on.
    let a = c
        .machines()
        .allocate(AllocateRequest {
            constraints: Some(Constraints {
                system_id: id.clone(),
                ..Default::default()
            }),
            request_id: "t18-alloc".into(),
            count: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.machines.len(), 1);
    c.machines()
        .deploy(DeployRequest {
            machine: Some(by_id(&id)),
            ..Default::default()
        })
        .await
        .unwrap();
    let m = wait_machine(&c, &id, Duration::from_secs(30), "Deployed", |m| {
        m.status == MachineStatus::Deployed as i32
    })
    .await;
    assert_eq!(m.power_state, "on", "{m:?}");

    // Release: Releasing completes when the rack's `off` succeeds.
    c.machines()
        .release(ReleaseRequest {
            machine: Some(by_id(&id)),
            ..Default::default()
        })
        .await
        .unwrap();
    let m = wait_machine(
        &c,
        &id,
        Duration::from_secs(30),
        "Ready after release",
        |m| m.status == MachineStatus::Ready as i32,
    )
    .await;
    assert_eq!(m.power_state, "off");

    // A BMC that refuses the password: an `auth` power error after repeated failed reads, status kept.
    let other = sim.machines[1].hostname.clone();
    let om = by_hostname(&c, &other).await;
    let before = om.status;
    sim_faults(
        &sim.control_url,
        &other,
        serde_json::json!({"wrong_password": true}),
    )
    .await;
    let t0 = Instant::now();
    let m = wait_machine(
        &c,
        &om.system_id,
        Duration::from_secs(15),
        "auth power error",
        |m| m.power_error.starts_with("auth"),
    )
    .await;
    eprintln!(
        "FIGURE wrong password -> power error in the API: {} ms (3 failed reads, 200 ms interval + backoff)",
        t0.elapsed().as_millis()
    );
    assert_eq!(m.status, before, "a failed read never changes the status");
    sim_faults(&sim.control_url, &other, serde_json::json!({})).await;
    wait_machine(
        &c,
        &om.system_id,
        Duration::from_secs(15),
        "error cleared",
        |m| m.power_error.is_empty(),
    )
    .await;

    // A power action from the API on the third machine, with --wait semantics.
    let third = &sim.machines[2].hostname;
    let tm = by_hostname(&c, third).await;
    let cmd = power(&c, &tm.system_id, "on", 30).await.unwrap();
    assert_eq!(
        (cmd.state.as_str(), cmd.power_state.as_str()),
        ("done", "on"),
        "{cmd:?}"
    );
    assert_eq!(get(&c, &tm.system_id).await.unwrap().power_state, "on");
    // Bad power parameters are refused at the API, naming the field.
    let e = c
        .machines()
        .update_machine(UpdateMachineRequest {
            system_id: tm.system_id.clone(),
            power: Some(ingot_proto::v1::PowerParameters {
                driver: "redfish".into(),
                params: [("adress".to_string(), "x".to_string())].into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("power.params"), "{}", e.message());

    // The same simulated machine through its IPMI BMC: switch the driver, commission over RMCP+.
    let port = sim.machines[2].ipmi_port.expect("ingot-sim serves IPMI");
    c.machines()
        .update_machine(UpdateMachineRequest {
            system_id: tm.system_id.clone(),
            power: Some(ingot_proto::v1::PowerParameters {
                driver: "ipmi".into(),
                params: [
                    ("address", "127.0.0.1".to_string()),
                    ("port", port.to_string()),
                    ("username", sim.machines[2].username.clone()),
                    ("password", sim.machines[2].password.clone()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let cmd = power(&c, &tm.system_id, "off", 30).await.unwrap();
    assert_eq!(
        (cmd.state.as_str(), cmd.power_state.as_str()),
        ("done", "off"),
        "{cmd:?}"
    );
    let t0 = Instant::now();
    c.machines()
        .commission(ingot_proto::v1::CommissionRequest {
            machine: Some(by_id(&tm.system_id)),
            ..Default::default()
        })
        .await
        .unwrap();
    let m = wait_machine(
        &c,
        &tm.system_id,
        Duration::from_secs(30),
        "Ready after commissioning over IPMI",
        |m| m.status == MachineStatus::Ready as i32,
    )
    .await;
    eprintln!(
        "FIGURE commission -> Ready through rack + simulated IPMI BMC + agent: {} ms",
        t0.elapsed().as_millis()
    );
    assert!(m.inventory.is_some());
    assert!(matches!(
        tc.cluster.stop_sims().await,
        ingot_launch::StopOutcome::Terminated
    ));
}

/// Starts ipmi_sim, or returns `None` after printing why (outside CI; in CI a missing peer fails).
async fn ipmi_sim() -> Option<ingot_rack::peers::ipmi_sim::IpmiSim> {
    use ingot_rack::peers::ipmi_sim::IpmiSim;
    match IpmiSim::start(Default::default()).await {
        Ok(s) => Some(s),
        Err(e) if e.is_missing() && std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: {e}");
            None
        }
        Err(e) => panic!("ipmi_sim: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipmi_sim_through_the_whole_stack() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(bmc) = ipmi_sim().await else { return };
    let tc = TestCluster::start_with("power-ipmi", 1, &[], &["--poll-interval-ms=300"])
        .await
        .unwrap();
    let _logs = RackLogsOnPanic(&tc.cluster);
    tc.cluster.add_rack("ra", "za").await.unwrap();
    let c = tc.clients();
    wait_racks_connected(&c, &["ra"], Duration::from_secs(10))
        .await
        .unwrap();
    let params = |password: &str| {
        let mut p = bmc.driver_params("native");
        p.insert("password".into(), password.into());
        ingot_proto::v1::PowerParameters {
            driver: "ipmi".into(),
            params: p,
        }
    };
    let mk = |i: u32, power| {
        let c = c.clone();
        async move {
            c.machines()
                .create_machine(ingot_proto::v1::CreateMachineRequest {
                    zone: "za".into(),
                    power: Some(power),
                    ..ingot_tests::machine(18, i)
                })
                .await
                .unwrap()
                .into_inner()
                .system_id
        }
    };
    let id = mk(1, params(bmc.password())).await;
    let bad = mk(2, params("wrong-password")).await;

    // API power on -> region -> rack -> ipmi_sim: the BMC is on, and the API says so.
    let t0 = Instant::now();
    let cmd = power(&c, &id, "on", 30).await.unwrap();
    eprintln!(
        "FIGURE API power on -> ipmi_sim -> result recorded: {} ms",
        t0.elapsed().as_millis()
    );
    assert_eq!(
        (cmd.state.as_str(), cmd.power_state.as_str()),
        ("done", "on"),
        "{cmd:?}"
    );
    assert!(bmc.power_file_state(), "ipmi_sim did not power on");
    assert_eq!(get(&c, &id).await.unwrap().power_state, "on");
    let cmd = power(&c, &id, "query", 30).await.unwrap();
    assert_eq!(cmd.power_state, "on");
    let cmd = power(&c, &id, "off", 30).await.unwrap();
    assert_eq!(
        (cmd.state.as_str(), cmd.power_state.as_str()),
        ("done", "off")
    );
    assert!(!bmc.power_file_state());

    // The BMC changes behind Ingot's back: the monitor notices.
    bmc.set_power_file(true).unwrap();
    wait_machine(&c, &id, Duration::from_secs(10), "monitor sees on", |m| {
        m.power_state == "on"
    })
    .await;
    bmc.set_power_file(false).unwrap();
    wait_machine(&c, &id, Duration::from_secs(10), "monitor sees off", |m| {
        m.power_state == "off"
    })
    .await;

    // A wrong password: an auth failure in the command and in the machine's events.
    let cmd = power(&c, &bad, "on", 30).await.unwrap();
    assert_eq!(
        (cmd.state.as_str(), cmd.error_kind.as_str()),
        ("failed", "auth"),
        "{cmd:?}"
    );
    let events = ingot_tests::all_events(
        &c,
        ingot_proto::v1::ListEventsRequest {
            system_id: bad.clone(),
            ..Default::default()
        },
        100,
        10,
    )
    .await
    .unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "power.on.result" && e.message.contains("(auth)")),
        "{events:?}"
    );

    // Commissioning drives the real BMC: next boot from the network, then power on.
    c.machines()
        .commission(ingot_proto::v1::CommissionRequest {
            machine: Some(by_id(&id)),
            ..Default::default()
        })
        .await
        .unwrap();
    let t0 = Instant::now();
    while !(bmc.power_file_state() && bmc.boot_device().as_deref() == Some("pxe")) {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "commissioning did not reach the BMC: {:?}",
            bmc.control_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = bmc.control_log();
    let pxe = log.iter().position(|l| l == "boot=pxe").unwrap();
    let on = log.iter().rposition(|l| l == "power=1").unwrap();
    assert!(pxe < on, "boot device set before the power on: {log:?}");
    let m = get(&c, &id).await.unwrap();
    assert_eq!(m.status(), MachineStatus::Commissioning);
}
