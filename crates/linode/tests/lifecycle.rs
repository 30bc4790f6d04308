//! The IP lifecycle calls (types, holder Linode, IPv4 addresses, IPv6 ranges) against the
//! Linode API stand-in, including which of them the client repeats after a failure.

// Test code: a panic is a failed test, and a scenario reads best in one piece.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use linode_client::{
    endpoints, CreateLinode, Error, IpType, Ipv6Prefix, LinodeClass, LinodeStatus,
};
use serde_json::json;
use sharedip_e2e::standin::{
    AllocationKnobs, FaultRule, HeldOperation, HeldState, NewLinode, ShareFailure,
    SUPPORT_TICKET_REASON,
};

mod holder_standin;

use holder_standin::*;

fn reason(e: &Error) -> String {
    e.linode_reason()
        .unwrap_or_else(|| panic!("no reason: {e:?}"))
}

#[tokio::test]
async fn lists_linode_types_and_filters_by_class() {
    bounded(async {
        let s = standin().await;
        let c = client(&s);
        let all = c.list_linode_types(None).await.unwrap();
        assert_eq!(all.len(), 5, "{all:?}");
        let nanodes = c
            .list_linode_types(Some(&json!({"class": "nanode"})))
            .await
            .unwrap();
        assert_eq!(nanodes.len(), 1);
        let nanode = &nanodes[0];
        assert_eq!(nanode.id, "g6-nanode-1");
        assert_eq!(nanode.class, LinodeClass::Nanode);
        assert!(nanode.memory > 0 && nanode.vcpus > 0 && nanode.disk > 0);
        let price = nanode.price_in("us-east").unwrap();
        assert!(price.monthly.unwrap() > 0.0);
        assert_eq!(
            requests(&s, "GET", endpoints::LINODE_TYPES),
            2,
            "one page each"
        );
    })
    .await
}

#[tokio::test]
async fn creates_an_empty_unbooted_linode() {
    bounded(async {
        let s = standin().await;
        let req = CreateLinode::new("us-east", "g6-nanode-1", "sharedip-holder-us-east-c1")
            .tags(["sharedip"]);
        let l = client(&s).create_linode(&req).await.unwrap();
        assert_eq!(l.label, "sharedip-holder-us-east-c1");
        assert_eq!(l.region, "us-east");
        assert_eq!(l.linode_type.as_deref(), Some("g6-nanode-1"));
        assert_eq!(l.status, LinodeStatus::Offline);
        assert_eq!(l.image, None);
        assert_eq!(l.tags, vec!["sharedip".to_owned()]);
        assert_eq!(l.ipv4.len(), 1, "its own public IPv4 only: {:?}", l.ipv4);

        let stored = s.state().linode(l.id).unwrap();
        assert_eq!(stored.status, "offline");
        assert_eq!(stored.image, None);
        assert_eq!(s.counters().linodes_created, 1);

        // Labels are unique: a second one is Linode's 400, with its reason, and not repeated.
        let e = client(&s).create_linode(&req).await.unwrap_err();
        assert_eq!(e.status(), Some(400), "{e}");
        assert!(!e.may_have_taken_effect());
        assert!(reason(&e).contains("label"), "{e}");
        assert_eq!(s.counters().linodes_created, 1);
    })
    .await
}

#[tokio::test]
async fn deletes_a_linode() {
    bounded(async {
        let s = standin().await;
        let c = client(&s);
        let l = c
            .create_linode(&CreateLinode::new("us-east", "g6-nanode-1", "to-delete"))
            .await
            .unwrap();
        c.delete_linode(l.id).await.unwrap();
        assert!(s.state().linode(l.id).is_none());
        assert_eq!(s.counters().linodes_deleted, 1);
        assert!(c.get_linode(l.id).await.unwrap_err().is_not_found());
        // A repeat (as after a lost answer) finds nothing.
        assert!(c.delete_linode(l.id).await.unwrap_err().is_not_found());
    })
    .await
}

#[tokio::test]
async fn allocates_a_public_ipv4() {
    bounded(async {
        let s = standin().await;
        let c = client(&s);
        let ip = c.allocate_ipv4(HOLDER).await.unwrap();
        assert_eq!(ip.ip_type, IpType::Ipv4);
        assert!(ip.public);
        assert_eq!(ip.linode_id, Some(HOLDER));
        assert_eq!(ip.region, "us-east");
        assert_ne!(ip.address, IpAddr::V4(HOLDER_IPV4));
        let on_holder = c.get_linode_ips(HOLDER).await.unwrap();
        assert!(on_holder
            .ipv4
            .public
            .iter()
            .any(|a| a.address == ip.address));
        assert_eq!(s.counters().ipv4_allocated, 1);
    })
    .await
}

#[tokio::test]
async fn deletes_an_ipv4_and_keeps_the_refusal_of_the_last_one() {
    bounded(async {
        let s = standin().await;
        let c = client(&s);
        let IpAddr::V4(extra) = c.allocate_ipv4(HOLDER).await.unwrap().address else {
            panic!("not an IPv4 address")
        };
        c.delete_ipv4(HOLDER, extra).await.unwrap();
        assert_eq!(s.counters().ipv4_deleted, 1);
        let left = c.get_linode_ips(HOLDER).await.unwrap();
        assert_eq!(left.ipv4.public.len(), 1);
        assert_eq!(left.ipv4.public[0].address, IpAddr::V4(HOLDER_IPV4));

        let e = c.delete_ipv4(HOLDER, HOLDER_IPV4).await.unwrap_err();
        assert_eq!(e.status(), Some(400));
        assert_eq!(
            reason(&e),
            "Cannot delete the last public IPv4 address of a Linode"
        );
        assert_eq!(s.counters().ipv4_deleted, 1);
    })
    .await
}

#[tokio::test]
async fn creates_an_ipv6_range_and_keeps_the_region_limit_reason() {
    bounded(async {
        let s = standin().await;
        let c = client(&s);
        let slaac = s.state().linode(HOLDER).unwrap().slaac;
        let r = c
            .create_ipv6_range(HOLDER, Ipv6Prefix::Len56)
            .await
            .unwrap();
        assert_eq!(r.prefix, 56);
        assert_eq!(r.route_target, Some(slaac));
        let listed = c.list_ipv6_ranges().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].range, r.range);
        assert_eq!(listed[0].prefix, 56);
        assert_eq!(s.counters().ranges_created, 1);

        // One range per account and region.
        let other = s
            .state()
            .create_linode(&NewLinode::new("us-east").label("other"))
            .unwrap();
        let e = c
            .create_ipv6_range(other.id, Ipv6Prefix::Len64)
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(400));
        assert!(reason(&e).contains("one IPv6 range in each region"), "{e}");
        assert_eq!(s.counters().ranges_created, 1);
    })
    .await
}

#[tokio::test]
async fn deletes_an_ipv6_range() {
    bounded(async {
        let s = standin().await;
        let c = client(&s);
        let r = c
            .create_ipv6_range(HOLDER, Ipv6Prefix::Len64)
            .await
            .unwrap();
        c.delete_ipv6_range(r.range).await.unwrap();
        assert!(c.list_ipv6_ranges().await.unwrap().is_empty());
        assert_eq!(s.counters().ranges_deleted, 1);
        let e = c.delete_ipv6_range(r.range).await.unwrap_err();
        assert!(e.is_not_found(), "{e}");
        let none: Ipv6Addr = "2001:db8:dead::".parse().unwrap();
        assert!(c.delete_ipv6_range(none).await.unwrap_err().is_not_found());
    })
    .await
}

#[tokio::test]
async fn creating_calls_are_not_repeated_after_a_5xx() {
    bounded(async {
        let s = standin().await;
        let c = client(&s);
        let faults = s.faults();

        faults
            .inject(
                FaultRule::server_error(1, 502)
                    .method("POST")
                    .path_prefix("/linode/instances/100/ips"),
            )
            .unwrap();
        let e = c.allocate_ipv4(HOLDER).await.unwrap_err();
        assert_eq!(e.status(), Some(502), "{e}");
        assert!(e.may_have_taken_effect());
        assert_eq!(requests(&s, "POST", endpoints::LINODE_IPS), 1);

        faults
            .inject(
                FaultRule::server_error(1, 503)
                    .method("POST")
                    .path_prefix("/linode/instances"),
            )
            .unwrap();
        let req = CreateLinode::new("us-east", "g6-nanode-1", "once");
        let e = c.create_linode(&req).await.unwrap_err();
        assert_eq!(e.status(), Some(503), "{e}");
        assert_eq!(requests(&s, "POST", endpoints::LINODES), 1);

        faults
            .inject(
                FaultRule::server_error(1, 500)
                    .method("POST")
                    .path_prefix("/networking/ipv6/ranges"),
            )
            .unwrap();
        let e = c
            .create_ipv6_range(HOLDER, Ipv6Prefix::Len64)
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(500), "{e}");
        assert_eq!(requests(&s, "POST", endpoints::IPV6_RANGES), 1);

        let n = s.counters();
        assert_eq!(
            (n.ipv4_allocated, n.linodes_created, n.ranges_created),
            (0, 0, 0)
        );

        // Repeating is harmless for reads and deletes, which still ride out a 5xx.
        faults
            .inject(
                FaultRule::server_error(1, 503)
                    .method("GET")
                    .path_prefix("/linode/types"),
            )
            .unwrap();
        assert_eq!(c.list_linode_types(None).await.unwrap().len(), 5);
        assert_eq!(requests(&s, "GET", endpoints::LINODE_TYPES), 2);
        let IpAddr::V4(extra) = c.allocate_ipv4(HOLDER).await.unwrap().address else {
            panic!("not an IPv4 address")
        };
        faults
            .inject(
                FaultRule::server_error(1, 503)
                    .method("DELETE")
                    .path_prefix("/linode/instances/100/ips"),
            )
            .unwrap();
        c.delete_ipv4(HOLDER, extra).await.unwrap();
        assert_eq!(requests(&s, "DELETE", endpoints::LINODE_IP), 2);
    })
    .await
}

#[tokio::test]
async fn creating_calls_are_repeated_after_a_429() {
    bounded(async {
        let s = standin().await;
        let c = client(&s);
        s.faults()
            .inject(
                FaultRule::rate_limit(1, 1)
                    .method("POST")
                    .path_prefix("/linode/instances/100/ips"),
            )
            .unwrap();
        c.allocate_ipv4(HOLDER).await.unwrap();
        assert_eq!(requests(&s, "POST", endpoints::LINODE_IPS), 2);
        assert_eq!(s.counters().ipv4_allocated, 1);
    })
    .await
}

#[tokio::test]
async fn an_allocation_whose_answer_is_lost_is_not_repeated() {
    bounded(async {
        let s = standin().await;
        let c = builder(&s)
            .request_timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        s.holds().arm(HeldOperation::Ipv4Allocate, 1);
        let e = c.allocate_ipv4(HOLDER).await.unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
        assert!(e.may_have_taken_effect());
        // The client gave up on the held answer, and the stand-in saw it go.
        let view = s
            .holds()
            .wait_until(Duration::from_secs(10), |v| {
                v.held.iter().all(|h| h.state == HeldState::Dropped)
            })
            .await
            .expect("the held answer was dropped");
        assert_eq!(view.held.len(), 1, "{view:?}");
        assert_eq!(view.held[0].operation, HeldOperation::Ipv4Allocate);
        // Linode committed exactly one address: a repeat would not have been held and would
        // have allocated a second. (An answer that never went out is not in the request log.)
        assert_eq!(s.counters().ipv4_allocated, 1);
        let on_holder = client(&s).get_linode_ips(HOLDER).await.unwrap();
        assert_eq!(on_holder.ipv4.public.len(), 2, "{on_holder:?}");
    })
    .await
}

#[tokio::test]
async fn linode_reasons_reach_the_error() {
    bounded(async {
        let s = standin().await;
        let c = client(&s);

        s.faults()
            .set_allocation(AllocationKnobs {
                ipv4_needs_ticket: true,
                ..AllocationKnobs::default()
            })
            .unwrap();
        let e = c.allocate_ipv4(HOLDER).await.unwrap_err();
        assert_eq!(e.status(), Some(400));
        assert_eq!(reason(&e), SUPPORT_TICKET_REASON);
        assert!(e.to_string().contains(SUPPORT_TICKET_REASON), "{e}");
        assert!(!e.may_have_taken_effect());

        s.faults()
            .set_allocation(AllocationKnobs {
                ipv4_limit: Some(1),
                ..AllocationKnobs::default()
            })
            .unwrap();
        let e = c.allocate_ipv4(HOLDER).await.unwrap_err();
        assert_eq!(e.status(), Some(400));
        assert!(
            reason(&e).starts_with("Your account is limited to 1 public IPv4 addresses."),
            "{e}"
        );

        s.faults()
            .set_allocation(AllocationKnobs {
                linode_create_failure: Some(ShareFailure {
                    status: 403,
                    reason: "You do not have permission to create Linodes".into(),
                }),
                ..AllocationKnobs::default()
            })
            .unwrap();
        let e = c
            .create_linode(&CreateLinode::new("us-east", "g6-nanode-1", "refused"))
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(403));
        assert_eq!(reason(&e), "You do not have permission to create Linodes");

        let n = s.counters();
        assert_eq!((n.ipv4_allocated, n.linodes_created), (0, 0));
    })
    .await
}
