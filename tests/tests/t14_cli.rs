//! The `ingot` binary as an operator uses it: `dev up` writes DIR/env, commands work with `--profile`,
//! `--json` is parseable, errors exit non-zero with the reason, `dev down` stops what `dev up` started.

use ingot_tests::test_dir;
use std::path::Path;
use std::process::{Command, Output};

fn ingot(args: &[&str]) -> Output {
    let bin = ingot_launch::resolve_bin_dir(None).unwrap().join("ingot");
    Command::new(bin).args(args).output().expect("run ingot")
}

fn ok(o: Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "ingot failed: {}\n{}",
        out,
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

#[test]
fn dev_up_cli_round_trip_dev_down() {
    let dir = test_dir("cli-dev");
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    ok(ingot(&["dev", "up", "--dir", d, "--regions", "3"]));
    let env = std::fs::read_to_string(dir.join("env")).unwrap();
    for k in ["INGOT_ENDPOINTS=", "INGOT_CA=", "INGOT_TOKEN="] {
        assert!(env.contains(k), "{k} missing from DIR/env:\n{env}");
    }
    let profile = dir.join("env");
    let p = profile.to_str().unwrap();
    let result = std::panic::catch_unwind(|| {
        let out = ok(ingot(&["--profile", p, "--json", "cluster", "list"]));
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(v.to_string().matches("\"healthy\":true").count(), 3, "{v}");

        ok(ingot(&[
            "--profile",
            p,
            "zones",
            "create",
            "room-b",
            "--description",
            "second room",
        ]));
        let out = ok(ingot(&[
            "--profile",
            p,
            "--json",
            "machines",
            "create",
            "--mac",
            "52-54-00-AA-BB-01",
            "--hostname",
            "cli-1",
            "--zone",
            "room-b",
        ]));
        let m: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(m.to_string().contains("52:54:00:aa:bb:01"), "{m}");
        let out = ok(ingot(&["--profile", p, "machines", "list"]));
        assert!(out.contains("cli-1") && out.contains("room-b"), "{out}");
        let out = ok(ingot(&[
            "--profile",
            p,
            "machines",
            "show",
            "52:54:00:aa:bb:01",
        ]));
        assert!(out.contains("cli-1"), "{out}");
        // A malformed MAC is refused before any call; a taken one by the cluster, naming the field.
        let bad = ingot(&["--profile", p, "machines", "create", "--mac", "nope"]);
        assert!(!bad.status.success());
        assert!(
            String::from_utf8_lossy(&bad.stderr).contains("not a MAC address"),
            "{}",
            String::from_utf8_lossy(&bad.stderr)
        );
        let dup = ingot(&[
            "--profile",
            p,
            "machines",
            "create",
            "--mac",
            "52:54:00:aa:bb:01",
        ]);
        assert!(!dup.status.success());
        let err = String::from_utf8_lossy(&dup.stderr);
        assert!(
            err.contains("macs[0]") && err.contains("ALREADY_EXISTS"),
            "{err}"
        );
        // `dev up` again on a running cluster is a no-op that says so.
        ok(ingot(&["dev", "up", "--dir", d]));
    });
    let down = ingot(&["dev", "down", "--dir", d, "--purge"]);
    if result.is_err() {
        for i in 1..=3 {
            let log = Path::new(d).join(format!("region-{i}/region.log"));
            eprintln!(
                "--- {}:\n{}",
                log.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
    }
    ok(down);
    assert!(!dir.exists(), "--purge removes the directory");
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
