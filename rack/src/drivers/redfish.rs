//! The `redfish` power driver: power and boot-device control of a ComputerSystem through a BMC's Redfish
//! service (DMTF DSP0266), over HTTPS (or HTTP for lab emulators).
//!
//! What it does per command:
//! 1. Finds the system: the service root `/redfish/v1/` (unauthenticated) names the Systems collection and,
//!    under `Links.Sessions`, the session collection; the system is the member whose id is the `system`
//!    parameter, or the only member. The system's URL is cached per (address, system), so after the first
//!    command a query is one GET.
//! 2. Authenticates: `auth=auto` uses a Redfish session (`X-Auth-Token`) when the service offers one and HTTP
//!    basic auth otherwise; `basic` and `session` force one. Sessions are cached per (address, user) and
//!    re-created once when the BMC answers 401 (expired).
//! 3. Acts: power changes POST `ComputerSystem.Reset` (on → On, off → ForceOff, soft-off → GracefulShutdown,
//!    cycle → PowerCycle or ForceRestart when on, On when off), honouring `ResetType@Redfish.AllowableValues`;
//!    then it polls `PowerState` until the wanted state shows or `power_wait_s` passes, because BMCs apply
//!    power changes seconds after accepting them. Boot overrides PATCH `Boot.BootSourceOverrideTarget`
//!    (Pxe / Hdd) with `BootSourceOverrideEnabled` Once or Continuous.
//!
//! Clients (connection pools) are shared per TLS setting (see [`super::http`]); nothing is built per command.
//! Passwords and tokens never appear in messages or logs.

use super::http::{excerpt, read_body, redact_url, transport_error, ClientCache, BODY_MAX};
use super::{DriverError, PowerDriver, PowerOutcome, PowerRequest, PowerState};
use ingot_common::power::PowerAction;
use ingot_common::power::{DriverParams, RedfishAuth, RedfishParams};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, ETAG, IF_MATCH, LOCATION};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `redfish` driver. Cheap to clone: clones share the HTTP clients, the discovered system URLs and the
/// Redfish sessions.
#[derive(Debug, Default, Clone)]
pub struct RedfishDriver {
    inner: Arc<Inner>,
}

/// State shared by every clone of the driver.
#[derive(Debug, Default)]
struct Inner {
    /// HTTP clients by TLS settings.
    clients: ClientCache,
    /// Discovered systems by `address \n system`.
    targets: Mutex<HashMap<String, Arc<Target>>>,
    /// Redfish sessions by `address \n user`; the async mutex makes concurrent commands for one BMC create
    /// one session, not one each.
    sessions: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Session>>>>>,
}

/// Entries kept per cache before it is cleared (a rack drives a few thousand BMCs at most; this only stops
/// unbounded growth from ever-changing parameters).
const MAX_CACHED: usize = 100_000;

/// Where a machine's ComputerSystem lives on its BMC.
#[derive(Debug)]
struct Target {
    /// Absolute URL of the ComputerSystem resource.
    system_url: String,
    /// The system's id (last segment of its `@odata.id`), for messages.
    system_id: String,
    /// Absolute URL of the session collection, when the service offers sessions.
    sessions_url: Option<String>,
}

/// A Redfish session: the token authenticates requests, `location` is the session resource to DELETE.
struct Session {
    token: String,
    location: Option<String>,
    /// The password the session was created with: a changed password parameter creates a new session
    /// rather than riding on one made with the old credentials.
    password: String,
    /// The client that created it (for the DELETE).
    client: reqwest::Client,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("token", &"<redacted>")
            .field("location", &self.location)
            .finish()
    }
}

/// How one request authenticates.
#[derive(Debug, Clone)]
enum AuthMode {
    /// HTTP basic auth.
    Basic,
    /// `X-Auth-Token` from a session created at this collection URL.
    Session(String),
}

/// Credentials put on one request.
enum ReqAuth<'a> {
    None,
    Basic,
    Token(&'a str),
}

/// A BMC's answer, read in full.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
    /// "METHOD url" without secrets, for messages.
    what: String,
}

impl Reply {
    /// The body as JSON; anything else is a `bmc` error quoting the start of the body.
    fn json(&self) -> Result<Value, DriverError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            DriverError::Bmc(format!(
                "{}: the BMC answered HTTP {} with a body that is not JSON ({e}): {}",
                self.what,
                self.status.as_u16(),
                excerpt(&self.body, 200)
            ))
        })
    }

    /// `self` if the status is 2xx, else the error for the status.
    fn ok(self) -> Result<Reply, DriverError> {
        if self.status.is_success() {
            Ok(self)
        } else {
            Err(self.status_error())
        }
    }

    /// The error class and message for a non-2xx answer.
    fn status_error(&self) -> DriverError {
        let code = self.status.as_u16();
        let detail = redfish_message(&self.body);
        match code {
            401 | 403 => DriverError::Auth(format!(
                "{}: the BMC refused the credentials (HTTP {code}{detail}); check username and password, and \
                 that the user may control power",
                self.what
            )),
            300..=399 => DriverError::Bmc(format!(
                "{}: the BMC redirected to {} (another host, not followed: credentials go only to the \
                 configured address); set the address to the BMC's real URL",
                self.what,
                self.headers
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(redact_url)
                    .unwrap_or_else(|| "an unnamed location".into())
            )),
            405 | 501 => DriverError::Unsupported(format!(
                "{}: the BMC does not support this (HTTP {code}{detail})",
                self.what
            )),
            _ => DriverError::Bmc(format!(
                "{}: the BMC answered HTTP {code}{detail}",
                self.what
            )),
        }
    }
}

/// `": <message>"` from a Redfish error body (`error.message` and `@Message.ExtendedInfo[].Message`), or the
/// start of a non-Redfish body; empty for an empty body.
fn redfish_message(body: &[u8]) -> String {
    if body.iter().all(u8::is_ascii_whitespace) {
        return String::new();
    }
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let mut parts: Vec<String> = Vec::new();
        if let Some(m) = v.pointer("/error/message").and_then(Value::as_str) {
            parts.push(m.to_string());
        }
        if let Some(infos) = v
            .pointer("/error/@Message.ExtendedInfo")
            .and_then(Value::as_array)
        {
            for i in infos.iter().take(4) {
                if let Some(m) = i.get("Message").and_then(Value::as_str) {
                    if !parts.iter().any(|p| p == m) {
                        parts.push(m.to_string());
                    }
                }
            }
        }
        if !parts.is_empty() {
            return format!(": {}", excerpt(parts.join("; ").as_bytes(), 300));
        }
    }
    format!(": {}", excerpt(body, 200))
}

/// The scheme and authority of `address` (`https://host:port`): Redfish `@odata.id`s are absolute paths.
fn origin(address: &str) -> String {
    match address.split_once("://") {
        Some((scheme, rest)) => {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
            format!("{scheme}://{authority}")
        }
        None => format!("https://{}", address.trim_end_matches('/')),
    }
}

/// The last path segment of an `@odata.id` (a member's id).
fn last_segment(odata_id: &str) -> &str {
    odata_id
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(odata_id)
}

/// Maps a Redfish `PowerState` to on/off (transitions count as where they are heading; Paused is powered).
fn map_power(raw: &str) -> Option<PowerState> {
    match raw {
        "On" | "PoweringOn" | "Paused" => Some(PowerState::On),
        "Off" | "PoweringOff" => Some(PowerState::Off),
        _ => None,
    }
}

/// A string array property (`...@Redfish.AllowableValues`), if present.
fn string_list(v: Option<&Value>) -> Option<Vec<String>> {
    v.and_then(Value::as_array).map(|a| {
        a.iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect()
    })
}

/// Whether `value` is allowed by an optional allow-list (absent list: everything is).
fn allowed(list: &Option<Vec<String>>, value: &str) -> bool {
    list.as_ref().is_none_or(|l| l.iter().any(|x| x == value))
}

/// Poll interval while waiting for a power change: fast at first (most BMCs and sushy settle in 1–11 s),
/// slower after 10 s so a long `power_wait_s` does not hammer the BMC.
fn poll_interval(elapsed: Duration) -> Duration {
    if elapsed < Duration::from_secs(10) {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(1)
    }
}

impl PowerDriver for RedfishDriver {
    async fn run(&self, req: &PowerRequest) -> Result<PowerOutcome, DriverError> {
        let DriverParams::Redfish(p) = req.typed("redfish")? else {
            return Err(DriverError::Bmc(
                "redfish power parameters did not parse as redfish parameters".into(),
            ));
        };
        let client = self
            .inner
            .clients
            .get(p.verify_tls, &p.ca_cert, p.timeout_ms)?;
        let bmc = Bmc {
            inner: &self.inner,
            client,
            origin: origin(&p.address),
            p: &p,
        };
        bmc.run(req.action).await
    }
}

impl RedfishDriver {
    /// Logs out of every cached Redfish session (best effort, a few seconds at most), so a stopping rack does
    /// not leave sessions behind on BMCs with small session tables.
    pub async fn close_sessions(&self) {
        let slots: Vec<_> = {
            let mut map = self
                .inner
                .sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            map.drain().map(|(_, v)| v).collect()
        };
        let mut deletes = Vec::new();
        for slot in slots {
            if let Some(s) = slot.lock().await.take() {
                deletes.push(delete_session(s));
            }
        }
        let _ =
            tokio::time::timeout(Duration::from_secs(5), futures::future::join_all(deletes)).await;
    }

    /// Forgets the discovered system URLs (they are re-discovered on the next command); for tests and for an
    /// operator who re-cabled a BMC.
    pub fn forget_systems(&self) {
        self.inner
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// DELETEs a session resource, ignoring the outcome (the BMC expires it anyway).
async fn delete_session(s: Session) {
    if let Some(loc) = s.location {
        if let Ok(mut v) = HeaderValue::from_str(&s.token) {
            v.set_sensitive(true);
            let _ = s
                .client
                .delete(&loc)
                .header("X-Auth-Token", v)
                .timeout(Duration::from_secs(3))
                .send()
                .await;
        }
    }
}

/// One command's view of one BMC: parameters, client and the driver's shared caches.
struct Bmc<'a> {
    inner: &'a Inner,
    client: reqwest::Client,
    origin: String,
    p: &'a RedfishParams,
}

/// A ComputerSystem as read for this command.
struct SystemView {
    target: Arc<Target>,
    mode: AuthMode,
    json: Value,
    etag: Option<String>,
}

impl Bmc<'_> {
    /// Absolute URL of an `@odata.id` or `Location`. An absolute one keeps only its path: requests (and
    /// credentials) go to the configured address, whatever host a BMC's JSON names.
    fn url(&self, odata_id: &str) -> String {
        let odata_id = match odata_id.split_once("://") {
            Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
            None => odata_id,
        };
        if odata_id.starts_with('/') {
            format!("{}{odata_id}", self.origin)
        } else {
            format!("{}/{odata_id}", self.origin)
        }
    }

    /// The address for messages.
    fn addr(&self) -> String {
        redact_url(&self.p.address)
    }

    fn target_key(&self) -> String {
        format!("{}\n{}", self.p.address, self.p.system)
    }

    fn session_key(&self) -> String {
        format!("{}\n{}", self.p.address, self.p.username)
    }

    /// Sends one request and reads the answer (at most [`BODY_MAX`] bytes); transport failures become
    /// `unreachable` errors.
    async fn raw(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
        auth: ReqAuth<'_>,
        if_match: Option<&str>,
    ) -> Result<Reply, DriverError> {
        let what = format!("{method} {}", redact_url(url));
        let mut rb = self
            .client
            .request(method, url)
            .header(ACCEPT, "application/json");
        if let Some(b) = body {
            rb = rb.json(b);
        }
        match auth {
            ReqAuth::None => {}
            ReqAuth::Basic => rb = rb.basic_auth(&self.p.username, Some(&self.p.password)),
            ReqAuth::Token(t) => {
                let mut v = HeaderValue::from_str(t).map_err(|_| {
                    DriverError::Bmc(format!(
                        "{what}: the BMC's session token is not a valid header value; set auth=basic"
                    ))
                })?;
                v.set_sensitive(true);
                rb = rb.header("X-Auth-Token", v);
            }
        }
        if let Some(e) = if_match {
            rb = rb.header(IF_MATCH, e);
        }
        let resp = rb
            .send()
            .await
            .map_err(|e| transport_error(&what, &e, self.p.timeout_ms))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = read_body(resp, &what, BODY_MAX, self.p.timeout_ms).await?;
        Ok(Reply {
            status,
            headers,
            body,
            what,
        })
    }

    /// Sends an authenticated request. With a session, a 401 (expired or revoked token) re-creates the
    /// session once and repeats the request. Other statuses are returned for the caller to judge, except
    /// 401/403 after authentication, which are `auth` errors.
    async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
        mode: &AuthMode,
        if_match: Option<&str>,
    ) -> Result<Reply, DriverError> {
        let reply = match mode {
            AuthMode::Basic => {
                self.raw(method, url, body, ReqAuth::Basic, if_match)
                    .await?
            }
            AuthMode::Session(sessions_url) => {
                let token = self.session_token(sessions_url, None).await?;
                let r = self
                    .raw(method.clone(), url, body, ReqAuth::Token(&token), if_match)
                    .await?;
                if r.status == StatusCode::UNAUTHORIZED {
                    let fresh = self.session_token(sessions_url, Some(&token)).await?;
                    self.raw(method, url, body, ReqAuth::Token(&fresh), if_match)
                        .await?
                } else {
                    r
                }
            }
        };
        if matches!(reply.status.as_u16(), 401 | 403) {
            return Err(reply.status_error());
        }
        Ok(reply)
    }

    /// A session token for (address, user): the cached one, unless it is `stale` (just refused) or was made
    /// with another password; otherwise a new session.
    async fn session_token(
        &self,
        sessions_url: &str,
        stale: Option<&str>,
    ) -> Result<String, DriverError> {
        let slot = {
            let mut map = self
                .inner
                .sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if map.len() >= MAX_CACHED {
                map.clear();
            }
            map.entry(self.session_key()).or_default().clone()
        };
        let mut guard = slot.lock().await;
        if let Some(s) = guard.as_ref() {
            if s.password == self.p.password && Some(s.token.as_str()) != stale {
                return Ok(s.token.clone());
            }
        }
        // Create first: if the BMC refuses, the slot keeps what it had (nothing to log out then).
        let new = self.create_session(sessions_url).await?;
        let token = new.token.clone();
        let old = guard.replace(new);
        drop(guard);
        // A session superseded because the password changed is still alive on the BMC: log it out.
        if let Some(old) = old {
            if Some(old.token.as_str()) != stale {
                tokio::spawn(delete_session(old));
            }
        }
        Ok(token)
    }

    /// POSTs the credentials to the session collection; the answer carries `X-Auth-Token` and `Location`.
    async fn create_session(&self, sessions_url: &str) -> Result<Session, DriverError> {
        let body = json!({"UserName": self.p.username, "Password": self.p.password});
        let r = self
            .raw(Method::POST, sessions_url, Some(&body), ReqAuth::None, None)
            .await?;
        let code = r.status.as_u16();
        if matches!(code, 400 | 401 | 403) {
            return Err(DriverError::Auth(format!(
                "{}: the BMC at {} refused to create a session for user '{}' (HTTP {code}{}); check username \
                 and password (or set auth=basic)",
                r.what,
                self.addr(),
                self.p.username,
                redfish_message(&r.body)
            )));
        }
        let r = r.ok()?;
        let token = r
            .headers
            .get("x-auth-token")
            .and_then(|v| v.to_str().ok())
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .ok_or_else(|| {
                DriverError::Bmc(format!(
                    "{}: the BMC created a session but sent no X-Auth-Token header; set auth=basic",
                    r.what
                ))
            })?;
        let location = r
            .headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| {
                r.json().ok().and_then(|j| {
                    j.get("@odata.id")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
            })
            .map(|l| self.url(&l));
        Ok(Session {
            token,
            location,
            password: self.p.password.clone(),
            client: self.client.clone(),
        })
    }

    /// The authentication mode for this BMC given what its service root offers.
    fn mode(&self, sessions_url: &Option<String>) -> Result<AuthMode, DriverError> {
        match (self.p.auth, sessions_url) {
            (RedfishAuth::Basic, _) | (RedfishAuth::Auto, None) => Ok(AuthMode::Basic),
            (RedfishAuth::Auto | RedfishAuth::Session, Some(u)) => Ok(AuthMode::Session(u.clone())),
            (RedfishAuth::Session, None) => Err(DriverError::Unsupported(format!(
                "the Redfish service at {} offers no sessions (no Links.Sessions in /redfish/v1/); set \
                 auth=basic or auth=auto",
                self.addr()
            ))),
        }
    }

    /// Reads the service root and the Systems collection, picks the system and caches where it is.
    async fn discover(&self) -> Result<Arc<Target>, DriverError> {
        let root_url = format!("{}/redfish/v1/", self.origin);
        let mut root = self
            .raw(Method::GET, &root_url, None, ReqAuth::None, None)
            .await?;
        if matches!(root.status.as_u16(), 401 | 403) {
            // The root must be readable without credentials, but some BMCs want them anyway.
            root = self
                .raw(Method::GET, &root_url, None, ReqAuth::Basic, None)
                .await?;
        }
        if root.status == StatusCode::NOT_FOUND {
            return Err(DriverError::Bmc(format!(
                "{}: no Redfish service there (HTTP 404); check that the address is the BMC's",
                root.what
            )));
        }
        let root = root.ok()?;
        let rj = root.json()?;
        let systems_url = rj
            .pointer("/Systems/@odata.id")
            .and_then(Value::as_str)
            .map(|s| self.url(s))
            .ok_or_else(|| {
                DriverError::Bmc(format!(
                    "{}: the Redfish service root lists no Systems collection; this BMC manages no computer \
                     system",
                    root.what
                ))
            })?;
        let sessions_url = rj
            .pointer("/Links/Sessions/@odata.id")
            .and_then(Value::as_str)
            .map(|s| self.url(s));
        let mode = self.mode(&sessions_url)?;

        // Members, following nextLink pages (bounded).
        let mut members: Vec<(String, String)> = Vec::new();
        let mut next = Some(systems_url);
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > 20 {
                break;
            }
            let r = self
                .call(Method::GET, &url, None, &mode, None)
                .await?
                .ok()?;
            let j = r.json()?;
            for m in j
                .get("Members")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                if let Some(id) = m.get("@odata.id").and_then(Value::as_str) {
                    members.push((last_segment(id).to_string(), self.url(id)));
                }
            }
            next = j
                .get("Members@odata.nextLink")
                .and_then(Value::as_str)
                .map(|s| self.url(s));
        }
        let ids = || {
            members
                .iter()
                .map(|(id, _)| id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (system_id, system_url) = if self.p.system.is_empty() {
            match members.len() {
                1 => members[0].clone(),
                0 => {
                    return Err(DriverError::Bmc(format!(
                        "the Redfish service at {} lists no systems; check that the address is the BMC of \
                         this machine",
                        self.addr()
                    )))
                }
                n => {
                    return Err(DriverError::Bmc(format!(
                        "the Redfish service at {} has {n} systems ({}); set the power parameter system to \
                         the id of this machine's system",
                        self.addr(),
                        ids()
                    )))
                }
            }
        } else {
            let want = self.p.system.as_str();
            members
                .iter()
                .find(|(id, _)| id == want)
                .or_else(|| members.iter().find(|(id, _)| id.eq_ignore_ascii_case(want)))
                .cloned()
                .ok_or_else(|| {
                    DriverError::Bmc(format!(
                        "system '{want}' is not on the Redfish service at {}; it has: {}; fix the power \
                         parameter system",
                        self.addr(),
                        if members.is_empty() { "no systems".to_string() } else { ids() }
                    ))
                })?
        };
        let target = Arc::new(Target {
            system_url,
            system_id,
            sessions_url,
        });
        let mut map = self.inner.targets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_CACHED {
            map.clear();
        }
        map.insert(self.target_key(), target.clone());
        Ok(target)
    }

    /// The system resource, read now: the cached location (one GET), or discovery first. A cached location
    /// that has gone (404) is re-discovered once.
    async fn system(&self) -> Result<SystemView, DriverError> {
        let key = self.target_key();
        let cached = self
            .inner
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        let was_cached = cached.is_some();
        let mut target = match cached {
            Some(t) => t,
            None => self.discover().await?,
        };
        let mut mode = self.mode(&target.sessions_url)?;
        let mut r = self
            .call(Method::GET, &target.system_url, None, &mode, None)
            .await?;
        if r.status == StatusCode::NOT_FOUND && was_cached {
            self.inner
                .targets
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            target = self.discover().await?;
            mode = self.mode(&target.sessions_url)?;
            r = self
                .call(Method::GET, &target.system_url, None, &mode, None)
                .await?;
        }
        let r = r.ok()?;
        let json = r.json()?;
        let etag = r
            .headers
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| {
                json.get("@odata.etag")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
        Ok(SystemView {
            target,
            mode,
            json,
            etag,
        })
    }

    /// `PowerState` of a system resource, raw and mapped.
    fn power_of(&self, target: &Target, sys: &Value) -> Result<(String, PowerState), DriverError> {
        let raw = sys
            .get("PowerState")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                DriverError::Bmc(format!(
                    "system {} at {} reports no PowerState; this BMC cannot be queried by Redfish",
                    target.system_id,
                    self.addr()
                ))
            })?;
        let state = map_power(raw).ok_or_else(|| {
            DriverError::Bmc(format!(
                "system {} at {} reports PowerState '{raw}', expected On, Off, PoweringOn or PoweringOff",
                target.system_id,
                self.addr()
            ))
        })?;
        Ok((raw.to_string(), state))
    }

    async fn run(&self, action: PowerAction) -> Result<PowerOutcome, DriverError> {
        let view = self.system().await?;
        let (raw, state) = self.power_of(&view.target, &view.json)?;
        let id = view.target.system_id.clone();
        match action {
            PowerAction::Query => Ok(PowerOutcome {
                state,
                message: format!("system {id} PowerState {raw}"),
            }),
            PowerAction::On => {
                if raw == "On" {
                    return Ok(already(&id, PowerState::On));
                }
                let rt = self
                    .pick_reset(&view, &["On", "ForceOn"], "power it on")
                    .await?;
                self.reset_and_wait(&view, &rt, "On", "powered on").await
            }
            PowerAction::Off => {
                if raw == "Off" {
                    return Ok(already(&id, PowerState::Off));
                }
                let rt = self
                    .pick_reset(&view, &["ForceOff"], "power it off")
                    .await?;
                self.reset_and_wait(&view, &rt, "Off", "powered off").await
            }
            PowerAction::SoftOff => {
                if raw == "Off" {
                    return Ok(already(&id, PowerState::Off));
                }
                let rt = self
                    .pick_reset(&view, &["GracefulShutdown"], "shut it down gracefully")
                    .await?;
                self.reset_and_wait(&view, &rt, "Off", "shut down").await
            }
            PowerAction::Cycle => {
                if state == PowerState::On {
                    let rt = self
                        .pick_reset(&view, &["PowerCycle", "ForceRestart"], "power cycle it")
                        .await?;
                    self.reset_and_wait(&view, &rt, "On", "power cycled").await
                } else {
                    let rt = self
                        .pick_reset(
                            &view,
                            &["On", "ForceOn"],
                            "power it on (cycle of an off machine)",
                        )
                        .await?;
                    self.reset_and_wait(&view, &rt, "On", "was off; powered on")
                        .await
                }
            }
            PowerAction::BootPxe => self.boot(&view, state, "Pxe", "Once").await,
            PowerAction::BootDisk => self.boot(&view, state, "Hdd", "Once").await,
            PowerAction::BootPxePersistent => self.boot(&view, state, "Pxe", "Continuous").await,
            PowerAction::BootDiskPersistent => self.boot(&view, state, "Hdd", "Continuous").await,
        }
    }

    /// The allowed ResetType values: `ResetType@Redfish.AllowableValues` on the action, or the action's
    /// `@Redfish.ActionInfo` resource; `None` when the BMC does not say (then every type is tried).
    async fn reset_allowed(&self, view: &SystemView) -> Option<Vec<String>> {
        let action = view.json.pointer("/Actions/#ComputerSystem.Reset")?;
        if let Some(l) = string_list(action.get("ResetType@Redfish.AllowableValues")) {
            return Some(l);
        }
        let info = action.get("@Redfish.ActionInfo").and_then(Value::as_str)?;
        let r = self
            .call(Method::GET, &self.url(info), None, &view.mode, None)
            .await
            .ok()?
            .ok()
            .ok()?;
        let j = r.json().ok()?;
        j.get("Parameters")?
            .as_array()?
            .iter()
            .find(|p| p.get("Name").and_then(Value::as_str) == Some("ResetType"))
            .and_then(|p| string_list(p.get("AllowableValues")))
    }

    /// The first of `prefer` the BMC allows; `unsupported` naming what it allows otherwise.
    async fn pick_reset(
        &self,
        view: &SystemView,
        prefer: &[&str],
        doing: &str,
    ) -> Result<String, DriverError> {
        if view
            .json
            .pointer("/Actions/#ComputerSystem.Reset")
            .is_none()
        {
            return Err(DriverError::Unsupported(format!(
                "system {} at {} offers no ComputerSystem.Reset action, so Ingot cannot {doing} by \
                 Redfish; use another power driver",
                view.target.system_id,
                self.addr()
            )));
        }
        let list = self.reset_allowed(view).await;
        // Without a list, take the first preference, except that PowerCycle (newer) yields to ForceRestart.
        let chosen = match &list {
            Some(_) => prefer.iter().find(|t| allowed(&list, t)),
            None => prefer
                .iter()
                .find(|t| **t != "PowerCycle")
                .or(prefer.first()),
        };
        chosen.map(|t| t.to_string()).ok_or_else(|| {
            DriverError::Unsupported(format!(
                "system {} at {} does not allow ResetType {} (it allows {}), so Ingot cannot {doing}",
                view.target.system_id,
                self.addr(),
                prefer.join(" or "),
                list.map(|l| l.join(", ")).unwrap_or_default()
            ))
        })
    }

    /// POSTs the reset, then polls `PowerState` until it is `want` or `power_wait_s` passes.
    async fn reset_and_wait(
        &self,
        view: &SystemView,
        reset_type: &str,
        want: &str,
        done: &str,
    ) -> Result<PowerOutcome, DriverError> {
        let id = &view.target.system_id;
        let target_url = view
            .json
            .pointer("/Actions/#ComputerSystem.Reset/target")
            .and_then(Value::as_str)
            .map(|t| self.url(t))
            .ok_or_else(|| {
                DriverError::Bmc(format!(
                    "system {id} at {} advertises ComputerSystem.Reset without a target URL",
                    self.addr()
                ))
            })?;
        let t0 = Instant::now();
        let r = self
            .call(
                Method::POST,
                &target_url,
                Some(&json!({ "ResetType": reset_type })),
                &view.mode,
                None,
            )
            .await?;
        if !r.status.is_success() {
            let e = r.status_error();
            return Err(match e {
                DriverError::Bmc(m) => DriverError::Bmc(format!(
                    "{m} (ResetType {reset_type} refused for system {id})"
                )),
                other => other,
            });
        }
        let want_state = if want == "On" {
            PowerState::On
        } else {
            PowerState::Off
        };
        if self.p.power_wait_s == 0 {
            return Ok(PowerOutcome {
                state: want_state,
                message: format!(
                    "system {id} {done} (ResetType {reset_type} accepted; not waited for, power_wait_s=0)"
                ),
            });
        }
        let deadline = t0 + Duration::from_secs(self.p.power_wait_s);
        let mut last = String::from("unknown");
        let mut last_err: Option<DriverError>;
        loop {
            let read = self
                .call(Method::GET, &view.target.system_url, None, &view.mode, None)
                .await
                .and_then(Reply::ok)
                .and_then(|r| r.json());
            match read {
                Ok(j) => {
                    last_err = None;
                    match j.get("PowerState").and_then(Value::as_str) {
                        Some(s) if s == want => {
                            return Ok(PowerOutcome {
                                state: want_state,
                                message: format!(
                                    "system {id} {done} (ResetType {reset_type}; PowerState {want} after \
                                     {:.1} s)",
                                    t0.elapsed().as_secs_f64()
                                ),
                            })
                        }
                        Some(s) => last = s.to_string(),
                        None => last = "(none)".to_string(),
                    }
                }
                Err(e @ DriverError::Auth(_)) => return Err(e),
                // A BMC busy applying the change may drop a read; keep polling until the deadline.
                Err(e) => last_err = Some(e),
            }
            let now = Instant::now();
            let pause = poll_interval(now - t0);
            if now + pause > deadline {
                break;
            }
            tokio::time::sleep(pause).await;
        }
        let waited = t0.elapsed().as_secs();
        Err(match last_err {
            Some(e) => DriverError::Bmc(format!(
                "BMC accepted ResetType {reset_type} for system {id} but reading PowerState failed until \
                 power_wait_s ({waited} s) passed: {e}"
            )),
            None => DriverError::Bmc(format!(
                "BMC accepted ResetType {reset_type} but still reports PowerState {last} after {waited} s \
                 (system {id} at {}); raise power_wait_s if this BMC is slow, or check the machine",
                self.addr()
            )),
        })
    }

    /// PATCHes the boot override; retries once with `If-Match` when the BMC demands it (412/428).
    async fn boot(
        &self,
        view: &SystemView,
        state: PowerState,
        target: &str,
        enabled: &str,
    ) -> Result<PowerOutcome, DriverError> {
        let id = &view.target.system_id;
        let boot = view.json.get("Boot");
        let targets = string_list(
            boot.and_then(|b| b.get("BootSourceOverrideTarget@Redfish.AllowableValues")),
        );
        if !allowed(&targets, target) {
            return Err(DriverError::Unsupported(format!(
                "system {id} at {} does not allow BootSourceOverrideTarget {target} (it allows {})",
                self.addr(),
                targets.map(|l| l.join(", ")).unwrap_or_default()
            )));
        }
        let modes = string_list(
            boot.and_then(|b| b.get("BootSourceOverrideEnabled@Redfish.AllowableValues")),
        );
        if !allowed(&modes, enabled) {
            return Err(DriverError::Unsupported(format!(
                "system {id} at {} does not allow BootSourceOverrideEnabled {enabled} (it allows {})",
                self.addr(),
                modes.map(|l| l.join(", ")).unwrap_or_default()
            )));
        }
        let body = json!({"Boot": {"BootSourceOverrideTarget": target, "BootSourceOverrideEnabled": enabled}});
        let url = &view.target.system_url;
        let mut r = self
            .call(Method::PATCH, url, Some(&body), &view.mode, None)
            .await?;
        if matches!(r.status.as_u16(), 412 | 428) {
            let etag = view.etag.clone().unwrap_or_else(|| "*".to_string());
            r = self
                .call(Method::PATCH, url, Some(&body), &view.mode, Some(&etag))
                .await?;
        }
        if !r.status.is_success() {
            return Err(r.status_error());
        }
        let what = if target == "Pxe" {
            "the network"
        } else {
            "the disk"
        };
        let how = if enabled == "Once" {
            "next boot"
        } else {
            "every boot"
        };
        Ok(PowerOutcome {
            state,
            message: format!(
                "system {id}: {how} from {what} (BootSourceOverrideTarget {target}, BootSourceOverrideEnabled \
                 {enabled})"
            ),
        })
    }
}

/// The outcome of a power change that was not needed.
fn already(id: &str, state: PowerState) -> PowerOutcome {
    PowerOutcome {
        state,
        message: format!("system {id} is already {}", state.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(origin("https://h:8443/x/y"), "https://h:8443");
        assert_eq!(origin("http://10.0.0.1"), "http://10.0.0.1");
        assert_eq!(last_segment("/redfish/v1/Systems/abc/"), "abc");
        assert_eq!(map_power("PoweringOn"), Some(PowerState::On));
        assert_eq!(map_power("PoweringOff"), Some(PowerState::Off));
        assert_eq!(map_power("Weird"), None);
        assert!(allowed(&None, "x"));
        assert!(!allowed(&Some(vec!["On".into()]), "ForceOff"));
        let m = redfish_message(
            br#"{"error":{"message":"bad","@Message.ExtendedInfo":[{"Message":"worse"}]}}"#,
        );
        assert_eq!(m, ": bad; worse");
        assert_eq!(redfish_message(b""), "");
    }
}
