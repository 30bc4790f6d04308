//! The data path of the lab's LoadBalancer Services: the real kube-proxy, one per node
//! namespace, in nftables mode.
//!
//! The agent binds a Service's address on the node's `lo` and announces it; kube-proxy sees
//! the address in the Service's `status.loadBalancer.ingress` and DNATs traffic for it to the
//! Service's endpoints (the lab's pods, [`super::pods`]), masquerading it when it leaves for
//! another node (`externalTrafficPolicy: Cluster`) and dropping it on a node without a local
//! endpoint (`Local`). What reaches a pod is what a client of a real cluster would reach.
//!
//! Each kube-proxy reaches the apiserver through its node's [`crate::kubebridge::KubeBridge`]
//! (the agent's kubeconfig), names itself after the node (`--hostname-override`), and leaves
//! alone what a network namespace does not let it change: the conntrack table size is a
//! host-wide setting and the conntrack timeouts keep the kernel's values. Its health and
//! metrics servers listen on the namespace's own loopback, so every node's can use the
//! default ports.
//!
//! nftables mode, not iptables: it needs only `nft` (which the lab already uses), clears
//! conntrack entries over netlink, and programs a table of its own that goes away with the
//! namespace.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::processes::{Process, ProcessError};
use crate::controlplane;
use crate::netns::{Netns, NetnsError};

/// The binary's name in the control plane's bin dir (`e2e/scripts/build-control-plane.sh`).
pub const KUBE_PROXY_BIN: &str = "kube-proxy";
/// The nftables table kube-proxy programs, in the `ip` and `ip6` families.
pub const TABLE: &str = "kube-proxy";
/// The log file in the node's directory.
pub const LOG_FILE: &str = "kube-proxy.log";

/// How every node's kube-proxy is started.
#[derive(Debug, Clone)]
pub struct KubeProxySettings {
    /// The kube-proxy binary.
    pub binary: PathBuf,
    /// `--cluster-cidr`: the pods' addresses (both families, comma-separated), so traffic from
    /// a pod counts as local.
    pub cluster_cidr: String,
}

impl KubeProxySettings {
    /// Settings with the binary from the control plane's bin dir, or the error saying how to
    /// build it.
    pub fn locate(cluster_cidr: &str) -> Result<KubeProxySettings, crate::controlplane::Error> {
        Ok(KubeProxySettings {
            binary: controlplane::binary(KUBE_PROXY_BIN)?,
            cluster_cidr: cluster_cidr.to_owned(),
        })
    }
}

/// Starts kube-proxy in `ns` as node `node` whose address is `node_v4`, with the kubeconfig
/// in `dir` (the node agent's, through the node's bridge) and its log in `dir`.
pub fn start(
    settings: &KubeProxySettings,
    ns: &Netns,
    node: &str,
    node_v4: Ipv4Addr,
    dir: &Path,
) -> Result<Process, ProcessError> {
    let kubeconfig = dir.join("kubeconfig");
    let mut cmd = ns.command(&settings.binary);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--hostname-override={node}"))
        .arg("--proxy-mode=nftables")
        // The node's primary IP, IPv4: the lab's Nodes are dual-stack with IPv4 first.
        .arg(format!("--bind-address={node_v4}"))
        .arg(format!("--cluster-cidr={}", settings.cluster_cidr))
        // nf_conntrack_max is host-wide and read-only inside a namespace; 0 leaves it alone,
        // as do the zero timeouts (the kernel's defaults stay).
        .arg("--conntrack-max-per-core=0")
        .arg("--conntrack-tcp-timeout-established=0")
        .arg("--conntrack-tcp-timeout-close-wait=0")
        // The namespace's own loopback: every node's kube-proxy can use the same ports.
        .arg("--healthz-bind-address=127.0.0.1:10256")
        .arg("--metrics-bind-address=127.0.0.1:10249")
        // A test process, not a node's critical daemon.
        .arg("--oom-score-adj=0")
        .arg("--v=2");
    Process::spawn(&format!("kube-proxy {node}"), cmd, &dir.join(LOG_FILE))
}

/// kube-proxy's IPv4 table in `ns` (`nft list table ip kube-proxy`); an error until
/// kube-proxy has programmed it.
pub fn ruleset(ns: &Netns) -> Result<String, NetnsError> {
    ns.exec("nft", &["list", "table", "ip", TABLE])
}

/// kube-proxy's IPv6 table in `ns` (`nft list table ip6 kube-proxy`); an error until its
/// IPv6 proxier has programmed it.
pub fn ruleset_v6(ns: &Netns) -> Result<String, NetnsError> {
    ns.exec("nft", &["list", "table", "ip6", TABLE])
}

/// Whether `nft` is on `PATH` (kube-proxy's nftables mode runs it).
pub fn nft_available() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join("nft").is_file()))
}
