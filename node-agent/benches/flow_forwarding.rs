//! What flow handover's forwarding costs, on this machine's kernel: one established TCP
//! connection to the shared address, served by the old node, measured while the router
//! sends the address to the old node (direct) and then to the new node, whose window
//! forwards the connection's packets through the tunnel to the old node (forwarded).
//!
//! Per path: round-trip time of small request/response exchanges (p50, p99), the rate of a
//! bulk upload of full-size segments, and the CPU time the machine spent per GiB uploaded
//! (every namespace shares this kernel, so it is both nodes' work together, plus the
//! client's and the router's, which are the same on both paths). Printed, never asserted.
//!
//! Root only (network namespaces). `cargo bench -p sharedip-node-agent --bench
//! flow_forwarding`; `e2e/scripts/bench.sh` runs it too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use sharedip_e2e::handover_net::{self, HandoverNet, NEW_V4, NEW_V6, OLD_V6, SHARED_V4};
use sharedip_e2e::netns;
use sharedip_node_agent::flow_handover::ruleset::Prefix;
use sharedip_node_agent::flow_handover::windows::{Settings, Side, Windows};

const EXCHANGES: usize = 2_000;
const UPLOAD: usize = 256 << 20;
const CHUNK: usize = 1 << 20;
const TUNNEL_PORT: u16 = 4799;

struct Figures {
    p50: Duration,
    p99: Duration,
    mib_per_s: f64,
    cpu_s_per_gib: f64,
}

/// CPU time the machine spent, in seconds (all CPUs, all but idle and iowait).
fn busy_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let line = stat.lines().next().unwrap();
    let fields: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap())
        .collect();
    let busy: f64 = fields
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    busy / ticks
}

fn measure(conn: &mut BufReader<TcpStream>) -> Figures {
    let mut rtts = Vec::with_capacity(EXCHANGES);
    let mut line = String::new();
    for i in 0..EXCHANGES {
        let start = Instant::now();
        conn.get_mut()
            .write_all(format!("ping {i}\n").as_bytes())
            .unwrap();
        line.clear();
        conn.read_line(&mut line).unwrap();
        rtts.push(start.elapsed());
        assert!(line.starts_with("old "), "answered by {line:?}");
    }
    rtts.sort_unstable();
    let chunk = vec![b'x'; CHUNK];
    let cpu = busy_cpu();
    let start = Instant::now();
    for _ in 0..UPLOAD / CHUNK {
        conn.get_mut()
            .write_all(format!("BULK {CHUNK}\n").as_bytes())
            .unwrap();
        conn.get_mut().write_all(&chunk).unwrap();
        line.clear();
        conn.read_line(&mut line).unwrap();
        assert!(line.starts_with("old bulk"), "answered by {line:?}");
    }
    let took = start.elapsed().as_secs_f64();
    let cpu = busy_cpu() - cpu;
    let gib = UPLOAD as f64 / f64::from(1u32 << 30);
    Figures {
        p50: rtts[rtts.len() / 2],
        p99: rtts[rtts.len() * 99 / 100],
        mib_per_s: (UPLOAD >> 20) as f64 / took,
        cpu_s_per_gib: cpu / gib,
    }
}

fn main() {
    if !netns::is_root() {
        eprintln!("flow_forwarding: skipped (network namespaces need root)");
        return;
    }
    let net = HandoverNet::create(1).unwrap();
    let shared = Prefix {
        address: SHARED_V4.into(),
        len: 32,
    };
    let settings = |local| Settings {
        local,
        port: TUNNEL_PORT,
        uplink: "eth0".into(),
    };
    let mut old = Windows::new(settings(OLD_V6));
    let mut new = Windows::new(settings(NEW_V6));
    for (ns, w) in [(&net.old, &mut old), (&net.new, &mut new)] {
        ns.in_namespace(|| w.clamp(&[shared])).unwrap().unwrap();
    }
    handover_net::serve(&net.old, "old").unwrap();
    handover_net::serve(&net.new, "new").unwrap();
    let mut conn = BufReader::new(net.connect().unwrap());

    let direct = measure(&mut conn);

    let old = handover_net::with_netlink(&net.old, move |h| {
        Box::pin(async move {
            old.open(h, "bench", Side::Receive { peer: NEW_V6 })
                .await
                .unwrap();
            old
        })
    })
    .unwrap();
    let new = handover_net::with_netlink(&net.new, move |h| {
        Box::pin(async move {
            let side = Side::Forward {
                peer: OLD_V6,
                shared,
                length: Duration::from_secs(600),
                seed: true,
            };
            new.open(h, "bench", side).await.unwrap();
            new
        })
    })
    .unwrap();
    net.route_via(NEW_V4).unwrap();
    let forwarded = measure(&mut conn);

    report(&direct, &forwarded);

    for (ns, mut w) in [(&net.old, old), (&net.new, new)] {
        handover_net::with_netlink(ns, move |h| Box::pin(async move { w.close_all(h).await }))
            .unwrap()
            .unwrap();
    }
}

fn report(direct: &Figures, forwarded: &Figures) {
    println!(
        "flow handover forwarding cost ({EXCHANGES} exchanges, {} MiB upload, MSS clamped)",
        UPLOAD >> 20
    );
    println!(
        "{:<10} {:>10} {:>10} {:>10} {:>14}",
        "path", "rtt p50", "rtt p99", "MiB/s", "CPU s / GiB"
    );
    for (name, f) in [("direct", direct), ("forwarded", forwarded)] {
        println!(
            "{name:<10} {:>8.0}µs {:>8.0}µs {:>10.0} {:>14.2}",
            f.p50.as_secs_f64() * 1e6,
            f.p99.as_secs_f64() * 1e6,
            f.mib_per_s,
            f.cpu_s_per_gib
        );
    }
    let added = forwarded.p50.as_secs_f64() - direct.p50.as_secs_f64();
    println!(
        "added latency (p50): {:.0}µs; CPU per GiB: x{:.2}",
        added * 1e6,
        forwarded.cpu_s_per_gib / direct.cpu_s_per_gib
    );
}
