//! Shares whose traces in Kubernetes are gone, and two clusters in one Linode account: a real
//! kube-apiserver per cluster, one Linode API stand-in, in-process operators restarted as a
//! Deployment's pods would be.

// Test code: a panic is a failed test, and a scenario reads best in one piece.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use sharedip_e2e::controlplane::ControlPlane;
use sharedip_operator::cluster_id::ClusterId;
use sharedip_operator::controller::run_controller;
use sharedip_operator::metrics::Metrics;
use support::*;

/// Bounds a whole test, so a hang fails instead of blocking CI.
async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(240), f)
        .await
        .expect("test finished within 240 s");
}

fn strings(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Waits until the whole account's sharing is exactly `want`.
async fn eventually_by_linode(env: &Env, want: &[(u64, &[&str])]) {
    let want: BTreeMap<u64, BTreeSet<String>> =
        want.iter().map(|(l, a)| (*l, strings(a))).collect();
    eventually(&format!("sharing exactly {want:?}"), || async {
        let got = env.by_linode();
        if got == want {
            Ok(())
        } else {
            Err(format!("sharing is {got:?}"))
        }
    })
    .await;
}

/// The per-Linode entries of a ledger ConfigMap (`linode.<id>` → addresses), and its cluster id.
async fn ledger(client: &kube::Client, name: &str) -> (Option<String>, BTreeMap<String, String>) {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), "default")
        .get_opt(name)
        .await
        .expect("get ledger ConfigMap");
    let data = cm.and_then(|c| c.data).unwrap_or_default();
    let id = data.get("cluster-id").cloned();
    let linodes = data
        .into_iter()
        .filter(|(k, _)| k.starts_with("linode."))
        .collect();
    (id, linodes)
}

/// Waits until the ledger ConfigMap `name` records exactly `want` for cluster `id` (it is
/// written a moment after the share call that the stand-in shows).
async fn eventually_ledger(client: &kube::Client, name: &str, id: &str, want: &[(&str, &str)]) {
    let want = linode_keys(want);
    eventually(&format!("ledger {name} = {want:?}"), || async {
        let got = ledger(client, name).await;
        if got.0.as_deref() == Some(id) && got.1 == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
}

fn linode_keys(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (format!("linode.{k}"), v.to_string()))
        .collect()
}

/// Removes the operator's status fields, as a restore without status (or a crash between the
/// share call and the status write) leaves them: the reconciler then no longer knows where the
/// address went.
async fn lose_status(env: &Env, name: &str) {
    let patch = json!({"status": null});
    env.sharedips()
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("clear status");
}

/// Waits for the sweep's counter: it counts once the share call's result is back, a moment after
/// the stand-in shows the change.
async fn swept(op: &InProcessOperator, n: u64) {
    eventually(&format!("{n} pair(s) swept"), || async {
        let got = op.metrics.swept.get();
        if got == n {
            Ok(())
        } else {
            Err(format!("{got} swept"))
        }
    })
    .await;
}

#[tokio::test]
async fn node_deleted_while_the_operator_is_down_is_swept_after_restart() {
    bounded(async {
        let env = Env::start().await;
        env.add_node("node-a", &[("role", "primary")], Some(101))
            .await;
        env.add_node("node-b", &[("role", "secondary")], Some(102))
            .await;
        env.add_node("node-c", &[("role", "secondary")], Some(103))
            .await;
        // Shared by hand, outside the operator, with the Linode that will lose its node.
        env.standin
            .state()
            .share(103, &["198.51.100.7"])
            .expect("share by hand");
        let op = env.spawn_operator();
        env.apply_sharedip("web", spec("192.0.2.10")).await;
        eventually_by_linode(
            &env,
            &[
                (101, &["192.0.2.10"]),
                (102, &["192.0.2.10"]),
                (103, &["192.0.2.10", "198.51.100.7"]),
            ],
        )
        .await;
        env.eventually_condition("web", "Shared", "True", "Shared")
            .await;
        op.stop().await;

        // While the operator is down: the node goes, and with it the only trace of the share in
        // Kubernetes besides the status, which is lost too.
        env.delete_node("node-c").await;
        lose_status(&env, "web").await;

        let op = env.spawn_operator();
        eventually_by_linode(
            &env,
            &[
                (101, &["192.0.2.10"]),
                (102, &["192.0.2.10"]),
                (103, &["198.51.100.7"]),
            ],
        )
        .await;
        env.eventually_condition("web", "Shared", "True", "Shared")
            .await;
        eventually("the Swept event", || async {
            let reasons = env.event_reasons("web").await;
            match reasons.iter().find(|(r, _)| r == "Swept") {
                Some((_, note)) if note.contains("192.0.2.10") && note.contains("103") => Ok(()),
                _ => Err(format!("{reasons:?}")),
            }
        })
        .await;
        swept(&op, 1).await;
        eventually("a successful sweep counted", || async {
            let text = op.metrics.encode();
            if text.contains("sharedip_sweeps_total{result=\"ok\"}") {
                Ok(())
            } else {
                Err(text)
            }
        })
        .await;
        // The ledger forgot Linode 103.
        eventually_ledger(
            &env.client(),
            "sharedip-ledger-test-cluster",
            CLUSTER_ID,
            &[("101", "192.0.2.10"), ("102", "192.0.2.10")],
        )
        .await;
        op.stop().await;
    })
    .await;
}

#[tokio::test]
async fn sharedip_deleted_past_its_finalizer_is_swept() {
    bounded(async {
        let env = Env::start().await;
        env.add_node("node-a", &[("role", "primary")], Some(101))
            .await;
        env.add_node("node-b", &[("role", "secondary")], Some(102))
            .await;
        let op = env.spawn_operator();
        env.apply_sharedip("web", spec("192.0.2.10")).await;
        env.apply_sharedip("api", spec("192.0.2.11")).await;
        eventually_by_linode(
            &env,
            &[
                (101, &["192.0.2.10", "192.0.2.11"]),
                (102, &["192.0.2.10", "192.0.2.11"]),
            ],
        )
        .await;
        op.stop().await;

        // What users do when a finalizer seems stuck: remove it by hand, then delete.
        let patch = json!({"metadata": {"finalizers": null}});
        env.sharedips()
            .patch("api", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("remove the finalizer");
        env.delete_sharedip("api").await;
        assert!(env.get("api").await.is_none());

        let op = env.spawn_operator();
        eventually_by_linode(&env, &[(101, &["192.0.2.10"]), (102, &["192.0.2.10"])]).await;
        swept(&op, 2).await;
        op.stop().await;
    })
    .await;
}

/// The second cluster: its own control plane (so its own `kube-system`, Nodes and SharedIPs),
/// the same stand-in.
struct OtherCluster {
    cp: ControlPlane,
}

impl OtherCluster {
    async fn start() -> Self {
        let cp = ControlPlane::start().await.expect("control plane starts");
        let crds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
        cp.apply_crds(&crds).await.expect("CRDs apply");
        Self { cp }
    }
}

/// Node/SharedIP helpers on any control plane (the Env's work on its own only).
async fn add_node(client: &kube::Client, name: &str, role: &str, linode: u64) {
    use k8s_openapi::api::core::v1::Node;
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"role": role, "topology.kubernetes.io/region": REGION}},
        "spec": {"providerID": format!("linode://{linode}")},
    }))
    .expect("node");
    Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .create(&Default::default(), &node)
        .await
        .expect("create node");
}

async fn delete_node(client: &kube::Client, name: &str) {
    Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .delete(name, &Default::default())
        .await
        .expect("delete node");
}

async fn apply_sharedip(client: &kube::Client, name: &str, address: &str) {
    let obj = json!({
        "apiVersion": "sharedip.io/v1alpha1",
        "kind": "SharedIP",
        "metadata": {"name": name},
        "spec": spec(address),
    });
    Api::<sharedip_api::SharedIP>::all(client.clone())
        .patch(
            name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&obj),
        )
        .await
        .expect("apply SharedIP");
}

/// Runs an in-process operator for `client`'s cluster with identity `cluster`.
fn operator(env: &Env, client: kube::Client, cluster: &str) -> InProcessOperatorFor {
    let mut settings = fast_settings(&format!("{cluster}-operator"));
    settings.cluster_id = ClusterId::new(cluster).expect("cluster id");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let metrics = std::sync::Arc::new(Metrics::default());
    let task = tokio::spawn(run_controller(
        client,
        std::sync::Arc::new(env.linode_client()),
        metrics.clone(),
        settings,
        async move {
            let _ = rx.await;
        },
    ));
    InProcessOperatorFor {
        stop: Some(tx),
        task,
        metrics,
    }
}

struct InProcessOperatorFor {
    metrics: std::sync::Arc<Metrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), sharedip_operator::controller::RunError>>,
}

impl InProcessOperatorFor {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), &mut self.task).await;
    }
}

impl Drop for InProcessOperatorFor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn two_clusters_in_one_account_never_touch_each_others_shares() {
    bounded(async {
        // Cluster A is the Env's control plane; cluster B has its own. One stand-in account.
        let env = Env::start().await;
        let b = OtherCluster::start().await;
        let (a_client, b_client) = (env.client(), b.cp.client());
        // Each cluster's own kube-system differs: the default identities would too.
        let uid = |c: kube::Client| async move {
            Api::<Namespace>::all(c)
                .get("kube-system")
                .await
                .expect("kube-system")
                .metadata
                .uid
        };
        assert_ne!(uid(a_client.clone()).await, uid(b_client.clone()).await);

        // An address shared by hand, outside both operators, with a Linode of each cluster.
        env.standin
            .state()
            .share(101, &["198.51.100.7"])
            .expect("share by hand");
        env.standin
            .state()
            .share(104, &["198.51.100.7"])
            .expect("share by hand");

        add_node(&a_client, "a1", "primary", 101).await;
        add_node(&a_client, "a2", "secondary", 102).await;
        add_node(&a_client, "a3", "secondary", 103).await;
        add_node(&b_client, "b1", "primary", 104).await;
        add_node(&b_client, "b2", "secondary", 105).await;
        let op_a = operator(&env, a_client.clone(), "cluster-a");
        let op_b = operator(&env, b_client.clone(), "cluster-b");
        apply_sharedip(&a_client, "web", "192.0.2.10").await;
        apply_sharedip(&b_client, "api", "192.0.2.11").await;
        eventually_by_linode(
            &env,
            &[
                (101, &["192.0.2.10", "198.51.100.7"]),
                (102, &["192.0.2.10"]),
                (103, &["192.0.2.10"]),
                (104, &["192.0.2.11", "198.51.100.7"]),
                (105, &["192.0.2.11"]),
            ],
        )
        .await;

        // Nodes come and go while both run.
        add_node(&a_client, "a4", "secondary", 106).await;
        delete_node(&b_client, "b2").await;
        eventually_by_linode(
            &env,
            &[
                (101, &["192.0.2.10", "198.51.100.7"]),
                (102, &["192.0.2.10"]),
                (103, &["192.0.2.10"]),
                (104, &["192.0.2.11", "198.51.100.7"]),
                (106, &["192.0.2.10"]),
            ],
        )
        .await;

        // A is down; its node a3 leaves A and its Linode 103 joins B as a secondary: 103 now
        // holds A's stale share and B's new one.
        op_a.stop().await;
        delete_node(&a_client, "a3").await;
        lose_status_on(&a_client, "web").await;
        add_node(&b_client, "b3", "secondary", 103).await;
        eventually_by_linode(
            &env,
            &[
                (101, &["192.0.2.10", "198.51.100.7"]),
                (102, &["192.0.2.10"]),
                (103, &["192.0.2.10", "192.0.2.11"]),
                (104, &["192.0.2.11", "198.51.100.7"]),
                (106, &["192.0.2.10"]),
            ],
        )
        .await;
        // B sees 192.0.2.10 on its node's Linode: not its own, so it stays, also through B's
        // sweep at start (restart B to run one).
        op_b.stop().await;
        let op_b = operator(&env, b_client.clone(), "cluster-b");
        eventually("B swept once", || async {
            if op_b
                .metrics
                .encode()
                .contains("sharedip_sweeps_total{result=\"ok\"} 1")
            {
                Ok(())
            } else {
                Err("no sweep yet".into())
            }
        })
        .await;
        assert_eq!(op_b.metrics.swept.get(), 0, "B swept nothing");
        assert_eq!(
            env.by_linode().get(&103),
            Some(&strings(&["192.0.2.10", "192.0.2.11"])),
            "B left A's address on 103"
        );

        // A comes back: its sweep takes its address off 103 and leaves B's there.
        let op_a = operator(&env, a_client.clone(), "cluster-a");
        eventually_by_linode(
            &env,
            &[
                (101, &["192.0.2.10", "198.51.100.7"]),
                (102, &["192.0.2.10"]),
                (103, &["192.0.2.11"]),
                (104, &["192.0.2.11", "198.51.100.7"]),
                (106, &["192.0.2.10"]),
            ],
        )
        .await;

        // Each ledger names its cluster and only its own shares.
        let a_ledger = "sharedip-ledger-cluster-a";
        let b_ledger = "sharedip-ledger-cluster-b";
        let a_pairs = [
            ("101", "192.0.2.10"),
            ("102", "192.0.2.10"),
            ("106", "192.0.2.10"),
        ];
        eventually_ledger(&a_client, a_ledger, "cluster-a", &a_pairs).await;
        let b_pairs = [("103", "192.0.2.11"), ("104", "192.0.2.11")];
        eventually_ledger(&b_client, b_ledger, "cluster-b", &b_pairs).await;

        // SharedIPs are deleted: each cluster unshares its own address only.
        Api::<sharedip_api::SharedIP>::all(b_client.clone())
            .delete("api", &Default::default())
            .await
            .expect("delete api");
        eventually_by_linode(
            &env,
            &[
                (101, &["192.0.2.10", "198.51.100.7"]),
                (102, &["192.0.2.10"]),
                (104, &["198.51.100.7"]),
                (106, &["192.0.2.10"]),
            ],
        )
        .await;
        Api::<sharedip_api::SharedIP>::all(a_client.clone())
            .delete("web", &Default::default())
            .await
            .expect("delete web");
        eventually_by_linode(&env, &[(101, &["198.51.100.7"]), (104, &["198.51.100.7"])]).await;
        eventually_ledger(&a_client, a_ledger, "cluster-a", &[]).await;
        eventually_ledger(&b_client, b_ledger, "cluster-b", &[]).await;
        // Still exact after both stop.
        op_a.stop().await;
        op_b.stop().await;
        assert_eq!(
            env.by_linode(),
            [
                (101, strings(&["198.51.100.7"])),
                (104, strings(&["198.51.100.7"])),
            ]
            .into()
        );
    })
    .await;
}

async fn lose_status_on(client: &kube::Client, name: &str) {
    let patch = json!({"status": null});
    Api::<sharedip_api::SharedIP>::all(client.clone())
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("clear status");
}
