//! How the binder marks, in the kernel itself, the addresses it adds, so that what it added is
//! recognised after a crash even when the state file is gone, stale or was never consulted
//! (the standalone discovery mode), and so that nobody else's address is ever taken for ours.
//!
//! Every address the binder adds carries:
//!
//! - the **address protocol** attribute `IFA_PROTO` = [`ADDRESS_PROTOCOL`] (`0x53`), which
//!   Linux keeps since 6.1 (`ip -d address` from iproute2 ≥ 6.2 shows it as `proto 0x53`).
//!   Older kernels ignore the attribute without an error, so it is always sent in
//!   [`MarkerMode::Native`];
//! - and a **fallback marker** that kernels older than 6.1 keep too:
//!   - IPv4: the address **label** `<interface>:sharedip` ([`label_for`]; `ip address` shows
//!     it, as `lo:sharedip`). The kernel stores labels of up to 15 bytes; like the kernel's
//!     own renaming of labels, the interface part is shortened so that the `:sharedip`
//!     suffix always survives;
//!   - IPv6, which has no labels: the **metric** (`IFA_RT_PRIORITY`, Linux ≥ 4.18) of the
//!     address's prefix route, [`IPV6_METRIC`] (5458256, `0x534950`, "SIP" in ASCII). The
//!     shared address is delivered through the `local` table, which this metric does not
//!     touch.
//!
//! An address is ours if it carries any of the markers. [`MarkerMode::Fallback`] leaves
//! `IFA_PROTO` out, as on an older kernel, so tests exercise the fallback alone.

use std::net::IpAddr;

use rtnetlink::packet_route::address::{AddressAttribute, AddressProtocol};

/// `IFA_PROTO` of the addresses the agent adds. 0 to 3 are the kernel's own (unspecified,
/// loopback, router advertisement, link local).
pub const ADDRESS_PROTOCOL: u8 = 0x53;
/// Suffix of the label of the IPv4 addresses the agent adds.
pub const LABEL_SUFFIX: &str = ":sharedip";
/// Prefix-route metric (`IFA_RT_PRIORITY`) of the IPv6 addresses the agent adds.
pub const IPV6_METRIC: u32 = 0x0053_4950;
/// Longest label the kernel keeps (IFNAMSIZ without the NUL byte).
const MAX_LABEL_LEN: usize = 15;

/// Which markers the binder writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum MarkerMode {
    /// `IFA_PROTO` and the fallback marker (the default).
    #[default]
    Native,
    /// Only the fallback marker (label or metric), as a kernel older than 6.1 keeps it.
    Fallback,
}

/// Which marker identified an address as ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Marker {
    /// `IFA_PROTO` = [`ADDRESS_PROTOCOL`].
    Protocol,
    /// An IPv4 label ending in [`LABEL_SUFFIX`].
    Label,
    /// An IPv6 prefix-route metric of [`IPV6_METRIC`].
    Metric,
}

impl std::fmt::Display for Marker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Marker::Protocol => write!(f, "address protocol {ADDRESS_PROTOCOL:#x}"),
            Marker::Label => write!(f, "label *{LABEL_SUFFIX}"),
            Marker::Metric => write!(f, "metric {IPV6_METRIC}"),
        }
    }
}

/// The label of an IPv4 address the agent adds on `interface`.
pub fn label_for(interface: &str) -> String {
    let mut keep = MAX_LABEL_LEN - LABEL_SUFFIX.len();
    while keep > 0 && !interface.is_char_boundary(keep.min(interface.len())) {
        keep -= 1;
    }
    let head = &interface[..keep.min(interface.len())];
    format!("{head}{LABEL_SUFFIX}")
}

/// The attributes that mark `address`, added on `interface`, as ours.
pub fn attributes(mode: MarkerMode, interface: &str, address: IpAddr) -> Vec<AddressAttribute> {
    let mut out = Vec::with_capacity(2);
    if mode == MarkerMode::Native {
        out.push(AddressAttribute::Protocol(AddressProtocol::from(
            ADDRESS_PROTOCOL,
        )));
    }
    out.push(match address {
        IpAddr::V4(_) => AddressAttribute::Label(label_for(interface)),
        IpAddr::V6(_) => AddressAttribute::RoutePriority(IPV6_METRIC),
    });
    out
}

/// The marker of ours among the attributes of a kernel address entry, if any. The label
/// counts for IPv4 and the metric for IPv6 only, the families the binder writes them for.
pub fn marker_of(address: IpAddr, attributes: &[AddressAttribute]) -> Option<Marker> {
    let mut found = None;
    for attribute in attributes {
        match attribute {
            AddressAttribute::Protocol(p) if u8::from(*p) == ADDRESS_PROTOCOL => {
                return Some(Marker::Protocol)
            }
            AddressAttribute::Label(l) if address.is_ipv4() && l.ends_with(LABEL_SUFFIX) => {
                found = Some(Marker::Label)
            }
            AddressAttribute::RoutePriority(m) if address.is_ipv6() && *m == IPV6_METRIC => {
                found = Some(Marker::Metric)
            }
            _ => {}
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn labels_keep_the_suffix_within_the_kernel_limit() {
        assert_eq!(label_for("lo"), "lo:sharedip");
        assert_eq!(label_for("dummy0"), "dummy0:sharedip");
        assert_eq!(label_for("eth0.100"), "eth0.1:sharedip");
        assert_eq!(label_for("fifteen_chars_x"), "fiftee:sharedip");
        for name in ["lo", "dummy0", "fifteen_chars_x", "é_ü_ö_ä"] {
            let l = label_for(name);
            assert!(l.len() <= MAX_LABEL_LEN, "{l}");
            assert!(l.ends_with(LABEL_SUFFIX), "{l}");
        }
    }

    #[test]
    fn native_mode_writes_protocol_and_fallback() {
        assert_eq!(
            attributes(MarkerMode::Native, "lo", ip("192.0.2.10")),
            vec![
                AddressAttribute::Protocol(AddressProtocol::Other(0x53)),
                AddressAttribute::Label("lo:sharedip".into()),
            ]
        );
        assert_eq!(
            attributes(MarkerMode::Native, "lo", ip("2001:db8::1")),
            vec![
                AddressAttribute::Protocol(AddressProtocol::Other(0x53)),
                AddressAttribute::RoutePriority(5_458_256),
            ]
        );
    }

    #[test]
    fn fallback_mode_writes_only_the_fallback() {
        assert_eq!(
            attributes(MarkerMode::Fallback, "dummy0", ip("192.0.2.10")),
            vec![AddressAttribute::Label("dummy0:sharedip".into())]
        );
        assert_eq!(
            attributes(MarkerMode::Fallback, "dummy0", ip("2001:db8::1")),
            vec![AddressAttribute::RoutePriority(IPV6_METRIC)]
        );
    }

    #[test]
    fn what_is_written_is_recognised() {
        for mode in [MarkerMode::Native, MarkerMode::Fallback] {
            for addr in ["192.0.2.10", "2001:db8::1"] {
                let a = ip(addr);
                let written = attributes(mode, "lo", a);
                let want = match (mode, a) {
                    (MarkerMode::Native, _) => Marker::Protocol,
                    (_, IpAddr::V4(_)) => Marker::Label,
                    (_, IpAddr::V6(_)) => Marker::Metric,
                };
                assert_eq!(marker_of(a, &written), Some(want), "{mode:?} {addr}");
            }
        }
    }

    #[test]
    fn other_addresses_are_not_ours() {
        let v4 = ip("192.0.2.10");
        let v6 = ip("2001:db8::1");
        // What the kernel reports for addresses configured by hand or by the system.
        assert_eq!(marker_of(v4, &[AddressAttribute::Label("lo".into())]), None);
        assert_eq!(
            marker_of(v4, &[AddressAttribute::Label("eth0:sip".into())]),
            None
        );
        assert_eq!(
            marker_of(v4, &[AddressAttribute::Protocol(AddressProtocol::Loopback)]),
            None
        );
        assert_eq!(marker_of(v6, &[AddressAttribute::RoutePriority(256)]), None);
        assert_eq!(
            marker_of(
                v6,
                &[AddressAttribute::Protocol(
                    AddressProtocol::RouterAnnouncement
                )]
            ),
            None
        );
        // A fallback marker counts only for the family it is written for.
        assert_eq!(
            marker_of(v4, &[AddressAttribute::RoutePriority(IPV6_METRIC)]),
            None
        );
        assert_eq!(
            marker_of(v6, &[AddressAttribute::Label("lo:sharedip".into())]),
            None
        );
        assert_eq!(marker_of(v6, &[]), None);
    }
}
