//! The README's demo: a real kube-apiserver, the Linode API stand-in, two operator replicas, a
//! SharedIP, nodes failing and coming back, the leading operator dying — with what `kubectl` and
//! the Linode API show at each step. Everything runs on loopback and is removed at the end.
//!
//! Run it with `e2e/scripts/demo.sh`, which builds what it needs first.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use sharedip_e2e::controlplane::ControlPlane;
use sharedip_e2e::standin::{Seed, StandIn, StandInHandle};
use tokio::process::{Child, Command};

const TOKEN: &str = "demo-token";
const ADDRESS: &str = "192.0.2.10";
const NAMESPACE: &str = "sharedip-system";
const SEED: &str = r#"
linodes:
  - {id: 100, label: ip-holder, region: us-east, type: g6-nanode-1, status: offline}
  - {id: 101, label: lke-node-a, region: us-east}
  - {id: 102, label: lke-node-b, region: us-east}
  - {id: 103, label: lke-node-c, region: us-east}
ipv4:
  - {address: 192.0.2.10, linode_id: 100, public: true}
  - {address: 198.51.100.7, linode_id: 100, public: true}
sharing:
  - {linode_id: 103, ips: ["198.51.100.7"]}
"#;

const SHAREDIP: &str = r#"apiVersion: sharedip.io/v1alpha1
kind: SharedIP
metadata:
  name: ingress
spec:
  address: 192.0.2.10
  primary:
    nodeSelector:
      matchLabels: {sharedip.io/role: primary}
  secondary:
    nodeSelector:
      matchLabels: {sharedip.io/role: secondary}
"#;

fn step(n: u32, title: &str) {
    println!("\n\x1b[1m== {n}. {title}\x1b[0m");
}

fn say(text: &str) {
    for line in text.lines() {
        println!("   {line}");
    }
}

struct Operator {
    name: String,
    child: Child,
}

async fn kubectl(cp: &ControlPlane, args: &[&str]) -> Result<()> {
    let out = cp.kubectl(args).await.context("kubectl")?;
    let text = String::from_utf8_lossy(&out.stdout);
    println!("   $ kubectl {}", args.join(" "));
    for line in text.lines() {
        println!("     {line}");
    }
    if !out.status.success() {
        bail!(
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn show_sharing(standin: &StandInHandle) {
    let sharing = standin.sharing();
    let with: BTreeSet<u64> = sharing.shared_with(ADDRESS);
    let foreign: BTreeSet<u64> = sharing.shared_with("198.51.100.7");
    println!("   Linode API: {ADDRESS} is shared with Linodes {with:?}; 198.51.100.7 (shared by hand, not managed) with {foreign:?}");
}

async fn wait_shared(standin: &StandInHandle, want: &[u64]) -> Result<Duration> {
    let want: BTreeSet<u64> = want.iter().copied().collect();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if standin.sharing().shared_with(ADDRESS) == want {
            return Ok(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "{ADDRESS} not shared with {want:?} within 60 s (now {:?})",
        standin.sharing().shared_with(ADDRESS)
    )
}

async fn lease_holder(cp: &ControlPlane) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(cp.client(), NAMESPACE);
    leases
        .get_opt("sharedip-operator")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

async fn node(cp: &ControlPlane, name: &str, role: Option<&str>, linode: u64) -> Result<()> {
    let mut labels = json!({"topology.kubernetes.io/region": "us-east"});
    if let Some(r) = role {
        labels["sharedip.io/role"] = json!(r);
    }
    let n: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"providerID": format!("linode://{linode}")},
    }))?;
    Api::<Node>::all(cp.client())
        .create(&PostParams::default(), &n)
        .await
        .with_context(|| format!("create node {name}"))?;
    Ok(())
}

fn spawn_operator(
    bin: &Path,
    name: &str,
    cp: &ControlPlane,
    standin: &StandInHandle,
    token_file: &Path,
    dir: &Path,
) -> Result<Operator> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let child = Command::new(bin)
        .env("KUBECONFIG", cp.kubeconfig_path())
        .env("LINODE_API_URL", standin.base_url())
        .env("LINODE_TOKEN_FILE", token_file)
        .env("POD_NAMESPACE", NAMESPACE)
        .env("POD_NAME", name)
        .env("RUST_LOG", "info")
        .args(["--http-addr", "127.0.0.1:0", "--batch-window", "100ms"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    Ok(Operator {
        name: name.into(),
        child,
    })
}

async fn run() -> Result<()> {
    let bin = PathBuf::from(
        std::env::var("SHAREDIP_OPERATOR_BIN")
            .context("SHAREDIP_OPERATOR_BIN is not set; run e2e/scripts/demo.sh")?,
    );
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let work = tempfile::tempdir()?;

    step(1, "A Kubernetes control plane and a Linode account");
    say("Starting a real etcd + kube-apiserver on loopback, and the Linode API stand-in with an\naccount: an IP holder Linode (100) owning 192.0.2.10, and three node Linodes (101-103).\nLinode 103 already has 198.51.100.7 shared by hand — sharedip must leave it alone.");
    let cp = ControlPlane::start().await.context("control plane")?;
    cp.apply_crds(&repo.join("crds")).await.context("CRDs")?;
    let seed = Seed::from_str(SEED, Path::new("demo seed"))?;
    let standin = StandIn::builder().token(TOKEN).seed(seed).start().await?;
    let token_file = work.path().join("token");
    std::fs::write(&token_file, TOKEN)?;
    Api::<Namespace>::all(cp.client())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?,
        )
        .await?;
    show_sharing(&standin);

    step(2, "Three nodes, two of them labelled for the shared IP");
    node(&cp, "node-a", Some("primary"), 101).await?;
    node(&cp, "node-b", Some("secondary"), 102).await?;
    node(&cp, "node-c", None, 103).await?;
    kubectl(&cp, &["get", "nodes", "-L", "sharedip.io/role"]).await?;

    step(3, "Two operator replicas; one wins the leader Lease");
    let mut ops = vec![
        spawn_operator(&bin, "operator-1", &cp, &standin, &token_file, work.path())?,
        spawn_operator(&bin, "operator-2", &cp, &standin, &token_file, work.path())?,
    ];
    let start = Instant::now();
    let leader = loop {
        if let Some(h) = lease_holder(&cp).await {
            break h;
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("no operator became leader within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    say(&format!("leader: {leader}"));

    step(4, "kubectl apply a SharedIP");
    say(SHAREDIP);
    let out = cp
        .kubectl_with_stdin(["apply", "-f", "-"], SHAREDIP.as_bytes())
        .await?;
    if !out.status.success() {
        bail!("apply failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let took = wait_shared(&standin, &[101, 102]).await?;
    say(&format!(
        "The operator shared {ADDRESS} with the Linodes of node-a and node-b in {} ms.",
        took.as_millis()
    ));
    show_sharing(&standin);
    wait_ready(&cp).await?;
    kubectl(&cp, &["get", "sharedips"]).await?;
    say("SHARED counts the Linodes the operator shared the address with. READY also needs a node\nagent to announce the address over BGP; no agent runs in this demo, so it stays False with\nreason NotAnnounced (see `kubectl describe` below).");

    step(
        5,
        "node-b is recycled: its Node disappears, a replacement node-d joins",
    );
    Api::<Node>::all(cp.client())
        .delete("node-b", &DeleteParams::default())
        .await?;
    let took = wait_shared(&standin, &[101]).await?;
    say(&format!(
        "unshared from node-b's Linode after {} ms",
        took.as_millis()
    ));
    node(&cp, "node-d", Some("secondary"), 103).await?;
    let took = wait_shared(&standin, &[101, 103]).await?;
    say(&format!(
        "shared with node-d's Linode after {} ms",
        took.as_millis()
    ));
    show_sharing(&standin);
    kubectl(&cp, &["get", "sharedips", "-o", "wide"]).await?;

    step(
        6,
        "The leading operator is killed (SIGKILL); the standby takes over",
    );
    let idx = ops
        .iter()
        .position(|o| o.name == leader)
        .context("leader is one of ours")?;
    let mut dead = ops.remove(idx);
    dead.child.kill().await?;
    let start = Instant::now();
    let new_leader = loop {
        match lease_holder(&cp).await {
            Some(h) if h != leader => break h,
            _ => {}
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("no takeover within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    say(&format!(
        "{new_leader} took the Lease {} ms after {leader} died (the Lease lasts 15 s).",
        start.elapsed().as_millis()
    ));
    say("node-a is now relabelled secondary and node-d primary; the new leader follows:");
    kubectl(
        &cp,
        &[
            "label",
            "node",
            "node-a",
            "sharedip.io/role=secondary",
            "--overwrite",
        ],
    )
    .await?;
    kubectl(
        &cp,
        &[
            "label",
            "node",
            "node-d",
            "sharedip.io/role=primary",
            "--overwrite",
        ],
    )
    .await?;
    wait_primary(&cp, "node-d").await?;
    kubectl(&cp, &["get", "sharedips"]).await?;

    step(7, "What kubectl describe tells a user");
    kubectl(&cp, &["describe", "sharedip", "ingress"]).await?;

    step(
        8,
        "Deleting the SharedIP unshares it everywhere — and nothing else",
    );
    kubectl(&cp, &["delete", "sharedip", "ingress", "--wait=true"]).await?;
    wait_shared(&standin, &[]).await?;
    show_sharing(&standin);

    println!(
        "\nDone: the address followed the nodes, the operator survived losing its leader, the"
    );
    println!("hand-made share was never touched. Tearing everything down.");
    for mut o in ops {
        let _ = o.child.kill().await;
    }
    Ok(())
}

async fn wait_primary(cp: &ControlPlane, node: &str) -> Result<()> {
    let api: Api<sharedip_api::SharedIP> = Api::all(cp.client());
    let start = Instant::now();
    loop {
        let primary = api
            .get_opt("ingress")
            .await?
            .and_then(|s| s.status)
            .and_then(|s| s.primary);
        if primary.as_deref() == Some(node) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("{node} did not become primary within 60 s (status says {primary:?})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_ready(cp: &ControlPlane) -> Result<()> {
    let api: Api<sharedip_api::SharedIP> = Api::all(cp.client());
    let start = Instant::now();
    loop {
        if let Some(s) = api.get_opt("ingress").await? {
            let ready = s.status.as_ref().is_some_and(|st| {
                st.observed_generation == s.metadata.generation
                    && st
                        .conditions
                        .iter()
                        .any(|c| c.type_ == "Shared" && c.status == "True")
                    && st.primary.is_some()
            });
            if ready {
                return Ok(());
            }
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("SharedIP not Shared within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match tokio::time::timeout(Duration::from_secs(600), run()).await {
        Ok(Ok(())) => std::process::ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("demo failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("demo did not finish within 10 minutes");
            std::process::ExitCode::FAILURE
        }
    }
}
