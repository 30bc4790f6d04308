//! Helpers shared by the lab scenario files (`lab_*.rs`): root check, start, waiting for the
//! sharing state, and deleting a SharedIP with the check that nothing is left behind.

#![allow(dead_code)] // each scenario file uses a different part

use std::collections::BTreeSet;
use std::net::IpAddr;

use sharedip_e2e::lab::cluster::{eventually, BOUND, SHARED_V4};
use sharedip_e2e::lab::{Lab, LabConfig};
use sharedip_e2e::netns;
use sharedip_e2e::routeserver::Flavor;

/// One lab at a time in a test binary (a lab is most of a 2-core machine).
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The SharedIP most scenarios apply.
pub const SIP: &str = "web";

/// False (with a message) when not root; panics when the route servers' daemon is missing.
pub fn preflight(flavor: Flavor) -> bool {
    if !netns::is_root() {
        eprintln!("SKIPPED: the lab needs root (network namespaces); run as root");
        return false;
    }
    if let Some(p) = flavor.missing_program() {
        panic!(
            "the lab's {flavor} route servers need {p}: run e2e/scripts/install-prereqs.sh as root"
        );
    }
    true
}

/// The shared IPv4 address of [`SIP`].
pub fn shared() -> IpAddr {
    IpAddr::V4(SHARED_V4)
}

pub async fn start(config: LabConfig) -> Lab {
    let lab = Lab::start(config)
        .await
        .unwrap_or_else(|e| panic!("lab starts: {e}"));
    // Information only, never asserted.
    eprintln!("lab started in {:?}", lab.startup_time());
    lab
}

pub fn names(nodes: &[&str]) -> BTreeSet<String> {
    nodes.iter().map(|s| s.to_string()).collect()
}

/// Waits until `ip` is shared with exactly `nodes`' Linodes.
pub async fn expect_shared_with(lab: &Lab, ip: &str, nodes: &[&str]) {
    let want = names(nodes);
    eventually(&format!("{ip} shared with {want:?}"), BOUND, || async {
        let got = lab.shared_with(ip);
        if got == want {
            Ok(())
        } else {
            Err(format!("shared with {got:?}"))
        }
    })
    .await
    .expect("sharing follows the selection");
}

/// Deletes SharedIP `name` and waits until its finalizer has run.
pub async fn delete_and_wait_gone(lab: &Lab, name: &str) {
    lab.delete_sharedip(name).await.expect("delete SharedIP");
    eventually(&format!("SharedIP {name} gone"), BOUND, || async {
        match lab.sharedip(name).await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(s) => Err(format!("still there: {:?}", s.metadata.finalizers)),
        }
    })
    .await
    .expect("finalizer completes");
}

/// Deletes [`SIP`] and waits until it is gone everywhere: the object (finalizer done), every
/// node's `lo`, the stand-in's shares, the route servers and the router; nobody answers.
pub async fn delete_and_expect_nothing_left(lab: &Lab) {
    delete_and_wait_gone(lab, SIP).await;
    lab.wait_no_leaks(BOUND).await.expect("nothing left behind");
    assert_eq!(lab.who_answers(shared()).await, None, "nobody answers");
}
