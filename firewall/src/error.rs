//! Errors of the firewall backends.
pub type Result<T, E = FirewallError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// A firewall tool could not be run at all (missing binary, no permission).
    #[error("cannot run {tool}: {source}")]
    Spawn {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    /// A firewall command ran and failed.
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    /// Any other failure, with what we were doing.
    #[error("{0}")]
    Other(String),
}
