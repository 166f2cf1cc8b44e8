# Shared by the shell test scripts (packaging/test.sh, tests/systemd/run.sh,
# tests/gpu/on-real-gpu.sh): one "ok   - …" or "FAIL - …" line per check, counted in $passed
# and $failed. Source it, then call pass, fail or check; each script prints its own summary.
passed=0
failed=0
pass() { passed=$((passed + 1)); echo "ok   - $*"; }
fail() { failed=$((failed + 1)); echo "FAIL - $*"; }
indent() { sed 's/^/       /'; }
# check DESCRIPTION COMMAND...: passes when the command succeeds; otherwise shows the last
# CHECK_TAIL (default 20) lines of its output.
check() {
    local desc=$1 out
    shift
    if out=$("$@" 2>&1); then
        pass "$desc"
    else
        fail "$desc"
        printf '%s\n' "$out" | tail -n "${CHECK_TAIL:-20}" | indent
    fi
}
