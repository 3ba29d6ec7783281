//! The in-band agent's whole path without a VM (issue 13): the real `ingot-agent` binary runs as an ordinary
//! process in a namespace the test made, against a fake machine (`INGOT_AGENT_ROOT`: a /proc and /sys tree
//! and a plain file as its disk), talking only to a real `ingot-rack` over HTTPS (the CA pinned by the
//! fingerprint on the kernel command line), which relays to a real region over its session. The kernel
//! command line is the one the rack's iPXE script for the MAC carries, fetched with curl from the namespace
//! the way iPXE would, and the MAC holds a lease from the rack (busybox udhcpc), as the boot proof demands.
//!
//! Shown: commission → inventory → Ready; a second claimant of a boot is refused with an event; deploy writes
//! and verifies the image and a NoCloud seed → Deployed; release with quick erase → the disk's first MiB is
//! zero → Ready; every step is in the machine's events.

use ingot_agent::rack::Rack;
use ingot_launch::RackBoot;
use ingot_proto::rack::v1::{agent_call, AgentCall, AgentLookup};
use ingot_proto::v1::MachineStatus;
use ingot_tests::netns::{self, End, Lab, Netns};
use ingot_tests::{get, ingot, wait_status, RackLogsOnPanic, TestCluster};
use std::path::Path;
use std::time::Duration;

/// The fake machine's disk size.
const DISK: u64 = 64 << 20;

/// Writes `text` at `path` under `root`.
fn put(root: &Path, path: &str, text: &str) {
    let p = root.join(path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// A small machine under `root`: 2 CPUs, 2 GiB, NIC eth0 with `mac`, virtio disk vda of [`DISK`] bytes
/// (the file `root/dev/vda`).
fn fake_machine(root: &Path, mac: &str) {
    put(
        root,
        "proc/cpuinfo",
        "processor\t: 0\nmodel name\t: Ingot Test CPU\nphysical id\t: 0\ncore id\t: 0\n\n\
         processor\t: 1\nmodel name\t: Ingot Test CPU\nphysical id\t: 0\ncore id\t: 1\n\n",
    );
    put(
        root,
        "proc/meminfo",
        "MemTotal:        2097152 kB\nMemFree:   1048576 kB\nMemAvailable:   65536 kB\n",
    );
    put(root, "sys/class/dmi/id/sys_vendor", "Ingot\n");
    put(root, "sys/class/dmi/id/product_name", "t29 fake machine\n");
    let dev = "sys/devices/pci0000:00/0000:00:04.0/virtio1/block/vda";
    put(root, &format!("{dev}/size"), &format!("{}\n", DISK / 512));
    put(root, &format!("{dev}/queue/rotational"), "0\n");
    put(root, &format!("{dev}/serial"), "T29DISK\n");
    std::fs::create_dir_all(root.join("sys/block")).unwrap();
    std::os::unix::fs::symlink(format!("../{}", &dev[4..]), root.join("sys/block/vda")).unwrap();
    std::fs::create_dir_all(root.join("dev")).unwrap();
    std::fs::File::create(root.join("dev/vda"))
        .unwrap()
        .set_len(DISK)
        .unwrap();
    let nic = "sys/devices/pci0000:00/0000:00:03.0/virtio0/net/eth0";
    put(root, &format!("{nic}/address"), &format!("{mac}\n"));
    put(root, &format!("{nic}/carrier"), "1\n");
    put(root, &format!("{nic}/operstate"), "up\n");
    put(root, &format!("{nic}/speed"), "1000\n");
    std::fs::create_dir_all(root.join("sys/bus/virtio/drivers/virtio_net")).unwrap();
    std::fs::create_dir_all(root.join(format!("{nic}/device"))).unwrap();
    std::os::unix::fs::symlink(
        root.join("sys/bus/virtio/drivers/virtio_net"),
        root.join(format!("{nic}/device/driver")),
    )
    .unwrap();
    std::fs::create_dir_all(root.join("sys/class/net")).unwrap();
    std::os::unix::fs::symlink(root.join(nic), root.join("sys/class/net/eth0")).unwrap();
}

/// A raw disk image of 4 MiB: an MBR with one Linux partition (1-3 MiB) full of a recognisable pattern.
fn disk_image(path: &Path) -> Vec<u8> {
    let mut img = vec![0u8; 4 << 20];
    for (i, b) in img.iter_mut().enumerate().skip(1 << 20).take(2 << 20) {
        *b = (i % 251) as u8;
    }
    let e = 446;
    img[e + 4] = 0x83;
    img[e + 8..e + 12].copy_from_slice(&2048u32.to_le_bytes());
    img[e + 12..e + 16].copy_from_slice(&4096u32.to_le_bytes());
    img[510] = 0x55;
    img[511] = 0xaa;
    std::fs::write(path, &img).unwrap();
    img
}

/// The kernel command line of the rack's script for `mac`, fetched from inside `ns` like iPXE does.
fn script_cmdline(ns: &Netns, base: &str, mac: &str, want_purpose: &str) -> String {
    let url = format!("{base}/boot/{mac}.ipxe");
    let mut last = String::new();
    for _ in 0..100 {
        let out = ns
            .exec_timeout(
                "curl",
                &["-sS", "--max-time", "5", &url],
                Duration::from_secs(10),
            )
            .unwrap();
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Some(line) = last.lines().find(|l| l.starts_with("kernel ")) {
            if line.contains(&format!("ingot.purpose={want_purpose} ")) {
                // `kernel <url> <args...> || goto idle`
                let args = line.split(" || ").next().unwrap();
                return args.splitn(3, ' ').nth(2).unwrap().to_string();
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("no {want_purpose} script for {mac} from {url}; last:\n{last}");
}

/// Runs the agent in `ns` against the fake machine `root` whose /proc/cmdline is `cmdline`; its output.
fn run_agent(ns: &Netns, root: &Path, cmdline: &str) -> String {
    put(root, "proc/cmdline", &format!("{cmdline}\n"));
    let agent = ingot_launch::resolve_bin_dir(None)
        .unwrap()
        .join("ingot-agent");
    let out = ns
        .exec_timeout(
            "env",
            &[
                &format!("INGOT_AGENT_ROOT={}", root.display()),
                agent.to_str().unwrap(),
            ],
            Duration::from_secs(120),
        )
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The kinds of `id`'s events, oldest first.
fn event_kinds(tc: &TestCluster, id: &str) -> Vec<String> {
    let text = ingot(
        tc,
        &[
            "--json",
            "events",
            "list",
            "--machine",
            id,
            "--limit",
            "500",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let list = v
        .as_array()
        .cloned()
        .unwrap_or_else(|| v["events"].as_array().cloned().unwrap_or_default());
    list.iter()
        .filter_map(|e| e["kind"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_process_commissions_deploys_and_erases_through_its_rack() {
    let test = "t29 agent process";
    if !netns::ready(test, &["udhcpc", "curl"]) {
        return;
    }
    let tc = TestCluster::start_with("agent-process", 1, &[], &[])
        .await
        .unwrap();
    let _logs = RackLogsOnPanic(&tc.cluster);
    let dir = tc.dir.join("t29");
    std::fs::create_dir_all(&dir).unwrap();

    let lab = Lab::new();
    let ns = lab.netns("m").unwrap();
    let link = lab
        .root_veth("m", Some("10.29.0.1/24"), &ns, End::new("eth0", None))
        .unwrap();
    let mac = format!("52:54:00:{}", &netns::mac_str(&netns::random_mac())[9..]);
    ns.set_mac("eth0", &mac).unwrap();
    let port = |k: u16| {
        20_000 + (u16::from_str_radix(&netns::random_hex(4), 16).unwrap_or(0) % 10_000) * 2 + k
    };
    let (http_port, agent_port) = (port(0), port(1));
    tc.cluster
        .add_boot_rack(
            "r1",
            "z1",
            RackBoot {
                interfaces: vec![link.name.clone()],
                http_port: Some(http_port),
                agent_port: Some(agent_port),
                ..RackBoot::default()
            },
        )
        .await
        .unwrap();
    ingot(
        &tc,
        &[
            "subnets",
            "create",
            "10.29.0.0/24",
            "--gateway",
            "10.29.0.1",
            "--dynamic",
            "10.29.0.100-10.29.0.199",
            "--primary",
            "r1",
        ],
    );
    // A ramdisk (its bytes are never booted here) and the disk image to deploy.
    let (kernel, initrd, image) = (dir.join("kernel"), dir.join("initrd"), dir.join("t29.img"));
    std::fs::write(&kernel, b"not a kernel").unwrap();
    std::fs::write(&initrd, b"not an initrd").unwrap();
    let image_bytes = disk_image(&image);
    ingot(
        &tc,
        &[
            "images",
            "upload",
            "ingot-ramdisk",
            "--kind",
            "ramdisk",
            "--arch",
            "amd64",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
        ],
    );
    ingot(
        &tc,
        &[
            "images",
            "upload",
            "ingot/t29",
            "--kind",
            "disk",
            "--disk-image",
            image.to_str().unwrap(),
        ],
    );
    let created: serde_json::Value = serde_json::from_str(&ingot(
        &tc,
        &[
            "--json",
            "machines",
            "create",
            "--mac",
            &mac,
            "--hostname",
            "t29-m",
            "--zone",
            "z1",
            "--power-driver",
            "manual",
        ],
    ))
    .unwrap();
    let id = created["system_id"]
        .as_str()
        .expect("system_id")
        .to_string();
    let clients = tc.clients();
    get(&clients, &id)
        .await
        .unwrap_or_else(|e| panic!("machine {id:?}: {e}"));

    // The boot proof needs a lease from this rack.
    let script = dir.join("udhcpc.sh");
    std::fs::write(&script, "#!/bin/sh\ncase \"$1\" in bound|renew) ip addr flush dev \"$interface\"; ip addr add \"$ip/24\" dev \"$interface\";; esac\nexit 0\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = ns
        .exec_timeout(
            "udhcpc",
            &[
                "-i",
                "eth0",
                "-f",
                "-q",
                "-n",
                "-t",
                "10",
                "-T",
                "1",
                "-s",
                script.to_str().unwrap(),
            ],
            Duration::from_secs(30),
        )
        .unwrap();
    assert!(out.status.success(), "udhcpc got no lease: {out:?}");

    let base = format!("http://10.29.0.1:{http_port}");
    let root = dir.join("root");
    fake_machine(&root, &mac);

    // Commission.
    ingot(&tc, &["machines", "commission", &id]);
    let cmdline = script_cmdline(&ns, &base, &mac, "commission");
    assert!(
        cmdline.contains(&format!("ingot.agent=https://10.29.0.1:{agent_port}")),
        "{cmdline}"
    );

    // A second claimant: the test claims the boot first (its own claim), then the agent's lookup is refused.
    let args = ingot_agent::cmdline::parse(&cmdline).unwrap();
    let rack = ingot_agent::rack::HttpsRack::new(args.agent.clone(), args.ca_sha256).unwrap();
    let lookup = |claim: &str| AgentCall {
        call: Some(agent_call::Call::Lookup(AgentLookup {
            macs: vec![mac.clone()],
            claim: claim.into(),
            purpose: "commission".into(),
        })),
        ..Default::default()
    };
    let first = rack.call(&lookup("t29-first-claimant-0001")).await.unwrap();
    assert_eq!(first.code, 0, "the first lookup: {}", first.error);
    let log = run_agent(&ns, &root, &cmdline);
    assert!(
        log.contains("second agent") || log.contains("claim"),
        "the agent's lookup of a claimed boot was not refused:\n{log}"
    );
    assert!(event_kinds(&tc, &id)
        .iter()
        .any(|k| k == "boot.claim-refused"));
    // The same claimant again gets a fresh token (a retried lookup).
    let again = rack.call(&lookup("t29-first-claimant-0001")).await.unwrap();
    assert_eq!(again.code, 0, "the same claim again: {}", again.error);

    // A new boot (abort, commission again): the agent commissions the machine.
    ingot(&tc, &["machines", "abort", &id]);
    ingot(&tc, &["machines", "commission", &id]);
    let cmdline = script_cmdline(&ns, &base, &mac, "commission");
    let log = run_agent(&ns, &root, &cmdline);
    let (m, _) = wait_status(&clients, &id, MachineStatus::Ready, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}; agent:\n{log}"));
    let inv = m.inventory.as_ref().expect("inventory");
    assert_eq!(inv.cpu_count, 2, "{inv:?}");
    assert_eq!(inv.memory_mib, 2048, "{inv:?}");
    assert!(inv.disks.iter().any(|d| d.name == "vda"), "{inv:?}");
    assert!(
        inv.nics
            .iter()
            .any(|n| ingot_tests::norm_mac(&n.mac) == ingot_tests::norm_mac(&mac)),
        "{inv:?}"
    );

    // Deploy: the image is written and verified, a NoCloud seed added.
    ingot(&tc, &["machines", "allocate", "--hostname", "t29-m"]);
    ingot(
        &tc,
        &[
            "machines", "deploy", &id, "--os", "ingot", "--series", "t29", "--ssh-key",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKt29t29t29t29t29t29t29t29t29t29t29t29t29t29t2 t29@test",
        ],
    );
    let cmdline = script_cmdline(&ns, &base, &mac, "deploy");
    let log = run_agent(&ns, &root, &cmdline);
    wait_status(
        &clients,
        &id,
        MachineStatus::Deployed,
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; agent:\n{log}"));
    let disk = std::fs::read(root.join("dev/vda")).unwrap();
    assert!(
        disk[446 + 16..446 + 16 + 16] != [0u8; 16],
        "no seed partition in the MBR"
    );
    assert_eq!(
        &disk[1 << 20..3 << 20],
        &image_bytes[1 << 20..3 << 20],
        "the image was not written"
    );
    let seed = String::from_utf8_lossy(&disk[4 << 20..]).into_owned();
    assert!(
        seed.contains("local-hostname: \"t29-m\""),
        "no NoCloud meta-data with the hostname"
    );
    assert!(seed.contains("t29@test"), "the SSH key is not in the seed");

    // Release with quick erase.
    ingot(&tc, &["machines", "release", &id, "--erase", "quick"]);
    wait_status(
        &clients,
        &id,
        MachineStatus::DiskErasing,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let cmdline = script_cmdline(&ns, &base, &mac, "erase");
    let log = run_agent(&ns, &root, &cmdline);
    wait_status(&clients, &id, MachineStatus::Ready, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}; agent:\n{log}"));
    let disk = std::fs::read(root.join("dev/vda")).unwrap();
    assert!(
        disk[..1 << 20].iter().all(|b| *b == 0),
        "the first MiB is not zero after a quick erase"
    );

    let kinds = event_kinds(&tc, &id);
    for k in ["boot.claimed", "boot.claim-refused", "boot.agent-lookup"] {
        assert!(kinds.iter().any(|x| x == k), "no {k} event in {kinds:?}");
    }
    drop(lab);
}
