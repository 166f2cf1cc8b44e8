//! The volume plugin under a real dockerd, with a test-only `mount.efs`.
//!
//! There is no EFS here, so the tests put a `mount.efs` of their own where mount(8) looks for
//! helpers (`/sbin`, i.e. `/usr/sbin`), in a mount namespace of the plugin's own: an overlay on
//! `/usr/sbin` that only that namespace sees (the host's root mount is private, checked first,
//! so nothing leaks onto the host's `/sbin`). The helper records its arguments and mounts a
//! tmpfs at the target. The volumes root `R` (under the scratch `ECS_INIT_HOST_ROOT`) is made a
//! shared bind mount on the host before the namespace is made, so the plugin's mounts and
//! unmounts under `R` propagate to the host, where dockerd and runc see them.
//!
//! dockerd discovers plugins only in `/run/docker/plugins`, so the plugin listens on the real
//! socket path there (only these tests use it; they hold a lock and remove it afterwards).
use ecs_test_support::{require_docker, require_root, stand_in_tarball, FileLock};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SOCKET: &str = "/run/docker/plugins/amazon-ecs-volume-plugin.sock";
const DRIVER: &str = "amazon-ecs-volume-plugin";
const IMAGE: &str = "ecs-volume-plugin-test/stand-in:latest";
const LOCK: &str = "/tmp/ecs-volume-plugin-tests.lock";

fn run(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Run, and panic with its words unless it succeeds; stdout.
fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}): {}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The optional fields (`shared:N`, `master:N`) of the mount that holds `path`, from the
/// host's mount table.
fn propagation_of(path: &str) -> (String, String) {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    table
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let point = fields.get(4)?.to_string();
            let dash = fields.iter().position(|f| *f == "-")?;
            let optional = fields[6..dash].join(" ");
            let holds = path == point || point == "/" || path.starts_with(&format!("{point}/"));
            holds.then_some((point, optional))
        })
        .max_by_key(|(p, _)| p.len())
        .unwrap()
}

/// The mount points under `root` in the host's mount table.
fn host_mounts_under(root: &Path) -> Vec<String> {
    let prefix = format!("{}/", root.display());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|p| p.starts_with(&prefix))
        .collect()
}

/// A scratch host tree, a shared volumes root, the fake helper, and the plugin process.
struct Rig {
    root: tempfile::TempDir,
    volumes: PathBuf,
    helper_log: PathBuf,
    plugin: Option<Child>,
    containers: Vec<String>,
    volume_names: Vec<String>,
    _lock: FileLock,
}

impl Rig {
    fn new() -> Rig {
        require_root();
        require_docker();
        let lock = FileLock::exclusive(Path::new(LOCK)).unwrap();
        // The helper must not reach the host's /usr/sbin: the overlay the plugin's namespace
        // puts there stays in that namespace only when the mount holding /usr/sbin is private.
        let (point, optional) = propagation_of("/usr/sbin");
        assert!(
            !optional.contains("shared:"),
            "the mount at {point} (which holds /usr/sbin) is shared ({optional}): the test's \
             mount.efs overlay would propagate to the host's /sbin. Run these tests on a host \
             whose root mount is private (e.g. `unshare -m --propagation private` around the \
             test run), never with the helper on the real /sbin"
        );
        let root = tempfile::Builder::new()
            .prefix("ecs-volume-plugin-")
            .tempdir_in("/tmp")
            .unwrap();
        let volumes = root.path().join("var/lib/ecs/volumes");
        std::fs::create_dir_all(&volumes).unwrap();
        let v = volumes.to_str().unwrap();
        ok("mount", &["--bind", v, v]);
        ok("mount", &["--make-shared", v]);
        let upper = root.path().join("sbin-upper");
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::create_dir_all(root.path().join("sbin-work")).unwrap();
        let helper_log = root.path().join("mount.efs.log");
        let helper = upper.join("mount.efs");
        std::fs::write(
            &helper,
            format!(
                "#!/bin/sh\n# test-only mount.efs: record the arguments (tab-separated), mount a tmpfs\n\
                 (IFS='\t'; echo \"$*\") >> {}\nexec mount -t tmpfs -o size=16m,mode=0755 efs-test \"$2\"\n",
                helper_log.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let _ = std::fs::remove_file(SOCKET);
        let tarball = stand_in_tarball(IMAGE);
        ok("docker", &["load", "-i", tarball.to_str().unwrap()]);
        let mut rig = Rig {
            root,
            volumes,
            helper_log,
            plugin: None,
            containers: Vec::new(),
            volume_names: Vec::new(),
            _lock: lock,
        };
        rig.start_plugin();
        rig
    }

    /// Start the plugin in its own mount namespace with the helper overlaid on /usr/sbin, and
    /// wait until it answers.
    fn start_plugin(&mut self) {
        let r = self.root.path();
        let wrapper = r.join("start-plugin.sh");
        std::fs::write(
            &wrapper,
            format!(
                "set -e\nmount -t overlay overlay -o lowerdir=/usr/sbin,upperdir={0}/sbin-upper,workdir={0}/sbin-work /usr/sbin\nexec {1}\n",
                r.display(),
                env!("CARGO_BIN_EXE_amazon-ecs-volume-plugin")
            ),
        )
        .unwrap();
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "unchanged", "sh"])
            .arg(&wrapper)
            .env("ECS_INIT_HOST_ROOT", r)
            .env("ECS_VOLUME_PLUGIN_SOCKET", SOCKET)
            .env("ECS_LOGLEVEL", "debug")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.plugin = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if amazon_ecs_init::report::volume_plugin(Path::new(SOCKET), Duration::from_secs(1))
                .is_ok()
            {
                return;
            }
            if let Some(status) = self.plugin.as_mut().unwrap().try_wait().unwrap() {
                panic!("the plugin exited ({status}); its log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the plugin does not answer on {SOCKET}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill_plugin(&mut self) {
        if let Some(mut child) = self.plugin.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("var/log/ecs/ecs-volume-plugin.log"))
            .unwrap_or_default()
    }

    fn state(&self) -> serde_json::Value {
        let path = self
            .root
            .path()
            .join("var/lib/ecs/data/ecs_volume_plugin.json");
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    fn helper_calls(&self) -> Vec<Vec<String>> {
        std::fs::read_to_string(&self.helper_log)
            .unwrap_or_default()
            .lines()
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect()
    }

    fn volume(&mut self, name: &str) -> String {
        let name = format!("{name}-{}", std::process::id());
        self.volume_names.push(name.clone());
        name
    }

    fn container(&mut self, name: &str) -> String {
        let name = format!("{name}-{}", std::process::id());
        let _ = run("docker", &["rm", "-f", &name]);
        self.containers.push(name.clone());
        name
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = run("docker", &["rm", "-f", c]);
        }
        for v in &self.volume_names {
            let _ = run("docker", &["volume", "rm", "-f", v]);
        }
        self.kill_plugin();
        let _ = std::fs::remove_file(SOCKET);
        let _ = run("umount", &["-R", "-l", self.volumes.to_str().unwrap()]);
    }
}

/// `docker run` of the stand-in with `volume` at /data, obeying the first line of
/// /data/script; its exit code.
fn run_stand_in(name: &str, volume: &str, detach: bool) -> Option<i32> {
    let mount = format!("{volume}:/data");
    let mut args = vec!["run", "--name", name, "--network", "none", "-v", &mount];
    args.extend([
        "-e",
        "STANDIN_SCRIPT=/data/script",
        "-e",
        "ECS_LOGFILE=/data/log",
    ]);
    if detach {
        args.push("-d");
    }
    args.push(IMAGE);
    let out = run("docker", &args);
    if detach {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.status.code()
}

/// `docker volume create -d amazon-ecs-volume-plugin` of an EFS volume; its name.
fn create_volume(name: &str, device: &str, options: &str) -> String {
    let device = format!("device={device}");
    let options = format!("o={options}");
    ok(
        "docker",
        &[
            "volume", "create", "-d", DRIVER, "--opt", "type=efs", "--opt", &device, "--opt",
            &options, name,
        ],
    )
}

#[test]
fn dockerd_uses_the_plugin_for_an_efs_volume_that_containers_share() {
    let mut rig = Rig::new();
    let vol = rig.volume("efs-shared");
    let out = create_volume(&vol, "fs-12345678:/", "tls,iam");
    assert_eq!(out.trim(), vol);
    let path = rig.volumes.join(&vol);
    // Exactly what mount.efs received from mount(8), and the mount is there for dockerd.
    assert_eq!(
        rig.helper_calls(),
        [[
            "fs-12345678:/".to_string(),
            path.display().to_string(),
            "-o".into(),
            "rw,tls,iam".into()
        ]]
    );
    assert_eq!(
        host_mounts_under(&rig.volumes),
        [path.display().to_string()]
    );
    // The first container obeys line 1 and rewrites the file; the second reads what the first
    // wrote and obeys line 2: its exit code proves it.
    std::fs::write(path.join("script"), "exit 0\nexit 7\n").unwrap();
    let writer = rig.container("efs-writer");
    assert_eq!(run_stand_in(&writer, &vol, false), Some(0));
    assert_eq!(
        std::fs::read_to_string(path.join("script")).unwrap(),
        "exit 7\n"
    );
    let reader = rig.container("efs-reader");
    assert_eq!(run_stand_in(&reader, &vol, false), Some(7));
    let starts = std::fs::read_to_string(path.join("script.log")).unwrap();
    assert_eq!(starts.lines().count(), 2, "{starts}");
    // ls / inspect come from the plugin.
    let ls = ok(
        "docker",
        &[
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("driver={DRIVER}"),
        ],
    );
    assert!(ls.lines().any(|l| l == vol), "{ls}");
    let inspect = ok(
        "docker",
        &[
            "volume",
            "inspect",
            "--format",
            "{{.Driver}} {{.Mountpoint}} {{.Scope}}",
            &vol,
        ],
    );
    assert_eq!(inspect.trim(), format!("{DRIVER} {} local", path.display()));
    // In use by a (stopped but not removed) container: Docker itself refuses; once the
    // containers are gone the plugin unmounts and removes.
    ok("docker", &["rm", &writer, &reader]);
    ok("docker", &["volume", "rm", &vol]);
    assert!(host_mounts_under(&rig.volumes).is_empty());
    assert!(!path.exists());
    assert_eq!(rig.state(), serde_json::json!({}));
    // The plugin's own refusals reach the operator in its words.
    let out = run(
        "docker",
        &[
            "volume",
            "create",
            "-d",
            DRIVER,
            "--opt",
            "type=nfs",
            "--opt",
            "device=x:/",
            &rig.volume("bad"),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("volume type \"nfs\" is not supported"),
        "{err}"
    );
    let log = rig.log();
    assert!(log.contains("msg=\"volume created and mounted\""), "{log}");
    assert!(log.contains("o=tls,iam"), "{log}");
}

/// SIGKILL of the plugin while two containers use a volume: the mount stays, a new plugin
/// serves the volume from the state file, the containers keep their data, and Unmount and
/// Remove still work.
#[test]
fn a_plugin_killed_while_containers_use_a_volume_is_restarted_and_loses_nothing() {
    let mut rig = Rig::new();
    let vol = rig.volume("efs-kill");
    create_volume(&vol, "fs-1:/", "tls");
    let path = rig.volumes.join(&vol);
    std::fs::write(path.join("script"), "serve\nserve\nexit 3\n").unwrap();
    let (c1, c2) = (rig.container("efs-kill-1"), rig.container("efs-kill-2"));
    run_stand_in(&c1, &vol, true);
    run_stand_in(&c2, &vol, true);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(path.join("script")).unwrap_or_default() != "exit 3\n" {
        assert!(Instant::now() < deadline, "the containers did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mounts = rig.state()["volumes"][&vol]["mounts"].clone();
    assert_eq!(mounts.as_object().map(|m| m.len()), Some(2), "{mounts}");

    rig.kill_plugin();
    // Killed: the mount stays, and the containers keep working on it.
    assert_eq!(
        host_mounts_under(&rig.volumes),
        [path.display().to_string()]
    );
    rig.start_plugin();
    assert_eq!(
        host_mounts_under(&rig.volumes),
        [path.display().to_string()]
    );
    assert_eq!(rig.helper_calls().len(), 1, "the restart mounted again");
    // The volume is served from the state file: a third container sees the data (line 3).
    let c3 = rig.container("efs-kill-3");
    assert_eq!(run_stand_in(&c3, &vol, false), Some(3));
    ok("docker", &["rm", &c3]);
    // Stopping the first two: Unmount by the new plugin; they wrote to the volume until then.
    ok("docker", &["stop", "-t", "5", &c1, &c2]);
    ok("docker", &["rm", &c1, &c2]);
    let log = std::fs::read_to_string(path.join("log")).unwrap();
    assert_eq!(log.matches("received SIGTERM").count(), 2, "{log}");
    assert!(rig.state()["volumes"][&vol].get("mounts").is_none());
    ok("docker", &["volume", "rm", &vol]);
    assert!(host_mounts_under(&rig.volumes).is_empty());
    assert_eq!(rig.state(), serde_json::json!({}));
    let plugin_log = rig.log();
    assert!(plugin_log.contains("loaded the state file"), "{plugin_log}");
    assert!(!plugin_log.contains("level=error"), "{plugin_log}");
}
