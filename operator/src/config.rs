//! Command-line flags and their environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
pub use sharedip_process::logging::LogFormat;

/// Reconciles SharedIP resources into Linode IP Sharing.
#[derive(Debug, Clone, Parser)]
#[command(name = "sharedip-operator", version, about)]
pub struct Config {
    /// File holding the Linode API token (a mounted Secret); re-read when it changes.
    #[arg(
        long,
        env = "LINODE_TOKEN_FILE",
        default_value = "/etc/sharedip/linode/token"
    )]
    pub linode_token_file: PathBuf,

    /// Base URL of the Linode API.
    #[arg(long, env = "LINODE_API_URL", default_value = linode_client::DEFAULT_BASE_URL)]
    pub linode_api_url: String,

    /// Timeout of one Linode API request, e.g. 30s.
    #[arg(long, env = "LINODE_API_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub linode_api_timeout: Duration,

    /// Address of the HTTPS server: /healthz and /readyz open, /metrics for bearer tokens the
    /// apiserver authorizes (TokenReview + SubjectAccessReview for `get /metrics`).
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// PEM certificate (chain) of the HTTPS server, e.g. from a cert-manager Secret; re-read
    /// when it changes. Without it a self-signed certificate is generated at start.
    #[arg(long, env = "TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// Elect one active replica through a Lease (required when running more than one).
    #[arg(long, env = "LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// Name of the leader election Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "sharedip-operator")]
    pub lease_name: String,

    /// Namespace of the Lease and of the ledger ConfigMap (the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,

    /// This replica's identity in the Lease (the pod's name); defaults to the host name.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log level or filter, e.g. `debug` or `sharedip_operator=debug,info`; RUST_LOG wins when
    /// set.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// How long a share wave gathers changes before calling the Linode API, e.g. 250ms.
    #[arg(long, env = "SHARE_BATCH_WINDOW", default_value = "250ms", value_parser = parse_duration)]
    pub batch_window: Duration,

    /// How often every SharedIP is re-checked against the Linode API to repair drift.
    #[arg(long, env = "RESYNC_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub resync_interval: Duration,

    /// Hold-down of a node whose labels keep changing which SharedIPs select it: a change that
    /// follows the previous one within this time is held (the node keeps its previous
    /// membership) until its labels have been stable this long. A single change is never
    /// delayed. 0 disables damping.
    #[arg(long, env = "MEMBERSHIP_HOLD_DOWN", default_value = "10s", value_parser = parse_duration)]
    pub membership_hold_down: Duration,
    /// How long the address stays shared with the Linode of a node that no longer takes it
    /// (deselected, or its Node being deleted) while that node's agent still reports that it
    /// announces. The share goes as soon as the agent reports it withdrew, or its entry or Node
    /// is gone.
    #[arg(long, env = "UNSHARE_AFTER_WITHDRAW_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub unshare_after_withdraw_timeout: Duration,
    /// This cluster's identity, which keeps "ours" exact when several clusters share a Linode
    /// account: it names the ledger of the Linodes that received this cluster's addresses.
    /// Lower-case letters, digits and '-', at most 63 characters. Default: the UID of the
    /// kube-system namespace.
    #[arg(long, env = "CLUSTER_ID")]
    pub cluster_id: Option<String>,

    /// How often the leader sweeps shares no SharedIP wants from the Linodes in the ledger (it
    /// also sweeps once when it becomes leader), e.g. 10m.
    #[arg(long, env = "SWEEP_INTERVAL", default_value = "10m", value_parser = parse_sweep_interval)]
    pub sweep_interval: Duration,

    /// Name of this installation's operator Deployment (in the pod's namespace), to tell an
    /// uninstall of this installation from one of an earlier installation of the release.
    #[arg(long, env = "OPERATOR_DEPLOYMENT")]
    pub operator_deployment: Option<String>,

    /// IP holder of a region, the Linode that owns the addresses the operator allocates for
    /// SharedIPs without spec.address: `auto` finds it by its label
    /// (sharedip-holder-<region>-<cluster id>) or creates it (an unbooted Nanode, billed
    /// monthly); `off` never creates one (SharedIPs without spec.address then report
    /// NoIPHolder unless --ip-holder-linode names one for their region).
    #[arg(long, env = "IP_HOLDER", value_enum, default_value = "auto")]
    pub ip_holder: IpHolderMode,

    /// An existing Linode to use as the IP holder of its region (repeatable, comma separated
    /// in the environment). Never a node of the cluster.
    #[arg(long, env = "IP_HOLDER_LINODES", value_delimiter = ',')]
    pub ip_holder_linode: Vec<u64>,

    /// Adopt the retired Linode CCM's IP holder of a region (label
    /// linode-ccm-ip-holder-<region>, or with -<suffix> when --ccm-holder-suffix is set) and
    /// its addresses, where this cluster has no holder of its own.
    #[arg(long, env = "ADOPT_CCM_HOLDERS", default_value_t = false, action = clap::ArgAction::Set)]
    pub adopt_ccm_holders: bool,

    /// The CCM's --ip-holder-suffix, if it was set.
    #[arg(long, env = "CCM_HOLDER_SUFFIX", default_value = "")]
    pub ccm_holder_suffix: String,

    /// Experimental, unverified on real Linode: allocate IPv4 addresses as Linode Reserved
    /// IPs (reserved in the region, tagged with the cluster id, assigned to the IP holder),
    /// so an address outlives its holder. The account needs access to Reserved IPs; without
    /// it allocations are refused (AllocationRefused), never made another way.
    #[arg(long, env = "EXPERIMENTAL_RESERVED_IPS", default_value_t = false, action = clap::ArgAction::Set)]
    pub experimental_reserved_ips: bool,

    /// Serve `type: LoadBalancer` Services of --load-balancer-class: each gets a failover
    /// address in `status.loadBalancer.ingress`, served by a SharedIP the operator makes.
    #[arg(long, env = "SERVICES", default_value_t = true, action = clap::ArgAction::Set)]
    pub services: bool,

    /// The `spec.loadBalancerClass` of the Services to serve. Linode's CCM leaves Services
    /// with a class alone.
    #[arg(long, env = "LOAD_BALANCER_CLASS", default_value = crate::service::DEFAULT_CLASS)]
    pub load_balancer_class: String,

    /// Also serve LoadBalancer Services without a class. Only for clusters without Linode's
    /// CCM (which serves those with NodeBalancers).
    #[arg(long, env = "SERVE_CLASSLESS_SERVICES", default_value_t = false, action = clap::ArgAction::Set)]
    pub serve_classless_services: bool,

    /// Nodes that announce a Service's address with the primary community when the Service
    /// has no `sharedip.io/primary-nodes` annotation (kubectl `-l` syntax, e.g.
    /// `pool=edge`). Without it every node announces, as equals.
    #[arg(long, env = "SERVICE_PRIMARY_NODES", value_parser = parse_node_selector)]
    pub service_primary_nodes: Option<LabelSelector>,

    /// Nodes that announce a Service's address with the secondary community when the Service
    /// has no selector annotation (kubectl `-l` syntax); needs --service-primary-nodes.
    #[arg(long, env = "SERVICE_SECONDARY_NODES", value_parser = parse_node_selector, requires = "service_primary_nodes")]
    pub service_secondary_nodes: Option<LabelSelector>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

fn parse_node_selector(s: &str) -> Result<LabelSelector, String> {
    crate::service::node_selector::parse(s).map_err(|e| e.to_string())
}

impl Config {
    /// The Service controller's settings, when it runs.
    pub fn service_settings(&self) -> Option<crate::service::ServiceSettings> {
        self.services.then(|| crate::service::ServiceSettings {
            class: self.load_balancer_class.clone(),
            serve_classless: self.serve_classless_services,
            primary_nodes: self.service_primary_nodes.clone(),
            secondary_nodes: self.service_secondary_nodes.clone(),
            ..crate::service::ServiceSettings::default()
        })
    }
}

/// `--ip-holder`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IpHolderMode {
    Auto,
    Off,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Unshares every address this cluster shared, removes the operator's finalizer from every
    /// SharedIP and keeps this installation's replicas from leading; releases no address (the
    /// Helm chart's pre-delete hook).
    Uninstall(UninstallArgs),
}

#[derive(Debug, Clone, Args)]
pub struct UninstallArgs {
    /// How long this installation's replicas stay stopped if the uninstall is not completed
    /// (their Deployment is not deleted), e.g. 10m.
    #[arg(long, env = "UNINSTALL_HOLD", default_value = "10m", value_parser = parse_duration)]
    pub hold: Duration,

    /// Longest wait for the leader to stop with nothing in flight, e.g. 60s.
    #[arg(long, env = "UNINSTALL_STEP_DOWN_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub step_down_timeout: Duration,

    /// Upper bound of the whole uninstall, e.g. 4m (keep it below the hook Job's deadline).
    #[arg(long, env = "UNINSTALL_TIMEOUT", default_value = "4m", value_parser = parse_duration)]
    pub timeout: Duration,
}

fn parse_sweep_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("{s:?}: the sweep interval must be at least 1s"));
    }
    Ok(d)
}

impl Config {
    /// Where the HTTPS server's certificate comes from.
    pub fn cert_source(&self) -> sharedip_secure_http::CertSource {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => sharedip_secure_http::CertSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ => sharedip_secure_http::CertSource::SelfSigned {
                names: vec![self.identity()],
            },
        }
    }

    pub fn identity(&self) -> String {
        self.identity
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| format!("sharedip-operator-{}", std::process::id()))
    }
}

pub use sharedip_api::duration::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn flags_parse() {
        let c = Config::try_parse_from([
            "sharedip-operator",
            "--leader-election",
            "false",
            "--batch-window",
            "100ms",
        ])
        .unwrap();
        assert!(!c.leader_election);
        assert_eq!(c.batch_window, Duration::from_millis(100));
        assert_eq!(c.membership_hold_down, Duration::from_secs(10));
        assert_eq!(c.unshare_after_withdraw_timeout, Duration::from_secs(60));
        let c =
            Config::try_parse_from(["sharedip-operator", "--membership-hold-down", "0"]).unwrap();
        assert_eq!(c.membership_hold_down, Duration::ZERO);
        assert!(c.command.is_none());
        assert_eq!(c.sweep_interval, Duration::from_secs(600));
    }

    #[test]
    fn log_format_and_level() {
        let c = Config::try_parse_from(["sharedip-operator"]).unwrap();
        assert_eq!(
            (c.log_format, c.log_level.as_str()),
            (LogFormat::Text, "info")
        );
        let c = Config::try_parse_from([
            "sharedip-operator",
            "--log-format",
            "json",
            "--log-level",
            "sharedip_operator=debug,info",
        ])
        .unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.log_level, "sharedip_operator=debug,info");
        assert!(Config::try_parse_from(["sharedip-operator", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn uninstall_subcommand_and_sweep_interval() {
        let c = Config::try_parse_from([
            "sharedip-operator",
            "--cluster-id",
            "prod-eu",
            "--sweep-interval",
            "30s",
            "uninstall",
            "--hold",
            "2m",
        ])
        .unwrap();
        assert_eq!(c.cluster_id.as_deref(), Some("prod-eu"));
        assert_eq!(c.sweep_interval, Duration::from_secs(30));
        match c.command {
            Some(Command::Uninstall(a)) => {
                assert_eq!(a.hold, Duration::from_secs(120));
                assert_eq!(a.step_down_timeout, Duration::from_secs(60));
            }
            other => panic!("{other:?}"),
        }
        let e = Config::try_parse_from(["sharedip-operator", "--sweep-interval", "0s"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 1s"), "{e}");
    }
}
