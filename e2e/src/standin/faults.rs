//! Fault injection: rate limiting (429 + `Retry-After`), server errors, added latency
//! (before handling) and reply delay (after handling), and failing share calls for chosen
//! Linodes.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::model::LinodeId;

/// What an injected fault answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    /// 429 with `Retry-After: retry_after_secs`.
    RateLimit {
        /// Seconds for `Retry-After`.
        retry_after_secs: u64,
    },
    /// A 5xx answer (500, 502, 503 or 504).
    ServerError {
        /// The status code.
        status: u16,
    },
}

/// A rule: the next `count` API requests that match answer with `kind`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRule {
    /// What to answer.
    #[serde(flatten)]
    pub kind: FaultKind,
    /// How many matching requests still get the fault.
    pub count: u32,
    /// Only requests with this method (e.g. `POST`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Only requests whose path, with or without the `/v4` / `/v4beta` prefix, starts
    /// with this (e.g. `/networking/ips/share`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
}

impl FaultRule {
    /// The next `count` requests answer 429 with `Retry-After: retry_after_secs`.
    pub fn rate_limit(count: u32, retry_after_secs: u64) -> Self {
        Self {
            kind: FaultKind::RateLimit { retry_after_secs },
            count,
            method: None,
            path_prefix: None,
        }
    }

    /// The next `count` requests answer `status` (a 5xx).
    pub fn server_error(count: u32, status: u16) -> Self {
        Self {
            kind: FaultKind::ServerError { status },
            count,
            method: None,
            path_prefix: None,
        }
    }

    /// Restricts the rule to one method.
    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(method.to_ascii_uppercase());
        self
    }

    /// Restricts the rule to a path prefix.
    pub fn path_prefix(mut self, prefix: &str) -> Self {
        self.path_prefix = Some(prefix.to_owned());
        self
    }

    /// Checks the rule is one the stand-in can answer.
    pub fn validate(&self) -> Result<(), ApiError> {
        if let FaultKind::ServerError { status } = self.kind {
            if !matches!(status, 500 | 502 | 503 | 504) {
                return Err(ApiError::bad_request(
                    "status must be 500, 502, 503 or 504",
                    "status",
                ));
            }
        }
        Ok(())
    }

    fn matches(&self, method: &Method, path: &str, unversioned: &str) -> bool {
        self.count > 0
            && self
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()))
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(p) || unversioned.starts_with(p))
    }

    fn answer(&self) -> ApiError {
        match self.kind {
            FaultKind::RateLimit { retry_after_secs } => {
                let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "Too many requests", None);
                e.retry_after = Some(retry_after_secs);
                e
            }
            FaultKind::ServerError { status } => ApiError::new(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "Internal server error (injected by the stand-in)",
                None,
            ),
        }
    }
}

/// How share calls for one Linode (or Linode creation) fail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareFailure {
    /// Status code to answer (any 4xx or 5xx).
    pub status: u16,
    /// The `reason` in the error body.
    pub reason: String,
}

impl Default for ShareFailure {
    fn default() -> Self {
        Self {
            status: 500,
            reason: "Internal server error (injected by the stand-in)".into(),
        }
    }
}

/// The current fault configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultsView {
    /// Pending rules, first match wins.
    pub rules: Vec<FaultRule>,
    /// Latency added to every API request, in milliseconds.
    pub latency_ms: u64,
    /// Delay between handling an API request and answering it, in milliseconds: the
    /// state has changed but the client does not know yet (a client that dies meanwhile
    /// never learns that its call took effect).
    #[serde(default)]
    pub reply_delay_ms: u64,
    /// Linodes whose share calls fail.
    pub share_failures: BTreeMap<LinodeId, ShareFailure>,
    /// Allocation limits and refusals.
    #[serde(default)]
    pub allocation: AllocationKnobs,
}

/// Linode's refusals around creating things: what an account without the right limits gets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocationKnobs {
    /// A public IPv4 address beyond a Linode's first needs a support ticket: allocating
    /// one is refused with [`SUPPORT_TICKET_REASON`].
    #[serde(default)]
    pub ipv4_needs_ticket: bool,
    /// The account holds at most this many public IPv4 addresses (Linodes' own included);
    /// allocating or creating a Linode beyond it is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_limit: Option<u32>,
    /// `POST /linode/instances` is refused with this until cleared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linode_create_failure: Option<ShareFailure>,
    /// The account has no access to reserved IPs: every `/networking/reserved/ips` call gets
    /// 404 [`super::reserved::RESERVED_IPS_DENIED_REASON`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reserved_ips_denied: bool,
    /// The account holds at most this many reserved IPv4 addresses; reserving beyond it is
    /// refused with [`super::reserved::RESERVED_IPV4_LIMIT_REASON`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_ipv4_limit: Option<u32>,
}

/// The refusal of an extra public IPv4 address. The spec only says a support ticket is
/// needed; this wording is the stand-in's, modelled on what Linode answers.
pub const SUPPORT_TICKET_REASON: &str = "Additional IPv4 addresses require technical \
     justification. Please open a Support Ticket describing your requirement.";

/// Fault knobs, shared by the server and tests.
#[derive(Debug, Default)]
pub struct Faults {
    inner: Mutex<FaultsView>,
}

impl Faults {
    fn lock(&self) -> std::sync::MutexGuard<'_, FaultsView> {
        sharedip_process::sync::lock(&self.inner)
    }

    /// Adds a rule after the existing ones.
    pub fn inject(&self, rule: FaultRule) -> Result<(), ApiError> {
        rule.validate()?;
        self.lock().rules.push(rule);
        Ok(())
    }

    /// Sets the latency added to every API request.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency_ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
    }

    /// Sets the delay between handling every API request and answering it.
    pub fn set_reply_delay(&self, delay: Duration) {
        self.lock().reply_delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    }

    /// Makes share calls for `linode_id` fail until cleared.
    pub fn fail_share_for(
        &self,
        linode_id: LinodeId,
        failure: ShareFailure,
    ) -> Result<(), ApiError> {
        if !(400..=599).contains(&failure.status) {
            return Err(ApiError::bad_request(
                "status must be a 4xx or 5xx code",
                "status",
            ));
        }
        self.lock().share_failures.insert(linode_id, failure);
        Ok(())
    }

    /// Lets share calls for `linode_id` through again.
    pub fn clear_share_failure(&self, linode_id: LinodeId) {
        self.lock().share_failures.remove(&linode_id);
    }

    /// Sets the allocation knobs (all of them at once).
    pub fn set_allocation(&self, knobs: AllocationKnobs) -> Result<(), ApiError> {
        if let Some(f) = &knobs.linode_create_failure {
            if !(400..=599).contains(&f.status) {
                return Err(ApiError::bad_request(
                    "status must be a 4xx or 5xx code",
                    "linode_create_failure",
                ));
            }
        }
        self.lock().allocation = knobs;
        Ok(())
    }

    /// The allocation knobs.
    pub fn allocation(&self) -> AllocationKnobs {
        self.lock().allocation.clone()
    }

    /// Removes every fault.
    pub fn clear(&self) {
        *self.lock() = FaultsView::default();
    }

    /// The current configuration.
    pub fn view(&self) -> FaultsView {
        self.lock().clone()
    }

    /// Remaining requests that will get an injected 429/5xx.
    pub fn pending(&self) -> u32 {
        self.lock().rules.iter().map(|r| r.count).sum()
    }

    pub(crate) fn latency(&self) -> Duration {
        Duration::from_millis(self.lock().latency_ms)
    }

    pub(crate) fn reply_delay(&self) -> Duration {
        Duration::from_millis(self.lock().reply_delay_ms)
    }

    /// Consumes one count of the first matching rule, if any, and returns its answer.
    pub(crate) fn take(&self, method: &Method, path: &str, unversioned: &str) -> Option<ApiError> {
        let mut g = self.lock();
        let rule = g
            .rules
            .iter_mut()
            .find(|r| r.matches(method, path, unversioned))?;
        rule.count -= 1;
        let answer = rule.answer();
        g.rules.retain(|r| r.count > 0);
        Some(answer)
    }

    pub(crate) fn share_failure(&self, linode_id: LinodeId) -> Option<ApiError> {
        self.lock().share_failures.get(&linode_id).map(|f| {
            ApiError::new(
                StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                f.reason.clone(),
                None,
            )
        })
    }
}
