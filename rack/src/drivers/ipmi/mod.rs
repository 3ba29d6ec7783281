//! The `ipmi` power driver: IPMI 2.0 over LAN (RMCP+, "lanplus"), natively or through `ipmitool`.
//!
//! ## Native client: written here, not `ipmi-rs`
//!
//! `ipmi-rs` (0.6) was considered first and not taken: its RMCP+ connection is blocking
//! (`std::net::UdpSocket`, one thread per in-flight request under tokio), it offers RAKP-HMAC-SHA1 but not
//! RAKP-HMAC-SHA256 (cipher suite 17), it gives no control over retransmission and no way to keep and share
//! sessions across tasks, and it is not a dependency of this crate. What the rack needs is small: the
//! handshake, three chassis commands and Close Session, over tokio, with sessions reused per BMC. So the
//! `ingot-rmcp` crate holds the wire format and crypto as pure, unit-tested functions (using the `hmac`,
//! `sha1`, `aes` and `cbc` crates; `ingot-sim`'s simulated BMCs speak the other side with the same code), and
//! `native` the sessions and their pool.
//!
//! Cipher suites: 3 (RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128; the default), 17 (RAKP-HMAC-SHA256,
//! HMAC-SHA256-128, AES-CBC-128), 2, 1 and 0 (without encryption / integrity / authentication). Not
//! supported natively: IPMI 1.5 sessions and MD5 algorithms (`tool=ipmitool` covers those), a BMC key (K_G).
//!
//! ## Sessions
//!
//! Sessions stay open and are reused per (address, port, user, password fingerprint, cipher suite,
//! privilege): polling a BMC costs one request/response, not a handshake (five round trips) or a process.
//! Requests on one BMC are serialized; a cached session that does not answer is dropped and re-opened once;
//! sessions idle for 20 s are closed (ipmi_sim times sessions out after 30 s, most BMCs after 60 s). The pool
//! keeps at most half the process's open-file limit in sessions.
//!
//! ## Actions
//!
//! `query` reads Get Chassis Status; `on`/`off` send Chassis Control (1, 0); `soft-off` sends 5 (ACPI
//! shutdown) when the machine is on; `cycle` queries first and sends power cycle (2) when on, power up when
//! off (a BMC may refuse a cycle of an off chassis); boot actions send Set System Boot Options parameter 5
//! (PXE 0x04 / disk 0x08, "valid", plus the persistent bit for the `-persistent` variants, legacy BIOS boot
//! type). After `on`, `off` and `cycle` the driver polls the power state for up to [`SETTLE`] until it
//! matches (BMCs lag); every outcome carries the power state read after the action.

mod ipmitool;
mod native;

use super::{DriverError, PowerDriver, PowerOutcome, PowerRequest, PowerState};
use ingot_common::power::PowerAction;
use ingot_common::power::{DriverParams, IpmiParams, IpmiTool};
use ingot_rmcp as rmcp;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How long `on`, `off` and `cycle` wait for the BMC to report the wanted power state.
pub const SETTLE: Duration = Duration::from_secs(10);
/// Interval of those polls.
const POLL: Duration = Duration::from_millis(200);

/// The `ipmi` driver. Cloning is cheap: clones share the RMCP+ session pool.
#[derive(Debug, Default, Clone)]
pub struct IpmiDriver {
    inner: Arc<Inner>,
}

/// State shared by clones.
#[derive(Debug)]
struct Inner {
    /// Open native sessions.
    pool: native::Pool,
    /// The ipmitool binary for `tool=ipmitool`.
    ipmitool: PathBuf,
}

impl Default for Inner {
    fn default() -> Inner {
        Inner {
            pool: native::Pool::default(),
            ipmitool: std::env::var_os("INGOT_IPMITOOL")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("ipmitool")),
        }
    }
}

impl IpmiDriver {
    /// A driver whose `tool=ipmitool` mode runs `path` (the default is `$INGOT_IPMITOOL`, else `ipmitool`
    /// on `PATH`): for tests and racks with ipmitool outside `PATH`.
    pub fn with_ipmitool(path: impl Into<PathBuf>) -> IpmiDriver {
        IpmiDriver {
            inner: Arc::new(Inner {
                pool: native::Pool::default(),
                ipmitool: path.into(),
            }),
        }
    }

    /// RMCP+ handshakes completed by the native client since the driver was made: how tests and metrics see
    /// that sessions are reused.
    pub fn sessions_opened(&self) -> u64 {
        self.inner.pool.opened()
    }

    /// Native sessions currently cached (open or being opened).
    pub fn cached_sessions(&self) -> usize {
        self.inner.pool.len()
    }
}

/// Chassis Control sub-commands the driver sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    /// 0: hard power down.
    PowerDown = 0,
    /// 1: power up.
    PowerUp = 1,
    /// 2: power cycle.
    PowerCycle = 2,
    /// 5: soft shutdown via ACPI.
    SoftShutdown = 5,
}

/// Boot devices the driver selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BootDevice {
    /// Force PXE.
    Pxe,
    /// Force boot from the default hard drive.
    Disk,
}

/// Where one request's operations go.
enum Backend<'a> {
    /// The native client's session pool.
    Native {
        pool: &'a native::Pool,
        p: &'a IpmiParams,
        target: &'a str,
    },
    /// ipmitool subprocesses.
    Tool(ipmitool::Ipmitool<'a>),
}

impl Backend<'_> {
    /// Whether the chassis is powered on.
    async fn power_is_on(&self) -> Result<bool, DriverError> {
        match self {
            Backend::Native { pool, p, target } => {
                let r = pool
                    .call(p, rmcp::NETFN_CHASSIS, rmcp::CMD_GET_CHASSIS_STATUS, &[])
                    .await?;
                check_cc(target, "Get Chassis Status", r.completion, false)?;
                let state = r.data.first().ok_or_else(|| {
                    DriverError::Bmc(format!(
                        "BMC {target} answered Get Chassis Status without data; retry, or use tool=ipmitool"
                    ))
                })?;
                Ok(state & 0x01 != 0)
            }
            Backend::Tool(t) => t.power_is_on().await,
        }
    }

    /// Sends Chassis Control `c`.
    async fn control(&self, c: Control) -> Result<(), DriverError> {
        match self {
            Backend::Native { pool, p, target } => {
                let r = pool
                    .call(
                        p,
                        rmcp::NETFN_CHASSIS,
                        rmcp::CMD_CHASSIS_CONTROL,
                        &[c as u8],
                    )
                    .await?;
                check_cc(
                    target,
                    &format!("Chassis Control {c:?}"),
                    r.completion,
                    true,
                )
            }
            Backend::Tool(t) => t.control(c).await,
        }
    }

    /// Sets the boot device, for the next boot or every boot.
    async fn set_boot(&self, dev: BootDevice, persistent: bool) -> Result<(), DriverError> {
        match self {
            Backend::Native { pool, p, target } => {
                // Parameter 4 (boot info acknowledge): clear the BIOS's "handled" bit so it reads the new
                // flags, as ipmitool does; BMCs that lack the parameter answer an error that does not matter.
                let _ack = pool
                    .call(
                        p,
                        rmcp::NETFN_CHASSIS,
                        rmcp::CMD_SET_BOOT_OPTIONS,
                        &[0x04, 0x01, 0x00],
                    )
                    .await?;
                let flags0 = 0x80 | if persistent { 0x40 } else { 0x00 };
                let device = match dev {
                    BootDevice::Pxe => 0x04,
                    BootDevice::Disk => 0x08,
                };
                let r = pool
                    .call(
                        p,
                        rmcp::NETFN_CHASSIS,
                        rmcp::CMD_SET_BOOT_OPTIONS,
                        &[0x05, flags0, device, 0x00, 0x00, 0x00],
                    )
                    .await?;
                check_cc(
                    target,
                    "Set System Boot Options (boot flags)",
                    r.completion,
                    true,
                )
            }
            Backend::Tool(t) => t.set_boot(dev, persistent).await,
        }
    }
}

/// Maps a completion code to an error. `optional`: the command is one a BMC may lack (chassis control,
/// boot options), so "invalid data field" and "parameter not supported" mean unsupported, not broken.
fn check_cc(target: &str, what: &str, cc: u8, optional: bool) -> Result<(), DriverError> {
    let name = rmcp::completion_code_name(cc);
    match cc {
        0x00 => Ok(()),
        0xd4 => Err(DriverError::Auth(format!(
            "BMC {target} refused {what}: insufficient privilege level (completion code 0xD4); use a user with \
             OPERATOR or ADMINISTRATOR privilege and set the privilege parameter accordingly"
        ))),
        0xc1 | 0xd6 => Err(DriverError::Unsupported(format!(
            "BMC {target} does not support {what} (completion code {cc:#04X}: {name}); use another driver for this \
             machine (redfish) or power it manually"
        ))),
        0xcc | 0x80 | 0xd5 if optional => Err(DriverError::Unsupported(format!(
            "BMC {target} cannot do {what} (completion code {cc:#04X}: {name}); this BMC does not support the \
             action"
        ))),
        0xc0 | 0xc3 | 0xd2 => Err(DriverError::Bmc(format!(
            "BMC {target} failed {what}: completion code {cc:#04X} ({name}); the BMC is busy: retry later"
        ))),
        _ => Err(DriverError::Bmc(format!(
            "BMC {target} failed {what}: completion code {cc:#04X} ({name}); check the BMC's event log and retry"
        ))),
    }
}

/// `on` / `off`.
fn word(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

/// The outcome for a power state.
fn outcome(on: bool, message: String) -> PowerOutcome {
    PowerOutcome {
        state: if on { PowerState::On } else { PowerState::Off },
        message,
    }
}

/// Polls until the BMC reports `want` or [`SETTLE`] passes; reports what it saw last.
async fn settle(
    b: &Backend<'_>,
    target: &str,
    want: bool,
    done: &str,
) -> Result<PowerOutcome, DriverError> {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let on = b.power_is_on().await?;
        if on == want {
            return Ok(outcome(
                on,
                format!("{done}; BMC {target} reports power {}", word(on)),
            ));
        }
        if tokio::time::Instant::now() + POLL > deadline {
            return Ok(outcome(
                on,
                format!(
                    "{done}, but BMC {target} still reports power {} after {} s; query again later",
                    word(on),
                    SETTLE.as_secs()
                ),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Runs `action` on the BMC behind `b`.
async fn perform(
    b: &Backend<'_>,
    target: &str,
    action: PowerAction,
) -> Result<PowerOutcome, DriverError> {
    let boot = |dev: BootDevice, persistent: bool| async move {
        b.set_boot(dev, persistent).await?;
        let on = b.power_is_on().await?;
        let scope = if persistent {
            "every boot"
        } else {
            "the next boot"
        };
        let name = match dev {
            BootDevice::Pxe => "network (PXE)",
            BootDevice::Disk => "disk",
        };
        Ok(outcome(
            on,
            format!(
                "boot device set to {name} for {scope}; BMC {target} reports power {}",
                word(on)
            ),
        ))
    };
    match action {
        PowerAction::Query => {
            let on = b.power_is_on().await?;
            Ok(outcome(
                on,
                format!("BMC {target} reports power {}", word(on)),
            ))
        }
        PowerAction::On => {
            b.control(Control::PowerUp).await?;
            settle(b, target, true, "power on requested").await
        }
        PowerAction::Off => {
            b.control(Control::PowerDown).await?;
            settle(b, target, false, "hard power off requested").await
        }
        PowerAction::SoftOff => {
            // An off machine has no OS to shut down (and some BMCs refuse the request then).
            if !b.power_is_on().await? {
                return Ok(outcome(
                    false,
                    format!("BMC {target} reports power off already"),
                ));
            }
            b.control(Control::SoftShutdown).await?;
            let on = b.power_is_on().await?;
            let msg = if on {
                format!("ACPI soft power off requested; BMC {target} reports power on while the OS shuts down")
            } else {
                format!("ACPI soft power off requested; BMC {target} reports power off")
            };
            Ok(outcome(on, msg))
        }
        PowerAction::Cycle => {
            if b.power_is_on().await? {
                b.control(Control::PowerCycle).await?;
                settle(b, target, true, "power cycle requested").await
            } else {
                b.control(Control::PowerUp).await?;
                settle(b, target, true, "machine was off: power on requested").await
            }
        }
        PowerAction::BootPxe => boot(BootDevice::Pxe, false).await,
        PowerAction::BootDisk => boot(BootDevice::Disk, false).await,
        PowerAction::BootPxePersistent => boot(BootDevice::Pxe, true).await,
        PowerAction::BootDiskPersistent => boot(BootDevice::Disk, true).await,
    }
}

impl PowerDriver for IpmiDriver {
    async fn run(&self, req: &PowerRequest) -> Result<PowerOutcome, DriverError> {
        let DriverParams::Ipmi(p) = req.typed("ipmi")? else {
            return Err(DriverError::Bmc(
                "ipmi power parameters did not parse as ipmi parameters; set the machine's power parameters again"
                    .into(),
            ));
        };
        let target = native::target_name(&p);
        let backend = match p.tool {
            IpmiTool::Native => Backend::Native {
                pool: &self.inner.pool,
                p: &p,
                target: &target,
            },
            IpmiTool::Ipmitool => Backend::Tool(ipmitool::Ipmitool {
                bin: &self.inner.ipmitool,
                p: &p,
                target: &target,
            }),
        };
        let r = perform(&backend, &target, req.action).await;
        if let Err(e) = &r {
            tracing::debug!(system_id = %req.system_id, bmc = %target, action = req.action.as_str(),
                kind = e.kind(), error = %e, "ipmi power action failed");
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_codes_map_to_classes() {
        let t = "10.0.0.5:623";
        assert!(check_cc(t, "x", 0, false).is_ok());
        assert!(matches!(
            check_cc(t, "x", 0xc1, false),
            Err(DriverError::Unsupported(_))
        ));
        assert!(matches!(
            check_cc(t, "x", 0xcc, true),
            Err(DriverError::Unsupported(_))
        ));
        assert!(matches!(
            check_cc(t, "x", 0xcc, false),
            Err(DriverError::Bmc(_))
        ));
        assert!(matches!(
            check_cc(t, "x", 0xd4, false),
            Err(DriverError::Auth(_))
        ));
        let e = check_cc(t, "Chassis Control", 0xff, true).unwrap_err();
        assert!(e.to_string().contains("0xFF (unspecified error)"), "{e}");
    }

    #[tokio::test]
    async fn bad_parameters_and_dead_bmc() {
        let d = IpmiDriver::default();
        let mut req = PowerRequest {
            command_id: 1,
            system_id: "m1".into(),
            action: PowerAction::Query,
            params: [("address".to_string(), "127.0.0.1".to_string())].into(),
        };
        req.params.insert("cipher_suite".into(), "5".into());
        assert!(matches!(d.run(&req).await, Err(DriverError::Bmc(_))));
        // Nothing listens on this port: unreachable, within timeout × attempts.
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        drop(sock);
        req.params.insert("cipher_suite".into(), "3".into());
        req.params.insert("port".into(), port.to_string());
        req.params.insert("timeout_ms".into(), "100".into());
        req.params.insert("retries".into(), "1".into());
        let t0 = std::time::Instant::now();
        let e = d.run(&req).await.unwrap_err();
        assert!(matches!(e, DriverError::Unreachable(_)), "{e:?}");
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        assert!(e.to_string().contains(&port.to_string()), "{e}");
    }
}
