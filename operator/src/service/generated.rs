//! The SharedIP the operator makes for a Service's address: its name, the labels and the
//! members annotation tying it to its Services (a cluster-scoped object cannot have a
//! namespaced owner), and the spec it should have. Pure, so the reconcile only compares and
//! applies.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use serde_json::{json, Value};
use sharedip_api::{
    AddressFamily, EndpointGate, ReclaimPolicy, RoleSelector, SharedIP, SharedIPSpec,
};

use super::address::{Family, Request, RequestError};
use super::node_selector;
use super::{
    ServiceSettings, MANAGED_BY, MANAGED_BY_LABEL, MEMBERS_ANNOTATION, SERVICE_NAMESPACE_LABEL,
    SERVICE_NAME_LABEL, SERVICE_UID_LABEL,
};

/// A Service using a generated SharedIP's address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl Member {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.name, self.uid)
    }
}

/// The name of the SharedIP generated for the Service with `uid` (first of its address).
pub fn name_for(uid: &str) -> String {
    format!("svc-{uid}")
}

/// Whether the operator made `sip` for Services (so it may change and delete it).
pub fn is_generated(sip: &SharedIP) -> bool {
    sip.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
        && sip.annotations().contains_key(MEMBERS_ANNOTATION)
}

/// The Services a generated SharedIP serves; malformed lines are skipped (the next apply
/// rewrites the annotation).
pub fn members(sip: &SharedIP) -> Vec<Member> {
    sip.annotations()
        .get(MEMBERS_ANNOTATION)
        .map(|v| parse_members(v))
        .unwrap_or_default()
}

pub fn parse_members(value: &str) -> Vec<Member> {
    let mut out: Vec<Member> = value
        .lines()
        .filter_map(|line| {
            let mut parts = line.trim().splitn(3, '/');
            let (ns, name, uid) = (parts.next()?, parts.next()?, parts.next()?);
            (!ns.is_empty() && !name.is_empty() && !uid.is_empty()).then(|| Member {
                namespace: ns.to_owned(),
                name: name.to_owned(),
                uid: uid.to_owned(),
            })
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn members_value(members: &[Member]) -> String {
    members
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The address a SharedIP stands for: spec.address, else the allocated one, else what its
/// status reports.
pub fn address_of(sip: &SharedIP) -> Option<IpAddr> {
    let spec = &sip.spec;
    spec.address
        .as_deref()
        .or(spec.allocated_address.as_deref())
        .or(sip.status.as_ref().and_then(|s| s.address.as_deref()))
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
}

/// The family of a SharedIP's address.
pub fn family_of(sip: &SharedIP) -> Family {
    match (&sip.spec.family, address_of(sip)) {
        (_, Some(IpAddr::V6(_))) | (Some(AddressFamily::IPv6), None) => Family::V6,
        _ => Family::V4,
    }
}

/// The SharedIP (generated or not) that stands for `ip`, if any.
pub fn find_by_address<'a>(
    sips: impl IntoIterator<Item = &'a SharedIP>,
    ip: IpAddr,
) -> Option<&'a SharedIP> {
    sips.into_iter()
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .find(|s| address_of(s) == Some(ip))
}

/// The node selectors of a Service's SharedIP: the Service's annotations, else the operator's
/// defaults; with neither, every node, as equals (no failback: nothing is preferred). Nodes
/// labelled to be excluded from external load balancers never match, which also makes the
/// selector non-empty, as a SharedIP's must be.
pub fn selectors(
    request: &Request,
    settings: &ServiceSettings,
) -> Result<(LabelSelector, Option<LabelSelector>, bool), RequestError> {
    let (primary, secondary) = if request.primary.is_some() || request.secondary.is_some() {
        (request.primary.clone(), request.secondary.clone())
    } else {
        (
            settings.primary_nodes.clone(),
            settings.secondary_nodes.clone(),
        )
    };
    match (primary, secondary) {
        (Some(p), s) => Ok((
            node_selector::excluding_lb_excluded(p),
            s.map(node_selector::excluding_lb_excluded),
            true,
        )),
        (None, Some(_)) => Err(RequestError::SecondaryWithoutPrimary),
        (None, None) => Ok((
            node_selector::excluding_lb_excluded(LabelSelector::default()),
            None,
            false,
        )),
    }
}

/// The SharedIP a group of Services wants for one address.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub name: String,
    /// The Services using it, sorted; the first names it in the labels.
    pub members: Vec<Member>,
    /// An address of the account the Service asked for: spec.address.
    pub address: Option<IpAddr>,
    /// An address allocated earlier, to restore: spec.allocatedAddress.
    pub allocated: Option<IpAddr>,
    pub family: Family,
    pub primary: LabelSelector,
    pub secondary: Option<LabelSelector>,
    pub failback: bool,
    pub reclaim_policy: Option<ReclaimPolicy>,
    pub gate: EndpointGate,
}

impl Desired {
    fn spec(&self) -> SharedIPSpec {
        SharedIPSpec {
            address: self.address.map(|a| a.to_string()),
            allocated_address: self.allocated.map(|a| a.to_string()),
            family: Some(match self.family {
                Family::V4 => AddressFamily::IPv4,
                Family::V6 => AddressFamily::IPv6,
            }),
            prefix: None,
            reclaim_policy: self.reclaim_policy,
            move_to_holder: None,
            primary: RoleSelector {
                node_selector: self.primary.clone(),
            },
            secondary: self
                .secondary
                .clone()
                .map(|s| RoleSelector { node_selector: s }),
            failback: self.failback,
            readiness_gate: None,
            endpoint_gate: Some(self.gate.clone()),
            bgp: None,
            flow_handover: None,
            flow_handover_window_seconds: None,
        }
    }

    fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned())]);
        if let Some(first) = self.members.first() {
            labels.insert(SERVICE_NAMESPACE_LABEL.to_owned(), first.namespace.clone());
            labels.insert(SERVICE_NAME_LABEL.to_owned(), first.name.clone());
            labels.insert(SERVICE_UID_LABEL.to_owned(), first.uid.clone());
        }
        labels
    }

    /// The server-side apply body.
    pub fn manifest(&self) -> Value {
        json!({
            "apiVersion": "sharedip.io/v1alpha1",
            "kind": "SharedIP",
            "metadata": {
                "name": self.name,
                "labels": self.labels(),
                "annotations": { MEMBERS_ANNOTATION: members_value(&self.members) },
            },
            "spec": self.spec(),
        })
    }

    /// Whether `existing` already is what this wants (no write needed). A value the operator
    /// filled in later (an allocated address) does not count as a difference.
    pub fn is_met_by(&self, existing: &SharedIP) -> bool {
        let mut want = self.spec();
        if want.allocated_address.is_none() {
            want.allocated_address = existing.spec.allocated_address.clone();
        }
        let labels_ok = self
            .labels()
            .iter()
            .all(|(k, v)| existing.labels().get(k) == Some(v));
        existing.spec == want
            && labels_ok
            && existing
                .annotations()
                .get(MEMBERS_ANNOTATION)
                .map(String::as_str)
                == Some(members_value(&self.members).as_str())
    }
}

#[cfg(test)]
mod tests {
    use kube::api::ObjectMeta;
    use sharedip_api::SharedIPStatus;

    use super::*;
    use crate::service::{node_selector, EXCLUDE_LABEL};

    fn member(name: &str, uid: &str) -> Member {
        Member {
            namespace: "ingress".into(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    fn request() -> Request {
        Request {
            families: vec![Family::V4],
            requested: Default::default(),
            sharedip: None,
            assigned: Default::default(),
            primary: None,
            secondary: None,
            reclaim_policy: None,
        }
    }

    fn desired() -> Desired {
        let (primary, secondary, failback) =
            selectors(&request(), &ServiceSettings::default()).unwrap();
        Desired {
            name: name_for("u1"),
            members: vec![member("web", "u1")],
            address: Some("192.0.2.10".parse().unwrap()),
            allocated: None,
            family: Family::V4,
            primary,
            secondary,
            failback,
            reclaim_policy: None,
            gate: EndpointGate {
                service: "ingress/web".into(),
                ready: vec!["node-a".into()],
                terminating: vec![],
            },
        }
    }

    fn applied(d: &Desired) -> SharedIP {
        serde_json::from_value(d.manifest()).unwrap()
    }

    #[test]
    fn manifest_round_trips_and_is_met() {
        let d = desired();
        let sip = applied(&d);
        assert_eq!(sip.name_any(), "svc-u1");
        assert!(is_generated(&sip));
        assert_eq!(members(&sip), vec![member("web", "u1")]);
        assert_eq!(sip.labels()[SERVICE_UID_LABEL], "u1");
        assert!(d.is_met_by(&sip));
        let mut other = d.clone();
        other.gate.ready.push("node-b".into());
        assert!(
            !other.is_met_by(&sip),
            "a new endpoint gate is a difference"
        );
    }

    #[test]
    fn allocated_later_is_not_a_difference() {
        let mut d = desired();
        d.address = None;
        let mut sip = applied(&d);
        sip.spec.allocated_address = Some("192.0.2.99".into());
        assert!(d.is_met_by(&sip));
        assert_eq!(address_of(&sip), Some("192.0.2.99".parse().unwrap()));
    }

    #[test]
    fn members_annotation_is_parsed_leniently() {
        let m = parse_members("b/web/u2\ngarbage\na/api/u1\n\na/api/u1\n//x");
        assert_eq!(
            m.iter().map(ToString::to_string).collect::<Vec<_>>(),
            vec!["a/api/u1", "b/web/u2"]
        );
    }

    #[test]
    fn default_selectors_select_every_node_as_equals_but_excluded_ones() {
        let (p, s, failback) = selectors(&request(), &ServiceSettings::default()).unwrap();
        assert!(!failback);
        assert_eq!(s, None);
        let sel = kube::core::Selector::try_from(p).unwrap();
        use kube::core::SelectorExt;
        assert!(sel.matches(&BTreeMap::new()));
        assert!(!sel.matches(&BTreeMap::from([(EXCLUDE_LABEL.to_owned(), String::new())])));
    }

    #[test]
    fn annotation_selectors_win_over_defaults() {
        let settings = ServiceSettings {
            primary_nodes: Some(node_selector::parse("pool=a").unwrap()),
            ..ServiceSettings::default()
        };
        let (p, _, failback) = selectors(&request(), &settings).unwrap();
        assert!(failback);
        assert!(format!("{p:?}").contains("pool"));
        let mut r = request();
        r.primary = Some(node_selector::parse("pool=b").unwrap());
        let (p, _, _) = selectors(&r, &settings).unwrap();
        assert!(format!("{p:?}").contains("\"b\""));
        let mut r = request();
        r.secondary = Some(node_selector::parse("pool=b").unwrap());
        assert_eq!(
            selectors(&r, &ServiceSettings::default()).unwrap_err(),
            RequestError::SecondaryWithoutPrimary
        );
    }

    #[test]
    fn find_by_address_skips_deleting() {
        let d = desired();
        let mut a = applied(&d);
        let mut b = applied(&d);
        b.metadata = ObjectMeta {
            name: Some("user".into()),
            ..Default::default()
        };
        b.status = Some(SharedIPStatus::default());
        a.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        let ip = "192.0.2.10".parse().unwrap();
        let all = [a, b];
        assert_eq!(
            find_by_address(&all, ip).map(|s| s.name_any()),
            Some("user".into())
        );
    }
}
