//! The benchmark command: one lab (two nodes, BIRD route servers, real
//! agents and operators), a SharedIP, a client probing it every 20 ms, and each failure mode
//! repeated `--runs` times — planned switchover (drain annotation, agent SIGTERM), hard
//! failure (agent SIGKILL, link cut) and the failback after each. Also the agents' steady
//! RSS and idle CPU, and how long a SharedIP takes from `apply` to answering and to `Ready`.
//!
//! Prints a table next to the targets of docs/ARCHITECTURE.md, writes `bench.json` (and the
//! whole probe log, `probes.json`) and `failover.png` (one hard failure and its failback) into `--out`.
//! Timings are measured, not asserted: the exit code only says whether the run completed.
//!
//! Run it with `e2e/scripts/bench.sh` (root), which builds what it needs first.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Serialize;
use sharedip_e2e::lab::cluster::{eventually, extra_v4, BOUND, EXTRA_V4_COUNT, SHARED_V4};
use sharedip_e2e::lab::report::{
    plot_png, write_json, BenchmarkReport, Metric, ModeResult, RunResult, Stats,
};
use sharedip_e2e::lab::traffic::{ProbeLog, Prober, ProberConfig, Sample};
use sharedip_e2e::lab::{role_spec, Lab, LabConfig, Propagation};
use sharedip_e2e::netns;
use sharedip_e2e::routeserver::Flavor;

#[path = "sharedip-bench/connections.rs"]
mod connections;
#[path = "sharedip-bench/propagation.rs"]
mod propagation;
#[path = "sharedip-bench/services.rs"]
mod services;

/// The SharedIP the benchmark applies.
const SIP: &str = "bench";
/// The lab's primary and secondary (LabConfig::default()).
const PRIMARY: &str = "node-a";
const SECONDARY: &str = "node-b";
/// Quiet time before a failure and after each change settled, so every run's log window
/// starts and ends in a steady state.
const SETTLE: Duration = Duration::from_secs(1);
/// docs/ARCHITECTURE.md: the new holder answers within this after a planned switchover; a hard
/// failure's outage is at most the hold time plus this.
const SLACK: Duration = Duration::from_millis(500);
/// docs/ARCHITECTURE.md: SharedIP applied → shared + announced by its primary.
const APPLY_TARGET: Duration = Duration::from_secs(2);
/// The footprint target of docs/ARCHITECTURE.md.
const RSS_TARGET_MIB: f64 = 10.0;
/// Where the operator's scale benchmark lives (not re-run here).
const SCALE_COMMAND: &str = "cargo bench -p sharedip-operator --bench scale";

/// Repeats each failure mode in the lab and reports against the targets of
/// docs/ARCHITECTURE.md.
#[derive(Debug, Parser)]
#[command(name = "sharedip-bench", version)]
struct Args {
    /// What to measure: `failover` (the failure modes, footprint and apply latency),
    /// `propagation` (apply, a new secondary, a restart of every agent and a node recycle,
    /// under the route servers' propagation delay; see the `propagation` module),
    /// `services` (LoadBalancer Services through kube-proxy; see the `services` module) or
    /// `connections` (established connections through each move, flow handover off and on;
    /// see the `connections` module).
    #[arg(long, value_enum, default_value_t = Suite::Failover)]
    suite: Suite,
    /// Repetitions of each failure mode (and of its failback); in the propagation suite, of
    /// the restart of every agent.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    runs: u32,
    /// Repetitions of the apply → announced measurement.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    apply_runs: u32,
    /// Probe interval in milliseconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(5..=1000))]
    interval_ms: u64,
    /// Window of the idle CPU measurement, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=120))]
    idle_secs: u64,
    /// Hold time the agents propose, in seconds (3 is the lowest).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(3..=90))]
    hold_time: u16,
    /// Mean delay, in milliseconds, before a share change reaches a route server (Linode's
    /// took 10–20 s when observed in 2026; each route server has its own delay around it).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    propagation_delay_ms: u64,
    /// How far the route servers' delays spread around the mean, as a fraction (0 to 1).
    #[arg(long, default_value_t = 0.5, value_parser = Propagation::parse_jitter)]
    propagation_jitter: f64,
    /// Runs the agents with flow handover (their default) in the failover, propagation and
    /// services suites; off there by default, as their recorded numbers were measured
    /// without it. The connections suite runs both.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    flow_handover: bool,
    /// Directory for bench.json, probes.json and failover.png.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Build profile of the binaries under test (recorded in the report; bench.sh sets it).
    #[arg(long, env = "SHAREDIP_BENCH_PROFILE", default_value = "unknown")]
    profile: String,
}

impl Args {
    /// The lab every suite starts from: the hold time and the route servers' propagation of
    /// the command line.
    fn lab_config(&self) -> LabConfig {
        LabConfig {
            hold_time: self.hold_time,
            propagation: Propagation {
                delay: Duration::from_millis(self.propagation_delay_ms),
                jitter: self.propagation_jitter,
                ..Propagation::default()
            },
            flow_handover: self.flow_handover,
            ..LabConfig::default()
        }
    }
}

/// The measurement suites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Suite {
    Failover,
    Propagation,
    Services,
    Connections,
}

/// The failure modes: what fails, and how it comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Drain,
    Sigterm,
    Sigkill,
    LinkCut,
}

impl Failure {
    const ALL: [Failure; 4] = [
        Failure::Drain,
        Failure::Sigterm,
        Failure::Sigkill,
        Failure::LinkCut,
    ];

    fn planned(self) -> bool {
        matches!(self, Failure::Drain | Failure::Sigterm)
    }

    fn mode(self) -> &'static str {
        match self {
            Failure::Drain => "planned: drain annotation",
            Failure::Sigterm => "planned: agent SIGTERM",
            Failure::Sigkill => "hard: agent SIGKILL",
            Failure::LinkCut => "hard: link cut",
        }
    }

    fn failback_mode(self) -> &'static str {
        match self {
            Failure::Drain => "failback: drain removed",
            Failure::Sigterm => "failback: agent back (after SIGTERM)",
            Failure::Sigkill => "failback: agent back (after SIGKILL)",
            Failure::LinkCut => "failback: link restored",
        }
    }

    async fn inflict(self, lab: &mut Lab) -> Result<()> {
        match self {
            Failure::Drain => lab.set_drain(PRIMARY, true).await?,
            Failure::Sigterm => {
                let status = lab.sigterm_agent(PRIMARY).await?;
                if !status.is_some_and(|s| s.success()) {
                    tracing::warn!(?status, "the agent did not exit cleanly on SIGTERM");
                }
            }
            Failure::Sigkill => {
                lab.sigkill_agent(PRIMARY)?;
            }
            Failure::LinkCut => lab.set_link(PRIMARY, false)?,
        }
        Ok(())
    }

    async fn repair(self, lab: &mut Lab) -> Result<()> {
        match self {
            Failure::Drain => lab.set_drain(PRIMARY, false).await?,
            Failure::Sigterm | Failure::Sigkill => lab.start_agent(PRIMARY)?,
            Failure::LinkCut => lab.set_link(PRIMARY, true)?,
        }
        Ok(())
    }
}

/// Per mode: when the new holder first answered after the mark, per run.
#[derive(Debug, Clone, Serialize)]
struct SwitchTimes {
    mode: String,
    new_holder: String,
    #[serde(rename = "after_ms")]
    after: Vec<Option<f64>>,
}

#[derive(Debug, Clone, Serialize)]
struct ApplyRun {
    /// Apply → the first probe answered (by probe send time; resolution: the interval).
    answered_ms: f64,
    /// Apply → condition Ready=True for the current generation.
    ready_ms: f64,
    answered_by: String,
}

#[derive(Debug, Clone, Serialize)]
struct Footprint {
    node: String,
    pid: u32,
    rss_kib: u64,
    /// Of `rss_kib`: heap and stacks.
    rss_anon_kib: u64,
    /// Of `rss_kib`: pages of the binary and libraries.
    rss_file_kib: u64,
    cpu_ms: f64,
    window_s: f64,
}

#[derive(Debug, Clone, Serialize)]
struct Verdict {
    what: String,
    met: bool,
    detail: String,
}

#[derive(Debug, Serialize)]
struct BenchJson<'a> {
    machine: Machine,
    profile: &'a str,
    interval_ms: u64,
    runs: u32,
    agents_hold_time_s: u16,
    negotiated_hold_time_s: u16,
    negotiated_hold_time_source: &'a str,
    lab_startup_s: f64,
    #[serde(flatten)]
    report: &'a BenchmarkReport,
    switch_times: &'a [SwitchTimes],
    apply: &'a [ApplyRun],
    footprint: &'a [Footprint],
    verdicts: &'a [Verdict],
    leaks_after_cleanup: &'a [String],
    scale_benchmark: &'a str,
    plot: String,
    probes: String,
}

#[derive(Debug, Clone, Serialize)]
struct Machine {
    cpus: usize,
    loadavg_start: String,
    loadavg_end: String,
}

impl Machine {
    /// This machine, with the load average read at the start of a suite and now.
    fn since(loadavg_start: String) -> Machine {
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            loadavg_start,
            loadavg_end: loadavg(),
        }
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

fn shared() -> IpAddr {
    IpAddr::V4(SHARED_V4)
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The first probe sent at or after `from` that `node` answered, relative to `from`.
fn first_answer(log: &ProbeLog, from: Duration, node: &str) -> Option<Duration> {
    log.samples
        .iter()
        .find(|s| s.sent_at >= from && s.outcome.answered_by() == Some(node))
        .map(|s| s.sent_at - from)
}

/// A window of `log` with time 0 at `from` (for a plot of one episode).
fn rebased(log: &ProbeLog, from: Duration, to: Duration) -> ProbeLog {
    let part = log.between(from, to);
    ProbeLog {
        interval: part.interval,
        samples: part
            .samples
            .into_iter()
            .map(|s| Sample {
                sent_at: s.sent_at - from,
                ..s
            })
            .collect(),
        marks: part.marks.into_iter().map(|(d, l)| (d - from, l)).collect(),
    }
}

/// The hold time the route servers negotiated with the primary, read from BIRD
/// (`Hold timer: <left>/<negotiated>`); else the lower of the two proposals (RFC 4271).
fn negotiated_hold(lab: &Lab) -> (u16, &'static str) {
    let proposed_rs = lab
        .routing()
        .server(0)
        .map(|rs| rs.config().hold_time)
        .unwrap_or(lab.config().hold_time);
    let fallback = (
        proposed_rs.min(lab.config().hold_time),
        "min(agent, route server) proposals",
    );
    if lab.config().flavor != Flavor::Bird {
        return fallback;
    }
    let mut seen = Vec::new();
    for i in 0..lab.routing().len() {
        let Some(rs) = lab.routing().server(i) else {
            continue;
        };
        let sock = rs.dir().join("bird.ctl");
        drop(rs);
        let Ok(out) = std::process::Command::new("birdc")
            .arg("-s")
            .arg(&sock)
            .args(["show", "protocols", "all"])
            .output()
        else {
            continue;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(rest) = line.trim().strip_prefix("Hold timer:") {
                if let Some(v) = rest.trim().rsplit('/').next().and_then(|v| v.parse().ok()) {
                    seen.push(v);
                }
            }
        }
    }
    match (seen.iter().min(), seen.iter().max()) {
        (Some(&lo), Some(&hi)) if lo == hi => (lo, "read from the BIRD route servers"),
        _ => fallback,
    }
}

/// `VmRSS`, `RssAnon` and `RssFile` of a process in KiB.
fn rss_parts_kib(pid: u32) -> Result<(u64, u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name} in {path}"))
    };
    Ok((field("VmRSS:")?, field("RssAnon:")?, field("RssFile:")?))
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name is in parentheses and may hold spaces; fields count from after it.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("unexpected {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of proc(5); `rest` starts at field 3.
    let get = |i: usize| -> Result<u64> {
        fields
            .get(i - 3)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("field {i} of {path}"))
    };
    Ok(get(14)? + get(15)?)
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Waits until the primary holds the address with all sessions up (each episode already
/// ends with a quiet [`SETTLE`]).
async fn steady(lab: &Lab) -> Result<()> {
    lab.wait_sessions(BOUND).await?;
    lab.wait_answers(shared(), Some(PRIMARY), BOUND).await?;
    Ok(())
}

async fn wait_ready(lab: &Lab) -> Result<()> {
    eventually("SharedIP Ready", BOUND, || async {
        let s = lab
            .sharedip(SIP)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no SharedIP")?;
        if is_ready(&s) {
            Ok(())
        } else {
            Err("not Ready".to_owned())
        }
    })
    .await?;
    Ok(())
}

fn is_ready(s: &sharedip_api::SharedIP) -> bool {
    s.status.as_ref().is_some_and(|st| {
        st.observed_generation == s.metadata.generation
            && st
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// Applies the SharedIP and measures apply → first answer and apply → Ready.
async fn measure_apply(lab: &Lab, prober: &Prober, k: u32) -> Result<ApplyRun> {
    let mark = prober.mark(&format!("apply #{k}"));
    let begun = Instant::now();
    lab.apply_sharedip(SIP, role_spec(&SHARED_V4.to_string()))
        .await?;
    let (mut answered, mut ready) = (None, None);
    while answered.is_none() || ready.is_none() {
        if begun.elapsed() > BOUND {
            bail!("SharedIP not answered and Ready within {BOUND:?} (answered {answered:?}, ready {ready:?})");
        }
        if answered.is_none() {
            let log = prober.snapshot();
            answered = log
                .samples
                .iter()
                .find(|s| s.sent_at >= mark && !s.outcome.failed())
                .and_then(|s| Some((s.sent_at - mark, s.outcome.answered_by()?.to_owned())));
        }
        if ready.is_none() && lab.sharedip(SIP).await?.as_ref().is_some_and(is_ready) {
            ready = Some(begun.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (answered, by) = answered.unwrap_or_default();
    let ready = ready.unwrap_or_default();
    println!(
        "   apply #{k}: first answer after {} (by {by}), Ready after {}",
        secs(answered),
        secs(ready)
    );
    Ok(ApplyRun {
        answered_ms: ms(answered),
        ready_ms: ms(ready),
        answered_by: by,
    })
}

/// The name of the `i`th extra SharedIP of the footprint phase.
fn extra_name(i: u8) -> String {
    format!("{SIP}-extra-{i}")
}

/// Applies a SharedIP for each extra address and waits until every node's `lo` holds all
/// `prefixes` addresses (the agents bind before they announce) and each SharedIP is Ready.
async fn apply_extra(lab: &Lab, prefixes: usize) -> Result<()> {
    for i in 0..EXTRA_V4_COUNT {
        lab.apply_sharedip(&extra_name(i), role_spec(&extra_v4(i).to_string()))
            .await?;
    }
    eventually("every extra SharedIP Ready and bound", BOUND, || async {
        for node in [PRIMARY, SECONDARY] {
            let bound = lab.lo_addresses(node).map_err(|e| e.to_string())?.len();
            if bound < prefixes {
                return Err(format!("{node} has {bound} of {prefixes} addresses"));
            }
        }
        for i in 0..EXTRA_V4_COUNT {
            let s = lab
                .sharedip(&extra_name(i))
                .await
                .map_err(|e| e.to_string())?;
            if !s.as_ref().is_some_and(is_ready) {
                return Err(format!("{} not Ready", extra_name(i)));
            }
        }
        Ok(())
    })
    .await?;
    Ok(())
}

/// Deletes the footprint phase's SharedIPs and waits until they are gone everywhere: objects,
/// addresses on the nodes, routes on the router (a failure mode measured while the agents and
/// route servers still work through the deletions would measure them too).
async fn delete_extra(lab: &Lab) -> Result<()> {
    for i in 0..EXTRA_V4_COUNT {
        lab.delete_sharedip(&extra_name(i)).await?;
    }
    let extra: Vec<IpAddr> = (0..EXTRA_V4_COUNT).map(|i| extra_v4(i).into()).collect();
    eventually("extra SharedIPs gone everywhere", BOUND, || async {
        for i in 0..EXTRA_V4_COUNT {
            if lab
                .sharedip(&extra_name(i))
                .await
                .map_err(|e| e.to_string())?
                .is_some()
            {
                return Err(format!("{} still there", extra_name(i)));
            }
        }
        for node in [PRIMARY, SECONDARY] {
            let left = lab.lo_addresses(node).map_err(|e| e.to_string())?;
            if left.len() > 1 {
                return Err(format!("{node} still has {left:?}"));
            }
        }
        if let Some(p) = lab
            .router_routes()
            .into_keys()
            .find(|p| extra.contains(&p.addr))
        {
            return Err(format!("the router still routes {p}"));
        }
        Ok(())
    })
    .await?;
    steady(lab).await?;
    tokio::time::sleep(SETTLE).await;
    Ok(())
}

async fn delete_and_wait_clean(lab: &Lab) -> Result<()> {
    lab.delete_sharedip(SIP).await?;
    eventually("SharedIP gone", BOUND, || async {
        match lab.sharedip(SIP).await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(_) => Err("still there".to_owned()),
        }
    })
    .await?;
    lab.wait_no_leaks(BOUND).await?;
    Ok(())
}

/// One failure and its failback, as log windows `[fail, back)` and `[back, end)`.
struct Episode {
    fail: Duration,
    back: Duration,
    end: Duration,
}

async fn episode(lab: &mut Lab, prober: &Prober, f: Failure, k: u32) -> Result<Episode> {
    steady(lab).await?;
    let fail = prober.mark(&format!("{} #{k}", f.mode()));
    f.inflict(lab).await?;
    lab.wait_answers(shared(), Some(SECONDARY), BOUND)
        .await
        .with_context(|| format!("{} #{k}: the secondary answers", f.mode()))?;
    tokio::time::sleep(SETTLE).await;
    let back = prober.mark(&format!("{} #{k}", f.failback_mode()));
    f.repair(lab).await?;
    lab.wait_sessions(BOUND).await?;
    lab.wait_answers(shared(), Some(PRIMARY), BOUND)
        .await
        .with_context(|| format!("{} #{k}: the primary answers", f.failback_mode()))?;
    tokio::time::sleep(SETTLE).await;
    Ok(Episode {
        fail,
        back,
        end: prober.elapsed(),
    })
}

fn stats_text(values: &[Duration]) -> String {
    Stats::of_durations(values).map_or("-".to_owned(), |s| {
        format!(
            "{:.3}/{:.3}/{:.3} s",
            s.min.as_secs_f64(),
            s.median.as_secs_f64(),
            s.max.as_secs_f64()
        )
    })
}

async fn run(args: Args) -> Result<()> {
    let machine_start = loadavg();
    let interval = Duration::from_millis(args.interval_ms);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let out = args
        .out
        .canonicalize()
        .with_context(|| format!("resolving {}", args.out.display()))?;
    if args.suite == Suite::Propagation {
        return propagation::run(args, &out).await;
    }
    if args.suite == Suite::Services {
        return services::run(args, &out).await;
    }
    if args.suite == Suite::Connections {
        return connections::run(args, &out).await;
    }

    println!(
        "== starting the lab: 2 nodes ({PRIMARY} primary, {SECONDARY} secondary), 4 BIRD route servers, 2 operators"
    );
    let config = args.lab_config();
    let mut lab = Lab::start(config).await.context("starting the lab")?;
    println!("   lab up in {}", secs(lab.startup_time()));
    let (hold, hold_source) = negotiated_hold(&lab);
    println!(
        "   hold time: agents propose {} s; negotiated {hold} s ({hold_source})",
        args.hold_time
    );

    let port = lab.config().port;
    let mut cfg = ProberConfig::new(SocketAddr::new(shared(), port));
    cfg.interval = interval;
    let prober = Prober::start(lab.client_ns(), cfg).context("starting the prober")?;

    println!(
        "== SharedIP apply → announced ({} times; deleted in between)",
        args.apply_runs
    );
    let mut applies = Vec::new();
    for k in 1..=args.apply_runs {
        applies.push(measure_apply(&lab, &prober, k).await?);
        if k < args.apply_runs {
            delete_and_wait_clean(&lab).await?;
            tokio::time::sleep(SETTLE).await;
        }
    }
    wait_ready(&lab).await?;
    steady(&lab).await?;
    tokio::time::sleep(SETTLE).await;

    let prefixes = 1 + usize::from(EXTRA_V4_COUNT);
    println!(
        "== agent footprint: RSS and CPU over {} s idle, announcing {prefixes} prefixes",
        args.idle_secs
    );
    apply_extra(&lab, prefixes).await?;
    let mut pids = Vec::new();
    for node in [PRIMARY, SECONDARY] {
        let pid = lab
            .agent_pid(node)?
            .with_context(|| format!("the agent of {node} does not run"))?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if !comm.trim().starts_with("sharedip-node") {
            bail!(
                "pid {pid} of {node}'s agent is {:?}, not the agent binary",
                comm.trim()
            );
        }
        pids.push((node, pid, cpu_ticks(pid)?));
    }
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    let window = window.elapsed();
    let tick = clock_ticks_per_sec();
    let mut footprint = Vec::new();
    for (node, pid, before) in pids {
        let after = cpu_ticks(pid)?;
        let (rss_kib, rss_anon_kib, rss_file_kib) = rss_parts_kib(pid)?;
        let f = Footprint {
            node: node.to_owned(),
            pid,
            rss_kib,
            rss_anon_kib,
            rss_file_kib,
            cpu_ms: after.saturating_sub(before) as f64 / tick * 1000.0,
            window_s: window.as_secs_f64(),
        };
        println!(
            "   {node}: RSS {:.1} MiB (heap and stacks {:.1}, binary and libraries {:.1}), CPU {:.0} ms in {:.1} s",
            f.rss_kib as f64 / 1024.0,
            f.rss_anon_kib as f64 / 1024.0,
            f.rss_file_kib as f64 / 1024.0,
            f.cpu_ms,
            f.window_s
        );
        footprint.push(f);
    }
    delete_extra(&lab).await?;

    let mut episodes: Vec<(Failure, Episode)> = Vec::new();
    for k in 1..=args.runs {
        for f in Failure::ALL {
            println!("== {} #{k} and its failback", f.mode());
            let e = episode(&mut lab, &prober, f, k).await?;
            let log = prober.snapshot();
            let over = RunResult::from_log(&log.between(e.fail, e.back));
            let back = RunResult::from_log(&log.between(e.back, e.end));
            println!(
                "   failover: lost {} (outage {}), {SECONDARY} after {}; failback: lost {} (outage {}), {PRIMARY} after {}",
                over.lost_total,
                secs(over.outage),
                first_answer(&log, e.fail, SECONDARY).map_or("-".into(), secs),
                back.lost_total,
                secs(back.outage),
                first_answer(&log, e.back, PRIMARY).map_or("-".into(), secs),
            );
            episodes.push((f, e));
        }
    }

    println!("== cleaning up: SharedIP deleted, nothing may be left behind");
    delete_and_wait_clean(&lab).await?;
    let leaks = lab.leaks();
    let log = prober.stop().await;

    // Modes, switch times and verdicts.
    let hold_d = Duration::from_secs(hold.into());
    let mut report = BenchmarkReport::default();
    let mut switch_times = Vec::new();
    let mut verdicts = Vec::new();
    for f in Failure::ALL {
        let mine: Vec<&Episode> = episodes
            .iter()
            .filter(|(g, _)| *g == f)
            .map(|(_, e)| e)
            .collect();
        for (failback, mode, holder) in [
            (false, f.mode(), SECONDARY),
            (true, f.failback_mode(), PRIMARY),
        ] {
            let windows: Vec<(Duration, Duration)> = mine
                .iter()
                .map(|e| {
                    if failback {
                        (e.back, e.end)
                    } else {
                        (e.fail, e.back)
                    }
                })
                .collect();
            let runs: Vec<RunResult> = windows
                .iter()
                .map(|&(a, b)| RunResult::from_log(&log.between(a, b)))
                .collect();
            let after: Vec<Option<Duration>> = windows
                .iter()
                .map(|&(a, _)| first_answer(&log, a, holder))
                .collect();
            let target = if failback {
                "0 lost".to_owned()
            } else if f.planned() {
                "0 lost; new holder <= 0.5 s".to_owned()
            } else {
                format!("outage <= hold {hold} s + 0.5 s = {}", secs(hold_d + SLACK))
            };
            let lost_max = runs.iter().map(|r| r.lost_total).max().unwrap_or(0);
            let outage_max = runs.iter().map(|r| r.outage).max().unwrap_or_default();
            let after_max = after.iter().flatten().max().copied();
            let (met, detail) = if failback || f.planned() {
                let switch_ok = failback || after_max.is_some_and(|a| a <= SLACK);
                (
                    lost_max == 0 && switch_ok,
                    format!(
                        "max lost {lost_max}, {holder} answered after max {}",
                        after_max.map_or("-".into(), secs)
                    ),
                )
            } else {
                (
                    outage_max <= hold_d + SLACK,
                    format!("max outage {}", secs(outage_max)),
                )
            };
            verdicts.push(Verdict {
                what: mode.to_owned(),
                met,
                detail,
            });
            let found: Vec<Duration> = after.iter().flatten().copied().collect();
            report.metrics.push(Metric {
                name: format!("{mode}: {holder} answers after"),
                value: stats_text(&found),
                target: if f.planned() && !failback {
                    "<= 0.5 s".into()
                } else {
                    "(information)".into()
                },
            });
            switch_times.push(SwitchTimes {
                mode: mode.to_owned(),
                new_holder: holder.to_owned(),
                after: after.iter().map(|a| a.map(ms)).collect(),
            });
            report.modes.push(ModeResult {
                mode: mode.to_owned(),
                target,
                interval,
                runs,
            });
        }
    }

    let answered: Vec<Duration> = applies
        .iter()
        .map(|a| Duration::from_secs_f64(a.answered_ms / 1e3))
        .collect();
    let ready: Vec<Duration> = applies
        .iter()
        .map(|a| Duration::from_secs_f64(a.ready_ms / 1e3))
        .collect();
    report.metrics.push(Metric {
        name: "apply -> first probe answered (min/med/max)".into(),
        value: stats_text(&answered),
        target: "<= 2 s".into(),
    });
    report.metrics.push(Metric {
        name: "apply -> status Ready (min/med/max)".into(),
        value: stats_text(&ready),
        target: "<= 2 s".into(),
    });
    for (name, v) in [("apply -> answered", &answered), ("apply -> Ready", &ready)] {
        let max = v.iter().max().copied().unwrap_or_default();
        verdicts.push(Verdict {
            what: name.into(),
            met: max <= APPLY_TARGET,
            detail: format!("max {}", secs(max)),
        });
    }
    for f in &footprint {
        let mib = f.rss_kib as f64 / 1024.0;
        report.metrics.push(Metric {
            name: format!(
                "agent {} steady RSS (4 BGP peers, {prefixes} prefixes)",
                f.node
            ),
            value: format!("{mib:.1} MiB"),
            target: "<= 10 MiB (4 peers, 16 prefixes)".into(),
        });
        report.metrics.push(Metric {
            name: format!("agent {} idle CPU over {:.0} s", f.node, f.window_s),
            value: format!(
                "{:.2} % of a core ({:.0} ms)",
                f.cpu_ms / 10.0 / f.window_s,
                f.cpu_ms
            ),
            target: "~ 0".into(),
        });
        verdicts.push(Verdict {
            what: format!("agent {} RSS", f.node),
            met: mib <= RSS_TARGET_MIB,
            detail: format!("{mib:.1} MiB ({})", args.profile),
        });
    }
    report.metrics.push(Metric {
        name: "negotiated BGP hold time".into(),
        value: format!("{hold} s ({hold_source})"),
        target: "configurable down to 3 s".into(),
    });
    report.metrics.push(Metric {
        name: "scale: 1,000 SharedIPs x 100 nodes".into(),
        value: format!("not re-run here: {SCALE_COMMAND}"),
        target: "<= 60 s; <= 1 share call per Linode per wave".into(),
    });

    // One hard failure and its failback, for the plot: the first link cut.
    let plot = out.join("failover.png");
    let (pick, pe) = episodes
        .iter()
        .find(|(f, _)| *f == Failure::LinkCut)
        .or(episodes.first())
        .context("no episode to plot")?;
    let from = pe.fail.saturating_sub(SETTLE);
    plot_png(
        &rebased(&log, from, pe.end),
        &plot,
        &format!(
            "{} and failback: who answered {} (a probe every {} ms; 0 = 1 s before the failure)",
            pick.mode(),
            SHARED_V4,
            args.interval_ms
        ),
        (1200, 420),
    )?;
    let probes = out.join("probes.json");
    write_json(&probes, &log)?;

    let json_path = out.join("bench.json");
    let machine = Machine::since(machine_start);
    write_json(
        &json_path,
        &BenchJson {
            machine: machine.clone(),
            profile: &args.profile,
            interval_ms: args.interval_ms,
            runs: args.runs,
            agents_hold_time_s: args.hold_time,
            negotiated_hold_time_s: hold,
            negotiated_hold_time_source: hold_source,
            lab_startup_s: lab.startup_time().as_secs_f64(),
            report: &report,
            switch_times: &switch_times,
            apply: &applies,
            footprint: &footprint,
            verdicts: &verdicts,
            leaks_after_cleanup: &leaks,
            scale_benchmark: SCALE_COMMAND,
            plot: plot.display().to_string(),
            probes: probes.display().to_string(),
        },
    )?;

    println!(
        "\n== results: {} runs per mode, a probe every {} ms, builds: {}, {} CPUs, load {} -> {}\n",
        args.runs,
        args.interval_ms,
        args.profile,
        machine.cpus,
        machine.loadavg_start,
        machine.loadavg_end
    );
    println!("lost = failed probes in the run's window; outage = longest run of failed probes after the mark\n");
    print!("{}", report.table());
    println!("\ntargets (docs/ARCHITECTURE.md):");
    for v in &verdicts {
        let mark = if v.met { "met    " } else { "MISSED " };
        println!("  {mark} {}: {}", v.what, v.detail);
    }
    if !leaks.is_empty() {
        println!("\nleft behind after cleanup: {leaks:?}");
    }
    println!("\nJSON: {}", json_path.display());
    println!("plot: {}", plot.display());
    println!("probe log: {}", probes.display());
    println!("scale benchmark (operator, not re-run here): {SCALE_COMMAND}");
    drop(lab);
    Ok(())
}

fn preflight() -> Result<()> {
    if !netns::is_root() {
        bail!("the lab needs root (network namespaces); run e2e/scripts/bench.sh as root");
    }
    if let Some(p) = Flavor::Bird.missing_program() {
        bail!("the lab's route servers need {p}: run e2e/scripts/install-prereqs.sh as root");
    }
    Ok(())
}

/// A bound on the whole run: lab start, applies, the episodes (each bounded by its waits).
fn overall_bound(args: &Args) -> Duration {
    Duration::from_secs(600 + 120 * u64::from(args.runs) + 90 * u64::from(args.apply_runs))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    // The control plane's readiness poll logs expected connection errors while the
    // apiserver starts; they are noise in a benchmark's output.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,kube_client::client::builder=off")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if let Err(e) = preflight() {
        eprintln!("benchmark cannot run: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    let bound = overall_bound(&args);
    // Dropping `run` on Ctrl-C or at the bound drops the lab, which removes its namespaces
    // and processes.
    let result = tokio::select! {
        r = tokio::time::timeout(bound, run(args)) => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted; tearing the lab down");
            return std::process::ExitCode::FAILURE;
        }
    };
    match result {
        Ok(Ok(())) => std::process::ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("benchmark failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("benchmark did not finish within {bound:?}; tearing the lab down");
            std::process::ExitCode::FAILURE
        }
    }
}
