//! The command envelope: the only payload of a Raft log entry (etcd's pattern). Everything that changes
//! replicated state is one [`Command`], applied by [`crate::apply::apply`]. Time, ids and secrets' hashes are
//! chosen by the proposing region and carried inside the command, so applying it is deterministic.

pub mod op;

use ingot_common::model::{DeploySpec, EraseMode, Pool, PowerCommand, Rack, Tag, User};
use ingot_common::{DomainError, Machine, RegionInfo, Zone};
use serde::{Deserialize, Serialize};

/// One replicated write.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Command {
    /// Unique per client operation (random, chosen at the API edge). A command proposed twice — a retry
    /// after a leader died mid-write — is applied once: the second time the first answer is returned.
    pub request_id: String,
    /// Wall-clock time at the proposer (ms since epoch); the apply step's only notion of "now".
    pub ts_ms: u64,
    /// Who asked (the user of an API token, or an internal proposer's name such as `region` or
    /// `rack:NAME`): recorded in events and power commands, and the name ownership checks compare.
    pub actor: String,
    /// What to do.
    pub op: Op,
    /// How the proposing region authenticated `actor`; the apply step checks it again against the
    /// replicated state and authorizes `op` by it (`apply::authz`). `None` only in entries written
    /// before principals existed (absent from their JSON, and left out when written back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<Principal>,
}

impl Command {
    /// A command from `actor`, authenticated as `principal`, with a fresh request id and the proposer's
    /// current time: how every proposer (API calls, agent reports, rack sessions, the leader's worker)
    /// makes one.
    pub fn new(actor: impl Into<String>, principal: Principal, op: Op) -> Command {
        Command {
            request_id: ingot_common::secret::generate(""),
            ts_ms: ingot_common::now_ms(),
            actor: actor.into(),
            op,
            principal: Some(principal),
        }
    }
}

/// Who a command acts for, as the region that built it authenticated the caller: an API bearer token,
/// or one of the cluster's own proposers. Carried in the command so that apply — which sees only the
/// command and the state — can check the token again (exists, unrevoked, unexpired, its user's current
/// role) and refuse what the caller may not do, also when the region that authenticated it lagged.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// A caller holding an API bearer token.
    Token {
        /// The token's public id (what `ListTokens` shows); apply finds the token by it.
        id: String,
        /// The user the token resolved to at the API edge; apply refuses the command if the token
        /// belongs to someone else or the command's `actor` is not this user.
        user: String,
    },
    /// One of the cluster's own proposers, which hold no API token.
    Internal(Internal),
}

/// The cluster's own proposers: each authenticated by its own means, each allowed a few operations
/// (the table in `apply::authz`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Internal {
    /// `ingot-region init`: the cluster's first entry.
    Init,
    /// The leader's worker: deadlines, rack-less power steps, BMC ownership.
    Region,
    /// A rack controller over its session (mutual TLS with its rack certificate).
    Rack,
    /// A machine's in-band agent, by its per-boot token (the op names the boot; apply checks it is the
    /// machine's current one).
    Agent,
    /// A region asking to join with a join token (the op carries the token's hash; apply checks it).
    JoiningRegion,
    /// A rack enrolling with an enrollment token (the op carries the token's hash; apply checks it).
    EnrollingRack,
}

/// The operations: one variant per operation, each around its own struct in [`op`] (named after it), so
/// the apply step has one handler per operation taking exactly that operation. Variants are only ever
/// added (never renumbered or removed): old logs must stay readable. The serde form of a newtype variant
/// around a struct is the one the struct variants it replaced had (`{"CreateZone":{"name":..}}`).
#[derive(Serialize, Deserialize, Clone, Debug)]
#[allow(missing_docs)] // each variant's struct in `op` says what it does
pub enum Op {
    Bootstrap(op::Bootstrap),
    CreateMachine(op::CreateMachine),
    UpdateMachine(op::UpdateMachine),
    DeleteMachine(op::DeleteMachine),
    CreateZone(op::CreateZone),
    UpdateZone(op::UpdateZone),
    DeleteZone(op::DeleteZone),
    CreateJoinToken(op::CreateJoinToken),
    AdmitRegion(op::AdmitRegion),
    ForgetRegion(op::ForgetRegion),
    MachineAction(op::MachineAction),
    Allocate(op::Allocate),
    Outcome(op::Outcome),
    ReportInventory(op::ReportInventory),
    ReportProgress(op::ReportProgress),
    CreatePool(op::CreatePool),
    UpdatePool(op::UpdatePool),
    DeletePool(op::DeletePool),
    CreateTag(op::CreateTag),
    UpdateTag(op::UpdateTag),
    DeleteTag(op::DeleteTag),
    CreateUser(op::CreateUser),
    UpdateUser(op::UpdateUser),
    DeleteUser(op::DeleteUser),
    CreateToken(op::CreateToken),
    RevokeToken(op::RevokeToken),
    UpdateSettings(op::UpdateSettings),
    CreateRackToken(op::CreateRackToken),
    RegisterRack(op::RegisterRack),
    RevokeRack(op::RevokeRack),
    RackConnected(op::RackConnected),
    RackHeartbeat(op::RackHeartbeat),
    RackDisconnected(op::RackDisconnected),
    QueuePower(op::QueuePower),
    PowerResult(op::PowerResult),
    PowerObserved(op::PowerObserved),
    AssignBmcs(op::AssignBmcs),
    IssueBootToken(op::IssueBootToken),
    CreateSubnet(op::CreateSubnet),
    UpdateSubnet(op::UpdateSubnet),
    DeleteSubnet(op::DeleteSubnet),
    CommitLeases(op::CommitLeases),
    EnlistMachines(op::EnlistMachines),
    PutImage(op::PutImage),
    DeleteImage(op::DeleteImage),
    RecordBlobs(op::RecordBlobs),
    RecordBootEvents(op::RecordBootEvents),
    ClaimBoot(op::ClaimBoot),
}

/// The error field that marks an allocation conflict: a candidate was taken between the proposer's
/// choice and the apply step. The proposer picks again.
pub const CONFLICT_FIELD: &str = "candidates";

/// Credentials of a boot the command may start, generated by the proposer (the apply step never makes
/// up random values).
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct BootTokens {
    /// Random boot id.
    pub boot_id: String,
    /// A plaintext per-boot token, from a proposer that still put one in the log; new commands leave it
    /// empty (the token is issued later, and only its hash is logged: [`op::IssueBootToken`]). The apply
    /// step stores only its hash. (Always written, empty, so old entries round-trip byte for byte.)
    #[serde(default)]
    pub token: String,
}

impl BootTokens {
    /// A fresh random boot id; the boot's token is issued when its credentials are read.
    pub fn generate() -> BootTokens {
        BootTokens {
            boot_id: ingot_common::secret::generate(""),
            token: String::new(),
        }
    }
}

/// One BMC reading by a rack's power monitor.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct PowerObservation {
    /// The machine.
    pub system_id: String,
    /// `on` / `off` when the query succeeded; empty on failure.
    pub power_state: String,
    /// Failure class (`unreachable`, `auth`, `unsupported`, `bmc`); empty on success.
    pub error_kind: String,
    /// The driver's message on failure.
    pub message: String,
    /// When the rack read it.
    pub observed_ms: u64,
}

/// Parameters of a [`op::MachineAction`]; each action reads the ones it needs.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct ActionArgs {
    /// Operator comment: recorded in the event (and as the status message for mark-broken).
    #[serde(default)]
    pub comment: String,
    /// set-zone target.
    #[serde(default)]
    pub zone: String,
    /// set-pool target.
    #[serde(default)]
    pub pool: String,
    /// tag/untag names.
    #[serde(default)]
    pub tags: Vec<String>,
    /// What deploy installs.
    #[serde(default)]
    pub deploy: Option<DeploySpec>,
    /// Release erase mode.
    #[serde(default)]
    pub erase: EraseMode,
    /// Credentials of the boot the action starts, if it starts one.
    #[serde(default)]
    pub boot: BootTokens,
}

/// What a successful command returns.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[allow(missing_docs)]
pub enum Reply {
    Done,
    Machine(Box<Machine>),
    Zone(Zone),
    Region(RegionInfo),
    /// The machines an allocation got, and whether the request id had been served before.
    Allocated(Vec<Machine>, bool),
    Pool(Pool),
    Tag(Tag),
    User(User),
    Rack(Box<Rack>),
    /// A power command (queued, or its recorded result). Serde keeps the name it had, `Command`: answers
    /// are part of snapshots (the dedup window).
    #[serde(rename = "Command")]
    PowerCommand(Box<PowerCommand>),
    /// A boot network as created or changed.
    Subnet(Box<ingot_common::net::Subnet>),
    /// The leases of an `Op::CommitLeases` that were refused, each with why; every other lease of the
    /// batch is recorded.
    LeasesCommitted(Vec<RefusedLease>),
    /// An operation that was refused on purpose and recorded (an event) rather than failed: why.
    Refused(String),
}

/// A lease a rack's commit could not record, and why (the rack answers that client with DHCPNAK).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RefusedLease {
    /// The lease's address.
    pub ip: std::net::Ipv4Addr,
    /// Why, for the rack's log and the operator (e.g. `held by 52:54:00:00:00:01 until ...`).
    pub reason: String,
}

/// The answer to one command.
pub type Response = Result<Reply, DomainError>;

/// The payload of one Raft log entry (openraft's `D`): commands proposed together and applied in order.
/// Group commit: under load the proposer packs every command that arrived while the previous entry was
/// being committed into the next one, so one fsync and one replication round serve many writes.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(transparent)]
pub struct Batch(pub Vec<Command>);

/// The state machine's answer to one log entry (openraft's `R`): one [`Response`] per command of the
/// batch; blank and membership entries answer an empty list.
pub type Responses = Vec<Response>;

/// Most commands in one log entry.
pub const MAX_BATCH: usize = 1024;

/// Largest command the proposer accepts, in bytes of its JSON (the form the log stores and replicates).
/// Every request field is capped at the API edge (`ingot_common::validate::limits`), which keeps the
/// largest legitimate command (an inventory with every string at its cap, JSON-escaped at worst) near
/// 2.5 MB; this cap is the defence in depth that keeps any entry within one Raft message
/// (`raft::network::MAX_MESSAGE`).
pub const COMMAND_MAX_BYTES: usize = 4 * 1024 * 1024;

/// A log entry's byte budget: the proposer closes a batch before the next command would take it past
/// this (a single command up to [`COMMAND_MAX_BYTES`] still makes an entry of its own). Typical commands
/// are a few hundred bytes, so [`MAX_BATCH`] of them fit easily; the budget only binds for large ones.
pub const BATCH_MAX_BYTES: usize = 4 * 1024 * 1024;

/// The revision of a change: log index and position in the entry's batch, so every change has its own,
/// increasing with the log (`index * 10_000 + position`).
pub fn revision(index: u64, position: usize) -> u64 {
    index * 10_000 + position as u64
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ingot_common::power::PowerAction;

    /// Commands as the struct-variant `Op` of earlier versions wrote them (one per operation; captured
    /// from that code): they must read back and write out byte for byte, since they sit in Raft logs.
    pub(crate) const OLD_FORMAT: &[&str] = &[
        r##"{"request_id":"rq0","ts_ms":1000,"actor":"admin","op":{"Bootstrap":{"cluster_id":"c1","ca":{"cert_pem":"CERT","key_pem":"KEY"},"admin_token_hash":"h","first_region":{"node_id":1,"name":"r1","raft_addr":"10.0.0.1:7001","api_addr":"10.0.0.1:7000","joined_ms":5}}}}"##,
        r##"{"request_id":"rq1","ts_ms":1001,"actor":"admin","op":{"CreateMachine":{"system_id":"abc123","hostname":"n1","arch":"amd64/generic","zone":"default","macs":["52:54:00:00:00:01"],"power":{"driver":"ipmi","params":{"address":"10.0.0.1"}},"description":"d","pool":"p1"}}}"##,
        r##"{"request_id":"rq2","ts_ms":1002,"actor":"admin","op":{"UpdateMachine":{"system_id":"abc123","hostname":"n2","arch":null,"zone":null,"description":"x","power":{"driver":"ipmi","params":{"address":"10.0.0.1"}},"macs":["52:54:00:00:00:02"],"expected_revision":7}}}"##,
        r##"{"request_id":"rq3","ts_ms":1003,"actor":"admin","op":{"DeleteMachine":{"system_id":"abc123","expected_revision":0}}}"##,
        r##"{"request_id":"rq4","ts_ms":1004,"actor":"admin","op":{"CreateZone":{"name":"z1","description":"zone"}}}"##,
        r##"{"request_id":"rq5","ts_ms":1005,"actor":"admin","op":{"UpdateZone":{"name":"z1","description":null,"new_name":"z2"}}}"##,
        r##"{"request_id":"rq6","ts_ms":1006,"actor":"admin","op":{"DeleteZone":{"name":"z2"}}}"##,
        r##"{"request_id":"rq7","ts_ms":1007,"actor":"admin","op":{"CreateJoinToken":{"token_hash":"jt","expires_ms":100}}}"##,
        r##"{"request_id":"rq8","ts_ms":1008,"actor":"admin","op":{"AdmitRegion":{"token_hash":"jt","name":"r2","raft_addr":"a","api_addr":"b"}}}"##,
        r##"{"request_id":"rq9","ts_ms":1009,"actor":"admin","op":{"ForgetRegion":{"node_id":2}}}"##,
        r##"{"request_id":"rq10","ts_ms":1010,"actor":"admin","op":{"MachineAction":{"system_id":"abc123","action":"Deploy","expected_revision":3,"args":{"comment":"c","zone":"z","pool":"p","tags":["t1"],"deploy":{"osystem":"ubuntu","distro_series":"noble","user_data":"#cloud-config"},"erase":"Quick","boot":{"boot_id":"b1","token":"boot_t1"}}}}}"##,
        r##"{"request_id":"rq11","ts_ms":1011,"actor":"admin","op":{"MachineAction":{"system_id":"abc123","action":"MarkBroken","expected_revision":0,"args":{"comment":"","zone":"","pool":"","tags":[],"deploy":null,"erase":"None","boot":{"boot_id":"","token":""}}}}}"##,
        r##"{"request_id":"rq12","ts_ms":1012,"actor":"admin","op":{"Allocate":{"request_id":"req1","consumer":"k8s","constraints":{"arch":"amd64","min_cpu_count":4,"min_memory_mib":0,"storage":[],"tags":["ssd"],"not_tags":[],"zones":[],"not_in_zones":[],"pools":[],"not_in_pools":[],"hostname":"","system_id":"","min_nic_count":0,"min_nic_speed_mbps":0},"min_zones":2,"candidates":["abc123","def456"],"count":2}}}"##,
        r##"{"request_id":"rq13","ts_ms":1013,"actor":"admin","op":{"Outcome":{"system_id":"abc123","status":"Commissioning","boot_id":"b1","outcome":"TimedOut","reason":"late","next_boot":{"boot_id":"b2","token":"boot_t2"}}}}"##,
        r##"{"request_id":"rq14","ts_ms":1014,"actor":"admin","op":{"ReportInventory":{"system_id":"abc123","boot_id":"b1","inventory":{"cpu_count":8,"cpu_model":"","memory_mib":16384,"disks":[],"nics":[],"firmware":{"boot_mode":"","vendor":"","version":""},"dmi":{}}}}}"##,
        r##"{"request_id":"rq15","ts_ms":1015,"actor":"admin","op":{"ReportProgress":{"system_id":"abc123","boot_id":"b1","message":"curtin","percent":40}}}"##,
        r##"{"request_id":"rq16","ts_ms":1016,"actor":"admin","op":{"CreatePool":{"name":"p1","description":"pool"}}}"##,
        r##"{"request_id":"rq17","ts_ms":1017,"actor":"admin","op":{"UpdatePool":{"name":"p1","description":null}}}"##,
        r##"{"request_id":"rq18","ts_ms":1018,"actor":"admin","op":{"DeletePool":{"name":"p1"}}}"##,
        r##"{"request_id":"rq19","ts_ms":1019,"actor":"admin","op":{"CreateTag":{"name":"big","definition":"cpu_count >= 8","comment":""}}}"##,
        r##"{"request_id":"rq20","ts_ms":1020,"actor":"admin","op":{"UpdateTag":{"name":"big","definition":"","comment":null}}}"##,
        r##"{"request_id":"rq21","ts_ms":1021,"actor":"admin","op":{"DeleteTag":{"name":"big"}}}"##,
        r##"{"request_id":"rq22","ts_ms":1022,"actor":"admin","op":{"CreateUser":{"name":"u1","role":"user"}}}"##,
        r##"{"request_id":"rq23","ts_ms":1023,"actor":"admin","op":{"UpdateUser":{"name":"u1","role":"admin"}}}"##,
        r##"{"request_id":"rq24","ts_ms":1024,"actor":"admin","op":{"DeleteUser":{"name":"u1"}}}"##,
        r##"{"request_id":"rq25","ts_ms":1025,"actor":"admin","op":{"CreateToken":{"id":"tok1","token_hash":"th","user":"u1","description":"ci","expires_ms":99}}}"##,
        r##"{"request_id":"rq26","ts_ms":1026,"actor":"admin","op":{"RevokeToken":{"id":"tok1"}}}"##,
        r##"{"request_id":"rq27","ts_ms":1027,"actor":"admin","op":{"UpdateSettings":{"deadlines":[["Commissioning",600],["Deploying",0]]}}}"##,
        r##"{"request_id":"rq28","ts_ms":1028,"actor":"admin","op":{"CreateRackToken":{"token_hash":"rt","expires_ms":100}}}"##,
        r##"{"request_id":"rq29","ts_ms":1029,"actor":"admin","op":{"RegisterRack":{"token_hash":"rt","name":"ra","zone":"default"}}}"##,
        r##"{"request_id":"rq30","ts_ms":1030,"actor":"admin","op":{"RevokeRack":{"name":"ra"}}}"##,
        r##"{"request_id":"rq31","ts_ms":1031,"actor":"admin","op":{"RackConnected":{"name":"ra","session":{"session_id":"s1","region_id":1,"region_name":"r1","version":"0.1","services":["power"],"drivers":["ipmi"],"connected_ms":1,"last_heartbeat_ms":2,"ended_ms":null}}}}"##,
        r##"{"request_id":"rq32","ts_ms":1032,"actor":"admin","op":{"RackHeartbeat":{"name":"ra","session_id":"s1"}}}"##,
        r##"{"request_id":"rq33","ts_ms":1033,"actor":"admin","op":{"RackDisconnected":{"name":"ra","session_id":"s1","last_seen_ms":42}}}"##,
        r##"{"request_id":"rq34","ts_ms":1034,"actor":"admin","op":{"QueuePower":{"system_id":"abc123","action":"boot-pxe"}}}"##,
        r##"{"request_id":"rq35","ts_ms":1035,"actor":"admin","op":{"QueuePower":{"system_id":"abc123","action":"soft-off"}}}"##,
        r##"{"request_id":"rq36","ts_ms":1036,"actor":"admin","op":{"PowerResult":{"id":9,"rack":"ra","success":false,"error_kind":"auth","message":"denied","power_state":"","next_boot":{"boot_id":"b3","token":"boot_t3"}}}}"##,
        r##"{"request_id":"rq37","ts_ms":1037,"actor":"admin","op":{"PowerObserved":{"rack":"ra","items":[{"system_id":"abc123","power_state":"on","error_kind":"","message":"","observed_ms":77}]}}}"##,
        r##"{"request_id":"rq38","ts_ms":1038,"actor":"admin","op":{"AssignBmcs":{"moves":[["abc123","ra"],["def456",null]]}}}"##,
    ];

    #[test]
    fn commands_written_by_earlier_versions_round_trip_byte_for_byte() {
        for json in OLD_FORMAT {
            let c: Command = serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(serde_json::to_string(&c).expect("serialize"), *json);
        }
        let ops: std::collections::BTreeSet<String> = OLD_FORMAT
            .iter()
            .map(|j| {
                let v: serde_json::Value = serde_json::from_str(j).expect("json");
                v["op"]
                    .as_object()
                    .and_then(|o| o.keys().next().cloned())
                    .expect("tag")
            })
            .collect();
        assert_eq!(ops.len(), 37, "every operation is covered: {ops:?}");
    }

    #[test]
    fn fields_added_later_default_when_an_old_entry_lacks_them() {
        let c: Command = serde_json::from_str(
            r#"{"request_id":"","ts_ms":1,"actor":"a","op":{"CreateMachine":{"system_id":"abc123","hostname":"n1","arch":"amd64/generic","zone":"default","macs":["52:54:00:00:00:01"],"power":{"driver":"","params":{}},"description":""}}}"#,
        )
        .expect("CreateMachine without pool");
        let Op::CreateMachine(m) = &c.op else {
            panic!("{c:?}")
        };
        assert_eq!(m.pool, None);
        assert!(serde_json::to_string(&c)
            .expect("serialize")
            .ends_with(r#""description":"","pool":null}}}"#));
        let c: Command = serde_json::from_str(
            r#"{"request_id":"","ts_ms":1,"actor":"a","op":{"RackDisconnected":{"name":"ra","session_id":"s1"}}}"#,
        )
        .expect("RackDisconnected without last_seen_ms");
        assert!(matches!(&c.op, Op::RackDisconnected(d) if d.last_seen_ms == 0));
        let c: Command = serde_json::from_str(
            r#"{"request_id":"","ts_ms":1,"actor":"a","op":{"PowerResult":{"id":9,"rack":"ra","success":true,"error_kind":"","message":"","power_state":"on"}}}"#,
        )
        .expect("PowerResult without next_boot");
        assert!(matches!(&c.op, Op::PowerResult(r) if r.next_boot.boot_id.is_empty()));
        let c: Command = serde_json::from_str(
            r#"{"request_id":"","ts_ms":1,"actor":"a","op":{"MachineAction":{"system_id":"abc123","action":"Release","expected_revision":0,"args":{"comment":"bye"}}}}"#,
        )
        .expect("MachineAction with sparse args");
        let Op::MachineAction(a) = &c.op else {
            panic!("{c:?}")
        };
        assert_eq!(
            (a.args.comment.as_str(), a.args.erase, a.args.tags.len()),
            ("bye", EraseMode::None, 0)
        );
        let c: Command = serde_json::from_str(OLD_FORMAT[34]).expect("QueuePower");
        assert!(matches!(&c.op, Op::QueuePower(q) if q.action == PowerAction::BootPxe));
        // An action that is not a power action never reached the log (the API edge parses it).
        assert!(serde_json::from_str::<Command>(
            r#"{"request_id":"","ts_ms":1,"actor":"a","op":{"QueuePower":{"system_id":"abc123","action":"explode"}}}"#
        )
        .is_err());
    }

    #[test]
    fn a_power_command_reply_keeps_its_serde_name() {
        // Answers are kept in snapshots (the dedup window): the variant renamed PowerCommand still
        // reads and writes as "Command".
        let json = r#"{"Ok":{"Command":{"id":4,"system_id":"abc123","action":"boot-pxe","actor":"admin","state":"pending","rack":"ra","message":"","error_kind":"","power_state":"","created_ms":10,"done_ms":null,"step":"Commissioning","completes":false}}}"#;
        let r: Response = serde_json::from_str(json).expect("reply");
        let Ok(Reply::PowerCommand(c)) = &r else {
            panic!("{r:?}")
        };
        assert_eq!(c.action, PowerAction::BootPxe);
        assert_eq!(serde_json::to_string(&r).expect("serialize"), json);
    }
}
