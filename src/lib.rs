//! amazon-ecs-init: the core launcher. It turns configuration into an agent container spec and a
//! firewall rule set, and drives a [`ecs_runtime::Runtime`] and an [`ecs_firewall::Firewall`];
//! it never speaks Docker, containerd, iptables or nft itself.
//!
//! Exit codes: 0 success; 1 usage; 5 the agent exited with the terminal code 5; 255 any other
//! error (and `status`: 3 when the agent is not running).

pub mod actions;
pub mod agent;
pub mod apparmor;
pub mod cache;
pub mod cli;
pub mod compose;
pub mod config;
pub mod download;
pub mod ebs;
pub mod facts;
pub mod gpu;
pub mod healthcheck;
pub mod locks;
pub mod logging;
pub mod notify;
pub mod paths;
pub mod records;
pub mod report;
pub mod rollback;
pub mod settings;
pub mod supervise;
/// UTC time formatting and parsing (std-only, shared with `ecs-agent-init`).
pub use ecs_common::time;

#[cfg(test)]
mod testing;

use cli::Action;
use compose::Host;
use settings::Settings;
use std::time::Duration;

/// Exit code for any error other than the agent's terminal exit.
pub const EXIT_ERROR: i32 = 255;
/// How long the agent gets to stop (Docker's stop timeout in the Go tool).
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Run one action and return the process exit code.
pub fn run(action: Action) -> i32 {
    if action == Action::Version {
        report::print_out(&format!(
            "ecs-init version {} ({})\nagent version {}\n",
            env!("CARGO_PKG_VERSION"),
            env!("ECS_INIT_GIT_HASH"),
            download::AGENT_VERSION
        ));
        return 0;
    }
    let settings = Settings::from_process();
    // Console lines fit the journal when systemd connected stderr to it (JOURNAL_STREAM).
    let console = logging::ConsoleFormat::detect(settings.journal_stream.as_deref());
    // Read-only actions log to the console only, so they never need write access.
    let log_file = if matches!(action, Action::Plan | Action::Status) {
        None
    } else {
        Some(settings.paths.init_log())
    };
    logging::init(
        log_file.as_deref(),
        logging::level_from(Some(settings.log_level)),
        settings.secret_values(),
        console,
    );
    notify::init(settings.notify_socket.clone());
    let host = Host::new(settings);
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
    match rt.block_on(dispatch(action, &host)) {
        Ok(code) => code,
        Err(err) => {
            tracing::error!("{} failed: {}", action.name(), describe(&err));
            match err.downcast_ref::<locks::LockError>() {
                Some(locks::LockError::AlreadyRunning { .. }) => locks::EXIT_ALREADY_RUNNING,
                _ => EXIT_ERROR,
            }
        }
    }
}

/// An error and its causes in one line, each said once: errors that already include their
/// cause in their own message are not followed by it again.
pub fn describe(err: &anyhow::Error) -> String {
    let mut out = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

async fn dispatch(action: Action, host: &Host) -> anyhow::Result<i32> {
    match action {
        Action::PreStart => actions::pre_start(host).await.map(|_| 0),
        Action::Start => actions::start(host).await,
        Action::Stop | Action::PreStop => actions::stop(host).await.map(|_| 0),
        Action::PostStop => actions::post_stop(host).await.map(|_| 0),
        Action::ReloadCache => actions::reload_cache(host).await.map(|_| 0),
        Action::GpuInfo => actions::gpu_info(host).await.map(|_| 0),
        Action::Plan => report::plan(host).await.map(|_| 0),
        Action::Status => report::status(host).await,
        Action::Version => Ok(0),
    }
}
