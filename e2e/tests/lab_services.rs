//! LoadBalancer Services in the whole lab: the real kube-proxy in every node namespace
//! carries traffic for a Service's load-balancer address, which the agents announce, to the
//! Service's pods. Same rules as `lab_failover.rs`: assert WHO answers and that nothing is
//! left behind, never timings; root only (skipped with a message otherwise); one lab at a
//! time in this binary; every wait bounded; the lab tears itself down (and prints every log,
//! kube-proxies' included) on every path.

mod lab_common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use lab_common::{delete_and_expect_nothing_left, preflight, shared, start, SERIAL, SIP};
use sharedip_e2e::lab::cluster::{eventually, BOUND, ROLE_LABEL, SHARED_V4};
use sharedip_e2e::lab::services::{
    announced_condition, generated_name, ingress_of, ADDRESS_ANNOTATION, ASSIGNED_ANNOTATION,
    MEMBERS_ANNOTATION, PRIMARY_NODES_ANNOTATION, SECONDARY_NODES_ANNOTATION, SERVICE_FINALIZER,
    SHARING_KEY_ANNOTATION,
};
use sharedip_e2e::lab::traffic::{target_allowed, Prober, ProberConfig};
use sharedip_e2e::lab::{load_balancer_service, role_spec, Lab, LabConfig, PodEndpoint, POD_PORT};
use sharedip_e2e::netns;
use sharedip_e2e::routeserver::Flavor;
use sharedip_e2e::standin::IpKind;

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
/// Writes the Service's endpoints: the pods' responders behind its port `http`.
async fn publish(lab: &Lab, endpoints: &[PodEndpoint]) {
    lab.set_endpoints(NS, SVC, endpoints, "http", POD_PORT)
        .await
        .expect("endpoints");
}

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
    publish(&lab, &[PodEndpoint::ready("echo-b", "node-b")]).await;
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
    publish(
        &lab,
        &[
            PodEndpoint::ready("echo-b", "node-b"),
            PodEndpoint::ready("echo-a", "node-a"),
        ],
    )
    .await;
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

// ---------------------------------------------------------------------------------------
// The operator's Service controller on: it assigns the address, writes the endpoint gate and
// shows EXTERNAL-IP; the tests only write what users and the EndpointSlice controller would.

/// A lab with kube-proxy on every node and the operators' Service controller on (its default).
async fn start_with_services() -> Lab {
    start(LabConfig {
        kube_proxy: true,
        ..LabConfig::default()
    })
    .await
}

/// `svc` with `annotations` added.
fn annotated(mut svc: Service, annotations: &[(&str, &str)]) -> Service {
    let map = svc.metadata.annotations.get_or_insert_with(BTreeMap::new);
    for (k, v) in annotations {
        map.insert((*k).to_owned(), (*v).to_owned());
    }
    svc
}

/// The Service, which must exist.
async fn get_service(lab: &Lab) -> Service {
    lab.service(NS, SVC)
        .await
        .expect("get Service")
        .expect("the Service exists")
}

/// Waits until the operator shows an EXTERNAL-IP on the Service; returns it.
async fn wait_external_ip(lab: &Lab) -> Vec<IpAddr> {
    eventually("the Service's EXTERNAL-IP", BOUND, || async {
        let svc = lab
            .service(NS, SVC)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no Service")?;
        let ingress = ingress_of(&svc);
        if ingress.is_empty() {
            Err(format!("no ingress yet; status {:?}", svc.status))
        } else {
            Ok(ingress)
        }
    })
    .await
    .expect("the operator sets EXTERNAL-IP")
}

/// Waits until the router sends `ip` to `node` (`None`: has no route for it).
async fn wait_routed(lab: &Lab, ip: IpAddr, node: Option<&str>) {
    eventually(
        &format!("the router sends {ip} to {node:?}"),
        BOUND,
        || async {
            let routes = lab.router_routes();
            let got = routes
                .iter()
                .find(|(p, _)| p.addr == ip)
                .map(|(_, via)| via.clone());
            let want = node.map(|n| Some(n.to_owned()));
            if got == want {
                Ok(())
            } else {
                Err(format!("routes {routes:?}"))
            }
        },
    )
    .await
    .expect("the router follows the announcements");
}

/// Waits until three probes in a row to `ip` are answered, each by one of `pods`; returns the
/// last answer. (With `Cluster` kube-proxy picks any endpoint, so which pod is not asked.)
async fn wait_answered_by_one_of(lab: &Lab, ip: IpAddr, pods: &[&str]) -> String {
    wait_probes_answered_by_one_of(&format!("{ip} (TCP)"), pods, || lab.who_answers(ip)).await
}

/// [`wait_answered_by_one_of`] over UDP.
async fn wait_udp_answered_by_one_of(lab: &Lab, ip: IpAddr, pods: &[&str]) -> String {
    wait_probes_answered_by_one_of(&format!("{ip} (UDP)"), pods, || lab.who_answers_udp(ip)).await
}

/// Waits until three `probe`s in a row are answered, each by one of `pods`; returns the last
/// answer.
async fn wait_probes_answered_by_one_of<F, Fut>(what: &str, pods: &[&str], probe: F) -> String
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<String>>,
{
    const CONSECUTIVE: usize = 3;
    let streak = std::sync::atomic::AtomicUsize::new(0);
    eventually(
        &format!("{what} answered by one of {pods:?}"),
        BOUND,
        || {
            let streak = &streak;
            let probe = &probe;
            async move {
                use std::sync::atomic::Ordering;
                let got = probe().await;
                match got.as_deref() {
                    Some(p) if pods.contains(&p) => {
                        if streak.fetch_add(1, Ordering::Relaxed) + 1 >= CONSECUTIVE {
                            return Ok(p.to_owned());
                        }
                        Err(format!("answered by {p}"))
                    }
                    other => {
                        streak.store(0, Ordering::Relaxed);
                        Err(format!("answered by {other:?}"))
                    }
                }
            }
        },
    )
    .await
    .expect("a pod answers through kube-proxy")
}

/// Waits until the Service's condition is True and its message contains every one of `has`
/// and none of `lacks`; returns the message.
async fn wait_condition(lab: &Lab, has: &[&str], lacks: &[&str]) -> String {
    eventually(
        &format!("condition True naming {has:?}, not {lacks:?}"),
        BOUND,
        || async {
            let svc = lab
                .service(NS, SVC)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("no Service")?;
            match announced_condition(&svc) {
                Some((true, m))
                    if has.iter().all(|h| m.contains(h))
                        && !lacks.iter().any(|l| m.contains(l)) =>
                {
                    Ok(m)
                }
                other => Err(format!("condition {other:?}")),
            }
        },
    )
    .await
    .expect("the condition names the announcer")
}

/// Waits until the Service's generated SharedIP has this endpoint gate.
async fn wait_gate(lab: &Lab, sharedip: &str, ready: &[&str], terminating: &[&str]) {
    eventually(
        &format!("{sharedip}'s gate: ready {ready:?}, terminating {terminating:?}"),
        BOUND,
        || async {
            let sip = lab
                .sharedip(sharedip)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("no SharedIP")?;
            let gate = sip.spec.endpoint_gate.ok_or("no endpoint gate")?;
            if gate.ready == ready && gate.terminating == terminating {
                Ok(())
            } else {
                Err(format!("gate {gate:?}"))
            }
        },
    )
    .await
    .expect("the operator follows the endpoints");
}

/// The nodes whose announcement of `ip` some route server hears.
fn heard_from(lab: &Lab, ip: IpAddr) -> Vec<String> {
    let mut nodes: Vec<String> = lab
        .observe()
        .route_servers
        .into_iter()
        .flatten()
        .flatten()
        .filter(|r| r.prefix.addr == ip)
        .map(|r| r.node)
        .collect();
    nodes.sort();
    nodes.dedup();
    nodes
}

/// Waits until exactly `nodes` announce `ip` to the route servers.
async fn wait_heard_from(lab: &Lab, ip: IpAddr, nodes: &[&str]) {
    eventually(&format!("{ip} announced by {nodes:?}"), BOUND, || async {
        let got = heard_from(lab, ip);
        if got == nodes {
            Ok(())
        } else {
            Err(format!("heard from {got:?}"))
        }
    })
    .await
    .expect("the agents follow the endpoint gate");
}

/// The name of the Service's generated SharedIP.
async fn generated_of(lab: &Lab) -> String {
    let uid = get_service(lab).await.metadata.uid.expect("a uid");
    generated_name(&uid)
}

/// Waits until no generated SharedIP is left.
async fn wait_no_generated(lab: &Lab) {
    eventually("no generated SharedIP left", BOUND, || async {
        let left = lab.generated_sharedips().await.map_err(|e| e.to_string())?;
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "left: {:?}",
                left.iter()
                    .map(|s| s.metadata.name.clone())
                    .collect::<Vec<_>>()
            ))
        }
    })
    .await
    .expect("the operator releases the Service's address");
}

/// Deletes the Service and its endpoints and waits until it is gone everywhere: the object
/// (finalizer done), its generated SharedIP, the share, routes, `lo`; nobody answers `ip`.
/// Then removes the lab's pods.
async fn delete_service_and_expect_nothing_left(lab: &mut Lab, ip: IpAddr) {
    delete_service_and_wait_gone(lab, SVC).await;
    expect_nothing_left(lab, ip).await;
}

/// Deletes Service `name` and waits until its finalizer has run; then deletes its endpoints.
async fn delete_service_and_wait_gone(lab: &Lab, name: &str) {
    lab.delete_service(NS, name).await.expect("delete Service");
    eventually(&format!("the Service {name} gone"), BOUND, || async {
        match lab.service(NS, name).await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(s) => Err(format!("still there: {:?}", s.metadata.finalizers)),
        }
    })
    .await
    .expect("the finalizer runs");
    lab.delete_endpoints(NS, name)
        .await
        .expect("delete endpoints");
}

/// With every Service deleted: no generated SharedIP, share, route or `lo` address is left
/// and nobody answers `ip`. Then removes the lab's pods.
async fn expect_nothing_left(lab: &mut Lab, ip: IpAddr) {
    wait_no_generated(lab).await;
    lab.wait_no_leaks(BOUND).await.expect("nothing left behind");
    assert_eq!(lab.who_answers(ip).await, None, "nobody answers {ip}");
    let pods: Vec<String> = lab.pods().iter().map(|p| p.name().to_owned()).collect();
    for pod in pods {
        lab.remove_pod(&pod).expect("remove pod");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_fails_over_like_a_sharedip_and_is_released_on_delete() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut lab = start_with_services().await;
    let ip = shared();

    lab.create_namespace(NS).await.expect("namespace");
    lab.add_pod("node-a", "echo-a").expect("pod on node-a");
    lab.add_pod("node-b", "echo-b").expect("pod on node-b");
    let primary = format!("{ROLE_LABEL}=primary");
    let secondary = format!("{ROLE_LABEL}=secondary");
    let svc = annotated(
        load_balancer_service(SVC, 80, POD_PORT),
        &[
            (ADDRESS_ANNOTATION, "192.0.2.10"),
            (PRIMARY_NODES_ANNOTATION, &primary),
            (SECONDARY_NODES_ANNOTATION, &secondary),
        ],
    );
    lab.apply_service(NS, &svc).await.expect("apply Service");
    publish(
        &lab,
        &[
            PodEndpoint::ready("echo-a", "node-a"),
            PodEndpoint::ready("echo-b", "node-b"),
        ],
    )
    .await;

    // 1. The operator, not the test, shows the address; the primary carries the traffic.
    assert_eq!(wait_external_ip(&lab).await, vec![ip]);
    let s = get_service(&lab).await;
    assert_eq!(
        s.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ASSIGNED_ANNOTATION))
            .map(String::as_str),
        Some("192.0.2.10")
    );
    assert!(
        s.metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == SERVICE_FINALIZER),
        "finalizer: {:?}",
        s.metadata.finalizers
    );
    wait_routed(&lab, ip, Some("node-a")).await;
    wait_answered_by_one_of(&lab, ip, &["echo-a", "echo-b"]).await;
    wait_condition(&lab, &["192.0.2.10 announced by node-a (Primary)"], &[]).await;

    // 2. The primary's agent gets SIGTERM: the secondary takes over, the pods answer again.
    let status = lab.sigterm_agent("node-a").await.expect("node-a known");
    assert!(
        status.is_some_and(|s| s.success()),
        "agent exits cleanly on SIGTERM: {status:?}"
    );
    wait_routed(&lab, ip, Some("node-b")).await;
    wait_answered_by_one_of(&lab, ip, &["echo-a", "echo-b"]).await;
    wait_condition(&lab, &["node-b (Secondary)"], &["node-a"]).await;
    assert_eq!(
        ingress_of(&get_service(&lab).await),
        vec![ip],
        "EXTERNAL-IP stays through a failover"
    );

    // 3. The agent comes back: failback to the primary.
    lab.start_agent("node-a").expect("agent starts");
    wait_routed(&lab, ip, Some("node-a")).await;
    wait_answered_by_one_of(&lab, ip, &["echo-a", "echo-b"]).await;
    wait_condition(&lab, &["node-a (Primary)"], &[]).await;

    // 4. The Service deleted: its finalizer gives everything back.
    delete_service_and_expect_nothing_left(&mut lab, ip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_service_follows_a_rolling_update_make_before_break() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut lab = start_with_services().await;
    let ip = shared();

    // Local, no node selectors: every node may announce, as equals; only nodes with a ready
    // local endpoint do.
    lab.create_namespace(NS).await.expect("namespace");
    lab.add_pod("node-a", "echo-a").expect("pod on node-a");
    let mut svc = annotated(
        load_balancer_service(SVC, 80, POD_PORT),
        &[(ADDRESS_ANNOTATION, "192.0.2.10")],
    );
    svc.spec.as_mut().unwrap().external_traffic_policy = Some("Local".to_owned());
    lab.apply_service(NS, &svc).await.expect("apply Service");
    let a = PodEndpoint::ready("echo-a", "node-a");
    let b = PodEndpoint::ready("echo-b", "node-b");
    publish(&lab, std::slice::from_ref(&a)).await;

    // 1. Only node-a announces.
    assert_eq!(wait_external_ip(&lab).await, vec![ip]);
    let sip = generated_of(&lab).await;
    wait_gate(&lab, &sip, &["node-a"], &[]).await;
    wait_routed(&lab, ip, Some("node-a")).await;
    lab.wait_answers(ip, Some("echo-a"), BOUND)
        .await
        .expect("the pod on node-a answers");
    wait_heard_from(&lab, ip, &["node-a"]).await;

    // 2. The rolling update, with a client probing throughout: a new pod on node-b, ready;
    //    then the old one terminating (still serving), then gone.
    let prober = Prober::start(
        lab.client_ns(),
        ProberConfig::new(SocketAddr::new(ip, lab.config().port)),
    )
    .expect("prober");
    lab.add_pod("node-b", "echo-b").expect("pod on node-b");
    publish(&lab, &[a.clone(), b.clone()]).await;
    wait_gate(&lab, &sip, &["node-a", "node-b"], &[]).await;
    wait_heard_from(&lab, ip, &["node-a", "node-b"]).await;

    prober.mark("node-a's endpoint terminating");
    let leaving = PodEndpoint::terminating("echo-a", "node-a", true);
    publish(&lab, &[leaving, b.clone()]).await;
    wait_gate(&lab, &sip, &["node-b"], &["node-a"]).await;
    wait_routed(&lab, ip, Some("node-b")).await;
    wait_heard_from(&lab, ip, &["node-b"]).await;
    lab.wait_answers(ip, Some("echo-b"), BOUND)
        .await
        .expect("the pod on node-b answers");

    prober.mark("node-a's endpoint removed");
    publish(&lab, std::slice::from_ref(&b)).await;
    lab.remove_pod("echo-a").expect("remove the old pod");
    wait_gate(&lab, &sip, &["node-b"], &[]).await;
    lab.wait_answers(ip, Some("echo-b"), BOUND)
        .await
        .expect("the pod on node-b answers");
    let log = prober.stop().await;
    assert_eq!(
        log.answered_by_last(),
        Some("echo-b"),
        "answered again at the end, by the new pod"
    );
    // Information only, never asserted.
    let during = log.after(
        log.mark_time("node-a's endpoint terminating")
            .unwrap_or_default(),
    );
    eprintln!(
        "rolling update: {} probes lost of {} sent during the switch ({} in all), answers {:?}",
        during.lost(),
        during.samples.len(),
        log.lost(),
        log.answers_by_node()
    );
    for o in during.outages() {
        eprintln!(
            "  outage at {:?} for {:?} ({} lost, {:?} -> {:?}); marks {:?}",
            o.start, o.duration, o.lost, o.before, o.after, log.marks
        );
    }

    delete_service_and_expect_nothing_left(&mut lab, ip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocated_address_is_released_when_the_service_stops_being_a_load_balancer() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut lab = start_with_services().await;

    lab.create_namespace(NS).await.expect("namespace");
    lab.add_pod("node-a", "echo-a").expect("pod on node-a");
    let svc = load_balancer_service(SVC, 80, POD_PORT);
    lab.apply_service(NS, &svc).await.expect("apply Service");
    publish(&lab, &[PodEndpoint::ready("echo-a", "node-a")]).await;

    // 1. No address asked for: one is allocated on the operator's holder and answers.
    let ingress = wait_external_ip(&lab).await;
    let [ip] = ingress[..] else {
        panic!("one address: {ingress:?}")
    };
    assert!(
        target_allowed(ip),
        "{ip} is outside the documentation ranges"
    );
    let address = ip.to_string();
    let sip = generated_of(&lab).await;
    let generated = lab.sharedip(&sip).await.expect("get").expect("generated");
    assert_eq!(
        generated.spec.allocated_address.as_deref(),
        Some(address.as_str())
    );
    assert_eq!(generated.spec.address, None, "allocated, not asked for");
    let account = lab.standin().sharing();
    let owned = account
        .ips
        .get(&address)
        .expect("the address is the account's");
    assert_eq!(owned.kind, IpKind::Ipv4);
    assert!(
        !lab.node_names()
            .iter()
            .any(|n| lab.linode_of(n).ok() == Some(owned.owner)),
        "held by the operator's holder, not a node: {owned:?}"
    );
    assert_eq!(
        get_service(&lab)
            .await
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ASSIGNED_ANNOTATION))
            .cloned(),
        Some(address.clone())
    );
    lab.wait_answers(ip, Some("echo-a"), BOUND)
        .await
        .expect("the pod answers the allocated address");

    // 2. No longer a LoadBalancer: the address is given back, what the operator showed goes,
    //    the Service stays.
    let cluster_ip: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": SVC},
        "spec": {
            "type": "ClusterIP",
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": POD_PORT}],
        },
    }))
    .expect("a valid Service");
    lab.apply_service(NS, &cluster_ip)
        .await
        .expect("patch to ClusterIP");
    wait_no_generated(&lab).await;
    eventually("the address given back", BOUND, || async {
        match lab.standin().sharing().ips.get(&address) {
            None => Ok(()),
            Some(left) => Err(format!("still in the account: {left:?}")),
        }
    })
    .await
    .expect("the allocated address is released");
    eventually("the Service shows nothing of ours", BOUND, || async {
        let s = lab
            .service(NS, SVC)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the Service is gone")?;
        let finalizer = s
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == SERVICE_FINALIZER);
        let assigned = s
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(ASSIGNED_ANNOTATION));
        let ingress = ingress_of(&s);
        if !finalizer && !assigned && ingress.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "finalizer {finalizer}, assigned annotation {assigned}, ingress {ingress:?}"
            ))
        }
    })
    .await
    .expect("the operator lets the Service go");
    assert_eq!(
        get_service(&lab)
            .await
            .spec
            .and_then(|s| s.type_)
            .as_deref(),
        Some("ClusterIP"),
        "the Service stays"
    );
    lab.wait_no_leaks(BOUND).await.expect("nothing left behind");
    assert_eq!(lab.who_answers(ip).await, None, "nobody answers {ip}");

    delete_service_and_expect_nothing_left(&mut lab, ip).await;
}

/// Waits until Service `name`'s EXTERNAL-IP is exactly `want` (in any order).
async fn wait_external_ips(lab: &Lab, name: &str, want: &[IpAddr]) {
    let mut want = want.to_vec();
    want.sort();
    eventually(
        &format!("the EXTERNAL-IP of {name}: {want:?}"),
        BOUND,
        || {
            let want = &want;
            async move {
                let svc = lab
                    .service(NS, name)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("no Service")?;
                let mut got = ingress_of(&svc);
                got.sort();
                if &got == want {
                    Ok(())
                } else {
                    Err(format!("ingress {got:?}; status {:?}", svc.status))
                }
            }
        },
    )
    .await
    .expect("the operator sets the EXTERNAL-IPs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_service_is_answered_in_both_families_and_fails_over() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut lab = start_with_services().await;
    let v4 = shared();
    let v6: IpAddr = "2001:db8:ff::10".parse().unwrap();
    // The region's range (SPARE_V6_RANGE), announced as a whole by the range-level SharedIP.
    let range: IpAddr = "2001:db8:ff::".parse().unwrap();
    let range_sip = "svc-ipv6-us-east";

    lab.create_namespace(NS).await.expect("namespace");
    lab.add_pod("node-a", "echo-a").expect("pod on node-a");
    lab.add_pod("node-b", "echo-b").expect("pod on node-b");
    let primary = format!("{ROLE_LABEL}=primary");
    let secondary = format!("{ROLE_LABEL}=secondary");
    let mut svc = annotated(
        load_balancer_service(SVC, 80, POD_PORT),
        &[
            (ADDRESS_ANNOTATION, "192.0.2.10,2001:db8:ff::10"),
            (PRIMARY_NODES_ANNOTATION, &primary),
            (SECONDARY_NODES_ANNOTATION, &secondary),
        ],
    );
    let spec = svc.spec.as_mut().unwrap();
    spec.ip_family_policy = Some("RequireDualStack".to_owned());
    spec.ip_families = Some(vec!["IPv4".to_owned(), "IPv6".to_owned()]);
    lab.apply_service(NS, &svc).await.expect("apply Service");
    let families = get_service(&lab)
        .await
        .spec
        .and_then(|s| s.cluster_ips)
        .unwrap_or_default();
    assert_eq!(families.len(), 2, "a ClusterIP per family: {families:?}");
    publish(
        &lab,
        &[
            PodEndpoint::ready("echo-a", "node-a"),
            PodEndpoint::ready("echo-b", "node-b"),
        ],
    )
    .await;
    let families: Vec<String> = lab
        .endpoint_slices(NS, SVC)
        .await
        .expect("list EndpointSlices")
        .into_iter()
        .map(|s| s.address_type)
        .collect();
    assert!(
        families.iter().any(|f| f == "IPv4") && families.iter().any(|f| f == "IPv6"),
        "a slice per family: {families:?}"
    );

    // 1. The operator shows one address per family; the IPv6 one lives in the region's range,
    //    which the primary announces; kube-proxy carries both families to the pods.
    wait_external_ips(&lab, SVC, &[v4, v6]).await;
    assert_eq!(
        get_service(&lab)
            .await
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ASSIGNED_ANNOTATION))
            .map(String::as_str),
        Some("192.0.2.10,2001:db8:ff::10")
    );
    let range_spec = lab
        .sharedip(range_sip)
        .await
        .expect("get the range SharedIP")
        .expect("the region's range SharedIP exists")
        .spec;
    let held = range_spec
        .address
        .clone()
        .or(range_spec.allocated_address.clone());
    assert_eq!(
        held.and_then(|a| a.parse::<IpAddr>().ok()),
        Some(range),
        "the range SharedIP holds the range: {range_spec:?}"
    );
    wait_routed(&lab, v4, Some("node-a")).await;
    wait_routed(&lab, range, Some("node-a")).await;
    wait_answered_by_one_of(&lab, v4, &["echo-a", "echo-b"]).await;
    wait_answered_by_one_of(&lab, v6, &["echo-a", "echo-b"]).await;
    // The IPv6 proxier, not something else, carries it.
    let rules = lab.kube_proxy_rules_v6("node-a").expect("ip6 table");
    assert!(rules.contains("2001:db8:ff::10"), "ip6 table:\n{rules}");
    wait_condition(
        &lab,
        &[
            "192.0.2.10 announced by node-a (Primary)",
            "2001:db8:ff::10 announced by node-a (Primary)",
        ],
        &[],
    )
    .await;

    // 2. The primary's agent gets SIGTERM: the secondary takes over both families.
    let status = lab.sigterm_agent("node-a").await.expect("node-a known");
    assert!(
        status.is_some_and(|s| s.success()),
        "agent exits cleanly on SIGTERM: {status:?}"
    );
    wait_routed(&lab, v4, Some("node-b")).await;
    wait_routed(&lab, range, Some("node-b")).await;
    wait_answered_by_one_of(&lab, v4, &["echo-a", "echo-b"]).await;
    wait_answered_by_one_of(&lab, v6, &["echo-a", "echo-b"]).await;
    wait_condition(&lab, &["node-b (Secondary)"], &["node-a"]).await;
    wait_external_ips(&lab, SVC, &[v4, v6]).await;

    // 3. The Service deleted: both addresses, the range SharedIP and the finalizer go.
    delete_service_and_expect_nothing_left(&mut lab, v4).await;
    assert_eq!(lab.who_answers(v6).await, None, "nobody answers {v6}");
    assert!(
        lab.sharedip(range_sip)
            .await
            .expect("get the range SharedIP")
            .is_none(),
        "the range SharedIP is gone"
    );
}

// ---------------------------------------------------------------------------------------
// Two Services on one address, told apart by protocol: kube-proxy, not the address, decides
// whose pods answer.

/// The port both shared Services expose, and the one the lab's responders and probes use.
const HTTPS: u16 = 443;
/// The Service whose pods answer TCP on [`HTTPS`].
const WEB_TCP: &str = "web-tcp";
/// The Service whose pods answer UDP on [`HTTPS`] (HTTP/3's port).
const WEB_UDP: &str = "web-udp";
/// A Service that asks for TCP [`HTTPS`] too, with the same sharing key.
const INTRUDER: &str = "intruder";
/// The sharing key of all three.
const KEY: &str = "ingress";

/// Service `name`, which must exist.
async fn service_named(lab: &Lab, name: &str) -> Service {
    lab.service(NS, name)
        .await
        .expect("get Service")
        .expect("the Service exists")
}

/// `namespace/name/uid` of Service `name`, as the generated SharedIP lists its Services.
async fn member(lab: &Lab, name: &str) -> String {
    let uid = service_named(lab, name).await.metadata.uid.expect("a uid");
    format!("{NS}/{name}/{uid}")
}

/// Waits until exactly one generated SharedIP exists and lists exactly `members` (in any
/// order); returns its name.
async fn wait_one_generated_listing(lab: &Lab, members: &[String]) -> String {
    let mut want = members.to_vec();
    want.sort();
    eventually(
        &format!("one generated SharedIP listing {want:?}"),
        BOUND,
        || {
            let want = &want;
            async move {
                let all = lab.generated_sharedips().await.map_err(|e| e.to_string())?;
                let [sip] = &all[..] else {
                    return Err(format!("{} generated SharedIPs", all.len()));
                };
                let mut listed: Vec<String> = sip
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(MEMBERS_ANNOTATION))
                    .map(|m| m.lines().map(str::to_owned).collect())
                    .unwrap_or_default();
                listed.sort();
                if &listed == want {
                    Ok(sip.metadata.name.clone().unwrap_or_default())
                } else {
                    Err(format!("{:?} lists {listed:?}", sip.metadata.name))
                }
            }
        },
    )
    .await
    .expect("the Services share one SharedIP")
}

/// Waits until Service `name` has an Event with `reason`; returns its note.
async fn wait_event(lab: &Lab, name: &str, reason: &str) -> String {
    let events: Api<Event> = Api::namespaced(lab.client(), NS);
    eventually(&format!("Event {reason} on {name}"), BOUND, || async {
        let list = events
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let mut seen = Vec::new();
        for e in &list.items {
            let on = e.regarding.as_ref().and_then(|r| r.name.as_deref());
            if on != Some(name) {
                continue;
            }
            if e.reason.as_deref() == Some(reason) {
                return Ok(e.note.clone().unwrap_or_default());
            }
            seen.push(e.reason.clone());
        }
        Err(format!("Events on {name}: {seen:?}"))
    })
    .await
    .expect("the operator says why")
}

/// Waits until three TCP probes in a row to `ip` are answered by anything but `pods`
/// (another responder, or nobody); returns the last answer.
async fn wait_not_answered_by(lab: &Lab, ip: IpAddr, pods: &[&str]) -> Option<String> {
    const CONSECUTIVE: usize = 3;
    let streak = std::sync::atomic::AtomicUsize::new(0);
    eventually(
        &format!("{ip} (TCP) answered by none of {pods:?}"),
        BOUND,
        || {
            let streak = &streak;
            async move {
                use std::sync::atomic::Ordering;
                let got = lab.who_answers(ip).await;
                if got.as_deref().is_some_and(|p| pods.contains(&p)) {
                    streak.store(0, Ordering::Relaxed);
                    return Err(format!("answered by {got:?}"));
                }
                if streak.fetch_add(1, Ordering::Relaxed) + 1 >= CONSECUTIVE {
                    Ok(got)
                } else {
                    Err(format!("answered by {got:?}"))
                }
            }
        },
    )
    .await
    .expect("kube-proxy no longer sends TCP to the pods")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_share_one_address_per_protocol_through_kube_proxy() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    // The responders and probes on HTTPS: a TCP answer from a node's own responder (not a
    // pod's) would show that kube-proxy let the traffic through untranslated.
    let mut lab = start(LabConfig {
        kube_proxy: true,
        port: HTTPS,
        ..LabConfig::default()
    })
    .await;
    let ip = shared();
    let tcp_pods = ["tcp-a", "tcp-b"];
    let udp_pods = ["udp-a", "udp-b"];

    lab.create_namespace(NS).await.expect("namespace");
    for (pod, node) in [
        ("tcp-a", "node-a"),
        ("tcp-b", "node-b"),
        ("udp-a", "node-a"),
        ("udp-b", "node-b"),
    ] {
        lab.add_pod(node, pod).expect("pod");
    }
    let primary = format!("{ROLE_LABEL}=primary");
    let secondary = format!("{ROLE_LABEL}=secondary");
    let sharing = [
        (ADDRESS_ANNOTATION, "192.0.2.10"),
        (SHARING_KEY_ANNOTATION, KEY),
        (PRIMARY_NODES_ANNOTATION, primary.as_str()),
        (SECONDARY_NODES_ANNOTATION, secondary.as_str()),
    ];
    let web_tcp = annotated(load_balancer_service(WEB_TCP, HTTPS, POD_PORT), &sharing);
    let mut web_udp = annotated(load_balancer_service(WEB_UDP, HTTPS, POD_PORT), &sharing);
    if let Some(port) = web_udp
        .spec
        .as_mut()
        .and_then(|s| s.ports.as_mut())
        .and_then(|p| p.first_mut())
    {
        port.protocol = Some("UDP".to_owned());
        port.name = Some("quic".to_owned());
    }
    // Both at once, as a user applying one manifest would.
    lab.apply_service(NS, &web_tcp)
        .await
        .expect("apply web-tcp");
    lab.apply_service(NS, &web_udp)
        .await
        .expect("apply web-udp");
    lab.set_endpoints(
        NS,
        WEB_TCP,
        &[
            PodEndpoint::ready("tcp-a", "node-a"),
            PodEndpoint::ready("tcp-b", "node-b"),
        ],
        "http",
        POD_PORT,
    )
    .await
    .expect("web-tcp's endpoints");
    lab.set_endpoints_of_protocol(
        NS,
        WEB_UDP,
        &[
            PodEndpoint::ready("udp-a", "node-a"),
            PodEndpoint::ready("udp-b", "node-b"),
        ],
        "UDP",
        "quic",
        POD_PORT,
    )
    .await
    .expect("web-udp's endpoints");

    // 1. Both Services show the address, served by one SharedIP that lists both; the primary
    //    carries it; kube-proxy sends TCP to web-tcp's pods and UDP to web-udp's.
    wait_external_ips(&lab, WEB_TCP, &[ip]).await;
    wait_external_ips(&lab, WEB_UDP, &[ip]).await;
    let both = [member(&lab, WEB_TCP).await, member(&lab, WEB_UDP).await];
    let sip = wait_one_generated_listing(&lab, &both).await;
    wait_routed(&lab, ip, Some("node-a")).await;
    wait_answered_by_one_of(&lab, ip, &tcp_pods).await;
    wait_udp_answered_by_one_of(&lab, ip, &udp_pods).await;

    // 2. A third Service wants TCP 443 too, with the same key: refused, no EXTERNAL-IP, no
    //    SharedIP of its own, and TCP still reaches web-tcp's pods.
    let intruder = annotated(load_balancer_service(INTRUDER, HTTPS, POD_PORT), &sharing);
    lab.apply_service(NS, &intruder)
        .await
        .expect("apply intruder");
    let note = wait_event(&lab, INTRUDER, "SharingRefused").await;
    assert!(
        note.contains("192.0.2.10") && note.contains("443") && note.contains(WEB_TCP),
        "the refusal names the address, the port and its holder: {note}"
    );
    assert!(
        ingress_of(&service_named(&lab, INTRUDER).await).is_empty(),
        "no EXTERNAL-IP for the intruder"
    );
    assert_eq!(wait_one_generated_listing(&lab, &both).await, sip);
    wait_answered_by_one_of(&lab, ip, &tcp_pods).await;
    wait_udp_answered_by_one_of(&lab, ip, &udp_pods).await;

    // 3. The primary's agent gets SIGTERM: the secondary takes over, both protocols are
    //    answered again by their own Services' pods; then failback.
    let status = lab.sigterm_agent("node-a").await.expect("node-a known");
    assert!(
        status.is_some_and(|s| s.success()),
        "agent exits cleanly on SIGTERM: {status:?}"
    );
    wait_routed(&lab, ip, Some("node-b")).await;
    wait_answered_by_one_of(&lab, ip, &tcp_pods).await;
    wait_udp_answered_by_one_of(&lab, ip, &udp_pods).await;
    lab.start_agent("node-a").expect("agent starts");
    wait_routed(&lab, ip, Some("node-a")).await;
    wait_answered_by_one_of(&lab, ip, &tcp_pods).await;
    wait_udp_answered_by_one_of(&lab, ip, &udp_pods).await;
    assert!(
        ingress_of(&service_named(&lab, INTRUDER).await).is_empty(),
        "still no EXTERNAL-IP for the intruder"
    );

    // 4. web-tcp goes: the intruder, refused only for web-tcp's port, joins at once (its own
    //    retry is minutes away); web-udp keeps the address and its SharedIP and still answers
    //    over UDP; TCP no longer reaches web-tcp's pods. Then the intruder goes too.
    delete_service_and_wait_gone(&lab, WEB_TCP).await;
    wait_external_ips(&lab, INTRUDER, &[ip]).await;
    let joined = [member(&lab, WEB_UDP).await, member(&lab, INTRUDER).await];
    assert_eq!(wait_one_generated_listing(&lab, &joined).await, sip);
    delete_service_and_wait_gone(&lab, INTRUDER).await;
    let udp_only = [member(&lab, WEB_UDP).await];
    assert_eq!(wait_one_generated_listing(&lab, &udp_only).await, sip);
    wait_external_ips(&lab, WEB_UDP, &[ip]).await;
    wait_routed(&lab, ip, Some("node-a")).await;
    wait_udp_answered_by_one_of(&lab, ip, &udp_pods).await;
    let tcp = wait_not_answered_by(&lab, ip, &tcp_pods).await;
    // Information only: the node's own responder when the address still reaches it.
    eprintln!("TCP {ip}:{HTTPS} after web-tcp went: answered by {tcp:?}");

    // 5. web-udp goes too: nothing is left, nobody answers either protocol.
    delete_service_and_wait_gone(&lab, WEB_UDP).await;
    expect_nothing_left(&mut lab, ip).await;
    assert_eq!(lab.who_answers_udp(ip).await, None, "nobody answers UDP");
}
