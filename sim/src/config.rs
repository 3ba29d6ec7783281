//! What a simulated fleet looks like: how many machines, their names, zones and BMC credentials, how their
//! BMCs lag, and whether (and how) they play Ingot's in-band agent when they network-boot.

use crate::SimError;
use std::fmt;
use std::path::PathBuf;

/// The most machines one fleet may hold: each needs its own loopback port (and file descriptors for its
/// listener and connections), and the ephemeral port range is about 28,000 ports wide.
pub const MAX_MACHINES: usize = 20_000;

/// Longest BMC user name IPMI 2.0 carries (RAKP 1).
pub const IPMI_MAX_USERNAME: usize = 16;
/// Longest password IPMI 2.0 allows (the key of the RAKP codes).
pub const IPMI_MAX_PASSWORD: usize = 20;

/// The settings of one simulated fleet, consumed by [`crate::Fleet::start`].
#[derive(Clone)]
pub struct FleetConfig {
    /// Number of machines (1..=[`MAX_MACHINES`]).
    pub count: usize,
    /// Hostnames are `<prefix>-01` .. `<prefix>-NN` (zero-padded to at least two digits).
    pub hostname_prefix: String,
    /// Availability zones, assigned round-robin (machine 1 in the first zone, machine 2 in the second, ...).
    pub zones: Vec<String>,
    /// The BMC user name every BMC accepts.
    pub username: String,
    /// The BMC password every BMC accepts; `None`: a random one per fleet (see
    /// [`crate::SimMachineInfo::password`]).
    pub password: Option<String>,
    /// Delay between accepting a reset action and the power state changing, as real BMCs lag (0: at once).
    pub power_delay_ms: u64,
    /// Port of the control API on 127.0.0.1 (0: any free port).
    pub control_port: u16,
    /// How the machines play the in-band agent when they network-boot; `None`: they never report.
    pub agent: Option<AgentConfig>,
    /// Seed of everything derived per machine (MACs, UUIDs, hardware). Two fleets with the same seed and
    /// count have the same machines; give fleets that share a cluster different seeds.
    pub seed: u64,
    /// Whether each BMC also speaks IPMI 2.0 over LAN (RMCP+) on its own UDP port (default on). Off halves
    /// the sockets a large fleet needs when only Redfish is wanted.
    pub ipmi: bool,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            count: 20,
            hostname_prefix: "sim".into(),
            zones: vec!["default".into()],
            username: "admin".into(),
            password: None,
            power_delay_ms: 0,
            control_port: 0,
            agent: None,
            seed: 0,
            ipmi: true,
        }
    }
}

impl fmt::Debug for FleetConfig {
    // The BMC password is a secret: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetConfig")
            .field("count", &self.count)
            .field("hostname_prefix", &self.hostname_prefix)
            .field("zones", &self.zones)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("power_delay_ms", &self.power_delay_ms)
            .field("control_port", &self.control_port)
            .field("agent", &self.agent)
            .field("seed", &self.seed)
            .field("ipmi", &self.ipmi)
            .finish()
    }
}

impl FleetConfig {
    /// Checks every field before anything is bound, so a mistake is reported by name and not as a
    /// half-started fleet.
    pub fn validate(&self) -> Result<(), SimError> {
        if self.count == 0 || self.count > MAX_MACHINES {
            return Err(SimError::config(
                "count",
                format!("{} is out of range 1-{MAX_MACHINES}", self.count),
            ));
        }
        let p = &self.hostname_prefix;
        let label_ok = !p.is_empty()
            && p.len() <= 50
            && p.starts_with(|c: char| c.is_ascii_lowercase())
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !label_ok {
            return Err(SimError::config(
                "hostname_prefix",
                format!(
                    "'{p}' cannot start a hostname: use 1-50 lowercase letters, digits or '-', starting with a letter"
                ),
            ));
        }
        if self.zones.is_empty() {
            return Err(SimError::config(
                "zones",
                "give at least one zone (e.g. default)",
            ));
        }
        for z in &self.zones {
            if z.is_empty() || z.len() > 63 || z.contains(|c: char| c.is_whitespace() || c == ',') {
                return Err(SimError::config(
                    "zones",
                    format!("'{z}' is not a zone name (1-63 characters, no spaces or commas)"),
                ));
            }
        }
        if self.username.is_empty() || self.username.contains(':') || has_control(&self.username) {
            return Err(SimError::config(
                "username",
                "needs at least one character and no ':' or control characters (HTTP basic auth)",
            ));
        }
        if let Some(pw) = &self.password {
            if pw.is_empty() || has_control(pw) {
                return Err(SimError::config(
                    "password",
                    "needs at least one character and no control characters",
                ));
            }
        }
        if self.ipmi && self.username.len() > IPMI_MAX_USERNAME {
            return Err(SimError::config(
                "username",
                format!(
                    "IPMI allows at most {IPMI_MAX_USERNAME} bytes; shorten it or run without IPMI (--no-ipmi)"
                ),
            ));
        }
        if let Some(pw) = self
            .password
            .as_ref()
            .filter(|p| self.ipmi && p.len() > IPMI_MAX_PASSWORD)
        {
            return Err(SimError::config(
                "password",
                format!(
                    "IPMI 2.0 allows at most {IPMI_MAX_PASSWORD} bytes (this one has {}); shorten it or run \
                     without IPMI (--no-ipmi)",
                    pw.len()
                ),
            ));
        }
        if self.power_delay_ms > 600_000 {
            return Err(SimError::config(
                "power_delay_ms",
                "at most 600000 (10 minutes)",
            ));
        }
        if let Some(a) = &self.agent {
            a.validate()?;
        }
        Ok(())
    }

    /// The hostname of machine `index` (0-based): `sim-01`, ..., zero-padded to the width of `count`.
    pub fn hostname(&self, index: usize) -> String {
        let width = self.count.to_string().len().max(2);
        format!("{}-{:0width$}", self.hostname_prefix, index + 1)
    }

    /// The zone of machine `index` (0-based), round-robin over [`FleetConfig::zones`].
    pub fn zone(&self, index: usize) -> String {
        match self.zones.len() {
            0 => "default".to_string(),
            n => self.zones[index % n].clone(),
        }
    }
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// One progress report of a simulated deployment.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProgressStep {
    /// What the step says, e.g. `curtin: partitioning`.
    pub message: String,
    /// 0..=100.
    pub percent: u32,
}

impl ProgressStep {
    /// Shorthand constructor.
    pub fn new(message: impl Into<String>, percent: u32) -> ProgressStep {
        ProgressStep {
            message: message.into(),
            percent,
        }
    }
}

/// The steps a deploying machine reports by default, like curtin's phases.
pub fn default_deploy_steps() -> Vec<ProgressStep> {
    vec![
        ProgressStep::new("curtin: partitioning", 20),
        ProgressStep::new("curtin: installing", 60),
        ProgressStep::new("curtin: configuring", 90),
    ]
}

/// How simulated machines reach the regions and pace their in-band work when they network-boot.
#[derive(Clone)]
pub struct AgentConfig {
    /// `https://host:port` API URLs of the regions (calls are balanced over them and fail over).
    pub endpoints: Vec<String>,
    /// The cluster CA certificate (PEM file) the regions' certificates are verified against.
    pub ca_pem_path: PathBuf,
    /// An admin bearer token: the simulated boot path reads each machine's boot credentials with it (what
    /// the rack's boot configuration hands a real machine).
    pub token: String,
    /// Time from power-on to the agent's first call, as a real machine spends it in firmware and the
    /// ramdisk.
    pub boot_delay_ms: u64,
    /// Progress steps of a deployment, reported [`AgentConfig::step_delay_ms`] apart.
    pub deploy_steps: Vec<ProgressStep>,
    /// Pause after each progress step.
    pub step_delay_ms: u64,
    /// How long each call is retried while the regions are unavailable (failover, election).
    pub retry_ms: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            endpoints: Vec::new(),
            ca_pem_path: PathBuf::new(),
            token: String::new(),
            boot_delay_ms: 500,
            deploy_steps: default_deploy_steps(),
            step_delay_ms: 200,
            retry_ms: 30_000,
        }
    }
}

impl fmt::Debug for AgentConfig {
    // The token is a credential: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConfig")
            .field("endpoints", &self.endpoints)
            .field("ca_pem_path", &self.ca_pem_path)
            .field("token", &"<redacted>")
            .field("boot_delay_ms", &self.boot_delay_ms)
            .field("deploy_steps", &self.deploy_steps)
            .field("step_delay_ms", &self.step_delay_ms)
            .field("retry_ms", &self.retry_ms)
            .finish()
    }
}

impl AgentConfig {
    /// An agent configuration with the default timings.
    pub fn new(
        endpoints: Vec<String>,
        ca_pem_path: impl Into<PathBuf>,
        token: impl Into<String>,
    ) -> AgentConfig {
        AgentConfig {
            endpoints,
            ca_pem_path: ca_pem_path.into(),
            token: token.into(),
            ..AgentConfig::default()
        }
    }

    /// Checks the timings and steps (the endpoints, CA and token are checked when the fleet connects).
    pub fn validate(&self) -> Result<(), SimError> {
        for (name, v) in [
            ("agent.boot_delay_ms", self.boot_delay_ms),
            ("agent.step_delay_ms", self.step_delay_ms),
            ("agent.retry_ms", self.retry_ms),
        ] {
            if v > 3_600_000 {
                return Err(SimError::config(name, "at most 3600000 (one hour)"));
            }
        }
        if self.deploy_steps.len() > 100 {
            return Err(SimError::config("agent.deploy_steps", "at most 100 steps"));
        }
        if let Some(s) = self.deploy_steps.iter().find(|s| s.percent > 100) {
            return Err(SimError::config(
                "agent.deploy_steps",
                format!("'{}' has percent {} (at most 100)", s.message, s.percent),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_padded_to_the_count() {
        let mut c = FleetConfig {
            count: 9,
            ..FleetConfig::default()
        };
        assert_eq!(c.hostname(0), "sim-01");
        c.count = 1000;
        assert_eq!(c.hostname(0), "sim-0001");
        assert_eq!(c.hostname(999), "sim-1000");
    }

    #[test]
    fn zones_round_robin() {
        let c = FleetConfig {
            zones: vec!["a".into(), "b".into()],
            ..FleetConfig::default()
        };
        assert_eq!(
            (0..4).map(|i| c.zone(i)).collect::<Vec<_>>(),
            ["a", "b", "a", "b"]
        );
    }

    #[test]
    fn rejects_bad_settings_by_name() {
        let bad = [
            FleetConfig {
                count: 0,
                ..FleetConfig::default()
            },
            FleetConfig {
                hostname_prefix: "Sim".into(),
                ..FleetConfig::default()
            },
            FleetConfig {
                zones: vec![],
                ..FleetConfig::default()
            },
            FleetConfig {
                username: "a:b".into(),
                ..FleetConfig::default()
            },
        ];
        let fields: Vec<_> = bad
            .iter()
            .map(|c| match c.validate() {
                Err(SimError::Config { field, .. }) => field,
                other => panic!("expected a config error, got {other:?}"),
            })
            .collect();
        assert_eq!(fields, ["count", "hostname_prefix", "zones", "username"]);
        assert!(FleetConfig::default().validate().is_ok());
        // IPMI's credential limits apply only with IPMI on.
        let long = FleetConfig {
            password: Some("p".repeat(IPMI_MAX_PASSWORD + 1)),
            ..FleetConfig::default()
        };
        assert!(
            matches!(
                long.validate(),
                Err(SimError::Config {
                    field: "password",
                    ..
                })
            ),
            "{long:?}"
        );
        assert!(FleetConfig {
            ipmi: false,
            ..long
        }
        .validate()
        .is_ok());
        let long_user = FleetConfig {
            username: "u".repeat(IPMI_MAX_USERNAME + 1),
            ..FleetConfig::default()
        };
        assert!(long_user.validate().is_err());
    }

    #[test]
    fn debug_hides_secrets() {
        let c = FleetConfig {
            password: Some("hunter2".into()),
            agent: Some(AgentConfig::new(vec![], "/ca", "tok3n")),
            ..FleetConfig::default()
        };
        let s = format!("{c:?}");
        assert!(!s.contains("hunter2") && !s.contains("tok3n"), "{s}");
    }
}
