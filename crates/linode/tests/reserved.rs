//! The experimental reserved-IP calls against the Linode API stand-in: reserve, list, delete,
//! keep-on-Linode-delete, the access refusal, and which of them the client repeats.

// Test code: a panic is a failed test, and a scenario reads best in one piece.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use linode_client::{endpoints, Error, RESERVED_IPS_DENIED_REASON};
use sharedip_e2e::standin::{
    AllocationKnobs, FaultRule, Seed, StandInHandle, RESERVED_IPV4_LIMIT_REASON,
};

mod holder_standin;

use holder_standin::*;

/// Puts reserved address `addr` on Linode `linode_id` (us-east) through a seed.
fn assign(s: &StandInHandle, addr: Ipv4Addr, linode_id: u64) {
    let yaml = format!("ipv4: [{{address: {addr}, linode_id: {linode_id}}}]");
    let seed = Seed::from_str(&yaml, Path::new("assign")).unwrap();
    s.state().apply_seed(&seed).unwrap();
}

#[tokio::test]
async fn reserves_lists_and_deletes_and_a_reservation_outlives_its_linode() {
    bounded(async {
        let s = standin().await;
        let c = client(&s);
        assert!(c.list_reserved_ips().await.unwrap().is_empty());

        let r = c.reserve_ipv4("us-east", &["sharedip"]).await.unwrap();
        assert_eq!(
            (r.region.as_str(), r.tags.as_slice()),
            ("us-east", &["sharedip".to_owned()][..])
        );
        assert_eq!((r.linode_id, &r.assigned_entity), (None, &None));
        assert_eq!(s.counters().ipv4_reserved, 1);
        assert_eq!(c.list_reserved_ips().await.unwrap(), vec![r.clone()]);

        assign(&s, r.address, HOLDER);
        let ip = c.get_ip(IpAddr::V4(r.address)).await.unwrap();
        assert!(ip.reserved, "{ip:?}");
        assert_eq!(ip.linode_id, Some(HOLDER));
        assert!(!c.get_ip(IpAddr::V4(HOLDER_IPV4)).await.unwrap().reserved);
        let listed = c.list_reserved_ips().await.unwrap();
        assert_eq!(listed[0].linode_id, Some(HOLDER));
        let entity = listed[0].assigned_entity.clone().unwrap();
        assert_eq!(
            (
                entity.id,
                entity.entity_type.as_str(),
                entity.label.as_str()
            ),
            (HOLDER, "linode", "holder")
        );

        c.delete_linode(HOLDER).await.unwrap();
        let listed = c.list_reserved_ips().await.unwrap();
        assert_eq!(listed.len(), 1, "kept when its Linode went");
        assert_eq!((listed[0].address, listed[0].linode_id), (r.address, None));
        // Listed with the account's addresses too, on no Linode.
        let ip = c.get_ip(IpAddr::V4(r.address)).await.unwrap();
        assert_eq!((ip.reserved, ip.linode_id), (true, None));

        c.delete_reserved_ip(r.address).await.unwrap();
        assert!(c.list_reserved_ips().await.unwrap().is_empty());
        let e = c.delete_reserved_ip(r.address).await.unwrap_err();
        assert!(e.is_not_found() && !e.is_reserved_ips_denied(), "{e}");
        let n = s.counters();
        assert_eq!((n.ipv4_reserved, n.ipv4_released), (1, 1));
    })
    .await
}

#[tokio::test]
async fn an_account_without_the_feature_and_its_limit_are_told_apart() {
    bounded(async {
        let s = standin().await;
        let c = client(&s);
        let kept = c.reserve_ipv4("us-east", &[]).await.unwrap();
        s.faults()
            .set_allocation(AllocationKnobs {
                reserved_ips_denied: true,
                ..AllocationKnobs::default()
            })
            .unwrap();
        let errors: Vec<Error> = vec![
            c.list_reserved_ips().await.unwrap_err(),
            c.reserve_ipv4("us-east", &[]).await.unwrap_err(),
            c.delete_reserved_ip(kept.address).await.unwrap_err(),
        ];
        for e in &errors {
            assert!(e.is_reserved_ips_denied(), "{e}");
            assert_eq!(
                e.linode_reason().as_deref(),
                Some(RESERVED_IPS_DENIED_REASON)
            );
            assert!(!e.is_retryable() && !e.may_have_taken_effect(), "{e}");
        }
        assert_eq!(
            requests(&s, "POST", endpoints::RESERVED_IPS),
            2,
            "not repeated"
        );

        s.faults()
            .set_allocation(AllocationKnobs {
                reserved_ipv4_limit: Some(1),
                ..AllocationKnobs::default()
            })
            .unwrap();
        let e = c.reserve_ipv4("us-east", &[]).await.unwrap_err();
        assert_eq!(e.status(), Some(400));
        assert_eq!(
            e.linode_reason().as_deref(),
            Some(RESERVED_IPV4_LIMIT_REASON)
        );
        assert!(!e.is_reserved_ips_denied());
        let e = c.reserve_ipv4("", &[]).await.unwrap_err();
        assert_eq!(
            e.linode_reason().as_deref(),
            Some("region is not valid (field `region`)")
        );
        let n = s.counters();
        assert_eq!((n.ipv4_reserved, n.ipv4_released), (1, 0));
    })
    .await
}

#[tokio::test]
async fn a_reservation_is_not_repeated_after_an_ambiguous_failure() {
    bounded(async {
        let s = standin().await;
        let faults = s.faults();

        faults
            .inject(
                FaultRule::server_error(1, 503)
                    .method("POST")
                    .path_prefix("/networking/reserved/ips"),
            )
            .unwrap();
        let e = client(&s).reserve_ipv4("us-east", &[]).await.unwrap_err();
        assert_eq!(e.status(), Some(503), "{e}");
        assert!(e.may_have_taken_effect());
        assert_eq!(requests(&s, "POST", endpoints::RESERVED_IPS), 1);

        // The reservation is made but its answer never arrives: still asked once, and the
        // caller finds it by its tag.
        faults.set_reply_delay(Duration::from_secs(2));
        let slow = builder(&s)
            .request_timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let e = slow
            .reserve_ipv4("us-east", &["attempt-2"])
            .await
            .unwrap_err();
        assert!(e.may_have_taken_effect(), "{e}");
        assert_eq!(requests(&s, "POST", endpoints::RESERVED_IPS), 2);
        faults.set_reply_delay(Duration::ZERO);
        let c = client(&s);
        let mine: Vec<_> = c
            .list_reserved_ips()
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.tags.iter().any(|t| t == "attempt-2"))
            .collect();
        assert_eq!(mine.len(), 1, "{mine:?}");
        assert_eq!(s.counters().ipv4_reserved, 1);

        // A 429 is repeated: Linode did nothing.
        faults
            .inject(
                FaultRule::rate_limit(1, 1)
                    .method("POST")
                    .path_prefix("/networking/reserved/ips"),
            )
            .unwrap();
        c.reserve_ipv4("us-east", &[]).await.unwrap();
        assert_eq!(requests(&s, "POST", endpoints::RESERVED_IPS), 4);
        assert_eq!(s.counters().ipv4_reserved, 2);

        // Reads and deletes ride out a 5xx.
        faults
            .inject(
                FaultRule::server_error(1, 503)
                    .method("GET")
                    .path_prefix("/networking/reserved/ips"),
            )
            .unwrap();
        assert_eq!(c.list_reserved_ips().await.unwrap().len(), 2);
        faults
            .inject(
                FaultRule::server_error(1, 502)
                    .method("DELETE")
                    .path_prefix("/networking/reserved/ips"),
            )
            .unwrap();
        c.delete_reserved_ip(mine[0].address).await.unwrap();
        assert_eq!(requests(&s, "DELETE", endpoints::RESERVED_IP), 2);
        assert_eq!(s.counters().ipv4_released, 1);
    })
    .await
}
