//! One supervisor per host, and host changes one at a time.
//!
//! * `start` holds `ecs-init.start.lock` (under `/var/lib/ecs`) for its whole life: a second
//!   `start` finds it taken and exits at once with "already running (pid N)" and
//!   [`EXIT_ALREADY_RUNNING`], touching nothing (two supervisors would remove each other's
//!   agent forever).
//! * `pre-start`, `post-stop` and `reload-cache` take `ecs-init.host.lock`, waiting for each
//!   other, so their firewall, sysctl and image changes never interleave.
//! * `stop` takes neither: systemd runs it while `start` is alive.
//!
//! The locks are `flock`s, released by the kernel when the process dies, so a `kill -9` never
//! leaves one stuck. The files are opened without following symlinks.
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::paths::Paths;

/// Exit code of a `start` that finds another one supervising the agent.
pub const EXIT_ALREADY_RUNNING: i32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another amazon-ecs-init start is already running (pid {pid}) and supervises the agent; nothing was changed")]
    AlreadyRunning { pid: String },
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

fn open(path: &Path) -> Result<File, LockError> {
    let io_err = |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        ecs_host::files::ensure_dir(dir, 0o755).map_err(io_err)?;
    }
    // Read access too: a refused `start` reads the holder's pid.
    ecs_host::files::open_rw(path, 0o644).map_err(io_err)
}

fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    // SAFETY: flock on a valid, open descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The supervisor lock: taken at once, or [`LockError::AlreadyRunning`] naming the holder.
pub fn supervisor(paths: &Paths) -> Result<Lock, LockError> {
    let path = paths.var_lib_ecs.join("ecs-init.start.lock");
    let mut file = open(&path)?;
    let io_err = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
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

/// The host-changes lock, waiting for whoever holds it.
pub async fn host_changes(paths: &Paths) -> Result<Lock, LockError> {
    let path = paths.var_lib_ecs.join("ecs-init.host.lock");
    let file = open(&path)?;
    if flock(&file, libc::LOCK_EX | libc::LOCK_NB).is_err() {
        tracing::info!(lock = %path.display(), "another pre-start, post-stop or reload-cache is changing the host; waiting for it");
        let file = tokio::task::spawn_blocking(move || flock(&file, libc::LOCK_EX).map(|()| file))
            .await
            .map_err(|e| LockError::Io {
                path: path.clone(),
                source: io::Error::other(e),
            })?
            .map_err(|source| LockError::Io { path, source })?;
        return Ok(Lock { _file: file });
    }
    Ok(Lock { _file: file })
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
}
