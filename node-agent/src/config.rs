//! Command line and environment of `sharedip-node-agent`.
//!
//! Three subcommands: `run` (Kubernetes mode, the default), `standalone` (a drop-in for
//! `lelastic` on a plain Linode) and `status`. lelastic's flags keep their names and their
//! single-dash spelling: `-dcid 18` and `--dcid 18` both work ([`normalize_args`]), and a bare
//! lelastic command line (`sharedip-node-agent -dcid 18 -primary`) runs standalone.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::community::RoleCommunity;
use crate::decision::BgpDefaults;

/// Default pattern of the route servers' addresses: data-center id, then 1..=4.
pub const DEFAULT_NEIGHBOR_PATTERN: &str = "2600:3c0f:%d:34::%d";
/// Default HTTP address (/metrics, /healthz, /readyz, /status).
pub const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:9180";

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Binds shared IPs on this node and announces them to Linode's route servers over BGP.
#[derive(Debug, Clone, Parser)]
#[command(name = "sharedip-node-agent", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Kubernetes mode (the DaemonSet): follow this node's Node object and all SharedIPs.
    Run(RunArgs),
    /// Without Kubernetes, as a drop-in for lelastic: announce the given (or discovered) addresses.
    Standalone(StandaloneArgs),
    /// Print the BGP sessions and announced prefixes of a running agent.
    Status(StatusArgs),
}

/// Settings shared by `run` and `standalone`.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Data-center id for the route servers' addresses. In Kubernetes mode it overrides the id
    /// looked up from the node's topology.kubernetes.io/region label.
    #[arg(long, env = "DCID")]
    pub dcid: Option<u16>,

    /// Route server address pattern: the first %d is the data-center id, the second 1..=N.
    #[arg(long = "neighborpattern", alias = "neighbor-pattern", env = "NEIGHBOR_PATTERN", default_value = DEFAULT_NEIGHBOR_PATTERN)]
    pub neighbor_pattern: String,

    /// Number of route servers generated from the pattern.
    #[arg(long, env = "NEIGHBOR_COUNT", default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=16))]
    pub neighbor_count: u8,

    /// Explicit route server addresses (comma separated); replaces the pattern.
    #[arg(long = "neighbor", env = "NEIGHBORS", value_delimiter = ',')]
    pub neighbors: Vec<IpAddr>,

    /// TCP port of the route servers.
    #[arg(long, env = "PEER_PORT", default_value_t = 179)]
    pub peer_port: u16,

    /// eBGP multihop TTL (hop limit) of the sessions.
    #[arg(long = "multihopttl", alias = "multihop-ttl", env = "MULTIHOP_TTL", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=255))]
    pub multihop_ttl: u32,

    /// Local AS number.
    #[arg(long, env = "LOCAL_ASN", default_value_t = 65001)]
    pub local_asn: u32,

    /// AS number of the route servers.
    #[arg(long, env = "PEER_ASN", default_value_t = 65000)]
    pub peer_asn: u32,

    /// Community of the primary role: standard ASN:VALUE or large GLOBAL:LOCAL1:LOCAL2.
    #[arg(long, env = "PRIMARY_COMMUNITY", default_value = "65000:1")]
    pub primary_community: RoleCommunity,

    /// Community of the secondary role: standard ASN:VALUE or large GLOBAL:LOCAL1:LOCAL2.
    #[arg(long, env = "SECONDARY_COMMUNITY", default_value = "65000:2")]
    pub secondary_community: RoleCommunity,

    /// Proposed BGP hold time in seconds: 0 (no keepalives) or 3 and more. The keepalive
    /// interval is a third of the negotiated hold time.
    #[arg(long, env = "HOLD_TIME", default_value_t = 9, value_parser = parse_hold_time)]
    pub hold_time: u16,

    /// First connect-retry delay (doubled per failure, capped at 2 minutes), e.g. 5s.
    #[arg(long, env = "CONNECT_RETRY", default_value = "5s", value_parser = parse_duration)]
    pub connect_retry: Duration,

    /// Next hop of the announcements: this node's global IPv6 address. Default: the source
    /// address the kernel picks toward the first route server.
    #[arg(long, env = "NEXT_HOP")]
    pub next_hop: Option<Ipv6Addr>,

    /// Source address of the BGP sessions (default: the kernel's choice).
    #[arg(long, env = "SOURCE_ADDRESS")]
    pub source_address: Option<IpAddr>,

    /// BGP identifier. Default: an IPv4 address of the node (the Node's ExternalIP, else
    /// InternalIP; standalone: a global IPv4 address of an interface), else the low 32 bits of
    /// the next hop.
    #[arg(long, env = "ROUTER_ID")]
    pub router_id: Option<Ipv4Addr>,

    /// Interface that receives the shared addresses (lo, or a dummy interface).
    #[arg(long, env = "INTERFACE", default_value = "lo")]
    pub interface: String,

    /// File where the binder remembers which addresses it added.
    #[arg(
        long,
        env = "STATE_FILE",
        default_value = "/var/lib/sharedip/bound.json"
    )]
    pub state_file: PathBuf,

    /// How the addresses the agent binds are marked in the kernel, so they are recognised as
    /// its own after a crash: `native` sets the address protocol (Linux 6.1 and later) and
    /// the fallback marker (IPv4 label `<interface>:sharedip`, IPv6 metric 5458256);
    /// `fallback` sets only the latter, as an older kernel keeps it.
    #[arg(long, env = "ADDRESS_MARKER", value_enum, default_value = "native")]
    pub address_marker: crate::binder::MarkerMode,

    /// HTTP address for /metrics, /healthz, /readyz and /status.
    #[arg(long, env = "HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR)]
    pub http_addr: SocketAddr,

    /// Wait between withdrawing a prefix and unbinding its address, so traffic in flight
    /// still finds the address while the route servers move to another node.
    #[arg(long, env = "UNBIND_DELAY", default_value = "2s", value_parser = parse_duration)]
    pub unbind_delay: Duration,

    /// Upper bound of the SIGTERM path (withdraw, CEASE, unbind); keep it below the pod's
    /// terminationGracePeriodSeconds.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log level or filter (lelastic's -loglevel); RUST_LOG wins when set.
    #[arg(
        long = "loglevel",
        alias = "log-level",
        env = "LOG_LEVEL",
        default_value = "info"
    )]
    pub log_level: String,
}

/// `run`: Kubernetes mode.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// This node's name (the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,

    /// How often everything is re-evaluated even without a change (retries failed binds and
    /// status writes).
    #[arg(long, env = "RESYNC_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub resync_interval: Duration,

    #[command(flatten)]
    pub common: CommonArgs,
}

/// `standalone`: lelastic's job without Kubernetes.
#[derive(Debug, Clone, Args)]
pub struct StandaloneArgs {
    /// Announce with the primary community (lelastic -primary).
    #[arg(
        long,
        conflicts_with = "secondary",
        required_unless_present = "secondary"
    )]
    pub primary: bool,

    /// Announce with the secondary community (lelastic -secondary).
    #[arg(long)]
    pub secondary: bool,

    /// Announce IPv6 ranges as /56 instead of /64 (lelastic -send56).
    #[arg(long = "send56")]
    pub send56: bool,

    /// Discover addresses on every interface, not only the one of --interface (lelastic -allifs).
    #[arg(long = "allifs")]
    pub all_ifs: bool,

    /// Addresses to bind on --interface and announce (comma separated or repeated). Without
    /// it, the agent announces what is already configured, as lelastic does.
    #[arg(long = "address", env = "ADDRESSES", value_delimiter = ',')]
    pub addresses: Vec<IpAddr>,

    #[command(flatten)]
    pub common: CommonArgs,
}

/// `status`: ask a running agent.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The agent's HTTP address.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:9180")]
    pub http_addr: SocketAddr,

    /// Print the raw JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// A configuration that parses but cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("--neighborpattern {0:?} must contain two %d: the data-center id, then the route server number")]
    Pattern(String),
    #[error("--neighborpattern {pattern:?} with dcid {dcid} gives {result:?}, which is not an IP address")]
    PatternResult {
        pattern: String,
        dcid: u16,
        result: String,
    },
    #[error("no data-center id: set -dcid (or --neighbor with explicit route server addresses)")]
    NoDcid,
}

/// Rewrites lelastic's single-dash long flags (`-dcid 18`) to `--dcid 18`, and picks the
/// subcommand when none is given: `standalone` when a lelastic-only flag is present (a lelastic
/// command line), else `run`.
pub fn normalize_args<I, T>(args: I) -> Vec<OsString>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let cmd = Cli::command();
    let mut longs: Vec<String> = Vec::new();
    let subcommands: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .chain(["help".to_string()])
        .collect();
    for sub in cmd.get_subcommands() {
        for arg in sub.get_arguments() {
            longs.extend(
                arg.get_long_and_visible_aliases()
                    .into_iter()
                    .flatten()
                    .map(str::to_string),
            );
            if let Some(aliases) = arg.get_all_aliases() {
                longs.extend(aliases.into_iter().map(str::to_string));
            }
        }
    }
    longs.extend(["help".to_string(), "version".to_string()]);
    let mut out: Vec<OsString> = Vec::new();
    let mut after_double_dash = false;
    for (i, a) in args.into_iter().enumerate() {
        let a: OsString = a.into();
        if i == 0 || after_double_dash {
            out.push(a);
            continue;
        }
        let Some(s) = a.to_str() else {
            out.push(a);
            continue;
        };
        if s == "--" {
            after_double_dash = true;
            out.push(a);
            continue;
        }
        match s.strip_prefix('-') {
            Some(rest) if !rest.starts_with('-') && rest.len() > 1 => {
                let name = rest.split('=').next().unwrap_or(rest);
                if longs.iter().any(|l| l == name) {
                    out.push(format!("-{s}").into());
                    continue;
                }
                out.push(a);
            }
            _ => out.push(a),
        }
    }
    let has_subcommand = out
        .iter()
        .skip(1)
        .find(|a| !a.to_str().is_some_and(|s| s.starts_with('-')))
        .and_then(|a| a.to_str())
        .is_some_and(|s| subcommands.iter().any(|c| c == s));
    let first_is_flag = out
        .get(1)
        .and_then(|a| a.to_str())
        .is_some_and(|s| s.starts_with('-'));
    let asks_top_level = out
        .iter()
        .skip(1)
        .any(|a| matches!(a.to_str(), Some("--help" | "-h" | "--version" | "-V")))
        && out.len() == 2;
    if !has_subcommand && !asks_top_level && (first_is_flag || out.len() == 1) {
        let lelastic = out.iter().any(|a| {
            matches!(
                a.to_str(),
                Some("--primary" | "--secondary" | "--send56" | "--allifs")
            )
        });
        let sub = if lelastic { "standalone" } else { "run" };
        out.insert(1, sub.into());
    }
    out
}

/// Parses the process's command line with [`normalize_args`].
pub fn parse() -> Cli {
    Cli::parse_from(normalize_args(std::env::args_os()))
}

/// Parses a given command line with [`normalize_args`] (tests).
pub fn try_parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    Cli::try_parse_from(normalize_args(args))
}

impl CommonArgs {
    /// The route servers: `--neighbor` if given, else the pattern with `dcid` and 1..=count.
    pub fn peers(&self, dcid: Option<u16>) -> Result<Vec<SocketAddr>, ConfigError> {
        let ips = if self.neighbors.is_empty() {
            let dcid = dcid.ok_or(ConfigError::NoDcid)?;
            neighbors_from_pattern(&self.neighbor_pattern, dcid, self.neighbor_count)?
        } else {
            self.neighbors.clone()
        };
        Ok(ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, self.peer_port))
            .collect())
    }

    /// The community and ASN defaults that decisions use.
    pub fn bgp_defaults(&self) -> BgpDefaults {
        BgpDefaults {
            primary_community: self.primary_community,
            secondary_community: self.secondary_community,
            local_asn: self.local_asn,
            peer_asn: self.peer_asn,
        }
    }
}

/// lelastic's `fmt.Sprintf(pattern, dcid, i)` for i in 1..=count.
pub fn neighbors_from_pattern(
    pattern: &str,
    dcid: u16,
    count: u8,
) -> Result<Vec<IpAddr>, ConfigError> {
    if pattern.matches("%d").count() != 2 {
        return Err(ConfigError::Pattern(pattern.to_string()));
    }
    (1..=count)
        .map(|i| {
            let s = pattern
                .replacen("%d", &dcid.to_string(), 1)
                .replacen("%d", &i.to_string(), 1);
            s.parse().map_err(|_| ConfigError::PatternResult {
                pattern: pattern.to_string(),
                dcid,
                result: s,
            })
        })
        .collect()
}

/// A default router id from the next hop's low 32 bits (never 0.0.0.0).
pub fn router_id_from(next_hop: Ipv6Addr) -> Ipv4Addr {
    let o = next_hop.octets();
    let id = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if id.is_unspecified() {
        Ipv4Addr::new(0, 0, 0, 1)
    } else {
        id
    }
}

fn parse_hold_time(s: &str) -> Result<u16, String> {
    let v: u16 = s
        .trim()
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if v == 1 || v == 2 {
        return Err(format!(
            "hold time {v} s is invalid: use 0 (no keepalives) or at least 3 (RFC 4271)"
        ));
    }
    Ok(v)
}

pub use sharedip_api::duration::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        try_parse_from(std::iter::once("sharedip-node-agent").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn standalone(args: &[&str]) -> StandaloneArgs {
        match parse(args).command {
            Command::Standalone(s) => s,
            other => panic!("{args:?} gave {other:?}"),
        }
    }

    #[test]
    fn lelastic_command_line_runs_standalone() {
        let s = standalone(&["-dcid", "18", "-primary", "-send56", "-allifs"]);
        assert_eq!(s.common.dcid, Some(18));
        assert!(s.primary && !s.secondary && s.send56 && s.all_ifs);
        assert_eq!(s.common.neighbor_pattern, DEFAULT_NEIGHBOR_PATTERN);
        assert_eq!(s.common.multihop_ttl, 16);
        let s = standalone(&[
            "-dcid=14",
            "-secondary",
            "-neighborpattern",
            "2001:db8:%d:34::%d",
            "-multihopttl",
            "10",
        ]);
        assert_eq!(s.common.dcid, Some(14));
        assert!(s.secondary && !s.primary);
        assert_eq!(s.common.neighbor_pattern, "2001:db8:%d:34::%d");
        assert_eq!(s.common.multihop_ttl, 10);
    }

    #[test]
    fn single_and_double_dash_agree() {
        let a = standalone(&["standalone", "-dcid", "18", "-primary", "-hold-time", "3"]);
        let b = standalone(&[
            "standalone",
            "--dcid",
            "18",
            "--primary",
            "--hold-time",
            "3",
        ]);
        assert_eq!(a.common.dcid, b.common.dcid);
        assert_eq!(a.common.hold_time, 3);
        assert_eq!(b.common.hold_time, 3);
        assert_eq!(a.primary, b.primary);
    }

    #[test]
    fn standalone_extras() {
        let s = standalone(&[
            "standalone",
            "--dcid",
            "18",
            "--secondary",
            "--address",
            "192.0.2.10,2001:db8:1:2::1",
            "--address",
            "198.51.100.7",
            "--interface",
            "dummy0",
            "--primary-community",
            "63949:1:1",
            "--secondary-community",
            "63949:1:2",
        ]);
        assert_eq!(s.addresses.len(), 3);
        assert_eq!(s.common.interface, "dummy0");
        assert_eq!(s.common.secondary_community.to_string(), "63949:1:2");
        assert_eq!(
            s.common.bgp_defaults().primary_community.to_string(),
            "63949:1:1"
        );
    }

    #[test]
    fn role_is_required_and_exclusive() {
        let base = ["sharedip-node-agent", "standalone", "-dcid", "18"];
        assert!(try_parse_from(base).is_err());
        assert!(try_parse_from(base.iter().chain(&["-primary", "-secondary"])).is_err());
    }

    #[test]
    fn run_is_the_default() {
        match parse(&["--node-name", "n1", "-dcid", "18"]).command {
            Command::Run(r) => {
                assert_eq!(r.node_name, "n1");
                assert_eq!(r.common.dcid, Some(18));
                assert_eq!(r.common.hold_time, 9);
                assert_eq!(r.common.connect_retry, Duration::from_secs(5));
                assert_eq!(r.common.local_asn, 65001);
                assert_eq!(r.common.peer_asn, 65000);
                assert_eq!(r.common.primary_community, RoleCommunity::PRIMARY);
                assert_eq!(r.common.interface, "lo");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&["run", "--node-name", "n1"]).command,
            Command::Run(_)
        ));
        assert!(matches!(parse(&["status", "--json"]).command, Command::Status(s) if s.json));
    }

    #[test]
    fn hold_time_rules() {
        assert!(try_parse_from(["x", "run", "--node-name", "n", "--hold-time", "2"]).is_err());
        assert!(try_parse_from(["x", "run", "--node-name", "n", "--hold-time", "0"]).is_ok());
        assert!(try_parse_from(["x", "run", "--node-name", "n", "--hold-time", "3"]).is_ok());
    }

    #[test]
    fn values_that_look_like_flags_are_left_alone() {
        // A value after a flag is never rewritten, and unknown single-dash words pass through
        // to clap's own error.
        let n = normalize_args(["x", "run", "--node-name", "-primary-node"]);
        assert_eq!(n[3], OsString::from("-primary-node"));
        assert!(try_parse_from(["x", "run", "--node-name", "n", "-bogus"]).is_err());
    }

    #[test]
    fn pattern_and_peers() {
        let p = neighbors_from_pattern(DEFAULT_NEIGHBOR_PATTERN, 18, 4).unwrap();
        let want: Vec<IpAddr> = (1..=4)
            .map(|i| format!("2600:3c0f:18:34::{i}").parse().unwrap())
            .collect();
        assert_eq!(p, want);
        assert_eq!(
            neighbors_from_pattern("2001:db8:%d:34::%d", 7, 2).unwrap()[1],
            "2001:db8:7:34::2".parse::<IpAddr>().unwrap()
        );
        assert!(matches!(
            neighbors_from_pattern("2001:db8::%d", 7, 2),
            Err(ConfigError::Pattern(_))
        ));
        assert!(matches!(
            neighbors_from_pattern("zz%d:%d", 7, 2),
            Err(ConfigError::PatternResult { .. })
        ));
        let s = standalone(&[
            "-primary",
            "--neighbor",
            "::1,127.0.0.1",
            "--peer-port",
            "1179",
        ]);
        let peers = s.common.peers(None).unwrap();
        assert_eq!(peers[0], "[::1]:1179".parse().unwrap());
        assert_eq!(peers[1], "127.0.0.1:1179".parse().unwrap());
        let s = standalone(&["-primary"]);
        assert_eq!(s.common.peers(None), Err(ConfigError::NoDcid));
        assert_eq!(s.common.peers(Some(2)).unwrap().len(), 4);
    }

    #[test]
    fn router_id_default() {
        assert_eq!(
            router_id_from("2001:db8::c000:201".parse().unwrap()),
            Ipv4Addr::new(192, 0, 2, 1)
        );
        assert_eq!(
            router_id_from("2001:db8::".parse().unwrap()),
            Ipv4Addr::new(0, 0, 0, 1)
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5 parsecs").is_err());
    }
}
