//! The simulated BMCs' Redfish surface, fault knobs and the control API, over real HTTP.

use crate::common::*;
use ingot_sim::{ControlClient, Faults, SimMachineInfo};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_root_needs_no_auth_and_links_the_resources() {
    let f = fleet(2, 0).await;
    let m = &f.machines()[0];
    let c = http();
    for path in ["/redfish/v1", "/redfish/v1/"] {
        let r = c.get(format!("{}{path}", m.bmc_url)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["OData-Version"], "4.0");
        let v: Value = r.json().await.unwrap();
        assert!(v["RedfishVersion"].as_str().unwrap().starts_with("1."));
        assert_eq!(v["Systems"]["@odata.id"], "/redfish/v1/Systems");
        assert_eq!(v["Managers"]["@odata.id"], "/redfish/v1/Managers");
        assert_eq!(
            v["SessionService"]["@odata.id"],
            "/redfish/v1/SessionService"
        );
        assert_eq!(
            v["Links"]["Sessions"]["@odata.id"],
            "/redfish/v1/SessionService/Sessions"
        );
    }
    let v: Value = c
        .get(format!("{}/redfish", m.bmc_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["v1"], "/redfish/v1/");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systems_need_credentials() {
    let f = fleet(2, 0).await;
    let m = &f.machines()[1];
    let c = http();
    let url = format!("{}/redfish/v1/Systems", m.bmc_url);

    let (s, v) = get(&c, m, &url).await;
    assert_eq!(s, 200);
    assert_eq!(v["Members@odata.count"], 1);
    let member = v["Members"][0]["@odata.id"].as_str().unwrap();
    assert_eq!(member, format!("/redfish/v1/Systems/{}", m.system_id));

    let (s, sys) = get(&c, m, &format!("{}{member}", m.bmc_url)).await;
    assert_eq!(s, 200);
    assert_eq!(sys["Id"], m.system_id);
    assert_eq!(sys["UUID"], m.uuid);
    assert_eq!(sys["Name"], m.hostname);
    assert_eq!(sys["PowerState"], "Off");
    assert_eq!(sys["ProcessorSummary"]["Count"], m.inventory.cpu_count);
    assert_eq!(
        sys["MemorySummary"]["TotalSystemMemoryGiB"]
            .as_f64()
            .unwrap(),
        m.inventory.memory_mib as f64 / 1024.0
    );
    let targets = &sys["Boot"]["BootSourceOverrideTarget@Redfish.AllowableValues"];
    assert_eq!(targets, &json!(["None", "Pxe", "Hdd"]));
    let reset = &sys["Actions"]["#ComputerSystem.Reset"];
    assert_eq!(
        reset["target"],
        format!("{member}/Actions/ComputerSystem.Reset")
    );
    assert_eq!(
        reset["ResetType@Redfish.AllowableValues"],
        json!([
            "On",
            "ForceOff",
            "GracefulShutdown",
            "ForceRestart",
            "GracefulRestart",
            "PowerCycle",
            "Nmi"
        ])
    );

    // No credentials, wrong password, wrong user: 401 with a Redfish error body.
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let v: Value = r.json().await.unwrap();
    assert!(message_id(&v).ends_with("NoValidSession"), "{v}");
    for (u, p) in [("admin", "nope"), ("root", PASSWORD)] {
        let r = c.get(&url).basic_auth(u, Some(p)).send().await.unwrap();
        assert_eq!(r.status(), 401);
    }
    let r = c
        .get(&url)
        .header("X-Auth-Token", "not-a-session")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Managers.
    let (s, v) = get(&c, m, &format!("{}/redfish/v1/Managers", m.bmc_url)).await;
    assert_eq!(s, 200);
    let mgr = v["Members"][0]["@odata.id"].as_str().unwrap().to_string();
    let (s, v) = get(&c, m, &format!("{}{mgr}", m.bmc_url)).await;
    assert_eq!(s, 200);
    assert_eq!(v["ManagerType"], "BMC");
    assert_eq!(v["Links"]["ManagerForServers"][0]["@odata.id"], member);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_are_404_and_wrong_methods_405() {
    let f = fleet(1, 0).await;
    let m = &f.machines()[0];
    let c = http();
    let (s, v) = get(&c, m, &format!("{}/redfish/v1/Chassis/nope", m.bmc_url)).await;
    assert_eq!(s, 404);
    assert!(message_id(&v).ends_with("ResourceNotFound"), "{v}");
    let (s, _) = get(&c, m, &format!("{}/redfish/v1/Systems/other-id", m.bmc_url)).await;
    assert_eq!(s, 404);
    let (s, _) = get(&c, m, &format!("{}/nothing", m.bmc_url)).await;
    assert_eq!(s, 404);
    let r = c
        .delete(system_url(m))
        .basic_auth(&m.username, Some(&m.password))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, PATCH");
    let (s, _) = post(&c, m, &format!("{}/redfish/v1", m.bmc_url), json!({})).await;
    assert_eq!(s, 405);
    let r = c
        .get(reset_url(m))
        .basic_auth(&m.username, Some(&m.password))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_log_in_authenticate_and_log_out() {
    let f = fleet(1, 0).await;
    let m = &f.machines()[0];
    let c = http();
    let sessions = format!("{}/redfish/v1/SessionService/Sessions", m.bmc_url);
    let r = c
        .post(&sessions)
        .json(&json!({"UserName": m.username, "Password": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(&sessions)
        .json(&json!({"UserName": m.username}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let r = c
        .post(&sessions)
        .json(&json!({"UserName": m.username, "Password": m.password}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let token = r.headers()["x-auth-token"].to_str().unwrap().to_string();
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with("/redfish/v1/SessionService/Sessions/"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["UserName"], m.username);

    let with_token = |url: String| c.get(url).header("X-Auth-Token", &token).send();
    let r = with_token(system_url(m)).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = with_token(sessions.clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["Members"][0]["@odata.id"], location);
    let v: Value = with_token(format!("{}/redfish/v1/SessionService", m.bmc_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["ServiceEnabled"], true);

    let r = c
        .delete(format!("{}{location}", m.bmc_url))
        .header("X-Auth-Token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = with_token(system_url(m)).await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_change_power_after_the_delay() {
    let f = fleet(2, 500).await;
    let m = &f.machines()[0];
    let c = http();
    let (s, _) = post(&c, m, &reset_url(m), json!({"ResetType": "On"})).await;
    assert_eq!(s, 204);
    assert_eq!(power_state(&c, m).await, "Off", "a real BMC lags");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(power_state(&c, m).await, "On");
    let (s, _) = post(&c, m, &reset_url(m), json!({"ResetType": "ForceOff"})).await;
    assert_eq!(s, 204);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(power_state(&c, m).await, "Off");
    // The other machine was not touched.
    assert_eq!(power_state(&c, &f.machines()[1]).await, "Off");
    let view = f.machine(&m.hostname).unwrap().view();
    assert_eq!(view.counters.resets, 2);
    assert_eq!(view.counters.boots, 1);

    // Without a delay the change is visible at once.
    let f = fleet(1, 0).await;
    let m = &f.machines()[0];
    post(&c, m, &reset_url(m), json!({"ResetType": "PowerCycle"})).await;
    assert_eq!(power_state(&c, m).await, "On");
    post(
        &c,
        m,
        &reset_url(m),
        json!({"ResetType": "GracefulShutdown"}),
    )
    .await;
    assert_eq!(power_state(&c, m).await, "Off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reset_requests_are_400() {
    let f = fleet(1, 0).await;
    let m = &f.machines()[0];
    let c = http();
    let (s, v) = post(&c, m, &reset_url(m), json!({"ResetType": "Explode"})).await;
    assert_eq!(s, 400);
    assert!(
        message_id(&v).ends_with("ActionParameterValueNotInList"),
        "{v}"
    );
    let (s, v) = post(&c, m, &reset_url(m), json!({})).await;
    assert_eq!(s, 400);
    assert!(message_id(&v).ends_with("ActionParameterMissing"), "{v}");
    let r = c
        .post(reset_url(m))
        .basic_auth(&m.username, Some(&m.password))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(power_state(&c, m).await, "Off");
    assert_eq!(f.machine(&m.hostname).unwrap().view().counters.resets, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_override_is_patched_and_consumed_once() {
    let f = fleet(1, 0).await;
    let m = &f.machines()[0];
    let c = http();
    let body =
        json!({"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}});
    let (s, _) = patch(&c, m, &system_url(m), body).await;
    assert_eq!(s, 204);
    let (_, v) = get(&c, m, &system_url(m)).await;
    assert_eq!(v["Boot"]["BootSourceOverrideTarget"], "Pxe");
    assert_eq!(v["Boot"]["BootSourceOverrideEnabled"], "Once");

    for bad in [
        json!({"Boot": {"BootSourceOverrideTarget": "Floppy"}}),
        json!({"Boot": {"BootSourceOverrideEnabled": "Sometimes"}}),
        json!({"Boot": {"BootOrder": []}}),
        json!({"PowerState": "On"}),
        json!({"Boot": "Pxe"}),
    ] {
        let (s, v) = patch(&c, m, &system_url(m), bad.clone()).await;
        assert_eq!(s, 400, "{bad} -> {v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    }
    // Nothing changed by the refused requests.
    let (_, v) = get(&c, m, &system_url(m)).await;
    assert_eq!(v["Boot"]["BootSourceOverrideTarget"], "Pxe");

    post(&c, m, &reset_url(m), json!({"ResetType": "On"})).await;
    let (_, v) = get(&c, m, &system_url(m)).await;
    assert_eq!(v["PowerState"], "On");
    assert_eq!(v["Boot"]["BootSourceOverrideEnabled"], "Disabled");
    let view = f.machine(&m.hostname).unwrap().view();
    assert_eq!(view.boot.last_boot_device, Some(ingot_sim::BootTarget::Pxe));
    post(&c, m, &reset_url(m), json!({"ResetType": "ForceRestart"})).await;
    let view = f.machine(&m.hostname).unwrap().view();
    assert_eq!(view.boot.last_boot_device, Some(ingot_sim::BootTarget::Hdd));
    assert_eq!((view.counters.boots, view.counters.pxe_boots), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_fault_rejects_every_credential() {
    let f = fleet(1, 0).await;
    let m = &f.machines()[0];
    let c = http();
    let sessions = format!("{}/redfish/v1/SessionService/Sessions", m.bmc_url);
    let r = c
        .post(&sessions)
        .json(&json!({"UserName": m.username, "Password": m.password}))
        .send()
        .await
        .unwrap();
    let token = r.headers()["x-auth-token"].to_str().unwrap().to_string();
    let ctl = ControlClient::new(f.control_url()).unwrap();
    ctl.set_faults(
        &m.hostname,
        &Faults {
            wrong_password: true,
            ..Faults::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(get(&c, m, &system_url(m)).await.0, 401);
    let r = c
        .get(system_url(m))
        .header("X-Auth-Token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(&sessions)
        .json(&json!({"UserName": m.username, "Password": m.password}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The service root still answers.
    let r = c
        .get(format!("{}/redfish/v1", m.bmc_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    ctl.set_faults(&m.hostname, &Faults::default())
        .await
        .unwrap();
    assert_eq!(get(&c, m, &system_url(m)).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresponsive_bmc_hangs_without_blocking_the_others() {
    let f = fleet(2, 0).await;
    let (m, other) = (&f.machines()[0], &f.machines()[1]);
    let ctl = ControlClient::new(f.control_url()).unwrap();
    ctl.set_faults(
        &m.hostname,
        &Faults {
            unresponsive: true,
            ..Faults::default()
        },
    )
    .await
    .unwrap();
    let c = http();
    let start = Instant::now();
    let hang = c
        .get(system_url(m))
        .basic_auth(&m.username, Some(&m.password))
        .timeout(Duration::from_millis(400))
        .send();
    let other_url = system_url(other);
    let (hung, (s, _)) = tokio::join!(hang, get(&c, other, &other_url));
    let e = hung.unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(s, 200, "the other BMC answers meanwhile");

    // A request in flight is answered once the fault clears.
    let waiting = tokio::spawn({
        let (c, m) = (c.clone(), m.clone());
        async move { get(&c, &m, &system_url(&m)).await.0 }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished());
    ctl.set_faults(&m.hostname, &Faults::default())
        .await
        .unwrap();
    let s = tokio::time::timeout(Duration::from_secs(2), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_flapping_and_failing_power_faults() {
    let f = fleet(1, 0).await;
    let m = &f.machines()[0];
    let c = http();
    let ctl = ControlClient::new(f.control_url()).unwrap();

    ctl.set_faults(
        &m.hostname,
        &Faults {
            slow_ms: 300,
            ..Faults::default()
        },
    )
    .await
    .unwrap();
    let start = Instant::now();
    assert_eq!(get(&c, m, &system_url(m)).await.0, 200);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );

    ctl.set_faults(
        &m.hostname,
        &Faults {
            flapping: true,
            ..Faults::default()
        },
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (s, v) = get(&c, m, &system_url(m)).await;
        seen.push((s, v["PowerState"].as_str().unwrap_or("-").to_string()));
    }
    // The machine is off: reads alternate between 500 and a wrong "On".
    assert_eq!(
        seen,
        [
            (500, "-".into()),
            (200, "On".into()),
            (500, "-".into()),
            (200, "On".into())
        ]
    );

    ctl.set_faults(
        &m.hostname,
        &Faults {
            fail_power: true,
            ..Faults::default()
        },
    )
    .await
    .unwrap();
    let (s, v) = post(&c, m, &reset_url(m), json!({"ResetType": "On"})).await;
    assert_eq!(s, 500, "{v}");
    assert_eq!(power_state(&c, m).await, "Off");

    ctl.set_faults(&m.hostname, &Faults::default())
        .await
        .unwrap();
    let (s, _) = post(&c, m, &reset_url(m), json!({"ResetType": "On"})).await;
    assert_eq!(s, 204);
    for _ in 0..3 {
        assert_eq!(power_state(&c, m).await, "On");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_api_round_trip() {
    let f = fleet(3, 0).await;
    let dir = tempfile::tempdir().unwrap();
    f.write_state(dir.path()).unwrap();
    let infos: Vec<SimMachineInfo> =
        serde_json::from_slice(&std::fs::read(dir.path().join("machines.json")).unwrap()).unwrap();
    assert_eq!(infos, f.machines());
    assert_eq!(
        infos
            .iter()
            .map(|m| m.hostname.as_str())
            .collect::<Vec<_>>(),
        ["sim-01", "sim-02", "sim-03"]
    );
    assert_eq!(
        infos.iter().map(|m| m.zone.as_str()).collect::<Vec<_>>(),
        ["zone-1", "zone-2", "zone-1"]
    );
    assert!(infos
        .iter()
        .all(|m| m.system_id == m.uuid && m.inventory.nics[0].mac == m.mac));

    let ctl = ControlClient::from_dir(dir.path()).unwrap();
    let all = ctl.list().await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].info, infos[0]);

    let v = ctl.power("sim-02", true).await.unwrap();
    assert_eq!(v.power, ingot_sim::PowerState::On);
    let c = http();
    assert_eq!(power_state(&c, &infos[1]).await, "On");
    let v = ctl.get("sim-02").await.unwrap();
    assert_eq!(v.counters.queries, 1);
    assert_eq!(v.counters.boots, 1);
    let v = ctl.power("sim-02", false).await.unwrap();
    assert_eq!(v.power, ingot_sim::PowerState::Off);

    let faults = Faults {
        slow_ms: 5,
        flapping: true,
        ..Faults::default()
    };
    let v = ctl.set_faults("sim-03", &faults).await.unwrap();
    assert_eq!(v.faults, faults);
    assert_eq!(ctl.get("sim-03").await.unwrap().faults, faults);

    let e = ctl.get("sim-99").await.unwrap_err().to_string();
    assert!(e.contains("404") && e.contains("sim-99"), "{e}");
    let r = c
        .put(format!("{}/machines/sim-01/faults", f.control_url()))
        .body(r#"{"flaping": true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(format!("{}/machines/sim-01/power", f.control_url()))
        .body(r#"{"power": "sideways"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_the_listeners() {
    let f = fleet(2, 0).await;
    let m = f.machines()[0].clone();
    let c = http();
    assert_eq!(get(&c, &m, &system_url(&m)).await.0, 200);
    f.shutdown().await;
    let r = http().get(system_url(&m)).send().await;
    assert!(r.is_err(), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_bmcs_start_fast_and_all_answer() {
    let start = Instant::now();
    let f = fleet(1000, 0).await;
    let started = start.elapsed();
    assert_eq!(f.machines().len(), 1000);
    assert_eq!(f.machines()[999].hostname, "sim-1000");
    let ports: std::collections::HashSet<_> =
        f.machines().iter().map(|m| m.bmc_url.clone()).collect();
    assert_eq!(ports.len(), 1000);
    let macs: std::collections::HashSet<_> = f.machines().iter().map(|m| m.mac.clone()).collect();
    assert_eq!(macs.len(), 1000);
    assert!(started < Duration::from_secs(5), "start took {started:?}");

    // One GET per BMC, 64 at a time.
    let c = http();
    let start = Instant::now();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for m in f.machines().iter().cloned() {
        let (c, sem) = (c.clone(), sem.clone());
        tasks.spawn(async move {
            let _permit = sem.acquire().await.unwrap();
            let (s, v) = get(&c, &m, &system_url(&m)).await;
            assert_eq!(s, 200);
            assert_eq!(v["Name"], m.hostname);
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let polled = start.elapsed();
    assert!(polled < Duration::from_secs(20), "polling took {polled:?}");

    // Latency of one GET on a warm connection.
    let m = &f.machines()[500];
    let mut lat = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        assert_eq!(get(&c, m, &system_url(m)).await.0, 200);
        lat.push(t.elapsed());
    }
    lat.sort();
    eprintln!(
        "1,000 BMCs: started in {started:?}, one GET each in {polled:?}; warm GET p50 {:?}, max {:?}",
        lat[25], lat[49]
    );
}
