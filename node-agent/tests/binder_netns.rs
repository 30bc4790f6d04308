//! The address binder against the real kernel, inside a fresh network
//! namespace per test (root only; skipped with a message otherwise).
//!
//! Each test creates `sharedip-binder-<pid>-<n>` with `ip netns add`, gives it
//! a node-like setup (`lo` up, `dummy0` carrying the node's own addresses
//! 2001:db8:1::10/64 and 192.0.2.200/24), then runs its body on a dedicated
//! thread that has `setns`'d into the namespace, with a current-thread tokio
//! runtime, so the binder's netlink socket lives in the namespace. The
//! namespace is deleted by a Drop guard on every exit path; every wait is
//! bounded.

// Test code: a panic is a failed test, and a scenario reads best in one piece.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

use std::collections::BTreeSet;
use std::future::Future;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage, AddressProtocol};
use sharedip_node_agent::binder::marker::{ADDRESS_PROTOCOL, IPV6_METRIC};
use sharedip_node_agent::binder::{
    BindError, BindOutcome, Binder, BinderConfig, InterfaceAddress, MarkerMode,
};

/// Bound for one test body; the real work takes milliseconds.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound for one `ip` command.
const COMMAND_TIMEOUT_SECS: &str = "10";

const DUMMY: &str = "dummy0";
const NODE_V6: &str = "2001:db8:1::10/64";
const NODE_V4: &str = "192.0.2.200/24";
const SHARED_V4: &str = "192.0.2.10";
const SHARED_V4_B: &str = "192.0.2.11";
const SHARED_V6: &str = "2001:db8:1:2::1";

static NEXT_NS: AtomicUsize = AtomicUsize::new(0);

/// "Nothing removed".
fn none() -> Vec<IpAddr> {
    Vec::new()
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// Runs `ip <args>` bounded by coreutils `timeout`; returns stdout or a
/// description of the failure.
fn run_ip(args: &[&str]) -> Result<String, String> {
    let output = Command::new("timeout")
        .args(["--kill-after=2", COMMAND_TIMEOUT_SECS, "ip"])
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip {args:?}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "ip {args:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// A namespace by name; `ip -n` commands for setup and assertions.
#[derive(Clone, Debug)]
struct Ns {
    name: String,
}

impl Ns {
    fn ip(&self, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_ip(&full)
    }

    fn ip_ok(&self, args: &[&str]) -> String {
        self.ip(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The addresses on `dev` as `addr/len` strings, with a `tentative` mark
    /// when DAD has not finished.
    fn addresses(&self, dev: &str) -> BTreeSet<String> {
        let json = self.ip_ok(&["-j", "address", "show", "dev", dev]);
        let links: serde_json::Value = serde_json::from_str(&json).expect("ip -j output");
        let mut out = BTreeSet::new();
        for link in links.as_array().expect("array of links") {
            for info in link["addr_info"].as_array().into_iter().flatten() {
                let local = info["local"].as_str().expect("local");
                let len = info["prefixlen"].as_u64().expect("prefixlen");
                let tentative = if info["tentative"].as_bool() == Some(true) {
                    " tentative"
                } else {
                    ""
                };
                out.insert(format!("{local}/{len}{tentative}"));
            }
        }
        out
    }

    fn has(&self, dev: &str, addr_with_len: &str) -> bool {
        self.addresses(dev).contains(addr_with_len)
    }

    /// Everything on `lo` and `dummy0`, to prove later that it is untouched. The `tentative`
    /// flag is left out: it only says IPv6 duplicate address detection is still running on
    /// an address, which ends on its own between two snapshots.
    fn snapshot(&self) -> BTreeSet<String> {
        let strip = |a: String| a.trim_end_matches(" tentative").to_string();
        let mut all: BTreeSet<String> = self
            .addresses("lo")
            .into_iter()
            .map(|a| format!("lo {}", strip(a)))
            .collect();
        all.extend(
            self.addresses(DUMMY)
                .into_iter()
                .map(|a| format!("{DUMMY} {}", strip(a))),
        );
        all
    }

    fn assert_untouched(&self, before: &BTreeSet<String>) {
        let now = self.snapshot();
        let missing: Vec<_> = before.difference(&now).collect();
        assert!(
            missing.is_empty(),
            "addresses we did not add disappeared: {missing:?} (now: {now:?})"
        );
    }
}

/// Owns the namespace; deletes it on drop (also while unwinding).
struct NetnsGuard {
    ns: Ns,
}

impl NetnsGuard {
    fn create() -> NetnsGuard {
        let name = format!(
            "sharedip-binder-{}-{}",
            std::process::id(),
            NEXT_NS.fetch_add(1, Ordering::SeqCst)
        );
        run_ip(&["netns", "add", &name]).unwrap_or_else(|e| panic!("{e}"));
        NetnsGuard { ns: Ns { name } }
    }

    /// `lo` up; `dummy0` with the node's own addresses. Kernels without the
    /// dummy driver (some VM kernels) get an `ifb` device named `dummy0`,
    /// which behaves the same for addresses (NOARP, no DAD).
    fn setup_node(&self) {
        let ns = &self.ns;
        ns.ip_ok(&["link", "set", "lo", "up"]);
        if let Err(e) = ns.ip(&["link", "add", DUMMY, "type", "dummy"]) {
            eprintln!("note: no dummy driver ({e}); using an ifb device named {DUMMY}");
            ns.ip_ok(&["link", "add", DUMMY, "type", "ifb"]);
        }
        ns.ip_ok(&["link", "set", DUMMY, "up"]);
        ns.ip_ok(&["address", "add", NODE_V6, "dev", DUMMY, "nodad"]);
        ns.ip_ok(&["address", "add", NODE_V4, "dev", DUMMY]);
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = run_ip(&["netns", "delete", &self.ns.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// What a test body gets.
struct Ctx {
    ns: Ns,
    /// The node's addresses right after setup.
    node: BTreeSet<String>,
    state_dir: PathBuf,
}

impl Ctx {
    fn config(&self, interface: &str, state_file: &str) -> BinderConfig {
        self.config_marked(interface, state_file, MarkerMode::Native)
    }

    fn config_marked(&self, interface: &str, state_file: &str, marker: MarkerMode) -> BinderConfig {
        BinderConfig {
            interface: interface.to_owned(),
            state_file: self.state_dir.join(state_file),
            marker,
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Moves the calling thread into the namespace at `path` and checks that it
/// arrived, so a failed setns can never let a test touch the host's `lo`.
fn enter_netns(path: &Path) {
    let file = std::fs::File::open(path).expect("open namespace file");
    // SAFETY: a valid open namespace fd and a namespace type; setns only
    // affects the calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    let want = std::fs::metadata(path).expect("stat namespace").ino();
    let have = std::fs::metadata("/proc/thread-self/ns/net")
        .expect("stat own namespace")
        .ino();
    assert_eq!(want, have, "thread is not in the test namespace");
}

/// Runs `body` inside a fresh node-like namespace; see the module docs.
fn netns_test<F, Fut>(test: &str, body: F)
where
    F: FnOnce(Ctx) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    if !is_root() {
        eprintln!("SKIPPED {test}: needs root to create network namespaces (CI runs as root)");
        return;
    }
    let guard = NetnsGuard::create();
    guard.setup_node();
    let state_dir = tempfile::tempdir().expect("tempdir");
    let ctx = Ctx {
        ns: guard.ns.clone(),
        node: guard.ns.snapshot(),
        state_dir: state_dir.path().to_path_buf(),
    };
    let ns_path = PathBuf::from("/run/netns").join(&guard.ns.name);
    let (done_tx, done_rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(format!("netns-{test}"))
        .spawn(move || {
            enter_netns(&ns_path);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                tokio::time::timeout(TEST_TIMEOUT, body(ctx))
                    .await
                    .expect("test body timed out")
            });
            let _ = done_tx.send(());
        })
        .expect("spawn test thread");
    match done_rx.recv_timeout(TEST_TIMEOUT + Duration::from_secs(30)) {
        Ok(()) => thread.join().expect("test thread"),
        // The sender was dropped without sending: the body panicked.
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = thread.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{test}: test thread hung"),
    }
    // `guard` and `state_dir` are dropped here, and also during unwinding.
}

fn state_entries(path: &Path) -> BTreeSet<String> {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("read state file")).expect("json");
    json["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            format!(
                "{} {}/{}",
                e["interface"].as_str().expect("interface"),
                e["address"].as_str().expect("address"),
                e["prefix_len"].as_u64().expect("prefix_len")
            )
        })
        .collect()
}

#[test]
fn binds_and_unbinds_on_lo_idempotently() {
    netns_test("binds_and_unbinds_on_lo_idempotently", |ctx| async move {
        let ns = &ctx.ns;
        let cfg = ctx.config("lo", "state/bound.json");
        let binder = Binder::new(cfg.clone()).await.expect("binder");
        assert!(binder.bound().await.is_empty());

        assert_eq!(
            binder.bind(ip(SHARED_V4), 32).await.expect("bind v4"),
            BindOutcome::Added
        );
        assert_eq!(
            binder.bind(ip(SHARED_V4), 32).await.expect("rebind v4"),
            BindOutcome::AlreadyOurs
        );
        assert_eq!(
            binder.bind(ip(SHARED_V6), 128).await.expect("bind v6"),
            BindOutcome::Added
        );
        assert_eq!(
            binder.bind(ip(SHARED_V6), 128).await.expect("rebind v6"),
            BindOutcome::AlreadyOurs
        );

        assert!(ns.has("lo", "192.0.2.10/32"), "{:?}", ns.addresses("lo"));
        assert!(
            ns.has("lo", "2001:db8:1:2::1/128"),
            "{:?}",
            ns.addresses("lo")
        );
        assert_eq!(binder.bound().await, [ip(SHARED_V4), ip(SHARED_V6)].into());
        assert_eq!(
            state_entries(&cfg.state_file),
            [
                "lo 192.0.2.10/32".to_owned(),
                "lo 2001:db8:1:2::1/128".to_owned()
            ]
            .into()
        );
        ns.assert_untouched(&ctx.node);

        binder.unbind(ip(SHARED_V4)).await.expect("unbind v4");
        binder.unbind(ip(SHARED_V4)).await.expect("unbind v4 again");
        binder.unbind(ip(SHARED_V6)).await.expect("unbind v6");
        assert!(!ns.has("lo", "192.0.2.10/32"));
        assert!(!ns.has("lo", "2001:db8:1:2::1/128"));
        assert!(binder.bound().await.is_empty());
        assert!(state_entries(&cfg.state_file).is_empty());

        // Unbinding something never bound, or the node's own address, is a no-op.
        binder
            .unbind(ip("192.0.2.99"))
            .await
            .expect("unbind unknown");
        binder
            .unbind(ip("127.0.0.1"))
            .await
            .expect("unbind loopback");
        binder.unbind(ip("::1")).await.expect("unbind ::1");
        ns.assert_untouched(&ctx.node);
        assert_eq!(
            binder
                .reconcile_leftovers(&BTreeSet::new())
                .await
                .expect("reconcile"),
            none()
        );
        ns.assert_untouched(&ctx.node);
    });
}

#[test]
fn binds_ipv6_on_the_configured_interface() {
    netns_test("binds_ipv6_on_the_configured_interface", |ctx| async move {
        let ns = &ctx.ns;
        // lelastic -allifs / CentOS variant: the dummy interface, next to a
        // binder on lo with its own state file holding the same address.
        let on_dummy = Binder::new(ctx.config(DUMMY, "dummy.json"))
            .await
            .expect("binder dummy0");
        let on_lo = Binder::new(ctx.config("lo", "lo.json"))
            .await
            .expect("binder lo");

        assert_eq!(
            on_dummy.bind(ip(SHARED_V6), 128).await.expect("bind"),
            BindOutcome::Added
        );
        assert_eq!(
            on_lo.bind(ip(SHARED_V6), 128).await.expect("bind"),
            BindOutcome::Added
        );
        assert_eq!(
            on_dummy.bind(ip(SHARED_V6), 128).await.expect("bind"),
            BindOutcome::AlreadyOurs
        );
        // Usable at once: added with NODAD, not left tentative.
        assert!(
            ns.has(DUMMY, "2001:db8:1:2::1/128"),
            "{:?}",
            ns.addresses(DUMMY)
        );
        assert!(
            ns.has("lo", "2001:db8:1:2::1/128"),
            "{:?}",
            ns.addresses("lo")
        );
        assert_eq!(on_dummy.bound().await, [ip(SHARED_V6)].into());

        on_dummy.unbind(ip(SHARED_V6)).await.expect("unbind");
        assert!(!ns.has(DUMMY, "2001:db8:1:2::1/128"));
        assert!(
            ns.has("lo", "2001:db8:1:2::1/128"),
            "the lo binding is not ours to remove"
        );
        assert!(ns.has(DUMMY, NODE_V6) && ns.has(DUMMY, NODE_V4));

        on_lo.unbind(ip(SHARED_V6)).await.expect("unbind");
        assert!(!ns.has("lo", "2001:db8:1:2::1/128"));
        ns.assert_untouched(&ctx.node);
    });
}

#[test]
fn addresses_we_did_not_add_are_never_touched() {
    netns_test(
        "addresses_we_did_not_add_are_never_touched",
        |ctx| async move {
            let ns = &ctx.ns;
            let on_dummy = Binder::new(ctx.config(DUMMY, "dummy.json"))
                .await
                .expect("binder dummy0");
            let on_lo = Binder::new(ctx.config("lo", "lo.json"))
                .await
                .expect("binder lo");

            // The node's own addresses.
            assert_eq!(
                on_dummy.bind(ip("192.0.2.200"), 32).await.expect("bind"),
                BindOutcome::PresentNotOurs
            );
            assert_eq!(
                on_dummy
                    .bind(ip("2001:db8:1::10"), 128)
                    .await
                    .expect("bind"),
                BindOutcome::PresentNotOurs
            );
            assert_eq!(
                on_lo.bind(ip("127.0.0.1"), 32).await.expect("bind"),
                BindOutcome::PresentNotOurs
            );
            assert_eq!(
                on_lo.bind(ip("::1"), 128).await.expect("bind"),
                BindOutcome::PresentNotOurs
            );

            // A hand-made address, with the very prefix length we would use.
            ns.ip_ok(&["address", "add", "192.0.2.77/32", "dev", "lo"]);
            ns.ip_ok(&["address", "add", "2001:db8:1:2::77/128", "dev", "lo"]);
            let hand_made = ns.snapshot();
            assert_eq!(
                on_lo.bind(ip("192.0.2.77"), 32).await.expect("bind"),
                BindOutcome::PresentNotOurs
            );
            assert_eq!(
                on_lo.bind(ip("2001:db8:1:2::77"), 128).await.expect("bind"),
                BindOutcome::PresentNotOurs
            );
            assert!(on_lo.bound().await.is_empty());
            assert!(on_dummy.bound().await.is_empty());

            for addr in ["192.0.2.77", "2001:db8:1:2::77", "127.0.0.1", "::1"] {
                on_lo.unbind(ip(addr)).await.expect("unbind");
            }
            for addr in ["192.0.2.200", "2001:db8:1::10"] {
                on_dummy.unbind(ip(addr)).await.expect("unbind");
            }
            assert_eq!(
                on_lo
                    .reconcile_leftovers(&BTreeSet::new())
                    .await
                    .expect("reconcile"),
                none()
            );
            assert_eq!(
                on_dummy
                    .reconcile_leftovers(&BTreeSet::new())
                    .await
                    .expect("reconcile"),
                none()
            );
            ns.assert_untouched(&hand_made);
            ns.assert_untouched(&ctx.node);

            // Also across a restart: a new binder on the same state file.
            drop(on_lo);
            let on_lo = Binder::new(ctx.config("lo", "lo.json"))
                .await
                .expect("binder lo");
            assert_eq!(
                on_lo
                    .reconcile_leftovers(&BTreeSet::new())
                    .await
                    .expect("reconcile"),
                none()
            );
            ns.assert_untouched(&hand_made);
        },
    );
}

#[test]
fn restart_removes_leftovers_and_forgets_vanished_addresses() {
    netns_test(
        "restart_removes_leftovers_and_forgets_vanished_addresses",
        |ctx| async move {
            let ns = &ctx.ns;
            let cfg = ctx.config("lo", "bound.json");
            {
                let first = Binder::new(cfg.clone()).await.expect("binder");
                for (addr, len) in [(SHARED_V4, 32), (SHARED_V4_B, 32), (SHARED_V6, 128)] {
                    assert_eq!(
                        first.bind(ip(addr), len).await.expect("bind"),
                        BindOutcome::Added
                    );
                }
                // A hand-made address next to ours.
                ns.ip_ok(&["address", "add", "192.0.2.77/32", "dev", "lo"]);
                // The agent stops (or crashes) without unbinding.
            }

            // Restarted agent: the SharedIPs of SHARED_V4 and SHARED_V6 were deleted meanwhile.
            let second = Binder::new(cfg.clone())
                .await
                .expect("binder after restart");
            assert_eq!(
                second.bound().await,
                [ip(SHARED_V4), ip(SHARED_V4_B), ip(SHARED_V6)].into()
            );
            let keep: BTreeSet<IpAddr> = [ip(SHARED_V4_B)].into();
            let mut removed = second.reconcile_leftovers(&keep).await.expect("reconcile");
            removed.sort();
            assert_eq!(removed, vec![ip(SHARED_V4), ip(SHARED_V6)]);
            assert!(!ns.has("lo", "192.0.2.10/32"));
            assert!(!ns.has("lo", "2001:db8:1:2::1/128"));
            assert!(ns.has("lo", "192.0.2.11/32"), "kept address removed");
            assert!(ns.has("lo", "192.0.2.77/32"), "hand-made address removed");
            assert_eq!(second.bound().await, keep);
            assert_eq!(
                state_entries(&cfg.state_file),
                ["lo 192.0.2.11/32".to_owned()].into()
            );
            // Idempotent: a second reconcile removes nothing.
            assert_eq!(
                second.reconcile_leftovers(&keep).await.expect("reconcile"),
                none()
            );
            // And a kept address is still AlreadyOurs.
            assert_eq!(
                second.bind(ip(SHARED_V4_B), 32).await.expect("bind"),
                BindOutcome::AlreadyOurs
            );
            drop(second);

            // Someone removed our address while the agent was down: the entry is
            // just dropped, and binding it again adds it again.
            ns.ip_ok(&["address", "del", "192.0.2.11/32", "dev", "lo"]);
            let third = Binder::new(cfg.clone())
                .await
                .expect("binder after second restart");
            assert_eq!(
                third.reconcile_leftovers(&keep).await.expect("reconcile"),
                none()
            );
            assert!(third.bound().await.is_empty());
            assert!(state_entries(&cfg.state_file).is_empty());
            assert_eq!(
                third.bind(ip(SHARED_V4_B), 32).await.expect("bind"),
                BindOutcome::Added
            );

            // The configured interface changed (lo -> dummy0): what we added on
            // lo is a leftover even when its address is still wanted.
            drop(third);
            let moved = Binder::new(ctx.config(DUMMY, "bound.json"))
                .await
                .expect("binder on dummy0");
            assert!(moved.bound().await.is_empty());
            assert_eq!(
                moved.reconcile_leftovers(&keep).await.expect("reconcile"),
                vec![ip(SHARED_V4_B)]
            );
            assert!(!ns.has("lo", "192.0.2.11/32"));

            ns.assert_untouched(&ctx.node);
            assert!(ns.has("lo", "192.0.2.77/32"), "hand-made address removed");
        },
    );
}

#[test]
fn missing_interface_is_a_clear_error() {
    netns_test("missing_interface_is_a_clear_error", |ctx| async move {
        let ns = &ctx.ns;
        let err = Binder::new(ctx.config("nosuch0", "bound.json"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, BindError::InterfaceNotFound { interface } if interface == "nosuch0"),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "interface \"nosuch0\" does not exist");

        let err = Binder::new(ctx.config("bad/name", "bound.json"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, BindError::InvalidInterfaceName { .. }),
            "{err:?}"
        );

        // The interface disappears after start-up.
        ns.ip_ok(&[
            "link", "add", "gone0", "type", "veth", "peer", "name", "gone1",
        ]);
        ns.ip_ok(&["link", "set", "gone0", "up"]);
        let binder = Binder::new(ctx.config("gone0", "gone.json"))
            .await
            .expect("binder");
        assert_eq!(
            binder.bind(ip(SHARED_V4), 32).await.expect("bind"),
            BindOutcome::Added
        );
        ns.ip_ok(&["link", "del", "gone0"]);
        let err = binder.bind(ip(SHARED_V6), 128).await.unwrap_err();
        assert!(
            matches!(&err, BindError::InterfaceNotFound { interface } if interface == "gone0"),
            "{err:?}"
        );
        // Unbinding from a vanished interface just forgets the address.
        binder.unbind(ip(SHARED_V4)).await.expect("unbind");
        assert!(binder.bound().await.is_empty());

        // Invalid requests are refused before touching anything.
        let lo = Binder::new(ctx.config("lo", "lo.json"))
            .await
            .expect("binder");
        assert!(matches!(
            lo.bind(ip(SHARED_V4), 33).await,
            Err(BindError::InvalidPrefixLen { prefix_len: 33, .. })
        ));
        assert!(matches!(
            lo.bind(ip("224.0.0.1"), 32).await,
            Err(BindError::InvalidAddress { .. })
        ));
        ns.assert_untouched(&ctx.node);
    });
}

#[test]
fn corrupt_state_file_is_treated_as_empty() {
    netns_test("corrupt_state_file_is_treated_as_empty", |ctx| async move {
        let ns = &ctx.ns;
        let cfg = ctx.config("lo", "bound.json");
        let first = Binder::new(cfg.clone()).await.expect("binder");
        assert_eq!(
            first.bind(ip(SHARED_V4), 32).await.expect("bind"),
            BindOutcome::Added
        );
        drop(first);
        std::fs::write(&cfg.state_file, b"{\"version\": 1, \"entries\": [tru").expect("corrupt it");

        let second = Binder::new(cfg.clone())
            .await
            .expect("a corrupt state file is not fatal");
        assert!(second.bound().await.is_empty());
        let corrupt = cfg.state_file.with_file_name("bound.json.corrupt");
        assert!(corrupt.exists(), "corrupt file kept for inspection");
        // Without the record the kernel's marker still says the address is ours.
        assert_eq!(
            second.bind(ip(SHARED_V4), 32).await.expect("bind"),
            BindOutcome::AlreadyOurs
        );
        assert_eq!(
            second
                .reconcile_leftovers(&BTreeSet::new())
                .await
                .expect("reconcile"),
            vec![ip(SHARED_V4)]
        );
        assert!(!ns.has("lo", "192.0.2.10/32"));
        // An unmarked address that only a lost record said was ours (as an agent older
        // than the markers bound it) is left alone, never removed.
        ns.ip_ok(&["address", "add", "192.0.2.10/32", "dev", "lo"]);
        assert_eq!(
            second.bind(ip(SHARED_V4), 32).await.expect("bind"),
            BindOutcome::PresentNotOurs
        );
        assert_eq!(
            second
                .reconcile_leftovers(&BTreeSet::new())
                .await
                .expect("reconcile"),
            none()
        );
        assert!(ns.has("lo", "192.0.2.10/32"));
        // The binder keeps working and writes a fresh state file.
        assert_eq!(
            second.bind(ip(SHARED_V6), 128).await.expect("bind"),
            BindOutcome::Added
        );
        assert_eq!(
            state_entries(&cfg.state_file),
            ["lo 2001:db8:1:2::1/128".to_owned()].into()
        );
        ns.assert_untouched(&ctx.node);
    });
}

#[test]
fn concurrent_binds_of_one_address_add_it_once() {
    netns_test(
        "concurrent_binds_of_one_address_add_it_once",
        |ctx| async move {
            let binder = Arc::new(
                Binder::new(ctx.config("lo", "bound.json"))
                    .await
                    .expect("binder"),
            );
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let binder = Arc::clone(&binder);
                    tokio::spawn(async move { binder.bind(ip(SHARED_V4), 32).await })
                })
                .collect();
            let mut outcomes = Vec::new();
            for task in tasks {
                outcomes.push(task.await.expect("join").expect("bind"));
            }
            assert_eq!(
                outcomes
                    .iter()
                    .filter(|o| **o == BindOutcome::Added)
                    .count(),
                1,
                "{outcomes:?}"
            );
            assert_eq!(
                outcomes
                    .iter()
                    .filter(|o| **o == BindOutcome::AlreadyOurs)
                    .count(),
                7,
                "{outcomes:?}"
            );
            assert!(ctx.ns.has("lo", "192.0.2.10/32"));
            binder.unbind(ip(SHARED_V4)).await.expect("unbind");
            ctx.ns.assert_untouched(&ctx.node);
        },
    );
}

#[test]
fn ipv6_on_an_interface_with_neighbours_is_usable_at_once() {
    netns_test(
        "ipv6_on_an_interface_with_neighbours_is_usable_at_once",
        |ctx| async move {
            let ns = &ctx.ns;
            // dummy and lo skip duplicate address detection anyway; a veth pair
            // with carrier runs it, so this proves the binder asks for NODAD.
            ns.ip_ok(&[
                "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
            ]);
            ns.ip_ok(&["link", "set", "peer0", "up"]);
            ns.ip_ok(&["link", "set", "eth0", "up"]);
            let binder = Binder::new(ctx.config("eth0", "eth0.json"))
                .await
                .expect("binder");
            assert_eq!(
                binder.bind(ip(SHARED_V6), 128).await.expect("bind"),
                BindOutcome::Added
            );
            let now = ns.addresses("eth0");
            assert!(
                now.contains("2001:db8:1:2::1/128"),
                "not usable at once (tentative?): {now:?}"
            );
            binder.unbind(ip(SHARED_V6)).await.expect("unbind");
            assert!(!ns
                .addresses("eth0")
                .iter()
                .any(|a| a.starts_with(SHARED_V6)));
            ns.assert_untouched(&ctx.node);
        },
    );
}

/// The attributes the kernel reports for `addr` (dumped in the calling thread's namespace).
async fn kernel_attributes(addr: IpAddr) -> Vec<AddressAttribute> {
    let (connection, handle, _) = rtnetlink::new_connection().expect("netlink socket");
    let task = tokio::spawn(connection);
    let messages: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_address_filter(addr)
        .execute()
        .try_collect()
        .await
        .expect("address dump");
    task.abort();
    assert_eq!(messages.len(), 1, "{addr}: {messages:?}");
    messages[0].attributes.clone()
}

fn has_protocol(attributes: &[AddressAttribute]) -> bool {
    attributes
        .iter()
        .any(|a| *a == AddressAttribute::Protocol(AddressProtocol::from(ADDRESS_PROTOCOL)))
}

#[test]
fn what_it_binds_carries_the_kernel_markers() {
    netns_test(
        "what_it_binds_carries_the_kernel_markers",
        |ctx| async move {
            let ns = &ctx.ns;
            for (mode, file) in [
                (MarkerMode::Native, "native.json"),
                (MarkerMode::Fallback, "fallback.json"),
            ] {
                let binder = Binder::new(ctx.config_marked("lo", file, mode))
                    .await
                    .expect("binder");
                binder.bind(ip(SHARED_V4), 32).await.expect("bind v4");
                binder.bind(ip(SHARED_V6), 128).await.expect("bind v6");

                let v4 = kernel_attributes(ip(SHARED_V4)).await;
                let v6 = kernel_attributes(ip(SHARED_V6)).await;
                // This kernel keeps IFA_PROTO (Linux >= 6.1); the fallback mode leaves it out.
                assert_eq!(
                    has_protocol(&v4),
                    mode == MarkerMode::Native,
                    "{mode:?} {v4:?}"
                );
                assert_eq!(
                    has_protocol(&v6),
                    mode == MarkerMode::Native,
                    "{mode:?} {v6:?}"
                );
                // The fallback markers, in both modes.
                assert!(
                    v4.contains(&AddressAttribute::Label("lo:sharedip".into())),
                    "{mode:?} {v4:?}"
                );
                assert!(
                    v6.contains(&AddressAttribute::RoutePriority(IPV6_METRIC)),
                    "{mode:?} {v6:?}"
                );
                // As `ip address` shows them.
                let json = ns.ip_ok(&["-j", "address", "show", "dev", "lo"]);
                assert!(json.contains("\"label\":\"lo:sharedip\""), "{json}");
                assert!(
                    json.contains(&format!("\"metric\":{IPV6_METRIC}")),
                    "{json}"
                );

                binder.unbind(ip(SHARED_V4)).await.expect("unbind");
                binder.unbind(ip(SHARED_V6)).await.expect("unbind");
                assert!(!ns.has("lo", "192.0.2.10/32"));
                assert!(!ns.has("lo", "2001:db8:1:2::1/128"));
            }
            ns.assert_untouched(&ctx.node);
        },
    );
}

#[test]
fn leftovers_are_found_by_their_kernel_marker_alone() {
    netns_test(
        "leftovers_are_found_by_their_kernel_marker_alone",
        |ctx| async move {
            let ns = &ctx.ns;
            // Addresses configured by hand that look a little like ours: another label on
            // lo, an IPv6 address with another metric, and on dummy0 a label with our
            // suffix's first letters.
            ns.ip_ok(&[
                "address",
                "add",
                "192.0.2.77/32",
                "dev",
                "lo",
                "label",
                "lo:sip",
            ]);
            ns.ip_ok(&[
                "address",
                "add",
                "2001:db8:1:2::77/128",
                "dev",
                "lo",
                "metric",
                "1024",
                "nodad",
            ]);
            ns.ip_ok(&[
                "address",
                "add",
                "198.51.100.77/32",
                "dev",
                DUMMY,
                "label",
                "dummy0:shared",
            ]);
            let hand_made = ns.snapshot();
            for mode in [MarkerMode::Native, MarkerMode::Fallback] {
                let cfg = ctx.config_marked("lo", "bound.json", mode);
                {
                    let first = Binder::new(cfg.clone()).await.expect("binder");
                    first.bind(ip(SHARED_V4), 32).await.expect("bind");
                    first.bind(ip(SHARED_V6), 128).await.expect("bind");
                    // An earlier run on another interface.
                    let other = Binder::new(ctx.config_marked(DUMMY, "other.json", mode))
                        .await
                        .expect("binder");
                    other.bind(ip(SHARED_V4_B), 32).await.expect("bind");
                }
                // The state files are lost: only the kernel knows.
                std::fs::remove_file(&cfg.state_file).expect("remove state file");
                std::fs::remove_file(ctx.state_dir.join("other.json")).expect("remove");

                let second = Binder::new(cfg.clone()).await.expect("binder");
                let listed = second.interface_addresses().await.expect("list");
                let ours: BTreeSet<(String, IpAddr)> = listed
                    .iter()
                    .filter(|a| a.ours)
                    .map(|a| (a.interface.clone(), a.address))
                    .collect();
                assert_eq!(
                    ours,
                    [
                        ("lo".to_owned(), ip(SHARED_V4)),
                        ("lo".to_owned(), ip(SHARED_V6)),
                        (DUMMY.to_owned(), ip(SHARED_V4_B)),
                    ]
                    .into(),
                    "{mode:?}: {listed:?}"
                );
                assert!(listed.contains(&InterfaceAddress {
                    interface: "lo".into(),
                    address: ip("192.0.2.77"),
                    prefix_len: 32,
                    ours: false,
                }));

                // Unbind works without the record too.
                second.unbind(ip(SHARED_V6)).await.expect("unbind");
                assert!(!ns.has("lo", "2001:db8:1:2::1/128"), "{mode:?}");

                // Keep SHARED_V4 on lo; everything else of ours goes, whatever interface.
                let keep: BTreeSet<IpAddr> = [ip(SHARED_V4), ip(SHARED_V4_B)].into();
                let removed = second.reconcile_leftovers(&keep).await.expect("reconcile");
                assert_eq!(removed, vec![ip(SHARED_V4_B)], "{mode:?}");
                assert!(ns.has("lo", "192.0.2.10/32"), "{mode:?}");
                assert!(!ns.has(DUMMY, "192.0.2.11/32"), "{mode:?}");
                let removed = second
                    .reconcile_leftovers(&BTreeSet::new())
                    .await
                    .expect("reconcile");
                assert_eq!(removed, vec![ip(SHARED_V4)], "{mode:?}");
                assert!(!ns.has("lo", "192.0.2.10/32"), "{mode:?}");
                ns.assert_untouched(&hand_made);
                std::fs::remove_file(&cfg.state_file).ok();
            }
            ns.assert_untouched(&ctx.node);
        },
    );
}

/// Adds `addr/len` on `lo` with only `IFA_PROTO` = `proto` (no label, no metric).
async fn add_with_protocol(addr: IpAddr, len: u8, proto: u8) {
    let (connection, handle, _) = rtnetlink::new_connection().expect("netlink socket");
    let task = tokio::spawn(connection);
    let index = handle
        .link()
        .get()
        .match_name("lo")
        .execute()
        .try_next()
        .await
        .expect("lo")
        .expect("lo exists")
        .header
        .index;
    let mut request = handle.address().add(index, addr, len);
    request
        .message_mut()
        .attributes
        .push(AddressAttribute::Protocol(AddressProtocol::from(proto)));
    request.execute().await.expect("add address");
    task.abort();
}

#[test]
fn the_address_protocol_alone_marks_an_address_ours() {
    netns_test(
        "the_address_protocol_alone_marks_an_address_ours",
        |ctx| async move {
            let ns = &ctx.ns;
            // Ours by IFA_PROTO only; and one with another protocol value, not ours.
            add_with_protocol(ip(SHARED_V4), 32, ADDRESS_PROTOCOL).await;
            add_with_protocol(ip(SHARED_V4_B), 32, ADDRESS_PROTOCOL + 1).await;
            let binder = Binder::new(ctx.config("lo", "bound.json"))
                .await
                .expect("binder");
            assert_eq!(
                binder
                    .reconcile_leftovers(&BTreeSet::new())
                    .await
                    .expect("reconcile"),
                vec![ip(SHARED_V4)]
            );
            assert!(!ns.has("lo", "192.0.2.10/32"));
            assert!(ns.has("lo", "192.0.2.11/32"), "not ours, removed");
            ns.assert_untouched(&ctx.node);
        },
    );
}
