//! `ingot-agent`: the ramdisk's agent. Reads `/proc/cmdline`, runs the boot's work against its rack, then
//! does what the region said: wait, reboot or power off.
//!
//! Environment (for running it outside the ramdisk): `INGOT_AGENT_ROOT` (default `/`) roots `/proc`,
//! `/sys`, `/dev` and `/root`; `INGOT_AGENT_DROPBEAR` is the SSH server for rescue (default
//! `/usr/sbin/dropbear`).

use ingot_agent::flow::{self, End};
use ingot_agent::platform::Platform;
use ingot_agent::rack::{Backoff, Client, HttpsRack};
use ingot_agent::{cmdline, say};
use std::time::Duration;

fn main() {
    let root = std::env::var_os("INGOT_AGENT_ROOT");
    // Outside the ramdisk (a root other than `/`), the agent never reboots or powers off the host.
    let dry = root.as_ref().is_some_and(|r| r != "/");
    let mut platform = Platform::new(root.unwrap_or_else(|| "/".into()));
    if let Some(d) = std::env::var_os("INGOT_AGENT_DROPBEAR") {
        platform.dropbear = d.into();
    }
    let end = match run(&platform) {
        Ok(end) => end,
        Err(e) => End::Exit(e),
    };
    finish(end, dry);
}

fn run(platform: &Platform) -> Result<End, String> {
    let line = platform
        .read("/proc/cmdline")
        .ok_or("cannot read /proc/cmdline: is /proc mounted?")?;
    let args = cmdline::parse(&line).map_err(|e| e.to_string())?;
    let rack = HttpsRack::new(args.agent.clone(), args.ca_sha256)
        .map_err(|e| format!("setting up TLS: {e}"))?;
    let client = Client {
        rack,
        backoff: Backoff::default(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    Ok(rt.block_on(flow::run(&client, platform, &args)))
}

/// Does what the run ended with; returns only outside the ramdisk (`dry`), exits on [`End::Exit`].
fn finish(end: End, dry: bool) {
    let (cmd, why) = match end {
        End::Wait(why) => {
            say!("{why}");
            if dry {
                say!("INGOT_AGENT_ROOT is set: exiting instead of waiting");
                return;
            }
            say!("waiting (the machine is powered by its BMC or an operator)");
            rustix::fs::sync();
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        End::Exit(why) => {
            say!("{why}");
            say!(
                "exiting with a failure (the ramdisk's init runs the agent again, then powers off)"
            );
            std::process::exit(1);
        }
        End::Reboot(why) => (rustix::system::RebootCommand::Restart, why),
        End::PowerOff(why) => (rustix::system::RebootCommand::PowerOff, why),
    };
    say!("{why}");
    let what = if cmd == rustix::system::RebootCommand::Restart {
        "rebooting"
    } else {
        "powering off"
    };
    if dry {
        say!("INGOT_AGENT_ROOT is set: not {what} this host");
        return;
    }
    say!("{what}");
    rustix::fs::sync();
    if let Err(e) = rustix::system::reboot(cmd) {
        say!("reboot(2) failed ({e}): the agent needs CAP_SYS_BOOT; power the machine off by hand. Waiting.");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}
