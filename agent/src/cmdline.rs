//! The kernel command line the rack's iPXE script booted the ramdisk with: why the machine booted, where
//! its rack is, and the fingerprint of the cluster CA that the rack's certificate must chain to.
//!
//! Parsed by a pure function ([`parse`]) so every rule is unit-tested; the input is bounded (the kernel's
//! own limit is a few KiB) and every error names the parameter.

use ingot_common::image::BootPurpose;

/// Most bytes of `/proc/cmdline` looked at (the kernel's COMMAND_LINE_SIZE is 2048-4096 on x86).
pub const MAX_CMDLINE: usize = 8192;
/// Most whitespace-separated words looked at.
pub const MAX_WORDS: usize = 512;
/// Longest value of one `ingot.*` parameter kept.
const MAX_VALUE: usize = 256;
/// The rack's agent API port when `ingot.agent` is missing (older rack scripts).
pub const DEFAULT_AGENT_PORT: u16 = 5249;

/// Why the command line cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    /// A required parameter is absent.
    #[error("kernel command line: {0} is missing; the rack's boot script sets it: boot the machine from its rack")]
    Missing(&'static str),
    /// A parameter's value is malformed.
    #[error("kernel command line: {param}='{value}' {why}")]
    Invalid {
        /// The parameter.
        param: &'static str,
        /// Its value (truncated).
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// A host and port to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// An IP address or a DNS name.
    pub host: String,
    /// The TCP port.
    pub port: u16,
}

impl Endpoint {
    /// `host:port` (IPv6 in brackets), for connecting and for the Host header.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Everything the agent learns from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootArgs {
    /// Why the machine booted (`ingot.purpose`); never LocalDisk or PowerOff (those boot no ramdisk).
    pub purpose: BootPurpose,
    /// The rack's plain HTTP base (`ingot.rack`): blobs at `/blobs/<sha256>/<name>`.
    pub rack: Endpoint,
    /// The rack's agent API (`ingot.agent`, HTTPS), or the rack's host on [`DEFAULT_AGENT_PORT`].
    pub agent: Endpoint,
    /// SHA-256 of the cluster CA certificate (DER) the rack's certificate must chain to (`ingot.ca`).
    pub ca_sha256: [u8; 32],
    /// The MAC the machine booted from (`ingot.mac`), lowercase.
    pub mac: String,
    /// The machine's id, when the rack knew it (`ingot.system_id`).
    pub system_id: Option<String>,
    /// Deploy: the image blob's sha256 the script named (`ingot.image`); the agent trusts only the one
    /// its lookup answer carries over TLS.
    pub image: Option<String>,
    /// Deploy: that image's size (`ingot.image_size`).
    pub image_size: Option<u64>,
}

fn invalid(param: &'static str, value: &str, why: &'static str) -> CmdlineError {
    CmdlineError::Invalid {
        param,
        value: value.chars().take(64).collect(),
        why,
    }
}

/// Parses `http://HOST[:PORT][/]` or `https://...` with the scheme `scheme`.
fn endpoint(param: &'static str, value: &str, scheme: &str) -> Result<Endpoint, CmdlineError> {
    let rest = value
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix("://"))
        .ok_or_else(|| {
            let why = if scheme == "https" {
                "must start with https://"
            } else {
                "must start with http://"
            };
            invalid(param, value, why)
        })?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('@') || rest.contains('?') {
        return Err(invalid(
            param,
            value,
            "must be scheme://host:port, without a path",
        ));
    }
    let default_port = if scheme == "https" { 443 } else { 80 };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, tail) = v6
            .split_once(']')
            .ok_or_else(|| invalid(param, value, "has an unclosed '['"))?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().ok(),
            None if tail.is_empty() => Some(default_port),
            None => None,
        };
        (h, port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()),
            None => (rest, Some(default_port)),
        }
    };
    let port = port
        .filter(|p| *p != 0)
        .ok_or_else(|| invalid(param, value, "has no valid port (1-65535)"))?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'));
    if !host_ok {
        return Err(invalid(param, value, "has no valid host"));
    }
    Ok(Endpoint {
        host: host.to_string(),
        port,
    })
}

/// Parses the kernel command line. Unknown words are ignored; a repeated `ingot.*` parameter keeps its
/// last value (as the kernel does for its own).
pub fn parse(cmdline: &str) -> Result<BootArgs, CmdlineError> {
    let mut end = cmdline.len().min(MAX_CMDLINE);
    while !cmdline.is_char_boundary(end) {
        end -= 1;
    }
    let mut purpose = None;
    let mut rack = None;
    let mut agent = None;
    let mut ca = None;
    let mut mac = None;
    let mut system_id = None;
    let mut image = None;
    let mut image_size = None;
    for word in cmdline[..end].split_whitespace().take(MAX_WORDS) {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        if !key.starts_with("ingot.") {
            continue;
        }
        if value.len() > MAX_VALUE {
            return Err(CmdlineError::Invalid {
                param: "ingot.*",
                value: key.chars().take(64).collect(),
                why: "is too long (most 256 bytes)",
            });
        }
        match key {
            "ingot.purpose" => purpose = Some(value),
            "ingot.rack" => rack = Some(value),
            "ingot.agent" => agent = Some(value),
            "ingot.ca" => ca = Some(value),
            "ingot.mac" => mac = Some(value),
            "ingot.system_id" => system_id = Some(value),
            "ingot.image" => image = Some(value),
            "ingot.image_size" => image_size = Some(value),
            _ => {}
        }
    }
    let purpose_s = purpose.ok_or(CmdlineError::Missing("ingot.purpose"))?;
    let purpose = BootPurpose::parse(purpose_s)
        .filter(|p| !matches!(p, BootPurpose::LocalDisk | BootPurpose::PowerOff))
        .ok_or_else(|| {
            invalid(
                "ingot.purpose",
                purpose_s,
                "is not one of enlist, commission, test, erase, deploy, rescue",
            )
        })?;
    let rack = endpoint(
        "ingot.rack",
        rack.ok_or(CmdlineError::Missing("ingot.rack"))?,
        "http",
    )?;
    let agent = match agent {
        Some(a) => endpoint("ingot.agent", a, "https")?,
        None => Endpoint {
            host: rack.host.clone(),
            port: DEFAULT_AGENT_PORT,
        },
    };
    let ca_s = ca.ok_or(CmdlineError::Missing("ingot.ca"))?;
    let ca_sha256: [u8; 32] = hex::decode(ca_s)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| invalid("ingot.ca", ca_s, "is not 64 hex digits (a SHA-256)"))?;
    let mac_s = mac.ok_or(CmdlineError::Missing("ingot.mac"))?;
    let mac = mac_s.to_ascii_lowercase().replace('-', ":");
    let mac_ok = mac.len() == 17
        && mac.split(':').count() == 6
        && mac
            .split(':')
            .all(|o| o.len() == 2 && o.chars().all(|c| c.is_ascii_hexdigit()));
    if !mac_ok {
        return Err(invalid("ingot.mac", mac_s, "is not a MAC address"));
    }
    let system_id = system_id.filter(|s| !s.is_empty()).map(str::to_string);
    let image = match image.filter(|s| !s.is_empty()) {
        Some(i) if i.len() == 64 && i.chars().all(|c| c.is_ascii_hexdigit()) => {
            Some(i.to_ascii_lowercase())
        }
        Some(i) => {
            return Err(invalid(
                "ingot.image",
                i,
                "is not a SHA-256 (64 hex digits)",
            ))
        }
        None => None,
    };
    let image_size = match image_size {
        Some(s) => Some(
            s.parse()
                .map_err(|_| invalid("ingot.image_size", s, "is not a byte count"))?,
        ),
        None => None,
    };
    Ok(BootArgs {
        purpose,
        rack,
        agent,
        ca_sha256,
        mac,
        system_id,
        image,
        image_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn line(extra: &str) -> String {
        format!(
            "initrd=initrd ingot.purpose=deploy ingot.rack=http://10.0.0.2:5248 ingot.ca={CA} \
             ingot.mac=52:54:00:AA:bb:01 console=ttyS0,115200 {extra}"
        )
    }

    #[test]
    fn a_rack_script_line_parses() {
        let a = parse(&line(
            "ingot.system_id=m-1 ingot.image=ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789 ingot.image_size=1048576",
        ))
        .unwrap();
        assert_eq!(a.purpose, BootPurpose::Deploy);
        assert_eq!(
            a.rack,
            Endpoint {
                host: "10.0.0.2".into(),
                port: 5248
            }
        );
        // No ingot.agent: the rack's host on the agent port.
        assert_eq!(a.agent.authority(), "10.0.0.2:5249");
        assert_eq!(hex::encode(a.ca_sha256), CA);
        assert_eq!(a.mac, "52:54:00:aa:bb:01");
        assert_eq!(a.system_id.as_deref(), Some("m-1"));
        assert_eq!(a.image.as_deref().map(str::len), Some(64));
        assert_eq!(a.image_size, Some(1 << 20));
        let b = parse(&line("ingot.agent=https://10.0.0.3:7443/")).unwrap();
        assert_eq!(b.agent.authority(), "10.0.0.3:7443");
        assert_eq!(b.system_id, None);
        let v6 = parse(&line("ingot.agent=https://[fd00::1]:7443")).unwrap();
        assert_eq!(v6.agent.authority(), "[fd00::1]:7443");
    }

    #[test]
    fn every_purpose_of_a_ramdisk_parses_and_others_do_not() {
        for p in ["enlist", "commission", "test", "erase", "deploy", "rescue"] {
            let l = line("").replace("ingot.purpose=deploy", &format!("ingot.purpose={p}"));
            assert_eq!(parse(&l).unwrap().purpose.as_str(), p);
        }
        for p in ["local-disk", "power-off", "", "DEPLOY"] {
            let l = line("").replace("ingot.purpose=deploy", &format!("ingot.purpose={p}"));
            assert!(
                matches!(
                    parse(&l),
                    Err(CmdlineError::Invalid {
                        param: "ingot.purpose",
                        ..
                    })
                ),
                "{p}"
            );
        }
    }

    #[test]
    fn missing_and_malformed_parameters_are_named() {
        assert_eq!(
            parse("ingot.rack=http://1.2.3.4:1"),
            Err(CmdlineError::Missing("ingot.purpose"))
        );
        let no_ca = line("").replace(&format!("ingot.ca={CA}"), "");
        assert_eq!(parse(&no_ca), Err(CmdlineError::Missing("ingot.ca")));
        let cases = [
            ("ingot.ca=abcd", "ingot.ca"),
            ("ingot.mac=52:54:00:aa:bb", "ingot.mac"),
            ("ingot.mac=zz:54:00:aa:bb:01", "ingot.mac"),
            ("ingot.rack=https://10.0.0.2:5248", "ingot.rack"),
            ("ingot.rack=http://10.0.0.2:0", "ingot.rack"),
            ("ingot.rack=http://10.0.0.2:99999", "ingot.rack"),
            ("ingot.rack=http://10.0.0.2:5248/x", "ingot.rack"),
            ("ingot.rack=http://u@10.0.0.2:5248", "ingot.rack"),
            ("ingot.rack=http://:5248", "ingot.rack"),
            ("ingot.agent=http://10.0.0.2:5249", "ingot.agent"),
            ("ingot.image=xyz", "ingot.image"),
            ("ingot.image_size=-1", "ingot.image_size"),
        ];
        for (extra, param) in cases {
            match parse(&line(extra)) {
                Err(CmdlineError::Invalid { param: p, .. }) => assert_eq!(p, param, "{extra}"),
                other => panic!("{extra}: {other:?}"),
            }
        }
        // The error text names the parameter and says what to do.
        let e = parse(&line("ingot.ca=abcd")).unwrap_err().to_string();
        assert!(e.contains("ingot.ca") && e.contains("64 hex"), "{e}");
    }

    #[test]
    fn hostile_input_is_bounded() {
        // A huge value is refused without being echoed whole.
        let long = format!("ingot.system_id={}", "x".repeat(100_000));
        let e = parse(&line(&long)).unwrap_err();
        assert!(e.to_string().len() < 300, "{e}");
        // Parameters past the bounded prefix are not seen.
        let far = format!("{} {}", "w ".repeat(MAX_CMDLINE), line(""));
        assert_eq!(parse(&far), Err(CmdlineError::Missing("ingot.purpose")));
        // Multi-byte characters at the cut do not panic.
        let utf = "é".repeat(MAX_CMDLINE);
        assert!(parse(&utf).is_err());
        assert!(parse("ingot.rack=http://[::1 ingot.purpose=test").is_err());
    }
}
