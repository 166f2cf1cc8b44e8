//! What running the real agent under the launcher showed (issue 10), checked against the real
//! daemons: `plan` shows what the backend submits, the Docker API warning on containerd, the
//! whole runtime wait window, no task process left after `stop`, and `status`/`stop` telling
//! the truth about what they use and what they see.
mod common;

use common::*;
use ecs_test_support::{stand_in_tarball_with, ImageSpec, TarballFormat};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn agent_tarball() -> PathBuf {
    stand_in_tarball_with(
        &ImageSpec::new("amazon/amazon-ecs-agent:latest").marker("real-agent"),
        TarballFormat::DockerSave,
    )
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `v` without false, null and empty members (as Go's `omitempty` writes it).
fn without_empty(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), without_empty(v)))
                .filter(|(_, v)| {
                    !matches!(v, Value::Null | Value::Bool(false))
                        && v.as_array().is_none_or(|a| !a.is_empty())
                        && v.as_object().is_none_or(|o| !o.is_empty())
                        && v.as_str().is_none_or(|s| !s.is_empty())
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_empty).collect()),
        other => other.clone(),
    }
}

fn plan(l: &Launcher) -> serde_json::Value {
    let out = l.run("plan");
    assert_ok(&out, "plan");
    serde_json::from_slice(&out.stdout).expect("plan is JSON")
}

/// containerd: the OCI spec `plan` shows is the one the container was created with.
#[test]
fn plan_shows_the_oci_spec_containerd_gets() {
    let l = Launcher::new("containerd");
    l.root.write_ecs_config("ECS_CLUSTER=plan\n");
    l.pre_start_with(&agent_tarball());
    let planned = plan(&l);
    let submits = &planned["runtime"]["submits"];
    assert_eq!(submits["note"], serde_json::Value::Null, "{submits}");
    let _start = KillOnDrop(l.spawn_start());
    assert!(introspection_answers(Duration::from_secs(60)));
    let actual = l.runtime_inspect();
    // ctr shows the stored spec through Go's structs, which leave out false and empty fields.
    let (planned, actual_spec) = (
        without_empty(&submits["spec"]),
        without_empty(&actual["Spec"]),
    );
    if planned != actual_spec {
        let (p, a) = (&planned["process"]["env"], &actual_spec["process"]["env"]);
        if p != a {
            eprintln!("env: plan {p}\nenv: real {a}");
        }
        for key in [
            "ociVersion",
            "process",
            "root",
            "hostname",
            "mounts",
            "linux",
        ] {
            if planned[key] != actual_spec[key] {
                eprintln!(
                    "{key}: plan {}\n{key}: real {}",
                    planned[key], actual_spec[key]
                );
            }
        }
        panic!("plan's OCI spec differs from the container's");
    }
    assert_eq!(
        actual["Spec"]["linux"]["cgroupsPath"],
        format!("/ecs-init/{}/ecs-agent", l.containerd_namespace())
    );
    assert_eq!(submits["container"]["snapshotter"], actual["Snapshotter"]);
}

/// Docker: the binds and environment `plan` shows are the container's.
#[test]
fn plan_shows_the_request_docker_gets() {
    let l = Launcher::new("docker");
    l.root.write_ecs_config("ECS_CLUSTER=plan\n");
    l.pre_start_with(&agent_tarball());
    let planned = plan(&l);
    let body = &planned["runtime"]["submits"]["body"];
    let _start = KillOnDrop(l.spawn_start());
    assert!(introspection_answers(Duration::from_secs(60)));
    let actual = l.runtime_inspect();
    assert_eq!(body["HostConfig"]["Binds"], actual["HostConfig"]["Binds"]);
    let env = actual["Config"]["Env"].as_array().unwrap();
    for e in body["Env"].as_array().unwrap() {
        assert!(env.contains(e), "{e} not in the container's env");
    }
}

/// On containerd, nothing answering the Docker API where the agent looks is said plainly, once,
/// at start, and shown by plan and status; with a Docker that answers nothing is said.
#[test]
fn containerd_without_a_docker_api_is_said_plainly() {
    let mut l = Launcher::new("containerd");
    let quiet = plan(&l);
    assert_eq!(
        quiet["runtime"]["docker_api_for_the_agent"]["answers"], true,
        "{quiet}"
    );
    let dir = tempfile::tempdir().unwrap();
    let nothing = dir.path().join("docker.sock");
    l.env.push((
        "DOCKER_HOST".into(),
        format!("unix://{}", nothing.display()),
    ));
    l.pre_start_with(&agent_tarball());
    let planned = plan(&l);
    let api = &planned["runtime"]["docker_api_for_the_agent"];
    assert_eq!(api["answers"], false, "{api}");
    assert!(
        api["warning"]
            .as_str()
            .unwrap()
            .contains("Docker-compatible API"),
        "{api}"
    );
    let _start = KillOnDrop(l.spawn_start());
    assert!(introspection_answers(Duration::from_secs(60)));
    let log = l.init_log();
    let warnings = log
        .lines()
        .filter(|line| line.starts_with("level=warn") && line.contains("Docker-compatible API"))
        .count();
    // One from pre-start, one from start.
    assert_eq!(warnings, 2, "{log}");
    let status = l.run("status");
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("docker api:     nothing answers"),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
}

/// The whole ECS_INIT_RUNTIME_WAIT_SECONDS window is waited, and the error says its cause once.
fn wait_window(rt: &'static str) {
    let mut l = Launcher::new(rt);
    let missing = "/nonexistent-ecs-init-test/runtime.sock";
    l.env
        .push(("ECS_INIT_RUNTIME_WAIT_SECONDS".into(), "3".into()));
    match rt {
        "docker" => l
            .env
            .push(("DOCKER_HOST".into(), format!("unix://{missing}"))),
        _ => l.env.push(("CONTAINERD_ADDRESS".into(), missing.into())),
    }
    let t0 = Instant::now();
    let out = l.run("start");
    let took = t0.elapsed();
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    assert!(took >= Duration::from_secs(3), "gave up after {took:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");
    let last = stderr(&out).lines().last().unwrap_or_default().to_string();
    assert!(last.contains("did not answer within 3"), "{last}");
    let cause = if rt == "docker" {
        "does not exist"
    } else {
        "No such file or directory"
    };
    assert_eq!(last.matches(cause).count(), 1, "cause repeated: {last}");
}

#[test]
fn docker_wait_window() {
    wait_window("docker")
}

#[test]
fn containerd_wait_window() {
    wait_window("containerd")
}

/// containerd: after `stop`, no shim or log shim of the agent is left, and status says how it
/// ended.
#[test]
fn containerd_stop_leaves_no_task_process() {
    let l = Launcher::new("containerd");
    l.pre_start_with(&agent_tarball());
    let mut start = KillOnDrop(l.spawn_start());
    assert!(introspection_answers(Duration::from_secs(60)));
    let shim = format!("-namespace {} -id ecs-agent", l.containerd_namespace());
    let running = || {
        let out = Command::new("pgrep")
            .args(["-f", "--", &shim])
            .output()
            .unwrap();
        !out.stdout.is_empty()
    };
    assert!(running(), "no shim while the agent runs?");
    let out = l.run("stop");
    assert_ok(&out, "stop");
    let _ = wait_exit(&mut start.0, Duration::from_secs(30));
    assert!(
        wait_until(Duration::from_secs(10), || !running()),
        "the task's shim outlived stop"
    );
    let status = l.run("status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("ecs-agent exited with exit code 0"), "{text}");
}

/// status and stop name an explicit ECS_INIT_RUNTIME that differs from the recorded runtime.
#[test]
fn an_explicit_runtime_other_than_the_recorded_one_is_named() {
    let mut l = Launcher::new("containerd");
    l.pre_start_with(&agent_tarball());
    let mut start = KillOnDrop(l.spawn_start());
    assert!(introspection_answers(Duration::from_secs(60)));
    l.runtime = "docker";
    let status = l.run("status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("ECS_INIT_RUNTIME=docker is set, but the agent was started on containerd"),
        "{text}"
    );
    let stop = l.run("stop");
    assert_ok(&stop, "stop");
    assert!(
        stderr(&stop).contains("recorded=containerd configured=docker"),
        "{}",
        stderr(&stop)
    );
    let _ = wait_exit(&mut start.0, Duration::from_secs(30));
    l.runtime = "containerd";
}

/// Docker: status of a created, never started container says so.
#[test]
fn status_of_a_created_container() {
    let l = Launcher::new("docker");
    l.pre_start_with(&agent_tarball());
    let out = Command::new("docker")
        .args([
            "create",
            "--name",
            "ecs-agent",
            "amazon/amazon-ecs-agent:latest",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let status = l.run("status");
    assert_eq!(status.status.code(), Some(3));
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("ecs-agent created, not started yet, image amazon/amazon-ecs-agent:latest"),
        "{text}"
    );
    assert!(!text.contains('?'), "{text}");
}
