//! Riding out short unavailability: a killed region, a leader election, a connection that broke. The
//! balanced channel routes around a dead region only after a call to it failed, so callers retry.

use std::future::Future;
use std::time::Duration;
use tonic::{Code, Status};

/// First pause between attempts; doubled after each failure up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest pause between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// When [`retry_unavailable`] gives up: either a point in time or a duration from the first attempt.
pub trait RetryDeadline {
    /// The point in time after which no new attempt starts.
    fn instant(self) -> tokio::time::Instant;
}

impl RetryDeadline for Duration {
    fn instant(self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self
    }
}

impl RetryDeadline for tokio::time::Instant {
    fn instant(self) -> tokio::time::Instant {
        self
    }
}

impl RetryDeadline for std::time::Instant {
    fn instant(self) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self)
    }
}

/// True for failures that say nothing about the request itself and may succeed on another attempt:
/// `UNAVAILABLE` (no leader yet, region unreachable, connection refused) and transport failures detected by
/// the client (a connection reset or closed mid-call; these carry a local error source, whereas statuses
/// sent by a region never do).
pub fn is_retryable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        Code::Unknown | Code::Internal | Code::Cancelled => {
            std::error::Error::source(status).is_some()
        }
        _ => false,
    }
}

/// Calls `f` until it succeeds, fails with a non-retryable status (see [`is_retryable`]), or `deadline`
/// (a [`Duration`] from now or an `Instant`) passes; pauses 50 ms, doubling up to 500 ms, between
/// attempts. Returns the last result.
///
/// A write whose connection broke after it was sent may have been applied: retrying it can then fail with
/// `ALREADY_EXISTS` or `FAILED_PRECONDITION`, which callers of non-idempotent writes should expect.
pub async fn retry_unavailable<T, F, Fut>(
    mut f: F,
    deadline: impl RetryDeadline,
) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let deadline = deadline.instant();
    let mut backoff = MIN_BACKOFF;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(status) => {
                let now = tokio::time::Instant::now();
                if !is_retryable(&status) || now >= deadline {
                    return Err(status);
                }
                tracing::debug!(code = ?status.code(), message = status.message(), "retrying");
                tokio::time::sleep(backoff.min(deadline - now)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retries_unavailable_until_success() {
        let mut n = 0;
        let r = retry_unavailable(
            || {
                n += 1;
                let v = n;
                async move {
                    if v >= 3 {
                        Ok(v)
                    } else {
                        Err(Status::unavailable("no leader"))
                    }
                }
            },
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(r.unwrap(), 3);
    }

    #[tokio::test]
    async fn does_not_retry_other_errors() {
        let mut n = 0;
        let r: Result<(), _> = retry_unavailable(
            || {
                n += 1;
                async { Err(Status::not_found("x")) }
            },
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(r.unwrap_err().code(), Code::NotFound);
        assert_eq!(n, 1);
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline() {
        let start = std::time::Instant::now();
        let r: Result<(), _> = retry_unavailable(
            || async { Err(Status::unavailable("down")) },
            Duration::from_millis(300),
        )
        .await;
        assert_eq!(r.unwrap_err().code(), Code::Unavailable);
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}
