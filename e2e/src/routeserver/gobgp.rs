//! GoBGP route server: `gobgpd` with a TOML configuration, reloaded on SIGHUP, read
//! with `gobgp … -j`. The import policy is one global policy: statements that set the
//! local preference from the role community (no disposition, so evaluation goes on),
//! then one accept statement per peer and family; everything else is rejected.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::daemon::Daemon;
use super::{
    poll, split_families, Flavor, IpPrefix, Mode, Origin, PeerStatus, ReceivedRoute, RouteServer,
    RouteServerError,
};

const API: &str = "127.0.0.1:50051";

fn prefix_set(out: &mut String, name: &str, list: &[IpPrefix]) {
    let _ = writeln!(
        out,
        "[[defined-sets.prefix-sets]]\n  prefix-set-name = \"{name}\""
    );
    for p in list {
        let _ = writeln!(
            out,
            "  [[defined-sets.prefix-sets.prefix-list]]\n    ip-prefix = \"{p}\"\n    masklength-range = \"{l}..{l}\"",
            l = p.len
        );
    }
}

fn pref_statement(out: &mut String, name: &str, set_kind: &str, set: &str, pref: u32) {
    let _ = writeln!(
        out,
        "  [[policy-definitions.statements]]\n    name = \"{name}\"\n    \
         [policy-definitions.statements.conditions.bgp-conditions.match-{set_kind}-set]\n      \
         {set_kind}-set = \"{set}\"\n      match-set-options = \"any\"\n    \
         [policy-definitions.statements.actions.bgp-actions]\n      set-local-pref = {pref}"
    );
}

fn accept_statement(out: &mut String, name: &str, neighbor_set: &str, prefix_set: Option<&str>) {
    let _ = writeln!(
        out,
        "  [[policy-definitions.statements]]\n    name = \"{name}\"\n    \
         [policy-definitions.statements.conditions.match-neighbor-set]\n      neighbor-set = \"{neighbor_set}\""
    );
    if let Some(ps) = prefix_set {
        let _ = writeln!(
            out,
            "    [policy-definitions.statements.conditions.match-prefix-set]\n      prefix-set = \"{ps}\""
        );
    }
    out.push_str(
        "    [policy-definitions.statements.actions]\n      route-disposition = \"accept-route\"\n",
    );
}

/// The TOML configuration.
pub(super) fn config(rs: &RouteServer) -> String {
    let c = &rs.config;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "[global.config]\n  as = {}\n  router-id = \"{}\"\n  port = 179\n  local-address-list = [\"{}\"]",
        c.asn, c.router_id, c.address
    );
    // Between equal eBGP paths GoBGP keeps the older one unless it compares router ids;
    // said explicitly: a node that comes back with the same role must not take the address
    // over (failback off), as on Linode.
    out.push_str("[global.route-selection-options.config]\n  external-compare-router-id = false\n");
    out.push_str(
        "[global.apply-policy.config]\n  import-policy-list = [\"rs-import\"]\n  \
         default-import-policy = \"reject-route\"\n  default-export-policy = \"reject-route\"\n",
    );
    let ((pa, pb), (pl1, pl2, pl3)) = c.primary;
    let ((sa, sb), (sl1, sl2, sl3)) = c.secondary;
    let _ = writeln!(
        out,
        "[[defined-sets.bgp-defined-sets.community-sets]]\n  community-set-name = \"primary\"\n  community-list = [\"{pa}:{pb}\"]\n\
         [[defined-sets.bgp-defined-sets.community-sets]]\n  community-set-name = \"secondary\"\n  community-list = [\"{sa}:{sb}\"]\n\
         [[defined-sets.bgp-defined-sets.large-community-sets]]\n  large-community-set-name = \"primary\"\n  large-community-list = [\"{pl1}:{pl2}:{pl3}\"]\n\
         [[defined-sets.bgp-defined-sets.large-community-sets]]\n  large-community-set-name = \"secondary\"\n  large-community-list = [\"{sl1}:{sl2}:{sl3}\"]"
    );
    let mut statements = String::new();
    // Evaluated in order; the first that sets a preference and the others
    // overwrite it, so the lowest goes first and primary wins.
    let _ = writeln!(statements, "[[policy-definitions]]\n  name = \"rs-import\"");
    // No conditions: matches every route.
    statements.push_str(
        "  [[policy-definitions.statements]]\n    name = \"lp-default\"\n    \
         [policy-definitions.statements.actions.bgp-actions]\n      set-local-pref = 50\n",
    );
    pref_statement(
        &mut statements,
        "lp-secondary",
        "community",
        "secondary",
        100,
    );
    pref_statement(
        &mut statements,
        "lp-secondary-large",
        "large-community",
        "secondary",
        100,
    );
    pref_statement(&mut statements, "lp-primary", "community", "primary", 200);
    pref_statement(
        &mut statements,
        "lp-primary-large",
        "large-community",
        "primary",
        200,
    );
    for (i, p) in c.peers.iter().enumerate() {
        let ns = format!("peer{i}");
        let _ = writeln!(
            out,
            "[[defined-sets.neighbor-sets]]\n  neighbor-set-name = \"{ns}\"\n  neighbor-info-list = [\"{}\"]",
            p.address
        );
        match split_families(&p.allowed) {
            None => accept_statement(&mut statements, &format!("accept-{ns}"), &ns, None),
            Some((v4, v6)) => {
                for (fam, list) in [("v4", v4), ("v6", v6)] {
                    if list.is_empty() {
                        continue;
                    }
                    let ps = format!("{ns}-{fam}");
                    prefix_set(&mut out, &ps, &list);
                    accept_statement(&mut statements, &format!("accept-{ps}"), &ns, Some(&ps));
                }
            }
        }
    }
    out.push_str(&statements);
    for p in &c.peers {
        let _ = writeln!(
            out,
            "[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{addr}\"\n    peer-as = {peer_as}\n  \
             [neighbors.timers.config]\n    hold-time = {hold}\n    keepalive-interval = {ka}\n    connect-retry = {retry}\n    idle-hold-time-after-reset = {retry}\n  \
             [neighbors.transport.config]\n    passive-mode = {passive}\n    local-address = \"{local}\"\n  \
             [neighbors.ebgp-multihop.config]\n    enabled = true\n    multihop-ttl = {ttl}\n  \
             [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv4-unicast\"\n  \
             [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv6-unicast\"",
            addr = p.address,
            peer_as = c.peer_asn,
            hold = c.hold_time,
            ka = c.keepalive,
            retry = c.retry,
            passive = c.mode == Mode::Passive,
            local = c.address,
            ttl = c.multihop_ttl,
        );
    }
    out
}

pub(super) fn start(rs: &RouteServer) -> Result<Vec<Daemon>, RouteServerError> {
    let conf = rs.write("gobgpd.toml", &config(rs))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &rs.netns, "gobgpd", "-t", "toml", "-f"])
        .arg(&conf)
        .args(["--api-hosts", API, "--pprof-disable"]);
    let mut daemon = Daemon::spawn("gobgpd", cmd, rs.dir.path().join("gobgpd.log"))?;
    let up = poll(Duration::from_secs(10), || {
        if !daemon.is_running() {
            return Some(false);
        }
        gobgp(rs, &["global"]).ok().map(|_| true)
    });
    if up != Some(true) {
        return Err(RouteServerError::Start {
            flavor: Flavor::Gobgp,
            detail: daemon.log_tail(4000),
        });
    }
    Ok(vec![daemon])
}

fn gobgp(rs: &RouteServer, args: &[&str]) -> Result<String, RouteServerError> {
    let (host, port) = API.split_once(':').unwrap_or((API, "50051"));
    let mut full = vec!["-u", host, "-p", port];
    full.extend_from_slice(args);
    rs.exec("gobgp", &full)
}

pub(super) fn reconfigure(rs: &RouteServer) -> Result<(), RouteServerError> {
    rs.write("gobgpd.toml", &config(rs))?;
    for d in &rs.daemons {
        d.signal(libc::SIGHUP);
    }
    // gobgpd applies the new file asynchronously; wait until the neighbor list
    // matches, then re-run the import policy over the Adj-RIB-In.
    let want: Vec<IpAddr> = rs
        .config
        .peers
        .iter()
        .map(|p| IpAddr::V6(p.address))
        .collect();
    let applied = poll(Duration::from_secs(10), || {
        let mut have: Vec<IpAddr> = peers(rs).ok()?.into_iter().map(|p| p.address).collect();
        have.sort();
        let mut want = want.clone();
        want.sort();
        (have == want).then_some(())
    });
    if applied.is_none() {
        return Err(RouteServerError::parse(
            Flavor::Gobgp,
            "reconfiguration",
            "the neighbor list did not change within 10 s",
        ));
    }
    // Policies are replaced after neighbors; give the reload a moment, then soft
    // reset so the new policy applies to routes already received.
    std::thread::sleep(Duration::from_millis(300));
    if !rs.config.peers.is_empty() {
        let _ = gobgp(rs, &["neighbor", "all", "softresetin"]);
    }
    Ok(())
}

pub(super) fn routes(rs: &RouteServer) -> Result<Vec<ReceivedRoute>, RouteServerError> {
    let mut out = Vec::new();
    for family in ["ipv4", "ipv6"] {
        let text = gobgp(rs, &["global", "rib", "-a", family, "-j"])?;
        out.extend(parse_rib(&text)?);
    }
    Ok(out)
}

/// What each established peer sent, before the import policy (GoBGP always keeps the
/// Adj-RIB-In).
pub(super) fn adj_rib_in(rs: &RouteServer) -> Result<Vec<(IpPrefix, IpAddr)>, RouteServerError> {
    let mut out = Vec::new();
    for p in peers(rs)?.into_iter().filter(|p| p.established) {
        let addr = p.address.to_string();
        for family in ["ipv4", "ipv6"] {
            let text = gobgp(rs, &["neighbor", &addr, "adj-in", "-a", family, "-j"])?;
            out.extend(parse_adj_in(&text, p.address)?);
        }
    }
    Ok(out)
}

/// `gobgp neighbor <addr> adj-in -j`: the same map of prefix to paths as the global RIB
/// (or a list of destinations in some versions); the peer is known from the question.
fn parse_adj_in(text: &str, from: IpAddr) -> Result<Vec<(IpPrefix, IpAddr)>, RouteServerError> {
    let bad = |d: String| RouteServerError::parse(Flavor::Gobgp, "adj-in", d);
    let text = text.trim();
    if text.is_empty() || text == "Network not in table" || text == "null" {
        return Ok(Vec::new());
    }
    let v: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let prefixes: Vec<String> = match &v {
        Value::Object(map) => map.keys().cloned().collect(),
        Value::Array(list) => list
            .iter()
            .filter_map(|d| {
                d.get("prefix")
                    .or_else(|| d.pointer("/nlri/prefix"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .collect(),
        other => return Err(bad(format!("unexpected {other}"))),
    };
    prefixes
        .iter()
        .map(|p| {
            p.parse::<IpPrefix>()
                .map(|p| (p, from))
                .map_err(|e| bad(e.to_string()))
        })
        .collect()
}

fn parse_rib(text: &str) -> Result<Vec<ReceivedRoute>, RouteServerError> {
    let bad = |d: String| RouteServerError::parse(Flavor::Gobgp, "rib", d);
    let text = text.trim();
    if text.is_empty() || text == "Network not in table" {
        return Ok(Vec::new());
    }
    let v: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let map = v.as_object().ok_or_else(|| bad("not an object".into()))?;
    let mut out = Vec::new();
    for (prefix, paths) in map {
        let prefix: IpPrefix = prefix.parse().map_err(|e| bad(format!("{e}")))?;
        for path in paths.as_array().into_iter().flatten() {
            let from = path
                .get("neighbor-ip")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("path without neighbor-ip".into()))?;
            let mut r = ReceivedRoute {
                prefix,
                from,
                next_hop: Vec::new(),
                origin: None,
                as_path: Vec::new(),
                communities: Vec::new(),
                large_communities: Vec::new(),
                local_pref: None,
                best: path.get("best").and_then(Value::as_bool).unwrap_or(false),
                valid: !path
                    .get("filtered")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            };
            for attr in path
                .get("attrs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let value = attr.get("value");
                match attr.get("type").and_then(Value::as_u64) {
                    Some(1) => {
                        r.origin = value
                            .and_then(Value::as_u64)
                            .and_then(|o| Origin::parse(&o.to_string()))
                    }
                    Some(2) => {
                        r.as_path = attr
                            .get("as_paths")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .flat_map(|seg| {
                                seg.get("asns")
                                    .and_then(Value::as_array)
                                    .cloned()
                                    .unwrap_or_default()
                            })
                            .filter_map(|a| a.as_u64().and_then(|a| u32::try_from(a).ok()))
                            .collect()
                    }
                    Some(3) | Some(14) => {
                        if let Some(nh) = attr
                            .get("nexthop")
                            .and_then(Value::as_str)
                            .and_then(|s| s.parse().ok())
                        {
                            r.next_hop.push(nh);
                        }
                        if let Some(ll) = attr
                            .get("linklocal_nexthop")
                            .and_then(Value::as_str)
                            .and_then(|s| s.parse().ok())
                        {
                            r.next_hop.push(ll);
                        }
                    }
                    Some(5) => {
                        r.local_pref = value
                            .and_then(Value::as_u64)
                            .and_then(|v| u32::try_from(v).ok())
                    }
                    Some(8) => {
                        r.communities = attr
                            .get("communities")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_u64)
                            .filter_map(|c| {
                                let c = u32::try_from(c).ok()?;
                                Some(((c >> 16) as u16, (c & 0xffff) as u16))
                            })
                            .collect()
                    }
                    Some(32) => {
                        r.large_communities = value
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .filter_map(|lc| {
                                let f = |k: &str| {
                                    lc.get(k)
                                        .and_then(Value::as_u64)
                                        .and_then(|v| u32::try_from(v).ok())
                                };
                                Some((f("ASN")?, f("LocalData1")?, f("LocalData2")?))
                            })
                            .collect()
                    }
                    _ => {}
                }
            }
            out.push(r);
        }
    }
    Ok(out)
}

/// BGP FSM states as gobgp's API numbers them.
fn state_name(n: u64) -> &'static str {
    match n {
        1 => "Idle",
        2 => "Connect",
        3 => "Active",
        4 => "OpenSent",
        5 => "OpenConfirm",
        6 => "Established",
        _ => "Unknown",
    }
}

pub(super) fn peers(rs: &RouteServer) -> Result<Vec<PeerStatus>, RouteServerError> {
    let bad = |d: String| RouteServerError::parse(Flavor::Gobgp, "neighbors", d);
    let text = gobgp(rs, &["neighbor", "-j"])?;
    let v: Value = serde_json::from_str(text.trim()).map_err(|e| bad(e.to_string()))?;
    let log = rs
        .daemons
        .first()
        .map(|d| d.log_tail(256 * 1024))
        .unwrap_or_default();
    let mut out = Vec::new();
    for p in v.as_array().into_iter().flatten() {
        let Some(address) = p
            .pointer("/conf/neighbor_address")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<IpAddr>().ok())
        else {
            continue;
        };
        let state = state_name(
            p.pointer("/state/session_state")
                .and_then(Value::as_u64)
                .unwrap_or(0),
        );
        out.push(PeerStatus {
            address,
            established: state == "Established",
            state: state.to_owned(),
            last_error: last_down_reason(&log, address),
        });
    }
    Ok(out)
}

/// gobgpd's API does not keep why a session went down; its JSON log does
/// (`"msg":"Peer Down"` with `"Reason"`).
fn last_down_reason(log: &str, address: IpAddr) -> Option<String> {
    log.lines().rev().find_map(|line| {
        let v: Value = serde_json::from_str(line).ok()?;
        if v.get("msg")?.as_str()? != "Peer Down" {
            return None;
        }
        let key: IpAddr = v.get("Key")?.as_str()?.parse().ok()?;
        (key == address).then(|| v.get("Reason")?.as_str().map(str::to_owned))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rib_json() {
        let text = r#"{"192.0.2.10/32":[{"nlri":{"prefix":"192.0.2.10/32"},"age":1795314311,"best":true,"attrs":[{"type":1,"value":2},{"type":2,"as_paths":[{"segment_type":2,"num":1,"asns":[65001]}]},{"type":5,"value":200},{"type":8,"communities":[4259840001]},{"type":14,"nexthop":"2001:db8:1::10","afi":1,"safi":1,"value":[{"prefix":"192.0.2.10/32"}]},{"type":32,"value":[{"ASN":63949,"LocalData1":1,"LocalData2":1}]}],"stale":false,"source-id":"192.0.2.1","neighbor-ip":"2001:db8:1::10"}]}"#;
        let r = parse_rib(text).unwrap();
        assert_eq!(r.len(), 1);
        let r = &r[0];
        assert_eq!(r.prefix.to_string(), "192.0.2.10/32");
        assert_eq!(r.origin, Some(Origin::Incomplete));
        assert_eq!(r.as_path, vec![65001]);
        assert_eq!(r.local_pref, Some(200));
        assert_eq!(r.communities, vec![(65000, 1)]);
        assert_eq!(r.large_communities, vec![(63949, 1, 1)]);
        assert_eq!(r.next_hop[0].to_string(), "2001:db8:1::10");
        assert!(r.best);
    }

    #[test]
    fn parses_adj_in_json() {
        // gobgp 3.10 `neighbor 2001:db8:1::11 adj-in -a ipv4 -j`, the route rejected by the
        // import policy.
        let text = r#"{"192.0.2.10/32":[{"nlri":{"prefix":"192.0.2.10/32"},"age":1796084670,"best":false,"attrs":[{"type":1,"value":2},{"type":2,"as_paths":[{"segment_type":2,"num":1,"asns":[65001]}]},{"type":8,"communities":[4259840002]},{"type":14,"nexthop":"2001:db8:1::11","afi":1,"safi":1,"value":[{"prefix":"192.0.2.10/32"}]}],"stale":false,"source-id":"0.0.0.17","neighbor-ip":"2001:db8:1::11"}]}"#;
        let from: IpAddr = "2001:db8:1::11".parse().unwrap();
        let r = parse_adj_in(text, from).unwrap();
        assert_eq!(r, vec![("192.0.2.10/32".parse().unwrap(), from)]);
        assert_eq!(
            parse_adj_in("Network not in table\n", from).unwrap(),
            vec![]
        );
        assert!(parse_adj_in("{\"not a prefix\": []}", from).is_err());
    }

    #[test]
    fn finds_the_last_down_reason() {
        let log = r#"{"Key":"2001:db8:1::10","Reason":"hold timer expired","msg":"Peer Down"}
{"Key":"2001:db8:1::11","Reason":"other","msg":"Peer Down"}
{"Key":"2001:db8:1::10","Reason":"notification-received code 6(cease) subcode 2(administrative shutdown)","State":"BGP_FSM_ESTABLISHED","Topic":"Peer","level":"info","msg":"Peer Down"}
{"Key":"2001:db8:1::10","msg":"Peer Up"}"#;
        let r = last_down_reason(log, "2001:db8:1::10".parse().unwrap()).unwrap();
        assert!(r.contains("administrative shutdown"), "{r}");
    }
}
