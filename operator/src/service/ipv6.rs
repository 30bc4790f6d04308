//! IPv6 Services. Linode gives an account one IPv6 range per region, announced as a whole,
//! and refuses to delete a range while it is shared; so the IPv6 Services of a region share
//! one range-level SharedIP (`svc-ipv6-<region>`) with distinct addresses inside the range.
//! kube-proxy takes each Service's address from the announced range, whatever the node
//! binds on `lo`. The range is announced by the nodes eligible for all of them, which only
//! `externalTrafficPolicy: Cluster` makes meaningful: an IPv6 `Local` Service is refused.

use std::collections::BTreeSet;
use std::net::Ipv6Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use sharedip_api::REGION_LABEL;

use crate::allocation::bound_in_range;

/// The prefix of the region's range when nothing says otherwise (Linode's /64).
pub const DEFAULT_PREFIX: u8 = 64;

/// The name of the range-level SharedIP of `region`.
pub fn range_name(region: &str) -> String {
    format!("svc-ipv6-{region}")
}

/// The region of the cluster's Linode nodes: IPv6 Services use its range. Err when the nodes
/// name none or several (a Service's address cannot follow nodes into another region).
pub fn region_of(nodes: &[Arc<Node>]) -> Result<String, String> {
    let regions: BTreeSet<&str> = nodes
        .iter()
        .filter(|n| sharedip_api::rules::linode_of(n).is_some())
        .filter_map(|n| {
            n.metadata
                .labels
                .as_ref()?
                .get(REGION_LABEL)
                .map(String::as_str)
        })
        .collect();
    match regions.len() {
        1 => Ok(regions.into_iter().next().unwrap_or_default().to_owned()),
        0 => Err(format!(
            "no Linode node has the label {REGION_LABEL}, so the region whose IPv6 range to use is unknown"
        )),
        _ => Err(format!(
            "the nodes are in several regions ({}); an IPv6 range belongs to one",
            regions.into_iter().collect::<Vec<_>>().join(", ")
        )),
    }
}

fn mask(prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p if p >= 128 => u128::MAX,
        p => u128::MAX << (128 - u32::from(p)),
    }
}

/// The base of the range of `prefix` bits that holds `addr`.
pub fn base_of(addr: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(addr) & mask(prefix))
}

/// Whether `addr` is inside `base`/`prefix`.
pub fn contains(base: Ipv6Addr, prefix: u8, addr: Ipv6Addr) -> bool {
    base_of(addr, prefix) == base_of(base, prefix)
}

/// Whether a Service may use `addr` of the range: not the base, not the address the nodes
/// bind (which answers on the node itself).
pub fn usable(base: Ipv6Addr, prefix: u8, addr: Ipv6Addr) -> bool {
    contains(base, prefix, addr) && addr != base && addr != bound_in_range(base)
}

/// The lowest usable address of the range that is not `taken`.
pub fn pick(base: Ipv6Addr, prefix: u8, taken: &BTreeSet<Ipv6Addr>) -> Option<Ipv6Addr> {
    let base = u128::from(base_of(base, prefix));
    let size = !mask(prefix);
    (2..=size.min(1 << 20))
        .map(|n| Ipv6Addr::from(base | n))
        .find(|a| !taken.contains(a))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(name: &str, region: &str, linode: bool) -> Arc<Node> {
        let mut n =
            json!({"metadata": {"name": name, "labels": {REGION_LABEL: region}}, "spec": {}});
        if linode {
            n["spec"]["providerID"] = json!("linode://1");
        }
        Arc::new(serde_json::from_value(n).unwrap())
    }

    #[test]
    fn one_region_or_an_error() {
        assert_eq!(
            region_of(&[node("a", "us-east", true), node("b", "us-east", true)]),
            Ok("us-east".into())
        );
        // A node without a Linode does not count.
        assert_eq!(
            region_of(&[node("a", "us-east", true), node("b", "eu-west", false)]),
            Ok("us-east".into())
        );
        let e = region_of(&[node("a", "us-east", true), node("b", "eu-west", true)]).unwrap_err();
        assert!(e.contains("eu-west, us-east"), "{e}");
        assert!(region_of(&[]).is_err());
    }

    #[test]
    fn addresses_inside_the_range() {
        let base: Ipv6Addr = "2001:db8:ff::".parse().unwrap();
        assert!(contains(base, 64, "2001:db8:ff::abcd".parse().unwrap()));
        assert!(!contains(base, 64, "2001:db8:ff:1::1".parse().unwrap()));
        assert!(contains(base, 56, "2001:db8:ff:1::1".parse().unwrap()));
        assert_eq!(base_of("2001:db8:ff::abcd".parse().unwrap(), 64), base);
        assert!(!usable(base, 64, base), "the base");
        assert!(
            !usable(base, 64, "2001:db8:ff::1".parse().unwrap()),
            "the nodes' own"
        );
        assert!(usable(base, 64, "2001:db8:ff::2".parse().unwrap()));
    }

    #[test]
    fn picks_the_lowest_free_address() {
        let base: Ipv6Addr = "2001:db8:ff::".parse().unwrap();
        let mut taken = BTreeSet::new();
        let a = pick(base, 64, &taken).unwrap();
        assert_eq!(a, "2001:db8:ff::2".parse::<Ipv6Addr>().unwrap());
        taken.insert(a);
        assert_eq!(
            pick(base, 64, &taken).unwrap(),
            "2001:db8:ff::3".parse::<Ipv6Addr>().unwrap()
        );
        // A full tiny range has nothing left.
        let full: BTreeSet<Ipv6Addr> = ["2001:db8:ff::2", "2001:db8:ff::3"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(pick(base, 126, &full), None);
    }
}
