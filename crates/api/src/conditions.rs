//! Status conditions following the Kubernetes API conventions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// The address is shared with the Linodes of every usable selected node, and announced.
pub const READY: &str = "Ready";
/// The Linode API shares the address with the Linodes of the selected nodes.
pub const SHARED: &str = "Shared";
/// At least one node announces the address to the route servers.
pub const ANNOUNCED: &str = "Announced";

/// A condition to set: the transition time is filled in by [`merge`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Desired {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Builds the new condition list: keeps `lastTransitionTime` of conditions whose status did not
/// change (so `kubectl describe` tells since when a state holds), stamps `now` on those that did,
/// and keeps conditions of other types untouched.
pub fn merge(
    existing: &[Condition],
    desired: &[Desired],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = existing
        .iter()
        .filter(|c| !desired.iter().any(|d| d.type_ == c.type_))
        .cloned()
        .collect();
    for d in desired {
        let status = if d.status { "True" } else { "False" };
        let since = existing
            .iter()
            .find(|c| c.type_ == d.type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        out.push(Condition {
            type_: d.type_.to_string(),
            status: status.to_string(),
            reason: d.reason.clone(),
            message: d.message.clone(),
            observed_generation: generation,
            last_transition_time: since,
        });
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// Finds a condition by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_transition_time_when_status_unchanged() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
        let first = merge(
            &[],
            &[Desired::new(READY, true, "Shared", "ok")],
            Some(1),
            t0,
        );
        let second = merge(
            &first,
            &[Desired::new(READY, true, "Shared", "still ok")],
            Some(2),
            t1,
        );
        assert_eq!(second[0].last_transition_time.0, t0);
        assert_eq!(second[0].observed_generation, Some(2));
        let third = merge(
            &second,
            &[Desired::new(READY, false, "LinodeAPIError", "boom")],
            Some(2),
            t1,
        );
        assert_eq!(third[0].last_transition_time.0, t1);
        assert_eq!(third[0].status, "False");
    }

    #[test]
    fn keeps_other_types() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let first = merge(&[], &[Desired::new(ANNOUNCED, true, "a", "b")], None, t0);
        let second = merge(&first, &[Desired::new(READY, true, "c", "d")], None, t0);
        assert_eq!(second.len(), 2);
        assert!(find(&second, ANNOUNCED).is_some());
    }
}
