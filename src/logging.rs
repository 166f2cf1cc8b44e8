//! Logging: `tracing` to the console and to `/var/log/ecs/ecs-init.log`, rotated hourly with 24
//! files kept, in the existing tool's line format `level=<lvl> time=<RFC3339 UTC> msg="…"`.
//! Level from `ECS_LOGLEVEL` (debug, info, warn, error, crit, none).
//!
//! Under systemd the console is the journal, which stamps every line with its own time and
//! priority. There the console lines carry neither our time nor our level; the level becomes
//! the sd-daemon priority prefix (`<3>` … `<7>`, see sd-daemon(3)) that journald turns into the
//! entry's PRIORITY, so `journalctl -u ecs -p warning` works. The file log keeps its format.
use crate::time::rfc3339;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::{format::Writer, FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{filter::LevelFilter, filter::Targets, Layer};

/// How many rotated files are kept.
pub const KEEP: usize = 24;

/// `ECS_LOGLEVEL` → a level filter (unknown values: info).
pub fn level_from(value: Option<&str>) -> LevelFilter {
    match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        Some("debug") => LevelFilter::DEBUG,
        Some("warn") => LevelFilter::WARN,
        Some("error" | "crit") => LevelFilter::ERROR,
        Some("none") => LevelFilter::OFF,
        _ => LevelFilter::INFO,
    }
}

/// What console lines look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleFormat {
    /// `level=info time=<RFC 3339 UTC> msg="…" key=value` (terminals, upstart, the file log).
    Logfmt,
    /// stderr is systemd's journal stream: `<6>… key=value`, no time, the level as the
    /// sd-daemon priority prefix.
    Journal,
}

impl ConsoleFormat {
    /// The format for this process's stderr, given the value of `JOURNAL_STREAM`. systemd sets
    /// it to `<device>:<inode>` of the stream it connected stdout/stderr to; per its protocol
    /// (systemd.exec(5)) a program writes for the journal only when its stderr is still that
    /// stream, not when the variable was merely inherited (`amazon-ecs-init … 2>file` from a
    /// shell started by a service).
    pub fn detect(journal_stream: Option<&str>) -> ConsoleFormat {
        ConsoleFormat::for_stream(journal_stream, stream_id(io::stderr().as_fd()))
    }

    /// `journal_stream` (`JOURNAL_STREAM`'s value) against the (device, inode) of stderr.
    fn for_stream(journal_stream: Option<&str>, stderr: Option<(u64, u64)>) -> ConsoleFormat {
        let parsed = journal_stream.and_then(|v| {
            let (dev, ino) = v.trim().split_once(':')?;
            Some((dev.parse::<u64>().ok()?, ino.parse::<u64>().ok()?))
        });
        match (parsed, stderr) {
            (Some(journal), Some(stderr)) if journal == stderr => ConsoleFormat::Journal,
            _ => ConsoleFormat::Logfmt,
        }
    }
}

/// (device, inode) of an open file descriptor; `None` when it cannot be examined (closed).
fn stream_id(fd: BorrowedFd<'_>) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = File::from(fd.try_clone_to_owned().ok()?).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

/// One log line (with its trailing newline) in `format`. `fields` is `""` or ` key=value …`.
pub fn format_line(
    format: ConsoleFormat,
    level: Level,
    now: SystemTime,
    msg: &str,
    fields: &str,
) -> String {
    match format {
        ConsoleFormat::Logfmt => {
            let name = match level {
                Level::ERROR => "error",
                Level::WARN => "warn",
                Level::INFO => "info",
                Level::DEBUG => "debug",
                Level::TRACE => "trace",
            };
            format!("level={name} time={} msg={msg:?}{fields}\n", rfc3339(now))
        }
        ConsoleFormat::Journal => {
            // syslog priorities: 3 err, 4 warning, 6 info, 7 debug.
            let prefix = match level {
                Level::ERROR => "<3>",
                Level::WARN => "<4>",
                Level::INFO => "<6>",
                Level::DEBUG | Level::TRACE => "<7>",
            };
            // journald makes one entry per line and reads the prefix of each line: give every
            // line of a multi-line message the same priority.
            let mut line = String::with_capacity(prefix.len() + msg.len() + fields.len() + 1);
            for (i, part) in msg.split('\n').enumerate() {
                if i > 0 {
                    line.push('\n');
                }
                line.push_str(prefix);
                line.push_str(part);
            }
            if msg.is_empty() {
                line.push_str(fields.trim_start());
            } else {
                line.push_str(fields);
            }
            line.push('\n');
            line
        }
    }
}

/// Values that must never appear in a log line (secret config values), set once by [`init`].
static SECRETS: OnceLock<Vec<String>> = OnceLock::new();

/// Secret values shorter than this are not scrubbed (they would blank out ordinary words).
const MIN_SECRET_LEN: usize = 4;

/// `text` with every known secret value replaced by the redaction marker. Applied to every log
/// line, console and file, whatever path produced it (an error quoting the environment, a
/// runtime's message echoing a value).
pub fn scrub(text: &str) -> std::borrow::Cow<'_, str> {
    scrub_with(text, SECRETS.get().map(Vec::as_slice).unwrap_or_default())
}

fn scrub_with<'a>(text: &'a str, secrets: &[String]) -> std::borrow::Cow<'a, str> {
    let mut out = std::borrow::Cow::Borrowed(text);
    for secret in secrets {
        if out.contains(secret.as_str()) {
            out = std::borrow::Cow::Owned(out.replace(secret.as_str(), ecs_runtime::REDACTED));
        }
    }
    out
}

/// Install the console and file loggers, scrubbing `secrets` from every line. The file logger
/// is skipped (with a console warning) when its directory cannot be created or the file is
/// unsafe (a symlink), so read-only actions still work as a normal user. `console` is the
/// console's line format; the file always gets [`ConsoleFormat::Logfmt`].
pub fn init(
    log_file: Option<&Path>,
    level: LevelFilter,
    secrets: Vec<String>,
    console: ConsoleFormat,
) {
    let mut secrets: Vec<String> = secrets
        .into_iter()
        .filter(|s| s.len() >= MIN_SECRET_LEN)
        .collect();
    // Longest first, so a secret containing another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let _ = SECRETS.set(secrets);
    // Our own crates log at the chosen level; dependencies only warnings. Besides noise, this
    // keeps secrets out of the log: HTTP/gRPC clients log request bodies (which carry the
    // agent's environment) at debug level.
    let level = Targets::new()
        .with_default(level.min(LevelFilter::WARN))
        .with_targets(
            [
                "amazon_ecs_init",
                "ecs_runtime",
                "ecs_firewall",
                "ecs_host",
                "ecs_volume_plugin",
            ]
            .map(|t| (t, level)),
        );
    let console = tracing_subscriber::fmt::layer()
        .event_format(LineFormat(console))
        .with_writer(|| Console)
        .with_filter(level.clone());
    let file = log_file.map(HourlyFile::open).transpose().map(|f| {
        f.map(|f| {
            let shared = Arc::new(Mutex::new(f));
            tracing_subscriber::fmt::layer()
                .event_format(LineFormat(ConsoleFormat::Logfmt))
                .with_writer(move || FileWriter(shared.clone()))
                .with_filter(level)
        })
    });
    let file_error = file.as_ref().err().map(|e| e.to_string());
    let _ = tracing_subscriber::registry()
        .with(console)
        .with(file.ok().flatten())
        .try_init();
    if let Some(err) = file_error {
        tracing::warn!(file = ?log_file, error = %err, "not logging to file");
    }
}

/// Formats events with [`format_line`].
struct LineFormat(ConsoleFormat);

struct Fields {
    msg: String,
    rest: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let v = format!("{value:?}");
        self.push(field.name(), &v);
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field.name(), value);
    }
}

impl Fields {
    fn push(&mut self, name: &str, value: &str) {
        if name == "message" {
            self.msg = value.to_string();
        } else if value.is_empty() || value.contains([' ', '"', '=']) {
            let _ = write!(self.rest, " {name}={value:?}");
        } else {
            let _ = write!(self.rest, " {name}={value}");
        }
    }
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = Fields {
            msg: String::new(),
            rest: String::new(),
        };
        event.record(&mut fields);
        w.write_str(&format_line(
            self.0,
            *event.metadata().level(),
            SystemTime::now(),
            &fields.msg,
            &fields.rest,
        ))
    }
}

/// Mode of the launcher's log files (they may quote configuration).
pub const LOG_MODE: u32 = 0o640;

/// `ecs-init.log`, renamed to `ecs-init.log.YYYY-MM-DD-HH` (the hour of its lines) at the first
/// write of a later hour; at most [`KEEP`] rotated files are kept.
///
/// Several launcher processes write the same log (the supervising `start`, `stop`, `post-stop`,
/// `status`…), so rotation is decided from the file at the path, not from what this process
/// remembers: every write takes an exclusive `flock` on `ecs-init.log.lock`, follows a rotation
/// another process made (reopening the path), rotates when the file's last write (its mtime)
/// was in an earlier hour, writes, and releases the lock. A rotated file is never overwritten.
/// Files are opened without following symlinks and without blocking (the directory is writable
/// by the agent). The lock is waited for at most [`LOG_LOCK_WAIT`]: whoever holds it for
/// longer (the agent can open the lock file too) gets the line appended without the lock (no
/// rotation then), and later lines do not wait at all until the lock is free again, so a
/// stuck lock never holds up the supervisor (nor its answer to SIGTERM).
pub struct HourlyFile {
    path: PathBuf,
    file: File,
    lock: File,
    /// The last write could not take the lock in time.
    contended: bool,
}

/// The longest a log line waits for `ecs-init.log.lock`.
pub const LOG_LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

fn hour_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 3600)
        .unwrap_or(0)
}

/// `2026-11-27T17:00:00Z` → `2026-11-27-17`.
fn hour_suffix(hour: u64) -> String {
    let stamp = rfc3339(UNIX_EPOCH + std::time::Duration::from_secs(hour * 3600));
    format!("{}-{}", &stamp[..10], &stamp[11..13])
}

/// Holds an exclusive `flock` until dropped.
struct Locked<'a>(&'a File);

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        ecs_host::files::unlock(self.0);
    }
}

impl HourlyFile {
    pub fn open(path: &Path) -> io::Result<HourlyFile> {
        if let Some(dir) = path.parent() {
            ecs_host::files::ensure_dir(dir, 0o755)?;
        }
        let lock_path = PathBuf::from(format!("{}.lock", path.display()));
        Ok(HourlyFile {
            path: path.to_path_buf(),
            file: ecs_host::files::open_append(path, LOG_MODE)?,
            lock: ecs_host::files::open_append(&lock_path, LOG_MODE)?,
            contended: false,
        })
    }

    /// Reopen the path when the file there is no longer ours (another process rotated it).
    fn follow_rotation(&mut self) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let ours = self.file.metadata()?;
        let current = std::fs::symlink_metadata(&self.path);
        let same = matches!(&current, Ok(m) if m.ino() == ours.ino() && m.dev() == ours.dev());
        if !same {
            self.file = ecs_host::files::open_append(&self.path, LOG_MODE)?;
        }
        Ok(())
    }

    /// Rename the current file after the hour of its lines (never over an existing file) and
    /// start a new one.
    fn rotate(&mut self, hour: u64) -> io::Result<()> {
        let base = format!("{}.{}", self.path.display(), hour_suffix(hour));
        let mut rotated = PathBuf::from(&base);
        let mut n = 1;
        while std::fs::symlink_metadata(&rotated).is_ok() {
            rotated = PathBuf::from(format!("{base}.{n}"));
            n += 1;
        }
        std::fs::rename(&self.path, &rotated)?;
        self.file = ecs_host::files::open_append(&self.path, LOG_MODE)?;
        self.prune()
    }

    fn prune(&self) -> io::Result<()> {
        let (Some(dir), Some(name)) = (self.path.parent(), self.path.file_name()) else {
            return Ok(());
        };
        let prefix = format!("{}.", name.to_string_lossy());
        let mut rotated: Vec<PathBuf> = std::fs::read_dir(dir)?
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with(&prefix) && !n.ends_with(".lock")
            })
            .map(|e| e.path())
            .collect();
        rotated.sort();
        let excess = rotated.len().saturating_sub(KEEP);
        for old in &rotated[..excess] {
            let _ = std::fs::remove_file(old);
        }
        Ok(())
    }

    /// Write one record at `now`, rotating first when the file holds an earlier hour.
    pub fn write_at(&mut self, now: SystemTime, buf: &[u8]) -> io::Result<()> {
        let lock = self.lock.try_clone()?;
        let wait = if self.contended {
            std::time::Duration::ZERO
        } else {
            LOG_LOCK_WAIT
        };
        if !ecs_host::files::lock_within(&lock, wait)? {
            if !self.contended {
                self.contended = true;
                // Not through tracing: this is the file layer's own writer.
                eprintln!(
                    "level=warn msg=\"{}.lock is held by another process; logging without it (no rotation) until it is free\"",
                    self.path.display()
                );
            }
            self.file.write_all(buf)?;
            return self.file.set_modified(now);
        }
        self.contended = false;
        let _locked = Locked(&lock);
        self.follow_rotation()?;
        let meta = self.file.metadata()?;
        let last = meta.modified().map(hour_of).unwrap_or(0);
        if meta.len() > 0 && last < hour_of(now) {
            self.rotate(last)?;
        }
        self.file.write_all(buf)?;
        // The file's mtime is the time of its last line (the clock this writer was given).
        self.file.set_modified(now)
    }
}

/// stderr, scrubbed.
struct Console;

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let line = String::from_utf8_lossy(buf);
        io::stderr().write_all(scrub(&line).as_bytes())?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

struct FileWriter(Arc<Mutex<HourlyFile>>);

impl Write for FileWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut f = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let line = String::from_utf8_lossy(buf);
        f.write_at(SystemTime::now(), scrub(&line).as_bytes())?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn secrets_are_scrubbed_from_any_line() {
        let secrets = vec!["wJalrXUtnFEMI/K7MDENG".to_string(), "tok-123".to_string()];
        let line = "level=error msg=\"create failed: env AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG, token tok-123\"";
        let out = scrub_with(line, &secrets);
        assert!(!out.contains("wJalr") && !out.contains("tok-123"), "{out}");
        assert_eq!(out.matches(ecs_runtime::REDACTED).count(), 2, "{out}");
        assert!(matches!(
            scrub_with("nothing here", &secrets),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn levels() {
        assert_eq!(level_from(Some("crit")), LevelFilter::ERROR);
        assert_eq!(level_from(Some("none")), LevelFilter::OFF);
        assert_eq!(level_from(Some("DEBUG")), LevelFilter::DEBUG);
        assert_eq!(level_from(None), LevelFilter::INFO);
    }

    const T: u64 = 1_795_798_800; // 2026-11-27T17:00:00Z

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn logfmt_lines_keep_the_existing_format() {
        let line = format_line(
            ConsoleFormat::Logfmt,
            Level::WARN,
            at(T),
            "agent exited; restarting it",
            " exit_code=3",
        );
        assert_eq!(
            line,
            "level=warn time=2026-11-27T17:00:00Z msg=\"agent exited; restarting it\" exit_code=3\n"
        );
        let line = format_line(ConsoleFormat::Logfmt, Level::INFO, at(T), "two\nlines", "");
        assert_eq!(
            line,
            "level=info time=2026-11-27T17:00:00Z msg=\"two\\nlines\"\n"
        );
    }

    #[test]
    fn journal_lines_carry_a_priority_and_no_time_or_level() {
        let cases = [
            (Level::ERROR, "<3>"),
            (Level::WARN, "<4>"),
            (Level::INFO, "<6>"),
            (Level::DEBUG, "<7>"),
            (Level::TRACE, "<7>"),
        ];
        for (level, prefix) in cases {
            let line = format_line(
                ConsoleFormat::Journal,
                level,
                at(T),
                "agent container started",
                " container=ecs-agent runtime=docker",
            );
            assert_eq!(
                line,
                format!("{prefix}agent container started container=ecs-agent runtime=docker\n")
            );
            assert!(!line.contains("level=") && !line.contains(" time=") && !line.contains("2026"));
        }
    }

    #[test]
    fn journal_lines_prefix_every_line_of_a_message() {
        let line = format_line(
            ConsoleFormat::Journal,
            Level::ERROR,
            at(T),
            "first\nsecond",
            " key=v",
        );
        assert_eq!(line, "<3>first\n<3>second key=v\n");
        // No message: the fields alone, without a leading blank.
        let line = format_line(ConsoleFormat::Journal, Level::INFO, at(T), "", " key=v");
        assert_eq!(line, "<6>key=v\n");
    }

    #[test]
    fn journal_format_only_when_stderr_is_the_journal_stream() {
        let stderr = Some((64769, 123456));
        let detect = |v: Option<&str>, s| ConsoleFormat::for_stream(v, s);
        assert_eq!(detect(Some("64769:123456"), stderr), ConsoleFormat::Journal);
        assert_eq!(
            detect(Some(" 64769:123456\n"), stderr),
            ConsoleFormat::Journal
        );
        // Inherited by a process whose stderr goes elsewhere: another inode or device.
        assert_eq!(detect(Some("64769:123457"), stderr), ConsoleFormat::Logfmt);
        assert_eq!(detect(Some("64770:123456"), stderr), ConsoleFormat::Logfmt);
        // Unset, malformed, or stderr closed.
        assert_eq!(detect(None, stderr), ConsoleFormat::Logfmt);
        for bad in ["", "64769", "64769:", ":123456", "a:b", "64769:123456:1"] {
            assert_eq!(detect(Some(bad), stderr), ConsoleFormat::Logfmt, "{bad:?}");
        }
        assert_eq!(detect(Some("64769:123456"), None), ConsoleFormat::Logfmt);
    }

    #[test]
    fn stream_id_is_the_device_and_inode_of_the_descriptor() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("stream")).unwrap();
        let meta = file.metadata().unwrap();
        let id = stream_id(file.as_fd()).unwrap();
        assert_eq!(id, (meta.dev(), meta.ino()));
        let value = format!("{}:{}", id.0, id.1);
        assert_eq!(
            ConsoleFormat::for_stream(Some(&value), stream_id(file.as_fd())),
            ConsoleFormat::Journal
        );
        let other = File::create(dir.path().join("other")).unwrap();
        assert_eq!(
            ConsoleFormat::for_stream(Some(&value), stream_id(other.as_fd())),
            ConsoleFormat::Logfmt
        );
    }

    #[test]
    fn rotates_hourly_and_keeps_24() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ecs-init.log");
        let mut f = HourlyFile::open(&path).unwrap();
        let base = UNIX_EPOCH + Duration::from_secs(1_795_800_000);
        for h in 0..30u64 {
            let t = base + Duration::from_secs(h * 3600);
            f.write_at(t, format!("line {h}\n").as_bytes()).unwrap();
            f.write_at(t, b"again\n").unwrap();
        }
        // The log, its lock file and the rotated files.
        let rotated = std::fs::read_dir(dir.path()).unwrap().count() - 2;
        assert_eq!(rotated, KEEP);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "line 29\nagain\n");
        let newest = dir.path().join(format!(
            "ecs-init.log.{}",
            hour_suffix(hour_of(base + Duration::from_secs(28 * 3600)))
        ));
        assert_eq!(std::fs::read_to_string(newest).unwrap(), "line 28\nagain\n");
    }

    /// Two writers with their own descriptors (as two launcher processes have): a quiet hour,
    /// then the second one rotates; the first one must follow, and no line may be lost.
    #[test]
    fn two_writers_rotate_without_losing_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ecs-init.log");
        let mut start = HourlyFile::open(&path).unwrap();
        let mut stop = HourlyFile::open(&path).unwrap();
        let h = |n: u64| UNIX_EPOCH + Duration::from_secs(1_795_800_000 + n * 3600);
        start.write_at(h(0), b"start 1\n").unwrap();
        start.write_at(h(0), b"start 2\n").unwrap();
        stop.write_at(h(2), b"stop\n").unwrap();
        start.write_at(h(2), b"start 3\n").unwrap();
        start.write_at(h(3), b"start 4\n").unwrap();
        stop.write_at(h(3), b"stop again\n").unwrap();
        let read = |n: u64| {
            std::fs::read_to_string(
                dir.path()
                    .join(format!("ecs-init.log.{}", hour_suffix(hour_of(h(n))))),
            )
            .unwrap()
        };
        assert_eq!(read(0), "start 1\nstart 2\n");
        assert_eq!(read(2), "stop\nstart 3\n");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "start 4\nstop again\n"
        );
    }

    #[test]
    fn a_planted_symlink_is_refused_and_modes_are_explicit() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let path = dir.path().join("ecs-init.log");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let err = HourlyFile::open(&path).err().expect("refused");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        std::fs::remove_file(&path).unwrap();
        let mut f = HourlyFile::open(&path).unwrap();
        f.write_at(SystemTime::now(), b"x\n").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, LOG_MODE);
    }

    /// Issue 20 (1): a lock on `ecs-init.log.lock` held forever by another process (the
    /// agent can open it) delays one line by at most `LOG_LOCK_WAIT` and the next ones not at
    /// all; every line still reaches the file. Before, each write waited in a blocking
    /// `LOCK_EX` for as long as the lock was held.
    #[test]
    fn a_stuck_log_lock_delays_nothing_and_loses_no_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ecs-init.log");
        let mut f = HourlyFile::open(&path).unwrap();
        let holder =
            ecs_host::files::open_rw(&dir.path().join("ecs-init.log.lock"), 0o640).unwrap();
        assert!(ecs_host::files::try_lock(&holder).unwrap());
        let t0 = std::time::Instant::now();
        for i in 0..50 {
            f.write_at(at(T + i), format!("line {i}\n").as_bytes())
                .unwrap();
        }
        let took = t0.elapsed();
        assert!(took < Duration::from_millis(900), "{took:?}");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 50, "{text}");
        // Once the lock is free again, writes take it (and rotate) as before.
        drop(holder);
        f.write_at(at(T + 3600), b"next hour\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "next hour\n");
    }
}
