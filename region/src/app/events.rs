//! The event history: every transition and admin action writes an event in the replicated log, so every
//! region answers the same. Listed newest first, in pages.

use super::{Actor, App};
use crate::state::State;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ingot_common::model::{Event, EventLevel};
use ingot_common::DomainError;

/// Events per page when the request does not say.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Most events per page: bounds the work and the answer of one call.
pub const MAX_PAGE_SIZE: usize = 1000;

/// Event filters, already parsed and validated. Filters are ANDed; `None` does not filter.
#[derive(Debug, Default, Clone)]
pub struct EventQuery {
    /// Exact machine.
    pub system_id: Option<String>,
    /// Exact zone (of the machine at the time).
    pub zone: Option<String>,
    /// Exact owner (of the machine at the time).
    pub owner: Option<String>,
    /// This level or more severe.
    pub min_level: Option<EventLevel>,
    /// At or after this time (ms since epoch).
    pub since_ms: Option<u64>,
    /// Before this time (ms since epoch, exclusive).
    pub until_ms: Option<u64>,
    /// Exact kind, e.g. `deploy` or `zone.create`.
    pub kind: Option<String>,
    /// For non-admin callers: only events about their machines (`owner`) or caused by them (`actor`).
    pub visible_to: Option<String>,
}

impl EventQuery {
    /// True if `e` passes every filter.
    pub fn matches(&self, e: &Event) -> bool {
        self.visible_to
            .as_ref()
            .is_none_or(|u| &e.owner == u || &e.actor == u)
            && self.system_id.as_ref().is_none_or(|s| &e.system_id == s)
            && self.zone.as_ref().is_none_or(|z| &e.zone == z)
            && self.owner.as_ref().is_none_or(|o| &e.owner == o)
            && self.min_level.is_none_or(|l| e.level >= l)
            && self.since_ms.is_none_or(|t| e.ts_ms >= t)
            && self.until_ms.is_none_or(|t| e.ts_ms < t)
            && self.kind.as_ref().is_none_or(|k| &e.kind == k)
    }
}

/// An event's position in the history, (revision, seq): unique and increasing, hence the paging cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    /// Revision of the command that wrote the event.
    pub revision: u64,
    /// Position among that command's events.
    pub seq: u32,
}

impl Cursor {
    /// The cursor of `e`.
    pub fn of(e: &Event) -> Cursor {
        Cursor {
            revision: e.revision,
            seq: e.seq,
        }
    }

    /// The opaque page token clients pass back: base64 of `revision:seq`.
    pub fn encode(self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}", self.revision, self.seq))
    }

    /// Reads a page token back; anything that [`Cursor::encode`] did not make is an InvalidArgument
    /// naming `page_token`.
    pub fn decode(token: &str) -> Result<Cursor, DomainError> {
        let bad = || DomainError::invalid("page_token", "not a token from a previous response");
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
        let s = String::from_utf8(raw).map_err(|_| bad())?;
        let (rev, seq) = s.split_once(':').ok_or_else(bad)?;
        Ok(Cursor {
            revision: rev.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

/// The page size a request asks for: 0 means [`DEFAULT_PAGE_SIZE`], more than [`MAX_PAGE_SIZE`] is
/// refused.
pub fn page_size(n: u32) -> Result<usize, DomainError> {
    match n as usize {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n > MAX_PAGE_SIZE => Err(DomainError::invalid(
            "page_size",
            format!("at most {MAX_PAGE_SIZE}"),
        )),
        n => Ok(n),
    }
}

/// One page of the events matching `q`, newest first, strictly older than `before` when given. Returns
/// the page and, when older matching events remain, the cursor to continue from (the page's last event).
///
/// The history is ordered by cursor (oldest first), so the start is found by binary search; the scan
/// then walks back until the page is full and one more match proves that another page exists.
pub fn events_page(
    st: &State,
    q: &EventQuery,
    before: Option<Cursor>,
    limit: usize,
) -> (Vec<Event>, Option<Cursor>) {
    let events = &st.data.events;
    let end = match before {
        Some(c) => events.partition_point(|e| Cursor::of(e) < c),
        None => events.len(),
    };
    let mut page = Vec::with_capacity(limit.min(MAX_PAGE_SIZE));
    let mut more = false;
    for e in events.range(..end).rev().filter(|e| q.matches(e)) {
        if page.len() == limit {
            more = true;
            break;
        }
        page.push(e.clone());
    }
    let next = if more {
        page.last().map(Cursor::of)
    } else {
        None
    };
    (page, next)
}

impl App {
    /// One page of events, newest first. Non-admin callers see only the events about machines they own
    /// and those they caused. Returns the page and the token of the next one (empty when none).
    pub async fn list_events(
        &self,
        actor: &Actor,
        mut q: EventQuery,
        page_size: u32,
        page_token: &str,
        linearizable: bool,
    ) -> Result<(Vec<Event>, String), DomainError> {
        let limit = self::page_size(page_size)?;
        let before = if page_token.is_empty() {
            None
        } else {
            Some(Cursor::decode(page_token)?)
        };
        if let (Some(since), Some(until)) = (q.since_ms, q.until_ms) {
            if until < since {
                return Err(DomainError::invalid("until", "earlier than since"));
            }
        }
        q.visible_to = if actor.require_admin("see every event").is_ok() {
            None
        } else {
            Some(actor.name.clone())
        };
        let user = q.visible_to.clone();
        let (page, next) = self
            .read(actor, linearizable, |st| {
                let (page, next) = events_page(st, &q, before, limit);
                let page = page
                    .into_iter()
                    .map(|e| {
                        let m = st.machine(&e.system_id);
                        super::views::event_for(user.as_deref(), e, m)
                    })
                    .collect::<Vec<_>>();
                (page, next)
            })
            .await?;
        Ok((page, next.map(Cursor::encode).unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ingot_common::ErrorCode;

    fn ev(revision: u64, seq: u32, kind: &str, actor: &str, owner: &str) -> Event {
        Event {
            revision,
            seq,
            ts_ms: revision * 1000,
            actor: actor.into(),
            kind: kind.into(),
            level: EventLevel::Info,
            system_id: String::new(),
            hostname: String::new(),
            zone: String::new(),
            owner: owner.into(),
            from: None,
            to: None,
            message: String::new(),
        }
    }

    /// Events at revisions 1..=n, two per revision, alternating kinds and owners.
    fn history(n: u64) -> State {
        let mut st = State::default();
        for r in 1..=n {
            for seq in 0..2 {
                let (kind, owner) = if seq == 0 {
                    ("deploy", "alice")
                } else {
                    ("release", "bob")
                };
                st.data.events.push_back(ev(r, seq, kind, "admin", owner));
            }
        }
        st
    }

    fn cursors(v: &[Event]) -> Vec<(u64, u32)> {
        v.iter().map(|e| (e.revision, e.seq)).collect()
    }

    #[test]
    fn pages_walk_the_whole_history_newest_first_exactly_once() {
        let st = history(10);
        let q = EventQuery::default();
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let (page, next) = events_page(&st, &q, before, 3);
            assert!(page.len() <= 3);
            seen.extend(cursors(&page));
            match next {
                // The token survives its round trip through the client.
                Some(c) => before = Some(Cursor::decode(&c.encode()).unwrap()),
                None => break,
            }
        }
        let mut want: Vec<(u64, u32)> = (1..=10).flat_map(|r| [(r, 0), (r, 1)]).collect();
        want.reverse();
        assert_eq!(seen, want);
    }

    #[test]
    fn a_page_that_ends_with_the_last_match_has_no_next_token() {
        let st = history(2);
        let (page, next) = events_page(&st, &EventQuery::default(), None, 4);
        assert_eq!(page.len(), 4);
        assert_eq!(next, None);
        let (page, next) = events_page(&st, &EventQuery::default(), None, 3);
        assert_eq!(page.len(), 3);
        assert_eq!(
            next,
            Some(Cursor {
                revision: 1,
                seq: 1
            })
        );
        let (empty, next) = events_page(&State::default(), &EventQuery::default(), None, 3);
        assert!(empty.is_empty() && next.is_none());
    }

    #[test]
    fn the_cursor_is_exclusive_even_when_its_event_was_dropped() {
        let mut st = history(5);
        // The cursor's own event leaves the bounded history: paging continues from what is older.
        st.data.events.retain(|e| (e.revision, e.seq) != (3, 0));
        let (page, _) = events_page(
            &st,
            &EventQuery::default(),
            Some(Cursor {
                revision: 3,
                seq: 0,
            }),
            10,
        );
        assert_eq!(cursors(&page), [(2, 1), (2, 0), (1, 1), (1, 0)]);
        // A cursor older than everything kept gives an empty last page.
        let (page, next) = events_page(
            &st,
            &EventQuery::default(),
            Some(Cursor {
                revision: 1,
                seq: 0,
            }),
            10,
        );
        assert!(page.is_empty() && next.is_none());
    }

    #[test]
    fn filters_and_paging_combine() {
        let st = history(6);
        let q = EventQuery {
            kind: Some("release".into()),
            ..Default::default()
        };
        let (page, next) = events_page(&st, &q, None, 2);
        assert_eq!(cursors(&page), [(6, 1), (5, 1)]);
        let (page, next) = events_page(&st, &q, next, 10);
        assert_eq!(cursors(&page), [(4, 1), (3, 1), (2, 1), (1, 1)]);
        assert!(next.is_none());
    }

    #[test]
    fn every_filter_applies() {
        let mut e = ev(7, 0, "deadline", "region", "alice");
        e.system_id = "abc123".into();
        e.zone = "z1".into();
        e.level = EventLevel::Warning;
        let pass = |q: EventQuery| q.matches(&e);
        assert!(pass(EventQuery::default()));
        assert!(pass(EventQuery {
            system_id: Some("abc123".into()),
            ..Default::default()
        }));
        assert!(!pass(EventQuery {
            system_id: Some("other".into()),
            ..Default::default()
        }));
        assert!(pass(EventQuery {
            zone: Some("z1".into()),
            ..Default::default()
        }));
        assert!(!pass(EventQuery {
            zone: Some("z2".into()),
            ..Default::default()
        }));
        assert!(pass(EventQuery {
            owner: Some("alice".into()),
            ..Default::default()
        }));
        assert!(!pass(EventQuery {
            owner: Some("bob".into()),
            ..Default::default()
        }));
        assert!(pass(EventQuery {
            min_level: Some(EventLevel::Warning),
            ..Default::default()
        }));
        assert!(!pass(EventQuery {
            min_level: Some(EventLevel::Error),
            ..Default::default()
        }));
        assert!(pass(EventQuery {
            since_ms: Some(7000),
            ..Default::default()
        }));
        assert!(!pass(EventQuery {
            since_ms: Some(7001),
            ..Default::default()
        }));
        assert!(pass(EventQuery {
            until_ms: Some(7001),
            ..Default::default()
        }));
        assert!(!pass(EventQuery {
            until_ms: Some(7000),
            ..Default::default()
        }));
        assert!(pass(EventQuery {
            kind: Some("deadline".into()),
            ..Default::default()
        }));
        assert!(!pass(EventQuery {
            kind: Some("dead".into()),
            ..Default::default()
        }));
    }

    #[test]
    fn non_admins_see_their_machines_and_their_own_actions() {
        let mut st = State::default();
        st.data
            .events
            .push_back(ev(1, 0, "zone.create", "admin", ""));
        st.data
            .events
            .push_back(ev(2, 0, "allocate", "alice", "alice"));
        st.data
            .events
            .push_back(ev(3, 0, "deadline", "region", "alice"));
        st.data
            .events
            .push_back(ev(4, 0, "token.create", "alice", ""));
        st.data.events.push_back(ev(5, 0, "deploy", "bob", "bob"));
        let q = EventQuery {
            visible_to: Some("alice".into()),
            ..Default::default()
        };
        let (page, _) = events_page(&st, &q, None, 10);
        assert_eq!(cursors(&page), [(4, 0), (3, 0), (2, 0)]);
    }

    #[test]
    fn bad_tokens_and_sizes_name_their_field() {
        for t in [
            "%%%",
            "bm90IGEgY3Vyc29y",
            &URL_SAFE_NO_PAD.encode("1:x"),
            &URL_SAFE_NO_PAD.encode("-1:0"),
        ] {
            let e = Cursor::decode(t).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidArgument);
            assert_eq!(e.field.as_deref(), Some("page_token"), "{t}");
        }
        let c = Cursor {
            revision: 420_001,
            seq: 3,
        };
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(1000).unwrap(), 1000);
        assert_eq!(
            page_size(1001).unwrap_err().field.as_deref(),
            Some("page_size")
        );
    }
}
