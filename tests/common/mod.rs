//! Drives the real `amazon-ecs-init` binary against a real runtime, with its ecs directories
//! re-rooted into a [`TestRoot`] so tests never touch the host's own `/etc/ecs` & co.
#![allow(dead_code)]

use ecs_test_support::{agent_lock, http_get, AgentLock, TestRoot};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub const INTROSPECTION: &str = "127.0.0.1:51678";

/// One launcher under test: a test root, a runtime, and the agent lock held for its lifetime.
pub struct Launcher {
    pub root: TestRoot,
    pub runtime: &'static str,
    pub env: Vec<(String, String)>,
    _lock: AgentLock,
}

impl Launcher {
    pub fn new(runtime: &'static str) -> Launcher {
        ecs_test_support::require_root();
        match runtime {
            "docker" => ecs_test_support::require_docker(),
            _ => ecs_test_support::require_containerd(),
        }
        let lock = agent_lock();
        let l = Launcher {
            root: TestRoot::new(),
            runtime,
            env: vec![],
            _lock: lock,
        };
        // A container left by an earlier (failed) test must not confuse this one.
        l.force_remove_agent();
        l
    }

    pub fn cmd(&self, action: &str) -> Command {
        self.configure(launcher(action))
    }

    /// `action` inside `netns` (e.g. where fake AWS endpoints listen) instead of a fresh one.
    pub fn cmd_in_netns(&self, action: &str, netns: &ecs_test_support::fake_aws::Netns) -> Command {
        let mut c = netns.command(env!("CARGO_BIN_EXE_amazon-ecs-init"));
        c.arg(action).env_remove("NOTIFY_SOCKET");
        self.configure(c)
    }

    fn configure(&self, mut c: Command) -> Command {
        c.env("ECS_INIT_HOST_ROOT", self.root.path())
            .env("ECS_INIT_RUNTIME", self.runtime)
            .env("ECS_INIT_FIREWALL", "auto")
            .env("ECS_LOGLEVEL", "debug");
        if self.runtime == "containerd" {
            c.env("ECS_INIT_AGENT_INIT", ecs_test_support::agent_init_binary());
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Run an action to completion, with a deadline.
    pub fn run(&self, action: &str) -> Output {
        let child = self
            .cmd(action)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn amazon-ecs-init");
        wait_output(child, Duration::from_secs(180), action)
    }

    pub fn spawn_start(&self) -> Child {
        self.cmd("start")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn amazon-ecs-init start")
    }

    /// `pre-start` with the stand-in image cached (state 2 = load it).
    pub fn pre_start_with(&self, tarball: &std::path::Path) {
        self.root.place_agent_tarball(tarball, 2);
        let out = self.run("pre-start");
        assert_ok(&out, "pre-start");
    }

    /// The launcher's log: the files rotated at an hour's end (`ecs-init.log.YYYY-MM-DD-HH`,
    /// oldest first), then the current one, so a test that runs across the hour sees every line.
    pub fn init_log(&self) -> String {
        let dir = self.root.join("var/log/ecs");
        let mut rotated: Vec<String> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("ecs-init.log.") && !n.ends_with(".lock"))
            .collect();
        rotated.sort();
        rotated.push("ecs-init.log".into());
        rotated
            .iter()
            .filter_map(|n| std::fs::read_to_string(dir.join(n)).ok())
            .collect()
    }

    /// The stand-in's own report of what it sees, once introspection answers.
    pub fn report(&self) -> serde_json::Value {
        let (code, body) =
            http_get(INTROSPECTION, "/v1/report", Duration::from_secs(5)).expect("GET /v1/report");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("report is JSON")
    }

    /// The report if the agent answers it now: `None` while an agent is going away or coming
    /// up (a connection reset between "introspection answers" and this request is a restart,
    /// not a failure, for a caller that polls).
    pub fn try_report(&self) -> Option<serde_json::Value> {
        match http_get(INTROSPECTION, "/v1/report", Duration::from_secs(5)) {
            Ok((200, body)) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }

    /// Remove any `ecs-agent` container with the runtime's own tool (not through the code
    /// under test).
    pub fn force_remove_agent(&self) {
        match self.runtime {
            "docker" => {
                let _ = Command::new("docker")
                    .args(["rm", "-f", "ecs-agent"])
                    .output();
            }
            _ => {
                let ns = self.containerd_namespace();
                let _ = Command::new("ctr")
                    .args(["-n", &ns, "task", "kill", "-s", "SIGKILL", "ecs-agent"])
                    .output();
                std::thread::sleep(Duration::from_millis(300));
                let _ = Command::new("ctr")
                    .args(["-n", &ns, "task", "delete", "-f", "ecs-agent"])
                    .output();
                let _ = Command::new("ctr")
                    .args(["-n", &ns, "container", "delete", "ecs-agent"])
                    .output();
            }
        }
        wait_until(Duration::from_secs(15), || {
            http_get(INTROSPECTION, "/v1/metadata", Duration::from_millis(300)).is_err()
        });
    }

    pub fn containerd_namespace(&self) -> String {
        self.env
            .iter()
            .find(|(k, _)| k == "ECS_INIT_CONTAINERD_NAMESPACE")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| "ecs".into())
    }

    /// Script the stand-in's successive runs (`lines`: one per start, see the stand-in's
    /// `STANDIN_SCRIPT`), plus `extra_config` lines in `ecs.config`.
    pub fn script(&self, extra_config: &str, lines: &str) {
        self.root.write_ecs_config(&format!(
            "STANDIN_SCRIPT=/var/lib/ecs/script\n{extra_config}"
        ));
        std::fs::write(self.root.join("var/lib/ecs/script"), lines).expect("write the script");
    }

    /// How many times the scripted stand-in has started (it logs every start).
    pub fn agent_starts(&self) -> usize {
        self.root
            .read("var/lib/ecs/script.log")
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// The runtime's own tool (not the code under test): `docker <docker…>`, or
    /// `ctr -n <this test's namespace> <ctr…>`.
    fn runtime_tool(&self, docker: &[&str], ctr: &[&str]) -> std::process::Output {
        match self.runtime {
            "docker" => Command::new("docker").args(docker).output(),
            _ => Command::new("ctr")
                .args(["-n", &self.containerd_namespace()])
                .args(ctr)
                .output(),
        }
        .expect("run the runtime's tool")
    }

    /// The runtime's own description of the agent container (`docker inspect`, `ctr containers
    /// info`), as JSON.
    pub fn runtime_inspect(&self) -> serde_json::Value {
        let out = self.runtime_tool(
            &["inspect", "ecs-agent"],
            &["containers", "info", "ecs-agent"],
        );
        assert!(
            out.status.success(),
            "inspect: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect JSON");
        match v {
            serde_json::Value::Array(mut a) if !a.is_empty() => a.remove(0),
            other => other,
        }
    }

    /// How many containers named exactly `ecs-agent` the runtime has.
    pub fn agent_containers(&self) -> usize {
        let docker = [
            "ps",
            "-a",
            "--filter",
            "name=^/ecs-agent$",
            "--format",
            "{{.Names}}",
        ];
        let out = self.runtime_tool(&docker, &["containers", "list", "-q"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.trim() == "ecs-agent")
            .count()
    }
}

/// The launcher binary with `action`. `pre-start` and `post-stop` change the network namespace
/// they run in (sysctls, routes, firewall), so they run in a fresh one made by `unshare -n`: the
/// host's own stays untouched, while the runtime sockets (filesystem paths) still work.
pub fn launcher(action: &str) -> Command {
    let bin = env!("CARGO_BIN_EXE_amazon-ecs-init");
    let mut c = if matches!(action, "pre-start" | "post-stop") {
        ecs_test_support::require_root();
        // A new namespace has only `lo`, and it is down; a real host's is up.
        let mut u = Command::new("unshare");
        u.args([
            "-n",
            "--",
            "sh",
            "-c",
            "ip link set lo up && exec \"$0\" \"$@\"",
            bin,
        ]);
        u
    } else {
        Command::new(bin)
    };
    c.arg(action).env_remove("NOTIFY_SOCKET");
    c
}

impl Drop for Launcher {
    fn drop(&mut self) {
        self.force_remove_agent();
    }
}

pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} exited {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn wait_output(mut child: Child, timeout: Duration, what: &str) -> Output {
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "{what} did not finish within {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait for a child to exit by itself within `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

pub fn introspection_answers(timeout: Duration) -> bool {
    wait_until(timeout, || {
        matches!(
            http_get(INTROSPECTION, "/v1/metadata", Duration::from_millis(500)),
            Ok((200, _))
        )
    })
}

pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on a pid we spawned and have not reaped.
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0, "kill({}, {sig})", child.id());
}

/// Kill a still-running child (test clean-up on failure paths).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
