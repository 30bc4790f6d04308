//! Damps flapping node membership.
//!
//! Every change of which SharedIPs select a node costs a share call on that node's Linode (the
//! call sets the Linode's whole list). A label that flaps — two controllers fighting over it, a
//! script in a loop — would otherwise cost one call per flap: 5 flaps a second for 10 seconds
//! cost 32 calls on one Linode. Route flap damping, the BGP answer to the same problem, holds
//! a flapping route down until it is stable; this does the same for a node:
//!
//! - a membership change of a node that was quiet for the hold-down is applied at once, so a
//!   single relabel goes out in the next wave, without added latency;
//! - a change that follows the previous one within the hold-down starts a hold: the node keeps
//!   the labels it had before that change (its previous membership) until its labels have not
//!   changed membership for a whole hold-down, and then its current labels apply.
//!
//! So a flapping node costs at most two share calls on its Linode, however long it flaps: one
//! for the first change, one when it settles (none if it settles where it was held).
//!
//! Only changes that alter membership count: a label no selector looks at can change as
//! often as it likes. "Membership" is, for every SharedIP, whether the node is selected and
//! with which role. A node's deletion is never held (its Linode may be gone), and neither is a
//! change of its providerID, which is not a label.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use sharedip_api::rules;
use sharedip_api::{Role, SharedIP};
use tokio::time::Instant;

pub type Labels = BTreeMap<String, String>;

/// What became of one observation of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// First sight of the node: its labels apply.
    New,
    /// No SharedIP's membership changed.
    Unchanged,
    /// Membership changed and applies at once.
    Applied,
    /// Membership changed within the hold-down of the previous change: the node is held at its
    /// previous labels from now on, until `until` (pushed back by every further change).
    HoldStarted { until: Instant },
    /// Membership changed again during a hold; the hold now lasts until `until`.
    HoldExtended { until: Instant },
}

/// A node held at its previous membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldNode {
    pub node: String,
    /// The SharedIPs whose membership the held changes touched.
    pub sharedips: BTreeSet<String>,
    /// Membership changes seen since the hold started, the one that started it included.
    pub changes: u32,
}

struct Hold {
    until: Instant,
    sharedips: BTreeSet<String>,
    changes: u32,
}

struct Entry {
    /// The labels selection uses: the latest ones, except during a hold.
    effective: Labels,
    /// The labels of the latest observation.
    latest: Labels,
    /// When an observation last changed the node's membership.
    last_change: Option<Instant>,
    hold: Option<Hold>,
}

/// Per-node hold-down of membership changes. Fed by the Node watch, read by reconciles.
pub struct MembershipDamper {
    hold_down: Duration,
    nodes: HashMap<String, Entry>,
}

/// Which SharedIPs select a node with these labels, and with which role.
fn membership(labels: &Labels, sharedips: &[Arc<SharedIP>]) -> BTreeMap<String, Role> {
    sharedips
        .iter()
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        // A SharedIP whose selectors are invalid selects nothing; its own reconcile says why.
        .filter_map(|s| {
            let role = rules::role_of(&s.spec, labels).ok().flatten()?;
            Some((s.name_any(), role))
        })
        .collect()
}

/// The SharedIPs whose membership differs between two label sets.
fn changed_sharedips(a: &Labels, b: &Labels, sharedips: &[Arc<SharedIP>]) -> BTreeSet<String> {
    let (ma, mb) = (membership(a, sharedips), membership(b, sharedips));
    ma.keys()
        .chain(mb.keys())
        .filter(|k| ma.get(*k) != mb.get(*k))
        .cloned()
        .collect()
}

impl MembershipDamper {
    /// A hold-down of zero disables damping: every change applies at once.
    pub fn new(hold_down: Duration) -> Self {
        Self {
            hold_down,
            nodes: HashMap::new(),
        }
    }

    pub fn hold_down(&self) -> Duration {
        self.hold_down
    }

    /// Records the node's labels as the watch delivered them at `now`.
    pub fn observe(
        &mut self,
        node: &str,
        labels: &Labels,
        sharedips: &[Arc<SharedIP>],
        now: Instant,
    ) -> Decision {
        let Some(entry) = self.nodes.get_mut(node) else {
            self.nodes.insert(
                node.to_string(),
                Entry {
                    effective: labels.clone(),
                    latest: labels.clone(),
                    last_change: None,
                    hold: None,
                },
            );
            return Decision::New;
        };
        let changed = changed_sharedips(&entry.latest, labels, sharedips);
        entry.latest = labels.clone();
        if changed.is_empty() {
            if entry.hold.is_none() {
                entry.effective = labels.clone();
            }
            return Decision::Unchanged;
        }
        let recent = entry
            .last_change
            .is_some_and(|t| now.saturating_duration_since(t) < self.hold_down);
        entry.last_change = Some(now);
        let until = now + self.hold_down;
        if let Some(hold) = entry.hold.as_mut() {
            hold.until = until;
            hold.changes = hold.changes.saturating_add(1);
            hold.sharedips.extend(changed);
            return Decision::HoldExtended { until };
        }
        if recent {
            entry.hold = Some(Hold {
                until,
                sharedips: changed,
                changes: 1,
            });
            return Decision::HoldStarted { until };
        }
        entry.effective = labels.clone();
        Decision::Applied
    }

    /// Forgets a deleted node: its deletion applies at once, and a node re-created under the
    /// same name starts afresh.
    pub fn forget(&mut self, node: &str) {
        self.nodes.remove(node);
    }

    /// Keeps only the named nodes (after a relist of the watch).
    pub fn retain(&mut self, nodes: &BTreeSet<String>) {
        self.nodes.retain(|n, _| nodes.contains(n));
    }

    /// When the next hold ends, if any node is held.
    pub fn next_release(&self) -> Option<Instant> {
        self.nodes
            .values()
            .filter_map(|e| e.hold.as_ref().map(|h| h.until))
            .min()
    }

    /// Ends every hold due at `now`: those nodes' latest labels apply. Returns the released
    /// nodes and the changes each saw while held.
    pub fn release_due(&mut self, now: Instant) -> Vec<(String, u32)> {
        let mut released = Vec::new();
        for (name, e) in self.nodes.iter_mut() {
            if e.hold.as_ref().is_some_and(|h| h.until <= now) {
                let changes = e.hold.take().map(|h| h.changes).unwrap_or_default();
                e.effective = e.latest.clone();
                released.push((name.clone(), changes));
            }
        }
        released.sort();
        released
    }

    /// The nodes as selection must see them: held nodes carry the labels they are held at.
    pub fn effective_nodes(&self, nodes: Vec<Arc<Node>>) -> Vec<Arc<Node>> {
        nodes
            .into_iter()
            .map(|n| {
                let held = self
                    .nodes
                    .get(&n.name_any())
                    .filter(|e| e.hold.is_some())
                    .map(|e| &e.effective);
                match held {
                    Some(labels) if n.metadata.labels.as_ref() != Some(labels) => {
                        let mut copy = (*n).clone();
                        copy.metadata.labels = Some(labels.clone());
                        Arc::new(copy)
                    }
                    _ => n,
                }
            })
            .collect()
    }

    /// The held nodes whose held changes touch `sharedip`, by name.
    pub fn held_for(&self, sharedip: &str) -> Vec<HeldNode> {
        let mut out: Vec<HeldNode> = self
            .nodes
            .iter()
            .filter_map(|(name, e)| {
                let h = e.hold.as_ref()?;
                h.sharedips.contains(sharedip).then(|| HeldNode {
                    node: name.clone(),
                    sharedips: h.sharedips.clone(),
                    changes: h.changes,
                })
            })
            .collect();
        out.sort_by(|a, b| a.node.cmp(&b.node));
        out
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sharedip(name: &str) -> Arc<SharedIP> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "sharedip.io/v1alpha1",
                "kind": "SharedIP",
                "metadata": {"name": name},
                "spec": {
                    "address": "192.0.2.10",
                    "primary": {"nodeSelector": {"matchLabels": {"role": "primary"}}},
                    "secondary": {"nodeSelector": {"matchLabels": {"role": "secondary"}}},
                },
            }))
            .unwrap(),
        )
    }

    fn labels(role: Option<&str>) -> Labels {
        let mut l: Labels = [("kubernetes.io/hostname".to_string(), "n".to_string())].into();
        if let Some(r) = role {
            l.insert("role".into(), r.into());
        }
        l
    }

    const HOLD: Duration = Duration::from_secs(10);

    /// What selection sees for node `n` now: its role label.
    fn effective_role(d: &MembershipDamper, n: &str) -> Option<String> {
        d.nodes[n].effective.get("role").cloned()
    }

    #[tokio::test(start_paused = true)]
    async fn single_changes_apply_at_once() {
        let sips = [sharedip("web")];
        let mut d = MembershipDamper::new(HOLD);
        let now = Instant::now();
        assert_eq!(
            d.observe("n", &labels(Some("primary")), &sips, now),
            Decision::New
        );
        // A change nobody selects on never counts.
        let mut other = labels(Some("primary"));
        other.insert("unrelated".into(), "1".into());
        assert_eq!(d.observe("n", &other, &sips, now), Decision::Unchanged);
        assert_eq!(d.observe("n", &labels(None), &sips, now), Decision::Applied);
        assert_eq!(effective_role(&d, "n"), None);
        // Quiet for a hold-down: the next change applies at once too.
        tokio::time::advance(HOLD).await;
        let at = Instant::now();
        assert_eq!(
            d.observe("n", &labels(Some("secondary")), &sips, at),
            Decision::Applied
        );
        assert_eq!(effective_role(&d, "n").as_deref(), Some("secondary"));
        assert!(d.next_release().is_none());
        assert!(d.held_for("web").is_empty());
    }

    /// A label flapping at 5 Hz for 10 s: the node's membership changes (what costs share
    /// calls) at most twice.
    #[tokio::test(start_paused = true)]
    async fn flapping_costs_at_most_two_membership_changes() {
        let sips = [sharedip("web"), sharedip("api")];
        let mut d = MembershipDamper::new(HOLD);
        d.observe("n", &labels(Some("secondary")), &sips, Instant::now());
        let mut applied = vec![effective_role(&d, "n")];
        let mut record = |d: &MembershipDamper| {
            let r = effective_role(d, "n");
            if applied.last() != Some(&r) {
                applied.push(r);
            }
        };
        let started = Instant::now();
        let mut flips = 0;
        while Instant::now() < started + Duration::from_secs(10) {
            flips += 1;
            let role = (flips % 2 == 0).then_some("secondary");
            let decision = d.observe("n", &labels(role), &sips, Instant::now());
            if flips == 1 {
                assert_eq!(decision, Decision::Applied, "the first change is not held");
            } else if flips == 2 {
                assert!(
                    matches!(decision, Decision::HoldStarted { .. }),
                    "{decision:?}"
                );
            }
            record(&d);
            if d.next_release().is_some_and(|t| t <= Instant::now()) {
                d.release_due(Instant::now());
            }
            record(&d);
            tokio::time::advance(Duration::from_millis(200)).await;
        }
        assert_eq!(flips, 50);
        let held = d.held_for("web");
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].node, "n");
        assert_eq!(held[0].changes, 49);
        assert_eq!(
            held[0].sharedips,
            ["api".to_string(), "web".to_string()].into()
        );
        // It settles (on "secondary", the 50th flip): the hold ends a hold-down after the last
        // change, not before.
        let release = d.next_release().expect("held");
        tokio::time::advance(HOLD - Duration::from_millis(300)).await;
        assert!(d.release_due(Instant::now()).is_empty());
        tokio::time::advance(release.saturating_duration_since(Instant::now())).await;
        assert_eq!(d.release_due(Instant::now()), vec![("n".to_string(), 49)]);
        record(&d);
        assert!(d.held_for("web").is_empty());
        // secondary → none (the first flip, at once) → held at none → settled at secondary.
        assert_eq!(
            applied,
            vec![
                Some("secondary".to_string()),
                None,
                Some("secondary".to_string())
            ]
        );
        // After the release, a single change applies at once again.
        tokio::time::advance(HOLD).await;
        assert_eq!(
            d.observe("n", &labels(Some("primary")), &sips, Instant::now()),
            Decision::Applied
        );
    }

    #[tokio::test(start_paused = true)]
    async fn held_nodes_are_seen_with_their_previous_labels() {
        let sips = [sharedip("web")];
        let mut d = MembershipDamper::new(HOLD);
        let now = Instant::now();
        let node = |role: Option<&str>| {
            let mut n = Node::default();
            n.metadata.name = Some("n".into());
            n.metadata.labels = Some(labels(role));
            Arc::new(n)
        };
        d.observe("n", &labels(Some("primary")), &sips, now);
        d.observe("n", &labels(None), &sips, now);
        let decision = d.observe("n", &labels(Some("primary")), &sips, now);
        assert_eq!(decision, Decision::HoldStarted { until: now + HOLD });
        d.observe("n", &labels(None), &sips, now);
        // Held at the labels before the hold started (no role), whatever comes now.
        let seen = d.effective_nodes(vec![node(Some("primary"))]);
        assert_eq!(seen[0].labels().get("role"), None);
        // Other nodes pass through untouched.
        let mut other = Node::default();
        other.metadata.name = Some("m".into());
        let other = Arc::new(other);
        let seen = d.effective_nodes(vec![other.clone()]);
        assert!(Arc::ptr_eq(&seen[0], &other));
        // A deleted node is forgotten at once, hold and all.
        d.forget("n");
        assert!(d.next_release().is_none());
        assert_eq!(
            d.observe("n", &labels(Some("primary")), &sips, now),
            Decision::New
        );
    }

    #[tokio::test(start_paused = true)]
    async fn zero_hold_down_disables_damping() {
        let sips = [sharedip("web")];
        let mut d = MembershipDamper::new(Duration::ZERO);
        let now = Instant::now();
        d.observe("n", &labels(Some("primary")), &sips, now);
        for i in 0..10 {
            let role = (i % 2 == 1).then_some("primary");
            assert_eq!(d.observe("n", &labels(role), &sips, now), Decision::Applied);
        }
    }
}
