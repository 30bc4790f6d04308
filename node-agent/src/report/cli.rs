//! `sharedip-node-agent status`: fetches `/status` from a running agent and prints its
//! sessions and prefixes as tables, like `gobgp neighbor`.
//!
//! It asks the agent's Unix socket (`--status-socket`, root only, no token needed, and it
//! works while the apiserver is down), or a standalone agent's plain-HTTP address. A
//! Kubernetes-mode agent's HTTP port is HTTPS with bearer-token authorization and is not used.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::config::{StatusArgs, DEFAULT_STANDALONE_HTTP_ADDR, DEFAULT_STATUS_SOCKET};
use crate::report::AgentReport;

/// Where the agent answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The agent's status socket.
    Socket(PathBuf),
    /// A plain-HTTP address (standalone mode).
    Http(SocketAddr),
}

impl Target {
    /// `--socket`, else `--http-addr`, else the default socket when it exists, else the
    /// standalone default address.
    pub fn from_args(args: &StatusArgs) -> Self {
        match (&args.socket, args.http_addr) {
            (Some(p), _) => Target::Socket(p.clone()),
            (None, Some(a)) => Target::Http(a),
            (None, None) if Path::new(DEFAULT_STATUS_SOCKET).exists() => {
                Target::Socket(DEFAULT_STATUS_SOCKET.into())
            }
            (None, None) => Target::Http(DEFAULT_STANDALONE_HTTP_ADDR),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Socket(p) => write!(f, "{}", p.display()),
            Target::Http(a) => write!(f, "http://{a}"),
        }
    }
}

/// Why the status could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot reach the agent at {target}: {source}")]
    Connect {
        target: Target,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent at {0} did not answer within 5 s")]
    Timeout(Target),
    #[error("the agent at {target} answered {status_line:?}")]
    Http { target: Target, status_line: String },
    #[error("the agent's /status is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
}

async fn get_status<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> std::io::Result<Vec<u8>> {
    s.write_all(b"GET /status HTTP/1.0\r\nHost: localhost\r\nAccept: application/json\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    Ok(buf)
}

/// GETs `/status` (plain HTTP/1.0 on the local agent; no client library needed).
pub async fn fetch(target: &Target) -> Result<String, StatusError> {
    let io = async {
        match target {
            Target::Socket(p) => get_status(UnixStream::connect(p).await?).await,
            Target::Http(a) => get_status(TcpStream::connect(a).await?).await,
        }
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .map_err(|_| StatusError::Timeout(target.clone()))?
        .map_err(|source| StatusError::Connect {
            target: target.clone(),
            source,
        })?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status_line = head.lines().next().unwrap_or_default().to_string();
    if status_line.split_whitespace().nth(1) != Some("200") {
        return Err(StatusError::Http {
            target: target.clone(),
            status_line,
        });
    }
    Ok(body.to_string())
}

/// Formats seconds as gobgp does: `hh:mm:ss`, with days in front when needed.
pub fn format_uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        s.join("  ").trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

fn title(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The report as two tables: sessions, then prefixes.
pub fn render(r: &AgentReport) -> String {
    let mut out = headline(r);
    out.push_str("\n\n");
    out.push_str(&table(
        &[
            "Peer",
            "AS",
            "Up/Down",
            "State",
            "Hold",
            "#Adv",
            "Sent",
            "Rcvd",
            "Last error",
        ],
        &peer_rows(r),
    ));
    out.push('\n');
    out.push_str(&table(
        &[
            "Prefix",
            "Address",
            "Community",
            "Role",
            "Name",
            "Bound",
            "Announced",
        ],
        &prefix_rows(r),
    ));
    out
}

/// Mode, node, dcid, local AS, next hop and router ID on one line.
fn headline(r: &AgentReport) -> String {
    let who = match (&r.node, r.dcid) {
        (Some(n), Some(d)) => format!("node {n}, dcid {d}, "),
        (Some(n), None) => format!("node {n}, "),
        (None, Some(d)) => format!("dcid {d}, "),
        (None, None) => String::new(),
    };
    let router_id = r
        .router_id
        .as_ref()
        .map(|id| format!(", router ID {id}"))
        .unwrap_or_default();
    format!(
        "{} mode, {who}local AS {}, next hop {}{router_id}",
        r.mode, r.local_as, r.next_hop
    )
}

fn peer_rows(r: &AgentReport) -> Vec<Vec<String>> {
    r.peers
        .iter()
        .map(|p| {
            vec![
                p.peer.clone(),
                p.peer_as.to_string(),
                p.uptime_seconds
                    .map_or_else(|| "never".into(), format_uptime),
                title(&p.state),
                p.hold_time.map_or_else(|| "-".into(), |h| h.to_string()),
                p.advertised.to_string(),
                p.updates_sent.to_string(),
                p.updates_received.to_string(),
                p.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect()
}

fn prefix_rows(r: &AgentReport) -> Vec<Vec<String>> {
    r.prefixes
        .iter()
        .map(|p| {
            vec![
                p.prefix.clone(),
                p.address.clone(),
                p.community.clone(),
                p.role.map_or_else(|| "-".into(), |r| r.to_string()),
                p.name.clone(),
                match (p.bound, p.configured_by_user) {
                    (true, _) => "yes",
                    (false, true) => "no (configured by the user)",
                    (false, false) => "no",
                }
                .into(),
                if p.announced { "yes" } else { "no" }.into(),
            ]
        })
        .collect()
}

/// Runs the subcommand: prints tables (or the JSON) to stdout.
pub async fn run(args: &StatusArgs) -> Result<(), StatusError> {
    let body = fetch(&Target::from_args(args)).await?;
    let report: AgentReport = serde_json::from_str(&body)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{PeerReport, PrefixReport};

    #[test]
    fn uptime() {
        assert_eq!(format_uptime(0), "00:00:00");
        assert_eq!(format_uptime(3725), "01:02:05");
        assert_eq!(format_uptime(90061), "1d 01:01:01");
    }

    #[test]
    fn renders_tables() {
        let r = AgentReport {
            mode: "kubernetes".into(),
            node: Some("n1".into()),
            dcid: Some(18),
            local_as: 65001,
            next_hop: "2001:db8::1".into(),
            router_id: Some("198.51.100.20".into()),
            peers: vec![PeerReport {
                peer: "2001:db8:18:34::1".into(),
                port: 179,
                peer_as: 65000,
                state: "established".into(),
                uptime_seconds: Some(61),
                hold_time: Some(9),
                advertised: 1,
                updates_sent: 2,
                updates_received: 0,
                established_count: 1,
                last_error: None,
            }],
            prefixes: vec![
                PrefixReport {
                    name: "web".into(),
                    address: "192.0.2.10".into(),
                    prefix: "192.0.2.10/32".into(),
                    community: "65000:1".into(),
                    role: Some(sharedip_api::Role::Primary),
                    bound: true,
                    configured_by_user: false,
                    announced: true,
                    bind_error: None,
                },
                PrefixReport {
                    name: "198.51.100.7".into(),
                    address: "198.51.100.7".into(),
                    prefix: "198.51.100.7/32".into(),
                    community: "65000:1".into(),
                    role: Some(sharedip_api::Role::Primary),
                    bound: false,
                    configured_by_user: true,
                    announced: true,
                    bind_error: None,
                },
            ],
        };
        let text = render(&r);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "kubernetes mode, node n1, dcid 18, local AS 65001, next hop 2001:db8::1, router ID \
             198.51.100.20"
        );
        assert!(lines[2].starts_with("Peer"), "{text}");
        assert!(
            lines[3].starts_with("2001:db8:18:34::1  65000  00:01:01  Established  9"),
            "{text}"
        );
        assert!(
            text.contains(
                "192.0.2.10/32    192.0.2.10    65000:1    Primary  web           yes                          yes"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "198.51.100.7/32  198.51.100.7  65000:1    Primary  198.51.100.7  no (configured by the user)  yes"
            ),
            "{text}"
        );
    }
}
