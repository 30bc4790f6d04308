//! Shared helpers of the stand-in tests: a seeded stand-in and a small HTTP client.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sharedip_e2e::standin::{Seed, StandIn, StandInHandle};

/// Upper bound for any single test.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The test account:
/// - 1 `ip-holder` (us-east) owns 192.0.2.10, 192.0.2.11 and 2001:db8:100::/64, no other IPs;
/// - 2 `node-a` (us-east, SLAAC 2001:db8:6::2) owns 198.51.100.2 and private 192.168.130.5;
/// - 3 `node-b` (us-east) owns 198.51.100.3;
/// - 4 `node-west` (us-west) owns 198.51.100.4, 192.0.2.40 and 2001:db8:400::/56.
pub const SEED_YAML: &str = r#"
linodes:
  - {id: 1, label: ip-holder, region: us-east, type: g6-nanode-1, status: offline, ipv4: []}
  - {id: 2, label: node-a, region: us-east, slaac: "2001:db8:6::2", ipv4: [198.51.100.2], private_ipv4: 192.168.130.5, tags: [lke, pool-a]}
  - {id: 3, label: node-b, region: us-east, ipv4: [198.51.100.3], image: linode/debian12}
  - {id: 4, label: node-west, region: us-west, ipv4: [198.51.100.4]}
ipv4:
  - {address: 192.0.2.10, linode_id: 1}
  - {address: 192.0.2.11, linode_id: 1, rdns: shared.example.org}
  - {address: 192.0.2.40, linode_id: 4}
ipv6_ranges:
  - {range: "2001:db8:100::/64", linode_id: 1}
  - {range: "2001:db8:400::/56", linode_id: 4}
"#;

/// The test seed.
pub fn seed() -> Seed {
    Seed::from_str(SEED_YAML, Path::new("SEED_YAML")).expect("test seed parses")
}

/// A started stand-in with the test seed and token `t0ken`.
pub async fn start() -> StandInHandle {
    StandIn::builder()
        .token("t0ken")
        .seed(seed())
        .start()
        .await
        .expect("stand-in starts")
}

/// An answer: status, headers, JSON body (`Value::Null` if the body is not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

/// A client for one stand-in.
pub struct Api {
    pub http: reqwest::Client,
    pub root: String,
    pub token: Option<String>,
}

impl Api {
    pub fn new(s: &StandInHandle) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .expect("client"),
            root: format!("http://{}", s.addr()),
            token: Some(s.token().to_owned()),
        }
    }

    pub fn without_token(mut self) -> Self {
        self.token = None;
        self
    }

    /// Sends `method root+path` with optional JSON body and extra headers.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut req = self.http.request(method, format!("{}{}", self.root, path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_owned());
        }
        let resp = req.send().await.expect("request reaches the stand-in");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
            text,
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, None, &[]).await
    }

    pub async fn post(&self, path: &str, body: &str) -> Answer {
        self.send(Method::POST, path, Some(body), &[]).await
    }

    pub async fn share(&self, linode_id: u64, ips: &[&str]) -> Answer {
        let body = serde_json::json!({"linode_id": linode_id, "ips": ips}).to_string();
        self.post("/v4/networking/ips/share", &body).await
    }
}

/// The `reason`s of an error body.
pub fn reasons(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["reason"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs a test body with the common time bound.
pub async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test finished within its time bound");
}
