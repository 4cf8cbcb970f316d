#!/usr/bin/env bash
# Fuzzes crmbridge with cargo-fuzz (libFuzzer, nightly toolchain): each
# target for FUZZ_SECONDS (default 600), one after the other, one core each.
# Not part of infra/test.sh: the corpus and crash inputs are replayed by
# stable tests instead (shared/mapping/tests/fuzz_replay.rs and the
# connectors' replay test).
#
#   bash infra/fuzz.sh                          # every target, 600 s each
#   FUZZ_SECONDS=60 bash infra/fuzz.sh          # a quick pass
#   FUZZ_TARGETS="template_render" bash infra/fuzz.sh
#
# Seeds are read from shared/fuzz/corpus/<target>/ (committed; left unchanged);
# what the fuzzer discovers goes to shared/fuzz/target/corpus/<target>/ (ignored),
# and is reused by the next run. A crash, out-of-memory or timeout input is
# copied to shared/fuzz/regressions/<target>/ (commit it: the replay tests run it
# from then on) and the script exits 1.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD

seconds=${FUZZ_SECONDS:-600}
targets=${FUZZ_TARGETS:-"webhook_decoders automation_parse template_render"}
# A bounded template never allocates more than a few MiB at once: any
# single allocation above this is a finding, as is an input slower than
# the timeout (fuel caps a field at 100 000 instructions).
malloc_limit_mb=${FUZZ_MALLOC_LIMIT_MB:-64}
rss_limit_mb=${FUZZ_RSS_LIMIT_MB:-1024}
timeout_s=${FUZZ_TIMEOUT:-20}

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz.sh: the nightly toolchain is missing (cargo +nightly)" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz into $(dirname "$(command -v cargo)")"
    cargo install cargo-fuzz --locked
fi

echo "fuzz.sh: building the targets (nightly, sanitizer coverage)"
cargo +nightly fuzz build --fuzz-dir shared/fuzz

logs=$root/shared/fuzz/target/logs
mkdir -p "$logs"
summary=()
found=0
for target in $targets; do
    seeds=$root/shared/fuzz/corpus/$target
    work=$root/shared/fuzz/target/corpus/$target
    artifacts=$root/shared/fuzz/artifacts/$target
    regressions=$root/shared/fuzz/regressions/$target
    mkdir -p "$seeds" "$work" "$artifacts" "$regressions"
    log=$logs/$target.log
    echo "fuzz.sh: $target for ${seconds}s (log: ${log#"$root"/})"
    status=0
    # New inputs go to the first corpus directory, so the seeds (and the
    # regressions, replayed first) stay as committed.
    cargo +nightly fuzz run --fuzz-dir shared/fuzz "$target" "$work" "$seeds" "$regressions" -- \
        -max_total_time="$seconds" \
        -malloc_limit_mb="$malloc_limit_mb" \
        -rss_limit_mb="$rss_limit_mb" \
        -timeout="$timeout_s" \
        -print_final_stats=1 \
        -artifact_prefix="$artifacts/" \
        >"$log" 2>&1 || status=$?
    crashes=0
    for file in "$artifacts"/crash-* "$artifacts"/oom-* "$artifacts"/timeout-*; do
        [ -e "$file" ] || continue
        cp -n "$file" "$regressions/"
        crashes=$((crashes + 1))
    done
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    if [ "$status" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        found=1
        echo "fuzz.sh: $target failed (exit $status); the end of its log:"
        tail -n 30 "$log"
    fi
    summary+=("$(printf '%-18s %12s execs %8s exec/s %4s crash inputs' "$target" "${execs:-?}" "${rate:-?}" "$crashes")")
done

echo
echo "fuzz.sh: ${seconds}s per target"
for line in "${summary[@]}"; do
    echo "  $line"
done
if [ "$found" -ne 0 ]; then
    echo "fuzz.sh: crash inputs were copied to shared/fuzz/regressions/<target>/; commit them with the fix"
    exit 1
fi
