//! Tag definitions: boolean expressions over a machine's inventory.
//!
//! An operator defines a tag such as
//! `cpu_count >= 16 && memory_mib >= 65536 && any(disks, size_gib >= 900 && !rotational)` and the tag
//! applies to exactly the machines the expression matches. The region re-evaluates one tag against every
//! machine when the definition changes, and every tag against one machine when its inventory changes, so
//! an expression is parsed and type-checked once ([`TagExpr::parse`]) into a tree that
//! [`TagExpr::matches`] walks without parsing or allocating. Evaluation is deterministic: it reads only
//! the machine it is given.
//!
//! # Grammar
//!
//! ```text
//! expr    := and ("||" and)*
//! and     := cmp ("&&" cmp)*
//! cmp     := unary (("==" | "!=" | "<" | "<=" | ">" | ">=") unary)?
//! unary   := "!" unary | primary
//! primary := INT | STRING | "true" | "false" | FIELD | "(" expr ")"
//!          | ("any" | "all" | "count") "(" ("disks" | "nics") "," expr ")"
//!          | ("contains" | "starts_with") "(" expr "," STRING ")"
//! ```
//!
//! Integers are unsigned 64-bit decimals and may contain `_` separators (`65_536`). Strings are in
//! double quotes with `\"` and `\\` as the only escapes. String comparisons are exact and byte-wise
//! (ordering is lexicographic). Booleans compare with `==` and `!=` only; comparisons do not chain.
//!
//! # Fields
//!
//! Machine fields: integers `cpu_count`, `memory_mib`, `storage_gib` (sum of disk sizes), `disk_count`,
//! `nic_count`; strings `cpu_model`, `arch`, `hostname`, `zone`, `pool`, `boot_mode`, `firmware_vendor`,
//! `firmware_version` and `dmi.<key>` (empty when the key is absent). Inside `any`/`all`/`count` over
//! `disks`: `name`, `size_gib`, `rotational`, `model`, `serial`; over `nics`: `name`, `mac`,
//! `speed_mbps`, `link`. Machine fields remain visible inside these functions; list functions do not
//! nest. A machine without inventory has zeros, empty strings and empty lists.

use crate::model::{Disk, Inventory, Machine, Nic};
use crate::DomainError;
use std::cmp::Ordering;

/// The longest accepted definition, in bytes: definitions are stored in every replicated tag record.
pub const MAX_SOURCE_LEN: usize = crate::validate::limits::TAG_DEFINITION;

/// The deepest accepted nesting of parentheses, `!` and function calls: parsing and evaluation recurse
/// once per level, and the bound keeps both far from the end of any thread's stack.
pub const MAX_DEPTH: usize = 64;

/// Why a definition was rejected, and where: `position` is the byte offset in the source of the
/// offending token, so an editor or CLI can point at it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at {position}: {message}")]
pub struct ExprError {
    /// Byte offset of the offending token in the source.
    pub position: usize,
    /// What was found and what was expected instead.
    pub message: String,
}

/// Validates a tag definition received in request field `field`, turning a parse error into the
/// [`DomainError`] the API returns (it names the field and keeps the byte position in the message).
pub fn check(field: &str, src: &str) -> Result<TagExpr, DomainError> {
    TagExpr::parse(src)
        .map_err(|e| DomainError::invalid(field, format!("invalid tag definition {e}")))
}

/// A compiled, type-checked tag definition: parse it once, then call [`TagExpr::matches`] on as many
/// machines as needed.
#[derive(Clone, Debug)]
pub struct TagExpr {
    root: BoolNode,
}

impl TagExpr {
    /// Parses and type-checks a definition. Errors carry the byte position of the offending token and
    /// say what was expected there.
    pub fn parse(src: &str) -> Result<TagExpr, ExprError> {
        if src.len() > MAX_SOURCE_LEN {
            return Err(ExprError {
                position: MAX_SOURCE_LEN,
                message: format!(
                    "definition is {} bytes long; at most {MAX_SOURCE_LEN} are allowed",
                    src.len()
                ),
            });
        }
        let tokens = lex(src)?;
        let mut p = Parser {
            tokens,
            idx: 0,
            depth: 0,
            scope: Scope::Machine,
        };
        let (expr, pos) = p.parse_or()?;
        let next = p.peek();
        if next.tok != Tok::Eof {
            return Err(err(
                next.pos,
                format!(
                    "unexpected {}; expected '&&', '||' or the end of the definition",
                    next.tok.describe()
                ),
            ));
        }
        let root = expect_bool(expr, pos, "a tag definition")?;
        Ok(TagExpr { root })
    }

    /// True when the machine satisfies the definition. Does not allocate.
    pub fn matches(&self, m: &Machine) -> bool {
        let ctx = Ctx {
            m,
            inv: m.inventory.as_ref(),
            disk: None,
            nic: None,
        };
        self.root.eval(&ctx)
    }
}

fn err(position: usize, message: impl Into<String>) -> ExprError {
    ExprError {
        position,
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------------------------------
// Compiled form
// ---------------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum List {
    Disks,
    Nics,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    fn holds(self, o: Ordering) -> bool {
        match self {
            CmpOp::Eq => o == Ordering::Equal,
            CmpOp::Ne => o != Ordering::Equal,
            CmpOp::Lt => o == Ordering::Less,
            CmpOp::Le => o != Ordering::Greater,
            CmpOp::Gt => o == Ordering::Greater,
            CmpOp::Ge => o != Ordering::Less,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IntField {
    CpuCount,
    MemoryMib,
    StorageGib,
    DiskCount,
    NicCount,
    DiskSize,
    NicSpeed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StrField {
    CpuModel,
    Arch,
    Hostname,
    Zone,
    Pool,
    BootMode,
    FirmwareVendor,
    FirmwareVersion,
    DiskName,
    DiskModel,
    DiskSerial,
    NicName,
    NicMac,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BoolField {
    DiskRotational,
    NicLink,
}

#[derive(Clone, Debug)]
enum BoolNode {
    Const(bool),
    Field(BoolField),
    Not(Box<BoolNode>),
    And(Vec<BoolNode>),
    Or(Vec<BoolNode>),
    CmpInt(IntNode, CmpOp, IntNode),
    CmpStr(StrNode, CmpOp, StrNode),
    CmpBool(Box<BoolNode>, CmpOp, Box<BoolNode>),
    Any(List, Box<BoolNode>),
    All(List, Box<BoolNode>),
    Contains(StrNode, Box<str>),
    StartsWith(StrNode, Box<str>),
}

#[derive(Clone, Debug)]
enum IntNode {
    Const(u64),
    Field(IntField),
    Count(List, Box<BoolNode>),
}

#[derive(Clone, Debug)]
enum StrNode {
    Const(Box<str>),
    Field(StrField),
    Dmi(Box<str>),
}

/// What an evaluation can see: the machine, and the disk or NIC a list function is visiting.
struct Ctx<'a> {
    m: &'a Machine,
    inv: Option<&'a Inventory>,
    disk: Option<&'a Disk>,
    nic: Option<&'a Nic>,
}

impl<'a> Ctx<'a> {
    fn disks(&self) -> &'a [Disk] {
        self.inv.map(|i| i.disks.as_slice()).unwrap_or(&[])
    }
    fn nics(&self) -> &'a [Nic] {
        self.inv.map(|i| i.nics.as_slice()).unwrap_or(&[])
    }
    fn with_disk(&self, d: &'a Disk) -> Ctx<'a> {
        Ctx {
            m: self.m,
            inv: self.inv,
            disk: Some(d),
            nic: None,
        }
    }
    fn with_nic(&self, n: &'a Nic) -> Ctx<'a> {
        Ctx {
            m: self.m,
            inv: self.inv,
            disk: None,
            nic: Some(n),
        }
    }
}

impl BoolNode {
    fn eval(&self, c: &Ctx<'_>) -> bool {
        match self {
            BoolNode::Const(b) => *b,
            BoolNode::Field(BoolField::DiskRotational) => c.disk.is_some_and(|d| d.rotational),
            BoolNode::Field(BoolField::NicLink) => c.nic.is_some_and(|n| n.link),
            BoolNode::Not(x) => !x.eval(c),
            BoolNode::And(xs) => xs.iter().all(|x| x.eval(c)),
            BoolNode::Or(xs) => xs.iter().any(|x| x.eval(c)),
            BoolNode::CmpInt(a, op, b) => op.holds(a.eval(c).cmp(&b.eval(c))),
            BoolNode::CmpStr(a, op, b) => op.holds(a.eval(c).cmp(b.eval(c))),
            BoolNode::CmpBool(a, op, b) => op.holds(a.eval(c).cmp(&b.eval(c))),
            BoolNode::Any(List::Disks, body) => {
                c.disks().iter().any(|d| body.eval(&c.with_disk(d)))
            }
            BoolNode::Any(List::Nics, body) => c.nics().iter().any(|n| body.eval(&c.with_nic(n))),
            BoolNode::All(List::Disks, body) => {
                c.disks().iter().all(|d| body.eval(&c.with_disk(d)))
            }
            BoolNode::All(List::Nics, body) => c.nics().iter().all(|n| body.eval(&c.with_nic(n))),
            BoolNode::Contains(s, lit) => s.eval(c).contains(&**lit),
            BoolNode::StartsWith(s, lit) => s.eval(c).starts_with(&**lit),
        }
    }
}

impl IntNode {
    fn eval(&self, c: &Ctx<'_>) -> u64 {
        match self {
            IntNode::Const(n) => *n,
            IntNode::Field(f) => match f {
                IntField::CpuCount => c.inv.map_or(0, |i| u64::from(i.cpu_count)),
                IntField::MemoryMib => c.inv.map_or(0, |i| i.memory_mib),
                IntField::StorageGib => c
                    .disks()
                    .iter()
                    .fold(0u64, |acc, d| acc.saturating_add(d.size_gib)),
                IntField::DiskCount => c.disks().len() as u64,
                IntField::NicCount => c.nics().len() as u64,
                IntField::DiskSize => c.disk.map_or(0, |d| d.size_gib),
                IntField::NicSpeed => c.nic.map_or(0, |n| n.speed_mbps),
            },
            IntNode::Count(List::Disks, body) => c
                .disks()
                .iter()
                .filter(|d| body.eval(&c.with_disk(d)))
                .count() as u64,
            IntNode::Count(List::Nics, body) => c
                .nics()
                .iter()
                .filter(|n| body.eval(&c.with_nic(n)))
                .count() as u64,
        }
    }
}

impl StrNode {
    fn eval<'a>(&'a self, c: &Ctx<'a>) -> &'a str {
        match self {
            StrNode::Const(s) => s,
            StrNode::Dmi(key) => c
                .inv
                .and_then(|i| i.dmi.get(&**key))
                .map_or("", String::as_str),
            StrNode::Field(f) => match f {
                StrField::CpuModel => c.inv.map_or("", |i| i.cpu_model.as_str()),
                StrField::Arch => &c.m.arch,
                StrField::Hostname => &c.m.hostname,
                StrField::Zone => &c.m.zone,
                StrField::Pool => &c.m.pool,
                StrField::BootMode => c.inv.map_or("", |i| i.firmware.boot_mode.as_str()),
                StrField::FirmwareVendor => c.inv.map_or("", |i| i.firmware.vendor.as_str()),
                StrField::FirmwareVersion => c.inv.map_or("", |i| i.firmware.version.as_str()),
                StrField::DiskName => c.disk.map_or("", |d| d.name.as_str()),
                StrField::DiskModel => c.disk.map_or("", |d| d.model.as_str()),
                StrField::DiskSerial => c.disk.map_or("", |d| d.serial.as_str()),
                StrField::NicName => c.nic.map_or("", |n| n.name.as_str()),
                StrField::NicMac => c.nic.map_or("", |n| n.mac.as_str()),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Fields
// ---------------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Int(IntField),
    Str(StrField),
    Bool(BoolField),
}

const MACHINE_FIELDS: &[(&str, Field)] = &[
    ("cpu_count", Field::Int(IntField::CpuCount)),
    ("memory_mib", Field::Int(IntField::MemoryMib)),
    ("storage_gib", Field::Int(IntField::StorageGib)),
    ("disk_count", Field::Int(IntField::DiskCount)),
    ("nic_count", Field::Int(IntField::NicCount)),
    ("cpu_model", Field::Str(StrField::CpuModel)),
    ("arch", Field::Str(StrField::Arch)),
    ("hostname", Field::Str(StrField::Hostname)),
    ("zone", Field::Str(StrField::Zone)),
    ("pool", Field::Str(StrField::Pool)),
    ("boot_mode", Field::Str(StrField::BootMode)),
    ("firmware_vendor", Field::Str(StrField::FirmwareVendor)),
    ("firmware_version", Field::Str(StrField::FirmwareVersion)),
];

const DISK_FIELDS: &[(&str, Field)] = &[
    ("name", Field::Str(StrField::DiskName)),
    ("size_gib", Field::Int(IntField::DiskSize)),
    ("rotational", Field::Bool(BoolField::DiskRotational)),
    ("model", Field::Str(StrField::DiskModel)),
    ("serial", Field::Str(StrField::DiskSerial)),
];

const NIC_FIELDS: &[(&str, Field)] = &[
    ("name", Field::Str(StrField::NicName)),
    ("mac", Field::Str(StrField::NicMac)),
    ("speed_mbps", Field::Int(IntField::NicSpeed)),
    ("link", Field::Bool(BoolField::NicLink)),
];

const FUNCTIONS: &[&str] = &["any", "all", "count", "contains", "starts_with"];

/// Where the parser is: at machine level, or inside a list function over disks or NICs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    Machine,
    Disk,
    Nic,
}

impl Scope {
    fn own_fields(self) -> &'static [(&'static str, Field)] {
        match self {
            Scope::Machine => &[],
            Scope::Disk => DISK_FIELDS,
            Scope::Nic => NIC_FIELDS,
        }
    }

    fn lookup(self, name: &str) -> Option<Field> {
        self.own_fields()
            .iter()
            .chain(MACHINE_FIELDS)
            .find(|(n, _)| *n == name)
            .map(|(_, f)| *f)
    }

    fn known_fields(self) -> String {
        let mut names: Vec<&str> = self
            .own_fields()
            .iter()
            .chain(MACHINE_FIELDS)
            .map(|(n, _)| *n)
            .collect();
        names.push("dmi.<key>");
        names.join(", ")
    }
}

/// Levenshtein distance, for "did you mean" hints on unknown names (short inputs only).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

fn suggestion<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    if name.len() > 64 {
        return String::new();
    }
    let best = candidates
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, c)| {
            let common = name
                .bytes()
                .zip(c.bytes())
                .take_while(|(a, b)| a == b)
                .count();
            *d <= 2.max(c.len() / 3) || (common >= 3 && common + 1 >= name.len())
        })
        .min_by_key(|(d, _)| *d);
    match best {
        Some((_, c)) => format!(" (did you mean '{c}'?)"),
        None => String::new(),
    }
}

// ---------------------------------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    OrOr,
    AndAnd,
    Not,
    Cmp(CmpOp),
    LParen,
    RParen,
    Comma,
    Int(u64),
    Str(String),
    Ident(String),
    Eof,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::OrOr => "'||'".into(),
            Tok::AndAnd => "'&&'".into(),
            Tok::Not => "'!'".into(),
            Tok::Cmp(op) => format!("'{}'", op_str(*op)),
            Tok::LParen => "'('".into(),
            Tok::RParen => "')'".into(),
            Tok::Comma => "','".into(),
            Tok::Int(n) => format!("integer {n}"),
            Tok::Str(_) => "a string literal".into(),
            Tok::Ident(s) => format!("'{s}'"),
            Tok::Eof => "end of definition".into(),
        }
    }
}

fn op_str(op: CmpOp) -> &'static str {
    match op {
        CmpOp::Eq => "==",
        CmpOp::Ne => "!=",
        CmpOp::Lt => "<",
        CmpOp::Le => "<=",
        CmpOp::Gt => ">",
        CmpOp::Ge => ">=",
    }
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    pos: usize,
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_ident_continue(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn char_at(src: &str, pos: usize) -> char {
    src.get(pos..)
        .and_then(|s| s.chars().next())
        .unwrap_or('\u{FFFD}')
}

fn lex(src: &str) -> Result<Vec<Token>, ExprError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let start = i;
        let two = |c: u8| bytes.get(i + 1) == Some(&c);
        let tok = match b {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => {
                i += 1;
                Tok::LParen
            }
            b')' => {
                i += 1;
                Tok::RParen
            }
            b',' => {
                i += 1;
                Tok::Comma
            }
            b'|' if two(b'|') => {
                i += 2;
                Tok::OrOr
            }
            b'&' if two(b'&') => {
                i += 2;
                Tok::AndAnd
            }
            b'|' => return Err(err(start, "unexpected '|'; expected '||' (or)")),
            b'&' => return Err(err(start, "unexpected '&'; expected '&&' (and)")),
            b'!' if two(b'=') => {
                i += 2;
                Tok::Cmp(CmpOp::Ne)
            }
            b'!' => {
                i += 1;
                Tok::Not
            }
            b'=' if two(b'=') => {
                i += 2;
                Tok::Cmp(CmpOp::Eq)
            }
            b'=' => return Err(err(start, "unexpected '='; expected '==' (equality)")),
            b'<' if two(b'=') => {
                i += 2;
                Tok::Cmp(CmpOp::Le)
            }
            b'<' => {
                i += 1;
                Tok::Cmp(CmpOp::Lt)
            }
            b'>' if two(b'=') => {
                i += 2;
                Tok::Cmp(CmpOp::Ge)
            }
            b'>' => {
                i += 1;
                Tok::Cmp(CmpOp::Gt)
            }
            b'"' => {
                let (s, end) = lex_string(src, start)?;
                i = end;
                Tok::Str(s)
            }
            b'0'..=b'9' => {
                while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'_') {
                    i += 1;
                }
                if i < bytes.len() && (is_ident_continue(bytes[i]) || bytes[i] == b'.') {
                    return Err(err(
                        start,
                        "invalid integer: expected decimal digits with optional '_' separators \
                         (no units, signs or fractions)",
                    ));
                }
                let mut n: u64 = 0;
                for &d in &bytes[start..i] {
                    if d == b'_' {
                        continue;
                    }
                    n = n
                        .checked_mul(10)
                        .and_then(|n| n.checked_add(u64::from(d - b'0')))
                        .ok_or_else(|| {
                            err(start, format!("integer is larger than {}", u64::MAX))
                        })?;
                }
                Tok::Int(n)
            }
            b if is_ident_start(b) => {
                while i < bytes.len() && is_ident_continue(bytes[i]) {
                    i += 1;
                }
                // Dotted names (`dmi.product_name`); keys may also contain '-'.
                while i + 1 < bytes.len()
                    && bytes[i] == b'.'
                    && (is_ident_continue(bytes[i + 1]) || bytes[i + 1] == b'-')
                {
                    i += 1;
                    while i < bytes.len() && (is_ident_continue(bytes[i]) || bytes[i] == b'-') {
                        i += 1;
                    }
                }
                Tok::Ident(src[start..i].to_string())
            }
            _ => {
                return Err(err(
                    start,
                    format!(
                    "unexpected character '{}'; expected a field, literal, operator or parenthesis",
                    char_at(src, start).escape_default()
                ),
                ))
            }
        };
        out.push(Token { tok, pos: start });
    }
    out.push(Token {
        tok: Tok::Eof,
        pos: src.len(),
    });
    Ok(out)
}

/// Reads the string literal whose opening quote is at `start`; returns its value and the offset after
/// the closing quote.
fn lex_string(src: &str, start: usize) -> Result<(String, usize), ExprError> {
    let bytes = src.as_bytes();
    let mut out = String::new();
    let mut seg = start + 1;
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                out.push_str(&src[seg..i]);
                return Ok((out, i + 1));
            }
            b'\\' => {
                out.push_str(&src[seg..i]);
                match bytes.get(i + 1) {
                    Some(b'"') => out.push('"'),
                    Some(b'\\') => out.push('\\'),
                    Some(_) => {
                        return Err(err(
                            i,
                            format!(
                                "unknown escape '\\{}' in string; only \\\" and \\\\ are allowed",
                                char_at(src, i + 1).escape_default()
                            ),
                        ))
                    }
                    None => break,
                }
                i += 2;
                seg = i;
            }
            _ => i += 1,
        }
    }
    Err(err(start, "unterminated string: expected a closing '\"'"))
}

// ---------------------------------------------------------------------------------------------------
// Parser and type checker
// ---------------------------------------------------------------------------------------------------

#[derive(Debug)]
enum Typed {
    Bool(BoolNode),
    Int(IntNode),
    Str(StrNode),
}

impl Typed {
    fn type_name(&self) -> &'static str {
        match self {
            Typed::Bool(_) => "a boolean",
            Typed::Int(_) => "an integer",
            Typed::Str(_) => "a string",
        }
    }
}

fn expect_bool(t: Typed, pos: usize, what: &str) -> Result<BoolNode, ExprError> {
    match t {
        Typed::Bool(b) => Ok(b),
        other => Err(err(
            pos,
            format!(
                "{what} must be a boolean expression, found {}",
                other.type_name()
            ),
        )),
    }
}

struct Parser {
    tokens: Vec<Token>,
    idx: usize,
    depth: usize,
    scope: Scope,
}

type Parsed = Result<(Typed, usize), ExprError>;

impl Parser {
    fn peek(&self) -> &Token {
        // The token list always ends with Eof and `bump` never moves past it.
        &self.tokens[self.idx.min(self.tokens.len() - 1)]
    }

    fn bump(&mut self) -> Token {
        let t = self.peek().clone();
        if self.idx + 1 < self.tokens.len() {
            self.idx += 1;
        }
        t
    }

    fn expect(&mut self, want: Tok, context: &str) -> Result<Token, ExprError> {
        let t = self.bump();
        if t.tok == want {
            Ok(t)
        } else {
            Err(err(
                t.pos,
                format!(
                    "expected {} {context}, found {}",
                    want.describe(),
                    t.tok.describe()
                ),
            ))
        }
    }

    fn enter(&mut self, pos: usize) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(err(
                pos,
                format!("expression is nested more than {MAX_DEPTH} levels deep"),
            ));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn parse_or(&mut self) -> Parsed {
        let (first, pos) = self.parse_and()?;
        if self.peek().tok != Tok::OrOr {
            return Ok((first, pos));
        }
        let mut items = vec![expect_bool(first, pos, "the left operand of '||'")?];
        while self.peek().tok == Tok::OrOr {
            self.bump();
            let (next, npos) = self.parse_and()?;
            items.push(expect_bool(next, npos, "an operand of '||'")?);
        }
        Ok((Typed::Bool(BoolNode::Or(items)), pos))
    }

    fn parse_and(&mut self) -> Parsed {
        let (first, pos) = self.parse_cmp()?;
        if self.peek().tok != Tok::AndAnd {
            return Ok((first, pos));
        }
        let mut items = vec![expect_bool(first, pos, "the left operand of '&&'")?];
        while self.peek().tok == Tok::AndAnd {
            self.bump();
            let (next, npos) = self.parse_cmp()?;
            items.push(expect_bool(next, npos, "an operand of '&&'")?);
        }
        Ok((Typed::Bool(BoolNode::And(items)), pos))
    }

    fn parse_cmp(&mut self) -> Parsed {
        let (lhs, pos) = self.parse_unary()?;
        let Tok::Cmp(op) = self.peek().tok else {
            return Ok((lhs, pos));
        };
        let op_pos = self.bump().pos;
        let (rhs, _) = self.parse_unary()?;
        if let Tok::Cmp(_) = self.peek().tok {
            return Err(err(
                self.peek().pos,
                "comparisons do not chain: combine them with '&&' (e.g. 4 <= cpu_count && cpu_count <= 8)",
            ));
        }
        let node = match (lhs, rhs) {
            (Typed::Int(a), Typed::Int(b)) => BoolNode::CmpInt(a, op, b),
            (Typed::Str(a), Typed::Str(b)) => BoolNode::CmpStr(a, op, b),
            (Typed::Bool(a), Typed::Bool(b)) => {
                if !matches!(op, CmpOp::Eq | CmpOp::Ne) {
                    return Err(err(
                        op_pos,
                        format!(
                            "booleans can only be compared with '==' or '!=', not '{}'",
                            op_str(op)
                        ),
                    ));
                }
                BoolNode::CmpBool(Box::new(a), op, Box::new(b))
            }
            (a, b) => {
                return Err(err(
                    op_pos,
                    format!(
                        "cannot compare {} with {}: both sides of '{}' must have the same type",
                        a.type_name(),
                        b.type_name(),
                        op_str(op)
                    ),
                ))
            }
        };
        Ok((Typed::Bool(node), pos))
    }

    fn parse_unary(&mut self) -> Parsed {
        if self.peek().tok != Tok::Not {
            return self.parse_primary();
        }
        let pos = self.bump().pos;
        self.enter(pos)?;
        let (inner, ipos) = self.parse_unary()?;
        let b = expect_bool(inner, ipos, "the operand of '!'")?;
        self.leave();
        Ok((Typed::Bool(BoolNode::Not(Box::new(b))), pos))
    }

    fn parse_primary(&mut self) -> Parsed {
        let t = self.bump();
        let pos = t.pos;
        match t.tok {
            Tok::Int(n) => Ok((Typed::Int(IntNode::Const(n)), pos)),
            Tok::Str(s) => Ok((Typed::Str(StrNode::Const(s.into_boxed_str())), pos)),
            Tok::LParen => {
                self.enter(pos)?;
                let (inner, _) = self.parse_or()?;
                self.expect(Tok::RParen, &format!("to close the '(' at {pos}"))?;
                self.leave();
                Ok((inner, pos))
            }
            Tok::Ident(name) => self.parse_name(name, pos),
            other => Err(err(
                pos,
                format!(
                    "expected a field, literal, function call, '!' or '(', found {}",
                    other.describe()
                ),
            )),
        }
    }

    fn parse_name(&mut self, name: String, pos: usize) -> Parsed {
        match name.as_str() {
            "true" => return Ok((Typed::Bool(BoolNode::Const(true)), pos)),
            "false" => return Ok((Typed::Bool(BoolNode::Const(false)), pos)),
            _ => {}
        }
        let is_call = self.peek().tok == Tok::LParen;
        if FUNCTIONS.contains(&name.as_str()) {
            if !is_call {
                return Err(err(
                    pos,
                    format!("'{name}' is a function: expected '(' after it"),
                ));
            }
            self.bump();
            self.enter(pos)?;
            let out = match name.as_str() {
                "contains" | "starts_with" => self.parse_string_fn(&name, pos),
                _ => self.parse_list_fn(&name, pos),
            }?;
            self.leave();
            return Ok(out);
        }
        if is_call {
            return Err(err(
                pos,
                format!(
                    "unknown function '{name}'{}; known functions: {}",
                    suggestion(&name, FUNCTIONS.iter().copied()),
                    FUNCTIONS.join(", ")
                ),
            ));
        }
        if name == "disks" || name == "nics" {
            return Err(err(
                pos,
                format!(
                    "'{name}' is a list: use any({name}, ...), all({name}, ...) or count({name}, ...)"
                ),
            ));
        }
        if let Some(key) = name.strip_prefix("dmi.") {
            return Ok((Typed::Str(StrNode::Dmi(key.into())), pos));
        }
        if let Some(f) = self.scope.lookup(&name) {
            return Ok((
                match f {
                    Field::Int(f) => Typed::Int(IntNode::Field(f)),
                    Field::Str(f) => Typed::Str(StrNode::Field(f)),
                    Field::Bool(f) => Typed::Bool(BoolNode::Field(f)),
                },
                pos,
            ));
        }
        let list_of = |fields: &[(&str, Field)]| fields.iter().any(|(n, _)| *n == name);
        let elsewhere = match self.scope {
            Scope::Machine if list_of(DISK_FIELDS) && list_of(NIC_FIELDS) => {
                Some("a disk and NIC field: use it inside any(disks, ...) or any(nics, ...)")
            }
            Scope::Machine | Scope::Nic if list_of(DISK_FIELDS) => Some(
                "a disk field: use it inside any(disks, ...), all(disks, ...) or count(disks, ...)",
            ),
            Scope::Machine | Scope::Disk if list_of(NIC_FIELDS) => Some(
                "a NIC field: use it inside any(nics, ...), all(nics, ...) or count(nics, ...)",
            ),
            _ => None,
        };
        if let Some(hint) = elsewhere {
            return Err(err(pos, format!("'{name}' is {hint}")));
        }
        let candidates = self
            .scope
            .own_fields()
            .iter()
            .chain(MACHINE_FIELDS)
            .map(|(n, _)| *n);
        Err(err(
            pos,
            format!(
                "unknown field '{name}'{}; known fields: {}",
                suggestion(&name, candidates),
                self.scope.known_fields()
            ),
        ))
    }

    /// `any|all|count ( list , expr )`, after the opening parenthesis.
    fn parse_list_fn(&mut self, name: &str, pos: usize) -> Parsed {
        if self.scope != Scope::Machine {
            return Err(err(
                pos,
                format!("'{name}' cannot be used inside another any/all/count: list functions do not nest"),
            ));
        }
        let lt = self.bump();
        let list = match &lt.tok {
            Tok::Ident(l) if l == "disks" => List::Disks,
            Tok::Ident(l) if l == "nics" => List::Nics,
            other => {
                return Err(err(
                    lt.pos,
                    format!(
                        "expected a list (disks or nics) as the first argument of {name}, found {}",
                        other.describe()
                    ),
                ))
            }
        };
        self.expect(Tok::Comma, &format!("after the list in {name}(...)"))?;
        self.scope = match list {
            List::Disks => Scope::Disk,
            List::Nics => Scope::Nic,
        };
        let body = self.parse_or();
        self.scope = Scope::Machine;
        let (body, bpos) = body?;
        let body = Box::new(expect_bool(
            body,
            bpos,
            &format!("the condition of {name}(...)"),
        )?);
        self.expect(Tok::RParen, &format!("to close {name}(...)"))?;
        let node = match name {
            "any" => Typed::Bool(BoolNode::Any(list, body)),
            "all" => Typed::Bool(BoolNode::All(list, body)),
            _ => Typed::Int(IntNode::Count(list, body)),
        };
        Ok((node, pos))
    }

    /// `contains|starts_with ( string_expr , "literal" )`, after the opening parenthesis.
    fn parse_string_fn(&mut self, name: &str, pos: usize) -> Parsed {
        let (arg, apos) = self.parse_or()?;
        let Typed::Str(s) = arg else {
            return Err(err(
                apos,
                format!(
                    "the first argument of {name}(...) must be a string, found {}",
                    arg.type_name()
                ),
            ));
        };
        self.expect(
            Tok::Comma,
            &format!("after the first argument of {name}(...)"),
        )?;
        let lt = self.bump();
        let Tok::Str(lit) = lt.tok else {
            return Err(err(
                lt.pos,
                format!(
                    "expected a string literal in double quotes as the second argument of {name}(...), found {}",
                    lt.tok.describe()
                ),
            ));
        };
        self.expect(Tok::RParen, &format!("to close {name}(...)"))?;
        let lit = lit.into_boxed_str();
        let node = if name == "contains" {
            BoolNode::Contains(s, lit)
        } else {
            BoolNode::StartsWith(s, lit)
        };
        Ok((Typed::Bool(node), pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Firmware;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// A machine built through serde so that fields added later with defaults do not break the tests.
    fn machine(inv: Option<Inventory>) -> Machine {
        let mut m: Machine = serde_json::from_value(serde_json::json!({
            "system_id": "abc123",
            "hostname": "node-1",
            "arch": "amd64/generic",
            "zone": "z1",
            "status": "Ready",
            "macs": [],
            "power": {"driver": "", "params": {}},
            "description": "",
            "created_ms": 0,
            "updated_ms": 0,
            "revision": 1,
        }))
        .unwrap();
        m.pool = "gpu".into();
        m.inventory = inv;
        m
    }

    fn disk(name: &str, size_gib: u64, rotational: bool) -> Disk {
        Disk {
            name: name.into(),
            size_gib,
            rotational,
            model: format!("model-{name}"),
            serial: format!("SN-{name}"),
            tags: vec![],
        }
    }

    fn nic(name: &str, speed_mbps: u64, link: bool) -> Nic {
        Nic {
            name: name.into(),
            mac: "52:54:00:00:00:01".into(),
            speed_mbps,
            link,
        }
    }

    fn big() -> Machine {
        let mut dmi = BTreeMap::new();
        dmi.insert("system_vendor".to_string(), "Dell Inc.".to_string());
        machine(Some(Inventory {
            cpu_count: 32,
            cpu_model: "Intel(R) Xeon(R) Gold 6338".into(),
            memory_mib: 131072,
            disks: vec![
                disk("sda", 480, false),
                disk("sdb", 960, false),
                disk("sdc", 4000, true),
            ],
            nics: vec![nic("eno1", 25000, true), nic("eno2", 1000, false)],
            firmware: Firmware {
                boot_mode: "uefi".into(),
                vendor: "Dell".into(),
                version: "2.1.0".into(),
            },
            dmi,
        }))
    }

    fn eval(src: &str, m: &Machine) -> bool {
        TagExpr::parse(src)
            .unwrap_or_else(|e| panic!("{src}: {e}"))
            .matches(m)
    }

    fn parse_err(src: &str) -> ExprError {
        match TagExpr::parse(src) {
            Ok(e) => panic!("{src} parsed: {e:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn example_from_the_docs() {
        let src =
            "cpu_count >= 16 && memory_mib >= 65536 && any(disks, size_gib >= 900 && !rotational)";
        assert!(eval(src, &big()));
        let mut m = big();
        m.inventory.as_mut().unwrap().disks[1].rotational = true;
        assert!(!eval(src, &m));
        assert!(!eval(src, &machine(None)));
    }

    #[test]
    fn logic_and_precedence() {
        let m = big();
        assert!(eval("true", &m));
        assert!(!eval("false", &m));
        assert!(eval("!false", &m));
        assert!(eval("!!true", &m));
        assert!(eval("true || false && false", &m)); // && binds tighter than ||
        assert!(!eval("(true || false) && false", &m));
        assert!(eval("!false == true", &m)); // ! binds tighter than ==
        assert!(eval("true != false", &m));
        assert!(eval("cpu_count > 8 || cpu_count < 2", &m));
        assert!(eval("false || false || true", &m));
        assert!(!eval("true && true && false", &m));
    }

    #[test]
    fn integer_comparisons() {
        let m = big();
        for (src, want) in [
            ("cpu_count == 32", true),
            ("cpu_count != 32", false),
            ("cpu_count < 33", true),
            ("cpu_count <= 32", true),
            ("cpu_count > 32", false),
            ("cpu_count >= 32", true),
            ("memory_mib == 131_072", true),
            ("storage_gib == 5440", true),
            ("disk_count == 3", true),
            ("nic_count == 2", true),
            ("16 < cpu_count", true),
            ("18_446_744_073_709_551_615 > memory_mib", true),
        ] {
            assert_eq!(eval(src, &m), want, "{src}");
        }
    }

    #[test]
    fn string_fields_and_functions() {
        let m = big();
        for (src, want) in [
            (r#"arch == "amd64/generic""#, true),
            (r#"hostname == "node-1""#, true),
            (r#"zone == "z1" && pool == "gpu""#, true),
            (r#"boot_mode == "uefi""#, true),
            (
                r#"firmware_vendor == "Dell" && firmware_version >= "2.0""#,
                true,
            ),
            (r#"firmware_version < "2.0""#, false),
            (r#"contains(cpu_model, "Xeon")"#, true),
            (r#"contains(cpu_model, "EPYC")"#, false),
            (r#"starts_with(cpu_model, "Intel")"#, true),
            (r#"starts_with(arch, "arm64")"#, false),
            (r#"dmi.system_vendor == "Dell Inc.""#, true),
            (r#"dmi.missing == """#, true),
            (r#"contains(dmi.system_vendor, "Dell")"#, true),
            (r#""a\"b" == "a\"b" && "\\" != "\"""#, true),
        ] {
            assert_eq!(eval(src, &m), want, "{src}");
        }
    }

    #[test]
    fn list_functions() {
        let m = big();
        for (src, want) in [
            ("any(disks, rotational)", true),
            ("all(disks, rotational)", false),
            ("all(disks, size_gib >= 480)", true),
            ("count(disks, !rotational) == 2", true),
            ("count(disks, !rotational) >= 3", false),
            (r#"any(disks, name == "sdc" && size_gib > 3000)"#, true),
            (
                r#"any(disks, starts_with(model, "model-") && serial == "SN-sda")"#,
                true,
            ),
            ("any(nics, link && speed_mbps >= 25000)", true),
            ("all(nics, link)", false),
            ("count(nics, link) == 1", true),
            (r#"any(nics, name == "eno2" && mac != "")"#, true),
        ] {
            assert_eq!(eval(src, &m), want, "{src}");
        }
        // Machine fields stay visible inside list functions.
        assert!(eval("any(disks, cpu_count == 32 && size_gib == 960)", &m));
        assert!(eval(r#"any(nics, hostname == "node-1")"#, &m));
    }

    #[test]
    fn missing_inventory_is_zero_empty_and_empty_lists() {
        let m = machine(None);
        assert!(eval(
            "cpu_count == 0 && memory_mib == 0 && storage_gib == 0",
            &m
        ));
        assert!(eval("disk_count == 0 && nic_count == 0", &m));
        assert!(eval(
            r#"cpu_model == "" && boot_mode == "" && dmi.x == """#,
            &m
        ));
        assert!(!eval("any(disks, true)", &m));
        assert!(eval("all(disks, false)", &m));
        assert!(eval("count(nics, true) == 0", &m));
        // Machine-level strings still come from the machine itself.
        assert!(eval(r#"hostname == "node-1""#, &m));
    }

    #[test]
    fn errors_have_positions_and_say_what_was_expected() {
        let e = parse_err("cpu_count >= 16 && cpus > 2");
        assert_eq!(e.position, 19);
        assert!(e.message.contains("unknown field 'cpus'"), "{e}");
        assert!(
            e.message.contains("known fields: cpu_count, memory_mib"),
            "{e}"
        );
        assert!(e.message.contains("did you mean 'cpu_count'"), "{e}");
        assert_eq!(e.to_string().split(':').next(), Some("at 19"));

        let e = parse_err(r#"cpu_count == "16""#);
        assert_eq!(e.position, 10);
        assert!(
            e.message
                .contains("cannot compare an integer with a string"),
            "{e}"
        );

        let e = parse_err("cpu_count && true");
        assert_eq!(e.position, 0);
        assert!(e.message.contains("must be a boolean"), "{e}");

        let e = parse_err("true && 5");
        assert_eq!(e.position, 8);

        let e = parse_err("cpu_count");
        assert!(
            e.message.contains("tag definition must be a boolean"),
            "{e}"
        );

        let e = parse_err("size_gib > 100");
        assert_eq!(e.position, 0);
        assert!(e.message.contains("any(disks, ...)"), "{e}");

        let e = parse_err("any(disks, speed_mbps > 100)");
        assert_eq!(e.position, 11);
        assert!(e.message.contains("NIC field"), "{e}");

        let e = parse_err("name == \"x\"");
        assert!(e.message.contains("disk and NIC field"), "{e}");

        let e = parse_err("any(disks, any(nics, link))");
        assert_eq!(e.position, 11);
        assert!(e.message.contains("do not nest"), "{e}");

        let e = parse_err("any(cpus, true)");
        assert_eq!(e.position, 4);
        assert!(e.message.contains("disks or nics"), "{e}");

        let e = parse_err("rotational < true");
        assert!(e.message.contains("any(disks"), "{e}");
        let e = parse_err("any(disks, rotational < true)");
        assert_eq!(e.position, 22);
        assert!(e.message.contains("'==' or '!='"), "{e}");

        let e = parse_err("(cpu_count > 1");
        assert_eq!(e.position, 14);
        assert!(e.message.contains("expected ')'"), "{e}");

        let e = parse_err("cpu_count > 1)");
        assert_eq!(e.position, 13);

        let e = parse_err("cpu_count = 1");
        assert_eq!(e.position, 10);
        assert!(e.message.contains("'=='"), "{e}");

        let e = parse_err("1 < cpu_count < 5");
        assert_eq!(e.position, 14);
        assert!(e.message.contains("do not chain"), "{e}");

        let e = parse_err(r#"hostname == "abc"#);
        assert_eq!(e.position, 12);
        assert!(e.message.contains("unterminated"), "{e}");

        let e = parse_err(r#"hostname == "a\nb""#);
        assert_eq!(e.position, 14);

        let e = parse_err("memory_mib > 64G");
        assert_eq!(e.position, 13);

        let e = parse_err("memory_mib > 99999999999999999999");
        assert!(e.message.contains("larger than"), "{e}");

        let e = parse_err("contains(cpu_model, arch)");
        assert_eq!(e.position, 20);
        assert!(e.message.contains("string literal"), "{e}");

        let e = parse_err(r#"contains(cpu_count, "x")"#);
        assert_eq!(e.position, 9);

        let e = parse_err("anyy(disks, true)");
        assert!(e.message.contains("unknown function 'anyy'"), "{e}");
        assert!(e.message.contains("did you mean 'any'"), "{e}");

        let e = parse_err("count > 1");
        assert!(e.message.contains("expected '('"), "{e}");

        let e = parse_err("disks");
        assert!(e.message.contains("is a list"), "{e}");

        let e = parse_err("");
        assert_eq!(e.position, 0);
        assert!(e.message.contains("end of definition"), "{e}");

        let e = parse_err("cpu_count > 1 €");
        assert_eq!(e.position, 14);
        assert!(e.message.contains("unexpected character"), "{e}");
    }

    #[test]
    fn limits_are_errors_not_crashes() {
        let ok = format!("{}true{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(TagExpr::parse(&ok).is_ok());
        let deep = format!(
            "{}true{}",
            "(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        let e = parse_err(&deep);
        assert_eq!(e.position, MAX_DEPTH);
        assert!(e.message.contains("nested"), "{e}");
        let e = parse_err(&format!("{}true", "!".repeat(1000)));
        assert!(e.message.contains("nested"), "{e}");
        // A long flat chain is fine (it is stored flat), up to the size limit.
        let chain = vec!["true"; 600].join("&&");
        assert!(chain.len() <= MAX_SOURCE_LEN);
        assert!(eval(&chain, &big()));
        let e = parse_err(&"(".repeat(MAX_SOURCE_LEN + 1));
        assert_eq!(e.position, MAX_SOURCE_LEN);
        assert!(e.message.contains("at most 4096"), "{e}");
    }

    #[test]
    fn check_names_the_field() {
        assert!(check("definition", "cpu_count > 1").is_ok());
        let e = check("tag.definition", "cpus > 1").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("tag.definition"));
        assert_eq!(e.code, crate::ErrorCode::InvalidArgument);
        assert!(
            e.message.contains("at 0: unknown field 'cpus'"),
            "{}",
            e.message
        );
    }

    // ---- property tests -------------------------------------------------------------------------

    fn arb_disk() -> impl Strategy<Value = Disk> {
        (
            prop::sample::select(vec!["sda", "sdb", "nvme0n1"]),
            0u64..4000,
            any::<bool>(),
        )
            .prop_map(|(n, s, r)| disk(n, s, r))
    }

    fn arb_nic() -> impl Strategy<Value = Nic> {
        (
            prop::sample::select(vec!["eno1", "eno2"]),
            prop::sample::select(vec![0u64, 1000, 10000, 25000]),
            any::<bool>(),
        )
            .prop_map(|(n, s, l)| nic(n, s, l))
    }

    fn arb_machine() -> impl Strategy<Value = Machine> {
        let inv = (
            0u32..128,
            prop::sample::select(vec!["Intel Xeon", "AMD EPYC", ""]),
            0u64..300_000,
            prop::collection::vec(arb_disk(), 0..5),
            prop::collection::vec(arb_nic(), 0..4),
            prop::sample::select(vec!["uefi", "bios"]),
            prop::option::of(prop::sample::select(vec!["Dell", "HPE"])),
        )
            .prop_map(|(cpu, model, mem, disks, nics, boot, vendor)| {
                let mut dmi = BTreeMap::new();
                if let Some(v) = vendor {
                    dmi.insert("vendor".to_string(), v.to_string());
                }
                Inventory {
                    cpu_count: cpu,
                    cpu_model: model.into(),
                    memory_mib: mem,
                    disks,
                    nics,
                    firmware: Firmware {
                        boot_mode: boot.into(),
                        ..Firmware::default()
                    },
                    dmi,
                }
            });
        prop::option::weighted(0.9, inv).prop_map(machine)
    }

    const INT_FIELDS: [&str; 5] = [
        "cpu_count",
        "memory_mib",
        "storage_gib",
        "disk_count",
        "nic_count",
    ];
    const OPS: [&str; 6] = ["==", "!=", "<", "<=", ">", ">="];

    fn arb_atom() -> impl Strategy<Value = String> {
        prop_oneof![
            (
                prop::sample::select(INT_FIELDS.to_vec()),
                prop::sample::select(OPS.to_vec()),
                0u64..200_000
            )
                .prop_map(|(f, o, n)| format!("{f} {o} {n}")),
            prop::sample::select(vec![
                "true",
                "false",
                r#"contains(cpu_model, "Xeon")"#,
                r#"starts_with(cpu_model, "AMD")"#,
                r#"boot_mode == "uefi""#,
                r#"dmi.vendor >= "E""#,
                "any(disks, !rotational)",
                "all(nics, link)",
                "any(nics, link && speed_mbps >= 10000)",
            ])
            .prop_map(str::to_string),
            (0u64..4000).prop_map(|n| format!("any(disks, size_gib >= {n} && !rotational)")),
            (0u64..4).prop_map(|n| format!("count(disks, rotational) >= {n}")),
        ]
    }

    fn arb_expr() -> impl Strategy<Value = String> {
        arb_atom().prop_recursive(4, 24, 2, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) && ({b})")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} || {b}")),
                inner.prop_map(|a| format!("!({a})")),
            ]
        })
    }

    fn arb_tokens() -> impl Strategy<Value = String> {
        let toks = vec![
            "(",
            ")",
            "!",
            "&&",
            "||",
            "==",
            "<",
            ">=",
            ",",
            "\"",
            "\"x\"",
            "\\",
            "1_0",
            "99999999999999999999",
            "cpu_count",
            "any",
            "count",
            "disks",
            "nics",
            "size_gib",
            "link",
            "contains",
            "dmi.",
            "dmi.a",
            "true",
            "=",
            "&",
            " ",
        ];
        prop::collection::vec(prop::sample::select(toks), 0..60).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,200}") {
            let _ = TagExpr::parse(&s);
        }

        #[test]
        fn parse_never_panics_on_token_soup(s in arb_tokens()) {
            if let Ok(e) = TagExpr::parse(&s) {
                let _ = e.matches(&big());
            }
        }

        #[test]
        fn boolean_algebra_holds(m in arb_machine(), a in arb_expr(), b in arb_expr()) {
            let ea = TagExpr::parse(&a).unwrap().matches(&m);
            let eb = TagExpr::parse(&b).unwrap().matches(&m);
            let p = |s: String| TagExpr::parse(&s).unwrap().matches(&m);
            prop_assert_eq!(p(format!("({a}) && ({b})")), ea && eb);
            prop_assert_eq!(p(format!("({a}) || ({b})")), ea || eb);
            prop_assert_eq!(p(format!("!({a})")), !ea);
            prop_assert_eq!(p(format!("!(({a}) && ({b}))")), p(format!("!({a}) || !({b})")));
            prop_assert_eq!(p(format!("!(({a}) || ({b}))")), p(format!("!({a}) && !({b})")));
        }

        #[test]
        fn numeric_comparison_agrees_with_rust(
            m in arb_machine(),
            field in 0usize..5,
            op in 0usize..6,
            n in prop_oneof![0u64..10, 0u64..300_000],
        ) {
            let inv = m.inventory.clone().unwrap_or_default();
            let actual: u64 = match field {
                0 => u64::from(inv.cpu_count),
                1 => inv.memory_mib,
                2 => inv.disks.iter().map(|d| d.size_gib).sum(),
                3 => inv.disks.len() as u64,
                _ => inv.nics.len() as u64,
            };
            let want = match op {
                0 => actual == n,
                1 => actual != n,
                2 => actual < n,
                3 => actual <= n,
                4 => actual > n,
                _ => actual >= n,
            };
            let src = format!("{} {} {n}", INT_FIELDS[field], OPS[op]);
            prop_assert_eq!(TagExpr::parse(&src).unwrap().matches(&m), want, "{}", src);
        }
    }
}
