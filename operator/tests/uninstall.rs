//! `helm uninstall` and `helm install` again, with real helm against a real kube-apiserver and
//! the Linode API stand-in. The chart's objects run for real through a stand-in for the kubelet
//! and the Deployment and Job controllers (support/kubelet.rs): the operator Deployment's pods,
//! and the pre-delete hook Job with the operator's ServiceAccount and RBAC.

// Test code: a panic is a failed test, and a scenario reads best in one piece.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, PostParams};
use kube::ResourceExt;
use serde_json::json;
use sharedip_api::FINALIZER;
use support::kubelet::{Kubelet, Owner};
use support::*;

const NS: &str = "sharedip-system";
const RELEASE: &str = "sharedip";
const LEASE: &str = "sharedip-operator";
const DEPLOYMENT: &str = "sharedip-operator";

fn strings(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn sharing(pairs: &[(u64, &[&str])]) -> BTreeMap<u64, BTreeSet<String>> {
    pairs.iter().map(|(l, a)| (*l, strings(a))).collect()
}

async fn helm(env: &Env, args: &[&str]) -> Result<String, String> {
    let out = env.cp.helm(args).await.map_err(|e| e.to_string())?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

async fn install(env: &Env, kubelet: &mut Kubelet) {
    install_with(env, kubelet, &[]).await
}

async fn install_with(env: &Env, kubelet: &mut Kubelet, extra: &[&str]) {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/sharedip");
    let chart = chart.display().to_string();
    let token = format!("linode.token={TOKEN}");
    let api_url = format!("linode.apiURL={}", env.standin.base_url());
    let mut args = vec![
        "install",
        RELEASE,
        &chart,
        "-n",
        NS,
        "--set",
        &token,
        "--set",
        &api_url,
        "--set",
        "agent.enabled=false",
        "--set",
        "operator.logging.format=text",
        "--set",
        "operator.logging.level=info\\,sharedip_operator=debug",
        "--set",
        "operator.batchWindow=100ms",
        "--timeout",
        "100s",
    ];
    args.extend_from_slice(extra);
    let r = kubelet.while_running(env, helm(env, &args)).await;
    if let Err(e) = r {
        panic!("helm install: {e}\n{}", kubelet.logs());
    }
}

async fn uninstall(env: &Env, kubelet: &mut Kubelet) -> String {
    let args = ["uninstall", RELEASE, "-n", NS, "--timeout", "100s"];
    match kubelet.while_running(env, helm(env, &args)).await {
        Ok(out) => out,
        Err(e) => panic!("helm uninstall: {e}\n{}", kubelet.logs()),
    }
}

async fn deployment_uid(env: &Env) -> Option<String> {
    Api::<Deployment>::namespaced(env.client(), NS)
        .get_opt(DEPLOYMENT)
        .await
        .expect("get Deployment")
        .and_then(|d| d.metadata.uid)
}

async fn lease(env: &Env) -> Lease {
    Api::<Lease>::namespaced(env.client(), NS)
        .get(LEASE)
        .await
        .expect("get Lease")
}

async fn expect_shared(env: &Env, kubelet: &mut Kubelet, want: &BTreeMap<u64, BTreeSet<String>>) {
    let what = format!("sharing exactly {want:?}");
    let check = eventually(&what, || async {
        let got = env.by_linode();
        if &got == want {
            Ok(())
        } else {
            Err(format!("sharing is {got:?}"))
        }
    });
    kubelet.while_running(env, check).await;
}

async fn expect_condition(env: &Env, kubelet: &mut Kubelet, name: &str, reason: &str) {
    let status = if reason == "Shared" { "True" } else { "False" };
    let wait = env.eventually_condition(name, "Shared", status, reason);
    kubelet.while_running(env, wait).await;
}

#[tokio::test]
async fn uninstall_unshares_and_lets_go_and_install_again_shares_again() {
    tokio::time::timeout(Duration::from_secs(280), async {
        let env = Env::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        env.create_namespace(NS).await;
        env.add_node("node-a", &[("role", "primary")], Some(101))
            .await;
        env.add_node("node-b", &[("role", "secondary")], Some(102))
            .await;
        // Shared by hand, outside the operator: no uninstall may touch it.
        env.standin
            .state()
            .share(101, &["198.51.100.7"])
            .expect("share by hand");
        let mut kubelet = Kubelet::new(NS, dir.path());
        let _dump = kubelet.dump_on_panic();

        install(&env, &mut kubelet).await;
        env.apply_sharedip("web", spec("192.0.2.10")).await;
        let mut v6 = spec("2001:db8:1:2::");
        v6["prefix"] = serde_json::json!(64);
        env.apply_sharedip("v6", v6).await;
        let shared = sharing(&[
            (101, &["192.0.2.10", "2001:db8:1:2::", "198.51.100.7"]),
            (102, &["192.0.2.10", "2001:db8:1:2::"]),
        ]);
        expect_shared(&env, &mut kubelet, &shared).await;
        expect_condition(&env, &mut kubelet, "web", "Shared").await;
        expect_condition(&env, &mut kubelet, "v6", "Shared").await;
        let first = deployment_uid(&env).await.expect("the Deployment");
        let leader = lease(&env)
            .await
            .spec
            .and_then(|s| s.holder_identity)
            .expect("a leader");

        let out = uninstall(&env, &mut kubelet).await;
        eprintln!("helm uninstall: {out}");

        // Nothing of ours is shared; the hand-shared address is.
        assert_eq!(
            env.by_linode(),
            sharing(&[(101, &["198.51.100.7"])]),
            "after uninstall"
        );
        // Every address is still in the account, on its owner.
        let owners: BTreeMap<String, u64> = env.standin.state().read(|a| {
            a.ipv4_addresses()
                .iter()
                .map(|(ip, v)| (ip.to_string(), v.linode_id))
                .collect()
        });
        assert_eq!(owners.get("192.0.2.10"), Some(&100));
        let ranges: BTreeSet<String> = env
            .standin
            .state()
            .read(|a| a.ipv6_ranges().keys().map(|r| r.to_string()).collect());
        assert!(ranges.contains("2001:db8:1:2::"), "{ranges:?}");
        let deletes: Vec<_> = env
            .standin
            .request_log()
            .counts()
            .into_iter()
            .filter(|c| c.method != "GET" && !c.template.ends_with("/networking/ips/share"))
            .collect();
        assert!(
            deletes.is_empty(),
            "only reads and share calls: {deletes:?}"
        );
        // The SharedIPs stay, let go: no finalizer of ours, status says why.
        for (name, address) in [("web", "192.0.2.10"), ("v6", "2001:db8:1:2::")] {
            let sip = env.get(name).await.expect("the SharedIP stays");
            let f = sip.metadata.finalizers.clone().unwrap_or_default();
            assert!(
                !f.iter().any(|f| f == FINALIZER),
                "{name}: finalizers {f:?}"
            );
            let st = sip.status.expect("status");
            assert!(st.shared_with.is_empty(), "{name}: {:?}", st.shared_with);
            // Still its address: `kubectl get` goes on showing it.
            assert_eq!(st.address.as_deref(), Some(address), "{name}");
            let ready = st
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready")
                .expect("Ready");
            assert_eq!(
                (ready.status.as_str(), ready.reason.as_str()),
                ("False", "Uninstalled")
            );
        }
        let reasons = env.event_reasons("web").await;
        assert!(
            reasons.iter().any(|(r, _)| r == "Uninstalled"),
            "{reasons:?}"
        );
        // The old leader lost the Lease, was restarted (as the kubelet does) and never led
        // again; Helm then deleted the Deployment and its pods stopped.
        let l = lease(&env).await;
        let holder = l.spec.and_then(|s| s.holder_identity).unwrap_or_default();
        assert!(holder.starts_with("uninstall/"), "holder {holder}");
        let notes = l.metadata.annotations.unwrap_or_default();
        assert_eq!(
            notes.get("sharedip.io/retired-deployment-uid"),
            Some(&first)
        );
        assert_eq!(notes.get("sharedip.io/stepped-down"), Some(&leader));
        assert_eq!(
            deployment_uid(&env).await,
            None,
            "Helm deleted the Deployment"
        );
        let pods = kubelet.pods();
        let old_leader = pods
            .iter()
            .find(|p| p.name == leader)
            .expect("the old leader's pod");
        let log = old_leader.log_text();
        assert!(
            old_leader.starts >= 2,
            "restarted after losing the Lease: {old_leader:?}"
        );
        assert_eq!(log.matches("became leader").count(), 1, "{log}");
        assert!(log.contains("stopped for the uninstall"), "{log}");
        let job = pods
            .iter()
            .find(|p| matches!(&p.owner, Owner::Job { name } if name == "sharedip-uninstall"))
            .expect("the hook ran");
        assert_eq!(job.exits, vec![Some(0)], "{}", job.log_text());
        // The ledger stays for the next installation (nothing recorded any more).
        let ledger = Api::<ConfigMap>::namespaced(env.client(), NS)
            .list(&Default::default())
            .await
            .expect("list ConfigMaps")
            .items
            .into_iter()
            .find(|c| {
                c.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("sharedip-ledger-"))
            })
            .expect("the ledger stays");
        let keys: Vec<String> = ledger
            .data
            .unwrap_or_default()
            .into_keys()
            .filter(|k| k.starts_with("linode."))
            .collect();
        assert!(keys.is_empty(), "{keys:?}");

        // Installed again: the new installation takes over at once (not after the hold) and
        // shares every address again.
        install(&env, &mut kubelet).await;
        let second = deployment_uid(&env).await.expect("the new Deployment");
        assert_ne!(second, first);
        expect_shared(&env, &mut kubelet, &shared).await;
        expect_condition(&env, &mut kubelet, "web", "Shared").await;
        expect_condition(&env, &mut kubelet, "v6", "Shared").await;
        let notes = lease(&env).await.metadata.annotations.unwrap_or_default();
        assert!(
            !notes.contains_key("sharedip.io/retired-deployment-uid"),
            "the new leader cleared the uninstall's marks: {notes:?}"
        );
        let sip = env.get("web").await.expect("web");
        assert!(sip
            .metadata
            .finalizers
            .unwrap_or_default()
            .iter()
            .any(|f| f == FINALIZER));

        // And a second uninstall works the same.
        uninstall(&env, &mut kubelet).await;
        assert_eq!(env.by_linode(), sharing(&[(101, &["198.51.100.7"])]));
    })
    .await
    .expect("test finished within 280 s");
}

#[tokio::test]
async fn uninstall_stops_a_single_replica_without_leader_election() {
    tokio::time::timeout(Duration::from_secs(200), async {
        let env = Env::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        env.create_namespace(NS).await;
        env.add_node("node-a", &[("role", "primary")], Some(101))
            .await;
        env.add_node("node-b", &[("role", "secondary")], Some(102))
            .await;
        let mut kubelet = Kubelet::new(NS, dir.path());
        let _dump = kubelet.dump_on_panic();
        let single = [
            "--set",
            "operator.replicaCount=1",
            "--set",
            "operator.leaderElection.enabled=false",
        ];
        install_with(&env, &mut kubelet, &single).await;
        env.apply_sharedip("web", spec("192.0.2.10")).await;
        let shared = sharing(&[(101, &["192.0.2.10"]), (102, &["192.0.2.10"])]);
        expect_shared(&env, &mut kubelet, &shared).await;
        expect_condition(&env, &mut kubelet, "web", "Shared").await;

        uninstall(&env, &mut kubelet).await;
        assert_eq!(env.by_linode(), BTreeMap::new(), "nothing shared");
        let sip = env.get("web").await.expect("web stays");
        let f = sip.metadata.finalizers.unwrap_or_default();
        assert!(!f.iter().any(|f| f == FINALIZER), "finalizers {f:?}");
        let pods = kubelet.pods();
        let replica = pods
            .iter()
            .find(|p| matches!(p.owner, Owner::Deployment { .. }))
            .expect("the replica");
        let log = replica.log_text();
        assert!(log.contains("being uninstalled; stopping"), "{log}");
        assert!(log.contains("stopped for the uninstall"), "{log}");
        assert_eq!(log.matches("controller started").count(), 1, "{log}");

        install_with(&env, &mut kubelet, &single).await;
        expect_shared(&env, &mut kubelet, &shared).await;
        expect_condition(&env, &mut kubelet, "web", "Shared").await;
    })
    .await
    .expect("test finished within 200 s");
}

/// The retained-address list of the installation's cluster: former SharedIP name → address.
async fn retained(env: &Env) -> BTreeMap<String, String> {
    let cm = Api::<ConfigMap>::namespaced(env.client(), NS)
        .list(&Default::default())
        .await
        .expect("list ConfigMaps")
        .items
        .into_iter()
        .find(|c| {
            c.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("sharedip-retained-"))
        });
    cm.and_then(|c| c.data)
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k != "cluster-id")
        .map(|(k, v)| {
            let entry: serde_json::Value = serde_json::from_str(&v).expect("entry parses");
            let address = entry["address"].as_str().expect("address").to_string();
            (k, address)
        })
        .collect()
}

async fn allocated(env: &Env, kubelet: &mut Kubelet, name: &str) -> String {
    let what = format!("{name} allocated");
    let check = eventually(&what, || async {
        let sip = env.get(name).await;
        match sip.as_ref().and_then(|s| s.spec.allocated_address.as_ref()) {
            Some(_) => Ok(()),
            None => Err(format!("status {:?}", sip.and_then(|s| s.status))),
        }
    });
    kubelet.while_running(env, check).await;
    let sip = env.get(name).await.expect("the SharedIP");
    sip.spec.allocated_address.expect("allocated")
}

#[tokio::test]
async fn uninstall_and_install_keep_every_allocated_address() {
    tokio::time::timeout(Duration::from_secs(280), async {
        let env = Env::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        env.create_namespace(NS).await;
        env.add_node("node-a", &[("role", "primary")], Some(101))
            .await;
        env.add_node("node-b", &[("role", "secondary")], Some(102))
            .await;
        let mut kubelet = Kubelet::new(NS, dir.path());
        let _dump = kubelet.dump_on_panic();
        // No address: each is allocated. `keep` survives the uninstall, the others are deleted
        // while the operator is away and re-created from the same manifests.
        let manifest = || {
            let mut s = spec("unused");
            s.as_object_mut().expect("object").remove("address");
            s
        };
        let names = ["web", "api", "keep"];

        install(&env, &mut kubelet).await;
        for name in names {
            env.apply_sharedip(name, manifest()).await;
        }
        // A LoadBalancer Service of the chart's class: its address is allocated too.
        let services: Api<Service> = Api::namespaced(env.client(), "default");
        let svc: Service = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "ingress"},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": "sharedip.io/linode",
                     "ports": [{"port": 80, "protocol": "TCP"}]},
        }))
        .expect("Service");
        let svc = services
            .create(&PostParams::default(), &svc)
            .await
            .expect("create Service");
        let generated = format!("svc-{}", svc.uid().expect("uid"));
        let svc_address = allocated(&env, &mut kubelet, &generated).await;
        let mut addresses = BTreeMap::new();
        for name in names {
            addresses.insert(name, allocated(&env, &mut kubelet, name).await);
        }
        for name in names {
            expect_condition(&env, &mut kubelet, name, "Shared").await;
        }
        let distinct: BTreeSet<&String> = addresses.values().collect();
        assert_eq!(distinct.len(), 3, "{addresses:?}");
        let before = env.standin.counters();
        assert_eq!(
            (
                before.linodes_created,
                before.ipv4_allocated,
                before.ipv4_deleted
            ),
            (1, 4, 0),
            "{before:?}"
        );

        uninstall(&env, &mut kubelet).await;
        assert_eq!(env.by_linode(), BTreeMap::new(), "nothing shared");
        // Every allocated address is listed under its SharedIP's name, the Service's too.
        let mut want: BTreeMap<String, String> = addresses
            .iter()
            .map(|(n, a)| (n.to_string(), a.clone()))
            .collect();
        want.insert(generated.clone(), svc_address.clone());
        assert_eq!(retained(&env).await, want);
        // Nothing keeps the Service from being deleted while the operator is away; it keeps
        // what it shows.
        let svc = services.get("ingress").await.expect("the Service");
        assert!(
            !svc.finalizers().iter().any(|f| f == "sharedip.io/service"),
            "{:?}",
            svc.finalizers()
        );
        assert_eq!(
            svc.annotations().get("sharedip.io/assigned-addresses"),
            Some(&svc_address)
        );

        // Deleted while nothing runs: no finalizer holds them, nothing releases the addresses.
        for name in ["web", "api"] {
            env.delete_sharedip(name).await;
            assert!(env.get(name).await.is_none(), "{name} gone at once");
            env.apply_sharedip(name, manifest()).await;
        }

        install(&env, &mut kubelet).await;
        for name in names {
            expect_condition(&env, &mut kubelet, name, "Shared").await;
            let sip = env.get(name).await.expect("the SharedIP");
            assert_eq!(
                sip.spec.allocated_address.as_ref(),
                Some(&addresses[name]),
                "{name} has its old address"
            );
        }
        // The Service is served again, with its address.
        expect_condition(&env, &mut kubelet, &generated, "Shared").await;
        let sip = env.get(&generated).await.expect("the Service's SharedIP");
        assert_eq!(sip.spec.allocated_address.as_ref(), Some(&svc_address));
        let svc = services.get("ingress").await.expect("the Service");
        assert!(svc.finalizers().iter().any(|f| f == "sharedip.io/service"));
        let mut shared: Vec<&str> = addresses.values().map(String::as_str).collect();
        shared.push(&svc_address);
        expect_shared(
            &env,
            &mut kubelet,
            &sharing(&[(101, &shared), (102, &shared)]),
        )
        .await;
        // Taken back (web, api) and tidied at start (keep): the list is empty.
        let check = eventually("the retained list emptied", || async {
            let r = retained(&env).await;
            if r.is_empty() {
                Ok(())
            } else {
                Err(format!("{r:?}"))
            }
        });
        kubelet.while_running(&env, check).await;
        let after = env.standin.counters();
        assert_eq!(
            (
                after.linodes_created,
                after.ipv4_allocated,
                after.ipv4_deleted
            ),
            (1, 4, 0),
            "nothing allocated or deleted: {after:?}"
        );
    })
    .await
    .expect("test finished within 280 s");
}
