//! Running the firewall tools through the [`Exec`] seam: one place that turns a failed run into
//! a [`FirewallError`] naming the exact command and its stderr.
use crate::{FirewallError, Result};
use ecs_host::exec::command_line;
use ecs_host::{Exec, Output};

/// Run a tool and wait for it. `Err` only when it cannot be started at all.
pub(crate) async fn run(exec: &dyn Exec, program: &str, args: &[String]) -> Result<Output> {
    exec.run(program, args)
        .await
        .map_err(|source| FirewallError::Spawn {
            tool: program.to_string(),
            source,
        })
}

/// Run a tool and require success.
pub(crate) async fn run_ok(exec: &dyn Exec, program: &str, args: &[String]) -> Result<Output> {
    let out = run(exec, program, args).await?;
    if out.success {
        Ok(out)
    } else {
        Err(FirewallError::Command {
            command: command_line(program, args),
            stderr: out.stderr,
        })
    }
}

/// Whether `err` says the tool is not installed (as opposed to failing).
pub(crate) fn is_not_found(err: &FirewallError) -> bool {
    matches!(err, FirewallError::Spawn { source, .. } if ecs_host::exec::is_not_found(source))
}

/// `["a", "b"]` as owned arguments.
pub(crate) fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}
