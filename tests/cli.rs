//! The command line without a running runtime: usage and exit codes, `plan`/`stop`/`post-stop`
//! while the runtime is down, and bad input that must fail clearly before anything changes.
mod common;

use ecs_test_support::TestRoot;
use std::path::Path;
use std::process::{Command, Output};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_amazon-ecs-init"));
    c.env_remove("NOTIFY_SOCKET")
        .env_remove("ECS_INIT_RUNTIME")
        .env_remove("ECS_INIT_FIREWALL");
    c
}

/// The launcher with its runtimes pointed at sockets that do not exist.
fn no_runtime(root: &Path, action: &str) -> Output {
    common::launcher(action)
        .env("ECS_INIT_HOST_ROOT", root)
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .env("CONTAINERD_ADDRESS", "/nonexistent/containerd.sock")
        .env("ECS_INIT_RUNTIME_WAIT_SECONDS", "1")
        .output()
        .expect("run amazon-ecs-init")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every file under `root`, for "nothing changed" checks.
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn usage_errors_exit_1() {
    let o = bin().output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("Usage: amazon-ecs-init <COMMAND>"),
        "{}",
        stderr(&o)
    );
    let o = bin().arg("bogus").output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(bin().arg("--help").output().unwrap().status.code(), Some(0));
}

#[test]
fn version_line() {
    let o = bin().arg("version").output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    let line = String::from_utf8_lossy(&o.stdout);
    assert!(
        line.starts_with(&format!("ecs-init version {} (", env!("CARGO_PKG_VERSION"))),
        "{line}"
    );
}

#[test]
fn plan_works_without_a_runtime_and_redacts_secrets() {
    let root = TestRoot::new();
    root.write_ecs_config(
        "ECS_CLUSTER=c1\nAWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI\nECS_AGENT_LABELS={\"a\":\"b\"}\n",
    );
    let mut c = bin();
    let o = c
        .arg("plan")
        .env("ECS_INIT_HOST_ROOT", root.path())
        .env("ECS_INIT_RUNTIME", "containerd")
        .env("ECS_INIT_FIREWALL", "none")
        .env("CONTAINERD_ADDRESS", "/nonexistent/containerd.sock")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(!all.contains("wJalrXUtnFEMI"), "secret printed");
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).expect("plan is JSON");
    assert_eq!(plan["agent"]["image"], "amazon/amazon-ecs-agent:latest");
    assert_eq!(plan["agent"]["labels"]["a"], "b");
    assert_eq!(plan["runtime"]["name"], "containerd");
    assert_eq!(plan["network"]["firewall"], "none");
    let by_backend = &plan["network"]["rendered_by_backend"];
    assert!(
        by_backend["iptables"]
            .to_string()
            .contains("-j DNAT --to-destination 127.0.0.1:51679"),
        "{by_backend}"
    );
    assert!(
        by_backend["nftables"]
            .to_string()
            .contains("table ip ecs-init"),
        "{by_backend}"
    );
    let env = plan["agent"]["env"].to_string();
    assert!(
        env.contains("AWS_SECRET_ACCESS_KEY=<redacted>") && env.contains("ECS_CLUSTER=c1"),
        "{env}"
    );
    assert_eq!(
        tree(root.path())
            .iter()
            .filter(|p| p.contains("runtime-backend") || p.contains("firewall-backend"))
            .count(),
        0,
        "plan records nothing"
    );
}

#[test]
fn stop_and_post_stop_work_while_the_runtime_is_down() {
    let root = TestRoot::new();
    for rt in ["docker", "containerd"] {
        std::fs::write(root.join("var/lib/ecs/runtime-backend"), format!("{rt}\n")).unwrap();
        let o = no_runtime(root.path(), "stop");
        assert_eq!(o.status.code(), Some(0), "{rt}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("could not reach the runtime"),
            "{}",
            stderr(&o)
        );
    }
    let o = no_runtime(root.path(), "post-stop");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn missing_socket_is_a_clear_error() {
    let root = TestRoot::new();
    let mut c = bin();
    let o = c
        .arg("start")
        .env("ECS_INIT_HOST_ROOT", root.path())
        .env("ECS_INIT_RUNTIME", "docker")
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .env("ECS_INIT_RUNTIME_WAIT_SECONDS", "1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(255));
    assert!(
        stderr(&o).contains("/nonexistent/docker.sock"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn unknown_backend_names_fail_before_anything_changes() {
    for (key, value) in [("ECS_INIT_RUNTIME", "podman"), ("ECS_INIT_FIREWALL", "pf")] {
        let root = TestRoot::new();
        root.write_ecs_config(&format!("{key}={value}\n"));
        let before = tree(root.path());
        let o = no_runtime(root.path(), "pre-start");
        assert_eq!(o.status.code(), Some(255), "{key}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(value),
            "{key}: the error names the value: {}",
            stderr(&o)
        );
        // Only the log file may have appeared.
        let after: Vec<String> = tree(root.path())
            .into_iter()
            .filter(|p| !p.starts_with("var/log/ecs/ecs-init.log"))
            .collect();
        assert_eq!(after, before, "{key}={value} changed the host root");
    }
}

#[test]
fn bad_cache_state_names_the_file() {
    let root = TestRoot::new();
    std::fs::write(root.join("var/cache/ecs/ecs-agent.tar"), "x").unwrap();
    root.write_cache_state(9);
    let o = bin()
        .arg("plan")
        .env("ECS_INIT_HOST_ROOT", root.path())
        .env("ECS_INIT_FIREWALL", "none")
        .output()
        .unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).expect("plan is JSON");
    // The rollback's thresholds (README, Updates).
    assert_eq!(plan["rollback"]["enabled"], true, "{plan}");
    assert_eq!(plan["rollback"]["failed_starts"], 3, "{plan}");
    assert_eq!(plan["rollback"]["timeout_seconds"], 600.0, "{plan}");
    assert_eq!(
        plan["rollback"]["known_good_reference"],
        "amazon/amazon-ecs-agent:ecs-init-known-good"
    );
    let err = plan["cache"]["state"]["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("var/cache/ecs/state") && err.contains("\"9\""),
        "{plan}"
    );
}

/// `reload-cache` on an uncached host downloads like `pre-start` (here from a closed loopback
/// port, within a 2 s deadline: it fails naming the download) and writes nothing.
#[test]
fn reload_cache_without_a_tarball_downloads() {
    ecs_test_support::require_docker();
    let root = TestRoot::new();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let mut c = bin();
    for k in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "AWS_ENDPOINT_URL",
    ] {
        c.env_remove(k);
    }
    let o = c
        .arg("reload-cache")
        .env("ECS_INIT_HOST_ROOT", root.path())
        .env("ECS_INIT_RUNTIME", "docker")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT_URL_S3", format!("https://{addr}"))
        .env("ECS_INIT_DOWNLOAD_DEADLINE_SECONDS", "2")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(255), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("could not download the agent")
            && stderr(&o).contains("nothing is cached; downloading the agent"),
        "{}",
        stderr(&o)
    );
    assert!(root.read("var/cache/ecs/state").is_none());
    assert!(!root.var_cache_ecs().join("ecs-agent.tar").exists());
}

/// The agent's AppArmor profile compiles with the real parser (`-Q`: without loading it, so the
/// test also runs on kernels without AppArmor).
#[test]
fn apparmor_profile_compiles() {
    let parser = std::path::Path::new(amazon_ecs_init::apparmor::PARSER);
    assert!(
        parser.exists(),
        "{} is missing: tests/setup.sh installs the apparmor package",
        parser.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let exec = ecs_host::SystemExec::new(std::env::var_os("PATH"));
    let path =
        amazon_ecs_init::apparmor::install(&exec, dir.path(), "ecs-agent-default", parser, false)
            .unwrap_or_else(|e| panic!("{e}"));
    assert!(std::fs::read_to_string(path)
        .unwrap()
        .contains("profile ecs-agent-default"));
}

/// `plan | head` closes the pipe early: plan must not report that as a failure. The read end
/// is closed before plan writes (it first probes the runtimes), so its write meets EPIPE.
#[test]
fn plan_into_a_closed_pipe_is_not_an_error() {
    let root = TestRoot::new();
    let mut child = bin()
        .arg("plan")
        .env("ECS_INIT_HOST_ROOT", root.path())
        .env("ECS_INIT_FIREWALL", "none")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("Broken pipe"), "{}", stderr(&out));
}

/// Issue 20 (7): `version`, `status` and `plan` with stdout a closed pipe (`status | head -0`)
/// or a full disk (`/dev/full`): no panic ("failed printing to stdout", exit 134), the
/// action's own exit code.
#[test]
fn a_closed_or_full_stdout_is_not_fatal() {
    let root = TestRoot::new();
    for action in ["version", "status", "plan"] {
        // A pipe whose reading end is already closed: every write is EPIPE.
        let mut fds = [0; 2];
        // SAFETY: pipe(2) fills two descriptors; the read end is closed at once, the write end
        // is handed to the child (and owned by the Stdio from then on).
        let closed = unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            libc::close(fds[0]);
            <std::process::Stdio as std::os::fd::FromRawFd>::from_raw_fd(fds[1])
        };
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        for (what, out) in [("closed pipe", closed), ("/dev/full", full.into())] {
            let o = bin()
                .arg(action)
                .env("ECS_INIT_HOST_ROOT", root.path())
                .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
                .env("CONTAINERD_ADDRESS", "/nonexistent/containerd.sock")
                .env("ECS_INIT_FIREWALL", "none")
                .stdout(out)
                .output()
                .unwrap();
            let code = o.status.code();
            let want = if action == "status" { 3 } else { 0 };
            assert_eq!(code, Some(want), "{action} to {what}: {}", stderr(&o));
            assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
        }
    }
}
