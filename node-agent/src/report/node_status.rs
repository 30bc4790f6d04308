//! This node's entry in `SharedIP.status.nodes`, written with server-side apply under the field
//! manager `sharedip-node-agent/<node>`, so each agent owns exactly its own entry of the
//! map-list and never touches the operator's fields or other nodes' entries.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::{json, Value};
use sharedip_api::{FlowHandoverStatus, NodeStatus, SharedIP};

use crate::decision::{self, Decision, Outcome, RouteServerWait, Sessions};

/// Writes this node's entries, remembering what it wrote: the entry and the object's
/// resourceVersion seen then, so a store that has not caught up with our own write does not
/// cause a second one.
pub struct StatusWriter {
    api: Api<SharedIP>,
    node: String,
    written: HashMap<String, (Option<String>, Option<NodeStatus>)>,
}

impl StatusWriter {
    /// The writer of `node`'s entries.
    pub fn new(client: kube::Client, node: &str) -> Self {
        Self {
            api: Api::all(client),
            node: node.to_string(),
            written: HashMap::new(),
        }
    }

    /// Forgets what was written, so the next [`StatusWriter::write`] rewrites every entry that
    /// differs from the cached object (the resync and SIGHUP).
    pub fn forget_written(&mut self) {
        self.written.clear();
    }

    /// Writes this node's entry of every SharedIP in `sharedips` whose entry changed:
    /// `desired` is what this turn decided, `outcomes` what applying it achieved (empty at
    /// shutdown: nothing is applied any more), `waits` whether a SharedIP's sessions are still
    /// expected to come up (absent: not waiting), `flow_handover` the node's part in a flow
    /// handover of a SharedIP (absent: none).
    pub async fn write(
        &mut self,
        sharedips: Vec<Arc<SharedIP>>,
        desired: &BTreeMap<String, Decision>,
        outcomes: &BTreeMap<String, Outcome>,
        sessions: Sessions,
        waits: &BTreeMap<String, RouteServerWait>,
        flow_handover: &BTreeMap<String, FlowHandoverStatus>,
    ) {
        let params = PatchParams::apply(&field_manager(&self.node)).force();
        let now = Time(Timestamp::now());
        for sip in sharedips {
            let name = sip.name_any();
            let Some(d) = desired.get(&name) else {
                continue;
            };
            let previous = sip
                .status
                .as_ref()
                .and_then(|s| s.nodes.iter().find(|n| n.name == self.node));
            let entry = node_entry(
                &self.node,
                d,
                outcomes.get(&name),
                sessions,
                waits.get(&name).copied().unwrap_or_default(),
                previous,
                now.clone(),
            );
            let entry = with_flow_handover(
                &self.node,
                entry,
                d,
                flow_handover.get(&name),
                previous,
                &now,
            );
            if same_entry(entry.as_ref(), previous) {
                continue;
            }
            let rv = sip.resource_version();
            if let Some((seen_rv, written)) = self.written.get(&name) {
                if *seen_rv == rv && same_entry(entry.as_ref(), written.as_ref()) {
                    // Already written; the store has not seen our write yet.
                    continue;
                }
            }
            self.patch(name, rv, entry, &params).await;
        }
    }

    async fn patch(
        &mut self,
        name: String,
        rv: Option<String>,
        entry: Option<NodeStatus>,
        params: &PatchParams,
    ) {
        let patch = status_patch(entry.as_ref());
        match self
            .api
            .patch_status(&name, params, &Patch::Apply(&patch))
            .await
        {
            Ok(_) => {
                tracing::debug!(sharedip = %name, ?entry, "status written");
                self.written.insert(name, (rv, entry));
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                tracing::warn!(sharedip = %name, error = %e, "cannot write status; retrying");
                self.written.remove(&name);
            }
        }
    }
}

/// The field manager of `node`'s agent.
pub fn field_manager(node: &str) -> String {
    format!("sharedip-node-agent/{node}")
}

/// The entry this node should have, or None when it has no role (the entry is removed, so
/// unselected nodes do not crowd the status). Its reason is [`decision::verdict`]'s.
pub fn node_entry(
    node: &str,
    decision: &Decision,
    outcome: Option<&Outcome>,
    sessions: Sessions,
    wait: RouteServerWait,
    previous: Option<&NodeStatus>,
    now: Time,
) -> Option<NodeStatus> {
    let role = decision.role?;
    let verdict = decision::verdict(decision, outcome, sessions, wait);
    let since = match previous {
        Some(p) if p.announcing == verdict.announcing && p.since.is_some() => p.since.clone(),
        _ => Some(now),
    };
    Some(NodeStatus {
        name: node.to_string(),
        role: Some(role),
        announcing: verdict.announcing,
        reason: Some(verdict.reason.as_str().to_string()),
        message: Some(verdict.message),
        sessions_established: Some(i32::try_from(sessions.established).unwrap_or(i32::MAX)),
        sessions_total: Some(i32::try_from(sessions.total).unwrap_or(i32::MAX)),
        since,
        flow_handover: None,
    })
}

/// Adds the node's flow handover part to its entry. A node that hands the address over keeps
/// an entry until its window ends, even when it has no role any more (deselected): the node
/// that forwards its connections, and the operator that keeps its share, read it there.
fn with_flow_handover(
    node: &str,
    entry: Option<NodeStatus>,
    decision: &Decision,
    flow_handover: Option<&FlowHandoverStatus>,
    previous: Option<&NodeStatus>,
    now: &Time,
) -> Option<NodeStatus> {
    let Some(fh) = flow_handover else {
        return entry;
    };
    if let Some(mut e) = entry {
        e.flow_handover = Some(fh.clone());
        return Some(e);
    }
    fh.handing_over_until.as_ref()?;
    let since = match previous {
        Some(p) if !p.announcing && p.since.is_some() => p.since.clone(),
        _ => Some(now.clone()),
    };
    Some(NodeStatus {
        name: node.to_string(),
        role: None,
        announcing: false,
        reason: Some(decision.reason.as_str().to_string()),
        message: Some(format!(
            "{}; answers the connections it had until the flow handover window ends",
            decision.message
        )),
        since,
        flow_handover: Some(fh.clone()),
        ..Default::default()
    })
}

/// Whether two entries say the same, ignoring `since`.
pub fn same_entry(a: Option<&NodeStatus>, b: Option<&NodeStatus>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            let mut a = a.clone();
            a.since = b.since.clone();
            a == *b
        }
        _ => false,
    }
}

/// The apply patch for the status subresource holding only this node's entry (or none, which
/// removes the entry this manager wrote before).
pub fn status_patch(entry: Option<&NodeStatus>) -> Value {
    let status = match entry {
        Some(e) => json!({ "nodes": [e] }),
        None => json!({}),
    };
    json!({
        "apiVersion": "sharedip.io/v1alpha1",
        "kind": "SharedIP",
        "status": status,
    })
}

#[cfg(test)]
mod tests {
    use sharedip_api::{Role, SharedAddress};

    use super::*;
    use crate::community::RoleCommunity;
    use crate::decision::{Reason, Target};

    fn target() -> Target {
        Target::new(
            SharedAddress::parse("192.0.2.10", None).unwrap(),
            RoleCommunity::PRIMARY,
        )
        .unwrap()
    }

    fn decision(target: bool, reason: Reason) -> Decision {
        Decision {
            role: Some(Role::Primary),
            target: target.then(self::target),
            reason,
            message: "m".into(),
        }
    }

    fn announced() -> Outcome {
        Outcome {
            bound: Some(crate::binder::BoundBy::Agent),
            announced: true,
            bind_error: None,
        }
    }

    fn sessions(established: usize, total: usize) -> Sessions {
        Sessions { established, total }
    }

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn a_node_handing_over_keeps_an_entry_until_its_window_ends_even_without_a_role() {
        let now = Time(Timestamp::from_second(1_800_000_000).unwrap());
        let deselected = Decision {
            role: None,
            target: None,
            reason: Reason::NotSelected,
            message: "m".into(),
        };
        let mut fh = FlowHandoverStatus {
            endpoint: "2001:db8:1::10".into(),
            handing_over_until: Some(now.clone()),
            ..Default::default()
        };
        let e = with_flow_handover("n", None, &deselected, Some(&fh), None, &now).unwrap();
        assert_eq!((e.role, e.announcing), (None, false));
        assert_eq!(e.reason.as_deref(), Some("NotSelected"));
        assert_eq!(e.flow_handover.as_ref(), Some(&fh));
        // Not handing over: no role, no entry.
        fh.handing_over_until = None;
        assert_eq!(
            with_flow_handover("n", None, &deselected, Some(&fh), None, &now),
            None
        );
        assert_eq!(
            with_flow_handover("n", None, &deselected, None, None, &now),
            None
        );
        // An entry of its own carries the part as it is.
        let own = NodeStatus {
            name: "n".into(),
            ..Default::default()
        };
        let e = with_flow_handover("n", Some(own), &deselected, Some(&fh), None, &now).unwrap();
        assert_eq!(e.flow_handover, Some(fh));
    }

    #[test]
    fn announced_entry() {
        let e = node_entry(
            "n1",
            &decision(true, Reason::Announced),
            Some(&announced()),
            sessions(3, 4),
            RouteServerWait::Over,
            None,
            t(100),
        )
        .unwrap();
        assert_eq!(e.name, "n1");
        assert_eq!(e.role, Some(Role::Primary));
        assert!(e.announcing);
        assert_eq!(e.reason.as_deref(), Some("Announced"));
        assert_eq!(e.sessions_established, Some(3));
        assert_eq!(e.sessions_total, Some(4));
        assert_eq!(e.since, Some(t(100)));
    }

    #[test]
    fn no_role_no_entry() {
        let mut d = decision(false, Reason::NotSelected);
        d.role = None;
        assert!(node_entry(
            "n1",
            &d,
            None,
            sessions(4, 4),
            RouteServerWait::Over,
            None,
            t(1)
        )
        .is_none());
        let e = node_entry(
            "n1",
            &decision(false, Reason::Draining),
            None,
            sessions(4, 4),
            RouteServerWait::Over,
            None,
            t(1),
        )
        .unwrap();
        assert_eq!(
            (e.announcing, e.reason.as_deref(), e.message.as_deref()),
            (false, Some("Draining"), Some("m"))
        );
    }

    #[test]
    fn since_changes_only_with_announcing() {
        let d = decision(true, Reason::Announced);
        let a = announced();
        let first = node_entry(
            "n1",
            &d,
            Some(&a),
            sessions(4, 4),
            RouteServerWait::Over,
            None,
            t(100),
        )
        .unwrap();
        // Sessions change, announcing does not: since stays.
        let second = node_entry(
            "n1",
            &d,
            Some(&a),
            sessions(3, 4),
            RouteServerWait::Over,
            Some(&first),
            t(200),
        )
        .unwrap();
        assert_eq!(second.since, Some(t(100)));
        assert!(!same_entry(Some(&first), Some(&second)));
        let off = node_entry(
            "n1",
            &decision(false, Reason::Draining),
            None,
            sessions(3, 4),
            RouteServerWait::Over,
            Some(&second),
            t(300),
        )
        .unwrap();
        assert_eq!(off.since, Some(t(300)));
        let mut again = off.clone();
        again.since = Some(t(999));
        assert!(same_entry(Some(&off), Some(&again)));
        assert!(same_entry(None, None));
        assert!(!same_entry(Some(&off), None));
    }

    #[test]
    fn patch_holds_only_this_entry() {
        let e = node_entry(
            "n1",
            &decision(true, Reason::Announced),
            Some(&announced()),
            sessions(4, 4),
            RouteServerWait::Over,
            None,
            t(0),
        )
        .unwrap();
        let p = status_patch(Some(&e));
        assert_eq!(p["kind"], "SharedIP");
        assert_eq!(p["apiVersion"], "sharedip.io/v1alpha1");
        let status = p["status"].as_object().unwrap();
        assert_eq!(status.len(), 1, "{p}");
        assert_eq!(p["status"]["nodes"][0]["name"], "n1");
        assert_eq!(p["status"]["nodes"][0]["role"], "Primary");
        assert_eq!(p["status"]["nodes"][0]["sessionsEstablished"], 4);
        assert_eq!(status_patch(None)["status"], json!({}));
        assert_eq!(field_manager("n1"), "sharedip-node-agent/n1");
    }
}
