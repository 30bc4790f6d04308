//! Counts of API requests per (method, path template, status), every share call, and the
//! requests in flight.

use super::model::LinodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Path template recorded for requests that matched no route.
pub const UNMATCHED: &str = "<unmatched>";

/// One row of the request counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCount {
    /// HTTP method.
    pub method: String,
    /// The spec's path template without `/v4` or `/v4beta`, e.g. `/linode/instances/{linodeId}`.
    pub template: String,
    /// Answer status.
    pub status: u16,
    /// How many.
    pub count: u64,
}

/// A share call that reached the share handler (injected 429/5xx answers never do; they
/// appear only in the counts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareCall {
    /// `/networking/ips/share` or `/networking/ipv4/share`.
    pub template: String,
    /// The body's `linode_id`, when it was an integer.
    pub linode_id: Option<LinodeId>,
    /// The body's `ips`, when it was a list of strings.
    pub ips: Option<Vec<String>>,
    /// Answer status.
    pub status: u16,
}

/// API requests received and not answered yet, per method and template.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    /// HTTP method.
    pub method: String,
    /// The path template, as in [`RequestCount`].
    pub template: String,
    /// How many.
    pub count: u64,
}

#[derive(Debug, Default)]
struct Inner {
    counts: BTreeMap<(String, String, u16), u64>,
    shares: Vec<ShareCall>,
    in_flight: BTreeMap<(String, String), u64>,
}

/// The request log.
#[derive(Debug, Default)]
pub struct RequestLog {
    inner: Mutex<Inner>,
}

/// Counts one request as in flight until dropped.
#[derive(Debug)]
pub(crate) struct InFlightGuard<'a> {
    log: &'a RequestLog,
    key: (String, String),
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        let mut g = self.log.lock();
        if let Some(n) = g.in_flight.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                g.in_flight.remove(&self.key);
            }
        }
    }
}

impl RequestLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        sharedip_process::sync::lock(&self.inner)
    }

    pub(crate) fn begin(&self, method: &str, template: &str) -> InFlightGuard<'_> {
        let key = (method.to_owned(), template.to_owned());
        *self.lock().in_flight.entry(key.clone()).or_default() += 1;
        InFlightGuard { log: self, key }
    }

    /// Requests with this method and template received and not answered yet (waiting
    /// out injected latency or reply delay, or being handled).
    pub fn in_flight(&self, method: &str, template: &str) -> u64 {
        self.lock()
            .in_flight
            .iter()
            .filter(|((m, t), _)| m.eq_ignore_ascii_case(method) && t == template)
            .map(|(_, c)| *c)
            .sum()
    }

    /// Every request in flight, sorted by method and template.
    pub fn in_flight_counts(&self) -> Vec<InFlight> {
        self.lock()
            .in_flight
            .iter()
            .map(|((method, template), count)| InFlight {
                method: method.clone(),
                template: template.clone(),
                count: *count,
            })
            .collect()
    }

    pub(crate) fn record(&self, method: &str, template: &str, status: u16) {
        *self
            .lock()
            .counts
            .entry((method.to_owned(), template.to_owned(), status))
            .or_default() += 1;
    }

    pub(crate) fn record_share(&self, call: ShareCall) {
        self.lock().shares.push(call);
    }

    /// All counts, sorted by method, template, status.
    pub fn counts(&self) -> Vec<RequestCount> {
        self.lock()
            .counts
            .iter()
            .map(|((method, template, status), count)| RequestCount {
                method: method.clone(),
                template: template.clone(),
                status: *status,
                count: *count,
            })
            .collect()
    }

    /// Requests with this method and template, any status.
    pub fn count(&self, method: &str, template: &str) -> u64 {
        self.lock()
            .counts
            .iter()
            .filter(|((m, t, _), _)| m.eq_ignore_ascii_case(method) && t == template)
            .map(|(_, c)| *c)
            .sum()
    }

    /// Requests with this method, template and status.
    pub fn count_status(&self, method: &str, template: &str, status: u16) -> u64 {
        self.lock()
            .counts
            .get(&(method.to_ascii_uppercase(), template.to_owned(), status))
            .copied()
            .unwrap_or(0)
    }

    /// Every share call that reached the handler, in order.
    pub fn share_calls(&self) -> Vec<ShareCall> {
        self.lock().shares.clone()
    }

    /// Successful (200) share calls per Linode.
    pub fn successful_shares_per_linode(&self) -> BTreeMap<LinodeId, u64> {
        let mut out = BTreeMap::new();
        for c in self.lock().shares.iter().filter(|c| c.status == 200) {
            if let Some(id) = c.linode_id {
                *out.entry(id).or_default() += 1;
            }
        }
        out
    }

    /// Forgets the counts and share calls (requests in flight stay counted until they
    /// end).
    pub fn reset(&self) {
        let mut g = self.lock();
        let in_flight = std::mem::take(&mut g.in_flight);
        *g = Inner {
            in_flight,
            ..Inner::default()
        };
    }
}
