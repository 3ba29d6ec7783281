//! Random and boundary values for the API fuzzer (`tests/tests/t20_fuzz.rs`), and the pieces it needs that
//! the generated clients do not give: the list of every RPC in `proto/`, and a codec that sends raw bytes
//! (malformed protobuf) to any method.
//!
//! A [`Gen`] is seeded per call, so a call is replayed by its seed alone. Every value it makes is recorded
//! in [`Gen::trace`] as (field, value class), so a finding names the field and the kind of value that
//! caused it ("hostname=nul-ctrl", "macs=huge-list") without printing megabytes of input.

use prost::bytes::{Buf, BufMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::path::Path;

/// Names and ids that exist in the fuzzed cluster, so that a share of the calls gets past the lookups and
/// reaches the deeper code (validation of the other fields, apply, the state machine). Fixed before the
/// fuzz starts: generation then depends only on the seed.
#[derive(Clone, Debug, Default)]
pub struct Known {
    /// System ids of machines the fuzz may change, delete, allocate...
    pub system_ids: Vec<String>,
    /// Their hostnames.
    pub hostnames: Vec<String>,
    /// Their MACs.
    pub macs: Vec<String>,
    /// Zone names.
    pub zones: Vec<String>,
    /// Pool names.
    pub pools: Vec<String>,
    /// Tag names.
    pub tags: Vec<String>,
    /// User names the fuzz may use in lookups (never the fixture's own identities in destructive calls).
    pub users: Vec<String>,
    /// Rack names.
    pub racks: Vec<String>,
    /// Consumers machines were allocated to.
    pub consumers: Vec<String>,
    /// Power command ids.
    pub power_ids: Vec<u64>,
    /// Region node ids (members).
    pub node_ids: Vec<u64>,
}

/// Which set of known values a string field draws from when it picks an existing one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A free text (description, comment, message): no known values.
    Text,
    /// A machine's system id.
    SystemId,
    /// A machine's hostname.
    Hostname,
    /// A MAC address.
    Mac,
    /// A zone name.
    Zone,
    /// A pool name.
    Pool,
    /// A tag name.
    Tag,
    /// A user name.
    User,
    /// A rack name.
    Rack,
    /// A consumer.
    Consumer,
    /// A power action or power state word.
    PowerWord,
    /// A kebab-case machine status name (settings keys).
    StatusName,
    /// A power driver name.
    Driver,
    /// A host:port address.
    Addr,
    /// A PEM document (CSR).
    Pem,
    /// A tag definition expression.
    TagExpr,
    /// IPv4 network text: a CIDR, an address or an address range (subnets' fields).
    Net,
}

/// A source of random and boundary values for one call.
pub struct Gen {
    rng: StdRng,
    known: std::sync::Arc<Known>,
    /// (field, value class) of every value made so far, in order.
    pub trace: Vec<(String, &'static str)>,
    /// Inside a huge list: strings stay short and nested lists small, so one message stays a few MiB.
    in_huge_list: bool,
}

/// Bytes of the largest strings sent: 1 MiB and 8 MiB (the second is above every decoding limit a
/// region should keep, the first above every field's legitimate size).
pub const MIB: usize = 1024 * 1024;

/// Kebab-case names of the in-progress statuses (the settings' keys).
const STATUS_NAMES: &[&str] = &[
    "commissioning",
    "testing",
    "deploying",
    "releasing",
    "disk-erasing",
    "entering-rescue-mode",
    "exiting-rescue-mode",
];
const POWER_WORDS: &[&str] = &[
    "on",
    "off",
    "soft-off",
    "cycle",
    "query",
    "boot-pxe",
    "boot-disk",
    "boot-pxe-persistent",
    "boot-disk-persistent",
    "unknown",
    "pending",
    "done",
    "failed",
    "unreachable",
    "auth",
    "bmc",
];
const DRIVERS: &[&str] = &["ipmi", "redfish", "webhook", "manual", "sim", ""];
/// Network texts at and past the edges of what subnets accept (`10.99.0.0/24` is the fuzz fixture's
/// subnet).
const NETS: &[&str] = &[
    "10.99.0.0/24",
    "10.99.0.1",
    "10.99.0.100-10.99.0.199",
    "10.99.0.0-10.99.0.255",
    "10.99.0.200-10.99.0.100",
    "10.99.0.5/24",
    "10.0.0.0/8",
    "0.0.0.0/0",
    "255.255.255.255/32",
    "10.0.0.0/7",
    "10.0.0.0/31",
    "10.0.0.0/33",
    "10.0.0.0/255",
    "10.0.0.0/-1",
    "10.0.0.0/",
    "/24",
    "10.0.0.256/24",
    "4294967296.0.0.0/8",
    "0.0.0.0",
    "255.255.255.255",
    "224.0.0.1",
    "10.99.0.1-",
    "-10.99.0.1",
    "10.99.0.1--10.99.0.2",
    "fd00::/64",
    "::1",
];
const TAG_EXPRS: &[&str] = &[
    "cpu_count >= 16",
    "memory_mib >= 65536 && any(disks, size_gib >= 900 && !rotational)",
    "any(disks, any(disks, any(disks, size_gib > 0)))",
    "cpu_count >= 18446744073709551615",
    "cpu_count >= 99999999999999999999999999",
    "cpu_count >= -9223372036854775808",
    "((((((((((((((((((((((((((((((((cpu_count))))))))))))))))))))))))))))))))",
    "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!cpu_count",
    "cpu_count / 0 > 1",
    "dmi[\"x\"] == \"\\u0000\"",
    "any(",
    "",
];
/// Short strings that have broken parsers elsewhere.
const NASTY: &[&str] = &[
    "../../../../etc/passwd",
    "%s%s%s%n%x",
    "' OR 1=1 --",
    "\u{202e}gnp.exe",
    "a\nb\r\nc",
    "default",
    "DEFAULT",
    "-",
    "--",
    ".",
    "a b",
    "İ",
    "ﬃ",
    "\u{feff}",
    "\u{10ffff}",
    "🦀🦀🦀",
    "e\u{301}\u{301}\u{301}\u{301}",
    "${jndi:ldap://x}",
    "<script>",
    "\\",
    "\"",
    "00:00:00:00:00:00",
    "ff:ff:ff:ff:ff:ff",
    "01:00:5e:00:00:01",
    "0:0:0:0:0:0",
    "02-00-00-00-00-01",
    "0200.0000.0001",
    "::1",
    "[::1]:0",
    "127.0.0.1:0",
    "127.0.0.1:65536",
    "host:",
    ":1",
    "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
];

impl Gen {
    /// A generator seeded with `seed`, drawing existing names from `known`.
    pub fn new(seed: u64, known: std::sync::Arc<Known>) -> Gen {
        Gen {
            rng: StdRng::seed_from_u64(seed),
            known,
            trace: Vec::new(),
            in_huge_list: false,
        }
    }

    /// The known values, for callers that choose among them.
    pub fn known(&self) -> &Known {
        &self.known
    }

    fn note(&mut self, field: &str, class: &'static str) {
        self.trace.push((field.to_string(), class));
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.rng.gen_bool(p.clamp(0.0, 1.0))
    }

    /// A uniform integer in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.rng.gen_range(0..n.max(1))
    }

    /// One element of `items` (which must not be empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// The notable part of the trace (classes other than plain valid values), as `field=class` pairs.
    pub fn summary(&self) -> String {
        let notable: Vec<String> = self
            .trace
            .iter()
            .filter(|(_, c)| !matches!(*c, "known" | "plain" | "empty" | "small" | "valid"))
            .map(|(f, c)| format!("{f}={c}"))
            .collect();
        if notable.is_empty() {
            "plain values".to_string()
        } else if notable.len() > 12 {
            format!(
                "{} ... ({} more)",
                notable[..12].join(" "),
                notable.len() - 12
            )
        } else {
            notable.join(" ")
        }
    }

    fn known_string(&mut self, kind: Kind) -> Option<String> {
        let k = self.known.clone();
        let list: Vec<String> = match kind {
            Kind::Text | Kind::Addr | Kind::Pem => return None,
            Kind::SystemId => k.system_ids.clone(),
            Kind::Hostname => k.hostnames.clone(),
            Kind::Mac => k.macs.clone(),
            Kind::Zone => k.zones.clone(),
            Kind::Pool => k.pools.clone(),
            Kind::Tag => k.tags.clone(),
            Kind::User => k.users.clone(),
            Kind::Rack => k.racks.clone(),
            Kind::Consumer => k.consumers.clone(),
            Kind::PowerWord => POWER_WORDS.iter().map(|s| s.to_string()).collect(),
            Kind::StatusName => STATUS_NAMES.iter().map(|s| s.to_string()).collect(),
            Kind::Driver => DRIVERS.iter().map(|s| s.to_string()).collect(),
            Kind::TagExpr => TAG_EXPRS.iter().map(|s| s.to_string()).collect(),
            Kind::Net => NETS.iter().map(|s| s.to_string()).collect(),
        };
        if list.is_empty() {
            None
        } else {
            Some(self.pick(&list).clone())
        }
    }

    /// A plausible fresh value of `kind` (a new DNS label, a fresh MAC, ...).
    fn plain(&mut self, kind: Kind) -> String {
        let n: u32 = self.rng.gen();
        match kind {
            Kind::Mac => format!(
                "0e:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                self.rng.gen::<u8>(),
                self.rng.gen::<u8>(),
                self.rng.gen::<u8>(),
                self.rng.gen::<u8>(),
                self.rng.gen::<u8>()
            ),
            Kind::Addr => format!("127.0.0.1:{}", n % 65536),
            Kind::SystemId => format!("{:06x}", n % 0x100_0000),
            Kind::Net => format!("10.{}.{}.0/24", (n >> 8) % 256, n % 256),
            _ => format!("fz{n:x}"),
        }
    }

    /// A string for `field`: an existing value of `kind` (often), a plausible new one, or one of the
    /// boundary classes — empty, names at the length limits, control characters and NUL, odd Unicode,
    /// injection-like text, 64 KiB, 1 MiB and (rarely) 8 MiB.
    pub fn string(&mut self, field: &str, kind: Kind) -> String {
        let roll = self
            .rng
            .gen_range(0..if self.in_huge_list { 860 } else { 1000 });
        let (class, s) = match roll {
            0..=299 => match self.known_string(kind) {
                Some(s) => ("known", s),
                None => ("plain", self.plain(kind)),
            },
            300..=399 => ("empty", String::new()),
            400..=519 => ("plain", self.plain(kind)),
            520..=579 => {
                let len = *self.pick(&[62usize, 63, 64, 65, 128, 129, 255, 256, 257]);
                ("length-limit", "a".repeat(len))
            }
            580..=689 => {
                let len = self.rng.gen_range(1..40);
                let s: String = (0..len)
                    .map(|_| {
                        let c = self.rng.gen_range(0u32..0x20);
                        char::from_u32(c).unwrap_or('\0')
                    })
                    .collect();
                ("nul-ctrl", format!("x{s}\0\u{7f}"))
            }
            690..=759 => {
                let len = self.rng.gen_range(1..30);
                let s: String = (0..len)
                    .map(|_| loop {
                        let c = self.rng.gen_range(0x80u32..0x11_0000);
                        if let Some(c) = char::from_u32(c) {
                            break c;
                        }
                    })
                    .collect();
                ("unicode", s)
            }
            760..=859 => ("nasty", self.pick(NASTY).to_string()),
            860..=929 => {
                let len = self.rng.gen_range(1..300);
                let s: String = (0..len)
                    .map(|_| self.rng.gen_range(0x20u8..0x7f) as char)
                    .collect();
                ("ascii", s)
            }
            930..=969 => ("64KiB", "k".repeat(64 * 1024)),
            970..=997 => ("1MiB", "m".repeat(MIB)),
            _ => ("8MiB", "g".repeat(8 * MIB)),
        };
        self.note(field, class);
        s
    }

    /// Like [`Gen::string`] but never larger than 64 KiB (for fields repeated many times).
    pub fn small_string(&mut self, field: &str, kind: Kind) -> String {
        loop {
            let before = self.trace.len();
            let s = self.string(field, kind);
            if s.len() <= 64 * 1024 {
                return s;
            }
            self.trace.truncate(before);
        }
    }

    /// A `u64`: 0, 1, small, the maxima of every integer width, i64 limits, 2^53, or random.
    pub fn u64(&mut self, field: &str) -> u64 {
        let (class, v) = match self.rng.gen_range(0..12) {
            0 => ("zero", 0),
            1 => ("small", self.rng.gen_range(1..10)),
            2 | 3 => ("u64::MAX", u64::MAX),
            4 => ("u64::MAX-1", u64::MAX - 1),
            5 => ("i64::MAX", i64::MAX as u64),
            6 => ("i64::MIN", 1u64 << 63),
            7 => ("u32::MAX+1", 1u64 << 32),
            8 => ("2^53+1", (1u64 << 53) + 1),
            9 => ("small", self.rng.gen_range(10..100_000)),
            _ => ("random", self.rng.gen()),
        };
        self.note(field, class);
        v
    }

    /// A `u32`: 0, 1, small, i32::MAX, u32::MAX, the 300/301 wait boundary, or random.
    pub fn u32(&mut self, field: &str) -> u32 {
        let (class, v) = match self.rng.gen_range(0..10) {
            0 => ("zero", 0),
            1 | 2 => ("small", self.rng.gen_range(1..10)),
            3 | 4 => ("u32::MAX", u32::MAX),
            5 => ("i32::MAX", i32::MAX as u32),
            6 => ("i32::MAX+1", 1u32 << 31),
            7 => (
                "boundary",
                *self.pick(&[100, 300, 301, 1000, 1001, 10_000, 10_001]),
            ),
            _ => ("random", self.rng.gen()),
        };
        self.note(field, class);
        v
    }

    /// A `u32` that is usually small: a wait in seconds (a large one would only make the fuzz wait).
    pub fn wait_seconds(&mut self, field: &str) -> u32 {
        if self.chance(0.85) {
            self.note(field, "zero");
            0
        } else {
            let v = *self.pick(&[1, 2, 301, u32::MAX]);
            self.note(field, if v > 300 { "over-limit" } else { "small" });
            v
        }
    }

    /// An enum number: a valid one (`0..count`), or -1, i32::MIN/MAX, or just past the last value.
    pub fn enumeration(&mut self, field: &str, count: i32) -> i32 {
        let (class, v) = match self.rng.gen_range(0..8) {
            0..=3 => ("valid", self.rng.gen_range(0..count.max(1))),
            4 => ("unknown-enum", count),
            5 => ("negative-enum", -1),
            6 => ("i32::MIN-enum", i32::MIN),
            _ => ("i32::MAX-enum", i32::MAX),
        };
        self.note(field, class);
        v
    }

    /// A boolean.
    pub fn bool(&mut self) -> bool {
        self.rng.gen()
    }

    /// A list of `item`s: empty, a few, or (rarely) a huge one of 20,000 short entries (a few MiB: above
    /// any sensible cap, yet quick to make in a debug build).
    pub fn list<T>(&mut self, field: &str, mut item: impl FnMut(&mut Gen) -> T) -> Vec<T> {
        let n = match self
            .rng
            .gen_range(0..if self.in_huge_list { 17 } else { 20 })
        {
            0..=5 => 0,
            6..=16 => self.rng.gen_range(1..4),
            17 | 18 => self.rng.gen_range(100..2_000),
            _ => 20_000,
        };
        if n >= 100 {
            self.note(field, "huge-list");
        }
        let before = self.trace.len();
        let outer = self.in_huge_list;
        self.in_huge_list = outer || n >= 100;
        let out = (0..n).map(|_| item(self)).collect();
        self.in_huge_list = outer;
        if n >= 100 {
            // The items of a huge list would drown the summary: keep the list's class only.
            self.trace.truncate(before);
        }
        out
    }

    /// A timestamp: valid, before the epoch, at the i64 limits, or with out-of-range nanoseconds.
    pub fn timestamp(&mut self, field: &str) -> Option<prost_types::Timestamp> {
        let (class, ts) = match self.rng.gen_range(0..9) {
            0 | 1 => ("none", None),
            2 => ("valid", Some((1_700_000_000, 0))),
            3 => ("i64::MIN-seconds", Some((i64::MIN, 0))),
            4 => ("i64::MAX-seconds", Some((i64::MAX, 999_999_999))),
            5 => ("negative-nanos", Some((0, -1))),
            6 => ("nanos-over", Some((1_700_000_000, i32::MAX))),
            7 => ("i32::MIN-nanos", Some((-1, i32::MIN))),
            _ => ("before-epoch", Some((-62_135_596_800, 0))),
        };
        self.note(field, class);
        ts.map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos })
    }

    /// Bytes for a `bytes` field that a region decodes as JSON: garbage, invalid UTF-8, JSON that is valid
    /// but of the wrong shape, deeply nested, or huge.
    pub fn json_bytes(&mut self, field: &str) -> Vec<u8> {
        let (class, b): (&'static str, Vec<u8>) = match self.rng.gen_range(0..14) {
            0 => ("empty", Vec::new()),
            1 => (
                "random-bytes",
                (0..self.rng.gen_range(1..200))
                    .map(|_| self.rng.gen())
                    .collect(),
            ),
            2 => ("invalid-utf8", vec![b'"', 0xff, 0xfe, 0xc3, 0x28, b'"']),
            3 => ("json-null", b"null".to_vec()),
            4 => ("json-empty-object", b"{}".to_vec()),
            5 => ("deep-nesting", {
                let d = 100_000;
                let mut v = vec![b'['; d];
                v.extend(std::iter::repeat_n(b']', d));
                v
            }),
            6 => ("deep-object-nesting", b"{\"a\":".repeat(10_000)),
            7 => (
                "huge-number",
                format!("1{}", "0".repeat(100_000)).into_bytes(),
            ),
            8 => ("json-nul-string", b"\"\\u0000\\ud800\"".to_vec()),
            9 => ("1MiB", format!("\"{}\"", "j".repeat(MIB)).into_bytes()),
            10 => (
                "wrong-shape",
                br#"{"vote":{"leader_id":{"term":-1,"node_id":"x"}},"entries":[null]}"#.to_vec(),
            ),
            11 => (
                "wrong-shape",
                br#"{"Write":{"op":null},"actor":{"Admin":7}}"#.to_vec(),
            ),
            12 => (
                "u64-overflow",
                br#"{"term":18446744073709551616,"index":-1}"#.to_vec(),
            ),
            _ => ("truncated", br#"{"leader_id":{"term":1,"#.to_vec()),
        };
        self.note(field, class);
        b
    }

    /// Bytes for an opaque `bytes` field (snapshot data): empty, random, invalid UTF-8, or 1 MiB.
    pub fn bytes(&mut self, field: &str) -> Vec<u8> {
        let (class, b) = match self.rng.gen_range(0..5) {
            0 => ("empty", Vec::new()),
            1 | 2 => (
                "random-bytes",
                (0..self.rng.gen_range(1..500))
                    .map(|_| self.rng.gen())
                    .collect(),
            ),
            3 => ("invalid-utf8", vec![0xff; 64]),
            _ => ("1MiB", vec![0u8; MIB]),
        };
        self.note(field, class);
        b
    }

    /// Malformed protobuf for any message: random bytes, truncated or over-long varints, lengths beyond
    /// the end, invalid UTF-8 in string fields, wrong wire types, deep nesting of messages and groups,
    /// unknown enum numbers, a huge unknown field.
    pub fn raw_protobuf(&mut self) -> Vec<u8> {
        let field = self.rng.gen_range(1u64..12);
        let tag = |wire: u64| encode_varint((field << 3) | wire);
        let (class, b): (&'static str, Vec<u8>) = match self.rng.gen_range(0..12) {
            0 => (
                "random-bytes",
                (0..self.rng.gen_range(1..300))
                    .map(|_| self.rng.gen())
                    .collect(),
            ),
            1 => (
                "truncated-varint",
                [tag(0), vec![0xff, 0xff, 0xff]].concat(),
            ),
            2 => (
                "overlong-varint",
                [tag(0), vec![0xff; 10], vec![0x01]].concat(),
            ),
            3 => (
                "length-beyond-end",
                [tag(2), encode_varint(u32::MAX as u64), b"abc".to_vec()].concat(),
            ),
            4 => (
                "invalid-utf8",
                [tag(2), vec![4, 0xc3, 0x28, 0xff, 0xfe]].concat(),
            ),
            5 => (
                "wrong-wire-type",
                [tag(1), vec![0; 8], tag(5), vec![0; 4]].concat(),
            ),
            6 => ("deep-nesting", {
                // Field `field` holding a message holding a message... 5,000 deep.
                let mut v = Vec::new();
                for _ in 0..5_000 {
                    v = [tag(2), encode_varint(v.len() as u64), v].concat();
                }
                v
            }),
            7 => ("deep-groups", {
                let n = 50_000;
                let start = encode_varint((15 << 3) | 3);
                let end = encode_varint((15 << 3) | 4);
                [start.repeat(n), end.repeat(n)].concat()
            }),
            8 => (
                "unknown-enum",
                [tag(0), encode_varint(i64::MIN as u64)].concat(),
            ),
            9 => (
                "huge-unknown-field",
                [
                    encode_varint((999 << 3) | 2),
                    encode_varint(2 * MIB as u64),
                    vec![7; 2 * MIB],
                ]
                .concat(),
            ),
            10 => ("end-group-without-start", tag(4)),
            _ => ("field-zero", vec![0x00, 0x01]),
        };
        self.note("message", class);
        b
    }
}

/// The protobuf base-128 varint encoding of `v`.
pub fn encode_varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

/// A gRPC codec that sends and receives raw bytes, so the fuzzer can send any bytes to any method.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawCodec;

/// The encoder half of [`RawCodec`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RawEncoder;

/// The decoder half of [`RawCodec`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut v = vec![0; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

/// One RPC as declared in a `.proto` file.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rpc {
    /// `package.Service`, e.g. `ingot.v1.ZoneService`.
    pub service: String,
    /// The method name, e.g. `CreateZone`.
    pub method: String,
    /// The request is a stream.
    pub client_streaming: bool,
    /// The response is a stream.
    pub server_streaming: bool,
}

impl Rpc {
    /// The gRPC path, `/package.Service/Method`.
    pub fn path(&self) -> String {
        format!("/{}/{}", self.service, self.method)
    }
}

/// Every RPC declared in the `.proto` files under `dir` (recursively), read from the text: `package`,
/// `service X {` and `rpc M(stream? A) returns (stream? B)`. The fuzzer enumerates its calls from this, so
/// an RPC added to a file is fuzzed (or the fuzz fails for want of a generator) without anyone
/// remembering to add it.
pub fn proto_rpcs(dir: &Path) -> anyhow::Result<BTreeSet<Rpc>> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "proto") {
                let text = std::fs::read_to_string(&p)?;
                out.extend(parse_proto(&text));
            }
        }
    }
    Ok(out)
}

/// The RPCs of one `.proto` text (comments removed first).
fn parse_proto(text: &str) -> Vec<Rpc> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut package = String::new();
    let mut service: Option<String> = None;
    let mut depth = 0i32;
    let mut out = Vec::new();
    // Tokenise on whitespace and punctuation, keeping the punctuation that matters.
    let spaced = code
        .replace('{', " { ")
        .replace('}', " } ")
        .replace('(', " ( ")
        .replace(')', " ) ")
        .replace(';', " ; ");
    let toks: Vec<&str> = spaced.split_whitespace().collect();
    let mut i = 0;
    while i < toks.len() {
        match toks[i] {
            "package" if depth == 0 => {
                package = toks.get(i + 1).unwrap_or(&"").to_string();
                i += 2;
                continue;
            }
            "service" if depth == 0 => {
                service = toks.get(i + 1).map(|s| s.to_string());
                i += 2;
                continue;
            }
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if depth == 0 {
                    service = None;
                }
            }
            "rpc" if depth == 1 && service.is_some() => {
                // rpc Name ( [stream] Req ) returns ( [stream] Resp )
                let name = toks.get(i + 1).unwrap_or(&"").to_string();
                let mut j = i + 3;
                let client_streaming = toks.get(j) == Some(&"stream");
                while j < toks.len() && toks[j] != "returns" {
                    j += 1;
                }
                let server_streaming = toks.get(j + 2) == Some(&"stream");
                out.push(Rpc {
                    service: format!("{package}.{}", service.clone().unwrap_or_default()),
                    method: name,
                    client_streaming,
                    server_streaming,
                });
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Where the fuzzer's 1 MiB and 8 MiB filler strings (runs of `m` or `g`) were stored under `dir` (a
/// region's data directory: its Raft log, blobs and snapshots): for each, the file and the name of the
/// command (`"op":{"Name"`) that carried it, when the text shows one. A value that size reaching the log
/// means no byte cap was checked before proposing.
pub fn oversized_in_data_dir(dir: &Path) -> Vec<(std::path::PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let Ok(b) = std::fs::read(&p) else {
                continue;
            };
            let mut i = 0;
            while i < b.len() {
                let c = b[i];
                if c != b'm' && c != b'g' {
                    i += 1;
                    continue;
                }
                let start = i;
                while i < b.len() && b[i] == c {
                    i += 1;
                }
                if i - start >= MIB {
                    let before = &b[start.saturating_sub(4096)..start];
                    let text = String::from_utf8_lossy(before);
                    let op = text
                        .rfind("\"op\":{\"")
                        .map(|k| {
                            text[k + 7..]
                                .chars()
                                .take_while(|ch| ch.is_ascii_alphanumeric())
                                .collect::<String>()
                        })
                        .unwrap_or_else(|| "unknown command".to_string());
                    out.push((p.clone(), op));
                }
            }
        }
    }
    out
}

/// The lines of `path` (a process log) that report a panic (`panicked at`), without colour sequences.
pub fn panics_in_log(path: &Path) -> Vec<String> {
    crate::log_lines(path, "panicked")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_services_and_streaming() {
        let rpcs = parse_proto(
            "package a.b;\n// service Fake { rpc No(X) returns (Y); }\nservice S {\n  // rpc Commented(X) returns (Y);\n  rpc One(A) returns (B);\n  rpc Two(stream A) returns (stream B);\n}\nmessage M { string rpc = 1; }\n",
        );
        assert_eq!(rpcs.len(), 2, "{rpcs:?}");
        assert_eq!(rpcs[0].path(), "/a.b.S/One");
        assert!(!rpcs[0].client_streaming && !rpcs[0].server_streaming);
        assert!(rpcs[1].client_streaming && rpcs[1].server_streaming);
    }

    #[test]
    fn varints_round_trip() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let b = encode_varint(v);
            assert_eq!(
                prost::encoding::decode_varint(&mut b.as_slice()).unwrap(),
                v
            );
        }
    }
}
