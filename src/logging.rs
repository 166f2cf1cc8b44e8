//! Logging: `tracing` to the console and to `/var/log/ecs/ecs-init.log`, rotated hourly with 24
//! files kept, in the existing tool's line format `level=<lvl> time=<RFC3339 UTC> msg="…"`.
//! Level from `ECS_LOGLEVEL` (debug, info, warn, error, crit, none).
use crate::time::rfc3339;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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

/// Install the console and file loggers. The file logger is skipped (with a console warning)
/// when its directory cannot be created, so read-only actions still work as a normal user.
pub fn init(log_file: Option<&Path>, level: LevelFilter) {
    // Our own crates log at the chosen level; dependencies only warnings. Besides noise, this
    // keeps secrets out of the log: HTTP/gRPC clients log request bodies (which carry the
    // agent's environment) at debug level.
    let level = Targets::new()
        .with_default(level.min(LevelFilter::WARN))
        .with_targets(["amazon_ecs_init", "ecs_backends", "ecs_firewall"].map(|t| (t, level)));
    let console = tracing_subscriber::fmt::layer()
        .event_format(LogFmt)
        .with_writer(io::stderr)
        .with_filter(level.clone());
    let file = log_file.map(HourlyFile::open).transpose().map(|f| {
        f.map(|f| {
            let shared = Arc::new(Mutex::new(f));
            tracing_subscriber::fmt::layer()
                .event_format(LogFmt)
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

/// `level=info time=… msg="…" key=value …`
struct LogFmt;

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

impl<S, N> FormatEvent<S, N> for LogFmt
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
        let level = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warn",
            Level::INFO => "info",
            Level::DEBUG => "debug",
            Level::TRACE => "trace",
        };
        let mut fields = Fields {
            msg: String::new(),
            rest: String::new(),
        };
        event.record(&mut fields);
        writeln!(
            w,
            "level={level} time={} msg={:?}{}",
            rfc3339(SystemTime::now()),
            fields.msg,
            fields.rest
        )
    }
}

/// `ecs-init.log`, renamed to `ecs-init.log.YYYY-MM-DD-HH` when the hour changes; at most
/// [`KEEP`] rotated files are kept.
pub struct HourlyFile {
    path: PathBuf,
    file: File,
    hour: u64,
}

fn hour_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 3600)
        .unwrap_or(0)
}

impl HourlyFile {
    pub fn open(path: &Path) -> io::Result<HourlyFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        // A file left from an earlier hour is rotated on the first write.
        let hour = file
            .metadata()
            .and_then(|m| m.modified())
            .map(hour_of)
            .unwrap_or_else(|_| hour_of(SystemTime::now()));
        Ok(HourlyFile {
            path: path.to_path_buf(),
            file,
            hour,
        })
    }

    fn rotate_if_needed(&mut self, now: SystemTime) -> io::Result<()> {
        let hour = hour_of(now);
        if hour == self.hour {
            return Ok(());
        }
        let stamp = rfc3339(UNIX_EPOCH + std::time::Duration::from_secs(self.hour * 3600));
        // "2026-11-27T17:00:00Z" → "2026-11-27-17"
        let suffix = format!("{}-{}", &stamp[..10], &stamp[11..13]);
        let rotated = PathBuf::from(format!("{}.{suffix}", self.path.display()));
        if self.file.metadata()?.len() > 0 {
            std::fs::rename(&self.path, &rotated)?;
        }
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.hour = hour;
        self.prune()
    }

    fn prune(&self) -> io::Result<()> {
        let (Some(dir), Some(name)) = (self.path.parent(), self.path.file_name()) else {
            return Ok(());
        };
        let prefix = format!("{}.", name.to_string_lossy());
        let mut rotated: Vec<PathBuf> = std::fs::read_dir(dir)?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect();
        rotated.sort();
        let excess = rotated.len().saturating_sub(KEEP);
        for old in &rotated[..excess] {
            let _ = std::fs::remove_file(old);
        }
        Ok(())
    }

    /// Write one record, rotating first when the hour has changed.
    pub fn write_at(&mut self, now: SystemTime, buf: &[u8]) -> io::Result<()> {
        self.rotate_if_needed(now)?;
        self.file.write_all(buf)
    }
}

struct FileWriter(Arc<Mutex<HourlyFile>>);

impl Write for FileWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut f = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f.write_at(SystemTime::now(), buf)?;
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
    fn levels() {
        assert_eq!(level_from(Some("crit")), LevelFilter::ERROR);
        assert_eq!(level_from(Some("none")), LevelFilter::OFF);
        assert_eq!(level_from(Some("DEBUG")), LevelFilter::DEBUG);
        assert_eq!(level_from(None), LevelFilter::INFO);
    }

    #[test]
    fn rotates_hourly_and_keeps_24() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ecs-init.log");
        let mut f = HourlyFile::open(&path).unwrap();
        let base = UNIX_EPOCH + Duration::from_secs(1_795_800_000);
        f.hour = hour_of(base);
        for h in 0..30u64 {
            let t = base + Duration::from_secs(h * 3600);
            f.write_at(t, format!("line {h}\n").as_bytes()).unwrap();
            f.write_at(t, b"again\n").unwrap();
        }
        let rotated = std::fs::read_dir(dir.path()).unwrap().count() - 1;
        assert_eq!(rotated, KEEP);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "line 29\nagain\n");
        let newest = dir.path().join(format!("ecs-init.log.{}", {
            let s = rfc3339(base + Duration::from_secs(28 * 3600));
            format!("{}-{}", &s[..10], &s[11..13])
        }));
        assert_eq!(std::fs::read_to_string(newest).unwrap(), "line 28\nagain\n");
    }
}
