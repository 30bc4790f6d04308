#!/usr/bin/env bash
# Installs what the test suite and the lab need on a fresh Debian machine that has Rust
# (with rustfmt and clippy), Go and Python: Debian packages, Python modules for the chart
# checks, and the control plane binaries (built from Go modules, cached).
#
# Idempotent: a second run only checks.
set -euo pipefail

log() { printf '[install-prereqs] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v cargo >/dev/null || die "cargo is required (install Rust with rustup)"
command -v go >/dev/null || die "go is required (Go 1.24 or newer) to build kube-apiserver, kube-proxy, etcd, kubectl and helm"
command -v python3 >/dev/null || die "python3 is required"
cargo fmt --version >/dev/null 2>&1 || die "rustfmt is required: rustup component add rustfmt"
cargo clippy --version >/dev/null 2>&1 || die "clippy is required: rustup component add clippy"

# Debian packages: iproute2 for network namespaces, ca-certificates for the Go proxy.
APT_PACKAGES=(iproute2 ca-certificates)
# BGP route servers of the node agent's interop tests and the lab (e2e/src/routeserver),
# sysctl (procps) for the network namespaces.
APT_PACKAGES+=(bird2 gobgpd frr procps)
# nft: the lab's fault scenarios make a route server silent (e2e/tests/lab_faults.rs), and
# kube-proxy's nftables mode (the lab's Service data path) programs the node namespaces with
# it; kube-proxy clears conntrack entries over netlink, so it needs no conntrack tool.
APT_PACKAGES+=(nftables)
# A TrueType font for the text of the lab's PNG plots (e2e/src/lab/report.rs).
APT_PACKAGES+=(fonts-dejavu-core)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || die "missing Debian packages ${missing[*]}; run as root or install them"
    log "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Python modules of the chart checks.
if ! python3 -c 'import yaml, jsonschema' 2>/dev/null; then
    log "pip install pyyaml jsonschema"
    python3 -m pip install --quiet --disable-pip-version-check pyyaml jsonschema
fi

# kube-apiserver, kube-proxy, etcd, kubectl, helm: built once per machine into the cache.
"$(dirname "${BASH_SOURCE[0]}")/build-control-plane.sh"
