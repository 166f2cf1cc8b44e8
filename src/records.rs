//! The runtime record: which runtime `start` used, for `stop` and `status` (the firewall
//! backend's record is kept by the firewall crate). Both use [`ecs_host::Record`]'s format.
use ecs_host::Record;
use ecs_runtime::Selection;

use crate::paths::Paths;

/// Record the runtime `start` uses.
pub fn record_runtime(paths: &Paths, selection: &Selection) -> std::io::Result<()> {
    ecs_host::files::ensure_dir(&paths.var_lib_ecs, 0o755)?;
    let path = paths.runtime_record();
    let mut record = Record::new(selection.kind.as_str(), &selection.reason);
    // Keep what `start` recorded of its container.
    if let Some(old) = Record::read(&path).ok().flatten() {
        record.extras = old.extras;
    }
    record.write(&path)
}

/// The record key of the container `start` last started (its identity).
const AGENT_CONTAINER: &str = "container";

/// Record the agent container `start` started (kept next to the runtime).
pub fn record_agent_container(paths: &Paths, identity: &str) -> std::io::Result<()> {
    let path = paths.runtime_record();
    let mut record = Record::read(&path)?.unwrap_or_default();
    record
        .extras
        .insert(AGENT_CONTAINER.into(), identity.to_string());
    ecs_host::files::ensure_dir(&paths.var_lib_ecs, 0o755)?;
    record.write(&path)
}

/// The identity of the agent container `start` last started, if recorded.
pub fn agent_container(paths: &Paths) -> Option<String> {
    Record::read(&paths.runtime_record())
        .ok()
        .flatten()?
        .extras
        .remove(AGENT_CONTAINER)
}

/// The recorded runtime, if any (an unreadable or unknown record counts as none, with a
/// warning).
pub fn recorded_runtime(paths: &Paths) -> Option<Selection> {
    let path = paths.runtime_record();
    let record = match Record::read(&path) {
        Ok(r) => r?,
        Err(e) => {
            tracing::warn!(record = %path.display(), error = %e, "ignoring the runtime record");
            return None;
        }
    };
    match record.name.parse() {
        Ok(kind) => Some(Selection {
            kind,
            reason: format!("recorded in {}", path.display()),
        }),
        Err(_) => {
            tracing::warn!(record = %path.display(), name = %record.name, "unknown runtime in the record; ignoring it");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        assert!(recorded_runtime(&paths).is_none());
        record_runtime(
            &paths,
            &Selection {
                kind: ecs_runtime::containerd::KIND,
                reason: "x".into(),
            },
        )
        .unwrap();
        assert_eq!(
            recorded_runtime(&paths).unwrap().kind,
            ecs_runtime::containerd::KIND
        );
        // Records of earlier releases hold only the name.
        std::fs::write(paths.runtime_record(), "docker\n").unwrap();
        assert_eq!(
            recorded_runtime(&paths).unwrap().kind,
            ecs_runtime::docker::KIND
        );
        std::fs::write(paths.runtime_record(), "podman\n").unwrap();
        assert!(recorded_runtime(&paths).is_none());
    }
}
