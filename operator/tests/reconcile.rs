//! The operator against a real kube-apiserver and the Linode API stand-in.

// Test code: a panic is a failed test, and a scenario reads best in one piece.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod support;

use std::time::Duration;

use serde_json::json;
use sharedip_e2e::standin::FaultRule;
use support::*;

/// Bounds a whole test, so a hang fails instead of blocking CI.
async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(300), f)
        .await
        .expect("test finished within 300 s");
}

#[tokio::test]
async fn create_update_delete() {
    bounded(async {
        let env = Env::start().await;
        env.add_node("node-a", &[("role", "primary")], Some(101))
            .await;
        env.add_node("node-b", &[("role", "secondary")], Some(102))
            .await;
        env.add_node("node-c", &[("pool", "other")], Some(103))
            .await;
        let op = env.spawn_operator();

        env.apply_sharedip("web", spec("192.0.2.10")).await;
        env.eventually_shared("192.0.2.10", &[101, 102]).await;
        let sip = env
            .eventually_condition("web", "Shared", "True", "Shared")
            .await;
        let status = sip.status.expect("status");
        assert_eq!(status.primary.as_deref(), Some("node-a"));
        assert_eq!(status.secondary.as_deref(), Some("node-b"));
        assert_eq!(status.shared_linode_count, Some(2));
        assert_eq!(status.shared_address.as_deref(), Some("192.0.2.10"));
        assert_eq!(status.owner.as_ref().map(|o| o.linode_id), Some(100));
        // The spec leaves the prefix to its default; the status and `-o wide` show it.
        assert_eq!(status.prefix, Some(32));
        let wide = env.kubectl_wide("web").await;
        assert_eq!(
            wide.get("PREFIX").map(String::as_str),
            Some("32"),
            "{wide:?}"
        );
        // The Address column reads the address in use from the status.
        assert_eq!(status.address.as_deref(), Some("192.0.2.10"));
        assert_eq!(
            wide.get("ADDRESS").map(String::as_str),
            Some("192.0.2.10"),
            "{wide:?}"
        );
        assert!(sip
            .metadata
            .finalizers
            .unwrap_or_default()
            .contains(&sharedip_api::FINALIZER.to_string()));

        // Move the secondary role to node-c's pool.
        env.apply_sharedip(
            "web",
            json!({
                "address": "192.0.2.10",
                "primary": {"nodeSelector": {"matchLabels": {"role": "primary"}}},
                "secondary": {"nodeSelector": {"matchLabels": {"pool": "other"}}},
            }),
        )
        .await;
        env.eventually_shared("192.0.2.10", &[101, 103]).await;
        env.eventually_condition("web", "Shared", "True", "Shared")
            .await;

        let reasons = env.event_reasons("web").await;
        assert!(
            reasons
                .iter()
                .any(|(r, n)| r == "Shared" && n.contains("Linode 103")),
            "{reasons:?}"
        );
        assert!(
            reasons
                .iter()
                .any(|(r, n)| r == "Unshared" && n.contains("Linode 102")),
            "{reasons:?}"
        );

        env.delete_sharedip("web").await;
        eventually("SharedIP gone", || async {
            match env.get("web").await {
                None => Ok(()),
                Some(_) => Err("still there".into()),
            }
        })
        .await;
        assert!(env.shared("192.0.2.10").is_empty());
        assert!(
            env.by_linode().is_empty(),
            "nothing else shared: {:?}",
            env.by_linode()
        );
        op.stop().await;
    })
    .await;
}

/// A SharedIP without an address waits while no selected node has a Linode (the address is
/// allocated in the nodes' region): AwaitingAddress, nothing allocated or shared. An
/// allocatedAddress written meanwhile is used as is once a node has its Linode, and is the
/// address the status shows.
#[tokio::test]
async fn a_sharedip_without_an_address_waits_then_shares_the_allocated_one() {
    bounded(async {
        let env = Env::start().await;
        env.add_node("node-a", &[("role", "primary")], None).await;
        let op = env.spawn_operator();

        let mut s = spec("192.0.2.11");
        s.as_object_mut().unwrap().remove("address");
        env.apply_sharedip("web", s.clone()).await;
        let sip = env
            .eventually_condition("web", "Shared", "False", "AwaitingAddress")
            .await;
        assert_eq!(sip.status.expect("status").address, None);
        assert!(env.by_linode().is_empty(), "{:?}", env.by_linode());
        let c = env.standin.counters();
        assert_eq!((c.linodes_created, c.ipv4_allocated), (0, 0), "{c:?}");

        s["allocatedAddress"] = json!("192.0.2.11");
        env.apply_sharedip("web", s).await;
        env.set_provider_id("node-a", 101).await;
        env.eventually_shared("192.0.2.11", &[101]).await;
        let sip = env
            .eventually_condition("web", "Shared", "True", "Shared")
            .await;
        assert_eq!(
            sip.status.expect("status").address.as_deref(),
            Some("192.0.2.11")
        );
        let c = env.standin.counters();
        assert_eq!((c.linodes_created, c.ipv4_allocated), (0, 0), "{c:?}");
        op.stop().await;
    })
    .await;
}

#[tokio::test]
async fn nodes_join_leave_relabel_and_get_provider_ids() {
    bounded(async {
        let env = Env::start().await;
        env.add_node("node-a", &[("role", "primary")], Some(101))
            .await;
        let _op = env.spawn_operator();
        env.apply_sharedip("web", spec("192.0.2.10")).await;
        env.eventually_shared("192.0.2.10", &[101]).await;

        // Joins.
        env.add_node("node-d", &[("role", "secondary")], Some(104))
            .await;
        env.eventually_shared("192.0.2.10", &[101, 104]).await;

        // A node without providerID is reported, then taken in when the CCM sets it.
        env.add_node("node-e", &[("role", "secondary")], None).await;
        let sip = env
            .eventually_condition("web", "Shared", "True", "Shared")
            .await;
        eventually("node-e excluded", || async {
            let sip = env.get("web").await.ok_or("missing")?;
            let ex = sip.status.unwrap_or_default().excluded_nodes;
            if ex
                .iter()
                .any(|e| e.name == "node-e" && e.reason == "NodeWithoutProviderID")
            {
                Ok(())
            } else {
                Err(format!("excluded: {ex:?}"))
            }
        })
        .await;
        drop(sip);
        env.set_provider_id("node-e", 105).await;
        env.eventually_shared("192.0.2.10", &[101, 104, 105]).await;

        // Relabelled away.
        env.set_role("node-a", None).await;
        env.eventually_shared("192.0.2.10", &[104, 105]).await;
        // Relabelled from secondary to primary keeps the share and updates the role.
        env.set_role("node-d", Some("primary")).await;
        eventually("node-d is primary in status", || async {
            let s = env
                .get("web")
                .await
                .ok_or("missing")?
                .status
                .unwrap_or_default();
            if s.primary.as_deref() == Some("node-d") {
                Ok(())
            } else {
                Err(format!("primary = {:?}", s.primary))
            }
        })
        .await;

        // Leaves.
        env.delete_node("node-d").await;
        env.delete_node("node-e").await;
        env.eventually_shared("192.0.2.10", &[]).await;
        env.eventually_condition("web", "Ready", "False", "NoNodesSelected")
            .await;
    })
    .await;
}

#[tokio::test]
async fn union_over_sharedips_keeps_foreign_shares() {
    bounded(async {
        let seed = format!("{SEED}sharing:\n  - {{linode_id: 101, ips: [\"198.51.100.7\"]}}\n");
        let env = Env::start_with_seed(&seed).await;
        env.add_node("node-a", &[("role", "primary")], Some(101))
            .await;
        env.add_node("node-b", &[("role", "secondary")], Some(102))
            .await;
        let _op = env.spawn_operator();
        env.apply_sharedip("web", spec("192.0.2.10")).await;
        env.apply_sharedip("api", spec("192.0.2.11")).await;
        env.apply_sharedip(
            "v6",
            json!({
                "address": "2001:db8:1:2::1",
                "prefix": 64,
                "primary": {"nodeSelector": {"matchLabels": {"role": "primary"}}},
            }),
        )
        .await;
        env.eventually_shared("192.0.2.10", &[101, 102]).await;
        env.eventually_shared("192.0.2.11", &[101, 102]).await;
        env.eventually_shared("2001:db8:1:2::", &[101]).await;
        let all = env.by_linode();
        let expect_101: std::collections::BTreeSet<String> =
            ["192.0.2.10", "192.0.2.11", "198.51.100.7", "2001:db8:1:2::"]
                .into_iter()
                .map(String::from)
                .collect();
        assert_eq!(all.get(&101), Some(&expect_101), "{all:?}");

        env.delete_sharedip("web").await;
        env.eventually_shared("192.0.2.10", &[]).await;
        env.eventually_shared("192.0.2.11", &[101, 102]).await;
        assert_eq!(
            env.shared("198.51.100.7"),
            [101].into(),
            "the hand-made share survives"
        );
        env.delete_sharedip("v6").await;
        env.eventually_shared("2001:db8:1:2::", &[]).await;
        assert_eq!(
            env.shared("198.51.100.7"),
            [101].into(),
            "the hand-made share survives"
        );
    })
    .await;
}

#[tokio::test]
async fn failures_are_reported_in_status_and_events() {
    bounded(async {
        let env = Env::start().await;
        env.add_node("node-a", &[("role", "primary")], Some(101))
            .await;
        env.add_node("node-far", &[("role", "secondary")], Some(201))
            .await;
        env.add_node("node-ghost", &[("role", "secondary")], Some(999))
            .await;
        let _op = env.spawn_operator();

        // Not in the account.
        env.apply_sharedip("missing", spec("192.0.2.99")).await;
        let s = env
            .eventually_condition("missing", "Ready", "False", "AddressNotInAccount")
            .await;
        let msg = &ready_message(&s);
        assert!(msg.contains("192.0.2.99"), "{msg}");

        // Other region and unknown Linode are excluded; the rest is shared.
        env.apply_sharedip("web", spec("192.0.2.10")).await;
        env.eventually_shared("192.0.2.10", &[101]).await;
        let s = env
            .eventually_condition("web", "Shared", "True", "Shared")
            .await;
        let ex = s.status.unwrap().excluded_nodes;
        let reasons: Vec<(&str, &str)> = ex
            .iter()
            .map(|e| (e.name.as_str(), e.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                ("node-far", "LinodeInOtherRegion"),
                ("node-ghost", "LinodeNotFound")
            ]
        );

        // A second SharedIP with the same address does not touch it.
        env.apply_sharedip(
            "web-copy",
            json!({
                "address": "192.0.2.10",
                "primary": {"nodeSelector": {"matchLabels": {"role": "secondary"}}},
            }),
        )
        .await;
        env.eventually_condition("web-copy", "Ready", "False", "DuplicateAddress")
            .await;
        env.eventually_shared("192.0.2.10", &[101]).await;

        // The owner Linode is a selected node: allowed, with a warning.
        env.apply_sharedip("owned", spec("192.0.2.12")).await;
        let s = env
            .eventually_condition("owned", "Shared", "True", "Shared")
            .await;
        let st = s.status.unwrap();
        assert_eq!(st.owner.and_then(|o| o.node).as_deref(), Some("node-a"));
        assert!(st
            .conditions
            .iter()
            .any(|c| c.message.contains("recycling it loses the address")));
        eventually("owner warning event", || async {
            let r = env.event_reasons("owned").await;
            if r.iter().any(|(reason, _)| reason == "OwnerIsSelectedNode") {
                Ok(())
            } else {
                Err(format!("{r:?}"))
            }
        })
        .await;
        // Deleting the first claimant hands the address to the duplicate.
        env.delete_sharedip("web").await;
        env.eventually_condition("web-copy", "Ready", "False", "NoUsableNodes")
            .await;
    })
    .await;
}

#[tokio::test]
async fn api_faults_converge_without_lost_or_extra_shares() {
    bounded(async {
        let env = Env::start().await;
        for (n, id) in [("node-a", 101), ("node-b", 102), ("node-c", 103)] {
            let role = if n == "node-a" {
                "primary"
            } else {
                "secondary"
            };
            env.add_node(n, &[("role", role)], Some(id)).await;
        }
        let faults = env.standin.faults();
        faults
            .inject(FaultRule::rate_limit(8, 1).path_prefix("/networking/ips/share"))
            .expect("fault");
        faults
            .inject(FaultRule::server_error(6, 503))
            .expect("fault");
        faults
            .inject(
                FaultRule::server_error(4, 500)
                    .method("GET")
                    .path_prefix("/linode/instances"),
            )
            .expect("fault");
        let _op = env.spawn_operator();
        env.apply_sharedip("web", spec("192.0.2.10")).await;
        env.apply_sharedip("api", spec("192.0.2.11")).await;
        env.eventually_shared("192.0.2.10", &[101, 102, 103]).await;
        env.eventually_shared("192.0.2.11", &[101, 102, 103]).await;
        env.eventually_condition("web", "Shared", "True", "Shared")
            .await;
        env.eventually_condition("api", "Shared", "True", "Shared")
            .await;
        assert_eq!(faults.pending(), 0, "every injected fault was hit");
        let all = env.by_linode();
        for l in [101u64, 102, 103] {
            let got: Vec<&str> = all[&l].iter().map(String::as_str).collect();
            assert_eq!(got, vec!["192.0.2.10", "192.0.2.11"], "Linode {l}");
        }
        assert_eq!(all.len(), 3, "no share anywhere else: {all:?}");
        let log = env.standin.request_log();
        assert!(log.count_status("POST", "/networking/ips/share", 429) > 0);
    })
    .await;
}

#[tokio::test]
async fn share_call_failure_is_retried_and_surfaced() {
    bounded(async {
        let env = Env::start().await;
        env.add_node("node-a", &[("role", "primary")], Some(101))
            .await;
        env.add_node("node-b", &[("role", "secondary")], Some(102))
            .await;
        env.standin
            .faults()
            .fail_share_for(
                102,
                sharedip_e2e::standin::ShareFailure {
                    status: 400,
                    reason: "Linode is busy".into(),
                },
            )
            .expect("fault");
        let _op = env.spawn_operator();
        env.apply_sharedip("web", spec("192.0.2.10")).await;
        let s = env
            .eventually_condition("web", "Ready", "False", "LinodeAPIError")
            .await;
        let msg = ready_message(&s);
        assert!(
            msg.contains("Linode 102") && msg.contains("Linode is busy"),
            "{msg}"
        );
        env.eventually_shared("192.0.2.10", &[101]).await;
        env.standin.faults().clear_share_failure(102);
        env.eventually_shared("192.0.2.10", &[101, 102]).await;
        env.eventually_condition("web", "Shared", "True", "Shared")
            .await;
    })
    .await;
}

/// The agents' entries in status.nodes drive Announced and Ready; the operator's server-side
/// apply never removes them, and an agent's apply never removes the operator's fields.
#[tokio::test]
async fn agents_status_entries_drive_announced_and_ready() {
    bounded(async {
        let env = Env::start().await;
        env.add_node("node-a", &[("role", "primary")], Some(101))
            .await;
        env.add_node("node-b", &[("role", "secondary")], Some(102))
            .await;
        let _op = env.spawn_operator();
        env.apply_sharedip("web", spec("192.0.2.10")).await;
        env.eventually_condition("web", "Shared", "True", "Shared")
            .await;
        let s = env
            .eventually_condition("web", "Ready", "False", "NotAnnounced")
            .await;
        let ann = s
            .status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Announced")
            .expect("Announced condition");
        assert!(ann.message.contains("DaemonSet"), "{}", ann.message);

        // What node agents write: each its own entry, with its own field manager.
        let agent_apply =
            |node: &'static str, role: &'static str, announcing: bool, why: &'static str| {
                let api = env.sharedips();
                async move {
                    let patch = json!({
                        "apiVersion": "sharedip.io/v1alpha1",
                        "kind": "SharedIP",
                        "status": {"nodes": [{
                            "name": node, "role": role, "announcing": announcing, "reason": why,
                            "sessionsEstablished": 4, "sessionsTotal": 4,
                        }]},
                    });
                    api.patch_status(
                        "web",
                        &kube::api::PatchParams::apply(&format!("sharedip-node-agent/{node}"))
                            .force(),
                        &kube::api::Patch::Apply(&patch),
                    )
                    .await
                    .expect("agent status apply");
                }
            };
        agent_apply("node-b", "Secondary", true, "Announced").await;
        env.eventually_condition("web", "Announced", "True", "SecondaryAnnounces")
            .await;
        agent_apply("node-a", "Primary", true, "Announced").await;
        let s = env
            .eventually_condition("web", "Ready", "True", "Ready")
            .await;
        let st = s.status.unwrap();
        assert_eq!(
            st.nodes.len(),
            2,
            "both agents' entries kept: {:?}",
            st.nodes
        );
        assert_eq!(st.shared_linode_count, Some(2), "operator fields kept");
        agent_apply("node-a", "Primary", false, "Draining").await;
        env.eventually_condition("web", "Announced", "True", "SecondaryAnnounces")
            .await;
        agent_apply("node-b", "Secondary", false, "ReadinessGateFailed").await;
        let s = env
            .eventually_condition("web", "Ready", "False", "NotAnnounced")
            .await;
        let ready = s
            .status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert!(
            ready.message.contains("node-a: Draining")
                && ready.message.contains("node-b: ReadinessGateFailed"),
            "{}",
            ready.message
        );
        // A node that waits for the route servers: the Ready reason (`kubectl get sip`'s
        // Reason column) says so rather than NotAnnounced.
        agent_apply("node-b", "Secondary", false, "AwaitingRouteServers").await;
        env.eventually_condition("web", "Ready", "False", "AwaitingRouteServers")
            .await;
        // Handing over while still announcing: Ready stays True, with the handover's reason.
        agent_apply("node-a", "Primary", true, "HandingOver").await;
        env.eventually_condition("web", "Ready", "True", "HandoverInProgress")
            .await;
    })
    .await;
}

/// A label flapping at 5 Hz for 10 s costs a few share calls, not one per flap; a single
/// relabel is not delayed by the damping.
#[tokio::test]
async fn flapping_label_is_damped_and_single_relabel_is_not() {
    bounded(async {
        let env = Env::start().await;
        env.add_node("node-a", &[("role", "primary")], Some(101))
            .await;
        env.add_node("node-b", &[("role", "secondary")], Some(102))
            .await;
        env.add_node("node-c", &[("pool", "other")], Some(103))
            .await;
        // A hold-down far longer than a wave: a change that goes out before it has passed was
        // not held.
        let hold_down = Duration::from_secs(30);
        let mut settings = fast_settings("in-process");
        settings.reconcile.membership_hold_down = hold_down;
        let _op = env.spawn_operator_with(settings);
        env.apply_sharedip("web", spec("192.0.2.10")).await;
        env.eventually_shared("192.0.2.10", &[101, 102]).await;
        env.eventually_condition("web", "Shared", "True", "Shared")
            .await;

        // A single relabel of a quiet node goes out at once: one call, no hold.
        env.set_role("node-c", Some("secondary")).await;
        within(hold_down / 2, "node-c's relabel shared", || async {
            let got = env.shared("192.0.2.10");
            if got == [101, 102, 103].into() {
                Ok(())
            } else {
                Err(format!("shared with {got:?}"))
            }
        })
        .await;
        assert_eq!(env.share_calls_for(103), 1);
        let msg = env
            .eventually_condition("web", "Shared", "True", "Shared")
            .await;
        assert!(
            !shared_message(&msg).contains("held"),
            "{}",
            shared_message(&msg)
        );

        // node-b's role label flaps at 5 Hz for 10 s: 50 changes, ending where it started.
        let calls_before = env.standin.request_log().share_calls().len();
        let b_before = env.share_calls_for(102);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        for i in 1..=50 {
            tick.tick().await;
            let role = (i % 2 == 0).then_some("secondary");
            env.set_role("node-b", role).await;
        }
        // Held: the status says so, with an event on the node.
        let held = "membership of node node-b held for 30s (flapping)";
        eventually("the hold reported in status", || async {
            let s = env.get("web").await.ok_or("missing")?;
            let m = shared_message(&s);
            if m.contains(held) {
                Ok(())
            } else {
                Err(m)
            }
        })
        .await;
        let reasons = env.event_reasons("web").await;
        assert!(
            reasons
                .iter()
                .any(|(r, n)| r == "NodeMembershipHeld" && n.contains("node-b")),
            "{reasons:?}"
        );
        // Settled: released after the hold-down, back to its place.
        env.eventually_shared("192.0.2.10", &[101, 102, 103]).await;
        eventually("the hold released", || async {
            let s = env.get("web").await.ok_or("missing")?;
            let m = shared_message(&s);
            if m.contains("held") {
                Err(m)
            } else {
                Ok(())
            }
        })
        .await;
        let b_calls = env.share_calls_for(102) - b_before;
        let all_calls = env.standin.request_log().share_calls().len() - calls_before;
        eprintln!(
            "share calls during and after the flapping: Linode 102 {b_calls}, all {all_calls}"
        );
        assert!(b_calls <= 4, "{b_calls} share calls on node-b's Linode");
        assert!(all_calls <= 4, "{all_calls} share calls in all");
        env.eventually_condition("web", "Shared", "True", "Shared")
            .await;
    })
    .await;
}

/// A node held for flapping labels still gets its Linode at once: only label changes are
/// held, never a providerID arriving in the same update.
#[tokio::test]
async fn a_held_node_that_gets_its_linode_is_not_held() {
    bounded(async {
        let env = Env::start().await;
        env.add_node("node-a", &[("role", "primary")], Some(101))
            .await;
        // No providerID yet (the cloud controller has not initialised it), no role yet.
        env.add_node("node-b", &[("pool", "b")], None).await;
        let hold_down = Duration::from_secs(60);
        let mut settings = fast_settings("in-process");
        settings.reconcile.membership_hold_down = hold_down;
        let _op = env.spawn_operator_with(settings);
        env.apply_sharedip("web", spec("192.0.2.10")).await;
        env.eventually_shared("192.0.2.10", &[101]).await;
        // Labelled secondary (applied at once), then unlabelled right after: node-b is held at
        // secondary.
        env.set_role("node-b", Some("secondary")).await;
        env.set_role("node-b", None).await;
        eventually("node-b held", || async {
            let s = env.get("web").await.ok_or("missing")?;
            let m = shared_message(&s);
            if m.contains("node node-b held") {
                Ok(())
            } else {
                Err(m)
            }
        })
        .await;
        // Let the reconciles that the hold itself caused (its status write) finish, so that
        // only the Node update below can start the next one.
        tokio::time::sleep(Duration::from_secs(3)).await;
        // One update changes its labels again (held) and gives it its Linode (never held):
        // shared there well before the hold-down ends.
        let patch = json!({
            "metadata": {"labels": {"role": "secondary"}},
            "spec": {"providerID": "linode://102"},
        });
        kube::Api::<k8s_openapi::api::core::v1::Node>::all(env.client())
            .patch(
                "node-b",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .expect("patch node-b");
        within(hold_down / 2, "node-b's Linode shared", || async {
            let got = env.shared("192.0.2.10");
            if got == [101, 102].into() {
                Ok(())
            } else {
                Err(format!("shared with {got:?}"))
            }
        })
        .await;
    })
    .await;
}

/// A token file fixed while the operator waits out a backoff is used at once.
#[tokio::test]
async fn corrected_token_file_is_used_at_once() {
    bounded(async {
        let env = Env::start().await;
        env.add_node("node-a", &[("role", "primary")], Some(101))
            .await;
        env.add_node("node-b", &[("role", "secondary")], Some(102))
            .await;
        env.write_token("not-the-right-token");
        // After the first failure, the next retry would come in 120 s.
        let backoff = Duration::from_secs(120);
        let mut settings = fast_settings("in-process");
        settings.reconcile.backoff_base = backoff;
        settings.reconcile.backoff_max = backoff;
        let linode = env.linode_client_from_file();
        settings.token_changes = linode.token_source().watch(Duration::from_secs(1)).await;
        let _op = env.spawn_operator_on(settings, std::sync::Arc::new(linode));
        env.apply_sharedip("web", spec("192.0.2.10")).await;
        let s = env
            .eventually_condition("web", "Ready", "False", "LinodeTokenError")
            .await;
        let msg = ready_message(&s);
        assert!(
            msg.contains("HTTP 401") && msg.contains("Invalid Token"),
            "{msg}"
        );
        eventually("a Warning event for the token", || async {
            let r = env.event_reasons("web").await;
            if r.iter()
                .any(|(reason, note)| reason == "LinodeTokenError" && note.contains("401"))
            {
                Ok(())
            } else {
                Err(format!("{r:?}"))
            }
        })
        .await;

        env.write_token(TOKEN);
        within(backoff / 4, "shared once the token is fixed", || async {
            let got = env.shared("192.0.2.10");
            if got == [101, 102].into() {
                Ok(())
            } else {
                Err(format!("shared with {got:?}"))
            }
        })
        .await;
        env.eventually_condition("web", "Shared", "True", "Shared")
            .await;
    })
    .await;
}

/// Account-read failures, an address outside the account and a duplicate address each leave a
/// Warning event; deleting the SharedIP that holds an address hands it to its duplicate at
/// once.
#[tokio::test]
async fn blocked_sharedips_warn_and_duplicates_take_over_at_once() {
    bounded(async {
        let env = Env::start().await;
        env.add_node("node-a", &[("role", "primary")], Some(101))
            .await;
        env.add_node("node-b", &[("role", "secondary")], Some(102))
            .await;
        // A blocked SharedIP is retried only every 300 s.
        let retry = Duration::from_secs(300);
        let mut settings = fast_settings("in-process");
        settings.reconcile.blocked_retry = retry;
        let _op = env.spawn_operator_with(settings);

        // Listing the account fails (5 attempts: the client's retries, then the reconcile's).
        env.standin
            .faults()
            .inject(
                FaultRule::server_error(5, 503)
                    .method("GET")
                    .path_prefix("/networking/ips"),
            )
            .expect("fault");
        env.apply_sharedip("missing", spec("192.0.2.99")).await;
        let warned = |name: &'static str, reason: &'static str, text: &'static str| {
            let env = &env;
            async move {
                eventually(&format!("Warning {reason} on {name}"), || async {
                    let r = env.event_reasons(name).await;
                    if r.iter()
                        .any(|(re, note)| re == reason && note.contains(text))
                    {
                        Ok(())
                    } else {
                        Err(format!("{r:?}"))
                    }
                })
                .await
            }
        };
        warned("missing", "LinodeAPIError", "cannot read the account").await;
        env.eventually_condition("missing", "Ready", "False", "AddressNotInAccount")
            .await;
        warned("missing", "AddressNotInAccount", "192.0.2.99").await;

        env.apply_sharedip("web", spec("192.0.2.10")).await;
        env.eventually_shared("192.0.2.10", &[101, 102]).await;
        env.eventually_condition("web", "Shared", "True", "Shared")
            .await;
        env.apply_sharedip(
            "web-copy",
            json!({
                "address": "192.0.2.10",
                "primary": {"nodeSelector": {"matchLabels": {"role": "secondary"}}},
            }),
        )
        .await;
        env.eventually_condition("web-copy", "Ready", "False", "DuplicateAddress")
            .await;
        warned(
            "web-copy",
            "DuplicateAddress",
            "already managed by SharedIP \"web\"",
        )
        .await;

        env.delete_sharedip("web").await;
        within(retry / 10, "web-copy takes the address over", || async {
            let s = env.get("web-copy").await.ok_or("missing")?;
            let shared = s
                .status
                .as_ref()
                .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Shared"))
                .map(|c| (c.status.clone(), c.reason.clone()));
            let linodes = env.shared("192.0.2.10");
            if shared == Some(("True".into(), "Shared".into())) && linodes == [102].into() {
                Ok(())
            } else {
                Err(format!("Shared {shared:?}, shared with {linodes:?}"))
            }
        })
        .await;
    })
    .await;
}

fn shared_message(s: &sharedip_api::SharedIP) -> String {
    s.status
        .as_ref()
        .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Shared"))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

fn ready_message(s: &sharedip_api::SharedIP) -> String {
    s.status
        .as_ref()
        .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// The CRD as it was before it validated selectors: every CEL rule and enum removed, so the
/// apiserver stores what the current CRD refuses (an object that predates the upgrade).
fn crd_without_rules(dir: &std::path::Path) {
    fn strip(v: &mut serde_yaml::Value) {
        match v {
            serde_yaml::Value::Mapping(m) => {
                m.remove("x-kubernetes-validations");
                m.remove("enum");
                for (_, v) in m.iter_mut() {
                    strip(v);
                }
            }
            serde_yaml::Value::Sequence(s) => s.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let src =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/sharedip.io_sharedips.yaml");
    let mut crd: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(src).expect("CRD")).expect("CRD YAML");
    strip(&mut crd);
    std::fs::write(
        dir.join("sharedip.io_sharedips.yaml"),
        serde_yaml::to_string(&crd).expect("YAML"),
    )
    .expect("write CRD");
}

#[tokio::test]
async fn a_selector_stored_before_the_crd_refused_it_keeps_the_address_shared() {
    bounded(async {
        let env = Env::start_without_crds(SEED).await;
        let old = tempfile::tempdir().expect("temp dir");
        crd_without_rules(old.path());
        env.cp
            .apply_crds(old.path())
            .await
            .expect("old CRD applies");
        env.add_node("node-a", &[("role", "primary")], Some(101))
            .await;
        env.add_node("node-b", &[("role", "secondary")], Some(102))
            .await;
        let _op = env.spawn_operator();
        env.apply_sharedip("web", spec("192.0.2.10")).await;
        env.eventually_shared("192.0.2.10", &[101, 102]).await;
        // `NotIn` with no values: kube-rs matched every node with it; the CRD now refuses it.
        env.apply_sharedip(
            "web",
            json!({
                "address": "192.0.2.10",
                "primary": {"nodeSelector": {"matchExpressions": [
                    {"key": "role", "operator": "NotIn", "values": []}
                ]}},
                "secondary": {"nodeSelector": {"matchLabels": {"role": "secondary"}}},
            }),
        )
        .await;
        env.eventually_condition("web", "Shared", "False", "InvalidSpec")
            .await;
        // Reported, and nothing taken away from the nodes that carry the traffic (the operator
        // releases before it writes the status, so any unshare would be done by now).
        assert_eq!(
            env.shared("192.0.2.10"),
            [101, 102].into_iter().collect(),
            "the address stays shared"
        );
    })
    .await;
}

/// Writes `node`'s agent entry into the SharedIP "web", as its agent does.
async fn agent_entry(env: &Env, node: &str, role: &str, announcing: bool, why: &str) {
    let patch = json!({
        "apiVersion": "sharedip.io/v1alpha1",
        "kind": "SharedIP",
        "status": {"nodes": [{
            "name": node, "role": role, "announcing": announcing, "reason": why,
            "sessionsEstablished": 4, "sessionsTotal": 4,
        }]},
    });
    env.sharedips()
        .patch_status(
            "web",
            &kube::api::PatchParams::apply(&format!("sharedip-node-agent/{node}")).force(),
            &kube::api::Patch::Apply(&patch),
        )
        .await
        .expect("agent status apply");
}

/// `status.sharedWith` of "web": Linode → (node, since).
async fn shared_with(env: &Env) -> std::collections::BTreeMap<i64, (String, Option<String>)> {
    env.get("web")
        .await
        .and_then(|s| s.status)
        .unwrap_or_default()
        .shared_with
        .into_iter()
        .map(|s| {
            let since = s.since.map(|t| t.0.to_string());
            (s.linode_id, (s.node, since))
        })
        .collect()
}

/// A deselected node whose agent still announces keeps its share until the agent reports it
/// withdrew (the status change alone triggers the reconcile that removes it), or until the
/// wait's bound; `since` dates each share and survives reconciles and an operator restart.
#[tokio::test]
async fn a_deselected_node_keeps_its_share_until_its_agent_withdraws() {
    bounded(async {
        let env = Env::start().await;
        env.add_node("node-a", &[("role", "primary")], Some(101))
            .await;
        env.add_node("node-b", &[("role", "secondary")], Some(102))
            .await;
        // Neither the bound nor the resync can release the share within the test's waits:
        // only the reconcile an agent's status change triggers can.
        let mut settings = fast_settings("in-process");
        settings.reconcile.unshare_after_withdraw_timeout = Duration::from_secs(600);
        settings.reconcile.membership_hold_down = Duration::ZERO;
        let op = env.spawn_operator_with(settings.clone());
        env.apply_sharedip("web", spec("192.0.2.10")).await;
        env.eventually_shared("192.0.2.10", &[101, 102]).await;
        eventually("sharedWith dated", || async {
            let w = shared_with(&env).await;
            if w.len() == 2 && w.values().all(|(_, s)| s.is_some()) {
                Ok(())
            } else {
                Err(format!("{w:?}"))
            }
        })
        .await;
        let first = shared_with(&env).await;
        agent_entry(&env, "node-b", "Secondary", true, "Announced").await;

        env.set_role("node-b", None).await;
        eventually("node-b deselected in status", || async {
            let s = env
                .get("web")
                .await
                .and_then(|s| s.status)
                .unwrap_or_default();
            match s.secondary {
                None => Ok(()),
                Some(n) => Err(format!("secondary = {n}")),
            }
        })
        .await;
        assert_eq!(
            env.shared("192.0.2.10"),
            [101, 102].into(),
            "kept while node-b's agent announces"
        );
        assert_eq!(
            shared_with(&env).await,
            first,
            "kept share stays in the status"
        );

        agent_entry(&env, "node-b", "Secondary", false, "NotSelected").await;
        env.eventually_shared("192.0.2.10", &[101]).await;
        let reasons = env.event_reasons("web").await;
        assert!(
            reasons
                .iter()
                .any(|(r, n)| r == "Unshared" && n.contains("Linode 102")),
            "{reasons:?}"
        );

        // A new operator carries `since` over from the status; a new share gets its own.
        op.stop().await;
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        settings.reconcile.unshare_after_withdraw_timeout = Duration::from_secs(2);
        let _op = env.spawn_operator_with(settings);
        env.add_node("node-c", &[("role", "secondary")], Some(103))
            .await;
        env.eventually_shared("192.0.2.10", &[101, 103]).await;
        eventually("node-c in sharedWith", || async {
            let w = shared_with(&env).await;
            if w.contains_key(&103) {
                Ok(())
            } else {
                Err(format!("{w:?}"))
            }
        })
        .await;
        let now = shared_with(&env).await;
        assert_eq!(now[&101], first[&101], "since kept across the restart");
        let c_since = now[&103].1.clone().expect("dated");
        assert!(c_since > first[&101].1.clone().expect("dated"), "{now:?}");

        // An agent that never reports its withdrawal keeps the share only for the bound.
        agent_entry(&env, "node-c", "Secondary", true, "Announced").await;
        env.set_role("node-c", None).await;
        env.eventually_shared("192.0.2.10", &[101]).await;
    })
    .await;
}
