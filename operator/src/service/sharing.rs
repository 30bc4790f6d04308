//! When two Services may use one address.
//!
//! The rules are the ones MetalLB users know: both Services opt in with the same sharing
//! key, their ports do not overlap (per protocol), and they route traffic the same way: the
//! same `externalTrafficPolicy`, and with `Local` the same pods, because the nodes that
//! announce the address must have local endpoints of every Service on it.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Service;

use super::endpoints::TrafficPolicy;
use super::SHARING_KEY_ANNOTATION;

/// What of a Service decides whether it may share an address.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SharingFacts {
    /// The sharing key; None when the annotation is missing or blank.
    pub key: Option<String>,
    pub policy: TrafficPolicy,
    /// `spec.selector`: which pods back the Service.
    pub selector: BTreeMap<String, String>,
    /// (protocol in upper case, port) of every `spec.ports` entry.
    pub ports: BTreeSet<(String, i32)>,
}

impl SharingFacts {
    pub fn of(svc: &Service) -> SharingFacts {
        let key = svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SHARING_KEY_ANNOTATION))
            .map(|k| k.trim())
            .filter(|k| !k.is_empty())
            .map(str::to_string);
        let spec = svc.spec.as_ref();
        let selector = spec.and_then(|s| s.selector.clone()).unwrap_or_default();
        let ports = spec
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            // The API's default protocol is TCP.
            .map(|p| {
                let protocol = p.protocol.as_deref().unwrap_or("TCP");
                (protocol.to_ascii_uppercase(), p.port)
            })
            .collect();
        SharingFacts {
            key,
            policy: TrafficPolicy::of(svc),
            selector,
            ports,
        }
    }
}

/// Why a Service may not use an address another Service already uses. `other` is that
/// Service, as namespace/name.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SharingRefused {
    #[error("the address is in use by {other}; to share it, annotate both Services with {SHARING_KEY_ANNOTATION} and the same key")]
    NoKey { other: String },
    #[error("the address is in use by {other}, which does not allow sharing; annotate it with {SHARING_KEY_ANNOTATION}: {key}")]
    OtherHasNoKey { other: String, key: String },
    #[error("the address is in use by {other}, whose {SHARING_KEY_ANNOTATION} is {other_key:?}, not {key:?}; use the same key on both Services")]
    KeyMismatch {
        other: String,
        key: String,
        other_key: String,
    },
    #[error("the address is in use by {other}, whose externalTrafficPolicy is {other_policy}, not {policy}; Services sharing an address need the same externalTrafficPolicy")]
    PolicyMismatch {
        other: String,
        policy: TrafficPolicy,
        other_policy: TrafficPolicy,
    },
    #[error("the address is in use by {other}, which selects other pods; with externalTrafficPolicy Local, Services sharing an address need the same spec.selector")]
    SelectorMismatch { other: String },
    #[error("port {protocol}/{port} of the address is already in use by {other}; Services sharing an address need distinct ports")]
    PortInUse {
        other: String,
        protocol: String,
        port: i32,
    },
}

/// May `new` use an address that `holders` (the other Services on it, as namespace/name and
/// facts) already use? Always when there are none.
pub fn check(new: &SharingFacts, holders: &[(String, SharingFacts)]) -> Result<(), SharingRefused> {
    holders
        .iter()
        .try_for_each(|(other, facts)| check_pair(new, other, facts))
}

fn check_pair(
    new: &SharingFacts,
    other: &str,
    holder: &SharingFacts,
) -> Result<(), SharingRefused> {
    let other = other.to_string();
    match (&new.key, &holder.key) {
        (None, _) => return Err(SharingRefused::NoKey { other }),
        (Some(key), None) => {
            return Err(SharingRefused::OtherHasNoKey {
                other,
                key: key.clone(),
            })
        }
        (Some(key), Some(other_key)) if key != other_key => {
            return Err(SharingRefused::KeyMismatch {
                other,
                key: key.clone(),
                other_key: other_key.clone(),
            })
        }
        _ => {}
    }
    if new.policy != holder.policy {
        return Err(SharingRefused::PolicyMismatch {
            other,
            policy: new.policy,
            other_policy: holder.policy,
        });
    }
    // With Local, a node announces only while it has a local endpoint; two Services with
    // different pods would want different nodes for the one address.
    if new.policy == TrafficPolicy::Local && new.selector != holder.selector {
        return Err(SharingRefused::SelectorMismatch { other });
    }
    if let Some((protocol, port)) = new.ports.intersection(&holder.ports).next() {
        return Err(SharingRefused::PortInUse {
            other,
            protocol: protocol.clone(),
            port: *port,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn service(annotations: Value, spec: Value) -> Service {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop", "annotations": annotations},
            "spec": spec,
        }))
        .unwrap()
    }

    fn facts(key: Option<&str>, policy: TrafficPolicy, ports: &[(&str, i32)]) -> SharingFacts {
        SharingFacts {
            key: key.map(str::to_string),
            policy,
            selector: [("app".to_string(), "web".to_string())].into(),
            ports: ports.iter().map(|(p, n)| (p.to_string(), *n)).collect(),
        }
    }

    fn holder(name: &str, facts: SharingFacts) -> (String, SharingFacts) {
        (name.to_string(), facts)
    }

    #[test]
    fn facts_of_a_service() {
        let svc = service(
            json!({SHARING_KEY_ANNOTATION: " team-a "}),
            json!({
                "type": "LoadBalancer",
                "externalTrafficPolicy": "Local",
                "selector": {"app": "web"},
                "ports": [
                    {"port": 443},
                    {"port": 443, "protocol": "udp"},
                    {"port": 80, "protocol": "TCP"},
                ],
            }),
        );
        let f = SharingFacts::of(&svc);
        assert_eq!(f.key.as_deref(), Some("team-a"));
        assert_eq!(f.policy, TrafficPolicy::Local);
        assert_eq!(f.selector, [("app".to_string(), "web".to_string())].into());
        assert_eq!(
            f.ports,
            [
                ("TCP".to_string(), 80),
                ("TCP".to_string(), 443),
                ("UDP".to_string(), 443)
            ]
            .into()
        );
        let bare = SharingFacts::of(&service(json!({SHARING_KEY_ANNOTATION: "  "}), json!({})));
        assert_eq!(bare, SharingFacts::default());
    }

    #[test]
    fn an_unused_address_is_free() {
        assert_eq!(check(&SharingFacts::default(), &[]), Ok(()));
    }

    #[test]
    fn both_need_the_same_key() {
        let cluster = TrafficPolicy::Cluster;
        let keyed = facts(Some("k"), cluster, &[("TCP", 80)]);
        let other_keyed = facts(Some("k"), cluster, &[("TCP", 443)]);
        let unkeyed = facts(None, cluster, &[("TCP", 443)]);
        assert_eq!(
            check(&unkeyed, &[holder("shop/api", other_keyed.clone())]),
            Err(SharingRefused::NoKey {
                other: "shop/api".into()
            })
        );
        assert_eq!(
            check(&keyed, &[holder("shop/api", unkeyed.clone())]),
            Err(SharingRefused::OtherHasNoKey {
                other: "shop/api".into(),
                key: "k".into()
            })
        );
        let wrong = facts(Some("j"), cluster, &[("TCP", 443)]);
        let refused = check(&keyed, &[holder("shop/api", wrong)]).unwrap_err();
        assert_eq!(
            refused,
            SharingRefused::KeyMismatch {
                other: "shop/api".into(),
                key: "k".into(),
                other_key: "j".into()
            }
        );
        assert!(refused.to_string().contains("shop/api"));
        assert_eq!(check(&keyed, &[holder("shop/api", other_keyed)]), Ok(()));
    }

    #[test]
    fn ports_must_not_overlap_per_protocol() {
        let cluster = TrafficPolicy::Cluster;
        let tcp = facts(Some("k"), cluster, &[("TCP", 443), ("TCP", 80)]);
        let udp = facts(Some("k"), cluster, &[("UDP", 443)]);
        assert_eq!(check(&udp, &[holder("shop/web", tcp.clone())]), Ok(()));
        let clash = facts(Some("k"), cluster, &[("UDP", 53), ("TCP", 80)]);
        let refused = check(&clash, &[holder("shop/web", tcp)]).unwrap_err();
        assert_eq!(
            refused,
            SharingRefused::PortInUse {
                other: "shop/web".into(),
                protocol: "TCP".into(),
                port: 80
            }
        );
        assert!(refused.to_string().contains("TCP/80"));
        assert!(refused.to_string().contains("shop/web"));
    }

    #[test]
    fn policies_must_match() {
        let local = facts(Some("k"), TrafficPolicy::Local, &[("TCP", 80)]);
        let cluster = facts(Some("k"), TrafficPolicy::Cluster, &[("TCP", 443)]);
        let refused = check(&local, &[holder("shop/web", cluster)]).unwrap_err();
        assert_eq!(
            refused,
            SharingRefused::PolicyMismatch {
                other: "shop/web".into(),
                policy: TrafficPolicy::Local,
                other_policy: TrafficPolicy::Cluster
            }
        );
        assert!(refused.to_string().contains("not Local"));
    }

    #[test]
    fn local_services_must_select_the_same_pods() {
        let mine = facts(Some("k"), TrafficPolicy::Local, &[("TCP", 80)]);
        let mut same_pods = facts(Some("k"), TrafficPolicy::Local, &[("TCP", 443)]);
        assert_eq!(
            check(&mine, &[holder("shop/web", same_pods.clone())]),
            Ok(())
        );
        same_pods.selector.insert("tier".into(), "edge".into());
        assert_eq!(
            check(&mine, &[holder("shop/web", same_pods)]),
            Err(SharingRefused::SelectorMismatch {
                other: "shop/web".into()
            })
        );
        // With Cluster any node reaches any pod: the selectors do not matter.
        let mut cluster_mine = mine.clone();
        cluster_mine.policy = TrafficPolicy::Cluster;
        let mut cluster_other = facts(Some("k"), TrafficPolicy::Cluster, &[("TCP", 443)]);
        cluster_other.selector = [("app".to_string(), "api".to_string())].into();
        assert_eq!(
            check(&cluster_mine, &[holder("shop/api", cluster_other)]),
            Ok(())
        );
    }

    #[test]
    fn every_holder_is_checked_and_the_refusal_names_it() {
        let cluster = TrafficPolicy::Cluster;
        let new = facts(Some("k"), cluster, &[("TCP", 8443)]);
        let holders = [
            holder("shop/web", facts(Some("k"), cluster, &[("TCP", 80)])),
            holder("shop/api", facts(Some("k"), cluster, &[("TCP", 8443)])),
        ];
        assert_eq!(
            check(&new, &holders),
            Err(SharingRefused::PortInUse {
                other: "shop/api".into(),
                protocol: "TCP".into(),
                port: 8443
            })
        );
    }
}
