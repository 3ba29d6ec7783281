//! Field rules shared by the API edge (fail fast, before Raft) and the apply step (the authority). Each
//! failure is a [`DomainError`] naming the field and saying what a valid value looks like.

use crate::{DomainError, Mac, PowerParams};

/// The byte caps of every string and list a request can carry into the Raft log, one per vocabulary of
/// field, in one place. Each is checked where the request is parsed (the API edge, naming the field);
/// together they keep every command far below the proposer's per-command cap
/// (`ingot_region::command::COMMAND_MAX_BYTES`), which is the last line of defence. Lengths are in bytes
/// of UTF-8 (what is stored and replicated), never in characters.
pub mod limits {
    /// Names people give objects and type on a command line: tags, users, token ids, pools and zones
    /// named in lists, storage labels, disk and NIC names and tags, the services and drivers a rack
    /// announces. 64 fits every real one; longer is a client bug.
    pub const NAME: usize = 64;
    /// A DNS label (hostnames, zones, pools, racks, regions): RFC 1035 allows 63 bytes.
    pub const DNS_LABEL: usize = 63;
    /// An architecture such as `amd64/generic`: two short names.
    pub const ARCH: usize = 64;
    /// A key that looks an object up (system id, hostname, consumer, provider id, MAC text): room for
    /// a provider id `ingot:///<zone>/<system_id>` and any consumer name, nothing a lookup could need more.
    pub const KEY: usize = 256;
    /// The consumer an allocation records on a machine (a cluster node name, a k8s object path).
    pub const CONSUMER: usize = 256;
    /// A client request id (idempotency key): a UUID is 36; 128 leaves room for prefixed schemes.
    pub const REQUEST_ID: usize = 128;
    /// Free text a person reads: descriptions, comments, progress messages, failure reasons, driver
    /// messages. It becomes a status message or an event text, replicated and kept: 1 KiB says enough.
    pub const TEXT: usize = 1024;
    /// A short word of a fixed vocabulary a rack reports (error kinds, power states): the longest
    /// known one is 11 bytes.
    pub const WORD: usize = 32;
    /// A version string (a rack's Hello): semver with pre-release and build metadata.
    pub const VERSION: usize = 64;
    /// Entries in one list of names (tags to add, constraint lists, a rack's services and drivers).
    pub const NAME_LIST: usize = 64;
    /// cloud-init user data passed to a deployment (MAAS allows more, but it is replicated and kept
    /// with the machine; larger payloads belong behind a URL).
    pub const USER_DATA: usize = 64 * 1024;
    /// SSH public keys in one deploy request (the NoCloud seed's authorized keys).
    pub const SSH_KEYS: usize = 32;
    /// Bytes of one SSH public key line (an RSA 16384-bit key is about 2,800; a certificate more).
    pub const SSH_KEY: usize = 8 * 1024;
    /// One string of an agent's inventory (CPU model, firmware vendor and version, disk model and
    /// serial, DMI keys and values): DMI strings are at most 255 bytes by the SMBIOS specification.
    pub const INVENTORY_TEXT: usize = 256;
    /// Disks in one inventory (a 4U JBOD head has ~100).
    pub const DISKS: usize = 256;
    /// NICs in one inventory.
    pub const NICS: usize = 256;
    /// DMI entries in one inventory (dmidecode's system, board and chassis strings are ~20).
    pub const DMI: usize = 64;
    /// Extra tags of one disk.
    pub const DISK_TAGS: usize = 16;
    /// MAC addresses of one machine.
    pub const MACS: usize = 64;
    /// Power driver parameters of one machine (the largest driver takes 8).
    pub const POWER_PARAMS: usize = 64;
    /// One power parameter's value (a URL, a password, a webhook body template).
    pub const POWER_PARAM_VALUE: usize = 4096;
    /// The MAAS storage constraint text (at most 32 requests of a label, a size and a few tags).
    pub const STORAGE_TEXT: usize = 4096;
    /// A tag definition (an expression over the inventory; evaluated on every machine).
    pub const TAG_DEFINITION: usize = 4096;
    /// A `host:port` address: a DNS name (at most 253 bytes) or a bracketed IPv6 address, and a port.
    pub const ADDRESS: usize = 253 + ":65535".len();
    /// A PEM certificate signing request (an RSA-4096 CSR is ~1.7 KiB).
    pub const PEM: usize = 16 * 1024;
    /// A secret presented in a request body (join, enrollment and boot tokens): ours are ~50 bytes.
    pub const TOKEN: usize = 256;
}

/// Fails unless `s` is at most `max` bytes, naming the field and both figures (and never echoing the
/// value: an oversized value in an error would be as large as the request).
pub fn bytes(field: &str, s: &str, max: usize) -> Result<(), DomainError> {
    if s.len() > max {
        return Err(DomainError::invalid(
            field,
            format!("{} bytes, at most {max}", s.len()),
        ));
    }
    Ok(())
}

/// Fails unless `s` is one SSH public key line: `<type> <base64> [comment]`, a known key type, one line,
/// bounded. The key goes into a NoCloud seed's authorized keys, where a newline would add a second line.
pub fn ssh_key(field: &str, s: &str) -> Result<(), DomainError> {
    bytes(field, s, limits::SSH_KEY)?;
    let mut parts = s.split(' ');
    let (kind, body) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let known =
        kind.starts_with("ssh-") || kind.starts_with("ecdsa-sha2-") || kind.starts_with("sk-");
    let body_ok = !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
    if known && body_ok && !s.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(DomainError::invalid(
            field,
            "not an SSH public key line: expected '<type> <base64> [comment]' on one line, e.g. the contents of ~/.ssh/id_ed25519.pub",
        ))
    }
}

/// Fails unless a list has at most `max` entries, naming the field.
pub fn entries(field: &str, len: usize, max: usize) -> Result<(), DomainError> {
    if len > max {
        return Err(DomainError::invalid(
            field,
            format!("{len} entries, at most {max}"),
        ));
    }
    Ok(())
}

/// A key that selects an object (system id, name, token id): required and at most [`limits::KEY`]
/// bytes. Whether it exists is the caller's question.
pub fn key(field: &str, s: &str) -> Result<(), DomainError> {
    if s.is_empty() {
        return Err(DomainError::invalid(field, "required"));
    }
    bytes(field, s, limits::KEY)
}

/// A list of names: at most [`limits::NAME_LIST`] entries of at most [`limits::NAME`] bytes each
/// (`field[i]` names a long one).
pub fn name_list(field: &str, list: &[String]) -> Result<(), DomainError> {
    entries(field, list.len(), limits::NAME_LIST)?;
    for (i, s) in list.iter().enumerate() {
        bytes(&format!("{field}[{i}]"), s, limits::NAME)?;
    }
    Ok(())
}

/// A `host:port` address (a region's Raft or API listener): at most [`limits::ADDRESS`] bytes, a
/// non-empty host without spaces, and a port number.
pub fn address(field: &str, addr: &str) -> Result<(), DomainError> {
    bytes(field, addr, limits::ADDRESS)?;
    let bad = |why: String| DomainError::invalid(field, why);
    let shown = || addr.escape_debug().to_string();
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or_else(|| bad(format!("'{}' is not [ipv6]:port", shown())))?;
        h.parse::<std::net::Ipv6Addr>()
            .map_err(|_| bad(format!("'{}' is not an IPv6 address", h.escape_debug())))?;
        (None, p)
    } else {
        let (h, p) = addr.rsplit_once(':').ok_or_else(|| {
            bad(format!(
                "'{}' is not host:port (e.g. 10.0.0.5:7001 or [fd00::5]:7001)",
                shown()
            ))
        })?;
        (Some(h), p)
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => {}
        _ => return Err(bad(format!("'{}': the port must be 1-65535", shown()))),
    }
    if let Some(h) = host {
        let dns_name = !h.is_empty()
            && h.len() <= 253
            && h.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if h.parse::<std::net::Ipv4Addr>().is_err() && !dns_name {
            return Err(bad(format!(
                "'{}' is not host:port (host: a DNS name, an IPv4 address or [an IPv6 address])",
                shown()
            )));
        }
    }
    Ok(())
}

/// Cuts `s` to at most `max` bytes at a character boundary: for free text a rack relays from a BMC
/// (driver messages), which the rack cannot shorten itself and whose refusal would leave a power
/// command without its result.
pub fn truncate_text(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// Power drivers Ingot knows, by their names (what help texts and errors list). [`power`] also accepts
/// [`crate::power::FILE_DRIVER_ALIAS`] (`sim`, the `file` driver's old name) so stored machines keep working.
pub const POWER_DRIVERS: &[&str] = &["ipmi", "redfish", "webhook", "manual", "file"];

/// A DNS label: 1–63 of `[a-z0-9-]`, not starting or ending with `-`. Used for hostnames and zone names.
pub fn dns_label(field: &str, s: &str) -> Result<(), DomainError> {
    bytes(field, s, limits::DNS_LABEL)?;
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(DomainError::invalid(
            field,
            format!("'{s}' is not a valid name: use 1-63 lowercase letters, digits or '-', not starting or ending with '-'"),
        ))
    }
}

/// An architecture such as `amd64/generic` or `arm64`.
pub fn arch(field: &str, s: &str) -> Result<(), DomainError> {
    bytes(field, s, limits::ARCH)?;
    let ok = !s.is_empty()
        && s.split('/').count() <= 2
        && s.split('/').all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(DomainError::invalid(
            field,
            format!("'{s}' is not an architecture: expected e.g. amd64/generic or arm64"),
        ))
    }
}

/// Free text up to [`limits::TEXT`] bytes (descriptions, comments, messages, reasons).
pub fn description(field: &str, s: &str) -> Result<(), DomainError> {
    bytes(field, s, limits::TEXT)
}

/// Parses a list of MACs, naming the index of the first bad or repeated one.
pub fn macs(field: &str, list: &[String], required: bool) -> Result<Vec<Mac>, DomainError> {
    if required && list.is_empty() {
        return Err(DomainError::invalid(
            field,
            "at least one MAC address is required",
        ));
    }
    entries(field, list.len(), limits::MACS)?;
    let mut out: Vec<Mac> = Vec::with_capacity(list.len());
    for (i, s) in list.iter().enumerate() {
        bytes(&format!("{field}[{i}]"), s, limits::NAME)?;
        let mac: Mac = s
            .parse()
            .map_err(|e| DomainError::invalid(format!("{field}[{i}]"), format!("{e}")))?;
        if out.contains(&mac) {
            return Err(DomainError::invalid(
                format!("{field}[{i}]"),
                format!("{mac} is listed twice"),
            ));
        }
        out.push(mac);
    }
    Ok(out)
}

/// A known driver (or empty), sane parameter names and sizes, and parameters the driver accepts
/// ([`crate::power::DriverParams::parse`]).
pub fn power(field: &str, p: &PowerParams) -> Result<(), DomainError> {
    bytes(&format!("{field}.driver"), &p.driver, limits::NAME)?;
    if !p.driver.is_empty()
        && !POWER_DRIVERS.contains(&p.driver.as_str())
        && p.driver != crate::power::FILE_DRIVER_ALIAS
    {
        return Err(DomainError::invalid(
            format!("{field}.driver"),
            format!(
                "unknown power driver '{}'; known drivers: {}",
                p.driver,
                POWER_DRIVERS.join(", ")
            ),
        ));
    }
    entries(
        &format!("{field}.params"),
        p.params.len(),
        limits::POWER_PARAMS,
    )?;
    for (k, v) in &p.params {
        bytes(&format!("{field}.params"), k, limits::NAME)?;
        if k.is_empty()
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        {
            return Err(DomainError::invalid(
                format!("{field}.params"),
                format!("parameter name '{k}' must be 1-64 letters, digits, '_', '-' or '.'"),
            ));
        }
        bytes(&format!("{field}.params.{k}"), v, limits::POWER_PARAM_VALUE)?;
    }
    // The driver's own rules (required keys, ranges, URLs): the same parser the rack runs before acting.
    if !p.driver.is_empty() {
        crate::power::DriverParams::parse(field, &p.driver, &p.params)?;
    }
    Ok(())
}

/// A power action a client may queue (`on`, `off`, ..., see [`crate::power::PowerAction`]).
pub fn power_action(field: &str, action: &str) -> Result<crate::power::PowerAction, DomainError> {
    crate::power::PowerAction::parse(field, action)
}

/// A tag or user name: 1–64 of letters, digits, `-`, `_` and `.`, starting with a letter or digit.
pub fn name(field: &str, s: &str) -> Result<(), DomainError> {
    bytes(field, s, limits::NAME)?;
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && s.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(DomainError::invalid(
            field,
            format!("'{s}' is not a valid name: use 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit"),
        ))
    }
}

/// A client request id (idempotency key): 1–128 printable ASCII characters without spaces.
pub fn request_id(field: &str, s: &str) -> Result<(), DomainError> {
    bytes(field, s, limits::REQUEST_ID)?;
    let ok = !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(DomainError::invalid(
            field,
            "must be 1-128 printable ASCII characters without spaces (e.g. a UUID); it makes retries safe",
        ))
    }
}

/// An inventory as the agent reports it: bounded sizes, so a broken agent cannot bloat replicated state.
/// Every string and list has its cap ([`limits`]); an error names the exact entry
/// (`inventory.disks[3].model: 300 bytes, at most 256`).
pub fn inventory(field: &str, inv: &crate::model::Inventory) -> Result<(), DomainError> {
    use limits::{INVENTORY_TEXT, NAME};
    if inv.cpu_count == 0 || inv.cpu_count > 65_536 {
        return Err(DomainError::invalid(
            format!("{field}.cpu_count"),
            format!("{} is out of range 1-65536", inv.cpu_count),
        ));
    }
    if inv.memory_mib == 0 || inv.memory_mib > 1 << 34 {
        return Err(DomainError::invalid(
            format!("{field}.memory_mib"),
            format!("{} is out of range", inv.memory_mib),
        ));
    }
    bytes(
        &format!("{field}.cpu_model"),
        &inv.cpu_model,
        INVENTORY_TEXT,
    )?;
    entries(&format!("{field}.disks"), inv.disks.len(), limits::DISKS)?;
    entries(&format!("{field}.nics"), inv.nics.len(), limits::NICS)?;
    entries(&format!("{field}.dmi"), inv.dmi.len(), limits::DMI)?;
    for (i, d) in inv.disks.iter().enumerate() {
        let f = format!("{field}.disks[{i}]");
        if d.name.is_empty() {
            return Err(DomainError::invalid(format!("{f}.name"), "required"));
        }
        bytes(&format!("{f}.name"), &d.name, NAME)?;
        bytes(&format!("{f}.model"), &d.model, INVENTORY_TEXT)?;
        bytes(&format!("{f}.serial"), &d.serial, INVENTORY_TEXT)?;
        entries(&format!("{f}.tags"), d.tags.len(), limits::DISK_TAGS)?;
        for (j, t) in d.tags.iter().enumerate() {
            bytes(&format!("{f}.tags[{j}]"), t, NAME)?;
        }
    }
    for (i, n) in inv.nics.iter().enumerate() {
        let f = format!("{field}.nics[{i}]");
        if n.name.is_empty() {
            return Err(DomainError::invalid(format!("{f}.name"), "required"));
        }
        bytes(&format!("{f}.name"), &n.name, NAME)?;
        bytes(&format!("{f}.mac"), &n.mac, NAME)?;
    }
    let fw = &inv.firmware;
    bytes(&format!("{field}.firmware.boot_mode"), &fw.boot_mode, NAME)?;
    bytes(
        &format!("{field}.firmware.vendor"),
        &fw.vendor,
        INVENTORY_TEXT,
    )?;
    bytes(
        &format!("{field}.firmware.version"),
        &fw.version,
        INVENTORY_TEXT,
    )?;
    for (k, v) in &inv.dmi {
        // The key is the entry's name in the error only when it is short enough to quote.
        let f = if k.len() <= NAME {
            format!("{field}.dmi[{k}]")
        } else {
            format!("{field}.dmi")
        };
        bytes(&f, k, NAME)?;
        bytes(&f, v, INVENTORY_TEXT)?;
    }
    Ok(())
}

/// The Hello a rack opens its session with (recorded in the rack's session): a version and the names of
/// its services and drivers.
pub fn rack_hello(
    version: &str,
    services: &[String],
    drivers: &[String],
) -> Result<(), DomainError> {
    bytes("hello.version", version, limits::VERSION)?;
    name_list("hello.services", services)?;
    name_list("hello.drivers", drivers)
}

/// The words of a rack's power report (a command's result or a monitor reading): failure class and power
/// state, each a short word of a fixed vocabulary. `field` is the report's path (`result`,
/// `observations[3]`). The driver's free-text message is cut to [`limits::TEXT`] with [`truncate_text`].
pub fn power_report(field: &str, error_kind: &str, power_state: &str) -> Result<(), DomainError> {
    bytes(&format!("{field}.error_kind"), error_kind, limits::WORD)?;
    bytes(&format!("{field}.power_state"), power_state, limits::WORD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert!(dns_label("hostname", "node-01").is_ok());
        for bad in ["", "-a", "a-", "Upper", "a_b", &"x".repeat(64)] {
            let e = dns_label("hostname", bad).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("hostname"));
        }
    }

    #[test]
    fn mac_list_names_index() {
        let e = macs("macs", &["52:54:00:00:00:01".into(), "nope".into()], true).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("macs[1]"));
        let e = macs(
            "macs",
            &["52:54:00:00:00:01".into(), "525400000001".into()],
            true,
        )
        .unwrap_err();
        assert!(e.message.contains("twice"));
        assert!(macs("macs", &[], true).is_err());
    }

    #[test]
    fn archs() {
        assert!(arch("arch", "amd64/generic").is_ok());
        assert!(arch("arch", "arm64").is_ok());
        assert!(arch("arch", "a/b/c").is_err());
        assert!(arch("arch", "").is_err());
    }

    #[test]
    fn file_driver_and_its_old_name() {
        let params = [("state_dir".to_string(), "/tmp/bmc".to_string())].into();
        for driver in ["file", "sim"] {
            let p = PowerParams {
                driver: driver.into(),
                params: std::collections::BTreeMap::clone(&params),
            };
            assert!(power("power", &p).is_ok(), "{driver}");
        }
        let p = PowerParams {
            driver: "simulator".into(),
            params,
        };
        let e = power("power", &p).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("power.driver"));
        assert!(e.message.contains("manual, file"), "{e:?}");
    }

    /// `check` accepts `max` bytes of `unit` and refuses one more byte, naming `field` and both figures.
    fn boundary(
        field: &str,
        max: usize,
        unit: char,
        check: impl Fn(&str) -> Result<(), DomainError>,
    ) {
        let n = max / unit.len_utf8();
        let at: String = std::iter::repeat_n(unit, n).collect();
        let at = format!("{at}{}", "a".repeat(max - at.len()));
        assert_eq!(at.len(), max);
        assert!(check(&at).is_ok(), "{field}: {max} bytes must pass");
        let over = format!("{at}a");
        let e = check(&over).unwrap_err();
        assert_eq!(e.field.as_deref(), Some(field), "{e:?}");
        assert_eq!(e.code, crate::ErrorCode::InvalidArgument);
        assert!(
            e.message
                .contains(&format!("{} bytes, at most {max}", max + 1)),
            "{e:?}"
        );
        assert!(e.message.len() < 200, "the error must not echo the value");
    }

    /// A string of `max` characters that is `max + 1` bytes (one two-byte character) is refused:
    /// caps count bytes.
    fn multibyte_counts_bytes(check: impl Fn(&str) -> Result<(), DomainError>, max: usize) {
        let s = format!("{}é", "a".repeat(max - 1));
        assert_eq!(s.chars().count(), max);
        assert_eq!(s.len(), max + 1);
        assert!(check(&s).is_err());
    }

    #[test]
    fn caps_are_bytes_at_the_boundary() {
        use limits::*;
        boundary("f", 10, 'é', |s| bytes("f", s, 10));
        boundary("hostname", DNS_LABEL, 'a', |s| dns_label("hostname", s));
        boundary("arch", ARCH, 'a', |s| arch("arch", s));
        boundary("description", TEXT, 'é', |s| description("description", s));
        multibyte_counts_bytes(|s| description("description", s), TEXT);
        boundary("name", NAME, 'a', |s| name("name", s));
        boundary("request_id", REQUEST_ID, 'a', |s| {
            request_id("request_id", s)
        });
        boundary("system_id", KEY, '€', |s| key("system_id", s));
        multibyte_counts_bytes(|s| key("system_id", s), KEY);
        assert_eq!(
            key("system_id", "").unwrap_err().field.as_deref(),
            Some("system_id")
        );
        boundary("tags[1]", NAME, 'ü', |s| {
            name_list("tags", &["a".into(), s.into()])
        });
        let long = vec!["t".to_string(); NAME_LIST + 1];
        assert!(name_list("tags", &long[..NAME_LIST]).is_ok());
        assert_eq!(
            name_list("tags", &long).unwrap_err().field.as_deref(),
            Some("tags")
        );
    }

    #[test]
    fn addresses_are_host_port_and_bounded() {
        for ok in [
            "10.0.0.5:7001",
            "[fd00::5]:7001",
            "[::1]:7001",
            "region-1.example.org:443",
            "localhost:1",
        ] {
            assert!(address("raft_addr", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "10.0.0.5",
            ":7001",
            "h:0",
            "h:99999",
            "h st:1",
            "h:port",
            "host:",
            "host:+1",
            "[::1:80",
            "[nope]:80",
            "-x:80",
            "x..y:80",
            "1.2.3.4:5:6",
            "h\n:1",
        ] {
            let e = address("raft_addr", bad).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("raft_addr"), "{bad}");
        }
        // The longest DNS name (253 bytes, labels of at most 63) with the longest port fits exactly.
        let host = format!("{}.{}", vec!["a".repeat(63); 3].join("."), "b".repeat(61));
        assert_eq!(host.len(), 253);
        assert!(address("api_addr", &format!("{host}:65535")).is_ok());
        let e = address("api_addr", &format!("{host}a:65535")).unwrap_err();
        assert!(e.message.ends_with("bytes, at most 259"), "{e:?}");
    }

    #[test]
    fn power_params_and_macs_are_bounded() {
        // No driver: only the generic rules apply (a driver's own parser refuses unknown keys).
        let mut p = PowerParams {
            driver: String::new(),
            params: Default::default(),
        };
        p.params
            .insert("note".into(), "x".repeat(limits::POWER_PARAM_VALUE));
        assert!(power("power", &p).is_ok());
        p.params
            .insert("note".into(), "x".repeat(limits::POWER_PARAM_VALUE + 1));
        let e = power("power", &p).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("power.params.note"));
        p.params.clear();
        p.params.insert("k".repeat(limits::NAME + 1), String::new());
        assert_eq!(
            power("power", &p).unwrap_err().field.as_deref(),
            Some("power.params")
        );
        p.params.clear();
        p.driver = "d".repeat(10_000);
        let e = power("power", &p).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("power.driver"));
        assert!(e.message.len() < 200, "{e:?}");
        let e = macs("macs", &["5".repeat(limits::NAME + 1)], true).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("macs[0]"));
        assert!(e.message.contains("bytes, at most 64"), "{e:?}");
        let many: Vec<String> = (0..=limits::MACS)
            .map(|i| format!("52:54:00:00:01:{i:02x}"))
            .collect();
        assert!(macs("macs", &many[..limits::MACS], true).is_ok());
        assert_eq!(
            macs("macs", &many, true).unwrap_err().field.as_deref(),
            Some("macs")
        );
    }

    fn inventory_with_disks(n: usize) -> crate::model::Inventory {
        crate::model::Inventory {
            cpu_count: 4,
            memory_mib: 4096,
            disks: (0..n)
                .map(|i| crate::model::Disk {
                    name: format!("sd{i}"),
                    size_gib: 100,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn inventory_strings_are_bounded_and_named() {
        use limits::*;
        let field = |e: DomainError| e.field.unwrap_or_default();
        let mut inv = inventory_with_disks(4);
        inv.disks[3].model = "m".repeat(INVENTORY_TEXT);
        assert!(inventory("inventory", &inv).is_ok());
        inv.disks[3].model = "m".repeat(300);
        let e = inventory("inventory", &inv).unwrap_err();
        assert_eq!(
            e.message,
            "inventory.disks[3].model: 300 bytes, at most 256"
        );
        inv.disks[3].model.clear();
        inv.disks[1].serial = format!("{}é", "s".repeat(INVENTORY_TEXT - 1));
        assert_eq!(
            field(inventory("inventory", &inv).unwrap_err()),
            "inventory.disks[1].serial"
        );
        inv.disks[1].serial.clear();
        inv.disks[2].tags = vec!["t".into(); DISK_TAGS + 1];
        assert_eq!(
            field(inventory("inventory", &inv).unwrap_err()),
            "inventory.disks[2].tags"
        );
        inv.disks[2].tags = vec!["t".repeat(NAME + 1)];
        assert_eq!(
            field(inventory("inventory", &inv).unwrap_err()),
            "inventory.disks[2].tags[0]"
        );
        inv.disks[2].tags.clear();
        inv.nics = vec![crate::model::Nic {
            name: "eno1".into(),
            mac: "m".repeat(NAME + 1),
            ..Default::default()
        }];
        assert_eq!(
            field(inventory("inventory", &inv).unwrap_err()),
            "inventory.nics[0].mac"
        );
        inv.nics.clear();
        inv.firmware.boot_mode = "b".repeat(NAME + 1);
        assert_eq!(
            field(inventory("inventory", &inv).unwrap_err()),
            "inventory.firmware.boot_mode"
        );
        inv.firmware.boot_mode.clear();
        inv.dmi
            .insert("product_name".into(), "p".repeat(INVENTORY_TEXT + 1));
        assert_eq!(
            field(inventory("inventory", &inv).unwrap_err()),
            "inventory.dmi[product_name]"
        );
        inv.dmi.clear();
        inv.dmi.insert("k".repeat(10_000), String::new());
        let e = inventory("inventory", &inv).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("inventory.dmi"));
        assert!(e.message.len() < 200, "{e:?}");
        assert!(inventory("inventory", &inventory_with_disks(DISKS)).is_ok());
        let e = inventory("inventory", &inventory_with_disks(DISKS + 1)).unwrap_err();
        assert_eq!(e.message, "inventory.disks: 257 entries, at most 256");
    }

    #[test]
    fn rack_reports_are_bounded() {
        use limits::*;
        let names = |n: usize, len: usize| vec!["x".repeat(len); n];
        assert!(rack_hello(
            &"v".repeat(VERSION),
            &names(NAME_LIST, NAME),
            &names(NAME_LIST, NAME)
        )
        .is_ok());
        let e = rack_hello(&"v".repeat(VERSION + 1), &[], &[]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("hello.version"));
        let e = rack_hello("1", &names(NAME_LIST + 1, 1), &[]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("hello.services"));
        let e = rack_hello("1", &[], &names(2, NAME + 1)).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("hello.drivers[0]"));
        assert!(power_report("result", &"k".repeat(WORD), "on").is_ok());
        let e = power_report("result", &"k".repeat(WORD + 1), "on").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("result.error_kind"));
        let e = power_report("observations[2]", "", &"s".repeat(WORD + 1)).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("observations[2].power_state"));
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        let mut s = format!("{}é", "a".repeat(9));
        truncate_text(&mut s, 10);
        assert_eq!(
            s,
            "a".repeat(9),
            "the 2-byte character does not fit in 10 bytes"
        );
        let mut s = "é".repeat(3);
        truncate_text(&mut s, 6);
        assert_eq!(s, "ééé");
        truncate_text(&mut s, 5);
        assert_eq!(s, "éé");
    }
}
