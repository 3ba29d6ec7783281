//! The API fuzzer: every RPC of every service in `proto/` — the client API (`ingot.v1`, agent service
//! included), the rack session (`ingot.rack.v1`) and the region-to-region Raft service (`ingot.raft.v1`) —
//! called with random and boundary field values (empty, 64 KiB, 1 MiB and 8 MiB strings, NUL and control
//! characters, odd Unicode, u64/i64/u32 limits, unknown enum numbers, huge repeated fields, malformed
//! timestamps, garbage and deeply nested JSON in bytes fields) and with malformed protobuf (truncated
//! varints, invalid UTF-8, deep nesting of messages and groups), by every identity: admin, user, agent
//! (a machine's valid boot token), a forged bearer token, a region certificate, a rack certificate and no
//! client certificate at all.
//!
//! Checked: no region or rack process panics or dies; every answer is a status with a non-empty, bounded
//! message and never `UNKNOWN` (nor `INTERNAL`, except tonic's own "failed to decode Protobuf message" for
//! malformed bytes); no call hangs; forged identities are never served; and afterwards an ordinary write
//! (a zone and a machine) succeeds on every region.
//!
//! The RPC list comes from the `.proto` files themselves (and is checked against the generated service
//! names and the public descriptor set), so a new RPC without a generator here fails the test.
//!
//! Bounded: a coverage pass (every RPC × every identity, then every RPC with malformed bytes), then random
//! calls until `INGOT_FUZZ_SECS` (default 20) or `INGOT_FUZZ_CALLS` (default 4000) run out. The seed is
//! printed; `INGOT_FUZZ_SEED=<seed>` replays the same calls (the values; the cluster's timing may differ),
//! `INGOT_FUZZ_ONLY=<substring of /package.Service/Method>` restricts the fuzz to matching RPCs, and
//! `INGOT_FUZZ_CALL=<n>` (with the seed) makes only call number n of a finding ("call #n").

use ingot_proto::rack::v1 as rk;
use ingot_proto::raft::v1 as rf;
use ingot_proto::v1::*;
use ingot_tests::fuzz::{
    oversized_in_data_dir, panics_in_log, proto_rpcs, Gen, Kind, Known, RawCodec, Rpc,
};
use ingot_tests::{
    by_id, cluster_tls, commission_to_ready, error_chain, machine, rack_cert, sim_machine,
    small_inventory, user_token, TestCluster,
};
use prost::Message as _;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

/// Longest a call may take before it counts as hanging.
const CALL_TIMEOUT: Duration = Duration::from_secs(12);
/// The deadline sent with every call (the server should answer DEADLINE_EXCEEDED by then).
const GRPC_DEADLINE: Duration = Duration::from_secs(8);
/// How long a stream (Watch, a rack session) is read before the fuzzer hangs up.
const STREAM_READ: Duration = Duration::from_millis(600);
/// Largest response the fuzzer accepts.
const MAX_DECODE: usize = 64 * 1024 * 1024;
/// A status message longer than this echoes input back (and strains every proxy's header limits).
const MAX_STATUS_MESSAGE: usize = 8 * 1024;
/// How long after the fuzz an ordinary write must succeed on every region (generous: CI machines are
/// shared, and a debug build elects slowly under load).
const AFTER_WRITE_WITHIN: Duration = Duration::from_secs(30);
/// Concurrent callers.
const WORKERS: u64 = 4;

/// Who makes a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    /// The bootstrap admin's bearer token.
    Admin,
    /// A ROLE_USER user's bearer token.
    User,
    /// No bearer token; agent RPCs carry a machine's current boot token.
    Agent,
    /// A forged bearer token.
    Forged,
    /// A member region's certificate, on the cluster listener.
    Region,
    /// A registered rack's certificate, on the cluster listener.
    Rack,
    /// TLS without a client certificate, on the cluster listener.
    NoCert,
}

const API_IDENTITIES: [Who; 4] = [Who::Admin, Who::User, Who::Agent, Who::Forged];
const CLUSTER_IDENTITIES: [Who; 3] = [Who::Region, Who::Rack, Who::NoCert];

/// True for services served on the cluster (mutual-TLS) listener.
fn on_cluster_listener(rpc: &Rpc) -> bool {
    rpc.service.starts_with("ingot.raft.") || rpc.service.starts_with("ingot.rack.")
}

/// One planned call: everything needed to make (and replay) it.
#[derive(Clone, Debug)]
struct Call {
    index: u64,
    rpc: Rpc,
    who: Who,
    /// Send malformed protobuf instead of a generated message.
    raw: bool,
    /// Region index (1-based).
    region: usize,
    seed: u64,
}

/// What came back.
enum Outcome {
    /// A response (or a stream that stayed healthy while read).
    Ok,
    /// A status the server sent.
    Status(tonic::Status),
    /// The connection failed (no status from the server): the text of the transport error.
    Transport(String),
    /// No answer within [`CALL_TIMEOUT`].
    Hung,
    /// The fuzzer has no generator for this RPC.
    NotCovered,
}

impl Outcome {
    fn of<T>(r: Result<T, tonic::Status>) -> Outcome {
        match r {
            Ok(_) => Outcome::Ok,
            Err(s) => Outcome::from_status(s),
        }
    }

    /// A status the client library made up from a transport error carries that error as its source.
    fn from_status(s: tonic::Status) -> Outcome {
        match std::error::Error::source(&s) {
            Some(src) => Outcome::Transport(format!("{:?}: {}", s.code(), error_chain(src))),
            None => Outcome::Status(s),
        }
    }
}

/// A problem the fuzzer found.
#[derive(Clone, Debug)]
struct Finding {
    rpc: String,
    who: Who,
    raw: bool,
    index: u64,
    values: String,
    what: String,
}

/// Values the fuzzer must not send because they are legitimately destructive to its own fixture (an
/// admin removing a member region, demoting the admin, revoking the fixture's tokens or rack, the leader
/// retiring a region): those would make the "still writable" check fail without a bug.
#[derive(Default)]
struct Protected {
    users: Vec<String>,
    token_ids: Vec<String>,
    racks: Vec<String>,
    node_ids: Vec<u64>,
}

/// Shared state of the fuzz.
struct Ctx {
    /// Per region (index 0 unused): the API listener, TLS without credentials. Every call gets a
    /// connection of its own, so a call that breaks its connection cannot be blamed on another.
    api: Vec<Endpoint>,
    /// Per region (index 0 unused): the cluster listener with a region certificate, a rack certificate,
    /// and none.
    as_region: Vec<Endpoint>,
    as_rack: Vec<Endpoint>,
    no_cert: Vec<Endpoint>,
    /// Node id of each region (index 0 unused).
    node_ids: Vec<u64>,
    admin_token: String,
    user_token: String,
    admin: ingot_client::Clients,
    known: Arc<Known>,
    /// Machines kept in commissioning for the agent identity (not in `known`: nothing else touches them).
    agent_machines: Vec<String>,
    protected: Protected,
    /// Absolute directory for the simulated BMCs' state files (the only `state_dir` the fuzz sends that
    /// is a real path, so no file is written outside the test directory).
    sim_dir: String,
    findings: Mutex<Vec<Finding>>,
    counts: Mutex<BTreeMap<String, usize>>,
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// A 64-bit mix (splitmix64) so consecutive call indexes get unrelated seeds.
fn mix(seed: u64, i: u64) -> u64 {
    let mut z = seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Ctx {
    /// A new connection (made at the first request) for `call`.
    fn channel(&self, call: &Call) -> Channel {
        match call.who {
            Who::Region => &self.as_region[call.region],
            Who::Rack => &self.as_rack[call.region],
            Who::NoCert => &self.no_cert[call.region],
            _ => &self.api[call.region],
        }
        .connect_lazy()
    }

    /// A bearer token a forger might try.
    fn forged_token(&self, g: &mut Gen) -> String {
        match g.below(6) {
            0 => String::new(),
            1 => format!("ingot_{:032x}", g.below(usize::MAX) as u128),
            2 => {
                // The admin token with its last character changed.
                let mut t = self.admin_token.clone();
                let last = t.pop().unwrap_or('x');
                t.push(if last == 'a' { 'b' } else { 'a' });
                t
            }
            3 => "x".repeat(7 * 1024),
            4 => format!("{} {}", self.admin_token, self.admin_token),
            _ => "ingot_'; DROP TABLE tokens; --".to_string(),
        }
    }

    /// `msg` as a request from `call.who`, with the deadline set.
    fn request<T>(&self, g: &mut Gen, who: Who, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(GRPC_DEADLINE);
        let token = match who {
            Who::Admin => Some(self.admin_token.clone()),
            Who::User => Some(self.user_token.clone()),
            Who::Forged => Some(self.forged_token(g)),
            _ => None,
        };
        if let Some(Ok(v)) = token.map(|t| MetadataValue::try_from(format!("Bearer {t}"))) {
            r.metadata_mut().insert("authorization", v);
        }
        r
    }

    /// (system id, boot token) for an agent call: for [`Who::Agent`] a fixture machine's current boot
    /// token (commissioning it again if its boot ended), otherwise random values.
    async fn agent_identity(&self, g: &mut Gen, who: Who) -> (String, String) {
        if who != Who::Agent {
            return (
                g.string("system_id", Kind::SystemId),
                g.string("boot_token", Kind::Text),
            );
        }
        let id = g.pick(&self.agent_machines).clone();
        let mut token = String::new();
        for _ in 0..2 {
            let creds = self
                .admin
                .machines()
                .get_boot_credentials(GetBootCredentialsRequest {
                    machine: Some(by_id(&id)),
                })
                .await;
            if let Ok(c) = creds {
                let c = c.into_inner();
                if !c.token.is_empty() && !c.purpose.is_empty() {
                    token = c.token;
                    break;
                }
            }
            // Its boot ended (a report finished it, or a deadline): boot it again.
            let _ = self
                .admin
                .machines()
                .commission(CommissionRequest {
                    machine: Some(by_id(&id)),
                    ..Default::default()
                })
                .await;
        }
        g.trace.push(("boot_token".into(), "valid"));
        if g.chance(0.15) {
            // A valid token presented for another machine.
            (g.string("system_id", Kind::SystemId), token)
        } else {
            (id, token)
        }
    }

    fn finding(&self, call: &Call, g: &Gen, what: String) {
        let f = Finding {
            rpc: call.rpc.path(),
            who: call.who,
            raw: call.raw,
            index: call.index,
            values: g.summary(),
            what,
        };
        eprintln!(
            "FINDING #{} {} as {:?}{}: {} [{}]",
            f.index,
            f.rpc,
            f.who,
            if f.raw { " (malformed bytes)" } else { "" },
            f.what,
            f.values
        );
        self.findings.lock().unwrap().push(f);
    }

    fn count(&self, key: String) {
        *self.counts.lock().unwrap().entry(key).or_default() += 1;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Message generators.
// ---------------------------------------------------------------------------------------------------------

fn machine_ref(g: &mut Gen) -> Option<MachineRef> {
    use machine_ref::Key;
    let key = match g.below(10) {
        0 => return None,
        1 => None,
        2..=6 => Some(Key::SystemId(g.string("machine.system_id", Kind::SystemId))),
        7 => Some(Key::Hostname(g.string("machine.hostname", Kind::Hostname))),
        8 => Some(Key::Consumer(g.string("machine.consumer", Kind::Consumer))),
        _ => Some(Key::ProviderId(g.string("machine.provider_id", Kind::Text))),
    };
    Some(MachineRef { key })
}

fn consistency(g: &mut Gen) -> i32 {
    g.enumeration("consistency", 2)
}

fn filter(g: &mut Gen) -> Option<MachineFilter> {
    if g.chance(0.3) {
        return None;
    }
    Some(MachineFilter {
        zone: g.string("filter.zone", Kind::Zone),
        status: g.enumeration("filter.status", 23),
        arch: g.string("filter.arch", Kind::Text),
        hostname_prefix: g.string("filter.hostname_prefix", Kind::Hostname),
        mac: g.string("filter.mac", Kind::Mac),
        pool: g.string("filter.pool", Kind::Pool),
        owner: g.string("filter.owner", Kind::User),
        tags: g.list("filter.tags", |g| g.string("filter.tags[]", Kind::Tag)),
        consumer: g.string("filter.consumer", Kind::Consumer),
    })
}

/// A loopback-only address or URL for a BMC parameter (the rack will try to reach it: it must never be
/// a name to resolve or a host off this machine), or a value the region should refuse.
fn bmc_address(g: &mut Gen, key: &str) -> String {
    let field = format!("power.params.{key}");
    match g.below(6) {
        0 => "127.0.0.1:9".into(),
        1 => "[::1]:9".into(),
        2 => format!(
            "http://127.0.0.1:9/{}",
            g.string(&field, Kind::Text)
                .replace(['/', '@', '#', '?'], "_")
        ),
        3 => format!(
            "https://127.0.0.1:9/?q={}",
            g.string(&field, Kind::Text).replace(['/', '@', '#'], "_")
        ),
        4 => String::new(),
        _ => format!("bad host/{}", g.string(&field, Kind::Text)),
    }
}

fn power_params(g: &mut Gen, ctx: &Ctx) -> Option<PowerParameters> {
    if g.chance(0.3) {
        return None;
    }
    let driver = g.string("power.driver", Kind::Driver);
    let keys = [
        "address",
        "username",
        "password",
        "state_dir",
        "delay_ms",
        "fail",
        "on_url",
        "off_url",
        "query_url",
        "cipher_suite",
        "",
    ];
    let params = g.list("power.params", |g| {
        let key = if g.chance(0.8) {
            g.pick(&keys).to_string()
        } else {
            g.string("power.params.key", Kind::Text)
        };
        let value = if key == "address"
            || key.ends_with("_url")
            || key.contains('.')
            || key.contains(':')
        {
            bmc_address(g, &key)
        } else if key == "state_dir" {
            // Only the test's own directory (or values the region must refuse): the file driver writes
            // there.
            if g.chance(0.7) {
                ctx.sim_dir.clone()
            } else {
                format!(
                    "{}/{}",
                    ctx.sim_dir,
                    g.string("power.params.state_dir", Kind::Text)
                        .replace(['/', '.'], "_")
                )
            }
        } else if key == "delay_ms" {
            g.u64("power.params.delay_ms").min(2_000).to_string()
        } else {
            g.string(&format!("power.params.{key}"), Kind::Text)
        };
        (key, value)
    });
    // A random key may still hold an address: keep every value loopback-only by construction above, and
    // drop values that look like a host name when the key is unknown (they would be ignored anyway).
    let params = params
        .into_iter()
        .filter(|(k, v)| keys.contains(&k.as_str()) || !(v.contains('.') && v.contains("://")))
        .collect();
    Some(PowerParameters { driver, params })
}

fn inventory(g: &mut Gen) -> Option<Inventory> {
    if g.chance(0.1) {
        return None;
    }
    Some(Inventory {
        cpu_count: g.u32("inventory.cpu_count"),
        cpu_model: g.string("inventory.cpu_model", Kind::Text),
        memory_mib: g.u64("inventory.memory_mib"),
        disks: g.list("inventory.disks", |g| Disk {
            name: g.string("disk.name", Kind::Text),
            size_gib: g.u64("disk.size_gib"),
            rotational: g.bool(),
            model: g.string("disk.model", Kind::Text),
            serial: g.string("disk.serial", Kind::Text),
            tags: g.list("disk.tags", |g| g.string("disk.tags[]", Kind::Text)),
        }),
        nics: g.list("inventory.nics", |g| Nic {
            name: g.string("nic.name", Kind::Text),
            mac: g.string("nic.mac", Kind::Mac),
            speed_mbps: g.u64("nic.speed_mbps"),
            link: g.bool(),
        }),
        firmware: if g.chance(0.2) {
            None
        } else {
            Some(Firmware {
                boot_mode: g.string("firmware.boot_mode", Kind::Text),
                vendor: g.string("firmware.vendor", Kind::Text),
                version: g.string("firmware.version", Kind::Text),
            })
        },
        dmi: g
            .list("inventory.dmi", |g| {
                (
                    g.string("dmi.key", Kind::Text),
                    g.string("dmi.value", Kind::Text),
                )
            })
            .into_iter()
            .collect(),
    })
}

fn constraints(g: &mut Gen) -> Option<Constraints> {
    if g.chance(0.2) {
        return None;
    }
    Some(Constraints {
        arch: g.string("constraints.arch", Kind::Text),
        min_cpu_count: g.u32("constraints.min_cpu_count"),
        min_memory_mib: g.u64("constraints.min_memory_mib"),
        storage: g.string("constraints.storage", Kind::Text),
        tags: g.list("constraints.tags", |g| {
            g.string("constraints.tags[]", Kind::Tag)
        }),
        not_tags: g.list("constraints.not_tags", |g| {
            g.string("constraints.not_tags[]", Kind::Tag)
        }),
        zones: g.list("constraints.zones", |g| {
            g.string("constraints.zones[]", Kind::Zone)
        }),
        not_in_zones: g.list("constraints.not_in_zones", |g| {
            g.string("constraints.not_in_zones[]", Kind::Zone)
        }),
        pools: g.list("constraints.pools", |g| {
            g.string("constraints.pools[]", Kind::Pool)
        }),
        not_in_pools: g.list("constraints.not_in_pools", |g| {
            g.string("constraints.not_in_pools[]", Kind::Pool)
        }),
        hostname: g.string("constraints.hostname", Kind::Hostname),
        system_id: g.string("constraints.system_id", Kind::SystemId),
        min_nic_count: g.u32("constraints.min_nic_count"),
        min_nic_speed_mbps: g.u64("constraints.min_nic_speed_mbps"),
    })
}

fn action(g: &mut Gen) -> MachineActionRequest {
    MachineActionRequest {
        machine: machine_ref(g),
        comment: g.string("comment", Kind::Text),
        expected_revision: g.u64("expected_revision"),
    }
}

/// A subnet's fields: network texts at and past the edges, valid modes half of the time, known racks.
fn subnet_message(g: &mut Gen) -> Subnet {
    Subnet {
        cidr: g.string("cidr", Kind::Net),
        gateway: g.string("gateway", Kind::Net),
        dns: g.list("dns", |g| g.string("dns[]", Kind::Net)),
        domain: g.string("domain", Kind::Text),
        dynamic: g.list("dynamic", |g| g.string("dynamic[]", Kind::Net)),
        reserved: g.list("reserved", |g| g.string("reserved[]", Kind::Net)),
        vlan: g.u32("vlan"),
        mode: subnet_mode(g),
        primary: g.string("primary", Kind::Rack),
        secondary: g.string("secondary", Kind::Rack),
        lease_time_s: g.u32("lease_time_s"),
        pxe_lease_time_s: g.u32("pxe_lease_time_s"),
        lease_count: g.u64("lease_count"),
    }
}

fn subnet_mode(g: &mut Gen) -> String {
    if g.chance(0.5) {
        g.pick(&["managed", "proxy", "off", ""]).to_string()
    } else {
        g.string("mode", Kind::Text)
    }
}

/// An update's list: absent, or a list of network texts.
fn opt_net_list(g: &mut Gen, field: &str) -> Option<TextList> {
    if g.chance(0.4) {
        None
    } else {
        Some(TextList {
            values: g.list(field, |g| g.string(field, Kind::Net)),
        })
    }
}

fn opt_u32(g: &mut Gen, field: &str) -> Option<u32> {
    if g.chance(0.4) {
        None
    } else {
        Some(g.u32(field))
    }
}

fn opt_string(g: &mut Gen, field: &str, kind: Kind) -> Option<String> {
    if g.chance(0.3) {
        None
    } else {
        Some(g.string(field, kind))
    }
}

fn user_name(g: &mut Gen, ctx: &Ctx, field: &str) -> String {
    let name = g.string(field, Kind::User);
    if ctx.protected.users.contains(&name) {
        "fz-other".to_string()
    } else {
        name
    }
}

fn settings_map(g: &mut Gen) -> std::collections::HashMap<String, u64> {
    g.list("deadline_seconds", |g| {
        (
            g.string("deadline_seconds.key", Kind::StatusName),
            g.u64("deadline_seconds.value"),
        )
    })
    .into_iter()
    .collect()
}

fn rack_message(g: &mut Gen) -> rk::RackMessage {
    use rk::rack_message::Msg;
    let msg = match g.below(6) {
        0 => None,
        1 => Some(Msg::Hello(hello(g))),
        2 => Some(Msg::Heartbeat(rk::Heartbeat {
            seq: g.u64("heartbeat.seq"),
        })),
        3 | 4 => Some(Msg::PowerCommandResult(rk::PowerCommandResult {
            id: if g.chance(0.5) && !g.known().power_ids.is_empty() {
                let ids = g.known().power_ids.clone();
                *g.pick(&ids)
            } else {
                g.u64("result.id")
            },
            success: g.bool(),
            error_kind: g.string("result.error_kind", Kind::PowerWord),
            message: g.string("result.message", Kind::Text),
            power_state: g.string("result.power_state", Kind::PowerWord),
        })),
        _ => Some(Msg::Observations(rk::PowerObservations {
            items: g.list("observations.items", |g| rk::PowerObservation {
                system_id: g.string("observation.system_id", Kind::SystemId),
                power_state: g.string("observation.power_state", Kind::PowerWord),
                error_kind: g.string("observation.error_kind", Kind::PowerWord),
                message: g.string("observation.message", Kind::Text),
                observed_ms: g.u64("observation.observed_ms"),
            }),
        })),
    };
    rk::RackMessage { msg }
}

fn hello(g: &mut Gen) -> rk::Hello {
    rk::Hello {
        version: g.string("hello.version", Kind::Text),
        services: g.list("hello.services", |g| {
            g.string("hello.services[]", Kind::Text)
        }),
        capacity: g.u32("hello.capacity"),
        drivers: g.list("hello.drivers", |g| {
            g.string("hello.drivers[]", Kind::Driver)
        }),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Calls.
// ---------------------------------------------------------------------------------------------------------

/// A unary call through the generated client `$client` (a `*ServiceClient` type), method `$method`.
macro_rules! unary {
    ($ctx:expr, $call:expr, $g:expr, $client:ty, $method:ident, $msg:expr) => {{
        let msg = $msg;
        let req = $ctx.request($g, $call.who, msg);
        let mut c = <$client>::new($ctx.channel($call))
            .max_decoding_message_size(MAX_DECODE)
            .max_encoding_message_size(usize::MAX);
        Outcome::of(c.$method(req).await)
    }};
}

/// Reads a response stream for [`STREAM_READ`]: an error status in it is the outcome.
async fn read_stream<T>(mut s: tonic::Streaming<T>) -> Outcome {
    let end = tokio::time::Instant::now() + STREAM_READ;
    loop {
        match tokio::time::timeout_at(end, s.message()).await {
            Err(_) | Ok(Ok(None)) => return Outcome::Ok,
            Ok(Ok(Some(_))) => {}
            Ok(Err(st)) => return Outcome::from_status(st),
        }
    }
}

/// A typed call of `call.rpc` with generated values. `NotCovered` when there is no generator for it.
async fn typed_call(ctx: &Ctx, call: &Call, g: &mut Gen) -> Outcome {
    use agent_service_client::AgentServiceClient as Agent;
    use cluster_service_client::ClusterServiceClient as Cluster;
    use event_service_client::EventServiceClient as Events;
    use image_service_client::ImageServiceClient as Images;
    use machine_service_client::MachineServiceClient as Machines;
    use pool_service_client::PoolServiceClient as Pools;
    use rack_service_client::RackServiceClient as Racks;
    use rf::raft_service_client::RaftServiceClient as Raft;
    use subnet_service_client::SubnetServiceClient as Subnets;
    use tag_service_client::TagServiceClient as Tags;
    use user_service_client::UserServiceClient as Users;
    use zone_service_client::ZoneServiceClient as Zones;
    let path = call.rpc.path();
    let (svc, method) = (call.rpc.service.as_str(), call.rpc.method.as_str());
    match (svc, method) {
        // ---- MachineService
        ("ingot.v1.MachineService", "CreateMachine") => unary!(
            ctx,
            call,
            g,
            Machines<Channel>,
            create_machine,
            CreateMachineRequest {
                hostname: g.string("hostname", Kind::Hostname),
                arch: g.string("arch", Kind::Text),
                zone: g.string("zone", Kind::Zone),
                macs: g.list("macs", |g| g.string("macs[]", Kind::Mac)),
                power: power_params(g, ctx),
                description: g.string("description", Kind::Text),
                pool: g.string("pool", Kind::Pool),
            }
        ),
        ("ingot.v1.MachineService", "GetMachine") => {
            unary!(ctx, call, g, Machines<Channel>, get_machine, {
                use get_machine_request::Key;
                let key = match g.below(7) {
                    0 => None,
                    1 | 2 => Some(Key::SystemId(g.string("system_id", Kind::SystemId))),
                    3 => Some(Key::Mac(g.string("mac", Kind::Mac))),
                    4 => Some(Key::Hostname(g.string("hostname", Kind::Hostname))),
                    5 => Some(Key::Consumer(g.string("consumer", Kind::Consumer))),
                    _ => Some(Key::ProviderId(g.string("provider_id", Kind::Text))),
                };
                GetMachineRequest {
                    key,
                    consistency: consistency(g),
                    include_secrets: g.bool(),
                    view: g.enumeration("view", 3),
                }
            })
        }
        ("ingot.v1.MachineService", "ListMachines") => unary!(
            ctx,
            call,
            g,
            Machines<Channel>,
            list_machines,
            ListMachinesRequest {
                filter: filter(g),
                page_size: g.u32("page_size"),
                page_token: g.string("page_token", Kind::SystemId),
                consistency: consistency(g),
                view: g.enumeration("view", 3),
            }
        ),
        ("ingot.v1.MachineService", "UpdateMachine") => unary!(
            ctx,
            call,
            g,
            Machines<Channel>,
            update_machine,
            UpdateMachineRequest {
                system_id: g.string("system_id", Kind::SystemId),
                hostname: opt_string(g, "hostname", Kind::Hostname),
                arch: opt_string(g, "arch", Kind::Text),
                zone: opt_string(g, "zone", Kind::Zone),
                description: opt_string(g, "description", Kind::Text),
                power: power_params(g, ctx),
                replace_macs: g.bool(),
                macs: g.list("macs", |g| g.string("macs[]", Kind::Mac)),
                expected_revision: g.u64("expected_revision"),
            }
        ),
        ("ingot.v1.MachineService", "DeleteMachine") => unary!(
            ctx,
            call,
            g,
            Machines<Channel>,
            delete_machine,
            DeleteMachineRequest {
                system_id: g.string("system_id", Kind::SystemId),
                expected_revision: g.u64("expected_revision"),
            }
        ),
        ("ingot.v1.MachineService", "Commission") => unary!(
            ctx,
            call,
            g,
            Machines<Channel>,
            commission,
            CommissionRequest {
                machine: machine_ref(g),
                comment: g.string("comment", Kind::Text),
                expected_revision: g.u64("expected_revision"),
            }
        ),
        ("ingot.v1.MachineService", "Test") => {
            unary!(ctx, call, g, Machines<Channel>, test, action(g))
        }
        ("ingot.v1.MachineService", "Abort") => {
            unary!(ctx, call, g, Machines<Channel>, abort, action(g))
        }
        ("ingot.v1.MachineService", "MarkBroken") => {
            unary!(ctx, call, g, Machines<Channel>, mark_broken, action(g))
        }
        ("ingot.v1.MachineService", "MarkFixed") => {
            unary!(ctx, call, g, Machines<Channel>, mark_fixed, action(g))
        }
        ("ingot.v1.MachineService", "Lock") => {
            unary!(ctx, call, g, Machines<Channel>, lock, action(g))
        }
        ("ingot.v1.MachineService", "Unlock") => {
            unary!(ctx, call, g, Machines<Channel>, unlock, action(g))
        }
        ("ingot.v1.MachineService", "EnterRescue") => {
            unary!(ctx, call, g, Machines<Channel>, enter_rescue, action(g))
        }
        ("ingot.v1.MachineService", "ExitRescue") => {
            unary!(ctx, call, g, Machines<Channel>, exit_rescue, action(g))
        }
        ("ingot.v1.MachineService", "Retire") => {
            unary!(ctx, call, g, Machines<Channel>, retire, action(g))
        }
        ("ingot.v1.MachineService", "Allocate") => unary!(
            ctx,
            call,
            g,
            Machines<Channel>,
            allocate,
            AllocateRequest {
                request_id: g.string("request_id", Kind::Text),
                constraints: constraints(g),
                consumer: g.string("consumer", Kind::Consumer),
                count: g.u32("count"),
                spread: g.enumeration("spread", 3),
                min_zones: g.u32("min_zones"),
                dry_run: g.bool(),
            }
        ),
        ("ingot.v1.MachineService", "Deploy") => unary!(
            ctx,
            call,
            g,
            Machines<Channel>,
            deploy,
            DeployRequest {
                machine: machine_ref(g),
                osystem: g.string("osystem", Kind::Text),
                distro_series: g.string("distro_series", Kind::Text),
                user_data: g.string("user_data", Kind::Text),
                comment: g.string("comment", Kind::Text),
                expected_revision: g.u64("expected_revision"),
                ssh_keys: g.list("ssh_keys", |g| g.string("ssh_keys[]", Kind::Text)),
                disk: g.string("disk", Kind::Text),
            }
        ),
        ("ingot.v1.MachineService", "Release") => unary!(
            ctx,
            call,
            g,
            Machines<Channel>,
            release,
            ReleaseRequest {
                machine: machine_ref(g),
                erase: g.enumeration("erase", 3),
                comment: g.string("comment", Kind::Text),
                expected_revision: g.u64("expected_revision"),
            }
        ),
        ("ingot.v1.MachineService", "SetZone") => unary!(
            ctx,
            call,
            g,
            Machines<Channel>,
            set_zone,
            SetZoneRequest {
                machine: machine_ref(g),
                zone: g.string("zone", Kind::Zone),
            }
        ),
        ("ingot.v1.MachineService", "SetPool") => unary!(
            ctx,
            call,
            g,
            Machines<Channel>,
            set_pool,
            SetPoolRequest {
                machine: machine_ref(g),
                pool: g.string("pool", Kind::Pool),
            }
        ),
        ("ingot.v1.MachineService", "TagMachine") => unary!(
            ctx,
            call,
            g,
            Machines<Channel>,
            tag_machine,
            TagMachineRequest {
                machine: machine_ref(g),
                tags: g.list("tags", |g| g.string("tags[]", Kind::Tag)),
            }
        ),
        ("ingot.v1.MachineService", "UntagMachine") => unary!(
            ctx,
            call,
            g,
            Machines<Channel>,
            untag_machine,
            TagMachineRequest {
                machine: machine_ref(g),
                tags: g.list("tags", |g| g.string("tags[]", Kind::Tag)),
            }
        ),
        ("ingot.v1.MachineService", "GetBootCredentials") => unary!(
            ctx,
            call,
            g,
            Machines<Channel>,
            get_boot_credentials,
            GetBootCredentialsRequest {
                machine: machine_ref(g),
            }
        ),
        ("ingot.v1.MachineService", "Watch") => {
            let msg = WatchRequest {
                from_revision: g.u64("from_revision"),
                filter: filter(g),
                view: g.enumeration("view", 3),
            };
            let req = ctx.request(g, call.who, msg);
            let mut c = Machines::new(ctx.channel(call)).max_decoding_message_size(MAX_DECODE);
            match c.watch(req).await {
                Ok(s) => read_stream(s.into_inner()).await,
                Err(s) => Outcome::from_status(s),
            }
        }
        ("ingot.v1.MachineService", "Power") => unary!(
            ctx,
            call,
            g,
            Machines<Channel>,
            power,
            PowerRequest {
                machine: machine_ref(g),
                action: g.string("action", Kind::PowerWord),
                wait_seconds: g.wait_seconds("wait_seconds"),
            }
        ),
        ("ingot.v1.MachineService", "GetPowerCommand") => unary!(
            ctx,
            call,
            g,
            Machines<Channel>,
            get_power_command,
            GetPowerCommandRequest {
                id: if g.chance(0.5) && !g.known().power_ids.is_empty() {
                    let ids = g.known().power_ids.clone();
                    *g.pick(&ids)
                } else {
                    g.u64("id")
                },
                wait_seconds: g.wait_seconds("wait_seconds"),
            }
        ),
        // ---- ZoneService
        ("ingot.v1.ZoneService", "CreateZone") => unary!(
            ctx,
            call,
            g,
            Zones<Channel>,
            create_zone,
            CreateZoneRequest {
                name: g.string("name", Kind::Zone),
                description: g.string("description", Kind::Text),
            }
        ),
        ("ingot.v1.ZoneService", "GetZone") => unary!(
            ctx,
            call,
            g,
            Zones<Channel>,
            get_zone,
            GetZoneRequest {
                name: g.string("name", Kind::Zone),
                consistency: consistency(g),
            }
        ),
        ("ingot.v1.ZoneService", "ListZones") => unary!(
            ctx,
            call,
            g,
            Zones<Channel>,
            list_zones,
            ListZonesRequest {
                consistency: consistency(g),
            }
        ),
        ("ingot.v1.ZoneService", "UpdateZone") => unary!(
            ctx,
            call,
            g,
            Zones<Channel>,
            update_zone,
            UpdateZoneRequest {
                name: g.string("name", Kind::Zone),
                description: opt_string(g, "description", Kind::Text),
                new_name: opt_string(g, "new_name", Kind::Zone),
            }
        ),
        ("ingot.v1.ZoneService", "DeleteZone") => unary!(
            ctx,
            call,
            g,
            Zones<Channel>,
            delete_zone,
            DeleteZoneRequest {
                name: g.string("name", Kind::Zone),
            }
        ),
        // ---- PoolService
        ("ingot.v1.PoolService", "CreatePool") => unary!(
            ctx,
            call,
            g,
            Pools<Channel>,
            create_pool,
            CreatePoolRequest {
                name: g.string("name", Kind::Pool),
                description: g.string("description", Kind::Text),
            }
        ),
        ("ingot.v1.PoolService", "GetPool") => unary!(
            ctx,
            call,
            g,
            Pools<Channel>,
            get_pool,
            GetPoolRequest {
                name: g.string("name", Kind::Pool),
                consistency: consistency(g),
            }
        ),
        ("ingot.v1.PoolService", "ListPools") => unary!(
            ctx,
            call,
            g,
            Pools<Channel>,
            list_pools,
            ListPoolsRequest {
                consistency: consistency(g),
            }
        ),
        ("ingot.v1.PoolService", "UpdatePool") => unary!(
            ctx,
            call,
            g,
            Pools<Channel>,
            update_pool,
            UpdatePoolRequest {
                name: g.string("name", Kind::Pool),
                description: opt_string(g, "description", Kind::Text),
            }
        ),
        ("ingot.v1.PoolService", "DeletePool") => unary!(
            ctx,
            call,
            g,
            Pools<Channel>,
            delete_pool,
            DeletePoolRequest {
                name: g.string("name", Kind::Pool),
            }
        ),
        // ---- TagService
        ("ingot.v1.TagService", "CreateTag") => unary!(
            ctx,
            call,
            g,
            Tags<Channel>,
            create_tag,
            CreateTagRequest {
                name: g.string("name", Kind::Tag),
                definition: g.string("definition", Kind::TagExpr),
                comment: g.string("comment", Kind::Text),
            }
        ),
        ("ingot.v1.TagService", "GetTag") => unary!(
            ctx,
            call,
            g,
            Tags<Channel>,
            get_tag,
            GetTagRequest {
                name: g.string("name", Kind::Tag),
                consistency: consistency(g),
            }
        ),
        ("ingot.v1.TagService", "ListTags") => unary!(
            ctx,
            call,
            g,
            Tags<Channel>,
            list_tags,
            ListTagsRequest {
                consistency: consistency(g),
            }
        ),
        ("ingot.v1.TagService", "UpdateTag") => unary!(
            ctx,
            call,
            g,
            Tags<Channel>,
            update_tag,
            UpdateTagRequest {
                name: g.string("name", Kind::Tag),
                definition: opt_string(g, "definition", Kind::TagExpr),
                comment: opt_string(g, "comment", Kind::Text),
            }
        ),
        ("ingot.v1.TagService", "DeleteTag") => unary!(
            ctx,
            call,
            g,
            Tags<Channel>,
            delete_tag,
            DeleteTagRequest {
                name: g.string("name", Kind::Tag),
            }
        ),
        // ---- UserService
        ("ingot.v1.UserService", "WhoAmI") => {
            unary!(ctx, call, g, Users<Channel>, who_am_i, WhoAmIRequest {})
        }
        ("ingot.v1.UserService", "CreateUser") => unary!(
            ctx,
            call,
            g,
            Users<Channel>,
            create_user,
            CreateUserRequest {
                name: g.string("name", Kind::User),
                role: g.enumeration("role", 3),
            }
        ),
        ("ingot.v1.UserService", "ListUsers") => unary!(
            ctx,
            call,
            g,
            Users<Channel>,
            list_users,
            ListUsersRequest {}
        ),
        ("ingot.v1.UserService", "UpdateUser") => unary!(
            ctx,
            call,
            g,
            Users<Channel>,
            update_user,
            UpdateUserRequest {
                name: user_name(g, ctx, "name"),
                role: g.enumeration("role", 3),
            }
        ),
        ("ingot.v1.UserService", "DeleteUser") => unary!(
            ctx,
            call,
            g,
            Users<Channel>,
            delete_user,
            DeleteUserRequest {
                name: user_name(g, ctx, "name"),
            }
        ),
        ("ingot.v1.UserService", "CreateToken") => unary!(
            ctx,
            call,
            g,
            Users<Channel>,
            create_token,
            CreateTokenRequest {
                user: g.string("user", Kind::User),
                description: g.string("description", Kind::Text),
                ttl_seconds: g.u64("ttl_seconds"),
            }
        ),
        ("ingot.v1.UserService", "ListTokens") => unary!(
            ctx,
            call,
            g,
            Users<Channel>,
            list_tokens,
            ListTokensRequest {
                user: g.string("user", Kind::User),
                all: g.bool(),
            }
        ),
        ("ingot.v1.UserService", "RevokeToken") => {
            unary!(ctx, call, g, Users<Channel>, revoke_token, {
                let id = g.string("id", Kind::Text);
                RevokeTokenRequest {
                    id: if ctx.protected.token_ids.contains(&id) {
                        "fz-not-a-token".into()
                    } else {
                        id
                    },
                }
            })
        }
        // ---- EventService
        ("ingot.v1.EventService", "ListEvents") => unary!(
            ctx,
            call,
            g,
            Events<Channel>,
            list_events,
            ListEventsRequest {
                system_id: g.string("system_id", Kind::SystemId),
                zone: g.string("zone", Kind::Zone),
                owner: g.string("owner", Kind::User),
                min_level: g.enumeration("min_level", 4),
                since: g.timestamp("since"),
                until: g.timestamp("until"),
                page_size: g.u32("page_size"),
                page_token: g.string("page_token", Kind::Text),
                consistency: consistency(g),
                kind: g.string("kind", Kind::Text),
            }
        ),
        // ---- SubnetService
        ("ingot.v1.SubnetService", "CreateSubnet") => unary!(
            ctx,
            call,
            g,
            Subnets<Channel>,
            create_subnet,
            CreateSubnetRequest {
                subnet: if g.chance(0.1) {
                    None
                } else {
                    Some(subnet_message(g))
                },
            }
        ),
        ("ingot.v1.SubnetService", "GetSubnet") => unary!(
            ctx,
            call,
            g,
            Subnets<Channel>,
            get_subnet,
            GetSubnetRequest {
                cidr: g.string("cidr", Kind::Net),
                consistency: consistency(g),
            }
        ),
        ("ingot.v1.SubnetService", "ListSubnets") => unary!(
            ctx,
            call,
            g,
            Subnets<Channel>,
            list_subnets,
            ListSubnetsRequest {
                consistency: consistency(g),
            }
        ),
        ("ingot.v1.SubnetService", "UpdateSubnet") => unary!(
            ctx,
            call,
            g,
            Subnets<Channel>,
            update_subnet,
            UpdateSubnetRequest {
                cidr: g.string("cidr", Kind::Net),
                gateway: opt_string(g, "gateway", Kind::Net),
                dns: opt_net_list(g, "dns"),
                domain: opt_string(g, "domain", Kind::Text),
                dynamic: opt_net_list(g, "dynamic"),
                reserved: opt_net_list(g, "reserved"),
                vlan: opt_u32(g, "vlan"),
                mode: if g.chance(0.4) {
                    None
                } else {
                    Some(subnet_mode(g))
                },
                primary: opt_string(g, "primary", Kind::Rack),
                secondary: opt_string(g, "secondary", Kind::Rack),
                lease_time_s: opt_u32(g, "lease_time_s"),
                pxe_lease_time_s: opt_u32(g, "pxe_lease_time_s"),
            }
        ),
        ("ingot.v1.SubnetService", "DeleteSubnet") => unary!(
            ctx,
            call,
            g,
            Subnets<Channel>,
            delete_subnet,
            DeleteSubnetRequest {
                cidr: g.string("cidr", Kind::Net),
            }
        ),
        ("ingot.v1.SubnetService", "ListLeases") => unary!(
            ctx,
            call,
            g,
            Subnets<Channel>,
            list_leases,
            ListLeasesRequest {
                subnet: g.string("subnet", Kind::Net),
                mac: g.string("mac", Kind::Mac),
                consistency: consistency(g),
                page_size: g.u32("page_size"),
                page_token: g.string("page_token", Kind::Net),
            }
        ),
        // ---- RackService
        ("ingot.v1.RackService", "CreateEnrollmentToken") => unary!(
            ctx,
            call,
            g,
            Racks<Channel>,
            create_enrollment_token,
            CreateEnrollmentTokenRequest {
                ttl_seconds: g.u64("ttl_seconds"),
            }
        ),
        ("ingot.v1.RackService", "RegisterRack") => unary!(
            ctx,
            call,
            g,
            Racks<Channel>,
            register_rack,
            RegisterRackRequest {
                token: g.string("token", Kind::Text),
                name: g.string("name", Kind::Rack),
                zone: g.string("zone", Kind::Zone),
                csr_pem: g.string("csr_pem", Kind::Pem),
            }
        ),
        ("ingot.v1.RackService", "ListRacks") => unary!(
            ctx,
            call,
            g,
            Racks<Channel>,
            list_racks,
            ListRacksRequest {
                consistency: consistency(g),
            }
        ),
        ("ingot.v1.RackService", "GetRack") => unary!(
            ctx,
            call,
            g,
            Racks<Channel>,
            get_rack,
            GetRackRequest {
                name: g.string("name", Kind::Rack),
            }
        ),
        ("ingot.v1.RackService", "RevokeRack") => {
            unary!(ctx, call, g, Racks<Channel>, revoke_rack, {
                let name = g.string("name", Kind::Rack);
                RevokeRackRequest {
                    name: if ctx.protected.racks.contains(&name) {
                        "fz-no-rack".into()
                    } else {
                        name
                    },
                }
            })
        }
        // ---- ClusterService
        ("ingot.v1.ClusterService", "ListRegions") => unary!(
            ctx,
            call,
            g,
            Cluster<Channel>,
            list_regions,
            ListRegionsRequest {}
        ),
        ("ingot.v1.ClusterService", "CreateJoinToken") => unary!(
            ctx,
            call,
            g,
            Cluster<Channel>,
            create_join_token,
            CreateJoinTokenRequest {
                ttl_seconds: g.u32("ttl_seconds"),
            }
        ),
        ("ingot.v1.ClusterService", "JoinRegion") => unary!(
            ctx,
            call,
            g,
            Cluster<Channel>,
            join_region,
            JoinRegionRequest {
                token: g.string("token", Kind::Text),
                name: g.string("name", Kind::Text),
                csr_pem: g.string("csr_pem", Kind::Pem),
                raft_addr: g.string("raft_addr", Kind::Addr),
                api_addr: g.string("api_addr", Kind::Addr),
            }
        ),
        ("ingot.v1.ClusterService", "RemoveRegion") => {
            unary!(ctx, call, g, Cluster<Channel>, remove_region, {
                let id = g.u64("node_id");
                RemoveRegionRequest {
                    node_id: if ctx.protected.node_ids.contains(&id) {
                        id + 1000
                    } else {
                        id
                    },
                }
            })
        }
        ("ingot.v1.ClusterService", "GetSettings") => unary!(
            ctx,
            call,
            g,
            Cluster<Channel>,
            get_settings,
            GetSettingsRequest {}
        ),
        ("ingot.v1.ClusterService", "UpdateSettings") => unary!(
            ctx,
            call,
            g,
            Cluster<Channel>,
            update_settings,
            UpdateSettingsRequest {
                deadline_seconds: settings_map(g),
            }
        ),
        // ---- AgentService
        ("ingot.v1.AgentService", "ReportInventory") => {
            let (system_id, boot_token) = ctx.agent_identity(g, call.who).await;
            unary!(
                ctx,
                call,
                g,
                Agent<Channel>,
                report_inventory,
                ReportInventoryRequest {
                    system_id,
                    boot_token,
                    inventory: inventory(g),
                }
            )
        }
        ("ingot.v1.AgentService", "ReportProgress") => {
            let (system_id, boot_token) = ctx.agent_identity(g, call.who).await;
            unary!(
                ctx,
                call,
                g,
                Agent<Channel>,
                report_progress,
                ReportProgressRequest {
                    system_id,
                    boot_token,
                    message: g.string("message", Kind::Text),
                    percent: g.u32("percent"),
                }
            )
        }
        ("ingot.v1.AgentService", "ReportResult") => {
            let (system_id, boot_token) = ctx.agent_identity(g, call.who).await;
            unary!(
                ctx,
                call,
                g,
                Agent<Channel>,
                report_result,
                ReportResultRequest {
                    system_id,
                    boot_token,
                    success: g.bool(),
                    reason: g.string("reason", Kind::Text),
                }
            )
        }
        // ---- ingot.raft.v1.RaftService (cluster listener)
        ("ingot.raft.v1.RaftService", "AppendEntries") => unary!(
            ctx,
            call,
            g,
            Raft<Channel>,
            append_entries,
            rf::RaftPayload {
                json: g.json_bytes("json"),
            }
        ),
        ("ingot.raft.v1.RaftService", "Vote") => unary!(
            ctx,
            call,
            g,
            Raft<Channel>,
            vote,
            rf::RaftPayload {
                json: g.json_bytes("json"),
            }
        ),
        ("ingot.raft.v1.RaftService", "InstallSnapshot") => unary!(
            ctx,
            call,
            g,
            Raft<Channel>,
            install_snapshot,
            rf::SnapshotChunk {
                vote_json: g.json_bytes("vote_json"),
                meta_json: g.json_bytes("meta_json"),
                offset: g.u64("offset"),
                data: g.bytes("data"),
                done: g.bool(),
            }
        ),
        ("ingot.raft.v1.RaftService", "Forward") => unary!(
            ctx,
            call,
            g,
            Raft<Channel>,
            forward,
            rf::RaftPayload {
                json: g.json_bytes("json"),
            }
        ),
        ("ingot.raft.v1.RaftService", "ReadIndex") => unary!(
            ctx,
            call,
            g,
            Raft<Channel>,
            read_index,
            rf::ReadIndexRequest {}
        ),
        ("ingot.raft.v1.RaftService", "Status") => {
            unary!(ctx, call, g, Raft<Channel>, status, rf::StatusRequest {})
        }
        ("ingot.raft.v1.RaftService", "Join") => unary!(
            ctx,
            call,
            g,
            Raft<Channel>,
            join,
            rf::JoinRequest {
                node_id: g.u64("node_id"),
            }
        ),
        ("ingot.raft.v1.RaftService", "Leave") => unary!(ctx, call, g, Raft<Channel>, leave, {
            let id = g.u64("node_id");
            // A member region telling the target it was removed is authorized (when it leads): not fuzz.
            let target = ctx.node_ids[call.region];
            rf::LeaveRequest {
                node_id: if call.who == Who::Region && id == target {
                    target + 1000
                } else {
                    id
                },
                reason: g.string("reason", Kind::Text),
            }
        }),
        // ---- ingot.rack.v1.RackSessionService (cluster listener)
        // ---- ImageService: an upload is a header then chunks; the chunks' bytes are never long runs of
        // one byte (the fuzz fillers the oversize check looks for), whatever their size.
        ("ingot.v1.ImageService", "UploadImage") => {
            use upload_image_request::Part;
            let mut msgs = Vec::new();
            if g.chance(0.8) {
                let header = UploadHeader {
                    name: g.string("name", Kind::Text),
                    kind: g.string("kind", Kind::Text),
                    arch: g.string("arch", Kind::Text),
                    files: g.list("files", |g| UploadFile {
                        name: g.string("files[].name", Kind::Text),
                        size: g.u64("files[].size"),
                        sha256: g.string("files[].sha256", Kind::Text),
                    }),
                };
                msgs.push(UploadImageRequest {
                    part: Some(Part::Header(header)),
                });
            }
            for _ in 0..g.below(6) {
                let n = [0usize, 1, 1000, 1 << 20, (1 << 20) + 1][g.below(5)];
                let data = (0..n).map(|i| (i % 251) as u8).collect();
                msgs.push(UploadImageRequest {
                    part: Some(Part::Chunk(UploadChunk {
                        file: g.u32("chunk.file"),
                        data,
                    })),
                });
            }
            let req = ctx.request(g, call.who, tokio_stream::iter(msgs));
            let mut c = Images::new(ctx.channel(call)).max_decoding_message_size(MAX_DECODE);
            Outcome::of(c.upload_image(req).await)
        }
        ("ingot.v1.ImageService", "GetImage") => unary!(
            ctx,
            call,
            g,
            Images<Channel>,
            get_image,
            GetImageRequest {
                name: g.string("name", Kind::Text),
            }
        ),
        ("ingot.v1.ImageService", "ListImages") => unary!(
            ctx,
            call,
            g,
            Images<Channel>,
            list_images,
            ListImagesRequest {
                kind: g.string("kind", Kind::Text),
            }
        ),
        ("ingot.v1.ImageService", "DeleteImage") => unary!(
            ctx,
            call,
            g,
            Images<Channel>,
            delete_image,
            DeleteImageRequest {
                name: g.string("name", Kind::Text),
            }
        ),
        // ---- BlobService (cluster listener: regions and racks)
        ("ingot.rack.v1.BlobService", "FetchBlob") => {
            let msg = rk::FetchBlobRequest {
                sha256: g.string("sha256", Kind::Text),
                offset: g.u64("offset"),
            };
            let req = ctx.request(g, call.who, msg);
            let mut c = rk::blob_service_client::BlobServiceClient::new(ctx.channel(call))
                .max_decoding_message_size(MAX_DECODE);
            match c.fetch_blob(req).await {
                Ok(s) => read_stream(s.into_inner()).await,
                Err(s) => Outcome::from_status(s),
            }
        }
        ("ingot.rack.v1.RackSessionService", "Session") => {
            let mut msgs = Vec::new();
            if g.chance(0.7) {
                msgs.push(rk::RackMessage {
                    msg: Some(rk::rack_message::Msg::Hello(hello(g))),
                });
            }
            let n = g.below(12);
            for _ in 0..n {
                msgs.push(rack_message(g));
            }
            let req = ctx.request(g, call.who, tokio_stream::iter(msgs));
            let mut c =
                rk::rack_session_service_client::RackSessionServiceClient::new(ctx.channel(call))
                    .max_decoding_message_size(MAX_DECODE);
            match c.session(req).await {
                Ok(s) => read_stream(s.into_inner()).await,
                Err(s) => Outcome::from_status(s),
            }
        }
        _ => {
            let _ = path;
            Outcome::NotCovered
        }
    }
}

/// A call of `call.rpc` with malformed protobuf as the request, whatever its type.
async fn raw_call(ctx: &Ctx, call: &Call, g: &mut Gen) -> Outcome {
    let bytes = g.raw_protobuf();
    let path = match PathAndQuery::from_maybe_shared(call.rpc.path()) {
        Ok(p) => p,
        Err(e) => return Outcome::Transport(format!("bad path: {e}")),
    };
    let mut grpc =
        tonic::client::Grpc::new(ctx.channel(call)).max_decoding_message_size(MAX_DECODE);
    if let Err(e) = grpc.ready().await {
        return Outcome::Transport(format!("not ready: {}", error_chain(&e)));
    }
    match (call.rpc.client_streaming, call.rpc.server_streaming) {
        (false, false) => {
            let req = ctx.request(g, call.who, bytes);
            Outcome::of(grpc.unary(req, path, RawCodec).await)
        }
        (false, true) => {
            let req = ctx.request(g, call.who, bytes);
            match grpc.server_streaming(req, path, RawCodec).await {
                Ok(s) => read_stream(s.into_inner()).await,
                Err(s) => Outcome::from_status(s),
            }
        }
        (true, _) => {
            // A first message that is a valid Hello, then the malformed one.
            let first = rk::RackMessage {
                msg: Some(rk::rack_message::Msg::Hello(rk::Hello::default())),
            }
            .encode_to_vec();
            let msgs = if g.chance(0.5) {
                vec![first, bytes]
            } else {
                vec![bytes]
            };
            let req = ctx.request(g, call.who, tokio_stream::iter(msgs));
            match grpc.streaming(req, path, RawCodec).await {
                Ok(s) => read_stream(s.into_inner()).await,
                Err(s) => Outcome::from_status(s),
            }
        }
    }
}

/// True when the RPC needs no bearer token (it authenticates with a token inside the request).
fn authenticates_in_request(rpc: &Rpc) -> bool {
    rpc.service == "ingot.v1.AgentService"
        || (rpc.service == "ingot.v1.ClusterService" && rpc.method == "JoinRegion")
        || (rpc.service == "ingot.v1.RackService" && rpc.method == "RegisterRack")
}

/// Makes one call and records what is wrong with its outcome.
async fn run_call(ctx: &Ctx, call: &Call) -> bool {
    let mut g = Gen::new(call.seed, ctx.known.clone());
    let t0 = Instant::now();
    let outcome = match tokio::time::timeout(CALL_TIMEOUT, async {
        if call.raw {
            raw_call(ctx, call, &mut g).await
        } else {
            typed_call(ctx, call, &mut g).await
        }
    })
    .await
    {
        Ok(o) => o,
        Err(_) => Outcome::Hung,
    };
    let rpc = &call.rpc;
    let label = match &outcome {
        Outcome::Ok => "ok".to_string(),
        Outcome::Status(s) => format!("{:?}", s.code()),
        Outcome::Transport(_) => "transport".to_string(),
        Outcome::Hung => "hung".to_string(),
        Outcome::NotCovered => "not-covered".to_string(),
    };
    ctx.count(format!("{:?}/{label}", call.who));
    match outcome {
        Outcome::NotCovered => {
            ctx.finding(call, &g, "no generator for this RPC in t20_fuzz.rs".into());
            return false;
        }
        Outcome::Hung => ctx.finding(
            call,
            &g,
            format!("no answer within {CALL_TIMEOUT:?} (deadline sent: {GRPC_DEADLINE:?})"),
        ),
        Outcome::Transport(e) => {
            if call.who != Who::NoCert {
                let why = if e.contains("header_list") || e.contains("continuations") {
                    "the answer's headers exceed HTTP/2 limits (the status message echoes the input?) and \
                     the client drops the connection"
                } else if e.contains("Timeout expired") {
                    "no answer before the deadline sent with the call (the client gave up; under heavy \
                     load this can be an election storm rather than this call)"
                } else {
                    "connection failed instead of a status"
                };
                ctx.finding(call, &g, format!("{why} after {:?}: {e}", t0.elapsed()));
            }
        }
        Outcome::Ok => {
            let forged = match call.who {
                Who::NoCert => true,
                // Regions copy image blobs from each other: BlobService serves them and racks.
                Who::Region => {
                    rpc.service.starts_with("ingot.rack.")
                        && rpc.service != "ingot.rack.v1.BlobService"
                }
                Who::Rack => rpc.service.starts_with("ingot.raft."),
                Who::Forged | Who::Agent => !authenticates_in_request(rpc),
                _ => false,
            };
            if forged {
                ctx.finding(
                    call,
                    &g,
                    "served a caller without the required identity".into(),
                );
            }
            if (rpc.method == "JoinRegion" || rpc.method == "RegisterRack") && !call.raw {
                ctx.finding(call, &g, "accepted a random enrollment/join token".into());
            }
        }
        Outcome::Status(s) => {
            let msg = s.message();
            if s.code() == Code::Unknown {
                ctx.finding(call, &g, format!("UNKNOWN status: {}", trunc(msg)));
            }
            if msg.trim().is_empty() {
                ctx.finding(call, &g, format!("{:?} with an empty message", s.code()));
            }
            if msg.len() > MAX_STATUS_MESSAGE {
                ctx.finding(
                    call,
                    &g,
                    format!(
                        "{:?} message of {} bytes (echoes input): {}",
                        s.code(),
                        msg.len(),
                        trunc(msg)
                    ),
                );
            }
            // tonic's own answer to bytes that are not the request type (not the region's code).
            let tonic_decode = call.raw && msg.starts_with("failed to decode Protobuf message");
            if tonic_decode {
                ctx.count("malformed bytes/tonic decode error (INTERNAL, justified)".into());
            }
            if s.code() == Code::Internal && !tonic_decode {
                ctx.finding(call, &g, format!("INTERNAL: {}", trunc(msg)));
            }
        }
    }
    true
}

fn trunc(s: &str) -> String {
    let mut t: String = s.chars().take(200).collect();
    if t.len() < s.len() {
        t.push_str("...");
    }
    t.escape_debug().to_string()
}

// ---------------------------------------------------------------------------------------------------------
// The test.
// ---------------------------------------------------------------------------------------------------------

/// Every RPC in `proto/`, checked against what the generated code and the public descriptor set declare.
fn all_rpcs() -> Vec<Rpc> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/ingot");
    let rpcs = proto_rpcs(&dir).unwrap();
    let services: BTreeSet<String> = rpcs.iter().map(|r| r.service.clone()).collect();
    let generated: BTreeSet<String> = [
        machine_service_server::SERVICE_NAME,
        zone_service_server::SERVICE_NAME,
        cluster_service_server::SERVICE_NAME,
        pool_service_server::SERVICE_NAME,
        tag_service_server::SERVICE_NAME,
        user_service_server::SERVICE_NAME,
        event_service_server::SERVICE_NAME,
        agent_service_server::SERVICE_NAME,
        rack_service_server::SERVICE_NAME,
        subnet_service_server::SERVICE_NAME,
        image_service_server::SERVICE_NAME,
        rk::rack_session_service_server::SERVICE_NAME,
        rk::blob_service_server::SERVICE_NAME,
        rf::raft_service_server::SERVICE_NAME,
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    // A service in the files but not listed here still gets fuzzed (and fails for want of a generator);
    // one listed here but not parsed means the parser missed it.
    for s in &generated {
        assert!(
            services.contains(s),
            "the .proto parser missed service {s}: fix tests/src/fuzz.rs"
        );
    }
    // The public descriptor set (what reflection serves) must agree with the parse, method by method.
    let fds = prost_types::FileDescriptorSet::decode(ingot_proto::V1_FILE_DESCRIPTOR_SET).unwrap();
    let described: BTreeSet<String> = fds
        .file
        .iter()
        .flat_map(|f| {
            let pkg = f.package().to_string();
            f.service.iter().flat_map(move |s| {
                let svc = format!("{pkg}.{}", s.name());
                s.method.iter().map(move |m| format!("/{svc}/{}", m.name()))
            })
        })
        .collect();
    let parsed_v1: BTreeSet<String> = rpcs
        .iter()
        .filter(|r| r.service.starts_with("ingot.v1."))
        .map(Rpc::path)
        .collect();
    assert_eq!(
        parsed_v1, described,
        "ingot.v1 RPCs: .proto parse vs descriptor set"
    );
    rpcs.into_iter().collect()
}

#[test]
fn every_rpc_in_proto_is_enumerated() {
    let rpcs = all_rpcs();
    assert!(
        rpcs.len() >= 79,
        "only {} RPCs parsed: {rpcs:?}",
        rpcs.len()
    );
    assert!(rpcs
        .iter()
        .any(|r| r.path() == "/ingot.rack.v1.RackSessionService/Session"
            && r.client_streaming
            && r.server_streaming));
    assert!(rpcs
        .iter()
        .any(|r| r.path() == "/ingot.v1.MachineService/Watch"
            && !r.client_streaming
            && r.server_streaming));
}

/// Sets up the fixture: zones, pools, tags, users, machines in several statuses, a rack and its
/// certificate, and machines in commissioning for the agent identity.
async fn fixture(tc: &TestCluster, sim_dir: &std::path::Path) -> Ctx {
    let admin = tc.clients();
    let c = &admin;
    tc.cluster
        .add_rack("fz-rack", "fz-rack-zone")
        .await
        .unwrap();
    for z in ["fz-zone"] {
        c.zones()
            .create_zone(CreateZoneRequest {
                name: z.into(),
                description: "fuzz".into(),
            })
            .await
            .unwrap();
    }
    c.pools()
        .create_pool(CreatePoolRequest {
            name: "fz-pool".into(),
            description: "fuzz".into(),
        })
        .await
        .unwrap();
    for (name, def) in [("fz-tag", ""), ("fz-auto", "cpu_count >= 1")] {
        c.tags()
            .create_tag(CreateTagRequest {
                name: name.into(),
                definition: def.into(),
                comment: String::new(),
            })
            .await
            .unwrap();
    }
    c.subnets()
        .create_subnet(CreateSubnetRequest {
            subnet: Some(Subnet {
                cidr: "10.99.0.0/24".into(),
                gateway: "10.99.0.1".into(),
                dynamic: vec!["10.99.0.100-10.99.0.199".into()],
                primary: "fz-rack".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let (user, user_secret) = user_token(c, "fz-user").await.unwrap();
    c.users()
        .create_user(CreateUserRequest {
            name: "fz-other".into(),
            role: Role::User as i32,
        })
        .await
        .unwrap();

    let mut system_ids = Vec::new();
    let mut hostnames = Vec::new();
    let mut macs = Vec::new();
    // Two New machines, two Ready ones, one the user allocated, one with the simulated power driver.
    for i in 0..6u32 {
        let req = if i == 5 {
            sim_machine(20, i, "fz-rack-zone", sim_dir, &[])
        } else {
            machine(20, i)
        };
        hostnames.push(req.hostname.clone());
        macs.extend(req.macs.clone());
        let m = c.machines().create_machine(req).await.unwrap().into_inner();
        if (2..5).contains(&i) {
            commission_to_ready(c, &m.system_id, small_inventory())
                .await
                .unwrap();
        }
        system_ids.push(m.system_id);
    }
    user.machines()
        .allocate(AllocateRequest {
            request_id: "fz-alloc".into(),
            constraints: Some(Constraints {
                system_id: system_ids[4].clone(),
                ..Default::default()
            }),
            consumer: "fz-consumer".into(),
            count: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let p = c
        .machines()
        .power(PowerRequest {
            machine: Some(by_id(&system_ids[5])),
            action: "query".into(),
            wait_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    // Machines kept booting for the agent identity.
    let mut agent_machines = Vec::new();
    for i in 100..102u32 {
        let m = c
            .machines()
            .create_machine(machine(20, i))
            .await
            .unwrap()
            .into_inner();
        c.machines()
            .commission(CommissionRequest {
                machine: Some(by_id(&m.system_id)),
                ..Default::default()
            })
            .await
            .unwrap();
        agent_machines.push(m.system_id);
    }
    let token_ids = c
        .users()
        .list_tokens(ListTokensRequest {
            user: String::new(),
            all: true,
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .into_iter()
        .map(|t| t.id)
        .collect();

    // Channels.
    let regions = tc.cluster.regions();
    let ca = std::fs::read_to_string(regions[0].data_dir.join("tls/ca.crt")).unwrap();
    let region_cert = (
        std::fs::read_to_string(regions[0].data_dir.join("tls/region.crt")).unwrap(),
        std::fs::read_to_string(regions[0].data_dir.join("tls/region.key")).unwrap(),
    );
    let rack = tc.cluster.rack("fz-rack").unwrap();
    let (rack_crt, rack_key) = rack_cert(&rack).unwrap();
    let endpoint = |addr: &str, id: Option<(&str, &str)>| {
        Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(cluster_tls(&ca, id))
            .unwrap()
            .connect_timeout(Duration::from_secs(3))
    };
    let dummy = endpoint("127.0.0.1:9", None);
    let mut api = vec![dummy.clone()];
    let mut as_region = vec![dummy.clone()];
    let mut as_rack = vec![dummy.clone()];
    let mut no_cert = vec![dummy];
    let mut node_ids = vec![0];
    for r in &regions {
        // The API listener's certificate has the same server name as the cluster listener's.
        api.push(endpoint(&r.api_addr, None));
        as_region.push(endpoint(
            &r.raft_addr,
            Some((&region_cert.0, &region_cert.1)),
        ));
        as_rack.push(endpoint(&r.raft_addr, Some((&rack_crt, &rack_key))));
        no_cert.push(endpoint(&r.raft_addr, None));
        node_ids.push(r.node_id);
    }
    let known = Known {
        system_ids,
        hostnames,
        macs,
        zones: vec!["default".into(), "fz-zone".into(), "fz-rack-zone".into()],
        pools: vec!["default".into(), "fz-pool".into()],
        tags: vec!["fz-tag".into(), "fz-auto".into()],
        users: vec!["admin".into(), "fz-user".into(), "fz-other".into()],
        racks: vec!["fz-rack".into()],
        consumers: vec!["fz-consumer".into()],
        power_ids: vec![p.id, p.id + 1, 1],
        node_ids: node_ids[1..].to_vec(),
    };
    Ctx {
        api,
        as_region,
        as_rack,
        no_cert,
        node_ids: node_ids.clone(),
        admin_token: tc.cluster.token().to_string(),
        user_token: user_secret,
        admin: admin.clone(),
        known: Arc::new(known),
        agent_machines,
        protected: Protected {
            users: vec!["admin".into(), "fz-user".into()],
            token_ids,
            racks: vec!["fz-rack".into()],
            node_ids: node_ids[1..].to_vec(),
        },
        sim_dir: sim_dir.display().to_string(),
        findings: Mutex::new(Vec::new()),
        counts: Mutex::new(BTreeMap::new()),
    }
}

/// Which call number `i` is: the coverage pass first, then random RPCs, identities and modes.
struct Planner {
    plan: Vec<(Rpc, Who, bool)>,
    rpcs: Vec<Rpc>,
    seed: u64,
    regions: usize,
}

impl Planner {
    fn call(&self, i: u64) -> Call {
        let s = mix(self.seed, i);
        let (rpc, who, raw) = match self.plan.get(i as usize) {
            Some(p) => p.clone(),
            None => {
                let r = &self.rpcs[(s % self.rpcs.len() as u64) as usize];
                let ids: &[Who] = if on_cluster_listener(r) {
                    &CLUSTER_IDENTITIES
                } else {
                    &API_IDENTITIES
                };
                let who = ids[((s >> 8) % ids.len() as u64) as usize];
                (r.clone(), who, (s >> 16).is_multiple_of(8))
            }
        };
        Call {
            index: i,
            rpc,
            who,
            raw,
            region: 1 + ((s >> 24) % self.regions as u64) as usize,
            seed: s,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_survives_random_and_boundary_values() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let seed = env_u64("INGOT_FUZZ_SEED").unwrap_or_else(rand::random);
    let secs = env_u64("INGOT_FUZZ_SECS").unwrap_or(20);
    let max_calls = env_u64("INGOT_FUZZ_CALLS").unwrap_or(4000);
    let only = std::env::var("INGOT_FUZZ_ONLY").unwrap_or_default();
    let single = env_u64("INGOT_FUZZ_CALL");
    eprintln!("t20_fuzz: seed {seed} (replay: INGOT_FUZZ_SEED={seed}), {secs} s, at most {max_calls} calls");

    let rpcs: Vec<Rpc> = all_rpcs()
        .into_iter()
        .filter(|r| r.path().contains(&only))
        .collect();
    assert!(!rpcs.is_empty(), "INGOT_FUZZ_ONLY={only} matches no RPC");
    let tc = TestCluster::start("fuzz", 3, &[]).await.unwrap();
    let _rack_logs = ingot_tests::RackLogsOnPanic(&tc.cluster);
    let sim_dir = tc.dir.join("sim-bmc");
    std::fs::create_dir_all(&sim_dir).unwrap();
    let ctx = Arc::new(fixture(&tc, &sim_dir).await);
    let regions = tc.cluster.len();

    // The plan: every RPC by every identity of its listener, every RPC with malformed bytes, then random.
    let mut plan: Vec<(Rpc, Who, bool)> = Vec::new();
    for r in &rpcs {
        let ids: &[Who] = if on_cluster_listener(r) {
            &CLUSTER_IDENTITIES
        } else {
            &API_IDENTITIES
        };
        for w in ids {
            plan.push((r.clone(), *w, false));
        }
    }
    for r in &rpcs {
        let w = if on_cluster_listener(r) {
            Who::Region
        } else {
            Who::Admin
        };
        plan.push((r.clone(), w, true));
    }
    let coverage = plan.len() as u64;
    let planner = Arc::new(Planner {
        plan,
        rpcs: rpcs.clone(),
        seed,
        regions,
    });
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(secs);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let ctx = ctx.clone();
        let next = next.clone();
        let planner = planner.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if let Some(one) = single {
                    // Replay of one call: the same plan, only that index.
                    if i == 0 {
                        run_call(&ctx, &planner.call(one)).await;
                    }
                    return;
                }
                if i >= max_calls.max(coverage) || (i >= coverage && Instant::now() > deadline) {
                    return;
                }
                run_call(&ctx, &planner.call(i)).await;
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let made = next
        .load(std::sync::atomic::Ordering::SeqCst)
        .min(max_calls.max(coverage));
    eprintln!(
        "t20_fuzz: {made} calls ({coverage} in the coverage pass) over {} RPCs in {:.1} s",
        rpcs.len(),
        t0.elapsed().as_secs_f64()
    );
    eprintln!(
        "t20_fuzz: outcomes by identity: {:?}",
        ctx.counts.lock().unwrap()
    );

    // Afterwards: every process alive, no panic in any log, and an ordinary write on every region.
    let mut after = Vec::new();
    for r in tc.cluster.regions() {
        if !tc.cluster.is_running(r.index) {
            after.push(format!(
                "region {} (node {}) is no longer running",
                r.index, r.node_id
            ));
        }
        for l in panics_in_log(&r.log_path) {
            after.push(format!("region {} panicked: {l}", r.index));
        }
    }
    // A 1 MiB or 8 MiB string that reached the Raft log or the state went in without a byte cap.
    let mut oversized: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for r in tc.cluster.regions() {
        for (_, op) in oversized_in_data_dir(&r.data_dir) {
            oversized.entry(op).or_default().insert(r.index);
        }
    }
    for (op, regions) in &oversized {
        after.push(format!(
            "a fuzz string of 1 MiB or more reached the Raft log/state in command {op} (data dirs of regions \
             {regions:?}): no byte cap before proposing"
        ));
    }
    for rack in tc.cluster.racks() {
        if !tc.cluster.is_rack_running(&rack.name) {
            after.push(format!("rack {} is no longer running", rack.name));
        }
        for l in panics_in_log(&rack.log) {
            after.push(format!("rack {} panicked: {l}", rack.name));
        }
    }
    for r in tc.cluster.regions() {
        if !tc.cluster.is_running(r.index) {
            continue;
        }
        let c = tc.cluster.connect_to(r.index).unwrap();
        let zone = format!("fz-after-{}", r.index);
        // Retried (an election may be under way after the load): each step is idempotent enough, an
        // ALREADY_EXISTS from a retried create counts as done.
        let t0 = Instant::now();
        let mut last = String::new();
        let mut done = false;
        while t0.elapsed() < AFTER_WRITE_WITHIN && !done {
            let write = async {
                let z = c
                    .zones()
                    .create_zone(CreateZoneRequest {
                        name: zone.clone(),
                        description: String::new(),
                    })
                    .await;
                match z {
                    Ok(_) => {}
                    Err(e) if e.code() == Code::AlreadyExists => {}
                    Err(e) => return Err(e),
                }
                let m = c
                    .machines()
                    .create_machine(CreateMachineRequest {
                        zone: zone.clone(),
                        ..machine(21, r.index as u32)
                    })
                    .await;
                match m {
                    Ok(_) => Ok(()),
                    Err(e) if e.code() == Code::AlreadyExists => Ok(()),
                    Err(e) => Err(e),
                }
            };
            match tokio::time::timeout(Duration::from_secs(5), write).await {
                Ok(Ok(())) => done = true,
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "no answer within 5 s".into(),
            }
            if !done {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        if done {
            eprintln!(
                "t20_fuzz: region {} took a normal write {:.2} s after the fuzz",
                r.index,
                t0.elapsed().as_secs_f64()
            );
        } else {
            after.push(format!(
                "region {}: no normal write succeeded within {AFTER_WRITE_WITHIN:?} after the fuzz: {last}",
                r.index
            ));
        }
    }

    // The report: every finding, grouped (same RPC, identity and problem) with one example of the values.
    let findings = ctx.findings.lock().unwrap().clone();
    let mut groups: BTreeMap<(String, String), (usize, Finding)> = BTreeMap::new();
    for f in findings {
        let problem: String = f.what.chars().take(60).collect();
        let key = (
            format!(
                "{} as {:?}{}",
                f.rpc,
                f.who,
                if f.raw { " (malformed bytes)" } else { "" }
            ),
            problem,
        );
        groups.entry(key).or_insert((0, f)).0 += 1;
    }
    if !groups.is_empty() || !after.is_empty() {
        let mut report = format!(
            "t20_fuzz (seed {seed}): {} kinds of finding\n",
            groups.len()
        );
        for ((rpc, _), (n, f)) in &groups {
            report.push_str(&format!(
                "- {rpc}: {} (x{n}; e.g. call #{} with {})\n",
                f.what, f.index, f.values
            ));
        }
        for a in &after {
            report.push_str(&format!("- AFTER: {a}\n"));
        }
        panic!("{report}replay with INGOT_FUZZ_SEED={seed}");
    }
}
