# DEB postinst: configure [<old-version>]
case "$1" in
    configure)
        # The old version's files were removed while unpacking this one.
        restore_ebs_csi_driver
        if [ -n "${2:-}" ]; then after_install upgrade; else after_install install; fi
        ;;
    abort-upgrade|abort-remove|abort-deconfigure) ;;
esac
exit 0
