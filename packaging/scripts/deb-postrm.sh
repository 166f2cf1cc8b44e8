# DEB postrm: remove | purge | upgrade | failed-upgrade | abort-install | abort-upgrade | disappear
case "$1" in
    remove) after_remove remove ;;
    purge) after_remove purge ;;
esac
exit 0
