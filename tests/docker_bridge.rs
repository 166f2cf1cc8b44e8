//! Docker's default bridge as dockerd reports it (item 5 of issue 18): the introspection ACCEPT
//! rule and `accept_ra` name the interface of dockerd's network `bridge`
//! (`com.docker.network.bridge.name`), as the Go tool asks the Docker API, not a fixed
//! `docker0`.
//!
//! The CI dockerd runs with `--bridge=none` (no bridge network at all), so the answer path is
//! checked against it, and a second, private dockerd is started for the rest: in a network and
//! mount namespace of its own (`unshare -n -m`), with its own data and exec roots and socket in a
//! scratch directory, a bridge named `br-ecs-test` made there first and handed to it with
//! `--bridge`, `--iptables=false`, and the running containerd under a namespace of its own. The
//! launcher then runs `plan` and `pre-start`/`post-stop` inside that network namespace
//! (`nsenter --net`), so the host's own firewall is never touched. Needs root, dockerd,
//! containerd, unshare, nsenter, ip, iptables.
mod common;

use common::*;
use ecs_runtime::docker::DockerRuntime;
use ecs_runtime::{DefaultBridge, Runtime};
use ecs_test_support::TestRoot;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const BRIDGE: &str = "br-ecs-test";

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// The CI dockerd: its answer matches what `docker network inspect bridge` says (with
/// `--bridge=none` there is no such network: `Absent`).
#[test]
fn the_test_dockerd_answers_about_its_bridge() {
    ecs_test_support::require_root();
    ecs_test_support::require_docker();
    let rt = DockerRuntime::at_socket(ecs_runtime::docker::DEFAULT_SOCKET.into());
    let answer = block_on(rt.default_bridge()).expect("dockerd answers");
    let cli = Command::new("docker")
        .args([
            "network",
            "inspect",
            "bridge",
            "--format",
            "{{index .Options \"com.docker.network.bridge.name\"}}",
        ])
        .output()
        .expect("docker CLI");
    let expected = if cli.status.success() {
        let name = String::from_utf8_lossy(&cli.stdout).trim().to_string();
        DefaultBridge::Named(if name.is_empty() {
            "docker0".into()
        } else {
            name
        })
    } else {
        assert!(
            String::from_utf8_lossy(&cli.stderr).contains("not found")
                || String::from_utf8_lossy(&cli.stderr).contains("No such network"),
            "{}",
            String::from_utf8_lossy(&cli.stderr)
        );
        DefaultBridge::Absent
    };
    assert_eq!(answer, expected);
}

/// A private dockerd (see the module docs), stopped and cleaned up on drop.
struct PrivateDockerd {
    child: Child,
    dir: tempfile::TempDir,
}

const START: &str = r#"set -eu
ip link set lo up
ip link add "$BRIDGE" type bridge
ip addr add 10.211.0.1/24 dev "$BRIDGE"
ip link set "$BRIDGE" up
exec dockerd --bridge="$BRIDGE" --iptables=false --ip6tables=false \
    --data-root "$DIR/root" --exec-root "$DIR/exec" --pidfile "$DIR/pid" \
    -H "unix://$DIR/docker.sock" \
    --containerd /run/containerd/containerd.sock \
    --containerd-namespace ecs-bridge-test --containerd-plugins-namespace ecs-bridge-test-plugins
"#;

impl PrivateDockerd {
    fn start() -> PrivateDockerd {
        ecs_test_support::require_root();
        ecs_test_support::require_containerd();
        let dir = tempfile::Builder::new()
            .prefix("ecs-br")
            .tempdir_in("/tmp")
            .unwrap();
        let log = std::fs::File::create(dir.path().join("dockerd.log")).unwrap();
        let child = Command::new("unshare")
            .args([
                "-n",
                "-m",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                START,
            ])
            .env("BRIDGE", BRIDGE)
            .env("DIR", dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn unshare dockerd");
        let d = PrivateDockerd { child, dir };
        let rt = d.runtime();
        let up = wait_until(Duration::from_secs(60), || block_on(rt.ping()).is_ok());
        assert!(up, "the private dockerd did not come up:\n{}", d.log());
        d
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    fn runtime(&self) -> DockerRuntime {
        DockerRuntime::at_socket(self.socket())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// `args` in the private dockerd's network namespace.
    fn in_netns(&self, program: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/proc/{}/ns/net", self.child.id()))
            .arg("--")
            .arg(program)
            .args(args);
        c
    }
}

impl Drop for PrivateDockerd {
    fn drop(&mut self) {
        signal(&self.child, libc::SIGTERM);
        if wait_exit(&mut self.child, Duration::from_secs(20)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn launcher_in(d: &PrivateDockerd, root: &TestRoot, action: &str) -> Output {
    let mut c = d.in_netns(Path::new(env!("CARGO_BIN_EXE_amazon-ecs-init")), &[action]);
    c.env("ECS_INIT_HOST_ROOT", root.path())
        .env("ECS_INIT_RUNTIME", "docker")
        .env("ECS_INIT_FIREWALL", "iptables")
        .env("DOCKER_HOST", format!("unix://{}", d.socket().display()))
        .env("ECS_LOGLEVEL", "debug")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    wait_output(
        c.spawn().expect("spawn launcher"),
        Duration::from_secs(180),
        action,
    )
}

/// dockerd with `--bridge=br-ecs-test`: the runtime reports that name, `plan` shows it and the
/// ACCEPT rule on it, and `pre-start` installs that rule (and `accept_ra` on it) in the
/// namespace where the bridge is; `post-stop` removes it.
#[test]
fn a_custom_bridge_name_is_used_for_the_rule() {
    let d = PrivateDockerd::start();
    assert_eq!(
        block_on(d.runtime().default_bridge()).expect("answer"),
        DefaultBridge::Named(BRIDGE.into())
    );

    let root = TestRoot::new();
    let out = launcher_in(&d, &root, "plan");
    assert_ok(&out, "plan");
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan is JSON");
    assert_eq!(
        plan["runtime"]["default_bridge"]["named"], BRIDGE,
        "{}",
        plan["runtime"]
    );
    assert_eq!(plan["network"]["facts"]["bridge"], BRIDGE);
    let rendered = plan["network"]["rendered"].to_string();
    assert!(
        rendered.contains(&format!("--dport 51678 -i {BRIDGE} -j ACCEPT")),
        "{rendered}"
    );
    assert!(!rendered.contains("docker0"), "{rendered}");
    // The effective introspection block, in words.
    let block = &plan["network"]["introspection_block"];
    assert_eq!(
        block["blocked_on"], "every interface but loopback",
        "{block}"
    );
    assert!(block["accepted_on"].to_string().contains(BRIDGE), "{block}");

    root.place_agent_tarball(
        &ecs_test_support::stand_in_tarball("amazon/amazon-ecs-agent:latest"),
        2,
    );
    let out = launcher_in(&d, &root, "pre-start");
    assert_ok(&out, "pre-start");
    let log = root.read("var/log/ecs/ecs-init.log").unwrap_or_default();
    assert!(
        log.contains(&format!("bridge={BRIDGE}"))
            && log.contains("default bridge as the runtime reports it"),
        "{log}"
    );
    let rules = d
        .in_netns(Path::new("/usr/sbin/iptables"), &["-w", "-S", "INPUT"])
        .output()
        .expect("iptables -S");
    let rules = String::from_utf8_lossy(&rules.stdout).to_string();
    assert!(
        rules.contains(&format!(
            "-A INPUT -i {BRIDGE} -p tcp -m tcp --dport 51678 -j ACCEPT"
        )),
        "{rules}"
    );
    let accept_ra = d
        .in_netns(
            Path::new("/bin/cat"),
            &[&format!("/proc/sys/net/ipv6/conf/{BRIDGE}/accept_ra")],
        )
        .output()
        .expect("cat accept_ra");
    assert_eq!(String::from_utf8_lossy(&accept_ra.stdout).trim(), "0");

    let out = launcher_in(&d, &root, "post-stop");
    assert_ok(&out, "post-stop");
    let rules = d
        .in_netns(Path::new("/usr/sbin/iptables"), &["-w", "-S", "INPUT"])
        .output()
        .expect("iptables -S");
    let rules = String::from_utf8_lossy(&rules.stdout).to_string();
    assert!(!rules.contains("51678"), "{rules}");
}
