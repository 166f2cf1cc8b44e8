#!/usr/bin/env bash
# The systemd unit and the DEB under a real, booted systemd.
#
# Boots Debian 12 with systemd as PID 1 in a systemd-nspawn container (PID 1 of the test machine
# is not systemd), installs the DEB that `make -C packaging deb` builds with dpkg, and checks what
# operators meet through systemctl, journalctl and dpkg/apt-get inside that system:
#
#   1. dpkg -i installs cleanly; the unit is loaded and not enabled (the package leaves that to
#      the operator, as upstream); /etc/ecs/ecs.config is a conffile
#   2. systemctl start returns only once the agent container runs (Type=notify, READY=1);
#      systemctl status shows the launcher's status line; the stand-in agent answers on 51678;
#      the firewall rules, route_localnet=1 and the 169.254.170.2 lo route are in place
#   3. the agent crashes (SIGKILL) -> the launcher restarts it; the unit stays active, one agent
#   4. the launcher is SIGKILLed -> systemd restarts the unit after RestartSec; exactly one agent
#      and the same rule set (one copy of each rule) afterwards
#   5. the agent exits 5 -> the unit ends failed and is not restarted; the rules are removed
#   6. systemctl stop -> agent stopped, post-stop restored the rules, the route and the sysctl
#   7. dpkg -i of a newer revision while running -> restarted on the new binary (try-restart);
#      while stopped -> stays stopped; the operator's configuration is untouched
#   8. apt-get remove stops and disables it; purge removes the package's files and keeps what the
#      operator and the agent wrote
#   9. journalctl -u ecs: no second timestamp or level in the launcher's lines, priorities usable
#      with -p; the file log keeps its own format
#  10. a second boot without dockerd (docker.io purged): the containerd backend, for 1, 2, 3, 6
#  11. the volume plugin (Docker boot): the package enabled and started its socket, the first
#      request starts the service (socket activation); volumes created, mounted by a test-only
#      mount.efs in the booted system, counted per mount ID; SIGKILL of the plugin -> systemd
#      restarts it, the volume stays mounted with its data, Unmount and Remove still work; at
#      removal (item 8) the plugin is stopped and disabled, a mounted volume is left mounted
#      with a warning. (Containers on plugin volumes under a real dockerd, and the plugin's
#      restart under them, are tests/…/docker_volumes.rs: the private dockerd here does not see
#      the booted system's later mounts.)
#
# The container runtime: the booted system gets its own network namespace (--private-network).
# A private containerd (and, for the Docker boot, a private dockerd) from the booted system's own
# packages runs in that network namespace, in a private copy of its mount namespace (so the
# daemons see the same /, /run, /var/lib/ecs, /usr/libexec… as the launcher inside, as on a real
# host), in a new pid namespace (its end kills every daemon, shim and agent) and in a new cgroup
# namespace below a cgroup of this script (so runc's cgroups, e.g. /ecs-init/ecs-agent, never
# meet the machine's own). Their sockets are in a host directory bound at /run/ecs-test, and the
# unit is pointed at them with an EnvironmentFile drop-in, as an operator with a non-default
# socket would; their data roots are host directories bound at /var/lib/{docker,containerd}.
# The runtime's own units inside are masked: the runtime is provided from outside systemd.
# Nothing here touches the machine's own containerd, dockerd, firewall, routes or sysctls.
#
# The Debian root filesystem is made with debootstrap from the mirror configured in
# /etc/apt/sources.list* and cached under /var/tmp/ecs-init-systemd-rootfs/<key> (key: suite,
# mirror, package list, recipe); each boot runs on an overlay over it, so the cache stays clean.
#
# Run as root: tests/systemd/run.sh. Missing tools fail the run (tests/setup.sh installs them).
# Prints `ok - …` / `FAIL - …` per check, a phase timing summary and `N passed, N failed`.
set -Eeuo pipefail

readonly SUITE=bookworm
readonly RECIPE=1 # bump when the rootfs customisation below changes
readonly ROOTFS_PACKAGES=(systemd systemd-sysv dbus iptables nftables iproute2 procps curl
    containerd runc docker.io)
readonly INSIDE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
readonly SOCK_IN=/run/ecs-test # the daemons' sockets in the booted system (a host directory bound there)
readonly AGENT_COMM=agent      # the stand-in agent's process name (its image runs /agent)

# ------------------------------------------------------------------------------------------------
# The runtime's namespace. Its init runs as PID 1 of a new pid namespace, in a new cgroup
# namespace, in a private copy of the booted system's mount namespace (so the daemons see the
# same /, /run, /var/lib/ecs, … as the launcher inside) and in its network namespace:
#   runtime_ns_init docker|containerd TOP_CGROUP_FSTYPE "HOST CGROUP MOUNTS"
# It mounts its own /proc, /sys and cgroups, starts the daemons (output to fds 3 and 4) and
# waits. When it ends (it is SIGKILLed at clean-up), the kernel kills everything in it.
# Passed to `bash -c` with `declare -f`: it runs inside the booted system's filesystem.
runtime_ns_init() {
    local kind=$1 top_fstype=$2 cgroup_mounts=$3
    export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    mount -t proc -o nosuid,nodev,noexec proc /proc
    # Only the network sysctls are this namespace's own; the others stay read-only, as nspawn
    # keeps them for the booted system.
    mount --bind /proc/sys /proc/sys
    mount --bind /proc/sys/net /proc/sys/net
    mount -o remount,bind,ro /proc/sys
    mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
    # Fresh cgroup mounts: inside the cgroup namespace their root is the test's cgroup, so the
    # runtime's cgroups (e.g. containerd's /ecs-init/ecs-agent) land below it, apart from the
    # machine's own containers.
    if [ "$top_fstype" = cgroup2 ]; then
        mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup
    else
        mount -t tmpfs -o nosuid,nodev,noexec,mode=0755 tmpfs /sys/fs/cgroup
        local target fstype opts
        while read -r target fstype opts; do
            case $target in /sys/fs/cgroup/*) ;; *) continue ;; esac
            mkdir -p "$target"
            if [ "$fstype" = cgroup2 ]; then
                mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$target"
            else
                opts=$(tr ',' '\n' <<<"$opts" | grep -vx -e rw -e ro | paste -sd, -)
                mount -t cgroup -o "nosuid,nodev,noexec,$opts" cgroup "$target"
            fi
        done <<<"$cgroup_mounts"
    fi
    containerd --config /run/ecs-test/containerd.toml --address /run/ecs-test/containerd.sock \
        --root /var/lib/containerd --state /run/containerd </dev/null >&3 2>&3 3>&- 4>&- &
    if [ "$kind" = docker ]; then
        dockerd -H unix:///run/ecs-test/docker.sock --containerd /run/ecs-test/containerd.sock \
            --containerd-namespace ecs-test-moby --containerd-plugins-namespace ecs-test-plugins \
            --pidfile /run/docker.pid --exec-root /run/docker --data-root /var/lib/docker \
            --config-file /run/ecs-test/daemon.json --iptables=false --ip6tables=false \
            --bridge=none </dev/null >&4 2>&4 3>&- 4>&- &
    fi
    exec 3>&- 4>&-
    # PID 1 of the namespace: reap whatever is re-parented here until killed.
    while :; do wait || true; sleep 1; done
}

# ------------------------------------------------------------------------------------------------
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../.." && pwd)

# pass, fail, check, indent and the counts.
CHECK_TAIL=30
source "$top/tests/checks.sh"
aborted=
phases=()
phase_name=
phase_t0=0
t_begin=$(date +%s.%N)

now() { date +%s.%N; }
secs_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
phase_end() {
    if [ -n "$phase_name" ]; then
        phases+=("$(printf '%-58s %6s s' "$phase_name" "$(secs_since "$phase_t0")")")
    fi
    phase_name=
}
phase() {
    phase_end
    phase_name=$1
    phase_t0=$(now)
    printf '\n# %s\n' "$1"
}
# expect DESCRIPTION ACTUAL EXPECTED
expect() {
    if [ "$2" = "$3" ]; then
        pass "$1"
    else
        fail "$1: expected '$3', got '$2'"
    fi
}
# has DESCRIPTION HAYSTACK NEEDLE (fixed string) / lacks …
has() {
    if grep -qF -- "$3" <<<"$2"; then
        pass "$1"
    else
        fail "$1: '$3' not found in:"
        printf '%s\n' "$2" | tail -n 40 | indent
    fi
}
lacks() {
    if grep -qF -- "$3" <<<"$2"; then
        fail "$1: unexpected '$3' in:"
        grep -F -- "$3" <<<"$2" | head -n 10 | indent
    else
        pass "$1"
    fi
}
# A step the rest depends on failed: stop here (the clean-up trap still runs).
abort() {
    fail "$*"
    aborted=$*
    exit 1
}
# wait_until SECONDS COMMAND...: poll every 0.2 s until the command succeeds.
wait_until() {
    local deadline=$(($(date +%s) + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

# ------------------------------------------------------------------------------------------------
# Preflight: root, tools, kernel features. Never skip: a missing piece fails the run.
[ "$(id -u)" -eq 0 ] || { echo "FAIL - tests/systemd/run.sh must run as root" >&2; exit 1; }
missing=()
for tool in debootstrap systemd-nspawn nsenter unshare chroot findmnt flock mount umount \
    docker ctr cargo make dpkg dpkg-deb sha256sum ip setsid; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "FAIL - missing tools: ${missing[*]} (tests/setup.sh installs them)" >&2
    exit 1
fi
grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || true
grep -qw overlay /proc/filesystems || { echo "FAIL - the kernel has no overlayfs" >&2; exit 1; }

# One run at a time on this machine (the rootfs cache and the cgroup names are shared).
exec 9>/var/tmp/ecs-init-systemd-test.lock
flock -w 1200 9 || { echo "FAIL - another tests/systemd/run.sh holds /var/tmp/ecs-init-systemd-test.lock" >&2; exit 1; }

work=$(mktemp -d /var/tmp/ecs-init-systemd-run.XXXXXX)
cg_name="ecs-init-systemd-test.$$"
machine="ecs-sd-$$"

# Boot state (one boot at a time).
MERGED=
LEADER=
NSPAWN_PID=
RUNTIME_PID=
SOCK=
BOOT_DIR=
BOOT_KIND=

# ------------------------------------------------------------------------------------------------
# cgroups of this script, below its own cgroup in every hierarchy: <own>/<cg_name>/{machine,runtime}

# "mountpoint<TAB>own path" for each hierarchy this process is in.
cg_hierarchies() {
    local ctrls path target fstype opts found c
    while IFS=: read -r _ ctrls path; do
        found=
        while read -r target fstype opts; do
            if [ -z "$ctrls" ]; then
                [ "$fstype" = cgroup2 ] && found=$target
            elif [ "$fstype" = cgroup ]; then
                found=$target
                for c in ${ctrls//,/ }; do
                    grep -qx -- "$c" <(tr ',' '\n' <<<"$opts") || { found=; break; }
                done
            fi
            [ -n "$found" ] && break
        done < <(findmnt -rn -t cgroup,cgroup2 -o TARGET,FSTYPE,FS-OPTIONS)
        [ -n "$found" ] && printf '%s\t%s\n' "$found" "${path%/}"
    done </proc/self/cgroup
}

# cg_make SUB: create <own>/<cg_name>/SUB in every hierarchy (cpuset needs cpus and mems).
cg_make() {
    local mnt own dir d
    while IFS=$'\t' read -r mnt own; do
        dir="$mnt$own/$cg_name"
        for d in "$dir" "$dir/$1"; do
            mkdir -p "$d"
            if [ -f "$d/cpuset.cpus" ] && [ -z "$(cat "$d/cpuset.cpus")" ]; then
                cat "$(dirname "$d")/cpuset.cpus" >"$d/cpuset.cpus"
                cat "$(dirname "$d")/cpuset.mems" >"$d/cpuset.mems"
            fi
        done
    done < <(cg_hierarchies)
}

# cg_enter SUB PID
cg_enter() {
    local mnt own
    while IFS=$'\t' read -r mnt own; do
        echo "$2" >"$mnt$own/$cg_name/$1/cgroup.procs"
    done < <(cg_hierarchies)
}

# Live (not zombie) processes anywhere below <own>/<cg_name>[/SUB].
alive() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [ -n "$state" ] && [ "$state" != Z ]
}
cg_pids() {
    local file pid
    grep -l -- "/$cg_name/${1:-}" /proc/[0-9]*/cgroup 2>/dev/null | while read -r file; do
        pid=${file#/proc/}
        pid=${pid%/cgroup}
        alive "$pid" && echo "$pid"
    done
    return 0
}

# Host pids of live stand-in agent processes started by this run's runtime.
agent_pids() {
    local pid
    for pid in $(cg_pids runtime); do
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$AGENT_COMM" ] && echo "$pid"
    done
    return 0
}
agent_count() { agent_pids | wc -l; }

# ------------------------------------------------------------------------------------------------
# The booted system.
m() {
    nsenter -t "$LEADER" -a -- /usr/bin/env -i PATH="$INSIDE_PATH" LANG=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@" </dev/null
}
# uprop UNIT PROPERTY
uprop() { m systemctl show -p "$2" --value "$1"; }
prop() { uprop ecs.service "$1"; }
is_active() { [ "$(prop ActiveState)" = active ]; }

# The runtime, from outside, through this boot's private sockets only.
rt_docker() { docker -H "unix://$SOCK/docker.sock" "$@"; }
rt_ctr() { ctr --address "$SOCK/containerd.sock" "$@"; }
agent_running() {
    if [ "$BOOT_KIND" = docker ]; then
        [ "$(rt_docker inspect -f '{{.State.Running}}' ecs-agent 2>/dev/null)" = true ]
    else
        rt_ctr -n ecs task ls 2>/dev/null | awk '$1 == "ecs-agent" && $3 == "RUNNING" {f=1} END {exit !f}'
    fi
}
# Running containers/tasks the runtime knows of (every namespace for containerd).
runtime_running_count() {
    if [ "$BOOT_KIND" = docker ]; then
        rt_docker ps -q | wc -l
    else
        local ns n=0
        for ns in $(rt_ctr namespaces ls -q); do
            n=$((n + $(rt_ctr -n "$ns" task ls | awk 'NR > 1 && $3 == "RUNNING"' | wc -l)))
        done
        echo "$n"
    fi
}
introspection() { m curl -sf --max-time 2 http://127.0.0.1:51678/v1/metadata; }

# The rules in the netns's firewall (every table, whichever backend), one per line as
# "<family> <table> <chain>: <rule>", without counters. Empty tables and chains (iptables-nft
# keeps the built-in ones once used) are not rules.
firewall() {
    m nft list ruleset 2>/dev/null | awk '
        $1 == "table" { t = $2 " " $3; next }
        $1 == "chain" { c = $2; next }
        $1 == "type" || $1 == "policy" || $1 == "}" || NF == 0 { next }
        {
            sub(/^[ \t]+/, "")
            gsub(/counter packets [0-9]+ bytes [0-9]+/, "counter")
            print t " " c ": " $0
        }'
}
route_localnet() { m cat /proc/sys/net/ipv4/conf/all/route_localnet; }
lo_route() { m ip -4 route show 169.254.170.2/32 dev lo; }

# pkg FIELD: a dpkg-query field of the installed package.
pkg() { m dpkg-query -W -f="\${$1}" amazon-ecs-init; }

journal() { m journalctl --no-pager -q -u ecs.service "$@"; }

# The volume plugin: its units' properties, and a request on its socket (as dockerd makes them).
readonly PLUGIN_SOCK=/run/docker/plugins/amazon-ecs-volume-plugin.sock
pprop() { uprop amazon-ecs-volume-plugin.service "$1"; }
sprop() { uprop amazon-ecs-volume-plugin.socket "$1"; }
plugin_call() {
    m curl -s --max-time 30 --unix-socket "$PLUGIN_SOCK" -H 'Content-Type: application/json' \
        -d "$2" "http://plugin/$1"
}
# Lines of the launcher itself (all its Exec commands), as text.
launcher_journal() { journal -t amazon-ecs-init -o cat "$@"; }

# ------------------------------------------------------------------------------------------------
# Clean-up: the machine first (its shutdown stops ecs through the runtime), then the runtime's
# namespace, the overlay, the cgroups and the scratch directory. Runs on every exit.
stop_machine() {
    if [ -n "$NSPAWN_PID" ]; then
        kill -TERM "$NSPAWN_PID" 2>/dev/null || true
        for _ in $(seq 1 150); do
            alive "$NSPAWN_PID" || break
            sleep 0.2
        done
        if alive "$NSPAWN_PID"; then
            echo "note: the machine did not power off within 30 s; killing it"
            kill -KILL "$NSPAWN_PID" 2>/dev/null || true
        fi
        wait "$NSPAWN_PID" 2>/dev/null || true
        # nspawn leaves this behind when /run is not a tmpfs.
        rm -rf "/run/systemd/nspawn/propagate/$machine"
        NSPAWN_PID=
        LEADER=
    fi
}
stop_runtime() {
    if [ -n "$RUNTIME_PID" ]; then
        local init
        # unshare --fork: its child is PID 1 of the runtime's pid namespace; killing it ends
        # every process in the namespace (daemons, shims, agent).
        for init in $(pgrep -P "$RUNTIME_PID" || true); do
            kill -KILL "$init" 2>/dev/null || true
        done
        kill -TERM "$RUNTIME_PID" 2>/dev/null || true
        wait "$RUNTIME_PID" 2>/dev/null || true
        RUNTIME_PID=
    fi
}
end_boot() {
    stop_machine
    stop_runtime
    local pid
    for _ in 1 2 3; do
        for pid in $(cg_pids); do kill -KILL "$pid" 2>/dev/null || true; done
        [ -z "$(cg_pids)" ] && break
        sleep 0.5
    done
    if [ -n "$MERGED" ] && mountpoint -q "$MERGED"; then
        umount "$MERGED" 2>/dev/null || umount -l "$MERGED" || true
    fi
    MERGED=
}
cleanup() {
    local rc=$?
    set +e
    end_boot
    local mnt own
    while IFS=$'\t' read -r mnt own; do
        [ -d "$mnt$own/$cg_name" ] && find "$mnt$own/$cg_name" -depth -type d -exec rmdir {} \; 2>/dev/null
        [ -d "$mnt$own/$cg_name" ] && echo "note: could not remove cgroup $mnt$own/$cg_name"
    done < <(cg_hierarchies)
    if grep -qF " $work/" /proc/self/mountinfo; then
        echo "note: $work still has mounts; left in place"
    else
        rm -rf "$work"
    fi
    phase_end
    printf '\n# summary\n'
    printf '%s\n' "${phases[@]}"
    printf '%-58s %6s s\n' "total" "$(secs_since "$t_begin")"
    if [ -n "$aborted" ]; then
        echo "ABORTED: $aborted"
    elif [ "$rc" -ne 0 ]; then
        echo "ABORTED: unexpected failure${last_error:+ at $last_error} (exit $rc)"
        failed=$((failed + 1))
    fi
    echo "$passed passed, $failed failed"
    if [ "$rc" -eq 0 ] && [ "$failed" -gt 0 ]; then rc=1; fi
    exit "$rc"
}
# A command outside the checks failed (set -e): say which, so the run never ends silently.
last_error=
trap 'last_error="line $LINENO: $BASH_COMMAND"' ERR
trap cleanup EXIT
trap 'aborted="interrupted (SIGINT)"; exit 130' INT
trap 'aborted="interrupted (SIGTERM)"; exit 143' TERM

# When a check fails, show what the machine and the daemons said (before the boot ends).
diagnostics() {
    [ "$failed" -gt 0 ] || return 0
    echo "--- diagnostics ($BOOT_KIND boot): systemctl status ecs, last journal lines, daemon logs"
    m systemctl status --no-pager ecs.service 2>&1 | tail -n 20 | indent || true
    journal -n 60 -o short-monotonic 2>&1 | indent || true
    tail -n 20 "$BOOT_DIR"/containerd.log "$BOOT_DIR"/dockerd.log 2>/dev/null | indent || true
}

# ------------------------------------------------------------------------------------------------
# Root filesystem: debootstrap once, cached by its recipe.
apt_mirror() {
    local f
    # deb822 sources: the URIs of a stanza whose Suites list the suite.
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v suite="$SUITE" '
            /^[ \t]*$/ { if (ok && uri != "") print uri; uri = ""; ok = 0; next }
            /^URIs:/ { uri = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) ok = 1 }
            END { if (ok && uri != "") print uri }' "$f"
    done
    # one-line sources: deb [options] URI SUITE COMPONENTS…
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        sed -E 's/\[[^]]*\]//' "$f" |
            awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2 }'
    done
}

ensure_rootfs() {
    local mirror key cache_base=/var/tmp/ecs-init-systemd-rootfs
    mirror=$({ apt_mirror | grep -v security || true; } | sed -n 1p)
    [ -n "$mirror" ] || abort "no Debian mirror for $SUITE in /etc/apt/sources.list*"
    key=$(printf '%s\n' "$SUITE" "$mirror" "$(dpkg --print-architecture)" "recipe $RECIPE" \
        "${ROOTFS_PACKAGES[@]}" | sha256sum | cut -c1-16)
    ROOTFS="$cache_base/$key/root"
    if [ -f "$cache_base/$key/complete" ]; then
        pass "root filesystem cached: $ROOTFS"
        return
    fi
    echo "building the root filesystem ($SUITE from $mirror) into $ROOTFS"
    rm -rf "${cache_base:?}/$key"
    mkdir -p "$cache_base/$key"
    local include
    include=$(IFS=,; echo "${ROOTFS_PACKAGES[*]}")
    if ! debootstrap --variant=minbase --include="$include" "$SUITE" "$ROOTFS" "$mirror" \
        >"$cache_base/$key/debootstrap.log" 2>&1; then
        tail -n 30 "$cache_base/$key/debootstrap.log" | indent || true
        abort "debootstrap $SUITE from $mirror (log: $cache_base/$key/debootstrap.log)"
    fi
    # The runtime is provided from outside the booted system: mask its units there. No network
    # inside either: mask apt's timers.
    local unit
    for unit in docker.service docker.socket containerd.service apt-daily.timer \
        apt-daily-upgrade.timer; do
        ln -sfn /dev/null "$ROOTFS/etc/systemd/system/$unit"
    done
    echo ecs-systemd-test >"$ROOTFS/etc/hostname"
    rm -f "$ROOTFS"/var/cache/apt/archives/*.deb
    printf '%s\n' "$SUITE $mirror recipe $RECIPE" "${ROOTFS_PACKAGES[@]}" >"$cache_base/$key/complete"
    # Older recipes are no longer used.
    local old
    for old in "$cache_base"/*/; do
        [ "${old%/}" = "$cache_base/$key" ] || rm -rf "${old%/}"
    done
    pass "root filesystem built: $ROOTFS"
}

# ------------------------------------------------------------------------------------------------
# One boot: overlay over the cached rootfs, the machine, then the runtime in its netns.
# boot KIND (docker | containerd)
boot() {
    BOOT_KIND=$1
    BOOT_DIR="$work/$1"
    SOCK="$BOOT_DIR/run"
    MERGED="$BOOT_DIR/root"
    mkdir -p "$BOOT_DIR"/{upper,overlay-work,root,run,data/containerd,data/docker}
    mount -t overlay overlay \
        -o "lowerdir=$ROOTFS,upperdir=$BOOT_DIR/upper,workdir=$BOOT_DIR/overlay-work" "$MERGED" ||
        abort "overlay mount on $MERGED"
    if [ "$1" = containerd ]; then
        # A containerd-only host: no dockerd at all.
        chroot "$MERGED" /usr/bin/env -i PATH="$INSIDE_PATH" DEBIAN_FRONTEND=noninteractive \
            dpkg --purge docker.io >"$BOOT_DIR/purge-docker.log" 2>&1 ||
            { indent <"$BOOT_DIR/purge-docker.log"; abort "dpkg --purge docker.io in the root filesystem"; }
    fi
    cat >"$SOCK/containerd.toml" <<'EOF'
version = 2
disabled_plugins = ["io.containerd.grpc.v1.cri"]
EOF
    echo '{}' >"$SOCK/daemon.json"

    cg_make machine
    cg_make runtime
    local t0
    t0=$(now)
    # The runtime's data roots are on the host's filesystem (overlayfs cannot hold overlayfs);
    # on a real host they are in /var/lib as well.
    local binds=(--bind="$SOCK:$SOCK_IN" --bind="$BOOT_DIR/data/containerd:/var/lib/containerd")
    if [ "$1" = docker ]; then
        binds+=(--bind="$BOOT_DIR/data/docker:/var/lib/docker")
    fi
    (
        cg_enter machine "$BASHPID"
        exec systemd-nspawn --quiet -D "$MERGED" --boot --register=no --keep-unit -M "$machine" \
            --private-network "${binds[@]}" --console=read-only
    ) >"$BOOT_DIR/console.log" 2>&1 </dev/null &
    NSPAWN_PID=$!
    for _ in $(seq 1 100); do
        LEADER=$(pgrep -P "$NSPAWN_PID" -x systemd || true)
        [ -n "$LEADER" ] && break
        alive "$NSPAWN_PID" || break
        sleep 0.2
    done
    if [ -z "$LEADER" ]; then
        tail -n 20 "$BOOT_DIR/console.log" | indent || true
        abort "systemd-nspawn did not start systemd"
    fi
    # systemctl answers once the manager's private socket is up; until then it cannot connect.
    local state=
    wait_until 90 system_settled || true
    state=$(m systemctl is-system-running 2>&1 || true)
    if [ "$state" != running ]; then
        m systemctl --failed --no-pager 2>&1 | indent || true
        abort "booted system is '$state', not 'running'"
    fi
    pass "booted Debian $SUITE with systemd $(m systemctl --version | awk 'NR==1{print $2}') as PID 1 ($(secs_since "$t0") s to 'running')"

    local cgroup_top cgroup_mounts
    cgroup_top=$(findmnt -n -o FSTYPE /sys/fs/cgroup)
    cgroup_mounts=$(findmnt -rn -t cgroup,cgroup2 -o TARGET,FSTYPE,FS-OPTIONS)
    (
        cg_enter runtime "$BASHPID"
        exec 3>>"$BOOT_DIR/containerd.log" 4>>"$BOOT_DIR/dockerd.log"
        # The booted system's mount, network, UTS and IPC namespaces; the binaries are its own.
        exec nsenter -t "$LEADER" --mount --net --uts --ipc -- \
            /usr/bin/unshare --pid --fork --kill-child --mount --cgroup --propagation private -- \
            /bin/bash -c "set -eu; $(declare -f runtime_ns_init); runtime_ns_init \"\$@\"" \
            runtime-ns "$1" "$cgroup_top" "$cgroup_mounts"
    ) >"$BOOT_DIR/runtime-ns.log" 2>&1 </dev/null &
    RUNTIME_PID=$!
    t0=$(now)
    if ! wait_until 60 rt_ctr version; then
        tail -n 20 "$BOOT_DIR/runtime-ns.log" "$BOOT_DIR/containerd.log" 2>/dev/null | indent || true
        abort "private containerd did not answer on $SOCK/containerd.sock"
    fi
    if [ "$1" = docker ] && ! wait_until 60 rt_docker version; then
        tail -n 20 "$BOOT_DIR/runtime-ns.log" "$BOOT_DIR/dockerd.log" 2>/dev/null | indent || true
        abort "private dockerd did not answer on $SOCK/docker.sock"
    fi
    pass "private $1 runtime answers in the machine's network namespace ($(secs_since "$t0") s)"
}

# ------------------------------------------------------------------------------------------------
# Operator steps and checks shared by both boots.

# Item 1, and the operator's configuration.
install_and_configure() {
    mkdir -p "$MERGED/root/ecs-test"
    cp "$deb1" "$deb2" "$deb3" "$agent_tar" "$MERGED/root/ecs-test/"
    local out
    if out=$(m dpkg -i "/root/ecs-test/$(basename "$deb1")" 2>&1); then
        pass "dpkg -i $(basename "$deb1")"
    else
        printf '%s\n' "$out" | indent
        abort "dpkg -i $(basename "$deb1")"
    fi
    lacks "dpkg -i prints no warning" "$out" "warning"
    expect "dpkg: installed at version $version-1" \
        "$(pkg Status) $(pkg Version)" "install ok installed $version-1"
    has "dpkg: /etc/ecs/ecs.config is a conffile" \
        "$(pkg Conffiles)" "/etc/ecs/ecs.config"
    # Debian's systemd names the unit by its /lib path (/lib is a link to /usr/lib).
    expect "unit loaded from the package's file" \
        "$(prop LoadState) $(m realpath "$(prop FragmentPath)")" \
        "loaded /usr/lib/systemd/system/ecs.service"
    expect "unit: Type=notify, Restart=on-failure" "$(prop Type) $(prop Restart)" "notify on-failure"
    expect "the package does not enable the service (operators do, as upstream)" \
        "$(m systemctl is-enabled ecs.service 2>&1 || true)" "disabled"
    expect "the package does not start the service" "$(prop ActiveState)" "inactive"

    # The operator: configuration, the runtime's socket (drop-in), the agent image, enable.
    printf '%s\n' "ECS_CLUSTER=systemd-test" "STANDIN_SCRIPT=/data/standin-script" \
        >"$MERGED/etc/ecs/ecs.config"
    if [ "$BOOT_KIND" = docker ]; then
        echo "DOCKER_HOST=unix://$SOCK_IN/docker.sock" >"$MERGED/etc/default/ecs-runtime"
    else
        echo "CONTAINERD_ADDRESS=$SOCK_IN/containerd.sock" >"$MERGED/etc/default/ecs-runtime"
    fi
    mkdir -p "$MERGED/etc/systemd/system/ecs.service.d"
    printf '%s\n' "# The container runtime's socket on this host." "[Service]" \
        "EnvironmentFile=/etc/default/ecs-runtime" \
        >"$MERGED/etc/systemd/system/ecs.service.d/10-runtime.conf"
    m install -m 0600 /root/ecs-test/ecs-agent.tar /var/cache/ecs/ecs-agent.tar
    m sh -c 'echo 2 > /var/cache/ecs/state'
    : >"$MERGED/var/lib/ecs/data/standin-script"
    m systemctl daemon-reload
    check "systemctl enable ecs" m systemctl enable ecs.service
    expect "enabled" "$(m systemctl is-enabled ecs.service 2>&1 || true)" "enabled"

    fw0=$(firewall)
    rl0=$(route_localnet)
}

# ask_healthcheck COMMAND: the launcher's answer on its custom health-check socket, asked from
# inside the machine as the agent asks (a 4-byte little-endian timeout, then the command).
ask_healthcheck() {
    m perl -MIO::Socket::UNIX -e '
        my $s = IO::Socket::UNIX->new(Peer => "/var/run/ecs.sock") or die "connect: $!\n";
        print $s pack("V", 10) . $ARGV[0];
        local $/; my $r = <$s>; print $r;' "$1" 2>&1
}

# Item 2.
start_and_check() {
    local t0 out
    t0=$(now)
    if out=$(m timeout 120 systemctl start ecs.service 2>&1); then
        pass "systemctl start ecs ($(secs_since "$t0") s)"
    else
        printf '%s\n' "$out" | indent
        diagnostics
        abort "systemctl start ecs"
    fi
    # Checked at once, without polling: Type=notify makes start return only after READY=1.
    check "the agent container runs when systemctl start returns (Type=notify)" agent_running
    expect "active (running) right after start" "$(prop ActiveState) $(prop SubState)" "active running"
    expect "status line from the launcher (STATUS=)" "$(prop StatusText)" "agent container running"
    has "systemctl status shows the status line" \
        "$(m systemctl status --no-pager ecs.service 2>&1 || true)" 'Status: "agent container running"'
    local order
    order=$(journal -o cat | grep -n -e 'agent container started' -e '^Started ecs.service' || true)
    if grep -q '^[0-9]*:agent container started' <<<"$(head -n1 <<<"$order")" &&
        grep -q 'Started ecs.service' <<<"$order"; then
        pass "journal: the agent started before systemd logged 'Started ecs.service'"
    else
        fail "journal order of 'agent container started' and 'Started ecs.service':"
        printf '%s\n' "$order" | indent
    fi
    if wait_until 15 introspection; then
        has "stand-in agent answers on 127.0.0.1:51678 in the machine's netns" \
            "$(introspection)" '"Cluster":"systemd-test"'
    else
        fail "stand-in agent does not answer on 127.0.0.1:51678"
    fi
    expect "one agent process" "$(agent_count)" 1
    expect "one running container in the runtime" "$(runtime_running_count)" 1
    has "journal: runtime $BOOT_KIND selected" "$(launcher_journal)" \
        "container runtime selected runtime=$BOOT_KIND"
    fw1=$(firewall)
    local dnat applied
    dnat=$(grep -c 'daddr 169.254.170.2 .*dport 80 .*dnat to 127.0.0.1:51679' <<<"$fw1" || true)
    expect "firewall: one DNAT of 169.254.170.2:80 to 127.0.0.1:51679" "$dnat" 1
    # As many rules in the kernel as pre-start says it applied, each once.
    applied=$(launcher_journal | sed -n 's/^host network prepared .*rules=\([0-9]*\).*/\1/p' | tail -n1)
    expect "firewall: the $applied rules pre-start applied, no more" "$(wc -l <<<"$fw1")" "$applied"
    expect "firewall: no rule twice" "$(sort <<<"$fw1" | uniq -d)" ""
    expect "sysctl net.ipv4.conf.all.route_localnet=1" "$(route_localnet)" 1
    expect "route 169.254.170.2 dev lo (no default route here)" "$(lo_route | wc -l)" 1
    expect "custom health-check socket /var/run/ecs.sock: a socket, mode 600" \
        "$(m stat -c '%F %a' /var/run/ecs.sock 2>&1)" "socket 600"
    expect "health check 'systemctl is-active ecs.service' (the real systemd): 0" \
        "$(ask_healthcheck 'systemctl is-active ecs.service')" 0
    expect "health check of a unit that does not run: systemctl's 3" \
        "$(ask_healthcheck 'sudo systemctl is-active no-such-unit.service')" 3
    expect "health check with another command: 99, nothing run" \
        "$(ask_healthcheck 'touch /tmp/ecs-healthcheck-ran'; m test -e /tmp/ecs-healthcheck-ran && echo ran)" 99
}

# Item 3.
agent_crash() {
    local before main nr
    before=$(agent_pids)
    main=$(prop MainPID)
    nr=$(prop NRestarts)
    [ "$(wc -w <<<"$before")" -eq 1 ] || { fail "agent crash: expected one agent, found: $before"; return; }
    kill -KILL "$before"
    if wait_until 30 agent_replaced "$before"; then
        pass "agent SIGKILLed -> the launcher started a new one"
    else
        fail "agent SIGKILLed: no new agent within 30 s (agents: $(agent_pids | xargs))"
    fi
    expect "unit stayed active, same launcher, no systemd restart" \
        "$(prop ActiveState) $(prop MainPID) $(prop NRestarts)" "active $main $nr"
    expect "one agent process after the crash" "$(agent_count)" 1
    check "agent container running after the crash" agent_running
    has "journal: the launcher saw the crash" "$(launcher_journal)" \
        "agent exited; restarting it exit_code=137"
    check "stand-in agent answers again" wait_until 15 introspection
}
agent_replaced() {
    local now_pids
    now_pids=$(agent_pids)
    [ "$(wc -w <<<"$now_pids")" -eq 1 ] && [ "$now_pids" != "$1" ] && agent_running
}

# Item 6.
stop_and_check() {
    local t0 out
    t0=$(now)
    if out=$(m timeout 60 systemctl stop ecs.service 2>&1); then
        pass "systemctl stop ecs ($(secs_since "$t0") s)"
    else
        fail "systemctl stop ecs"
        printf '%s\n' "$out" | indent
    fi
    expect "inactive, result success (exit 0: no restart)" "$(prop ActiveState) $(prop Result)" \
        "inactive success"
    expect "no agent process" "$(agent_count)" 0
    expect "no running container in the runtime" "$(runtime_running_count)" 0
    expect "post-stop: firewall as before the first start" "$(firewall)" "$fw0"
    expect "post-stop: route_localnet restored" "$(route_localnet)" "$rl0"
    expect "post-stop: lo route removed" "$(lo_route | wc -l)" 0
    expect "custom health-check socket removed" \
        "$(m test -e /var/run/ecs.sock && echo present || echo gone)" gone
}

# ------------------------------------------------------------------------------------------------
docker_boot() {
    phase "Docker boot: start the machine and the private containerd + dockerd"
    boot docker

    phase "1. dpkg -i, conffile, not enabled by the package; operator configuration"
    install_and_configure

    phase "2. systemctl start (Type=notify), status line, agent, rules, sysctl, route"
    start_and_check

    phase "3. the agent crashes -> the launcher restarts it"
    agent_crash

    phase "4. the launcher is SIGKILLed -> systemd restarts the unit"
    local main nr waited
    if kill_main_and_wait ecs.service; then
        pass "systemd restarted ecs after the launcher's SIGKILL (${waited} s)"
        if awk -v w="$waited" 'BEGIN { exit !(w >= 9.5) }'; then
            pass "restart waited RestartSec=10s"
        else
            fail "restart came after ${waited} s, before RestartSec=10s"
        fi
    else
        fail "no restart within 60 s of SIGKILLing the launcher ($(prop ActiveState) $(prop SubState), NRestarts $(prop NRestarts))"
    fi
    check "agent container running after the restart" wait_until 30 agent_running
    check "stand-in agent answers after the restart" wait_until 15 introspection
    expect "exactly one agent process" "$(agent_count)" 1
    expect "exactly one running container in the runtime" "$(runtime_running_count)" 1
    expect "the same rules as after the first start (one copy of each)" "$(firewall)" "$fw1"
    expect "route_localnet=1" "$(route_localnet)" 1
    expect "one lo route" "$(lo_route | wc -l)" 1

    phase "5. the agent exits 5 -> unit failed, not restarted"
    nr=$(prop NRestarts)
    echo "exit 5" >"$MERGED/var/lib/ecs/data/standin-script"
    # Crash the running agent; the launcher's restart of it reads "exit 5" and exits 5.
    kill -KILL "$(agent_pids | head -n1)"
    if wait_until 30 unit_failed; then
        pass "unit failed after the agent's exit 5"
    else
        fail "unit did not fail after the agent's exit 5 ($(prop ActiveState) $(prop SubState))"
    fi
    expect "main process exit status 5, result exit-code" \
        "$(prop ExecMainStatus) $(prop Result)" "5 exit-code"
    echo "(waiting 13 s: longer than RestartSec=10s)"
    sleep 13
    expect "still failed, not restarted" "$(prop ActiveState) $(prop NRestarts)" "failed $nr"
    expect "no agent process" "$(agent_count)" 0
    expect "rules removed by post-stop" "$(firewall)" "$fw0"
    expect "route_localnet restored" "$(route_localnet)" "$rl0"
    has "journal (-p err): the terminal exit" "$(launcher_journal -p err)" \
        "agent exited 5 (terminal); not restarting it"

    phase "6. systemctl stop -> agent stopped, post-stop restored the host"
    check "systemctl start ecs (from failed)" m timeout 120 systemctl start ecs.service
    check "agent container running" agent_running
    expect "one agent process" "$(agent_count)" 1
    stop_and_check

    phase "7. upgrade: dpkg -i of a newer revision, running and stopped"
    local cfg_sum out main_before new_main exe
    cfg_sum=$(m sha256sum /etc/ecs/ecs.config /etc/default/ecs-runtime \
        /etc/systemd/system/ecs.service.d/10-runtime.conf)
    check "systemctl start ecs" m timeout 120 systemctl start ecs.service
    main_before=$(prop MainPID)
    if out=$(m dpkg -i "/root/ecs-test/$(basename "$deb2")" 2>&1); then
        pass "dpkg -i $(basename "$deb2") while running"
    else
        fail "dpkg -i $(basename "$deb2") while running"
        printf '%s\n' "$out" | indent
    fi
    expect "dpkg: now $version-2" "$(pkg Version)" "$version-2"
    if wait_until 60 restarted_by_upgrade "$main_before"; then
        pass "the running service was restarted by the upgrade (try-restart)"
    else
        fail "the running service was not restarted ($(prop ActiveState) $(prop SubState), MainPID $(prop MainPID), was $main_before)"
    fi
    new_main=$(prop MainPID)
    exe=$(m readlink "/proc/$new_main/exe" 2>&1 || true)
    expect "it runs the newly installed binary" "$exe" "/usr/libexec/amazon-ecs-init"
    check "agent container running after the upgrade" wait_until 30 agent_running
    expect "one agent process after the upgrade" "$(agent_count)" 1
    expect "operator configuration untouched" "$(m sha256sum /etc/ecs/ecs.config \
        /etc/default/ecs-runtime /etc/systemd/system/ecs.service.d/10-runtime.conf)" "$cfg_sum"
    expect "no dpkg conffile copies" "$(m sh -c 'ls /etc/ecs/*.dpkg-* 2>/dev/null | wc -l')" 0
    check "systemctl stop ecs" m timeout 60 systemctl stop ecs.service
    if out=$(m dpkg -i "/root/ecs-test/$(basename "$deb3")" 2>&1); then
        pass "dpkg -i $(basename "$deb3") while stopped"
    else
        fail "dpkg -i $(basename "$deb3") while stopped"
        printf '%s\n' "$out" | indent
    fi
    sleep 2
    expect "a stopped service stays stopped" "$(prop ActiveState) $(agent_count)" "inactive 0"
    expect "still enabled" "$(m systemctl is-enabled ecs.service 2>&1 || true)" "enabled"

    phase "11. the volume plugin: socket activation, SIGKILL -> systemd restart, nothing lost"
    volume_plugin_checks

    phase "9. journal: one timestamp and one level per line; priorities"
    journal_checks

    phase "8. apt-get remove, then purge"
    check "systemctl start ecs" m timeout 120 systemctl start ecs.service
    echo "NOTE=kept" >"$MERGED/etc/ecs/operator-notes"
    echo '{"agent":"state"}' >"$MERGED/var/lib/ecs/data/agent-state.json"
    if out=$(m apt-get remove -y -q amazon-ecs-init 2>&1); then
        pass "apt-get remove amazon-ecs-init"
    else
        fail "apt-get remove amazon-ecs-init"
        printf '%s\n' "$out" | indent
    fi
    expect "stopped" "$(prop ActiveState)" "inactive"
    expect "unit file gone" "$(prop LoadState)" "not-found"
    has "apt-get remove warns that a plugin volume stays mounted" "$out" \
        "/var/lib/ecs/volumes/sd-left"
    check "the mounted plugin volume is left mounted" m mountpoint -q /var/lib/ecs/volumes/sd-left
    expect "plugin units gone" "$(pprop LoadState) $(sprop LoadState)" "not-found not-found"
    check "plugin socket disabled: no sockets.target.wants link" \
        test ! -e "$MERGED/etc/systemd/system/sockets.target.wants/amazon-ecs-volume-plugin.socket"
    expect "no plugin process" "$(m pgrep -f /usr/libexec/amazon-ecs-volume-plugin | wc -l)" 0
    check "/usr/libexec/amazon-ecs-volume-plugin removed" \
        test ! -e "$MERGED/usr/libexec/amazon-ecs-volume-plugin"
    check "disabled: no multi-user.target.wants link" \
        test ! -e "$MERGED/etc/systemd/system/multi-user.target.wants/ecs.service"
    expect "no agent process" "$(agent_count)" 0
    expect "no running container in the runtime" "$(runtime_running_count)" 0
    expect "rules removed" "$(firewall)" "$fw0"
    expect "route_localnet restored" "$(route_localnet)" "$rl0"
    expect "dpkg: config files remain after remove" \
        "$(pkg Status)" "deinstall ok config-files"
    check "/usr/libexec/amazon-ecs-init removed" test ! -e "$MERGED/usr/libexec/amazon-ecs-init"
    check "/etc/ecs/ecs.config kept by remove" test -f "$MERGED/etc/ecs/ecs.config"
    if out=$(m apt-get purge -y -q amazon-ecs-init 2>&1); then
        pass "apt-get purge amazon-ecs-init"
    else
        fail "apt-get purge amazon-ecs-init"
        printf '%s\n' "$out" | indent
    fi
    local status
    status=$(pkg Status 2>/dev/null || true)
    case $status in
        "" | *not-installed) pass "dpkg: not installed after purge" ;;
        *) fail "dpkg: after purge the status is '$status'" ;;
    esac
    check "purge removed the conffile /etc/ecs/ecs.config" test ! -e "$MERGED/etc/ecs/ecs.config"
    local kept
    for kept in /etc/ecs/operator-notes /var/lib/ecs/data/agent-state.json \
        /var/log/ecs/ecs-init.log /var/cache/ecs/ecs-agent.tar /etc/default/ecs-runtime \
        /etc/systemd/system/ecs.service.d/10-runtime.conf; do
        check "purge kept $kept" test -f "$MERGED$kept"
    done

    diagnostics
    phase "Docker boot: power off"
    end_boot
}

# Item 11: the volume plugin under systemd.
volume_plugin_checks() {
    local waited
    expect "plugin socket enabled and listening by the package; service not started" \
        "$(m systemctl is-enabled amazon-ecs-volume-plugin.socket 2>&1 || true) $(sprop ActiveState) $(pprop ActiveState)" \
        "enabled active inactive"
    has "systemctl status of the socket shows where it listens" \
        "$(m systemctl status --no-pager amazon-ecs-volume-plugin.socket 2>&1 || true)" \
        "Listen: $PLUGIN_SOCK (Stream)"
    # A test-only EFS helper in this throw-away booted system (never on the machine's /sbin):
    # records its arguments, mounts a tmpfs.
    printf '%s\n' '#!/bin/sh' '# test-only mount.efs: record the arguments, mount a tmpfs' \
        "(IFS='$(printf '\t')'; echo \"\$*\") >> /root/ecs-test/mount.efs.log" \
        'exec mount -t tmpfs -o size=8m efs-test "$2"' >"$MERGED/usr/sbin/mount.efs"
    chmod 755 "$MERGED/usr/sbin/mount.efs"
    expect "first request: answered by the plugin systemd started" \
        "$(plugin_call Plugin.Activate '{}')" '{"Implements":["VolumeDriver"]}'
    expect "socket activation started the service" "$(pprop ActiveState) $(pprop SubState)" \
        "active running"
    expect "Create" "$(plugin_call VolumeDriver.Create \
        '{"Name":"sd-vol","Opts":{"type":"efs","device":"fs-12345678:/","o":"tls,iam"}}')" '{"Err":""}'
    expect "mount.efs got exactly the volume's device, mount point and options" \
        "$(m cat /root/ecs-test/mount.efs.log)" \
        "fs-12345678:/$(printf '\t')/var/lib/ecs/volumes/sd-vol$(printf '\t')-o$(printf '\t')rw,tls,iam"
    check "the volume is mounted" m mountpoint -q /var/lib/ecs/volumes/sd-vol
    for id in c1 c2; do
        expect "Mount by $id" "$(plugin_call VolumeDriver.Mount "{\"Name\":\"sd-vol\",\"ID\":\"$id\"}")" \
            '{"Err":"","Mountpoint":"/var/lib/ecs/volumes/sd-vol"}'
    done
    m sh -c 'echo kept > /var/lib/ecs/volumes/sd-vol/data'
    if kill_main_and_wait amazon-ecs-volume-plugin.service; then
        pass "systemd restarted the plugin after its SIGKILL (${waited} s, RestartSec=10s)"
    else
        fail "no plugin restart within 60 s ($(pprop ActiveState) $(pprop SubState), NRestarts $(pprop NRestarts))"
    fi
    check "the volume stayed mounted" m mountpoint -q /var/lib/ecs/volumes/sd-vol
    expect "its data is still there" "$(m cat /var/lib/ecs/volumes/sd-vol/data)" kept
    expect "the restart mounted nothing (mount.efs ran once)" \
        "$(m cat /root/ecs-test/mount.efs.log | wc -l)" 1
    expect "List from the restarted plugin" "$(plugin_call VolumeDriver.List '{}')" \
        '{"Err":"","Volumes":[{"Mountpoint":"/var/lib/ecs/volumes/sd-vol","Name":"sd-vol"}]}'
    has "Remove refused while both mounts are counted" \
        "$(plugin_call VolumeDriver.Remove '{"Name":"sd-vol"}')" "in use by 2 container mount(s) (c1, c2)"
    for id in c1 c2; do
        expect "Unmount by $id" "$(plugin_call VolumeDriver.Unmount "{\"Name\":\"sd-vol\",\"ID\":\"$id\"}")" \
            '{"Err":""}'
    done
    expect "Remove" "$(plugin_call VolumeDriver.Remove '{"Name":"sd-vol"}')" '{"Err":""}'
    check "unmounted and its directory removed" m test ! -e /var/lib/ecs/volumes/sd-vol
    expect "state file: no volumes" "$(m cat /var/lib/ecs/data/ecs_volume_plugin.json)" "{}"
    # Left mounted for the removal (item 8).
    expect "Create sd-left" "$(plugin_call VolumeDriver.Create \
        '{"Name":"sd-left","Opts":{"type":"efs","device":"fs-1:/"}}')" '{"Err":""}'
    has "the launcher's status: the plugin answers" "$(m /usr/libexec/amazon-ecs-init status 2>&1 || true)" \
        "volume plugin:  /var/run/docker/plugins/amazon-ecs-volume-plugin.sock answers"
    has "the plugin logs to the journal" \
        "$(m journalctl --no-pager -q -u amazon-ecs-volume-plugin.service -o cat)" "volume created and mounted"
    has "and to /var/log/ecs/ecs-volume-plugin.log" \
        "$(m cat /var/log/ecs/ecs-volume-plugin.log)" 'msg="volume created and mounted"'
}

# The boot has finished, one way or the other. Not "offline": systemctl prints that while the
# booted system's /run/systemd/system does not exist yet (seen once: the wait ended after 1 s and
# the next call could not connect to the bus).
system_settled() {
    case $(m systemctl is-system-running 2>&1) in
        running | degraded | maintenance | stopping) return 0 ;;
        *) return 1 ;;
    esac
}

# restarted UNIT NRESTARTS OLD_MAINPID: active again under a new main process, as a restart.
restarted() {
    [ "$(uprop "$1" ActiveState)" = active ] && [ "$(uprop "$1" NRestarts)" -gt "$2" ] &&
        [ "$(uprop "$1" MainPID)" != "$3" ] && [ "$(uprop "$1" MainPID)" != 0 ]
}
# kill_main_and_wait UNIT: SIGKILL its main process and wait up to 60 s for systemd to restart
# it; sets `waited` (seconds). Fails when it was not restarted.
kill_main_and_wait() {
    local main nr t0
    main=$(uprop "$1" MainPID)
    nr=$(uprop "$1" NRestarts)
    t0=$(now)
    m kill -KILL "$main"
    wait_until 60 restarted "$1" "$nr" "$main" || return 1
    waited=$(secs_since "$t0")
}
restarted_by_upgrade() {
    is_active && [ "$(prop MainPID)" != "$1" ] && [ "$(prop MainPID)" != 0 ]
}
unit_failed() { [ "$(prop ActiveState)" = failed ]; }

# Item 9: the launcher's journal lines, its priorities and the file log.
journal_checks() {
    local lines file
    lines=$(launcher_journal)
    if [ "$(wc -l <<<"$lines")" -ge 20 ]; then
        pass "journal has the launcher's lines ($(wc -l <<<"$lines"))"
    else
        fail "journal has only $(wc -l <<<"$lines") launcher lines"
    fi
    local doubled
    doubled=$(grep -E '(^|[[:space:]])(level=|time=[0-9])' <<<"$lines" || true)
    if [ -z "$doubled" ]; then
        pass "no launcher line repeats a level or a timestamp"
    else
        fail "launcher lines with their own level/time:"
        head -n 5 <<<"$doubled" | indent
    fi
    local warn
    warn=$(launcher_journal -p warning)
    has "journalctl -p warning shows the launcher's warnings" "$warn" "agent exited; restarting it"
    lacks "journalctl -p warning hides its info lines" "$warn" "agent container started"
    has "journalctl -p err shows its errors" "$(launcher_journal -p err)" "agent exited 5 (terminal)"
    has "info lines have priority 6" \
        "$(journal -t amazon-ecs-init -o verbose --grep 'agent container started' | grep PRIORITY= | sort -u)" \
        "PRIORITY=6"
    file=$(m cat /var/log/ecs/ecs-init.log)
    if grep -qE '^level=info time=[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z msg="agent container started"' <<<"$file"; then
        pass "the file log keeps 'level=… time=… msg=…'"
    else
        fail "the file log lacks 'level=info time=… msg=\"agent container started\"':"
        tail -n 5 <<<"$file" | indent
    fi
}

containerd_boot() {
    phase "10. containerd boot (docker.io purged): start the machine and a private containerd"
    boot containerd
    check "no dockerd in the booted system" test ! -e "$MERGED/usr/sbin/dockerd"

    phase "10/1. dpkg -i on the containerd-only system; operator configuration"
    install_and_configure

    # No Docker here to use the volume plugin: the operator turns its socket off (the package
    # enabled it, which made /run/docker/plugins), so the agent's bind source is missing again.
    check "containerd-only host: the plugin socket can be turned off" \
        m systemctl disable --now amazon-ecs-volume-plugin.socket
    m rm -rf /run/docker/plugins

    phase "10/2. systemctl start on containerd"
    check "no Docker plugin directory on this host before the start" \
        m test ! -e /run/docker/plugins
    start_and_check
    # runc refuses a missing bind source where Docker creates it: the backend does as Docker.
    has "journal: the Docker plugin directory the agent is given was created, as Docker does" \
        "$(launcher_journal)" "creating the missing bind source as a directory, as Docker does source=/run/docker/plugins"

    phase "10/3. the agent crashes -> the launcher restarts it (containerd)"
    agent_crash

    phase "10/6. systemctl stop (containerd)"
    stop_and_check

    diagnostics
    phase "containerd boot: power off"
    end_boot
}

# ------------------------------------------------------------------------------------------------
cd "$top"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
arch=$(dpkg --print-architecture)

phase "build: make -C packaging deb (and revisions 2, 3 for the upgrade), stand-in agent image"
if ! make -s -C packaging deb >"$work/make-deb.log" 2>&1; then
    tail -n 30 "$work/make-deb.log" | indent || true
    abort "make -C packaging deb"
fi
deb1="$top/target/packaging/out/amazon-ecs-init_${version}-1_${arch}.deb"
upgrade_out="$top/target/packaging/systemd-test"
for rev in 2 3; do
    if ! make -s -C packaging deb OUT="$upgrade_out" DEB_REVISION=$rev >>"$work/make-deb.log" 2>&1; then
        tail -n 30 "$work/make-deb.log" | indent || true
        abort "make -C packaging deb DEB_REVISION=$rev"
    fi
done
deb2="$upgrade_out/amazon-ecs-init_${version}-2_${arch}.deb"
deb3="$upgrade_out/amazon-ecs-init_${version}-3_${arch}.deb"
for f in "$deb1" "$deb2" "$deb3"; do
    [ -s "$f" ] || abort "missing $f"
done
pass "built $(basename "$deb1"), $(basename "$deb2"), $(basename "$deb3")"
agent_tar="$work/ecs-agent.tar"
if ! cargo run -q -p ecs-test-support --bin pack-stand-in -- "$agent_tar" >"$work/pack.log" 2>&1; then
    tail -n 30 "$work/pack.log" | indent || true
    abort "pack-stand-in (the stand-in agent image)"
fi
pass "stand-in agent image: docker save tarball, $(du -k "$agent_tar" | cut -f1) KiB"

phase "root filesystem (debootstrap, or the cache)"
ensure_rootfs

docker_boot
containerd_boot
