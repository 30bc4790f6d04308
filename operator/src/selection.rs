//! Which nodes a SharedIP selects, which Linodes stand behind them, and which of those can
//! receive the address.
//!
//! Pure functions over Node objects and Linode facts, so every rule here is unit-tested.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use sharedip_api::rules::{linode_of, RoleSelectors, SelectorError};
use sharedip_api::{ExcludedNode, Role, SharedIPSpec};

/// Reasons a selected node does not take part.
pub mod reason {
    pub const NO_PROVIDER_ID: &str = "NodeWithoutProviderID";
    pub const LINODE_NOT_FOUND: &str = "LinodeNotFound";
    pub const OTHER_REGION: &str = "LinodeInOtherRegion";
}

/// The Linodes behind `nodes` (those with a Linode providerID), deleting or not.
pub fn linodes_of<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> BTreeSet<u64> {
    nodes.into_iter().filter_map(linode_of).collect()
}

/// A node chosen by a selector, with its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedNode {
    pub name: String,
    pub role: Role,
    /// From `spec.providerID`; None when missing or not a Linode.
    pub linode: Option<u64>,
}

/// The nodes a spec selects, sorted by name, with the role [`RoleSelectors::role_of`] gives each.
pub fn select_nodes<'a>(
    spec: &SharedIPSpec,
    nodes: impl IntoIterator<Item = &'a Node>,
) -> Result<Vec<SelectedNode>, SelectorError> {
    let selectors = RoleSelectors::compile(spec)?;
    let empty = BTreeMap::new();
    let mut out: Vec<SelectedNode> = nodes
        .into_iter()
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .filter_map(|n| {
            let role = selectors.role_of(n.metadata.labels.as_ref().unwrap_or(&empty))?;
            Some(SelectedNode {
                name: n.name_any(),
                role,
                linode: linode_of(n),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// What the Linode API knows about a Linode, for placement checks.
pub trait LinodeFacts {
    /// The Linode's region, or None when the account has no such Linode.
    fn region_of(&self, linode: u64) -> Option<String>;
}

/// The outcome of placing an address on the selected nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// Linodes to share the address with, and the node and role behind each.
    pub share_with: BTreeMap<u64, (String, Role)>,
    /// Selected nodes that are the owner Linode: they hold the address already.
    pub owner_nodes: Vec<String>,
    /// Selected nodes that cannot take part.
    pub excluded: Vec<ExcludedNode>,
}

impl Placement {
    pub fn linodes(&self) -> BTreeSet<u64> {
        self.share_with.keys().copied().collect()
    }
}

/// Decides which selected nodes' Linodes receive the address (same region as the address, not
/// the owner) and why the others do not.
pub fn place(
    selected: &[SelectedNode],
    address_region: &str,
    owner: Option<u64>,
    facts: &impl LinodeFacts,
) -> Placement {
    let mut p = Placement::default();
    for n in selected {
        let Some(linode) = n.linode else {
            p.excluded.push(ExcludedNode {
                name: n.name.clone(),
                reason: reason::NO_PROVIDER_ID.into(),
                message: "the node has no spec.providerID of the form linode://<id>; install the Linode Cloud Controller Manager or set it".into(),
            });
            continue;
        };
        let Some(region) = facts.region_of(linode) else {
            p.excluded.push(ExcludedNode {
                name: n.name.clone(),
                reason: reason::LINODE_NOT_FOUND.into(),
                message: format!(
                    "Linode {linode} (from the node's providerID) is not in this Linode account"
                ),
            });
            continue;
        };
        if region != address_region {
            p.excluded.push(ExcludedNode {
                name: n.name.clone(),
                reason: reason::OTHER_REGION.into(),
                message: format!(
                    "Linode {linode} is in region {region} but the address is in {address_region}; Linode shares addresses only within one region"
                ),
            });
            continue;
        }
        if Some(linode) == owner {
            p.owner_nodes.push(n.name.clone());
            continue;
        }
        // Two nodes claiming the same Linode is a broken providerID; the first (by name) wins so
        // the result is stable.
        p.share_with
            .entry(linode)
            .or_insert_with(|| (n.name.clone(), n.role));
    }
    p
}

/// Comma-separated node names of a role, shortened for `kubectl get` columns.
pub fn summarize(selected: &[SelectedNode], role: Role) -> Option<String> {
    const SHOWN: usize = 3;
    let names: Vec<&str> = selected
        .iter()
        .filter(|n| n.role == role)
        .map(|n| n.name.as_str())
        .collect();
    match names.len() {
        0 => None,
        n if n <= SHOWN => Some(names.join(",")),
        n => Some(format!("{},+{}", names[..SHOWN].join(","), n - SHOWN)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use k8s_openapi::api::core::v1::NodeSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use kube::api::ObjectMeta;
    use sharedip_api::RoleSelector;

    use super::*;

    fn node(name: &str, labels: &[(&str, &str)], provider: Option<&str>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                provider_id: provider.map(String::from),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn selector(k: &str, v: &str) -> RoleSelector {
        RoleSelector {
            node_selector: LabelSelector {
                match_labels: Some([(k.to_string(), v.to_string())].into()),
                match_expressions: None,
            },
        }
    }

    fn spec() -> SharedIPSpec {
        SharedIPSpec {
            address: Some("192.0.2.10".into()),
            allocated_address: None,
            family: None,
            prefix: None,
            reclaim_policy: None,
            move_to_holder: None,
            primary: selector("role", "a"),
            secondary: Some(selector("tier", "edge")),
            failback: true,
            readiness_gate: None,
            endpoint_gate: None,
            bgp: None,
            flow_handover: None,
            flow_handover_window_seconds: None,
        }
    }

    struct Facts(HashMap<u64, &'static str>);
    impl LinodeFacts for Facts {
        fn region_of(&self, l: u64) -> Option<String> {
            self.0.get(&l).map(|s| s.to_string())
        }
    }

    #[test]
    fn primary_wins_over_secondary() {
        let nodes = [
            node("n1", &[("role", "a"), ("tier", "edge")], Some("linode://1")),
            node("n2", &[("tier", "edge")], Some("linode://2")),
            node("n3", &[("role", "b")], Some("linode://3")),
        ];
        let sel = select_nodes(&spec(), &nodes).unwrap();
        assert_eq!(
            sel.iter()
                .map(|n| (n.name.as_str(), n.role))
                .collect::<Vec<_>>(),
            vec![("n1", Role::Primary), ("n2", Role::Secondary)]
        );
    }

    #[test]
    fn placement_excludes_with_reasons() {
        let nodes = [
            node("a-owner", &[("role", "a")], Some("linode://1")),
            node("b-ok", &[("role", "a")], Some("linode://2")),
            node("c-noprov", &[("role", "a")], None),
            node("d-away", &[("tier", "edge")], Some("linode://4")),
            node("e-gone", &[("tier", "edge")], Some("linode://5")),
        ];
        let sel = select_nodes(&spec(), &nodes).unwrap();
        let facts = Facts([(1, "us-east"), (2, "us-east"), (4, "eu-west")].into());
        let p = place(&sel, "us-east", Some(1), &facts);
        assert_eq!(p.linodes(), BTreeSet::from([2]));
        assert_eq!(p.owner_nodes, vec!["a-owner".to_string()]);
        let reasons: Vec<(&str, &str)> = p
            .excluded
            .iter()
            .map(|e| (e.name.as_str(), e.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                ("c-noprov", reason::NO_PROVIDER_ID),
                ("d-away", reason::OTHER_REGION),
                ("e-gone", reason::LINODE_NOT_FOUND)
            ]
        );
    }

    #[test]
    fn expressions_and_deleted_nodes() {
        let mut s = spec();
        s.primary.node_selector = LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                    key: "pool".into(),
                    operator: "In".into(),
                    values: Some(vec!["x".into(), "y".into()]),
                },
            ]),
        };
        s.secondary = None;
        let mut gone = node("n2", &[("pool", "y")], Some("linode://2"));
        gone.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        let nodes = [node("n1", &[("pool", "x")], Some("linode://1")), gone];
        let sel = select_nodes(&s, &nodes).unwrap();
        assert_eq!(sel.len(), 1);
        assert_eq!(sel[0].name, "n1");
    }

    #[test]
    fn bad_operator_is_an_error() {
        let mut s = spec();
        s.primary.node_selector.match_expressions = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                key: "pool".into(),
                operator: "Near".into(),
                values: None,
            },
        ]);
        assert!(select_nodes(&s, &[]).is_err());
    }

    /// Selectors the CRD now refuses, stored before it did, are reported, not evaluated.
    #[test]
    fn selectors_the_crd_refuses_are_errors() {
        let mut s = spec();
        s.primary.node_selector.match_expressions = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                key: "pool".into(),
                operator: "In".into(),
                values: Some(vec![]),
            },
        ]);
        let e = select_nodes(&s, &[]).unwrap_err().to_string();
        assert!(
            e.contains("Primary nodeSelector is invalid") && e.contains("at least one value"),
            "{e}"
        );
        let mut s = spec();
        s.secondary = Some(selector("bad key!", "x"));
        let e = select_nodes(&s, &[]).unwrap_err().to_string();
        assert!(e.contains("Secondary nodeSelector is invalid"), "{e}");
        assert!(e.contains("\"bad key!\""), "{e}");
    }

    #[test]
    fn summary_is_short() {
        let mk = |n: &str, r| SelectedNode {
            name: n.into(),
            role: r,
            linode: None,
        };
        let sel = vec![
            mk("a", Role::Primary),
            mk("b", Role::Secondary),
            mk("c", Role::Secondary),
            mk("d", Role::Secondary),
            mk("e", Role::Secondary),
        ];
        assert_eq!(summarize(&sel, Role::Primary).as_deref(), Some("a"));
        assert_eq!(
            summarize(&sel, Role::Secondary).as_deref(),
            Some("b,c,d,+1")
        );
    }
}
