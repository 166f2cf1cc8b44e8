# RPM %posttrans: after the whole transaction, when the replaced package's files are gone.
restore_ebs_csi_driver
exit 0
