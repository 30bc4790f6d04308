//! Kubernetes mode's Events, recorded on the SharedIP with this Node as the related object, and
//! the log line of each: `Announced`, `Withdrawn` (with the reason) and `BindFailed` for every
//! [`Transition`], and one `AddressIsNodeAddress` warning when a SharedIP starts being refused
//! as the node's own address.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::Resource;
use sharedip_api::SharedIP;

use crate::decision::{Decision, Reason};
use crate::flow_handover::driver::{WindowChange, WindowEvent};
use crate::handover::TimedOut;
use crate::orchestrator::Transition;

/// Records the events of one node's agent.
pub struct Events {
    recorder: Recorder,
    node: String,
    /// SharedIPs refused as the node's own address, with the reason last reported.
    refused: HashMap<String, String>,
}

impl Events {
    /// Events of the agent on `node`.
    pub fn new(client: kube::Client, node: &str) -> Self {
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: "sharedip-node-agent".into(),
                instance: Some(node.to_string()),
            },
        );
        Self {
            recorder,
            node: node.to_string(),
            refused: HashMap::new(),
        }
    }

    /// One log line and one event per transition.
    pub async fn transitions(&self, sharedips: &Store<SharedIP>, transitions: &[Transition]) {
        let node = &self.node;
        for t in transitions {
            let (name, type_, reason, action, note) = match t {
                Transition::Announced {
                    name,
                    prefix,
                    community,
                } => {
                    tracing::info!(sharedip = %name, %prefix, %community, "announced");
                    (
                        name,
                        EventType::Normal,
                        "Announced",
                        "Announce",
                        format!("node {node} announces {prefix} with community {community}"),
                    )
                }
                Transition::Withdrawn {
                    name,
                    prefix,
                    reason,
                } => {
                    tracing::info!(sharedip = %name, %prefix, %reason, "withdrawn");
                    (
                        name,
                        EventType::Normal,
                        "Withdrawn",
                        "Withdraw",
                        format!("node {node} withdrew {prefix}: {reason}"),
                    )
                }
                // The orchestrator logs the failure itself.
                Transition::BindFailed { name, error } => (
                    name,
                    EventType::Warning,
                    "BindFailed",
                    "Bind",
                    format!("node {node} cannot bind the address: {error}"),
                ),
            };
            self.publish(sharedips, name, type_, reason, action, note)
                .await;
        }
    }

    /// One error line and one warning event when a SharedIP starts being refused as the
    /// node's own address (or for another reason), one line when it no longer is.
    pub async fn refusals(
        &mut self,
        sharedips: &Store<SharedIP>,
        desired: &BTreeMap<String, Decision>,
    ) {
        for (name, d) in desired {
            let refused = d.reason == Reason::AddressIsNodeAddress;
            match (refused, self.refused.get(name)) {
                (true, Some(m)) if *m == d.message => {}
                (true, _) => {
                    tracing::error!(sharedip = %name, reason = %d.reason, "{}", d.message);
                    self.refused.insert(name.clone(), d.message.clone());
                    let note = format!("node {}: {}", self.node, d.message);
                    self.publish(
                        sharedips,
                        name,
                        EventType::Warning,
                        Reason::AddressIsNodeAddress.as_str(),
                        "Bind",
                        note,
                    )
                    .await;
                }
                (false, Some(_)) => {
                    tracing::info!(sharedip = %name, "no longer the node's own address");
                    self.refused.remove(name);
                }
                (false, None) => {}
            }
        }
        self.refused.retain(|name, _| desired.contains_key(name));
    }

    /// One warning event when a planned withdrawal waited `--handover-timeout` for a
    /// successor in vain (the handover logs its own line).
    pub async fn handover_timed_out(&self, sharedips: &Store<SharedIP>, t: &TimedOut) {
        let note = format!("node {}: {}", self.node, t.message);
        self.publish(
            sharedips,
            &t.name,
            EventType::Warning,
            Reason::HandoverTimedOut.as_str(),
            "Withdraw",
            note,
        )
        .await;
    }

    /// One warning event when a returning primary waited `--takeover-timeout` in vain for
    /// the secondaries to hand their connections over, and announced anyway.
    pub async fn takeover_timed_out(&self, sharedips: &Store<SharedIP>, t: &TimedOut) {
        let note = format!("node {}: {}", self.node, t.message);
        self.publish(
            sharedips,
            &t.name,
            EventType::Warning,
            "TakeoverTimedOut",
            "Announce",
            note,
        )
        .await;
    }

    /// A flow handover window of this node opened, closed or failed.
    pub async fn flow_handover(&self, sharedips: &Store<SharedIP>, e: &WindowEvent) {
        let (direction, towards) = if e.forwarding {
            ("forwards the connections of", "to")
        } else {
            ("answers its connections forwarded by", "from")
        };
        let (type_, reason, note) = match &e.what {
            WindowChange::Opened => (
                EventType::Normal,
                "FlowHandoverStarted",
                format!("node {} {direction} node {}", self.node, e.peer),
            ),
            WindowChange::Closed => (
                EventType::Normal,
                "FlowHandoverEnded",
                format!("node {}: the window {towards} node {} ended", self.node, e.peer),
            ),
            WindowChange::Failed(error) => (
                EventType::Warning,
                "FlowHandoverFailed",
                format!(
                    "node {}: no window {towards} node {}: {error}; moving the address resets its connections",
                    self.node, e.peer
                ),
            ),
            WindowChange::TunnelFailed(why) => (
                EventType::Warning,
                "FlowHandoverTunnelFailed",
                format!(
                    "node {}: the tunnel with node {} failed its self-test ({why}); until this move ends, flow handover between them is off and the move resets their connections",
                    self.node, e.peer
                ),
            ),
        };
        self.publish(sharedips, &e.sharedip, type_, reason, "FlowHandover", note)
            .await;
    }

    /// Records an event on SharedIP `name`, with this Node as the related object.
    async fn publish(
        &self,
        sharedips: &Store<SharedIP>,
        name: &str,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let Some(sip) = sharedips.get(&reflector::ObjectRef::new(name)) else {
            return;
        };
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(self.node.clone()),
                ..Default::default()
            }),
        };
        // Events are best effort.
        if let Err(e) = self.recorder.publish(&ev, &sip.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "cannot publish event");
        }
    }
}
