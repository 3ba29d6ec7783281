//! OpenIPMI's `ipmi_sim` on 127.0.0.1: a real, third-party IPMI 2.0 BMC for the `ipmi` driver's tests and
//! the power benchmark.
//!
//! Why it exists: a driver tested only against itself proves nothing about real BMCs. `ipmi_sim` implements
//! RMCP+ (cipher suites 1-3 and 17), users and privileges, session limits and timeouts independently of
//! Ingot, and ipmitool talks to it too, so both driver modes meet the same peer. It runs in "external
//! chassis control" mode: a small shell script (`chassis.sh`) that ipmi_sim calls for power and boot device
//! keeps the state in files, so a test can check what the BMC actually did ([`IpmiSim::power_file_state`],
//! [`IpmiSim::boot_device`], [`IpmiSim::control_log`]) rather than trusting the driver's own report.
//!
//! Files (in a fresh directory under the system temp dir, removed on drop unless `INGOT_KEEP_PEER_DIRS` is
//! set): `lan.conf` (LAN channel on 127.0.0.1 and the chosen port, users), `bmc.emu` (one BMC at 0x20),
//! `chassis.sh`, `chassis.power` (`1`/`0`), `chassis.boot` (`pxe`/`default`/`none`; ipmi_sim maps "disk"
//! to `default` and does not pass the persistent flag on), `chassis.log` (one `set <what>=<value>` line per
//! call), `state/` (ipmi_sim's persistence) and `sim.log` (its output).
//!
//! Binaries: `$INGOT_PEER_IPMI_SIM` or `ipmi_sim` on `PATH`, `$INGOT_PEER_IPMITOOL` or `ipmitool`.

use ingot_rmcp as rmcp;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// What to install when a binary is missing.
const INSTALL_HINT: &str =
    "install openipmi (apt-get install openipmi ipmitool) or run scripts/install-test-peers.sh";
/// How long a started ipmi_sim gets to answer.
const READY_WITHIN: Duration = Duration::from_secs(10);
/// Ports tried before giving up (another process may take the free port between probe and bind).
const START_ATTEMPTS: u32 = 5;

/// How the simulated BMC is set up.
#[derive(Debug, Clone)]
pub struct IpmiSimOptions {
    /// The administrator's user name (at most 16 bytes, no quotes).
    pub username: String,
    /// Its password (at most 20 bytes, no quotes).
    pub password: String,
    /// Sessions the user may hold at once, as written into the user table (ipmi_sim 2.0.33 does not enforce
    /// it; its LAN channel holds at most 63 sessions in all).
    pub max_sessions: u8,
    /// Whether the machine starts powered on.
    pub powered_on: bool,
}

impl Default for IpmiSimOptions {
    /// `admin` / `password`, 30 sessions, powered off.
    fn default() -> IpmiSimOptions {
        IpmiSimOptions {
            username: "admin".into(),
            password: "password".into(),
            max_sessions: 30,
            powered_on: false,
        }
    }
}

/// Why the harness could not provide a running ipmi_sim.
#[derive(Debug, thiserror::Error)]
pub enum IpmiSimError {
    /// A binary is not installed: tests skip (or fail in CI) on this one.
    #[error("{what} not found ({detail}); {INSTALL_HINT}")]
    Missing {
        /// Which binary.
        what: &'static str,
        /// Where it was looked for.
        detail: String,
    },
    /// The options cannot be written into ipmi_sim's configuration.
    #[error("invalid ipmi_sim options: {0}")]
    Options(String),
    /// A file or process operation failed.
    #[error("ipmi_sim harness: {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// ipmi_sim exited or never answered.
    #[error("ipmi_sim did not come up on 127.0.0.1 ({detail}); see its log in {log}")]
    Start {
        /// What went wrong, with the log's tail.
        detail: String,
        /// The log file.
        log: String,
    },
}

impl IpmiSimError {
    /// Whether the error is a missing binary (the test skip policy's case).
    pub fn is_missing(&self) -> bool {
        matches!(self, IpmiSimError::Missing { .. })
    }
}

/// Looks up `name` on `PATH`, or takes `$env_var` when set.
fn find_binary(env_var: &str, name: &'static str) -> Result<PathBuf, IpmiSimError> {
    if let Some(p) = std::env::var_os(env_var).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(IpmiSimError::Missing {
                what: name,
                detail: format!("${env_var} is {}, which is not a file", p.display()),
            })
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| IpmiSimError::Missing {
            what: name,
            detail: format!("not on PATH and ${env_var} is not set"),
        })
}

/// A running ipmi_sim on 127.0.0.1 with its files. Stopped (SIGKILL to its PID) and its directory removed
/// on drop.
#[derive(Debug)]
pub struct IpmiSim {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
    opts: IpmiSimOptions,
    child: Option<Child>,
}

impl IpmiSim {
    /// The ipmi_sim binary: `$INGOT_PEER_IPMI_SIM` or `ipmi_sim` on `PATH`.
    pub fn ipmi_sim_path() -> Result<PathBuf, IpmiSimError> {
        find_binary("INGOT_PEER_IPMI_SIM", "ipmi_sim")
    }

    /// The ipmitool binary: `$INGOT_PEER_IPMITOOL` or `ipmitool` on `PATH`.
    pub fn ipmitool_path() -> Result<PathBuf, IpmiSimError> {
        find_binary("INGOT_PEER_IPMITOOL", "ipmitool")
    }

    /// Writes the configuration to a new temp directory, starts ipmi_sim on a free UDP port of 127.0.0.1
    /// and waits until it answers Get Channel Authentication Capabilities.
    pub async fn start(opts: IpmiSimOptions) -> Result<IpmiSim, IpmiSimError> {
        for (what, v, max) in [
            ("username", &opts.username, 16),
            ("password", &opts.password, 20),
        ] {
            if v.len() > max || v.contains(['"', '\n', '\r', '\\']) {
                return Err(IpmiSimError::Options(format!(
                    "{what} must be at most {max} bytes without quotes, backslashes or newlines"
                )));
            }
        }
        let bin = IpmiSim::ipmi_sim_path()?;
        let dir = std::env::temp_dir().join(format!(
            "ingot-ipmi-sim-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let io = |context: String| move |source| IpmiSimError::Io { context, source };
        std::fs::create_dir_all(dir.join("state"))
            .map_err(io(format!("create {}", dir.display())))?;
        let mut sim = IpmiSim {
            dir,
            port: 0,
            bin,
            opts,
            child: None,
        };
        sim.write_static_files()?;
        sim.set_power_file(sim.opts.powered_on)
            .map_err(io("write chassis.power".into()))?;
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            sim.port = free_udp_port().map_err(io("find a free UDP port on 127.0.0.1".into()))?;
            match sim.launch().await {
                Ok(()) => return Ok(sim),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| IpmiSimError::Start {
            detail: "no attempt made".into(),
            log: sim.log_path().display().to_string(),
        }))
    }

    /// The UDP port ipmi_sim listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address ipmi_sim listens on.
    pub fn address(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The directory with its configuration, state files and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configured user name.
    pub fn username(&self) -> &str {
        &self.opts.username
    }

    /// The configured password.
    pub fn password(&self) -> &str {
        &self.opts.password
    }

    /// `ipmi` driver parameters for this BMC (address, port, username, password, tool): what tests and the
    /// benchmark put into a `PowerRequest`.
    pub fn driver_params(&self, tool: &str) -> HashMap<String, String> {
        [
            ("address", self.address().to_string()),
            ("port", self.port.to_string()),
            ("username", self.opts.username.clone()),
            ("password", self.opts.password.clone()),
            ("tool", tool.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The power state the BMC last set through the chassis script (`true` = on).
    pub fn power_file_state(&self) -> bool {
        self.read("chassis.power").is_some_and(|v| v.trim() == "1")
    }

    /// The boot device the BMC last set (`pxe`, `default` for disk, `none`), if any.
    pub fn boot_device(&self) -> Option<String> {
        self.read("chassis.boot").map(|v| v.trim().to_string())
    }

    /// Every `set <what>=<value>` the BMC made through the chassis script, oldest first (`power=1`,
    /// `power=0`, `boot=pxe`, `shutdown=1`, …).
    pub fn control_log(&self) -> Vec<String> {
        self.read("chassis.log")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(" set ").map(|(_, s)| s.trim().to_string()))
            .collect()
    }

    /// Sets the machine's power state behind the BMC's back (as if someone pressed the button).
    pub fn set_power_file(&self, on: bool) -> std::io::Result<()> {
        std::fs::write(
            self.dir.join("chassis.power"),
            if on { "1\n" } else { "0\n" },
        )
    }

    /// The last lines of ipmi_sim's output, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Whether the ipmi_sim process is alive.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills ipmi_sim (SIGKILL to its PID) and waits for it to exit. Its files stay.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        }
    }

    /// Stops ipmi_sim and starts it again on the same port with the same files (the machine keeps its power
    /// state, sessions are lost): a BMC reboot.
    pub async fn restart(&mut self) -> Result<(), IpmiSimError> {
        self.stop().await;
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            match self.launch().await {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last.unwrap_or_else(|| IpmiSimError::Start {
            detail: "no attempt made".into(),
            log: self.log_path().display().to_string(),
        }))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("sim.log")
    }

    fn read(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join(name)).ok()
    }

    /// Writes `chassis.sh` and `bmc.emu` (they do not depend on the port).
    fn write_static_files(&self) -> Result<(), IpmiSimError> {
        let st = self.dir.join("chassis");
        let st = st.display();
        // ipmi_sim runs `chassis.sh get power [boot]` (expects `power:N`) and `chassis.sh set power 1`,
        // `set boot pxe`, `set shutdown 1` … through popen().
        let script = format!(
            r#"#!/bin/sh
st="{st}"
op=$1; shift
case $op in
  get) for k in "$@"; do
         case $k in boot) d=default;; *) d=0;; esac
         echo "$k:$(cat "$st.$k" 2>/dev/null || echo $d)"; done ;;
  set) while [ $# -ge 2 ]; do echo "$2" > "$st.$1"; echo "$(date +%T.%N) set $1=$2" >> "$st.log"; shift 2; done ;;
  check) exit 0 ;;
esac
"#
        );
        let script_path = self.dir.join("chassis.sh");
        let io = |context: &str| {
            let context = context.to_string();
            move |source| IpmiSimError::Io { context, source }
        };
        std::fs::write(&script_path, script).map_err(io("write chassis.sh"))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script_path, std::fs::Permissions::from_mode(0o755))
                .map_err(io("chmod chassis.sh"))?;
        }
        let emu = "mc_setbmc 0x20\n\
                   mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n\
                   sel_enable 0x20 1000 0x0a\n\
                   mc_enable 0x20\n";
        std::fs::write(self.dir.join("bmc.emu"), emu).map_err(io("write bmc.emu"))
    }

    /// Writes `lan.conf` for the current port.
    fn write_lan_conf(&self) -> Result<(), IpmiSimError> {
        let o = &self.opts;
        let conf = format!(
            r#"name "ingotbmc"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "{script}"
  user 1 true  ""      "anonymous" user  {max} none md2 md5 straight
  user 2 true  "{user}" "{pw}" admin {max} none md2 md5 straight
"#,
            port = self.port,
            script = self.dir.join("chassis.sh").display(),
            user = o.username,
            pw = o.password,
            max = o.max_sessions.max(1),
        );
        std::fs::write(self.dir.join("lan.conf"), conf).map_err(|source| IpmiSimError::Io {
            context: "write lan.conf".into(),
            source,
        })
    }

    /// Starts ipmi_sim on `self.port` and waits until it answers; kills it on failure.
    async fn launch(&mut self) -> Result<(), IpmiSimError> {
        self.write_lan_conf()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|source| IpmiSimError::Io {
                context: "open sim.log".into(),
                source,
            })?;
        let log2 = log.try_clone().map_err(|source| IpmiSimError::Io {
            context: "open sim.log".into(),
            source,
        })?;
        let child = Command::new(&self.bin)
            .arg("-n")
            .arg("-c")
            .arg(self.dir.join("lan.conf"))
            .arg("-f")
            .arg(self.dir.join("bmc.emu"))
            .arg("-s")
            .arg(self.dir.join("state"))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| IpmiSimError::Io {
                context: format!("start {}", self.bin.display()),
                source,
            })?;
        self.child = Some(child);
        match self.wait_ready().await {
            Ok(()) => Ok(()),
            Err(detail) => {
                self.stop().await;
                Err(IpmiSimError::Start {
                    detail: format!(
                        "port {}: {detail}; log tail:\n{}",
                        self.port,
                        self.log_tail()
                    ),
                    log: self.log_path().display().to_string(),
                })
            }
        }
    }

    /// Probes with Get Channel Authentication Capabilities until an answer comes, the process exits or
    /// [`READY_WITHIN`] passes.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot bind a probe socket: {e}"))?;
        sock.connect(("127.0.0.1", self.port))
            .await
            .map_err(|e| format!("cannot connect the probe socket: {e}"))?;
        let probe = rmcp::channel_auth_caps_request(0, 4);
        let deadline = tokio::time::Instant::now() + READY_WITHIN;
        let mut buf = [0u8; rmcp::MAX_DATAGRAM];
        while tokio::time::Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("ipmi_sim exited with {status}"));
                }
            }
            let _ = sock.send(&probe).await;
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(100), sock.recv(&mut buf)).await
            {
                if n > 0 {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!("no answer within {} s", READY_WITHIN.as_secs()))
    }
}

impl Drop for IpmiSim {
    /// Kills ipmi_sim by PID and removes the directory (kept when `INGOT_KEEP_PEER_DIRS` is set).
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if std::env::var_os("INGOT_KEEP_PEER_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
fn free_udp_port() -> std::io::Result<u16> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok(s.local_addr()?.port())
}
