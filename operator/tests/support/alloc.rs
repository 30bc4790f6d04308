//! Helpers of the allocation tests: SharedIPs without `spec.address`, the IP holder the
//! operator creates for them, and what the stand-in's account shows of both.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{json, Value};
use sharedip_api::SharedIP;

use super::{eventually, Env, WAIT};

/// The holder label of the in-process operators' cluster (`--cluster-id test-cluster`) in the
/// test region.
pub const HOLDER_LABEL: &str = "sharedip-holder-us-east-test-cluster";

/// Bounds a whole test, so a hang fails instead of blocking CI.
pub async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(240), f)
        .await
        .expect("test finished within 240 s");
}

/// An Env on `seed` with node-a (Linode 101) labelled `role=edge`, the nodes [`edge`] selects.
pub async fn edge_env(seed: &str) -> Env {
    let env = Env::start_with_seed(seed).await;
    env.add_node("node-a", &[("role", "edge")], Some(101)).await;
    env
}

/// A spec without an address, selecting the nodes labelled `role=edge`.
pub fn edge() -> Value {
    json!({"primary": {"nodeSelector": {"matchLabels": {"role": "edge"}}}})
}

/// [`edge`] with the fields of `extra` added or replaced.
pub fn allocated_spec(extra: Value) -> Value {
    let mut spec = edge();
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    spec
}

/// Creates or replaces SharedIP `name` on `client`'s cluster, with `annotations`.
pub async fn apply_on(client: &kube::Client, name: &str, spec: Value, annotations: Value) {
    let obj = json!({
        "apiVersion": "sharedip.io/v1alpha1",
        "kind": "SharedIP",
        "metadata": {"name": name, "annotations": annotations},
        "spec": spec,
    });
    Api::<SharedIP>::all(client.clone())
        .patch(
            name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&obj),
        )
        .await
        .expect("apply SharedIP");
}

pub async fn get_on(client: &kube::Client, name: &str) -> Option<SharedIP> {
    Api::<SharedIP>::all(client.clone())
        .get_opt(name)
        .await
        .expect("get SharedIP")
}

pub async fn delete_on(client: &kube::Client, name: &str) {
    Api::<SharedIP>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete SharedIP");
}

/// Waits until SharedIP `name` on `client`'s cluster has `spec.allocatedAddress`, and returns it.
pub async fn allocated_on(client: &kube::Client, name: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let sip = get_on(client, name).await;
        if let Some(a) = sip.as_ref().and_then(|s| s.spec.allocated_address.clone()) {
            return a;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} got no allocated address; status {:?}",
            sip.and_then(|s| s.status)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`allocated_on`] the Env's cluster.
pub async fn eventually_allocated(env: &Env, name: &str) -> String {
    allocated_on(&env.client(), name).await
}

/// Waits until SharedIP `name` on `client`'s cluster is gone (its finalizer done).
pub async fn gone_on(client: &kube::Client, name: &str) {
    eventually(&format!("{name} deleted"), || async {
        match get_on(client, name).await {
            None => Ok(()),
            Some(s) => Err(format!("still there, status {:?}", s.status)),
        }
    })
    .await;
}

/// [`gone_on`] the Env's cluster.
pub async fn eventually_gone(env: &Env, name: &str) {
    gone_on(&env.client(), name).await;
}

/// Deletes SharedIP `name` and waits until it is gone.
pub async fn delete_until_gone(env: &Env, name: &str) {
    env.delete_sharedip(name).await;
    eventually_gone(env, name).await;
}

/// The stand-in's Linodes labelled `label`: (id, status, region).
pub fn labelled_linodes(env: &Env, label: &str) -> Vec<(u64, String, String)> {
    env.standin.state().read(|a| {
        a.linodes()
            .values()
            .filter(|l| l.label == label)
            .map(|l| (l.id, l.status.clone(), l.region.clone()))
            .collect()
    })
}

/// The IDs of the stand-in's Linodes labelled `label`.
pub fn labelled(env: &Env, label: &str) -> Vec<u64> {
    labelled_linodes(env, label)
        .into_iter()
        .map(|(id, _, _)| id)
        .collect()
}

/// The one Linode labelled `label`.
pub fn the_holder(env: &Env, label: &str) -> u64 {
    let found = labelled(env, label);
    assert_eq!(found.len(), 1, "one Linode labelled {label}: {found:?}");
    found[0]
}

/// This cluster's holder, if there is one (never more).
pub fn holder_id(env: &Env) -> Option<u64> {
    let ids = labelled(env, HOLDER_LABEL);
    assert!(ids.len() <= 1, "one holder at most: {ids:?}");
    ids.first().copied()
}

/// The Linode owning `ip`, if the account has it.
pub fn owner_of(env: &Env, ip: &str) -> Option<u64> {
    env.standin.sharing().ips.get(ip).map(|i| i.owner)
}

/// The retained addresses the operator lists, by SharedIP name.
pub async fn retained_list(env: &Env) -> BTreeMap<String, String> {
    let cms: Api<ConfigMap> = Api::namespaced(env.client(), "default");
    cms.get_opt("sharedip-retained-test-cluster")
        .await
        .expect("read ConfigMap")
        .and_then(|c| c.data)
        .unwrap_or_default()
}

/// The reason and message of `sip`'s condition `type_`, empty without one.
pub fn condition(sip: &SharedIP, type_: &str) -> (String, String) {
    sip.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .map(|c| (c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}
