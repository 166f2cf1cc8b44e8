//! The launcher's conformance suite: the same supervisor and spec tests, run against every
//! runtime backend (real dockerd, real containerd with runc). See `common` for the harness.
//!
//! Every test holds the agent lock (host networking, fixed container name and ports), so the
//! tests of this file and of other test binaries that run the agent never overlap.
mod common;

use common::*;
use ecs_test_support::{
    corrupt_copy, stand_in_tarball, stand_in_tarball_with, Corruption, ImageSpec, TarballFormat,
};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The stand-in, tagged as the agent image, with a marker env so tests can tell versions apart.
fn agent_tarball(version: &str) -> PathBuf {
    let spec = ImageSpec::new("amazon/amazon-ecs-agent:latest")
        .marker(version)
        .env("STANDIN_IMAGE_VERSION", version);
    stand_in_tarball_with(&spec, TarballFormat::DockerSave)
}

fn image_version(l: &Launcher) -> String {
    version_in(&l.report())
}

fn version_in(report: &serde_json::Value) -> String {
    report["env"]["STANDIN_IMAGE_VERSION"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn cold_start_serves_introspection_and_stops_on_sigterm(rt: &'static str) {
    let l = Launcher::new(rt);
    l.root.write_ecs_config("ECS_CLUSTER=conformance\n");
    let host_sysctl =
        || std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/route_localnet").unwrap();
    let before = host_sysctl();
    l.pre_start_with(&agent_tarball("v1"));
    assert_eq!(
        host_sysctl(),
        before,
        "pre-start ran in its own netns; the host's sysctl is untouched"
    );
    assert_eq!(
        l.root.read("var/cache/ecs/state").as_deref(),
        Some("1"),
        "a successful load records state 1"
    );
    let t0 = Instant::now();
    let mut start = KillOnDrop(l.spawn_start());
    assert!(
        introspection_answers(Duration::from_secs(60)),
        "introspection never answered"
    );
    eprintln!("{rt}: cold start to introspection in {:?}", t0.elapsed());
    let (_, body) =
        ecs_test_support::http_get(INTROSPECTION, "/v1/metadata", Duration::from_secs(2)).unwrap();
    assert!(body.contains("\"Cluster\":\"conformance\""), "{body}");
    // status: runtime, running agent, introspection answering; exit 0.
    let st = l.run("status");
    assert_ok(&st, "status");
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(text.contains(&format!("runtime:        {rt}")), "{text}");
    assert!(text.contains("ecs-agent running, up"), "{text}");
    assert!(text.contains("answers (HTTP/1."), "{text}");
    // SIGTERM: the agent is stopped within its grace, then ecs-init exits 0.
    signal(&start.0, libc::SIGTERM);
    let status =
        wait_exit(&mut start.0, Duration::from_secs(20)).expect("start exits after SIGTERM");
    assert_eq!(status.code(), Some(0));
    assert!(
        !introspection_answers(Duration::from_millis(500)),
        "agent still answering after stop"
    );
    let st = l.run("status");
    assert_eq!(
        st.status.code(),
        Some(3),
        "status of a stopped agent exits 3"
    );
    assert!(
        l.init_log().contains("agent container started"),
        "{}",
        l.init_log()
    );
}

fn spec_seen_from_inside(rt: &'static str) {
    let mut l = Launcher::new(rt);
    l.root.write_ecs_config(
        "ECS_CLUSTER=spec\nECS_AGENT_LABELS={\"team\":\"infra\",\"tier\":\"gold\"}\nECS_ENGINE_AUTH_DATA=topsecret\n",
    );
    l.env
        .push(("ECS_AGENT_PID_NAMESPACE_HOST".into(), "false".into()));
    l.pre_start_with(&agent_tarball("v1"));
    let _start = KillOnDrop(l.spawn_start());
    assert!(introspection_answers(Duration::from_secs(60)));
    let r = l.report();
    let env = &r["env"];
    for (k, v) in [
        ("ECS_CLUSTER", "spec"),
        ("ECS_LOGFILE", "/log/ecs-agent.log"),
        ("ECS_DATADIR", "/data"),
        ("ECS_ENABLE_TASK_IAM_ROLE", "true"),
        ("ECS_ENABLE_TASK_ENI", "true"),
        ("ECS_ENGINE_AUTH_DATA", "topsecret"),
    ] {
        assert_eq!(env[k].as_str(), Some(v), "env {k} in {env}");
    }
    // Binds: the re-rooted ecs dirs at their container paths, read-only where the spec says.
    let mounts = r["mounts"].as_array().expect("mounts");
    let mount = |target: &str| {
        mounts
            .iter()
            .rev()
            .find(|m| m["mount_point"].as_str() == Some(target))
            .unwrap_or_else(|| panic!("no mount at {target}: {mounts:?}"))
    };
    for target in [
        "/log",
        "/data",
        "/etc/ecs",
        "/var/cache/ecs",
        "/var/lib/ecs",
        "/var/run",
    ] {
        assert_eq!(mount(target)["read_only"], false, "{target} is read-write");
    }
    for target in ["/host/proc", "/usr/lib", "/lib", "/sbin", "/usr/sbin"]
        .iter()
        .map(|t| if *t == "/sbin" { "/host/sbin" } else { t })
    {
        assert_eq!(mount(target)["read_only"], true, "{target} is read-only");
    }
    // The agent's log lands in the re-rooted /var/log/ecs.
    assert!(l
        .root
        .read("var/log/ecs/ecs-agent.log")
        .is_some_and(|s| !s.is_empty()));
    // Capabilities added.
    let caps = r["capabilities"]["effective"].to_string();
    assert!(
        caps.contains("CAP_NET_ADMIN") && caps.contains("CAP_SYS_ADMIN"),
        "{caps}"
    );
    // Host network namespace, private PID namespace with an init as PID 1.
    let host_net = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_eq!(
        r["namespaces"]["self"]["net"].as_str(),
        host_net.to_str(),
        "host network"
    );
    let host_pid = std::fs::read_link("/proc/self/ns/pid").unwrap();
    assert_ne!(
        r["namespaces"]["self"]["pid"].as_str(),
        host_pid.to_str(),
        "own PID namespace"
    );
    let host_user = std::fs::read_link("/proc/self/ns/user").unwrap();
    assert_eq!(
        r["namespaces"]["self"]["user"].as_str(),
        host_user.to_str(),
        "host user namespace"
    );
    assert_eq!(
        r["pid1_is_self"], false,
        "an init runs as PID 1: {}",
        r["pid1_comm"]
    );
    assert_eq!(r["ppid"], 1, "the agent is the init's child");
    // Secrets never reach the log.
    assert!(!l.init_log().contains("topsecret"));
    // What the runtime's own tool shows: labels, init, host network, caps, log config.
    let info = l.runtime_inspect();
    match rt {
        "docker" => {
            assert_eq!(info["Config"]["Labels"]["team"], "infra", "{info}");
            assert_eq!(info["Config"]["Labels"]["tier"], "gold");
            let hc = &info["HostConfig"];
            assert_eq!(hc["NetworkMode"], "host");
            assert_eq!(hc["UsernsMode"], "host");
            assert_eq!(hc["Init"], true);
            // The Go tool's agent gets API 1.25's default.
            assert_eq!(hc["IpcMode"], "shareable");
            assert_eq!(hc["CapAdd"], serde_json::json!(["NET_ADMIN", "SYS_ADMIN"]));
            assert_eq!(hc["LogConfig"]["Type"], "json-file");
            assert_eq!(hc["LogConfig"]["Config"]["max-size"], "16m");
            assert_eq!(hc["LogConfig"]["Config"]["max-file"], "4");
            let restart = hc["RestartPolicy"]["Name"].as_str().unwrap_or("");
            assert!(
                restart.is_empty() || restart == "no",
                "no restart policy: {restart}"
            );
            let binds = hc["Binds"].to_string();
            assert!(
                binds.contains(&format!("{}/var/log/ecs:/log", l.root.path().display())),
                "{binds}"
            );
            assert!(binds.contains("/proc:/host/proc:ro"), "{binds}");
        }
        _ => {
            assert_eq!(info["Labels"]["team"], "infra", "{info}");
            assert_eq!(info["Labels"]["tier"], "gold");
            assert_eq!(info["Runtime"]["Name"], "io.containerd.runc.v2");
            let spec = &info["Spec"];
            let namespaces = spec["linux"]["namespaces"].to_string();
            assert!(
                !namespaces.contains("\"network\""),
                "host network: {namespaces}"
            );
            assert!(
                !namespaces.contains("\"user\""),
                "host user namespace: {namespaces}"
            );
            assert_eq!(
                spec["process"]["args"][0], "/sbin/ecs-agent-init",
                "init first"
            );
            assert!(spec["process"]["capabilities"]["bounding"]
                .to_string()
                .contains("CAP_NET_ADMIN"));
        }
    }
}

fn crash_restarts_with_backoff(rt: &'static str) {
    let l = Launcher::new(rt);
    l.script("", "exit 3 after 100\nexit 139 after 100\nserve\n");
    l.pre_start_with(&agent_tarball("v1"));
    let mut start = KillOnDrop(l.spawn_start());
    let starts = || l.agent_starts();
    // The stand-in serves until its scripted exit, so wait for the third start first.
    assert!(
        wait_until(Duration::from_secs(60), || starts() == 3),
        "three starts, saw {}",
        starts()
    );
    assert!(
        introspection_answers(Duration::from_secs(30)),
        "agent not serving after two crashes"
    );
    assert!(
        start.0.try_wait().unwrap().is_none(),
        "ecs-init keeps supervising"
    );
    let log = l.init_log();
    assert!(
        log.contains("exit_code=3") && log.contains("exit_code=139"),
        "{log}"
    );
    assert_eq!(l.agent_containers(), 1, "exactly one agent container");
    signal(&start.0, libc::SIGTERM);
    assert_eq!(
        wait_exit(&mut start.0, Duration::from_secs(20)).and_then(|s| s.code()),
        Some(0)
    );
}

fn terminal_exit_5_is_not_restarted(rt: &'static str) {
    let l = Launcher::new(rt);
    l.script("", "exit 5 after 200\nserve\n");
    l.pre_start_with(&agent_tarball("v1"));
    let mut start = KillOnDrop(l.spawn_start());
    let status = wait_exit(&mut start.0, Duration::from_secs(60)).expect("ecs-init exits");
    assert_eq!(status.code(), Some(5));
    assert_eq!(l.agent_starts(), 1, "no restart after exit 5");
}

fn clean_exit_0_ends_ecs_init(rt: &'static str) {
    let l = Launcher::new(rt);
    l.root
        .write_ecs_config("STANDIN_EXIT_CODE=0\nSTANDIN_EXIT_AFTER_MS=300\n");
    l.pre_start_with(&agent_tarball("v1"));
    let mut start = KillOnDrop(l.spawn_start());
    let status = wait_exit(&mut start.0, Duration::from_secs(60)).expect("ecs-init exits");
    assert_eq!(status.code(), Some(0));
}

fn update_via_exit_42(rt: &'static str) {
    let l = Launcher::new(rt);
    l.script("", "update ecs-agent-v2.tar after 300\nserve\n");
    l.pre_start_with(&agent_tarball("v1"));
    l.root
        .place_cache_file(&agent_tarball("v2"), "ecs-agent-v2.tar");
    let mut start = KillOnDrop(l.spawn_start());
    let t0 = Instant::now();
    assert!(
        // Polled while v1 exits 42 and v2 starts: a reset between the two requests is the
        // restart itself, so only a v2 report ends the wait.
        wait_until(Duration::from_secs(60), || l
            .try_report()
            .is_some_and(|r| version_in(&r) == "v2")),
        "agent never came back on v2; log:\n{}",
        l.init_log()
    );
    eprintln!("{rt}: update and restart took {:?}", t0.elapsed());
    assert_eq!(l.root.read("var/cache/ecs/state").as_deref(), Some("1"));
    assert_eq!(
        l.root.read("var/cache/ecs/desired-image").as_deref(),
        Some("ecs-agent-v2.tar\n")
    );
    // reload-cache (the documented rollback) brings back the cached tarball: v1.
    let stop = l.run("stop");
    assert_ok(&stop, "stop");
    assert_eq!(
        wait_exit(&mut start.0, Duration::from_secs(20)).and_then(|s| s.code()),
        Some(0),
        "start exits 0 after stop"
    );
    let reload = l.run("reload-cache");
    assert_ok(&reload, "reload-cache");
    l.script("", "serve\n");
    let _start = KillOnDrop(l.spawn_start());
    assert!(introspection_answers(Duration::from_secs(60)));
    assert_eq!(
        image_version(&l),
        "v1",
        "reload-cache restored the cached agent"
    );
}

fn exit_2_logs_are_captured(rt: &'static str) {
    let l = Launcher::new(rt);
    l.script(
        "STANDIN_PRINT_LINES=250\n",
        "exit 2 after 500\nexit 5 after 100\n",
    );
    l.pre_start_with(&agent_tarball("v1"));
    let mut start = KillOnDrop(l.spawn_start());
    assert_eq!(
        wait_exit(&mut start.0, Duration::from_secs(60)).and_then(|s| s.code()),
        Some(5)
    );
    let log = l.init_log();
    let begin = log
        .find("begin ecs-agent container logs")
        .expect("begin marker");
    let end = log
        .find("end ecs-agent container logs")
        .expect("end marker");
    let captured = &log[begin..end];
    assert!(captured.contains("line 250"), "last line captured");
    assert!(
        !captured.contains("msg=\"line 10\""),
        "only the last 200 lines"
    );
    let lines = captured.lines().count();
    assert!(
        (190..=205).contains(&lines),
        "about 200 lines between the markers, got {lines}"
    );
}

fn leftover_container_is_replaced(rt: &'static str) {
    let l = Launcher::new(rt);
    l.script("", "serve\nserve\n");
    let starts = || l.agent_starts();
    l.pre_start_with(&agent_tarball("v1"));
    let mut first = l.spawn_start();
    assert!(introspection_answers(Duration::from_secs(60)));
    assert_eq!(starts(), 1);
    // ecs-init dies without stopping the agent (kill -9): the container is left running.
    signal(&first, libc::SIGKILL);
    let _ = first.wait();
    assert!(
        introspection_answers(Duration::from_secs(2)),
        "agent outlives a killed ecs-init"
    );
    let _second = KillOnDrop(l.spawn_start());
    assert!(
        wait_until(Duration::from_secs(60), || {
            starts() == 2 && introspection_answers(Duration::from_millis(200))
        }),
        "the second ecs-init never started its own agent"
    );
    assert_eq!(
        l.agent_containers(),
        1,
        "the leftover was replaced, not duplicated"
    );
}

fn stop_command_and_bad_inputs(rt: &'static str) {
    let l = Launcher::new(rt);
    // Bad labels JSON: a warning naming the file and line; the agent still starts.
    l.root
        .write_ecs_config("ECS_CLUSTER=x\nECS_AGENT_LABELS={not json\n");
    l.pre_start_with(&agent_tarball("v1"));
    let mut start = KillOnDrop(l.spawn_start());
    assert!(introspection_answers(Duration::from_secs(60)));
    let log = l.init_log();
    assert!(
        log.contains("etc/ecs/ecs.config:2: ECS_AGENT_LABELS: Failed to decode the container labels, skipping labels"),
        "{log}"
    );
    // `stop` stops the agent; the supervisor sees exit 0 and exits 0.
    let stop = l.run("stop");
    assert_ok(&stop, "stop");
    assert_eq!(
        wait_exit(&mut start.0, Duration::from_secs(20)).and_then(|s| s.code()),
        Some(0)
    );
    // stop again (nothing running) is fine.
    assert_ok(&l.run("stop"), "second stop");
    // A corrupt tarball: clear error (255) naming the file; state and the good image untouched.
    let bad = l.root.join("bad.tar");
    corrupt_copy(&agent_tarball("v1"), &bad, Corruption::Truncated).unwrap();
    l.root.place_agent_tarball(&bad, 2);
    let out = l.run("pre-start");
    assert_eq!(out.status.code(), Some(255));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ecs-agent.tar"), "{err}");
    assert_eq!(
        l.root.read("var/cache/ecs/state").as_deref(),
        Some("2"),
        "state untouched"
    );
    let _again = KillOnDrop(l.spawn_start());
    assert!(
        introspection_answers(Duration::from_secs(60)),
        "the earlier good image still runs"
    );
}

macro_rules! conformance {
    ($runtime:ident) => {
        mod $runtime {
            const RT: &str = stringify!($runtime);
            #[test]
            fn cold_start_serves_introspection_and_stops_on_sigterm() {
                super::cold_start_serves_introspection_and_stops_on_sigterm(RT)
            }
            #[test]
            fn spec_seen_from_inside() {
                super::spec_seen_from_inside(RT)
            }
            #[test]
            fn crash_restarts_with_backoff() {
                super::crash_restarts_with_backoff(RT)
            }
            #[test]
            fn terminal_exit_5_is_not_restarted() {
                super::terminal_exit_5_is_not_restarted(RT)
            }
            #[test]
            fn clean_exit_0_ends_ecs_init() {
                super::clean_exit_0_ends_ecs_init(RT)
            }
            #[test]
            fn update_via_exit_42() {
                super::update_via_exit_42(RT)
            }
            #[test]
            fn exit_2_logs_are_captured() {
                super::exit_2_logs_are_captured(RT)
            }
            #[test]
            fn leftover_container_is_replaced() {
                super::leftover_container_is_replaced(RT)
            }
            #[test]
            fn stop_command_and_bad_inputs() {
                super::stop_command_and_bad_inputs(RT)
            }
        }
    };
}

conformance!(docker);
conformance!(containerd);

/// `stand_in_tarball` is the plain form of the fixture; keep it exercised so its reference
/// stays the agent image's.
#[test]
fn plain_fixture_is_the_agent_image() {
    let t = stand_in_tarball("amazon/amazon-ecs-agent:latest");
    assert!(t.exists());
}
