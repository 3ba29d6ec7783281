//! The `ingot-sim` binary: `run` writes its files and prints its line, `fault` and `list` use the control
//! API, SIGTERM stops it, and bad invocations fail with a message.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ingot-sim");

fn sim(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn wait_for_file(p: &Path) {
    let end = Instant::now() + Duration::from_secs(20);
    while !p.exists() {
        assert!(Instant::now() < end, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn run_fault_list_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("sim");
    let ds = d.to_str().unwrap();
    let mut child = Command::new(BIN)
        .args([
            "run", "--dir", ds, "--count", "5", "--zones", "a,b", "--seed", "3",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("ingot-sim: 5 machines, control http://127.0.0.1:"),
        "{line}"
    );
    wait_for_file(&d.join("control.url"));
    let machines: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("machines.json")).unwrap()).unwrap();
    assert_eq!(machines.as_array().unwrap().len(), 5);
    assert_eq!(machines[1]["zone"], "b");
    assert_eq!(machines[0]["hostname"], "sim-01");
    let password = machines[0]["password"].as_str().unwrap();
    assert_eq!(password.len(), 16);

    let out = sim(&[
        "fault",
        "--dir",
        ds,
        "sim-02",
        "--slow-ms",
        "10",
        "--flapping",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        "sim-02: faults slow_ms=10,flapping"
    );

    let out = sim(&["list", "--dir", ds]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert_eq!(table.lines().count(), 6, "{table}");
    assert!(
        table
            .lines()
            .nth(2)
            .unwrap()
            .contains("slow_ms=10,flapping"),
        "{table}"
    );

    let out = sim(&["list", "--dir", ds, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[1]["faults"]["flapping"], true);
    assert_eq!(v[1]["power"], "off");

    let out = sim(&["fault", "--dir", ds, "sim-02", "--clear"]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout).trim(), "sim-02: faults -");
    let out = sim(&["fault", "--dir", ds, "sim-02"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--clear"),
        "{}",
        text(&out.stderr)
    );
    let out = sim(&["fault", "--dir", ds, "sim-77", "--fail-power"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("sim-77"),
        "{}",
        text(&out.stderr)
    );

    // Another simulator on the same control port fails with a clear message.
    let url = std::fs::read_to_string(d.join("control.url")).unwrap();
    let port = url.trim().rsplit(':').next().unwrap().to_string();
    let d2 = dir.path().join("other");
    let out = sim(&[
        "run",
        "--dir",
        d2.to_str().unwrap(),
        "--count",
        "1",
        "--control-port",
        &port,
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot listen on 127.0.0.1:") && err.contains("control API"),
        "{err}"
    );

    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let end = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "ingot-sim did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let out = sim(&["list", "--dir", ds]);
    assert!(!out.status.success());
}

#[test]
fn agent_flags_must_come_together() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dir.path().to_str().unwrap();
    let out = sim(&["run", "--dir", ds, "--region", "https://127.0.0.1:1"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--token-file"),
        "{}",
        text(&out.stderr)
    );
    let out = sim(&["run", "--dir", ds, "--count", "0"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("count"), "{}", text(&out.stderr));
    let out = sim(&["list", "--dir", ds]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("control.url"),
        "{}",
        text(&out.stderr)
    );
}
