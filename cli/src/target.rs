//! How the user names a machine, shared by every command that takes one: the [`Target`] arguments (a
//! positional id or `--consumer`, `--provider-id`, `--hostname`), the resulting selection ([`Sel`]), and
//! its resolution against the cluster ([`get_sel`], [`system_id`], [`call_ref`]), plus the read
//! [`consistency`] of `--stale`. A leaf module: it imports no command module, so `machines`, `actions`,
//! `power` and the rest share it without importing one another.

use crate::ctx::Ctx;
use anyhow::{bail, Result};
use clap::Args;
use ingot_common::Mac;
use ingot_proto::v1::get_machine_request::Key;
use ingot_proto::v1::{
    machine_ref, GetMachineRequest, Machine, MachineRef, MachineView, ReadConsistency,
};
use std::future::Future;

/// The machine an action applies to: a positional id or exactly one of the lookup flags.
#[derive(Args, Debug, Clone, Default)]
pub struct Target {
    /// System id (6 characters [a-z0-9]); a MAC or hostname also works
    #[arg(value_name = "ID")]
    pub machine: Option<String>,
    #[command(flatten)]
    pub by: RefFlags,
}

/// Ways to name a machine other than its system id.
#[derive(Args, Debug, Clone, Default)]
pub struct RefFlags {
    /// The machine allocated to this consumer (e.g. a Cluster API Machine name)
    #[arg(long, value_name = "C")]
    pub consumer: Option<String>,
    /// The machine with this provider id (ingot:///<zone>/<system_id>)
    #[arg(long, value_name = "P")]
    pub provider_id: Option<String>,
    /// The machine with this hostname
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
}

/// How a machine argument is looked up: 6 characters of `[a-z0-9]` is a system id, a MAC is a MAC,
/// anything else a hostname.
fn machine_key(s: &str) -> Key {
    if is_system_id(s) {
        Key::SystemId(s.to_string())
    } else if let Ok(mac) = s.parse::<Mac>() {
        Key::Mac(mac.to_string())
    } else {
        Key::Hostname(s.to_string())
    }
}

/// True when `s` has the shape of a system id (6 characters of `[a-z0-9]`).
pub fn is_system_id(s: &str) -> bool {
    s.len() == 6
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// The wire read consistency for `--stale`.
pub fn consistency(stale: bool) -> i32 {
    if stale {
        ReadConsistency::Stale as i32
    } else {
        ReadConsistency::Linearizable as i32
    }
}

/// How the user named a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sel {
    /// A positional argument: a system id, a MAC or a hostname, told apart by shape.
    Arg(String),
    /// `--consumer`.
    Consumer(String),
    /// `--provider-id`.
    ProviderId(String),
    /// `--hostname`.
    Hostname(String),
    /// `--mac`.
    Mac(String),
}

impl Sel {
    /// The selection made by a positional id and the lookup flags: exactly one must be given.
    pub fn new(machine: Option<String>, by: RefFlags, mac: Option<String>) -> Result<Sel> {
        let mut given: Vec<Sel> = Vec::new();
        given.extend(machine.map(Sel::Arg));
        given.extend(by.consumer.map(Sel::Consumer));
        given.extend(by.provider_id.map(Sel::ProviderId));
        given.extend(by.hostname.map(Sel::Hostname));
        given.extend(mac.map(Sel::Mac));
        match given.len() {
            0 => bail!(
                "name the machine: pass its system id, or one of --consumer, --provider-id, --hostname"
            ),
            1 => Ok(given.remove(0)),
            _ => bail!(
                "name the machine once: pass either its system id or one of --consumer, --provider-id, --hostname"
            ),
        }
    }

    /// The selection of a [`Target`].
    pub fn of(t: Target) -> Result<Sel> {
        Sel::new(t.machine, t.by, None)
    }

    /// Keys to try for a GetMachine, in order (a system id or MAC that is not found is retried as a
    /// hostname: a hostname may look like either).
    fn keys(&self) -> Vec<Key> {
        match self {
            Sel::Arg(s) => {
                let k = machine_key(s);
                if matches!(k, Key::Hostname(_)) {
                    vec![k]
                } else {
                    vec![k, Key::Hostname(s.clone())]
                }
            }
            Sel::Consumer(s) => vec![Key::Consumer(s.clone())],
            Sel::ProviderId(s) => vec![Key::ProviderId(s.clone())],
            Sel::Hostname(s) => vec![Key::Hostname(s.clone())],
            Sel::Mac(s) => vec![Key::Mac(s.clone())],
        }
    }
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<tonic::Status>()
        .is_some_and(|s| s.code() == tonic::Code::NotFound)
}

/// Finds a machine (FULL view unless `basic`).
pub async fn get_sel(
    ctx: &Ctx,
    sel: &Sel,
    include_secrets: bool,
    stale: bool,
    basic: bool,
) -> Result<Machine> {
    let clients = ctx.clients()?;
    let view = if basic {
        MachineView::Basic
    } else {
        MachineView::Full
    } as i32;
    let mut first: Option<anyhow::Error> = None;
    for key in sel.keys() {
        let r = ctx
            .call(|| {
                let mut c = clients.machines();
                let req = GetMachineRequest {
                    key: Some(key.clone()),
                    consistency: consistency(stale),
                    include_secrets,
                    view,
                };
                async move { c.get_machine(req).await }
            })
            .await;
        match r {
            Ok(m) => return Ok(m),
            Err(e) if is_not_found(&e) => {
                first.get_or_insert(e);
            }
            Err(e) => return Err(first.unwrap_or(e)),
        }
    }
    Err(first.unwrap_or_else(|| anyhow::anyhow!("no machine named")))
}

/// The system id of a machine argument: used as is when it looks like one, else looked up.
pub async fn system_id(ctx: &Ctx, arg: &str) -> Result<String> {
    if is_system_id(arg) {
        return Ok(arg.to_string());
    }
    Ok(get_sel(ctx, &Sel::Arg(arg.to_string()), false, false, true)
        .await?
        .system_id)
}

/// The `MachineRef`s to try for an action on `sel`: the primary one, and a hostname to retry with when
/// the primary (a system id) is not found.
async fn refs(ctx: &Ctx, sel: &Sel) -> Result<(MachineRef, Option<MachineRef>)> {
    let r = |k: machine_ref::Key| MachineRef { key: Some(k) };
    Ok(match sel {
        Sel::Arg(s) => match machine_key(s) {
            Key::SystemId(id) => (
                r(machine_ref::Key::SystemId(id)),
                Some(r(machine_ref::Key::Hostname(s.clone()))),
            ),
            Key::Hostname(h) => (r(machine_ref::Key::Hostname(h)), None),
            _ => {
                let m = get_sel(ctx, sel, false, false, true).await?;
                (r(machine_ref::Key::SystemId(m.system_id)), None)
            }
        },
        Sel::Consumer(c) => (r(machine_ref::Key::Consumer(c.clone())), None),
        Sel::ProviderId(p) => (r(machine_ref::Key::ProviderId(p.clone())), None),
        Sel::Hostname(h) => (r(machine_ref::Key::Hostname(h.clone())), None),
        Sel::Mac(_) => {
            let m = get_sel(ctx, sel, false, false, true).await?;
            (r(machine_ref::Key::SystemId(m.system_id)), None)
        }
    })
}

/// Runs one machine RPC addressed by a `MachineRef` (retried while the cluster is unavailable); a
/// system id that is not found is retried as a hostname, and the first error is the one reported.
pub async fn call_ref<T, F, Fut>(ctx: &Ctx, sel: &Sel, mut f: F) -> Result<T>
where
    F: FnMut(MachineRef) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let (primary, fallback) = refs(ctx, sel).await?;
    let r = ctx.call(|| f(primary.clone())).await;
    match (r, fallback) {
        (Err(e), Some(fb)) if is_not_found(&e) => ctx.call(|| f(fb.clone())).await.map_err(|_| e),
        (r, _) => r,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(machine_key("abc123"), Key::SystemId("abc123".into()));
        assert_eq!(
            machine_key("52-54-00-AB-CD-01"),
            Key::Mac("52:54:00:ab:cd:01".into())
        );
        assert_eq!(machine_key("node-7"), Key::Hostname("node-7".into()));
        assert_eq!(machine_key("ABC123"), Key::Hostname("ABC123".into()));
    }

    #[test]
    fn selections() {
        let by = |c: Option<&str>, h: Option<&str>| RefFlags {
            consumer: c.map(String::from),
            provider_id: None,
            hostname: h.map(String::from),
        };
        assert_eq!(
            Sel::new(Some("abc123".into()), by(None, None), None).unwrap(),
            Sel::Arg("abc123".into())
        );
        assert_eq!(
            Sel::new(None, by(Some("cp-0"), None), None).unwrap(),
            Sel::Consumer("cp-0".into())
        );
        assert!(Sel::new(None, by(None, None), None).is_err());
        assert!(Sel::new(Some("abc123".into()), by(None, Some("n1")), None).is_err());
        // A system-id-shaped argument falls back to a hostname lookup.
        assert_eq!(Sel::Arg("node01".into()).keys().len(), 2);
        assert_eq!(Sel::Arg("node-1".into()).keys().len(), 1);
    }
}
