//! What a Service asks for, read from its annotations and spec: the address per family (in the
//! order `sharedip.io/address`, `spec.loadBalancerIP`), a user SharedIP to use instead, the
//! nodes that announce and the reclaim policy; and the address the operator assigned before
//! (`sharedip.io/assigned-addresses`), which wins over a new allocation so an address never
//! silently changes. Pure, so each rule is unit-tested; a bad annotation is an error the
//! reconcile reports in an Event, touching nothing.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use sharedip_api::ReclaimPolicy;

use super::node_selector::{self, SelectorError};
use super::{
    ADDRESS_ANNOTATION, ASSIGNED_ANNOTATION, PRIMARY_NODES_ANNOTATION, RECLAIM_POLICY_ANNOTATION,
    SECONDARY_NODES_ANNOTATION, SHAREDIP_ANNOTATION,
};

/// At most one address per family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerFamily {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl PerFamily {
    pub fn is_empty(&self) -> bool {
        self.v4.is_none() && self.v6.is_none()
    }

    /// The addresses, IPv4 first.
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.v4
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.v6.map(IpAddr::V6))
            .collect()
    }

    /// The annotation value: comma-separated, IPv4 first.
    pub fn to_annotation(&self) -> String {
        self.addresses()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Parses a comma-separated list with at most one address per family.
    fn parse(annotation: &'static str, value: &str) -> Result<PerFamily, RequestError> {
        let mut out = PerFamily::default();
        for part in value.split(',').map(str::trim) {
            let bad = |reason: String| RequestError::Address {
                annotation,
                value: value.to_owned(),
                reason,
            };
            let ip: IpAddr = part
                .parse()
                .map_err(|_| bad(format!("{part:?} is not an IP address")))?;
            if let Some(what) = sharedip_api::address::unusable(ip) {
                return Err(bad(format!("{ip} is {what}, never a Service's address")));
            }
            match ip {
                IpAddr::V4(a) if out.v4.is_none() => out.v4 = Some(a),
                IpAddr::V6(a) if out.v6.is_none() => out.v6 = Some(a),
                _ => return Err(bad("at most one address per family".to_owned())),
            }
        }
        Ok(out)
    }
}

/// An IP family of the Service (`spec.ipFamilies`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// Everything a Service asks of us.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The families the Service has (`spec.ipFamilies`, IPv4 when unset), in its order.
    pub families: Vec<Family>,
    /// Addresses asked for explicitly.
    pub requested: PerFamily,
    /// A user SharedIP to take the address from.
    pub sharedip: Option<String>,
    /// Addresses the operator assigned earlier.
    pub assigned: PerFamily,
    /// Nodes announcing with the primary community, when the Service says.
    pub primary: Option<LabelSelector>,
    /// Nodes announcing with the secondary community, when the Service says.
    pub secondary: Option<LabelSelector>,
    /// What happens to an allocated address when the Service goes.
    pub reclaim_policy: Option<ReclaimPolicy>,
}

impl Request {
    /// The address the Service should have in `family`: what it asks for, else what it was
    /// assigned.
    pub fn wanted(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::V4 => self.requested.v4.or(self.assigned.v4).map(IpAddr::V4),
            Family::V6 => self.requested.v6.or(self.assigned.v6).map(IpAddr::V6),
        }
    }

    /// Whether the address of `family` was asked for (an address of the account the user
    /// chose), rather than allocated by the operator.
    pub fn is_requested(&self, family: Family) -> bool {
        match family {
            Family::V4 => self.requested.v4.is_some(),
            Family::V6 => self.requested.v6.is_some(),
        }
    }
}

/// Why a Service's request cannot be served; each names what to fix.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RequestError {
    #[error("annotation {annotation}={value:?}: {reason}")]
    Address {
        annotation: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "spec.loadBalancerIP {load_balancer_ip} differs from annotation {ADDRESS_ANNOTATION} ({annotation}); set only one"
    )]
    TwoAddresses {
        load_balancer_ip: String,
        annotation: String,
    },
    #[error("the Service asks for an {family} address ({address}) but its spec.ipFamilies is {families:?}")]
    FamilyNotInService {
        family: Family,
        address: IpAddr,
        families: Vec<String>,
    },
    #[error("spec.ipFamilies has {0:?}, which is neither IPv4 nor IPv6")]
    UnknownFamily(String),
    #[error("annotation {SHAREDIP_ANNOTATION} cannot be combined with an address ({0}): the SharedIP decides the address")]
    SharedIpAndAddress(String),
    #[error("annotation {SHAREDIP_ANNOTATION}={0:?} is not a SharedIP name")]
    SharedIpName(String),
    #[error("annotation {annotation}: {source}")]
    Selector {
        annotation: &'static str,
        #[source]
        source: SelectorError,
    },
    #[error("annotation {RECLAIM_POLICY_ANNOTATION}={0:?}: must be Delete or Retain")]
    ReclaimPolicy(String),
    #[error("secondary nodes are set but no primary nodes: set annotation {PRIMARY_NODES_ANNOTATION} too")]
    SecondaryWithoutPrimary,
}

/// Reads what `svc` asks for.
pub fn parse(svc: &Service) -> Result<Request, RequestError> {
    let empty = BTreeMap::new();
    let annotations = svc.metadata.annotations.as_ref().unwrap_or(&empty);
    let get = |key: &str| {
        annotations
            .get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    };
    let families = families(svc)?;
    let requested = requested(svc, get(ADDRESS_ANNOTATION), &families)?;

    let sharedip = get(SHAREDIP_ANNOTATION).map(str::to_owned);
    if let Some(name) = &sharedip {
        if !requested.is_empty() {
            return Err(RequestError::SharedIpAndAddress(requested.to_annotation()));
        }
        if !is_dns_subdomain(name) {
            return Err(RequestError::SharedIpName(name.clone()));
        }
    }

    // The operator's own record: a value it cannot read is ignored rather than fatal, the
    // SharedIP it generated still names the address.
    let assigned = get(ASSIGNED_ANNOTATION)
        .and_then(|v| PerFamily::parse(ASSIGNED_ANNOTATION, v).ok())
        .unwrap_or_default();

    let selector = |annotation: &'static str| {
        get(annotation)
            .map(|v| {
                node_selector::parse(v)
                    .map_err(|source| RequestError::Selector { annotation, source })
            })
            .transpose()
    };
    let reclaim_policy = match get(RECLAIM_POLICY_ANNOTATION) {
        None => None,
        Some("Delete") => Some(ReclaimPolicy::Delete),
        Some("Retain") => Some(ReclaimPolicy::Retain),
        Some(other) => return Err(RequestError::ReclaimPolicy(other.to_owned())),
    };
    Ok(Request {
        families,
        requested,
        sharedip,
        assigned,
        primary: selector(PRIMARY_NODES_ANNOTATION)?,
        secondary: selector(SECONDARY_NODES_ANNOTATION)?,
        reclaim_policy,
    })
}

/// `spec.ipFamilies`, IPv4 when unset.
fn families(svc: &Service) -> Result<Vec<Family>, RequestError> {
    match svc.spec.as_ref().and_then(|s| s.ip_families.as_ref()) {
        Some(list) if !list.is_empty() => list
            .iter()
            .map(|f| match f.as_str() {
                "IPv4" => Ok(Family::V4),
                "IPv6" => Ok(Family::V6),
                other => Err(RequestError::UnknownFamily(other.to_owned())),
            })
            .collect(),
        _ => Ok(vec![Family::V4]),
    }
}

/// The addresses asked for: the annotation, else `spec.loadBalancerIP` (both may be set when
/// they agree), each of a family the Service has.
fn requested(
    svc: &Service,
    annotation: Option<&str>,
    families: &[Family],
) -> Result<PerFamily, RequestError> {
    let mut requested = match annotation {
        Some(v) => PerFamily::parse(ADDRESS_ANNOTATION, v)?,
        None => PerFamily::default(),
    };
    if let Some(lb_ip) = svc
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_ip.as_deref())
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        let from_spec = PerFamily::parse_load_balancer_ip(lb_ip)?;
        if requested.is_empty() {
            requested = from_spec;
        } else if !from_spec
            .addresses()
            .iter()
            .all(|a| requested.addresses().contains(a))
        {
            return Err(RequestError::TwoAddresses {
                load_balancer_ip: lb_ip.to_owned(),
                annotation: requested.to_annotation(),
            });
        }
    }
    for ip in requested.addresses() {
        if !families.contains(&Family::of(ip)) {
            return Err(RequestError::FamilyNotInService {
                family: Family::of(ip),
                address: ip,
                families: families.iter().map(ToString::to_string).collect(),
            });
        }
    }
    Ok(requested)
}

impl PerFamily {
    fn parse_load_balancer_ip(value: &str) -> Result<PerFamily, RequestError> {
        PerFamily::parse("spec.loadBalancerIP", value)
    }
}

/// RFC 1123 subdomain, the rule for SharedIP names.
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ServiceSpec;
    use kube::api::ObjectMeta;

    use super::*;

    fn svc(annotations: &[(&str, &str)], lb_ip: Option<&str>, families: &[&str]) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ingress".into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("LoadBalancer".into()),
                load_balancer_ip: lb_ip.map(Into::into),
                ip_families: (!families.is_empty())
                    .then(|| families.iter().map(|f| f.to_string()).collect()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn nothing_asked_means_ipv4_allocated() {
        let r = parse(&svc(&[], None, &[])).unwrap();
        assert_eq!(r.families, vec![Family::V4]);
        assert!(r.requested.is_empty());
        assert_eq!(r.wanted(Family::V4), None);
        assert_eq!(r.sharedip, None);
        assert_eq!(r.primary, None);
    }

    #[test]
    fn annotation_then_load_balancer_ip() {
        let r = parse(&svc(&[(ADDRESS_ANNOTATION, "192.0.2.10")], None, &[])).unwrap();
        assert_eq!(r.wanted(Family::V4), Some("192.0.2.10".parse().unwrap()));
        assert!(r.is_requested(Family::V4));
        let r = parse(&svc(&[], Some("192.0.2.11"), &[])).unwrap();
        assert_eq!(r.wanted(Family::V4), Some("192.0.2.11".parse().unwrap()));
        // Both, agreeing: fine.
        let r = parse(&svc(
            &[(ADDRESS_ANNOTATION, "192.0.2.10")],
            Some("192.0.2.10"),
            &[],
        ));
        assert!(r.is_ok());
        // Both, disagreeing: refused rather than guessing.
        let e = parse(&svc(
            &[(ADDRESS_ANNOTATION, "192.0.2.10")],
            Some("192.0.2.11"),
            &[],
        ))
        .unwrap_err();
        assert!(matches!(e, RequestError::TwoAddresses { .. }), "{e}");
    }

    #[test]
    fn requested_wins_over_assigned() {
        let r = parse(&svc(
            &[
                (ASSIGNED_ANNOTATION, "192.0.2.20"),
                (ADDRESS_ANNOTATION, "192.0.2.10"),
            ],
            None,
            &[],
        ))
        .unwrap();
        assert_eq!(r.wanted(Family::V4), Some("192.0.2.10".parse().unwrap()));
        let r = parse(&svc(&[(ASSIGNED_ANNOTATION, "192.0.2.20")], None, &[])).unwrap();
        assert_eq!(r.wanted(Family::V4), Some("192.0.2.20".parse().unwrap()));
        assert!(!r.is_requested(Family::V4));
    }

    #[test]
    fn dual_stack_one_address_per_family() {
        let r = parse(&svc(
            &[(ADDRESS_ANNOTATION, "192.0.2.10, 2001:db8:ff::10")],
            None,
            &["IPv4", "IPv6"],
        ))
        .unwrap();
        assert_eq!(r.families, vec![Family::V4, Family::V6]);
        assert_eq!(r.requested.to_annotation(), "192.0.2.10,2001:db8:ff::10");
        let e = parse(&svc(
            &[(ADDRESS_ANNOTATION, "192.0.2.10,192.0.2.11")],
            None,
            &["IPv4", "IPv6"],
        ))
        .unwrap_err();
        assert!(e.to_string().contains("one address per family"), "{e}");
        let e = parse(&svc(
            &[(ADDRESS_ANNOTATION, "2001:db8:ff::10")],
            None,
            &["IPv4"],
        ))
        .unwrap_err();
        assert!(matches!(e, RequestError::FamilyNotInService { .. }), "{e}");
    }

    #[test]
    fn bad_addresses_are_named() {
        for bad in [
            "nope",
            "127.0.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "fe80::1",
            "192.0.2.10/32",
        ] {
            let e = parse(&svc(&[(ADDRESS_ANNOTATION, bad)], None, &[])).unwrap_err();
            assert!(matches!(e, RequestError::Address { .. }), "{bad}: {e}");
            assert!(e.to_string().contains(ADDRESS_ANNOTATION), "{e}");
        }
    }

    #[test]
    fn sharedip_reference() {
        let r = parse(&svc(&[(SHAREDIP_ANNOTATION, "front")], None, &[])).unwrap();
        assert_eq!(r.sharedip.as_deref(), Some("front"));
        let e = parse(&svc(
            &[
                (SHAREDIP_ANNOTATION, "front"),
                (ADDRESS_ANNOTATION, "192.0.2.10"),
            ],
            None,
            &[],
        ))
        .unwrap_err();
        assert!(matches!(e, RequestError::SharedIpAndAddress(_)), "{e}");
        let e = parse(&svc(&[(SHAREDIP_ANNOTATION, "Front_1")], None, &[])).unwrap_err();
        assert!(matches!(e, RequestError::SharedIpName(_)), "{e}");
    }

    #[test]
    fn selectors_and_reclaim_policy() {
        let r = parse(&svc(
            &[
                (PRIMARY_NODES_ANNOTATION, "pool=edge"),
                (RECLAIM_POLICY_ANNOTATION, "Retain"),
            ],
            None,
            &[],
        ))
        .unwrap();
        assert!(r.primary.is_some());
        assert_eq!(r.secondary, None);
        assert_eq!(r.reclaim_policy, Some(ReclaimPolicy::Retain));
        let e = parse(&svc(
            &[(SECONDARY_NODES_ANNOTATION, "pool in (")],
            None,
            &[],
        ))
        .unwrap_err();
        assert!(matches!(e, RequestError::Selector { .. }), "{e}");
        let e = parse(&svc(&[(RECLAIM_POLICY_ANNOTATION, "Keep")], None, &[])).unwrap_err();
        assert!(matches!(e, RequestError::ReclaimPolicy(_)), "{e}");
    }
}
