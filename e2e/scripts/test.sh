#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what it needs, then formatting, lints, the
# generated CRD, the Helm chart and Dockerfile checks, and every test tier (unit tests,
# integration tests against a real kube-apiserver and the Linode API stand-in).
#
# Usage: e2e/scripts/test.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

step() { printf '\n==> %s  (%ds so far)\n' "$*" "$SECONDS"; }

step "prerequisites"
e2e/scripts/install-prereqs.sh
export SHAREDIP_BIN_DIR="${SHAREDIP_BIN_DIR:-${SHAREDIP_CACHE_DIR:-$HOME/.cache/sharedip}/bin}"
export HELM="${HELM:-$SHAREDIP_BIN_DIR/helm}"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "generated CRD is up to date"
cargo run --quiet --locked -p sharedip-operator --bin crdgen -- --check

step "Helm chart"
SHAREDIP_REQUIRE_CRD=1 e2e/scripts/check-chart.sh

step "Dockerfile"
SHAREDIP_REQUIRE_ALL_BINS=1 e2e/scripts/check-dockerfile.sh

step "tests: unit, integration (real kube-apiserver, Linode API stand-in), BGP interop (BIRD, GoBGP, FRR)"
results=$(mktemp)
trap 'rm -f "$results"' EXIT
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$results"

step "fuzz the BGP decoder for 60 s"
e2e/scripts/fuzz.sh 60

step "summary"
# One closing line over every test binary: cargo prints one "test result" line per binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$results"
