//! Prometheus metrics of the agent, served on `/metrics`.

use std::collections::HashMap;
use std::sync::atomic::AtomicI64;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sharedip_process::sync::lock;

use crate::bgp::fsm::State;
use crate::orchestrator::Transition;
use crate::report::{peer_reports, PeerReport};
use crate::speaker::SpeakerMonitor;

/// Every FSM state, so each peer exports one series per state (1 for the current one).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerStateLabels {
    pub peer: String,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WindowLabels {
    pub sharedip: String,
    /// The node forwarded to.
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    /// announce, withdraw or bind_failed.
    pub action: &'static str,
    pub reason: String,
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    pub session_state: Family<PeerStateLabels, Gauge<i64, AtomicI64>>,
    pub session_established: Family<PeerLabels, Gauge<i64, AtomicI64>>,
    pub updates_sent: Family<PeerLabels, Counter>,
    pub updates_received: Family<PeerLabels, Counter>,
    pub sessions_established: Family<PeerLabels, Counter>,
    pub prefixes_announced: Gauge<i64, AtomicI64>,
    pub transitions: Family<TransitionLabels, Counter>,
    pub forwarded_packets: Family<WindowLabels, Counter>,
    pub forwarded_flows: Family<WindowLabels, Counter>,
    pub forwarding_flows: Family<WindowLabels, Gauge<i64, AtomicI64>>,
    /// Counters already exported per peer: the sessions report totals, counters take deltas.
    seen: Mutex<HashMap<String, (u64, u64, u64)>>,
    /// Packets already exported per open forwarding window (the kernel counts totals).
    seen_windows: Mutex<HashMap<String, u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("sharedip_agent"),
            session_state: Family::default(),
            session_established: Family::default(),
            updates_sent: Family::default(),
            updates_received: Family::default(),
            sessions_established: Family::default(),
            prefixes_announced: Gauge::default(),
            transitions: Family::default(),
            forwarded_packets: Family::default(),
            forwarded_flows: Family::default(),
            forwarding_flows: Family::default(),
            seen: Mutex::new(HashMap::new()),
            seen_windows: Mutex::new(HashMap::new()),
        };
        m.registry.register(
            "bgp_session_state",
            "1 for the current BGP FSM state of each route server session",
            m.session_state.clone(),
        );
        m.registry.register(
            "bgp_session_established",
            "1 while the session with the route server is established",
            m.session_established.clone(),
        );
        m.registry.register(
            "bgp_updates_sent",
            "BGP UPDATE messages sent per route server",
            m.updates_sent.clone(),
        );
        m.registry.register(
            "bgp_updates_received",
            "BGP UPDATE messages received (and discarded) per route server",
            m.updates_received.clone(),
        );
        m.registry.register(
            "bgp_sessions_established",
            "Times the session with the route server reached Established",
            m.sessions_established.clone(),
        );
        m.registry.register(
            "prefixes_announced",
            "Prefixes this node announces",
            m.prefixes_announced.clone(),
        );
        m.registry.register(
            "transitions",
            "Announcements, withdrawals and bind failures by reason",
            m.transitions.clone(),
        );
        m.register_flow_handover();
        m
    }
}

impl Metrics {
    fn register_flow_handover(&mut self) {
        self.registry.register(
            "flow_handover_forwarded_packets",
            "Packets of connections this node forwarded to the node handing the address over (flow handover), as of the loop's last turn",
            self.forwarded_packets.clone(),
        );
        self.registry.register(
            "flow_handover_forwarded_flows",
            "Connections this node forwarded in flow handover windows that have ended",
            self.forwarded_flows.clone(),
        );
        self.registry.register(
            "flow_handover_forwarding_flows",
            "Connections this node forwards in its open flow handover window, as of the loop's last turn",
            self.forwarding_flows.clone(),
        );
    }

    /// Refreshes the session metrics from the speaker and returns the text format.
    pub fn encode(&self, monitor: &SpeakerMonitor) -> String {
        self.observe_peers(&peer_reports(monitor));
        sharedip_process::metrics::encode(&self.registry)
    }

    /// Sets the per-peer series from a snapshot.
    pub fn observe_peers(&self, peers: &[PeerReport]) {
        let mut seen = lock(&self.seen);
        for p in peers {
            let peer = p.peer.clone();
            for s in State::ALL.map(State::as_str) {
                self.session_state
                    .get_or_create(&PeerStateLabels {
                        peer: peer.clone(),
                        state: s,
                    })
                    .set(i64::from(p.state == s));
            }
            self.session_established
                .get_or_create(&PeerLabels { peer: peer.clone() })
                .set(i64::from(p.state == State::Established.as_str()));
            let prev = seen.entry(peer.clone()).or_default();
            let labels = PeerLabels { peer };
            self.updates_sent
                .get_or_create(&labels)
                .inc_by(p.updates_sent.saturating_sub(prev.0));
            self.updates_received
                .get_or_create(&labels)
                .inc_by(p.updates_received.saturating_sub(prev.1));
            self.sessions_established
                .get_or_create(&labels)
                .inc_by(p.established_count.saturating_sub(prev.2));
            *prev = (
                prev.0.max(p.updates_sent),
                prev.1.max(p.updates_received),
                prev.2.max(p.established_count),
            );
        }
    }

    /// Takes in what the forwarding windows counted (see
    /// [`crate::flow_handover::driver::Sample`]).
    pub fn observe_flow_handover(&self, samples: &[crate::flow_handover::driver::Sample]) {
        let mut seen = lock(&self.seen_windows);
        for s in samples {
            let labels = WindowLabels {
                sharedip: s.sharedip.clone(),
                peer: s.peer.clone(),
            };
            let before = seen.get(&s.key).copied().unwrap_or(0);
            self.forwarded_packets
                .get_or_create(&labels)
                .inc_by(s.counts.packets.saturating_sub(before));
            let flows = i64::try_from(s.counts.flows).unwrap_or(i64::MAX);
            if s.closing {
                seen.remove(&s.key);
                self.forwarding_flows.get_or_create(&labels).set(0);
                self.forwarded_flows
                    .get_or_create(&labels)
                    .inc_by(u64::try_from(s.counts.flows).unwrap_or(u64::MAX));
            } else {
                seen.insert(s.key.clone(), before.max(s.counts.packets));
                self.forwarding_flows.get_or_create(&labels).set(flows);
            }
        }
    }

    /// Counts transitions.
    pub fn observe_transitions(&self, transitions: &[Transition]) {
        for t in transitions {
            let labels = match t {
                Transition::Announced { .. } => TransitionLabels {
                    action: "announce",
                    reason: "Announced".into(),
                },
                Transition::Withdrawn { reason, .. } => TransitionLabels {
                    action: "withdraw",
                    reason: reason.as_str().into(),
                },
                Transition::BindFailed { .. } => TransitionLabels {
                    action: "bind_failed",
                    reason: "BindFailed".into(),
                },
            };
            self.transitions.get_or_create(&labels).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(state: &str, sent: u64) -> PeerReport {
        PeerReport {
            peer: "2001:db8:18:34::1".into(),
            port: 179,
            peer_as: 65000,
            state: state.into(),
            uptime_seconds: None,
            hold_time: None,
            advertised: 1,
            updates_sent: sent,
            updates_received: 0,
            established_count: 1,
            last_error: None,
        }
    }

    #[test]
    fn session_series_and_deltas() {
        let m = Metrics::default();
        m.observe_peers(&[peer("established", 3)]);
        m.observe_peers(&[peer("established", 5)]);
        m.prefixes_announced.set(2);
        m.observe_transitions(&[Transition::Withdrawn {
            name: "a".into(),
            prefix: crate::prefix::AnnouncedPrefix::of(
                &sharedip_api::SharedAddress::parse("192.0.2.10", None).unwrap(),
            )
            .unwrap(),
            reason: crate::decision::Reason::Draining,
        }]);
        let text = m.encode(&SpeakerMonitor::empty());
        for want in [
            "sharedip_agent_bgp_session_state{peer=\"2001:db8:18:34::1\",state=\"established\"} 1",
            "sharedip_agent_bgp_session_state{peer=\"2001:db8:18:34::1\",state=\"idle\"} 0",
            "sharedip_agent_bgp_session_established{peer=\"2001:db8:18:34::1\"} 1",
            "sharedip_agent_bgp_updates_sent_total{peer=\"2001:db8:18:34::1\"} 5",
            "sharedip_agent_bgp_sessions_established_total{peer=\"2001:db8:18:34::1\"} 1",
            "sharedip_agent_prefixes_announced 2",
            "sharedip_agent_transitions_total{action=\"withdraw\",reason=\"Draining\"} 1",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
    }

    #[test]
    fn forwarding_windows_count_packets_once_and_flows_when_they_end() {
        use crate::flow_handover::driver::Sample;
        use crate::flow_handover::windows::Counts;
        let m = Metrics::default();
        let sample = |packets, flows, closing| Sample {
            key: "web/node-a/forward".into(),
            sharedip: "web".into(),
            peer: "node-a".into(),
            counts: Counts { packets, flows },
            closing,
        };
        let labels = WindowLabels {
            sharedip: "web".into(),
            peer: "node-a".into(),
        };
        m.observe_flow_handover(&[sample(10, 2, false)]);
        m.observe_flow_handover(&[sample(25, 3, false)]);
        assert_eq!(m.forwarded_packets.get_or_create(&labels).get(), 25);
        assert_eq!(m.forwarding_flows.get_or_create(&labels).get(), 3);
        assert_eq!(m.forwarded_flows.get_or_create(&labels).get(), 0);
        m.observe_flow_handover(&[sample(30, 3, true)]);
        assert_eq!(m.forwarded_packets.get_or_create(&labels).get(), 30);
        assert_eq!(m.forwarding_flows.get_or_create(&labels).get(), 0);
        assert_eq!(m.forwarded_flows.get_or_create(&labels).get(), 3);
        // The same key again is a new window: its count starts over.
        m.observe_flow_handover(&[sample(4, 1, false)]);
        assert_eq!(m.forwarded_packets.get_or_create(&labels).get(), 34);
        let text = sharedip_process::metrics::encode(&m.registry);
        assert!(
            text.contains("sharedip_agent_flow_handover_forwarded_packets_total{sharedip=\"web\",peer=\"node-a\"} 34"),
            "{text}"
        );
    }
}
