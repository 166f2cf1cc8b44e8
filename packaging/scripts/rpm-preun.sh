# RPM %preun: $1 is 0 on removal, >= 1 when an upgrade removes the old version (then the new
# version's %post has already restarted the service).
if [ "${1:-0}" -eq 0 ]; then before_remove; fi
exit 0
