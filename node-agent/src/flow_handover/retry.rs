//! Windows the kernel refused: each is tried again after a wait that doubles with every
//! refusal in a row (up to [`MAX_WAIT`]), and only the first refusal of a streak is worth
//! an Event. Without it a refused window (no VXLAN module, a full routing table, a netlink
//! error that persists) would be tried, logged and reported on every turn of the loop.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

/// The wait after a first refusal.
pub const FIRST_WAIT: Duration = Duration::from_secs(1);
/// The longest wait between two attempts.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Refusals {
    in_a_row: u32,
    retry_at: Instant,
}

/// The refused windows, by key.
#[derive(Debug, Default)]
pub struct Retries {
    refused: BTreeMap<String, Refusals>,
}

impl Retries {
    /// Whether window `key` may be tried now.
    pub fn may_try(&self, key: &str, now: Instant) -> bool {
        self.refused.get(key).is_none_or(|r| r.retry_at <= now)
    }

    /// Window `key` was refused at `now`; true when this starts a streak (worth an Event).
    pub fn refused(&mut self, key: &str, now: Instant) -> bool {
        let in_a_row = self.refused.get(key).map_or(0, |r| r.in_a_row) + 1;
        let wait = FIRST_WAIT
            .saturating_mul(1 << (in_a_row - 1).min(16))
            .min(MAX_WAIT);
        self.refused.insert(
            key.to_owned(),
            Refusals {
                in_a_row,
                retry_at: now + wait,
            },
        );
        in_a_row == 1
    }

    /// Window `key` opened: its streak is over.
    pub fn opened(&mut self, key: &str) {
        self.refused.remove(key);
    }

    /// Forgets the windows no longer wanted.
    pub fn retain(&mut self, wanted: impl Fn(&str) -> bool) {
        self.refused.retain(|k, _| wanted(k));
    }

    /// When the earliest refused window may be tried again.
    pub fn next_retry(&self) -> Option<Instant> {
        self.refused.values().map(|r| r.retry_at).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_window_waits_longer_each_time_and_is_reported_once() {
        let t0 = Instant::now();
        let mut r = Retries::default();
        assert!(r.may_try("web/a/forward", t0));
        assert!(
            r.refused("web/a/forward", t0),
            "the first refusal is reported"
        );
        assert!(!r.may_try("web/a/forward", t0));
        assert!(r.may_try("web/b/forward", t0), "other windows are not held");
        assert_eq!(r.next_retry(), Some(t0 + FIRST_WAIT));

        let t1 = t0 + FIRST_WAIT;
        assert!(r.may_try("web/a/forward", t1));
        assert!(
            !r.refused("web/a/forward", t1),
            "the streak goes on, unreported"
        );
        assert_eq!(r.next_retry(), Some(t1 + 2 * FIRST_WAIT));

        let mut t = t1;
        for _ in 0..20 {
            t += MAX_WAIT;
            r.refused("web/a/forward", t);
        }
        assert_eq!(r.next_retry(), Some(t + MAX_WAIT), "the wait is bounded");

        r.opened("web/a/forward");
        assert!(r.may_try("web/a/forward", t));
        assert!(
            r.refused("web/a/forward", t),
            "a new streak is reported again"
        );
    }

    #[test]
    fn windows_no_longer_wanted_are_forgotten() {
        let t0 = Instant::now();
        let mut r = Retries::default();
        r.refused("web/a/forward", t0);
        r.refused("api/a/forward", t0);
        r.retain(|k| k.starts_with("web/"));
        assert!(r.may_try("api/a/forward", t0));
        assert!(!r.may_try("web/a/forward", t0));
    }
}
