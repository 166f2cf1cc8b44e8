//! The agent's stdout/stderr on containerd: a `binary://` log URI pointing at the
//! `ecs-agent-init` log shim, which writes `<dir>/<name>.log` (+ `.1` … rotations) in Docker's
//! json-file line format. This module builds the URI and reads the files back for
//! [`logs_tail`](crate::Runtime::logs_tail).

use crate::spec::LogConfig;
use ecs_host::files::caps;
use serde::Deserialize;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};

/// Percent-encodes everything but unreserved characters and `/` (containerd's shim parses the
/// URI with Go's `net/url`, which decodes query values).
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `max-size` and `max-file` from the spec's log options, Docker's defaults otherwise.
///
/// The containerd backend always keeps this json-file-style log (other Docker log drivers do
/// not exist here); a different driver is logged as a warning by the caller.
pub fn limits(log: &LogConfig) -> (String, String) {
    let size = log
        .options
        .get("max-size")
        .cloned()
        .unwrap_or_else(|| "16m".into());
    let files = log
        .options
        .get("max-file")
        .cloned()
        .unwrap_or_else(|| "4".into());
    (size, files)
}

/// The log URI handed to Tasks.Create for both stdout and stderr.
pub fn uri(shim: &Path, dir: &Path, name: &str, log: &LogConfig) -> String {
    let (size, files) = limits(log);
    format!(
        "binary://{}?log-shim={}&name={}&max-size={}&max-file={}",
        encode(&shim.to_string_lossy()),
        encode(&dir.to_string_lossy()),
        encode(name),
        encode(&size),
        encode(&files)
    )
}

/// The current file and its rotations, oldest first, that exist.
pub fn files(dir: &Path, name: &str) -> Vec<PathBuf> {
    let base = dir.join(format!("{name}.log"));
    let mut rotated: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let n = file.strip_prefix(&format!("{name}.log."))?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut all: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    if base.exists() {
        all.push(base);
    }
    all
}

#[derive(Deserialize)]
struct Entry {
    log: String,
    time: String,
}

/// The last `lines` entries as `<RFC 3339 time> <line>` lines (Docker's `logs --timestamps`),
/// from at most [`caps::LOG_TAIL_READ`] bytes at the end of the log files (newest first): the
/// files are in the agent-writable `/var/log/ecs`, so a 1 GB (sparse) file or a line without
/// end costs no more than that.
pub fn tail(dir: &Path, name: &str, lines: usize) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    if lines == 0 {
        return Ok(String::new());
    }
    // The ends of the newest files, newest first, within the budget; `true` when the chunk
    // starts mid-file (its first line is partial).
    let mut chunks: Vec<(Vec<u8>, bool)> = Vec::new();
    let mut budget = caps::LOG_TAIL_READ;
    for path in files(dir, name).into_iter().rev() {
        if budget == 0 {
            break;
        }
        // The directory is under the agent's writable /var/log/ecs: a planted symlink (say, to
        // /dev/zero) or FIFO must not be read.
        let mut file = match ecs_host::files::open_read(&path) {
            Ok(f) => f,
            // Rotated away between listing and opening.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        let start = len.saturating_sub(budget);
        file.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        file.take(budget).read_to_end(&mut buf)?;
        budget -= buf.len() as u64;
        chunks.push((buf, start > 0));
    }
    let mut last: VecDeque<String> = VecDeque::with_capacity(lines.min(10_000));
    for (buf, partial) in chunks.iter().rev() {
        let mut it = buf.split(|b| *b == b'\n');
        if *partial {
            it.next();
        }
        for line in it {
            let Ok(entry) = serde_json::from_slice::<Entry>(line) else {
                continue;
            };
            if last.len() == lines {
                last.pop_front();
            }
            let text = entry.log.strip_suffix('\n').unwrap_or(&entry.log);
            last.push_back(format!("{} {}", entry.time, text));
        }
    }
    let mut out = String::new();
    for l in last {
        out.push_str(&l);
        out.push('\n');
    }
    Ok(out)
}

/// Removes the log files of a container (Docker drops a container's log with the container).
pub fn remove(dir: &Path, name: &str) {
    for f in files(dir, name) {
        if let Err(e) = std::fs::remove_file(&f) {
            tracing::debug!(file = %f.display(), error = %e, "could not remove log file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_encodes() {
        let u = uri(
            Path::new("/usr/libexec/x"),
            Path::new("/var/log/ecs/containerd"),
            "ecs-agent",
            &LogConfig::default(),
        );
        assert_eq!(
            u,
            "binary:///usr/libexec/x?log-shim=/var/log/ecs/containerd&name=ecs-agent&max-size=16m&max-file=4"
        );
        assert_eq!(encode("a b&c"), "a%20b%26c");
    }

    #[test]
    fn tail_does_not_follow_a_planted_symlink() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("secret"),
            "{\"log\":\"s\",\"time\":\"t\"}\n",
        )
        .unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), dir.path().join("c.log")).unwrap();
        let err = tail(dir.path(), "c", 10).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
    }

    #[test]
    fn tail_reads_rotations_in_order() {
        let dir = std::env::temp_dir().join(format!("ecs-logs-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let line =
            |n: u32| format!("{{\"log\":\"l{n}\\n\",\"stream\":\"stdout\",\"time\":\"t{n}\"}}\n");
        std::fs::write(dir.join("c.log.2"), line(1) + &line(2)).unwrap();
        std::fs::write(dir.join("c.log.1"), line(3)).unwrap();
        std::fs::write(dir.join("c.log"), line(4) + &line(5)).unwrap();
        assert_eq!(tail(&dir, "c", 3).unwrap(), "t3 l3\nt4 l4\nt5 l5\n");
        assert_eq!(tail(&dir, "c", 100).unwrap().lines().count(), 5);
        remove(&dir, "c");
        assert!(files(&dir, "c").is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Issue 20 (2): a 1 GB sparse log (no line end at all) costs at most the read cap; the
    /// last real entries after it are still found.
    #[test]
    fn a_giant_log_is_read_from_its_end_only() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("c.log.1");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        std::fs::write(
            dir.path().join("c.log"),
            "{\"log\":\"last\\n\",\"time\":\"t9\"}\n",
        )
        .unwrap();
        let t0 = std::time::Instant::now();
        assert_eq!(tail(dir.path(), "c", 200).unwrap(), "t9 last\n");
        assert!(t0.elapsed() < std::time::Duration::from_secs(2));
        // Only the giant: nothing usable, and no error.
        std::fs::remove_file(dir.path().join("c.log")).unwrap();
        assert_eq!(tail(dir.path(), "c", 200).unwrap(), "");
    }
}
