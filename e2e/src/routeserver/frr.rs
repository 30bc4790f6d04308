//! FRR route server: `bgpd` alone (`-Z`: no zebra, so next hops count as reachable
//! and nothing is installed in the kernel; `-S`: stays root, so the private working
//! directory works), configured with route-maps per peer and read with
//! `vtysh -c 'show bgp … json'`. Live changes go through `vtysh -c`.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::daemon::Daemon;
use super::{
    poll, split_families, Flavor, IpPrefix, Mode, Origin, Peer, PeerStatus, ReceivedRoute,
    RouteServer, RouteServerError,
};

fn peer_name(p: &Peer) -> String {
    format!("n_{}", p.address.to_string().replace(':', "_"))
}

/// Prefix lists and route-maps of one peer (global configuration commands).
fn peer_policy(p: &Peer) -> Vec<String> {
    let name = peer_name(p);
    let mut out = Vec::new();
    let split = split_families(&p.allowed);
    for (fam, ip, list) in [
        ("4", "ip", split.as_ref().map(|s| &s.0)),
        ("6", "ipv6", split.as_ref().map(|s| &s.1)),
    ] {
        let rm = format!("{name}-in{fam}");
        let pl = format!("{name}-v{fam}");
        if let Some(list) = list {
            if list.is_empty() {
                out.push(format!("route-map {rm} deny 5"));
                continue;
            }
            for (i, prefix) in list.iter().enumerate() {
                out.push(format!(
                    "{ip} prefix-list {pl} seq {} permit {prefix}",
                    (i + 1) * 5
                ));
            }
        }
        // The community lists are global (see `config`).
        for (seq, matcher, pref) in [
            (10, "community rs-primary", 200),
            (11, "large-community rs-primary-large", 200),
            (20, "community rs-secondary", 100),
            (21, "large-community rs-secondary-large", 100),
            (30, "", 50),
        ] {
            out.push(format!("route-map {rm} permit {seq}"));
            if list.is_some() {
                out.push(format!(" match {ip} address prefix-list {pl}"));
            }
            if !matcher.is_empty() {
                out.push(format!(" match {matcher}"));
            }
            out.push(format!(" set local-preference {pref}"));
        }
    }
    out
}

fn remove_peer_policy(p: &Peer) -> Vec<String> {
    let name = peer_name(p);
    vec![
        format!("no route-map {name}-in4"),
        format!("no route-map {name}-in6"),
        format!("no ip prefix-list {name}-v4"),
        format!("no ipv6 prefix-list {name}-v6"),
    ]
}

/// `router bgp` lines for one peer.
fn peer_neighbor(rs: &RouteServer, p: &Peer) -> Vec<String> {
    let c = &rs.config;
    let a = p.address;
    let name = peer_name(p);
    let mut out = vec![
        format!(" neighbor {a} remote-as {}", c.peer_asn),
        format!(" neighbor {a} update-source {}", c.address),
        format!(" neighbor {a} ebgp-multihop {}", c.multihop_ttl),
        format!(" neighbor {a} timers {} {}", c.keepalive, c.hold_time),
        format!(" neighbor {a} timers connect {}", c.retry),
        format!(" neighbor {a} capability extended-nexthop"),
    ];
    if c.mode == Mode::Passive {
        out.push(format!(" neighbor {a} passive"));
    }
    for (af, fam) in [("ipv4", "4"), ("ipv6", "6")] {
        out.push(format!(" address-family {af} unicast"));
        out.push(format!("  neighbor {a} activate"));
        out.push(format!("  neighbor {a} route-map {name}-in{fam} in"));
        // Keeps the Adj-RIB-In, so `received-routes` shows what the route-map rejected.
        out.push(format!("  neighbor {a} soft-reconfiguration inbound"));
        out.push(format!("  neighbor {a} route-map rs-deny-all out"));
        out.push(" exit-address-family".to_owned());
    }
    out
}

/// The bgpd configuration file.
pub(super) fn config(rs: &RouteServer) -> String {
    let c = &rs.config;
    let ((pa, pb), (pl1, pl2, pl3)) = c.primary;
    let ((sa, sb), (sl1, sl2, sl3)) = c.secondary;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "frr defaults traditional\nhostname rs\nlog stdout informational\n!\n\
         bgp community-list standard rs-primary seq 5 permit {pa}:{pb}\n\
         bgp community-list standard rs-secondary seq 5 permit {sa}:{sb}\n\
         bgp large-community-list standard rs-primary-large seq 5 permit {pl1}:{pl2}:{pl3}\n\
         bgp large-community-list standard rs-secondary-large seq 5 permit {sl1}:{sl2}:{sl3}\n\
         route-map rs-deny-all deny 10"
    );
    for p in &c.peers {
        for line in peer_policy(p) {
            let _ = writeln!(out, "{line}");
        }
    }
    // Without `compare-routerid` FRR keeps the older of equal eBGP paths, so a node that
    // comes back with the same role does not take the address over (failback off), as on
    // Linode; said explicitly so no defaults profile can turn it on.
    let _ = writeln!(
        out,
        "!\nrouter bgp {}\n bgp router-id {}\n no bgp ebgp-requires-policy\n no bgp default ipv4-unicast\n bgp route-map delay-timer 0\n no bgp bestpath compare-routerid",
        c.asn, c.router_id
    );
    for p in &c.peers {
        for line in peer_neighbor(rs, p) {
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

pub(super) fn start(rs: &RouteServer) -> Result<Vec<Daemon>, RouteServerError> {
    let conf = rs.write("bgpd.conf", &config(rs))?;
    let dir = rs.dir.path();
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &rs.netns,
        "/usr/lib/frr/bgpd",
        "-Z",
        "-n",
        "-S",
    ])
    .args(["-P", "0", "-f"])
    .arg(&conf)
    .arg("--vty_socket")
    .arg(dir)
    .arg("-i")
    .arg(dir.join("bgpd.pid"));
    let mut daemon = Daemon::spawn("bgpd", cmd, dir.join("bgpd.log"))?;
    let up = poll(Duration::from_secs(15), || {
        if !daemon.is_running() {
            return Some(false);
        }
        vtysh(rs, &["show bgp summary json"]).ok().map(|_| true)
    });
    if up != Some(true) {
        return Err(RouteServerError::Start {
            flavor: Flavor::Frr,
            detail: daemon.log_tail(4000),
        });
    }
    Ok(vec![daemon])
}

fn vtysh(rs: &RouteServer, commands: &[&str]) -> Result<String, RouteServerError> {
    let mut args = vec![
        "--vty_socket".to_owned(),
        rs.dir.path().display().to_string(),
        "-d".to_owned(),
        "bgpd".to_owned(),
    ];
    for c in commands {
        args.push("-c".to_owned());
        args.push((*c).to_owned());
    }
    let out = crate::netns::run("vtysh", &args)?;
    // vtysh reports command errors on stdout with exit status 0 in some versions.
    if out.starts_with("% ") {
        return Err(RouteServerError::parse(
            Flavor::Frr,
            "vtysh output",
            out.trim(),
        ));
    }
    Ok(out)
}

pub(super) fn reconfigure(rs: &RouteServer, old: &[Peer]) -> Result<(), RouteServerError> {
    rs.write("bgpd.conf", &config(rs))?;
    let c = &rs.config;
    let mut cmds = vec!["configure terminal".to_owned()];
    for p in old {
        cmds.extend(remove_peer_policy(p));
    }
    for p in &c.peers {
        cmds.extend(peer_policy(p));
    }
    cmds.push(format!("router bgp {}", c.asn));
    for p in old {
        if !c.peers.iter().any(|n| n.address == p.address) {
            cmds.push(format!(" no neighbor {}", p.address));
        }
    }
    for p in &c.peers {
        if !old.iter().any(|o| o.address == p.address) {
            cmds.extend(peer_neighbor(rs, p));
        }
    }
    cmds.push("end".to_owned());
    let refs: Vec<&str> = cmds.iter().map(|s| s.trim()).collect();
    vtysh(rs, &refs)?;
    if !c.peers.is_empty() {
        vtysh(rs, &["clear bgp * soft in"])?;
    }
    Ok(())
}

pub(super) fn routes(rs: &RouteServer) -> Result<Vec<ReceivedRoute>, RouteServerError> {
    let bad = |d: String| RouteServerError::parse(Flavor::Frr, "routes", d);
    let mut out = Vec::new();
    for afi in ["ipv4", "ipv6"] {
        let text = vtysh(rs, &[&format!("show bgp {afi} unicast json")])?;
        let v: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let prefixes: Vec<String> = v
            .get("routes")
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        for p in prefixes {
            let text = vtysh(rs, &[&format!("show bgp {afi} unicast {p} json")])?;
            out.extend(parse_prefix_detail(&text)?);
        }
    }
    Ok(out)
}

/// What each established peer sent, before the route-maps (`soft-reconfiguration
/// inbound` keeps it).
pub(super) fn adj_rib_in(rs: &RouteServer) -> Result<Vec<(IpPrefix, IpAddr)>, RouteServerError> {
    let mut out = Vec::new();
    for p in peers(rs)?.into_iter().filter(|p| p.established) {
        for afi in ["ipv4", "ipv6"] {
            let text = vtysh(
                rs,
                &[&format!(
                    "show bgp {afi} unicast neighbors {} received-routes json",
                    p.address
                )],
            )?;
            out.extend(parse_received_routes(&text, p.address)?);
        }
    }
    Ok(out)
}

/// `received-routes json`: `{"receivedRoutes": {"<prefix>": {...}}, ...}`, or `{}` when
/// the peer sent nothing.
fn parse_received_routes(
    text: &str,
    from: IpAddr,
) -> Result<Vec<(IpPrefix, IpAddr)>, RouteServerError> {
    let bad = |d: String| RouteServerError::parse(Flavor::Frr, "received-routes", d);
    let v: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let Some(routes) = v.get("receivedRoutes").and_then(Value::as_object) else {
        return Ok(Vec::new());
    };
    routes
        .iter()
        .map(|(key, r)| {
            let text = r
                .get("network")
                .and_then(Value::as_str)
                .unwrap_or(key.as_str());
            text.parse::<IpPrefix>()
                .map(|p| (p, from))
                .map_err(|e| bad(e.to_string()))
        })
        .collect()
}

fn parse_prefix_detail(text: &str) -> Result<Vec<ReceivedRoute>, RouteServerError> {
    let bad = |d: String| RouteServerError::parse(Flavor::Frr, "prefix detail", d);
    let v: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let Some(prefix) = v.get("prefix").and_then(Value::as_str) else {
        // The route went away between the two queries.
        return Ok(Vec::new());
    };
    let prefix: IpPrefix = prefix.parse().map_err(|e| bad(format!("{e}")))?;
    let mut out = Vec::new();
    for path in v
        .get("paths")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(from) = path
            .pointer("/peer/peerId")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<IpAddr>().ok())
        else {
            continue;
        };
        let strings = |key: &str| -> Vec<String> {
            path.pointer(&format!("/{key}/list"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        };
        out.push(ReceivedRoute {
            prefix,
            from,
            next_hop: path
                .get("nexthops")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|n| n.get("ip").and_then(Value::as_str)?.parse().ok())
                .collect(),
            origin: path
                .get("origin")
                .and_then(Value::as_str)
                .and_then(Origin::parse),
            as_path: path
                .pointer("/aspath/segments")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|s| {
                    s.get("list")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default()
                })
                .filter_map(|a| a.as_u64().and_then(|a| u32::try_from(a).ok()))
                .collect(),
            communities: strings("community")
                .iter()
                .filter_map(|s| {
                    let (a, b) = s.split_once(':')?;
                    Some((a.parse().ok()?, b.parse().ok()?))
                })
                .collect(),
            large_communities: strings("largeCommunity")
                .iter()
                .filter_map(|s| {
                    let mut it = s.split(':').map(|n| n.parse::<u32>().ok());
                    Some((it.next()??, it.next()??, it.next()??))
                })
                .collect(),
            local_pref: path
                .get("locPrf")
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok()),
            best: path
                .pointer("/bestpath/overall")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            valid: path.get("valid").and_then(Value::as_bool).unwrap_or(false),
        });
    }
    Ok(out)
}

pub(super) fn peers(rs: &RouteServer) -> Result<Vec<PeerStatus>, RouteServerError> {
    let bad = |d: String| RouteServerError::parse(Flavor::Frr, "neighbors", d);
    let text = vtysh(rs, &["show bgp neighbors json"])?;
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    for (addr, n) in v.as_object().into_iter().flatten() {
        let Ok(address) = addr.parse::<IpAddr>() else {
            continue;
        };
        let state = n
            .get("bgpState")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let reason = n.get("lastResetDueTo").and_then(Value::as_str);
        let notification = n.get("lastNotificationReason").and_then(Value::as_str);
        let last_error = match (reason, notification) {
            (Some(r), Some(n)) => Some(format!("{r}: {n}")),
            (Some(r), None) => Some(r.to_owned()),
            (None, Some(n)) => Some(n.to_owned()),
            (None, None) => None,
        };
        out.push(PeerStatus {
            address,
            established: state == "Established",
            state,
            last_error,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_received_routes() {
        // FRR 8.4 `show bgp ipv4 unicast neighbors 2001:db8:1::11 received-routes json`,
        // the route rejected by the route-map (`filteredPrefixCounter`).
        let text = r#"{"bgpTableVersion":1,"bgpLocalRouterId":"192.0.2.101","defaultLocPrf":100,"localAS":65000,
        "receivedRoutes":{"192.0.2.10/32":{"addrPrefix":"192.0.2.10","prefixLen":32,"network":"192.0.2.10/32",
        "nextHopGlobal":"2001:db8:1::11","weight":0,"path":"65001","bgpOriginCode":"?","appliedStatusSymbols":{"*":true,">":true}}},
        "totalPrefixCounter":1,"filteredPrefixCounter":1}"#;
        let from: IpAddr = "2001:db8:1::11".parse().unwrap();
        let r = parse_received_routes(text, from).unwrap();
        assert_eq!(r, vec![("192.0.2.10/32".parse().unwrap(), from)]);
        assert_eq!(parse_received_routes("{}", from).unwrap(), vec![]);
        assert!(parse_received_routes("not json", from).is_err());
    }

    #[test]
    fn parses_prefix_detail() {
        let text = r#"{"prefix":"2001:db8:1:200::/56","paths":[{"aspath":{"string":"65001","segments":[{"type":"as-sequence","list":[65001]}],"length":1},
        "origin":"incomplete","locPrf":200,"valid":true,"bestpath":{"overall":true},"community":{"string":"65000:1","list":["65000:1"]},
        "largeCommunity":{"string":"63949:1:1","list":["63949:1:1"]},"nexthops":[{"ip":"2001:db8:1::10","afi":"ipv6","used":true}],
        "peer":{"peerId":"2001:db8:1::10","routerId":"192.0.2.1","type":"external"}}]}"#;
        let r = parse_prefix_detail(text).unwrap();
        assert_eq!(r.len(), 1);
        let r = &r[0];
        assert_eq!(r.prefix.to_string(), "2001:db8:1:200::/56");
        assert_eq!(r.from.to_string(), "2001:db8:1::10");
        assert_eq!(r.origin, Some(Origin::Incomplete));
        assert_eq!(r.communities, vec![(65000, 1)]);
        assert_eq!(r.large_communities, vec![(63949, 1, 1)]);
        assert_eq!(r.local_pref, Some(200));
        assert_eq!(r.as_path, vec![65001]);
        assert!(r.best && r.valid);
    }
}
