//! Clients written by others: grpcurl (Go, reflection v1alpha) and Python grpcio (stubs generated from our
//! .proto files, health checking, reflection v1) against a real 3-region cluster.

use ingot_tests::{peer, TestCluster};
use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_and_python_grpcio_talk_to_every_region() {
    let grpcurl = peer("INGOT_PEER_GRPCURL");
    let python = peer("INGOT_PEER_PYTHON");
    if grpcurl.is_none() && python.is_none() {
        return;
    }
    let tc = TestCluster::start("peers", 3, &[]).await.unwrap();
    let ca = tc.cluster.ca_path().to_path_buf();
    let token = tc.cluster.token().to_string();
    for r in tc.cluster.regions() {
        if let Some(g) = &grpcurl {
            let out = Command::new("bash")
                .arg(repo().join("tests/peers/grpcurl_check.sh"))
                .arg(&r.api_addr)
                .arg(&ca)
                .arg(&token)
                .env("INGOT_PEER_GRPCURL", g)
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            eprintln!("{text}");
            assert!(
                out.status.success(),
                "grpcurl checks failed against {}:\n{text}",
                r.name
            );
        }
        if let Some(py) = &python {
            let out = Command::new(py)
                .arg(repo().join("tests/peers/grpc_client.py"))
                .args(["--endpoint", &r.api_addr, "--ca"])
                .arg(&ca)
                .args(["--token", &token])
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            eprintln!("{text}");
            assert!(
                out.status.success(),
                "python grpcio checks failed against {}:\n{text}",
                r.name
            );
        }
    }
}
