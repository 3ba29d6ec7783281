//! The `webhook` driver against a local HTTP server (axum on 127.0.0.1:0) that records every request (method,
//! path, Authorization header) and keeps a power state: `/on` and `/off` set it, `/cycle` sets it on,
//! `/status` answers `{"status": "running"}` or `{"status": "stopped"}`; `/fail500`, `/deny401` and `/weird`
//! misbehave on purpose.

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use ingot_common::power::PowerAction;
use ingot_rack::drivers::webhook::WebhookDriver;
use ingot_rack::drivers::{DriverError, PowerDriver, PowerOutcome, PowerRequest, PowerState};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request the server saw.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    method: String,
    path: String,
    auth: Option<String>,
}

#[derive(Default)]
struct Server {
    on: bool,
    seen: Vec<Seen>,
}
type S = Arc<Mutex<Server>>;

async fn handle(State(s): State<S>, method: Method, uri: Uri, h: HeaderMap) -> Response {
    let mut m = s.lock().unwrap();
    m.seen.push(Seen {
        method: method.to_string(),
        path: uri.path().to_string(),
        auth: h
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    });
    match uri.path() {
        "/on" | "/cycle" => {
            m.on = true;
            "ok".into_response()
        }
        "/off" => {
            m.on = false;
            "ok".into_response()
        }
        "/pxe" => StatusCode::NO_CONTENT.into_response(),
        "/status" => format!(
            r#"{{"status": "{}"}}"#,
            if m.on { "running" } else { "stopped" }
        )
        .into_response(),
        "/weird" => r#"{"status": "exploding", "detail": "the relay is burning"}"#.into_response(),
        "/redir-same" => (
            StatusCode::TEMPORARY_REDIRECT,
            [("location", "/on".to_string())],
        )
            .into_response(),
        "/redir-other" => {
            let port = h
                .get("host")
                .and_then(|v| v.to_str().ok())
                .and_then(|h| h.rsplit(':').next())
                .unwrap_or("1")
                .to_string();
            let to = format!("http://localhost:{port}/on");
            (StatusCode::FOUND, [("location", to)]).into_response()
        }
        "/fail500" => (StatusCode::INTERNAL_SERVER_ERROR, "relay board error 7").into_response(),
        "/deny401" => StatusCode::UNAUTHORIZED.into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Starts the server; returns its state and base URL.
async fn server(on: bool) -> (S, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let s: S = Arc::new(Mutex::new(Server {
        on,
        seen: Vec::new(),
    }));
    let app = Router::new().fallback(handle).with_state(s.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (s, base)
}

fn params(base: &str, extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut p: HashMap<String, String> = HashMap::new();
    p.insert("on_url".into(), format!("{base}/on"));
    p.insert("off_url".into(), format!("{base}/off"));
    p.insert("query_url".into(), format!("{base}/status"));
    p.insert("timeout_ms".into(), "2000".into());
    for (k, v) in extra {
        p.insert(k.to_string(), v.to_string());
    }
    p
}

async fn run(
    d: &WebhookDriver,
    action: PowerAction,
    p: &HashMap<String, String>,
) -> Result<PowerOutcome, DriverError> {
    d.run(&PowerRequest {
        command_id: 7,
        system_id: "m1".into(),
        action,
        params: p.clone(),
    })
    .await
}

async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test did not finish within 20 s")
}

/// The (method, path) pairs seen, dropping the `/status` reads.
fn actions(s: &S) -> Vec<(String, String)> {
    s.lock()
        .unwrap()
        .seen
        .iter()
        .filter(|r| r.path != "/status")
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect()
}

fn post(path: &str) -> (String, String) {
    ("POST".into(), path.into())
}

#[tokio::test]
async fn on_off_query_with_bearer_token() {
    bounded(async {
        let (s, base) = server(false).await;
        let d = WebhookDriver::default();
        let p = params(&base, &[("token", "s3cret-token")]);
        let q = run(&d, PowerAction::Query, &p).await.unwrap();
        assert_eq!(q.state, PowerState::Off, "{}", q.message);
        let o = run(&d, PowerAction::On, &p).await.unwrap();
        assert_eq!(o.state, PowerState::On, "{}", o.message);
        assert_eq!(
            run(&d, PowerAction::Query, &p).await.unwrap().state,
            PowerState::On
        );
        let o = run(&d, PowerAction::Off, &p).await.unwrap();
        assert_eq!(o.state, PowerState::Off, "{}", o.message);
        assert_eq!(actions(&s), vec![post("/on"), post("/off")]);
        let seen = s.lock().unwrap().seen.clone();
        assert!(!seen.is_empty());
        for r in &seen {
            assert_eq!(r.auth.as_deref(), Some("Bearer s3cret-token"), "{r:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn basic_auth_and_method() {
    bounded(async {
        let (s, base) = server(false).await;
        let d = WebhookDriver::default();
        let p = params(
            &base,
            &[
                ("username", "user"),
                ("password", "pass"),
                ("method", "PUT"),
            ],
        );
        run(&d, PowerAction::On, &p).await.unwrap();
        let seen = s.lock().unwrap().seen.clone();
        assert_eq!(seen[0].method, "PUT");
        assert_eq!(seen[0].path, "/on");
        // The query is always a GET.
        assert!(
            seen[1..]
                .iter()
                .all(|r| r.method == "GET" && r.path == "/status"),
            "{seen:?}"
        );
        for r in &seen {
            assert_eq!(r.auth.as_deref(), Some("Basic dXNlcjpwYXNz"), "{r:?}");
        }
        // No credentials configured: none sent.
        let (s2, base2) = server(false).await;
        run(&d, PowerAction::Query, &params(&base2, &[]))
            .await
            .unwrap();
        assert_eq!(s2.lock().unwrap().seen[0].auth, None);
    })
    .await;
}

#[tokio::test]
async fn cycle_variants() {
    bounded(async {
        let d = WebhookDriver::default();

        // No cycle_url, machine on: off, then on.
        let (s, base) = server(true).await;
        let c = run(&d, PowerAction::Cycle, &params(&base, &[]))
            .await
            .unwrap();
        assert_eq!(c.state, PowerState::On, "{}", c.message);
        assert_eq!(actions(&s), vec![post("/off"), post("/on")]);

        // With cycle_url, machine on: only the cycle URL.
        let (s, base) = server(true).await;
        let p = params(&base, &[("cycle_url", &format!("{base}/cycle"))]);
        let c = run(&d, PowerAction::Cycle, &p).await.unwrap();
        assert_eq!(c.state, PowerState::On);
        assert_eq!(actions(&s), vec![post("/cycle")]);

        // Machine off: cycle means power on.
        let (s, base) = server(false).await;
        let p = params(&base, &[("cycle_url", &format!("{base}/cycle"))]);
        let c = run(&d, PowerAction::Cycle, &p).await.unwrap();
        assert_eq!(c.state, PowerState::On);
        assert!(c.message.contains("was off"), "{}", c.message);
        assert_eq!(actions(&s), vec![post("/on")]);
    })
    .await;
}

#[tokio::test]
async fn optional_urls() {
    bounded(async {
        let (s, base) = server(false).await;
        let d = WebhookDriver::default();
        let p = params(&base, &[]);
        for (action, key) in [
            (PowerAction::SoftOff, "soft_off_url"),
            (PowerAction::BootPxe, "boot_pxe_url"),
            (PowerAction::BootDisk, "boot_disk_url"),
        ] {
            let e = run(&d, action, &p).await.unwrap_err();
            eprintln!("{}: {e}", e.kind());
            assert!(matches!(e, DriverError::Unsupported(_)), "{e:?}");
            assert!(
                e.to_string().contains(&format!("no {key} configured")),
                "{e}"
            );
        }
        let e = run(&d, PowerAction::BootPxePersistent, &p)
            .await
            .unwrap_err();
        eprintln!("{}: {e}", e.kind());
        assert!(matches!(e, DriverError::Unsupported(_)), "{e:?}");
        assert!(actions(&s).is_empty(), "{:?}", actions(&s));

        let p = params(&base, &[("boot_pxe_url", &format!("{base}/pxe"))]);
        let o = run(&d, PowerAction::BootPxe, &p).await.unwrap();
        assert_eq!(o.state, PowerState::Off);
        assert_eq!(actions(&s), vec![post("/pxe")]);
    })
    .await;
}

#[tokio::test]
async fn http_errors() {
    bounded(async {
        let (_s, base) = server(false).await;
        let d = WebhookDriver::default();

        // 500: bmc, quoting the body; the URL's query string (may hold a secret) is not quoted.
        let p = params(&base, &[("on_url", &format!("{base}/fail500?key=hunter2"))]);
        let e = run(&d, PowerAction::On, &p).await.unwrap_err();
        eprintln!("{}: {e}", e.kind());
        assert!(matches!(e, DriverError::Bmc(_)), "{e:?}");
        assert!(e.to_string().contains("HTTP 500"), "{e}");
        assert!(e.to_string().contains("relay board error 7"), "{e}");
        assert!(
            !e.to_string().contains("hunter2"),
            "query string echoed: {e}"
        );

        // 401: auth.
        let p = params(
            &base,
            &[("off_url", &format!("{base}/deny401")), ("token", "t0k")],
        );
        let e = run(&d, PowerAction::Off, &p).await.unwrap_err();
        eprintln!("{}: {e}", e.kind());
        assert!(matches!(e, DriverError::Auth(_)), "{e:?}");
        assert!(!e.to_string().contains("t0k"), "token echoed: {e}");

        // A closed port: unreachable.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let p = params(&format!("http://{closed}"), &[]);
        let e = run(&d, PowerAction::Query, &p).await.unwrap_err();
        eprintln!("{}: {e}", e.kind());
        assert!(matches!(e, DriverError::Unreachable(_)), "{e:?}");
        assert!(e.to_string().contains("connection refused"), "{e}");
    })
    .await;
}

#[tokio::test]
async fn query_regexes() {
    bounded(async {
        let (s, base) = server(true).await;
        let d = WebhookDriver::default();

        // Neither regex matches: bmc, quoting the body.
        let p = params(&base, &[("query_url", &format!("{base}/weird"))]);
        let e = run(&d, PowerAction::Query, &p).await.unwrap_err();
        eprintln!("{}: {e}", e.kind());
        assert!(matches!(e, DriverError::Bmc(_)), "{e:?}");
        assert!(e.to_string().contains("exploding"), "{e}");

        // Custom regexes.
        let p = params(
            &base,
            &[
                ("query_url", &format!("{base}/weird")),
                ("query_on_regex", "burning"),
                ("query_off_regex", "^$"),
            ],
        );
        assert_eq!(
            run(&d, PowerAction::Query, &p).await.unwrap().state,
            PowerState::On
        );

        // An invalid regex names its parameter.
        let p = params(&base, &[("query_off_regex", "(unclosed")]);
        let e = run(&d, PowerAction::Query, &p).await.unwrap_err();
        eprintln!("{}: {e}", e.kind());
        assert!(matches!(e, DriverError::Bmc(_)), "{e:?}");
        assert!(e.to_string().contains("query_off_regex"), "{e}");

        // Both match: ambiguous, refused.
        let p = params(
            &base,
            &[("query_on_regex", "status"), ("query_off_regex", "stat")],
        );
        let e = run(&d, PowerAction::Query, &p).await.unwrap_err();
        eprintln!("{}: {e}", e.kind());
        assert!(e.to_string().contains("ambiguous"), "{e}");
        assert!(actions(&s).iter().all(|(_, p)| p == "/weird"));
    })
    .await;
}

#[tokio::test]
async fn redirects_only_to_the_same_host() {
    bounded(async {
        let (s, base) = server(false).await;
        let d = WebhookDriver::default();
        let p = params(
            &base,
            &[("on_url", &format!("{base}/redir-same")), ("token", "t")],
        );
        let o = run(&d, PowerAction::On, &p).await.unwrap();
        assert_eq!(o.state, PowerState::On);
        assert_eq!(actions(&s), vec![post("/redir-same"), post("/on")]);

        // To another host name: not followed (the token would go there), reported.
        let p = params(
            &base,
            &[("off_url", &format!("{base}/redir-other")), ("token", "t")],
        );
        let e = run(&d, PowerAction::Off, &p).await.unwrap_err();
        eprintln!("{}: {e}", e.kind());
        assert!(matches!(e, DriverError::Bmc(_)), "{e:?}");
        assert!(e.to_string().contains("redirect to another host"), "{e}");
        assert_eq!(actions(&s).len(), 3, "{:?}", actions(&s));
    })
    .await;
}
