//! `amazon-ecs-volume-plugin`: serve Docker's volume plugin protocol on
//! `/var/run/docker/plugins/amazon-ecs-volume-plugin.sock` (or the socket systemd passes)
//! until SIGTERM/SIGINT. Exit 1 when it cannot start (the log says why).
use amazon_ecs_init::logging;
use amazon_ecs_init::settings::Settings;
use ecs_volume_plugin::mounter::{Mounter, MOUNTINFO};
use ecs_volume_plugin::plugin::{Layout, Plugin};
use ecs_volume_plugin::{listen, server};
use std::sync::Arc;

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("amazon-ecs-volume-plugin {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    let settings = Settings::from_process();
    let console = logging::ConsoleFormat::detect(settings.journal_stream.as_deref());
    logging::init(
        Some(&ecs_volume_plugin::log_file(&settings.paths)),
        logging::level_from(Some(settings.log_level)),
        settings.secret_values(),
        console,
    );
    std::process::exit(match run(&settings) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("the volume plugin cannot start: {e}");
            1
        }
    });
}

fn run(settings: &Settings) -> std::io::Result<()> {
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
        volumes_root: ecs_volume_plugin::volumes_root(&settings.paths),
        state_file: ecs_volume_plugin::state_file(&settings.paths),
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
