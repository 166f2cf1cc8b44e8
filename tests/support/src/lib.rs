//! Test support for the launcher's integration tests: the stand-in agent image, locks,
//! daemon checks, a loopback HTTP probe and a re-rootable host tree.
//!
//! * [`stand_in_agent_binary`] builds the static stand-in agent once (per process, and under a
//!   file lock across the test binaries cargo runs in parallel);
//! * [`write_docker_save`] / [`write_oci_layout`] pack it into image tarballs that dockerd and
//!   containerd accept (see [`image`]); [`stand_in_tarball`] does both steps with a cache;
//! * [`corrupt_copy`] makes broken tarballs for failure-path tests;
//! * [`agent_lock`] serialises everything that runs the agent container: it uses host networking,
//!   a fixed name and fixed ports, so two tests running it at once would collide;
//! * [`require_root`], [`require_docker`], [`require_containerd`] panic (never skip) when the
//!   machine is not set up — run `tests/setup.sh` first;
//! * [`wait_for_http`] / [`http_get`] probe the agent's ports on loopback;
//! * [`TestRoot`] is a throw-away host tree for `ECS_INIT_HOST_ROOT`;
//! * [`fake_aws`] plays the instance metadata service, S3 and a proxy for the agent download,
//!   inside a network namespace of the test's own ([`fake_aws::Netns`]).

pub mod fake_aws;
pub mod image;

pub use image::{
    corrupt_copy, write_docker_save, write_docker_save_with, write_oci_layout,
    write_oci_layout_with, Corruption, ImageSpec,
};

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// The agent container's name (fixed by the launcher, as upstream).
pub const AGENT_CONTAINER: &str = "ecs-agent";
/// The agent image reference the launcher looks for.
pub const AGENT_IMAGE: &str = "amazon/amazon-ecs-agent:latest";
/// Introspection endpoint the stand-in serves (like the real agent).
pub const INTROSPECTION_ADDR: &str = "127.0.0.1:51678";
/// Credentials endpoint the stand-in serves (like the real agent).
pub const CREDENTIALS_ADDR: &str = "127.0.0.1:51679";
/// The lock file every test that runs the agent container holds.
pub const AGENT_LOCK_PATH: &str = "/tmp/ecs-init-tests.agent.lock";

/// The workspace root, from this crate's manifest dir (`tests/support` → `../..`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root exists")
}

/// Where the stand-in is built and images are cached. A separate target dir: the static
/// build's flags then never touch the shared `target/release` fingerprints, and a nested cargo
/// started from inside `cargo test` does not wait on the outer cargo's build-directory lock.
pub fn stand_in_target_dir() -> PathBuf {
    workspace_root().join("target").join("stand-in-agent")
}

/// An exclusive `flock`, released when dropped (or when the process dies, so a crashed test
/// never leaves a stale lock behind).
#[derive(Debug)]
pub struct FileLock {
    file: File,
    path: PathBuf,
}

impl FileLock {
    /// Blocks until the exclusive lock on `path` (created if missing) is held.
    pub fn exclusive(path: &Path) -> io::Result<FileLock> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        loop {
            // SAFETY: the fd is valid for the lifetime of `file`.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                break;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
        Ok(FileLock {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The locked file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: the fd is still open; closing it would release the lock too.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Held while a test runs the agent container; see [`agent_lock`].
#[derive(Debug)]
pub struct AgentLock {
    _lock: FileLock,
}

/// Blocks until this test may run the agent container (host networking, name `ecs-agent`,
/// ports 51678/51679), holding the lock until the returned guard is dropped.
pub fn agent_lock() -> AgentLock {
    let lock = FileLock::exclusive(Path::new(AGENT_LOCK_PATH))
        .unwrap_or_else(|e| panic!("cannot lock {AGENT_LOCK_PATH}: {e}"));
    AgentLock { _lock: lock }
}

fn cargo_command() -> PathBuf {
    std::env::var_os("CARGO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("cargo"))
}

/// True when the ELF file has no `PT_INTERP` program header, i.e. needs no dynamic loader.
pub fn is_static_elf(path: &Path) -> io::Result<bool> {
    let data = fs::read(path)?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "not a 64-bit little-endian ELF");
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
        return Err(bad());
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[32..40].try_into().map_err(|_| bad())?) as usize;
    let phentsize = u16_at(54);
    let phnum = u16_at(56);
    for i in 0..phnum {
        let off = phoff + i * phentsize;
        if off + 4 > data.len() {
            return Err(bad());
        }
        let p_type = u32::from_le_bytes(data[off..off + 4].try_into().map_err(|_| bad())?);
        if p_type == 3 {
            return Ok(false); // PT_INTERP
        }
    }
    Ok(true)
}

fn build_stand_in() -> PathBuf {
    build_static("ecs-stand-in-agent", &stand_in_target_dir())
}

/// Builds the static `ecs-agent-init` (the containerd backend's PID 1 and log shim, once per
/// process) and returns its path.
pub fn agent_init_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        build_static(
            "ecs-agent-init",
            &workspace_root().join("target/agent-init-static"),
        )
    })
    .clone()
}

/// Build `package`'s binary of the same name statically into its own target dir (so the static
/// flag never invalidates the shared `target/` cache), under a file lock against concurrent
/// test binaries, and return a content-addressed copy that never changes under a reader.
fn build_static(package: &str, target: &Path) -> PathBuf {
    let root = workspace_root();
    fs::create_dir_all(target).expect("create static target dir");
    let _lock = FileLock::exclusive(&target.join(".build.lock")).expect("lock static build");
    let status = Command::new(cargo_command())
        .current_dir(&root)
        .args([
            "rustc",
            "-p",
            package,
            "--release",
            "--bin",
            package,
            "--target-dir",
        ])
        .arg(target)
        .args(["--", "-C", "target-feature=+crt-static"])
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build {package}: {e}"));
    assert!(status.success(), "building {package} failed: {status}");
    let built = target.join("release").join(package);
    assert!(
        is_static_elf(&built).unwrap_or(false),
        "{} is not a static executable",
        built.display()
    );
    let data = fs::read(&built).unwrap_or_else(|e| panic!("read {}: {e}", built.display()));
    let bin_dir = target.join("bin");
    fs::create_dir_all(&bin_dir).expect("create bin dir");
    let dest = bin_dir.join(format!("{package}-{}", &image::sha256_hex(&data)[..16]));
    if !dest.exists() {
        let tmp = dest.with_extension(format!("tmp.{}", std::process::id()));
        fs::copy(&built, &tmp).expect("copy static binary");
        fs::rename(&tmp, &dest).expect("rename static binary");
    }
    dest
}

/// Builds the static stand-in agent (once per process) and returns its path.
pub fn stand_in_agent_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(build_stand_in).clone()
}

/// Which tarball layout [`stand_in_tarball_with`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TarballFormat {
    /// Classic `docker save` layout.
    DockerSave,
    /// OCI image layout (plus `manifest.json`).
    Oci,
}

/// A cached `docker save` tarball of the stand-in tagged `reference`.
pub fn stand_in_tarball(reference: &str) -> PathBuf {
    stand_in_tarball_with(&ImageSpec::new(reference), TarballFormat::DockerSave)
}

/// A cached OCI-layout tarball of the stand-in tagged `reference`.
pub fn stand_in_oci_tarball(reference: &str) -> PathBuf {
    stand_in_tarball_with(&ImageSpec::new(reference), TarballFormat::Oci)
}

/// A cached tarball of the stand-in for `spec` in `format`. The file is shared and must be
/// treated as read-only: copy it (e.g. with [`TestRoot::place_agent_tarball`]) before changing it.
pub fn stand_in_tarball_with(spec: &ImageSpec, format: TarballFormat) -> PathBuf {
    let binary = stand_in_agent_binary();
    let bin_id = binary
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.rsplit('-').next())
        .unwrap_or("x")
        .to_string();
    let dir = stand_in_target_dir().join("images");
    fs::create_dir_all(&dir).expect("create image cache dir");
    let kind = match format {
        TarballFormat::DockerSave => "docker",
        TarballFormat::Oci => "oci",
    };
    let out = dir.join(format!("{kind}-{bin_id}-{}.tar", spec.fingerprint()));
    if !out.exists() {
        let res = match format {
            TarballFormat::DockerSave => write_docker_save_with(&binary, spec, &out),
            TarballFormat::Oci => write_oci_layout_with(&binary, spec, &out),
        };
        res.unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
    }
    out
}

/// Panics unless running as root (the launcher's tests change mounts, containers and netns).
pub fn require_root() {
    // SAFETY: no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this test must run as root (euid is {euid}); run the test suite with sudo"
    );
}

fn command_answers(program: &str, args: &[&str]) -> Result<String, String> {
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run `{program}`: {e}")),
    }
}

/// Panics unless dockerd answers (`docker version`).
pub fn require_docker() {
    if let Err(e) = command_answers("docker", &["version", "--format", "{{.Server.Version}}"]) {
        panic!("dockerd is required but does not answer: {e}\nrun tests/setup.sh as root first");
    }
}

/// Panics unless containerd answers (`ctr version`).
pub fn require_containerd() {
    if let Err(e) = command_answers("ctr", &["version"]) {
        panic!("containerd is required but does not answer: {e}\nrun tests/setup.sh as root first");
    }
}

fn check_loopback(host_port: &str) -> SocketAddr {
    let addr: SocketAddr = host_port
        .replace("localhost", "127.0.0.1")
        .parse()
        .unwrap_or_else(|e| panic!("{host_port:?} is not ip:port: {e}"));
    assert!(
        addr.ip().is_loopback(),
        "tests only talk to loopback, not {addr}"
    );
    addr
}

/// One `GET` over plain HTTP/1.0 to a loopback address; returns (status code, body).
pub fn http_get(host_port: &str, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
    let addr = check_loopback(host_port);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {host_port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP header end"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad status line"))?;
    Ok((status, body.to_string()))
}

/// Polls `GET path` on a loopback `host:port` until it answers 200 or `timeout` passes;
/// returns the body of the first 200 response.
pub fn wait_for_http(url_host_port: &str, path: &str, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok((200, body)) = http_get(url_host_port, path, Duration::from_secs(2)) {
            return Some(body);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Polls until nothing accepts connections on a loopback `host:port` (the agent is gone);
/// true on success.
pub fn wait_for_port_closed(host_port: &str, timeout: Duration) -> bool {
    let addr = check_loopback(host_port);
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A throw-away host tree for `ECS_INIT_HOST_ROOT`: the launcher re-roots `/etc/ecs`,
/// `/var/lib/ecs`, `/var/cache/ecs` and `/var/log/ecs` under it. Removed on drop.
#[derive(Debug)]
pub struct TestRoot {
    dir: tempfile::TempDir,
}

impl Default for TestRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl TestRoot {
    /// Creates the tree with `etc/ecs`, `var/lib/ecs/data`, `var/cache/ecs`, `var/log/ecs`.
    pub fn new() -> TestRoot {
        let dir = tempfile::Builder::new()
            .prefix("ecs-init-test-root.")
            .tempdir()
            .expect("create test root");
        let root = TestRoot { dir };
        for d in [
            "etc/ecs",
            "var/lib/ecs/data",
            "var/cache/ecs",
            "var/log/ecs",
        ] {
            fs::create_dir_all(root.path().join(d)).expect("create test root dirs");
        }
        root
    }

    /// The root itself (the value for `ECS_INIT_HOST_ROOT`).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `rel` under the root; a leading `/` is ignored, so host paths can be used as-is.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        let rel = rel.as_ref();
        self.path().join(rel.strip_prefix("/").unwrap_or(rel))
    }

    /// `<root>/etc/ecs`.
    pub fn etc_ecs(&self) -> PathBuf {
        self.join("etc/ecs")
    }

    /// `<root>/var/lib/ecs`.
    pub fn var_lib_ecs(&self) -> PathBuf {
        self.join("var/lib/ecs")
    }

    /// `<root>/var/cache/ecs`.
    pub fn var_cache_ecs(&self) -> PathBuf {
        self.join("var/cache/ecs")
    }

    /// `<root>/var/log/ecs`.
    pub fn var_log_ecs(&self) -> PathBuf {
        self.join("var/log/ecs")
    }

    /// Writes `<root>/etc/ecs/ecs.config` (the file that wins).
    pub fn write_ecs_config(&self, contents: &str) -> PathBuf {
        let p = self.etc_ecs().join("ecs.config");
        fs::write(&p, contents).expect("write etc/ecs/ecs.config");
        p
    }

    /// Writes `<root>/var/lib/ecs/ecs.config` (read first, overridden by `/etc/ecs`).
    pub fn write_var_lib_ecs_config(&self, contents: &str) -> PathBuf {
        let p = self.var_lib_ecs().join("ecs.config");
        fs::write(&p, contents).expect("write var/lib/ecs/ecs.config");
        p
    }

    /// Writes `<root>/var/cache/ecs/state` (0 uncached, 1 cached, 2 reload needed).
    pub fn write_cache_state(&self, state: u8) -> PathBuf {
        let p = self.var_cache_ecs().join("state");
        fs::write(&p, state.to_string()).expect("write var/cache/ecs/state");
        p
    }

    /// Copies `tarball` to `<root>/var/cache/ecs/ecs-agent.tar` and writes `state`.
    pub fn place_agent_tarball(&self, tarball: &Path, state: u8) -> PathBuf {
        let p = self.place_cache_file(tarball, "ecs-agent.tar");
        self.write_cache_state(state);
        p
    }

    /// Copies `src` to `<root>/var/cache/ecs/<name>` (e.g. an update target for
    /// `desired-image`).
    pub fn place_cache_file(&self, src: &Path, name: &str) -> PathBuf {
        let p = self.var_cache_ecs().join(name);
        fs::copy(src, &p)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", src.display(), p.display()));
        p
    }

    /// Reads a file under the root, `None` when missing.
    pub fn read(&self, rel: impl AsRef<Path>) -> Option<String> {
        fs::read_to_string(self.join(rel)).ok()
    }
}
