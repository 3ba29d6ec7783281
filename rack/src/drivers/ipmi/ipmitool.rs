//! `tool=ipmitool`: the same actions through the `ipmitool` binary, one process per request.
//!
//! Why: for BMCs the native client does not handle (OEM quirks, a BMC key, cipher suites it lacks) and as the
//! reference the native client's latency is measured against. The password goes through the environment
//! (`IPMI_PASSWORD` with `-E`), never the command line, where `ps` would show it. ipmitool runs with `-v` so
//! its stderr names the failing handshake step, which is how its failures are sorted into the driver's error
//! classes.

use super::{BootDevice, Control};
use crate::drivers::DriverError;
use ingot_common::power::IpmiParams;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// The longest any single ipmitool run may take, whatever the parameters say.
const MAX_RUN: Duration = Duration::from_secs(300);

/// One BMC reached through ipmitool.
pub(crate) struct Ipmitool<'a> {
    /// The ipmitool binary.
    pub bin: &'a Path,
    /// The BMC and credentials.
    pub p: &'a IpmiParams,
    /// `host:port`, for messages.
    pub target: &'a str,
}

impl Ipmitool<'_> {
    /// Whether the chassis is powered on (`chassis power status`).
    pub(crate) async fn power_is_on(&self) -> Result<bool, DriverError> {
        let out = self.run(&["chassis", "power", "status"]).await?;
        let lower = out.to_ascii_lowercase();
        if lower.contains("chassis power is on") {
            Ok(true)
        } else if lower.contains("chassis power is off") {
            Ok(false)
        } else {
            Err(DriverError::Bmc(format!(
                "ipmitool printed no power state for BMC {} ('{}'); check the ipmitool version or use tool=native",
                self.target,
                out.trim()
            )))
        }
    }

    /// `chassis power on|off|cycle|reset|soft`.
    pub(crate) async fn control(&self, c: Control) -> Result<(), DriverError> {
        let word = match c {
            Control::PowerDown => "off",
            Control::PowerUp => "on",
            Control::PowerCycle => "cycle",
            Control::SoftShutdown => "soft",
        };
        self.run(&["chassis", "power", word]).await.map(|_| ())
    }

    /// `chassis bootdev pxe|disk [options=persistent]`.
    pub(crate) async fn set_boot(
        &self,
        dev: BootDevice,
        persistent: bool,
    ) -> Result<(), DriverError> {
        let dev = match dev {
            BootDevice::Pxe => "pxe",
            BootDevice::Disk => "disk",
        };
        let mut args = vec!["chassis", "bootdev", dev];
        if persistent {
            args.push("options=persistent");
        }
        self.run(&args).await.map(|_| ())
    }

    /// Runs ipmitool with the connection arguments and `args`; returns stdout, or the classified failure.
    async fn run(&self, args: &[&str]) -> Result<String, DriverError> {
        let p = self.p;
        // ipmitool's -R counts attempts; its -N is whole seconds, and it adds a second per retry.
        let attempts = p.retries.saturating_add(1);
        let timeout_s = p.timeout_ms.div_ceil(1000).max(1);
        let port = p.port.to_string();
        let suite = p.cipher_suite.to_string();
        let attempts_s = attempts.to_string();
        let timeout_arg = timeout_s.to_string();
        let mut cmd = tokio::process::Command::new(self.bin);
        cmd.args([
            "-v",
            "-I",
            "lanplus",
            "-H",
            &p.address,
            "-p",
            &port,
            "-U",
            &p.username,
            "-E",
        ])
        .args(["-C", &suite, "-L", p.privilege.ipmitool_name()])
        .args(["-R", &attempts_s, "-N", &timeout_arg])
        .args(args)
        .env("IPMI_PASSWORD", &p.password)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        // Each handshake step may take attempts × (timeout + attempt) seconds; allow five steps plus slack.
        let per_step =
            u64::from(attempts) * timeout_s + u64::from(attempts) * u64::from(attempts) / 2;
        let budget = Duration::from_secs(5 * per_step + 5).min(MAX_RUN);
        let what = args.join(" ");
        let child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                DriverError::Unsupported(format!(
                    "ipmitool not found at '{}' on this rack; install it (apt-get install ipmitool), set \
                     INGOT_IPMITOOL to its path, or use tool=native",
                    self.bin.display()
                ))
            } else {
                DriverError::Unsupported(format!(
                    "cannot run ipmitool ('{}'): {e}; check the binary and its permissions, or use tool=native",
                    self.bin.display()
                ))
            }
        })?;
        let out = match tokio::time::timeout(budget, child.wait_with_output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                return Err(DriverError::Bmc(format!(
                    "ipmitool '{what}' for BMC {} failed to run: {e}; check the rack",
                    self.target
                )))
            }
            Err(_) => {
                return Err(DriverError::Unreachable(format!(
                    "ipmitool '{what}' for BMC {} did not finish within {} s (killed); check the address and \
                     port parameters and the network",
                    self.target,
                    budget.as_secs()
                )))
            }
        };
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            return Ok(stdout);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(classify(
            self.target,
            &p.username,
            &what,
            &format!("{stderr}\n{stdout}"),
        ))
    }
}

/// The last meaningful lines of ipmitool's output, for messages (its banner lines dropped).
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("Loading IANA PEN Registry")
                && !l.starts_with("Running Get")
        })
        .collect();
    let start = lines.len().saturating_sub(4);
    lines[start..].join(" | ")
}

/// Sorts an ipmitool failure into the driver's error classes by what it printed.
pub(crate) fn classify(target: &str, user: &str, what: &str, text: &str) -> DriverError {
    let lower = text.to_ascii_lowercase();
    let has = |pats: &[&str]| pats.iter().any(|p| lower.contains(p));
    let t = tail(text);
    if has(&["rakp 2 hmac is invalid"]) {
        return DriverError::Auth(format!(
            "authentication failed: wrong user name or password for user '{user}' on BMC {target} (ipmitool: {t}); \
             check the username and password parameters"
        ));
    }
    if has(&[
        "unauthorized role",
        "insufficient privilege",
        "set session privilege level",
        "invalid role",
    ]) {
        return DriverError::Auth(format!(
            "BMC {target} refused the privilege needed for '{what}' to user '{user}' (ipmitool: {t}); use a user \
             with OPERATOR or ADMINISTRATOR privilege and set the privilege parameter accordingly"
        ));
    }
    if has(&[
        "rakp 2 message indicates an error",
        "rakp 4 message indicates an error",
        "rakp 4 message has invalid integrity",
        "unauthorized name",
    ]) {
        return DriverError::Auth(format!(
            "authentication failed: wrong user name or password for user '{user}' on BMC {target} (ipmitool: {t}); \
             check the username and password parameters"
        ));
    }
    if has(&[
        "invalid authentication algorithm",
        "invalid integrity algorithm",
        "invalid confidentiality algorithm",
        "no cipher suite match",
        "unsupported cipher suite",
        "does not support ipmi v2",
    ]) {
        return DriverError::Unsupported(format!(
            "BMC {target} does not accept this cipher suite or IPMI 2.0 (ipmitool: {t}); set cipher_suite to one \
             the BMC offers (3 or 17 on most BMCs)"
        ));
    }
    if has(&[
        "invalid command",
        "invalid data field",
        "parameter not supported",
        "not supported in present state",
    ]) {
        return DriverError::Unsupported(format!(
            "BMC {target} cannot do '{what}' (ipmitool: {t}); this BMC does not support the action"
        ));
    }
    if has(&["insufficient resources"]) {
        return DriverError::Bmc(format!(
            "BMC {target} has no free session (ipmitool: {t}); retry later, or close other sessions on the BMC"
        ));
    }
    if has(&[
        "get auth capabilities error",
        "no response from",
        "unable to establish",
        "unable to send",
        "could not open socket",
        "address lookup",
        "no hostname",
    ]) {
        return DriverError::Unreachable(format!(
            "no answer from BMC {target} to '{what}' (ipmitool: {t}); check the address and port parameters, that \
             IPMI over LAN is enabled on the BMC, and the network"
        ));
    }
    DriverError::Bmc(format!(
        "ipmitool '{what}' failed on BMC {target} ({t}); check the BMC's event log, or try tool=native"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_real_ipmitool_messages() {
        let c = |s: &str| classify("127.0.0.1:623", "admin", "chassis power status", s);
        assert!(matches!(
            c("Loading IANA PEN Registry...\n> RAKP 2 HMAC is invalid\nError: Unable to establish IPMI v2 / RMCP+ session"),
            DriverError::Auth(_)
        ));
        assert!(matches!(
            c("RAKP 2 message indicates an error : unauthorized name\nError: Unable to establish IPMI v2 / RMCP+ session"),
            DriverError::Auth(_)
        ));
        let e = c("Get Auth Capabilities error\nError issuing Get Channel Authentication Capabilities request\nError: Unable to establish IPMI v2 / RMCP+ session");
        assert!(matches!(e, DriverError::Unreachable(_)), "{e:?}");
        assert!(!e.to_string().contains("Loading IANA"));
        assert!(matches!(
            c("Error in open session response message : invalid confidentiality algorithm\n\nError: Unable to establish IPMI v2 / RMCP+ session"),
            DriverError::Unsupported(_)
        ));
        assert!(matches!(
            c("Set Chassis Power Control to Down/Off failed: Insufficient privilege level"),
            DriverError::Auth(_)
        ));
        assert!(matches!(
            c("Unable to send RAW command (channel=0x0 netfn=0x0 lun=0x0 cmd=0x55 rsp=0xc1): Invalid command"),
            DriverError::Unsupported(_)
        ));
        assert!(matches!(
            c("Set Chassis Boot Parameter 5 failed: Unspecified error"),
            DriverError::Bmc(_)
        ));
    }
}
