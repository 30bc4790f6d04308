//! Allocated addresses against a real kube-apiserver and the Linode API stand-in: a SharedIP
//! without `spec.address` gets an address on an IP holder the operator creates, shares it,
//! gives it back or keeps it when deleted, and takes a retained address back by name.

// Test code: a panic is a failed test, and a scenario reads best in one piece.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod support;

use serde_json::json;
use support::alloc::*;
use support::*;

#[tokio::test]
async fn allocates_on_a_created_holder_then_deletes_or_retains_and_takes_back_by_name() {
    tokio::time::timeout(std::time::Duration::from_secs(240), async {
        let env = edge_env(SEED).await;
        let _op = env.spawn_operator();

        env.apply_sharedip("web", allocated_spec(json!({}))).await;
        let web = eventually_allocated(&env, "web").await;
        let holders = labelled_linodes(&env, HOLDER_LABEL);
        assert_eq!(holders.len(), 1, "one holder: {holders:?}");
        let (holder, status, region) = holders[0].clone();
        assert_eq!((status.as_str(), region.as_str()), ("offline", "us-east"));
        assert_eq!(owner_of(&env, &web), Some(holder), "{web} is on the holder");
        env.eventually_shared(&web, &[101]).await;
        // The status follows the share in the operator's turn, not before it.
        eventually("web's status names its address", || async {
            let sip = env
                .get("web")
                .await
                .ok_or_else(|| "web is gone".to_owned())?;
            match sip.status.and_then(|s| s.address) {
                Some(a) if a == web => Ok(()),
                other => Err(format!("status address {other:?}")),
            }
        })
        .await;

        // A second SharedIP gets another address on the same holder; the Retain one is kept.
        env.apply_sharedip("api", allocated_spec(json!({"reclaimPolicy": "Retain"})))
            .await;
        let api = eventually_allocated(&env, "api").await;
        assert_ne!(api, web);
        assert_eq!(owner_of(&env, &api), Some(holder));
        env.eventually_shared(&api, &[101]).await;
        let c = env.standin.counters();
        assert_eq!((c.linodes_created, c.ipv4_allocated), (1, 2), "{c:?}");

        // Delete (the default) gives the address back once it is unshared.
        delete_until_gone(&env, "web").await;
        assert_eq!(owner_of(&env, &web), None, "{web} given back");
        assert_eq!(env.standin.counters().ipv4_deleted, 1);

        // Retain keeps it on the holder and lists it under the SharedIP's name.
        delete_until_gone(&env, "api").await;
        assert_eq!(
            owner_of(&env, &api),
            Some(holder),
            "{api} kept on the holder"
        );
        assert!(env.shared(&api).is_empty(), "{api} unshared");
        let listed = retained_list(&env).await;
        assert!(
            listed.get("api").is_some_and(|e| e.contains(&api)),
            "{listed:?}"
        );

        // Re-applying the same object takes the retained address back; nothing is allocated.
        env.apply_sharedip("api", allocated_spec(json!({"reclaimPolicy": "Retain"})))
            .await;
        assert_eq!(eventually_allocated(&env, "api").await, api);
        env.eventually_shared(&api, &[101]).await;
        assert!(!retained_list(&env).await.contains_key("api"));
        let c = env.standin.counters();
        assert_eq!(
            (c.linodes_created, c.ipv4_allocated, c.ipv4_deleted),
            (1, 2, 1),
            "{c:?}"
        );
        assert_eq!(labelled(&env, HOLDER_LABEL).len(), 1);
    })
    .await
    .expect("bounded");
}
