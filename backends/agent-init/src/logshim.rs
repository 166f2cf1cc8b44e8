//! containerd `binary://` log shim writing a rotated, Docker `json-file`-like log.
//!
//! Protocol (containerd runc shim v2): the container's stdout is fd 3, stderr fd 4; closing
//! fd 5 tells the shim we are ready. Query parameters of the log URI arrive as `key value`
//! argument pairs in arbitrary order; `CONTAINER_ID` is in the environment.
//!
//! Keys: `log-shim <dir>` (required), `max-size <n[k|m|g]>` (default 16m, 0 = unlimited),
//! `max-file <n>` (default 4), `name <file stem>` (default `$CONTAINER_ID`).
//! Files: `<dir>/<name>.log` is current; `<name>.log.1` … `<name>.log.<max-file - 1>` older.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::FromRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Docker's json-file splits lines longer than this into several entries.
const MAX_LINE: u64 = 16 * 1024;

pub fn is_invocation(args: &[OsString]) -> bool {
    args.len().is_multiple_of(2) && args.iter().step_by(2).any(|a| a == "log-shim")
}

struct Settings {
    dir: PathBuf,
    name: String,
    max_size: u64,
    max_file: u32,
}

fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let (digits, mult) = match s.trim_end_matches('b').chars().last()? {
        'k' => (&s[..s.trim_end_matches('b').len() - 1], 1024),
        'm' => (&s[..s.trim_end_matches('b').len() - 1], 1024 * 1024),
        'g' => (&s[..s.trim_end_matches('b').len() - 1], 1024 * 1024 * 1024),
        _ => (s.as_str(), 1),
    };
    digits.trim().parse::<u64>().ok().map(|n| n * mult)
}

fn parse(args: &[OsString]) -> Result<Settings, String> {
    let mut dir = None;
    let mut name = std::env::var("CONTAINER_ID").ok();
    let mut max_size = 16 * 1024 * 1024;
    let mut max_file = 4;
    for pair in args.chunks(2) {
        let key = pair[0].to_string_lossy();
        let value = pair[1].to_string_lossy().into_owned();
        match key.as_ref() {
            "log-shim" => dir = Some(PathBuf::from(value)),
            "name" => name = Some(value),
            "max-size" => {
                max_size = parse_size(&value).ok_or(format!("bad max-size {value:?}"))?;
            }
            "max-file" => {
                max_file = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or(format!("bad max-file {value:?}"))?;
            }
            other => return Err(format!("unknown key {other:?}")),
        }
    }
    let name = name
        .filter(|n| !n.is_empty() && !n.contains('/'))
        .ok_or("no usable container name (CONTAINER_ID)")?;
    Ok(Settings {
        dir: dir.ok_or("log-shim DIR missing")?,
        name,
        max_size,
        max_file,
    })
}

struct Log {
    settings: Settings,
    file: File,
    size: u64,
}

impl Log {
    fn path(&self, n: u32) -> PathBuf {
        let base = self
            .settings
            .dir
            .join(format!("{}.log", self.settings.name));
        if n == 0 {
            base
        } else {
            PathBuf::from(format!("{}.{n}", base.display()))
        }
    }

    /// The directory is inside the agent's writable `/log`: never follow a symlink planted as
    /// the log file.
    fn open(path: &PathBuf) -> std::io::Result<File> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
    }

    /// Shifts `.log` → `.log.1` → … and drops the oldest, like Docker's json-file.
    fn rotate(&mut self) -> std::io::Result<()> {
        let keep = self.settings.max_file;
        if keep <= 1 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        let _ = std::fs::remove_file(self.path(keep - 1));
        for n in (1..keep - 1).rev() {
            let _ = std::fs::rename(self.path(n), self.path(n + 1));
        }
        std::fs::rename(self.path(0), self.path(1))?;
        self.file = Self::open(&self.path(0))?;
        self.size = 0;
        Ok(())
    }

    fn write_entry(&mut self, entry: &[u8]) {
        let max = self.settings.max_size;
        if max > 0 && self.size > 0 && self.size + entry.len() as u64 > max {
            if let Err(e) = self.rotate() {
                eprintln!("ecs-agent-init log-shim: rotate failed: {e}");
            }
        }
        if self.file.write_all(entry).is_ok() {
            self.size += entry.len() as u64;
        }
    }
}

/// RFC 3339 UTC with nanoseconds, e.g. `2024-05-01T12:00:00.123456789Z`.
pub fn rfc3339_now() -> String {
    ecs_common::time::rfc3339_nanos(SystemTime::now())
}

fn entry(line: &[u8], stream: &str) -> Vec<u8> {
    let mut out = String::with_capacity(line.len() + 80);
    out.push_str("{\"log\":\"");
    ecs_common::json::escape_into(&mut out, &String::from_utf8_lossy(line));
    out.push_str("\",\"stream\":\"");
    out.push_str(stream);
    out.push_str("\",\"time\":\"");
    out.push_str(&rfc3339_now());
    out.push_str("\"}\n");
    out.into_bytes()
}

fn pump(fd: i32, stream: &'static str, log: Arc<Mutex<Log>>) {
    // SAFETY: fds 3 and 4 are handed to us by the containerd shim and owned by this thread.
    let input = unsafe { File::from_raw_fd(fd) };
    let mut reader = BufReader::new(input);
    let mut line = Vec::with_capacity(4096);
    loop {
        line.clear();
        match reader.by_ref().take(MAX_LINE).read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {
                let e = entry(&line, stream);
                log.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .write_entry(&e);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

pub fn run(args: &[OsString]) -> i32 {
    let settings = match parse(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ecs-agent-init log-shim: {e}");
            return 2;
        }
    };
    // containerd sends SIGTERM when the task is deleted; by then the container's ends of the
    // pipes are closed, so we keep draining to EOF instead of dying with unwritten lines.
    // SAFETY: setting a signal disposition to SIG_IGN.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
    if let Err(e) = std::fs::create_dir_all(&settings.dir) {
        eprintln!(
            "ecs-agent-init log-shim: cannot create {}: {e}",
            settings.dir.display()
        );
        return 1;
    }
    let path = settings.dir.join(format!("{}.log", settings.name));
    let file = match Log::open(&path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "ecs-agent-init log-shim: cannot open {}: {e}",
                path.display()
            );
            return 1;
        }
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let log = Arc::new(Mutex::new(Log {
        settings,
        file,
        size,
    }));
    // Ready: the shim waits for fd 5 to close before starting the container.
    // SAFETY: fd 5 is the readiness pipe given to us; closing it is the protocol.
    unsafe {
        libc::close(5);
    }
    let err_log = Arc::clone(&log);
    let stderr = std::thread::spawn(move || pump(4, "stderr", err_log));
    pump(3, "stdout", log);
    let _ = stderr.join();
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16m"), Some(16 * 1024 * 1024));
        assert_eq!(parse_size("10k"), Some(10 * 1024));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("x"), None);
    }

    #[test]
    fn args_in_any_order() {
        let args: Vec<OsString> = ["max-file", "3", "log-shim", "/tmp/x", "name", "a"]
            .iter()
            .map(OsString::from)
            .collect();
        assert!(is_invocation(&args));
        let s = parse(&args).unwrap();
        assert_eq!(s.max_file, 3);
        assert_eq!(s.name, "a");
        assert_eq!(s.dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn entry_is_json_line() {
        let e = String::from_utf8(entry(b"a \"b\"\n", "stdout")).unwrap();
        assert!(e.starts_with("{\"log\":\"a \\\"b\\\"\\n\",\"stream\":\"stdout\",\"time\":\""));
        assert!(e.ends_with("Z\"}\n"));
    }

    #[test]
    fn time_format() {
        let t = rfc3339_now();
        assert_eq!(t.len(), "2024-05-01T12:00:00.123456789Z".len(), "{t}");
        assert!(t.starts_with("20"));
    }
}
