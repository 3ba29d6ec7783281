//! The boot path's own traffic on the region session, besides DHCP's commits: boot intents asked by the
//! HTTP server (`BootIntentRequest` → `BootIntentReply`), the in-band agents' calls relayed by the agent
//! API (`AgentCall` → `AgentAnswer`), both correlated by id, and boot events sent by the
//! [`super::events::BootEventSink`].
//!
//! [`RegionLink`] holds the current session's sender (set and cleared by the boot service as sessions
//! open and end) and, per kind of request, the requests waiting for their answer ([`Waiters`]; one id
//! sequence for both kinds). Everything is bounded: at most [`MAX_PENDING_INTENTS`] intents and
//! [`MAX_PENDING_CALLS`] agent calls wait at once, each for at most its timeout ([`INTENT_TIMEOUT`],
//! [`AGENT_CALL_TIMEOUT`]); a session that ends fails its waiters at once (the script they serve tells
//! iPXE to ask again; the agent is told 503 and retries), and an answer nobody waits for any more is
//! dropped.

use super::cache::WantedFile;
use ingot_common::image::{BootIntent, BootPurpose, ImageFile};
use ingot_common::Mac;
use ingot_proto::rack::v1 as proto;
use ingot_proto::rack::v1::rack_message::Msg as RackMsg;
use ingot_proto::rack::v1::RackMessage;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long a script request waits for the region's answer: iPXE's HTTP timeout is longer, and a
/// script that retries after a few seconds is better than a hung boot.
pub const INTENT_TIMEOUT: Duration = Duration::from_secs(3);
/// Most boot intents waiting for a reply at once (a boot storm of a whole rack of machines is far
/// fewer; more is a flood, answered with a retry script).
pub const MAX_PENDING_INTENTS: usize = 1024;
/// How long a relayed agent call waits for the region's answer: lookups and reports wait for a Raft
/// write, which takes milliseconds with a quorum and never this long without one.
pub const AGENT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Most agent calls waiting for an answer at once (a rack of a few hundred booting machines makes a few
/// calls a minute each; more is a flood, answered 503 so agents retry).
pub const MAX_PENDING_CALLS: usize = 1024;

/// Whom a script is for: the URL names a MAC (`/boot/<mac>.ipxe`) or a machine (`/boot/by-id/<id>.ipxe`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntentKey {
    /// A boot MAC.
    Mac(Mac),
    /// A machine's system id (already checked to be a plain token).
    SystemId(String),
}

/// A boot intent as the rack uses it: the region's decision plus the image files it names, ready for
/// the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RackIntent {
    /// What to boot.
    pub intent: BootIntent,
    /// The files the intent names (kernel, initrd, disk), for [`super::cache::ImageCache::want`].
    pub files: Vec<WantedFile>,
}

/// Why a request on the session got no answer (a boot intent or an agent call): the asker retries.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    /// No region session is up (the rack is starting or cut off).
    #[error("no region session: the rack cannot reach the region right now; try again shortly")]
    NoSession,
    /// Too many requests of this kind wait already, or the session's outgoing queue is full.
    #[error("the rack is busy relaying other requests to the region; try again shortly")]
    Busy,
    /// The region did not answer in time (or the session ended first).
    #[error("the region did not answer in time; try again shortly")]
    Timeout,
}

/// Why no boot intent could be had. The script then retries; the text is echoed on the console.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IntentError {
    /// No region session is up (the rack is starting or cut off).
    #[error("no region session: the rack cannot ask what to boot right now")]
    NoSession,
    /// Too many requests wait already, or the session's outgoing queue is full.
    #[error("the rack is busy asking the region for other machines")]
    Busy,
    /// The region did not answer in time (or the session ended first).
    #[error("the region did not answer in time")]
    Timeout,
    /// The region answered with an error.
    #[error("the region could not decide: {0}")]
    Region(String),
    /// The region's answer does not parse (a newer region, or a bug): names the field.
    #[error("the region's answer is malformed: {0}")]
    Malformed(String),
}

impl From<LinkError> for IntentError {
    fn from(e: LinkError) -> IntentError {
        match e {
            LinkError::NoSession => IntentError::NoSession,
            LinkError::Busy => IntentError::Busy,
            LinkError::Timeout => IntentError::Timeout,
        }
    }
}

/// Locks a mutex, ignoring poisoning (the maps stay usable if a holder panicked).
fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The session as the link sees it.
struct Current {
    /// The session's number (the boot service's), so a late close of an older one changes nothing.
    generation: u64,
    /// Its outgoing queue.
    tx: mpsc::Sender<RackMessage>,
}

/// Requests of one kind waiting for their answer, by request id: a bounded map of one-shot senders.
struct Waiters<T> {
    /// The waiting requests' answer channels.
    map: Mutex<HashMap<u64, oneshot::Sender<T>>>,
    /// Most requests waiting at once.
    max: usize,
}

impl<T> Waiters<T> {
    /// An empty set of at most `max` waiters.
    fn new(max: usize) -> Waiters<T> {
        Waiters {
            map: Mutex::new(HashMap::new()),
            max,
        }
    }

    /// A waiter for `id`; [`LinkError::Busy`] when `max` wait already.
    fn add(&self, id: u64) -> Result<oneshot::Receiver<T>, LinkError> {
        let (tx, rx) = oneshot::channel();
        let mut map = lock(&self.map);
        if map.len() >= self.max {
            return Err(LinkError::Busy);
        }
        map.insert(id, tx);
        Ok(rx)
    }

    /// Forgets `id`'s waiter (answered, timed out, or never sent).
    fn remove(&self, id: u64) {
        lock(&self.map).remove(&id);
    }

    /// Hands `answer` to `id`'s waiter; dropped when nobody waits.
    fn deliver(&self, id: u64, answer: T) {
        if let Some(tx) = lock(&self.map).remove(&id) {
            let _ = tx.send(answer);
        }
    }

    /// Fails every waiter now (their senders are dropped).
    fn clear(&self) {
        lock(&self.map).clear();
    }

    /// How many wait.
    fn len(&self) -> usize {
        lock(&self.map).len()
    }
}

/// The boot path's link to the current region session (see the module docs).
pub struct RegionLink {
    /// The session messages go out on, if one is up.
    current: Mutex<Option<Current>>,
    /// Boot intents waiting for their reply (at most [`MAX_PENDING_INTENTS`]).
    intents: Waiters<proto::BootIntentReply>,
    /// Agent calls waiting for their answer (at most [`MAX_PENDING_CALLS`]).
    calls: Waiters<proto::AgentAnswer>,
    /// The last request id used (one sequence for intents and calls).
    next_id: AtomicU64,
}

impl Default for RegionLink {
    fn default() -> Self {
        RegionLink {
            current: Mutex::new(None),
            intents: Waiters::new(MAX_PENDING_INTENTS),
            calls: Waiters::new(MAX_PENDING_CALLS),
            next_id: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for RegionLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionLink")
            .field("online", &self.online())
            .field("pending", &self.intents.len())
            .field("pending_calls", &self.calls.len())
            .finish()
    }
}

impl RegionLink {
    /// A link with no session yet.
    pub fn new() -> Arc<RegionLink> {
        Arc::new(RegionLink::default())
    }

    /// Session `generation` is up: messages go out on `tx`.
    pub fn opened(&self, generation: u64, tx: mpsc::Sender<RackMessage>) {
        *lock(&self.current) = Some(Current { generation, tx });
    }

    /// Session `generation` ended: nothing goes out until the next one, and every waiting intent fails
    /// now (its reply would come on a session that no longer exists).
    pub fn closed(&self, generation: u64) {
        let mut cur = lock(&self.current);
        if cur.as_ref().is_some_and(|c| c.generation == generation) {
            *cur = None;
            self.intents.clear();
            self.calls.clear();
        }
    }

    /// Whether a session is up.
    pub fn online(&self) -> bool {
        lock(&self.current).is_some()
    }

    /// Sends `msg` on the current session without waiting; `false` when there is none or its queue is
    /// full (the caller keeps or drops the message).
    pub fn try_send(&self, msg: RackMsg) -> bool {
        let tx = match lock(&self.current).as_ref() {
            Some(c) => c.tx.clone(),
            None => return false,
        };
        tx.try_send(RackMessage { msg: Some(msg) }).is_ok()
    }

    /// Sends the request `make` builds for a fresh id and waits at most `timeout` for its answer, which
    /// [`Waiters::deliver`] hands over.
    async fn request<T>(
        &self,
        waiters: &Waiters<T>,
        make: impl FnOnce(u64) -> RackMsg,
        timeout: Duration,
    ) -> Result<T, LinkError> {
        if !self.online() {
            return Err(LinkError::NoSession);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let rx = waiters.add(id)?;
        if !self.try_send(make(id)) {
            waiters.remove(id);
            return Err(if self.online() {
                LinkError::Busy
            } else {
                LinkError::NoSession
            });
        }
        let answer = tokio::time::timeout(timeout, rx).await;
        waiters.remove(id);
        match answer {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(_)) | Err(_) => Err(LinkError::Timeout),
        }
    }

    /// Asks the region what `key` should boot, waiting at most `timeout`.
    pub async fn boot_intent(
        &self,
        key: &IntentKey,
        timeout: Duration,
    ) -> Result<RackIntent, IntentError> {
        let (mac, system_id) = match key {
            IntentKey::Mac(m) => (m.to_string(), String::new()),
            IntentKey::SystemId(s) => (String::new(), s.clone()),
        };
        let make = |id| RackMsg::BootIntentRequest(proto::BootIntentRequest { id, mac, system_id });
        let reply = self.request(&self.intents, make, timeout).await?;
        intent_from_proto(&reply)
    }

    /// The region's answer to a request: handed to its waiter, or dropped when nobody waits.
    pub fn on_reply(&self, reply: proto::BootIntentReply) {
        self.intents.deliver(reply.id, reply);
    }

    /// How many intents wait for a reply (tests, metrics).
    pub fn pending(&self) -> usize {
        self.intents.len()
    }

    /// Relays an agent's call to the region and waits at most `timeout` for the answer. The rack sets
    /// what only it knows, overwriting the agent's values: a fresh `id` (the answer's correlation) and
    /// `peer_ip`, the agent's address as the TCP connection showed it. The answer is the region's,
    /// refusals included (its `code` says); an error means the call may not have reached the region or
    /// its answer was lost: the agent retries (a retried lookup is safe: it carries the same claim).
    pub async fn agent_call(
        &self,
        mut call: proto::AgentCall,
        peer_ip: Ipv4Addr,
        timeout: Duration,
    ) -> Result<proto::AgentAnswer, LinkError> {
        call.peer_ip = peer_ip.to_string();
        let make = |id| {
            call.id = id;
            RackMsg::AgentCall(Box::new(call))
        };
        self.request(&self.calls, make, timeout).await
    }

    /// The region's answer to an agent call: handed to its waiter, or dropped when nobody waits.
    pub fn on_agent_answer(&self, answer: proto::AgentAnswer) {
        self.calls.deliver(answer.id, answer);
    }

    /// How many agent calls wait for an answer (tests, metrics).
    pub fn pending_calls(&self) -> usize {
        self.calls.len()
    }
}

/// One image file of a reply in the cache's terms; `field` names it in errors.
pub fn wanted_from_proto(field: &str, f: &proto::BlobFile) -> Result<WantedFile, String> {
    WantedFile::from_rack(f).map_err(|e| format!("{field}.{e}"))
}

/// The region's reply in domain types: an error reply is [`IntentError::Region`], a malformed one
/// [`IntentError::Malformed`] naming the field.
pub fn intent_from_proto(r: &proto::BootIntentReply) -> Result<RackIntent, IntentError> {
    if !r.error.is_empty() {
        return Err(IntentError::Region(r.error.chars().take(200).collect()));
    }
    let purpose = BootPurpose::parse(&r.purpose).ok_or_else(|| {
        IntentError::Malformed(format!(
            "purpose: '{}' is no boot purpose",
            r.purpose.chars().take(32).collect::<String>()
        ))
    })?;
    let mut files = Vec::new();
    let mut file =
        |field: &str, f: &Option<proto::BlobFile>| -> Result<Option<ImageFile>, IntentError> {
            match f {
                None => Ok(None),
                Some(f) => {
                    let w = wanted_from_proto(field, f).map_err(IntentError::Malformed)?;
                    let out = w.file.clone();
                    files.push(w);
                    Ok(Some(out))
                }
            }
        };
    let kernel = file("kernel", &r.kernel)?;
    let initrd = file("initrd", &r.initrd)?;
    let disk = file("disk", &r.disk)?;
    let system_id = (!r.system_id.is_empty()).then(|| r.system_id.clone());
    Ok(RackIntent {
        intent: BootIntent {
            system_id,
            purpose,
            kernel,
            initrd,
            disk,
            problem: r.problem.chars().take(400).collect(),
        },
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(name: &str, b: char) -> proto::BlobFile {
        proto::BlobFile {
            image: "ingot-ramdisk".into(),
            name: name.into(),
            sha256: b.to_string().repeat(64),
            size: 7,
            kind: "ramdisk".into(),
            arch: "amd64".into(),
        }
    }

    #[tokio::test]
    async fn intents_are_correlated_by_id_and_time_out() {
        let link = RegionLink::new();
        let mac: Mac = "52:54:00:00:00:01".parse().expect("mac");
        assert_eq!(
            link.boot_intent(&IntentKey::Mac(mac), INTENT_TIMEOUT).await,
            Err(IntentError::NoSession)
        );
        let (tx, mut rx) = mpsc::channel(8);
        link.opened(1, tx);
        let l2 = link.clone();
        let ask = tokio::spawn(async move {
            l2.boot_intent(&IntentKey::Mac(mac), Duration::from_secs(5))
                .await
        });
        let Some(RackMessage {
            msg: Some(RackMsg::BootIntentRequest(req)),
        }) = rx.recv().await
        else {
            panic!("no request sent");
        };
        assert_eq!(req.mac, "52:54:00:00:00:01");
        // A reply for another id is dropped; the right one is delivered.
        link.on_reply(proto::BootIntentReply {
            id: req.id + 100,
            ..Default::default()
        });
        link.on_reply(proto::BootIntentReply {
            id: req.id,
            system_id: "abc123".into(),
            purpose: "commission".into(),
            kernel: Some(blob("kernel", 'a')),
            initrd: Some(blob("initrd", 'b')),
            ..Default::default()
        });
        let got = ask.await.expect("join").expect("intent");
        assert_eq!(got.intent.purpose, BootPurpose::Commission);
        assert_eq!(got.intent.system_id.as_deref(), Some("abc123"));
        assert_eq!(got.files.len(), 2);
        assert_eq!(link.pending(), 0);
        // No answer: a timeout, and nothing left waiting.
        let e = link
            .boot_intent(&IntentKey::SystemId("x".into()), Duration::from_millis(20))
            .await;
        assert_eq!(e, Err(IntentError::Timeout));
        assert_eq!(link.pending(), 0);
        // The session ends while a request waits: it fails at once.
        let l3 = link.clone();
        let ask = tokio::spawn(async move {
            l3.boot_intent(&IntentKey::Mac(mac), Duration::from_secs(30))
                .await
        });
        while link.pending() == 0 {
            tokio::task::yield_now().await;
        }
        link.closed(1);
        assert_eq!(ask.await.expect("join"), Err(IntentError::Timeout));
        assert!(!link.online());
    }

    #[tokio::test]
    async fn agent_calls_get_a_fresh_id_and_the_peer_address() {
        let link = RegionLink::new();
        let peer = Ipv4Addr::new(10, 20, 0, 7);
        let call = proto::AgentCall {
            id: 77,
            peer_ip: "1.2.3.4".into(),
            call: Some(proto::agent_call::Call::Lookup(proto::AgentLookup {
                macs: vec!["52:54:00:00:00:01".into()],
                claim: "c".repeat(16),
                purpose: "commission".into(),
            })),
        };
        assert_eq!(
            link.agent_call(call.clone(), peer, AGENT_CALL_TIMEOUT)
                .await,
            Err(LinkError::NoSession)
        );
        let (tx, mut rx) = mpsc::channel(8);
        link.opened(3, tx);
        let l2 = link.clone();
        let c2 = call.clone();
        let ask =
            tokio::spawn(async move { l2.agent_call(c2, peer, Duration::from_secs(5)).await });
        let Some(RackMessage {
            msg: Some(RackMsg::AgentCall(sent)),
        }) = rx.recv().await
        else {
            panic!("no call sent");
        };
        assert_ne!(sent.id, 77, "the rack's id replaces the agent's");
        assert_eq!(sent.peer_ip, "10.20.0.7");
        assert_eq!(sent.call, call.call);
        // An intent reply with the call's id is no answer to the call.
        link.on_reply(proto::BootIntentReply {
            id: sent.id,
            ..Default::default()
        });
        assert_eq!(link.pending_calls(), 1);
        link.on_agent_answer(proto::AgentAnswer {
            id: sent.id + 1,
            ..Default::default()
        });
        link.on_agent_answer(proto::AgentAnswer {
            id: sent.id,
            code: 7,
            error: "refused".into(),
            answer: None,
        });
        let got = ask.await.expect("join").expect("answer");
        assert_eq!((got.code, got.error.as_str()), (7, "refused"));
        assert_eq!(link.pending_calls(), 0);
        // No answer: a timeout; the session ends: the waiter fails at once.
        let e = link
            .agent_call(call.clone(), peer, Duration::from_millis(20))
            .await;
        assert_eq!(e, Err(LinkError::Timeout));
        let l3 = link.clone();
        let ask =
            tokio::spawn(async move { l3.agent_call(call, peer, Duration::from_secs(30)).await });
        while link.pending_calls() == 0 {
            tokio::task::yield_now().await;
        }
        link.closed(3);
        assert_eq!(ask.await.expect("join"), Err(LinkError::Timeout));
        assert_eq!(link.pending_calls(), 0);
    }

    #[test]
    fn waiters_are_bounded() {
        let w: Waiters<u8> = Waiters::new(2);
        let _a = w.add(1).expect("first");
        let _b = w.add(2).expect("second");
        assert_eq!(w.add(3).err(), Some(LinkError::Busy));
        w.remove(1);
        assert!(w.add(3).is_ok());
    }

    #[test]
    fn malformed_replies_name_the_field() {
        let ok = proto::BootIntentReply {
            id: 1,
            purpose: "deploy".into(),
            kernel: Some(blob("kernel", 'a')),
            ..Default::default()
        };
        assert!(intent_from_proto(&ok).is_ok());
        let mut bad = ok.clone();
        bad.purpose = "fly".into();
        assert!(
            matches!(intent_from_proto(&bad), Err(IntentError::Malformed(m)) if m.starts_with("purpose"))
        );
        let mut bad = ok.clone();
        bad.kernel = Some(proto::BlobFile {
            sha256: "zz".into(),
            ..blob("kernel", 'a')
        });
        assert!(
            matches!(intent_from_proto(&bad), Err(IntentError::Malformed(m)) if m.contains("kernel.sha256"))
        );
        let mut bad = ok;
        bad.disk = Some(proto::BlobFile {
            name: "../etc".into(),
            ..blob("disk", 'c')
        });
        assert!(
            matches!(intent_from_proto(&bad), Err(IntentError::Malformed(m)) if m.contains("disk.name"))
        );
        let err = proto::BootIntentReply {
            error: "no quorum".into(),
            ..Default::default()
        };
        assert_eq!(
            intent_from_proto(&err),
            Err(IntentError::Region("no quorum".into()))
        );
    }
}
