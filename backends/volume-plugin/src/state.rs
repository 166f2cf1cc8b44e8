//! The plugin's state file, `/var/lib/ecs/data/ecs_volume_plugin.json`, in the Go plugin's
//! shape, so that a host upgraded from the Go package keeps its volumes (and a downgrade keeps
//! ours):
//!
//! ```json
//! {
//!     "volumes": {
//!         "<name>": {
//!             "type": "efs",
//!             "path": "/var/lib/ecs/volumes/<name>",
//!             "options": {"device": "fs-12345678:/", "o": "tls,iam", "type": "efs"},
//!             "createdAt": "2026-12-06T01:02:03.123456789Z",
//!             "mounts": {"<mount ID>": 1}
//!         }
//!     }
//! }
//! ```
//!
//! (indented with tabs in the file, as Go's `json.MarshalIndent(…, "", "\t")` writes it).
//! Every member is left out when empty, as Go's `omitempty` does; members this version does
//! not know are kept as they were. `/var/lib/ecs/data` is the agent's data directory (writable
//! by the agent container): the file is read capped and without following a symlink, and
//! replaced atomically (temp file + fsync + rename, mode 0600).
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// The state file's name in the agent's data directory.
pub const FILE_NAME: &str = "ecs_volume_plugin.json";
/// Mode of the state file (it holds the volumes' mount options).
pub const MODE: u32 = 0o600;
/// A state file over this size is not read (about 20 000 volumes at 800 bytes each).
pub const MAX_BYTES: u64 = 16 << 20;

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub volumes: BTreeMap<String, VolumeInfo>,
    /// Members a later version wrote: kept.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// One volume, as the Go plugin records it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// The driver: `efs` (also when empty, as Go reads it) or `s3files`.
    #[serde(
        rename = "type",
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub kind: String,
    /// Where the volume is mounted on the host.
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub path: String,
    /// The options of `docker volume create` (`type`, `device`, `o`, `target`).
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub options: BTreeMap<String, String>,
    /// RFC 3339 with nanoseconds.
    #[serde(
        rename = "createdAt",
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub created_at: String,
    /// How many times each container mount (Docker's mount ID) holds the volume.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub mounts: BTreeMap<String, i64>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// Go writes `null` for a nil map and reads it as empty: so do we.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// What [`load`] found.
#[derive(Debug)]
pub enum Loaded {
    /// No state file: a fresh host.
    Missing,
    Read(StateFile),
    /// The file could not be used; it was renamed to `kept_as` (when that worked) so that the
    /// next save does not overwrite it, and the plugin starts with no volumes.
    Unusable {
        error: String,
        kept_as: Option<PathBuf>,
    },
}

/// Read the state file at `path`.
pub fn load(path: &Path) -> Loaded {
    let text = match read_capped(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Loaded::Missing,
        Err(e) => return set_aside(path, format!("cannot read {}: {e}", path.display())),
    };
    match serde_json::from_slice::<StateFile>(&text) {
        Ok(state) => Loaded::Read(state),
        Err(e) => set_aside(
            path,
            format!("{} is not a valid state file: {e}", path.display()),
        ),
    }
}

fn read_capped(path: &Path) -> io::Result<Vec<u8>> {
    let file = ecs_host::files::open_read(path)?;
    let mut text = Vec::new();
    file.take(MAX_BYTES + 1).read_to_end(&mut text)?;
    if text.len() as u64 > MAX_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {} MiB", MAX_BYTES >> 20),
        ));
    }
    Ok(text)
}

/// Rename the unusable file to `<path>.corrupt-<unix seconds>` (a symlink is renamed, not
/// followed).
fn set_aside(path: &Path, error: String) -> Loaded {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".corrupt-{stamp}"));
    let aside = PathBuf::from(aside);
    let kept_as = std::fs::rename(path, &aside).ok().map(|_| aside);
    Loaded::Unusable { error, kept_as }
}

/// The file's text: Go's `json.MarshalIndent(state, "", "\t")` layout.
pub fn render(state: &StateFile) -> Vec<u8> {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    state
        .serialize(&mut ser)
        .expect("string maps always serialize");
    out
}

/// Replace the state file with `state` atomically (mode 0600); the directory is created
/// (0700) when missing.
pub fn save(path: &Path, state: &StateFile) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        ecs_host::files::ensure_dir(dir, 0o700)?;
    }
    ecs_host::files::write_atomic(path, &render(state), MODE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A state file as the Go plugin writes it (json.MarshalIndent with a tab, omitempty
    /// members left out), with a volume from before mounts were counted, one in use, and a
    /// member a later version added.
    const GO_STATE: &str = "{\n\t\"volumes\": {\n\t\t\"ecs-task-efs-1\": {\n\t\t\t\"type\": \"efs\",\n\t\t\t\"path\": \"/var/lib/ecs/volumes/ecs-task-efs-1\",\n\t\t\t\"options\": {\n\t\t\t\t\"device\": \"fs-12345678:/\",\n\t\t\t\t\"o\": \"tls,iam,accesspoint=fsap-0123456789abcdef0\",\n\t\t\t\t\"type\": \"efs\"\n\t\t\t},\n\t\t\t\"createdAt\": \"2024-05-01T10:11:12.123456789Z\",\n\t\t\t\"mounts\": {\n\t\t\t\t\"3f1c\": 2\n\t\t\t}\n\t\t},\n\t\t\"old\": {\n\t\t\t\"path\": \"/var/lib/ecs/volumes/old\",\n\t\t\t\"options\": {\n\t\t\t\t\"device\": \"fs-1:/\"\n\t\t\t},\n\t\t\t\"createdAt\": \"2020-01-01T00:00:00Z\",\n\t\t\t\"future\": \"kept\"\n\t\t}\n\t},\n\t\"version\": 7\n}";

    #[test]
    fn go_state_round_trips_byte_for_byte() {
        let state: StateFile = serde_json::from_str(GO_STATE).unwrap();
        let v = &state.volumes["ecs-task-efs-1"];
        assert_eq!(v.kind, "efs");
        assert_eq!(v.mounts["3f1c"], 2);
        assert_eq!(v.options["o"], "tls,iam,accesspoint=fsap-0123456789abcdef0");
        let old = &state.volumes["old"];
        assert_eq!((old.kind.as_str(), old.mounts.len()), ("", 0));
        assert_eq!(old.other["future"], "kept");
        assert_eq!(state.other["version"], 7);
        assert_eq!(String::from_utf8(render(&state)).unwrap(), GO_STATE);
    }

    #[test]
    fn nulls_read_as_go_reads_them_and_empty_is_empty() {
        let state: StateFile = serde_json::from_str(
            r#"{"volumes":{"a":{"type":null,"options":null,"mounts":null,"path":"/x"}}}"#,
        )
        .unwrap();
        assert_eq!(state.volumes["a"].path, "/x");
        let state: StateFile = serde_json::from_str(r#"{"volumes":null}"#).unwrap();
        assert!(state.volumes.is_empty());
        assert_eq!(render(&StateFile::default()), b"{}");
    }

    #[test]
    fn saved_atomically_with_mode_0600_and_loaded_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data").join(FILE_NAME);
        assert!(matches!(load(&path), Loaded::Missing));
        let state: StateFile = serde_json::from_str(GO_STATE).unwrap();
        save(&path, &state).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        match load(&path) {
            Loaded::Read(back) => assert_eq!(back, state),
            other => panic!("{other:?}"),
        }
        // No temp file left behind.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[test]
    fn unusable_files_are_set_aside_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, "{\"volumes\": {\"a\": ").unwrap();
        let Loaded::Unusable { error, kept_as } = load(&path) else {
            panic!("a truncated file is unusable")
        };
        assert!(error.contains("is not a valid state file"), "{error}");
        let kept = kept_as.unwrap();
        assert!(kept.to_string_lossy().contains(".corrupt-"));
        assert_eq!(std::fs::read(&kept).unwrap(), b"{\"volumes\": {\"a\": ");
        assert!(!path.exists());
        // A symlink planted in its place is not followed.
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "{}").unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let Loaded::Unusable { error, .. } = load(&path) else {
            panic!("a symlink is refused")
        };
        assert!(error.contains("symbolic link"), "{error}");
        assert_eq!(std::fs::read(&target).unwrap(), b"{}");
        // Too large: not read at all.
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(MAX_BYTES + 1).unwrap();
        let Loaded::Unusable { error, .. } = load(&path) else {
            panic!("too large")
        };
        assert!(error.contains("larger than 16 MiB"), "{error}");
    }
}
