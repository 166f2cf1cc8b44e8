#!/usr/bin/env bash
# Benchmark of the launcher against the runtime's own container start (not a test: nothing in
# the test suite runs it). Run as root on a host with dockerd and containerd:
#
#   sudo tests/bench.sh                      # 5 rounds per runtime, docker then containerd
#   sudo ROUNDS=11 tests/bench.sh            # more rounds
#   sudo RUNTIMES=containerd tests/bench.sh  # one runtime only
#   sudo ECS_LOGLEVEL=debug KEEP_ROOT=1 tests/bench.sh   # keep the scratch root and its logs
#
# For each runtime it measures, with the stand-in agent image (tests/stand-in-agent):
#  1. cold start -> introspection answering: from spawning `amazon-ecs-init start` (image
#     already loaded) to the first `GET http://127.0.0.1:51678/v1/metadata` answered 200,
#     against the same container started by the runtime's own CLI (`docker run` / `ctr run`,
#     same env and binds as the launcher's `plan`). Each round: launcher with no old container
#     (the same start state as raw), launcher again with the previous round's stopped
#     `ecs-agent` still there (what a service restart sees: `start` removes it first), raw.
#     Prints every round, the medians and the ratio launcher/raw (target <= 1.2).
#  2. resident memory of the supervising `amazon-ecs-init start` (VmRSS, VmHWM; target < 8 MiB).
#  3. `pre-start` with the image loaded (state 1), median of ROUNDS runs, and the cost of the
#     scratch-netns wrapper it runs in.
#  4. the agent download (once, on the first runtime of RUNTIMES), for each size in
#     DOWNLOAD_SIZES_MB (default "40 300"; empty to skip) and each per-connection rate cap in
#     DOWNLOAD_CAPS (bytes/s, default "0 20000000": none, and 20 MB/s as S3 gives one stream):
#     the tests' fake S3 (tests/support/src/fake_aws.rs, HTTPS with its own CA, Range answered
#     with 206) serves a pseudo-random object on 127.0.0.1 in a scratch network namespace;
#     `curl` (then `md5sum` of its file), N parallel `curl --range` (N = the launcher's
#     parallelism, even ranges, one file each, no hashing) and the launcher's `pre-start`
#     (uncached, AWS_ENDPOINT_URL_S3 pointing there) fetch it, ROUNDS times each. Reports the
#     medians, the ratios launcher/(curl+md5sum) (target <= 1.1 without a cap) and
#     launcher/parallel curl (target <= 1.0 at the cap), and the launcher's peak RSS (GNU time's
#     maximum resident set of the whole pre-start process). The object is not an image, so
#     pre-start's load step fails right after the download: the download's own final log line
#     (size, seconds, MD5; from the first tarball request to the verified digest, before the
#     fsync) is what is timed. BENCH_ONLY=download runs this section alone.
#  6. the ECS volume plugin (VOLUME_PLUGIN=0 to skip), in a private mount namespace of its own
#     (`unshare -m`, so no mount reaches the host) with a test-only `mount.efs` (an overlay on
#     /usr/sbin there) that mounts a tmpfs: ROUNDS times, create+mount+unmount+remove of a volume
#     through the plugin's socket (four HTTP requests, as dockerd makes them) against
#     `mount -t efs` + `umount -l` of the same helper alone (and four `List` requests: the
#     client's and HTTP's share of the difference; the rest is mostly the four fsynced saves
#     of the state file); the plugin's RSS idle, and its
#     peak RSS (VmHWM) while 100 requests run in parallel (100 creates of distinct volumes,
#     then 100 removes).
#  5. the soak (tests/soak.sh), after the summary: SOAK_CYCLES (default 1000; 0 to skip) agent
#     crash/restart cycles under one supervisor on each runtime of RUNTIMES, printing the
#     launcher's RSS and open fds early and at the end; fails when either grew.
# Everything lives under a scratch ECS_INIT_HOST_ROOT; pre-start runs in a scratch network
# namespace (`unshare -n`) so the host's sysctls and firewall never change. The agent lock of
# the tests (/tmp/ecs-init-tests.agent.lock) is held for the whole run. Exits non-zero when a
# daemon is missing or a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
RUNTIMES=${RUNTIMES:-docker containerd}
DOWNLOAD_SIZES_MB=${DOWNLOAD_SIZES_MB-40 300}
DOWNLOAD_CAPS=${DOWNLOAD_CAPS-0 20000000}
BENCH_ONLY=${BENCH_ONLY:-}
LOCK=/tmp/ecs-init-tests.agent.lock
IMAGE=amazon/amazon-ecs-agent:latest
NS_LAUNCHER=ecs-bench          # containerd namespace of the launcher's agent and image
NS_RAW=ecs-bench-raw           # containerd namespace of ctr's own import and container
RAW_CTR_NAME=ecs-agent-bench
UP_TIMEOUT_S=60

die() { echo "bench.sh: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
for rt in $RUNTIMES; do
    [[ $rt == docker || $rt == containerd ]] || die "unknown runtime '$rt' in RUNTIMES"
done
for mb in $DOWNLOAD_SIZES_MB; do
    [[ $mb =~ ^[1-9][0-9]*$ ]] || die "DOWNLOAD_SIZES_MB must hold positive integers"
done
for cap in $DOWNLOAD_CAPS; do
    [[ $cap =~ ^[0-9]+$ ]] || die "DOWNLOAD_CAPS must hold whole numbers (bytes/s, 0: no cap)"
done
[[ -z $BENCH_ONLY || $BENCH_ONLY == download ]] || die "BENCH_ONLY: empty or 'download'"
for tool in jq unshare ip flock awk curl md5sum /usr/bin/time; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done
for rt in $RUNTIMES; do
    case $rt in
    docker)
        command -v docker >/dev/null || die "docker CLI missing"
        docker info >/dev/null 2>&1 || die "dockerd does not answer (docker info failed)"
        ;;
    containerd)
        command -v ctr >/dev/null || die "ctr missing"
        ctr version >/dev/null 2>&1 || die "containerd does not answer (ctr version failed)"
        ;;
    esac
done

# ---------------------------------------------------------------- machine
echo "== machine"
echo "cpus:       $(nproc)"
echo "model:      $(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
echo "kernel:     $(uname -sr)"
for rt in $RUNTIMES; do
    case $rt in
    docker) echo "docker:     $(docker version --format '{{.Server.Version}}' 2>/dev/null)" ;;
    containerd) echo "containerd: $(ctr version 2>/dev/null | awk '/^Server:/ {s=1} s && /Version:/ {print $2; exit}')" ;;
    esac
done
echo "rounds:     $ROUNDS"

# ---------------------------------------------------------------- build
echo "== build (release)"
cargo build -q --release -p amazon-ecs-init
bin=$PWD/target/release/amazon-ecs-init
echo "launcher:   $("$bin" version | head -n 1) ($(stat -c %s "$bin") bytes)"

ROOT=$(mktemp -d /tmp/ecs-init-bench.XXXXXX)
sup=
fake_pid=
DL_NS=
cleanup() {
    local rc=$?
    set +e
    if [ -n "$fake_pid" ]; then
        kill "$fake_pid" 2>/dev/null
        wait "$fake_pid" 2>/dev/null
    fi
    [ -n "$DL_NS" ] && ip netns del "$DL_NS" 2>/dev/null
    if [ -n "$sup" ] && kill -0 "$sup" 2>/dev/null; then
        kill -TERM "$sup" 2>/dev/null
        for _ in $(seq 1 100); do kill -0 "$sup" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$sup" 2>/dev/null
    fi
    if [[ " $RUNTIMES " == *" docker "* ]]; then
        docker rm -f ecs-agent >/dev/null 2>&1
    fi
    if [[ " $RUNTIMES " == *" containerd "* ]]; then
        ctr_remove "$NS_LAUNCHER" ecs-agent
        ctr_remove "$NS_RAW" "$RAW_CTR_NAME"
        for ns in "$NS_LAUNCHER" "$NS_RAW"; do
            ctr -n "$ns" images ls -q 2>/dev/null | xargs -r ctr -n "$ns" images rm --sync >/dev/null 2>&1
            for _ in $(seq 1 50); do
                ctr namespaces remove "$ns" >/dev/null 2>&1 && break
                sleep 0.1
            done
        done
    fi
    if [ "${KEEP_ROOT:-0}" = 1 ]; then
        echo "scratch root kept: $ROOT" >&2
    else
        rm -rf "$ROOT"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Remove a containerd container (task, container, snapshot) with ctr, absent is fine.
ctr_remove() {
    local ns=$1 name=$2
    ctr -n "$ns" task kill -s SIGKILL "$name" >/dev/null 2>&1 || true
    ctr -n "$ns" task delete -f "$name" >/dev/null 2>&1 || true
    ctr -n "$ns" container delete "$name" >/dev/null 2>&1 || true
}

# ---------------------------------------------------------------- scratch host tree
mkdir -p "$ROOT"/{etc/ecs,var/cache/ecs,var/lib/ecs/data,var/log/ecs/exec}
echo "ECS_CLUSTER=bench" >"$ROOT/etc/ecs/ecs.config"
TARBALL=$ROOT/var/cache/ecs/ecs-agent.tar
cargo run -q --release -p ecs-test-support --bin pack-stand-in -- "$TARBALL" >/dev/null
echo 2 >"$ROOT/var/cache/ecs/state"
ECS_INIT_AGENT_INIT=$(cargo run -q --release -p ecs-test-support --bin pack-stand-in -- --print-agent-init)
export ECS_INIT_AGENT_INIT ECS_INIT_HOST_ROOT=$ROOT ECS_INIT_FIREWALL=none
export ECS_INIT_CONTAINERD_NAMESPACE=$NS_LAUNCHER
unset NOTIFY_SOCKET

# ---------------------------------------------------------------- the agent lock
exec 9>>"$LOCK"
# The download section alone starts no agent: it does not wait for the tests' agent lock.
if [ "$BENCH_ONLY" != download ] && ! flock -n 9; then
    echo "waiting for $LOCK (tests running?)" >&2
    flock 9
fi

# ---------------------------------------------------------------- helpers
# An external sleep on purpose: a `read -t` sleep interrupted by the TERM/INT trap below makes
# bash 5.2 longjmp into a dead frame later (stack smashing) instead of cleaning up.
nap() { sleep "$1"; }

now_us() { echo "${EPOCHREALTIME/./}"; }

# One GET /v1/metadata over bash's /dev/tcp: true when it answers 200.
probe() {
    local line=
    { exec 3<>/dev/tcp/127.0.0.1/51678; } 2>/dev/null || return 1
    printf 'GET /v1/metadata HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3 2>/dev/null || { exec 3>&-; return 1; }
    IFS= read -r -t 2 line <&3 || true
    exec 3>&-
    [[ $line == HTTP/1.?\ 200* ]]
}

# Poll every ~10 ms until introspection answers; fails after UP_TIMEOUT_S or when process $1
# (if given) exits.
wait_up() {
    local pid=${1:-} deadline=$(($(now_us) + UP_TIMEOUT_S * 1000000))
    until probe; do
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            echo "bench.sh: process $pid exited before introspection answered" >&2
            return 1
        fi
        [ "$(now_us)" -lt "$deadline" ] || { echo "bench.sh: introspection did not answer in ${UP_TIMEOUT_S}s" >&2; return 1; }
        nap 0.01
    done
}

# Wait until nothing answers on 51678 any more (the next round must start cold).
wait_down() {
    local deadline=$(($(now_us) + 20000000))
    while probe; do
        [ "$(now_us)" -lt "$deadline" ] || die "introspection still answers 20 s after stopping the agent"
        nap 0.05
    done
}

ms() { awk -v us="$1" 'BEGIN { printf "%.1f", us / 1000 }'; }
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
kib_to_mib() { awk -v k="$1" 'BEGIN { printf "%.2f", k / 1024 }'; }

# pre-start and post-stop change the network namespace they run in: use a scratch one.
# shellcheck disable=SC2016 # expanded by the inner sh
netwrap() { unshare -n -- sh -c 'ip link set lo up && exec "$0" "$@"' "$@"; }

# ---------------------------------------------------------------- launcher / raw rounds
launcher_start() { # -> sets sup
    "$bin" start >/dev/null 2>>"$ROOT/start.stderr" 9>&- &
    sup=$!
}

launcher_stop() {
    local rc=0
    "$bin" stop >/dev/null 2>>"$ROOT/stop.stderr" || die "amazon-ecs-init stop failed (see $ROOT/stop.stderr)"
    wait "$sup" || rc=$?
    sup=
    [ "$rc" -eq 0 ] || die "the supervisor exited $rc after stop (stderr: $(tail -n 5 "$ROOT/start.stderr"))"
    wait_down
}

# The launcher's stopped agent container stays after `stop` (the next `start` removes it, as
# upstream does). Remove it with the runtime's own tool, untimed.
remove_launcher_agent() {
    case $1 in
    docker) docker rm -f ecs-agent >/dev/null 2>&1 || true ;;
    containerd) ctr_remove "$NS_LAUNCHER" ecs-agent ;;
    esac
}

# Each round sets RESULT (µs); no subshell, so the EXIT trap always knows $sup.
round_launcher() {
    local t0 t1
    t0=$(now_us)
    launcher_start
    wait_up "$sup" || die "launcher round failed; stderr: $(tail -n 20 "$ROOT/start.stderr")"
    t1=$(now_us)
    launcher_stop
    RESULT=$((t1 - t0))
}

# The agent's env, binds and flags from the launcher's own plan, as CLI arguments.
raw_args() {
    local rt=$1 plan=$ROOT/plan.json
    ECS_INIT_RUNTIME=$rt "$bin" plan >"$plan"
    RAW_ENV=() RAW_MOUNTS=() RAW_FLAGS=()
    mapfile -t RAW_ENV < <(jq -r '.agent.env[]' "$plan")
    [ "$(jq -r '.agent.image' "$plan")" = "$IMAGE" ] || die "plan image is not $IMAGE"
    case $rt in
    docker)
        mapfile -t RAW_MOUNTS < <(jq -r '.agent.mounts[] | "\(.source):\(.target)\(if .read_only then ":ro" else "" end)"' "$plan")
        RAW_FLAGS=(--network host --userns host)
        [ "$(jq -r '.agent.init' "$plan")" = true ] && RAW_FLAGS+=(--init)
        mapfile -t caps < <(jq -r '.agent.cap_add[]' "$plan")
        for c in "${caps[@]}"; do RAW_FLAGS+=(--cap-add "$c"); done
        [ "$(jq -r '.agent.privileged' "$plan")" = true ] && RAW_FLAGS+=(--privileged)
        [ "$(jq -r '.agent.pid' "$plan")" = host ] && RAW_FLAGS+=(--pid host)
        RAW_FLAGS+=(--log-driver "$(jq -r '.agent.log.driver' "$plan")")
        mapfile -t opts < <(jq -r '.agent.log.options | to_entries[] | "\(.key)=\(.value)"' "$plan")
        for o in "${opts[@]}"; do RAW_FLAGS+=(--log-opt "$o"); done
        mapfile -t labels < <(jq -r '.agent.labels | to_entries[] | "\(.key)=\(.value)"' "$plan")
        for l in "${labels[@]}"; do RAW_FLAGS+=(--label "$l"); done
        ;;
    containerd)
        mapfile -t RAW_MOUNTS < <(jq -r '.agent.mounts[] | "type=bind,src=\(.source),dst=\(.target),options=rbind:\(if .read_only then "ro" else "rw" end)"' "$plan")
        RAW_FLAGS=(--net-host)
        mapfile -t caps < <(jq -r '.agent.cap_add[]' "$plan")
        for c in "${caps[@]}"; do RAW_FLAGS+=(--cap-add "CAP_$c"); done
        [ "$(jq -r '.agent.privileged' "$plan")" = true ] && RAW_FLAGS+=(--privileged)
        mapfile -t labels < <(jq -r '.agent.labels | to_entries[] | "\(.key)=\(.value)"' "$plan")
        for l in "${labels[@]}"; do RAW_FLAGS+=(--label "$l"); done
        # stdout/stderr to a file, like the launcher's json-file log (no log process)
        RAW_FLAGS+=(--log-uri "file://$ROOT/raw-ctr-agent.log")
        ;;
    esac
    # Sources the launcher would create (all under the scratch root).
    jq -r '.agent.mounts[].source' "$plan" | while read -r src; do
        case $src in "$ROOT"/*) mkdir -p "$src" ;; esac
    done
    return 0
}

round_raw_docker() {
    local t0 t1 env_args=() mnt_args=() e m
    for e in "${RAW_ENV[@]}"; do env_args+=(-e "$e"); done
    for m in "${RAW_MOUNTS[@]}"; do mnt_args+=(-v "$m"); done
    docker rm -f ecs-agent >/dev/null 2>&1 || true
    t0=$(now_us)
    docker run -d --name ecs-agent "${RAW_FLAGS[@]}" "${env_args[@]}" "${mnt_args[@]}" "$IMAGE" >/dev/null 9>&- ||
        die "docker run failed"
    wait_up || die "raw docker round failed: $(docker logs --tail 20 ecs-agent 2>&1)"
    t1=$(now_us)
    docker rm -f ecs-agent >/dev/null
    wait_down
    RESULT=$((t1 - t0))
}

round_raw_containerd() {
    local t0 t1 env_args=() mnt_args=() e m
    for e in "${RAW_ENV[@]}"; do env_args+=(--env "$e"); done
    for m in "${RAW_MOUNTS[@]}"; do mnt_args+=(--mount "$m"); done
    ctr_remove "$NS_RAW" "$RAW_CTR_NAME"
    t0=$(now_us)
    ctr -n "$NS_RAW" run -d "${RAW_FLAGS[@]}" "${env_args[@]}" "${mnt_args[@]}" "$RAW_REF" "$RAW_CTR_NAME" >/dev/null 9>&- ||
        die "ctr run failed"
    wait_up || die "raw containerd round failed: $(tail -n 20 "$ROOT/raw-ctr-agent.log" 2>&1)"
    t1=$(now_us)
    ctr_remove "$NS_RAW" "$RAW_CTR_NAME"
    wait_down
    RESULT=$((t1 - t0))
}

# ---------------------------------------------------------------- per runtime
SUMMARY=()
for rt in $RUNTIMES; do
    [ "$BENCH_ONLY" = download ] && break
    export ECS_INIT_RUNTIME=$rt
    echo
    echo "================================================================ $rt"
    # Nothing of an earlier run may answer on the agent's ports.
    case $rt in
    docker) docker rm -f ecs-agent >/dev/null 2>&1 || true ;;
    containerd) ctr_remove "$NS_LAUNCHER" ecs-agent; ctr_remove "$NS_RAW" "$RAW_CTR_NAME" ;;
    esac
    wait_down

    echo 2 >"$ROOT/var/cache/ecs/state"
    t0=$(now_us)
    netwrap "$bin" pre-start >/dev/null 2>"$ROOT/pre-start.stderr" 9>&- ||
        die "pre-start failed: $(tail -n 20 "$ROOT/pre-start.stderr")"
    echo "pre-start (state 2: load the image): $(ms $(($(now_us) - t0))) ms"
    [ "$(cat "$ROOT/var/cache/ecs/state")" = 1 ] || die "pre-start did not record state 1"

    raw_args "$rt"
    if [ "$rt" = containerd ]; then
        t0=$(now_us)
        ctr -n "$NS_RAW" images import "$TARBALL" >/dev/null || die "ctr images import failed"
        echo "ctr images import (same tarball):    $(ms $(($(now_us) - t0))) ms"
        RAW_REF=$(ctr -n "$NS_RAW" images ls -q | grep -m1 'amazon-ecs-agent:latest$') ||
            die "ctr import did not name the image"
    fi

    # 1. cold start, interleaved rounds
    L=() S=() R=()
    for i in $(seq 1 "$ROUNDS"); do
        remove_launcher_agent "$rt"
        round_launcher # no container named ecs-agent: the same start state as raw
        L+=("$RESULT")
        round_launcher # the previous round's stopped container is there (a service restart)
        S+=("$RESULT")
        "round_raw_$rt"
        R+=("$RESULT")
        printf '  round %d/%d done\r' "$i" "$ROUNDS" >&2
    done
    printf '\n' >&2
    echo "-- cold start -> GET /v1/metadata answers 200 (ms)"
    echo "   launcher: no old container; +old: the previous stopped ecs-agent is removed first"
    printf '%-8s %12s %12s %16s\n' round launcher "raw $rt" "launcher +old"
    for i in $(seq 0 $((ROUNDS - 1))); do
        printf '%-8s %12s %12s %16s\n' $((i + 1)) "$(ms "${L[$i]}")" "$(ms "${R[$i]}")" "$(ms "${S[$i]}")"
    done
    mL=$(median "${L[@]}") mR=$(median "${R[@]}") mS=$(median "${S[@]}")
    ratio=$(awk -v a="$mL" -v b="$mR" 'BEGIN { printf "%.2f", a / b }')
    verdict=$(awk -v r="$ratio" 'BEGIN { print (r <= 1.2) ? "ok" : "OVER TARGET" }')
    printf '%-8s %12s %12s %16s\n' median "$(ms "$mL")" "$(ms "$mR")" "$(ms "$mS")"
    echo "ratio launcher/raw (medians): $ratio  (target <= 1.2: $verdict)"

    # 2. resident memory while supervising
    remove_launcher_agent "$rt"
    launcher_start
    wait_up "$sup" || die "launcher did not come up for the memory sample"
    nap 0.5
    rss_max=0 hwm=0 samples=()
    for _ in 1 2 3 4 5 6; do
        rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$sup/status")
        hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$sup/status")
        samples+=("$rss")
        [ "$rss" -gt "$rss_max" ] && rss_max=$rss
        nap 0.5
    done
    detail=$(awk '/^(RssAnon|RssFile|Threads):/ {printf "%s %s%s  ", $1, $2, ($1 == "Threads:") ? "" : " kB"}' "/proc/$sup/status")
    launcher_stop
    mem_verdict=$(awk -v k="$hwm" 'BEGIN { print (k < 8192) ? "ok" : "OVER TARGET" }')
    echo "-- resident memory of 'amazon-ecs-init start' while supervising"
    echo "VmRSS samples (kB): ${samples[*]}"
    echo "VmRSS max: $(kib_to_mib "$rss_max") MiB  VmHWM: $(kib_to_mib "$hwm") MiB  (target < 8 MiB: $mem_verdict)"
    echo "last sample: $detail"

    # 3. pre-start with the image already loaded
    P=() W=()
    for _ in $(seq 1 "$ROUNDS"); do
        echo 1 >"$ROOT/var/cache/ecs/state"
        t0=$(now_us)
        netwrap "$bin" pre-start >/dev/null 2>"$ROOT/pre-start.stderr" 9>&- ||
            die "pre-start failed: $(tail -n 20 "$ROOT/pre-start.stderr")"
        P+=($(($(now_us) - t0)))
        t0=$(now_us)
        netwrap true 9>&-
        W+=($(($(now_us) - t0)))
    done
    mP=$(median "${P[@]}") mW=$(median "${W[@]}")
    echo "-- pre-start, state 1, image present (ms, in the scratch-netns wrapper)"
    echo "runs: $(for p in "${P[@]}"; do printf '%s ' "$(ms "$p")"; done)"
    echo "median: $(ms "$mP") ms  (the wrapper alone, unshare+sh+ip: $(ms "$mW") ms)"

    SUMMARY+=("$(printf '%-11s %10s %10s %6s %10s %10s %10s %10s' "$rt" "$(ms "$mL")" "$(ms "$mR")" "$ratio" "$(ms "$mS")" \
        "$(kib_to_mib "$rss_max")" "$(kib_to_mib "$hwm")" "$(ms "$mP")")")
done

# ---------------------------------------------------------------- 4. agent download
DL_SUMMARY=()
if [ -n "$DOWNLOAD_SIZES_MB" ]; then
    echo
    echo "================================================================ agent download"
    cargo build -q --release -p ecs-test-support --bin fake-aws
    fake=$PWD/target/release/fake-aws
    DL_NS=ecs-bench-dl-$$
    ip netns add "$DL_NS"
    ip -n "$DL_NS" link set lo up
    object=$("$bin" plan | jq -r '.cache.download.object')
    PAR=$("$bin" plan | jq -r '.cache.download.parallelism')
    dl_rt=${RUNTIMES%% *}
    echo "object:     $object (pseudo-random bytes), runtime for pre-start: $dl_rt"
    echo "parallel curl: $PAR ranges (the launcher's ECS_INIT_DOWNLOAD_PARALLELISM), one process each"
    for mb in $DOWNLOAD_SIZES_MB; do
      for cap in $DOWNLOAD_CAPS; do
        dir=$ROOT/dl-$mb-$cap
        droot=$dir/root
        mkdir -p "$droot"/{etc/ecs,var/cache/ecs,var/lib/ecs/data,var/log/ecs}
        rate=()
        [ "$cap" = 0 ] || rate=(--rate "$cap")
        ip netns exec "$DL_NS" "$fake" --object "$object" --size $((mb * 1000000)) "${rate[@]}" --dir "$dir" 9>&- &
        fake_pid=$!
        for _ in $(seq 1 600); do [ -s "$dir/endpoints" ] && break; nap 0.1; done
        [ -s "$dir/endpoints" ] || die "fake-aws did not come up"
        S3_URL=$(sed -n 's/^S3_URL=//p' "$dir/endpoints")
        MD5=$(sed -n 's/^MD5=//p' "$dir/endpoints")
        BYTES=$(sed -n 's/^BYTES=//p' "$dir/endpoints")
        url=$S3_URL/amazon-ecs-agent/$object
        part=$(((BYTES + PAR - 1) / PAR))
        C=() M=() P=() L=() R=() CPU_C=() CPU_L=()
        for i in $(seq 1 "$ROUNDS"); do
            # curl, one stream, then md5sum of what it wrote (the launcher also hashes).
            t0=$(now_us)
            ip netns exec "$DL_NS" /usr/bin/time -f '%U %S' -o "$dir/cpu.curl" curl -sS --fail --cacert "$dir/ca.pem" \
                -o "$droot/var/cache/ecs/curl.tar" "$url" 9>&- || die "curl failed"
            t1=$(now_us)
            sum=$(/usr/bin/time -f '%U %S' -o "$dir/cpu.md5" md5sum <"$droot/var/cache/ecs/curl.tar" | cut -d' ' -f1)
            t2=$(now_us)
            CPU_C+=("$(cat "$dir/cpu.curl" "$dir/cpu.md5" | awk '{ s += $1 + $2 } END { printf "%d", s * 1000000 }')")
            [ "$sum" = "$MD5" ] || die "curl got a different object"
            rm -f "$droot/var/cache/ecs/curl.tar"
            C+=($((t1 - t0))) M+=($((t2 - t0)))
            # $PAR curls, each one range into a file of its own (no hashing: curl's best case).
            t0=$(now_us)
            pids=()
            for ((k = 0; k < PAR; k++)); do
                first=$((k * part)) last=$(((k + 1) * part - 1))
                [ "$last" -lt "$BYTES" ] || last=$((BYTES - 1))
                [ "$first" -le "$last" ] || continue
                ip netns exec "$DL_NS" curl -sS --fail --cacert "$dir/ca.pem" --range "$first-$last" \
                    -o "$droot/var/cache/ecs/pcurl.$k" "$url" 9>&- &
                pids+=($!)
            done
            for pid in "${pids[@]}"; do wait "$pid" || die "a parallel curl failed"; done
            t1=$(now_us)
            if [ "$i" = 1 ]; then
                sum=$(cat $(for ((k = 0; k < ${#pids[@]}; k++)); do echo "$droot/var/cache/ecs/pcurl.$k"; done) | md5sum | cut -d' ' -f1)
                [ "$sum" = "$MD5" ] || die "the parallel curls got a different object"
            fi
            rm -f "$droot"/var/cache/ecs/pcurl.*
            P+=($((t1 - t0)))
            echo 0 >"$droot/var/cache/ecs/state"
            rm -f "$droot/var/cache/ecs/ecs-agent.tar"
            rc=0
            # The host's own AWS SDK settings must not apply (AWS_CA_BUNDLE would replace the trust).
            ip netns exec "$DL_NS" env -u AWS_CA_BUNDLE -u AWS_ENDPOINT_URL -u AWS_USE_FIPS_ENDPOINT \
                -u AWS_USE_DUALSTACK_ENDPOINT -u HTTPS_PROXY -u https_proxy \
                ECS_INIT_HOST_ROOT="$droot" ECS_INIT_RUNTIME="$dl_rt" \
                ECS_INIT_FIREWALL=none AWS_ENDPOINT_URL_S3="$S3_URL" SSL_CERT_FILE="$dir/ca.pem" \
                AWS_EC2_METADATA_DISABLED=true AWS_REGION=us-east-1 ECS_LOGLEVEL=info \
                /usr/bin/time -f '%M %U %S' -o "$dir/rss" "$bin" pre-start >/dev/null 2>"$dir/pre-start.stderr" 9>&- || rc=$?
            line=$(grep 'agent downloaded' "$dir/pre-start.stderr") ||
                die "pre-start did not download (exit $rc): $(tail -n 5 "$dir/pre-start.stderr")"
            [[ $line == *"$MD5"* ]] || die "the launcher's MD5 differs: $line"
            dsecs=$(sed -n 's/.*seconds="\{0,1\}\([0-9.]*\).*/\1/p' <<<"$line")
            L+=("$(awk -v s="$dsecs" 'BEGIN { printf "%d", s * 1000000 }')")
            R+=("$(tail -n 1 "$dir/rss" | cut -d' ' -f1)")
            CPU_L+=("$(tail -n 1 "$dir/rss" | awk '{ printf "%d", ($2 + $3) * 1000000 }')")
            printf '  %s MB cap %s round %d/%d done\r' "$mb" "$cap" "$i" "$ROUNDS" >&2
        done
        printf '\n' >&2
        kill "$fake_pid" 2>/dev/null
        wait "$fake_pid" 2>/dev/null || true
        fake_pid=
        rm -rf "$droot/var/cache/ecs"
        mC=$(median "${C[@]}") mM=$(median "${M[@]}") mP=$(median "${P[@]}") mL=$(median "${L[@]}")
        rss_max=$(printf '%s\n' "${R[@]}" | sort -n | tail -n 1)
        rM=$(awk -v a="$mL" -v b="$mM" 'BEGIN { printf "%.2f", a / b }')
        rP=$(awk -v a="$mL" -v b="$mP" 'BEGIN { printf "%.2f", a / b }')
        capname=$([ "$cap" = 0 ] && echo none || echo "$cap B/s")
        mbs() { awk -v b="$BYTES" -v us="$1" 'BEGIN { printf "%.0f", b / us }'; }
        echo "-- $mb MB ($BYTES bytes), per-connection cap: $capname (ms)"
        echo "curl:           $(for c in "${C[@]}"; do printf '%s ' "$(ms "$c")"; done)"
        echo "curl+md5sum:    $(for c in "${M[@]}"; do printf '%s ' "$(ms "$c")"; done)"
        echo "$PAR x curl --range: $(for c in "${P[@]}"; do printf '%s ' "$(ms "$c")"; done)"
        echo "launcher:       $(for l in "${L[@]}"; do printf '%s ' "$(ms "$l")"; done)"
        echo "peak RSS of pre-start (KiB): ${R[*]}"
        echo "CPU (user+sys) curl+md5sum: $(for c in "${CPU_C[@]}"; do printf '%s ' "$(ms "$c")"; done)ms; whole pre-start: $(for c in "${CPU_L[@]}"; do printf '%s ' "$(ms "$c")"; done)ms"
        echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "median: curl $(ms "$mC"), curl+md5sum $(ms "$mM"), parallel curl $(ms "$mP"), launcher $(ms "$mL") ms ($(mbs "$mL") MB/s); launcher/(curl+md5sum) $rM, launcher/parallel curl $rP; peak RSS $(kib_to_mib "$rss_max") MiB"
        DL_SUMMARY+=("$(printf '%-5s %-10s %9s %9s %9s %9s %7s %7s %8s' "$mb" "$capname" "$(ms "$mC")" "$(ms "$mM")" "$(ms "$mP")" "$(ms "$mL")" \
            "$rM" "$rP" "$(kib_to_mib "$rss_max")")")
      done
    done
fi

# ---------------------------------------------------------------- 6. the ECS volume plugin
VP_SUMMARY=
if [ "${VOLUME_PLUGIN:-1}" != 0 ]; then
    echo "================================================================ volume plugin"
    cargo build -q --release -p ecs-volume-plugin
    vp_bin=$PWD/target/release/amazon-ecs-volume-plugin
    echo "plugin:     $("$vp_bin" --version) ($(stat -c %s "$vp_bin") bytes)"
    VP=$ROOT/volume-plugin
    mkdir -p "$VP/sbin-upper" "$VP/sbin-work" "$VP/root"
    printf '%s\n' '#!/bin/sh' 'exec mount -t tmpfs -o size=1m efs-bench "$2"' >"$VP/sbin-upper/mount.efs"
    chmod 755 "$VP/sbin-upper/mount.efs"
    # Runs as PID 1's sibling in a private mount namespace; prints "key value" lines.
    VP_OUT=$(unshare -m --propagation private env VP="$VP" BIN="$vp_bin" ROUNDS="$ROUNDS" bash -s <<'INNER'
set -euo pipefail
mount -t overlay overlay -o "lowerdir=/usr/sbin,upperdir=$VP/sbin-upper,workdir=$VP/sbin-work" /usr/sbin
now_us() { echo "${EPOCHREALTIME/./}"; }
sock=$VP/plugin.sock
ECS_INIT_HOST_ROOT=$VP/root ECS_VOLUME_PLUGIN_SOCKET=$sock ECS_LOGLEVEL=warn "$BIN" 2>"$VP/plugin.err" &
pid=$!
for _ in $(seq 1 100); do [ -S "$sock" ] && break; sleep 0.05; done
call() { curl -sf --unix-socket "$sock" -d "$2" "http://plugin/VolumeDriver.$1" >/dev/null; }
sleep 0.5
echo "idle_rss_kib $(awk '/^VmRSS/ {print $2}' /proc/$pid/status)"
dir=$VP/helper-alone
mkdir -p "$dir"
for i in $(seq 1 "$ROUNDS"); do
    t0=$(now_us)
    call Create "{\"Name\":\"b$i\",\"Opts\":{\"type\":\"efs\",\"device\":\"fs-1:/\",\"o\":\"tls\"}}"
    call Mount "{\"Name\":\"b$i\",\"ID\":\"c\"}"
    call Unmount "{\"Name\":\"b$i\",\"ID\":\"c\"}"
    call Remove "{\"Name\":\"b$i\"}"
    t1=$(now_us)
    mount -t efs -o tls fs-1:/ "$dir"
    umount -l "$dir"
    t2=$(now_us)
    # The same four requests' client and HTTP cost alone (List changes nothing, saves nothing).
    for _ in 1 2 3 4; do call List '{}'; done
    t3=$(now_us)
    echo "round $((t1 - t0)) $((t2 - t1)) $((t3 - t2))"
done
t0=$(now_us)
for i in $(seq 1 100); do
    call Create "{\"Name\":\"p$i\",\"Opts\":{\"type\":\"efs\",\"device\":\"fs-1:/\"}}" &
done
wait_rc=0
for j in $(jobs -p); do [ "$j" = "$pid" ] || wait "$j" || wait_rc=1; done
t1=$(now_us)
for i in $(seq 1 100); do call Remove "{\"Name\":\"p$i\"}" & done
for j in $(jobs -p); do [ "$j" = "$pid" ] || wait "$j" || wait_rc=1; done
t2=$(now_us)
echo "parallel $((t1 - t0)) $((t2 - t1)) $wait_rc"
echo "peak_rss_kib $(awk '/^VmHWM/ {print $2}' /proc/$pid/status)"
echo "after_rss_kib $(awk '/^VmRSS/ {print $2}' /proc/$pid/status)"
echo "left_mounted $(grep -c " $VP/root/" /proc/self/mountinfo || true)"
kill -TERM "$pid"
wait "$pid"
INNER
    ) || die "the volume plugin bench failed: $(cat "$VP/plugin.err" 2>/dev/null)"
    P=() H=() Q=()
    while read -r _ p h q; do P+=("$p"); H+=("$h"); Q+=("$q"); done < <(grep '^round ' <<<"$VP_OUT")
    echo "plugin create+mount+unmount+remove (ms): $(for v in "${P[@]}"; do printf '%s ' "$(ms "$v")"; done)"
    echo "helper alone, mount+umount -l (ms):       $(for v in "${H[@]}"; do printf '%s ' "$(ms "$v")"; done)"
    echo "4 List requests (curl + HTTP only) (ms):  $(for v in "${Q[@]}"; do printf '%s ' "$(ms "$v")"; done)"
    read -r _ pc pr prc <<<"$(grep '^parallel ' <<<"$VP_OUT")"
    [ "$prc" = 0 ] || die "some of the 100 parallel requests failed"
    [ "$(awk '/^left_mounted/ {print $2}' <<<"$VP_OUT")" = 0 ] || die "volumes left mounted after the removes"
    idle=$(awk '/^idle_rss_kib/ {print $2}' <<<"$VP_OUT")
    peak=$(awk '/^peak_rss_kib/ {print $2}' <<<"$VP_OUT")
    after=$(awk '/^after_rss_kib/ {print $2}' <<<"$VP_OUT")
    mP=$(median "${P[@]}") mH=$(median "${H[@]}") mQ=$(median "${Q[@]}")
    echo "100 parallel creates: $(ms "$pc") ms, then 100 parallel removes: $(ms "$pr") ms"
    echo "RSS idle $(kib_to_mib "$idle") MiB, peak under 100 parallel requests $(kib_to_mib "$peak") MiB, after $(kib_to_mib "$after") MiB"
    VP_SUMMARY=$(printf '%10s %10s %10s %10s %10s %10s %10s' "$(ms "$mP")" "$(ms "$mH")" "$(ms "$(awk -v a="$mP" -v b="$mH" 'BEGIN { print a - b }')")" "$(ms "$mQ")" \
        "$(kib_to_mib "$idle")" "$(kib_to_mib "$peak")" "$(ms "$pc")")
fi

echo
echo "================================================================ summary (medians of $ROUNDS)"
printf '%-11s %10s %10s %6s %10s %10s %10s %10s\n' runtime "launch ms" "raw ms" ratio "+old ms" "RSS MiB" "HWM MiB" "pre-st ms"
printf '%s\n' "${SUMMARY[@]}"
if [ ${#DL_SUMMARY[@]} -gt 0 ]; then
    echo
    printf '%-5s %-10s %9s %9s %9s %9s %7s %7s %8s\n' MB cap "curl" "curl+md5" "par.curl" "launcher" "L/c+md5" "L/par" "RSS MiB"
    printf '%s\n' "${DL_SUMMARY[@]}"
fi
if [ -n "$VP_SUMMARY" ]; then
    echo
    printf '%10s %10s %10s %10s %10s %10s %10s\n' "plugin ms" "helper ms" "overhead" "4 List ms" "idle MiB" "peak MiB" "100 par ms"
    echo "$VP_SUMMARY"
fi

# ---------------------------------------------------------------- 5. soak
SOAK_CYCLES=${SOAK_CYCLES:-1000}
[ "$BENCH_ONLY" = download ] && SOAK_CYCLES=0
if [ "$SOAK_CYCLES" != 0 ]; then
    echo
    echo "================================================================ soak ($SOAK_CYCLES cycles)"
    # soak.sh takes the tests' agent lock itself: hand it over.
    flock -u 9 || true
    exec 9>&-
    CYCLES=$SOAK_CYCLES RUNTIMES=$RUNTIMES bash tests/soak.sh
fi
