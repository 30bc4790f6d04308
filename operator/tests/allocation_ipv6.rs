//! Allocated IPv6 ranges against a real kube-apiserver and the Linode API stand-in: the
//! region's one range is created on the IP holder and shared; a range the account already has
//! elsewhere, in use or of another size is refused with a clear condition; deletion unshares
//! and deletes the range, and keeps the SharedIP while Linode refuses.

// Test code: a panic is a failed test, and a scenario reads best in one piece.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod support;

use std::net::Ipv6Addr;
use std::time::Duration;

use serde_json::{json, Value};
use support::alloc::*;
use support::*;

/// Two nodes' Linodes in the region, and a Linode outside the cluster with the region's only
/// IPv6 range (so the first IPv6 SharedIP finds the range taken). No IP holder yet.
const SEED_V6: &str = r#"
linodes:
  - {id: 101, label: node-a, region: us-east}
  - {id: 102, label: node-b, region: us-east}
  - {id: 105, label: outsider, region: us-east}
ipv6_ranges:
  - {range: "2001:db8:9:9::/64", linode_id: 105}
"#;

fn v6_spec(extra: Value) -> Value {
    let mut spec = allocated_spec(extra);
    spec["family"] = json!("IPv6");
    spec
}

/// The account's ranges in the region: base → (prefix, owner).
fn ranges(env: &Env) -> Vec<(String, u8, u64)> {
    let sharing = env.standin.sharing();
    let mut out: Vec<(String, u8, u64)> = sharing
        .ips
        .iter()
        .filter(|(ip, i)| ip.contains(':') && i.region == REGION)
        .map(|(ip, i)| (ip.clone(), i.prefix, i.owner))
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn ranges_are_created_on_the_holder_refused_when_taken_and_deleted_with_the_sharedip() {
    tokio::time::timeout(Duration::from_secs(300), async {
        let env = Env::start_with_seed(SEED_V6).await;
        env.add_node("node-a", &[("role", "edge")], Some(101)).await;
        env.add_node("node-b", &[("role", "edge")], Some(102)).await;
        let _op = env.spawn_operator();
        let linode = env.linode_client();

        // The region's range is routed to a Linode that is not the holder: said, not taken.
        env.apply_sharedip("six", v6_spec(json!({}))).await;
        let six = env
            .eventually_condition("six", "Shared", "False", "IPv6RangeUnavailable")
            .await;
        let m = condition(&six, "Shared").1;
        assert!(
            m.contains("2001:db8:9:9::/64") && m.contains("routed to Linode 105"),
            "{m}"
        );
        assert_eq!(env.standin.counters().ranges_created, 0);

        // Once it is gone, the SharedIP's range is created on the holder and shared.
        linode
            .delete_ipv6_range("2001:db8:9:9::".parse().unwrap())
            .await
            .unwrap();
        let address = eventually_allocated(&env, "six").await;
        let holder = the_holder(&env, HOLDER_LABEL);
        let listed = ranges(&env);
        assert_eq!(listed.len(), 1, "{listed:?}");
        let (base, prefix, owner) = listed[0].clone();
        assert_eq!((prefix, owner), (64, holder), "{listed:?}");
        let base: Ipv6Addr = base.parse().unwrap();
        let bound = Ipv6Addr::from(u128::from(base) | 1);
        assert_eq!(address, bound.to_string(), "the range's ::1 is the address");
        assert_eq!(env.standin.counters().ranges_created, 1);
        env.eventually_shared(&base.to_string(), &[101, 102]).await;
        eventually("six's status says /64", || async {
            let prefix = env
                .get("six")
                .await
                .and_then(|s| s.status)
                .and_then(|s| s.prefix);
            (prefix == Some(64))
                .then_some(())
                .ok_or(format!("prefix {prefix:?}"))
        })
        .await;

        // Linode allows one range per region: a second IPv6 SharedIP is refused.
        env.apply_sharedip("second", v6_spec(json!({}))).await;
        let second = env
            .eventually_condition("second", "Shared", "False", "IPv6RangeUnavailable")
            .await;
        let m = condition(&second, "Shared").1;
        assert!(m.contains("used by another SharedIP"), "{m}");
        assert!(second.spec.allocated_address.is_none());
        delete_until_gone(&env, "second").await;

        // Shared outside the operator with a Linode of no node: Linode refuses to delete the
        // range, and the SharedIP stays with its finalizer and Linode's reason.
        env.standin
            .state()
            .share(105, &[base.to_string().as_str()])
            .unwrap();
        env.delete_sharedip("six").await;
        let six = env
            .eventually_condition("six", "Shared", "False", "ReleaseFailed")
            .await;
        let m = condition(&six, "Shared").1;
        assert!(m.contains("Shared IPv6 ranges cannot be deleted"), "{m}");
        assert!(six.metadata.deletion_timestamp.is_some());
        assert_eq!(
            env.shared(&base.to_string())
                .into_iter()
                .collect::<Vec<_>>(),
            vec![105]
        );
        assert_eq!(
            env.standin.counters().ranges_deleted,
            1,
            "only the outsider's"
        );

        // Unshared by hand: the retry deletes the range and lets the SharedIP go.
        env.standin.state().share(105, &[]).unwrap();
        eventually_gone(&env, "six").await;
        assert!(ranges(&env).is_empty(), "{:?}", ranges(&env));
        assert_eq!(env.standin.counters().ranges_deleted, 2);
        let reasons = env.event_reasons("six").await;
        assert!(
            reasons.iter().any(|(r, _)| r == "AddressReleased"),
            "{reasons:?}"
        );

        // A /64 range unclaimed on the holder: a SharedIP wanting a /56 is told to set
        // spec.prefix, and nothing is created.
        linode
            .create_ipv6_range(holder, linode_client::Ipv6Prefix::Len64)
            .await
            .unwrap();
        env.apply_sharedip("wide", v6_spec(json!({"prefix": 56})))
            .await;
        let wide = env
            .eventually_condition("wide", "Shared", "False", "IPv6RangeUnavailable")
            .await;
        let m = condition(&wide, "Shared").1;
        assert!(
            m.contains("asks for a /56") && m.contains("set spec.prefix to 64"),
            "{m}"
        );
        assert_eq!(
            env.standin.counters().ranges_created,
            2,
            "the hand-made one only"
        );
    })
    .await
    .expect("bounded");
}
