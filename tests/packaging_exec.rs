//! Drives `packaging/systemd/ecs.service` the way systemd does: its Exec lines, in order
//! (ExecStartPre, ExecStart, ExecStop, ExecStopPost), against the real Docker daemon, with a
//! stand-in agent image cached at `<root>/var/cache/ecs/ecs-agent.tar` (state 2) and
//! `NOTIFY_SOCKET` pointing at a datagram socket this test listens on. It checks that the unit's
//! `Type=notify` contract holds: READY=1 arrives while `start` runs, the agent answers on
//! 127.0.0.1:51678, and stop + post-stop end it cleanly.
//!
//! The Exec lines run inside a network namespace this test creates, so the firewall rules,
//! routes and sysctls of `pre-start`/`post-stop` never touch the host's own; the agent container
//! (host networking) runs in dockerd's namespace as in production, and the introspection probe
//! goes to the host's loopback. Needs root and a running dockerd; fails (never skips) otherwise.

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ecs_test_support::{
    agent_lock, require_docker, require_root, stand_in_tarball, wait_for_http,
    wait_for_port_closed, workspace_root, TestRoot, AGENT_CONTAINER, AGENT_IMAGE,
    INTROSPECTION_ADDR,
};

const UNIT_BINARY: &str = "/usr/libexec/amazon-ecs-init";

/// The parts of the unit this test drives.
#[derive(Debug, Default)]
struct Unit {
    exec: BTreeMap<String, Vec<String>>,
    environment_files: Vec<String>,
    notify_access: Option<String>,
    service_type: Option<String>,
}

fn parse_unit(text: &str) -> Unit {
    let mut unit = Unit::default();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if section != "[Service]" {
            continue;
        }
        match key {
            "ExecStartPre" | "ExecStart" | "ExecStop" | "ExecStopPost" => {
                unit.exec
                    .entry(key.to_string())
                    .or_default()
                    .push(value.to_string());
            }
            "EnvironmentFile" => unit.environment_files.push(value.to_string()),
            "NotifyAccess" => unit.notify_access = Some(value.to_string()),
            "Type" => unit.service_type = Some(value.to_string()),
            _ => {}
        }
    }
    unit
}

/// One Exec line as argv, with the unit's binary path mapped to the binary under test.
fn argv(line: &str, binary: &Path) -> Vec<String> {
    assert!(
        !line.starts_with(['-', '@', '+', '!', ':']),
        "unexpected Exec prefix in {line:?}"
    );
    let mut words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
    assert_eq!(
        words[0], UNIT_BINARY,
        "Exec line must call {UNIT_BINARY}: {line:?}"
    );
    words[0] = binary.display().to_string();
    words
}

/// `EnvironmentFile=` as systemd reads it (KEY=VALUE lines, `#` comments, `-` = optional),
/// with the path re-rooted into the test root.
fn environment(unit: &Unit, root: &TestRoot) -> Vec<(String, String)> {
    let mut vars = Vec::new();
    for spec in &unit.environment_files {
        let (optional, path) = match spec.strip_prefix('-') {
            Some(p) => (true, p),
            None => (false, spec.as_str()),
        };
        let file = root.join(path.trim_start_matches('/'));
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                for line in text.lines().map(str::trim) {
                    if line.starts_with('#') || line.starts_with(';') {
                        continue;
                    }
                    if let Some((k, v)) = line.split_once('=') {
                        vars.push((k.trim().to_string(), v.trim().to_string()));
                    }
                }
            }
            Err(_) if optional => {}
            Err(e) => panic!("EnvironmentFile {}: {e}", file.display()),
        }
    }
    vars
}

/// A network namespace for the Exec lines, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("ecs-pkg-exec-{}", std::process::id());
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns(name);
        run_ok(Command::new("ip").args(["-n", &ns.0, "link", "set", "lo", "up"]));
        ns
    }

    fn command(&self, argv: &[String]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0]).args(argv);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run_ok(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?}: {status}");
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Runs the unit's stop lines once more if the test panics half-way, so that no agent
/// container is left running on the host.
struct Cleanup<'a> {
    lines: Vec<Vec<String>>,
    netns: &'a Netns,
    env: Vec<(String, String)>,
    start: Option<Child>,
    armed: bool,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for line in &self.lines {
            let _ = self
                .netns
                .command(line)
                .envs(self.env.iter().cloned())
                .status();
        }
        if let Some(child) = self.start.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("docker")
            .args(["rm", "-f", AGENT_CONTAINER])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn unit_exec_lines_start_agent_and_signal_readiness() {
    require_root();
    require_docker();
    let _lock = agent_lock();

    let unit_path = workspace_root().join("packaging/systemd/ecs.service");
    let unit = parse_unit(&std::fs::read_to_string(&unit_path).expect("read ecs.service"));
    assert_eq!(unit.service_type.as_deref(), Some("notify"), "Type=notify");
    assert!(unit.notify_access.is_some(), "NotifyAccess= set");
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_amazon-ecs-init"));
    let one = |key: &str| -> Vec<String> {
        let lines = unit
            .exec
            .get(key)
            .unwrap_or_else(|| panic!("{key}= missing"));
        assert_eq!(lines.len(), 1, "exactly one {key}=");
        argv(&lines[0], &binary)
    };
    let (pre_start, start, stop, post_stop) = (
        one("ExecStartPre"),
        one("ExecStart"),
        one("ExecStop"),
        one("ExecStopPost"),
    );
    assert_eq!(pre_start[1..], ["pre-start"]);
    assert_eq!(start[1..], ["start"]);
    assert_eq!(stop[1..], ["stop"]);
    assert_eq!(post_stop[1..], ["post-stop"]);

    let root = TestRoot::new();
    root.place_agent_tarball(&stand_in_tarball(AGENT_IMAGE), 2);
    root.write_ecs_config("");

    let sock_path = root.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind NOTIFY_SOCKET");
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();

    let mut env = environment(&unit, &root);
    env.push((
        "ECS_INIT_HOST_ROOT".into(),
        root.path().display().to_string(),
    ));
    env.push(("NOTIFY_SOCKET".into(), sock_path.display().to_string()));

    let netns = Netns::new();
    let mut cleanup = Cleanup {
        lines: vec![stop.clone(), post_stop.clone()],
        netns: &netns,
        env: env.clone(),
        start: None,
        armed: true,
    };

    // ExecStartPre: must finish successfully before ExecStart runs.
    let mut child = netns
        .command(&pre_start)
        .envs(env.iter().cloned())
        .spawn()
        .expect("spawn pre-start");
    let status = wait_timeout(&mut child, Duration::from_secs(300)).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("pre-start did not finish within 300 s")
    });
    assert!(
        status.success(),
        "ExecStartPre (pre-start) failed: {status}"
    );
    assert_eq!(
        root.read("var/cache/ecs/state").as_deref().map(str::trim),
        Some("1"),
        "pre-start loaded the cached agent (state 2 -> 1)"
    );
    // No EBS CSI driver image in this root: pre-start says what that means.
    let log = root.read("var/log/ecs/ecs-init.log").unwrap_or_default();
    assert!(
        log.contains("level=warn")
            && log.contains("ECS will not place EBS-backed tasks on this host"),
        "{log}"
    );

    // ExecStart: long-running; Type=notify waits for READY=1.
    cleanup.start = Some(
        netns
            .command(&start)
            .envs(env.iter().cloned())
            .spawn()
            .expect("spawn start"),
    );
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut buf = [0u8; 4096];
    let mut ready = false;
    while Instant::now() < deadline && !ready {
        if let Some(status) = cleanup.start.as_mut().unwrap().try_wait().unwrap() {
            panic!("start exited before READY=1: {status}; notifications: {messages:?}");
        }
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            ready = msg.lines().any(|l| l == "READY=1");
            messages.push(msg);
        }
    }
    assert!(
        ready,
        "no READY=1 within 120 s; notifications: {messages:?}"
    );
    assert!(
        cleanup
            .start
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_none(),
        "start must keep running (supervising) after READY=1"
    );
    let answer = wait_for_http(INTROSPECTION_ADDR, "/v1/metadata", Duration::from_secs(30));
    assert!(
        answer.is_some(),
        "agent did not answer on {INTROSPECTION_ADDR} after READY=1"
    );

    // ExecStop, then ExecStopPost (systemd runs it after the main process is gone).
    let status = netns
        .command(&stop)
        .envs(env.iter().cloned())
        .status()
        .expect("run stop");
    assert!(status.success(), "ExecStop (stop) failed: {status}");
    let mut start_child = cleanup.start.take().unwrap();
    let start_status = wait_timeout(&mut start_child, Duration::from_secs(30));
    if start_status.is_none() {
        let _ = start_child.kill();
        let _ = start_child.wait();
    }
    let start_status = start_status.expect("start did not exit within 30 s of stop");
    let status = netns
        .command(&post_stop)
        .envs(env.iter().cloned())
        .status()
        .expect("run post-stop");
    assert!(
        status.success(),
        "ExecStopPost (post-stop) failed: {status}"
    );
    cleanup.armed = false;

    // A stop must not look like a failure, or Restart=on-failure would start it again.
    assert!(
        start_status.success(),
        "start exited with {start_status} after stop (Restart=on-failure would restart it)"
    );
    assert!(
        wait_for_port_closed(INTROSPECTION_ADDR, Duration::from_secs(15)),
        "agent still answers on {INTROSPECTION_ADDR} after stop"
    );
    // Notifications sent during shutdown, for the record.
    while let Ok(n) = sock.recv(&mut buf) {
        messages.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    eprintln!("notifications received: {messages:?}");
}

#[test]
fn unit_parser_reads_the_shipped_unit() {
    let unit_path = workspace_root().join("packaging/systemd/ecs.service");
    let unit = parse_unit(&std::fs::read_to_string(unit_path).unwrap());
    assert_eq!(
        unit.environment_files,
        ["-/var/lib/ecs/ecs.config", "-/etc/ecs/ecs.config"]
    );
    for key in ["ExecStartPre", "ExecStart", "ExecStop", "ExecStopPost"] {
        assert!(unit.exec.contains_key(key), "{key}");
    }
}

/// The EBS CSI driver image: the path the packages ship it at (packaging/Makefile's
/// EBS_CSI_DEST, and the DEB variants in Cargo.toml) is the one the launcher checks; without it,
/// `plan` and `pre-start` warn that EBS-backed tasks will not be placed, with it they do not.
#[test]
fn ebs_csi_driver_path_is_the_packaged_one() {
    require_root();
    let makefile = std::fs::read_to_string(workspace_root().join("packaging/Makefile")).unwrap();
    let dest = makefile
        .lines()
        .find_map(|l| l.strip_prefix("EBS_CSI_DEST := "))
        .expect("EBS_CSI_DEST in packaging/Makefile")
        .trim()
        .to_string();
    assert_eq!(
        dest,
        format!("/var/lib/ecs/{}", amazon_ecs_init::ebs::RELATIVE)
    );
    let cargo = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
    assert_eq!(
        cargo.matches(&format!("\"{}\"", &dest[1..])).count(),
        2,
        "both DEB variants with the image ship it at {dest}"
    );
    let root = TestRoot::new();
    root.write_ecs_config("");
    let plan = || {
        let out = Command::new(env!("CARGO_BIN_EXE_amazon-ecs-init"))
            .arg("plan")
            .env("ECS_INIT_HOST_ROOT", root.path())
            .env("ECS_INIT_RUNTIME", "docker")
            .env("ECS_INIT_FIREWALL", "none")
            .output()
            .expect("run plan");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("plan is JSON")
    };
    let p = plan();
    assert_eq!(p["ebs_csi_driver"]["present"], false);
    assert!(
        p["warnings"]
            .to_string()
            .contains("ECS will not place EBS-backed tasks on this host"),
        "{}",
        p["warnings"]
    );
    let image = root.join(&dest[1..]);
    std::fs::create_dir_all(image.parent().unwrap()).unwrap();
    std::fs::write(&image, "image").unwrap();
    let p = plan();
    assert_eq!(p["ebs_csi_driver"]["present"], true);
    assert!(!p["warnings"].to_string().contains("EBS-backed"));
}
