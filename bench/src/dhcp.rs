//! `ingot-bench --dhcp`: the rack's DHCP server under ISC Kea's `perfdhcp` (package kea-admin), side by side
//! with `kea-dhcp4` (memfile lease file on) in the same namespaces, at the same rates, in one run.
//!
//! Topology (`tests/src/netns.rs`, included as `crate::netns`): the server (ingot-rack, or kea-dhcp4) in the root
//! namespace serves the root end `ingot-XXXX-bd` (10.32.0.1/14) of a veth pair; perfdhcp runs in its own
//! namespace on the other end (10.32.0.2/14). perfdhcp acts as a relay (giaddr = its address), so both
//! servers answer it by unicast. Each rate step uses fresh client MACs (its own base MAC), so every
//! exchange is a new lease; the subnet is large enough for every step and the RSS phase together.
//!
//! Figures: for each step (rate r/s for `seconds` s): DORA/s (ACKs ÷ seconds), drops % (DISCOVER-OFFER +
//! REQUEST-ACK drops ÷ DISCOVERs), and the REQUEST→ACK delay p50/p99 from perfdhcp's per-exchange
//! timestamps (`-x t`): for ingot-rack that is the lease-commit latency, since the rack holds an ACK until
//! its lease is committed by a majority of regions. The rate steps up until drops reach 0.1 %; the best
//! passing step is the "DORA/s at < 0.1 % drops". Then (after waiting, at most 60 s, for the rack to ACK
//! again) ingot-rack's RSS is read before and after `leases` more distinct MACs at 1,000/s; every MAC is
//! offered an address, so the rack's table holds them whether or not the region kept up with the ACKs.
//!
//! Needs root, perfdhcp and kea-dhcp4 (scripts/install-test-peers.sh). Every perfdhcp run is bounded by
//! `-n`, `-p` and `timeout`; only processes started here are stopped, by PID; the namespace and veth go
//! on drop.

use crate::netns::{self, End, Lab, Netns, RootLink};
use anyhow::{bail, Context, Result};
use ingot_launch::LocalCluster;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The benchmark subnet (a /14: 262,144 addresses, enough for every step plus the RSS phase).
const CIDR: &str = "10.32.0.0/14";
const SERVER: &str = "10.32.0.1";
const SERVER_CIDR: &str = "10.32.0.1/14";
const CLIENT_CIDR: &str = "10.32.0.2/14";
const POOL: (&str, &str) = ("10.32.1.0", "10.35.255.250");
/// Rate of the RSS phase, /s.
const RSS_RATE: u64 = 1000;
/// Drops ratio (%) a step must stay under to count.
const MAX_DROPS_PCT: f64 = 0.1;

/// Settings of the DHCP benchmark (from the command line).
#[derive(Clone, Debug)]
pub struct DhcpOpts {
    /// Offered rates (DORA/s), stepped up in order until drops reach 0.1 %.
    pub rates: Vec<u64>,
    /// Length of each step, seconds.
    pub seconds: u64,
    /// Distinct MACs driven through ingot-rack for the RSS figure (0 skips it).
    pub leases: u64,
    /// Working directory (configs, logs, perfdhcp outputs).
    pub dir: PathBuf,
}

/// One perfdhcp run.
#[derive(Clone, Debug, Default)]
pub struct Step {
    /// Offered rate, /s.
    pub rate: u64,
    /// DISCOVERs sent.
    pub discovers: u64,
    /// ACKs received.
    pub acks: u64,
    /// DISCOVER-OFFER + REQUEST-ACK drops.
    pub drops: u64,
    /// Seconds of sending.
    pub seconds: u64,
    /// REQUEST→ACK delays of the successful exchanges, ms, sorted.
    pub ack_ms: Vec<f64>,
    /// perfdhcp's exit code (3: some drops).
    pub rc: i32,
}

impl Step {
    /// ACKs per second of sending.
    pub fn dora_per_s(&self) -> f64 {
        self.acks as f64 / self.seconds.max(1) as f64
    }
    /// Drops as % of DISCOVERs (100 % when nothing was sent).
    pub fn drops_pct(&self) -> f64 {
        if self.discovers == 0 {
            return 100.0;
        }
        100.0 * self.drops as f64 / self.discovers as f64
    }
    /// Whether the step counts (drops under 0.1 %).
    pub fn passes(&self) -> bool {
        self.discovers > 0 && self.drops_pct() < MAX_DROPS_PCT
    }
    fn pct_ms(&self, p: f64) -> f64 {
        if self.ack_ms.is_empty() {
            return f64::NAN;
        }
        let i = ((self.ack_ms.len() as f64 - 1.0) * p).round() as usize;
        self.ack_ms[i.min(self.ack_ms.len() - 1)]
    }
}

/// Everything the DHCP benchmark measured.
#[derive(Clone, Debug, Default)]
pub struct DhcpFigures {
    /// ingot-rack's steps.
    pub ingot: Vec<Step>,
    /// kea-dhcp4's steps.
    pub kea: Vec<Step>,
    /// ingot-rack's RSS (KiB) before the RSS phase (with the steps' leases).
    pub rss_before_kib: u64,
    /// ingot-rack's RSS (KiB) after it.
    pub rss_after_kib: u64,
    /// Leases ingot-rack holds at the end (ACKs of every step and of the RSS phase).
    pub leases_total: u64,
    /// The RSS phase's perfdhcp run.
    pub rss_run: Option<Step>,
}

/// Parses perfdhcp's report: the two exchanges' counters and (with `-x t`) the REQUEST-ACK timestamps.
pub fn parse_perfdhcp(text: &str, rate: u64, seconds: u64, rc: i32) -> Step {
    let mut s = Step {
        rate,
        seconds,
        rc,
        ..Default::default()
    };
    let mut section = "";
    let num = |l: &str| -> u64 {
        l.rsplit(':')
            .next()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    for l in text.lines() {
        let l = l.trim();
        if l.starts_with("***") {
            section = if l.contains("Timestamps") && l.contains("REQUEST-ACK") {
                "ts-ra"
            } else if l.contains("Timestamps") {
                "ts"
            } else if l.contains("DISCOVER-OFFER") {
                "do"
            } else if l.contains("REQUEST-ACK") {
                "ra"
            } else {
                ""
            };
            continue;
        }
        match section {
            "do" if l.starts_with("sent packets:") => s.discovers = num(l),
            "do" | "ra" if l.starts_with("drops:") => s.drops += num(l),
            "ra" if l.starts_with("received packets:") => s.acks = num(l),
            "ts-ra" if l.starts_with("sent / received:") => {
                let v: Vec<f64> = l
                    .trim_start_matches("sent / received:")
                    .split('/')
                    .filter_map(|x| x.trim().parse().ok())
                    .collect();
                if let [sent, recv] = v[..] {
                    s.ack_ms.push((recv - sent) * 1000.0);
                }
            }
            _ => {}
        }
    }
    s.ack_ms.sort_by(f64::total_cmp);
    s
}

/// One bounded perfdhcp run against [`SERVER`].
struct Perf<'a> {
    /// The client namespace and its interface.
    ns: &'a Netns,
    dev: &'a str,
    /// Offered rate, /s, and seconds of sending.
    rate: u64,
    seconds: u64,
    /// Distinct client MACs, from base MAC `02:<tag>:00:00:00:00`.
    clients: u64,
    tag: u8,
    /// Whether to ask for per-exchange timestamps (`-x t`).
    timers: bool,
    /// Where its output goes.
    out: &'a Path,
}

/// Runs `p`: bounded by `-n`, `-p`, a 2 s exit wait and `timeout`.
fn perfdhcp(p: &Perf<'_>) -> Result<Step> {
    let (rate, seconds, out) = (p.rate, p.seconds, p.out);
    let mut args = vec![
        "-4".to_string(),
        "-l".into(),
        p.dev.into(),
        "-r".into(),
        rate.to_string(),
        "-R".into(),
        p.clients.to_string(),
        "-n".into(),
        (rate * seconds).min(p.clients).to_string(),
        "-p".into(),
        seconds.to_string(),
        "-W".into(),
        "2000000".into(),
        "-b".into(),
        format!("mac=02:{:02x}:00:00:00:00", p.tag),
    ];
    if p.timers {
        args.push("-x".into());
        args.push("t".into());
    }
    args.push(SERVER.into());
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let st = Command::new("timeout")
        .args(["-s", "KILL", &(seconds + 30).to_string()])
        .args(["ip", "netns", "exec", &p.ns.name])
        .arg(netns::tool("perfdhcp").context("perfdhcp not found")?)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .context("running perfdhcp")?;
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let rc = st.code().unwrap_or(-1);
    if !(rc == 0 || rc == 3) {
        bail!(
            "perfdhcp failed (exit {rc}); its output ({}):\n{}",
            out.display(),
            tail(&text, 30)
        );
    }
    Ok(parse_perfdhcp(&text, rate, seconds, rc))
}

fn tail(text: &str, n: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}

/// Steps the rate up (each step with fresh MACs, tags from `tag0`) until a step has drops ≥ 0.1 %.
fn steps(ns: &Netns, o: &DhcpOpts, who: &str, tag0: u8) -> Result<Vec<Step>> {
    let mut out = Vec::new();
    for (i, rate) in o.rates.iter().enumerate() {
        let clients = rate * o.seconds;
        let file = o.dir.join(format!("perfdhcp-{who}-{rate}.out"));
        let s = perfdhcp(&Perf {
            ns,
            dev: "eth0",
            rate: *rate,
            seconds: o.seconds,
            clients,
            tag: tag0 + i as u8,
            timers: true,
            out: &file,
        })?;
        eprintln!(
            "   {who:<10} rate {rate:>6}/s: {:>7.0} DORA/s, drops {:.3} %, ACK p50 {:.2} ms p99 {:.2} ms (perfdhcp exit {})",
            s.dora_per_s(),
            s.drops_pct(),
            s.pct_ms(0.5),
            s.pct_ms(0.99),
            s.rc
        );
        let pass = s.passes();
        out.push(s);
        if !pass {
            break;
        }
    }
    Ok(out)
}

/// Runs 1 s perfdhcp probes (10/s, 5 fresh MACs from base tag `tag`) until one gets an ACK, for at most
/// `limit`; how long that took, `None` if never.
fn wait_answering(ns: &Netns, o: &DhcpOpts, tag: u8, limit: Duration) -> Result<Option<Duration>> {
    let t0 = Instant::now();
    let mut round = 0u8;
    while t0.elapsed() < limit {
        let s = tokio::task::block_in_place(|| {
            perfdhcp(&Perf {
                ns,
                dev: "eth0",
                rate: 10,
                seconds: 1,
                clients: 5,
                tag: tag.wrapping_add(round.wrapping_mul(0x80)),
                timers: false,
                out: &o.dir.join("perfdhcp-probe.out"),
            })
        })?;
        if s.acks > 0 {
            return Ok(Some(t0.elapsed()));
        }
        round = round.wrapping_add(1);
    }
    Ok(None)
}

/// kea-dhcp4 on `iface` (raw sockets) with a memfile lease file in `dir`; stopped by PID on drop.
struct Kea(std::process::Child);

impl Drop for Kea {
    fn drop(&mut self) {
        let _ = netns::kill(self.0.id(), rustix::process::Signal::TERM);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_kea(iface: &str, dir: &Path) -> Result<Kea> {
    let conf = dir.join("kea-dhcp4.json");
    std::fs::write(
        &conf,
        format!(
            r#"{{ "Dhcp4": {{
  "interfaces-config": {{ "interfaces": [ "{iface}" ], "dhcp-socket-type": "raw" }},
  "lease-database": {{ "type": "memfile", "persist": true, "name": "{leases}", "lfc-interval": 0 }},
  "valid-lifetime": 3600, "authoritative": true,
  "subnet4": [ {{ "id": 1, "subnet": "{CIDR}", "pools": [ {{ "pool": "{} - {}" }} ] }} ],
  "loggers": [ {{ "name": "kea-dhcp4", "severity": "WARN", "output_options": [ {{ "output": "{log}" }} ] }} ]
}} }}"#,
            POOL.0,
            POOL.1,
            leases = dir.join("kea-leases.csv").display(),
            log = dir.join("kea.log").display(),
        ),
    )?;
    let out = std::fs::File::create(dir.join("kea.out"))?;
    let child = Command::new(netns::tool("kea-dhcp4").context("kea-dhcp4 not found")?)
        .arg("-c")
        .arg(&conf)
        .env("KEA_PIDFILE_DIR", dir)
        .env("KEA_LOCKFILE_DIR", dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("starting kea-dhcp4")?;
    let mut k = Kea(child);
    std::thread::sleep(Duration::from_secs(1));
    if let Ok(Some(st)) = k.0.try_wait() {
        bail!(
            "kea-dhcp4 exited ({st}): {}",
            std::fs::read_to_string(dir.join("kea.out")).unwrap_or_default()
        );
    }
    Ok(k)
}

/// `ingot --profile <cluster env> ARGS`.
fn ingot(cluster: &LocalCluster, args: &[&str]) -> Result<String> {
    let bin = ingot_launch::resolve_bin_dir(None)?.join("ingot");
    let out = Command::new(&bin)
        .arg("--profile")
        .arg(cluster.env_path())
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "ingot {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs the benchmark on `cluster` (its regions already up).
pub async fn run(cluster: &LocalCluster, o: &DhcpOpts) -> Result<DhcpFigures> {
    if !netns::is_root() {
        bail!("ingot-bench --dhcp needs root (network namespaces)");
    }
    for t in ["perfdhcp", "kea-dhcp4"] {
        if netns::tool(t).is_none() {
            bail!("{t} not found: run scripts/install-test-peers.sh");
        }
    }
    std::fs::create_dir_all(&o.dir)?;
    let lab = Lab::new();
    let ns = lab.netns("pd")?;
    let link: RootLink = lab.root_veth(
        "bd",
        Some(SERVER_CIDR),
        &ns,
        End::new("eth0", Some(CLIENT_CIDR)),
    )?;
    let mut f = DhcpFigures::default();

    // 1. kea-dhcp4, lease file on.
    eprintln!("== kea-dhcp4 (memfile, lease file on) on {}", link.name);
    {
        let _kea = start_kea(&link.name, &o.dir)?;
        let ns2 = &ns;
        f.kea = tokio::task::block_in_place(|| steps(ns2, o, "kea-dhcp4", 0x10))?;
    }

    // 2. ingot-rack serving the same interface, leases committed to the regions.
    eprintln!("== ingot-rack on {} ({} regions)", link.name, cluster.len());
    let rack = cluster
        .add_boot_rack(
            "bd",
            "zbench-dhcp",
            ingot_launch::RackBoot {
                interfaces: vec![link.name.clone()],
                ..Default::default()
            },
        )
        .await?;
    ingot(
        cluster,
        &[
            "subnets",
            "create",
            CIDR,
            "--gateway",
            SERVER,
            "--dynamic",
            &format!("{}-{}", POOL.0, POOL.1),
            "--mode",
            "managed",
            "--primary",
            "bd",
            "--lease-time",
            "1h",
        ],
    )?;
    // Wait (at most 20 s) until the rack answers.
    if let Some(waited) = wait_answering(&ns, o, 0x0f, Duration::from_secs(20))? {
        eprintln!(
            "   ingot-rack answers ({} ms after the subnet was created)",
            waited.as_millis()
        );
    } else {
        bail!(
            "ingot-rack answered no DHCP within 20 s; see {}",
            rack.log.display()
        );
    }
    // 3. The rate steps, on the fresh cluster.
    let ns2 = &ns;
    f.ingot = tokio::task::block_in_place(|| steps(ns2, o, "ingot-rack", 0x20))?;
    let mut total: u64 = f.ingot.iter().map(|s| s.acks).sum();

    // 4. RSS with many leases: `leases` more distinct MACs at RSS_RATE/s, once the rack ACKs again after
    // the overload step (waited for at most 60 s; the run goes on either way, and says so).
    let pid = cluster.rack("bd").map(|r| r.pid).unwrap_or(rack.pid);
    if o.leases > 0 {
        match wait_answering(&ns, o, 0x3f, Duration::from_secs(60))? {
            Some(w) => eprintln!(
                "== ACKing again {} ms after the overload step",
                w.as_millis()
            ),
            None => {
                eprintln!("== WARNING: ingot-rack still ACKs nothing 60 s after the overload step")
            }
        }
    }
    f.rss_before_kib = netns::rss_kib(pid);
    if o.leases > 0 {
        let secs = o.leases.div_ceil(RSS_RATE) + 5;
        eprintln!(
            "== {} distinct MACs at {RSS_RATE}/s (≤ {secs} s) for the RSS figure",
            o.leases
        );
        let s = tokio::task::block_in_place(|| {
            perfdhcp(&Perf {
                ns: &ns,
                dev: "eth0",
                rate: RSS_RATE,
                seconds: secs,
                clients: o.leases,
                tag: 0x40,
                timers: false,
                out: &o.dir.join("perfdhcp-rss.out"),
            })
        })?;
        eprintln!("   {} ACKed, drops {:.3} %", s.acks, s.drops_pct());
        total += s.acks;
        f.rss_run = Some(s);
    }
    f.rss_after_kib = netns::rss_kib(pid);

    f.leases_total = total;
    Ok(f)
}

/// Prints the table.
pub fn report(o: &DhcpOpts, f: &DhcpFigures, profile: &str, regions: usize) {
    println!();
    println!(
        "ingot-bench --dhcp: perfdhcp (relay mode, fresh MACs per step, {} s per step) against ingot-rack \
         ({regions} regions, leases committed before each ACK; {profile}) and kea-dhcp4 (memfile, lease file on)",
        o.seconds
    );
    println!(
        "  {:>8}  | {:>9} {:>8} {:>9} {:>9} | {:>9} {:>8} {:>9} {:>9}",
        "rate/s",
        "ingot/s",
        "drops%",
        "ACK p50",
        "ACK p99",
        "kea/s",
        "drops%",
        "ACK p50",
        "ACK p99"
    );
    let cell = |s: Option<&Step>| match s {
        Some(s) => format!(
            "{:>9.0} {:>8.3} {:>9.2} {:>9.2}",
            s.dora_per_s(),
            s.drops_pct(),
            s.pct_ms(0.5),
            s.pct_ms(0.99)
        ),
        None => format!("{:>9} {:>8} {:>9} {:>9}", "-", "-", "-", "-"),
    };
    for rate in &o.rates {
        let i = f.ingot.iter().find(|s| s.rate == *rate);
        let k = f.kea.iter().find(|s| s.rate == *rate);
        if i.is_none() && k.is_none() {
            continue;
        }
        println!("  {:>8}  | {} | {}", rate, cell(i), cell(k));
    }
    let best = |v: &[Step]| {
        v.iter()
            .filter(|s| s.passes())
            .map(|s| s.dora_per_s())
            .fold(0.0, f64::max)
    };
    let (bi, bk) = (best(&f.ingot), best(&f.kea));
    println!(
        "  DORA/s at < {MAX_DROPS_PCT} % drops:  ingot-rack {bi:.0}   kea-dhcp4 {bk:.0}   ratio {:.2}x{}",
        if bk > 0.0 { bi / bk } else { f64::NAN },
        if o.rates.last().is_some_and(|r| f.ingot.iter().chain(&f.kea).any(|s| s.rate == *r && s.passes())) {
            "  (the top rate passed: raise --dhcp-rates)"
        } else {
            ""
        }
    );
    if let Some(r) = &f.rss_run {
        println!(
            "  ingot-rack RSS: {:.1} MiB before, {:.1} MiB after {} more distinct MACs ({} ACKed at {}/s, drops {:.3} %); {} ACKed leases in all",
            f.rss_before_kib as f64 / 1024.0,
            f.rss_after_kib as f64 / 1024.0,
            o.leases,
            r.acks,
            r.rate,
            r.drops_pct(),
            f.leases_total
        );
    }
    println!("INGOT_DHCP_DORA_PER_S={bi:.0}");
    println!("KEA_DHCP_DORA_PER_S={bk:.0}");
    println!("INGOT_DHCP_RSS_MIB={:.1}", f.rss_after_kib as f64 / 1024.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_perfdhcp_report() {
        let text = "***Statistics for: DISCOVER-OFFER***\nsent packets: 2999\nreceived packets: 2991\n\
                    drops: 8\n***Statistics for: REQUEST-ACK***\nsent packets: 2991\nreceived packets: 2990\n\
                    drops: 1\n***Timestamps for packets: DISCOVER-OFFER***\nsent / received: 000000.000166 / 000000.028350\n\
                    ***Timestamps for packets: REQUEST-ACK***\nsent / received: 000001.000000 / 000001.002000\n\
                    sent / received: 000001.000000 / 000001.001000\n";
        let s = parse_perfdhcp(text, 1000, 3, 3);
        assert_eq!((s.discovers, s.acks, s.drops), (2999, 2990, 9));
        assert_eq!(s.ack_ms.len(), 2);
        assert!((s.ack_ms[0] - 1.0).abs() < 1e-6 && (s.ack_ms[1] - 2.0).abs() < 1e-6);
        assert!(!s.passes());
        assert!((s.dora_per_s() - 2990.0 / 3.0).abs() < 1e-9);
    }
}
