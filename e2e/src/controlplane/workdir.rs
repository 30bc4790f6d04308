//! The per-control-plane temp dir, and removal of those left by killed test processes.

use std::path::Path;

use tempfile::TempDir;

use super::Error;

const PREFIX: &str = "sharedip-cp-";
/// Records which process owns a work dir.
const OWNER_FILE: &str = "owner.pid";

/// Creates a fresh work dir in the system temp dir, after removing the work dirs of test
/// processes that no longer exist.
///
/// Drop guards cannot run when a test binary is killed with SIGKILL (a CI timeout, say). Its
/// etcd and kube-apiserver die with it (parent-death signal), but their directory — with
/// etcd's data — would stay; the next start cleans it up.
pub(crate) fn create() -> Result<TempDir, Error> {
    let tmp = std::env::temp_dir();
    remove_stale(&tmp);
    let dir = tempfile::Builder::new()
        .prefix(PREFIX)
        .tempdir_in(&tmp)
        .map_err(|e| Error::io(format!("creating a work dir in {}", tmp.display()), e))?;
    let owner = dir.path().join(OWNER_FILE);
    std::fs::write(&owner, std::process::id().to_string())
        .map_err(|e| Error::io(format!("writing {}", owner.display()), e))?;
    Ok(dir)
}

/// Removes `PREFIX*` dirs whose owner process is gone. Dirs without a readable owner file are
/// left alone (they may be being created right now, or not be ours).
fn remove_stale(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(PREFIX) {
            continue;
        }
        let path = entry.path();
        let Ok(owner) = std::fs::read_to_string(path.join(OWNER_FILE)) else {
            continue;
        };
        let Ok(pid) = owner.trim().parse::<u32>() else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::info!(dir = %path.display(), pid, "removed a stale control plane dir")
            }
            Err(e) => {
                tracing::debug!(dir = %path.display(), error = %e, "could not remove a stale dir")
            }
        }
    }
}
