#!/usr/bin/env bash
# The launcher's GPU step on a real NVIDIA GPU host, checked against nvidia-smi.
#
# Runs `amazon-ecs-init gpu-info` (pre-start's GPU step alone: no container runtime, no
# firewall) with the binary exactly as the packages ship it, against a scratch ECS_INIT_HOST_ROOT
# whose ecs.config says ECS_ENABLE_GPU_SUPPORT=true, then compares
# <root>/var/lib/ecs/gpu/nvidia-gpu-info.json with
# `nvidia-smi --query-gpu=uuid,driver_version --format=csv,noheader` (and each GPU's memory and
# virtualization mode, the MPS binary and `systemctl is-enabled nvidia-mps.service`), printing
# both and `N passed, N failed` (exit 1 on any failure).
#
# Needs: Linux with an NVIDIA driver (nvidia-smi, libnvidia-ml.so.1, /dev/nvidia*); coreutils,
# grep, sed; dpkg-deb (for a .deb) or rpm2cpio + cpio (for a .rpm). No Rust, no container
# runtime, no root (NVML and the scratch root need none).
#
# Usage: tests/gpu/on-real-gpu.sh [PACKAGE.deb | PACKAGE.rpm | LAUNCHER-BINARY]
#   default: the DEB built by `make -C packaging deb` (target/packaging/out/*.deb).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../.." && pwd)
work=$(mktemp -d /tmp/ecs-init-real-gpu.XXXXXX)
trap 'rm -rf "$work"' EXIT

# pass, fail, check and the counts.
source "$top/tests/checks.sh"
finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" = 0 ]
    exit
}

# --- the launcher, as shipped ------------------------------------------------------------------
src=${1:-}
if [ -z "$src" ]; then
    debs=("$top"/target/packaging/out/amazon-ecs-init_*.deb)
    [ -e "${debs[0]}" ] && src=${debs[0]}
fi
bin="$work/amazon-ecs-init"
case "$src" in
"")
    fail "no package given and none in $top/target/packaging/out (make -C packaging deb)"
    finish
    ;;
*.deb)
    dpkg-deb --fsys-tarfile "$src" | tar -xO ./usr/libexec/amazon-ecs-init > "$bin" ;;
*.rpm)
    (cd "$work" && rpm2cpio "$src" | cpio -i --quiet --to-stdout ./usr/libexec/amazon-ecs-init) > "$bin" ;;
*)
    cp "$src" "$bin" ;;
esac
chmod 0755 "$bin"
if [ -s "$bin" ]; then pass "launcher taken from $src"; else fail "no launcher in $src"; finish; fi
echo "# host: $(uname -srm); $(ldd --version 2>&1 | head -n1)"
echo "# launcher: $("$bin" version 2>&1)"
if command -v readelf >/dev/null; then
    echo "# launcher needs: $(readelf -V -W "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n1)," \
        "$(readelf -d -W "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')"
fi

# --- preconditions: a GPU host -----------------------------------------------------------------
if ! command -v nvidia-smi >/dev/null; then fail "nvidia-smi not found: not an NVIDIA GPU host"; finish; fi
if ! ls /dev/nvidia* >/dev/null 2>&1; then fail "no /dev/nvidia*: not an NVIDIA GPU host"; finish; fi
smi=$(nvidia-smi --query-gpu=uuid,driver_version --format=csv,noheader 2>&1)
smi_rc=$?
echo "# nvidia-smi --query-gpu=uuid,driver_version --format=csv,noheader:"
printf '%s\n' "$smi" | sed 's/^/#   /'
if [ "$smi_rc" != 0 ] || [ -z "$smi" ]; then fail "nvidia-smi failed (exit $smi_rc)"; finish; fi

# --- the GPU step ------------------------------------------------------------------------------
root="$work/root"
mkdir -p "$root/etc/ecs"
echo "ECS_ENABLE_GPU_SUPPORT=true" > "$root/etc/ecs/ecs.config"
# The MPS control binary is looked for under the (re-rooted) host root: mirror the host's.
mps_bin_rooted=false
if [ -e /usr/bin/nvidia-cuda-mps-control ]; then
    mkdir -p "$root/usr/bin" && : > "$root/usr/bin/nvidia-cuda-mps-control" && mps_bin_rooted=true
fi
info="$root/var/lib/ecs/gpu/nvidia-gpu-info.json"
ECS_INIT_HOST_ROOT="$root" "$bin" gpu-info > "$work/out" 2>&1
rc=$?
echo "# amazon-ecs-init gpu-info (exit $rc):"
sed 's/^/#   /' "$work/out"
if [ "$rc" = 0 ]; then pass "gpu-info exits 0"; else fail "gpu-info exited $rc"; fi
if grep -qF "you agree to Nvidia’s End User License Agreement" "$work/out"; then
    pass "the NVIDIA EULA line is logged"
else
    fail "the NVIDIA EULA line is not logged"
fi
if [ ! -f "$info" ]; then fail "$info not written"; finish; fi
json=$(cat "$info")
echo "# $info:"
echo "#   $json"
if [ "$(stat -c %a "$info")" = 700 ]; then pass "file mode 0700"; else fail "file mode $(stat -c %a "$info")"; fi
if [ "$(stat -c %a "$(dirname "$info")")" = 700 ]; then pass "directory mode 0700"; else fail "directory mode $(stat -c %a "$(dirname "$info")")"; fi

# --- compare with nvidia-smi -------------------------------------------------------------------
smi_uuids=$(printf '%s\n' "$smi" | sed -n 's/^ *\(GPU-[^,]*\) *,.*/\1/p')
smi_driver=$(printf '%s\n' "$smi" | sed -n 's/^[^,]*, *\([^ ]*\) *$/\1/p' | sort -u)
json_driver=$(sed -n 's/^{"DriverVersion":"\([^"]*\)".*/\1/p' <<<"$json")
json_uuids=$(sed -n 's/.*"GPUIDs":\[\([^]]*\)\].*/\1/p' <<<"$json" | grep -o '"GPU-[^"]*"' | tr -d '"')
echo "# nvidia-smi: driver $smi_driver; $(wc -l <<<"$smi_uuids") GPU(s)"
echo "# launcher:   driver $json_driver; $(grep -c . <<<"$json_uuids") GPU(s)"
if [ "$(wc -l <<<"$smi_driver")" = 1 ] && [ "$json_driver" = "$smi_driver" ]; then
    pass "DriverVersion $json_driver matches nvidia-smi"
else
    fail "DriverVersion '$json_driver' vs nvidia-smi '$smi_driver'"
fi
if [ -n "$json_uuids" ] && [ "$(sort <<<"$json_uuids")" = "$(sort <<<"$smi_uuids")" ]; then
    pass "GPUIDs are nvidia-smi's UUIDs"
else
    fail "GPUIDs differ from nvidia-smi's UUIDs"
fi
ids=$(while read -r u; do printf '"%s"\n' "$u"; done <<<"$smi_uuids" | paste -sd, -)
prefix="{\"DriverVersion\":\"$smi_driver\",\"GPUIDs\":[$ids],"
if [ "${json#"$prefix"}" != "$json" ]; then
    pass "the file starts $prefix (nvidia-smi's order)"
else
    fail "the file does not start $prefix"
fi

# GPUMemoryMiB: NVML's v2 total less reserved per UUID, against nvidia-smi's (MiB each, so
# within 1 of each other).
mem_json=$(sed -n 's/.*"GPUMemoryMiB":{\([^}]*\)}.*/\1/p' <<<"$json")
smi_mem=$(nvidia-smi --query-gpu=uuid,memory.total,memory.reserved --format=csv,noheader,nounits 2>&1)
echo "# nvidia-smi --query-gpu=uuid,memory.total,memory.reserved --format=csv,noheader,nounits:"
printf '%s\n' "$smi_mem" | sed 's/^/#   /'
if [ -z "$mem_json" ]; then
    fail "no GPUMemoryMiB (the log above says why)"
else
    while IFS=, read -r uuid total reserved; do
        uuid=$(echo $uuid) total=$(echo $total) reserved=$(echo $reserved)
        got=$(grep -o "\"$uuid\":[0-9]*" <<<"$mem_json" | cut -d: -f2)
        if ! [[ $total =~ ^[0-9]+$ && $reserved =~ ^[0-9]+$ ]]; then
            echo "# nvidia-smi gives no memory.total/memory.reserved for $uuid: launcher says ${got:-none}"
        elif [ -n "$got" ] && [ $((got - (total - reserved))) -ge -1 ] && [ $((got - (total - reserved))) -le 1 ]; then
            pass "GPUMemoryMiB of $uuid: $got (nvidia-smi: $total - $reserved)"
        else
            fail "GPUMemoryMiB of $uuid: ${got:-missing}, nvidia-smi: $total - $reserved"
        fi
    done <<<"$smi_mem"
fi

# The MPS facts, from the host itself.
mps_bin=false; [ -e /usr/bin/nvidia-cuda-mps-control ] && mps_bin=true
state=$(systemctl is-enabled nvidia-mps.service 2>/dev/null)
mps_svc=false; case "$state" in enabled | enabled-runtime) mps_svc=true ;; esac
modes=$(nvidia-smi --query-gpu=virtualization_mode --format=csv,noheader 2>/dev/null)
vgpu=false; grep -qx 'VGPU' <<<"$modes" && vgpu=true
echo "# host: nvidia-cuda-mps-control present $mps_bin; nvidia-mps.service '$state'; virtualization modes: $(paste -sd, - <<<"$modes")"
tail="\"MpsControlBinaryPresent\":$mps_bin_rooted,\"MpsServiceEnabled\":$mps_svc,\"HasVGPU\":$vgpu}"
memory_part=
[ -n "$mem_json" ] && memory_part="\"GPUMemoryMiB\":{$mem_json},"
expected="$prefix$memory_part$tail"
if [ "$json" = "$expected" ]; then
    pass "file bytes are exactly $expected (no trailing newline)"
else
    fail "file bytes differ from $expected"
fi

# plan shows the step, read-only.
plan=$(ECS_INIT_HOST_ROOT="$root" "$bin" plan 2>/dev/null)
if grep -qF 'pre-start queries NVML' <<<"$plan" && grep -qF "\"info_file\": \"$info\"" <<<"$plan"; then
    pass "plan shows the GPU step and the file"
else
    fail "plan does not show the GPU step: $(grep -A8 '"gpu"' <<<"$plan")"
fi
finish
