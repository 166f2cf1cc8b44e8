//! Automatic rollback of a failed agent update (README, "Updates").
//!
//! The agent image that last ran healthy is *known good*: its ID is recorded in the
//! [`Ledger`] and the runtime keeps it under [`KNOWN_GOOD_IMAGE`] (a Docker tag, a containerd
//! image record), so no prune or collection removes it while the agent runs something else.
//! An image loaded by an agent exit 42 is *on probation* until it runs healthy. When it fails
//! [`Policy::failed_starts`] starts in a row (an exit other than 0, 5 or 42), or is not healthy
//! [`Policy::timeout`] after the update, the agent reference is pointed back at the known-good
//! image (or, when that image is gone, the cached tarball is loaded again, as `reload-cache`
//! does), the update's image ID is remembered as refused, and the agent restarts at once. A
//! later exit 42 naming a refused image is not loaded.
//!
//! Healthy = the run lasted [`Policy::healthy_after`] (60 s, the backoff reset's threshold) and
//! the agent answered introspection (`GET /v1/metadata` → 200 on 127.0.0.1:51678). Introspection
//! alone is not enough: the agent serves it only after registering with ECS, and a bad update
//! may register and still crash soon after; time alone is not enough either: an agent that hangs
//! (never registers) would count as healthy after a minute and never be rolled back.
//!
//! The ledger lives in `/var/lib/ecs-init` (root-only, outside every bind of the agent
//! container): `/var/lib/ecs` is the agent's to write. A ledger that is not a plain file owned
//! by this user and writable only by it, in a directory likewise, is not trusted (a warning, and
//! the launcher acts as if there were none).
//!
//! The decisions are pure functions of the ledger ([`Ledger::after_exit`] & co.), unit-tested
//! below; [`Guard`] does the runtime and file work around them for the supervisor.
use ecs_host::Record;
use ecs_runtime::{Runtime, RuntimeError};
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::agent::AGENT_IMAGE;
use crate::cache::{self, CacheError, Loaded, TarballImage};
use crate::paths::Paths;

/// The launcher's own name for the known-good agent image (Docker tag; containerd image
/// record, familiar and full name).
pub const KNOWN_GOOD_IMAGE: &str = "amazon/amazon-ecs-agent:ecs-init-known-good";

/// How many refused update images (and image versions) the ledger keeps.
const KEEP: usize = 16;

/// The automatic rollback of a failed agent update (`ECS_INIT_AGENT_ROLLBACK` & co.).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollbackSettings {
    pub enabled: bool,
    /// Consecutive failed starts of an updated agent that roll it back (at least 1).
    pub failed_starts: u32,
    /// An updated agent not healthy this long after the update is rolled back.
    pub timeout: Duration,
    /// A run this long resets the backoff; this long and answering introspection is healthy.
    pub healthy_after: Duration,
}

/// The thresholds (settings `ECS_INIT_ROLLBACK_FAILED_STARTS`,
/// `ECS_INIT_ROLLBACK_TIMEOUT_SECONDS`, `ECS_INIT_AGENT_HEALTHY_SECONDS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub failed_starts: u32,
    pub timeout: Duration,
    pub healthy_after: Duration,
}

impl From<&RollbackSettings> for Policy {
    fn from(s: &RollbackSettings) -> Policy {
        Policy {
            failed_starts: s.failed_starts.max(1),
            timeout: s.timeout,
            healthy_after: s.healthy_after,
        }
    }
}

/// An agent image: its ID and the version it is named by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub id: String,
    pub version: String,
}

impl fmt::Display for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = self.id.strip_prefix("sha256:").unwrap_or(&self.id);
        let short = &short[..short.len().min(12)];
        if self.version.is_empty() {
            write!(f, "image {short}")
        } else {
            write!(f, "{} (image {short})", self.version)
        }
    }
}

impl From<TarballImage> for Image {
    fn from(t: TarballImage) -> Image {
        Image {
            id: t.image_id,
            version: t.version,
        }
    }
}

/// An update on probation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probation {
    pub image: Image,
    /// The desired tarball it came from.
    pub tarball: String,
    /// When it was loaded (seconds since the epoch).
    pub since: u64,
    /// Consecutive failed starts so far.
    pub failures: u32,
}

/// Why an update is rolled back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// `starts` consecutive starts failed, the last with `last_exit`.
    FailedStarts { starts: u32, last_exit: i64 },
    /// Not healthy within the timeout.
    NotHealthy { within: Duration },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::FailedStarts { starts, last_exit } => write!(
                f,
                "{starts} consecutive starts failed (last exit code {last_exit})"
            ),
            Reason::NotHealthy { within } => write!(
                f,
                "not healthy within {} s of the update",
                within.as_secs_f64()
            ),
        }
    }
}

/// The last rollback, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastRollback {
    pub at: u64,
    pub from: Image,
    /// What the agent went back to (`None` when the rollback failed).
    pub to: Option<Image>,
    pub reason: String,
    /// `ok`, or why it failed.
    pub outcome: String,
}

/// What the launcher knows of agent images (the root-only record).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    pub known_good: Option<Image>,
    pub probation: Option<Probation>,
    pub last_rollback: Option<LastRollback>,
    /// Image IDs of rolled-back updates, oldest first.
    pub refused: Vec<String>,
    /// The image the agent was last started from.
    pub running: Option<String>,
    /// Versions of images seen loaded (ID → version).
    pub versions: BTreeMap<String, String>,
}

/// What to do after an agent exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to do for the rollback (today's handling of the exit).
    Keep,
    /// Roll the update on probation back.
    RollBack(Reason),
}

impl Ledger {
    /// Exit 42 loaded `image` from `tarball` at `now`: on probation (no failures yet).
    pub fn start_probation(&mut self, image: Image, tarball: &Path, now: u64) {
        self.note_version(&image);
        self.probation = Some(Probation {
            image,
            tarball: tarball.display().to_string(),
            since: now,
            failures: 0,
        });
    }

    /// The agent is being started from image `id`. A probation for another image ends (the
    /// agent image was changed by hand, e.g. `reload-cache`); returns whether it ended.
    pub fn started(&mut self, id: &str) -> bool {
        self.running = Some(id.to_string());
        match &self.probation {
            Some(p) if p.image.id != id => {
                self.probation = None;
                true
            }
            _ => false,
        }
    }

    /// The agent ran healthy from `image`: it is the known-good one and its probation is over.
    pub fn healthy(&mut self, image: Image) {
        if self
            .probation
            .as_ref()
            .is_some_and(|p| p.image.id == image.id)
        {
            self.probation = None;
        }
        self.note_version(&image);
        self.known_good = Some(image);
    }

    /// The agent exited with `code` (`None`: the runtime lost track of it) at `now`. Only a
    /// start of the image on probation counts; 0, 5 and 42 are never failures (5 is terminal
    /// and obeyed, 42 is the next update).
    pub fn after_exit(&mut self, code: Option<i64>, policy: &Policy, now: u64) -> Verdict {
        let running = self.running.clone();
        let Some(p) = self.probation.as_mut() else {
            return Verdict::Keep;
        };
        if running.as_deref() != Some(p.image.id.as_str()) {
            return Verdict::Keep;
        }
        let code = match code {
            Some(0 | 5 | 42) => return Verdict::Keep,
            Some(c) => c,
            // The runtime lost the container: not the agent's failure.
            None => return Verdict::Keep,
        };
        p.failures += 1;
        if p.failures >= policy.failed_starts {
            return Verdict::RollBack(Reason::FailedStarts {
                starts: p.failures,
                last_exit: code,
            });
        }
        if now.saturating_sub(p.since) >= policy.timeout.as_secs() {
            return Verdict::RollBack(Reason::NotHealthy {
                within: policy.timeout,
            });
        }
        Verdict::Keep
    }

    /// When (seconds since the epoch) the update on probation is overdue, given a run that
    /// started at `run_started`: the timeout after the update, but never before the run had its
    /// chance to become healthy (a launcher down for longer than the timeout does not roll back
    /// the moment it starts again).
    pub fn overdue_at(&self, policy: &Policy, run_started: u64) -> Option<u64> {
        let p = self.probation.as_ref()?;
        if self.running.as_deref() != Some(p.image.id.as_str()) {
            return None;
        }
        let grace = policy.healthy_after.as_secs() + HEALTH_GRACE.as_secs();
        Some((p.since + policy.timeout.as_secs().max(1)).max(run_started + grace.max(1)))
    }

    /// Was the update image `id` rolled back before?
    pub fn is_refused(&self, id: &str) -> bool {
        self.refused.iter().any(|r| r == id)
    }

    /// Roll back: the probation's image is refused from now on, the probation ends, and the
    /// rollback is remembered. `to`: what the agent went back to (`Err`: why it could not).
    pub fn rolled_back(&mut self, reason: &Reason, to: Result<Image, String>, now: u64) {
        let Some(p) = self.probation.take() else {
            return;
        };
        if !self.is_refused(&p.image.id) {
            self.refused.push(p.image.id.clone());
        }
        let excess = self.refused.len().saturating_sub(KEEP);
        self.refused.drain(..excess);
        let (to, outcome) = match to {
            Ok(image) => (Some(image), "ok".to_string()),
            Err(why) => (None, why),
        };
        self.last_rollback = Some(LastRollback {
            at: now,
            from: p.image,
            to,
            reason: reason.to_string(),
            outcome,
        });
    }

    pub fn note_version(&mut self, image: &Image) {
        self.versions
            .insert(image.id.clone(), image.version.clone());
        if self.versions.len() > KEEP {
            let keep: Vec<&str> = [
                self.known_good.as_ref().map(|i| i.id.as_str()),
                self.probation.as_ref().map(|p| p.image.id.as_str()),
                self.running.as_deref(),
                Some(image.id.as_str()),
            ]
            .into_iter()
            .flatten()
            .collect();
            let drop: Vec<String> = self
                .versions
                .keys()
                .filter(|k| !keep.contains(&k.as_str()))
                .take(self.versions.len() - KEEP)
                .cloned()
                .collect();
            for k in drop {
                self.versions.remove(&k);
            }
        }
    }

    /// The image `id` with the version the ledger knows for it.
    pub fn image(&self, id: &str) -> Image {
        Image {
            id: id.to_string(),
            version: self.versions.get(id).cloned().unwrap_or_default(),
        }
    }

    fn to_record(&self) -> Record {
        let mut r = Record::new(
            "agent-images",
            "amazon-ecs-init's automatic rollback (the agent cannot write here)",
        );
        let mut put = |k: &str, v: String| {
            r.extras.insert(k.to_string(), v);
        };
        if let Some(i) = &self.known_good {
            put("known_good", i.id.clone());
            put("known_good_version", i.version.clone());
        }
        if let Some(p) = &self.probation {
            put("probation", p.image.id.clone());
            put("probation_version", p.image.version.clone());
            put("probation_tarball", p.tarball.clone());
            put("probation_since", p.since.to_string());
            put("probation_failures", p.failures.to_string());
        }
        if let Some(l) = &self.last_rollback {
            put("rollback_at", l.at.to_string());
            put("rollback_from", l.from.id.clone());
            put("rollback_from_version", l.from.version.clone());
            if let Some(to) = &l.to {
                put("rollback_to", to.id.clone());
                put("rollback_to_version", to.version.clone());
            }
            put("rollback_reason", l.reason.clone());
            put("rollback_outcome", l.outcome.clone());
        }
        if !self.refused.is_empty() {
            put("refused", self.refused.join(" "));
        }
        if let Some(id) = &self.running {
            put("running", id.clone());
        }
        for (id, v) in &self.versions {
            put(&format!("version.{id}"), v.clone());
        }
        r
    }

    fn from_record(r: &Record) -> Ledger {
        let get = |k: &str| r.extras.get(k).cloned();
        let num = |k: &str| get(k).and_then(|v| v.parse::<u64>().ok());
        let image = |id: &str, version: &str| {
            get(id).map(|id| Image {
                id,
                version: get(version).unwrap_or_default(),
            })
        };
        Ledger {
            known_good: image("known_good", "known_good_version"),
            probation: image("probation", "probation_version").map(|image| Probation {
                image,
                tarball: get("probation_tarball").unwrap_or_default(),
                since: num("probation_since").unwrap_or(0),
                failures: num("probation_failures").unwrap_or(0) as u32,
            }),
            last_rollback: image("rollback_from", "rollback_from_version").map(|from| {
                LastRollback {
                    at: num("rollback_at").unwrap_or(0),
                    from,
                    to: image("rollback_to", "rollback_to_version"),
                    reason: get("rollback_reason").unwrap_or_default(),
                    outcome: get("rollback_outcome").unwrap_or_default(),
                }
            }),
            refused: get("refused")
                .map(|v| v.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
            running: get("running"),
            versions: r
                .extras
                .iter()
                .filter_map(|(k, v)| Some((k.strip_prefix("version.")?.to_string(), v.clone())))
                .collect(),
        }
    }
}

/// How long after [`Policy::healthy_after`] the probe may take before an overdue update is
/// rolled back.
const HEALTH_GRACE: Duration = Duration::from_secs(5);

/// Is `meta` owned by this user and writable by nobody else? (Root-only state.)
fn owned_and_private(meta: &std::fs::Metadata) -> Result<(), String> {
    let euid = rustix::process::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(format!("owned by uid {}, not {euid}", meta.uid()));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!("mode {mode:04o} lets others write it"));
    }
    Ok(())
}

/// The ledger at `paths`: `Ok(None)` when there is none, `Err` (why) when it is not to be
/// trusted or cannot be read.
pub fn read_ledger(paths: &Paths) -> Result<Option<Ledger>, String> {
    let dir = paths.var_lib_ecs_init.clone();
    let path = paths.agent_images_record();
    let describe = |p: &Path, why: String| format!("{}: {why}", p.display());
    match std::fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(describe(&dir, e.to_string())),
        Ok(m) if !m.file_type().is_dir() => return Err(describe(&dir, "not a directory".into())),
        Ok(m) => owned_and_private(&m).map_err(|w| describe(&dir, w))?,
    }
    let file = match ecs_host::files::open_read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
        Ok(f) => f,
    };
    let meta = file
        .metadata()
        .map_err(|e| describe(&path, e.to_string()))?;
    owned_and_private(&meta).map_err(|w| describe(&path, w))?;
    if meta.nlink() > 1 {
        return Err(describe(&path, "has more than one link".into()));
    }
    let mut text = String::new();
    use std::io::Read;
    file.take(ecs_host::files::caps::RECORD)
        .read_to_string(&mut text)
        .map_err(|e| describe(&path, e.to_string()))?;
    Ok(Some(Ledger::from_record(&Record::parse(&text))))
}

/// The ledger, or an empty one (with a warning when the record is not trusted).
pub fn load_ledger(paths: &Paths) -> Ledger {
    match read_ledger(paths) {
        Ok(l) => l.unwrap_or_default(),
        Err(why) => {
            tracing::warn!(record = %paths.agent_images_record().display(), "not trusting the agent-image record ({why}); starting without it");
            Ledger::default()
        }
    }
}

/// Write the ledger (directory 0700, file 0600).
pub fn save_ledger(paths: &Paths, ledger: &Ledger) -> std::io::Result<()> {
    let dir = paths.var_lib_ecs_init.clone();
    ecs_host::files::ensure_dir(&dir, 0o700)?;
    let meta = std::fs::symlink_metadata(&dir)?;
    if let Err(why) = owned_and_private(&meta) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{}: {why}", dir.display()),
        ));
    }
    ecs_host::files::write_atomic(
        &paths.agent_images_record(),
        ledger.to_record().render().as_bytes(),
        0o600,
    )
}

/// Remember the version of a loaded agent image (pre-start, `reload-cache`).
pub fn note_loaded(paths: &Paths, loaded: &Loaded) {
    let mut ledger = load_ledger(paths);
    ledger.note_version(&Image::from(loaded.image.clone()));
    if let Err(e) = save_ledger(paths, &ledger) {
        tracing::warn!(record = %paths.agent_images_record().display(), error = %e, "could not write the agent-image record");
    }
}

/// Is the agent answering introspection now?
pub trait Probe: Send + Sync {
    fn answers(&self) -> Pin<Box<dyn Future<Output = bool> + Send + '_>>;
}

/// `GET /v1/metadata` on the agent's introspection port answers 200 (the agent serves it only
/// once it has registered with ECS).
pub struct Introspection;

impl Probe for Introspection {
    fn answers(&self) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(async {
            tokio::time::timeout(Duration::from_secs(2), introspection_ok())
                .await
                .unwrap_or(false)
        })
    }
}

async fn introspection_ok() -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", 51678)).await else {
        return false;
    };
    if s.write_all(b"GET /v1/metadata HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
        if buf[..got].contains(&b'\n') {
            break;
        }
    }
    let line = String::from_utf8_lossy(&buf[..got]);
    let mut words = line.split_whitespace();
    words.next().is_some_and(|w| w.starts_with("HTTP/")) && words.next() == Some("200")
}

/// Seconds since the epoch (a function, so the unit tests can run on tokio's paused clock).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    })
}

/// How a watched run of the agent ended.
pub enum Watched {
    /// It exited (or the runtime lost it).
    Exited(Result<i64, RuntimeError>),
    /// It is on probation and was not healthy in time: roll it back (the caller stops it).
    Overdue(Reason),
}

/// What the supervisor should do after the guard's part of an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Handle the exit as without the rollback.
    AsBefore,
    /// The agent image was rolled back: start the agent again at once.
    RolledBack,
}

/// The supervisor's side of the rollback: the runtime and file work around the decisions.
pub struct Guard {
    pub paths: Paths,
    pub policy: Policy,
    pub probe: Arc<dyn Probe>,
    pub clock: Clock,
}

impl Guard {
    pub fn new(paths: Paths, policy: Policy) -> Guard {
        Guard {
            paths,
            policy,
            probe: Arc::new(Introspection),
            clock: system_clock(),
        }
    }

    fn save(&self, ledger: &Ledger) {
        if let Err(e) = save_ledger(&self.paths, ledger) {
            tracing::warn!(record = %self.paths.agent_images_record().display(), error = %e, "could not write the agent-image record");
        }
    }

    /// Before each start: which image the agent starts from.
    pub async fn before_start(&self, runtime: &dyn Runtime) {
        let id = match runtime.image_id(AGENT_IMAGE).await {
            Ok(Some(id)) => id,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "could not read the agent image's ID");
                return;
            }
        };
        let mut ledger = load_ledger(&self.paths);
        if ledger.running.as_deref() == Some(id.as_str()) && ledger.probation.is_none() {
            return;
        }
        if ledger.started(&id) {
            tracing::warn!(image = %ledger.image(&id), "the agent image changed during an update's probation (by hand?); the probation ends");
        }
        self.save(&ledger);
    }

    /// Wait for the agent's exit; meanwhile note when it becomes healthy (then it is known
    /// good, and kept under [`KNOWN_GOOD_IMAGE`]) and end the wait when an update on probation
    /// is overdue.
    pub async fn watch<F>(&self, runtime: &dyn Runtime, wait: F) -> Watched
    where
        F: Future<Output = Result<i64, RuntimeError>>,
    {
        let started = (self.clock)();
        let run_start = tokio::time::Instant::now();
        let overdue = load_ledger(&self.paths).overdue_at(&self.policy, started);
        tokio::pin!(wait);
        let health = self.become_healthy(run_start);
        tokio::pin!(health);
        let mut healthy = false;
        loop {
            let clock = self.clock.clone();
            let deadline = async move {
                match overdue {
                    Some(at) if !healthy => {
                        let left = at.saturating_sub(clock());
                        tokio::time::sleep(Duration::from_secs(left)).await;
                        // The wall clock may have moved differently from the monotonic one.
                        while clock() < at {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                    _ => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                code = &mut wait => return Watched::Exited(code),
                _ = &mut health, if !healthy => {
                    healthy = true;
                    self.healthy(runtime).await;
                }
                _ = deadline => {
                    return Watched::Overdue(Reason::NotHealthy { within: self.policy.timeout });
                }
            }
        }
    }

    /// Resolves once the run has lasted `healthy_after` and the probe answered (asked every
    /// second at first, then less often, up to every 10 s, for an agent that never answers).
    async fn become_healthy(&self, run_start: tokio::time::Instant) {
        tokio::time::sleep_until(run_start + self.policy.healthy_after).await;
        let mut every = ecs_host::Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        while !self.probe.answers().await {
            tokio::time::sleep(every.next_delay()).await;
        }
    }

    /// The agent runs healthy: record its image as known good and keep it under our name.
    async fn healthy(&self, runtime: &dyn Runtime) {
        let mut ledger = load_ledger(&self.paths);
        let Some(id) = ledger.running.clone() else {
            return;
        };
        // Keep the image under our own name; the agent reference must still be this image.
        if let Err(e) = runtime.tag_image(AGENT_IMAGE, KNOWN_GOOD_IMAGE).await {
            tracing::warn!(error = %e, "could not keep the known-good agent image under {KNOWN_GOOD_IMAGE}");
        }
        match runtime.image_id(KNOWN_GOOD_IMAGE).await {
            Ok(Some(kept)) if kept == id => {}
            other => {
                tracing::warn!(image = %ledger.image(&id), found = ?other.ok().flatten(), "the agent reference moved while the agent ran; not recording a known-good image");
                return;
            }
        }
        let image = ledger.image(&id);
        let was_probation = ledger.probation.is_some();
        let changed = ledger.known_good.as_ref() != Some(&image);
        ledger.healthy(image.clone());
        if was_probation && ledger.probation.is_none() {
            tracing::info!(image = %image, "the updated agent runs healthy; it is the known-good agent now");
        } else if changed {
            tracing::info!(image = %image, "the agent runs healthy; known-good agent recorded");
        }
        self.save(&ledger);
    }

    /// Agent exit 42 with the rollback on: refuse a desired tarball that was rolled back
    /// before, else load it and put it on probation.
    pub async fn update(&self, runtime: &dyn Runtime) -> Result<Loaded, CacheError> {
        let mut ledger = load_ledger(&self.paths);
        let tarball = cache::desired_tarball(&self.paths)?;
        let offered = cache::agent_image_in(&tarball).await?;
        if ledger.is_refused(&offered.image_id) {
            let offered = Image::from(offered);
            let known = ledger
                .known_good
                .as_ref()
                .map(|i| i.to_string())
                .unwrap_or_else(|| "the current agent".into());
            let when = ledger
                .last_rollback
                .as_ref()
                .filter(|l| l.from.id == offered.id)
                .map(|l| format!(" at {} ({})", at(l.at), l.reason))
                .unwrap_or_default();
            tracing::warn!(
                tarball = %tarball.display(),
                "refusing the agent update to {offered}: it was rolled back before{when}; the agent keeps running {known}"
            );
            return Err(CacheError::Refused {
                tarball,
                image: offered.to_string(),
            });
        }
        let loaded = cache::load_desired_checked(&self.paths, runtime, &tarball, offered).await?;
        ledger.start_probation(
            Image::from(loaded.image.clone()),
            &loaded.tarball,
            (self.clock)(),
        );
        if let Some(known) = &ledger.known_good {
            tracing::info!(update = %Image::from(loaded.image.clone()), known_good = %known, "agent update on probation until it runs healthy");
        } else {
            tracing::warn!(update = %Image::from(loaded.image.clone()), "agent update on probation, but no known-good agent is recorded: a rollback would load the cached tarball");
        }
        self.save(&ledger);
        Ok(loaded)
    }

    /// After an agent exit (or an overdue probation, `overdue`): count it, and roll back when
    /// the policy says so.
    pub async fn after_exit(
        &self,
        runtime: &dyn Runtime,
        code: Option<i64>,
        overdue: Option<Reason>,
    ) -> After {
        let mut ledger = load_ledger(&self.paths);
        if ledger.probation.is_none() {
            return After::AsBefore;
        }
        let verdict = match overdue {
            Some(reason) => Verdict::RollBack(reason),
            None => ledger.after_exit(code, &self.policy, (self.clock)()),
        };
        let Verdict::RollBack(reason) = verdict else {
            self.save(&ledger);
            return After::AsBefore;
        };
        let from = ledger
            .probation
            .as_ref()
            .map(|p| p.image.clone())
            .expect("on probation");
        let outcome = self.roll_back(runtime, &ledger).await;
        let now = (self.clock)();
        match &outcome {
            Ok(to) => {
                tracing::warn!(
                    "rolled back the agent update to {from}: {reason}; the agent runs {to} again (record {})",
                    self.paths.agent_images_record().display()
                );
            }
            Err(why) => {
                tracing::error!(
                    "the agent update to {from} failed ({reason}) and cannot be rolled back: {why}; restarting it as before"
                );
            }
        }
        let rolled = outcome.is_ok();
        ledger.rolled_back(&reason, outcome, now);
        // The known-good record stays as it is: a tarball's image becomes known good only
        // once it runs healthy.
        if let Some(to) = ledger.last_rollback.as_ref().and_then(|l| l.to.clone()) {
            ledger.note_version(&to);
        }
        self.save(&ledger);
        if rolled {
            After::RolledBack
        } else {
            After::AsBefore
        }
    }

    /// Point the agent reference at the known-good image; when that image is gone, load the
    /// cached tarball (as `reload-cache`). Returns what the agent reference holds now.
    async fn roll_back(&self, runtime: &dyn Runtime, ledger: &Ledger) -> Result<Image, String> {
        let bad = ledger
            .probation
            .as_ref()
            .map(|p| p.image.id.clone())
            .unwrap_or_default();
        let known = ledger.known_good.clone();
        if let Some(known) = &known {
            match runtime.image_id(KNOWN_GOOD_IMAGE).await {
                Ok(Some(id)) if id == known.id => match self.retag(runtime, &known.id).await {
                    Ok(()) => return Ok(known.clone()),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not point the agent image back at the known-good one; loading the cached tarball")
                    }
                },
                Ok(found) => tracing::warn!(
                    known_good = %known, found = ?found,
                    "the known-good agent image is gone from the runtime ({KNOWN_GOOD_IMAGE}); loading the cached tarball {}",
                    self.paths.agent_tarball().display()
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "could not look up the known-good agent image; loading the cached tarball")
                }
            }
        }
        let tarball = self.paths.agent_tarball();
        // The cached tarball must not hold the very update that failed.
        match cache::agent_image_in(&tarball).await {
            Ok(t) if t.image_id == bad => {
                return Err(format!(
                    "the cached tarball {} holds the same image",
                    tarball.display()
                ))
            }
            Ok(_) => {}
            Err(e) => {
                return Err(match known {
                    Some(k) => format!("the known-good {k} is gone and {e}"),
                    None => format!("no known-good agent is recorded and {e}"),
                })
            }
        }
        match cache::reload_cached(&self.paths, runtime).await {
            Ok(loaded) => Ok(Image::from(loaded.image)),
            Err(e) => Err(format!("reloading the cached tarball failed: {e}")),
        }
    }

    async fn retag(&self, runtime: &dyn Runtime, id: &str) -> Result<(), String> {
        runtime
            .tag_image(KNOWN_GOOD_IMAGE, AGENT_IMAGE)
            .await
            .map_err(|e| e.to_string())?;
        match runtime.image_id(AGENT_IMAGE).await {
            Ok(Some(now)) if now == id => Ok(()),
            other => Err(format!(
                "{AGENT_IMAGE} is {:?} after the tag, not {id}",
                other.ok().flatten()
            )),
        }
    }
}

/// Seconds since the epoch as RFC 3339.
fn at(secs: u64) -> String {
    crate::time::rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(secs))
}

/// `status`'s lines about the agent images.
pub fn status_lines(paths: &Paths) -> String {
    let ledger = match read_ledger(paths) {
        Ok(l) => l.unwrap_or_default(),
        Err(why) => return format!("rollback:       record not trusted or unreadable ({why})\n"),
    };
    let mut out = String::new();
    if let Some(id) = &ledger.running {
        out += &format!("agent image:    {} (last started)\n", ledger.image(id));
    }
    out += &match &ledger.known_good {
        Some(k) => format!("known good:     {k} (kept as {KNOWN_GOOD_IMAGE})\n"),
        None => "known good:     none recorded yet\n".to_string(),
    };
    if let Some(p) = &ledger.probation {
        out += &format!(
            "probation:      {} since {}, {} failed start(s)\n",
            p.image,
            at(p.since),
            p.failures
        );
    }
    if let Some(l) = &ledger.last_rollback {
        let to =
            l.to.as_ref()
                .map(|t| t.to_string())
                .unwrap_or_else(|| "nothing".into());
        out += &format!(
            "last rollback:  {} from {} to {to}: {} ({})\n",
            at(l.at),
            l.from,
            l.reason,
            if l.outcome == "ok" {
                "done".to_string()
            } else {
                format!("failed: {}", l.outcome)
            }
        );
    }
    out
}

/// `plan`'s view of the rollback.
pub fn plan(paths: &Paths, settings: &RollbackSettings) -> serde_json::Value {
    serde_json::json!({
        "enabled": settings.enabled,
        "failed_starts": settings.failed_starts,
        "timeout_seconds": settings.timeout.as_secs_f64(),
        "healthy_after_seconds": settings.healthy_after.as_secs_f64(),
        "healthy": "ran healthy_after_seconds without exiting and answered GET /v1/metadata on 127.0.0.1:51678",
        "known_good_reference": KNOWN_GOOD_IMAGE,
        "record": paths.agent_images_record(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(id: &str) -> Image {
        Image {
            id: format!("sha256:{id}"),
            version: id.to_string(),
        }
    }

    fn policy() -> Policy {
        Policy {
            failed_starts: 3,
            timeout: Duration::from_secs(600),
            healthy_after: Duration::from_secs(60),
        }
    }

    fn on_probation() -> Ledger {
        let mut l = Ledger::default();
        l.healthy(img("v1"));
        l.start_probation(img("v2"), Path::new("/c/ecs-agent-v2.tar"), 1000);
        assert!(!l.started("sha256:v2"));
        l
    }

    #[test]
    fn n_consecutive_failures_roll_back() {
        let mut l = on_probation();
        let p = policy();
        assert_eq!(l.after_exit(Some(1), &p, 1001), Verdict::Keep);
        assert_eq!(l.after_exit(Some(139), &p, 1002), Verdict::Keep);
        assert_eq!(
            l.after_exit(Some(1), &p, 1003),
            Verdict::RollBack(Reason::FailedStarts {
                starts: 3,
                last_exit: 1
            })
        );
    }

    #[test]
    fn zero_five_and_42_are_never_failures() {
        let mut l = on_probation();
        let p = policy();
        for code in [0, 5, 42, 5, 0, 42] {
            assert_eq!(l.after_exit(Some(code), &p, 1001), Verdict::Keep);
        }
        assert_eq!(l.probation.as_ref().unwrap().failures, 0);
        // Lost by the runtime: not the agent's failure either.
        assert_eq!(l.after_exit(None, &p, 1001), Verdict::Keep);
        assert_eq!(l.probation.as_ref().unwrap().failures, 0);
    }

    #[test]
    fn a_failure_after_the_timeout_rolls_back_and_healthy_ends_probation() {
        let mut l = on_probation();
        let p = policy();
        assert_eq!(
            l.after_exit(Some(1), &p, 1000 + 600),
            Verdict::RollBack(Reason::NotHealthy {
                within: Duration::from_secs(600)
            })
        );
        let mut l = on_probation();
        l.after_exit(Some(1), &p, 1001);
        l.healthy(img("v2"));
        assert!(l.probation.is_none());
        assert_eq!(l.known_good, Some(img("v2")));
        assert_eq!(l.after_exit(Some(1), &p, 1002), Verdict::Keep);
    }

    #[test]
    fn no_probation_no_rollback_and_another_image_ends_it() {
        let mut l = Ledger::default();
        l.started("sha256:v1");
        assert_eq!(l.after_exit(Some(1), &policy(), 5000), Verdict::Keep);
        // reload-cache by hand during probation: the agent starts from another image.
        let mut l = on_probation();
        assert!(l.started("sha256:v1"));
        assert!(l.probation.is_none());
        assert_eq!(l.after_exit(Some(1), &policy(), 5000), Verdict::Keep);
    }

    #[test]
    fn overdue_gives_each_run_its_chance() {
        let l = on_probation();
        let p = policy();
        // Started right after the update: the timeout after the update.
        assert_eq!(l.overdue_at(&p, 1001), Some(1600));
        // Started long after (the launcher was down): a full healthy window first.
        assert_eq!(l.overdue_at(&p, 5000), Some(5000 + 60 + 5));
        assert_eq!(Ledger::default().overdue_at(&p, 1), None);
    }

    #[test]
    fn rollback_refuses_the_image_and_is_remembered() {
        let mut l = on_probation();
        let reason = Reason::FailedStarts {
            starts: 3,
            last_exit: 1,
        };
        l.rolled_back(&reason, Ok(img("v1")), 2000);
        assert!(l.probation.is_none());
        assert!(l.is_refused("sha256:v2"));
        assert!(!l.is_refused("sha256:v3"));
        let last = l.last_rollback.clone().unwrap();
        assert_eq!(last.from, img("v2"));
        assert_eq!(last.to, Some(img("v1")));
        assert_eq!(last.outcome, "ok");
        assert_eq!(
            last.reason,
            "3 consecutive starts failed (last exit code 1)"
        );
        // Bounded.
        for i in 0..40 {
            l.start_probation(img(&format!("x{i}")), Path::new("/t"), 1);
            l.started(&format!("sha256:x{i}"));
            l.rolled_back(&reason, Err("gone".into()), 3);
        }
        assert_eq!(l.refused.len(), KEEP);
        assert!(l.is_refused("sha256:x39"));
        assert!(l.versions.len() <= KEEP + 1);
    }

    #[test]
    fn the_ledger_round_trips_through_its_record() {
        let mut l = on_probation();
        l.after_exit(Some(1), &policy(), 1001);
        let text = l.to_record().render();
        assert_eq!(Ledger::from_record(&Record::parse(&text)), l);
        l.rolled_back(
            &Reason::NotHealthy {
                within: Duration::from_secs(600),
            },
            Err("no tarball".into()),
            3000,
        );
        let text = l.to_record().render();
        assert_eq!(Ledger::from_record(&Record::parse(&text)), l);
    }

    #[test]
    fn records_others_could_write_are_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        assert_eq!(read_ledger(&paths), Ok(None));
        let l = on_probation();
        save_ledger(&paths, &l).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&paths.var_lib_ecs_init.clone()), 0o700);
        assert_eq!(mode(&paths.agent_images_record()), 0o600);
        assert_eq!(read_ledger(&paths), Ok(Some(l.clone())));
        // A record anyone may write: not trusted.
        let rec = paths.agent_images_record();
        std::fs::set_permissions(&rec, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = read_ledger(&paths).unwrap_err();
        assert!(err.contains("lets others write it"), "{err}");
        assert_eq!(load_ledger(&paths), Ledger::default());
        std::fs::set_permissions(&rec, std::fs::Permissions::from_mode(0o600)).unwrap();
        // A directory others may write into: not trusted.
        let d = paths.var_lib_ecs_init.clone();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(read_ledger(&paths).is_err());
        assert!(save_ledger(&paths, &l).is_err(), "not written there either");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        // A symlink in the record's place (to a file the agent could write): not followed.
        let forged = dir.path().join("forged");
        std::fs::write(&forged, Ledger::default().to_record().render()).unwrap();
        std::fs::set_permissions(&forged, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::remove_file(&rec).unwrap();
        std::os::unix::fs::symlink(&forged, &rec).unwrap();
        let err = read_ledger(&paths).unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
    }

    #[test]
    fn the_record_is_outside_every_bind_of_the_agent() {
        let settings = crate::settings::Settings::resolve(
            Default::default(),
            Paths::under("/"),
            Default::default(),
        );
        let exec = ecs_host::exec::FakeExec::new(&[], |_, _| unreachable!());
        let spec = crate::compose::spec_of(&settings, &exec).0;
        let dir = settings.paths.var_lib_ecs_init.clone();
        for m in &spec.mounts {
            let src = m.source.as_path();
            assert!(
                !dir.starts_with(src) && !src.starts_with(&dir),
                "{} is bound into the agent",
                m.source.display()
            );
        }
    }

    #[test]
    fn images_are_named_by_version_and_short_id() {
        assert_eq!(
            Image {
                id: "sha256:0123456789abcdef".into(),
                version: "1.2.3".into()
            }
            .to_string(),
            "1.2.3 (image 0123456789ab)"
        );
    }
}
