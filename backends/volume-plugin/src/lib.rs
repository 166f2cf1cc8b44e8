//! The ECS volume plugin (`amazon-ecs-volume-plugin`): the Docker volume driver the ECS agent
//! hands EFS and S3 Files volumes to (the agent advertises it with
//! `ECS_VOLUME_PLUGIN_CAPABILITIES`). A drop-in for the Go plugin of the `ecs-init` package:
//! same socket, same protocol answers, same mount commands, same state file.
//!
//! * [`server`]: the plugin protocol over HTTP/1.1 on a unix socket;
//! * [`plugin`]: what each request does (per-volume locking, reference counts, rollback);
//! * [`mounter`]: `mount`/`umount` through the `Exec` seam, bounded by a timeout;
//! * [`state`]: the Go-shaped state file;
//! * [`listen`]: socket activation, or a socket of its own.
pub mod listen;
pub mod mounter;
pub mod plugin;
pub mod server;
pub mod state;

use amazon_ecs_init::settings::Settings;
use mounter::{Mounter, MOUNTINFO};
use plugin::{Layout, Plugin};
use std::path::PathBuf;
use std::sync::Arc;

/// Serve until SIGTERM/SIGINT (here, so that its log lines carry this crate's target, which
/// the logger lets through at `ECS_LOGLEVEL`); the process exit code: 0, or 1 when the plugin
/// cannot start (logged).
pub fn run(settings: &Settings) -> i32 {
    match serve_until_stopped(settings) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("the volume plugin cannot start: {e}");
            1
        }
    }
}

fn serve_until_stopped(settings: &Settings) -> std::io::Result<()> {
    let env = |k: &str| std::env::var(k).ok();
    let listener =
        match listen::from_systemd(env("LISTEN_PID").as_deref(), env("LISTEN_FDS").as_deref())? {
            Some(l) => {
                tracing::info!("listening on the socket systemd passed");
                l
            }
            None => {
                let socket = &settings.volume_plugin.socket;
                let l = listen::bind(socket).map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("cannot listen on {}: {e}", socket.display()),
                    )
                })?;
                tracing::info!(socket = %socket.display(), "listening");
                l
            }
        };
    let layout = Layout {
        volumes_root: volumes_root(&settings.paths),
        state_file: state_file(&settings.paths),
    };
    let exec = Arc::new(ecs_host::SystemExec::new(settings.search_path.clone()));
    let mounter = Mounter::new(exec, settings.volume_plugin.mount_timeout, MOUNTINFO.into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let plugin = Arc::new(Plugin::load(layout, mounter));
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let stop = async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return std::future::pending().await;
            };
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            // Volumes stay mounted: containers keep using them, and the next start serves them.
            tracing::info!("stopping; mounted volumes stay mounted");
        };
        server::serve(listener, plugin, stop).await;
        Ok(())
    })
}

/// Where volumes are mounted, under the (re-rootable) `/var/lib/ecs`.
pub fn volumes_root(paths: &amazon_ecs_init::paths::Paths) -> PathBuf {
    paths.var_lib_ecs.join("volumes")
}

/// The plugin's state file, in the agent's data directory.
pub fn state_file(paths: &amazon_ecs_init::paths::Paths) -> PathBuf {
    paths.data_dir().join(state::FILE_NAME)
}

/// The plugin's log file.
pub fn log_file(paths: &amazon_ecs_init::paths::Paths) -> PathBuf {
    paths.var_log_ecs.join("ecs-volume-plugin.log")
}
