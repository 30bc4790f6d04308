//! Tests of the control plane harness against the real etcd + kube-apiserver.
//!
//! Needs the binaries from `e2e/scripts/build-control-plane.sh` (or `SHAREDIP_BIN_DIR`).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, NodeSpec, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{Api, DynamicObject, ListParams, ObjectMeta, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use sharedip_e2e::controlplane::{ControlPlane, ADMIN_USER};

/// Upper bound of every test (control plane start included; CI has 2 cores).
const TEST_BOUND: Duration = Duration::from_secs(420);

async fn bounded<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_BOUND, test)
        .await
        .expect("test exceeded its time bound");
}

async fn start() -> ControlPlane {
    match ControlPlane::start().await {
        Ok(cp) => cp,
        Err(e) => panic!("{e}"),
    }
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        ..Default::default()
    }
}

async fn create_namespace(client: &kube::Client, name: &str) {
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: meta(name),
                ..Default::default()
            },
        )
        .await
        .unwrap();
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn describe(output: &std::process::Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn is_forbidden<T: std::fmt::Debug>(result: &Result<T, kube::Error>) -> bool {
    matches!(result, Err(kube::Error::Api(status)) if status.code == 403)
}

#[tokio::test]
async fn serves_namespaces_nodes_and_kubectl() {
    bounded(async {
        let cp = start().await;
        let client = cp.client();

        let version = client.apiserver_version().await.unwrap();
        assert_eq!(
            (version.major.as_str(), version.minor.as_str()),
            ("1", "34")
        );

        // Created by kube-apiserver itself, without a controller-manager.
        let namespaces: Api<Namespace> = Api::all(client.clone());
        for system in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let mut found = false;
            for _ in 0..40 {
                if namespaces.get_opt(system).await.unwrap().is_some() {
                    found = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            assert!(found, "namespace {system} missing");
        }

        create_namespace(&client, "sharedip-system").await;
        let listed: Vec<String> = namespaces
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|ns| ns.metadata.name)
            .collect();
        assert!(listed.contains(&"sharedip-system".to_owned()), "{listed:?}");

        let nodes: Api<Node> = Api::all(client.clone());
        for (name, role) in [
            ("node-a", "primary"),
            ("node-b", "secondary"),
            ("node-c", "none"),
        ] {
            let node = Node {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    labels: Some(BTreeMap::from([
                        ("sharedip.io/role".to_owned(), role.to_owned()),
                        (
                            "topology.kubernetes.io/region".to_owned(),
                            "us-ord".to_owned(),
                        ),
                    ])),
                    ..Default::default()
                },
                spec: Some(NodeSpec {
                    provider_id: Some(format!("linode://{}", 100 + name.len())),
                    ..Default::default()
                }),
                ..Default::default()
            };
            nodes.create(&PostParams::default(), &node).await.unwrap();
        }
        let selected = nodes
            .list(&ListParams::default().labels("sharedip.io/role in (primary,secondary)"))
            .await
            .unwrap();
        let mut names: Vec<String> = selected
            .items
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        names.sort();
        assert_eq!(names, ["node-a", "node-b"]);
        let provider = selected.items[0]
            .spec
            .as_ref()
            .and_then(|s| s.provider_id.clone());
        assert_eq!(provider.as_deref(), Some("linode://106"));

        // kubectl with the admin kubeconfig.
        let out = cp
            .kubectl(["get", "nodes", "-o", "name", "-l", "sharedip.io/role=none"])
            .await
            .unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        assert_eq!(stdout(&out).trim(), "node/node-c");

        let out = cp.kubectl(["get", "--raw", "/readyz"]).await.unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        assert_eq!(stdout(&out).trim(), "ok");

        let out = cp.kubectl(["auth", "whoami", "-o", "json"]).await.unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        let whoami: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(whoami["status"]["userInfo"]["username"], ADMIN_USER);
        let groups = whoami["status"]["userInfo"]["groups"].to_string();
        assert!(groups.contains("system:masters"), "{groups}");

        let manifest = br#"{"apiVersion":"v1","kind":"ConfigMap",
            "metadata":{"name":"from-stdin","namespace":"sharedip-system"},
            "data":{"k":"v"}}"#;
        let out = cp
            .kubectl_with_stdin(["apply", "-f", "-"], manifest)
            .await
            .unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        let out = cp
            .kubectl([
                "get",
                "configmap",
                "from-stdin",
                "-n",
                "sharedip-system",
                "-o",
                "jsonpath={.data.k}",
            ])
            .await
            .unwrap();
        assert_eq!(stdout(&out), "v", "{}", describe(&out));

        // helm reaches the same apiserver through the admin kubeconfig.
        let out = cp
            .helm(["list", "--all-namespaces", "-o", "json"])
            .await
            .unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        assert_eq!(stdout(&out).trim(), "[]");

        // The kubeconfig also works for a fresh kube-rs client, as our binaries will load it.
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(cp.kubeconfig_path()).unwrap(),
            &Default::default(),
        )
        .await
        .unwrap();
        let other = kube::Client::try_from(config).unwrap();
        assert!(Api::<Node>::all(other)
            .get_opt("node-a")
            .await
            .unwrap()
            .is_some());
    })
    .await;
}

#[tokio::test]
async fn service_account_is_denied_until_rbac_grants_it() {
    bounded(async {
        let cp = start().await;
        let admin = cp.client();
        create_namespace(&admin, "team-a").await;
        create_namespace(&admin, "team-b").await;
        for ns in ["team-a", "team-b"] {
            Api::<Secret>::namespaced(admin.clone(), ns)
                .create(
                    &PostParams::default(),
                    &Secret {
                        metadata: meta("linode-token"),
                        string_data: Some(BTreeMap::from([("token".to_owned(), "x".to_owned())])),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
        }
        Api::<ServiceAccount>::namespaced(admin.clone(), "team-a")
            .create(
                &PostParams::default(),
                &ServiceAccount {
                    metadata: meta("operator"),
                    ..Default::default()
                },
            )
            .await
            .unwrap();

        let token = cp
            .service_account_token("team-a", "operator")
            .await
            .unwrap();
        let sa = cp.client_for_token(&token).await.unwrap();
        let own_secrets: Api<Secret> = Api::namespaced(sa.clone(), "team-a");
        let other_secrets: Api<Secret> = Api::namespaced(sa.clone(), "team-b");

        let denied = own_secrets.list(&ListParams::default()).await;
        assert!(is_forbidden(&denied), "expected 403, got {denied:?}");

        Api::<Role>::namespaced(admin.clone(), "team-a")
            .create(
                &PostParams::default(),
                &Role {
                    metadata: meta("read-secrets"),
                    rules: Some(vec![PolicyRule {
                        api_groups: Some(vec![String::new()]),
                        resources: Some(vec!["secrets".to_owned()]),
                        verbs: vec!["get".to_owned(), "list".to_owned()],
                        ..Default::default()
                    }]),
                },
            )
            .await
            .unwrap();
        Api::<RoleBinding>::namespaced(admin.clone(), "team-a")
            .create(
                &PostParams::default(),
                &RoleBinding {
                    metadata: meta("operator-reads-secrets"),
                    role_ref: RoleRef {
                        api_group: "rbac.authorization.k8s.io".to_owned(),
                        kind: "Role".to_owned(),
                        name: "read-secrets".to_owned(),
                    },
                    subjects: Some(vec![Subject {
                        kind: "ServiceAccount".to_owned(),
                        name: "operator".to_owned(),
                        namespace: Some("team-a".to_owned()),
                        ..Default::default()
                    }]),
                },
            )
            .await
            .unwrap();

        // The RBAC authorizer reads bindings from an informer: allow it a moment.
        let mut allowed = None;
        for _ in 0..120 {
            match own_secrets.list(&ListParams::default()).await {
                Ok(list) => {
                    allowed = Some(list);
                    break;
                }
                Err(e) => assert!(is_forbidden(&Err::<(), _>(e))),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let allowed = allowed.expect("the RoleBinding never took effect");
        assert_eq!(allowed.items.len(), 1);

        // Only what was granted: other namespaces and other verbs stay denied.
        let denied = other_secrets.list(&ListParams::default()).await;
        assert!(is_forbidden(&denied), "expected 403, got {denied:?}");
        let denied = own_secrets
            .delete("linode-token", &Default::default())
            .await;
        assert!(is_forbidden(&denied), "expected 403, got {denied:?}");

        // The same identity through kubectl and a token kubeconfig.
        let kubeconfig = cp.kubeconfig_for_token(&token).unwrap();
        let out = cp
            .kubectl_as(
                &kubeconfig,
                [
                    "auth",
                    "whoami",
                    "-o",
                    "jsonpath={.status.userInfo.username}",
                ],
                None,
            )
            .await
            .unwrap();
        assert_eq!(
            stdout(&out),
            "system:serviceaccount:team-a:operator",
            "{}",
            describe(&out)
        );
        let out = cp
            .kubectl_as(
                &kubeconfig,
                ["auth", "can-i", "list", "secrets", "-n", "team-a"],
                None,
            )
            .await
            .unwrap();
        assert_eq!(stdout(&out).trim(), "yes", "{}", describe(&out));
        let out = cp
            .kubectl_as(
                &kubeconfig,
                ["auth", "can-i", "list", "secrets", "-n", "team-b"],
                None,
            )
            .await
            .unwrap();
        assert_eq!(stdout(&out).trim(), "no", "{}", describe(&out));
        assert!(!out.status.success());
    })
    .await;
}

const TEST_CRD: &str = r#"
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.e2e.sharedip.io
spec:
  group: e2e.sharedip.io
  scope: Cluster
  names: {plural: widgets, singular: widget, kind: Widget, listKind: WidgetList}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size:
                type: integer
            x-kubernetes-validations:
            - rule: "self.size <= 10"
              message: "size must be at most 10"
---
"#;

#[tokio::test]
async fn crds_are_applied_established_and_validate() {
    bounded(async {
        let cp = start().await;
        let manifests = tempfile::tempdir().unwrap();
        std::fs::write(manifests.path().join("widgets.yaml"), TEST_CRD).unwrap();
        std::fs::write(manifests.path().join("README.md"), "not a manifest").unwrap();

        let names = cp.apply_crds(manifests.path()).await.unwrap();
        assert_eq!(names, ["widgets.e2e.sharedip.io"]);
        // Applying again is a no-op, as CI re-runs do.
        let names = cp.apply_crds(manifests.path()).await.unwrap();
        assert_eq!(names, ["widgets.e2e.sharedip.io"]);

        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("e2e.sharedip.io", "v1", "Widget"),
            "widgets",
        );
        let widgets: Api<DynamicObject> = Api::all_with(cp.client(), &resource);
        let mut ok = DynamicObject::new("small", &resource);
        ok.data = serde_json::json!({"spec": {"size": 3}});
        widgets.create(&PostParams::default(), &ok).await.unwrap();

        let out = cp
            .kubectl_with_stdin(
                ["apply", "-f", "-"],
                br#"{"apiVersion":"e2e.sharedip.io/v1","kind":"Widget",
                    "metadata":{"name":"big"},"spec":{"size":11}}"#,
            )
            .await
            .unwrap();
        assert!(!out.status.success(), "{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("size must be at most 10"), "{stderr}");

        let out = cp.kubectl(["get", "widgets", "-o", "name"]).await.unwrap();
        assert_eq!(
            stdout(&out).trim(),
            "widget.e2e.sharedip.io/small",
            "{}",
            describe(&out)
        );

        // A directory with something other than CRDs is refused, naming the file.
        std::fs::write(
            manifests.path().join("z-namespace.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n",
        )
        .unwrap();
        let err = cp.apply_crds(manifests.path()).await.unwrap_err();
        assert!(err.to_string().contains("z-namespace.yaml"), "{err}");
    })
    .await;
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn parallel_control_planes_are_isolated_and_cleaned_up() {
    bounded(async {
        let (a, b) = tokio::join!(ControlPlane::start(), ControlPlane::start());
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_ne!(a.server_url(), b.server_url());
        assert_ne!(a.dir(), b.dir());

        create_namespace(&a.client(), "only-in-a").await;
        let in_b = Api::<Namespace>::all(b.client())
            .get_opt("only-in-a")
            .await
            .unwrap();
        assert!(in_b.is_none());

        let pids = a.pids();
        let dir = a.dir().to_owned();
        assert!(pids.iter().all(|&pid| process_alive(pid)));
        assert!(dir.exists());
        drop(a);
        for pid in pids {
            assert!(!process_alive(pid), "process {pid} survived the drop");
        }
        assert!(!dir.exists(), "{} survived the drop", dir.display());

        // The other one is unaffected.
        let out = b
            .kubectl(["get", "namespace", "default", "-o", "name"])
            .await
            .unwrap();
        assert_eq!(
            stdout(&out).trim(),
            "namespace/default",
            "{}",
            describe(&out)
        );
    })
    .await;
}

#[tokio::test]
async fn dropping_during_a_panic_cleans_up() {
    bounded(async {
        let cp = start().await;
        let pids = cp.pids();
        let dir = cp.dir().to_owned();
        let outcome = tokio::spawn(async move {
            let _cp = cp;
            panic!("simulated test failure");
        })
        .await;
        assert!(outcome.unwrap_err().is_panic());
        for pid in pids {
            assert!(!process_alive(pid), "process {pid} survived the panic");
        }
        assert!(!dir.exists());
    })
    .await;
}

#[tokio::test]
async fn failed_start_reports_the_process_logs() {
    bounded(async {
        let options = sharedip_e2e::controlplane::StartOptions {
            extra_apiserver_args: vec!["--no-such-flag=1".to_owned()],
            ..Default::default()
        };
        let err = ControlPlane::start_with(options).await.unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, sharedip_e2e::controlplane::Error::Startup { .. }),
            "{message}"
        );
        assert!(message.contains("kube-apiserver exited"), "{message}");
        assert!(
            message.contains("unknown flag: --no-such-flag"),
            "{message}"
        );
        assert!(message.contains("----- etcd log"), "{message}");
    })
    .await;
}

/// Set for the child process of `killed_test_process_leaves_nothing_running`.
const HANG_HELPER_ENV: &str = "SHAREDIP_E2E_CONTROLPLANE_HANG_HELPER";

/// Not a test by itself: started by `killed_test_process_leaves_nothing_running` as a child
/// process, which it then kills with SIGKILL so no destructor runs.
#[tokio::test]
#[ignore = "helper process for killed_test_process_leaves_nothing_running"]
async fn helper_start_and_hang() {
    if std::env::var_os(HANG_HELPER_ENV).is_none() {
        return;
    }
    let cp = start().await;
    let [apiserver, etcd] = cp.pids();
    println!("READY {} {apiserver} {etcd}", cp.dir().display());
    tokio::time::sleep(Duration::from_secs(600)).await;
}

#[tokio::test]
async fn killed_test_process_leaves_nothing_running() {
    use tokio::io::AsyncBufReadExt;
    bounded(async {
        let exe = std::env::current_exe().unwrap();
        let mut child = tokio::process::Command::new(exe)
            .args([
                "--ignored",
                "--exact",
                "helper_start_and_hang",
                "--nocapture",
            ])
            .env(HANG_HELPER_ENV, "1")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(300), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.strip_prefix("READY ") {
                    return rest.to_owned();
                }
            }
            panic!("helper exited without starting a control plane");
        })
        .await
        .expect("helper did not start a control plane in time");
        let fields: Vec<&str> = ready.split(' ').collect();
        let dir = std::path::PathBuf::from(fields[0]);
        let pids: Vec<u32> = fields[1..].iter().map(|p| p.parse().unwrap()).collect();
        assert!(pids.iter().all(|&pid| process_alive(pid)));

        // SIGKILL: no Drop runs in the helper.
        child.kill().await.unwrap();

        // The parent-death signal takes the servers down with it.
        for _ in 0..100 {
            if pids.iter().all(|&pid| !process_alive(pid)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for pid in &pids {
            assert!(
                !process_alive(*pid),
                "process {pid} outlived its killed owner"
            );
        }
        // Its directory goes at the next start (possibly already at another test's start in
        // this binary, which is why its presence in between is not asserted).
        let _next = start().await;
        assert!(!dir.exists(), "stale {} was not removed", dir.display());
    })
    .await;
}
