//! Scale benchmark (target in docs/ARCHITECTURE.md: 1,000 SharedIPs × 100 nodes converge
//! within 60 s, with at most one share call per affected Linode per change wave).
//!
//! A real kube-apiserver, the Linode API stand-in and the operator (in process, production
//! settings). Phase 1 applies every SharedIP at once; phase 2 relabels one pool of nodes, a
//! change that affects a fifth of the SharedIPs. Prints the time to converge (the stand-in's
//! sharing state equals what the selectors ask) and to Shared=True on every status, and the
//! share calls made, per Linode. Correctness is checked; times are only reported.
//!
//! `cargo bench -p sharedip-operator --bench scale` (env: SHAREDIP_BENCH_NODES, default 100;
//! SHAREDIP_BENCH_SHAREDIPS, default 1000; needs the control plane binaries, see README).

// Test code: a panic is a failed test, and a scenario reads best in one piece.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use serde_json::json;
use sharedip_api::SharedAddress;
use sharedip_operator::controller::ControllerSettings;
use support::Env;

const POOLS: usize = 10;
const HOLDER: u64 = 100;
const FIRST_NODE_LINODE: u64 = 1000;
const BOUND: Duration = Duration::from_secs(900);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The i-th shared address: IPv4 from the two documentation /24s, then IPv6 /64 ranges.
fn address(i: usize) -> String {
    match i {
        0..250 => format!("192.0.2.{}", i + 1),
        250..500 => format!("198.51.100.{}", i - 249),
        _ => format!("2001:db8:100:{:x}::1", i - 500),
    }
}

fn network(i: usize) -> String {
    let prefix = if i < 500 { None } else { Some(64) };
    match SharedAddress::parse(&address(i), prefix) {
        Ok(a) => a.network().to_string(),
        Err(e) => panic!("bench address {i}: {e}"),
    }
}

fn seed(nodes: usize, sharedips: usize) -> String {
    let mut s = String::from("linodes:\n");
    let _ = writeln!(
        s,
        "  - {{id: {HOLDER}, label: ip-holder, region: us-east, status: offline, ipv4: []}}"
    );
    for n in 0..nodes {
        let _ = writeln!(
            s,
            "  - {{id: {}, label: node-{n:03}, region: us-east, ipv4: []}}",
            FIRST_NODE_LINODE + n as u64
        );
    }
    s.push_str("ipv4:\n");
    for i in 0..sharedips.min(500) {
        let _ = writeln!(
            s,
            "  - {{address: {}, linode_id: {HOLDER}, public: true}}",
            address(i)
        );
    }
    s.push_str("ipv6_ranges:\n");
    for i in 500..sharedips.max(500) {
        let _ = writeln!(
            s,
            "  - {{range: \"{}/64\", linode_id: {HOLDER}}}",
            network(i)
        );
    }
    s
}

/// What the selectors ask: Linode → the addresses shared with it.
fn expected(sharedips: usize, pool_of: &BTreeMap<u64, usize>) -> BTreeMap<u64, BTreeSet<String>> {
    let mut out: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for i in 0..sharedips {
        let (p, s) = (i % POOLS, (i + 1) % POOLS);
        for (linode, pool) in pool_of {
            if *pool == p || *pool == s {
                out.entry(*linode).or_default().insert(network(i));
            }
        }
    }
    out
}

async fn converge(env: &Env, want: &BTreeMap<u64, BTreeSet<String>>, start: Instant) -> Duration {
    loop {
        if env.by_linode() == *want {
            return start.elapsed();
        }
        assert!(start.elapsed() < BOUND, "no convergence within {BOUND:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn all_shared(env: &Env, start: Instant) -> Duration {
    loop {
        let list = env
            .sharedips()
            .list(&Default::default())
            .await
            .expect("list SharedIPs");
        let done = list.items.iter().all(|s| {
            s.status.as_ref().is_some_and(|st| {
                st.observed_generation == s.metadata.generation
                    && st
                        .conditions
                        .iter()
                        .any(|c| c.type_ == "Shared" && c.status == "True")
            })
        });
        if done {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < BOUND,
            "statuses not Shared within {BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn share_calls(env: &Env) -> (u64, u64, usize) {
    let per = env.standin.request_log().successful_shares_per_linode();
    (
        per.values().sum(),
        per.values().copied().max().unwrap_or(0),
        per.len(),
    )
}

async fn run() {
    let nodes = env_usize("SHAREDIP_BENCH_NODES", 100);
    let sharedips = env_usize("SHAREDIP_BENCH_SHAREDIPS", 1000);
    assert!(
        sharedips <= 500 + 0xffff,
        "too many SharedIPs for the address plan"
    );
    println!("scale benchmark: {sharedips} SharedIPs × {nodes} nodes, {POOLS} node pools; each SharedIP selects two pools");

    let env = Env::start_with_seed(&seed(nodes, sharedips)).await;
    let mut pool_of: BTreeMap<u64, usize> = BTreeMap::new();
    stream::iter(0..nodes)
        .map(|n| {
            let env = &env;
            async move {
                let pool = (n % POOLS).to_string();
                env.add_node(
                    &format!("node-{n:03}"),
                    &[("pool", pool.as_str())],
                    Some(FIRST_NODE_LINODE + n as u64),
                )
                .await
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    for n in 0..nodes {
        pool_of.insert(FIRST_NODE_LINODE + n as u64, n % POOLS);
    }

    let cluster_id = sharedip_operator::cluster_id::ClusterId::new("bench").expect("cluster id");
    let settings = ControllerSettings::new("bench", cluster_id, "default");
    let op = env.spawn_operator_with(settings);

    // Phase 1: everything at once.
    let start = Instant::now();
    stream::iter(0..sharedips)
        .map(|i| {
            let env = &env;
            async move {
                let prefix: Option<i64> = if i < 500 { None } else { Some(64) };
                let mut spec = json!({
                    "address": address(i),
                    "primary": {"nodeSelector": {"matchLabels": {"pool": (i % POOLS).to_string()}}},
                    "secondary": {"nodeSelector": {"matchLabels": {"pool": ((i + 1) % POOLS).to_string()}}},
                });
                if let Some(p) = prefix {
                    spec["prefix"] = json!(p);
                }
                env.apply_sharedip(&format!("sip-{i:04}"), spec).await
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let applied = start.elapsed();
    let want = expected(sharedips, &pool_of);
    let shared = converge(&env, &want, start).await;
    let statuses = all_shared(&env, start).await;
    let (calls, max_per_linode, linodes) = share_calls(&env);
    let waves = op.metrics.waves.get();

    println!();
    println!("| phase | what | measured | target |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| create | {sharedips} SharedIPs applied to the apiserver | {:.1} s | — |",
        applied.as_secs_f64()
    );
    println!(
        "| create | sharing converged at the Linode API | {:.1} s | ≤ 60 s |",
        shared.as_secs_f64()
    );
    println!(
        "| create | every status Shared=True | {:.1} s | — |",
        statuses.as_secs_f64()
    );
    println!(
        "| create | share calls: {calls} in all over {linodes} Linodes, at most {max_per_linode} per Linode, {waves} waves | — | ≤ 1 per affected Linode per wave |"
    );

    // Phase 2: one pool of nodes moves to another pool (a node pool relabelled).
    env.standin.request_log().reset();
    let waves_before = op.metrics.waves.get();
    let moved: Vec<usize> = (0..nodes).filter(|n| n % POOLS == 0).collect();
    let start = Instant::now();
    stream::iter(moved.iter().copied())
        .map(|n| {
            let env = &env;
            async move {
                let patch = json!({"metadata": {"labels": {"pool": "5"}}});
                kube::Api::<k8s_openapi::api::core::v1::Node>::all(env.client())
                    .patch(
                        &format!("node-{n:03}"),
                        &kube::api::PatchParams::default(),
                        &kube::api::Patch::Merge(&patch),
                    )
                    .await
                    .expect("relabel")
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    for n in &moved {
        pool_of.insert(FIRST_NODE_LINODE + *n as u64, 5);
    }
    let want = expected(sharedips, &pool_of);
    let shared = converge(&env, &want, start).await;
    let (calls, max_per_linode, linodes) = share_calls(&env);
    let waves = op.metrics.waves.get() - waves_before;
    let changed: usize = moved.len();
    println!(
        "| relabel | {changed} nodes moved pool 0 → 5: sharing converged | {:.1} s | — |",
        shared.as_secs_f64()
    );
    println!(
        "| relabel | share calls: {calls} over {linodes} Linodes (the {changed} moved), at most {max_per_linode} per Linode, {waves} waves | — | ≤ 1 per affected Linode per wave |"
    );
    op.stop().await;
}

fn main() {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start a tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    rt.block_on(run());
}
