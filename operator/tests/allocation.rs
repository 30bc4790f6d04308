//! Allocated addresses against a real kube-apiserver and the Linode API stand-in: a SharedIP
//! without `spec.address` gets an address on an IP holder the operator creates, shares it,
//! gives it back or keeps it when deleted, and takes a retained address back by name.

// Test code: a panic is a failed test, and a scenario reads best in one piece.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod support;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use serde_json::{json, Value};
use support::*;

/// The holder label of the in-process operators' cluster in the test region.
const HOLDER_LABEL: &str = "sharedip-holder-us-east-test-cluster";

fn allocated_spec(extra: Value) -> Value {
    let mut spec = json!({"primary": {"nodeSelector": {"matchLabels": {"role": "edge"}}}});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    spec
}

async fn eventually_allocated(env: &Env, name: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let sip = env.get(name).await;
        if let Some(a) = sip.as_ref().and_then(|s| s.spec.allocated_address.clone()) {
            return a;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} got no allocated address; status {:?}",
            sip.and_then(|s| s.status)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The stand-in's Linodes labelled `label`: (id, status, region).
fn labelled(env: &Env, label: &str) -> Vec<(u64, String, String)> {
    env.standin.state().read(|a| {
        a.linodes()
            .values()
            .filter(|l| l.label == label)
            .map(|l| (l.id, l.status.clone(), l.region.clone()))
            .collect()
    })
}

fn owner_of(env: &Env, ip: &str) -> Option<u64> {
    env.standin.sharing().ips.get(ip).map(|i| i.owner)
}

async fn retained_list(env: &Env) -> BTreeMap<String, String> {
    let cms: Api<ConfigMap> = Api::namespaced(env.client(), "default");
    cms.get_opt("sharedip-retained-test-cluster")
        .await
        .expect("read ConfigMap")
        .and_then(|c| c.data)
        .unwrap_or_default()
}

async fn eventually_gone(env: &Env, name: &str) {
    eventually(&format!("{name} deleted"), || async {
        match env.get(name).await {
            None => Ok(()),
            Some(s) => Err(format!("still there, status {:?}", s.status)),
        }
    })
    .await;
}

#[tokio::test]
async fn allocates_on_a_created_holder_then_deletes_or_retains_and_takes_back_by_name() {
    tokio::time::timeout(std::time::Duration::from_secs(240), async {
        let env = Env::start().await;
        env.add_node("node-a", &[("role", "edge")], Some(101)).await;
        let _op = env.spawn_operator();

        env.apply_sharedip("web", allocated_spec(json!({}))).await;
        let web = eventually_allocated(&env, "web").await;
        let holders = labelled(&env, HOLDER_LABEL);
        assert_eq!(holders.len(), 1, "one holder: {holders:?}");
        let (holder, status, region) = holders[0].clone();
        assert_eq!((status.as_str(), region.as_str()), ("offline", "us-east"));
        assert_eq!(owner_of(&env, &web), Some(holder), "{web} is on the holder");
        env.eventually_shared(&web, &[101]).await;
        let sip = env.get("web").await.expect("web");
        assert_eq!(sip.status.and_then(|s| s.address), Some(web.clone()));

        // A second SharedIP gets another address on the same holder; the Retain one is kept.
        env.apply_sharedip("api", allocated_spec(json!({"reclaimPolicy": "Retain"})))
            .await;
        let api = eventually_allocated(&env, "api").await;
        assert_ne!(api, web);
        assert_eq!(owner_of(&env, &api), Some(holder));
        env.eventually_shared(&api, &[101]).await;
        let c = env.standin.counters();
        assert_eq!((c.linodes_created, c.ipv4_allocated), (1, 2), "{c:?}");

        // Delete (the default) gives the address back once it is unshared.
        env.delete_sharedip("web").await;
        eventually_gone(&env, "web").await;
        assert_eq!(owner_of(&env, &web), None, "{web} given back");
        assert_eq!(env.standin.counters().ipv4_deleted, 1);

        // Retain keeps it on the holder and lists it under the SharedIP's name.
        env.delete_sharedip("api").await;
        eventually_gone(&env, "api").await;
        assert_eq!(
            owner_of(&env, &api),
            Some(holder),
            "{api} kept on the holder"
        );
        assert!(env.shared(&api).is_empty(), "{api} unshared");
        let listed = retained_list(&env).await;
        assert!(
            listed.get("api").is_some_and(|e| e.contains(&api)),
            "{listed:?}"
        );

        // Re-applying the same object takes the retained address back; nothing is allocated.
        env.apply_sharedip("api", allocated_spec(json!({"reclaimPolicy": "Retain"})))
            .await;
        assert_eq!(eventually_allocated(&env, "api").await, api);
        env.eventually_shared(&api, &[101]).await;
        assert!(!retained_list(&env).await.contains_key("api"));
        let c = env.standin.counters();
        assert_eq!(
            (c.linodes_created, c.ipv4_allocated, c.ipv4_deleted),
            (1, 2, 1),
            "{c:?}"
        );
        assert_eq!(labelled(&env, HOLDER_LABEL).len(), 1);
    })
    .await
    .expect("bounded");
}
