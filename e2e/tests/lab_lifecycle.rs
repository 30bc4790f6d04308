//! The address lifecycle in the whole lab: an address a node's Linode owns moved to the IP
//! holder (`spec.moveToHolder`), and an address the operator allocates reached by the client.
//! Same rules as `lab_failover.rs`: assert outcomes (where the address is, who answers), never
//! timings (the move's outage is reported, not asserted); root only (skipped with a message
//! otherwise); one lab at a time; every wait bounded.

mod lab_common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use lab_common::{expect_shared_with, preflight, start, SERIAL};
use sharedip_e2e::lab::cluster::{eventually, BOUND};
use sharedip_e2e::lab::traffic::{target_allowed, Prober, ProberConfig};
use sharedip_e2e::lab::{role_spec, Lab, LabConfig};
use sharedip_e2e::routeserver::Flavor;
use sharedip_e2e::standin::NewIpv4;

/// A documentation address the test gives node-a's Linode: not in the lab's seed, outside
/// every link subnet of the lab (198.51.100.0/25).
const NODE_OWNED: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 150);
const HOLDER_PREFIX: &str = "sharedip-holder-us-east-";

/// The operator's holder in the lab's region, once it exists.
fn holder(lab: &Lab) -> Option<u64> {
    lab.standin().state().read(|a| {
        a.linodes()
            .values()
            .find(|l| l.label.starts_with(HOLDER_PREFIX))
            .map(|l| l.id)
    })
}

fn owner_of(lab: &Lab, ip: &str) -> Option<u64> {
    lab.standin().sharing().ips.get(ip).map(|i| i.owner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_node_a_owns_moves_to_the_holder_and_answers_again() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let lab = start(LabConfig::default()).await;
    let node_a = lab.linode_of("node-a").expect("node-a's Linode");
    lab.standin()
        .state()
        .add_ipv4(&NewIpv4::new(NODE_OWNED, node_a))
        .expect("node-a's Linode gets an address");
    let ip = IpAddr::V4(NODE_OWNED);
    let name = NODE_OWNED.to_string();

    // Owned by node-a's Linode: shared with node-b only, and it stays there.
    lab.apply_sharedip("owned", role_spec(&name))
        .await
        .expect("apply");
    expect_shared_with(&lab, &name, &["node-b"]).await;
    assert_eq!(owner_of(&lab, &name), Some(node_a));
    // Information only.
    eprintln!(
        "before the move: answered by {:?}",
        lab.who_answers(ip).await
    );
    assert_eq!(holder(&lab), None, "no holder before the move");

    let prober = Prober::start(
        lab.client_ns(),
        ProberConfig::new(SocketAddr::new(ip, lab.config().port)),
    )
    .expect("prober");
    let mut spec = role_spec(&name);
    spec["moveToHolder"] = serde_json::json!("AcceptOutage");
    prober.mark("moveToHolder set");
    lab.apply_sharedip("owned", spec).await.expect("apply");

    eventually("the address on the holder", BOUND, || async {
        match (owner_of(&lab, &name), holder(&lab)) {
            (Some(o), Some(h)) if o == h => Ok(()),
            other => Err(format!("owner, holder: {other:?}")),
        }
    })
    .await
    .expect("moved to the holder");
    expect_shared_with(&lab, &name, &["node-a", "node-b"]).await;
    lab.wait_answers(ip, Some("node-a"), BOUND)
        .await
        .expect("node-a answers again, from the holder's address");
    let log = prober.snapshot();
    // Information only, never asserted: the outage the field accepts.
    eprintln!(
        "move outage: longest {:?}, probes lost {}",
        log.longest_outage(),
        log.lost()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocated_address_is_reached_by_the_client() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let lab = start(LabConfig::default()).await;
    let mut spec = role_spec("192.0.2.10");
    if let Some(s) = spec.as_object_mut() {
        s.remove("address");
    }
    lab.apply_sharedip("allocated", spec).await.expect("apply");
    let address = eventually("an allocated address", BOUND, || async {
        let sip = lab.sharedip("allocated").await.map_err(|e| e.to_string())?;
        sip.and_then(|s| s.spec.allocated_address)
            .ok_or_else(|| "none yet".to_owned())
    })
    .await
    .expect("allocated");
    let ip: IpAddr = address.parse().expect("an IP address");
    // The lab's pools are documentation ranges: the only addresses the client may probe.
    assert!(
        target_allowed(ip),
        "{ip} is outside the documentation ranges"
    );
    let h = holder(&lab).expect("a holder was created");
    assert_eq!(owner_of(&lab, &address), Some(h));
    expect_shared_with(&lab, &address, &["node-a", "node-b"]).await;
    lab.wait_answers(ip, Some("node-a"), BOUND)
        .await
        .expect("node-a (primary) answers the allocated address");
}
