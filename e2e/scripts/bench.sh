#!/usr/bin/env bash
# The benchmark: one lab (real kube-apiserver, two operator replicas, two nodes with the real
# agent, four BIRD route servers, a client probing the shared IP every 20 ms); each failure
# mode repeated K times (planned: drain annotation, agent SIGTERM; hard: agent SIGKILL, link
# cut; the failback after each), the agents' RSS and idle CPU, and SharedIP apply → announced.
# Prints a table next to the targets of docs/ARCHITECTURE.md and writes JSON, the probe log and a PNG plot.
#
# The agent and the operator are built as they ship (the agent with the size-optimised `agent`
# profile, the operator in release: the footprint target is about what ships); the benchmark
# driver itself in debug. `--debug-binaries` measures debug builds.
# Then the propagation suite twice (`--suite propagation`: apply → traffic, a node newly selected,
# every agent restarted, a node recycle with and without --withdraw-on-cordon), with the route
# servers' share propagation delay D = 15 s ± 20 % as observed on Linode and with D = 0 to compare,
# one run each (about 3 minutes together; each figure is one measurement, indicative only);
# `--no-propagation` skips it. Into target/bench/propagation-15s and target/bench/propagation-0s.
# Then LoadBalancer Services (`--suite services`, kube-proxy on both nodes, about 3 minutes): Service
# created -> EXTERNAL-IP -> first probe answered through kube-proxy, lost probes during a rolling
# update of an externalTrafficPolicy: Local Service, and failover/failback (agent SIGTERM, link cut)
# of a Service beside a SharedIP; `--no-services` skips it. Into target/bench/services.
# Then the operator's scale benchmark (1,000 SharedIPs × 100 nodes: time to converge, share calls
# per Linode per wave): cargo bench -p sharedip-operator --bench scale; `--no-scale` skips it.
# Then established connections through each move (`--suite connections`, one run, about 6
# minutes): per event (drain, SIGTERM, SIGKILL, link cut, the failback after each) 21 long-lived
# connections open / survived and the lost probes, with flow handover off and on; then what its
# forwarding costs (an established connection direct, then forwarded through the tunnel:
# round-trip time, upload rate, CPU per GiB; about 20 s after its release build):
# cargo bench -p sharedip-node-agent --bench flow_forwarding. `--no-forwarding` skips both.
#
# Usage (root): e2e/scripts/bench.sh [--debug-binaries] [--no-scale] [--no-propagation] [--no-services] [--no-forwarding] [--runs K] [--out DIR] [other sharedip-bench flags]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

profile=release
scale=1
propagation=1
services=1
forwarding=1
args=()
for a in "$@"; do
    case $a in
        --debug-binaries) profile=debug ;;
        --no-scale) scale=0 ;;
        --no-propagation) propagation=0 ;;
        --no-services) services=0 ;;
        --no-forwarding) forwarding=0 ;;
        *) args+=("$a") ;;
    esac
done

[[ $(id -u) == 0 ]] || { echo "bench.sh: run as root (the lab uses network namespaces)" >&2; exit 1; }

echo "==> installing prerequisites (first run builds kube-apiserver, etcd, kubectl, helm: ~15 min)"
e2e/scripts/install-prereqs.sh
export SHAREDIP_BIN_DIR="${SHAREDIP_BIN_DIR:-${SHAREDIP_CACHE_DIR:-$HOME/.cache/sharedip}/bin}"

# As shipped: the agent with Cargo.toml's size-optimised `agent` profile (as the Dockerfile builds
# it), the operator with `release`.
agent_profile=agent operator_profile=release
[[ $profile == debug ]] && agent_profile=debug operator_profile=debug
echo "==> building the agent ($agent_profile), the operator ($operator_profile) and the benchmark driver (debug)"
echo "    (a first release build of the agent takes a few minutes: it is optimised for size with LTO)"
cargo build --quiet --locked --profile "${agent_profile/debug/dev}" -p sharedip-node-agent --bin sharedip-node-agent
cargo build --quiet --locked --profile "${operator_profile/debug/dev}" -p sharedip-operator --bin sharedip-operator
cargo build --quiet --locked -p sharedip-e2e --bin sharedip-bench
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
export SHAREDIP_AGENT_BIN="$TARGET_DIR/$agent_profile/sharedip-node-agent"
export SHAREDIP_OPERATOR_BIN="$TARGET_DIR/$operator_profile/sharedip-operator"
export SHAREDIP_BENCH_PROFILE="agent: $agent_profile, operator: $operator_profile"

echo "==> the lab: failure modes, footprint, apply latency (default: 3 runs per mode, about 5 minutes)"
"$TARGET_DIR/debug/sharedip-bench" "${args[@]}"

if ((propagation)); then
    for d in 15000 0; do
        echo
        echo "==> the propagation suite with D = $((d / 1000)) s (one run; about $((d ? 2 : 1)) minute(s))"
        "$TARGET_DIR/debug/sharedip-bench" --suite propagation --runs 1 \
            --propagation-delay-ms "$d" --propagation-jitter 0.2 --out "target/bench/propagation-$((d / 1000))s"
    done
fi

if ((services)); then
    echo
    echo "==> LoadBalancer Services through kube-proxy (about 3 minutes)"
    "$TARGET_DIR/debug/sharedip-bench" --suite services --out target/bench/services
fi

if ((scale)); then
    echo
    echo "==> the operator at scale (release build, about 2 minutes)"
    cargo bench --quiet --locked -p sharedip-operator --bench scale
fi

if ((forwarding)); then
    echo
    echo "==> flow handover: established connections through each move, off and on (about 6 minutes)"
    "$TARGET_DIR/debug/sharedip-bench" --suite connections --runs 1 --out target/bench/connections
    echo
    echo "==> flow handover: what forwarding a connection through the tunnel costs (release build)"
    cargo bench --quiet --locked -p sharedip-node-agent --bench flow_forwarding
fi
