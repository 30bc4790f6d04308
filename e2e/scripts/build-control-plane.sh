#!/usr/bin/env bash
# Builds the real Kubernetes control plane the e2e tests run against —
# kube-apiserver, kubectl, etcd — plus kube-proxy (the data path of the lab's
# LoadBalancer Services) and helm (chart lint/template), from their Go modules at
# pinned versions with this machine's Go toolchain.
#
# Output: ${SHAREDIP_CACHE_DIR:-$HOME/.cache/sharedip}/bin/{kube-apiserver,kubectl,kube-proxy,etcd,helm}
# Each binary has a version stamp next to it; a run that finds every binary at
# its pinned version does nothing and returns at once. The Rust harness
# (e2e/src/controlplane/) looks in the same place (or in $SHAREDIP_BIN_DIR).
#
# Network: only the Go module proxy and checksum database (GOPROXY/GOSUMDB as
# configured), plus apt-get if ca-certificates is missing. No prebuilt binaries.
#
# Why a throwaway module: k8s.io/kubernetes's go.mod replaces every k8s.io
# staging module with ./staging/..., and replace directives of a dependency are
# ignored, so `go install k8s.io/kubernetes/cmd/kube-apiserver@v1.34.x` fails.
# Requiring k8s.io/kubernetes from a temporary main module that replaces each
# staging module with its published v0.<minor>.<patch> tag builds the same code.
# etcd's server module has the same kind of relative replaces, so it goes the
# same way.
#
# Cost: measured on the 2-core CI-like machine (shared with other builds), a cold
# run took ~15 min wall, ~13.5 min CPU; kube-apiserver+kubectl are ~70% of it.
# kube-proxy shares most of its packages with them, so it adds little to that build.
# CI should cache this cache dir (and ideally Go's module and build caches:
# `go env GOMODCACHE GOCACHE`) between runs.
set -euo pipefail

# --- pinned versions --------------------------------------------------------
# Kubernetes 1.34 matches k8s-openapi's `v1_34` feature used on the Rust side.
K8S_VERSION=v1.34.4
# The etcd server version Kubernetes v1.34.4 ships with (build/dependencies.yaml).
ETCD_VERSION=v3.6.5
# Latest helm 3 on the Kubernetes 1.34 client libraries (client-go v0.34; v3.20 moved to v0.35).
HELM_VERSION=v3.19.5
# Oldest Go that the pinned modules accept (their go.mod `go` lines).
MIN_GO_MINOR=24

CACHE_DIR=${SHAREDIP_CACHE_DIR:-$HOME/.cache/sharedip}
BIN_DIR=$CACHE_DIR/bin

log() { printf '[build-control-plane] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- stamps: skip what is already built --------------------------------------
stamp_file() { printf '%s/.%s.version' "$BIN_DIR" "$1"; }

# up_to_date COMPONENT VERSION BINARY...: every binary exists and the stamp matches.
up_to_date() {
    local component=$1 version=$2
    shift 2
    [[ -f $(stamp_file "$component") && $(<"$(stamp_file "$component")") == "$version" ]] || return 1
    local b
    for b in "$@"; do
        [[ -x $BIN_DIR/$b ]] || return 1
    done
}

# Everything the one Kubernetes build produces.
K8S_BINS=(kube-apiserver kubectl kube-proxy)

if up_to_date kubernetes "$K8S_VERSION" "${K8S_BINS[@]}" &&
    up_to_date etcd "$ETCD_VERSION" etcd &&
    up_to_date helm "$HELM_VERSION" helm; then
    log "up to date in $BIN_DIR: kubernetes $K8S_VERSION, etcd $ETCD_VERSION, helm $HELM_VERSION"
    exit 0
fi

# --- prerequisites -------------------------------------------------------------
# The official tarball installs to /usr/local/go without touching PATH.
if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
    export PATH="/usr/local/go/bin:$PATH"
fi
command -v go >/dev/null 2>&1 || die "Go is not installed (need go >= 1.$MIN_GO_MINOR on PATH)"
# Never let the go command fetch another toolchain: we build with this machine's Go.
export GOTOOLCHAIN=local
go_version=$(go env GOVERSION)
go_minor=$(sed -E 's/^go1\.([0-9]+).*/\1/' <<<"$go_version")
[[ $go_minor =~ ^[0-9]+$ && $go_minor -ge $MIN_GO_MINOR ]] ||
    die "$go_version is too old: the pinned modules need go >= 1.$MIN_GO_MINOR"

# The module proxy is HTTPS; a minimal Debian image may lack the CA bundle.
if [[ ! -s /etc/ssl/certs/ca-certificates.crt ]] && command -v apt-get >/dev/null 2>&1; then
    log "installing ca-certificates (needed to reach the Go module proxy)"
    sudo_cmd=()
    [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq ca-certificates
fi

mkdir -p "$BIN_DIR"

# One build at a time per cache dir (parallel CI jobs / a developer rerunning).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$CACHE_DIR/.build.lock"
    if ! flock -n 9; then
        log "another build holds $CACHE_DIR/.build.lock; waiting"
        flock 9
    fi
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sharedip-build-control-plane.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

export CGO_ENABLED=0
# -mod=mod (given to each `go build`) lets it fill the throwaway module's go.sum
# from the proxy; no VCS stamping in a temp dir.
export GOFLAGS="-buildvcs=false"

log "go: $go_version ($(go env GOOS)/$(go env GOARCH)), GOPROXY=$(go env GOPROXY), GOMAXPROCS cores: $(nproc 2>/dev/null || echo '?')"
log "output: $BIN_DIR"

# new_module DIR: a throwaway main module whose `go`/`godebug` lines match
# Kubernetes's own (so runtime GODEBUG defaults are the upstream ones).
new_module() {
    local dir=$1
    mkdir -p "$dir"
    cat >"$dir/go.mod" <<EOF
module sharedip.invalid/control-plane-build

go 1.24.0

godebug default=go1.24
EOF
}

# install_bins SRC_DIR NAME...: move freshly built binaries into BIN_DIR atomically.
install_bins() {
    local src=$1 b
    shift
    for b in "$@"; do
        [[ -x $src/$b ]] || die "build produced no $b"
        mv -f "$src/$b" "$BIN_DIR/$b.new"
        mv -f "$BIN_DIR/$b.new" "$BIN_DIR/$b"
    done
}

total_start=$SECONDS
built=()

# --- etcd ------------------------------------------------------------------------
if up_to_date etcd "$ETCD_VERSION" etcd; then
    log "etcd $ETCD_VERSION: up to date"
else
    start=$SECONDS
    log "etcd $ETCD_VERSION: building go.etcd.io/etcd/server/v3"
    mod=$WORK/etcd
    new_module "$mod"
    (
        cd "$mod"
        # The server module replaces its sibling modules with ../ paths; pin them
        # to the same release instead.
        go mod edit \
            -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION" \
            -replace="go.etcd.io/etcd/api/v3=go.etcd.io/etcd/api/v3@$ETCD_VERSION" \
            -replace="go.etcd.io/etcd/client/pkg/v3=go.etcd.io/etcd/client/pkg/v3@$ETCD_VERSION" \
            -replace="go.etcd.io/etcd/client/v3=go.etcd.io/etcd/client/v3@$ETCD_VERSION" \
            -replace="go.etcd.io/etcd/pkg/v3=go.etcd.io/etcd/pkg/v3@$ETCD_VERSION"
        go build -mod=mod -trimpath -ldflags "-s -w" -o "$mod/out/etcd" go.etcd.io/etcd/server/v3
    )
    install_bins "$mod/out" etcd
    printf '%s' "$ETCD_VERSION" >"$(stamp_file etcd)"
    log "etcd $ETCD_VERSION: built in $((SECONDS - start))s"
    built+=(etcd)
fi

# --- kube-apiserver + kubectl + kube-proxy -----------------------------------------------
if up_to_date kubernetes "$K8S_VERSION" "${K8S_BINS[@]}"; then
    log "kubernetes $K8S_VERSION: up to date"
else
    start=$SECONDS
    log "kubernetes $K8S_VERSION: downloading k8s.io/kubernetes go.mod"
    # Staging modules are tagged v0.<minor>.<patch> for Kubernetes v1.<minor>.<patch>.
    staging_version="v0.${K8S_VERSION#v1.}"
    k8s_gomod=$(cd "$WORK" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
        sed -n -E 's/^[[:space:]]*"GoMod": "(.*)",?$/\1/p')
    [[ -f $k8s_gomod ]] || die "could not download the go.mod of k8s.io/kubernetes@$K8S_VERSION"
    mapfile -t staging < <(sed -n -E 's#^[[:space:]]*(k8s\.io/[A-Za-z0-9._-]+) => \./staging/src/k8s\.io/[A-Za-z0-9._-]+[[:space:]]*$#\1#p' "$k8s_gomod")
    [[ ${#staging[@]} -gt 0 ]] || die "found no staging replace directives in $k8s_gomod"
    log "kubernetes $K8S_VERSION: ${#staging[@]} staging modules pinned to $staging_version"

    mod=$WORK/kubernetes
    new_module "$mod"
    edits=(-require="k8s.io/kubernetes@$K8S_VERSION")
    for m in "${staging[@]}"; do
        edits+=(-replace="$m=$m@$staging_version")
    done
    # Same version stamp the upstream Makefile sets (hack/lib/version.sh), so
    # /version and `kubectl version` report v1.34.x rather than v0.0.0-master.
    k8s_minor=${K8S_VERSION#v1.}
    k8s_minor=${k8s_minor%%.*}
    ldflags="-s -w"
    for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
        ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
        ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    (
        cd "$mod"
        go mod edit "${edits[@]}"
        log "kubernetes $K8S_VERSION: building ${K8S_BINS[*]} (the slow part)"
        # One invocation so the commands share the compiled packages.
        go build -mod=mod -trimpath -ldflags "$ldflags" -o "$mod/out/" \
            "${K8S_BINS[@]/#/k8s.io/kubernetes/cmd/}"
    )
    install_bins "$mod/out" "${K8S_BINS[@]}"
    printf '%s' "$K8S_VERSION" >"$(stamp_file kubernetes)"
    log "kubernetes $K8S_VERSION: built in $((SECONDS - start))s"
    built+=("${K8S_BINS[@]}")
fi

# --- helm --------------------------------------------------------------------------------
if up_to_date helm "$HELM_VERSION" helm; then
    log "helm $HELM_VERSION: up to date"
else
    start=$SECONDS
    log "helm $HELM_VERSION: building helm.sh/helm/v3/cmd/helm"
    mod=$WORK/helm
    new_module "$mod"
    # What helm's Makefile sets; the Kubernetes version is the one of its client-go (v0.34).
    ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
        ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=34"
    done
    (
        cd "$mod"
        go mod edit -require="helm.sh/helm/v3@$HELM_VERSION"
        go build -mod=mod -trimpath -ldflags "$ldflags" -o "$mod/out/helm" helm.sh/helm/v3/cmd/helm
    )
    install_bins "$mod/out" helm
    printf '%s' "$HELM_VERSION" >"$(stamp_file helm)"
    log "helm $HELM_VERSION: built in $((SECONDS - start))s"
    built+=(helm)
fi

# --- smoke check -----------------------------------------------------------------------
# first_line CMD...: the first line of a command's output. Not `| head -n1`: under pipefail
# the SIGPIPE that head causes would fail the script.
first_line() {
    local out
    out=$("$@" 2>&1) || die "$* failed: $out"
    printf '%s' "${out%%$'\n'*}"
}
log "installed in $BIN_DIR:"
log "  $(first_line "$BIN_DIR/etcd" --version)"
log "  kube-apiserver $(first_line "$BIN_DIR/kube-apiserver" --version)"
log "  kubectl $(first_line "$BIN_DIR/kubectl" version --client)"
log "  kube-proxy $(first_line "$BIN_DIR/kube-proxy" --version)"
log "  helm $(first_line "$BIN_DIR/helm" version --short)"
log "built: ${built[*]:-nothing}; took $((SECONDS - total_start))s"
