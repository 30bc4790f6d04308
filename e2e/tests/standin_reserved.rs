//! Reserved IPv4 addresses in the Linode API stand-in (experimental), compared with recordings
//! of Linode's API (`e2e/src/standin/fixtures/reserved/`): the answers' fields and their JSON
//! types, Linode's error bodies, keep-on-Linode-delete, assignment, the access and limit knobs,
//! counters and the seed.

mod standin_common;

use std::path::PathBuf;

use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};
use sharedip_e2e::standin::{
    AllocationKnobs, StandIn, RESERVED_IPS_DENIED_REASON, RESERVED_IPV4_LIMIT_REASON,
};
use standin_common::{bounded, reasons, start, Answer, Api};

/// One recorded call: method, path below `/v4beta`, status and JSON body of the answer.
#[derive(Debug)]
struct Recorded {
    method: String,
    path: String,
    status: u16,
    body: Value,
}

fn recordings(name: &str) -> Vec<Recorded> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/standin/fixtures/reserved")
        .join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(&path).expect("fixture reads");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("fixture is YAML");
    doc["interactions"]
        .as_sequence()
        .expect("interactions")
        .iter()
        .map(|i| Recorded {
            method: i["request"]["method"].as_str().expect("method").to_owned(),
            path: i["request"]["url"]
                .as_str()
                .expect("url")
                .trim_start_matches("https://api.linode.com/v4beta")
                .to_owned(),
            status: u16::try_from(i["response"]["code"].as_u64().expect("code")).expect("u16"),
            body: serde_json::from_str(i["response"]["body"].as_str().expect("body"))
                .expect("recorded body is JSON"),
        })
        .collect()
}

/// The `n`-th (0-based) recorded answer to `method` on a path starting with `path` and
/// answered with `status`.
fn recorded(name: &str, method: &str, path: &str, status: u16, n: usize) -> Value {
    recordings(name)
        .into_iter()
        .filter(|r| r.method == method && r.path.starts_with(path) && r.status == status)
        .nth(n)
        .unwrap_or_else(|| panic!("{name} has no {n}th {method} {path} -> {status}"))
        .body
}

/// How the stand-in's object must relate to the recorded one.
#[derive(Clone, Copy, PartialEq)]
enum Fields {
    /// The same fields.
    Same,
    /// Only fields the recording has (an endpoint whose spec predates some of Linode's).
    Within,
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Checks that `ours` has the recorded fields with the recorded JSON types, recursively
/// (arrays by their first items).
fn same_shape(recorded: &Value, ours: &Value, fields: Fields, at: &str) {
    assert_eq!(kind(recorded), kind(ours), "{at}: {recorded} vs {ours}");
    match (recorded, ours) {
        (Value::Object(r), Value::Object(o)) => {
            let keys = |m: &Map<String, Value>| m.keys().cloned().collect::<Vec<_>>();
            if fields == Fields::Same {
                let (mut rk, mut ok) = (keys(r), keys(o));
                rk.sort();
                ok.sort();
                assert_eq!(rk, ok, "{at}: fields differ");
            }
            for (k, ov) in o {
                let rv = r
                    .get(k)
                    .unwrap_or_else(|| panic!("{at}.{k}: not in the recording"));
                same_shape(rv, ov, fields, &format!("{at}.{k}"));
            }
        }
        (Value::Array(r), Value::Array(o)) => {
            if let (Some(r0), Some(o0)) = (r.first(), o.first()) {
                same_shape(r0, o0, fields, &format!("{at}[0]"));
            }
        }
        _ => {}
    }
}

async fn delete(api: &Api, path: &str) -> Answer {
    api.send(Method::DELETE, path, None, &[]).await
}

async fn reserve(api: &Api, body: Value) -> Answer {
    api.post("/v4/networking/reserved/ips", &body.to_string())
        .await
}

/// Reserves an address in `region`; returns it.
async fn reserved_in(api: &Api, region: &str) -> String {
    let a = reserve(api, json!({"region": region})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    a.body["address"].as_str().expect("address").to_owned()
}

/// Creates a Nanode in `region` and returns its id.
async fn nanode(api: &Api, region: &str, label: &str) -> u64 {
    let body = json!({"type": "g6-nanode-1", "region": region, "label": label});
    let a = api.post("/v4/linode/instances", &body.to_string()).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    a.body["id"].as_u64().expect("id")
}

async fn assign(api: &Api, region: &str, address: &str, linode_id: u64) -> Answer {
    let body = json!({"region": region,
        "assignments": [{"address": address, "linode_id": linode_id}]});
    api.post("/v4/networking/ips/assign", &body.to_string())
        .await
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

const END_TO_END: &str = "TestReservedIPAddresses_EndToEndTest";
const RESERVED: &str = "/networking/reserved/ips";

#[tokio::test]
async fn reserve_get_list_and_delete_answer_as_recorded() {
    bounded(async {
        let s = start().await;
        let api = Api::new(&s);
        let a = api.get("/v4/networking/reserved/ips").await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert_eq!(a.body["results"], 0);

        let a = reserve(&api, json!({"region": "au-mel", "tags": ["lb"]})).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        same_shape(
            &recorded(END_TO_END, "POST", RESERVED, 200, 0),
            &a.body,
            Fields::Same,
            "POST",
        );
        assert_eq!(
            (&a.body["region"], &a.body["tags"]),
            (&json!("au-mel"), &json!(["lb"]))
        );
        assert_eq!(
            (&a.body["reserved"], &a.body["linode_id"]),
            (&json!(true), &Value::Null)
        );
        let addr = a.body["address"].as_str().expect("address").to_owned();
        let one = format!("/v4/networking/reserved/ips/{addr}");

        let a = api.get(&one).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        same_shape(
            &recorded(END_TO_END, "GET", &format!("{RESERVED}/"), 200, 0),
            &a.body,
            Fields::Same,
            "GET",
        );
        let a = api.get("/v4/networking/reserved/ips?page=1").await;
        same_shape(
            &recorded(END_TO_END, "GET", RESERVED, 200, 0),
            &a.body,
            Fields::Same,
            "list",
        );
        assert_eq!(a.body["data"][0]["address"], addr.as_str());

        let a = delete(&api, &one).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert_eq!(a.body, recorded(END_TO_END, "DELETE", RESERVED, 200, 0));
        let a = api.get(&one).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND);
        assert_eq!(a.body, recorded(END_TO_END, "GET", RESERVED, 404, 0));
        let a = delete(&api, "/v4/networking/reserved/ips/255.255.255.4").await;
        assert_eq!(a.status, StatusCode::NOT_FOUND);
        assert_eq!(
            a.body,
            recorded(
                "TestReservedIPAddresses_DeleteIPAddressVariants",
                "DELETE",
                RESERVED,
                404,
                0
            )
        );
        assert_eq!(
            api.get("/v4/networking/reserved/ips/999.999.999.999")
                .await
                .status,
            StatusCode::NOT_FOUND
        );
        let c = s.counters();
        assert_eq!((c.ipv4_reserved, c.ipv4_released), (1, 1));
    })
    .await;
}

#[tokio::test]
async fn a_reserved_address_outlives_its_linode_and_can_be_shared_meanwhile() {
    bounded(async {
        let s = start().await;
        let api = Api::new(&s);
        let holder = nanode(&api, "us-east", "reserved-holder").await;
        let addr = reserved_in(&api, "us-east").await;
        // Not shareable while it is on no Linode.
        assert_eq!(api.share(2, &[&addr]).await.status, StatusCode::BAD_REQUEST);

        let a = assign(&api, "us-east", &addr, holder).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        let assign_rec = "TestIPAddress_Instance_ReserveIP_Assign";
        assert_eq!(
            a.body,
            recorded(assign_rec, "POST", "/networking/ips/assign", 200, 0)
        );
        let a = api.get(&format!("/v4/networking/ips/{addr}")).await;
        same_shape(
            &recorded(assign_rec, "GET", "/networking/ips/", 200, 0),
            &a.body,
            Fields::Within,
            "ip",
        );
        assert_eq!(
            (&a.body["reserved"], &a.body["linode_id"]),
            (&json!(true), &json!(holder))
        );
        let a = api
            .get(&format!("/v4/networking/reserved/ips/{addr}"))
            .await;
        same_shape(
            &recorded(
                "TestReservedIPAddresses_DeleteIPAddressVariants",
                "GET",
                RESERVED,
                200,
                0,
            )["data"][1],
            &a.body,
            Fields::Same,
            "assigned",
        );
        assert_eq!(a.body["assigned_entity"]["id"], holder);
        let ips = api.get(&format!("/v4/linode/instances/{holder}/ips")).await;
        let public = ips.body["ipv4"]["public"].as_array().expect("public");
        assert!(
            public
                .iter()
                .any(|ip| ip["address"] == addr.as_str() && ip["reserved"] == true),
            "{public:?}"
        );
        assert_eq!(
            ips.body["ipv4"]["reserved"],
            json!([]),
            "the older list is something else"
        );

        // Shared like any address of its Linode (an assumption: unverified at Linode).
        assert_eq!(api.share(2, &[&addr]).await.status, StatusCode::OK);
        assert_eq!(s.state().shared_list(2), vec![addr.clone()]);

        let a = delete(&api, &format!("/v4/linode/instances/{holder}")).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        let a = api
            .get(&format!("/v4/networking/reserved/ips/{addr}"))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        let after_delete = recorded(
            "TestInstance_DeleteInstanceVariants",
            "GET",
            RESERVED,
            200,
            0,
        );
        same_shape(&after_delete, &a.body, Fields::Same, "after delete");
        for field in ["linode_id", "rdns", "assigned_entity"] {
            assert_eq!((field, &a.body[field]), (field, &Value::Null));
        }
        assert!(
            s.state().shared_list(2).is_empty(),
            "the share went with the Linode"
        );
        let c = s.counters();
        assert_eq!(
            c.ipv4_removed_with_linodes, 1,
            "only the Linode's own address"
        );

        // Another Linode of the region gets it.
        let next = nanode(&api, "us-east", "reserved-next").await;
        assert_eq!(
            assign(&api, "us-east", &addr, next).await.status,
            StatusCode::OK
        );
        let a = api
            .get(&format!("/v4/networking/reserved/ips/{addr}"))
            .await;
        assert_eq!(a.body["linode_id"], next);
        // Not one in another region.
        let west = nanode(&api, "us-west", "reserved-west").await;
        assert_eq!(
            assign(&api, "us-west", &addr, west).await.status,
            StatusCode::BAD_REQUEST
        );
    })
    .await;
}

#[tokio::test]
async fn unassigned_reserved_addresses_are_listed_and_never_allocated() {
    bounded(async {
        let s = start().await;
        let api = Api::new(&s);
        let addr = reserved_in(&api, "us-east").await;
        let a = api.get("/v4/networking/ips").await;
        let item = a.body["data"]
            .as_array()
            .expect("data")
            .iter()
            .find(|ip| ip["address"] == addr.as_str())
            .unwrap_or_else(|| panic!("{addr} not listed: {}", a.text))
            .clone();
        let list = recorded(
            "TestReservedIPAddresses_ListIPAddressesVariants",
            "GET",
            "/networking/ips",
            200,
            0,
        );
        same_shape(&list["data"][0], &item, Fields::Same, "networking/ips");
        assert_eq!(
            api.get(&format!("/v4/networking/ips/{addr}")).await.body,
            item
        );

        // Allocation takes the next free address of the pool, and the reserved one is not free.
        let a = api
            .post(
                "/v4/linode/instances/3/ips",
                r#"{"type": "ipv4", "public": true}"#,
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert_ne!(a.body["address"], addr.as_str());
        let other = reserved_in(&api, "us-east").await;
        assert_ne!(other, addr);
    })
    .await;
}

#[tokio::test]
async fn unreserving_an_assigned_address_leaves_it_on_its_linode() {
    bounded(async {
        let s = start().await;
        let api = Api::new(&s);
        let addr = reserved_in(&api, "us-east").await;
        assert_eq!(
            assign(&api, "us-east", &addr, 3).await.status,
            StatusCode::OK
        );
        let a = delete(&api, &format!("/v4/networking/reserved/ips/{addr}")).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        let a = api.get(&format!("/v4/linode/instances/3/ips/{addr}")).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert!(
            a.body.get("reserved").is_none(),
            "an ordinary address now: {}",
            a.text
        );
        assert_eq!(
            api.get(&format!("/v4/networking/reserved/ips/{addr}"))
                .await
                .status,
            StatusCode::NOT_FOUND
        );
        let c = s.counters();
        assert_eq!(
            (c.ipv4_reserved, c.ipv4_released, c.ips_assigned),
            (1, 1, 1)
        );
    })
    .await;
}

#[tokio::test]
async fn refusals_carry_linodes_recorded_reasons() {
    bounded(async {
        let s = start().await;
        let api = Api::new(&s);
        let variants = "TestReservedIPAddresses_ReserveIPVariants";
        for (region, n) in [("", 0), ("us", 1)] {
            let a = reserve(&api, json!({"region": region})).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{region:?}");
            assert_eq!(
                a.body,
                recorded(variants, "POST", RESERVED, 400, n),
                "{region:?}"
            );
        }

        set_knobs(&api, json!({"reserved_ipv4_limit": 1})).await;
        reserved_in(&api, "us-east").await;
        let a = reserve(&api, json!({"region": "us-east"})).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        let limit = recorded(
            "TestReservedIPAddresses_ExceedLimit",
            "POST",
            RESERVED,
            400,
            0,
        );
        assert_eq!(a.body, limit);
        assert_eq!(reasons(&a.body), [RESERVED_IPV4_LIMIT_REASON]);

        set_knobs(&api, json!({"reserved_ips_denied": true})).await;
        assert!(s.faults().allocation().reserved_ips_denied);
        let addr = s
            .state()
            .read(|a| a.reserved_ipv4().keys().next().copied())
            .expect("one");
        let one = format!("/v4/networking/reserved/ips/{addr}");
        for a in [
            api.get("/v4/networking/reserved/ips").await,
            reserve(&api, json!({"region": "us-east"})).await,
            api.get(&one).await,
            delete(&api, &one).await,
        ] {
            assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
            assert_eq!(reasons(&a.body), [RESERVED_IPS_DENIED_REASON]);
        }
        s.faults()
            .set_allocation(AllocationKnobs::default())
            .expect("knobs");
        assert_eq!(
            api.get(&one).await.status,
            StatusCode::OK,
            "nothing changed meanwhile"
        );
        let c = s.counters();
        assert_eq!((c.ipv4_reserved, c.ipv4_released), (1, 0));
    })
    .await;
}

#[tokio::test]
async fn the_state_dump_keeps_reservations_and_reloads() {
    bounded(async {
        let s = start().await;
        let api = Api::new(&s);
        let loose = reserved_in(&api, "us-east").await;
        let held = reserved_in(&api, "us-east").await;
        assert_eq!(
            assign(&api, "us-east", &held, 3).await.status,
            StatusCode::OK
        );
        let dump = s.state().dump();
        assert_eq!(dump.reserved_ipv4.len(), 2, "{dump:?}");

        let copy = StandIn::builder()
            .seed(dump.clone())
            .start()
            .await
            .expect("reloads");
        assert_eq!(copy.state().dump(), dump);
        let api = Api::new(&copy);
        let a = api
            .get(&format!("/v4/networking/reserved/ips/{held}"))
            .await;
        assert_eq!(a.body["linode_id"], 3);
        let a = api
            .get(&format!("/v4/networking/reserved/ips/{loose}"))
            .await;
        assert_eq!(a.body["linode_id"], Value::Null);
        // A reservation may only be on a Linode of its region.
        let mut bad = dump;
        for r in &mut bad.reserved_ipv4 {
            if r.address.to_string() == held {
                r.region = "us-west".into();
            }
        }
        assert!(StandIn::builder().seed(bad).start().await.is_err());
    })
    .await;
}
