//! Who may talk to a region, and what a region refuses: TLS on both listeners, bearer tokens, join tokens,
//! bad input, and data directories that are corrupt or belong to another cluster.

use ingot_common::pki::{self, ClusterCa, Identity};
use ingot_proto::raft::v1::raft_service_client::RaftServiceClient;
use ingot_proto::raft::v1::StatusRequest;
use ingot_proto::v1::machine_service_client::MachineServiceClient;
use ingot_proto::v1::*;
use ingot_tests::{machine, TestCluster};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity as TlsIdentity};
use tonic::Code;

async fn raft_status(addr: &str, tls: ClientTlsConfig) -> Result<(), tonic::Status> {
    let ch = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    RaftServiceClient::new(ch)
        .status(StatusRequest {})
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_refuse_the_unauthenticated() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tc = TestCluster::start("security", 1, &[]).await.unwrap();
    let r = tc.cluster.region(1);
    let ca_pem = std::fs::read_to_string(r.data_dir.join("tls/ca.crt")).unwrap();
    let server_ca = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca_pem))
        .domain_name(pki::REGION_SERVER_NAME);

    // Raft listener, no client certificate: refused.
    let e = raft_status(&r.raft_addr, server_ca.clone())
        .await
        .unwrap_err();
    eprintln!("no client cert on the raft listener: {e}");
    // Raft listener, a certificate from another CA (even named like a region): refused.
    let foreign = ClusterCa::generate("foreign").unwrap();
    let (cert, key) = foreign
        .issue(&Identity::region(1, &["127.0.0.1:1"]))
        .unwrap();
    let e = raft_status(
        &r.raft_addr,
        server_ca
            .clone()
            .identity(TlsIdentity::from_pem(&cert, &key)),
    )
    .await
    .unwrap_err();
    eprintln!("foreign CA on the raft listener: {e}");
    // The region's own certificate works (the control experiment).
    let own = server_ca.clone().identity(TlsIdentity::from_pem(
        std::fs::read_to_string(r.data_dir.join("tls/region.crt")).unwrap(),
        std::fs::read_to_string(r.data_dir.join("tls/region.key")).unwrap(),
    ));
    raft_status(&r.raft_addr, own)
        .await
        .expect("a region certificate is accepted");

    // API listener: the Raft service is not exposed there.
    let api = Endpoint::from_shared(format!("https://{}", r.api_addr))
        .unwrap()
        .tls_config(server_ca.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let e = RaftServiceClient::new(api.clone())
        .status(StatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    // API without a token, and with a wrong one: Unauthenticated.
    let e = MachineServiceClient::new(api.clone())
        .list_machines(ListMachinesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    let mut req = tonic::Request::new(ListMachinesRequest::default());
    req.metadata_mut()
        .insert("authorization", "Bearer ingot_wrong".parse().unwrap());
    let e = MachineServiceClient::new(api.clone())
        .list_machines(req)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    // A client that does not trust the cluster CA cannot even complete the handshake.
    let other = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&foreign.cert_pem))
        .domain_name(pki::REGION_SERVER_NAME);
    let bad = Endpoint::from_shared(format!("https://{}", r.api_addr))
        .unwrap()
        .tls_config(other)
        .unwrap()
        .connect()
        .await;
    assert!(
        bad.is_err(),
        "a server certificate from the cluster CA must not verify against another CA"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_status_naming_the_field() {
    let tc = TestCluster::start("bad-input", 1, &[]).await.unwrap();
    let c = tc.clients();
    let mut m = c.machines();
    let code_field = |r: Result<tonic::Response<Machine>, tonic::Status>| {
        let e = r.unwrap_err();
        (e.code(), e.message().to_string())
    };
    let (code, msg) = code_field(
        m.create_machine(CreateMachineRequest {
            macs: vec!["zz:00".into()],
            ..Default::default()
        })
        .await,
    );
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("macs[0]"), "{msg}");
    let (code, msg) = code_field(m.create_machine(CreateMachineRequest::default()).await);
    assert!(
        code == Code::InvalidArgument && msg.contains("macs"),
        "{msg}"
    );
    let (code, msg) = code_field(
        m.create_machine(CreateMachineRequest {
            hostname: "Bad_Name".into(),
            ..machine(30, 0)
        })
        .await,
    );
    assert!(
        code == Code::InvalidArgument && msg.contains("hostname"),
        "{msg}"
    );
    let (code, msg) = code_field(
        m.create_machine(CreateMachineRequest {
            zone: "nowhere".into(),
            ..machine(30, 0)
        })
        .await,
    );
    assert!(code == Code::NotFound && msg.contains("nowhere"), "{msg}");
    let (code, msg) = code_field(
        m.create_machine(CreateMachineRequest {
            power: Some(PowerParameters {
                driver: "telepathy".into(),
                ..Default::default()
            }),
            ..machine(30, 0)
        })
        .await,
    );
    assert!(
        code == Code::InvalidArgument && msg.contains("power.driver"),
        "{msg}"
    );

    let first = m.create_machine(machine(30, 1)).await.unwrap().into_inner();
    let (code, msg) = code_field(
        m.create_machine(CreateMachineRequest {
            hostname: "other".into(),
            ..machine(30, 1)
        })
        .await,
    );
    assert!(
        code == Code::AlreadyExists && msg.contains("macs[0]"),
        "{msg}"
    );
    let (code, msg) = code_field(
        m.create_machine(CreateMachineRequest {
            hostname: first.hostname.clone(),
            ..machine(30, 2)
        })
        .await,
    );
    assert!(
        code == Code::AlreadyExists && msg.contains("hostname"),
        "{msg}"
    );
    let (code, _) = code_field(
        m.get_machine(GetMachineRequest {
            key: Some(get_machine_request::Key::SystemId("nope00".into())),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(code, Code::NotFound);
    let (code, msg) = code_field(
        m.get_machine(GetMachineRequest {
            key: Some(get_machine_request::Key::Mac("not-a-mac".into())),
            ..Default::default()
        })
        .await,
    );
    assert!(
        code == Code::InvalidArgument && msg.contains("mac"),
        "{msg}"
    );
    // Compare-and-set: a stale revision is refused.
    let (code, msg) = code_field(
        m.update_machine(UpdateMachineRequest {
            system_id: first.system_id.clone(),
            description: Some("x".into()),
            expected_revision: 1,
            ..Default::default()
        })
        .await,
    );
    assert!(
        code == Code::FailedPrecondition && msg.contains("revision"),
        "{msg}"
    );
    let updated = m
        .update_machine(UpdateMachineRequest {
            system_id: first.system_id.clone(),
            description: Some("rack 4".into()),
            expected_revision: first.revision,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.description, "rack 4");
    // Secrets are redacted unless asked for.
    let with_secret = m
        .update_machine(UpdateMachineRequest {
            system_id: first.system_id.clone(),
            power: Some(PowerParameters {
                driver: "ipmi".into(),
                params: [
                    ("address".to_string(), "10.0.0.9".to_string()),
                    ("password".to_string(), "hunter2".to_string()),
                ]
                .into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(with_secret.power.unwrap().params["password"], "********");
    let shown = m
        .get_machine(GetMachineRequest {
            key: Some(get_machine_request::Key::SystemId(first.system_id.clone())),
            include_secrets: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.power.unwrap().params["password"], "hunter2");

    // Zones: a zone with machines cannot be deleted; "default" cannot be deleted.
    let mut z = c.zones();
    z.create_zone(CreateZoneRequest {
        name: "room-a".into(),
        description: String::new(),
    })
    .await
    .unwrap();
    let e = z
        .create_zone(CreateZoneRequest {
            name: "room-a".into(),
            description: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    m.create_machine(CreateMachineRequest {
        zone: "room-a".into(),
        ..machine(30, 3)
    })
    .await
    .unwrap();
    let e = z
        .delete_zone(DeleteZoneRequest {
            name: "room-a".into(),
        })
        .await
        .unwrap_err();
    assert!(
        e.code() == Code::FailedPrecondition && e.message().contains("1 machine"),
        "{e}"
    );
    let e = z
        .delete_zone(DeleteZoneRequest {
            name: "default".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let zones = z
        .list_zones(ListZonesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .zones;
    assert_eq!(
        zones
            .iter()
            .find(|z| z.name == "room-a")
            .unwrap()
            .machine_count,
        1
    );
    // Paging returns every machine exactly once.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let r = m
            .list_machines(ListMachinesRequest {
                page_size: 1,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.total_size, 2);
        seen.extend(r.machines.into_iter().map(|m| m.system_id));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(seen.len(), 2);
    let e = m
        .list_machines(ListMachinesRequest {
            page_token: "!!".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("page_token"));
}

/// Every string and list that can reach the Raft log has a byte cap, checked at the API edge: an
/// oversized field is INVALID_ARGUMENT naming it (and never echoed back), and a request over the API's
/// 4 MiB message limit is refused by gRPC before it is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_fields_are_refused_naming_the_field() {
    let tc = TestCluster::start("bounds", 1, &[]).await.unwrap();
    let c = tc.clients();
    let mut m = c.machines();
    let invalid = |r: Result<(), tonic::Status>, want: &str| {
        let e = r.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{want}: {e}");
        assert!(
            e.message().starts_with(want),
            "want '{want}', got '{}'",
            e.message()
        );
        assert!(
            e.message().len() < 300,
            "the value is not echoed: {} bytes",
            e.message().len()
        );
    };
    let first = m.create_machine(machine(40, 0)).await.unwrap().into_inner();
    let me = || Some(ingot_tests::by_id(&first.system_id));

    // Allocation constraints (carried into the log by Allocate).
    let r = m
        .allocate(AllocateRequest {
            request_id: "bounds-1".into(),
            constraints: Some(Constraints {
                tags: vec!["gpu".into(), "t".repeat(100)],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map(|_| ());
    invalid(r, "constraints.tags[1]: 100 bytes, at most 64");
    let r = m
        .allocate(AllocateRequest {
            request_id: "bounds-2".into(),
            constraints: Some(Constraints {
                storage: format!("root:100({})", "s".repeat(5000)),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map(|_| ());
    invalid(r, "constraints.storage: 5010 bytes, at most 4096");
    // Machine keys and names that select objects (carried by actions, updates and deletes).
    let r = m
        .delete_machine(DeleteMachineRequest {
            system_id: "s".repeat(300),
            expected_revision: 0,
        })
        .await
        .map(|_| ());
    invalid(r, "system_id: 300 bytes, at most 256");
    let r = m
        .power(PowerRequest {
            machine: Some(MachineRef {
                key: Some(machine_ref::Key::SystemId("é".repeat(200))),
            }),
            action: "on".into(),
            wait_seconds: 0,
        })
        .await
        .map(|_| ());
    invalid(r, "machine.system_id: 400 bytes, at most 256");
    let r = m
        .tag_machine(TagMachineRequest {
            machine: me(),
            tags: vec!["t".into(); 65],
        })
        .await
        .map(|_| ());
    invalid(r, "tags: 65 entries, at most 64");
    let r = m
        .deploy(DeployRequest {
            machine: me(),
            user_data: "u".repeat(3 * 1024 * 1024),
            ..Default::default()
        })
        .await
        .map(|_| ());
    invalid(r, "user_data: 3145728 bytes, at most 65536");
    let r = c
        .zones()
        .update_zone(UpdateZoneRequest {
            name: "z".repeat(10_000),
            description: Some("d".into()),
            ..Default::default()
        })
        .await
        .map(|_| ());
    invalid(r, "name: 10000 bytes, at most 256");
    // The agent's inventory: every string, named to the entry (checked before the boot token).
    let mut inv = ingot_tests::small_inventory();
    inv.disks = (0..4)
        .map(|i| Disk {
            name: format!("sd{i}"),
            size_gib: 100,
            ..Default::default()
        })
        .collect();
    inv.disks[3].model = "m".repeat(300);
    let r = c
        .agent()
        .report_inventory(ReportInventoryRequest {
            system_id: first.system_id.clone(),
            boot_token: "boot_x".into(),
            inventory: Some(inv),
        })
        .await
        .map(|_| ());
    invalid(r, "inventory.disks[3].model: 300 bytes, at most 256");
    // Joining regions: addresses are host:port of bounded length (with a valid token, so the address
    // is what is refused).
    let token = c
        .cluster()
        .create_join_token(CreateJoinTokenRequest { ttl_seconds: 60 })
        .await
        .unwrap()
        .into_inner()
        .token;
    let r = c
        .cluster()
        .join_region(JoinRegionRequest {
            token,
            name: "r9".into(),
            csr_pem: String::new(),
            raft_addr: format!("{}:7001", "h".repeat(300)),
            api_addr: "127.0.0.1:7000".into(),
        })
        .await
        .map(|_| ());
    invalid(r, "raft_addr: 305 bytes, at most 259");

    // Over the API's message limit: refused by gRPC, before any field is looked at.
    let e = m
        .create_machine(CreateMachineRequest {
            description: "x".repeat(5 * 1024 * 1024),
            ..machine(40, 1)
        })
        .await
        .unwrap_err();
    assert!(
        matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted),
        "a 5 MiB request: {e}"
    );
    assert!(e.message().contains("too large"), "{e}");
    // Still writable, and the refused requests left nothing behind.
    let after = m
        .get_machine(GetMachineRequest {
            key: Some(get_machine_request::Key::SystemId(first.system_id.clone())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(after.tags.is_empty());
    m.create_machine(machine(40, 2)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_are_single_use_and_data_dirs_are_checked() {
    let tc = TestCluster::start("join-dirs", 2, &[]).await.unwrap();
    let c = tc.clients();
    let bin = ingot_launch::resolve_bin_dir(None)
        .unwrap()
        .join("ingot-region");
    let r1 = tc.cluster.region(1);
    let ca = r1.data_dir.join("tls/ca.crt");
    let join = |dir: &std::path::Path, token: &str| {
        std::process::Command::new(&bin)
            .args([
                "join",
                "--name",
                "extra",
                "--listen-api",
                "127.0.0.1:0",
                "--listen-raft",
                "127.0.0.1:0",
                "--region",
            ])
            .arg(r1.endpoint())
            .arg("--token")
            .arg(token)
            .arg("--ca")
            .arg(&ca)
            .arg("--data-dir")
            .arg(dir)
            .output()
            .unwrap()
    };
    // The token used by region-2 to join cannot be replayed; a made-up one is refused too.
    let out = join(&tc.dir.join("extra-1"), "ingotjoin_made_up");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("join token unknown or already used"), "{err}");
    let t = c
        .cluster()
        .create_join_token(CreateJoinTokenRequest { ttl_seconds: 1 })
        .await
        .unwrap()
        .into_inner()
        .token;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let out = join(&tc.dir.join("extra-2"), &t);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("expired"), "{err}");

    // A data directory of another cluster is refused with a clear message, not reset.
    tc.cluster.kill(2, libc::SIGTERM).unwrap();
    tc.cluster.wait_exit(2).await.unwrap();
    let r2 = tc.cluster.region(2);
    let idp = r2.data_dir.join("identity.json");
    let original = std::fs::read_to_string(&idp).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&original).unwrap();
    v["cluster_id"] = "0000000000000000".into();
    std::fs::write(&idp, v.to_string()).unwrap();
    let out = std::process::Command::new(&bin)
        .args(["run", "--data-dir"])
        .arg(&r2.data_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("belongs to cluster"),
        "{err}"
    );
    // A corrupt identity file is refused too.
    std::fs::write(&idp, "{not json").unwrap();
    let out = std::process::Command::new(&bin)
        .args(["run", "--data-dir"])
        .arg(&r2.data_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("corrupt"), "{err}");
    // Restored, it starts again with its data intact.
    std::fs::write(&idp, original).unwrap();
    tc.cluster.restart(2).await.unwrap();
    // init on a directory that holds a region is refused.
    let out = std::process::Command::new(&bin)
        .args(["init", "--name", "x", "--data-dir"])
        .arg(&r2.data_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("already holds a region"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_lists_the_public_services_only() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tc = TestCluster::start("reflection", 1, &[]).await.unwrap();
    let r = tc.cluster.region(1);
    let ca_pem = std::fs::read_to_string(r.data_dir.join("tls/ca.crt")).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca_pem))
        .domain_name(pki::REGION_SERVER_NAME);
    let ch = Endpoint::from_shared(format!("https://{}", r.api_addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(ch)
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected {resp:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for s in [
        "ingot.v1.MachineService",
        "ingot.v1.ZoneService",
        "ingot.v1.ClusterService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == s),
            "{s} missing from reflection v1: {names:?}"
        );
    }
    assert!(
        !names.iter().any(|n| n.contains("raft")),
        "the Raft service must not be exposed to clients: {names:?}"
    );
}

/// Makes user `name` with `role` and a token for it through `admin`; answers the token's id and secret.
async fn user_with_token(
    admin: &ingot_client::Clients,
    name: &str,
    role: Role,
) -> (String, String) {
    admin
        .users()
        .create_user(CreateUserRequest {
            name: name.into(),
            role: role as i32,
        })
        .await
        .unwrap();
    let t = admin
        .users()
        .create_token(CreateTokenRequest {
            user: name.into(),
            description: "t12".into(),
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    (t.token.expect("token").id, t.secret)
}

/// A demoted admin and a revoked token stop working at once, also through a region that has not yet
/// heard of the change: the follower is stopped (SIGSTOP) while the leader demotes bob and revokes
/// carol's token, their calls reach it while it still holds the old state, and it is resumed. Its
/// API edge still believes the old state; the apply step (writes) and the re-check after the read
/// barrier (linearizable reads) do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_admin_and_a_revoked_token_stop_at_once_through_a_lagging_region() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tc = TestCluster::start("lagging-authz", 3, &[]).await.unwrap();
    let leader = tc.leader().await;
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let admin = tc.clients_to(leader);
    let (_, bob_secret) = user_with_token(&admin, "bob", Role::Admin).await;
    let (carol_id, carol_secret) = user_with_token(&admin, "carol", Role::User).await;
    // Connections to the follower, made (and the tokens seen there) before it is stopped.
    let bob = tc.clients_to(follower).with_token(&bob_secret).unwrap();
    let carol = tc.clients_to(follower).with_token(&carol_secret).unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let b = bob.users().who_am_i(WhoAmIRequest {}).await;
        let c = carol.users().who_am_i(WhoAmIRequest {}).await;
        if b.is_ok() && c.is_ok() {
            break;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(5),
            "{b:?} {c:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    bob.users()
        .list_users(ListUsersRequest {})
        .await
        .expect("bob is an admin");

    tc.cluster.kill(follower, libc::SIGSTOP).unwrap();
    let resumed = scopeguard_cont(&tc, follower);
    admin
        .users()
        .update_user(UpdateUserRequest {
            name: "bob".into(),
            role: Role::User as i32,
        })
        .await
        .expect("demote bob (the leader and the third region are a majority)");
    admin
        .users()
        .revoke_token(RevokeTokenRequest { id: carol_id })
        .await
        .expect("revoke carol's token");
    // Sent to the stopped follower: they wait in its sockets and are served when it resumes.
    let (b, c) = (bob.clone(), carol.clone());
    let bob_write = tokio::spawn(async move {
        b.zones()
            .create_zone(CreateZoneRequest {
                name: "bobs-zone".into(),
                description: String::new(),
            })
            .await
    });
    let b = bob.clone();
    let bob_read = tokio::spawn(async move { b.users().list_users(ListUsersRequest {}).await });
    let c2 = c.clone();
    let carol_read =
        tokio::spawn(async move { c2.zones().list_zones(ListZonesRequest::default()).await });
    let carol_write = tokio::spawn(async move {
        c.users()
            .create_token(CreateTokenRequest {
                user: String::new(),
                description: "after revocation".into(),
                ttl_seconds: 0,
            })
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    drop(resumed); // SIGCONT

    let e = bob_write
        .await
        .unwrap()
        .expect_err("a demoted admin's write");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = bob_read
        .await
        .unwrap()
        .expect_err("a demoted admin's linearizable read");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = carol_write
        .await
        .unwrap()
        .expect_err("a revoked token's write");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = carol_read
        .await
        .unwrap()
        .expect_err("a revoked token's linearizable read");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let zones = admin
        .zones()
        .list_zones(ListZonesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .zones;
    assert!(zones.iter().all(|z| z.name != "bobs-zone"), "{zones:?}");
    // Once caught up, the follower's own edge refuses them too.
    let e = bob
        .zones()
        .create_zone(CreateZoneRequest {
            name: "bobs-zone".into(),
            description: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
}

/// Sends SIGCONT to region `i` when dropped, so a failed assertion never leaves it stopped.
fn scopeguard_cont(tc: &TestCluster, i: usize) -> impl Drop + '_ {
    struct Cont<'a>(&'a TestCluster, usize);
    impl Drop for Cont<'_> {
        fn drop(&mut self) {
            let _ = self.0.cluster.kill(self.1, libc::SIGCONT);
        }
    }
    Cont(tc, i)
}

/// The last log index of the only region, as ListRegions reports it.
async fn last_log_index(c: &ingot_client::Clients) -> u64 {
    let r = c
        .cluster()
        .list_regions(ListRegionsRequest {})
        .await
        .unwrap()
        .into_inner();
    r.regions[0].last_log_index
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_join_and_enrollment_tokens_never_reach_the_log_and_are_rate_limited() {
    let tc = TestCluster::start("bad-tokens", 1, &[]).await.unwrap();
    let c = tc.clients();
    let before = last_log_index(&c).await;
    let (_key, region_csr) = pki::new_csr("region-x").unwrap();
    let (_key, rack_csr) = pki::new_csr("rack-rx").unwrap();
    let join = |token: &str, raft_addr: String| JoinRegionRequest {
        token: token.into(),
        name: "intruder".into(),
        csr_pem: region_csr.clone(),
        raft_addr,
        api_addr: "127.0.0.1:9".into(),
    };
    // An address of unbounded length is refused before anything is proposed, naming the field.
    let huge = format!("h:{}", "9".repeat(100_000));
    let e = c
        .cluster()
        .join_region(join("ingotjoin_made_up", huge))
        .await
        .unwrap_err();
    assert!(
        e.code() == Code::InvalidArgument && e.message().contains("raft_addr"),
        "{e}"
    );
    // Bad enrollment and join tokens: refused, then rate-limited; the log does not move.
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..100 {
        let e = if i % 2 == 0 {
            c.racks()
                .register_rack(RegisterRackRequest {
                    token: format!("ingotrack_made_up_{i}"),
                    name: "rx".into(),
                    zone: "default".into(),
                    csr_pem: rack_csr.clone(),
                })
                .await
                .map(|_| ())
                .unwrap_err()
        } else {
            c.cluster()
                .join_region(join(
                    &format!("ingotjoin_made_up_{i}"),
                    "127.0.0.1:8".into(),
                ))
                .await
                .map(|_| ())
                .unwrap_err()
        };
        if e.code() == Code::ResourceExhausted {
            assert!(e.message().contains("retry in"), "{e}");
        } else {
            assert_eq!(e.code(), Code::Unauthenticated, "{e}");
        }
        *codes.entry(format!("{:?}", e.code())).or_default() += 1;
    }
    eprintln!("100 bad-token calls: {codes:?}");
    let after = last_log_index(&c).await;
    assert_eq!(
        after, before,
        "bad tokens must not become log entries ({codes:?})"
    );
    let limited = codes.get("ResourceExhausted").copied().unwrap_or(0);
    assert!(limited >= 80, "the rate limit kicks in: {codes:?}");
    // The budget refills: after a while the peer may try again (and is told why it failed).
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let e = c
        .cluster()
        .join_region(join("ingotjoin_made_up", "127.0.0.1:8".into()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
}

/// BMC details no user may see, in any machine view.
const BMC_SECRETS: [&str; 6] = [
    "hunter22",
    "bmc-77.example",
    "ops:",
    "10.77.0.2",
    "bmcadmin77",
    "pw-77",
];

/// Fails if the debug form of `what` shows any of `needles`.
fn assert_hides(who: &str, what: &impl std::fmt::Debug, needles: &[&str]) {
    let text = format!("{what:?}");
    for n in needles {
        assert!(!text.contains(n), "{who} was shown {n:?}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_see_no_other_users_allocation_and_no_bmc_details() {
    use ingot_tests::{ready_machine, small_inventory, user_clients};
    use tokio_stream::StreamExt;
    let tc = TestCluster::start("leaks", 1, &[]).await.unwrap();
    let c = tc.clients();
    let m1 = ready_machine(&c, 12, 1, small_inventory()).await.unwrap();
    let m2 = ready_machine(&c, 12, 2, small_inventory()).await.unwrap();
    let alice = user_clients(&c, "alice").await.unwrap();
    let bob = user_clients(&c, "bob").await.unwrap();

    // Bob watches everything he may see; the pool's machines change while he watches.
    let mut watch = bob
        .machines()
        .watch(WatchRequest {
            view: MachineView::Full as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let params = |kv: &[(&str, &str)]| {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let powers = [
        (
            &m1.system_id,
            PowerParameters {
                driver: "webhook".into(),
                params: params(&[
                    ("on_url", "https://ops:hunter22@bmc-77.example:8443/on"),
                    ("off_url", "https://ops:hunter22@bmc-77.example:8443/off"),
                    (
                        "query_url",
                        "https://ops:hunter22@bmc-77.example:8443/state",
                    ),
                    ("username", "bmcadmin77"),
                ]),
            },
        ),
        (
            &m2.system_id,
            PowerParameters {
                driver: "ipmi".into(),
                params: params(&[
                    ("address", "10.77.0.2"),
                    ("username", "bmcadmin77"),
                    ("password", "pw-77"),
                ]),
            },
        ),
    ];
    for (id, power) in powers {
        c.machines()
            .update_machine(UpdateMachineRequest {
                system_id: id.clone(),
                power: Some(power),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let got = alice
        .machines()
        .allocate(AllocateRequest {
            request_id: "alice-req-1".into(),
            consumer: "alice-consumer".into(),
            count: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.machines.len(), 2);
    assert_hides("alice (allocate)", &got, &BMC_SECRETS);

    // Bob's watch: both machines as they left his view, without Alice's name, consumer or request id.
    let mut left = 0;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while left < 2 {
        let item = tokio::time::timeout_at(deadline, watch.next())
            .await
            .expect("bob's watch shows both machines being allocated")
            .unwrap()
            .unwrap();
        assert_hides(
            "bob (watch)",
            &item,
            &[
                &["alice", "alice-consumer", "alice-req-1"][..],
                &BMC_SECRETS[..],
            ]
            .concat(),
        );
        if item
            .machine
            .as_ref()
            .is_some_and(|m| m.status == MachineStatus::Allocated as i32)
        {
            left += 1;
        }
    }

    // Alice's own machines: her allocation, but no BMC address, username or URL, in any view.
    for view in [MachineView::Basic, MachineView::Full] {
        let list = alice
            .machines()
            .list_machines(ListMachinesRequest {
                view: view as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(list.machines.len() + list.encoded_machines.len(), 2);
        assert_hides("alice (list)", &list, &BMC_SECRETS);
        assert!(format!("{list:?}").contains("alice-consumer"));
    }
    for m in [&m1, &m2] {
        let mine = alice
            .machines()
            .get_machine(GetMachineRequest {
                key: Some(get_machine_request::Key::SystemId(m.system_id.clone())),
                view: MachineView::Full as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(mine.owner, "alice");
        assert_hides("alice (get)", &mine, &BMC_SECRETS);
        // The admin still sees them (the control experiment).
        let admin = ingot_tests::get(&c, &m.system_id).await.unwrap();
        assert!(
            format!("{admin:?}").contains("bmcadmin77"),
            "an admin sees the BMC username: {admin:?}"
        );
    }
    let mut alice_watch = alice
        .machines()
        .watch(WatchRequest {
            from_revision: 1,
            view: MachineView::Full as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = 0;
    while seen < 4 {
        let item = tokio::time::timeout(std::time::Duration::from_secs(10), alice_watch.next())
            .await
            .expect("alice's watch replays the history")
            .unwrap()
            .unwrap();
        assert_hides("alice (watch)", &item, &BMC_SECRETS);
        seen += 1;
    }
    for (who, clients) in [("alice", &alice), ("bob", &bob)] {
        let events = ingot_tests::all_events(clients, ListEventsRequest::default(), 100, 10)
            .await
            .unwrap();
        assert_hides(&format!("{who} (events)"), &events, &BMC_SECRETS);
        if who == "bob" {
            assert_hides("bob (events)", &events, &["alice-consumer", "alice-req-1"]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_directories_and_key_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let tc = TestCluster::start("modes", 1, &[]).await.unwrap();
    let rack = tc.cluster.add_rack("rm", "zm").await.unwrap();
    let dd = tc.cluster.region(1).data_dir.clone();
    let mode = |p: std::path::PathBuf| {
        std::fs::metadata(&p)
            .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    for d in [
        dd.clone(),
        dd.join("db"),
        dd.join("tls"),
        rack.dir.clone(),
        rack.dir.join("tls"),
    ] {
        assert_eq!(mode(d.clone()), 0o700, "{} must be private", d.display());
    }
    for f in [
        dd.join("tls/region.key"),
        dd.join("admin.token"),
        rack.dir.join("tls/rack.key"),
    ] {
        assert_eq!(mode(f.clone()), 0o600, "{} must be 0600", f.display());
    }
}

/// An open watch is as good as its token now, not when it opened: revoking the token ends the stream
/// with UNAUTHENTICATED, and demoting its admin ends it with PERMISSION_DENIED (the client reconnects
/// and sees what a user may see).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_watch_ends_when_its_token_is_revoked_or_its_role_changes() {
    let tc = TestCluster::start("watch-revoke", 1, &[]).await.unwrap();
    let admin = tc.clients();
    let (carol_id, carol_secret) = user_with_token(&admin, "carol", Role::User).await;
    let (_, dave_secret) = user_with_token(&admin, "dave", Role::Admin).await;
    let open = |secret: String| {
        let c = tc.clients().with_token(&secret).unwrap();
        async move {
            c.machines()
                .watch(WatchRequest::default())
                .await
                .unwrap()
                .into_inner()
        }
    };
    let mut carol = open(carol_secret).await;
    let mut dave = open(dave_secret).await;
    // Drains a stream until it ends with an error, or fails after 10 s.
    async fn ended(s: &mut tonic::Streaming<WatchResponse>) -> tonic::Status {
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                match s.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("the stream ended without a reason"),
                    Err(e) => return e,
                }
            }
        })
        .await;
        r.expect("the watch must end once its token no longer holds")
    }
    admin
        .users()
        .revoke_token(RevokeTokenRequest { id: carol_id })
        .await
        .unwrap();
    let e = ended(&mut carol).await;
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    admin
        .users()
        .update_user(UpdateUserRequest {
            name: "dave".into(),
            role: Role::User as i32,
        })
        .await
        .unwrap();
    let e = ended(&mut dave).await;
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
}
