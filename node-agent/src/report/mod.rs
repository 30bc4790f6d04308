//! The agent's outward views, in one place: everything a user, the cluster or a scraper sees of
//! the agent is rendered here from the state the core modules export (the decisions and their
//! [`Outcome`](crate::decision::Outcome)s, [`Orchestrator::applied`], the
//! [`SpeakerMonitor`]'s sessions). No core module imports from here.
//!
//! - [`node_status`]: this node's entry in `SharedIP.status.nodes`, written with server-side
//!   apply; its reason is [`decision::verdict`](crate::decision::verdict)'s.
//! - [`events`]: the Events recorded on the SharedIPs, and the log line of each.
//! - [`metrics`]: the Prometheus metrics on `/metrics`.
//! - this module: the `/status` JSON document ([`AgentReport`]), served by [`crate::http`].
//! - [`cli`]: the `status` subcommand, which prints that document as tables.
//!
//! [`Orchestrator::applied`]: crate::orchestrator::Orchestrator::applied

pub mod cli;
pub mod events;
pub mod metrics;
pub mod node_status;

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sharedip_api::Role;

use crate::binder::BoundBy;
use crate::orchestrator::Applied;
use crate::speaker::SpeakerMonitor;

/// What `/status` returns and the `status` subcommand prints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentReport {
    /// "kubernetes" or "standalone".
    pub mode: String,
    /// The node name (Kubernetes mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Data-center id in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dcid: Option<u16>,
    /// Local AS number.
    pub local_as: u32,
    /// Next hop announced.
    pub next_hop: String,
    /// BGP identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_id: Option<String>,
    /// One entry per route server.
    pub peers: Vec<PeerReport>,
    /// What this node binds and announces.
    pub prefixes: Vec<PrefixReport>,
}

/// One session, for `/status` and the `status` subcommand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerReport {
    /// Route server address.
    pub peer: String,
    /// Its TCP port.
    pub port: u16,
    /// Its AS number.
    pub peer_as: u32,
    /// FSM state (idle, connect, active, opensent, openconfirm, established).
    pub state: String,
    /// Seconds since the session came up, while established.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_seconds: Option<u64>,
    /// Negotiated hold time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_time: Option<u16>,
    /// Prefixes in the Adj-RIB-Out.
    pub advertised: usize,
    /// UPDATEs sent.
    pub updates_sent: u64,
    /// UPDATEs received (and discarded by the import policy).
    pub updates_received: u64,
    /// Times the session reached Established.
    pub established_count: u64,
    /// Why the session last went down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// One announced prefix, for `/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrefixReport {
    /// SharedIP name (Kubernetes mode) or the address (standalone).
    pub name: String,
    /// The bound address.
    pub address: String,
    /// The announced prefix.
    pub prefix: String,
    /// Its community.
    pub community: String,
    /// Primary or Secondary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Bound on the interface by the agent.
    pub bound: bool,
    /// On the node already, configured by the user: announced, never bound or removed by the
    /// agent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub configured_by_user: bool,
    /// In the Adj-RIB-Out.
    pub announced: bool,
    /// Why binding fails, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_error: Option<String>,
}

/// One entry per name the orchestrator has applied.
pub fn prefix_reports(applied: &BTreeMap<String, Applied>) -> Vec<PrefixReport> {
    applied
        .iter()
        .map(|(name, a)| PrefixReport {
            name: name.clone(),
            address: a.target.address().address().to_string(),
            prefix: a.target.prefix().to_string(),
            community: a.target.community().to_string(),
            role: a.role,
            bound: a.outcome.bound == Some(BoundBy::Agent),
            configured_by_user: a.outcome.bound == Some(BoundBy::User),
            announced: a.outcome.announced,
            bind_error: a.outcome.bind_error.clone(),
        })
        .collect()
}

/// One entry per session, as the sessions report themselves now.
pub fn peer_reports(monitor: &SpeakerMonitor) -> Vec<PeerReport> {
    let now = SystemTime::now();
    monitor
        .sessions()
        .into_iter()
        .map(|(addr, s)| PeerReport {
            peer: addr.ip().to_string(),
            port: addr.port(),
            peer_as: monitor.peer_as(),
            state: s.state.as_str().to_string(),
            uptime_seconds: s
                .established_since
                .and_then(|t| now.duration_since(t).ok())
                .map(|d| d.as_secs()),
            hold_time: s.hold_time,
            advertised: s.prefixes,
            updates_sent: s.updates_sent,
            updates_received: s.updates_received,
            established_count: s.established_count,
            last_error: s.last_error,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use sharedip_api::SharedAddress;

    use super::*;
    use crate::community::RoleCommunity;
    use crate::decision::{Outcome, Target};

    fn applied(address: &str, bound: Option<BoundBy>) -> Applied {
        Applied {
            target: Target::new(
                SharedAddress::parse(address, None).unwrap(),
                RoleCommunity::PRIMARY,
            )
            .unwrap(),
            role: Some(Role::Primary),
            outcome: Outcome {
                bound,
                announced: true,
                bind_error: None,
            },
        }
    }

    #[test]
    fn prefix_reports_say_who_bound_each_address() {
        let applied = BTreeMap::from([
            ("a".to_string(), applied("192.0.2.10", Some(BoundBy::Agent))),
            (
                "b".to_string(),
                applied("198.51.100.7", Some(BoundBy::User)),
            ),
        ]);
        let report = prefix_reports(&applied);
        assert!(report[0].bound && !report[0].configured_by_user);
        assert!(!report[1].bound && report[1].configured_by_user);
        assert!(report.iter().all(|p| p.announced));
        assert_eq!(
            (report[0].name.as_str(), report[0].prefix.as_str()),
            ("a", "192.0.2.10/32")
        );
        assert_eq!(report[0].community, "65000:1");
    }
}
