//! Running the firewall tools through the [`Exec`] seam: one place that turns a failed run into
//! a [`FirewallError`] naming the exact command and its stderr.
use crate::{FirewallError, Result};
use ecs_host::exec::command_line;
use ecs_host::{Exec, Output};

/// Run a tool and wait for it. `Err` only when it cannot be started at all.
pub(crate) async fn run(exec: &dyn Exec, program: &str, args: &[String]) -> Result<Output> {
    spawned(program, exec.run(program, args).await)
}

/// Run a tool and require success.
pub(crate) async fn run_ok(exec: &dyn Exec, program: &str, args: &[String]) -> Result<Output> {
    succeeded(program, args, run(exec, program, args).await?)
}

/// Run a tool with `input` on its stdin and require success.
pub(crate) async fn run_ok_with_input(
    exec: &dyn Exec,
    program: &str,
    args: &[String],
    input: &[u8],
) -> Result<Output> {
    let out = spawned(program, exec.run_with_input(program, args, input).await)?;
    succeeded(program, args, out)
}

fn spawned(program: &str, started: std::io::Result<Output>) -> Result<Output> {
    started.map_err(|source| FirewallError::Spawn {
        tool: program.to_string(),
        source,
    })
}

fn succeeded(program: &str, args: &[String], out: Output) -> Result<Output> {
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
