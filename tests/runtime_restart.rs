//! The runtime dies under a supervising ecs-init and comes back (a daemon crash, an upgrade):
//! the Go tool gave up after ~19 s of failed pings; this launcher must survive and end up with
//! the agent served again, without being restarted itself.
//!
//! The daemon is killed with SIGKILL (a crash: no graceful container shutdown) and restarted by
//! `tests/setup.sh`, which also copes with the pid file and socket the dead daemon leaves.
mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn restart_daemon(process: &str) {
    let killed = Command::new("pkill")
        .args(["-9", "-x", process])
        .status()
        .unwrap();
    assert!(killed.success(), "no {process} to kill");
    // SIGKILL is asynchronous: wait until no live process of that name is left (a zombie that
    // PID 1 never reaps does not count).
    let live = || {
        let out = Command::new("ps")
            .args(["-C", process, "-o", "stat="])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|s| !s.trim_start().starts_with('Z'))
    };
    assert!(
        wait_until(Duration::from_secs(10), || !live()),
        "{process} survived SIGKILL"
    );
    let setup = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/setup.sh");
    let out = Command::new("bash")
        .arg(setup)
        .output()
        .expect("run tests/setup.sh");
    assert!(
        out.status.success(),
        "tests/setup.sh could not bring {process} back:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn survive(rt: &'static str, daemon: &str, agent_starts_after: usize) {
    let l = Launcher::new(rt);
    l.script("", "serve\nserve\nserve\n");
    l.pre_start_with(&ecs_test_support::stand_in_tarball(
        "amazon/amazon-ecs-agent:latest",
    ));
    let mut start = KillOnDrop(l.spawn_start());
    assert!(
        introspection_answers(Duration::from_secs(60)),
        "agent never answered"
    );
    assert_eq!(l.agent_starts(), 1);

    let t0 = Instant::now();
    restart_daemon(daemon);
    eprintln!("{rt}: {daemon} back after {:?}", t0.elapsed());
    assert!(
        wait_until(Duration::from_secs(90), || l.agent_starts()
            >= agent_starts_after
            && introspection_answers(Duration::from_millis(300))
            && start.0.try_wait().unwrap().is_none()),
        "agent not served again after the {daemon} restart; ecs-init log:\n{}",
        l.init_log()
    );
    assert!(
        start.0.try_wait().unwrap().is_none(),
        "ecs-init exited: {:?}",
        start.0.try_wait()
    );
    assert_eq!(
        l.agent_starts(),
        agent_starts_after,
        "agent starts; ecs-init log:\n{}",
        l.init_log()
    );
    let st = l.run("status");
    assert_ok(&st, "status after the runtime restart");
    // And it still shuts down cleanly.
    assert_ok(&l.run("stop"), "stop");
    assert_eq!(
        wait_exit(&mut start.0, Duration::from_secs(30)).and_then(|s| s.code()),
        Some(0),
        "ecs-init did not end after stop; log:\n{}",
        l.init_log()
    );
}

/// dockerd (without live-restore) kills its containers when it comes back: ecs-init sees the
/// wait fail, waits for dockerd, and starts a new agent.
#[test]
fn docker_crash_and_restart() {
    survive("docker", "dockerd", 2);
}

/// containerd's shim keeps the task running while containerd is down: ecs-init keeps waiting on
/// the same agent, which serves throughout.
#[test]
fn containerd_crash_and_restart() {
    survive("containerd", "containerd", 1);
}
