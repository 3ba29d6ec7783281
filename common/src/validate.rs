//! Field rules shared by the API edge (fail fast, before Raft) and the apply step (the authority). Each
//! failure is a [`DomainError`] naming the field and saying what a valid value looks like.

use crate::{DomainError, Mac, PowerParams};

/// Power drivers Ingot knows, by their names (what help texts and errors list). [`power`] also accepts
/// [`crate::power::FILE_DRIVER_ALIAS`] (`sim`, the `file` driver's old name) so stored machines keep working.
pub const POWER_DRIVERS: &[&str] = &["ipmi", "redfish", "webhook", "manual", "file"];

/// A DNS label: 1–63 of `[a-z0-9-]`, not starting or ending with `-`. Used for hostnames and zone names.
pub fn dns_label(field: &str, s: &str) -> Result<(), DomainError> {
    let ok = !s.is_empty()
        && s.len() <= 63
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
    let ok = !s.is_empty()
        && s.len() <= 64
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

/// Free text up to 1 KiB.
pub fn description(field: &str, s: &str) -> Result<(), DomainError> {
    if s.len() > 1024 {
        return Err(DomainError::invalid(
            field,
            format!("is {} bytes long; at most 1024 are allowed", s.len()),
        ));
    }
    Ok(())
}

/// Parses a list of MACs, naming the index of the first bad or repeated one.
pub fn macs(field: &str, list: &[String], required: bool) -> Result<Vec<Mac>, DomainError> {
    if required && list.is_empty() {
        return Err(DomainError::invalid(
            field,
            "at least one MAC address is required",
        ));
    }
    if list.len() > 64 {
        return Err(DomainError::invalid(
            field,
            "at most 64 MAC addresses per machine",
        ));
    }
    let mut out: Vec<Mac> = Vec::with_capacity(list.len());
    for (i, s) in list.iter().enumerate() {
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
    if p.params.len() > 64 {
        return Err(DomainError::invalid(
            format!("{field}.params"),
            "at most 64 parameters",
        ));
    }
    for (k, v) in &p.params {
        if k.is_empty()
            || k.len() > 64
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        {
            return Err(DomainError::invalid(
                format!("{field}.params"),
                format!("parameter name '{k}' must be 1-64 letters, digits, '_', '-' or '.'"),
            ));
        }
        if v.len() > 4096 {
            return Err(DomainError::invalid(
                format!("{field}.params.{k}"),
                "value longer than 4096 bytes",
            ));
        }
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
    let ok = !s.is_empty()
        && s.len() <= 64
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
    let ok = !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic());
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
pub fn inventory(field: &str, inv: &crate::model::Inventory) -> Result<(), DomainError> {
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
    if inv.disks.len() > 256 {
        return Err(DomainError::invalid(
            format!("{field}.disks"),
            "at most 256 disks",
        ));
    }
    if inv.nics.len() > 256 {
        return Err(DomainError::invalid(
            format!("{field}.nics"),
            "at most 256 NICs",
        ));
    }
    if inv.dmi.len() > 64 {
        return Err(DomainError::invalid(
            format!("{field}.dmi"),
            "at most 64 entries",
        ));
    }
    for (i, d) in inv.disks.iter().enumerate() {
        if d.name.is_empty() || d.name.len() > 64 || d.tags.len() > 16 {
            return Err(DomainError::invalid(
                format!("{field}.disks[{i}]"),
                "needs a name of 1-64 characters and at most 16 tags",
            ));
        }
    }
    for (i, n) in inv.nics.iter().enumerate() {
        if n.name.is_empty() || n.name.len() > 64 {
            return Err(DomainError::invalid(
                format!("{field}.nics[{i}].name"),
                "needs 1-64 characters",
            ));
        }
    }
    let long = |s: &str| s.len() > 256;
    if long(&inv.cpu_model)
        || long(&inv.firmware.vendor)
        || long(&inv.firmware.version)
        || inv.dmi.iter().any(|(k, v)| long(k) || long(v))
    {
        return Err(DomainError::invalid(
            field,
            "strings are limited to 256 bytes",
        ));
    }
    Ok(())
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
}
