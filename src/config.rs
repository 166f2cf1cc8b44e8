//! The env files: parsed by [`ecs_formats::envfile`] (the launcher's readers of untrusted input
//! live in one small crate, so that they fuzz quickly); read from the re-rooted paths here.
pub use ecs_formats::envfile::*;

use crate::paths::Paths;

/// Read `/var/lib/ecs/ecs.config` then `/etc/ecs/ecs.config` (which wins) under `paths`: both
/// directories are writable by the agent container, so without blocking, without following a
/// symlink, regular files only, at most [`ecs_host::files::caps::ENV_FILE`] each.
pub fn load(paths: &Paths) -> Config {
    Config::load(&[paths.var_lib_config(), paths.etc_config()], &|p| {
        ecs_host::files::read_capped(p, ecs_host::files::caps::ENV_FILE)
    })
}
