//! BIRD 2 route server: one `protocol bgp` per node, an IPv6 IGP table with a
//! default route via the gateway so multihop next hops resolve recursively, and
//! `birdc` for reading state. BIRD reloads its configuration with `birdc configure`.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::daemon::Daemon;
use super::{
    poll, split_families, Flavor, IpPrefix, Mode, Origin, Peer, PeerStatus, ReceivedRoute,
    RouteServer, RouteServerError,
};

fn socket(rs: &RouteServer) -> PathBuf {
    rs.dir.path().join("bird.ctl")
}

/// Protocol name for a peer: stable per address so reconfiguration keeps sessions.
fn proto_name(p: &Peer) -> String {
    format!("n_{}", p.address.to_string().replace(':', "_"))
}

fn prefix_set(list: &[IpPrefix]) -> String {
    list.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn import_filter(out: &mut String, name: &str, allowed: Option<&[IpPrefix]>) {
    let _ = writeln!(out, "filter {name} {{");
    match allowed {
        None => out.push_str("  rs_pref(); accept;\n"),
        Some([]) => {}
        Some(list) => {
            let _ = writeln!(
                out,
                "  if net ~ [ {} ] then {{ rs_pref(); accept; }}",
                prefix_set(list)
            );
        }
    }
    out.push_str("  reject;\n}\n");
}

/// The configuration file.
pub(super) fn config(rs: &RouteServer) -> String {
    let c = &rs.config;
    let ((pa, pb), (pl1, pl2, pl3)) = c.primary;
    let ((sa, sb), (sl1, sl2, sl3)) = c.secondary;
    let mut out = String::new();
    let _ = writeln!(out, "log stderr all;\nrouter id {};", c.router_id);
    out.push_str("protocol device { scan time 10; }\n");
    // The IGP table BGP resolves multihop next hops in: without a route to the
    // nodes' subnet BIRD marks their routes unreachable.
    let _ = writeln!(
        out,
        "protocol static igp6 {{ ipv6; route ::/0 via {}; }}",
        c.gateway
    );
    let _ = writeln!(
        out,
        "function rs_pref() {{\n  \
         if ({pa},{pb}) ~ bgp_community || ({pl1},{pl2},{pl3}) ~ bgp_large_community then bgp_local_pref = 200;\n  \
         else if ({sa},{sb}) ~ bgp_community || ({sl1},{sl2},{sl3}) ~ bgp_large_community then bgp_local_pref = 100;\n  \
         else bgp_local_pref = 50;\n}}"
    );
    // `import keep filtered`: rejected routes stay in the table, hidden, so
    // [`RouteServer::received`] sees what a node announces without being allowed to.
    // `prefer older`: between equal routes from different nodes (both secondary, i.e.
    // failback off) keep the one already in use instead of breaking the tie by router id,
    // as Linode's route servers do ("same role on both nodes => no failback"; RFC 5004).
    for p in &c.peers {
        let name = proto_name(p);
        let split = split_families(&p.allowed);
        import_filter(
            &mut out,
            &format!("{name}_in4"),
            split.as_ref().map(|(v4, _)| v4.as_slice()),
        );
        import_filter(
            &mut out,
            &format!("{name}_in6"),
            split.as_ref().map(|(_, v6)| v6.as_slice()),
        );
        let _ = writeln!(
            out,
            "protocol bgp {name} {{\n  \
             local {local} as {asn};\n  \
             neighbor {peer} as {peer_as};\n  \
             multihop {ttl};\n  \
             passive {passive};\n  \
             hold time {hold};\n  \
             keepalive time {ka};\n  \
             connect retry time {retry};\n  \
             error wait time {retry}, {max};\n  \
             prefer older on;\n  \
             ipv4 {{ extended next hop on; import filter {name}_in4; import keep filtered on; export none; igp table master6; }};\n  \
             ipv6 {{ import filter {name}_in6; import keep filtered on; export none; }};\n}}",
            local = c.address,
            asn = c.asn,
            peer = p.address,
            peer_as = c.peer_asn,
            ttl = c.multihop_ttl,
            passive = if c.mode == Mode::Passive { "on" } else { "off" },
            hold = c.hold_time,
            ka = c.keepalive,
            retry = c.retry,
            max = c.retry.saturating_mul(5),
        );
    }
    out
}

pub(super) fn start(rs: &RouteServer) -> Result<Vec<Daemon>, RouteServerError> {
    let conf = rs.write("bird.conf", &config(rs))?;
    let sock = socket(rs);
    let _ = std::fs::remove_file(&sock);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &rs.netns, "bird", "-f", "-c"])
        .arg(&conf)
        .arg("-s")
        .arg(&sock);
    let mut daemon = Daemon::spawn("bird", cmd, rs.dir.path().join("bird.log"))?;
    let up = poll(Duration::from_secs(10), || {
        if !daemon.is_running() {
            return Some(false);
        }
        birdc(&sock, &["show", "status"]).ok().map(|_| true)
    });
    if up != Some(true) {
        return Err(RouteServerError::Start {
            flavor: Flavor::Bird,
            detail: daemon.log_tail(4000),
        });
    }
    Ok(vec![daemon])
}

fn birdc(sock: &std::path::Path, args: &[&str]) -> Result<String, RouteServerError> {
    let mut full = vec!["-s".to_owned(), sock.display().to_string()];
    full.extend(args.iter().map(|s| (*s).to_owned()));
    Ok(crate::netns::run("birdc", &full)?)
}

pub(super) fn reconfigure(rs: &RouteServer) -> Result<(), RouteServerError> {
    rs.write("bird.conf", &config(rs))?;
    let out = birdc(&socket(rs), &["configure"])?;
    if !out.contains("Reconfigured") && !out.contains("Reconfiguration in progress") {
        return Err(RouteServerError::parse(
            Flavor::Bird,
            "configure result",
            out.trim(),
        ));
    }
    // Filters changed: re-run them over what the peers sent (BIRD keeps no
    // Adj-RIB-In by default, so this asks the peers for a route refresh).
    for p in &rs.config.peers {
        let _ = birdc(&socket(rs), &["reload", "in", &proto_name(p)]);
    }
    Ok(())
}

pub(super) fn routes(rs: &RouteServer) -> Result<Vec<ReceivedRoute>, RouteServerError> {
    let text = birdc(&socket(rs), &["show", "route", "all"])?;
    Ok(parse_routes(&text, &rs.config.peers))
}

/// Accepted and rejected routes (kept hidden by `import keep filtered`).
pub(super) fn adj_rib_in(rs: &RouteServer) -> Result<Vec<(IpPrefix, IpAddr)>, RouteServerError> {
    let mut out = Vec::new();
    for args in [
        &["show", "route", "all"][..],
        &["show", "route", "all", "filtered"],
    ] {
        let text = birdc(&socket(rs), args)?;
        out.extend(
            parse_routes(&text, &rs.config.peers)
                .into_iter()
                .map(|r| (r.prefix, r.from)),
        );
    }
    Ok(out)
}

fn parse_routes(text: &str, peers: &[Peer]) -> Vec<ReceivedRoute> {
    let mut routes: Vec<ReceivedRoute> = Vec::new();
    let mut current_prefix: Option<IpPrefix> = None;
    for line in text.lines() {
        if line.starts_with("BIRD ") || line.starts_with("Table ") || line.trim().is_empty() {
            continue;
        }
        let starts_route = !line.starts_with(char::is_whitespace) || is_route_line(line.trim());
        if starts_route {
            let mut rest = line.trim_start();
            if !line.starts_with(char::is_whitespace) {
                let (first, tail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                current_prefix = first.parse().ok();
                rest = tail.trim_start();
            }
            let Some(prefix) = current_prefix else {
                continue;
            };
            let kind = rest.split_whitespace().next().unwrap_or("");
            let proto = rest
                .split_once('[')
                .and_then(|(_, r)| r.split_whitespace().next())
                .unwrap_or("");
            let from = peers
                .iter()
                .find(|p| proto_name(p) == proto)
                .map(|p| IpAddr::V6(p.address))
                .or_else(|| {
                    rest.split_once(" from ")
                        .and_then(|(_, r)| r.split(']').next())
                        .and_then(|a| a.trim().parse().ok())
                });
            let Some(from) = from else {
                // Not a BGP route (the static IGP route).
                current_prefix = Some(prefix);
                routes.push(placeholder(prefix));
                continue;
            };
            let mut r = placeholder(prefix);
            r.from = from;
            r.best = rest.contains("] *");
            r.valid = kind != "unreachable";
            routes.push(r);
            continue;
        }
        let Some(r) = routes.last_mut() else {
            continue;
        };
        let Some((key, value)) = line.trim().split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "BGP.origin" => r.origin = Origin::parse(value),
            "BGP.as_path" => {
                r.as_path = value
                    .split_whitespace()
                    .filter_map(|a| a.trim_matches(['{', '}', '(', ')']).parse().ok())
                    .collect()
            }
            "BGP.next_hop" => {
                r.next_hop = value
                    .split_whitespace()
                    .filter_map(|a| a.parse().ok())
                    .collect()
            }
            "BGP.local_pref" => r.local_pref = value.parse().ok(),
            "BGP.community" => {
                r.communities = parse_tuples(value, |t| match t[..] {
                    [a, b] => Some((u16::try_from(a).ok()?, u16::try_from(b).ok()?)),
                    _ => None,
                })
            }
            "BGP.large_community" => {
                r.large_communities = parse_tuples(value, |t| match t[..] {
                    [a, b, c] => Some((a, b, c)),
                    _ => None,
                })
            }
            _ => {}
        }
    }
    // Drop the placeholders of non-BGP routes.
    routes.retain(|r| !r.from.is_unspecified());
    routes
}

fn is_route_line(trimmed: &str) -> bool {
    let kind = trimmed.split_whitespace().next().unwrap_or("");
    matches!(
        kind,
        "unicast" | "unreachable" | "blackhole" | "prohibited" | "multipath"
    ) && trimmed.contains('[')
}

fn placeholder(prefix: IpPrefix) -> ReceivedRoute {
    ReceivedRoute {
        prefix,
        from: IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        next_hop: Vec::new(),
        origin: None,
        as_path: Vec::new(),
        communities: Vec::new(),
        large_communities: Vec::new(),
        local_pref: None,
        best: false,
        valid: false,
    }
}

/// `(65000,1) (65000,2)` or `(63949, 1, 1)` → tuples.
fn parse_tuples<T>(value: &str, mut f: impl FnMut(Vec<u32>) -> Option<T>) -> Vec<T> {
    value
        .split(')')
        .filter_map(|chunk| {
            let inner = chunk.trim().strip_prefix('(')?;
            let nums: Option<Vec<u32>> = inner.split(',').map(|n| n.trim().parse().ok()).collect();
            f(nums?)
        })
        .collect()
}

pub(super) fn peers(rs: &RouteServer) -> Result<Vec<PeerStatus>, RouteServerError> {
    let text = birdc(&socket(rs), &["show", "protocols", "all"])?;
    Ok(parse_protocols(&text, &rs.config.peers))
}

pub(super) fn withdrawals_received(
    rs: &RouteServer,
    peer: std::net::Ipv6Addr,
) -> Result<u64, RouteServerError> {
    let name = proto_name(&Peer::any(peer));
    let text = birdc(&socket(rs), &["show", "protocols", "all", &name])?;
    parse_withdrawals(&text)
        .ok_or_else(|| RouteServerError::parse(Flavor::Bird, "import withdraws", text))
}

/// The sum of the "received" column of the channels' `Import withdraws:` lines.
fn parse_withdrawals(text: &str) -> Option<u64> {
    let counts: Vec<u64> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Import withdraws:"))
        .map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect::<Option<_>>()?;
    (!counts.is_empty()).then(|| counts.iter().sum())
}

fn parse_protocols(text: &str, peers: &[Peer]) -> Vec<PeerStatus> {
    let mut out = Vec::new();
    let mut current: Option<PeerStatus> = None;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) && !line.trim().is_empty() {
            out.extend(current.take());
            let name = line.split_whitespace().next().unwrap_or("");
            if let Some(p) = peers.iter().find(|p| proto_name(p) == name) {
                let cols: Vec<&str> = line.split_whitespace().collect();
                // Name Proto Table State Since Info…
                let info = cols.get(5..).map(|c| c.join(" ")).unwrap_or_default();
                current = Some(PeerStatus {
                    address: IpAddr::V6(p.address),
                    established: false,
                    state: info.split_whitespace().next().unwrap_or("").to_owned(),
                    last_error: None,
                });
            }
            continue;
        }
        let Some(st) = current.as_mut() else {
            continue;
        };
        let Some((key, value)) = line.trim().split_once(':') else {
            continue;
        };
        match key {
            "BGP state" => {
                st.state = value.trim().to_owned();
                st.established = st.state == "Established";
            }
            "Last error" => st.last_error = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    out.extend(current);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &str = "BIRD 2.0.12 ready.
Table master4:
192.0.2.10/32        unicast [n_2001_db8_1__10 10:11:12.345 from 2001:db8:1::10] * (100/?) [AS65001?]
\tvia 2001:db8:1:34::ff on eth0
\tType: BGP univ
\tBGP.origin: Incomplete
\tBGP.as_path: 65001
\tBGP.next_hop: 2001:db8:1::10
\tBGP.local_pref: 200
\tBGP.community: (65000,1) (65000,7)
\tBGP.large_community: (63949, 1, 1)
                     unreachable [n_2001_db8_1__11 10:11:12.345 from 2001:db8:1::11] (100/-) [AS65001?]
\tType: BGP univ
\tBGP.origin: IGP
\tBGP.as_path: 65001
\tBGP.next_hop: 2001:db8:1::11
\tBGP.local_pref: 100

Table master6:
::/0                 unicast [igp6 10:11:12.345] * (200)
\tvia 2001:db8:1:34::ff on eth0
\tType: static univ
";

    #[test]
    fn parses_import_withdraws() {
        let text = "n_2001_db8_1__10 BGP        ---        up     10:11:12.345  Established
  BGP state:          Established
  Channel ipv4
    Route change stats:     received   rejected   filtered    ignored   accepted
      Import updates:              2          0          0          0          2
      Import withdraws:            1          0        ---          0          1
  Channel ipv6
    Route change stats:     received   rejected   filtered    ignored   accepted
      Import updates:              1          0          0          0          1
      Import withdraws:            3          0        ---          0          3
";
        assert_eq!(parse_withdrawals(text), Some(4));
        assert_eq!(parse_withdrawals("n_x BGP --- down"), None);
    }

    #[test]
    fn parses_show_route_all() {
        let peers = vec![
            Peer::any("2001:db8:1::10".parse().unwrap()),
            Peer::any("2001:db8:1::11".parse().unwrap()),
        ];
        let routes = parse_routes(ROUTES, &peers);
        assert_eq!(routes.len(), 2, "{routes:#?}");
        let r = &routes[0];
        assert_eq!(r.prefix.to_string(), "192.0.2.10/32");
        assert_eq!(r.from.to_string(), "2001:db8:1::10");
        assert!(r.best && r.valid);
        assert_eq!(r.origin, Some(Origin::Incomplete));
        assert_eq!(r.as_path, vec![65001]);
        assert_eq!(r.next_hop[0].to_string(), "2001:db8:1::10");
        assert_eq!(r.local_pref, Some(200));
        assert_eq!(r.communities, vec![(65000, 1), (65000, 7)]);
        assert_eq!(r.large_communities, vec![(63949, 1, 1)]);
        let r = &routes[1];
        assert_eq!(r.prefix.to_string(), "192.0.2.10/32");
        assert_eq!(r.from.to_string(), "2001:db8:1::11");
        assert!(!r.best && !r.valid);
        assert_eq!(r.origin, Some(Origin::Igp));
    }

    #[test]
    fn parses_show_route_all_filtered() {
        // BIRD 2.0.12 `show route all filtered`: the route of a node whose address is not
        // shared with its Linode, kept hidden by `import keep filtered`.
        let text = "BIRD 2.0.12 ready.
Table master4:
192.0.2.10/32        unicast [n_2001_db8_1__11 00:24:01.197 from 2001:db8:1::11] (100/?) [AS65001?]
\tvia 2001:db8:1:34::ff on eth0
\tType: BGP univ
\tBGP.origin: Incomplete
\tBGP.as_path: 65001
\tBGP.next_hop: 2001:db8:1::11
\tBGP.local_pref: 100
\tBGP.community: (65000,2)
";
        let peers = vec![Peer::any("2001:db8:1::11".parse().unwrap())];
        let routes = parse_routes(text, &peers);
        assert_eq!(routes.len(), 1, "{routes:#?}");
        assert_eq!(routes[0].prefix.to_string(), "192.0.2.10/32");
        assert_eq!(routes[0].from.to_string(), "2001:db8:1::11");
    }

    #[test]
    fn config_has_one_protocol_per_peer_with_filters() {
        let dir = tempfile::tempdir().unwrap();
        let rs = RouteServer {
            config: super::super::RouteServerConfig::linode(
                Flavor::Bird,
                "2001:db8:1:34::1".parse().unwrap(),
                "2001:db8:1:34::ff".parse().unwrap(),
                "192.0.2.101".parse().unwrap(),
                vec![
                    Peer {
                        address: "2001:db8:1::10".parse().unwrap(),
                        allowed: Some(vec![
                            "192.0.2.10/32".parse().unwrap(),
                            "2001:db8:1:200::/56".parse().unwrap(),
                        ]),
                    },
                    Peer {
                        address: "2001:db8:1::11".parse().unwrap(),
                        allowed: Some(vec![]),
                    },
                ],
            ),
            netns: "x".into(),
            dir,
            daemons: vec![],
        };
        let c = config(&rs);
        assert!(c.contains("protocol bgp n_2001_db8_1__10 {"), "{c}");
        assert!(c.contains("if net ~ [ 192.0.2.10/32 ] then"), "{c}");
        assert!(c.contains("if net ~ [ 2001:db8:1:200::/56 ] then"), "{c}");
        assert!(
            c.contains("filter n_2001_db8_1__11_in4 {\n  reject;\n}"),
            "{c}"
        );
        assert!(c.contains("passive on;"), "{c}");
        assert!(c.contains("import keep filtered on;"), "{c}");
    }
}
