//! The packed stand-in against the REAL runtimes: the tarballs must load into dockerd and
//! containerd, the stand-in must serve, obey its knobs and stop on SIGTERM with 0, and damaged
//! tarballs must be refused. Needs root and both daemons (`tests/setup.sh`); fails otherwise.

use ecs_test_support::{
    agent_lock, corrupt_copy, require_containerd, require_docker, require_root,
    stand_in_agent_binary, stand_in_oci_tarball, stand_in_tarball, wait_for_http,
    wait_for_port_closed, write_docker_save_with, write_oci_layout_with, Corruption, ImageSpec,
    CREDENTIALS_ADDR, INTROSPECTION_ADDR,
};
use serde_json::Value;
use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn unique_marker() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}-{nanos}", std::process::id())
}

const CTR_NAMESPACE: &str = "ecs-init-tests-packer";

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Removes a docker container and image when the test ends, pass or fail.
struct DockerCleanup {
    container: String,
    image: String,
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        let _ = run("docker", &["rm", "-f", &self.container]);
        let _ = run("docker", &["rmi", "-f", &self.image]);
    }
}

fn docker_setup(reference: &str, container: &str) -> DockerCleanup {
    require_root();
    require_docker();
    let cleanup = DockerCleanup {
        container: container.to_string(),
        image: reference.to_string(),
    };
    let _ = run("docker", &["rm", "-f", container]);
    let out = run_ok(
        "docker",
        &["load", "-i", stand_in_tarball(reference).to_str().unwrap()],
    );
    assert!(
        out.contains(&format!("Loaded image: {reference}")),
        "unexpected docker load output: {out}"
    );
    cleanup
}

#[test]
fn docker_save_tarball_loads_serves_reports_and_stops_with_zero() {
    let reference = "ecs-init-tests/stand-in:packer-serve";
    let name = "ecs-init-tests-packer-serve";
    let _lock = agent_lock();
    let _cleanup = docker_setup(reference, name);
    let logdir = tempfile::tempdir().unwrap();
    let bind = format!("{}:/log", logdir.path().display());
    run_ok(
        "docker",
        &[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "host",
            "-v",
            &bind,
            "-e",
            "ECS_CLUSTER=packer-test",
            reference,
        ],
    );

    let meta = wait_for_http(INTROSPECTION_ADDR, "/v1/metadata", Duration::from_secs(20))
        .expect("the stand-in serves /v1/metadata");
    let meta: Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["Cluster"], "packer-test");
    assert!(meta["ContainerInstanceArn"].is_null());
    let creds = wait_for_http(CREDENTIALS_ADDR, "/", Duration::from_secs(5)).unwrap();
    assert_eq!(creds, "credentials stand-in");

    let report: Value = serde_json::from_str(
        &wait_for_http(INTROSPECTION_ADDR, "/v1/report", Duration::from_secs(5)).unwrap(),
    )
    .unwrap();
    assert_eq!(report["env"]["ECS_CLUSTER"], "packer-test");
    assert_eq!(report["pid"], 1, "no --init: the stand-in is PID 1");
    assert_eq!(report["pid1_is_self"], true);
    assert_eq!(report["uid"], 0);
    // Host networking: the container's net namespace is the host's.
    let host_net = fs::read_link("/proc/self/ns/net").unwrap();
    assert_eq!(
        report["namespaces"]["self"]["net"],
        host_net.to_string_lossy().as_ref()
    );
    // Its own mount namespace, with our bind at /log.
    assert_ne!(
        report["namespaces"]["self"]["mnt"],
        fs::read_link("/proc/self/ns/mnt")
            .unwrap()
            .to_string_lossy()
            .as_ref()
    );
    let mounts = report["mounts"].as_array().unwrap();
    let log_mount = mounts
        .iter()
        .find(|m| m["mount_point"] == "/log")
        .expect("/log is mounted");
    assert_eq!(log_mount["read_only"], false);
    let eff: Vec<&str> = report["capabilities"]["effective"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(eff.contains(&"CAP_CHOWN"), "docker default caps: {eff:?}");
    assert!(
        !eff.contains(&"CAP_SYS_ADMIN"),
        "no SYS_ADMIN unless added: {eff:?}"
    );

    // SIGTERM (docker stop) ends it promptly with 0, well inside the 10 s grace.
    let started = Instant::now();
    run_ok("docker", &["stop", "-t", "10", name]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stop took {:?}: SIGTERM was not handled",
        started.elapsed()
    );
    assert_eq!(
        run_ok("docker", &["inspect", "-f", "{{.State.ExitCode}}", name]).trim(),
        "0"
    );
    assert!(wait_for_port_closed(
        INTROSPECTION_ADDR,
        Duration::from_secs(5)
    ));

    let logs = run("docker", &["logs", name]);
    assert!(String::from_utf8_lossy(&logs.stdout).contains("stand-in agent starting pid=1"));
    assert!(String::from_utf8_lossy(&logs.stderr).contains("stand-in agent starting pid=1"));
    let logfile = fs::read_to_string(logdir.path().join("ecs-agent.log")).unwrap();
    assert!(logfile.contains("stand-in agent starting"), "{logfile}");
    assert!(logfile.contains("received SIGTERM"), "{logfile}");
}

fn docker_wait(name: &str) -> String {
    run_ok("docker", &["wait", name]).trim().to_string()
}

#[test]
fn stand_in_knobs_exit_codes_update_and_script_under_docker() {
    let reference = "ecs-init-tests/stand-in:packer-knobs";
    let name = "ecs-init-tests-packer-knobs";
    let _lock = agent_lock();
    let _cleanup = docker_setup(reference, name);
    let dir = tempfile::tempdir().unwrap();
    let cache_bind = format!("{}:/var/cache/ecs", dir.path().display());

    // Exit code after a delay, serving until then.
    run_ok(
        "docker",
        &[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "host",
            "-e",
            "STANDIN_EXIT_CODE=3",
            "-e",
            "STANDIN_EXIT_AFTER_MS=1500",
            "-e",
            "STANDIN_PRINT_LINES=5",
            reference,
        ],
    );
    assert!(wait_for_http(INTROSPECTION_ADDR, "/v1/metadata", Duration::from_secs(10)).is_some());
    assert_eq!(docker_wait(name), "3");
    let logs = String::from_utf8_lossy(&run("docker", &["logs", name]).stdout).into_owned();
    let first: Vec<&str> = logs.lines().take(5).collect();
    assert_eq!(first, ["line 1", "line 2", "line 3", "line 4", "line 5"]);
    run_ok("docker", &["rm", name]);

    // Update hand-off: desired-image written with a trailing newline, exit 42.
    run_ok(
        "docker",
        &[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "host",
            "-v",
            &cache_bind,
            "-e",
            "STANDIN_UPDATE_TO=ecs-agent-v2.tar",
            reference,
        ],
    );
    assert_eq!(docker_wait(name), "42");
    assert_eq!(
        fs::read_to_string(dir.path().join("desired-image")).unwrap(),
        "ecs-agent-v2.tar\n"
    );
    run_ok("docker", &["rm", name]);

    // A script makes successive starts of the SAME container differ: crash, crash, serve.
    fs::write(
        dir.path().join("script"),
        "exit 3 after 100\nexit 7\nserve\n",
    )
    .unwrap();
    run_ok(
        "docker",
        &[
            "create",
            "--name",
            name,
            "--network",
            "host",
            "-v",
            &cache_bind,
            "-e",
            "STANDIN_SCRIPT=/var/cache/ecs/script",
            reference,
        ],
    );
    run_ok("docker", &["start", name]);
    assert_eq!(docker_wait(name), "3");
    run_ok("docker", &["start", name]);
    assert_eq!(docker_wait(name), "7");
    run_ok("docker", &["start", name]);
    assert!(wait_for_http(INTROSPECTION_ADDR, "/v1/metadata", Duration::from_secs(10)).is_some());
    assert_eq!(fs::read_to_string(dir.path().join("script")).unwrap(), "");
    let starts = fs::read_to_string(dir.path().join("script.log")).unwrap();
    assert_eq!(starts.lines().count(), 3, "{starts}");
    run_ok("docker", &["stop", name]);
    assert_eq!(docker_wait(name), "0");
}

#[test]
fn corrupt_tarballs_are_rejected_by_docker_load() {
    require_root();
    require_docker();
    let reference = "ecs-init-tests/stand-in:packer-corrupt";
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.tar");
    // A layer no runtime has seen yet, or a damaged copy would be skipped, not read.
    let spec = ImageSpec::new(reference).marker(&unique_marker());
    write_docker_save_with(&stand_in_agent_binary(), &spec, &good).unwrap();
    for how in [
        Corruption::Truncated,
        Corruption::FlippedLayerBytes,
        Corruption::NotATar,
    ] {
        let bad = dir.path().join(format!("{how:?}.tar"));
        corrupt_copy(&good, &bad, how).unwrap();
        let out = run("docker", &["load", "-i", bad.to_str().unwrap()]);
        let _ = run("docker", &["rmi", "-f", reference]);
        assert!(
            !out.status.success(),
            "docker load accepted a {how:?} tarball: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

fn ctr(args: &[&str]) -> Output {
    let mut full = vec!["-n", CTR_NAMESPACE];
    full.extend_from_slice(args);
    run("ctr", &full)
}

/// Removes the containerd container, snapshot and image when the test ends.
struct CtrCleanup {
    id: String,
    image: String,
}

impl Drop for CtrCleanup {
    fn drop(&mut self) {
        let _ = ctr(&["task", "kill", "-s", "SIGKILL", &self.id]);
        let _ = ctr(&["task", "rm", "-f", &self.id]);
        let _ = ctr(&["containers", "rm", &self.id]);
        let _ = ctr(&["images", "rm", &self.image]);
    }
}

fn ctr_import(tarball: &Path) -> Output {
    ctr(&["images", "import", tarball.to_str().unwrap()])
}

#[test]
fn oci_tarball_imports_into_containerd_runs_and_stops_with_zero() {
    require_root();
    require_containerd();
    let reference = "ecs-init-tests/stand-in:packer-oci";
    let full = "docker.io/ecs-init-tests/stand-in:packer-oci";
    let id = "ecs-init-tests-packer-oci";
    let _lock = agent_lock();
    let _cleanup = CtrCleanup {
        id: id.to_string(),
        image: full.to_string(),
    };
    let out = ctr_import(&stand_in_oci_tarball(reference));
    assert!(
        out.status.success(),
        "ctr import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let images = String::from_utf8_lossy(&ctr(&["images", "ls", "-q"]).stdout).into_owned();
    assert!(images.lines().any(|l| l == full), "{images}");

    let child = Command::new("ctr")
        .args([
            "-n",
            CTR_NAMESPACE,
            "run",
            "--rm",
            "--net-host",
            "--env",
            "ECS_CLUSTER=oci",
            full,
            id,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ctr run");
    let meta = wait_for_http(INTROSPECTION_ADDR, "/v1/metadata", Duration::from_secs(20));
    let kill = ctr(&["task", "kill", "-s", "SIGTERM", id]);
    let out = child.wait_with_output().unwrap();
    let meta = meta.expect("the stand-in serves /v1/metadata under containerd");
    assert!(meta.contains("\"Cluster\":\"oci\""), "{meta}");
    assert!(
        kill.status.success(),
        "{}",
        String::from_utf8_lossy(&kill.stderr)
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "SIGTERM must end the stand-in with 0; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("stand-in agent starting"));
}

#[test]
fn docker_save_tarball_imports_into_containerd_and_corrupt_oci_is_rejected() {
    require_root();
    require_containerd();
    let reference = "ecs-init-tests/stand-in:packer-ctr-docker";
    let full = "docker.io/ecs-init-tests/stand-in:packer-ctr-docker";
    let _cleanup = CtrCleanup {
        id: "ecs-init-tests-packer-unused".to_string(),
        image: full.to_string(),
    };
    let out = ctr_import(&stand_in_tarball(reference));
    assert!(
        out.status.success(),
        "ctr import of docker-save failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let images = String::from_utf8_lossy(&ctr(&["images", "ls", "-q"]).stdout).into_owned();
    assert!(images.lines().any(|l| l == full), "{images}");

    // A flipped byte in an OCI blob does not match the digest the manifest names.
    let bad_ref = "ecs-init-tests/stand-in:packer-ctr-bad";
    let dir = tempfile::tempdir().unwrap();
    let (good, bad) = (dir.path().join("good.tar"), dir.path().join("bad.tar"));
    let spec = ImageSpec::new(bad_ref).marker(&unique_marker());
    write_oci_layout_with(&stand_in_agent_binary(), &spec, &good).unwrap();
    corrupt_copy(&good, &bad, Corruption::FlippedLayerBytes).unwrap();
    let out = ctr_import(&bad);
    let _ = ctr(&["images", "rm", &format!("docker.io/{bad_ref}")]);
    assert!(
        !out.status.success(),
        "containerd imported a corrupt OCI tarball: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
