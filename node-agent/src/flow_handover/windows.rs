//! A node's flow handover windows: what one node installs for them, kept consistent as
//! windows open and close, and removed on every way out.
//!
//! A window is keyed by its SharedIP and has one side here:
//! - [`Side::Forward`]: this node takes the traffic of the address over; packets of flows it
//!   does not serve go through the tunnel to the peer (its own flows are seeded from its
//!   sockets and conntrack entries as the window opens, [`own_flows`]).
//! - [`Side::Receive`]: this node held the address; it answers what the peer forwards.
//!
//! What the windows share is installed once per node and follows them: one tunnel per peer
//! (made with the first window with that peer, removed with the last) with the counter of
//! the peer's self-test probes ([`Windows::heard`]), the receiver's rules per tunnel, and
//! the tunnel port's guard, which admits exactly the peers of the open windows (one table:
//! a guard per window would drop the other windows' peers). The MSS clamp is not a window's:
//! it covers every address this node may hold while flow handover is on
//! ([`Windows::clamp`]).
//!
//! Everything carries [`TABLE_PREFIX`] or the tunnel's prefix, so [`remove_leftovers`] finds
//! what a killed agent left, whatever its windows were.
//!
//! The nf_tables calls are synchronous netlink exchanges, each bounded, made in the calling
//! thread's network namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;
use std::time::Duration;

use rtnetlink::Handle;

use super::own_flows::{own_flows, OwnFlowsError};
use super::ruleset::{self, Forwarder, Prefix, Receiver};
use super::tunnel::{self, mac_of, Tunnel, TunnelError};
use crate::nftables::{self, Family, NftError, Op, Table};

/// Prefix of every nf_tables table of flow handover.
pub const TABLE_PREFIX: &str = "sipfh";
const GUARD: &str = "sipfh-guard";
const CLAMP: &str = "sipfh-clamp";

/// How this node's windows are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// This node's own IPv6 address: the tunnels' local end.
    pub local: Ipv6Addr,
    /// The UDP port of the tunnels (the same on every node).
    pub port: u16,
    /// The device the shared addresses' traffic arrives on.
    pub uplink: String,
}

/// This node's side of a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    /// Take the traffic of `shared`, forwarding flows this node does not serve to `peer`,
    /// remembering the flows it accepts for `length` after their last SYN. `seed`: the
    /// flows its sockets and conntrack entries have are its own; false for a node that
    /// carries none of the address's traffic, whose entries can only be stale (a server's
    /// socket of a connection reset elsewhere, whose client port a new connection reuses).
    Forward {
        peer: Ipv6Addr,
        shared: Prefix,
        length: Duration,
        seed: bool,
    },
    /// Answer what `peer` forwards.
    Receive { peer: Ipv6Addr },
}

impl Side {
    pub fn peer(&self) -> Ipv6Addr {
        match self {
            Side::Forward { peer, .. } | Side::Receive { peer } => *peer,
        }
    }
}

/// Why a window could not be opened or closed.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    #[error("flow handover window {key}: tunnel to {peer}: {source}")]
    Tunnel {
        key: String,
        peer: Ipv6Addr,
        #[source]
        source: Box<TunnelError>,
    },
    #[error("flow handover window {key}: nf_tables: {source}")]
    Rules {
        key: String,
        #[source]
        source: NftError,
    },
    #[error("flow handover window {key}: the node's own flows: {source}")]
    OwnFlows {
        key: String,
        #[source]
        source: OwnFlowsError,
    },
    #[error("flow handover window {key} is open already")]
    AlreadyOpen { key: String },
}

/// What [`remove_leftovers`] found and removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leftovers {
    pub tables: Vec<String>,
    pub tunnels: Vec<String>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty() && self.tunnels.is_empty()
    }
}

/// Removes every table and tunnel of flow handover in this namespace (what an agent killed
/// during a window leaves): at start, before any window opens, and as the last step of a
/// clean exit.
pub async fn remove_leftovers(handle: &Handle) -> Result<Leftovers, WindowError> {
    let rules = |source| WindowError::Rules {
        key: "(leftovers)".into(),
        source,
    };
    let mut removed = Leftovers::default();
    for (family, name) in nftables::tables().map_err(rules)? {
        if name.starts_with(TABLE_PREFIX) {
            nftables::delete_table(family, &name).map_err(rules)?;
            removed.tables.push(format!("{} {name}", family.name()));
        }
    }
    removed.tunnels = tunnel::remove_all(handle)
        .await
        .map_err(|source| WindowError::Tunnel {
            key: "(leftovers)".into(),
            peer: Ipv6Addr::UNSPECIFIED,
            source: Box::new(source),
        })?;
    Ok(removed)
}

/// What the kernel counted for a forwarding window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Packets sent through the tunnel.
    pub packets: u64,
    /// Flows they belong to.
    pub flows: usize,
}

/// A tunnel in use, and by how many windows.
#[derive(Debug)]
struct InUse {
    tunnel: Tunnel,
    index: u32,
    windows: usize,
    /// Windows receiving through it (its receiver tables exist while this is non-zero).
    receiving: usize,
}

/// The open windows of this node and what they installed.
#[derive(Debug)]
pub struct Windows {
    settings: Settings,
    open: BTreeMap<String, Side>,
    tunnels: BTreeMap<Ipv6Addr, InUse>,
    /// The peers the installed guard admits (none: no guard table).
    guarded: BTreeSet<Ipv6Addr>,
    clamped: Vec<Prefix>,
}

impl Windows {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            open: BTreeMap::new(),
            tunnels: BTreeMap::new(),
            guarded: BTreeSet::new(),
            clamped: Vec::new(),
        }
    }

    /// How the windows are made.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The open windows.
    pub fn open_windows(&self) -> &BTreeMap<String, Side> {
        &self.open
    }

    /// Clamps the MSS of the SYN-ACKs of exactly `shared` (replacing the clamp of before).
    pub fn clamp(&mut self, shared: &[Prefix]) -> Result<(), WindowError> {
        let mut wanted = shared.to_vec();
        wanted.sort_by_key(|p| (p.address, p.len));
        wanted.dedup();
        if wanted == self.clamped {
            return Ok(());
        }
        let table = (!wanted.is_empty()).then(|| ruleset::clamp(CLAMP, &wanted));
        replace(Family::Inet, CLAMP, !self.clamped.is_empty(), table)?;
        self.clamped = wanted;
        Ok(())
    }

    /// Opens window `key` with `side`; on error nothing of it stays installed.
    pub async fn open(
        &mut self,
        handle: &Handle,
        key: &str,
        side: Side,
    ) -> Result<(), WindowError> {
        if self.open.contains_key(key) {
            return Err(WindowError::AlreadyOpen { key: key.into() });
        }
        let peer = side.peer();
        self.hold_tunnel(handle, key, peer).await?;
        self.open.insert(key.to_owned(), side.clone());
        let installed = match self.guard() {
            Ok(()) => self.install(handle, key, &side).await,
            Err(e) => Err(e),
        };
        if let Err(e) = installed {
            self.open.remove(key);
            if let Err(undo) = self.release(handle, key, &side).await {
                tracing::warn!(window = key, error = %undo, "undoing a failed window");
            }
            return Err(e);
        }
        Ok(())
    }

    /// What the kernel counted for open window `key`: for a forwarding window, the packets
    /// it sent through the tunnel and the flows they belong to (None: not open, or a
    /// receiving window, which counts nothing of its own).
    pub fn counts(&self, key: &str) -> Result<Option<Counts>, WindowError> {
        if !matches!(self.open.get(key), Some(Side::Forward { .. })) {
            return Ok(None);
        }
        let rules = |source| WindowError::Rules {
            key: key.into(),
            source,
        };
        let table = window_table(key);
        let packets = nftables::counters(Family::Netdev, &table)
            .map_err(rules)?
            .iter()
            .map(|c| c.packets)
            .sum();
        let flows = nftables::set_len(Family::Netdev, &table, ruleset::FORWARDED).map_err(rules)?;
        Ok(Some(Counts { packets, flows }))
    }

    /// Whether the tunnel to `peer` delivered one of the peer's self-test probes here since
    /// it was made (false: no tunnel to it).
    pub fn heard(&self, peer: Ipv6Addr) -> Result<bool, WindowError> {
        let Some(used) = self.tunnels.get(&peer) else {
            return Ok(false);
        };
        let counters =
            nftables::counters(Family::Netdev, &probe_table(&used.tunnel)).map_err(|source| {
                WindowError::Rules {
                    key: format!("(probes from {peer})"),
                    source,
                }
            })?;
        Ok(counters.iter().any(|c| c.packets > 0))
    }

    /// Sends a self-test probe through the tunnel to `peer`, if there is one.
    pub fn probe(&self, peer: Ipv6Addr) -> std::io::Result<()> {
        match self.tunnels.get(&peer) {
            Some(used) => used.tunnel.send_probe(),
            None => Ok(()),
        }
    }

    /// Closes window `key` (a window not open is closed already).
    pub async fn close(&mut self, handle: &Handle, key: &str) -> Result<(), WindowError> {
        let Some(side) = self.open.remove(key) else {
            return Ok(());
        };
        self.release(handle, key, &side).await
    }

    /// Closes every window and removes the clamp: a clean exit.
    pub async fn close_all(&mut self, handle: &Handle) -> Result<(), WindowError> {
        let keys: Vec<String> = self.open.keys().cloned().collect();
        let mut first_error = None;
        for key in keys {
            if let Err(e) = self.close(handle, &key).await {
                first_error.get_or_insert(e);
            }
        }
        if let Err(e) = self.clamp(&[]) {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    }

    fn tunnel_of(&self, peer: Ipv6Addr) -> Tunnel {
        Tunnel {
            local: self.settings.local,
            remote: peer,
            port: self.settings.port,
        }
    }

    async fn hold_tunnel(
        &mut self,
        handle: &Handle,
        key: &str,
        peer: Ipv6Addr,
    ) -> Result<(), WindowError> {
        if let Some(used) = self.tunnels.get_mut(&peer) {
            used.windows += 1;
            return Ok(());
        }
        let tunnel = self.tunnel_of(peer);
        let index = tunnel
            .create(handle)
            .await
            .map_err(|source| WindowError::Tunnel {
                key: key.into(),
                peer,
                source: Box::new(source),
            })?;
        let counter = ruleset::probe_counter(&probe_table(&tunnel), &tunnel.name());
        if let Err(source) = nftables::apply(&[Op::Add(counter)]) {
            if let Err(undo) = tunnel.remove(handle).await {
                tracing::warn!(window = key, error = %undo, "undoing a tunnel");
            }
            return Err(WindowError::Rules {
                key: key.into(),
                source,
            });
        }
        self.tunnels.insert(
            peer,
            InUse {
                tunnel,
                index,
                windows: 1,
                receiving: 0,
            },
        );
        Ok(())
    }

    /// Replaces the guard when the open windows' peers changed.
    fn guard(&mut self) -> Result<(), WindowError> {
        let peers: BTreeSet<Ipv6Addr> = self.open.values().map(Side::peer).collect();
        if peers == self.guarded {
            return Ok(());
        }
        let list: Vec<Ipv6Addr> = peers.iter().copied().collect();
        let table = (!list.is_empty()).then(|| ruleset::guard(GUARD, self.settings.port, &list));
        replace(Family::Inet, GUARD, !self.guarded.is_empty(), table)?;
        self.guarded = peers;
        Ok(())
    }

    async fn install(
        &mut self,
        handle: &Handle,
        key: &str,
        side: &Side,
    ) -> Result<(), WindowError> {
        let peer = side.peer();
        let Some(used) = self.tunnels.get_mut(&peer) else {
            return Ok(());
        };
        match side {
            Side::Forward {
                shared,
                length,
                seed,
                ..
            } => {
                let seed = if *seed {
                    own_flows(shared).map_err(|source| WindowError::OwnFlows {
                        key: key.into(),
                        source,
                    })?
                } else {
                    Vec::new()
                };
                tracing::info!(
                    window = key,
                    peer = %peer,
                    shared = %shared.address,
                    own_flows = seed.len(),
                    "flow handover: forwarding flows this node does not serve"
                );
                let table = ruleset::forwarder(&Forwarder {
                    table: window_table(key),
                    uplink: self.settings.uplink.clone(),
                    shared: *shared,
                    tunnel_ifindex: used.index,
                    tunnel_mac: mac_of(self.settings.local),
                    peer_mac: mac_of(peer),
                    seed,
                    flow_timeout: *length,
                });
                nftables::apply(&[Op::Add(table)]).map_err(|source| WindowError::Rules {
                    key: key.into(),
                    source,
                })
            }
            Side::Receive { .. } => {
                if used.receiving == 0 {
                    receive_through(handle, key, peer, used).await?;
                }
                used.receiving += 1;
                tracing::info!(
                    window = key,
                    peer = %peer,
                    "flow handover: answering flows forwarded by the peer"
                );
                Ok(())
            }
        }
    }

    /// Removes what window `key` (no longer in `open`) installed, and what only it used.
    async fn release(
        &mut self,
        handle: &Handle,
        key: &str,
        side: &Side,
    ) -> Result<(), WindowError> {
        let rules = |source| WindowError::Rules {
            key: key.into(),
            source,
        };
        let peer = side.peer();
        let mut first_error = None;
        match side {
            Side::Forward { .. } => {
                if let Err(e) = nftables::delete_table(Family::Netdev, &window_table(key)) {
                    first_error.get_or_insert(rules(e));
                }
            }
            Side::Receive { .. } => {
                if let Some(used) = self.tunnels.get_mut(&peer) {
                    used.receiving = used.receiving.saturating_sub(1);
                    if used.receiving == 0 {
                        let name = used.tunnel.name();
                        for family in [Family::Netdev, Family::Inet] {
                            if let Err(e) = nftables::delete_table(family, &name) {
                                first_error.get_or_insert(rules(e));
                            }
                        }
                        let mark = used.tunnel.mark();
                        if let Err(source) = tunnel::unroute_marked(handle, Some(mark)).await {
                            first_error.get_or_insert(WindowError::Tunnel {
                                key: key.into(),
                                peer,
                                source: Box::new(source),
                            });
                        }
                    }
                }
            }
        }
        if let Err(e) = self.guard() {
            first_error.get_or_insert(e);
        }
        let last = self.tunnels.get_mut(&peer).is_some_and(|used| {
            used.windows = used.windows.saturating_sub(1);
            used.windows == 0
        });
        if last {
            if let Some(used) = self.tunnels.remove(&peer) {
                let counter = probe_table(&used.tunnel);
                if let Err(e) = nftables::delete_table(Family::Netdev, &counter) {
                    first_error.get_or_insert(rules(e));
                }
                if let Err(source) = used.tunnel.remove(handle).await {
                    first_error.get_or_insert(WindowError::Tunnel {
                        key: key.into(),
                        peer,
                        source: Box::new(source),
                    });
                }
            }
        }
        tracing::info!(window = key, peer = %peer, "flow handover: window closed");
        first_error.map_or(Ok(()), Err)
    }
}

/// Installs the receiver's side of tunnel `used`: its reverse path and its tables.
async fn receive_through(
    handle: &Handle,
    key: &str,
    peer: Ipv6Addr,
    used: &InUse,
) -> Result<(), WindowError> {
    let name = used.tunnel.name();
    let (mark, table) = (used.tunnel.mark(), used.tunnel.table());
    tunnel::route_marked(handle, &name, used.index, mark, table)
        .await
        .map_err(|source| WindowError::Tunnel {
            key: key.into(),
            peer,
            source: Box::new(source),
        })?;
    let [marking, check] = ruleset::receiver(&Receiver {
        table: name.clone(),
        tunnel: name,
        mark,
    });
    if let Err(source) = nftables::apply(&[Op::Add(marking), Op::Add(check)]) {
        if let Err(undo) = tunnel::unroute_marked(handle, Some(mark)).await {
            tracing::warn!(window = key, error = %undo, "undoing the reverse path");
        }
        return Err(WindowError::Rules {
            key: key.into(),
            source,
        });
    }
    Ok(())
}

/// The name of the table of `tunnel`'s probe counter (it carries the tunnel's name, and so
/// [`TABLE_PREFIX`]).
fn probe_table(tunnel: &Tunnel) -> String {
    format!("{}-probe", tunnel.name())
}

/// The name of window `key`'s own table: stable for the key, within nf_tables' 256 bytes
/// whatever the key's length.
fn window_table(key: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in key.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{TABLE_PREFIX}-w{h:08x}")
}

/// Puts `table` in place of the node-wide table `name` (there when `installed`), in one
/// transaction so no packet sees neither; `None` deletes it.
fn replace(
    family: Family,
    name: &str,
    installed: bool,
    table: Option<Table>,
) -> Result<(), WindowError> {
    replace_table(family, name, installed, table).map_err(|source| WindowError::Rules {
        key: format!("({name})"),
        source,
    })
}

fn replace_table(
    family: Family,
    name: &str,
    installed: bool,
    table: Option<Table>,
) -> Result<(), NftError> {
    let mut ops = Vec::new();
    if installed {
        ops.push(Op::Delete {
            family,
            name: name.to_owned(),
        });
    }
    ops.extend(table.map(Op::Add));
    if ops.is_empty() {
        return Ok(());
    }
    match nftables::apply(&ops) {
        // Someone else removed it: delete what may be left, then add.
        Err(NftError::Refused(e)) if installed && e.kind() == std::io::ErrorKind::NotFound => {
            nftables::delete_table(family, name)?;
            let rest: Vec<Op> = ops.into_iter().skip(1).collect();
            if rest.is_empty() {
                Ok(())
            } else {
                nftables::apply(&rest)
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_tables_are_named_per_key_and_carry_the_prefix() {
        let a = window_table("web");
        let b = window_table("api");
        assert_ne!(a, b);
        assert_eq!(a, window_table("web"));
        assert!(a.starts_with(TABLE_PREFIX) && a.len() == TABLE_PREFIX.len() + 10);
        assert!(window_table(&"x".repeat(300)).len() < 32);
        for name in [GUARD, CLAMP] {
            assert!(name.starts_with(TABLE_PREFIX));
        }
    }
}
