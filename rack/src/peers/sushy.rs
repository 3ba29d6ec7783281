//! OpenStack sushy-tools' Redfish BMC emulator (`sushy-emulator`) on loopback, for the `redfish` driver's
//! tests and benchmarks.
//!
//! Why it exists: Ingot's Redfish client must be proven against a Redfish service it did not write — sushy is
//! what OpenStack Ironic's CI drives its own Redfish driver against. This harness starts one emulator with its
//! FAKE systems driver (no libvirt, no VMs): it writes `emulator.conf` with N fake systems, a bcrypt htpasswd
//! file (made by the venv's python `bcrypt`, the only digest sushy accepts) and optionally HTTPS with a
//! certificate from a throw-away CA (made by the `openssl` CLI), picks a free port on 127.0.0.1, starts
//! `sushy-emulator --config`, and waits until `GET /redfish/v1/` answers. It stops exactly the process it
//! started (by PID, also on drop) and removes its directory.
//!
//! Know when using it: the fake driver applies a power change after a RANDOM 1–11 s delay (clients must
//! poll), ignores `BootSourceOverrideEnabled` (it always reports `Continuous`), offers no SessionService
//! (clients fall back to basic auth), and runs Flask's development server (HTTP/1.0, a connection per request,
//! a bcrypt check per request).
//!
//! Binaries: `INGOT_PEER_SUSHY` or `$HOME/.cache/ingot-peers/venv/bin/sushy-emulator`; python for bcrypt:
//! `INGOT_PEER_PYTHON` or `$HOME/.cache/ingot-peers/venv/bin/python`. `scripts/install-test-peers.sh`
//! installs both.

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the emulator may take to answer its first request.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// What to start.
#[derive(Debug, Clone)]
pub struct SushyOptions {
    /// Number of fake systems (ids are UUIDs `00000000-0000-0000-0000-<12-digit index>`, names `node<i>`).
    pub systems: usize,
    /// Serve HTTPS with a certificate for 127.0.0.1 signed by a fresh CA ([`Sushy::ca_pem`]).
    pub https: bool,
    /// Require HTTP basic auth (the service root stays open, as in Redfish).
    pub auth: bool,
    /// The one user, when `auth`.
    pub username: String,
    /// Its password (stored only as a bcrypt digest in the emulator's directory).
    pub password: String,
    /// Initial power state of every system.
    pub power_on: bool,
}

impl Default for SushyOptions {
    fn default() -> Self {
        SushyOptions {
            systems: 1,
            https: false,
            auth: true,
            username: "admin".into(),
            password: "password".into(),
            power_on: false,
        }
    }
}

/// Why the emulator could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SushyError {
    /// sushy-emulator, its python or openssl (for HTTPS) is not installed: tests skip (or fail in CI).
    #[error("{0}")]
    Missing(String),
    /// It is installed but did not start or answer.
    #[error("{0}")]
    Failed(String),
}

/// A running sushy-emulator.
#[derive(Debug)]
pub struct Sushy {
    child: Option<Child>,
    dir: PathBuf,
    base_url: String,
    system_ids: Vec<String>,
    ca_pem: Option<String>,
    opts: SushyOptions,
}

/// `$HOME/.cache/ingot-peers/venv/bin/<name>`, or the path in `env` if set.
fn peer_path(env: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")?;
    Some(
        Path::new(&home)
            .join(".cache/ingot-peers/venv/bin")
            .join(name),
    )
}

/// The path if it is an existing file, else `Missing` saying how to install it.
fn require(env: &str, name: &str) -> Result<PathBuf, SushyError> {
    match peer_path(env, name) {
        Some(p) if p.is_file() => Ok(p),
        Some(p) => Err(SushyError::Missing(format!(
            "{name} not found at {} (set {env} to override); run scripts/install-test-peers.sh (pip installs \
             sushy-tools)",
            p.display()
        ))),
        None => Err(SushyError::Missing(format!(
            "{name}: HOME is unset and {env} is not set; run scripts/install-test-peers.sh (pip installs \
             sushy-tools)"
        ))),
    }
}

/// Runs a helper process to completion (bounded), returning its stdout; failures name the program.
async fn run_tool(cmd: &mut tokio::process::Command, what: &str) -> Result<Vec<u8>, SushyError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            SushyError::Missing(format!("{what}: not installed ({e})"))
        } else {
            SushyError::Failed(format!("{what}: cannot start: {e}"))
        }
    })?;
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .map_err(|_| SushyError::Failed(format!("{what}: still running after 30 s")))?
        .map_err(|e| SushyError::Failed(format!("{what}: {e}")))?;
    if !out.status.success() {
        return Err(SushyError::Failed(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

/// A free TCP port on 127.0.0.1 (bound and released; the caller retries if someone takes it meanwhile).
fn free_port() -> Result<u16, SushyError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| {
        SushyError::Failed(format!("cannot bind 127.0.0.1:0 to find a free port: {e}"))
    })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| SushyError::Failed(format!("no local address: {e}")))
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> SushyError {
    SushyError::Failed(format!("{what} {}: {e}", path.display()))
}

impl Sushy {
    /// Starts an emulator as `opts` says and waits (up to 20 s) until it answers `GET /redfish/v1/`.
    pub async fn start(opts: SushyOptions) -> Result<Sushy, SushyError> {
        let sushy = require("INGOT_PEER_SUSHY", "sushy-emulator")?;
        let python = require("INGOT_PEER_PYTHON", "python")?;
        if opts.systems == 0 || opts.systems > 999 {
            return Err(SushyError::Failed(format!(
                "systems must be 1..=999, not {}",
                opts.systems
            )));
        }
        let dir = std::env::temp_dir().join(format!(
            "ingot-sushy-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir(&dir).map_err(|e| io_err("cannot create", &dir, e))?;
        // From here on, dropping `s` (on any error) removes the directory.
        let mut s = Sushy {
            child: None,
            dir,
            base_url: String::new(),
            system_ids: (1..=opts.systems)
                .map(|i| format!("00000000-0000-0000-0000-{i:012}"))
                .collect(),
            ca_pem: None,
            opts,
        };
        s.prepare(&python).await?;
        let mut last = String::new();
        for _attempt in 0..3 {
            let port = free_port()?;
            match s.launch(&sushy, port).await {
                Ok(()) => return Ok(s),
                Err(e) => {
                    s.stop();
                    let log = s.log_tail(40);
                    if !log.contains("Address already in use") {
                        return Err(e);
                    }
                    last = e.to_string();
                }
            }
        }
        Err(SushyError::Failed(format!(
            "sushy-emulator could not get a free port in 3 attempts: {last}"
        )))
    }

    /// Writes htpasswd, certificates and a config template (the port is filled in by `launch`).
    async fn prepare(&mut self, python: &Path) -> Result<(), SushyError> {
        if self.opts.auth {
            let digest = run_tool(
                tokio::process::Command::new(python)
                    .arg("-c")
                    .arg(
                        "import bcrypt,os,sys; sys.stdout.write(bcrypt.hashpw(os.environ['SUSHY_PW'].encode(), \
                         bcrypt.gensalt(rounds=4)).decode())",
                    )
                    // The password goes through the environment, not argv (visible in `ps`).
                    .env("SUSHY_PW", &self.opts.password),
                "python -c 'import bcrypt' (bcrypt digest for sushy's htpasswd)",
            )
            .await?;
            let digest = String::from_utf8_lossy(&digest).trim().to_string();
            if !digest.starts_with("$2") {
                return Err(SushyError::Failed(format!(
                    "python bcrypt produced no bcrypt digest ({} bytes); reinstall with \
                     scripts/install-test-peers.sh",
                    digest.len()
                )));
            }
            let path = self.dir.join("htpasswd");
            std::fs::write(&path, format!("{}:{digest}\n", self.opts.username))
                .map_err(|e| io_err("cannot write", &path, e))?;
        }
        if self.opts.https {
            self.make_certs().await?;
        }
        Ok(())
    }

    /// A CA and a server certificate for 127.0.0.1 it signed (`CA:FALSE`: rustls refuses a CA certificate as a
    /// server certificate, so the one-step self-signed `openssl req -x509` certificate would not do).
    async fn make_certs(&mut self) -> Result<(), SushyError> {
        let d = &self.dir;
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        run_tool(
            tokio::process::Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=Ingot test BMC CA",
                ])
                .args(ec)
                .arg("-keyout")
                .arg(d.join("ca.key"))
                .arg("-out")
                .arg(d.join("ca.pem")),
            "openssl req -x509 (test CA for sushy's HTTPS)",
        )
        .await?;
        run_tool(
            tokio::process::Command::new("openssl")
                .args(["req", "-new", "-subj", "/CN=127.0.0.1"])
                .args(ec)
                .arg("-keyout")
                .arg(d.join("key.pem"))
                .arg("-out")
                .arg(d.join("req.csr")),
            "openssl req -new (sushy's server key)",
        )
        .await?;
        let ext = d.join("ext.cnf");
        std::fs::write(
            &ext,
            "basicConstraints=critical,CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .map_err(|e| io_err("cannot write", &ext, e))?;
        run_tool(
            tokio::process::Command::new("openssl")
                .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
                .arg("-in")
                .arg(d.join("req.csr"))
                .arg("-CA")
                .arg(d.join("ca.pem"))
                .arg("-CAkey")
                .arg(d.join("ca.key"))
                .arg("-CAserial")
                .arg(d.join("ca.srl"))
                .arg("-extfile")
                .arg(&ext)
                .arg("-out")
                .arg(d.join("cert.pem")),
            "openssl x509 -req (sushy's server certificate)",
        )
        .await?;
        let ca = d.join("ca.pem");
        self.ca_pem =
            Some(std::fs::read_to_string(&ca).map_err(|e| io_err("cannot read", &ca, e))?);
        Ok(())
    }

    /// Writes the config for `port`, starts the emulator and waits until it answers.
    async fn launch(&mut self, sushy: &Path, port: u16) -> Result<(), SushyError> {
        let d = &self.dir;
        let py = |p: &Path| format!("{:?}", p.to_string_lossy());
        let mut conf = String::new();
        let _ = writeln!(conf, "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'");
        let _ = writeln!(conf, "SUSHY_EMULATOR_LISTEN_PORT = {port}");
        let _ = writeln!(conf, "SUSHY_EMULATOR_FAKE_DRIVER = True");
        let _ = writeln!(conf, "SUSHY_EMULATOR_STATE_DIR = {}", py(&d.join("state")));
        if self.opts.auth {
            let _ = writeln!(
                conf,
                "SUSHY_EMULATOR_AUTH_FILE = {}",
                py(&d.join("htpasswd"))
            );
        }
        if self.opts.https {
            let _ = writeln!(
                conf,
                "SUSHY_EMULATOR_SSL_CERT = {}",
                py(&d.join("cert.pem"))
            );
            let _ = writeln!(conf, "SUSHY_EMULATOR_SSL_KEY = {}", py(&d.join("key.pem")));
        }
        let _ = writeln!(conf, "SUSHY_EMULATOR_FAKE_SYSTEMS = [");
        for (i, id) in self.system_ids.iter().enumerate() {
            let n = i + 1;
            let _ = writeln!(
                conf,
                "  {{'uuid': '{id}', 'name': 'node{n}', 'power_state': '{}', 'external_notifier': False, \
                 'nics': [{{'mac': '52:54:00:00:{:02x}:{:02x}', 'ip': '127.0.1.{}'}}]}},",
                if self.opts.power_on { "On" } else { "Off" },
                n / 256,
                n % 256,
                n % 250 + 1
            );
        }
        let _ = writeln!(conf, "]");
        let conf_path = d.join("emulator.conf");
        std::fs::write(&conf_path, conf).map_err(|e| io_err("cannot write", &conf_path, e))?;
        let log_path = d.join("emulator.log");
        let log =
            std::fs::File::create(&log_path).map_err(|e| io_err("cannot create", &log_path, e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| io_err("cannot reopen", &log_path, e))?;
        let child = Command::new(sushy)
            .arg("--config")
            .arg(&conf_path)
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| SushyError::Failed(format!("cannot start {}: {e}", sushy.display())))?;
        self.child = Some(child);
        let scheme = if self.opts.https { "https" } else { "http" };
        self.base_url = format!("{scheme}://127.0.0.1:{port}");

        let probe = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| SushyError::Failed(format!("cannot build the readiness probe: {e}")))?;
        let root = format!("{}/redfish/v1/", self.base_url);
        let t0 = Instant::now();
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(SushyError::Failed(format!(
                        "sushy-emulator exited ({status}) before answering; its log ends:\n{}",
                        self.log_tail(20)
                    )));
                }
            }
            if let Ok(r) = probe.get(&root).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if t0.elapsed() > START_TIMEOUT {
                return Err(SushyError::Failed(format!(
                    "sushy-emulator did not answer GET {root} within {} s; its log ends:\n{}",
                    START_TIMEOUT.as_secs(),
                    self.log_tail(20)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The emulator's URL, `http(s)://127.0.0.1:<port>`: the `address` power parameter.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The fake systems' ids, in order (the `system` power parameter).
    pub fn system_ids(&self) -> &[String] {
        &self.system_ids
    }

    /// The CA certificate (PEM) the HTTPS certificate chains to: the `ca_cert` power parameter.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The user the emulator accepts.
    pub fn username(&self) -> &str {
        &self.opts.username
    }

    /// That user's password.
    pub fn password(&self) -> &str {
        &self.opts.password
    }

    /// The last `lines` lines of the emulator's log, for a failed test's report.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.join("emulator.log")) {
            let _ = f.read_to_string(&mut text);
        }
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Stops the emulator (SIGKILL to the PID it was started with, then reaps it). Idempotent; the port then
    /// refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Sushy {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
