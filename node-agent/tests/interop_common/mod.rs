//! Interop tests of our BGP speaker against real route servers (BIRD 2, GoBGP, FRR),
//! shared by `interop_bird.rs`, `interop_gobgp.rs` and `interop_frr.rs`.
//!
//! Topology per test, all in network namespaces with documentation addresses:
//!
//! ```text
//!  node ns                router ns                         rs1..rs4 ns
//!  eth0 2001:db8:1::10 ── to-node 2001:db8:1::1
//!                         br-rs 2001:db8:1:34::ff ─ rsN ── eth0 2001:db8:1:34::N  (one daemon each)
//! ```
//!
//! The node speaks eBGP multihop from its global IPv6 address to the four route
//! servers, generated from the neighbor pattern `2001:db8:%d:34::%d` with dcid 1.
//! The "node side" is behind [`NodeSide`] so the tests can later drive the real
//! `sharedip-node-agent standalone` binary instead of the speaker API.
//!
//! Root only (skipped with a message otherwise); every wait is bounded; namespaces,
//! daemons and runtimes are removed by Drop guards, also when a test fails.

#![allow(dead_code)]

pub mod agent_binary;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::BytesMut;
use sharedip_e2e::netns::{self, Netns, NsRuntime};
use sharedip_e2e::routeserver::{
    Flavor, IpPrefix, Origin, Peer, PeerStatus, ReceivedRoute, RouteServer, RouteServerConfig,
};
use sharedip_node_agent::bgp::fsm::{FsmConfig, State};
use sharedip_node_agent::bgp::session::{spawn, Route, SessionConfig, SessionHandle, Transport};
use sharedip_node_agent::bgp::wire::{
    decode_from, Afi, Capability, Community, ErrorCode, ExtendedNextHop, Family, LargeCommunity,
    Message, Notification, Open, Prefix, WireOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::{sleep, timeout, Instant};

/// Bound of every wait.
pub const BOUND: Duration = Duration::from_secs(40);
/// Data-center id of the tests.
pub const DCID: u32 = 1;
/// Neighbor pattern of the tests (lelastic's `-neighborpattern`).
pub const PATTERN: &str = "2001:db8:%d:34::%d";
/// The node's global IPv6 address (session source and next hop).
pub const NODE: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10);
const ROUTER_NODE_SIDE: &str = "2001:db8:1::1";
const ROUTER_RS_SIDE: &str = "2001:db8:1:34::ff";

/// Expands the neighbor pattern (`%d` = dcid, then index).
pub fn neighbor(pattern: &str, dcid: u32, i: u32) -> Ipv6Addr {
    pattern
        .replacen("%d", &dcid.to_string(), 1)
        .replacen("%d", &i.to_string(), 1)
        .parse()
        .expect("pattern yields an IPv6 address")
}

pub fn prefix(s: &str) -> Prefix {
    let p: IpPrefix = s.parse().unwrap();
    Prefix::new(p.addr, p.len).unwrap()
}

fn ip_prefix(p: &Prefix) -> IpPrefix {
    IpPrefix {
        addr: p.addr(),
        len: p.prefix_len(),
    }
}

/// What the route servers accept from the node (its "shared" addresses).
pub fn allowed() -> Vec<IpPrefix> {
    [
        "192.0.2.10/32",
        "2001:db8:1:100::/64",
        "2001:db8:1:200::/56",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect()
}

pub fn route(p: &str, communities: &[(u16, u16)], large: &[(u32, u32, u32)]) -> Route {
    Route {
        prefix: prefix(p),
        communities: communities
            .iter()
            .map(|&(a, b)| Community::new(a, b))
            .collect(),
        large_communities: large
            .iter()
            .map(|&(a, b, c)| LargeCommunity::new(a, b, c))
            .collect(),
    }
}

/// Skips (returns `false`) when not root; fails when the daemon is missing.
pub fn preflight(flavor: Option<Flavor>) -> bool {
    if !netns::is_root() {
        eprintln!("SKIPPED: interop tests need root (network namespaces); run as root");
        return false;
    }
    if let Some(f) = flavor {
        if let Some(p) = f.missing_program() {
            panic!("{f} route server needs {p}: run e2e/scripts/install-prereqs.sh as root");
        }
    }
    true
}

// ---------------------------------------------------------------------------
// Node side

/// One session as the node sees it.
#[derive(Debug, Clone)]
pub struct PeerView {
    pub remote: Ipv6Addr,
    pub established: bool,
    pub state: String,
    pub established_count: u64,
    pub updates_received: u64,
    pub last_error: Option<String>,
}

/// What the tests need from the node, whether it is the speaker API ([`EmbeddedNode`]) or
/// the real agent binary ([`agent_binary::AgentBinary`], whose prefixes come from its flags
/// or from Kubernetes, so announcing is not part of the trait).
pub trait NodeSide {
    fn peers(&self) -> Vec<PeerView>;
    /// The node's own log, for failure messages (empty when it has none).
    fn logs(&self) -> String {
        String::new()
    }
    /// Withdraws nothing by itself: CEASE / Administrative Shutdown to every peer.
    fn shutdown(self, message: &str) -> impl Future<Output = ()>;
}

/// Node parameters.
#[derive(Debug, Clone)]
pub struct NodeParams {
    pub hold_time: u16,
    pub connect_retry: Duration,
}

impl Default for NodeParams {
    fn default() -> Self {
        Self {
            hold_time: 9,
            connect_retry: Duration::from_secs(1),
        }
    }
}

/// Our speaker, one session per route server, running on a tokio runtime inside
/// the node namespace (so its sockets live there).
pub struct EmbeddedNode {
    sessions: Vec<(Ipv6Addr, SessionHandle)>,
    runtime: NsRuntime,
}

impl EmbeddedNode {
    pub fn start(ns: &Netns, peers: &[Ipv6Addr], params: &NodeParams) -> Self {
        let runtime = ns.runtime().expect("runtime in the node namespace");
        let _guard = runtime.handle().enter();
        let sessions = peers
            .iter()
            .map(|&peer| {
                let h = spawn(SessionConfig {
                    fsm: FsmConfig {
                        router_id: Ipv4Addr::new(192, 0, 2, 1),
                        hold_time: params.hold_time,
                        connect_retry: params.connect_retry,
                        connect_retry_max: params.connect_retry * 4,
                        ..FsmConfig::default()
                    },
                    transport: Transport::Connect {
                        remote: SocketAddr::new(IpAddr::V6(peer), 179),
                        local: Some(IpAddr::V6(NODE)),
                        ttl: Some(16),
                    },
                    next_hop: NODE,
                    next_hop_v4: None,
                    write_timeout: Duration::from_secs(5),
                    observer: None,
                })
                .expect("valid session config");
                (peer, h)
            })
            .collect();
        Self { sessions, runtime }
    }
}

impl EmbeddedNode {
    pub fn announce(&self, route: Route) {
        for (_, h) in &self.sessions {
            h.announce(route.clone()).expect("session running");
        }
    }

    pub fn withdraw(&self, prefix: Prefix) {
        for (_, h) in &self.sessions {
            h.withdraw(prefix).expect("session running");
        }
    }
}

impl NodeSide for EmbeddedNode {
    fn peers(&self) -> Vec<PeerView> {
        self.sessions
            .iter()
            .map(|(remote, h)| {
                let s = h.status().borrow().clone();
                PeerView {
                    remote: *remote,
                    established: s.state == State::Established,
                    state: s.state.as_str().to_owned(),
                    established_count: s.established_count,
                    updates_received: s.updates_received,
                    last_error: s.last_error,
                }
            })
            .collect()
    }

    async fn shutdown(self, message: &str) {
        for (_, h) in self.sessions {
            timeout(BOUND, h.shutdown(Some(message.to_owned())))
                .await
                .expect("session stops within bound");
        }
        drop(self.runtime);
    }
}

// ---------------------------------------------------------------------------
// Lab

/// Namespaces, route servers and the node of one test. Field order is drop order:
/// node first, then daemons, then namespaces.
pub struct Lab<N: NodeSide = EmbeddedNode> {
    pub node: Option<N>,
    pub route_servers: Vec<Option<RouteServer>>,
    pub rs_addrs: Vec<Ipv6Addr>,
    pub rs_ns: Vec<Netns>,
    pub node_ns: Netns,
    pub router: Netns,
}

impl Lab<EmbeddedNode> {
    /// Four route servers of `flavor` (index `skip_rs` gets a namespace but no
    /// daemon, for a scripted peer) and our node connecting to all four.
    pub fn start(flavor: Flavor, params: NodeParams, skip_rs: Option<usize>) -> Self {
        let mut lab = Self::topology(flavor, skip_rs);
        lab.node = Some(EmbeddedNode::start(&lab.node_ns, &lab.rs_addrs, &params));
        lab
    }
}

impl<N: NodeSide> Lab<N> {
    /// The namespaces and the four route servers of `flavor` (index `skip_rs` gets a
    /// namespace but no daemon), without a node: the caller starts its [`NodeSide`] in
    /// `node_ns` and stores it in `node`.
    pub fn topology(flavor: Flavor, skip_rs: Option<usize>) -> Self {
        let router = Netns::create("rtr").unwrap();
        router.enable_forwarding().unwrap();
        let node_ns = Netns::create("node").unwrap();
        netns::veth(&node_ns, "eth0", &router, "to-node").unwrap();
        node_ns.add_addr("eth0", &format!("{NODE}/64")).unwrap();
        router
            .add_addr("to-node", &format!("{ROUTER_NODE_SIDE}/64"))
            .unwrap();
        node_ns.add_route("default", ROUTER_NODE_SIDE).unwrap();
        router.add_bridge("br-rs").unwrap();
        router
            .add_addr("br-rs", &format!("{ROUTER_RS_SIDE}/64"))
            .unwrap();

        let mut rs_ns = Vec::new();
        let mut rs_addrs = Vec::new();
        let mut route_servers = Vec::new();
        for i in 1..=4u32 {
            let addr = neighbor(PATTERN, DCID, i);
            let ns = Netns::create(&format!("rs{i}")).unwrap();
            let port = format!("rs{i}");
            netns::veth(&ns, "eth0", &router, &port).unwrap();
            router.attach_to_bridge(&port, "br-rs").unwrap();
            ns.add_addr("eth0", &format!("{addr}/64")).unwrap();
            ns.add_route("default", ROUTER_RS_SIDE).unwrap();
            let rs = if skip_rs == Some(i as usize - 1) {
                None
            } else {
                let cfg = RouteServerConfig::linode(
                    flavor,
                    addr,
                    ROUTER_RS_SIDE.parse().unwrap(),
                    Ipv4Addr::new(192, 0, 2, 100 + i as u8),
                    vec![Peer {
                        address: NODE,
                        allowed: Some(allowed()),
                    }],
                );
                Some(RouteServer::start(&ns, cfg).unwrap_or_else(|e| panic!("{flavor} rs{i}: {e}")))
            };
            rs_ns.push(ns);
            rs_addrs.push(addr);
            route_servers.push(rs);
        }
        Lab {
            node: None,
            route_servers,
            rs_addrs,
            rs_ns,
            node_ns,
            router,
        }
    }
}

impl<N: NodeSide> Lab<N> {
    pub fn node(&self) -> &N {
        self.node.as_ref().expect("node running")
    }

    /// The running route servers with their index.
    pub fn daemons(&self) -> impl Iterator<Item = (usize, &RouteServer)> {
        self.route_servers
            .iter()
            .enumerate()
            .filter_map(|(i, rs)| rs.as_ref().map(|rs| (i, rs)))
    }

    /// Cuts (or restores) the link of route server `i` at the router: its packets
    /// vanish silently, nothing tells either end.
    pub fn set_rs_link(&self, i: usize, up: bool) {
        self.router.set_link(&format!("rs{}", i + 1), up).unwrap();
    }

    /// Everything the daemons logged (for failure messages).
    pub fn logs(&self) -> String {
        let node = self
            .node
            .as_ref()
            .map(NodeSide::logs)
            .filter(|l| !l.is_empty())
            .map(|l| format!("=== node ===\n{l}\n"))
            .unwrap_or_default();
        node + &self
            .daemons()
            .map(|(i, rs)| {
                format!(
                    "=== rs{} ({}) ===\n{}",
                    i + 1,
                    rs.config().flavor,
                    rs.logs()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The node's session to route server `i`.
    pub fn node_peer(&self, i: usize) -> PeerView {
        let addr = self.rs_addrs[i];
        self.node()
            .peers()
            .into_iter()
            .find(|p| p.remote == addr)
            .expect("session per route server")
    }

    /// What route server `i` says about the node's session.
    pub fn rs_peer(&self, i: usize) -> Option<PeerStatus> {
        let rs = self.route_servers[i].as_ref()?;
        rs.peers()
            .ok()?
            .into_iter()
            .find(|p| p.address == IpAddr::V6(NODE))
    }

    /// Routes route server `i` holds from the node.
    pub fn rs_routes(&self, i: usize) -> Vec<ReceivedRoute> {
        self.route_servers[i]
            .as_ref()
            .and_then(|rs| rs.routes().ok())
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.from == IpAddr::V6(NODE))
            .collect()
    }

    /// Polls `check` until it returns `Ok`, or panics after [`BOUND`] with the last
    /// reason and the daemons' logs.
    pub async fn wait(&self, what: &str, mut check: impl FnMut(&Self) -> Result<(), String>) {
        let deadline = Instant::now() + BOUND;
        loop {
            let res = check(self);
            match res {
                Ok(()) => return,
                Err(reason) if Instant::now() >= deadline => {
                    // The logs follow from Lab's Drop.
                    panic!(
                        "{what}: not reached within {BOUND:?}: {reason}\nnode: {:#?}",
                        self.node.as_ref().map(NodeSide::peers),
                    )
                }
                Err(_) => sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Waits until every daemon and our side see the session Established.
    pub async fn wait_all_established(&self) {
        self.wait("all sessions established", |lab| {
            for (i, _) in lab.daemons() {
                let p = lab
                    .rs_peer(i)
                    .ok_or(format!("rs{} has no peer entry", i + 1))?;
                if !p.established {
                    return Err(format!("rs{}: {p:?}", i + 1));
                }
                let n = lab.node_peer(i);
                if !n.established {
                    return Err(format!("node → rs{}: {n:?}", i + 1));
                }
            }
            Ok(())
        })
        .await;
    }

    /// Stops the node, then drops everything (also what Drop would do on panic).
    /// With `SHAREDIP_INTEROP_LOGS=1`, prints the daemons' logs first.
    pub async fn finish(mut self) {
        if std::env::var_os("SHAREDIP_INTEROP_LOGS").is_some() {
            eprintln!("{}", self.logs());
        }
        if let Some(node) = self.node.take() {
            node.shutdown("test finished").await;
        }
    }
}

impl<N: NodeSide> Drop for Lab<N> {
    fn drop(&mut self) {
        // A failed assertion anywhere in a test: show what the daemons (and the node) said.
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// Checks a received route against what we announced.
pub fn check_route(r: &ReceivedRoute, want: &Route) -> Result<(), String> {
    let communities: Vec<(u16, u16)> = want
        .communities
        .iter()
        .map(|c| (c.asn(), c.value()))
        .collect();
    let large: Vec<(u32, u32, u32)> = want
        .large_communities
        .iter()
        .map(|c| (c.global_admin, c.local_data1, c.local_data2))
        .collect();
    let mut errs = Vec::new();
    if r.communities != communities {
        errs.push(format!(
            "communities {:?} != {communities:?}",
            r.communities
        ));
    }
    if r.large_communities != large {
        errs.push(format!(
            "large communities {:?} != {large:?}",
            r.large_communities
        ));
    }
    if r.origin != Some(Origin::Incomplete) {
        errs.push(format!("origin {:?}", r.origin));
    }
    if r.next_hop.first() != Some(&IpAddr::V6(NODE)) {
        errs.push(format!("next hop {:?}", r.next_hop));
    }
    if r.as_path != [65001] {
        errs.push(format!("as path {:?}", r.as_path));
    }
    if !r.valid {
        errs.push("route not valid (next hop unresolved?)".to_owned());
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(format!("{}: {}", r.prefix, errs.join("; ")))
    }
}

/// Waits until every daemon holds exactly `want` from the node (as its best routes),
/// with the expected attributes and local preferences.
pub async fn wait_routes<N: NodeSide>(lab: &Lab<N>, want: &[(Route, u32)]) {
    lab.wait("routes at every route server", |lab| {
        for (i, _) in lab.daemons() {
            let routes = lab.rs_routes(i);
            let mut got: Vec<IpPrefix> = routes.iter().map(|r| r.prefix).collect();
            got.sort();
            let mut expected: Vec<IpPrefix> =
                want.iter().map(|(r, _)| ip_prefix(&r.prefix)).collect();
            expected.sort();
            if got != expected {
                return Err(format!("rs{}: prefixes {got:?}, want {expected:?}", i + 1));
            }
            for (w, pref) in want {
                let r = routes
                    .iter()
                    .find(|r| r.prefix == ip_prefix(&w.prefix))
                    .ok_or("missing")?;
                check_route(r, w).map_err(|e| format!("rs{}: {e}", i + 1))?;
                if r.local_pref != Some(*pref) {
                    return Err(format!(
                        "rs{}: {} local pref {:?}, want {pref}",
                        i + 1,
                        r.prefix,
                        r.local_pref
                    ));
                }
                if !r.best {
                    return Err(format!("rs{}: {} not best", i + 1, r.prefix));
                }
            }
        }
        Ok(())
    })
    .await;
}

// ---------------------------------------------------------------------------
// Scenarios

pub async fn sessions_up(flavor: Flavor) {
    if !preflight(Some(flavor)) {
        return;
    }
    let lab = Lab::start(flavor, NodeParams::default(), None);
    lab.wait_all_established().await;
    for i in 0..4 {
        assert_eq!(lab.node_peer(i).established_count, 1);
    }
    lab.finish().await;
}

pub async fn prefixes_with_communities_origin_next_hop(flavor: Flavor) {
    if !preflight(Some(flavor)) {
        return;
    }
    let lab = Lab::start(flavor, NodeParams::default(), None);
    let primary = [(65000, 1)];
    let secondary = [(65000, 2)];
    let v4 = route("192.0.2.10/32", &primary, &[]);
    let v6_64 = route("2001:db8:1:100::/64", &secondary, &[]);
    let v6_56 = route("2001:db8:1:200::/56", &primary, &[]);
    // Not shared with this node: the route servers' import policy drops it.
    let foreign = route("198.51.100.7/32", &primary, &[]);
    for r in [&v4, &v6_64, &v6_56, &foreign] {
        lab.node().announce(r.clone());
    }
    lab.wait_all_established().await;
    wait_routes(&lab, &[(v4, 200), (v6_64, 100), (v6_56, 200)]).await;
    lab.finish().await;
}

pub async fn large_communities(flavor: Flavor) {
    if !preflight(Some(flavor)) {
        return;
    }
    let lab = Lab::start(flavor, NodeParams::default(), None);
    lab.wait_all_established().await;
    let v4 = route("192.0.2.10/32", &[], &[(63949, 1, 1)]);
    let v6 = route("2001:db8:1:100::/64", &[(65000, 2)], &[(63949, 1, 2)]);
    lab.node().announce(v4.clone());
    lab.node().announce(v6.clone());
    wait_routes(&lab, &[(v4, 200), (v6, 100)]).await;
    lab.finish().await;
}

pub async fn withdraw_and_clean_shutdown(flavor: Flavor) {
    if !preflight(Some(flavor)) {
        return;
    }
    let mut lab = Lab::start(flavor, NodeParams::default(), None);
    let v4 = route("192.0.2.10/32", &[(65000, 1)], &[]);
    let v6 = route("2001:db8:1:200::/56", &[(65000, 1)], &[]);
    lab.node().announce(v4.clone());
    lab.node().announce(v6.clone());
    lab.wait_all_established().await;
    wait_routes(&lab, &[(v4.clone(), 200), (v6.clone(), 200)]).await;

    lab.node().withdraw(v4.prefix);
    wait_routes(&lab, &[(v6.clone(), 200)]).await;
    lab.node().withdraw(v6.prefix);
    wait_routes(&lab, &[]).await;

    // Announce again, then stop: CEASE / Administrative Shutdown reaches every
    // route server and the route goes with the session.
    lab.node().announce(v4.clone());
    wait_routes(&lab, &[(v4, 200)]).await;
    let node = lab.node.take().expect("node");
    node.shutdown("maintenance").await;
    lab.wait("CEASE seen by every route server", |lab| {
        for (i, _) in lab.daemons() {
            let p = lab.rs_peer(i).ok_or("no peer entry")?;
            let err = p.last_error.clone().unwrap_or_default().to_lowercase();
            if p.established || !err.contains("administrative shutdown") {
                return Err(format!("rs{}: {p:?}", i + 1));
            }
            if !lab.rs_routes(i).is_empty() {
                return Err(format!("rs{} still has routes", i + 1));
            }
        }
        Ok(())
    })
    .await;
    lab.finish().await;
}

pub async fn reconnect_after_route_server_restart(flavor: Flavor) {
    if !preflight(Some(flavor)) {
        return;
    }
    let mut lab = Lab::start(flavor, NodeParams::default(), None);
    let v4 = route("192.0.2.10/32", &[(65000, 1)], &[]);
    lab.node().announce(v4.clone());
    lab.wait_all_established().await;
    wait_routes(&lab, &[(v4.clone(), 200)]).await;

    lab.route_servers[1]
        .as_mut()
        .expect("rs2")
        .restart()
        .expect("rs2 restarts");
    lab.wait("session to rs2 re-established", |lab| {
        let n = lab.node_peer(1);
        if n.established && n.established_count >= 2 {
            Ok(())
        } else {
            Err(format!("{n:?}"))
        }
    })
    .await;
    lab.wait_all_established().await;
    wait_routes(&lab, &[(v4, 200)]).await;
    for i in [0, 2, 3] {
        assert_eq!(
            lab.node_peer(i).established_count,
            1,
            "other sessions untouched"
        );
    }
    lab.finish().await;
}

pub async fn hold_timer_expiry_on_silent_link_cut(flavor: Flavor) {
    if !preflight(Some(flavor)) {
        return;
    }
    // Hold 3 s (the lowest the agent allows) so the test is short; the route
    // servers propose 9 s and the smaller value wins.
    let params = NodeParams {
        hold_time: 3,
        ..NodeParams::default()
    };
    let lab = Lab::start(flavor, params, None);
    let v4 = route("192.0.2.10/32", &[(65000, 1)], &[]);
    lab.node().announce(v4.clone());
    lab.wait_all_established().await;
    wait_routes(&lab, &[(v4.clone(), 200)]).await;

    lab.set_rs_link(2, false);
    lab.wait("hold timer expiry toward rs3", |lab| {
        let n = lab.node_peer(2);
        let err = n.last_error.clone().unwrap_or_default();
        if !n.established && err.contains("hold timer expired") {
            Ok(())
        } else {
            Err(format!("{n:?}"))
        }
    })
    .await;
    for i in [0, 1, 3] {
        let n = lab.node_peer(i);
        assert!(n.established && n.established_count == 1, "{n:?}");
    }

    lab.set_rs_link(2, true);
    lab.wait("session to rs3 back after the link returns", |lab| {
        let n = lab.node_peer(2);
        if n.established && n.established_count >= 2 {
            Ok(())
        } else {
            Err(format!("{n:?}"))
        }
    })
    .await;
    lab.wait_all_established().await;
    wait_routes(&lab, &[(v4, 200)]).await;
    lab.finish().await;
}

/// The lab's use of the route servers: the allow-list follows the Linode stand-in's
/// sharing state. Exercised here so every flavour's live reconfiguration is tested.
pub async fn allow_list_updates_apply_live(flavor: Flavor) {
    if !preflight(Some(flavor)) {
        return;
    }
    let mut lab = Lab::start(flavor, NodeParams::default(), None);
    let v4 = route("192.0.2.10/32", &[(65000, 1)], &[]);
    let newly_shared = route("198.51.100.7/32", &[(65000, 2)], &[]);
    lab.node().announce(v4.clone());
    lab.node().announce(newly_shared.clone());
    lab.wait_all_established().await;
    wait_routes(&lab, &[(v4.clone(), 200)]).await;

    let set = |lab: &mut Lab, allowed: Option<Vec<IpPrefix>>| {
        for rs in lab.route_servers.iter_mut().flatten() {
            let peers = match &allowed {
                Some(a) => vec![Peer {
                    address: NODE,
                    allowed: Some(a.clone()),
                }],
                None => vec![],
            };
            rs.set_peers(peers).expect("reconfigure");
        }
    };
    // Shared with the node now: accepted without a new session.
    let mut more = allowed();
    more.push("198.51.100.7/32".parse().unwrap());
    set(&mut lab, Some(more));
    wait_routes(&lab, &[(v4.clone(), 200), (newly_shared.clone(), 100)]).await;
    // Unshared: gone, session stays.
    set(&mut lab, Some(vec!["198.51.100.7/32".parse().unwrap()]));
    wait_routes(&lab, &[(newly_shared.clone(), 100)]).await;
    for i in 0..4 {
        assert_eq!(lab.node_peer(i).established_count, 1, "sessions kept");
    }
    // Node removed from the allow-list: its sessions go.
    set(&mut lab, None);
    lab.wait(
        "sessions refused after the node left the allow-list",
        |lab| {
            for i in 0..4 {
                let n = lab.node_peer(i);
                if n.established {
                    return Err(format!("{n:?}"));
                }
            }
            Ok(())
        },
    )
    .await;
    // And back.
    set(&mut lab, Some(allowed()));
    lab.wait_all_established().await;
    wait_routes(&lab, &[(v4, 200)]).await;
    lab.finish().await;
}

// ---------------------------------------------------------------------------
// A route server that sends malformed UPDATEs (scripted, in rs4's namespace).

struct Scripted {
    stream: TcpStream,
    buf: BytesMut,
}

impl Scripted {
    async fn recv(&mut self) -> Option<Message> {
        loop {
            match decode_from(&mut self.buf, &WireOptions::default()) {
                Ok(Some(m)) => return Some(m),
                Ok(None) => {}
                Err(e) => panic!("our speaker sent something undecodable: {e}"),
            }
            let n = timeout(BOUND, self.stream.read_buf(&mut self.buf))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Accepts a connection and completes the OPEN exchange.
    async fn accept(listener: &TcpListener) -> Scripted {
        let (stream, from) = timeout(BOUND, listener.accept())
            .await
            .expect("node connects within bound")
            .expect("accept");
        assert_eq!(
            from.ip(),
            IpAddr::V6(NODE),
            "session from the node's address"
        );
        let mut s = Scripted {
            stream,
            buf: BytesMut::new(),
        };
        match s.recv().await {
            Some(Message::Open(o)) => {
                assert_eq!(o.asn(), 65001);
                assert!(o.extended_next_hop(Family::IPV4_UNICAST, Afi::IPV6));
            }
            other => panic!("expected OPEN, got {other:?}"),
        }
        let open = Open::new(
            65000,
            9,
            Ipv4Addr::new(192, 0, 2, 104),
            vec![
                Capability::Multiprotocol(Family::IPV4_UNICAST),
                Capability::Multiprotocol(Family::IPV6_UNICAST),
                Capability::ExtendedNextHop(vec![ExtendedNextHop {
                    family: Family::IPV4_UNICAST,
                    next_hop_afi: Afi::IPV6,
                }]),
                Capability::RouteRefresh,
            ],
        );
        let opts = WireOptions::default();
        s.send(&Message::Open(open).to_bytes(&opts).unwrap()).await;
        s.send(&Message::Keepalive.to_bytes(&opts).unwrap()).await;
        s
    }
}

fn update(attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    let len = 19 + 2 + 2 + attrs.len() + nlri.len();
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&(len as u16).to_be_bytes());
    m.push(2);
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    m.extend_from_slice(attrs);
    m.extend_from_slice(nlri);
    m
}

/// Malformed UPDATEs a broken route server might send, all of which RFC 7606 says
/// to survive (treat-as-withdraw or attribute-discard), and an unknown attribute.
fn malformed_updates() -> Vec<Vec<u8>> {
    let origin = [0x40, 0x01, 0x01, 0x02];
    let as_path = [0x40, 0x02, 0x06, 0x02, 0x01, 0x00, 0x00, 0xfd, 0xe8];
    let next_hop = [0x40, 0x03, 0x04, 198, 51, 100, 1];
    let nlri = [24, 198, 51, 100];
    vec![
        // COMMUNITIES of 5 octets: treat-as-withdraw.
        update(
            &[
                &origin[..],
                &as_path,
                &next_hop,
                &[0xc0, 0x08, 0x05, 1, 2, 3, 4, 5],
            ]
            .concat(),
            &nlri,
        ),
        // ORIGIN value 7: treat-as-withdraw.
        update(
            &[&[0x40, 0x01, 0x01, 0x07][..], &as_path, &next_hop].concat(),
            &nlri,
        ),
        // LOCAL_PREF on eBGP with a wrong length: attribute discard.
        update(
            &[&origin[..], &as_path, &next_hop, &[0x40, 0x05, 0x02, 0, 1]].concat(),
            &nlri,
        ),
        // Unknown optional transitive attribute: kept and ignored.
        update(
            &[
                &origin[..],
                &as_path,
                &next_hop,
                &[0xc0, 0xf0, 0x03, 9, 9, 9],
            ]
            .concat(),
            &nlri,
        ),
    ]
}

struct ScriptReport {
    /// Messages the node sent while receiving the malformed UPDATEs.
    after_malformed: Vec<Message>,
    /// What the node answered to a broken header.
    after_garbage: Option<Notification>,
}

async fn scripted_route_server(
    addr: Ipv6Addr,
    malformed_sent: oneshot::Sender<()>,
    go_on: oneshot::Receiver<()>,
) -> ScriptReport {
    let listener = TcpListener::bind(SocketAddr::new(IpAddr::V6(addr), 179))
        .await
        .expect("bind port 179 in rs4's namespace");
    let mut s = Scripted::accept(&listener).await;
    for m in malformed_updates() {
        s.send(&m).await;
    }
    let _ = malformed_sent.send(());
    let mut after_malformed = Vec::new();
    let mut go_on = go_on;
    let keepalive = Message::Keepalive
        .to_bytes(&WireOptions::default())
        .unwrap();
    loop {
        tokio::select! {
            _ = &mut go_on => break,
            m = s.recv() => match m {
                Some(m) => after_malformed.push(m),
                None => break,
            },
            () = sleep(Duration::from_secs(2)) => s.send(&keepalive).await,
        }
    }
    // A header with a broken marker: a connection-level error (NOTIFICATION
    // Message Header Error, session reset), still no crash.
    let mut garbage = update(&[], &[]);
    garbage[0] = 0;
    s.send(&garbage).await;
    let mut after_garbage = None;
    while let Some(m) = s.recv().await {
        if let Message::Notification(n) = m {
            after_garbage = Some(n);
            break;
        }
    }
    drop(s);
    // The node comes back.
    let mut s = Scripted::accept(&listener).await;
    // Keep it alive until the test is done with it.
    loop {
        tokio::select! {
            m = s.recv() => if m.is_none() { break },
            () = sleep(Duration::from_secs(2)) => s.send(&keepalive).await,
        }
    }
    ScriptReport {
        after_malformed,
        after_garbage,
    }
}

pub async fn malformed_update_does_not_crash(flavor: Flavor) {
    if !preflight(Some(flavor)) {
        return;
    }
    let (sent_tx, sent_rx) = oneshot::channel();
    let (go_tx, go_rx) = oneshot::channel();
    let mut lab = Lab::start(flavor, NodeParams::default(), Some(3));
    let rs4_rt = lab.rs_ns[3].runtime().expect("runtime in rs4's namespace");
    let script = rs4_rt
        .handle()
        .spawn(scripted_route_server(lab.rs_addrs[3], sent_tx, go_rx));
    let v4 = route("192.0.2.10/32", &[(65000, 1)], &[]);
    lab.node().announce(v4.clone());
    lab.wait_all_established().await;
    timeout(BOUND, sent_rx)
        .await
        .expect("scripted peer sent its UPDATEs")
        .expect("scripted peer running");
    lab.wait("malformed UPDATEs received", |lab| {
        let n = lab.node_peer(3);
        if n.updates_received >= 4 {
            Ok(())
        } else {
            Err(format!("{n:?}"))
        }
    })
    .await;
    // Survived: the session is still up, it was never reset, the others neither.
    for i in 0..4 {
        let n = lab.node_peer(i);
        assert!(n.established && n.established_count == 1, "{n:?}");
    }
    wait_routes(&lab, &[(v4.clone(), 200)]).await;
    let _ = go_tx.send(());

    lab.wait(
        "session to the scripted peer back after the header error",
        |lab| {
            let n = lab.node_peer(3);
            if n.established && n.established_count >= 2 {
                Ok(())
            } else {
                Err(format!("{n:?}"))
            }
        },
    )
    .await;
    for i in 0..3 {
        assert_eq!(lab.node_peer(i).established_count, 1);
    }
    if let Some(node) = lab.node.take() {
        node.shutdown("test finished").await;
    }
    let report = timeout(BOUND, script)
        .await
        .expect("script ends")
        .expect("script did not panic");
    assert!(
        !report
            .after_malformed
            .iter()
            .any(|m| matches!(m, Message::Notification(_))),
        "no NOTIFICATION for RFC 7606-survivable errors: {:?}",
        report.after_malformed
    );
    let n = report
        .after_garbage
        .expect("NOTIFICATION for the broken header");
    assert_eq!(n.code, ErrorCode::MessageHeader);
    drop(rs4_rt);
    lab.finish().await;
}

/// Instantiates every scenario for one flavour.
#[macro_export]
macro_rules! interop_suite {
    ($flavor:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn sessions_up_with_four_route_servers() {
            interop_common::sessions_up($flavor).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn ipv4_32_and_ipv6_64_56_with_community_origin_next_hop() {
            interop_common::prefixes_with_communities_origin_next_hop($flavor).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn large_communities() {
            interop_common::large_communities($flavor).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn withdraw_and_clean_shutdown() {
            interop_common::withdraw_and_clean_shutdown($flavor).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn reconnect_after_route_server_restart() {
            interop_common::reconnect_after_route_server_restart($flavor).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn hold_timer_expiry_on_silent_link_cut() {
            interop_common::hold_timer_expiry_on_silent_link_cut($flavor).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn route_server_allow_list_updates_apply_live() {
            interop_common::allow_list_updates_apply_live($flavor).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn malformed_update_from_a_route_server_does_not_crash() {
            interop_common::malformed_update_does_not_crash($flavor).await;
        }
    };
}
