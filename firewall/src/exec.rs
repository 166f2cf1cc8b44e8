//! Running the firewall tools (`iptables`, `nft`): one place that turns a failed run into a
//! [`FirewallError`] naming the exact command and its stderr.
use crate::{FirewallError, Result};
use std::path::PathBuf;

/// The result of a tool run that could be started.
#[derive(Debug)]
pub(crate) struct Output {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    fn from_std(out: std::process::Output) -> Output {
        Output {
            success: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }
    }
}

/// `program args…` as one line, for errors, logs and `plan`.
pub(crate) fn command_line(program: &str, args: &[String]) -> String {
    std::iter::once(program.to_string())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run a tool and wait for it. `Err` only when it cannot be started at all.
pub(crate) async fn run(program: &str, args: &[String]) -> Result<Output> {
    tracing::debug!(command = %command_line(program, args), "running");
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|source| FirewallError::Spawn {
            tool: program.to_string(),
            source,
        })?;
    Ok(Output::from_std(out))
}

/// Synchronous variant for read-only probes (`plan` has no runtime).
pub(crate) fn run_sync(program: &str, args: &[String]) -> Result<Output> {
    tracing::debug!(command = %command_line(program, args), "running");
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| FirewallError::Spawn {
            tool: program.to_string(),
            source,
        })?;
    Ok(Output::from_std(out))
}

/// Run a tool and require success.
pub(crate) async fn run_ok(program: &str, args: &[String]) -> Result<Output> {
    let out = run(program, args).await?;
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
    matches!(err, FirewallError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

/// Where `name` is found on `PATH` (the default system path when `PATH` is unset). Used by the
/// auto selection to see which tools the host has without running them.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
