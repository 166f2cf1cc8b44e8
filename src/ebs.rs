//! The EBS CSI driver image: the agent advertises EBS task attach only when
//! `/var/lib/ecs/deps/daemons/ebs-csi-driver/ebs-csi-driver.tar` is there (it loads and runs the
//! driver as a managed daemon), so without it ECS places no EBS-backed task on the host. The Go
//! packages ship it; ours carry it when built with `EBS_CSI_DRIVER_TARBALL=…` (packaging/Makefile).
//! `pre-start` and `plan` say so when it is missing.
use serde_json::json;
use std::path::PathBuf;

use crate::paths::Paths;

/// Where the agent looks for the driver image (under `/var/lib/ecs`, re-rooted).
pub const RELATIVE: &str = "deps/daemons/ebs-csi-driver/ebs-csi-driver.tar";

/// The tarball's path on this host.
pub fn tarball(paths: &Paths) -> PathBuf {
    paths.var_lib_ecs.join(RELATIVE)
}

/// Is the tarball there: a non-empty regular file (not followed if a link: the directory is
/// the agent's to write)?
pub fn present(paths: &Paths) -> bool {
    std::fs::symlink_metadata(tarball(paths)).is_ok_and(|m| m.is_file() && m.len() > 0)
}

/// The warning when the tarball is missing (none on ECS Anywhere hosts, where EBS task attach
/// is not supported anyway: `external`).
pub fn warning(paths: &Paths, external: bool) -> Option<String> {
    if external || present(paths) {
        return None;
    }
    Some(format!(
        "no EBS CSI driver image at {}: the agent will not advertise EBS task attach, so ECS will not place EBS-backed tasks on this host (the Go packages ship it; build ours with EBS_CSI_DRIVER_TARBALL=…, or install the file)",
        tarball(paths).display()
    ))
}

/// What `plan` shows.
pub fn plan(paths: &Paths, external: bool) -> serde_json::Value {
    json!({
        "tarball": tarball(paths),
        "present": present(paths),
        "warning": warning(paths, external),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::settings::Settings;
    use std::collections::BTreeMap;

    fn settings(root: &std::path::Path, file: &str) -> Settings {
        let cfg = Config::from_parts(&[(PathBuf::from("/etc/ecs/ecs.config"), file.into())]);
        Settings::resolve(BTreeMap::new(), Paths::under(root), cfg)
    }

    #[test]
    fn missing_empty_linked_and_present() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), "");
        let path = tarball(&s.paths);
        assert_eq!(
            path,
            dir.path()
                .join("var/lib/ecs/deps/daemons/ebs-csi-driver/ebs-csi-driver.tar")
        );
        let w = warning(&s.paths, s.agent.external).expect("missing: a warning");
        assert!(
            w.contains("EBS-backed tasks") && w.contains(&path.display().to_string()),
            "{w}"
        );
        assert_eq!(plan(&s.paths, s.agent.external)["present"], false);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "").unwrap();
        assert!(
            warning(&s.paths, s.agent.external).is_some(),
            "empty is missing"
        );
        std::fs::remove_file(&path).unwrap();
        std::fs::write(dir.path().join("elsewhere.tar"), "image").unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere.tar"), &path).unwrap();
        assert!(
            warning(&s.paths, s.agent.external).is_some(),
            "a link is not followed"
        );
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "image").unwrap();
        assert_eq!(warning(&s.paths, s.agent.external), None);
        assert_eq!(plan(&s.paths, s.agent.external)["present"], true);
        // ECS Anywhere: no EBS task attach, no warning.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            {
                let s = settings(dir.path(), "ECS_EXTERNAL=true\n");
                warning(&s.paths, s.agent.external)
            },
            None
        );
    }
}
