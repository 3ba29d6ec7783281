//! Every conversion between generated protobuf types (`ingot.v1`, `ingot.rack.v1`) and `ingot-common`
//! domain types, in one place. Where the proto side has fields the domain type lacks (counts, liveness),
//! the caller passes them alongside.

use crate::rack::v1 as rack;
use crate::v1;
use ingot_common::constraints::{parse_storage, Constraints};
use ingot_common::model::{
    Disk, EraseMode, Event, EventLevel, Firmware, Inventory, Nic, Pool, PowerCommand, Rack, Role,
    Tag, User,
};
use ingot_common::net::{
    parse_cidr, parse_ipv4, parse_range, Ipv4Range, Lease, LeaseState, Subnet, SubnetMode,
    SubnetRole, DEFAULT_LEASE_TIME_S, DEFAULT_PXE_LEASE_TIME_S,
};
use ingot_common::{DomainError, Machine, MachineStatus, PowerParams, Zone};
use std::collections::BTreeMap;

/// Milliseconds since the epoch as a protobuf `Timestamp`.
pub fn timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// Domain status → proto enum.
pub fn status_to_proto(s: MachineStatus) -> v1::MachineStatus {
    use v1::MachineStatus as P;
    match s {
        MachineStatus::New => P::New,
        MachineStatus::Commissioning => P::Commissioning,
        MachineStatus::FailedCommissioning => P::FailedCommissioning,
        MachineStatus::Testing => P::Testing,
        MachineStatus::FailedTesting => P::FailedTesting,
        MachineStatus::Ready => P::Ready,
        MachineStatus::Allocated => P::Allocated,
        MachineStatus::Deploying => P::Deploying,
        MachineStatus::Deployed => P::Deployed,
        MachineStatus::FailedDeployment => P::FailedDeployment,
        MachineStatus::Releasing => P::Releasing,
        MachineStatus::FailedReleasing => P::FailedReleasing,
        MachineStatus::DiskErasing => P::DiskErasing,
        MachineStatus::FailedDiskErasing => P::FailedDiskErasing,
        MachineStatus::EnteringRescueMode => P::EnteringRescueMode,
        MachineStatus::FailedEnteringRescueMode => P::FailedEnteringRescueMode,
        MachineStatus::RescueMode => P::RescueMode,
        MachineStatus::ExitingRescueMode => P::ExitingRescueMode,
        MachineStatus::FailedExitingRescueMode => P::FailedExitingRescueMode,
        MachineStatus::Broken => P::Broken,
        MachineStatus::Missing => P::Missing,
        MachineStatus::Retired => P::Retired,
    }
}

/// Proto enum value → domain status; `None` for UNSPECIFIED or unknown numbers.
pub fn status_from_proto(v: i32) -> Option<MachineStatus> {
    let p = v1::MachineStatus::try_from(v).ok()?;
    MachineStatus::ALL
        .into_iter()
        .find(|s| status_to_proto(*s) == p)
}

/// Proto power parameters → domain (absent means "not configured").
pub fn power_from_proto(p: Option<v1::PowerParameters>) -> PowerParams {
    match p {
        Some(p) => PowerParams {
            driver: p.driver,
            params: p.params.into_iter().collect(),
        },
        None => PowerParams::default(),
    }
}

/// Domain machine → proto. Secret power parameters are redacted unless `include_secrets`; the inventory's
/// detail is included only when `full` (lists default to the basic view to stay cheap).
pub fn machine_to_proto(m: &Machine, include_secrets: bool, full: bool) -> v1::Machine {
    let power = if include_secrets {
        m.power.clone()
    } else if full {
        m.power.redacted()
    } else {
        ingot_common::PowerParams {
            driver: m.power.driver.clone(),
            params: Default::default(),
        }
    };
    let (progress_message, progress_percent) = match &m.progress {
        Some(p) => (p.message.clone(), p.percent),
        None => (String::new(), 0),
    };
    v1::Machine {
        system_id: m.system_id.clone(),
        hostname: m.hostname.clone(),
        arch: m.arch.clone(),
        zone: m.zone.clone(),
        status: status_to_proto(m.status) as i32,
        macs: m.macs.iter().map(|m| m.to_string()).collect(),
        power: Some(v1::PowerParameters {
            driver: power.driver,
            // The basic view (lists) carries the driver only: parameters are per-machine detail.
            params: if full {
                power.params.into_iter().collect()
            } else {
                Default::default()
            },
        }),
        description: m.description.clone(),
        created_at: Some(timestamp(m.created_ms)),
        updated_at: Some(timestamp(m.updated_ms)),
        revision: m.revision,
        pool: m.pool.clone(),
        tags: m.tags.iter().cloned().collect(),
        owner: m.owner.clone().unwrap_or_default(),
        consumer: m
            .allocation
            .as_ref()
            .map(|a| a.consumer.clone())
            .unwrap_or_default(),
        provider_id: if m.owner.is_some() {
            m.provider_id()
        } else {
            String::new()
        },
        allocation_request_id: m
            .allocation
            .as_ref()
            .map(|a| a.request_id.clone())
            .unwrap_or_default(),
        locked: m.locked,
        status_message: m.status_message.clone(),
        previous_status: m
            .previous_status
            .map(|s| status_to_proto(s) as i32)
            .unwrap_or(0),
        deadline: m.deadline_ms.map(timestamp),
        cpu_count: m.cpu_count(),
        memory_mib: m.memory_mib(),
        storage_gib: m.storage_gib(),
        inventory: if full {
            m.inventory
                .as_ref()
                .map(|i| Box::new(inventory_to_proto(i)))
        } else {
            None
        },
        deploy: m.deploy.as_ref().filter(|_| full).map(|d| {
            Box::new(v1::DeploySpec {
                osystem: d.osystem.clone(),
                distro_series: d.distro_series.clone(),
                user_data: if full {
                    d.user_data.clone()
                } else {
                    String::new()
                },
                ssh_keys: d.ssh_keys.clone(),
                disk: d.disk.clone(),
            })
        }),
        progress_message,
        progress_percent,
        boot_purpose: m
            .boot
            .as_ref()
            .map(|b| b.purpose.clone())
            .unwrap_or_default(),
        erase: erase_to_proto(m.erase) as i32,
        rack: m.rack.clone().unwrap_or_default(),
        power_state: m.power_state.clone(),
        power_error: m.power_error.clone(),
        power_checked_at: (m.power_checked_ms > 0).then(|| timestamp(m.power_checked_ms)),
        // Filled by GetMachine only, from the leases (see machine.proto).
        addresses: Vec::new(),
    }
}

/// Domain power command → proto.
pub fn power_command_to_proto(c: &PowerCommand) -> v1::PowerCommand {
    v1::PowerCommand {
        id: c.id,
        system_id: c.system_id.clone(),
        action: c.action.as_str().to_string(),
        state: c.state.as_str().to_string(),
        rack: c.rack.clone().unwrap_or_default(),
        message: c.message.clone(),
        error_kind: c.error_kind.clone(),
        power_state: c.power_state.clone(),
        created_at: Some(timestamp(c.created_ms)),
        done_at: c.done_ms.map(timestamp),
    }
}

/// A queued power command → the rack's wire form, with the machine's power driver and parameters
/// (secrets included: only racks receive them).
pub fn power_command_to_rack(c: &PowerCommand, power: &PowerParams) -> rack::PowerCommand {
    rack::PowerCommand {
        id: c.id,
        system_id: c.system_id.clone(),
        action: c.action.as_str().to_string(),
        driver: power.driver.clone(),
        params: power.params.clone().into_iter().collect(),
    }
}

/// A BMC a rack owns → the rack's wire form, for its power monitor (secrets included).
pub fn bmc_to_rack(system_id: &str, power: &PowerParams) -> rack::Bmc {
    rack::Bmc {
        system_id: system_id.to_string(),
        driver: power.driver.clone(),
        params: power.params.clone().into_iter().collect(),
    }
}

/// Domain rack → proto, with what only the caller knows: liveness, BMC and pending command counts, and
/// the serving region's name.
pub fn rack_to_proto(r: &Rack, connected: bool, bmc_count: u64, pending_commands: u64) -> v1::Rack {
    let s = r.session.as_ref();
    v1::Rack {
        name: r.name.clone(),
        zone: r.zone.clone(),
        registered_at: Some(timestamp(r.registered_ms)),
        revoked: r.revoked,
        connected,
        region_id: s.map(|s| s.region_id).unwrap_or(0),
        region_name: s.map(|s| s.region_name.clone()).unwrap_or_default(),
        last_heartbeat: s.map(|s| timestamp(s.last_heartbeat_ms)),
        version: s.map(|s| s.version.clone()).unwrap_or_default(),
        services: s.map(|s| s.services.clone()).unwrap_or_default(),
        drivers: s.map(|s| s.drivers.clone()).unwrap_or_default(),
        bmc_count,
        pending_commands,
    }
}

/// Domain erase mode → proto.
pub fn erase_to_proto(e: EraseMode) -> v1::EraseMode {
    match e {
        EraseMode::None => v1::EraseMode::None,
        EraseMode::Quick => v1::EraseMode::Quick,
        EraseMode::Secure => v1::EraseMode::Secure,
        EraseMode::Discard => v1::EraseMode::Discard,
    }
}

/// Proto erase mode → domain; `None` for unknown numbers.
pub fn erase_from_proto(v: i32) -> Option<EraseMode> {
    Some(match v1::EraseMode::try_from(v).ok()? {
        v1::EraseMode::None => EraseMode::None,
        v1::EraseMode::Quick => EraseMode::Quick,
        v1::EraseMode::Secure => EraseMode::Secure,
        v1::EraseMode::Discard => EraseMode::Discard,
    })
}

/// Domain inventory → proto.
pub fn inventory_to_proto(i: &Inventory) -> v1::Inventory {
    v1::Inventory {
        cpu_count: i.cpu_count,
        cpu_model: i.cpu_model.clone(),
        memory_mib: i.memory_mib,
        disks: i
            .disks
            .iter()
            .map(|d| v1::Disk {
                name: d.name.clone(),
                size_gib: d.size_gib,
                rotational: d.rotational,
                model: d.model.clone(),
                serial: d.serial.clone(),
                tags: d.tags.clone(),
            })
            .collect(),
        nics: i
            .nics
            .iter()
            .map(|n| v1::Nic {
                name: n.name.clone(),
                mac: n.mac.clone(),
                speed_mbps: n.speed_mbps,
                link: n.link,
            })
            .collect(),
        firmware: Some(v1::Firmware {
            boot_mode: i.firmware.boot_mode.clone(),
            vendor: i.firmware.vendor.clone(),
            version: i.firmware.version.clone(),
        }),
        dmi: i.dmi.clone().into_iter().collect(),
    }
}

/// Proto inventory → domain (not validated; see `ingot_common::validate::inventory`).
pub fn inventory_from_proto(i: v1::Inventory) -> Inventory {
    let fw = i.firmware.unwrap_or_default();
    Inventory {
        cpu_count: i.cpu_count,
        cpu_model: i.cpu_model,
        memory_mib: i.memory_mib,
        disks: i
            .disks
            .into_iter()
            .map(|d| Disk {
                name: d.name,
                size_gib: d.size_gib,
                rotational: d.rotational,
                model: d.model,
                serial: d.serial,
                tags: d.tags,
            })
            .collect(),
        nics: i
            .nics
            .into_iter()
            .map(|n| Nic {
                name: n.name,
                mac: n.mac,
                speed_mbps: n.speed_mbps,
                link: n.link,
            })
            .collect(),
        firmware: Firmware {
            boot_mode: fw.boot_mode,
            vendor: fw.vendor,
            version: fw.version,
        },
        dmi: i.dmi.into_iter().collect(),
    }
}

/// Per-status counts as the proto map (kebab-case status names).
pub fn status_counts_to_proto(
    counts: &BTreeMap<MachineStatus, u64>,
) -> std::collections::HashMap<String, u64> {
    counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(s, n)| (s.as_str().to_string(), *n))
        .collect()
}

/// Domain zone plus its machine counts → proto.
pub fn zone_to_proto(z: &Zone, counts: &BTreeMap<MachineStatus, u64>) -> v1::Zone {
    v1::Zone {
        name: z.name.clone(),
        description: z.description.clone(),
        machine_count: counts.values().sum(),
        created_at: Some(timestamp(z.created_ms)),
        status_counts: status_counts_to_proto(counts),
    }
}

/// Domain pool plus its machine counts → proto.
pub fn pool_to_proto(p: &Pool, counts: &BTreeMap<MachineStatus, u64>) -> v1::Pool {
    v1::Pool {
        name: p.name.clone(),
        description: p.description.clone(),
        machine_count: counts.values().sum(),
        created_at: Some(timestamp(p.created_ms)),
        status_counts: status_counts_to_proto(counts),
    }
}

/// Domain tag plus the number of machines carrying it → proto.
pub fn tag_to_proto(t: &Tag, machine_count: u64) -> v1::Tag {
    v1::Tag {
        name: t.name.clone(),
        definition: t.definition.clone(),
        comment: t.comment.clone(),
        machine_count,
        created_at: Some(timestamp(t.created_ms)),
    }
}

/// Domain role → proto.
pub fn role_to_proto(r: Role) -> v1::Role {
    match r {
        Role::Admin => v1::Role::Admin,
        Role::User => v1::Role::User,
    }
}

/// A request's role → domain. `ROLE_UNSPECIFIED` means a plain user, unless the role is `required`;
/// unknown numbers are refused. Errors name the field `role`.
pub fn role_from_proto(v: i32, required: bool) -> Result<Role, DomainError> {
    let unknown = || {
        DomainError::invalid(
            "role",
            format!("unknown role {v}: use ROLE_ADMIN or ROLE_USER"),
        )
    };
    match v1::Role::try_from(v).map_err(|_| unknown())? {
        v1::Role::Unspecified if required => Err(DomainError::invalid(
            "role",
            "required: ROLE_ADMIN or ROLE_USER",
        )),
        v1::Role::Unspecified => Ok(Role::User),
        v1::Role::Admin => Ok(Role::Admin),
        v1::Role::User => Ok(Role::User),
    }
}

/// Domain user → proto, with the counts only the caller knows: machines held and API tokens.
pub fn user_to_proto(u: &User, machine_count: u64, token_count: u32) -> v1::User {
    v1::User {
        name: u.name.clone(),
        role: role_to_proto(u.role) as i32,
        created_at: Some(timestamp(u.created_ms)),
        machine_count,
        token_count,
    }
}

/// A region's Raft role as its status reports it (`leader`, `follower`, ...) → proto; anything else,
/// and `shutdown`, is UNKNOWN.
pub fn region_role_to_proto(role: &str) -> v1::RegionRole {
    match role {
        "leader" => v1::RegionRole::Leader,
        "follower" => v1::RegionRole::Follower,
        "candidate" => v1::RegionRole::Candidate,
        "learner" => v1::RegionRole::Learner,
        _ => v1::RegionRole::Unknown,
    }
}

/// The effective deadline (seconds) of each in-progress status → proto settings (kebab-case names).
pub fn settings_to_proto(deadlines: &BTreeMap<MachineStatus, u64>) -> v1::Settings {
    v1::Settings {
        deadline_seconds: deadlines
            .iter()
            .map(|(s, v)| (s.as_str().to_string(), *v))
            .collect(),
    }
}

/// Proto allocation constraints → domain (absent: no constraint). The storage text is parsed here, so
/// errors name `constraints.storage`.
pub fn constraints_from_proto(c: Option<v1::Constraints>) -> Result<Constraints, DomainError> {
    let c = c.unwrap_or_default();
    Ok(Constraints {
        arch: c.arch,
        min_cpu_count: c.min_cpu_count,
        min_memory_mib: c.min_memory_mib,
        storage: if c.storage.trim().is_empty() {
            vec![]
        } else {
            parse_storage("constraints.storage", &c.storage)?
        },
        tags: c.tags,
        not_tags: c.not_tags,
        zones: c.zones,
        not_in_zones: c.not_in_zones,
        pools: c.pools,
        not_in_pools: c.not_in_pools,
        hostname: c.hostname,
        system_id: c.system_id,
        min_nic_count: c.min_nic_count,
        min_nic_speed_mbps: c.min_nic_speed_mbps,
    })
}

/// True when a requested machine view asks for the full machine (`default_full` for UNSPECIFIED);
/// unknown numbers are refused, naming the field `view`.
pub fn full_view_from_proto(v: i32, default_full: bool) -> Result<bool, DomainError> {
    match v1::MachineView::try_from(v) {
        Ok(v1::MachineView::Unspecified) => Ok(default_full),
        Ok(v1::MachineView::Basic) => Ok(false),
        Ok(v1::MachineView::Full) => Ok(true),
        Err(_) => Err(DomainError::invalid("view", format!("unknown view {v}"))),
    }
}

/// Domain event level → proto.
pub fn level_to_proto(l: EventLevel) -> v1::EventLevel {
    match l {
        EventLevel::Info => v1::EventLevel::Info,
        EventLevel::Warning => v1::EventLevel::Warning,
        EventLevel::Error => v1::EventLevel::Error,
    }
}

/// Proto event level → domain; UNSPECIFIED is `None` (no filter), unknown numbers an error.
pub fn level_from_proto(v: i32) -> Result<Option<EventLevel>, i32> {
    match v1::EventLevel::try_from(v).map_err(|_| v)? {
        v1::EventLevel::Unspecified => Ok(None),
        v1::EventLevel::Info => Ok(Some(EventLevel::Info)),
        v1::EventLevel::Warning => Ok(Some(EventLevel::Warning)),
        v1::EventLevel::Error => Ok(Some(EventLevel::Error)),
    }
}

/// Domain event → proto.
pub fn event_to_proto(e: &Event) -> v1::Event {
    v1::Event {
        revision: e.revision,
        seq: e.seq,
        time: Some(timestamp(e.ts_ms)),
        actor: e.actor.clone(),
        kind: e.kind.clone(),
        level: level_to_proto(e.level) as i32,
        system_id: e.system_id.clone(),
        hostname: e.hostname.clone(),
        zone: e.zone.clone(),
        owner: e.owner.clone(),
        from_status: e.from.map(|s| status_to_proto(s) as i32).unwrap_or(0),
        to_status: e.to.map(|s| status_to_proto(s) as i32).unwrap_or(0),
        message: e.message.clone(),
    }
}

/// A protobuf `Timestamp` as milliseconds since the epoch (negative times clamp to 0, times past
/// `u64::MAX` ms saturate: the value comes from the network).
pub fn timestamp_ms(t: &prost_types::Timestamp) -> u64 {
    (t.seconds.max(0) as u64)
        .saturating_mul(1000)
        .saturating_add((t.nanos.max(0) as u64) / 1_000_000)
}

/// Domain subnet → proto, with how many leases it holds.
pub fn subnet_to_proto(s: &Subnet, lease_count: u64) -> v1::Subnet {
    let text = |v: &[Ipv4Range]| v.iter().map(|r| r.to_string()).collect();
    v1::Subnet {
        cidr: s.cidr.to_string(),
        gateway: s.gateway.map(|g| g.to_string()).unwrap_or_default(),
        dns: s.dns.iter().map(|d| d.to_string()).collect(),
        domain: s.domain.clone(),
        dynamic: text(&s.dynamic),
        reserved: text(&s.reserved),
        vlan: u32::from(s.vlan),
        mode: s.mode.as_str().to_string(),
        primary: s.primary.clone().unwrap_or_default(),
        secondary: s.secondary.clone().unwrap_or_default(),
        lease_time_s: s.lease_time_s,
        pxe_lease_time_s: s.pxe_lease_time_s,
        lease_count,
    }
}

/// A list of DNS server addresses from request text (`field[i]` names a bad one; at most
/// [`ingot_common::net::MAX_DNS_SERVERS`], counted before anything is parsed).
pub fn dns_from_proto(field: &str, v: &[String]) -> Result<Vec<std::net::Ipv4Addr>, DomainError> {
    ingot_common::validate::entries(field, v.len(), ingot_common::net::MAX_DNS_SERVERS)?;
    v.iter()
        .enumerate()
        .map(|(i, d)| {
            let f = format!("{field}[{i}]");
            ingot_common::validate::bytes(&f, d, ingot_common::net::MAX_ADDRESS_TEXT)?;
            parse_ipv4(&f, d)
        })
        .collect()
}

/// A list of `FIRST-LAST` ranges from request text (`field[i]` names a bad one; at most
/// [`ingot_common::net::MAX_RANGES`], counted before anything is parsed).
pub fn ranges_from_proto(field: &str, v: &[String]) -> Result<Vec<Ipv4Range>, DomainError> {
    ingot_common::validate::entries(field, v.len(), ingot_common::net::MAX_RANGES)?;
    v.iter()
        .enumerate()
        .map(|(i, r)| parse_range(&format!("{field}[{i}]"), r))
        .collect()
}

/// An optional gateway from request text: empty is none.
pub fn gateway_from_proto(s: &str) -> Result<Option<std::net::Ipv4Addr>, DomainError> {
    if s.is_empty() {
        return Ok(None);
    }
    ingot_common::validate::bytes("gateway", s, ingot_common::net::MAX_ADDRESS_TEXT)?;
    parse_ipv4("gateway", s).map(Some)
}

/// An optional rack name from request text: empty is none (the name's rules are `Subnet::validate`'s).
pub fn rack_from_proto(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// A VLAN id from the wire's `uint32`, naming the field when it cannot be one.
pub fn vlan_from_proto(v: u32) -> Result<u16, DomainError> {
    u16::try_from(v).map_err(|_| {
        DomainError::invalid(
            "vlan",
            format!("{v} is not a VLAN id: use 0 (untagged) to 4094"),
        )
    })
}

/// Proto subnet (a create request) → domain subnet, each field parsed and named on failure; an empty
/// mode is managed and zero lease times take the defaults. The field rules are checked too
/// (`Subnet::validate`), so the result is a valid subnet.
pub fn subnet_from_proto(p: v1::Subnet) -> Result<Subnet, DomainError> {
    let default = |v: u32, d: u32| if v == 0 { d } else { v };
    let s = Subnet {
        cidr: parse_cidr("cidr", &p.cidr)?,
        gateway: gateway_from_proto(&p.gateway)?,
        dns: dns_from_proto("dns", &p.dns)?,
        domain: p.domain,
        dynamic: ranges_from_proto("dynamic", &p.dynamic)?,
        reserved: ranges_from_proto("reserved", &p.reserved)?,
        vlan: vlan_from_proto(p.vlan)?,
        mode: SubnetMode::parse("mode", &p.mode)?,
        primary: rack_from_proto(&p.primary),
        secondary: rack_from_proto(&p.secondary),
        lease_time_s: default(p.lease_time_s, DEFAULT_LEASE_TIME_S),
        pxe_lease_time_s: default(p.pxe_lease_time_s, DEFAULT_PXE_LEASE_TIME_S),
    };
    s.validate()?;
    Ok(s)
}

/// Domain lease → proto, with the system id of the machine holding its MAC (empty: none known).
pub fn lease_to_proto(l: &Lease, system_id: &str) -> v1::Lease {
    v1::Lease {
        ip: l.ip.to_string(),
        subnet: l.subnet.to_string(),
        mac: l.mac.to_string(),
        state: l.state.as_str().to_string(),
        start: Some(timestamp(l.start_ms)),
        expires: Some(timestamp(l.expires_ms)),
        hostname: l.hostname.clone(),
        rack: l.rack.clone(),
        system_id: system_id.to_string(),
    }
}

/// Domain lease → the address a machine shows.
pub fn lease_to_address(l: &Lease) -> v1::MachineAddress {
    v1::MachineAddress {
        ip: l.ip.to_string(),
        subnet: l.subnet.to_string(),
        mac: l.mac.to_string(),
        state: l.state.as_str().to_string(),
        expires: Some(timestamp(l.expires_ms)),
    }
}

/// A lease as the rack session carries it, both ways (`LeaseCommit`, `Leases`).
pub fn lease_to_rack(l: &Lease) -> rack::Lease {
    rack::Lease {
        ip: l.ip.to_string(),
        subnet: l.subnet.to_string(),
        mac: l.mac.to_string(),
        state: l.state.as_str().into(),
        start_ms: l.start_ms,
        expires_ms: l.expires_ms,
        hostname: l.hostname.clone(),
        rack: l.rack.clone(),
    }
}

/// A lease from the rack session, each field parsed and named on failure (`ip: ...`, `subnet: ...`,
/// `mac: ...`, `state: ...`). Sizes and meaning (hostname length, the address inside its subnet) are the
/// receiver's to check: the region refuses in apply, the rack skips.
pub fn lease_from_rack(l: &rack::Lease) -> Result<Lease, DomainError> {
    Ok(Lease {
        ip: parse_ipv4("ip", &l.ip)?,
        subnet: parse_cidr("subnet", &l.subnet)?,
        mac: l
            .mac
            .parse()
            .map_err(|e| DomainError::invalid("mac", format!("{e}")))?,
        state: l
            .state
            .parse::<LeaseState>()
            .map_err(|e| DomainError::invalid("state", e))?,
        start_ms: l.start_ms,
        expires_ms: l.expires_ms,
        hostname: l.hostname.clone(),
        rack: l.rack.clone(),
    })
}

/// A subnet as a rack is told to serve it (`BootConfig.subnets`): its settings, the rack's role and
/// whether it answers now. The racks' names stay in the region.
pub fn subnet_config_to_rack(n: &Subnet, role: SubnetRole, active: bool) -> rack::SubnetConfig {
    rack::SubnetConfig {
        cidr: n.cidr.to_string(),
        gateway: n.gateway.map(|g| g.to_string()).unwrap_or_default(),
        dns: n.dns.iter().map(|d| d.to_string()).collect(),
        domain: n.domain.clone(),
        dynamic: n.dynamic.iter().map(|r| r.to_string()).collect(),
        reserved: n.reserved.iter().map(|r| r.to_string()).collect(),
        vlan: u32::from(n.vlan),
        mode: n.mode.as_str().into(),
        lease_time_s: n.lease_time_s,
        pxe_lease_time_s: n.pxe_lease_time_s,
        role: role.as_str().into(),
        active,
    }
}

/// The rack's side of [`subnet_config_to_rack`]: settings, role and `active`, each field parsed with the
/// same parsers as a create request and named on failure; zero lease times take the defaults.
pub fn subnet_config_from_rack(
    c: &rack::SubnetConfig,
) -> Result<(Subnet, SubnetRole, bool), DomainError> {
    let default = |v: u32, d: u32| if v == 0 { d } else { v };
    let cidr = parse_cidr("cidr", &c.cidr)?;
    let vlan = vlan_from_proto(c.vlan)?;
    if vlan > 4094 {
        return Err(DomainError::invalid(
            "vlan",
            format!("{vlan} is not a VLAN id: use 0 (untagged) to 4094"),
        ));
    }
    let subnet = Subnet {
        cidr,
        gateway: gateway_from_proto(c.gateway.trim())?,
        dns: dns_from_proto("dns", &c.dns)?,
        domain: c.domain.clone(),
        dynamic: ranges_from_proto("dynamic", &c.dynamic)?,
        reserved: ranges_from_proto("reserved", &c.reserved)?,
        vlan,
        mode: SubnetMode::parse("mode", &c.mode)?,
        primary: None,
        secondary: None,
        lease_time_s: default(c.lease_time_s, DEFAULT_LEASE_TIME_S),
        pxe_lease_time_s: default(c.pxe_lease_time_s, DEFAULT_PXE_LEASE_TIME_S),
    };
    let role: SubnetRole = c
        .role
        .parse()
        .map_err(|e| DomainError::invalid("role", e))?;
    Ok((subnet, role, c.active))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_ms_saturates_at_the_limits() {
        // i64::MAX seconds (a ListEvents `since` from the API fuzzer) overflowed and panicked a debug build.
        let t = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
        assert_eq!(timestamp_ms(&t(i64::MAX, i32::MAX)), u64::MAX);
        assert_eq!(timestamp_ms(&t(i64::MIN, i32::MIN)), 0);
        assert_eq!(timestamp_ms(&t(1, 500_000_000)), 1_500);
    }

    #[test]
    fn every_status_roundtrips() {
        for s in MachineStatus::ALL {
            assert_eq!(status_from_proto(status_to_proto(s) as i32), Some(s));
        }
        assert_eq!(status_from_proto(0), None);
        assert_eq!(status_from_proto(999), None);
    }

    #[test]
    fn a_create_request_becomes_a_valid_subnet_or_names_its_field() {
        let p = v1::Subnet {
            cidr: "10.20.0.0/24".into(),
            gateway: "10.20.0.1".into(),
            dns: vec!["10.20.0.1".into()],
            domain: "lab.example".into(),
            dynamic: vec!["10.20.0.100-10.20.0.199".into()],
            reserved: vec!["10.20.0.2-10.20.0.9".into()],
            vlan: 7,
            mode: String::new(),
            primary: "rack-1".into(),
            secondary: String::new(),
            lease_time_s: 0,
            pxe_lease_time_s: 0,
            lease_count: 0,
        };
        let s = subnet_from_proto(p.clone()).expect("valid");
        assert_eq!(s.mode, SubnetMode::Managed);
        assert_eq!(s.lease_time_s, DEFAULT_LEASE_TIME_S);
        assert_eq!(s.secondary, None);
        let back = subnet_to_proto(&s, 3);
        assert_eq!(back.lease_count, 3);
        assert_eq!(
            subnet_from_proto(back).expect("round trip"),
            s,
            "what Get shows creates the same subnet"
        );
        let field = |f: fn(&mut v1::Subnet)| {
            let mut q = p.clone();
            f(&mut q);
            subnet_from_proto(q).expect_err("refused").field
        };
        assert_eq!(
            field(|q| q.cidr = "10.20.0.1/24".into()).as_deref(),
            Some("cidr")
        );
        assert_eq!(
            field(|q| q.gateway = "x".into()).as_deref(),
            Some("gateway")
        );
        assert_eq!(
            field(|q| q.dns.push("1.2.3".into())).as_deref(),
            Some("dns[1]")
        );
        assert_eq!(
            field(|q| q.dns = vec!["1.1.1.1".into(); 100]).as_deref(),
            Some("dns")
        );
        assert_eq!(
            field(|q| q.dynamic[0] = "a-b".into()).as_deref(),
            Some("dynamic[0]")
        );
        assert_eq!(
            field(|q| q.reserved.push("10.20.0.150".into())).as_deref(),
            Some("reserved[1]")
        );
        assert_eq!(field(|q| q.vlan = 70_000).as_deref(), Some("vlan"));
        assert_eq!(field(|q| q.vlan = 4095).as_deref(), Some("vlan"));
        assert_eq!(field(|q| q.mode = "dhcp".into()).as_deref(), Some("mode"));
        assert_eq!(
            field(|q| q.lease_time_s = 5).as_deref(),
            Some("lease_time_s")
        );
    }
}
