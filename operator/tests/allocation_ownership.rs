//! Whose holder and whose addresses: two clusters allocating in one Linode account and region,
//! the retired Linode CCM's holders adopted (or not), and a holder named by its Linode ID. A
//! real kube-apiserver per cluster, one Linode API stand-in, in-process operators.

// Test code: a panic is a failed test, and a scenario reads best in one piece.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use serde_json::json;
use sharedip_api::{AddressFamily, ALLOCATION_INTENT_ANNOTATION};
use sharedip_e2e::controlplane::ControlPlane;
use sharedip_operator::allocation::Intent;
use sharedip_operator::cluster_id::ClusterId;
use sharedip_operator::controller::{run_controller, ControllerSettings};
use sharedip_operator::holder::HolderSettings;
use sharedip_operator::metrics::Metrics;
use support::alloc::*;
use support::*;

/// The account of the CCM test: node Linodes, and the CCM's two holders of `us-east` (without
/// and with the suffix `prod`), each holding an address beyond its own.
const CCM_SEED: &str = r#"
linodes:
  - {id: 101, label: node-a, region: us-east}
  - {id: 102, label: node-b, region: us-east}
  - {id: 300, label: linode-ccm-ip-holder-us-east, region: us-east, type: g6-nanode-1, status: offline, ipv4: [198.51.100.50]}
  - {id: 301, label: linode-ccm-ip-holder-us-east-prod, region: us-east, type: g6-nanode-1, status: offline, ipv4: [198.51.100.60]}
ipv4:
  - {address: 198.51.100.51, linode_id: 300, public: true}
  - {address: 198.51.100.61, linode_id: 301, public: true}
"#;

async fn add_edge_node(client: &kube::Client, name: &str, linode: u64) {
    use k8s_openapi::api::core::v1::Node;
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"role": "edge", "topology.kubernetes.io/region": REGION}},
        "spec": {"providerID": format!("linode://{linode}")},
    }))
    .expect("node");
    Api::<Node>::all(client.clone())
        .create(&Default::default(), &node)
        .await
        .expect("create node");
}

/// Every public IPv4 of Linode `linode`.
fn ipv4_of(env: &Env, linode: u64) -> BTreeSet<IpAddr> {
    env.standin.state().read(|a| {
        a.ipv4_addresses()
            .iter()
            .filter(|(_, v)| v.linode_id == linode)
            .filter_map(|(ip, _)| ip.to_string().parse().ok())
            .collect()
    })
}

/// An in-process operator of cluster `cluster` on `client`'s control plane.
struct Operator {
    metrics: Arc<Metrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), sharedip_operator::controller::RunError>>,
}

impl Operator {
    fn start(env: &Env, client: kube::Client, cluster: &str, holders: HolderSettings) -> Self {
        let mut settings: ControllerSettings = fast_settings(&format!("{cluster}-operator"));
        settings.cluster_id = ClusterId::new(cluster).expect("cluster id");
        settings.holders = holders;
        settings.lifecycle_api = Some(Arc::new(env.linode_client()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let metrics = Arc::new(Metrics::default());
        let task = tokio::spawn(run_controller(
            client,
            Arc::new(env.linode_client()),
            metrics.clone(),
            settings,
            async move {
                let _ = rx.await;
            },
        ));
        Self {
            metrics,
            stop: Some(tx),
            task,
        }
    }

    /// An operator of the Env's own cluster, with these holder settings (see [`holders`]).
    fn here(env: &Env, adopt_ccm: Option<&str>, named: Vec<u64>) -> Self {
        Self::start(env, env.client(), CLUSTER_ID, holders(adopt_ccm, named))
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), &mut self.task).await;
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The holder settings of the tests: quick backoff, the rest as given.
fn holders(adopt_ccm: Option<&str>, named: Vec<u64>) -> HolderSettings {
    HolderSettings {
        adopt_ccm: adopt_ccm.map(str::to_string),
        named,
        ..fast_settings("unused").holders
    }
}

#[tokio::test]
async fn two_clusters_in_one_account_allocate_on_their_own_holders_only() {
    bounded(async {
        // Cluster A is the Env's control plane; cluster B has its own. One stand-in account.
        let env = Env::start().await;
        let b = ControlPlane::start().await.expect("control plane starts");
        let crds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
        b.apply_crds(&crds).await.expect("CRDs apply");
        let (a_client, b_client) = (env.client(), b.client());
        add_edge_node(&a_client, "a1", 101).await;
        add_edge_node(&b_client, "b1", 104).await;
        let op_a = Operator::start(&env, a_client.clone(), "cluster-a", holders(None, vec![]));
        let op_b = Operator::start(&env, b_client.clone(), "cluster-b", holders(None, vec![]));

        // The same name in both clusters: each allocates on a holder of its own.
        apply_on(&a_client, "web", edge(), json!({})).await;
        apply_on(&b_client, "web", edge(), json!({})).await;
        let wa = allocated_on(&a_client, "web").await;
        let wb = allocated_on(&b_client, "web").await;
        assert_ne!(wa, wb);
        let ha = the_holder(&env, "sharedip-holder-us-east-cluster-a");
        let hb = the_holder(&env, "sharedip-holder-us-east-cluster-b");
        assert_ne!(ha, hb);
        assert_eq!(owner_of(&env, &wa), Some(ha), "{wa} on A's holder");
        assert_eq!(owner_of(&env, &wb), Some(hb), "{wb} on B's holder");
        env.eventually_shared(&wa, &[101]).await;
        env.eventually_shared(&wb, &[104]).await;
        let c = env.standin.counters();
        assert_eq!((c.linodes_created, c.ipv4_allocated), (2, 2), "{c:?}");

        // A crash-recovery intent in A that names B's holder, recorded as if B's address had
        // come after it: A must not adopt it, but allocate on its own holder.
        let mut before = ipv4_of(&env, hb);
        assert!(before.remove(&wb.parse::<IpAddr>().unwrap()));
        let intent = Intent {
            holder: hb,
            region: REGION.into(),
            family: AddressFamily::IPv4,
            prefix: 32,
            before,
            at: Timestamp::now().to_string(),
            reserved: None,
        };
        let note = json!({ALLOCATION_INTENT_ANNOTATION: serde_json::to_string(&intent).unwrap()});
        apply_on(&a_client, "crash", edge(), note).await;
        let crash = allocated_on(&a_client, "crash").await;
        assert_ne!(crash, wb, "A adopted B's address");
        assert_eq!(owner_of(&env, &crash), Some(ha), "{crash} on A's holder");
        env.eventually_shared(&crash, &[101]).await;
        assert_eq!(env.standin.counters().ipv4_allocated, 3);

        // Deleting A's SharedIP gives A's address back and leaves B's shared and in place.
        delete_on(&a_client, "web").await;
        gone_on(&a_client, "web").await;
        assert_eq!(owner_of(&env, &wa), None, "{wa} given back");
        assert_eq!(env.standin.counters().ipv4_deleted, 1);
        assert_eq!(owner_of(&env, &wb), Some(hb));
        assert_eq!(env.shared(&wb), BTreeSet::from([104]));

        // B's sweep at start (restart B to run one) leaves A's shares alone.
        op_b.stop().await;
        let op_b = Operator::start(&env, b_client.clone(), "cluster-b", holders(None, vec![]));
        eventually("B swept once", || async {
            let text = op_b.metrics.encode();
            if text.contains("sharedip_sweeps_total{result=\"ok\"} 1") {
                Ok(())
            } else {
                Err("no sweep yet".into())
            }
        })
        .await;
        assert_eq!(op_b.metrics.swept.get(), 0, "B swept nothing");
        assert_eq!(env.shared(&crash), BTreeSet::from([101]));
        assert_eq!(env.shared(&wb), BTreeSet::from([104]));

        // Each kept its one holder; nothing else was allocated or deleted.
        assert_eq!(labelled(&env, "sharedip-holder-us-east-cluster-a"), [ha]);
        assert_eq!(labelled(&env, "sharedip-holder-us-east-cluster-b"), [hb]);
        let c = env.standin.counters();
        assert_eq!(
            (c.linodes_created, c.ipv4_allocated, c.ipv4_deleted),
            (2, 3, 1),
            "{c:?}"
        );
        op_a.stop().await;
        op_b.stop().await;
    })
    .await;
}

#[tokio::test]
async fn ccm_holders_are_adopted_only_when_asked() {
    bounded(async {
        let env = edge_env(CCM_SEED).await;

        // Adopting the CCM's holder without a suffix: the address comes from it, no holder is
        // created.
        let op = Operator::here(&env, Some(""), vec![]);
        env.apply_sharedip("web1", edge()).await;
        let web1 = eventually_allocated(&env, "web1").await;
        assert_eq!(owner_of(&env, &web1), Some(300), "{web1} on the CCM holder");
        env.eventually_shared(&web1, &[101]).await;
        // An address the CCM holder already had, named in spec.address: shared, and when the
        // SharedIP goes it stays in the account (the user gave it).
        let mut given = edge();
        given["address"] = json!("198.51.100.51");
        env.apply_sharedip("given", given).await;
        env.eventually_shared("198.51.100.51", &[101]).await;
        delete_until_gone(&env, "given").await;
        assert!(env.shared("198.51.100.51").is_empty(), "unshared");
        assert_eq!(owner_of(&env, "198.51.100.51"), Some(300), "kept");
        let c = env.standin.counters();
        assert_eq!(
            (c.linodes_created, c.ipv4_allocated, c.ipv4_deleted),
            (0, 1, 0),
            "{c:?}"
        );
        op.stop().await;

        // With a suffix: the suffixed holder, not the other one.
        let op = Operator::here(&env, Some("prod"), vec![]);
        env.apply_sharedip("web2", edge()).await;
        let web2 = eventually_allocated(&env, "web2").await;
        assert_eq!(
            owner_of(&env, &web2),
            Some(301),
            "{web2} on the prod CCM holder"
        );
        env.eventually_shared(&web2, &[101]).await;
        assert_eq!(env.standin.counters().linodes_created, 0);
        op.stop().await;

        // Without the flag the CCM's holders are not this cluster's: a holder is created, and
        // an address allocated on a CCM holder earlier is no longer deleted with its SharedIP.
        let op = Operator::here(&env, None, vec![]);
        env.apply_sharedip("web3", edge()).await;
        let web3 = eventually_allocated(&env, "web3").await;
        let own = the_holder(&env, HOLDER_LABEL);
        assert_eq!(owner_of(&env, &web3), Some(own), "{web3} on a new holder");
        env.eventually_shared(&web3, &[101]).await;
        delete_until_gone(&env, "web1").await;
        assert!(env.shared(&web1).is_empty(), "{web1} unshared");
        assert_eq!(
            owner_of(&env, &web1),
            Some(300),
            "{web1} left on the CCM holder"
        );
        let c = env.standin.counters();
        assert_eq!(
            (c.linodes_created, c.ipv4_allocated, c.ipv4_deleted),
            (1, 3, 0),
            "{c:?}"
        );
        op.stop().await;

        // Adopting again: an address allocated on the adopted holder is given back with its
        // SharedIP (Delete).
        let op = Operator::here(&env, Some("prod"), vec![]);
        delete_until_gone(&env, "web2").await;
        assert_eq!(owner_of(&env, &web2), None, "{web2} given back");
        assert_eq!(
            owner_of(&env, "198.51.100.61"),
            Some(301),
            "never allocated: kept"
        );
        assert_eq!(env.standin.counters().ipv4_deleted, 1);
        op.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_named_holder_serves_its_region_and_none_is_created() {
    bounded(async {
        let env = edge_env(SEED).await;
        // 201 is in another region: it does not serve us-east; 100 does.
        let op = Operator::here(&env, None, vec![201, 100]);
        env.apply_sharedip("web", edge()).await;
        let web = eventually_allocated(&env, "web").await;
        assert_eq!(owner_of(&env, &web), Some(100), "{web} on the named holder");
        env.eventually_shared(&web, &[101]).await;
        env.apply_sharedip("api", edge()).await;
        let api = eventually_allocated(&env, "api").await;
        assert_eq!(owner_of(&env, &api), Some(100), "{api} on the named holder");
        assert!(labelled(&env, HOLDER_LABEL).is_empty());
        let c = env.standin.counters();
        assert_eq!((c.linodes_created, c.ipv4_allocated), (0, 2), "{c:?}");

        // The named holder is this cluster's: Delete gives its allocated address back, and
        // leaves the addresses it had before (seeded, shared by others) alone.
        delete_until_gone(&env, "web").await;
        assert_eq!(owner_of(&env, &web), None, "{web} given back");
        for seeded in ["192.0.2.10", "192.0.2.11", "198.51.100.7"] {
            assert_eq!(owner_of(&env, seeded), Some(100), "{seeded}");
        }
        let c = env.standin.counters();
        assert_eq!(
            (c.linodes_created, c.ipv4_allocated, c.ipv4_deleted),
            (0, 2, 1),
            "{c:?}"
        );
        op.stop().await;
    })
    .await;
}
