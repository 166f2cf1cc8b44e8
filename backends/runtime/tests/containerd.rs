//! The containerd backend against the real containerd on this machine (with runc).
//!
//! Every test uses its own containerd namespace (`ecs-init-test-<name>`) and log directory and
//! cleans both up; tests that run the agent container hold `agent_lock()` (host network, fixed
//! ports). The static `ecs-agent-init` is built once into `target/agent-init-static`.

use ecs_runtime::containerd::{ContainerdOptions, ContainerdRuntime};
use ecs_runtime::{AgentSpec, Mount, NamespaceMode, Runtime, RuntimeError};
use ecs_test_support as support;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const NAME: &str = "ecs-agent";

/// The static `ecs-agent-init`, built once by the test support crate.
fn agent_init() -> PathBuf {
    support::agent_init_binary()
}

/// A runtime in a private namespace, cleaned before and after.
struct Env {
    rt: ContainerdRuntime,
    ns: String,
    logs: tempfile::TempDir,
}

fn ctr(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ctr")
        .arg("-n")
        .arg(ns)
        .args(args)
        .output()
        .expect("run ctr");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wipe(ns: &str) {
    for c in ctr(ns, &["containers", "ls", "-q"]).lines() {
        let _ = ctr(ns, &["tasks", "kill", "-a", "-s", "SIGKILL", c]);
        std::thread::sleep(Duration::from_millis(200));
        let _ = ctr(ns, &["tasks", "rm", "-f", c]);
        let _ = ctr(ns, &["containers", "rm", c]);
    }
    for i in ctr(ns, &["images", "ls", "-q"]).lines() {
        let _ = ctr(ns, &["images", "rm", "--sync", i]);
    }
}

impl Env {
    /// The stand-in loaded as the agent image, and no container of the agent's name.
    async fn agent_image_and_no_container(&self) {
        self.rt
            .load_image(&support::stand_in_tarball(support::AGENT_IMAGE))
            .await
            .unwrap();
        self.rt.remove_container(NAME).await.unwrap();
    }

    fn new(test: &str) -> Env {
        support::require_root();
        support::require_containerd();
        let ns = format!("ecs-init-test-{test}");
        wipe(&ns);
        let logs = tempfile::tempdir().expect("temp log dir");
        let rt = ContainerdRuntime::with_options(ContainerdOptions {
            address: "/run/containerd/containerd.sock".into(),
            namespace: ns.clone(),
            agent_init: agent_init(),
            log_dir: logs.path().to_path_buf(),
            snapshotter: "overlayfs".into(),
        })
        .expect("runtime");
        Env { rt, ns, logs }
    }

    fn images(&self) -> Vec<String> {
        let mut v: Vec<String> = ctr(&self.ns, &["images", "ls", "-q"])
            .lines()
            .map(str::to_string)
            .collect();
        v.sort();
        v
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        wipe(&self.ns);
    }
}

fn spec(env: &[(&str, &str)]) -> AgentSpec {
    AgentSpec {
        labels: BTreeMap::from([("com.example.test".to_string(), "yes".to_string())]),
        cap_add: vec!["NET_ADMIN".into(), "SYS_ADMIN".into()],
        ..AgentSpec::new(support::AGENT_IMAGE, NAME, env)
    }
}

fn rt_block<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Polls `logs_tail` until `pred` holds (the log shim writes asynchronously).
async fn logs_until(rt: &ContainerdRuntime, n: usize, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = rt.logs_tail(NAME, n).await.expect("logs_tail");
        if pred(&out) || Instant::now() > deadline {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn import_docker_save_both_names_and_idempotent() {
    let env = Env::new("import-docker");
    rt_block(async {
        let tar = support::stand_in_tarball(support::AGENT_IMAGE);
        let loaded = env.rt.load_image(&tar).await.expect("load");
        assert_eq!(loaded, vec![support::AGENT_IMAGE.to_string()]);
        assert!(env.rt.image_present(support::AGENT_IMAGE).await.unwrap());
        assert!(env
            .rt
            .image_present("docker.io/amazon/amazon-ecs-agent:latest")
            .await
            .unwrap());
        assert!(!env.rt.image_present("amazon/other:latest").await.unwrap());
        // The image ID is the archive's config digest, as on Docker.
        let archive =
            ecs_runtime::archive::verify_file(std::fs::File::open(&tar).unwrap()).unwrap();
        assert_eq!(
            env.rt.image_id(support::AGENT_IMAGE).await.unwrap(),
            Some(archive[0].config_digest.clone())
        );
        assert_eq!(env.rt.image_id("amazon/other:latest").await.unwrap(), None);
        let images = env.images();
        assert_eq!(
            images,
            vec![
                "amazon/amazon-ecs-agent:latest".to_string(),
                "docker.io/amazon/amazon-ecs-agent:latest".to_string()
            ]
        );
        let before = ctr(&env.ns, &["images", "ls"]);
        let snaps_before = ctr(&env.ns, &["snapshots", "ls"]);
        env.rt.load_image(&tar).await.expect("second load");
        assert_eq!(
            ctr(&env.ns, &["images", "ls"]),
            before,
            "re-import changed images"
        );
        assert_eq!(ctr(&env.ns, &["snapshots", "ls"]), snaps_before);
    });
}

#[test]
fn import_oci_layout() {
    let env = Env::new("import-oci");
    rt_block(async {
        let tar = support::stand_in_oci_tarball(support::AGENT_IMAGE);
        let loaded = env.rt.load_image(&tar).await.expect("load");
        assert_eq!(loaded, vec![support::AGENT_IMAGE.to_string()]);
        assert!(env.rt.image_present(support::AGENT_IMAGE).await.unwrap());
        assert!(env
            .rt
            .image_present("docker.io/amazon/amazon-ecs-agent:latest")
            .await
            .unwrap());
        // The record points at the layout's real manifest.
        let ls = ctr(&env.ns, &["images", "ls"]);
        assert!(
            ls.contains("application/vnd.oci.image.manifest.v1+json"),
            "{ls}"
        );
        env.rt.load_image(&tar).await.expect("re-import");
        assert_eq!(ctr(&env.ns, &["images", "ls"]), ls);
    });
}

#[test]
fn corrupt_tarballs_fail_and_keep_the_good_image() {
    let env = Env::new("corrupt");
    let _lock = support::agent_lock();
    rt_block(async {
        let good = support::stand_in_tarball(support::AGENT_IMAGE);
        env.rt.load_image(&good).await.expect("load good");
        let images = ctr(&env.ns, &["images", "ls"]);
        let dir = tempfile::tempdir().unwrap();
        let fresh = support::stand_in_tarball_with(
            &support::ImageSpec::new(support::AGENT_IMAGE)
                .marker(&format!("corrupt-{}", std::process::id())),
            support::TarballFormat::DockerSave,
        );
        for (how, src) in [
            (support::Corruption::FlippedLayerBytes, &fresh),
            (support::Corruption::FlippedLayerBytes, &good),
            (support::Corruption::Truncated, &fresh),
            (support::Corruption::NotATar, &fresh),
        ] {
            let bad = dir.path().join("bad.tar");
            support::corrupt_copy(src, &bad, how).unwrap();
            let err = env.rt.load_image(&bad).await.unwrap_err();
            assert!(
                matches!(err, RuntimeError::BadTarball { .. }),
                "{how:?}: {err:?}"
            );
            assert_eq!(
                ctr(&env.ns, &["images", "ls"]),
                images,
                "{how:?} changed images"
            );
        }
        let missing = env
            .rt
            .load_image(Path::new("/nonexistent.tar"))
            .await
            .unwrap_err();
        assert!(matches!(missing, RuntimeError::BadTarball { .. }));
        // The earlier image still runs.
        env.rt.remove_container(NAME).await.unwrap();
        env.rt.run(&spec(&[])).await.expect("run");
        let meta = support::wait_for_http(
            support::INTROSPECTION_ADDR,
            "/v1/metadata",
            Duration::from_secs(20),
        );
        assert!(meta.is_some(), "agent did not answer");
        env.rt.stop(NAME, Duration::from_secs(10)).await.unwrap();
        env.rt.remove_container(NAME).await.unwrap();
    });
}

fn readlink(p: &str) -> String {
    std::fs::read_link(p)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn run_report_stop_wait_inspect_remove() {
    let env = Env::new("run");
    let _lock = support::agent_lock();
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data.path().join("rw")).unwrap();
    std::fs::create_dir_all(data.path().join("ro")).unwrap();
    rt_block(async {
        env.agent_image_and_no_container().await;
        assert_eq!(env.rt.inspect(NAME).await.unwrap(), None);
        let mut s = spec(&[
            ("ECS_CLUSTER", "conformance"),
            ("ECS_LOGFILE", "/data-rw/agent.log"),
        ]);
        s.mounts = vec![
            Mount::rw(data.path().join("rw"), "/data-rw"),
            Mount::ro(data.path().join("ro"), "/data-ro"),
        ];
        env.rt.run(&s).await.expect("run");
        let meta = support::wait_for_http(
            support::INTROSPECTION_ADDR,
            "/v1/metadata",
            Duration::from_secs(20),
        )
        .expect("agent answers /v1/metadata");
        assert!(meta.contains("\"Cluster\":\"conformance\""), "{meta}");
        let report: Value = serde_json::from_str(
            &support::wait_for_http(
                support::INTROSPECTION_ADDR,
                "/v1/report",
                Duration::from_secs(5),
            )
            .expect("report"),
        )
        .unwrap();

        // Host network and user namespace; own PID namespace.
        let ns = &report["namespaces"]["self"];
        assert_eq!(ns["net"], readlink("/proc/self/ns/net"), "{report}");
        assert_eq!(ns["user"], readlink("/proc/self/ns/user"));
        assert_ne!(ns["pid"], readlink("/proc/self/ns/pid"));
        assert_ne!(ns["mnt"], readlink("/proc/self/ns/mnt"));
        // Our init is PID 1 and the agent is its child.
        assert_eq!(report["pid1_comm"], "ecs-agent-init", "{report}");
        assert_eq!(report["pid1_is_self"], false);
        assert_eq!(report["ppid"], 1);
        // Capabilities: Docker's defaults plus the added ones, nothing else.
        let caps: Vec<String> =
            serde_json::from_value(report["capabilities"]["effective"].clone()).unwrap();
        for c in [
            "CAP_NET_ADMIN",
            "CAP_SYS_ADMIN",
            "CAP_CHOWN",
            "CAP_KILL",
            "CAP_NET_RAW",
        ] {
            assert!(caps.contains(&c.to_string()), "{c} missing from {caps:?}");
        }
        assert!(!caps.contains(&"CAP_SYS_MODULE".to_string()), "{caps:?}");
        assert_eq!(caps.len(), 16, "{caps:?}");
        // Env: ours plus the image's.
        assert_eq!(report["env"]["ECS_CLUSTER"], "conformance");
        assert!(report["env"]["PATH"].is_string());
        // Binds, read-only where asked.
        let mounts = report["mounts"].as_array().unwrap();
        let find = |p: &str| {
            mounts
                .iter()
                .find(|m| m["mount_point"] == p)
                .unwrap_or_else(|| panic!("{p} not mounted: {mounts:?}"))
                .clone()
        };
        assert_eq!(find("/data-rw")["read_only"], false);
        assert_eq!(find("/data-ro")["read_only"], true);
        assert_eq!(find("/run/containerd")["read_only"], false);
        assert!(
            data.path().join("rw/agent.log").exists(),
            "agent wrote through the rw bind"
        );

        let state = env.rt.inspect(NAME).await.unwrap().expect("state");
        assert!(state.running, "{state:?}");
        assert_eq!(state.status, "running");
        assert!(
            state.pid.is_some() && state.started_at.is_some(),
            "{state:?}"
        );

        let t = Instant::now();
        env.rt.stop(NAME, Duration::from_secs(10)).await.unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "stop took {:?}",
            t.elapsed()
        );
        assert_eq!(env.rt.wait(NAME).await.unwrap(), 0);
        let state = env.rt.inspect(NAME).await.unwrap().expect("state");
        assert_eq!(
            (state.status.as_str(), state.exit_code),
            ("exited", Some(0))
        );
        assert!(state.finished_at.is_some());
        // Stopping a stopped container is fine.
        env.rt.stop(NAME, Duration::from_secs(1)).await.unwrap();

        env.rt.remove_container(NAME).await.unwrap();
        assert_eq!(env.rt.inspect(NAME).await.unwrap(), None);
        env.rt.remove_container(NAME).await.unwrap();
        env.rt.stop(NAME, Duration::from_secs(1)).await.unwrap();
        assert!(matches!(
            env.rt.wait(NAME).await.unwrap_err(),
            RuntimeError::NoSuchContainer(_)
        ));
    });
}

#[test]
fn exit_code_and_logs_tail() {
    let env = Env::new("exit");
    let _lock = support::agent_lock();
    rt_block(async {
        env.agent_image_and_no_container().await;
        env.rt
            .run(&spec(&[
                ("STANDIN_EXIT_CODE", "3"),
                ("STANDIN_EXIT_AFTER_MS", "300"),
                ("STANDIN_PRINT_LINES", "300"),
            ]))
            .await
            .unwrap();
        assert_eq!(
            env.rt.wait(NAME).await.unwrap(),
            3,
            "non-zero exit is a result"
        );
        let all = logs_until(&env.rt, 1000, |s| s.contains("exiting with code 3")).await;
        assert!(
            all.contains("line 1\n") && all.contains("line 300\n"),
            "{all}"
        );
        assert!(
            all.contains("stand-in agent starting pid=") && all.contains("(stderr)"),
            "{all}"
        );
        for l in all.lines() {
            let (ts, _) = l.split_once(' ').unwrap();
            assert!(
                ts.len() >= 20 && ts.ends_with('Z') && ts.contains('T'),
                "{l}"
            );
        }
        let total = all.lines().count();
        let tail = env.rt.logs_tail(NAME, 5).await.unwrap();
        assert_eq!(tail.lines().count(), 5);
        let expected: Vec<&str> = all.lines().skip(total - 5).collect();
        assert_eq!(tail.lines().collect::<Vec<_>>(), expected);
        let state = env.rt.inspect(NAME).await.unwrap().unwrap();
        assert_eq!(state.exit_code, Some(3));
        env.rt.remove_container(NAME).await.unwrap();
        assert!(matches!(
            env.rt.logs_tail(NAME, 5).await.unwrap_err(),
            RuntimeError::NoSuchContainer(_)
        ));
    });
}

#[test]
fn log_rotates_at_max_size() {
    let env = Env::new("rotate");
    let _lock = support::agent_lock();
    rt_block(async {
        env.agent_image_and_no_container().await;
        let mut s = spec(&[("STANDIN_EXIT_CODE", "0"), ("STANDIN_PRINT_LINES", "3000")]);
        s.log.options = BTreeMap::from([
            ("max-size".to_string(), "8k".to_string()),
            ("max-file".to_string(), "3".to_string()),
        ]);
        env.rt.run(&s).await.unwrap();
        assert_eq!(env.rt.wait(NAME).await.unwrap(), 0);
        let tail = logs_until(&env.rt, 3, |t| t.contains("exiting with code 0")).await;
        assert!(tail.contains("exiting with code 0"), "{tail}");
        let dir = env.logs.path();
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(
            files,
            ["ecs-agent.log", "ecs-agent.log.1", "ecs-agent.log.2"]
        );
        for f in &files {
            let len = std::fs::metadata(dir.join(f)).unwrap().len();
            assert!(len <= 8 * 1024, "{f} is {len} bytes");
        }
        // Old lines were rotated away; the newest are still there.
        let all = env.rt.logs_tail(NAME, 100_000).await.unwrap();
        assert!(!all.contains("line 1\n"), "oldest lines should be gone");
        env.rt.remove_container(NAME).await.unwrap();
        assert!(
            std::fs::read_dir(dir).unwrap().next().is_none(),
            "logs removed with the container"
        );
    });
}

#[test]
fn leftover_container_is_removed_by_a_new_instance() {
    let env = Env::new("leftover");
    let _lock = support::agent_lock();
    rt_block(async {
        env.agent_image_and_no_container().await;
        env.rt.run(&spec(&[])).await.unwrap();
        support::wait_for_http(
            support::INTROSPECTION_ADDR,
            "/v1/metadata",
            Duration::from_secs(20),
        )
        .expect("first agent answers");
        // A second run with the name taken is refused, not silently replaced.
        assert!(env.rt.run(&spec(&[])).await.is_err());
        // A fresh launcher (new instance) removes the running leftover and starts again.
        let fresh = ContainerdRuntime::with_options(env.rt.options().clone()).unwrap();
        fresh.remove_container(NAME).await.unwrap();
        assert_eq!(fresh.inspect(NAME).await.unwrap(), None);
        assert!(!ctr(&env.ns, &["snapshots", "ls"]).contains(NAME));
        fresh.run(&spec(&[])).await.unwrap();
        support::wait_for_http(
            support::INTROSPECTION_ADDR,
            "/v1/metadata",
            Duration::from_secs(20),
        )
        .expect("second agent answers");
        fresh.stop(NAME, Duration::from_secs(10)).await.unwrap();
        fresh.remove_container(NAME).await.unwrap();
    });
}

#[test]
fn ping_reports_version() {
    let env = Env::new("ping");
    rt_block(async {
        let info = env.rt.ping().await.unwrap();
        assert_eq!(info.runtime, "containerd");
        assert!(
            info.version.starts_with('1') || info.version.starts_with('2'),
            "{info:?}"
        );
        assert_eq!(info.endpoint, "unix:///run/containerd/containerd.sock");
    });
}

/// An agent that ignores SIGTERM is killed once the grace period is over: stop returns after
/// about the grace, and the task's exit is SIGKILL's (137).
#[test]
fn stop_kills_an_agent_that_ignores_sigterm_after_the_grace() {
    let _lock = support::agent_lock();
    let env = Env::new("hang");
    rt_block(async {
        let tar = support::stand_in_tarball(support::AGENT_IMAGE);
        env.rt.load_image(&tar).await.expect("load");
        env.rt
            .run(&spec(&[("STANDIN_IGNORE_SIGTERM", "1")]))
            .await
            .expect("run");
        // It prints its start line after installing its signal handling.
        let out = logs_until(&env.rt, 20, |l| l.contains("stand-in agent starting")).await;
        assert!(out.contains("stand-in agent starting"), "{out}");
        let grace = Duration::from_secs(2);
        let t = Instant::now();
        env.rt.stop(NAME, grace).await.expect("stop");
        let took = t.elapsed();
        assert!(
            took >= grace - Duration::from_millis(100),
            "SIGKILL came early: {took:?}"
        );
        assert!(took < grace + Duration::from_secs(5), "stop took {took:?}");
        assert_eq!(env.rt.wait(NAME).await.unwrap(), 137);
        let out = logs_until(&env.rt, 20, |l| l.contains("ignoring it")).await;
        assert!(
            out.contains("received SIGTERM, ignoring it"),
            "SIGTERM was delivered first: {out}"
        );
        env.rt.remove_container(NAME).await.unwrap();
    });
}

/// Processes whose command line contains `needle` (shims, log shims).
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        // Zombies have an empty command line.
        if cmd.contains(needle) {
            found.push(cmd);
        }
    }
    found
}

/// Two launchers' agents (two namespaces) run at once; a forced stop of one (SIGKILL to every
/// process of its cgroup) leaves the other running: each namespace has its own cgroup.
#[test]
fn a_forced_stop_in_one_namespace_leaves_the_other() {
    let _lock = support::agent_lock();
    let a = Env::new("cgroup-a");
    let b = Env::new("cgroup-b");
    rt_block(async {
        let tar = support::stand_in_tarball(support::AGENT_IMAGE);
        let hang = AgentSpec {
            network: NamespaceMode::Private,
            ..spec(&[("STANDIN_IGNORE_SIGTERM", "1")])
        };
        for env in [&a, &b] {
            env.rt.load_image(&tar).await.expect("load");
            env.rt.run(&hang).await.expect("run");
            let out = logs_until(&env.rt, 20, |l| l.contains("stand-in agent starting")).await;
            assert!(out.contains("stand-in agent starting"), "{out}");
        }
        let spec_a = ctr(&a.ns, &["containers", "info", NAME]);
        assert!(
            spec_a.contains("/ecs-init/ecs-init-test-cgroup-a/ecs-agent"),
            "{spec_a}"
        );
        a.rt.stop(NAME, Duration::from_secs(1))
            .await
            .expect("forced stop");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let other = b.rt.inspect(NAME).await.unwrap().unwrap();
        assert!(
            other.running,
            "the other namespace's agent was killed: {other:?}"
        );
        let pid = other.pid.unwrap();
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        b.rt.stop(NAME, Duration::from_secs(1)).await.unwrap();
    });
}

/// After stop, no process of the agent's task is left (no shim, no log shim), and the
/// container record still tells how it ended.
#[test]
fn stop_leaves_no_task_process_behind() {
    let _lock = support::agent_lock();
    let env = Env::new("leftovers");
    rt_block(async {
        let tar = support::stand_in_tarball(support::AGENT_IMAGE);
        env.rt.load_image(&tar).await.expect("load");
        let s = AgentSpec {
            network: NamespaceMode::Private,
            ..spec(&[])
        };
        env.rt.run(&s).await.expect("run");
        let out = logs_until(&env.rt, 20, |l| l.contains("stand-in agent starting")).await;
        assert!(out.contains("stand-in agent starting"), "{out}");
        let shim = format!("-namespace {} -id {NAME}", env.ns);
        let log_dir = env.logs.path().display().to_string();
        assert!(!processes_with(&shim).is_empty(), "no shim while running?");
        env.rt
            .stop(NAME, Duration::from_secs(10))
            .await
            .expect("stop");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline
            && !(processes_with(&shim).is_empty() && processes_with(&log_dir).is_empty())
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(processes_with(&shim), Vec::<String>::new(), "shim left");
        assert_eq!(
            processes_with(&log_dir),
            Vec::<String>::new(),
            "log shim left"
        );
        let st = env
            .rt
            .inspect(NAME)
            .await
            .unwrap()
            .expect("the record stays");
        assert_eq!(
            (st.status.as_str(), st.exit_code),
            ("exited", Some(0)),
            "{st:?}"
        );
        assert!(st.finished_at.is_some(), "{st:?}");
        assert_eq!(env.rt.wait(NAME).await.unwrap(), 0);
        env.rt.remove_container(NAME).await.unwrap();
        assert!(env.rt.inspect(NAME).await.unwrap().is_none());
    });
}

/// A bind whose source does not exist: created as a directory, as dockerd does (runc would
/// refuse to start the container; seen on a fresh containerd-only machine with
/// /etc/docker/plugins).
#[test]
fn a_missing_bind_source_is_created_like_docker_does() {
    let _lock = support::agent_lock();
    let env = Env::new("missing-bind");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("not/there/plugins");
    rt_block(async {
        let tar = support::stand_in_tarball(support::AGENT_IMAGE);
        env.rt.load_image(&tar).await.expect("load");
        let s = AgentSpec {
            network: NamespaceMode::Private,
            mounts: vec![Mount::ro(&missing, "/run/docker/plugins")],
            ..spec(&[])
        };
        env.rt
            .run(&s)
            .await
            .expect("run with a missing bind source");
        assert!(missing.is_dir());
        env.rt.stop(NAME, Duration::from_secs(10)).await.unwrap();
        env.rt.remove_container(NAME).await.unwrap();
    });
}

/// `tag_image` gives the image another name (familiar and full records, as a load makes
/// them): the source keeps its name, a second tag moves the target, a missing source is an
/// error that moves nothing, and the named image survives the removal of every other name
/// and a garbage collection (what keeps the launcher's known-good agent).
#[test]
fn tag_image_points_a_second_name_and_keeps_the_image() {
    let env = Env::new("tag-image");
    let src = support::AGENT_IMAGE;
    let kept = "amazon/amazon-ecs-agent:ecs-init-known-good";
    rt_block(async {
        let v1 = support::stand_in_tarball_with(
            &support::ImageSpec::new(src).marker("tag-v1"),
            support::TarballFormat::DockerSave,
        );
        let v2 = support::stand_in_tarball_with(
            &support::ImageSpec::new(src).marker("tag-v2"),
            support::TarballFormat::DockerSave,
        );
        env.rt.load_image(&v1).await.expect("load v1");
        let id1 = env.rt.image_id(src).await.unwrap().expect("v1 present");
        env.rt.tag_image(src, kept).await.expect("tag");
        assert_eq!(
            env.rt.image_id(kept).await.unwrap().as_deref(),
            Some(id1.as_str())
        );
        assert!(env
            .images()
            .contains(&"docker.io/amazon/amazon-ecs-agent:ecs-init-known-good".to_string()));
        env.rt.load_image(&v2).await.expect("load v2");
        let id2 = env.rt.image_id(src).await.unwrap().expect("v2 present");
        assert_ne!(id1, id2);
        assert_eq!(
            env.rt.image_id(kept).await.unwrap().as_deref(),
            Some(id1.as_str())
        );
        // Only the kept name holds v1 now: v1 survives a collection.
        let _ = ctr(
            &env.ns,
            &["images", "rm", "--sync", "amazon/amazon-ecs-agent:latest"],
        );
        let _ = ctr(
            &env.ns,
            &[
                "images",
                "rm",
                "--sync",
                "docker.io/amazon/amazon-ecs-agent:latest",
            ],
        );
        assert_eq!(env.rt.image_id(src).await.unwrap(), None);
        assert_eq!(
            env.rt.image_id(kept).await.unwrap().as_deref(),
            Some(id1.as_str()),
            "the kept image's content is still there"
        );
        // Back: the agent name points at v1 again, both forms.
        env.rt.tag_image(kept, src).await.expect("tag back");
        assert_eq!(
            env.rt.image_id(src).await.unwrap().as_deref(),
            Some(id1.as_str())
        );
        assert_eq!(
            env.rt
                .image_id("docker.io/amazon/amazon-ecs-agent:latest")
                .await
                .unwrap()
                .as_deref(),
            Some(id1.as_str())
        );
        let err = env
            .rt
            .tag_image("amazon/no-such-image:1", kept)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("amazon/no-such-image:1"), "{err}");
        assert_eq!(
            env.rt.image_id(kept).await.unwrap().as_deref(),
            Some(id1.as_str())
        );
    });
}
