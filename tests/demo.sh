#!/usr/bin/env bash
# Runs the main job on the built-in default: the stand-in agent (built from this repo, packed as
# a `docker save` tarball exactly like the real agent's) is loaded by pre-start, started and
# supervised by `amazon-ecs-init start`, and `status` is shown. Run as root on Debian/Ubuntu.
#
#   sudo tests/demo.sh                 # Docker if it answers, else containerd (auto)
#   sudo RUNTIME=containerd tests/demo.sh
#   sudo KEEP=1 tests/demo.sh          # leave it running (stop: amazon-ecs-init stop/post-stop)
#
# Everything lives under DEMO_ROOT (default /var/tmp/ecs-init-demo) through ECS_INIT_HOST_ROOT,
# so the host's real /etc/ecs, /var/lib/ecs, /var/cache/ecs and /var/log/ecs are not touched.
# pre-start and post-stop run in a scratch network namespace unless HOST_NETWORK=1, so the
# demo does not change the host's firewall or sysctls either.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "demo.sh: run as root" >&2; exit 1; }

bash tests/setup.sh
cargo build --release -p amazon-ecs-init
bin=$PWD/target/release/amazon-ecs-init

export ECS_INIT_HOST_ROOT=${DEMO_ROOT:-/var/tmp/ecs-init-demo}
export ECS_INIT_RUNTIME=${RUNTIME:-auto}
mkdir -p "$ECS_INIT_HOST_ROOT"/{etc/ecs,var/cache/ecs,var/lib/ecs,var/log/ecs}
cargo run -q --release -p ecs-test-support --bin pack-stand-in -- \
    "$ECS_INIT_HOST_ROOT/var/cache/ecs/ecs-agent.tar" >/dev/null
echo 2 >"$ECS_INIT_HOST_ROOT/var/cache/ecs/state"
ECS_INIT_AGENT_INIT=$(cargo run -q --release -p ecs-test-support --bin pack-stand-in -- --print-agent-init)
export ECS_INIT_AGENT_INIT
[ -f "$ECS_INIT_HOST_ROOT/etc/ecs/ecs.config" ] || echo "ECS_CLUSTER=demo" >"$ECS_INIT_HOST_ROOT/etc/ecs/ecs.config"

netwrap() {
    if [ "${HOST_NETWORK:-0}" = 1 ]; then "$@"; else unshare -n -- sh -c 'ip link set lo up && exec "$0" "$@"' "$@"; fi
}

echo "== plan (the agent container, backends and rules; secrets redacted): $ECS_INIT_HOST_ROOT/plan.json"
"$bin" plan >"$ECS_INIT_HOST_ROOT/plan.json"
python3 -c 'import json,sys; p=json.load(open(sys.argv[1])); print("   runtime:", p["runtime"]["name"], "-", p["runtime"]["reason"]); print("   firewall:", p["network"]["firewall"], "-", p["network"]["reason"]); print("   agent:", p["agent"]["image"], "as", p["agent"]["name"], "with", len(p["agent"]["env"]), "env vars and", len(p["agent"]["mounts"]), "binds")' "$ECS_INIT_HOST_ROOT/plan.json"
echo "== pre-start"
netwrap "$bin" pre-start
echo "== start (supervising in the background; log: $ECS_INIT_HOST_ROOT/var/log/ecs/ecs-init.log)"
"$bin" start 2>/dev/null &
sup=$!
for _ in $(seq 1 120); do
    "$bin" status >/dev/null 2>&1 && break
    sleep 0.5
done
echo "== status"
"$bin" status
echo "== GET http://127.0.0.1:51678/v1/metadata"
curl -s http://127.0.0.1:51678/v1/metadata; echo
if [ "${KEEP:-0}" = 1 ]; then
    echo "left running (supervisor pid $sup). Stop with: ECS_INIT_HOST_ROOT=$ECS_INIT_HOST_ROOT $bin stop"
    exit 0
fi
echo "== stop, post-stop"
"$bin" stop
wait "$sup" && echo "supervisor exited 0"
netwrap "$bin" post-stop
"$bin" status || echo "(status exits 3: the agent is not running)"
