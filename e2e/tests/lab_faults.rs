//! Faults proven harmless in the whole lab: a route server restarted or gone silent, the
//! apiserver restarted, a share call failing for one Linode, the leading operator killed in
//! the middle of a share wave, 429 and 5xx bursts from the Linode API during a failover,
//! and an agent killed while it withdraws.
//!
//! Each fault is a step of one of two stories, and each step ends by checking every place
//! an address can be left in — the stand-in's shares, what the nodes announce to each route
//! server (accepted or not), every node's `lo`, the router — against what the SharedIPs
//! want ([`Wanted`]), and who answers. Outcomes only, never timings; root only (skipped
//! with a message otherwise); one lab at a time; every wait bounded; the lab tears itself
//! down (and prints every log) on every path.

mod lab_common;

use lab_common::{delete_and_expect_nothing_left, preflight, shared, SERIAL, SIP};
use sharedip_e2e::lab::cluster::{eventually, BOUND, ROLE_LABEL, SHARED_V4};
use sharedip_e2e::lab::{role_spec, Lab, LabConfig, NodeSpec, Wanted, WantedAddress};
use sharedip_e2e::routeserver::{Flavor, IpPrefix};
use sharedip_e2e::standin::{FaultRule, ShareFailure};

/// Probes in a row that must all reach the same node while a fault lasts.
const STEADY_PROBES: usize = 10;
/// Probes while the apiserver is away: enough for the leader's lease to lapse and the
/// watches to back off (each probe and check takes half a second or more).
const OUTAGE_PROBES: usize = 40;
/// The share call's path template in the stand-in's request log.
const SHARE: &str = "/networking/ips/share";

fn prefix() -> IpPrefix {
    IpPrefix {
        addr: shared(),
        len: 32,
    }
}

/// The address active on `nodes` (shared, bound, announced) with the traffic on `serving`.
fn active(nodes: &[&str], serving: &str) -> Wanted {
    Wanted::nothing().with(prefix(), WantedAddress::active(nodes, serving))
}

/// node-a (primary), node-b (secondary), node-c (no role yet).
async fn start() -> Lab {
    let mut config = LabConfig::default();
    config.nodes.push(NodeSpec::new("node-c"));
    lab_common::start(config).await
}

async fn expect(lab: &Lab, wanted: &Wanted, why: &str) {
    lab.wait_state(wanted, BOUND)
        .await
        .unwrap_or_else(|e| panic!("{why}: {e}"));
}

/// `probes` probes in a row answered by `node`, each followed by a check that the lab is
/// still exactly `wanted`, except for the differences `allowed` (a fault's own effect,
/// e.g. a silent route server hearing nothing).
async fn assert_steady(
    lab: &Lab,
    probes: usize,
    wanted: &Wanted,
    node: &str,
    allowed: &[String],
    why: &str,
) {
    for i in 0..probes {
        let got = lab.who_answers(shared()).await;
        assert_eq!(got.as_deref(), Some(node), "{why}: probe {i} of {probes}");
        let left: Vec<String> = lab
            .unwanted(wanted)
            .into_iter()
            .filter(|d| !allowed.contains(d))
            .collect();
        assert!(left.is_empty(), "{why}: probe {i}: {left:#?}");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

/// Waits until the SharedIP's status says what the lab holds: shared with exactly `nodes`'
/// Linodes, and Shared and Ready true.
async fn expect_reported(lab: &Lab, nodes: &[&str], why: &str) {
    let want: std::collections::BTreeSet<String> = nodes.iter().map(|n| n.to_string()).collect();
    eventually(
        &format!("the status reports sharing with {want:?}, Shared and Ready"),
        BOUND,
        || async {
            let status = lab
                .sharedip(SIP)
                .await
                .map_err(|e| e.to_string())?
                .and_then(|s| s.status)
                .ok_or("no status")?;
            let with: std::collections::BTreeSet<String> =
                status.shared_with.iter().map(|s| s.node.clone()).collect();
            let condition = |t: &str| {
                status
                    .conditions
                    .iter()
                    .find(|c| c.type_ == t)
                    .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
            };
            let true_ = |t: &str| condition(t).is_some_and(|c| c.0 == "True");
            if with == want && true_("Shared") && true_("Ready") {
                Ok(())
            } else {
                Err(format!(
                    "sharedWith {with:?}, Shared {:?}, Ready {:?}",
                    condition("Shared"),
                    condition("Ready")
                ))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{why}: {e}"));
}

/// How many BGP sessions `node`'s agent reports established in its status entry, once it
/// reports `want` of 4.
async fn expect_sessions(lab: &Lab, node: &str, want: i32, why: &str) {
    eventually(
        &format!("{node} reports {want} of 4 sessions"),
        BOUND,
        || async {
            let entry = lab
                .node_status(SIP, node)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("no status entry")?;
            match (entry.sessions_established, entry.sessions_total) {
                (Some(n), Some(4)) if n == want => Ok(()),
                other => Err(format!("sessions (established, total) = {other:?}")),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{why}: {e}"));
}

/// A route server restarted, a route server gone silent, the apiserver restarted: the
/// traffic stays on the primary through each, nothing on the network changes that the
/// SharedIPs do not ask for, and afterwards changes are applied again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_servers_and_apiserver_failing_leave_nothing_behind() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let begun = std::time::Instant::now();
    let mut lab = start().await;
    lab.apply_sharedip(SIP, role_spec(&SHARED_V4.to_string()))
        .await
        .expect("apply");
    let wanted = active(&["node-a", "node-b"], "node-a");
    expect(&lab, &wanted, "initial announcement").await;

    // 1. The route servers restart one after the other, as in a maintenance: each forgets
    //    every session and route while the others keep the traffic on node-a; the agents
    //    reconnect and announce again, and the restarted one prefers the primary again.
    let node_a = lab.node_address("node-a").unwrap();
    for i in 0..4 {
        let rs = format!("rs{}", i + 1);
        lab.restart_route_server(i)
            .unwrap_or_else(|e| panic!("{rs} restarts: {e}"));
        lab.wait_sessions(BOUND)
            .await
            .unwrap_or_else(|e| panic!("every agent's session to {rs} comes back: {e}"));
        expect(
            &lab,
            &wanted,
            &format!("after {rs} restarted, both routes are announced to it again"),
        )
        .await;
        assert_eq!(
            lab.routing().best(prefix()),
            vec![Some(node_a); 4],
            "after {rs} restarted, every route server prefers the primary"
        );
    }
    assert_steady(
        &lab,
        STEADY_PROBES,
        &wanted,
        "node-a",
        &[],
        "after every route server restarted",
    )
    .await;

    // 2. rs2 goes silent: its packets are dropped both ways, no FIN, no RST. Both ends'
    //    hold timers expire; the other three carry the traffic, unchanged.
    lab.silence_route_server(1, true).expect("silence rs2");
    for node in ["node-a", "node-b"] {
        expect_sessions(&lab, node, 3, "the agent's hold timer for rs2 expires").await;
    }
    let rs2_deaf = vec![format!(
        "rs2 hears {} from [], wanted from [node-a, node-b]",
        prefix()
    )];
    eventually(
        "rs2 drops the routes of the sessions it lost",
        BOUND,
        || async {
            let left = lab.unwanted(&wanted);
            if left == rs2_deaf {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        },
    )
    .await
    .expect("the silent route server is the only difference");
    assert_steady(
        &lab,
        STEADY_PROBES,
        &wanted,
        "node-a",
        &rs2_deaf,
        "while rs2 is silent, the other three carry the traffic",
    )
    .await;
    lab.silence_route_server(1, false)
        .expect("rs2 speaks again");
    lab.wait_sessions(BOUND)
        .await
        .expect("the sessions to rs2 re-establish");
    for node in ["node-a", "node-b"] {
        expect_sessions(&lab, node, 4, "the agent's session to rs2 is back").await;
    }
    expect(&lab, &wanted, "after rs2 came back").await;

    // 3. The apiserver goes away. Agents and operators lose their watches and the leader
    //    its lease; nothing on the network may change while it is down, unless a node
    //    fails.
    lab.stop_apiserver();
    assert_steady(
        &lab,
        OUTAGE_PROBES,
        &wanted,
        "node-a",
        &[],
        "while the apiserver is down, the network stays as it was",
    )
    .await;
    for node in ["node-a", "node-b", "node-c"] {
        assert!(
            lab.agent_running(node).unwrap(),
            "{node}'s agent rides out the apiserver's absence"
        );
    }
    //    A failover needs no apiserver: node-a's agent dies, node-b takes the traffic.
    lab.sigkill_agent("node-a").expect("node-a known");
    expect(
        &lab,
        &Wanted::nothing().with(
            prefix(),
            WantedAddress::active(&["node-a", "node-b"], "node-b").announced_by(&["node-b"]),
        ),
        "node-b takes over while the apiserver is down",
    )
    .await;
    lab.start_apiserver().await.expect("the apiserver restarts");
    lab.start_agent("node-a").expect("agent starts");
    expect(&lab, &wanted, "node-a's agent is back: failback").await;
    // A leader that could not renew its lease steps down and exits, as in client-go; the
    // kubelet restarts it (here: the lab), and it becomes a candidate again.
    eprintln!(
        "operators after the apiserver outage: {:?}",
        lab.operators_running()
    );
    lab.restart_operators().expect("operators start");
    assert_steady(
        &lab,
        STEADY_PROBES,
        &wanted,
        "node-a",
        &[],
        "reconnecting changes nothing on the network",
    )
    .await;

    //    A change made after it returns is applied, by the operator (shares) and by each
    //    agent (whose watch must have reconnected): node-c replaces node-b as secondary,
    //    then node-a drains and undrains.
    lab.label_node("node-c", ROLE_LABEL, Some("secondary"))
        .await
        .expect("label node-c");
    lab.label_node("node-b", ROLE_LABEL, None)
        .await
        .expect("unlabel node-b");
    let wanted = active(&["node-a", "node-c"], "node-a");
    expect(&lab, &wanted, "a change after the apiserver returned").await;
    expect_reported(
        &lab,
        &["node-a", "node-c"],
        "a change after the apiserver returned",
    )
    .await;
    lab.set_drain("node-a", true).await.expect("drain");
    expect(
        &lab,
        &Wanted::nothing().with(
            prefix(),
            WantedAddress::active(&["node-a", "node-c"], "node-c")
                .bound_on(&["node-c"])
                .announced_by(&["node-c"]),
        ),
        "node-a's agent follows its drain annotation",
    )
    .await;
    lab.set_drain("node-a", false).await.expect("undrain");
    expect(&lab, &wanted, "node-a undrained").await;

    delete_and_expect_nothing_left(&lab).await;
    // Information only, never asserted.
    eprintln!("scenario wall time {:?}", begun.elapsed());
}

/// A share call failing for one Linode, the leading operator killed in the middle of a
/// share wave, 429 and 5xx bursts from the Linode API during a failover, an agent killed
/// while it withdraws, the leader killed in the middle of a deletion: the end state is
/// exactly what the SharedIPs want each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_processes_failing_mid_change_leave_nothing_behind() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let begun = std::time::Instant::now();
    let mut lab = start().await;
    let node_b = lab.linode_of("node-b").unwrap();

    // 0. The share call fails for node-b's Linode: as on Linode, the route servers leave
    //    node-b's sessions unanswered (no share, no session), so they never hear its
    //    route, and the traffic stays on node-a. Once the API accepts the call again, the
    //    operator's retry shares the address and node-b's sessions and route come up.
    lab.standin()
        .faults()
        .fail_share_for(node_b, ShareFailure::default())
        .expect("fault");
    lab.apply_sharedip(SIP, role_spec(&SHARED_V4.to_string()))
        .await
        .expect("apply");
    let wanted = active(&["node-a", "node-b"], "node-a");
    let mut unheard = vec![format!(
        "{} is shared with [node-a], wanted with [node-a, node-b]",
        prefix()
    )];
    unheard.extend((1..=4).map(|i| {
        format!(
            "rs{i} hears {} from [node-a], wanted from [node-a, node-b]",
            prefix()
        )
    }));
    let b_address = lab.node_address("node-b").unwrap();
    eventually("node-b refused everywhere, never heard", BOUND, || async {
        let left = lab.unwanted(&wanted);
        let refused = (0..lab.routing().len()).all(|i| {
            lab.routing()
                .refused(i)
                .is_ok_and(|r| r.contains(&b_address))
        });
        if left == unheard && refused {
            Ok(())
        } else {
            Err(format!("refused everywhere: {refused}; {left:#?}"))
        }
    })
    .await
    .expect("the route servers refuse a node without a share, and the lab sees it");
    lab.wait_answers(shared(), Some("node-a"), BOUND)
        .await
        .expect("node-a answers");
    lab.standin().faults().clear_share_failure(node_b);
    expect(&lab, &wanted, "the operator shares once the API accepts").await;
    expect_reported(
        &lab,
        &["node-a", "node-b"],
        "the operator shares once the API accepts",
    )
    .await;

    // 1. The leader dies mid-wave. node-c replaces node-b as secondary: one wave shares
    //    the address with node-c's Linode and takes it from node-b's. The stand-in applies
    //    node-c's share but holds its answer back, and refuses node-b's; the leader is
    //    killed while that share call is in flight, so it never learns what took effect.
    lab.standin()
        .faults()
        .set_reply_delay(std::time::Duration::from_secs(8));
    lab.standin()
        .faults()
        .fail_share_for(
            node_b,
            sharedip_e2e::standin::ShareFailure {
                status: 503,
                reason: "injected".into(),
            },
        )
        .expect("fault");
    lab.label_node("node-c", ROLE_LABEL, Some("secondary"))
        .await
        .expect("label node-c");
    lab.label_node("node-b", ROLE_LABEL, None)
        .await
        .expect("unlabel node-b");
    eventually("the wave is in flight", BOUND, || async {
        let with = lab.shared_with(&SHARED_V4.to_string());
        let in_flight = lab.standin().request_log().in_flight("POST", SHARE);
        if with.contains("node-c") && in_flight > 0 {
            Ok(())
        } else {
            Err(format!(
                "shared with {with:?}, {in_flight} share calls in flight"
            ))
        }
    })
    .await
    .expect("the leader's wave reaches the stand-in");
    let killed = lab.kill_leader().await.expect("a leader to kill");
    lab.standin()
        .faults()
        .set_reply_delay(std::time::Duration::ZERO);
    lab.standin().faults().clear_share_failure(node_b);
    assert!(
        lab.shared_with(&SHARED_V4.to_string()).contains("node-b"),
        "the killed leader did not finish the wave"
    );
    let wanted = active(&["node-a", "node-c"], "node-a");
    expect(&lab, &wanted, "the standby finishes the wave").await;
    expect_reported(&lab, &["node-a", "node-c"], "the standby finishes the wave").await;
    let leader = lab.operator_leader().await.expect("lease");
    assert!(
        leader.as_deref().is_some_and(|l| l != killed),
        "the standby leads now: {leader:?}, killed {killed}"
    );
    lab.restart_operators()
        .expect("the killed operator restarts");

    // 2. Failover while the Linode API fails. The API answers every request with 503;
    //    node-a loses its role: its agent withdraws and node-c takes the traffic without
    //    any API call, while the share with node-a's Linode stays for want of one.
    lab.standin()
        .faults()
        .inject(FaultRule::server_error(1_000_000, 503))
        .expect("fault");
    lab.label_node("node-a", ROLE_LABEL, None)
        .await
        .expect("unlabel node-a");
    lab.wait_answers(shared(), Some("node-c"), BOUND)
        .await
        .expect("the secondary answers although the Linode API fails");
    assert!(
        lab.standin().faults().pending() > 0,
        "the API failed throughout the failover"
    );
    assert!(
        lab.shared_with(&SHARED_V4.to_string()).contains("node-a"),
        "no share call got through: {:?}",
        lab.standin().request_log().counts()
    );
    //    The outage ends in bursts of 429s and 5xxs; the operator retries through them and
    //    takes the address from node-a's Linode.
    lab.standin().faults().clear();
    lab.standin()
        .faults()
        .inject(FaultRule::rate_limit(3, 1))
        .expect("fault");
    lab.standin()
        .faults()
        .inject(FaultRule::server_error(3, 502))
        .expect("fault");
    lab.standin()
        .faults()
        .inject(FaultRule::rate_limit(2, 1).path_prefix(SHARE))
        .expect("fault");
    let wanted = active(&["node-c"], "node-c");
    expect(&lab, &wanted, "the operator retries through the bursts").await;
    expect_reported(&lab, &["node-c"], "the operator retries through the bursts").await;
    assert_eq!(
        lab.standin().faults().pending(),
        0,
        "every injected 429 and 5xx was answered"
    );
    lab.label_node("node-a", ROLE_LABEL, Some("primary"))
        .await
        .expect("label node-a");
    let wanted = active(&["node-a", "node-c"], "node-a");
    expect(&lab, &wanted, "node-a is primary again").await;

    // 3. node-a's agent is killed while it withdraws: after the drain it has withdrawn
    //    the route and waits out a long unbind delay with the address still on lo.
    lab.set_agent_unbind_delay("node-a", Some("40s"))
        .expect("node-a known");
    lab.sigkill_agent("node-a").expect("node-a known");
    lab.start_agent("node-a").expect("agent starts");
    expect(&lab, &wanted, "node-a's agent with a long unbind delay").await;
    lab.set_drain("node-a", true).await.expect("drain");
    let withdrawing = Wanted::nothing().with(
        prefix(),
        WantedAddress::active(&["node-a", "node-c"], "node-c").announced_by(&["node-c"]),
    );
    lab.wait_state(&withdrawing, BOUND)
        .await
        .unwrap_or_else(|e| {
            panic!("node-a withdraws and keeps the address for its unbind delay: {e}")
        });
    lab.sigkill_agent("node-a").expect("node-a known");
    lab.set_agent_unbind_delay("node-a", None)
        .expect("node-a known");
    lab.start_agent("node-a").expect("agent starts");
    let drained = Wanted::nothing().with(
        prefix(),
        WantedAddress::active(&["node-a", "node-c"], "node-c")
            .bound_on(&["node-c"])
            .announced_by(&["node-c"]),
    );
    expect(
        &lab,
        &drained,
        "the restarted agent cleans up: nothing on lo, no route",
    )
    .await;
    lab.set_drain("node-a", false).await.expect("undrain");
    expect(&lab, &wanted, "node-a undrained").await;

    // 4. The leader dies in the middle of the deletion's wave: the address is taken from
    //    node-c's Linode (answer held back), node-a's refuses; the finalizer is still on
    //    the object when the leader dies, and the standby finishes the deletion.
    let node_a = lab.linode_of("node-a").unwrap();
    lab.standin()
        .faults()
        .set_reply_delay(std::time::Duration::from_secs(8));
    lab.standin()
        .faults()
        .fail_share_for(node_a, ShareFailure::default())
        .expect("fault");
    lab.delete_sharedip(SIP).await.expect("delete");
    eventually("the deletion's wave is in flight", BOUND, || async {
        let with = lab.shared_with(&SHARED_V4.to_string());
        let in_flight = lab.standin().request_log().in_flight("POST", SHARE);
        if !with.contains("node-c") && in_flight > 0 {
            Ok(())
        } else {
            Err(format!(
                "shared with {with:?}, {in_flight} share calls in flight"
            ))
        }
    })
    .await
    .expect("the leader's deletion wave reaches the stand-in");
    lab.kill_leader().await.expect("a leader to kill");
    lab.standin()
        .faults()
        .set_reply_delay(std::time::Duration::ZERO);
    lab.standin().faults().clear_share_failure(node_a);
    assert!(
        lab.sharedip(SIP).await.expect("get").is_some(),
        "the killed leader did not finish the deletion"
    );
    eventually("the standby finishes the finalizer", BOUND, || async {
        match lab.sharedip(SIP).await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(s) => Err(format!("still there: {:?}", s.metadata.finalizers)),
        }
    })
    .await
    .expect("the SharedIP goes");
    lab.wait_no_leaks(BOUND).await.expect("nothing left behind");
    assert_eq!(lab.who_answers(shared()).await, None, "nobody answers");
    lab.restart_operators()
        .expect("the killed operator restarts");
    eprintln!("scenario wall time {:?}", begun.elapsed());
}
