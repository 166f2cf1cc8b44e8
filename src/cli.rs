//! The command line: the Go ecs-init's actions plus `plan` and `status`.
//!
//! Kept free of behaviour so that the man page and shell completions can be generated from it
//! (see `packaging/`).
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "amazon-ecs-init",
    about = "Prepare the host for the Amazon ECS Container Agent, run it as a container and supervise it",
    long_about = "amazon-ecs-init prepares a Linux host for the Amazon ECS Container Agent (firewall \
rules for the task credentials endpoint, sysctls, routes, the agent image), runs the agent as the \
container `ecs-agent` on Docker or containerd, restarts it when it fails, and undoes its host \
changes on stop. It is a drop-in replacement for the Go ecs-init.",
    disable_version_flag = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Action {
    /// Prepare the host: sysctls, routes, firewall rules, agent image.
    PreStart,
    /// Remove any old agent container, start a new one and supervise it.
    Start,
    /// Stop the agent container (10 s grace).
    Stop,
    /// Alias of `stop` (upstart's pre-stop).
    PreStop,
    /// Undo the host changes of pre-start (route_localnet, routes, firewall rules).
    PostStop,
    /// Load the cached agent tarball into the runtime again (rollback after a failed update).
    ReloadCache,
    /// Print the version.
    Version,
    /// Only pre-start's GPU step: write nvidia-gpu-info.json from NVML when GPU support is on
    /// and /dev/nvidia* exists (diagnostics, and the real-GPU check tests/gpu/on-real-gpu.sh).
    #[command(hide = true)]
    GpuInfo,
    /// Print, as JSON, what would be done: agent container spec, backends and rules. Read-only.
    Plan,
    /// Show the runtime, the agent container's state and whether introspection answers.
    Status,
}

impl Action {
    /// The action's command-line name (e.g. `pre-start`).
    pub fn name(self) -> String {
        format!("{self:?}")
            .chars()
            .enumerate()
            .flat_map(|(i, c)| {
                let lower = c.to_ascii_lowercase();
                if c.is_ascii_uppercase() && i > 0 {
                    vec!['-', lower]
                } else {
                    vec![lower]
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_command_line_words() {
        assert_eq!(Action::PreStart.name(), "pre-start");
        assert_eq!(Action::ReloadCache.name(), "reload-cache");
        assert_eq!(Action::Plan.name(), "plan");
    }
}
