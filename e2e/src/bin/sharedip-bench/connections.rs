//! `--suite connections`: what each move does to established TCP connections, with flow
//! handover on and off.
//!
//! Two labs, one after the other: the agents with `--flow-handover=false`, then with flow handover (their default). In
//! each, a SharedIP (window 15 s), the line server of the flow handover tests on both nodes
//! and a client probing the address every `--interval-ms`. Per event — a drain, a SIGTERM
//! of the agent, a SIGKILL, a link cut, and the failback after each — `--runs` times: 20
//! chatting connections and one uploading full-size segments are opened to the node
//! carrying the address, the event happens, and once the other node answers (and 2 s more)
//! the connections that are still alive are counted; and the probes lost since the event.
//! After a SIGTERM the connections are counted before the agent's bounded shutdown ends:
//! that is how long flow handover keeps them (the node's own connections end with it).
//!
//! Target (docs/ARCHITECTURE.md): with flow handover, every connection survives the planned
//! moves and their failbacks, and no probe is lost; hard failures reset them, as without it.
//! Numbers are printed and written, never judged pass or fail.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use sharedip_e2e::handover_net::{self, Talk};
use sharedip_e2e::lab::cluster::{BOUND, SHARED_V4};
use sharedip_e2e::lab::report::write_json;
use sharedip_e2e::lab::traffic::{Prober, ProberConfig};
use sharedip_e2e::lab::{role_spec, Lab};

use super::{loadavg, secs, shared, Args, Failure, Machine, PRIMARY, SECONDARY, SIP};

/// Chatting connections per event (plus one upload).
const CHATS: usize = 20;
/// How long the connections run after the other node answers, before they are counted.
const AFTER: Duration = Duration::from_secs(2);
/// The SharedIP's flow handover window: longer than an event, shorter than the suite.
const WINDOW_SECONDS: u64 = 15;

/// One event of one run.
#[derive(Debug, Clone, Serialize)]
struct Row {
    flow_handover: bool,
    event: String,
    run: u32,
    /// Connections open when the event happened.
    open: usize,
    /// Connections alive after it.
    survived: usize,
    /// Probes lost from the event until the connections were counted.
    lost_probes: usize,
}

#[derive(Debug, Serialize)]
struct ConnectionsJson<'a> {
    suite: &'static str,
    machine: Machine,
    profile: &'a str,
    interval_ms: u64,
    runs: u32,
    rows: &'a [Row],
}

pub(super) async fn run(args: Args, out: &Path) -> Result<()> {
    let machine_start = loadavg();
    let mut rows = Vec::new();
    for on in [false, true] {
        println!(
            "== established connections, flow handover {} ({} runs of each event)",
            if on { "on" } else { "off" },
            args.runs
        );
        rows.extend(one_lab(&args, on).await?);
    }
    print_table(&rows);
    write_json(
        &out.join("connections.json"),
        &ConnectionsJson {
            suite: "connections",
            machine: Machine::since(machine_start),
            profile: &args.profile,
            interval_ms: args.interval_ms,
            runs: args.runs,
            rows: &rows,
        },
    )?;
    println!("   written: {}", out.join("connections.json").display());
    Ok(())
}

/// Every event `--runs` times in one lab.
async fn one_lab(args: &Args, on: bool) -> Result<Vec<Row>> {
    let mut config = args.lab_config();
    config.flow_handover = on;
    let mut lab = Lab::start(config).await.context("starting the lab")?;
    println!("   lab up in {}", secs(lab.startup_time()));
    let mut spec = role_spec(&SHARED_V4.to_string());
    spec["flowHandoverWindowSeconds"] = WINDOW_SECONDS.into();
    lab.apply_sharedip(SIP, spec).await?;
    lab.wait_answers(shared(), Some(PRIMARY), BOUND).await?;
    for node in [PRIMARY, SECONDARY] {
        handover_net::serve(lab.node_ns(node)?, node)?;
    }
    let mut cfg = ProberConfig::new(SocketAddr::new(shared(), lab.config().port));
    cfg.interval = Duration::from_millis(args.interval_ms);
    let prober = Prober::start(lab.client_ns(), cfg).context("starting the prober")?;
    let mut rows = Vec::new();
    for k in 1..=args.runs {
        for f in Failure::ALL {
            let row = |event: &str, (open, survived, lost_probes)| Row {
                flow_handover: on,
                event: event.to_owned(),
                run: k,
                open,
                survived,
                lost_probes,
            };
            rows.push(row(f.mode(), event(&mut lab, &prober, f, true).await?));
            rows.push(row(
                f.failback_mode(),
                event(&mut lab, &prober, f, false).await?,
            ));
            // The windows of this move end before the next starts.
            tokio::time::sleep(Duration::from_secs(WINDOW_SECONDS)).await;
        }
    }
    prober.stop().await;
    Ok(rows)
}

/// One event (`fail`: the failure, else its repair) with connections open to the node
/// carrying the address: (open, survived, lost probes).
async fn event(
    lab: &mut Lab,
    prober: &Prober,
    f: Failure,
    fail: bool,
) -> Result<(usize, usize, usize)> {
    let (label, to) = if fail {
        (f.mode(), SECONDARY)
    } else {
        (f.failback_mode(), PRIMARY)
    };
    let talk = Talk::start(lab.client_ns(), IpAddr::V4(SHARED_V4), CHATS)?;
    let open = talk.connections();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mark = prober.mark(label);
    match (f, fail) {
        // The agent stops in the background: its connections are counted before it is gone.
        (Failure::Sigterm, true) => lab.sigterm_agent_nowait(PRIMARY)?,
        (_, true) => f.inflict(lab).await?,
        (_, false) => f.repair(lab).await?,
    }
    if !fail {
        lab.wait_sessions(BOUND).await?;
    }
    lab.wait_answers(shared(), Some(to), BOUND)
        .await
        .with_context(|| format!("{label}: {to} answers"))?;
    tokio::time::sleep(AFTER).await;
    let survived = tokio::task::spawn_blocking(move || talk.survivors()).await?;
    let lost = prober.snapshot().after(mark).lost();
    if matches!((f, fail), (Failure::Sigterm, true)) {
        lab.wait_agent(PRIMARY).await?;
    }
    println!("   {label}: {survived} of {open} connections survived, {lost} probes lost");
    Ok((open, survived, lost))
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:<40} {:>14} {:>14}",
        "event", "off: kept/open", "on: kept/open"
    );
    let events: Vec<&str> = rows
        .iter()
        .filter(|r| !r.flow_handover)
        .map(|r| r.event.as_str())
        .fold(Vec::new(), |mut v, e| {
            if !v.contains(&e) {
                v.push(e);
            }
            v
        });
    for e in events {
        let sum = |on: bool| {
            let of: Vec<&Row> = rows
                .iter()
                .filter(|r| r.flow_handover == on && r.event == e)
                .collect();
            let kept: usize = of.iter().map(|r| r.survived).sum();
            let open: usize = of.iter().map(|r| r.open).sum();
            let lost: usize = of.iter().map(|r| r.lost_probes).sum();
            format!("{kept}/{open} ({lost} lost)")
        };
        println!("{e:<40} {:>14} {:>14}", sum(false), sum(true));
    }
    println!("(connections alive after the event / open before it, summed over the runs; probes lost since the event)");
}
