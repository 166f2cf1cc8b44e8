//! The agent's AppArmor profile (packaging/COMPATIBILITY.md §7). When the host enforces
//! AppArmor the agent container is started with `apparmor:ecs-agent-default`, so pre-start must
//! write that profile to `/etc/apparmor.d/ecs-agent-default` and load it
//! (`apparmor_parser -K -r`), or the runtime refuses to start the container.
use ecs_host::Exec;
use std::path::{Path, PathBuf};

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
    exec: &dyn Exec,
    dir: &Path,
    name: &str,
    parser: &Path,
    load: bool,
) -> Result<PathBuf, AppArmorError> {
    let path = dir.join(name);
    let write = || {
        ecs_host::files::ensure_dir(dir, 0o755)?;
        ecs_host::files::write_atomic(&path, profile(name).as_bytes(), 0o644)
    };
    write().map_err(|source| AppArmorError::Write {
        path: path.clone(),
        source,
    })?;
    // -K: do not write a cache; -r: replace a loaded profile of the same name.
    let mut args: Vec<String> = vec!["-K".into(), "-r".into()];
    if !load {
        args.push("-Q".into());
    }
    args.push(path.display().to_string());
    let parser_name = parser.display().to_string();
    let out = exec
        .run_blocking(&parser_name, &args)
        .map_err(|source| AppArmorError::Spawn {
            parser: parser_name.clone(),
            source,
        })?;
    if !out.success {
        return Err(AppArmorError::Rejected {
            parser: parser_name,
            path,
            stderr: out.stderr,
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
        let exec = ecs_host::SystemExec::new(None);
        let err = install(
            &exec,
            dir.path(),
            "ecs-agent-default",
            Path::new("/bin/false"),
            false,
        )
        .unwrap_err();
        assert!(err.to_string().contains("ecs-agent-default"), "{err}");
        let err = install(
            &exec,
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

    #[test]
    fn loads_with_replace_and_no_cache_and_reports_the_parsers_complaint() {
        use ecs_host::exec::FakeExec;
        use ecs_host::Output;
        let dir = tempfile::tempdir().unwrap();
        let exec = FakeExec::new(&["apparmor_parser"], |_, args| {
            Ok(if args.iter().any(|a| a.ends_with("/bad")) {
                Output::failed(1, "AppArmor parser error at line 3: syntax error")
            } else {
                Output::ok("")
            })
        });
        let parser = Path::new("/sbin/apparmor_parser");
        let path = install(&exec, dir.path(), "ecs-agent-default", parser, true).unwrap();
        assert_eq!(
            exec.calls(),
            [format!("/sbin/apparmor_parser -K -r {}", path.display())]
        );
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            profile("ecs-agent-default")
        );
        let err = install(&exec, dir.path(), "bad", parser, false).unwrap_err();
        assert!(err.to_string().contains("syntax error"), "{err}");
        assert!(exec.calls()[1].contains(" -Q "), "{:?}", exec.calls());
    }
}
