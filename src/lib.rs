//! amazon-ecs-init: the core launcher. It turns configuration into an agent container spec and a
//! firewall rule set, and drives a [`ecs_backends::Runtime`] and an [`ecs_firewall::Firewall`];
//! it never speaks Docker, containerd, iptables or nft itself.
//!
//! Exit codes: 0 success; 1 usage; 5 the agent exited with the terminal code 5; 255 any other
//! error (and `status`: 3 when the agent is not running).

pub mod agent;
pub mod apparmor;
pub mod cache;
pub mod cli;
pub mod config;
pub mod download;
pub mod facts;
pub mod logging;
pub mod notify;
pub mod paths;
pub mod report;
pub mod select;
pub mod supervise;
pub mod time;

#[cfg(test)]
mod testing;

use anyhow::Context as _;
use cli::Action;
use ecs_backends::{AgentSpec, Runtime};
use std::time::Duration;

use config::{Config, Warning};
use facts::HostFacts;
use paths::Paths;
use select::{Endpoints, RuntimeChoice};

/// Exit code for any error other than the agent's terminal exit.
pub const EXIT_ERROR: i32 = 255;
/// How long the agent gets to stop (Docker's stop timeout in the Go tool).
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long to wait for the runtime to answer (`ECS_INIT_RUNTIME_WAIT_SECONDS`).
pub const RUNTIME_WAIT_KEY: &str = "ECS_INIT_RUNTIME_WAIT_SECONDS";
const DEFAULT_RUNTIME_WAIT: Duration = Duration::from_secs(120);

/// Everything an action starts from, read once.
pub struct Context {
    pub paths: Paths,
    pub config: Config,
    pub endpoints: Endpoints,
}

impl Context {
    pub fn load() -> anyhow::Result<Context> {
        let paths = Paths::from_env();
        let config = Config::load(&paths)?;
        let endpoints = Endpoints::from_config(&config);
        Ok(Context {
            paths,
            config,
            endpoints,
        })
    }

    /// Host facts, with the EBS directory looked up under the re-rooting prefix.
    pub fn facts(&self) -> HostFacts {
        let mut facts = HostFacts::probe(&agent::paths_to_probe(&self.paths, &self.config));
        facts.ebs_dir = self.paths.rooted("/mnt/ecs/ebs".as_ref()).is_dir();
        facts
    }

    /// The agent spec and every configuration warning (env files and spec building).
    pub fn spec(&self) -> (AgentSpec, Vec<Warning>) {
        let (spec, mut warnings) = agent::build(&self.paths, &self.config, &self.facts());
        let mut all = self.config.warnings.clone();
        all.append(&mut warnings);
        (spec, all)
    }

    /// What the host network setup needs from the configuration.
    pub fn net_config(&self) -> ecs_firewall::NetConfig {
        ecs_firewall::NetConfig {
            firewall: self
                .config
                .knob("ECS_INIT_FIREWALL")
                .map(|v| v.trim().to_ascii_lowercase())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "auto".into()),
            skip_localhost_filter: self.config.knob_bool("ECS_SKIP_LOCALHOST_TRAFFIC_FILTER"),
            allow_offhost_introspection: self
                .config
                .knob_bool("ECS_ALLOW_OFFHOST_INTROSPECTION_ACCESS"),
            introspection_interface: self
                .config
                .knob("ECS_OFFHOST_INTROSPECTION_INTERFACE_NAME")
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string),
            state_dir: self.paths.var_lib_ecs.clone(),
            proc_sys: "/proc/sys".into(),
        }
    }

    fn runtime_wait(&self) -> Duration {
        self.config
            .knob(RUNTIME_WAIT_KEY)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_RUNTIME_WAIT)
    }

    /// The runtime chosen now (explicit setting or probe), with a client for it.
    async fn choose_runtime(&self) -> anyhow::Result<(RuntimeChoice, Box<dyn Runtime>)> {
        let (choice, rt) = select::choose(&self.config, &self.endpoints, &self.paths).await?;
        tracing::info!(runtime = choice.name, reason = %choice.reason, "container runtime selected");
        Ok((choice, rt))
    }

    /// The runtime `start` recorded, else the one chosen now (for `stop` and `status`).
    async fn recorded_runtime(&self) -> anyhow::Result<(RuntimeChoice, Box<dyn Runtime>)> {
        match select::recorded(&self.paths) {
            Some(choice) => {
                let rt = select::connect(choice.name, &self.endpoints, &self.paths)?;
                Ok((choice, rt))
            }
            None => self.choose_runtime().await,
        }
    }

    /// Wait for the chosen runtime to answer, then record it for `stop` and `status`.
    async fn make_ready(&self, choice: &RuntimeChoice, rt: &dyn Runtime) -> anyhow::Result<()> {
        let info = ecs_backends::wait_ready(rt, self.runtime_wait()).await?;
        tracing::info!(runtime = %info.runtime, version = %info.version, endpoint = %info.endpoint, "runtime answers");
        select::record(&self.paths, choice).with_context(|| {
            format!(
                "recording the runtime in {}",
                self.paths.runtime_record().display()
            )
        })
    }

    /// Choose, wait for it to answer, record it.
    async fn ready_runtime(&self) -> anyhow::Result<Box<dyn Runtime>> {
        let (choice, rt) = self.choose_runtime().await?;
        self.make_ready(&choice, rt.as_ref()).await?;
        Ok(rt)
    }
}

fn log_warnings(warnings: &[Warning]) {
    for w in warnings {
        tracing::warn!("{w}");
    }
}

/// Run one action and return the process exit code.
pub fn run(action: Action) -> i32 {
    if action == Action::Version {
        println!(
            "ecs-init version {} ({})\nagent version {}",
            env!("CARGO_PKG_VERSION"),
            env!("ECS_INIT_GIT_HASH"),
            download::AGENT_VERSION
        );
        return 0;
    }
    let ctx = match Context::load() {
        Ok(ctx) => ctx,
        Err(err) => {
            eprintln!("level=error msg={:?}", format!("{err:#}"));
            return EXIT_ERROR;
        }
    };
    // Read-only actions log to the console only, so they never need write access.
    let log_file = if matches!(action, Action::Plan | Action::Status) {
        None
    } else {
        Some(ctx.paths.init_log())
    };
    logging::init(
        log_file.as_deref(),
        logging::level_from(ctx.config.knob("ECS_LOGLEVEL")),
    );
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            tracing::error!(error = %err, "cannot start the async runtime");
            return EXIT_ERROR;
        }
    };
    match rt.block_on(dispatch(action, &ctx)) {
        Ok(code) => code,
        Err(err) => {
            tracing::error!("{} failed: {err:#}", action.name());
            EXIT_ERROR
        }
    }
}

async fn dispatch(action: Action, ctx: &Context) -> anyhow::Result<i32> {
    match action {
        Action::PreStart => pre_start(ctx).await.map(|_| 0),
        Action::Start => start(ctx).await,
        Action::Stop | Action::PreStop => stop(ctx).await.map(|_| 0),
        Action::PostStop => post_stop(ctx).await.map(|_| 0),
        Action::ReloadCache => {
            let rt = ctx.ready_runtime().await?;
            cache::reload(&ctx.paths, rt.as_ref()).await?;
            Ok(0)
        }
        Action::Plan => report::plan(ctx).await.map(|_| 0),
        Action::Status => report::status(ctx).await,
        Action::Version => Ok(0),
    }
}

/// Create the ecs directories the agent's binds need (Docker would create missing bind
/// sources as root-owned directories anyway; containerd would refuse to start).
fn make_dirs(paths: &Paths) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    for (dir, mode) in [
        (&paths.etc_ecs, 0o755),
        (&paths.var_lib_ecs, 0o755),
        (&paths.data_dir(), 0o755),
        (&paths.var_cache_ecs, 0o700),
        (&paths.var_log_ecs, 0o755),
        (&paths.var_log_ecs.join("exec"), 0o755),
    ] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let ebs = paths.rooted("/mnt/ecs/ebs".as_ref());
    if let Err(err) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&ebs)
    {
        tracing::warn!(dir = %ebs.display(), error = %err, "could not create the EBS mount directory");
    }
    Ok(())
}

async fn pre_start(ctx: &Context) -> anyhow::Result<()> {
    // Validate every setting before anything on the host changes: the firewall and runtime
    // choices (an unknown value is an error here) and the agent spec (warnings only). The
    // firewall backend itself is probed and chosen once, by setup_network below.
    let net = ctx.net_config();
    net.firewall.parse::<ecs_firewall::Choice>()?;
    let (spec, warnings) = ctx.spec();
    log_warnings(&warnings);
    let (choice, rt) = ctx.choose_runtime().await?;
    make_dirs(&ctx.paths)?;
    // The image first: it is the step most likely to fail, and it changes nothing on the host
    // outside the runtime, so a failure here leaves the host network as it was.
    ctx.make_ready(&choice, rt.as_ref()).await?;
    let source = download::S3Download(download::options(&ctx.config, &ctx.paths));
    cache::ensure_image(&ctx.paths, rt.as_ref(), &source).await?;
    // The agent's default AppArmor profile must be loaded before the container starts with it.
    // An operator-chosen profile (ECS_AGENT_APPARMOR_PROFILE) is the operator's to load.
    if spec.apparmor_profile.as_deref() == Some(agent::DEFAULT_APPARMOR_PROFILE) {
        apparmor::install(
            &ctx.paths.rooted("/etc/apparmor.d".as_ref()),
            agent::DEFAULT_APPARMOR_PROFILE,
            apparmor::PARSER.as_ref(),
            true,
        )?;
    }
    // All-or-nothing and idempotent (the firewall crate's contract).
    ecs_firewall::setup_network(&net).await?;
    Ok(())
}

async fn start(ctx: &Context) -> anyhow::Result<i32> {
    let rt = ctx.ready_runtime().await?;
    let mut supervisor = supervise::Supervisor {
        runtime: rt.as_ref(),
        paths: ctx.paths.clone(),
        spec: Box::new(|| {
            // Re-read the env files before every (re)start, like the Go tool.
            let config = Config::load(&ctx.paths).map_err(|e| e.to_string())?;
            let fresh = Context {
                paths: ctx.paths.clone(),
                endpoints: ctx.endpoints.clone(),
                config,
            };
            let (spec, warnings) = fresh.spec();
            log_warnings(&warnings);
            tracing::debug!(?spec, "agent container spec");
            Ok(spec)
        }),
        backoff: supervise::Backoff::standard(),
        healthy_after: Duration::from_secs(60),
        stop_grace: STOP_GRACE,
        runtime_deadline: ctx.runtime_wait(),
    };
    Ok(supervisor.run(supervise::termination_signal()).await?)
}

async fn stop(ctx: &Context) -> anyhow::Result<()> {
    let (choice, rt) = ctx.recorded_runtime().await?;
    match rt.stop(agent::AGENT_NAME, STOP_GRACE).await {
        Ok(()) => tracing::info!(runtime = choice.name, "agent container stopped"),
        // The runtime being down means there is no agent to stop: that is not an error.
        Err(err) => {
            tracing::warn!(runtime = choice.name, error = %err, "could not reach the runtime to stop the agent")
        }
    }
    Ok(())
}

/// Undo pre-start's host network changes with the firewall backend that applied them. Needs no
/// container runtime.
async fn post_stop(ctx: &Context) -> anyhow::Result<()> {
    ecs_firewall::teardown_network(&ctx.net_config()).await?;
    tracing::info!("host network changes removed");
    Ok(())
}
