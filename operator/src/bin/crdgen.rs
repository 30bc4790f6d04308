//! Writes the SharedIP CustomResourceDefinition generated from the Rust types.
//!
//! `crdgen` writes `crds/sharedip.io_sharedips.yaml` and the Helm chart's copy; `crdgen --check`
//! exits non-zero when either file differs from what the types generate (CI runs it so the
//! committed CRD can never drift from the code).

// Unit tests may be long: a scenario reads best in one piece. Product code is held to the
// limit in clippy.toml.
#![cfg_attr(test, allow(clippy::too_many_lines))]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

const FILE: &str = "sharedip.io_sharedips.yaml";

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let targets: Vec<PathBuf> = vec![
        root.join("crds").join(FILE),
        root.join("charts/sharedip/crds").join(FILE),
    ];
    let yaml = match sharedip_operator::crd::crd_yaml() {
        Ok(y) => y,
        Err(e) => {
            eprintln!("crdgen: cannot render the CRD: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stale = false;
    for path in &targets {
        let current = std::fs::read_to_string(path).unwrap_or_default();
        if current == yaml {
            continue;
        }
        if check {
            eprintln!(
                "crdgen: {} is stale; run `cargo run -p sharedip-operator --bin crdgen`",
                path.display()
            );
            stale = true;
            continue;
        }
        if let Some(dir) = path.parent() {
            if let Err(e) = std::fs::create_dir_all(dir) {
                eprintln!("crdgen: cannot create {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
        }
        if let Err(e) = std::fs::write(path, &yaml) {
            eprintln!("crdgen: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("crdgen: wrote {}", path.display());
    }
    if stale {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
