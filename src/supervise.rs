//! `start`: run the agent container and supervise it (UPSTREAM-BEHAVIOUR.md §2).
//!
//! | agent exit | action |
//! |---|---|
//! | 0 | ecs-init exits 0 |
//! | 5 | ecs-init exits 5 (terminal; systemd's `RestartPreventExitStatus=5`) |
//! | 42 | load the desired image, restart at once; on failure log "could not upgrade agent" and back off |
//! | 2 | log the agent's last 200 log lines between marker lines, back off |
//! | other | back off and restart |
//!
//! Unlike the Go tool, the backoff is reset once the agent has run healthily for a while, so a
//! crash a week after the last one restarts in 500 ms, not 15 s.
use ecs_backends::{AgentSpec, Runtime, RuntimeError};
use ecs_host::Backoff;
use std::future::Future;
use std::time::Duration;

use crate::paths::Paths;
use crate::{cache, notify, records};

/// The restart backoff: 500 ms → 15 s, ×2, ±10 % jitter (the existing tool's numbers).
pub fn restart_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(500), Duration::from_secs(15)).with_jitter(0.1)
}

/// Lines of agent log printed when the agent exits 2.
pub const EXIT2_LOG_LINES: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("could not start the agent container: {0}")]
    Start(RuntimeError),
    #[error("could not build the agent container spec: {0}")]
    Spec(String),
}

/// SIGTERM/SIGINT, seen by every wait of `start`: once requested, no wait goes on and no new
/// container is created.
#[derive(Clone, Debug)]
pub struct Shutdown(tokio::sync::watch::Receiver<bool>);

/// Requests a [`Shutdown`] (the signal handler's side; tests hold one too).
#[derive(Debug)]
pub struct ShutdownTrigger(tokio::sync::watch::Sender<bool>);

impl ShutdownTrigger {
    pub fn request(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (ShutdownTrigger(tx), Shutdown(rx))
    }

    /// Requested on SIGTERM or SIGINT (handlers installed now, before anything else runs).
    pub fn on_signals() -> std::io::Result<Shutdown> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let (trigger, shutdown) = Shutdown::new();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
            trigger.request();
        });
        Ok(shutdown)
    }

    pub fn requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once a shutdown is requested (never, when the trigger is gone without one).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        if rx.wait_for(|v| *v).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// `fut`'s output, or `None` when a shutdown is requested first (`fut` is dropped).
    pub async fn guard<T>(&self, fut: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            v = fut => Some(v),
            _ = self.wait() => None,
        }
    }
}

/// The spec of one agent start, as the supervisor's `spec` builds it.
pub type SpecFuture<'a> = std::pin::Pin<Box<dyn Future<Output = Result<AgentSpec, String>> + 'a>>;

/// What the supervisor needs; the spec is rebuilt before every start so that a config change
/// takes effect at the agent's next restart, as with the Go tool.
pub struct Supervisor<'a> {
    pub runtime: &'a dyn Runtime,
    pub paths: Paths,
    /// Builds the spec (after any wait it needs, such as for a late GPU driver); dropped
    /// unfinished on a shutdown.
    pub spec: Box<dyn Fn() -> SpecFuture<'a> + 'a>,
    pub backoff: Backoff,
    /// A run at least this long resets the backoff.
    pub healthy_after: Duration,
    /// Grace for the agent on SIGTERM/SIGINT.
    pub stop_grace: Duration,
    /// How long to wait for the runtime to answer again after it went away.
    pub runtime_deadline: Duration,
    pub shutdown: Shutdown,
}

/// What one pass of the loop ended with.
enum Next {
    /// Exit with this code.
    Exit(i32),
    /// Restart the agent after the backoff.
    Backoff,
    /// Restart the agent at once (it was updated).
    Now,
}

impl Supervisor<'_> {
    /// Supervise until the agent exits 0 or 5, or a shutdown is requested; returns ecs-init's
    /// exit code.
    pub async fn run(&mut self) -> Result<i32, SuperviseError> {
        let mut announced = false;
        // The caller has just waited for the runtime to answer.
        let mut runtime_checked = true;
        loop {
            let next = self.once(&mut announced, &mut runtime_checked).await?;
            match next {
                Next::Exit(code) => return Ok(code),
                Next::Now => continue,
                Next::Backoff => {}
            }
            let delay = self.backoff.next_delay();
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                "waiting before restarting the agent"
            );
            notify::status(&format!("agent restarting in {} ms", delay.as_millis()));
            if self
                .shutdown
                .guard(tokio::time::sleep(delay))
                .await
                .is_none()
            {
                return Ok(self.shut_down(None).await);
            }
        }
    }

    /// Start the agent once and wait for it.
    async fn once(
        &mut self,
        announced: &mut bool,
        runtime_checked: &mut bool,
    ) -> Result<Next, SuperviseError> {
        let spec = match self.shutdown.guard((self.spec)()).await {
            None => return Ok(Next::Exit(self.shut_down(None).await)),
            Some(spec) => spec.map_err(SuperviseError::Spec)?,
        };
        let name = spec.name.clone();
        // A daemon restart between two agent runs must not end ecs-init.
        if !*runtime_checked {
            let ready = ecs_backends::wait_ready(self.runtime, self.runtime_deadline);
            match self.shutdown.guard(ready).await {
                None => return Ok(Next::Exit(self.shut_down(None).await)),
                Some(r) => r.map_err(SuperviseError::Start)?,
            };
        }
        *runtime_checked = false;
        if let Err(e) = self.remove_previous(&name).await {
            return self.lost_or_fatal(e, runtime_checked);
        }
        if self.shutdown.requested() {
            return Ok(Next::Exit(self.shut_down(None).await));
        }
        if let Err(e) = self.runtime.run(&spec).await {
            return self.lost_or_fatal(e, runtime_checked);
        }
        tracing::info!(container = %name, runtime = self.runtime.name(), "agent container started");
        self.remember(&name).await;
        if self.shutdown.requested() {
            // The signal came while the container was being created: stop what we made.
            return Ok(Next::Exit(self.shut_down(Some(&name)).await));
        }
        if !*announced {
            notify::ready();
            *announced = true;
        } else {
            notify::status("agent container running");
        }
        let started = tokio::time::Instant::now();
        let Some(code) = self.shutdown.guard(self.runtime.wait(&name)).await else {
            return Ok(Next::Exit(self.shut_down(Some(&name)).await));
        };
        if started.elapsed() >= self.healthy_after {
            self.backoff.reset();
        }
        Ok(self.after_exit(&name, code).await)
    }

    /// A runtime that went away while the container was being removed or created is waited
    /// for (at the next pass) and the start retried; anything else ends ecs-init (255).
    fn lost_or_fatal(
        &self,
        e: RuntimeError,
        runtime_checked: &mut bool,
    ) -> Result<Next, SuperviseError> {
        if e.is_lost_runtime() {
            tracing::warn!(error = %e, "lost the runtime while starting the agent; waiting for it, then starting again");
            *runtime_checked = false;
            Ok(Next::Backoff)
        } else {
            Err(SuperviseError::Start(e))
        }
    }

    /// Remove the previous `name` container; warn when it is not one this launcher created.
    async fn remove_previous(&self, name: &str) -> Result<(), RuntimeError> {
        if let Some(existing) = self.runtime.inspect(name).await? {
            let ours = records::agent_container(&self.paths);
            if ours.as_deref() != Some(existing.identity().as_str()) {
                tracing::warn!(
                    container = name,
                    id = %existing.id,
                    image = %existing.image,
                    labels = ?existing.labels,
                    "removing a container named {name} that this launcher did not start"
                );
            }
        }
        self.runtime.remove_container(name).await
    }

    /// Record which container we started, so the next start recognises it.
    async fn remember(&self, name: &str) {
        match self.runtime.inspect(name).await {
            Ok(Some(state)) => {
                if let Err(e) = records::record_agent_container(&self.paths, &state.identity()) {
                    tracing::warn!(error = %e, "could not record the agent container");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "could not inspect the new agent container"),
        }
    }

    /// Act on the agent's exit (the table in the module docs).
    async fn after_exit(&mut self, name: &str, code: Result<i64, RuntimeError>) -> Next {
        match code {
            Ok(0) => {
                tracing::info!("agent exited 0; ecs-init exits 0");
                notify::stopping();
                Next::Exit(0)
            }
            Ok(5) => {
                tracing::error!("agent exited 5 (terminal); not restarting it");
                notify::stopping();
                Next::Exit(5)
            }
            Ok(42) => match cache::load_desired(&self.paths, self.runtime).await {
                Ok(tarball) => {
                    tracing::info!(tarball = %tarball.display(), "agent updated; restarting it");
                    Next::Now
                }
                Err(err) => {
                    tracing::error!(error = %err, "could not upgrade agent");
                    Next::Backoff
                }
            },
            Ok(2) => {
                tracing::error!("agent exited 2 (container failure)");
                self.log_agent_logs(name).await;
                Next::Backoff
            }
            Ok(other) => {
                tracing::warn!(exit_code = other, "agent exited; restarting it");
                Next::Backoff
            }
            Err(err) => {
                tracing::warn!(error = %err, "lost track of the agent container; restarting it");
                Next::Backoff
            }
        }
    }

    async fn log_agent_logs(&self, name: &str) {
        match self.runtime.logs_tail(name, EXIT2_LOG_LINES).await {
            Ok(logs) => {
                tracing::error!(
                    "--- begin ecs-agent container logs (last {EXIT2_LOG_LINES} lines) ---"
                );
                for line in logs.lines() {
                    tracing::error!("{line}");
                }
                tracing::error!("--- end ecs-agent container logs ---");
            }
            Err(err) => tracing::error!(error = %err, "could not read the agent's logs"),
        }
    }

    /// SIGTERM/SIGINT: stop the agent (when one was started) within its grace; exit 0.
    async fn shut_down(&self, name: Option<&str>) -> i32 {
        notify::stopping();
        let Some(name) = name else {
            tracing::info!("shutting down before an agent container was started");
            return 0;
        };
        tracing::info!(
            grace_s = self.stop_grace.as_secs(),
            "stopping the agent container"
        );
        if let Err(err) = self.runtime.stop(name, self.stop_grace).await {
            tracing::warn!(error = %err, "could not stop the agent container");
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeRuntime;

    fn spec() -> AgentSpec {
        let settings = crate::settings::Settings::resolve(
            Default::default(),
            Paths::under("/"),
            Default::default(),
        );
        let exec = ecs_host::exec::FakeExec::new(&[], |_, _| unreachable!());
        crate::compose::spec_of(&settings, &exec).0
    }

    fn supervisor<'a>(rt: &'a FakeRuntime, paths: &Paths) -> Supervisor<'a> {
        // The trigger is dropped: no shutdown.
        let (_, shutdown) = Shutdown::new();
        with_shutdown(rt, paths, shutdown)
    }

    fn with_shutdown<'a>(rt: &'a FakeRuntime, paths: &Paths, shutdown: Shutdown) -> Supervisor<'a> {
        Supervisor {
            runtime: rt,
            paths: paths.clone(),
            spec: Box::new(|| Box::pin(async { Ok(spec()) })),
            backoff: restart_backoff(),
            healthy_after: Duration::from_secs(60),
            stop_grace: Duration::from_secs(10),
            runtime_deadline: Duration::from_secs(1),
            shutdown,
        }
    }

    /// A shutdown requested after `after`.
    fn shutdown_after(after: Duration) -> Shutdown {
        let (trigger, shutdown) = Shutdown::new();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            trigger.request();
        });
        shutdown
    }

    /// The schedule's shape (doubling, jitter, reset) is `Backoff`'s own test; this one pins
    /// the supervisor's ends of it: 0.5 s first, 15 s at most (README, "Supervision (`start`)").
    #[test]
    fn restart_backoff_runs_from_half_a_second_to_fifteen() {
        let mut b = restart_backoff();
        let first = b.next_delay();
        let last = (0..10).map(|_| b.next_delay()).last().unwrap();
        assert!((450..=550).contains(&first.as_millis()), "{first:?}");
        assert!((13_500..=16_500).contains(&last.as_millis()), "{last:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn exit_codes_drive_the_loop() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        // crash, crash, 2, then terminal 5.
        let rt = FakeRuntime::with_exits(&[(3, 1), (139, 1), (2, 1), (5, 1)]);
        let code = supervisor(&rt, &paths).run().await.unwrap();
        assert_eq!(code, 5);
        assert_eq!(rt.runs(), 4);
        assert_eq!(rt.calls_of("logs_tail"), 1);
        // Every start removed the old container first.
        assert_eq!(rt.calls_of("remove_container"), 4);
        // Backoff between restarts: 0.5 s, 1 s, 2 s (±10 %).
        let gaps = rt.gaps_between_runs();
        assert!(
            gaps[0] >= Duration::from_millis(450) && gaps[0] <= Duration::from_millis(1600),
            "{gaps:?}"
        );
        assert!(gaps[2] >= Duration::from_millis(2800), "{gaps:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn clean_exit_and_healthy_reset() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        // Fail fast 4 times (backoff grows to 4 s), run 2 minutes then fail: next delay is back to 0.5 s.
        let rt = FakeRuntime::with_exits(&[(1, 1), (1, 1), (1, 1), (1, 1), (1, 120), (0, 1)]);
        let code = supervisor(&rt, &paths).run().await.unwrap();
        assert_eq!(code, 0);
        let gaps = rt.gaps_between_runs();
        // gap = previous run's length + delay; the last delay is after the 120 s run.
        let last = gaps[4] - Duration::from_secs(120);
        assert!(last <= Duration::from_millis(600), "{gaps:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn update_failure_backs_off_and_shutdown_stops_agent() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        // 42 with no desired-image file: "could not upgrade agent", back off, restart; the
        // next run is still going when shutdown arrives.
        let rt = FakeRuntime::with_exits(&[(42, 1), (0, 1000)]);
        let shutdown = shutdown_after(Duration::from_secs(30));
        let code = with_shutdown(&rt, &paths, shutdown).run().await.unwrap();
        assert_eq!(code, 0);
        assert_eq!(rt.runs(), 2);
        assert_eq!(rt.calls_of("stop"), 1);
        assert_eq!(rt.calls_of("load_image"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn update_success_restarts_without_backoff() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        std::fs::create_dir_all(&paths.var_cache_ecs).unwrap();
        std::fs::write(
            paths.var_cache_ecs.join("ecs-agent-v2.tar"),
            crate::cache::tests::agent_tar("v2"),
        )
        .unwrap();
        std::fs::write(paths.desired_image(), "ecs-agent-v2.tar\n").unwrap();
        let rt = FakeRuntime::with_exits(&[(42, 1), (0, 1)]);
        let code = supervisor(&rt, &paths).run().await.unwrap();
        assert_eq!(code, 0);
        assert_eq!(rt.loaded(), [paths.var_cache_ecs.join("ecs-agent-v2.tar")]);
        assert_eq!(std::fs::read_to_string(paths.cache_state()).unwrap(), "1");
        let gaps = rt.gaps_between_runs();
        assert_eq!(
            gaps[0],
            Duration::from_secs(1),
            "no backoff after an update: {gaps:?}"
        );
    }

    /// The spec's wait (a late GPU driver) answers a shutdown at once: nothing is created.
    #[tokio::test(start_paused = true)]
    async fn shutdown_during_the_spec_wait_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        let rt = FakeRuntime::with_exits(&[(0, 1)]);
        let mut s = with_shutdown(&rt, &paths, shutdown_after(Duration::from_millis(200)));
        s.spec = Box::new(|| {
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(spec())
            })
        });
        let t = tokio::time::Instant::now();
        assert_eq!(s.run().await.unwrap(), 0);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert_eq!(rt.runs(), 0);
        assert_eq!(rt.calls_of("remove_container"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn start_failure_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let rt = FakeRuntime::with_exits(&[]);
        rt.fail_run();
        let err = supervisor(&rt, &Paths::under(dir.path()))
            .run()
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("could not start the agent container"),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_signal_during_the_backoff_ends_it_at_once_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        // The agent crashes after 1 s; the backoffs grow; the signal comes inside one.
        let rt = FakeRuntime::with_exits(&[(1, 1), (1, 1), (1, 1), (1, 1), (1, 1)]);
        let shutdown = shutdown_after(Duration::from_millis(4_000));
        let started = tokio::time::Instant::now();
        let code = with_shutdown(&rt, &paths, shutdown).run().await.unwrap();
        assert_eq!(code, 0);
        // Answered at once (no waiting out the backoff), and no run after the signal.
        assert!(
            started.elapsed() < Duration::from_millis(4_100),
            "{:?}",
            started.elapsed()
        );
        let runs_before = rt.runs();
        assert!(rt
            .run_times()
            .iter()
            .all(|t| *t - started < Duration::from_millis(4_000)));
        assert_eq!(rt.runs(), runs_before);
    }

    #[tokio::test(start_paused = true)]
    async fn a_signal_while_waiting_for_the_runtime_is_answered_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        // The runtime goes away after the first run and never answers again.
        let rt = FakeRuntime::with_exits(&[(1, 1)]);
        rt.stop_answering_after_runs(1);
        let shutdown = shutdown_after(Duration::from_secs(3));
        let mut sup = with_shutdown(&rt, &paths, shutdown);
        sup.runtime_deadline = Duration::from_secs(120);
        let started = tokio::time::Instant::now();
        assert_eq!(sup.run().await.unwrap(), 0);
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(rt.runs(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_runtime_lost_during_create_is_waited_for_and_the_start_retried() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        let rt = FakeRuntime::with_exits(&[(0, 1)]);
        rt.lose_runtime_on_next_run();
        let code = supervisor(&rt, &paths).run().await.unwrap();
        assert_eq!(code, 0);
        // The failed create and the retry; the retry removed what the failed one left.
        assert_eq!(rt.runs(), 2);
        assert!(rt.calls_of("ping") >= 1, "waited for the runtime");
        assert_eq!(rt.calls_of("remove_container"), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_container_this_launcher_did_not_start_is_named_before_removal() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        std::fs::create_dir_all(&paths.var_lib_ecs).unwrap();
        let rt = FakeRuntime::with_exits(&[(0, 1), (0, 1)]);
        rt.put_foreign_container("someone/else:1");
        let logs = crate::testing::capture_logs(async {
            supervisor(&rt, &paths).run().await.unwrap();
        })
        .await;
        assert!(
            logs.contains("that this launcher did not start") && logs.contains("someone/else:1"),
            "{logs}"
        );
        // Our own container from an earlier start is removed without the warning.
        let logs = crate::testing::capture_logs(async {
            supervisor(&rt, &paths).run().await.unwrap();
        })
        .await;
        assert!(!logs.contains("did not start"), "{logs}");
    }
}
