//! The actions of the command line, each working with the parts the composition root built
//! ([`Host`]): `pre-start`, `start`, `stop`, `post-stop`, `reload-cache`.
use anyhow::Context as _;
use ecs_firewall::Firewall;
use ecs_runtime::Runtime;
use ecs_runtime::Selection;

use crate::compose::{spec_of, Host};
use crate::config::Warning;
use crate::paths::Paths;
use crate::{agent, apparmor, cache, download, gpu, locks, records, supervise, STOP_GRACE};

pub fn log_warnings(warnings: &[Warning]) {
    for w in warnings {
        tracing::warn!("{w}");
    }
}

/// Wait for the chosen runtime to answer, then record it for `stop` and `status`.
async fn make_ready(host: &Host, selection: &Selection, rt: &dyn Runtime) -> anyhow::Result<()> {
    let info = ecs_runtime::wait_ready(rt, host.settings.runtime_wait).await?;
    tracing::info!(runtime = %info.runtime, version = %info.version, endpoint = %info.endpoint, "runtime answers");
    records::record_runtime(&host.settings.paths, selection).with_context(|| {
        format!(
            "recording the runtime in {}",
            host.settings.paths.runtime_record().display()
        )
    })
}

/// Choose, wait for it to answer, record it.
async fn ready_runtime(host: &Host) -> anyhow::Result<Box<dyn Runtime>> {
    let (selection, rt) = host.choose_runtime().await?;
    make_ready(host, &selection, rt.as_ref()).await?;
    warn_without_docker_api(host, &selection).await;
    Ok(rt)
}

/// On a runtime other than Docker (containerd) the agent still needs a Docker-compatible API for
/// tasks: say so plainly once when nothing answers where it will look.
async fn warn_without_docker_api(host: &Host, selection: &Selection) {
    if !selection.kind.backend().agent_needs_docker_api() {
        return;
    }
    if let Some(w) = host.docker_api_for_agent().await.warning {
        tracing::warn!("{w}");
    }
}

/// Create the ecs directories the agent's binds need (Docker would create missing bind
/// sources as root-owned directories anyway; containerd would refuse to start).
fn make_dirs(paths: &Paths) -> anyhow::Result<()> {
    for (dir, mode) in [
        (&paths.etc_ecs, 0o755),
        (&paths.var_lib_ecs, 0o755),
        (&paths.data_dir(), 0o755),
        (&paths.var_cache_ecs, 0o700),
        (&paths.var_log_ecs, 0o755),
        (&paths.var_log_ecs.join("exec"), 0o755),
    ] {
        ecs_host::files::ensure_dir(dir, mode)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let ebs = paths.rooted("/mnt/ecs/ebs".as_ref());
    if let Err(err) = ecs_host::files::ensure_dir(&ebs, 0o755) {
        tracing::warn!(dir = %ebs.display(), error = %err, "could not create the EBS mount directory");
    }
    Ok(())
}

pub async fn pre_start(host: &Host) -> anyhow::Result<()> {
    // Validate every setting before anything on the host changes (an unknown backend name is
    // an error here; the rest are warnings). The firewall backend itself is probed and chosen
    // once, below.
    host.settings.check()?;
    let _lock = locks::host_changes(&host.settings.paths).await?;
    let (selection, rt) = host.choose_runtime().await?;
    warn_without_docker_api(host, &selection).await;
    make_dirs(&host.settings.paths)?;
    if let Some(w) = crate::ebs::warning(&host.settings.paths, host.settings.agent.external) {
        tracing::warn!("{w}");
    }
    // GPU info first, as the Go tool does: it needs no runtime, and a GPU host whose NVML
    // fails must not start an agent that would register without its GPUs. It waits for a
    // late /dev/nvidia* (a SIGTERM meanwhile ends pre-start at once: no handler is installed).
    gpu::setup(&host.gpu_options(), host.exec.as_ref()).await?;
    // The spec after the GPU wait, so its warnings (a GPU switch left out) say what holds now.
    let (spec, warnings) = host.spec();
    log_warnings(&warnings);
    // Then the image, before any network change: it is the step most likely to fail, and it
    // changes nothing on the host outside the runtime, so a failure here leaves the host
    // network as it was.
    make_ready(host, &selection, rt.as_ref()).await?;
    let source = download::S3Download(crate::compose::download_options(&host.settings));
    let loaded = cache::ensure_image(&host.settings.paths, rt.as_ref(), &source).await?;
    note_loaded(host, loaded.as_ref());
    // The default AppArmor profile is written and loaded whenever the host enforces AppArmor,
    // as the Go tool always does, also when ECS_AGENT_APPARMOR_PROFILE names another one (that
    // one is the operator's to load; the default stays ready for a switch back).
    if spec.apparmor_profile.is_some() {
        apparmor::install(
            host.exec.as_ref(),
            &host.settings.paths.rooted("/etc/apparmor.d".as_ref()),
            agent::DEFAULT_APPARMOR_PROFILE,
            apparmor::PARSER.as_ref(),
            true,
        )?;
    }
    // All-or-nothing and idempotent (the firewall crate's contract). The bridge rule names
    // Docker's default bridge as dockerd reports it.
    let net = host.net_config(host.default_bridge(rt.as_ref()).await);
    let selection = host.firewalls.choose(host.settings.firewall).await?;
    tracing::info!(firewall = %selection.kind, reason = %selection.reason, "firewall backend chosen");
    let firewall = host.firewalls.build(selection.kind);
    let plan = ecs_hostnet::plan_network(&net, selection, firewall.as_ref());
    let previous = ecs_hostnet::recorded_backend(&net.state_dir).map(|b| host.firewalls.build(b));
    ecs_hostnet::setup_network(&net, &plan, firewall.as_ref(), previous.as_deref()).await?;
    Ok(())
}

pub async fn start(host: &Host) -> anyhow::Result<i32> {
    host.settings.check()?;
    // Signals are answered from the first moment: no wait below outlasts a SIGTERM.
    let shutdown = supervise::Shutdown::on_signals().context("installing the signal handlers")?;
    let _lock = locks::supervisor(&host.settings.paths)?;
    let Some(rt) = shutdown.guard(ready_runtime(host)).await else {
        tracing::info!("shut down while waiting for the runtime");
        return Ok(0);
    };
    let rt = rt?;
    let exec = host.exec.as_ref();
    let last_spec = std::cell::RefCell::new(None::<String>);
    let last_spec = &last_spec;
    let mut supervisor = supervise::Supervisor {
        runtime: rt.as_ref(),
        paths: host.settings.paths.clone(),
        // The supervisor drops this future on SIGTERM, so the GPU wait never outlasts one.
        spec: Box::new(move || {
            Box::pin(async move {
                // Re-read the env files before every (re)start, like the Go tool.
                let settings = host.settings.reload();
                // A file refused now (a FIFO, a symlink, one over its cap) is named; the agent
                // starts without what it would have held, as with a missing file.
                for e in &settings.errors {
                    tracing::warn!("{e}");
                }
                // A GPU driver that comes up late: wait for its device nodes, as pre-start does.
                let gpu = crate::compose::gpu_options(&settings);
                if gpu.enabled {
                    if let Err(e) = gpu::wait_for_device(&gpu).await {
                        tracing::warn!("{e}");
                    }
                }
                let (spec, warnings) = spec_of(&settings, exec);
                log_warnings(&warnings);
                log_spec(&spec, &mut last_spec.borrow_mut());
                Ok(spec)
            })
        }),
        backoff: match host.settings.restart_delay {
            // Testing only (the soak): restarts as fast as asked.
            Some(d) => ecs_host::Backoff::new(d, d),
            None => supervise::restart_backoff(),
        },
        healthy_after: host.settings.rollback.healthy_after,
        stop_grace: STOP_GRACE,
        runtime_deadline: host.settings.runtime_wait,
        shutdown,
        rollback: host.settings.rollback.enabled.then(|| {
            crate::rollback::Guard::new(
                host.settings.paths.clone(),
                (&host.settings.rollback).into(),
            )
        }),
    };
    // The agent's custom health checks ask through this socket while the agent runs.
    let socket = host.settings.paths.healthcheck_socket();
    tokio::select! {
        code = supervisor.run() => Ok(code?),
        () = crate::healthcheck::run(socket, exec) => unreachable!("the health-check server never ends"),
    }
}

/// `stop` and `post-stop` clean up from the records; configuration problems are only warnings
/// for them (a broken `ecs.config` must not keep the agent running or the rules in place).
fn warn_about_settings(host: &Host) {
    for e in &host.settings.errors {
        tracing::warn!("ignored for cleanup: {e}");
    }
}

/// The (redacted) spec at debug level once, then only a digest line at each restart: the whole
/// spec at every restart of a crash loop fills the log.
fn log_spec(spec: &ecs_runtime::AgentSpec, last: &mut Option<String>) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return; // at every agent restart: no formatting and hashing for nobody
    }
    let text = format!("{spec:?}");
    let digest = ecs_runtime::archive::digest_of(text.as_bytes());
    match last.as_deref() {
        None => tracing::debug!(?spec, %digest, "agent container spec"),
        Some(d) if d == digest => tracing::debug!(%digest, "agent container spec unchanged"),
        Some(_) => tracing::debug!(?spec, %digest, "agent container spec changed"),
    }
    *last = Some(digest);
}

pub async fn stop(host: &Host) -> anyhow::Result<()> {
    warn_about_settings(host);
    let (selection, rt) = host.recorded_runtime().await?;
    match rt.stop(agent::AGENT_NAME, STOP_GRACE).await {
        Ok(()) => tracing::info!(runtime = %selection.kind, "agent container stopped"),
        // The runtime being down means there is no agent to stop: that is not an error.
        Err(err) => {
            tracing::warn!(runtime = %selection.kind, error = %err, "could not reach the runtime to stop the agent")
        }
    }
    Ok(())
}

/// Undo pre-start's host network changes with the firewall backend that applied them. Needs no
/// container runtime.
pub async fn post_stop(host: &Host) -> anyhow::Result<()> {
    warn_about_settings(host);
    let _lock = locks::host_changes(&host.settings.paths).await?;
    let net = host.net_config(ecs_hostnet::Bridge::Unknown);
    let backends = ecs_hostnet::teardown_backends(
        &host.firewalls,
        &net.state_dir,
        Some(host.settings.firewall),
    )
    .await;
    let firewalls: Vec<Box<dyn Firewall>> = backends
        .into_iter()
        .map(|b| host.firewalls.build(b))
        .collect();
    ecs_hostnet::teardown_network(&net, &firewalls).await?;
    tracing::info!("host network changes removed");
    Ok(())
}

pub async fn reload_cache(host: &Host) -> anyhow::Result<()> {
    host.settings.check()?;
    let _lock = locks::host_changes(&host.settings.paths).await?;
    let rt = ready_runtime(host).await?;
    let source = download::S3Download(crate::compose::download_options(&host.settings));
    let loaded = cache::reload(&host.settings.paths, rt.as_ref(), &source).await?;
    note_loaded(host, Some(&loaded));
    Ok(())
}

/// Remember the version of an agent image loaded by hand or by pre-start (for the rollback's
/// messages and `status`).
fn note_loaded(host: &Host, loaded: Option<&cache::Loaded>) {
    if let (true, Some(loaded)) = (host.settings.rollback.enabled, loaded) {
        crate::rollback::note_loaded(&host.settings.paths, loaded);
    }
}

/// Only pre-start's GPU step (diagnostics, and the real-GPU check tests/gpu/on-real-gpu.sh).
pub async fn gpu_info(host: &Host) -> anyhow::Result<()> {
    gpu::setup(&host.gpu_options(), host.exec.as_ref()).await?;
    Ok(())
}
