#!/usr/bin/env bash
# Prepares a Debian/Ubuntu machine for the amazon-ecs-init test suite. Run as root; idempotent.
#
# 1. installs what is missing of the packages the tests and the packaging need;
# 2. makes sure containerd answers, starting it if needed;
# 3. makes sure dockerd answers, starting it if needed with
#      --iptables=false --ip6tables=false --bridge=none --containerd=/run/containerd/containerd.sock
#    because the tests must never change the host's own firewall or interfaces (the launcher's
#    firewall tests work inside network namespaces they create);
# 4. prints a short summary.
#
# A daemon killed by an earlier session can leave pid files and sockets behind that stop the
# next start (dockerd refuses to start while its pid file names a live process, for example).
# They are removed only when no live process owns them. Daemon output goes to
# /var/log/ecs-init-tests/{containerd,dockerd}.log; when a daemon does not answer within 60 s
# the script fails with the last lines of that log.
#
# With systemd as PID 1 the daemons are started with systemctl (drop-ins add the flags above
# and the log files); otherwise they are started in the background with setsid/nohup.

# Overrides (for testing this script against a private pair of daemons, never needed normally):
#   ECS_TEST_LOG_DIR, ECS_TEST_CONTAINERD_SOCK, ECS_TEST_CONTAINERD_ARGS (extra containerd args),
#   ECS_TEST_DOCKER_SOCK, ECS_TEST_DOCKER_PID, ECS_TEST_DOCKER_EXEC_ROOT,
#   ECS_TEST_DOCKERD_ARGS (extra dockerd args), ECS_TEST_NO_SYSTEMD=1 (background start even
#   under systemd).

set -euo pipefail

DEFAULT_CONTAINERD_SOCK=/run/containerd/containerd.sock
DEFAULT_DOCKER_SOCK=/var/run/docker.sock
DEFAULT_DOCKER_PID=/var/run/docker.pid
LOG_DIR=${ECS_TEST_LOG_DIR:-/var/log/ecs-init-tests}
CONTAINERD_SOCK=${ECS_TEST_CONTAINERD_SOCK:-$DEFAULT_CONTAINERD_SOCK}
DOCKER_SOCK=${ECS_TEST_DOCKER_SOCK:-$DEFAULT_DOCKER_SOCK}
DOCKER_PID=${ECS_TEST_DOCKER_PID:-$DEFAULT_DOCKER_PID}
DOCKER_EXEC_ROOT=${ECS_TEST_DOCKER_EXEC_ROOT:-/var/run/docker}
read -r -a CONTAINERD_EXTRA <<<"${ECS_TEST_CONTAINERD_ARGS:-}"
read -r -a DOCKERD_EXTRA <<<"${ECS_TEST_DOCKERD_ARGS:-}"
if [ "$CONTAINERD_SOCK" != "$DEFAULT_CONTAINERD_SOCK" ]; then
    CONTAINERD_EXTRA+=(--address "$CONTAINERD_SOCK")
fi
if [ "$DOCKER_SOCK" != "$DEFAULT_DOCKER_SOCK" ]; then
    DOCKERD_EXTRA+=(-H "unix://${DOCKER_SOCK}")
fi
if [ "$DOCKER_PID" != "$DEFAULT_DOCKER_PID" ]; then
    DOCKERD_EXTRA+=(--pidfile "$DOCKER_PID")
fi
DOCKERD_FLAGS=(--iptables=false --ip6tables=false --bridge=none "--containerd=${CONTAINERD_SOCK}")
WAIT_SECS=60

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"

# ---------------------------------------------------------------- packages
# package:command — a package counts as present when dpkg says it is installed or when its
# command exists (docker-ce/containerd.io provide dockerd/containerd under other names, and
# installing docker.io over them would conflict).
PACKAGES=(
    docker.io:dockerd
    containerd:containerd
    runc:runc
    iptables:iptables
    nftables:nft
    iproute2:ip
    protobuf-compiler:protoc
    rpm:rpmbuild
    binutils:readelf
    python3-pip:pip3
    dpkg-dev:dpkg-buildpackage
    file:file
    curl:curl
    procps:ps
    util-linux:unshare
    apparmor:apparmor_parser
    systemd:systemd-analyze
    systemd-container:systemd-nspawn
    debootstrap:debootstrap
)

pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

missing=()
for entry in "${PACKAGES[@]}"; do
    pkg=${entry%%:*}
    cmd=${entry#*:}
    if ! pkg_installed "$pkg" && ! command -v "$cmd" >/dev/null 2>&1; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    say "all packages present"
fi

mkdir -p "$LOG_DIR"

# ---------------------------------------------------------------- helpers
containerd_answers() { timeout 10 ctr --address "$CONTAINERD_SOCK" version >/dev/null 2>&1; }
export CONTAINERD_ADDRESS=$CONTAINERD_SOCK DOCKER_HOST=unix://$DOCKER_SOCK
docker_answers() { timeout 10 docker -H "unix://${DOCKER_SOCK}" version >/dev/null 2>&1; }

# True when some live process listens on this unix socket path (paths compared after
# resolving symlinks such as /var/run -> /run).
socket_owned() {
    local want
    want=$(realpath -m "$1")
    ss -xlnH 2>/dev/null | awk '{print $5}' | {
        while read -r p; do
            [ "$(realpath -m "$p")" = "$want" ] && exit 0
        done
        exit 1
    }
}

# The value of a daemon's --address/-a (containerd) or -H/--host (dockerd) style flag in a
# NUL-separated cmdline, or the default when absent.
flag_value() {
    local cmdline_file=$1 default=$2
    shift 2
    local prev="" arg f
    while IFS= read -r -d '' arg; do
        for f in "$@"; do
            if [ "$prev" = "$f" ]; then
                echo "$arg"
                return
            fi
            case "$arg" in "$f="*) echo "${arg#*=}"; return ;; esac
        done
        prev=$arg
    done <"$cmdline_file"
    echo "$default"
}

# Is this pid a live process (not a zombie)? A daemon killed by the end of an earlier session
# can stay a zombie for good where PID 1 does not reap orphans, and must not count as running.
alive() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [ -n "$state" ] && [ "$state" != Z ]
}

# True when a containerd process serving our socket exists (it may still be starting).
containerd_running() {
    local pid addr
    for pid in $(pgrep -x containerd || true); do
        alive "$pid" || continue
        addr=$(flag_value "/proc/$pid/cmdline" "$DEFAULT_CONTAINERD_SOCK" --address -a 2>/dev/null) || continue
        [ "$(realpath -m "$addr")" = "$(realpath -m "$CONTAINERD_SOCK")" ] && return 0
    done
    socket_owned "$CONTAINERD_SOCK"
}

# True when the dockerd of our pid file is alive or something listens on our socket.
dockerd_running() {
    pidfile_live "$DOCKER_PID" dockerd || socket_owned "$DOCKER_SOCK"
}

# Is the pid in this file a live process called $2?
pidfile_live() {
    local file=$1 name=$2 pid
    [ -s "$file" ] || return 1
    pid=$(tr -dc '0-9' <"$file")
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$name" ] && alive "$pid"
}

remove_stale() {
    local path
    for path in "$@"; do
        if [ -e "$path" ] || [ -L "$path" ]; then
            say "removing stale $path"
            rm -rf -- "$path"
        fi
    done
}

# Pid of the daemon this script just started in the background (empty under systemd or when
# waiting for a daemon someone else started): if it dies, waiting longer is pointless.
STARTED_PID=

wait_for() {
    local what=$1 probe=$2 log=$3 i reason="did not answer within ${WAIT_SECS}s"
    for ((i = 0; i < WAIT_SECS; i++)); do
        if "$probe"; then
            return 0
        fi
        if [ -n "$STARTED_PID" ] && ! kill -0 "$STARTED_PID" 2>/dev/null; then
            reason="exited right after start"
            break
        fi
        sleep 1
    done
    printf 'setup: ERROR: %s %s; last lines of %s:\n' "$what" "$reason" "$log" >&2
    tail -n 40 "$log" >&2 2>/dev/null || true
    if [ -n "${SYSTEMD:-}" ]; then
        journalctl -u "$what" -n 40 --no-pager >&2 2>/dev/null || true
    fi
    exit 1
}

SYSTEMD=
if [ -z "${ECS_TEST_NO_SYSTEMD:-}" ] && [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ] &&
    [ -d /run/systemd/system ]; then
    SYSTEMD=1
fi

# Drop-ins so that a systemd-started daemon gets the same flags and log files as ours.
write_dropins() {
    local dockerd_bin
    dockerd_bin=$(command -v dockerd)
    mkdir -p /etc/systemd/system/containerd.service.d /etc/systemd/system/docker.service.d
    cat >/etc/systemd/system/containerd.service.d/ecs-init-tests.conf <<EOF
# Written by amazon-ecs-init tests/setup.sh: log where the test suite looks.
[Service]
StandardOutput=append:${LOG_DIR}/containerd.log
StandardError=append:${LOG_DIR}/containerd.log
EOF
    cat >/etc/systemd/system/docker.service.d/ecs-init-tests.conf <<EOF
# Written by amazon-ecs-init tests/setup.sh: the tests must never change the host firewall or
# interfaces, so dockerd runs without iptables rules and without the default bridge.
[Service]
ExecStart=
ExecStart=${dockerd_bin} -H fd:// ${DOCKERD_FLAGS[*]}
StandardOutput=append:${LOG_DIR}/dockerd.log
StandardError=append:${LOG_DIR}/dockerd.log
EOF
    systemctl daemon-reload
}

# ---------------------------------------------------------------- containerd
start_containerd() {
    if containerd_answers; then
        say "containerd answers"
        return
    fi
    if containerd_running; then
        say "containerd is running but not answering yet; waiting"
        wait_for containerd containerd_answers "$LOG_DIR/containerd.log"
        return
    fi
    # No live containerd serves our socket: the socket files are stale.
    remove_stale "$CONTAINERD_SOCK" "${CONTAINERD_SOCK}.ttrpc"
    say "starting containerd ${CONTAINERD_EXTRA[*]}"
    if [ -n "$SYSTEMD" ]; then
        write_dropins
        systemctl start containerd.service
    else
        setsid nohup containerd "${CONTAINERD_EXTRA[@]}" </dev/null >>"$LOG_DIR/containerd.log" 2>&1 &
        STARTED_PID=$!
    fi
    wait_for containerd containerd_answers "$LOG_DIR/containerd.log"
    say "containerd started"
}

# ---------------------------------------------------------------- dockerd
start_dockerd() {
    if docker_answers; then
        say "dockerd answers"
        return
    fi
    if dockerd_running; then
        say "dockerd is running but not answering yet; waiting"
        wait_for docker docker_answers "$LOG_DIR/dockerd.log"
        return
    fi
    # No live dockerd: its pid file and socket are stale, and so are the sockets and pid file of
    # a containerd that an earlier dockerd managed itself (without --containerd), unless that
    # containerd still lives.
    remove_stale "$DOCKER_PID" "$DOCKER_SOCK"
    local managed=$DOCKER_EXEC_ROOT/containerd sock
    if ! pidfile_live "$managed/containerd.pid" containerd; then
        for sock in containerd.sock containerd.sock.ttrpc containerd-debug.sock; do
            if [ -S "$managed/$sock" ] && ! socket_owned "$managed/$sock"; then
                remove_stale "$managed/$sock"
            fi
        done
        remove_stale "$managed/containerd.pid"
    fi
    say "starting dockerd ${DOCKERD_FLAGS[*]} ${DOCKERD_EXTRA[*]}"
    if [ -n "$SYSTEMD" ]; then
        write_dropins
        systemctl start docker.service
    else
        setsid nohup dockerd "${DOCKERD_FLAGS[@]}" "${DOCKERD_EXTRA[@]}" </dev/null >>"$LOG_DIR/dockerd.log" 2>&1 &
        STARTED_PID=$!
    fi
    wait_for docker docker_answers "$LOG_DIR/dockerd.log"
    say "dockerd started"
}

start_containerd
start_dockerd

# A dockerd that was already running may have been started by someone else without our
# flags; say so loudly rather than restarting a daemon others may be using.
dockerd_pid=$(tr -dc '0-9' <"$DOCKER_PID" 2>/dev/null || true)
if [ -n "$dockerd_pid" ] && [ -r "/proc/$dockerd_pid/cmdline" ]; then
    cmdline=$(tr '\0' ' ' <"/proc/$dockerd_pid/cmdline")
    for flag in --iptables=false --bridge=none; do
        case " $cmdline " in
            *" $flag "*) ;;
            *) say "WARNING: running dockerd lacks $flag ($cmdline); it may change the host firewall/interfaces" ;;
        esac
    done
fi

# ---------------------------------------------------------------- summary
init_name=$(cat /proc/1/comm)
if [ -n "$SYSTEMD" ]; then init_name=systemd; fi
say "summary:"
printf '  %-11s %s\n' \
    kernel "$(uname -r)" \
    dockerd "$(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?')" \
    containerd "$(ctr version 2>/dev/null | awk '/Server:/{s=1} s && /Version:/{print $2; exit}')" \
    runc "$(runc --version 2>/dev/null | head -n1 | awk '{print $3}')" \
    iptables "$(iptables --version 2>/dev/null || echo absent)" \
    nft "$(nft --version 2>/dev/null || echo absent)" \
    init "$init_name" \
    logs "$LOG_DIR"
