//! The real binaries of the lab: `sharedip-node-agent run` inside a node namespace and
//! `sharedip-operator` in the root namespace, each with its own log file.
//!
//! The binaries are found through `SHAREDIP_AGENT_BIN` / `SHAREDIP_OPERATOR_BIN`, else next
//! to the running test executable (`target/<profile>/`), where `cargo test --workspace` or
//! `cargo build -p sharedip-node-agent -p sharedip-operator` puts them.
//!
//! A process is SIGKILLed and reaped when its handle is dropped, so none outlives the lab.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::netns::Netns;

/// The agent binary's name.
pub const AGENT_BIN: &str = "sharedip-node-agent";
/// The operator binary's name.
pub const OPERATOR_BIN: &str = "sharedip-operator";

/// Errors starting or signalling a process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The binary was not found.
    #[error("{name} not found (looked at {looked}); build it with `cargo build -p {package} --bin {name}` or set {env}")]
    NotFound {
        /// Binary name.
        name: &'static str,
        /// Package.
        package: &'static str,
        /// The override variable.
        env: &'static str,
        /// Where it looked.
        looked: String,
    },
    /// I/O (spawn, log file).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Finds `name` (see the module docs).
pub fn locate(
    name: &'static str,
    package: &'static str,
    env: &'static str,
) -> Result<PathBuf, ProcessError> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(ProcessError::NotFound {
                name,
                package,
                env,
                looked: p.display().to_string(),
            })
        };
    }
    let exe = std::env::current_exe().map_err(|source| ProcessError::Io {
        context: "finding the test executable".into(),
        source,
    })?;
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    let mut looked = Vec::new();
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        looked.push(candidate.display().to_string());
    }
    Err(ProcessError::NotFound {
        name,
        package,
        env,
        looked: looked.join(", "),
    })
}

/// A child process with a log file; SIGKILLed on drop.
#[derive(Debug)]
pub struct Process {
    label: String,
    child: Child,
    exit: Option<ExitStatus>,
    log: PathBuf,
}

impl Process {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(label: &str, mut cmd: Command, log: &Path) -> Result<Process, ProcessError> {
        let io = |context: String| move |source| ProcessError::Io { context, source };
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io(format!("opening {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(io(format!("opening {}", log.display())))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(io(format!("starting {label}")))?;
        Ok(Process {
            label: label.to_owned(),
            child,
            exit: None,
            log: log.to_path_buf(),
        })
    }

    /// What it is (`agent node-a`, `operator-1`).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status once it ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        self.exited().is_none()
    }

    /// Sends `signal` unless it already ended.
    pub fn signal(&mut self, signal: i32) {
        if self.exited().is_some() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill has no memory-safety preconditions; the pid is our own child,
            // not yet reaped, so it cannot have been reused.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    /// Waits up to `bound` for the process to end; `None` if it still runs.
    pub fn wait(&mut self, bound: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if self.exited().is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
        self.exit
    }

    /// The last `max` bytes of its log.
    pub fn log_tail(&self, max: usize) -> String {
        let text = std::fs::read_to_string(&self.log)
            .unwrap_or_else(|e| format!("(no log {}: {e})", self.log.display()));
        let start = text.len().saturating_sub(max);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        text[start..].to_owned()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How an agent is started (everything but the node).
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// The agent binary.
    pub binary: PathBuf,
    /// `--hold-time` (seconds).
    pub hold_time: u16,
    /// `--unbind-delay`, e.g. `300ms`; `None` keeps the agent's default.
    pub unbind_delay: Option<String>,
    /// `--propagation-margin`: fitted to the lab's route servers, whose shares take effect
    /// within a second, not Linode's 10-20 s.
    pub propagation_margin: Duration,
    /// Further arguments.
    pub extra_args: Vec<String>,
}

/// The agent's status socket in its directory (`sharedip-node-agent status --socket`).
pub const STATUS_SOCKET: &str = "status.sock";

/// Starts `sharedip-node-agent run` in `ns` as node `node`, with its kubeconfig, state file,
/// status socket and log in `dir` (the state file survives restarts, as on a real host).
pub fn start_agent(
    settings: &AgentSettings,
    ns: &Netns,
    node: &str,
    dir: &Path,
) -> Result<Process, ProcessError> {
    let hold = settings.hold_time.to_string();
    let mut cmd = ns.command(&settings.binary);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NODE_NAME", node)
        .env("KUBECONFIG", dir.join("kubeconfig"))
        .env("RUST_LOG", "info,sharedip_node_agent=debug")
        .arg("run")
        .args(["--dcid", &super::topology::DCID.to_string()])
        .args(["--neighborpattern", super::topology::NEIGHBOR_PATTERN])
        .args(["--hold-time", &hold])
        .args(["--connect-retry", "1s"])
        .args(["--resync-interval", "5s"])
        .args(["--shutdown-timeout", "10s"])
        .args(["--http-addr", "127.0.0.1:9180"])
        .arg("--state-file")
        .arg(dir.join("bound.json"))
        .arg("--status-socket")
        .arg(dir.join(STATUS_SOCKET));
    if let Some(d) = &settings.unbind_delay {
        cmd.args(["--unbind-delay", d]);
    }
    let margin = format!("{}ms", settings.propagation_margin.as_millis());
    cmd.args(["--propagation-margin", &margin]);
    cmd.args(&settings.extra_args);
    Process::spawn(&format!("agent {node}"), cmd, &dir.join("agent.log"))
}

/// How the operator replicas are started.
#[derive(Debug, Clone)]
pub struct OperatorSettings {
    /// The operator binary.
    pub binary: PathBuf,
    /// Kubeconfig (the control plane's admin one).
    pub kubeconfig: PathBuf,
    /// The stand-in's base URL.
    pub api_url: String,
    /// The file holding the stand-in's token.
    pub token_file: PathBuf,
    /// Namespace of the leader Lease.
    pub namespace: String,
    /// Further environment variables.
    pub env: Vec<(String, String)>,
}

/// Starts one operator replica named `name` (its Lease identity), logging to `log`.
pub fn start_operator(
    settings: &OperatorSettings,
    name: &str,
    log: &Path,
) -> Result<Process, ProcessError> {
    let mut cmd = Command::new(&settings.binary);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("KUBECONFIG", &settings.kubeconfig)
        .env("LINODE_API_URL", &settings.api_url)
        .env("LINODE_TOKEN_FILE", &settings.token_file)
        .env("POD_NAMESPACE", &settings.namespace)
        .env("POD_NAME", name)
        .env("RUST_LOG", "info,sharedip_operator=debug")
        .env("SHARE_BATCH_WINDOW", "100ms")
        .envs(settings.env.iter().map(|(k, v)| (k, v)))
        .args(["--http-addr", "127.0.0.1:0"]);
    Process::spawn(name, cmd, log)
}
