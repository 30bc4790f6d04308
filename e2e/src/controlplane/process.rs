//! Child processes (etcd, kube-apiserver) that die with their owner.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use super::Error;

/// A child process in its own process group whose stdout and stderr go to a log file.
///
/// Dropping it kills the whole group with SIGKILL and reaps the child. As a second line of
/// defence, the child gets `PR_SET_PDEATHSIG = SIGKILL`, so it also dies when the test
/// process is killed outright and no destructor runs. That signal fires when the *thread*
/// that spawned the child exits, so start control planes from the test's own task (not from a
/// short-lived thread).
#[derive(Debug)]
pub(crate) struct ManagedProcess {
    name: &'static str,
    child: Child,
    log_path: PathBuf,
    exited: Option<ExitStatus>,
}

impl ManagedProcess {
    pub(crate) fn spawn(
        name: &'static str,
        program: &Path,
        args: &[OsString],
        log_path: PathBuf,
    ) -> Result<Self, Error> {
        // Appending: a restarted process (see `ControlPlane::start_apiserver`) keeps the
        // log of the one before it.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| Error::io(format!("opening {}", log_path.display()), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| Error::io(format!("duplicating {}", log_path.display()), e))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0);
        let parent = std::process::id();
        // SAFETY: the closure runs between fork and exec and only calls async-signal-safe
        // functions (prctl, getppid, _exit).
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() as u32 != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| Error::io(format!("starting {name} ({})", program.display()), e))?;
        tracing::debug!(process = name, pid = child.id(), log = %log_path.display(), "started");
        Ok(Self {
            name,
            child,
            log_path,
            exited: None,
        })
    }

    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The exit status if the process has already exited.
    pub(crate) fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// The last `max_bytes` of the log, trimmed to whole lines.
    pub(crate) fn log_tail(&self, max_bytes: u64) -> String {
        read_tail(&self.log_path, max_bytes)
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log_path.display()))
    }

    /// SIGKILL to the process group, then reap. Idempotent.
    pub(crate) fn kill(&mut self) {
        if self.exited.is_some() {
            return;
        }
        if let Ok(pgid) = i32::try_from(self.child.id()) {
            // SAFETY: plain syscall; a negative pid addresses the process group we created
            // with process_group(0), whose id is the child's pid.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        // In case the group signal failed (e.g. the child left its group), kill the child
        // itself; errors only mean it is already gone.
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(status) => self.exited = Some(status),
            Err(e) => tracing::warn!(process = self.name, error = %e, "reaping failed"),
        }
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read_tail(path: &Path, max_bytes: u64) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(max_bytes);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if start > 0 {
        // Drop the partial first line.
        if let Some(pos) = text.find('\n') {
            return Ok(format!("[…]\n{}", &text[pos + 1..]));
        }
    }
    Ok(text)
}
