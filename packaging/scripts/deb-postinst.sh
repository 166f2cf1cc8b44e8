# DEB postinst: configure [<old-version>]
case "$1" in
    configure)
        if [ -n "${2:-}" ]; then after_install upgrade; else after_install install; fi
        ;;
    abort-upgrade|abort-remove|abort-deconfigure) ;;
esac
exit 0
