//! One bucket's attempt: the published MD5, then the tarball streamed into a temp file next to
//! its destination (0600, MD5 computed on the way), compared, fsynced and renamed into place.
//! Memory stays bounded (hyper's read buffer, plus at most `SINK_PIECES` received pieces waiting
//! for the hashing thread) whatever the tarball's size. Any failure removes the temp file; the
//! destination is only ever replaced by a complete, verified file.
use md5::{Digest, Md5};
use std::fmt;
use std::fs::File;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hyper::body::Bytes;

use super::http::{with_retries, Attempt, Client, HttpError, Retry};
use super::region::Source;

/// Why one bucket did not give us the agent.
#[derive(Debug)]
pub enum SourceError {
    Http(HttpError),
    Md5Malformed {
        url: String,
        body: String,
    },
    Mismatch {
        url: String,
        md5_url: String,
        expected: String,
        actual: String,
    },
    /// A local file problem (no space, permissions): the next bucket would not do better.
    Local {
        path: PathBuf,
        what: String,
        source: std::io::Error,
    },
    NoSpace {
        dir: PathBuf,
        needed: u64,
        available: u64,
    },
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceError::Http(e) => write!(f, "{e}"),
            SourceError::Md5Malformed { url, body } => write!(
                f,
                "{url}: malformed checksum file (expected 32 hexadecimal digits, got {:?})",
                body.chars().take(80).collect::<String>()
            ),
            SourceError::Mismatch {
                url,
                md5_url,
                expected,
                actual,
            } => write!(
                f,
                "downloaded agent {url} does not match expected checksum: MD5 {actual}, expected {expected} (from {md5_url})"
            ),
            SourceError::Local { path, what, source } => {
                write!(f, "{what} {}: {source}", path.display())
            }
            SourceError::NoSpace {
                dir,
                needed,
                available,
            } => write!(
                f,
                "not enough space in {} for the agent tarball: it is {needed} bytes, {available} bytes are free (No space left on device)",
                dir.display()
            ),
        }
    }
}

impl std::error::Error for SourceError {}

impl SourceError {
    /// Local problems stop the whole download: another bucket would hit them too.
    pub fn is_local(&self) -> bool {
        matches!(
            self,
            SourceError::Local { .. } | SourceError::NoSpace { .. }
        )
    }
}

impl Attempt for SourceError {
    fn retryable(&self) -> bool {
        match self {
            SourceError::Http(e) => e.retryable(),
            _ => false,
        }
    }
    fn set_attempts(&mut self, attempts: u32) {
        if let SourceError::Http(e) = self {
            e.set_attempts(attempts)
        }
    }
}

impl From<HttpError> for SourceError {
    fn from(e: HttpError) -> Self {
        SourceError::Http(e)
    }
}

/// The digest in a `.md5` object: 32 hex digits, optionally followed by `md5sum`'s file name.
pub fn parse_md5(body: &str) -> Option<String> {
    let digest = body.split_whitespace().next()?;
    (digest.len() == 32 && digest.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| digest.to_ascii_lowercase())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn free_space(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs(3) on a NUL-terminated path into a zeroed struct we own.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// What a completed download looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub url: String,
    pub path: PathBuf,
    pub bytes: u64,
    pub md5: String,
    pub elapsed: Duration,
}

/// How long a download may go without a progress line, and how much more start-up time to ask
/// systemd for each time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub every: Duration,
    pub extend_by: Duration,
}

/// Stream one attempt into `created`, the temp file at `tmp` (emptied first); returns the
/// digest and size.
async fn stream_once(
    client: &Client,
    url: &str,
    (created, tmp): (&File, &Path),
    progress: Progress,
) -> Result<(String, u64), SourceError> {
    let local = |what: &str, source| SourceError::Local {
        path: tmp.to_path_buf(),
        what: what.to_string(),
        source,
    };
    // The file created with O_EXCL, never opened again by name: /var/cache/ecs is writable by
    // the agent, and a symlink planted at the name between attempts must not be followed.
    // Emptied first, so an earlier attempt's bytes do not count against the free space.
    let mut file = created.try_clone().map_err(|e| local("opening", e))?;
    file.set_len(0)
        .and_then(|()| file.rewind())
        .map_err(|e| local("emptying", e))?;
    let mut resp = client.get(url).await?;
    if let (Some(len), Some(dir)) = (resp.content_length, tmp.parent()) {
        if let Some(available) = free_space(dir) {
            if available < len {
                return Err(SourceError::NoSpace {
                    dir: dir.to_path_buf(),
                    needed: len,
                    available,
                });
            }
        }
    }
    let mut sink = Sink::start(file).map_err(|e| local("starting the hashing thread for", e))?;
    let started = Instant::now();
    let mut last_report = started;
    while let Some(data) = resp.chunk().await? {
        if !sink.push(data) {
            break; // the thread stopped on a write error, which `finish` returns
        }
        if last_report.elapsed() >= progress.every {
            last_report = Instant::now();
            let secs = started.elapsed().as_secs_f64().max(0.001);
            let rate = mib(resp.received) / secs;
            let percent = resp
                .content_length
                .filter(|n| *n > 0)
                .map(|n| format!("{:.0}%", resp.received as f64 * 100.0 / n as f64))
                .unwrap_or_else(|| "?%".into());
            tracing::info!(
                url,
                received_mib = format!("{:.1}", mib(resp.received)),
                total_mib = resp
                    .content_length
                    .map(|n| format!("{:.1}", mib(n)))
                    .unwrap_or_else(|| "?".into()),
                percent,
                rate_mib_s = format!("{rate:.1}"),
                "downloading the agent"
            );
            crate::notify::notify(&format!(
                "EXTEND_TIMEOUT_USEC={}\nSTATUS=downloading the agent: {percent}",
                progress.extend_by.as_micros()
            ));
        }
    }
    // Synced once, by the commit that renames it into place.
    let (md5, _file) = sink.finish().map_err(|e| local("writing", e))?;
    Ok((hex(&md5.finalize()), resp.received))
}

/// How many received pieces may wait for the hashing thread; when they all wait, reading from
/// the network waits for it. A piece is what one read of the connection gave: up to hyper's
/// ~400 KiB read buffer on a fast link, so 64 of them raised the download's peak RSS from
/// 7.3 to 33 MiB (tests/bench.sh); a few are enough to keep the thread busy.
const SINK_PIECES: usize = 4;

/// MD5 and the temp file's writes on a thread of their own, so that hashing one piece overlaps
/// the arrival (and TLS decryption) of the next: on one thread the MD5 alone was about a third
/// of a 300 MB download's time (README, Benchmarks).
struct Sink {
    pieces: Option<SyncSender<Bytes>>,
    worker: Option<JoinHandle<std::io::Result<(Md5, File)>>>,
}

impl Sink {
    fn start(mut file: File) -> std::io::Result<Sink> {
        let (pieces, received) = sync_channel::<Bytes>(SINK_PIECES);
        let worker = std::thread::Builder::new()
            .name("agent-download-md5".into())
            .spawn(move || {
                let mut md5 = Md5::new();
                for data in received {
                    md5.update(&data);
                    file.write_all(&data)?;
                }
                Ok((md5, file))
            })?;
        Ok(Sink {
            pieces: Some(pieces),
            worker: Some(worker),
        })
    }

    /// Hand one piece over; false when the thread has stopped (a write failed).
    fn push(&mut self, data: Bytes) -> bool {
        self.pieces.as_ref().is_some_and(|p| p.send(data).is_ok())
    }

    /// Every piece written and hashed: the digest so far and the file, or the write error.
    fn finish(mut self) -> std::io::Result<(Md5, File)> {
        self.pieces = None;
        match self.worker.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) | None => Err(std::io::Error::other("the hashing thread panicked")),
        }
    }
}

impl Drop for Sink {
    /// An attempt that failed part-way waits for its thread: the next attempt truncates the
    /// same temp file and must not receive this attempt's late writes.
    fn drop(&mut self) {
        self.pieces = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// Download `source` to `dest`: the MD5 first, then the tarball, verified, renamed into place.
pub async fn from_source(
    client: &Client,
    retry: Retry,
    source: &Source,
    dest: &Path,
    progress: Progress,
) -> Result<Fetched, SourceError> {
    let md5_url = source.md5.as_str();
    let body = with_retries(retry, "checksum download", move || async move {
        client.get(md5_url).await?.text(4096).await
    })
    .await?;
    let expected = parse_md5(&body).ok_or_else(|| SourceError::Md5Malformed {
        url: source.md5.clone(),
        body: body.trim().to_string(),
    })?;
    // Created with O_EXCL under a random name, written through its descriptor only and renamed
    // relative to the directory's: /var/cache/ecs is writable by the agent, and a symlink
    // planted at a name must not be followed. Dropped on any failure, it removes itself.
    let mut tmp =
        ecs_host::files::TempFile::new(dest, 0o600).map_err(|source| SourceError::Local {
            path: dest.to_path_buf(),
            what: "creating a temp file for".into(),
            source,
        })?;
    let tmp_path = tmp.path().to_path_buf();
    let started = Instant::now();
    let (url, tmp_ref) = (source.tarball.as_str(), (&*tmp.file(), tmp_path.as_path()));
    let (actual, bytes) = with_retries(retry, "agent download", move || async move {
        stream_once(client, url, tmp_ref, progress).await
    })
    .await?;
    let elapsed = started.elapsed();
    if actual != expected {
        return Err(SourceError::Mismatch {
            url: source.tarball.clone(),
            md5_url: source.md5.clone(),
            expected,
            actual,
        });
    }
    // fsync, rename into place, fsync the directory: the rename survives a crash too.
    tmp.commit().map_err(|e| SourceError::Local {
        path: dest.to_path_buf(),
        what: format!("syncing {} and renaming it to", tmp_path.display()),
        source: e,
    })?;
    Ok(Fetched {
        url: source.tarball.clone(),
        path: dest.to_path_buf(),
        bytes,
        md5: actual,
        elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_files() {
        let d = "0123456789abcdef0123456789ABCDEF";
        assert_eq!(
            parse_md5(d).as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(parse_md5(&format!("  {d}\n")).unwrap().len(), 32);
        assert!(parse_md5(&format!("{d}  ecs-agent-v1.tar\n")).is_some());
        for bad in [
            "",
            "xyz",
            &d[1..],
            &format!("{d}0"),
            "g123456789abcdef0123456789abcdef",
        ] {
            assert!(parse_md5(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn the_sink_hashes_and_writes_every_piece_and_a_dropped_one_has_finished_writing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let piece = Bytes::from(vec![9u8; 1 << 20]);
        let mut sink = Sink::start(File::create(&path).unwrap()).unwrap();
        for _ in 0..3 {
            assert!(sink.push(piece.clone()));
        }
        let (md5, _) = sink.finish().unwrap();
        assert_eq!(hex(&md5.finalize()), hex(&Md5::digest(vec![9u8; 3 << 20])));
        // A failed attempt drops its sink; the next attempt truncates the same file, so every
        // queued write must be done when the drop returns.
        let mut sink = Sink::start(File::create(&path).unwrap()).unwrap();
        for _ in 0..8 {
            assert!(sink.push(piece.clone()));
        }
        drop(sink);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 8 << 20);
    }

    #[test]
    fn a_write_error_stops_the_sink_and_finish_returns_it() {
        let full = File::options().write(true).open("/dev/full").unwrap();
        let mut sink = Sink::start(full).unwrap();
        let pushed = (0..100)
            .take_while(|_| sink.push(Bytes::from_static(b"x")))
            .count();
        assert!(pushed < 100, "the thread stopped taking pieces");
        let err = sink.finish().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::StorageFull, "{err}");
    }

    #[test]
    fn hex_and_md5() {
        assert_eq!(hex(&Md5::digest(b"")), "d41d8cd98f00b204e9800998ecf8427e");
    }

    /// A plain-HTTP loopback server answering the `.md5` at once and the object in slow pieces.
    fn slow_server(body: Vec<u8>, pieces: usize, gap: Duration) -> String {
        use std::io::{BufRead, BufReader};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let md5 = hex(&Md5::digest(&body));
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut first = String::new();
                r.read_line(&mut first).unwrap();
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                if first.contains(".md5 ") {
                    let _ = write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: 33\r\n\r\n{md5}\n");
                    continue;
                }
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                for piece in body.chunks(body.len().div_ceil(pieces)) {
                    std::thread::sleep(gap);
                    let _ = conn.write_all(piece);
                }
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn progress_lines_at_a_steady_pace_then_one_final_digest() {
        let body = vec![7u8; 400_000];
        let url = slow_server(body.clone(), 8, Duration::from_millis(60));
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("ecs-agent.tar");
        let client = Client::new(
            Default::default(),
            Default::default(),
            Duration::from_secs(2),
            Duration::from_secs(2),
        );
        let source = Source {
            bucket: "b".into(),
            tarball: format!("{url}/b/o.tar"),
            md5: format!("{url}/b/o.tar.md5"),
        };
        let progress = Progress {
            every: Duration::from_millis(100),
            extend_by: Duration::from_secs(1),
        };
        let retry = Retry {
            attempts: 1,
            backoff: Duration::from_millis(1),
        };
        let mut fetched = None;
        let text = crate::testing::capture_logs(async {
            fetched = Some(from_source(&client, retry, &source, &dest, progress).await);
        })
        .await;
        let f = fetched.unwrap().unwrap();
        assert_eq!(f.bytes, 400_000);
        assert_eq!(f.md5, hex(&Md5::digest(&body)));
        assert_eq!(std::fs::read(&dest).unwrap(), body);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("downloading the agent"))
            .collect();
        // ~480 ms of transfer, a line at most every 100 ms: a few, and not one per piece.
        assert!(
            (2..=5).contains(&lines.len()),
            "{} progress lines:\n{text}",
            lines.len()
        );
        assert!(
            lines
                .iter()
                .all(|l| l.contains("percent=") && l.contains("rate_mib_s=")),
            "{text}"
        );
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["ecs-agent.tar"], "the temp file was renamed");
    }

    #[test]
    fn messages() {
        let m = SourceError::Mismatch {
            url: "https://h/b/o.tar".into(),
            md5_url: "https://h/b/o.tar.md5".into(),
            expected: "a".repeat(32),
            actual: "b".repeat(32),
        }
        .to_string();
        assert!(m.contains("does not match expected checksum"), "{m}");
        assert!(
            m.contains(&"a".repeat(32)) && m.contains(&"b".repeat(32)),
            "{m}"
        );
        assert!(m.contains("https://h/b/o.tar "), "{m}");
    }
}
