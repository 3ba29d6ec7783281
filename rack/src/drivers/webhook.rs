//! The `webhook` power driver: operator-defined HTTP requests, for power controllers Ingot has no driver for
//! (smart PDUs, lab relays, cloud consoles, home-grown scripts behind a web server) — MAAS's webhook driver,
//! made explicit.
//!
//! An action requests `method` (POST by default) on the URL configured for it (`on_url`, `off_url`,
//! `cycle_url`, `soft_off_url`, `boot_pxe_url`, `boot_disk_url`); any 2xx answer is success. The power state
//! is learnt by GETting `query_url` and searching the body for `query_on_regex` / `query_off_regex`. After a
//! power change the driver reads the state until it shows the wanted one (bounded: `power_wait_s`, default
//! [`ingot_common::power::WEBHOOK_POWER_WAIT_S`] seconds), so the
//! state it reports is what the endpoint says, not what was asked for.
//!
//! Authentication: a bearer `token`, else HTTP basic with `username` / `password`. URLs are quoted in
//! messages without their query string (it may hold a secret); tokens and passwords never are.

use super::http::{excerpt, read_body, redact_url, transport_error, ClientCache, BODY_MAX};
use super::{DriverError, PowerDriver, PowerOutcome, PowerRequest, PowerState};
use ingot_common::power::PowerAction;
use ingot_common::power::{DriverParams, WebhookParams};
use regex::Regex;
use reqwest::Method;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Compiled regexes kept at most; parameters come from operators, so the cache must not grow without limit.
const MAX_REGEXES: usize = 1024;

/// The `webhook` driver. Cheap to clone: clones share the HTTP clients and the compiled regexes.
#[derive(Debug, Default, Clone)]
pub struct WebhookDriver {
    inner: Arc<Inner>,
}

/// State shared by every clone.
#[derive(Debug, Default)]
struct Inner {
    /// HTTP clients by TLS settings.
    clients: ClientCache,
    /// Compiled regexes by pattern (a rack compiles each distinct pattern once).
    regexes: Mutex<HashMap<String, Regex>>,
}

impl PowerDriver for WebhookDriver {
    async fn run(&self, req: &PowerRequest) -> Result<PowerOutcome, DriverError> {
        let DriverParams::Webhook(p) = req.typed("webhook")? else {
            return Err(DriverError::Bmc(
                "webhook power parameters did not parse as webhook parameters".into(),
            ));
        };
        let hook = Hook {
            client: self.inner.clients.get(p.verify_tls, "", p.timeout_ms)?,
            on: self.regex("query_on_regex", &p.query_on_regex)?,
            off: self.regex("query_off_regex", &p.query_off_regex)?,
            p: &p,
        };
        hook.run(req.action).await
    }
}

impl WebhookDriver {
    /// The compiled `pattern` (from the cache); an invalid one is a `bmc` error naming the parameter.
    fn regex(&self, param: &str, pattern: &str) -> Result<Regex, DriverError> {
        let mut cache = self.inner.regexes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = cache.get(pattern) {
            return Ok(r.clone());
        }
        let r = Regex::new(pattern).map_err(|e| {
            // The regex crate's message spans lines (pattern, caret, reason); one line reads better in a
            // command result.
            let one_line = e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            DriverError::Bmc(format!(
                "power parameter {param} is not a valid regular expression: {one_line}"
            ))
        })?;
        if cache.len() >= MAX_REGEXES {
            cache.clear();
        }
        cache.insert(pattern.to_string(), r.clone());
        Ok(r)
    }
}

/// One command against one webhook configuration.
struct Hook<'a> {
    client: reqwest::Client,
    on: Regex,
    off: Regex,
    p: &'a WebhookParams,
}

impl Hook<'_> {
    async fn run(&self, action: PowerAction) -> Result<PowerOutcome, DriverError> {
        match action {
            PowerAction::Query => {
                let state = self.query().await?;
                Ok(PowerOutcome {
                    state,
                    message: format!("query_url says {}", state.as_str()),
                })
            }
            PowerAction::On => {
                self.act("on_url", &self.p.on_url).await?;
                self.settle("on_url", PowerState::On).await
            }
            PowerAction::Off => {
                self.act("off_url", &self.p.off_url).await?;
                self.settle("off_url", PowerState::Off).await
            }
            PowerAction::SoftOff => {
                let url = self.optional("soft_off_url", &self.p.soft_off_url, "soft-off")?;
                self.act("soft_off_url", url).await?;
                self.settle("soft_off_url", PowerState::Off).await
            }
            PowerAction::Cycle => {
                // Cycle means "ends up on, freshly booted": an off machine is just powered on.
                if self.query().await? == PowerState::Off {
                    self.act("on_url", &self.p.on_url).await?;
                    let mut o = self.settle("on_url", PowerState::On).await?;
                    o.message = format!("was off; {}", o.message);
                    return Ok(o);
                }
                if !self.p.cycle_url.is_empty() {
                    self.act("cycle_url", &self.p.cycle_url).await?;
                    return self.settle("cycle_url", PowerState::On).await;
                }
                // No cycle_url: off, wait until the endpoint says off, then on.
                self.act("off_url", &self.p.off_url).await?;
                self.settle("off_url", PowerState::Off).await?;
                self.act("on_url", &self.p.on_url).await?;
                let mut o = self.settle("on_url", PowerState::On).await?;
                o.message = format!("cycled by off_url then on_url; {}", o.message);
                Ok(o)
            }
            PowerAction::BootPxe => {
                let url = self.optional("boot_pxe_url", &self.p.boot_pxe_url, "boot-pxe")?;
                self.act("boot_pxe_url", url).await?;
                let state = self.query().await?;
                Ok(PowerOutcome {
                    state,
                    message: format!("boot_pxe_url accepted; query_url says {}", state.as_str()),
                })
            }
            PowerAction::BootDisk => {
                let url = self.optional("boot_disk_url", &self.p.boot_disk_url, "boot-disk")?;
                self.act("boot_disk_url", url).await?;
                let state = self.query().await?;
                Ok(PowerOutcome {
                    state,
                    message: format!("boot_disk_url accepted; query_url says {}", state.as_str()),
                })
            }
            PowerAction::BootPxePersistent | PowerAction::BootDiskPersistent => {
                Err(DriverError::Unsupported(format!(
                    "the webhook driver has no persistent boot-device URL (boot_pxe_url and boot_disk_url \
                     mean the endpoint's own choice of once or always); use boot-pxe or boot-disk instead \
                     of {}",
                    action.as_str()
                )))
            }
        }
    }

    /// An optional URL, or `unsupported` naming the missing parameter.
    fn optional<'u>(&self, key: &str, url: &'u str, action: &str) -> Result<&'u str, DriverError> {
        if url.is_empty() {
            Err(DriverError::Unsupported(format!(
                "no {key} configured, so this machine's webhook cannot {action}; set power parameter {key}"
            )))
        } else {
            Ok(url)
        }
    }

    /// Sends one request with the configured credentials and reads the answer (at most [`BODY_MAX`] bytes).
    async fn send(&self, method: Method, url: &str) -> Result<(u16, Vec<u8>, String), DriverError> {
        let what = format!("{method} {}", redact_url(url));
        let mut rb = self.client.request(method.clone(), url);
        if !self.p.token.is_empty() {
            rb = rb.bearer_auth(&self.p.token);
        } else if !self.p.username.is_empty() {
            rb = rb.basic_auth(&self.p.username, Some(&self.p.password));
        }
        if method != Method::GET {
            rb = rb.header(reqwest::header::CONTENT_LENGTH, "0");
        }
        let resp = rb
            .send()
            .await
            .map_err(|e| transport_error(&what, &e, self.p.timeout_ms))?;
        let status = resp.status().as_u16();
        let body = read_body(resp, &what, BODY_MAX, self.p.timeout_ms).await?;
        Ok((status, body, what))
    }

    /// Requests an action URL; anything but 2xx is an error (401/403: `auth`).
    async fn act(&self, key: &str, url: &str) -> Result<(), DriverError> {
        let method = Method::from_bytes(self.p.method.as_bytes()).map_err(|_| {
            DriverError::Bmc(format!(
                "power parameter method '{}' is not an HTTP method",
                self.p.method
            ))
        })?;
        let (status, body, what) = self.send(method, url).await?;
        check(key, status, &body, &what)
    }

    /// GETs `query_url` and matches the body: on, off, or a `bmc` error quoting the body.
    async fn query(&self) -> Result<PowerState, DriverError> {
        let (status, body, what) = self.send(Method::GET, &self.p.query_url).await?;
        check("query_url", status, &body, &what)?;
        let text = String::from_utf8_lossy(&body);
        match (self.on.is_match(&text), self.off.is_match(&text)) {
            (true, false) => Ok(PowerState::On),
            (false, true) => Ok(PowerState::Off),
            (true, true) => Err(DriverError::Bmc(format!(
                "{what}: both query_on_regex and query_off_regex match the answer, so the power state is \
                 ambiguous; make them stricter. The answer began: {}",
                excerpt(&body, 200)
            ))),
            (false, false) => Err(DriverError::Bmc(format!(
                "{what}: neither query_on_regex nor query_off_regex matches the answer; fix the regexes or the \
                 endpoint. The answer began: {}",
                excerpt(&body, 200)
            ))),
        }
    }

    /// After an accepted power change: reads the state until it is `want` (bounded by `power_wait_s`).
    async fn settle(&self, key: &str, want: PowerState) -> Result<PowerOutcome, DriverError> {
        let t0 = Instant::now();
        let wait = Duration::from_secs(self.p.power_wait_s);
        let mut pause = Duration::from_millis(250);
        loop {
            let read = self.query().await;
            match read {
                Ok(s) if s == want => {
                    return Ok(PowerOutcome {
                        state: s,
                        message: format!(
                            "{key} accepted; query_url says {} after {:.1} s",
                            s.as_str(),
                            t0.elapsed().as_secs_f64()
                        ),
                    })
                }
                Err(e @ (DriverError::Auth(_) | DriverError::Unreachable(_))) => return Err(e),
                other => {
                    if t0.elapsed() + pause > wait {
                        return Err(match other {
                            Ok(s) => DriverError::Bmc(format!(
                                "{key} was accepted but query_url still says {} after {} s; check the \
                                 endpoint or the machine",
                                s.as_str(),
                                t0.elapsed().as_secs()
                            )),
                            Err(e) => e,
                        });
                    }
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }
}

/// Success for 2xx; `auth` for 401/403; `bmc` quoting the body otherwise.
fn check(key: &str, status: u16, body: &[u8], what: &str) -> Result<(), DriverError> {
    match status {
        200..=299 => Ok(()),
        300..=399 => Err(DriverError::Bmc(format!(
            "{what} ({key}) answered HTTP {status}, a redirect to another host, which is not followed \
             (credentials go only to the configured URL); put the final URL in {key}"
        ))),
        401 | 403 => Err(DriverError::Auth(format!(
            "{what} ({key}) answered HTTP {status}: the endpoint refused the credentials; check the token or \
             username and password"
        ))),
        _ => Err(DriverError::Bmc(format!(
            "{what} ({key}) answered HTTP {status}: {}",
            excerpt(body, 200)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status page that never ends: the query is refused at [`BODY_MAX`] with a bmc error naming the
    /// (redacted) URL and the cap, long before the timeout, instead of reading until memory or time runs out.
    #[tokio::test]
    async fn an_endless_status_page_is_refused_at_the_cap() {
        let base = crate::drivers::http::tests::endless(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n",
            &[b'z'; 8192],
        )
        .await;
        let params: HashMap<String, String> = [
            ("on_url", format!("{base}/on")),
            ("off_url", format!("{base}/off")),
            ("query_url", format!("{base}/status?token=secret")),
            ("timeout_ms", "20000".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let t0 = Instant::now();
        let e = WebhookDriver::default()
            .run(&PowerRequest {
                command_id: 1,
                system_id: "m1".into(),
                action: PowerAction::Query,
                params,
            })
            .await
            .unwrap_err();
        let DriverError::Bmc(m) = &e else {
            panic!("{e:?}")
        };
        assert!(m.contains(&format!("GET {base}/status")), "{m}");
        assert!(m.contains("1048576 bytes") && !m.contains("secret"), "{m}");
        assert!(t0.elapsed() < Duration::from_secs(10), "{m}");
    }
}
