#!/usr/bin/env bash
# Soak (not a test; tests/bench.sh runs it as its last section, CI does not): CYCLES agent crash/restart
# cycles under one supervising `amazon-ecs-init start`, on each runtime, with the restart delay
# shortened by the testing-only knob ECS_INIT_RESTART_DELAY_MS. Prints the launcher's resident
# memory and open file descriptors early (after WARMUP cycles) and at the end: they must not
# grow. Run as root on a host with dockerd and containerd:
#
#   sudo tests/soak.sh                          # 1000 cycles, docker then containerd
#   sudo CYCLES=200 RUNTIMES=containerd tests/soak.sh
#
# The stand-in agent exits 1 at once (STANDIN_EXIT_CODE=1, STANDIN_EXIT_AFTER_MS=0); each start
# logs "agent container started", which is what is counted. Everything lives under a scratch
# ECS_INIT_HOST_ROOT, firewall none, the tests' agent lock held. Exits 1 when RSS or fds grew.
set -euo pipefail
cd "$(dirname "$0")/.."

CYCLES=${CYCLES:-1000}
WARMUP=${WARMUP:-20}
RUNTIMES=${RUNTIMES:-docker containerd}
LOCK=/tmp/ecs-init-tests.agent.lock
NS=ecs-soak

die() { echo "soak.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root"

cargo build -q --release -p amazon-ecs-init
bin=$PWD/target/release/amazon-ecs-init
ROOT=$(mktemp -d /tmp/ecs-init-soak.XXXXXX)
sup=
cleanup() {
    local rc=$?
    set +e
    [ -n "$sup" ] && kill -TERM "$sup" 2>/dev/null && wait "$sup" 2>/dev/null
    docker rm -f ecs-agent >/dev/null 2>&1
    ctr -n "$NS" task kill -s SIGKILL ecs-agent >/dev/null 2>&1
    ctr -n "$NS" task delete -f ecs-agent >/dev/null 2>&1
    ctr -n "$NS" container delete ecs-agent >/dev/null 2>&1
    ctr -n "$NS" images ls -q 2>/dev/null | xargs -r ctr -n "$NS" images rm --sync >/dev/null 2>&1
    rm -rf "$ROOT"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$ROOT"/{etc/ecs,var/cache/ecs,var/lib/ecs/data,var/log/ecs/exec}
printf 'ECS_CLUSTER=soak\nSTANDIN_EXIT_CODE=1\nSTANDIN_EXIT_AFTER_MS=0\n' >"$ROOT/etc/ecs/ecs.config"
cargo run -q --release -p ecs-test-support --bin pack-stand-in -- "$ROOT/var/cache/ecs/ecs-agent.tar" >/dev/null
ECS_INIT_AGENT_INIT=$(cargo run -q --release -p ecs-test-support --bin pack-stand-in -- --print-agent-init)
export ECS_INIT_AGENT_INIT ECS_INIT_HOST_ROOT=$ROOT ECS_INIT_FIREWALL=none
export ECS_INIT_CONTAINERD_NAMESPACE=$NS ECS_INIT_RESTART_DELAY_MS=1
unset NOTIFY_SOCKET

exec 9>>"$LOCK"
flock 9

starts() { grep -c 'msg="agent container started"' "$ROOT/var/log/ecs/ecs-init.log" 2>/dev/null || true; }
sample() { # pid -> "rss_kb fds"
    echo "$(awk '/^VmRSS:/ {print $2}' "/proc/$1/status") $(find "/proc/$1/fd" -mindepth 1 -maxdepth 1 | wc -l)"
}
wait_starts() { # n timeout_s
    local deadline=$((SECONDS + $2))
    while [ "$(starts)" -lt "$1" ]; do
        kill -0 "$sup" 2>/dev/null || die "the launcher exited; see $ROOT/var/log/ecs/ecs-init.log"
        [ "$SECONDS" -lt "$deadline" ] || die "only $(starts) of $1 starts within $2 s"
        sleep 0.5
    done
}

status=0
for rt in $RUNTIMES; do
    export ECS_INIT_RUNTIME=$rt
    : >"$ROOT/var/log/ecs/ecs-init.log"
    echo 2 >"$ROOT/var/cache/ecs/state"
    unshare -n -- sh -c 'ip link set lo up && exec "$0" pre-start' "$bin" >/dev/null 2>&1 9>&- ||
        die "$rt: pre-start failed"
    ECS_LOGLEVEL=info "$bin" start >/dev/null 2>&1 9>&- &
    sup=$!
    t0=$SECONDS
    wait_starts "$WARMUP" 300
    read -r rss0 fds0 <<<"$(sample "$sup")"
    wait_starts "$CYCLES" $((CYCLES * 2 + 300))
    read -r rss1 fds1 <<<"$(sample "$sup")"
    took=$((SECONDS - t0))
    kill -TERM "$sup"
    wait "$sup" || true
    sup=
    verdict=ok
    # fds must not grow at all; RSS may wobble by allocator noise (<= 256 kB).
    if [ "$fds1" -gt "$fds0" ] || [ "$rss1" -gt $((rss0 + 256)) ]; then
        verdict=GREW
        status=1
    fi
    printf '%-11s cycles %5s in %4s s  RSS %6s -> %6s kB  fds %3s -> %3s  %s\n' \
        "$rt" "$(starts)" "$took" "$rss0" "$rss1" "$fds0" "$fds1" "$verdict"
done
exit "$status"
