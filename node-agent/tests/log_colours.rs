//! The agent's text log, written to a file (a systemd journal, a container log), carries no
//! terminal colour codes: they are noise there and break grep.

// Test code: a panic is a failed test, and a scenario reads best in one piece.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn text_log_in_a_file_has_no_colour_codes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("agent.log");
    let file = std::fs::File::create(&log).expect("log file");
    // Without a kubeconfig or an in-cluster environment the agent logs one error and exits:
    // a log line without needing root, a network namespace or an apiserver.
    let mut child = Command::new(env!("CARGO_BIN_EXE_sharedip-node-agent"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .args(["run", "--node-name", "n1", "--http-addr", "127.0.0.1:0"])
        .args(["--log-format", "text"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("agent starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the agent did not exit within 60 s without a Kubernetes configuration");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&log).expect("read log");
    assert!(!status.success(), "{status:?}\n{text}");
    assert!(
        text.contains("ERROR") && text.contains("cannot connect to Kubernetes"),
        "{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in the log file: {text:?}"
    );
}
