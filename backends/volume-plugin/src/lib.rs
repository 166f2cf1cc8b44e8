//! The ECS volume plugin (`amazon-ecs-volume-plugin`): the Docker volume driver the ECS agent
//! hands EFS and S3 Files volumes to (the agent advertises it with
//! `ECS_VOLUME_PLUGIN_CAPABILITIES`). A drop-in for the Go plugin of the `ecs-init` package:
//! same socket, same protocol answers, same mount commands, same state file.
//!
//! * [`server`]: the plugin protocol over HTTP/1.1 on a unix socket;
//! * [`plugin`]: what each request does (per-volume locking, reference counts, rollback);
//! * [`mounter`]: `mount`/`umount` through the `Exec` seam, bounded by a timeout;
//! * [`state`]: the Go-shaped state file;
//! * [`listen`]: socket activation, or a socket of its own.
pub mod listen;
pub mod mounter;
pub mod plugin;
pub mod server;
pub mod state;

use std::path::PathBuf;

/// Where volumes are mounted, under the (re-rootable) `/var/lib/ecs`.
pub fn volumes_root(paths: &amazon_ecs_init::paths::Paths) -> PathBuf {
    paths.var_lib_ecs.join("volumes")
}

/// The plugin's state file, in the agent's data directory.
pub fn state_file(paths: &amazon_ecs_init::paths::Paths) -> PathBuf {
    paths.data_dir().join(state::FILE_NAME)
}

/// The plugin's log file.
pub fn log_file(paths: &amazon_ecs_init::paths::Paths) -> PathBuf {
    paths.var_log_ecs.join("ecs-volume-plugin.log")
}
