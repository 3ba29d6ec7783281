//! Rendering: tables for people, JSON for scripts, and the conversions both need (statuses, roles,
//! timestamps), so every command prints the same record the same way.

use comfy_table::{presets, Table};
use ingot_proto::v1::{Machine, Region, RegionRole, Zone};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Writes one line to stdout; exits quietly (status 0) if the reader went away.
pub fn emit_line(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// Renders a table without the padding the borderless preset leaves at both ends of every line.
pub fn render(t: &Table) -> String {
    t.to_string()
        .lines()
        .map(|l| l.strip_prefix(' ').unwrap_or(l).trim_end())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A table with a header row in the plain, column-aligned style (easy to read and to grep).
pub fn table<const N: usize>(header: [&str; N]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING).set_header(header.to_vec());
    t
}

/// A two-column field/value table for one record.
pub fn record(rows: Vec<(&str, String)>) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING);
    for (k, v) in rows {
        t.add_row(vec![k.to_string(), v]);
    }
    t
}

/// Prints a JSON value, pretty.
pub fn print_json(v: &Value) {
    outln!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// The operator name of a wire machine status (`ready`, `failed-commissioning`, ...).
///
/// The `ingot.v1.MachineStatus` numbers 1..=22 follow `ingot_common::MachineStatus::ALL` order.
pub fn status_name(status: i32) -> String {
    match usize::try_from(status) {
        Ok(0) => "unspecified".into(),
        Ok(n) => ingot_common::MachineStatus::ALL
            .get(n - 1)
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|| format!("unknown({status})")),
        Err(_) => format!("unknown({status})"),
    }
}

/// Parses an operator status name into its wire number (clap value parser).
pub fn parse_status(s: &str) -> Result<i32, String> {
    let st = ingot_common::MachineStatus::parse(s).ok_or_else(|| {
        let names: Vec<&str> = ingot_common::MachineStatus::ALL
            .iter()
            .map(|s| s.as_str())
            .collect();
        format!("unknown status '{s}' (one of: {})", names.join(", "))
    })?;
    let pos = ingot_common::MachineStatus::ALL
        .iter()
        .position(|x| *x == st)
        .unwrap_or(0);
    Ok(pos as i32 + 1)
}

/// Lowercase role name (`leader`, `follower`, ...).
pub fn role_name(role: i32) -> String {
    match RegionRole::try_from(role) {
        Ok(r) => r
            .as_str_name()
            .trim_start_matches("REGION_ROLE_")
            .to_ascii_lowercase(),
        Err(_) => format!("unknown({role})"),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC) for a protobuf timestamp; `-` when absent.
pub fn ts(t: &Option<prost_types::Timestamp>) -> String {
    match t {
        Some(t) => rfc3339(t.seconds),
        None => "-".into(),
    }
}

/// JSON form of a protobuf timestamp: an RFC 3339 string, or null.
pub fn ts_json(t: &Option<prost_types::Timestamp>) -> Value {
    match t {
        Some(t) => Value::String(rfc3339(t.seconds)),
        None => Value::Null,
    }
}

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC).
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A machine as JSON.
pub fn machine_json(m: &Machine) -> Value {
    let power = m.power.clone().unwrap_or_default();
    let params: BTreeMap<_, _> = power.params.into_iter().collect();
    json!({
        "system_id": m.system_id,
        "hostname": m.hostname,
        "status": status_name(m.status),
        "zone": m.zone,
        "arch": m.arch,
        "macs": m.macs,
        "power": {"driver": power.driver, "params": params},
        "description": m.description,
        "created_at": ts_json(&m.created_at),
        "updated_at": ts_json(&m.updated_at),
        "revision": m.revision,
    })
}

/// Column headers of [`machine_row`].
pub const MACHINE_HEADER: [&str; 7] = [
    "SYSTEM ID",
    "HOSTNAME",
    "STATUS",
    "ZONE",
    "ARCH",
    "MACS",
    "POWER",
];

/// One machine as a list row.
pub fn machine_row(m: &Machine) -> Vec<String> {
    let driver = m
        .power
        .as_ref()
        .map(|p| p.driver.clone())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "-".into());
    vec![
        m.system_id.clone(),
        m.hostname.clone(),
        status_name(m.status),
        m.zone.clone(),
        m.arch.clone(),
        m.macs.join(","),
        driver,
    ]
}

/// One machine in full, as a field/value table.
pub fn machine_record(m: &Machine) -> Table {
    let power = m.power.clone().unwrap_or_default();
    let params: BTreeMap<_, _> = power.params.into_iter().collect();
    let params = params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("\n");
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    record(vec![
        ("system id", m.system_id.clone()),
        ("hostname", m.hostname.clone()),
        ("status", status_name(m.status)),
        ("zone", m.zone.clone()),
        ("arch", m.arch.clone()),
        ("macs", m.macs.join("\n")),
        ("power driver", dash(&power.driver)),
        ("power params", dash(&params)),
        ("description", dash(&m.description)),
        ("created", ts(&m.created_at)),
        ("updated", ts(&m.updated_at)),
        ("revision", m.revision.to_string()),
    ])
}

/// A zone as JSON.
pub fn zone_json(z: &Zone) -> Value {
    json!({
        "name": z.name,
        "description": z.description,
        "machine_count": z.machine_count,
        "created_at": ts_json(&z.created_at),
    })
}

/// A zone as a field/value table.
pub fn zone_record(z: &Zone) -> Table {
    record(vec![
        ("name", z.name.clone()),
        ("description", z.description.clone()),
        ("machines", z.machine_count.to_string()),
        ("created", ts(&z.created_at)),
    ])
}

/// A region as JSON.
pub fn region_json(r: &Region, leader_id: u64) -> Value {
    json!({
        "node_id": r.node_id,
        "name": r.name,
        "role": role_name(r.role),
        "leader": r.node_id != 0 && r.node_id == leader_id,
        "voter": r.voter,
        "term": r.term,
        "last_applied_index": r.last_applied_index,
        "last_log_index": r.last_log_index,
        "snapshot_index": r.snapshot_index,
        "healthy": r.healthy,
        "api_addr": r.api_addr,
        "raft_addr": r.raft_addr,
        "error": r.error,
        "leader_id": r.leader_id,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn statuses_roundtrip() {
        for (i, st) in ingot_common::MachineStatus::ALL.iter().enumerate() {
            let n = parse_status(st.as_str()).unwrap();
            assert_eq!(n, i as i32 + 1);
            assert_eq!(status_name(n), st.as_str());
            // The wire enum agrees on the number.
            let wire = ingot_proto::v1::MachineStatus::try_from(n).unwrap();
            let wire_name = wire
                .as_str_name()
                .trim_start_matches("MACHINE_STATUS_")
                .replace('_', "-")
                .to_ascii_lowercase();
            assert_eq!(wire_name, st.as_str());
        }
        assert!(parse_status("bogus").is_err());
        assert_eq!(status_name(0), "unspecified");
    }

    #[test]
    fn roles() {
        assert_eq!(role_name(1), "leader");
        assert_eq!(role_name(99), "unknown(99)");
    }
}
