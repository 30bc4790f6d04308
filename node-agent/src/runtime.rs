//! Process plumbing shared by the Kubernetes and the standalone mode: the speaker's settings
//! from the flags, the next hop, signals, the HTTP server.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;

use crate::bgp::fsm::FsmConfig;
use crate::config::{router_id_from, CommonArgs, ConfigError};
use crate::http::{self, Shared};
use crate::speaker::{SpeakerConfig, SpeakerError};

/// Why the agent cannot run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot connect to Kubernetes: {0}")]
    Kube(#[source] kube::Error),
    #[error("cannot read Node {node}: {source}")]
    Node {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Dcid(#[from] crate::dcid::DcidError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Speaker(#[from] SpeakerError),
    #[error("cannot set up the address binder: {0}")]
    Binder(String),
    #[error("cannot serve HTTP on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find this node's global IPv6 address toward {peer}: {reason}; set --next-hop")]
    NextHop { peer: SocketAddr, reason: String },
    #[error("the {0} cache stopped before it synced")]
    Cache(&'static str),
    #[error("no address to announce: none given with --address and none found on {0}")]
    NoAddresses(String),
    #[error("no address to announce: every one is refused: {0}")]
    AllAddressesRefused(String),
    #[error("cannot list interface addresses: {0}")]
    Interfaces(#[source] crate::binder::BindError),
    /// Withdraw, CEASE and unbind did not finish within the shutdown timeout: routes or
    /// addresses may be left behind, so the exit status must say so.
    #[error("shutdown did not finish within {0:?}; routes or addresses may be left behind")]
    ShutdownTimeout(std::time::Duration),
}

/// The node's address toward `peer` as the kernel would pick it (a connected UDP socket sends
/// nothing; it only asks the routing table).
pub fn source_toward(peer: SocketAddr) -> Result<IpAddr, String> {
    let bind: SocketAddr = if peer.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    s.connect(peer).map_err(|e| e.to_string())?;
    s.local_addr().map(|a| a.ip()).map_err(|e| e.to_string())
}

/// The next hop: `--next-hop`, else an IPv6 `--source-address`, else the kernel's source
/// address toward the first route server.
pub fn next_hop(common: &CommonArgs, peers: &[SocketAddr]) -> Result<Ipv6Addr, AgentError> {
    if let Some(nh) = common.next_hop {
        return Ok(nh);
    }
    if let Some(IpAddr::V6(a)) = common.source_address {
        return Ok(a);
    }
    let Some(peer) = peers.first().copied() else {
        return Err(AgentError::NextHop {
            peer: (Ipv6Addr::UNSPECIFIED, 179).into(),
            reason: "no route servers configured".into(),
        });
    };
    match source_toward(peer) {
        Ok(IpAddr::V6(a)) if !a.is_loopback() && !a.is_unspecified() => Ok(a),
        Ok(other) => Err(AgentError::NextHop {
            peer,
            reason: format!("the kernel's source address is {other}, not a global IPv6 address"),
        }),
        Err(reason) => Err(AgentError::NextHop { peer, reason }),
    }
}

/// The sessions' source addresses: `--source-address`, and the kernel's choice toward each
/// route server (asking the routing table; nothing is sent).
pub fn session_sources(common: &CommonArgs, peers: &[SocketAddr]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = common.source_address.into_iter().collect();
    out.extend(peers.iter().filter_map(|p| source_toward(*p).ok()));
    out.sort();
    out.dedup();
    out
}

/// The speaker's settings from the flags. The router ID is `--router-id`, else `node_ipv4`
/// (an IPv4 address of the node), else the low 32 bits of the next hop.
pub fn speaker_config(
    common: &CommonArgs,
    peers: Vec<SocketAddr>,
    next_hop: Ipv6Addr,
    node_ipv4: Option<std::net::Ipv4Addr>,
) -> SpeakerConfig {
    SpeakerConfig {
        peers,
        source: common.source_address,
        multihop_ttl: Some(common.multihop_ttl),
        fsm: FsmConfig {
            local_as: common.local_asn,
            peer_as: common.peer_asn,
            router_id: common
                .router_id
                .or(node_ipv4)
                .unwrap_or_else(|| router_id_from(next_hop)),
            hold_time: common.hold_time,
            connect_retry: common.connect_retry,
            ..FsmConfig::default()
        },
        next_hop,
        next_hop_v4: None,
    }
}

/// Starts the HTTP server.
pub async fn serve_http(addr: SocketAddr, shared: Arc<Shared>) -> Result<SocketAddr, AgentError> {
    let (local, _task) = http::serve(addr, shared)
        .await
        .map_err(|source| AgentError::Http { addr, source })?;
    tracing::info!(%local, "serving /metrics, /healthz, /readyz, /status");
    Ok(local)
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the agent");
            let _ = ctrl_c.await;
        }
    }
}
