//! Flow tests: the whole agent against a scripted fake rack and a fake machine, and against a real
//! HTTPS server holding a rack certificate (the TLS pinning end to end).

use crate::cmdline::{self, BootArgs};
use crate::flow::{self, End};
use crate::platform::fake::machine;
use crate::platform::Platform;
use crate::rack::fake::{status, FakeRack, Scripted};
use crate::rack::{Backoff, Client, HttpsRack};
use ingot_proto::rack::v1::{
    agent_answer, agent_call, AgentAnswer, AgentCall, AgentNext, AgentWork, DeployWork,
};
use prost::Message;
use sha2::{Digest, Sha256};
use std::time::Duration;

const TOKEN: &str = "tok-0123456789abcdef-secret";

fn quick() -> Backoff {
    Backoff {
        first: Duration::from_millis(5),
        max: Duration::from_millis(20),
        budget: Duration::from_millis(300),
    }
}

fn args(purpose: &str, rack_port: u16) -> BootArgs {
    cmdline::parse(&format!(
        "ingot.purpose={purpose} ingot.rack=http://127.0.0.1:{rack_port} ingot.ca={} ingot.mac=52:54:00:aa:00:09",
        "ab".repeat(32)
    ))
    .unwrap()
}

fn work(purpose: &str) -> AgentWork {
    AgentWork {
        system_id: "m-1".into(),
        boot_id: "b-1".into(),
        boot_token: TOKEN.into(),
        purpose: purpose.into(),
        hostname: "node1".into(),
        heartbeat_s: 1,
        ssh_keys: vec!["ssh-ed25519 AAAAkey owner@x".into()],
        ..Default::default()
    }
}

fn work_answer(w: AgentWork) -> Scripted {
    Scripted::Answer(Box::new(AgentAnswer {
        answer: Some(agent_answer::Answer::Work(w)),
        ..Default::default()
    }))
}

fn fake_machine() -> (tempfile::TempDir, Platform) {
    let t = tempfile::tempdir().unwrap();
    machine(t.path());
    let p = Platform::new(t.path());
    (t, p)
}

fn no_token_in(end: &End) {
    assert!(!format!("{end:?}").contains(TOKEN), "{end:?}");
}

#[tokio::test]
async fn commission_looks_up_reports_inventory_and_follows_the_answer() {
    let (_t, p) = fake_machine();
    let rack = FakeRack::default();
    rack.push("lookup", Scripted::Down);
    rack.push("lookup", work_answer(work("commission")));
    rack.push(
        "result report",
        Scripted::Answer(Box::new(status(AgentNext::PowerOff))),
    );
    let client = Client {
        rack,
        backoff: quick(),
    };
    let end = flow::run(&client, &p, &args("commission", 5248)).await;
    assert!(matches!(end, End::PowerOff(_)), "{end:?}");
    no_token_in(&end);
    let r = &client.rack;
    assert_eq!(
        r.kinds(),
        ["lookup", "lookup", "inventory report", "result report"]
    );
    let calls = r.calls.lock().unwrap().clone();
    let Some(agent_call::Call::Lookup(l)) = &calls[0].call else {
        panic!()
    };
    // The retried lookup carries the same claim: one claim per run.
    let Some(agent_call::Call::Lookup(l2)) = &calls[1].call else {
        panic!()
    };
    assert_eq!(l.claim, l2.claim);
    assert_eq!(l.claim.len(), 32);
    assert_eq!(
        l.macs,
        [
            "52:54:00:aa:00:09",
            "52:54:00:aa:00:01",
            "52:54:00:aa:00:02"
        ]
    );
    assert_eq!(l.purpose, "commission");
    assert!(calls[0].id == 0 && calls[0].peer_ip.is_empty());
    let Some(agent_call::Call::Inventory(i)) = &calls[2].call else {
        panic!()
    };
    assert_eq!(
        (i.system_id.as_str(), i.boot_token.as_str()),
        ("m-1", TOKEN)
    );
    let inv = i.inventory.as_ref().unwrap();
    assert_eq!((inv.cpu_count, inv.disks.len(), inv.nics.len()), (2, 2, 2));
    let Some(agent_call::Call::Result(res)) = &calls[3].call else {
        panic!()
    };
    assert!(res.success && res.boot_token == TOKEN);
}

#[tokio::test]
async fn enlist_and_a_refused_lookup_power_off() {
    let (_t, p) = fake_machine();
    let client = Client {
        rack: FakeRack::default(),
        backoff: quick(),
    };
    let end = flow::run(&client, &p, &args("enlist", 5248)).await;
    assert!(matches!(end, End::PowerOff(_)), "{end:?}");
    assert!(client.rack.kinds().is_empty());
    client.rack.push(
        "lookup",
        Scripted::Answer(Box::new(AgentAnswer {
            code: 9,
            error: "machine m-1 is New, not booting for Ingot".into(),
            ..Default::default()
        })),
    );
    let end = flow::run(&client, &p, &args("commission", 5248)).await;
    match end {
        End::PowerOff(why) => assert!(why.contains("not booting for Ingot"), "{why}"),
        other => panic!("{other:?}"),
    }
    // An unreachable rack: the agent exits with a failure (the ramdisk's init retries it, then powers off).
    for _ in 0..200 {
        client.rack.push("lookup", Scripted::Down);
    }
    let end = flow::run(&client, &p, &args("test", 5248)).await;
    assert!(
        matches!(end, End::Exit(ref w) if w.contains("unreachable")),
        "{end:?}"
    );
}

#[tokio::test]
async fn deploy_writes_verifies_seeds_and_reboots_when_told() {
    let (t, p) = fake_machine();
    let img = crate::deploy::tests::image(4 << 20);
    let (blobs, _) = crate::deploy::tests::serve(img.clone(), 1, 1 << 20);
    let mut w = work("deploy");
    w.deploy = Some(DeployWork {
        image: "ubuntu/noble".into(),
        sha256: hex::encode(Sha256::digest(&img)),
        size: img.len() as u64,
        path: "/blobs/x/disk".into(),
        disk: "vda".into(),
        user_data: String::new(),
    });
    let rack = FakeRack::default();
    rack.push("lookup", work_answer(w.clone()));
    rack.push(
        "result report",
        Scripted::Answer(Box::new(status(AgentNext::Reboot))),
    );
    let client = Client {
        rack,
        backoff: quick(),
    };
    let end = flow::run(&client, &p, &args("deploy", blobs.port)).await;
    assert!(matches!(end, End::Reboot(_)), "{end:?}");
    let results = client.rack.of("result report");
    let agent_call::Call::Result(r) = &results[0] else {
        panic!()
    };
    assert!(r.success, "{}", r.reason);
    let disk = std::fs::read(t.path().join("dev/vda")).unwrap();
    assert_eq!(&disk[512..img.len()], &img[512..]);
    assert_eq!(disk[446 + 16 + 4], 0x0c, "the seed partition");
    // A corrupt image is a failure, reported with the reason.
    let mut bad = img.clone();
    bad[1 << 20] ^= 0xff;
    let (blobs, _) = crate::deploy::tests::serve(bad, 0, 0);
    client.rack.push("lookup", work_answer(w));
    let end = flow::run(&client, &p, &args("deploy", blobs.port)).await;
    assert!(matches!(end, End::Wait(_)), "{end:?}");
    let results = client.rack.of("result report");
    let agent_call::Call::Result(r) = &results[1] else {
        panic!()
    };
    assert!(!r.success && r.reason.contains("sha256"), "{}", r.reason);
}

#[tokio::test]
async fn a_failed_check_is_reported_as_a_failure() {
    let (t, p) = fake_machine();
    std::fs::remove_file(t.path().join("dev/sda")).unwrap();
    let rack = FakeRack::default();
    rack.push("lookup", work_answer(work("test")));
    let client = Client {
        rack,
        backoff: quick(),
    };
    let end = flow::run(&client, &p, &args("test", 5248)).await;
    assert!(matches!(end, End::Wait(_)), "{end:?}");
    let progress = client.rack.of("progress report");
    assert!(progress.len() >= 2, "{progress:?}");
    let results = client.rack.of("result report");
    let agent_call::Call::Result(r) = &results[0] else {
        panic!()
    };
    assert!(!r.success && r.reason.contains("sda"), "{}", r.reason);
}

#[tokio::test]
async fn a_heartbeat_saying_stop_ends_a_running_job() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let rack = FakeRack::default();
    rack.push(
        "heartbeat",
        Scripted::Answer(Box::new(status(AgentNext::Continue))),
    );
    rack.push(
        "heartbeat",
        Scripted::Answer(Box::new(status(AgentNext::Stop))),
    );
    let client = Client {
        rack,
        backoff: quick(),
    };
    let s = flow::Session {
        system_id: "m-1".into(),
        token: TOKEN.into(),
        heartbeat: Duration::from_millis(100),
    };
    // A job that never ends by itself: only the stop ends it.
    let saw_stop = Arc::new(AtomicBool::new(false));
    let seen = saw_stop.clone();
    let r = flow::supervise(&client, &s, move |ctl| {
        ctl.step("erasing vda: 0 MiB of 64 MiB (0%)", 0);
        while !ctl.cancelled() {
            std::thread::sleep(Duration::from_millis(5));
        }
        seen.store(true, Ordering::SeqCst);
        Err("stopped".into())
    })
    .await;
    match r {
        Err(End::Wait(why)) => assert!(why.contains("boot is over"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        client.rack.kinds(),
        ["progress report", "heartbeat", "heartbeat"]
    );
    for _ in 0..200 {
        if saw_stop.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the job was not told to stop");
}

#[tokio::test]
async fn rescue_installs_keys_runs_the_ssh_server_and_heartbeats_until_stopped() {
    use std::os::unix::fs::PermissionsExt;
    let (t, mut p) = fake_machine();
    let log = t.path().join("dropbear.args");
    let script = t.path().join("dropbear");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$@\" > {}\nexec sleep 30\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    p.dropbear = script;
    let rack = FakeRack::default();
    rack.push("lookup", work_answer(work("rescue")));
    rack.push(
        "heartbeat",
        Scripted::Answer(Box::new(status(AgentNext::Continue))),
    );
    rack.push(
        "heartbeat",
        Scripted::Answer(Box::new(status(AgentNext::Stop))),
    );
    let client = Client {
        rack,
        backoff: quick(),
    };
    let end = flow::run(&client, &p, &args("rescue", 5248)).await;
    assert!(
        matches!(end, End::Wait(ref w) if w.contains("boot is over")),
        "{end:?}"
    );
    assert_eq!(
        client.rack.kinds(),
        ["lookup", "result report", "heartbeat", "heartbeat"]
    );
    let keys = t.path().join("root/.ssh/authorized_keys");
    assert_eq!(
        std::fs::read_to_string(&keys).unwrap(),
        "ssh-ed25519 AAAAkey owner@x\n"
    );
    assert_eq!(
        std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::read_to_string(&log).unwrap().trim(),
        "-R -E -F -p 22"
    );
}

/// The head length and Content-Length of a complete request head in `buf`.
fn request_head(buf: &[u8]) -> Option<(usize, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(n) = req.parse(buf).ok()? else {
        return None;
    };
    assert_eq!(
        (req.method, req.path),
        (Some("POST"), Some("/agent/v1/call"))
    );
    let len = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())?;
    Some((n, len))
}

/// A rack's agent API in-process: HTTPS with `chain`/`key`, answering lookups with work and everything
/// else with CONTINUE (a result with WAIT). Returns its port.
async fn https_rack(chain: Vec<Vec<u8>>, key_pem: String) -> u16 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cfg = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            chain.into_iter().map(CertificateDer::from).collect(),
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    if let Some((n, len)) = request_head(&buf) {
                        if buf.len() >= n + len {
                            let call = AgentCall::decode(&buf[n..n + len]).unwrap();
                            let answer = match call.call {
                                Some(agent_call::Call::Lookup(_)) => AgentAnswer {
                                    answer: Some(agent_answer::Answer::Work(work("commission"))),
                                    ..Default::default()
                                },
                                Some(agent_call::Call::Result(_)) => status(AgentNext::Wait),
                                _ => status(AgentNext::Continue),
                            };
                            let body = answer.encode_to_vec();
                            let head = format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
                                body.len()
                            );
                            let _ = tls.write_all(head.as_bytes()).await;
                            let _ = tls.write_all(&body).await;
                            let _ = tls.shutdown().await;
                            return;
                        }
                    }
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn the_agent_talks_to_a_real_https_rack_pinned_by_the_ca_fingerprint() {
    use ingot_common::pki::{ClusterCa, Identity};
    let (_t, p) = fake_machine();
    let ca = ClusterCa::generate("c1").unwrap();
    let (ca_der, chain, key) = crate::tls::tests::chain(&ca, &Identity::rack("r1"));
    let port = https_rack(chain, key).await;
    let mut a = args("commission", 5248);
    a.agent.port = port;
    a.ca_sha256 = Sha256::digest(&ca_der).into();
    let client = Client {
        rack: HttpsRack::new(a.agent.clone(), a.ca_sha256).unwrap(),
        backoff: quick(),
    };
    let end = flow::run(&client, &p, &a).await;
    assert!(
        matches!(end, End::Wait(ref w) if w.starts_with("work done")),
        "{end:?}"
    );
    // The same server, but the command line pins another CA: no call gets through.
    let other = ClusterCa::generate("c2").unwrap();
    let other_der = ingot_common::pki::first_cert_der(&other.cert_pem).unwrap();
    a.ca_sha256 = Sha256::digest(&other_der).into();
    let client = Client {
        rack: HttpsRack::new(a.agent.clone(), a.ca_sha256).unwrap(),
        backoff: quick(),
    };
    let end = flow::run(&client, &p, &a).await;
    match end {
        End::Exit(why) => assert!(why.contains("ingot.ca"), "{why}"),
        other => panic!("{other:?}"),
    }
    // A region certificate of the right CA is not a rack.
    let (_, chain, key) = crate::tls::tests::chain(&ca, &Identity::region(1, &["127.0.0.1:7000"]));
    let port = https_rack(chain, key).await;
    a.agent.port = port;
    a.ca_sha256 = Sha256::digest(&ca_der).into();
    let client = Client {
        rack: HttpsRack::new(a.agent.clone(), a.ca_sha256).unwrap(),
        backoff: quick(),
    };
    let end = flow::run(&client, &p, &a).await;
    match end {
        End::Exit(why) => assert!(why.contains("rack-"), "{why}"),
        other => panic!("{other:?}"),
    }
}
