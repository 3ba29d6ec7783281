//! The IPMI commands the simulated BMC implements, mapped onto the machine model the Redfish BMC uses.
//!
//! | NetFn / command | what it does |
//! |---|---|
//! | App 0x01 Get Device ID | identity for `ipmitool mc info` |
//! | App 0x08 Get Device GUID, 0x37 Get System GUID | the machine's UUID |
//! | App 0x38 Get Channel Authentication Capabilities | IPMI 2.0 / RMCP+ offered, user names required |
//! | App 0x54 Get Channel Cipher Suites | suites 0, 1, 2, 3, 17 |
//! | Chassis 0x01 Get Chassis Status | power bit (the `flapping` fault lies here) |
//! | Chassis 0x02 Chassis Control | 0 off, 1 on, 2 cycle, 3 hard reset, 4 NMI, 5 soft off (`fail_power`) |
//! | Chassis 0x08 / 0x09 Set / Get System Boot Options | parameters 0, 3, 4 (accepted), 5 (boot flags) |
//!
//! Anything else answers 0xC1 (invalid command). Chassis Control and Set System Boot Options need OPERATOR
//! privilege (0xD4 otherwise), as on real BMCs.

use super::session::{OPERATOR, USER};
use super::{IpmiBmc, CHANNEL};
use crate::machine::{BootEnabled, BootMode, BootTarget, PowerState, ResetType};
use ingot_rmcp::{self as rmcp, IpmiRequest};
use std::sync::atomic::Ordering;

/// Completion code: invalid command.
pub(super) const CC_INVALID_COMMAND: u8 = 0xc1;
/// Completion code: request data length invalid.
pub(super) const CC_LENGTH: u8 = 0xc7;
/// Completion code: invalid data field in request.
pub(super) const CC_INVALID_DATA: u8 = 0xcc;
/// Completion code: insufficient privilege level.
pub(super) const CC_INSUFFICIENT_PRIVILEGE: u8 = 0xd4;
/// Completion code: unspecified error (what the `flapping` and `fail_power` faults answer).
pub(super) const CC_UNSPECIFIED: u8 = 0xff;
/// Completion code of Set System Boot Options: parameter not supported.
pub(super) const CC_PARAMETER_NOT_SUPPORTED: u8 = 0x80;
/// Completion code of Set Session Privilege Level: requested level exceeds the user's limit.
pub(super) const CC_PRIVILEGE_EXCEEDS_LIMIT: u8 = 0x81;
/// Completion code of Close Session: invalid session id in request.
pub(super) const CC_INVALID_SESSION_ID: u8 = 0x87;

/// App: Get Device ID.
const CMD_GET_DEVICE_ID: u8 = 0x01;
/// App: Get Device GUID.
const CMD_GET_DEVICE_GUID: u8 = 0x08;
/// App: Get System GUID.
const CMD_GET_SYSTEM_GUID: u8 = 0x37;
/// App: Get Channel Cipher Suites.
const CMD_GET_CHANNEL_CIPHER_SUITES: u8 = 0x54;
/// Chassis: Get System Boot Options.
const CMD_GET_BOOT_OPTIONS: u8 = 0x09;

/// Boot flags device selector (bits 5:2 of data byte 2): force PXE.
const BOOT_DEVICE_PXE: u8 = 0x01;
/// Force boot from the default hard drive.
const BOOT_DEVICE_DISK: u8 = 0x02;
/// Force boot from the default hard drive, safe mode.
const BOOT_DEVICE_DISK_SAFE: u8 = 0x03;

/// A command's answer.
pub(super) struct Reply {
    /// Completion code.
    pub cc: u8,
    /// Response data after the completion code.
    pub data: Vec<u8>,
    /// The command changed (or tried to change) the machine: a retransmission must not act again.
    pub changes_state: bool,
}

impl Reply {
    fn ok(data: Vec<u8>) -> Reply {
        Reply {
            cc: 0,
            data,
            changes_state: false,
        }
    }

    fn cc(cc: u8) -> Reply {
        Reply {
            cc,
            data: Vec::new(),
            changes_state: false,
        }
    }

    fn change(self) -> Reply {
        Reply {
            changes_state: true,
            ..self
        }
    }
}

impl IpmiBmc {
    /// The commands a console may send before it has a session; `None` for every other.
    pub(super) fn sessionless_command(&self, req: &IpmiRequest) -> Option<Reply> {
        match (req.netfn, req.cmd) {
            (rmcp::NETFN_APP, rmcp::CMD_GET_CHANNEL_AUTH_CAPS) => Some(auth_caps(req)),
            (rmcp::NETFN_APP, CMD_GET_CHANNEL_CIPHER_SUITES) => Some(cipher_suites(req)),
            (rmcp::NETFN_APP, CMD_GET_SYSTEM_GUID) => Some(Reply::ok(self.guid.to_vec())),
            _ => None,
        }
    }

    /// One in-session command at session privilege `privilege` (session management commands are handled
    /// by the session layer).
    pub(super) fn command(&self, req: &IpmiRequest, privilege: u8) -> Reply {
        if let Some(r) = self.sessionless_command(req) {
            return r;
        }
        let needs = |level: u8| privilege < level;
        match (req.netfn, req.cmd) {
            (rmcp::NETFN_APP, CMD_GET_DEVICE_ID) => Reply::ok(device_id()),
            (rmcp::NETFN_APP, CMD_GET_DEVICE_GUID) => Reply::ok(self.guid.to_vec()),
            (rmcp::NETFN_CHASSIS, rmcp::CMD_GET_CHASSIS_STATUS) => self.chassis_status(),
            (rmcp::NETFN_CHASSIS, rmcp::CMD_CHASSIS_CONTROL) => {
                if needs(OPERATOR) {
                    return Reply::cc(CC_INSUFFICIENT_PRIVILEGE);
                }
                self.chassis_control(req).change()
            }
            (rmcp::NETFN_CHASSIS, rmcp::CMD_SET_BOOT_OPTIONS) => {
                if needs(OPERATOR) {
                    return Reply::cc(CC_INSUFFICIENT_PRIVILEGE);
                }
                self.set_boot_options(req).change()
            }
            (rmcp::NETFN_CHASSIS, CMD_GET_BOOT_OPTIONS) => {
                if needs(USER) {
                    return Reply::cc(CC_INSUFFICIENT_PRIVILEGE);
                }
                self.get_boot_options(req)
            }
            _ => Reply::cc(CC_INVALID_COMMAND),
        }
    }

    /// Get Chassis Status: power on/off (bit 0), power restore policy "previous"; `flapping` alternates an
    /// error and the opposite state.
    fn chassis_status(&self) -> Reply {
        let m = &self.machine;
        m.queries.fetch_add(1, Ordering::Relaxed);
        let mut power = m.power_state();
        if m.faults().flapping {
            if self.flap.fetch_add(1, Ordering::Relaxed).is_multiple_of(2) {
                return Reply::cc(CC_UNSPECIFIED);
            }
            power = power.opposite();
        }
        let on = u8::from(power == PowerState::On);
        Reply::ok(vec![on | 0x20, 0x00, 0x00])
    }

    /// Chassis Control: the same resets the Redfish BMC performs (so a power-on into a PXE override starts
    /// the agent the same way).
    fn chassis_control(&self, req: &IpmiRequest) -> Reply {
        let Some(&c) = req.data.first() else {
            return Reply::cc(CC_LENGTH);
        };
        let reset = match c & 0x0f {
            0 => ResetType::ForceOff,
            1 => ResetType::On,
            2 => ResetType::PowerCycle,
            3 => ResetType::ForceRestart,
            4 => ResetType::Nmi,
            5 => ResetType::GracefulShutdown,
            _ => return Reply::cc(CC_INVALID_DATA),
        };
        if self.machine.faults().fail_power {
            return Reply::cc(CC_UNSPECIFIED);
        }
        self.machine.reset(reset);
        Reply::ok(Vec::new())
    }

    /// Set System Boot Options: parameter 5 (boot flags) sets the boot override; 0 (set in progress) is
    /// stored; 3 and 4 (valid-bit clearing, boot info acknowledge) are accepted and ignored.
    fn set_boot_options(&self, req: &IpmiRequest) -> Reply {
        let Some((&selector, value)) = req.data.split_first() else {
            return Reply::cc(CC_LENGTH);
        };
        match selector & 0x7f {
            0 => match value.first() {
                Some(v) => {
                    self.boot_set_in_progress.store(v & 0x03, Ordering::Relaxed);
                    Reply::ok(Vec::new())
                }
                None => Reply::cc(CC_LENGTH),
            },
            3 if !value.is_empty() => Reply::ok(Vec::new()),
            4 if value.len() >= 2 => Reply::ok(Vec::new()),
            3 | 4 => Reply::cc(CC_LENGTH),
            5 => {
                let [flags0, flags1, ..] = value else {
                    return Reply::cc(CC_LENGTH);
                };
                self.set_boot_flags(*flags0, *flags1)
            }
            _ => Reply::cc(CC_PARAMETER_NOT_SUPPORTED),
        }
    }

    /// Boot flags → boot override: "valid" off or device "none" clears it; PXE / disk set it, for the next
    /// boot or (persistent bit) every boot; the BIOS boot type bit sets the mode, as on real BMCs.
    fn set_boot_flags(&self, flags0: u8, flags1: u8) -> Reply {
        let valid = flags0 & 0x80 != 0;
        let device = (flags1 >> 2) & 0x0f;
        let m = &self.machine;
        if !valid || device == 0 {
            m.set_boot_override(Some(BootTarget::None), Some(BootEnabled::Disabled), None);
            return Reply::ok(Vec::new());
        }
        let target = match device {
            BOOT_DEVICE_PXE => BootTarget::Pxe,
            BOOT_DEVICE_DISK | BOOT_DEVICE_DISK_SAFE => BootTarget::Hdd,
            // CD/DVD, BIOS setup, floppy, ...: devices this machine does not have.
            _ => return Reply::cc(CC_INVALID_DATA),
        };
        let enabled = if flags0 & 0x40 != 0 {
            BootEnabled::Continuous
        } else {
            BootEnabled::Once
        };
        let mode = if flags0 & 0x20 != 0 {
            BootMode::Uefi
        } else {
            BootMode::Legacy
        };
        m.set_boot_override(Some(target), Some(enabled), Some(mode));
        Reply::ok(Vec::new())
    }

    /// Get System Boot Options: parameters 0, 4 and 5, from the machine's boot override.
    fn get_boot_options(&self, req: &IpmiRequest) -> Reply {
        let Some(&selector) = req.data.first() else {
            return Reply::cc(CC_LENGTH);
        };
        let param = selector & 0x7f;
        // Parameter version 1, then the selector.
        let mut data = vec![0x01, param];
        match param {
            0 => data.push(self.boot_set_in_progress.load(Ordering::Relaxed)),
            4 => data.extend_from_slice(&[0x00, 0x00]),
            5 => {
                let (target, enabled, mode) = self.machine.boot_override();
                let device = match target {
                    BootTarget::None => 0,
                    BootTarget::Pxe => BOOT_DEVICE_PXE,
                    BootTarget::Hdd => BOOT_DEVICE_DISK,
                };
                let (flags0, flags1) = if enabled == BootEnabled::Disabled || device == 0 {
                    (0x00, 0x00)
                } else {
                    let persistent = if enabled == BootEnabled::Continuous {
                        0x40
                    } else {
                        0x00
                    };
                    let efi = if mode == BootMode::Uefi { 0x20 } else { 0x00 };
                    (0x80 | persistent | efi, device << 2)
                };
                data.extend_from_slice(&[flags0, flags1, 0x00, 0x00, 0x00]);
            }
            _ => return Reply::cc(CC_PARAMETER_NOT_SUPPORTED),
        }
        Reply::ok(data)
    }
}

/// Get Device ID: device 0x20 rev 1, firmware 1.00, IPMI 2.0, a chassis device; no manufacturer (IANA 0).
fn device_id() -> Vec<u8> {
    vec![
        0x20, 0x01, 0x01, 0x00, 0x02,
        0x80, // id, revision, firmware 1.00, IPMI 2.0, chassis device
        0x00, 0x00, 0x00, // manufacturer id
        0x01, 0x00, // product id
    ]
}

/// The channel a request names (0x0E: the one it arrived on) or `None` for another channel.
fn channel_of(b: u8) -> Option<u8> {
    match b & 0x0f {
        0x0e => Some(CHANNEL),
        c if c == CHANNEL => Some(CHANNEL),
        _ => None,
    }
}

/// Get Channel Authentication Capabilities: IPMI 2.0 extended data, RMCP+ offered, named users only, no
/// IPMI 1.5 authentication types (this BMC speaks only RMCP+).
fn auth_caps(req: &IpmiRequest) -> Reply {
    let [channel, privilege, ..] = req.data[..] else {
        return Reply::cc(CC_LENGTH);
    };
    let Some(channel) = channel_of(channel) else {
        return Reply::cc(CC_INVALID_DATA);
    };
    if !(1..=5).contains(&(privilege & 0x0f)) {
        return Reply::cc(CC_INVALID_DATA);
    }
    Reply::ok(vec![
        channel, 0x80, // IPMI 2.0 extended capabilities; no IPMI 1.5 authentication types
        0x04, // non-null user names only
        0x02, // IPMI 2.0 (RMCP+) connections
        0x00, 0x00, 0x00, // OEM id
        0x00, // OEM auxiliary data
    ])
}

/// Get Channel Cipher Suites: the supported suites' records, 16 bytes per list index.
fn cipher_suites(req: &IpmiRequest) -> Reply {
    let [channel, _payload_type, index, ..] = req.data[..] else {
        return Reply::cc(CC_LENGTH);
    };
    let Some(channel) = channel_of(channel) else {
        return Reply::cc(CC_INVALID_DATA);
    };
    let mut records = Vec::new();
    for s in rmcp::SUPPORTED_SUITES
        .iter()
        .filter_map(|&id| rmcp::CipherSuite::from_id(id))
    {
        records.extend_from_slice(&[
            0xc0,
            s.id,
            s.auth_algorithm(),
            0x40 | s.integrity_algorithm(),
            0x80 | s.confidentiality_algorithm(),
        ]);
    }
    let start = usize::from(index & 0x3f) * 16;
    let mut data = vec![channel];
    if let Some(chunk) = records.get(start..) {
        data.extend_from_slice(&chunk[..chunk.len().min(16)]);
    }
    Reply::ok(data)
}
