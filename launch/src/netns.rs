//! Network namespaces, veth pairs, bridges and taps for the rack's boot networks: DHCP clients, relays,
//! foreign DHCP servers and VMs live in namespaces the caller creates, and the rack (which must reach the
//! regions on 127.0.0.1) binds the root-namespace end of a veth pair. Used by `ingot dev up --vms` (through
//! [`crate::vmlab`]), the whole-stack tests (as `ingot_tests::netns`) and `ingot-bench`.
//!
//! Every name carries a random suffix ([`Lab`]), so parallel tests and other users of the machine never
//! collide, and only what this harness created is ever touched: dropping a [`Netns`] kills the processes
//! still inside it (found with `ip netns pids`, i.e. only processes in a namespace we made) and deletes it;
//! dropping a [`RootLink`] deletes the root end of its veth pair (which deletes the pair); dropping an
//! [`NsProcess`] stops its process by PID. Drops run on panic too, so a failing test cleans up. A namespace
//! that must outlive this process (`ingot dev up`) is [`Netns::keep`]t and deleted later by name
//! ([`delete_netns`]).
//!
//! Everything here needs root (`CAP_NET_ADMIN`); [`ready`] says whether a test can run.

use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::io::Read;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Longest Linux interface name (`IFNAMSIZ` - 1).
pub const IFNAME_MAX: usize = 15;

/// Whether this process runs as root (namespaces, veths and ports below 1024 need it).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Whether real-peer tests must fail rather than skip when something is missing (set by scripts/test.sh
/// under CI).
pub fn peers_required() -> bool {
    std::env::var_os("CI").is_some() || std::env::var_os("INGOT_REQUIRE_PEERS").is_some()
}

/// A program by name, searched in `PATH` and the sbin directories (where Debian puts DHCP servers and
/// clients), `None` if absent.
pub fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .filter(|d| !d.is_empty())
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

/// Whether a test needing root and the programs `tools` can run. When it cannot: under CI
/// ([`peers_required`]) it panics, naming what is missing and how to install it; elsewhere it prints
/// `SKIPPED: <reason>` and returns false.
pub fn ready(test: &str, tools: &[&str]) -> bool {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root (network namespaces)".to_string());
    }
    missing.extend(
        tools
            .iter()
            .filter(|t| tool(t).is_none())
            .map(|t| t.to_string()),
    );
    if !Path::new("/usr/lib/ipxe").exists() && tools.contains(&"qemu-system-x86_64") {
        missing.push("/usr/lib/ipxe (ipxe)".to_string());
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "{test}: missing {}: run scripts/install-test-peers.sh (as root)",
        missing.join(", ")
    );
    if peers_required() {
        panic!("{msg} (CI must run real-peer tests)");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

/// Runs `cmd`, failing with its output if it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// `ip ARGS...` in the root namespace.
pub fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args)).map(|_| ())
}

/// Random lowercase hex of `n` characters (from /dev/urandom; the clock if it is unreadable).
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n.div_ceil(2)];
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            ^ u128::from(std::process::id());
        for (i, x) in b.iter_mut().enumerate() {
            *x = (t >> (8 * (i % 16))) as u8;
        }
    }
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<String>()
        .chars()
        .take(n)
        .collect()
}

/// A locally administered unicast MAC `02:xx:...` from a random suffix, for the namespaces' interfaces
/// and test clients.
pub fn random_mac() -> [u8; 6] {
    let h = random_hex(10);
    let mut m = [0x02u8, 0, 0, 0, 0, 0];
    for i in 0..5 {
        m[i + 1] = u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap_or(0);
    }
    m
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_str(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// One end of a veth pair: its interface name and, if any, its address (CIDR notation).
#[derive(Clone, Copy, Debug)]
pub struct End<'a> {
    /// Interface name (at most [`IFNAME_MAX`] characters).
    pub name: &'a str,
    /// Address to give it, e.g. `10.20.0.2/24`.
    pub addr: Option<&'a str>,
}

impl<'a> End<'a> {
    /// Interface `name` with `addr` (or none).
    pub fn new(name: &'a str, addr: Option<&'a str>) -> End<'a> {
        End { name, addr }
    }
}

/// One test's set of names: every namespace and root interface it creates carries the same random
/// suffix (`ingot-<sfx>-<tag>`), so it never touches another test's or anyone else's.
#[derive(Clone, Debug)]
pub struct Lab {
    /// The random suffix (4 hex characters).
    pub sfx: String,
}

impl Lab {
    /// A fresh random suffix.
    pub fn new() -> Lab {
        Lab { sfx: random_hex(4) }
    }

    /// The name for `tag`: `ingot-<sfx>-<tag>`; `tag` is at most 4 characters so the name fits an
    /// interface name.
    pub fn name(&self, tag: &str) -> String {
        let n = format!("ingot-{}-{tag}", self.sfx);
        assert!(n.len() <= IFNAME_MAX, "interface name {n} is too long");
        n
    }

    /// A new namespace named [`Lab::name`]`(tag)`, with `lo` up.
    pub fn netns(&self, tag: &str) -> Result<Netns> {
        Netns::create(&self.name(tag))
    }

    /// A veth pair from the root namespace into `ns`: root end [`Lab::name`]`(tag)` with `root_addr`
    /// (CIDR notation, e.g. `10.20.0.1/24`, or none), the other end `there` inside `ns`, both up.
    pub fn root_veth(
        &self,
        tag: &str,
        root_addr: Option<&str>,
        ns: &Netns,
        there: End<'_>,
    ) -> Result<RootLink> {
        let root = self.name(tag);
        ip(&[
            "link", "add", &root, "type", "veth", "peer", "name", there.name, "netns", &ns.name,
        ])?;
        let link = RootLink { name: root.clone() };
        if let Some(a) = root_addr {
            ip(&["addr", "add", a, "dev", &root])?;
        }
        // No IPv6 on the root end: no router solicitations or DAD traffic from us on the test link.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{root}/disable_ipv6"), "1");
        ip(&["link", "set", &root, "up"])?;
        if let Some(a) = there.addr {
            ns.ip(&["addr", "add", a, "dev", there.name])?;
        }
        ns.ip(&["link", "set", there.name, "up"])?;
        Ok(link)
    }
}

impl Default for Lab {
    fn default() -> Self {
        Lab::new()
    }
}

/// The root-namespace end of a veth pair this harness created; dropping it deletes the pair.
#[derive(Debug)]
pub struct RootLink {
    /// Interface name in the root namespace (what the rack's `--boot-interface` names).
    pub name: String,
}

impl RootLink {
    /// Gives up ownership: the pair outlives this value (it goes with its namespace, see
    /// [`Netns::keep`]). Returns the root end's name.
    pub fn keep(self) -> String {
        let me = std::mem::ManuallyDrop::new(self);
        me.name.clone()
    }

    /// The interface's MAC address.
    pub fn mac(&self) -> Result<String> {
        let p = format!("/sys/class/net/{}/address", self.name);
        Ok(std::fs::read_to_string(&p)
            .with_context(|| format!("reading {p}"))?
            .trim()
            .to_string())
    }
}

impl Drop for RootLink {
    fn drop(&mut self) {
        if Path::new("/sys/class/net").join(&self.name).exists() {
            let _ = Command::new("ip")
                .args(["link", "del", &self.name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A network namespace this harness created (`/run/netns/<name>`); dropping it kills every process
/// still inside (SIGKILL, by PID) and deletes it.
#[derive(Debug)]
pub struct Netns {
    /// The namespace's name (`ip netns` name).
    pub name: String,
}

impl Netns {
    /// Creates namespace `name` (it must not exist) and brings its `lo` up.
    pub fn create(name: &str) -> Result<Netns> {
        ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Gives up ownership: the namespace (and what runs in it) outlives this value, for a lab that must
    /// keep running after this process exits (`ingot dev up`); [`delete_netns`] removes it later. Returns
    /// its name.
    pub fn keep(self) -> String {
        let me = std::mem::ManuallyDrop::new(self);
        me.name.clone()
    }

    /// `ip ARGS...` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args)).map(|_| ())
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`, which execs it: the PID of
    /// the spawned child is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `program ARGS` inside the namespace to completion and returns its output (any exit status).
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {program} in {}", self.name))
    }

    /// Like [`Netns::exec`], killed after `limit` (its output so far is lost; an error then).
    pub fn exec_timeout(&self, program: &str, args: &[&str], limit: Duration) -> Result<Output> {
        let mut c = Command::new("timeout");
        c.args(["-s", "KILL", &format!("{}", limit.as_secs_f64())])
            .args(["ip", "netns", "exec", &self.name, program])
            .args(args)
            .stdin(Stdio::null());
        let out = c
            .output()
            .with_context(|| format!("running {program} in {}", self.name))?;
        if out.status.code() == Some(137) || out.status.code() == Some(124) {
            bail!(
                "{program} {args:?} in {} did not finish within {limit:?}: {}{}",
                self.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }

    /// Starts `program ARGS` inside the namespace with stdout and stderr appended to `log`.
    pub fn spawn(&self, program: &str, args: &[&str], log: &Path) -> Result<NsProcess> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        let child = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {program} in {}", self.name))?;
        Ok(NsProcess {
            child,
            what: format!("{program} in {}", self.name),
            log: log.to_path_buf(),
        })
    }

    /// Adds bridge `br` (up, no IPv6 autoconfiguration noise) inside the namespace.
    pub fn bridge(&self, br: &str) -> Result<()> {
        self.ip(&["link", "add", br, "type", "bridge"])?;
        // Forward at once (no STP listening/learning delay).
        self.ip(&["link", "set", br, "type", "bridge", "forward_delay", "0"])?;
        self.ip(&["link", "set", br, "up"])
    }

    /// A veth pair from this namespace to `other`: `here` here, `there` in `other`, both up, each with
    /// its address if given.
    pub fn veth_to(&self, here: End<'_>, other: &Netns, there: End<'_>) -> Result<()> {
        self.ip(&[
            "link",
            "add",
            here.name,
            "type",
            "veth",
            "peer",
            "name",
            there.name,
            "netns",
            &other.name,
        ])?;
        if let Some(a) = here.addr {
            self.ip(&["addr", "add", a, "dev", here.name])?;
        }
        if let Some(a) = there.addr {
            other.ip(&["addr", "add", a, "dev", there.name])?;
        }
        self.ip(&["link", "set", here.name, "up"])?;
        other.ip(&["link", "set", there.name, "up"])
    }

    /// Enslaves `port` (an interface in this namespace) to bridge `br`.
    pub fn attach(&self, port: &str, br: &str) -> Result<()> {
        self.ip(&["link", "set", port, "master", br])?;
        self.ip(&["link", "set", port, "up"])
    }

    /// Sets interface `dev`'s MAC (it is brought down and up around the change).
    pub fn set_mac(&self, dev: &str, mac: &str) -> Result<()> {
        self.ip(&["link", "set", dev, "down"])?;
        self.ip(&["link", "set", dev, "address", mac])?;
        self.ip(&["link", "set", dev, "up"])
    }

    /// Runs `f` on a thread that entered this namespace: sockets it creates belong to the namespace for
    /// their whole life, whichever thread uses them afterwards.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let fd = File::open(&path).with_context(|| format!("opening {path}"))?;
                // Changes only this (scoped, short-lived) thread's network namespace.
                rustix::thread::move_into_link_name_space(
                    fd.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .with_context(|| format!("setns({path})"))?;
                f()
            })
            .join()
            .map_err(|_| anyhow!("thread in namespace {} panicked", self.name))?
        })
    }

    /// A UDP socket inside this namespace bound to `0.0.0.0:port` on interface `dev` only
    /// (`SO_BINDTODEVICE`), with `SO_BROADCAST` and `SO_REUSEADDR`, the way a DHCP client or server
    /// without an address listens. Reads time out after `read_timeout`.
    pub fn udp_on(&self, dev: &str, port: u16, read_timeout: Duration) -> Result<UdpSocket> {
        let dev = dev.to_string();
        self.enter(move || udp_bound_to_device(&dev, port, read_timeout))
    }

    /// PIDs of the processes inside the namespace.
    pub fn pids(&self) -> Vec<u32> {
        netns_pids(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete_netns(&self.name);
    }
}

/// PIDs of the processes inside namespace `name` (`ip netns pids`; empty if it does not exist).
pub fn netns_pids(name: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", name])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills (SIGKILL) every process still inside namespace `name` and deletes it; nothing if it does not
/// exist. Returns whether it is gone. Only for namespaces this harness created (a [`Netns`] or a
/// [`Netns::keep`]t one whose name the caller recorded).
pub fn delete_netns(name: &str) -> bool {
    if !Path::new("/run/netns").join(name).exists() {
        return true;
    }
    for _ in 0..3 {
        let pids = netns_pids(name);
        if pids.is_empty() {
            break;
        }
        for p in pids {
            // A PID that `ip netns pids` found inside our own namespace.
            let _ = kill(p, rustix::process::Signal::KILL);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
    !Path::new("/run/netns").join(name).exists()
}

/// A UDP socket in the current namespace bound to `0.0.0.0:port` on `dev` (see [`Netns::udp_on`]).
pub fn udp_bound_to_device(dev: &str, port: u16, read_timeout: Duration) -> Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).context("socket")?;
    sock.set_reuse_address(true).context("SO_REUSEADDR")?;
    sock.set_broadcast(true).context("SO_BROADCAST")?;
    sock.bind_device(Some(dev.as_bytes()))
        .with_context(|| format!("SO_BINDTODEVICE {dev}"))?;
    let addr = std::net::SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    sock.bind(&addr.into())
        .with_context(|| format!("bind 0.0.0.0:{port} on {dev}"))?;
    let sock: UdpSocket = sock.into();
    sock.set_read_timeout(Some(read_timeout))?;
    Ok(sock)
}

/// Sends `sig` to `pid` (rustix's safe kill(2)).
pub fn kill(pid: u32, sig: rustix::process::Signal) -> Result<()> {
    let p = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| anyhow!("bad pid {pid}"))?;
    rustix::process::kill_process(p, sig).with_context(|| format!("kill({pid}, {sig:?})"))
}

/// A process started in a namespace ([`Netns::spawn`]); dropping it stops it (SIGTERM, then SIGKILL
/// after 2 s), by PID.
#[derive(Debug)]
pub struct NsProcess {
    child: std::process::Child,
    /// What it is, for messages.
    pub what: String,
    /// Where its output goes.
    pub log: PathBuf,
}

impl NsProcess {
    /// Takes charge of `child`, a process already started in a namespace (e.g. with its stdout sent to
    /// a file of its own): it is stopped on drop like a [`Netns::spawn`]ed one. `log` is where its
    /// messages go.
    pub fn adopt(child: std::process::Child, what: String, log: PathBuf) -> NsProcess {
        NsProcess { child, what, log }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` to it (only while it runs: never to a reaped, possibly reused, PID).
    pub fn signal(&mut self, signal: rustix::process::Signal) -> Result<()> {
        if !self.running() {
            bail!("{} (pid {}) is not running", self.what, self.pid());
        }
        // Our own child, not reaped yet (checked just above).
        kill(self.child.id(), signal)
    }

    /// Stops it: SIGTERM, up to `grace` for it to exit, then SIGKILL. Returns its exit status.
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let _ = self.signal(rustix::process::Signal::TERM);
        let t0 = Instant::now();
        while t0.elapsed() < grace {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }

    /// Waits up to `limit` for it to exit by itself; its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let t0 = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if t0.elapsed() >= limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        if self.running() {
            self.stop(Duration::from_secs(2));
        }
    }
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `limit`.
pub fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if t0.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Resident set size of process `pid` in KiB (`VmRSS` of `/proc/PID/status`), 0 if unreadable.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion
mod tests {
    use super::*;

    #[test]
    fn names_fit_interfaces() {
        let lab = Lab::new();
        assert_eq!(lab.sfx.len(), 4);
        assert!(lab.name("r1").len() <= IFNAME_MAX);
        assert!(lab.name("abcd").len() <= IFNAME_MAX);
        let m = random_mac();
        assert_eq!(m[0], 2);
        assert_eq!(mac_str(&m).len(), 17);
    }

    #[test]
    fn namespace_veth_and_socket_then_cleanup() {
        if !is_root() {
            eprintln!("SKIPPED: not root");
            return;
        }
        let lab = Lab::new();
        let root_name;
        let ns_name;
        {
            let ns = lab.netns("hn").unwrap();
            ns_name = ns.name.clone();
            let link = lab
                .root_veth(
                    "hr",
                    Some("10.250.7.1/24"),
                    &ns,
                    End::new("eth0", Some("10.250.7.2/24")),
                )
                .unwrap();
            root_name = link.name.clone();
            let out = ns
                .exec("ping", &["-c", "1", "-W", "2", "10.250.7.1"])
                .unwrap();
            if tool("ping").is_some() {
                assert!(out.status.success(), "{out:?}");
            }
            let s = ns.udp_on("eth0", 5999, Duration::from_millis(200)).unwrap();
            assert_eq!(s.local_addr().unwrap().port(), 5999);
            let mut p = ns
                .spawn(
                    "sleep",
                    &["30"],
                    &std::env::temp_dir().join(format!("{ns_name}.log")),
                )
                .unwrap();
            assert!(p.running());
            // The namespace's own sweep finds it too.
            assert!(ns.pids().contains(&p.pid()));
            p.stop(Duration::from_secs(1));
            assert!(!p.running());
            // Left running: the namespace's drop must kill it.
            let mut left = ns.command("sleep").arg("30").spawn().unwrap();
            std::thread::spawn(move || left.wait());
        }
        assert!(!Path::new("/sys/class/net").join(&root_name).exists());
        assert!(!Path::new("/run/netns").join(&ns_name).exists());
        let _ = std::fs::remove_file(std::env::temp_dir().join(format!("{ns_name}.log")));
    }
}
