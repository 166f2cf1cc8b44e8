#!/usr/bin/env bash
# Packaging tests: builds the RPMs and the DEB (plain, and with a bundled dummy agent tarball),
# then checks file lists, modes, config-file flags, dependencies and scripts with rpm/dpkg-deb,
# installs each package into a scratch root and runs the installed binary's `version` and `plan`,
# runs the maintainer scripts against a scratch root (install, upgrade, removal), and
# `systemd-analyze verify`s the unit inside the installed tree. Checks the packaged launcher needs
# no glibc newer than the baseline it is linked against, and runs the GPU step tests against it.
#
# Needs: rpm, dpkg-dev, systemd (systemd-analyze), python3 (with pip, to fetch Zig), cargo,
# binutils (readelf), util-linux (unshare). Run as root (dpkg --root, mount namespaces).
# Never touches the real /: every install goes into a temporary root.
# Usage: packaging/test.sh            (SKIP_BUILD=1 reuses packages already built by this script)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/.." && pwd)
work=$(mktemp -d /tmp/ecs-init-packaging-test.XXXXXX)
trap 'rm -rf "$work"' EXIT

# pass, fail, check and the counts.
source "$top/tests/checks.sh"
# contains DESCRIPTION HAYSTACK NEEDLE: fixed-string match; a needle starting with ^ must match a
# whole line.
contains() {
    local found=no
    if [ "${3:0:1}" = "^" ]; then
        grep -qxF -- "${3#^}" <<<"$2" && found=yes
    else
        grep -qF -- "$3" <<<"$2" && found=yes
    fi
    if [ "$found" = yes ]; then
        pass "$1"
    else
        fail "$1: '${3#^}' not found in:"
        printf '%s\n' "$2" | sed 's/^/       /' | head -n 40
    fi
}
lacks() {
    if grep -qF -- "$3" <<<"$2"; then
        fail "$1: unexpected '$3'"
    else
        pass "$1"
    fi
}

# newer_than BASELINE: the versions (x.y, one a line on stdin) newer than BASELINE, as GLIBC_x.y.
newer_than() {
    local v
    while read -r v; do
        [ -n "$v" ] || continue
        [ "$(printf '%s\n%s\n' "$1" "$v" | sort -V | tail -n1)" = "$1" ] || echo "GLIBC_$v"
    done
}
# glibc_versions FILE: the GLIBC_ symbol versions an ELF file needs (x.y, one a line).
glibc_versions() {
    readelf -V -W "$1" | grep -o 'Name: GLIBC_[0-9.]*' | sed 's/^Name: GLIBC_//' | sort -uV
}
# The launcher is linked against this glibc (packaging/Makefile GLIBC_BASELINE).
glibc_baseline=$(sed -n 's/^GLIBC_BASELINE *:= *//p' "$here/Makefile")

[ "$(id -u)" = 0 ] || { echo "packaging/test.sh must run as root (dpkg --root, rpm --root)" >&2; exit 1; }
for tool in rpm dpkg-deb dpkg systemd-analyze systemd-socket-activate python3 cargo make readelf unshare; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$top/Cargo.toml" | head -n1)
arch_rpm=$(uname -m)
arch_deb=$(dpkg --print-architecture)
out_plain="$top/target/packaging/test-out/plain"
out_agent="$top/target/packaging/test-out/agent"
agent_version=9.9.9
agent_name="ecs-agent-v$agent_version.tar"

# A small dummy agent tarball: the packages only carry it, they never look inside.
mkdir -p "$work/dummy"
printf '[{"Config":"dummy.json","RepoTags":["amazon/amazon-ecs-agent:latest"],"Layers":[]}]' \
    > "$work/dummy/manifest.json"
# Deterministic, so that SKIP_BUILD=1 runs compare against the same bytes.
touch -d @0 "$work/dummy/manifest.json"
tar --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$work/dummy-agent.tar" -C "$work/dummy" manifest.json
# A dummy EBS CSI driver image with an arch-specific name (as the Go spec's source).
ebs_dest=/var/lib/ecs/deps/daemons/ebs-csi-driver/ebs-csi-driver.tar
ebs_src="$work/ebs-csi-driver-$arch_deb.tar"
printf 'ebs-csi-driver image for %s\n' "$arch_deb" > "$ebs_src"
touch -d @0 "$ebs_src"

# ---------------------------------------------------------------------------------------------
echo "# build"
if [ "${SKIP_BUILD:-}" != 1 ]; then
    check "make -C packaging rpm deb" make -C "$here" OUT="$out_plain" rpm deb
    check "make -C packaging rpm deb with a bundled agent and EBS CSI driver" \
        make -C "$here" OUT="$out_agent" AGENT_TARBALL="$work/dummy-agent.tar" \
        AGENT_VERSION="$agent_version" EBS_CSI_DRIVER_TARBALL="$ebs_src" rpm deb
fi
# An EBS CSI driver image for another architecture is refused before anything is built.
other_arch=arm64
[ "$arch_deb" = arm64 ] && other_arch=amd64
cp "$ebs_src" "$work/ebs-csi-driver-$other_arch.tar"
if out=$(make -n -C "$here" EBS_CSI_DRIVER_TARBALL="$work/ebs-csi-driver-$other_arch.tar" deb 2>&1); then
    fail "make refuses an EBS CSI driver image for $other_arch"
else
    contains "make refuses an EBS CSI driver image for $other_arch" "$out" "is for $other_arch, this package for $arch_deb"
fi
# Each combination picks its cargo-deb variant.
for combo in "|" "x|" "|x" "x|x"; do
    a=${combo%|*} e=${combo#*|}
    want=$([ -n "$a" ] && [ -n "$e" ] && echo with-agent-ebs-csi || { [ -n "$a" ] && echo with-agent; } || { [ -n "$e" ] && echo with-ebs-csi; } || echo none)
    got=$(make -n -C "$here" ${a:+AGENT_TARBALL="$work/dummy-agent.tar" AGENT_VERSION=1} \
        ${e:+EBS_CSI_DRIVER_TARBALL="$ebs_src"} deb 2>/dev/null | grep -o -- '--variant [a-z-]*' || echo none)
    contains "make deb${a:+ with agent}${e:+ with EBS CSI driver}: variant $want" "$got" "$want"
done
rpm_rich="$out_plain/amazon-ecs-init-$version-1.$arch_rpm.rpm"
rpm_amzn2="$out_plain/amazon-ecs-init-$version-1.amzn2.$arch_rpm.rpm"
deb_plain="$out_plain/amazon-ecs-init_${version}-1_$arch_deb.deb"
rpm_agent="$out_agent/amazon-ecs-init-$version-1.$arch_rpm.rpm"
rpm_agent_amzn2="$out_agent/amazon-ecs-init-$version-1.amzn2.$arch_rpm.rpm"
deb_agent="$out_agent/amazon-ecs-init_${version}-1_$arch_deb.deb"
for f in "$rpm_rich" "$rpm_amzn2" "$deb_plain" "$rpm_agent" "$rpm_agent_amzn2" "$deb_agent"; do
    check "built $(basename "$(dirname "$f")")/$(basename "$f")" test -s "$f"
done
if [ ! -s "$rpm_rich" ] || [ ! -s "$deb_plain" ]; then
    echo "$passed passed, $failed failed"
    exit 1
fi

# Files every package installs, with their modes.
expected_files=(
    "-rwxr-xr-x /usr/libexec/amazon-ecs-init"
    "-rwxr-xr-x /usr/libexec/amazon-ecs-init-agent-init"
    "-rwxr-xr-x /usr/libexec/amazon-ecs-volume-plugin"
    "-rw-r--r-- /usr/lib/systemd/system/ecs.service"
    "-rw-r--r-- /usr/lib/systemd/system/amazon-ecs-volume-plugin.service"
    "-rw-r--r-- /usr/lib/systemd/system/amazon-ecs-volume-plugin.socket"
    "-rw------- /etc/ecs/ecs.config"
    "-rw-r--r-- /usr/share/man/man1/amazon-ecs-init.1.gz"
    "-rw-r--r-- /usr/share/bash-completion/completions/amazon-ecs-init"
    "-rw-r--r-- /usr/share/fish/vendor_completions.d/amazon-ecs-init.fish"
)

# ---------------------------------------------------------------------------------------------
echo "# rpm metadata"
for rpmf in "$rpm_rich" "$rpm_amzn2"; do
    n=$(basename "$rpmf")
    contains "$n: gzip payload (Amazon Linux 2's rpm cannot read zstd)" \
        "$(rpm -qp --qf '%{PAYLOADCOMPRESSOR}\n' "$rpmf")" "^gzip"
    reqs=$(rpm -qp --requires "$rpmf")
    lacks "$n: no zstd payload requirement" "$reqs" "PayloadIsZstd"
    listing=$(rpm -qp --qf '[%{FILEMODES:perms} %{FILENAMES}\n]' "$rpmf")
    for entry in "${expected_files[@]}" \
        "-rw-r--r-- /etc/init/ecs.conf" \
        "-rw-r--r-- /etc/init/amazon-ecs-volume-plugin.conf" \
        "-rw-r--r-- /usr/share/zsh/site-functions/_amazon-ecs-init"; do
        contains "$n: ships ${entry#* } as ${entry%% *}" "$listing" "^$entry"
    done
    lacks "$n: no agent tarball without AGENT_TARBALL" "$listing" "/var/cache/ecs/ecs-agent"
    flags=$(rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpmf")
    contains "$n: ecs.config is %config(noreplace)" "$flags" "^cn /etc/ecs/ecs.config"
    contains "$n: upstart job is %config(noreplace)" "$flags" "^cn /etc/init/ecs.conf"
    contains "$n: plugin upstart job is %config(noreplace)" "$flags" "^cn /etc/init/amazon-ecs-volume-plugin.conf"
    contains "$n: rpm -qcp lists ecs.config" "$(rpm -qcp "$rpmf")" "^/etc/ecs/ecs.config"
    contains "$n: man page is %doc" "$flags" "^d /usr/share/man/man1/amazon-ecs-init.1.gz"
    contains "$n: requires procps" "$reqs" "^procps"
    contains "$n: requires glibc's libc.so.6 (dynamic launcher)" "$reqs" "^libc.so.6()(64bit)"
    too_new=$(grep -o 'GLIBC_[0-9.]*' <<<"$reqs" | sed 's/^GLIBC_//' | newer_than "$glibc_baseline")
    if [ -z "$too_new" ]; then
        pass "$n: no glibc requirement above $glibc_baseline (Amazon Linux 2 has 2.26)"
    else
        fail "$n: requires $too_new"
    fi
    contains "$n: conflicts with the Go ecs-init" "$(rpm -qp --conflicts "$rpmf")" "^ecs-init"
    scripts=$(rpm -qp --scripts "$rpmf")
    contains "$n: has a postinstall scriptlet" "$scripts" "postinstall scriptlet"
    contains "$n: has a preuninstall scriptlet" "$scripts" "preuninstall scriptlet"
    contains "$n: has a postuninstall scriptlet" "$scripts" "postuninstall scriptlet"
    contains "$n: upgrade restarts a running service" "$scripts" "systemctl try-restart ecs.service"
    contains "$n: removal stops the service" "$scripts" "systemctl stop ecs.service"
    contains "$n: removal removes the rules when not run by systemd" "$scripts" "\"\$ECS_INIT\" post-stop"
    contains "$n: plain package bundles no agent" "$scripts" "^BUNDLED_AGENT=''"
    contains "$n: plain package bundles no EBS CSI driver" "$scripts" "^BUNDLED_EBS_CSI=''"
    lacks "$n: no EBS CSI driver image without EBS_CSI_DRIVER_TARBALL" "$listing" "$ebs_dest"
    contains "$n: has a preinstall scriptlet (keeps the Go package's EBS CSI driver)" "$scripts" "preinstall scriptlet"
    contains "$n: has a posttrans scriptlet (puts it back)" "$scripts" "posttrans scriptlet"
    contains "$n: install enables the plugin socket" "$scripts" 'systemctl enable "$PLUGIN.socket"'
    contains "$n: install starts the plugin socket" "$scripts" 'systemctl start "$PLUGIN.socket"'
    contains "$n: upgrade restarts a running plugin" "$scripts" 'systemctl try-restart "$PLUGIN.service"'
    contains "$n: removal stops the plugin" "$scripts" 'systemctl stop "$PLUGIN.socket" "$PLUGIN.service"'
    contains "$n: removal warns about volumes left mounted" "$scripts" "warn_mounted_volumes"
done
contains "rich rpm: recommends amazon-efs-utils (the EFS mount helper)" \
    "$(rpm -qp --recommends "$rpm_rich")" "^amazon-efs-utils"
lacks "amzn2 rpm: no weak dependencies (rpm 4.11)" "$(rpm -qp --recommends "$rpm_amzn2")" "amazon-efs-utils"
reqs=$(rpm -qp --requires "$rpm_rich")
contains "rich rpm: firewall alternatives" "$reqs" "^(iptables or nftables)"
contains "rich rpm: runtime alternatives" "$reqs" \
    "^(docker >= 20.10 or docker-ce >= 3:20.10 or moby-engine >= 20.10 or containerd or containerd.io)"
lacks "rich rpm: does not require iptables alone" "$(grep -x 'iptables' <<<"$reqs" || true)" "iptables"
reqs=$(rpm -qp --requires "$rpm_amzn2")
contains "amzn2 rpm: plain docker requirement" "$reqs" "^docker >= 20.10"
contains "amzn2 rpm: plain iptables requirement" "$reqs" "^iptables"
lacks "amzn2 rpm: no rich dependencies (rpm 4.11)" "$reqs" " or "
contains "amzn2 rpm: release carries the dist tag" "$(rpm -qp --qf '%{RELEASE}\n' "$rpm_amzn2")" "^1.amzn2"

# ---------------------------------------------------------------------------------------------
echo "# deb metadata"
info=$(dpkg-deb -I "$deb_plain")
contains "deb: package name" "$(dpkg-deb -f "$deb_plain" Package)" "^amazon-ecs-init"
contains "deb: version" "$(dpkg-deb -f "$deb_plain" Version)" "^$version-1"
depends=$(dpkg-deb -f "$deb_plain" Depends)
contains "deb: runtime alternatives" "$depends" \
    "docker-ce (>= 5:20.10) | docker.io (>= 20.10) | moby-engine (>= 20.10) | containerd.io | containerd"
contains "deb: firewall alternatives" "$depends" "iptables | nftables"
contains "deb: procps" "$depends" "procps"
contains "deb: recommends amazon-efs-utils (the EFS mount helper)" \
    "$(dpkg-deb -f "$deb_plain" Recommends)" "^amazon-efs-utils"
lacks "deb: amazon-efs-utils is not a hard dependency" "$depends" "amazon-efs-utils"
contains "deb: glibc from $glibc_baseline (the launcher's link baseline)" "$depends" "libc6 (>= $glibc_baseline)"
too_new=$(grep -o 'libc6 (>= [0-9.]*)' <<<"$depends" | sed 's/^libc6 (>= \(.*\))$/\1/' | newer_than "$glibc_baseline")
check "deb: no libc6 requirement above $glibc_baseline ($too_new)" test -z "$too_new"
contains "deb: conffiles lists ecs.config" "$(dpkg-deb -I "$deb_plain" conffiles)" "^/etc/ecs/ecs.config"
for s in postinst prerm postrm; do
    contains "deb: ships $s" "$info" " $s"
done
contains "deb: postinst restarts a running service on upgrade" \
    "$(dpkg-deb -I "$deb_plain" postinst)" "systemctl try-restart ecs.service"
contains "deb: prerm stops the service and removes the rules" \
    "$(dpkg-deb -I "$deb_plain" prerm)" "\"\$ECS_INIT\" post-stop"
listing=$(dpkg-deb -c "$deb_plain" | awk '{print $1, substr($6, 2)}')
for entry in "${expected_files[@]}" "-rw-r--r-- /usr/share/zsh/vendor-completions/_amazon-ecs-init"; do
    contains "deb: ships ${entry#* } as ${entry%% *}" "$listing" "^$entry"
done
lacks "deb: no agent tarball without AGENT_TARBALL" "$listing" "/var/cache/ecs/ecs-agent"
lacks "deb: no EBS CSI driver image without EBS_CSI_DRIVER_TARBALL" "$listing" "$ebs_dest"
contains "deb: ships preinst" "$info" " preinst"

# ---------------------------------------------------------------------------------------------
echo "# packaged binaries: dynamic launcher on an old glibc baseline, static agent-init"
# The launcher dlopen()s libnvidia-ml.so.1 on GPU hosts, which a static glibc program cannot
# do, so it is dynamic; it must then need no glibc newer than the oldest supported host's.
bx="$work/binx"
dpkg-deb -x "$deb_plain" "$bx"
launcher="$bx/usr/libexec/amazon-ecs-init"
agent_init="$bx/usr/libexec/amazon-ecs-init-agent-init"
contains "launcher: dynamically linked" "$(readelf -l -W "$launcher")" "Requesting program interpreter"
launcher_glibc=$(glibc_versions "$launcher")
check "launcher: needs glibc symbol versions ($(tr '\n' ' ' <<<"$launcher_glibc"))" test -n "$launcher_glibc"
too_new=$(newer_than "$glibc_baseline" <<<"$launcher_glibc")
if [ -z "$too_new" ]; then
    pass "launcher: no symbol needs a glibc newer than $glibc_baseline (so none of GLIBC_2.27+; Amazon Linux 2 has 2.26)"
else
    fail "launcher: needs $(tr '\n' ' ' <<<"$too_new")"
fi
# The check above must be able to fail: a binary linked on this host needs GLIBC_2.34 or newer.
check "glibc check flags a binary linked against this host's glibc ($(command -v rpm))" \
    test -n "$(glibc_versions "$(command -v rpm)" | newer_than 2.26)"
for lib in $(readelf -d -W "$launcher" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
    case "$lib" in
    libc.so.6 | libdl.so.2 | libpthread.so.0 | libm.so.6 | librt.so.1 | ld-linux*.so.*)
        pass "launcher: needs $lib (part of glibc)" ;;
    *) fail "launcher: needs $lib, which is not part of glibc (no package dependency covers it)" ;;
    esac
done
check "agent-init: static (no interpreter, no shared libraries)" \
    sh -c "! readelf -l -W '$agent_init' | grep -q 'program interpreter' && ! readelf -d -W '$agent_init' | grep -q NEEDED"
size=$(stat -c %s "$launcher")
check "launcher: $size bytes, at most 6 MB" test "$size" -le 6000000
plugin="$bx/usr/libexec/amazon-ecs-volume-plugin"
contains "volume plugin: dynamically linked" "$(readelf -l -W "$plugin")" "Requesting program interpreter"
too_new=$(glibc_versions "$plugin" | newer_than "$glibc_baseline")
check "volume plugin: no symbol needs a glibc newer than $glibc_baseline ($too_new)" test -z "$too_new"
size=$(stat -c %s "$plugin")
check "volume plugin: $size bytes, at most 4 MB" test "$size" -le 4000000
contains "volume plugin: --version" "$("$plugin" --version 2>&1)" "amazon-ecs-volume-plugin $version"
# The packaged plugin answers the protocol, on a socket passed the systemd way (LISTEN_FDS, as
# amazon-ecs-volume-plugin.socket does) and on one it binds itself (upstart, by hand).
ask_plugin() {
    python3 - "$1" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
s.sendall(b"POST /Plugin.Activate HTTP/1.1\r\nHost: p\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
print(data.decode().split("\r\n\r\n", 1)[1])
PY
}
pr="$work/plugin-root"
mkdir -p "$pr"
systemd-socket-activate -E ECS_INIT_HOST_ROOT="$pr" -l "$work/activated.sock" "$plugin" >"$work/activate.log" 2>&1 &
activator=$!
for _ in $(seq 1 50); do [ -S "$work/activated.sock" ] && break; sleep 0.1; done
contains "volume plugin: answers on a socket passed by socket activation" \
    "$(ask_plugin "$work/activated.sock" 2>&1)" '{"Implements":["VolumeDriver"]}'
contains "volume plugin: says it took systemd's socket" "$(cat "$pr/var/log/ecs/ecs-volume-plugin.log")" \
    'listening on the socket systemd passed'
kill "$activator" 2>/dev/null || true
wait "$activator" 2>/dev/null || true
ECS_INIT_HOST_ROOT="$pr" ECS_VOLUME_PLUGIN_SOCKET="$work/own.sock" "$plugin" >"$work/own.log" 2>&1 &
own=$!
for _ in $(seq 1 50); do [ -S "$work/own.sock" ] && break; sleep 0.1; done
contains "volume plugin: answers on a socket it binds itself" \
    "$(ask_plugin "$work/own.sock" 2>&1)" '{"Implements":["VolumeDriver"]}'
check "volume plugin: its socket is mode 660" test "$(stat -c %a "$work/own.sock")" = 660
kill -TERM "$own"
own_rc=0
wait "$own" || own_rc=$?
check "volume plugin: exits 0 on SIGTERM (exit $own_rc)" test "$own_rc" = 0
# The GPU step of the packaged launcher: NVML loaded at run time from the fake library, with
# fake /dev/nvidia* in private mount namespaces (tests/gpu.rs).
check "GPU step tests against the packaged launcher" \
    env ECS_INIT_TEST_BINARY="$launcher" cargo test -q --manifest-path "$top/Cargo.toml" \
    -p amazon-ecs-init --features integration --test gpu gpu_step

# ---------------------------------------------------------------------------------------------
echo "# bundled agent variant"
contains "rpm+agent: ships /var/cache/ecs/$agent_name" \
    "$(rpm -qp --qf '[%{FILEMODES:perms} %{FILENAMES}\n]' "$rpm_agent")" "^-rw-r--r-- /var/cache/ecs/$agent_name"
contains "amzn2 rpm+agent: ships /var/cache/ecs/$agent_name" "$(rpm -qlp "$rpm_agent_amzn2")" "^/var/cache/ecs/$agent_name"
contains "rpm+agent: post-install knows the tarball" "$(rpm -qp --scripts "$rpm_agent")" "BUNDLED_AGENT='$agent_name'"
contains "deb+agent: ships /var/cache/ecs/$agent_name" \
    "$(dpkg-deb -c "$deb_agent" | awk '{print $1, substr($6, 2)}')" "^-rw-r--r-- /var/cache/ecs/$agent_name"
contains "deb+agent: postinst knows the tarball" "$(dpkg-deb -I "$deb_agent" postinst)" "BUNDLED_AGENT='$agent_name'"
contains "deb+agent: same package name" "$(dpkg-deb -f "$deb_agent" Package)" "^amazon-ecs-init"
check "deb+agent: tarball is the one given at build time" \
    cmp "$work/dummy-agent.tar" <(dpkg-deb --fsys-tarfile "$deb_agent" | tar -xOf - "./var/cache/ecs/$agent_name")
echo "# bundled EBS CSI driver"
contains "rpm+ebs: ships $ebs_dest (644)" \
    "$(rpm -qp --qf '[%{FILEMODES:perms} %{FILENAMES}\n]' "$rpm_agent")" "^-rw-r--r-- $ebs_dest"
contains "amzn2 rpm+ebs: ships $ebs_dest" "$(rpm -qlp "$rpm_agent_amzn2")" "^$ebs_dest"
contains "rpm+ebs: scripts know it is bundled" "$(rpm -qp --scripts "$rpm_agent")" "BUNDLED_EBS_CSI='ebs-csi-driver.tar'"
contains "deb+ebs: ships $ebs_dest (644)" \
    "$(dpkg-deb -c "$deb_agent" | awk '{print $1, substr($6, 2)}')" "^-rw-r--r-- $ebs_dest"
check "deb+ebs: the image is the one given at build time" \
    cmp "$ebs_src" <(dpkg-deb --fsys-tarfile "$deb_agent" | tar -xOf - ".$ebs_dest")
check "rpm+ebs: the image is the one given at build time" \
    cmp "$ebs_src" <(rpm2archive -n - < "$rpm_agent" 2>/dev/null | tar -xOf - ".$ebs_dest")

# ---------------------------------------------------------------------------------------------
# run_installed ROOT LABEL: `version` and `plan` of the binary installed under ROOT.
run_installed() {
    local root=$1 label=$2 out
    out=$("$root/usr/libexec/amazon-ecs-init" version 2>&1) || true
    contains "$label: installed binary prints its version" "$out" "ecs-init version $version"
    mkdir -p "$root/etc/ecs"
    # stdout only: the JSON plan; logs go to stderr.
    if out=$(ECS_INIT_HOST_ROOT="$root" "$root/usr/libexec/amazon-ecs-init" plan 2>"$work/plan.err"); then
        if python3 -c 'import json,sys; json.loads(sys.stdin.read())' <<<"$out" 2>/dev/null; then
            pass "$label: installed binary's plan prints JSON"
            contains "$label: plan names the agent container" "$out" '"ecs-agent"'
        else
            fail "$label: plan output is not JSON:"
            printf '%s\n' "$out" | sed 's/^/       /' | head -n 20
        fi
    else
        fail "$label: installed binary's plan failed:"
        cat "$work/plan.err" - <<<"$out" | sed 's/^/       /' | head -n 20
    fi
}

# verify_unit ROOT LABEL: systemd-analyze verify of the installed unit inside ROOT, with the
# host's own units copied in (sysinit.target etc.) and MANPATH pointing at the installed page.
verify_unit() {
    local root=$1 label=$2 out
    mkdir -p "$root/usr/lib/systemd/system"
    cp -an /lib/systemd/system/. "$root/usr/lib/systemd/system/"
    local unit
    for unit in ecs.service amazon-ecs-volume-plugin.service amazon-ecs-volume-plugin.socket; do
        if out=$(MANPATH="$root/usr/share/man" systemd-analyze verify --root="$root" "$unit" 2>&1) &&
            [ -z "$out" ]; then
            pass "$label: systemd-analyze verify $unit"
        else
            fail "$label: systemd-analyze verify $unit:"
            printf '%s\n' "$out" | sed 's/^/       /'
        fi
    done
}

echo "# rpm install into a scratch root"
r="$work/rpmroot"
mkdir -p "$r"
check "rpm --initdb in scratch root" rpm --root "$r" --initdb
# Scriptlets run chrooted into the root, which has no /bin/sh: they are exercised below instead.
check "rpm -i --nodeps --noscripts into scratch root" rpm --root "$r" -i --nodeps --noscripts "$rpm_agent"
check "rpm -V: installed files match the package" rpm --root "$r" -V --nodeps --noscripts amazon-ecs-init
check "rpm -q in scratch root" rpm --root "$r" -q amazon-ecs-init
run_installed "$r" "rpm"
verify_unit "$r" "rpm"
# The scriptlets, exactly as stored in the package, against the scratch root (DPKG_ROOT).
rpm -qp --qf '%{POSTIN}' "$rpm_agent" > "$work/rpm-post"
rpm -qp --qf '%{PREUN}' "$rpm_agent" > "$work/rpm-preun"
rpm -qp --qf '%{POSTUN}' "$rpm_agent" > "$work/rpm-postun"
rm -rf "$r/var/cache/ecs/state" "$r/var/lib/ecs/data"
check "rpm %post (install) runs" env DPKG_ROOT="$r" sh "$work/rpm-post" 1
check "rpm %post: ecs-agent.tar links to the bundled tarball" \
    test "$(readlink "$r/var/cache/ecs/ecs-agent.tar")" = "$agent_name"
check "rpm %post: state is 2 (reload needed)" test "$(cat "$r/var/cache/ecs/state")" = 2
check "rpm %post: /var/lib/ecs/data exists, mode 700" test "$(stat -c %a "$r/var/lib/ecs/data")" = 700
check "rpm %post: /var/cache/ecs mode 700" test "$(stat -c %a "$r/var/cache/ecs")" = 700
check "rpm %post: /var/log/ecs exists" test -d "$r/var/log/ecs"
check "rpm %post (upgrade) runs" env DPKG_ROOT="$r" sh "$work/rpm-post" 2
check "rpm %preun (removal) runs" env DPKG_ROOT="$r" sh "$work/rpm-preun" 0
# Replacing a package that shipped the EBS CSI driver image (the Go ecs-init) with one that does
# not: %pre keeps a link, the replaced package's removal deletes the file, %posttrans restores it.
rpm -qp --qf '%{PREIN}' "$rpm_rich" > "$work/rpm-pre-plain"
rpm -qp --qf '%{POSTTRANS}' "$rpm_rich" > "$work/rpm-posttrans-plain"
mkdir -p "$(dirname "$r$ebs_dest")"
echo "the Go package's image" > "$r$ebs_dest"
check "rpm %pre (plain) runs with an EBS CSI driver image present" env DPKG_ROOT="$r" sh "$work/rpm-pre-plain" 1
rm -f "$r$ebs_dest"
check "rpm %posttrans (plain) runs" env DPKG_ROOT="$r" sh "$work/rpm-posttrans-plain"
check "rpm %posttrans: the replaced package's EBS CSI driver image is back" \
    grep -qx "the Go package's image" "$r$ebs_dest"
check "rpm %posttrans: no keep link left" \
    test -z "$(find "$(dirname "$r$ebs_dest")" -name '*keep*')"
# The check above must be able to fail: without %pre, nothing comes back.
rm -f "$r$ebs_dest"
env DPKG_ROOT="$r" sh "$work/rpm-posttrans-plain"
check "rpm %posttrans without %pre restores nothing" test ! -e "$r$ebs_dest"
rm -rf "$r/var/lib/ecs/deps"
check "rpm -e --noscripts from scratch root" rpm --root "$r" -e --nodeps --noscripts amazon-ecs-init
check "rpm -e: binary removed" test ! -e "$r/usr/libexec/amazon-ecs-init"
check "rpm %postun (removal) runs" env DPKG_ROOT="$r" sh "$work/rpm-postun" 0
check "rpm %postun: dangling ecs-agent.tar link removed" test ! -L "$r/var/cache/ecs/ecs-agent.tar"

echo "# deb install into a scratch root (maintainer scripts run chrootless with DPKG_ROOT)"
d="$work/debroot"
mkdir -p "$d/var/lib/dpkg/info" "$d/var/lib/dpkg/updates"
: > "$d/var/lib/dpkg/status"
: > "$d/var/lib/dpkg/available"
dpkg_r=(dpkg --root="$d" --force-script-chrootless --force-depends --log=/dev/null)
check "dpkg --root -i plain deb" "${dpkg_r[@]}" -i "$deb_plain"
contains "dpkg: installed" "$(dpkg-query --admindir="$d/var/lib/dpkg" -W -f '${Status}' amazon-ecs-init)" "install ok installed"
check "dpkg: postinst created /var/cache/ecs mode 700" test "$(stat -c %a "$d/var/cache/ecs")" = 700
check "dpkg: postinst created /var/lib/ecs/data mode 700" test "$(stat -c %a "$d/var/lib/ecs/data")" = 700
check "dpkg: plain package writes no cache state" test ! -e "$d/var/cache/ecs/state"
check "dpkg: ecs.config installed empty with mode 600" \
    test -f "$d/etc/ecs/ecs.config" -a ! -s "$d/etc/ecs/ecs.config" -a "$(stat -c %a "$d/etc/ecs/ecs.config")" = 600
run_installed "$d" "deb"
verify_unit "$d" "deb"
echo "ECS_CLUSTER=kept" > "$d/etc/ecs/ecs.config"
check "dpkg --root upgrade to the bundled-agent deb" "${dpkg_r[@]}" --force-confold -i "$deb_agent"
check "dpkg upgrade: modified ecs.config kept" grep -qx ECS_CLUSTER=kept "$d/etc/ecs/ecs.config"
check "dpkg upgrade: ecs-agent.tar links to the bundled tarball" \
    test "$(readlink "$d/var/cache/ecs/ecs-agent.tar")" = "$agent_name"
check "dpkg upgrade: state is 2" test "$(cat "$d/var/cache/ecs/state")" = 2
check "dpkg upgrade: bundled tarball present" test -s "$d/var/cache/ecs/$agent_name"
check "dpkg --root -r" "${dpkg_r[@]}" -r amazon-ecs-init
check "dpkg -r: binary removed" test ! -e "$d/usr/libexec/amazon-ecs-init"
check "dpkg -r: dangling ecs-agent.tar link removed" test ! -L "$d/var/cache/ecs/ecs-agent.tar"
check "dpkg -r: ecs.config kept until purge" test -f "$d/etc/ecs/ecs.config"
check "dpkg --root --purge" "${dpkg_r[@]}" --purge amazon-ecs-init
check "dpkg --purge: ecs.config removed" test ! -e "$d/etc/ecs/ecs.config"
check "dpkg --purge: state removed" test ! -e "$d/var/cache/ecs/state"

echo "# deb: upgrade from a package that shipped the EBS CSI driver image (the Go one) keeps it"
g="$work/goroot"
mkdir -p "$g/var/lib/dpkg/info" "$g/var/lib/dpkg/updates"
: > "$g/var/lib/dpkg/status"
: > "$g/var/lib/dpkg/available"
dpkg_g=(dpkg --root="$g" --force-script-chrootless --force-depends --log=/dev/null)
fake="$work/fake-go"
mkdir -p "$fake/DEBIAN" "$fake$(dirname "$ebs_dest")"
printf 'Package: amazon-ecs-init\nVersion: 1.0.0-1\nArchitecture: %s\nMaintainer: test\nDescription: stand-in for the Go package\n' \
    "$arch_deb" > "$fake/DEBIAN/control"
echo "the Go package's image" > "$fake$ebs_dest"
check "build a stand-in Go deb shipping the EBS CSI driver image" dpkg-deb --build --root-owner-group "$fake" "$work/fake-go.deb"
check "dpkg -i the stand-in Go deb" "${dpkg_g[@]}" -i "$work/fake-go.deb"
check "dpkg upgrade to our plain deb" "${dpkg_g[@]}" -i "$deb_plain"
check "dpkg upgrade: the EBS CSI driver image is still there" grep -qx "the Go package's image" "$g$ebs_dest"
check "dpkg upgrade: no keep link left" test -z "$(find "$(dirname "$g$ebs_dest")" -name '*keep*')"
check "dpkg upgrade to our deb with the image" "${dpkg_g[@]}" -i "$deb_agent"
check "dpkg upgrade: the packaged EBS CSI driver image replaced it" cmp "$ebs_src" "$g$ebs_dest"
check "dpkg -r: the packaged image goes with the package" "${dpkg_g[@]}" -r amazon-ecs-init
check "dpkg -r: EBS CSI driver image removed" test ! -e "$g$ebs_dest"

echo "# dpkg-deb -x of the bundled-agent deb"
x="$work/debx"
check "dpkg-deb -x" dpkg-deb -x "$deb_agent" "$x"
run_installed "$x" "deb -x"

# ---------------------------------------------------------------------------------------------
echo "# unit and upstart job"
unit="$here/systemd/ecs.service"
for line in "Type=notify" "Restart=on-failure" "RestartPreventExitStatus=5" "RestartSec=10s" \
    "EnvironmentFile=-/var/lib/ecs/ecs.config" "EnvironmentFile=-/etc/ecs/ecs.config" \
    "ExecStartPre=/usr/libexec/amazon-ecs-init pre-start" "ExecStart=/usr/libexec/amazon-ecs-init start" \
    "ExecStop=/usr/libexec/amazon-ecs-init stop" "ExecStopPost=/usr/libexec/amazon-ecs-init post-stop" \
    "Wants=docker.service containerd.service" "After=docker.service containerd.service"; do
    contains "unit: $line" "$(cat "$unit")" "^$line"
done
lacks "unit: no Requires= (would fail where a runtime is absent)" "$(grep -v '^#' "$unit")" "Requires="
# The verify check above must be able to fail: a unit whose ExecStart does not exist.
neg="$work/negroot"
mkdir -p "$neg/usr/lib/systemd/system"
sed 's|/usr/libexec/amazon-ecs-init|/usr/libexec/missing-ecs-init|' "$unit" > "$neg/usr/lib/systemd/system/ecs.service"
cp -an /lib/systemd/system/. "$neg/usr/lib/systemd/system/"
if MANPATH=/nonexistent systemd-analyze verify --root="$neg" ecs.service >/dev/null 2>&1; then
    fail "systemd-analyze verify rejects a unit with a missing ExecStart binary"
else
    pass "systemd-analyze verify rejects a unit with a missing ExecStart binary"
fi
punit=$(cat "$here/systemd/amazon-ecs-volume-plugin.service")
for line in "Requires=amazon-ecs-volume-plugin.socket" "After=network.target amazon-ecs-volume-plugin.socket" \
    "ExecStart=/usr/libexec/amazon-ecs-volume-plugin" "Restart=on-failure" "RestartSec=10s" "KillMode=process"; do
    contains "plugin unit: $line" "$punit" "^$line"
done
psock=$(cat "$here/systemd/amazon-ecs-volume-plugin.socket")
for line in "ListenStream=/run/docker/plugins/amazon-ecs-volume-plugin.sock" "WantedBy=sockets.target"; do
    contains "plugin socket: $line" "$psock" "^$line"
done
contains "plugin upstart job: exec" "$(cat "$here/upstart/amazon-ecs-volume-plugin.conf")" \
    "^exec /usr/libexec/amazon-ecs-volume-plugin"
job=$(cat "$here/upstart/ecs.conf")
for line in "start on stopped rc RUNLEVEL=[345]" "respawn" "normal exit 0 5" \
    "pre-start exec /usr/libexec/amazon-ecs-init pre-start" "exec /usr/libexec/amazon-ecs-init start" \
    "pre-stop exec /usr/libexec/amazon-ecs-init pre-stop" "post-stop exec /usr/libexec/amazon-ecs-init post-stop"; do
    contains "upstart: $line" "$job" "^$line"
done

echo "# scripts"
check "bash -n test.sh" bash -n "$here/test.sh"
for s in "$top"/target/packaging/scripts/*/*; do
    check "sh -n $(basename "$(dirname "$s")")/$(basename "$s")" sh -n "$s"
done
if command -v shellcheck >/dev/null; then
    check "shellcheck test scripts" shellcheck -x "$here/test.sh"
    check "shellcheck maintainer scripts" shellcheck -s sh "$top"/target/packaging/scripts/*/*
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
