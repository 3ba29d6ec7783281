//! What a caller may see of a machine or an event. Admins see everything (power secrets still only when
//! they ask, at the API edge). Anyone else sees:
//!
//! - no power parameter values at all: a BMC's address, username and a webhook's URLs reach the BMC as
//!   surely as its password does (a URL can even embed credentials), so every value is masked like a
//!   password, and the same values are scrubbed from texts that may quote them (a driver's error names
//!   the BMC it could not reach);
//! - nobody else's owner, consumer or allocation request id: a machine that another user holds (a watch
//!   shows a machine once more as it leaves the watcher's filter, e.g. when someone else allocates it)
//!   comes without them, and an event about another user's machine without its owner.
//!
//! Views are made here once, for every path (get, list, watch, events, action replies), so a new path
//! cannot forget one. The encoded-list cache ([`super::encoded`]) holds the admin's basic view, which has
//! no power parameters; [`basic_view_redacted`] says when a user's basic view differs from it, and only
//! those machines are encoded for that caller alone.

use super::Actor;
use ingot_common::model::Event;
use ingot_common::{Machine, PowerParams};
use std::borrow::Cow;

/// What a masked value shows, the same as a redacted password.
pub const MASK: &str = "********";

/// Shortest parameter value scrubbed from texts: shorter ones (`on`, port numbers) would mangle
/// unrelated words and identify no BMC.
const MIN_SCRUBBED_LEN: usize = 4;

/// Who a view is for: `None` for an admin, `Some(name)` for any other user.
pub fn viewer(actor: &Actor) -> Option<&str> {
    (!actor.is_admin()).then_some(actor.name.as_str())
}

/// `m` as `user` may see it (`None`: an admin, who sees it whole). Borrows when nothing is hidden.
pub fn machine_for<'m>(user: Option<&str>, m: &'m Machine) -> Cow<'m, Machine> {
    let Some(user) = user else {
        return Cow::Borrowed(m);
    };
    let foreign = someone_elses(user, m);
    let secrets = bmc_details(&m.power);
    if !foreign && m.power.params.is_empty() && !texts_quote(m, &secrets) {
        return Cow::Borrowed(m);
    }
    let mut v = m.clone();
    if foreign {
        v.owner = None;
        v.allocation = None;
    }
    v.power = masked(&m.power);
    v.status_message = scrub(&v.status_message, &secrets);
    v.power_error = scrub(&v.power_error, &secrets);
    if let Some(p) = v.progress.as_mut() {
        p.message = scrub(&p.message, &secrets);
    }
    Cow::Owned(v)
}

/// `m` as `actor` may see it.
pub fn machine<'m>(actor: &Actor, m: &'m Machine) -> Cow<'m, Machine> {
    machine_for(viewer(actor), m)
}

/// True if `user`'s basic view of `m` (no power parameters) differs from an admin's: the machine is
/// someone else's, or one of its texts quotes a BMC detail. Lists encode such a machine for the caller
/// instead of serving the shared cached encoding.
pub fn basic_view_redacted(user: &str, m: &Machine) -> bool {
    someone_elses(user, m) || texts_quote(m, &bmc_details(&m.power))
}

/// `e` as `user` may see it (`None`: an admin). `machine` is the event's machine as it is now, if it
/// still exists: its BMC details are scrubbed from the message.
pub fn event_for(user: Option<&str>, e: Event, machine: Option<&Machine>) -> Event {
    let Some(user) = user else {
        return e;
    };
    let mut e = e;
    if !e.owner.is_empty() && e.owner != user {
        e.owner = String::new();
    }
    if let Some(m) = machine {
        e.message = scrub(&e.message, &bmc_details(&m.power));
    }
    e
}

/// Held, or carrying an allocation, by someone other than `user`.
fn someone_elses(user: &str, m: &Machine) -> bool {
    match &m.owner {
        Some(o) => o != user,
        None => m.allocation.is_some(),
    }
}

fn texts_quote(m: &Machine, secrets: &[String]) -> bool {
    let quotes = |t: &str| secrets.iter().any(|s| t.contains(s.as_str()));
    quotes(&m.status_message)
        || quotes(&m.power_error)
        || m.progress.as_ref().is_some_and(|p| quotes(&p.message))
}

/// Every parameter with its value masked; the driver stays (it says which kind of BMC, not where).
fn masked(p: &PowerParams) -> PowerParams {
    PowerParams {
        driver: p.driver.clone(),
        params: p
            .params
            .keys()
            .map(|k| (k.clone(), MASK.to_string()))
            .collect(),
    }
}

/// The strings a text may quote that identify or open a BMC: each parameter value, and for URLs their
/// host and user info (drivers print URLs without user info, but with the host). Numbers, booleans and
/// very short values are left out.
fn bmc_details(p: &PowerParams) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |s: &str| {
        let s = s.trim();
        let plain = s.parse::<f64>().is_ok()
            || s.eq_ignore_ascii_case("true")
            || s.eq_ignore_ascii_case("false");
        if s.len() >= MIN_SCRUBBED_LEN && !plain && !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    };
    for v in p.params.values() {
        add(v);
        if let Some((_, rest)) = v.split_once("://") {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            let (userinfo, hostport) = match authority.rsplit_once('@') {
                Some((u, h)) => (Some(u), h),
                None => (None, authority),
            };
            if let Some(u) = userinfo {
                add(u);
                for part in u.split(':') {
                    add(part);
                }
            }
            add(hostport);
            add(ingot_common::pki::host_of(hostport));
        }
    }
    // Longest first, so a URL is masked whole before its host is.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out
}

fn scrub(text: &str, secrets: &[String]) -> String {
    let mut t = text.to_string();
    for s in secrets {
        if t.contains(s.as_str()) {
            t = t.replace(s.as_str(), MASK);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::zones::tests::machine as new_machine;
    use ingot_common::model::{Allocation, EventLevel};
    use ingot_common::MachineStatus;

    fn bmc_machine(owner: Option<&str>) -> Machine {
        let mut m = new_machine("m1", "default", MachineStatus::Allocated);
        m.owner = owner.map(str::to_string);
        m.allocation = owner.map(|_| Allocation {
            request_id: "req-42".into(),
            consumer: "cluster-a/worker-0".into(),
            allocated_ms: 1,
        });
        m.power = PowerParams {
            driver: "webhook".into(),
            params: [
                ("on_url", "https://ops:hunter22@bmc-7.example:8443/on"),
                ("address", "10.20.30.40"),
                ("username", "rootadmin"),
                ("password", "s3cret-pw"),
                ("timeout_s", "30"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        };
        m.power_error =
            "GET https://bmc-7.example:8443/on: connection refused (10.20.30.40)".into();
        m
    }

    fn shows(m: &Machine, what: &str) -> bool {
        serde_json::to_string(m).expect("json").contains(what)
    }

    #[test]
    fn a_user_sees_no_bmc_detail_and_nobody_elses_allocation() {
        let m = bmc_machine(Some("bob"));
        // Bob's own machine: his allocation stays, the BMC details go.
        let own = machine_for(Some("bob"), &m);
        assert_eq!(own.owner.as_deref(), Some("bob"));
        assert_eq!(
            own.allocation.as_ref().map(|a| a.consumer.as_str()),
            Some("cluster-a/worker-0")
        );
        for secret in [
            "10.20.30.40",
            "rootadmin",
            "s3cret-pw",
            "hunter22",
            "bmc-7.example",
            "ops:",
        ] {
            assert!(!shows(&own, secret), "{secret} shown to a user: {own:?}");
        }
        assert_eq!(own.power.driver, "webhook");
        assert!(
            own.power.params.values().all(|v| v == MASK),
            "{:?}",
            own.power
        );
        assert!(
            own.power_error.contains("connection refused"),
            "{}",
            own.power_error
        );
        // Alice sees neither Bob's name nor his consumer or request id.
        let other = machine_for(Some("alice"), &m);
        for secret in ["bob", "cluster-a", "req-42", "10.20.30.40", "rootadmin"] {
            assert!(!shows(&other, secret), "{secret} shown to alice: {other:?}");
        }
        assert!(basic_view_redacted("alice", &m));
        // An admin sees it all, unchanged and uncopied.
        assert!(matches!(machine_for(None, &m), Cow::Borrowed(_)));
        // A machine with nothing to hide is not copied for a user either.
        let mut plain = new_machine("m2", "default", MachineStatus::Ready);
        plain.power = PowerParams::default();
        assert!(matches!(
            machine_for(Some("alice"), &plain),
            Cow::Borrowed(_)
        ));
        assert!(!basic_view_redacted("alice", &plain));
        // The basic view of a user's own machine differs only when a text quotes a BMC detail.
        let mut quiet = bmc_machine(Some("bob"));
        quiet.power_error.clear();
        assert!(!basic_view_redacted("bob", &quiet));
        assert!(basic_view_redacted("bob", &m));
    }

    #[test]
    fn a_users_events_name_no_other_owner_and_no_bmc_detail() {
        let m = bmc_machine(Some("bob"));
        let e = Event {
            revision: 1,
            seq: 0,
            ts_ms: 1,
            actor: "alice".into(),
            kind: "power.on.result".into(),
            level: EventLevel::Warning,
            system_id: "m1".into(),
            hostname: "m1".into(),
            zone: "default".into(),
            owner: "bob".into(),
            from: None,
            to: None,
            message: "failed: 10.20.30.40 refused rootadmin".into(),
        };
        let seen = event_for(Some("alice"), e.clone(), Some(&m));
        assert_eq!(seen.owner, "");
        assert_eq!(seen.message, format!("failed: {MASK} refused {MASK}"));
        let admin = event_for(None, e.clone(), Some(&m));
        assert_eq!(admin.owner, "bob");
        assert_eq!(admin.message, e.message);
    }
}
