//! This node's entry in `SharedIP.status.nodes`, written with server-side apply under the field
//! manager `sharedip-node-agent/<node>`, so each agent owns exactly its own entry of the
//! map-list and never touches the operator's fields or other nodes' entries.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{json, Value};
use sharedip_api::NodeStatus;

use crate::decision::{Decision, Reason};
use crate::orchestrator::Applied;

/// The field manager of `node`'s agent.
pub fn field_manager(node: &str) -> String {
    format!("sharedip-node-agent/{node}")
}

/// The entry this node should have, or None when it has no role (the entry is removed, so
/// unselected nodes do not crowd the status).
pub fn node_entry(
    node: &str,
    decision: &Decision,
    applied: Option<&Applied>,
    sessions: (usize, usize),
    previous: Option<&NodeStatus>,
    now: Time,
) -> Option<NodeStatus> {
    let role = decision.role?;
    let (established, total) = sessions;
    let (announcing, reason, message) = match (&decision.target, applied) {
        (Some(_), Some(a)) if a.bind_error.is_some() => (
            false,
            Reason::BindFailed,
            format!(
                "cannot bind {}: {}",
                a.target.address().address(),
                a.bind_error.as_deref().unwrap_or_default()
            ),
        ),
        (Some(_), Some(a)) if a.announced && established > 0 => {
            (true, Reason::Announced, decision.message.clone())
        }
        (Some(_), _) => (
            false,
            Reason::NoSessions,
            format!("ready to announce, but none of the {total} BGP sessions is established"),
        ),
        (None, _) => (false, decision.reason, decision.message.clone()),
    };
    let since = match previous {
        Some(p) if p.announcing == announcing && p.since.is_some() => p.since.clone(),
        _ => Some(now),
    };
    Some(NodeStatus {
        name: node.to_string(),
        role: Some(role),
        announcing,
        reason: Some(reason.as_str().to_string()),
        message: Some(message),
        sessions_established: Some(i32::try_from(established).unwrap_or(i32::MAX)),
        sessions_total: Some(i32::try_from(total).unwrap_or(i32::MAX)),
        since,
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
    use super::*;
    use crate::community::RoleCommunity;
    use crate::decision::Target;
    use k8s_openapi::jiff::Timestamp;
    use sharedip_api::{Role, SharedAddress};

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
            target: target.then(target_fn),
            reason,
            message: "m".into(),
        }
    }

    fn target_fn() -> Target {
        target()
    }

    fn applied(announced: bool, bind_error: Option<&str>) -> Applied {
        Applied {
            target: target(),
            role: Some(Role::Primary),
            bound: bind_error
                .is_none()
                .then_some(crate::binder::BoundBy::Agent),
            announced,
            bind_error: bind_error.map(str::to_string),
        }
    }

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn announced_entry() {
        let e = node_entry(
            "n1",
            &decision(true, Reason::Announced),
            Some(&applied(true, None)),
            (3, 4),
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
    fn not_announcing_reasons() {
        let d = decision(true, Reason::Announced);
        let e = node_entry("n1", &d, Some(&applied(true, None)), (0, 4), None, t(1)).unwrap();
        assert_eq!(
            (e.announcing, e.reason.as_deref()),
            (false, Some("NoSessions"))
        );
        let e = node_entry(
            "n1",
            &d,
            Some(&applied(false, Some("EPERM"))),
            (4, 4),
            None,
            t(1),
        )
        .unwrap();
        assert_eq!(
            (e.announcing, e.reason.as_deref()),
            (false, Some("BindFailed"))
        );
        assert!(e.message.unwrap().contains("EPERM"));
        let e = node_entry(
            "n1",
            &decision(false, Reason::Draining),
            None,
            (4, 4),
            None,
            t(1),
        )
        .unwrap();
        assert_eq!(
            (e.announcing, e.reason.as_deref()),
            (false, Some("Draining"))
        );
        assert_eq!(e.message.as_deref(), Some("m"));
        // No role: no entry.
        let mut d = decision(false, Reason::NotSelected);
        d.role = None;
        assert!(node_entry("n1", &d, None, (4, 4), None, t(1)).is_none());
    }

    #[test]
    fn since_changes_only_with_announcing() {
        let d = decision(true, Reason::Announced);
        let a = applied(true, None);
        let first = node_entry("n1", &d, Some(&a), (4, 4), None, t(100)).unwrap();
        // Sessions change, announcing does not: since stays.
        let second = node_entry("n1", &d, Some(&a), (3, 4), Some(&first), t(200)).unwrap();
        assert_eq!(second.since, Some(t(100)));
        assert!(!same_entry(Some(&first), Some(&second)));
        let off = node_entry(
            "n1",
            &decision(false, Reason::Draining),
            None,
            (3, 4),
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
            Some(&applied(true, None)),
            (4, 4),
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
