//! The composition root: the one place where the launcher's parts are built from the typed
//! [`Settings`] — the [`Exec`] every external program goes through, the firewall factory, the
//! runtime clients — and handed to the actions. Nothing below reads the environment or picks a
//! concrete backend itself.
use ecs_firewall::Firewalls;
use ecs_host::{Exec, SystemExec};
use ecs_runtime::{AgentSpec, DockerApi, Runtime, RuntimeKind, Runtimes, Selection};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Warning;
use crate::download;
use crate::facts::HostFacts;
use crate::records;
use crate::settings::Settings;

/// Everything an action works with.
pub struct Host {
    pub settings: Settings,
    pub exec: Arc<dyn Exec>,
    pub runtimes: Runtimes,
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
            runtimes: Runtimes::new(settings.runtime_options.clone(), exec.clone()),
            firewalls: Firewalls::new(exec.clone()),
            exec,
            settings,
        }
    }

    /// A client for `kind` (never contacts the daemon).
    pub fn runtime(&self, kind: RuntimeKind) -> anyhow::Result<Box<dyn Runtime>> {
        Ok(self.runtimes.build(kind)?)
    }

    /// The runtime chosen now (explicit setting or probe), with a client for it.
    pub async fn choose_runtime(&self) -> anyhow::Result<(Selection, Box<dyn Runtime>)> {
        let (selection, rt) = self.runtimes.choose(self.settings.runtime).await?;
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
            ecs_runtime::Request::Named(k) if k != recorded.kind => Some(k),
            _ => None,
        }
    }

    /// The agent spec and every configuration warning (settings and spec building).
    pub fn spec(&self) -> (AgentSpec, Vec<Warning>) {
        spec_of(&self.settings, self.exec.as_ref())
    }

    /// The GPU step's inputs.
    pub fn gpu_options(&self) -> crate::gpu::GpuOptions {
        gpu_options(&self.settings)
    }

    /// What the host network setup needs from the configuration and the runtime (`bridge`:
    /// Docker's default bridge as [`Host::default_bridge`] learned it; post-stop removes rules
    /// from what is installed and needs none).
    pub fn net_config(&self, bridge: ecs_hostnet::Bridge) -> ecs_hostnet::NetConfig {
        let net = &self.settings.net;
        ecs_hostnet::NetConfig {
            skip_localhost_filter: net.skip_localhost_filter,
            allow_offhost_introspection: net.allow_offhost_introspection,
            introspection_interface: net.introspection_interface.clone(),
            state_dir: self.settings.paths.var_lib_ecs.clone(),
            private_dir: self.settings.paths.var_lib_ecs_init.clone(),
            proc_sys: "/proc/sys".into(),
            bridge,
        }
    }

    /// Docker's default bridge, as the runtime reports it (the Go tool asks the Docker API for
    /// the network `bridge`): its name for the introspection ACCEPT rule and `accept_ra`.
    /// containerd has none to report, and a Docker that does not answer within 5 s leaves it
    /// unknown (a warning): then `docker0`, as before, when it exists.
    pub async fn default_bridge(&self, rt: &dyn Runtime) -> ecs_hostnet::Bridge {
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
    answer: Result<ecs_runtime::Result<ecs_runtime::DefaultBridge>, String>,
) -> ecs_hostnet::Bridge {
    use ecs_hostnet::Bridge as B;
    use ecs_runtime::DefaultBridge as D;
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
            tracing::warn!(runtime, error = %e, "could not ask the runtime for its default bridge; using {} when it exists", ecs_hostnet::DOCKER_BRIDGE);
            B::Unknown
        }
    }
}

impl Host {
    /// Probe the Docker API endpoint the agent will see (`DOCKER_HOST` or the default).
    pub async fn docker_api_for_agent(&self) -> DockerApi {
        self.runtimes.docker_api_for_agent().await
    }
}

/// The agent container spec's inputs from the settings.
pub fn agent_options(settings: &Settings) -> crate::agent::AgentOptions {
    crate::agent::AgentOptions {
        knobs: settings.agent.clone(),
        paths: settings.paths.clone(),
        file_env: settings.files.file_env.clone(),
    }
}

/// The host facts for `opts`.
pub fn facts_of(opts: &crate::agent::AgentOptions, exec: &dyn Exec) -> HostFacts {
    let extra = crate::agent::paths_to_probe(opts);
    let mut facts = HostFacts::probe(&extra, exec, opts.knobs.gmsa);
    facts.ebs_dir = opts.paths.rooted("/mnt/ecs/ebs".as_ref()).is_dir();
    facts
}

/// The agent spec for `settings` and the settings' warnings.
pub fn spec_of(settings: &Settings, exec: &dyn Exec) -> (AgentSpec, Vec<Warning>) {
    let opts = agent_options(settings);
    let (spec, mut warnings) = crate::agent::build(&opts, &facts_of(&opts, exec));
    let mut all = settings.warnings.clone();
    all.append(&mut warnings);
    (spec, all)
}

/// The download's options from the settings (values that could not be used are among the
/// settings' warnings, with their file and line).
pub fn download_options(settings: &Settings) -> download::DownloadOptions {
    download::DownloadOptions {
        external: settings.agent.external,
        knobs: settings.download.clone(),
        retry: download::Retry {
            attempts: 3,
            backoff: Duration::from_secs(1),
        },
        progress: download::Progress {
            every: Duration::from_secs(5),
            extend_by: Duration::from_secs(120),
        },
        cache_dir: settings.paths.var_cache_ecs.clone(),
        arch: std::env::consts::ARCH,
    }
}

/// The production agent source of the cache: the S3 download.
#[async_trait::async_trait]
impl crate::cache::AgentSource for download::S3Download {
    async fn fetch(&self) -> Result<std::path::PathBuf, download::DownloadError> {
        download::download(&self.0).await.map(|f| f.path)
    }
}

/// The GPU step's inputs from the settings (`ECS_ENABLE_GPU_SUPPORT`, `ECS_INIT_NVML_LIBRARY`).
pub fn gpu_options(settings: &Settings) -> crate::gpu::GpuOptions {
    crate::gpu::GpuOptions {
        enabled: settings.agent.gpu_support,
        nvml_library: settings.nvml_library.clone(),
        dev_dir: "/dev".into(),
        out_dir: settings.paths.var_lib_ecs.join("gpu"),
        wait: settings.gpu_wait,
        wait_interval: crate::gpu::WAIT_INTERVAL,
        mps_control: settings
            .paths
            .rooted(std::path::Path::new(crate::gpu::MPS_CONTROL)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecs_hostnet::Bridge as B;
    use ecs_runtime::DefaultBridge as D;

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
        let lost = ecs_runtime::RuntimeError::Connect {
            runtime: "docker",
            endpoint: "unix:///nowhere".into(),
            reason: "gone".into(),
        };
        assert_eq!(bridge_of_answer("docker", Ok(Err(lost))), B::Unknown);
    }
}
