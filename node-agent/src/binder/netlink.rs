//! Thin rtnetlink layer: look up an interface, list, add and delete its
//! addresses. Every request is bounded by [`NETLINK_TIMEOUT`] and every
//! failure carries the interface, the address and the operation.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{AddressMessageBuilder, Handle};
use tokio::task::JoinHandle;

use super::marker::{self, Marker};
use super::BindError;

/// Upper bound for one netlink request. The kernel answers in microseconds;
/// this only turns an unforeseen hang into an error instead of a stuck agent.
pub(crate) const NETLINK_TIMEOUT: Duration = Duration::from_secs(10);

/// What a netlink request was trying to do (error context).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetlinkOp {
    /// Resolving the interface name to its index.
    FindInterface,
    /// Dumping the interface's addresses.
    ListAddresses,
    /// Dumping every interface.
    ListInterfaces,
    /// Adding an address.
    AddAddress,
    /// Deleting an address.
    DeleteAddress,
}

impl fmt::Display for NetlinkOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NetlinkOp::FindInterface => "looking up interface",
            NetlinkOp::ListAddresses => "listing addresses",
            NetlinkOp::ListInterfaces => "listing interfaces",
            NetlinkOp::AddAddress => "adding address",
            NetlinkOp::DeleteAddress => "deleting address",
        })
    }
}

/// One address configured on an interface, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IfAddr {
    pub(crate) address: IpAddr,
    pub(crate) prefix_len: u8,
    /// The interface index.
    pub(crate) index: u32,
    /// The marker that says the agent added it, if it carries one.
    pub(crate) marker: Option<Marker>,
}

/// An rtnetlink connection; the connection task is aborted on drop.
pub(crate) struct Netlink {
    handle: Handle,
    connection: JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Netlink {
    /// Opens a NETLINK_ROUTE socket in the calling thread's network namespace
    /// and spawns its driver on the current tokio runtime.
    pub(crate) fn open() -> Result<Self, BindError> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|source| BindError::NetlinkSocket { source })?;
        Ok(Netlink {
            handle,
            connection: tokio::spawn(connection),
        })
    }

    /// The index of the interface called `interface`.
    pub(crate) async fn link_index(&self, interface: &str) -> Result<u32, BindError> {
        let request = self
            .handle
            .link()
            .get()
            .match_name(interface.to_owned())
            .execute();
        let result = bounded(NetlinkOp::FindInterface, interface, None, async move {
            futures::pin_mut!(request);
            request.try_next().await
        })
        .await;
        match result {
            Ok(Some(link)) => Ok(link.header.index),
            Ok(None) => Err(BindError::InterfaceNotFound {
                interface: interface.to_owned(),
            }),
            Err(BindError::Netlink { source, .. }) if errno(&source) == Some(libc::ENODEV) => {
                Err(BindError::InterfaceNotFound {
                    interface: interface.to_owned(),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// All unicast addresses configured on interface `index`.
    pub(crate) async fn addresses(
        &self,
        interface: &str,
        index: u32,
    ) -> Result<Vec<IfAddr>, BindError> {
        let request = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let messages: Vec<AddressMessage> = bounded(
            NetlinkOp::ListAddresses,
            interface,
            None,
            request.try_collect(),
        )
        .await?;
        Ok(messages.iter().filter_map(if_addr).collect())
    }

    /// Every address of every interface, and the interfaces' names by index.
    pub(crate) async fn all_addresses(
        &self,
    ) -> Result<(Vec<IfAddr>, BTreeMap<u32, String>), BindError> {
        let links: Vec<LinkMessage> = bounded(
            NetlinkOp::ListInterfaces,
            "*",
            None,
            self.handle.link().get().execute().try_collect(),
        )
        .await?;
        let names = links
            .iter()
            .filter_map(|l| {
                l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some((l.header.index, n.clone())),
                    _ => None,
                })
            })
            .collect();
        let messages: Vec<AddressMessage> = bounded(
            NetlinkOp::ListAddresses,
            "*",
            None,
            self.handle.address().get().execute().try_collect(),
        )
        .await?;
        Ok((messages.iter().filter_map(if_addr).collect(), names))
    }

    /// Adds `address/prefix_len` to interface `index`, with `marks` (see [`marker`]). IPv6
    /// addresses are added with NODAD: the shared address lives on several nodes by design
    /// and must be usable immediately, not "tentative" for a DAD round.
    pub(crate) async fn add(
        &self,
        interface: &str,
        index: u32,
        address: IpAddr,
        prefix_len: u8,
        marks: Vec<AddressAttribute>,
    ) -> Result<(), BindError> {
        let mut request = self.handle.address().add(index, address, prefix_len);
        if address.is_ipv6() {
            request.message_mut().header.flags |= AddressHeaderFlags::Nodad;
        }
        // The builder may have set the label already (to the interface name); ours replaces it.
        if marks
            .iter()
            .any(|m| matches!(m, AddressAttribute::Label(_)))
        {
            request
                .message_mut()
                .attributes
                .retain(|a| !matches!(a, AddressAttribute::Label(_)));
        }
        request.message_mut().attributes.extend(marks);
        bounded(
            NetlinkOp::AddAddress,
            interface,
            Some((address, prefix_len)),
            request.execute(),
        )
        .await
    }

    /// Deletes `address/prefix_len` from interface `index`.
    pub(crate) async fn delete(
        &self,
        interface: &str,
        index: u32,
        address: IpAddr,
        prefix_len: u8,
    ) -> Result<(), BindError> {
        // A fresh message (not the kernel's dump entry) so only the address
        // and prefix length select what is deleted.
        let message = match address {
            IpAddr::V4(v4) => AddressMessageBuilder::<Ipv4Addr>::new()
                .index(index)
                .address(v4, prefix_len)
                .build(),
            IpAddr::V6(v6) => AddressMessageBuilder::<Ipv6Addr>::new()
                .index(index)
                .address(v6, prefix_len)
                .build(),
        };
        bounded(
            NetlinkOp::DeleteAddress,
            interface,
            Some((address, prefix_len)),
            self.handle.address().del(message).execute(),
        )
        .await
    }
}

/// The errno of a kernel NACK, positive (e.g. `libc::EEXIST`).
pub(crate) fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|c| c.get().abs()),
        _ => None,
    }
}

/// Runs one request with the timeout and error context.
async fn bounded<T>(
    operation: NetlinkOp,
    interface: &str,
    address: Option<(IpAddr, u8)>,
    request: impl Future<Output = Result<T, rtnetlink::Error>>,
) -> Result<T, BindError> {
    match tokio::time::timeout(NETLINK_TIMEOUT, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(BindError::Netlink {
            operation,
            interface: interface.to_owned(),
            address: address.map(Into::into),
            source,
        }),
        Err(_) => Err(BindError::NetlinkTimeout {
            operation,
            interface: interface.to_owned(),
            address: address.map(Into::into),
            timeout: NETLINK_TIMEOUT,
        }),
    }
}

/// The interface address of a dump entry: IFA_LOCAL when present (IPv4, and
/// point-to-point links where IFA_ADDRESS is the peer), else IFA_ADDRESS.
/// Entries without either (never seen in practice) are skipped.
fn if_addr(message: &AddressMessage) -> Option<IfAddr> {
    let mut local = None;
    let mut address = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    let address = local.or(address)?;
    Some(IfAddr {
        address,
        prefix_len: message.header.prefix_len,
        index: message.header.index,
        marker: marker::marker_of(address, &message.attributes),
    })
}

/// Address and prefix length shown in error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrWithLen(pub IpAddr, pub u8);

impl From<(IpAddr, u8)> for AddrWithLen {
    fn from((address, prefix_len): (IpAddr, u8)) -> Self {
        AddrWithLen(address, prefix_len)
    }
}

impl fmt::Display for AddrWithLen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.0, self.1)
    }
}
