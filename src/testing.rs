//! A recording, scripted [`Runtime`] for unit tests of the launcher's decisions (never used
//! to claim a daemon-facing feature works: those are tested against the real daemons).
use async_trait::async_trait;
use ecs_runtime::{AgentSpec, ContainerState, Result, Runtime, RuntimeError, RuntimeInfo};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Default)]
struct State {
    calls: Vec<(&'static str, Instant)>,
    exits: Vec<(i64, u64)>,
    run_index: usize,
    fail_run: bool,
    image_present: bool,
    image_id: String,
    keep_image_on_load: bool,
    loaded: Vec<PathBuf>,
    /// After this many runs, `ping` fails (the runtime went away for good).
    answers_until_runs: Option<usize>,
    /// The next `run` fails as if the connection broke mid-create (leaving a container).
    lose_on_next_run: bool,
    /// The container of that name, if any.
    container: Option<ContainerState>,
    created: usize,
    /// `load_image` takes this long (a slow or stuck runtime).
    load_takes: Option<Duration>,
    /// `logs_tail` answers lines of this length.
    log_line_len: Option<usize>,
    /// Images under references other than the agent's (reference → image ID).
    tags: std::collections::BTreeMap<String, String>,
}

#[derive(Default)]
pub struct FakeRuntime(Mutex<State>);

impl FakeRuntime {
    /// Each run of the agent lasts `secs` and exits with `code`, in order.
    pub fn with_exits(exits: &[(i64, u64)]) -> FakeRuntime {
        let rt = FakeRuntime::default();
        rt.0.lock().unwrap().exits = exits.to_vec();
        rt
    }
    pub fn load_takes(&self, d: Duration) {
        self.0.lock().unwrap().load_takes = Some(d);
    }
    pub fn log_lines_of(&self, len: usize) {
        self.0.lock().unwrap().log_line_len = Some(len);
    }
    pub fn fail_run(&self) {
        self.0.lock().unwrap().fail_run = true;
    }
    pub fn stop_answering_after_runs(&self, runs: usize) {
        self.0.lock().unwrap().answers_until_runs = Some(runs);
    }
    pub fn lose_runtime_on_next_run(&self) {
        self.0.lock().unwrap().lose_on_next_run = true;
    }
    /// An `ecs-agent` container some other tool created.
    pub fn put_foreign_container(&self, image: &str) {
        self.0.lock().unwrap().container = Some(ContainerState {
            id: "f0reign".into(),
            name: "ecs-agent".into(),
            image: image.into(),
            status: "exited".into(),
            labels: [("creator".to_string(), "someone".to_string())].into(),
            ..Default::default()
        });
    }
    /// When each `run` happened.
    pub fn run_times(&self) -> Vec<Instant> {
        let s = self.0.lock().unwrap();
        s.calls
            .iter()
            .filter(|(c, _)| *c == "run")
            .map(|(_, t)| *t)
            .collect()
    }
    fn new_container(s: &mut State) {
        s.created += 1;
        s.container = Some(ContainerState {
            id: format!("c{}", s.created),
            name: "ecs-agent".into(),
            image: crate::agent::AGENT_IMAGE.into(),
            status: "running".into(),
            running: true,
            ..Default::default()
        });
    }
    pub fn keep_image_on_load(&self) {
        self.0.lock().unwrap().keep_image_on_load = true;
    }
    /// Remove every name of the image `id` (`docker rmi -f`).
    pub fn remove_image(&self, id: &str) {
        let mut s = self.0.lock().unwrap();
        s.tags.retain(|_, v| v != id);
        if s.image_id == id {
            s.image_present = false;
        }
    }
    /// The ID the agent reference has now.
    pub fn agent_image_id(&self) -> Option<String> {
        let s = self.0.lock().unwrap();
        s.image_present.then(|| s.image_id.clone())
    }
    pub fn set_image_present(&self, present: bool) {
        self.0.lock().unwrap().image_present = present;
    }
    fn record(&self, what: &'static str) {
        self.0.lock().unwrap().calls.push((what, Instant::now()));
    }
    pub fn calls_of(&self, what: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|(c, _)| *c == what)
            .count()
    }
    pub fn runs(&self) -> usize {
        self.calls_of("run")
    }
    pub fn loaded(&self) -> Vec<PathBuf> {
        self.0.lock().unwrap().loaded.clone()
    }
    /// Time between consecutive `run` calls.
    pub fn gaps_between_runs(&self) -> Vec<Duration> {
        let s = self.0.lock().unwrap();
        let runs: Vec<Instant> = s
            .calls
            .iter()
            .filter(|(c, _)| *c == "run")
            .map(|(_, t)| *t)
            .collect();
        runs.windows(2).map(|w| w[1] - w[0]).collect()
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    fn name(&self) -> &'static str {
        "fake"
    }
    async fn ping(&self) -> Result<RuntimeInfo> {
        self.record("ping");
        let runs = self.runs();
        if self
            .0
            .lock()
            .unwrap()
            .answers_until_runs
            .is_some_and(|n| runs >= n)
        {
            return Err(RuntimeError::Connect {
                runtime: "fake",
                endpoint: "memory".into(),
                reason: "gone".into(),
            });
        }
        Ok(RuntimeInfo {
            runtime: "fake".into(),
            version: "0".into(),
            endpoint: "memory".into(),
        })
    }
    async fn image_id(&self, reference: &str) -> Result<Option<String>> {
        self.record("image_present");
        let s = self.0.lock().unwrap();
        if reference != crate::agent::AGENT_IMAGE {
            return Ok(s.tags.get(reference).cloned());
        }
        Ok(s.image_present.then(|| s.image_id.clone()))
    }
    async fn tag_image(&self, source: &str, target: &str) -> Result<()> {
        self.record("tag_image");
        let mut s = self.0.lock().unwrap();
        let id = if source == crate::agent::AGENT_IMAGE {
            s.image_present.then(|| s.image_id.clone())
        } else {
            s.tags.get(source).cloned()
        };
        let Some(id) = id else {
            return Err(RuntimeError::daemon(
                "fake",
                "tag image",
                "image not present",
            ));
        };
        if target == crate::agent::AGENT_IMAGE {
            s.image_present = true;
            s.image_id = id;
        } else {
            s.tags.insert(target.to_string(), id);
        }
        Ok(())
    }
    /// Loads like a runtime would: a verified archive, whose first image becomes the agent
    /// image (unless told to keep the old one, as a broken runtime might).
    async fn load_image(&self, tarball: &Path) -> Result<Vec<String>> {
        self.record("load_image");
        let takes = self.0.lock().unwrap().load_takes;
        if let Some(d) = takes {
            tokio::time::sleep(d).await;
        }
        let file = ecs_host::files::open_read(tarball).map_err(|e| RuntimeError::BadTarball {
            path: tarball.to_path_buf(),
            reason: format!("cannot open: {e}"),
        })?;
        let images =
            ecs_runtime::archive::verify_file(file).map_err(|reason| RuntimeError::BadTarball {
                path: tarball.to_path_buf(),
                reason,
            })?;
        let mut s = self.0.lock().unwrap();
        s.loaded.push(tarball.to_path_buf());
        if !s.keep_image_on_load {
            s.image_present = true;
            s.image_id = images[0].config_digest.clone();
        }
        Ok(images[0].names.clone())
    }
    async fn remove_container(&self, _name: &str) -> Result<()> {
        self.record("remove_container");
        self.0.lock().unwrap().container = None;
        Ok(())
    }
    async fn run(&self, _spec: &AgentSpec) -> Result<()> {
        self.record("run");
        let mut s = self.0.lock().unwrap();
        if s.fail_run {
            return Err(RuntimeError::daemon(
                "fake",
                "create container",
                "no such image",
            ));
        }
        FakeRuntime::new_container(&mut s);
        if s.lose_on_next_run {
            s.lose_on_next_run = false;
            return Err(RuntimeError::Lost {
                runtime: "fake",
                action: "create container".into(),
                reason: "connection closed before message completed".into(),
            });
        }
        Ok(())
    }
    async fn wait(&self, _name: &str) -> Result<i64> {
        self.record("wait");
        let next = {
            let mut s = self.0.lock().unwrap();
            let n = s.exits.get(s.run_index).copied();
            s.run_index += 1;
            n
        };
        match next {
            Some((code, secs)) => {
                tokio::time::sleep(Duration::from_secs(secs)).await;
                Ok(code)
            }
            None => std::future::pending().await,
        }
    }
    async fn stop(&self, _name: &str, _grace: Duration) -> Result<()> {
        self.record("stop");
        Ok(())
    }
    async fn logs_tail(&self, _name: &str, lines: usize) -> Result<String> {
        self.record("logs_tail");
        let len = self.0.lock().unwrap().log_line_len;
        Ok((0..lines)
            .map(|i| match len {
                Some(n) => format!("line {i} {}\n", "x".repeat(n)),
                None => format!("line {i}\n"),
            })
            .collect())
    }
    async fn describe(&self, _spec: &AgentSpec) -> serde_json::Value {
        serde_json::json!({})
    }
    async fn inspect(&self, _name: &str) -> Result<Option<ContainerState>> {
        self.record("inspect");
        Ok(self.0.lock().unwrap().container.clone())
    }
}

std::thread_local! {
    /// What this thread has logged since `capture_logs` began, while it runs.
    static CAPTURED: std::cell::RefCell<Option<Vec<u8>>> = const { std::cell::RefCell::new(None) };
}

struct CaptureWriter;
impl std::io::Write for CaptureWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        CAPTURED.with(|c| {
            if let Some(v) = c.borrow_mut().as_mut() {
                v.extend_from_slice(b);
            }
        });
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One process-wide subscriber that formats an event only on a thread inside `capture_logs`.
///
/// Why not a subscriber per test (`set_default`): tracing caches, per call site, whether any
/// subscriber wants it, and while a single dispatcher is registered it asks only the current
/// thread's. A call site first reached by a test on another thread (no subscriber there) was
/// cached as "never", and a capturing test then lost that line (about 1 run in 30 of the
/// supervise tests). This subscriber answers "sometimes" for every call site, so nothing is
/// cached as "never", and decides per event.
fn install_capturing_subscriber() {
    use tracing_subscriber::prelude::*;
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let capturing =
            tracing_subscriber::filter::filter_fn(|_| CAPTURED.with(|c| c.borrow().is_some()));
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(|| CaptureWriter)
            .with_filter(capturing);
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("the unit tests install no other global subscriber");
    });
    // Call sites registered by other threads while the subscriber was being installed.
    tracing::callsite::rebuild_interest_cache();
}

/// Everything logged (at any level) on this thread while `fut` runs, as text.
pub async fn capture_logs(fut: impl std::future::Future<Output = ()>) -> String {
    install_capturing_subscriber();
    CAPTURED.with(|c| *c.borrow_mut() = Some(Vec::new()));
    fut.await;
    let out = CAPTURED.with(|c| c.borrow_mut().take()).unwrap_or_default();
    String::from_utf8_lossy(&out).into_owned()
}
