//! The rack against tiny in-process fake regions (tonic over TLS, certificates from a test cluster CA):
//! enrollment by token, and the session loop's failover with exactly-once command execution.

use ingot_common::pki::{self, ClusterCa, Identity as PkiIdentity};
use ingot_proto::rack::v1::rack_message::Msg as RackMsg;
use ingot_proto::rack::v1::rack_session_service_server::{
    RackSessionService, RackSessionServiceServer,
};
use ingot_proto::rack::v1::region_message::Msg as RegionMsg;
use ingot_proto::rack::v1::{
    HeartbeatAck, Hello, PowerCommand, PowerCommandResult, RackMessage, RegionMessage, Regions,
    Welcome,
};
use ingot_proto::v1::rack_service_server::{RackService, RackServiceServer};
use ingot_proto::v1::{
    CreateEnrollmentTokenRequest, CreateEnrollmentTokenResponse, GetRackRequest, ListRacksRequest,
    ListRacksResponse, Rack, RegisterRackRequest, RegisterRackResponse, RevokeRackRequest,
};
use ingot_rack::config::{DataDir, RackConfig, TlsFiles};
use ingot_rack::drivers::file;
use ingot_rack::register::{register, RegisterArgs};
use ingot_rack::session::{self, SessionConfig};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

fn provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,h2=warn,tower=warn,hyper=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A region's server TLS: its certificate from `ca`, client certificates required (like the cluster
/// listener) when `mutual`.
fn server_tls(ca: &ClusterCa, id: u64, mutual: bool) -> ServerTlsConfig {
    let (cert, key) = ca
        .issue(&PkiIdentity::region(id, &["127.0.0.1:1"]))
        .unwrap();
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if mutual {
        tls.client_ca_root(Certificate::from_pem(&ca.cert_pem))
    } else {
        tls
    }
}

async fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap().to_string();
    (l, a)
}

// ---------------------------------------------------------------- enrollment

/// RackService with one single-use token.
struct FakeEnroll {
    ca: ClusterCa,
    used: AtomicBool,
    cluster_endpoints: Vec<String>,
}

#[tonic::async_trait]
impl RackService for FakeEnroll {
    async fn create_enrollment_token(
        &self,
        _: Request<CreateEnrollmentTokenRequest>,
    ) -> Result<Response<CreateEnrollmentTokenResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn register_rack(
        &self,
        req: Request<RegisterRackRequest>,
    ) -> Result<Response<RegisterRackResponse>, Status> {
        let r = req.into_inner();
        if r.token != "good-token" || self.used.swap(true, Ordering::SeqCst) {
            return Err(Status::permission_denied(
                "enrollment token is unknown, expired or already used: ask an admin for a new one",
            ));
        }
        let cert_pem = self
            .ca
            .sign_csr(
                &r.csr_pem,
                &PkiIdentity {
                    common_name: format!("rack-{}", r.name),
                    sans: vec![],
                },
            )
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(RegisterRackResponse {
            cert_pem,
            ca_pem: self.ca.cert_pem.clone(),
            api_endpoints: vec!["127.0.0.1:5240".into()],
            cluster_endpoints: self.cluster_endpoints.clone(),
        }))
    }
    async fn list_racks(
        &self,
        _: Request<ListRacksRequest>,
    ) -> Result<Response<ListRacksResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_rack(&self, _: Request<GetRackRequest>) -> Result<Response<Rack>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn revoke_rack(&self, _: Request<RevokeRackRequest>) -> Result<Response<Rack>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

#[tokio::test]
async fn register_writes_the_data_dir_and_refuses_a_reused_token() {
    provider();
    let ca = ClusterCa::generate("t").unwrap();
    let (l, addr) = listener().await;
    let svc = FakeEnroll {
        ca: ca.clone(),
        used: AtomicBool::new(false),
        cluster_endpoints: vec!["127.0.0.1:5241".into()],
    };
    tokio::spawn(
        Server::builder()
            .tls_config(server_tls(&ca, 1, false))
            .unwrap()
            .add_service(RackServiceServer::new(svc))
            .serve_with_incoming(TcpListenerStream::new(l)),
    );
    let d = tempfile::tempdir().unwrap();
    let ca_file = d.path().join("ca.crt");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    // A port nobody listens on first: register moves on to the next URL.
    let (dead, dead_addr) = listener().await;
    drop(dead);
    let args = RegisterArgs {
        data_dir: d.path().join("rack"),
        regions: vec![format!("https://{dead_addr},https://{addr}")],
        token: "good-token".into(),
        name: "r1".into(),
        zone: "z1".into(),
        ca_file,
    };
    let rack = register(args.clone()).await.unwrap();
    assert_eq!(rack.cluster_endpoints, vec!["127.0.0.1:5241".to_string()]);
    let dd = DataDir::new(d.path().join("rack"));
    assert_eq!(dd.load_rack().unwrap(), rack);
    let tls = dd.load_tls().unwrap();
    assert_eq!(tls.ca_pem, ca.cert_pem);
    let der = pki::first_cert_der(&tls.cert_pem).unwrap();
    assert_eq!(pki::common_name(&der).as_deref(), Some("rack-r1"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dd.key_path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Same directory again: refused locally.
    let e = register(args.clone()).await.unwrap_err().to_string();
    assert!(e.contains("already holds a registered rack"), "{e}");
    // Reused token into a fresh directory: the server's message comes through.
    let e = register(RegisterArgs {
        data_dir: d.path().join("rack2"),
        ..args
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("already used"), "{e}");
    assert!(!d.path().join("rack2").join("rack.json").exists());
}

// ---------------------------------------------------------------- session and failover

#[derive(Debug)]
enum Event {
    Hello(u64, Hello, Instant),
    Result(u64, PowerCommandResult),
}

/// RackSessionService that welcomes, sends one command, and (optionally) kills the stream once the result
/// arrives — and refuses every later session, like a region that died.
struct FakeRegion {
    id: u64,
    endpoints: Arc<Mutex<Vec<String>>>,
    command: PowerCommand,
    kill_after_result: bool,
    dead: Arc<AtomicBool>,
    events: mpsc::UnboundedSender<Event>,
}

#[tonic::async_trait]
impl RackSessionService for FakeRegion {
    type SessionStream = ReceiverStream<Result<RegionMessage, Status>>;

    async fn session(
        &self,
        req: Request<Streaming<RackMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        if self.dead.load(Ordering::SeqCst) {
            return Err(Status::unavailable("this region is gone"));
        }
        let certs = req
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("no cert"))?;
        let cn = pki::common_name(certs[0].as_ref());
        if cn.as_deref() != Some("rack-r1") {
            return Err(Status::permission_denied(format!("not a rack: {cn:?}")));
        }
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let (id, events, cmd, kill, dead) = (
            self.id,
            self.events.clone(),
            self.command.clone(),
            self.kill_after_result,
            self.dead.clone(),
        );
        let endpoints = self.endpoints.lock().unwrap().clone();
        tokio::spawn(async move {
            let Ok(Some(RackMessage {
                msg: Some(RackMsg::Hello(h)),
            })) = inbound.message().await
            else {
                return;
            };
            let _ = events.send(Event::Hello(id, h, Instant::now()));
            let welcome = Welcome {
                region_id: id,
                region_name: format!("fake{id}"),
                session_id: format!("s{id}"),
                heartbeat_ms: 0,
                lease_ms: 0,
                regions: Some(Regions { endpoints }),
            };
            for m in [RegionMsg::Welcome(welcome), RegionMsg::PowerCommand(cmd)] {
                let _ = tx.send(Ok(RegionMessage { msg: Some(m) })).await;
            }
            while let Ok(Some(m)) = inbound.message().await {
                if let Some(RackMsg::PowerCommandResult(r)) = m.msg {
                    let _ = events.send(Event::Result(id, r));
                    if kill {
                        dead.store(true, Ordering::SeqCst);
                        let _ = tx.send(Err(Status::unavailable("region dying"))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn next_event(rx: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no event within 10 s")
        .expect("events closed")
}

fn ops_with_id(state_dir: &std::path::Path, id: u64) -> usize {
    file::read_state(state_dir, "m1")
        .unwrap()
        .ops
        .iter()
        .filter(|o| o.id == id)
        .count()
}

fn sim_command(id: u64, state_dir: &std::path::Path) -> PowerCommand {
    PowerCommand {
        id,
        system_id: "m1".into(),
        action: "on".into(),
        driver: "sim".into(),
        params: HashMap::from([("state_dir".into(), state_dir.display().to_string())]),
    }
}

/// Serves a [`FakeRegion`] on `l`.
fn serve_fake(ca: &ClusterCa, l: TcpListener, fake: FakeRegion) {
    let tls = server_tls(ca, fake.id, true);
    tokio::spawn(
        Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(RackSessionServiceServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(l)),
    );
}

/// A registered rack data directory (certificate from `ca`) that knows only `first`.
pub(crate) fn rack_dir(ca: &ClusterCa, root: &std::path::Path, first: &str) -> DataDir {
    let dd = DataDir::new(root.join("rack"));
    let (cert_pem, key_pem) = ca
        .issue(&PkiIdentity {
            common_name: "rack-r1".into(),
            sans: vec![],
        })
        .unwrap();
    dd.save_tls(&TlsFiles {
        ca_pem: ca.cert_pem.clone(),
        cert_pem,
        key_pem,
    })
    .unwrap();
    dd.save_rack(&RackConfig {
        name: "r1".into(),
        zone: "z1".into(),
        api_endpoints: vec![],
        cluster_endpoints: vec![first.to_string()],
        registered_ms: 0,
    })
    .unwrap();
    dd
}

type Running = (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<Result<(), session::SessionError>>,
);

fn start_rack(dd: DataDir) -> Running {
    let cfg = SessionConfig::load(dd, Duration::from_millis(100), 4).unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    (stop, tokio::spawn(session::run(cfg, rx)))
}

async fn stop_rack((stop, task): Running) {
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fails_over_and_answers_redelivered_command_from_the_done_store() {
    provider();
    let ca = ClusterCa::generate("t").unwrap();
    let d = tempfile::tempdir().unwrap();
    let state_dir = d.path().join("bmc");
    let command = sim_command(42, &state_dir);
    let (l1, a1) = listener().await;
    let (l2, a2) = listener().await;
    let endpoints = Arc::new(Mutex::new(vec![a1.clone(), a2.clone()]));
    let (ev_tx, mut events) = mpsc::unbounded_channel();
    let dead1 = Arc::new(AtomicBool::new(false));
    for (id, l, kill, dead) in [
        (1, l1, true, dead1.clone()),
        (2, l2, false, Arc::new(AtomicBool::new(false))),
    ] {
        let fake = FakeRegion {
            id,
            endpoints: endpoints.clone(),
            command: command.clone(),
            kill_after_result: kill,
            dead,
            events: ev_tx.clone(),
        };
        serve_fake(&ca, l, fake);
    }
    let dd = rack_dir(&ca, d.path(), &a1);
    let rack = start_rack(dd.clone());

    // Region 1: Hello, the command runs once, its result arrives, then the region dies.
    let Event::Hello(1, hello, _) = next_event(&mut events).await else {
        panic!("expected Hello on region 1")
    };
    assert_eq!(hello.services, vec!["power".to_string()]);
    assert_eq!(
        hello.drivers,
        ingot_rack::drivers::Drivers::NAMES
            .map(String::from)
            .to_vec()
    );
    assert_eq!(hello.capacity, 4);
    assert_eq!(hello.version, env!("CARGO_PKG_VERSION"));
    let Event::Result(1, r) = next_event(&mut events).await else {
        panic!("expected the result on region 1")
    };
    let killed = Instant::now();
    assert!(r.success && r.id == 42 && r.power_state == "on", "{r:?}");

    // The rack fails over to region 2 (learned from Welcome), says Hello again, and the re-delivered
    // command is answered from the done-store.
    let Event::Hello(2, _, at) = next_event(&mut events).await else {
        panic!("expected Hello on region 2")
    };
    assert!(at.duration_since(killed) < Duration::from_secs(2));
    let Event::Result(2, r2) = next_event(&mut events).await else {
        panic!("expected the result on region 2")
    };
    assert_eq!(r2, r);
    assert_eq!(ops_with_id(&state_dir, 42), 1);
    // Welcome's region list was persisted.
    assert_eq!(dd.load_rack().unwrap().cluster_endpoints, vec![a1, a2]);
    stop_rack(rack).await;

    // A restarted rack: region 1 refuses (dead), region 2 re-delivers again; still no second run.
    let rack = start_rack(dd.clone());
    let Event::Hello(2, _, _) = next_event(&mut events).await else {
        panic!("expected Hello on region 2 after restart")
    };
    let Event::Result(2, r3) = next_event(&mut events).await else {
        panic!("expected the result after restart")
    };
    assert_eq!(r3, r);
    assert_eq!(ops_with_id(&state_dir, 42), 1);
    stop_rack(rack).await;
    assert!(dead1.load(Ordering::SeqCst));
}

/// A TCP proxy to `upstream` that, once `frozen` is set, stops forwarding in both directions but keeps the
/// sockets open: a region that vanished without a TCP reset (power loss, partition).
async fn black_hole_proxy(upstream: String, frozen: Arc<AtomicBool>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (l, addr) = listener().await;
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            let frozen = frozen.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let pump = |mut r: tokio::net::tcp::OwnedReadHalf,
                            mut w: tokio::net::tcp::OwnedWriteHalf,
                            frozen: Arc<AtomicBool>| async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match r.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if frozen.load(Ordering::SeqCst) {
                            // Hold both halves open forever, forwarding nothing.
                            std::future::pending::<()>().await;
                        }
                        if w.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                tokio::spawn(pump(cr, sw, frozen.clone()));
                tokio::spawn(pump(sr, cw, frozen));
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notices_a_silent_region_by_keepalive_and_fails_over() {
    provider();
    let ca = ClusterCa::generate("t").unwrap();
    let d = tempfile::tempdir().unwrap();
    let state_dir = d.path().join("bmc");
    let command = sim_command(7, &state_dir);
    let (l1, a1) = listener().await;
    let (l2, a2) = listener().await;
    let frozen = Arc::new(AtomicBool::new(false));
    let p1 = black_hole_proxy(a1, frozen.clone()).await;
    let endpoints = Arc::new(Mutex::new(vec![p1.clone(), a2]));
    let (ev_tx, mut events) = mpsc::unbounded_channel();
    for (id, l) in [(1, l1), (2, l2)] {
        let fake = FakeRegion {
            id,
            endpoints: endpoints.clone(),
            command: command.clone(),
            kill_after_result: false,
            dead: Arc::new(AtomicBool::new(false)),
            events: ev_tx.clone(),
        };
        serve_fake(&ca, l, fake);
    }
    let rack = start_rack(rack_dir(&ca, d.path(), &p1));
    let Event::Hello(1, _, _) = next_event(&mut events).await else {
        panic!("expected Hello on region 1")
    };
    let Event::Result(1, r) = next_event(&mut events).await else {
        panic!("expected the result on region 1")
    };
    frozen.store(true, Ordering::SeqCst);
    let silent = Instant::now();
    let Event::Hello(2, _, at) = next_event(&mut events).await else {
        panic!("expected Hello on region 2")
    };
    let took = at.duration_since(silent);
    // Keepalive: a ping after 0.5 s of silence, 1 s to answer, then an immediate reconnect.
    assert!(took < Duration::from_secs(2), "failover took {took:?}");
    let Event::Result(2, r2) = next_event(&mut events).await else {
        panic!("expected the result on region 2")
    };
    assert_eq!(r2, r);
    assert_eq!(ops_with_id(&state_dir, 7), 1);
    stop_rack(rack).await;
}

// ---------------------------------------------------------------- once means once

/// One session as a test drives it: what to send the rack, and what the rack sends.
struct Driven {
    tx: mpsc::Sender<Result<RegionMessage, Status>>,
    inbound: Streaming<RackMessage>,
}

impl Driven {
    async fn send(&self, m: RegionMsg) {
        self.tx
            .send(Ok(RegionMessage { msg: Some(m) }))
            .await
            .unwrap();
    }

    /// Waits for the Hello and answers Welcome with `lease_ms` (heartbeats every 50 ms).
    async fn welcome(&mut self, lease_ms: u32) {
        let m = tokio::time::timeout(Duration::from_secs(5), self.inbound.message())
            .await
            .expect("no Hello within 5 s")
            .unwrap()
            .unwrap();
        assert!(matches!(m.msg, Some(RackMsg::Hello(_))), "{m:?}");
        self.send(RegionMsg::Welcome(Welcome {
            region_id: 1,
            region_name: "driven".into(),
            session_id: "s".into(),
            heartbeat_ms: 50,
            lease_ms,
            regions: None,
        }))
        .await;
    }

    /// The next power command result within `limit`, skipping heartbeats; `None` if the stream ends or
    /// nothing comes.
    async fn result(&mut self, limit: Duration) -> Option<PowerCommandResult> {
        let until = tokio::time::Instant::now() + limit;
        loop {
            let m = tokio::time::timeout_at(until, self.inbound.message()).await;
            match m {
                Ok(Ok(Some(RackMessage {
                    msg: Some(RackMsg::PowerCommandResult(r)),
                }))) => return Some(r),
                Ok(Ok(Some(_))) => continue,
                _ => return None,
            }
        }
    }
}

/// A RackSessionService that hands every session to the test.
struct DrivenRegion {
    sessions: mpsc::UnboundedSender<Driven>,
}

#[tonic::async_trait]
impl RackSessionService for DrivenRegion {
    type SessionStream = ReceiverStream<Result<RegionMessage, Status>>;

    async fn session(
        &self,
        req: Request<Streaming<RackMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let (tx, rx) = mpsc::channel(256);
        let _ = self.sessions.send(Driven {
            tx,
            inbound: req.into_inner(),
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A driven region on a fresh port and a rack data directory pointing at it.
async fn driven(
    ca: &ClusterCa,
    root: &std::path::Path,
) -> (DataDir, mpsc::UnboundedReceiver<Driven>) {
    let (l, a) = listener().await;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(
        Server::builder()
            .tls_config(server_tls(ca, 1, true))
            .unwrap()
            .add_service(RackSessionServiceServer::new(DrivenRegion { sessions: tx }))
            .serve_with_incoming(TcpListenerStream::new(l)),
    );
    (rack_dir(ca, root, &a), rx)
}

async fn next_session(rx: &mut mpsc::UnboundedReceiver<Driven>) -> Driven {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("no session within 5 s")
        .unwrap()
}

fn ops_other_than_query(state_dir: &std::path::Path, id: u64) -> usize {
    file::read_state(state_dir, "m1")
        .unwrap()
        .ops
        .iter()
        .filter(|o| o.id == id && o.action != "query")
        .count()
}

/// Nemesis finding: rack `rb` started `cycle` #111, was SIGKILLed before recording its result, and cycled
/// the machine again when the command was re-delivered after its restart. Now the intent in done.log
/// stops the second run: the rack reads the power state and answers `interrupted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cycle_started_before_a_crash_is_not_run_again() {
    provider();
    let ca = ClusterCa::generate("t").unwrap();
    let d = tempfile::tempdir().unwrap();
    let state_dir = d.path().join("bmc");
    let (dd, mut sessions) = driven(&ca, d.path()).await;
    // What the killed rack left: an older result, and the intent of #111 without a result.
    std::fs::write(
        dd.done_log(),
        "{\"id\":110,\"success\":true,\"error_kind\":\"\",\"message\":\"ok\",\"power_state\":\"on\",\"done_ms\":1}\n\
         {\"id\":111,\"started_ms\":2,\"action\":\"cycle\"}\n",
    )
    .unwrap();
    let rack = start_rack(dd.clone());
    let mut s = next_session(&mut sessions).await;
    s.welcome(0).await;
    let mut cycle = sim_command(111, &state_dir);
    cycle.action = "cycle".into();
    s.send(RegionMsg::PowerCommand(cycle.clone())).await;
    let r = s
        .result(Duration::from_secs(5))
        .await
        .expect("a result for #111");
    assert_eq!(r.id, 111);
    assert!(!r.success, "{r:?}");
    assert_eq!(r.error_kind, "interrupted", "{r:?}");
    assert_eq!(r.power_state, "off", "the power state read: {r:?}");
    assert!(
        r.message.contains("issue the command again"),
        "{}",
        r.message
    );
    assert_eq!(ops_other_than_query(&state_dir, 111), 0, "cycle ran again");
    // The answer is final: another re-delivery gets the same result without touching the BMC.
    s.send(RegionMsg::PowerCommand(cycle)).await;
    assert_eq!(s.result(Duration::from_secs(5)).await, Some(r));
    // A cycle never started before runs once and is recorded.
    let mut fresh = sim_command(112, &state_dir);
    fresh.action = "cycle".into();
    s.send(RegionMsg::PowerCommand(fresh)).await;
    let r = s
        .result(Duration::from_secs(5))
        .await
        .expect("a result for #112");
    assert!(r.success && r.power_state == "on", "{r:?}");
    assert_eq!(ops_other_than_query(&state_dir, 112), 1);
    stop_rack(rack).await;
    let log = std::fs::read_to_string(dd.done_log()).unwrap();
    assert!(
        log.contains("\"started_ms\""),
        "the intent of #112 was written: {log}"
    );
}

/// Nemesis finding: rack `ra` received `boot-pxe` #52, was SIGSTOPped past the region's rack grace (the
/// region moved the BMC and another rack ran #52), then woke and ran it too. Now a rack starts a command
/// only while the region recorded one of its heartbeats recently enough; otherwise it drops the command
/// unanswered and reconnects, and runs it on the new session once that session is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rack_whose_lease_ran_out_does_not_run_a_delivered_command() {
    provider();
    let ca = ClusterCa::generate("t").unwrap();
    let d = tempfile::tempdir().unwrap();
    let state_dir = d.path().join("bmc");
    let (dd, mut sessions) = driven(&ca, d.path()).await;
    let rack = start_rack(dd);
    let mut cmd = sim_command(52, &state_dir);
    cmd.action = "boot-pxe".into();

    // The session is recorded (Hello acknowledged), then no heartbeat is: after two thirds of the
    // 600 ms lease the rack must not act on #52 any more.
    let mut s = next_session(&mut sessions).await;
    s.welcome(600).await;
    s.send(RegionMsg::HeartbeatAck(HeartbeatAck { seq: 0 }))
        .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    s.send(RegionMsg::PowerCommand(cmd.clone())).await;
    assert_eq!(
        s.result(Duration::from_secs(2)).await,
        None,
        "ran #52 without a lease"
    );
    assert_eq!(ops_with_id(&state_dir, 52), 0);

    // It reconnected. On the new session #52 arrives before the session is recorded: it waits for the
    // acknowledgement, then runs once.
    let mut s2 = next_session(&mut sessions).await;
    s2.welcome(600).await;
    s2.send(RegionMsg::PowerCommand(cmd.clone())).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        ops_with_id(&state_dir, 52),
        0,
        "ran before the session was recorded"
    );
    s2.send(RegionMsg::HeartbeatAck(HeartbeatAck { seq: 0 }))
        .await;
    let r = s2
        .result(Duration::from_secs(5))
        .await
        .expect("a result for #52");
    assert!(r.success, "{r:?}");
    assert_eq!(ops_with_id(&state_dir, 52), 1);
    // Heartbeats keep the lease: acknowledged as they come, a command long after the Hello still runs.
    let mut seen = 0;
    let until = Instant::now() + Duration::from_millis(900);
    while Instant::now() < until {
        if let Ok(Ok(Some(RackMessage {
            msg: Some(RackMsg::Heartbeat(h)),
        }))) = tokio::time::timeout(Duration::from_millis(200), s2.inbound.message()).await
        {
            s2.send(RegionMsg::HeartbeatAck(HeartbeatAck { seq: h.seq }))
                .await;
            seen += 1;
        }
    }
    assert!(seen >= 5, "heartbeats every 50 ms, saw {seen}");
    let mut later = sim_command(53, &state_dir);
    later.action = "on".into();
    s2.send(RegionMsg::PowerCommand(later)).await;
    let r = s2
        .result(Duration::from_secs(5))
        .await
        .expect("a result for #53");
    assert!(r.success, "{r:?}");
    stop_rack(rack).await;
}

// ---------------------------------------------------------------- the boot messages on the session

/// The next LeaseCommit the rack sends on `s` within 5 s (heartbeats skipped).
async fn lease_commit(s: &mut Driven) -> ingot_proto::rack::v1::LeaseCommit {
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(until, s.inbound.message()).await {
            Ok(Ok(Some(RackMessage {
                msg: Some(RackMsg::LeaseCommit(c)),
            }))) => return c,
            Ok(Ok(Some(_))) => continue,
            other => panic!("no LeaseCommit within 5 s: {other:?}"),
        }
    }
}

/// A rack with a boot service: its Hello says `dhcp`, the region's BootConfig reaches the engine, a
/// lease commit goes out on the session, and a batch unanswered when the session breaks is sent again on
/// the next one, whose answer releases the held ACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_session_carries_the_boot_messages_and_resends_a_lost_batch() {
    use crate::boot_service::{packet, FakeEngine, FakeSink};
    use dhcproto::v4::MessageType;
    use ingot_rack::boot::dhcp::server::{PacketHandler, ReplySink};
    use ingot_rack::boot::journal::{Journal, MAX_ENTRIES};
    use ingot_rack::boot::service::{BootService, ServiceSettings};
    provider();
    let ca = ClusterCa::generate("t").unwrap();
    let d = tempfile::tempdir().unwrap();
    let (dd, mut sessions) = driven(&ca, d.path()).await;
    let (engine, log) = FakeEngine::new();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let journal = Journal::open(&dd.lease_journal(), MAX_ENTRIES).unwrap();
    let svc = BootService::start(
        ServiceSettings::default(),
        Box::new(engine),
        journal,
        rx.clone(),
    );
    let mut cfg = SessionConfig::load(dd, Duration::from_millis(100), 4).unwrap();
    cfg.boot = Some(svc.clone());
    let task = tokio::spawn(session::run(cfg, rx));

    let mut s = next_session(&mut sessions).await;
    let hello = tokio::time::timeout(Duration::from_secs(5), s.inbound.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(RackMsg::Hello(h)) = hello.msg else {
        panic!("expected Hello: {hello:?}")
    };
    assert_eq!(
        h.services,
        vec!["power".to_string(), "dhcp".to_string(), "http".to_string()]
    );
    s.send(RegionMsg::Welcome(Welcome {
        region_id: 1,
        region_name: "driven".into(),
        session_id: "s".into(),
        heartbeat_ms: 50,
        lease_ms: 0,
        regions: None,
    }))
    .await;
    s.send(RegionMsg::BootConfig(ingot_proto::rack::v1::BootConfig {
        subnets: vec![ingot_proto::rack::v1::SubnetConfig {
            cidr: "10.99.0.0/24".into(),
            role: "primary".into(),
            active: true,
            ..Default::default()
        }],
        known: vec![],
    }))
    .await;
    let t0 = Instant::now();
    while log.lock().unwrap().configs.is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "BootConfig never reached the engine"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The session is up: the engine was told (offline at start, then online).
    assert_eq!(log.lock().unwrap().online, vec![false, true]);

    let sink = Arc::new(FakeSink::default());
    let reply: Arc<dyn ReplySink> = sink.clone();
    svc.handle(
        &packet(MessageType::Request, 1, false, false),
        &crate::boot_service::via(),
        &reply,
    );
    let first = lease_commit(&mut s).await;
    assert_eq!(first.leases.len(), 1);
    // The region dies before answering.
    let _ = s.tx.send(Err(Status::unavailable("region dying"))).await;
    drop(s);
    let mut s2 = next_session(&mut sessions).await;
    s2.welcome(0).await;
    let again = lease_commit(&mut s2).await;
    assert_eq!((again.batch, &again.leases), (first.batch, &first.leases));
    assert!(
        sink.sent.lock().unwrap().is_empty(),
        "no ACK before the commit"
    );
    s2.send(RegionMsg::LeasesCommitted(
        ingot_proto::rack::v1::LeasesCommitted {
            batch: again.batch,
            refused: vec![],
            error: String::new(),
        },
    ))
    .await;
    let t0 = Instant::now();
    while sink.count(MessageType::Ack) != 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no ACK after the commit"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(log.lock().unwrap().committed.len(), 1);

    // A boot intent goes out on the session and its reply, by id, reaches the asker; boot events follow
    // in a BootEvents message.
    let link = svc.link().clone();
    let mac: ingot_common::Mac = "52:54:00:00:00:07".parse().unwrap();
    let ask = tokio::spawn(async move {
        link.boot_intent(
            &ingot_rack::boot::link::IntentKey::Mac(mac),
            Duration::from_secs(5),
        )
        .await
    });
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    let req = loop {
        match tokio::time::timeout_at(until, s2.inbound.message()).await {
            Ok(Ok(Some(RackMessage {
                msg: Some(RackMsg::BootIntentRequest(r)),
            }))) => break r,
            Ok(Ok(Some(_))) => continue,
            other => panic!("no BootIntentRequest within 5 s: {other:?}"),
        }
    };
    assert_eq!(req.mac, "52:54:00:00:00:07");
    s2.send(RegionMsg::BootIntent(Box::new(
        ingot_proto::rack::v1::BootIntentReply {
            id: req.id,
            purpose: "local-disk".into(),
            system_id: "m7".into(),
            ..Default::default()
        },
    )))
    .await;
    let got = ask.await.unwrap().unwrap();
    assert_eq!(
        got.intent.purpose,
        ingot_common::image::BootPurpose::LocalDisk
    );
    svc.events().push(
        mac,
        ingot_common::image::BootStep::Script,
        "purpose local-disk",
    );
    let events = loop {
        match tokio::time::timeout_at(
            tokio::time::Instant::now() + Duration::from_secs(5),
            s2.inbound.message(),
        )
        .await
        {
            Ok(Ok(Some(RackMessage {
                msg: Some(RackMsg::BootEvents(e)),
            }))) => break e,
            Ok(Ok(Some(_))) => continue,
            other => panic!("no BootEvents within 5 s: {other:?}"),
        }
    };
    assert_eq!(events.events[0].step, "script");
    stop_rack((stop, task)).await;
}

/// `ingot-rack run --boot-interface` with an interface this host does not have stops at once, before the
/// "running" line, naming the interface.
#[tokio::test]
async fn run_with_a_missing_boot_interface_fails_naming_it() {
    let ca = ClusterCa::generate("t").unwrap();
    let d = tempfile::tempdir().unwrap();
    let dd = rack_dir(&ca, d.path(), "127.0.0.1:1");
    let missing = format!("isvx{}", std::process::id() % 100_000);
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_ingot-rack"))
            .arg("run")
            .arg("--data-dir")
            .arg(dd.root())
            .args(["--boot-interface", &missing])
            .output(),
    )
    .await
    .expect("ingot-rack run should stop at once")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(!stdout.contains("running"), "{stdout}");
    // Without root the first failure is the privilege, also naming the interface.
    let expected = if rustix::process::geteuid().is_root() {
        format!("boot interface {missing} does not exist")
    } else {
        format!("on boot interface {missing} (port 67) is not permitted")
    };
    assert!(stderr.contains(&expected), "{stderr}");
}
