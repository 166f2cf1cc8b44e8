//! The volume driver's decisions: what `Create`, `Mount`, `Unmount`, `Remove`, `Path`, `Get`
//! and `List` do to the host and to the state file.
//!
//! As the Go plugin: `Create` mounts at once (`mount -t <type> -o <o> <device>
//! /var/lib/ecs/volumes/<name>`, directory 0700) and records the volume; `Mount`/`Unmount`
//! count each container mount by Docker's mount ID; `Remove` unmounts lazily and removes the
//! directory. Unlike the Go plugin, `Remove` refuses a volume a container still has mounted,
//! `Mount` mounts again a volume whose mount is gone (after a host reboot) instead of handing
//! Docker an empty directory, and a state file that cannot be saved fails the request (the
//! change is rolled back) instead of being a log line.
//!
//! Concurrency: Docker calls in parallel. Requests for one volume are serialised by that
//! volume's own lock, held across the slow part (the mount helper); the table of volumes is
//! behind a short lock that is never held across a wait, so a hung mount of one volume blocks
//! neither other volumes nor `List`, `Get` and `Path`.
use crate::mounter::{shown_options, Mounter, Unmounted};
use crate::state::{self, StateFile, VolumeInfo};
use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// The volume types this plugin mounts; an absent type is `efs`, as in the Go plugin.
pub const DRIVERS: &[&str] = &["efs", "s3files"];
/// Mode of each volume's mount point directory.
pub const DIR_MODE: u32 = 0o700;
/// Longest volume name (a file name).
pub const MAX_NAME: usize = 255;

/// Where the plugin keeps things.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `/var/lib/ecs/volumes`: one mount point per volume.
    pub volumes_root: PathBuf,
    /// `/var/lib/ecs/data/ecs_volume_plugin.json`.
    pub state_file: PathBuf,
}

/// An answer to Docker: the words of `{"Err": …}`.
pub type Answer<T> = Result<T, String>;

/// One volume as `Get` and `List` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    pub name: String,
    pub mountpoint: String,
    pub created_at: String,
}

pub struct Plugin {
    layout: Layout,
    mounter: Mounter,
    /// The volumes, exactly as saved in the state file.
    state: Mutex<StateFile>,
    /// One lock per volume name that a request is working on.
    locks: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

/// Holds a volume's lock; forgets the lock when nobody else wants it.
struct NameLock<'a> {
    plugin: &'a Plugin,
    name: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for NameLock<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = self.plugin.locks.lock().expect("lock table");
        if locks
            .get(&self.name)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            locks.remove(&self.name);
        }
    }
}

/// A volume name Docker may send: a plain file name.
pub fn check_name(name: &str) -> Answer<()> {
    let why = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_NAME {
        "it is longer than 255 bytes"
    } else if name == "." || name == ".." {
        "it is a relative directory"
    } else if name.contains('/') {
        "it contains '/'"
    } else if name.contains('\0') {
        "it contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(format!(
        "invalid volume name {:?}: {why}",
        name.chars().take(300).collect::<String>()
    ))
}

fn driver_of(kind: &str) -> Answer<&'static str> {
    if kind.is_empty() {
        return Ok("efs");
    }
    DRIVERS
        .iter()
        .find(|d| **d == kind)
        .copied()
        .ok_or_else(|| {
            format!(
                "volume type {kind:?} is not supported (this plugin mounts {})",
                DRIVERS.join(" and ")
            )
        })
}

fn not_found(name: &str) -> String {
    format!("volume {name} not found")
}

impl Plugin {
    /// A plugin with `state` (from [`Plugin::load`] or empty).
    pub fn new(layout: Layout, mounter: Mounter, state: StateFile) -> Plugin {
        Plugin {
            layout,
            mounter,
            state: Mutex::new(state),
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// Load the state file: its volumes are served again as they were (nothing is mounted or
    /// unmounted by a start). A file that cannot be used is an error in the log, set aside, and
    /// the plugin starts with no volumes.
    pub fn load(layout: Layout, mounter: Mounter) -> Plugin {
        let state = match state::load(&layout.state_file) {
            state::Loaded::Missing => {
                tracing::info!(file = %layout.state_file.display(), "no state file: no volumes yet");
                StateFile::default()
            }
            state::Loaded::Read(state) => {
                for (name, v) in &state.volumes {
                    if let Err(e) = driver_of(&v.kind) {
                        tracing::warn!(volume = %name, "{e}; its requests will fail");
                    }
                }
                tracing::info!(
                    file = %layout.state_file.display(),
                    volumes = state.volumes.len(),
                    "loaded the state file"
                );
                state
            }
            state::Loaded::Unusable { error, kept_as } => {
                tracing::error!(
                    kept_as = %kept_as.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "(could not be renamed)".into()),
                    "{error}; starting with no volumes (volumes mounted before are left mounted; the unusable file is kept)"
                );
                StateFile::default()
            }
        };
        Plugin::new(layout, mounter, state)
    }

    async fn lock(&self, name: &str) -> NameLock<'_> {
        let lock = self
            .locks
            .lock()
            .expect("lock table")
            .entry(name.to_string())
            .or_default()
            .clone();
        NameLock {
            plugin: self,
            name: name.to_string(),
            guard: Some(lock.lock_owned().await),
        }
    }

    fn volume(&self, name: &str) -> Option<VolumeInfo> {
        self.state.lock().expect("state").volumes.get(name).cloned()
    }

    /// Apply `change` to the volumes and save the file; on a failed save the change is undone
    /// and the error names the file.
    fn commit(&self, change: impl FnOnce(&mut BTreeMap<String, VolumeInfo>)) -> Answer<()> {
        let mut state = self.state.lock().expect("state");
        let before = state.volumes.clone();
        change(&mut state.volumes);
        state::save(&self.layout.state_file, &state).map_err(|e| {
            state.volumes = before;
            tracing::error!(file = %self.layout.state_file.display(), error = %e, "cannot save the state file");
            format!(
                "cannot save the plugin's state file {}: {e}",
                self.layout.state_file.display()
            )
        })
    }

    /// `VolumeDriver.Create`: check, make the mount point, mount, record.
    pub async fn create(&self, name: &str, options: BTreeMap<String, String>) -> Answer<()> {
        check_name(name)?;
        let _lock = self.lock(name).await;
        tracing::info!(volume = %name, options = %shown_options(&options), "creating volume");
        if self.volume(name).is_some() {
            return Err(format!("volume {name} already exists"));
        }
        let kind = options.get("type").cloned().unwrap_or_default();
        driver_of(&kind)?;
        let device = options
            .get("device")
            .filter(|d| !d.is_empty())
            .ok_or_else(|| {
                format!("volume {name}: the option \"device\" (the file system to mount, e.g. fs-12345678:/) is missing")
            })?
            .clone();
        let (target, made) = match options.get("target").filter(|t| !t.is_empty()) {
            Some(t) => (checked_target(t)?, false),
            None => (self.make_mount_point(name)?, true),
        };
        let o = options.get("o").cloned().unwrap_or_default();
        if self.mounter.is_mounted(&target) {
            return Err(format!(
                "volume {name}: {} is already a mount point; refusing to mount over it",
                target.display()
            ));
        }
        if let Err(e) = self.mounter.mount(&kind, &o, &device, &target).await {
            if made {
                remove_mount_point(&target);
            }
            tracing::error!(volume = %name, "{e}");
            return Err(format!("cannot mount volume {name}: {e}"));
        }
        let info = VolumeInfo {
            kind,
            path: target.display().to_string(),
            options,
            created_at: amazon_ecs_init::time::rfc3339_nanos(std::time::SystemTime::now()),
            ..VolumeInfo::default()
        };
        if let Err(e) = self.commit(|v| {
            v.insert(name.to_string(), info);
        }) {
            // Nothing recorded: leave nothing mounted either.
            if let Err(u) = self.mounter.unmount(&target).await {
                tracing::error!(volume = %name, "{u}");
            }
            if made {
                remove_mount_point(&target);
            }
            return Err(e);
        }
        tracing::info!(volume = %name, path = %target.display(), "volume created and mounted");
        Ok(())
    }

    fn make_mount_point(&self, name: &str) -> Answer<PathBuf> {
        let target = self.layout.volumes_root.join(name);
        ecs_host::files::ensure_dir(&self.layout.volumes_root, DIR_MODE)
            .and_then(|_| ecs_host::files::ensure_dir(&target, DIR_MODE))
            .map_err(|e| format!("cannot create mount point {}: {e}", target.display()))?;
        Ok(target)
    }

    /// `VolumeDriver.Mount`: one more use by container mount `id`; the mount point.
    pub async fn mount(&self, name: &str, id: &str) -> Answer<String> {
        check_name(name)?;
        if id.is_empty() {
            return Err("no mount ID in the request".into());
        }
        let _lock = self.lock(name).await;
        let vol = self.volume(name).ok_or_else(|| not_found(name))?;
        let path = PathBuf::from(&vol.path);
        if !self.mounter.is_mounted(&path) {
            // The host restarted (or someone unmounted it): mount it again rather than hand
            // Docker the empty directory underneath.
            tracing::warn!(volume = %name, path = %path.display(), "the volume is not mounted; mounting it again");
            driver_of(&vol.kind)?;
            let get = |k: &str| vol.options.get(k).cloned().unwrap_or_default();
            if vol.options.get("target").is_none_or(|t| t.is_empty()) {
                self.make_mount_point(name)?;
            }
            self.mounter
                .mount(&vol.kind, &get("o"), &get("device"), &path)
                .await
                .map_err(|e| format!("cannot mount volume {name}: {e}"))?;
        }
        self.commit(|v| {
            if let Some(v) = v.get_mut(name) {
                *v.mounts.entry(id.to_string()).or_insert(0) += 1;
            }
        })?;
        tracing::info!(volume = %name, mount_id = %id, "mounted for a container");
        Ok(vol.path)
    }

    /// `VolumeDriver.Unmount`: one use fewer (the volume stays mounted until `Remove`).
    pub async fn unmount(&self, name: &str, id: &str) -> Answer<()> {
        check_name(name)?;
        if id.is_empty() {
            return Err("no mount ID in the request".into());
        }
        let _lock = self.lock(name).await;
        let vol = self.volume(name).ok_or_else(|| not_found(name))?;
        if !vol.mounts.contains_key(id) {
            tracing::warn!(volume = %name, mount_id = %id, "unmount of a mount the volume does not have: nothing to do");
            return Ok(());
        }
        self.commit(|v| {
            if let Some(v) = v.get_mut(name) {
                let left = v.mounts.get(id).copied().unwrap_or(0) - 1;
                if left <= 0 {
                    v.mounts.remove(id);
                } else {
                    v.mounts.insert(id.to_string(), left);
                }
            }
        })?;
        tracing::info!(volume = %name, mount_id = %id, "unmounted by a container");
        Ok(())
    }

    /// `VolumeDriver.Remove`: refuse while a container has it mounted; else unmount lazily
    /// ("not mounted" is done), remove the mount point, forget the volume.
    pub async fn remove(&self, name: &str) -> Answer<()> {
        check_name(name)?;
        let _lock = self.lock(name).await;
        let vol = self.volume(name).ok_or_else(|| not_found(name))?;
        let users: Vec<&str> = vol
            .mounts
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(id, _)| id.as_str())
            .collect();
        if !users.is_empty() {
            return Err(format!(
                "volume {name} is in use by {} container mount(s) ({}); stop those containers first",
                users.len(),
                users.join(", ")
            ));
        }
        let path = PathBuf::from(&vol.path);
        if self.mounter.is_mounted(&path) {
            match self.mounter.unmount(&path).await {
                Ok(Unmounted::Done) => {}
                Ok(Unmounted::WasNotMounted) => {
                    tracing::info!(volume = %name, "was not mounted")
                }
                Err(e) => {
                    tracing::error!(volume = %name, "{e}");
                    return Err(format!("cannot unmount volume {name}: {e}"));
                }
            }
        }
        if vol.options.get("target").is_none_or(|t| t.is_empty()) {
            remove_mount_point(&path);
        }
        self.commit(|v| {
            v.remove(name);
        })?;
        tracing::info!(volume = %name, "volume removed");
        Ok(())
    }

    /// `VolumeDriver.Path`.
    pub fn path(&self, name: &str) -> Answer<String> {
        check_name(name)?;
        self.volume(name)
            .map(|v| v.path)
            .ok_or_else(|| not_found(name))
    }

    /// `VolumeDriver.Get`.
    pub fn get(&self, name: &str) -> Answer<Shown> {
        check_name(name)?;
        self.volume(name)
            .map(|v| Shown {
                name: name.to_string(),
                mountpoint: v.path,
                created_at: v.created_at,
            })
            .ok_or_else(|| not_found(name))
    }

    /// `VolumeDriver.List`, by name.
    pub fn list(&self) -> Vec<Shown> {
        self.state
            .lock()
            .expect("state")
            .volumes
            .iter()
            .map(|(name, v)| Shown {
                name: name.clone(),
                mountpoint: v.path.clone(),
                created_at: v.created_at.clone(),
            })
            .collect()
    }
}

/// A `target` option: an absolute, normalised path (the Go plugin takes it as given; a
/// relative one, or one with `..`, would land where nobody meant).
fn checked_target(target: &str) -> Answer<PathBuf> {
    let path = Path::new(target);
    let plain = path.is_absolute()
        && !target.contains('\0')
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if plain {
        Ok(path.to_path_buf())
    } else {
        Err(format!(
            "invalid option target {target:?}: it must be an absolute path without '..'"
        ))
    }
}

/// Remove an (empty) mount point; a failure is a warning (the volume is gone either way).
fn remove_mount_point(path: &Path) {
    if let Err(e) = std::fs::remove_dir(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "could not remove the mount point");
        }
    }
}

#[cfg(test)]
mod tests;
