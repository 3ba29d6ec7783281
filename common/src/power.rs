//! Typed, validated power-driver parameters.
//!
//! A machine stores its BMC access as a driver name plus string parameters ([`crate::PowerParams`]); this
//! module is the one place those strings are read. The region parses them when an operator sets them (so a
//! typo is an `InvalidArgument` naming `power.params.<key>` at `set-power` time, not a failed boot an hour
//! later) and the rack parses the same strings again before acting, with the same code.

use crate::error::DomainError;
use std::collections::BTreeMap;

/// A power action: the one vocabulary of what a BMC can be asked to do, shared by the API edge, the
/// replicated command queue, the rack's drivers and the CLI. Its wire spelling (`on`, `soft-off`,
/// `boot-pxe`, ...) is the serde form, so stored commands and protos carry the same strings as before.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum PowerAction {
    /// Power on.
    On,
    /// Hard power off.
    Off,
    /// ACPI (graceful) power off.
    SoftOff,
    /// Reboot into whatever the next boot device says: power cycle when on, power on when off. Either way
    /// the machine ends up on and freshly booted (what a lifecycle step that boots the machine needs).
    Cycle,
    /// Read the power state without changing it.
    Query,
    /// Next boot from the network.
    BootPxe,
    /// Next boot from the local disk.
    BootDisk,
    /// Every boot from the network, until changed.
    BootPxePersistent,
    /// Every boot from the local disk, until changed.
    BootDiskPersistent,
}

impl PowerAction {
    /// Every action, in the order help texts list them.
    pub const ALL: [PowerAction; 9] = [
        PowerAction::On,
        PowerAction::Off,
        PowerAction::SoftOff,
        PowerAction::Cycle,
        PowerAction::Query,
        PowerAction::BootPxe,
        PowerAction::BootDisk,
        PowerAction::BootPxePersistent,
        PowerAction::BootDiskPersistent,
    ];

    /// The wire spelling (`on`, `soft-off`, `boot-pxe`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            PowerAction::On => "on",
            PowerAction::Off => "off",
            PowerAction::SoftOff => "soft-off",
            PowerAction::Cycle => "cycle",
            PowerAction::Query => "query",
            PowerAction::BootPxe => "boot-pxe",
            PowerAction::BootDisk => "boot-disk",
            PowerAction::BootPxePersistent => "boot-pxe-persistent",
            PowerAction::BootDiskPersistent => "boot-disk-persistent",
        }
    }

    /// Parses the wire spelling at an edge (API request, rack wire message, CLI); the error names `field`
    /// and lists the valid actions.
    pub fn parse(field: &str, s: &str) -> Result<PowerAction, DomainError> {
        PowerAction::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = PowerAction::ALL.iter().map(|a| a.as_str()).collect();
                DomainError::invalid(
                    field,
                    format!(
                        "'{s}' is not a power action; use one of {}",
                        names.join(", ")
                    ),
                )
            })
    }

    /// Whether running it a second time leaves the machine as running it once would. A rack that was
    /// interrupted (killed, restarted) after starting a command but before recording its result may re-run
    /// an idempotent action when the command is re-delivered; any other action it must not repeat
    /// blindly: a second `cycle` reboots a machine that already rebooted (and may be installing), and
    /// `soft-off` is a power-button press on many BMCs, which powers on a machine the first press already
    /// turned off. `on`, `off`, the boot-device settings and `query` only set or read a state.
    pub fn idempotent(self) -> bool {
        !matches!(self, PowerAction::Cycle | PowerAction::SoftOff)
    }

    /// Whether running it twice could do harm (a second cycle reboots a machine again): such an action is
    /// never re-sent blindly.
    pub fn changes_power(self) -> bool {
        matches!(
            self,
            PowerAction::On | PowerAction::Off | PowerAction::SoftOff | PowerAction::Cycle
        )
    }
}

impl std::fmt::Display for PowerAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PowerAction {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<PowerAction, DomainError> {
        PowerAction::parse("action", s)
    }
}

/// IPMI privilege level requested for the RMCP+ session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpmiPrivilege {
    /// USER: enough to query power on most BMCs, not to change it.
    User,
    /// OPERATOR: power control.
    Operator,
    /// ADMINISTRATOR (the default, as in ipmitool and MAAS).
    Administrator,
}

impl IpmiPrivilege {
    /// The IPMI encoding of the level (2, 3, 4).
    pub fn code(self) -> u8 {
        match self {
            IpmiPrivilege::User => 2,
            IpmiPrivilege::Operator => 3,
            IpmiPrivilege::Administrator => 4,
        }
    }

    /// ipmitool's spelling for `-L`.
    pub fn ipmitool_name(self) -> &'static str {
        match self {
            IpmiPrivilege::User => "USER",
            IpmiPrivilege::Operator => "OPERATOR",
            IpmiPrivilege::Administrator => "ADMINISTRATOR",
        }
    }
}

/// How the `ipmi` driver talks to the BMC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpmiTool {
    /// Ingot's own RMCP+ client: no process per query.
    Native,
    /// The `ipmitool` binary as a subprocess (for BMCs the native client does not handle).
    Ipmitool,
}

/// Parameters of the `ipmi` driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpmiParams {
    /// BMC host name or IP address.
    pub address: String,
    /// UDP port (623).
    pub port: u16,
    /// BMC user name (may be empty for the anonymous user).
    pub username: String,
    /// BMC password (secret).
    pub password: String,
    /// RMCP+ cipher suite id (3: RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128).
    pub cipher_suite: u8,
    /// Requested privilege.
    pub privilege: IpmiPrivilege,
    /// Native client or ipmitool.
    pub tool: IpmiTool,
    /// Per-request timeout in milliseconds.
    pub timeout_ms: u64,
    /// Retransmissions per request after a timeout.
    pub retries: u32,
}

/// Redfish authentication mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedfishAuth {
    /// A session when the service offers one, basic auth otherwise.
    Auto,
    /// HTTP basic auth on every request.
    Basic,
    /// A Redfish session (X-Auth-Token), failing if the service has none.
    Session,
}

/// Parameters of the `redfish` driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedfishParams {
    /// Base URL of the BMC (`https://host[:port]`); a bare host means `https://host`.
    pub address: String,
    /// User name.
    pub username: String,
    /// Password (secret).
    pub password: String,
    /// The ComputerSystem id (last path segment); empty: the service's only system.
    pub system: String,
    /// Verify the BMC's TLS certificate (default true).
    pub verify_tls: bool,
    /// PEM CA bundle to verify the BMC with, instead of the system roots.
    pub ca_cert: String,
    /// Authentication mode.
    pub auth: RedfishAuth,
    /// Per-request timeout in milliseconds.
    pub timeout_ms: u64,
    /// How long to poll after a reset until the BMC reports the wanted power state (BMCs lag), in seconds.
    pub power_wait_s: u64,
}

/// Parameters of the `webhook` driver (MAAS's webhook driver, made explicit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookParams {
    /// URL requested to power on.
    pub on_url: String,
    /// URL requested to power off.
    pub off_url: String,
    /// URL requested to power cycle; empty: off then on.
    pub cycle_url: String,
    /// URL requested for a soft (ACPI) off; empty: soft-off is unsupported.
    pub soft_off_url: String,
    /// URL requested for next boot from the network; empty: unsupported.
    pub boot_pxe_url: String,
    /// URL requested for next boot from disk; empty: unsupported.
    pub boot_disk_url: String,
    /// URL read (GET) to learn the power state.
    pub query_url: String,
    /// Regex that, found in the query response body, means "on".
    pub query_on_regex: String,
    /// Regex that, found in the query response body, means "off".
    pub query_off_regex: String,
    /// HTTP method of the action requests (POST).
    pub method: String,
    /// Basic-auth user (with `password`), if any.
    pub username: String,
    /// Basic-auth password (secret).
    pub password: String,
    /// Bearer token (secret), if any.
    pub token: String,
    /// Verify TLS certificates (default true).
    pub verify_tls: bool,
    /// Per-request timeout in milliseconds.
    pub timeout_ms: u64,
    /// How long to read `query_url` after an accepted power change until it shows the new state, in
    /// seconds.
    pub power_wait_s: u64,
}

/// Default of the webhook driver's `power_wait_s`.
pub const WEBHOOK_POWER_WAIT_S: u64 = 20;

/// Parameters of the rack's `file` driver (a BMC that is a JSON file, for tests); its fault knobs `fail` and
/// `delay_ms` are read by the rack only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileParams {
    /// Directory holding the BMC state files (`<system_id>.json`).
    pub state_dir: String,
}

/// The `file` driver's old name, still accepted wherever a driver name is parsed (here, in
/// [`crate::validate::power`] and by the rack) so machines stored with power driver `sim` keep working. The
/// word `sim` otherwise names the `ingot-sim` crate of simulated machines.
pub const FILE_DRIVER_ALIAS: &str = "sim";

/// A machine's power settings, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverParams {
    /// IPMI 2.0 over LAN (RMCP+).
    Ipmi(IpmiParams),
    /// Redfish over HTTPS.
    Redfish(RedfishParams),
    /// Operator-defined HTTP requests.
    Webhook(WebhookParams),
    /// The operator powers the machine.
    Manual,
    /// The rack's `file` driver: a BMC that is a JSON file (driver name `file`, or its old name
    /// [`FILE_DRIVER_ALIAS`]).
    File(FileParams),
}

/// Reads parameters by key, remembering which were consumed so unknown keys can be refused.
struct Reader<'a> {
    field: &'a str,
    params: &'a BTreeMap<String, String>,
    used: Vec<&'static str>,
}

impl<'a> Reader<'a> {
    fn err(&self, key: &str, msg: impl Into<String>) -> DomainError {
        DomainError::invalid(format!("{}.params.{key}", self.field), msg)
    }

    fn opt(&mut self, key: &'static str) -> Option<&'a str> {
        self.used.push(key);
        self.params
            .get(key)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
    }

    fn str_or(&mut self, key: &'static str, default: &str) -> String {
        self.opt(key).unwrap_or(default).to_string()
    }

    fn required(&mut self, key: &'static str, what: &str) -> Result<String, DomainError> {
        self.opt(key)
            .map(str::to_string)
            .ok_or_else(|| self.err(key, format!("required: {what}")))
    }

    fn secret(&mut self, key: &'static str) -> String {
        self.used.push(key);
        // Passwords keep their spaces.
        self.params.get(key).cloned().unwrap_or_default()
    }

    fn num<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
        &mut self,
        key: &'static str,
        default: T,
        min: T,
        max: T,
    ) -> Result<T, DomainError> {
        let Some(s) = self.opt(key) else {
            return Ok(default);
        };
        match s.parse::<T>() {
            Ok(v) if v >= min && v <= max => Ok(v),
            _ => Err(self.err(key, format!("'{s}' is not a number from {min} to {max}"))),
        }
    }

    fn boolean(&mut self, key: &'static str, default: bool) -> Result<bool, DomainError> {
        match self.opt(key).map(|s| s.to_ascii_lowercase()) {
            None => Ok(default),
            Some(s) if matches!(s.as_str(), "true" | "yes" | "1" | "on") => Ok(true),
            Some(s) if matches!(s.as_str(), "false" | "no" | "0" | "off") => Ok(false),
            Some(s) => Err(self.err(key, format!("'{s}' is not true or false"))),
        }
    }

    fn url(&mut self, key: &'static str, required: bool) -> Result<String, DomainError> {
        let Some(u) = self.opt(key) else {
            return if required {
                Err(self.err(key, "required: an http:// or https:// URL"))
            } else {
                Ok(String::new())
            };
        };
        check_url(u).map_err(|m| self.err(key, m))?;
        Ok(u.to_string())
    }

    fn regex(&mut self, key: &'static str, default: &str) -> Result<String, DomainError> {
        let r = self.str_or(key, default);
        if r.len() > 1024 {
            return Err(self.err(key, "longer than 1024 characters"));
        }
        Ok(r)
    }

    /// Refuses keys no driver parameter uses (a typo such as `pasword` must not be silently ignored).
    fn finish(self) -> Result<(), DomainError> {
        for k in self.params.keys() {
            if !self.used.contains(&k.as_str()) {
                let mut known: Vec<&str> = self.used.clone();
                known.sort_unstable();
                known.dedup();
                return Err(self.err(
                    k,
                    format!("unknown parameter; this driver takes: {}", known.join(", ")),
                ));
            }
        }
        Ok(())
    }
}

/// An http(s) URL with a host: enough checking to catch typos without a URL parser dependency.
fn check_url(u: &str) -> Result<(), String> {
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
        .ok_or_else(|| format!("'{u}' must start with http:// or https://"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("'{u}' has no host"));
    }
    Ok(())
}

impl DriverParams {
    /// Parses `params` for `driver`; errors name the field as `<field>.params.<key>` (or `<field>.driver`).
    pub fn parse(
        field: &str,
        driver: &str,
        params: &BTreeMap<String, String>,
    ) -> Result<DriverParams, DomainError> {
        let mut r = Reader {
            field,
            params,
            used: Vec::new(),
        };
        let out = match driver {
            "ipmi" => {
                let address = r.required("address", "the BMC's host name or IP address")?;
                if address.contains(['/', ' ']) {
                    return Err(r.err(
                        "address",
                        format!("'{address}' is not a host name or IP address"),
                    ));
                }
                let cipher_suite = r.num("cipher_suite", 3u8, 0, 17)?;
                if !matches!(cipher_suite, 0 | 1 | 2 | 3 | 17) {
                    return Err(r.err(
                        "cipher_suite",
                        format!("cipher suite {cipher_suite} is not supported; use 3 (default), 17, 2, 1 or 0"),
                    ));
                }
                let privilege = match r.opt("privilege").map(|s| s.to_ascii_lowercase()) {
                    None => IpmiPrivilege::Administrator,
                    Some(p) if p == "user" => IpmiPrivilege::User,
                    Some(p) if p == "operator" => IpmiPrivilege::Operator,
                    Some(p) if p == "administrator" || p == "admin" => IpmiPrivilege::Administrator,
                    Some(p) => {
                        return Err(r.err(
                            "privilege",
                            format!("'{p}' is not user, operator or administrator"),
                        ))
                    }
                };
                let tool = match r.opt("tool").map(|s| s.to_ascii_lowercase()) {
                    None => IpmiTool::Native,
                    Some(t) if t == "native" => IpmiTool::Native,
                    Some(t) if t == "ipmitool" => IpmiTool::Ipmitool,
                    Some(t) => {
                        return Err(r.err("tool", format!("'{t}' is not native or ipmitool")))
                    }
                };
                DriverParams::Ipmi(IpmiParams {
                    address,
                    port: r.num("port", 623u16, 1, u16::MAX)?,
                    username: r.str_or("username", ""),
                    password: r.secret("password"),
                    cipher_suite,
                    privilege,
                    tool,
                    timeout_ms: r.num("timeout_ms", 1000u64, 50, 60_000)?,
                    retries: r.num("retries", 3u32, 0, 10)?,
                })
            }
            "redfish" => {
                let mut address = r.required("address", "the BMC's URL, e.g. https://10.0.0.5")?;
                if !address.contains("://") {
                    address = format!("https://{address}");
                }
                check_url(&address).map_err(|m| r.err("address", m))?;
                let auth = match r.opt("auth").map(|s| s.to_ascii_lowercase()) {
                    None => RedfishAuth::Auto,
                    Some(a) if a == "auto" => RedfishAuth::Auto,
                    Some(a) if a == "basic" => RedfishAuth::Basic,
                    Some(a) if a == "session" => RedfishAuth::Session,
                    Some(a) => {
                        return Err(r.err("auth", format!("'{a}' is not auto, basic or session")))
                    }
                };
                let system = r.str_or("system", "");
                if system.contains(['/', '?', '#']) {
                    return Err(r.err("system", "a system id is one path segment (no '/')"));
                }
                let ca_cert = r.str_or("ca_cert", "");
                if !ca_cert.is_empty() && !ca_cert.contains("-----BEGIN CERTIFICATE-----") {
                    return Err(r.err("ca_cert", "must be PEM text (-----BEGIN CERTIFICATE-----)"));
                }
                DriverParams::Redfish(RedfishParams {
                    address: address.trim_end_matches('/').to_string(),
                    username: r.str_or("username", ""),
                    password: r.secret("password"),
                    system,
                    verify_tls: r.boolean("verify_tls", true)?,
                    ca_cert,
                    auth,
                    timeout_ms: r.num("timeout_ms", 10_000u64, 100, 120_000)?,
                    power_wait_s: r.num("power_wait_s", 60u64, 0, 900)?,
                })
            }
            "webhook" => {
                let method = r.str_or("method", "POST").to_ascii_uppercase();
                if !matches!(method.as_str(), "POST" | "PUT" | "GET" | "PATCH") {
                    return Err(r.err(
                        "method",
                        format!("'{method}' is not POST, PUT, PATCH or GET"),
                    ));
                }
                DriverParams::Webhook(WebhookParams {
                    on_url: r.url("on_url", true)?,
                    off_url: r.url("off_url", true)?,
                    cycle_url: r.url("cycle_url", false)?,
                    soft_off_url: r.url("soft_off_url", false)?,
                    boot_pxe_url: r.url("boot_pxe_url", false)?,
                    boot_disk_url: r.url("boot_disk_url", false)?,
                    query_url: r.url("query_url", true)?,
                    query_on_regex: r
                        .regex("query_on_regex", r"(?i)status.*:.*\b(on|running)\b")?,
                    query_off_regex: r
                        .regex("query_off_regex", r"(?i)status.*:.*\b(off|stopped)\b")?,
                    method,
                    username: r.str_or("username", ""),
                    password: r.secret("password"),
                    token: r.secret("token"),
                    verify_tls: r.boolean("verify_tls", true)?,
                    timeout_ms: r.num("timeout_ms", 10_000u64, 100, 120_000)?,
                    power_wait_s: r.num("power_wait_s", WEBHOOK_POWER_WAIT_S, 0, 900)?,
                })
            }
            "manual" => DriverParams::Manual,
            "file" | FILE_DRIVER_ALIAS => DriverParams::File(FileParams {
                state_dir: r.required("state_dir", "the directory of the BMC state files")?,
            }),
            other => {
                return Err(DomainError::invalid(
                    format!("{field}.driver"),
                    format!(
                        "unknown power driver '{other}'; known drivers: {}",
                        crate::validate::POWER_DRIVERS.join(", ")
                    ),
                ))
            }
        };
        // The file driver's fault knobs are read by the rack only.
        if matches!(out, DriverParams::File(_)) {
            r.used.extend(["fail", "delay_ms"]);
        }
        r.finish()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_action_spellings_round_trip_through_serde_and_parse() {
        for a in PowerAction::ALL {
            let json = serde_json::to_string(&a).expect("serialize");
            assert_eq!(json, format!("\"{}\"", a.as_str()));
            assert_eq!(PowerAction::parse("action", a.as_str()).expect("parse"), a);
        }
        let repeatable: Vec<PowerAction> = PowerAction::ALL
            .into_iter()
            .filter(|a| !a.idempotent())
            .collect();
        assert_eq!(repeatable, vec![PowerAction::SoftOff, PowerAction::Cycle]);
        let e = PowerAction::parse("action", "reboot").expect_err("not an action");
        assert!(e.to_string().contains("soft-off"), "{e}");
    }

    fn p(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn ipmi_defaults_and_errors() {
        let d = DriverParams::parse(
            "power",
            "ipmi",
            &p(&[("address", "10.0.0.5"), ("password", " s p ")]),
        )
        .unwrap();
        let DriverParams::Ipmi(i) = d else { panic!() };
        assert_eq!(
            (i.port, i.cipher_suite, i.privilege),
            (623, 3, IpmiPrivilege::Administrator)
        );
        assert_eq!(i.password, " s p ");
        let e = DriverParams::parse("power", "ipmi", &p(&[])).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("power.params.address"));
        let e = DriverParams::parse(
            "power",
            "ipmi",
            &p(&[("address", "h"), ("cipher_suite", "5")]),
        )
        .unwrap_err();
        assert!(e.message.contains("cipher suite 5"), "{e:?}");
        let e = DriverParams::parse("power", "ipmi", &p(&[("address", "h"), ("pasword", "x")]))
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("power.params.pasword"));
        assert!(e.message.contains("password"), "{e:?}");
    }

    #[test]
    fn redfish_and_webhook() {
        let DriverParams::Redfish(r) =
            DriverParams::parse("power", "redfish", &p(&[("address", "bmc1:8443/")])).unwrap()
        else {
            panic!()
        };
        assert_eq!(r.address, "https://bmc1:8443");
        assert!(r.verify_tls);
        let e = DriverParams::parse("power", "redfish", &p(&[("address", "ftp://x")])).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("power.params.address"));
        let e =
            DriverParams::parse("power", "webhook", &p(&[("on_url", "http://h/on")])).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("power.params.off_url"));
        assert!(DriverParams::parse("power", "manual", &p(&[])).is_ok());
        let file = p(&[
            ("state_dir", "/tmp/bmc"),
            ("fail", "auth"),
            ("delay_ms", "5"),
        ]);
        for name in ["file", FILE_DRIVER_ALIAS] {
            let d = DriverParams::parse("power", name, &file).unwrap();
            assert_eq!(
                d,
                DriverParams::File(FileParams {
                    state_dir: "/tmp/bmc".into()
                })
            );
        }
        let e = DriverParams::parse("power", "bogus", &p(&[])).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("power.driver"));
    }
}
