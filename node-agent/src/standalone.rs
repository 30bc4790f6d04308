//! Standalone mode: lelastic's job on a plain Linode, without Kubernetes.
//!
//! With `--address`, the agent binds each address on `--interface` and announces it; without,
//! it announces the public addresses already configured on `lo` (every interface with
//! `-allifs`), as lelastic does, and binds nothing. IPv4 is announced as /32, IPv6 as the /64
//! around the address (/56 with `-send56`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;

use futures::{Stream, StreamExt};
use sharedip_api::{Role, SharedAddress};

use crate::binder::InterfaceAddress;
use crate::binder::{AddressBinding, UserConfigured};
use crate::community::RoleCommunity;
use crate::config::{CommonArgs, StandaloneArgs};
use crate::decision::{Decision, Reason, Target};
use crate::http::AgentState;
use crate::node_addresses::{self, OwnAddresses};
use crate::orchestrator::{Orchestrator, Transition};
use crate::report::{self, AgentReport};
use crate::setup::{self, AgentError, Control};
use crate::speaker::{Announcer, Speaker};

pub(crate) fn is_announceable(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => {
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s & 0xffc0) == 0xfe80
                || (s & 0xfe00) == 0xfc00)
        }
    }
}

/// lelastic's address discovery: public addresses on `interface` (every interface with
/// `all_ifs`). On other interfaces only host addresses (/32, /128) count, so the node's own
/// subnet addresses (SLAAC /64, the public /24) are never announced. Addresses the agent
/// itself bound in an earlier run (with `--address`) are not the user's and are skipped: they
/// are removed as leftovers instead.
pub fn discover(addrs: &[InterfaceAddress], interface: &str, all_ifs: bool) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = addrs
        .iter()
        .filter(|a| !a.ours && is_announceable(a.address))
        .filter(|a| {
            if a.interface == interface {
                true
            } else {
                all_ifs && (a.prefix_len == 32 && a.address.is_ipv4() || a.prefix_len == 128)
            }
        })
        .map(|a| a.address)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Why a standalone address cannot be announced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StandaloneAddressError {
    #[error(transparent)]
    Address(#[from] sharedip_api::AddressError),
    #[error(transparent)]
    Prefix(#[from] crate::prefix::AnnouncedPrefixError),
}

/// The decisions for the standalone addresses: everything announced with the role's community.
pub fn decisions(
    addresses: &[IpAddr],
    role: Role,
    community: RoleCommunity,
    send56: bool,
) -> Result<BTreeMap<String, Decision>, StandaloneAddressError> {
    let mut out = BTreeMap::new();
    for a in addresses {
        let prefix = match a {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) if send56 => 56,
            IpAddr::V6(_) => 64,
        };
        let address = SharedAddress::parse(&a.to_string(), Some(prefix))?;
        out.insert(
            a.to_string(),
            Decision {
                role: Some(role),
                target: Some(Target::new(address, community)?),
                reason: Reason::Announced,
                message: format!("announcing {address} with community {community}"),
            },
        );
    }
    Ok(out)
}

/// What standalone mode announces: the `--address` list (bound by the agent), or what is
/// configured on the interface(s) in `listing` (lelastic's discovery; bound by the user).
fn wanted(
    args: &StandaloneArgs,
    listing: &[InterfaceAddress],
) -> Result<(Vec<IpAddr>, bool), AgentError> {
    let common = &args.common;
    if args.addresses.is_empty() {
        let found = discover(listing, &common.interface, args.all_ifs);
        if found.is_empty() {
            return Err(AgentError::NoAddresses(if args.all_ifs {
                "any interface".into()
            } else {
                common.interface.clone()
            }));
        }
        Ok((found, false))
    } else {
        Ok((args.addresses.clone(), true))
    }
}

/// Discovery mode announces prefixes, not addresses: two discovered IPv6 addresses in one /64
/// (/56 with -send56) are one route under one name, so a reload that finds only one of them
/// still keeps the route. (With `--address`, each address is bound, so each keeps its name.)
fn by_prefix(decisions: BTreeMap<String, Decision>) -> BTreeMap<String, Decision> {
    let mut out = BTreeMap::new();
    for d in decisions.into_values() {
        if let Some(t) = d.target {
            out.entry(t.prefix().to_string()).or_insert(d);
        }
    }
    out
}

/// The decisions after a reload: the fresh ones, except that a name wanted before and after
/// keeps the decision it has, so the orchestrator leaves its route (and binding) alone.
fn merge_reload(
    current: &BTreeMap<String, Decision>,
    fresh: BTreeMap<String, Decision>,
) -> BTreeMap<String, Decision> {
    fresh
        .into_iter()
        .map(|(name, d)| {
            let d = current.get(&name).cloned().unwrap_or(d);
            (name, d)
        })
        .collect()
}

/// Runs `sharedip-node-agent standalone` until SIGTERM or SIGINT; SIGHUP reloads.
pub async fn run(args: StandaloneArgs) -> Result<(), AgentError> {
    let signals = setup::Signals::install(setup::Hangup::Reload)?;
    let common = &args.common;
    let role = args.role();
    let community = match role {
        Role::Primary => common.primary_community,
        Role::Secondary => common.secondary_community,
    };
    // The binder also in discovery mode: it lists the interfaces and recognises (and removes)
    // what an earlier run bound.
    let binder = setup::open_binder(common).await?;
    setup::remove_flow_handover_leftovers().await;
    let listing = binder
        .interface_addresses()
        .await
        .map_err(AgentError::Interfaces)?;
    let (addresses, bind) = wanted(&args, &listing)?;
    let to_decisions = |addresses: &[IpAddr]| {
        decisions(addresses, role, community, args.send56)
            .map(|d| if bind { d } else { by_prefix(d) })
            .map_err(AgentError::Address)
    };
    let desired = to_decisions(&addresses)?;
    let peers = common.peers(common.dcid)?;
    let next_hop = setup::next_hop(common, &peers)?;
    // What discovery found, the user configured for sharing.
    let guard = OwnAddressGuard::start(common, &peers, next_hop, !bind, listing, &desired)?;
    let node_ipv4 =
        node_addresses::router_id_from_interfaces(&guard.interfaces, &common.interface, &addresses);
    let speaker_cfg = setup::speaker_config(common, peers, next_hop, node_ipv4);
    let router_id = speaker_cfg.fsm.router_id;
    tracing::info!(?addresses, %role, %community, %next_hop, %router_id, peers = ?speaker_cfg.peers, bind, "starting standalone");
    let speaker = Speaker::start(&speaker_cfg)?;
    let state = AgentState::new(
        AgentReport {
            mode: "standalone".into(),
            dcid: common.dcid,
            local_as: common.local_asn,
            next_hop: next_hop.to_string(),
            router_id: Some(router_id.to_string()),
            ..Default::default()
        },
        speaker.monitor(),
    );
    state.set_route_server_grace(common.route_server_grace);
    setup::serve_plain_http(args.http_addr(), state.clone()).await?;
    let _socket = setup::serve_status_socket(&common.status_socket, state.clone()).await?;
    let reload = |listing: &[InterfaceAddress]| {
        rediscover(&args, listing).and_then(|addresses| to_decisions(&addresses))
    };
    let control = signals.into_stream();
    let stop = common.shutdown_timeout;
    if bind {
        let o = Orchestrator::new(binder, speaker, common.unbind_delay);
        serve(o, desired, guard, &state, stop, control, reload).await
    } else {
        let o = Orchestrator::new(UserConfigured(binder), speaker, common.unbind_delay);
        serve(o, desired, guard, &state, stop, control, reload).await
    }
}

/// SIGHUP: what a user expects after adding an address to lo and running `systemctl reload`:
/// discover again. With --address the list is fixed; the reload re-applies it (and retries
/// failed binds at once). No address left is not an error: everything is withdrawn and the
/// sessions stay up.
fn rediscover(
    args: &StandaloneArgs,
    listing: &[InterfaceAddress],
) -> Result<Vec<IpAddr>, AgentError> {
    match wanted(args, listing) {
        Ok((addresses, _)) => {
            tracing::info!(?addresses, "SIGHUP: addresses to announce");
            Ok(addresses)
        }
        Err(AgentError::NoAddresses(on)) => {
            tracing::warn!(%on, "SIGHUP: no address to announce any more; withdrawing everything, sessions stay up");
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

/// Keeps the node's own addresses out of what standalone mode binds and announces.
struct OwnAddressGuard {
    /// The sessions' addresses (next hop, sources).
    session_addresses: OwnAddresses,
    /// `--interface`.
    interface: String,
    /// The addresses were discovered on the interfaces, so they may be there themselves.
    user_configured: bool,
    /// The last listing of the interfaces that worked.
    interfaces: Vec<InterfaceAddress>,
    /// Refused addresses, with the reason last logged.
    refused: BTreeMap<String, String>,
}

impl OwnAddressGuard {
    /// The guard of the sessions toward `peers` with `next_hop`, and the interfaces as
    /// `listing` shows them. It refuses the node's own addresses in `desired` before anything
    /// starts; if nothing is left, the configuration is wrong and running would only hide it.
    fn start(
        common: &CommonArgs,
        peers: &[std::net::SocketAddr],
        next_hop: std::net::Ipv6Addr,
        user_configured: bool,
        listing: Vec<InterfaceAddress>,
        desired: &BTreeMap<String, Decision>,
    ) -> Result<Self, AgentError> {
        let mut session_addresses = OwnAddresses::default();
        session_addresses.add_session(next_hop, setup::session_sources(common, peers));
        let mut guard = OwnAddressGuard {
            session_addresses,
            interface: common.interface.clone(),
            user_configured,
            interfaces: listing,
            refused: BTreeMap::new(),
        };
        let allowed = guard.filter(desired);
        if allowed.values().all(|d| d.target.is_none()) {
            let why: Vec<String> = allowed.values().map(|d| d.message.clone()).collect();
            return Err(AgentError::AllAddressesRefused(why.join("; ")));
        }
        Ok(guard)
    }

    /// Lists the interfaces again (keeping the last listing if that fails); whether it worked.
    async fn refresh<B: AddressBinding>(&mut self, binder: &B) -> bool {
        match binder.interface_addresses().await {
            Ok(list) => {
                self.interfaces = list;
                true
            }
            Err(error) => {
                tracing::warn!(
                    %error,
                    "cannot list the node's interface addresses; checking against the last list"
                );
                false
            }
        }
    }

    /// `desired` with every address that is the node's own turned into a refusal, logged
    /// once at error level when it starts.
    fn filter(&mut self, desired: &BTreeMap<String, Decision>) -> BTreeMap<String, Decision> {
        let mut own = self.session_addresses.clone();
        own.add_interfaces(&self.interfaces, &self.interface);
        let mut out = BTreeMap::new();
        for (name, d) in desired {
            let conflict = d.target.and_then(|t| {
                node_addresses::check(&t.address(), &own, self.user_configured).err()
            });
            let d = match conflict {
                Some(c) => {
                    let message = c.to_string();
                    if self.refused.get(name) != Some(&message) {
                        tracing::error!(address = %name, reason = %Reason::AddressIsNodeAddress, "{message}");
                        self.refused.insert(name.clone(), message.clone());
                    }
                    Decision {
                        role: d.role,
                        target: None,
                        reason: Reason::AddressIsNodeAddress,
                        message,
                    }
                }
                None => {
                    if self.refused.remove(name).is_some() {
                        tracing::info!(address = %name, "no longer the node's own address");
                    }
                    d.clone()
                }
            };
            out.insert(name.clone(), d);
        }
        out
    }
}

/// Applies `desired` (without the node's own addresses), logs what changed on the network and
/// updates metrics and `/status`.
async fn apply<B: AddressBinding, A: Announcer>(
    o: &mut Orchestrator<B, A>,
    desired: &BTreeMap<String, Decision>,
    guard: &mut OwnAddressGuard,
    state: &AgentState,
) {
    let t = o.apply(&guard.filter(desired)).await.transitions;
    log_transitions(&t);
    state.metrics.observe_transitions(&t);
    state.set_prefixes(report::prefix_reports(o.applied()));
}

fn log_transitions(transitions: &[Transition]) {
    for t in transitions {
        match t {
            Transition::Announced {
                prefix, community, ..
            } => tracing::info!(%prefix, %community, "announced"),
            Transition::Withdrawn { prefix, reason, .. } => {
                tracing::info!(%prefix, %reason, "withdrawn")
            }
            // The orchestrator logs failed binds itself.
            Transition::BindFailed { .. } => {}
        }
    }
}

/// The standalone loop: apply, then retry now and then, reload on [`Control::Reload`] (from
/// a fresh listing of the interfaces), and on [`Control::Stop`] withdraw, CEASE and unbind
/// within `shutdown_timeout`.
async fn serve<B, A, C, R>(
    mut o: Orchestrator<B, A>,
    mut desired: BTreeMap<String, Decision>,
    mut guard: OwnAddressGuard,
    state: &AgentState,
    shutdown_timeout: std::time::Duration,
    control: C,
    mut reload: R,
) -> Result<(), AgentError>
where
    B: AddressBinding,
    A: Announcer,
    C: Stream<Item = Control>,
    R: FnMut(&[InterfaceAddress]) -> Result<BTreeMap<String, Decision>, AgentError>,
{
    apply(&mut o, &desired, &mut guard, state).await;
    state.ready.store(true, Ordering::Relaxed);
    // Retry failed binds now and then until stopped.
    let mut retry = tokio::time::interval(std::time::Duration::from_secs(30));
    retry.tick().await;
    let control = control.fuse();
    futures::pin_mut!(control);
    loop {
        tokio::select! {
            Some(c) = control.next() => match c {
                Control::Stop => break,
                Control::Reload => {
                    if !guard.refresh(o.binder()).await {
                        tracing::warn!("SIGHUP: cannot read the addresses again; keeping the current ones");
                        continue;
                    }
                    match reload(&guard.interfaces) {
                        Ok(fresh) => {
                            desired = merge_reload(&desired, fresh);
                            apply(&mut o, &desired, &mut guard, state).await;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "SIGHUP: cannot read the addresses again; keeping the current ones");
                        }
                    }
                }
            },
            _ = retry.tick() => {
                guard.refresh(o.binder()).await;
                apply(&mut o, &desired, &mut guard, state).await;
            }
            () = o.unbinds_due() => apply(&mut o, &desired, &mut guard, state).await,
        }
    }
    tracing::info!("stopping: withdrawing, closing sessions, unbinding");
    let result =
        match tokio::time::timeout(shutdown_timeout, o.shutdown("sharedip-node-agent stopping"))
            .await
        {
            Ok(t) => {
                log_transitions(&t);
                state.metrics.observe_transitions(&t);
                Ok(())
            }
            Err(_) => Err(AgentError::ShutdownTimeout(shutdown_timeout)),
        };
    state.set_prefixes(report::prefix_reports(o.applied()));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ifa(i: &str, a: &str, l: u8) -> InterfaceAddress {
        InterfaceAddress {
            interface: i.into(),
            address: a.parse().unwrap(),
            prefix_len: l,
            ours: false,
        }
    }

    #[test]
    fn discovery_like_lelastic() {
        let addrs = vec![
            ifa("lo", "127.0.0.1", 8),
            ifa("lo", "::1", 128),
            ifa("lo", "192.0.2.10", 32),
            ifa("lo", "2001:db8:1:2::1", 64),
            ifa("eth0", "198.51.100.20", 24),
            ifa("eth0", "10.0.0.5", 24),
            ifa("eth0", "2001:db8:5::abcd", 64),
            ifa("eth0", "fe80::1", 64),
            ifa("dummy0", "198.51.100.7", 32),
            ifa("dummy0", "fd00::7", 128),
            // Bound by an earlier run of the agent: not the user's.
            InterfaceAddress {
                ours: true,
                ..ifa("lo", "198.51.100.9", 32)
            },
            InterfaceAddress {
                ours: true,
                ..ifa("dummy0", "2001:db8:9::9", 128)
            },
        ];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            discover(&addrs, "lo", false),
            vec![ip("192.0.2.10"), ip("2001:db8:1:2::1")]
        );
        assert_eq!(
            discover(&addrs, "lo", true),
            vec![ip("192.0.2.10"), ip("198.51.100.7"), ip("2001:db8:1:2::1")]
        );
        assert_eq!(discover(&addrs, "dummy0", false), vec![ip("198.51.100.7")]);
    }

    #[test]
    fn decisions_follow_role_and_send56() {
        let addrs: Vec<IpAddr> = vec![
            "192.0.2.10".parse().unwrap(),
            "2001:db8:1:2::1".parse().unwrap(),
        ];
        let d = decisions(&addrs, Role::Secondary, RoleCommunity::SECONDARY, true).unwrap();
        let t = d["2001:db8:1:2::1"].target.unwrap();
        assert_eq!(t.address().to_string(), "2001:db8:1::/56");
        assert_eq!(t.prefix().to_string(), "2001:db8:1::/56");
        assert_eq!(t.community(), RoleCommunity::SECONDARY);
        let d = decisions(&addrs, Role::Primary, RoleCommunity::PRIMARY, false).unwrap();
        assert_eq!(
            d["2001:db8:1:2::1"].target.unwrap().address().to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            d["192.0.2.10"].target.unwrap().address().to_string(),
            "192.0.2.10/32"
        );
        assert!(decisions(
            &["127.0.0.1".parse().unwrap()],
            Role::Primary,
            RoleCommunity::PRIMARY,
            false
        )
        .is_err());
    }

    #[test]
    fn the_guard_turns_the_nodes_own_addresses_into_refusals() {
        let mut session = OwnAddresses::default();
        session.add_session("2001:db8:1::10".parse().unwrap(), []);
        let mut guard = OwnAddressGuard {
            session_addresses: session,
            interface: "lo".into(),
            user_configured: false,
            interfaces: vec![
                ifa("eth0", "198.51.100.66", 26),
                ifa("lo", "192.0.2.10", 32),
            ],
            refused: BTreeMap::new(),
        };
        let addrs: Vec<IpAddr> = ["192.0.2.10", "198.51.100.66", "2001:db8:1::99"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let desired = decisions(&addrs, Role::Primary, RoleCommunity::PRIMARY, false).unwrap();
        let out = guard.filter(&desired);
        assert_eq!(out["192.0.2.10"], desired["192.0.2.10"]);
        for refused in ["198.51.100.66", "2001:db8:1::99"] {
            let d = &out[refused];
            assert_eq!((d.reason, d.target), (Reason::AddressIsNodeAddress, None));
            assert_eq!(d.role, Some(Role::Primary));
        }
        assert_eq!(guard.refused.len(), 2);
        // The address leaves eth0: no longer refused.
        guard.interfaces.clear();
        let out = guard.filter(&desired);
        assert_eq!(out["198.51.100.66"], desired["198.51.100.66"]);
        assert_eq!(guard.refused.len(), 1);
        // Discovered addresses may be on an interface themselves, never the next hop's /64.
        guard.user_configured = true;
        guard.interfaces = vec![ifa("dummy0", "198.51.100.66", 32)];
        let out = guard.filter(&desired);
        assert_eq!(out["198.51.100.66"], desired["198.51.100.66"]);
        assert_eq!(out["2001:db8:1::99"].reason, Reason::AddressIsNodeAddress);
    }

    mod reload {
        use std::sync::{Arc, Mutex};
        use std::time::Duration;

        use tokio::sync::mpsc;

        use super::super::*;
        use crate::binder::BindError;
        use crate::speaker::SpeakerMonitor;
        use crate::testing::{FakeAnnouncer, FakeBinder, Op, OpLog};

        fn ips(list: &[&str]) -> Vec<IpAddr> {
            list.iter().map(|s| s.parse().unwrap()).collect()
        }

        fn discovered(list: &[&str]) -> BTreeMap<String, Decision> {
            by_prefix(decisions(&ips(list), Role::Primary, RoleCommunity::PRIMARY, false).unwrap())
        }

        /// The standalone loop in discovery mode with a scripted discovery: each Reload takes
        /// the next answer. Returns the operations per step: after the start, after each
        /// Reload, and once `unbind_delay` has run out after the last one.
        async fn script(
            start: &[&str],
            answers: Vec<Result<Vec<&'static str>, AgentError>>,
            unbind_delay: Duration,
        ) -> Vec<Vec<Op>> {
            let log = OpLog::default();
            let o = Orchestrator::new(
                FakeBinder::with_log(log.clone()),
                FakeAnnouncer::new(log.clone()),
                unbind_delay,
            );
            let state = AgentState::new(AgentReport::default(), SpeakerMonitor::empty());
            let (tx, rx) = mpsc::unbounded_channel::<Control>();
            let control =
                futures::stream::unfold(
                    rx,
                    |mut rx| async move { rx.recv().await.map(|c| (c, rx)) },
                );
            let answers = Arc::new(Mutex::new(answers.into_iter()));
            let reload = {
                let answers = answers.clone();
                move |_listing: &[InterfaceAddress]| match answers.lock().unwrap().next() {
                    Some(Ok(list)) if list.is_empty() => Ok(BTreeMap::new()),
                    Some(Ok(list)) => Ok(discovered(&list)),
                    Some(Err(e)) => Err(e),
                    None => panic!("no answer left"),
                }
            };
            let steps = answers.lock().unwrap().len();
            // Discovery mode: the addresses are the user's, on lo; nothing is the node's own.
            let guard = OwnAddressGuard {
                session_addresses: OwnAddresses::default(),
                interface: "lo".into(),
                user_configured: true,
                interfaces: Vec::new(),
                refused: BTreeMap::new(),
            };
            let run = serve(
                o,
                discovered(start),
                guard,
                &state,
                Duration::from_secs(5),
                control,
                reload,
            );
            let drive = async {
                let mut out = Vec::new();
                // The clock is paused and nothing in the loop sleeps: a sleep here ends only
                // once the loop waits for its next input, i.e. has applied everything (an
                // unbind delay, if any, is longer than this sleep).
                let settle = || tokio::time::sleep(Duration::from_millis(1));
                settle().await;
                out.push(std::mem::take(&mut *log.lock().unwrap()));
                for _ in 0..steps {
                    tx.send(Control::Reload).unwrap();
                    settle().await;
                    out.push(std::mem::take(&mut *log.lock().unwrap()));
                }
                // No signal: only the loop's own wake-up at the deadline can unbind now.
                tokio::time::sleep(unbind_delay).await;
                out.push(std::mem::take(&mut *log.lock().unwrap()));
                tx.send(Control::Stop).unwrap();
                out
            };
            let (result, out) = tokio::join!(run, drive);
            result.unwrap();
            out
        }

        #[tokio::test(flavor = "current_thread", start_paused = true)]
        async fn reload_announces_what_was_added_and_keeps_what_is_still_wanted() {
            let steps = script(
                &["192.0.2.10"],
                vec![
                    // An address added to lo: announced; the old route is not touched.
                    Ok(vec!["192.0.2.10", "2001:db8:1:100::1"]),
                    // A second address in the same /64: the same route, nothing to do.
                    Ok(vec!["192.0.2.10", "2001:db8:1:100::1", "2001:db8:1:100::2"]),
                    // The first of the two removed: the /64 is still wanted.
                    Ok(vec!["192.0.2.10", "2001:db8:1:100::2"]),
                    // Discovery failing keeps everything.
                    Err(AgentError::Interfaces(BindError::InterfaceNotFound {
                        interface: "lo".into(),
                    })),
                    // The IPv4 address removed: withdrawn (nothing to unbind: not ours).
                    Ok(vec!["2001:db8:1:100::2"]),
                    // Nothing left.
                    Ok(vec![]),
                ],
                Duration::ZERO,
            )
            .await;
            let bind = |a: &str| Op::Bind(a.parse().unwrap());
            assert_eq!(
                steps,
                vec![
                    vec![
                        bind("192.0.2.10"),
                        Op::Announce("192.0.2.10/32 65000:1".into())
                    ],
                    vec![
                        bind("2001:db8:1:100::1"),
                        Op::Announce("2001:db8:1:100::/64 65000:1".into())
                    ],
                    vec![],
                    vec![],
                    vec![],
                    vec![
                        Op::Withdraw("192.0.2.10/32".into()),
                        Op::Unbind("192.0.2.10".parse().unwrap())
                    ],
                    vec![
                        Op::Withdraw("2001:db8:1:100::/64".into()),
                        Op::Unbind("2001:db8:1:100::1".parse().unwrap())
                    ],
                    vec![],
                ]
            );
        }

        #[tokio::test(flavor = "current_thread", start_paused = true)]
        async fn a_new_address_does_not_wait_for_the_unbind_delay_of_a_removed_one() {
            let steps = script(
                &["192.0.2.10"],
                // One address replaced by another.
                vec![Ok(vec!["198.51.100.7"])],
                Duration::from_secs(2),
            )
            .await;
            let ip = |a: &str| a.parse::<IpAddr>().unwrap();
            assert_eq!(
                steps,
                vec![
                    vec![
                        Op::Bind(ip("192.0.2.10")),
                        Op::Announce("192.0.2.10/32 65000:1".into())
                    ],
                    // The new address is bound and announced at once; the old one is
                    // withdrawn and stays bound for the delay.
                    vec![
                        Op::Withdraw("192.0.2.10/32".into()),
                        Op::Bind(ip("198.51.100.7")),
                        Op::Announce("198.51.100.7/32 65000:1".into())
                    ],
                    // The loop wakes at the deadline by itself.
                    vec![Op::Unbind(ip("192.0.2.10"))],
                ]
            );
        }
    }
}
