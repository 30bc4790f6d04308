//! Which Service dataplanes flow handover can serve. It forwards a LoadBalancer Service's
//! packets from the uplink's nf_tables ingress, before conntrack and kube-proxy's DNAT, and
//! the old node answers them from its conntrack entries: that is what kube-proxy in
//! iptables or nftables mode does. Dataplanes that translate the traffic elsewhere are
//! recognised by the devices they create and reported, not guessed at:
//!
//! - kube-proxy in IPVS mode (`kube-ipvs0`): IPVS keeps its own connection table and
//!   translates in its own hook;
//! - Cilium (`cilium_host`): its eBPF programs on the devices run before nf_tables ingress
//!   and, with its kube-proxy replacement, translate Service traffic there;
//! - Calico's eBPF dataplane (`bpfin.cali`, `bpfout.cali`): likewise.
//!
//! Plain SharedIPs (sockets on the node) do not depend on the Service dataplane and keep
//! flow handover everywhere.

/// Why this node cannot hand a LoadBalancer Service's connections over, from the names of
/// its network devices; None when its dataplane is one flow handover serves.
pub fn unsupported<'a>(devices: impl IntoIterator<Item = &'a str>) -> Option<&'static str> {
    devices.into_iter().find_map(|name| match name {
        "kube-ipvs0" => Some(
            "kube-proxy runs in IPVS mode (device kube-ipvs0), which flow handover does not serve",
        ),
        "cilium_host" => Some(
            "Cilium's eBPF dataplane (device cilium_host) may translate Service traffic before flow handover sees it",
        ),
        "bpfin.cali" | "bpfout.cali" => Some(
            "Calico's eBPF dataplane (devices bpfin.cali, bpfout.cali) translates Service traffic before flow handover sees it",
        ),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nftables_and_iptables_kube_proxy_are_served_the_others_reported() {
        assert_eq!(
            unsupported(["lo", "eth0", "cali1234", "vxlan.calico"]),
            None
        );
        assert_eq!(unsupported(["lo", "eth0", "flannel.1", "cni0"]), None);
        for dev in ["kube-ipvs0", "cilium_host", "bpfin.cali", "bpfout.cali"] {
            let why = unsupported(["lo", dev]).unwrap();
            assert!(why.contains(dev), "{why}");
        }
    }
}
