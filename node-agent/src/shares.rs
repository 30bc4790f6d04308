//! When this node's Linode has just been given a share: the moment Linode's route servers are
//! about to accept the node's sessions (they ignore its connection attempts while no share
//! exists for its Linode), so the speaker stops waiting out its connect-retry backoff.
//!
//! Pure functions over the SharedIP statuses the operator writes; the Kubernetes loop keeps
//! the previous round's [`ShareFacts`] and asks [`newly_shared`] each round.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use sharedip_api::{conditions, SharedIP};

use crate::decision::RouteServerWait;

/// What one SharedIP's status says about this node's Linode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShareFact {
    /// `status.sharedWith` lists the Linode, or `status.owner` is the Linode.
    pub listed: bool,
    /// The SharedIP selects this node and its `Shared` condition is True.
    pub shared_and_selected: bool,
}

/// Per SharedIP name.
pub type ShareFacts = BTreeMap<String, ShareFact>;

/// Why a SharedIP counts as a new share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewShare {
    /// Its status newly lists this node's Linode.
    Listed,
    /// `Shared` turned True while it selects this node (or it newly selects this node while
    /// True).
    SharedTrue,
}

impl NewShare {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Listed => "linode listed in sharedWith",
            Self::SharedTrue => "Shared turned True",
        }
    }
}

/// What every SharedIP says about `linode` (None: the Linode is not known, so nothing lists
/// it); `selected` tells whether a SharedIP (by name) selects this node.
pub fn share_facts<'a>(
    sharedips: impl IntoIterator<Item = &'a SharedIP>,
    linode: Option<u64>,
    selected: impl Fn(&str) -> bool,
) -> ShareFacts {
    let linode = linode.and_then(|l| i64::try_from(l).ok());
    sharedips
        .into_iter()
        .map(|sip| {
            let name = sip.name_any();
            let status = sip.status.as_ref();
            let listed = linode.is_some_and(|l| {
                status.is_some_and(|s| {
                    s.shared_with.iter().any(|w| w.linode_id == l)
                        || s.owner.as_ref().is_some_and(|o| o.linode_id == l)
                })
            });
            let shared = status.is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == conditions::SHARED && c.status == "True")
            });
            let fact = ShareFact {
                listed,
                shared_and_selected: shared && selected(&name),
            };
            (name, fact)
        })
        .collect()
}

/// The SharedIPs that give this node's Linode a share now and did not in `previous` (a
/// SharedIP absent from `previous` gave none). A share that goes away and comes back counts
/// again; one that stays does not.
pub fn newly_shared(previous: &ShareFacts, current: &ShareFacts) -> Vec<(String, NewShare)> {
    current
        .iter()
        .filter_map(|(name, now)| {
            let before = previous.get(name).copied().unwrap_or_default();
            if now.listed && !before.listed {
                Some((name.clone(), NewShare::Listed))
            } else if now.shared_and_selected && !before.shared_and_selected {
                Some((name.clone(), NewShare::SharedTrue))
            } else {
                None
            }
        })
        .collect()
}

/// Since when one SharedIP gives this node's Linode its share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareTime {
    /// The Linode owns the address: its sessions do not wait for a share.
    Owner,
    /// `status.sharedWith[].since`.
    Since(Timestamp),
    /// Listed without a time (an operator that does not record it): taken as effective.
    Unrecorded,
}

impl ShareTime {
    /// When the share was made, if it may still be propagating.
    fn at(self) -> Option<Timestamp> {
        match self {
            Self::Since(t) => Some(t),
            Self::Owner | Self::Unrecorded => None,
        }
    }
}

/// The shares of this node's Linode, per SharedIP name. The route servers accept the node's
/// sessions once any share took effect: sessions are per node, not per address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShareTimes(BTreeMap<String, ShareTime>);

impl ShareTimes {
    /// What the SharedIPs' statuses say about the Linode `linode` of node `node` (None: the
    /// Linode is not known; only the owner node's name can then match).
    pub fn of<'a>(
        sharedips: impl IntoIterator<Item = &'a SharedIP>,
        linode: Option<u64>,
        node: &str,
    ) -> Self {
        let linode = linode.and_then(|l| i64::try_from(l).ok());
        let times = sharedips.into_iter().filter_map(|sip| {
            let status = sip.status.as_ref()?;
            let owner = status
                .owner
                .as_ref()
                .is_some_and(|o| Some(o.linode_id) == linode || o.node.as_deref() == Some(node));
            let time = if owner {
                ShareTime::Owner
            } else {
                let entry = status
                    .shared_with
                    .iter()
                    .find(|w| Some(w.linode_id) == linode)?;
                entry
                    .since
                    .as_ref()
                    .map_or(ShareTime::Unrecorded, |t| ShareTime::Since(t.0))
            };
            Some((sip.name_any(), time))
        });
        Self(times.collect())
    }

    /// Whether no SharedIP gives this node's Linode a share (nor is owned by it).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// When the Linode's first share still in place was made; None when it has none, or one
    /// that does not wait (owned, or of unrecorded age).
    pub fn oldest(&self) -> Option<Timestamp> {
        let mut times = self.0.values().map(|t| t.at());
        let first = times.next()??;
        times.try_fold(first, |oldest, t| t.map(|t| oldest.min(t)))
    }

    /// Whether a node without an established session still waits for the route servers
    /// for SharedIP `name`: the address is not shared with its Linode, the Linode's oldest
    /// share is younger than `grace`, or the agent started less than `grace` ago
    /// (`started`) and no session has been established since (`session_seen`).
    pub fn wait(
        &self,
        name: &str,
        started: Timestamp,
        session_seen: bool,
        now: Timestamp,
        grace: Duration,
    ) -> RouteServerWait {
        let within_grace = |t: Timestamp| {
            now.duration_since(t)
                .try_into()
                .map_or(true, |age: Duration| age < grace)
        };
        if !self.0.contains_key(name) {
            return RouteServerWait::NotShared;
        }
        if let Some(at) = self.oldest().filter(|t| within_grace(*t)) {
            return RouteServerWait::Propagating(at);
        }
        if !session_seen && within_grace(started) {
            return RouteServerWait::Starting(started);
        }
        RouteServerWait::Over
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use sharedip_api::{OwnerStatus, Role, SharedIPStatus, SharedLinode};

    use super::*;

    fn sip(name: &str, shared_with: &[i64], shared: Option<bool>) -> SharedIP {
        let mut s = SharedIP::new(
            name,
            serde_json::from_value(serde_json::json!({
                "address": "192.0.2.10",
                "primary": {"nodeSelector": {}}
            }))
            .unwrap(),
        );
        s.status = Some(SharedIPStatus {
            shared_with: shared_with
                .iter()
                .map(|l| SharedLinode {
                    linode_id: *l,
                    node: format!("node-{l}"),
                    role: Role::Primary,
                    since: None,
                })
                .collect(),
            conditions: shared
                .map(|v| Condition {
                    type_: conditions::SHARED.into(),
                    status: if v { "True" } else { "False" }.into(),
                    reason: "Test".into(),
                    message: String::new(),
                    last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
                    observed_generation: None,
                })
                .into_iter()
                .collect(),
            ..Default::default()
        });
        s
    }

    fn facts(sips: &[SharedIP], linode: Option<u64>, selects: &[&str]) -> ShareFacts {
        share_facts(sips, linode, |n| selects.contains(&n))
    }

    #[test]
    fn a_new_listing_of_our_linode_is_a_new_share() {
        let before = facts(&[sip("web", &[1], Some(true))], Some(7), &[]);
        let after = facts(&[sip("web", &[1, 7], Some(true))], Some(7), &[]);
        assert_eq!(
            newly_shared(&before, &after),
            vec![("web".to_string(), NewShare::Listed)]
        );
        // Once listed, later rounds do not count it again.
        assert!(newly_shared(&after, &after).is_empty());
        // Another Linode's share is not ours.
        let other = facts(&[sip("web", &[1, 8], Some(true))], Some(7), &[]);
        assert!(newly_shared(&before, &other).is_empty());
        // Removed, then given again: a new share.
        let removed = facts(&[sip("web", &[1], Some(true))], Some(7), &[]);
        assert!(newly_shared(&after, &removed).is_empty());
        assert_eq!(newly_shared(&removed, &after).len(), 1);
    }

    #[test]
    fn a_new_sharedip_or_the_first_round_counts() {
        let after = facts(
            &[sip("web", &[7], None), sip("db", &[1], None)],
            Some(7),
            &[],
        );
        assert_eq!(
            newly_shared(&ShareFacts::new(), &after),
            vec![("web".to_string(), NewShare::Listed)]
        );
    }

    #[test]
    fn the_owner_linode_counts_as_listed() {
        let mut owned = sip("web", &[], None);
        if let Some(s) = owned.status.as_mut() {
            s.owner = Some(OwnerStatus {
                linode_id: 7,
                ..Default::default()
            });
        }
        let after = facts(&[owned], Some(7), &[]);
        assert_eq!(
            newly_shared(&facts(&[sip("web", &[], None)], Some(7), &[]), &after),
            vec![("web".to_string(), NewShare::Listed)]
        );
    }

    #[test]
    fn shared_turning_true_counts_only_for_a_sharedip_that_selects_us() {
        let before = facts(&[sip("web", &[], Some(false))], None, &["web"]);
        let after = facts(&[sip("web", &[], Some(true))], None, &["web"]);
        assert_eq!(
            newly_shared(&before, &after),
            vec![("web".to_string(), NewShare::SharedTrue)]
        );
        // Not selecting us: not our share.
        let before = facts(&[sip("web", &[], Some(false))], None, &[]);
        let after = facts(&[sip("web", &[], Some(true))], None, &[]);
        assert!(newly_shared(&before, &after).is_empty());
        // Newly selected while Shared is already True.
        let after_selected = facts(&[sip("web", &[], Some(true))], None, &["web"]);
        assert_eq!(newly_shared(&after, &after_selected).len(), 1);
        // Shared going False is no share.
        let off = facts(&[sip("web", &[], Some(false))], None, &["web"]);
        assert!(newly_shared(&after_selected, &off).is_empty());
    }

    #[test]
    fn one_entry_per_sharedip_even_when_both_signals_change() {
        let before = facts(&[sip("web", &[], Some(false))], Some(7), &["web"]);
        let after = facts(&[sip("web", &[7], Some(true))], Some(7), &["web"]);
        assert_eq!(
            newly_shared(&before, &after),
            vec![("web".to_string(), NewShare::Listed)]
        );
    }

    fn since(name: &str, linode: i64, at: Option<&str>) -> SharedIP {
        let mut s = sip(name, &[linode], None);
        if let Some(st) = s.status.as_mut() {
            st.shared_with[0].since = at.map(|t| Time(t.parse().unwrap()));
        }
        s
    }

    fn ts(t: &str) -> Timestamp {
        t.parse().unwrap()
    }

    #[test]
    fn share_times_wait_for_the_youngest_linode_only_within_the_grace() {
        let grace = Duration::from_secs(240);
        let start = ts("2026-12-01T05:00:00Z");
        let young = since("web", 7, Some("2026-12-01T05:10:00Z"));
        let old = since("db", 7, Some("2026-12-01T05:01:00Z"));
        let other = since("api", 8, Some("2026-12-01T05:10:00Z"));
        let times = ShareTimes::of([&young, &other], Some(7), "node-7");
        assert!(!times.is_empty());
        let at = |now: &str, seen: bool, name: &str| times.wait(name, start, seen, ts(now), grace);
        // Shared 100 s ago: propagating.
        assert_eq!(
            at("2026-12-01T05:11:40Z", true, "web"),
            RouteServerWait::Propagating(ts("2026-12-01T05:10:00Z"))
        );
        // Another Linode's share is not ours.
        assert_eq!(
            at("2026-12-01T05:11:40Z", true, "api"),
            RouteServerWait::NotShared
        );
        assert_eq!(
            at("2026-12-01T05:11:40Z", true, "gone"),
            RouteServerWait::NotShared
        );
        // After the grace: an outage.
        assert_eq!(
            at("2026-12-01T05:14:00Z", true, "web"),
            RouteServerWait::Over
        );
        // A share from before counts for the node: sessions are per node.
        let both = ShareTimes::of([&young, &old], Some(7), "node-7");
        assert_eq!(both.oldest(), Some(ts("2026-12-01T05:01:00Z")));
        assert_eq!(
            both.wait("web", start, true, ts("2026-12-01T05:11:40Z"), grace),
            RouteServerWait::Over
        );
        // A young agent that never had a session still waits.
        assert_eq!(
            both.wait(
                "web",
                ts("2026-12-01T05:10:00Z"),
                false,
                ts("2026-12-01T05:11:40Z"),
                grace
            ),
            RouteServerWait::Starting(ts("2026-12-01T05:10:00Z"))
        );
        // A share stamped in the future (clock skew) is young.
        assert!(matches!(
            at("2026-12-01T05:09:00Z", true, "web"),
            RouteServerWait::Propagating(_)
        ));
    }

    #[test]
    fn owned_or_unrecorded_shares_do_not_wait() {
        let grace = Duration::from_secs(240);
        let now = ts("2026-12-01T05:11:00Z");
        let start = ts("2026-12-01T05:00:00Z");
        let mut owned = sip("web", &[], None);
        if let Some(s) = owned.status.as_mut() {
            s.owner = Some(OwnerStatus {
                linode_id: 9,
                node: Some("node-7".into()),
                ..Default::default()
            });
        }
        let young = since("db", 7, Some("2026-12-01T05:10:00Z"));
        // Owned by this node (matched by name, the Linode being unknown).
        let times = ShareTimes::of([&owned, &young], None, "node-7");
        assert_eq!(times.oldest(), None);
        assert_eq!(
            times.wait("web", start, true, now, grace),
            RouteServerWait::Over
        );
        assert_eq!(
            times.wait("db", start, true, now, grace),
            RouteServerWait::NotShared
        );
        let unrecorded = since("db", 7, None);
        let times = ShareTimes::of([&unrecorded], Some(7), "node-7");
        assert_eq!(
            times.wait("db", start, true, now, grace),
            RouteServerWait::Over
        );
        assert!(ShareTimes::of([&sip("x", &[8], None)], Some(7), "node-7").is_empty());
    }
}
