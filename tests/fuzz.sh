#!/usr/bin/env bash
# Fuzzes the launcher's parsers of untrusted input with libFuzzer: the env files, the
# labels/log-options JSON, docker-save/OCI archives and desired-image (the targets are in
# tests/fuzz, a cargo-fuzz project over the small ecs-formats crate). Each target runs for
# FUZZ_SECONDS (default 15: about two minutes in all with the build, as CI runs it); any panic,
# crash, arithmetic overflow, leak or allocation over the limits fails.
#
# The instrumented build is done with cargo itself, with the flags `cargo fuzz build -s address`
# passes (so CI does not spend minutes on `cargo install cargo-fuzz`); with cargo-fuzz installed
# the same targets run as usual:
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir tests/fuzz archive
# Longer runs: FUZZ_SECONDS=3600 tests/fuzz.sh, or FUZZ_TARGETS="archive" to pick targets.
# A finding is written to tests/fuzz/artifacts/<target>/; reproduce it with
#   tests/fuzz/target/x86_64-unknown-linux-gnu/release/<target> <file>
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET=${FUZZ_SECONDS:-15}
TARGETS=(${FUZZ_TARGETS:-env_file string_map archive desired_image})
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')

# The sanitizer and coverage flags are unstable (-Z) on a stable toolchain; this machine has one
# stable toolchain and no other can be fetched, so let it accept them for this build only.
# --target keeps the flags off build scripts and proc macros, as cargo fuzz does.
export RUSTC_BOOTSTRAP=1
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 -Cllvm-args=-sanitizer-coverage-stack-depth \
 -Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
 -Zsanitizer=address -Cdebug-assertions -Coverflow-checks -Ccodegen-units=1 --cfg fuzzing"
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_odr_violation=0
echo "== build (instrumented, $TRIPLE)"
cargo build --manifest-path tests/fuzz/Cargo.toml --locked --release --target "$TRIPLE" \
    --config 'profile.release.debug="line-tables-only"' $(printf -- '--bin %s ' "${TARGETS[@]}")

bin_dir=tests/fuzz/target/$TRIPLE/release
for target in "${TARGETS[@]}"; do
    corpus=target/fuzz-corpus/$target
    artifacts=tests/fuzz/artifacts/$target
    mkdir -p "$corpus" "$artifacts"
    echo "== fuzz $target (${SECONDS_PER_TARGET}s)"
    log=$(mktemp)
    if ! "$bin_dir/$target" "$corpus" "tests/fuzz/corpus/$target" \
        -artifact_prefix="$artifacts/" -max_total_time="$SECONDS_PER_TARGET" \
        -rss_limit_mb=1024 -malloc_limit_mb=512 -max_len=262144 -print_final_stats=1 >"$log" 2>&1; then
        tail -60 "$log"
        echo "fuzz: $target found a failing input; it is in $artifacts/" >&2
        rm -f "$log"
        exit 1
    fi
    grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || tail -3 "$log"
    rm -f "$log"
done
echo "fuzz: every target ran without a finding"
