//! Choosing the container runtime at start-up (`ECS_INIT_RUNTIME=auto|docker|containerd`).
//!
//! The decision ([`decide`]) is a pure function of a few probed facts so that it is
//! unit-tested; the choice and its reason are logged, shown by `plan`, and recorded under
//! `/var/lib/ecs` so that `stop` talks to the runtime that `start` used.
use ecs_backends::containerd::{ContainerdOptions, ContainerdRuntime};
use ecs_backends::docker::DockerRuntime;
use ecs_backends::Runtime;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Config, ConfigError};
use crate::paths::{write_atomic, Paths};

pub const RUNTIME_KEY: &str = "ECS_INIT_RUNTIME";
pub const RUNTIME_CHOICES: &[&str] = &["auto", "docker", "containerd"];
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";
pub const DEFAULT_CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";

/// What [`decide`] looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeProbe {
    /// The Docker socket answered a ping.
    pub docker_answers: bool,
    /// The Docker socket file exists.
    pub docker_socket_exists: bool,
    /// `dockerd` is installed (so Docker is this host's runtime even while it restarts).
    pub dockerd_installed: bool,
    /// The containerd socket file exists.
    pub containerd_socket_exists: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RuntimeChoice {
    pub name: &'static str,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "no container runtime found: the Docker socket {docker} and the containerd socket {containerd} \
         are both missing and dockerd is not installed (set ECS_INIT_RUNTIME to choose one)"
    )]
    NoRuntime { docker: String, containerd: String },
    #[error("{0}")]
    Connect(#[from] ecs_backends::RuntimeError),
}

/// Pick the runtime. Explicit settings win; `auto` prefers Docker when it answers, or when it is
/// installed (a dockerd that is restarting must not make us move the agent to containerd), and
/// uses containerd otherwise.
pub fn decide(
    requested: &'static str,
    probe: &RuntimeProbe,
    sockets: (&str, &str),
) -> Result<RuntimeChoice, SelectError> {
    let choice = |name, reason: &str| {
        Ok(RuntimeChoice {
            name,
            reason: reason.to_string(),
        })
    };
    match requested {
        "docker" => choice("docker", "ECS_INIT_RUNTIME=docker"),
        "containerd" => choice("containerd", "ECS_INIT_RUNTIME=containerd"),
        _ if probe.docker_answers => choice("docker", "auto: the Docker socket answers"),
        _ if probe.docker_socket_exists && probe.dockerd_installed => choice(
            "docker",
            "auto: dockerd is installed and its socket exists (not answering yet)",
        ),
        _ if probe.containerd_socket_exists => choice(
            "containerd",
            "auto: Docker does not answer and the containerd socket exists",
        ),
        _ if probe.dockerd_installed => {
            choice("docker", "auto: dockerd is installed (not running yet)")
        }
        _ => Err(SelectError::NoRuntime {
            docker: sockets.0.to_string(),
            containerd: sockets.1.to_string(),
        }),
    }
}

/// Connection settings for both runtimes, from the process environment.
#[derive(Debug, Clone, Serialize)]
pub struct Endpoints {
    /// `DOCKER_HOST` as given (e.g. `unix:///var/run/docker.sock`).
    pub docker_host: Option<String>,
    /// `CONTAINERD_ADDRESS`.
    pub containerd_address: Option<String>,
    /// `ECS_INIT_CONTAINERD_NAMESPACE`.
    pub containerd_namespace: Option<String>,
}

impl Endpoints {
    pub fn from_config(cfg: &Config) -> Endpoints {
        let get = |k: &str| cfg.process_env.get(k).filter(|v| !v.is_empty()).cloned();
        Endpoints {
            docker_host: get("DOCKER_HOST"),
            containerd_address: get("CONTAINERD_ADDRESS"),
            containerd_namespace: get("ECS_INIT_CONTAINERD_NAMESPACE"),
        }
    }

    pub fn docker_socket(&self) -> String {
        self.docker_host
            .as_deref()
            .and_then(|h| h.strip_prefix("unix://"))
            .unwrap_or(DEFAULT_DOCKER_SOCKET)
            .to_string()
    }

    pub fn containerd_socket(&self) -> String {
        let a = self
            .containerd_address
            .as_deref()
            .unwrap_or(DEFAULT_CONTAINERD_SOCKET);
        a.strip_prefix("unix://").unwrap_or(a).to_string()
    }
}

/// A runtime client for `name`. Connecting never needs the daemon to be up.
///
/// The containerd backend keeps the agent's stdout/stderr itself; its log directory follows the
/// ecs log directory (`/var/log/ecs/containerd`, re-rooted with `ECS_INIT_HOST_ROOT`) unless
/// `ECS_INIT_CONTAINERD_LOG_DIR` says otherwise.
pub fn connect(name: &str, ep: &Endpoints, paths: &Paths) -> Result<Box<dyn Runtime>, SelectError> {
    Ok(match name {
        "containerd" => {
            let mut opts = ContainerdOptions::from_env();
            if std::env::var_os("ECS_INIT_CONTAINERD_LOG_DIR").is_none_or(|v| v.is_empty()) {
                opts.log_dir = paths.var_log_ecs.join("containerd");
            }
            Box::new(ContainerdRuntime::with_options(opts)?)
        }
        _ => Box::new(DockerRuntime::connect(ep.docker_host.as_deref())?),
    })
}

fn in_path(binary: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(binary).is_file()))
        .unwrap_or(false)
        || ["/usr/bin", "/usr/sbin", "/usr/local/bin"]
            .iter()
            .any(|d| Path::new(d).join(binary).is_file())
}

/// Probe the host (a ping of at most `ping_timeout` to Docker). When Docker answered, its
/// connected client comes back too, so choosing Docker does not connect a second time.
pub async fn probe(
    ep: &Endpoints,
    ping_timeout: Duration,
) -> (RuntimeProbe, Option<DockerRuntime>) {
    let docker_socket = PathBuf::from(ep.docker_socket());
    let mut answered = None;
    if let Ok(d) = DockerRuntime::connect(ep.docker_host.as_deref()) {
        if matches!(
            tokio::time::timeout(ping_timeout, d.ping()).await,
            Ok(Ok(_))
        ) {
            answered = Some(d);
        }
    }
    let probe = RuntimeProbe {
        docker_answers: answered.is_some(),
        docker_socket_exists: docker_socket.exists(),
        dockerd_installed: in_path("dockerd"),
        containerd_socket_exists: Path::new(&ep.containerd_socket()).exists(),
    };
    (probe, answered)
}

/// Choose from config and the host (the choice is not yet recorded), with a client for it.
pub async fn choose(
    cfg: &Config,
    ep: &Endpoints,
    paths: &Paths,
) -> Result<(RuntimeChoice, Box<dyn Runtime>), SelectError> {
    let requested = cfg.choice(RUNTIME_KEY, RUNTIME_CHOICES, "auto")?;
    let (probe, probed_docker) = if requested == "auto" {
        probe(ep, Duration::from_secs(2)).await
    } else {
        (RuntimeProbe::default(), None)
    };
    let choice = decide(
        requested,
        &probe,
        (&ep.docker_socket(), &ep.containerd_socket()),
    )?;
    let runtime: Box<dyn Runtime> = match (choice.name, probed_docker) {
        ("docker", Some(docker)) => Box::new(docker),
        (name, _) => connect(name, ep, paths)?,
    };
    Ok((choice, runtime))
}

/// Record the runtime `start` uses, for `stop` and `status`.
pub fn record(paths: &Paths, choice: &RuntimeChoice) -> std::io::Result<()> {
    write_atomic(
        &paths.runtime_record(),
        format!("{}\n", choice.name).as_bytes(),
    )
}

/// The recorded runtime, if any.
pub fn recorded(paths: &Paths) -> Option<RuntimeChoice> {
    let text = std::fs::read_to_string(paths.runtime_record()).ok()?;
    let name = match text.trim() {
        "docker" => "docker",
        "containerd" => "containerd",
        _ => return None,
    };
    Some(RuntimeChoice {
        name,
        reason: format!("recorded in {}", paths.runtime_record().display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: (&str, &str) = ("/var/run/docker.sock", "/run/containerd/containerd.sock");

    #[test]
    fn auto_prefers_docker_then_containerd() {
        let p = |docker_answers,
                 docker_socket_exists,
                 dockerd_installed,
                 containerd_socket_exists| RuntimeProbe {
            docker_answers,
            docker_socket_exists,
            dockerd_installed,
            containerd_socket_exists,
        };
        assert_eq!(
            decide("auto", &p(true, true, true, true), S).unwrap().name,
            "docker"
        );
        assert_eq!(
            decide("auto", &p(false, true, true, true), S).unwrap().name,
            "docker"
        );
        assert_eq!(
            decide("auto", &p(false, false, false, true), S)
                .unwrap()
                .name,
            "containerd"
        );
        // A stale Docker socket without dockerd installed is not a Docker host.
        assert_eq!(
            decide("auto", &p(false, true, false, true), S)
                .unwrap()
                .name,
            "containerd"
        );
        assert_eq!(
            decide("auto", &p(false, false, true, false), S)
                .unwrap()
                .name,
            "docker"
        );
        let err = decide("auto", &p(false, false, false, false), S)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/var/run/docker.sock") && err.contains("containerd.sock"),
            "{err}"
        );
        assert_eq!(
            decide("containerd", &p(true, true, true, true), S)
                .unwrap()
                .reason,
            "ECS_INIT_RUNTIME=containerd"
        );
    }

    #[test]
    fn record_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        assert!(recorded(&paths).is_none());
        record(
            &paths,
            &RuntimeChoice {
                name: "containerd",
                reason: "x".into(),
            },
        )
        .unwrap();
        assert_eq!(recorded(&paths).unwrap().name, "containerd");
    }

    #[test]
    fn endpoints() {
        let cfg = Config::from_parts(
            &[],
            [("DOCKER_HOST".to_string(), "unix:///tmp/d.sock".to_string())].into(),
        );
        let ep = Endpoints::from_config(&cfg);
        assert_eq!(ep.docker_socket(), "/tmp/d.sock");
        assert_eq!(ep.containerd_socket(), DEFAULT_CONTAINERD_SOCKET);
    }
}
