//! The repository stands alone: a clone of it, with nothing beside it, builds, tests and
//! documents itself. No file reads, cites or links anything outside the repository (a sibling
//! folder of a particular checkout layout, a design document that is not in the repository),
//! every relative link in the Markdown files resolves to a file inside it, and code and docs
//! speak of the product, not of the tracker's item numbers.

use std::path::{Component, Path, PathBuf};

/// The repository root (this crate is `<root>/e2e`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e has a parent")
        .to_path_buf()
}

/// Directories that hold build output, caches or fuzzing state, not sources.
const SKIP_DIRS: &[&str] = &[
    ".git",
    "target",
    "corpus",
    "artifacts",
    "coverage",
    ".cache",
    "node_modules",
];

fn text_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            if !SKIP_DIRS.contains(&name.as_str()) {
                text_files(&path, out);
            }
        } else if kind.is_file() && name != ".git" {
            // A `.git` file is a linked worktree's pointer to its repository, not a source.
            // Binary files (captures, images) are not text and cannot cite anything.
            if let Ok(bytes) = std::fs::read(&path) {
                if !bytes.contains(&0) && std::str::from_utf8(&bytes).is_ok() {
                    out.push(path);
                }
            }
        }
    }
}

fn all_text_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    text_files(&root(), &mut files);
    files.sort();
    assert!(
        files.len() > 50,
        "expected the repository's sources under {}, found {} files",
        root().display(),
        files.len()
    );
    files
}

fn rel(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Text that points outside the repository. Spelled in pieces so this file does not match
/// itself.
fn outside_references() -> Vec<String> {
    vec![
        ["..", "/shared"].concat(),
        ["shared", "/linode-api"].concat(),
        ["DESIGN", ".md"].concat(),
        ["STYLE", ".md"].concat(),
        ["/work", "/"].concat(),
    ]
}

#[test]
fn no_file_reads_or_cites_anything_outside_the_repository() {
    let patterns = outside_references();
    let mut found = Vec::new();
    for file in all_text_files() {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for (n, line) in text.lines().enumerate() {
            for p in &patterns {
                if line.contains(p.as_str()) {
                    found.push(format!("{}:{}: {p:?} in {line:?}", rel(&file), n + 1));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "files refer to things outside the repository:\n{}",
        found.join("\n")
    );
}

/// A tracker item's number ("issue", "task", then a number): it means nothing to a reader
/// of the repository.
fn tracker_reference(line: &str) -> Option<String> {
    let lower = line.to_ascii_lowercase();
    for word in ["issue", "task"] {
        let mut from = 0;
        while let Some(i) = lower[from..].find(word) {
            let start = from + i;
            from = start + word.len();
            let before_ok = start == 0
                || !lower.as_bytes()[start - 1].is_ascii_alphanumeric()
                    && lower.as_bytes()[start - 1] != b'_';
            let rest = lower[from..].trim_start_matches('s');
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            let rest = rest.strip_prefix('#').unwrap_or(rest);
            if before_ok && rest.starts_with(|c: char| c.is_ascii_digit()) {
                return Some(line[start..].chars().take(24).collect());
            }
        }
    }
    None
}

#[test]
fn code_and_docs_do_not_cite_tracker_numbers() {
    let mut found = Vec::new();
    for file in all_text_files() {
        // Cargo.lock holds checksums; this file holds the detector's own examples.
        if file
            .file_name()
            .is_some_and(|n| n == "Cargo.lock" || n == "self_contained.rs")
        {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for (n, line) in text.lines().enumerate() {
            if let Some(hit) = tracker_reference(line) {
                found.push(format!("{}:{}: {hit:?}", rel(&file), n + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "code and docs cite tracker numbers:\n{}",
        found.join("\n")
    );
}

#[test]
fn tracker_reference_detector() {
    // Built from pieces, so that this file itself cites nothing.
    let cite = |word: &str, rest: &str| format!("{word}{rest}");
    assert!(tracker_reference(&cite("//! The lab (issue", " 4): x")).is_some());
    assert!(tracker_reference(&cite("see Issue", " #12")).is_some());
    assert!(tracker_reference(&cite("issues", " 3 and 4")).is_some());
    assert!(tracker_reference(&cite("task", " 7")).is_some());
    assert!(tracker_reference("a known issue with 4 peers").is_none());
    assert!(tracker_reference("multitask 3").is_none());
    assert!(tracker_reference("tokio::task::spawn").is_none());
}

/// Relative link targets of a Markdown text: `[text](target)`, without anchors and titles.
fn markdown_links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        let Some(end) = rest.find(')') else {
            break;
        };
        let target = rest[..end].split_whitespace().next().unwrap_or("");
        let target = target.split('#').next().unwrap_or("");
        if !target.is_empty() && !target.contains("://") && !target.starts_with("mailto:") {
            out.push(target.to_string());
        }
        rest = &rest[end..];
    }
    out
}

/// `path` with `.` and `..` resolved lexically; None when it climbs above the start.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

#[test]
fn markdown_links_resolve_inside_the_repository() {
    let root = root();
    let mut broken = Vec::new();
    for file in all_text_files() {
        if file.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let dir = file.parent().unwrap_or(&root);
        for link in markdown_links(&text) {
            let target = normalize(&dir.join(&link));
            let inside = target
                .as_ref()
                .is_some_and(|t| t.starts_with(&root) && t.exists());
            if !inside {
                broken.push(format!("{}: ({link})", rel(&file)));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "Markdown links that do not resolve to a file of the repository:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_spec_subsets_are_vendored_with_their_license() {
    let dir = root().join("crates/linode/openapi");
    for f in [
        "openapi-ip-sharing.yaml",
        "openapi-ip-lifecycle.yaml",
        "README.md",
        "LICENSE-APACHE-2.0",
    ] {
        assert!(
            dir.join(f).is_file(),
            "{} is missing",
            dir.join(f).display()
        );
    }
    let sharing = std::fs::read_to_string(dir.join("openapi-ip-sharing.yaml")).expect("readable");
    assert!(sharing.contains("License: Apache 2.0"), "source note kept");
}
