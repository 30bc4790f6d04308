#!/usr/bin/env bash
# The demo: a failover you can watch. Brings the whole lab up on this machine (a real
# kube-apiserver, the Linode API stand-in, two operator replicas, four BGP route servers and a
# router, two nodes each running the real node agent, and a client), applies a SharedIP, then
# kills node-a's agent, cuts its link and drains it (each undone again), showing live which
# node answers the client and the measured outage of each change; writes a PNG of it; tears
# everything down.
# Installs what it needs first (the control plane binaries are built once, into
# ~/.cache/sharedip). Bounded to 5 minutes once the binaries are built.
#
# Usage: sudo e2e/scripts/demo.sh [--png PATH] [--no-drain] [--timeout-secs N]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

if [[ $(id -u) != 0 ]]; then
    echo "demo.sh: the demo needs root: it creates network namespaces and installs Debian packages." >&2
    echo "demo.sh: run it as root, e.g.  sudo -E env PATH=\"\$PATH\" e2e/scripts/demo.sh" >&2
    exit 1
fi

echo "==> installing prerequisites (first run builds kube-apiserver, etcd, kubectl, helm: ~15 min)"
e2e/scripts/install-prereqs.sh
echo "==> building the operator, the node agent and the demo"
cargo build --quiet --locked -p sharedip-operator --bin sharedip-operator
cargo build --quiet --locked -p sharedip-node-agent --bin sharedip-node-agent
cargo build --quiet --locked -p sharedip-e2e --bin sharedip-demo
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
export SHAREDIP_OPERATOR_BIN="$TARGET_DIR/debug/sharedip-operator"
export SHAREDIP_AGENT_BIN="$TARGET_DIR/debug/sharedip-node-agent"
exec "$TARGET_DIR/debug/sharedip-demo" --png "$TARGET_DIR/sharedip-demo/failover.png" "$@"
