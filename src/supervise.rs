//! `start`: run the agent container and supervise it (packaging/COMPATIBILITY.md §2).
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
//! crash a week after the last one restarts in 500 ms, not 15 s; and a failed update rolls
//! itself back ([`crate::rollback`]: the loaded update is on probation, its failed starts and
//! its time to health are watched, a rolled-back image is refused at a later exit 42). The loop
//! only calls the guard: before each start, around the wait, on exit 42 and after an exit.
use ecs_host::Backoff;
use ecs_runtime::{AgentSpec, Runtime, RuntimeError};
use std::future::Future;
use std::time::Duration;

use crate::paths::Paths;
use crate::rollback::{self, After, Watched};
use crate::{cache, notify, records};

/// The restart backoff: 500 ms → 15 s, ×2, ±10 % jitter (the existing tool's numbers).
pub fn restart_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(500), Duration::from_secs(15)).with_jitter(0.1)
}

/// Lines of agent log printed when the agent exits 2 (also capped in bytes:
/// [`ecs_host::files::caps::LOG_EXCERPT`]).
pub const EXIT2_LOG_LINES: usize = ecs_host::files::caps::LOG_TAIL_LINES;

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("could not start the agent container: {0}")]
    Start(RuntimeError),
    #[error("could not build the agent container spec: {0}")]
    Spec(String),
}

/// SIGTERM/SIGINT (and SIGHUP, SIGQUIT), seen by every wait of `start`: once requested, no
/// wait goes on and no new container is created.
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

    /// Requested on SIGTERM, SIGINT, SIGHUP or SIGQUIT (handlers installed now, before anything
    /// else runs), each logged. SIGHUP and SIGQUIT end `start` like SIGTERM (the agent is
    /// stopped, exit 0) rather than re-reading the configuration: the env files are read again
    /// before every agent start anyway, and a hang-up or quit that left the agent running
    /// without a supervisor (their default action, before) is what must never happen. SIGUSR1
    /// and SIGUSR2 are logged and ignored (their default action would kill the supervisor).
    pub fn on_signals() -> std::io::Result<Shutdown> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut quit = signal(SignalKind::quit())?;
        let mut usr1 = signal(SignalKind::user_defined1())?;
        let mut usr2 = signal(SignalKind::user_defined2())?;
        let (trigger, shutdown) = Shutdown::new();
        tokio::spawn(async move {
            loop {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                    _ = hup.recv() => "SIGHUP",
                    _ = quit.recv() => "SIGQUIT",
                    _ = usr1.recv() => {
                        tracing::info!("SIGUSR1 received; ignored");
                        continue;
                    }
                    _ = usr2.recv() => {
                        tracing::info!("SIGUSR2 received; ignored");
                        continue;
                    }
                };
                tracing::info!("{name} received");
                trigger.request();
            }
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

/// The last lines of `text` that fit into `max_bytes` (a single longer last line keeps its
/// end), and whether anything was left out.
pub fn excerpt(text: &str, max_bytes: usize) -> (Vec<&str>, bool) {
    let mut out = Vec::new();
    let mut used = 0;
    let all: Vec<&str> = text.lines().collect();
    for (i, line) in all.iter().enumerate().rev() {
        if used + line.len() + 1 > max_bytes {
            if out.is_empty() {
                let mut start = line.len().saturating_sub(max_bytes);
                while !line.is_char_boundary(start) {
                    start += 1;
                }
                out.push(&line[start..]);
            }
            out.reverse();
            return (out, true);
        }
        used += line.len() + 1;
        out.push(line);
        if i == 0 {
            break;
        }
    }
    out.reverse();
    (out, false)
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
    /// The automatic rollback of a failed update (`None`: off, the Go tool's behaviour).
    pub rollback: Option<rollback::Guard>,
}

/// What one pass of the loop ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
            let ready = ecs_runtime::wait_ready(self.runtime, self.runtime_deadline);
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
        if let Some(guard) = &self.rollback {
            guard.before_start(self.runtime).await;
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
        let code = loop {
            let Some(watched) = self.shutdown.guard(self.watch(&name)).await else {
                return Ok(Next::Exit(self.shut_down(Some(&name)).await));
            };
            match watched {
                Watched::Exited(code) => break code,
                Watched::Overdue(reason) => {
                    if self.roll_back_overdue(&name, reason).await {
                        return Ok(Next::Now);
                    }
                }
            }
        };
        if started.elapsed() >= self.healthy_after {
            self.backoff.reset();
        }
        // Loading an update or reading the logs waits on the runtime too: under the guard.
        let shutdown = self.shutdown.clone();
        match shutdown.guard(self.after_exit(&name, code)).await {
            Some(next) => Ok(next),
            None => Ok(Next::Exit(self.shut_down(Some(&name)).await)),
        }
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

    /// Wait for the agent to exit, watched by the rollback guard when it is on.
    async fn watch(&self, name: &str) -> Watched {
        match &self.rollback {
            None => Watched::Exited(self.runtime.wait(name).await),
            Some(guard) => guard.watch(self.runtime, self.runtime.wait(name)).await,
        }
    }

    /// An update on probation was not healthy in time: roll it back and stop the agent (true),
    /// or, when it cannot be rolled back, leave it running (false).
    async fn roll_back_overdue(&self, name: &str, reason: rollback::Reason) -> bool {
        let Some(guard) = &self.rollback else {
            return false;
        };
        if guard.after_exit(self.runtime, None, Some(reason)).await != After::RolledBack {
            return false;
        }
        if let Err(err) = self.runtime.stop(name, self.stop_grace).await {
            tracing::warn!(error = %err, "could not stop the agent container");
        }
        true
    }

    /// Agent exit 42: load the desired image (through the rollback guard when it is on).
    async fn load_update(&self) -> Result<cache::Loaded, cache::CacheError> {
        match &self.rollback {
            None => cache::load_desired(&self.paths, self.runtime).await,
            Some(guard) => guard.update(self.runtime).await,
        }
    }

    /// Act on the agent's exit (the table in the module docs); a failed start of an update on
    /// probation may roll it back, and then the agent restarts at once.
    async fn after_exit(&mut self, name: &str, code: Result<i64, RuntimeError>) -> Next {
        let exit = code.as_ref().ok().copied();
        let next = self.act_on_exit(name, code).await;
        match &self.rollback {
            Some(guard)
                if next == Next::Backoff
                    && guard.after_exit(self.runtime, exit, None).await == After::RolledBack =>
            {
                Next::Now
            }
            _ => next,
        }
    }

    async fn act_on_exit(&mut self, name: &str, code: Result<i64, RuntimeError>) -> Next {
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
            Ok(42) => match self.load_update().await {
                Ok(loaded) => {
                    tracing::info!(tarball = %loaded.tarball.display(), "agent updated; restarting it");
                    Next::Now
                }
                // Said by the guard, as a warning.
                Err(cache::CacheError::Refused { .. }) => Next::Backoff,
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
                let (lines, cut) = excerpt(&logs, ecs_host::files::caps::LOG_EXCERPT);
                tracing::error!(
                    "--- begin ecs-agent container logs (last {EXIT2_LOG_LINES} lines) ---"
                );
                if cut {
                    tracing::error!(
                        "(earlier lines left out: the excerpt is cut at {} bytes)",
                        ecs_host::files::caps::LOG_EXCERPT
                    );
                }
                for line in lines {
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
            rollback: None,
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

    fn put_update(paths: &Paths) {
        std::fs::create_dir_all(&paths.var_cache_ecs).unwrap();
        std::fs::write(
            paths.var_cache_ecs.join("ecs-agent-v2.tar"),
            crate::cache::tests::agent_tar("v2"),
        )
        .unwrap();
        std::fs::write(paths.desired_image(), "ecs-agent-v2.tar\n").unwrap();
    }

    /// Issue 20 (1): the work after an agent exit (here an update whose load never ends) is
    /// under the shutdown guard: a signal is answered at once and the agent is stopped.
    #[tokio::test(start_paused = true)]
    async fn a_signal_during_the_work_after_an_exit_is_answered_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        put_update(&paths);
        let rt = FakeRuntime::with_exits(&[(42, 1), (0, 1)]);
        rt.load_takes(Duration::from_secs(100_000));
        let shutdown = shutdown_after(Duration::from_secs(3));
        let started = tokio::time::Instant::now();
        let code = with_shutdown(&rt, &paths, shutdown).run().await.unwrap();
        assert_eq!(code, 0);
        assert!(
            started.elapsed() < Duration::from_millis(3_100),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(rt.runs(), 1);
        assert_eq!(rt.calls_of("load_image"), 1);
        assert_eq!(rt.calls_of("stop"), 1);
    }

    /// Issue 20 (10): the exit-2 excerpt is capped in bytes, with a note when cut.
    #[tokio::test(start_paused = true)]
    async fn the_exit_2_excerpt_is_capped_in_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        let rt = FakeRuntime::with_exits(&[(2, 1), (0, 1)]);
        // 200 lines of 16 KB, as Docker joins partial entries: 3.2 MB.
        rt.log_lines_of(16 * 1024);
        let logs = crate::testing::capture_logs(async {
            supervisor(&rt, &paths).run().await.unwrap();
        })
        .await;
        let cap = ecs_host::files::caps::LOG_EXCERPT;
        assert!(logs.len() < cap + 16 * 1024, "{} bytes logged", logs.len());
        assert!(logs.contains("earlier lines left out"), "no note");
        // Which lines are kept is `excerpts_keep_the_last_lines_that_fit`'s (the capture can
        // lose a line of a call site first reached on another test thread, see testing.rs).
        assert!(!logs.contains("line 100 "), "{}", &logs[..300]);
    }

    #[test]
    fn excerpts_keep_the_last_lines_that_fit() {
        assert_eq!(excerpt("a\nb\nc\n", 100), (vec!["a", "b", "c"], false));
        assert_eq!(excerpt("a\nb\nc\n", 4), (vec!["b", "c"], true));
        assert_eq!(excerpt("short\n0123456789\n", 4), (vec!["6789"], true));
        assert_eq!(excerpt("", 4), (vec![], false));
    }

    mod rollback_hook {
        use super::*;
        use crate::rollback::{self, Guard, Policy, Probe, KNOWN_GOOD_IMAGE};
        use std::pin::Pin;
        use std::sync::Arc;

        struct Answers(bool);
        impl Probe for Answers {
            fn answers(&self) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
                let yes = self.0;
                Box::pin(async move { yes })
            }
        }

        /// A host where v1 ran healthy (known good, kept under our name) and v2 waits in the
        /// cache as the desired update; returns (v1's ID, v2's ID).
        async fn host(paths: &Paths, rt: &FakeRuntime) -> (String, String) {
            std::fs::create_dir_all(&paths.var_cache_ecs).unwrap();
            let put = |name: &str, content: &str| {
                let p = paths.var_cache_ecs.join(name);
                std::fs::write(&p, crate::cache::tests::agent_tar(content)).unwrap();
                p
            };
            let v1 = put("ecs-agent.tar", "v1");
            let v2 = put("ecs-agent-v2.tar", "v2");
            std::fs::write(paths.desired_image(), "ecs-agent-v2.tar\n").unwrap();
            let id = |p: &std::path::Path| {
                ecs_runtime::archive::verify_file(std::fs::File::open(p).unwrap()).unwrap()[0]
                    .config_digest
                    .clone()
            };
            rt.load_image(&v1).await.unwrap();
            rt.tag_image(crate::agent::AGENT_IMAGE, KNOWN_GOOD_IMAGE)
                .await
                .unwrap();
            let mut ledger = rollback::Ledger::default();
            ledger.healthy(rollback::Image {
                id: id(&v1),
                version: "v1".into(),
            });
            rollback::save_ledger(paths, &ledger).unwrap();
            (id(&v1), id(&v2))
        }

        fn with_guard<'a>(rt: &'a FakeRuntime, paths: &Paths, healthy: bool) -> Supervisor<'a> {
            let mut sup = supervisor(rt, paths);
            let base = tokio::time::Instant::now();
            sup.rollback = Some(Guard {
                paths: paths.clone(),
                policy: Policy {
                    failed_starts: 3,
                    timeout: Duration::from_secs(300),
                    healthy_after: Duration::from_secs(60),
                },
                probe: Arc::new(Answers(healthy)),
                clock: Arc::new(move || 1_000_000 + base.elapsed().as_secs()),
            });
            sup
        }

        fn ledger(paths: &Paths) -> rollback::Ledger {
            rollback::read_ledger(paths).unwrap().unwrap()
        }

        #[tokio::test(start_paused = true)]
        async fn a_failing_update_rolls_back_after_n_starts_and_is_not_taken_again() {
            let dir = tempfile::tempdir().unwrap();
            let paths = Paths::under(dir.path());
            // v1 exits 42; v2 exits 1 three times; then v1 again, until it exits 0.
            let rt = FakeRuntime::with_exits(&[(42, 1), (1, 1), (1, 1), (1, 1), (0, 1)]);
            let (v1, v2) = host(&paths, &rt).await;
            let logs = crate::testing::capture_logs(async {
                assert_eq!(with_guard(&rt, &paths, false).run().await.unwrap(), 0);
            })
            .await;
            assert_eq!(rt.runs(), 5);
            assert_eq!(rt.agent_image_id().as_deref(), Some(v1.as_str()));
            // Retagged, not reloaded: only v1 (set-up) and v2 (the update) were loaded.
            assert_eq!(rt.loaded().len(), 2, "{:?}", rt.loaded());
            assert_eq!(
                logs.matches("rolled back the agent update").count(),
                1,
                "{logs}"
            );
            assert!(
                logs.contains("3 consecutive starts failed (last exit code 1)")
                    && logs.contains("the agent runs v1"),
                "{logs}"
            );
            let l = ledger(&paths);
            assert!(l.is_refused(&v2) && l.probation.is_none());
            assert_eq!(
                l.known_good.as_ref().map(|i| i.id.as_str()),
                Some(v1.as_str())
            );
            let last = l.last_rollback.unwrap();
            assert_eq!(
                (last.from.id.as_str(), last.outcome.as_str()),
                (v2.as_str(), "ok")
            );
            // The rollback restarted at once: no backoff between v2's last exit and v1.
            let gaps = rt.gaps_between_runs();
            assert_eq!(gaps[3], Duration::from_secs(1), "{gaps:?}");

            // The same update again: refused without loading it; the agent keeps v1.
            let rt2 = FakeRuntime::with_exits(&[(42, 1), (0, 1)]);
            rt2.load_image(&paths.agent_tarball()).await.unwrap();
            let logs = crate::testing::capture_logs(async {
                assert_eq!(with_guard(&rt2, &paths, false).run().await.unwrap(), 0);
            })
            .await;
            assert_eq!(rt2.loaded().len(), 1, "v2 not loaded");
            assert!(
                logs.contains("refusing the agent update to ecs-agent-v2.tar"),
                "{logs}"
            );
            assert!(!logs.contains("could not upgrade agent"), "{logs}");
        }

        #[tokio::test(start_paused = true)]
        async fn a_healthy_update_becomes_known_good() {
            let dir = tempfile::tempdir().unwrap();
            let paths = Paths::under(dir.path());
            let rt = FakeRuntime::with_exits(&[(42, 1), (1, 120), (1, 1), (1, 1), (0, 1)]);
            let (_, v2) = host(&paths, &rt).await;
            assert_eq!(with_guard(&rt, &paths, true).run().await.unwrap(), 0);
            let l = ledger(&paths);
            assert!(l.probation.is_none() && l.last_rollback.is_none());
            assert_eq!(l.known_good.map(|i| i.id), Some(v2.clone()));
            assert_eq!(
                rt.image_id(KNOWN_GOOD_IMAGE).await.unwrap(),
                Some(v2.clone())
            );
            // Later crashes of a known-good agent are not rolled back.
            assert_eq!(rt.agent_image_id(), Some(v2));
        }

        #[tokio::test(start_paused = true)]
        async fn running_without_answering_is_not_healthy_and_times_out() {
            let dir = tempfile::tempdir().unwrap();
            let paths = Paths::under(dir.path());
            // v2 runs "forever" but never answers introspection.
            let rt = FakeRuntime::with_exits(&[(42, 1), (0, 100_000), (0, 1)]);
            let (v1, v2) = host(&paths, &rt).await;
            let started = tokio::time::Instant::now();
            assert_eq!(with_guard(&rt, &paths, false).run().await.unwrap(), 0);
            let last = ledger(&paths).last_rollback.unwrap();
            assert_eq!(last.reason, "not healthy within 300 s of the update");
            assert_eq!(rt.calls_of("stop"), 1, "the hung agent was stopped");
            assert_eq!(rt.agent_image_id(), Some(v1));
            assert!(ledger(&paths).is_refused(&v2));
            let took = started.elapsed();
            assert!(
                took >= Duration::from_secs(300) && took < Duration::from_secs(320),
                "{took:?}"
            );
        }

        #[tokio::test(start_paused = true)]
        async fn exit_5_during_probation_is_obeyed() {
            let dir = tempfile::tempdir().unwrap();
            let paths = Paths::under(dir.path());
            let rt = FakeRuntime::with_exits(&[(42, 1), (1, 1), (5, 1)]);
            let (_, v2) = host(&paths, &rt).await;
            assert_eq!(with_guard(&rt, &paths, false).run().await.unwrap(), 5);
            let l = ledger(&paths);
            assert_eq!(l.probation.as_ref().map(|p| p.failures), Some(1));
            assert!(!l.is_refused(&v2));
        }

        #[tokio::test(start_paused = true)]
        async fn a_removed_known_good_image_falls_back_to_the_cached_tarball() {
            let dir = tempfile::tempdir().unwrap();
            let paths = Paths::under(dir.path());
            let rt = FakeRuntime::with_exits(&[(42, 1), (1, 1), (1, 1), (1, 1), (0, 1)]);
            let (v1, _) = host(&paths, &rt).await;
            rt.remove_image(&v1); // docker rmi -f
            let logs = crate::testing::capture_logs(async {
                assert_eq!(with_guard(&rt, &paths, false).run().await.unwrap(), 0);
            })
            .await;
            assert!(logs.contains("known-good agent image is gone"), "{logs}");
            assert_eq!(rt.loaded().last(), Some(&paths.agent_tarball()));
            assert_eq!(rt.agent_image_id(), Some(v1));
        }

        #[tokio::test(start_paused = true)]
        async fn without_image_and_tarball_it_is_an_error_and_todays_behaviour() {
            let dir = tempfile::tempdir().unwrap();
            let paths = Paths::under(dir.path());
            let rt = FakeRuntime::with_exits(&[(42, 1), (1, 1), (1, 1), (1, 1), (1, 1), (0, 1)]);
            let (v1, v2) = host(&paths, &rt).await;
            rt.remove_image(&v1);
            std::fs::remove_file(paths.agent_tarball()).unwrap();
            let logs = crate::testing::capture_logs(async {
                assert_eq!(with_guard(&rt, &paths, false).run().await.unwrap(), 0);
            })
            .await;
            assert!(logs.contains("cannot be rolled back"), "{logs}");
            // v2 kept restarting with the backoff, as without the rollback.
            assert_eq!(rt.runs(), 6);
            assert_eq!(rt.agent_image_id(), Some(v2));
            let last = ledger(&paths).last_rollback.unwrap();
            assert_ne!(last.outcome, "ok");
        }

        #[tokio::test(start_paused = true)]
        async fn off_means_no_record_and_no_refusal() {
            let dir = tempfile::tempdir().unwrap();
            let paths = Paths::under(dir.path());
            let rt = FakeRuntime::with_exits(&[(42, 1), (1, 1), (1, 1), (1, 1), (0, 1)]);
            let (_, v2) = host(&paths, &rt).await;
            let before = std::fs::read(paths.agent_images_record()).unwrap();
            assert_eq!(supervisor(&rt, &paths).run().await.unwrap(), 0);
            assert_eq!(rt.agent_image_id(), Some(v2), "no rollback");
            assert_eq!(std::fs::read(paths.agent_images_record()).unwrap(), before);
        }
    }
}
