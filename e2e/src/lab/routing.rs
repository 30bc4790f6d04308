//! The lab's Linode network: four route servers whose import filters follow the Linode
//! stand-in's sharing state, and a router whose kernel FIB follows their best routes.
//!
//! - **Allow-lists.** Every node is a peer of every route server, but a route server accepts
//!   a prefix from a node only when the stand-in says the node's Linode owns the address or
//!   has it shared. A thread watches [`crate::standin::StandInHandle::subscribe`] and
//!   re-applies the lists on every change, so a share call the operator forgot shows up as
//!   traffic that does not fail over.
//! - **Share-gated sessions and propagation** (the model of [`super::admission`]): as on
//!   Linode, a node's connection attempts are refused (silently by default) until its Linode
//!   holds an address, and each route server takes up a share change — addition or removal,
//!   allow-list and admission alike — only after its own delay (by default 300 ms ± 50 %,
//!   [`super::admission::Propagation`]), in the order the changes were made. So a scenario
//!   passes only if it survives moments where some route servers know a share and some do
//!   not. On Linode the delay is 10–20 s; the benchmark can run with that.
//! - **Forwarding.** A thread polls the four route servers' best routes every
//!   [`FIB_INTERVAL`], picks per prefix the node most route servers prefer, and keeps the
//!   router namespace's kernel routes (`proto bgp`) pointing at that node: an IPv4 /32 via
//!   the node's IPv6 address (RFC 8950-style next hop, as the route servers hold it), an IPv6
//!   range via the same. Prefixes no route server holds any more are deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use sharedip_process::sync::lock;
use tokio::sync::watch;

use super::admission::{self, Change, Gate, Pending, Propagation};
use super::topology::{route_server_address, Topology, NODES_BRIDGE, ROUTER_RS_SIDE};
use crate::netns::Netns;
use crate::routeserver::{
    Announcement, Flavor, IpPrefix, Peer, ReceivedRoute, RouteServer, RouteServerConfig,
    RouteServerError,
};
use crate::standin::{IpKind, LinodeId, SharingSnapshot};

/// How often the router re-reads the route servers' best routes.
pub const FIB_INTERVAL: Duration = Duration::from_millis(100);
/// How often the allow-list thread looks for a new sharing snapshot or a due change (the
/// resolution of the propagation delay).
const ALLOW_INTERVAL: Duration = Duration::from_millis(10);

/// What one route server has taken up of the sharing state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The stand-in's snapshot version.
    pub version: u64,
    /// The nodes it admits.
    pub admitted: BTreeSet<Ipv6Addr>,
}

/// A node as the route servers know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodePeer {
    /// The node's Linode.
    pub linode: LinodeId,
    /// The node's global IPv6 address (its BGP source and next hop).
    pub address: Ipv6Addr,
}

/// The allow-list of every node for one sharing snapshot: the prefixes whose address the
/// node's Linode owns or has shared with it (IPv4 as /32, IPv6 ranges with their length).
pub fn allow_lists(snapshot: &SharingSnapshot, nodes: &[NodePeer]) -> Vec<Peer> {
    nodes
        .iter()
        .map(|n| {
            let allowed = snapshot
                .ips
                .iter()
                .filter(|(ip, _)| snapshot.holders(ip).contains(&n.linode))
                .filter_map(|(ip, s)| {
                    let addr: IpAddr = ip.parse().ok()?;
                    let len = match s.kind {
                        IpKind::Ipv4 => 32,
                        IpKind::Ipv6Range => s.prefix,
                    };
                    Some(IpPrefix { addr, len })
                })
                .collect();
            Peer {
                address: n.address,
                allowed: Some(allowed),
            }
        })
        .collect()
}

/// Picks, per prefix, the node most route servers hold as best (ties: higher local
/// preference, then the lower address), from each route server's best routes.
pub fn elect(per_server: &[Vec<ReceivedRoute>]) -> BTreeMap<IpPrefix, Ipv6Addr> {
    // prefix → node → (votes, best local preference)
    let mut tally: BTreeMap<IpPrefix, BTreeMap<Ipv6Addr, (usize, u32)>> = BTreeMap::new();
    for routes in per_server {
        for r in routes.iter().filter(|r| r.best && r.valid) {
            let Some(node) = next_hop(r) else { continue };
            let e = tally
                .entry(r.prefix)
                .or_default()
                .entry(node)
                .or_insert((0, 0));
            e.0 += 1;
            e.1 = e.1.max(r.local_pref.unwrap_or(0));
        }
    }
    tally
        .into_iter()
        .filter_map(|(prefix, nodes)| {
            nodes
                .into_iter()
                .max_by(|(a, (va, pa)), (b, (vb, pb))| va.cmp(vb).then(pa.cmp(pb)).then(b.cmp(a)))
                .map(|(node, _)| (prefix, node))
        })
        .collect()
}

/// The node a route leads to: its global IPv6 next hop, else the session's address.
fn next_hop(r: &ReceivedRoute) -> Option<Ipv6Addr> {
    r.next_hop
        .iter()
        .find_map(|h| match h {
            IpAddr::V6(a) if !is_link_local(a) => Some(*a),
            _ => None,
        })
        .or(match r.from {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        })
}

fn is_link_local(a: &Ipv6Addr) -> bool {
    (a.segments()[0] & 0xffc0) == 0xfe80
}

/// The routes `proto bgp` in the router namespace's kernel, prefix → IPv6 next hop.
pub fn kernel_routes(router: &Netns) -> BTreeMap<IpPrefix, Option<Ipv6Addr>> {
    let mut out = BTreeMap::new();
    for family in ["-4", "-6"] {
        let Ok(text) = router.ip(&[family, "route", "show", "proto", "bgp"]) else {
            continue;
        };
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let Some(first) = words.next() else { continue };
            let prefix = if first.contains('/') {
                first.parse().ok()
            } else {
                let len = if first.contains(':') { 128 } else { 32 };
                format!("{first}/{len}").parse().ok()
            };
            let Some(prefix) = prefix else { continue };
            let via = words
                .skip_while(|w| *w != "via")
                .skip(1)
                .find(|w| *w != "inet6")
                .and_then(|w| w.parse::<Ipv6Addr>().ok());
            out.insert(prefix, via);
        }
    }
    out
}

/// The route servers and the two threads that make them behave like Linode's network.
/// Dropping it stops the threads, then the daemons.
#[derive(Debug)]
pub struct Routing {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    servers: Arc<Vec<Mutex<RouteServer>>>,
    namespaces: Vec<Arc<Netns>>,
    applied: Arc<Vec<Mutex<Applied>>>,
    delays: Vec<Duration>,
    nodes: Vec<NodePeer>,
    owner: Mutex<std::sync::mpsc::Sender<OwnerRequest>>,
}

/// Work only the thread that started the daemons may do: a daemon dies with the thread
/// that spawned it (`PR_SET_PDEATHSIG`), so one restarted from a short-lived thread would
/// die with that thread.
enum OwnerRequest {
    Restart {
        index: usize,
        done: std::sync::mpsc::Sender<Result<(), RoutingError>>,
    },
}

impl std::fmt::Debug for OwnerRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Restart { index, .. } => write!(f, "Restart(rs{})", index + 1),
        }
    }
}

/// Errors setting up the routing.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    /// A route server did not start or reconfigure.
    #[error("route server rs{index}: {source}")]
    RouteServer {
        /// 1-based index.
        index: usize,
        /// Why.
        source: RouteServerError,
    },
    /// No route server with that (0-based) index.
    #[error("no route server rs{0}")]
    NoSuchServer(usize),
    /// The thread owning the daemons is gone (the lab is stopping).
    #[error("the route server thread has stopped")]
    OwnerGone,
    /// The admission table of a route server's namespace could not be set up.
    #[error("route server rs{index}: admission: {source}")]
    Gate {
        /// 1-based index.
        index: usize,
        /// Why.
        source: crate::netns::NetnsError,
    },
    /// A bad propagation model.
    #[error("{0}")]
    Propagation(String),
    /// A thread could not be started.
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

impl Routing {
    /// Starts four route servers of `flavor` in the topology's route server namespaces
    /// with the allow-lists and admission of the current sharing state, and the allow-list
    /// and forwarding threads; later share changes reach each route server as
    /// `propagation` says. `sharing` is the stand-in's
    /// [`crate::standin::StandInHandle::subscribe`].
    pub fn start(
        topo: &Topology,
        flavor: Flavor,
        nodes: Vec<NodePeer>,
        mut sharing: watch::Receiver<SharingSnapshot>,
        propagation: Propagation,
    ) -> Result<Routing, RoutingError> {
        propagation.check().map_err(RoutingError::Propagation)?;
        let first = change_of(&sharing.borrow_and_update(), &nodes);
        for (i, ns) in topo.rs.iter().enumerate() {
            Gate::install(ns, propagation.refusal, &first.admitted).map_err(|source| {
                RoutingError::Gate {
                    index: i + 1,
                    source,
                }
            })?;
        }
        let delays = propagation.delays(topo.rs.len(), admission::random_seed());
        tracing::info!(?delays, refusal = ?propagation.refusal, "route server propagation delays");
        let applied: Arc<Vec<Mutex<Applied>>> = Arc::new(
            topo.rs
                .iter()
                .map(|_| {
                    Mutex::new(Applied {
                        version: first.version,
                        admitted: first.admitted.clone(),
                    })
                })
                .collect(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (requests_tx, requests) = std::sync::mpsc::channel();
        let follower = Follower {
            nodes: nodes.clone(),
            namespaces: topo.rs.clone(),
            pending: delays.iter().map(|d| Pending::new(*d)).collect(),
            last: vec![first.clone(); topo.rs.len()],
            applied: applied.clone(),
        };
        let (owner, servers) = spawn_owner(
            flavor,
            follower,
            first.peers,
            sharing,
            requests,
            stop.clone(),
        )?;
        let mut routing = Routing {
            stop: stop.clone(),
            threads: vec![owner],
            servers: servers.clone(),
            namespaces: topo.rs.clone(),
            applied,
            delays,
            nodes,
            owner: Mutex::new(requests_tx),
        };

        let router = topo.router.name().to_owned();
        let fib = std::thread::Builder::new()
            .name("lab-fib".into())
            .spawn(move || follow_best_routes(&servers, &router, &stop))
            .map_err(|source| RoutingError::Thread {
                what: "forwarding",
                source,
            })?;
        routing.threads.push(fib);
        Ok(routing)
    }

    /// What route server `i` (0-based) has taken up of the sharing state.
    pub fn applied(&self, i: usize) -> Option<Applied> {
        self.applied.get(i).map(|a| lock(a).clone())
    }

    /// Each route server's propagation delay.
    pub fn delays(&self) -> &[Duration] {
        &self.delays
    }

    /// The nodes route server `i` (0-based) refused at least once (read from its
    /// namespace's packet filter).
    pub fn refused(&self, i: usize) -> Result<BTreeSet<Ipv6Addr>, RoutingError> {
        let ns = self
            .namespaces
            .get(i)
            .ok_or(RoutingError::NoSuchServer(i + 1))?;
        Gate::attempted(ns).map_err(|source| RoutingError::Gate {
            index: i + 1,
            source,
        })
    }

    /// The nodes route server `i`'s packet filter admits now.
    pub fn admitted(&self, i: usize) -> Result<BTreeSet<Ipv6Addr>, RoutingError> {
        let ns = self
            .namespaces
            .get(i)
            .ok_or(RoutingError::NoSuchServer(i + 1))?;
        Gate::admitted(ns).map_err(|source| RoutingError::Gate {
            index: i + 1,
            source,
        })
    }

    /// Route server `i` (0-based), locked.
    pub fn server(&self, i: usize) -> Option<MutexGuard<'_, RouteServer>> {
        self.servers.get(i).map(lock)
    }

    /// Number of route servers.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether there are no route servers (never, once started).
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The nodes the route servers know.
    pub fn nodes(&self) -> &[NodePeer] {
        &self.nodes
    }

    /// Every route server's received routes (empty for one that cannot be read).
    pub fn routes(&self) -> Vec<Vec<ReceivedRoute>> {
        self.servers
            .iter()
            .map(|s| lock(s).routes().unwrap_or_default())
            .collect()
    }

    /// What the nodes announced to every route server, accepted by its import policy or
    /// not.
    pub fn received(&self) -> Vec<Result<Vec<Announcement>, RouteServerError>> {
        self.servers.iter().map(|s| lock(s).received()).collect()
    }

    /// The node each route server considers best for `prefix`.
    pub fn best(&self, prefix: IpPrefix) -> Vec<Option<Ipv6Addr>> {
        self.servers
            .iter()
            .map(|s| {
                lock(s)
                    .best_route(prefix)
                    .ok()
                    .flatten()
                    .and_then(|r| next_hop(&r))
            })
            .collect()
    }

    /// Restarts route server `i` (0-based) with its current configuration and allow-list:
    /// its sessions drop, it forgets every route, and the nodes must connect and announce
    /// again. Returns once its control interface answers.
    pub fn restart_server(&self, i: usize) -> Result<(), RoutingError> {
        if i >= self.servers.len() {
            return Err(RoutingError::NoSuchServer(i + 1));
        }
        let (done, result) = std::sync::mpsc::channel();
        lock(&self.owner)
            .send(OwnerRequest::Restart { index: i, done })
            .map_err(|_| RoutingError::OwnerGone)?;
        // Bounded: stopping takes at most 5 s, starting at most 15 s (FRR).
        result
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| RoutingError::OwnerGone)?
    }

    /// The daemons' logs (for failure messages).
    pub fn logs(&self) -> String {
        self.servers
            .iter()
            .enumerate()
            .map(|(i, s)| format!("=== rs{} ===\n{}", i + 1, lock(s).logs()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops the threads (the daemons stop when dropped).
    pub fn stop_threads(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Routing {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// Starts one route server per namespace (named), in order.
fn start_servers(
    flavor: Flavor,
    namespaces: &[Arc<Netns>],
    peers: &[Peer],
) -> Result<Vec<Mutex<RouteServer>>, RoutingError> {
    namespaces
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let j = i as u32 + 1;
            let cfg = RouteServerConfig::linode(
                flavor,
                route_server_address(j),
                ROUTER_RS_SIDE,
                std::net::Ipv4Addr::new(192, 0, 2, 100 + j as u8),
                peers.to_vec(),
            );
            RouteServer::start(ns, cfg)
                .map(Mutex::new)
                .map_err(|source| RoutingError::RouteServer {
                    index: i + 1,
                    source,
                })
        })
        .collect()
}

/// The running route servers, shared by the threads that follow them.
type Servers = Arc<Vec<Mutex<RouteServer>>>;

/// The thread that starts the daemons (they die with it) and then follows the sharing
/// state; returns it with the started servers.
fn spawn_owner(
    flavor: Flavor,
    mut follower: Follower,
    peers: Vec<Peer>,
    mut sharing: watch::Receiver<SharingSnapshot>,
    requests: std::sync::mpsc::Receiver<OwnerRequest>,
    stop: Arc<AtomicBool>,
) -> Result<(JoinHandle<()>, Servers), RoutingError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let rs_namespaces = follower.namespaces.clone();
    let owner = std::thread::Builder::new()
        .name("lab-route-servers".into())
        .spawn(
            move || match start_servers(flavor, &rs_namespaces, &peers) {
                Ok(servers) => {
                    let servers = Arc::new(servers);
                    let _ = tx.send(Ok(servers.clone()));
                    follower.run(&servers, &mut sharing, &requests, &stop);
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            },
        )
        .map_err(|source| RoutingError::Thread {
            what: "route server",
            source,
        })?;
    let started = rx.recv().unwrap_or_else(|_| {
        Err(RoutingError::RouteServer {
            index: 0,
            source: RouteServerError::NotRunning(flavor),
        })
    });
    match started {
        Ok(servers) => Ok((owner, servers)),
        Err(e) => {
            let _ = owner.join();
            Err(e)
        }
    }
}

/// A sharing snapshot as the route servers take it up.
fn change_of(snapshot: &SharingSnapshot, nodes: &[NodePeer]) -> Change {
    Change {
        version: snapshot.version,
        peers: allow_lists(snapshot, nodes),
        admitted: admission::admitted(snapshot, nodes),
    }
}

/// Carries sharing snapshots to each route server after its delay.
struct Follower {
    nodes: Vec<NodePeer>,
    namespaces: Vec<Arc<Netns>>,
    pending: Vec<Pending>,
    /// The change each route server has taken up last.
    last: Vec<Change>,
    applied: Arc<Vec<Mutex<Applied>>>,
}

impl Follower {
    fn run(
        &mut self,
        servers: &[Mutex<RouteServer>],
        sharing: &mut watch::Receiver<SharingSnapshot>,
        requests: &std::sync::mpsc::Receiver<OwnerRequest>,
        stop: &AtomicBool,
    ) {
        while !stop.load(Ordering::Relaxed) {
            while let Ok(request) = requests.try_recv() {
                serve(servers, request);
            }
            match sharing.has_changed() {
                Ok(true) => {
                    let change = change_of(&sharing.borrow_and_update(), &self.nodes);
                    let now = std::time::Instant::now();
                    for p in &mut self.pending {
                        p.push(now, change.clone());
                    }
                }
                Ok(false) => {}
                // The stand-in is gone: nothing will change any more.
                Err(_) => return,
            }
            self.take_up_due(servers);
            std::thread::sleep(ALLOW_INTERVAL);
        }
    }

    /// Applies to each route server the newest change whose delay has passed.
    fn take_up_due(&mut self, servers: &[Mutex<RouteServer>]) {
        let now = std::time::Instant::now();
        for (i, s) in servers.iter().enumerate() {
            let Some(change) = self.pending.get_mut(i).and_then(|p| p.due(now)) else {
                continue;
            };
            let Some(last) = self.last.get_mut(i) else {
                continue;
            };
            if last.peers != change.peers {
                if let Err(error) = lock(s).set_peers(change.peers.clone()) {
                    tracing::warn!(rs = i + 1, %error, "cannot apply the allow-list");
                }
            }
            if last.admitted != change.admitted {
                if let Some(ns) = self.namespaces.get(i) {
                    if let Err(error) = Gate::admit(ns, &change.admitted) {
                        tracing::warn!(rs = i + 1, %error, "cannot update the admitted nodes");
                    }
                }
            }
            if last != &change {
                tracing::info!(
                    rs = i + 1,
                    version = change.version,
                    admitted = ?change.admitted,
                    "route server takes up the sharing state"
                );
            }
            if let Some(a) = self.applied.get(i) {
                *lock(a) = Applied {
                    version: change.version,
                    admitted: change.admitted.clone(),
                };
            }
            *last = change;
        }
    }
}

/// Carries out a request for the thread that owns the daemons.
fn serve(servers: &[Mutex<RouteServer>], request: OwnerRequest) {
    match request {
        OwnerRequest::Restart { index, done } => {
            let result = match servers.get(index) {
                // Restarted with the allow-list in force (set_peers keeps it in the
                // configuration); the admission table lives in the namespace and stays.
                Some(s) => lock(s)
                    .restart()
                    .map_err(|source| RoutingError::RouteServer {
                        index: index + 1,
                        source,
                    }),
                None => Err(RoutingError::NoSuchServer(index + 1)),
            };
            tracing::info!(
                rs = index + 1,
                ok = result.is_ok(),
                "route server restarted"
            );
            let _ = done.send(result);
        }
    }
}

fn follow_best_routes(servers: &[Mutex<RouteServer>], router: &str, stop: &AtomicBool) {
    let mut installed: BTreeMap<IpPrefix, Ipv6Addr> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let per_server: Vec<Vec<ReceivedRoute>> = servers
            .iter()
            .filter_map(|s| lock(s).routes().ok())
            .collect();
        // No route server answered (stopping, or all restarting): keep the FIB as it is
        // rather than black-holing everything.
        if !per_server.is_empty() {
            let want = elect(&per_server);
            for (prefix, node) in &want {
                if installed.get(prefix) != Some(node) {
                    match replace_route(router, *prefix, *node) {
                        Ok(()) => {
                            tracing::info!(%prefix, %node, "router: best route changed");
                            installed.insert(*prefix, *node);
                        }
                        Err(error) => {
                            tracing::warn!(%prefix, %node, %error, "router: cannot install")
                        }
                    }
                }
            }
            let gone: BTreeSet<IpPrefix> = installed
                .keys()
                .filter(|p| !want.contains_key(p))
                .copied()
                .collect();
            for prefix in gone {
                match delete_route(router, prefix) {
                    Ok(()) => {
                        tracing::info!(%prefix, "router: no route any more");
                        installed.remove(&prefix);
                    }
                    Err(error) => tracing::warn!(%prefix, %error, "router: cannot delete"),
                }
            }
        }
        std::thread::sleep(FIB_INTERVAL);
    }
}

fn replace_route(
    router: &str,
    prefix: IpPrefix,
    node: Ipv6Addr,
) -> Result<(), crate::netns::NetnsError> {
    let p = prefix.to_string();
    let n = node.to_string();
    let args: Vec<&str> = if prefix.is_ipv4() {
        vec![
            "-n",
            router,
            "-4",
            "route",
            "replace",
            &p,
            "via",
            "inet6",
            &n,
            "dev",
            NODES_BRIDGE,
            "proto",
            "bgp",
        ]
    } else {
        vec![
            "-n",
            router,
            "-6",
            "route",
            "replace",
            &p,
            "via",
            &n,
            "dev",
            NODES_BRIDGE,
            "proto",
            "bgp",
        ]
    };
    crate::netns::run("ip", &args).map(drop)
}

fn delete_route(router: &str, prefix: IpPrefix) -> Result<(), crate::netns::NetnsError> {
    let p = prefix.to_string();
    let family = if prefix.is_ipv4() { "-4" } else { "-6" };
    crate::netns::run(
        "ip",
        &["-n", router, family, "route", "del", &p, "proto", "bgp"],
    )
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routeserver::Origin;

    fn route(prefix: &str, node: &str, pref: u32) -> ReceivedRoute {
        let node: IpAddr = node.parse().unwrap();
        ReceivedRoute {
            prefix: prefix.parse().unwrap(),
            from: node,
            next_hop: vec![node],
            origin: Some(Origin::Incomplete),
            as_path: vec![65001],
            communities: vec![],
            large_communities: vec![],
            local_pref: Some(pref),
            best: true,
            valid: true,
        }
    }

    #[test]
    fn the_node_most_route_servers_prefer_wins() {
        let a = "2001:db8:1::10";
        let b = "2001:db8:1::11";
        let won = elect(&[
            vec![route("192.0.2.10/32", a, 200)],
            vec![route("192.0.2.10/32", b, 100)],
            vec![route("192.0.2.10/32", a, 200)],
        ]);
        assert_eq!(
            won.get(&"192.0.2.10/32".parse().unwrap()),
            Some(&a.parse().unwrap())
        );
        let mut not_best = route("192.0.2.11/32", a, 200);
        not_best.best = false;
        assert!(elect(&[vec![not_best]]).is_empty());
    }

    #[test]
    fn allow_lists_cover_owned_and_shared_addresses() {
        let snap: SharingSnapshot = serde_json::from_value(serde_json::json!({
            "version": 3,
            "ips": {
                "192.0.2.10": {"kind": "ipv4", "prefix": 32, "region": "us-east", "owner": 100,
                               "shared_with": [101]},
                "2001:db8:ff::": {"kind": "ipv6_range", "prefix": 64, "region": "us-east",
                                  "owner": 102, "shared_with": []},
            }
        }))
        .unwrap();
        let a: Ipv6Addr = "2001:db8:1::10".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1::11".parse().unwrap();
        let c: Ipv6Addr = "2001:db8:1::12".parse().unwrap();
        let peers = allow_lists(
            &snap,
            &[
                NodePeer {
                    linode: 101,
                    address: a,
                },
                NodePeer {
                    linode: 102,
                    address: b,
                },
                NodePeer {
                    linode: 103,
                    address: c,
                },
            ],
        );
        assert_eq!(
            peers[0].allowed,
            Some(vec!["192.0.2.10/32".parse().unwrap()])
        );
        assert_eq!(
            peers[1].allowed,
            Some(vec!["2001:db8:ff::/64".parse().unwrap()])
        );
        assert_eq!(peers[2].allowed, Some(vec![]));
    }
}
