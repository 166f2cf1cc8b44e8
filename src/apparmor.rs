//! The agent's AppArmor profile (UPSTREAM-BEHAVIOUR.md §7). When the host enforces AppArmor the
//! agent container is started with `apparmor:ecs-agent-default`, so pre-start must write that
//! profile to `/etc/apparmor.d/ecs-agent-default` and load it (`apparmor_parser -K -r`), or
//! the runtime refuses to start the container.
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::paths::write_atomic;

/// Where Debian, Ubuntu and Amazon Linux install the parser (`/sbin` is `/usr/sbin` on
/// merged-usr hosts).
pub const PARSER: &str = "/sbin/apparmor_parser";

/// The profile: the agent may use the network (inet, inet6, netlink, unix), its capabilities,
/// files, umount, signals and the system D-Bus; it may not mount, and may not write to the
/// kernel's knobs under /proc and /sys except its own process entries and the cgroup tree
/// it manages for tasks.
pub fn profile(name: &str) -> String {
    format!(
        r#"# Written by amazon-ecs-init; replaced on every pre-start.
#include <tunables/global>

profile {name} flags=(attach_disconnected,mediate_deleted) {{
  #include <abstractions/base>

  network inet,
  network inet6,
  network netlink,
  network unix,
  capability,
  file,
  umount,
  signal,
  dbus (send, receive) bus=system,

  deny mount,
  deny @{{PROC}}/sysrq-trigger rwklx,
  deny @{{PROC}}/kcore rwklx,
  deny @{{PROC}}/kmem rwklx,
  deny @{{PROC}}/mem rwklx,
  deny @{{PROC}}/* w,
  deny @{{PROC}}/sys/kernel/** w,
  deny @{{PROC}}/sys/vm/** w,
  deny @{{PROC}}/sys/fs/** w,
  deny /sys/firmware/** rwklx,
  deny /sys/kernel/security/** rwklx,
  deny /sys/kernel/debug/** rwklx,
  deny /sys/module/** w,
  deny /sys/power/** w,
}}
"#
    )
}

#[derive(Debug, thiserror::Error)]
pub enum AppArmorError {
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("running {parser}: {source}")]
    Spawn {
        parser: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{parser} rejected {}: {stderr}", path.display())]
    Rejected {
        parser: String,
        path: PathBuf,
        stderr: String,
    },
}

/// Write the profile into `dir` and load it with `parser`. `load = false` only compiles it
/// (`-Q`, skip kernel load), which is how it is tested on hosts without AppArmor.
pub fn install(
    dir: &Path,
    name: &str,
    parser: &Path,
    load: bool,
) -> Result<PathBuf, AppArmorError> {
    let path = dir.join(name);
    write_atomic(&path, profile(name).as_bytes()).map_err(|source| AppArmorError::Write {
        path: path.clone(),
        source,
    })?;
    let mut cmd = Command::new(parser);
    // -K: do not write a cache; -r: replace a loaded profile of the same name.
    cmd.args(["-K", "-r"]);
    if !load {
        cmd.arg("-Q");
    }
    let out = cmd
        .arg(&path)
        .output()
        .map_err(|source| AppArmorError::Spawn {
            parser: parser.display().to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(AppArmorError::Rejected {
            parser: parser.display().to_string(),
            path,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    tracing::info!(profile = name, file = %path.display(), loaded = load, "AppArmor profile installed");
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_names_itself_and_denies_mount() {
        let p = profile("ecs-agent-default");
        assert!(p.contains("profile ecs-agent-default flags="));
        assert!(p.contains("deny mount,"));
        assert!(p.contains("network inet6,"));
    }

    #[test]
    fn a_failing_parser_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = install(
            dir.path(),
            "ecs-agent-default",
            Path::new("/bin/false"),
            false,
        )
        .unwrap_err();
        assert!(err.to_string().contains("ecs-agent-default"), "{err}");
        let err = install(
            dir.path(),
            "x",
            Path::new("/nonexistent/apparmor_parser"),
            false,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("running /nonexistent/apparmor_parser"),
            "{err}"
        );
    }
}
