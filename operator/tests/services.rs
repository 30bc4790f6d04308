//! LoadBalancer Services against a real kube-apiserver and the Linode API stand-in, with the
//! operator in-process: a Service of our class gets a generated SharedIP, an address in its
//! status and a finalizer; shares an address only under the sharing rules; reports bad input
//! without touching anything; and leaves nothing behind when deleted or turned into another
//! type. Other Services are never touched. (The data path through kube-proxy and the agents is
//! proven in the e2e lab.)

// Test code: a panic is a failed test, and a scenario reads best in one piece.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::{json, Value};
use sharedip_api::SharedIP;
use sharedip_operator::service::{self, ServiceSettings};
use support::alloc::*;
use support::*;

const NS: &str = "default";

fn settings() -> sharedip_operator::controller::ControllerSettings {
    let mut s = fast_settings("in-process");
    s.services = Some(ServiceSettings {
        sweep_interval: Duration::from_secs(1),
        ..ServiceSettings::default()
    });
    s
}

fn services(env: &Env) -> Api<Service> {
    Api::namespaced(env.client(), NS)
}

/// A LoadBalancer Service of our class, port 80/TCP, with `annotations`.
fn lb(name: &str, annotations: Value, extra_spec: Value) -> Service {
    let mut spec = json!({
        "type": "LoadBalancer",
        "loadBalancerClass": service::DEFAULT_CLASS,
        "selector": {"app": name},
        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra_spec.as_object()) {
        s.extend(e.clone());
    }
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS, "annotations": annotations},
        "spec": spec,
    }))
    .unwrap()
}

async fn create(env: &Env, svc: Service) -> Service {
    services(env)
        .create(&PostParams::default(), &svc)
        .await
        .expect("create Service")
}

async fn get_svc(env: &Env, name: &str) -> Option<Service> {
    services(env).get_opt(name).await.expect("get Service")
}

/// One EndpointSlice for `name` with a ready endpoint on each of `nodes`.
async fn endpoints(env: &Env, name: &str, nodes: &[&str]) {
    let eps: Vec<Value> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            json!({"addresses": [format!("198.51.100.{}", 130 + i)], "nodeName": n,
                   "conditions": {"ready": true}})
        })
        .collect();
    let slice: EndpointSlice = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": format!("{name}-x"), "namespace": NS,
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }))
    .unwrap();
    Api::<EndpointSlice>::namespaced(env.client(), NS)
        .patch(
            &format!("{name}-x"),
            &PatchParams::apply("test").force(),
            &Patch::Apply(&slice),
        )
        .await
        .expect("apply EndpointSlice");
}

fn ingress(svc: &Service) -> Vec<String> {
    svc.status
        .iter()
        .flat_map(|s| s.load_balancer.iter())
        .flat_map(|lb| lb.ingress.iter().flatten())
        .filter_map(|i| i.ip.clone())
        .collect()
}

async fn eventually_ingress(env: &Env, name: &str) -> (Service, String) {
    let mut last = None;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(svc) = get_svc(env, name).await {
            if let Some(ip) = ingress(&svc).first() {
                return (svc.clone(), ip.clone());
            }
            last = Some(svc);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no EXTERNAL-IP for {name}: {:?}",
            last.map(|s| (s.metadata.annotations, s.status))
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn generated_name(svc: &Service) -> String {
    format!("svc-{}", svc.uid().unwrap())
}

async fn event_reasons_of(env: &Env, name: &str) -> Vec<String> {
    env.event_reasons(name)
        .await
        .into_iter()
        .map(|(r, _)| r)
        .collect()
}

async fn eventually_event(env: &Env, name: &str, reason: &str) -> String {
    let mut notes = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        notes = env.event_reasons(name).await;
        if let Some((_, note)) = notes.iter().find(|(r, _)| r == reason) {
            return note.clone();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no {reason} event on {name}: {notes:?}");
}

async fn eventually_gone_svc(env: &Env, name: &str) {
    eventually(&format!("Service {name} gone"), || async {
        match get_svc(env, name).await {
            None => Ok(()),
            Some(s) => Err(format!("finalizers {:?}", s.metadata.finalizers)),
        }
    })
    .await;
}

#[tokio::test]
async fn allocated_address_in_status_then_released_on_delete() {
    bounded(async {
        let env = edge_env(SEED).await;
        env.add_node("node-b", &[], Some(102)).await;
        // Excluded from external load balancers: never announces, never gets the address.
        env.add_node(
            "node-c",
            &[(
                "node.kubernetes.io/exclude-from-external-load-balancers",
                "",
            )],
            Some(103),
        )
        .await;
        let _op = env.spawn_operator_with(settings());

        // Not ours: never touched.
        let mut other = lb("other", json!({}), json!({}));
        other.spec.as_mut().unwrap().load_balancer_class = Some("example.com/else".into());
        create(&env, other).await;
        let plain = lb(
            "plain",
            json!({}),
            json!({"type": "ClusterIP", "loadBalancerClass": null}),
        );
        create(&env, plain).await;

        let web = create(&env, lb("web", json!({}), json!({}))).await;
        endpoints(&env, "web", &["node-a"]).await;
        let (svc, ip) = eventually_ingress(&env, "web").await;
        let sip_name = generated_name(&web);
        let sip = env.get(&sip_name).await.expect("generated SharedIP");
        assert_eq!(sip.spec.allocated_address.as_deref(), Some(ip.as_str()));
        assert_eq!(sip.labels()["sharedip.io/service-name"], "web");
        assert_eq!(
            sip.annotations()["sharedip.io/services"],
            format!("{NS}/web/{}", web.uid().unwrap())
        );
        // Cluster policy with a ready endpoint: every eligible node, not the excluded one.
        let gate = sip.spec.endpoint_gate.clone().expect("endpoint gate");
        assert_eq!(gate.ready, vec!["node-a", "node-b"]);
        assert!(!sip.spec.failback, "no selectors: every node as equals");
        env.eventually_shared(&ip, &[101, 102]).await;
        assert!(svc.finalizers().contains(&service::FINALIZER.to_owned()));
        assert_eq!(svc.annotations()[service::ASSIGNED_ANNOTATION], ip);
        assert!(event_reasons_of(&env, "web")
            .await
            .contains(&"AddressAssigned".into()));
        let status = svc.status.clone().unwrap();
        let cond = status
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == service::ANNOUNCED_CONDITION)
            .expect("condition");
        assert_eq!(
            (cond.status.as_str(), cond.reason.as_str()),
            ("False", "NotAnnounced")
        );

        // No endpoint left: no node may announce.
        endpoints(&env, "web", &[]).await;
        eventually("the gate empties", || async {
            let g = env.get(&sip_name).await.and_then(|s| s.spec.endpoint_gate);
            match g {
                Some(g) if g.ready.is_empty() => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        // The address stays in the status while the Service holds it.
        assert_eq!(
            ingress(&get_svc(&env, "web").await.unwrap()),
            vec![ip.clone()]
        );

        // Other Services were never touched.
        for name in ["other", "plain"] {
            let s = get_svc(&env, name).await.unwrap();
            assert!(s.finalizers().is_empty(), "{name}: {:?}", s.finalizers());
            assert!(ingress(&s).is_empty());
        }

        services(&env)
            .delete("web", &DeleteParams::default())
            .await
            .unwrap();
        eventually_gone_svc(&env, "web").await;
        assert!(
            env.get(&sip_name).await.is_none(),
            "its SharedIP is gone first"
        );
        assert!(env.shared(&ip).is_empty(), "unshared");
        assert_eq!(owner_of(&env, &ip), None, "{ip} given back (Delete)");
    })
    .await;
}

#[tokio::test]
async fn sharing_rules_type_change_and_bad_input() {
    bounded(async {
        let env = edge_env(SEED).await;
        let _op = env.spawn_operator_with(settings());

        let a = create(
            &env,
            lb(
                "a",
                json!({"sharedip.io/address": "192.0.2.10", "sharedip.io/allow-shared-ip": "k"}),
                json!({}),
            ),
        )
        .await;
        endpoints(&env, "a", &["node-a"]).await;
        let (_, ip) = eventually_ingress(&env, "a").await;
        assert_eq!(ip, "192.0.2.10");
        let sip_name = generated_name(&a);
        let sip = env.get(&sip_name).await.unwrap();
        assert_eq!(sip.spec.address.as_deref(), Some("192.0.2.10"));

        // Same address, no sharing key: refused, nothing made.
        let b = create(
            &env,
            lb("b", json!({"sharedip.io/address": "192.0.2.10"}), json!({})),
        )
        .await;
        let note = eventually_event(&env, "b", "SharingRefused").await;
        assert!(note.contains("192.0.2.10"), "{note}");
        assert!(env.get(&generated_name(&b)).await.is_none());
        assert!(ingress(&get_svc(&env, "b").await.unwrap()).is_empty());

        // Same key but the same port: refused.
        create(
            &env,
            lb(
                "c",
                json!({"sharedip.io/address": "192.0.2.10", "sharedip.io/allow-shared-ip": "k"}),
                json!({}),
            ),
        )
        .await;
        let note = eventually_event(&env, "c", "SharingRefused").await;
        assert!(note.contains("80"), "{note}");

        // Same key, another port: joins a's SharedIP.
        let d = create(
            &env,
            lb(
                "d",
                json!({"sharedip.io/address": "192.0.2.10", "sharedip.io/allow-shared-ip": "k"}),
                json!({"ports": [{"name": "h3", "port": 443, "protocol": "UDP"}]}),
            ),
        )
        .await;
        let (_, ip_d) = eventually_ingress(&env, "d").await;
        assert_eq!(ip_d, "192.0.2.10");
        let members =
            env.get(&sip_name).await.unwrap().annotations()["sharedip.io/services"].clone();
        assert!(members.contains(&d.uid().unwrap()), "{members}");
        assert!(
            env.get(&generated_name(&d)).await.is_none(),
            "one SharedIP per address"
        );

        // a becomes a ClusterIP Service: it lets go, d keeps the address.
        services(&env)
            .patch(
                "a",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"type": "ClusterIP", "loadBalancerClass": null}})),
            )
            .await
            .unwrap();
        eventually("a released", || async {
            let s = get_svc(&env, "a").await.unwrap();
            if s.finalizers().is_empty()
                && ingress(&s).is_empty()
                && !s.annotations().contains_key(service::ASSIGNED_ANNOTATION)
            {
                Ok(())
            } else {
                Err(format!("{:?} {:?}", s.finalizers(), s.status))
            }
        })
        .await;
        let sip = env.get(&sip_name).await.expect("still there for d");
        assert!(!sip.annotations()["sharedip.io/services"].contains(&a.uid().unwrap()));
        // c was refused for a's port 80; with a gone it shares d's address at once, not at
        // its retry minutes later.
        let (_, ip_c) = eventually_ingress(&env, "c").await;
        assert_eq!(ip_c, "192.0.2.10");
        assert_eq!(
            ingress(&get_svc(&env, "d").await.unwrap()),
            vec!["192.0.2.10"]
        );

        // Bad input: an Event, nothing else.
        let bad = create(
            &env,
            lb(
                "bad",
                json!({"sharedip.io/primary-nodes": "pool in (a"}),
                json!({}),
            ),
        )
        .await;
        let note = eventually_event(&env, "bad", "InvalidAnnotation").await;
        assert!(note.contains("sharedip.io/primary-nodes"), "{note}");
        assert!(env.get(&generated_name(&bad)).await.is_none());
        // An address of a user SharedIP: refused.
        env.apply_sharedip(
            "user",
            json!({"address": "192.0.2.11", "primary": {"nodeSelector": {"matchLabels": {"role": "edge"}}}}),
        )
        .await;
        create(
            &env,
            lb(
                "taken",
                json!({"sharedip.io/address": "192.0.2.11"}),
                json!({}),
            ),
        )
        .await;
        let note = eventually_event(&env, "taken", "AddressInUse").await;
        assert!(note.contains("SharedIP user"), "{note}");
        // A Service asking to move to that address is refused and keeps the one it has.
        services(&env)
            .patch(
                "d",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"sharedip.io/address": "192.0.2.11"}}})),
            )
            .await
            .unwrap();
        eventually_event(&env, "d", "AddressInUse").await;
        let sip = env.get(&sip_name).await.expect("d's SharedIP is kept");
        assert!(sip.annotations()["sharedip.io/services"].contains(&d.uid().unwrap()));
        assert_eq!(ingress(&get_svc(&env, "d").await.unwrap()), vec!["192.0.2.10"]);
        // Naming the user SharedIP uses it, unchanged.
        let before = env.get("user").await.unwrap();
        create(
            &env,
            lb("named", json!({"sharedip.io/sharedip": "user"}), json!({})),
        )
        .await;
        let (_, ip) = eventually_ingress(&env, "named").await;
        assert_eq!(ip, "192.0.2.11");
        assert_eq!(
            env.get("user").await.unwrap().metadata.generation,
            before.metadata.generation
        );

        // Deleting everything leaves no generated SharedIP and no finalizer.
        for name in ["b", "c", "d", "bad", "taken", "named"] {
            services(&env)
                .delete(name, &DeleteParams::default())
                .await
                .unwrap();
        }
        for name in ["b", "c", "d", "bad", "taken", "named"] {
            eventually_gone_svc(&env, name).await;
        }
        eventually("no generated SharedIP left", || async {
            let left: Vec<String> = env
                .sharedips()
                .list(&Default::default())
                .await
                .unwrap()
                .items
                .iter()
                .map(ResourceExt::name_any)
                .filter(|n| n.starts_with("svc-"))
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        })
        .await;
        assert!(
            env.get("user").await.is_some(),
            "a user SharedIP is never deleted"
        );
    })
    .await;
}

#[tokio::test]
async fn sweep_removes_generated_sharedips_of_services_that_are_gone() {
    bounded(async {
        let env = edge_env(SEED).await;
        let _op = env.spawn_operator_with(settings());
        // As if the Service had been deleted (its finalizer removed by hand) while the
        // operator was down.
        let orphan: SharedIP = serde_json::from_value(json!({
            "apiVersion": "sharedip.io/v1alpha1",
            "kind": "SharedIP",
            "metadata": {"name": "svc-0000", "labels": {"app.kubernetes.io/managed-by": "sharedip-operator"},
                         "annotations": {"sharedip.io/services": "default/gone/0000"}},
            "spec": {"address": "192.0.2.10", "primary": {"nodeSelector": {"matchLabels": {"role": "edge"}}}},
        }))
        .unwrap();
        env.sharedips().create(&PostParams::default(), &orphan).await.unwrap();
        // A user SharedIP is never swept.
        env.apply_sharedip("mine", spec("192.0.2.11")).await;
        eventually_gone(&env, "svc-0000").await;
        assert!(env.get("mine").await.is_some());
    })
    .await;
}

#[tokio::test]
async fn ipv6_services_share_the_regions_range_and_dual_stack_gets_both() {
    bounded(async {
        let env = edge_env(SEED).await;
        let _op = env.spawn_operator_with(settings());

        // Dual-stack, asking for an address in the holder's range 2001:db8:1:2::/64.
        create(
            &env,
            lb(
                "dual",
                json!({"sharedip.io/address": "192.0.2.10,2001:db8:1:2::10"}),
                json!({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"]}),
            ),
        )
        .await;
        endpoints(&env, "dual", &["node-a"]).await;
        eventually("dual-stack EXTERNAL-IPs", || async {
            let s = get_svc(&env, "dual").await.unwrap();
            let got = ingress(&s);
            if got == ["192.0.2.10", "2001:db8:1:2::10"] {
                Ok(())
            } else {
                Err(format!("{got:?} {:?}", s.status))
            }
        })
        .await;
        let range = env
            .get("svc-ipv6-us-east")
            .await
            .expect("the region's range SharedIP");
        assert_eq!(range.spec.address.as_deref(), Some("2001:db8:1:2::"));
        env.eventually_shared("2001:db8:1:2::", &[101]).await;

        // IPv6 only, nothing asked: the lowest free address of the same range.
        create(
            &env,
            lb(
                "six",
                json!({}),
                json!({"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv6"]}),
            ),
        )
        .await;
        endpoints(&env, "six", &["node-a"]).await;
        let (_, ip) = eventually_ingress(&env, "six").await;
        assert_eq!(ip, "2001:db8:1:2::2");
        let members = env.get("svc-ipv6-us-east").await.unwrap().annotations()
            ["sharedip.io/services"]
            .clone();
        assert_eq!(members.lines().count(), 2, "{members}");

        // IPv6 with externalTrafficPolicy Local: refused, nothing made.
        create(
            &env,
            lb(
                "local6",
                json!({}),
                json!({"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv6"],
                       "externalTrafficPolicy": "Local"}),
            ),
        )
        .await;
        let note = eventually_event(&env, "local6", "UnsupportedTrafficPolicy").await;
        assert!(note.contains("Cluster"), "{note}");

        // Outside the range: refused.
        create(
            &env,
            lb(
                "outside",
                json!({"sharedip.io/address": "2001:db8:9::5"}),
                json!({"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv6"]}),
            ),
        )
        .await;
        eventually_event(&env, "outside", "AddressOutsideRange").await;
        let members = env.get("svc-ipv6-us-east").await.unwrap().annotations()
            ["sharedip.io/services"]
            .clone();
        assert_eq!(
            members.lines().count(),
            2,
            "a refused Service does not join: {members}"
        );

        for name in ["dual", "six", "local6", "outside"] {
            services(&env)
                .delete(name, &DeleteParams::default())
                .await
                .unwrap();
        }
        for name in ["dual", "six", "local6", "outside"] {
            eventually_gone_svc(&env, name).await;
        }
        assert!(env.get("svc-ipv6-us-east").await.is_none());
        assert!(env.shared("2001:db8:1:2::").is_empty());
    })
    .await;
}

#[tokio::test]
async fn an_address_not_in_the_account_is_pending_says_why_and_is_released() {
    bounded(async {
        let env = edge_env(SEED).await;
        let _op = env.spawn_operator_with(settings());
        let svc = create(
            &env,
            lb(
                "foreign",
                json!({"sharedip.io/address": "198.51.100.99"}),
                json!({}),
            ),
        )
        .await;
        let note = eventually_event(&env, "foreign", "NotShared").await;
        assert!(note.contains("198.51.100.99"), "{note}");
        assert!(ingress(&get_svc(&env, "foreign").await.unwrap()).is_empty());
        assert!(env.shared("198.51.100.99").is_empty());
        let name = generated_name(&svc);
        assert!(env.get(&name).await.is_some());
        services(&env)
            .delete("foreign", &DeleteParams::default())
            .await
            .unwrap();
        eventually_gone_svc(&env, "foreign").await;
        assert!(env.get(&name).await.is_none(), "its SharedIP went first");
    })
    .await;
}

#[tokio::test]
async fn an_address_waits_for_the_sharedip_that_held_it_before_to_be_released() {
    bounded(async {
        let env = edge_env(SEED).await;
        let _op = env.spawn_operator_with(settings());
        let web = create(
            &env,
            lb(
                "web",
                json!({"sharedip.io/address": "192.0.2.10"}),
                json!({}),
            ),
        )
        .await;
        endpoints(&env, "web", &["node-a"]).await;
        eventually_ingress(&env, "web").await;
        env.eventually_shared("192.0.2.10", &[101]).await;
        // Something else's finalizer keeps web's SharedIP while it is being deleted, as a
        // slow release would.
        let old = generated_name(&web);
        let mut finalizers = env.get(&old).await.unwrap().finalizers().to_vec();
        finalizers.push("test.sharedip.io/hold".into());
        env.sharedips()
            .patch(
                &old,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": finalizers}})),
            )
            .await
            .unwrap();
        services(&env)
            .delete("web", &DeleteParams::default())
            .await
            .unwrap();
        eventually("web's SharedIP deleting", || async {
            match env.get(&old).await {
                Some(s) if s.metadata.deletion_timestamp.is_some() => Ok(()),
                s => Err(format!("{:?}", s.map(|s| s.metadata))),
            }
        })
        .await;

        // Another Service asks for the address meanwhile: it waits, makes nothing, shows
        // nothing, and says why.
        let next = create(
            &env,
            lb(
                "next",
                json!({"sharedip.io/address": "192.0.2.10"}),
                json!({}),
            ),
        )
        .await;
        endpoints(&env, "next", &["node-a"]).await;
        let note = eventually_event(&env, "next", "AddressChanging").await;
        assert!(note.contains(&old) && note.contains("192.0.2.10"), "{note}");
        assert!(env.get(&generated_name(&next)).await.is_none());
        assert!(ingress(&get_svc(&env, "next").await.unwrap()).is_empty());

        // Once it is gone, the address is the new Service's and shared again.
        let mut finalizers = env.get(&old).await.unwrap().finalizers().to_vec();
        finalizers.retain(|f| f != "test.sharedip.io/hold");
        env.sharedips()
            .patch(
                &old,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": finalizers}})),
            )
            .await
            .unwrap();
        let (_, ip) = eventually_ingress(&env, "next").await;
        assert_eq!(ip, "192.0.2.10");
        eventually_gone_svc(&env, "web").await;
        env.eventually_shared("192.0.2.10", &[101]).await;
        assert!(env.get(&old).await.is_none());

        services(&env)
            .delete("next", &DeleteParams::default())
            .await
            .unwrap();
        eventually_gone_svc(&env, "next").await;
        assert!(env.get(&generated_name(&next)).await.is_none());
    })
    .await;
}

/// A region without an IPv6 range: the first IPv6 Service's range is allocated on the IP
/// holder. No IPv4 addresses either.
const SEED_NO_RANGE: &str = r#"
linodes:
  - {id: 101, label: node-a, region: us-east}
  - {id: 102, label: node-b, region: us-east}
"#;

#[tokio::test]
async fn an_ipv6_service_in_a_region_without_a_range_gets_one_allocated() {
    bounded(async {
        let env = edge_env(SEED_NO_RANGE).await;
        let _op = env.spawn_operator_with(settings());
        let v6 = json!({"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv6"]});
        create(&env, lb("six", json!({}), v6.clone())).await;
        endpoints(&env, "six", &["node-a"]).await;
        let (_, ip) = eventually_ingress(&env, "six").await;
        let range = env
            .get("svc-ipv6-us-east")
            .await
            .expect("the region's range SharedIP");
        let bound: std::net::Ipv6Addr = range
            .spec
            .allocated_address
            .as_deref()
            .expect("an allocated range")
            .parse()
            .unwrap();
        let base = std::net::Ipv6Addr::from(u128::from(bound) & !u128::from(u64::MAX));
        assert_eq!(bound, std::net::Ipv6Addr::from(u128::from(base) | 1));
        assert_eq!(
            ip,
            std::net::Ipv6Addr::from(u128::from(base) | 2).to_string(),
            "the lowest address the nodes do not bind"
        );
        env.eventually_shared(&base.to_string(), &[101]).await;
        let holder = the_holder(&env, HOLDER_LABEL);
        assert_eq!(env.standin.counters().ranges_created, 1);
        assert!(
            env.standin.sharing().ips[&base.to_string()].owner == holder,
            "the range is the holder's"
        );

        // The range's base and the nodes' own address are never a Service's.
        for (name, addr) in [("base", base), ("bound", bound)] {
            create(
                &env,
                lb(
                    name,
                    json!({"sharedip.io/address": addr.to_string()}),
                    v6.clone(),
                ),
            )
            .await;
            let note = eventually_event(&env, name, "AddressOutsideRange").await;
            assert!(note.contains(&format!("{base}/64")), "{note}");
        }

        // Deleting the Services gives the range back (reclaim policy Delete).
        for name in ["six", "base", "bound"] {
            services(&env)
                .delete(name, &DeleteParams::default())
                .await
                .unwrap();
        }
        for name in ["six", "base", "bound"] {
            eventually_gone_svc(&env, name).await;
        }
        assert!(env.get("svc-ipv6-us-east").await.is_none());
        eventually("the range deleted", || async {
            let left: Vec<String> = env
                .standin
                .sharing()
                .ips
                .keys()
                .filter(|ip| ip.contains(':'))
                .cloned()
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        })
        .await;
    })
    .await;
}
