//! The listening socket: from systemd (socket activation: `LISTEN_PID`/`LISTEN_FDS`, the
//! socket is fd 3; sd_listen_fds(3)), or bound by the plugin itself (upstart, by hand). A few
//! lines of std and libc, so no crate for it.
use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// The first socket systemd passes (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;
/// Mode of a socket the plugin binds itself (root's group may connect, as with the Go plugin).
pub const SOCKET_MODE: u32 = 0o660;

/// The socket systemd passed to this process, if any: `LISTEN_PID` must be this process and
/// `LISTEN_FDS` at least 1, and fd 3 must be a listening unix stream socket. The descriptor is
/// made close-on-exec so that the mount helpers do not inherit it.
pub fn from_systemd(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
) -> io::Result<Option<UnixListener>> {
    let (Some(pid), Some(fds)) = (listen_pid, listen_fds) else {
        return Ok(None);
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None);
    }
    let count: i32 = fds.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("LISTEN_FDS={fds:?} is not a number"),
        )
    })?;
    if count < 1 {
        return Ok(None);
    }
    if count > 1 {
        tracing::warn!(
            count,
            "systemd passed more than one socket; using the first"
        );
    }
    check_listening_unix(FIRST_FD)?;
    // SAFETY: fcntl on fd 3, which systemd passed to us and which we check above.
    unsafe {
        libc::fcntl(FIRST_FD, libc::F_SETFD, libc::FD_CLOEXEC);
    }
    // SAFETY: fd 3 is an open listening socket owned by nobody else in this process.
    let listener = unsafe { UnixListener::from_raw_fd(FIRST_FD) };
    listener.set_nonblocking(true)?;
    Ok(Some(listener))
}

fn check_listening_unix(fd: RawFd) -> io::Result<()> {
    let int_opt = |level, name| -> io::Result<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt with a valid out pointer and its length.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                level,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(value)
    };
    let not = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the socket systemd passed (fd 3) is not {what}; check the .socket unit"),
        )
    };
    let domain = int_opt(libc::SOL_SOCKET, libc::SO_DOMAIN).map_err(|_| not("a socket"))?;
    if domain != libc::AF_UNIX {
        return Err(not("a unix socket"));
    }
    if int_opt(libc::SOL_SOCKET, libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err(not("a stream socket (ListenStream=)"));
    }
    if int_opt(libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? == 0 {
        return Err(not("listening"));
    }
    Ok(())
}

/// Bind `path` (mode 0660, its directory created). A socket file already there is removed
/// only when nothing answers on it: a second plugin must not steal the first one's socket.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = match UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let meta = std::fs::symlink_metadata(path)?;
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is not a socket; refusing to replace it",
                        path.display()
                    ),
                ));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "another process answers on {}; is the plugin already running?",
                        path.display()
                    ),
                ));
            }
            tracing::info!(socket = %path.display(), "removing a stale socket nothing answers on");
            std::fs::remove_file(path)?;
            UnixListener::bind(path)?
        }
        Err(e) => return Err(e),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_socket_is_replaced_a_live_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/plugins/p.sock");
        let live = bind(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        let err = bind(&path).unwrap_err();
        assert!(err.to_string().contains("another process answers"), "{err}");
        drop(live); // the file stays, nothing answers: stale
        assert!(path.exists());
        let again = bind(&path).unwrap();
        drop(again);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "not a socket").unwrap();
        // A regular file is refused before anything else.
        let err = bind(&path).unwrap_err();
        assert!(err.to_string().contains("is not a socket"), "{err}");
    }

    #[test]
    fn systemd_variables_for_another_process_are_ignored() {
        assert!(from_systemd(None, None).unwrap().is_none());
        assert!(from_systemd(Some("1"), Some("1")).unwrap().is_none());
        let me = std::process::id().to_string();
        assert!(from_systemd(Some(&me), Some("0")).unwrap().is_none());
        assert!(from_systemd(Some(&me), Some("x")).is_err());
    }
}
