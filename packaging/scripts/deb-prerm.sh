# DEB prerm: remove | upgrade | deconfigure | failed-upgrade
case "$1" in
    remove|deconfigure) before_remove ;;
    # On upgrade the new postinst restarts a running service with the new launcher.
    upgrade|failed-upgrade) ;;
esac
exit 0
