//! Rendering: tables for people, JSON for scripts, and the conversions both need (statuses, roles,
//! timestamps), so every command prints the same record the same way.

use comfy_table::{presets, Table};
use ingot_proto::v1::{
    EraseMode, Event, EventLevel, Inventory, Lease, Machine, MachineAddress, Pool, PowerCommand,
    Rack, Region, RegionRole, Role, Subnet, Tag, Token, User, Zone,
};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

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

/// Prints `v` as pretty JSON, keys in alphabetical order at every level (it goes through
/// [`serde_json::Value`], whose objects are sorted maps): the order `--json` has always printed, whatever
/// the order of a view's fields.
pub fn print_json<T: Serialize + ?Sized>(v: &T) {
    match json_text(v) {
        Ok(text) => outln!("{text}"),
        Err(e) => {
            eprintln!("error: cannot encode the output as JSON: {e}");
            std::process::exit(1);
        }
    }
}

/// The text [`print_json`] prints.
pub fn json_text<T: Serialize + ?Sized>(v: &T) -> serde_json::Result<String> {
    serde_json::to_string_pretty(&serde_json::to_value(v)?)
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
pub fn ts_json(t: &Option<prost_types::Timestamp>) -> Option<String> {
    t.as_ref().map(|t| rfc3339(t.seconds))
}

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339, UTC). A time outside the years
/// 0000-9999, which no valid protobuf timestamp is, prints as `out of range (SECONDSs since the epoch)`.
pub fn rfc3339(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("out of range ({secs}s since the epoch)"))
}

/// The operator name of a proto enum value: `ERASE_MODE_QUICK` with prefix `ERASE_MODE_` -> `quick`.
pub fn enum_name(wire_name: &str, prefix: &str) -> String {
    wire_name
        .trim_start_matches(prefix)
        .replace('_', "-")
        .to_ascii_lowercase()
}

/// `none`, `quick` or `secure`.
pub fn erase_name(v: i32) -> String {
    match EraseMode::try_from(v) {
        Ok(e) => enum_name(e.as_str_name(), "ERASE_MODE_"),
        Err(_) => format!("unknown({v})"),
    }
}

/// `admin` or `user`.
pub fn user_role_name(v: i32) -> String {
    match Role::try_from(v) {
        Ok(r) => enum_name(r.as_str_name(), "ROLE_"),
        Err(_) => format!("unknown({v})"),
    }
}

/// `info`, `warning` or `error`.
pub fn level_name(v: i32) -> String {
    match EventLevel::try_from(v) {
        Ok(l) => enum_name(l.as_str_name(), "EVENT_LEVEL_"),
        Err(_) => format!("unknown({v})"),
    }
}

/// Memory for people: `64 GiB`, `1.5 GiB`, `512 MiB`; `-` for 0 (not commissioned yet).
pub fn mib(v: u64) -> String {
    if v == 0 {
        "-".into()
    } else if v >= 1024 && v & 1023 == 0 {
        format!("{} GiB", v / 1024)
    } else if v >= 1024 {
        format!("{:.1} GiB", v as f64 / 1024.0)
    } else {
        format!("{v} MiB")
    }
}

/// Storage for people: `900 GiB`, `2 TiB`, `1.5 TiB`; `-` for 0.
pub fn gib(v: u64) -> String {
    if v == 0 {
        "-".into()
    } else if v >= 1024 && v & 1023 == 0 {
        format!("{} TiB", v / 1024)
    } else if v >= 1024 {
        format!("{:.1} TiB", v as f64 / 1024.0)
    } else {
        format!("{v} GiB")
    }
}

/// A count for people: `-` for 0 (not commissioned yet).
fn count(v: u32) -> String {
    if v == 0 {
        "-".into()
    } else {
        v.to_string()
    }
}

/// `-` for an empty string.
pub fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

/// Seconds as the shortest duration the CLI accepts back: `30m`, `1h30m`, `6h`, `45s`, `0s`.
pub fn duration(secs: u64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let mut rest = secs;
    for (unit, n) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if rest >= n {
            out.push_str(&format!("{}{unit}", rest / n));
            rest %= n;
        }
    }
    out
}

/// Per-status counts in status order: `ready=3 deployed=2`; `-` when there are none.
pub fn status_counts(counts: &HashMap<String, u64>) -> String {
    let mut parts: Vec<(usize, String)> = counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(name, n)| {
            let pos = ingot_common::MachineStatus::parse(name)
                .and_then(|s| {
                    ingot_common::MachineStatus::ALL
                        .iter()
                        .position(|x| *x == s)
                })
                .unwrap_or(usize::MAX);
            (pos, format!("{name}={n}"))
        })
        .collect();
    parts.sort();
    if parts.is_empty() {
        return "-".into();
    }
    parts
        .into_iter()
        .map(|(_, s)| s)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Per-status counts as a JSON object (status name -> count), sorted by name.
pub fn status_counts_json(counts: &HashMap<String, u64>) -> BTreeMap<&str, u64> {
    counts.iter().map(|(k, v)| (k.as_str(), *v)).collect()
}

/// `--json` of an inventory: the same shape `ingot agent report-inventory` reads.
#[derive(Serialize)]
pub struct InventoryJson<'a> {
    cpu_count: u32,
    cpu_model: &'a str,
    memory_mib: u64,
    disks: Vec<DiskJson<'a>>,
    nics: Vec<NicJson<'a>>,
    firmware: FirmwareJson<'a>,
    dmi: BTreeMap<&'a str, &'a str>,
}

/// One disk of an [`InventoryJson`].
#[derive(Serialize)]
struct DiskJson<'a> {
    name: &'a str,
    size_gib: u64,
    rotational: bool,
    model: &'a str,
    serial: &'a str,
    tags: &'a [String],
}

/// One NIC of an [`InventoryJson`].
#[derive(Serialize)]
struct NicJson<'a> {
    name: &'a str,
    mac: &'a str,
    speed_mbps: u64,
    link: bool,
}

/// The firmware of an [`InventoryJson`] (empty strings when not reported).
#[derive(Serialize)]
struct FirmwareJson<'a> {
    boot_mode: &'a str,
    vendor: &'a str,
    version: &'a str,
}

/// An inventory as JSON.
pub fn inventory_json(inv: &Inventory) -> InventoryJson<'_> {
    let fw = inv.firmware.as_ref();
    InventoryJson {
        cpu_count: inv.cpu_count,
        cpu_model: &inv.cpu_model,
        memory_mib: inv.memory_mib,
        disks: inv
            .disks
            .iter()
            .map(|d| DiskJson {
                name: &d.name,
                size_gib: d.size_gib,
                rotational: d.rotational,
                model: &d.model,
                serial: &d.serial,
                tags: &d.tags,
            })
            .collect(),
        nics: inv
            .nics
            .iter()
            .map(|n| NicJson {
                name: &n.name,
                mac: &n.mac,
                speed_mbps: n.speed_mbps,
                link: n.link,
            })
            .collect(),
        firmware: FirmwareJson {
            boot_mode: fw.map_or("", |f| &f.boot_mode),
            vendor: fw.map_or("", |f| &f.vendor),
            version: fw.map_or("", |f| &f.version),
        },
        dmi: inv
            .dmi
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
    }
}

/// `--json` of a machine: every field of the wire record (the inventory only when the read returned it).
#[derive(Serialize)]
pub struct MachineJson<'a> {
    system_id: &'a str,
    hostname: &'a str,
    status: String,
    status_message: &'a str,
    previous_status: Option<String>,
    deadline: Option<String>,
    zone: &'a str,
    pool: &'a str,
    arch: &'a str,
    macs: &'a [String],
    tags: &'a [String],
    owner: &'a str,
    consumer: &'a str,
    provider_id: &'a str,
    allocation_request_id: &'a str,
    locked: bool,
    cpu_count: u32,
    memory_mib: u64,
    storage_gib: u64,
    power: PowerJson<'a>,
    description: &'a str,
    deploy: Option<DeployJson<'a>>,
    boot_purpose: &'a str,
    progress: ProgressJson<'a>,
    erase: String,
    rack: &'a str,
    power_state: &'a str,
    power_error: &'a str,
    power_checked_at: Option<String>,
    inventory: Option<InventoryJson<'a>>,
    /// The machine's DHCP leases (only `machines show` fills them).
    addresses: Vec<AddressJson<'a>>,
    created_at: Option<String>,
    updated_at: Option<String>,
    revision: u64,
}

/// The power settings of a [`MachineJson`] (secret parameters are masked by the server unless asked).
#[derive(Serialize)]
struct PowerJson<'a> {
    driver: &'a str,
    params: BTreeMap<&'a str, &'a str>,
}

/// The deployment asked for, in a [`MachineJson`].
#[derive(Serialize)]
struct DeployJson<'a> {
    osystem: &'a str,
    distro_series: &'a str,
    user_data: &'a str,
}

/// The last progress report of the running boot, in a [`MachineJson`].
#[derive(Serialize)]
struct ProgressJson<'a> {
    message: &'a str,
    percent: u32,
}

/// A machine as JSON.
pub fn machine_json(m: &Machine) -> MachineJson<'_> {
    let power = m.power.as_ref();
    MachineJson {
        system_id: &m.system_id,
        hostname: &m.hostname,
        status: status_name(m.status),
        status_message: &m.status_message,
        previous_status: optional_status(m.previous_status),
        deadline: ts_json(&m.deadline),
        zone: &m.zone,
        pool: &m.pool,
        arch: &m.arch,
        macs: &m.macs,
        tags: &m.tags,
        owner: &m.owner,
        consumer: &m.consumer,
        provider_id: &m.provider_id,
        allocation_request_id: &m.allocation_request_id,
        locked: m.locked,
        cpu_count: m.cpu_count,
        memory_mib: m.memory_mib,
        storage_gib: m.storage_gib,
        power: PowerJson {
            driver: power.map_or("", |p| &p.driver),
            params: power
                .map(|p| {
                    p.params
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect()
                })
                .unwrap_or_default(),
        },
        description: &m.description,
        deploy: m.deploy.as_deref().map(|d| DeployJson {
            osystem: &d.osystem,
            distro_series: &d.distro_series,
            user_data: &d.user_data,
        }),
        boot_purpose: &m.boot_purpose,
        progress: ProgressJson {
            message: &m.progress_message,
            percent: m.progress_percent,
        },
        erase: erase_name(m.erase),
        rack: &m.rack,
        power_state: &m.power_state,
        power_error: &m.power_error,
        power_checked_at: ts_json(&m.power_checked_at),
        inventory: m.inventory.as_deref().map(inventory_json),
        addresses: m.addresses.iter().map(address_json).collect(),
        created_at: ts_json(&m.created_at),
        updated_at: ts_json(&m.updated_at),
        revision: m.revision,
    }
}

/// A wire status that may be unset (0) as JSON: its name, or null.
fn optional_status(status: i32) -> Option<String> {
    (status != 0).then(|| status_name(status))
}

/// Column headers of [`machine_row`].
pub const MACHINE_HEADER: [&str; 13] = [
    "SYSTEM ID",
    "HOSTNAME",
    "STATUS",
    "POWER",
    "OWNER",
    "POOL",
    "ZONE",
    "RACK",
    "ARCH",
    "CPUS",
    "MEMORY",
    "STORAGE",
    "TAGS",
];

/// One machine as a list row.
pub fn machine_row(m: &Machine) -> Vec<String> {
    let mut status = status_name(m.status);
    if m.locked {
        status.push_str(" (locked)");
    }
    vec![
        m.system_id.clone(),
        m.hostname.clone(),
        status,
        dash(&m.power_state),
        dash(&m.owner),
        m.pool.clone(),
        m.zone.clone(),
        dash(&m.rack),
        m.arch.clone(),
        count(m.cpu_count),
        mib(m.memory_mib),
        gib(m.storage_gib),
        if m.tags.is_empty() {
            "-".into()
        } else {
            m.tags.join(",")
        },
    ]
}

/// The progress of the running boot: `curtin: partitioning (40%)`, or `-`.
pub fn progress(m: &Machine) -> String {
    match (m.progress_message.is_empty(), m.progress_percent) {
        (true, 0) => "-".into(),
        (true, p) => format!("{p}%"),
        (false, 0) => m.progress_message.clone(),
        (false, p) => format!("{} ({p}%)", m.progress_message),
    }
}

/// One machine in full, as a field/value table: identity, lifecycle, ownership, hardware and inventory.
pub fn machine_record(m: &Machine) -> Table {
    let power = m.power.clone().unwrap_or_default();
    let params: BTreeMap<_, _> = power.params.into_iter().collect();
    let params = params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("\n");
    let previous = match m.previous_status {
        0 => "-".into(),
        s => status_name(s),
    };
    let deploy = match &m.deploy {
        Some(d) if !d.osystem.is_empty() || !d.distro_series.is_empty() => {
            let ud = if d.user_data.is_empty() {
                String::new()
            } else {
                format!(" (user data: {} bytes)", d.user_data.len())
            };
            format!("{}/{}{ud}", d.osystem, d.distro_series)
        }
        _ => "-".into(),
    };
    let mut rows = vec![
        ("system id", m.system_id.clone()),
        ("hostname", m.hostname.clone()),
        ("status", status_name(m.status)),
        ("status message", dash(&m.status_message)),
        ("previous status", previous),
        ("deadline", ts(&m.deadline)),
        ("progress", progress(m)),
        ("boot purpose", dash(&m.boot_purpose)),
        ("locked", if m.locked { "yes" } else { "no" }.into()),
        ("owner", dash(&m.owner)),
        ("consumer", dash(&m.consumer)),
        ("provider id", dash(&m.provider_id)),
        ("allocation request", dash(&m.allocation_request_id)),
        ("deploy", deploy),
        ("erase", erase_name(m.erase)),
        ("zone", m.zone.clone()),
        ("pool", dash(&m.pool)),
        ("tags", dash(&m.tags.join(", "))),
        ("arch", m.arch.clone()),
        ("cpus", count(m.cpu_count)),
        ("memory", mib(m.memory_mib)),
        ("storage", gib(m.storage_gib)),
        ("macs", m.macs.join("\n")),
        ("addresses", dash(&addresses(&m.addresses))),
        ("power driver", dash(&power.driver)),
        ("power params", dash(&params)),
        ("power state", dash(&m.power_state)),
        ("power error", dash(&m.power_error)),
        (
            "power checked",
            if m.power_checked_at.is_some() {
                ts(&m.power_checked_at)
            } else {
                "-".to_string()
            },
        ),
        ("rack", dash(&m.rack)),
        ("description", dash(&m.description)),
    ];
    if let Some(inv) = &m.inventory {
        rows.push(("cpu model", dash(&inv.cpu_model)));
        let fw = inv.firmware.clone().unwrap_or_default();
        let firmware = [fw.boot_mode, fw.vendor, fw.version]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        rows.push(("firmware", dash(&firmware)));
        let disks = inv
            .disks
            .iter()
            .map(|d| {
                let mut s = format!(
                    "{} {} {}",
                    d.name,
                    gib(d.size_gib),
                    if d.rotational { "rotary" } else { "ssd" }
                );
                for extra in [&d.model, &d.serial] {
                    if !extra.is_empty() {
                        s.push(' ');
                        s.push_str(extra);
                    }
                }
                if !d.tags.is_empty() {
                    s.push_str(&format!(" [{}]", d.tags.join(",")));
                }
                s
            })
            .collect::<Vec<_>>()
            .join("\n");
        rows.push(("disks", dash(&disks)));
        let nics = inv
            .nics
            .iter()
            .map(|n| {
                let speed = if n.speed_mbps == 0 {
                    "speed unknown".to_string()
                } else {
                    format!("{} Mb/s", n.speed_mbps)
                };
                let link = if n.link { "link up" } else { "link down" };
                format!("{} {} {speed} {link}", n.name, n.mac)
            })
            .collect::<Vec<_>>()
            .join("\n");
        rows.push(("nics", dash(&nics)));
        let dmi: BTreeMap<_, _> = inv.dmi.iter().collect();
        let dmi = dmi
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("\n");
        rows.push(("dmi", dash(&dmi)));
    } else {
        rows.push(("inventory", "- (not commissioned yet)".into()));
    }
    rows.extend([
        ("created", ts(&m.created_at)),
        ("updated", ts(&m.updated_at)),
        ("revision", m.revision.to_string()),
    ]);
    record(rows)
}

/// `--json` of a zone or a resource pool (the two have the same fields).
#[derive(Serialize)]
pub struct GroupJson<'a> {
    name: &'a str,
    description: &'a str,
    machine_count: u64,
    status_counts: BTreeMap<&'a str, u64>,
    created_at: Option<String>,
}

/// A zone as JSON.
pub fn zone_json(z: &Zone) -> GroupJson<'_> {
    GroupJson {
        name: &z.name,
        description: &z.description,
        machine_count: z.machine_count,
        status_counts: status_counts_json(&z.status_counts),
        created_at: ts_json(&z.created_at),
    }
}

/// A zone as a field/value table.
pub fn zone_record(z: &Zone) -> Table {
    record(vec![
        ("name", z.name.clone()),
        ("description", z.description.clone()),
        ("machines", z.machine_count.to_string()),
        ("statuses", status_counts(&z.status_counts)),
        ("created", ts(&z.created_at)),
    ])
}

/// A pool as JSON.
pub fn pool_json(p: &Pool) -> GroupJson<'_> {
    GroupJson {
        name: &p.name,
        description: &p.description,
        machine_count: p.machine_count,
        status_counts: status_counts_json(&p.status_counts),
        created_at: ts_json(&p.created_at),
    }
}

/// A pool as a field/value table.
pub fn pool_record(p: &Pool) -> Table {
    record(vec![
        ("name", p.name.clone()),
        ("description", p.description.clone()),
        ("machines", p.machine_count.to_string()),
        ("statuses", status_counts(&p.status_counts)),
        ("created", ts(&p.created_at)),
    ])
}

/// `--json` of a tag.
#[derive(Serialize)]
pub struct TagJson<'a> {
    name: &'a str,
    definition: &'a str,
    comment: &'a str,
    machine_count: u64,
    created_at: Option<String>,
}

/// A tag as JSON.
pub fn tag_json(t: &Tag) -> TagJson<'_> {
    TagJson {
        name: &t.name,
        definition: &t.definition,
        comment: &t.comment,
        machine_count: t.machine_count,
        created_at: ts_json(&t.created_at),
    }
}

/// A tag as a field/value table.
pub fn tag_record(t: &Tag) -> Table {
    record(vec![
        ("name", t.name.clone()),
        (
            "kind",
            if t.definition.is_empty() {
                "manual"
            } else {
                "defined"
            }
            .into(),
        ),
        ("definition", dash(&t.definition)),
        ("comment", dash(&t.comment)),
        ("machines", t.machine_count.to_string()),
        ("created", ts(&t.created_at)),
    ])
}

/// `--json` of a user.
#[derive(Serialize)]
pub struct UserJson<'a> {
    name: &'a str,
    role: String,
    machine_count: u64,
    token_count: u32,
    created_at: Option<String>,
}

/// A user as JSON.
pub fn user_json(u: &User) -> UserJson<'_> {
    UserJson {
        name: &u.name,
        role: user_role_name(u.role),
        machine_count: u.machine_count,
        token_count: u.token_count,
        created_at: ts_json(&u.created_at),
    }
}

/// A user as a field/value table.
pub fn user_record(u: &User) -> Table {
    record(vec![
        ("name", u.name.clone()),
        ("role", user_role_name(u.role)),
        ("machines", u.machine_count.to_string()),
        ("tokens", u.token_count.to_string()),
        ("created", ts(&u.created_at)),
    ])
}

/// `--json` of an API token (never its secret).
#[derive(Serialize)]
pub struct TokenJson<'a> {
    id: &'a str,
    user: &'a str,
    description: &'a str,
    created_at: Option<String>,
    expires_at: Option<String>,
}

/// An API token as JSON.
pub fn token_json(t: &Token) -> TokenJson<'_> {
    TokenJson {
        id: &t.id,
        user: &t.user,
        description: &t.description,
        created_at: ts_json(&t.created_at),
        expires_at: ts_json(&t.expires_at),
    }
}

/// `--json` of an event.
#[derive(Serialize)]
pub struct EventJson<'a> {
    revision: u64,
    seq: u32,
    time: Option<String>,
    actor: &'a str,
    kind: &'a str,
    level: String,
    system_id: &'a str,
    hostname: &'a str,
    zone: &'a str,
    owner: &'a str,
    from_status: Option<String>,
    to_status: Option<String>,
    message: &'a str,
}

/// An event as JSON.
pub fn event_json(e: &Event) -> EventJson<'_> {
    EventJson {
        revision: e.revision,
        seq: e.seq,
        time: ts_json(&e.time),
        actor: &e.actor,
        kind: &e.kind,
        level: level_name(e.level),
        system_id: &e.system_id,
        hostname: &e.hostname,
        zone: &e.zone,
        owner: &e.owner,
        from_status: optional_status(e.from_status),
        to_status: optional_status(e.to_status),
        message: &e.message,
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// How long ago `t` was, for people: `0.4s ago`, `12s ago`, `3m20s ago`; `-` when absent.
pub fn age(t: &Option<prost_types::Timestamp>, now_ms: i64) -> String {
    let Some(t) = t else {
        return "-".into();
    };
    let then = t.seconds.saturating_mul(1000) + i64::from(t.nanos / 1_000_000);
    let ms = now_ms.saturating_sub(then).max(0);
    if ms < 10_000 {
        format!("{:.1}s ago", ms as f64 / 1000.0)
    } else {
        format!("{} ago", duration((ms / 1000) as u64))
    }
}

/// `yes`, `no`, or `revoked` for a rack's connection.
pub fn rack_connected(r: &Rack) -> String {
    if r.revoked {
        "revoked".into()
    } else if r.connected {
        "yes".into()
    } else {
        "no".into()
    }
}

/// The region serving a rack's session: `region-2 (node 2)`, or `-`.
fn rack_region(r: &Rack) -> String {
    match (r.region_name.is_empty(), r.region_id) {
        (true, 0) => "-".into(),
        (true, id) => format!("node {id}"),
        (false, 0) => r.region_name.clone(),
        (false, id) => format!("{} (node {id})", r.region_name),
    }
}

/// `--json` of a rack controller.
#[derive(Serialize)]
pub struct RackJson<'a> {
    name: &'a str,
    zone: &'a str,
    registered_at: Option<String>,
    revoked: bool,
    connected: bool,
    region_id: u64,
    region_name: &'a str,
    last_heartbeat: Option<String>,
    version: &'a str,
    services: &'a [String],
    drivers: &'a [String],
    bmc_count: u64,
    pending_commands: u64,
}

/// A rack as JSON.
pub fn rack_json(r: &Rack) -> RackJson<'_> {
    RackJson {
        name: &r.name,
        zone: &r.zone,
        registered_at: ts_json(&r.registered_at),
        revoked: r.revoked,
        connected: r.connected,
        region_id: r.region_id,
        region_name: &r.region_name,
        last_heartbeat: ts_json(&r.last_heartbeat),
        version: &r.version,
        services: &r.services,
        drivers: &r.drivers,
        bmc_count: r.bmc_count,
        pending_commands: r.pending_commands,
    }
}

/// Column headers of [`rack_row`].
pub const RACK_HEADER: [&str; 8] = [
    "NAME",
    "ZONE",
    "CONNECTED",
    "REGION",
    "LAST HEARTBEAT",
    "VERSION",
    "BMCS",
    "PENDING",
];

/// One rack as a list row.
pub fn rack_row(r: &Rack, now_ms: i64) -> Vec<String> {
    vec![
        r.name.clone(),
        r.zone.clone(),
        rack_connected(r),
        rack_region(r),
        age(&r.last_heartbeat, now_ms),
        dash(&r.version),
        r.bmc_count.to_string(),
        r.pending_commands.to_string(),
    ]
}

/// One rack in full, as a field/value table.
pub fn rack_record(r: &Rack, now_ms: i64) -> Table {
    let heartbeat = match &r.last_heartbeat {
        Some(_) => format!(
            "{} ({})",
            ts(&r.last_heartbeat),
            age(&r.last_heartbeat, now_ms)
        ),
        None => "-".into(),
    };
    record(vec![
        ("name", r.name.clone()),
        ("zone", r.zone.clone()),
        ("connected", rack_connected(r)),
        ("region", rack_region(r)),
        ("last heartbeat", heartbeat),
        ("version", dash(&r.version)),
        ("services", dash(&r.services.join(", "))),
        ("drivers", dash(&r.drivers.join(", "))),
        ("bmcs", r.bmc_count.to_string()),
        ("pending commands", r.pending_commands.to_string()),
        ("registered", ts(&r.registered_at)),
    ])
}

/// `--json` of a power command.
#[derive(Serialize)]
pub struct PowerCommandJson<'a> {
    id: u64,
    system_id: &'a str,
    action: &'a str,
    state: &'a str,
    rack: &'a str,
    message: &'a str,
    error_kind: &'a str,
    power_state: &'a str,
    created_at: Option<String>,
    done_at: Option<String>,
}

/// A power command as JSON.
pub fn power_command_json(c: &PowerCommand) -> PowerCommandJson<'_> {
    PowerCommandJson {
        id: c.id,
        system_id: &c.system_id,
        action: &c.action,
        state: &c.state,
        rack: &c.rack,
        message: &c.message,
        error_kind: &c.error_kind,
        power_state: &c.power_state,
        created_at: ts_json(&c.created_at),
        done_at: ts_json(&c.done_at),
    }
}

/// A power command in one line: `power command 7: on abc123 via rack-1: done, power on`.
pub fn power_command_line(c: &PowerCommand) -> String {
    let mut line = format!("power command {}: {} {}", c.id, c.action, c.system_id);
    if !c.rack.is_empty() {
        line.push_str(&format!(" via {}", c.rack));
    }
    line.push_str(&format!(": {}", c.state));
    if !c.power_state.is_empty() && c.state != "pending" {
        line.push_str(&format!(", power {}", c.power_state));
    }
    if !c.error_kind.is_empty() {
        line.push_str(&format!(" ({})", c.error_kind));
    }
    if !c.message.is_empty() {
        line.push_str(&format!(" - {}", c.message));
    }
    line
}

/// `--json` of a region controller.
#[derive(Serialize)]
pub struct RegionJson<'a> {
    node_id: u64,
    name: &'a str,
    role: String,
    /// Whether this region is the leader the answering region knows of.
    leader: bool,
    voter: bool,
    term: u64,
    last_applied_index: u64,
    last_log_index: u64,
    snapshot_index: u64,
    healthy: bool,
    api_addr: &'a str,
    raft_addr: &'a str,
    error: &'a str,
    leader_id: u64,
}

/// A region as JSON; `leader_id` is the leader the answering region knows of.
pub fn region_json(r: &Region, leader_id: u64) -> RegionJson<'_> {
    RegionJson {
        node_id: r.node_id,
        name: &r.name,
        role: role_name(r.role),
        leader: r.node_id != 0 && r.node_id == leader_id,
        voter: r.voter,
        term: r.term,
        last_applied_index: r.last_applied_index,
        last_log_index: r.last_log_index,
        snapshot_index: r.snapshot_index,
        healthy: r.healthy,
        api_addr: &r.api_addr,
        raft_addr: &r.raft_addr,
        error: &r.error,
        leader_id: r.leader_id,
    }
}

/// `--json` of one of a machine's addresses.
#[derive(Serialize)]
pub struct AddressJson<'a> {
    ip: &'a str,
    subnet: &'a str,
    mac: &'a str,
    state: &'a str,
    expires: Option<String>,
}

/// A machine's address as JSON.
pub fn address_json(a: &MachineAddress) -> AddressJson<'_> {
    AddressJson {
        ip: &a.ip,
        subnet: &a.subnet,
        mac: &a.mac,
        state: &a.state,
        expires: ts_json(&a.expires),
    }
}

/// A machine's addresses, one a line: `10.20.0.100 on 10.20.0.0/24 (52:54:00:00:00:01, bound until
/// 2026-01-01T00:00:00Z)`.
pub fn addresses(list: &[MachineAddress]) -> String {
    list.iter()
        .map(|a| {
            format!(
                "{} on {} ({}, {} until {})",
                a.ip,
                a.subnet,
                a.mac,
                a.state,
                ts(&a.expires)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `--json` of a subnet.
#[derive(Serialize)]
pub struct SubnetJson<'a> {
    cidr: &'a str,
    gateway: &'a str,
    dns: &'a [String],
    domain: &'a str,
    dynamic: &'a [String],
    reserved: &'a [String],
    vlan: u32,
    mode: &'a str,
    primary: &'a str,
    secondary: &'a str,
    lease_time_s: u32,
    pxe_lease_time_s: u32,
    lease_count: u64,
}

/// A subnet as JSON.
pub fn subnet_json(s: &Subnet) -> SubnetJson<'_> {
    SubnetJson {
        cidr: &s.cidr,
        gateway: &s.gateway,
        dns: &s.dns,
        domain: &s.domain,
        dynamic: &s.dynamic,
        reserved: &s.reserved,
        vlan: s.vlan,
        mode: &s.mode,
        primary: &s.primary,
        secondary: &s.secondary,
        lease_time_s: s.lease_time_s,
        pxe_lease_time_s: s.pxe_lease_time_s,
        lease_count: s.lease_count,
    }
}

/// Column headers of [`subnet_row`].
pub const SUBNET_HEADER: [&str; 9] = [
    "CIDR",
    "MODE",
    "GATEWAY",
    "DYNAMIC",
    "VLAN",
    "PRIMARY",
    "SECONDARY",
    "LEASE TIME",
    "LEASES",
];

/// One subnet as a list row.
pub fn subnet_row(s: &Subnet) -> Vec<String> {
    vec![
        s.cidr.clone(),
        s.mode.clone(),
        dash(&s.gateway),
        dash(&s.dynamic.join(",")),
        s.vlan.to_string(),
        dash(&s.primary),
        dash(&s.secondary),
        format!(
            "{} (pxe {})",
            duration(u64::from(s.lease_time_s)),
            duration(u64::from(s.pxe_lease_time_s))
        ),
        s.lease_count.to_string(),
    ]
}

/// One subnet in full, as a field/value table.
pub fn subnet_record(s: &Subnet) -> Table {
    record(vec![
        ("cidr", s.cidr.clone()),
        ("mode", s.mode.clone()),
        ("gateway", dash(&s.gateway)),
        ("dns", dash(&s.dns.join(", "))),
        ("domain", dash(&s.domain)),
        ("dynamic", dash(&s.dynamic.join("\n"))),
        ("reserved", dash(&s.reserved.join("\n"))),
        ("vlan", s.vlan.to_string()),
        ("primary", dash(&s.primary)),
        ("secondary", dash(&s.secondary)),
        ("lease time", duration(u64::from(s.lease_time_s))),
        ("pxe lease time", duration(u64::from(s.pxe_lease_time_s))),
        ("leases", s.lease_count.to_string()),
    ])
}

/// `--json` of a lease.
#[derive(Serialize)]
pub struct LeaseJson<'a> {
    ip: &'a str,
    subnet: &'a str,
    mac: &'a str,
    state: &'a str,
    start: Option<String>,
    expires: Option<String>,
    hostname: &'a str,
    rack: &'a str,
    system_id: &'a str,
}

/// A lease as JSON.
pub fn lease_json(l: &Lease) -> LeaseJson<'_> {
    LeaseJson {
        ip: &l.ip,
        subnet: &l.subnet,
        mac: &l.mac,
        state: &l.state,
        start: ts_json(&l.start),
        expires: ts_json(&l.expires),
        hostname: &l.hostname,
        rack: &l.rack,
        system_id: &l.system_id,
    }
}

/// Column headers of [`lease_row`].
pub const LEASE_HEADER: [&str; 8] = [
    "IP", "SUBNET", "MAC", "STATE", "EXPIRES", "MACHINE", "HOSTNAME", "RACK",
];

/// One lease as a list row.
pub fn lease_row(l: &Lease) -> Vec<String> {
    vec![
        l.ip.clone(),
        l.subnet.clone(),
        l.mac.clone(),
        l.state.clone(),
        ts(&l.expires),
        dash(&l.system_id),
        dash(&l.hostname),
        dash(&l.rack),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
        // Round trip with the parser.
        assert_eq!(
            rfc3339(
                crate::parse::parse_rfc3339("2031-07-09T08:07:06Z")
                    .unwrap()
                    .0
            ),
            "2031-07-09T08:07:06Z"
        );
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
    fn human_units() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(1800), "30m");
        assert_eq!(duration(5400), "1h30m");
        assert_eq!(duration(90_061), "1d1h1m1s");
        assert_eq!(
            crate::parse::parse_duration(&duration(5400))
                .unwrap()
                .as_secs(),
            5400
        );
        assert_eq!(mib(0), "-");
        assert_eq!(mib(512), "512 MiB");
        assert_eq!(mib(65536), "64 GiB");
        assert_eq!(mib(1536), "1.5 GiB");
        assert_eq!(gib(2048), "2 TiB");
        assert_eq!(gib(900), "900 GiB");
        let counts: HashMap<String, u64> = [
            ("ready".to_string(), 3),
            ("new".to_string(), 1),
            ("deployed".to_string(), 0),
        ]
        .into_iter()
        .collect();
        assert_eq!(status_counts(&counts), "new=1 ready=3");
        assert_eq!(status_counts(&HashMap::new()), "-");
        assert_eq!(erase_name(EraseMode::Secure as i32), "secure");
        assert_eq!(level_name(EventLevel::Warning as i32), "warning");
        assert_eq!(user_role_name(Role::Admin as i32), "admin");
    }

    #[test]
    fn ages_and_power_lines() {
        let t = |s: i64| {
            Some(prost_types::Timestamp {
                seconds: s,
                nanos: 0,
            })
        };
        assert_eq!(age(&None, 0), "-");
        assert_eq!(age(&t(100), 100_400), "0.4s ago");
        assert_eq!(age(&t(100), 300_000), "3m20s ago");
        assert_eq!(age(&t(200), 100_000), "0.0s ago");
        let c = PowerCommand {
            id: 7,
            system_id: "abc123".into(),
            action: "on".into(),
            state: "done".into(),
            rack: "rack-1".into(),
            power_state: "on".into(),
            ..Default::default()
        };
        assert_eq!(
            power_command_line(&c),
            "power command 7: on abc123 via rack-1: done, power on"
        );
        let r = Rack {
            name: "r".into(),
            revoked: true,
            connected: true,
            ..Default::default()
        };
        assert_eq!(rack_connected(&r), "revoked");
        assert_eq!(rack_row(&r, 0)[3], "-");
    }

    fn at(seconds: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds,
            nanos: 250_000_000,
        })
    }

    /// A machine with every field set, so a pin covers every key of the JSON shape.
    fn full_machine() -> Machine {
        use ingot_proto::v1::{DeploySpec, Disk, Firmware, Nic, PowerParameters};
        Machine {
            system_id: "abc123".into(),
            hostname: "node-1".into(),
            arch: "amd64/generic".into(),
            zone: "room-a".into(),
            status: parse_status("deploying").unwrap(),
            macs: vec!["52:54:00:00:00:01".into(), "52:54:00:00:00:02".into()],
            power: Some(PowerParameters {
                driver: "ipmi".into(),
                params: [
                    ("username".to_string(), "admin".to_string()),
                    ("address".to_string(), "10.0.0.5".to_string()),
                ]
                .into_iter()
                .collect(),
            }),
            description: "rack 4, U12".into(),
            created_at: at(1_700_000_000),
            updated_at: at(1_700_000_060),
            revision: 42,
            pool: "gpu".into(),
            tags: vec!["fast".into(), "nvme".into()],
            owner: "alice".into(),
            consumer: "cp-0".into(),
            provider_id: "ingot:///room-a/abc123".into(),
            allocation_request_id: "req-1".into(),
            locked: true,
            status_message: "installing".into(),
            previous_status: parse_status("ready").unwrap(),
            deadline: at(1_700_001_800),
            cpu_count: 16,
            memory_mib: 65_536,
            storage_gib: 1_800,
            inventory: Some(Box::new(Inventory {
                cpu_count: 16,
                cpu_model: "EPYC".into(),
                memory_mib: 65_536,
                disks: vec![Disk {
                    name: "nvme0n1".into(),
                    size_gib: 900,
                    rotational: false,
                    model: "PM9A3".into(),
                    serial: "S1".into(),
                    tags: vec!["ssd".into()],
                }],
                nics: vec![Nic {
                    name: "eth0".into(),
                    mac: "52:54:00:00:00:01".into(),
                    speed_mbps: 25_000,
                    link: true,
                }],
                firmware: Some(Firmware {
                    boot_mode: "uefi".into(),
                    vendor: "AMI".into(),
                    version: "1.2".into(),
                }),
                dmi: [
                    ("sys_vendor".to_string(), "Acme".to_string()),
                    ("product_name".to_string(), "X1".to_string()),
                ]
                .into_iter()
                .collect(),
            })),
            deploy: Some(Box::new(DeploySpec {
                osystem: "ubuntu".into(),
                distro_series: "noble".into(),
                user_data: "#cloud-config".into(),
                ..Default::default()
            })),
            progress_message: "curtin: partitioning".into(),
            progress_percent: 40,
            boot_purpose: "deploying".into(),
            erase: EraseMode::Quick as i32,
            rack: "rack-1".into(),
            power_state: "on".into(),
            power_error: "".into(),
            power_checked_at: at(1_700_000_030),
            addresses: vec![MachineAddress {
                ip: "10.20.0.100".into(),
                subnet: "10.20.0.0/24".into(),
                mac: "52:54:00:00:00:01".into(),
                state: "bound".into(),
                expires: at(1_700_003_600),
            }],
        }
    }

    /// Compares a rendering with its pinned text, printing the actual text on a mismatch.
    fn pin(actual: &str, expected: &str) {
        let expected = expected.strip_suffix('\n').unwrap_or(expected);
        assert!(
            actual == expected,
            "pinned output changed; actual:\n{actual}"
        );
    }

    /// What `print_json` prints.
    fn pretty<T: Serialize>(v: &T) -> String {
        json_text(v).unwrap()
    }

    #[test]
    fn machine_json_is_pinned() {
        pin(&pretty(&machine_json(&full_machine())), MACHINE_FULL_JSON);
        pin(
            &pretty(&machine_json(&Machine::default())),
            MACHINE_EMPTY_JSON,
        );
    }

    #[test]
    fn machine_record_is_pinned() {
        pin(
            &render(&machine_record(&full_machine())),
            MACHINE_FULL_RECORD,
        );
        pin(
            &render(&machine_record(&Machine::default())),
            MACHINE_EMPTY_RECORD,
        );
    }

    #[test]
    fn resource_json_is_pinned() {
        let counts: HashMap<String, u64> = [("ready".to_string(), 3), ("new".to_string(), 1)]
            .into_iter()
            .collect();
        let zone = Zone {
            name: "room-a".into(),
            description: "first room".into(),
            machine_count: 4,
            created_at: at(1_700_000_000),
            status_counts: counts.clone(),
        };
        let pool = Pool {
            name: "gpu".into(),
            description: "".into(),
            machine_count: 4,
            created_at: None,
            status_counts: counts,
        };
        let tag = Tag {
            name: "fast".into(),
            definition: "cpu_count >= 16".into(),
            comment: "c".into(),
            machine_count: 2,
            created_at: at(1_700_000_000),
        };
        let user = User {
            name: "alice".into(),
            role: Role::Admin as i32,
            created_at: at(1_700_000_000),
            machine_count: 3,
            token_count: 1,
        };
        let token = Token {
            id: "t1".into(),
            user: "alice".into(),
            description: "ci".into(),
            created_at: at(1_700_000_000),
            expires_at: None,
        };
        let event = Event {
            revision: 9,
            seq: 1,
            time: at(1_700_000_000),
            actor: "alice".into(),
            kind: "deploy".into(),
            level: EventLevel::Warning as i32,
            system_id: "abc123".into(),
            hostname: "node-1".into(),
            zone: "room-a".into(),
            owner: "alice".into(),
            from_status: parse_status("ready").unwrap(),
            to_status: 0,
            message: "m".into(),
        };
        let rack = Rack {
            name: "rack-1".into(),
            zone: "room-a".into(),
            registered_at: at(1_700_000_000),
            revoked: false,
            connected: true,
            region_id: 2,
            region_name: "region-2".into(),
            last_heartbeat: None,
            version: "0.1.0".into(),
            services: vec!["power".into()],
            drivers: vec!["ipmi".into(), "sim".into()],
            bmc_count: 12,
            pending_commands: 1,
        };
        let command = PowerCommand {
            id: 7,
            system_id: "abc123".into(),
            action: "on".into(),
            state: "done".into(),
            rack: "rack-1".into(),
            message: "".into(),
            error_kind: "".into(),
            power_state: "on".into(),
            created_at: at(1_700_000_000),
            done_at: None,
        };
        let region = Region {
            node_id: 2,
            name: "region-2".into(),
            raft_addr: "127.0.0.1:7002".into(),
            api_addr: "https://127.0.0.1:8002".into(),
            role: RegionRole::Leader as i32,
            voter: true,
            term: 3,
            last_applied_index: 100,
            last_log_index: 101,
            healthy: true,
            error: "".into(),
            snapshot_index: 50,
            leader_id: 2,
        };
        let all = json!({
            "zone": zone_json(&zone),
            "pool": pool_json(&pool),
            "tag": tag_json(&tag),
            "user": user_json(&user),
            "token": token_json(&token),
            "event": event_json(&event),
            "rack": rack_json(&rack),
            "power_command": power_command_json(&command),
            "region": region_json(&region, 2),
            "follower": region_json(&Region::default(), 2),
        });
        pin(&pretty(&all), RESOURCES_JSON);
    }

    #[test]
    fn dates_are_pinned() {
        assert_eq!(ts(&None), "-");
        assert_eq!(ts(&at(1_700_000_000)), "2023-11-14T22:13:20Z");
        assert_eq!(json!(ts_json(&None)), Value::Null);
        assert_eq!(json!(ts_json(&at(0))), json!("1970-01-01T00:00:00Z"));
        assert_eq!(rfc3339(253_402_300_799), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(-62_135_596_800), "0001-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_709_164_800), "2024-02-29T00:00:00Z");
        assert_eq!(rfc3339(4_107_542_399), "2100-02-28T23:59:59Z");
        // No valid protobuf timestamp is outside 0001-9999; such a value still prints, and says so.
        assert_eq!(
            rfc3339(i64::MAX),
            format!("out of range ({}s since the epoch)", i64::MAX)
        );
    }

    /// Pinned renderings (`cli/src/testdata`), taken from the hand-written shapes before the JSON views
    /// were derived with serde: `--json` output must not change.
    const MACHINE_FULL_JSON: &str = include_str!("testdata/machine_full.json");
    const MACHINE_EMPTY_JSON: &str = include_str!("testdata/machine_empty.json");
    const MACHINE_FULL_RECORD: &str = include_str!("testdata/machine_full.txt");
    const MACHINE_EMPTY_RECORD: &str = include_str!("testdata/machine_empty.txt");
    const RESOURCES_JSON: &str = include_str!("testdata/resources.json");

    #[test]
    fn roles() {
        assert_eq!(role_name(1), "leader");
        assert_eq!(role_name(99), "unknown(99)");
    }
}
