//! The OCI runtime spec for the agent container, built from the runtime-neutral [`AgentSpec`].
//!
//! Written with `serde_json` by hand rather than with the `oci-spec` crate: the document is
//! small, every field we emit is visible in one function, and we need none of the crate's
//! defaults (which would have to be overridden field by field to match Docker anyway). The
//! goal is the container Docker would create from the same spec: Docker's default
//! capabilities, mounts, masked and read-only paths, device rules and environment handling.

use crate::spec::{AgentSpec, NamespaceMode};
use serde_json::{json, Value};
use std::path::Path;

/// Where the init binary is bind-mounted inside the container (Docker uses `/sbin/docker-init`).
pub const INIT_IN_CONTAINER: &str = "/sbin/ecs-agent-init";

/// Docker's default capability set (moby `oci/caps/defaults.go`).
pub const DOCKER_DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Docker's masked paths for unprivileged containers.
const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's read-only paths for unprivileged containers.
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub use ecs_formats::image::ImageConfig;

/// Facts about the host the spec depends on; gathered by [`HostFacts::detect`].
#[derive(Debug, Clone)]
pub struct HostFacts {
    pub hostname: String,
    /// Highest capability number the kernel knows (`/proc/sys/kernel/cap_last_cap`).
    pub cap_last_cap: usize,
    /// Bind-mounted when they exist (host network: the container sees the host's resolver
    /// and names, as with Docker's `--network host`).
    pub etc_files: Vec<&'static str>,
}

impl HostFacts {
    pub fn detect() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let hostname = read("/proc/sys/kernel/hostname").trim().to_string();
        let cap_last_cap = read("/proc/sys/kernel/cap_last_cap")
            .trim()
            .parse()
            .unwrap_or(40);
        let etc_files = ["/etc/resolv.conf", "/etc/hosts", "/etc/hostname"]
            .into_iter()
            .filter(|p| Path::new(p).exists())
            .collect();
        HostFacts {
            hostname,
            cap_last_cap,
            etc_files,
        }
    }
}

/// Everything besides the agent spec that shapes the runtime spec.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub image: &'a ImageConfig,
    pub host: &'a HostFacts,
    /// Host path of the static init, bind-mounted to [`INIT_IN_CONTAINER`] when `spec.init`.
    pub init_host_path: &'a Path,
    /// Host directory of the containerd socket, bind-mounted at the same path so the agent can
    /// reach its runtime.
    pub containerd_dir: Option<&'a Path>,
    /// The containerd namespace: the agent's cgroup is `/ecs-init/<namespace>/<name>`, so two
    /// launchers (two namespaces or two containerds) never share one, and a forced stop (which
    /// signals every process of the cgroup) never reaches the other's agent.
    pub namespace: &'a str,
}

/// The cgroup of the container `name` in `namespace`.
pub fn cgroup_path(namespace: &str, name: &str) -> String {
    format!("/ecs-init/{namespace}/{name}")
}

/// The process arguments: image Entrypoint + Cmd, behind the init when asked for.
pub fn process_args(spec: &AgentSpec, image: &ImageConfig) -> Vec<String> {
    let mut args: Vec<String> = image.entrypoint.clone().unwrap_or_default();
    args.extend(image.cmd.clone().unwrap_or_default());
    if spec.init {
        let mut with_init = vec![INIT_IN_CONTAINER.to_string(), "--".to_string()];
        with_init.extend(args);
        with_init
    } else {
        args
    }
}

/// Process environment as Docker builds it: image env, then the spec's (spec wins, keeping
/// the image's order for keys it does not override), `PATH` defaulted, `HOSTNAME` first and
/// `HOME` defaulted like dockerd does.
pub fn process_env(spec: &AgentSpec, image: &ImageConfig, hostname: &str) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: &str, v: &str| {
        if let Some(slot) = env.iter_mut().find(|(key, _)| key == k) {
            slot.1 = v.to_string();
        } else {
            env.push((k.to_string(), v.to_string()));
        }
    };
    set(&mut env, "HOSTNAME", hostname);
    for kv in image.env.iter().flatten() {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        set(&mut env, k, v);
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        set(&mut env, "PATH", DEFAULT_PATH);
    }
    for (k, v) in &spec.env {
        set(&mut env, k, v);
    }
    if !env.iter().any(|(k, _)| k == "HOME") {
        set(&mut env, "HOME", "/root");
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Capabilities for bounding/effective/permitted: Docker's defaults plus `cap_add`, or every
/// capability of the running kernel when privileged.
pub fn capabilities(spec: &AgentSpec, cap_last_cap: usize) -> Vec<String> {
    if spec.privileged {
        return crate::caps::CAPABILITIES
            .iter()
            .take(cap_last_cap + 1)
            .map(|c| c.to_string())
            .collect();
    }
    let mut caps: Vec<String> = DOCKER_DEFAULT_CAPS.iter().map(|c| c.to_string()).collect();
    for add in &spec.cap_add {
        let upper = add.to_ascii_uppercase();
        if upper == "ALL" {
            return capabilities(
                &AgentSpec {
                    privileged: true,
                    ..spec.clone()
                },
                cap_last_cap,
            );
        }
        let name = if upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        };
        if !caps.contains(&name) {
            caps.push(name);
        }
    }
    caps
}

/// User from the image config; only numeric `uid[:gid]` is understood (the agent image runs
/// as root). Names would need the image's `/etc/passwd`; they fall back to root with a warning.
fn user(image: &ImageConfig) -> (u32, u32) {
    let Some(u) = image.user.as_deref().filter(|u| !u.is_empty()) else {
        return (0, 0);
    };
    let (uid, gid) = u.split_once(':').unwrap_or((u, "0"));
    match (uid.parse(), gid.parse()) {
        (Ok(uid), Ok(gid)) => (uid, gid),
        _ => {
            tracing::warn!(
                user = u,
                "image user is not numeric; running the agent as root"
            );
            (0, 0)
        }
    }
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Value {
    json!({"destination": dest, "type": typ, "source": source, "options": options})
}

/// Number of path components, for Docker's parent-before-child mount ordering.
fn depth(p: &str) -> usize {
    Path::new(p).components().count()
}

/// The standard container filesystems, as Docker mounts them (`/sys` read-write and the host's
/// `/dev` for privileged containers).
fn standard_mounts(privileged: bool) -> Vec<Value> {
    let ro_sys = if privileged { "rw" } else { "ro" };
    let dev = if privileged {
        // Docker gives privileged containers every host device; an rbind of /dev does that.
        mount("/dev", "bind", "/dev", &["rbind", "nosuid"])
    } else {
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )
    };
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        dev,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", ro_sys],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", ro_sys],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
    ]
}

/// The bind mounts with their destinations: every bind of the spec (as `rbind`, `ro` where
/// asked), the init, the containerd socket directory and the host's `/etc` name files (the
/// last two unless the spec binds something there already).
fn bind_mounts(spec: &AgentSpec, inputs: &Inputs<'_>) -> Vec<(String, Value)> {
    let mut binds: Vec<(String, Value)> = Vec::new();
    for m in &spec.mounts {
        let dest = m.target.to_string_lossy().into_owned();
        let mut opts = vec!["rbind", "rprivate"];
        if m.read_only {
            opts.push("ro");
        }
        binds.push((
            dest.clone(),
            mount(&dest, "bind", &m.source.to_string_lossy(), &opts),
        ));
    }
    if spec.init {
        binds.push((
            INIT_IN_CONTAINER.to_string(),
            mount(
                INIT_IN_CONTAINER,
                "bind",
                &inputs.init_host_path.to_string_lossy(),
                &["bind", "ro"],
            ),
        ));
    }
    let bound = |p: &Path| spec.mounts.iter().any(|m| m.target == p);
    if let Some(dir) = inputs.containerd_dir.filter(|d| !bound(d)) {
        let d = dir.to_string_lossy().into_owned();
        binds.push((d.clone(), mount(&d, "bind", &d, &["rbind", "rprivate"])));
    }
    for f in inputs
        .host
        .etc_files
        .iter()
        .filter(|f| !bound(Path::new(f)))
    {
        binds.push((
            f.to_string(),
            mount(f, "bind", f, &["rbind", "rprivate", "ro"]),
        ));
    }
    binds
}

/// The mount list: the standard container filesystems, then the binds sorted parent-before-
/// child like Docker does. A bind onto a standard mount point (e.g. the host cgroup root onto
/// /sys/fs/cgroup) replaces the standard mount, as in Docker.
pub fn mounts(spec: &AgentSpec, inputs: &Inputs<'_>) -> Vec<Value> {
    let mut binds = bind_mounts(spec, inputs);
    let mut all = standard_mounts(spec.privileged);
    all.retain(|m| {
        let dest = m["destination"].as_str().unwrap_or_default();
        !binds.iter().any(|(d, _)| d == dest)
    });
    binds.sort_by_key(|(d, _)| depth(d));
    all.extend(binds.into_iter().map(|(_, v)| v));
    all
}

/// Docker's default device cgroup rules for unprivileged containers.
fn device_rules(privileged: bool) -> Value {
    if privileged {
        return json!([{"allow": true, "access": "rwm"}]);
    }
    let c = |major: i64, minor: Option<i64>, access: &str| json!({"allow": true, "type": "c", "major": major, "minor": minor.unwrap_or(-1), "access": access});
    json!([
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "access": "m"},
        {"allow": true, "type": "b", "access": "m"},
        c(1, Some(3), "rwm"),
        c(1, Some(8), "rwm"),
        c(1, Some(7), "rwm"),
        c(5, Some(0), "rwm"),
        c(1, Some(5), "rwm"),
        c(1, Some(9), "rwm"),
        c(136, None, "rwm"),
        c(5, Some(2), "rwm"),
        c(10, Some(200), "rwm"),
    ])
}

/// The complete OCI runtime spec (`config.json`) for the agent container.
pub fn build(spec: &AgentSpec, inputs: &Inputs<'_>) -> Value {
    let caps = capabilities(spec, inputs.host.cap_last_cap);
    let (uid, gid) = user(inputs.image);
    let cwd = inputs
        .image
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());

    // No "network" entry: host network, as Docker's --network host. No "user" entry: host
    // user namespace. A cgroup namespace is not created: the host uses cgroup v1 or Docker's
    // default there (host) and the spec bind-mounts the host cgroup root anyway.
    let mut namespaces = vec![
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    if spec.pid == NamespaceMode::Private {
        namespaces.insert(0, json!({"type": "pid"}));
    }
    if spec.network == NamespaceMode::Private {
        namespaces.push(json!({"type": "network"}));
    }
    if spec.userns == NamespaceMode::Private {
        tracing::warn!(
            "a private user namespace is not supported by the containerd backend; using the host's"
        );
    }

    let mut process = json!({
        "terminal": false,
        "user": {"uid": uid, "gid": gid},
        "args": process_args(spec, inputs.image),
        "env": process_env(spec, inputs.image, &inputs.host.hostname),
        "cwd": cwd,
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        // No "rlimits": like Docker without --ulimit, the agent inherits the runtime's limits
        // (containerd.service: LimitNOFILE=infinity); setting higher ones than the shim has fails.
        "noNewPrivileges": false,
    });
    if let Some(profile) = &spec.apparmor_profile {
        process["apparmorProfile"] = json!(profile);
    }

    let mut linux = json!({
        "namespaces": namespaces,
        "resources": {"devices": device_rules(spec.privileged)},
        "cgroupsPath": cgroup_path(inputs.namespace, &spec.name),
    });
    if !spec.privileged {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
    }

    json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": "rootfs", "readonly": false},
        "hostname": inputs.host.hostname,
        "mounts": mounts(spec, inputs),
        "linux": linux,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Mount;

    fn spec() -> AgentSpec {
        AgentSpec {
            mounts: vec![
                Mount::rw("/var/log/ecs/exec", "/log/exec"),
                Mount::rw("/var/log/ecs", "/log"),
                Mount::ro("/etc/ssl", "/etc/ssl"),
                Mount::rw("/sys/fs/cgroup", "/sys/fs/cgroup"),
            ],
            cap_add: vec!["NET_ADMIN".into(), "SYS_ADMIN".into()],
            apparmor_profile: Some("ecs-agent-default".into()),
            ..AgentSpec::new(
                "amazon/amazon-ecs-agent:latest",
                "ecs-agent",
                &[("ECS_LOGFILE", "/log/ecs-agent.log"), ("PATH", "/x")],
            )
        }
    }

    fn host() -> HostFacts {
        HostFacts {
            hostname: "h".into(),
            cap_last_cap: 40,
            etc_files: vec!["/etc/resolv.conf"],
        }
    }

    fn image() -> ImageConfig {
        ImageConfig {
            env: Some(vec!["PATH=/usr/bin".into(), "A=1".into()]),
            entrypoint: Some(vec!["/agent".into()]),
            cmd: Some(vec!["--x".into()]),
            ..Default::default()
        }
    }

    fn built(spec: &AgentSpec) -> Value {
        let (image, host) = (image(), host());
        build(
            spec,
            &Inputs {
                image: &image,
                host: &host,
                init_host_path: Path::new("/usr/libexec/amazon-ecs-init-agent-init"),
                containerd_dir: Some(Path::new("/run/containerd")),
                namespace: "ecs",
            },
        )
    }

    #[test]
    fn args_env_caps() {
        let v = built(&spec());
        assert_eq!(
            v["process"]["args"],
            json!([INIT_IN_CONTAINER, "--", "/agent", "--x"])
        );
        let env: Vec<String> = serde_json::from_value(v["process"]["env"].clone()).unwrap();
        assert_eq!(
            env,
            [
                "HOSTNAME=h",
                "PATH=/x",
                "A=1",
                "ECS_LOGFILE=/log/ecs-agent.log",
                "HOME=/root"
            ]
        );
        let caps: Vec<String> =
            serde_json::from_value(v["process"]["capabilities"]["effective"].clone()).unwrap();
        assert_eq!(caps.len(), DOCKER_DEFAULT_CAPS.len() + 2);
        assert!(caps.contains(&"CAP_SYS_ADMIN".to_string()));
        assert_eq!(v["process"]["apparmorProfile"], "ecs-agent-default");
        let ns: Vec<String> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount"]);
        assert!(v["linux"]["maskedPaths"].is_array());
    }

    #[test]
    fn mounts_ordered_and_cgroup_overridden() {
        let v = built(&spec());
        let dests: Vec<&str> = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        let pos = |d: &str| dests.iter().position(|x| *x == d).unwrap();
        assert!(pos("/log") < pos("/log/exec"));
        assert_eq!(dests.iter().filter(|d| **d == "/sys/fs/cgroup").count(), 1);
        let cg = &v["mounts"][pos("/sys/fs/cgroup")];
        assert_eq!(cg["type"], "bind");
        assert_eq!(
            v["mounts"][pos("/etc/ssl")]["options"],
            json!(["rbind", "rprivate", "ro"])
        );
        assert!(dests.contains(&"/run/containerd"));
        assert!(dests.contains(&INIT_IN_CONTAINER));
        assert!(dests.contains(&"/etc/resolv.conf"));
    }

    #[test]
    fn privileged_and_pid_host() {
        let mut s = spec();
        s.privileged = true;
        s.pid = NamespaceMode::Host;
        s.init = false;
        let v = built(&s);
        let caps = v["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert_eq!(caps.len(), 41);
        assert!(v["linux"].get("maskedPaths").is_none());
        assert_eq!(v["process"]["args"], json!(["/agent", "--x"]));
        assert!(!v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "pid"));
        let sys = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/sys")
            .unwrap();
        assert!(sys["options"].as_array().unwrap().contains(&json!("rw")));
    }
}
