//! Every host path ecs-init uses, derived from one place.
//!
//! `ECS_INIT_HOST_ROOT` (default `/`) re-roots the four ecs directories so that tests and demos
//! can run side by side without touching the real ones. Host system paths that are only *read*
//! or bind-mounted read-only (`/proc`, `/lib`, certificates, ...) are not re-rooted.
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The re-rooting prefix (`/` on a real host).
    pub root: PathBuf,
    /// `/etc/ecs`
    pub etc_ecs: PathBuf,
    /// `/var/lib/ecs`
    pub var_lib_ecs: PathBuf,
    /// `/var/cache/ecs`
    pub var_cache_ecs: PathBuf,
    /// `/var/log/ecs`
    pub var_log_ecs: PathBuf,
    /// `/var/lib/ecs-init`: root-only (0700) and not among the agent container's binds (unlike
    /// the four ecs directories); what the launcher must be able to trust lives here (the host
    /// lock, the `route_localnet` value to restore, the rollback's agent-image record).
    pub var_lib_ecs_init: PathBuf,
    /// `/run/ecs-init` (0700): where the host lock goes when `/var/lib` is read-only.
    pub run_ecs_init: PathBuf,
}

impl Paths {
    /// Paths under `root` (`/` for the real host).
    pub fn under(root: impl Into<PathBuf>) -> Paths {
        let root = root.into();
        let join = |p: &str| root.join(p);
        Paths {
            etc_ecs: join("etc/ecs"),
            var_lib_ecs: join("var/lib/ecs"),
            var_cache_ecs: join("var/cache/ecs"),
            var_log_ecs: join("var/log/ecs"),
            var_lib_ecs_init: join("var/lib/ecs-init"),
            run_ecs_init: join("run/ecs-init"),
            root,
        }
    }

    /// `/etc/ecs/ecs.config`: the operator's config (wins over the one below).
    pub fn etc_config(&self) -> PathBuf {
        self.etc_ecs.join("ecs.config")
    }
    /// `/var/lib/ecs/ecs.config`: config written by tooling (e.g. user data).
    pub fn var_lib_config(&self) -> PathBuf {
        self.var_lib_ecs.join("ecs.config")
    }
    /// `/var/lib/ecs/data`: the agent's data dir.
    pub fn data_dir(&self) -> PathBuf {
        self.var_lib_ecs.join("data")
    }
    /// `/var/cache/ecs/ecs-agent.tar`
    pub fn agent_tarball(&self) -> PathBuf {
        self.var_cache_ecs.join("ecs-agent.tar")
    }
    /// `/var/cache/ecs/state`
    pub fn cache_state(&self) -> PathBuf {
        self.var_cache_ecs.join("state")
    }
    /// `/var/cache/ecs/desired-image`
    pub fn desired_image(&self) -> PathBuf {
        self.var_cache_ecs.join("desired-image")
    }
    /// `/var/log/ecs/ecs-init.log`
    pub fn init_log(&self) -> PathBuf {
        self.var_log_ecs.join("ecs-init.log")
    }
    /// Where the chosen runtime backend is recorded for `stop`/`post-stop`.
    pub fn runtime_record(&self) -> PathBuf {
        self.var_lib_ecs.join("runtime-backend")
    }
    /// The agent-image record of the automatic rollback (known good, probation, refused).
    pub fn agent_images_record(&self) -> PathBuf {
        self.var_lib_ecs_init.join("agent-images")
    }
    /// `/var/run/ecs.sock`, the agent's custom health-check socket.
    pub fn healthcheck_socket(&self) -> PathBuf {
        self.rooted(Path::new(crate::healthcheck::SOCKET))
    }
    /// A path under the re-rooting prefix.
    pub fn rooted(&self, absolute: &Path) -> PathBuf {
        self.root
            .join(absolute.strip_prefix("/").unwrap_or(absolute))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rerooted() {
        let p = Paths::under("/tmp/x");
        assert_eq!(p.etc_config(), PathBuf::from("/tmp/x/etc/ecs/ecs.config"));
        assert_eq!(
            p.agent_tarball(),
            PathBuf::from("/tmp/x/var/cache/ecs/ecs-agent.tar")
        );
        assert_eq!(
            p.rooted(Path::new("/var/lib/ecs/gpu")),
            PathBuf::from("/tmp/x/var/lib/ecs/gpu")
        );
        assert_eq!(
            p.agent_images_record(),
            PathBuf::from("/tmp/x/var/lib/ecs-init/agent-images")
        );
        let real = Paths::under("/");
        assert_eq!(real.init_log(), PathBuf::from("/var/log/ecs/ecs-init.log"));
    }
}
