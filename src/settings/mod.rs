//! The launcher's settings, typed and parsed once.
//!
//! Every knob is a row of [`KNOBS`] (name, type, default, where it may be set, one doc line);
//! the man page's ENVIRONMENT section is generated from that table and a test checks the
//! README's knob table against it, so the three cannot drift. A value comes from the process
//! environment (systemd's `EnvironmentFile=`, upstart's `env`), else — for knobs that may be set
//! there — from `/etc/ecs/ecs.config`, then `/var/lib/ecs/ecs.config`, else its default; the
//! source of each value is kept for `plan`. Nothing else in the launcher reads the process
//! environment: [`Settings::from_process`] takes the one snapshot.
//!
//! Values that cannot be used are warnings naming the file, line and key (booleans that fail
//! to parse are false, like the Go tool's), or errors for values the launcher cannot guess
//! around (`ECS_INIT_RUNTIME`, `ECS_INIT_FIREWALL`, a `DOCKER_HOST` that is not a unix socket,
//! an impossible `ECS_OFFHOST_INTROSPECTION_INTERFACE_NAME`). Errors stop `pre-start`, `start`, `plan` and
//! `reload-cache` before anything changes; `stop` and `post-stop` only warn and work from the
//! records (see the actions).
use ecs_firewall::Request as FirewallRequest;
use ecs_runtime::containerd::{self, ContainerdOptions};
use ecs_runtime::docker;
use ecs_runtime::select::Request as RuntimeRequest;
use ecs_runtime::RuntimeOptions;
use serde::Serialize;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::agent::AgentKnobs;
use crate::config::{parse_bool, parse_string_map, Config, Origin, Warning};
use crate::download::{self, tls::TrustSettings, DownloadLimits, DownloadSettings, Setting};
use crate::paths::Paths;
use crate::rollback::RollbackSettings;

mod knobs;
mod resolve;
pub use knobs::*;
use resolve::{url_credentials, Resolver};

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Process,
    File(Origin),
    Default,
}

impl Source {
    fn origin(&self) -> Option<Origin> {
        match self {
            Source::File(o) => Some(o.clone()),
            _ => None,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Process => f.write_str("process environment"),
            Source::File(o) => o.fmt(f),
            Source::Default => f.write_str("default"),
        }
    }
}

/// One resolved knob, as `plan` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Shown {
    pub name: &'static str,
    pub value: String,
    pub source: String,
}

/// The host network knobs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetSettings {
    pub skip_localhost_filter: bool,
    pub allow_offhost_introspection: bool,
    pub introspection_interface: Option<String>,
}

/// The ECS volume plugin's knobs (the plugin reads them; `plan`/`status` ask its socket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumePluginSettings {
    pub socket: PathBuf,
    pub mount_timeout: Duration,
}

/// Everything the launcher is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The process environment snapshot everything was resolved from (kept so that `start`
    /// can re-read the env files before each restart of the agent).
    env: BTreeMap<String, String>,
    pub paths: Paths,
    /// The env files: the agent's environment and labels.
    pub files: Config,
    pub runtime: RuntimeRequest,
    pub firewall: FirewallRequest,
    pub runtime_options: RuntimeOptions,
    pub runtime_wait: Duration,
    pub net: NetSettings,
    pub log_level: &'static str,
    pub agent: AgentKnobs,
    /// `ECS_INIT_RESTART_DELAY_MS` (testing only), when set.
    pub restart_delay: Option<Duration>,
    /// `ECS_INIT_NVML_LIBRARY`, when set.
    pub nvml_library: Option<PathBuf>,
    /// `ECS_INIT_GPU_WAIT_SECONDS`: the window for a late `/dev/nvidia*`.
    pub gpu_wait: Duration,
    /// The automatic rollback knobs.
    pub rollback: RollbackSettings,
    pub download: DownloadSettings,
    pub volume_plugin: VolumePluginSettings,
    /// `NOTIFY_SOCKET` (systemd's readiness protocol).
    pub notify_socket: Option<String>,
    /// `JOURNAL_STREAM` (`<device>:<inode>` of the journal stream systemd gave stdout/stderr).
    pub journal_stream: Option<String>,
    /// `PATH`, where external programs are looked up.
    pub search_path: Option<OsString>,
    /// Every knob with its value and source.
    pub shown: Vec<Shown>,
    /// The raw value of every knob that is set (process environment or env files).
    raw: BTreeMap<&'static str, String>,
    /// Problems that do not stop the launcher.
    pub warnings: Vec<Warning>,
    /// Problems that stop every action that would change the host with them.
    pub errors: Vec<Warning>,
}

/// A knob that could not be used; `plan`, `pre-start` and `start` fail with it.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(|w| w.to_string()).collect::<Vec<_>>().join("; "))]
pub struct SettingsError(pub Vec<Warning>);
impl Settings {
    /// The settings of this process: one snapshot of its environment, and the env files under
    /// `ECS_INIT_HOST_ROOT`.
    pub fn from_process() -> Settings {
        Settings::load(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        )
    }

    /// Read the env files under the root `env` names and resolve.
    pub fn load(env: BTreeMap<String, String>) -> Settings {
        let paths = match env.get("ECS_INIT_HOST_ROOT").filter(|v| !v.is_empty()) {
            Some(root) => Paths::under(root),
            None => Paths::under("/"),
        };
        let files = crate::config::load(&paths);
        Settings::resolve(env, paths, files)
    }

    /// The env files again (for `start`'s restarts: a config change takes effect at the agent's
    /// next restart, as with the Go tool).
    pub fn reload(&self) -> Settings {
        Settings::load(self.env.clone())
    }

    /// Resolve every knob from `env` and the parsed env files. Pure.
    pub fn resolve(env: BTreeMap<String, String>, paths: Paths, files: Config) -> Settings {
        let mut r = Resolver {
            env: &env,
            files: &files,
            shown: Vec::new(),
            raw: BTreeMap::new(),
            warnings: Vec::new(),
            errors: Vec::new(),
        };
        let runtime: RuntimeRequest = r.choice("ECS_INIT_RUNTIME");
        let firewall: FirewallRequest = r.choice("ECS_INIT_FIREWALL");
        let docker_host = r.docker_host();
        let runtime_options = r.runtime_options(&paths, docker_host.clone());
        let runtime_wait = r.seconds("ECS_INIT_RUNTIME_WAIT_SECONDS");
        r.get("ECS_INIT_HOST_ROOT");
        let net = NetSettings {
            skip_localhost_filter: r.bool("ECS_SKIP_LOCALHOST_TRAFFIC_FILTER"),
            allow_offhost_introspection: r.bool("ECS_ALLOW_OFFHOST_INTROSPECTION_ACCESS"),
            introspection_interface: r.interface(),
        };
        let log_level = r.log_level();
        let agent = r.agent(&files, docker_host);
        let nvml_library = r.trimmed("ECS_INIT_NVML_LIBRARY").map(PathBuf::from);
        let gpu_wait = r.seconds("ECS_INIT_GPU_WAIT_SECONDS");
        let restart_delay = r.millis("ECS_INIT_RESTART_DELAY_MS");
        let rollback = r.rollback();
        let download = r.download();
        let volume_plugin = VolumePluginSettings {
            socket: r
                .trimmed("ECS_VOLUME_PLUGIN_SOCKET")
                .map(|v| resolve::strip_unix(&v))
                .unwrap_or_else(|| VOLUME_PLUGIN_SOCKET.into()),
            mount_timeout: r.positive_seconds("ECS_VOLUME_PLUGIN_MOUNT_TIMEOUT_SECONDS"),
        };
        // The alternatives of a knob that was set under its other name (`https_proxy` when
        // `HTTPS_PROXY` is set): shown, and their values kept for scrubbing.
        for k in KNOBS {
            if !r.shown.iter().any(|v| v.name == k.name) {
                r.get(k.name);
            }
        }
        let Resolver {
            mut shown,
            mut warnings,
            mut errors,
            raw,
            ..
        } = r;
        shown.sort_by_key(|v| KNOBS.iter().position(|k| k.name == v.name));
        let mut all_warnings = files.warnings.clone();
        all_warnings.append(&mut warnings);
        let mut all_errors = files.errors.clone();
        all_errors.append(&mut errors);
        Settings {
            notify_socket: env.get("NOTIFY_SOCKET").cloned(),
            journal_stream: env.get("JOURNAL_STREAM").cloned(),
            search_path: env.get("PATH").map(OsString::from),
            runtime,
            firewall,
            runtime_options,
            runtime_wait,
            net,
            log_level,
            agent,
            nvml_library,
            gpu_wait,
            rollback,
            restart_delay,
            download,
            volume_plugin,
            paths,
            files,
            shown,
            raw,
            warnings: all_warnings,
            errors: all_errors,
            env,
        }
    }

    /// Every secret value the launcher knows of: values of secret-looking keys in the env files
    /// and the process environment, and secret-looking `ECS_LOG_OPTS` options. The logger scrubs
    /// them from every line.
    pub fn secret_values(&self) -> Vec<String> {
        let files = self
            .files
            .file_env
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()));
        let process = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let opts = self
            .agent
            .log_opts
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str()));
        let mut secrets: Vec<String> = files
            .chain(process)
            .chain(opts)
            .filter(|(k, v)| ecs_runtime::is_secret_key(k) && !v.is_empty())
            .map(|(_, v)| v.to_string())
            .collect();
        // Passwords in proxy URLs.
        secrets.extend(
            self.raw
                .values()
                .filter_map(|v| url_credentials(v))
                .map(|(_, password)| password.to_string()),
        );
        secrets
    }

    /// `Ok` when nothing stops the actions that change the host.
    pub fn check(&self) -> Result<(), SettingsError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(SettingsError(self.errors.clone()))
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn settings(file: &str, process: &[(&str, &str)]) -> Settings {
        let files = Config::from_parts(&[(PathBuf::from("/etc/ecs/ecs.config"), file.to_string())]);
        let env = process
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::resolve(env, Paths::under("/"), files)
    }

    #[test]
    fn process_env_wins_over_files_and_sources_are_kept() {
        let s = settings(
            "ECS_INIT_RUNTIME=containerd\nCONTAINERD_ADDRESS=unix:///run/c.sock\nECS_INIT_CONTAINERD_NAMESPACE=fromfile\nECS_INIT_AGENT_INIT=/opt/init\nECS_INIT_CONTAINERD_LOG_DIR=/var/log/x\n",
            &[("ECS_INIT_CONTAINERD_NAMESPACE", "fromenv")],
        );
        assert_eq!(
            s.runtime,
            RuntimeRequest::Named(ecs_runtime::containerd::KIND)
        );
        let c = &s.runtime_options.containerd;
        assert_eq!(c.address, PathBuf::from("/run/c.sock"));
        assert_eq!(c.namespace, "fromenv");
        assert_eq!(c.agent_init, PathBuf::from("/opt/init"));
        assert_eq!(c.log_dir, PathBuf::from("/var/log/x"));
        let shown = |name: &str| s.shown.iter().find(|v| v.name == name).unwrap().clone();
        assert_eq!(shown("ECS_INIT_RUNTIME").source, "/etc/ecs/ecs.config:1");
        assert_eq!(
            shown("ECS_INIT_CONTAINERD_NAMESPACE").source,
            "process environment"
        );
        assert_eq!(shown("ECS_INIT_FIREWALL").source, "default");
        assert_eq!(shown("ECS_INIT_FIREWALL").value, "auto");
        let names: Vec<&str> = s.shown.iter().map(|v| v.name).collect();
        let knobs: Vec<&str> = KNOBS.iter().map(|k| k.name).collect();
        assert_eq!(
            names, knobs,
            "every knob is shown once, in the table's order"
        );
    }

    #[test]
    fn process_only_knobs_ignore_the_files() {
        let s = settings(
            "DOCKER_HOST=unix:///var/run/agent.sock\nECS_GMSA_SUPPORTED=true\n",
            &[],
        );
        assert_eq!(
            s.runtime_options.docker_socket,
            PathBuf::from(docker::DEFAULT_SOCKET)
        );
        assert_eq!(s.agent.docker_host, None);
        assert!(!s.agent.gmsa);
        // Blank is unset (the default socket), not an error.
        let blank = settings("", &[("DOCKER_HOST", "  ")]);
        assert!(blank.errors.is_empty(), "{:?}", blank.errors);
        assert_eq!(
            blank.runtime_options.docker_socket,
            PathBuf::from(docker::DEFAULT_SOCKET)
        );
        assert_eq!(
            s.agent.docker_host_in_files,
            Some(PathBuf::from("/var/run/agent.sock"))
        );
    }

    #[test]
    fn bad_values_are_named_warnings_or_errors() {
        let s = settings(
            "ECS_INIT_RUNTIME=Podman\nECS_SKIP_LOCALHOST_TRAFFIC_FILTER=yes\nECS_INIT_RUNTIME_WAIT_SECONDS=5s\nECS_LOGLEVEL=loud\n",
            &[
                ("ECS_INIT_FIREWALL", "firewalld"),
                ("DOCKER_HOST", "tcp://127.0.0.1:2375"),
            ],
        );
        let errors: Vec<String> = s.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            errors,
            [
                "/etc/ecs/ecs.config:1: ECS_INIT_RUNTIME: \"Podman\" is not one of auto|docker|containerd",
                "ECS_INIT_FIREWALL: \"firewalld\" is not one of auto|iptables|nftables|none",
                "DOCKER_HOST: \"tcp://127.0.0.1:2375\" is not a unix socket (DOCKER_HOST=unix:///path/to/docker.sock)",
            ]
        );
        assert!(s.check().is_err());
        let warnings: Vec<String> = s.warnings.iter().map(|e| e.to_string()).collect();
        assert!(warnings.contains(&"/etc/ecs/ecs.config:2: ECS_SKIP_LOCALHOST_TRAFFIC_FILTER: \"yes\" is not a boolean; treating as false".to_string()), "{warnings:?}");
        assert!(warnings.iter().any(|w| w.starts_with("/etc/ecs/ecs.config:3: ECS_INIT_RUNTIME_WAIT_SECONDS: \"5s\" is not a whole number")), "{warnings:?}");
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("/etc/ecs/ecs.config:4: ECS_LOGLEVEL")),
            "{warnings:?}"
        );
        assert!(!s.net.skip_localhost_filter);
        assert_eq!(s.runtime_wait, Duration::from_secs(120));
        assert_eq!(s.log_level, "info");
    }

    #[test]
    fn proxy_credentials_are_never_shown_and_always_scrubbed() {
        let s = settings(
            "",
            &[("HTTPS_PROXY", "http://user:hunter2@proxy.corp:3128")],
        );
        let shown = s.shown.iter().find(|v| v.name == "HTTPS_PROXY").unwrap();
        assert_eq!(shown.value, "http://<credentials>@proxy.corp:3128");
        assert!(s.secret_values().contains(&"hunter2".to_string()));
        assert_eq!(url_credentials("http://proxy:3128"), None);
        assert_eq!(url_credentials("/a/b@c"), None);
    }

    #[test]
    fn knobs_prefer_process_env_and_parse_bools_like_go() {
        let s = settings(
            "ECS_SKIP_LOCALHOST_TRAFFIC_FILTER=true\nECS_EXTERNAL=yes\n",
            &[("ECS_ALLOW_OFFHOST_INTROSPECTION_ACCESS", "1")],
        );
        assert!(s.net.skip_localhost_filter);
        assert!(s.net.allow_offhost_introspection);
        assert!(!s.agent.external, "'yes' is not a Go boolean");
        assert!(!s.agent.gpu_support);
    }

    #[test]
    fn defaults_follow_the_host_root() {
        let files = Config::default();
        let s = Settings::resolve(BTreeMap::new(), Paths::under("/tmp/r"), files);
        assert_eq!(
            s.runtime_options.containerd.log_dir,
            PathBuf::from("/tmp/r/var/log/ecs/containerd")
        );
        assert_eq!(s.runtime, RuntimeRequest::Auto);
        assert_eq!(s.firewall, FirewallRequest::Auto);
        assert!(s.check().is_ok());
    }

    /// The README's knob table is exactly the one generated from [`KNOBS`].
    #[test]
    fn readme_knob_table_matches() {
        let readme = include_str!("../../README.md");
        let table = readme_table();
        assert!(
            readme.contains(&table),
            "README.md's knob table differs from settings::KNOBS; replace it with:\n{table}"
        );
    }

    #[test]
    fn rollback_knobs_default_parse_and_turn_off() {
        let s = settings("", &[]);
        assert_eq!(
            s.rollback,
            RollbackSettings {
                enabled: true,
                failed_starts: 3,
                timeout: Duration::from_secs(600),
                healthy_after: Duration::from_secs(60),
            }
        );
        let s = settings(
            "ECS_INIT_AGENT_ROLLBACK=false\nECS_INIT_ROLLBACK_FAILED_STARTS=5\nECS_INIT_ROLLBACK_TIMEOUT_SECONDS=2.5\n",
            &[("ECS_INIT_AGENT_HEALTHY_SECONDS", "1")],
        );
        assert!(!s.rollback.enabled);
        assert_eq!(s.rollback.failed_starts, 5);
        assert_eq!(s.rollback.timeout, Duration::from_millis(2500));
        assert_eq!(s.rollback.healthy_after, Duration::from_secs(1));
        // Unusable values: warnings naming file, line and key; the defaults.
        let s = settings(
            "ECS_INIT_ROLLBACK_FAILED_STARTS=0\nECS_INIT_AGENT_ROLLBACK=maybe\n",
            &[],
        );
        assert_eq!(s.rollback.failed_starts, 3);
        assert!(
            !s.rollback.enabled,
            "an unparsable boolean is false, like the others"
        );
        let text: Vec<String> = s.warnings.iter().map(|w| w.to_string()).collect();
        assert!(
            text.iter().any(|w| w.contains("/etc/ecs/ecs.config:1")
                && w.contains("ECS_INIT_ROLLBACK_FAILED_STARTS")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|w| w.contains("ECS_INIT_AGENT_ROLLBACK")),
            "{text:?}"
        );
    }
}
