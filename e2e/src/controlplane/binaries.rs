//! Where the control plane binaries built by `e2e/scripts/build-control-plane.sh` live.

use std::path::{Path, PathBuf};

use super::Error;

/// Directory holding `etcd`, `kube-apiserver`, `kubectl`, `kube-proxy` and `helm`; overrides everything else.
pub const BIN_DIR_ENV: &str = "SHAREDIP_BIN_DIR";
/// Cache root of the build script; binaries are in its `bin/` sub-directory.
pub const CACHE_DIR_ENV: &str = "SHAREDIP_CACHE_DIR";

/// The script that builds the binaries, as an absolute path inside this repository.
pub fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-control-plane.sh")
}

/// The directory the binaries are taken from: `$SHAREDIP_BIN_DIR`, else
/// `$SHAREDIP_CACHE_DIR/bin`, else `$HOME/.cache/sharedip/bin` — the same rule as the
/// build script.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = non_empty_env(BIN_DIR_ENV) {
        return PathBuf::from(dir);
    }
    let cache = non_empty_env(CACHE_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // Same as the script's $HOME; without a home, fall back to the temp dir.
            std::env::home_dir()
                .unwrap_or_else(std::env::temp_dir)
                .join(".cache/sharedip")
        });
    cache.join("bin")
}

/// Absolute path of one built binary (`"etcd"`, `"kube-apiserver"`, `"kubectl"`,
/// `"kube-proxy"`, `"helm"`),
/// or [`Error::BinaryMissing`] saying how to build it.
pub fn binary(name: &str) -> Result<PathBuf, Error> {
    let dir = bin_dir();
    let path = dir.join(name);
    if is_executable(&path) {
        Ok(path)
    } else {
        Err(Error::BinaryMissing {
            name: name.to_owned(),
            dir,
            script: build_script(),
        })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn non_empty_env(name: &str) -> Option<std::ffi::OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}
