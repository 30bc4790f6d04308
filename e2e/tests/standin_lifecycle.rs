//! The IP lifecycle in the Linode API stand-in (`openapi-ip-lifecycle.yaml`): creating and
//! deleting Linodes, allocating and deleting IPv4 addresses, IPv6 ranges, assign, the
//! allocation knobs, held answers and counters; every answer checked against the spec.

mod standin_common;

use std::path::PathBuf;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sharedip_e2e::standin::openapi::{OpenApiSpec, Strictness};
use sharedip_e2e::standin::{
    AllocationKnobs, HeldOperation, HeldState, NewLinode, ShareFailure, StandInHandle,
    SUPPORT_TICKET_REASON,
};
use standin_common::{bounded, reasons, start, Answer, Api};

fn lifecycle_spec() -> OpenApiSpec {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/linode/openapi/openapi-ip-lifecycle.yaml");
    OpenApiSpec::load(&path).expect("lifecycle spec loads")
}

/// Checks an answer against the lifecycle spec's response for `method template`.
fn conforms(spec: &OpenApiSpec, method: &str, template: &str, a: &Answer) {
    let v = spec
        .response_validator(
            method,
            &format!("/{{apiVersion}}{template}"),
            a.status.as_u16(),
            Strictness::Strict,
        )
        .expect("validator builds");
    if let Err(e) = v.check(&a.body) {
        panic!("{method} {template} ({}): {e}", a.status);
    }
}

async fn delete(api: &Api, path: &str) -> Answer {
    api.send(Method::DELETE, path, None, &[]).await
}

const HOLDER: &str = r#"{"type": "g6-nanode-1", "region": "us-east", "label": "sharedip-holder-us-east-c1",
    "booted": false, "interfaces": [{"purpose": "public"}]}"#;

async fn create_holder(api: &Api) -> Answer {
    api.post("/v4/linode/instances", HOLDER).await
}

#[tokio::test]
async fn types_are_listed_with_a_nanode() {
    bounded(async {
        let s = start().await;
        let api = Api::new(&s);
        let spec = lifecycle_spec();
        let a = api.get("/v4/linode/types").await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        conforms(&spec, "GET", "/linode/types", &a);
        let nanodes: Vec<&str> = a.body["data"]
            .as_array()
            .expect("data")
            .iter()
            .filter(|t| t["class"] == "nanode")
            .filter_map(|t| t["id"].as_str())
            .collect();
        assert_eq!(nanodes, ["g6-nanode-1"]);
        let a = api
            .send(
                Method::GET,
                "/v4/linode/types",
                None,
                &[("X-Filter", r#"{"class": "nanode"}"#)],
            )
            .await;
        assert_eq!(a.body["results"], 1);
    })
    .await;
}

#[tokio::test]
async fn a_created_linode_is_offline_with_its_own_addresses_and_labels_are_unique() {
    bounded(async {
        let s = start().await;
        let api = Api::new(&s);
        let spec = lifecycle_spec();
        let a = create_holder(&api).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        conforms(&spec, "POST", "/linode/instances", &a);
        assert_eq!(a.body["status"], "offline");
        assert_eq!(a.body["type"], "g6-nanode-1");
        assert!(a.body["image"].is_null());
        let id = a.body["id"].as_u64().expect("id");
        let v4 = a.body["ipv4"].as_array().expect("ipv4");
        assert_eq!(v4.len(), 1, "one public IPv4 of its own");
        let ips = api.get(&format!("/v4/linode/instances/{id}/ips")).await;
        assert_eq!(ips.body["ipv4"]["public"][0]["address"], v4[0]);
        assert!(ips.body["ipv6"]["slaac"]["address"].is_string());
        assert_eq!(s.counters().linodes_created, 1);

        // The label is taken now (also by a seeded Linode).
        for label in ["sharedip-holder-us-east-c1", "node-a"] {
            let body = json!({"type": "g6-nanode-1", "region": "us-east", "label": label});
            let a = api.post("/v4/linode/instances", &body.to_string()).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{label}");
            assert_eq!(a.body["errors"][0]["field"], "label");
            conforms(&spec, "POST", "/linode/instances", &a);
        }
        assert_eq!(s.counters().linodes_created, 1);
    })
    .await;
}

#[tokio::test]
async fn bad_create_requests_are_refused_on_their_field() {
    bounded(async {
        let s = start().await;
        let api = Api::new(&s);
        let cases = [
            (json!({"region": "us-east"}), Some("type")),
            (json!({"type": "g6-nanode-1"}), Some("region")),
            (json!({"type": "g9-huge", "region": "us-east"}), Some("type")),
            (json!({"type": "g6-nanode-1", "region": "Mars"}), Some("region")),
            (json!({"type": "g6-nanode-1", "region": "us-east", "label": "a--b"}), Some("label")),
            (json!({"type": "g6-nanode-1", "region": "us-east", "root_pass": "secret123"}), Some("root_pass")),
            (json!({"type": "g6-nanode-1", "region": "us-east", "image": "linode/debian12"}), Some("root_pass")),
            (json!({"type": "g6-nanode-1", "region": "us-east", "interfaces": []}), Some("interfaces")),
            (json!({"type": "g6-nanode-1", "region": "us-east",
                    "interfaces": [{"purpose": "public"}, {"purpose": "public"}]}), Some("interfaces")),
            (json!({"type": "g6-nanode-1", "region": "us-east",
                    "interfaces": [{"purpose": "public", "label": "x"}]}), Some("interfaces")),
            (json!({"type": "g6-nanode-1", "region": "us-east",
                    "interfaces": [{"purpose": "vlan"}]}), Some("interfaces")),
            (json!({"type": "g6-nanode-1", "region": "us-east", "interface_generation": "linode"}),
                Some("interface_generation")),
            (json!({"type": "g6-nanode-1", "region": "us-east", "colour": "red"}), None),
        ];
        for (body, field) in cases {
            let a = api.post("/v4/linode/instances", &body.to_string()).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.text);
            if let Some(f) = field {
                assert_eq!(a.body["errors"][0]["field"], f, "{body}: {}", a.text);
            }
        }
        // Deployed from an image, it boots; legacy interfaces with a VLAN are fine.
        let body = json!({"type": "g6-standard-1", "region": "us-east", "image": "linode/debian12",
            "root_pass": "aComplexP@ssword", "private_ip": true, "interface_generation": "legacy_config",
            "interfaces": [{"purpose": "public"}, {"purpose": "vlan", "label": "vlan-1", "ipam_address": "10.0.0.1/24"}]});
        let a = api.post("/v4/linode/instances", &body.to_string()).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert_eq!(a.body["status"], "running");
        assert_eq!(a.body["ipv4"].as_array().expect("ipv4").len(), 2, "public and private");
        assert_eq!(s.counters().linodes_created, 1);
    })
    .await;
}

#[tokio::test]
async fn deleting_a_linode_takes_its_addresses_ranges_and_shares() {
    bounded(async {
        let s = start().await;
        let api = Api::new(&s);
        let spec = lifecycle_spec();
        let id = create_holder(&api).await.body["id"].as_u64().expect("id");
        let extra = api
            .post(
                &format!("/v4/linode/instances/{id}/ips"),
                r#"{"type": "ipv4", "public": true}"#,
            )
            .await;
        assert_eq!(extra.status, StatusCode::OK, "{}", extra.text);
        let addr = extra.body["address"].as_str().expect("address").to_owned();
        assert_eq!(api.share(2, &[&addr]).await.status, StatusCode::OK);
        let a = delete(&api, &format!("/v4/linode/instances/{id}")).await;
        assert_eq!(a.status, StatusCode::OK);
        assert!(s.state().linode(id).is_none());
        assert!(
            s.state().shared_list(2).is_empty(),
            "the share went with the address"
        );
        assert!(!s.sharing().ips.contains_key(&addr));
        let c = s.counters();
        assert_eq!((c.linodes_created, c.linodes_deleted), (1, 1));
        assert_eq!((c.ipv4_allocated, c.ipv4_removed_with_linodes), (1, 2));
        conforms(&spec, "POST", "/linode/instances/{linodeId}/ips", &extra);
    })
    .await;
}

#[tokio::test]
async fn ipv4_allocation_and_deletion_with_the_last_address_kept() {
    bounded(async {
        let s = start().await;
        let api = Api::new(&s);
        let spec = lifecycle_spec();
        let a = api
            .post(
                "/v4/networking/ips",
                r#"{"type": "ipv4", "public": true, "linode_id": 3}"#,
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        conforms(&spec, "POST", "/networking/ips", &a);
        assert_eq!(a.body["linode_id"], 3);
        let addr = a.body["address"].as_str().expect("address").to_owned();
        let a = delete(&api, &format!("/v4/linode/instances/3/ips/{addr}")).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        conforms(
            &spec,
            "DELETE",
            "/linode/instances/{linodeId}/ips/{address}",
            &a,
        );
        // Linode 3's last public IPv4 stays.
        let a = delete(&api, "/v4/linode/instances/3/ips/198.51.100.3").await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert!(
            reasons(&a.body)[0].contains("last public IPv4"),
            "{}",
            a.text
        );
        conforms(
            &spec,
            "DELETE",
            "/linode/instances/{linodeId}/ips/{address}",
            &a,
        );
        let c = s.counters();
        assert_eq!((c.ipv4_allocated, c.ipv4_deleted), (1, 1));
    })
    .await;
}

/// Creates a Nanode labelled `label` in `region` and returns its id.
async fn create_nanode(api: &Api, region: &str, label: &str) -> u64 {
    let body = json!({"type": "g6-nanode-1", "region": region, "label": label});
    api.post("/v4/linode/instances", &body.to_string())
        .await
        .body["id"]
        .as_u64()
        .expect("id")
}

async fn set_knobs(api: &Api, knobs: Value) {
    let a = api
        .send(
            Method::PUT,
            "/_standin/faults/allocation",
            Some(&knobs.to_string()),
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
}

#[tokio::test]
async fn support_ticket_account_limit_and_create_failure_knobs() {
    bounded(async {
        let s = start().await;
        let api = Api::new(&s);
        let spec = lifecycle_spec();
        set_knobs(&api, json!({"ipv4_needs_ticket": true})).await;
        // Linode 3 has its own address: an extra one needs a ticket.
        let a = api
            .post(
                "/v4/linode/instances/3/ips",
                r#"{"type": "ipv4", "public": true}"#,
            )
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert_eq!(reasons(&a.body), [SUPPORT_TICKET_REASON]);
        conforms(&spec, "POST", "/linode/instances/{linodeId}/ips", &a);
        // A Linode without a public address may get its first.
        let bare = s
            .state()
            .create_linode(&NewLinode::new("us-east").label("bare").ipv4([]))
            .expect("linode");
        let body = json!({"type": "ipv4", "public": true, "linode_id": bare.id});
        let a = api.post("/v4/networking/ips", &body.to_string()).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);

        let public_now = s
            .state()
            .read(|a| a.ipv4_addresses().values().filter(|r| r.public).count());
        set_knobs(&api, json!({"ipv4_limit": public_now})).await;
        let a = api
            .post(
                "/v4/networking/ips",
                r#"{"type": "ipv4", "public": true, "linode_id": 1}"#,
            )
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert!(reasons(&a.body)[0].contains("limited to"), "{}", a.text);
        conforms(&spec, "POST", "/networking/ips", &a);
        let a = create_holder(&api).await;
        assert_eq!(
            a.status,
            StatusCode::BAD_REQUEST,
            "a new Linode needs an address too"
        );

        set_knobs(
            &api,
            json!({"linode_create_failure": {"status": 400, "reason": "Account limit reached"}}),
        )
        .await;
        assert_eq!(
            s.faults().allocation().linode_create_failure,
            Some(ShareFailure {
                status: 400,
                reason: "Account limit reached".into()
            })
        );
        let a = create_holder(&api).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert_eq!(reasons(&a.body), ["Account limit reached"]);
        conforms(&spec, "POST", "/linode/instances", &a);
        s.faults()
            .set_allocation(AllocationKnobs::default())
            .expect("knobs");
        assert_eq!(create_holder(&api).await.status, StatusCode::OK);
        let c = s.counters();
        assert_eq!((c.ipv4_allocated, c.linodes_created), (1, 1));
    })
    .await;
}

#[tokio::test]
async fn one_range_per_region_routed_to_its_linode_and_not_deletable_while_shared() {
    bounded(async {
        let s = start().await;
        let api = Api::new(&s);
        let spec = lifecycle_spec();
        // us-east already has the seeded range of Linode 1.
        let a = api
            .post(
                "/v4/networking/ipv6/ranges",
                r#"{"prefix_length": 64, "linode_id": 3}"#,
            )
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert!(
            reasons(&a.body)[0].contains("one IPv6 range in each region"),
            "{}",
            a.text
        );
        conforms(&spec, "POST", "/networking/ipv6/ranges", &a);
        // A new region: the first range is created, routed to the Linode's SLAAC.
        let id = create_nanode(&api, "eu-west", "holder-eu").await;
        let a = api
            .post(
                "/v4/networking/ipv6/ranges",
                &json!({"prefix_length": 56, "linode_id": id}).to_string(),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        conforms(&spec, "POST", "/networking/ipv6/ranges", &a);
        let slaac = s.state().linode(id).expect("linode").slaac.to_string();
        assert_eq!(a.body["route_target"], slaac.as_str());
        let range = a.body["range"].as_str().expect("range").to_owned();
        assert!(range.ends_with("/56"));
        let other = create_nanode(&api, "eu-west", "other-eu").await;
        let a = api
            .post(
                "/v4/networking/ipv6/ranges",
                &json!({"prefix_length": 64, "linode_id": other}).to_string(),
            )
            .await;
        assert_eq!(
            a.status,
            StatusCode::BAD_REQUEST,
            "a second range in eu-west"
        );
        // Shared: refused; unshared: deleted.
        let base = range.trim_end_matches("/56").to_owned();
        assert_eq!(api.share(other, &[&base]).await.status, StatusCode::OK);
        let a = delete(&api, &format!("/v4/networking/ipv6/ranges/{base}")).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert!(reasons(&a.body)[0].starts_with("Shared IPv6 ranges cannot be deleted"));
        conforms(&spec, "DELETE", "/networking/ipv6/ranges/{range}", &a);
        assert_eq!(api.share(other, &[]).await.status, StatusCode::OK);
        let a = delete(&api, &format!("/v4/networking/ipv6/ranges/{base}")).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        conforms(&spec, "DELETE", "/networking/ipv6/ranges/{range}", &a);
        let c = s.counters();
        assert_eq!((c.ranges_created, c.ranges_deleted), (1, 1));
    })
    .await;
}

async fn assign(api: &Api, body: Value) -> Answer {
    api.post("/v4/networking/ips/assign", &body.to_string())
        .await
}

#[tokio::test]
async fn assign_moves_addresses_with_the_spec_restrictions() {
    bounded(async {
        let s = start().await;
        let api = Api::new(&s);
        let spec = lifecycle_spec();
        let refused = [
            // Other region (Linode 4 is in us-west).
            json!({"region": "us-east", "assignments": [{"address": "192.0.2.10", "linode_id": 4}]}),
            json!({"region": "us-east", "assignments": [{"address": "192.0.2.40", "linode_id": 3}]}),
            // Linode 3 would be left without a public IPv4.
            json!({"region": "us-east", "assignments": [{"address": "198.51.100.3", "linode_id": 2}]}),
            // Linode 2 already has a private IPv4 (node-a) and Linode 1 a range.
            json!({"region": "us-east", "assignments": [{"address": "192.168.130.5", "linode_id": 3},
                                                         {"address": "2001:db8:100::/64", "linode_id": 3},
                                                         {"address": "192.0.2.99", "linode_id": 3}]}),
            json!({"region": "us-east", "assignments": []}),
            json!({"region": "us-east", "assignments": [{"address": "192.0.2.10", "linode_id": 3},
                                                         {"address": "192.0.2.10", "linode_id": 2}]}),
        ];
        for body in refused {
            let a = assign(&api, body.clone()).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.text);
            conforms(&spec, "POST", "/networking/ips/assign", &a);
        }
        // A shared address cannot be moved.
        assert_eq!(api.share(2, &["192.0.2.10"]).await.status, StatusCode::OK);
        let a = assign(&api, json!({"region": "us-east", "assignments": [{"address": "192.0.2.10", "linode_id": 3}]})).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert!(reasons(&a.body)[0].contains("shared"), "{}", a.text);
        assert_eq!(api.share(2, &[]).await.status, StatusCode::OK);
        // Allowed: an address and the range move to Linode 3, all at once.
        let a = assign(&api, json!({"region": "us-east", "assignments": [
            {"address": "192.0.2.10", "linode_id": 3}, {"address": "2001:db8:100::/64", "linode_id": 3}]})).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        conforms(&spec, "POST", "/networking/ips/assign", &a);
        let snap = s.sharing();
        assert_eq!(snap.ips["192.0.2.10"].owner, 3);
        assert_eq!(snap.ips["2001:db8:100::"].owner, 3);
        let ips = api.get("/v4/linode/instances/3/ips").await;
        let slaac3 = s.state().linode(3).expect("linode").slaac.to_string();
        assert_eq!(ips.body["ipv6"]["global"][0]["route_target"], slaac3.as_str());
        assert_eq!(s.counters().ips_assigned, 2);
    })
    .await;
}

async fn wait_waiting(s: &StandInHandle, n: usize) {
    s.holds()
        .wait_until(Duration::from_secs(10), |v| {
            v.held
                .iter()
                .filter(|h| h.state == HeldState::Waiting)
                .count()
                >= n
        })
        .await
        .expect("the answer is held");
}

#[tokio::test]
async fn a_held_allocation_is_committed_and_answered_on_release() {
    bounded(async {
        let s = start().await;
        let api = Api::new(&s);
        s.holds().arm(HeldOperation::Ipv4Allocate, 1);
        let call = tokio::spawn({
            let api = Api::new(&s);
            async move {
                api.post(
                    "/v4/networking/ips",
                    r#"{"type": "ipv4", "public": true, "linode_id": 1}"#,
                )
                .await
            }
        });
        wait_waiting(&s, 1).await;
        // Committed before the answer: the address is on Linode 1 already.
        assert_eq!(s.counters().ipv4_allocated, 1);
        let owned = s.state().read(|a| {
            a.ipv4_addresses()
                .values()
                .filter(|r| r.linode_id == 1)
                .count()
        });
        assert_eq!(owned, 3);
        assert!(!call.is_finished());
        let released = api.post("/_standin/holds/release", "{}").await;
        assert_eq!(released.body["released"], 1);
        let a = call.await.expect("call");
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert_eq!(s.holds().view().held[0].state, HeldState::Released);
        // Only one was armed: the next one answers at once.
        let a = api
            .post(
                "/v4/networking/ips",
                r#"{"type": "ipv4", "public": true, "linode_id": 1}"#,
            )
            .await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(s.holds().view().held.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_held_answer_whose_client_goes_away_is_dropped_but_the_change_stays() {
    bounded(async {
        let s = start().await;
        let api = Api::new(&s);
        let a = api
            .send(
                Method::PUT,
                "/_standin/holds",
                Some(r#"{"operation": "linode_create", "count": 1}"#),
                &[],
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        let call = tokio::spawn({
            let api = Api::new(&s);
            async move { create_holder(&api).await }
        });
        wait_waiting(&s, 1).await;
        // The client dies: its connection closes with the request in flight.
        call.abort();
        let v = s
            .holds()
            .wait_until(Duration::from_secs(10), |v| {
                v.held
                    .first()
                    .is_some_and(|h| h.state == HeldState::Dropped)
            })
            .await
            .expect("the held answer is recorded as dropped");
        assert_eq!(v.held.len(), 1);
        let holder = s.state().read(|a| {
            a.linodes()
                .values()
                .any(|l| l.label == "sharedip-holder-us-east-c1")
        });
        assert!(
            holder,
            "the Linode was created although nobody got the answer"
        );
        assert_eq!(s.counters().linodes_created, 1);
        let view = api.get("/_standin/holds").await;
        assert_eq!(view.body["held"][0]["state"], "dropped");
    })
    .await;
}
