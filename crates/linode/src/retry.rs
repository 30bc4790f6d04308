//! Retry policy: capped exponential backoff with jitter, and `Retry-After` handling.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};

/// How failed attempts are retried. Only 5xx, 429 and transport errors/timeouts are retried;
/// other 4xx never are. Calls that create or allocate are retried only after a 429 or a
/// connection that was never made (see [`crate::LinodeClient::allocate_ipv4`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 = no retries).
    pub max_retries: u32,
    /// Backoff before the first retry; doubles per retry.
    pub backoff_base: Duration,
    /// Upper bound of the exponential backoff.
    pub backoff_cap: Duration,
    /// Upper bound applied to a 429/503 `Retry-After`, so one answer cannot stall a
    /// reconcile for long.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 4,
            backoff_base: Duration::from_millis(250),
            backoff_cap: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Delay before retry number `retry` (0-based): `min(cap, base * 2^retry)`, of which the
    /// upper half is random ("equal jitter"), so callers that failed together spread out but
    /// still wait at least half the nominal delay.
    pub fn backoff(&self, retry: u32) -> Duration {
        let nominal = self
            .backoff_base
            .checked_mul(2u32.saturating_pow(retry))
            .unwrap_or(self.backoff_cap)
            .min(self.backoff_cap);
        let half = nominal / 2;
        half + jitter(nominal - half)
    }

    /// Delay before retry number `retry`, honouring the server's `Retry-After` (capped at
    /// `max_retry_after`) when it sent one.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(wait) => wait.min(self.max_retry_after),
            None => self.backoff(retry),
        }
    }
}

/// Parses `Retry-After` as delta-seconds, the form Linode uses. The HTTP-date form and garbage
/// yield `None`, and the caller falls back to its own backoff.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    value.parse::<u64>().ok().map(Duration::from_secs)
}

/// A uniformly distributed duration in `[0, max]`. Randomness comes from std's per-instance
/// random hasher keys, which is plenty for spreading retries and needs no RNG dependency.
fn jitter(max: Duration) -> Duration {
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(nanos);
    let r = hasher.finish();
    Duration::from_nanos(r % nanos.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 5,
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_millis(1000),
            max_retry_after: Duration::from_secs(60),
        }
    }

    #[test]
    fn backoff_grows_within_bounds_and_is_capped() {
        let p = policy();
        for _ in 0..200 {
            for (retry, nominal_ms) in [
                (0, 100),
                (1, 200),
                (2, 400),
                (3, 800),
                (4, 1000),
                (30, 1000),
            ] {
                let d = p.backoff(retry);
                let nominal = Duration::from_millis(nominal_ms);
                assert!(d >= nominal / 2 && d <= nominal, "retry {retry}: {d:?}");
            }
        }
        // Overflowing multiplications still end at the cap.
        assert!(p.backoff(u32::MAX) <= p.backoff_cap);
    }

    #[test]
    fn jitter_varies() {
        let p = policy();
        let samples: std::collections::BTreeSet<_> = (0..50).map(|_| p.backoff(3)).collect();
        assert!(samples.len() > 1, "no jitter: {samples:?}");
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let p = policy();
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(3600))),
            Duration::from_secs(60)
        );
        assert!(p.delay(0, None) <= Duration::from_millis(100));
    }

    #[test]
    fn parses_retry_after_seconds_only() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static(" 12 "));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(12)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("-1"));
        assert_eq!(retry_after(&h), None);
    }
}
