//! Clients of the operator's and the agent's protected HTTPS endpoints, as Prometheus scrapes
//! them (bearer token, certificate not verified), and the RBAC to go with them: a
//! ServiceAccount allowed `get` on some non-resource URLs, and one allowed to review tokens.

use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::controlplane::ControlPlane;

/// Bound of one request.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A response: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Body as text.
    pub body: String,
    /// The `WWW-Authenticate` header, if any.
    pub www_authenticate: Option<String>,
}

/// `GET https://{addr}{path}` with `token` as bearer token (none when `None`), accepting any
/// server certificate (Prometheus' `insecureSkipVerify`).
pub async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Result<Response, String> {
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    send(&client, &format!("https://{addr}{path}"), token).await
}

/// `GET {url}` with `client` (e.g. one that trusts a test CA) and an optional bearer token.
pub async fn send(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> Result<Response, String> {
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|e| format!("GET {url}: {e:?}"))?;
    let status = resp.status().as_u16();
    let www_authenticate = resp
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.text().await.map_err(|e| format!("GET {url}: {e}"))?;
    Ok(Response {
        status,
        body,
        www_authenticate,
    })
}

/// `GET http://{addr}{path}` in plain HTTP/1.0 with an optional bearer token: what must never
/// work against a protected port. Returns the raw answer (empty when the server just closed).
pub async fn plain_get(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Result<String, String> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        // A reset after the server's answer is fine: what was read is the answer.
        let _ = s.read_to_end(&mut buf).await;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).into_owned())
    };
    tokio::time::timeout(TIMEOUT, io)
        .await
        .map_err(|_| format!("GET http://{addr}{path} timed out"))?
        .map_err(|e| format!("GET http://{addr}{path}: {e}"))
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(str::to_string),
        ..Default::default()
    }
}

/// Creates ServiceAccount `namespace/name` (the namespace must exist) and, unless `rules` is
/// empty, a ClusterRole `name-<namespace>` with `rules` bound to it. Returns a token of it.
pub async fn service_account(
    cp: &ControlPlane,
    namespace: &str,
    name: &str,
    rules: Vec<PolicyRule>,
) -> Result<String, String> {
    let client = cp.client();
    let pp = PostParams::default();
    let sa = ServiceAccount {
        metadata: meta(name, Some(namespace)),
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create(&pp, &sa)
        .await
        .map_err(|e| format!("create ServiceAccount {namespace}/{name}: {e}"))?;
    if !rules.is_empty() {
        let role_name = format!("{name}-{namespace}");
        let role = ClusterRole {
            metadata: meta(&role_name, None),
            rules: Some(rules),
            ..Default::default()
        };
        Api::<ClusterRole>::all(client.clone())
            .create(&pp, &role)
            .await
            .map_err(|e| format!("create ClusterRole {role_name}: {e}"))?;
        let binding = ClusterRoleBinding {
            metadata: meta(&role_name, None),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name: role_name.clone(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: name.to_string(),
                namespace: Some(namespace.to_string()),
                ..Default::default()
            }]),
        };
        Api::<ClusterRoleBinding>::all(client)
            .create(&pp, &binding)
            .await
            .map_err(|e| format!("create ClusterRoleBinding {role_name}: {e}"))?;
    }
    cp.service_account_token(namespace, name)
        .await
        .map_err(|e| e.to_string())
}

/// `get` on the non-resource URLs `paths` (what Prometheus needs for `/metrics`).
pub fn get_urls(paths: &[&str]) -> Vec<PolicyRule> {
    vec![PolicyRule {
        non_resource_urls: Some(paths.iter().map(|p| p.to_string()).collect()),
        verbs: vec!["get".into()],
        ..Default::default()
    }]
}

/// `create` on TokenReviews and SubjectAccessReviews: what a server that checks bearer tokens
/// through the apiserver needs.
pub fn reviewer() -> Vec<PolicyRule> {
    vec![
        PolicyRule {
            api_groups: Some(vec!["authentication.k8s.io".into()]),
            resources: Some(vec!["tokenreviews".into()]),
            verbs: vec!["create".into()],
            ..Default::default()
        },
        PolicyRule {
            api_groups: Some(vec!["authorization.k8s.io".into()]),
            resources: Some(vec!["subjectaccessreviews".into()]),
            verbs: vec!["create".into()],
            ..Default::default()
        },
    ]
}
