//! Process setup shared by the Kubernetes and the standalone mode: the agent's error, the
//! speaker's settings from the flags, the next hop, the binder, the signals (from
//! `sharedip-process`), the HTTP servers and the status socket.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;

use sharedip_process::signals::SignalError;
pub use sharedip_process::signals::{Control, Hangup, Signals};
use sharedip_secure_http::{Authorizer, CertSource};

use crate::bgp::fsm::FsmConfig;
use crate::config::{router_id_from, CommonArgs, ConfigError};
use crate::http::{self, AgentState};
use crate::speaker::{SpeakerConfig, SpeakerError};

/// Why the agent cannot run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot connect to Kubernetes: {0}")]
    Kube(#[source] kube::Error),
    #[error(transparent)]
    Dcid(#[from] crate::dcid::DcidError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Speaker(#[from] SpeakerError),
    #[error("--address: {0}")]
    Address(#[source] crate::standalone::StandaloneAddressError),
    #[error("cannot set up the address binder: {0}")]
    Binder(#[source] crate::binder::BindError),
    #[error("cannot serve HTTP on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up HTTPS: {0}")]
    Tls(#[source] sharedip_secure_http::TlsError),
    #[error("cannot serve the status socket {path}: {source}")]
    StatusSocket {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Signal(#[from] SignalError),
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
    #[error("flow handover: {0}")]
    FlowHandover(String),
    /// Withdraw, CEASE and unbind did not finish within the shutdown timeout: routes or
    /// addresses may be left behind, so the exit status must say so.
    #[error("shutdown did not finish within {0:?}; routes or addresses may be left behind")]
    ShutdownTimeout(std::time::Duration),
}

/// Opens the address binder on `--interface` with `--state-file` and `--address-marker`.
pub async fn open_binder(common: &CommonArgs) -> Result<crate::binder::Binder, AgentError> {
    crate::binder::Binder::new(crate::binder::BinderConfig {
        interface: common.interface.clone(),
        state_file: common.state_file.clone(),
        marker: common.address_marker,
    })
    .await
    .map_err(AgentError::Binder)
}

/// Removes what flow handover windows of an earlier run left on the node (the run was
/// killed, or the node rebooted mid-window with the state kept): its nf_tables tables, tunnel
/// devices and routing rules. Before anything is announced, so no leftover forwarder takes
/// traffic this run serves. A failure is logged, not fatal: the agent's own work does not
/// depend on it, and what cannot be listed cannot be removed either.
pub async fn remove_flow_handover_leftovers() {
    let removed = match rtnetlink::new_connection() {
        Ok((connection, handle, _)) => {
            let driver = tokio::spawn(connection);
            let removed = crate::flow_handover::windows::remove_leftovers(&handle).await;
            driver.abort();
            removed
        }
        Err(e) => {
            tracing::warn!(error = %e, "flow handover leftovers: no netlink socket; not checked");
            return;
        }
    };
    match removed {
        Ok(left) if left.is_empty() => {}
        Ok(left) => tracing::warn!(
            tables = ?left.tables,
            tunnels = ?left.tunnels,
            "removed flow handover leftovers of an earlier run"
        ),
        Err(e) => tracing::warn!(error = %e, "flow handover leftovers: not removed"),
    }
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
        fast_retry_window: common.fast_retry_window,
        fast_retry_at_start: true,
    }
}

/// Standalone mode: every endpoint over plain HTTP, without authentication; hence loopback
/// by default, and a warning otherwise.
pub async fn serve_plain_http(
    addr: SocketAddr,
    state: Arc<AgentState>,
) -> Result<SocketAddr, AgentError> {
    let (local, _task) = http::serve(addr, state)
        .await
        .map_err(|source| AgentError::Http { addr, source })?;
    if local.ip().is_loopback() {
        tracing::info!(%local, "serving /metrics, /healthz, /readyz, /status over plain HTTP");
    } else {
        tracing::warn!(%local, "serving /metrics and /status over plain HTTP without authentication on a non-loopback address: whoever reaches it can read them");
    }
    Ok(local)
}

/// Kubernetes mode: HTTPS; `/healthz` and `/readyz` open, `/metrics` and `/status` only for
/// bearer tokens the apiserver authorizes (TokenReview + SubjectAccessReview).
pub async fn serve_https(
    addr: SocketAddr,
    state: Arc<AgentState>,
    client: kube::Client,
    cert: &CertSource,
) -> Result<SocketAddr, AgentError> {
    let tls = sharedip_secure_http::server_config(cert).map_err(AgentError::Tls)?;
    let auth = Authorizer::new(client).map_err(AgentError::Tls)?;
    let local = http::serve_https(addr, state, tls, auth)
        .await
        .map_err(|source| AgentError::Http { addr, source })?;
    let cert = match cert {
        CertSource::SelfSigned { .. } => "self-signed".to_string(),
        CertSource::Files { cert, .. } => cert.display().to_string(),
    };
    tracing::info!(%local, %cert, "serving HTTPS: /healthz and /readyz open, /metrics and /status for authorized bearer tokens");
    Ok(local)
}

/// The `status` subcommand's Unix socket at `path` (none when `path` is empty). Another agent
/// answering on it is fatal (two agents on one node would fight over its routes); any other
/// failure only costs the `status` subcommand, so it is logged and the agent goes on.
pub async fn serve_status_socket(
    path: &Path,
    state: Arc<AgentState>,
) -> Result<Option<http::UnixSocket>, AgentError> {
    if path.as_os_str().is_empty() {
        return Ok(None);
    }
    match http::serve_unix(path, state).await {
        Ok(socket) => {
            tracing::info!(path = %path.display(), "serving /status for `sharedip-node-agent status` on a Unix socket");
            Ok(Some(socket))
        }
        Err(source) if source.kind() == std::io::ErrorKind::AddrInUse => {
            Err(AgentError::StatusSocket {
                path: path.to_path_buf(),
                source,
            })
        }
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot serve the status socket; `sharedip-node-agent status` will not reach this agent");
            Ok(None)
        }
    }
}
