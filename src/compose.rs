//! The composition root: the one place where the launcher's parts are built from the typed
//! [`Settings`] — the [`Exec`] every external program goes through, the firewall factory, the
//! runtime clients — and handed to the actions. Nothing below reads the environment or picks a
//! concrete backend itself.
use ecs_backends::select::{self as runtime_select, Selection};
use ecs_backends::{AgentSpec, Runtime, RuntimeKind};
use ecs_firewall::Firewalls;
use ecs_host::{Exec, SystemExec};
use std::sync::Arc;

use crate::config::Warning;
use crate::facts::HostFacts;
use crate::records;
use crate::settings::Settings;

/// Everything an action works with.
pub struct Host {
    pub settings: Settings,
    pub exec: Arc<dyn Exec>,
    pub firewalls: Firewalls,
}

impl Host {
    /// The real host: programs from the settings' search path.
    pub fn new(settings: Settings) -> Host {
        let exec: Arc<dyn Exec> = Arc::new(SystemExec::new(settings.search_path.clone()));
        Host::with_exec(settings, exec)
    }

    /// With an [`Exec`] of the caller's (tests use a recording double).
    pub fn with_exec(settings: Settings, exec: Arc<dyn Exec>) -> Host {
        Host {
            firewalls: Firewalls::new(exec.clone()),
            exec,
            settings,
        }
    }

    /// A client for `kind` (never contacts the daemon).
    pub fn runtime(&self, kind: RuntimeKind) -> anyhow::Result<Box<dyn Runtime>> {
        Ok(ecs_backends::build(kind, &self.settings.runtime_options)?)
    }

    /// The runtime chosen now (explicit setting or probe), with a client for it.
    pub async fn choose_runtime(&self) -> anyhow::Result<(Selection, Box<dyn Runtime>)> {
        let (selection, rt) = runtime_select::choose(
            self.settings.runtime,
            &self.settings.runtime_options,
            self.exec.as_ref(),
        )
        .await?;
        tracing::info!(runtime = %selection.kind, reason = %selection.reason, "container runtime selected");
        Ok((selection, rt))
    }

    /// The runtime `start` recorded, else the one chosen now (for `stop` and `status`). The
    /// agent runs where it was recorded, so that wins over an explicit `ECS_INIT_RUNTIME` that
    /// names another runtime (with a warning naming both).
    pub async fn recorded_runtime(&self) -> anyhow::Result<(Selection, Box<dyn Runtime>)> {
        match records::recorded_runtime(&self.settings.paths) {
            Some(selection) => {
                if let Some(configured) = self.configured_other_runtime(&selection) {
                    tracing::warn!(recorded = %selection.kind, configured = %configured,
                        "ECS_INIT_RUNTIME names another runtime than the one the agent was started on; using the recorded one");
                }
                let rt = self.runtime(selection.kind)?;
                Ok((selection, rt))
            }
            None => self.choose_runtime().await,
        }
    }

    /// `ECS_INIT_RUNTIME`, when it explicitly names a runtime other than `recorded`'s.
    pub fn configured_other_runtime(&self, recorded: &Selection) -> Option<RuntimeKind> {
        match self.settings.runtime {
            ecs_backends::select::Request::Named(k) if k != recorded.kind => Some(k),
            _ => None,
        }
    }

    /// The agent spec and every configuration warning (settings and spec building).
    pub fn spec(&self) -> (AgentSpec, Vec<Warning>) {
        spec_of(&self.settings, self.exec.as_ref())
    }

    /// The GPU step's inputs.
    pub fn gpu_options(&self) -> crate::gpu::GpuOptions {
        crate::gpu::GpuOptions::from_settings(&self.settings)
    }

    /// What the host network setup needs from the configuration and the runtime (`bridge`:
    /// Docker's default bridge as [`Host::default_bridge`] learned it; post-stop removes rules
    /// from what is installed and needs none).
    pub fn net_config(&self, bridge: ecs_firewall::Bridge) -> ecs_firewall::NetConfig {
        let net = &self.settings.net;
        ecs_firewall::NetConfig {
            skip_localhost_filter: net.skip_localhost_filter,
            allow_offhost_introspection: net.allow_offhost_introspection,
            introspection_interface: net.introspection_interface.clone(),
            state_dir: self.settings.paths.var_lib_ecs.clone(),
            proc_sys: "/proc/sys".into(),
            bridge,
        }
    }

    /// Docker's default bridge, as the runtime reports it (the Go tool asks the Docker API for
    /// the network `bridge`): its name for the introspection ACCEPT rule and `accept_ra`.
    /// containerd has none to report, and a Docker that does not answer within 5 s leaves it
    /// unknown (a warning): then `docker0`, as before, when it exists.
    pub async fn default_bridge(&self, rt: &dyn Runtime) -> ecs_firewall::Bridge {
        let answer =
            tokio::time::timeout(std::time::Duration::from_secs(5), rt.default_bridge()).await;
        bridge_of_answer(
            rt.name(),
            answer.map_err(|_| "no answer within 5 s".to_string()),
        )
    }
}

/// The firewall's view of the runtime's answer about its default bridge (logged).
pub fn bridge_of_answer(
    runtime: &str,
    answer: Result<ecs_backends::Result<ecs_backends::DefaultBridge>, String>,
) -> ecs_firewall::Bridge {
    use ecs_backends::DefaultBridge as D;
    use ecs_firewall::Bridge as B;
    match answer.and_then(|r| r.map_err(|e| e.to_string())) {
        Ok(D::Named(name)) => {
            tracing::info!(runtime, bridge = %name, "default bridge as the runtime reports it");
            B::Named(name)
        }
        Ok(D::Absent) => {
            tracing::info!(
                runtime,
                "the runtime has no default bridge network: no bridge rule"
            );
            B::Absent
        }
        Ok(D::Unknown) => B::Unknown,
        Err(e) => {
            tracing::warn!(runtime, error = %e, "could not ask the runtime for its default bridge; using {} when it exists", ecs_firewall::hostnet::DOCKER_BRIDGE);
            B::Unknown
        }
    }
}

/// Whether the Docker API the agent will use answers (the agent manages tasks through a Docker
/// API: on a containerd-only host, without one, it cannot run tasks).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DockerApi {
    pub endpoint: String,
    pub answers: bool,
    /// Why it does not, and what that means.
    pub warning: Option<String>,
}

impl Host {
    /// Probe the Docker API endpoint the agent will see (`DOCKER_HOST` or the default).
    pub async fn docker_api_for_agent(&self) -> DockerApi {
        let docker = ecs_backends::docker::DockerRuntime::at_socket(
            self.settings.runtime_options.docker_socket.clone(),
        );
        let endpoint = docker.endpoint().to_string();
        let probe = docker.ping();
        let error = match tokio::time::timeout(std::time::Duration::from_secs(2), probe).await {
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
}

/// The host facts for `settings`.
pub fn facts_of(settings: &Settings, exec: &dyn Exec) -> HostFacts {
    let extra = crate::agent::paths_to_probe(settings);
    let mut facts = HostFacts::probe(&extra, exec, settings.agent.gmsa);
    facts.ebs_dir = settings.paths.rooted("/mnt/ecs/ebs".as_ref()).is_dir();
    facts
}

/// The agent spec for `settings` and every warning (settings first, then the spec's).
pub fn spec_of(settings: &Settings, exec: &dyn Exec) -> (AgentSpec, Vec<Warning>) {
    let (spec, mut warnings) = crate::agent::build(settings, &facts_of(settings, exec));
    let mut all = settings.warnings.clone();
    all.append(&mut warnings);
    (spec, all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecs_backends::DefaultBridge as D;
    use ecs_firewall::Bridge as B;

    /// The runtime's answer decides; no answer (or an error) leaves it to `docker0`.
    #[test]
    fn the_runtimes_answer_becomes_the_firewalls_bridge() {
        assert_eq!(
            bridge_of_answer("docker", Ok(Ok(D::Named("br-x".into())))),
            B::Named("br-x".into())
        );
        assert_eq!(bridge_of_answer("docker", Ok(Ok(D::Absent))), B::Absent);
        assert_eq!(
            bridge_of_answer("containerd", Ok(Ok(D::Unknown))),
            B::Unknown
        );
        assert_eq!(
            bridge_of_answer("docker", Err("no answer within 5 s".into())),
            B::Unknown
        );
        let lost = ecs_backends::RuntimeError::Connect {
            runtime: "docker",
            endpoint: "unix:///nowhere".into(),
            reason: "gone".into(),
        };
        assert_eq!(bridge_of_answer("docker", Ok(Err(lost))), B::Unknown);
    }
}
