//! The tunnel of a flow handover window: a point-to-point VXLAN device between this node's
//! and the peer's own IPv6 addresses, and, on the receiving side, the route that makes the
//! reverse-path check accept what comes out of it.
//!
//! VXLAN because every kernel a node runs on has it (some lack ip6tnl, GRE, FOU or
//! WireGuard), and over IPv6 because every Linode has a public IPv6 address. Both ends derive
//! the device's name, its VXLAN network id and both MAC addresses from the two nodes'
//! addresses, so nothing but the peer's address has to be exchanged. Everything made here is
//! named or numbered with the constants below, so a restart finds and removes it.

use std::net::Ipv6Addr;
use std::time::Duration;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{AfSpecInet, AfSpecUnspec, InetDevConf, LinkAttribute};
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{Handle, IpVersion, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use super::ruleset::PROBE_ETHERTYPE;

/// Prefix of the tunnel devices' names.
pub const NAME_PREFIX: &str = "sipfh";
/// First routing table of the receivers' marked reverse paths (one per tunnel).
const TABLE_BASE: u32 = 0x5151_0000;
/// First mark of what the tunnels deliver (one per tunnel).
const MARK_BASE: u32 = 0x5f1_0000;
/// Priority of the reverse-path rule (before `main`, 32766); the onward rule's is one less.
/// A restart finds the rules by these priorities and a mark of [`MARK_BASE`]'s range.
pub const RULE_PRIORITY: u32 = 5151;
const MAIN_TABLE: u32 = 254;
/// The MTU of the device: the inner frames are full-size; the MSS clamp keeps TCP segments
/// small enough that the encapsulated packet fits the path.
const MTU: u32 = 1500;
/// Bound of each netlink request.
const TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong making or removing a tunnel.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{what}: no answer from the kernel within {TIMEOUT:?}")]
    Timeout { what: String },
    #[error("tunnel device {0} not found after it was made")]
    Missing(String),
}

/// One end of a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunnel {
    /// This node's own IPv6 address.
    pub local: Ipv6Addr,
    /// The peer's.
    pub remote: Ipv6Addr,
    /// The UDP port both ends use.
    pub port: u16,
}

/// FNV-1a: stable across builds, machines and Rust versions, as both ends must agree.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The MAC address of a node's tunnel device: locally administered, unicast.
pub fn mac_of(node: Ipv6Addr) -> [u8; 6] {
    let h = fnv(&[b"sharedip-mac", &node.octets()]).to_be_bytes();
    [0x02, h[0], h[1], h[2], h[3], h[4]]
}

impl Tunnel {
    /// The device's name (at most 15 bytes).
    pub fn name(&self) -> String {
        let h = fnv(&[&self.local.octets(), &self.remote.octets()]);
        format!("{NAME_PREFIX}{:08x}", h & 0xffff_ffff)
    }

    /// The VXLAN network id, the same at both ends (several tunnels share the port).
    pub fn vni(&self) -> u32 {
        let (a, b) = if self.local < self.remote {
            (self.local, self.remote)
        } else {
            (self.remote, self.local)
        };
        let v = u32::try_from(fnv(&[&a.octets(), &b.octets()]) & 0x00ff_ffff).unwrap_or(1);
        v.max(1)
    }

    /// The mark of what this tunnel delivers (receiver side).
    pub fn mark(&self) -> u32 {
        MARK_BASE | (self.vni() & 0xffff)
    }

    /// The routing table of this tunnel's reverse path (receiver side).
    pub fn table(&self) -> u32 {
        TABLE_BASE | (self.vni() & 0xffff)
    }

    /// Makes the device (replacing one of the same name left by an earlier run) and brings
    /// it up; returns its interface index.
    pub async fn create(&self, handle: &Handle) -> Result<u32, TunnelError> {
        let name = self.name();
        remove_link(handle, &name).await?;
        let message = LinkVxlan::new(&name, self.vni())
            .local6(self.local)
            .remote6(self.remote)
            .port(self.port)
            .learning(false)
            .address(mac_of(self.local).to_vec())
            .mtu(MTU)
            .up()
            .build();
        bounded(
            format!("create tunnel {name}"),
            handle.link().add(message).execute(),
        )
        .await?;
        link_index(handle, &name)
            .await?
            .ok_or(TunnelError::Missing(name))
    }

    /// Removes the device (and with it the routes through it); fine if it is gone.
    pub async fn remove(&self, handle: &Handle) -> Result<(), TunnelError> {
        remove_link(handle, &self.name()).await
    }

    /// The UDP payload of a self-test probe from this end: the VXLAN header with the
    /// tunnel's network id, then an Ethernet frame from this end's device to the peer's, of
    /// EtherType [`PROBE_ETHERTYPE`], padded to the smallest frame.
    pub fn probe(&self) -> Vec<u8> {
        // Flags: the network id is valid; then 3 reserved bytes, the id, 1 reserved byte.
        let mut p = vec![0x08, 0, 0, 0];
        p.extend_from_slice(&(self.vni() << 8).to_be_bytes());
        p.extend_from_slice(&mac_of(self.remote));
        p.extend_from_slice(&mac_of(self.local));
        p.extend_from_slice(&PROBE_ETHERTYPE.to_be_bytes());
        p.extend_from_slice(PROBE_TEXT);
        p.extend_from_slice(&self.local.octets());
        p.resize(VXLAN_HEADER + ETHERNET_HEADER + MIN_PAYLOAD, 0);
        p
    }

    /// Sends a self-test probe to the peer's device: from this node's own address to the
    /// peer's tunnel port, as the tunnel's own packets go, so it arrives exactly when they
    /// would (the peer's guard, and any firewall between, judge both by the addresses and
    /// the port). A plain UDP socket does it: no raw socket, no extra capability.
    pub fn send_probe(&self) -> std::io::Result<()> {
        let socket = std::net::UdpSocket::bind((self.local, 0))?;
        socket.send_to(&self.probe(), (self.remote, self.port))?;
        Ok(())
    }
}

const PROBE_TEXT: &[u8] = b"sharedip tunnel probe\0";
const VXLAN_HEADER: usize = 8;
const ETHERNET_HEADER: usize = 14;
const MIN_PAYLOAD: usize = 46;

async fn bounded<T>(
    what: String,
    request: impl std::future::Future<Output = Result<T, rtnetlink::Error>>,
) -> Result<T, TunnelError> {
    match tokio::time::timeout(TIMEOUT, request).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(TunnelError::Netlink { what, source }),
        Err(_) => Err(TunnelError::Timeout { what }),
    }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get().abs()),
        _ => None,
    }
}

async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, TunnelError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match bounded(format!("find {name}"), links.try_next()).await {
        Ok(found) => Ok(found.map(|l| l.header.index)),
        Err(TunnelError::Netlink { source, .. }) if errno(&source) == Some(libc::ENODEV) => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

async fn remove_link(handle: &Handle, name: &str) -> Result<(), TunnelError> {
    let Some(index) = link_index(handle, name).await? else {
        return Ok(());
    };
    match bounded(format!("remove {name}"), handle.link().del(index).execute()).await {
        Err(TunnelError::Netlink { source, .. }) if errno(&source) == Some(libc::ENODEV) => Ok(()),
        other => other,
    }
}

/// The names of the network devices in this namespace.
pub async fn link_names(handle: &Handle) -> Result<Vec<String>, TunnelError> {
    let mut links = handle.link().get().execute();
    let mut names = Vec::new();
    while let Some(link) = bounded("list links".into(), links.try_next()).await? {
        names.extend(link.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        }));
    }
    Ok(names)
}

/// Removes every tunnel device an earlier run left (they all carry [`NAME_PREFIX`]), and the
/// receiver's rule.
pub async fn remove_all(handle: &Handle) -> Result<Vec<String>, TunnelError> {
    let ours: Vec<String> = link_names(handle)
        .await?
        .into_iter()
        .filter(|n| n.starts_with(NAME_PREFIX))
        .collect();
    for name in &ours {
        remove_link(handle, name).await?;
    }
    unroute_marked(handle, None).await?;
    Ok(ours)
}

/// The receiver's reverse path through the tunnel `device` (interface `index`), for IPv4
/// packets carrying `mark` (what the tunnel delivered, as the receiver's rules mark it).
/// Without it, strict and loose reverse-path filtering alike drop them: the tunnel has no
/// IPv4 address of its own. The tunnel device validates the mark in its reverse-path lookups,
/// and two rules route marked lookups:
/// - from the tunnel (forwarding a delivered packet on, to a pod after kube-proxy's
///   translation): the main table, as if unmarked;
/// - any other (the reverse-path lookup, made as if from `lo` for local delivery and from
///   the outgoing device when forwarding): the tunnel's table, whose default route is the
///   tunnel, so the source is found behind the device it came from.
///
/// Each tunnel has its own mark and table ([`Tunnel::mark`], [`Tunnel::table`]).
pub async fn route_marked(
    handle: &Handle,
    device: &str,
    index: u32,
    mark: u32,
    table: u32,
) -> Result<(), TunnelError> {
    validate_marks(handle, device, index).await?;
    let onward = handle
        .rule()
        .add()
        .v4()
        .fw_mark(mark)
        .input_interface(device)
        .table_id(MAIN_TABLE)
        .priority(RULE_PRIORITY - 1)
        .action(RuleAction::ToTable)
        .execute();
    existing_is_fine(bounded(format!("add the rule of {device}'s packets"), onward).await)?;
    let back = handle
        .rule()
        .add()
        .v4()
        .fw_mark(mark)
        .table_id(table)
        .priority(RULE_PRIORITY)
        .action(RuleAction::ToTable)
        .execute();
    existing_is_fine(bounded(format!("add the reverse-path rule of {device}"), back).await)?;
    let route = RouteMessageBuilder::<std::net::Ipv4Addr>::new()
        .output_interface(index)
        .table_id(table)
        .scope(RouteScope::Link)
        .build();
    existing_is_fine(
        bounded(
            format!("add the route of {device}"),
            handle.route().add(route).execute(),
        )
        .await,
    )
}

/// An add that finds what it adds already there (a repeated call) has done its job.
fn existing_is_fine(added: Result<(), TunnelError>) -> Result<(), TunnelError> {
    match added {
        Err(TunnelError::Netlink { source, .. }) if errno(&source) == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// Removes the rules [`route_marked`] adds for the tunnel whose mark is `mark`, or for every
/// tunnel (`None`); their routes go with the devices.
pub async fn unroute_marked(handle: &Handle, mark: Option<u32>) -> Result<(), TunnelError> {
    let mut rules = handle.rule().get(IpVersion::V4).execute();
    let mut ours: Vec<RuleMessage> = Vec::new();
    while let Some(rule) = bounded("list rules".into(), rules.try_next()).await? {
        let priority = rule.attributes.iter().find_map(|a| match a {
            RuleAttribute::Priority(p) => Some(*p),
            _ => None,
        });
        let rule_mark = rule.attributes.iter().find_map(|a| match a {
            RuleAttribute::FwMark(m) => Some(*m),
            _ => None,
        });
        // Ours by priority and mark: a rule someone else put at these priorities stays.
        let ours_by_mark = match mark {
            Some(m) => rule_mark == Some(m),
            None => rule_mark.is_some_and(|m| m & 0xffff_0000 == MARK_BASE),
        };
        if priority.is_some_and(|p| p == RULE_PRIORITY || p == RULE_PRIORITY - 1) && ours_by_mark {
            ours.push(rule);
        }
    }
    for rule in ours {
        match bounded(
            "remove the tunnel's rule".into(),
            handle.rule().del(rule).execute(),
        )
        .await
        {
            Err(TunnelError::Netlink { source, .. }) if errno(&source) == Some(libc::ENOENT) => {}
            other => other?,
        }
    }
    Ok(())
}

/// Sets the device's `src_valid_mark` (its reverse-path lookups take the packet's mark) over
/// rtnetlink, not through /proc/sys: an agent that is not privileged has /proc/sys
/// read-only, while CAP_NET_ADMIN is enough for this. Only this one setting is sent.
async fn validate_marks(handle: &Handle, device: &str, index: u32) -> Result<(), TunnelError> {
    let mut conf = InetDevConf::default();
    conf.src_vmark = 1;
    let mut message = LinkUnspec::new_with_index(index).build();
    message
        .attributes
        .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
            AfSpecInet::DevConfRequest(conf),
        ])]));
    bounded(
        format!("set src_valid_mark on {device}"),
        handle.link().set(message).execute(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(local: &str, remote: &str) -> Tunnel {
        Tunnel {
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            port: 4790,
        }
    }

    #[test]
    fn both_ends_agree_on_the_network_id_and_macs() {
        let a = t("2001:db8:a::2", "2001:db8:b::2");
        let b = t("2001:db8:b::2", "2001:db8:a::2");
        assert_eq!(a.vni(), b.vni());
        assert!(a.vni() > 0 && a.vni() < 1 << 24);
        assert_ne!(mac_of(a.local), mac_of(b.local));
        assert_eq!(mac_of(a.local)[0], 0x02, "locally administered, unicast");
        assert!(a.name().len() <= 15 && a.name().starts_with(NAME_PREFIX));
        assert_ne!(a.name(), b.name());
        // Stable: the peer computes the same from the same addresses in another process.
        assert_eq!(
            mac_of("2001:db8::1".parse().unwrap()),
            mac_of("2001:db8::1".parse().unwrap())
        );
        assert_ne!(t("2001:db8:a::2", "2001:db8:c::2").vni(), a.vni());
    }

    #[test]
    fn a_probe_is_a_vxlan_frame_from_this_device_to_the_peers() {
        let a = t("2001:db8:a::2", "2001:db8:b::2");
        let p = a.probe();
        assert_eq!(p.len(), 8 + 14 + 46);
        assert_eq!(p[0], 0x08, "the network id is valid");
        assert_eq!(u32::from_be_bytes([0, p[4], p[5], p[6]]), a.vni());
        assert_eq!(&p[8..14], &mac_of(a.remote), "to the peer's device");
        assert_eq!(&p[14..20], &mac_of(a.local), "from this one");
        assert_eq!(u16::from_be_bytes([p[20], p[21]]), PROBE_ETHERTYPE);
        assert!(p[22..].starts_with(PROBE_TEXT));
    }
}
