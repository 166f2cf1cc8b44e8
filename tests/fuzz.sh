#!/usr/bin/env bash
# Fuzzes the launcher's parsers of untrusted input with libFuzzer (cargo fuzz): the env files,
# the labels/log-options JSON, docker-save/OCI archives and desired-image. Each target runs for
# FUZZ_SECONDS (default 15: about a minute in all, as CI runs it); any panic, crash, leak or
# allocation over the limits fails. Longer runs: FUZZ_SECONDS=3600 tests/fuzz.sh, or one target:
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir tests/fuzz archive
# Findings are written under tests/fuzz/artifacts/<target>/ (reproduce with
# `cargo fuzz run --fuzz-dir tests/fuzz <target> <file>`).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
# cargo fuzz passes unstable -Z flags (sanitizer, coverage); this machine has one stable
# toolchain and no other can be fetched, so let it accept them.
export RUSTC_BOOTSTRAP=1
SECONDS_PER_TARGET=${FUZZ_SECONDS:-15}
for target in env_file string_map archive desired_image; do
    corpus=target/fuzz-corpus/$target
    mkdir -p "$corpus"
    echo "== fuzz $target (${SECONDS_PER_TARGET}s)"
    cargo fuzz run --fuzz-dir tests/fuzz --sanitizer address "$target" "$corpus" tests/fuzz/corpus/"$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=1024 -malloc_limit_mb=512 \
        -max_len=262144 -print_final_stats=1 2>&1 | grep -E '^(#|==|INFO: -max_total|stat::number_of_executed_units|Done)' | tail -3
done
echo "fuzz: every target ran without a finding"
