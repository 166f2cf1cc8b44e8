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
use ecs_backends::containerd::{self, ContainerdOptions};
use ecs_backends::docker;
use ecs_backends::select::Request as RuntimeRequest;
use ecs_backends::RuntimeOptions;
use ecs_firewall::Choice as FirewallChoice;
use serde::Serialize;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{parse_bool, parse_string_map, Config, Origin, Warning};
use crate::download::{self, tls::TrustSettings};
use crate::paths::Paths;

/// What kind of value a knob takes (for the docs, and for parsing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Go's `strconv.ParseBool`.
    Bool,
    /// One of these words (case-insensitive).
    Choice(&'static [&'static str]),
    /// A whole number of seconds.
    Seconds,
    /// A whole number.
    Count,
    Path,
    /// A JSON object of strings.
    Json,
    Text,
}

impl Kind {
    /// The type column of the docs.
    pub fn describe(self) -> String {
        match self {
            Kind::Bool => "boolean".into(),
            Kind::Choice(words) => words.join(" \\| "),
            Kind::Seconds => "seconds".into(),
            Kind::Count => "number".into(),
            Kind::Path => "path".into(),
            Kind::Json => "JSON object".into(),
            Kind::Text => "text".into(),
        }
    }
}

/// Where a knob may be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Only the process environment (as in the Go tool, or needed before the files are read).
    Process,
    /// The process environment, else the env files.
    Anywhere,
}

/// One row of the knob table.
#[derive(Debug, Clone, Copy)]
pub struct Knob {
    pub name: &'static str,
    pub kind: Kind,
    /// The default, as the docs show it (`(unset)` style text for knobs without one).
    pub default: &'static str,
    pub scope: Scope,
    pub doc: &'static str,
}

const BOOL_FALSE: &str = "false";

/// Every knob of the launcher, in the order the docs list them.
pub const KNOBS: &[Knob] = &[
    Knob {
        name: "ECS_INIT_RUNTIME",
        kind: Kind::Choice(&["auto", "docker", "containerd"]),
        default: "auto",
        scope: Scope::Anywhere,
        doc: "container runtime of the agent; `auto`: Docker when its socket answers or dockerd is installed, else containerd",
    },
    Knob {
        name: "ECS_INIT_FIREWALL",
        kind: Kind::Choice(&["auto", "iptables", "nftables", "none"]),
        default: "auto",
        scope: Scope::Anywhere,
        doc: "firewall backend; `none`: the operator manages the firewall; `auto`: keep the backend that already holds our rules, else a working iptables, else nft",
    },
    Knob {
        name: "DOCKER_HOST",
        kind: Kind::Text,
        default: ecs_backends::docker::DEFAULT_ENDPOINT,
        scope: Scope::Process,
        doc: "Docker endpoint (unix sockets only); bind-mounted into the agent",
    },
    Knob {
        name: "CONTAINERD_ADDRESS",
        kind: Kind::Path,
        default: containerd::DEFAULT_ADDRESS,
        scope: Scope::Anywhere,
        doc: "containerd endpoint",
    },
    Knob {
        name: "ECS_INIT_CONTAINERD_NAMESPACE",
        kind: Kind::Text,
        default: containerd::DEFAULT_NAMESPACE,
        scope: Scope::Anywhere,
        doc: "containerd namespace of the agent's image and container",
    },
    Knob {
        name: "ECS_INIT_AGENT_INIT",
        kind: Kind::Path,
        default: containerd::DEFAULT_AGENT_INIT,
        scope: Scope::Anywhere,
        doc: "static init (PID 1) and log shim of the agent container on containerd",
    },
    Knob {
        name: "ECS_INIT_CONTAINERD_LOG_DIR",
        kind: Kind::Path,
        default: containerd::DEFAULT_LOG_DIR,
        scope: Scope::Anywhere,
        doc: "agent stdout/stderr on containerd (json lines, rotated by `max-size`/`max-file`); follows `ECS_INIT_HOST_ROOT` when unset",
    },
    Knob {
        name: "ECS_INIT_RUNTIME_WAIT_SECONDS",
        kind: Kind::Seconds,
        default: "120",
        scope: Scope::Anywhere,
        doc: "how long to wait for the runtime to answer",
    },
    Knob {
        name: "ECS_INIT_HOST_ROOT",
        kind: Kind::Path,
        default: "/",
        scope: Scope::Process,
        doc: "re-roots `/etc/ecs`, `/var/lib/ecs`, `/var/cache/ecs`, `/var/log/ecs` (tests, demos)",
    },
    Knob {
        name: "ECS_SKIP_LOCALHOST_TRAFFIC_FILTER",
        kind: Kind::Bool,
        default: BOOL_FALSE,
        scope: Scope::Anywhere,
        doc: "do not add the rule dropping non-local packets to 127.0.0.0/8",
    },
    Knob {
        name: "ECS_ALLOW_OFFHOST_INTROSPECTION_ACCESS",
        kind: Kind::Bool,
        default: BOOL_FALSE,
        scope: Scope::Anywhere,
        doc: "do not block port 51678 from off-host",
    },
    Knob {
        name: "ECS_OFFHOST_INTROSPECTION_INTERFACE_NAME",
        kind: Kind::Text,
        default: "(all non-loopback)",
        scope: Scope::Anywhere,
        doc: "block 51678 only on this interface; a trailing `+` (or `*`) matches every interface starting with the name, on iptables and nftables alike",
    },
    Knob {
        name: "ECS_LOGLEVEL",
        kind: Kind::Choice(&["debug", "info", "warn", "error", "crit", "none"]),
        default: "info",
        scope: Scope::Anywhere,
        doc: "launcher log level",
    },
    Knob {
        name: "ECS_LOG_DRIVER",
        kind: Kind::Text,
        default: "json-file",
        scope: Scope::Anywhere,
        doc: "agent container log driver: awslogs, fluentd, gelf, json-file, journald, logentries, syslog or splunk",
    },
    Knob {
        name: "ECS_LOG_OPTS",
        kind: Kind::Json,
        default: "(driver defaults)",
        scope: Scope::Anywhere,
        doc: "agent container log options, used as given; secret-looking keys are redacted in output",
    },
    Knob {
        name: "ECS_INIT_DOCKER_LOG_FILE_SIZE",
        kind: Kind::Text,
        default: "16m",
        scope: Scope::Anywhere,
        doc: "`max-size` of the json-file log (a bare number means megabytes)",
    },
    Knob {
        name: "ECS_INIT_DOCKER_LOG_FILE_NUM",
        kind: Kind::Count,
        default: "4",
        scope: Scope::Anywhere,
        doc: "`max-file` of the json-file log",
    },
    Knob {
        name: "ECS_AGENT_RUN_PRIVILEGED",
        kind: Kind::Bool,
        default: BOOL_FALSE,
        scope: Scope::Anywhere,
        doc: "privileged agent container",
    },
    Knob {
        name: "ECS_AGENT_PID_NAMESPACE_HOST",
        kind: Kind::Bool,
        default: BOOL_FALSE,
        scope: Scope::Anywhere,
        doc: "the agent shares the host's PID namespace",
    },
    Knob {
        name: "ECS_AGENT_APPARMOR_PROFILE",
        kind: Kind::Text,
        default: crate::agent::DEFAULT_APPARMOR_PROFILE,
        scope: Scope::Anywhere,
        doc: "AppArmor profile of the agent (when the host enforces AppArmor); the default one is written and loaded by pre-start",
    },
    Knob {
        name: "ECS_EXTERNAL",
        kind: Kind::Bool,
        default: BOOL_FALSE,
        scope: Scope::Anywhere,
        doc: "ECS Anywhere host: no added capabilities, rotating credentials bound in, task ENI off",
    },
    Knob {
        name: "ECS_GMSA_SUPPORTED",
        kind: Kind::Bool,
        default: BOOL_FALSE,
        scope: Scope::Process,
        doc: "gMSA: bind the credentials-fetcher socket, mark a realm-joined host",
    },
    Knob {
        name: "CREDENTIALS_FETCHER_HOST",
        kind: Kind::Path,
        default: crate::agent::CREDENTIALS_FETCHER_SOCKET,
        scope: Scope::Process,
        doc: "credentials-fetcher socket (`unix://` prefix allowed)",
    },
    Knob {
        name: "ECS_ENABLE_GPU_SUPPORT",
        kind: Kind::Bool,
        default: BOOL_FALSE,
        scope: Scope::Anywhere,
        doc: "GPU host: pre-start writes `/var/lib/ecs/gpu/nvidia-gpu-info.json` from NVML and the agent gets `/var/lib/ecs/gpu` when `/dev/nvidia*` exists",
    },
    Knob {
        name: "AWS_REGION",
        kind: Kind::Text,
        default: "(instance metadata)",
        scope: Scope::Anywhere,
        doc: "region of the agent download (wins over `AWS_DEFAULT_REGION`)",
    },
    Knob {
        name: "AWS_DEFAULT_REGION",
        kind: Kind::Text,
        default: "(instance metadata)",
        scope: Scope::Anywhere,
        doc: "region of the agent download when `AWS_REGION` is unset",
    },
    Knob {
        name: "AWS_EC2_METADATA_SERVICE_ENDPOINT",
        kind: Kind::Text,
        default: "http://169.254.169.254",
        scope: Scope::Anywhere,
        doc: "instance metadata base URL for the download's region",
    },
    Knob {
        name: "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",
        kind: Kind::Choice(&["IPv4", "IPv6"]),
        default: "IPv4",
        scope: Scope::Anywhere,
        doc: "`IPv6`: instance metadata at `http://[fd00:ec2::254]`",
    },
    Knob {
        name: "AWS_EC2_METADATA_DISABLED",
        kind: Kind::Bool,
        default: "false",
        scope: Scope::Anywhere,
        doc: "`true` (any case; only that word, as the AWS SDKs read it): never ask instance metadata for the region (the default region us-east-1, with a warning)",
    },
    Knob {
        name: "AWS_METADATA_SERVICE_TIMEOUT",
        kind: Kind::Seconds,
        default: "2",
        scope: Scope::Anywhere,
        doc: "seconds per instance-metadata request",
    },
    Knob {
        name: "AWS_METADATA_SERVICE_NUM_ATTEMPTS",
        kind: Kind::Count,
        default: "3",
        scope: Scope::Anywhere,
        doc: "attempts per instance-metadata request",
    },
    Knob {
        name: "AWS_ENDPOINT_URL_S3",
        kind: Kind::Text,
        default: "(the partition's S3)",
        scope: Scope::Anywhere,
        doc: "download from this base URL instead, path-style (`<url>/<bucket>/<object>`): a mirror",
    },
    Knob {
        name: "HTTPS_PROXY",
        kind: Kind::Text,
        default: "(none)",
        scope: Scope::Anywhere,
        doc: "proxy of the HTTPS download (as the Go tool uses it; `https_proxy` too)",
    },
    Knob {
        name: "https_proxy",
        kind: Kind::Text,
        default: "(none)",
        scope: Scope::Anywhere,
        doc: "as `HTTPS_PROXY`, which wins",
    },
    Knob {
        name: "HTTP_PROXY",
        kind: Kind::Text,
        default: "(none)",
        scope: Scope::Anywhere,
        doc: "proxy of plain-HTTP requests (`http_proxy` too)",
    },
    Knob {
        name: "http_proxy",
        kind: Kind::Text,
        default: "(none)",
        scope: Scope::Anywhere,
        doc: "as `HTTP_PROXY`, which wins",
    },
    Knob {
        name: "NO_PROXY",
        kind: Kind::Text,
        default: "(none)",
        scope: Scope::Anywhere,
        doc: "hosts reached without the proxy; must hold 169.254.169.254 and 169.254.170.2 (`no_proxy` too)",
    },
    Knob {
        name: "no_proxy",
        kind: Kind::Text,
        default: "(none)",
        scope: Scope::Anywhere,
        doc: "as `NO_PROXY`, which wins",
    },
    Knob {
        name: "SSL_CERT_FILE",
        kind: Kind::Path,
        default: "(the distribution's CA bundle)",
        scope: Scope::Anywhere,
        doc: "CA certificates trusted for the download",
    },
    Knob {
        name: "SSL_CERT_DIR",
        kind: Kind::Path,
        default: "/etc/ssl/certs:/etc/pki/tls/certs",
        scope: Scope::Anywhere,
        doc: "CA certificate directories trusted for the download (colon-separated)",
    },
    Knob {
        name: "ECS_INIT_DOWNLOAD_CONNECT_TIMEOUT_SECONDS",
        kind: Kind::Seconds,
        default: "10",
        scope: Scope::Anywhere,
        doc: "connect timeout of the download",
    },
    Knob {
        name: "ECS_INIT_DOWNLOAD_READ_TIMEOUT_SECONDS",
        kind: Kind::Seconds,
        default: "30",
        scope: Scope::Anywhere,
        doc: "longest wait for the response head or for more body data",
    },
    Knob {
        name: "ECS_INIT_RESTART_DELAY_MS",
        kind: Kind::Count,
        default: "(500 ms → 15 s backoff)",
        scope: Scope::Process,
        doc: "testing only (the soak in `tests/soak.sh`): a fixed delay in milliseconds between agent restarts instead of the backoff",
    },
    Knob {
        name: "ECS_INIT_NVML_LIBRARY",
        kind: Kind::Path,
        default: crate::gpu::DEFAULT_LIBRARY,
        scope: Scope::Anywhere,
        doc: "the NVML library pre-start loads on GPU hosts (a name searched by the dynamic loader, or a path)",
    },
    Knob {
        name: "ECS_VOLUME_PLUGIN_SOCKET",
        kind: Kind::Path,
        default: VOLUME_PLUGIN_SOCKET,
        scope: Scope::Process,
        doc: "socket of the ECS volume plugin: where it listens when systemd does not hand it one, and where `plan`/`status` ask it (Docker finds plugins only in `/run/docker/plugins`)",
    },
    Knob {
        name: "ECS_VOLUME_PLUGIN_MOUNT_TIMEOUT_SECONDS",
        kind: Kind::Seconds,
        default: "120",
        scope: Scope::Anywhere,
        doc: "how long the volume plugin waits for one `mount`/`umount` (the EFS helper) before killing it and failing the request with an error naming the command",
    },
];

/// Where Docker looks for the ECS volume plugin (`amazon-ecs-volume-plugin`).
pub const VOLUME_PLUGIN_SOCKET: &str = "/var/run/docker/plugins/amazon-ecs-volume-plugin.sock";

/// The ECS volume plugin's knobs (the plugin reads them; `plan`/`status` ask its socket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumePluginSettings {
    pub socket: PathBuf,
    pub mount_timeout: Duration,
}

/// The log drivers the agent container may use (`ECS_LOG_DRIVER`), as the Go tool allows.
pub const LOG_DRIVERS: &[&str] = &[
    "awslogs",
    "fluentd",
    "gelf",
    "json-file",
    "journald",
    "logentries",
    "syslog",
    "splunk",
];

/// The row of `name` (a programming error when absent).
pub fn knob(name: &str) -> &'static Knob {
    KNOBS
        .iter()
        .find(|k| k.name == name)
        .unwrap_or_else(|| panic!("{name} is not in KNOBS"))
}

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

/// The knobs that shape the agent container.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AgentSettings {
    pub external: bool,
    pub gmsa: bool,
    /// The credentials-fetcher socket path.
    pub credentials_fetcher: PathBuf,
    pub gpu_support: bool,
    pub privileged: bool,
    pub pid_host: bool,
    pub apparmor_profile: String,
    /// `ECS_LOG_DRIVER` when set to one of [`LOG_DRIVERS`] (another value is a warning).
    pub log_driver: Option<&'static str>,
    /// `ECS_LOG_OPTS` parsed; `None` when unset or invalid (a warning then).
    pub log_opts: Option<BTreeMap<String, String>>,
    pub log_file_size: Option<String>,
    pub log_file_num: Option<String>,
    /// The socket `DOCKER_HOST` names in the process environment (bound into the agent) and in
    /// the env files (where the agent looks for it); `None` when unset or not `unix://`.
    pub docker_host: Option<PathBuf>,
    pub docker_host_in_files: Option<PathBuf>,
}

/// A value and the variable it came from, for knobs with more than one name
/// (`AWS_REGION`/`AWS_DEFAULT_REGION`, `HTTPS_PROXY`/`https_proxy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub key: &'static str,
    pub value: String,
}

/// The knobs of the agent download ([`crate::download::options`] turns them into its options).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DownloadSettings {
    /// `AWS_REGION`, else `AWS_DEFAULT_REGION`.
    pub region: Option<Setting>,
    /// The IMDS base URL: `AWS_EC2_METADATA_SERVICE_ENDPOINT`, else the default of
    /// `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE` (IPv4 or IPv6).
    pub imds_endpoint: String,
    /// `AWS_EC2_METADATA_DISABLED=true` (only `true`, any case, as the AWS SDKs read it).
    pub imds_disabled: bool,
    pub imds_timeout: Duration,
    pub imds_attempts: u32,
    pub s3_endpoint: Option<String>,
    pub https_proxy: Option<Setting>,
    pub http_proxy: Option<Setting>,
    pub no_proxy: Option<String>,
    /// `SSL_CERT_FILE`, `SSL_CERT_DIR` (split at `:`).
    pub trust: TrustSettings,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
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
    pub firewall: FirewallChoice,
    pub runtime_options: RuntimeOptions,
    pub runtime_wait: Duration,
    pub net: NetSettings,
    pub log_level: &'static str,
    pub agent: AgentSettings,
    /// `ECS_INIT_RESTART_DELAY_MS` (testing only), when set.
    pub restart_delay: Option<Duration>,
    /// `ECS_INIT_NVML_LIBRARY`, when set.
    pub nvml_library: Option<PathBuf>,
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

/// Resolves knobs one by one, collecting values, sources and problems.
struct Resolver<'a> {
    env: &'a BTreeMap<String, String>,
    files: &'a Config,
    shown: Vec<Shown>,
    raw: BTreeMap<&'static str, String>,
    warnings: Vec<Warning>,
    errors: Vec<Warning>,
}

impl Resolver<'_> {
    /// The raw value and its source; empty values count as unset.
    fn raw(&self, k: &Knob) -> Option<(String, Source)> {
        if let Some(v) = self.env.get(k.name).filter(|v| !v.is_empty()) {
            return Some((v.clone(), Source::Process));
        }
        if k.scope == Scope::Anywhere {
            if let Some(e) = self
                .files
                .file_entry(k.name)
                .filter(|e| !e.value.is_empty())
            {
                return Some((e.value.clone(), Source::File(e.origin.clone())));
            }
        }
        None
    }

    fn show(&mut self, k: &Knob, value: &str, source: &Source) {
        let value = url_credentials(value)
            .map(|(creds, _)| value.replacen(creds, "<credentials>", 1))
            .unwrap_or_else(|| value.to_string());
        self.shown.push(Shown {
            name: k.name,
            value: ecs_backends::redacted_pair(k.name, &value)
                .split_once('=')
                .map(|(_, v)| v.to_string())
                .unwrap_or_default(),
            source: source.to_string(),
        });
    }

    fn problem(k: &Knob, source: &Source, message: String) -> Warning {
        Warning {
            origin: source.origin(),
            key: Some(k.name.to_string()),
            message,
        }
    }

    fn warn(&mut self, k: &Knob, source: &Source, message: String) {
        self.warnings.push(Self::problem(k, source, message));
    }

    /// The value, or `None` (shown as its default).
    fn get(&mut self, name: &str) -> Option<(String, Source)> {
        let k = knob(name);
        let got = self.raw(k);
        match &got {
            Some((v, s)) => {
                self.show(k, v, s);
                self.raw.insert(k.name, v.clone());
            }
            None => self.show(k, k.default, &Source::Default),
        }
        got
    }

    fn text(&mut self, name: &str) -> Option<String> {
        self.get(name).map(|(v, _)| v)
    }

    fn trimmed(&mut self, name: &str) -> Option<String> {
        self.text(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    fn bool(&mut self, name: &str) -> bool {
        let Some((v, source)) = self.get(name) else {
            return false;
        };
        parse_bool(&v).unwrap_or_else(|| {
            self.warn(
                knob(name),
                &source,
                format!("{v:?} is not a boolean; treating as false"),
            );
            false
        })
    }

    /// A choice the launcher cannot guess: anything else is an error.
    fn choice<T: std::str::FromStr + Default>(&mut self, name: &str) -> T {
        let k = knob(name);
        let Some((v, source)) = self.get(name) else {
            return T::default();
        };
        v.parse().unwrap_or_else(|_| {
            let Kind::Choice(words) = k.kind else {
                unreachable!("{name} is a choice")
            };
            self.errors.push(Self::problem(
                k,
                &source,
                format!("{v:?} is not one of {}", words.join("|")),
            ));
            T::default()
        })
    }

    /// The value parsed by `parse`, else the table's default (parsed the same way) with a
    /// warning that the value is not `what`.
    fn parsed<T>(&mut self, name: &str, what: &str, parse: impl Fn(&str) -> Option<T>) -> T {
        let k = knob(name);
        let default = parse(k.default).expect("the table's default parses");
        let Some((v, source)) = self.get(name) else {
            return default;
        };
        parse(v.trim()).unwrap_or_else(|| {
            self.warn(
                k,
                &source,
                format!("{v:?} is not {what}; using the default {}", k.default),
            );
            default
        })
    }

    /// A whole number of seconds.
    fn seconds(&mut self, name: &str) -> Duration {
        self.parsed(name, "a whole number of seconds", |v| {
            v.parse().ok().map(Duration::from_secs)
        })
    }

    /// A positive number of seconds, fractions allowed, at most a day.
    fn positive_seconds(&mut self, name: &str) -> Duration {
        self.parsed(name, "a number of seconds above 0 and at most a day", |v| {
            v.parse::<f64>()
                .ok()
                .filter(|s| *s > 0.0 && *s <= 86400.0)
                .map(Duration::from_secs_f64)
        })
    }

    /// A whole number in `range`.
    fn count_in(&mut self, name: &str, range: std::ops::RangeInclusive<u32>) -> u32 {
        let what = format!("a number from {} to {}", range.start(), range.end());
        self.parsed(name, &what, |v| {
            v.parse().ok().filter(|n| range.contains(n))
        })
    }

    /// The first of `names` that is set and not blank, and which one it was.
    fn first(&mut self, names: &[&'static str]) -> Option<Setting> {
        names
            .iter()
            .find_map(|&key| self.trimmed(key).map(|value| Setting { key, value }))
    }

    /// The download's knobs.
    fn download(&mut self) -> DownloadSettings {
        let region = self.first(&["AWS_REGION", "AWS_DEFAULT_REGION"]);
        let explicit = self.trimmed("AWS_EC2_METADATA_SERVICE_ENDPOINT");
        let ipv6 = self.imds_ipv6();
        let imds_endpoint = explicit.unwrap_or_else(|| {
            if ipv6 {
                download::DEFAULT_IMDS_ENDPOINT_IPV6
            } else {
                download::DEFAULT_IMDS_ENDPOINT
            }
            .to_string()
        });
        let imds_disabled = self.imds_disabled();
        let imds_timeout = self.positive_seconds("AWS_METADATA_SERVICE_TIMEOUT");
        let imds_attempts = self.count_in("AWS_METADATA_SERVICE_NUM_ATTEMPTS", 1..=10);
        let s3_endpoint = self.trimmed("AWS_ENDPOINT_URL_S3");
        let https_proxy = self.first(&["HTTPS_PROXY", "https_proxy"]);
        let http_proxy = self.first(&["HTTP_PROXY", "http_proxy"]);
        let no_proxy = self.first(&["NO_PROXY", "no_proxy"]).map(|s| s.value);
        let trust = TrustSettings {
            cert_file: self.trimmed("SSL_CERT_FILE").map(PathBuf::from),
            cert_dirs: self.trimmed("SSL_CERT_DIR").map(|dirs| {
                dirs.split(':')
                    .filter(|d| !d.is_empty())
                    .map(PathBuf::from)
                    .collect()
            }),
        };
        DownloadSettings {
            region,
            imds_endpoint,
            imds_disabled,
            imds_timeout,
            imds_attempts,
            s3_endpoint,
            https_proxy,
            http_proxy,
            no_proxy,
            trust,
            connect_timeout: self.positive_seconds("ECS_INIT_DOWNLOAD_CONNECT_TIMEOUT_SECONDS"),
            read_timeout: self.positive_seconds("ECS_INIT_DOWNLOAD_READ_TIMEOUT_SECONDS"),
        }
    }

    /// `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE`: `IPv6` or `IPv4` (any case); anything else is
    /// a warning and means IPv4.
    fn imds_ipv6(&mut self) -> bool {
        let k = knob("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE");
        let Some((v, source)) = self.get(k.name) else {
            return false;
        };
        let Kind::Choice(words) = k.kind else {
            unreachable!("{} is a choice", k.name)
        };
        match words.iter().find(|w| w.eq_ignore_ascii_case(v.trim())) {
            Some(w) => *w == "IPv6",
            None => {
                self.warn(
                    k,
                    &source,
                    format!("{v:?} is not one of {}; using IPv4", words.join("|")),
                );
                false
            }
        }
    }

    /// `AWS_EC2_METADATA_DISABLED`: only `true` (any case) turns instance metadata off, as the
    /// AWS SDKs read it; another word that reads as true elsewhere (`1`, `t`) is named.
    fn imds_disabled(&mut self) -> bool {
        let k = knob("AWS_EC2_METADATA_DISABLED");
        let Some((v, source)) = self.get(k.name) else {
            return false;
        };
        let v = v.trim();
        if v.eq_ignore_ascii_case("true") {
            return true;
        }
        if parse_bool(v) != Some(false) {
            self.warn(
                k,
                &source,
                format!("{v:?}: only `true` turns instance metadata off (as the AWS SDKs read it); ignored"),
            );
        }
        false
    }

    /// A whole number of milliseconds, when set (anything else is a warning and unset).
    fn millis(&mut self, name: &str) -> Option<Duration> {
        let (v, source) = self.get(name)?;
        match v.trim().parse::<u64>() {
            Ok(ms) => Some(Duration::from_millis(ms)),
            Err(_) => {
                self.warn(
                    knob(name),
                    &source,
                    format!("{v:?} is not a whole number of milliseconds; ignored"),
                );
                None
            }
        }
    }

    /// `ECS_LOGLEVEL`: unknown words are a warning and mean `info`.
    fn log_level(&mut self) -> &'static str {
        let k = knob("ECS_LOGLEVEL");
        let Some((v, source)) = self.get(k.name) else {
            return "info";
        };
        let Kind::Choice(words) = k.kind else {
            unreachable!()
        };
        let lower = v.trim().to_ascii_lowercase();
        match words.iter().find(|w| **w == lower) {
            Some(w) => w,
            None => {
                self.warn(
                    k,
                    &source,
                    format!("{v:?} is not one of {}; using info", words.join("|")),
                );
                "info"
            }
        }
    }

    /// `ECS_OFFHOST_INTROSPECTION_INTERFACE_NAME`, checked against the kernel's rules (an
    /// error: a rule on a name that cannot exist would fail half-way through pre-start).
    fn interface(&mut self) -> Option<String> {
        let k = knob("ECS_OFFHOST_INTROSPECTION_INTERFACE_NAME");
        let (v, source) = self.get(k.name)?;
        let v = v.trim();
        match ecs_firewall::interface_pattern(v) {
            Ok(canonical) => Some(canonical),
            Err(why) => {
                self.errors.push(Self::problem(
                    k,
                    &source,
                    format!("{v:?} is not an interface name: {why}"),
                ));
                None
            }
        }
    }

    /// `DOCKER_HOST` and the containerd knobs.
    fn runtime_options(&mut self, paths: &Paths, docker_host: Option<PathBuf>) -> RuntimeOptions {
        let mut containerd = ContainerdOptions::default();
        if let Some(a) = self.trimmed("CONTAINERD_ADDRESS") {
            containerd.address = strip_unix(&a);
        }
        if let Some(ns) = self.trimmed("ECS_INIT_CONTAINERD_NAMESPACE") {
            containerd.namespace = ns;
        }
        if let Some(init) = self.trimmed("ECS_INIT_AGENT_INIT") {
            containerd.agent_init = init.into();
        }
        // The agent's stdout/stderr follow the (re-rooted) ecs log directory unless set.
        containerd.log_dir = self
            .trimmed("ECS_INIT_CONTAINERD_LOG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| paths.var_log_ecs.join("containerd"));
        RuntimeOptions {
            docker_socket: docker_host.unwrap_or_else(|| docker::DEFAULT_SOCKET.into()),
            containerd,
        }
    }

    /// `DOCKER_HOST`'s socket. A value that is not `unix:///path` is an error (the Go tool
    /// silently uses the default socket instead; the README lists the difference): the socket
    /// is bind-mounted into the agent, and automatic selection must not pass over a Docker the
    /// operator named.
    fn docker_host(&mut self) -> Option<PathBuf> {
        let k = knob("DOCKER_HOST");
        let (v, source) = self.get(k.name).filter(|(v, _)| !v.trim().is_empty())?;
        let socket = docker::socket_of(&v);
        if socket.is_none() {
            self.errors.push(Self::problem(
                k,
                &source,
                format!("{v:?} is not a unix socket (DOCKER_HOST=unix:///path/to/docker.sock)"),
            ));
        }
        socket
    }

    /// The knobs of the agent container.
    fn agent(&mut self, files: &Config, docker_host: Option<PathBuf>) -> AgentSettings {
        AgentSettings {
            log_driver: self.log_driver(),
            log_opts: self.log_opts(),
            log_file_size: self.text("ECS_INIT_DOCKER_LOG_FILE_SIZE"),
            log_file_num: self.text("ECS_INIT_DOCKER_LOG_FILE_NUM"),
            privileged: self.bool("ECS_AGENT_RUN_PRIVILEGED"),
            pid_host: self.bool("ECS_AGENT_PID_NAMESPACE_HOST"),
            apparmor_profile: self
                .text("ECS_AGENT_APPARMOR_PROFILE")
                .unwrap_or_else(|| crate::agent::DEFAULT_APPARMOR_PROFILE.into()),
            external: self.bool("ECS_EXTERNAL"),
            gmsa: self.bool("ECS_GMSA_SUPPORTED"),
            credentials_fetcher: self
                .text("CREDENTIALS_FETCHER_HOST")
                .map(|v| strip_unix(&v))
                .unwrap_or_else(|| crate::agent::CREDENTIALS_FETCHER_SOCKET.into()),
            gpu_support: self.bool("ECS_ENABLE_GPU_SUPPORT"),
            docker_host,
            docker_host_in_files: files
                .file_entry("DOCKER_HOST")
                .and_then(|e| docker::socket_of(&e.value)),
        }
    }

    /// `ECS_LOG_DRIVER`: one of [`LOG_DRIVERS`], else a warning (the default driver is used).
    fn log_driver(&mut self) -> Option<&'static str> {
        let k = knob("ECS_LOG_DRIVER");
        let (v, source) = self.get(k.name)?;
        let found = LOG_DRIVERS.iter().find(|d| **d == v.trim()).copied();
        if found.is_none() {
            self.warn(
                k,
                &source,
                format!(
                    "unknown log driver {v:?} (want one of {}); using {}",
                    LOG_DRIVERS.join(", "),
                    k.default
                ),
            );
        }
        found
    }

    fn log_opts(&mut self) -> Option<BTreeMap<String, String>> {
        let k = knob("ECS_LOG_OPTS");
        let (v, source) = self.get(k.name)?;
        match parse_string_map(&v) {
            Ok(map) => Some(map),
            Err(err) => {
                self.warn(
                    k,
                    &source,
                    format!("not a JSON object of strings ({err}); using the default log options"),
                );
                None
            }
        }
    }
}

/// The `user:password` part of a URL (`http://user:password@proxy:3128`) and the password, if
/// the value is such a URL (proxies): never shown, and scrubbed from logs.
fn url_credentials(value: &str) -> Option<(&str, &str)> {
    let (_, rest) = value.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let (creds, _) = authority.rsplit_once('@')?;
    let password = creds.split_once(':').map(|(_, p)| p).unwrap_or(creds);
    Some((creds, password))
}

/// `unix:///x` or `/x` → `/x`.
fn strip_unix(v: &str) -> PathBuf {
    containerd::socket_path(v)
}

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
        let firewall: FirewallChoice = r.choice("ECS_INIT_FIREWALL");
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
        let restart_delay = r.millis("ECS_INIT_RESTART_DELAY_MS");
        let download = r.download();
        let volume_plugin = VolumePluginSettings {
            socket: r
                .trimmed("ECS_VOLUME_PLUGIN_SOCKET")
                .map(|v| strip_unix(&v))
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
            .filter(|(k, v)| ecs_backends::is_secret_key(k) && !v.is_empty())
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

/// The README's knob table, generated from [`KNOBS`] (the README must hold exactly this; see
/// the test below and `cargo run -p ecs-init-gen-docs -- --readme-table`).
pub fn readme_table() -> String {
    let mut out =
        String::from("| variable | type | default | set in | effect |\n|---|---|---|---|---|\n");
    for k in KNOBS {
        let scope = match k.scope {
            Scope::Process => "environment",
            Scope::Anywhere => "environment, env files",
        };
        let default = if k.default.starts_with('(') {
            k.default.to_string()
        } else {
            format!("`{}`", k.default)
        };
        out.push_str(&format!(
            "| `{}` | {} | {default} | {scope} | {} |\n",
            k.name,
            k.kind.describe(),
            k.doc
        ));
    }
    out
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
            RuntimeRequest::Named(ecs_backends::RuntimeKind::Containerd)
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
        assert_eq!(s.firewall, FirewallChoice::Auto);
        assert!(s.check().is_ok());
    }

    /// The README's knob table is exactly the one generated from [`KNOBS`].
    #[test]
    fn readme_knob_table_matches() {
        let readme = include_str!("../README.md");
        let table = readme_table();
        assert!(
            readme.contains(&table),
            "README.md's knob table differs from settings::KNOBS; replace it with:\n{table}"
        );
    }
}
