//! The custom health-check socket of `start` (packaging/COMPATIBILITY.md §12).
//!
//! Go releases with the agent's custom instance health checks run, while `start` supervises, a
//! server on the unix socket `/var/run/ecs.sock`: the agent connects, sends a 4-byte
//! little-endian timeout in seconds (0: 15 s) followed by a command line, and reads back the
//! command's exit code as decimal text (`99` when there is none). The agent's newest code sends
//! only `systemctl is-active <unit>` (its "systemd-service" check type); earlier iterations sent
//! `sudo systemctl is-active <unit>`.
//!
//! Go runs whatever command arrives. The agent container can reach the socket (it has
//! `/var/run` bound), and what it sends is untrusted input that must not decide what runs on the
//! host: here only `systemctl is-active <unit>` (an optional leading `sudo` is dropped: we are
//! root already) with a valid unit name is run, through the launcher's search path, with no
//! shell; anything else is refused with `99` and a warning naming it. The socket is 0600 (root
//! only), one connection at a time as in Go, each read bounded in time and size, the command
//! bounded by its timeout (at most [`MAX_TIMEOUT`]; killed then, answered `-1` as Go's killed
//! command is). A socket file left by an earlier run is replaced; anything else at the path (a
//! symlink, a regular file) is left alone and the server does not start. The socket is removed
//! when `start` ends.
use ecs_host::Exec;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Where the agent looks for it (re-rooted by `ECS_INIT_HOST_ROOT`).
pub const SOCKET: &str = "/var/run/ecs.sock";
/// A request's timeout when it gives 0 (Go's default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest a check may run, whatever the request says.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// The largest request read (Go reads one 1024-byte buffer).
const MAX_REQUEST: usize = 1024;
/// How long a client may take to send its request.
const READ_LIMIT: Duration = Duration::from_secs(5);
/// The answer when no exit code could be had (Go's).
const NO_EXIT_CODE: &str = "99";
/// The answer for a check killed at its timeout (Go's `ExitCode()` of a killed process).
const KILLED: &str = "-1";

/// A check the server runs: `systemctl is-active <unit>`, within `timeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub unit: String,
    pub timeout: Duration,
}

/// Parse one request; `Err` says why it is refused.
pub fn parse(request: &[u8]) -> Result<Check, String> {
    let Some((head, command)) = request.split_first_chunk::<4>() else {
        return Err(format!(
            "a request of {} bytes (at least a 4-byte timeout)",
            request.len()
        ));
    };
    let seconds = u32::from_le_bytes(*head);
    let timeout = match seconds {
        0 => DEFAULT_TIMEOUT,
        s => Duration::from_secs(u64::from(s)).min(MAX_TIMEOUT),
    };
    let command =
        std::str::from_utf8(command).map_err(|_| "a command that is not UTF-8".to_string())?;
    let words: Vec<&str> = command.split_whitespace().collect();
    let words = match words.as_slice() {
        ["sudo", rest @ ..] => rest,
        all => all,
    };
    match words {
        ["systemctl", "is-active", unit] if valid_unit(unit) => Ok(Check {
            unit: unit.to_string(),
            timeout,
        }),
        _ => Err(format!(
            "{command:?}: only `systemctl is-active <unit>` is run for the agent"
        )),
    }
}

/// A systemd unit name: letters, digits and `:-_.\@`, not starting with `-` (so it cannot be
/// read as an option), at most 255 bytes.
fn valid_unit(unit: &str) -> bool {
    !unit.is_empty()
        && unit.len() <= 255
        && !unit.starts_with('-')
        && unit
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b))
}

/// The answer to one request.
pub async fn answer(request: &[u8], exec: &dyn Exec) -> String {
    let check = match parse(request) {
        Ok(c) => c,
        Err(why) => {
            tracing::warn!("custom health check refused: {why}");
            return NO_EXIT_CODE.into();
        }
    };
    let args = ["is-active".to_string(), check.unit.clone()];
    let reply = match exec.run_within("systemctl", &args, check.timeout).await {
        Ok(out) => out
            .code
            .map_or_else(|| NO_EXIT_CODE.to_string(), |c| c.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => KILLED.into(),
        Err(e) => {
            tracing::warn!(unit = %check.unit, error = %e, "custom health check could not run");
            NO_EXIT_CODE.into()
        }
    };
    tracing::info!(unit = %check.unit, exit_code = %reply, "custom health check");
    reply
}

/// The bound socket; dropping it removes the socket file.
pub struct Listener {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Bind `path` (0600), replacing a socket left by an earlier run; anything else there is not
/// touched and is an error.
pub fn bind(path: &Path) -> std::io::Result<Listener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(m) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket ({:?}); left alone",
                    path.display(),
                    m.file_type()
                ),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    let listener = Listener {
        listener,
        path: path.to_path_buf(),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Answer requests one at a time, forever (the caller drops this future when `start` ends).
pub async fn serve(listener: Listener, exec: &dyn Exec) {
    tracing::info!(socket = %listener.path.display(), "custom health-check socket listening");
    loop {
        let mut conn = match listener.listener.accept().await {
            Ok((c, _)) => c,
            Err(e) => {
                tracing::warn!(error = %e, "custom health-check socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut buf = vec![0u8; MAX_REQUEST];
        // One read, as Go's server makes: the agent writes its request in one piece.
        let n = match tokio::time::timeout(READ_LIMIT, conn.read(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "custom health-check socket: read failed");
                continue;
            }
            Err(_) => {
                tracing::warn!("custom health-check socket: no request within {READ_LIMIT:?}");
                continue;
            }
        };
        let reply = answer(&buf[..n], exec).await;
        if let Err(e) = conn.write_all(reply.as_bytes()).await {
            tracing::warn!(error = %e, "custom health-check socket: could not answer");
        }
    }
}

/// Bind and serve at `path`, or (when it cannot be bound) log why and wait forever: the agent's
/// checks then report impaired, and supervision goes on.
pub async fn run(path: PathBuf, exec: &dyn Exec) {
    let e = match bind(&path) {
        Ok(listener) => return serve(listener, exec).await,
        Err(e) => e,
    };
    // A scratch host root without /var/run (tests): nothing to say to an operator.
    if path.parent().is_some_and(|p| !p.exists()) {
        tracing::debug!(socket = %path.display(), error = %e, "no custom health-check socket");
    } else {
        tracing::warn!(socket = %path.display(), error = %e, "no custom health-check socket");
    }
    std::future::pending().await
}

/// What `plan` shows.
pub fn plan(path: &Path) -> serde_json::Value {
    serde_json::json!({
        "path": path,
        "while": "start supervises the agent",
        "runs": "systemctl is-active <unit> only (other commands are refused with 99)",
        "default_timeout_seconds": DEFAULT_TIMEOUT.as_secs(),
        "max_timeout_seconds": MAX_TIMEOUT.as_secs(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(seconds: u32, command: &str) -> Vec<u8> {
        let mut r = seconds.to_le_bytes().to_vec();
        r.extend_from_slice(command.as_bytes());
        r
    }

    #[test]
    fn only_systemctl_is_active_of_a_unit_is_accepted() {
        assert_eq!(
            parse(&request(0, "systemctl is-active amazon-ssm-agent")),
            Ok(Check {
                unit: "amazon-ssm-agent".into(),
                timeout: DEFAULT_TIMEOUT
            })
        );
        assert_eq!(
            parse(&request(10, "sudo systemctl is-active  docker.service\n")),
            Ok(Check {
                unit: "docker.service".into(),
                timeout: Duration::from_secs(10)
            })
        );
        assert_eq!(
            parse(&request(u32::MAX, "systemctl is-active getty@tty1.service"))
                .unwrap()
                .timeout,
            MAX_TIMEOUT
        );
        for refused in [
            "touch /tmp/x",
            "systemctl stop docker",
            "systemctl is-active --host=x docker",
            "systemctl is-active a b",
            "systemctl is-active a;reboot",
            "systemctl is-active $(reboot)",
            "sh -c 'systemctl is-active docker'",
            "systemctl is-active",
            "",
        ] {
            let err = parse(&request(1, refused)).unwrap_err();
            assert!(
                err.contains("only `systemctl is-active <unit>`"),
                "{refused}: {err}"
            );
        }
        assert!(parse(b"ab").unwrap_err().contains("2 bytes"));
        assert!(parse(&[0, 0, 0, 0, 0xff]).unwrap_err().contains("UTF-8"));
    }

    /// Through a real socket and real processes: a `systemctl` on the search path that exits
    /// 0 for `good`, 3 for `bad`, and sleeps for `slow`; a stale socket file is replaced, the
    /// socket is 0600 and gone when the server is dropped; a refused command runs nothing.
    #[tokio::test]
    async fn answers_over_the_socket_with_the_exit_code_and_refuses_the_rest() {
        use tokio::net::UnixStream;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let script = bin.join("systemctl");
        let ran = dir.path().join("ran");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$*\" >> {}\ncase \"$2\" in good) exit 0 ;; slow) exec /bin/sleep 30 ;; *) exit 3 ;; esac\n",
                ran.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let exec = ecs_host::SystemExec::new(Some(bin.into()));
        let path = dir.path().join("ecs.sock");
        // A socket left by an earlier run (bound, then its listener gone).
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let listener = bind(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let ask = |req: Vec<u8>| {
            let path = path.clone();
            async move {
                let mut c = UnixStream::connect(&path).await.unwrap();
                c.write_all(&req).await.unwrap();
                let mut reply = String::new();
                c.read_to_string(&mut reply).await.unwrap();
                reply
            }
        };
        let server = serve(listener, &exec);
        let client = async {
            let replies = vec![
                ask(request(0, "systemctl is-active good")).await,
                ask(request(0, "sudo systemctl is-active bad")).await,
                ask(request(0, "touch /tmp/never")).await,
                ask(request(1, "systemctl is-active slow")).await,
            ];
            replies
        };
        let t = std::time::Instant::now();
        let replies = tokio::select! {
            r = client => r,
            () = server => unreachable!("the server ends only when dropped"),
        };
        assert_eq!(replies, ["0", "3", "99", "-1"]);
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        assert_eq!(
            std::fs::read_to_string(&ran).unwrap(),
            "is-active good\nis-active bad\nis-active slow\n"
        );
        assert!(!path.exists(), "the socket is removed with the server");

        // Not a socket: left alone, no server.
        std::fs::write(&path, "x").unwrap();
        let err = bind(&path).err().unwrap().to_string();
        assert!(err.contains("is not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "x");
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &path).unwrap();
        assert!(bind(&path).is_err());
        assert!(!dir.path().join("elsewhere").exists());
    }
}
