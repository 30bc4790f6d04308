//! `--suite services`: LoadBalancer Services, whose traffic kube-proxy carries to pods.
//!
//! One lab with kube-proxy on both nodes, a pod on each, the operators' Service controller on,
//! and a client probing the Service's address (and, for comparison, a SharedIP's), measuring:
//! (i) Service created → EXTERNAL-IP set → first probe answered through kube-proxy, and when
//! the generated SharedIP was shared and its address announced (`--apply-runs` times);
//! (ii) lost probes during a rolling update of an `externalTrafficPolicy: Local` Service (a
//! new pod ready, the old one terminating but serving, then gone; `--runs` times);
//! (iii) failover and failback (agent SIGTERM, link cut; `--runs` times) of a `Cluster`
//! Service with primary and secondary nodes, beside the same for a SharedIP in the same lab.
//!
//! Targets: (ii) 0 lost; (iii) as for a SharedIP (docs/ARCHITECTURE.md). Timings are
//! printed, never judged pass or fail. During a link cut the pod on the cut node is cut off
//! too, and the lab has no kubelet to take its endpoint out, so kube-proxy keeps sending it
//! part of the Service's traffic: compare the longest outage, not the failed probes in all.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::Service;
use serde::Serialize;
use sharedip_e2e::lab::cluster::{eventually, BOUND, ROLE_LABEL, SHARED_V4, SPARE_V4};
use sharedip_e2e::lab::report::{write_json, BenchmarkReport, Metric, ModeResult, RunResult};
use sharedip_e2e::lab::services::{
    generated_name, ingress_of, ADDRESS_ANNOTATION, PRIMARY_NODES_ANNOTATION,
    SECONDARY_NODES_ANNOTATION,
};
use sharedip_e2e::lab::traffic::{Prober, ProberConfig};
use sharedip_e2e::lab::{load_balancer_service, role_spec, Lab, LabConfig, PodEndpoint, POD_PORT};

use super::{loadavg, ms, secs, stats_text, Args, Failure, Machine, PRIMARY, SECONDARY, SETTLE};

/// The Services' namespace and the Service.
const NS: &str = "bench";
const SVC: &str = "echo";
/// The SharedIP measured beside the Service.
const SIP: &str = "bench-sip";
/// The pods, one per node.
const POD_A: &str = "echo-a";
const POD_B: &str = "echo-b";
/// The failures measured for both.
const FAILURES: [Failure; 2] = [Failure::Sigterm, Failure::LinkCut];

/// (i): one Service created.
#[derive(Debug, Clone, Serialize)]
struct CreateRun {
    /// Created → `status.loadBalancer.ingress` set.
    external_ip_ms: f64,
    /// Created → the first probe a pod answered (by send time).
    answered_ms: f64,
    /// Created → the generated SharedIP's condition Shared=True, as polled.
    shared_ms: Option<f64>,
    /// Created → the router has a route for the address (announced and accepted).
    announced_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
struct ServicesJson<'a> {
    suite: &'static str,
    machine: Machine,
    profile: &'a str,
    interval_ms: u64,
    runs: u32,
    agents_hold_time_s: u16,
    lab_startup_s: f64,
    #[serde(flatten)]
    report: &'a BenchmarkReport,
    create: &'a [CreateRun],
    rolling_update_lost: &'a [usize],
}

/// What is measured in (iii): the Service's address or the SharedIP's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Service,
    SharedIp,
}

impl Target {
    fn ip(self) -> IpAddr {
        match self {
            Target::Service => IpAddr::V4(SHARED_V4),
            Target::SharedIp => IpAddr::V4(SPARE_V4),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Target::Service => "Service",
            Target::SharedIp => "SharedIP",
        }
    }

    /// Whether `answer` is what a client of this target should get with `node` serving.
    fn serves(self, answer: Option<&str>, node: &str) -> bool {
        match self {
            // kube-proxy picks any pod with Cluster: which one says nothing about the node.
            Target::Service => answer.is_some_and(|a| a == POD_A || a == POD_B),
            Target::SharedIp => answer == Some(node),
        }
    }
}

fn prober(lab: &Lab, ip: IpAddr, interval: Duration) -> Result<Prober> {
    let mut cfg = ProberConfig::new(SocketAddr::new(ip, lab.config().port));
    cfg.interval = interval;
    Prober::start(lab.client_ns(), cfg).context("starting a prober")
}

fn router_at(lab: &Lab, ip: IpAddr) -> Option<Option<String>> {
    lab.router_routes()
        .into_iter()
        .find(|(p, _)| p.addr == ip)
        .map(|(_, via)| via)
}

/// Waits until the router sends `target`'s address to `node` and three probes in a row get
/// the answer `target` should get.
async fn wait_served(lab: &Lab, target: Target, node: &str) -> Result<()> {
    let ip = target.ip();
    eventually(&format!("{ip} routed to {node}"), BOUND, || async {
        match router_at(lab, ip) {
            Some(Some(n)) if n == node => Ok(()),
            other => Err(format!("router: {other:?}")),
        }
    })
    .await?;
    let streak = std::sync::atomic::AtomicUsize::new(0);
    eventually(&format!("{ip} answered through {node}"), BOUND, || {
        let streak = &streak;
        async move {
            use std::sync::atomic::Ordering;
            let got = lab.who_answers(ip).await;
            if target.serves(got.as_deref(), node) {
                if streak.fetch_add(1, Ordering::Relaxed) >= 2 {
                    return Ok(());
                }
            } else {
                streak.store(0, Ordering::Relaxed);
            }
            Err(format!("answered by {got:?}"))
        }
    })
    .await?;
    Ok(())
}

fn the_service(annotations: &[(&str, &str)], policy: &str) -> Service {
    let mut svc = load_balancer_service(SVC, 80, POD_PORT);
    let map = svc.metadata.annotations.get_or_insert_with(BTreeMap::new);
    for (k, v) in annotations {
        map.insert((*k).to_owned(), (*v).to_owned());
    }
    if let Some(spec) = svc.spec.as_mut() {
        spec.external_traffic_policy = Some(policy.to_owned());
    }
    svc
}

/// The Cluster Service of (i) and (iii): 192.0.2.10, node-a primary, node-b secondary.
fn failover_service() -> Service {
    let primary = format!("{ROLE_LABEL}=primary");
    let secondary = format!("{ROLE_LABEL}=secondary");
    the_service(
        &[
            (ADDRESS_ANNOTATION, &SHARED_V4.to_string()),
            (PRIMARY_NODES_ANNOTATION, &primary),
            (SECONDARY_NODES_ANNOTATION, &secondary),
        ],
        "Cluster",
    )
}

async fn set_endpoints(lab: &Lab, endpoints: &[PodEndpoint]) -> Result<()> {
    lab.set_endpoints(NS, SVC, endpoints, "http", POD_PORT)
        .await?;
    Ok(())
}

/// Deletes the Service and its endpoints and waits until nothing of it is left.
async fn delete_service(lab: &Lab) -> Result<()> {
    lab.delete_service(NS, SVC).await?;
    eventually("the Service and its SharedIP gone", BOUND, || async {
        if lab
            .service(NS, SVC)
            .await
            .map_err(|e| e.to_string())?
            .is_some()
        {
            return Err("the Service is still there".to_owned());
        }
        let left = lab.generated_sharedips().await.map_err(|e| e.to_string())?;
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{} generated SharedIPs left", left.len()))
        }
    })
    .await?;
    lab.delete_endpoints(NS, SVC).await?;
    lab.wait_no_leaks(BOUND).await?;
    Ok(())
}

fn is_shared(sip: &sharedip_api::SharedIP) -> bool {
    sip.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == sharedip_api::conditions::SHARED && c.status == "True")
    })
}

/// (i) once: creates the failover Service (its endpoints already published) and polls until
/// it shows an EXTERNAL-IP and a pod answered a probe.
async fn measure_create(lab: &Lab, prober: &Prober, k: u32) -> Result<CreateRun> {
    set_endpoints(
        lab,
        &[
            PodEndpoint::ready(POD_A, PRIMARY),
            PodEndpoint::ready(POD_B, SECONDARY),
        ],
    )
    .await?;
    let mark = prober.mark(&format!("Service created #{k}"));
    let begun = Instant::now();
    lab.apply_service(NS, &failover_service()).await?;
    let ip = Target::Service.ip();
    let (mut external, mut answered, mut shared, mut announced) = (None, None, None, None);
    let mut sip_name = None;
    while external.is_none() || answered.is_none() {
        if begun.elapsed() > BOUND {
            bail!("Service #{k}: no EXTERNAL-IP and answer within {BOUND:?}");
        }
        let svc = lab.service(NS, SVC).await?;
        if sip_name.is_none() {
            sip_name = svc
                .as_ref()
                .and_then(|s| s.metadata.uid.as_deref())
                .map(generated_name);
        }
        if external.is_none() && svc.as_ref().is_some_and(|s| !ingress_of(s).is_empty()) {
            external = Some(begun.elapsed());
        }
        if shared.is_none() {
            if let Some(name) = &sip_name {
                if lab.sharedip(name).await?.as_ref().is_some_and(is_shared) {
                    shared = Some(begun.elapsed());
                }
            }
        }
        if announced.is_none() && router_at(lab, ip).is_some() {
            announced = Some(begun.elapsed());
        }
        if answered.is_none() {
            answered = prober
                .snapshot()
                .samples
                .iter()
                .find(|s| s.sent_at >= mark && !s.outcome.failed())
                .map(|s| s.sent_at - mark);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (external, answered) = (external.unwrap_or_default(), answered.unwrap_or_default());
    let opt = |d: Option<Duration>| d.map_or("-".to_owned(), secs);
    println!(
        "   #{k}: EXTERNAL-IP after {}, first answer after {}; shared after {}, announced after {}",
        secs(external),
        secs(answered),
        opt(shared),
        opt(announced)
    );
    Ok(CreateRun {
        external_ip_ms: ms(external),
        answered_ms: ms(answered),
        shared_ms: shared.map(ms),
        announced_ms: announced.map(ms),
    })
}

/// (ii) once: the Local Service's pod moves from `from` to `to` as a rolling update moves it;
/// the lost probes from the new pod's readiness until the old one is gone.
async fn rolling_update(
    lab: &Lab,
    prober: &Prober,
    (old_pod, old_node): (&str, &str),
    (new_pod, new_node): (&str, &str),
) -> Result<usize> {
    let sip = generated_name(
        &lab.service(NS, SVC)
            .await?
            .and_then(|s| s.metadata.uid)
            .context("the Service has no uid")?,
    );
    let gate = |ready: Vec<&'static str>, terminating: Vec<&'static str>| {
        let sip = sip.clone();
        async move {
            eventually(
                &format!("gate {ready:?} {terminating:?}"),
                BOUND,
                || async {
                    let g = lab
                        .sharedip(&sip)
                        .await
                        .map_err(|e| e.to_string())?
                        .and_then(|s| s.spec.endpoint_gate)
                        .ok_or("no gate")?;
                    if g.ready == ready && g.terminating == terminating {
                        Ok(())
                    } else {
                        Err(format!("{g:?}"))
                    }
                },
            )
            .await
        }
    };
    let old = PodEndpoint::ready(old_pod, old_node);
    let new = PodEndpoint::ready(new_pod, new_node);
    lab.wait_answers(Target::Service.ip(), Some(old_pod), BOUND)
        .await?;
    tokio::time::sleep(SETTLE).await;
    let start = prober.mark(&format!("{new_pod} ready"));
    set_endpoints(lab, &[old.clone(), new.clone()]).await?;
    let mut both = vec![static_node(old_node), static_node(new_node)];
    both.sort_unstable();
    gate(both, vec![]).await?;
    set_endpoints(
        lab,
        &[
            PodEndpoint::terminating(old_pod, old_node, true),
            new.clone(),
        ],
    )
    .await?;
    gate(vec![static_node(new_node)], vec![static_node(old_node)]).await?;
    lab.wait_answers(Target::Service.ip(), Some(new_pod), BOUND)
        .await?;
    set_endpoints(lab, std::slice::from_ref(&new)).await?;
    gate(vec![static_node(new_node)], vec![]).await?;
    tokio::time::sleep(SETTLE).await;
    let end = prober.mark(&format!("{old_pod} gone"));
    let lost = prober.snapshot().between(start, end).lost();
    println!("   {old_pod} -> {new_pod}: lost {lost}");
    Ok(lost)
}

fn static_node(node: &str) -> &'static str {
    if node == PRIMARY {
        PRIMARY
    } else {
        SECONDARY
    }
}

/// (iii) once: a failure of the primary and its repair; the probe log windows
/// `[fail, back)` and `[back, end)`.
async fn episode(
    lab: &mut Lab,
    prober: &Prober,
    target: Target,
    f: Failure,
    k: u32,
) -> Result<(RunResult, RunResult)> {
    lab.wait_sessions(BOUND).await?;
    wait_served(lab, target, PRIMARY).await?;
    tokio::time::sleep(SETTLE).await;
    let fail = prober.mark(&format!("{}: {} #{k}", target.label(), f.mode()));
    f.inflict(lab).await?;
    wait_served(lab, target, SECONDARY).await?;
    tokio::time::sleep(SETTLE).await;
    let back = prober.mark(&format!("{}: {} #{k}", target.label(), f.failback_mode()));
    f.repair(lab).await?;
    lab.wait_sessions(BOUND).await?;
    wait_served(lab, target, PRIMARY).await?;
    tokio::time::sleep(SETTLE).await;
    let log = prober.snapshot();
    let over = RunResult::from_log(&log.between(fail, back));
    let again = RunResult::from_log(&log.after(back));
    println!(
        "   {} {} #{k}: failover: outage {} ({} lost; {} failed in all); failback: outage {} ({} lost; {} in all)",
        target.label(),
        f.mode(),
        secs(over.outage),
        over.lost,
        over.lost_total,
        secs(again.outage),
        again.lost,
        again.lost_total
    );
    Ok((over, again))
}

pub(super) async fn run(args: Args, out: &Path) -> Result<()> {
    let machine_start = loadavg();
    let interval = Duration::from_millis(args.interval_ms);
    println!(
        "== starting the lab: 2 nodes with kube-proxy and a pod each, the Service controller on"
    );
    let config = LabConfig {
        kube_proxy: true,
        ..args.lab_config()
    };
    let mut lab = Lab::start(config).await.context("starting the lab")?;
    println!("   lab up in {}", secs(lab.startup_time()));
    lab.create_namespace(NS).await?;
    lab.add_pod(PRIMARY, POD_A)?;
    lab.add_pod(SECONDARY, POD_B)?;
    let svc_prober = prober(&lab, Target::Service.ip(), interval)?;

    println!(
        "== (i) Service created -> EXTERNAL-IP -> first answer through kube-proxy ({} times)",
        args.apply_runs
    );
    let mut creates = Vec::new();
    for k in 1..=args.apply_runs {
        creates.push(measure_create(&lab, &svc_prober, k).await?);
        delete_service(&lab).await?;
        tokio::time::sleep(SETTLE).await;
    }

    println!(
        "== (ii) rolling update of a Local Service ({} times, alternating nodes)",
        args.runs
    );
    let local = the_service(&[(ADDRESS_ANNOTATION, &SHARED_V4.to_string())], "Local");
    set_endpoints(&lab, &[PodEndpoint::ready(POD_A, PRIMARY)]).await?;
    lab.apply_service(NS, &local).await?;
    let mut rolling = Vec::new();
    for k in 0..args.runs {
        let (a, b) = ((POD_A, PRIMARY), (POD_B, SECONDARY));
        let (from, to) = if k % 2 == 0 { (a, b) } else { (b, a) };
        rolling.push(rolling_update(&lab, &svc_prober, from, to).await?);
    }
    delete_service(&lab).await?;

    println!("== (iii) failover and failback: a Cluster Service, then a SharedIP");
    set_endpoints(
        &lab,
        &[
            PodEndpoint::ready(POD_A, PRIMARY),
            PodEndpoint::ready(POD_B, SECONDARY),
        ],
    )
    .await?;
    lab.apply_service(NS, &failover_service()).await?;
    let mut episodes: Vec<(Target, Failure, RunResult, RunResult)> = Vec::new();
    for k in 1..=args.runs {
        for f in FAILURES {
            let (over, back) = episode(&mut lab, &svc_prober, Target::Service, f, k).await?;
            episodes.push((Target::Service, f, over, back));
        }
    }
    delete_service(&lab).await?;
    svc_prober.stop().await;
    let sip_prober = prober(&lab, Target::SharedIp.ip(), interval)?;
    lab.apply_sharedip(SIP, role_spec(&SPARE_V4.to_string()))
        .await?;
    for k in 1..=args.runs {
        for f in FAILURES {
            let (over, back) = episode(&mut lab, &sip_prober, Target::SharedIp, f, k).await?;
            episodes.push((Target::SharedIp, f, over, back));
        }
    }
    lab.delete_sharedip(SIP).await?;
    lab.wait_no_leaks(BOUND).await?;
    sip_prober.stop().await;
    for pod in [POD_A, POD_B] {
        lab.remove_pod(pod)?;
    }

    let mut report = BenchmarkReport::default();
    for f in FAILURES {
        for failback in [false, true] {
            for target in [Target::Service, Target::SharedIp] {
                let runs = episodes
                    .iter()
                    .filter(|(t, g, _, _)| *t == target && *g == f)
                    .map(|(_, _, over, back)| if failback { back } else { over }.clone())
                    .collect();
                let (mode, target_text) = if failback {
                    (f.failback_mode(), "0 lost".to_owned())
                } else if f.planned() {
                    (f.mode(), "0 lost".to_owned())
                } else {
                    (
                        f.mode(),
                        format!("outage <= hold {} s + 0.5 s", args.hold_time),
                    )
                };
                report.modes.push(ModeResult {
                    mode: format!("{}: {mode}", target.label()),
                    target: target_text,
                    interval,
                    runs,
                });
            }
        }
    }
    let dur = |pick: fn(&CreateRun) -> Option<f64>| -> Vec<Duration> {
        creates
            .iter()
            .filter_map(pick)
            .map(|v| Duration::from_secs_f64(v / 1e3))
            .collect()
    };
    let signed = |pick: fn(&CreateRun) -> Option<f64>| -> String {
        let v: Vec<String> = creates
            .iter()
            .filter_map(|c| Some(format!("{:+.3}", (c.external_ip_ms - pick(c)?) / 1e3)))
            .collect();
        if v.is_empty() {
            "-".to_owned()
        } else {
            format!("{} s", v.join(", "))
        }
    };
    for (name, value) in [
        (
            "Service created -> EXTERNAL-IP set (min/med/max)",
            stats_text(&dur(|c| Some(c.external_ip_ms))),
        ),
        (
            "Service created -> first probe answered via kube-proxy (min/med/max)",
            stats_text(&dur(|c| Some(c.answered_ms))),
        ),
        (
            "Service created -> its SharedIP Shared (min/med/max)",
            stats_text(&dur(|c| c.shared_ms)),
        ),
        (
            "Service created -> address routed by the router (min/med/max)",
            stats_text(&dur(|c| c.announced_ms)),
        ),
        (
            "EXTERNAL-IP minus SharedIP Shared, per run",
            signed(|c| c.shared_ms),
        ),
        (
            "EXTERNAL-IP minus address routed, per run",
            signed(|c| c.announced_ms),
        ),
    ] {
        report.metrics.push(Metric {
            name: name.into(),
            value,
            target: "(information)".into(),
        });
    }
    report.metrics.push(Metric {
        name: "Local rolling update: lost probes per run".into(),
        value: format!("{rolling:?}"),
        target: "0".into(),
    });

    let machine = Machine::since(machine_start);
    let json_path = out.join("bench.json");
    write_json(
        &json_path,
        &ServicesJson {
            suite: "services",
            machine: machine.clone(),
            profile: &args.profile,
            interval_ms: args.interval_ms,
            runs: args.runs,
            agents_hold_time_s: args.hold_time,
            lab_startup_s: lab.startup_time().as_secs_f64(),
            report: &report,
            create: &creates,
            rolling_update_lost: &rolling,
        },
    )?;
    println!(
        "\n== results: LoadBalancer Services, {} runs, a probe every {} ms, builds: {}, {} CPUs, load {} -> {}\n",
        args.runs,
        args.interval_ms,
        args.profile,
        machine.cpus,
        machine.loadavg_start,
        machine.loadavg_end
    );
    println!("lost = failed probes in the run's window; outage = longest run of failed probes\n");
    print!("{}", report.table());
    println!("\nJSON: {}", json_path.display());
    drop(lab);
    Ok(())
}
