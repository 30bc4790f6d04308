//! A stand-in for the kubelet, the Deployment controller and the Job controller of one
//! namespace, for tests that install the Helm chart into a control plane that has none.
//!
//! It runs what the chart's objects describe with the real operator binary: every Deployment's
//! pod template `replicas` times, and every Job's pod template once. A pod gets its
//! container's args and env (literal values; `metadata.name` / `metadata.namespace` from the
//! downward API), its ServiceAccount's credentials (a TokenRequest token, so the chart's RBAC is
//! what the process may do), and the Linode token read from the Secret its `linode-token`
//! volume names (so the Secret and its key are checked too). Only `HTTP_ADDR` is replaced, by a
//! free loopback port. A Deployment's pod that exits is started again (restartPolicy Always);
//! a Deployment deleted or being deleted gets its pods SIGTERMed. A Job's pod that exits sets
//! the Job's status as the Job controller would (Complete or Failed), which is what Helm waits
//! for. Every process is killed when the stand-in is dropped.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PodTemplateSpec, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;

use super::{free_port, Env};

/// What a pod runs for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    Deployment { name: String, uid: String },
    Job { name: String },
}

/// A pod's process, as far as the test cares.
#[derive(Debug, Clone)]
pub struct PodView {
    pub name: String,
    pub owner: Owner,
    pub log: PathBuf,
    /// How many times its process was started (1 + restarts).
    pub starts: u32,
    /// The exit statuses so far.
    pub exits: Vec<Option<i32>>,
    pub running: bool,
}

impl PodView {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn render_logs(pods: &[PodView]) -> String {
    pods.iter()
        .map(|p| format!("--- pod {} ({:?}) ---\n{}", p.name, p.owner, p.log_text()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// See [`Kubelet::dump_on_panic`].
pub struct DumpOnPanic(Arc<Mutex<Vec<PodView>>>);

impl Drop for DumpOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let pods = self.0.lock().map(|v| v.clone()).unwrap_or_default();
            eprintln!("{}", render_logs(&pods));
        }
    }
}

struct Pod {
    view: PodView,
    template: PodTemplateSpec,
    child: Option<tokio::process::Child>,
    terminating: bool,
}

/// The stand-in (see the module docs).
pub struct Kubelet {
    namespace: String,
    dir: PathBuf,
    binary: PathBuf,
    pods: Vec<Pod>,
    /// Jobs whose pod ran to the end and whose status was set, by UID.
    finished_jobs: Vec<String>,
    tokens: HashMap<String, PathBuf>,
    views: Arc<Mutex<Vec<PodView>>>,
}

impl Kubelet {
    pub fn new(namespace: &str, dir: &Path) -> Self {
        Self {
            namespace: namespace.to_string(),
            dir: dir.to_path_buf(),
            binary: PathBuf::from(env!("CARGO_BIN_EXE_sharedip-operator")),
            pods: Vec::new(),
            finished_jobs: Vec::new(),
            tokens: HashMap::new(),
            views: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Every pod so far (also those that ended).
    pub fn pods(&self) -> Vec<PodView> {
        self.views.lock().expect("views").clone()
    }

    /// Every pod's log, for a failing test's message.
    pub fn logs(&self) -> String {
        render_logs(&self.pods())
    }

    /// A handle that prints every pod's log when dropped during a panic.
    pub fn dump_on_panic(&self) -> DumpOnPanic {
        DumpOnPanic(self.views.clone())
    }

    /// Runs `f` while the stand-in does its work every 200 ms.
    pub async fn while_running<F: Future>(&mut self, env: &Env, f: F) -> F::Output {
        tokio::pin!(f);
        loop {
            tokio::select! {
                out = &mut f => return out,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if let Err(e) = self.tick(env).await {
                        eprintln!("kubelet stand-in: {e}");
                    }
                }
            }
        }
    }

    fn publish(&self) {
        let v: Vec<PodView> = self.pods.iter().map(|p| p.view.clone()).collect();
        *self.views.lock().expect("views") = v;
    }

    async fn tick(&mut self, env: &Env) -> Result<(), String> {
        let client = env.client();
        let deployments = Api::<Deployment>::namespaced(client.clone(), &self.namespace)
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("list Deployments: {e}"))?
            .items;
        let live: BTreeMap<String, &Deployment> = deployments
            .iter()
            .filter(|d| d.metadata.deletion_timestamp.is_none())
            .filter_map(|d| d.metadata.uid.clone().map(|u| (u, d)))
            .collect();
        // Deployments gone: SIGTERM their pods (once), as the kubelet does on pod deletion.
        for p in &mut self.pods {
            if let Owner::Deployment { uid, .. } = &p.view.owner {
                if !live.contains_key(uid) && !p.terminating {
                    p.terminating = true;
                    if let Some(pid) = p.child.as_ref().and_then(|c| c.id()) {
                        // SAFETY: a signal to our own child.
                        unsafe {
                            libc::kill(pid as i32, libc::SIGTERM);
                        }
                    }
                }
            }
        }
        // New Deployments: their replicas.
        for (uid, d) in &live {
            let known = self
                .pods
                .iter()
                .any(|p| matches!(&p.view.owner, Owner::Deployment { uid: u, .. } if u == uid));
            if known {
                continue;
            }
            let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let template = d
                .spec
                .as_ref()
                .map(|s| s.template.clone())
                .ok_or("a Deployment without spec")?;
            for i in 0..replicas {
                let name = format!("{}-{}-{i}", d.name_any(), &uid[..8.min(uid.len())]);
                let owner = Owner::Deployment {
                    name: d.name_any(),
                    uid: uid.clone(),
                };
                self.add_pod(env, name, owner, template.clone()).await?;
            }
        }
        // Jobs: one pod each, its end written to the Job's status.
        let jobs = Api::<Job>::namespaced(client.clone(), &self.namespace);
        for j in jobs
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("list Jobs: {e}"))?
            .items
        {
            let uid = j.metadata.uid.clone().unwrap_or_default();
            let name = j.name_any();
            if self.finished_jobs.contains(&uid) {
                continue;
            }
            let pod_name = format!("{name}-{}", &uid[..5.min(uid.len())]);
            let running = self.pods.iter().any(|p| p.view.name == pod_name);
            if !running {
                let template = j
                    .spec
                    .as_ref()
                    .map(|s| s.template.clone())
                    .ok_or("a Job without spec")?;
                self.add_pod(env, pod_name, Owner::Job { name: name.clone() }, template)
                    .await?;
                continue;
            }
            let Some(p) = self.pods.iter_mut().find(|p| p.view.name == pod_name) else {
                continue;
            };
            let Some(child) = p.child.as_mut() else {
                continue;
            };
            let Ok(Some(status)) = child.try_wait() else {
                continue;
            };
            p.view.exits.push(status.code());
            p.view.running = false;
            p.child = None;
            set_job_status(&jobs, &name, status.success()).await?;
            self.finished_jobs.push(uid);
        }
        // Deployment pods that exited: restart them, unless they are going away.
        for i in 0..self.pods.len() {
            let exited = {
                let p = &mut self.pods[i];
                match p.child.as_mut().map(|c| c.try_wait()) {
                    Some(Ok(Some(s))) => Some(s),
                    _ => None,
                }
            };
            let Some(status) = exited else { continue };
            let p = &mut self.pods[i];
            p.view.exits.push(status.code());
            p.view.running = false;
            p.child = None;
            if matches!(p.view.owner, Owner::Deployment { .. }) && !p.terminating {
                let (name, template) = (p.view.name.clone(), p.template.clone());
                let child = self.spawn(env, &name, &template).await?;
                let p = &mut self.pods[i];
                p.child = Some(child);
                p.view.starts += 1;
                p.view.running = true;
            }
        }
        self.publish();
        Ok(())
    }

    async fn add_pod(
        &mut self,
        env: &Env,
        name: String,
        owner: Owner,
        template: PodTemplateSpec,
    ) -> Result<(), String> {
        let child = self.spawn(env, &name, &template).await?;
        self.pods.push(Pod {
            view: PodView {
                log: self.dir.join(format!("{name}.log")),
                name,
                owner,
                starts: 1,
                exits: Vec::new(),
                running: true,
            },
            template,
            child: Some(child),
            terminating: false,
        });
        self.publish();
        Ok(())
    }

    /// Credentials of ServiceAccount `sa`. A token is bound to the ServiceAccount's UID (a
    /// reinstall creates a new one), so they are kept per UID.
    async fn kubeconfig(&mut self, env: &Env, sa: &str) -> Result<PathBuf, String> {
        use k8s_openapi::api::core::v1::ServiceAccount;
        let uid = Api::<ServiceAccount>::namespaced(env.client(), &self.namespace)
            .get(sa)
            .await
            .map_err(|e| format!("ServiceAccount {sa}: {e}"))?
            .metadata
            .uid
            .unwrap_or_default();
        if let Some(p) = self.tokens.get(&uid) {
            return Ok(p.clone());
        }
        let token = env
            .cp
            .service_account_token(&self.namespace, sa)
            .await
            .map_err(|e| format!("token for ServiceAccount {sa}: {e}"))?;
        let path = env
            .cp
            .kubeconfig_for_token(&token)
            .map_err(|e| format!("kubeconfig for {sa}: {e}"))?;
        self.tokens.insert(uid, path.clone());
        Ok(path)
    }

    /// The Linode token file of a pod: the key its `linode-token` volume picks from the Secret.
    async fn token_file(
        &self,
        env: &Env,
        pod: &str,
        template: &PodTemplateSpec,
    ) -> Result<PathBuf, String> {
        let spec = template
            .spec
            .as_ref()
            .ok_or("a pod template without spec")?;
        let secret = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "linode-token")
            .and_then(|v| v.secret.clone())
            .ok_or("no linode-token Secret volume")?;
        let name = secret
            .secret_name
            .ok_or("the token volume names no Secret")?;
        let key = secret
            .items
            .and_then(|i| i.first().map(|i| i.key.clone()))
            .ok_or("the token volume picks no key")?;
        let s = Api::<Secret>::namespaced(env.client(), &self.namespace)
            .get(&name)
            .await
            .map_err(|e| format!("Secret {name}: {e}"))?;
        let value = s
            .data
            .and_then(|d| d.get(&key).map(|b| b.0.clone()))
            .ok_or(format!("Secret {name} has no key {key}"))?;
        let path = self.dir.join(format!("{pod}.linode-token"));
        std::fs::write(&path, value).map_err(|e| format!("write token: {e}"))?;
        Ok(path)
    }

    async fn spawn(
        &mut self,
        env: &Env,
        pod: &str,
        template: &PodTemplateSpec,
    ) -> Result<tokio::process::Child, String> {
        let spec = template
            .spec
            .as_ref()
            .ok_or("a pod template without spec")?;
        let container = spec.containers.first().ok_or("a pod without containers")?;
        let sa = spec
            .service_account_name
            .clone()
            .ok_or("a pod without serviceAccountName")?;
        let kubeconfig = self.kubeconfig(env, &sa).await?;
        let token = self.token_file(env, pod, template).await?;
        let log = self.dir.join(format!("{pod}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("log {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| format!("log: {e}"))?;
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KUBECONFIG", &kubeconfig);
        for e in container.env.iter().flatten() {
            let value = match (&e.value, &e.value_from) {
                (Some(v), _) => v.clone(),
                (None, Some(from)) => {
                    match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                        Some("metadata.name") => pod.to_string(),
                        Some("metadata.namespace") => self.namespace.clone(),
                        other => {
                            return Err(format!("env {}: unsupported source {other:?}", e.name))
                        }
                    }
                }
                (None, None) => String::new(),
            };
            cmd.env(&e.name, value);
        }
        cmd.env("LINODE_TOKEN_FILE", &token)
            .env("HTTP_ADDR", format!("127.0.0.1:{}", free_port()))
            .args(container.args.iter().flatten())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        cmd.spawn().map_err(|e| format!("start {pod}: {e}"))
    }
}

/// What the Job controller writes when the Job's only pod ended.
async fn set_job_status(jobs: &Api<Job>, name: &str, success: bool) -> Result<(), String> {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let cond = |type_: &str, reason: &str| json!({"type": type_, "status": "True", "reason": reason, "lastProbeTime": now, "lastTransitionTime": now});
    let status = if success {
        json!({
            "startTime": now, "completionTime": now, "succeeded": 1,
            "conditions": [cond("SuccessCriteriaMet", "CompletionsReached"), cond("Complete", "CompletionsReached")],
        })
    } else {
        json!({
            "startTime": now, "failed": 1,
            "conditions": [cond("FailureTarget", "BackoffLimitExceeded"), cond("Failed", "BackoffLimitExceeded")],
        })
    };
    jobs.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": status})),
    )
    .await
    .map_err(|e| format!("status of Job {name}: {e}"))?;
    Ok(())
}
