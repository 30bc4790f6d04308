//! Address binder: puts shared addresses on a local interface (`lo` by
//! default, or a dummy interface as in the CentOS guides / lelastic
//! `-allifs`) and takes them off again, over rtnetlink.
//!
//! What the orchestration needs of it is the [`AddressBinding`] trait, so
//! the orchestration is tested with an in-memory double (`crate::testing`)
//! and runs with the rtnetlink [`Binder`] for real; [`UserConfigured`] wraps
//! a binder for standalone discovery, where the user put the addresses
//! there. Failures cross the trait as the typed [`BindError`].
//!
//! Rules, in order of importance:
//! - **Never touch an address we did not add.** An address that is already
//!   on the interface and not ours (the node's own address, one configured by
//!   hand) is reported as [`BindOutcome::PresentNotOurs`] and is never
//!   removed.
//! - **Mark what we add in the kernel itself** ([`marker`]: the address
//!   protocol, plus an IPv4 label or an IPv6 metric that older kernels keep
//!   too), so what an earlier run added is recognised after a crash, in every
//!   mode, without trusting a file.
//! - **Also remember what we added** in a state file (JSON, replaced
//!   atomically): it is how addresses bound by agents older than the kernel
//!   markers are still recognised. [`Binder::reconcile_leftovers`] removes
//!   both kinds of leftovers.
//! - **Idempotent**: binding what we already bound, or unbinding what is not
//!   bound, is not an error.
//!
//! IPv4 addresses are bound as /32 and IPv6 addresses as /128 (use
//! [`host_prefix_len`]); the route announced over BGP is the /64 or /56.
//!
//! Bind is write-ahead: the address is recorded in the state file *before*
//! it is added, so a crash in between leaves at worst a state entry without
//! an address (dropped at the next reconcile), never an address we forgot.
//! Unbind deletes first and forgets second for the same reason.
//!
//! One `Binder` per state file: the file is not locked against other
//! processes.

pub mod marker;
mod netlink;
mod state;

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use marker::{Marker, MarkerMode};
pub use netlink::{AddrWithLen, NetlinkOp};
use netlink::{IfAddr, Netlink};
use state::BoundState;
pub use state::StateFileError;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

/// Default interface the shared addresses are bound on.
pub const DEFAULT_INTERFACE: &str = "lo";
/// Default location of the state file.
pub const DEFAULT_STATE_FILE: &str = "/var/lib/sharedip/bound.json";

/// Where to bind and where to remember what was bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinderConfig {
    /// Interface the addresses are added to (`lo` by default).
    pub interface: String,
    /// JSON file recording what this binder added (e.g.
    /// `/var/lib/sharedip/bound.json`); its directory is created if missing.
    pub state_file: PathBuf,
    /// Which kernel markers the added addresses get.
    pub marker: MarkerMode,
}

impl Default for BinderConfig {
    fn default() -> Self {
        BinderConfig {
            interface: DEFAULT_INTERFACE.to_owned(),
            state_file: PathBuf::from(DEFAULT_STATE_FILE),
            marker: MarkerMode::default(),
        }
    }
}

/// An address on one of the node's interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddress {
    /// The interface's name.
    pub interface: String,
    /// The address.
    pub address: IpAddr,
    /// Its prefix length on the interface.
    pub prefix_len: u8,
    /// Added by this agent (now or by an earlier run): it carries our kernel
    /// marker, or the state file records it.
    pub ours: bool,
}

/// Result of [`Binder::bind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BindOutcome {
    /// We added the address now.
    Added,
    /// We had added it before and it is still there.
    AlreadyOurs,
    /// The interface already had the address and we did not add it (the
    /// node's own address, or one configured by hand): we neither add it nor
    /// ever remove it.
    PresentNotOurs,
}

impl fmt::Display for BindOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BindOutcome::Added => "added",
            BindOutcome::AlreadyOurs => "already ours",
            BindOutcome::PresentNotOurs => "present, not ours",
        })
    }
}

/// Errors of the binder.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The NETLINK_ROUTE socket could not be opened.
    #[error("cannot open a netlink route socket: {source}")]
    NetlinkSocket {
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The configured interface name cannot be a Linux interface name.
    #[error("invalid interface name {interface:?}: {reason}")]
    InvalidInterfaceName {
        /// The configured name.
        interface: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The interface does not exist (in this network namespace).
    #[error("interface {interface:?} does not exist")]
    InterfaceNotFound {
        /// The configured name.
        interface: String,
    },
    /// The address cannot be bound (unspecified, multicast, broadcast).
    #[error("cannot bind {address}: {reason}")]
    InvalidAddress {
        /// The address.
        address: IpAddr,
        /// Why not.
        reason: &'static str,
    },
    /// The prefix length does not fit the address family.
    #[error("invalid prefix length /{prefix_len} for {address} (expected 1..={max})")]
    InvalidPrefixLen {
        /// The address.
        address: IpAddr,
        /// The requested prefix length.
        prefix_len: u8,
        /// The largest valid prefix length for the family.
        max: u8,
    },
    /// The kernel (or the netlink connection) refused a request.
    #[error("{operation}{} on interface {interface:?} failed: {source}", for_addr(.address))]
    Netlink {
        /// What was attempted.
        operation: NetlinkOp,
        /// The interface.
        interface: String,
        /// The address concerned, if any.
        address: Option<AddrWithLen>,
        /// The netlink error (a kernel NACK carries the errno).
        #[source]
        source: rtnetlink::Error,
    },
    /// A netlink request got no answer in time.
    #[error("{operation}{} on interface {interface:?} timed out after {timeout:?}", for_addr(.address))]
    NetlinkTimeout {
        /// What was attempted.
        operation: NetlinkOp,
        /// The interface.
        interface: String,
        /// The address concerned, if any.
        address: Option<AddrWithLen>,
        /// The bound that expired.
        timeout: Duration,
    },
    /// The state file could not be read or written.
    #[error("state file {}: {source}", .path.display())]
    StateFile {
        /// The state file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: StateFileError,
    },
}

fn for_addr(address: &Option<AddrWithLen>) -> String {
    address.map(|a| format!(" {a}")).unwrap_or_default()
}

/// The prefix length a single address is bound with: 32 for IPv4, 128 for
/// IPv6.
pub fn host_prefix_len(address: IpAddr) -> u8 {
    match address {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// Who put an address on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BoundBy {
    /// The agent bound it, and removes it when it is no longer wanted.
    Agent,
    /// It was there already, configured by the user (or the system): the agent announces it
    /// but never removes it.
    User,
}

/// Puts shared addresses on the node and takes them off again.
///
/// Implementations are idempotent and never remove an address they did not add.
pub trait AddressBinding: Send + Sync {
    /// Binds `addr` (IPv4 as /32, IPv6 as /128), unless it is on the node already; says who
    /// put it there.
    fn bind(
        &self,
        addr: IpAddr,
        prefix_len: u8,
    ) -> impl Future<Output = Result<BoundBy, BindError>> + Send;
    /// Removes `addr` if this binder added it.
    fn unbind(&self, addr: IpAddr) -> impl Future<Output = Result<(), BindError>> + Send;
    /// Removes addresses added by an earlier run that are not in `keep`; returns them.
    fn reconcile_leftovers(
        &self,
        keep: &BTreeSet<IpAddr>,
    ) -> impl Future<Output = Result<Vec<IpAddr>, BindError>> + Send;
    /// Every address on every interface of the node, with whether the agent bound it.
    fn interface_addresses(
        &self,
    ) -> impl Future<Output = Result<Vec<InterfaceAddress>, BindError>> + Send;
}

impl AddressBinding for Binder {
    async fn bind(&self, addr: IpAddr, prefix_len: u8) -> Result<BoundBy, BindError> {
        let outcome = Binder::bind(self, addr, prefix_len).await?;
        debug!(%addr, ?outcome, "bound");
        Ok(match outcome {
            BindOutcome::Added | BindOutcome::AlreadyOurs => BoundBy::Agent,
            BindOutcome::PresentNotOurs => BoundBy::User,
        })
    }

    async fn unbind(&self, addr: IpAddr) -> Result<(), BindError> {
        Binder::unbind(self, addr).await
    }

    async fn reconcile_leftovers(&self, keep: &BTreeSet<IpAddr>) -> Result<Vec<IpAddr>, BindError> {
        Binder::reconcile_leftovers(self, keep).await
    }

    async fn interface_addresses(&self) -> Result<Vec<InterfaceAddress>, BindError> {
        Binder::interface_addresses(self).await
    }
}

/// For standalone mode without `--address` (lelastic's behaviour): the addresses are already
/// on the node, put there by the user, so nothing is bound or unbound. What an earlier run of
/// the agent bound (with `--address`, before a crash or a restart without it) is not the
/// user's: the inner binder removes all of it as leftovers, whatever `keep` says.
#[derive(Debug)]
pub struct UserConfigured<B>(pub B);

impl<B: AddressBinding> AddressBinding for UserConfigured<B> {
    async fn bind(&self, _addr: IpAddr, _prefix_len: u8) -> Result<BoundBy, BindError> {
        Ok(BoundBy::User)
    }

    async fn unbind(&self, _addr: IpAddr) -> Result<(), BindError> {
        Ok(())
    }

    async fn reconcile_leftovers(
        &self,
        _keep: &BTreeSet<IpAddr>,
    ) -> Result<Vec<IpAddr>, BindError> {
        self.0.reconcile_leftovers(&BTreeSet::new()).await
    }

    async fn interface_addresses(&self) -> Result<Vec<InterfaceAddress>, BindError> {
        self.0.interface_addresses().await
    }
}

/// Adds and removes shared addresses on one interface and remembers what it
/// added. Cheap to share (`Arc<Binder>`); operations are serialised.
pub struct Binder {
    interface: String,
    state_file: PathBuf,
    marker: MarkerMode,
    netlink: Netlink,
    state: Mutex<BoundState>,
}

impl fmt::Debug for Binder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Binder")
            .field("interface", &self.interface)
            .field("state_file", &self.state_file)
            .field("marker", &self.marker)
            .finish_non_exhaustive()
    }
}

impl Binder {
    /// Opens rtnetlink (in the calling thread's network namespace; needs a
    /// tokio runtime), checks that the interface exists and loads the state
    /// file. A missing state file is an empty state; a corrupt one is logged,
    /// moved aside to `<file>.corrupt` and treated as empty (the addresses
    /// it listed are then no longer known as ours and are left alone).
    pub async fn new(cfg: BinderConfig) -> Result<Binder, BindError> {
        let BinderConfig {
            interface,
            state_file,
            marker,
        } = cfg;
        state::validate_interface_name(&interface).map_err(|reason| {
            BindError::InvalidInterfaceName {
                interface: interface.clone(),
                reason,
            }
        })?;
        let netlink = Netlink::open()?;
        netlink.link_index(&interface).await?;

        let path = state_file.clone();
        let loaded = blocking(move || state::load(&path))
            .await
            .map_err(|source| BindError::StateFile {
                path: state_file.clone(),
                source,
            })?;
        if let Some(corrupt) = &loaded.corrupt {
            warn!(
                state_file = %state_file.display(),
                error = %corrupt.reason,
                moved_to = ?corrupt.moved_to,
                "binder state file is corrupt; starting with an empty state \
                 (addresses added before are no longer known as ours and will be left alone)"
            );
        }
        for entry in &loaded.dropped {
            warn!(state_file = %state_file.display(), entry = %entry, "ignoring invalid binder state entry");
        }
        debug!(
            interface = %interface,
            state_file = %state_file.display(),
            entries = loaded.state.len(),
            "address binder ready"
        );
        Ok(Binder {
            interface,
            state_file,
            marker,
            netlink,
            state: Mutex::new(loaded.state),
        })
    }

    /// The interface this binder adds addresses to.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The state file.
    pub fn state_file(&self) -> &Path {
        &self.state_file
    }

    /// Puts `addr/prefix_len` on the interface unless it is already there.
    /// `prefix_len` is the length on the interface, normally
    /// [`host_prefix_len`] (32 / 128), not the announced /64 or /56.
    /// Idempotent. An address already present that we did not add is
    /// [`BindOutcome::PresentNotOurs`] and stays untouched.
    pub async fn bind(&self, addr: IpAddr, prefix_len: u8) -> Result<BindOutcome, BindError> {
        validate_address(addr, prefix_len)?;
        let mut state = self.state.lock().await;
        let iface = self.interface.as_str();
        let index = self.netlink.link_index(iface).await?;
        let present = find(&self.netlink.addresses(iface, index).await?, addr);
        let recorded = state.get(iface, addr);

        match present {
            Some(kernel) if kernel.marker.is_some() || recorded == Some(kernel.prefix_len) => {
                if kernel.prefix_len != prefix_len {
                    warn!(
                        interface = %iface, address = %addr, bound_prefix_len = kernel.prefix_len,
                        requested_prefix_len = prefix_len,
                        "address already bound by us with another prefix length; keeping it"
                    );
                }
                if recorded != Some(kernel.prefix_len) {
                    // Marked in the kernel but missing from the file (lost, or written by
                    // another path): record it again.
                    state.insert(iface, addr, kernel.prefix_len);
                    self.persist(&state).await?;
                }
                debug!(interface = %iface, address = %addr, marker = ?kernel.marker, "address already bound by us");
                Ok(BindOutcome::AlreadyOurs)
            }
            Some(kernel) => {
                if let Some(ours) = recorded {
                    // Someone replaced our address with their own (other
                    // prefix length, no marker): it is theirs now.
                    warn!(
                        interface = %iface, address = %addr, recorded_prefix_len = ours,
                        present_prefix_len = kernel.prefix_len,
                        "address we had added was replaced by another one; forgetting it"
                    );
                    state.remove(iface, addr);
                    self.persist(&state).await?;
                }
                info!(
                    interface = %iface, address = %addr, present_prefix_len = kernel.prefix_len,
                    "address already present and not added by us; leaving it alone"
                );
                Ok(BindOutcome::PresentNotOurs)
            }
            None => self.add(&mut state, index, addr, prefix_len).await,
        }
    }

    /// Adds an address that is not on the interface, write-ahead (see the
    /// module docs): recorded first, forgotten again if the kernel refuses it.
    async fn add(
        &self,
        state: &mut BoundState,
        index: u32,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<BindOutcome, BindError> {
        let iface = self.interface.as_str();
        let previous = state.get(iface, addr);
        state.insert(iface, addr, prefix_len);
        if let Err(e) = self.persist(state).await {
            restore(state, iface, addr, previous);
            return Err(e);
        }
        let marks = marker::attributes(self.marker, iface, addr);
        match self
            .netlink
            .add(iface, index, addr, prefix_len, marks)
            .await
        {
            Ok(()) => {
                info!(interface = %iface, address = %addr, prefix_len, marker = ?self.marker, "bound shared address");
                Ok(BindOutcome::Added)
            }
            Err(e) => {
                state.remove(iface, addr);
                if let Err(persist) = self.persist(state).await {
                    warn!(error = %persist, "could not forget an address that failed to bind");
                }
                match &e {
                    BindError::Netlink { source, .. }
                        if netlink::errno(source) == Some(libc::EEXIST) =>
                    {
                        // Added by someone else between our listing and our add: theirs.
                        info!(
                            interface = %iface, address = %addr,
                            "address appeared concurrently and was not added by us; leaving it alone"
                        );
                        Ok(BindOutcome::PresentNotOurs)
                    }
                    _ => Err(e),
                }
            }
        }
    }

    /// Removes `addr` from the interface if we added it (kernel marker, or
    /// recorded with the same prefix length); otherwise does nothing.
    /// Idempotent.
    pub async fn unbind(&self, addr: IpAddr) -> Result<(), BindError> {
        let mut state = self.state.lock().await;
        let iface = self.interface.as_str();
        let recorded = state.get(iface, addr);
        match self.netlink.link_index(iface).await {
            Ok(index) => {
                let present = find(&self.netlink.addresses(iface, index).await?, addr);
                match present {
                    Some(kernel)
                        if kernel.marker.is_some() || recorded == Some(kernel.prefix_len) =>
                    {
                        self.delete(iface, index, addr, kernel.prefix_len).await?;
                        info!(interface = %iface, address = %addr, prefix_len = kernel.prefix_len, "unbound shared address");
                    }
                    Some(kernel) if recorded.is_some() => warn!(
                        interface = %iface, address = %addr, recorded_prefix_len = ?recorded,
                        present_prefix_len = kernel.prefix_len,
                        "address we had added was replaced by another one; leaving it alone"
                    ),
                    Some(_) => {
                        debug!(interface = %iface, address = %addr, "not bound by us; nothing to unbind")
                    }
                    None => debug!(
                        interface = %iface, address = %addr,
                        "address is not on the interface; nothing to unbind"
                    ),
                }
            }
            // The interface went away and took its addresses with it.
            Err(BindError::InterfaceNotFound { .. }) => warn!(
                interface = %iface, address = %addr,
                "interface is gone; forgetting the address bound on it"
            ),
            Err(e) => return Err(e),
        }
        if state.remove(iface, addr) {
            self.persist(&state).await?;
        }
        Ok(())
    }

    /// Every address on every interface of the node, with whether we added
    /// it (kernel marker or state file).
    pub async fn interface_addresses(&self) -> Result<Vec<InterfaceAddress>, BindError> {
        let state = self.state.lock().await;
        let (all, names) = self.netlink.all_addresses().await?;
        Ok(all
            .into_iter()
            .filter_map(|a| {
                let interface = names.get(&a.index)?.clone();
                let ours =
                    a.marker.is_some() || state.get(&interface, a.address) == Some(a.prefix_len);
                Some(InterfaceAddress {
                    interface,
                    address: a.address,
                    prefix_len: a.prefix_len,
                    ours,
                })
            })
            .collect())
    }

    /// The addresses we added on our interface (as far as the state knows).
    pub async fn bound(&self) -> BTreeSet<IpAddr> {
        self.state.lock().await.addresses_on(&self.interface)
    }

    /// Removes every address we added earlier that is not in `keep` and
    /// returns what was removed. Meant for start-up, before binding what is
    /// wanted now, and for the discovery mode (with nothing to keep). Two
    /// sources say what is ours: the kernel markers, on every interface (an
    /// earlier run may have used another `--interface`), and the state file
    /// (addresses bound by agents older than the markers). Only addresses on
    /// our own interface can be kept. Entries whose address is no longer on
    /// its interface are dropped from the state.
    pub async fn reconcile_leftovers(
        &self,
        keep: &BTreeSet<IpAddr>,
    ) -> Result<Vec<IpAddr>, BindError> {
        let mut state = self.state.lock().await;
        let before = state.clone();
        let mut removed = Vec::new();
        let mut result = self.reconcile_marked(keep, &mut removed).await;
        if result.is_ok() {
            result = self.reconcile_locked(&mut state, keep, &mut removed).await;
        }
        // Persist whatever was done, also when a later step failed.
        if *state != before {
            self.persist(&state).await?;
        }
        result.map(|()| removed)
    }

    /// Removes the addresses that carry our kernel marker and are not kept.
    async fn reconcile_marked(
        &self,
        keep: &BTreeSet<IpAddr>,
        removed: &mut Vec<IpAddr>,
    ) -> Result<(), BindError> {
        let (all, names) = self.netlink.all_addresses().await?;
        for a in all {
            let Some(marker) = a.marker else { continue };
            let Some(iface) = names.get(&a.index) else {
                continue;
            };
            if *iface == self.interface && keep.contains(&a.address) {
                continue;
            }
            self.delete(iface, a.index, a.address, a.prefix_len).await?;
            info!(
                interface = %iface, address = %a.address, prefix_len = a.prefix_len, %marker,
                "removed leftover shared address"
            );
            removed.push(a.address);
        }
        Ok(())
    }

    /// Removes the state file's leftovers (see [`Binder::reconcile_leftovers`]).
    async fn reconcile_locked(
        &self,
        state: &mut BoundState,
        keep: &BTreeSet<IpAddr>,
        removed: &mut Vec<IpAddr>,
    ) -> Result<(), BindError> {
        for (iface, entries) in state.by_interface() {
            let index = match self.netlink.link_index(&iface).await {
                Ok(index) => index,
                Err(BindError::InterfaceNotFound { .. }) => {
                    warn!(
                        interface = %iface, entries = entries.len(),
                        "interface of recorded addresses is gone; forgetting them"
                    );
                    for (addr, _) in entries {
                        state.remove(&iface, addr);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            let present = self.netlink.addresses(&iface, index).await?;
            for (addr, ours) in entries {
                let wanted = iface == self.interface && keep.contains(&addr);
                match find(&present, addr) {
                    // Marked and kept (marked ones not kept are gone already).
                    Some(kernel) if kernel.marker.is_some() => continue,
                    Some(kernel) if kernel.prefix_len == ours => {
                        if wanted {
                            continue;
                        }
                        self.delete(&iface, index, addr, ours).await?;
                        info!(
                            interface = %iface, address = %addr, prefix_len = ours,
                            "removed leftover shared address"
                        );
                        removed.push(addr);
                    }
                    Some(kernel) => warn!(
                        interface = %iface, address = %addr, recorded_prefix_len = ours,
                        present_prefix_len = kernel.prefix_len,
                        "address we had added was replaced by another one; forgetting it"
                    ),
                    None => debug!(
                        interface = %iface, address = %addr,
                        "recorded address is no longer on the interface; forgetting it"
                    ),
                }
                state.remove(&iface, addr);
            }
        }
        Ok(())
    }

    /// Deletes an address; one that vanished meanwhile counts as deleted.
    async fn delete(
        &self,
        iface: &str,
        index: u32,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), BindError> {
        match self.netlink.delete(iface, index, addr, prefix_len).await {
            Err(BindError::Netlink { source, .. })
                if matches!(
                    netlink::errno(&source),
                    Some(libc::EADDRNOTAVAIL) | Some(libc::ENOENT)
                ) =>
            {
                debug!(interface = %iface, address = %addr, "address vanished before we deleted it");
                Ok(())
            }
            other => other,
        }
    }

    async fn persist(&self, state: &BoundState) -> Result<(), BindError> {
        let path = self.state_file.clone();
        let snapshot = state.clone();
        blocking(move || state::store(&path, &snapshot))
            .await
            .map_err(|source| BindError::StateFile {
                path: self.state_file.clone(),
                source,
            })
    }
}

fn restore(state: &mut BoundState, iface: &str, addr: IpAddr, previous: Option<u8>) {
    match previous {
        Some(prefix_len) => state.insert(iface, addr, prefix_len),
        None => {
            state.remove(iface, addr);
        }
    }
}

fn find(addresses: &[IfAddr], addr: IpAddr) -> Option<IfAddr> {
    addresses.iter().copied().find(|a| a.address == addr)
}

fn validate_address(address: IpAddr, prefix_len: u8) -> Result<(), BindError> {
    let reason = match address {
        _ if address.is_unspecified() => Some("unspecified address"),
        _ if address.is_multicast() => Some("multicast address"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("broadcast address"),
        _ => None,
    };
    if let Some(reason) = reason {
        return Err(BindError::InvalidAddress { address, reason });
    }
    let max = host_prefix_len(address);
    if prefix_len == 0 || prefix_len > max {
        return Err(BindError::InvalidPrefixLen {
            address,
            prefix_len,
            max,
        });
    }
    Ok(())
}

/// Runs blocking file I/O off the async worker threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StateFileError> + Send + 'static,
) -> Result<T, StateFileError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|join| Err(StateFileError::Task(join.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn host_prefix_lengths() {
        assert_eq!(host_prefix_len(ip("192.0.2.10")), 32);
        assert_eq!(host_prefix_len(ip("2001:db8:1:2::1")), 128);
    }

    #[test]
    fn addresses_and_prefix_lengths_are_validated() {
        assert!(validate_address(ip("192.0.2.10"), 32).is_ok());
        assert!(validate_address(ip("2001:db8:1:2::1"), 128).is_ok());
        assert!(validate_address(ip("2001:db8:1:2::1"), 64).is_ok());
        for (addr, len) in [
            ("192.0.2.10", 33),
            ("192.0.2.10", 0),
            ("2001:db8::1", 129),
            ("0.0.0.0", 32),
            ("::", 128),
            ("224.0.0.1", 32),
            ("ff02::1", 128),
            ("255.255.255.255", 32),
        ] {
            let err = validate_address(ip(addr), len).unwrap_err();
            assert!(err.to_string().contains(addr), "{err}");
        }
    }

    #[test]
    fn error_messages_carry_context() {
        let err = BindError::NetlinkTimeout {
            operation: NetlinkOp::AddAddress,
            interface: "lo".into(),
            address: Some(AddrWithLen(ip("192.0.2.10"), 32)),
            timeout: Duration::from_secs(10),
        };
        assert_eq!(
            err.to_string(),
            "adding address 192.0.2.10/32 on interface \"lo\" timed out after 10s"
        );
        let err = BindError::NetlinkTimeout {
            operation: NetlinkOp::ListAddresses,
            interface: "dummy0".into(),
            address: None,
            timeout: Duration::from_secs(10),
        };
        assert_eq!(
            err.to_string(),
            "listing addresses on interface \"dummy0\" timed out after 10s"
        );
    }

    #[test]
    fn binder_futures_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        fn check(binder: &Binder) {
            let keep = BTreeSet::new();
            assert_send(&binder.bind(ip("192.0.2.10"), 32));
            assert_send(&binder.unbind(ip("192.0.2.10")));
            assert_send(&binder.bound());
            assert_send(&binder.reconcile_leftovers(&keep));
        }
        fn assert_sync<T: Send + Sync>() {}
        assert_sync::<Binder>();
        let _ = check;
    }
}
