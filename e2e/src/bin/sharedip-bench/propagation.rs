//! `--suite propagation`: what the route servers' share propagation delay `D` costs (Linode's
//! took 10–20 s when observed in 2026; `bench.sh` runs this suite with D = 15 s and D = 0).
//!
//! One lab of three nodes (node-a primary, node-b secondary, node-c unselected) with a client
//! probing the shared IP, measuring in this order:
//! (a) SharedIP applied → first answered probe (the nodes' sessions are refused until then);
//! (b) node-c newly selected as a secondary → its status entry says it announces;
//! (c) every agent restarted at once (`--runs` times) → all sessions up and traffic answered;
//! (d) node-a recycled as LKE does (cordon, drain, Linode deleted, Node deleted): lost
//! probes and the outage. Then, when the agent has `--withdraw-on-cordon`, (d) again in a
//! second lab with it, waiting after the cordon until node-b answers, as the option
//! promises. (a), (b) and (d) are one-way events of a lab (a first share, a node selected
//! for the first time, a node gone), so they are measured once per run of the suite.
//!
//! Targets (docs/ARCHITECTURE.md): (a)–(c) within D + 2 s; (d) with the option: 0 lost.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use sharedip_e2e::lab::cluster::{eventually, BOUND, ROLE_LABEL, SHARED_V4};
use sharedip_e2e::lab::processes::{self, AGENT_BIN};
use sharedip_e2e::lab::report::{write_json, BenchmarkReport, Metric, ModeResult, RunResult};
use sharedip_e2e::lab::traffic::{Prober, ProberConfig};
use sharedip_e2e::lab::{Lab, LabConfig, NodeSpec};

use super::{
    loadavg, measure_apply, ms, secs, shared, stats_text, wait_ready, Args, Machine, Verdict,
    PRIMARY, SECONDARY, SIP,
};

/// The node selected later, as a secondary.
const THIRD: &str = "node-c";
/// Slack on top of `D` for apply → traffic, a new secondary and a restart of every agent.
const SLACK: Duration = Duration::from_secs(2);

/// (c): one restart of every agent.
#[derive(Debug, Clone, Serialize)]
struct RestartRun {
    /// Agents started → every admitted node's sessions established on every route server.
    sessions_ms: f64,
    /// Agents started → the first answered probe.
    answered_ms: f64,
}

/// (d): one node recycle (the probe log from the cordon until node-b answered and the
/// route servers' hold time had passed since the Linode was deleted).
#[derive(Debug, Clone)]
struct RecycleRun {
    withdraw_on_cordon: bool,
    run: RunResult,
}

#[derive(Debug, Serialize)]
struct PropagationJson<'a> {
    suite: &'static str,
    machine: Machine,
    profile: &'a str,
    interval_ms: u64,
    runs: u32,
    agents_hold_time_s: u16,
    propagation_delay_ms: u64,
    propagation_jitter: f64,
    lab_startup_s: f64,
    #[serde(flatten)]
    report: &'a BenchmarkReport,
    apply_answered_ms: f64,
    apply_ready_ms: f64,
    new_secondary_shared_ms: f64,
    new_secondary_announcing_ms: f64,
    restart_all: &'a [RestartRun],
    /// Why the recycle with `--withdraw-on-cordon` was not measured, if it was not.
    recycle_with_option_skipped: Option<String>,
    verdicts: &'a [Verdict],
}

/// Whether the agent under test has `--withdraw-on-cordon` (from `run --help`).
fn agent_has_withdraw_on_cordon() -> Result<bool> {
    let bin = processes::locate(AGENT_BIN, "sharedip-node-agent", "SHAREDIP_AGENT_BIN")?;
    let out = std::process::Command::new(&bin)
        .args(["run", "--help"])
        .output()
        .with_context(|| format!("running {} run --help", bin.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("--withdraw-on-cordon"))
}

fn lab_config(args: &Args, withdraw_on_cordon: bool) -> LabConfig {
    let mut nodes = LabConfig::default().nodes;
    nodes.push(NodeSpec::new(THIRD));
    LabConfig {
        nodes,
        withdraw_on_cordon,
        ..args.lab_config()
    }
}

fn start_prober(lab: &Lab, args: &Args) -> Result<Prober> {
    let mut cfg = ProberConfig::new(SocketAddr::new(shared(), lab.config().port));
    cfg.interval = Duration::from_millis(args.interval_ms);
    Prober::start(lab.client_ns(), cfg).context("starting the prober")
}

/// (b): selects node-c as a secondary; returns selected → shared with its Linode and
/// selected → its status entry announcing.
async fn measure_new_secondary(lab: &Lab) -> Result<(Duration, Duration)> {
    let begun = Instant::now();
    lab.label_node(THIRD, ROLE_LABEL, Some("secondary")).await?;
    let mut shared_after = None;
    loop {
        if begun.elapsed() > BOUND {
            bail!("{THIRD} not announcing within {BOUND:?}");
        }
        if shared_after.is_none() && lab.shared_with(&SHARED_V4.to_string()).contains(THIRD) {
            shared_after = Some(begun.elapsed());
        }
        if lab
            .node_status(SIP, THIRD)
            .await?
            .is_some_and(|s| s.announcing)
        {
            let announcing = begun.elapsed();
            let shared_after = shared_after.unwrap_or(announcing);
            println!(
                "   {THIRD} selected: shared after {}, announcing after {}",
                secs(shared_after),
                secs(announcing)
            );
            return Ok((shared_after, announcing));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// (c): SIGTERMs every agent, starts them all again, and measures from the start.
async fn measure_restart_all(lab: &mut Lab, prober: &Prober, k: u32) -> Result<RestartRun> {
    let nodes = lab.node_names();
    for node in &nodes {
        lab.sigterm_agent(node).await?;
    }
    let mark = prober.mark(&format!("every agent started #{k}"));
    let begun = Instant::now();
    for node in &nodes {
        lab.start_agent(node)?;
    }
    lab.wait_sessions(BOUND).await?;
    let sessions = begun.elapsed();
    let answered = eventually("a probe answered after the restart", BOUND, || async {
        prober
            .snapshot()
            .samples
            .iter()
            .find(|s| s.sent_at >= mark && !s.outcome.failed())
            .map(|s| s.sent_at - mark)
            .ok_or_else(|| "no answer yet".to_owned())
    })
    .await?;
    println!(
        "   restart #{k}: sessions up after {}, first answer after {}",
        secs(sessions),
        secs(answered)
    );
    Ok(RestartRun {
        sessions_ms: ms(sessions),
        answered_ms: ms(answered),
    })
}

/// Waits until a node other than the primary answers (node-b or, once selected, node-c: the
/// route servers prefer neither secondary).
async fn secondary_answers(lab: &Lab, what: &str) -> Result<()> {
    eventually(what, BOUND, || async {
        match lab.who_answers(shared()).await {
            Some(n) if n != PRIMARY => Ok(()),
            other => Err(format!("answered by {other:?}")),
        }
    })
    .await?;
    Ok(())
}

/// (d): recycles node-a; with the option, waits after the cordon until a secondary answers.
async fn measure_recycle(lab: &mut Lab, prober: &Prober, with_option: bool) -> Result<RecycleRun> {
    let mark = prober.mark(&format!(
        "recycle {PRIMARY} (withdraw on cordon: {with_option})"
    ));
    if with_option {
        lab.cordon_node(PRIMARY, true).await?;
        secondary_answers(lab, "a secondary answers after the cordon").await?;
        lab.drain_node(PRIMARY).await?;
        lab.delete_linode(PRIMARY)?;
        lab.delete_node(PRIMARY).await?;
    } else {
        lab.recycle_node(PRIMARY).await?;
    }
    secondary_answers(lab, "a secondary answers after the recycle").await?;
    // Past the hold time since the Linode went: a route still pointing at it is lost by now.
    tokio::time::sleep(Duration::from_secs(u64::from(lab.config().hold_time)) + SLACK).await;
    let run = RunResult::from_log(&prober.snapshot().after(mark));
    println!(
        "   recycle (withdraw on cordon: {with_option}): lost {}, outage {}, then {:?}",
        run.lost_total,
        secs(run.outage),
        run.answered_by_last
    );
    Ok(RecycleRun {
        withdraw_on_cordon: with_option,
        run,
    })
}

/// A second lab with `--withdraw-on-cordon`: SharedIP applied, node-a answering, recycled.
async fn recycle_with_option(args: &Args) -> Result<RecycleRun> {
    println!("== a second lab, agents with --withdraw-on-cordon: node recycle");
    let mut lab = Lab::start(lab_config(args, true))
        .await
        .context("starting the lab with --withdraw-on-cordon")?;
    let prober = start_prober(&lab, args)?;
    lab.apply_sharedip(SIP, sharedip_e2e::lab::role_spec(&SHARED_V4.to_string()))
        .await?;
    lab.wait_answers(shared(), Some(PRIMARY), BOUND).await?;
    let run = measure_recycle(&mut lab, &prober, true).await;
    prober.stop().await;
    run
}

/// Everything measured, before it is judged.
struct Figures {
    apply_answered: Duration,
    apply_ready: Duration,
    new_shared: Duration,
    new_announcing: Duration,
    restarts: Vec<RestartRun>,
    recycles: Vec<RecycleRun>,
    skipped: Option<String>,
    startup: Duration,
}

async fn measure(args: &Args) -> Result<Figures> {
    println!(
        "== starting the lab: 3 nodes ({PRIMARY} primary, {SECONDARY} secondary, {THIRD} unselected), D = {} ms ± {:.0} %",
        args.propagation_delay_ms,
        args.propagation_jitter * 100.0
    );
    let mut lab = Lab::start(lab_config(args, false))
        .await
        .context("starting the lab")?;
    println!("   lab up in {}", secs(lab.startup_time()));
    let prober = start_prober(&lab, args)?;

    println!("== (a) SharedIP applied -> first answered probe");
    let apply = measure_apply(&lab, &prober, 1).await?;
    wait_ready(&lab).await?;
    println!("== (b) {THIRD} newly selected as a secondary -> announcing");
    let (new_shared, new_announcing) = measure_new_secondary(&lab).await?;
    println!("== (c) every agent restarted at once -> sessions up and traffic answered");
    let mut restarts = Vec::new();
    for k in 1..=args.runs {
        lab.wait_answers(shared(), Some(PRIMARY), BOUND).await?;
        restarts.push(measure_restart_all(&mut lab, &prober, k).await?);
    }
    println!("== (d) {PRIMARY} recycled (cordon, drain, Linode deleted, Node deleted)");
    lab.wait_answers(shared(), Some(PRIMARY), BOUND).await?;
    let mut recycles = vec![measure_recycle(&mut lab, &prober, false).await?];
    prober.stop().await;
    let startup = lab.startup_time();
    drop(lab);

    let skipped = if agent_has_withdraw_on_cordon()? {
        recycles.push(recycle_with_option(args).await?);
        None
    } else {
        let why = "the agent has no --withdraw-on-cordon (sharedip-node-agent run --help)";
        println!("== (d) with --withdraw-on-cordon: skipped: {why}");
        Some(why.to_owned())
    };
    Ok(Figures {
        apply_answered: Duration::from_secs_f64(apply.answered_ms / 1e3),
        apply_ready: Duration::from_secs_f64(apply.ready_ms / 1e3),
        new_shared,
        new_announcing,
        restarts,
        recycles,
        skipped,
        startup,
    })
}

/// The figures next to their targets: metrics for the table, verdicts for the summary.
fn judge(f: &Figures, d: Duration, interval: Duration) -> (BenchmarkReport, Vec<Verdict>) {
    let target = d + SLACK;
    let within = format!("<= D + 2 s = {}", secs(target));
    let restart_sessions: Vec<Duration> = f
        .restarts
        .iter()
        .map(|r| Duration::from_secs_f64(r.sessions_ms / 1e3))
        .collect();
    let restart_answered: Vec<Duration> = f
        .restarts
        .iter()
        .map(|r| Duration::from_secs_f64(r.answered_ms / 1e3))
        .collect();
    let restart_worst = restart_sessions
        .iter()
        .chain(&restart_answered)
        .max()
        .copied()
        .unwrap_or_default();
    let mut report = BenchmarkReport::default();
    let mut verdicts = Vec::new();
    let timed = [
        ("apply -> first probe answered", f.apply_answered, true),
        ("apply -> status Ready", f.apply_ready, false),
        (
            "new secondary -> shared with its Linode",
            f.new_shared,
            false,
        ),
        (
            "new secondary -> announcing (status)",
            f.new_announcing,
            true,
        ),
        (
            "every agent restarted -> sessions up and answered",
            restart_worst,
            true,
        ),
    ];
    for (name, value, judged) in timed {
        report.metrics.push(Metric {
            name: name.into(),
            value: secs(value),
            target: if judged {
                within.clone()
            } else {
                "(information)".into()
            },
        });
        if judged {
            verdicts.push(Verdict {
                what: name.into(),
                met: value <= target,
                detail: secs(value),
            });
        }
    }
    report.metrics.push(Metric {
        name: "every agent restarted -> sessions up (min/med/max)".into(),
        value: stats_text(&restart_sessions),
        target: "(information)".into(),
    });
    for r in &f.recycles {
        let mode = recycle_mode(r.withdraw_on_cordon);
        report.modes.push(ModeResult {
            mode: mode.clone(),
            target: if r.withdraw_on_cordon {
                "0 lost"
            } else {
                "(information)"
            }
            .into(),
            interval,
            runs: vec![r.run.clone()],
        });
        if r.withdraw_on_cordon {
            verdicts.push(Verdict {
                what: mode,
                met: r.run.lost_total == 0,
                detail: format!("lost {}", r.run.lost_total),
            });
        }
    }
    if let Some(why) = &f.skipped {
        report.metrics.push(Metric {
            name: recycle_mode(true),
            value: format!("skipped: {why}"),
            target: "0 lost".into(),
        });
    }
    (report, verdicts)
}

fn recycle_mode(withdraw_on_cordon: bool) -> String {
    let option = if withdraw_on_cordon {
        "with"
    } else {
        "without"
    };
    format!("node recycle {option} --withdraw-on-cordon")
}

/// Runs the suite and prints and writes its figures (`bench.json` in `out`).
pub(super) async fn run(args: Args, out: &Path) -> Result<()> {
    let machine_start = loadavg();
    let f = measure(&args).await?;
    let d = Duration::from_millis(args.propagation_delay_ms);
    let (report, verdicts) = judge(&f, d, Duration::from_millis(args.interval_ms));
    let machine = Machine::since(machine_start);
    let json_path = out.join("bench.json");
    write_json(
        &json_path,
        &PropagationJson {
            suite: "propagation",
            machine: machine.clone(),
            profile: &args.profile,
            interval_ms: args.interval_ms,
            runs: args.runs,
            agents_hold_time_s: args.hold_time,
            propagation_delay_ms: args.propagation_delay_ms,
            propagation_jitter: args.propagation_jitter,
            lab_startup_s: f.startup.as_secs_f64(),
            report: &report,
            apply_answered_ms: ms(f.apply_answered),
            apply_ready_ms: ms(f.apply_ready),
            new_secondary_shared_ms: ms(f.new_shared),
            new_secondary_announcing_ms: ms(f.new_announcing),
            restart_all: &f.restarts,
            recycle_with_option_skipped: f.skipped.clone(),
            verdicts: &verdicts,
        },
    )?;
    println!(
        "\n== results: propagation D = {} ms ± {:.0} %, builds: {}, {} CPUs, load {} -> {}\n",
        args.propagation_delay_ms,
        args.propagation_jitter * 100.0,
        args.profile,
        machine.cpus,
        machine.loadavg_start,
        machine.loadavg_end
    );
    print!("{}", report.table());
    println!("\ntargets (docs/ARCHITECTURE.md):");
    for v in &verdicts {
        let mark = if v.met { "met    " } else { "MISSED " };
        println!("  {mark} {}: {}", v.what, v.detail);
    }
    println!("\nJSON: {}", json_path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(answered: f64, recycles: Vec<RecycleRun>, skipped: Option<String>) -> Figures {
        Figures {
            apply_answered: Duration::from_secs_f64(answered),
            apply_ready: Duration::from_secs(1),
            new_shared: Duration::from_millis(200),
            new_announcing: Duration::from_secs(3),
            restarts: vec![RestartRun {
                sessions_ms: 150.0,
                answered_ms: 300.0,
            }],
            recycles,
            skipped,
            startup: Duration::from_secs(4),
        }
    }

    fn recycle(with: bool, lost: usize) -> RecycleRun {
        RecycleRun {
            withdraw_on_cordon: with,
            run: RunResult {
                lost,
                outage: Duration::from_millis(20 * lost as u64),
                lost_total: lost,
                answered_by_last: Some(SECONDARY.to_owned()),
            },
        }
    }

    fn verdict<'a>(verdicts: &'a [Verdict], what: &str) -> &'a Verdict {
        verdicts
            .iter()
            .find(|v| v.what == what)
            .unwrap_or_else(|| panic!("no verdict {what:?} in {verdicts:?}"))
    }

    #[test]
    fn timings_are_judged_against_d_plus_two_seconds() {
        let d = Duration::from_secs(15);
        let interval = Duration::from_millis(20);
        let (_, v) = judge(&figures(16.9, vec![], None), d, interval);
        assert!(verdict(&v, "apply -> first probe answered").met);
        let (report, v) = judge(&figures(17.1, vec![], None), d, interval);
        assert!(!verdict(&v, "apply -> first probe answered").met);
        assert!(report
            .metrics
            .iter()
            .any(|m| m.target == "<= D + 2 s = 17.000 s"));
    }

    #[test]
    fn the_recycle_with_the_option_must_lose_nothing_and_a_skip_is_said() {
        let d = Duration::ZERO;
        let interval = Duration::from_millis(20);
        let f = figures(1.0, vec![recycle(false, 100), recycle(true, 1)], None);
        let (report, v) = judge(&f, d, interval);
        assert_eq!(report.modes.len(), 2, "both recycles are modes");
        assert!(
            !verdict(&v, &recycle_mode(true)).met,
            "1 lost misses 0 lost"
        );
        assert!(
            !v.iter().any(|x| x.what == recycle_mode(false)),
            "without the option the loss is information, not judged"
        );
        let f = figures(1.0, vec![recycle(true, 0)], None);
        assert!(verdict(&judge(&f, d, interval).1, &recycle_mode(true)).met);

        let f = figures(1.0, vec![recycle(false, 100)], Some("no flag".into()));
        let (report, _) = judge(&f, d, interval);
        let skip = report
            .metrics
            .iter()
            .find(|m| m.name == recycle_mode(true))
            .expect("the skipped recycle is listed");
        assert!(skip.value.contains("skipped: no flag"), "{skip:?}");
    }
}
