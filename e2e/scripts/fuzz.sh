#!/usr/bin/env bash
# Fuzzes the BGP message decoder (crates/bgp/fuzz, target decode_message), which checks every
# input against an independent decoder (the oracle, see crates/bgp/fuzz/README.md), and prints
# executions, crashes and oracle disagreements. Needs a nightly toolchain for cargo-fuzz's
# sanitizer flags; cargo-fuzz itself is installed from crates.io when missing. Without nightly
# (it cannot be downloaded on a machine that reaches only package registries) the run is
# skipped with a message, not failed.
#
# Usage:
#   e2e/scripts/fuzz.sh [SECONDS]                 what CI runs (SECONDS defaults to 60): first
#                                                 the planted-bug check, then SECONDS of fuzzing
#   e2e/scripts/fuzz.sh --planted-bug [SECONDS]   only the check: built with
#                                                 --cfg sharedip_planted_bug, the oracle must
#                                                 report a disagreement within SECONDS (300)
#   e2e/scripts/fuzz.sh --long [EXECUTIONS]       not for CI: fuzz until EXECUTIONS
#                                                 (50000000) and report, for the README
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../crates/bgp/fuzz"

mode=short
case "${1:-}" in
    --planted-bug) mode=planted; shift ;;
    --long) mode=long; shift ;;
    -*) echo "fuzz: unknown option $1" >&2; exit 2 ;;
esac

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz: skipped: no nightly Rust toolchain on this machine (cargo fuzz needs one)"
    exit 0
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz from crates.io"
    cargo install --locked --quiet cargo-fuzz
fi

# Writes one corpus file per frame: the context octet (1: 4-octet AS, 0: 2-octet) and the
# frame. $2 = "all" adds the crafted seeds to the captured messages.
seed_corpus() {
    python3 - "$1" "$2" <<'PY'
import pathlib, sys
out, which = pathlib.Path(sys.argv[1]), sys.argv[2]
out.mkdir(parents=True, exist_ok=True)
for cap in sorted(pathlib.Path("../tests/captures").glob("*.hex")):
    for i, line in enumerate(cap.read_text().split("\n")):
        if line.strip():
            (out / f"{cap.stem}-{i}").write_bytes(b"\x01" + bytes.fromhex(line.strip()))
if which == "all":
    for i, line in enumerate(pathlib.Path("seeds.txt").read_text().split("\n")):
        fields = line.split("#")[0].split()
        if len(fields) == 3:
            ctx = b"\x01" if fields[1] == "as4" else b"\x00"
            (out / f"seed-{i}").write_bytes(ctx + bytes.fromhex(fields[2]))
PY
}

log=$(mktemp)
trap 'rm -f "$log"' EXIT

# Runs the target: $1 = corpus dir, $2 = artifact dir, then libFuzzer options. Extra cargo
# fuzz options come in FUZZ_BUILD_OPTS. Sets status, execs, crashes, disagreements.
run_fuzzer() {
    local corpus=$1 artifacts=$2
    shift 2
    rm -rf "$artifacts"
    mkdir -p "$artifacts"
    status=0
    # shellcheck disable=SC2086
    cargo +nightly fuzz run ${FUZZ_BUILD_OPTS:-} decode_message "$corpus" -- \
        -artifact_prefix="$artifacts/" -print_final_stats=1 "$@" >"$log" 2>&1 || status=$?
    execs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || true)
    execs=${execs:-?}
    crashes=$(find "$artifacts" -type f -name 'crash-*' | wc -l)
    disagreements=$(grep -c 'oracle: decoders disagree' "$log" || true)
}

planted_bug() {
    local budget=$1 corpus
    corpus=$(mktemp -d)
    # Only the captured messages, none with an AS_SET: the fuzzer has to find its way to
    # the planted bug itself.
    seed_corpus "$corpus" captures
    local start=$SECONDS
    # Its own target dir: the cfg would otherwise rebuild the normal build every time.
    RUSTFLAGS="--cfg sharedip_planted_bug" FUZZ_BUILD_OPTS="--sanitizer none --target-dir target/planted-bug" \
        run_fuzzer "$corpus" artifacts/planted-bug -max_total_time="$budget"
    rm -rf "$corpus"
    if ((disagreements > 0)); then
        echo "fuzz: planted bug caught by the oracle after ${execs} executions ($((SECONDS - start)) s with the build)"
        grep -m1 'oracle: decoders disagree' "$log" | cut -c1-300
        rm -rf artifacts/planted-bug
    else
        echo "fuzz: planted bug NOT caught by the oracle within ${budget} s (${execs} executions, exit ${status})"
        tail -40 "$log"
        exit 1
    fi
}

case $mode in
    planted)
        planted_bug "${1:-300}"
        ;;
    short)
        planted_bug 300
        seconds=${1:-60}
        seed_corpus corpus/decode_message all
        run_fuzzer corpus/decode_message artifacts/decode_message -max_total_time="$seconds"
        echo "fuzz: decode_message ran ${seconds}s: ${execs} executions, ${crashes} crash artifact(s), ${disagreements} oracle disagreement(s), exit ${status}"
        if ((status != 0 || crashes > 0)); then
            tail -40 "$log"
            exit 1
        fi
        ;;
    long)
        runs=${1:-50000000}
        seed_corpus corpus/decode_message all
        start=$SECONDS
        # No sanitizer: our code has no unsafe, and without it the run is about twice as fast.
        FUZZ_BUILD_OPTS="--sanitizer none --target-dir target/long" \
            run_fuzzer corpus/decode_message artifacts/long -runs="$runs" -max_total_time=86400
        tally=$(grep 'oracle: [0-9]* inputs' "$log" | tail -1 || true)
        echo "fuzz: long run $(date -u +%Y-%m-%d): ${execs} executions in $((SECONDS - start)) s (build included), ${crashes} crash(es), ${disagreements} oracle disagreement(s), exit ${status}"
        [[ -n $tally ]] && echo "fuzz: last tally: ${tally}"
        if ((status != 0 || crashes > 0)); then
            tail -40 "$log"
            exit 1
        fi
        ;;
esac
