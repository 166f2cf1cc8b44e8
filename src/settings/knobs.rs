//! The knob table: every setting of the launcher (name, type, default, where it may be set, one
//! doc line), from which the man page's ENVIRONMENT section and the README's table are made.
use super::*;

/// What kind of value a knob takes (for the docs, and for parsing).
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Go's `strconv.ParseBool`.
    Bool,
    /// One of these words (case-insensitive); a function, so that a backend's choice lists
    /// the names in its seam's registry.
    Choice(fn() -> Vec<&'static str>),
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
            Kind::Choice(words) => words().join(" \\| "),
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
    /// Only the env files (as in the Go tool, which reads these from the files alone).
    Files,
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
        kind: Kind::Choice(RuntimeRequest::words),
        default: "auto",
        scope: Scope::Anywhere,
        doc: "container runtime of the agent; `auto`: Docker when its socket answers or dockerd is installed, else containerd",
    },
    Knob {
        name: "ECS_INIT_FIREWALL",
        kind: Kind::Choice(FirewallRequest::words),
        default: "auto",
        scope: Scope::Anywhere,
        doc: "firewall backend; `none`: the operator manages the firewall; `auto`: keep the backend that already holds our rules, else a working iptables, else nft",
    },
    Knob {
        name: "DOCKER_HOST",
        kind: Kind::Text,
        default: ecs_runtime::docker::DEFAULT_ENDPOINT,
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
        doc: "block 51678 only on this interface; a trailing `+` (or `*`) matches every interface starting with the name, on iptables and nftables alike (removed from the Go tool in 1.97; kept here, see the README)",
    },
    Knob {
        name: "ECS_LOGLEVEL",
        kind: Kind::Choice(|| vec!["debug", "info", "warn", "error", "crit", "none"]),
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
        name: "ECS_AGENT_LABELS",
        kind: Kind::Json,
        default: "(none)",
        scope: Scope::Files,
        doc: "labels of the agent container; invalid JSON is a warning and no labels",
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
        doc: "`max-size` of the json-file log when `ECS_LOG_OPTS` is unset, passed as written, as the Go tool does (Docker reads a bare number as bytes: write `32m`)",
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
        doc: "gMSA: mark a realm-joined host (`ECS_DOMAIN_JOINED_LINUX_INSTANCE`); the credentials-fetcher socket is bound when the env files say `ECS_GMSA_SUPPORTED=true`, as with the Go tool",
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
        kind: Kind::Choice(|| vec!["IPv4", "IPv6"]),
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
        name: "AWS_ENDPOINT_URL",
        kind: Kind::Text,
        default: "(the partition's S3)",
        scope: Scope::Anywhere,
        doc: "as `AWS_ENDPOINT_URL_S3` (which wins), the AWS SDKs' endpoint of every service",
    },
    Knob {
        name: "AWS_USE_FIPS_ENDPOINT",
        kind: Kind::Bool,
        default: "false",
        scope: Scope::Anywhere,
        doc: "`true` (as the AWS SDKs read it): S3's FIPS endpoints (`<bucket>.s3-fips.<region>.<domain>`); ignored with an endpoint URL",
    },
    Knob {
        name: "AWS_USE_DUALSTACK_ENDPOINT",
        kind: Kind::Bool,
        default: "false",
        scope: Scope::Anywhere,
        doc: "`true` (as the AWS SDKs read it): S3's dual-stack (IPv6) endpoints (`<bucket>.s3.dualstack.<region>.<domain>`); ignored with an endpoint URL",
    },
    Knob {
        name: "AWS_CA_BUNDLE",
        kind: Kind::Path,
        default: "(none)",
        scope: Scope::Anywhere,
        doc: "PEM bundle that replaces the download's trust store, as in the AWS SDKs (wins over `SSL_CERT_FILE` and `SSL_CERT_DIR`)",
    },
    Knob {
        name: "AWS_EC2_METADATA_V1_DISABLED",
        kind: Kind::Bool,
        default: "false",
        scope: Scope::Anywhere,
        doc: "`true` (as the AWS SDKs read it): no IMDSv1 fallback when the IMDSv2 token is refused (the region is then the default, with a warning)",
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
        name: "ECS_INIT_DOWNLOAD_DEADLINE_SECONDS",
        kind: Kind::Seconds,
        default: "3600",
        scope: Scope::Anywhere,
        doc: "the whole download (instance metadata, every bucket and retry) ends with an error after this long; 3600 fits a 100 MB agent at 30 kB/s",
    },
    Knob {
        name: "ECS_INIT_DOWNLOAD_MIN_RATE_BYTES",
        kind: Kind::Count,
        default: "1024",
        scope: Scope::Anywhere,
        doc: "a connection that receives less than this many bytes per second, averaged over `ECS_INIT_DOWNLOAD_MIN_RATE_SECONDS`, is dropped and retried (0: no minimum)",
    },
    Knob {
        name: "ECS_INIT_DOWNLOAD_MIN_RATE_SECONDS",
        kind: Kind::Seconds,
        default: "60",
        scope: Scope::Anywhere,
        doc: "the window of `ECS_INIT_DOWNLOAD_MIN_RATE_BYTES`",
    },
    Knob {
        name: "ECS_INIT_DOWNLOAD_MAX_BYTES",
        kind: Kind::Count,
        default: "1073741824",
        scope: Scope::Anywhere,
        doc: "largest agent object accepted: a bigger `Content-Length` is refused before writing, a body without one is cut off at this size",
    },
    Knob {
        name: "ECS_INIT_DOWNLOAD_PART_BYTES",
        kind: Kind::Count,
        default: "8388608",
        scope: Scope::Anywhere,
        doc: "largest byte range of the parallel download (rounds of one part per connection: even parts of at most this size, then rounds halving down to 1 MiB parts last; an object of at most 1 MiB is one stream)",
    },
    Knob {
        name: "ECS_INIT_DOWNLOAD_PARALLELISM",
        kind: Kind::Count,
        default: "8",
        scope: Scope::Anywhere,
        doc: "connections of the parallel download (1: one stream)",
    },
    Knob {
        name: "ECS_INIT_RESTART_DELAY_MS",
        kind: Kind::Count,
        default: "(500 ms → 15 s backoff)",
        scope: Scope::Process,
        doc: "testing only (the soak in `tests/soak.sh`): a fixed delay in milliseconds between agent restarts instead of the backoff",
    },
    // Automatic rollback of a failed agent update (src/rollback.rs), grouped.
    Knob {
        name: "ECS_INIT_AGENT_ROLLBACK",
        kind: Kind::Bool,
        default: "true",
        scope: Scope::Anywhere,
        doc: "roll an agent update that does not come up healthy back to the last agent that did (README, Updates); `false`: restart it forever, as the Go tool",
    },
    Knob {
        name: "ECS_INIT_ROLLBACK_FAILED_STARTS",
        kind: Kind::Count,
        default: "3",
        scope: Scope::Anywhere,
        doc: "consecutive failed starts (an exit other than 0, 5 or 42) of an updated agent that roll it back",
    },
    Knob {
        name: "ECS_INIT_ROLLBACK_TIMEOUT_SECONDS",
        kind: Kind::Seconds,
        default: "600",
        scope: Scope::Anywhere,
        doc: "an updated agent not healthy this long after the update is rolled back",
    },
    Knob {
        name: "ECS_INIT_AGENT_HEALTHY_SECONDS",
        kind: Kind::Seconds,
        default: "60",
        scope: Scope::Anywhere,
        doc: "an agent run this long resets the restart backoff; run this long and answering introspection, it is healthy (known good, off probation)",
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
    Knob {
        name: "ECS_INIT_GPU_WAIT_SECONDS",
        kind: Kind::Seconds,
        default: "30",
        scope: Scope::Anywhere,
        doc: "GPU hosts: how long pre-start and every agent (re)start wait for a late `/dev/nvidia*` (checked every 3 s: the Go tool's 10 tries); none by then: no GPU info, and `ECS_ENABLE_GPU_SUPPORT` is left out of the agent's environment (warning); `0`: look once",
    },
];

/// Where Docker looks for the ECS volume plugin (`amazon-ecs-volume-plugin`).
pub const VOLUME_PLUGIN_SOCKET: &str = "/var/run/docker/plugins/amazon-ecs-volume-plugin.sock";

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

/// The README's knob table, generated from [`KNOBS`] (the README must hold exactly this; see
/// the test below and `cargo run -p ecs-init-gen-docs -- --readme-table`).
pub fn readme_table() -> String {
    let mut out =
        String::from("| variable | type | default | set in | effect |\n|---|---|---|---|---|\n");
    for k in KNOBS {
        let scope = match k.scope {
            Scope::Process => "environment",
            Scope::Anywhere => "environment, env files",
            Scope::Files => "env files",
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
