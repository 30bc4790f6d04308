//! `--experimental-reserved-ips` against a real kube-apiserver and the Linode API stand-in: an
//! IPv4 allocation is a reservation tagged with the cluster, assigned to the IP holder and
//! shared; an assignment that fails after the reservation is recovered without a second one;
//! Delete gives it up, Retain keeps it; an account without access gets a clear refusal and no
//! other address; without the flag no reserved-IP call is made.

// Test code: a panic is a failed test, and a scenario reads best in one piece.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod support;

use std::time::Duration;

use kube::ResourceExt;
use serde_json::json;
use sharedip_api::ALLOCATION_INTENT_ANNOTATION;
use sharedip_e2e::standin::{AllocationKnobs, FaultRule, RESERVED_IPS_DENIED_REASON};
use support::alloc::*;
use support::*;

const TAG: &str = "sharedip-cluster:test-cluster";

/// The account's reservations as the client lists them: (address, Linode, tags).
async fn reservations(env: &Env) -> Vec<(String, Option<u64>, Vec<String>)> {
    env.linode_client()
        .list_reserved_ips()
        .await
        .expect("list reserved IPs")
        .into_iter()
        .map(|r| (r.address.to_string(), r.linode_id, r.tags))
        .collect()
}

/// Requests to any reserved-IP endpoint, whatever their status.
fn reserved_calls(env: &Env) -> u64 {
    env.standin
        .request_log()
        .counts()
        .iter()
        .filter(|c| c.template.starts_with("/networking/reserved"))
        .map(|c| c.count)
        .sum()
}

#[tokio::test]
async fn with_the_flag_addresses_are_reservations_refused_clearly_without_access() {
    tokio::time::timeout(Duration::from_secs(240), async {
        let env = edge_env(SEED).await;
        let denied = AllocationKnobs {
            reserved_ips_denied: true,
            ..Default::default()
        };
        env.standin.faults().set_allocation(denied).unwrap();
        let mut settings = fast_settings("reserved");
        settings.holders.reserved_ips = true;
        let _op = env.spawn_operator_with(settings);

        // No access: Linode's reason, and no ordinary address instead.
        env.apply_sharedip("web", allocated_spec(json!({}))).await;
        let sip = env
            .eventually_condition("web", "Shared", "False", "AllocationRefused")
            .await;
        let (_, message) = condition(&sip, "Shared");
        assert!(message.contains(RESERVED_IPS_DENIED_REASON), "{message}");
        assert!(message.contains("reserved IPv4"), "{message}");
        assert_eq!(env.get("web").await.unwrap().spec.allocated_address, None);
        let c = env.standin.counters();
        assert_eq!((c.ipv4_allocated, c.ipv4_reserved), (0, 0), "{c:?}");
        // The refused calls are seen under the templates the test without the flag checks.
        assert!(reserved_calls(&env) > 0);

        // Access granted: after the region's wait the address is reserved, tagged with the
        // cluster, assigned to the holder and shared.
        env.standin
            .faults()
            .set_allocation(AllocationKnobs::default())
            .unwrap();
        let web = eventually_allocated(&env, "web").await;
        let holder = the_holder(&env, HOLDER_LABEL);
        assert_eq!(owner_of(&env, &web), Some(holder), "{web} on the holder");
        env.eventually_shared(&web, &[101]).await;
        assert_eq!(
            reservations(&env).await,
            vec![(web.clone(), Some(holder), vec![TAG.to_string()])]
        );
        let c = env.standin.counters();
        assert_eq!(
            (c.ipv4_reserved, c.ips_assigned, c.ipv4_allocated),
            (1, 1, 0),
            "{c:?}"
        );
        assert_eq!(
            env.get("web")
                .await
                .unwrap()
                .annotations()
                .get(ALLOCATION_INTENT_ANNOTATION),
            None,
            "the intent is dropped with the address"
        );

        // An assignment that fails after the reservation is recovered from the intent: the
        // reservation is assigned and adopted, never made twice. Retain keeps it on the
        // holder.
        let failing = FaultRule::server_error(5, 503)
            .method("POST")
            .path_prefix("/networking/ips/assign");
        env.standin.faults().inject(failing).unwrap();
        env.apply_sharedip("api", allocated_spec(json!({"reclaimPolicy": "Retain"})))
            .await;
        let api = eventually_allocated(&env, "api").await;
        let log = env.standin.request_log();
        assert_eq!(log.count_status("POST", "/networking/ips/assign", 503), 5);
        let c = env.standin.counters();
        assert_eq!((c.ipv4_reserved, c.ips_assigned), (2, 2), "{c:?}");
        assert_eq!(owner_of(&env, &api), Some(holder), "{api} on the holder");
        env.eventually_shared(&api, &[101]).await;
        delete_until_gone(&env, "api").await;
        assert_eq!(owner_of(&env, &api), Some(holder), "{api} kept");
        assert!(reservations(&env).await.iter().any(|r| r.0 == api));

        // Delete gives the reservation up and the address back.
        delete_until_gone(&env, "web").await;
        assert_eq!(owner_of(&env, &web), None, "{web} given back");
        let left: Vec<String> = reservations(&env).await.into_iter().map(|r| r.0).collect();
        assert_eq!(left, vec![api.clone()]);
        let c = env.standin.counters();
        assert_eq!(
            (c.ipv4_reserved, c.ipv4_released, c.ipv4_deleted),
            (2, 1, 1),
            "{c:?}"
        );
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn without_the_flag_no_reserved_ip_call_is_made() {
    tokio::time::timeout(Duration::from_secs(180), async {
        let env = edge_env(SEED).await;
        let _op = env.spawn_operator();

        env.apply_sharedip("web", allocated_spec(json!({}))).await;
        let web = eventually_allocated(&env, "web").await;
        env.eventually_shared(&web, &[101]).await;
        delete_until_gone(&env, "web").await;
        let c = env.standin.counters();
        assert_eq!(
            (c.ipv4_allocated, c.ipv4_deleted, c.ipv4_reserved),
            (1, 1, 0),
            "{c:?}"
        );
        assert_eq!(
            reserved_calls(&env),
            0,
            "{:?}",
            env.standin.request_log().counts()
        );
    })
    .await
    .expect("bounded");
}
