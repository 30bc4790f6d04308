#!/usr/bin/env bash
# Static checks of the Helm chart charts/sharedip (no cluster needed):
#
#   * `helm lint --strict` with the values files in charts/sharedip/ci/;
#   * `helm template` of each, parsed and checked object by object (kinds, names, labels, the
#     operator pod's security settings, env, probes, token mount, least-privilege RBAC (the
#     Service controller's rules only with services.enabled), no token leaking outside its
#     Secret; the node agent DaemonSet's host network, non-privileged NET_ADMIN-only security
#     context, NODE_NAME from spec.nodeName, state hostPath,
#     tolerations, priority class, probes, environment (each variable one the agent reads in
#     node-agent/src/config.rs) and its exact RBAC; HTTPS-only ports and probes, the
#     ServiceMonitors scraping over HTTPS with a bearer token, the metrics-reader ClusterRole,
#     the uninstall hook Job, ...);
#   * NOTES.txt renders;
#   * values that must be rejected (by values.schema.json or by the templates) really are;
#   * the CRD in the chart equals crds/ (written by `cargo run -p sharedip-operator --bin crdgen`),
#     the examples (documentation addresses, or none: allocated) validate against it, and the
#     chart README documents every value;
#   * `helm package` works.
#
# helm: $HELM, else ${SHAREDIP_CACHE_DIR:-$HOME/.cache/sharedip}/bin/helm (built by
# e2e/scripts/build-control-plane.sh), else `helm` on PATH.
# Needs python3 with PyYAML (and jsonschema for the example check; skipped without it).
# Environment: SHAREDIP_REQUIRE_CRD=1 fails when the generated CRD is missing (default: skip);
# SHAREDIP_KUBE_VERSION (default 1.34.0) is the Kubernetes version rendered for.
#
# Usage: e2e/scripts/check-chart.sh            exit 0 when every check passes
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CHART="${SHAREDIP_CHART_DIR:-$ROOT/charts/sharedip}"  # override: to check a modified copy
CACHE_DIR="${SHAREDIP_CACHE_DIR:-$HOME/.cache/sharedip}"
NS=sharedip-system
RELEASE=sharedip
# Kubernetes version to render for: helm's built-in default depends on how helm was built
# (1.20 without release ldflags), so it is always given explicitly.
KUBE_VERSION="${SHAREDIP_KUBE_VERSION:-1.34.0}"

find_helm() {
  if [[ -n "${HELM:-}" ]]; then echo "$HELM"; return; fi
  if [[ -x "$CACHE_DIR/bin/helm" ]]; then echo "$CACHE_DIR/bin/helm"; return; fi
  if command -v helm >/dev/null 2>&1; then command -v helm; return; fi
  echo "check-chart: helm not found; run e2e/scripts/build-control-plane.sh (builds $CACHE_DIR/bin/helm) or set HELM=/path/to/helm" >&2
  exit 2
}
HELM=$(find_helm)
command -v python3 >/dev/null || { echo "check-chart: python3 is required" >&2; exit 2; }
python3 -c 'import yaml' 2>/dev/null || { echo "check-chart: python3 PyYAML is required (apt-get install python3-yaml)" >&2; exit 2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/check-chart.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# Keep helm away from the user's helm config, cache and repositories.
export HELM_CACHE_HOME="$WORK/helm/cache" HELM_CONFIG_HOME="$WORK/helm/config" HELM_DATA_HOME="$WORK/helm/data"

FAILURES=0
pass() { printf '  ok    %s\n' "$1"; }
fail() { printf '  FAIL  %s\n' "$1"; FAILURES=$((FAILURES + 1)); }
section() { printf '\n== %s\n' "$1"; }

echo "check-chart: helm $("$HELM" version --short), Kubernetes $KUBE_VERSION, $CHART"

# ------------------------------------------------------------------ python checks of rendered YAML
cat >"$WORK/check_rendered.py" <<'PY'
"""Checks of one `helm template` output. argv: scenario, file, release namespace, and the node
agent's config.rs (the environment variables it reads; may be missing)."""
import base64
import os
import re
import sys

import yaml

scenario, path, ns, agent_config = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
# Scenarios without the node agent (agent.enabled=false); "no-rbac" has neither component's RBAC.
AGENT = scenario != "agent-disabled"
# The Service controller (services.enabled) runs, and its RBAC rules exist, except here.
SERVICES = scenario != "services-disabled"
TOKEN = "0000000000000000000000000000000000000000000000000000000000000000"
errors = []


def check(cond, msg):
    if not cond:
        errors.append(msg)


with open(path) as f:
    docs = [d for d in yaml.safe_load_all(f) if d]

objs = {}
for d in docs:
    check(isinstance(d, dict) and "kind" in d and "apiVersion" in d, f"not a Kubernetes object: {d!r:.80}")
    key = (d["kind"], d["metadata"]["name"])
    check(key not in objs, f"duplicate object {key}")
    objs[key] = d


def by_kind(kind):
    return [o for (k, _), o in objs.items() if k == kind]


def component(o):
    return (o["metadata"].get("labels") or {}).get("app.kubernetes.io/component")


def of(kind, comp):
    """Objects of `kind` that belong to component `comp` ("operator", "agent")."""
    return [o for o in by_kind(kind) if component(o) == comp]


def one(kind):
    found = by_kind(kind)
    check(len(found) == 1, f"expected exactly one {kind}, found {len(found)}")
    return found[0] if found else {}


CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
for (kind, name), o in objs.items():
    md = o["metadata"]
    check(len(name) <= 63, f"{kind}/{name}: name longer than 63 characters")
    labels = md.get("labels") or {}
    for label in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by",
                  "helm.sh/chart", "app.kubernetes.io/version"):
        check(label in labels, f"{kind}/{name}: label {label} missing")
    for k, v in labels.items():
        check(isinstance(v, str) and len(v) <= 63, f"{kind}/{name}: label {k}={v!r} not a short string")
    if kind in CLUSTER_SCOPED:
        check("namespace" not in md, f"{kind}/{name}: cluster-scoped object with a namespace")
    elif kind != "ServiceMonitor":
        check(md.get("namespace") == ns, f"{kind}/{name}: namespace {md.get('namespace')!r}, want {ns!r}")

# The token may appear only (base64) in its Secret: never in env, args, annotations or names.
if TOKEN in open(path).read():
    errors.append("the Linode token appears in clear text in the rendered output")

kinds = sorted({k for k, _ in objs})
expected_kinds = {
    "token": ["ClusterRole", "ClusterRoleBinding", "Deployment", "Job", "PodDisruptionBudget", "Role",
              "RoleBinding", "Secret", "ServiceAccount"],
    "existing-secret": ["ClusterRole", "ClusterRoleBinding", "Deployment", "Job", "PodDisruptionBudget", "Role",
                        "RoleBinding", "ServiceAccount"],
    "full": ["ClusterRole", "ClusterRoleBinding", "Deployment", "Job", "PodDisruptionBudget", "Role", "RoleBinding",
             "Service", "ServiceAccount", "ServiceMonitor"],
    "single-replica": ["ClusterRole", "ClusterRoleBinding", "Deployment", "Job", "Role", "RoleBinding", "Secret",
                       "ServiceAccount"],
    "no-rbac": ["Deployment", "Job", "PodDisruptionBudget", "Secret"],
    "agent-disabled": ["ClusterRole", "ClusterRoleBinding", "Deployment", "Job", "PodDisruptionBudget", "Role",
                       "RoleBinding", "Secret", "ServiceAccount"],
    "services-disabled": ["ClusterRole", "ClusterRoleBinding", "Deployment", "Job", "PodDisruptionBudget", "Role",
                          "RoleBinding", "Secret", "ServiceAccount"],
}[scenario]
if AGENT:
    expected_kinds = sorted(set(expected_kinds) | {"DaemonSet"})
check(kinds == expected_kinds, f"kinds {kinds}, want {expected_kinds}")

# Exactly these objects per component (names included): the agent adds a DaemonSet, and unless
# RBAC is off its ServiceAccount, ClusterRole and ClusterRoleBinding; nothing namespaced-RBAC.
agent_sa = "custom-agent-sa" if scenario == "full" else "sharedip-agent"
want_agent = set()
if AGENT:
    want_agent = {("DaemonSet", "sharedip-agent")}
    if scenario != "no-rbac":
        want_agent |= {("ServiceAccount", agent_sa), ("ClusterRole", "sharedip-agent"),
                       ("ClusterRoleBinding", "sharedip-agent")}
    if scenario == "full":
        want_agent |= {("Service", "sharedip-agent-metrics"), ("ServiceMonitor", "sharedip-agent")}
got_agent = {k for k, o in objs.items() if component(o) == "agent"}
check(got_agent == want_agent, f"agent objects {sorted(got_agent)}, want {sorted(want_agent)}")
for k, o in objs.items():
    check(component(o) in ("operator", "agent", "uninstall", "metrics-reader", None), f"{k}: unknown component {component(o)!r}")

# ---------------------------------------------------------------- operator Deployment
dep = one("Deployment")
check(component(dep) == "operator", "the Deployment is not the operator's")
spec = dep.get("spec", {})
pod = spec.get("template", {}).get("spec", {})
want_replicas = {"full": 3, "single-replica": 1}.get(scenario, 2)
check(spec.get("replicas") == want_replicas, f"replicas {spec.get('replicas')}, want {want_replicas}")
sel = spec.get("selector", {}).get("matchLabels", {})
tpl_labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
check(sel and all(tpl_labels.get(k) == v for k, v in sel.items()), "pod labels do not match the selector")
check(sel.get("app.kubernetes.io/component") == "operator", "selector lacks component=operator")

containers = pod.get("containers", [])
check(len(containers) == 1, "want one container")
c = containers[0] if containers else {}
image = c.get("image", "")
if scenario == "full":
    check(image.endswith("@sha256:" + "0123456789abcdef" * 4), f"image {image!r} not pinned by the digest")
else:
    check(image == "ghcr.io/sharedip/sharedip-operator:0.1.0", f"image {image!r}, want the appVersion tag")

env = {}
for e in c.get("env", []):
    check("value" in e or "valueFrom" in e, f"env {e.get('name')} has neither value nor valueFrom")
    if "value" in e:
        check(isinstance(e["value"], str), f"env {e['name']} value is not a string: {e['value']!r}")
    env[e["name"]] = e
field_ref = lambda n: env.get(n, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
check(field_ref("POD_NAME") == "metadata.name", "POD_NAME not from the downward API")
check(field_ref("POD_NAMESPACE") == "metadata.namespace", "POD_NAMESPACE not from the downward API")
val = lambda n: env.get(n, {}).get("value")
check(val("LINODE_TOKEN_FILE") == "/etc/sharedip/linode/token", "LINODE_TOKEN_FILE")
check(val("LEADER_ELECTION") == "true", "LEADER_ELECTION must be true")
check(val("OPERATOR_DEPLOYMENT") == dep["metadata"]["name"], f"OPERATOR_DEPLOYMENT {val('OPERATOR_DEPLOYMENT')!r}")
port = 9090 if scenario == "full" else 8080
check(val("HTTP_ADDR") == ("[::]:9090" if scenario == "full" else "0.0.0.0:8080"), f"HTTP_ADDR {val('HTTP_ADDR')!r}")
check(val("LOG_FORMAT") in ("json", "text"), "LOG_FORMAT")
check(bool(val("RUST_LOG")), "RUST_LOG")
if scenario == "full":
    check(val("LINODE_API_URL") == "http://127.0.0.1:8090/v4", "LINODE_API_URL")
    check(val("LEASE_NAME") == "my-lease", "LEASE_NAME")
    check(val("SHARE_BATCH_WINDOW") == "250ms", "SHARE_BATCH_WINDOW")
    check(val("MEMBERSHIP_HOLD_DOWN") == "5s", "MEMBERSHIP_HOLD_DOWN")
    check(val("EXTRA") == "1", "extraEnv")
    check(val("CLUSTER_ID") == "prod-eu-1", "CLUSTER_ID")
    check(val("SWEEP_INTERVAL") == "5m", "SWEEP_INTERVAL")
    # Allocated addresses; the ids comma-joined as integers (the values file makes them floats).
    check(val("IP_HOLDER") == "off", f"IP_HOLDER {val('IP_HOLDER')!r}")
    check(val("IP_HOLDER_LINODES") == "123,4567890123", f"IP_HOLDER_LINODES {val('IP_HOLDER_LINODES')!r}")
    check(val("ADOPT_CCM_HOLDERS") == "true", f"ADOPT_CCM_HOLDERS {val('ADOPT_CCM_HOLDERS')!r}")
    check(val("CCM_HOLDER_SUFFIX") == "prod-eu", f"CCM_HOLDER_SUFFIX {val('CCM_HOLDER_SUFFIX')!r}")
    check(val("EXPERIMENTAL_RESERVED_IPS") == "true", f"EXPERIMENTAL_RESERVED_IPS {val('EXPERIMENTAL_RESERVED_IPS')!r}")
else:
    check(val("LINODE_API_URL") == "https://api.linode.com/v4", "LINODE_API_URL")
    check(val("LEASE_NAME") == "sharedip-operator", f"LEASE_NAME {val('LEASE_NAME')!r}")
    check("SHARE_BATCH_WINDOW" not in env, "SHARE_BATCH_WINDOW set although empty")
    check("MEMBERSHIP_HOLD_DOWN" not in env, "MEMBERSHIP_HOLD_DOWN set although empty")
    check("CLUSTER_ID" not in env, "CLUSTER_ID set although empty (the default is kube-system's UID)")
    check("SWEEP_INTERVAL" not in env, "SWEEP_INTERVAL set although empty")
    for n in ("IP_HOLDER", "IP_HOLDER_LINODES", "ADOPT_CCM_HOLDERS", "CCM_HOLDER_SUFFIX", "EXPERIMENTAL_RESERVED_IPS"):
        check(n not in env, f"{n} set although the value is empty or false (the operator's default applies)")
# LoadBalancer Services: SERVICES always explicit; the rest only while the controller runs, the
# node selectors only when given.
SERVICE_ENV = ("LOAD_BALANCER_CLASS", "SERVE_CLASSLESS_SERVICES", "SERVICE_PRIMARY_NODES", "SERVICE_SECONDARY_NODES")
if not SERVICES:
    check(val("SERVICES") == "false", f"SERVICES {val('SERVICES')!r}, want 'false'")
    for n in SERVICE_ENV:
        check(n not in env, f"{n} set although services.enabled=false")
elif scenario == "full":
    want_svc_env = {"SERVICES": "true", "LOAD_BALANCER_CLASS": "example.com/failover",
                    "SERVE_CLASSLESS_SERVICES": "true", "SERVICE_PRIMARY_NODES": "node-role=ingress,zone in (a,b)",
                    "SERVICE_SECONDARY_NODES": "!node-role"}
    for n, v in want_svc_env.items():
        check(val(n) == v, f"{n} {val(n)!r}, want {v!r}")
else:
    for n, v in {"SERVICES": "true", "LOAD_BALANCER_CLASS": "sharedip.io/linode", "SERVE_CLASSLESS_SERVICES": "false"}.items():
        check(val(n) == v, f"{n} {val(n)!r}, want {v!r}")
    for n in ("SERVICE_PRIMARY_NODES", "SERVICE_SECONDARY_NODES"):
        check(n not in env, f"{n} set although empty (the operator's default applies)")

# HTTPS only: the probes use HTTPS too (no token needed for them).
ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
check(ports == {"https": port}, f"container ports {ports}, want https {port}")
for probe, path_ in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
    hg = c.get(probe, {}).get("httpGet", {})
    check(hg.get("path") == path_ and hg.get("port") == "https" and hg.get("scheme") == "HTTPS",
          f"{probe} not on {path_} port https scheme HTTPS")
    check("enabled" not in c.get(probe, {}), f"{probe} carries the values-only key 'enabled'")
# The certificate: from the TLS Secret when given (files re-read on renewal), else self-signed.
op_tls = "operator-tls" if scenario == "full" else None
if op_tls:
    check(val("TLS_CERT_FILE") == "/etc/sharedip/tls/tls.crt" and val("TLS_KEY_FILE") == "/etc/sharedip/tls/tls.key",
          "operator TLS_CERT_FILE / TLS_KEY_FILE")
else:
    check("TLS_CERT_FILE" not in env and "TLS_KEY_FILE" not in env, "operator TLS files set without a Secret")
res = c.get("resources", {})
check(res.get("requests", {}).get("memory") and res.get("limits", {}).get("memory"), "memory request/limit missing")

sc = c.get("securityContext", {})
check(sc.get("runAsNonRoot") is True, "container runAsNonRoot")
check(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
check(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation")
check(sc.get("capabilities", {}).get("drop") == ["ALL"] and not sc.get("capabilities", {}).get("add"),
      "capabilities must drop ALL and add none")
check(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "container seccomp RuntimeDefault")
check("privileged" not in sc or sc["privileged"] is False, "privileged")
psc = pod.get("securityContext", {})
check(psc.get("runAsNonRoot") is True and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
      "pod securityContext: runAsNonRoot + seccomp RuntimeDefault")
check(not pod.get("hostNetwork") and not pod.get("hostPID"), "operator must not use host namespaces")

mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
tm = mounts.get("linode-token", {})
check(tm.get("mountPath") == "/etc/sharedip/linode" and tm.get("readOnly") is True, "token mount")
vols = {v["name"]: v for v in pod.get("volumes", [])}
if op_tls:
    check(mounts.get("tls", {}).get("mountPath") == "/etc/sharedip/tls" and mounts["tls"].get("readOnly") is True,
          "operator TLS mount")
    check(vols.get("tls", {}).get("secret", {}).get("secretName") == op_tls, "operator TLS volume")
else:
    check("tls" not in mounts and "tls" not in vols, "operator TLS volume without a Secret")
sv = vols.get("linode-token", {}).get("secret", {})
want_secret, want_key = {
    "existing-secret": ("my-linode-token", "api-token"),
    "full": ("my-linode-token", "token"),
}.get(scenario, ("sharedip-linode", "token"))
check(sv.get("secretName") == want_secret, f"token volume secret {sv.get('secretName')!r}, want {want_secret!r}")
check(sv.get("items") == [{"key": want_key, "path": "token"}], f"token volume items {sv.get('items')}")
check(sv.get("defaultMode") == 0o440, f"token file mode {sv.get('defaultMode')}")

sa_name = "custom-sa" if scenario == "full" else "sharedip-operator"
check(pod.get("serviceAccountName") == sa_name, f"serviceAccountName {pod.get('serviceAccountName')!r}")
check(pod.get("automountServiceAccountToken") is True, "the operator needs its ServiceAccount token")

aff = pod.get("affinity", {}).get("podAntiAffinity", {})
if scenario == "full":
    req = aff.get("requiredDuringSchedulingIgnoredDuringExecution", [])
    check(req and req[0]["labelSelector"]["matchLabels"] == sel, "hard anti-affinity on the operator pods")
    tsc = pod.get("topologySpreadConstraints", [])
    check(tsc and tsc[0].get("labelSelector", {}).get("matchLabels") == sel, "spread constraint gets the selector")
    check(pod.get("imagePullSecrets") == [{"name": "registry-credentials"}], "imagePullSecrets")
    check(pod.get("priorityClassName") == "system-cluster-critical", "priorityClassName")
else:
    pref = aff.get("preferredDuringSchedulingIgnoredDuringExecution", [])
    check(pref and pref[0]["podAffinityTerm"]["labelSelector"]["matchLabels"] == sel
          and pref[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname",
          "soft anti-affinity over kubernetes.io/hostname")

# ---------------------------------------------------------------- PDB
for pdb in by_kind("PodDisruptionBudget"):
    check(pdb["spec"]["selector"]["matchLabels"] == sel, "PDB selector != Deployment selector")
    if scenario == "full":
        check(pdb["spec"].get("maxUnavailable") == 1 and "minAvailable" not in pdb["spec"], "PDB maxUnavailable")
    else:
        check(pdb["spec"].get("minAvailable") == 1, "PDB minAvailable 1")

# ---------------------------------------------------------------- token Secret
for s in by_kind("Secret"):
    data = s.get("data", {})
    check(list(data) == ["token"], f"Secret keys {list(data)}")
    check(base64.b64decode(data.get("token", "")).decode() == TOKEN, "Secret token value")
    check(s["metadata"]["name"] == "sharedip-linode", "Secret name")

# ---------------------------------------------------------------- RBAC: exactly the needed rules
def norm(rules):
    out = set()
    for r in rules:
        for g in r.get("apiGroups", []):
            for res in r.get("resources", []):
                for v in r.get("verbs", []):
                    out.add((g, res, v))
    return out


def expand(table):
    return {(g, r, v) for (g, r), verbs in table.items() for v in verbs}


# Both components check the bearer tokens of their /metrics (and the agent's /status) requests
# with the API server: TokenReview and SubjectAccessReview, nothing else of auth-delegator.
REVIEWS = {
    ("authentication.k8s.io", "tokenreviews"): ["create"],
    ("authorization.k8s.io", "subjectaccessreviews"): ["create"],
}
WANT_CLUSTER = expand({
    ("sharedip.io", "sharedips"): ["get", "list", "watch", "patch", "update"],
    ("sharedip.io", "sharedips/status"): ["get", "patch", "update"],
    ("sharedip.io", "sharedips/finalizers"): ["update"],
    ("", "nodes"): ["get", "list", "watch"],
    ("events.k8s.io", "events"): ["create", "patch"],
    ("", "events"): ["create", "patch"],
    **REVIEWS,
})
# The default cluster identity is kube-system's UID: only when no clusterId is set.
if scenario != "full":
    WANT_CLUSTER |= expand({("", "namespaces"): ["get"]})
# The Service controller: it creates and deletes the Services' SharedIPs (server-side apply of a
# new object is authorized as create), patches Services (finalizer, address annotation) and their
# status (server-side apply), and reads EndpointSlices. Nothing of it without services.enabled.
SERVICE_RULES = expand({
    ("sharedip.io", "sharedips"): ["create", "delete"],
    ("", "services"): ["get", "list", "watch", "patch"],
    ("", "services/status"): ["patch"],
    ("discovery.k8s.io", "endpointslices"): ["get", "list", "watch"],
})
if SERVICES:
    WANT_CLUSTER |= SERVICE_RULES
WANT_NS = expand({
    ("coordination.k8s.io", "leases"): ["get", "list", "watch", "create", "update", "patch"],
    ("", "configmaps"): ["get", "create", "patch"],
    ("apps", "deployments"): ["get"],
})
# Rules that must be narrowed to named objects.
WANT_NAMES = {("", "namespaces"): ["kube-system"], ("apps", "deployments"): [dep["metadata"]["name"]]}
# The node agent runs on every node: read-only on Nodes, SharedIPs and Pods, its status entry by
# server-side apply (patch), Events. No Secrets, no Leases, no writes to Nodes or Pods.
WANT_AGENT = expand({
    ("", "nodes"): ["get", "list", "watch"],
    ("sharedip.io", "sharedips"): ["get", "list", "watch"],
    ("sharedip.io", "sharedips/status"): ["get", "patch"],
    ("", "pods"): ["get", "list", "watch"],
    ("events.k8s.io", "events"): ["create", "patch"],
    ("", "events"): ["create", "patch"],
    **REVIEWS,
})
SA_OF = {"operator": sa_name, "agent": agent_sa}
# Who may read /metrics: `get` on that non-resource URL and nothing else; bound to the
# subjects of metricsReader.subjects only.
want_reader = scenario != "no-rbac"
readers = [r for r in by_kind("ClusterRole") if component(r) == "metrics-reader"]
check(len(readers) == (1 if want_reader else 0), f"{len(readers)} metrics-reader ClusterRoles")
for r in readers:
    check(r["metadata"]["name"] == "sharedip-metrics-reader", f"metrics-reader name {r['metadata']['name']}")
    check(r.get("rules") == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}],
          f"metrics-reader rules {r.get('rules')}")
reader_bindings = [b for b in by_kind("ClusterRoleBinding") if component(b) == "metrics-reader"]
if scenario == "full":
    check(len(reader_bindings) == 1 and reader_bindings[0]["subjects"]
          == [{"kind": "ServiceAccount", "name": "prometheus-k8s", "namespace": "monitoring"}],
          f"metrics-reader binding {reader_bindings}")
else:
    check(not reader_bindings, "metrics-reader bound without metricsReader.subjects")
for role in by_kind("ClusterRole") + by_kind("Role"):
    rules = role.get("rules", [])
    got = norm(rules)
    comp = component(role)
    if comp == "metrics-reader":
        continue
    if comp == "agent":
        check(role["kind"] == "ClusterRole", f"agent {role['kind']}/{role['metadata']['name']}: only a ClusterRole")
        want = WANT_AGENT
    else:
        want = WANT_CLUSTER if role["kind"] == "ClusterRole" else WANT_NS
    what = f"{comp} {role['kind']}"
    check(got == want, f"{what} rules differ: extra {sorted(got - want)}, missing {sorted(want - got)}")
    for g, res, v in got:
        check("*" not in (g, res, v), f"{what}: wildcard in rule {(g, res, v)}")
        check(res.split("/")[0] != "secrets", f"{what}: grants access to Secrets")
        if comp == "agent":
            check(res.split("/")[0] != "leases", f"{what}: grants access to Leases")
            check(v in ("get", "list", "watch") or res in ("sharedips/status", "events")
                  or (g, res) in REVIEWS, f"{what}: write access {(g, res, v)}")
    for r in rules:
        check(not r.get("nonResourceURLs"), f"{what}: unexpected rule {r}")
        for g in r.get("apiGroups", []):
            for res in r.get("resources", []):
                want_names = WANT_NAMES.get((g, res)) if comp == "operator" else None
                check(r.get("resourceNames") == want_names,
                      f"{what}: {g}/{res} resourceNames {r.get('resourceNames')}, want {want_names}")
for b in by_kind("ClusterRoleBinding") + by_kind("RoleBinding"):
    ref_kind = "ClusterRole" if b["kind"] == "ClusterRoleBinding" else "Role"
    check(b["roleRef"]["kind"] == ref_kind and (ref_kind, b["roleRef"]["name"]) in objs,
          f"{b['kind']}/{b['metadata']['name']} refers to a missing {ref_kind}")
    check(component(objs.get((ref_kind, b["roleRef"]["name"]), {"metadata": {}})) == component(b),
          f"{b['kind']}/{b['metadata']['name']} binds another component's {ref_kind}")
    if component(b) == "metrics-reader":
        continue
    want_sa = SA_OF.get(component(b))
    check(b["subjects"] == [{"kind": "ServiceAccount", "name": want_sa, "namespace": ns}],
          f"{b['kind']} subjects {b['subjects']}")
for sa in by_kind("ServiceAccount"):
    check(sa["metadata"]["name"] == SA_OF.get(component(sa)), f"ServiceAccount name {sa['metadata']['name']}")
    check(sa["metadata"]["name"] != sa_name or component(sa) == "operator", "agent and operator share a ServiceAccount")

# ---------------------------------------------------------------- uninstall hook Job
job = one("Job")
check(component(job) == "uninstall" and job["metadata"]["name"] == "sharedip-uninstall", "uninstall Job name / component")
ann = job["metadata"].get("annotations", {})
check(ann.get("helm.sh/hook") == "pre-delete", f"uninstall Job hook {ann.get('helm.sh/hook')!r}")
check(ann.get("helm.sh/hook-delete-policy") == "before-hook-creation,hook-succeeded", "uninstall Job delete policy")
jspec = job.get("spec", {})
check(jspec.get("activeDeadlineSeconds") == (600 if scenario == "full" else 300), "uninstall activeDeadlineSeconds")
jtpl = jspec.get("template", {})
jpod = jtpl.get("spec", {})
jlabels = jtpl.get("metadata", {}).get("labels", {})
check(not all(jlabels.get(k) == v for k, v in sel.items()), "the operator's selector matches the uninstall pod")
check(jpod.get("restartPolicy") == "Never", "uninstall restartPolicy Never")
check(jpod.get("serviceAccountName") == sa_name, "the uninstall Job runs with the operator's ServiceAccount")
jc = (jpod.get("containers") or [{}])[0]
check(jc.get("image") == image, "the uninstall Job runs the operator image")
check(jc.get("args") == ["uninstall"] and "command" not in jc, f"uninstall args {jc.get('args')}")
check(jc.get("securityContext") == sc, "uninstall container securityContext = the operator's")
check(jpod.get("securityContext") == psc, "uninstall pod securityContext = the operator's")
jenv = {e["name"]: e for e in jc.get("env", [])}
for n in ("POD_NAME", "POD_NAMESPACE", "LINODE_TOKEN_FILE", "LINODE_API_URL", "LEASE_NAME", "OPERATOR_DEPLOYMENT",
          "CLUSTER_ID", "LOG_FORMAT", "RUST_LOG"):
    check(jenv.get(n) == env.get(n), f"uninstall env {n} {jenv.get(n)} differs from the operator's {env.get(n)}")
check(jenv.get("UNINSTALL_TIMEOUT", {}).get("value") == ("570s" if scenario == "full" else "270s"),
      f"UNINSTALL_TIMEOUT {jenv.get('UNINSTALL_TIMEOUT')}")
check({m["name"]: m for m in jc.get("volumeMounts", [])}.get("linode-token") == tm, "uninstall token mount")
check({v["name"]: v for v in jpod.get("volumes", [])}.get("linode-token", {}).get("secret") == sv, "uninstall token volume")

# ---------------------------------------------------------------- metrics
def scrape_checks(comp, svc, sm, port, tls_config):
    """The Service targets the HTTPS port; the ServiceMonitor scrapes it over HTTPS with
    Prometheus' ServiceAccount token (never plain HTTP, never without a token)."""
    p = svc["spec"]["ports"][0]
    check(p["name"] == "https-metrics" and p["targetPort"] == "https" and p["port"] == port,
          f"{comp} metrics Service port {p}")
    check(sm["metadata"]["labels"].get("release") == "kube-prometheus-stack", f"{comp} ServiceMonitor labels")
    ep = sm["spec"]["endpoints"][0]
    check(ep["port"] == "https-metrics" and ep["path"] == "/metrics", f"{comp} ServiceMonitor endpoint")
    check(ep.get("scheme") == "https", f"{comp} ServiceMonitor scheme {ep.get('scheme')!r}, want https")
    check(ep.get("bearerTokenFile") == "/var/run/secrets/kubernetes.io/serviceaccount/token",
          f"{comp} ServiceMonitor without the ServiceAccount token")
    check(ep.get("tlsConfig") == tls_config, f"{comp} ServiceMonitor tlsConfig {ep.get('tlsConfig')}")
    check(all(svc["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items()),
          f"{comp} ServiceMonitor does not select its metrics Service")


if scenario == "full":
    svc = of("Service", "operator")
    sm = of("ServiceMonitor", "operator")
    check(len(svc) == 1 and len(sm) == 1, "one operator metrics Service and ServiceMonitor")
    check(svc[0]["spec"]["selector"] == sel, "metrics Service selector")
    scrape_checks("operator", svc[0], sm[0], 9090,
                  {"ca": {"secret": {"name": "operator-tls", "key": "ca.crt"}},
                   "serverName": "sharedip-operator-metrics.sharedip-system.svc"})
    asvc = of("Service", "agent")
    asm = of("ServiceMonitor", "agent")
    check(len(asvc) == 1 and len(asm) == 1, "one agent metrics Service and ServiceMonitor")
    if asvc and asm:
        check(asvc[0]["spec"].get("clusterIP") == "None", "agent metrics Service is not headless")
        check(asvc[0]["spec"]["selector"].get("app.kubernetes.io/component") == "agent", "agent metrics Service selector")
        scrape_checks("agent", asvc[0], asm[0], 9181, {"insecureSkipVerify": True})
        relabel = asm[0]["spec"]["endpoints"][0].get("relabelings", [])
        check(relabel[:1] == [{"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}],
              f"agent ServiceMonitor relabelings {relabel}")

# ---------------------------------------------------------------- node agent DaemonSet
def agent_env_names():
    """Environment variables the agent reads (`env = "X"` in node-agent/src/config.rs)."""
    if not os.path.exists(agent_config):
        return None
    return set(re.findall(r'env\s*=\s*"([A-Z0-9_]+)"', open(agent_config).read()))


def seconds(d):
    m = re.fullmatch(r"([0-9]+)(ms|s|m)", d)
    n, unit = int(m.group(1)), m.group(2)
    return {"ms": -(-n // 1000), "s": n, "m": n * 60}[unit]


for ds in by_kind("DaemonSet"):
    full = scenario == "full"
    check(ds["metadata"]["name"] == "sharedip-agent" and component(ds) == "agent", "DaemonSet name / component")
    dspec = ds.get("spec", {})
    dsel = dspec.get("selector", {}).get("matchLabels", {})
    dtpl = dspec.get("template", {})
    dlabels = dtpl.get("metadata", {}).get("labels", {})
    check(dsel.get("app.kubernetes.io/component") == "agent", "agent selector lacks component=agent")
    check(dsel and all(dlabels.get(k) == v for k, v in dsel.items()), "agent pod labels do not match its selector")
    check(not all(dlabels.get(k) == v for k, v in sel.items()), "the operator's selector matches the agent pods")
    check(not all(tpl_labels.get(k) == v for k, v in dsel.items()), "the agent's selector matches the operator pods")
    us = dspec.get("updateStrategy", {})
    ru = us.get("rollingUpdate", {})
    check(us.get("type") == "RollingUpdate" and ru.get("maxUnavailable") == (2 if full else 1),
          f"updateStrategy {us}")
    check(ru.get("maxSurge", 0) == 0, "maxSurge must be 0 (two agents on one node)")
    check(dspec.get("minReadySeconds") == (20 if full else 10), f"minReadySeconds {dspec.get('minReadySeconds')}")

    apod = dtpl.get("spec", {})
    check(apod.get("hostNetwork") is True, "agent: hostNetwork must be true")
    check(apod.get("dnsPolicy") == "ClusterFirstWithHostNet", "agent: dnsPolicy ClusterFirstWithHostNet")
    check(not apod.get("hostPID") and not apod.get("hostIPC"), "agent: no hostPID / hostIPC")
    check(apod.get("serviceAccountName") == agent_sa, f"agent serviceAccountName {apod.get('serviceAccountName')!r}")
    check(apod.get("automountServiceAccountToken") is True, "the agent needs its ServiceAccount token")
    check(apod.get("priorityClassName") == ("custom-node-critical" if full else "system-node-critical"),
          f"agent priorityClassName {apod.get('priorityClassName')!r}")
    want_tol = ([{"key": "dedicated", "operator": "Equal", "value": "ingress", "effect": "NoSchedule"}]
                if full else [{"operator": "Exists"}])
    check(apod.get("tolerations") == want_tol, f"agent tolerations {apod.get('tolerations')}")
    if full:
        check(apod.get("nodeSelector") == {"sharedip.io/agent": "true"}, "agent nodeSelector")
        check("nodeAffinity" in apod.get("affinity", {}), "agent affinity")
        check(apod.get("imagePullSecrets") == [{"name": "registry-credentials"}], "agent imagePullSecrets")
        check(dlabels.get("team") == "network", "agent podLabels")
        check(dtpl["metadata"].get("annotations", {}).get("prometheus.io/scrape") == "false", "agent podAnnotations")
        check(ds["metadata"].get("annotations", {}).get("example.com/owner") == "network", "daemonSetAnnotations")
    else:
        check("nodeSelector" not in apod and "affinity" not in apod, "agent: no node restriction by default")

    acs = apod.get("containers", [])
    check(len(acs) == 1, "agent: want one container")
    ac = acs[0] if acs else {}
    aimage = ac.get("image", "")
    if full:
        check(aimage == "ghcr.io/sharedip/sharedip-node-agent@sha256:" + "fedcba9876543210" * 4,
              f"agent image {aimage!r} not pinned by the digest")
    else:
        check(aimage == "ghcr.io/sharedip/sharedip-node-agent:0.1.0", f"agent image {aimage!r}")
    check(ac.get("args") == (["run", "--neighbor-count=2"] if full else ["run"]), f"agent args {ac.get('args')}")
    check("command" not in ac, "agent: the image's entrypoint must not be replaced")

    asc = ac.get("securityContext", {})
    psc_a = apod.get("securityContext", {})
    check(not asc.get("privileged") and not psc_a.get("privileged"), "agent must not be privileged")
    check(asc.get("allowPrivilegeEscalation") is False, "agent allowPrivilegeEscalation")
    check(asc.get("readOnlyRootFilesystem") is True, "agent readOnlyRootFilesystem")
    check(asc.get("runAsUser") == 0, "agent runAsUser 0 (capabilities are only effective for root)")
    caps = asc.get("capabilities", {})
    check(caps.get("drop") == ["ALL"], f"agent capabilities drop {caps.get('drop')}, want [ALL]")
    check(caps.get("add") == ["NET_ADMIN"], f"agent capabilities add {caps.get('add')}, want only NET_ADMIN")
    check((asc.get("seccompProfile") or psc_a.get("seccompProfile") or {}).get("type") == "RuntimeDefault",
          "agent seccomp RuntimeDefault")
    check(not psc_a.get("sysctls"), "agent: no sysctls")

    aenv = {}
    for e in ac.get("env", []):
        check("value" in e or "valueFrom" in e, f"agent env {e.get('name')} has neither value nor valueFrom")
        if "value" in e:
            check(isinstance(e["value"], str), f"agent env {e['name']} value is not a string: {e['value']!r}")
        check(e["name"] not in aenv, f"agent env {e['name']} twice")
        aenv[e["name"]] = e
    aval = lambda n: aenv.get(n, {}).get("value")
    check(aenv.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName",
          "agent NODE_NAME not from the downward API's spec.nodeName")
    aport = 9181 if full else 9180
    want_env = {
        "HTTP_ADDR": "127.0.0.1:9181" if full else "0.0.0.0:9180",
        "STATE_FILE": "/var/lib/sharedip/bound.json",
        "INTERFACE": "dummy0" if full else "lo",
        "SHUTDOWN_TIMEOUT": "45s" if full else "20s",
        "ROUTE_SERVER_GRACE": "90s" if full else "240s",
        "HANDOVER_TIMEOUT": "10s" if full else "30s",
        "PROPAGATION_MARGIN": "15s" if full else "20s",
        "DATA_PATH_SETTLE": "3s" if full else "2s",
        "WITHDRAW_ON_CORDON": "true" if full else "false",
        "FLOW_HANDOVER": "false" if full else "true",
        "FLOW_HANDOVER_PORT": "4800" if full else "4799",
        "TAKEOVER_TIMEOUT": "5s" if full else "10s",
        "LOG_FORMAT": "text" if full else "json",
        "LOG_LEVEL": "sharedip_node_agent=debug,info" if full else "info",
    }
    optional_env = {"DCID": "18", "NEIGHBOR_PATTERN": "2001:db8:%d:34::%d", "MULTIHOP_TTL": "10",
                    "LOCAL_ASN": "4200000001", "PEER_ASN": "65000", "PRIMARY_COMMUNITY": "63949:1:1",
                    "SECONDARY_COMMUNITY": "63949:1:2", "HOLD_TIME": "3", "UNBIND_DELAY": "3s",
                    "FLOW_HANDOVER_UPLINK": "eth0"}
    if full:
        want_env.update(optional_env)
        want_env.update({"TLS_CERT_FILE": "/etc/sharedip/tls/tls.crt", "TLS_KEY_FILE": "/etc/sharedip/tls/tls.key"})
    for n, v in want_env.items():
        check(aval(n) == v, f"agent env {n}={aval(n)!r}, want {v!r}")
    extra = set(aenv) - set(want_env) - {"NODE_NAME"}
    check(not extra, f"agent env: unexpected {sorted(extra)} (unset options must not be passed)")
    known = agent_env_names()
    if known is not None:
        unknown = set(aenv) - known
        check(not unknown, f"agent env {sorted(unknown)} not read by the agent (node-agent/src/config.rs)")

    # The node's port is HTTPS only; the kubelet probes it with HTTPS.
    aports = {p["name"]: p for p in ac.get("ports", [])}
    check(list(aports) == ["https"] and aports["https"].get("containerPort") == aport,
          f"agent container ports {aports}, want https {aport}")
    check("hostPort" not in aports.get("https", {}) or aports["https"]["hostPort"] == aport, "agent hostPort")
    for probe, path_ in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        pr = ac.get(probe, {})
        hg = pr.get("httpGet", {})
        check(hg.get("path") == path_ and hg.get("port") == "https" and hg.get("scheme") == "HTTPS",
              f"agent {probe} not on {path_} port https scheme HTTPS")
        check(hg.get("host") == ("127.0.0.1" if full else None), f"agent {probe} host {hg.get('host')!r}")
        check("enabled" not in pr, f"agent {probe} carries the values-only key 'enabled'")
    ares = ac.get("resources", {})
    check(ares.get("requests", {}).get("memory") and ares.get("limits", {}).get("memory"),
          "agent memory request/limit missing")
    check("cpu" not in ares.get("limits", {}), "agent: no CPU limit (throttling delays keepalives)")

    grace = apod.get("terminationGracePeriodSeconds")
    check(grace == (60 if full else 30), f"agent terminationGracePeriodSeconds {grace}")
    check(isinstance(grace, int) and grace > seconds(want_env["SHUTDOWN_TIMEOUT"]),
          "agent grace period not longer than SHUTDOWN_TIMEOUT")

    avols = {v["name"]: v for v in apod.get("volumes", [])}
    amounts = {m["name"]: m for m in ac.get("volumeMounts", [])}
    hp = avols.get("state", {}).get("hostPath", {})
    check(hp == {"path": "/var/lib/custom-sharedip" if full else "/var/lib/sharedip", "type": "DirectoryOrCreate"},
          f"agent state hostPath {hp}")
    check(amounts.get("state", {}).get("mountPath") == "/var/lib/sharedip" and not amounts["state"].get("readOnly"),
          "agent state mount at /var/lib/sharedip, writable")
    check(os.path.dirname(want_env["STATE_FILE"]) == amounts.get("state", {}).get("mountPath"),
          "STATE_FILE is not on the state volume")
    host_paths = [n for n, v in avols.items() if "hostPath" in v]
    check(host_paths == ["state"], f"agent hostPath volumes {host_paths}, want only the state directory")
    if full:
        check(avols.get("tls", {}).get("secret", {}).get("secretName") == "agent-tls", "agent TLS volume")
        check(amounts.get("tls", {}).get("mountPath") == "/etc/sharedip/tls" and amounts["tls"].get("readOnly") is True,
              "agent TLS mount")
    else:
        check("tls" not in avols and "tls" not in amounts, "agent TLS volume without a Secret")
    if full:
        check("tmp" in avols and amounts.get("tmp", {}).get("mountPath") == "/tmp", "agent extraVolumes/Mounts")

if errors:
    for e in errors:
        print(f"        {e}")
    sys.exit(1)
print(f"{len(docs)} objects ({', '.join(kinds)})")
PY

render() { # render <out-file> <helm args...>
  local out=$1; shift
  "$HELM" template "$RELEASE" "$CHART" --namespace "$NS" --kube-version "$KUBE_VERSION" "$@" >"$out" 2>"$out.err"
}

# ------------------------------------------------------------------ lint
section "helm lint --strict"
for values in "$CHART"/ci/*-values.yaml; do
  name=$(basename "$values")
  if "$HELM" lint --strict "$CHART" --namespace "$NS" --kube-version "$KUBE_VERSION" -f "$values" >"$WORK/lint.out" 2>&1; then
    pass "lint $name"
  else
    fail "lint $name"; sed 's/^/        /' "$WORK/lint.out"
  fi
done

# ------------------------------------------------------------------ render and check
section "helm template: rendered objects"
check_scenario() { # check_scenario <scenario> <label> <helm args...>
  local scenario=$1 label=$2; shift 2
  local out="$WORK/$scenario.yaml"
  if ! render "$out" "$@"; then
    fail "render $label"; sed 's/^/        /' "$out.err"; return
  fi
  if python3 "$WORK/check_rendered.py" "$scenario" "$out" "$NS" "$ROOT/node-agent/src/config.rs" >"$out.check"; then
    pass "render $label: $(cat "$out.check")"
  else
    fail "render $label"; cat "$out.check"
  fi
}
check_scenario token "defaults + token" -f "$CHART/ci/token-values.yaml"
check_scenario existing-secret "existingSecret" -f "$CHART/ci/existing-secret-values.yaml"
check_scenario full "every option" -f "$CHART/ci/full-values.yaml"
check_scenario single-replica "1 replica (no PDB)" -f "$CHART/ci/token-values.yaml" --set operator.replicaCount=1
check_scenario no-rbac "rbac.create=false" -f "$CHART/ci/token-values.yaml" --set operator.rbac.create=false \
  --set operator.serviceAccount.create=false --set operator.serviceAccount.name=sharedip-operator \
  --set agent.rbac.create=false --set agent.serviceAccount.create=false --set agent.serviceAccount.name=sharedip-agent \
  --set metricsReader.create=false
check_scenario agent-disabled "agent.enabled=false (operator only)" -f "$CHART/ci/token-values.yaml" \
  --set agent.enabled=false
check_scenario services-disabled "services.enabled=false (no Service controller, no rules for it)" \
  -f "$CHART/ci/token-values.yaml" --set services.enabled=false
# The uninstall hook can be turned off (then no Job at all).
if render "$WORK/no-hook.yaml" -f "$CHART/ci/token-values.yaml" --set operator.uninstall.enabled=false \
  && ! grep -q '^kind: Job$' "$WORK/no-hook.yaml"; then
  pass "render operator.uninstall.enabled=false: no hook Job"
else
  fail "render operator.uninstall.enabled=false"
fi
# A token passed with --set-file ends with a newline; the Secret must hold the bare token.
printf '0000000000000000000000000000000000000000000000000000000000000000\n' >"$WORK/token-file"
check_scenario token "token from --set-file (trailing newline)" --set-file linode.token="$WORK/token-file"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) renders the same objects.
check_scenario token "Kubernetes 1.27" -f "$CHART/ci/token-values.yaml" --kube-version 1.27.0

# ------------------------------------------------------------------ NOTES.txt
# `helm template` does not render NOTES.txt; render it through `tpl` in a scratch copy.
section "NOTES.txt"
check_notes() { # check_notes <label> <helm args...>
  local label=$1; shift
  local copy="$WORK/notes-chart"
  rm -rf "$copy" && cp -r "$CHART" "$copy"
  cp "$CHART/templates/NOTES.txt" "$copy/notes-source.txt"
  printf 'notes: |\n  {{- tpl (.Files.Get "notes-source.txt") . | nindent 2 }}\n' >"$copy/templates/zz-notes.yaml"
  if "$HELM" template "$RELEASE" "$copy" --namespace "$NS" --kube-version "$KUBE_VERSION" \
      --show-only templates/zz-notes.yaml "$@" >"$WORK/notes.yaml" 2>"$WORK/notes.err" \
    && python3 - "$WORK/notes.yaml" "$label" <<'PY'
import sys, yaml
notes = yaml.safe_load(open(sys.argv[1]))["notes"]
need = ["kubectl get sharedips", "kubectl describe sharedip", "apiVersion: sharedip.io/v1alpha1",
        "get lease sharedip-operator", "192.0.2.10", "helm uninstall sharedip", "No address leaves",
        "loadBalancerClass: " + ("example.com/failover" if sys.argv[2] == "every option" else "sharedip.io/linode")]
if sys.argv[2] == "services disabled":
    need.pop()
agent = ["get daemonset sharedip-agent", "app.kubernetes.io/component=agent", "sharedip-node-agent status",
         "sharedip.io/drain=true"]
if sys.argv[2] == "agent disabled":
    need.append("agent.enabled=false")
    bad_agent = [a for a in agent if a in notes]
else:
    need += agent
    bad_agent = []
missing = [n for n in need if n not in notes]
bad = [b for b in ("<no value>", "%!") if b in notes] + bad_agent
if sys.argv[2] == "services disabled" and "loadBalancerClass" in notes:
    bad.append("loadBalancerClass")
for m in missing:
    print(f"        NOTES.txt lacks {m!r}")
for b in bad:
    print(f"        NOTES.txt contains {b!r}")
sys.exit(1 if missing or bad else 0)
PY
  then
    pass "NOTES.txt renders ($label)"
  else
    fail "NOTES.txt ($label)"; sed 's/^/        /' "$WORK/notes.err"
  fi
}
check_notes "token" -f "$CHART/ci/token-values.yaml"
check_notes "every option" -f "$CHART/ci/full-values.yaml" --set operator.leaderElection.leaseName=sharedip-operator
check_notes "agent disabled" -f "$CHART/ci/token-values.yaml" --set agent.enabled=false
check_notes "services disabled" -f "$CHART/ci/token-values.yaml" --set services.enabled=false

# ------------------------------------------------------------------ values that must be rejected
section "rejected values"
expect_reject() { # expect_reject <description> <regex the error must match> <helm args...>
  local what=$1 pattern=$2; shift 2
  local out="$WORK/reject.yaml"
  if render "$out" "$@"; then
    fail "$what: accepted, must be rejected"
  elif grep -Eqi -- "$pattern" "$out.err"; then
    pass "$what"
  else
    fail "$what: rejected, but the error does not match /$pattern/:"; sed 's/^/        /' "$out.err"
  fi
}
TOK=(--set linode.token=x)
expect_reject "no token and no existingSecret" "Linode API token is required"
expect_reject "token and existingSecret together" "only one of linode.existingSecret and linode.token" \
  "${TOK[@]}" --set linode.existingSecret=s
expect_reject "unknown top-level key" "additional properties 'operatr' not allowed" \
  "${TOK[@]}" --set operatr.replicaCount=3
expect_reject "typo in operator key (replicas)" "additional properties 'replicas' not allowed" "${TOK[@]}" --set operator.replicas=3
expect_reject "typo in linode key (tokenkey)" "additional properties 'tokenkey' not allowed" "${TOK[@]}" --set linode.tokenkey=x
expect_reject "replicaCount not an integer" "/operator/replicaCount.*want integer" "${TOK[@]}" --set-string operator.replicaCount=two
expect_reject "negative replicaCount" "/operator/replicaCount.*minimum" "${TOK[@]}" --set operator.replicaCount=-1
expect_reject "log format xml" "/operator/logging/format" "${TOK[@]}" --set operator.logging.format=xml
expect_reject "bad pullPolicy" "/operator/image/pullPolicy" "${TOK[@]}" --set operator.image.pullPolicy=Sometimes
expect_reject "bad image digest" "/operator/image/digest" "${TOK[@]}" --set operator.image.digest=latest
expect_reject "port out of range" "/operator/http/port.*maximum" "${TOK[@]}" --set operator.http.port=70000
expect_reject "bad batchWindow" "/operator/batchWindow" "${TOK[@]}" --set operator.batchWindow=soon
# The operator parses one number and one unit (ms, s, m, h); Go-style 1m30s would stop it at start.
expect_reject "batchWindow in Go style (1m30s)" "/operator/batchWindow" "${TOK[@]}" --set operator.batchWindow=1m30s
expect_reject "membershipHoldDown in nanoseconds" "/operator/membershipHoldDown" "${TOK[@]}" --set operator.membershipHoldDown=100ns
expect_reject "bad membershipHoldDown" "/operator/membershipHoldDown" "${TOK[@]}" --set operator.membershipHoldDown=often
expect_reject "clusterId not a DNS label" "/clusterId" "${TOK[@]}" --set clusterId=Prod_EU
expect_reject "clusterId too long" "/clusterId" "${TOK[@]}" --set clusterId=$(printf 'a%.0s' {1..64})
expect_reject "sweepInterval below a second" "/operator/sweepInterval" "${TOK[@]}" --set operator.sweepInterval=500ms
expect_reject "uninstall deadline too short" "/operator/uninstall/activeDeadlineSeconds" "${TOK[@]}" \
  --set operator.uninstall.activeDeadlineSeconds=10
expect_reject "addresses.ipHolder neither auto nor off" "/addresses/ipHolder" "${TOK[@]}" --set addresses.ipHolder=sometimes
expect_reject "addresses.ipHolder: a bare off (YAML false)" "/addresses/ipHolder.*want string" "${TOK[@]}" \
  --set addresses.ipHolder=false
expect_reject "addresses.ipHolderLinodes not integers" "/addresses/ipHolderLinodes/0" "${TOK[@]}" \
  --set-string 'addresses.ipHolderLinodes={holder}'
expect_reject "addresses.ipHolderLinodes id 0" "/addresses/ipHolderLinodes/0.*minimum" "${TOK[@]}" \
  --set 'addresses.ipHolderLinodes={0}'
expect_reject "addresses.adoptCcmHolders not a boolean" "/addresses/adoptCcmHolders.*want boolean" "${TOK[@]}" \
  --set-string addresses.adoptCcmHolders=yes
expect_reject "addresses.ccmHolderSuffix with spaces" "/addresses/ccmHolderSuffix" "${TOK[@]}" \
  --set addresses.adoptCcmHolders=true --set 'addresses.ccmHolderSuffix=a b'
expect_reject "addresses.ccmHolderSuffix without adoptCcmHolders" "only used with addresses.adoptCcmHolders=true" \
  "${TOK[@]}" --set addresses.ccmHolderSuffix=prod
expect_reject "typo in addresses key (ipholder)" "additional properties 'ipholder' not allowed" "${TOK[@]}" \
  --set addresses.ipholder=off
expect_reject "typo in services key (loadbalancerClass)" "additional properties 'loadbalancerClass' not allowed" \
  "${TOK[@]}" --set services.loadbalancerClass=sharedip.io/linode
expect_reject "services.enabled not a boolean" "/services/enabled.*want boolean" "${TOK[@]}" --set-string services.enabled=yes
expect_reject "services.loadBalancerClass not a label-style key" "/services/loadBalancerClass" "${TOK[@]}" \
  --set 'services.loadBalancerClass=sharedip io/linode'
expect_reject "services.loadBalancerClass empty" "/services/loadBalancerClass" "${TOK[@]}" --set services.loadBalancerClass=
expect_reject "services.serveClasslessServices not a boolean" "/services/serveClasslessServices.*want boolean" \
  "${TOK[@]}" --set-string services.serveClasslessServices=no
expect_reject "bad podAntiAffinity preset" "/operator/podAntiAffinity" "${TOK[@]}" --set operator.podAntiAffinity=always
expect_reject "apiURL not a URL" "/linode/apiURL" "${TOK[@]}" --set linode.apiURL=api.linode.com
expect_reject "bad existingSecret name" "/linode/existingSecret" --set linode.existingSecret=Not_A_Name
expect_reject "empty tokenKey" "/linode/tokenKey" "${TOK[@]}" --set linode.tokenKey=
expect_reject "typo in nested key (serviceMonitor.enable)" "additional properties 'enable' not allowed" "${TOK[@]}" \
  --set operator.metrics.serviceMonitor.enable=true
expect_reject "2 replicas without leader election" "leaderElection.enabled must be true" "${TOK[@]}" \
  --set operator.leaderElection.enabled=false
expect_reject "no ServiceAccount name when create=false" "serviceAccount.name is required" "${TOK[@]}" \
  --set operator.serviceAccount.create=false
# The node agent's section.
expect_reject "typo in agent key (enable)" "additional properties 'enable' not allowed" "${TOK[@]}" --set agent.enable=false
expect_reject "agent.enabled not a boolean" "/agent/enabled.*want boolean" "${TOK[@]}" --set-string agent.enabled=yes
expect_reject "agent privileged" "/agent/securityContext/privileged" "${TOK[@]}" --set agent.securityContext.privileged=true
expect_reject "agent dcid out of range" "/agent/dcid" "${TOK[@]}" --set agent.dcid=70000
expect_reject "agent neighborPattern with one %d" "/agent/neighborPattern" "${TOK[@]}" \
  --set 'agent.neighborPattern=2001:db8::%d'
expect_reject "agent holdTime 2 (0 or >= 3)" "/agent/holdTime" "${TOK[@]}" --set agent.holdTime=2
expect_reject "agent multihopTTL 256" "/agent/multihopTTL" "${TOK[@]}" --set agent.multihopTTL=256
expect_reject "agent localASN 0" "/agent/localASN" "${TOK[@]}" --set agent.localASN=0
expect_reject "agent peerASN above 32 bits" "/agent/peerASN" "${TOK[@]}" --set agent.peerASN=4294967296
expect_reject "agent community not ASN:VALUE" "/agent/primaryCommunity" "${TOK[@]}" --set agent.primaryCommunity=65000-1
expect_reject "agent interface name too long" "/agent/interface" "${TOK[@]}" --set agent.interface=a-very-long-interface0
expect_reject "agent stateHostPath relative" "/agent/stateHostPath" "${TOK[@]}" --set agent.stateHostPath=var/lib/sharedip
expect_reject "agent shutdownTimeout not a duration" "/agent/shutdownTimeout" "${TOK[@]}" --set agent.shutdownTimeout=soon
expect_reject "agent routeServerGrace not a duration" "/agent/routeServerGrace" "${TOK[@]}" --set agent.routeServerGrace=4min
expect_reject "agent grace period not above shutdownTimeout" "terminationGracePeriodSeconds \\(30\\) must be greater" \
  "${TOK[@]}" --set agent.shutdownTimeout=30s
expect_reject "agent grace period below shutdownTimeout in minutes" "must be greater than agent.shutdownTimeout" \
  "${TOK[@]}" --set agent.shutdownTimeout=1m
expect_reject "agent maxSurge (two agents per node)" "/agent/updateStrategy/rollingUpdate/maxSurge" "${TOK[@]}" \
  --set agent.updateStrategy.rollingUpdate.maxSurge=1
expect_reject "agent updateStrategy type" "/agent/updateStrategy/type" "${TOK[@]}" --set agent.updateStrategy.type=Recreate
expect_reject "agent port out of range" "/agent/http/port.*minimum" "${TOK[@]}" --set agent.http.port=0
expect_reject "agent bindAddress not an IP" "/agent/http/bindAddress" "${TOK[@]}" --set agent.http.bindAddress=localhost
expect_reject "agent log format xml" "/agent/logging/format" "${TOK[@]}" --set agent.logging.format=xml
expect_reject "agent bad image digest" "/agent/image/digest" "${TOK[@]}" --set agent.image.digest=latest
expect_reject "agent tolerations not a list" "/agent/tolerations.*want array" "${TOK[@]}" --set agent.tolerations=all
expect_reject "agent: no ServiceAccount name when create=false" "agent.serviceAccount.name is required" "${TOK[@]}" \
  --set agent.serviceAccount.create=false
expect_reject "agent TLS Secret name invalid" "/agent/http/tls/secretName" "${TOK[@]}" --set agent.http.tls.secretName=Not_A_Name
expect_reject "operator TLS Secret name invalid" "/operator/http/tls/secretName" "${TOK[@]}" \
  --set operator.http.tls.secretName=Not_A_Name
expect_reject "typo in agent metrics key (serviceMonitor.enable)" "additional properties 'enable' not allowed" "${TOK[@]}" \
  --set agent.metrics.serviceMonitor.enable=true
expect_reject "metricsReader subject of an unknown kind" "/metricsReader/subjects/0/kind" "${TOK[@]}" \
  --set 'metricsReader.subjects[0].kind=Robot' --set 'metricsReader.subjects[0].name=r2d2'
expect_reject "metricsReader subject without a name" "/metricsReader/subjects/0" "${TOK[@]}" \
  --set 'metricsReader.subjects[0].kind=ServiceAccount'
expect_reject "tlsConfig not an object" "/operator/metrics/serviceMonitor/tlsConfig" "${TOK[@]}" \
  --set operator.metrics.serviceMonitor.tlsConfig=insecure

# ------------------------------------------------------------------ CRD and examples
section "CRD and examples"
CRD=sharedip.io_sharedips.yaml
if [[ -f "$ROOT/crds/$CRD" && -f "$CHART/crds/$CRD" ]]; then
  if cmp -s "$ROOT/crds/$CRD" "$CHART/crds/$CRD"; then
    pass "charts/sharedip/crds/$CRD equals crds/$CRD"
  else
    fail "charts/sharedip/crds/$CRD differs from crds/$CRD (run: cargo run -p sharedip-operator --bin crdgen)"
  fi
  if render "$WORK/with-crds.yaml" -f "$CHART/ci/token-values.yaml" --include-crds \
    && python3 - "$WORK/with-crds.yaml" <<'PY'
import sys, yaml
crds = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("kind") == "CustomResourceDefinition"]
ok = [c for c in crds if c["metadata"]["name"] == "sharedips.sharedip.io"
      and c["spec"]["scope"] == "Cluster"
      and any(v["name"] == "v1alpha1" and v.get("subresources", {}).get("status") is not None for v in c["spec"]["versions"])]
sys.exit(0 if ok else 1)
PY
  then
    pass "helm template --include-crds ships sharedips.sharedip.io (cluster-scoped, v1alpha1, status)"
  else
    fail "the chart does not ship the SharedIP CRD as expected"
  fi
else
  missing=()
  [[ -f "$ROOT/crds/$CRD" ]] || missing+=("crds/$CRD")
  [[ -f "$CHART/crds/$CRD" ]] || missing+=("charts/sharedip/crds/$CRD")
  if [[ "${SHAREDIP_REQUIRE_CRD:-0}" == 1 ]]; then
    fail "missing ${missing[*]} (run: cargo run -p sharedip-operator --bin crdgen)"
  else
    echo "  skip  CRD checks: ${missing[*]} not generated yet (SHAREDIP_REQUIRE_CRD=1 makes this a failure)"
  fi
fi

if python3 - "$ROOT" "$CRD" <<'PY'
"""The examples are SharedIPs with documentation addresses, or without an address (the operator
allocates one); once the CRD exists they must validate against its OpenAPI schema (structure
and types; CEL rules are the apiserver's job)."""
import copy, glob, ipaddress, os, sys, yaml
root, crd_name = sys.argv[1], sys.argv[2]
DOC_NETS = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")]
files = sorted(glob.glob(os.path.join(root, "examples", "sharedip-*.yaml")))
errors = []
if not files:
    errors.append("no examples/sharedip-*.yaml")
schema = None
crd_path = os.path.join(root, "crds", crd_name)
if os.path.exists(crd_path):
    crd = yaml.safe_load(open(crd_path))
    for v in crd["spec"]["versions"]:
        if v["name"] == "v1alpha1":
            schema = v["schema"]["openAPIV3Schema"]

def to_jsonschema(s):
    """OpenAPI v3 (Kubernetes structural schema) -> JSON Schema: drop x-kubernetes-* keys,
    turn `nullable` into a null type, treat int-or-string as either, forbid unknown fields."""
    if isinstance(s, list):
        return [to_jsonschema(x) for x in s]
    if not isinstance(s, dict):
        return s
    out = {}
    for k, v in s.items():
        if k.startswith("x-kubernetes-"):
            continue
        if k in ("properties", "patternProperties", "definitions"):
            out[k] = {pk: to_jsonschema(pv) for pk, pv in v.items()}
        else:
            out[k] = to_jsonschema(v)
    if s.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if s.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    out.pop("nullable", None)
    # The apiserver prunes unknown fields and `kubectl apply` rejects them (strict field
    # validation): treat them as errors here too.
    if "properties" in s and "additionalProperties" not in s and not s.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out

for f in files:
    name = os.path.relpath(f, root)
    docs = [d for d in yaml.safe_load_all(open(f)) if d]
    for d in docs:
        if d.get("apiVersion") != "sharedip.io/v1alpha1" or d.get("kind") != "SharedIP":
            errors.append(f"{name}: not a sharedip.io/v1alpha1 SharedIP")
            continue
        spec = d.get("spec", {})
        if "primary" not in spec:
            errors.append(f"{name}: spec.primary missing")
        # spec.allocatedAddress is the operator's to write, never a manifest's.
        if "allocatedAddress" in spec:
            errors.append(f"{name}: spec.allocatedAddress set (the operator writes it)")
        # Without spec.address the operator allocates one; with it, it is a documentation
        # address and its prefix is spelled out.
        if "address" in spec:
            if "prefix" not in spec:
                errors.append(f"{name}: spec.prefix missing")
            try:
                addr = ipaddress.ip_address(spec["address"])
                if not any(addr in n for n in DOC_NETS):
                    errors.append(f"{name}: {addr} is not a documentation address")
            except ValueError:
                errors.append(f"{name}: spec.address is not an IP address")
        if schema is not None:
            try:
                import jsonschema
            except ImportError:
                print("  skip  example schema check: python3 jsonschema not installed")
                schema = None
                continue
            # spec only: apiVersion/kind/metadata are not in the CRD's schema.
            spec_schema = to_jsonschema(copy.deepcopy(schema["properties"]["spec"]))
            for e in jsonschema.Draft7Validator(spec_schema).iter_errors(spec):
                errors.append(f"{name}: {'.'.join(['spec', *map(str, e.path)])}: {e.message}")
for e in errors:
    print("        " + e)
sys.exit(1 if errors else 0)
PY
then
  pass "examples/sharedip-*.yaml are SharedIPs with documentation addresses or none$([[ -f "$ROOT/crds/$CRD" ]] && echo ", valid against the CRD schema")"
else
  fail "examples"
fi

# The Service examples: a classed LoadBalancer Service, and ingress-nginx values that make one;
# only documentation addresses, only annotations the operator reads (commented ones included).
if python3 - "$ROOT" <<'PY'
import ipaddress, os, re, sys, yaml
root = sys.argv[1]
DOC_NETS = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")]
KNOWN = {"sharedip.io/address", "sharedip.io/sharedip", "sharedip.io/allow-shared-ip", "sharedip.io/primary-nodes",
         "sharedip.io/secondary-nodes", "sharedip.io/reclaim-policy"}
errors = []

def annotations_ok(name, text, annotations):
    # Commented-out annotations too: they are there to be uncommented.
    keys = set(re.findall(r"^\s*#?\s*(sharedip\.io/[a-z-]+):", text, re.M)) | set(annotations)
    for k in sorted(keys - KNOWN):
        errors.append(f"{name}: unknown annotation {k}")
    for m in re.findall(r"sharedip\.io/address:\s*\"?([^\"\n]+)\"?", text):
        for a in m.split(","):
            try:
                addr = ipaddress.ip_address(a.strip())
                if not any(addr in n for n in DOC_NETS):
                    errors.append(f"{name}: {addr} is not a documentation address")
            except ValueError:
                errors.append(f"{name}: sharedip.io/address {a!r} is not an IP address")

path = os.path.join(root, "examples", "service-loadbalancer.yaml")
text = open(path).read()
docs = [d for d in yaml.safe_load_all(text) if d]
if len(docs) != 1 or docs[0].get("apiVersion") != "v1" or docs[0].get("kind") != "Service":
    errors.append("service-loadbalancer.yaml: not one v1 Service")
else:
    spec = docs[0].get("spec", {})
    if spec.get("type") != "LoadBalancer" or spec.get("loadBalancerClass") != "sharedip.io/linode":
        errors.append("service-loadbalancer.yaml: not a LoadBalancer Service of class sharedip.io/linode")
    annotations_ok("service-loadbalancer.yaml", text, docs[0]["metadata"].get("annotations") or {})

path = os.path.join(root, "examples", "service-ingress-nginx-values.yaml")
text = open(path).read()
svc = ((yaml.safe_load(text) or {}).get("controller") or {}).get("service") or {}
if svc.get("type") != "LoadBalancer" or svc.get("loadBalancerClass") != "sharedip.io/linode" \
        or svc.get("externalTrafficPolicy") != "Local":
    errors.append("service-ingress-nginx-values.yaml: controller.service not LoadBalancer, sharedip.io/linode, Local")
annotations_ok("service-ingress-nginx-values.yaml", text, svc.get("annotations") or {})
for e in errors:
    print("        " + e)
sys.exit(1 if errors else 0)
PY
then
  pass "examples/service-*.yaml: a classed LoadBalancer Service and ingress-nginx values, documentation addresses"
else
  fail "Service examples"
fi

# ------------------------------------------------------------------ chart README documents every value
section "chart README"
if python3 - "$CHART/values.yaml" "$CHART/README.md" <<'PY'
import sys, yaml
values = yaml.safe_load(open(sys.argv[1]))
readme = open(sys.argv[2]).read()
# Maps documented as a whole (their keys are Kubernetes fields, not chart options).
OPAQUE = {"operator.resources", "operator.podSecurityContext", "operator.securityContext",
          "agent.resources", "agent.podSecurityContext", "agent.securityContext"}
def leaves(d, prefix=""):
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and key not in OPAQUE:
            yield from leaves(v, key + ".")
        else:
            yield key
missing = [k for k in leaves(values) if f"`{k}`" not in readme]
for k in missing:
    print(f"        value `{k}` is not documented in charts/sharedip/README.md")
sys.exit(1 if missing else 0)
PY
then
  pass "every value in values.yaml is documented in README.md"
else
  fail "README values table incomplete"
fi

# ------------------------------------------------------------------ package
section "helm package"
if "$HELM" package "$CHART" --destination "$WORK/pkg" >"$WORK/pkg.out" 2>&1 \
  && tar -tzf "$WORK"/pkg/sharedip-*.tgz >"$WORK/pkg.list" \
  && ! grep -q '^sharedip/ci/' "$WORK/pkg.list" && grep -q '^sharedip/values.schema.json$' "$WORK/pkg.list"; then
  pass "helm package ($(basename "$WORK"/pkg/sharedip-*.tgz), without ci/)"
else
  fail "helm package"; sed 's/^/        /' "$WORK/pkg.out"
fi

echo
if ((FAILURES > 0)); then
  echo "check-chart: $FAILURES check(s) FAILED"
  exit 1
fi
echo "check-chart: all checks passed"
