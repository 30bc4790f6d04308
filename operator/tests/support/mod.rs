//! Test environment for the operator: a real kube-apiserver, the Linode API stand-in, and the
//! operator either in-process or as its real binary.

#![allow(dead_code)] // each test binary uses a different part

pub mod alloc;
pub mod kubelet;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use sharedip_api::SharedIP;
use sharedip_e2e::controlplane::ControlPlane;
use sharedip_e2e::standin::{Seed, StandIn, StandInHandle};
use sharedip_operator::controller::{run_controller, ControllerSettings};
use sharedip_operator::directory::DirectoryConfig;
use sharedip_operator::holder::HolderSettings;
use sharedip_operator::metrics::Metrics;
use sharedip_operator::reconciler::ReconcileConfig;
use sharedip_operator::share_syncer::SyncerConfig;
use tokio::sync::oneshot;

pub const TOKEN: &str = "operator-test-token";
pub const REGION: &str = "us-east";

/// The account: an IP holder (100) owning the shared addresses, node Linodes 101-106 in the
/// region, 201 in another region.
pub const SEED: &str = r#"
linodes:
  - {id: 100, label: ip-holder, region: us-east, type: g6-nanode-1, status: offline}
  - {id: 101, label: node-a, region: us-east}
  - {id: 102, label: node-b, region: us-east}
  - {id: 103, label: node-c, region: us-east}
  - {id: 104, label: node-d, region: us-east}
  - {id: 105, label: node-e, region: us-east}
  - {id: 106, label: node-f, region: us-east}
  - {id: 201, label: far-away, region: eu-west}
ipv4:
  - {address: 192.0.2.10, linode_id: 100, public: true}
  - {address: 192.0.2.11, linode_id: 100, public: true}
  - {address: 192.0.2.12, linode_id: 101, public: true}
  - {address: 198.51.100.7, linode_id: 100, public: true}
ipv6_ranges:
  - {range: "2001:db8:1:2::/64", linode_id: 100}
"#;

/// Upper bound of every wait in these tests; generous for a loaded 2-core CI machine.
pub const WAIT: Duration = Duration::from_secs(90);

pub struct Env {
    pub cp: ControlPlane,
    pub standin: StandInHandle,
    pub token_file: tempfile::NamedTempFile,
}

impl Env {
    pub async fn start() -> Env {
        Self::start_with_seed(SEED).await
    }

    pub async fn start_with_seed(seed: &str) -> Env {
        let env = Self::start_without_crds(seed).await;
        env.install_crds().await;
        env
    }

    /// Like [`Env::start_with_seed`], without installing the SharedIP CRD.
    pub async fn start_without_crds(seed: &str) -> Env {
        let cp = ControlPlane::start().await.expect("control plane starts");
        let seed = Seed::from_str(seed, Path::new("test seed")).expect("seed parses");
        let standin = StandIn::builder()
            .token(TOKEN)
            .seed(seed)
            .start()
            .await
            .expect("stand-in starts");
        let token_file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(token_file.path(), format!("{TOKEN}\n")).expect("write token");
        Env {
            cp,
            standin,
            token_file,
        }
    }

    pub fn client(&self) -> kube::Client {
        self.cp.client()
    }

    pub fn linode_client(&self) -> linode_client::LinodeClient {
        linode_client::LinodeClient::builder(
            linode_client::TokenSource::from_string(TOKEN).expect("token"),
        )
        .base_url(self.standin.base_url())
        .backoff(Duration::from_millis(50), Duration::from_millis(400))
        .max_retry_after(Duration::from_secs(2))
        .build()
        .expect("client builds")
    }

    /// Runs the controller in this process until the returned guard is dropped.
    pub fn spawn_operator(&self) -> InProcessOperator {
        self.spawn_operator_with(fast_settings("in-process"))
    }

    pub fn spawn_operator_with(&self, mut settings: ControllerSettings) -> InProcessOperator {
        if settings.lifecycle_api.is_none() {
            settings.lifecycle_api = Some(Arc::new(self.linode_client()));
        }
        self.spawn_operator_on(settings, Arc::new(self.linode_client()))
    }

    /// Runs the controller in this process against `linode`.
    pub fn spawn_operator_on(
        &self,
        settings: ControllerSettings,
        linode: sharedip_operator::linode_api::DynLinodeApi,
    ) -> InProcessOperator {
        let (tx, rx) = oneshot::channel::<()>();
        let metrics = Arc::new(Metrics::default());
        let client = self.client();
        let task = tokio::spawn(run_controller(
            client,
            linode,
            metrics.clone(),
            settings,
            async move {
                let _ = rx.await;
            },
        ));
        InProcessOperator {
            stop: Some(tx),
            task,
            metrics,
        }
    }

    /// Starts the real `sharedip-operator` binary against this environment.
    pub fn spawn_binary(&self, kubeconfig: &Path, extra: &[&str], log: &Path) -> BinaryOperator {
        self.spawn_binary_on(kubeconfig, "127.0.0.1:0", extra, log)
    }

    pub async fn add_node(&self, name: &str, labels: &[(&str, &str)], linode: Option<u64>) {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain([(
                "topology.kubernetes.io/region".to_string(),
                REGION.to_string(),
            )])
            .collect();
        let mut node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": labels},
            "spec": {},
        });
        if let Some(id) = linode {
            node["spec"]["providerID"] = json!(format!("linode://{id}"));
        }
        let node: Node = serde_json::from_value(node).expect("node");
        Api::<Node>::all(self.client())
            .create(&PostParams::default(), &node)
            .await
            .expect("create node");
    }

    /// Replaces the node's role label (`role`); None removes it.
    pub async fn set_role(&self, node: &str, role: Option<&str>) {
        let patch = json!({"metadata": {"labels": {"role": role}}});
        Api::<Node>::all(self.client())
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("relabel node");
    }

    pub async fn set_provider_id(&self, node: &str, linode: u64) {
        let patch = json!({"spec": {"providerID": format!("linode://{linode}")}});
        Api::<Node>::all(self.client())
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("set providerID");
    }

    pub async fn delete_node(&self, node: &str) {
        Api::<Node>::all(self.client())
            .delete(node, &DeleteParams::default())
            .await
            .expect("delete node");
    }

    pub fn sharedips(&self) -> Api<SharedIP> {
        Api::all(self.client())
    }

    pub async fn apply_sharedip(&self, name: &str, spec: Value) {
        let obj = json!({
            "apiVersion": "sharedip.io/v1alpha1",
            "kind": "SharedIP",
            "metadata": {"name": name},
            "spec": spec,
        });
        self.sharedips()
            .patch(
                name,
                &PatchParams::apply("test").force(),
                &Patch::Apply(&obj),
            )
            .await
            .expect("apply SharedIP");
    }

    pub async fn delete_sharedip(&self, name: &str) {
        self.sharedips()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete SharedIP");
    }

    pub async fn get(&self, name: &str) -> Option<SharedIP> {
        self.sharedips().get_opt(name).await.expect("get SharedIP")
    }

    /// Linodes the stand-in shares `ip` with.
    pub fn shared(&self, ip: &str) -> BTreeSet<u64> {
        self.standin.sharing().shared_with(ip)
    }

    /// The whole sharing state: Linode → shared addresses.
    pub fn by_linode(&self) -> BTreeMap<u64, BTreeSet<String>> {
        self.standin.sharing().by_linode()
    }

    pub async fn eventually_shared(&self, ip: &str, linodes: &[u64]) {
        let want: BTreeSet<u64> = linodes.iter().copied().collect();
        eventually(&format!("{ip} shared with exactly {want:?}"), || async {
            let got = self.shared(ip);
            if got == want {
                Ok(())
            } else {
                Err(format!("shared with {got:?}"))
            }
        })
        .await;
    }

    /// Waits for the condition `type_` of `name` to have `status` and `reason` for the current
    /// generation, and returns the object as seen then.
    pub async fn eventually_condition(
        &self,
        name: &str,
        type_: &str,
        status: &str,
        reason: &str,
    ) -> SharedIP {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let sip = self.get(name).await;
            let c = sip.as_ref().and_then(|s| {
                s.status
                    .as_ref()
                    .and_then(|st| st.conditions.iter().find(|c| c.type_ == type_).cloned())
            });
            if let (Some(sip), Some(c)) = (&sip, &c) {
                if c.status == status
                    && c.reason == reason
                    && c.observed_generation == sip.metadata.generation
                {
                    return sip.clone();
                }
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "timed out waiting for {name} {type_}={status} ({reason}); condition is {c:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn event_reasons(&self, name: &str) -> Vec<(String, String)> {
        use k8s_openapi::api::events::v1::Event;
        let events: Api<Event> = Api::all(self.client());
        let list = events.list(&Default::default()).await.expect("list events");
        list.items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }
}

/// The cluster identity of the in-process operators (one per control plane).
pub const CLUSTER_ID: &str = "test-cluster";

/// Settings that make tests quick: short waves, quick retries.
pub fn fast_settings(identity: &str) -> ControllerSettings {
    ControllerSettings {
        identity: identity.into(),
        cluster_id: sharedip_operator::cluster_id::ClusterId::new(CLUSTER_ID)
            .expect("valid cluster id"),
        namespace: "default".into(),
        sweep_interval: Duration::from_secs(600),
        syncer: SyncerConfig {
            batch_window: Duration::from_millis(100),
            ..Default::default()
        },
        directory: DirectoryConfig {
            ttl: Duration::from_secs(30),
            min_refresh: Duration::from_millis(500),
        },
        reconcile: ReconcileConfig {
            blocked_retry: Duration::from_secs(2),
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(2),
            ..Default::default()
        },
        token_changes: None,
        health: None,
        holders: HolderSettings {
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(4),
            ..Default::default()
        },
        lifecycle_api: None,
        services: None,
    }
}

pub struct InProcessOperator {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), sharedip_operator::controller::RunError>>,
    pub metrics: Arc<Metrics>,
}

impl InProcessOperator {
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let task = &mut self.task;
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    }
}

impl Drop for InProcessOperator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct BinaryOperator {
    pub child: tokio::process::Child,
    pub log: PathBuf,
}

impl BinaryOperator {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, then wait for a clean exit.
    pub async fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            // SAFETY: plain signal to a child we own.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .ok()
            .and_then(|r| r.ok())
    }
}

/// Polls `check` until it succeeds or [`WAIT`] passes; panics with the last failure.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let last = match check().await {
            Ok(()) => return,
            Err(e) => e,
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {WAIT:?} waiting for {what}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Prints the operator logs to the test's output when the test fails (cargo shows it then).
pub struct DumpLogsOnPanic(pub Vec<PathBuf>);

impl Drop for DumpLogsOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for p in &self.0 {
                let log = std::fs::read_to_string(p).unwrap_or_default();
                eprintln!("--- {} ---\n{log}", p.display());
            }
        }
    }
}

/// A spec selecting `role=primary` and `role=secondary` nodes.
pub fn spec(address: &str) -> Value {
    json!({
        "address": address,
        "primary": {"nodeSelector": {"matchLabels": {"role": "primary"}}},
        "secondary": {"nodeSelector": {"matchLabels": {"role": "secondary"}}},
    })
}

impl Env {
    /// Like [`Env::spawn_binary`], with the HTTPS server (`/metrics`, `/healthz`, `/readyz`) on
    /// `http_addr` (e.g. `127.0.0.1:<free_port()>`) so the test can scrape it.
    pub fn spawn_binary_on(
        &self,
        kubeconfig: &Path,
        http_addr: &str,
        extra: &[&str],
        log: &Path,
    ) -> BinaryOperator {
        let log_file = std::fs::File::create(log).expect("log file");
        let err_file = log_file.try_clone().expect("clone log");
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_sharedip-operator"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KUBECONFIG", kubeconfig)
            .env("LINODE_API_URL", self.standin.base_url())
            .env("LINODE_TOKEN_FILE", self.token_file.path())
            .env("RUST_LOG", "info,sharedip_operator=debug")
            .env("SHARE_BATCH_WINDOW", "100ms")
            .args(["--http-addr", http_addr])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err_file)
            .kill_on_drop(true);
        let child = cmd.spawn().expect("operator binary starts");
        BinaryOperator {
            child,
            log: log.to_path_buf(),
        }
    }

    /// Creates a namespace (the control plane has no namespace controller: never delete it,
    /// use a fresh name per test).
    pub async fn create_namespace(&self, name: &str) {
        use k8s_openapi::api::core::v1::Namespace;
        let ns: Namespace = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name},
        }))
        .expect("namespace");
        Api::<Namespace>::all(self.client())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
    }

    /// The `holderIdentity` of Lease `namespace/name` (None: no Lease, or released).
    pub async fn lease_holder(&self, namespace: &str, name: &str) -> Option<String> {
        use k8s_openapi::api::coordination::v1::Lease;
        Api::<Lease>::namespaced(self.client(), namespace)
            .get_opt(name)
            .await
            .expect("get Lease")
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty())
    }
}

impl BinaryOperator {
    /// Whether the process is still running (false once it exited, also if it was reaped).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, then reap it: no graceful shutdown, exactly like a node or OOM kill.
    pub async fn sigkill(&mut self) -> Option<std::process::ExitStatus> {
        let _ = self.child.start_kill();
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .ok()
            .and_then(|r| r.ok())
    }
}

/// A loopback TCP port that was free a moment ago (the operator binds it right after; the
/// kernel does not hand out a just-released ephemeral port again at once).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// `GET https://{addr}{path}` as Prometheus scrapes the operator: bearer `token` (none when
/// `None`), certificate not verified. Returns the status code and body.
pub async fn http_get(
    addr: &str,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, String), String> {
    let addr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let r = sharedip_e2e::https::get(addr, path, token).await?;
    Ok((r.status, r.body))
}

/// A token of ServiceAccount `default/<name>` allowed `get /metrics`, as the chart's
/// metrics-reader ClusterRole allows Prometheus.
pub async fn metrics_token(env: &Env, name: &str) -> String {
    sharedip_e2e::https::service_account(
        &env.cp,
        "default",
        name,
        sharedip_e2e::https::get_urls(&["/metrics"]),
    )
    .await
    .expect("metrics reader ServiceAccount")
}

/// The value of an unlabelled metric in a Prometheus/OpenMetrics text exposition.
pub fn metric_value(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

impl Env {
    /// Installs the SharedIP CRD from `crds/`.
    pub async fn install_crds(&self) {
        let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
        self.cp.apply_crds(&crds).await.expect("CRDs apply");
    }

    /// A Linode client that reads its token from the test's token file, as the operator does.
    pub fn linode_client_from_file(&self) -> linode_client::LinodeClient {
        linode_client::LinodeClient::builder(linode_client::TokenSource::from_file(
            self.token_file.path(),
        ))
        .base_url(self.standin.base_url())
        .backoff(Duration::from_millis(50), Duration::from_millis(400))
        .max_retry_after(Duration::from_secs(2))
        .build()
        .expect("client builds")
    }

    /// Rewrites the token file in place.
    pub fn write_token(&self, token: &str) {
        std::fs::write(self.token_file.path(), format!("{token}\n")).expect("write token");
    }

    /// Share calls the stand-in received for `linode` so far.
    pub fn share_calls_for(&self, linode: u64) -> usize {
        self.standin
            .request_log()
            .share_calls()
            .iter()
            .filter(|c| c.linode_id == Some(linode))
            .count()
    }

    /// `kubectl get sharedip <name> -o wide`, as a map from column header to value.
    pub async fn kubectl_wide(&self, name: &str) -> BTreeMap<String, String> {
        let out = self
            .cp
            .kubectl(["get", "sharedip", name, "-o", "wide"])
            .await
            .expect("kubectl runs");
        assert!(
            out.status.success(),
            "kubectl get: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines();
        let header = lines.next().unwrap_or_default();
        let row = lines.next().unwrap_or_default();
        // Columns are aligned under their headers; an empty value is blank, so split the row
        // at the headers' offsets rather than at whitespace.
        let starts: Vec<(usize, &str)> = header
            .match_indices(|c: char| !c.is_whitespace())
            .filter(|(i, _)| *i == 0 || header[..*i].ends_with(' '))
            .map(|(i, _)| (i, header[i..].split_whitespace().next().unwrap_or_default()))
            .collect();
        starts
            .iter()
            .enumerate()
            .map(|(n, (start, name))| {
                let end = starts
                    .get(n + 1)
                    .map_or(row.len(), |(s, _)| *s)
                    .min(row.len());
                let value = row.get((*start).min(end)..end).unwrap_or_default().trim();
                (name.to_string(), value.to_string())
            })
            .collect()
    }
}

/// Waits for `check` at most `bound` (shorter than [`WAIT`]), for outcomes that must come
/// well before some slower path (a backoff, a retry, a hold-down) could produce them.
pub async fn within<F, Fut>(bound: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let last = match check().await {
            Ok(()) => return,
            Err(e) => e,
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("not within {bound:?}: {what}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
