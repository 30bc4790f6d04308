#!/usr/bin/env bash
# Static checks of the repository's Dockerfile, for machines without a Docker engine (images
# are built by the release pipeline). Checks what would otherwise only fail at `docker build`:
#
#   * every FROM names a known stage, or an image with a tag or digest (never an implicit
#     latest), ARG defaults included; the targets `operator` and `node-agent` exist;
#   * every local COPY source exists and is not excluded by .dockerignore; every workspace
#     member is copied (cargo cannot load the workspace otherwise); COPY --from names a stage;
#   * every `cargo build` is `--locked` and `--release` (or `--profile` of a profile that
#     inherits release, copied from target/<profile>/), and its `-p` / `--bin` are a package of the
#     workspace and a binary of that package (from `cargo metadata`);
#   * the ENTRYPOINT of each target is a file a COPY put there;
#   * the operator target runs as a non-root user.
#
# A binary that does not exist yet (the node agent before it has a main) is reported as
# "pending" unless SHAREDIP_REQUIRE_ALL_BINS=1.
#
# Usage: e2e/scripts/check-dockerfile.sh     exit 0 when every check passes
#        DOCKERFILE=path e2e/scripts/check-dockerfile.sh   check another Dockerfile (same context)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
command -v python3 >/dev/null || { echo "check-dockerfile: python3 is required" >&2; exit 2; }
command -v cargo >/dev/null || { echo "check-dockerfile: cargo is required" >&2; exit 2; }

META=$(mktemp "${TMPDIR:-/tmp}/check-dockerfile.XXXXXX")
trap 'rm -f "$META"' EXIT
# --offline --no-deps: reads only the workspace's own manifests; no network, no build.
(cd "$ROOT" && cargo metadata --format-version 1 --no-deps --offline) >"$META"

python3 - "$ROOT" "$META" <<'PY'
import fnmatch
import json
import os
import re
import shlex
import sys
import tomllib

root, meta_path = sys.argv[1], sys.argv[2]

# Custom profiles of the workspace that inherit (directly or not) from release: a Dockerfile may
# build with `--profile NAME` for those, and then copies from target/NAME/.
with open(os.path.join(root, "Cargo.toml"), "rb") as f:
    profile_tables = tomllib.load(f).get("profile", {})
def inherits_release(name, seen=()):
    if name == "release":
        return True
    parent = profile_tables.get(name, {}).get("inherits")
    return parent is not None and parent not in seen and inherits_release(parent, seen + (name,))
release_profiles = {n for n in profile_tables if n not in ("dev", "test", "bench", "release") and inherits_release(n)}
require_all = os.environ.get("SHAREDIP_REQUIRE_ALL_BINS") == "1"
errors, pending = [], []
ok = lambda msg: print(f"  ok    {msg}")

meta = json.load(open(meta_path))
bins = {p["name"]: {t["name"] for t in p["targets"] if "bin" in t["kind"]} for p in meta["packages"]}
members = sorted(os.path.relpath(os.path.dirname(p["manifest_path"]), root) for p in meta["packages"])

# ---------------------------------------------------------------- parse (continuations, comments)
lines, buf = [], ""
for raw in open(os.environ.get("DOCKERFILE") or os.path.join(root, "Dockerfile")):
    s = raw.rstrip("\n")
    if not buf and s.lstrip().startswith("#"):
        continue
    if s.endswith("\\"):
        buf += s[:-1] + " "
        continue
    buf += s
    if buf.strip():
        lines.append(buf.strip())
    buf = ""

args = {}  # global ARG defaults (before the first FROM)
stages = []  # dicts: name, base, copies, runs, entrypoint, user
for line in lines:
    instr, _, rest = line.partition(" ")
    instr = instr.upper()
    if instr == "ARG" and not stages:
        k, _, v = rest.partition("=")
        args[k.strip()] = v.strip()
    elif instr == "FROM":
        m = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$", rest, re.I)
        base = re.sub(r"\$\{?(\w+)\}?", lambda m_: args.get(m_.group(1), m_.group(0)), m.group(1))
        stages.append({"name": m.group(2), "base": base, "copies": [], "runs": [], "entrypoint": None,
                       "user": None})
    elif instr == "COPY":
        stages[-1]["copies"].append(rest)
    elif instr == "RUN":
        stages[-1]["runs"].append(rest)
    elif instr == "ENTRYPOINT":
        stages[-1]["entrypoint"] = json.loads(rest)
    elif instr == "USER":
        stages[-1]["user"] = rest.strip()

names = [s["name"] for s in stages]

# ---------------------------------------------------------------- FROM
for s in stages:
    base = s["base"]
    if base in names:  # an earlier stage
        continue
    if "$" in base:
        errors.append(f"FROM {base}: unresolved build argument")
    elif "@sha256:" in base:
        ok(f"FROM {base} (digest)")
    elif ":" not in base.rsplit("/", 1)[-1]:
        errors.append(f"FROM {base}: no tag (implicit latest)")
    else:
        ok(f"FROM {base}")
for target in ("operator", "node-agent"):
    if target in names:
        ok(f"target {target} exists")
    else:
        errors.append(f"no stage named {target}")
if names and names[-1] != "operator":
    errors.append("the last stage (default target) should be the operator")

# ---------------------------------------------------------------- .dockerignore
ignore = []
di = os.path.join(root, ".dockerignore")
if os.path.exists(di):
    for l in open(di):
        l = l.strip()
        if l and not l.startswith("#"):
            ignore.append(l)


def ignored(path):
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    result = False
    parts = path.split("/")
    for pat in ignore:
        neg = pat.startswith("!")
        p = pat[1:] if neg else pat
        p = p.rstrip("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if p.startswith("**/"):
            hit = any(fnmatch.fnmatch(x, p[3:]) for x in parts)
        else:
            hit = any(fnmatch.fnmatch(x, p) for x in prefixes)
        if hit:
            result = not neg
    return result


# ---------------------------------------------------------------- COPY
copied_dirs = set()
for s in stages:
    for c in s["copies"]:
        toks = shlex.split(c)
        flags = [t for t in toks if t.startswith("--")]
        paths = [t for t in toks if not t.startswith("--")]
        srcs, dest = paths[:-1], paths[-1]
        frm = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
        if frm is not None:
            if frm not in names:
                errors.append(f"COPY --from={frm}: no such stage")
            for src in srcs:
                s.setdefault("files", set()).add(dest if not dest.endswith("/") else dest + os.path.basename(src))
            continue
        for src in srcs:
            rel = os.path.normpath(src)
            if not os.path.exists(os.path.join(root, rel)):
                errors.append(f"COPY {src}: does not exist in the build context")
            elif ignored(rel):
                errors.append(f"COPY {src}: excluded by .dockerignore")
            else:
                ok(f"COPY {src}")
                copied_dirs.add(rel)
for m in members:
    if m == ".":
        continue
    if not any(m == d or m.startswith(d + "/") for d in copied_dirs):
        errors.append(f"workspace member {m} is not copied into the builder (cargo needs every member)")
    elif ignored(os.path.join(m, "Cargo.toml")) or ignored(os.path.join(m, "src")):
        errors.append(f"workspace member {m}: Cargo.toml or src/ excluded by .dockerignore")
for f in ("Cargo.toml", "Cargo.lock"):
    if f not in copied_dirs:
        errors.append(f"{f} is not copied")

# ---------------------------------------------------------------- cargo build
by_name = {s["name"]: s for s in stages}
for s in stages:
    for r in s["runs"]:
        for cmd in re.split(r"&&|;", r):
            toks = shlex.split(cmd)
            if "cargo" not in toks or "build" not in toks:
                continue
            if "--locked" not in toks:
                errors.append(f"stage {s['name']}: cargo build without --locked")
            profiles = [toks[i + 1] for i, t in enumerate(toks) if t == "--profile" and i + 1 < len(toks)]
            if "--release" in toks and not profiles:
                out_dir = "release"
            elif len(profiles) == 1 and "--release" not in toks and profiles[0] in release_profiles:
                out_dir = profiles[0]
            else:
                errors.append(
                    f"stage {s['name']}: cargo build needs --release or one --profile that inherits "
                    f"release (defined: {sorted(release_profiles)})"
                )
                continue
            pkgs = [toks[i + 1] for i, t in enumerate(toks) if t in ("-p", "--package")]
            wanted = [toks[i + 1] for i, t in enumerate(toks) if t == "--bin"]
            if len(pkgs) != 1 or len(wanted) != 1:
                errors.append(f"stage {s['name']}: cargo build should name one -p and one --bin")
                continue
            pkg, b = pkgs[0], wanted[0]
            if pkg not in bins:
                errors.append(f"stage {s['name']}: -p {pkg} is not a workspace package")
            elif b not in bins[pkg]:
                # Pending only while the package has no binary at all (being written); a package
                # with binaries but not this one means a typo or a rename.
                msg = f"stage {s['name']}: {pkg} has no binary {b} (binaries: {sorted(bins[pkg]) or 'none yet'})"
                (pending if bins[pkg] == set() and not require_all else errors).append(msg)
            else:
                ok(f"stage {s['name']}: cargo build --locked ({out_dir} profile) -p {pkg} --bin {b}")
            if f"target/{out_dir}/{b}" not in r:
                errors.append(f"stage {s['name']}: the RUN does not copy target/{out_dir}/{b} out of the cache mount")

# ---------------------------------------------------------------- runtime targets
for target in ("operator", "node-agent"):
    s = by_name.get(target)
    if not s:
        continue
    ep = s["entrypoint"]
    if not ep:
        errors.append(f"target {target}: no ENTRYPOINT")
    elif ep[0] not in s.get("files", set()):
        errors.append(f"target {target}: ENTRYPOINT {ep[0]} is not a file copied into the stage")
    else:
        ok(f"target {target}: ENTRYPOINT {ep[0]}")
user = by_name.get("operator", {}).get("user")
if user and user.split(":")[0] not in ("0", "root"):
    ok(f"target operator runs as USER {user}")
else:
    errors.append(f"target operator must run as a non-root USER (got {user!r})")

for p in pending:
    print(f"  pend  {p}")
for e in errors:
    print(f"  FAIL  {e}")
if errors:
    print(f"check-dockerfile: {len(errors)} check(s) FAILED")
    sys.exit(1)
print("check-dockerfile: all checks passed" + (f" ({len(pending)} pending)" if pending else ""))
PY
