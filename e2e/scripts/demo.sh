#!/usr/bin/env bash
# The demo: a real kube-apiserver, the Linode API stand-in, two operator replicas and a SharedIP;
# nodes are recycled, the leading operator is killed, and you watch the address follow. Installs
# what it needs first (the control plane binaries are built once, into ~/.cache/sharedip).
#
# Usage: e2e/scripts/demo.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

echo "==> installing prerequisites (first run builds kube-apiserver, etcd, kubectl, helm: ~15 min)"
e2e/scripts/install-prereqs.sh
echo "==> building the operator and the demo"
cargo build --quiet --locked -p sharedip-operator --bin sharedip-operator
cargo build --quiet --locked -p sharedip-e2e --bin sharedip-demo
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
export SHAREDIP_OPERATOR_BIN="$TARGET_DIR/debug/sharedip-operator"
exec "$TARGET_DIR/debug/sharedip-demo"
