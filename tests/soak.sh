#!/usr/bin/env bash
# Soak (not a test; tests/bench.sh runs it as its last section, CI does not): CYCLES agent crash/restart
# cycles under one supervising `amazon-ecs-init start`, on each runtime, with the restart delay
# shortened by the testing-only knob ECS_INIT_RESTART_DELAY_MS. Prints the launcher's resident
# memory and open file descriptors early (after WARMUP cycles) and at the end: they must not
# grow. Run as root on a host with dockerd and containerd:
#
#   sudo tests/soak.sh                          # 1000 cycles, docker then containerd
#   sudo CYCLES=200 RUNTIMES=containerd tests/soak.sh
#   sudo JUNK=1 tests/soak.sh                   # the agent's directories full of junk (below)
#   sudo BIN=target/debug/amazon-ecs-init CYCLES=100 tests/soak.sh   # a given build
#
# JUNK=1 (issue 20): between restarts a writer replaces, every 20 ms, what the agent can write
# with junk: /etc/ecs/ecs.config (a BOM, odd keys, random bytes, and the agent's next exit code:
# 1, 2 or 42, so the exit-2 log excerpt and the exit-42 update run too), /var/lib/ecs/ecs.config
# (random bytes, a FIFO, a symlink to /dev/zero, a 3 GB sparse file), /var/cache/ecs/desired-image
# (the same kinds), a 1 GB sparse rotated agent log on containerd, junk records, and it holds
# the flock on /var/log/ecs/ecs-init.log.lock half of the time. RSS, fds and the wall time per
# cycle must stay flat as without junk.
#
# The stand-in agent exits 1 at once (STANDIN_EXIT_CODE=1, STANDIN_EXIT_AFTER_MS=0); each start
# logs "agent container started", which is what is counted. Everything lives under a scratch
# ECS_INIT_HOST_ROOT, firewall none, the tests' agent lock held. Exits 1 when RSS or fds grew.
set -euo pipefail
cd "$(dirname "$0")/.."

CYCLES=${CYCLES:-1000}
# With junk the allocator meets larger transient buffers (2 MiB env files, log tails, loads)
# during the first ~150 cycles; RSS is compared after that.
if [ "${JUNK:-0}" = 1 ]; then WARMUP=${WARMUP:-150}; else WARMUP=${WARMUP:-20}; fi
RUNTIMES=${RUNTIMES:-docker containerd}
LOCK=/tmp/ecs-init-tests.agent.lock
NS=ecs-soak

die() { echo "soak.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root"

JUNK=${JUNK:-0}
if [ -n "${BIN:-}" ]; then
    bin=$(realpath "$BIN")
else
    cargo build -q --release -p amazon-ecs-init
    bin=$PWD/target/release/amazon-ecs-init
fi
ROOT=$(mktemp -d /tmp/ecs-init-soak.XXXXXX)
sup=
junk=
cleanup() {
    local rc=$?
    set +e
    [ -n "$junk" ] && kill "$junk" 2>/dev/null && wait "$junk" 2>/dev/null
    [ -n "$sup" ] && kill -TERM "$sup" 2>/dev/null && wait "$sup" 2>/dev/null
    docker rm -f ecs-agent >/dev/null 2>&1
    ctr -n "$NS" task kill -s SIGKILL ecs-agent >/dev/null 2>&1
    ctr -n "$NS" task delete -f ecs-agent >/dev/null 2>&1
    ctr -n "$NS" container delete ecs-agent >/dev/null 2>&1
    ctr -n "$NS" images ls -q 2>/dev/null | xargs -r ctr -n "$NS" images rm --sync >/dev/null 2>&1
    if [ "$rc" -ne 0 ] && [ -f "$ROOT/var/log/ecs/ecs-init.log" ]; then
        cp "$ROOT/var/log/ecs/ecs-init.log" /tmp/ecs-init-soak.failed.log
        echo "soak.sh: the launcher's log is kept in /tmp/ecs-init-soak.failed.log" >&2
    fi
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
        kill -0 "$sup" 2>/dev/null || die "the launcher exited (its log is kept)"
        [ "$SECONDS" -lt "$deadline" ] || die "only $(starts) of $1 starts within $2 s"
        sleep 0.5
    done
}

# The agent's vandal (JUNK=1): one random kind of junk at each agent-writable path, every 20 ms.
vandal() {
    local r=$ROOT code kind
    while :; do
        code=$(shuf -n1 -e 1 1 2 42)
        { printf '\xef\xbb\xbfECS_CLUSTER=soak\nSTANDIN_EXIT_CODE=%s\nSTANDIN_EXIT_AFTER_MS=0\n' "$code"
          printf 'ECS-ODD.KEY=%s\n' "$RANDOM"; head -c 512 /dev/urandom | tr -d '\0='; echo; } \
            >"$r/etc/ecs/.ecs.config.junk" && mv -f "$r/etc/ecs/.ecs.config.junk" "$r/etc/ecs/ecs.config"
        for f in var/lib/ecs/ecs.config var/cache/ecs/desired-image; do
            rm -f "$r/$f"
            kind=$((RANDOM % 5))
            case $kind in
                0) head -c 4096 /dev/urandom >"$r/$f" ;;
                1) mkfifo "$r/$f" ;;
                2) ln -s /dev/zero "$r/$f" ;;
                3) truncate -s 3G "$r/$f" ;;
                4) printf 'ecs-agent.tar\n' >"$r/$f" ;;
            esac
        done
        head -c 200 /dev/urandom >"$r/var/lib/ecs/runtime-backend.junk"
        if [ "$rt" = containerd ] && [ -d "$r/var/log/ecs/containerd" ]; then
            truncate -s 1G "$r/var/log/ecs/containerd/ecs-agent.log.7"
        fi
        if [ $((RANDOM % 2)) -eq 0 ]; then
            flock -n "$r/var/log/ecs/ecs-init.log.lock" sleep 0.02 2>/dev/null || sleep 0.02
        else
            sleep 0.02
        fi
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
    if [ "$JUNK" = 1 ]; then
        # After start's own first reading of the config (a refused one would stop it there).
        wait_starts 1 120
        vandal 9>&- &
        junk=$!
    fi
    wait_starts "$WARMUP" 300
    read -r rss0 fds0 <<<"$(sample "$sup")"
    t1=$SECONDS
    wait_starts "$CYCLES" $((CYCLES * 2 + 300))
    read -r rss1 fds1 <<<"$(sample "$sup")"
    took=$((SECONDS - t0))
    per_cycle_ms=$(( (SECONDS - t1) * 1000 / (CYCLES - WARMUP) ))
    hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$sup/status")
    # SIGTERM while the junk keeps coming.
    t2=$(date +%s%N)
    kill -TERM "$sup"
    wait "$sup" || true
    term_ms=$(( ($(date +%s%N) - t2) / 1000000 ))
    sup=
    if [ -n "$junk" ]; then
        kill "$junk"; wait "$junk" 2>/dev/null || true; junk=
    fi
    rm -rf "$ROOT/var/lib/ecs/ecs.config" "$ROOT/var/cache/ecs/desired-image" "$ROOT"/var/log/ecs/containerd/ecs-agent.log.7
    printf 'ECS_CLUSTER=soak\nSTANDIN_EXIT_CODE=1\nSTANDIN_EXIT_AFTER_MS=0\n' >"$ROOT/etc/ecs/ecs.config"
    verdict=ok
    # fds must not grow at all; RSS may wobble by allocator noise (<= 256 kB).
    if [ "$fds1" -gt "$fds0" ] || [ "$rss1" -gt $((rss0 + 256)) ]; then
        verdict=GREW
        status=1
    fi
    printf '%-11s junk=%s cycles %5s in %4s s (%s ms/cycle after warm-up)  RSS %6s -> %6s kB (peak %s)  fds %3s -> %3s  SIGTERM->exit %s ms  %s\n' \
        "$rt" "$JUNK" "$(starts)" "$took" "$per_cycle_ms" "$rss0" "$rss1" "$hwm" "$fds0" "$fds1" "$term_ms" "$verdict"
done
exit "$status"
