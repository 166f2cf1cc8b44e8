//! One bucket's attempt: the published MD5, then the tarball into a temp file next to its
//! destination (0600, `O_EXCL`): in parallel byte ranges written at their offsets when the
//! server answers the first, open range request with a 206 and the object's size, else as one
//! stream; the MD5 is computed in order either way (over the contiguous prefix as it grows, or
//! on the way), compared, and the file fsynced and renamed into place. Memory stays bounded
//! (hyper's read buffer per connection, one read buffer of the hashing thread, or at most
//! `SINK_PIECES` pieces waiting for it) whatever the tarball's size. Any failure removes the
//! temp file; the destination is only ever replaced by a complete, verified file.
use md5::{Digest, Md5};
use std::fmt;
use std::fs::File;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hyper::body::Bytes;

use super::http::{
    with_retries, Attempt, Client, Conn, HttpError, Kind as HttpKind, Response, Retry,
};
use super::region::Source;
use super::DownloadLimits;

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
    /// Larger than `ECS_INIT_DOWNLOAD_MAX_BYTES` (`size`: what the server announced).
    TooLarge {
        url: String,
        size: Option<u64>,
        max: u64,
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
            SourceError::TooLarge { url, size: Some(size), max } => write!(
                f,
                "{url} is {size} bytes, more than the {max} bytes of ECS_INIT_DOWNLOAD_MAX_BYTES; refused before writing"
            ),
            SourceError::TooLarge { url, size: None, max } => write!(
                f,
                "{url} sent more than the {max} bytes of ECS_INIT_DOWNLOAD_MAX_BYTES without announcing its size; cut off"
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
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail * st.f_frsize)
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

/// Everything one bucket's attempt needs besides the client.
#[derive(Debug, Clone, Copy)]
pub struct FetchOptions {
    /// Retries of each request, and of each part.
    pub retry: Retry,
    pub progress: Progress,
    pub limits: DownloadLimits,
    /// When the whole download gives up (systemd is never asked for time past it).
    pub deadline: tokio::time::Instant,
}

/// The bytes received so far, for the progress lines (shared by the parts).
#[derive(Default)]
struct Meter {
    received: AtomicU64,
    /// 0 while unknown.
    total: AtomicU64,
}

impl Meter {
    fn add(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }
}

/// How much more start-up time to ask systemd for after `every` in which `delta` bytes arrived:
/// none when nothing arrived or less than the minimum rate (a peer trickling bytes must not
/// keep the start job alive), and never past the download's deadline.
pub fn extension(
    delta: u64,
    every: Duration,
    min_rate: u64,
    extend_by: Duration,
    until_deadline: Duration,
) -> Option<Duration> {
    let rate = delta as f64 / every.as_secs_f64().max(0.001);
    if delta == 0 || rate < min_rate as f64 || until_deadline.is_zero() {
        return None;
    }
    Some(extend_by.min(until_deadline))
}

/// Run `work`, logging progress every `progress.every` and extending systemd's start timeout
/// while bytes arrive fast enough.
async fn with_progress<T>(
    work: impl std::future::Future<Output = T>,
    meter: &Meter,
    opts: &FetchOptions,
    url: &str,
) -> T {
    tokio::pin!(work);
    let every = opts.progress.every;
    let started = Instant::now();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut last = 0u64;
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = tick.tick() => {}
        }
        let received = meter.received.load(Ordering::Relaxed);
        let total = meter.total.load(Ordering::Relaxed);
        let delta = received.saturating_sub(last);
        last = received;
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let percent = if total > 0 {
            format!("{:.0}%", received as f64 * 100.0 / total as f64)
        } else {
            "?%".into()
        };
        tracing::info!(
            url,
            received_mib = format!("{:.1}", mib(received)),
            total_mib = if total > 0 {
                format!("{:.1}", mib(total))
            } else {
                "?".into()
            },
            percent,
            rate_mib_s = format!("{:.1}", mib(received) / secs),
            "downloading the agent"
        );
        let left = opts
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        match extension(
            delta,
            every,
            opts.limits.min_rate,
            opts.progress.extend_by,
            left,
        ) {
            Some(by) => {
                crate::notify::notify(&format!(
                    "EXTEND_TIMEOUT_USEC={}\nSTATUS=downloading the agent: {percent}",
                    by.as_micros()
                ));
            }
            None => {
                crate::notify::status(&format!(
                    "downloading the agent: {percent}, {delta} bytes in the last {every:?}"
                ));
            }
        }
    }
}

/// Refuse an object larger than the cap or than the free space, before writing.
fn check_size(
    total: u64,
    tmp: &Path,
    url: &str,
    limits: &DownloadLimits,
) -> Result<(), SourceError> {
    if total > limits.max_bytes {
        return Err(SourceError::TooLarge {
            url: url.to_string(),
            size: Some(total),
            max: limits.max_bytes,
        });
    }
    if let Some(dir) = tmp.parent() {
        if let Some(available) = free_space(dir) {
            if available < total {
                return Err(SourceError::NoSpace {
                    dir: dir.to_path_buf(),
                    needed: total,
                    available,
                });
            }
        }
    }
    Ok(())
}

/// The byte ranges of an object of `total` bytes, in rounds of one part per connection. The
/// last rounds are small: from the end, one round of 1 MiB parts (or of the part size, when
/// smaller), then rounds that double up to `part_bytes`; the rest is even rounds of at most
/// `part_bytes` (a multiple of the connections, so that every connection has work until the
/// end, when the parts stay at least that floor). Why: the MD5 is computed over the contiguous
/// prefix as it grows, so whatever arrived beyond the first unfinished part is hashed only once
/// that part is done. With a round of even 7.5 MB parts last, a 300 MB download's hashing
/// thread still had ~52 MB to hash after the last byte arrived (~90 ms, README, Benchmarks);
/// with small parts last it has one round of them, and each earlier round's leftover is hashed
/// while the next round (at least half as large) arrives.
pub fn plan_parts(total: u64, part_bytes: u64, parallelism: u32) -> Vec<std::ops::Range<u64>> {
    const LAST_PART: u64 = 1 << 20;
    if total == 0 {
        return Vec::new();
    }
    let conns = u64::from(parallelism.max(1));
    let cap = part_bytes.max(1);
    let floor = LAST_PART.min(cap);
    // The tail's part sizes, last part first.
    let mut tail = Vec::new();
    let mut left = total;
    let mut size = floor;
    while size < cap && left > conns * size {
        tail.extend(std::iter::repeat_n(size, conns as usize));
        left -= conns * size;
        size = (size * 2).min(cap);
    }
    // The rest: a multiple of the connections when the parts stay at least the floor.
    let mut sizes = Vec::new();
    if left > 0 {
        let n = left.div_ceil(cap).div_ceil(conns) * conns;
        let even = left.div_ceil(n);
        let len = if even >= floor { even } else { floor };
        let mut at = 0;
        while at < left {
            sizes.push(len.min(left - at));
            at += len;
        }
    }
    sizes.extend(tail.into_iter().rev());
    let mut at = 0;
    sizes
        .into_iter()
        .map(|len| {
            at += len;
            at - len..at
        })
        .collect()
}

/// Stream `resp` (a whole object, in order) into `file` from its start, hashing on the way.
async fn stream_whole(
    mut resp: Response,
    (file, tmp): (&File, &Path),
    meter: &Meter,
    limits: &DownloadLimits,
) -> Result<(String, u64), SourceError> {
    let local = |what: &str, source| SourceError::Local {
        path: tmp.to_path_buf(),
        what: what.to_string(),
        source,
    };
    meter.received.store(0, Ordering::Relaxed);
    meter
        .total
        .store(resp.content_length.unwrap_or(0), Ordering::Relaxed);
    if let Some(len) = resp.content_length {
        check_size(len, tmp, &resp.url(), limits)?;
    }
    // Emptied first, so an earlier attempt's bytes do not count against the free space.
    let mut file = file.try_clone().map_err(|e| local("opening", e))?;
    file.set_len(0)
        .and_then(|()| file.rewind())
        .map_err(|e| local("emptying", e))?;
    let mut sink = Sink::start(file).map_err(|e| local("starting the hashing thread for", e))?;
    while let Some(data) = resp.chunk().await? {
        if resp.received > limits.max_bytes {
            // Without a Content-Length nothing else stops an endless body.
            return Err(SourceError::TooLarge {
                url: resp.url(),
                size: None,
                max: limits.max_bytes,
            });
        }
        meter.add(data.len() as u64);
        if !sink.push(data) {
            break; // the thread stopped on a write error, which `finish` returns
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

/// How far each part has been written, shared with the thread that hashes the file's
/// contiguous prefix as it grows.
struct PrefixState {
    parts: Vec<std::ops::Range<u64>>,
    /// Bytes written of each part (each part is written in order from its start).
    written: Vec<u64>,
    /// The first part not written to its end.
    frontier: usize,
    /// Where the prefix ended when the thread was last woken.
    woken_at: u64,
    /// The download gave up: the thread stops.
    abort: bool,
}

impl PrefixState {
    fn new(parts: Vec<std::ops::Range<u64>>) -> PrefixState {
        PrefixState {
            written: vec![0; parts.len()],
            parts,
            frontier: 0,
            woken_at: 0,
            abort: false,
        }
    }

    fn total(&self) -> u64 {
        self.parts.last().map_or(0, |p| p.end)
    }

    /// Where the file's contiguous written prefix ends.
    fn contiguous(&mut self) -> u64 {
        while let Some(p) = self.parts.get(self.frontier) {
            let end = p.start + self.written[self.frontier];
            if end < p.end {
                return end;
            }
            self.frontier += 1;
        }
        self.total()
    }

    /// `n` more bytes of `part` written: whether the hashing thread is to be woken, which is
    /// when the prefix grew by a read's worth since it last was, or reached the end (not at
    /// every piece received: at a 20 MB/s per-connection cap pieces are ~16 KiB TLS records,
    /// and a wake-up per piece cost a 300 MB download ~0.3 s of CPU, tests/bench.sh).
    fn advance(&mut self, part: usize, n: u64) -> bool {
        self.written[part] += n;
        if part != self.frontier {
            return false;
        }
        let end = self.contiguous();
        let wake = end - self.woken_at >= HASH_READ as u64 || end == self.total();
        if wake {
            self.woken_at = end;
        }
        wake
    }
}

/// The MD5 of the parts' file, computed in order by a thread that reads (`pread`, from the page
/// cache) whatever contiguous prefix the parts have written so far: memory stays one read
/// buffer whatever the size and the number of parts, and the hashing overlaps the download.
struct Prefix {
    state: Arc<(Mutex<PrefixState>, Condvar)>,
    worker: Option<JoinHandle<std::io::Result<Md5>>>,
}

/// The size of the hashing thread's reads.
const HASH_READ: usize = 1 << 20;

impl Prefix {
    fn start(file: File, parts: Vec<std::ops::Range<u64>>) -> std::io::Result<Prefix> {
        let state = PrefixState::new(parts);
        let total = state.total();
        let state = Arc::new((Mutex::new(state), Condvar::new()));
        let shared = state.clone();
        let worker = std::thread::Builder::new()
            .name("agent-download-md5".into())
            .spawn(move || {
                use std::os::unix::fs::FileExt;
                let (lock, cv) = &*shared;
                let mut md5 = Md5::new();
                let mut buf = vec![0u8; HASH_READ];
                let mut hashed = 0u64;
                while hashed < total {
                    let ready = {
                        let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
                        loop {
                            if st.abort {
                                return Err(std::io::Error::other("download abandoned"));
                            }
                            let contiguous = st.contiguous();
                            if contiguous > hashed {
                                break contiguous;
                            }
                            st = cv.wait(st).unwrap_or_else(|e| e.into_inner());
                        }
                    };
                    while hashed < ready {
                        let n = (ready - hashed).min(HASH_READ as u64) as usize;
                        file.read_exact_at(&mut buf[..n], hashed)?;
                        md5.update(&buf[..n]);
                        hashed += n as u64;
                    }
                }
                Ok(md5)
            })?;
        Ok(Prefix {
            state,
            worker: Some(worker),
        })
    }

    fn written(&self, part: usize) -> u64 {
        self.state
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .written[part]
    }

    fn advance(&self, part: usize, n: u64) {
        let (lock, cv) = &*self.state;
        if lock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .advance(part, n)
        {
            cv.notify_one();
        }
    }

    /// Every part written: the digest of the whole file.
    fn finish(mut self) -> std::io::Result<Md5> {
        match self.worker.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) | None => Err(std::io::Error::other("the hashing thread panicked")),
        }
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            let (lock, cv) = &*self.state;
            lock.lock().unwrap_or_else(|e| e.into_inner()).abort = true;
            cv.notify_all();
            let _ = worker.join();
        }
    }
}

/// A 206 that is not the range asked for (or of another object size) cannot be used.
fn wrong_range(resp: &Response, want: (u64, u64, u64)) -> Option<SourceError> {
    let (first, last, total) = want;
    match resp.content_range {
        Some((f, l, Some(t))) if resp.status == 206 && f == first && l == last && t == total => {
            None
        }
        _ => Some(SourceError::Http(HttpError {
            method: "GET",
            url: resp.url(),
            kind: HttpKind::Invalid,
            detail: format!(
                "asked for bytes {first}-{last} of {total}, the server answered HTTP {} with Content-Range {:?}",
                resp.status, resp.content_range
            ),
            attempts: 1,
        })),
    }
}

/// One part into its place in the file: resumed after what it already wrote on a retry, with
/// its own retry budget, on the worker's kept connection (`slot`) when it has one. `first` is
/// the response of the object's first request (an open range from 0), which gives part 0
/// without a request of its own.
#[allow(clippy::too_many_arguments)]
async fn fetch_part(
    client: &Client,
    url: &str,
    etag: Option<&str>,
    (index, range, total): (usize, std::ops::Range<u64>, u64),
    first: Option<Response>,
    (file, tmp): (&File, &Path),
    (prefix, slot): (&Prefix, &Mutex<Option<Conn>>),
    (meter, retry): (&Meter, Retry),
) -> Result<(), SourceError> {
    use std::os::unix::fs::FileExt;
    let first = std::sync::Mutex::new(first);
    let what = format!("agent download (bytes {}-{})", range.start, range.end - 1);
    let range = &range;
    with_retries(retry, &what, || {
        let pre = first.lock().unwrap_or_else(|e| e.into_inner()).take();
        async move {
            let mut pos = range.start + prefix.written(index);
            // Taken for this attempt; given back only after a body read to its end.
            let mut conn = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            let (mut resp, bounded) = match pre {
                Some(r) => (r, false),
                None => {
                    let mut headers = vec![("range", format!("bytes={pos}-{}", range.end - 1))];
                    if let Some(tag) = etag {
                        headers.push(("if-match", tag.to_string()));
                    }
                    let h: Vec<(&'static str, &str)> =
                        headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    let resp = client
                        .request_on(&mut conn, hyper::Method::GET, url, &h)
                        .await?
                        .success()?;
                    if let Some(e) = wrong_range(&resp, (pos, range.end - 1, total)) {
                        return Err(e);
                    }
                    (resp, true)
                }
            };
            while pos < range.end {
                let Some(data) = resp.chunk().await? else {
                    return Err(SourceError::Http(HttpError {
                        method: "GET",
                        url: url.to_string(),
                        kind: HttpKind::Interrupted,
                        detail: format!(
                            "the body ended at byte {pos} of part {}-{}",
                            range.start,
                            range.end - 1
                        ),
                        attempts: 1,
                    }));
                };
                let take = (data.len() as u64).min(range.end - pos) as usize;
                file.write_all_at(&data[..take], pos)
                    .map_err(|source| SourceError::Local {
                        path: tmp.to_path_buf(),
                        what: "writing".into(),
                        source,
                    })?;
                pos += take as u64;
                prefix.advance(index, take as u64);
                meter.add(take as u64);
            }
            // The body's end (nothing more: its length was the range's), which makes the
            // connection ready for the worker's next part. The part is complete either way: a
            // hitch here only costs the connection.
            if bounded && matches!(resp.chunk().await, Ok(None)) {
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = conn;
            }
            Ok(())
        }
    })
    .await
}

/// Download `url` into `file`: an open range request first; a 206 with the object's size is
/// split into parts fetched in parallel (each written at its offset, the MD5 computed over the
/// contiguous prefix as it grows), anything else (the server ignores `Range`, or no size) is
/// one stream. Returns the MD5 and the size.
async fn fetch_into(
    client: &Client,
    url: &str,
    (file, tmp): (&File, &Path),
    meter: &Meter,
    opts: &FetchOptions,
) -> Result<(String, u64), SourceError> {
    let first = with_retries(opts.retry, "agent download", || async {
        client
            .request(hyper::Method::GET, url, &[("range", "bytes=0-")])
            .await?
            .success()
    })
    .await?;
    let total = match (first.status, first.content_range) {
        (206, Some((0, _, Some(total)))) if total > 0 => total,
        _ => {
            // One stream: this answer, then (on a retry) plain GETs.
            tracing::debug!(
                url,
                status = first.status,
                "one stream (no usable range answer)"
            );
            let first = std::sync::Mutex::new(Some(first));
            return with_retries(opts.retry, "agent download", || {
                let pre = first.lock().unwrap_or_else(|e| e.into_inner()).take();
                async move {
                    let resp = match pre {
                        Some(r) => r,
                        None => client.get(url).await?,
                    };
                    stream_whole(resp, (file, tmp), meter, &opts.limits).await
                }
            })
            .await;
        }
    };
    check_size(total, tmp, url, &opts.limits)?;
    meter.total.store(total, Ordering::Relaxed);
    let parts = plan_parts(total, opts.limits.part_bytes, opts.limits.parallelism);
    tracing::debug!(
        url,
        total,
        parts = parts.len(),
        parallelism = opts.limits.parallelism,
        "ranged download"
    );
    let local = |what: &str, source| SourceError::Local {
        path: tmp.to_path_buf(),
        what: what.to_string(),
        source,
    };
    let reader = file.try_clone().map_err(|e| local("opening", e))?;
    let prefix = Prefix::start(reader, parts.clone())
        .map_err(|e| local("starting the hashing thread for", e))?;
    let etag = first.etag.clone();
    let first = Mutex::new(Some(first));
    // `parallelism` workers, each taking the next part in order (so every connection has work
    // until the last part is taken) on a connection it keeps from one part to the next.
    let next = AtomicUsize::new(0);
    let workers = (0..(opts.limits.parallelism as usize).min(parts.len())).map(|_| async {
        let slot = Mutex::new(None);
        loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            let Some(range) = parts.get(index).cloned() else {
                return Ok::<(), SourceError>(());
            };
            let pre = match index {
                0 => first.lock().unwrap_or_else(|e| e.into_inner()).take(),
                _ => None,
            };
            fetch_part(
                client,
                url,
                etag.as_deref(),
                (index, range, total),
                pre,
                (file, tmp),
                (&prefix, &slot),
                (meter, opts.retry),
            )
            .await?;
        }
    });
    futures_util::future::try_join_all(workers).await?;
    let waited = Instant::now();
    let md5 = prefix.finish().map_err(|e| local("reading back", e))?;
    tracing::debug!(
        hash_wait_ms = waited.elapsed().as_millis() as u64,
        "MD5 of the last bytes"
    );
    Ok((hex(&md5.finalize()), total))
}

/// Download `source` to `dest`: the MD5 first, then the tarball, verified, renamed into place.
pub async fn from_source(
    client: &Client,
    opts: &FetchOptions,
    source: &Source,
    dest: &Path,
) -> Result<Fetched, SourceError> {
    let md5_url = source.md5.as_str();
    let body = with_retries(opts.retry, "checksum download", move || async move {
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
    let meter = Meter::default();
    let url = source.tarball.as_str();
    let (actual, bytes) = {
        let file = tmp.file();
        let work = fetch_into(client, url, (file, tmp_path.as_path()), &meter, opts);
        with_progress(work, &meter, opts, url).await?
    };
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
        let opts = FetchOptions {
            retry: Retry {
                attempts: 1,
                backoff: Duration::from_millis(1),
            },
            progress: Progress {
                every: Duration::from_millis(100),
                extend_by: Duration::from_secs(1),
            },
            limits: test_limits(),
            deadline: tokio::time::Instant::now() + Duration::from_secs(60),
        };
        let mut fetched = None;
        let text = crate::testing::capture_logs(async {
            fetched = Some(from_source(&client, &opts, &source, &dest).await);
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

    fn test_limits() -> DownloadLimits {
        DownloadLimits {
            deadline: Duration::from_secs(60),
            min_rate: 0,
            min_rate_window: Duration::from_secs(60),
            max_bytes: 1 << 30,
            part_bytes: 8 << 20,
            parallelism: 8,
        }
    }

    #[test]
    fn parts_come_in_rounds_over_the_connections_and_end_small() {
        let mib = 1u64 << 20;
        let lens =
            |p: &[std::ops::Range<u64>]| p.iter().map(|r| r.end - r.start).collect::<Vec<_>>();
        // 40 MB over 8 connections: a round of even parts, then rounds of 2 MiB and 1 MiB.
        let p = plan_parts(40_000_000, 8 * mib, 8);
        assert_eq!(p.len(), 24);
        let l = lens(&p);
        assert!(
            l[..8].iter().all(|&n| n == l[0] && n > mib && n <= 2 * mib),
            "{l:?}"
        );
        assert!(l[8..16].iter().all(|&n| n == 2 * mib), "{l:?}");
        assert!(l[16..].iter().all(|&n| n == mib), "{l:?}");
        // 300 MB: even rounds of at most 8 MiB (a multiple of 8 parts: 29 would leave 3
        // connections idle), then rounds of 4, 2 and 1 MiB.
        let p = plan_parts(300_000_000, 8 * mib, 8);
        assert_eq!(p.len(), 56);
        let l = lens(&p);
        assert!(
            l[..32].iter().all(|&n| n <= 8 * mib && n > 7 * mib),
            "{l:?}"
        );
        for (round, len) in [(4, 4 * mib), (5, 2 * mib), (6, mib)] {
            assert!(
                l[round * 8..round * 8 + 8].iter().all(|&n| n == len),
                "{l:?}"
            );
        }
        // With one connection the tail still ends small (nothing is left to hash at the end
        // either way, but the plan does not depend on it).
        let l = lens(&plan_parts(20 * mib, 8 * mib, 1));
        assert_eq!(l.last(), Some(&mib), "{l:?}");
        // Small objects: parts of at least 1 MiB, so up to 1 MiB is one stream.
        assert_eq!(plan_parts(1 << 20, 8 * mib, 8), vec![0..1 << 20]);
        assert_eq!(plan_parts(3 * mib, 8 * mib, 8).len(), 3);
        assert_eq!(plan_parts(4 * mib, 8 * mib, 2).len(), 4);
        assert_eq!(plan_parts(3 * mib, 8 * mib, 2).len(), 3);
        // A part size below 1 MiB is taken as given.
        assert_eq!(plan_parts(1000, 256, 2).len(), 4);
        assert_eq!(plan_parts(5, 8 * mib, 8), vec![0..5]);
        // Contiguous, covering, in order, never empty.
        for (total, part, n) in [
            (12_345_678, 1 << 20, 3),
            (10, 3, 64),
            (7 * mib, mib, 7),
            (1_414_656, 8 * mib, 8),
        ] {
            let p = plan_parts(total, part, n);
            assert_eq!(p[0].start, 0);
            assert_eq!(p.last().unwrap().end, total);
            assert!(p.windows(2).all(|w| w[0].end == w[1].start));
            assert!(p.iter().all(|r| r.end > r.start), "{p:?}");
        }
    }

    #[test]
    fn the_prefix_ends_at_the_first_unfinished_part_and_wakes_the_hasher_sparingly() {
        let at = |written: &[u64]| {
            let mut st = PrefixState::new(vec![0..10, 10..20, 20..25]);
            st.written = written.to_vec();
            st.contiguous()
        };
        assert_eq!(at(&[0, 10, 5]), 0);
        assert_eq!(at(&[4, 10, 5]), 4);
        assert_eq!(at(&[10, 3, 5]), 13);
        assert_eq!(at(&[10, 10, 5]), 25);
        // Woken when the prefix grew by a read's worth, or reached the end; never for bytes
        // beyond the first unfinished part.
        let read = HASH_READ as u64;
        let mut st = PrefixState::new(vec![0..3 * read, 3 * read..4 * read + 1]);
        assert!(!st.advance(1, read), "beyond the prefix");
        assert!(!st.advance(0, read / 2));
        assert!(st.advance(0, read / 2), "a read's worth");
        assert!(!st.advance(0, read - 1));
        assert!(
            st.advance(0, read + 1),
            "part 0 done: the prefix jumps past part 1's bytes"
        );
        assert!(!st.advance(1, 0));
        assert!(st.advance(1, 1), "the end");
        assert_eq!(st.contiguous(), 4 * read + 1);
    }

    /// Parts written out of order (last first) are hashed in order, and the digest is the
    /// whole file's.
    #[test]
    fn the_prefix_hash_is_the_whole_files_in_order() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let file = File::options()
            .create(true)
            .read(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let body: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let parts = plan_parts(body.len() as u64, 1 << 20, 3);
        let prefix = Prefix::start(file.try_clone().unwrap(), parts.clone()).unwrap();
        for (i, r) in parts.iter().enumerate().rev() {
            for piece in body[r.start as usize..r.end as usize].chunks(100_000) {
                let at = r.start + prefix.written(i);
                file.write_all_at(piece, at).unwrap();
                prefix.advance(i, piece.len() as u64);
            }
        }
        let md5 = prefix.finish().unwrap();
        assert_eq!(hex(&md5.finalize()), hex(&Md5::digest(&body)));
        // Abandoned before the end: the thread stops, the drop returns.
        let prefix = Prefix::start(file.try_clone().unwrap(), parts).unwrap();
        prefix.advance(0, 10);
        drop(prefix);
    }

    #[test]
    fn systemd_is_asked_for_time_only_while_bytes_arrive_fast_enough() {
        let s = Duration::from_secs;
        // Bytes at 1 MB/s over 5 s: 120 s more.
        assert_eq!(
            extension(5_000_000, s(5), 1024, s(120), s(3000)),
            Some(s(120))
        );
        // No bytes, or a trickle under the minimum rate: nothing.
        assert_eq!(extension(0, s(5), 0, s(120), s(3000)), None);
        assert_eq!(extension(5, s(5), 1024, s(120), s(3000)), None);
        // Never past the deadline.
        assert_eq!(extension(5_000_000, s(5), 1024, s(120), s(30)), Some(s(30)));
        assert_eq!(extension(5_000_000, s(5), 1024, s(120), s(0)), None);
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
