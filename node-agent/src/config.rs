//! Command line and environment of `sharedip-node-agent`.
//!
//! Three subcommands: `run` (Kubernetes mode, the default), `standalone` (a drop-in for
//! `lelastic` on a plain Linode) and `status`. lelastic's flags keep their names and their
//! single-dash spelling: `-dcid 18` and `--dcid 18` both work ([`normalize_args`]), and a bare
//! lelastic command line (`sharedip-node-agent -dcid 18 -primary`) runs standalone.
//!
//! A standalone command line is read the way lelastic (Go's `flag` package) reads it, so a
//! systemd unit written for lelastic runs unchanged: `-primary=true` / `-primary=0` (every
//! spelling of `strconv.ParseBool`), `-dcid=0x12`, the last of a repeated flag wins, and parsing
//! stops at the first argument that is not a flag (the `&` some units end with) or after `--`;
//! what follows is ignored, with a warning.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand};
use sharedip_api::Role;

use crate::community::RoleCommunity;
use crate::decision::BgpDefaults;

/// Default pattern of the route servers' addresses: data-center id, then 1..=4.
pub const DEFAULT_NEIGHBOR_PATTERN: &str = "2600:3c0f:%d:34::%d";
/// Default HTTP address in Kubernetes mode: HTTPS, `/metrics` and `/status` behind
/// TokenReview + SubjectAccessReview, so it can listen on the node's addresses.
pub const DEFAULT_HTTP_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 9180);
/// Default HTTP address in standalone mode: plain HTTP without authentication, so loopback only.
pub const DEFAULT_STANDALONE_HTTP_ADDR: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9180);
/// Default Unix socket of the `status` subcommand (next to the default state file).
pub const DEFAULT_STATUS_SOCKET: &str = "/var/lib/sharedip/status.sock";

pub use sharedip_process::logging::LogFormat;

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
    #[arg(long, env = "DCID", value_parser = parse_dcid)]
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
    #[arg(long = "multihopttl", alias = "multihop-ttl", env = "MULTIHOP_TTL", default_value_t = 16, value_parser = parse_multihop_ttl)]
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

    /// How long the sessions retry every 1-2 s instead of on the backoff after this node's
    /// Linode is given a share, and after the agent starts: the route servers answer only
    /// once a share exists. 0 turns fast retries off.
    #[arg(long, env = "FAST_RETRY_WINDOW", default_value = "60s", value_parser = parse_duration)]
    pub fast_retry_window: Duration,

    /// How long a node without an established BGP session waits for Linode's route servers
    /// (they accept a Linode's sessions about 10-20 s after a share; a freshly booted node
    /// took 3-3.5 minutes): counted from its Linode's first share and from the agent's start.
    /// Meanwhile the status reason is AwaitingRouteServers instead of NoSessions, and /readyz
    /// waits for a session unless no address is shared with the Linode.
    #[arg(long, env = "ROUTE_SERVER_GRACE", default_value = "240s", value_parser = parse_duration)]
    pub route_server_grace: Duration,

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

    /// HTTP address for /metrics, /healthz, /readyz and /status. Kubernetes mode: HTTPS with
    /// /metrics and /status for authorized bearer tokens only, default 0.0.0.0:9180.
    /// Standalone: plain HTTP without authentication, default 127.0.0.1:9180.
    #[arg(long, env = "HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,

    /// Unix socket (mode 0600) where the `status` subcommand reads this agent's /status
    /// without a token. Empty: none.
    #[arg(long, env = "STATUS_SOCKET", default_value = DEFAULT_STATUS_SOCKET)]
    pub status_socket: PathBuf,

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

    /// PEM certificate (chain) of the HTTPS server, e.g. from a cert-manager Secret; re-read
    /// when it changes. Without it the agent generates a self-signed certificate at start.
    #[arg(long, env = "TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// How long a planned withdrawal (drain, deselection, a terminating readiness-gate pod, a
    /// cordon with --withdraw-on-cordon) keeps announcing until another node can take the
    /// traffic; then it withdraws anyway. 0 withdraws at once.
    #[arg(long, env = "HANDOVER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub handover_timeout: Duration,

    /// How old another node's share of the address must be before it counts as successor:
    /// Linode's route servers accept a newly shared Linode's route only after some seconds.
    #[arg(long, env = "PROPAGATION_MARGIN", default_value = "20s", value_parser = parse_duration)]
    pub propagation_margin: Duration,

    /// How long a successor must have announced a LoadBalancer Service's address before this
    /// node withdraws it in a planned move: the successor joins as soon as its new endpoint is
    /// ready, and kube-proxy there may not carry traffic to it yet. Twice kube-proxy's
    /// --min-sync-period (1 s by default) covers its next sync; raise it with that period.
    #[arg(long, env = "DATA_PATH_SETTLE", default_value = "2s", value_parser = parse_duration)]
    pub data_path_settle: Duration,

    /// With flow handover: how long a primary about to announce again (after a drain, a
    /// restart, a failure) waits for the secondaries carrying the traffic to hand their
    /// connections over; then it announces anyway and those connections reset. Bounded
    /// because a secondary whose agent died never answers. 0: never waits.
    #[arg(long, env = "TAKEOVER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub takeover_timeout: Duration,

    /// Withdraw (make-before-break) from a cordoned node (spec.unschedulable), so a node-pool
    /// recycle moves the address before the node goes away.
    #[arg(long, env = "WITHDRAW_ON_CORDON", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub withdraw_on_cordon: bool,

    /// Flow handover: planned moves of SharedIPs whose spec allows it keep established TCP
    /// connections, forwarded for a window through a tunnel between the two nodes (default:
    /// on; `false` turns it off). Left to its default, a node where it cannot be set up runs
    /// without it and says why; asked for explicitly, the agent refuses to start instead.
    #[arg(long, env = "FLOW_HANDOVER", action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub flow_handover: Option<bool>,

    /// UDP port of flow handover's tunnels (VXLAN), the same on every node; allow it between
    /// the nodes' IPv6 addresses in the Cloud Firewall. Not 4789 or 8472, which Calico and
    /// Cilium use.
    #[arg(long, env = "FLOW_HANDOVER_PORT", default_value_t = DEFAULT_FLOW_HANDOVER_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    pub flow_handover_port: u16,

    /// The interface the shared addresses' traffic arrives on (default: the one holding the
    /// BGP sessions' next hop).
    #[arg(long, env = "FLOW_HANDOVER_UPLINK")]
    pub flow_handover_uplink: Option<String>,

    #[command(flatten)]
    pub common: CommonArgs,
}

/// The default of `--flow-handover-port`.
pub const DEFAULT_FLOW_HANDOVER_PORT: u16 = 4799;

impl RunArgs {
    /// The HTTPS server's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.common.http_addr.unwrap_or(DEFAULT_HTTP_ADDR)
    }

    /// The wait of planned withdrawals.
    pub fn handover_settings(&self) -> crate::handover::HandoverSettings {
        crate::handover::HandoverSettings {
            timeout: self.handover_timeout,
            margin: self.propagation_margin,
            settle: self.data_path_settle,
            takeover_timeout: self.takeover_timeout,
        }
    }
}

/// `standalone`: lelastic's job without Kubernetes.
#[derive(Debug, Clone, Args)]
pub struct StandaloneArgs {
    /// Announce with the primary community (lelastic -primary; wins over -secondary, as in
    /// lelastic).
    #[arg(long)]
    pub primary: bool,

    /// Announce with the secondary community (lelastic -secondary).
    #[arg(long)]
    pub secondary: bool,

    /// JSON log lines (lelastic -logjson; the same as --log-format json).
    #[arg(long = "logjson")]
    pub log_json: bool,

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

    /// Arguments after the first non-flag argument (or after `--`), which lelastic ignores too.
    #[arg(skip)]
    pub ignored: Vec<String>,
}

impl StandaloneArgs {
    /// The role: -primary wins over -secondary, as in lelastic.
    pub fn role(&self) -> Role {
        if self.primary {
            Role::Primary
        } else {
            Role::Secondary
        }
    }

    /// The log format: -logjson or --log-format.
    pub fn log_format(&self) -> LogFormat {
        if self.log_json {
            LogFormat::Json
        } else {
            self.common.log_format
        }
    }

    /// The HTTP server's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.common
            .http_addr
            .unwrap_or(DEFAULT_STANDALONE_HTTP_ADDR)
    }
}

/// `status`: ask a running agent.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The agent's status socket (--status-socket of the agent). Default: the default socket
    /// when it exists, else --http-addr.
    #[arg(long, env = "STATUS_SOCKET", conflicts_with = "http_addr")]
    pub socket: Option<PathBuf>,

    /// The agent's plain-HTTP address (a standalone agent's --http-addr).
    #[arg(long)]
    pub http_addr: Option<SocketAddr>,

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

/// The flags lelastic has and our `run` mode does not: a command line without a subcommand
/// that uses one of them is a lelastic command line, run standalone.
const LELASTIC_ONLY: &[&str] = &["primary", "secondary", "send56", "allifs", "logjson"];

/// A command line prepared for clap: the arguments, and what a standalone command line
/// ignores after its flags (as Go's `flag` package does).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Normalized {
    /// The arguments for clap, subcommand included.
    pub args: Vec<OsString>,
    /// Ignored trailing arguments (standalone only).
    pub ignored: Vec<String>,
}

/// One flag of a subcommand: its canonical long name, whether it is a switch, whether it may
/// repeat (`--address`), and every name it answers to.
struct FlagSpec {
    long: String,
    switch: bool,
    repeats: bool,
    names: Vec<String>,
}

fn flag_specs(sub: &clap::Command) -> Vec<FlagSpec> {
    sub.get_arguments()
        .filter_map(|arg| {
            let long = arg.get_long()?.to_string();
            let mut names = vec![long.clone()];
            names.extend(
                arg.get_all_aliases()
                    .into_iter()
                    .flatten()
                    .map(str::to_string),
            );
            let action = arg.get_action();
            Some(FlagSpec {
                long,
                switch: !action.takes_values(),
                repeats: matches!(action, clap::ArgAction::Append),
                names,
            })
        })
        .collect()
}

/// Go's `strconv.ParseBool`, which `flag` uses for `-name=value` of a boolean flag.
pub fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)`, which `flag.Int` uses: an optional sign, then decimal,
/// `0x` hex, `0o` or leading-`0` octal, or `0b` binary, with `_` allowed between digits.
pub fn parse_go_int(s: &str) -> Option<i64> {
    let (negative, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = body.to_ascii_lowercase();
    let (radix, digits, prefixed) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d, true)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d, true)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d, true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..], true)
    } else {
        (10, lower.as_str(), false)
    };
    // Go accepts `_` only between digits, or right after a base prefix.
    let underscores_ok = {
        let mut prev_digit = prefixed;
        let mut ok = true;
        for c in digits.chars() {
            if c == '_' {
                ok &= prev_digit;
                prev_digit = false;
            } else {
                prev_digit = true;
            }
        }
        ok && prev_digit
    };
    let clean: String = digits.chars().filter(|&c| c != '_').collect();
    if clean.is_empty() || !underscores_ok || clean.starts_with(['+', '-']) {
        return None;
    }
    let magnitude = i128::from(u64::from_str_radix(&clean, radix).ok()?);
    i64::try_from(if negative { -magnitude } else { magnitude }).ok()
}

fn parse_dcid(s: &str) -> Result<u16, String> {
    let v = parse_go_int(s.trim()).ok_or_else(|| format!("{s:?} is not an integer"))?;
    u16::try_from(v)
        .ok()
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("{v} is not a data-center id (1..=65535)"))
}

fn parse_multihop_ttl(s: &str) -> Result<u32, String> {
    let v = parse_go_int(s.trim()).ok_or_else(|| format!("{s:?} is not an integer"))?;
    u32::try_from(v)
        .ok()
        .filter(|v| (1..=255).contains(v))
        .ok_or_else(|| format!("{v} is not in 1..=255"))
}

/// What a standalone command line sets, as Go's `flag` package leaves it: the last value of a
/// flag wins (every value of a repeating one is kept), and each switch is on or off.
#[derive(Default)]
struct GoFlags {
    values: Vec<(String, OsString)>,
    switches: Vec<(String, bool)>,
}

impl GoFlags {
    fn set_switch(&mut self, spec: &FlagSpec, on: bool) {
        self.switches.retain(|(l, _)| *l != spec.long);
        self.switches.push((spec.long.clone(), on));
    }

    fn set_value(&mut self, spec: &FlagSpec, value: OsString) {
        if !spec.repeats {
            self.values.retain(|(l, _)| *l != spec.long);
        }
        self.values.push((spec.long.clone(), value));
    }

    /// Appends the flags to clap's arguments.
    fn write(self, out: &mut Vec<OsString>) {
        for (long, value) in self.values {
            // One token, so a value starting with '-' is never taken for a flag.
            let mut arg = OsString::from(format!("--{long}="));
            arg.push(value);
            out.push(arg);
        }
        out.extend(
            self.switches
                .into_iter()
                .filter(|(_, on)| *on)
                .map(|(long, _)| OsString::from(format!("--{long}"))),
        );
    }
}

/// A switch's `-name` (on) or `-name=<ParseBool value>`.
fn switch_value(sub: &clap::Command, name: &str, value: Option<&str>) -> Result<bool, clap::Error> {
    let Some(v) = value else {
        return Ok(true);
    };
    parse_go_bool(v).ok_or_else(|| {
        sub.clone().error(
            ErrorKind::InvalidValue,
            format!(
                "invalid boolean value {v:?} for -{name}: use 1, t, T, TRUE, true, True, 0, f, F, FALSE, false or False"
            ),
        )
    })
}

/// Reads a standalone command line as Go's `flag` package reads lelastic's: `-f`, `--f`,
/// `-f=v`, `-f v`; switches take only `-f` or `-f=<ParseBool value>`; the last of a repeated
/// flag wins; the first non-flag argument (or `--`) ends the flags and the rest is ignored.
/// Returns what was ignored.
fn normalize_standalone(
    sub: &clap::Command,
    tokens: &[OsString],
    out: &mut Vec<OsString>,
) -> Result<Vec<String>, clap::Error> {
    let specs = flag_specs(sub);
    let mut flags = GoFlags::default();
    let mut ignored = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let token = &tokens[i];
        i += 1;
        let Some(s) = token.to_str() else {
            // Not UTF-8: not one of our flags; clap reports it.
            out.push(token.clone());
            continue;
        };
        if s == "--" {
            ignored = lossy(&tokens[i..]);
            break;
        }
        if s.len() < 2 || !s.starts_with('-') {
            ignored = lossy(&tokens[i - 1..]);
            break;
        }
        let name = s.strip_prefix("--").unwrap_or(&s[1..]);
        if name.is_empty() || name.starts_with(['-', '=']) {
            return Err(sub
                .clone()
                .error(ErrorKind::UnknownArgument, format!("bad flag syntax: {s}")));
        }
        let (name, value) = match name.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (name, None),
        };
        if matches!(name, "h" | "help") {
            out.push("--help".into());
            continue;
        }
        let Some(spec) = specs.iter().find(|f| f.names.iter().any(|n| n == name)) else {
            // Unknown: clap says so, with suggestions.
            out.push(token.clone());
            continue;
        };
        if spec.switch {
            flags.set_switch(spec, switch_value(sub, name, value)?);
            continue;
        }
        let value: OsString = match (value, tokens.get(i)) {
            (Some(v), _) => v.into(),
            (None, Some(v)) => {
                i += 1;
                v.clone()
            }
            (None, None) => {
                // clap reports the missing value.
                out.push(format!("--{}", spec.long).into());
                continue;
            }
        };
        flags.set_value(spec, value);
    }
    flags.write(out);
    Ok(ignored)
}

fn lossy(tokens: &[OsString]) -> Vec<String> {
    tokens
        .iter()
        .map(|t| t.to_string_lossy().into_owned())
        .collect()
}

/// Whether a command line without a subcommand is lelastic's: one of [`LELASTIC_ONLY`]
/// appears among its flags (read as Go reads them, so a flag's value never counts).
fn is_lelastic(cmd: &clap::Command, tokens: &[OsString]) -> bool {
    let specs: Vec<FlagSpec> = cmd.get_subcommands().flat_map(flag_specs).collect();
    let mut i = 0;
    while let Some(s) = tokens.get(i).and_then(|t| t.to_str()) {
        i += 1;
        if s == "--" || s.len() < 2 || !s.starts_with('-') {
            return false;
        }
        let name = s.strip_prefix("--").unwrap_or(&s[1..]);
        let (name, has_value) = match name.split_once('=') {
            Some((n, _)) => (n, true),
            None => (name, false),
        };
        if LELASTIC_ONLY.contains(&name) {
            return true;
        }
        let takes_value = specs
            .iter()
            .find(|f| f.names.iter().any(|n| n == name))
            .is_some_and(|f| !f.switch);
        if takes_value && !has_value {
            i += 1;
        }
    }
    false
}

/// Rewrites lelastic's single-dash long flags (`-dcid 18`) to `--dcid 18`, and picks the
/// subcommand when none is given: `standalone` when a lelastic-only flag is present (a lelastic
/// command line), else `run`. A standalone command line is read as Go's `flag` package reads
/// it (see the module documentation).
pub fn normalize_args<I, T>(args: I) -> Result<Normalized, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let cmd = Cli::command();
    let mut args = args.into_iter().map(Into::into);
    let mut out: Vec<OsString> = args.next().into_iter().collect();
    let rest: Vec<OsString> = args.collect();
    let (sub, tokens) = pick_subcommand(&cmd, &rest);
    let sub_cmd = sub.and_then(|sub| cmd.get_subcommands().find(|s| s.get_name() == sub));
    let Some(sub_cmd) = sub_cmd else {
        out.extend(sub.map(OsString::from));
        out.extend(tokens.iter().cloned());
        return Ok(Normalized {
            args: out,
            ignored: Vec::new(),
        });
    };
    out.push(sub_cmd.get_name().into());
    if sub_cmd.get_name() == "standalone" {
        let ignored = normalize_standalone(sub_cmd, tokens, &mut out)?;
        return Ok(Normalized { args: out, ignored });
    }
    single_dash_longs(sub_cmd, tokens, &mut out);
    Ok(Normalized {
        args: out,
        ignored: Vec::new(),
    })
}

/// The subcommand a command line runs, and its arguments: the one named first; `standalone` or
/// `run` when the line starts with a flag (or is empty); none for a top-level `--help` or
/// `--version`, or an unknown word (clap reports it).
fn pick_subcommand<'a>(
    cmd: &'a clap::Command,
    rest: &'a [OsString],
) -> (Option<&'a str>, &'a [OsString]) {
    let first = rest.first().and_then(|a| a.to_str());
    if let Some(sub) = first.and_then(|f| cmd.get_subcommands().find(|s| s.get_name() == f)) {
        return (Some(sub.get_name()), &rest[1..]);
    }
    let asks_top_level =
        rest.len() == 1 && matches!(first, Some("--help" | "-h" | "--version" | "-V" | "help"));
    if !asks_top_level && (rest.is_empty() || first.is_some_and(|f| f.starts_with('-'))) {
        let sub = if is_lelastic(cmd, rest) {
            "standalone"
        } else {
            "run"
        };
        return (Some(sub), rest);
    }
    (None, rest)
}

/// `run` and `status`: clap's rules, with lelastic's single-dash spelling of our long flags.
fn single_dash_longs(sub: &clap::Command, tokens: &[OsString], out: &mut Vec<OsString>) {
    let longs: Vec<String> = flag_specs(sub)
        .into_iter()
        .flat_map(|f| f.names)
        .chain(["help".to_string(), "version".to_string()])
        .collect();
    let mut after_double_dash = false;
    for a in tokens {
        match a.to_str() {
            Some("--") => {
                after_double_dash = true;
                out.push(a.clone());
            }
            Some(s) if !after_double_dash && s.len() > 2 && s.starts_with('-') => {
                let rest = &s[1..];
                let name = rest.split('=').next().unwrap_or(rest);
                if !rest.starts_with('-') && longs.iter().any(|l| l == name) {
                    out.push(format!("-{s}").into());
                } else {
                    out.push(a.clone());
                }
            }
            _ => out.push(a.clone()),
        }
    }
}

/// Parses the process's command line with [`normalize_args`]; exits with clap's message and
/// status on an error, as clap does.
pub fn parse() -> Cli {
    try_parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
}

/// Parses a given command line with [`normalize_args`].
pub fn try_parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let normalized = normalize_args(args)?;
    let mut cli = Cli::try_parse_from(normalized.args)?;
    if let Command::Standalone(s) = &mut cli.command {
        if !s.primary && !s.secondary {
            let mut cmd = Cli::command();
            let sub = cmd.find_subcommand_mut("standalone").map(|c| c.clone());
            return Err(sub.unwrap_or(cmd).error(
                ErrorKind::MissingRequiredArgument,
                "use either -primary or -secondary",
            ));
        }
        s.ignored = normalized.ignored;
    }
    Ok(cli)
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
    fn role_is_required_and_primary_wins_as_in_lelastic() {
        let base = ["sharedip-node-agent", "standalone", "-dcid", "18"];
        let e = try_parse_from(base).unwrap_err();
        assert!(e.to_string().contains("-primary or -secondary"), "{e}");
        assert_eq!(
            standalone(&["-dcid", "18", "-primary", "-secondary"]).role(),
            Role::Primary
        );
        assert!(try_parse_from(base.iter().chain(&["-primary=false", "-secondary=0"])).is_err());
    }

    /// The command line of the systemd unit in Linode's failover guide: systemd passes `&` as
    /// an argument, and lelastic (Go's flag package) ignores everything from the first
    /// non-flag argument on.
    #[test]
    fn guide_unit_command_line() {
        let s = standalone(&["-dcid", "14", "-primary", "&"]);
        assert_eq!(s.common.dcid, Some(14));
        assert_eq!(s.role(), Role::Primary);
        assert_eq!(s.ignored, vec!["&".to_string()]);
        let s = standalone(&["-dcid", "14", "-secondary", "&"]);
        assert_eq!(s.role(), Role::Secondary);
        // -allifs after the role, as in other published units.
        let s = standalone(&["-dcid", "6", "-primary", "-allifs"]);
        assert!(s.all_ifs && s.ignored.is_empty());
    }

    #[test]
    fn go_booleans() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            let s = standalone(&[
                "-dcid",
                "14",
                &format!("-primary={t}"),
                &format!("--send56={t}"),
            ]);
            assert!(s.primary && s.send56, "{t}");
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            let s = standalone(&["-dcid", "14", &format!("-primary={f}"), "-secondary"]);
            assert_eq!(s.role(), Role::Secondary, "{f}");
            let s = standalone(&["-dcid", "14", "-primary", &format!("-allifs={f}")]);
            assert!(!s.all_ifs, "{f}");
        }
        for bad in ["yes", "on", "", "tRuE", "2"] {
            let e = try_parse_from(["x", "-dcid", "14", &format!("-primary={bad}")]).unwrap_err();
            assert!(
                e.to_string().contains("invalid boolean value"),
                "{bad}: {e}"
            );
        }
        // The last occurrence wins.
        let s = standalone(&["-dcid", "14", "-primary", "-primary=false", "-secondary"]);
        assert_eq!(s.role(), Role::Secondary);
        // A switch never takes the next argument: as in Go, `false` ends the flags.
        let s = standalone(&["-primary", "false", "-dcid", "14"]);
        assert!(s.primary);
        assert_eq!(s.common.dcid, None);
        assert_eq!(s.ignored, vec!["false", "-dcid", "14"]);
    }

    #[test]
    fn logjson_selects_json_logs() {
        assert_eq!(
            standalone(&["-dcid", "14", "-primary", "-logjson"]).log_format(),
            LogFormat::Json
        );
        assert_eq!(
            standalone(&["-dcid", "14", "-primary", "-logjson=false"]).log_format(),
            LogFormat::Text
        );
        assert_eq!(
            standalone(&["-primary", "--log-format", "json"]).log_format(),
            LogFormat::Json
        );
    }

    #[test]
    fn flags_end_at_the_first_non_flag_or_double_dash() {
        let s = standalone(&["-dcid", "14", "-primary", "--", "-secondary", "x"]);
        assert!(!s.secondary);
        assert_eq!(s.ignored, vec!["-secondary", "x"]);
        let s = standalone(&["-dcid", "14", "-secondary", "extra", "-primary"]);
        assert_eq!(s.role(), Role::Secondary);
        assert_eq!(s.ignored, vec!["extra", "-primary"]);
        // A lone "-" is not a flag either.
        let s = standalone(&["standalone", "-secondary", "-", "-primary"]);
        assert_eq!(s.role(), Role::Secondary);
        assert_eq!(s.ignored, vec!["-", "-primary"]);
        // Bad syntax is an error, as in Go.
        for bad in ["---primary", "-=x", "--=x"] {
            assert!(try_parse_from(["x", "-primary", bad]).is_err(), "{bad}");
        }
        // Unknown flags are errors, not ignored.
        assert!(try_parse_from(["x", "-primary", "-bogus"]).is_err());
    }

    #[test]
    fn values_as_go_reads_them() {
        // A repeated value flag: the last wins; a value may start with '-'.
        let s = standalone(&["-dcid", "14", "-dcid=15", "-primary"]);
        assert_eq!(s.common.dcid, Some(15));
        let s = standalone(&["-primary", "-neighborpattern", "-%d-%d", "-dcid", "2"]);
        assert_eq!(s.common.neighbor_pattern, "-%d-%d");
        // Integers in every base Go's flag.Int accepts.
        for v in [
            "18", "+18", "0x12", "0X12", "022", "0o22", "0b10010", "1_8", "0x_12",
        ] {
            assert_eq!(
                standalone(&["-primary", "-dcid", v]).common.dcid,
                Some(18),
                "{v}"
            );
        }
        for bad in [
            "08", "1__8", "_18", "18_", "0x", "-5", "0", "70000", "eighteen",
        ] {
            assert!(
                try_parse_from(["x", "-primary", "-dcid", bad]).is_err(),
                "{bad}"
            );
        }
        assert_eq!(
            standalone(&["-primary", "-multihopttl=0x10"])
                .common
                .multihop_ttl,
            16
        );
        // --address repeats and accumulates.
        let s = standalone(&["-primary", "--address", "192.0.2.10", "-address=192.0.2.11"]);
        assert_eq!(s.addresses.len(), 2);
    }

    #[test]
    fn go_integers() {
        assert_eq!(parse_go_int("0"), Some(0));
        assert_eq!(parse_go_int("-0x1f"), Some(-31));
        assert_eq!(parse_go_int("0_7"), Some(7));
        assert_eq!(parse_go_int("1_000"), Some(1000));
        assert_eq!(parse_go_int("-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_go_int("9223372036854775808"), None);
        assert_eq!(parse_go_int("+-1"), None);
        assert_eq!(parse_go_int(""), None);
        assert_eq!(parse_go_int("0b2"), None);
    }

    #[test]
    fn http_defaults_per_mode() {
        assert_eq!(
            standalone(&["-primary"]).http_addr(),
            "127.0.0.1:9180".parse().unwrap()
        );
        match parse(&["run", "--node-name", "n"]).command {
            Command::Run(r) => {
                assert_eq!(r.http_addr(), "0.0.0.0:9180".parse().unwrap());
                assert_eq!(r.tls_cert_file, None);
            }
            other => panic!("{other:?}"),
        }
        // Certificate and key go together.
        assert!(try_parse_from(["x", "run", "--node-name", "n", "--tls-cert-file", "c"]).is_err());
        assert!(try_parse_from([
            "x",
            "run",
            "--node-name",
            "n",
            "--tls-cert-file",
            "c",
            "--tls-key-file",
            "k"
        ])
        .is_ok());
    }

    #[test]
    fn handover_flags() {
        let run = |extra: &[&str]| {
            let mut args = vec!["run", "--node-name", "n"];
            args.extend_from_slice(extra);
            match parse(&args).command {
                Command::Run(r) => r,
                other => panic!("{other:?}"),
            }
        };
        let r = run(&[]);
        assert_eq!(r.handover_timeout, Duration::from_secs(30));
        assert_eq!(r.propagation_margin, Duration::from_secs(20));
        assert_eq!(r.data_path_settle, crate::handover::DATA_PATH_SETTLE);
        assert_eq!(r.takeover_timeout, Duration::from_secs(10));
        assert!(!r.withdraw_on_cordon);
        let r = run(&[
            "--handover-timeout",
            "0",
            "--propagation-margin",
            "1500ms",
            "--data-path-settle",
            "5s",
            "--takeover-timeout",
            "4s",
            "--withdraw-on-cordon",
        ]);
        assert_eq!(
            r.handover_settings(),
            crate::handover::HandoverSettings {
                timeout: Duration::ZERO,
                margin: Duration::from_millis(1500),
                settle: Duration::from_secs(5),
                takeover_timeout: Duration::from_secs(4),
            }
        );
        assert!(r.withdraw_on_cordon);
        assert!(!run(&["--withdraw-on-cordon=false"]).withdraw_on_cordon);
        assert!(run(&["-withdraw-on-cordon", "--interface", "lo"]).withdraw_on_cordon);
        for bad in [
            ["--handover-timeout", "soon"],
            ["--propagation-margin", "-1s"],
            ["--data-path-settle", "two seconds"],
            ["--takeover-timeout", "-3s"],
            ["--withdraw-on-cordon", "maybe"],
        ] {
            let mut args = vec!["x", "run", "--node-name", "n"];
            args.extend_from_slice(&bad);
            assert!(try_parse_from(args).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn run_is_the_default() {
        match parse(&["--node-name", "n1", "-dcid", "18"]).command {
            Command::Run(r) => {
                assert_eq!(r.node_name, "n1");
                assert_eq!(r.common.dcid, Some(18));
                assert_eq!(r.common.hold_time, 9);
                assert_eq!(r.common.connect_retry, Duration::from_secs(5));
                assert_eq!(r.common.fast_retry_window, Duration::from_secs(60));
                assert_eq!(r.common.route_server_grace, Duration::from_secs(240));
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
        let n = normalize_args(["x", "run", "--node-name", "-primary-node"]).unwrap();
        assert_eq!(n.args[3], OsString::from("-primary-node"));
        // Without a subcommand, a flag's value is no lelastic flag either.
        let n = normalize_args(["x", "--node-name", "-primary", "-dcid", "18"]).unwrap();
        assert_eq!(n.args[1], OsString::from("run"));
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
