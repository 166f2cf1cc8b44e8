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

    /// What the host network setup needs from the configuration.
    pub fn net_config(&self) -> ecs_hostnet::NetConfig {
        let net = &self.settings.net;
        ecs_hostnet::NetConfig {
            skip_localhost_filter: net.skip_localhost_filter,
            allow_offhost_introspection: net.allow_offhost_introspection,
            introspection_interface: net.introspection_interface.clone(),
            state_dir: self.settings.paths.var_lib_ecs.clone(),
            private_dir: self.settings.paths.var_lib_ecs_init.clone(),
            proc_sys: "/proc/sys".into(),
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
        file_env: settings
            .files
            .file_env
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect(),
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
    let spec = crate::agent::build(&opts, &facts_of(&opts, exec));
    (spec, settings.warnings.clone())
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
    }
}
