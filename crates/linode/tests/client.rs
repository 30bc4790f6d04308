//! The client against a scripted HTTP server on 127.0.0.1.

// Test code: a panic is a failed test, and a scenario reads best in one piece.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod support;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use linode_client::{endpoints, Error, LinodeClient, LinodeStatus, TokenProblem, TokenSource};
use serde_json::json;
use support::{bounded, MockServer, Observations, Reply};

const TOKEN: &str = "tok-SECRET-4f1d9c2b7e";

fn builder(server: &MockServer, token: TokenSource) -> linode_client::ClientBuilder {
    LinodeClient::builder(token)
        .base_url(server.base_url())
        .max_retries(3)
        .backoff(Duration::from_millis(1), Duration::from_millis(5))
        .max_retry_after(Duration::from_secs(2))
        .request_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(2))
}

fn client(server: &MockServer) -> LinodeClient {
    builder(server, TokenSource::from_string(TOKEN).unwrap())
        .build()
        .unwrap()
}

fn observed(server: &MockServer) -> (LinodeClient, Arc<Observations>) {
    let obs = Arc::new(Observations::default());
    let c = builder(server, TokenSource::from_string(TOKEN).unwrap())
        .observer(obs.clone())
        .build()
        .unwrap();
    (c, obs)
}

fn linode(id: u64) -> serde_json::Value {
    json!({
        "id": id, "label": format!("node-{id}"), "region": "us-east", "status": "running",
        "type": "g6-nanode-1", "ipv4": ["192.0.2.10"], "ipv6": "2001:db8::1/128",
        "tags": [], "specs": {"disk": 25600}
    })
}

fn errors(reason: &str, field: Option<&str>) -> serde_json::Value {
    json!({"errors": [{"reason": reason, "field": field}]})
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn sends_bearer_token_user_agent_and_decodes_linode() {
    bounded(async {
        let server = MockServer::start(|_, _| Reply::json(200, linode(123))).await;
        let l = client(&server).get_linode(123).await.unwrap();
        assert_eq!(l.id, 123);
        assert_eq!(l.status, LinodeStatus::Running);

        let reqs = server.requests();
        assert_eq!(reqs.len(), 1);
        let r = &reqs[0];
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/v4/linode/instances/123");
        assert_eq!(
            r.header("authorization").unwrap(),
            format!("Bearer {TOKEN}")
        );
        assert_eq!(
            r.header("user-agent").unwrap(),
            format!("sharedip/{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(r.header("accept").unwrap(), "application/json");
        assert_eq!(r.header("x-filter"), None);
    })
    .await
}

#[tokio::test]
async fn list_follows_pages_and_sends_filter_on_each() {
    bounded(async {
        let server = MockServer::start(|req, _| {
            let page: u64 = req.param("page").unwrap().parse().unwrap();
            let ids: Vec<_> = (0..25).map(|i| linode(page * 100 + i)).collect();
            let data = if page == 3 { ids[..3].to_vec() } else { ids };
            Reply::json(
                200,
                json!({"data": data, "page": page, "pages": 3, "results": 53}),
            )
        })
        .await;
        let c = builder(&server, TokenSource::from_string(TOKEN).unwrap())
            .page_size(25)
            .build()
            .unwrap();
        let filter = json!({"region": "us-east", "label": {"+contains": "nœud"}});
        let all = c.list_linodes(Some(&filter)).await.unwrap();
        assert_eq!(all.len(), 53);
        assert_eq!(all[0].id, 100);
        assert_eq!(all[25].id, 200);
        assert_eq!(all[52].id, 302);

        let reqs = server.requests();
        assert_eq!(reqs.len(), 3);
        for (i, r) in reqs.iter().enumerate() {
            assert_eq!(r.path, "/v4/linode/instances");
            assert_eq!(r.param("page").unwrap(), (i + 1).to_string());
            assert_eq!(r.param("page_size").unwrap(), "25");
            let sent: serde_json::Value =
                serde_json::from_str(&r.header("x-filter").unwrap()).unwrap();
            assert_eq!(sent, filter);
        }
    })
    .await
}

#[tokio::test]
async fn list_without_filter_sends_no_header_and_max_page_size() {
    bounded(async {
        let server = MockServer::start(|_, _| {
            Reply::json(
                200,
                json!({"data": [{"range": "2001:db8:1::", "prefix": 64, "region": "us-east",
                                 "route_target": "2001:db8::1"}],
                       "page": 1, "pages": 1, "results": 1}),
            )
        })
        .await;
        let ranges = client(&server).list_ipv6_ranges().await.unwrap();
        assert_eq!(ranges.len(), 1);
        assert_eq!(ranges[0].prefix, 64);
        let r = &server.requests()[0];
        assert_eq!(r.path, "/v4/networking/ipv6/ranges");
        assert_eq!(r.param("page_size").unwrap(), "500");
        assert_eq!(r.header("x-filter"), None);
    })
    .await
}

#[tokio::test]
async fn server_ignoring_page_is_a_decode_error_not_a_loop() {
    bounded(async {
        let server = MockServer::start(|_, _| {
            Reply::json(
                200,
                json!({"data": [], "page": 1, "pages": 5, "results": 0}),
            )
        })
        .await;
        let err = client(&server).list_ips(None).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Decode {
                    endpoint: endpoints::IPS,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(server.requests().len(), 2);
    })
    .await
}

#[tokio::test]
async fn honours_retry_after_on_429_then_succeeds() {
    bounded(async {
        let server = MockServer::start(|_, n| {
            if n == 0 {
                Reply::json(429, errors("Too many requests", None)).header("retry-after", "1")
            } else {
                Reply::json(200, linode(5))
            }
        })
        .await;
        let (c, obs) = observed(&server);
        assert_eq!(c.get_linode(5).await.unwrap().id, 5);
        let reqs = server.requests();
        assert_eq!(reqs.len(), 2);
        // How long the retry waits (Retry-After, capped) is unit-tested on RetryPolicy::delay;
        // wall-clock timing stays out of pass/fail assertions.
        assert_eq!(obs.statuses(), vec![Some(429), Some(200)]);
    })
    .await
}

#[tokio::test]
async fn retry_after_is_capped() {
    bounded(async {
        let server = MockServer::start(|_, n| {
            if n == 0 {
                Reply::json(429, json!({})).header("retry-after", "3600")
            } else {
                Reply::json(200, linode(5))
            }
        })
        .await;
        let c = builder(&server, TokenSource::from_string(TOKEN).unwrap())
            .max_retry_after(Duration::from_millis(20))
            .build()
            .unwrap();
        // Finishing inside the test bound proves the hour was not waited.
        assert_eq!(c.get_linode(5).await.unwrap().id, 5);
    })
    .await
}

#[tokio::test]
async fn rate_limit_exhausted_is_typed() {
    bounded(async {
        let server = MockServer::start(|_, _| {
            Reply::json(429, errors("slow down", None)).header("retry-after", "0")
        })
        .await;
        let (c, obs) = observed(&server);
        let err = c.get_linode_ips(9).await.unwrap_err();
        match &err {
            Error::RateLimited {
                method,
                endpoint,
                retry_after,
            } => {
                assert_eq!(*method, "GET");
                assert_eq!(*endpoint, "/linode/instances/{linodeId}/ips");
                assert_eq!(*retry_after, Some(Duration::ZERO));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(err.status(), Some(429));
        assert!(err.is_retryable());
        assert_eq!(server.requests().len(), 4);
        assert_eq!(obs.statuses(), vec![Some(429); 4]);
    })
    .await
}

#[tokio::test]
async fn server_error_burst_then_success() {
    bounded(async {
        let server = MockServer::start(|_, n| match n {
            0 => Reply::json(500, errors("oops", None)),
            1 => Reply::raw(502, "<html>bad gateway</html>"),
            2 => Reply::json(503, json!({})),
            _ => Reply::json(200, linode(77)),
        })
        .await;
        let (c, obs) = observed(&server);
        assert_eq!(c.get_linode(77).await.unwrap().id, 77);
        assert_eq!(
            obs.statuses(),
            vec![Some(500), Some(502), Some(503), Some(200)]
        );
        let o = obs.0.lock().unwrap();
        assert!(o
            .iter()
            .all(|(e, m, _)| *e == "/linode/instances/{linodeId}" && *m == "GET"));
    })
    .await
}

#[tokio::test]
async fn server_errors_exhausted_keep_linode_reason() {
    bounded(async {
        let server =
            MockServer::start(|_, _| Reply::json(503, errors("Service unavailable", None))).await;
        let err = client(&server).get_linode(1).await.unwrap_err();
        assert!(matches!(err, Error::Api { status: 503, .. }), "{err:?}");
        assert!(err.is_retryable());
        assert_eq!(err.api_errors()[0].reason, "Service unavailable");
        assert!(err.to_string().contains("Service unavailable"));
        assert_eq!(server.requests().len(), 4);
    })
    .await
}

#[tokio::test]
async fn client_errors_are_not_retried_and_carry_reason_and_field() {
    bounded(async {
        let server = MockServer::start(|req, _| {
            if req.path.ends_with("/share") {
                Reply::json(
                    400,
                    json!({"errors": [
                        {"reason": "IPs must be in the same region as the Linode", "field": "ips"},
                        {"reason": "Something else", "field": null}
                    ]}),
                )
            } else {
                Reply::json(404, errors("Not found", None))
            }
        })
        .await;
        let (c, obs) = observed(&server);
        let err = c
            .share_ips(123, &[ip("192.0.2.1"), ip("2001:db8:3c4d:15::")])
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(400));
        assert!(!err.is_retryable());
        assert_eq!(err.api_errors().len(), 2);
        assert_eq!(err.api_errors()[0].field.as_deref(), Some("ips"));
        assert_eq!(err.api_errors()[1].field, None);
        let msg = err.to_string();
        assert!(msg.contains("POST /networking/ips/share"), "{msg}");
        assert!(msg.contains("HTTP 400"), "{msg}");
        assert!(
            msg.contains("IPs must be in the same region as the Linode (field `ips`)"),
            "{msg}"
        );
        assert!(msg.contains("Something else"), "{msg}");

        let err = c.get_linode(404).await.unwrap_err();
        assert!(err.is_not_found());
        assert!(!err.is_retryable());

        assert_eq!(server.requests().len(), 2, "4xx must not be retried");
        assert_eq!(
            *obs.0.lock().unwrap(),
            vec![
                (endpoints::IPS_SHARE, "POST", Some(400)),
                (endpoints::LINODE, "GET", Some(404)),
            ]
        );
    })
    .await
}

#[tokio::test]
async fn share_sends_the_whole_list() {
    bounded(async {
        let server = MockServer::start(|_, _| Reply::json(200, json!({}))).await;
        let c = client(&server);
        c.share_ips(123, &[ip("192.0.2.1"), ip("2001:db8:3c4d:15::")])
            .await
            .unwrap();
        c.share_ips(124, &[]).await.unwrap();

        let reqs = server.requests();
        assert_eq!(reqs[0].method, "POST");
        assert_eq!(reqs[0].path, "/v4/networking/ips/share");
        assert_eq!(reqs[0].header("content-type").unwrap(), "application/json");
        let body: serde_json::Value = serde_json::from_slice(&reqs[0].body).unwrap();
        assert_eq!(
            body,
            json!({"linode_id": 123, "ips": ["192.0.2.1", "2001:db8:3c4d:15::"]})
        );
        let body: serde_json::Value = serde_json::from_slice(&reqs[1].body).unwrap();
        assert_eq!(body, json!({"linode_id": 124, "ips": []}));
    })
    .await
}

#[tokio::test]
async fn typed_endpoints_use_the_spec_paths() {
    bounded(async {
        let server = MockServer::start(|req, _| match req.path.as_str() {
            "/v4/linode/instances/123/ips" => Reply::json(
                200,
                json!({
                    "ipv4": {"public": [{"address": "192.0.2.10", "type": "ipv4", "public": true,
                                         "linode_id": 123, "region": "us-east"}],
                             "private": [], "reserved": [], "vpc": [],
                             "shared": [{"address": "198.51.100.7", "type": "ipv4",
                                         "public": true, "linode_id": 456,
                                         "region": "us-east"}]},
                    "ipv6": {"slaac": {"address": "2001:db8::1", "prefix": 64, "type": "ipv6"},
                             "link_local": {"address": "fe80::1", "type": "ipv6"},
                             "global": [{"range": "2001:db8:5::", "prefix": 64,
                                         "region": "us-east", "route_target": "2001:db8::1"},
                                        {"range": "2001:db8:6::", "prefix": 56,
                                         "region": "us-east", "route_target": "2001:db8::2"}]}
                }),
            ),
            "/v4/networking/ips/198.51.100.7" => Reply::json(
                200,
                json!({"address": "198.51.100.7", "gateway": "198.51.100.1", "prefix": 24,
                       "subnet_mask": "255.255.255.0", "type": "ipv4", "public": true,
                       "rdns": null, "linode_id": 456, "region": "us-east"}),
            ),
            "/v4/networking/ipv6/ranges/2001:db8:6::" => Reply::json(
                200,
                json!({"range": "2001:db8:6::", "prefix": 56, "region": "us-east",
                       "is_bgp": true, "linodes": [456, 123]}),
            ),
            "/v4/networking/ips" => Reply::json(
                200,
                json!({"data": [{"address": "198.51.100.7", "linode_id": 456}],
                       "page": 1, "pages": 1, "results": 1}),
            ),
            _ => Reply::json(404, errors("Not found", None)),
        })
        .await;
        let c = client(&server);

        let ips = c.get_linode_ips(123).await.unwrap();
        assert_eq!(
            ips.shared_addresses(),
            [ip("198.51.100.7"), ip("2001:db8:6::")]
                .into_iter()
                .collect()
        );

        let a = c.get_ip(ip("198.51.100.7")).await.unwrap();
        assert_eq!(a.linode_id, Some(456));
        assert_eq!(a.gateway, Some(ip("198.51.100.1")));

        let r = c
            .get_ipv6_range("2001:db8:6::".parse().unwrap())
            .await
            .unwrap();
        assert!(r.is_bgp);
        assert_eq!(r.linodes, vec![456, 123]);

        let filter = json!({"region": "us-east"});
        let all = c.list_ips(Some(&filter)).await.unwrap();
        assert_eq!(all.len(), 1);

        assert!(c.get_ip(ip("192.0.2.99")).await.unwrap_err().is_not_found());
    })
    .await
}

#[tokio::test]
async fn decode_errors_are_typed_and_not_retried() {
    bounded(async {
        let server = MockServer::start(|req, _| match req.path.as_str() {
            "/v4/linode/instances/1" => Reply::json(200, json!({"id": "one"})),
            "/v4/networking/ips/192.0.2.1" => {
                Reply::json(200, json!({"address": "not-an-ip", "linode_id": 1}))
            }
            _ => Reply::raw(200, "this is not json"),
        })
        .await;
        let c = client(&server);

        let err = c.get_linode(1).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Decode {
                    endpoint: endpoints::LINODE,
                    ..
                }
            ),
            "{err:?}"
        );
        let err = c.get_ip(ip("192.0.2.1")).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Decode {
                    endpoint: endpoints::IP,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("invalid IP address"), "{err}");
        let err = c.get_linode_ips(2).await.unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err:?}");
        assert!(!err.is_retryable());
        assert_eq!(server.requests().len(), 3);
    })
    .await
}

#[tokio::test]
async fn slow_server_times_out_after_retries() {
    bounded(async {
        let server =
            MockServer::start(|_, _| Reply::json(200, linode(1)).delayed(Duration::from_secs(10)))
                .await;
        let obs = Arc::new(Observations::default());
        let c = builder(&server, TokenSource::from_string(TOKEN).unwrap())
            .request_timeout(Duration::from_millis(200))
            .max_retries(1)
            .observer(obs.clone())
            .build()
            .unwrap();
        let err = c.get_linode(1).await.unwrap_err();
        match &err {
            Error::Timeout {
                timeout, endpoint, ..
            } => {
                assert_eq!(*timeout, Duration::from_millis(200));
                assert_eq!(*endpoint, endpoints::LINODE);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.is_retryable());
        assert!(err.may_have_taken_effect());
        assert_eq!(server.requests().len(), 2);
        assert_eq!(obs.statuses(), vec![None, None]);
    })
    .await
}

#[tokio::test]
async fn connection_refused_is_a_retried_transport_error() {
    bounded(async {
        // A port that was just free; nothing listens on it any more.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let obs = Arc::new(Observations::default());
        let c = LinodeClient::builder(TokenSource::from_string(TOKEN).unwrap())
            .base_url(format!("http://127.0.0.1:{port}/v4"))
            .max_retries(2)
            .backoff(Duration::from_millis(1), Duration::from_millis(2))
            .observer(obs.clone())
            .build()
            .unwrap();
        let err = c.get_linode(1).await.unwrap_err();
        assert!(matches!(err, Error::Transport { .. }), "{err:?}");
        assert!(err.is_retryable());
        assert!(!err.may_have_taken_effect());
        assert_eq!(err.status(), None);
        assert_eq!(obs.statuses(), vec![None, None, None]);

        // No connection means Linode never saw the request: even an allocation may repeat.
        let err = c.allocate_ipv4(1).await.unwrap_err();
        assert!(matches!(err, Error::Transport { .. }), "{err:?}");
        assert!(!err.may_have_taken_effect());
        assert_eq!(obs.statuses(), vec![None; 6]);
    })
    .await
}

#[tokio::test]
async fn redirects_are_not_followed() {
    bounded(async {
        let server = MockServer::start(|_, _| {
            Reply::raw(302, "").header("location", "http://127.0.0.1:9/steal")
        })
        .await;
        let err = client(&server).get_linode(1).await.unwrap_err();
        assert_eq!(err.status(), Some(302));
        assert_eq!(server.requests().len(), 1);
    })
    .await
}

#[tokio::test]
async fn token_file_rotation_is_picked_up() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first-token\n").unwrap();

        let server = MockServer::start(|_, _| Reply::json(200, linode(1))).await;
        let c = builder(&server, TokenSource::from_file(&path))
            .build()
            .unwrap();
        c.check_token().await.unwrap();
        c.get_linode(1).await.unwrap();
        c.get_linode(1).await.unwrap();

        // Rewritten in place, different length.
        std::fs::write(&path, "  second-token-longer \n").unwrap();
        c.get_linode(1).await.unwrap();

        // Replaced like Kubernetes does: a new file renamed over the old one, same length.
        let tmp = dir.path().join(".token.tmp");
        std::fs::write(&tmp, "  third-token-longer! \n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        c.clone().get_linode(1).await.unwrap();

        let auth: Vec<_> = server
            .requests()
            .iter()
            .map(|r| r.header("authorization").unwrap())
            .collect();
        assert_eq!(
            auth,
            vec![
                "Bearer first-token",
                "Bearer first-token",
                "Bearer second-token-longer",
                "Bearer third-token-longer!",
            ]
        );
    })
    .await
}

#[tokio::test]
async fn token_file_rotation_through_kubernetes_symlinks() {
    bounded(async {
        // A mounted Secret: token -> ..data/token, ..data -> ..<timestamp>; rotation swaps
        // ..data atomically.
        let dir = tempfile::tempdir().unwrap();
        let v1 = dir.path().join("..v1");
        let v2 = dir.path().join("..v2");
        std::fs::create_dir(&v1).unwrap();
        std::fs::create_dir(&v2).unwrap();
        std::fs::write(v1.join("token"), "aaaa").unwrap();
        std::fs::write(v2.join("token"), "bbbb").unwrap();
        std::os::unix::fs::symlink("..v1", dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/token", dir.path().join("token")).unwrap();

        let server = MockServer::start(|_, _| Reply::json(200, linode(1))).await;
        let c = builder(&server, TokenSource::from_file(dir.path().join("token")))
            .build()
            .unwrap();
        c.get_linode(1).await.unwrap();
        std::os::unix::fs::symlink("..v2", dir.path().join("..data_tmp")).unwrap();
        std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
        c.get_linode(1).await.unwrap();

        let auth: Vec<_> = server
            .requests()
            .iter()
            .map(|r| r.header("authorization").unwrap())
            .collect();
        assert_eq!(auth, vec!["Bearer aaaa", "Bearer bbbb"]);
    })
    .await
}

#[tokio::test]
async fn missing_or_empty_token_file_is_a_clear_error_and_sends_nothing() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let server = MockServer::start(|_, _| Reply::json(200, linode(1))).await;
        let c = builder(&server, TokenSource::from_file(&path))
            .build()
            .unwrap();

        let err = c.check_token().await.unwrap_err();
        match &err {
            Error::Token {
                path: Some(p),
                problem: TokenProblem::Missing,
            } => assert_eq!(p, &path),
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains(&path.display().to_string()));
        assert!(!err.is_retryable());
        assert!(matches!(
            c.get_linode(1).await.unwrap_err(),
            Error::Token {
                problem: TokenProblem::Missing,
                ..
            }
        ));

        std::fs::write(&path, " \n").unwrap();
        assert!(matches!(
            c.get_linode(1).await.unwrap_err(),
            Error::Token {
                problem: TokenProblem::Empty,
                ..
            }
        ));

        std::fs::write(&path, "now-good").unwrap();
        c.get_linode(1).await.unwrap();
        assert_eq!(server.requests().len(), 1);
    })
    .await
}
