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

use crate::cache;
use crate::notify;
use crate::paths::Paths;

/// The restart backoff: 500 ms → 15 s, ×2, ±10 % jitter (the existing tool's numbers).
pub fn restart_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(500), Duration::from_secs(15)).with_jitter(0.1)
}

/// Lines of agent log printed when the agent exits 2.
pub const EXIT2_LOG_LINES: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("could not start the agent container: {0}")]
    Start(#[source] RuntimeError),
    #[error("could not build the agent container spec: {0}")]
    Spec(String),
}

/// What the supervisor needs; the spec is rebuilt before every start so that a config change
/// takes effect at the agent's next restart, as with the Go tool.
pub struct Supervisor<'a> {
    pub runtime: &'a dyn Runtime,
    pub paths: Paths,
    pub spec: Box<dyn Fn() -> Result<AgentSpec, String> + 'a>,
    pub backoff: Backoff,
    /// A run at least this long resets the backoff.
    pub healthy_after: Duration,
    /// Grace for the agent on SIGTERM/SIGINT.
    pub stop_grace: Duration,
    /// How long to wait for the runtime to answer again after it went away.
    pub runtime_deadline: Duration,
}

impl Supervisor<'_> {
    /// Supervise until the agent exits 0 or 5, or `shutdown` resolves; returns ecs-init's exit
    /// code.
    pub async fn run(&mut self, shutdown: impl Future<Output = ()>) -> Result<i32, SuperviseError> {
        tokio::pin!(shutdown);
        let mut announced = false;
        loop {
            let spec = (self.spec)().map_err(SuperviseError::Spec)?;
            let name = spec.name.clone();
            // A daemon restart between two agent runs must not end ecs-init. (The first run
            // needs no check: the caller has just waited for the runtime to answer.)
            if announced {
                ecs_backends::wait_ready(self.runtime, self.runtime_deadline)
                    .await
                    .map_err(SuperviseError::Start)?;
            }
            self.runtime
                .remove_container(&name)
                .await
                .map_err(SuperviseError::Start)?;
            self.runtime
                .run(&spec)
                .await
                .map_err(SuperviseError::Start)?;
            tracing::info!(container = %name, runtime = self.runtime.name(), "agent container started");
            if !announced {
                notify::ready();
                announced = true;
            } else {
                notify::status("agent container running");
            }
            let started = tokio::time::Instant::now();
            let code = tokio::select! {
                code = self.runtime.wait(&name) => code,
                _ = &mut shutdown => return Ok(self.shut_down(&name).await),
            };
            if started.elapsed() >= self.healthy_after {
                self.backoff.reset();
            }
            match code {
                Ok(0) => {
                    tracing::info!("agent exited 0; ecs-init exits 0");
                    notify::stopping();
                    return Ok(0);
                }
                Ok(5) => {
                    tracing::error!("agent exited 5 (terminal); not restarting it");
                    notify::stopping();
                    return Ok(5);
                }
                Ok(42) => match cache::load_desired(&self.paths, self.runtime).await {
                    Ok(tarball) => {
                        tracing::info!(tarball = %tarball.display(), "agent updated; restarting it");
                        continue;
                    }
                    Err(err) => tracing::error!(error = %err, "could not upgrade agent"),
                },
                Ok(2) => {
                    tracing::error!("agent exited 2 (container failure)");
                    match self.runtime.logs_tail(&name, EXIT2_LOG_LINES).await {
                        Ok(logs) => {
                            tracing::error!("--- begin ecs-agent container logs (last {EXIT2_LOG_LINES} lines) ---");
                            for line in logs.lines() {
                                tracing::error!("{line}");
                            }
                            tracing::error!("--- end ecs-agent container logs ---");
                        }
                        Err(err) => {
                            tracing::error!(error = %err, "could not read the agent's logs")
                        }
                    }
                }
                Ok(other) => tracing::warn!(exit_code = other, "agent exited; restarting it"),
                Err(err) => {
                    tracing::warn!(error = %err, "lost track of the agent container; restarting it")
                }
            }
            let delay = self.backoff.next_delay();
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                "waiting before restarting the agent"
            );
            notify::status(&format!("agent restarting in {} ms", delay.as_millis()));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = &mut shutdown => return Ok(self.shut_down(&name).await),
            }
        }
    }

    async fn shut_down(&self, name: &str) -> i32 {
        notify::stopping();
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

/// Resolves on SIGTERM or SIGINT.
pub async fn termination_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handling we can only run until the agent exits.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
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
        Supervisor {
            runtime: rt,
            paths: paths.clone(),
            spec: Box::new(|| Ok(spec())),
            backoff: restart_backoff(),
            healthy_after: Duration::from_secs(60),
            stop_grace: Duration::from_secs(10),
            runtime_deadline: Duration::from_secs(1),
        }
    }

    #[test]
    fn backoff_grows_caps_and_resets() {
        let mut b = restart_backoff();
        let delays: Vec<u128> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        let expected = [500u128, 1000, 2000, 4000, 8000, 15000, 15000, 15000];
        for (d, e) in delays.iter().zip(expected) {
            assert!(*d >= e * 9 / 10 && *d <= e * 11 / 10, "{delays:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(550));
    }

    #[tokio::test(start_paused = true)]
    async fn exit_codes_drive_the_loop() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        // crash, crash, 2, then terminal 5.
        let rt = FakeRuntime::with_exits(&[(3, 1), (139, 1), (2, 1), (5, 1)]);
        let code = supervisor(&rt, &paths)
            .run(std::future::pending())
            .await
            .unwrap();
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
        let code = supervisor(&rt, &paths)
            .run(std::future::pending())
            .await
            .unwrap();
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
        let shutdown = tokio::time::sleep(Duration::from_secs(30));
        let code = supervisor(&rt, &paths).run(shutdown).await.unwrap();
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
        let code = supervisor(&rt, &paths)
            .run(std::future::pending())
            .await
            .unwrap();
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

    #[tokio::test(start_paused = true)]
    async fn start_failure_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let rt = FakeRuntime::with_exits(&[]);
        rt.fail_run();
        let err = supervisor(&rt, &Paths::under(dir.path()))
            .run(std::future::pending())
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("could not start the agent container"),
            "{err}"
        );
    }
}
