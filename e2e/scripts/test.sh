#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what it needs, then formatting, lints, the
# generated CRD, the Helm chart and Dockerfile checks, and every test tier (unit tests,
# integration tests against a real kube-apiserver and the Linode API stand-in).
#
# Usage: e2e/scripts/test.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

step() { printf '\n==> %s  (%ds so far)\n' "$*" "$SECONDS"; }

# Incremental compilation only pays off across edits; here it would add gigabytes of target/.
export CARGO_INCREMENTAL=0

export SHAREDIP_BIN_DIR="${SHAREDIP_BIN_DIR:-${SHAREDIP_CACHE_DIR:-$HOME/.cache/sharedip}/bin}"
export HELM="${HELM:-$SHAREDIP_BIN_DIR/helm}"

# A build that runs out of disk half-way fails with an error about some random crate; say it
# up front instead. A cold run takes about 3 GB of target/; building the control plane (first
# run only) about 5 GB more of Go caches.
need_gb=4
[[ -x $SHAREDIP_BIN_DIR/kube-apiserver ]] || need_gb=$((need_gb + 5))
need_gb=${SHAREDIP_TEST_NEED_GB:-$need_gb}
target_dir=${CARGO_TARGET_DIR:-target}
mkdir -p "$target_dir"
free_gb=$(df -Pk "$target_dir" | awk 'NR == 2 { print int($4 / 1048576) }')
target_gb=$(du -sk "$target_dir" | awk '{ print int($1 / 1048576) }')
echo "disk: ${free_gb} GB free where $target_dir is (it holds ${target_gb} GB); this run needs about ${need_gb} GB"
if ((free_gb + target_gb < need_gb)); then
    echo "error: not enough disk space (${free_gb} GB free, about ${need_gb} GB needed)" >&2
    echo "       free some space, or point CARGO_TARGET_DIR at a larger filesystem" >&2
    exit 1
fi

step "prerequisites"
e2e/scripts/install-prereqs.sh

step "cargo fmt --check"
# rustfmt.toml's import grouping (std, external crates, this crate) is a nightly rustfmt option:
# stable rustfmt warns about it once per file and checks everything else.
if rustup run nightly rustfmt --version >/dev/null 2>&1; then
    cargo +nightly fmt --all -- --check
else
    echo "no nightly rustfmt on this machine: the import grouping goes unchecked"
    cargo fmt --all -- --check 2> >(grep -v "unstable features are only available in nightly" >&2)
fi

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

step "fuzz the BGP decoder against an independent decoder: the planted-bug check, then 60 s"
e2e/scripts/fuzz.sh 60

step "summary"
# One closing line over every test binary: cargo prints one "test result" line per binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$results"
