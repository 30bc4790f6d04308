#!/usr/bin/env bash
# Fuzzes the BGP message decoder (crates/bgp/fuzz, target decode_message) for a bounded time
# and prints executions and crashes. Needs a nightly toolchain for cargo-fuzz's sanitizer
# flags; cargo-fuzz itself is installed from crates.io when missing. Without nightly (it cannot
# be downloaded on a machine that reaches only package registries) the run is skipped with a
# message, not failed.
#
# Usage: e2e/scripts/fuzz.sh [SECONDS]   (default 60)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../crates/bgp/fuzz"
SECONDS_TO_RUN=${1:-60}

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz: skipped: no nightly Rust toolchain on this machine (cargo fuzz needs one)"
    exit 0
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz from crates.io"
    cargo install --locked --quiet cargo-fuzz
fi

mkdir -p corpus/decode_message
# Seed the corpus with the real captured messages, one file per message.
python3 - <<'PY'
import pathlib, re
out = pathlib.Path("corpus/decode_message")
for cap in pathlib.Path("../tests/captures").glob("*.hex"):
    for i, line in enumerate(cap.read_text().splitlines()):
        hexpart = re.sub(r"#.*", "", line).split()
        if not hexpart:
            continue
        try:
            data = bytes.fromhex("".join(hexpart[-1:]))
        except ValueError:
            continue
        (out / f"{cap.stem}-{i}").write_bytes(data)
PY

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo +nightly fuzz run decode_message corpus/decode_message -- \
    -max_total_time="$SECONDS_TO_RUN" -print_final_stats=1 >"$log" 2>&1 || status=$?
execs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || echo "?")
crashes=$(find artifacts/decode_message -type f 2>/dev/null | wc -l)
echo "fuzz: decode_message ran ${SECONDS_TO_RUN}s: ${execs} executions, ${crashes} crash artifact(s), exit ${status}"
if ((status != 0 || crashes > 0)); then
    tail -40 "$log"
    exit 1
fi
