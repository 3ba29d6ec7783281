//! The agent's only peer: its rack's agent API (`POST /agent/v1/call`, one protobuf `AgentCall` in, one
//! `AgentAnswer` out), behind the [`Rack`] trait so the flow is tested against a scripted fake, and the
//! [`Client`] that retries while the rack is unreachable or says UNAVAILABLE.

use crate::cmdline::Endpoint;
use crate::http;
use ingot_proto::rack::v1::{agent_call, AgentAnswer, AgentCall};
use prost::Message;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// gRPC status code UNAVAILABLE: the rack or the region is not ready; retried.
pub const UNAVAILABLE: u32 = 14;
/// gRPC status code FAILED_PRECONDITION: the machine is not booting for Ingot (lookup refused).
pub const FAILED_PRECONDITION: u32 = 9;
/// How long one call may take (connect, TLS, request, answer).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why one attempt at a call got no answer.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TransportError {
    /// What failed.
    pub message: String,
    /// Whether trying again may help (connection failures, timeouts, HTTP 408/429/5xx); an HTTP 4xx
    /// refusal of the request itself does not get better by repeating it.
    pub retry: bool,
}

impl TransportError {
    /// A failure worth retrying.
    pub fn retry(message: impl Into<String>) -> TransportError {
        TransportError {
            message: message.into(),
            retry: true,
        }
    }
}

/// One attempt at one call: the transport, without retries.
pub trait Rack {
    /// Sends `call` and returns the rack's answer (whatever its code).
    fn call(&self, call: &AgentCall) -> impl Future<Output = Result<AgentAnswer, TransportError>>;
}

/// The rack over HTTPS, its certificate checked by [`crate::tls::RackVerifier`].
pub struct HttpsRack {
    endpoint: Endpoint,
    tls: tokio_rustls::TlsConnector,
}

impl HttpsRack {
    /// A rack at `endpoint` whose certificate must chain to the CA with fingerprint `ca_sha256`.
    pub fn new(endpoint: Endpoint, ca_sha256: [u8; 32]) -> Result<HttpsRack, rustls::Error> {
        let cfg = crate::tls::client_config(ca_sha256)?;
        Ok(HttpsRack {
            endpoint,
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
        })
    }

    async fn exchange(&self, body: Vec<u8>) -> Result<AgentAnswer, TransportError> {
        let authority = self.endpoint.authority();
        let tcp = tokio::net::TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port))
            .await
            .map_err(|e| {
                TransportError::retry(format!("connecting to the rack at {authority}: {e}"))
            })?;
        let name = rustls::pki_types::ServerName::try_from(self.endpoint.host.clone())
            .map_err(|e| TransportError::retry(format!("rack host {}: {e}", self.endpoint.host)))?;
        let mut tls =
            self.tls.connect(name, tcp).await.map_err(|e| {
                TransportError::retry(format!("TLS with the rack at {authority}: {e}"))
            })?;
        let head = format!(
            "POST /agent/v1/call HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: ingot-agent\r\n\
             Content-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let mut req = head.into_bytes();
        req.extend_from_slice(&body);
        let io_err = |e: std::io::Error| {
            TransportError::retry(format!("talking to the rack at {authority}: {e}"))
        };
        tls.write_all(&req).await.map_err(io_err)?;
        tls.flush().await.map_err(io_err)?;
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 8192];
        loop {
            if http::complete(&buf) {
                break;
            }
            match tls.read(&mut chunk).await {
                Ok(0) => break,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                // A peer that closes without close_notify after a complete body is an ordinary end.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => break,
                Err(e) => return Err(io_err(e)),
            }
            if buf.len() > http::MAX_HEAD + http::MAX_CALL_BODY {
                return Err(TransportError::retry(format!(
                    "the rack at {authority} sent an answer over {} bytes",
                    http::MAX_CALL_BODY
                )));
            }
        }
        let (head, n) = http::parse_head(&buf).map_err(io_err)?.ok_or_else(|| {
            TransportError::retry(format!("the rack at {authority} closed before answering"))
        })?;
        let body = http::body_of(&head, &buf, n).map_err(io_err)?;
        if head.status != 200 {
            let text: String = String::from_utf8_lossy(&body).chars().take(200).collect();
            return Err(TransportError {
                message: format!(
                    "the rack at {authority} answered HTTP {}: {}",
                    head.status,
                    text.trim()
                ),
                retry: matches!(head.status, 408 | 429 | 500..=599),
            });
        }
        AgentAnswer::decode(body.as_slice()).map_err(|e| {
            TransportError::retry(format!("the rack's answer is not an AgentAnswer: {e}"))
        })
    }
}

impl Rack for HttpsRack {
    async fn call(&self, call: &AgentCall) -> Result<AgentAnswer, TransportError> {
        match tokio::time::timeout(CALL_TIMEOUT, self.exchange(call.encode_to_vec())).await {
            Ok(r) => r,
            Err(_) => Err(TransportError::retry(format!(
                "the rack at {} did not answer within {}s",
                self.endpoint.authority(),
                CALL_TIMEOUT.as_secs()
            ))),
        }
    }
}

/// Why a call failed for good.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The rack stayed unreachable (or UNAVAILABLE) for the whole retry budget.
    #[error("{what}: the rack stayed unreachable for {secs}s (last: {last}); check the rack's agent port and the network")]
    GaveUp {
        /// The call.
        what: &'static str,
        /// The retry budget spent.
        secs: u64,
        /// The last failure.
        last: String,
    },
    /// The rack refused the HTTP request itself (a version mismatch or a bug: repeating it would not help).
    #[error("{what}: {error}; the agent and the rack may be of different versions")]
    Http {
        /// The call.
        what: &'static str,
        /// The rack's HTTP status and text.
        error: String,
    },
    /// The rack or region refused the call.
    #[error("{what}: refused (code {code}): {error}")]
    Refused {
        /// The call.
        what: &'static str,
        /// The gRPC status code.
        code: u32,
        /// The region's or rack's explanation.
        error: String,
    },
}

impl CallError {
    /// The gRPC code of a refusal.
    pub fn code(&self) -> Option<u32> {
        match self {
            CallError::Refused { code, .. } => Some(*code),
            CallError::GaveUp { .. } | CallError::Http { .. } => None,
        }
    }
}

/// Retry policy: waits double from `first` up to `max`, for at most `budget` in all.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The first wait.
    pub first: Duration,
    /// The longest wait.
    pub max: Duration,
    /// The whole budget of one call.
    pub budget: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(30),
            budget: Duration::from_secs(300),
        }
    }
}

/// Calls with retries, and the name of each call for the console.
pub struct Client<R> {
    /// The transport.
    pub rack: R,
    /// The retry policy.
    pub backoff: Backoff,
}

/// The console name of a call.
pub fn call_name(c: &agent_call::Call) -> &'static str {
    match c {
        agent_call::Call::Lookup(_) => "lookup",
        agent_call::Call::Heartbeat(_) => "heartbeat",
        agent_call::Call::Inventory(_) => "inventory report",
        agent_call::Call::Progress(_) => "progress report",
        agent_call::Call::Result(_) => "result report",
    }
}

impl<R: Rack> Client<R> {
    /// Makes `call`, retrying (with every wait on the console) while the rack is unreachable or answers
    /// UNAVAILABLE, until the budget is spent. A non-OK answer other than UNAVAILABLE is returned at once.
    pub async fn call(&self, call: agent_call::Call) -> Result<AgentAnswer, CallError> {
        let what = call_name(&call);
        let req = AgentCall {
            id: 0,
            peer_ip: String::new(),
            call: Some(call),
        };
        let started = tokio::time::Instant::now();
        let mut wait = self.backoff.first;
        loop {
            let last = match self.rack.call(&req).await {
                Ok(a) if a.code == 0 => return Ok(a),
                Ok(a) if a.code != UNAVAILABLE => {
                    return Err(CallError::Refused {
                        what,
                        code: a.code,
                        error: a.error.chars().take(1024).collect(),
                    })
                }
                Ok(a) => format!(
                    "unavailable: {}",
                    a.error.chars().take(256).collect::<String>()
                ),
                Err(e) if !e.retry => {
                    return Err(CallError::Http {
                        what,
                        error: e.message,
                    })
                }
                Err(e) => e.message,
            };
            let spent = started.elapsed();
            if spent + wait > self.backoff.budget {
                return Err(CallError::GaveUp {
                    what,
                    secs: spent.as_secs(),
                    last,
                });
            }
            crate::say!(
                "{what} failed ({last}); retrying in {}s",
                wait.as_secs_f32()
            );
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(self.backoff.max);
        }
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A scripted in-memory rack: records every call, answers from a script, then from a default.

    use super::*;
    use ingot_proto::rack::v1::{agent_answer, AgentNext, AgentStatus};
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// What the fake answers.
    pub enum Scripted {
        /// This answer.
        Answer(Box<AgentAnswer>),
        /// A transport failure.
        Down,
        /// An HTTP refusal of the request (not retried).
        HttpRefused,
    }

    /// The fake rack.
    #[derive(Default)]
    pub struct FakeRack {
        /// Every call received, in order.
        pub calls: Mutex<Vec<AgentCall>>,
        /// Answers to give, per call kind ("lookup", "heartbeat", ...), in order; when a kind's script is
        /// empty: OK with [`Self::default_next`].
        pub script: Mutex<Vec<(&'static str, VecDeque<Scripted>)>>,
        /// The `next` of unscripted status answers.
        pub default_next: Mutex<Option<AgentNext>>,
    }

    /// An OK status answer with `next`.
    pub fn status(next: AgentNext) -> AgentAnswer {
        AgentAnswer {
            answer: Some(agent_answer::Answer::Status(AgentStatus {
                status: 0,
                next: next as i32,
                message: format!("scripted {next:?}"),
            })),
            ..Default::default()
        }
    }

    impl FakeRack {
        /// Queues `answer` for the next call named `what`.
        pub fn push(&self, what: &'static str, answer: Scripted) {
            let mut s = self.script.lock().unwrap();
            match s.iter_mut().find(|(w, _)| *w == what) {
                Some((_, q)) => q.push_back(answer),
                None => s.push((what, VecDeque::from([answer]))),
            }
        }

        /// The calls received, by kind.
        pub fn kinds(&self) -> Vec<&'static str> {
            self.calls
                .lock()
                .unwrap()
                .iter()
                .filter_map(|c| c.call.as_ref().map(call_name))
                .collect()
        }

        /// The calls received of kind `what`.
        pub fn of(&self, what: &str) -> Vec<agent_call::Call> {
            self.calls
                .lock()
                .unwrap()
                .iter()
                .filter_map(|c| c.call.clone())
                .filter(|c| call_name(c) == what)
                .collect()
        }
    }

    impl Rack for FakeRack {
        async fn call(&self, call: &AgentCall) -> Result<AgentAnswer, TransportError> {
            self.calls.lock().unwrap().push(call.clone());
            let what = call.call.as_ref().map(call_name).unwrap_or("none");
            let next = self
                .script
                .lock()
                .unwrap()
                .iter_mut()
                .find(|(w, _)| *w == what)
                .and_then(|(_, q)| q.pop_front());
            match next {
                Some(Scripted::Answer(a)) => Ok(*a),
                Some(Scripted::Down) => Err(TransportError::retry("scripted: down")),
                Some(Scripted::HttpRefused) => Err(TransportError {
                    message: "HTTP 415: Content-Type must be application/x-protobuf".into(),
                    retry: false,
                }),
                None => Ok(status(
                    self.default_next
                        .lock()
                        .unwrap()
                        .unwrap_or(AgentNext::Continue),
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::*;
    use super::*;
    use ingot_proto::rack::v1::{AgentHeartbeat, AgentNext};

    fn quick() -> Backoff {
        Backoff {
            first: Duration::from_millis(1),
            max: Duration::from_millis(4),
            budget: Duration::from_millis(200),
        }
    }

    fn hb() -> agent_call::Call {
        agent_call::Call::Heartbeat(AgentHeartbeat::default())
    }

    #[tokio::test]
    async fn unavailable_and_transport_failures_are_retried_then_given_up() {
        let rack = FakeRack::default();
        rack.push("heartbeat", Scripted::Down);
        rack.push(
            "heartbeat",
            Scripted::Answer(Box::new(AgentAnswer {
                code: UNAVAILABLE,
                error: "region not ready".into(),
                ..Default::default()
            })),
        );
        let c = Client {
            rack,
            backoff: quick(),
        };
        c.call(hb()).await.unwrap();
        assert_eq!(c.rack.kinds().len(), 3);
        // Refusals are not retried.
        c.rack.push(
            "heartbeat",
            Scripted::Answer(Box::new(AgentAnswer {
                code: 16,
                error: "bad token".into(),
                ..Default::default()
            })),
        );
        let e = c.call(hb()).await.unwrap_err();
        assert_eq!(e.code(), Some(16));
        assert_eq!(c.rack.kinds().len(), 4);
        // So are HTTP refusals of the request itself.
        c.rack.push("heartbeat", Scripted::HttpRefused);
        let e = c.call(hb()).await.unwrap_err();
        assert!(matches!(e, CallError::Http { .. }), "{e}");
        assert_eq!(c.rack.kinds().len(), 5);
        // Always down: the budget ends it.
        for _ in 0..1000 {
            c.rack.push("heartbeat", Scripted::Down);
        }
        let e = c.call(hb()).await.unwrap_err();
        assert!(matches!(e, CallError::GaveUp { .. }), "{e}");
        assert!(e.to_string().contains("scripted: down"), "{e}");
        let _ = status(AgentNext::Wait);
    }
}
