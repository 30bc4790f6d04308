//! What a Service shows: `status.loadBalancer.ingress` (EXTERNAL-IP) and the condition
//! `sharedip.io/Announced`. An address enters the ingress once it is shared with the nodes'
//! Linodes, and never leaves it while the Service holds it: external-dns deletes DNS records
//! and ingress controllers clear their Ingress status when it disappears, which a failover
//! must never cause. Whether it is announced, and by whom, goes to the condition.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{LoadBalancerIngress, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};
use sharedip_api::conditions::{self, Desired};
use sharedip_api::SharedIP;

use super::ANNOUNCED_CONDITION;

/// One address a Service holds, with the SharedIP that serves it (None while it is created).
#[derive(Debug, Clone)]
pub struct Held<'a> {
    pub address: Option<IpAddr>,
    pub sharedip: Option<&'a SharedIP>,
}

fn is_true(sip: &SharedIP, type_: &str) -> bool {
    sip.status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, type_))
        .is_some_and(|c| c.status == "True")
}

/// The nodes announcing `sip`'s address, with their roles: "node-a (Primary)".
pub fn announcers(sip: &SharedIP) -> Vec<String> {
    let mut out: Vec<String> = sip
        .status
        .iter()
        .flat_map(|s| s.nodes.iter())
        .filter(|n| n.announcing)
        .map(|n| match &n.role {
            Some(role) => format!("{} ({role})", n.name),
            None => n.name.clone(),
        })
        .collect();
    out.sort();
    out
}

fn current_ingress(svc: &Service) -> Vec<IpAddr> {
    svc.status
        .iter()
        .flat_map(|s| s.load_balancer.iter())
        .flat_map(|lb| lb.ingress.iter().flatten())
        .filter_map(|i| i.ip.as_deref())
        .filter_map(|ip| ip.parse().ok())
        .collect()
}

/// The ingress the Service should show: each held address that is shared, or that it shows
/// already.
pub fn ingress(svc: &Service, held: &[Held<'_>]) -> Vec<IpAddr> {
    let current = current_ingress(svc);
    held.iter()
        .filter_map(|h| {
            let a = h.address?;
            let shared = h
                .sharedip
                .is_some_and(|s| is_true(s, sharedip_api::conditions::SHARED));
            (shared || current.contains(&a)).then_some(a)
        })
        .collect()
}

/// The condition for the held addresses (all announced: True), or for why there are none.
pub fn announced(held: &[Held<'_>], endpoints: &str) -> Desired {
    if held.is_empty() {
        return Desired::new(
            ANNOUNCED_CONDITION,
            false,
            "Pending",
            "no address is assigned yet",
        );
    }
    let mut parts = Vec::new();
    let mut all = true;
    let mut reason = "Announced";
    for h in held {
        let Some(address) = h.address else {
            all = false;
            reason = "Allocating";
            parts.push("an address is being allocated".to_owned());
            continue;
        };
        let Some(sip) = h.sharedip else {
            all = false;
            reason = "Pending";
            parts.push(format!("{address}: its SharedIP is being created"));
            continue;
        };
        let by = announcers(sip);
        if by.is_empty() {
            all = false;
            if !is_true(sip, sharedip_api::conditions::SHARED) {
                reason = "NotShared";
                // The SharedIP says why (an address not in the account, no IP holder, a
                // Linode API error): the Service shows it where its users look.
                let why = sip
                    .status
                    .as_ref()
                    .and_then(|s| conditions::find(&s.conditions, conditions::SHARED))
                    .map(|c| format!(": {}: {}", c.reason, c.message))
                    .unwrap_or_default();
                parts.push(format!(
                    "{address} is not shared yet (SharedIP {}){why}",
                    sip.metadata.name.as_deref().unwrap_or_default()
                ));
            } else {
                if reason == "Announced" {
                    reason = "NotAnnounced";
                }
                parts.push(format!(
                    "{address} is announced by no node; endpoints: {endpoints}"
                ));
            }
        } else {
            parts.push(format!("{address} announced by {}", by.join(", ")));
        }
    }
    Desired::new(ANNOUNCED_CONDITION, all, reason, parts.join("; "))
}

/// Reasons of a Service refused an address that another Service or SharedIP has, or had: it
/// may have it once that one lets go.
pub const WAITING_FOR_ADDRESS: [&str; 3] = ["SharingRefused", "AddressInUse", "AddressChanging"];

/// Whether the Service's last refusal was one of [`WAITING_FOR_ADDRESS`].
pub fn waits_for_an_address(svc: &Service) -> bool {
    svc.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .and_then(|cs| conditions::find(cs, ANNOUNCED_CONDITION))
        .is_some_and(|c| c.status == "False" && WAITING_FOR_ADDRESS.contains(&c.reason.as_str()))
}

/// A refusal (bad annotation, address in use, sharing refused) as the condition.
pub fn refused(reason: &str, message: &str) -> Desired {
    Desired::new(ANNOUNCED_CONDITION, false, reason, message)
}

/// The server-side apply body of the Service's status. `ingress` empty releases our entries.
pub fn manifest(
    svc: &Service,
    ingress: &[IpAddr],
    condition: Option<&Desired>,
    now: Timestamp,
) -> Value {
    let existing: Vec<Condition> = svc
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_ == ANNOUNCED_CONDITION)
        .collect();
    let conditions = condition
        .map(|d| {
            conditions::merge(
                &existing,
                std::slice::from_ref(d),
                svc.metadata.generation,
                now,
            )
        })
        .unwrap_or_default();
    let ingress: Vec<LoadBalancerIngress> = ingress
        .iter()
        .map(|ip| LoadBalancerIngress {
            ip: Some(ip.to_string()),
            ip_mode: Some("VIP".to_owned()),
            ..Default::default()
        })
        .collect();
    let mut status = json!({ "conditions": conditions });
    if !ingress.is_empty() {
        status["loadBalancer"] = json!({ "ingress": ingress });
    }
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": svc.metadata.name,
            "namespace": svc.metadata.namespace,
        },
        "status": status,
    })
}

/// Whether applying `ingress` and `condition` would change nothing.
pub fn is_current(svc: &Service, ingress: &[IpAddr], condition: &Desired) -> bool {
    let shown = current_ingress(svc);
    let cond = svc
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .and_then(|cs| conditions::find(cs, ANNOUNCED_CONDITION));
    shown == ingress
        && cond.is_some_and(|c| {
            c.status == if condition.status { "True" } else { "False" }
                && c.reason == condition.reason
                && c.message == condition.message
                && c.observed_generation == svc.metadata.generation
        })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{LoadBalancerStatus, ServiceStatus};
    use sharedip_api::{NodeStatus, Role, SharedIPStatus};

    use super::*;

    fn sip(shared: bool, announcing: &[(&str, Role)]) -> SharedIP {
        let mut s = SharedIP::new(
            "svc-u1",
            serde_json::from_value(json!({
                "address": "192.0.2.10",
                "primary": {"nodeSelector": {"matchLabels": {"a": "b"}}},
            }))
            .unwrap(),
        );
        s.status = Some(SharedIPStatus {
            conditions: conditions::merge(
                &[],
                &[Desired::new(conditions::SHARED, shared, "x", "y")],
                None,
                Timestamp::UNIX_EPOCH,
            ),
            nodes: announcing
                .iter()
                .map(|(n, r)| NodeStatus {
                    name: (*n).into(),
                    role: Some(*r),
                    announcing: true,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        s
    }

    fn svc_showing(ips: &[&str]) -> Service {
        Service {
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(
                        ips.iter()
                            .map(|ip| LoadBalancerIngress {
                                ip: Some((*ip).into()),
                                ..Default::default()
                            })
                            .collect(),
                    ),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn ingress_once_shared_and_never_removed_while_held() {
        let a: IpAddr = "192.0.2.10".parse().unwrap();
        let not_shared = sip(false, &[]);
        let shared = sip(true, &[]);
        let held = |s| {
            vec![Held {
                address: Some(a),
                sharedip: Some(s),
            }]
        };
        assert!(
            ingress(&Service::default(), &held(&not_shared)).is_empty(),
            "pending until shared"
        );
        assert_eq!(ingress(&Service::default(), &held(&shared)), vec![a]);
        // Shown already, the SharedIP no longer reports Shared (a failover, an API outage):
        // it stays.
        assert_eq!(
            ingress(&svc_showing(&["192.0.2.10"]), &held(&not_shared)),
            vec![a]
        );
        // No longer held: it goes.
        assert!(ingress(&svc_showing(&["192.0.2.10"]), &[]).is_empty());
    }

    #[test]
    fn condition_says_who_announces() {
        let a: IpAddr = "192.0.2.10".parse().unwrap();
        let s = sip(true, &[("node-a", Role::Primary)]);
        let d = announced(
            &[Held {
                address: Some(a),
                sharedip: Some(&s),
            }],
            "1 ready",
        );
        assert!(d.status);
        assert_eq!(d.message, "192.0.2.10 announced by node-a (Primary)");
        let s = sip(true, &[]);
        let d = announced(
            &[Held {
                address: Some(a),
                sharedip: Some(&s),
            }],
            "none",
        );
        assert!(!d.status);
        assert_eq!(d.reason, "NotAnnounced");
        assert!(d.message.contains("endpoints: none"));
        let d = announced(
            &[Held {
                address: None,
                sharedip: None,
            }],
            "",
        );
        assert_eq!(d.reason, "Allocating");
        assert_eq!(announced(&[], "").reason, "Pending");
    }

    #[test]
    fn manifest_keeps_transition_time_and_marks_vip() {
        let d = Desired::new(ANNOUNCED_CONDITION, true, "Announced", "m");
        let a: IpAddr = "192.0.2.10".parse().unwrap();
        let body = manifest(&Service::default(), &[a], Some(&d), Timestamp::UNIX_EPOCH);
        assert_eq!(
            body["status"]["loadBalancer"]["ingress"][0]["ipMode"],
            "VIP"
        );
        assert_eq!(body["status"]["conditions"][0]["type"], ANNOUNCED_CONDITION);
        let body = manifest(&Service::default(), &[], None, Timestamp::UNIX_EPOCH);
        assert!(body["status"].get("loadBalancer").is_none());
    }
}
