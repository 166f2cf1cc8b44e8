//! Which container runtime the agent runs on: by name (`ECS_INIT_RUNTIME=docker|containerd`)
//! or, for `auto`, by probing the host.
//!
//! The decision ([`decide`]) is a pure function of a few probed facts so that it is
//! unit-tested; the choice and its reason are logged, shown by `plan`, and recorded by the
//! launcher so that `stop` talks to the runtime that `start` used.
use crate::docker::DockerRuntime;
use crate::{Runtime, RuntimeError, RuntimeKind, RuntimeOptions};
use ecs_host::Exec;
use serde::Serialize;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// What `ECS_INIT_RUNTIME` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Request {
    #[default]
    Auto,
    #[serde(untagged)]
    Named(RuntimeKind),
}

/// `ECS_INIT_RUNTIME` has a value we do not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown ECS_INIT_RUNTIME value {0:?}: expected auto, docker or containerd")]
pub struct UnknownRuntime(pub String);

impl FromStr for Request {
    type Err = UnknownRuntime;
    /// Case-insensitive; empty means `auto`.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(Request::Auto),
            v => v
                .parse()
                .map(Request::Named)
                .map_err(|_| UnknownRuntime(s.to_string())),
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Auto => f.write_str("auto"),
            Request::Named(k) => k.fmt(f),
        }
    }
}

/// What [`decide`] looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probe {
    /// The Docker socket answered a ping.
    pub docker_answers: bool,
    /// The Docker socket file exists.
    pub docker_socket_exists: bool,
    /// `dockerd` is installed (so Docker is this host's runtime even while it restarts).
    pub dockerd_installed: bool,
    /// The containerd socket file exists.
    pub containerd_socket_exists: bool,
}

/// A runtime and why it was chosen.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Selection {
    pub kind: RuntimeKind,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error(
        "no container runtime found: the Docker socket {docker} and the containerd socket {containerd} \
         are both missing and dockerd is not installed (set ECS_INIT_RUNTIME to choose one)"
    )]
    NoRuntime { docker: String, containerd: String },
    #[error("{0}")]
    Connect(#[from] RuntimeError),
}

/// Pick the runtime. Explicit settings win; `auto` prefers Docker when it answers, or when it is
/// installed (a dockerd that is restarting must not make us move the agent to containerd), and
/// uses containerd otherwise.
pub fn decide(
    request: Request,
    probe: &Probe,
    sockets: (&str, &str),
) -> std::result::Result<Selection, SelectError> {
    let pick = |kind, reason: &str| {
        Ok(Selection {
            kind,
            reason: reason.to_string(),
        })
    };
    match request {
        Request::Named(kind) => Ok(Selection {
            kind,
            reason: format!("ECS_INIT_RUNTIME={kind}"),
        }),
        _ if probe.docker_answers => pick(RuntimeKind::Docker, "auto: the Docker socket answers"),
        _ if probe.docker_socket_exists && probe.dockerd_installed => pick(
            RuntimeKind::Docker,
            "auto: dockerd is installed and its socket exists (not answering yet)",
        ),
        _ if probe.containerd_socket_exists => pick(
            RuntimeKind::Containerd,
            "auto: Docker does not answer and the containerd socket exists",
        ),
        _ if probe.dockerd_installed => pick(
            RuntimeKind::Docker,
            "auto: dockerd is installed (not running yet)",
        ),
        _ => Err(SelectError::NoRuntime {
            docker: sockets.0.to_string(),
            containerd: sockets.1.to_string(),
        }),
    }
}

/// Is `dockerd` installed: on the search path, or in the usual system directories.
fn dockerd_installed(exec: &dyn Exec) -> bool {
    exec.find("dockerd").is_some()
        || ["/usr/bin", "/usr/sbin", "/usr/local/bin"]
            .iter()
            .any(|d| Path::new(d).join("dockerd").is_file())
}

/// Probe the host (a ping of at most `ping_timeout` to Docker). When Docker answered, its
/// connected client comes back too, so choosing Docker does not connect a second time.
pub async fn probe(
    opts: &RuntimeOptions,
    exec: &dyn Exec,
    ping_timeout: Duration,
) -> (Probe, Option<DockerRuntime>) {
    let mut answered = None;
    let d = DockerRuntime::at_socket(opts.docker_socket.clone());
    if matches!(
        tokio::time::timeout(ping_timeout, d.ping()).await,
        Ok(Ok(_))
    ) {
        answered = Some(d);
    }
    let probe = Probe {
        docker_answers: answered.is_some(),
        docker_socket_exists: opts.docker_socket.exists(),
        dockerd_installed: dockerd_installed(exec),
        containerd_socket_exists: opts.containerd.address.exists(),
    };
    (probe, answered)
}

/// Choose for `request` (probing only for `auto`) and build a client for the choice.
pub async fn choose(
    request: Request,
    opts: &RuntimeOptions,
    exec: &dyn Exec,
) -> std::result::Result<(Selection, Box<dyn Runtime>), SelectError> {
    let (probe, probed_docker) = match request {
        Request::Auto => probe(opts, exec, Duration::from_secs(2)).await,
        Request::Named(_) => (Probe::default(), None),
    };
    let containerd = opts.containerd.address.display().to_string();
    let docker = opts.docker_socket.display().to_string();
    let selection = decide(request, &probe, (&docker, &containerd))?;
    let runtime: Box<dyn Runtime> = match (selection.kind, probed_docker) {
        (RuntimeKind::Docker, Some(docker)) => Box::new(docker),
        (kind, _) => crate::build(kind, opts)?,
    };
    Ok((selection, runtime))
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
                 containerd_socket_exists| Probe {
            docker_answers,
            docker_socket_exists,
            dockerd_installed,
            containerd_socket_exists,
        };
        let kind = |probe: Probe| decide(Request::Auto, &probe, S).unwrap().kind;
        assert_eq!(kind(p(true, true, true, true)), RuntimeKind::Docker);
        assert_eq!(kind(p(false, true, true, true)), RuntimeKind::Docker);
        assert_eq!(kind(p(false, false, false, true)), RuntimeKind::Containerd);
        // A stale Docker socket without dockerd installed is not a Docker host.
        assert_eq!(kind(p(false, true, false, true)), RuntimeKind::Containerd);
        assert_eq!(kind(p(false, false, true, false)), RuntimeKind::Docker);
        let err = decide(Request::Auto, &p(false, false, false, false), S)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/var/run/docker.sock") && err.contains("containerd.sock"),
            "{err}"
        );
        assert_eq!(
            decide(
                Request::Named(RuntimeKind::Containerd),
                &p(true, true, true, true),
                S
            )
            .unwrap()
            .reason,
            "ECS_INIT_RUNTIME=containerd"
        );
    }

    #[test]
    fn requests_parse_and_unknown_names_are_errors() {
        assert_eq!("".parse(), Ok(Request::Auto));
        assert_eq!("AUTO".parse(), Ok(Request::Auto));
        assert_eq!("Docker".parse(), Ok(Request::Named(RuntimeKind::Docker)));
        assert_eq!(
            " containerd ".parse(),
            Ok(Request::Named(RuntimeKind::Containerd))
        );
        let err = "Podman".parse::<Request>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown ECS_INIT_RUNTIME value \"Podman\": expected auto, docker or containerd"
        );
    }
}
