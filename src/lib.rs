//! amazon-ecs-init: the core launcher. It turns configuration into an agent container spec and a
//! firewall rule set, and drives a [`ecs_backends::Runtime`] and an [`ecs_firewall::Firewall`];
//! it never speaks Docker, containerd, iptables or nft itself.

pub mod cli;

use cli::Action;

/// Run one action and return the process exit code.
pub fn run(action: Action) -> i32 {
    match action {
        Action::Version => {
            println!("ecs-init version {}", env!("CARGO_PKG_VERSION"));
            0
        }
        other => {
            eprintln!("{other:?}: not built yet");
            255
        }
    }
}
