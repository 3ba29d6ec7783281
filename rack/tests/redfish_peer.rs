//! The `redfish` driver against OpenStack sushy-tools' `sushy-emulator` (a Redfish BMC Ingot did not write),
//! on loopback: power on/off/cycle/soft-off with polling through sushy's random 1–11 s power delay, boot
//! overrides, authentication failures, unreachable BMCs, system selection and HTTPS verification. sushy has
//! no SessionService, so session auth is tested against a small in-process Redfish mock at the end.
//!
//! Peer policy: without sushy-emulator the tests print `SKIPPED: <reason>` and pass, except when `CI` is set,
//! where they fail (install it with scripts/install-test-peers.sh). Every test is bounded by a timeout; the
//! slow power cases run concurrently on separate fake systems.

use ingot_common::power::PowerAction;
use ingot_rack::drivers::redfish::RedfishDriver;
use ingot_rack::drivers::{DriverError, PowerDriver, PowerOutcome, PowerRequest, PowerState};
use ingot_rack::peers::sushy::{Sushy, SushyError, SushyOptions};
use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Runs `f` under a deadline, failing the test when it passes.
async fn bounded<T>(secs: u64, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {secs} s"))
}

/// Starts sushy, or returns None after printing SKIPPED (panics instead when CI is set).
async fn sushy(opts: SushyOptions) -> Option<Sushy> {
    init();
    match Sushy::start(opts).await {
        Ok(s) => Some(s),
        Err(SushyError::Missing(why)) => {
            if std::env::var_os("CI").is_some() {
                panic!("sushy-emulator is required in CI: {why}");
            }
            eprintln!("SKIPPED: {why}");
            None
        }
        Err(e) => panic!("sushy-emulator did not start: {e}"),
    }
}

fn params(s: &Sushy, system: Option<&str>, extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut p: HashMap<String, String> = [
        ("address", s.base_url()),
        ("username", s.username()),
        ("password", s.password()),
        ("power_wait_s", "30"),
        ("timeout_ms", "5000"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if let Some(sys) = system {
        p.insert("system".into(), sys.into());
    }
    for (k, v) in extra {
        p.insert(k.to_string(), v.to_string());
    }
    p
}

fn req(action: PowerAction, params: &HashMap<String, String>) -> PowerRequest {
    PowerRequest {
        command_id: 1,
        system_id: "m1".into(),
        action,
        params: params.clone(),
    }
}

async fn run(
    d: &RedfishDriver,
    action: PowerAction,
    p: &HashMap<String, String>,
) -> Result<PowerOutcome, DriverError> {
    d.run(&req(action, p)).await
}

/// GETs a system as a plain Redfish client would (to check what the driver changed).
async fn get_system(s: &Sushy, id: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("{}/redfish/v1/Systems/{id}", s.base_url()))
        .basic_auth(s.username(), Some(s.password()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn power_on_off_cycle_soft_off() {
    bounded(55, async {
        let Some(off) = sushy(SushyOptions {
            systems: 2,
            ..Default::default()
        })
        .await
        else {
            return;
        };
        let Some(on) = sushy(SushyOptions {
            systems: 1,
            power_on: true,
            ..Default::default()
        })
        .await
        else {
            return;
        };
        let d = RedfishDriver::default();
        let t0 = Instant::now();
        let s1 = params(&off, Some(&off.system_ids()[0]), &[]);
        let s2 = params(&off, Some(&off.system_ids()[1]), &[]);
        let s3 = params(&on, None, &[]);

        // System 1: query, on (polls through the delay), query, off, query.
        let a = async {
            let q = run(&d, PowerAction::Query, &s1).await.unwrap();
            assert_eq!(q.state, PowerState::Off, "{}", q.message);
            let o = run(&d, PowerAction::On, &s1).await.unwrap();
            assert_eq!(o.state, PowerState::On, "{}", o.message);
            assert!(o.message.contains("ResetType On"), "{}", o.message);
            let q = run(&d, PowerAction::Query, &s1).await.unwrap();
            assert_eq!(q.state, PowerState::On, "{}", q.message);
            let again = run(&d, PowerAction::On, &s1).await.unwrap();
            assert!(again.message.contains("already on"), "{}", again.message);
            let o = run(&d, PowerAction::Off, &s1).await.unwrap();
            assert_eq!(o.state, PowerState::Off, "{}", o.message);
            assert!(o.message.contains("ForceOff"), "{}", o.message);
            let q = run(&d, PowerAction::Query, &s1).await.unwrap();
            assert_eq!(q.state, PowerState::Off);
            eprintln!("system 1 (query/on/off) done after {:?}", t0.elapsed());
        };
        // System 2: cycle of an off machine powers it on; cycle of an on machine restarts it (sushy offers
        // no PowerCycle, so ForceRestart) and it ends on.
        let b = async {
            let c = run(&d, PowerAction::Cycle, &s2).await.unwrap();
            assert_eq!(c.state, PowerState::On, "{}", c.message);
            assert!(c.message.contains("was off"), "{}", c.message);
            let c = run(&d, PowerAction::Cycle, &s2).await.unwrap();
            assert_eq!(c.state, PowerState::On, "{}", c.message);
            assert!(c.message.contains("ForceRestart"), "{}", c.message);
            let q = run(&d, PowerAction::Query, &s2).await.unwrap();
            assert_eq!(q.state, PowerState::On);
            eprintln!("system 2 (cycle x2) done after {:?}", t0.elapsed());
        };
        // System 3 (starts on, the only system of its emulator): sushy supports GracefulShutdown.
        let c = async {
            let o = run(&d, PowerAction::SoftOff, &s3).await.unwrap();
            assert_eq!(o.state, PowerState::Off, "{}", o.message);
            assert!(o.message.contains("GracefulShutdown"), "{}", o.message);
            eprintln!("system 3 (soft-off) done after {:?}", t0.elapsed());
        };
        tokio::join!(a, b, c);
    })
    .await;
}

#[tokio::test]
async fn boot_overrides() {
    bounded(30, async {
        let Some(s) = sushy(SushyOptions::default()).await else {
            return;
        };
        let d = RedfishDriver::default();
        let id = s.system_ids()[0].clone();
        let p = params(&s, None, &[]);
        let o = run(&d, PowerAction::BootPxe, &p).await.unwrap();
        assert_eq!(o.state, PowerState::Off);
        assert!(
            o.message.contains("BootSourceOverrideEnabled Once"),
            "{}",
            o.message
        );
        let sys = get_system(&s, &id).await;
        assert_eq!(sys["Boot"]["BootSourceOverrideTarget"], "Pxe", "{sys}");
        // sushy ignores BootSourceOverrideEnabled and always reports Continuous.
        assert_eq!(
            sys["Boot"]["BootSourceOverrideEnabled"], "Continuous",
            "{sys}"
        );

        let o = run(&d, PowerAction::BootDiskPersistent, &p).await.unwrap();
        assert!(
            o.message.contains("every boot from the disk"),
            "{}",
            o.message
        );
        let sys = get_system(&s, &id).await;
        assert_eq!(sys["Boot"]["BootSourceOverrideTarget"], "Hdd", "{sys}");
        assert_eq!(
            sys["Boot"]["BootSourceOverrideEnabled"], "Continuous",
            "{sys}"
        );

        run(&d, PowerAction::BootPxePersistent, &p).await.unwrap();
        assert_eq!(
            get_system(&s, &id).await["Boot"]["BootSourceOverrideTarget"],
            "Pxe"
        );
        run(&d, PowerAction::BootDisk, &p).await.unwrap();
        assert_eq!(
            get_system(&s, &id).await["Boot"]["BootSourceOverrideTarget"],
            "Hdd"
        );
    })
    .await;
}

#[tokio::test]
async fn wrong_password_and_missing_sessions() {
    bounded(30, async {
        let Some(s) = sushy(SushyOptions::default()).await else {
            return;
        };
        let d = RedfishDriver::default();
        let e = run(
            &d,
            PowerAction::Query,
            &params(&s, None, &[("password", "nope")]),
        )
        .await
        .unwrap_err();
        eprintln!("{}: {e}", e.kind());
        assert!(matches!(e, DriverError::Auth(_)), "{e:?}");
        assert!(e.to_string().contains("HTTP 401"), "{e}");
        assert!(!e.to_string().contains("nope"), "password echoed: {e}");

        // The right password works with the same driver (nothing bad was cached).
        let q = run(&d, PowerAction::Query, &params(&s, None, &[]))
            .await
            .unwrap();
        assert_eq!(q.state, PowerState::Off);

        // sushy offers no SessionService: auth=session is unsupported, auto fell back to basic above.
        let e = run(
            &d,
            PowerAction::Query,
            &params(&s, None, &[("auth", "session")]),
        )
        .await
        .unwrap_err();
        eprintln!("{}: {e}", e.kind());
        assert!(matches!(e, DriverError::Unsupported(_)), "{e:?}");
        assert!(e.to_string().contains("no sessions"), "{e}");
    })
    .await;
}

#[tokio::test]
async fn unreachable_bmcs() {
    bounded(30, async {
        let Some(mut s) = sushy(SushyOptions::default()).await else {
            return;
        };
        let d = RedfishDriver::default();
        let p = params(&s, None, &[("timeout_ms", "1000")]);
        run(&d, PowerAction::Query, &p).await.unwrap();
        s.stop();
        let e = run(&d, PowerAction::Query, &p).await.unwrap_err();
        eprintln!("{}: {e}", e.kind());
        assert!(matches!(e, DriverError::Unreachable(_)), "{e:?}");
        assert!(e.to_string().contains("connection refused"), "{e}");

        // A port that accepts connections but never answers: the timeout, named as such.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut p2 = p.clone();
        p2.insert(
            "address".into(),
            format!("http://{}", silent.local_addr().unwrap()),
        );
        p2.insert("timeout_ms".into(), "300".into());
        let t0 = Instant::now();
        let e = run(&d, PowerAction::Query, &p2).await.unwrap_err();
        eprintln!("{}: {e}", e.kind());
        assert!(matches!(e, DriverError::Unreachable(_)), "{e:?}");
        assert!(e.to_string().contains("within 300 ms"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        drop(silent);

        // A host name that does not resolve.
        let mut p3 = p.clone();
        p3.insert("address".into(), "http://bmc.invalid".into());
        let e = run(&d, PowerAction::Query, &p3).await.unwrap_err();
        eprintln!("{}: {e}", e.kind());
        assert!(matches!(e, DriverError::Unreachable(_)), "{e:?}");
        assert!(e.to_string().contains("DNS"), "{e}");
    })
    .await;
}

#[tokio::test]
async fn system_selection() {
    bounded(30, async {
        let Some(s) = sushy(SushyOptions {
            systems: 3,
            ..Default::default()
        })
        .await
        else {
            return;
        };
        let d = RedfishDriver::default();
        let e = run(&d, PowerAction::Query, &params(&s, None, &[]))
            .await
            .unwrap_err();
        eprintln!("{}: {e}", e.kind());
        assert!(matches!(e, DriverError::Bmc(_)), "{e:?}");
        for id in s.system_ids() {
            assert!(e.to_string().contains(id.as_str()), "{id} not listed: {e}");
        }
        assert!(
            e.to_string().contains("set the power parameter system"),
            "{e}"
        );

        let e = run(
            &d,
            PowerAction::Query,
            &params(&s, Some("no-such-system"), &[]),
        )
        .await
        .unwrap_err();
        eprintln!("{}: {e}", e.kind());
        assert!(matches!(e, DriverError::Bmc(_)), "{e:?}");
        assert!(e.to_string().contains(s.system_ids()[2].as_str()), "{e}");

        let q = run(
            &d,
            PowerAction::Query,
            &params(&s, Some(&s.system_ids()[2]), &[]),
        )
        .await
        .unwrap();
        assert_eq!(q.state, PowerState::Off);
        assert!(
            q.message.contains(s.system_ids()[2].as_str()),
            "{}",
            q.message
        );
    })
    .await;
}

#[tokio::test]
async fn https_verification() {
    bounded(40, async {
        if std::process::Command::new("openssl")
            .arg("version")
            .output()
            .is_err()
        {
            eprintln!(
                "SKIPPED: openssl is not installed (needed to make sushy's HTTPS certificate)"
            );
            return;
        }
        let Some(s) = sushy(SushyOptions {
            https: true,
            ..Default::default()
        })
        .await
        else {
            return;
        };
        assert!(s.base_url().starts_with("https://"));
        let ca = s.ca_pem().unwrap().to_string();
        let d = RedfishDriver::default();
        let q = run(
            &d,
            PowerAction::Query,
            &params(&s, None, &[("ca_cert", &ca)]),
        )
        .await
        .unwrap();
        assert_eq!(q.state, PowerState::Off);

        // Verifying against the public roots fails: the BMC's CA is private.
        let e = run(&d, PowerAction::Query, &params(&s, None, &[]))
            .await
            .unwrap_err();
        eprintln!("{}: {e}", e.kind());
        assert!(matches!(e, DriverError::Unreachable(_)), "{e:?}");
        assert!(e.to_string().contains("TLS handshake failed"), "{e}");

        // verify_tls=false accepts it (a self-signed BMC on a trusted network).
        let q = run(
            &d,
            PowerAction::Query,
            &params(&s, None, &[("verify_tls", "false")]),
        )
        .await
        .unwrap();
        assert_eq!(q.state, PowerState::Off);
    })
    .await;
}

/// One Redfish query against sushy, timed: median of 20 after the first (discovery) query.
#[tokio::test]
async fn query_latency() {
    bounded(30, async {
        let Some(s) = sushy(SushyOptions::default()).await else { return };
        let d = RedfishDriver::default();
        let p = params(&s, None, &[]);
        let t0 = Instant::now();
        run(&d, PowerAction::Query, &p).await.unwrap();
        let first = t0.elapsed();
        let mut times = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            run(&d, PowerAction::Query, &p).await.unwrap();
            times.push(t.elapsed());
        }
        times.sort();
        eprintln!(
            "sushy query: first (discovery, 3 requests) {:?}; median of 20 {:?} (min {:?}, max {:?})",
            first, times[10], times[0], times[19]
        );
    })
    .await;
}

/// Session authentication, which sushy does not offer, against a minimal in-process Redfish service:
/// the session is created once and reused, re-created once after the BMC expires it, a wrong password is an
/// `auth` error, PowerCycle is used when allowed, a ResetType outside AllowableValues is `unsupported`, and
/// `close_sessions` logs out.
mod session_mock {
    use super::*;
    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use serde_json::{json, Value};
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Mock {
        tokens: Vec<String>,
        created: usize,
        deleted: usize,
        basic_seen: bool,
        power: String,
        resets: Vec<String>,
    }
    type S = Arc<Mutex<Mock>>;

    fn authed(s: &S, h: &HeaderMap) -> bool {
        let mut m = s.lock().unwrap();
        if h.contains_key("authorization") {
            m.basic_seen = true;
        }
        h.get("x-auth-token")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| m.tokens.iter().any(|x| x == t))
    }

    async fn root() -> Json<Value> {
        Json(json!({
            "Systems": {"@odata.id": "/redfish/v1/Systems"},
            "Links": {"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}}
        }))
    }

    async fn create(State(s): State<S>, Json(b): Json<Value>) -> Response {
        if b["UserName"] != "admin" || b["Password"] != "secret" {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": {"message": "bad login"}})),
            )
                .into_response();
        }
        let mut m = s.lock().unwrap();
        m.created += 1;
        let tok = format!("tok-{}", m.created);
        m.tokens.push(tok.clone());
        let loc = format!("/redfish/v1/SessionService/Sessions/{}", m.created);
        (
            StatusCode::CREATED,
            [("x-auth-token", tok), ("location", loc)],
            "{}",
        )
            .into_response()
    }

    async fn delete(State(s): State<S>, h: HeaderMap, Path(_id): Path<String>) -> StatusCode {
        if !authed(&s, &h) {
            return StatusCode::UNAUTHORIZED;
        }
        s.lock().unwrap().deleted += 1;
        StatusCode::NO_CONTENT
    }

    async fn systems(State(s): State<S>, h: HeaderMap) -> Response {
        if !authed(&s, &h) {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        Json(json!({"Members": [{"@odata.id": "/redfish/v1/Systems/sys-1"}]})).into_response()
    }

    async fn system(State(s): State<S>, h: HeaderMap) -> Response {
        if !authed(&s, &h) {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        let power = s.lock().unwrap().power.clone();
        Json(json!({
            "Id": "sys-1",
            "PowerState": power,
            "Actions": {"#ComputerSystem.Reset": {
                "target": "/redfish/v1/Systems/sys-1/Actions/ComputerSystem.Reset",
                "ResetType@Redfish.AllowableValues": ["On", "ForceOff", "PowerCycle"]
            }}
        }))
        .into_response()
    }

    async fn reset(State(s): State<S>, h: HeaderMap, Json(b): Json<Value>) -> Response {
        if !authed(&s, &h) {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        let t = b["ResetType"].as_str().unwrap_or("").to_string();
        let mut m = s.lock().unwrap();
        m.power = if t == "ForceOff" { "Off" } else { "On" }.into();
        m.resets.push(t);
        StatusCode::NO_CONTENT.into_response()
    }

    #[tokio::test]
    async fn session_auth() {
        init();
        bounded(20, async {
            let state: S = Arc::new(Mutex::new(Mock {
                power: "On".into(),
                ..Default::default()
            }));
            let app = Router::new()
                .route("/redfish/v1", get(root))
                .route("/redfish/v1/", get(root))
                .route("/redfish/v1/SessionService/Sessions", post(create))
                .route(
                    "/redfish/v1/SessionService/Sessions/{id}",
                    axum::routing::delete(delete),
                )
                .route("/redfish/v1/Systems", get(systems))
                .route("/redfish/v1/Systems/sys-1", get(system))
                .route(
                    "/redfish/v1/Systems/sys-1/Actions/ComputerSystem.Reset",
                    post(reset),
                )
                .with_state(state.clone());
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(l, app).await });

            let p: HashMap<String, String> = [
                ("address", format!("http://{addr}")),
                ("username", "admin".into()),
                ("password", "secret".into()),
                ("power_wait_s", "5".into()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            let d = RedfishDriver::default();
            for _ in 0..3 {
                let q = run(&d, PowerAction::Query, &p).await.unwrap();
                assert_eq!(q.state, PowerState::On);
            }
            assert_eq!(
                state.lock().unwrap().created,
                1,
                "one session for three queries"
            );

            // The BMC expires every session: the driver re-creates one and the command succeeds.
            state.lock().unwrap().tokens.clear();
            let c = run(&d, PowerAction::Cycle, &p).await.unwrap();
            assert_eq!(c.state, PowerState::On);
            assert!(c.message.contains("PowerCycle"), "{}", c.message);
            {
                let m = state.lock().unwrap();
                assert_eq!(m.created, 2);
                assert_eq!(m.resets, vec!["PowerCycle".to_string()]);
                assert!(!m.basic_seen, "basic auth sent although a session was used");
            }

            // GracefulShutdown is not in AllowableValues.
            let e = run(&d, PowerAction::SoftOff, &p).await.unwrap_err();
            eprintln!("{}: {e}", e.kind());
            assert!(matches!(e, DriverError::Unsupported(_)), "{e:?}");
            assert!(e.to_string().contains("GracefulShutdown"), "{e}");

            // A wrong password does not ride on the cached session: a new one is refused.
            let mut bad = p.clone();
            bad.insert("password".into(), "wrong".into());
            let e = run(&d, PowerAction::Query, &bad).await.unwrap_err();
            eprintln!("{}: {e}", e.kind());
            assert!(matches!(e, DriverError::Auth(_)), "{e:?}");
            assert!(!e.to_string().contains("wrong"), "password echoed: {e}");

            // Good credentials again: a new session; close_sessions logs it out.
            run(&d, PowerAction::Off, &p).await.unwrap();
            d.close_sessions().await;
            assert_eq!(state.lock().unwrap().deleted, 1);
        })
        .await;
    }
}
