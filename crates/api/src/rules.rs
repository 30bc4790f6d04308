//! The rules the operator and the node agent must apply identically.
//!
//! The operator shares an address with the Linodes of the nodes it selects; each node's agent
//! announces the address when it finds itself selected. If the two halves disagreed on which
//! nodes a SharedIP selects, or on which of two SharedIPs claiming one address keeps it, a node
//! would announce an address its Linode was never given (the route servers ignore it, and the
//! failover the user expects does not happen), or a node given the address would not announce
//! it. So both halves call these functions; nothing else decides these questions.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};
use kube::ResourceExt;

use crate::selector::{validate, SelectorProblem};
use crate::{Role, SharedAddress, SharedIP, SharedIPSpec};

/// The status reason (operator condition and agent node entry) of a SharedIP refused because
/// an earlier one claims its address.
pub const DUPLICATE_ADDRESS: &str = "DuplicateAddress";

/// Why a selector cannot be evaluated. The CRD refuses such selectors; this catches those
/// stored before it did.
#[derive(Debug, thiserror::Error)]
pub enum SelectorError {
    #[error("{role} nodeSelector is invalid: {source}")]
    Invalid {
        role: Role,
        #[source]
        source: SelectorProblem,
    },
    #[error("{role} nodeSelector is invalid: {source}")]
    Parse {
        role: Role,
        #[source]
        source: kube::core::ParseExpressionError,
    },
}

/// A SharedIP's two node selectors, checked and compiled once, to be matched against many
/// nodes.
#[derive(Debug, Clone)]
pub struct RoleSelectors {
    primary: Selector,
    secondary: Option<Selector>,
}

impl RoleSelectors {
    /// Checks both selectors with the CRD's rules and compiles them. A selector the CRD would
    /// refuse selects nothing, on both halves, rather than whatever a lenient parser makes of it.
    pub fn compile(spec: &SharedIPSpec) -> Result<Self, SelectorError> {
        Ok(Self {
            primary: compile(Role::Primary, &spec.primary.node_selector)?,
            secondary: spec
                .secondary
                .as_ref()
                .map(|s| compile(Role::Secondary, &s.node_selector))
                .transpose()?,
        })
    }

    /// The role of a node with these labels. A node both selectors match is primary: the user
    /// asked for it to be preferred, and announcing it twice would mean nothing.
    pub fn role_of(&self, labels: &BTreeMap<String, String>) -> Option<Role> {
        if self.primary.matches(labels) {
            Some(Role::Primary)
        } else if self.secondary.as_ref().is_some_and(|s| s.matches(labels)) {
            Some(Role::Secondary)
        } else {
            None
        }
    }
}

fn compile(role: Role, s: &LabelSelector) -> Result<Selector, SelectorError> {
    validate(s).map_err(|source| SelectorError::Invalid { role, source })?;
    Selector::try_from(s.clone()).map_err(|source| SelectorError::Parse { role, source })
}

/// The role the spec gives a node with these labels, if any (see [`RoleSelectors::role_of`]).
pub fn role_of(
    spec: &SharedIPSpec,
    labels: &BTreeMap<String, String>,
) -> Result<Option<Role>, SelectorError> {
    Ok(RoleSelectors::compile(spec)?.role_of(labels))
}

/// The Linode behind a node: its `spec.providerID` as the Linode CCM sets it (`linode://<id>`).
/// The operator shares with this Linode; the agent on the node watches for shares with it.
pub fn linode_of(node: &Node) -> Option<u64> {
    node.spec
        .as_ref()
        .and_then(|s| s.provider_id.as_deref())
        .and_then(linode_id_from_provider_id)
}

/// Parses `linode://<id>`; None for any other provider, an empty or zero id.
pub fn linode_id_from_provider_id(provider_id: &str) -> Option<u64> {
    let id: u64 = provider_id.strip_prefix("linode://")?.parse().ok()?;
    (id > 0).then_some(id)
}

/// Which SharedIP keeps an address that several claim: of those whose addresses overlap
/// `sip`'s, the one created first (then the smallest name, for objects created in the same
/// second) keeps it. Returns that earlier claimant when it is not `sip` itself; `sip` is then
/// a duplicate, refused on every node and by the operator.
///
/// A SharedIP being deleted claims nothing (its address is about to be free, and the duplicate
/// takes over when it is gone), nor does one whose address is invalid.
pub fn earlier_claimant<'a>(
    sip: &SharedIP,
    all: impl IntoIterator<Item = &'a SharedIP>,
) -> Option<Duplicate<'a>> {
    let address = SharedAddress::from_spec(&sip.spec).ok()?;
    let mine = claim_order(sip);
    let earlier = all
        .into_iter()
        .filter(|o| o.name_any() != sip.name_any() && o.metadata.deletion_timestamp.is_none())
        .filter(|o| SharedAddress::from_spec(&o.spec).is_ok_and(|a| a.overlaps(&address)))
        .filter(|o| claim_order(o) < mine)
        .min_by_key(|o| claim_order(o))?;
    Some(Duplicate { earlier, address })
}

/// A SharedIP refused because an earlier one claims its address. Its `Display` is the message
/// of the `DuplicateAddress` reason.
#[derive(Debug, Clone)]
pub struct Duplicate<'a> {
    /// The SharedIP that keeps the address.
    pub earlier: &'a SharedIP,
    /// The duplicate's own address.
    pub address: SharedAddress,
}

impl fmt::Display for Duplicate<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is already managed by SharedIP {:?}, created earlier; delete one of them",
            self.address,
            self.earlier.name_any()
        )
    }
}

fn claim_order(s: &SharedIP) -> (Option<k8s_openapi::jiff::Timestamp>, String) {
    (
        s.metadata.creation_timestamp.as_ref().map(|t| t.0),
        s.name_any(),
    )
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, Time};

    use super::*;
    use crate::RoleSelector;

    fn selector(k: &str, v: &str) -> RoleSelector {
        RoleSelector {
            node_selector: LabelSelector {
                match_labels: Some([(k.to_string(), v.to_string())].into()),
                match_expressions: None,
            },
        }
    }

    fn spec(address: &str, secondary: bool) -> SharedIPSpec {
        SharedIPSpec {
            address: Some(address.to_string()),
            allocated_address: None,
            family: None,
            prefix: None,
            reclaim_policy: None,
            move_to_holder: None,
            primary: selector("role", "edge"),
            secondary: secondary.then(|| selector("zone", "a")),
            failback: true,
            readiness_gate: None,
            endpoint_gate: None,
            bgp: None,
            flow_handover: None,
            flow_handover_window_seconds: None,
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sip(name: &str, address: &str, created: i64) -> SharedIP {
        let mut s = SharedIP::new(name, spec(address, false));
        s.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(created).unwrap(),
        ));
        s
    }

    #[test]
    fn the_linode_behind_a_node_is_its_linode_provider_id() {
        assert_eq!(linode_id_from_provider_id("linode://123"), Some(123));
        for bad in [
            "linode://",
            "linode://0",
            "linode://-1",
            "linode://12a",
            "aws:///us-east-1a/i-1",
            "123",
            "",
        ] {
            assert_eq!(linode_id_from_provider_id(bad), None, "{bad}");
        }
        let mut node = Node::default();
        assert_eq!(linode_of(&node), None);
        node.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
            provider_id: Some("linode://77".into()),
            ..Default::default()
        });
        assert_eq!(linode_of(&node), Some(77));
    }

    #[test]
    fn primary_wins_when_both_selectors_match() {
        let s = spec("192.0.2.10", true);
        let both = labels(&[("role", "edge"), ("zone", "a")]);
        assert_eq!(role_of(&s, &both).unwrap(), Some(Role::Primary));
        assert_eq!(
            role_of(&s, &labels(&[("zone", "a")])).unwrap(),
            Some(Role::Secondary)
        );
        assert_eq!(role_of(&s, &labels(&[("zone", "b")])).unwrap(), None);
        assert_eq!(
            role_of(&spec("192.0.2.10", false), &labels(&[("zone", "a")])).unwrap(),
            None
        );
    }

    /// A selector the CRD refuses now, stored before it did, selects nothing rather than what a
    /// lenient parser makes of it: `In` without values would otherwise match no node on one
    /// half and fail on the other.
    #[test]
    fn selectors_the_crd_refuses_are_errors_naming_the_role() {
        let mut s = spec("192.0.2.10", true);
        s.secondary = Some(RoleSelector {
            node_selector: LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "zone".into(),
                    operator: "In".into(),
                    values: Some(vec![]),
                }]),
            },
        });
        let e = role_of(&s, &labels(&[("zone", "a")])).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("Secondary nodeSelector is invalid"),
            "{e}"
        );
        assert!(matches!(
            e,
            SelectorError::Invalid {
                role: Role::Secondary,
                ..
            }
        ));
    }

    #[test]
    fn the_oldest_claimant_keeps_an_overlapping_address() {
        let old = sip("web", "2001:db8:1::1", 100);
        let new = sip("web-copy", "2001:db8:1::5", 200);
        let other = sip("api", "2001:db8:2::1", 50);
        let all = [old.clone(), new.clone(), other.clone()];
        assert_eq!(
            earlier_claimant(&new, &all).map(|d| d.earlier.name_any()),
            Some("web".into())
        );
        assert_eq!(
            earlier_claimant(&new, &all).unwrap().to_string(),
            "2001:db8:1::/64 is already managed by SharedIP \"web\", created earlier; delete \
             one of them"
        );
        assert!(earlier_claimant(&old, &all).is_none());
        assert!(earlier_claimant(&other, &all).is_none());
    }

    /// Two objects created in the same second are ordered by name, so both halves pick the same
    /// one whatever order their caches list them in.
    #[test]
    fn same_second_claimants_are_ordered_by_name() {
        let a = sip("a", "192.0.2.10", 100);
        let b = sip("b", "192.0.2.10", 100);
        assert_eq!(
            earlier_claimant(&b, [&b, &a]).map(|d| d.earlier.name_any()),
            Some("a".into())
        );
        assert!(earlier_claimant(&a, [&b, &a]).is_none());
    }

    #[test]
    fn deleted_and_invalid_claimants_claim_nothing() {
        let mut deleting = sip("web", "192.0.2.10", 100);
        deleting.metadata.deletion_timestamp = deleting.metadata.creation_timestamp.clone();
        let mut invalid = sip("bad", "192.0.2.10", 50);
        invalid.spec.prefix = Some(24);
        let new = sip("web-copy", "192.0.2.10", 200);
        assert!(earlier_claimant(&new, [&deleting, &invalid, &new]).is_none());
        // A duplicate's own invalid address is reported as invalid, not as a duplicate.
        assert!(earlier_claimant(&sip("x", "nonsense", 300), [&new]).is_none());
    }

    /// A SharedIP without an address yet claims nothing; one the operator allocated an address
    /// for claims it as if it were given.
    #[test]
    fn an_allocated_address_claims_and_no_address_claims_nothing() {
        let mut waiting = sip("waiting", "192.0.2.10", 100);
        waiting.spec.address = None;
        let given = sip("given", "192.0.2.10", 200);
        assert!(earlier_claimant(&given, [&waiting, &given]).is_none());
        assert!(earlier_claimant(&waiting, [&waiting, &given]).is_none());
        waiting.spec.allocated_address = Some("192.0.2.10".into());
        assert_eq!(
            earlier_claimant(&given, [&waiting, &given]).map(|d| d.earlier.name_any()),
            Some("waiting".into())
        );
    }
}
