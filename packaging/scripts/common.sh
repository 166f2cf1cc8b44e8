# Shared body of the RPM scriptlets and DEB maintainer scripts of amazon-ecs-init.
# The Makefile prepends a header that sets BUNDLED_AGENT and appends the format's entry point.
# POSIX sh: it runs under /bin/sh on every target distribution.
#
# DPKG_ROOT (dpkg's convention for scripts run outside a chroot, `--force-script-chrootless`)
# prefixes every path. When it names a directory other than /, the scripts act on that tree only
# and never touch services, the firewall or the host's init system: they belong to the host, not
# to the tree being populated. The packaging tests use this to run the scripts in a scratch root.

ROOT="${DPKG_ROOT:-}"
[ "$ROOT" = / ] && ROOT=
ECS_INIT=/usr/libexec/amazon-ecs-init
# The ECS volume plugin (Docker volume driver for EFS volumes): its units and where it mounts.
PLUGIN=amazon-ecs-volume-plugin
VOLUMES_DIR=/var/lib/ecs/volumes
CACHE_DIR="$ROOT/var/cache/ecs"

in_scratch_root() { [ -n "$ROOT" ]; }

systemd_running() {
    ! in_scratch_root && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

upstart_running() {
    ! in_scratch_root && command -v initctl >/dev/null 2>&1 &&
        initctl version 2>/dev/null | grep -q upstart
}

# $1: the job (default ecs)
upstart_job_running() {
    initctl status "${1:-ecs}" 2>/dev/null | grep -q 'start/'
}

# Volumes the plugin mounted stay mounted when the package goes (containers may still use them,
# and an unreachable NFS server could hang an unmount): say which, and how to unmount them.
warn_mounted_volumes() {
    in_scratch_root && return 0
    mounted=$(awk -v dir="$VOLUMES_DIR/" 'index($2, dir) == 1 { print $2 }' /proc/mounts 2>/dev/null || true)
    [ -n "$mounted" ] || return 0
    echo "amazon-ecs-init: warning: these ECS volumes are still mounted and are left alone; unmount each with 'umount -l <path>' once no task uses it:" >&2
    for m in $mounted; do echo "    $m" >&2; done
}

# Directories the launcher and the agent expect. The RPM also owns them; the DEB format cannot
# ship empty directories, so creating them here is what installs them there. Modes: the cache
# holds the agent image (0700, like the launcher creates it); data holds the agent's state.
make_dirs() {
    install -d -m 0755 "$ROOT/etc/ecs" "$ROOT/var/lib/ecs" "$ROOT/var/log/ecs"
    install -d -m 0700 "$ROOT/var/lib/ecs/data" "$CACHE_DIR"
}

# A package built with a bundled agent ships $CACHE_DIR/$BUNDLED_AGENT; point the cache at it
# and ask the launcher to load it on the next pre-start (state 2), as the Go ecs-init's
# packages do. The link is relative so it stays valid inside a scratch root.
link_bundled_agent() {
    [ -n "$BUNDLED_AGENT" ] || return 0
    if [ ! -s "$CACHE_DIR/$BUNDLED_AGENT" ]; then
        echo "amazon-ecs-init: bundled agent $CACHE_DIR/$BUNDLED_AGENT is missing" >&2
        return 0
    fi
    ln -sfn "$BUNDLED_AGENT" "$CACHE_DIR/ecs-agent.tar"
    printf '2' > "$CACHE_DIR/state.tmp" && mv -f "$CACHE_DIR/state.tmp" "$CACHE_DIR/state"
}

# After removal the bundled tarball is gone; drop a link that now points nowhere so the launcher
# sees an uncached agent instead of a broken file.
unlink_dangling_agent() {
    if [ -L "$CACHE_DIR/ecs-agent.tar" ] && [ ! -e "$CACHE_DIR/ecs-agent.tar" ]; then
        rm -f "$CACHE_DIR/ecs-agent.tar"
    fi
}

# The EBS CSI driver image, where the agent looks for it. The Go packages ship it; ours do when
# built with EBS_CSI_DRIVER_TARBALL (then BUNDLED_EBS_CSI is set and the package owns the file).
EBS_CSI_TAR="$ROOT/var/lib/ecs/deps/daemons/ebs-csi-driver/ebs-csi-driver.tar"
EBS_CSI_KEEP="$ROOT/var/lib/ecs/deps/daemons/ebs-csi-driver/.ebs-csi-driver.tar.amazon-ecs-init-keep"

# Before this package's files are unpacked: a package that ships no driver image of its own
# would lose one that the package it replaces installed (the Go ecs-init, or an upgrade from
# it), since dpkg and rpm remove the files the new version does not list. Keep a hard link;
# restore_ebs_csi_driver puts it back once the old files are gone.
keep_ebs_csi_driver() {
    [ -z "$BUNDLED_EBS_CSI" ] || return 0
    if [ -f "$EBS_CSI_TAR" ] && [ ! -L "$EBS_CSI_TAR" ]; then
        ln -f "$EBS_CSI_TAR" "$EBS_CSI_KEEP" 2>/dev/null || true
    fi
}

# After the old package's files are gone (DEB postinst, RPM %posttrans).
restore_ebs_csi_driver() {
    [ -f "$EBS_CSI_KEEP" ] || return 0
    if [ -e "$EBS_CSI_TAR" ]; then
        rm -f "$EBS_CSI_KEEP"
    else
        mv -f "$EBS_CSI_KEEP" "$EBS_CSI_TAR"
        echo "amazon-ecs-init: kept the EBS CSI driver image $EBS_CSI_TAR of the package it replaced" >&2
    fi
}

# $1: install | upgrade
after_install() {
    make_dirs
    link_bundled_agent
    if systemd_running; then
        systemctl daemon-reload || true
        # The volume plugin, as the Go package has it: the socket listens from now on and at
        # every boot; the first request (dockerd activating the plugin) starts the service.
        systemctl enable "$PLUGIN.socket" >/dev/null 2>&1 || true
        systemctl start "$PLUGIN.socket" || true
        if [ "$1" = upgrade ]; then
            # A deliberate difference from the Go packages, which leave a running ecs alone on
            # upgrade (%systemd_postun without restart; dh_installsystemd --no-start): we restart
            # a running service so that the launcher supervising the agent is the one just
            # installed (its fixes apply now, and `amazon-ecs-init version` tells the truth),
            # at the cost of one agent restart (seconds; tasks keep running). Only a running
            # service restarts; a stopped or disabled one stays as the operator left it.
            # README.md, "Differences from the Go ecs-init".
            systemctl try-restart ecs.service || true
            # The new plugin serves the volumes of the state file; nothing is unmounted.
            systemctl try-restart "$PLUGIN.service" || true
        fi
    elif upstart_running; then
        if [ "$1" = upgrade ] && upstart_job_running; then
            initctl stop ecs || true
            initctl start ecs || true
        fi
        if upstart_job_running "$PLUGIN"; then
            initctl restart "$PLUGIN" || true
        else
            initctl start "$PLUGIN" || true
        fi
    fi
}

before_remove() {
    stopped_by_init=no
    if systemd_running; then
        if systemctl is-active --quiet ecs.service; then
            # ExecStop= stops the agent, ExecStopPost= runs post-stop and removes the rules.
            systemctl stop ecs.service && stopped_by_init=yes
        fi
        systemctl --no-reload disable ecs.service >/dev/null 2>&1 || true
        # The plugin exits on SIGTERM without unmounting anything (KillMode=process).
        systemctl stop "$PLUGIN.socket" "$PLUGIN.service" || true
        systemctl --no-reload disable "$PLUGIN.socket" "$PLUGIN.service" >/dev/null 2>&1 || true
    elif upstart_running; then
        if upstart_job_running; then
            # The job's pre-stop and post-stop stanzas stop the agent and remove the rules.
            initctl stop ecs && stopped_by_init=yes
        fi
        if upstart_job_running "$PLUGIN"; then
            initctl stop "$PLUGIN" || true
        fi
    fi
    warn_mounted_volumes
    if [ "$stopped_by_init" = no ] && ! in_scratch_root && [ -x "$ECS_INIT" ]; then
        # Not running under an init system (manual runs, or the service had crashed): stop any
        # agent container and remove the host changes, so nothing is left behind. Both actions
        # are idempotent and work while the runtime is down; never block the removal on them.
        "$ECS_INIT" stop || true
        "$ECS_INIT" post-stop || true
    fi
    return 0
}

# $1: remove | purge
after_remove() {
    unlink_dangling_agent
    if [ "$1" = purge ]; then
        if [ -n "$BUNDLED_AGENT" ]; then
            rm -f "$CACHE_DIR/state"
        fi
        rmdir "$ROOT/var/lib/ecs/data" "$CACHE_DIR" 2>/dev/null || true
        # The launcher's own state (the host lock, the route_localnet value to restore).
        rm -f "$ROOT/var/lib/ecs-init/ecs-init.host.lock" "$ROOT/var/lib/ecs-init/route_localnet.original"
        rmdir "$ROOT/var/lib/ecs-init" 2>/dev/null || true
    fi
    if systemd_running; then
        systemctl daemon-reload || true
    fi
    return 0
}
