//! `amazon-ecs-volume-plugin`: serve Docker's volume plugin protocol on
//! `/var/run/docker/plugins/amazon-ecs-volume-plugin.sock` (or the socket systemd passes)
//! until SIGTERM/SIGINT. Exit 1 when it cannot start (the log says why).
use amazon_ecs_init::logging;
use amazon_ecs_init::settings::Settings;

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
    std::process::exit(ecs_volume_plugin::run(&settings));
}
