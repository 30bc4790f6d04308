//! The README's demo: a failover you can watch. It brings the whole lab up (a real
//! kube-apiserver, the Linode API stand-in, two operator replicas, four BGP route servers, a
//! router, two node namespaces each running the real node agent, and a client), applies a
//! SharedIP, and shows — one line per second — which node answers the client's probes while
//! the primary's agent is killed and comes back, its link is cut and restored, and it is
//! drained. Each change is measured (lost probes, outage) and a PNG of who answered over time
//! is written. Everything is torn down at the end, also on failure, timeout or Ctrl-C.
//!
//! Root only (network namespaces). Run it with `e2e/scripts/demo.sh`, which installs and
//! builds what it needs first.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::json;
use sharedip_e2e::lab::cluster::{BOUND, SHARED_V4};
use sharedip_e2e::lab::processes::{self, AGENT_BIN};
use sharedip_e2e::lab::report::plot_png;
use sharedip_e2e::lab::topology::{self, CLIENT_V4};
use sharedip_e2e::lab::traffic::{ProbeLog, Prober, ProberConfig};
use sharedip_e2e::lab::{role_spec, Lab, LabConfig, Propagation};
use sharedip_e2e::netns;

/// The SharedIP's name.
const SIP: &str = "web";
/// The responders' port (the lab's default).
const PORT: u16 = 80;
/// Width of the per-second strip: one character per probe at 20 ms.
const STRIP: usize = 50;

/// Command line of the demo.
#[derive(Debug, Parser)]
#[command(about = "Watch a SharedIP fail over between two nodes (needs root)")]
struct Args {
    /// Where to write the PNG of who answered over time.
    #[arg(long, default_value = "sharedip-demo.png")]
    png: PathBuf,
    /// Bound of the whole run, in seconds; everything is torn down when it passes.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Skip the planned switchover (drain annotation).
    #[arg(long)]
    no_drain: bool,
    /// Mean delay, in milliseconds, before a share change reaches a route server (Linode's
    /// took 10–20 s when observed in 2026; each route server has its own delay around it).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    propagation_delay_ms: u64,
    /// How far the route servers' delays spread around the mean, as a fraction (0 to 1).
    #[arg(long, default_value_t = 0.5, value_parser = Propagation::parse_jitter)]
    propagation_jitter: f64,
}

/// Prints the next step's title; `n` counts the steps.
fn step(n: &mut u32, title: &str) {
    *n += 1;
    println!("\n\x1b[1m== {n}. {title}\x1b[0m");
}

fn say(text: &str) {
    for line in text.lines() {
        println!("   {line}");
    }
}

/// Prints `out` indented under a `$ command` line.
fn show_command(command: &str, out: &std::process::Output) {
    println!("   $ {command}");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("     {line}");
    }
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        println!("     {line}");
    }
}

async fn kubectl(lab: &Lab, args: &[&str]) -> Result<()> {
    let out = lab
        .control_plane()
        .kubectl(args)
        .await
        .context("running kubectl")?;
    show_command(&format!("kubectl {}", args.join(" ")), &out);
    if !out.status.success() {
        bail!("kubectl {} failed", args.join(" "));
    }
    Ok(())
}

/// `sharedip-node-agent status` inside the node's namespace, as an operator would run it
/// on the host (`kubectl exec` into the DaemonSet pod).
async fn agent_status(lab: &Lab, node: &str) -> Result<()> {
    let bin = processes::locate(AGENT_BIN, "sharedip-node-agent", "SHAREDIP_AGENT_BIN")?;
    let ns = lab.node_ns(node)?;
    let socket = lab.agent_dir(node)?.join(processes::STATUS_SOCKET);
    let mut cmd = ns.command(&bin);
    cmd.arg("status").arg("--socket").arg(&socket);
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(15), cmd.output())
        .await
        .context("agent status did not answer within 15 s")?
        .context("running sharedip-node-agent status")?;
    show_command(
        &format!(
            "ip netns exec {} sharedip-node-agent status --socket {}",
            ns.name(),
            socket.display()
        ),
        &out,
    );
    Ok(())
}

/// The manifest the demo applies, as a user would write it.
fn manifest() -> Result<String> {
    let obj = json!({
        "apiVersion": "sharedip.io/v1alpha1",
        "kind": "SharedIP",
        "metadata": {"name": SIP},
        "spec": role_spec(&SHARED_V4.to_string()),
    });
    serde_yaml::to_string(&obj).context("rendering the SharedIP as YAML")
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// One character per probe: the node's last letter (`a` for node-a), `·` for a lost probe.
fn glyph(answer: Option<&str>) -> char {
    answer.and_then(|n| n.chars().last()).unwrap_or('·')
}

/// Prints the live view: one line per second of probes, lagging a little so that the
/// probes of that second have finished (each is bounded by the prober's timeout).
struct Live<'a> {
    prober: &'a Prober,
    shown_until: Duration,
}

impl<'a> Live<'a> {
    fn new(prober: &'a Prober) -> Self {
        Live {
            prober,
            shown_until: prober.elapsed(),
        }
    }

    /// Prints a line per second for at least `min`; then stops as soon as a whole second
    /// was answered by `settle` (if given). Returns whether it settled (always true without
    /// `settle`); gives up after `max`.
    async fn watch(&mut self, min: Duration, max: Duration, settle: Option<&str>) -> bool {
        let lag = self.prober.config().timeout + Duration::from_millis(100);
        let begun = Instant::now();
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let end = self.prober.elapsed().saturating_sub(lag);
            let window = self.prober.snapshot().between(self.shown_until, end);
            let from = self.shown_until;
            self.shown_until = end;
            print_line(from, &window);
            let settled = match settle {
                Some(node) => {
                    !window.samples.is_empty()
                        && window
                            .samples
                            .iter()
                            .all(|s| s.outcome.answered_by() == Some(node))
                }
                None => true,
            };
            if settled && begun.elapsed() >= min {
                return true;
            }
            if begun.elapsed() >= max {
                return false;
            }
        }
    }
}

fn print_line(from: Duration, window: &ProbeLog) {
    let mut strip: String = window
        .samples
        .iter()
        .map(|s| glyph(s.outcome.answered_by()))
        .take(STRIP)
        .collect();
    let shown = strip.chars().count();
    strip.extend(std::iter::repeat_n(' ', STRIP.saturating_sub(shown)));
    let mut counts = String::new();
    for (node, n) in window.answers_by_node() {
        let _ = write!(counts, "{node} {n:>2}  ");
    }
    let lost = window.lost();
    if lost > 0 {
        let _ = write!(counts, "\x1b[31mlost {lost}\x1b[0m");
    }
    println!("   t={:>5.1}s |{strip}| {counts}", from.as_secs_f64());
}

/// What the client saw after one event.
struct Measured {
    event: String,
    before: Option<String>,
    after: Option<String>,
    /// From the event to the first answer of the new node.
    switched_after: Option<Duration>,
    lost: usize,
    outage: Option<Duration>,
}

impl Measured {
    fn from_log(event: &str, log: &ProbeLog, mark: Duration) -> Measured {
        let part = log.after(mark);
        let before = log
            .between(Duration::ZERO, mark)
            .last_answer()
            .map(str::to_owned);
        // The first answer from another node than the one answering before the event
        // (failed probes in between included in the wait).
        let switch = part.samples.iter().find(|s| {
            s.outcome
                .answered_by()
                .is_some_and(|n| Some(n) != before.as_deref())
        });
        let longest = part.longest_outage();
        Measured {
            event: event.to_owned(),
            before,
            after: part.last_answer().map(str::to_owned),
            switched_after: switch.map(|s| s.sent_at.saturating_sub(mark)),
            lost: longest.as_ref().map_or(0, |o| o.lost),
            outage: longest.map(|o| o.duration),
        }
    }

    fn explain(&self) {
        let who = |n: &Option<String>| n.clone().unwrap_or_else(|| "nobody".into());
        let moved = match self.switched_after {
            Some(t) => format!(
                "traffic moved {} → {}; {} answered {} after the event",
                who(&self.before),
                who(&self.after),
                who(&self.after),
                secs(t)
            ),
            None => format!("{} kept answering", who(&self.after)),
        };
        let outage = match self.outage {
            Some(d) => format!(
                "the client lost {} probe(s) in a row: an outage of {}",
                self.lost,
                secs(d)
            ),
            None => "no probe was lost".to_owned(),
        };
        say(&format!("\x1b[1m=> {moved}; {outage}.\x1b[0m"));
    }
}

/// Records `event` in the prober's timeline, runs `act`, watches until `expect` answers
/// for a whole second (bounded), and measures what the client saw.
async fn observe<F>(live: &mut Live<'_>, event: &str, expect: &str, act: F) -> Result<Measured>
where
    F: std::future::Future<Output = Result<()>>,
{
    let mark = live.prober.mark(event);
    act.await?;
    if !live
        .watch(Duration::from_secs(2), BOUND, Some(expect))
        .await
    {
        bail!("{expect} did not answer steadily within {BOUND:?} of: {event}");
    }
    // One more second, so the picture shows the new steady state.
    live.watch(Duration::ZERO, Duration::ZERO, None).await;
    let m = Measured::from_log(event, &live.prober.snapshot(), mark);
    m.explain();
    Ok(m)
}

fn summary(results: &[Measured]) {
    println!(
        "   {:<34} {:<18} {:>12} {:>14} {:>10}",
        "event", "who answers", "new node at", "lost in a row", "outage"
    );
    for m in results {
        let who = format!(
            "{} → {}",
            m.before.as_deref().unwrap_or("-"),
            m.after.as_deref().unwrap_or("-")
        );
        println!(
            "   {:<34} {:<18} {:>12} {:>14} {:>10}",
            m.event,
            who,
            m.switched_after.map_or_else(|| "-".into(), secs),
            m.lost,
            m.outage.map_or_else(|| "none".into(), secs),
        );
    }
}

fn print_topology(lab: &Lab) -> Result<()> {
    let cp = lab.control_plane();
    say(&format!(
        "Kubernetes: etcd + kube-apiserver at {}, {} operator replicas (one leads via a Lease)",
        cp.server_url(),
        lab.config().operators
    ));
    say(&format!(
        "Linode API stand-in at {}: the IP holder Linode owns {SHARED_V4}",
        lab.standin().base_url()
    ));
    say(&format!(
        "4 route servers ({}, AS 65000) at {} … {}: like Linode's, they accept {SHARED_V4}",
        lab.config().flavor,
        topology::route_server_address(1),
        topology::route_server_address(4),
    ));
    say("  only from nodes the Linode API shares it with and prefer the primary's route;");
    say("  a router between them, the nodes and the client follows their best route");
    for node in lab.node_names() {
        let role = if node == "node-a" {
            "primary"
        } else {
            "secondary"
        };
        say(&format!(
            "{node} ({role}): netns {}, {} (Linode {}), node agent + a responder that answers \"{node}\"",
            lab.node_ns(&node)?.name(),
            lab.node_address(&node)?,
            lab.linode_of(&node)?
        ));
    }
    say(&format!(
        "client: netns {}, {CLIENT_V4}, behind the router; it will probe {SHARED_V4}:{PORT}",
        lab.client_ns().name()
    ));
    Ok(())
}

async fn run(args: &Args) -> Result<()> {
    let mut results = Vec::new();
    let mut n = 0;

    step(&mut n, "Bringing the lab up");
    say("Everything runs on this machine, in network namespaces, with documentation addresses.");
    let lab_started = Instant::now();
    let mut lab = Lab::start(LabConfig {
        propagation: Propagation {
            delay: Duration::from_millis(args.propagation_delay_ms),
            jitter: args.propagation_jitter,
            ..Propagation::default()
        },
        ..LabConfig::default()
    })
    .await
    .context("starting the lab")?;
    say(&format!(
        "Up in {} (every agent has tried its 4 route servers, which, like Linode's, leave\n\
         its sessions unanswered until its Linode holds a shared address):",
        secs(lab_started.elapsed())
    ));
    print_topology(&lab)?;
    if let Some(leader) = lab.operator_leader().await? {
        say(&format!("operator leader: {leader}"));
    }

    step(&mut n, "kubectl apply a SharedIP");
    say("It asks for 192.0.2.10 on the nodes labelled sharedip.io/role=primary (node-a), with");
    say("the sharedip.io/role=secondary nodes (node-b) as standby:");
    let yaml = manifest()?;
    say(&yaml);
    let applied = Instant::now();
    let out = lab
        .control_plane()
        .kubectl_with_stdin(["apply", "-f", "-"], yaml.as_bytes())
        .await
        .context("kubectl apply")?;
    show_command("kubectl apply -f web.yaml", &out);
    if !out.status.success() {
        bail!("kubectl apply failed");
    }
    let shared = IpAddr::V4(SHARED_V4);
    lab.wait_answers(shared, Some("node-a"), BOUND)
        .await
        .context("waiting for node-a to answer")?;
    say(&format!(
        "{} later the client reaches node-a: the operator shared the IP with both nodes'",
        secs(applied.elapsed())
    ));
    say("Linodes, both agents put it on lo and announced it over BGP — node-a with the primary");
    say("community, so the route servers and the router send the traffic to node-a.");

    step(&mut n, "The client probes 192.0.2.10 every 20 ms");
    say("One line per second: a character per probe — `a` answered by node-a, `b` by node-b,");
    say("`·` lost (refused or no answer within 100 ms) — then the count per node.");
    let cfg = ProberConfig::new(SocketAddr::new(shared, PORT));
    let prober = Prober::start(lab.client_ns(), cfg).context("starting the prober")?;
    let mut live = Live::new(&prober);
    live.watch(Duration::from_secs(3), Duration::from_secs(3), None)
        .await;

    step(&mut n, "What Kubernetes and node-a's agent say");
    kubectl(&lab, &["get", "sharedips", "-o", "wide"]).await?;
    agent_status(&lab, "node-a").await?;

    step(&mut n, "Hard failure: node-a's agent is killed (SIGKILL)");
    say("No clean shutdown: no BGP withdraw. The kernel closes the dead agent's sessions, the");
    say("route servers drop node-a's route at once, and the router follows node-b's (announced");
    say("all along as standby). node-a's host is still up and still answers until the route");
    say("moves, so expect few or no lost probes.");
    results.push(
        observe(&mut live, "SIGKILL agent node-a", "node-b", async {
            lab.sigkill_agent("node-a")?;
            Ok(())
        })
        .await?,
    );
    kubectl(&lab, &["get", "sharedips"]).await?;

    step(&mut n, "Failback: node-a's agent starts again");
    say("It finds its state, re-establishes its sessions and announces as primary again.");
    results.push(
        observe(&mut live, "agent node-a back", "node-a", async {
            lab.start_agent("node-a")?;
            Ok(())
        })
        .await?,
    );

    step(&mut n, "Host failure: node-a's network link is cut");
    say("Nothing tells anyone: node-a's BGP sessions die only when the route servers' hold");
    say("timer (3 s in the lab) expires. Until then the router keeps sending the traffic into");
    say("the void — this is the outage a dead host costs.");
    results.push(
        observe(&mut live, "link of node-a cut", "node-b", async {
            lab.set_link("node-a", false)?;
            Ok(())
        })
        .await?,
    );
    say("The link comes back: node-a's sessions re-establish and it announces as primary again.");
    results.push(
        observe(&mut live, "link of node-a back", "node-a", async {
            lab.set_link("node-a", true)?;
            Ok(())
        })
        .await?,
    );

    if !args.no_drain {
        step(
            &mut n,
            "Planned switchover: node-a is drained (annotation sharedip.io/drain)",
        );
        say("Maintenance: the agent on node-a withdraws first and unbinds later, so traffic");
        say("moves to node-b before node-a stops answering.");
        results.push(
            observe(&mut live, "drain node-a", "node-b", async {
                lab.set_drain("node-a", true).await?;
                Ok(())
            })
            .await?,
        );
        say("The drain annotation comes off; node-a takes the traffic back.");
        results.push(
            observe(&mut live, "undrain node-a", "node-a", async {
                lab.set_drain("node-a", false).await?;
                Ok(())
            })
            .await?,
        );
    }
    let log = prober.stop().await;

    step(&mut n, "What kubectl describe tells a user");
    kubectl(&lab, &["describe", "sharedip", SIP]).await?;

    step(&mut n, "Summary: what the client saw");
    summary(&results);
    say(&format!(
        "{} probes in all, {} answered by node-a, {} by node-b, {} lost.",
        log.samples.len(),
        log.answers_by_node().get("node-a").copied().unwrap_or(0),
        log.answers_by_node().get("node-b").copied().unwrap_or(0),
        log.lost()
    ));
    let png = std::path::absolute(&args.png).unwrap_or_else(|_| args.png.clone());
    if let Some(dir) = png.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    plot_png(
        &log,
        &png,
        "sharedip demo: who answered 192.0.2.10",
        (1400, 420),
    )
    .context("writing the plot")?;
    say(&format!(
        "Plot of who answered over time (a lane per node, a line per event): {}",
        png.display()
    ));

    step(&mut n, "Cleaning up");
    kubectl(&lab, &["delete", "sharedip", SIP, "--wait=true"]).await?;
    lab.wait_no_leaks(BOUND)
        .await
        .context("waiting until nothing is left behind")?;
    say("The SharedIP's finalizer unshared the IP in the Linode API, both agents withdrew it and");
    say("took it off lo, the router has no route left. Stopping every process, removing the");
    say("namespaces and temporary files.");
    drop(lab);
    Ok(())
}

fn preflight() -> Result<()> {
    if !netns::is_root() {
        bail!(
            "the demo needs root: it creates network namespaces. Run it as root, e.g. \
             `sudo e2e/scripts/demo.sh`"
        );
    }
    if let Some(p) = sharedip_e2e::routeserver::Flavor::Bird.missing_program() {
        bail!("the lab's route servers need {p}: run e2e/scripts/install-prereqs.sh as root");
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Only problems of the lab's machinery; the demo prints its own story.
    // kube's client logs every failed readiness poll while the apiserver starts as an
    // error; the lab's own bounded waits report real failures.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "warn,kube_client::client::builder=off",
        ))
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = preflight() {
        eprintln!("demo: {e:#}");
        return ExitCode::FAILURE;
    }
    let bound = Duration::from_secs(args.timeout_secs);
    let begun = Instant::now();
    // Dropping `run` (timeout, Ctrl-C) drops the lab, which tears everything down.
    let outcome = tokio::select! {
        r = tokio::time::timeout(bound, run(&args)) => r.map_err(|_| anyhow::anyhow!(
            "the demo did not finish within {} s; tearing down", bound.as_secs()
        )).and_then(|r| r),
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; tearing down")),
    };
    match outcome {
        Ok(()) => {
            println!(
                "\nDone in {}: every time node-a failed or left, node-b took over; every time it \
                 came back, it took over again — measured from the client's side.",
                secs(begun.elapsed())
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_is_a_sharedip_for_the_lab_address() {
        let yaml = manifest().unwrap();
        let v: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(v["kind"], "SharedIP");
        assert_eq!(v["spec"]["address"], SHARED_V4.to_string());
    }

    #[test]
    fn glyph_is_the_node_letter_or_a_dot() {
        assert_eq!(glyph(Some("node-a")), 'a');
        assert_eq!(glyph(None), '·');
    }
}
