//! The real `sharedip-node-agent` binary as a [`NodeSide`]: started inside the node
//! namespace with `ip netns exec`, its output in a log file, its sessions read back with
//! its own `status --json` subcommand through the agent's status socket (in the agent's
//! temp dir).
//!
//! The process is SIGKILLed on drop if a test did not stop it (its log is printed by the
//! [`super::Lab`]'s Drop when the test fails); the node namespace's Drop kills whatever is
//! left.

use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sharedip_e2e::netns::Netns;
use sharedip_node_agent::report::AgentReport;

use super::{NodeSide, PeerView};

/// The agent binary cargo built for this test.
pub const AGENT: &str = env!("CARGO_BIN_EXE_sharedip-node-agent");
/// The agent's HTTP address inside the node namespace (each namespace has its own
/// loopback, so a fixed port never collides between tests).
pub const HTTP_ADDR: &str = "127.0.0.1:9180";

/// A running `sharedip-node-agent` process in a node namespace.
pub struct AgentBinary {
    child: Child,
    exit: Option<ExitStatus>,
    ns: String,
    peers: Vec<Ipv6Addr>,
    log: PathBuf,
    dir: tempfile::TempDir,
}

/// A fresh temp dir for one agent: its state file, log and (Kubernetes mode) kubeconfig.
pub fn agent_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sharedip-agent-")
        .tempdir()
        .expect("temp dir")
}

impl AgentBinary {
    /// Starts `sharedip-node-agent <args> --state-file <dir>/bound.json --http-addr
    /// 127.0.0.1:9180 --status-socket <dir>/status.sock` inside `ns` with `env` added to its
    /// environment. `peers` are the route servers it is expected to talk to (for
    /// [`NodeSide::peers`]).
    pub fn start(
        ns: &Netns,
        peers: &[Ipv6Addr],
        dir: tempfile::TempDir,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let state = dir.path().join("bound.json");
        let socket = dir.path().join("status.sock");
        let mut all: Vec<&str> = args.to_vec();
        all.extend([
            "--state-file",
            state.to_str().expect("utf-8 path"),
            "--http-addr",
            HTTP_ADDR,
            "--status-socket",
            socket.to_str().expect("utf-8 path"),
        ]);
        Self::spawn(ns, peers, dir, Path::new(AGENT), &all, env)
    }

    /// Starts `program` (the agent binary, or a link to it) with exactly `args`, nothing
    /// appended: the state file, HTTP address and status socket come from the environment
    /// (`STATE_FILE`, `HTTP_ADDR`, `STATUS_SOCKET`), as a systemd unit's `Environment=` would
    /// set them.
    pub fn start_verbatim(
        ns: &Netns,
        peers: &[Ipv6Addr],
        dir: tempfile::TempDir,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let state = dir.path().join("bound.json");
        let socket = dir.path().join("status.sock");
        let mut all_env: Vec<(&str, &str)> = vec![
            ("STATE_FILE", state.to_str().expect("utf-8 path")),
            ("HTTP_ADDR", HTTP_ADDR),
            ("STATUS_SOCKET", socket.to_str().expect("utf-8 path")),
        ];
        all_env.extend_from_slice(env);
        Self::spawn(ns, peers, dir, program, args, &all_env)
    }

    fn spawn(
        ns: &Netns,
        peers: &[Ipv6Addr],
        dir: tempfile::TempDir,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let log = dir.path().join("agent.log");
        let out = std::fs::File::create(&log).expect("agent log file");
        let err = out.try_clone().expect("agent log file");
        let mut cmd = ns.command(program);
        cmd.args(args)
            // Keep the caller's environment from changing the agent's settings.
            .env_remove("HTTP_ADDR")
            .env_remove("STATUS_SOCKET")
            .env_remove("STATE_FILE")
            .env_remove("KUBECONFIG")
            .env("RUST_LOG", "info,sharedip_node_agent=debug")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start sharedip-node-agent");
        AgentBinary {
            child,
            exit: None,
            ns: ns.name().to_owned(),
            peers: peers.to_vec(),
            log,
            dir,
        }
    }

    /// The agent's temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the agent logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn status_command(&self, json: bool) -> Result<String, String> {
        let mut cmd = Command::new("ip");
        let socket = self.dir.path().join("status.sock");
        cmd.args(["netns", "exec", &self.ns, AGENT, "status", "--socket"])
            .arg(&socket);
        if json {
            cmd.arg("--json");
        }
        // `status` bounds its own request to 5 s.
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run status: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "status failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// `sharedip-node-agent status` run inside the namespace: the tables.
    pub fn status_text(&self) -> Result<String, String> {
        self.status_command(false)
    }

    /// `sharedip-node-agent status --json`, parsed.
    pub fn report(&self) -> Result<AgentReport, String> {
        let text = self.status_command(true)?;
        serde_json::from_str(&text).map_err(|e| format!("status --json: {e}: {text}"))
    }

    /// The exit status if the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Waits up to `bound` for the process to end by itself; `None` if it did not.
    pub fn wait_exit(&mut self, bound: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash or an OOM kill: nothing is withdrawn or unbound. Waits for the
    /// process to be reaped.
    pub fn kill(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
    }

    /// Sends SIGTERM and waits up to `bound` for the process to end; `None` if it did not
    /// (it is then left running for Drop to kill).
    pub fn terminate(&mut self, bound: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.exited() {
            return Some(s);
        }
        let pid = i32::try_from(self.child.id()).expect("pid fits i32");
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child,
        // not yet reaped, so it cannot have been reused.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl NodeSide for AgentBinary {
    fn peers(&self) -> Vec<PeerView> {
        match self.report() {
            Ok(r) => r
                .peers
                .iter()
                .map(|p| PeerView {
                    remote: p.peer.parse().unwrap_or(Ipv6Addr::UNSPECIFIED),
                    established: p.state == "established",
                    state: p.state.clone(),
                    established_count: p.established_count,
                    updates_received: p.updates_received,
                    last_error: p.last_error.clone(),
                })
                .collect(),
            // Not up yet (or gone): every session down, with the reason.
            Err(e) => self
                .peers
                .iter()
                .map(|&remote| PeerView {
                    remote,
                    established: false,
                    state: "unknown".to_owned(),
                    established_count: 0,
                    updates_received: 0,
                    last_error: Some(e.clone()),
                })
                .collect(),
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no agent log: {e})"))
    }

    async fn shutdown(mut self, _message: &str) {
        // The binary sends its own CEASE message on SIGTERM.
        let _ = self.terminate(Duration::from_secs(30));
    }
}

impl Drop for AgentBinary {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
