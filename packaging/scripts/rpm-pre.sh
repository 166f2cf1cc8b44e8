# RPM %pre: $1 is 1 on install, 2 on upgrade. Also when this package replaces the Go ecs-init
# in one transaction (yum swap), whose files are removed after this package's %post.
keep_ebs_csi_driver
exit 0
