//! Faults proven harmless, in the whole lab: a node deleted from Kubernetes while the operator
//! is down. Its Linode kept the address shared, and only the ledger of this cluster's shares
//! remembers that when the SharedIP's status does not. Ends by checking the stand-in, the route
//! servers, the router and every node: nothing that no SharedIP wants, and traffic on the right
//! node; then everything goes and nothing is left. Same rules as the other lab files: root only,
//! one lab at a time, every wait bounded, WHO answers and never how fast.

mod lab_common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, Patch, PatchParams};
use lab_common::{delete_and_wait_gone, expect_shared_with, names, preflight, SERIAL};
use sharedip_api::SharedIP;
use sharedip_e2e::lab::cluster::{eventually, BOUND, SHARED_V4, SPARE_V4};
use sharedip_e2e::lab::{role_spec, Lab, LabConfig, NodeSpec};
use sharedip_e2e::routeserver::Flavor;

const WEB: &str = "web";
const API: &str = "api";

fn web() -> IpAddr {
    IpAddr::V4(SHARED_V4)
}

fn api() -> IpAddr {
    IpAddr::V4(SPARE_V4)
}

/// Everything the two SharedIPs want, and nothing else: both addresses shared with node-a's and
/// node-b's Linodes only; bound on node-a and node-b, nothing on node-c; every route server
/// holding routes from node-a and node-b only; the router sending both to node-a.
fn unwanted(lab: &Lab) -> Vec<String> {
    let mut out = Vec::new();
    let both: BTreeSet<String> = [SHARED_V4, SPARE_V4]
        .iter()
        .map(|a| a.to_string())
        .collect();
    let want: BTreeMap<u64, BTreeSet<String>> = [(101, both.clone()), (102, both.clone())].into();
    let sharing = lab.standin().sharing().by_linode();
    if sharing != want {
        out.push(format!("stand-in shares {sharing:?}, want {want:?}"));
    }
    for node in ["node-a", "node-b", "node-c"] {
        match lab.lo_addresses(node) {
            Ok(lo) => {
                let got: BTreeSet<String> = lo
                    .iter()
                    .map(|a| a.trim_end_matches("/32").to_string())
                    .collect();
                let want = if node == "node-c" {
                    BTreeSet::new()
                } else {
                    both.clone()
                };
                if got != want {
                    out.push(format!("{node} has {lo:?} on lo"));
                }
            }
            Err(e) => out.push(format!("{node}: {e}")),
        }
    }
    for (i, routes) in lab.routing().routes().iter().enumerate() {
        for r in routes {
            let from = match r.from {
                IpAddr::V6(a) => lab.node_at(a).map(str::to_owned),
                IpAddr::V4(_) => None,
            };
            if !matches!(from.as_deref(), Some("node-a" | "node-b")) {
                out.push(format!("rs{} holds {} from {from:?}", i + 1, r.prefix));
            }
        }
    }
    let routes = lab.router_routes();
    for a in [SHARED_V4, SPARE_V4] {
        let p = format!("{a}/32").parse().expect("prefix");
        if routes.get(&p) != Some(&Some("node-a".to_owned())) {
            out.push(format!("router routes {a} to {:?}", routes.get(&p)));
        }
    }
    if routes.len() != 2 {
        out.push(format!("router routes {routes:?}"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_deleted_while_the_operator_is_down_leaves_nothing_behind() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut lab = lab_common::start(LabConfig {
        nodes: vec![
            NodeSpec::with_role("node-a", "primary"),
            NodeSpec::with_role("node-b", "secondary"),
            NodeSpec::with_role("node-c", "secondary"),
        ],
        ..LabConfig::default()
    })
    .await;
    for (name, addr) in [(WEB, SHARED_V4), (API, SPARE_V4)] {
        lab.apply_sharedip(name, role_spec(&addr.to_string()))
            .await
            .expect("apply SharedIP");
        expect_shared_with(&lab, &addr.to_string(), &["node-a", "node-b", "node-c"]).await;
    }
    for a in [web(), api()] {
        lab.wait_answers(a, Some("node-a"), BOUND)
            .await
            .expect("the primary answers");
    }
    // Both statuses name node-c's Linode before the operators go down.
    let sips: Api<SharedIP> = Api::all(lab.client());
    for name in [WEB, API] {
        eventually(
            &format!("{name}'s status names three Linodes"),
            BOUND,
            || async {
                let s = sips.get(name).await.map_err(|e| e.to_string())?;
                let n = s.status.map(|st| st.shared_with.len()).unwrap_or(0);
                if n == 3 {
                    Ok(())
                } else {
                    Err(format!("{n} Linodes"))
                }
            },
        )
        .await
        .expect("status");
    }

    // No operator runs; node-c leaves the cluster. Its agent, whose Node is gone, withdraws and
    // unbinds; its Linode keeps both shares, as nobody is there to remove them.
    lab.kill_operators();
    lab.delete_node("node-c").await.expect("delete Node");
    eventually("node-c withdrew and unbound", BOUND, || async {
        let lo = lab.lo_addresses("node-c").map_err(|e| e.to_string())?;
        let from_c = lab
            .routing()
            .routes()
            .iter()
            .flatten()
            .filter(|r| matches!(r.from, IpAddr::V6(a) if lab.node_at(a) == Some("node-c")))
            .count();
        if lo.is_empty() && from_c == 0 {
            Ok(())
        } else {
            Err(format!("lo {lo:?}, {from_c} routes from node-c"))
        }
    })
    .await
    .expect("the agent of a deleted Node stops announcing");
    assert_eq!(
        lab.shared_with(&SHARED_V4.to_string()),
        names(&["node-a", "node-b", "node-c"]),
        "the fault: node-c's Linode keeps the share while no operator runs"
    );
    // The statuses are lost as well (a restore without status, or a crash between a share call
    // and the status write): only the ledger still knows node-c's Linode got the addresses.
    // (With a status naming it, the reconciler alone would unshare it.)
    let patch = serde_json::json!({"status": null});
    for name in [WEB, API] {
        sips.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("clear the status");
    }

    lab.restart_operators().expect("operators start");
    for addr in [SHARED_V4, SPARE_V4] {
        expect_shared_with(&lab, &addr.to_string(), &["node-a", "node-b"]).await;
    }
    eventually("nothing that no SharedIP wants", BOUND, || async {
        let u = unwanted(&lab);
        if u.is_empty() {
            Ok(())
        } else {
            Err(u.join("; "))
        }
    })
    .await
    .expect("exactly what the SharedIPs want");
    for a in [web(), api()] {
        lab.wait_answers(a, Some("node-a"), BOUND)
            .await
            .expect("the primary still answers");
    }
    let events: Api<Event> = Api::all(lab.client());
    eventually("the sweep's Event on each SharedIP", BOUND, || async {
        let list = events
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let swept: BTreeSet<&str> = list
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("Swept"))
            .filter_map(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()))
            .collect();
        if swept == [WEB, API].into() {
            Ok(())
        } else {
            Err(format!("Swept events on {swept:?}"))
        }
    })
    .await
    .expect("the sweep says what it did");

    // Everything goes, and nothing is left anywhere.
    for name in [WEB, API] {
        delete_and_wait_gone(&lab, name).await;
    }
    lab.wait_no_leaks(BOUND).await.expect("nothing left behind");
    assert_eq!(lab.who_answers(web()).await, None, "nobody answers");
}
