//! Subnets and leases as region objects, on one real region with two real racks, through the `ingot`
//! binary and the gRPC API:
//! - create (the whole command line), list, show, update (set and clear), delete, by CLI and API,
//!   each change recorded as an event;
//! - every validation error names its field, through the CLI (stderr) and the API (status message);
//!   overlap names the other subnet; unknown and revoked racks are refused;
//! - a user (not admin) may list and show subnets and list leases but not create, change or delete;
//! - leases list (empty until racks commit leases), a machine's addresses (empty) in GetMachine and
//!   `machines show`;
//! - revoking a rack takes it out of its subnets (its secondary becomes the primary).

use ingot_proto::v1::{
    CreateSubnetRequest, DeleteSubnetRequest, GetSubnetRequest, ListEventsRequest,
    ListLeasesRequest, ListSubnetsRequest, RevokeRackRequest, Subnet, UpdateSubnetRequest,
};
use ingot_tests::{all_events, get, machine, rack_api, user_token, TestCluster};
use std::path::Path;
use std::process::{Command, Output};
use tonic::Code;

/// Runs `ingot --profile ENV ARGS...` and returns its output.
fn ingot(env: &Path, args: &[&str]) -> Output {
    let bin = ingot_launch::resolve_bin_dir(None).unwrap().join("ingot");
    Command::new(bin)
        .arg("--profile")
        .arg(env)
        .args(args)
        .output()
        .expect("run ingot")
}

/// The stdout of a successful run.
fn ok(o: Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "ingot failed: {out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// The stderr of a failed run.
fn fails(o: Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        !o.status.success(),
        "ingot succeeded: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    err
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// A subnet with only a CIDR (the rest defaults).
fn bare(cidr: &str) -> Subnet {
    Subnet {
        cidr: cidr.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subnets_through_cli_and_api() {
    let tc = TestCluster::start("subnets", 1, &[]).await.unwrap();
    for rack in ["rack-1", "rack-2"] {
        tc.cluster.add_rack(rack, "default").await.unwrap();
    }
    let env = tc.cluster.env_path();
    let env = env.as_path();
    let admin = tc.clients();
    let api = || admin.subnets();

    // ---- Create by CLI: the command line.
    let out = ok(ingot(
        env,
        &[
            "--json",
            "subnets",
            "create",
            "10.20.0.0/24",
            "--gateway",
            "10.20.0.1",
            "--dns",
            "10.20.0.1",
            "--domain",
            "lab.example",
            "--dynamic",
            "10.20.0.100-10.20.0.199",
            "--reserved",
            "10.20.0.2-10.20.0.9",
            "--vlan",
            "0",
            "--mode",
            "managed",
            "--primary",
            "rack-1",
            "--secondary",
            "rack-2",
            "--lease-time",
            "1h",
            "--pxe-lease-time",
            "30s",
        ],
    ));
    let v = json(&out);
    assert_eq!(v["cidr"], "10.20.0.0/24", "{v}");
    assert_eq!(v["gateway"], "10.20.0.1");
    assert_eq!(v["dns"], serde_json::json!(["10.20.0.1"]));
    assert_eq!(v["domain"], "lab.example");
    assert_eq!(v["dynamic"], serde_json::json!(["10.20.0.100-10.20.0.199"]));
    assert_eq!(v["reserved"], serde_json::json!(["10.20.0.2-10.20.0.9"]));
    assert_eq!(v["mode"], "managed");
    assert_eq!(
        (v["primary"].clone(), v["secondary"].clone()),
        ("rack-1".into(), "rack-2".into())
    );
    assert_eq!(
        (v["lease_time_s"].clone(), v["pxe_lease_time_s"].clone()),
        (3600.into(), 30.into())
    );

    // ---- List and show by CLI.
    let out = ok(ingot(env, &["subnets", "list"]));
    assert!(
        out.contains("10.20.0.0/24") && out.contains("rack-1"),
        "{out}"
    );
    let out = ok(ingot(env, &["subnets", "show", "10.20.0.0/24"]));
    assert!(
        out.contains("lab.example") && out.contains("10.20.0.100-10.20.0.199"),
        "{out}"
    );
    assert!(out.contains("1h") && out.contains("30s"), "{out}");

    // ---- Update by CLI: set some fields, clear others; what is not named stays.
    let v = json(&ok(ingot(
        env,
        &[
            "--json",
            "subnets",
            "update",
            "10.20.0.0/24",
            "--mode",
            "proxy",
            "--lease-time",
            "2h",
            "--pxe-lease-time",
            "1m",
            "--dns",
            "10.20.0.53",
            "--dns",
            "10.20.0.54",
            "--no-gateway",
            "--no-secondary",
        ],
    )));
    assert_eq!(v["mode"], "proxy", "{v}");
    assert_eq!(v["lease_time_s"], 7200);
    assert_eq!(v["pxe_lease_time_s"], 60);
    assert_eq!(v["dns"], serde_json::json!(["10.20.0.53", "10.20.0.54"]));
    assert_eq!(
        (v["gateway"].clone(), v["secondary"].clone()),
        ("".into(), "".into())
    );
    assert_eq!(v["domain"], "lab.example", "unchanged");
    assert_eq!(v["dynamic"], serde_json::json!(["10.20.0.100-10.20.0.199"]));
    assert!(fails(ingot(env, &["subnets", "update", "10.20.0.0/24"])).contains("nothing to change"));

    // ---- The API: create, get, list, update.
    let s = api()
        .create_subnet(CreateSubnetRequest {
            subnet: Some(Subnet {
                primary: "rack-2".into(),
                secondary: "rack-1".into(),
                dynamic: vec!["10.21.1.0-10.21.1.255".into()],
                ..bare("10.21.0.0/16")
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.mode, "managed", "the default mode");
    assert_eq!(
        (s.lease_time_s, s.pxe_lease_time_s),
        (3600, 30),
        "the default lease times"
    );
    let got = api()
        .get_subnet(GetSubnetRequest {
            cidr: "10.21.0.0/16".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, s);
    let s = api()
        .update_subnet(UpdateSubnetRequest {
            cidr: "10.21.0.0/16".into(),
            vlan: Some(12),
            domain: Some("b.example".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (s.vlan, s.domain.as_str(), s.primary.as_str()),
        (12, "b.example", "rack-2")
    );
    let list = api()
        .list_subnets(ListSubnetsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .subnets;
    let cidrs: Vec<&str> = list.iter().map(|s| s.cidr.as_str()).collect();
    assert_eq!(cidrs, ["10.20.0.0/24", "10.21.0.0/16"]);

    // ---- Every validation error names its field: through the CLI ...
    let cli_cases: &[(&[&str], &str)] = &[
        (&["10.30.0.5/24"], "cidr"),
        (&["10.30.0.0"], "cidr"),
        (&["10.30.0.0/31"], "cidr"),
        (&["10.20.0.0/16"], "cidr"),
        (
            &["10.30.0.0/24", "--dynamic", "10.31.0.1-10.31.0.9"],
            "dynamic[0]",
        ),
        (
            &["10.30.0.0/24", "--dynamic", "10.30.0.200-10.30.0.255"],
            "dynamic[0]",
        ),
        (
            &["10.30.0.0/24", "--dynamic", "10.30.0.9-10.30.0.2"],
            "dynamic[0]",
        ),
        (
            &["10.30.0.0/24", "--reserved", "10.30.0.0-10.30.0.9"],
            "reserved[0]",
        ),
        (
            &[
                "10.30.0.0/24",
                "--dynamic",
                "10.30.0.10-10.30.0.20",
                "--reserved",
                "10.30.0.15",
            ],
            "reserved[0]",
        ),
        (
            &[
                "10.30.0.0/24",
                "--dynamic",
                "10.30.0.10-10.30.0.20",
                "--dynamic",
                "10.30.0.20-10.30.0.30",
            ],
            "dynamic[1]",
        ),
        (&["10.30.0.0/24", "--gateway", "10.31.0.1"], "gateway"),
        (&["10.30.0.0/24", "--gateway", "10.30.0.255"], "gateway"),
        (
            &[
                "10.30.0.0/24",
                "--gateway",
                "10.30.0.15",
                "--dynamic",
                "10.30.0.10-10.30.0.20",
            ],
            "gateway",
        ),
        (&["10.30.0.0/24", "--gateway", "ten"], "gateway"),
        (&["10.30.0.0/24", "--dns", "10.30.0.300"], "dns[0]"),
        (&["10.30.0.0/24", "--domain", "not a domain"], "domain"),
        (&["10.30.0.0/24", "--vlan", "4095"], "vlan"),
        (&["10.30.0.0/24", "--primary", "rack-9"], "primary"),
        (
            &[
                "10.30.0.0/24",
                "--primary",
                "rack-1",
                "--secondary",
                "rack-1",
            ],
            "secondary",
        ),
        (&["10.30.0.0/24", "--secondary", "rack-1"], "secondary"),
        (&["10.30.0.0/24", "--lease-time", "30s"], "lease_time_s"),
        (&["10.30.0.0/24", "--lease-time", "31d"], "lease_time_s"),
        (
            &["10.30.0.0/24", "--pxe-lease-time", "5s"],
            "pxe_lease_time_s",
        ),
        (
            &["10.30.0.0/24", "--pxe-lease-time", "2d"],
            "pxe_lease_time_s",
        ),
    ];
    for (args, field) in cli_cases {
        let mut line = vec!["subnets", "create"];
        line.extend_from_slice(args);
        let err = fails(ingot(env, &line));
        assert!(
            err.contains(&format!("error: {field}: ")),
            "{line:?} should name {field}: {err}"
        );
    }
    let dns: Vec<String> = (1..=17).map(|i| format!("10.30.0.{i}")).collect();
    let mut line = vec!["subnets", "create", "10.30.0.0/24"];
    for d in &dns {
        line.extend(["--dns", d.as_str()]);
    }
    assert!(fails(ingot(env, &line)).contains("error: dns: "));
    let err = fails(ingot(env, &["subnets", "create", "10.20.0.128/25"]));
    assert!(err.contains("overlaps subnet 10.20.0.0/24"), "{err}");
    let err = fails(ingot(
        env,
        &[
            "subnets",
            "update",
            "10.20.0.0/24",
            "--gateway",
            "10.20.0.150",
        ],
    ));
    assert!(err.contains("error: gateway: "), "{err}");

    // ... and through the API, with the status codes.
    let api_cases: Vec<(Subnet, Code, &str)> = vec![
        (bare("nope"), Code::InvalidArgument, "cidr"),
        (
            Subnet {
                mode: "dhcp".into(),
                ..bare("10.30.0.0/24")
            },
            Code::InvalidArgument,
            "mode",
        ),
        (
            Subnet {
                vlan: 70_000,
                ..bare("10.30.0.0/24")
            },
            Code::InvalidArgument,
            "vlan",
        ),
        (
            Subnet {
                dynamic: vec!["10.30.0.1-10.30.0.2".into(); 65],
                ..bare("10.30.0.0/24")
            },
            Code::InvalidArgument,
            "dynamic",
        ),
        (
            Subnet {
                domain: "x".repeat(300),
                ..bare("10.30.0.0/24")
            },
            Code::InvalidArgument,
            "domain",
        ),
        (
            Subnet {
                primary: "rack-9".into(),
                ..bare("10.30.0.0/24")
            },
            Code::NotFound,
            "primary",
        ),
        (bare("10.21.5.0/24"), Code::AlreadyExists, "cidr"),
        (bare("10.20.0.0/24"), Code::AlreadyExists, "cidr"),
    ];
    for (s, code, field) in api_cases {
        let e = api()
            .create_subnet(CreateSubnetRequest {
                subnet: Some(s.clone()),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "{s:?}: {e:?}");
        assert!(
            e.message().starts_with(&format!("{field}: ")),
            "{s:?} should name {field}: {e:?}"
        );
    }
    let e = api()
        .update_subnet(UpdateSubnetRequest {
            cidr: "10.40.0.0/24".into(),
            vlan: Some(1),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // ---- A user may read, not write.
    let (user, secret) = user_token(&admin, "sam").await.unwrap();
    let e = user
        .subnets()
        .create_subnet(CreateSubnetRequest {
            subnet: Some(bare("10.50.0.0/24")),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    for e in [
        user.subnets()
            .update_subnet(UpdateSubnetRequest {
                cidr: "10.20.0.0/24".into(),
                vlan: Some(1),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .unwrap_err(),
        user.subnets()
            .delete_subnet(DeleteSubnetRequest {
                cidr: "10.20.0.0/24".into(),
            })
            .await
            .map(|_| ())
            .unwrap_err(),
    ] {
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    }
    let seen = user
        .subnets()
        .list_subnets(ListSubnetsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .subnets;
    assert_eq!(seen.len(), 2);
    let err = fails(ingot(
        env,
        &["--token", &secret, "subnets", "create", "10.50.0.0/24"],
    ));
    assert!(err.contains("PERMISSION_DENIED"), "{err}");
    assert!(ok(ingot(env, &["--token", &secret, "subnets", "list"])).contains("10.21.0.0/16"));
    assert!(ok(ingot(env, &["--token", &secret, "leases", "list"])).contains("IP"));

    // ---- Leases: none yet (racks commit them once they serve DHCP), listed by CLI and API.
    let v = json(&ok(ingot(
        env,
        &["--json", "leases", "list", "--subnet", "10.20.0.0/24"],
    )));
    assert_eq!(v, serde_json::json!({ "leases": [] }));
    let out = ok(ingot(
        env,
        &["leases", "list", "--mac", "52:54:00:00:00:01"],
    ));
    assert!(out.contains("IP") && out.contains("MAC"), "{out}");
    let page = api()
        .list_leases(ListLeasesRequest {
            subnet: "10.21.0.0/16".into(),
            page_size: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(page.leases.is_empty() && page.next_page_token.is_empty());
    for (req, field) in [
        (
            ListLeasesRequest {
                subnet: "10.21.0.1/16".into(),
                ..Default::default()
            },
            "subnet",
        ),
        (
            ListLeasesRequest {
                mac: "zz".into(),
                ..Default::default()
            },
            "mac",
        ),
        (
            ListLeasesRequest {
                page_size: 10_001,
                ..Default::default()
            },
            "page_size",
        ),
        (
            ListLeasesRequest {
                page_token: "x".into(),
                ..Default::default()
            },
            "page_token",
        ),
    ] {
        let e = api().list_leases(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with(&format!("{field}: ")), "{e:?}");
    }

    // ---- A machine's addresses: shown by GetMachine and `machines show` (none yet).
    let m = admin
        .machines()
        .create_machine(machine(21, 1))
        .await
        .unwrap()
        .into_inner();
    assert!(get(&admin, &m.system_id)
        .await
        .unwrap()
        .addresses
        .is_empty());
    let v = json(&ok(ingot(
        env,
        &["--json", "machines", "show", &m.system_id],
    )));
    assert_eq!(v["addresses"], serde_json::json!([]), "{v}");
    assert!(ok(ingot(env, &["machines", "show", &m.system_id])).contains("addresses"));

    // ---- Revoking a rack takes it out of its subnets: 10.21.0.0/16's primary rack-2 goes, its
    // secondary rack-1 becomes the primary; 10.20.0.0/24 (primary rack-1) is untouched.
    rack_api(&admin)
        .revoke_rack(RevokeRackRequest {
            name: "rack-2".into(),
        })
        .await
        .unwrap();
    let s = api()
        .get_subnet(GetSubnetRequest {
            cidr: "10.21.0.0/16".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((s.primary.as_str(), s.secondary.as_str()), ("rack-1", ""));
    let err = fails(ingot(
        env,
        &["subnets", "update", "10.20.0.0/24", "--secondary", "rack-2"],
    ));
    assert!(
        err.contains("error: secondary: rack 'rack-2' is revoked"),
        "{err}"
    );

    // ---- Delete by CLI and API; a second delete is NOT_FOUND.
    assert!(ok(ingot(env, &["subnets", "delete", "10.20.0.0/24"]))
        .contains("deleted subnet 10.20.0.0/24"));
    let err = fails(ingot(env, &["subnets", "show", "10.20.0.0/24"]));
    assert!(err.contains("NOT_FOUND"), "{err}");
    assert!(fails(ingot(env, &["subnets", "delete", "10.20.0.0/24"])).contains("NOT_FOUND"));
    api()
        .delete_subnet(DeleteSubnetRequest {
            cidr: "10.21.0.0/16".into(),
        })
        .await
        .unwrap();
    let list = api()
        .list_subnets(ListSubnetsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .subnets;
    assert!(list.is_empty(), "{list:?}");

    // ---- Every change left an event.
    let kinds: Vec<String> = all_events(&admin, ListEventsRequest::default(), 1000, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .filter(|k| k.starts_with("subnet."))
        .collect();
    for (kind, n) in [
        ("subnet.create", 2),
        ("subnet.update", 3),
        ("subnet.delete", 2),
    ] {
        assert_eq!(
            kinds.iter().filter(|k| *k == kind).count(),
            n,
            "{kind}: {kinds:?}"
        );
    }
}
