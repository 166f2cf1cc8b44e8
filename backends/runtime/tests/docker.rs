//! The Docker backend against the real dockerd on `/var/run/docker.sock`.
//!
//! Every test that runs the stand-in agent holds [`support::agent_lock`]: the agent uses host
//! networking and fixed ports, and other test binaries run it too. Containers and image
//! references made here carry an `ecs-dkt` prefix so they cannot collide with other suites,
//! except the exact-name test, which is about the name `ecs-agent` itself.

use bollard::query_parameters::CreateContainerOptionsBuilder;
use bollard::Docker;
use ecs_runtime::docker::DockerRuntime;
use ecs_runtime::{AgentSpec, LogConfig, Mount, NamespaceMode, Runtime, RuntimeError};
use ecs_test_support as support;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The stand-in agent image every container test runs.
const IMAGE: &str = "ecs-dkt/stand-in:latest";

fn runtime() -> DockerRuntime {
    support::require_docker();
    DockerRuntime::connect(None).expect("connect to the default docker endpoint")
}

async fn client(rt: &DockerRuntime) -> Docker {
    rt.client().await.expect("bollard client")
}

/// Load the stand-in image under `reference`. Always loaded, never reused by tag: an image
/// left by an earlier build of the stand-in would lack its newer knobs (reloading an identical
/// image is cheap, dockerd skips the layers it has).
async fn ensure_image(rt: &DockerRuntime, reference: &str) {
    let tarball = support::stand_in_tarball(reference);
    let loaded = rt.load_image(&tarball).await.expect("load stand-in image");
    assert!(loaded.iter().any(|r| r == reference), "{loaded:?}");
}

/// A minimal spec for the stand-in: private network (so it never fights over ports), no mounts.
fn spec(name: &str, env: &[(&str, &str)]) -> AgentSpec {
    AgentSpec {
        network: NamespaceMode::Private,
        ..AgentSpec::new(IMAGE, name, env)
    }
}

/// Removes the named containers when the test ends, also when it panics (via the CLI, because
/// `Drop` cannot await).
struct Cleanup(Vec<String>);

impl Cleanup {
    fn new(names: &[&str]) -> Self {
        let cleanup = Cleanup(names.iter().map(|n| n.to_string()).collect());
        cleanup.run();
        cleanup
    }
    fn run(&self) {
        for name in &self.0 {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", "-v", name])
                .output();
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.run();
    }
}

/// GET `path` from the stand-in's introspection port, waiting up to 15 s for it to answer.
async fn introspect(path: &'static str) -> String {
    tokio::task::spawn_blocking(move || {
        support::wait_for_http(support::INTROSPECTION_ADDR, path, Duration::from_secs(15))
            .unwrap_or_else(|| panic!("GET {path} never answered 200"))
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn ping_reports_docker_and_its_version() {
    let rt = runtime();
    let info = rt.ping().await.expect("ping dockerd");
    assert_eq!(info.runtime, "docker");
    assert_eq!(info.endpoint, "unix:///var/run/docker.sock");
    let cli = std::process::Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .expect("docker CLI");
    assert_eq!(info.version, String::from_utf8_lossy(&cli.stdout).trim());
}

#[tokio::test]
async fn missing_socket_is_a_connect_error_naming_it_and_connect_itself_succeeds() {
    let socket = "/tmp/ecs-dkt-no-such-dir/docker.sock";
    let rt = DockerRuntime::connect(Some(&format!("unix://{socket}")))
        .expect("connect must not need the daemon");
    for err in [
        rt.ping().await.unwrap_err(),
        rt.image_present(IMAGE).await.unwrap_err(),
        rt.stop("ecs-agent", Duration::from_secs(1))
            .await
            .unwrap_err(),
    ] {
        assert!(matches!(err, RuntimeError::Connect { .. }), "{err:?}");
        assert!(err.to_string().contains(socket), "{err}");
    }
    let err = DockerRuntime::connect(Some("tcp://127.0.0.1:2375")).unwrap_err();
    assert!(err.to_string().contains("tcp://127.0.0.1:2375"), "{err}");
}

/// dockerd tags the images of an archive one by one and stops at the first broken one: without
/// verifying the whole archive first, a tarball whose second image is broken would move the
/// first image's tag and then fail.
#[tokio::test]
async fn a_partly_valid_multi_image_tarball_moves_no_tag() {
    let rt = runtime();
    let docker = client(&rt).await;
    let reference = "ecs-dkt/multi:v1";
    let pid = std::process::id();
    let old = support::stand_in_tarball_with(
        &support::ImageSpec::new(reference).marker(&format!("multi-old-{pid}")),
        support::TarballFormat::DockerSave,
    );
    rt.load_image(&old).await.expect("load the first image");
    let id_before = docker.inspect_image(reference).await.unwrap().id;
    let new = support::stand_in_tarball_with(
        &support::ImageSpec::new(reference).marker(&format!("multi-new-{pid}")),
        support::TarballFormat::DockerSave,
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("multi.tar");
    support::corrupt_copy(&new, &bad, support::Corruption::BrokenSecondImage).unwrap();
    let err = rt.load_image(&bad).await.unwrap_err();
    assert!(
        matches!(&err, RuntimeError::BadTarball { path, reason } if *path == bad && reason.contains("missing")),
        "{err:?}"
    );
    assert_eq!(
        docker.inspect_image(reference).await.unwrap().id,
        id_before,
        "the tag moved"
    );
    assert!(!rt.image_present("ecs-dkt/multi:v1-broken").await.unwrap());
    // The same archive without the broken image loads and moves the tag.
    rt.load_image(&new).await.expect("load the intact archive");
    assert_ne!(docker.inspect_image(reference).await.unwrap().id, id_before);
}

/// Docker's image ID is the config digest the archive names.
#[tokio::test]
async fn image_id_is_the_config_digest() {
    let rt = runtime();
    let reference = "ecs-dkt/id:v1";
    let tarball = support::stand_in_tarball(reference);
    rt.load_image(&tarball).await.unwrap();
    let images = ecs_runtime::archive::verify_file(std::fs::File::open(&tarball).unwrap()).unwrap();
    assert_eq!(
        rt.image_id(reference).await.unwrap(),
        Some(images[0].config_digest.clone())
    );
    assert_eq!(rt.image_id("ecs-dkt/id:absent").await.unwrap(), None);
}

#[tokio::test]
async fn load_good_then_corrupt_keeps_the_good_image() {
    let _lock = support::agent_lock();
    let rt = runtime();
    let docker = client(&rt).await;
    let reference = "ecs-dkt/load:v1";
    let name = "ecs-dkt-load";
    let _cleanup = Cleanup::new(&[name]);

    let good = support::stand_in_tarball(reference);
    let loaded = rt.load_image(&good).await.expect("load good tarball");
    assert_eq!(loaded, vec![reference.to_string()]);
    assert!(rt.image_present(reference).await.unwrap());
    assert!(!rt.image_present("ecs-dkt/load:v2").await.unwrap());
    let id_before = docker.inspect_image(reference).await.unwrap().id;

    let dir = tempfile::tempdir().unwrap();
    for how in [
        support::Corruption::Truncated,
        support::Corruption::NotATar,
        support::Corruption::FlippedLayerBytes,
    ] {
        let bad = dir.path().join(format!("{how:?}.tar"));
        support::corrupt_copy(&good, &bad, how).unwrap();
        let result = rt.load_image(&bad).await;
        eprintln!("{how:?}: {result:?}");
        match result {
            Err(RuntimeError::BadTarball { path, reason }) => {
                assert_eq!(path, bad);
                assert!(!reason.is_empty());
            }
            // dockerd skips layers it already has (by chain ID) without reading them, so a
            // damaged copy of a layer it holds is ignored and the image comes out intact. That
            // is only acceptable for the flipped-bytes case; the checks below prove nothing
            // was lost either way.
            Ok(refs) if how == support::Corruption::FlippedLayerBytes => {
                assert_eq!(refs, vec![reference.to_string()])
            }
            other => panic!("{how:?}: expected BadTarball, got {other:?}"),
        }
        assert!(rt.image_present(reference).await.unwrap(), "{how:?}");
        assert_eq!(
            docker.inspect_image(reference).await.unwrap().id,
            id_before,
            "{how:?}"
        );
    }

    let missing = dir.path().join("absent.tar");
    let err = rt.load_image(&missing).await.unwrap_err();
    assert!(
        matches!(&err, RuntimeError::BadTarball { path, .. } if *path == missing),
        "{err:?}"
    );

    // The surviving image still runs.
    let mut s = spec(
        name,
        &[("STANDIN_EXIT_CODE", "7"), ("STANDIN_EXIT_AFTER_MS", "100")],
    );
    s.image = reference.into();
    rt.run(&s).await.expect("run the surviving image");
    assert_eq!(rt.wait(name).await.unwrap(), 7);
    rt.remove_container(name).await.unwrap();
}

#[tokio::test]
async fn run_maps_every_spec_field_and_stop_is_graceful() {
    let _lock = support::agent_lock();
    let rt = runtime();
    let docker = client(&rt).await;
    ensure_image(&rt, IMAGE).await;
    let name = "ecs-dkt-full";
    let _cleanup = Cleanup::new(&[name]);

    let rw = tempfile::tempdir().unwrap();
    let ro = tempfile::tempdir().unwrap();
    let spec = AgentSpec {
        image: IMAGE.into(),
        name: name.into(),
        env: vec![
            ("ECS_CLUSTER".into(), "dkt-cluster".into()),
            ("WITH_EQUALS".into(), "a=b=c".into()),
            ("ECS_LOGFILE".into(), "/dkt/rw/agent.log".into()),
        ],
        mounts: vec![
            Mount::rw(rw.path(), "/dkt/rw"),
            Mount::ro(ro.path(), "/dkt/ro"),
            Mount::ro("/proc", "/host/proc"),
        ],
        labels: BTreeMap::from([
            ("dkt.label".to_string(), "one".to_string()),
            ("dkt.other".to_string(), "two".to_string()),
        ]),
        cap_add: vec!["NET_ADMIN".into(), "SYS_ADMIN".into()],
        network: NamespaceMode::Host,
        pid: NamespaceMode::Host,
        userns: NamespaceMode::Host,
        // See `privileged_reaches_dockerd`: this host may not allow it.
        privileged: false,
        init: true,
        apparmor_profile: Some("ecs-dkt-profile".into()),
        log: LogConfig {
            driver: "json-file".into(),
            options: BTreeMap::from([
                ("max-size".to_string(), "1m".to_string()),
                ("max-file".to_string(), "2".to_string()),
            ]),
        },
    };
    rt.run(&spec).await.expect("run full spec");

    let info = docker.inspect_container(name, None).await.unwrap();
    let config = info.config.clone().unwrap();
    let env = config.env.unwrap();
    for want in [
        "ECS_CLUSTER=dkt-cluster",
        "WITH_EQUALS=a=b=c",
        "ECS_LOGFILE=/dkt/rw/agent.log",
    ] {
        assert!(env.iter().any(|e| e == want), "{want} not in {env:?}");
    }
    let labels = config.labels.unwrap();
    assert_eq!(labels.get("dkt.label").map(String::as_str), Some("one"));
    assert_eq!(labels.get("dkt.other").map(String::as_str), Some("two"));
    assert_eq!(config.image.as_deref(), Some(IMAGE));

    let hc = info.host_config.clone().unwrap();
    assert_eq!(
        hc.binds.unwrap(),
        vec![
            format!("{}:/dkt/rw", rw.path().display()),
            format!("{}:/dkt/ro:ro", ro.path().display()),
            "/proc:/host/proc:ro".to_string(),
        ]
    );
    assert_eq!(hc.cap_add.unwrap(), vec!["NET_ADMIN", "SYS_ADMIN"]);
    assert_eq!(hc.network_mode.as_deref(), Some("host"));
    assert_eq!(hc.userns_mode.as_deref(), Some("host"));
    assert_eq!(hc.pid_mode.as_deref(), Some("host"));
    assert_eq!(hc.privileged, Some(false));
    assert_eq!(hc.init, Some(true));
    // dockerd itself adds `label=disable` for a host PID namespace.
    let security_opt = hc.security_opt.unwrap();
    assert!(
        security_opt.iter().any(|o| o == "apparmor:ecs-dkt-profile"),
        "{security_opt:?}"
    );
    let log = hc.log_config.unwrap();
    assert_eq!(log.typ.as_deref(), Some("json-file"));
    let log_opts = log.config.unwrap();
    assert_eq!(log_opts.get("max-size").map(String::as_str), Some("1m"));
    assert_eq!(log_opts.get("max-file").map(String::as_str), Some("2"));
    let restart = hc
        .restart_policy
        .and_then(|p| p.name)
        .map(|n| n.to_string());
    assert!(
        matches!(restart.as_deref(), None | Some("") | Some("no")),
        "{restart:?}"
    );
    // No command override: the container runs exactly what the image says.
    let image = docker.inspect_image(IMAGE).await.unwrap().config.unwrap();
    assert_eq!(config.cmd, image.cmd);
    assert_eq!(config.entrypoint, image.entrypoint);

    // The container is really up with host networking: its introspection port answers here.
    let metadata = introspect("/v1/metadata").await;
    assert!(metadata.contains("dkt-cluster"), "{metadata}");
    // And from the inside it sees the mount read-only and the host's PID namespace.
    let report: serde_json::Value = serde_json::from_str(&introspect("/v1/report").await).unwrap();
    let mounts = report["mounts"].as_array().unwrap();
    let ro_mount = mounts
        .iter()
        .find(|m| m["mount_point"] == "/dkt/ro")
        .expect("/dkt/ro mounted");
    assert_eq!(ro_mount["read_only"], true, "{ro_mount}");
    let rw_mount = mounts
        .iter()
        .find(|m| m["mount_point"] == "/dkt/rw")
        .expect("/dkt/rw mounted");
    assert_eq!(rw_mount["read_only"], false, "{rw_mount}");
    let host_pid_ns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    assert_eq!(
        report["namespaces"]["self"]["pid"].as_str(),
        host_pid_ns.to_str()
    );

    let state = rt.inspect(name).await.unwrap().expect("container exists");
    assert!(state.running);
    assert_eq!(state.status, "running");
    assert_eq!(state.name, name);
    assert_eq!(state.image, IMAGE);
    assert_eq!(state.id, info.id.unwrap());
    let pid = state.pid.expect("running container has a pid");
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "{state:?}"
    );
    assert!(state.started_at.is_some());
    assert_eq!(state.exit_code, None);
    assert_eq!(state.finished_at, None);

    // A supervisor waits while someone else stops the container: the wait ends with 0, the
    // stand-in's answer to SIGTERM, well within the grace period.
    let waiter = tokio::spawn(async move { runtime().wait(name).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiter.is_finished(),
        "wait returned while the container runs"
    );
    let started = Instant::now();
    rt.stop(name, Duration::from_secs(10)).await.expect("stop");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(waiter.await.unwrap().expect("wait during stop"), 0);
    let state = rt.inspect(name).await.unwrap().unwrap();
    assert!(!state.running);
    assert_eq!(state.status, "exited");
    assert_eq!(state.exit_code, Some(0));
    assert!(state.finished_at.is_some());
    assert_eq!(state.pid, None);
    assert_eq!(rt.wait(name).await.unwrap(), 0);
    // Stopping a stopped container is success (HTTP 304).
    rt.stop(name, Duration::from_secs(1)).await.unwrap();
    rt.remove_container(name).await.unwrap();
    assert_eq!(rt.inspect(name).await.unwrap(), None);
}

#[tokio::test]
async fn wait_returns_zero_and_nonzero_exit_codes_as_results() {
    let _lock = support::agent_lock();
    let rt = runtime();
    ensure_image(&rt, IMAGE).await;
    let name = "ecs-dkt-wait";
    let _cleanup = Cleanup::new(&[name]);
    let dir = tempfile::tempdir().unwrap();

    // Exit 3 while we are waiting, with a private PID namespace under docker-init.
    let mut s = spec(
        name,
        &[
            ("STANDIN_EXIT_CODE", "3"),
            ("STANDIN_EXIT_AFTER_MS", "500"),
            ("STANDIN_WRITE_REPORT", "/dkt/report.json"),
        ],
    );
    s.mounts = vec![Mount::rw(dir.path(), "/dkt")];
    rt.run(&s).await.unwrap();
    assert_eq!(rt.wait(name).await.expect("non-zero exit is Ok"), 3);
    let state = rt.inspect(name).await.unwrap().unwrap();
    assert_eq!((state.running, state.exit_code), (false, Some(3)));

    // `init: true` puts docker-init at PID 1 of the container's own PID namespace.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(
        report["pid1_comm"], "docker-init",
        "{}",
        report["pid1_comm"]
    );
    assert_eq!(report["pid1_is_self"], false);
    let host_pid_ns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    assert_ne!(
        report["namespaces"]["self"]["pid"].as_str(),
        host_pid_ns.to_str()
    );

    // Waiting on a container that has already exited reports the recorded code.
    assert_eq!(rt.wait(name).await.unwrap(), 3);

    // And a clean exit is 0.
    rt.remove_container(name).await.unwrap();
    rt.run(&spec(
        name,
        &[("STANDIN_EXIT_CODE", "0"), ("STANDIN_EXIT_AFTER_MS", "200")],
    ))
    .await
    .unwrap();
    assert_eq!(rt.wait(name).await.unwrap(), 0);
    rt.remove_container(name).await.unwrap();
}

/// An agent that ignores SIGTERM is killed once the grace period is over: stop returns after
/// about the grace, and the exit is SIGKILL's (137).
#[tokio::test]
async fn stop_kills_an_agent_that_ignores_sigterm_after_the_grace() {
    let _lock = support::agent_lock();
    let rt = runtime();
    ensure_image(&rt, IMAGE).await;
    let name = "ecs-dkt-hang";
    let _cleanup = Cleanup::new(&[name]);
    rt.run(&spec(name, &[("STANDIN_IGNORE_SIGTERM", "1")]))
        .await
        .unwrap();
    // It prints its start line after installing its signal handling.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rt
        .logs_tail(name, 20)
        .await
        .unwrap()
        .contains("stand-in agent starting")
    {
        assert!(Instant::now() < deadline, "the stand-in never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let grace = Duration::from_secs(2);
    let t = Instant::now();
    rt.stop(name, grace).await.expect("stop");
    let took = t.elapsed();
    assert!(
        took >= grace - Duration::from_millis(100),
        "SIGKILL came early: {took:?}"
    );
    assert!(took < grace + Duration::from_secs(5), "stop took {took:?}");
    let state = rt.inspect(name).await.unwrap().expect("state");
    assert_eq!(
        (state.running, state.exit_code),
        (false, Some(137)),
        "{state:?}"
    );
    assert!(rt
        .logs_tail(name, 20)
        .await
        .unwrap()
        .contains("received SIGTERM, ignoring it"));
}

#[tokio::test]
async fn logs_tail_returns_the_last_lines_with_timestamps() {
    let _lock = support::agent_lock();
    let rt = runtime();
    ensure_image(&rt, IMAGE).await;
    let name = "ecs-dkt-logs";
    let _cleanup = Cleanup::new(&[name]);

    rt.run(&spec(
        name,
        &[
            ("STANDIN_PRINT_LINES", "50"),
            ("STANDIN_EXIT_CODE", "0"),
            ("STANDIN_EXIT_AFTER_MS", "300"),
        ],
    ))
    .await
    .unwrap();
    assert_eq!(rt.wait(name).await.unwrap(), 0);

    // Strip the timestamp docker prefixes to every line (RFC 3339, then a space).
    let text = |with_ts: &str| -> Vec<String> {
        with_ts
            .lines()
            .map(|l| {
                let (ts, rest) = l.split_once(' ').unwrap_or_else(|| panic!("{l:?}"));
                assert!(
                    ts.len() >= 20 && ts.as_bytes()[4] == b'-' && ts.contains('T'),
                    "no timestamp on {l:?}"
                );
                rest.to_string()
            })
            .collect()
    };
    let all = text(&rt.logs_tail(name, 10_000).await.unwrap());
    for i in 1..=50 {
        assert!(
            all.contains(&format!("line {i}")),
            "line {i} missing: {all:?}"
        );
    }
    // stdout and stderr interleave by time, and the stand-in logs its start-up after the
    // numbered lines; ask for exactly enough lines to begin at "line 46".
    let from = all.iter().position(|l| l == "line 46").unwrap();
    let n = all.len() - from;
    let tail = text(&rt.logs_tail(name, n).await.unwrap());
    assert_eq!(tail, all[from..], "tail {n}");
    assert!(!tail.iter().any(|l| l == "line 45"));
    for want in ["line 46", "line 47", "line 50"] {
        assert!(tail.iter().any(|l| l == want), "{want}: {tail:?}");
    }
    // stderr is part of the logs. (Checked on the whole log: dockerd stamps stdout and stderr
    // from separate copiers, so the stand-in's stderr line may sort before "line 46".)
    assert!(
        all.iter().any(|l| l.ends_with("(stderr)")),
        "stderr missing: {all:?}"
    );
    rt.remove_container(name).await.unwrap();
}

#[tokio::test]
async fn absent_containers_are_fine_to_stop_and_remove_and_inspect_as_none() {
    let rt = runtime();
    let name = "ecs-dkt-never-created";
    let _cleanup = Cleanup::new(&[name]);
    rt.stop(name, Duration::from_secs(1)).await.unwrap();
    rt.remove_container(name).await.unwrap();
    assert_eq!(rt.inspect(name).await.unwrap(), None);
    let err = rt.wait(name).await.unwrap_err();
    assert!(
        matches!(&err, RuntimeError::NoSuchContainer(n) if n == name),
        "{err:?}"
    );
    let err = rt.logs_tail(name, 5).await.unwrap_err();
    assert!(
        matches!(&err, RuntimeError::NoSuchContainer(n) if n == name),
        "{err:?}"
    );
}

#[tokio::test]
async fn remove_container_matches_the_exact_name_only() {
    let _lock = support::agent_lock();
    let rt = runtime();
    let docker = client(&rt).await;
    ensure_image(&rt, IMAGE).await;
    let others = ["ecs-agent-other", "other-ecs-agent"];
    let _cleanup = Cleanup::new(&["ecs-agent", others[0], others[1]]);

    // The target runs (force removal must stop it); the look-alikes are merely created.
    rt.run(&spec("ecs-agent", &[])).await.unwrap();
    for other in others {
        docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(other).build()),
                bollard::models::ContainerCreateBody {
                    image: Some(IMAGE.into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    assert!(rt.inspect("ecs-agent").await.unwrap().unwrap().running);

    rt.remove_container("ecs-agent").await.unwrap();
    assert_eq!(rt.inspect("ecs-agent").await.unwrap(), None);
    for other in others {
        let state = rt.inspect(other).await.unwrap();
        assert_eq!(
            state.map(|s| s.status),
            Some("created".to_string()),
            "{other}"
        );
    }
    // Removing again is still fine.
    rt.remove_container("ecs-agent").await.unwrap();
    for other in others {
        rt.remove_container(other).await.unwrap();
        assert_eq!(rt.inspect(other).await.unwrap(), None);
    }
}

/// Does this host let dockerd start a privileged container? Privileged means every capability,
/// and runc fails ("unable to apply caps") when our own bounding set lacks one, as it does when
/// the test host is itself a restricted container.
fn host_allows_privileged() -> bool {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let bounding = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    let all = (1u64 << (last + 1)) - 1;
    bounding & all == all
}

#[tokio::test]
async fn privileged_reaches_dockerd() {
    let _lock = support::agent_lock();
    let rt = runtime();
    let docker = client(&rt).await;
    ensure_image(&rt, IMAGE).await;
    let name = "ecs-dkt-privileged";
    let _cleanup = Cleanup::new(&[name]);
    let mut s = spec(name, &[]);
    s.privileged = true;
    if host_allows_privileged() {
        rt.run(&s).await.expect("run privileged");
        let hc = docker
            .inspect_container(name, None)
            .await
            .unwrap()
            .host_config
            .unwrap();
        assert_eq!(hc.privileged, Some(true));
        rt.stop(name, Duration::from_secs(10)).await.unwrap();
    } else {
        // dockerd got the flag: runc tried to grant every capability and could not. The
        // failed start must not leave a created container behind to block the next attempt.
        let err = rt.run(&s).await.unwrap_err();
        assert!(
            matches!(&err, RuntimeError::Daemon { action, message, .. }
                if action.contains("start container ecs-dkt-privileged") && message.contains("caps")),
            "{err:?}"
        );
        assert_eq!(rt.inspect(name).await.unwrap(), None);
    }
    rt.remove_container(name).await.unwrap();
}

/// `tag_image` points a name of our own at the image another name has (the launcher's
/// known-good agent): the source keeps its tag, a second tag moves the target, an image ID
/// works as the source, and a missing source is an error that moves nothing.
#[tokio::test]
async fn tag_image_points_a_second_name_and_moves_it() {
    let rt = runtime();
    let (src, kept) = ("ecs-dkt/tag-src:latest", "ecs-dkt/tag-kept:known-good");
    let rmi = |r: &str| {
        let _ = std::process::Command::new("docker")
            .args(["rmi", "-f", r])
            .output();
    };
    rmi(kept);
    let v1 = support::stand_in_tarball_with(
        &support::ImageSpec::new(src).marker("tag-v1"),
        support::TarballFormat::DockerSave,
    );
    let v2 = support::stand_in_tarball_with(
        &support::ImageSpec::new(src).marker("tag-v2"),
        support::TarballFormat::DockerSave,
    );
    rt.load_image(&v1).await.expect("load v1");
    let id1 = rt.image_id(src).await.unwrap().expect("v1 present");
    assert_eq!(rt.image_id(kept).await.unwrap(), None);
    rt.tag_image(src, kept).await.expect("tag");
    assert_eq!(
        rt.image_id(kept).await.unwrap().as_deref(),
        Some(id1.as_str())
    );
    // A new image under the source name: the kept name stays on v1.
    rt.load_image(&v2).await.expect("load v2");
    let id2 = rt.image_id(src).await.unwrap().expect("v2 present");
    assert_ne!(id1, id2);
    assert_eq!(
        rt.image_id(kept).await.unwrap().as_deref(),
        Some(id1.as_str())
    );
    // Back: the source name moves to the kept image, the kept name stays.
    rt.tag_image(kept, src).await.expect("tag back");
    assert_eq!(
        rt.image_id(src).await.unwrap().as_deref(),
        Some(id1.as_str())
    );
    assert_eq!(
        rt.image_id(kept).await.unwrap().as_deref(),
        Some(id1.as_str())
    );
    // An image ID is a source too.
    rt.tag_image(&id2, kept).await.expect("tag by ID");
    assert_eq!(
        rt.image_id(kept).await.unwrap().as_deref(),
        Some(id2.as_str())
    );
    // A missing source: an error naming it; the target does not move.
    let err = rt
        .tag_image("ecs-dkt/no-such-image:1", kept)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ecs-dkt/no-such-image:1"), "{err}");
    assert_eq!(
        rt.image_id(kept).await.unwrap().as_deref(),
        Some(id2.as_str())
    );
    rmi(kept);
    rmi(src);
}
