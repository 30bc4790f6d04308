//! Behaviour of the Linode API stand-in: share semantics, auth, pagination, X-Filter,
//! faults, the admin API, the seed format and the binary.

mod standin_common;

use std::collections::BTreeSet;
use std::path::Path;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sharedip_e2e::standin::{FaultRule, NewLinode, Seed, ShareFailure, StandIn};
use standin_common::{bounded, reasons, start, Api};

fn shared_v4(ips: &Value) -> BTreeSet<String> {
    ips["ipv4"]["shared"]
        .as_array()
        .expect("ipv4.shared is a list")
        .iter()
        .map(|a| a["address"].as_str().expect("address").to_owned())
        .collect()
}

/// Ranges in ipv6.global whose route_target is not the Linode's own SLAAC: shared with it.
fn shared_v6(ips: &Value) -> BTreeSet<String> {
    let own = ips["ipv6"]["slaac"]["address"]
        .as_str()
        .expect("slaac")
        .to_owned();
    ips["ipv6"]["global"]
        .as_array()
        .expect("ipv6.global is a list")
        .iter()
        .filter(|r| r["route_target"].as_str() != Some(own.as_str()))
        .map(|r| r["range"].as_str().expect("range").to_owned())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn share_sets_the_whole_list_and_empty_list_unshares() {
    bounded(async {
        let s = start().await;
        let api = Api::new(&s);
        let holder_slaac = s.state().linode(1).expect("holder").slaac.to_string();

        let a = api.share(2, &["192.0.2.10", "2001:db8:100::"]).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert_eq!(a.body, json!({}));

        let ips = api.get("/v4/linode/instances/2/ips").await.body;
        assert_eq!(shared_v4(&ips), set(&["192.0.2.10"]));
        assert_eq!(shared_v6(&ips), set(&["2001:db8:100::"]));
        let global = ips["ipv6"]["global"].as_array().expect("global");
        assert_eq!(
            global[0]["route_target"],
            json!(holder_slaac),
            "route_target is the owner's SLAAC"
        );
        // The shared IPv4 entry names its owner.
        assert_eq!(ips["ipv4"]["shared"][0]["linode_id"], json!(1));

        let r = api.get("/v4/networking/ipv6/ranges/2001:db8:100::").await;
        assert_eq!(r.body["is_bgp"], json!(true));
        assert_eq!(r.body["linodes"], json!([1, 2]));

        // Another Linode's list is independent.
        assert_eq!(api.share(3, &["192.0.2.10"]).await.status, StatusCode::OK);
        assert_eq!(
            s.sharing().shared_with("192.0.2.10"),
            BTreeSet::from([2, 3])
        );

        // A new call replaces the whole list.
        assert_eq!(api.share(2, &["192.0.2.11"]).await.status, StatusCode::OK);
        let ips = api.get("/v4/linode/instances/2/ips").await.body;
        assert_eq!(shared_v4(&ips), set(&["192.0.2.11"]));
        assert!(shared_v6(&ips).is_empty());
        let r = api.get("/v4/networking/ipv6/ranges/2001:db8:100::").await;
        assert_eq!(r.body["is_bgp"], json!(false));
        assert_eq!(r.body["linodes"], json!([1]));
        assert_eq!(s.state().shared_list(2), vec!["192.0.2.11".to_owned()]);

        // The empty list removes everything.
        assert_eq!(api.share(2, &[]).await.status, StatusCode::OK);
        let ips = api.get("/v4/linode/instances/2/ips").await.body;
        assert!(shared_v4(&ips).is_empty());
        assert_eq!(s.sharing().shared_with("192.0.2.10"), BTreeSet::from([3]));
        assert_eq!(api.share(3, &[]).await.status, StatusCode::OK);
        assert!(s.sharing().nothing_shared());
    })
    .await;
}

#[tokio::test]
async fn ipv4_share_alias_and_v4beta_have_the_same_semantics() {
    bounded(async {
        let s = start().await;
        let api = Api::new(&s);
        let body = r#"{"linode_id": 3, "ips": ["192.0.2.10", "192.0.2.11"]}"#;
        assert_eq!(
            api.post("/v4/networking/ipv4/share", body).await.status,
            StatusCode::OK
        );
        assert_eq!(
            s.state().shared_list(3),
            vec!["192.0.2.10".to_owned(), "192.0.2.11".to_owned()]
        );
        let body = r#"{"linode_id": 3, "ips": ["192.0.2.11"]}"#;
        assert_eq!(
            api.post("/v4beta/networking/ips/share", body).await.status,
            StatusCode::OK
        );
        assert_eq!(s.state().shared_list(3), vec!["192.0.2.11".to_owned()]);
        let bad = api
            .post(
                "/v4beta/networking/ipv4/share",
                r#"{"linode_id": 3, "ips": ["192.0.2.40"]}"#,
            )
            .await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        let calls = s.request_log().share_calls();
        let templates: Vec<&str> = calls.iter().map(|c| c.template.as_str()).collect();
        assert_eq!(
            templates,
            [
                "/networking/ipv4/share",
                "/networking/ips/share",
                "/networking/ipv4/share"
            ]
        );
    })
    .await;
}

#[tokio::test]
async fn share_rejections_are_400_on_ips_and_change_nothing() {
    bounded(async {
        let s = start().await;
        let api = Api::new(&s);
        assert_eq!(api.share(2, &["192.0.2.10"]).await.status, StatusCode::OK);
        let before = s.sharing();

        let cases: &[(&[&str], &str)] = &[
            (&["192.0.2.40"], "same region"), // us-west address to a us-east Linode
            (&["2001:db8:400::"], "same region"), // us-west range
            (
                &["192.0.2.99"],
                "not an IPv4 address or IPv6 range on your account",
            ),
            (
                &["2001:db8:999::"],
                "not an IPv4 address or IPv6 range on your account",
            ),
            (
                &["198.51.100.2"],
                "cannot be shared with the Linode that owns it",
            ),
            (&["2001:db8:6::2"], "SLAAC"),
            (&["2001:db8:100::/64"], "without their /56 or /64 prefix"),
            (&["not-an-ip"], "not a valid IP address"),
            // One bad address fails the whole call.
            (
                &["192.0.2.11", "192.0.2.99"],
                "not an IPv4 address or IPv6 range on your account",
            ),
        ];
        for (ips, reason) in cases {
            let a = api.share(2, ips).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{ips:?}: {}", a.text);
            let errors = a.body["errors"].as_array().expect("errors list");
            assert!(!errors.is_empty());
            for e in errors {
                assert_eq!(e["field"], json!("ips"), "{ips:?}: {}", a.text);
            }
            assert!(
                reasons(&a.body).iter().any(|r| r.contains(reason)),
                "{ips:?}: expected a reason containing {reason:?}, got {}",
                a.text
            );
            assert_eq!(s.sharing(), before, "{ips:?} changed the state");
        }
        // The owner cannot receive its own address.
        let a = api.share(1, &["192.0.2.10"]).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert!(reasons(&a.body)[0].contains("owns it"), "{}", a.text);
        // Every bad address is reported.
        let a = api.share(2, &["192.0.2.98", "192.0.2.99"]).await;
        assert_eq!(
            a.body["errors"].as_array().map(Vec::len),
            Some(2),
            "{}",
            a.text
        );

        // Unknown Linode: 404 Not found.
        let a = api.share(999, &["192.0.2.10"]).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND);
        assert_eq!(a.body, json!({"errors": [{"reason": "Not found"}]}));
        assert_eq!(s.sharing(), before);
    })
    .await;
}

#[tokio::test]
async fn share_body_is_validated() {
    bounded(async {
        let s = start().await;
        let api = Api::new(&s);
        let cases = [
            (r#"{"ips": []}"#, "linode_id"),
            (r#"{"linode_id": "2", "ips": []}"#, "linode_id"),
            (r#"{"linode_id": -2, "ips": []}"#, "linode_id"),
            (r#"{"linode_id": 2}"#, "ips"),
            (r#"{"linode_id": 2, "ips": "192.0.2.10"}"#, "ips"),
            (r#"{"linode_id": 2, "ips": [5]}"#, "ips"),
        ];
        for (body, field) in cases {
            let a = api.post("/v4/networking/ips/share", body).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.text);
            assert_eq!(
                a.body["errors"][0]["field"],
                json!(field),
                "{body}: {}",
                a.text
            );
        }
        for body in ["{not json", "", "[1,2]"] {
            let a = api.post("/v4/networking/ips/share", body).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body:?}: {}", a.text);
            assert!(a.body["errors"][0]["reason"].is_string());
        }
        assert!(s.sharing().nothing_shared());
    })
    .await;
}

#[tokio::test]
async fn bearer_auth_is_required_on_the_api_only() {
    bounded(async {
        let s = start().await;
        let unauth = Api::new(&s).without_token();
        for path in [
            "/v4/linode/instances",
            "/v4/networking/ips",
            "/v4beta/linode/instances/2",
        ] {
            let a = unauth.get(path).await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{path}");
            assert_eq!(a.body, json!({"errors": [{"reason": "Invalid Token"}]}));
        }
        let a = unauth.share(2, &["192.0.2.10"]).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        for header in [
            "Bearer wrong",
            "Basic dDBrZW4=",
            "t0ken",
            "Bearer t0ken2",
            "Bearer ",
        ] {
            let a = unauth
                .send(
                    Method::GET,
                    "/v4/linode/instances",
                    None,
                    &[("authorization", header)],
                )
                .await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{header}");
        }
        let a = unauth
            .send(
                Method::GET,
                "/v4/linode/instances",
                None,
                &[("authorization", "bearer t0ken")],
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "the scheme is case-insensitive");
        // Admin API needs no token.
        assert_eq!(unauth.get("/_standin/sharing").await.status, StatusCode::OK);
        assert!(s.sharing().nothing_shared());
    })
    .await;
}

#[tokio::test]
async fn unknown_paths_and_objects_are_404_and_wrong_methods_405() {
    bounded(async {
        let s = start().await;
        let api = Api::new(&s);
        for path in [
            "/v4/nope",
            "/v3/linode/instances",
            "/v4/linode/instances/999",
            "/v4/linode/instances/abc",
            "/v4/linode/instances/999/ips",
            "/v4/linode/instances/2/ips/192.0.2.10", // owned by 1, not shared with 2
            "/v4/networking/ips/192.0.2.99",
            "/v4/networking/ipv6/ranges/2001:db8:999::",
        ] {
            let a = api.get(path).await;
            assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}: {}", a.text);
            assert_eq!(
                a.body,
                json!({"errors": [{"reason": "Not found"}]}),
                "{path}"
            );
        }
        let a = api
            .send(Method::PATCH, "/v4/networking/ips/share", None, &[])
            .await;
        assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(a.body["errors"][0]["reason"].is_string());
        // Counted under their templates.
        assert_eq!(
            s.request_log()
                .count_status("GET", "/linode/instances/{linodeId}", 404),
            2
        );
        assert_eq!(s.request_log().count_status("GET", "<unmatched>", 404), 2);
    })
    .await;
}

#[tokio::test]
async fn pagination_follows_linode() {
    bounded(async {
        let s = start().await;
        for i in 0..60 {
            s.state()
                .create_linode(
                    &NewLinode::new("us-east")
                        .label(format!("bulk-{i:02}"))
                        .ipv4([]),
                )
                .expect("create");
        }
        let api = Api::new(&s);
        let a = api.get("/v4/linode/instances").await;
        assert_eq!(
            (
                a.body["page"].clone(),
                a.body["pages"].clone(),
                a.body["results"].clone()
            ),
            (json!(1), json!(1), json!(64))
        );
        assert_eq!(a.body["data"].as_array().map(Vec::len), Some(64));

        let mut seen = BTreeSet::new();
        for page in 1..=3 {
            let a = api
                .get(&format!("/v4/linode/instances?page={page}&page_size=25"))
                .await;
            assert_eq!(a.body["pages"], json!(3));
            assert_eq!(a.body["results"], json!(64));
            assert_eq!(a.body["page"], json!(page));
            for l in a.body["data"].as_array().expect("data") {
                seen.insert(l["id"].as_u64().expect("id"));
            }
            let want = if page == 3 { 14 } else { 25 };
            assert_eq!(a.body["data"].as_array().map(Vec::len), Some(want));
        }
        assert_eq!(seen.len(), 64, "pages cover every Linode once");

        let past = api.get("/v4/linode/instances?page=9&page_size=25").await;
        assert_eq!(past.status, StatusCode::OK);
        assert_eq!(past.body["data"], json!([]));

        for (q, field) in [
            ("page_size=24", "page_size"),
            ("page_size=501", "page_size"),
            ("page=0", "page"),
            ("page=x", "page"),
        ] {
            let a = api.get(&format!("/v4/networking/ips?{q}")).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{q}");
            assert_eq!(a.body["errors"][0]["field"], json!(field), "{q}");
        }
        let r = api.get("/v4/networking/ipv6/ranges?page_size=500").await;
        assert_eq!(r.body["results"], json!(2));
    })
    .await;
}

async fn filtered(api: &Api, path: &str, filter: &str) -> reqwest::StatusCode {
    api.send(Method::GET, path, None, &[("x-filter", filter)])
        .await
        .status
}

async fn ids(api: &Api, filter: &str) -> Vec<u64> {
    let a = api
        .send(
            Method::GET,
            "/v4/linode/instances",
            None,
            &[("x-filter", filter)],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{filter}: {}", a.text);
    a.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|l| l["id"].as_u64().expect("id"))
        .collect()
}

#[tokio::test]
async fn x_filter_supports_equality_and_or_and_operators() {
    bounded(async {
        let s = start().await;
        let api = Api::new(&s);
        assert_eq!(ids(&api, r#"{"region": "us-west"}"#).await, vec![4]);
        assert_eq!(ids(&api, r#"{"label": "node-a"}"#).await, vec![2]);
        assert_eq!(ids(&api, r#"{"id": 3}"#).await, vec![3]);
        assert_eq!(
            ids(
                &api,
                r#"{"+or": [{"label": "node-a"}, {"label": "node-b"}]}"#
            )
            .await,
            vec![2, 3]
        );
        assert_eq!(
            ids(
                &api,
                r#"{"+and": [{"region": "us-east"}, {"id": {"+gt": 1}}]}"#
            )
            .await,
            vec![2, 3]
        );
        assert_eq!(
            ids(
                &api,
                r#"{"region": "us-east", "label": {"+neq": "node-a"}}"#
            )
            .await,
            vec![1, 3]
        );
        assert_eq!(ids(&api, r#"{"tags": "lke"}"#).await, vec![2]);
        assert_eq!(
            ids(
                &api,
                r#"{"label": {"+contains": "node"}, "+order_by": "id", "+order": "desc"}"#
            )
            .await,
            vec![4, 3, 2]
        );
        assert_eq!(ids(&api, r#"{"ipv4": "198.51.100.3"}"#).await, vec![3]);
        assert_eq!(ids(&api, r#"{"image": "linode/debian12"}"#).await, vec![3]);
        assert_eq!(
            ids(
                &api,
                r#"{"+or": [{"id": 1}, {"+and": [{"region": "us-west"}, {"id": 4}]}]}"#
            )
            .await,
            vec![1, 4]
        );

        let a = api
            .send(
                Method::GET,
                "/v4/networking/ips",
                None,
                &[("x-filter", r#"{"address": "192.0.2.11"}"#)],
            )
            .await;
        assert_eq!(a.body["results"], json!(1));
        assert_eq!(a.body["data"][0]["rdns"], json!("shared.example.org"));
        let a = api
            .send(
                Method::GET,
                "/v4/networking/ips",
                None,
                &[("x-filter", r#"{"region": "us-west", "type": "ipv4"}"#)],
            )
            .await;
        let addrs: BTreeSet<String> = a.body["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|i| i["address"].as_str().expect("a").to_owned())
            .collect();
        assert_eq!(addrs, set(&["198.51.100.4", "192.0.2.40"]));

        for (path, filter) in [
            ("/v4/linode/instances", r#"{"status": "running"}"#), // not filterable
            ("/v4/linode/instances", r#"{"region": "us-east""#),  // malformed
            ("/v4/linode/instances", r#"["region"]"#),
            ("/v4/linode/instances", r#"{"+or": {"id": 1}}"#),
            ("/v4/linode/instances", r#"{"id": {"+like": 1}}"#),
            ("/v4/networking/ips", r#"{"linode_id": 1}"#),
            ("/v4/networking/ipv6/ranges", r#"{"region": "us-east"}"#),
        ] {
            let a = api
                .send(Method::GET, path, None, &[("x-filter", filter)])
                .await;
            assert_eq!(
                a.status,
                StatusCode::BAD_REQUEST,
                "{path} {filter}: {}",
                a.text
            );
            assert_eq!(a.body["errors"][0]["field"], json!("X-Filter"));
        }
        assert_eq!(
            filtered(&api, "/v4/networking/ipv6/ranges", "{}").await,
            StatusCode::OK
        );
    })
    .await;
}

#[tokio::test]
async fn injected_429_and_5xx_then_recovery_and_counts() {
    bounded(async {
        let s = start().await;
        let api = Api::new(&s);
        s.faults()
            .inject(
                FaultRule::rate_limit(2, 7)
                    .method("POST")
                    .path_prefix("/networking/ips/share"),
            )
            .expect("rule");
        // GETs are not affected.
        assert_eq!(api.get("/v4/linode/instances").await.status, StatusCode::OK);
        for _ in 0..2 {
            let a = api.share(2, &["192.0.2.10"]).await;
            assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(
                a.headers.get("retry-after").and_then(|v| v.to_str().ok()),
                Some("7")
            );
            assert!(a.body["errors"][0]["reason"].is_string());
            assert!(s.sharing().nothing_shared(), "a 429 changes nothing");
        }
        assert_eq!(api.share(2, &["192.0.2.10"]).await.status, StatusCode::OK);

        for status in [500u16, 502, 503] {
            s.faults()
                .inject(FaultRule::server_error(1, status))
                .expect("rule");
            let a = api.get("/v4/linode/instances/2/ips").await;
            assert_eq!(a.status.as_u16(), status);
            assert!(a.body["errors"][0]["reason"].is_string());
        }
        assert!(s.faults().inject(FaultRule::server_error(1, 404)).is_err());
        assert_eq!(s.faults().pending(), 0);
        assert_eq!(
            api.get("/v4/linode/instances/2/ips").await.status,
            StatusCode::OK
        );

        // Share failure for one Linode only.
        s.faults()
            .fail_share_for(3, ShareFailure::default())
            .expect("knob");
        assert_eq!(
            api.share(3, &["192.0.2.10"]).await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(api.share(2, &["192.0.2.11"]).await.status, StatusCode::OK);
        s.faults().clear_share_failure(3);
        assert_eq!(api.share(3, &["192.0.2.10"]).await.status, StatusCode::OK);

        // Latency still answers correctly (no timing assertion).
        s.faults().set_latency(std::time::Duration::from_millis(50));
        assert_eq!(
            api.get("/v4/linode/instances/3").await.status,
            StatusCode::OK
        );
        s.faults().clear();

        let log = s.request_log();
        assert_eq!(log.count_status("POST", "/networking/ips/share", 429), 2);
        assert_eq!(log.count_status("POST", "/networking/ips/share", 200), 3);
        assert_eq!(log.count_status("POST", "/networking/ips/share", 500), 1);
        assert_eq!(log.count("GET", "/linode/instances/{linodeId}/ips"), 4);
        let per_linode = log.successful_shares_per_linode();
        assert_eq!(per_linode.get(&2), Some(&2));
        assert_eq!(per_linode.get(&3), Some(&1));
        // Injected 429s never reach the handler.
        assert_eq!(log.share_calls().len(), 4);
    })
    .await;
}

/// A call held back by the reply delay has taken effect before its answer leaves, counts
/// as in flight until then, and stops counting when its client goes away.
#[tokio::test]
async fn reply_delay_applies_first_and_counts_the_call_in_flight() {
    bounded(async {
        let s = start().await;
        s.faults()
            .set_reply_delay(std::time::Duration::from_secs(3600));
        let call = {
            let api = Api::new(&s);
            tokio::spawn(async move { api.share(2, &["192.0.2.10"]).await })
        };
        let log = s.request_log();
        while !(s.sharing().shared_with("192.0.2.10").contains(&2)
            && log.in_flight("POST", "/networking/ips/share") == 1)
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(!call.is_finished(), "the answer is held back");
        let view = s.faults().view();
        assert_eq!(view.reply_delay_ms, 3_600_000);
        // The client gives up: the request is dropped and no longer in flight.
        call.abort();
        while log.in_flight("POST", "/networking/ips/share") != 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(log.in_flight_counts(), vec![]);
        // Without the delay, answers come at once again.
        s.faults().set_reply_delay(std::time::Duration::ZERO);
        assert_eq!(
            Api::new(&s).share(2, &["192.0.2.11"]).await.status,
            StatusCode::OK
        );
    })
    .await;
}

#[tokio::test]
async fn admin_http_api_seeds_reads_and_injects() {
    bounded(async {
        let s = start().await;
        let api = Api::new(&s).without_token();
        let a = api
            .post(
                "/_standin/linodes",
                r#"{"id": 50, "label": "node-c", "region": "us-east", "slaac": "2001:db8:6::50"}"#,
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert_eq!(a.body["ipv6"], json!("2001:db8:6::50/128"));
        assert_eq!(
            a.body["ipv4"].as_array().map(Vec::len),
            Some(1),
            "one public IPv4 allocated"
        );
        let a = api
            .post(
                "/_standin/ipv4",
                r#"{"address": "198.51.100.77", "linode_id": 1}"#,
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        let a = api
            .post(
                "/_standin/ipv6-ranges",
                r#"{"range": "2001:db8:500::/64", "linode_id": 1}"#,
            )
            .await;
        assert_eq!(
            a.body["route_target"],
            json!(s.state().linode(1).expect("l").slaac.to_string())
        );
        let a = api
            .post(
                "/_standin/linodes",
                r#"{"region": "us-east", "label": "node-a"}"#,
            )
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "labels are unique");
        let a = api
            .post(
                "/_standin/linodes",
                r#"{"region": "us-east", "colour": "red"}"#,
            )
            .await;
        assert_eq!(
            a.status,
            StatusCode::BAD_REQUEST,
            "unknown fields are rejected"
        );

        // Long-poll: wait for the next version while a share happens.
        let v0 = api.get("/_standin/sharing").await.body["version"]
            .as_u64()
            .expect("version");
        let poll_api = Api::new(&s).without_token();
        let poll = tokio::spawn(async move {
            poll_api
                .get(&format!("/_standin/sharing?after={v0}&timeout_ms=20000"))
                .await
                .body
        });
        let a = api
            .post(
                "/_standin/share",
                r#"{"linode_id": 50, "ips": ["198.51.100.77", "2001:db8:500::"]}"#,
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        let snap = poll.await.expect("poll task");
        assert!(snap["version"].as_u64().expect("v") > v0);
        assert_eq!(snap["ips"]["198.51.100.77"]["shared_with"], json!([50]));
        assert_eq!(snap["ips"]["198.51.100.77"]["owner"], json!(1));
        assert_eq!(snap["ips"]["2001:db8:500::"]["kind"], json!("ipv6_range"));
        assert_eq!(snap["ips"]["2001:db8:500::"]["prefix"], json!(64));

        // Admin share applies the same rules.
        let a = api
            .post(
                "/_standin/share",
                r#"{"linode_id": 50, "ips": ["192.0.2.40"]}"#,
            )
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);

        // Faults over HTTP.
        let a = api
            .post(
                "/_standin/faults/http",
                r#"{"kind": "rate_limit", "retry_after_secs": 3, "count": 1, "method": "GET"}"#,
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        let a = api
            .post(
                "/_standin/faults/http",
                r#"{"kind": "server_error", "status": 418, "count": 1}"#,
            )
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        let authed = Api::new(&s);
        let a = authed.get("/v4/networking/ips").await;
        assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            a.headers.get("retry-after").and_then(|v| v.to_str().ok()),
            Some("3")
        );
        let a = api
            .send(
                Method::PUT,
                "/_standin/faults/share/2",
                Some(r#"{"status": 503}"#),
                &[],
            )
            .await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(
            api.get("/_standin/faults").await.body["share_failures"]["2"]["status"],
            json!(503)
        );
        assert_eq!(
            authed.share(2, &[]).await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        api.send(Method::DELETE, "/_standin/faults/share/2", None, &[])
            .await;
        assert_eq!(authed.share(2, &[]).await.status, StatusCode::OK);
        let a = api
            .send(
                Method::PUT,
                "/_standin/faults/latency",
                Some(r#"{"ms": 0}"#),
                &[],
            )
            .await;
        assert_eq!(a.status, StatusCode::OK);

        let r = api.get("/_standin/requests").await.body;
        let counts = r["counts"].as_array().expect("counts");
        assert!(counts
            .iter()
            .any(|c| c["template"] == json!("/networking/ips")
                && c["status"] == json!(429)
                && c["count"] == json!(1)));
        assert_eq!(
            r["share_calls"].as_array().map(Vec::len),
            Some(2),
            "admin shares are not logged"
        );
        assert!(!counts.iter().any(|c| c["template"]
            .as_str()
            .is_some_and(|t| t.starts_with("/_standin"))));

        // Dump → seed of a fresh stand-in reproduces the state.
        let dump = api.get("/_standin/state").await.body;
        let seed: Seed = serde_json::from_value(dump).expect("dump is a seed");
        let copy = StandIn::builder().seed(seed).start().await.expect("reload");
        assert_eq!(copy.sharing().ips, s.sharing().ips);
        copy.shutdown().await;

        assert_eq!(api.post("/_standin/reset", "").await.status, StatusCode::OK);
        assert!(s.sharing().ips.is_empty());
        assert_eq!(
            authed.get("/v4/linode/instances").await.body["results"],
            json!(0)
        );
    })
    .await;
}

#[tokio::test]
async fn subscribers_see_each_change_once_and_deletes_drop_shares() {
    bounded(async {
        let s = start().await;
        let api = Api::new(&s);
        let mut rx = s.subscribe();
        let v0 = rx.borrow_and_update().version;
        assert_eq!(
            api.share(2, &["192.0.2.10", "2001:db8:100::"]).await.status,
            StatusCode::OK
        );
        rx.changed().await.expect("change");
        let snap = rx.borrow_and_update().clone();
        assert_eq!(snap.version, v0 + 1);
        assert_eq!(snap.holders("192.0.2.10"), BTreeSet::from([1, 2]));
        // Same list again: no change published.
        assert_eq!(
            api.share(2, &["2001:db8:100::", "192.0.2.10"]).await.status,
            StatusCode::OK
        );
        assert!(!rx.has_changed().expect("open"));

        // Deleting the receiving Linode drops its list; deleting the owner drops its IPs.
        let a = api
            .send(Method::DELETE, "/v4/linode/instances/2", None, &[])
            .await;
        assert_eq!(a.status, StatusCode::OK);
        rx.changed().await.expect("change");
        assert!(rx.borrow_and_update().nothing_shared());
        assert_eq!(api.share(3, &["192.0.2.10"]).await.status, StatusCode::OK);
        assert_eq!(
            api.send(Method::DELETE, "/v4/linode/instances/1", None, &[])
                .await
                .status,
            StatusCode::OK
        );
        let snap = s.sharing();
        assert!(!snap.ips.contains_key("192.0.2.10"));
        assert!(!snap.ips.contains_key("2001:db8:100::"));
        assert!(s.state().shared_list(3).is_empty());
        assert_eq!(
            api.get("/v4/linode/instances/1").await.status,
            StatusCode::NOT_FOUND
        );
    })
    .await;
}

#[tokio::test]
async fn simple_write_operations_follow_the_spec() {
    bounded(async {
        let s = start().await;
        let api = Api::new(&s);
        // Allocate a private IPv4 (one per Linode) and a public one.
        let a = api
            .post(
                "/v4/linode/instances/3/ips",
                r#"{"type": "ipv4", "public": false}"#,
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert_eq!(a.body["public"], json!(false));
        let a = api
            .post(
                "/v4/linode/instances/3/ips",
                r#"{"type": "ipv4", "public": false}"#,
            )
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        let a = api
            .post(
                "/v4/networking/ips",
                r#"{"type": "ipv4", "public": true, "linode_id": 3}"#,
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        let new_ip = a.body["address"].as_str().expect("address").to_owned();
        // rDNS.
        let a = api
            .send(
                Method::PUT,
                &format!("/v4/networking/ips/{new_ip}"),
                Some(r#"{"rdns": "x.example.org"}"#),
                &[],
            )
            .await;
        assert_eq!(a.body["rdns"], json!("x.example.org"));
        let a = api
            .send(
                Method::PUT,
                &format!("/v4/linode/instances/3/ips/{new_ip}"),
                Some(r#"{"rdns": null}"#),
                &[],
            )
            .await;
        assert!(a.body["rdns"]
            .as_str()
            .expect("rdns")
            .ends_with(".ip.linodeusercontent.com"));
        // Delete it; the last public one cannot go.
        let a = api
            .send(
                Method::DELETE,
                &format!("/v4/linode/instances/3/ips/{new_ip}"),
                None,
                &[],
            )
            .await;
        assert_eq!(a.status, StatusCode::OK);
        let a = api
            .send(
                Method::DELETE,
                "/v4/linode/instances/3/ips/198.51.100.3",
                None,
                &[],
            )
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        // Update a Linode.
        let a = api
            .send(
                Method::PUT,
                "/v4/linode/instances/3",
                Some(r#"{"label": "node-b2", "tags": ["x"]}"#),
                &[],
            )
            .await;
        assert_eq!(
            (a.body["label"].clone(), a.body["tags"].clone()),
            (json!("node-b2"), json!(["x"]))
        );
        let a = api
            .send(
                Method::PUT,
                "/v4/linode/instances/3",
                Some(r#"{"label": "a--b"}"#),
                &[],
            )
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        // IPv6 ranges: one per region via the API; shared ranges cannot be deleted.
        let a = api
            .post(
                "/v4/networking/ipv6/ranges",
                r#"{"linode_id": 3, "prefix_length": 64}"#,
            )
            .await;
        assert_eq!(
            a.status,
            StatusCode::BAD_REQUEST,
            "us-east already has a range: {}",
            a.text
        );
        let a = api
            .post(
                "/v4/networking/ipv6/ranges",
                r#"{"linode_id": 3, "route_target": "2001:db8:6::2", "prefix_length": 64}"#,
            )
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        s.state()
            .create_linode(&NewLinode::new("eu-central").id(70))
            .expect("create");
        let a = api
            .post(
                "/v4/networking/ipv6/ranges",
                r#"{"linode_id": 70, "prefix_length": 56}"#,
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert!(a.body["range"].as_str().expect("range").ends_with("/56"));
        assert_eq!(
            api.share(2, &["2001:db8:100::"]).await.status,
            StatusCode::OK
        );
        let a = api
            .send(
                Method::DELETE,
                "/v4/networking/ipv6/ranges/2001:db8:100::",
                None,
                &[],
            )
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert_eq!(api.share(2, &[]).await.status, StatusCode::OK);
        let a = api
            .send(
                Method::DELETE,
                "/v4/networking/ipv6/ranges/2001:db8:100::",
                None,
                &[],
            )
            .await;
        assert_eq!(a.status, StatusCode::OK);
        // Assign refuses an empty list, in Linode's error shape (its rules: standin_lifecycle).
        let a = api
            .post(
                "/v4/networking/ips/assign",
                r#"{"region": "us-east", "assignments": []}"#,
            )
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert_eq!(a.body["errors"][0]["field"], "assignments");
    })
    .await;
}

#[tokio::test]
async fn seeds_are_validated_and_all_or_nothing() {
    bounded(async {
        let p = Path::new("inline");
        assert!(Seed::from_str("linodes: [{region: us-east, colour: red}]", p).is_err());
        assert!(Seed::from_str("hosts: []", p).is_err());
        // The documented example parses and applies.
        let doc = r#"
linodes:
  - id: 100
    label: ip-holder
    region: us-east
    type: g6-nanode-1
    status: offline
    slaac: "2001:db8:1::100"
    ipv4: []
    private_ipv4: 192.168.130.5
    tags: [lab]
  - {id: 101, region: us-east}
ipv4:
  - address: 192.0.2.10
    linode_id: 100
    public: true
    rdns: shared.example.org
ipv6_ranges:
  - range: "2001:db8:100::/64"
    linode_id: 100
sharing:
  - linode_id: 101
    ips: ["192.0.2.10", "2001:db8:100::"]
"#;
        let seed = Seed::from_str(doc, p).expect("documented seed parses");
        let s = StandIn::builder().seed(seed).start().await.expect("starts");
        assert_eq!(
            s.sharing().shared_with("2001:db8:100::"),
            BTreeSet::from([101])
        );
        // A seed that breaks a rule is rejected and leaves the state as it was.
        let bad = Seed::from_str(
            "linodes: [{id: 102, region: us-east}]\nsharing: [{linode_id: 100, ips: [192.0.2.10]}]",
            p,
        )
        .expect("parses");
        assert!(s.state().apply_seed(&bad).is_err());
        assert!(s.state().linode(102).is_none());
        for range in ["2001:db8:100::1/64", "2001:db8:200::/48", "2001:db8:300::"] {
            let bad = Seed::from_str(
                &format!("ipv6_ranges: [{{range: \"{range}\", linode_id: 100}}]"),
                p,
            )
            .expect("parses");
            assert!(s.state().apply_seed(&bad).is_err(), "{range}");
        }
        s.shutdown().await;
    })
    .await;
}

/// Kills the child on drop, also when an assertion fails.
struct Child(tokio::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

#[tokio::test]
async fn binary_serves_a_seed_with_a_token_file() {
    use tokio::io::AsyncBufReadExt;
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        std::fs::write(&token, "file-t0ken\n").expect("write token");
        let seed = dir.path().join("seed.yaml");
        std::fs::write(&seed, standin_common::SEED_YAML).expect("write seed");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_linode-standin"))
            .args(["--listen", "127.0.0.1:0", "--token-file"])
            .arg(&token)
            .arg("--seed")
            .arg(&seed)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("binary starts");
        let stderr = child.stderr.take().expect("stderr piped");
        let guard = Child(child);
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut base = None;
        while let Some(line) = lines.next_line().await.expect("read stderr") {
            assert!(!line.contains("file-t0ken"), "token logged: {line}");
            if let Some(i) = line.find("api=") {
                let rest = &line[i + 4..];
                base = Some(rest.split_whitespace().next().expect("url").to_owned());
                break;
            }
        }
        let base = base.expect("binary logged its API URL");
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .expect("client");
        let a = http
            .get(format!("{base}/linode/instances"))
            .bearer_auth("file-t0ken")
            .send()
            .await
            .expect("reachable");
        assert_eq!(a.status(), StatusCode::OK);
        let body: Value = a.json().await.expect("json");
        assert_eq!(body["results"], json!(4));
        let a = http
            .get(format!("{base}/linode/instances"))
            .bearer_auth("t0ken")
            .send()
            .await
            .expect("reachable");
        assert_eq!(a.status(), StatusCode::UNAUTHORIZED);
        drop(guard);
    })
    .await;
}
