//! Turn configuration and host facts into the runtime-neutral agent container spec
//! (packaging/COMPATIBILITY.md §4). Pure: no I/O, so every decision is unit-tested.
use ecs_runtime::{AgentSpec, LogConfig, Mount, NamespaceMode};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::{Entry, Warning};
use crate::facts::HostFacts;
use crate::paths::Paths;

pub const AGENT_IMAGE: &str = "amazon/amazon-ecs-agent:latest";
pub const AGENT_NAME: &str = "ecs-agent";
/// Default credentials-fetcher socket (gMSA).
pub const CREDENTIALS_FETCHER_SOCKET: &str =
    "/var/credentials-fetcher/socket/credentials_fetcher.sock";
pub const DEFAULT_APPARMOR_PROFILE: &str = "ecs-agent-default";

/// The knobs that shape the agent container, as the settings resolved them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AgentKnobs {
    pub external: bool,
    pub gmsa: bool,
    /// The credentials-fetcher socket path.
    pub credentials_fetcher: PathBuf,
    pub gpu_support: bool,
    pub privileged: bool,
    pub pid_host: bool,
    pub apparmor_profile: String,
    /// `ECS_LOG_DRIVER` when set to one of the drivers the Go tool allows (another value is a
    /// warning).
    pub log_driver: Option<&'static str>,
    /// `ECS_LOG_DRIVER` is set (not blank) to something else: json-file with the default
    /// options, `ECS_LOG_OPTS` ignored (as the Go tool does).
    pub log_driver_unknown: bool,
    /// `ECS_LOG_OPTS` parsed; `None` when unset or invalid (a warning then).
    pub log_opts: Option<BTreeMap<String, String>>,
    pub log_file_size: Option<String>,
    pub log_file_num: Option<String>,
    /// The socket `DOCKER_HOST` names in the process environment (bound into the agent) and in
    /// the env files (where the agent looks for it); `None` when unset or not `unix://`.
    pub docker_host: Option<PathBuf>,
    pub docker_host_in_files: Option<PathBuf>,
    /// `ECS_AGENT_LABELS` (env files only, as the Go tool reads it); invalid JSON is a warning
    /// and no labels.
    pub labels: BTreeMap<String, String>,
}

/// Everything the agent container spec is built from (the composition root builds it from the
/// settings).
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub knobs: AgentKnobs,
    pub paths: Paths,
    /// The env files' entries, in order: passed to the agent as they are.
    pub file_env: Vec<Entry>,
}

/// Environment in insertion order where a later `set` replaces the value in place.
#[derive(Default)]
struct EnvList(Vec<(String, String)>);

impl EnvList {
    fn set(&mut self, k: &str, v: impl Into<String>) {
        let v = v.into();
        match self.0.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = v,
            None => self.0.push((k.to_string(), v)),
        }
    }
}

/// The paths whose existence [`build`] needs beyond [`HostFacts::probe`]'s own.
pub fn paths_to_probe(opts: &AgentOptions) -> Vec<PathBuf> {
    let paths = &opts.paths;
    vec![
        opts.knobs.credentials_fetcher.clone(),
        paths.var_lib_ecs.join("deps"),
        paths.var_lib_ecs.join("deps/execute-command/config"),
    ]
}

/// Build the agent container spec, and the warnings of what the host made of the knobs (the
/// knobs' own problems, such as bad labels JSON, are among the settings' warnings, naming the
/// file, line and key).
pub fn build(opts: &AgentOptions, facts: &HostFacts) -> (AgentSpec, Vec<Warning>) {
    let mut warnings = Vec::new();
    let knobs = &opts.knobs;
    let log = log_config(knobs);
    if let Some(entry) = dropped_gpu_switch(opts, facts) {
        warnings.push(Warning {
            origin: Some(entry.origin.clone()),
            key: Some(crate::gpu::ENABLE_KEY.into()),
            message: format!(
                "No GPU devices found (no /dev/nvidia*), ignoring the GPU support config: {}={} is left out of the agent's environment",
                crate::gpu::ENABLE_KEY,
                entry.value
            ),
        });
    }
    let spec = AgentSpec {
        image: AGENT_IMAGE.into(),
        name: AGENT_NAME.into(),
        env: environment(opts, facts),
        mounts: binds(opts, facts),
        labels: knobs.labels.clone(),
        cap_add: if knobs.external {
            vec![]
        } else {
            vec!["NET_ADMIN".into(), "SYS_ADMIN".into()]
        },
        network: NamespaceMode::Host,
        pid: if knobs.pid_host {
            NamespaceMode::Host
        } else {
            NamespaceMode::Private
        },
        userns: NamespaceMode::Host,
        privileged: knobs.privileged,
        init: true,
        apparmor_profile: facts.apparmor.then(|| knobs.apparmor_profile.clone()),
        log,
    };
    (spec, warnings)
}

/// The env files' `ECS_ENABLE_GPU_SUPPORT=<true>` when no `/dev/nvidia*` exists (after the
/// wait for a late driver): the Go tool leaves it out of the agent's environment rather than
/// start a GPU agent without GPUs. Any value that reads as true counts (the agent parses it so);
/// the Go tool drops only the literal `true` of `/var/lib/ecs/ecs.config`.
fn dropped_gpu_switch<'o>(opts: &'o AgentOptions, facts: &HostFacts) -> Option<&'o Entry> {
    let entry = file_entry(opts, crate::gpu::ENABLE_KEY)?;
    let on = crate::config::parse_bool(entry.value.trim()) == Some(true);
    (on && !facts.nvidia_devices).then_some(entry)
}

/// The env-file entry for `key`, if any.
fn file_entry<'o>(opts: &'o AgentOptions, key: &str) -> Option<&'o Entry> {
    opts.file_env.iter().find(|e| e.key == key)
}

/// The agent's environment, lowest precedence first (packaging/COMPATIBILITY.md §4).
fn environment(opts: &AgentOptions, facts: &HostFacts) -> Vec<(String, String)> {
    let knobs = &opts.knobs;
    let mut env = EnvList::default();
    for (k, v) in [
        ("ECS_LOGFILE", "/log/ecs-agent.log"),
        ("ECS_DATADIR", "/data"),
        ("ECS_AGENT_CONFIG_FILE_PATH", "/etc/ecs/ecs.config.json"),
        ("ECS_UPDATE_DOWNLOAD_DIR", "/var/cache/ecs"),
        ("ECS_UPDATES_ENABLED", "true"),
        (
            "ECS_AVAILABLE_LOGGING_DRIVERS",
            r#"["json-file","syslog","awslogs","fluentd","none"]"#,
        ),
        ("ECS_ENABLE_TASK_IAM_ROLE", "true"),
        ("ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST", "true"),
        ("ECS_EBSTA_SUPPORTED", "true"),
        ("ECS_AGENT_LABELS", ""),
    ] {
        env.set(k, v);
    }
    // Only when the plugin is there: the agent hands every EFS volume with transit encryption
    // or an access point to the `amazon-ecs-volume-plugin` driver, which must then exist.
    if facts.volume_plugin {
        env.set("ECS_VOLUME_PLUGIN_CAPABILITIES", r#"["efsAuth"]"#);
    }
    env.set("ECS_DETAILED_OS_FAMILY", facts.detailed_os_family.clone());
    if let Some(dir) = &facts.cert_dir {
        env.set("SSL_CERT_DIR", dir.display().to_string());
    }
    env.set(
        "CREDENTIALS_FETCHER_HOST_DIR",
        knobs.credentials_fetcher.display().to_string(),
    );
    env.set("ECS_ENABLE_TASK_ENI", "true");
    env.set("ECS_ENABLE_AWSLOGS_EXECUTIONROLE_OVERRIDE", "true");
    if knobs.gmsa && facts.realm_joined {
        env.set("ECS_DOMAIN_JOINED_LINUX_INSTANCE", "true");
    }
    let dropped = dropped_gpu_switch(opts, facts).map(|e| e.key.as_str());
    for e in &opts.file_env {
        if Some(e.key.as_str()) != dropped {
            env.set(&e.key, e.value.clone());
        }
    }
    if knobs.external {
        env.set("ECS_ENABLE_TASK_ENI", "false");
    }
    if !facts.ebs_dir {
        env.set("ECS_EBSTA_SUPPORTED", "false");
    }
    env.0
}

/// The binds, in the existing tool's order.
fn binds(opts: &AgentOptions, facts: &HostFacts) -> Vec<Mount> {
    let (paths, knobs) = (&opts.paths, &opts.knobs);
    let mut mounts = vec![runtime_socket_bind(knobs)];
    mounts.push(Mount::rw(&paths.var_log_ecs, "/log"));
    mounts.push(Mount::rw(paths.data_dir(), "/data"));
    mounts.push(Mount::rw(&paths.etc_ecs, "/etc/ecs"));
    mounts.push(Mount::rw(&paths.var_cache_ecs, "/var/cache/ecs"));
    mounts.push(Mount::rw(&facts.cgroup_root, "/sys/fs/cgroup"));
    mounts.push(Mount::rw(&paths.var_lib_ecs, "/var/lib/ecs"));
    mounts.push(Mount::rw(paths.var_log_ecs.join("exec"), "/log/exec"));
    if let Some(pki) = &facts.pki_dir {
        mounts.push(Mount::ro(pki, pki));
    }
    if knobs.external {
        // The rotating credentials of ECS Anywhere (re-rooted like the ecs directories).
        mounts.push(Mount::ro(
            paths.rooted("/root/.aws".as_ref()),
            "/rotatingcreds",
        ));
    }
    if knobs.gpu_support && facts.nvidia_devices {
        mounts.push(Mount::rw(paths.var_lib_ecs.join("gpu"), "/var/lib/ecs/gpu"));
    }
    let fetcher = &knobs.credentials_fetcher;
    if gmsa_in_files(opts) && facts.exists(fetcher) {
        mounts.push(Mount::rw(fetcher, fetcher));
    }
    for plugins in [
        "/run/docker/plugins",
        "/etc/docker/plugins",
        "/usr/lib/docker/plugins",
    ] {
        mounts.push(Mount::ro(plugins, plugins));
    }
    let deps = paths.var_lib_ecs.join("deps");
    if facts.exists(&deps) {
        mounts.push(Mount::ro(&deps, "/managed-agents"));
        let exec_cfg = deps.join("execute-command/config");
        if facts.exists(&exec_cfg) {
            mounts.push(Mount::rw(
                &exec_cfg,
                "/managed-agents/execute-command/config",
            ));
        }
    }
    mounts.extend(host_binds(knobs.external, facts));
    mounts
}

/// The Go tool binds the credentials-fetcher socket when the env files (the agent's own
/// environment) turn gMSA on, whatever the process environment says (that one decides only the
/// realm check). Any value the agent reads as true counts.
fn gmsa_in_files(opts: &AgentOptions) -> bool {
    file_entry(opts, "ECS_GMSA_SUPPORTED")
        .is_some_and(|e| crate::config::parse_bool(e.value.trim()) == Some(true))
}

/// `/var/run`, or only the Docker socket when `DOCKER_HOST` names one: bound where the agent's
/// own `DOCKER_HOST` (from the env files) says, else at the default socket.
fn runtime_socket_bind(knobs: &AgentKnobs) -> Mount {
    match &knobs.docker_host {
        Some(sock) => {
            let target = knobs
                .docker_host_in_files
                .as_deref()
                .unwrap_or(Path::new(ecs_runtime::docker::DEFAULT_SOCKET));
            Mount::rw(sock, target)
        }
        None => Mount::rw("/var/run", "/var/run"),
    }
}

/// The host's system directories and tools the agent uses, read-only where it only reads.
fn host_binds(external: bool, facts: &HostFacts) -> Vec<Mount> {
    let mut mounts: Vec<Mount> = [
        ("/proc", "/host/proc"),
        ("/usr/lib", "/usr/lib"),
        ("/lib", "/lib"),
        ("/usr/lib64", "/usr/lib64"),
        ("/lib64", "/lib64"),
        ("/sbin", "/host/sbin"),
        ("/etc/alternatives", "/etc/alternatives"),
        ("/usr/sbin", "/usr/sbin"),
    ]
    .into_iter()
    .map(|(src, dst)| Mount::ro(src, dst))
    .collect();
    mounts.push(Mount::rw("/usr/bin/lsblk", "/usr/bin/lsblk"));
    for file in [&facts.nsenter, &facts.modinfo].into_iter().flatten() {
        mounts.push(Mount::rw(file, file));
    }
    if let (Some(result), false) = (&facts.cloud_init_result, external) {
        mounts.push(Mount::ro(result, result));
    }
    mounts
}

/// The agent container's log configuration, decided as the Go tool does: the driver of
/// `ECS_LOG_DRIVER` (json-file when unset, or unknown — then `ECS_LOG_OPTS` is ignored too) with
/// the options of `ECS_LOG_OPTS`; json-file without options gets `max-size` =
/// `ECS_INIT_DOCKER_LOG_FILE_SIZE` and `max-file` = `ECS_INIT_DOCKER_LOG_FILE_NUM`, passed to
/// the runtime exactly as written (Docker reads a bare number as bytes), `16m` and `4` when unset.
fn log_config(knobs: &AgentKnobs) -> LogConfig {
    let default = LogConfig::default();
    let (driver, options) = match (knobs.log_driver, knobs.log_driver_unknown) {
        (_, true) => (default.driver.clone(), None),
        (Some(driver), false) => (driver.to_string(), knobs.log_opts.clone()),
        (None, false) => (default.driver.clone(), knobs.log_opts.clone()),
    };
    let options = match options {
        Some(options) => options,
        None if driver == default.driver => {
            let mut options = default.options.clone();
            let set = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
            if let Some(size) = set(&knobs.log_file_size) {
                options.insert("max-size".into(), size);
            }
            if let Some(num) = set(&knobs.log_file_num) {
                options.insert("max-file".into(), num);
            }
            options
        }
        None => BTreeMap::new(),
    };
    LogConfig { driver, options }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Warning};
    use crate::facts::Distro;

    fn facts() -> HostFacts {
        HostFacts {
            distro: Distro::AmazonLinux,
            detailed_os_family: "amzn_2".into(),
            cert_dir: Some("/etc/pki/tls/certs".into()),
            pki_dir: Some("/etc/pki".into()),
            cgroup_root: "/sys/fs/cgroup".into(),
            ebs_dir: true,
            nvidia_devices: false,
            apparmor: false,
            realm_joined: false,
            nsenter: Some("/usr/bin/nsenter".into()),
            modinfo: Some("/sbin/modinfo".into()),
            cloud_init_result: Some(crate::facts::CLOUD_INIT_RESULT.into()),
            existing: vec![],
            volume_plugin: true,
        }
    }

    fn cfg(file: &str, process: &[(&str, &str)]) -> (Config, BTreeMap<String, String>) {
        (
            Config::from_parts(&[(PathBuf::from("/etc/ecs/ecs.config"), file.to_string())]),
            process
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// The spec and every warning (settings and spec), as the launcher logs them.
    fn build(
        paths: &Paths,
        (files, env): &(Config, BTreeMap<String, String>),
        facts: &HostFacts,
    ) -> (AgentSpec, Vec<Warning>) {
        let settings =
            crate::settings::Settings::resolve(env.clone(), paths.clone(), files.clone());
        let (spec, mut warnings) = super::build(&crate::compose::agent_options(&settings), facts);
        warnings.extend(settings.warnings.clone());
        (spec, warnings)
    }

    fn env(spec: &AgentSpec) -> Vec<String> {
        spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    fn binds(spec: &AgentSpec) -> Vec<String> {
        spec.mounts
            .iter()
            .map(|m| {
                format!(
                    "{}:{}{}",
                    m.source.display(),
                    m.target.display(),
                    if m.read_only { ":ro" } else { "" }
                )
            })
            .collect()
    }

    #[test]
    fn default_spec_matches_upstream() {
        let (spec, warnings) = build(
            &Paths::under("/"),
            &cfg("ECS_CLUSTER=prod\n", &[]),
            &facts(),
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(spec.image, "amazon/amazon-ecs-agent:latest");
        assert_eq!(spec.name, "ecs-agent");
        assert_eq!(
            env(&spec),
            [
                "ECS_LOGFILE=/log/ecs-agent.log",
                "ECS_DATADIR=/data",
                "ECS_AGENT_CONFIG_FILE_PATH=/etc/ecs/ecs.config.json",
                "ECS_UPDATE_DOWNLOAD_DIR=/var/cache/ecs",
                "ECS_UPDATES_ENABLED=true",
                r#"ECS_AVAILABLE_LOGGING_DRIVERS=["json-file","syslog","awslogs","fluentd","none"]"#,
                "ECS_ENABLE_TASK_IAM_ROLE=true",
                "ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST=true",
                "ECS_EBSTA_SUPPORTED=true",
                "ECS_AGENT_LABELS=",
                r#"ECS_VOLUME_PLUGIN_CAPABILITIES=["efsAuth"]"#,
                "ECS_DETAILED_OS_FAMILY=amzn_2",
                "SSL_CERT_DIR=/etc/pki/tls/certs",
                "CREDENTIALS_FETCHER_HOST_DIR=/var/credentials-fetcher/socket/credentials_fetcher.sock",
                "ECS_ENABLE_TASK_ENI=true",
                "ECS_ENABLE_AWSLOGS_EXECUTIONROLE_OVERRIDE=true",
                "ECS_CLUSTER=prod",
            ]
        );
        assert_eq!(
            binds(&spec),
            [
                "/var/run:/var/run",
                "/var/log/ecs:/log",
                "/var/lib/ecs/data:/data",
                "/etc/ecs:/etc/ecs",
                "/var/cache/ecs:/var/cache/ecs",
                "/sys/fs/cgroup:/sys/fs/cgroup",
                "/var/lib/ecs:/var/lib/ecs",
                "/var/log/ecs/exec:/log/exec",
                "/etc/pki:/etc/pki:ro",
                "/run/docker/plugins:/run/docker/plugins:ro",
                "/etc/docker/plugins:/etc/docker/plugins:ro",
                "/usr/lib/docker/plugins:/usr/lib/docker/plugins:ro",
                "/proc:/host/proc:ro",
                "/usr/lib:/usr/lib:ro",
                "/lib:/lib:ro",
                "/usr/lib64:/usr/lib64:ro",
                "/lib64:/lib64:ro",
                "/sbin:/host/sbin:ro",
                "/etc/alternatives:/etc/alternatives:ro",
                "/usr/sbin:/usr/sbin:ro",
                "/usr/bin/lsblk:/usr/bin/lsblk",
                "/usr/bin/nsenter:/usr/bin/nsenter",
                "/sbin/modinfo:/sbin/modinfo",
                "/var/lib/cloud/data/result.json:/var/lib/cloud/data/result.json:ro",
            ]
        );
        assert_eq!(spec.cap_add, ["NET_ADMIN", "SYS_ADMIN"]);
        assert_eq!(
            (spec.network, spec.userns, spec.pid),
            (
                NamespaceMode::Host,
                NamespaceMode::Host,
                NamespaceMode::Private
            )
        );
        assert!(spec.init && !spec.privileged && spec.apparmor_profile.is_none());
        assert!(spec.labels.is_empty());
        assert_eq!(spec.log, LogConfig::default());
    }

    #[test]
    fn file_env_overrides_defaults_and_forced_values_win() {
        let (spec, _) = build(
            &Paths::under("/"),
            &cfg(
                "ECS_ENABLE_TASK_ENI=true\nECS_LOGFILE=/log/x.log\nECS_EXTERNAL=true\n",
                &[],
            ),
            &HostFacts {
                ebs_dir: false,
                volume_plugin: false,
                ..facts()
            },
        );
        assert_eq!(spec.env_value("ECS_LOGFILE"), Some("/log/x.log"));
        assert_eq!(spec.env_value("ECS_ENABLE_TASK_ENI"), Some("false"));
        assert_eq!(spec.env_value("ECS_EBSTA_SUPPORTED"), Some("false"));
        // No volume plugin installed: the agent is not told to use it.
        assert_eq!(spec.env_value("ECS_VOLUME_PLUGIN_CAPABILITIES"), None);
        // External: no caps, rotating creds, no cloud-init result.
        assert!(spec.cap_add.is_empty());
        let b = binds(&spec);
        assert!(b.contains(&"/root/.aws:/rotatingcreds:ro".to_string()));
        assert!(!b.iter().any(|m| m.contains("result.json")));
    }

    #[test]
    fn rerooted_ecs_dirs_only() {
        let root = Paths::under("/tmp/r");
        let (spec, _) = build(&root, &cfg("", &[]), &facts());
        let b = binds(&spec);
        assert!(b.contains(&"/tmp/r/var/log/ecs:/log".to_string()));
        assert!(b.contains(&"/tmp/r/var/lib/ecs/data:/data".to_string()));
        assert!(b.contains(&"/proc:/host/proc:ro".to_string()));
        // ECS Anywhere's credentials directory follows the root too (a demo must not create
        // /root/.aws on the real host).
        let (spec, _) = build(&root, &cfg("ECS_EXTERNAL=true\n", &[]), &facts());
        let b = binds(&spec);
        assert!(
            b.contains(&"/tmp/r/root/.aws:/rotatingcreds:ro".to_string()),
            "{b:?}"
        );
    }

    #[test]
    fn labels_and_bad_labels() {
        let (spec, w) = build(
            &Paths::under("/"),
            &cfg(r#"ECS_AGENT_LABELS={"a":"1","b":"2"}"#, &[]),
            &facts(),
        );
        assert!(w.is_empty());
        assert_eq!(spec.labels.len(), 2);
        let (spec, w) = build(
            &Paths::under("/"),
            &cfg("ECS_CLUSTER=x\nECS_AGENT_LABELS={\"a\":1}\n", &[]),
            &facts(),
        );
        assert!(spec.labels.is_empty());
        assert_eq!(w.len(), 1);
        let msg = w[0].to_string();
        assert!(
            msg.starts_with("/etc/ecs/ecs.config:2: ECS_AGENT_LABELS: Failed to decode the container labels, skipping labels"),
            "{msg}"
        );
    }

    #[test]
    fn host_config_knobs() {
        let (spec, w) = build(
            &Paths::under("/"),
            &cfg(
                "",
                &[
                    ("ECS_AGENT_RUN_PRIVILEGED", "true"),
                    ("ECS_AGENT_PID_NAMESPACE_HOST", "true"),
                    ("ECS_AGENT_APPARMOR_PROFILE", "custom"),
                    ("ECS_INIT_DOCKER_LOG_FILE_SIZE", "32"),
                    ("ECS_INIT_DOCKER_LOG_FILE_NUM", "7"),
                ],
            ),
            &HostFacts {
                apparmor: true,
                ..facts()
            },
        );
        assert!(w.is_empty());
        assert!(spec.privileged);
        assert_eq!(spec.pid, NamespaceMode::Host);
        assert_eq!(spec.apparmor_profile.as_deref(), Some("custom"));
        // Passed as written, like the Go tool (Docker reads "32" as 32 bytes).
        assert_eq!(spec.log.options["max-size"], "32");
        assert_eq!(spec.log.options["max-file"], "7");
    }

    #[test]
    fn log_driver_and_opts() {
        let (spec, w) = build(
            &Paths::under("/"),
            &cfg(
                "",
                &[
                    ("ECS_LOG_DRIVER", "syslog"),
                    ("ECS_LOG_OPTS", r#"{"tag":"ecs"}"#),
                ],
            ),
            &facts(),
        );
        assert!(w.is_empty());
        assert_eq!(spec.log.driver, "syslog");
        assert_eq!(
            spec.log.options,
            BTreeMap::from([("tag".into(), "ecs".into())])
        );
        let (spec, w) = build(
            &Paths::under("/"),
            &cfg("ECS_LOG_DRIVER=bogus\n", &[("ECS_LOG_OPTS", "[1]")]),
            &facts(),
        );
        assert_eq!(spec.log, LogConfig::default());
        assert_eq!(w.len(), 2);
        // An unknown driver: json-file with the size knobs, ECS_LOG_OPTS ignored (Go's rule).
        let (spec, _) = build(
            &Paths::under("/"),
            &cfg(
                "ECS_LOG_DRIVER=bogus\nECS_INIT_DOCKER_LOG_FILE_SIZE=1g\n",
                &[("ECS_LOG_OPTS", r#"{"tag":"ecs"}"#)],
            ),
            &facts(),
        );
        assert_eq!(spec.log.driver, "json-file");
        assert_eq!(
            spec.log.options,
            BTreeMap::from([
                ("max-file".into(), "4".into()),
                ("max-size".into(), "1g".into())
            ])
        );
        // json-file with options: those only (no size knobs), as with Go.
        let (spec, _) = build(
            &Paths::under("/"),
            &cfg(
                "ECS_INIT_DOCKER_LOG_FILE_SIZE=1g\n",
                &[("ECS_LOG_OPTS", r#"{"max-size":"5m"}"#)],
            ),
            &facts(),
        );
        assert_eq!(
            spec.log.options,
            BTreeMap::from([("max-size".into(), "5m".into())])
        );
        // Another driver without options: none (the driver's own defaults).
        let (spec, _) = build(
            &Paths::under("/"),
            &cfg(
                "ECS_LOG_DRIVER=journald\nECS_INIT_DOCKER_LOG_FILE_NUM=9\n",
                &[],
            ),
            &facts(),
        );
        assert_eq!(spec.log.driver, "journald");
        assert!(spec.log.options.is_empty());
        assert!(
            w[0].to_string()
                .starts_with("/etc/ecs/ecs.config:1: ECS_LOG_DRIVER: unknown log driver \"bogus\""),
            "{w:?}"
        );
    }

    /// No `/dev/nvidia*` (after the wait): the env files' GPU switch is left out of the
    /// agent's environment with a warning naming file and line; with devices, it passes.
    #[test]
    fn gpu_switch_left_out_without_devices() {
        let gpu_env = |file: &str, nvidia_devices: bool| {
            let (spec, warnings) = build(
                &Paths::under("/"),
                &cfg(file, &[]),
                &HostFacts {
                    nvidia_devices,
                    ..facts()
                },
            );
            let env: Vec<String> = env(&spec)
                .into_iter()
                .filter(|e| e.starts_with("ECS_ENABLE_GPU"))
                .collect();
            let warnings: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
            (env, warnings)
        };
        let (env, warnings) = gpu_env("ECS_CLUSTER=c\nECS_ENABLE_GPU_SUPPORT=true\n", false);
        assert!(env.is_empty(), "{env:?}");
        assert_eq!(
            warnings,
            ["/etc/ecs/ecs.config:2: ECS_ENABLE_GPU_SUPPORT: No GPU devices found (no /dev/nvidia*), ignoring the GPU support config: ECS_ENABLE_GPU_SUPPORT=true is left out of the agent's environment"]
        );
        // Any value the agent reads as true.
        assert!(gpu_env("ECS_ENABLE_GPU_SUPPORT=1\n", false).0.is_empty());
        let (env, warnings) = gpu_env("ECS_ENABLE_GPU_SUPPORT=true\n", true);
        assert_eq!(env, ["ECS_ENABLE_GPU_SUPPORT=true"]);
        assert!(warnings.is_empty(), "{warnings:?}");
        let (env, warnings) = gpu_env("ECS_ENABLE_GPU_SUPPORT=false\n", false);
        assert_eq!(env, ["ECS_ENABLE_GPU_SUPPORT=false"]);
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn gpu_bind_only_with_support_on_and_devices() {
        let gpu_binds = |file: &str, nvidia_devices: bool| {
            let (spec, _) = build(
                &Paths::under("/tmp/r"),
                &cfg(file, &[]),
                &HostFacts {
                    nvidia_devices,
                    ..facts()
                },
            );
            binds(&spec)
                .into_iter()
                .filter(|b| b.contains("gpu"))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            gpu_binds("ECS_ENABLE_GPU_SUPPORT=true\n", true),
            ["/tmp/r/var/lib/ecs/gpu:/var/lib/ecs/gpu"]
        );
        assert!(gpu_binds("ECS_ENABLE_GPU_SUPPORT=true\n", false).is_empty());
        assert!(gpu_binds("ECS_ENABLE_GPU_SUPPORT=false\n", true).is_empty());
    }

    #[test]
    fn docker_host_bind_and_gmsa() {
        let sock = PathBuf::from("/run/cf.sock");
        let (spec, _) = build(
            &Paths::under("/"),
            &cfg(
                "DOCKER_HOST=unix:///var/run/agent-docker.sock\nECS_GMSA_SUPPORTED=true\n",
                &[
                    ("DOCKER_HOST", "unix:///run/custom/docker.sock"),
                    ("ECS_GMSA_SUPPORTED", "true"),
                    ("CREDENTIALS_FETCHER_HOST", "unix:///run/cf.sock"),
                ],
            ),
            &HostFacts {
                realm_joined: true,
                existing: vec![sock.clone()],
                ..facts()
            },
        );
        let b = binds(&spec);
        assert_eq!(b[0], "/run/custom/docker.sock:/var/run/agent-docker.sock");
        assert!(b.contains(&"/run/cf.sock:/run/cf.sock".to_string()));
        assert_eq!(
            spec.env_value("ECS_DOMAIN_JOINED_LINUX_INSTANCE"),
            Some("true")
        );
        assert_eq!(
            spec.env_value("CREDENTIALS_FETCHER_HOST_DIR"),
            Some("/run/cf.sock")
        );
    }

    /// As with the Go tool, the socket bind follows the env files (the agent's environment),
    /// the domain-join mark the process environment.
    #[test]
    fn gmsa_bind_follows_the_env_files() {
        let sock = PathBuf::from(CREDENTIALS_FETCHER_SOCKET);
        let run = |file: &str, process: &[(&str, &str)]| {
            let (spec, _) = build(
                &Paths::under("/"),
                &cfg(file, process),
                &HostFacts {
                    realm_joined: true,
                    existing: vec![sock.clone()],
                    ..facts()
                },
            );
            let bound = binds(&spec)
                .iter()
                .any(|b| b.starts_with(CREDENTIALS_FETCHER_SOCKET));
            let joined = spec.env_value("ECS_DOMAIN_JOINED_LINUX_INSTANCE") == Some("true");
            (bound, joined)
        };
        assert_eq!(run("ECS_GMSA_SUPPORTED=true\n", &[]), (true, false));
        assert_eq!(
            run("", &[("ECS_GMSA_SUPPORTED", "true")]),
            (false, true),
            "process environment only: marked, not bound"
        );
        assert_eq!(
            run(
                "ECS_GMSA_SUPPORTED=true\n",
                &[("ECS_GMSA_SUPPORTED", "true")]
            ),
            (true, true)
        );
        assert_eq!(run("ECS_GMSA_SUPPORTED=false\n", &[]), (false, false));
        // The socket missing: no bind.
        let (spec, _) = build(
            &Paths::under("/"),
            &cfg("ECS_GMSA_SUPPORTED=true\n", &[]),
            &facts(),
        );
        assert!(!binds(&spec).iter().any(|b| b.contains("credentials")));
    }
}
