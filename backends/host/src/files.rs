//! Files in directories the agent container can write.
//!
//! `/var/lib/ecs`, `/var/log/ecs` and `/var/cache/ecs` are bind-mounted read-write into the
//! agent, so anything in them may have been replaced by a symlink or a hard link to a host file
//! by the time the root launcher writes there. Everything here therefore:
//! * opens the final path component with `O_NOFOLLOW` (a symlink is refused with `ELOOP`, named
//!   in the error) and refuses regular files with more than one link;
//! * creates files relative to an open directory handle, under a fresh temporary name with
//!   `O_EXCL`, and renames them into place (a rename replaces a planted symlink, it never
//!   follows it);
//! * sets modes explicitly, whatever the process umask;
//! * opens without blocking (`O_NONBLOCK`: a FIFO planted in place of a file answers at once
//!   instead of waiting for a writer forever), reads only regular files, and reads at most a
//!   cap fitting the file's purpose ([`caps`], every cap in one place);
//! * never waits for a lock without a deadline ([`lock_within`]).
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

/// The most the launcher reads of each kind of file in an agent-writable directory. A larger
/// file is refused with an error naming it (its size is taken from its metadata, so a sparse
/// 3 GB file costs nothing to refuse).
pub mod caps {
    /// `/etc/ecs/ecs.config`, `/var/lib/ecs/ecs.config`: the agent's environment holds at most
    /// 1 MiB of variables (`ecs_formats::envfile::MAX_ENV_TOTAL`); twice that leaves room for
    /// blank lines and long comments.
    pub const ENV_FILE: u64 = 2 * 1024 * 1024;
    /// `/var/cache/ecs/desired-image`: one file name.
    pub const DESIRED_IMAGE: u64 = 4096;
    /// `/var/cache/ecs/state`: one digit.
    pub const CACHE_STATE: u64 = 4096;
    /// The launcher's records (`runtime-backend`, `firewall-backend`, `/run/ecs-init/…`): a
    /// name, a reason and a few `key=value` lines.
    pub const RECORD: u64 = 64 * 1024;
    /// The pid in a lock file.
    pub const LOCK_PID: u64 = 64;
    /// How much of the end of the agent's log file is read for the exit-2 excerpt.
    pub const LOG_TAIL_READ: u64 = 1024 * 1024;
    /// The exit-2 log excerpt itself, in bytes (with [`LOG_TAIL_LINES`]; a note says when it
    /// was cut).
    pub const LOG_EXCERPT: usize = 64 * 1024;
    /// The exit-2 log excerpt, in lines (the Go tool's 200).
    pub const LOG_TAIL_LINES: usize = 200;
}

fn c_name(name: &std::ffi::OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in file name"))
}

fn split(path: &Path) -> io::Result<(&Path, &std::ffi::OsStr)> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: no file name", path.display()),
        )
    })?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok((dir, name))
}

/// Say which path is a symlink when the kernel answers `ELOOP`.
fn explain(path: &Path, err: io::Error) -> io::Error {
    if err.raw_os_error() == Some(libc::ELOOP) {
        io::Error::new(
            err.kind(),
            format!(
                "{} is a symbolic link; refusing to follow it",
                path.display()
            ),
        )
    } else {
        err
    }
}

/// The directory `dir` itself (not a symlink to one).
fn open_dir(dir: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| explain(dir, e))
}

/// Make sure `dir` exists as a real directory (parents too) with `mode` on the last component
/// when it is created; an existing symlink in its place is an error.
pub fn ensure_dir(dir: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_dir() => return Ok(()),
        Ok(m) if m.file_type().is_symlink() => {
            return Err(explain(dir, io::Error::from_raw_os_error(libc::ELOOP)))
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a directory", dir.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => ensure_dir(dir, mode),
        Err(e) => Err(e),
    }
}

/// A regular file with one link, or an error naming the path.
fn check_plain(path: &Path, file: &File) -> io::Result<()> {
    let m = file.metadata()?;
    if !m.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    if m.nlink() > 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} has {} hard links; refusing to use it",
                path.display(),
                m.nlink()
            ),
        ));
    }
    Ok(())
}

/// Open `path` for appending, creating it with `mode` (exactly, whatever the umask). A
/// symlink, a FIFO or device (never waited for) or a multiply linked file at `path` is refused.
pub fn open_append(path: &Path, mode: u32) -> io::Result<File> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| explain(path, e))?;
    check_plain(path, &file)?;
    let current = file.metadata()?.permissions().mode() & 0o7777;
    if current != mode {
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    Ok(file)
}

/// Open `path` for reading and writing (no truncation), creating it with `mode`; a symlink or
/// a multiply linked file there is refused. For lock files.
pub fn open_rw(path: &Path, mode: u32) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| explain(path, e))?;
    check_plain(path, &file)?;
    Ok(file)
}

/// Open the regular file `path` for reading without following a symlink there (nor reading a
/// device or FIFO planted in its place). `NotFound` passes through unchanged.
pub fn open_read(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| explain(path, e))?;
    if !file.metadata()?.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(file)
}

/// Read at most `cap` bytes of the regular file `path` (see [`open_read`]); a larger file is an
/// error naming the path and both sizes. `NotFound` passes through unchanged.
pub fn read_capped(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let file = open_read(path)?;
    let too_large = |len: u64| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is {len} bytes; refusing to read more than {cap} bytes of it",
                path.display()
            ),
        )
    };
    let len = file.metadata()?.len();
    if len > cap {
        return Err(too_large(len));
    }
    let mut out = Vec::with_capacity(len as usize);
    // The file may grow between the check and the read: never read past the cap.
    file.take(cap + 1).read_to_end(&mut out)?;
    if out.len() as u64 > cap {
        return Err(too_large(out.len() as u64));
    }
    Ok(out)
}

/// [`read_capped`] as text; invalid UTF-8 is an error naming the path.
pub fn read_to_string_capped(path: &Path, cap: u64) -> io::Result<String> {
    String::from_utf8(read_capped(path, cap)?).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not valid UTF-8", path.display()),
        )
    })
}

/// Take an exclusive `flock` on `file`, trying every 10 ms for at most `wait`: `Ok(false)` when
/// another process still holds it then (a lock held forever by whoever can open the file never
/// blocks the caller for longer).
pub fn lock_within(file: &File, wait: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + wait;
    loop {
        if try_lock(file)? {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(10).min(deadline - now));
    }
}

/// One non-blocking attempt at an exclusive lock (std's `File::try_lock`, an `flock` on
/// Linux, so it excludes every other process that locks the same file): `Ok(false)` when
/// another holds it.
pub fn try_lock(file: &File) -> io::Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Release a lock taken by [`lock_within`] or [`try_lock`] (closing the file releases it too).
pub fn unlock(file: &File) {
    if let Err(e) = file.unlock() {
        tracing::warn!(error = %e, "could not release a lock (it goes with the file)");
    }
}

/// The name prefix of the [`TempFile`]s of a file named `name`: `.<name>.tmp-`.
fn temp_prefix(name: &std::ffi::OsStr) -> String {
    format!(".{}.tmp-", name.to_string_lossy())
}

/// Remove the [`TempFile`]s of `path` that a killed process left behind (it could not remove
/// them itself); returns what was removed. Only for callers that are the one writer of `path`
/// (the launcher's actions hold the host lock).
pub fn remove_stale_temp_files(path: &Path) -> Vec<std::path::PathBuf> {
    match split(path) {
        Ok((dir, name)) => remove_named(dir, &temp_prefix(name)),
        Err(_) => Vec::new(),
    }
}

/// Remove the files in `dir` whose names start with `prefix` (a symlink is removed, not
/// followed); returns what was removed, and logs what could not be.
pub fn remove_named(dir: &Path, prefix: &str) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(prefix) {
            match std::fs::remove_file(e.path()) {
                Ok(()) => removed.push(e.path()),
                Err(err) => {
                    tracing::warn!(path = %e.path().display(), error = %err, "could not remove a stale file")
                }
            }
        }
    }
    removed
}

/// A fresh temporary file next to `path`, created with `O_EXCL` under a random name, and its
/// name. Used by [`write_atomic`] and by callers that stream large files (downloads).
pub struct TempFile {
    dir: File,
    name: CString,
    target: CString,
    path: std::path::PathBuf,
    file: Option<File>,
}

impl TempFile {
    /// Create the temporary file for `path` (in `path`'s directory, which must exist) with
    /// `mode`.
    pub fn new(path: &Path, mode: u32) -> io::Result<TempFile> {
        let (dir_path, name) = split(path)?;
        let dir = open_dir(dir_path)?;
        let target = c_name(name)?;
        for _ in 0..16 {
            let tmp_name = format!(
                "{}{}-{:016x}",
                temp_prefix(name),
                std::process::id(),
                fastrand::u64(..)
            );
            let tmp = c_name(std::ffi::OsStr::new(&tmp_name))?;
            // Read-write: the parallel download hashes what its parts wrote.
            let flags =
                OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let file =
                match rustix::fs::openat(&dir, tmp.as_c_str(), flags, Mode::from_raw_mode(mode)) {
                    Ok(fd) => File::from(fd),
                    Err(Errno::EXIST) => continue,
                    Err(e) => return Err(e.into()),
                };
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
            return Ok(TempFile {
                dir,
                name: tmp,
                target,
                path: dir_path.join(&tmp_name),
                file: Some(file),
            });
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{}: no free temporary name", path.display()),
        ))
    }

    /// The temporary file's path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file, for writing.
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("open until committed")
    }

    /// fsync the data, rename over the target, fsync the directory. An error means the target
    /// is as it was; once the rename is done, a failed directory fsync is only a warning (the
    /// new file is in place and complete, only its name's durability across a crash is unsure).
    pub fn commit(mut self) -> io::Result<()> {
        let file = self.file.take().expect("open until committed");
        file.sync_all()?;
        drop(file);
        rustix::fs::renameat(
            &self.dir,
            self.name.as_c_str(),
            &self.dir,
            self.target.as_c_str(),
        )?;
        // The rename is done: nothing to clean up any more.
        self.name = CString::default();
        if let Err(e) = self.dir.sync_all() {
            tracing::warn!(path = %self.path.display(), error = %e, "could not sync the directory after a rename");
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.name.as_bytes().is_empty() {
            let removed = rustix::fs::unlinkat(&self.dir, self.name.as_c_str(), AtFlags::empty());
            if let Err(e) = removed {
                let e = io::Error::from(e);
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %self.path.display(), error = %e, "could not remove a temp file");
                }
            }
        }
    }
}

/// Replace `path` with `contents` atomically (a crash leaves the old or the new file, never a
/// part), with `mode`. The directory must exist; a symlink planted at `path` is replaced, not
/// followed.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let mut tmp = TempFile::new(path, mode)?;
    tmp.file().write_all(contents)?;
    tmp.commit()
}

/// Remove `path` (a symlink there is removed, not followed); absent is success.
pub fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn stale_temp_files_of_one_file_go_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("ecs-agent.tar");
        // A temp file as a killed writer leaves it: created, never committed.
        let left = TempFile::new(&dest, 0o600).unwrap();
        let stale = left.path().to_path_buf();
        std::mem::forget(left);
        std::fs::write(dir.path().join("state"), "1").unwrap();
        std::fs::write(dir.path().join(".state.tmp-1-0"), "other file's").unwrap();
        std::fs::write(dir.path().join("ecs-agent.tar.download-77"), "x").unwrap();
        assert_eq!(remove_stale_temp_files(&dest), [stale]);
        assert_eq!(
            remove_named(dir.path(), "ecs-agent.tar.download-"),
            [dir.path().join("ecs-agent.tar.download-77")]
        );
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [".state.tmp-1-0", "state"]);
    }

    #[test]
    fn atomic_write_replaces_a_planted_symlink_without_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let path = dir.path().join("record");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        write_atomic(&path, b"ours\n", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_file());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "ours\n");
        assert_eq!(mode(&path), 0o644);
        // Nothing else is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn modes_do_not_follow_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let old = rustix::process::umask(Mode::empty());
        let p = dir.path().join("f");
        write_atomic(&p, b"x", 0o600).unwrap();
        let log = dir.path().join("log");
        drop(open_append(&log, 0o640).unwrap());
        let d = dir.path().join("a/b");
        ensure_dir(&d, 0o700).unwrap();
        rustix::process::umask(old);
        assert_eq!(mode(&p), 0o600);
        assert_eq!(mode(&log), 0o640);
        assert_eq!(mode(&d), 0o700);
    }

    #[test]
    fn append_and_read_refuse_symlinks_and_hard_links() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let link = dir.path().join("ecs-init.log");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let err = open_append(&link, 0o600).unwrap_err();
        assert!(
            err.to_string().contains("ecs-init.log is a symbolic link"),
            "{err}"
        );
        let err = read_capped(&link, 100).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        let hard = dir.path().join("hard");
        std::fs::hard_link(&victim, &hard).unwrap();
        let err = open_append(&hard, 0o600).unwrap_err();
        assert!(err.to_string().contains("hard links"), "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let sub = dir.path().join("gpu");
        std::os::unix::fs::symlink(dir.path(), &sub).unwrap();
        assert!(ensure_dir(&sub, 0o700)
            .unwrap_err()
            .to_string()
            .contains("symbolic link"));
    }

    #[test]
    fn an_uncommitted_temp_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("ecs-agent.tar");
        {
            let mut t = TempFile::new(&target, 0o600).unwrap();
            t.file().write_all(b"partial").unwrap();
            assert!(t.path().exists());
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(matches!(read_capped(&target, 100), Err(e) if e.kind() == io::ErrorKind::NotFound));
        remove(&target).unwrap();
    }

    fn fifo(path: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
    }

    /// Issue 20 (1): a FIFO in place of a file is refused at once, for reading and appending
    /// (before, the open waited for a writer forever).
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ecs.config");
        fifo(&p);
        let (tx, rx) = std::sync::mpsc::channel();
        let q = p.clone();
        std::thread::spawn(move || {
            let read = read_capped(&q, caps::ENV_FILE).map(|_| ());
            let append = open_append(&q, 0o640).map(|_| ());
            let rw = open_rw(&q, 0o644).map(|_| ());
            let _ = tx.send((read, append, rw));
        });
        let (read, append, rw) = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("an open of a FIFO blocked");
        let err = read.unwrap_err();
        assert!(err.to_string().contains("is not a regular file"), "{err}");
        // No reader: the kernel refuses a non-blocking open for writing (ENXIO).
        assert!(append.is_err());
        assert!(rw.unwrap_err().to_string().contains("not a regular file"));
    }

    /// Issue 20 (2): a file over its cap is refused from its size, without reading it (a
    /// sparse 3 GB file costs nothing), and `/dev/zero` through a symlink is not read at all.
    #[test]
    fn reads_are_capped_and_sparse_giants_cost_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("desired-image");
        std::fs::write(&p, "ecs-agent-v2.tar\n").unwrap();
        assert_eq!(
            read_to_string_capped(&p, caps::DESIRED_IMAGE).unwrap(),
            "ecs-agent-v2.tar\n"
        );
        File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(3 << 30)
            .unwrap();
        let err = read_capped(&p, caps::DESIRED_IMAGE).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} is 3221225472 bytes; refusing to read more than 4096 bytes of it",
                p.display()
            )
        );
        let z = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &z).unwrap();
        assert!(read_capped(&z, caps::ENV_FILE)
            .unwrap_err()
            .to_string()
            .contains("symbolic link"));
        let err = read_capped(Path::new("/dev/zero"), caps::ENV_FILE).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    /// Issue 20 (1): a lock held by someone else is given up on after the wait.
    #[test]
    fn a_held_lock_is_waited_for_at_most_the_given_time() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ecs-init.log.lock");
        let holder = open_rw(&p, 0o640).unwrap();
        assert!(try_lock(&holder).unwrap());
        let other = open_rw(&p, 0o640).unwrap();
        let t0 = Instant::now();
        assert!(!lock_within(&other, Duration::from_millis(100)).unwrap());
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_millis(100) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        unlock(&holder);
        assert!(lock_within(&other, Duration::from_millis(100)).unwrap());
    }
}
