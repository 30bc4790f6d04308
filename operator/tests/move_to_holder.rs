//! `spec.moveToHolder` against a real kube-apiserver and the Linode API stand-in: an address a
//! node's Linode owns stays there (with a warning) until the SharedIP consents, then the
//! operator unshares it, assigns it to the IP holder and shares it again, in an order Linode
//! accepts (it refuses to move a shared address).

// Test code: a panic is a failed test, and a scenario reads best in one piece.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::alloc::*;
use support::*;

/// Owned by Linode 101 (node-a) in the default seed.
const ADDRESS: &str = "192.0.2.12";
const ASSIGN: &str = "/networking/ips/assign";

#[tokio::test]
async fn an_address_a_node_owns_moves_to_the_holder_only_when_asked() {
    tokio::time::timeout(Duration::from_secs(300), async {
        let env = Env::start().await;
        env.add_node("node-a", &[("role", "primary")], Some(101))
            .await;
        env.add_node("node-b", &[("role", "secondary")], Some(102))
            .await;
        let _op = env.spawn_operator();

        // Without the field: shared with the other node, owner kept, a warning.
        env.apply_sharedip("edge", spec(ADDRESS)).await;
        env.eventually_shared(ADDRESS, &[102]).await;
        let reasons = env.event_reasons("edge").await;
        assert!(
            reasons
                .iter()
                .any(|(r, n)| r == "OwnerIsSelectedNode" && n.contains("moveToHolder")),
            "{reasons:?}"
        );
        assert_eq!(owner_of(&env, ADDRESS), Some(101));
        assert_eq!(holder_id(&env), None, "no holder without a reason for one");

        // What the operator must avoid: Linode refuses to move a shared address.
        let refused = env
            .linode_client()
            .assign_ips(REGION, &[(ADDRESS.to_string(), 103)])
            .await
            .unwrap_err();
        assert!(
            refused.to_string().contains("cannot be swapped"),
            "{refused}"
        );
        assert_eq!(
            env.standin.request_log().count_status("POST", ASSIGN, 400),
            1
        );

        // With it: unshared, assigned to the holder, shared with both nodes.
        let mut with_move = spec(ADDRESS);
        with_move["moveToHolder"] = json!("AcceptOutage");
        env.apply_sharedip("edge", with_move).await;
        eventually("the address on the holder", || async {
            match (owner_of(&env, ADDRESS), holder_id(&env)) {
                (Some(o), Some(h)) if o == h => Ok(()),
                other => Err(format!("owner, holder: {other:?}")),
            }
        })
        .await;
        let holder = holder_id(&env).unwrap();
        env.eventually_shared(ADDRESS, &[101, 102]).await;
        let sip = env
            .eventually_condition("edge", "Shared", "True", "Shared")
            .await;
        let owner = sip.status.and_then(|s| s.owner).unwrap();
        assert_eq!((owner.linode_id, owner.node), (holder as i64, None));

        // The operator's one assign call was accepted: the sequence unshared first.
        let log = env.standin.request_log();
        assert_eq!(
            log.count_status("POST", ASSIGN, 400),
            1,
            "only the hand-made one"
        );
        assert_eq!(log.count_status("POST", ASSIGN, 200), 1);
        assert_eq!(env.standin.counters().ips_assigned, 1);
        let moves: Vec<String> = env
            .event_reasons("edge")
            .await
            .into_iter()
            .filter(|(r, _)| r == "MovingToHolder")
            .map(|(_, n)| n)
            .collect();
        assert_eq!(moves.len(), 3, "{moves:?}");
        for step in ["unshared", "assigned", "shared"] {
            assert!(
                moves.iter().any(|n| n.starts_with(step)),
                "{step}: {moves:?}"
            );
        }

        // Settled: further reconciles do not move or unshare it again.
        env.set_role("node-b", Some("primary")).await;
        env.eventually_shared(ADDRESS, &[101, 102]).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(env.standin.counters().ips_assigned, 1);
        assert_eq!(env.shared(ADDRESS).len(), 2);
    })
    .await
    .expect("bounded");
}
