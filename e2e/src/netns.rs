//! Network namespace helpers for tests and the lab: create and delete namespaces,
//! veth pairs and bridges, addresses and routes, run commands or tokio code inside a
//! namespace.
//!
//! Everything goes through `ip` (iproute2) so what a test does can be replayed by hand.
//! A [`Netns`] deletes its namespace when dropped, also while a test panics, after
//! killing whatever still runs inside it, so no namespace or daemon outlives a test.
//!
//! Network safety: the helpers do not pick addresses; callers use documentation
//! ranges only (2001:db8::/32, 192.0.2.0/24, 198.51.100.0/24).

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

/// Errors of the namespace helpers.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A command could not be started.
    #[error("cannot run {command}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// A command exited unsuccessfully.
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Exit status.
        status: std::process::ExitStatus,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// Entering the namespace failed.
    #[error("cannot enter network namespace {name}: {source}")]
    Enter {
        /// Namespace name.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// The thread running code inside the namespace died before it was ready.
    #[error("the thread inside network namespace {0} ended early")]
    ThreadGone(String),
}

/// Whether the process runs as root (namespaces need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn render(program: &OsStr, args: &[&OsStr]) -> String {
    let mut s = program.to_string_lossy().into_owned();
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command to completion and returns its standard output.
pub fn run<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<String, NetnsError> {
    let args: Vec<&OsStr> = args.iter().map(AsRef::as_ref).collect();
    let command = render(OsStr::new(program), &args);
    let out = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetnsError::Spawn {
            command: command.clone(),
            source,
        })?;
    check(command, out)
}

fn check(command: String, out: Output) -> Result<String, NetnsError> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetnsError::Failed {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace owned by this process; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named `sip-<tag>-<pid>-<n>`, with `lo` up, IPv6 forwarding
    /// off, and duplicate address detection off (so addresses are usable at once).
    pub fn create(tag: &str) -> Result<Netns, NetnsError> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("sip-{tag}-{}-{n}", std::process::id());
        run("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        for key in [
            "net.ipv6.conf.all.accept_dad",
            "net.ipv6.conf.default.accept_dad",
        ] {
            ns.sysctl(key, "0")?;
        }
        Ok(ns)
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String, NetnsError> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `program args` inside the namespace to completion; returns stdout.
    pub fn exec<S: AsRef<OsStr>>(&self, program: &str, args: &[S]) -> Result<String, NetnsError> {
        let mut full: Vec<&OsStr> = vec![
            OsStr::new("netns"),
            OsStr::new("exec"),
            OsStr::new(&self.name),
            OsStr::new(program),
        ];
        full.extend(args.iter().map(AsRef::as_ref));
        run("ip", &full)
    }

    /// A [`Command`] that runs `program` inside the namespace (`ip netns exec`
    /// execs the program, so the child's pid is the program's).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), NetnsError> {
        self.exec("sysctl", &["-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// Turns on IPv4 and IPv6 forwarding (a router namespace).
    pub fn enable_forwarding(&self) -> Result<(), NetnsError> {
        self.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        self.sysctl("net.ipv4.ip_forward", "1")
    }

    /// Adds an address (`2001:db8:1::10/64`) to `dev`; IPv6 without DAD.
    pub fn add_addr(&self, dev: &str, cidr: &str) -> Result<(), NetnsError> {
        if cidr.contains(':') {
            self.ip(&["addr", "add", cidr, "dev", dev, "nodad"])
        } else {
            self.ip(&["addr", "add", cidr, "dev", dev])
        }
        .map(drop)
    }

    /// Adds a route to `dest` (`default` or a prefix) via `gateway`.
    pub fn add_route(&self, dest: &str, gateway: &str) -> Result<(), NetnsError> {
        let family = if gateway.contains(':') { "-6" } else { "-4" };
        self.ip(&[family, "route", "add", dest, "via", gateway])
            .map(drop)
    }

    /// Sets a link administratively up or down.
    pub fn set_link(&self, dev: &str, up: bool) -> Result<(), NetnsError> {
        self.ip(&["link", "set", dev, if up { "up" } else { "down" }])
            .map(drop)
    }

    /// Creates a bridge `name` and sets it up.
    pub fn add_bridge(&self, name: &str) -> Result<(), NetnsError> {
        self.ip(&["link", "add", name, "type", "bridge"])?;
        self.set_link(name, true)
    }

    /// Enslaves `dev` to `bridge`.
    pub fn attach_to_bridge(&self, dev: &str, bridge: &str) -> Result<(), NetnsError> {
        self.ip(&["link", "set", dev, "master", bridge]).map(drop)
    }

    /// Process ids running inside the namespace.
    pub fn pids(&self) -> Vec<i32> {
        run("ip", &["netns", "pids", &self.name])
            .map(|s| {
                s.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Starts a thread inside the namespace with a current-thread tokio runtime and
    /// returns a handle to spawn tasks on it: sockets those tasks open live in the
    /// namespace. The runtime stops when the [`NsRuntime`] is dropped.
    pub fn runtime(&self) -> Result<NsRuntime, NetnsError> {
        let name = self.name.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("netns-{name}"))
            .spawn(move || {
                let setup = enter(&name).and_then(|()| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|source| NetnsError::Enter {
                            name: name.clone(),
                            source,
                        })
                });
                match setup {
                    Ok(rt) => {
                        let _ = ready_tx.send(Ok(rt.handle().clone()));
                        rt.block_on(async {
                            let _ = stop_rx.await;
                        });
                        // Dropping the runtime cancels the tasks still running.
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|source| NetnsError::Enter {
                name: self.name.clone(),
                source,
            })?;
        let handle = ready_rx
            .recv()
            .map_err(|_| NetnsError::ThreadGone(self.name.clone()))??;
        Ok(NsRuntime {
            handle,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Netns {
    /// Runs `f` on a short-lived thread that entered the namespace, and returns its result.
    /// Sockets `f` creates stay in the namespace for their whole life, whichever thread
    /// (or tokio runtime) uses them afterwards: e.g. a listener bound to the namespace's
    /// own 127.0.0.1, served from a runtime in the root namespace.
    pub fn in_namespace<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name(format!("in-{}", self.name))
                .spawn_scoped(scope, || enter(&self.name).map(|()| f()))
                .map_err(|source| NetnsError::Enter {
                    name: self.name.clone(),
                    source,
                })?;
            thread
                .join()
                .map_err(|_| NetnsError::ThreadGone(self.name.clone()))?
        })
    }
}

/// Moves the calling thread into the named network namespace.
fn enter(name: &str) -> Result<(), NetnsError> {
    let err = |source| NetnsError::Enter {
        name: name.to_owned(),
        source,
    };
    let f = File::open(format!("/run/netns/{name}")).map_err(err)?;
    // SAFETY: a valid namespace fd; CLONE_NEWNET only changes this thread's network
    // namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Daemons a test forgot (or could not stop because it panicked) would keep
        // the namespace alive; kill them first.
        for pid in self.pids() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        if let Err(error) = run("ip", &["netns", "del", &self.name]) {
            tracing::warn!(netns = %self.name, %error, "cannot delete network namespace");
        }
    }
}

/// A tokio runtime on a thread inside a namespace (see [`Netns::runtime`]).
#[derive(Debug)]
pub struct NsRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl NsRuntime {
    /// The runtime's handle: `handle().spawn(..)` or `let _g = handle().enter();`.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Creates a veth pair with one end in each namespace (created there directly, so
/// names only need to be unique inside each namespace) and sets both ends up.
pub fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) -> Result<(), NetnsError> {
    run(
        "ip",
        &[
            "link", "add", a_dev, "netns", &a.name, "type", "veth", "peer", "name", b_dev, "netns",
            &b.name,
        ],
    )?;
    a.set_link(a_dev, true)?;
    b.set_link(b_dev, true)
}
