#!/usr/bin/env bash
# Captures real BGP messages between BIRD 2 and GoBGP and stores them as hex test
# vectors next to this script. Root only; everything lives in two network
# namespaces with documentation addresses and is removed on exit, also on failure.
#
#   sudo bash crates/bgp/tests/captures/capture.sh
#
# Needs: bird2, gobgpd (with the gobgp CLI), tcpdump, iproute2, python3.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
ns_bird="sharedip-cap-bird-$$"
ns_gobgp="sharedip-cap-gobgp-$$"
pids=()

cleanup() {
    set +e
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
    ip netns del "$ns_bird" 2>/dev/null
    ip netns del "$ns_gobgp" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

for tool in bird gobgpd gobgp tcpdump python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done

ip netns add "$ns_bird"
ip netns add "$ns_gobgp"
ip link add veth-bird netns "$ns_bird" type veth peer name veth-gobgp netns "$ns_gobgp"
ip -n "$ns_bird" link set lo up
ip -n "$ns_gobgp" link set lo up
ip -n "$ns_bird" addr add 2001:db8:1::1/64 dev veth-bird nodad
ip -n "$ns_gobgp" addr add 2001:db8:1::2/64 dev veth-gobgp nodad
ip -n "$ns_bird" link set veth-bird up
ip -n "$ns_gobgp" link set veth-gobgp up

ip netns exec "$ns_bird" tcpdump -i veth-bird -U -s 0 -w "$work/bgp.pcap" 'tcp port 179' \
    >"$work/tcpdump.log" 2>&1 &
pids+=($!)

# BIRD plays the node (AS 65001): IPv4 /32 with extended next hop and an IPv6 /64,
# ORIGIN incomplete, community 65000:1 and large community 63949:1:1.
cat >"$work/bird.conf" <<'CONF'
router id 192.0.2.1;
protocol device {}
protocol static s4 { ipv4; route 192.0.2.10/32 blackhole; }
protocol static s6 { ipv6; route 2001:db8:10::/64 blackhole; }
filter linode_tag {
    bgp_origin = ORIGIN_INCOMPLETE;
    bgp_community.add((65000, 1));
    bgp_large_community.add((63949, 1, 1));
    accept;
}
protocol bgp route_server {
    local 2001:db8:1::1 as 65001;
    neighbor 2001:db8:1::2 as 65000;
    multihop 16;
    hold time 9;
    keepalive time 3;
    ipv4 { extended next hop on; import all; export filter linode_tag; };
    ipv6 { import all; export filter linode_tag; };
}
CONF

# GoBGP plays a route server (AS 65000) and announces routes of its own back.
cat >"$work/gobgpd.toml" <<'CONF'
[global.config]
  as = 65000
  router-id = "192.0.2.2"
  port = 179
  local-address-list = ["2001:db8:1::2"]
[global.apply-policy.config]
  default-import-policy = "accept-route"
  default-export-policy = "accept-route"
[[neighbors]]
  [neighbors.config]
    neighbor-address = "2001:db8:1::1"
    peer-as = 65001
  [neighbors.timers.config]
    hold-time = 9
    keepalive-interval = 3
  [neighbors.ebgp-multihop.config]
    enabled = true
    multihop-ttl = 16
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv6-unicast"
CONF

ip netns exec "$ns_gobgp" gobgpd -t toml -f "$work/gobgpd.toml" --api-hosts 127.0.0.1:50051 \
    >"$work/gobgpd.log" 2>&1 &
pids+=($!)
ip netns exec "$ns_bird" bird -f -c "$work/bird.conf" -s "$work/bird.ctl" >"$work/bird.log" 2>&1 &
pids+=($!)

gobgp() { ip netns exec "$ns_gobgp" gobgp -u 127.0.0.1 -p 50051 "$@"; }

established=""
for _ in $(seq 1 60); do
    if gobgp neighbor 2>/dev/null | grep -q Establ; then established=yes; break; fi
    sleep 0.5
done
if [[ -z "$established" ]]; then
    echo "session did not come up" >&2
    cat "$work/gobgpd.log" "$work/bird.log" >&2
    exit 1
fi

gobgp global rib -a ipv4 add 198.51.100.0/24 nexthop 2001:db8:1::2 origin incomplete \
    community 65000:2 large-community 63949:1:2
gobgp global rib -a ipv6 add 2001:db8:20::/56 nexthop 2001:db8:1::2 origin incomplete \
    community 65000:2 large-community 63949:1:2
sleep 3
# Withdrawals, so the vectors hold MP_UNREACH_NLRI from GoBGP as well.
gobgp global rib -a ipv4 del 198.51.100.0/24
gobgp global rib -a ipv6 del 2001:db8:20::/56
sleep 2
ip netns exec "$ns_bird" birdc -s "$work/bird.ctl" show route all >"$work/bird-routes.txt" || true

kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
python3 "$here/extract.py" "$work/bgp.pcap" "$here"
echo "vectors written to $here"
