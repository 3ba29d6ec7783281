//! One simulated BMC's Redfish service: an axum [`Router`] over the machine it manages.
//!
//! The resources and their JSON follow DMTF Redfish (as sushy-tools and real BMCs shape them) far enough
//! for a real Redfish client: the service root, the Systems collection and the one ComputerSystem (power
//! state, boot override, the Reset action), the Managers collection and the one Manager, and the
//! SessionService with session login/logout. Everything but the service root and login needs HTTP basic
//! auth or an `X-Auth-Token` session; errors carry a Redfish error body with a Base registry message id.
//!
//! Fault knobs ([`crate::Faults`]) are applied here, before routing: `unresponsive` holds the request,
//! `slow_ms` delays it, `wrong_password` fails authentication, `flapping` corrupts reads, `fail_power`
//! fails resets.

use crate::machine::{lock, BootEnabled, BootMode, BootTarget, ResetType, SimMachine};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The id of the BMC's one Manager resource.
pub const MANAGER_ID: &str = "BMC";
/// Most sessions a BMC keeps; logging in beyond this ends the least recently used one (real BMCs have
/// similar small limits).
pub const MAX_SESSIONS: usize = 64;
/// A session unused for this long expires (Redfish `SessionTimeout`).
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(1800);
/// Longest an `unresponsive` BMC holds a request (the client has long given up by then); the connection
/// is then answered with 503.
pub const UNRESPONSIVE_MAX: Duration = Duration::from_secs(600);
/// Redfish version the service root reports.
pub const REDFISH_VERSION: &str = "1.11.0";
const BASE: &str = "Base.1.13.0";

struct Session {
    id: String,
    username: String,
    last_used: Instant,
}

/// The BMC's own state beyond the machine's: login sessions and the flapping counter.
struct Bmc {
    machine: Arc<SimMachine>,
    /// Becomes true when the fleet stops: requests held by `unresponsive` end.
    stopping: watch::Receiver<bool>,
    /// Sessions by the SHA-256 of their token.
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    next_session: AtomicU64,
    flap: AtomicU64,
}

/// The Redfish service of `machine`'s BMC. Cheap: one `Router` with a single fallback handler, so a
/// process can serve thousands of BMCs. `stopping` turning true releases requests an `unresponsive` BMC
/// holds.
pub fn router(machine: Arc<SimMachine>, stopping: watch::Receiver<bool>) -> Router {
    let bmc = Arc::new(Bmc {
        machine,
        stopping,
        sessions: Mutex::new(HashMap::new()),
        next_session: AtomicU64::new(1),
        flap: AtomicU64::new(0),
    });
    Router::new().fallback(dispatch).with_state(bmc)
}

fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A JSON answer with the headers Redfish clients expect.
fn json_response(status: StatusCode, body: Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    h.insert("OData-Version", HeaderValue::from_static("4.0"));
    r
}

fn ok(body: Value) -> Response {
    json_response(StatusCode::OK, body)
}

fn no_content() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut()
        .insert("OData-Version", HeaderValue::from_static("4.0"));
    r
}

/// A Redfish error body (`error` with `@Message.ExtendedInfo`) with a Base registry message id.
fn redfish_error(
    status: StatusCode,
    message_id: &str,
    message: &str,
    resolution: &str,
) -> Response {
    let severity = if status.is_server_error() {
        "Critical"
    } else {
        "Warning"
    };
    json_response(
        status,
        json!({
            "error": {
                "code": format!("{BASE}.GeneralError"),
                "message": message,
                "@Message.ExtendedInfo": [{
                    "@odata.type": "#Message.v1_1_1.Message",
                    "MessageId": format!("{BASE}.{message_id}"),
                    "Message": message,
                    "Severity": severity,
                    "MessageSeverity": severity,
                    "Resolution": resolution,
                }]
            }
        }),
    )
}

fn unauthorized() -> Response {
    let mut r = redfish_error(
        StatusCode::UNAUTHORIZED,
        "NoValidSession",
        "There is no valid session established with the implementation.",
        "Authenticate with HTTP basic auth or an X-Auth-Token from POST /redfish/v1/SessionService/Sessions.",
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"Ingot simulated BMC\""),
    );
    r
}

fn not_found(path: &str) -> Response {
    redfish_error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        &format!("The requested resource {path} was not found."),
        "Provide a valid resource identifier and resubmit the request.",
    )
}

fn method_not_allowed(method: &Method, allow: &'static str) -> Response {
    let mut r = redfish_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "OperationNotAllowed",
        &format!("The HTTP method {method} is not allowed on this resource."),
        &format!("Use one of: {allow}."),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

fn bad_request(message_id: &str, message: &str, resolution: &str) -> Response {
    redfish_error(StatusCode::BAD_REQUEST, message_id, message, resolution)
}

fn internal(message: &str) -> Response {
    redfish_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalError",
        message,
        "Resubmit the request. If the problem persists, reset the service.",
    )
}

fn odata(id: &str) -> Value {
    json!({ "@odata.id": id })
}

/// Every request of one BMC. Faults first, then the unauthenticated resources, then authentication,
/// then the resource.
async fn dispatch(
    State(bmc): State<Arc<Bmc>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let m = &bmc.machine;
    m.requests.fetch_add(1, Ordering::Relaxed);
    let faults = m.faults();
    if faults.unresponsive && !wait_responsive(&bmc).await {
        return redfish_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceTemporarilyUnavailable",
            "The BMC is not responding.",
            "Clear the unresponsive fault.",
        );
    }
    let slow_ms = m.faults().slow_ms;
    if slow_ms > 0 {
        tokio::time::sleep(Duration::from_millis(slow_ms)).await;
    }

    let path = uri.path().trim_end_matches('/');
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match (segs.as_slice(), &method) {
        (["redfish"], &Method::GET) => return ok(json!({ "v1": "/redfish/v1/" })),
        (["redfish"], _) => return method_not_allowed(&method, "GET"),
        (["redfish", "v1"], &Method::GET) => return service_root(&bmc),
        (["redfish", "v1"], _) => return method_not_allowed(&method, "GET"),
        (["redfish", "v1", "SessionService", "Sessions"], &Method::POST) => {
            return login(&bmc, &body)
        }
        (["redfish", "v1", ..], _) => {}
        _ => return not_found(uri.path()),
    }

    if !authenticate(&bmc, &headers) {
        return unauthorized();
    }
    let rest = &segs[2..];
    if method == Method::GET && m.faults().flapping {
        // Even reads fail; odd reads succeed but report the opposite power state.
        let n = bmc.flap.fetch_add(1, Ordering::Relaxed);
        if n % 2 == 0 {
            if matches!(rest, ["Systems", _]) {
                m.queries.fetch_add(1, Ordering::Relaxed);
            }
            return internal("The BMC failed to read the system state (flapping).");
        }
        return route(&bmc, rest, &method, &body, uri.path(), true);
    }
    route(&bmc, rest, &method, &body, uri.path(), false)
}

/// Holds a request while the machine is `unresponsive`; false if it still is after [`UNRESPONSIVE_MAX`]
/// or the fleet is stopping.
async fn wait_responsive(bmc: &Bmc) -> bool {
    let mut stopping = bmc.stopping.clone();
    tokio::select! {
        r = bmc.machine.wait_responsive(UNRESPONSIVE_MAX) => r,
        _ = stopping.wait_for(|s| *s) => false,
    }
}

fn route(
    bmc: &Bmc,
    rest: &[&str],
    method: &Method,
    body: &[u8],
    path: &str,
    lie: bool,
) -> Response {
    let m = &bmc.machine;
    let sys = m.info().system_id.as_str();
    match rest {
        ["Systems"] => match *method {
            Method::GET => ok(json!({
                "@odata.type": "#ComputerSystemCollection.ComputerSystemCollection",
                "@odata.id": "/redfish/v1/Systems",
                "Name": "Computer System Collection",
                "Members@odata.count": 1,
                "Members": [odata(&format!("/redfish/v1/Systems/{sys}"))],
            })),
            _ => method_not_allowed(method, "GET"),
        },
        ["Systems", id] if *id == sys => match *method {
            Method::GET => {
                m.queries.fetch_add(1, Ordering::Relaxed);
                system(bmc, lie)
            }
            Method::PATCH => patch_system(bmc, body),
            _ => method_not_allowed(method, "GET, PATCH"),
        },
        ["Systems", id, "Actions", "ComputerSystem.Reset"] if *id == sys => match *method {
            Method::POST => reset(bmc, body),
            _ => method_not_allowed(method, "POST"),
        },
        ["Managers"] => match *method {
            Method::GET => ok(json!({
                "@odata.type": "#ManagerCollection.ManagerCollection",
                "@odata.id": "/redfish/v1/Managers",
                "Name": "Manager Collection",
                "Members@odata.count": 1,
                "Members": [odata(&format!("/redfish/v1/Managers/{MANAGER_ID}"))],
            })),
            _ => method_not_allowed(method, "GET"),
        },
        ["Managers", id] if *id == MANAGER_ID => match *method {
            Method::GET => ok(json!({
                "@odata.type": "#Manager.v1_10_0.Manager",
                "@odata.id": format!("/redfish/v1/Managers/{MANAGER_ID}"),
                "Id": MANAGER_ID,
                "Name": "Ingot simulated BMC",
                "ManagerType": "BMC",
                "Model": "Ingot Sim BMC",
                "FirmwareVersion": "1.0.0",
                "UUID": m.info().uuid,
                "PowerState": "On",
                "Status": { "State": "Enabled", "Health": "OK" },
                "Links": {
                    "ManagerForServers": [odata(&format!("/redfish/v1/Systems/{sys}"))],
                    "ManagerForServers@odata.count": 1,
                },
            })),
            _ => method_not_allowed(method, "GET"),
        },
        ["SessionService"] => match *method {
            Method::GET => ok(json!({
                "@odata.type": "#SessionService.v1_1_8.SessionService",
                "@odata.id": "/redfish/v1/SessionService",
                "Id": "SessionService",
                "Name": "Session Service",
                "ServiceEnabled": true,
                "SessionTimeout": SESSION_TIMEOUT.as_secs(),
                "Status": { "State": "Enabled", "Health": "OK" },
                "Sessions": odata("/redfish/v1/SessionService/Sessions"),
            })),
            _ => method_not_allowed(method, "GET"),
        },
        ["SessionService", "Sessions"] => match *method {
            Method::GET => {
                let sessions = lock(&bmc.sessions);
                let mut ids: Vec<&str> = sessions.values().map(|s| s.id.as_str()).collect();
                ids.sort_unstable();
                let members: Vec<Value> = ids
                    .iter()
                    .map(|id| odata(&format!("/redfish/v1/SessionService/Sessions/{id}")))
                    .collect();
                ok(json!({
                    "@odata.type": "#SessionCollection.SessionCollection",
                    "@odata.id": "/redfish/v1/SessionService/Sessions",
                    "Name": "Session Collection",
                    "Members@odata.count": members.len(),
                    "Members": members,
                }))
            }
            _ => method_not_allowed(method, "GET, POST"),
        },
        ["SessionService", "Sessions", id] => {
            let mut sessions = lock(&bmc.sessions);
            let Some(key) = sessions.iter().find(|(_, s)| s.id == *id).map(|(k, _)| *k) else {
                return not_found(path);
            };
            match *method {
                Method::GET => {
                    let user = sessions
                        .get(&key)
                        .map(|s| s.username.clone())
                        .unwrap_or_default();
                    ok(session_body(id, &user))
                }
                Method::DELETE => {
                    sessions.remove(&key);
                    no_content()
                }
                _ => method_not_allowed(method, "GET, DELETE"),
            }
        }
        _ => not_found(path),
    }
}

fn service_root(bmc: &Bmc) -> Response {
    ok(json!({
        "@odata.type": "#ServiceRoot.v1_5_0.ServiceRoot",
        "@odata.id": "/redfish/v1/",
        "Id": "RootService",
        "Name": "Ingot simulated BMC",
        "RedfishVersion": REDFISH_VERSION,
        "UUID": bmc.machine.info().uuid,
        "Vendor": "Ingot",
        "Product": "Ingot simulated BMC",
        "Systems": odata("/redfish/v1/Systems"),
        "Managers": odata("/redfish/v1/Managers"),
        "SessionService": odata("/redfish/v1/SessionService"),
        "Links": { "Sessions": odata("/redfish/v1/SessionService/Sessions") },
    }))
}

fn session_body(id: &str, username: &str) -> Value {
    json!({
        "@odata.type": "#Session.v1_3_0.Session",
        "@odata.id": format!("/redfish/v1/SessionService/Sessions/{id}"),
        "Id": id,
        "Name": "User Session",
        "UserName": username,
    })
}

/// Basic auth or a live session token; always false while the `wrong_password` fault is set.
fn authenticate(bmc: &Bmc, headers: &HeaderMap) -> bool {
    if bmc.machine.faults().wrong_password {
        return false;
    }
    if let Some(token) = headers.get("x-auth-token") {
        let Ok(token) = token.to_str() else {
            return false;
        };
        let mut sessions = lock(&bmc.sessions);
        let key = token_digest(token.trim());
        return match sessions.get_mut(&key) {
            Some(s) if s.last_used.elapsed() < SESSION_TIMEOUT => {
                s.last_used = Instant::now();
                true
            }
            Some(_) => {
                sessions.remove(&key);
                false
            }
            None => false,
        };
    }
    let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, encoded)) = auth.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let Ok(decoded) = String::from_utf8(decoded) else {
        return false;
    };
    match decoded.split_once(':') {
        Some((user, pass)) => bmc.machine.credentials_match(user, pass),
        None => false,
    }
}

/// The body as a JSON object, `None` if it is not one (answer [`malformed`]).
fn parse_object(body: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Some(o),
        _ => None,
    }
}

fn malformed() -> Response {
    bad_request(
        "MalformedJSON",
        "The request body submitted was malformed JSON and could not be parsed by the receiving service.",
        "Ensure that the request body is a valid JSON object and resubmit the request.",
    )
}

/// `POST /redfish/v1/SessionService/Sessions {UserName, Password}`: 201 with `X-Auth-Token` and
/// `Location`.
fn login(bmc: &Bmc, body: &[u8]) -> Response {
    let Some(o) = parse_object(body) else {
        return malformed();
    };
    let (Some(user), Some(pass)) = (
        o.get("UserName").and_then(Value::as_str),
        o.get("Password").and_then(Value::as_str),
    ) else {
        return bad_request(
            "PropertyMissing",
            "The properties UserName and Password are required to create a session.",
            "Include UserName and Password (strings) in the request body and resubmit the request.",
        );
    };
    if bmc.machine.faults().wrong_password || !bmc.machine.credentials_match(user, pass) {
        return unauthorized();
    }
    let token = hex::encode(rand::random::<[u8; 24]>());
    let id = bmc.next_session.fetch_add(1, Ordering::Relaxed).to_string();
    {
        let mut sessions = lock(&bmc.sessions);
        sessions.retain(|_, s| s.last_used.elapsed() < SESSION_TIMEOUT);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| *k)
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            token_digest(&token),
            Session {
                id: id.clone(),
                username: user.to_string(),
                last_used: Instant::now(),
            },
        );
    }
    let location = format!("/redfish/v1/SessionService/Sessions/{id}");
    let mut r = json_response(StatusCode::CREATED, session_body(&id, user));
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&token) {
        h.insert("X-Auth-Token", v);
    }
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    r
}

fn system(bmc: &Bmc, lie: bool) -> Response {
    let m = &bmc.machine;
    let info = m.info();
    let v = m.view();
    let power = if lie { v.power.opposite() } else { v.power };
    let sys = &info.system_id;
    let inv = &info.inventory;
    let allowed_targets: Vec<&str> = BootTarget::ALL.iter().map(|(_, n)| *n).collect();
    let allowed_enabled: Vec<&str> = BootEnabled::ALL.iter().map(|(_, n)| *n).collect();
    let allowed_modes: Vec<&str> = BootMode::ALL.iter().map(|(_, n)| *n).collect();
    let allowed_resets: Vec<&str> = ResetType::ALL.iter().map(|(_, n)| *n).collect();
    ok(json!({
        "@odata.type": "#ComputerSystem.v1_13_0.ComputerSystem",
        "@odata.id": format!("/redfish/v1/Systems/{sys}"),
        "Id": sys,
        "Name": info.hostname,
        "HostName": info.hostname,
        "UUID": info.uuid,
        "SystemType": "Physical",
        "Manufacturer": inv.dmi.get("system_vendor").cloned().unwrap_or_default(),
        "Model": inv.dmi.get("product_name").cloned().unwrap_or_default(),
        "SerialNumber": inv.dmi.get("serial_number").cloned().unwrap_or_default(),
        "BiosVersion": inv.firmware.version,
        "PowerState": power.redfish(),
        "Status": { "State": "Enabled", "Health": "OK" },
        "Boot": {
            "BootSourceOverrideTarget": v.boot.target.redfish(),
            "BootSourceOverrideEnabled": v.boot.enabled.redfish(),
            "BootSourceOverrideMode": v.boot.mode.redfish(),
            "BootSourceOverrideTarget@Redfish.AllowableValues": allowed_targets,
            "BootSourceOverrideEnabled@Redfish.AllowableValues": allowed_enabled,
            "BootSourceOverrideMode@Redfish.AllowableValues": allowed_modes,
        },
        "ProcessorSummary": {
            "Count": inv.cpu_count,
            "LogicalProcessorCount": inv.cpu_count,
            "Model": inv.cpu_model,
            "Status": { "State": "Enabled", "Health": "OK" },
        },
        "MemorySummary": {
            "TotalSystemMemoryGiB": inv.memory_mib as f64 / 1024.0,
            "Status": { "State": "Enabled", "Health": "OK" },
        },
        "Links": {
            "ManagedBy": [odata(&format!("/redfish/v1/Managers/{MANAGER_ID}"))],
        },
        "Actions": {
            "#ComputerSystem.Reset": {
                "target": format!("/redfish/v1/Systems/{sys}/Actions/ComputerSystem.Reset"),
                "ResetType@Redfish.AllowableValues": allowed_resets,
            }
        },
    }))
}

/// `PATCH /redfish/v1/Systems/{id}` with `{"Boot": {...}}`: every value is checked before anything
/// changes.
fn patch_system(bmc: &Bmc, body: &[u8]) -> Response {
    let Some(o) = parse_object(body) else {
        return malformed();
    };
    let mut target = None;
    let mut enabled = None;
    let mut mode = None;
    for (k, v) in &o {
        if k.starts_with('@') {
            continue; // annotations such as @odata.etag
        }
        if k != "Boot" {
            return bad_request(
                "PropertyNotWritable",
                &format!("The property {k} is a read only property and cannot be assigned a value."),
                "Remove the property from the request body and resubmit the request (only Boot is writable).",
            );
        }
        let Value::Object(boot) = v else {
            return bad_request(
                "PropertyValueTypeError",
                "The value for the property Boot is of a different type than the property can accept.",
                "Send Boot as an object.",
            );
        };
        for (bk, bv) in boot {
            let s = bv.as_str().unwrap_or_default();
            let bad_value = |allowed: &[&str]| {
                bad_request(
                    "PropertyValueNotInList",
                    &format!("The value {bv} for the property {bk} is not in the list of acceptable values."),
                    &format!("Choose one of: {}.", allowed.join(", ")),
                )
            };
            match bk.as_str() {
                "BootSourceOverrideTarget" => match BootTarget::parse(s) {
                    Some(t) => target = Some(t),
                    None => return bad_value(&BootTarget::ALL.map(|(_, n)| n)),
                },
                "BootSourceOverrideEnabled" => match BootEnabled::parse(s) {
                    Some(e) => enabled = Some(e),
                    None => return bad_value(&BootEnabled::ALL.map(|(_, n)| n)),
                },
                "BootSourceOverrideMode" => match BootMode::parse(s) {
                    Some(md) => mode = Some(md),
                    None => return bad_value(&BootMode::ALL.map(|(_, n)| n)),
                },
                other => {
                    return bad_request(
                        "PropertyUnknown",
                        &format!("The property Boot/{other} is not in the list of valid properties for the resource."),
                        "Use BootSourceOverrideTarget, BootSourceOverrideEnabled or BootSourceOverrideMode.",
                    )
                }
            }
        }
    }
    bmc.machine.set_boot_override(target, enabled, mode);
    no_content()
}

/// `POST .../Actions/ComputerSystem.Reset {ResetType}`: 204, the power change following after the
/// fleet's power delay.
fn reset(bmc: &Bmc, body: &[u8]) -> Response {
    let Some(o) = parse_object(body) else {
        return malformed();
    };
    let allowed = ResetType::ALL.map(|(_, n)| n).join(", ");
    let Some(v) = o.get("ResetType") else {
        return bad_request(
            "ActionParameterMissing",
            "The action ComputerSystem.Reset requires the parameter ResetType to be present in the request body.",
            &format!("Supply ResetType (one of {allowed}) and resubmit the request."),
        );
    };
    let Some(rt) = v.as_str().and_then(ResetType::parse) else {
        return bad_request(
            "ActionParameterValueNotInList",
            &format!("The value {v} for the parameter ResetType in the action ComputerSystem.Reset is not in the list of acceptable values."),
            &format!("Choose one of: {allowed}."),
        );
    };
    if bmc.machine.faults().fail_power {
        return internal("The BMC failed to change the power state (fail_power).");
    }
    bmc.machine.reset(rt);
    no_content()
}
