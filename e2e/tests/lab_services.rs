//! LoadBalancer Services in the whole lab: the real kube-proxy in every node namespace
//! carries traffic for a Service's load-balancer address, which the agents announce, to the
//! Service's pods. Same rules as `lab_failover.rs`: assert WHO answers and that nothing is
//! left behind, never timings; root only (skipped with a message otherwise); one lab at a
//! time in this binary; every wait bounded; the lab tears itself down (and prints every log,
//! kube-proxies' included) on every path.

mod lab_common;

use lab_common::{delete_and_expect_nothing_left, preflight, shared, start, SERIAL, SIP};
use sharedip_e2e::lab::cluster::{eventually, BOUND, SHARED_V4};
use sharedip_e2e::lab::{load_balancer_service, role_spec, Lab, LabConfig, PodEndpoint, POD_PORT};
use sharedip_e2e::netns;
use sharedip_e2e::routeserver::Flavor;

/// The Services' namespace.
const NS: &str = "web";
/// The Service.
const SVC: &str = "echo";

/// A lab with kube-proxy on every node. The operators' Service controller stays off: these
/// tests write the Service's status and SharedIP themselves.
async fn start_with_kube_proxy() -> Lab {
    start(LabConfig {
        kube_proxy: true,
        operator_env: vec![("SERVICES".to_owned(), "false".to_owned())],
        ..LabConfig::default()
    })
    .await
}

/// Waits until kube-proxy on `node` programs the Service's load-balancer address (`true`)
/// or no longer does (`false`).
async fn wait_programmed(lab: &Lab, node: &str, programmed: bool) {
    let lb = SHARED_V4.to_string();
    eventually(
        &format!("kube-proxy on {node} programs {lb}: {programmed}"),
        BOUND,
        || async {
            let rules = lab.kube_proxy_rules(node).map_err(|e| e.to_string())?;
            if rules.contains(&lb) == programmed {
                Ok(())
            } else {
                Err(format!("table:\n{rules}"))
            }
        },
    )
    .await
    .expect("kube-proxy follows the Service");
}

/// Network namespaces on the machine (`ip netns list`), by name.
fn netns_names() -> Vec<String> {
    netns::run("ip", &["netns", "list"])
        .expect("ip netns list")
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_proxy_carries_the_load_balancer_address_to_the_pods() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut lab = start_with_kube_proxy().await;

    // The Service: port 80 to the pods' responders, Cluster, one endpoint on node-b.
    lab.create_namespace(NS).await.expect("namespace");
    lab.add_pod("node-b", "echo-b").expect("pod on node-b");
    assert_eq!(lab.pod_node("echo-b"), Some("node-b"));
    let mut svc = load_balancer_service(SVC, 80, POD_PORT);
    lab.apply_service(NS, &svc).await.expect("apply Service");
    lab.set_endpoints(
        NS,
        SVC,
        &[PodEndpoint::ready("echo-b", "node-b")],
        "http",
        POD_PORT,
    )
    .await
    .expect("endpoints");
    // What a load-balancer controller writes; kube-proxy programs only these addresses.
    lab.set_service_ingress(NS, SVC, &[shared()])
        .await
        .expect("ingress");
    // The address, announced from node-a (primary).
    lab.apply_sharedip(SIP, role_spec(&SHARED_V4.to_string()))
        .await
        .expect("apply SharedIP");

    // 1. Cluster: node-a receives the traffic and kube-proxy sends it on to the pod on node-b.
    lab.wait_answers(shared(), Some("echo-b"), BOUND)
        .await
        .expect("the pod on node-b answers");
    let routes = lab.router_routes();
    assert_eq!(
        routes.get(&"192.0.2.10/32".parse().unwrap()),
        Some(&Some("node-a".to_owned())),
        "the traffic goes through node-a: {routes:?}"
    );

    // 2. Local: node-a has no endpoint of its own, so kube-proxy drops what it receives (the
    //    address stays programmed: it is not node-a's own responder that stays silent).
    svc.spec.as_mut().unwrap().external_traffic_policy = Some("Local".to_owned());
    lab.apply_service(NS, &svc).await.expect("switch to Local");
    lab.wait_answers(shared(), None, BOUND)
        .await
        .expect("nobody answers through node-a");
    wait_programmed(&lab, "node-a", true).await;
    assert_eq!(
        lab.router_routes().get(&"192.0.2.10/32".parse().unwrap()),
        Some(&Some("node-a".to_owned())),
        "still routed to node-a"
    );

    // 3. A pod on node-a: it answers, and only it (Local keeps the traffic on node-a).
    lab.add_pod("node-a", "echo-a").expect("pod on node-a");
    lab.set_endpoints(
        NS,
        SVC,
        &[
            PodEndpoint::ready("echo-b", "node-b"),
            PodEndpoint::ready("echo-a", "node-a"),
        ],
        "http",
        POD_PORT,
    )
    .await
    .expect("endpoints");
    lab.wait_answers(shared(), Some("echo-a"), BOUND)
        .await
        .expect("the pod on node-a answers");
    assert_eq!(lab.pod_node("echo-a"), Some("node-a"));

    // 4. Everything deleted: kube-proxy forgets the address, the agents let it go, the pods'
    //    namespaces are gone.
    lab.delete_service(NS, SVC).await.expect("delete Service");
    lab.delete_endpoints(NS, SVC)
        .await
        .expect("delete endpoints");
    for node in ["node-a", "node-b"] {
        wait_programmed(&lab, node, false).await;
    }
    delete_and_expect_nothing_left(&lab).await;
    let pod_namespaces: Vec<String> = lab
        .pods()
        .iter()
        .map(|p| p.netns().name().to_owned())
        .collect();
    assert_eq!(pod_namespaces.len(), 2);
    for pod in ["echo-a", "echo-b"] {
        lab.remove_pod(pod).expect("remove pod");
    }
    assert!(lab.pods().is_empty());
    let left: Vec<String> = netns_names()
        .into_iter()
        .filter(|n| pod_namespaces.contains(n))
        .collect();
    assert!(left.is_empty(), "pod namespaces left: {left:?}");
    assert!(
        lab.service(NS, SVC).await.expect("get Service").is_none(),
        "Service gone"
    );
    assert!(
        lab.endpoint_slices(NS, SVC)
            .await
            .expect("list EndpointSlices")
            .is_empty(),
        "EndpointSlices gone"
    );
    for node in ["node-a", "node-b"] {
        assert!(
            lab.kube_proxy_running(node).unwrap(),
            "kube-proxy on {node} ran throughout"
        );
    }
}
