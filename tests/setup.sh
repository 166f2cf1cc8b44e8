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

set -euo pipefail

LOG_DIR=/var/log/ecs-init-tests
CONTAINERD_SOCK=/run/containerd/containerd.sock
DOCKER_SOCK=/var/run/docker.sock
DOCKER_PID=/var/run/docker.pid
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
    dpkg-dev:dpkg-buildpackage
    file:file
    curl:curl
    procps:ps
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
docker_answers() { timeout 10 docker -H "unix://${DOCKER_SOCK}" version >/dev/null 2>&1; }

# True when a process with exactly this name is alive.
alive() { pgrep -x "$1" >/dev/null 2>&1; }

# Is the pid in this file a live process called $2?
pidfile_live() {
    local file=$1 name=$2 pid
    [ -s "$file" ] || return 1
    pid=$(tr -dc '0-9' <"$file")
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$name" ]
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

wait_for() {
    local what=$1 probe=$2 log=$3 i
    for ((i = 0; i < WAIT_SECS; i++)); do
        if "$probe"; then
            return 0
        fi
        sleep 1
    done
    printf 'setup: ERROR: %s did not answer within %ss; last lines of %s:\n' "$what" "$WAIT_SECS" "$log" >&2
    tail -n 40 "$log" >&2 2>/dev/null || true
    if [ -n "${SYSTEMD:-}" ]; then
        journalctl -u "$what" -n 40 --no-pager >&2 2>/dev/null || true
    fi
    exit 1
}

SYSTEMD=
if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ] && [ -d /run/systemd/system ]; then
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
    if alive containerd; then
        say "containerd is running but not answering yet; waiting"
        wait_for containerd containerd_answers "$LOG_DIR/containerd.log"
        return
    fi
    # No live containerd: its sockets and docker's managed-containerd leftovers are stale.
    remove_stale "$CONTAINERD_SOCK" "${CONTAINERD_SOCK}.ttrpc" \
        /run/docker/containerd/containerd.sock /run/docker/containerd/containerd.sock.ttrpc \
        /run/docker/containerd/containerd-debug.sock /run/docker/containerd/containerd.pid
    say "starting containerd"
    if [ -n "$SYSTEMD" ]; then
        write_dropins
        systemctl start containerd.service
    else
        setsid nohup containerd </dev/null >>"$LOG_DIR/containerd.log" 2>&1 &
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
    if alive dockerd; then
        say "dockerd is running but not answering yet; waiting"
        wait_for docker docker_answers "$LOG_DIR/dockerd.log"
        return
    fi
    if [ -e "$DOCKER_PID" ] && ! pidfile_live "$DOCKER_PID" dockerd; then
        remove_stale "$DOCKER_PID"
    fi
    remove_stale "$DOCKER_SOCK"
    say "starting dockerd ${DOCKERD_FLAGS[*]}"
    if [ -n "$SYSTEMD" ]; then
        write_dropins
        systemctl start docker.service
    else
        setsid nohup dockerd "${DOCKERD_FLAGS[@]}" </dev/null >>"$LOG_DIR/dockerd.log" 2>&1 &
    fi
    wait_for docker docker_answers "$LOG_DIR/dockerd.log"
    say "dockerd started"
}

start_containerd
start_dockerd

# A dockerd that was already running may have been started by someone else without our
# flags; say so loudly rather than restarting a daemon others may be using.
dockerd_pid=$(pgrep -x dockerd | head -n1 || true)
if [ -n "$dockerd_pid" ]; then
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
