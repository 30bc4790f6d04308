//! A bridge from a network namespace to the kube-apiserver in the root namespace.
//!
//! The test control plane's apiserver listens on 127.0.0.1 of the root namespace, which a
//! process inside a node namespace cannot reach (each namespace has its own loopback). The
//! bridge is a TCP proxy whose listener is created on a thread that entered the node
//! namespace, so it binds 127.0.0.1:<port> *inside* that namespace, while its outbound
//! connections are made from the caller's tokio runtime in the root namespace. A socket
//! keeps the namespace it was created in, so one runtime drives both ends.
//!
//! The proxy is plain TCP: TLS runs end to end between the agent and the apiserver, whose
//! serving certificate names 127.0.0.1, so a kubeconfig that says
//! `https://127.0.0.1:<bridge port>` verifies as it would against the apiserver directly.
//! [`KubeBridge::write_kubeconfig`] writes that kubeconfig from the control plane's own.
//!
//! Nothing leaves loopback: the listener is on the namespace's 127.0.0.1 and the target is
//! the apiserver's 127.0.0.1 port. The proxy stops (and every proxied connection with it)
//! when the [`KubeBridge`] is dropped.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::netns::{Netns, NetnsError};

/// Why the bridge cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// Entering the namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The listener could not be created.
    #[error("cannot listen on 127.0.0.1:{port} in network namespace {netns}: {source}")]
    Listen {
        /// The namespace.
        netns: String,
        /// The requested port (0: any).
        port: u16,
        /// Why.
        source: std::io::Error,
    },
    /// Not called from within a tokio runtime.
    #[error("the bridge must be started from within a tokio runtime")]
    NoRuntime,
    /// The kubeconfig could not be read, changed or written.
    #[error("kubeconfig {path}: {reason}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// A running bridge (see the module docs); stops when dropped.
#[derive(Debug)]
pub struct KubeBridge {
    port: u16,
    target: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl KubeBridge {
    /// Listens on 127.0.0.1:`port` inside `ns` (0: a free port) and forwards every
    /// connection to `target` (e.g. the apiserver's `127.0.0.1:<port>`), connecting from the
    /// calling runtime's namespace. Must be called from within a tokio runtime that runs in
    /// the root namespace.
    pub fn start(ns: &Netns, port: u16, target: SocketAddr) -> Result<KubeBridge, BridgeError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BridgeError::NoRuntime)?;
        let listen_err = |source| BridgeError::Listen {
            netns: ns.name().to_owned(),
            port,
            source,
        };
        let std_listener = ns
            .in_namespace(|| {
                let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
                l.set_nonblocking(true)?;
                Ok::<_, std::io::Error>(l)
            })?
            .map_err(listen_err)?;
        let port = std_listener.local_addr().map_err(listen_err)?.port();
        let listener = {
            let _guard = runtime.enter();
            TcpListener::from_std(std_listener).map_err(listen_err)?
        };
        let netns = ns.name().to_owned();
        let task = runtime.spawn(accept_loop(listener, target, netns));
        Ok(KubeBridge { port, target, task })
    }

    /// The bridge's port on the namespace's 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where connections go.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// `https://127.0.0.1:<port>`: the apiserver's URL as seen from inside the namespace.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Writes a copy of `kubeconfig` (e.g. the control plane's admin kubeconfig) to `out`
    /// with every cluster's `server` replaced by [`KubeBridge::server_url`]. Credentials and
    /// the CA stay as they are (file paths or inline data); the file is written mode 0600.
    pub fn write_kubeconfig(&self, kubeconfig: &Path, out: &Path) -> Result<(), BridgeError> {
        let err = |path: &Path, reason: String| BridgeError::Kubeconfig {
            path: path.to_owned(),
            reason,
        };
        let text =
            std::fs::read_to_string(kubeconfig).map_err(|e| err(kubeconfig, e.to_string()))?;
        let mut doc: serde_yaml::Value =
            serde_yaml::from_str(&text).map_err(|e| err(kubeconfig, e.to_string()))?;
        let clusters = doc
            .get_mut("clusters")
            .and_then(serde_yaml::Value::as_sequence_mut)
            .ok_or_else(|| err(kubeconfig, "no clusters".into()))?;
        for c in clusters.iter_mut() {
            let cluster = c
                .get_mut("cluster")
                .and_then(serde_yaml::Value::as_mapping_mut)
                .ok_or_else(|| err(kubeconfig, "a cluster entry without `cluster`".into()))?;
            cluster.insert("server".into(), self.server_url().into());
        }
        let text = serde_yaml::to_string(&doc).map_err(|e| err(out, e.to_string()))?;
        write_private(out, &text).map_err(|e| err(out, e.to_string()))
    }
}

impl Drop for KubeBridge {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every proxied connection.
        self.task.abort();
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, netns: String) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((inbound, from)) => {
                    conns.spawn(proxy(inbound, from, target));
                }
                Err(error) => {
                    tracing::warn!(%netns, %error, "kube bridge: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            // Reap finished connections so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn proxy(mut inbound: TcpStream, from: SocketAddr, target: SocketAddr) {
    let mut outbound = match TcpStream::connect(target).await {
        Ok(s) => s,
        Err(error) => {
            tracing::warn!(%from, %target, %error, "kube bridge: cannot reach the apiserver");
            return;
        }
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    if let Err(error) = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await {
        tracing::debug!(%from, %target, %error, "kube bridge: connection ended");
    }
}
