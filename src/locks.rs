//! One supervisor per host, and host changes one at a time.
//!
//! * `start` holds `ecs-init.start.lock` (under `/var/lib/ecs`) for its whole life: a second
//!   `start` finds it taken and exits at once with "already running (pid N)" and
//!   [`EXIT_ALREADY_RUNNING`], touching nothing (two supervisors would remove each other's
//!   agent forever).
//! * `pre-start`, `post-stop` and `reload-cache` take `ecs-init.host.lock`, waiting for each
//!   other (at most [`HOST_LOCK_WAIT`]), so their firewall, sysctl and image changes never
//!   interleave. It lives in the root-only `/var/lib/ecs-init`, outside the agent-writable
//!   `/var/lib/ecs` (where releases before issue 20 kept it), so that the agent can neither
//!   hold it to stall `post-stop` nor plant something in its place; when that directory cannot
//!   be used (a read-only `/var/lib` after errors=remount-ro) the lock is taken under
//!   `/run/ecs-init` instead, with a warning, so `post-stop` still cleans up.
//! * `stop` takes neither: systemd runs it while `start` is alive.
//!
//! The locks are `flock`s, released by the kernel when the process dies, so a `kill -9` never
//! leaves one stuck. The files are opened without following symlinks.
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::paths::Paths;

/// Exit code of a `start` that finds another one supervising the agent.
pub const EXIT_ALREADY_RUNNING: i32 = 4;

/// The longest `pre-start`, `post-stop` or `reload-cache` waits for another one to finish.
pub const HOST_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another amazon-ecs-init start is already running (pid {pid}) and supervises the agent; nothing was changed")]
    AlreadyRunning { pid: String },
    #[error("{}: still held by another amazon-ecs-init after {}s; giving up", path.display(), waited.as_secs())]
    Busy {
        path: PathBuf,
        waited: std::time::Duration,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

fn open(path: &Path, dir_mode: u32) -> Result<File, LockError> {
    let io_err = |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        ecs_host::files::ensure_dir(dir, dir_mode).map_err(io_err)?;
    }
    // Read access too: a refused `start` reads the holder's pid.
    ecs_host::files::open_rw(path, 0o644).map_err(io_err)
}

/// The supervisor lock: taken at once, or [`LockError::AlreadyRunning`] naming the holder.
pub fn supervisor(paths: &Paths) -> Result<Lock, LockError> {
    let path = paths.var_lib_ecs.join("ecs-init.start.lock");
    let mut file = open(&path, 0o755)?;
    let io_err = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    match ecs_host::files::try_lock(&file) {
        Ok(true) => {}
        Ok(false) => {
            // The file is agent-writable: read a pid's worth of it, no more.
            let mut pid = String::new();
            let _ = (&mut file)
                .take(ecs_host::files::caps::LOCK_PID)
                .read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(LockError::AlreadyRunning {
                pid: if pid.is_empty() {
                    "unknown".into()
                } else {
                    pid.to_string()
                },
            });
        }
        Err(e) => return Err(io_err(e)),
    }
    file.set_len(0).map_err(io_err)?;
    file.rewind().map_err(io_err)?;
    writeln!(file, "{}", std::process::id()).map_err(io_err)?;
    Ok(Lock { _file: file })
}

/// The host-changes lock (`/run/ecs-init/ecs-init.host.lock`), waiting for whoever holds it
/// at most [`HOST_LOCK_WAIT`].
pub async fn host_changes(paths: &Paths) -> Result<Lock, LockError> {
    host_changes_within(paths, HOST_LOCK_WAIT).await
}

async fn host_changes_within(paths: &Paths, wait: std::time::Duration) -> Result<Lock, LockError> {
    let (path, file) = {
        let primary = paths.var_lib_ecs_init.join("ecs-init.host.lock");
        match open(&primary, 0o700) {
            Ok(file) => (primary, file),
            Err(e) => {
                let fallback = paths.run_ecs_init.join("ecs-init.host.lock");
                tracing::warn!(error = %e, fallback = %fallback.display(), "cannot use the host lock; taking it under /run instead");
                let file = open(&fallback, 0o700)?;
                (fallback, file)
            }
        }
    };
    let io_err = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    if ecs_host::files::try_lock(&file).map_err(io_err)? {
        return Ok(Lock { _file: file });
    }
    tracing::info!(lock = %path.display(), "another pre-start, post-stop or reload-cache is changing the host; waiting for it");
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        if ecs_host::files::try_lock(&file).map_err(io_err)? {
            return Ok(Lock { _file: file });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(LockError::Busy { path, waited: wait });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_supervisor_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        let held = supervisor(&paths).unwrap();
        let err = supervisor(&paths).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "another amazon-ecs-init start is already running (pid {}) and supervises the agent; nothing was changed",
                std::process::id()
            )
        );
        drop(held);
        let _again = supervisor(&paths).unwrap();
    }

    #[tokio::test]
    async fn host_changes_wait_for_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        let first = host_changes(&paths).await.unwrap();
        let p = paths.clone();
        let waiter = tokio::spawn(async move { host_changes(&p).await.map(|_| ()) });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(
            !waiter.is_finished(),
            "the second took the lock while the first held it"
        );
        drop(first);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the second gets the lock once the first is gone")
            .unwrap()
            .unwrap();
    }

    #[test]
    fn a_planted_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        std::fs::create_dir_all(&paths.var_lib_ecs).unwrap();
        std::os::unix::fs::symlink(
            "/etc/hostname",
            paths.var_lib_ecs.join("ecs-init.start.lock"),
        )
        .unwrap();
        let err = supervisor(&paths).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }

    /// Issue 20 (1, 8): the host lock is outside the agent-writable `/var/lib/ecs` (so a
    /// read-only `/var/lib/ecs` does not stop post-stop, and the agent cannot hold it), falls
    /// back to `/run` when `/var/lib/ecs-init` cannot be used, and a holder that never lets go
    /// is given up on after the wait.
    #[tokio::test]
    async fn the_host_lock_is_out_of_the_agents_reach_and_not_waited_for_forever() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        // An unusable /var/lib/ecs (a file where the directory should be).
        std::fs::create_dir_all(dir.path().join("var/lib")).unwrap();
        std::fs::write(&paths.var_lib_ecs, "").unwrap();
        drop(host_changes(&paths).await.unwrap());
        assert!(paths.var_lib_ecs_init.join("ecs-init.host.lock").exists());
        assert_eq!(
            std::fs::metadata(&paths.var_lib_ecs_init)
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o700
        );
        // An unusable /var/lib/ecs-init: /run/ecs-init.
        std::fs::remove_dir_all(&paths.var_lib_ecs_init).unwrap();
        std::fs::write(&paths.var_lib_ecs_init, "").unwrap();
        let held = host_changes(&paths).await.unwrap();
        assert!(paths.run_ecs_init.join("ecs-init.host.lock").exists());
        let t0 = std::time::Instant::now();
        let err = host_changes_within(&paths, std::time::Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(t0.elapsed() < std::time::Duration::from_secs(2));
        assert!(
            err.to_string()
                .contains("still held by another amazon-ecs-init"),
            "{err}"
        );
        drop(held);
    }

    /// Issue 20 (2): a refused `start` reads no more than a pid's worth of the lock file.
    #[test]
    fn a_huge_lock_file_is_not_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        let held = supervisor(&paths).unwrap();
        let p = paths.var_lib_ecs.join("ecs-init.start.lock");
        std::fs::write(&p, "9".repeat(100_000)).unwrap();
        let err = supervisor(&paths).unwrap_err().to_string();
        assert!(
            err.contains(&format!("(pid {})", "9".repeat(64))),
            "{}",
            &err[..200]
        );
        drop(held);
    }
}
