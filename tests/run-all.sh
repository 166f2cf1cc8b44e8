#!/usr/bin/env bash
# The one test command: prepares a fresh Debian/Ubuntu machine (packages, containerd, dockerd)
# and runs every test: lint, unit tests, the real-daemon integration and conformance suites,
# the firewall's real-packet namespace matrix, the fuzz targets, the packaging tests, and the
# unit and DEB under a booted systemd. Run as root.
#
# Integration tests never skip: a missing daemon or missing root fails them loudly.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "run-all.sh: must run as root (the tests start containers and create network namespaces)" >&2
    exit 1
fi

step() { printf '\n==== %s ====\n' "$*"; }
passed=0
failed=0
failures=()
run() {
    local name=$1
    shift
    step "$name"
    local t0=$SECONDS
    if "$@"; then
        passed=$((passed + 1))
        echo "---- $name: ok ($((SECONDS - t0)) s)"
    else
        failed=$((failed + 1))
        failures+=("$name")
        echo "---- $name: FAILED ($((SECONDS - t0)) s)"
    fi
}

step "machine setup"
bash tests/setup.sh

export CARGO_TERM_COLOR=never
run "cargo fmt --check" cargo fmt --all -- --check
# Every crate's real-daemon/netns suites are behind its `integration` feature so that a plain
# `cargo test` works on a laptop; here they are always built, linted and run.
INTEGRATION=(--features "amazon-ecs-init/integration,ecs-runtime/integration,ecs-firewall/integration,ecs-test-support/integration,ecs-volume-plugin/integration")
run "cargo clippy" cargo clippy --workspace --all-targets "${INTEGRATION[@]}" -- -D warnings
# One cargo invocation for every crate's unit and integration tests; the tests that run the
# agent container serialise themselves on a cross-process lock.
run "cargo test (unit, real dockerd/containerd, netns firewall matrix, conformance)" \
    cargo test --workspace --no-fail-fast "${INTEGRATION[@]}"
# libFuzzer over the parsers of untrusted input (env files, labels JSON, archives, desired-image),
# 15 s a target; longer runs: FUZZ_SECONDS=3600 bash tests/fuzz.sh.
run "fuzz (env files, labels/log-options JSON, image archives, desired-image)" bash tests/fuzz.sh
run "packaging (RPM, DEB, unit file, scratch-root installs)" bash packaging/test.sh
# The unit and the DEB under a booted systemd (systemd-nspawn; PID 1 here is not systemd), with a
# private containerd/dockerd in the booted system's own network namespace.
run "systemd: the unit and the DEB under a booted systemd (nspawn), Docker and containerd" \
    bash tests/systemd/run.sh

step "summary"
for f in "${failures[@]}"; do echo "FAILED: $f"; done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
