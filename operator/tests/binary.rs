//! The real `sharedip-operator` binary as a process: killed mid-reconcile, two replicas with
//! leader election, and the Helm chart's RBAC as its only permissions.

// Test code: a panic is a failed test, and a scenario reads best in one piece.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::json;
use sharedip_api::SharedIP;
use support::*;

/// Bounds a whole test, so a hang fails instead of blocking CI. The file's three tests run in
/// parallel, each with its own control plane.
async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(170), f)
        .await
        .expect("test finished within 170 s");
}

fn strings(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

async fn eventually_gone(env: &Env, name: &str) {
    eventually(&format!("SharedIP {name} gone"), || async {
        match env.get(name).await {
            None => Ok(()),
            Some(s) => Err(format!(
                "still there, finalizers {:?}",
                s.metadata.finalizers
            )),
        }
    })
    .await;
}

/// Waits for the sharing state of the whole account to be exactly `want`.
async fn eventually_by_linode(env: &Env, want: &BTreeMap<u64, BTreeSet<String>>) {
    eventually(&format!("sharing exactly {want:?}"), || async {
        let got = env.by_linode();
        if &got == want {
            Ok(())
        } else {
            Err(format!("sharing is {got:?}"))
        }
    })
    .await;
}

fn assert_forbidden<T: std::fmt::Debug>(what: &str, r: Result<T, kube::Error>) {
    match r {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

#[tokio::test]
async fn killed_mid_reconcile_restarts_and_converges() {
    bounded(async {
        let env = Env::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        env.add_node("node-a", &[("role", "primary")], Some(101))
            .await;
        env.add_node("node-b", &[("role", "secondary")], Some(102))
            .await;
        env.add_node("node-c", &[("role", "secondary")], Some(103))
            .await;
        env.add_node("node-d", &[("pool", "edge")], Some(104)).await;
        env.add_node(
            "node-e",
            &[("role", "secondary"), ("pool", "edge")],
            Some(105),
        )
        .await;
        // Every Linode API request takes 300 ms, so reconciles are still in flight when the
        // first share call lands.
        env.standin.faults().set_latency(Duration::from_millis(300));

        let kubeconfig = env.cp.kubeconfig_path().to_path_buf();
        let no_election = ["--leader-election", "false"];
        let mut first = env.spawn_binary(&kubeconfig, &no_election, &dir.path().join("first.log"));
        let _dump = DumpLogsOnPanic(vec![first.log.clone(), dir.path().join("second.log")]);
        env.apply_sharedip("web", spec("192.0.2.10")).await;
        env.apply_sharedip("api", spec("192.0.2.11")).await;
        env.apply_sharedip(
            "edge",
            json!({
                "address": "198.51.100.7",
                "primary": {"nodeSelector": {"matchLabels": {"pool": "edge"}}},
            }),
        )
        .await;

        // The finalizer goes on before any share call, so every SharedIP is protected by the
        // time one lands.
        eventually("finalizers on all SharedIPs", || async {
            for name in ["web", "api", "edge"] {
                let s = env.get(name).await.ok_or(format!("{name} missing"))?;
                let f = s.metadata.finalizers.unwrap_or_default();
                if !f.iter().any(|f| f == sharedip_api::FINALIZER) {
                    return Err(format!("{name} has finalizers {f:?}"));
                }
            }
            Ok(())
        })
        .await;
        // Poll tightly so the kill lands while the wave is still running.
        let deadline = tokio::time::Instant::now() + WAIT;
        while env.standin.request_log().share_calls().is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no share call within {WAIT:?}; operator log:\n{}",
                first.log()
            );
            assert!(first.is_running(), "operator exited:\n{}", first.log());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let status = first.sigkill().await.expect("operator reaped");
        assert!(!status.success(), "killed, not exited: {status:?}");
        // Shown if the test fails: where the kill landed.
        eprintln!(
            "at the kill: sharing {:?}, share calls {:?}",
            env.by_linode(),
            env.standin.request_log().share_calls()
        );

        // While it is down: a deletion waits on the finalizer, and a node leaves the
        // secondary pool.
        env.delete_sharedip("api").await;
        let api = env.get("api").await.expect("api held by its finalizer");
        assert!(api.metadata.deletion_timestamp.is_some());
        env.set_role("node-c", None).await;

        let mut second =
            env.spawn_binary(&kubeconfig, &no_election, &dir.path().join("second.log"));
        let want: BTreeMap<u64, BTreeSet<String>> = [
            (101, strings(&["192.0.2.10"])),
            (102, strings(&["192.0.2.10"])),
            (104, strings(&["198.51.100.7"])),
            (105, strings(&["192.0.2.10", "198.51.100.7"])),
        ]
        .into_iter()
        .collect();
        eventually_gone(&env, "api").await;
        env.eventually_condition("web", "Shared", "True", "Shared")
            .await;
        env.eventually_condition("edge", "Shared", "True", "Shared")
            .await;
        eventually_by_linode(&env, &want).await;
        let web = env.get("web").await.expect("web").status.expect("status");
        let linodes: BTreeSet<i64> = web.shared_with.iter().map(|s| s.linode_id).collect();
        assert_eq!(linodes, [101, 102, 105].into(), "web's status");
        assert_eq!(env.by_linode(), want, "still exact once Shared");
        assert!(
            !second.log().contains("panicked"),
            "second run:\n{}",
            second.log()
        );
        let status = second.terminate().await.expect("exits on SIGTERM");
        assert!(status.success(), "{status:?}\n{}", second.log());
    })
    .await;
}

/// Records every holderIdentity the Lease goes through, in order, from a watch.
struct LeaseHistory {
    seen: Arc<Mutex<Vec<Option<String>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseHistory {
    async fn start(client: kube::Client, namespace: &str, name: &str) -> Self {
        let api: Api<Lease> = Api::namespaced(client, namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                let stream = watcher(api, config).default_backoff().applied_objects();
                futures::pin_mut!(stream);
                while let Some(ev) = stream.next().await {
                    if let Ok(lease) = ev {
                        let holder = lease
                            .spec
                            .and_then(|s| s.holder_identity)
                            .filter(|h| !h.is_empty());
                        seen.lock().expect("lock").push(holder);
                    }
                }
            })
        };
        let history = Self { seen, task };
        // The first entry comes from the initial list: from then on, the watch sees every
        // later change.
        eventually("the Lease watch to start", || async {
            if history.holders().is_empty() {
                Err("nothing seen yet".into())
            } else {
                Ok(())
            }
        })
        .await;
        history
    }

    fn holders(&self) -> Vec<Option<String>> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Drop for LeaseHistory {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn leader_gauge(addr: &str, token: &str) -> Result<f64, String> {
    let (code, body) = http_get(addr, "/metrics", Some(token)).await?;
    if code != 200 {
        return Err(format!("/metrics answered {code}"));
    }
    metric_value(&body, "sharedip_leader").ok_or_else(|| "no sharedip_leader".to_string())
}

#[tokio::test]
async fn two_replicas_one_leader() {
    bounded(async {
        let env = Env::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let ns = "sharedip-ha";
        let lease = "sharedip-operator";
        env.create_namespace(ns).await;
        env.add_node("node-a", &[("role", "primary")], Some(101))
            .await;
        env.add_node("node-b", &[("role", "secondary")], Some(102))
            .await;

        let kubeconfig = env.cp.kubeconfig_path().to_path_buf();
        let token = metrics_token(&env, "prometheus").await;
        let p1 = free_port();
        let p2 = loop {
            let p = free_port();
            if p != p1 {
                break p;
            }
        };
        let addrs: BTreeMap<&str, String> = [
            ("op-1", format!("127.0.0.1:{p1}")),
            ("op-2", format!("127.0.0.1:{p2}")),
        ]
        .into_iter()
        .collect();
        let mut ops: BTreeMap<&str, BinaryOperator> = BTreeMap::new();
        let _dump = DumpLogsOnPanic(
            addrs
                .keys()
                .map(|id| dir.path().join(format!("{id}.log")))
                .collect(),
        );
        for (id, addr) in &addrs {
            let args = [
                "--leader-election",
                "true",
                "--lease-namespace",
                ns,
                "--lease-name",
                lease,
                "--identity",
                id,
            ];
            let op = env.spawn_binary_on(&kubeconfig, addr, &args, &dir.path().join(format!("{id}.log")));
            ops.insert(id, op);
        }

        // Exactly one replica holds the Lease and says so in its metrics; the other stands by
        // (and is ready: it can take over).
        eventually("one leader, one standby", || async {
            let holder = env.lease_holder(ns, lease).await.ok_or("no holder")?;
            let mut leaders = Vec::new();
            for (id, addr) in &addrs {
                if leader_gauge(addr, &token).await? == 1.0 {
                    leaders.push(id.to_string());
                }
                let (ready, _) = http_get(addr, "/readyz", None).await?;
                if ready != 200 {
                    return Err(format!("{id} /readyz {ready}"));
                }
            }
            if leaders == [holder.clone()] {
                Ok(())
            } else {
                Err(format!("Lease holder {holder}, sharedip_leader=1 on {leaders:?}"))
            }
        })
        .await;
        let leader = env.lease_holder(ns, lease).await.expect("a holder");
        let standby = if leader == "op-1" { "op-2" } else { "op-1" };
        assert!(addrs.contains_key(leader.as_str()), "holder {leader}");

        env.apply_sharedip("web", spec("192.0.2.10")).await;
        env.eventually_shared("192.0.2.10", &[101, 102]).await;
        env.eventually_condition("web", "Shared", "True", "Shared")
            .await;
        let standby_log = ops[standby].log();
        assert!(
            !standby_log.contains("controller started"),
            "the standby must not run the controller:\n{standby_log}"
        );
        assert_eq!(env.lease_holder(ns, lease).await.as_deref(), Some(leader.as_str()));

        // SIGTERM the leader: it exits cleanly and hands the Lease over by releasing it.
        let history = LeaseHistory::start(env.client(), ns, lease).await;
        let old = ops.get_mut(leader.as_str()).expect("leader process");
        let status = old.terminate().await.expect("leader exits on SIGTERM");
        assert!(status.success(), "leader exit {status:?}:\n{}", old.log());
        assert!(old.log().contains("released the lease"), "{}", old.log());
        eventually("the standby takes the Lease", || async {
            match env.lease_holder(ns, lease).await {
                Some(h) if h == standby => Ok(()),
                other => Err(format!("holder {other:?}")),
            }
        })
        .await;
        let holders = history.holders();
        eprintln!("Lease holders seen: {holders:?}");
        let old_pos = holders
            .iter()
            .rposition(|h| h.as_deref() == Some(leader.as_str()))
            .expect("the watch saw the old leader");
        let new_pos = holders
            .iter()
            .position(|h| h.as_deref() == Some(standby))
            .expect("the watch saw the new leader");
        assert!(
            old_pos < new_pos && holders[old_pos..new_pos].contains(&None),
            "the old leader released the Lease (holder cleared) before the standby took it: {holders:?}"
        );

        let new_addr = &addrs[standby];
        eventually("sharedip_leader 1 on the new leader", || async {
            let v = leader_gauge(new_addr, &token).await?;
            if v == 1.0 {
                Ok(())
            } else {
                Err(format!("sharedip_leader {v}"))
            }
        })
        .await;

        // The new leader reconciles a SharedIP created after the switch.
        env.apply_sharedip("api", spec("192.0.2.11")).await;
        env.eventually_shared("192.0.2.11", &[101, 102]).await;
        env.eventually_condition("api", "Shared", "True", "Shared")
            .await;
        assert_eq!(env.shared("192.0.2.10"), [101, 102].into());
        let new = ops.get_mut(standby).expect("new leader process");
        assert!(new.log().contains("became leader"), "{}", new.log());
        let status = new.terminate().await.expect("new leader exits on SIGTERM");
        assert!(status.success(), "new leader exit {status:?}:\n{}", new.log());
    })
    .await;
}

/// Renders part of the chart with the values the test installs it with.
async fn helm_template(env: &Env, chart: &Path, ns: &str, templates: &[&str]) -> String {
    helm_template_with(env, chart, ns, templates, &[]).await
}

/// [`helm_template`] with `--set` values.
async fn helm_template_with(
    env: &Env,
    chart: &Path,
    ns: &str,
    templates: &[&str],
    sets: &[&str],
) -> String {
    let mut args: Vec<String> = [
        "template",
        "sharedip",
        &chart.display().to_string(),
        "-n",
        ns,
        "--set",
        "linode.existingSecret=x",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for t in templates {
        args.push("--show-only".into());
        args.push(t.to_string());
    }
    for v in sets {
        args.push("--set".into());
        args.push(v.to_string());
    }
    let out = env.cp.helm(&args).await.expect("helm runs");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn yaml_docs(text: &str) -> Vec<serde_yaml::Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).expect("rendered YAML parses"))
        .filter(|v: &serde_yaml::Value| !v.is_null())
        .collect()
}

/// The operator's HTTP port is HTTPS: the probes answer anyone with "ok", `/metrics` only a
/// bearer token the apiserver authorizes for `get /metrics`; plain HTTP gets nothing.
#[tokio::test]
async fn metrics_need_an_authorized_token_over_https() {
    bounded(async {
        let env = Env::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let prometheus = metrics_token(&env, "prometheus").await;
        let nobody = sharedip_e2e::https::service_account(&env.cp, "default", "nobody", vec![])
            .await
            .expect("ServiceAccount");
        let addr = format!("127.0.0.1:{}", free_port());
        let op = env.spawn_binary_on(
            env.cp.kubeconfig_path(),
            &addr,
            &["--leader-election", "false"],
            &dir.path().join("operator.log"),
        );
        let _dump = DumpLogsOnPanic(vec![op.log.clone()]);
        eventually("/readyz answers 200 without a token", || async {
            match http_get(&addr, "/readyz", None).await? {
                (200, body) if body == "ok" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        assert_eq!(
            http_get(&addr, "/healthz", None).await.unwrap(),
            (200, "ok".to_string())
        );
        for (token, want) in [
            (None, 401),
            (Some("not-a-token"), 401),
            (Some(nobody.as_str()), 403),
        ] {
            let (code, body) = http_get(&addr, "/metrics", token).await.unwrap();
            assert_eq!(code, want, "token {token:?}: {body}");
            assert!(!body.contains("sharedip_"), "{body}");
        }
        let (code, body) = http_get(&addr, "/metrics", Some(&prometheus))
            .await
            .unwrap();
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("sharedip_leader"), "{body}");
        let raw =
            sharedip_e2e::https::plain_get(addr.parse().unwrap(), "/metrics", Some(&prometheus))
                .await
                .unwrap();
        assert!(raw.starts_with("HTTP/1.0 400"), "{raw:?}");
        assert!(!raw.contains("sharedip_"), "{raw:?}");
    })
    .await;
}

#[tokio::test]
async fn chart_rbac_is_enough_and_least_privilege() {
    bounded(async {
        let env = Env::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/sharedip");
        let ns = "sharedip-system";

        let rbac = helm_template(
            &env,
            &chart,
            ns,
            &[
                "templates/operator-serviceaccount.yaml",
                "templates/operator-rbac.yaml",
            ],
        )
        .await;
        let docs = yaml_docs(&rbac);
        let kinds: BTreeSet<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        assert_eq!(
            kinds,
            [
                "ClusterRole",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
                "ServiceAccount"
            ]
            .into(),
            "rendered:\n{rbac}"
        );
        let sa = docs
            .iter()
            .find(|d| d["kind"].as_str() == Some("ServiceAccount"))
            .and_then(|d| d["metadata"]["name"].as_str())
            .expect("ServiceAccount name")
            .to_string();
        // The Deployment tells which Lease the chart's operator uses and under which
        // ServiceAccount it runs.
        let deployment =
            helm_template(&env, &chart, ns, &["templates/operator-deployment.yaml"]).await;
        let deployment = yaml_docs(&deployment).remove(0);
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"].as_str(), Some(sa.as_str()));
        let env_value = |name: &str| {
            pod["containers"][0]["env"]
                .as_sequence()
                .into_iter()
                .flatten()
                .find(|e| e["name"].as_str() == Some(name))
                .and_then(|e| e["value"].as_str())
                .map(String::from)
        };
        let lease = env_value("LEASE_NAME").expect("LEASE_NAME in the Deployment");
        assert_eq!(env_value("LEADER_ELECTION").as_deref(), Some("true"));

        env.create_namespace(ns).await;
        let out = env
            .cp
            .kubectl_with_stdin(["apply", "-f", "-"], rbac.as_bytes())
            .await
            .expect("kubectl runs");
        assert!(
            out.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = env
            .cp
            .service_account_token(ns, &sa)
            .await
            .expect("ServiceAccount token");
        let kubeconfig = env.cp.kubeconfig_for_token(&token).expect("kubeconfig");

        env.add_node("node-a", &[("role", "primary")], Some(101))
            .await;
        env.add_node("node-b", &[("role", "secondary")], Some(102))
            .await;
        let identity = "sharedip-operator-0";
        let http_addr = format!("127.0.0.1:{}", free_port());
        let mut op = env.spawn_binary_on(
            &kubeconfig,
            &http_addr,
            &[
                "--leader-election",
                "true",
                "--lease-namespace",
                ns,
                "--lease-name",
                &lease,
                "--identity",
                identity,
            ],
            &dir.path().join("operator.log"),
        );
        let _dump = DumpLogsOnPanic(vec![op.log.clone()]);
        eventually("the chart's operator holds the Lease", || async {
            match env.lease_holder(ns, &lease).await {
                Some(h) if h == identity => Ok(()),
                other => Err(format!("holder {other:?}; log:\n{}", op.log())),
            }
        })
        .await;
        env.apply_sharedip("web", spec("192.0.2.10")).await;
        env.eventually_shared("192.0.2.10", &[101, 102]).await;
        // A LoadBalancer Service of the chart's class gets its address with the chart's
        // permissions (Services, their status, EndpointSlices, generated SharedIPs).
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "ingress", "namespace": "default",
                         "annotations": {"sharedip.io/address": "192.0.2.11"}},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": "sharedip.io/linode",
                     "ports": [{"port": 80, "protocol": "TCP"}]},
        }))
        .expect("Service");
        let services: Api<k8s_openapi::api::core::v1::Service> =
            Api::namespaced(env.client(), "default");
        services
            .create(&PostParams::default(), &svc)
            .await
            .expect("create Service");
        eventually("the Service's EXTERNAL-IP", || async {
            let s = services.get("ingress").await.map_err(|e| e.to_string())?;
            let ips: Vec<String> = s
                .status
                .iter()
                .flat_map(|st| st.load_balancer.iter())
                .flat_map(|lb| lb.ingress.iter().flatten())
                .filter_map(|i| i.ip.clone())
                .collect();
            if ips == ["192.0.2.11"] {
                Ok(())
            } else {
                Err(format!("{ips:?}; log:\n{}", op.log()))
            }
        })
        .await;
        env.eventually_condition("web", "Shared", "True", "Shared")
            .await;
        eventually("events written with the chart's permissions", || async {
            let reasons = env.event_reasons("web").await;
            if reasons.iter().filter(|(r, _)| r == "Shared").count() >= 2 {
                Ok(())
            } else {
                Err(format!("{reasons:?}"))
            }
        })
        .await;

        // What the ServiceAccount may NOT do.
        let sa_client = env.cp.client_for_token(&token).await.expect("SA client");
        let lp = Default::default();
        for secrets_ns in [ns, "default"] {
            let secrets: Api<Secret> = Api::namespaced(sa_client.clone(), secrets_ns);
            assert_forbidden(
                &format!("list Secrets in {secrets_ns}"),
                secrets.list(&lp).await,
            );
            assert_forbidden(
                &format!("get Secret x in {secrets_ns}"),
                secrets.get("x").await,
            );
        }
        assert_forbidden(
            "list Secrets cluster-wide",
            Api::<Secret>::all(sa_client.clone()).list(&lp).await,
        );
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "intruder"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        }))
        .expect("pod");
        assert_forbidden(
            "create a Pod",
            Api::<Pod>::namespaced(sa_client.clone(), ns)
                .create(&PostParams::default(), &pod)
                .await,
        );
        let sa_nodes: Api<Node> = Api::all(sa_client.clone());
        assert_forbidden(
            "delete a Node",
            sa_nodes.delete("node-a", &DeleteParams::default()).await,
        );
        // It makes SharedIPs for LoadBalancer Services, but never touches a Service's spec
        // beyond its finalizer and annotation, nor creates or deletes Services.
        use k8s_openapi::api::core::v1::Service;
        let sa_services: Api<Service> = Api::namespaced(sa_client.clone(), "default");
        assert_forbidden(
            "delete a Service",
            sa_services
                .delete("kubernetes", &DeleteParams::default())
                .await,
        );
        let intruder: Service = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "intruder"},
            "spec": {"ports": [{"port": 80}]},
        }))
        .expect("Service");
        assert_forbidden(
            "create a Service",
            sa_services.create(&PostParams::default(), &intruder).await,
        );
        // A Lease elsewhere: the operator may only touch Leases in its own namespace.
        let other_leases: Api<Lease> = Api::namespaced(env.client(), "default");
        let foreign: Lease = serde_json::from_value(json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "someone-else", "namespace": "default"},
            "spec": {"holderIdentity": "someone-else", "leaseDurationSeconds": 15},
        }))
        .expect("lease");
        let mut foreign = other_leases
            .create(&PostParams::default(), &foreign)
            .await
            .expect("admin creates a Lease");
        if let Some(spec) = foreign.spec.as_mut() {
            spec.holder_identity = Some(identity.to_string());
        }
        let sa_leases: Api<Lease> = Api::namespaced(sa_client.clone(), "default");
        assert_forbidden(
            "update a Lease in another namespace",
            sa_leases
                .replace("someone-else", &PostParams::default(), &foreign)
                .await,
        );
        assert_forbidden(
            "get a Lease in another namespace",
            sa_leases.get("someone-else").await,
        );

        // The identity and the ledger: kube-system only, ConfigMaps and its own Deployment in
        // its namespace only.
        use k8s_openapi::api::apps::v1::Deployment;
        use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
        let sa_namespaces: Api<Namespace> = Api::all(sa_client.clone());
        assert_forbidden("get namespace default", sa_namespaces.get("default").await);
        assert_forbidden("list namespaces", sa_namespaces.list(&lp).await);
        assert_forbidden(
            "list ConfigMaps in default",
            Api::<ConfigMap>::namespaced(sa_client.clone(), "default")
                .list(&lp)
                .await,
        );
        assert_forbidden(
            "get another Deployment",
            Api::<Deployment>::namespaced(sa_client.clone(), ns)
                .get("someone-else")
                .await,
        );
        let uid = sa_namespaces
            .get("kube-system")
            .await
            .expect("get kube-system allowed")
            .metadata
            .uid
            .expect("uid");
        let ledger = Api::<ConfigMap>::namespaced(sa_client.clone(), ns)
            .get(&format!("sharedip-ledger-{uid}"))
            .await
            .expect("the ledger, named after kube-system's UID, written with the chart's RBAC");
        let data = ledger.data.unwrap_or_default();
        assert_eq!(data.get("cluster-id"), Some(&uid));
        assert_eq!(
            data.get("linode.101").map(String::as_str),
            Some("192.0.2.10 192.0.2.11"),
            "the SharedIP's and the Service's address"
        );

        // What it needs.
        let nodes = sa_nodes.list(&lp).await.expect("list nodes allowed");
        assert_eq!(nodes.items.len(), 2);
        let sips = Api::<SharedIP>::all(sa_client.clone())
            .list(&lp)
            .await
            .expect("list SharedIPs allowed");
        assert_eq!(sips.items.len(), 2, "web and the Service's");
        Api::<Lease>::namespaced(sa_client.clone(), ns)
            .get(&lease)
            .await
            .expect("get its own Lease allowed");

        // /metrics with the chart's RBAC: the operator may review tokens, and a ServiceAccount
        // bound through metricsReader.subjects may read; the operator's own may not.
        let reader_rbac = helm_template_with(
            &env,
            &chart,
            ns,
            &["templates/metrics-reader-rbac.yaml"],
            &[
                "metricsReader.subjects[0].kind=ServiceAccount",
                "metricsReader.subjects[0].name=prometheus",
                &format!("metricsReader.subjects[0].namespace={ns}"),
            ],
        )
        .await;
        let out = env
            .cp
            .kubectl_with_stdin(["apply", "-f", "-"], reader_rbac.as_bytes())
            .await
            .expect("kubectl runs");
        assert!(
            out.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let prometheus = sharedip_e2e::https::service_account(&env.cp, ns, "prometheus", vec![])
            .await
            .expect("ServiceAccount");
        eventually("/metrics for the chart's metrics reader", || async {
            match http_get(&http_addr, "/metrics", Some(&prometheus)).await? {
                (200, body) if body.contains("sharedip_leader 1") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        let (code, _) = http_get(&http_addr, "/metrics", Some(&token))
            .await
            .expect("request");
        assert_eq!(
            code, 403,
            "the operator's own ServiceAccount is no metrics reader"
        );

        let log = op.log();
        assert!(
            !log.to_lowercase().contains("forbidden"),
            "the operator hit a permission error:\n{log}"
        );
        let status = op.terminate().await.expect("exits on SIGTERM");
        assert!(status.success(), "{status:?}\n{}", op.log());
        assert_eq!(env.lease_holder(ns, &lease).await, None, "released on exit");
    })
    .await;
}

/// Started without its token file and without the SharedIP CRD, the operator says so (error
/// log lines, `/readyz` failing with the reasons, the SharedIP's condition), keeps running, and
/// works as soon as both are there. Its text log in a file carries no colour codes.
#[tokio::test]
async fn missing_token_file_and_crd_are_reported_until_fixed() {
    bounded(async {
        let env = Env::start_without_crds(SEED).await;
        let dir = tempfile::tempdir().expect("temp dir");
        env.add_node("node-a", &[("role", "primary")], Some(101))
            .await;
        env.add_node("node-b", &[("role", "secondary")], Some(102))
            .await;
        let token = dir.path().join("linode-token");
        let token_arg = token.display().to_string();
        let addr = format!("127.0.0.1:{}", free_port());
        let kubeconfig = env.cp.kubeconfig_path().to_path_buf();
        let log = dir.path().join("operator.log");
        let mut op = env.spawn_binary_on(
            &kubeconfig,
            &addr,
            &[
                "--leader-election",
                "false",
                "--linode-token-file",
                &token_arg,
                "--log-format",
                "text",
            ],
            &log,
        );
        let _dump = DumpLogsOnPanic(vec![log.clone()]);

        let readyz_fails_with = |wanted: Vec<&'static str>, unwanted: Vec<&'static str>| {
            let addr = addr.clone();
            async move {
                eventually(&format!("/readyz failing with {wanted:?}"), || async {
                    let (code, body) = http_get(&addr, "/readyz", None).await?;
                    let ok = code == 503
                        && wanted.iter().all(|w| body.contains(w))
                        && !unwanted.iter().any(|u| body.contains(u));
                    if ok {
                        Ok(())
                    } else {
                        Err(format!("{code} {body:?}"))
                    }
                })
                .await
            }
        };
        // /readyz names the areas only: anyone who reaches the port may read it.
        readyz_fails_with(vec!["token-file", "crd"], vec!["/", "file not found"]).await;
        let text = op.log();
        let error_line = |needle: &str| {
            text.lines()
                .any(|l| l.contains("ERROR") && l.contains(needle))
        };
        assert!(error_line("no usable Linode API token"), "{text}");
        assert!(
            error_line("CustomResourceDefinition (sharedips.sharedip.io) is not installed"),
            "{text}"
        );
        assert!(op.is_running(), "still running:\n{}", op.log());

        // The CRD arrives: the controller starts; the SharedIP tells why nothing is shared.
        env.install_crds().await;
        readyz_fails_with(vec!["token-file"], vec!["crd"]).await;
        env.apply_sharedip("web", spec("192.0.2.10")).await;
        let s = env
            .eventually_condition("web", "Ready", "False", "LinodeTokenError")
            .await;
        let msg = s
            .status
            .and_then(|st| st.conditions.into_iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.message)
            .unwrap_or_default();
        assert!(msg.contains("file not found"), "{msg}");
        assert!(env.shared("192.0.2.10").is_empty());

        // The token arrives: shared, and ready.
        std::fs::write(&token, format!("{TOKEN}\n")).expect("write token");
        env.eventually_shared("192.0.2.10", &[101, 102]).await;
        env.eventually_condition("web", "Shared", "True", "Shared")
            .await;
        eventually("/readyz ok", || async {
            let (code, body) = http_get(&addr, "/readyz", None).await?;
            if code == 200 {
                Ok(())
            } else {
                Err(format!("{code} {body:?}"))
            }
        })
        .await;
        let text = op.log();
        assert!(text.contains("installed now"), "{text}");
        assert!(text.contains("holds a token again"), "{text}");
        assert!(
            !text.contains('\u{1b}'),
            "colour codes in a log written to a file:\n{text}"
        );
        let status = op.terminate().await.expect("exits on SIGTERM");
        assert!(status.success(), "{status:?}\n{}", op.log());
    })
    .await;
}
