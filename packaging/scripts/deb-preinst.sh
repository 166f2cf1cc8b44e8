# DEB preinst: install | upgrade <old-version> | abort-upgrade
case "$1" in
    install|upgrade) keep_ebs_csi_driver ;;
esac
exit 0
