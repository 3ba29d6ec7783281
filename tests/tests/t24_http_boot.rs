//! HTTP boot through the whole stack: one region, one `ingot-rack` serving the loopback interface as its
//! boot interface (free DHCP, ProxyDHCP and HTTP ports), machines known by MAC in several statuses. curl
//! fetches each machine's iPXE script from the rack — the rack asks the region over its session and renders
//! the answer — and the purpose follows the status: New → enlist, Commissioning → commission, Deploying →
//! deploy (naming the missing disk image `debian/bookworm`), Deployed → local disk, Ready → power off, an
//! unknown MAC → enlist, and by system id. No image is uploaded here, so ramdisk purposes carry the problem
//! naming what to upload (the scripts echo it and ask again later). The boot events of those fetches
//! reach the region and show in `ingot events list --machine` (and, for the unknown MAC, without a machine).
//!
//! Needs curl; under CI a missing one fails the test, elsewhere the test is skipped with the reason.

use ingot_launch::RackBoot;
use ingot_proto::v1::{
    AllocateRequest, CommissionRequest, Constraints, DeployRequest, MachineStatus,
};
use ingot_tests::ingot;
use ingot_tests::{
    agent_result, boot_token, by_id, machine, ready_machine, small_inventory, wait_racks_connected,
    RackLogsOnPanic, TestCluster,
};
use std::process::Command;
use std::time::{Duration, Instant};

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn curl_present() -> bool {
    if Command::new("curl").arg("--version").output().is_ok() {
        return true;
    }
    let msg = "curl is not installed: install it with scripts/install-test-peers.sh";
    if std::env::var_os("CI").is_some() || std::env::var_os("INGOT_REQUIRE_PEERS").is_some() {
        panic!("{msg}");
    }
    eprintln!("skipping t24: {msg}");
    false
}

/// GETs `url` with curl: (status, body).
fn curl(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}", url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The script for `path` once the rack has a session (a script that says "no region session" is
/// retried for up to 10 s).
fn script(base: &str, path: &str) -> String {
    let t0 = Instant::now();
    loop {
        let (code, body) = curl(&format!("{base}{path}"));
        assert_eq!(code, 200, "{path}: {body}");
        if !body.contains("no region session") || t0.elapsed() > Duration::from_secs(10) {
            return body;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The purpose named in a script's header comment (`# Ingot boot script for X: <purpose>`).
fn purpose(script: &str) -> &str {
    script
        .lines()
        .find_map(|l| l.strip_prefix("# Ingot boot script for "))
        .and_then(|l| l.rsplit_once(": "))
        .map(|(_, p)| p)
        .unwrap_or_else(|| panic!("no header in\n{script}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn t24_scripts_follow_the_machine_status_and_report_boot_events() {
    if !curl_present() {
        return;
    }
    let tc = TestCluster::start("t24-http-boot", 1, &[]).await.unwrap();
    let _logs = RackLogsOnPanic(&tc.cluster);
    let http_port = free_tcp_port();
    #[allow(clippy::needless_update)] // RackBoot grows with the boot path (TFTP's flags)
    let boot = RackBoot {
        interfaces: vec!["lo".into()],
        dhcp_port: Some(free_udp_port()),
        proxy_dhcp_port: Some(free_udp_port()),
        http_port: Some(http_port),
        ..RackBoot::default()
    };
    tc.cluster
        .add_boot_rack("r1", "default", boot)
        .await
        .unwrap();
    let c = tc.clients();
    wait_racks_connected(&c, &["r1"], Duration::from_secs(10))
        .await
        .unwrap();
    let base = format!("http://127.0.0.1:{http_port}");

    // Machines in the statuses under test (manual power: no BMC needed).
    let new = c
        .machines()
        .create_machine(machine(24, 1))
        .await
        .unwrap()
        .into_inner();
    let comm = c
        .machines()
        .create_machine(machine(24, 2))
        .await
        .unwrap()
        .into_inner();
    c.machines()
        .commission(CommissionRequest {
            machine: Some(by_id(&comm.system_id)),
            ..Default::default()
        })
        .await
        .unwrap();
    let ready = ready_machine(&c, 24, 3, small_inventory()).await.unwrap();
    let mut deployed = Vec::new();
    for i in [4, 5] {
        let m = ready_machine(&c, 24, i, small_inventory()).await.unwrap();
        let got = c
            .machines()
            .allocate(AllocateRequest {
                request_id: format!("t24-{i}"),
                consumer: format!("t24-{i}"),
                constraints: Some(Constraints {
                    system_id: m.system_id.clone(),
                    ..Default::default()
                }),
                count: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.machines.len(), 1);
        let d = c
            .machines()
            .deploy(DeployRequest {
                machine: Some(by_id(&m.system_id)),
                osystem: "debian".into(),
                distro_series: "bookworm".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(d.status(), MachineStatus::Deploying);
        deployed.push(m);
    }
    // Machine 5 finishes its deployment.
    let t = boot_token(&c, &deployed[1].system_id, "deploying")
        .await
        .unwrap();
    let r = agent_result(&c, &deployed[1].system_id, &t, true, "")
        .await
        .unwrap();
    assert_eq!(r.status(), MachineStatus::Deployed);
    let mac = |m: &ingot_proto::v1::Machine| m.macs[0].clone();

    let s = script(&base, &format!("/boot/{}.ipxe", mac(&new)));
    assert_eq!(purpose(&s), "enlist", "{s}");
    let s = script(&base, &format!("/boot/{}.ipxe", mac(&comm)));
    assert_eq!(purpose(&s), "commission", "{s}");
    assert!(s.contains("no ramdisk image for arch amd64"), "{s}");
    assert!(s.contains("ingot images upload"), "{s}");
    assert!(!s.contains("\nkernel "), "{s}");
    let s = script(&base, &format!("/boot/{}.ipxe", mac(&deployed[0])));
    assert_eq!(purpose(&s), "deploy", "{s}");
    assert!(s.contains("no disk image debian/bookworm to deploy"), "{s}");
    let s = script(&base, &format!("/boot/{}.ipxe", mac(&deployed[1])));
    assert_eq!(purpose(&s), "local-disk", "{s}");
    assert!(
        s.contains("\nsanboot --no-describe --drive 0x80 || exit\n"),
        "{s}"
    );
    let s = script(&base, &format!("/boot/{}.ipxe", mac(&ready)));
    assert_eq!(purpose(&s), "power-off", "{s}");
    assert!(s.contains("\npoweroff || goto idle\n"), "{s}");
    let unknown = "52:54:00:24:24:24";
    let s = script(&base, &format!("/boot/{unknown}.ipxe"));
    assert_eq!(purpose(&s), "enlist", "{s}");
    let s = script(&base, &format!("/boot/by-id/{}.ipxe", comm.system_id));
    assert_eq!(purpose(&s), "commission", "{s}");
    assert!(
        s.contains("ingot.mac=${netX/mac}") || s.contains("no ramdisk"),
        "{s}"
    );
    let (code, _) = curl(&format!("{base}/blobs/{}", "0".repeat(64)));
    assert_eq!(code, 404);

    // The script fetches are events of their machines (and of the unknown MAC) within a few seconds.
    let t0 = Instant::now();
    loop {
        let text = ingot(
            &tc,
            &[
                "--json",
                "events",
                "list",
                "--machine",
                &comm.system_id,
                "--kind",
                "boot.script",
            ],
        );
        let unknown_text = ingot(&tc, &["--json", "events", "list", "--kind", "boot.script"]);
        let ok = text.contains("purpose commission: no ramdisk image")
            && text.contains("rack r1")
            && unknown_text.contains(&format!("unknown mac {unknown}"));
        if ok {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "boot events not recorded:\n{text}\n{unknown_text}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The rack announced its HTTP service.
    let racks = ingot(&tc, &["--json", "racks", "list"]);
    assert!(racks.contains("http"), "{racks}");
}
