//! The real `sharedip-node-agent` binary in a node network namespace against four real
//! route servers (BIRD 2; the standalone primary case also against GoBGP and FRR), in the
//! topology of `interop_common`: node 2001:db8:1::10, route servers 2001:db8:1:34::1..4
//! (neighbor pattern `2001:db8:%d:34::%d`, dcid 1).
//!
//! Standalone mode (lelastic's command line) and Kubernetes mode (`run`, against a real
//! kube-apiserver in the root namespace reached through [`sharedip_e2e::kubebridge`]).
//!
//! Root only (skipped with a message otherwise). Every wait is bounded; the agent process,
//! daemons and namespaces are removed by Drop guards on every path, and on failure the
//! agent's and the daemons' logs are printed.

// Test code: a panic is a failed test, and a scenario reads best in one piece.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod interop_common;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use interop_common::agent_binary::{agent_dir, AgentBinary};
use interop_common::{preflight, route, wait_routes, Lab, NodeSide, BOUND, NODE, PATTERN};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use sharedip_api::{NodeStatus, Role, SharedIP, DRAIN_ANNOTATION};
use sharedip_e2e::controlplane::ControlPlane;
use sharedip_e2e::kubebridge::KubeBridge;
use sharedip_e2e::netns::Netns;
use sharedip_e2e::routeserver::Flavor;
use sharedip_node_agent::bgp::session::Route;

/// Bound of the agent's SIGTERM path as the tests configure it (`--shutdown-timeout`),
/// and how long the test waits for the exit: that timeout plus a little for the process
/// to end (a bound, not a timing assertion: the path normally takes well under a second).
const SHUTDOWN_TIMEOUT: &str = "10s";
const EXIT_BOUND: Duration = Duration::from_secs(12);

/// Flags every test agent gets: quick reconnects so a route server that was not listening
/// yet is retried soon, and a short unbind delay (the order withdraw → unbind stays).
const COMMON_FLAGS: &[&str] = &[
    "--connect-retry",
    "1s",
    "--unbind-delay",
    "300ms",
    "--shutdown-timeout",
    SHUTDOWN_TIMEOUT,
];

/// The addresses on the namespace's `lo`, as `addr/len`.
fn lo_addrs(ns: &Netns) -> Vec<String> {
    dev_addrs(ns, "lo")
}

/// The addresses on `dev`, as `addr/len`.
fn dev_addrs(ns: &Netns, dev: &str) -> Vec<String> {
    ns.ip(&["-o", "addr", "show", "dev", dev])
        .expect("ip addr show")
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|t| *t == "inet" || *t == "inet6")?;
            w.next().map(str::to_owned)
        })
        .collect()
}

async fn wait_lo<N: NodeSide>(lab: &Lab<N>, addr: &str, present: bool) {
    lab.wait(
        &format!("{addr} {} lo", if present { "on" } else { "gone from" }),
        |lab| {
            let have = lo_addrs(&lab.node_ns);
            if have.iter().any(|a| a == addr) == present {
                Ok(())
            } else {
                Err(format!("lo has {have:?}"))
            }
        },
    )
    .await;
}

/// Starts the lab's route servers and the agent with `args` (plus [`COMMON_FLAGS`]).
fn lab_with_agent(flavor: Flavor, args: &[&str]) -> Lab<AgentBinary> {
    let mut lab = Lab::<AgentBinary>::topology(flavor, None);
    let mut all: Vec<&str> = args.to_vec();
    all.extend_from_slice(COMMON_FLAGS);
    let agent = AgentBinary::start(&lab.node_ns, &lab.rs_addrs, agent_dir(), &all, &[]);
    lab.node = Some(agent);
    lab
}

fn agent(lab: &mut Lab<AgentBinary>) -> &mut AgentBinary {
    lab.node.as_mut().expect("agent running")
}

/// SIGTERM: the process exits 0 within its shutdown timeout, every route server saw CEASE
/// (Administrative Shutdown) and holds no route of the node, and `addrs` left `lo`.
async fn sigterm_withdraws_ceases_unbinds(lab: &mut Lab<AgentBinary>, addrs: &[&str]) {
    let status = agent(lab).terminate(EXIT_BOUND);
    let status = status.unwrap_or_else(|| {
        panic!(
            "agent did not exit within {EXIT_BOUND:?} of SIGTERM\n{}",
            lab.logs()
        )
    });
    assert!(
        status.success(),
        "agent exit status {status}\n{}",
        lab.logs()
    );
    lab.wait("CEASE seen and routes gone at every route server", |lab| {
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
    // The agent has exited: what it bound must already be gone.
    let have = lo_addrs(&lab.node_ns);
    for a in addrs {
        assert!(!have.iter().any(|h| h == a), "{a} left on lo: {have:?}");
    }
}

/// The `status` table: four Established peers, and `prefix` with `community` and `role`,
/// bound and announced.
async fn wait_status_table(lab: &Lab<AgentBinary>, prefix: &str, community: &str, role: &str) {
    lab.wait("status table: 4 established peers and the prefix", |lab| {
        let text = lab.node().status_text()?;
        let established = text
            .lines()
            .filter(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.len() >= 4
                    && lab.rs_addrs.iter().any(|a| a.to_string() == w[0])
                    && w[1] == "65000"
                    && w[3] == "Established"
            })
            .count();
        if established != 4 {
            return Err(format!("{established} established peers in\n{text}"));
        }
        let found = text.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.len() == 7
                && w[0] == prefix
                && w[2] == community
                && w[3] == role
                && w[5] == "yes"
                && w[6] == "yes"
        });
        if !found {
            return Err(format!(
                "no bound+announced {prefix} {community} {role} in\n{text}"
            ));
        }
        if !text.contains(&format!("local AS 65001, next hop {NODE}")) {
            return Err(format!(
                "header without local AS / next hop {NODE}:\n{text}"
            ));
        }
        Ok(())
    })
    .await;
}

fn v4(community: (u16, u16)) -> Route {
    route("192.0.2.10/32", &[community], &[])
}

async fn standalone_primary(flavor: Flavor) {
    if !preflight(Some(flavor)) {
        return;
    }
    // lelastic's own command line, no subcommand, single-dash flags.
    let mut lab = lab_with_agent(
        flavor,
        &[
            "-dcid",
            "1",
            "-primary",
            "-neighborpattern",
            PATTERN,
            "--address",
            "192.0.2.10",
        ],
    );
    wait_lo(&lab, "192.0.2.10/32", true).await;
    lab.wait_all_established().await;
    wait_routes(&lab, &[(v4((65000, 1)), 200)]).await;
    wait_status_table(&lab, "192.0.2.10/32", "65000:1", "Primary").await;
    let text = lab.node().status_text().expect("status");
    assert!(text.starts_with("standalone mode, dcid 1, "), "{text}");

    sigterm_withdraws_ceases_unbinds(&mut lab, &["192.0.2.10/32"]).await;
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_primary_binds_announces_reports_and_stops_cleanly_bird() {
    standalone_primary(Flavor::Bird).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_primary_binds_announces_reports_and_stops_cleanly_gobgp() {
    standalone_primary(Flavor::Gobgp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_primary_binds_announces_reports_and_stops_cleanly_frr() {
    standalone_primary(Flavor::Frr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_secondary_send56() {
    if !preflight(Some(Flavor::Bird)) {
        return;
    }
    let mut lab = lab_with_agent(
        Flavor::Bird,
        &[
            "-dcid",
            "1",
            "-secondary",
            "-send56",
            "-neighborpattern",
            PATTERN,
            "--address",
            "192.0.2.10,2001:db8:1:200::1",
        ],
    );
    wait_lo(&lab, "192.0.2.10/32", true).await;
    wait_lo(&lab, "2001:db8:1:200::1/128", true).await;
    lab.wait_all_established().await;
    let v6 = route("2001:db8:1:200::/56", &[(65000, 2)], &[]);
    wait_routes(&lab, &[(v4((65000, 2)), 100), (v6, 100)]).await;
    wait_status_table(&lab, "2001:db8:1:200::/56", "65000:2", "Secondary").await;
    sigterm_withdraws_ceases_unbinds(&mut lab, &["192.0.2.10/32", "2001:db8:1:200::1/128"]).await;
    lab.finish().await;
}

/// The node's own addresses given as shared addresses: eth0's IPv4 address, and an IPv6
/// address inside eth0's /64 (whose /64 holds the next hop). Both are refused, logged at error
/// level and left untouched (not bound on lo, not announced), while a good address next to
/// them is announced. Given only refused addresses, the agent exits with an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_refuses_the_nodes_own_addresses() {
    if !preflight(Some(Flavor::Bird)) {
        return;
    }
    let mut lab = Lab::<AgentBinary>::topology(Flavor::Bird, None);
    lab.node_ns
        .ip(&["address", "add", "198.51.100.66/26", "dev", "eth0"])
        .expect("IPv4 on eth0");
    let eth0_before = dev_addrs(&lab.node_ns, "eth0");
    let lo_before = lo_addrs(&lab.node_ns);
    let mut args = vec![
        "-dcid",
        "1",
        "-primary",
        "-neighborpattern",
        PATTERN,
        "--address",
        "192.0.2.10,198.51.100.66,2001:db8:1::99",
    ];
    args.extend_from_slice(COMMON_FLAGS);
    lab.node = Some(AgentBinary::start(
        &lab.node_ns,
        &lab.rs_addrs,
        agent_dir(),
        &args,
        &[],
    ));
    lab.wait_all_established().await;
    wait_routes(&lab, &[(v4((65000, 1)), 200)]).await;
    wait_lo(&lab, "192.0.2.10/32", true).await;
    let lo = lo_addrs(&lab.node_ns);
    let mut want = lo_before.clone();
    want.push("192.0.2.10/32".into());
    want.sort();
    let mut have = lo.clone();
    have.sort();
    assert_eq!(have, want, "only the good address is bound on lo");
    assert_eq!(dev_addrs(&lab.node_ns, "eth0"), eth0_before, "eth0 touched");
    let report = lab.node().report().expect("status --json");
    let prefixes: Vec<&str> = report.prefixes.iter().map(|p| p.prefix.as_str()).collect();
    assert_eq!(prefixes, ["192.0.2.10/32"], "{report:?}");
    let log = lab.node().logs();
    for line in [
        "198.51.100.66 is this node's own address (configured on interface eth0)",
        "the announced prefix 2001:db8:1::/64 of 2001:db8:1::99 contains this node's own address \
         2001:db8:1::10",
    ] {
        let found: Vec<&str> = log.lines().filter(|l| l.contains(line)).collect();
        assert_eq!(found.len(), 1, "one line with {line:?} in\n{log}");
        assert!(
            found[0].contains("ERROR") && found[0].contains("AddressIsNodeAddress"),
            "{}",
            found[0]
        );
    }
    sigterm_withdraws_ceases_unbinds(&mut lab, &["192.0.2.10/32"]).await;
    assert_eq!(dev_addrs(&lab.node_ns, "eth0"), eth0_before, "eth0 touched");

    // Nothing but the node's own addresses: a clear error, nothing touched.
    let mut args = vec![
        "-dcid",
        "1",
        "-primary",
        "-neighborpattern",
        PATTERN,
        "--address",
        "198.51.100.66",
    ];
    args.extend_from_slice(COMMON_FLAGS);
    lab.node = Some(AgentBinary::start(
        &lab.node_ns,
        &lab.rs_addrs,
        agent_dir(),
        &args,
        &[],
    ));
    let status = agent(&mut lab)
        .wait_exit(EXIT_BOUND)
        .unwrap_or_else(|| panic!("agent did not exit\n{}", lab.logs()));
    assert!(!status.success(), "{}", lab.logs());
    let log = lab.node().logs();
    assert!(
        log.contains("every one is refused: 198.51.100.66 is this node's own address"),
        "{log}"
    );
    assert_eq!(lo_addrs(&lab.node_ns), lo_before);
    assert_eq!(dev_addrs(&lab.node_ns, "eth0"), eth0_before, "eth0 touched");
    lab.finish().await;
}

/// lelastic's discovery mode: the user's address on `lo` is announced, reported as not bound
/// by the agent ("configured by the user"), and left on `lo` after the agent stops. The router
/// ID is the node's public IPv4 address, not the low bits of its IPv6 next hop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_discovery_reports_the_users_address_as_not_bound() {
    if !preflight(Some(Flavor::Bird)) {
        return;
    }
    let mut lab = Lab::<AgentBinary>::topology(Flavor::Bird, None);
    lab.node_ns
        .ip(&["address", "add", "192.0.2.10/32", "dev", "lo"])
        .expect("user address on lo");
    // The node's public IPv4: the default router ID.
    lab.node_ns
        .ip(&["address", "add", "198.51.100.66/26", "dev", "eth0"])
        .expect("IPv4 on eth0");
    let mut args = vec!["-dcid", "1", "-primary", "-neighborpattern", PATTERN];
    args.extend_from_slice(COMMON_FLAGS);
    lab.node = Some(AgentBinary::start(
        &lab.node_ns,
        &lab.rs_addrs,
        agent_dir(),
        &args,
        &[],
    ));
    lab.wait_all_established().await;
    wait_routes(&lab, &[(v4((65000, 1)), 200)]).await;
    let report = lab.node().report().expect("status --json");
    assert_eq!(report.prefixes.len(), 1, "{report:?}");
    let p = &report.prefixes[0];
    assert!(p.announced && !p.bound && p.configured_by_user, "{p:?}");
    let text = lab.node().status_text().expect("status");
    assert!(
        text.lines()
            .any(|l| l.starts_with("192.0.2.10/32") && l.contains("no (configured by the user)")),
        "{text}"
    );
    assert!(
        text.starts_with(&format!(
            "standalone mode, dcid 1, local AS 65001, next hop {NODE}, router ID 198.51.100.66\n"
        )),
        "{text}"
    );
    sigterm_withdraws_ceases_unbinds(&mut lab, &[]).await;
    let have = lo_addrs(&lab.node_ns);
    assert!(
        have.iter().any(|a| a == "192.0.2.10/32"),
        "the user's address was removed: {have:?}"
    );
    lab.finish().await;
}

/// The leftovers of a crash in lelastic-style discovery mode: started with `--address A,B`,
/// SIGKILLed, restarted without `--address` (and with a fresh state file, so only the kernel
/// markers can tell). The restarted agent announces only what the user configured (C), removes
/// A and B from `lo` and leaves C there after a clean stop. `marker` is the
/// `--address-marker` flag, if any.
async fn crash_then_discovery(marker: Option<&str>) {
    if !preflight(Some(Flavor::Bird)) {
        return;
    }
    let mut lab = Lab::<AgentBinary>::topology(Flavor::Bird, None);
    // C, configured by the user, as lelastic's guide does.
    lab.node_ns
        .ip(&[
            "address",
            "add",
            "2001:db8:1:200::1/128",
            "dev",
            "lo",
            "nodad",
        ])
        .expect("user address on lo");
    let marker_flags: Vec<&str> = marker.map_or(vec![], |m| vec!["--address-marker", m]);
    let mut first: Vec<&str> = vec![
        "-dcid",
        "1",
        "-primary",
        "-neighborpattern",
        PATTERN,
        "--address",
        "192.0.2.10,2001:db8:1:100::1",
    ];
    first.extend_from_slice(&marker_flags);
    first.extend_from_slice(COMMON_FLAGS);
    lab.node = Some(AgentBinary::start(
        &lab.node_ns,
        &lab.rs_addrs,
        agent_dir(),
        &first,
        &[],
    ));
    wait_lo(&lab, "192.0.2.10/32", true).await;
    wait_lo(&lab, "2001:db8:1:100::1/128", true).await;
    lab.wait_all_established().await;
    let b = route("2001:db8:1:100::/64", &[(65000, 1)], &[]);
    wait_routes(&lab, &[(v4((65000, 1)), 200), (b, 200)]).await;

    // Crash: nothing withdrawn or unbound; the route servers drop the routes with the
    // sessions.
    agent(&mut lab).kill();
    wait_routes(&lab, &[]).await;
    let have = lo_addrs(&lab.node_ns);
    assert!(
        have.iter().any(|a| a == "192.0.2.10/32")
            && have.iter().any(|a| a == "2001:db8:1:100::1/128"),
        "the crash left A and B on lo: {have:?}"
    );

    // Restart in discovery mode, /56 as the user's C is a /56 range.
    let mut second: Vec<&str> = vec![
        "-dcid",
        "1",
        "-primary",
        "-send56",
        "-neighborpattern",
        PATTERN,
    ];
    second.extend_from_slice(&marker_flags);
    second.extend_from_slice(COMMON_FLAGS);
    lab.node = Some(AgentBinary::start(
        &lab.node_ns,
        &lab.rs_addrs,
        agent_dir(),
        &second,
        &[],
    ));
    lab.wait_all_established().await;
    let c = route("2001:db8:1:200::/56", &[(65000, 1)], &[]);
    wait_routes(&lab, &[(c, 200)]).await;
    wait_lo(&lab, "192.0.2.10/32", false).await;
    wait_lo(&lab, "2001:db8:1:100::1/128", false).await;
    let report = lab.node().report().expect("status --json");
    let prefixes: Vec<&str> = report.prefixes.iter().map(|p| p.prefix.as_str()).collect();
    assert_eq!(prefixes, ["2001:db8:1:200::/56"], "{report:?}");

    // A clean stop leaves the user's C, and nothing of ours.
    sigterm_withdraws_ceases_unbinds(&mut lab, &["192.0.2.10/32", "2001:db8:1:100::1/128"]).await;
    let have = lo_addrs(&lab.node_ns);
    assert!(
        have.iter().any(|a| a == "2001:db8:1:200::1/128"),
        "the user's address was removed: {have:?}"
    );
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_then_discovery_mode_cleans_up_by_the_native_marker() {
    crash_then_discovery(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_then_discovery_mode_cleans_up_by_the_fallback_marker() {
    crash_then_discovery(Some("fallback")).await;
}

// ---------------------------------------------------------------------------
// Kubernetes mode: `sharedip-node-agent run` in the node namespace, the kube-apiserver in
// the root namespace reached through a `KubeBridge` on the namespace's 127.0.0.1.

const NODE_NAME: &str = "node-a";
const SIP: &str = "web";

/// The control plane, the bridge and the lab. Field order is drop order: the agent and the
/// namespaces first, then the bridge, then the apiserver. On failure the apiserver's and
/// etcd's log tails are printed (the lab prints the agent's and the daemons').
struct KubeLab {
    lab: Lab<AgentBinary>,
    _bridge: KubeBridge,
    cp: ControlPlane,
    client: kube::Client,
}

impl Drop for KubeLab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("=== control plane ===\n{}", self.cp.log_tails());
        }
    }
}

/// The lab's bounded poll, failing the test when it runs out.
async fn eventually<F, Fut, T>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    sharedip_e2e::lab::cluster::eventually(what, BOUND, check)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The chart's ServiceAccount and RBAC of the agent, applied; returns a token of that
/// ServiceAccount, so the agent runs with exactly the chart's permissions.
async fn chart_agent_token(cp: &ControlPlane) -> String {
    let ns = "sharedip-system";
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/sharedip");
    let chart = chart.to_str().expect("utf-8 path");
    let namespace: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(cp.client())
        .create(&PostParams::default(), &namespace)
        .await
        .expect("create namespace");
    let out = cp
        .helm([
            "template",
            "sharedip",
            chart,
            "-n",
            ns,
            "--set",
            "linode.existingSecret=x",
            "--show-only",
            "templates/agent-serviceaccount.yaml",
            "--show-only",
            "templates/agent-rbac.yaml",
        ])
        .await
        .expect("helm runs");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cp
        .kubectl_with_stdin(["apply", "-f", "-"], &out.stdout)
        .await
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cp.service_account_token(ns, "sharedip-agent")
        .await
        .expect("agent ServiceAccount token")
}

impl KubeLab {
    async fn start() -> KubeLab {
        Self::start_as(false).await
    }

    /// `chart_rbac`: the agent authenticates as the chart's ServiceAccount, with the chart's
    /// ClusterRole only (else as the cluster admin).
    async fn start_as(chart_rbac: bool) -> KubeLab {
        Self::start_with(chart_rbac, false).await
    }

    /// `apiserver_down`: kube-apiserver is stopped (etcd keeps the objects) before the agent
    /// starts; the test starts it again.
    async fn start_with(chart_rbac: bool, apiserver_down: bool) -> KubeLab {
        let mut cp = ControlPlane::start().await.expect("control plane starts");
        let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
        cp.apply_crds(&crds).await.expect("CRDs apply");
        let client = cp.client();
        // The region label gives dcid 6 (us-east); the agent's --dcid 1 overrides it so the
        // route servers of the test's pattern are used.
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": NODE_NAME, "labels": {
                "role": "primary",
                "topology.kubernetes.io/region": "us-east",
            }},
        }))
        .unwrap();
        Api::<Node>::all(client.clone())
            .create(&PostParams::default(), &node)
            .await
            .expect("create Node");
        // As the CCM reports it: the default router ID is the node's ExternalIP IPv4.
        let addresses = json!({"status": {"addresses": [
            {"type": "Hostname", "address": NODE_NAME},
            {"type": "InternalIP", "address": "192.168.130.5"},
            {"type": "ExternalIP", "address": "198.51.100.20"},
            {"type": "ExternalIP", "address": NODE.to_string()},
        ]}});
        Api::<Node>::all(client.clone())
            .patch_status(
                NODE_NAME,
                &PatchParams::default(),
                &Patch::Merge(&addresses),
            )
            .await
            .expect("Node addresses");

        let mut lab = Lab::<AgentBinary>::topology(Flavor::Bird, None);
        let port: u16 = cp
            .server_url()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("apiserver URL https://127.0.0.1:<port>");
        let target = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        let bridge = KubeBridge::start(&lab.node_ns, 0, target).expect("kube bridge");
        let dir = agent_dir();
        let kubeconfig = dir.path().join("kubeconfig");
        let source = if chart_rbac {
            let token = chart_agent_token(&cp).await;
            cp.kubeconfig_for_token(&token).expect("token kubeconfig")
        } else {
            cp.kubeconfig_path().to_path_buf()
        };
        bridge
            .write_kubeconfig(&source, &kubeconfig)
            .expect("bridge kubeconfig");
        let kubeconfig = kubeconfig.to_str().expect("utf-8 path").to_owned();
        let mut args = vec![
            "run",
            "--dcid",
            "1",
            "-neighborpattern",
            PATTERN,
            "--resync-interval",
            "5s",
            // The only node: a planned withdrawal has no successor to wait for (agent_kube
            // tests the handover).
            "--handover-timeout",
            "0",
        ];
        args.extend_from_slice(COMMON_FLAGS);
        if apiserver_down {
            cp.stop_apiserver();
        }
        let agent = AgentBinary::start(
            &lab.node_ns,
            &lab.rs_addrs,
            dir,
            &args,
            &[("NODE_NAME", NODE_NAME), ("KUBECONFIG", &kubeconfig)],
        );
        lab.node = Some(agent);
        KubeLab {
            lab,
            _bridge: bridge,
            cp,
            client,
        }
    }

    fn sips(&self) -> Api<SharedIP> {
        Api::all(self.client.clone())
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    async fn apply_sip(&self, spec: serde_json::Value) {
        let obj = json!({
            "apiVersion": "sharedip.io/v1alpha1", "kind": "SharedIP",
            "metadata": {"name": SIP}, "spec": spec,
        });
        self.sips()
            .patch(
                SIP,
                &PatchParams::apply("test").force(),
                &Patch::Apply(&obj),
            )
            .await
            .expect("apply SharedIP");
    }

    async fn patch_node(&self, patch: serde_json::Value) {
        self.nodes()
            .patch(NODE_NAME, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch Node");
    }

    /// This node's status entry of the SharedIP (None: no entry, or no SharedIP).
    async fn entry(&self) -> Result<Option<NodeStatus>, String> {
        let sip = self.sips().get_opt(SIP).await.map_err(|e| e.to_string())?;
        Ok(sip
            .and_then(|s| s.status)
            .and_then(|s| s.nodes.into_iter().find(|n| n.name == NODE_NAME)))
    }

    async fn wait_entry(&self, what: &str, want: impl Fn(&Option<NodeStatus>) -> bool) {
        eventually(&format!("status entry: {what}"), || async {
            let e = self.entry().await?;
            if want(&e) {
                Ok(())
            } else {
                Err(format!("entry is {e:?}"))
            }
        })
        .await;
    }

    /// Announced with `community` (local preference `pref` at the route servers), bound on
    /// lo, and the status entry says so with `role` and 4/4 sessions.
    async fn expect_announced(&self, community: (u16, u16), pref: u32, role: Role) {
        wait_lo(&self.lab, "192.0.2.10/32", true).await;
        wait_routes(&self.lab, &[(v4(community), pref)]).await;
        self.wait_entry(&format!("announcing as {role}, 4/4 sessions"), |e| {
            e.as_ref().is_some_and(|e| {
                e.announcing
                    && e.reason.as_deref() == Some("Announced")
                    && e.role == Some(role)
                    && e.sessions_established == Some(4)
                    && e.sessions_total == Some(4)
                    && e.since.is_some()
            })
        })
        .await;
    }

    /// Withdrawn at every route server, gone from lo, and the entry says `reason` (None: the
    /// entry is gone, as when the node is no longer selected or the SharedIP is deleted).
    async fn expect_withdrawn(&self, reason: Option<&str>) {
        wait_routes(&self.lab, &[]).await;
        wait_lo(&self.lab, "192.0.2.10/32", false).await;
        // The sessions stay up: only the route goes.
        self.lab.wait_all_established().await;
        match reason {
            Some(r) => {
                self.wait_entry(&format!("withdrawn, reason {r}"), |e| {
                    e.as_ref()
                        .is_some_and(|e| !e.announcing && e.reason.as_deref() == Some(r))
                })
                .await
            }
            None => self.wait_entry("no entry", Option::is_none).await,
        }
    }
}

fn base_spec() -> serde_json::Value {
    json!({
        "address": "192.0.2.10",
        "primary": {"nodeSelector": {"matchLabels": {"role": "primary"}}},
        "secondary": {"nodeSelector": {"matchLabels": {"role": "secondary"}}},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_mode_announces_and_withdraws_on_every_path() {
    if !preflight(Some(Flavor::Bird)) {
        return;
    }
    let mut k = KubeLab::start().await;
    k.lab.wait_all_established().await;
    let report = k.lab.node().report().expect("status --json");
    assert_eq!(report.mode, "kubernetes");
    assert_eq!(report.node.as_deref(), Some(NODE_NAME));
    assert_eq!(report.dcid, Some(1), "--dcid overrides the region's 6");
    assert_eq!(report.next_hop, NODE.to_string());
    assert_eq!(report.router_id.as_deref(), Some("198.51.100.20"));

    // Selected as primary: bound, announced with 65000:1, reported.
    k.apply_sip(base_spec()).await;
    k.expect_announced((65000, 1), 200, Role::Primary).await;
    wait_status_table(&k.lab, "192.0.2.10/32", "65000:1", "Primary").await;

    // Drain.
    assert_eq!(DRAIN_ANNOTATION, "sharedip.io/drain");
    assert_eq!(sharedip_api::REGION_LABEL, "topology.kubernetes.io/region");
    k.patch_node(json!({"metadata": {"annotations": {"sharedip.io/drain": "true"}}}))
        .await;
    k.expect_withdrawn(Some("Draining")).await;
    k.patch_node(json!({"metadata": {"annotations": {"sharedip.io/drain": null}}}))
        .await;
    k.expect_announced((65000, 1), 200, Role::Primary).await;

    // Readiness gate: no matching pod on the node, then Ready / NotReady / Ready.
    let mut gated = base_spec();
    gated["readinessGate"] =
        json!({"namespace": "default", "podSelector": {"matchLabels": {"app": "ingress"}}});
    k.apply_sip(gated).await;
    k.expect_withdrawn(Some("ReadinessGateFailed")).await;
    let pods: Api<Pod> = Api::namespaced(k.client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "ingress-1", "labels": {"app": "ingress"}},
        "spec": {"nodeName": NODE_NAME, "containers": [{"name": "c", "image": "example.invalid/c"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create Pod");
    let set_ready = |ready: &'static str| {
        let pods = pods.clone();
        async move {
            let p = json!({"status": {"conditions": [{"type": "Ready", "status": ready}]}});
            pods.patch_status("ingress-1", &PatchParams::default(), &Patch::Merge(&p))
                .await
                .expect("pod status");
        }
    };
    set_ready("True").await;
    k.expect_announced((65000, 1), 200, Role::Primary).await;
    set_ready("False").await;
    k.expect_withdrawn(Some("ReadinessGateFailed")).await;
    set_ready("True").await;
    k.expect_announced((65000, 1), 200, Role::Primary).await;

    // Failback off: the primary announces the secondary community.
    let mut no_failback = base_spec();
    no_failback["failback"] = json!(false);
    k.apply_sip(no_failback).await;
    k.expect_announced((65000, 2), 100, Role::Primary).await;
    k.apply_sip(base_spec()).await;
    k.expect_announced((65000, 1), 200, Role::Primary).await;

    // Relabelled secondary: 65000:2.
    k.patch_node(json!({"metadata": {"labels": {"role": "secondary"}}}))
        .await;
    k.expect_announced((65000, 2), 100, Role::Secondary).await;
    wait_status_table(&k.lab, "192.0.2.10/32", "65000:2", "Secondary").await;

    // Deselected: withdrawn, unbound, entry removed; selected again.
    k.patch_node(json!({"metadata": {"labels": {"role": "none"}}}))
        .await;
    k.expect_withdrawn(None).await;
    k.patch_node(json!({"metadata": {"labels": {"role": "primary"}}}))
        .await;
    k.expect_announced((65000, 1), 200, Role::Primary).await;

    // SharedIP deleted; created again.
    k.sips()
        .delete(SIP, &DeleteParams::default())
        .await
        .expect("delete SharedIP");
    k.expect_withdrawn(None).await;
    k.apply_sip(base_spec()).await;
    k.expect_announced((65000, 1), 200, Role::Primary).await;

    // SIGTERM: withdraw, CEASE, unbind, exit 0, final status entry.
    sigterm_withdraws_ceases_unbinds(&mut k.lab, &["192.0.2.10/32"]).await;
    k.wait_entry("ShuttingDown after SIGTERM", |e| {
        e.as_ref()
            .is_some_and(|e| !e.announcing && e.reason.as_deref() == Some("ShuttingDown"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_mode_waits_for_an_apiserver_that_is_down_at_start() {
    if !preflight(Some(Flavor::Bird)) {
        return;
    }
    let mut k = KubeLab::start_with(false, true).await;
    // The agent keeps reading its Node instead of exiting into the kubelet's back-off.
    eventually("the agent retrying to read its Node", || {
        let log = k.lab.node().log_text();
        async move {
            log.contains("cannot read this node's Node; retrying")
                .then_some(())
                .ok_or(log)
        }
    })
    .await;
    let agent = k.lab.node.as_mut().expect("agent");
    assert_eq!(agent.exited(), None, "{}", agent.log_text());
    // Meanwhile the kubelet's probes find it alive, and not ready.
    {
        let rt = k
            .lab
            .node_ns
            .runtime()
            .expect("runtime in the node namespace");
        let addr: SocketAddr = interop_common::agent_binary::HTTP_ADDR.parse().unwrap();
        let get = |path: &'static str| {
            rt.handle()
                .spawn(async move { sharedip_e2e::https::get(addr, path, None).await })
        };
        let healthz = get("/healthz")
            .await
            .expect("task")
            .expect("HTTPS /healthz");
        assert_eq!((healthz.status, healthz.body.as_str()), (200, "ok"));
        let readyz = get("/readyz").await.expect("task").expect("HTTPS /readyz");
        assert_eq!(readyz.status, 503, "{readyz:?}");
    }
    k.cp.start_apiserver()
        .await
        .expect("kube-apiserver starts again");
    k.apply_sip(base_spec()).await;
    k.expect_announced((65000, 1), 200, Role::Primary).await;
    sigterm_withdraws_ceases_unbinds(&mut k.lab, &["192.0.2.10/32"]).await;
}

// ---------------------------------------------------------------------------
// lelastic drop-in: the systemd unit of Linode's failover guide.

/// The `[Service]` commands of the lelastic unit in Linode's failover guide ("Configure
/// Failover on a Compute Instance"), with its `[id]` and `[role]` placeholders filled in.
/// systemd runs ExecStart without a shell, so `&` reaches the program as an argument.
const GUIDE_EXEC_START: &str = "ExecStart=/usr/local/bin/lelastic -dcid 14 -primary &";
const GUIDE_EXEC_RELOAD: &str = "ExecReload=/bin/kill -s HUP $MAINPID";

/// Withdrawals each BIRD route server received from the node on its current session, and
/// how often each of the agent's sessions was established.
fn withdrawals_and_sessions(lab: &Lab<AgentBinary>) -> (Vec<u64>, Vec<u64>) {
    let withdrawals = lab
        .daemons()
        .map(|(i, rs)| {
            rs.withdrawals_received(NODE)
                .unwrap_or_else(|e| panic!("rs{}: {e}", i + 1))
                .expect("BIRD counts withdrawals")
        })
        .collect();
    let sessions = lab
        .node()
        .report()
        .expect("status --json")
        .peers
        .iter()
        .map(|p| p.established_count)
        .collect();
    (withdrawals, sessions)
}

/// The guide's unit, verbatim: the agent installed as `lelastic` runs ExecStart's words
/// (only the route servers come from the environment, as a drop-in's `Environment=` would
/// give them, so nothing leaves the documentation ranges), announces what is on `lo`, and
/// after an address is added to `lo` and ExecReload's `kill -s HUP` it announces that one
/// too, while the route already announced is never withdrawn and no session restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lelastic_guide_unit_runs_verbatim_and_reloads_on_sighup() {
    if !preflight(Some(Flavor::Bird)) {
        return;
    }
    let mut lab = Lab::<AgentBinary>::topology(Flavor::Bird, None);
    // What the guide has the user configure before starting lelastic.
    lab.node_ns
        .add_addr("lo", "192.0.2.10/32")
        .expect("address on lo");
    let exec_start: Vec<&str> = GUIDE_EXEC_START
        .strip_prefix("ExecStart=")
        .expect("ExecStart line")
        .split_whitespace()
        .collect();
    assert_eq!(exec_start.last(), Some(&"&"));
    let dir = agent_dir();
    let program = dir.path().join("lelastic");
    std::os::unix::fs::symlink(interop_common::agent_binary::AGENT, &program)
        .expect("install as lelastic");
    let neighbors = lab
        .rs_addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let agent = AgentBinary::start_verbatim(
        &lab.node_ns,
        &lab.rs_addrs,
        dir,
        &program,
        &exec_start[1..],
        &[
            ("NEIGHBORS", neighbors.as_str()),
            ("CONNECT_RETRY", "1s"),
            ("SHUTDOWN_TIMEOUT", SHUTDOWN_TIMEOUT),
        ],
    );
    lab.node = Some(agent);
    lab.wait_all_established().await;
    wait_routes(&lab, &[(v4((65000, 1)), 200)]).await;
    let report = lab.node().report().expect("status --json");
    assert_eq!(report.mode, "standalone");
    assert_eq!(report.dcid, Some(14));
    let before = withdrawals_and_sessions(&lab);
    assert!(
        before.1.iter().all(|&n| n == 1),
        "sessions established once: {before:?}"
    );

    // The user adds an address and reloads the unit.
    lab.node_ns
        .add_addr("lo", "2001:db8:1:100::1/128")
        .expect("address on lo");
    let pid = lab.node().pid().to_string();
    let reload: Vec<String> = GUIDE_EXEC_RELOAD
        .strip_prefix("ExecReload=")
        .expect("ExecReload line")
        .split_whitespace()
        .map(|w| w.replace("$MAINPID", &pid))
        .collect();
    let status = std::process::Command::new(&reload[0])
        .args(&reload[1..])
        .status()
        .expect("run ExecReload");
    assert!(status.success(), "{reload:?}: {status}");
    let v6 = route("2001:db8:1:100::/64", &[(65000, 1)], &[]);
    wait_routes(&lab, &[(v4((65000, 1)), 200), (v6.clone(), 200)]).await;
    assert!(
        lab.node.as_mut().unwrap().exited().is_none(),
        "SIGHUP ended the agent"
    );
    let after = withdrawals_and_sessions(&lab);
    assert_eq!(
        after, before,
        "(withdrawals received per route server, sessions established per peer) changed: the reload withdrew a route or restarted a session"
    );
    // A second reload with nothing new changes nothing either.
    let status = std::process::Command::new(&reload[0])
        .args(&reload[1..])
        .status()
        .expect("run ExecReload");
    assert!(status.success());
    lab.wait("the second reload is logged", |lab| {
        let log = lab.node().log_text();
        if log.matches("SIGHUP").count() >= 2 {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await;
    wait_routes(&lab, &[(v4((65000, 1)), 200), (v6, 200)]).await;
    assert_eq!(withdrawals_and_sessions(&lab), before);
    let log = lab.node().log_text();
    assert!(
        log.contains("ignoring the arguments after the flags") && log.contains("&"),
        "the ignored `&` is logged:\n{log}"
    );

    // SIGTERM: withdrawn everywhere; the addresses on lo are the user's and stay.
    sigterm_withdraws_ceases_unbinds(&mut lab, &[]).await;
    let have = lo_addrs(&lab.node_ns);
    for a in ["192.0.2.10/32", "2001:db8:1:100::1/128"] {
        assert!(have.iter().any(|h| h == a), "{a} removed from lo: {have:?}");
    }
    lab.finish().await;
}

// ---------------------------------------------------------------------------
// Kubernetes mode's HTTP port: HTTPS, tokens reviewed by the apiserver.

/// The agent's port in Kubernetes mode, from inside the node namespace, the agent running
/// with the chart's RBAC only: the probes answer anyone, `/metrics` and `/status` only a
/// bearer token the apiserver authorizes for them, plain HTTP nothing; `status` still works
/// (its socket); SIGHUP re-evaluates and keeps everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_mode_http_is_https_with_token_review() {
    use sharedip_e2e::https::{get_urls, service_account};
    if !preflight(Some(Flavor::Bird)) {
        return;
    }
    let mut k = KubeLab::start_as(true).await;
    let prometheus = service_account(&k.cp, "default", "prometheus", get_urls(&["/metrics"]))
        .await
        .expect("ServiceAccount");
    let status_reader = service_account(&k.cp, "default", "status", get_urls(&["/status"]))
        .await
        .expect("ServiceAccount");
    let nobody = service_account(&k.cp, "default", "nobody", vec![])
        .await
        .expect("ServiceAccount");
    k.apply_sip(base_spec()).await;
    k.expect_announced((65000, 1), 200, Role::Primary).await;

    let rt = k
        .lab
        .node_ns
        .runtime()
        .expect("runtime in the node namespace");
    let addr: SocketAddr = interop_common::agent_binary::HTTP_ADDR.parse().unwrap();
    let get = |path: &'static str, token: Option<&str>| {
        let token = token.map(str::to_string);
        let task = rt
            .handle()
            .spawn(async move { sharedip_e2e::https::get(addr, path, token.as_deref()).await });
        async move { task.await.expect("request task").expect("HTTPS request") }
    };
    for path in ["/healthz", "/readyz"] {
        let r = get(path, None).await;
        assert_eq!((r.status, r.body.as_str()), (200, "ok"), "{path}");
    }
    for path in ["/metrics", "/status"] {
        for (token, want) in [
            (None, 401),
            (Some("not-a-token"), 401),
            (Some(nobody.as_str()), 403),
        ] {
            let r = get(path, token).await;
            assert_eq!(r.status, want, "{path} with {token:?}: {r:?}");
            assert!(!r.body.contains("192.0.2.10"), "{r:?}");
        }
    }
    let r = get("/metrics", Some(&prometheus)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.contains("sharedip_agent_prefixes_announced 1"),
        "{}",
        r.body
    );
    assert_eq!(get("/status", Some(&prometheus)).await.status, 403);
    let r = get("/status", Some(&status_reader)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("192.0.2.10/32"), "{}", r.body);
    let raw = {
        let token = prometheus.clone();
        rt.handle()
            .spawn(
                async move { sharedip_e2e::https::plain_get(addr, "/metrics", Some(&token)).await },
            )
            .await
            .expect("task")
            .expect("plain request")
    };
    assert!(raw.starts_with("HTTP/1.0 400"), "{raw:?}");
    assert!(!raw.contains("sharedip_agent"), "{raw:?}");
    // The `status` subcommand reads the agent's socket: no token needed.
    wait_status_table(&k.lab, "192.0.2.10/32", "65000:1", "Primary").await;

    // SIGHUP: logged, nothing withdrawn, the process keeps running.
    let before = withdrawals_and_sessions(&k.lab);
    let pid = i32::try_from(k.lab.node().pid()).unwrap();
    // SAFETY: kill has no memory-safety preconditions; the pid is our running child.
    unsafe {
        libc::kill(pid, libc::SIGHUP);
    }
    k.lab
        .wait("SIGHUP handled", |lab| {
            let log = lab.node().log_text();
            if log.contains("SIGHUP: re-evaluating") {
                Ok(())
            } else {
                Err(format!("not in the log yet:\n{log}"))
            }
        })
        .await;
    assert!(
        k.lab.node.as_mut().unwrap().exited().is_none(),
        "SIGHUP ended the agent"
    );
    k.expect_announced((65000, 1), 200, Role::Primary).await;
    assert_eq!(withdrawals_and_sessions(&k.lab), before);
    assert_eq!(get("/readyz", None).await.status, 200);
    drop(rt);
    let log = k.lab.node().log_text();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the agent hit a permission error with the chart's RBAC:\n{log}"
    );

    sigterm_withdraws_ceases_unbinds(&mut k.lab, &["192.0.2.10/32"]).await;
}
