//! The code conventions are enforced by the tools, not by review: product crates deny `unwrap`,
//! `expect` and over-long functions through the workspace lints, and test code opts out
//! explicitly.
//!
//! Two checks. Every workspace member's manifest either takes the workspace lints or, for the
//! test harness, opts out in writing, so a new crate cannot silently skip them. And clippy,
//! run with the repository's own `[workspace.lints]` and `clippy.toml` on a throwaway crate,
//! refuses a new `unwrap`, a new `expect` and a function over the length limit in product code,
//! and accepts the same `unwrap` in a unit test: a change to the lint configuration that stops
//! catching them fails here.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e has a parent")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The workspace members named in the root manifest.
fn members(manifest: &str) -> Vec<String> {
    let start = manifest
        .find("members = [")
        .expect("root manifest lists members");
    let list = &manifest[start + "members = [".len()..];
    let list = &list[..list.find(']').expect("members list closes")];
    list.split(',')
        .map(|m| m.trim().trim_matches('"').to_string())
        .filter(|m| !m.is_empty())
        .collect()
}

/// The `[workspace.lints.*]` tables of the root manifest, verbatim.
fn workspace_lints(manifest: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in manifest.lines() {
        if line.starts_with('[') {
            inside = line.starts_with("[workspace.lints");
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(
        out.contains("unwrap_used") && out.contains("expect_used"),
        "the root manifest's [workspace.lints] no longer names unwrap_used and expect_used:\n{out}"
    );
    out
}

#[test]
fn every_product_crate_takes_the_workspace_lints() {
    let root = root();
    let manifest = read(&root.join("Cargo.toml"));
    let mut missing = Vec::new();
    for member in members(&manifest) {
        let text = read(&root.join(&member).join("Cargo.toml"));
        let inherits = text.contains("[lints]\nworkspace = true");
        let opts_out = text.contains("[lints.clippy]") && text.contains("unwrap_used = \"allow\"");
        match member.as_str() {
            // The test harness: a failed unwrap there is a failed test.
            "e2e" => assert!(
                opts_out && !inherits,
                "e2e/Cargo.toml must opt out of the product lints explicitly"
            ),
            _ if !inherits => missing.push(member),
            _ => {}
        }
    }
    assert!(
        missing.is_empty(),
        "these workspace members do not take the workspace lints ([lints] workspace = true): {missing:?}"
    );
}

/// A crate in a fresh workspace carrying the repository's lint configuration; `Err` with
/// clippy's output when clippy refuses `lib`.
fn clippy_on(dir: &Path, lib: &str) -> Result<(), String> {
    let root = root();
    let manifest = read(&root.join("Cargo.toml"));
    let ws = dir.join("ws");
    std::fs::create_dir_all(ws.join("probe/src")).unwrap();
    std::fs::write(
        ws.join("Cargo.toml"),
        format!(
            "[workspace]\nresolver = \"2\"\nmembers = [\"probe\"]\n\n{}",
            workspace_lints(&manifest)
        ),
    )
    .unwrap();
    std::fs::copy(root.join("clippy.toml"), ws.join("clippy.toml")).unwrap();
    std::fs::write(
        ws.join("probe/Cargo.toml"),
        "[package]\nname = \"probe\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[lints]\nworkspace = true\n",
    )
    .unwrap();
    std::fs::write(ws.join("probe/src/lib.rs"), lib).unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "clippy",
            "--all-targets",
            "--offline",
            "--quiet",
            "--",
            "-D",
            "warnings",
        ])
        .current_dir(&ws)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("cargo clippy runs");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A function of `n` statements, each one line of code.
fn long_function(n: usize) -> String {
    let mut body = String::from("pub fn long(x: u64) -> u64 {\n    let mut y = x;\n");
    for i in 0..n {
        body.push_str(&format!("    y = y.wrapping_add({i});\n"));
    }
    body.push_str("    y\n}\n");
    body
}

#[test]
fn clippy_refuses_unwrap_expect_and_long_functions_in_product_code() {
    let dir = tempfile::tempdir().unwrap();
    let clean = "pub fn port(s: &str) -> Option<u16> {\n    s.parse().ok()\n}\n";
    clippy_on(dir.path(), clean).expect("a clean crate passes the lints");

    let unwrap = "pub fn port(s: &str) -> u16 {\n    s.parse().unwrap()\n}\n";
    let e = clippy_on(dir.path(), unwrap).expect_err("an unwrap in product code fails");
    assert!(e.contains("#unwrap_used"), "{e}");

    let expect = "pub fn port(s: &str) -> u16 {\n    s.parse().expect(\"a port\")\n}\n";
    let e = clippy_on(dir.path(), expect).expect_err("an expect in product code fails");
    assert!(e.contains("#expect_used"), "{e}");

    let e = clippy_on(dir.path(), &long_function(80)).expect_err("an 80-line function fails");
    assert!(e.contains("#too_many_lines"), "{e}");
    clippy_on(dir.path(), &long_function(20)).expect("a 20-line function passes");

    // Unit tests opt out through clippy.toml: an unwrap there is a failed test, not a crash.
    let test_unwrap = format!(
        "{clean}\n#[cfg(test)]\nmod tests {{\n    #[test]\n    fn parses() {{\n        assert_eq!(\"80\".parse::<u16>().unwrap(), 80);\n        assert_eq!(super::port(\"80\").expect(\"a port\"), 80);\n    }}\n}}\n"
    );
    clippy_on(dir.path(), &test_unwrap).expect("unwrap and expect in a unit test pass");
}
