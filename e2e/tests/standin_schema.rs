//! Schema conformance: every body the stand-in returns (success and error) validates
//! against the response schema of its operation in the Linode OpenAPI subset, and the
//! validator rejects wrong bodies.

mod standin_common;

use std::path::PathBuf;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sharedip_e2e::standin::openapi::{OpenApiSpec, ResponseKind, Strictness, SPEC_CORRECTIONS};
use standin_common::{bounded, start, Api};

fn spec_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/linode/openapi/openapi-ip-sharing.yaml")
}

fn spec() -> OpenApiSpec {
    let path = spec_path();
    assert!(
        path.is_file(),
        "the Linode OpenAPI subset is missing at {} (vendored in crates/linode/openapi)",
        path.display()
    );
    OpenApiSpec::load(&path).expect("spec loads")
}

struct Case {
    method: Method,
    path: String,
    template: &'static str,
    body: Option<&'static str>,
    headers: Vec<(&'static str, &'static str)>,
    want: u16,
}

fn case(
    method: Method,
    path: &str,
    template: &'static str,
    body: Option<&'static str>,
    want: u16,
) -> Case {
    Case {
        method,
        path: path.to_owned(),
        template,
        body,
        headers: Vec::new(),
        want,
    }
}

#[tokio::test]
async fn every_response_matches_its_schema() {
    bounded(async {
        let spec = spec();
        let s = start().await;
        let api = Api::new(&s);
        // Sharing in place so shared lists, ipv6.global and IPv6RangeBGP.linodes are non-trivial.
        s.state()
            .share(2, &["192.0.2.10", "2001:db8:100::"])
            .expect("share");
        s.state().share(3, &["192.0.2.11"]).expect("share");

        use Method as M;
        let li = "/linode/instances";
        let lid = "/linode/instances/{linodeId}";
        let lips = "/linode/instances/{linodeId}/ips";
        let lip = "/linode/instances/{linodeId}/ips/{address}";
        let nips = "/networking/ips";
        let nip = "/networking/ips/{address}";
        let share = "/networking/ips/share";
        let share4 = "/networking/ipv4/share";
        let ranges = "/networking/ipv6/ranges";
        let range = "/networking/ipv6/ranges/{range}";
        let mut cases = vec![
            case(
                M::PUT,
                "/v4/networking/ips/2001:db8:6::2",
                nip,
                Some(r#"{"rdns": "node-a.example.org"}"#),
                200,
            ),
            case(M::GET, "/v4/linode/instances", li, None, 200),
            case(
                M::GET,
                "/v4beta/linode/instances?page=2&page_size=25",
                li,
                None,
                200,
            ),
            case(M::GET, "/v4/linode/instances?page_size=5", li, None, 400),
            case(M::GET, "/v4/linode/instances/1", lid, None, 200),
            case(M::GET, "/v4/linode/instances/3", lid, None, 200),
            case(M::GET, "/v4/linode/instances/999", lid, None, 404),
            case(
                M::PUT,
                "/v4/linode/instances/3",
                lid,
                Some(r#"{"label": "node-b2", "group": "g", "watchdog_enabled": false}"#),
                200,
            ),
            case(
                M::PUT,
                "/v4/linode/instances/3",
                lid,
                Some(r#"{"label": 7}"#),
                400,
            ),
            case(M::GET, "/v4/linode/instances/1/ips", lips, None, 200),
            case(M::GET, "/v4/linode/instances/2/ips", lips, None, 200),
            case(M::GET, "/v4/linode/instances/3/ips", lips, None, 200),
            case(M::GET, "/v4/linode/instances/4/ips", lips, None, 200),
            case(M::GET, "/v4/linode/instances/999/ips", lips, None, 404),
            case(
                M::POST,
                "/v4/linode/instances/4/ips",
                lips,
                Some(r#"{"type": "ipv4", "public": false}"#),
                200,
            ),
            case(
                M::POST,
                "/v4/linode/instances/4/ips",
                lips,
                Some(r#"{"type": "ipv6", "public": true}"#),
                400,
            ),
            case(
                M::GET,
                "/v4/linode/instances/2/ips/198.51.100.2",
                lip,
                None,
                200,
            ),
            case(
                M::GET,
                "/v4/linode/instances/2/ips/192.168.130.5",
                lip,
                None,
                200,
            ),
            case(
                M::GET,
                "/v4/linode/instances/2/ips/192.0.2.10",
                lip,
                None,
                200,
            ),
            case(
                M::GET,
                "/v4/linode/instances/2/ips/2001:db8:6::2",
                lip,
                None,
                200,
            ),
            case(
                M::GET,
                "/v4/linode/instances/2/ips/192.0.2.99",
                lip,
                None,
                404,
            ),
            case(
                M::PUT,
                "/v4/linode/instances/2/ips/198.51.100.2",
                lip,
                Some(r#"{"rdns": "a.example.org"}"#),
                200,
            ),
            case(
                M::PUT,
                "/v4/linode/instances/2/ips/198.51.100.2",
                lip,
                Some(r#"{"rdns": 1}"#),
                400,
            ),
            case(
                M::DELETE,
                "/v4/linode/instances/2/ips/192.168.130.5",
                lip,
                None,
                200,
            ),
            case(
                M::DELETE,
                "/v4/linode/instances/2/ips/198.51.100.2",
                lip,
                None,
                400,
            ),
            case(M::GET, "/v4/networking/ips", nips, None, 200),
            case(
                M::GET,
                "/v4/networking/ips?page=1&page_size=25",
                nips,
                None,
                200,
            ),
            case(
                M::GET,
                "/v4/networking/ips",
                nips,
                Some(r#"{"skip_ipv6_rdns": true}"#),
                200,
            ),
            case(
                M::POST,
                "/v4/networking/ips",
                nips,
                Some(r#"{"type": "ipv4", "public": true, "linode_id": 4}"#),
                200,
            ),
            case(
                M::POST,
                "/v4/networking/ips",
                nips,
                Some(r#"{"type": "ipv4", "public": true}"#),
                400,
            ),
            case(M::GET, "/v4/networking/ips/192.0.2.10", nip, None, 200),
            case(M::GET, "/v4/networking/ips/192.168.130.5", nip, None, 404),
            case(M::GET, "/v4/networking/ips/198.51.100.3", nip, None, 200),
            case(M::GET, "/v4/networking/ips/2001:db8:6::2", nip, None, 200),
            case(
                M::GET,
                "/v4/networking/ips/fe80::f03c:91ff:fe00:3",
                nip,
                None,
                200,
            ),
            case(
                M::PUT,
                "/v4/networking/ips/192.0.2.11",
                nip,
                Some(r#"{"rdns": null}"#),
                200,
            ),
            case(
                M::PUT,
                "/v4/networking/ips/192.0.2.99",
                nip,
                Some(r#"{"rdns": null}"#),
                404,
            ),
            case(
                M::POST,
                "/v4/networking/ips/assign",
                "/networking/ips/assign",
                Some(r#"{"region": "us-east", "assignments": []}"#),
                400,
            ),
            case(
                M::POST,
                "/v4/networking/ips/assign",
                "/networking/ips/assign",
                Some(
                    r#"{"region": "us-west", "assignments": [{"address": "192.0.2.40", "linode_id": 4}]}"#,
                ),
                200,
            ),
            case(
                M::POST,
                "/v4/networking/ips/share",
                share,
                Some(r#"{"linode_id": 3, "ips": ["192.0.2.11", "2001:db8:100::"]}"#),
                200,
            ),
            case(
                M::POST,
                "/v4/networking/ips/share",
                share,
                Some(r#"{"linode_id": 3, "ips": ["192.0.2.40"]}"#),
                400,
            ),
            case(
                M::POST,
                "/v4/networking/ips/share",
                share,
                Some(r#"{"linode_id": 999, "ips": []}"#),
                404,
            ),
            case(
                M::POST,
                "/v4/networking/ips/share",
                share,
                Some("{oops"),
                400,
            ),
            case(
                M::POST,
                "/v4/networking/ipv4/share",
                share4,
                Some(r#"{"linode_id": 3, "ips": ["192.0.2.11"]}"#),
                200,
            ),
            case(
                M::POST,
                "/v4/networking/ipv4/share",
                share4,
                Some(r#"{"linode_id": 3}"#),
                400,
            ),
            case(M::GET, "/v4/networking/ipv6/ranges", ranges, None, 200),
            case(
                M::GET,
                "/v4/networking/ipv6/ranges?page_size=1000",
                ranges,
                None,
                400,
            ),
            case(
                M::POST,
                "/v4/networking/ipv6/ranges",
                ranges,
                Some(r#"{"linode_id": 70, "prefix_length": 64}"#),
                200,
            ),
            case(
                M::POST,
                "/v4/networking/ipv6/ranges",
                ranges,
                Some(r#"{"prefix_length": 48, "linode_id": 3}"#),
                400,
            ),
            case(
                M::GET,
                "/v4/networking/ipv6/ranges/2001:db8:100::",
                range,
                None,
                200,
            ),
            case(
                M::GET,
                "/v4/networking/ipv6/ranges/2001:db8:400::",
                range,
                None,
                200,
            ),
            case(
                M::GET,
                "/v4/networking/ipv6/ranges/2001:db8:999::",
                range,
                None,
                404,
            ),
            case(
                M::DELETE,
                "/v4/networking/ipv6/ranges/2001:db8:100::",
                range,
                None,
                400,
            ),
            case(
                M::DELETE,
                "/v4/networking/ipv6/ranges/2001:db8:400::",
                range,
                None,
                200,
            ),
            case(M::DELETE, "/v4/linode/instances/999", lid, None, 404),
            case(M::DELETE, "/v4/linode/instances/4", lid, None, 200),
        ];
        let mut filtered = case(M::GET, "/v4/linode/instances", li, None, 400);
        filtered
            .headers
            .push(("x-filter", r#"{"status": "running"}"#));
        cases.push(filtered);
        let mut filtered = case(M::GET, "/v4/networking/ips", nips, None, 200);
        filtered.headers.push((
            "x-filter",
            r#"{"+or": [{"region": "us-west"}, {"type": "ipv6"}]}"#,
        ));
        cases.push(filtered);
        s.state()
            .create_linode(&sharedip_e2e::standin::NewLinode::new("eu-central").id(70))
            .expect("linode for range creation");

        let mut failures = Vec::new();
        for c in &cases {
            let a = api
                .send(c.method.clone(), &c.path, c.body, &c.headers)
                .await;
            if a.status.as_u16() != c.want {
                failures.push(format!(
                    "{} {}: status {} (want {}): {}",
                    c.method, c.path, a.status, c.want, a.text
                ));
                continue;
            }
            assert!(
                !a.body.is_null(),
                "{} {}: body is not JSON: {:?}",
                c.method,
                c.path,
                a.text
            );
            let v = spec
                .response_validator(
                    c.method.as_str(),
                    c.template,
                    a.status.as_u16(),
                    Strictness::Strict,
                )
                .expect("validator builds");
            if let Err(e) = v.check(&a.body) {
                failures.push(format!("{} {}: {e}", c.method, c.path));
            }
        }

        // Answers that come before any route: 401, injected 429/5xx, unknown path.
        let unauth = Api::new(&s).without_token();
        let mut extra = vec![
            unauth.get("/v4/linode/instances").await,
            api.get("/v4/no/such/path").await,
        ];
        s.faults()
            .inject(sharedip_e2e::standin::FaultRule::rate_limit(1, 2))
            .expect("rule");
        extra.push(api.get("/v4/linode/instances").await);
        s.faults()
            .inject(sharedip_e2e::standin::FaultRule::server_error(1, 502))
            .expect("rule");
        extra.push(
            api.post("/v4/networking/ips/share", r#"{"linode_id": 2, "ips": []}"#)
                .await,
        );
        let error_schema = spec
            .response_validator("GET", li, 500, Strictness::Strict)
            .expect("validator builds");
        for a in &extra {
            assert_ne!(a.status, StatusCode::OK);
            if let Err(e) = error_schema.check(&a.body) {
                failures.push(format!("pre-route {}: {e}", a.status));
            }
        }
        assert!(
            failures.is_empty(),
            "{} mismatches:\n{}",
            failures.len(),
            failures.join("\n\n")
        );

        // Every operation of the spec was exercised and succeeded once.
        for (method, path) in spec.operations() {
            let any = s.request_log().count(&method, &path);
            assert!(any > 0, "{method} {path} was never exercised");
            assert!(
                s.request_log().count_status(&method, &path, 200) > 0,
                "{method} {path} never answered 200"
            );
        }
    })
    .await;
}

fn valid_linode() -> Value {
    json!({
        "id": 123, "label": "linode123", "region": "us-east", "image": null, "type": "g6-standard-1",
        "group": "", "tags": [], "status": "running", "hypervisor": "kvm",
        "created": "2018-01-01T00:01:01", "updated": "2018-01-01T00:01:01",
        "ipv4": ["203.0.113.1"], "ipv6": "2001:db8::1/128",
        "specs": {"disk": 1, "memory": 1, "vcpus": 1, "gpus": 0, "transfer": 1},
        "alerts": {"cpu": 90, "network_in": 10, "network_out": 10, "transfer_quota": 80, "io": 10000},
        "backups": {"enabled": false, "available": false, "schedule": {"day": null, "window": null}},
        "watchdog_enabled": true, "host_uuid": "5a4e7f00-0000-4000-8000-00000000007b", "has_user_data": false
    })
}

fn with(mut v: Value, pointer: &str, new: Value) -> Value {
    *v.pointer_mut(pointer).expect("pointer exists") = new;
    v
}

#[test]
fn the_validator_rejects_wrong_bodies() {
    let spec = spec();
    let linode = spec
        .response_validator(
            "GET",
            "/linode/instances/{linodeId}",
            200,
            Strictness::Strict,
        )
        .expect("validator");
    linode
        .check(&valid_linode())
        .expect("a correct Linode is accepted");
    let wrong = [
        (
            "unknown status",
            with(valid_linode(), "/status", json!("exploded")),
        ),
        ("id as string", with(valid_linode(), "/id", json!("123"))),
        (
            "ipv6 without /128",
            with(valid_linode(), "/ipv6", json!("2001:db8::1")),
        ),
        (
            "created not a date",
            with(valid_linode(), "/created", json!("yesterday")),
        ),
        (
            "label too short",
            with(valid_linode(), "/label", json!("ab")),
        ),
        (
            "tags not strings",
            with(valid_linode(), "/tags", json!([1])),
        ),
        (
            "image not a string",
            with(valid_linode(), "/image", json!(5)),
        ),
        (
            "backup day not in enum",
            with(valid_linode(), "/backups/schedule/day", json!("Someday")),
        ),
        (
            "undocumented field",
            with(
                valid_linode(),
                "/specs",
                json!({"disk": 1, "colour": "red"}),
            ),
        ),
        (
            "region null (not nullable)",
            with(valid_linode(), "/region", Value::Null),
        ),
    ];
    for (what, body) in &wrong {
        assert!(linode.check(body).is_err(), "{what} was accepted");
    }
    // image is nullable (next to allOf), and a string image is fine.
    linode
        .check(&with(valid_linode(), "/image", json!("linode/debian12")))
        .expect("image string");
    // Strictness: undocumented fields pass as the spec is written, fail in strict mode.
    let loose = spec
        .response_validator(
            "GET",
            "/linode/instances/{linodeId}",
            200,
            Strictness::AsSpecified,
        )
        .expect("validator");
    let extra = with(valid_linode(), "/hypervisor", json!("kvm"));
    let mut extra = extra;
    extra["lke_cluster_id"] = json!(1);
    loose
        .check(&extra)
        .expect("extra fields are allowed by the spec");
    assert!(
        linode.check(&extra).is_err(),
        "strict mode rejects undocumented fields"
    );

    let error = spec
        .response_validator("POST", "/networking/ips/share", 400, Strictness::Strict)
        .expect("validator");
    error
        .check(&json!({"errors": [{"reason": "x", "field": "ips"}]}))
        .expect("error body");
    error
        .check(&json!({"errors": [{"reason": "Not found"}]}))
        .expect("field is optional");
    for body in [
        json!({"errors": [{"reason": 5}]}),
        json!({"errors": [{"reason": "x", "field": null}]}),
        json!({"errors": {"reason": "x"}}),
        json!({"error": "x"}),
        json!([]),
    ] {
        assert!(
            error.check(&body).is_err(),
            "{body} was accepted as ErrorResponse"
        );
    }

    let share_ok = spec
        .response_validator("POST", "/networking/ips/share", 200, Strictness::Strict)
        .expect("validator");
    share_ok.check(&json!({})).expect("empty object");
    assert!(share_ok.check(&json!([])).is_err());

    let list = spec
        .response_validator("GET", "/networking/ips", 200, Strictness::Strict)
        .expect("validator");
    list.check(&json!({"data": [], "page": 1, "pages": 1, "results": 0}))
        .expect("empty page");
    for body in [
        json!({"data": [], "page": "1", "pages": 1, "results": 0}),
        json!({"data": {}, "page": 1, "pages": 1, "results": 0}),
        json!({"data": [{"address": "not-an-ip"}], "page": 1, "pages": 1, "results": 1}),
        json!({"data": [{"type": "ipv5"}], "page": 1, "pages": 1, "results": 1}),
    ] {
        assert!(
            list.check(&body).is_err(),
            "{body} was accepted as a list of IPs"
        );
    }

    let ips = spec
        .response_validator(
            "GET",
            "/linode/instances/{linodeId}/ips",
            200,
            Strictness::Strict,
        )
        .expect("validator");
    let private = |gateway: Value| {
        json!({"ipv4": {"public": [], "private": [{"address": "192.168.130.5", "gateway": gateway}],
               "shared": [], "reserved": [], "vpc": []},
               "ipv6": {"global": []}})
    };
    ips.check(&private(json!("192.168.128.1")))
        .expect("private with gateway string");
    // IPAddressPrivate.gateway is not nullable in the spec (real Linode sends null): the
    // stand-in omits it instead.
    assert!(ips.check(&private(Value::Null)).is_err());

    let bgp = spec
        .response_validator(
            "GET",
            "/networking/ipv6/ranges/{range}",
            200,
            Strictness::Strict,
        )
        .expect("validator");
    assert!(bgp
        .check(&json!({"range": "2001:db8::", "is_bgp": "yes"}))
        .is_err());
    assert!(bgp
        .check(&json!({"range": "2001:db8::", "linodes": ["1"]}))
        .is_err());

    assert!(spec
        .response_schema("GET", "/no/such/path", ResponseKind::Ok)
        .is_err());
}

#[test]
fn the_label_pattern_correction_is_needed() {
    let spec = spec();
    let correction = &SPEC_CORRECTIONS[0];
    let raw = spec
        .raw_document()
        .pointer(correction.pointer)
        .and_then(|s| s.get(correction.drop_keyword))
        .and_then(Value::as_str)
        .expect("the raw spec still has the label pattern")
        .to_owned();
    let schema = json!({"type": "string", "pattern": raw});
    let v = jsonschema::validator_for(&schema).expect("pattern compiles");
    // The spec's own example and ordinary labels fail the raw pattern ...
    for label in ["linode123", "node-a", "ip-holder"] {
        assert!(
            !v.is_valid(&json!(label)),
            "{label} now passes the raw pattern: drop the correction"
        );
    }
    // ... which only matches 2-character strings (below minLength 3).
    assert!(v.is_valid(&json!("ab")));
    // After the correction the Linode schema accepts those labels.
    let linode = spec
        .component_validator("#/components/schemas/Linode", Strictness::Strict)
        .expect("validator");
    linode
        .check(&json!({"label": "linode123"}))
        .expect("corrected label schema accepts the spec's example");
}
