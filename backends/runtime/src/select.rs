//! Which container runtime the agent runs on: by name (`ECS_INIT_RUNTIME=docker|containerd`)
//! or, for `auto`, by probing the host.
//!
//! Every backend in the registry ([`crate::BACKENDS`]) probes the host; the decision
//! ([`decide`]) is a pure function of what they found, so that it is unit-tested; the choice
//! and its reason are logged, shown by `plan`, and recorded by the launcher so that `stop`
//! talks to the runtime that `start` used.
use crate::kind::{Presence, RuntimeKind};
use crate::{Runtime, RuntimeError, RuntimeOptions};
use ecs_host::Exec;
use serde::{Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Every runtime backend, in the order `auto` prefers them when two look equally ready.
pub static BACKENDS: [RuntimeKind; 2] = [crate::docker::KIND, crate::containerd::KIND];

impl RuntimeKind {
    /// Every backend's name, in registry order.
    pub fn names() -> Vec<&'static str> {
        BACKENDS.iter().map(|k| k.as_str()).collect()
    }
}

impl FromStr for RuntimeKind {
    type Err = crate::select::UnknownRuntime;
    /// Exactly a backend's name (case-insensitive).
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        BACKENDS
            .iter()
            .copied()
            .find(|k| k.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| crate::select::UnknownRuntime(s.to_string()))
    }
}

/// What `ECS_INIT_RUNTIME` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Request {
    #[default]
    Auto,
    Named(RuntimeKind),
}

impl Request {
    /// The words `ECS_INIT_RUNTIME` accepts: `auto` and every backend's name.
    pub fn words() -> Vec<&'static str> {
        let mut words = vec!["auto"];
        words.extend(RuntimeKind::names());
        words
    }
}

impl Serialize for Request {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `ECS_INIT_RUNTIME` has a value we do not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownRuntime(pub String);

impl fmt::Display for UnknownRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown ECS_INIT_RUNTIME value {:?}: expected {}",
            self.0,
            or_list(&Request::words())
        )
    }
}

impl std::error::Error for UnknownRuntime {}

/// `a, b or c`.
fn or_list(words: &[&str]) -> String {
    match words.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

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

/// One backend's finding, as [`decide`] weighs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: RuntimeKind,
    pub presence: Presence,
    /// Why, in words (the selection's reason after `auto: `).
    pub reason: String,
}

/// A runtime and why it was chosen.
pub type Selection = ecs_host::Selection<RuntimeKind>;

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

/// Pick the runtime. Explicit settings win; `auto` takes the readiest backend ([`Presence`]),
/// the registry's order breaking ties: Docker when it answers, or when it is installed and its
/// socket exists (a dockerd that is restarting must not make us move the agent to containerd),
/// then a backend whose socket exists, then one that is only installed.
pub fn decide(
    request: Request,
    findings: &[Finding],
    sockets: (&str, &str),
) -> std::result::Result<Selection, SelectError> {
    if let Request::Named(kind) = request {
        return Ok(Selection {
            kind,
            reason: format!("ECS_INIT_RUNTIME={kind}"),
        });
    }
    // The first of the readiest: `max_by_key` would keep the last of equals.
    let best = findings
        .iter()
        .filter(|f| f.presence > Presence::Absent)
        .fold(None::<&Finding>, |best, f| match best {
            Some(b) if b.presence >= f.presence => Some(b),
            _ => Some(f),
        });
    match best {
        Some(f) => Ok(Selection {
            kind: f.kind,
            reason: format!("auto: {}", f.reason),
        }),
        None => Err(SelectError::NoRuntime {
            docker: sockets.0.to_string(),
            containerd: sockets.1.to_string(),
        }),
    }
}

/// Whether the Docker API the agent will use answers.
#[derive(Debug, Clone, Serialize)]
pub struct DockerApi {
    pub endpoint: String,
    pub answers: bool,
    /// Why it does not, and what that means.
    pub warning: Option<String>,
}

/// The factory of runtime clients. The composition root makes one (with the connection
/// settings and the [`Exec`] every external program goes through) and hands it to the actions;
/// nothing else constructs a client.
#[derive(Clone)]
pub struct Runtimes {
    opts: RuntimeOptions,
    exec: Arc<dyn Exec>,
}

impl Runtimes {
    pub fn new(opts: RuntimeOptions, exec: Arc<dyn Exec>) -> Runtimes {
        Runtimes { opts, exec }
    }

    /// The connection settings.
    pub fn options(&self) -> &RuntimeOptions {
        &self.opts
    }

    /// A client for `kind` (its registry entry's constructor). Never contacts the daemon (so
    /// `stop`, `post-stop` and `plan` work while it is down); fails only on settings that
    /// cannot work (an invalid containerd namespace).
    pub fn build(&self, kind: RuntimeKind) -> crate::Result<Box<dyn Runtime>> {
        kind.backend().build(&self.opts)
    }

    /// Whether the Docker API the agent will use (`DOCKER_HOST` or the default) answers within
    /// 2 s. The agent manages tasks through a Docker API only: on a backend whose
    /// [`agent_needs_docker_api`](crate::RuntimeBackend::agent_needs_docker_api), without one,
    /// it cannot run tasks.
    pub async fn docker_api_for_agent(&self) -> DockerApi {
        let docker = crate::docker::DockerRuntime::at_socket(self.opts.docker_socket.clone());
        let endpoint = docker.endpoint().to_string();
        let error = match tokio::time::timeout(Duration::from_secs(2), docker.ping()).await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("no answer within 2 s".to_string()),
        };
        DockerApi {
            warning: error.as_ref().map(|e| {
                format!(
                    "nothing answers the Docker API at {endpoint} ({e}): the agent runs on containerd, \
                     but it manages tasks through a Docker-compatible API, so it will not be able to \
                     run tasks on this host until one answers there (set DOCKER_HOST to one)"
                )
            }),
            answers: error.is_none(),
            endpoint,
        }
    }

    /// Choose for `request` (probing every backend only for `auto`) and build a client for the
    /// choice (the probe's own client when it connected one).
    pub async fn choose(
        &self,
        request: Request,
    ) -> std::result::Result<(Selection, Box<dyn Runtime>), SelectError> {
        let mut findings = Vec::new();
        let mut clients = Vec::new();
        if request == Request::Auto {
            for kind in BACKENDS {
                let probed = kind
                    .backend()
                    .probe(&self.opts, self.exec.as_ref(), Duration::from_secs(2))
                    .await;
                findings.push(Finding {
                    kind,
                    presence: probed.presence,
                    reason: probed.reason,
                });
                clients.push((kind, probed.client));
            }
        }
        let containerd = self.opts.containerd.address.display().to_string();
        let docker = self.opts.docker_socket.display().to_string();
        let selection = decide(request, &findings, (&docker, &containerd))?;
        let probed = clients
            .into_iter()
            .find(|(k, _)| *k == selection.kind)
            .and_then(|(_, c)| c);
        let runtime = match probed {
            Some(client) => client,
            None => self.build(selection.kind)?,
        };
        Ok((selection, runtime))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::containerd::KIND as CONTAINERD;
    use crate::docker::KIND as DOCKER;

    const S: (&str, &str) = ("/var/run/docker.sock", "/run/containerd/containerd.sock");

    /// What the two backends' probes find for these facts (their own unit tests pin the
    /// probes; here only the decision).
    fn findings(
        docker_answers: bool,
        docker_socket_exists: bool,
        dockerd_installed: bool,
        containerd_socket_exists: bool,
    ) -> Vec<Finding> {
        let docker =
            crate::docker::presence(docker_answers, docker_socket_exists, dockerd_installed);
        let containerd = crate::containerd::presence(containerd_socket_exists);
        vec![
            Finding {
                kind: crate::docker::KIND,
                presence: docker.0,
                reason: docker.1.into(),
            },
            Finding {
                kind: crate::containerd::KIND,
                presence: containerd.0,
                reason: containerd.1.into(),
            },
        ]
    }

    #[test]
    fn auto_prefers_docker_then_containerd() {
        let p = findings;
        let kind = |f: Vec<Finding>| decide(Request::Auto, &f, S).unwrap().kind;
        assert_eq!(kind(p(true, true, true, true)), DOCKER);
        assert_eq!(kind(p(false, true, true, true)), DOCKER);
        assert_eq!(kind(p(false, false, false, true)), CONTAINERD);
        // A stale Docker socket without dockerd installed is not a Docker host.
        assert_eq!(kind(p(false, true, false, true)), CONTAINERD);
        assert_eq!(kind(p(false, false, true, false)), DOCKER);
        let reason = |f: Vec<Finding>| decide(Request::Auto, &f, S).unwrap().reason;
        assert_eq!(
            reason(p(true, true, true, true)),
            "auto: the Docker socket answers"
        );
        assert_eq!(
            reason(p(false, true, true, true)),
            "auto: dockerd is installed and its socket exists (not answering yet)"
        );
        assert_eq!(
            reason(p(false, false, false, true)),
            "auto: Docker does not answer and the containerd socket exists"
        );
        assert_eq!(
            reason(p(false, false, true, false)),
            "auto: dockerd is installed (not running yet)"
        );
        let err = decide(Request::Auto, &p(false, false, false, false), S)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/var/run/docker.sock") && err.contains("containerd.sock"),
            "{err}"
        );
        assert_eq!(
            decide(Request::Named(CONTAINERD), &p(true, true, true, true), S)
                .unwrap()
                .reason,
            "ECS_INIT_RUNTIME=containerd"
        );
    }

    #[test]
    fn requests_parse_and_unknown_names_are_errors() {
        assert_eq!("".parse(), Ok(Request::Auto));
        assert_eq!("AUTO".parse(), Ok(Request::Auto));
        assert_eq!("Docker".parse(), Ok(Request::Named(DOCKER)));
        assert_eq!(" containerd ".parse(), Ok(Request::Named(CONTAINERD)));
        let err = "Podman".parse::<Request>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown ECS_INIT_RUNTIME value \"Podman\": expected auto, docker or containerd"
        );
    }

    #[test]
    fn names_are_unique_and_parse_back() {
        let names = RuntimeKind::names();
        for (i, n) in names.iter().enumerate() {
            assert!(!names[..i].contains(n), "{n} twice");
            assert_eq!(n.parse::<RuntimeKind>().unwrap().as_str(), *n);
            assert_eq!(
                n.to_uppercase().parse::<RuntimeKind>().unwrap().as_str(),
                *n
            );
        }
        assert_eq!(names, ["docker", "containerd"]);
    }
}
