# RPM %postun: $1 is 0 on removal. RPM has no purge: /etc/ecs/ecs.config is kept as
# ecs.config.rpmsave when modified, and the agent's data stays.
if [ "${1:-0}" -eq 0 ]; then after_remove remove; fi
exit 0
