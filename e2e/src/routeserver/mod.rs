//! Route servers configured like Linode's, for interop tests and the lab: one BIRD 2,
//! GoBGP (`gobgpd`) or FRR daemon per network namespace (four `protocol bgp` toward
//! the same node in one BIRD did not all come up; one daemon per namespace is also
//! what Linode runs).
//!
//! Each route server: AS 65000, eBGP multihop toward the nodes (AS 65001), passive
//! (Linode's route servers wait for the nodes) or active, IPv4 + IPv6 unicast over
//! the IPv6 session with extended next hop, a peer allow-list with per-peer allowed
//! prefixes (the lab derives it from the Linode stand-in's sharing state and updates
//! it with [`RouteServer::set_peers`]), local preference from the role community
//! (primary 65000:1 or 63949:1:1 → 200, secondary 65000:2 or 63949:1:2 → 100, other
//! → 50), and nothing exported back to the nodes.
//!
//! [`RouteServer::routes`] reads what the daemon received, with communities, large
//! communities, origin, next hop and local preference, via `birdc show route all`,
//! `gobgp global rib -j` or `vtysh -c 'show bgp … json'`; [`RouteServer::received`]
//! reads every route the nodes sent, also those the import policy rejected (a node
//! announcing an address that is not shared with its Linode is invisible in the RIB);
//! [`RouteServer::peers`] reads the sessions.

mod bird;
mod daemon;
mod frr;
mod gobgp;

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::str::FromStr;

use daemon::Daemon;

use crate::netns::{Netns, NetnsError};

/// Which BGP implementation plays the route server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// BIRD 2 (`bird`, `birdc`; Debian package `bird2`).
    Bird,
    /// GoBGP (`gobgpd`, `gobgp`; Debian package `gobgpd`).
    Gobgp,
    /// FRR (`zebra`, `bgpd`, `vtysh`; Debian package `frr`).
    Frr,
}

impl Flavor {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bird => "bird",
            Self::Gobgp => "gobgp",
            Self::Frr => "frr",
        }
    }

    /// Programs this flavour needs.
    pub fn programs(self) -> &'static [&'static str] {
        match self {
            Self::Bird => &["bird", "birdc"],
            Self::Gobgp => &["gobgpd", "gobgp"],
            Self::Frr => &["/usr/lib/frr/zebra", "/usr/lib/frr/bgpd", "vtysh"],
        }
    }

    /// The first missing program, if any (the test scripts install them).
    pub fn missing_program(self) -> Option<&'static str> {
        self.programs().iter().copied().find(|p| {
            if p.starts_with('/') {
                !std::path::Path::new(p).exists()
            } else {
                !std::env::var_os("PATH")
                    .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(p).is_file()))
            }
        })
    }
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An IPv4 or IPv6 prefix (`192.0.2.10/32`, `2001:db8:1:200::/56`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpPrefix {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub len: u8,
}

impl IpPrefix {
    /// Whether this is an IPv4 prefix.
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }
}

/// A prefix that does not parse.
#[derive(Debug, Clone, thiserror::Error)]
#[error("not a prefix: {0:?}")]
pub struct PrefixParseError(String);

impl FromStr for IpPrefix {
    type Err = PrefixParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PrefixParseError(s.to_owned());
        let (a, l) = s.trim().split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let len: u8 = l.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(bad());
        }
        Ok(IpPrefix { addr, len })
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// A standard community (RFC 1997).
pub type Community = (u16, u16);
/// A large community (RFC 8092).
pub type LargeCommunity = (u32, u32, u32);

/// A node the route server accepts a session from, and what it may announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The node's global IPv6 address (the session's remote end).
    pub address: Ipv6Addr,
    /// Prefixes accepted from this node (exact match); `None` accepts any prefix.
    /// On Linode: the addresses shared with the node's Linode.
    pub allowed: Option<Vec<IpPrefix>>,
}

impl Peer {
    /// A peer allowed to announce anything.
    pub fn any(address: Ipv6Addr) -> Self {
        Self {
            address,
            allowed: None,
        }
    }
}

/// Who opens the TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Wait for the nodes to connect (Linode).
    Passive,
    /// Also connect to the nodes.
    Active,
}

/// Route server configuration.
#[derive(Debug, Clone)]
pub struct RouteServerConfig {
    /// Implementation.
    pub flavor: Flavor,
    /// The route server's IPv6 address (already on an interface of its namespace).
    pub address: Ipv6Addr,
    /// Gateway toward the nodes; BIRD resolves next hops recursively through it
    /// (without an IGP route to the nodes' subnet BIRD marks routes unreachable).
    pub gateway: Ipv6Addr,
    /// BGP identifier.
    pub router_id: Ipv4Addr,
    /// Route server ASN (Linode: 65000).
    pub asn: u32,
    /// The nodes' ASN (Linode: 65001).
    pub peer_asn: u32,
    /// Passive or active.
    pub mode: Mode,
    /// Proposed hold time (s).
    pub hold_time: u16,
    /// Keepalive interval (s).
    pub keepalive: u16,
    /// Connect-retry / error-wait delay (s), short so tests recover fast.
    pub retry: u16,
    /// eBGP multihop TTL.
    pub multihop_ttl: u8,
    /// Communities of the primary role: local preference 200.
    pub primary: (Community, LargeCommunity),
    /// Communities of the secondary role: local preference 100.
    pub secondary: (Community, LargeCommunity),
    /// Allowed nodes.
    pub peers: Vec<Peer>,
}

impl RouteServerConfig {
    /// Linode's values: AS 65000, nodes AS 65001, passive, hold 9 s / keepalive 3 s,
    /// multihop 16, communities 65000:1 / 65000:2 and 63949:1:1 / 63949:1:2.
    pub fn linode(
        flavor: Flavor,
        address: Ipv6Addr,
        gateway: Ipv6Addr,
        router_id: Ipv4Addr,
        peers: Vec<Peer>,
    ) -> Self {
        Self {
            flavor,
            address,
            gateway,
            router_id,
            asn: 65000,
            peer_asn: 65001,
            mode: Mode::Passive,
            hold_time: 9,
            keepalive: 3,
            retry: 1,
            multihop_ttl: 16,
            primary: ((65000, 1), (63949, 1, 1)),
            secondary: ((65000, 2), (63949, 1, 2)),
            peers,
        }
    }
}

/// BGP ORIGIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// IGP (0).
    Igp,
    /// EGP (1).
    Egp,
    /// Incomplete (2), what Linode wants.
    Incomplete,
}

impl Origin {
    fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "igp" | "i" | "0" => Some(Self::Igp),
            "egp" | "e" | "1" => Some(Self::Egp),
            "incomplete" | "?" | "2" => Some(Self::Incomplete),
            _ => None,
        }
    }
}

/// A route as the route server holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedRoute {
    /// The prefix.
    pub prefix: IpPrefix,
    /// The node it came from (session remote address).
    pub from: IpAddr,
    /// BGP next hop(s): the global one first, then a link-local one if present.
    pub next_hop: Vec<IpAddr>,
    /// ORIGIN.
    pub origin: Option<Origin>,
    /// AS_PATH, flattened.
    pub as_path: Vec<u32>,
    /// Standard communities.
    pub communities: Vec<Community>,
    /// Large communities.
    pub large_communities: Vec<LargeCommunity>,
    /// Local preference set by the import policy.
    pub local_pref: Option<u32>,
    /// The daemon's best path for the prefix.
    pub best: bool,
    /// The daemon considers the route usable (next hop resolved).
    pub valid: bool,
}

/// A route a node sent, whether or not the import policy accepted it (the Adj-RIB-In).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Announcement {
    /// The prefix.
    pub prefix: IpPrefix,
    /// The node it came from (session remote address).
    pub from: IpAddr,
    /// The import policy accepted it (it is in the RIB).
    pub accepted: bool,
}

/// A session as the route server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The node's address.
    pub address: IpAddr,
    /// Session Established.
    pub established: bool,
    /// The daemon's state name.
    pub state: String,
    /// The daemon's last error / reset reason (e.g. a received CEASE), if it tells.
    pub last_error: Option<String>,
}

/// Route server errors.
#[derive(Debug, thiserror::Error)]
pub enum RouteServerError {
    /// A command (daemon CLI, `ip`) failed.
    #[error(transparent)]
    Command(#[from] NetnsError),
    /// File or process I/O.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The daemon's output could not be understood.
    #[error("cannot parse {what} from {flavor}: {detail}")]
    Parse {
        /// Flavour.
        flavor: Flavor,
        /// What was read.
        what: &'static str,
        /// Details.
        detail: String,
    },
    /// The daemon did not come up.
    #[error("{flavor} did not start: {detail}")]
    Start {
        /// Flavour.
        flavor: Flavor,
        /// Details (log tail).
        detail: String,
    },
    /// The daemon is not running (stopped or crashed).
    #[error("{0} is not running")]
    NotRunning(Flavor),
}

impl RouteServerError {
    fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    fn parse(flavor: Flavor, what: &'static str, detail: impl fmt::Display) -> Self {
        Self::Parse {
            flavor,
            what,
            detail: detail.to_string(),
        }
    }
}

/// A running route server daemon inside a namespace.
///
/// Holds the namespace's *name*: the caller keeps the [`Netns`] alive at least as
/// long as the route server. Dropping it kills the daemon(s) and removes its files.
#[derive(Debug)]
pub struct RouteServer {
    config: RouteServerConfig,
    netns: String,
    dir: tempfile::TempDir,
    daemons: Vec<Daemon>,
}

impl RouteServer {
    /// Writes the configuration and starts the daemon in `netns`; returns once its
    /// control interface answers.
    pub fn start(netns: &Netns, config: RouteServerConfig) -> Result<Self, RouteServerError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("sharedip-rs-{}-", config.flavor))
            .tempdir()
            .map_err(|e| RouteServerError::io("creating the route server directory", e))?;
        let mut rs = RouteServer {
            config,
            netns: netns.name().to_owned(),
            dir,
            daemons: Vec::new(),
        };
        rs.launch()?;
        Ok(rs)
    }

    /// The configuration in force.
    pub fn config(&self) -> &RouteServerConfig {
        &self.config
    }

    /// The namespace name.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Its working directory (configuration, sockets, logs).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn launch(&mut self) -> Result<(), RouteServerError> {
        self.daemons = match self.config.flavor {
            Flavor::Bird => bird::start(self)?,
            Flavor::Gobgp => gobgp::start(self)?,
            Flavor::Frr => frr::start(self)?,
        };
        Ok(())
    }

    /// Replaces the peer allow-list (and allowed prefixes) and applies it to the
    /// running daemon: sessions of removed peers go down, routes no longer allowed
    /// are dropped, routes newly allowed are (re-)imported.
    pub fn set_peers(&mut self, peers: Vec<Peer>) -> Result<(), RouteServerError> {
        let old = std::mem::replace(&mut self.config.peers, peers);
        if self.daemons.is_empty() {
            return Ok(());
        }
        match self.config.flavor {
            Flavor::Bird => bird::reconfigure(self),
            Flavor::Gobgp => gobgp::reconfigure(self),
            Flavor::Frr => frr::reconfigure(self, &old),
        }
    }

    /// Routes received from the nodes, as the daemon holds them (after the import
    /// policy: rejected routes are absent).
    pub fn routes(&self) -> Result<Vec<ReceivedRoute>, RouteServerError> {
        self.ensure_running()?;
        match self.config.flavor {
            Flavor::Bird => bird::routes(self),
            Flavor::Gobgp => gobgp::routes(self),
            Flavor::Frr => frr::routes(self),
        }
    }

    /// Every route the nodes sent, accepted or rejected by the import policy.
    pub fn received(&self) -> Result<Vec<Announcement>, RouteServerError> {
        self.ensure_running()?;
        let heard = match self.config.flavor {
            Flavor::Bird => bird::adj_rib_in(self)?,
            Flavor::Gobgp => gobgp::adj_rib_in(self)?,
            Flavor::Frr => frr::adj_rib_in(self)?,
        };
        // Accepted is what reached the RIB; read after the Adj-RIB-In so a route that
        // arrived in between is listed as accepted rather than missed.
        let accepted: BTreeSet<(IpPrefix, IpAddr)> = self
            .routes()?
            .into_iter()
            .map(|r| (r.prefix, r.from))
            .collect();
        let all: BTreeSet<(IpPrefix, IpAddr)> = heard.into_iter().chain(accepted.clone()).collect();
        Ok(all
            .into_iter()
            .map(|(prefix, from)| Announcement {
                prefix,
                from,
                accepted: accepted.contains(&(prefix, from)),
            })
            .collect())
    }

    /// The best route for `prefix`, if any.
    pub fn best_route(&self, prefix: IpPrefix) -> Result<Option<ReceivedRoute>, RouteServerError> {
        Ok(self
            .routes()?
            .into_iter()
            .find(|r| r.prefix == prefix && r.best))
    }

    /// Sessions toward the configured peers.
    pub fn peers(&self) -> Result<Vec<PeerStatus>, RouteServerError> {
        self.ensure_running()?;
        match self.config.flavor {
            Flavor::Bird => bird::peers(self),
            Flavor::Gobgp => gobgp::peers(self),
            Flavor::Frr => frr::peers(self),
        }
    }

    /// Withdrawals the route server received from the node `peer` on the current session
    /// (BIRD's import statistics, summed over the address families); `None` for the flavours
    /// whose state does not count them.
    pub fn withdrawals_received(&self, peer: Ipv6Addr) -> Result<Option<u64>, RouteServerError> {
        self.ensure_running()?;
        match self.config.flavor {
            Flavor::Bird => bird::withdrawals_received(self, peer).map(Some),
            Flavor::Gobgp | Flavor::Frr => Ok(None),
        }
    }

    /// Stops the daemon(s) (SIGTERM, then SIGKILL after a bound).
    pub fn stop(&mut self) {
        for d in self.daemons.drain(..).rev() {
            d.stop();
        }
    }

    /// Stops and starts again with the same configuration (sessions drop and must
    /// come back).
    pub fn restart(&mut self) -> Result<(), RouteServerError> {
        self.stop();
        self.launch()
    }

    /// Freezes the daemon (SIGSTOP): its sessions go silent while TCP stays up.
    pub fn pause(&self) {
        for d in &self.daemons {
            d.signal(libc::SIGSTOP);
        }
    }

    /// Resumes a paused daemon (SIGCONT).
    pub fn resume(&self) {
        for d in &self.daemons {
            d.signal(libc::SIGCONT);
        }
    }

    /// Whether the daemon(s) still run.
    pub fn is_running(&mut self) -> bool {
        !self.daemons.is_empty() && self.daemons.iter_mut().all(Daemon::is_running)
    }

    /// The daemons' logs (for failure messages).
    pub fn logs(&self) -> String {
        self.daemons
            .iter()
            .map(|d| format!("--- {} ---\n{}", d.name(), d.log_tail(8000)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn ensure_running(&self) -> Result<(), RouteServerError> {
        if self.daemons.is_empty() {
            Err(RouteServerError::NotRunning(self.config.flavor))
        } else {
            Ok(())
        }
    }

    /// Runs a program inside the namespace; returns stdout.
    fn exec(&self, program: &str, args: &[&str]) -> Result<String, RouteServerError> {
        let mut full = vec!["netns", "exec", self.netns.as_str(), program];
        full.extend_from_slice(args);
        Ok(crate::netns::run("ip", &full)?)
    }

    fn write(&self, name: &str, contents: &str) -> Result<PathBuf, RouteServerError> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents)
            .map_err(|e| RouteServerError::io(format!("writing {}", path.display()), e))?;
        Ok(path)
    }
}

impl Drop for RouteServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `probe` every 100 ms until it returns `Some` or `bound` passes.
fn poll<T>(bound: std::time::Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + bound;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Splits the allowed prefixes of a peer by family; `None` means "any".
fn split_families(allowed: &Option<Vec<IpPrefix>>) -> Option<(Vec<IpPrefix>, Vec<IpPrefix>)> {
    allowed
        .as_ref()
        .map(|list| list.iter().partition(|p| p.is_ipv4()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_and_print() {
        let p: IpPrefix = "2001:db8:1:200::/56".parse().unwrap();
        assert_eq!(p.len, 56);
        assert_eq!(p.to_string(), "2001:db8:1:200::/56");
        assert!("192.0.2.10/33".parse::<IpPrefix>().is_err());
        assert!("192.0.2.10".parse::<IpPrefix>().is_err());
    }

    #[test]
    fn origins_parse() {
        assert_eq!(Origin::parse("Incomplete"), Some(Origin::Incomplete));
        assert_eq!(Origin::parse("igp"), Some(Origin::Igp));
        assert_eq!(Origin::parse("x"), None);
    }
}
