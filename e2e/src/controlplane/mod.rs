//! A real Kubernetes control plane — `etcd` and `kube-apiserver` v1.34 — on loopback, for tests.
//!
//! The binaries come from `e2e/scripts/build-control-plane.sh`, which builds them from their Go
//! modules into `${SHAREDIP_CACHE_DIR:-$HOME/.cache/sharedip}/bin` (override the directory with
//! `SHAREDIP_BIN_DIR`). [`ControlPlane::start`] then:
//!
//! 1. generates a throwaway PKI (CA, apiserver serving certificate for `127.0.0.1`, an admin
//!    client certificate in `system:masters`, a ServiceAccount token signing key);
//! 2. starts etcd (data in a temp dir, fsync off) and kube-apiserver on free 127.0.0.1 ports,
//!    with `--authorization-mode=Node,RBAC` and a ServiceAccount issuer so the TokenRequest API
//!    works;
//! 3. waits (bounded) for `/readyz` and for the `default` namespace.
//!
//! Process output goes to `etcd.log` / `kube-apiserver.log` in the temp dir; a failed start
//! returns [`Error::Startup`] with the tail of both. Dropping the [`ControlPlane`] kills both
//! process groups and deletes the temp dir, also while a test panics; several control planes
//! can run side by side in one test binary. If the test process itself is SIGKILLed (no
//! destructor runs), etcd and kube-apiserver still die with it (parent-death signal) and the
//! next [`ControlPlane::start`] removes the orphaned temp dir.
//!
//! [`ControlPlane::stop_apiserver`] and [`ControlPlane::start_apiserver`] take kube-apiserver
//! away and bring it back on the same port (etcd and its data stay), for outage scenarios.
//!
//! Tests reach it as an admin through [`ControlPlane::client`], [`ControlPlane::kubeconfig_path`]
//! (for our binaries and kubectl/helm), [`ControlPlane::kubectl`] and [`ControlPlane::helm`];
//! as a ServiceAccount through [`ControlPlane::service_account_token`] plus
//! [`ControlPlane::client_for_token`] or [`ControlPlane::kubeconfig_for_token`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), sharedip_e2e::controlplane::Error> {
//! use sharedip_e2e::controlplane::ControlPlane;
//! let cp = ControlPlane::start().await?;
//! let client = cp.client(); // admin kube::Client
//! let out = cp.kubectl(["get", "namespaces"]).await?;
//! # Ok(()) }
//! ```
//!
//! # What runs and what does not
//!
//! There is no kube-controller-manager, scheduler or kubelet. kube-apiserver 1.34 still does
//! by itself, before `/readyz` turns green or within moments of it:
//! - the system namespaces `default`, `kube-system`, `kube-public`, `kube-node-lease`
//!   (`start` waits for `default`);
//! - the `kubernetes` Service in `default` (ClusterIP `10.0.0.1`; no endpoints are published
//!   for the loopback advertise address — nothing here routes to ClusterIPs anyway);
//! - RBAC bootstrap roles and bindings (`cluster-admin`, `system:*`, aggregated `admin`/`edit`/
//!   `view`), API priority-and-fairness defaults, the `extension-apiserver-authentication`
//!   ConfigMap;
//! - CRD establishment, CEL/OpenAPI validation, defaulting, status subresources, server-side
//!   apply, watches, finalizers as blocking markers, Leases, Events, TokenRequest/TokenReview,
//!   SubjectAccessReview (`kubectl auth can-i`).
//!
//! What the controller-manager would do and therefore does **not** happen here:
//! - no `default` ServiceAccount and no `kube-root-ca.crt` ConfigMap in new namespaces: create
//!   the ServiceAccount you need before asking for its token. The `ServiceAccount` admission
//!   plugin is disabled (as controller-runtime's envtest does) so Pods can be created as plain
//!   objects without one;
//! - no namespace finalization: a deleted namespace stays `Terminating` forever — use a fresh
//!   namespace per test instead of deleting one;
//! - no garbage collection: objects with `ownerReferences` are not deleted with their owner, and
//!   foreground deletion never completes;
//! - no node lifecycle: Node conditions and taints stay exactly as the test writes them, nothing
//!   is evicted; Nodes are plain objects (no kubelet registers them);
//! - no workload controllers (Deployments never get ReplicaSets or Pods), no scheduler (Pods
//!   stay Pending unless a test sets `spec.nodeName` and their status), no EndpointSlices for
//!   user Services, no CSR signing, no legacy token Secrets (use [`ControlPlane::service_account_token`]).

mod binaries;
mod kubeconfig;
mod pki;
mod ports;
mod process;
mod workdir;

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use binaries::{bin_dir, binary, build_script, BIN_DIR_ENV, CACHE_DIR_ENV};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kubeconfig::Credentials;
pub use pki::ADMIN_USER;
use process::ManagedProcess;
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;

/// Field manager used by [`ControlPlane::apply_crds`].
pub const FIELD_MANAGER: &str = "sharedip-e2e";

/// Issuer of ServiceAccount tokens minted by this control plane (also their default audience).
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Bytes of each process log quoted in a startup error.
const LOG_TAIL_BYTES: u64 = 6 * 1024;
/// How often readiness is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Attempts when a port picked as free was taken before our server bound it.
const PORT_CONFLICT_ATTEMPTS: usize = 3;

/// Errors of the control plane harness.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A binary is not built yet.
    #[error(
        "{name} not found in {dir}: build the control plane binaries with `{script}` \
         (or set SHAREDIP_BIN_DIR to a directory that holds them)"
    )]
    BinaryMissing {
        /// Binary name.
        name: String,
        /// Directory searched.
        dir: PathBuf,
        /// The build script to run.
        script: PathBuf,
    },
    /// A file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Certificate or key generation failed.
    #[error("generating test certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    /// A kubeconfig file could not be loaded.
    #[error("loading kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// A Kubernetes API call failed.
    #[error("{context}: {source}")]
    Kube {
        /// What was being done.
        context: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// etcd or kube-apiserver did not come up; `logs` holds the tail of both process logs.
    #[error("control plane did not start: {reason}\n{logs}")]
    Startup {
        /// Why.
        reason: String,
        /// Tails of the etcd and kube-apiserver logs.
        logs: String,
        /// A server could not bind its port (worth retrying with new ports).
        port_conflict: bool,
    },
    /// A manifest could not be read or is not what was expected.
    #[error("{path}: {message}")]
    Manifest {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Something did not happen within its time bound.
    #[error("timed out after {after:?} waiting for {waiting_for}")]
    Timeout {
        /// What was awaited.
        waiting_for: String,
        /// The bound.
        after: Duration,
    },
    /// The TokenRequest succeeded but carried no token.
    #[error("TokenRequest for ServiceAccount {namespace}/{name} returned an empty token")]
    EmptyToken {
        /// Namespace of the ServiceAccount.
        namespace: String,
        /// Name of the ServiceAccount.
        name: String,
    },
}

impl Error {
    fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    fn kube(context: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube {
            context: context.into(),
            source,
        }
    }
}

/// Knobs for [`ControlPlane::start_with`].
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Bound for etcd + kube-apiserver to become ready (generous: CI has 2 cores and tests
    /// start control planes in parallel).
    pub startup_timeout: Duration,
    /// Bound for each `kubectl` / `helm` run.
    pub kubectl_timeout: Duration,
    /// Extra kube-apiserver flags (`--flag=value`), appended after the harness's own.
    pub extra_apiserver_args: Vec<String>,
}

impl Default for StartOptions {
    fn default() -> Self {
        Self {
            startup_timeout: Duration::from_secs(180),
            kubectl_timeout: Duration::from_secs(120),
            extra_apiserver_args: Vec::new(),
        }
    }
}

/// A running etcd + kube-apiserver pair, stopped and deleted on drop.
pub struct ControlPlane {
    // Field order matters for Drop: processes die before their directory is removed.
    apiserver: ManagedProcess,
    etcd: ManagedProcess,
    /// How kube-apiserver was started, for [`Self::start_apiserver`].
    apiserver_command: (PathBuf, Vec<OsString>),
    startup_timeout: Duration,
    client: kube::Client,
    server_url: String,
    kubeconfig: PathBuf,
    ca_cert: PathBuf,
    kubectl_timeout: Duration,
    kubeconfig_seq: AtomicU64,
    dir: TempDir,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server_url", &self.server_url)
            .field("dir", &self.dir.path())
            .field("apiserver_pid", &self.apiserver.pid())
            .field("etcd_pid", &self.etcd.pid())
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// Starts a control plane with [`StartOptions::default`].
    pub async fn start() -> Result<Self, Error> {
        Self::start_with(StartOptions::default()).await
    }

    /// Starts a control plane; retries with new ports when one was taken meanwhile.
    pub async fn start_with(options: StartOptions) -> Result<Self, Error> {
        let etcd_bin = binary("etcd")?;
        let apiserver_bin = binary("kube-apiserver")?;
        let mut attempt = 1;
        loop {
            match Self::start_once(&options, &etcd_bin, &apiserver_bin).await {
                Err(Error::Startup {
                    port_conflict: true,
                    reason,
                    ..
                }) if attempt < PORT_CONFLICT_ATTEMPTS => {
                    tracing::warn!(attempt, %reason, "port taken, restarting control plane on new ports");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn start_once(
        options: &StartOptions,
        etcd_bin: &Path,
        apiserver_bin: &Path,
    ) -> Result<Self, Error> {
        let dir = workdir::create()?;
        let pki = pki::Pki::generate()?.write(&dir.path().join("pki"))?;
        let ports = ports::free_loopback_ports(3)
            .map_err(|e| Error::io("finding free loopback ports", e))?;
        let (etcd_client_port, etcd_peer_port, apiserver_port) = (ports[0], ports[1], ports[2]);

        let etcd_data = dir.path().join("etcd-data");
        let etcd_client_url = format!("http://127.0.0.1:{etcd_client_port}");
        let etcd_peer_url = format!("http://127.0.0.1:{etcd_peer_port}");
        let etcd_args: Vec<OsString> = [
            "--name=sharedip-e2e".to_owned(),
            format!("--data-dir={}", etcd_data.display()),
            format!("--listen-client-urls={etcd_client_url}"),
            format!("--advertise-client-urls={etcd_client_url}"),
            format!("--listen-peer-urls={etcd_peer_url}"),
            format!("--initial-advertise-peer-urls={etcd_peer_url}"),
            format!("--initial-cluster=sharedip-e2e={etcd_peer_url}"),
            // Test data is thrown away; fsync only costs time on a busy CI disk.
            "--unsafe-no-fsync=true".to_owned(),
            "--log-level=warn".to_owned(),
        ]
        .into_iter()
        .map(OsString::from)
        .collect();
        let mut etcd =
            ManagedProcess::spawn("etcd", etcd_bin, &etcd_args, dir.path().join("etcd.log"))?;

        let server_url = format!("https://127.0.0.1:{apiserver_port}");
        let kubeconfig = dir.path().join("admin.kubeconfig");
        kubeconfig::write(
            &kubeconfig,
            &server_url,
            &pki.ca_cert,
            ADMIN_USER,
            Credentials::ClientCertificate {
                cert: &pki.admin_cert,
                key: &pki.admin_key,
            },
        )?;

        let startup = Startup {
            deadline: tokio::time::Instant::now() + options.startup_timeout,
            timeout: options.startup_timeout,
        };
        // kube-apiserver gives up if etcd is unreachable for too long at start, so give etcd a
        // head start until its client port accepts connections.
        startup
            .wait_until(&mut [&mut etcd], "etcd to accept connections", || async {
                tokio::net::TcpStream::connect(("127.0.0.1", etcd_client_port))
                    .await
                    .is_ok()
            })
            .await?;

        let apiserver_args: Vec<OsString> = [
            format!("--etcd-servers={etcd_client_url}"),
            "--bind-address=127.0.0.1".to_owned(),
            "--advertise-address=127.0.0.1".to_owned(),
            format!("--secure-port={apiserver_port}"),
            format!("--cert-dir={}", dir.path().join("pki").display()),
            format!("--tls-cert-file={}", pki.serving_cert.display()),
            format!("--tls-private-key-file={}", pki.serving_key.display()),
            format!("--client-ca-file={}", pki.ca_cert.display()),
            "--authorization-mode=Node,RBAC".to_owned(),
            format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
            format!("--service-account-key-file={}", pki.sa_public_key.display()),
            format!(
                "--service-account-signing-key-file={}",
                pki.sa_private_key.display()
            ),
            // Only allocation ranges for ClusterIPs; no traffic ever goes there. Both families,
            // so IPv6 and dual-stack Services can be created.
            "--service-cluster-ip-range=10.0.0.0/24,2001:db8:5e::/112".to_owned(),
            // Without the controller-manager no namespace gets a `default` ServiceAccount, so
            // this plugin would reject every Pod (see the module docs).
            "--disable-admission-plugins=ServiceAccount".to_owned(),
            "--profiling=false".to_owned(),
        ]
        .into_iter()
        .chain(options.extra_apiserver_args.iter().cloned())
        .map(OsString::from)
        .collect();
        let mut apiserver = ManagedProcess::spawn(
            "kube-apiserver",
            apiserver_bin,
            &apiserver_args,
            dir.path().join("kube-apiserver.log"),
        )?;

        let client = client_from_kubeconfig(&kubeconfig).await?;
        startup
            .wait_until(
                &mut [&mut etcd, &mut apiserver],
                "kube-apiserver /readyz",
                || readyz(&client),
            )
            .await?;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        startup
            .wait_until(
                &mut [&mut etcd, &mut apiserver],
                "the default namespace",
                || async { matches!(namespaces.get_opt("default").await, Ok(Some(_))) },
            )
            .await?;

        tracing::info!(
            server = %server_url,
            dir = %dir.path().display(),
            etcd_pid = etcd.pid(),
            apiserver_pid = apiserver.pid(),
            "control plane ready"
        );
        Ok(Self {
            apiserver,
            etcd,
            apiserver_command: (apiserver_bin.to_path_buf(), apiserver_args),
            startup_timeout: options.startup_timeout,
            client,
            server_url,
            kubeconfig,
            ca_cert: pki.ca_cert,
            kubectl_timeout: options.kubectl_timeout,
            kubeconfig_seq: AtomicU64::new(0),
            dir,
        })
    }

    /// Kills kube-apiserver (SIGKILL, as when it crashes or its node reboots); etcd and its
    /// data stay. Clients get connection errors until [`Self::start_apiserver`].
    pub fn stop_apiserver(&mut self) {
        self.apiserver.kill();
        tracing::info!(server = %self.server_url, "kube-apiserver stopped");
    }

    /// Whether kube-apiserver runs.
    pub fn apiserver_running(&mut self) -> bool {
        self.apiserver.exit_status().is_none()
    }

    /// Starts kube-apiserver again, on the same port with the same flags and certificates
    /// (clients and kubeconfigs keep working), and waits (bounded by the start options'
    /// startup timeout) until `/readyz` answers. Does nothing while it runs.
    pub async fn start_apiserver(&mut self) -> Result<(), Error> {
        if self.apiserver_running() {
            return Ok(());
        }
        let (program, args) = &self.apiserver_command;
        self.apiserver = ManagedProcess::spawn(
            "kube-apiserver",
            program,
            args,
            self.dir.path().join("kube-apiserver.log"),
        )?;
        let startup = Startup {
            deadline: tokio::time::Instant::now() + self.startup_timeout,
            timeout: self.startup_timeout,
        };
        let client = self.client.clone();
        startup
            .wait_until(
                &mut [&mut self.etcd, &mut self.apiserver],
                "kube-apiserver /readyz after a restart",
                || readyz(&client),
            )
            .await?;
        tracing::info!(server = %self.server_url, pid = self.apiserver.pid(), "kube-apiserver started again");
        Ok(())
    }

    /// An admin (`system:masters`) client.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The admin kubeconfig file, usable as `KUBECONFIG` by kubectl, helm and our binaries.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// PEM of the CA that signed the apiserver's serving certificate.
    pub fn ca_cert_path(&self) -> &Path {
        &self.ca_cert
    }

    /// The temp dir holding certificates, etcd data, kubeconfigs and logs (deleted on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Process ids of kube-apiserver and etcd (each leads its own process group).
    pub fn pids(&self) -> [u32; 2] {
        [self.apiserver.pid(), self.etcd.pid()]
    }

    /// The tail of both process logs, for a failing test's message.
    pub fn log_tails(&self) -> String {
        format_logs([&self.etcd, &self.apiserver], LOG_TAIL_BYTES)
    }

    /// Writes a kubeconfig (mode 0600, inside [`Self::dir`]) that authenticates with `token`,
    /// e.g. a ServiceAccount token from [`Self::service_account_token`].
    pub fn kubeconfig_for_token(&self, token: &str) -> Result<PathBuf, Error> {
        let n = self.kubeconfig_seq.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.path().join(format!("token-{n}.kubeconfig"));
        kubeconfig::write(
            &path,
            &self.server_url,
            &self.ca_cert,
            "token-user",
            Credentials::Token(token),
        )?;
        Ok(path)
    }

    /// A client that authenticates with `token` (and nothing else).
    pub async fn client_for_token(&self, token: &str) -> Result<kube::Client, Error> {
        let path = self.kubeconfig_for_token(token)?;
        let client = client_from_kubeconfig(&path).await;
        // The token is only needed while building the client; don't leave it on disk.
        let _ = std::fs::remove_file(&path);
        client
    }

    /// Mints a token for ServiceAccount `namespace/name` through the TokenRequest API (valid
    /// one hour, audience: the apiserver). The ServiceAccount must exist.
    pub async fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<String, Error> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: Vec::new(),
                expiration_seconds: Some(3600),
                ..Default::default()
            },
            ..Default::default()
        };
        let response = api
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .map_err(|e| {
                Error::kube(
                    format!("requesting a token for ServiceAccount {namespace}/{name}"),
                    e,
                )
            })?;
        match response.status {
            Some(status) if !status.token.is_empty() => Ok(status.token),
            _ => Err(Error::EmptyToken {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            }),
        }
    }

    /// Server-side applies every CustomResourceDefinition in the `*.yaml` / `*.yml` files of
    /// `dir` (multi-document files allowed) and waits until each is Established. Returns the
    /// CRD names in file order.
    pub async fn apply_crds(&self, dir: &Path) -> Result<Vec<String>, Error> {
        let crds = read_crds(dir)?;
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let mut names = Vec::with_capacity(crds.len());
        for (path, crd) in &crds {
            let name = crd.metadata.name.clone().ok_or_else(|| Error::Manifest {
                path: path.clone(),
                message: "a CustomResourceDefinition has no metadata.name".to_owned(),
            })?;
            api.patch(&name, &params, &Patch::Apply(crd))
                .await
                .map_err(|e| {
                    Error::kube(format!("applying CRD {name} from {}", path.display()), e)
                })?;
            names.push(name);
        }
        let bound = Duration::from_secs(60);
        for name in &names {
            let established = await_condition(api.clone(), name, conditions::is_crd_established());
            match tokio::time::timeout(bound, established).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    return Err(Error::Timeout {
                        waiting_for: format!("CRD {name} to be Established ({e})"),
                        after: bound,
                    })
                }
                Err(_) => {
                    return Err(Error::Timeout {
                        waiting_for: format!("CRD {name} to be Established"),
                        after: bound,
                    })
                }
            }
        }
        Ok(names)
    }

    /// Runs the built kubectl with the admin kubeconfig (bounded by
    /// [`StartOptions::kubectl_timeout`]). A non-zero exit is not an error: check
    /// `Output::status`.
    pub async fn kubectl<I, S>(&self, args: I) -> Result<Output, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.kubectl_as(&self.kubeconfig, args, None).await
    }

    /// Like [`Self::kubectl`], feeding `stdin` (e.g. for `kubectl apply -f -`).
    pub async fn kubectl_with_stdin<I, S>(&self, args: I, stdin: &[u8]) -> Result<Output, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.kubectl_as(&self.kubeconfig, args, Some(stdin)).await
    }

    /// Runs kubectl with another kubeconfig (e.g. from [`Self::kubeconfig_for_token`]).
    pub async fn kubectl_as<I, S>(
        &self,
        kubeconfig: &Path,
        args: I,
        stdin: Option<&[u8]>,
    ) -> Result<Output, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_tool("kubectl", kubeconfig, args, stdin).await
    }

    /// Runs the built helm against this control plane with the admin kubeconfig (bounded
    /// like kubectl). Helm's cache, config and data dirs are inside [`Self::dir`], so it
    /// leaves nothing in `$HOME`.
    pub async fn helm<I, S>(&self, args: I) -> Result<Output, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_tool("helm", &self.kubeconfig, args, None).await
    }

    async fn run_tool<I, S>(
        &self,
        tool: &str,
        kubeconfig: &Path,
        args: I,
        stdin: Option<&[u8]>,
    ) -> Result<Output, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let program = binary(tool)?;
        let home = self.dir.path().join("tool-home");
        let mut command = tokio::process::Command::new(&program);
        command
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            // Caches and configs stay in the temp dir: nothing may outlive the test.
            .env("KUBECACHEDIR", home.join("kube-cache"))
            .env("HELM_CACHE_HOME", home.join("helm-cache"))
            .env("HELM_CONFIG_HOME", home.join("helm-config"))
            .env("HELM_DATA_HOME", home.join("helm-data"))
            .stdin(if stdin.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", program.display()), e))?;
        let input = stdin.zip(child.stdin.take());
        let run = async move {
            if let Some((input, mut pipe)) = input {
                pipe.write_all(input)
                    .await
                    .map_err(|e| Error::io(format!("writing {tool}'s stdin"), e))?;
                // Dropping the pipe closes it so the tool sees EOF.
            }
            child
                .wait_with_output()
                .await
                .map_err(|e| Error::io(format!("running {tool}"), e))
        };
        // On timeout `run` is dropped, and kill_on_drop kills the tool.
        tokio::time::timeout(self.kubectl_timeout, run)
            .await
            .map_err(|_| Error::Timeout {
                waiting_for: tool.to_owned(),
                after: self.kubectl_timeout,
            })?
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // The apiserver first, so it does not log a storm of etcd errors; the TempDir field
        // is dropped after this, once nothing writes into it.
        self.apiserver.kill();
        self.etcd.kill();
    }
}

/// The time bound of one start. On failure the processes are dropped (killed) by the caller.
struct Startup {
    deadline: tokio::time::Instant,
    timeout: Duration,
}

impl Startup {
    /// Polls `ready` until it returns true; fails fast if one of `processes` exits, and with
    /// their logs at the deadline.
    async fn wait_until<F, Fut>(
        &self,
        processes: &mut [&mut ManagedProcess],
        what: &str,
        mut ready: F,
    ) -> Result<(), Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        loop {
            for process in processes.iter_mut() {
                if let Some(status) = process.exit_status() {
                    let reason = format!(
                        "{} exited ({status}) while waiting for {what}",
                        process.name()
                    );
                    return Err(startup_error(processes, reason));
                }
            }
            if matches!(
                tokio::time::timeout_at(self.deadline, ready()).await,
                Ok(true)
            ) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= self.deadline {
                let reason = format!("timed out after {:?} waiting for {what}", self.timeout);
                return Err(startup_error(processes, reason));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

fn startup_error(processes: &[&mut ManagedProcess], reason: String) -> Error {
    let logs = format_logs(processes.iter().map(|p| &**p), LOG_TAIL_BYTES);
    let port_conflict = logs.contains("address already in use");
    tracing::error!(%reason, "control plane failed to start");
    Error::Startup {
        reason,
        logs,
        port_conflict,
    }
}

fn format_logs<'a>(
    processes: impl IntoIterator<Item = &'a ManagedProcess>,
    max_bytes: u64,
) -> String {
    let mut out = String::new();
    for process in processes {
        out.push_str(&format!(
            "----- {} log ({}) -----\n{}\n",
            process.name(),
            process.log_path().display(),
            process.log_tail(max_bytes).trim_end()
        ));
    }
    out
}

/// Whether `/readyz` answers 200 within 5 s.
async fn readyz(client: &kube::Client) -> bool {
    let Ok(request) = http::Request::get("/readyz").body(Vec::new()) else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), client.request_text(request)).await,
        Ok(Ok(_))
    )
}

async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client, Error> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig {
        path: path.to_owned(),
        source,
    })?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|source| Error::Kubeconfig {
                path: path.to_owned(),
                source,
            })?;
    config.connect_timeout = Some(Duration::from_secs(5));
    kube::Client::try_from(config)
        .map_err(|e| Error::kube(format!("building a client from {}", path.display()), e))
}

/// Reads every CustomResourceDefinition document from the YAML files in `dir`, sorted by file
/// name.
fn read_crds(dir: &Path) -> Result<Vec<(PathBuf, CustomResourceDefinition)>, Error> {
    use serde::Deserialize;
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::io(format!("reading directory {}", dir.display()), e))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| Error::io(format!("reading directory {}", dir.display()), e))?
            .path();
        let is_yaml = matches!(
            path.extension().and_then(OsStr::to_str),
            Some("yaml" | "yml")
        );
        if is_yaml && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    let mut crds = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(document).map_err(|e| Error::Manifest {
                path: path.clone(),
                message: format!("invalid YAML: {e}"),
            })?;
            if value.is_null() {
                continue;
            }
            let kind = value.get("kind").and_then(serde_yaml::Value::as_str);
            if kind != Some("CustomResourceDefinition") {
                return Err(Error::Manifest {
                    path: path.clone(),
                    message: format!(
                        "expected only CustomResourceDefinitions, found kind {}",
                        kind.unwrap_or("<none>")
                    ),
                });
            }
            let crd: CustomResourceDefinition =
                serde_yaml::from_value(value).map_err(|e| Error::Manifest {
                    path: path.clone(),
                    message: format!("not a valid CustomResourceDefinition: {e}"),
                })?;
            crds.push((path.clone(), crd));
        }
    }
    if crds.is_empty() {
        return Err(Error::Manifest {
            path: dir.to_owned(),
            message: "no CustomResourceDefinition found in *.yaml / *.yml files".to_owned(),
        });
    }
    Ok(crds)
}
