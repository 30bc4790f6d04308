//! Allocation when things go wrong, against a real kube-apiserver and the Linode API stand-in:
//! an operator killed between Linode's allocation and the write of `spec.allocatedAddress`
//! allocates nothing twice, and every refusal gives its condition with a bounded number of
//! calls to Linode however often the SharedIP is touched.

// Test code: a panic is a failed test, and a scenario reads best in one piece.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use linode_client::endpoints;
use serde_json::json;
use sharedip_api::ALLOCATION_INTENT_ANNOTATION;
use sharedip_e2e::standin::{
    AllocationKnobs, FaultRule, HeldOperation, HeldState, ShareFailure, SUPPORT_TICKET_REASON,
};
use sharedip_operator::allocation::Intent;
use sharedip_operator::holder::HolderMode;
use sharedip_operator::metrics::{Metrics, ResultLabels};
use support::alloc::*;
use support::*;

/// How often each refusal test touches the SharedIP while Linode refuses.
const POKES: usize = 20;

/// The public IPv4 addresses the stand-in has on `linode`.
fn ipv4_of(env: &Env, linode: u64) -> BTreeSet<IpAddr> {
    env.standin.state().read(|a| {
        a.ipv4_addresses()
            .values()
            .filter(|r| r.linode_id == linode && r.public)
            .map(|r| IpAddr::V4(r.address))
            .collect()
    })
}

/// API requests the stand-in received with this method and path template, any answer.
fn requests(env: &Env, method: &str, template: &str) -> u64 {
    env.standin.request_log().count(method, template)
}

fn reconciles(m: &Metrics) -> u64 {
    ["ok", "error"]
        .into_iter()
        .map(|result| m.reconciles.get_or_create(&ResultLabels { result }).get())
        .sum()
}

/// Sets how the stand-in answers allocations.
fn set_knobs(env: &Env, knobs: AllocationKnobs) {
    env.standin.faults().set_allocation(knobs).expect("knobs");
}

/// Applies SharedIP `web` and waits until its Shared condition gives the refusal `reason`:
/// the SharedIP then, and the condition's message.
async fn web_refused(env: &Env, reason: &str) -> (sharedip_api::SharedIP, String) {
    env.apply_sharedip("web", edge()).await;
    let sip = env
        .eventually_condition("web", "Shared", "False", reason)
        .await;
    let (_, message) = condition(&sip, "Shared");
    (sip, message)
}

/// Touches `name` `POKES` times, each time waiting until the operator has reconciled again,
/// and checks after each that the condition still gives `reason`.
async fn poke(env: &Env, op: &InProcessOperator, name: &str, reason: &str) {
    for i in 0..POKES {
        let before = reconciles(&op.metrics);
        let patch = json!({"metadata": {"annotations": {"test.sharedip.io/poke": i.to_string()}}});
        env.sharedips()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("touch SharedIP");
        eventually(&format!("reconcile after poke {i}"), || async {
            if reconciles(&op.metrics) > before {
                Ok(())
            } else {
                Err("no reconcile yet".into())
            }
        })
        .await;
        let sip = env.get(name).await.expect("SharedIP");
        let (got, message) = condition(&sip, "Shared");
        assert_eq!(got, reason, "after poke {i}: {message}");
    }
}

/// Warning Events of `name` with this reason (Event objects: a repeat of the same one is
/// counted in its series, a new message makes a new object).
async fn warnings(env: &Env, name: &str, reason: &str) -> Vec<String> {
    env.event_reasons(name)
        .await
        .into_iter()
        .filter(|(r, _)| r == reason)
        .map(|(_, note)| note)
        .collect()
}

/// Settings whose refusal wait outlasts the test: every call to Linode after the first
/// refusal would break the bound.
fn long_refusal_wait() -> sharedip_operator::controller::ControllerSettings {
    let mut settings = fast_settings("in-process");
    settings.holders.backoff_base = Duration::from_secs(600);
    settings.holders.backoff_max = Duration::from_secs(600);
    settings
}

fn annotation(sip: &sharedip_api::SharedIP) -> Option<String> {
    sip.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ALLOCATION_INTENT_ANNOTATION).cloned())
}

#[tokio::test]
async fn a_kill_between_allocation_and_write_allocates_nothing_twice() {
    bounded(async {
        let env = edge_env(SEED).await;
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = env.cp.kubeconfig_path().to_path_buf();
        let args = ["--leader-election", "false", "--cluster-id", CLUSTER_ID];
        let (first_log, second_log) = (dir.path().join("first.log"), dir.path().join("second.log"));
        let _dump = DumpLogsOnPanic(vec![first_log.clone(), second_log.clone()]);

        // Linode commits the allocation, and its answer never reaches the operator.
        env.standin.holds().arm(HeldOperation::Ipv4Allocate, 1);
        let mut first = env.spawn_binary(&kubeconfig, &args, &first_log);
        env.apply_sharedip("web", edge()).await;
        let held = env
            .standin
            .holds()
            .wait_until(WAIT, |v| {
                v.held.iter().any(|h| h.state == HeldState::Waiting)
            })
            .await;
        assert!(held.is_some(), "no allocation held:\n{}", first.log());
        let status = first.sigkill().await.expect("operator reaped");
        assert!(!status.success(), "killed, not exited: {status:?}");
        env.standin.holds().clear();

        // What the kill left: the intent, and one new address on the holder nobody claims.
        let web = env.get("web").await.expect("web");
        assert_eq!(web.spec.allocated_address, None);
        let intent = Intent::of(&web)
            .expect("intent readable")
            .expect("intent recorded before the call");
        let holder = holder_id(&env).expect("holder created");
        assert_eq!(intent.holder, holder);
        let new: Vec<IpAddr> = ipv4_of(&env, holder)
            .difference(&intent.before)
            .copied()
            .collect();
        assert_eq!(new.len(), 1, "one address committed: {new:?}");
        let committed = new[0].to_string();
        assert_eq!(env.standin.counters().ipv4_allocated, 1);

        // The next operator adopts exactly that address.
        let mut second = env.spawn_binary(&kubeconfig, &args, &second_log);
        assert_eq!(eventually_allocated(&env, "web").await, committed);
        env.eventually_shared(&committed, &[101]).await;
        let web = env.get("web").await.expect("web");
        assert_eq!(annotation(&web), None, "intent dropped with the write");
        assert_eq!(env.standin.counters().ipv4_allocated, 1, "nothing twice");
        assert!(
            second
                .log()
                .contains("adopting the address an interrupted allocation left"),
            "{}",
            second.log()
        );

        // An answer lost before Linode did anything (a 502 from in front of it): the intent
        // stays, the holder shows nothing new, so the operator allocates again, once.
        env.standin
            .faults()
            .inject(
                FaultRule::server_error(1, 502)
                    .method("POST")
                    .path_prefix(&format!("/linode/instances/{holder}/ips")),
            )
            .expect("fault");
        env.apply_sharedip("api", edge()).await;
        let api = eventually_allocated(&env, "api").await;
        assert_ne!(api, committed);
        assert_eq!(env.standin.faults().pending(), 0, "the 502 was answered");
        assert!(
            second
                .log()
                .contains("an interrupted allocation took no effect"),
            "{}",
            second.log()
        );
        env.eventually_shared(&api, &[101]).await;
        assert_eq!(
            env.standin.counters().ipv4_allocated,
            2,
            "api allocated once"
        );
        assert_eq!(annotation(&env.get("api").await.expect("api")), None);
        assert_eq!(
            ipv4_of(&env, holder).len(),
            3,
            "the holder's own, web's and api's"
        );
        let status = second.terminate().await.expect("exits on SIGTERM");
        assert!(status.success(), "{status:?}");
    })
    .await;
}

#[tokio::test]
async fn a_support_ticket_refusal_is_reported_and_not_asked_again_while_it_lasts() {
    bounded(async {
        let env = edge_env(SEED).await;
        set_knobs(
            &env,
            AllocationKnobs {
                ipv4_needs_ticket: true,
                ..Default::default()
            },
        );
        let op = env.spawn_operator_with(long_refusal_wait());
        let (_, message) = web_refused(&env, "AllocationRefused").await;
        assert!(message.contains(SUPPORT_TICKET_REASON), "{message}");
        assert_eq!(requests(&env, "POST", endpoints::LINODE_IPS), 1);

        poke(&env, &op, "web", "AllocationRefused").await;
        assert_eq!(
            requests(&env, "POST", endpoints::LINODE_IPS),
            1,
            "asked once while the refusal lasts"
        );
        let sip = env.get("web").await.expect("web");
        assert_eq!(condition(&sip, "Shared").1, message, "the same message");
        let events = warnings(&env, "web", "AllocationRefused").await;
        assert_eq!(events.len(), 1, "one Warning Event: {events:?}");
        assert!(events[0].contains(SUPPORT_TICKET_REASON), "{events:?}");
        assert_eq!(annotation(&sip), None, "a refusal leaves no intent");
        let c = env.standin.counters();
        assert_eq!((c.linodes_created, c.ipv4_allocated), (1, 0), "{c:?}");

        // The ticket granted: a restarted operator (its wait starts afresh) allocates.
        op.stop().await;
        set_knobs(&env, AllocationKnobs::default());
        let _op = env.spawn_operator();
        let web = eventually_allocated(&env, "web").await;
        env.eventually_shared(&web, &[101]).await;
        let c = env.standin.counters();
        assert_eq!((c.linodes_created, c.ipv4_allocated), (1, 1), "{c:?}");
    })
    .await;
}

#[tokio::test]
async fn the_account_limit_is_reported_and_the_allocation_follows_once_lifted() {
    bounded(async {
        let env = edge_env(SEED).await;
        // Room for the holder's own address, none for an allocated one.
        let public = env
            .standin
            .state()
            .read(|a| a.ipv4_addresses().values().filter(|r| r.public).count());
        let limit = u32::try_from(public + 1).unwrap();
        set_knobs(
            &env,
            AllocationKnobs {
                ipv4_limit: Some(limit),
                ..Default::default()
            },
        );
        // fast_settings: the region waits 1 s, then 2 s, ... up to 4 s between attempts.
        let _op = env.spawn_operator();
        let (_, message) = web_refused(&env, "AllocationRefused").await;
        assert!(
            message.contains(&format!("Your account is limited to {limit} public IPv4")),
            "{message}"
        );
        assert_eq!(env.standin.counters().linodes_created, 1);
        assert_eq!(env.standin.counters().ipv4_allocated, 0);

        // Lifted: the next attempt after the wait allocates, without any touch.
        set_knobs(&env, AllocationKnobs::default());
        let web = eventually_allocated(&env, "web").await;
        env.eventually_shared(&web, &[101]).await;
        let c = env.standin.counters();
        assert_eq!((c.linodes_created, c.ipv4_allocated), (1, 1), "{c:?}");
    })
    .await;
}

#[tokio::test]
async fn a_refused_holder_creation_is_reported_and_not_asked_again_while_it_lasts() {
    bounded(async {
        let env = edge_env(SEED).await;
        let refusal = "Linode creation is restricted on this account";
        set_knobs(
            &env,
            AllocationKnobs {
                linode_create_failure: Some(ShareFailure {
                    status: 400,
                    reason: refusal.into(),
                }),
                ..Default::default()
            },
        );
        let op = env.spawn_operator_with(long_refusal_wait());
        let (_, message) = web_refused(&env, "IPHolderCreationRefused").await;
        assert!(
            message.contains(refusal) && message.contains(HOLDER_LABEL),
            "{message}"
        );
        assert_eq!(requests(&env, "POST", endpoints::LINODES), 1);

        poke(&env, &op, "web", "IPHolderCreationRefused").await;
        assert_eq!(
            requests(&env, "POST", endpoints::LINODES),
            1,
            "asked once while the refusal lasts"
        );
        let events = warnings(&env, "web", "IPHolderCreationRefused").await;
        assert_eq!(events.len(), 1, "one Warning Event: {events:?}");
        let c = env.standin.counters();
        assert_eq!((c.linodes_created, c.ipv4_allocated), (0, 0), "{c:?}");
        assert_eq!(holder_id(&env), None);
    })
    .await;
}

#[tokio::test]
async fn a_deleted_holder_loses_the_address_and_never_replaces_it() {
    bounded(async {
        let env = edge_env(SEED).await;
        // The account is read again a second after it was last read: Linode tells nobody
        // of a deleted Linode, and the periodic resync (minutes) is not what is tested here.
        let mut settings = fast_settings("in-process");
        settings.directory.ttl = Duration::from_secs(1);
        let _op = env.spawn_operator_with(settings);
        env.apply_sharedip("web", edge()).await;
        let web = eventually_allocated(&env, "web").await;
        env.eventually_shared(&web, &[101]).await;
        let old = holder_id(&env).expect("holder");

        // Deleted by hand: its addresses go with it. Each touch reconciles web.
        env.standin
            .state()
            .delete_linode(old)
            .expect("delete holder");
        let mut touches = 0;
        let e = &env;
        eventually("web reports its address lost", || {
            touches += 1;
            let touch = touches.to_string();
            async move {
                let patch = json!({"metadata": {"annotations": {"test.sharedip.io/poke": touch}}});
                e.sharedips()
                    .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .expect("touch web");
                tokio::time::sleep(Duration::from_millis(400)).await;
                let sip = e.get("web").await.expect("web");
                match condition(&sip, "Shared") {
                    (r, _) if r == "AllocatedAddressLost" => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await;
        let sip = env
            .eventually_condition("web", "Shared", "False", "AllocatedAddressLost")
            .await;
        assert_eq!(sip.spec.allocated_address.as_deref(), Some(web.as_str()));
        assert!(condition(&sip, "Shared").1.contains(&web));
        // However often it was touched, nothing was created or allocated for it.
        let c = env.standin.counters();
        assert_eq!((c.linodes_created, c.ipv4_allocated), (1, 1), "{c:?}");

        // A new SharedIP gets a new holder. The stand-in, like Linode, hands freed addresses
        // out again (lowest first): the first one allocated for api is web's lost address. It
        // is web's address come back, not api's, so api gets the next one, and web is shared
        // again with the address its clients know.
        env.apply_sharedip("api", edge()).await;
        let api = eventually_allocated(&env, "api").await;
        assert_ne!(api, web, "web's address is not handed to api");
        // A new Linode (the stand-in hands out the freed ID again; linodes_created tells).
        let new = holder_id(&env).expect("a new holder");
        let on_new = ipv4_of(&env, new);
        assert!(
            on_new.contains(&api.parse::<IpAddr>().unwrap()),
            "{on_new:?}"
        );
        assert!(
            on_new.contains(&web.parse::<IpAddr>().unwrap()),
            "{on_new:?}"
        );
        let c = env.standin.counters();
        assert_eq!((c.linodes_created, c.ipv4_allocated), (2, 3), "{c:?}");
        env.eventually_shared(&api, &[101]).await;
        env.eventually_shared(&web, &[101]).await;
        let sip = env.get("web").await.expect("web");
        assert_eq!(sip.spec.allocated_address.as_deref(), Some(web.as_str()));
        assert_eq!(annotation(&env.get("api").await.expect("api")), None);
    })
    .await;
}

#[tokio::test]
async fn without_holders_a_sharedip_without_address_reports_no_holder() {
    bounded(async {
        let env = edge_env(SEED).await;
        let mut settings = fast_settings("in-process");
        settings.holders.mode = HolderMode::Off;
        let _op = env.spawn_operator_with(settings);
        let (sip, message) = web_refused(&env, "NoIPHolder").await;
        assert!(message.contains("--ip-holder=off"), "{message}");
        assert_eq!(requests(&env, "POST", endpoints::LINODES), 0);
        assert_eq!(requests(&env, "POST", endpoints::LINODE_IPS), 0);
        assert_eq!(sip.spec.allocated_address, None);
    })
    .await;
}
