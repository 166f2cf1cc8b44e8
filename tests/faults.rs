//! Faults and hostile input against the real launcher binary and real daemons (issue 9): one
//! supervisor per host, signals always answered, a runtime lost mid-create, foreign containers,
//! all-or-nothing host changes, cleanup with a broken config, secrets, files planted by the
//! agent, file modes, and tarballs that are not what they claim.
//!
//! `pre-start` and `post-stop` run in scratch network namespaces (`unshare -n`), never the
//! host's own.
mod common;

use common::*;
use ecs_test_support::{stand_in_tarball_with, ImageSpec, TarballFormat, TestRoot};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn agent_tarball(version: &str) -> PathBuf {
    let spec = ImageSpec::new("amazon/amazon-ecs-agent:latest")
        .marker(version)
        .env("STANDIN_IMAGE_VERSION", version);
    stand_in_tarball_with(&spec, TarballFormat::DockerSave)
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The identity of the `ecs-agent` container as the runtime's own tool shows it.
fn agent_identity(l: &Launcher) -> String {
    let v = l.runtime_inspect();
    match l.runtime {
        "docker" => v["Id"].as_str().unwrap_or_default().to_string(),
        _ => v["CreatedAt"].as_str().unwrap_or_default().to_string(),
    }
}

/// A second `start` while one supervises: refused at once with the first one's pid and exit 4,
/// and the running agent is left alone.
fn second_start_is_refused(rt: &'static str) {
    let l = Launcher::new(rt);
    l.pre_start_with(&agent_tarball("v1"));
    let first = KillOnDrop(l.spawn_start());
    assert!(introspection_answers(Duration::from_secs(60)));
    let before = agent_identity(&l);
    let t0 = Instant::now();
    let out = l.run("start");
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "not refused at once"
    );
    assert!(
        stderr(&out).contains(&format!("already running (pid {})", first.0.id())),
        "{}",
        stderr(&out)
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(agent_identity(&l), before, "the running agent was replaced");
    assert_eq!(l.agent_containers(), 1);
}

/// SIGTERM while `start` waits for a runtime that does not answer: exit 0 within a second, and
/// no container.
fn sigterm_while_waiting_for_the_runtime(rt: &'static str) {
    let mut l = Launcher::new(rt);
    let missing = "/nonexistent-ecs-init-test/runtime.sock";
    l.env
        .push(("ECS_INIT_RUNTIME_WAIT_SECONDS".into(), "120".into()));
    match rt {
        "docker" => l
            .env
            .push(("DOCKER_HOST".into(), format!("unix://{missing}"))),
        _ => l.env.push(("CONTAINERD_ADDRESS".into(), missing.into())),
    }
    let mut start = KillOnDrop(l.spawn_start());
    std::thread::sleep(Duration::from_secs(2));
    assert!(start.0.try_wait().unwrap().is_none(), "start gave up early");
    signal(&start.0, libc::SIGTERM);
    let t0 = Instant::now();
    let status = wait_exit(&mut start.0, Duration::from_secs(5)).expect("start ended");
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert_eq!(status.code(), Some(0));
    assert_eq!(l.agent_containers(), 0);
}

/// A container named `ecs-agent` that another tool made: removed, with a warning naming it.
fn foreign_container_is_named(rt: &'static str) {
    let l = Launcher::new(rt);
    l.pre_start_with(&agent_tarball("v1"));
    let created = match rt {
        "docker" => Command::new("docker")
            .args([
                "create",
                "--name",
                "ecs-agent",
                "--label",
                "made-by=someone-else",
                "amazon/amazon-ecs-agent:latest",
            ])
            .output(),
        _ => Command::new("ctr")
            .args([
                "-n",
                &l.containerd_namespace(),
                "containers",
                "create",
                "--label",
                "made-by=someone-else",
                "docker.io/amazon/amazon-ecs-agent:latest",
                "ecs-agent",
            ])
            .output(),
    }
    .unwrap();
    assert!(created.status.success(), "{}", stderr(&created));
    let _start = KillOnDrop(l.spawn_start());
    assert!(introspection_answers(Duration::from_secs(60)));
    let log = l.init_log();
    let warning = log
        .lines()
        .find(|line| line.contains("that this launcher did not start"))
        .unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert!(warning.starts_with("level=warn"), "{warning}");
    assert!(warning.contains("someone-else"), "{warning}");
    assert!(warning.contains("amazon-ecs-agent"), "{warning}");
}

/// A tarball without the agent image, while an older agent image is present: pre-start fails
/// naming what the tarball holds, and state stays 2.
fn tarball_without_the_agent_image(rt: &'static str) {
    let l = Launcher::new(rt);
    l.pre_start_with(&agent_tarball("v1"));
    let other = stand_in_tarball_with(
        &ImageSpec::new("ecs-init-tests/not-the-agent:v1").marker("not-agent"),
        TarballFormat::DockerSave,
    );
    l.root.place_agent_tarball(&other, 2);
    let out = l.run("pre-start");
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not contain amazon/amazon-ecs-agent:latest"),
        "{}",
        stderr(&out)
    );
    assert_eq!(l.root.read("var/cache/ecs/state").as_deref(), Some("2"));
}

/// The launcher's peak resident memory in kB (`VmHWM`).
fn peak_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn mkfifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let st = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(st.success(), "mkfifo {}", path.display());
}

/// Issue 20: what a buggy or hostile agent writes into its directories never stalls nor
/// bloats the supervising `start`. While it supervises: a FIFO as `desired-image` (agent exit
/// 42), `/var/lib/ecs/ecs.config` a symlink to `/dev/zero`, a 1 GB sparse agent log (containerd,
/// agent exit 2) and a `flock` held for good on `ecs-init.log.lock`. The agent is still
/// restarted each time, the launcher's peak RSS stays small, SIGUSR1 is logged and ignored,
/// and SIGHUP (Docker) / SIGQUIT (containerd) end `start` like SIGTERM: the agent stopped,
/// exit 0, a log line. `stop` and `plan` then finish at once too.
fn hostile_files_never_stall_start(rt: &'static str) {
    let l = Launcher::new(rt);
    l.script(
        "STANDIN_DESIRED_IMAGE=/var/cache/ecs/handoff\n",
        "update ecs-agent-v2.tar after 8000\nexit 2 after 1500\nserve\n",
    );
    l.pre_start_with(&agent_tarball("v1"));
    let mut start = KillOnDrop(l.spawn_start());
    let pid = start.0.id();
    assert!(introspection_answers(Duration::from_secs(60)));
    mkfifo(&l.root.join("var/cache/ecs/desired-image"));
    let var_lib_config = l.root.join("var/lib/ecs/ecs.config");
    let _ = std::fs::remove_file(&var_lib_config);
    std::os::unix::fs::symlink("/dev/zero", &var_lib_config).unwrap();
    if rt == "containerd" {
        std::fs::File::create(l.root.join("var/log/ecs/containerd/ecs-agent.log.3"))
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
    }
    let lock = std::fs::OpenOptions::new()
        .append(true)
        .open(l.root.join("var/log/ecs/ecs-init.log.lock"))
        .unwrap();
    // SAFETY: flock on a descriptor this test owns; held until `lock` is dropped.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) },
        0
    );
    assert!(
        wait_until(Duration::from_secs(90), || l.agent_starts() >= 3),
        "the agent was not restarted after 42 and 2 (starts: {}); log:\n{}",
        l.agent_starts(),
        l.init_log()
    );
    assert!(introspection_answers(Duration::from_secs(30)));
    let peak = peak_rss_kb(pid);
    assert!(peak > 0 && peak < 64 * 1024, "peak RSS {peak} kB");
    signal(&start.0, libc::SIGUSR1);
    std::thread::sleep(Duration::from_millis(500));
    assert!(start.0.try_wait().unwrap().is_none(), "SIGUSR1 ended start");
    let (sig, name) = match rt {
        "docker" => (libc::SIGHUP, "SIGHUP"),
        _ => (libc::SIGQUIT, "SIGQUIT"),
    };
    signal(&start.0, sig);
    let t0 = Instant::now();
    let status = wait_exit(&mut start.0, Duration::from_secs(15)).expect("start ended");
    assert_eq!(status.code(), Some(0), "{name}");
    // The agent's 10 s grace is the bound; the stand-in stops at once.
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(
        !introspection_answers(Duration::from_secs(2)),
        "the agent still runs"
    );
    let log = l.init_log();
    for want in [
        "SIGUSR1 received; ignored",
        &format!("{name} received"),
        "could not upgrade agent",
        "desired-image is not a regular file",
        "ecs.config is a symbolic link; refusing to follow it",
        "--- end ecs-agent container logs ---",
    ] {
        assert!(log.contains(want), "{want}:\n{log}");
    }
    // stop and plan with the same files in place: done at once (plan refuses the config).
    for action in ["stop", "plan"] {
        let t0 = Instant::now();
        let out = l.run(action);
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{action}: {:?}",
            t0.elapsed()
        );
        if action == "plan" {
            assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
            assert!(stderr(&out).contains("symbolic link"), "{}", stderr(&out));
        } else {
            assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        }
    }
    drop(lock);
}

/// The custom health-check socket while `start` supervises: `systemctl is-active <unit>` (here a
/// fake `systemctl` first on the launcher's `PATH`) is answered with its exit code, anything else
/// with 99 and nothing run; the socket is root's alone and gone when `start` ends.
#[test]
fn custom_health_checks_are_answered_while_start_runs() {
    let mut l = Launcher::new("docker");
    l.pre_start_with(&agent_tarball("v1"));
    let bin = l.root.join("fake-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let ran = l.root.join("systemctl-ran");
    std::fs::write(
        bin.join("systemctl"),
        format!(
            "#!/bin/sh\necho \"$*\" >> {}\n[ \"$2\" = amazon-ssm-agent ] && exit 0\nexit 3\n",
            ran.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        bin.join("systemctl"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let path = std::env::var("PATH").unwrap_or_default();
    l.env
        .push(("PATH".into(), format!("{}:{path}", bin.display())));
    std::fs::create_dir_all(l.root.join("var/run")).unwrap();
    let socket = l.root.join("var/run/ecs.sock");
    let mut start = KillOnDrop(l.spawn_start());
    assert!(introspection_answers(Duration::from_secs(60)));
    assert!(wait_until(Duration::from_secs(10), || socket.exists()));
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let ask = |timeout: u32, command: &str| {
        let mut c = UnixStream::connect(&socket).unwrap();
        let mut req = timeout.to_le_bytes().to_vec();
        req.extend_from_slice(command.as_bytes());
        c.write_all(&req).unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        reply
    };
    assert_eq!(ask(0, "systemctl is-active amazon-ssm-agent"), "0");
    assert_eq!(ask(5, "sudo systemctl is-active docker"), "3");
    assert_eq!(ask(5, "touch /tmp/ecs-init-never"), "99");
    assert_eq!(
        std::fs::read_to_string(&ran).unwrap(),
        "is-active amazon-ssm-agent\nis-active docker\n"
    );
    signal(&start.0, libc::SIGTERM);
    let status = wait_exit(&mut start.0, Duration::from_secs(60)).expect("start ended");
    assert_eq!(status.code(), Some(0));
    assert!(!socket.exists(), "the socket outlived start");
    let log = l.init_log();
    assert!(log.contains("custom health check refused"), "{log}");
}

macro_rules! per_runtime {
    ($runtime:ident) => {
        mod $runtime {
            const RT: &str = stringify!($runtime);
            #[test]
            fn second_start_is_refused() {
                super::second_start_is_refused(RT)
            }
            #[test]
            fn sigterm_while_waiting_for_the_runtime() {
                super::sigterm_while_waiting_for_the_runtime(RT)
            }
            #[test]
            fn foreign_container_is_named() {
                super::foreign_container_is_named(RT)
            }
            #[test]
            fn tarball_without_the_agent_image() {
                super::tarball_without_the_agent_image(RT)
            }
            #[test]
            fn hostile_files_never_stall_start() {
                super::hostile_files_never_stall_start(RT)
            }
        }
    };
}

per_runtime!(docker);
per_runtime!(containerd);

/// A unix-socket proxy in front of dockerd that lets the first `POST …/containers/create`
/// through and then breaks that connection before the answer comes back, as a dockerd dying
/// mid-create does: the container exists, the client sees its connection break.
struct BreakingProxy {
    path: PathBuf,
    broke: Arc<AtomicBool>,
}

impl BreakingProxy {
    fn start(dir: &Path) -> BreakingProxy {
        let path = dir.join("docker-proxy.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let broke = Arc::new(AtomicBool::new(false));
        let flag = broke.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let flag = flag.clone();
                std::thread::spawn(move || proxy_one(client, flag));
            }
        });
        BreakingProxy { path, broke }
    }
}

fn proxy_one(mut client: UnixStream, broke: Arc<AtomicBool>) {
    let Ok(mut server) = UnixStream::connect("/var/run/docker.sock") else {
        return;
    };
    // Once the create went through, dockerd's answers on this connection are swallowed.
    let muted = Arc::new(AtomicBool::new(false));
    let mut server_r = server.try_clone().unwrap();
    let mut client_w = client.try_clone().unwrap();
    let mute = muted.clone();
    let answers = std::thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        loop {
            let n = match server_r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if mute.load(Ordering::SeqCst) || client_w.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = client_w.shutdown(std::net::Shutdown::Both);
    });
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        let is_create = String::from_utf8_lossy(chunk).contains("/containers/create");
        if is_create && !broke.swap(true, Ordering::SeqCst) {
            muted.store(true, Ordering::SeqCst);
            // dockerd gets the request; the launcher never gets the answer.
            let _ = server.write_all(chunk);
            std::thread::sleep(Duration::from_millis(500));
            let _ = client.shutdown(std::net::Shutdown::Both);
            let _ = server.shutdown(std::net::Shutdown::Both);
            break;
        }
        if server.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = server.shutdown(std::net::Shutdown::Write);
    let _ = answers.join();
}

/// dockerd's connection breaks during the first create: the launcher waits for Docker, removes
/// what the broken create left and starts the agent, instead of exiting 255.
#[test]
fn docker_connection_lost_mid_create() {
    let mut l = Launcher::new("docker");
    l.pre_start_with(&agent_tarball("v1"));
    let dir = tempfile::tempdir().unwrap();
    let proxy = BreakingProxy::start(dir.path());
    l.env.push((
        "DOCKER_HOST".into(),
        format!("unix://{}", proxy.path.display()),
    ));
    let mut start = KillOnDrop(l.spawn_start());
    assert!(
        introspection_answers(Duration::from_secs(60)),
        "the agent never ran; start: {:?}\n{}",
        start.0.try_wait(),
        l.init_log()
    );
    assert!(
        proxy.broke.load(Ordering::SeqCst),
        "the proxy never broke a create"
    );
    assert!(start.0.try_wait().unwrap().is_none(), "start exited");
    assert_eq!(l.agent_containers(), 1);
    assert!(
        l.init_log()
            .contains("lost the runtime while starting the agent"),
        "{}",
        l.init_log()
    );
}

/// Root and Docker required, the agent lock held, and a scratch root whose cache holds the
/// stand-in agent tarball (state 2: pre-start loads it).
fn docker_root_with_agent() -> (ecs_test_support::AgentLock, TestRoot) {
    ecs_test_support::require_root();
    ecs_test_support::require_docker();
    let lock = ecs_test_support::agent_lock();
    let root = TestRoot::new();
    root.place_agent_tarball(&agent_tarball("v1"), 2);
    (lock, root)
}

/// Run `script` in a fresh network namespace with loopback up; `$BIN` is the launcher.
fn in_netns(root: &TestRoot, env: &[(&str, &str)], script: &str) -> std::process::Output {
    let mut c = Command::new("unshare");
    c.args([
        "-n",
        "--",
        "sh",
        "-c",
        &format!("ip link set lo up\n{script}"),
    ])
    .env("BIN", env!("CARGO_BIN_EXE_amazon-ecs-init"))
    .env("ECS_INIT_HOST_ROOT", root.path())
    .env("ECS_INIT_FIREWALL", "iptables")
    .env_remove("NOTIFY_SOCKET")
    .env_remove("ECS_INIT_RUNTIME");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    eprintln!(
        "--- netns script stdout:\n{}\n--- stderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    out
}

/// A pre-start whose rules cannot be applied (nft missing) leaves route_localnet and the route
/// as they were; an interface name that cannot exist fails before anything changes.
#[test]
fn failed_pre_start_changes_nothing() {
    let (_lock, root) = docker_root_with_agent();
    let out = in_netns(
        &root,
        &[
            ("ECS_INIT_RUNTIME", "docker"),
            ("ECS_INIT_FIREWALL", "nftables"),
        ],
        r#"PATH=/nonexistent-bin "$BIN" pre-start; echo "rc=$?"
           echo "localnet=$(cat /proc/sys/net/ipv4/conf/all/route_localnet)"
           echo "route=$(ip route show 169.254.170.2)"
           ECS_OFFHOST_INTROSPECTION_INTERFACE_NAME='eth 0' ECS_INIT_FIREWALL=iptables "$BIN" pre-start; echo "rc2=$?"
           echo "localnet2=$(cat /proc/sys/net/ipv4/conf/all/route_localnet)"
           echo "rules2=$(iptables -S | grep -c 51678)""#,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("rc=255"), "{text}");
    assert!(text.contains("localnet=0"), "{text}");
    assert!(
        text.contains("route=\n") || text.ends_with("route="),
        "{text}"
    );
    assert!(text.contains("rc2=255"), "{text}");
    assert!(text.contains("localnet2=0"), "{text}");
    assert!(text.contains("rules2=0"), "{text}");
    assert!(
        stderr(&out).contains("ECS_OFFHOST_INTROSPECTION_INTERFACE_NAME: ")
            && stderr(&out).contains("eth 0")
            && stderr(&out).contains("is not an interface name"),
        "{}",
        stderr(&out)
    );
    assert!(
        !root.join("var/lib/ecs/firewall-backend").exists(),
        "the record was left"
    );
}

/// pre-starts run at the same moment take turns: one copy of each rule (unserialised, six left
/// 5-8 rules where one leaves 4) and no temp file left behind.
#[test]
fn concurrent_pre_starts_leave_one_set_of_rules() {
    let (_lock, root) = docker_root_with_agent();
    let out = in_netns(
        &root,
        &[("ECS_INIT_RUNTIME", "docker")],
        r#"rules() { { iptables-save; ip6tables-save; } | grep -c '^-A'; }
           "$BIN" pre-start 2>/dev/null; echo "rc0=$?"
           echo "one=$(rules)"
           "$BIN" post-stop 2>/dev/null; echo "after_post_stop=$(rules)"
           for i in 1 2 3 4 5 6; do ( "$BIN" pre-start 2>/dev/null; echo "rc=$?" ) & done; wait
           echo "six=$(rules)""#,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let value = |name: &str| -> usize {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= in {text}"))
            .parse()
            .unwrap()
    };
    assert!(text.contains("rc0=0"), "{text}");
    assert!(value("one") >= 4, "{text}");
    assert_eq!(value("after_post_stop"), 0, "{text}");
    assert_eq!(text.matches("rc=0").count(), 6, "{text}");
    assert_eq!(value("six"), value("one"), "{text}");
    let leftovers: Vec<_> = std::fs::read_dir(root.join("var/lib/ecs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// post-stop restores the route_localnet value pre-start found (1, set by the operator), and
/// does its job from the record when the config is broken.
#[test]
fn post_stop_restores_and_works_with_a_broken_config() {
    let (_lock, root) = docker_root_with_agent();
    let out = in_netns(
        &root,
        &[("ECS_INIT_RUNTIME", "docker")],
        r#"echo 1 > /proc/sys/net/ipv4/conf/all/route_localnet
           echo 0 > /proc/sys/net/ipv4/conf/default/route_localnet
           "$BIN" pre-start; echo "pre=$?"
           echo "rules=$(iptables -S | grep -c 51678)"
           "$BIN" pre-start; echo "again=$?"
           rm -f "$ECS_INIT_HOST_ROOT/etc/ecs/ecs.config"; mkdir "$ECS_INIT_HOST_ROOT/etc/ecs/ecs.config"
           ECS_INIT_FIREWALL=bogus "$BIN" post-stop; echo "post=$?"
           echo "rules_after=$(iptables -S | grep -c 51678)"
           echo "localnet=$(cat /proc/sys/net/ipv4/conf/all/route_localnet)""#,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "pre=0",
        "rules=1",
        "again=0",
        "post=0",
        "rules_after=0",
        "localnet=1",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    assert!(
        stderr(&out).contains("ignored for cleanup"),
        "{}",
        stderr(&out)
    );
}

/// `stop` with an unreadable config still stops the agent (from the runtime record).
#[test]
fn stop_works_with_a_broken_config() {
    let l = Launcher::new("docker");
    l.pre_start_with(&agent_tarball("v1"));
    let mut start = KillOnDrop(l.spawn_start());
    assert!(introspection_answers(Duration::from_secs(60)));
    let cfg = l.root.join("etc/ecs/ecs.config");
    let _ = std::fs::remove_file(&cfg);
    std::fs::create_dir_all(&cfg).unwrap();
    let out = l.run("stop");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("ignored for cleanup"),
        "{}",
        stderr(&out)
    );
    let _ = wait_exit(&mut start.0, Duration::from_secs(30));
    assert!(
        !introspection_answers(Duration::from_secs(2)),
        "the agent still runs"
    );
}

/// A NUL byte in a secret: refused naming file, line and key, and the value appears nowhere;
/// secret log options stay out of plan and the debug log.
#[test]
fn secrets_stay_out_of_every_output() {
    let mut l = Launcher::new("docker");
    l.root.write_ecs_config(
        "ECS_CLUSTER=c\nECS_ENGINE_AUTH_DATA=NULSECRETA\u{0}NULSECRETB\nECS_LOG_DRIVER=json-file\n",
    );
    let out = l.run("pre-start");
    assert_eq!(out.status.code(), Some(255));
    let all = format!(
        "{}{}{}",
        stderr(&out),
        String::from_utf8_lossy(&out.stdout),
        l.init_log()
    );
    assert!(
        all.contains("ecs.config:2: ECS_ENGINE_AUTH_DATA: the value contains a NUL byte"),
        "{all}"
    );
    assert!(!all.contains("NULSECRET"), "{all}");

    // A secret log option: out of plan, of the debug spec line and of the runtime's error
    // (dockerd refuses the option for json-file, quoting the option).
    l.root.write_ecs_config("ECS_CLUSTER=c\n");
    l.env.push((
        "ECS_LOG_OPTS".into(),
        r#"{"tag":"ecs","splunk-token":"tok-SECRET-123"}"#.into(),
    ));
    let plan = l.run("plan");
    assert_ok(&plan, "plan");
    l.pre_start_with(&agent_tarball("v1"));
    let start = l.run("start");
    let all = format!(
        "{}{}{}{}",
        String::from_utf8_lossy(&plan.stdout),
        stderr(&plan),
        stderr(&start),
        l.init_log()
    );
    assert!(!all.contains("tok-SECRET-123"), "secret printed:\n{all}");
    assert!(all.contains("splunk-token"), "{all}");
    assert!(
        l.init_log().contains("agent container spec"),
        "no debug spec line logged"
    );
}

/// Symlinks planted by the agent where the launcher writes (its log, the firewall record's
/// directory): never followed; modes are explicit whatever the umask.
#[test]
fn planted_symlinks_and_modes() {
    let (_lock, root) = docker_root_with_agent();
    // Directories the launcher creates itself.
    std::fs::remove_dir(root.join("var/lib/ecs/data")).unwrap();
    let victim = root.join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    std::fs::create_dir_all(root.join("var/log/ecs")).unwrap();
    std::os::unix::fs::symlink(&victim, root.join("var/log/ecs/ecs-init.log")).unwrap();
    std::os::unix::fs::symlink(&victim, root.join("var/lib/ecs/.firewall-backend.tmp")).unwrap();
    let out = in_netns(
        &root,
        &[("ECS_INIT_RUNTIME", "docker")],
        r#"umask 000; "$BIN" pre-start; echo "rc=$?""#,
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rc=0"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert!(
        stderr(&out).contains("ecs-init.log is a symbolic link; refusing to follow it"),
        "{}",
        stderr(&out)
    );
    let mode = |rel: &str| {
        std::fs::symlink_metadata(root.join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("var/lib/ecs/data"), 0o755);
    assert_eq!(mode("var/log/ecs/exec"), 0o755);
    assert_eq!(mode("var/cache/ecs/state"), 0o644);
    assert_eq!(mode("var/lib/ecs/firewall-backend"), 0o644);
    assert_eq!(mode("var/lib/ecs/runtime-backend"), 0o644);
    // With the symlink gone, the log is created 0640 under umask 000.
    std::fs::remove_file(root.join("var/log/ecs/ecs-init.log")).unwrap();
    let out = in_netns(
        &root,
        &[("ECS_INIT_RUNTIME", "docker")],
        r#"umask 000; "$BIN" post-stop"#,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(mode("var/log/ecs/ecs-init.log"), 0o640);
}

/// Values that used to be replaced silently are named: a wait that is not a number, a dangling
/// symlink as the config.
#[test]
fn silently_replaced_values_are_named() {
    ecs_test_support::require_root();
    let root = TestRoot::new();
    root.write_ecs_config("ECS_CLUSTER=c\nECS_INIT_RUNTIME_WAIT_SECONDS=5s\n");
    let out = Command::new(env!("CARGO_BIN_EXE_amazon-ecs-init"))
        .arg("plan")
        .env("ECS_INIT_HOST_ROOT", root.path())
        .env("ECS_INIT_RUNTIME", "docker")
        .env("ECS_INIT_FIREWALL", "none")
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert_ok(&out, "plan");
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let warnings = plan["warnings"].to_string();
    assert!(
        warnings.contains("ecs.config:2: ECS_INIT_RUNTIME_WAIT_SECONDS: \\\"5s\\\" is not a whole number of seconds"),
        "{warnings}"
    );
    let cfg = root.join("etc/ecs/ecs.config");
    std::fs::remove_file(&cfg).unwrap();
    std::os::unix::fs::symlink("/nonexistent/ecs.config", &cfg).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_amazon-ecs-init"))
        .arg("plan")
        .env("ECS_INIT_HOST_ROOT", root.path())
        .env("ECS_INIT_RUNTIME", "docker")
        .env("ECS_INIT_FIREWALL", "none")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains("ecs.config is a symbolic link; refusing to follow it"),
        "{}",
        stderr(&out)
    );
}

/// Issue 20 (4, 8): post-stop restores `route_localnet` from the root-only record, never from
/// the agent-writable `/var/lib/ecs/firewall-backend` (forged to `route_localnet=1` before and
/// after pre-start); and it cleans up when `/var/lib` is read-only (errors=remount-ro), the
/// host lock taken under `/run` then, with a warning, exit 0.
#[test]
fn post_stop_trusts_no_agent_writable_record_and_works_read_only() {
    let (_lock, root) = docker_root_with_agent();
    std::fs::create_dir_all(root.join("var/lib/ecs")).unwrap();
    std::fs::write(
        root.join("var/lib/ecs/firewall-backend"),
        "iptables\nforged\nroute_localnet=1\n",
    )
    .unwrap();
    let out = in_netns_with_mounts(
        &root,
        &[("ECS_INIT_RUNTIME", "docker")],
        r#"echo 0 > /proc/sys/net/ipv4/conf/all/route_localnet
           echo 0 > /proc/sys/net/ipv4/conf/default/route_localnet
           forge() { printf 'iptables\nforged\nroute_localnet=1\n' > "$ECS_INIT_HOST_ROOT/var/lib/ecs/firewall-backend"; }
           "$BIN" pre-start; echo "pre=$?"
           forge
           "$BIN" post-stop; echo "post=$?"
           echo "localnet=$(cat /proc/sys/net/ipv4/conf/all/route_localnet)"
           "$BIN" pre-start; echo "pre2=$?"
           forge
           "$BIN" pre-start; echo "pre3=$?"
           echo "rules=$(iptables -S | grep -c 51678)"
           mount --bind -o ro "$ECS_INIT_HOST_ROOT/var/lib" "$ECS_INIT_HOST_ROOT/var/lib"
           "$BIN" post-stop; echo "ro_post=$?"
           echo "ro_localnet=$(cat /proc/sys/net/ipv4/conf/all/route_localnet)"
           echo "ro_rules=$(iptables -S | grep -c 51678)"
           echo "run_lock=$(ls "$ECS_INIT_HOST_ROOT/run/ecs-init")""#,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "pre=0",
        "post=0",
        "localnet=0",
        "pre2=0",
        "pre3=0",
        "rules=1",
        "ro_post=0",
        "ro_localnet=0",
        "ro_rules=0",
        "run_lock=ecs-init.host.lock",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    let err = stderr(&out);
    assert!(err.contains("taking it under /run instead"), "{err}");
    assert!(err.contains("its record could not be removed"), "{err}");
}

/// [`in_netns`] in a private mount namespace too (for read-only bind mounts).
fn in_netns_with_mounts(
    root: &TestRoot,
    env: &[(&str, &str)],
    script: &str,
) -> std::process::Output {
    let mut c = Command::new("unshare");
    c.args([
        "-n",
        "-m",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        &format!("ip link set lo up\n{script}"),
    ])
    .env("BIN", env!("CARGO_BIN_EXE_amazon-ecs-init"))
    .env("ECS_INIT_HOST_ROOT", root.path())
    .env("ECS_INIT_FIREWALL", "iptables")
    .env_remove("NOTIFY_SOCKET")
    .env_remove("ECS_INIT_RUNTIME");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    eprintln!(
        "--- netns script stdout:\n{}\n--- stderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    out
}
